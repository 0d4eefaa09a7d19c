/* kw_http.c: the HTTP/1.1 server front: connections that feed the request reader (kw_http_reader.c), one request
 * in flight per connection (pipelined bytes wait in the connection, which stops reading), responses complete or
 * chunked, keep-alive, and the timeouts against slow clients.
 *
 * Not here: collecting requests from bytes (kw_http_reader.c, over http-parser) or routing (receiver/).
 * Timeouts use the connection's request deadline: a request's first byte starts the header timeout, the end of its
 * headers the body timeout, and a complete request marks the connection busy with no limit until the response is
 * completed (so the idle timeout and a graceful shutdown wait for the handler).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/kw_buf.h"
#include "common/kw_status.h"
#include "net/kw_http_internal.h"

struct kw_http_server {
    kw_net_server *net;
    kw_http_server_config cfg;
    kw_http_handler_fn handler;
    void *user;
    void (*done)(kw_http_server *s, void *user);
    void *done_user;
};

typedef struct kw__http_conn {
    kw_net_conn *conn;
    kw_http_server *server;
    kw__http_reader reader;
    kw__http_req *current; /* the request being handled */
} kw__http_conn;

const char *kw_http_status_text(int status) {
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 413:
        return "Payload Too Large";
    case 415:
        return "Unsupported Media Type";
    case 422:
        return "Unprocessable Content";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Unknown";
    }
}

void kw_http_server_config_default(kw_http_server_config *cfg) {
    *cfg = (kw_http_server_config){
        .net = {.host = "127.0.0.1"},
        .max_header_bytes = 16 << 10,
        .max_headers = 64,
        .max_body_bytes = 1 << 20,
        .header_timeout_ms = 10000,
        .body_timeout_ms = 30000,
    };
    kw_net_conn_options_default(&cfg->net.conn);
}

const char *kw_http_request_header(const kw_http_request *req, const char *name) {
    for (size_t i = 0; i < req->n_headers; ++i)
        if (strcasecmp(req->headers[i].name, name) == 0) return req->headers[i].value;
    return NULL;
}

// ---------------------------------------------------------------------------------------------------------------
// Writing

static void kw__http_free_done(kw_net_conn *c, int status, void *user) {
    (void)c, (void)status;
    free(user);
}

/* Sends the bytes of b (taken) on the request's connection. */
static int kw__http_send(kw__http_req *r, kw_buf *b) {
    char *data = NULL;
    size_t len = 0;
    KW_FORWARD(kw_buf_take(b, &data, &len));
    if (!r->hc) {
        free(data);
        KW_FAIL(KW_E_NET_CLOSED, "the client closed the connection");
    }
    const kw_net_buf buf = {data, len};
    const int rc = kw_net_conn_write(r->hc->conn, NULL, 0, &buf, 1, kw__http_free_done, data);
    if (rc < 0) free(data);
    return rc;
}

static void kw__http_head(kw_buf *b, const kw__http_req *r, int status, const char *content_type,
                          const kw_http_header *extra, size_t n_extra) {
    kw_buf_printf(b, "HTTP/1.%u %d %s\r\n", r->pub.version_minor ? 1u : 0u, status, kw_http_status_text(status));
    if (content_type) kw_buf_printf(b, "Content-Type: %s\r\n", content_type);
    for (size_t i = 0; i < n_extra; ++i)
        kw_buf_printf(b, "%s: %s\r\n", extra[i].name, extra[i].value);
    if (r->close_after)
        kw_buf_append_str(b, "Connection: close\r\n");
    else if (r->pub.version_minor == 0)
        kw_buf_append_str(b, "Connection: keep-alive\r\n");
}

/* Completes a request: frees it and lets its connection go on (next request) or close. */
static void kw__http_complete(kw__http_req *r) {
    kw__http_conn *hc = r->hc;
    const bool close_after = r->close_after;
    kw__http_req_free(r);
    if (!hc) return;
    hc->current = NULL;
    if (close_after) {
        kw_net_conn_close(hc->conn, 0);
        return;
    }
    kw_net_conn_deadline_stop(hc->conn); /* may close it: the server is shutting down */
    kw_net_conn_resume_reading(hc->conn);
}

int kw_http_respond(kw_http_request *req, int status, const char *content_type, const kw_http_header *extra,
                    size_t n_extra, const void *body, size_t len) {
    kw__http_req *r = (kw__http_req *)req;
    int rc = 0;
    KW_CHECK_IF(r->started, KW_E_STATE, "a response was already started");
    r->started = true;
    kw_buf b = KW_BUF_INIT;
    kw__http_head(&b, r, status, content_type, extra, n_extra);
    kw_buf_printf(&b, "Content-Length: %zu\r\n\r\n", len);
    if (!r->head_only) kw_buf_append(&b, body, len);
    rc = kw__http_send(r, &b);
    kw_buf_free(&b);
    if (rc == KW_NET_WRITE_FULL) rc = 0;
out:
    kw__http_complete(r);
    return rc;
}

int kw_http_response_start(kw_http_request *req, int status, const char *content_type, const kw_http_header *extra,
                           size_t n_extra) {
    kw__http_req *r = (kw__http_req *)req;
    KW_RETURN_IF(r->started, KW_E_STATE, "a response was already started");
    r->started = true;
    /* HTTP/1.0 has no chunked encoding: the body then ends with the connection */
    r->chunked = r->pub.version_minor > 0;
    if (!r->chunked) r->close_after = true;
    kw_buf b = KW_BUF_INIT;
    kw__http_head(&b, r, status, content_type, extra, n_extra);
    kw_buf_append_str(&b, r->chunked ? "Transfer-Encoding: chunked\r\n\r\n" : "\r\n");
    const int rc = kw__http_send(r, &b);
    kw_buf_free(&b);
    return rc == KW_NET_WRITE_FULL ? 0 : rc;
}

int kw_http_response_write(kw_http_request *req, const void *data, size_t len) {
    kw__http_req *r = (kw__http_req *)req;
    KW_RETURN_IF(!r->started, KW_E_STATE, "kw_http_response_write before kw_http_response_start");
    if (!len || r->head_only) return 0; /* an empty chunk would end the body */
    kw_buf b = KW_BUF_INIT;
    if (r->chunked) kw_buf_printf(&b, "%zx\r\n", len);
    kw_buf_append(&b, data, len);
    if (r->chunked) kw_buf_append_str(&b, "\r\n");
    const int rc = kw__http_send(r, &b);
    kw_buf_free(&b);
    return rc;
}

int kw_http_sse_send(kw_http_request *req, const char *event, const char *data) {
    kw_buf b = KW_BUF_INIT;
    if (event) kw_buf_printf(&b, "event: %s\n", event);
    const char *p = data;
    for (;;) {
        const char *nl = strchr(p, '\n');
        const size_t n = nl ? (size_t)(nl - p) : strlen(p);
        kw_buf_append_str(&b, "data: ");
        kw_buf_append(&b, p, n);
        kw_buf_append_str(&b, "\n");
        if (!nl) break;
        p = nl + 1;
    }
    kw_buf_append_str(&b, "\n");
    char *text = NULL;
    size_t len = 0;
    KW_FORWARD(kw_buf_take(&b, &text, &len));
    const int rc = kw_http_response_write(req, text, len);
    free(text);
    return rc;
}

int kw_http_response_end(kw_http_request *req) {
    kw__http_req *r = (kw__http_req *)req;
    int rc = 0;
    if (!r->started) {
        rc = kw_http_respond(req, 500, NULL, NULL, 0, NULL, 0); /* completes */
        return rc < 0 ? rc : kw_error_set(KW_E_STATE, "kw_http_response_end without a response");
    }
    if (r->chunked && !r->head_only && r->hc) {
        const kw_net_buf last = {"0\r\n\r\n", 5};
        rc = kw_net_conn_write(r->hc->conn, NULL, 0, &last, 1, NULL, NULL);
        if (rc == KW_NET_WRITE_FULL) rc = 0;
    } else if (!r->hc) {
        rc = kw_error_set(KW_E_NET_CLOSED, "the client closed the connection");
    }
    kw__http_complete(r);
    return rc;
}

void kw_http_request_watch(kw_http_request *req, void (*on_abort)(kw_http_request *req, void *user),
                           void (*on_drain)(kw_http_request *req, void *user), void *user) {
    kw__http_req *r = (kw__http_req *)req;
    r->on_abort = on_abort;
    r->on_drain = on_drain;
    r->watch_user = user;
}

// ---------------------------------------------------------------------------------------------------------------
// Connections

/* The reader's phases drive the connection's deadline: the header timeout from a request's first byte, the body
 * timeout from the end of its headers. */
static void kw__http_on_phase(void *user, enum kw__http_phase phase) {
    kw__http_conn *hc = user;
    const kw_http_server_config *cfg = &hc->server->cfg;
    if (phase == KW__HTTP_PHASE_HEADERS) {
        kw_net_conn_deadline_start(hc->conn, cfg->header_timeout_ms);
        return;
    }
    kw_net_conn_deadline_start(hc->conn, cfg->body_timeout_ms);
    if (phase == KW__HTTP_PHASE_BODY_CONTINUE) {
        /* curl sends Expect: 100-continue before bodies over 1 KiB and waits a second unless told to go on */
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        kw_net_conn_write(hc->conn, cont, sizeof cont - 1, NULL, 0, NULL, NULL);
    }
}

static void kw__http_send_reject(kw__http_conn *hc) {
    const int status = hc->reader.reject;
    char head[160];
    const int n = snprintf(head, sizeof head, "HTTP/1.1 %d %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                           status, kw_http_status_text(status));
    char *copy = strndup(head, (size_t)n);
    if (copy) {
        const kw_net_buf buf = {copy, (size_t)n};
        if (kw_net_conn_write(hc->conn, NULL, 0, &buf, 1, kw__http_free_done, copy) < 0) free(copy);
    }
    kw_error_set(hc->reader.reject_status, "HTTP request rejected with %d %s", status, kw_http_status_text(status));
    kw_net_conn_close(hc->conn, hc->reader.reject_status);
}

static int kw__http_on_read(kw_net_conn *c, const uint8_t *data, size_t len, size_t *used) {
    kw__http_conn *hc = kw_net_conn_user(c);
    size_t at = 0;
    while (at < len && !hc->current) {
        size_t n = 0;
        const int rc = kw__http_reader_feed(&hc->reader, data + at, len - at, &n);
        at += n;
        if (rc < 0) {
            if (rc == KW_E_NOMEM && !hc->reader.reject) return rc;
            kw__http_send_reject(hc);
            *used = len;
            return 0;
        }
        if (rc != KW__HTTP_REQUEST) break;
        kw__http_req *r;
        KW_FORWARD(kw__http_reader_take(&hc->reader, &r));
        r->hc = hc;
        hc->current = r;
        kw_net_conn_deadline_start(c, 0); /* busy, no limit: the handler owns the request now */
        hc->server->handler(&r->pub, hc->server->user);
    }
    *used = at; /* less than len while a request is in flight: the connection keeps the rest */
    return 0;
}

static void kw__http_on_drain(kw_net_conn *c) {
    kw__http_conn *hc = kw_net_conn_user(c);
    kw__http_req *r = hc->current;
    if (r && r->on_drain) r->on_drain(&r->pub, r->watch_user);
}

static void kw__http_on_close(kw_net_conn *c, int status) {
    kw__http_conn *hc = kw_net_conn_user(c);
    (void)status;
    kw__http_req *r = hc->current;
    if (r) {
        r->hc = NULL;
        if (r->on_abort) r->on_abort(&r->pub, r->watch_user);
    }
    kw__http_reader_free(&hc->reader);
    free(hc);
}

static void kw__http_on_accept(kw_net_server *ns, kw_net_conn *c, void *user) {
    kw_http_server *s = user;
    (void)ns;
    kw__http_conn *hc = calloc(1, sizeof *hc);
    const kw__http_limits lim = {s->cfg.max_header_bytes, s->cfg.max_headers, s->cfg.max_body_bytes};
    if (!hc || kw__http_reader_init(&hc->reader, &lim, kw__http_on_phase, hc) < 0) {
        free(hc);
        kw_error_set(KW_E_NOMEM, "HTTP: out of memory");
        kw_net_conn_abort(c, KW_E_NOMEM);
        return;
    }
    hc->conn = c;
    hc->server = s;
    static const kw_net_conn_callbacks cb = {
        .on_read = kw__http_on_read,
        .on_drain = kw__http_on_drain,
        .on_close = kw__http_on_close,
    };
    kw_net_conn_set_callbacks(c, &cb, hc);
}

// ---------------------------------------------------------------------------------------------------------------
// Server

int kw_http_server_start(uv_loop_t *loop, const kw_http_server_config *cfg, kw_http_handler_fn handler, void *user,
                         kw_http_server **out) {
    KW_RETURN_IF(!cfg || !handler || !cfg->max_headers, KW_E_INVALID_ARG,
                 "HTTP server: a configuration with max_headers > 0 and a handler are required");
    kw_http_server *s = calloc(1, sizeof *s);
    KW_RETURN_IF(!s, KW_E_NOMEM, "HTTP server: out of memory");
    s->cfg = *cfg;
    s->handler = handler;
    s->user = user;
    const int rc = kw_net_server_start(loop, &cfg->net, kw__http_on_accept, s, &s->net);
    if (rc < 0) {
        free(s);
        return rc;
    }
    s->cfg.net.host = NULL; /* not kept */
    *out = s;
    return 0;
}

uint16_t kw_http_server_port(const kw_http_server *s) {
    return kw_net_server_port(s->net);
}

static void kw__http_server_done(kw_net_server *ns, void *user) {
    kw_http_server *s = user;
    (void)ns;
    if (s->done) s->done(s, s->done_user);
}

void kw_http_server_shutdown(kw_http_server *s, uint32_t deadline_ms, void (*done)(kw_http_server *s, void *user),
                             void *user) {
    s->done = done;
    s->done_user = user;
    kw_net_server_shutdown(s->net, deadline_ms, kw__http_server_done, s);
}

void kw_http_server_free(kw_http_server *s) {
    if (!s) return;
    kw_net_server_free(s->net);
    free(s);
}
