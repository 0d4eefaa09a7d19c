/* kw_log.h: leveled logging with a pluggable sink.
 *
 * KW_LOG_* check the level before formatting, so disabled levels cost one comparison. The default sink writes
 * "<ISO time> <level> <message>" to stderr; tests and daemons may install their own sink. A daemon whose stderr is
 * the journal sends its records there instead (kw_log_journal_auto), with structured fields attached by KW_LOG_WITH:
 * the stderr line never shows those fields, so it reads the same either way. Library code logs through these macros
 * only and never calls printf.
 */
#ifndef KW_LOG_H
#define KW_LOG_H

#include <stddef.h>
#include <stdint.h>

enum kw_log_level {
    KW_LOG_LEVEL_DEBUG = 0,
    KW_LOG_LEVEL_INFO = 1,
    KW_LOG_LEVEL_WARN = 2,
    KW_LOG_LEVEL_ERROR = 3,
    KW_LOG_LEVEL_OFF = 4,
};

/* The levels' names in enum kw_log_level's order, NULL-ended (the daemons' log.level choices). */
extern const char *const kw_log_level_names[];

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

// ---------------------------------------------------------------------------------------------------------------
// Structured fields and the journal

#define KW_LOG_FIELDS_MAX  16  /* fields of one record */
#define KW_LOG_FIELDS_TEXT 768 /* bytes of their "NAME=value" text */

/* The structured fields of one record, e.g. KW_REQUEST_ID=42. The caller owns it (on its stack, zeroed: `kw_log_fields
 * f = {0};`), fills it with kw_log_fields_add and passes it to KW_LOG_WITH; it holds copies of the names and values,
 * so nothing it was filled from needs to outlive it. Only the journal sink sends them. */
typedef struct kw_log_fields {
    int n;
    uint16_t start[KW_LOG_FIELDS_MAX]; /* of field i's "NAME=value" in text */
    uint16_t len[KW_LOG_FIELDS_MAX];
    size_t used;
    char text[KW_LOG_FIELDS_TEXT];
} kw_log_fields;

/* Appends NAME=<formatted value>. name follows journald's rules (A-Z, 0-9 and '_', not starting with '_'; checked by
 * assert, names are ours). A field that does not fit in f is dropped: logging never fails. */
void kw_log_fields_add(kw_log_fields *f, const char *name, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* What both daemons say about one finished request. NULL strings, negative numbers and http_status 0 are left out. */
typedef struct kw_log_request {
    uint64_t id;
    const char *mode; /* borrowed */
    int status;       /* 0 or a kw_status */
    int64_t bytes_sent;
    int64_t bytes_received; /* wire bytes, as the request's log line counts them */
    double duration_ms;
    int http_status;
} kw_log_request;

/* Appends r as KW_REQUEST_ID, KW_MODE, KW_OUTCOME ("ok" or the status's name, e.g. KW_E_SHARE_BUSY), KW_BYTES_SENT,
 * KW_BYTES_RECEIVED, KW_DURATION_MS and KW_STATUS (the HTTP status). */
void kw_log_fields_request(kw_log_fields *f, const kw_log_request *r);

/* kw_log_write with fields (NULL: none). */
void kw_log_write_fields(enum kw_log_level level, const kw_log_fields *fields, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define KW_LOG_WITH(level, fields, ...)                                                                                \
    do {                                                                                                               \
        if ((level) >= __atomic_load_n(&kw_log_threshold, __ATOMIC_RELAXED))                                           \
            kw_log_write_fields((level), (fields), __VA_ARGS__);                                                       \
    } while (0)

/* Sends the records of the default sink to the journal (sd_journal_send: MESSAGE, PRIORITY from the level,
 * SYSLOG_IDENTIFIER=identifier and the record's fields) instead of stderr when stderr is the journal: systemd sets
 * JOURNAL_STREAM=<device>:<inode> for StandardError=journal, and that pair must name file descriptor 2 (a child
 * that inherited the variable but not the stream keeps stderr), as systemd.exec(5) documents. A record the journal
 * refuses goes to stderr. Call it once at start, before other threads log. identifier is borrowed (a literal).
 * @return 1 when records now go to the journal, 0 when they stay on stderr. */
int kw_log_journal_auto(const char *identifier);

#endif /* KW_LOG_H */
