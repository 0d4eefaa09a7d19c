/* kw_log.c: the logging threshold, the default sink (a stderr line, or a journal entry with structured fields when
 * stderr is the journal) and the formatting entry points. Nothing here fails a caller: a field that does not fit is
 * dropped, a record the journal refuses is written to stderr.
 */
#include "kw_log.h"
#include "kw_status.h"

#include <assert.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* sd_journal_sendv would otherwise add CODE_FILE/CODE_LINE/CODE_FUNC naming this file for every record */
#define SD_JOURNAL_SUPPRESS_LOCATION
#include <systemd/sd-journal.h>

#define KW__LOG_MESSAGE_MAX 1024 /* bytes of a formatted message (longer ones are cut) */

enum kw_log_level kw_log_threshold = KW_LOG_LEVEL_INFO;

static kw_log_sink_fn kw_log_sink;
static void *kw_log_sink_user_data;
static const char *kw_log_journal_identifier; /* non-NULL: the default sink writes to the journal */

const char *const kw_log_level_names[] = {"debug", "info", "warn", "error", "off", NULL};

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

// ---------------------------------------------------------------------------------------------------------------
// Fields

void kw_log_fields_add(kw_log_fields *f, const char *name, const char *fmt, ...) {
    assert(name[0] != '_' && strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") == strlen(name));
    if (f->n >= KW_LOG_FIELDS_MAX || f->used >= sizeof f->text) return;
    char *at = f->text + f->used;
    const size_t room = sizeof f->text - f->used;
    int len = snprintf(at, room, "%s=", name);
    if (len > 0 && (size_t)len < room) {
        va_list ap;
        va_start(ap, fmt);
        const int value = vsnprintf(at + len, room - (size_t)len, fmt, ap);
        va_end(ap);
        len = value < 0 ? -1 : len + value;
    }
    if (len < 0 || (size_t)len >= room) return; /* too long: the field is dropped whole, never cut */
    f->start[f->n] = (uint16_t)f->used;
    f->len[f->n] = (uint16_t)len;
    f->used += (size_t)len + 1;
    ++f->n;
}

void kw_log_fields_request(kw_log_fields *f, const kw_log_request *r) {
    kw_log_fields_add(f, "KW_REQUEST_ID", "%llu", (unsigned long long)r->id);
    if (r->mode) kw_log_fields_add(f, "KW_MODE", "%s", r->mode);
    kw_log_fields_add(f, "KW_OUTCOME", "%s", r->status == 0 ? "ok" : kw_status_name(r->status));
    if (r->bytes_sent >= 0) kw_log_fields_add(f, "KW_BYTES_SENT", "%lld", (long long)r->bytes_sent);
    if (r->bytes_received >= 0) kw_log_fields_add(f, "KW_BYTES_RECEIVED", "%lld", (long long)r->bytes_received);
    if (r->duration_ms >= 0) kw_log_fields_add(f, "KW_DURATION_MS", "%.1f", r->duration_ms);
    if (r->http_status > 0) kw_log_fields_add(f, "KW_STATUS", "%d", r->http_status);
}

// ---------------------------------------------------------------------------------------------------------------
// The journal

int kw_log_journal_auto(const char *identifier) {
    const char *stream = getenv("JOURNAL_STREAM");
    unsigned long long dev = 0, ino = 0;
    struct stat st;
    char end;
    const bool is_journal = stream && sscanf(stream, "%llu:%llu%c", &dev, &ino, &end) == 2 &&
                            fstat(STDERR_FILENO, &st) == 0 && (unsigned long long)st.st_dev == dev &&
                            (unsigned long long)st.st_ino == ino;
    kw_log_journal_identifier = is_journal ? identifier : NULL;
    return is_journal ? 1 : 0;
}

/* syslog(3)'s priorities: LOG_DEBUG 7, LOG_INFO 6, LOG_WARNING 4, LOG_ERR 3. */
static int kw__log_priority(enum kw_log_level level) {
    static const int priority[] = {7, 6, 4, 3};
    return (unsigned)level < sizeof priority / sizeof priority[0] ? priority[level] : 6;
}

/* 0 when the journal took the record. */
static int kw__log_journal_send(enum kw_log_level level, const char *message, const kw_log_fields *fields) {
    char text[sizeof "MESSAGE=" + KW__LOG_MESSAGE_MAX], priority[16], identifier[64];
    snprintf(text, sizeof text, "MESSAGE=%s", message);
    snprintf(priority, sizeof priority, "PRIORITY=%d", kw__log_priority(level));
    snprintf(identifier, sizeof identifier, "SYSLOG_IDENTIFIER=%s", kw_log_journal_identifier);
    struct iovec iov[3 + KW_LOG_FIELDS_MAX];
    int n = 0;
    iov[n++] = (struct iovec){text, strlen(text)};
    iov[n++] = (struct iovec){priority, strlen(priority)};
    iov[n++] = (struct iovec){identifier, strlen(identifier)};
    for (int i = 0; fields && i < fields->n; ++i)
        iov[n++] = (struct iovec){(char *)fields->text + fields->start[i], fields->len[i]};
    return sd_journal_sendv(iov, n);
}

// ---------------------------------------------------------------------------------------------------------------
// Writing

static void kw__log_dispatch(enum kw_log_level level, const kw_log_fields *fields, const char *fmt, va_list ap) {
    char message[KW__LOG_MESSAGE_MAX];
    vsnprintf(message, sizeof message, fmt, ap);
    if (kw_log_sink)
        kw_log_sink(level, message, kw_log_sink_user_data);
    else if (!kw_log_journal_identifier || kw__log_journal_send(level, message, fields) < 0)
        kw_log_stderr_sink(level, message);
}

void kw_log_write_fields(enum kw_log_level level, const kw_log_fields *fields, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    kw__log_dispatch(level, fields, fmt, ap);
    va_end(ap);
}

void kw_log_write(enum kw_log_level level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    kw__log_dispatch(level, NULL, fmt, ap);
    va_end(ap);
}
