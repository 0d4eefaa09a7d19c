/* kw_log.c: the logging threshold, the default stderr sink and the formatting entry point. */
#include "kw_log.h"
#include "kw_status.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum kw_log_level kw_log_threshold = KW_LOG_LEVEL_INFO;

static kw_log_sink_fn kw_log_sink;
static void *kw_log_sink_user_data;

static const char *const kw_log_level_names[] = {"debug", "info", "warn", "error", "off"};

const char *kw_log_level_name(enum kw_log_level level) {
    return (unsigned)level <= KW_LOG_LEVEL_OFF ? kw_log_level_names[level] : "?";
}

int kw_log_parse_level(const char *text, enum kw_log_level *out) {
    for (int i = 0; i <= KW_LOG_LEVEL_OFF; ++i) {
        if (strcmp(text, kw_log_level_names[i]) == 0) {
            *out = (enum kw_log_level)i;
            return 0;
        }
    }
    KW_FAIL(KW_E_PARSE, "unknown log level '%s' (expected debug, info, warn, error or off)", text);
}

void kw_log_set_level(enum kw_log_level level) {
    __atomic_store_n(&kw_log_threshold, level, __ATOMIC_RELAXED);
}

void kw_log_init_from_env(void) {
    const char *env = getenv("KW_LOG_LEVEL");
    enum kw_log_level level = __atomic_load_n(&kw_log_threshold, __ATOMIC_RELAXED);
    if (env && kw_log_parse_level(env, &level) == 0) __atomic_store_n(&kw_log_threshold, level, __ATOMIC_RELAXED);
}

void kw_log_set_sink(kw_log_sink_fn sink, void *user_data) {
    kw_log_sink = sink;
    kw_log_sink_user_data = user_data;
}

static void kw_log_stderr_sink(enum kw_log_level level, const char *message) {
    struct timespec now;
    struct tm tm_utc;
    char stamp[32];
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm_utc);
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm_utc);
    fprintf(stderr, "%s.%03ldZ %-5s %s\n", stamp, now.tv_nsec / 1000000L, kw_log_level_name(level), message);
}

void kw_log_write(enum kw_log_level level, const char *fmt, ...) {
    char message[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    if (kw_log_sink)
        kw_log_sink(level, message, kw_log_sink_user_data);
    else
        kw_log_stderr_sink(level, message);
}
