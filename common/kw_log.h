/* kw_log.h: leveled logging with a pluggable sink.
 *
 * KW_LOG_* check the level before formatting, so disabled levels cost one comparison. The default sink writes
 * "<ISO time> <level> <message>" to stderr (journald captures it); tests and daemons may install their own sink.
 * Library code logs through these macros only and never calls printf.
 */
#ifndef KW_LOG_H
#define KW_LOG_H

enum kw_log_level {
    KW_LOG_LEVEL_DEBUG = 0,
    KW_LOG_LEVEL_INFO = 1,
    KW_LOG_LEVEL_WARN = 2,
    KW_LOG_LEVEL_ERROR = 3,
    KW_LOG_LEVEL_OFF = 4,
};

/* A sink receives the level and the formatted message (no trailing newline). user_data is the pointer given to
 * kw_log_set_sink. Sinks may be called from any thread. */
typedef void (*kw_log_sink_fn)(enum kw_log_level level, const char *message, void *user_data);

/* The current threshold; messages below it are dropped. Starts at KW_LOG_LEVEL_INFO, or KW_LOG_LEVEL from the
 * environment (debug, info, warn, error, off) once kw_log_init_from_env has run. Read and written atomically (relaxed):
 * a daemon's reload changes it on the loop thread while compute threads log. */
extern enum kw_log_level kw_log_threshold;

void kw_log_set_level(enum kw_log_level level);
/* Reads KW_LOG_LEVEL; unknown values leave the level unchanged. */
void kw_log_init_from_env(void);
/* Installs a sink; NULL restores the stderr sink. */
void kw_log_set_sink(kw_log_sink_fn sink, void *user_data);
/* Parses "debug".."off"; returns 0 and sets *out, or KW_E_PARSE. */
int kw_log_parse_level(const char *text, enum kw_log_level *out);
const char *kw_log_level_name(enum kw_log_level level);

void kw_log_write(enum kw_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define KW_LOG(level, ...)                                                                                             \
    do {                                                                                                               \
        if ((level) >= __atomic_load_n(&kw_log_threshold, __ATOMIC_RELAXED)) kw_log_write((level), __VA_ARGS__);       \
    } while (0)
#define KW_LOG_DEBUG(...) KW_LOG(KW_LOG_LEVEL_DEBUG, __VA_ARGS__)
#define KW_LOG_INFO(...)  KW_LOG(KW_LOG_LEVEL_INFO, __VA_ARGS__)
#define KW_LOG_WARN(...)  KW_LOG(KW_LOG_LEVEL_WARN, __VA_ARGS__)
#define KW_LOG_ERROR(...) KW_LOG(KW_LOG_LEVEL_ERROR, __VA_ARGS__)

#endif /* KW_LOG_H */
