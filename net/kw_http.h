/* kw_http.h: the HTTP/1.1 server front of receiverd, on the same libuv loop as everything else: requests parsed by
 * http-parser (nodejs) with caps on the request line + headers and the body, a header-read and a body-read timeout
 * (slowloris), keep-alive and pipelining (requests are handled one at a time, in order, per connection), complete
 * responses, and streaming responses (chunked) for server-sent events.
 *
 * Not here: routing, JSON, the OpenAI API (receiver/). Everything runs on the loop thread.
 *
 * Request lifetime: the handler receives a request owned by this module; it must complete it exactly once, with
 * kw_http_respond or kw_http_response_start/.._write/.._end, now or later (e.g. from a completion-queue callback),
 * even if the client went away meanwhile (then the calls return KW_E_NET_CLOSED and only free the request). Until
 * it is completed the connection reads no further request, a graceful shutdown waits for it, and the request's
 * strings stay valid.
 */
#ifndef KW_HTTP_H
#define KW_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "net/kw_net.h"

typedef struct kw_http_server kw_http_server;

/* A header as received (names keep their case; compare with strcasecmp) or to send. NUL-terminated. */
typedef struct kw_http_header {
    const char *name;
    const char *value;
} kw_http_header;

/* A complete request. Every pointer is owned by the module and valid until the request is completed. */
typedef struct kw_http_request {
    const char *method; /* "GET", "POST", ... */
    const char *target; /* the request target as sent, e.g. "/v1/completions?x=1" */
    const char *path;   /* target before '?' (not percent-decoded) */
    const char *query;  /* target after '?', or "" */
    const kw_http_header *headers;
    size_t n_headers;
    const uint8_t *body; /* body_len bytes, followed by a NUL (not counted) */
    size_t body_len;
    unsigned version_minor; /* HTTP/1.<minor> */
    bool keep_alive;        /* the connection stays open after the response */
} kw_http_request;

/* The value of the first header named name (case-insensitive), or NULL. */
const char *kw_http_request_header(const kw_http_request *req, const char *name);

typedef struct kw_http_server_config {
    kw_net_server_config net;   /* address, TLS, connection options (its idle timeout closes idle keep-alive
                                   connections) */
    size_t max_header_bytes;    /* request line + header block; beyond: 431 */
    size_t max_headers;         /* header count; beyond: 431 */
    size_t max_body_bytes;      /* beyond: 413 */
    uint32_t header_timeout_ms; /* from a request's first byte to the end of its headers; then the connection is
                                   closed (0: none) */
    uint32_t body_timeout_ms;   /* from the end of the headers to the end of the body (0: none) */
} kw_http_server_config;

/* Defaults: the net defaults, 16 KiB of headers, 64 headers, 1 MiB of body, 10 s for headers, 30 s for a body. */
void kw_http_server_config_default(kw_http_server_config *cfg);

/* Called for every complete request, on the loop thread. */
typedef void (*kw_http_handler_fn)(kw_http_request *req, void *user);

/* Starts serving. Malformed requests are answered 400, oversized ones 413/431, an unsupported upgrade or method 501,
 * and their connections closed, without calling the handler. Owned by the caller: kw_http_server_shutdown, then
 * kw_http_server_free after its done callback. @return as kw_net_server_start. */
int kw_http_server_start(uv_loop_t *loop, const kw_http_server_config *cfg, kw_http_handler_fn handler, void *user,
                         kw_http_server **out);

uint16_t kw_http_server_port(const kw_http_server *s);

/* Graceful shutdown, as kw_net_server_shutdown: requests being handled finish (their connections close after the
 * response); a connection without one may still deliver one request in the first 500 ms (the handler sees it like
 * any other: a server that is stopping answers it with an error of its choice), then closes; whatever is left at
 * deadline_ms is aborted. */
void kw_http_server_shutdown(kw_http_server *s, uint32_t deadline_ms, void (*done)(kw_http_server *s, void *user),
                             void *user);

/* Frees a server whose shutdown is done; NULL is a no-op. */
void kw_http_server_free(kw_http_server *s);

/* Optional per-request notifications: on_abort when the client's connection closed before the response was
 * completed (the request must still be completed), on_drain when a streaming write that returned
 * KW_NET_WRITE_FULL may go on. */
void kw_http_request_watch(kw_http_request *req, void (*on_abort)(kw_http_request *req, void *user),
                           void (*on_drain)(kw_http_request *req, void *user), void *user);

/* A complete response: status line, Content-Type (if content_type is not NULL), Content-Length, the extra headers,
 * and the body (copied). Completes the request. @return 0, or KW_E_NET_CLOSED (the client is gone), KW_E_STATE (a
 * response was already started), KW_E_NOMEM; the request is completed in every case. */
int kw_http_respond(kw_http_request *req, int status, const char *content_type, const kw_http_header *extra,
                    size_t n_extra, const void *body, size_t len);

/* Starts a streaming response: chunked for HTTP/1.1 (for HTTP/1.0, the body runs to the connection's close).
 * @return 0, KW_E_NET_CLOSED, KW_E_STATE, KW_E_NOMEM (the request is still to be completed with _end). */
int kw_http_response_start(kw_http_request *req, int status, const char *content_type, const kw_http_header *extra,
                           size_t n_extra);

/* Sends data (copied) as one chunk. @return 0, KW_NET_WRITE_FULL (sent; wait for on_drain before more),
 * KW_E_NET_CLOSED, KW_E_STATE (not started), KW_E_NET_BACKPRESSURE, KW_E_NOMEM. */
int kw_http_response_write(kw_http_request *req, const void *data, size_t len);

/* Sends one server-sent event: an optional "event:" line, then data split into "data:" lines at its newlines, and
 * the blank line that ends the event. @return as kw_http_response_write. */
int kw_http_sse_send(kw_http_request *req, const char *event, const char *data);

/* Ends a streaming response and completes the request. @return 0 or KW_E_NET_CLOSED (completed anyway). */
int kw_http_response_end(kw_http_request *req);

/* "OK", "Not Found", ... for a status code ("Unknown" otherwise). */
const char *kw_http_status_text(int status);

#endif /* KW_HTTP_H */
