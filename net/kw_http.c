/* kw_http.c: the HTTP/1.1 server front: http-parser callbacks that collect a request under the configured caps,
 * one request in flight per connection (pipelined bytes wait in the connection, which stops reading), responses
 * complete or chunked, keep-alive, and the timeouts against slow clients.
 *
 * Not here: any parsing of HTTP syntax of our own (http-parser does it all) or routing (receiver/).
 * Timeouts use the connection's request deadline: a request's first byte starts the header timeout, the end of its
 * headers the body timeout, and a complete request marks the connection busy with no limit until the response is
 * completed (so the idle timeout and a graceful shutdown wait for the handler).
 */
#include "net/kw_http.h"

#include <http_parser.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/kw_buf.h"
#include "common/kw_status.h"

struct kw_http_server {
    kw_net_server *net;
    kw_http_server_config cfg;
    kw_http_handler_fn handler;
    void *user;
    void (*done)(kw_http_server *s, void *user);
    void *done_user;
};

typedef struct kw__http_conn kw__http_conn;

typedef struct kw__http_req {
    kw_http_request pub;     /* first member: a kw_http_request * is a kw__http_req * */
    kw__http_conn *hc;       /* NULL once the connection is gone */
    char *text;              /* owned: target, header names and values, NUL-separated */
    uint8_t *body;           /* owned */
    kw_http_header *headers; /* owned array; strings point into text */
    char *path;              /* owned copy of the target before '?' */
    bool head_only;          /* HEAD: no body in the response */
    bool started, chunked, close_after;
    void (*on_abort)(kw_http_request *req, void *user);
    void (*on_drain)(kw_http_request *req, void *user);
    void *watch_user;
} kw__http_req;

enum kw__http_last { KW__HTTP_URL, KW__HTTP_FIELD, KW__HTTP_VALUE };

struct kw__http_conn {
    kw_net_conn *conn;
    kw_http_server *server;
    http_parser parser; /* parser.data is the connection */
    /* the request being read */
    kw_buf text, body;
    size_t *name_off, *value_off; /* max_headers entries each */
    size_t n_headers;
    enum kw__http_last last;
    int reject;            /* HTTP status to answer the request with instead of handling it */
    int reject_status;     /* the kw_status the connection closes with after the rejection */
    kw__http_req *current; /* the request being handled */
};

static const http_parser_settings kw__http_settings;

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
    free(r->text);
    free(r->body);
    free(r->headers);
    free(r->path);
    free(r);
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
// Parsing

static void kw__http_reset(kw__http_conn *hc) {
    kw_buf_free(&hc->text);
    kw_buf_free(&hc->body);
    hc->n_headers = 0;
    hc->last = KW__HTTP_URL;
}

/* Rejects the request being read: the status goes out, then the connection closes. */
static int kw__http_reject(kw__http_conn *hc, int http_status, int status) {
    if (!hc->reject) {
        hc->reject = http_status;
        hc->reject_status = status;
    }
    return -1; /* stops http-parser */
}

static int kw__http_append(kw__http_conn *hc, kw_buf *b, const char *at, size_t len, size_t cap) {
    if (b->len + len > cap) return kw__http_reject(hc, b == &hc->body ? 413 : 431, KW_E_NET_HTTP_LIMIT);
    if (kw_buf_append(b, at, len) < 0) return kw__http_reject(hc, 500, KW_E_NOMEM);
    return 0;
}

static int kw__http_on_message_begin(http_parser *p) {
    kw__http_conn *hc = p->data;
    kw__http_reset(hc);
    kw_net_conn_deadline_start(hc->conn, hc->server->cfg.header_timeout_ms);
    return 0;
}

static int kw__http_on_url(http_parser *p, const char *at, size_t len) {
    kw__http_conn *hc = p->data;
    return kw__http_append(hc, &hc->text, at, len, hc->server->cfg.max_header_bytes);
}

static int kw__http_on_header_field(http_parser *p, const char *at, size_t len) {
    kw__http_conn *hc = p->data;
    const size_t cap = hc->server->cfg.max_header_bytes;
    if (hc->last != KW__HTTP_FIELD) {
        if (hc->n_headers == hc->server->cfg.max_headers) return kw__http_reject(hc, 431, KW_E_NET_HTTP_LIMIT);
        if (kw__http_append(hc, &hc->text, "", 1, cap)) return -1; /* ends the target or the previous value */
        hc->name_off[hc->n_headers] = hc->text.len;
        hc->value_off[hc->n_headers] = 0;
        ++hc->n_headers;
        hc->last = KW__HTTP_FIELD;
    }
    return kw__http_append(hc, &hc->text, at, len, cap);
}

static int kw__http_on_header_value(http_parser *p, const char *at, size_t len) {
    kw__http_conn *hc = p->data;
    const size_t cap = hc->server->cfg.max_header_bytes;
    if (hc->last != KW__HTTP_VALUE) {
        if (kw__http_append(hc, &hc->text, "", 1, cap)) return -1; /* ends the name */
        hc->value_off[hc->n_headers - 1] = hc->text.len;
        hc->last = KW__HTTP_VALUE;
    }
    return kw__http_append(hc, &hc->text, at, len, cap);
}

static int kw__http_on_headers_complete(http_parser *p) {
    kw__http_conn *hc = p->data;
    const kw_http_server_config *cfg = &hc->server->cfg;
    if (kw__http_append(hc, &hc->text, "", 1, cfg->max_header_bytes + 1)) return -1;
    if ((p->flags & F_CONTENTLENGTH) && p->content_length > cfg->max_body_bytes)
        return kw__http_reject(hc, 413, KW_E_NET_HTTP_LIMIT);
    if (p->upgrade || p->method == HTTP_CONNECT) return kw__http_reject(hc, 501, KW_E_NET_HTTP);
    kw_net_conn_deadline_start(hc->conn, cfg->body_timeout_ms);
    /* curl sends Expect: 100-continue before bodies over 1 KiB and waits a second unless told to go on */
    for (size_t i = 0; i < hc->n_headers; ++i) {
        const char *name = hc->text.data + hc->name_off[i];
        const char *value = hc->value_off[i] ? hc->text.data + hc->value_off[i] : "";
        if (strcasecmp(name, "expect") == 0 && strcasecmp(value, "100-continue") == 0 && p->http_minor >= 1) {
            static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
            kw_net_conn_write(hc->conn, cont, sizeof cont - 1, NULL, 0, NULL, NULL);
        }
    }
    return 0;
}

static int kw__http_on_body(http_parser *p, const char *at, size_t len) {
    kw__http_conn *hc = p->data;
    return kw__http_append(hc, &hc->body, at, len, hc->server->cfg.max_body_bytes);
}

static int kw__http_on_message_complete(http_parser *p) {
    http_parser_pause(p, 1); /* one request at a time: the read loop hands it over */
    return 0;
}

static const http_parser_settings kw__http_settings = {
    .on_message_begin = kw__http_on_message_begin,
    .on_url = kw__http_on_url,
    .on_header_field = kw__http_on_header_field,
    .on_header_value = kw__http_on_header_value,
    .on_headers_complete = kw__http_on_headers_complete,
    .on_body = kw__http_on_body,
    .on_message_complete = kw__http_on_message_complete,
};

/* Builds the request from the parser state and hands it to the handler. */
static int kw__http_dispatch(kw__http_conn *hc) {
    kw__http_req *r = calloc(1, sizeof *r);
    KW_RETURN_IF(!r, KW_E_NOMEM, "HTTP: out of memory");
    const http_parser *p = &hc->parser;
    size_t text_len = 0, body_len = 0;
    int rc = kw_buf_take(&hc->text, &r->text, &text_len);
    if (rc == 0) rc = kw_buf_take(&hc->body, (char **)&r->body, &body_len);
    r->headers = calloc(hc->n_headers ? hc->n_headers : 1, sizeof *r->headers);
    if (rc == 0 && r->headers) {
        for (size_t i = 0; i < hc->n_headers; ++i) {
            r->headers[i].name = r->text + hc->name_off[i];
            r->headers[i].value = hc->value_off[i] ? r->text + hc->value_off[i] : "";
        }
        const char *q = strchr(r->text, '?');
        r->path = q ? strndup(r->text, (size_t)(q - r->text)) : strdup(r->text);
        r->pub.query = q ? q + 1 : "";
    }
    if (rc < 0 || !r->headers || !r->path) {
        free(r->text);
        free(r->body);
        free(r->headers);
        free(r->path);
        free(r);
        KW_FAIL(KW_E_NOMEM, "HTTP: out of memory");
    }
    r->pub.method = http_method_str((enum http_method)p->method);
    r->pub.target = r->text;
    r->pub.path = r->path;
    r->pub.headers = r->headers;
    r->pub.n_headers = hc->n_headers;
    r->pub.body = r->body;
    r->pub.body_len = body_len;
    r->pub.version_minor = p->http_minor;
    r->pub.keep_alive = http_should_keep_alive(p) != 0;
    r->close_after = !r->pub.keep_alive;
    r->head_only = p->method == HTTP_HEAD;
    r->hc = hc;
    hc->current = r;
    hc->n_headers = 0;
    hc->last = KW__HTTP_URL;
    kw_net_conn_deadline_start(hc->conn, 0); /* busy, no limit: the handler owns the request now */
    hc->server->handler(&r->pub, hc->server->user);
    return 0;
}

static void kw__http_send_reject(kw__http_conn *hc) {
    const int status = hc->reject;
    char head[160];
    const int n = snprintf(head, sizeof head, "HTTP/1.1 %d %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                           status, kw_http_status_text(status));
    char *copy = strndup(head, (size_t)n);
    if (copy) {
        const kw_net_buf buf = {copy, (size_t)n};
        if (kw_net_conn_write(hc->conn, NULL, 0, &buf, 1, kw__http_free_done, copy) < 0) free(copy);
    }
    kw_error_set(hc->reject_status, "HTTP request rejected with %d %s", status, kw_http_status_text(status));
    kw_net_conn_close(hc->conn, hc->reject_status);
}

static int kw__http_on_read(kw_net_conn *c, const uint8_t *data, size_t len, size_t *used) {
    kw__http_conn *hc = kw_net_conn_user(c);
    size_t at = 0;
    while (at < len && !hc->current) {
        const size_t n = http_parser_execute(&hc->parser, &kw__http_settings, (const char *)data + at, len - at);
        at += n;
        const enum http_errno err = HTTP_PARSER_ERRNO(&hc->parser);
        if (err == HPE_PAUSED) {
            http_parser_pause(&hc->parser, 0);
            KW_FORWARD(kw__http_dispatch(hc));
            continue;
        }
        if (err != HPE_OK || hc->parser.upgrade) {
            if (!hc->reject) kw__http_reject(hc, hc->parser.upgrade ? 501 : 400, KW_E_NET_HTTP);
            kw__http_send_reject(hc);
            *used = len;
            return 0;
        }
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
    kw__http_reset(hc);
    free(hc->name_off);
    free(hc->value_off);
    free(hc);
}

static void kw__http_on_accept(kw_net_server *ns, kw_net_conn *c, void *user) {
    kw_http_server *s = user;
    (void)ns;
    kw__http_conn *hc = calloc(1, sizeof *hc);
    const size_t n = s->cfg.max_headers ? s->cfg.max_headers : 1;
    if (hc) {
        hc->name_off = calloc(n, sizeof *hc->name_off);
        hc->value_off = calloc(n, sizeof *hc->value_off);
    }
    if (!hc || !hc->name_off || !hc->value_off) {
        if (hc) {
            free(hc->name_off);
            free(hc->value_off);
        }
        free(hc);
        kw_error_set(KW_E_NOMEM, "HTTP: out of memory");
        kw_net_conn_abort(c, KW_E_NOMEM);
        return;
    }
    hc->conn = c;
    hc->server = s;
    http_parser_init(&hc->parser, HTTP_REQUEST);
    hc->parser.data = hc;
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
