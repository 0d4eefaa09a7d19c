/* kw_load_http.h: kvload's HTTP/1.1 client engine: many requests in flight on one thread over libcurl's multi
 * interface (keep-alive connections reused, one per request in flight), server-sent events split and time-stamped as
 * they arrive, whole bodies collected otherwise.
 *
 * The caller drives it: kw_load_http_post/get start exchanges, kw_load_http_poll waits for sockets or a timeout and
 * calls on_event for every complete SSE event and on_done for every finished exchange. Everything runs on the
 * calling thread; nothing here sleeps longer than the poll timeout it is given. Not here: JSON, the OpenAI API
 * (kw_load_reply.h), scheduling (kw_load_run.h).
 */
#ifndef KW_LOAD_HTTP_H
#define KW_LOAD_HTTP_H

#include <stddef.h>
#include <stdint.h>

typedef struct kw_load_http kw_load_http;

typedef struct kw_load_http_options {
    const char *base_url;        /* "http://127.0.0.1:8080"; paths are appended (copied at create) */
    uint32_t timeout_ms;         /* whole exchange, 0: none */
    uint32_t connect_timeout_ms; /* 0: 10 s */
    size_t max_body_bytes;       /* a response body (or one event) beyond this fails the exchange; 0: 64 MiB */
    size_t max_connections;      /* kept-alive connections cached; 0: 256 */
} kw_load_http_options;

/* A finished exchange, borrowed for the duration of on_done. */
typedef struct kw_load_http_result {
    void *tag;                  /* what the caller passed to post/get */
    int transport_error;        /* 0, or libcurl's CURLcode (no complete response) */
    const char *transport_name; /* curl_easy_strerror of it, or "" */
    const char *error_text;     /* libcurl's error buffer ("" if none) */
    long status;                /* HTTP status; 0 when no response line arrived */
    int event_stream;           /* the response was text/event-stream (events went to on_event) */
    const char *body;           /* a non-event-stream body (NUL-terminated), or the bytes after the last event */
    size_t body_len;
    int too_large;      /* the body (or an event) passed max_body_bytes */
    uint64_t t_send_ns; /* kw_time_now_ns when the request was handed to libcurl */
    uint64_t t_end_ns;  /* when the exchange finished */
} kw_load_http_result;

/* One complete server-sent event: the "data:" lines' values joined by '\n' (NUL-terminated, borrowed for the call),
 * and the time its last byte was read. Events without a data line are not reported. */
typedef void (*kw_load_http_event_fn)(void *tag, const char *data, size_t len, uint64_t t_ns, void *user);
typedef void (*kw_load_http_done_fn)(const kw_load_http_result *r, void *user);

/* Creates an engine. on_event may be NULL (events are then dropped). Owned by the caller: kw_load_http_destroy.
 * @return 0, KW_E_INVALID_ARG, KW_E_NOMEM, KW_E_INTERNAL (libcurl refused to initialise). */
int kw_load_http_create(const kw_load_http_options *opt, kw_load_http_event_fn on_event, kw_load_http_done_fn on_done,
                        void *user, kw_load_http **out);

/* Starts a POST of body[0..len) (Content-Type: application/json) to base_url + path. The engine takes ownership of
 * body (malloc'ed; freed after on_done, also on failure here). @return 0, KW_E_NOMEM, KW_E_INTERNAL. */
int kw_load_http_post(kw_load_http *h, const char *path, char *body, size_t len, void *tag);

/* Starts a GET of base_url + path. @return as kw_load_http_post. */
int kw_load_http_get(kw_load_http *h, const char *path, void *tag);

/* Moves every transfer forward, waiting at most timeout_ms for socket activity when nothing is ready, and calls the
 * callbacks (on_done may start new exchanges). @return 0 or KW_E_INTERNAL (libcurl failed). */
int kw_load_http_poll(kw_load_http *h, int timeout_ms);

/* Exchanges started and not yet done. */
size_t kw_load_http_in_flight(const kw_load_http *h);

/* Aborts every exchange in flight (on_done runs for each, with transport_error CURLE_ABORTED_BY_CALLBACK, and must
 * not start new ones), and frees the engine. NULL is a no-op. */
void kw_load_http_destroy(kw_load_http *h);

/* One blocking exchange on an engine of its own: a GET, or a POST of post_body[0..post_len) when post_body is not
 * NULL (malloc'ed; taken over and freed in every case). *body (NUL-terminated, caller frees) and *status get the
 * answer. For probing a server before a run. @return 0 (whatever the HTTP status), KW_E_IO for a transport failure
 * (libcurl's reason in the detail), KW_E_NOMEM. */
int kw_load_http_once(const char *base_url, const char *path, char *post_body, size_t post_len, uint32_t timeout_ms,
                      long *status, char **body, size_t *body_len);

#endif /* KW_LOAD_HTTP_H */
