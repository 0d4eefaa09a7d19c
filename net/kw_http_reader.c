/* kw_http_reader.c: the http-parser glue of the HTTP front: collects one request (target, headers, body) under the
 * caps and stops after it, so requests are handled one at a time; rejections carry the HTTP status to answer.
 *
 * Not here: sockets, timeouts, responses (kw_http.c); HTTP syntax itself, which is http-parser's. No I/O: the
 * reader turns bytes into requests, which is what the fuzz target tests/fuzz/fuzz_http_request.c exercises.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/kw_status.h"
#include "net/kw_http_internal.h"

enum { KW__HTTP_LAST_URL, KW__HTTP_LAST_FIELD, KW__HTTP_LAST_VALUE };

static const http_parser_settings kw__http_reader_settings;

void kw__http_req_free(kw__http_req *r) {
    if (!r) return;
    free(r->text);
    free(r->body);
    free(r->headers);
    free(r->path);
    free(r);
}

int kw__http_reader_init(kw__http_reader *r, const kw__http_limits *lim,
                         void (*on_phase)(void *user, enum kw__http_phase phase), void *user) {
    memset(r, 0, sizeof *r);
    KW_RETURN_IF(!lim->max_headers, KW_E_INVALID_ARG, "HTTP: max_headers must be positive");
    r->lim = *lim;
    r->name_off = calloc(lim->max_headers, sizeof *r->name_off);
    r->value_off = calloc(lim->max_headers, sizeof *r->value_off);
    if (!r->name_off || !r->value_off) {
        kw__http_reader_free(r);
        KW_FAIL(KW_E_NOMEM, "HTTP: out of memory");
    }
    r->on_phase = on_phase;
    r->user = user;
    http_parser_init(&r->parser, HTTP_REQUEST);
    r->parser.data = r;
    return 0;
}

void kw__http_reader_free(kw__http_reader *r) {
    kw_buf_free(&r->text);
    kw_buf_free(&r->body);
    free(r->name_off);
    free(r->value_off);
    r->name_off = r->value_off = NULL;
}

/* Rejects the request being read; returning nonzero stops http-parser. */
static int kw__http_reject(kw__http_reader *r, int http_status, int status) {
    if (!r->reject) {
        r->reject = http_status;
        r->reject_status = status;
    }
    return -1;
}

static int kw__http_append(kw__http_reader *r, kw_buf *b, const char *at, size_t len, size_t cap) {
    if (len > cap || b->len > cap - len) return kw__http_reject(r, b == &r->body ? 413 : 431, KW_E_NET_HTTP_LIMIT);
    if (kw_buf_append(b, at, len) < 0) return kw__http_reject(r, 500, KW_E_NOMEM);
    return 0;
}

static int kw__http_on_message_begin(http_parser *p) {
    kw__http_reader *r = p->data;
    kw_buf_free(&r->text);
    kw_buf_free(&r->body);
    r->n_headers = 0;
    r->last = KW__HTTP_LAST_URL;
    if (r->on_phase) r->on_phase(r->user, KW__HTTP_PHASE_HEADERS);
    return 0;
}

static int kw__http_on_url(http_parser *p, const char *at, size_t len) {
    kw__http_reader *r = p->data;
    return kw__http_append(r, &r->text, at, len, r->lim.max_header_bytes);
}

static int kw__http_on_header_field(http_parser *p, const char *at, size_t len) {
    kw__http_reader *r = p->data;
    const size_t cap = r->lim.max_header_bytes;
    if (r->last != KW__HTTP_LAST_FIELD) {
        /* a new header (http-parser reports every value, empty ones with length 0, so a field after a field is
         * the same name split across reads) */
        if (r->n_headers == r->lim.max_headers) return kw__http_reject(r, 431, KW_E_NET_HTTP_LIMIT);
        if (kw__http_append(r, &r->text, "", 1, cap)) return -1; /* ends the target or the previous value */
        r->name_off[r->n_headers] = r->text.len;
        r->value_off[r->n_headers] = 0;
        ++r->n_headers;
        r->last = KW__HTTP_LAST_FIELD;
    }
    return kw__http_append(r, &r->text, at, len, cap);
}

static int kw__http_on_header_value(http_parser *p, const char *at, size_t len) {
    kw__http_reader *r = p->data;
    const size_t cap = r->lim.max_header_bytes;
    if (r->last != KW__HTTP_LAST_VALUE) {
        if (kw__http_append(r, &r->text, "", 1, cap)) return -1; /* ends the name */
        r->value_off[r->n_headers - 1] = r->text.len;
        r->last = KW__HTTP_LAST_VALUE;
    }
    return kw__http_append(r, &r->text, at, len, cap);
}

static int kw__http_on_headers_complete(http_parser *p) {
    kw__http_reader *r = p->data;
    /* the terminator may take the block one byte past the cap: the cap counts what the client sent */
    if (kw__http_append(r, &r->text, "", 1, r->lim.max_header_bytes + 1)) return -1;
    if ((p->flags & F_CONTENTLENGTH) && p->content_length > r->lim.max_body_bytes)
        return kw__http_reject(r, 413, KW_E_NET_HTTP_LIMIT);
    if (p->upgrade || p->method == HTTP_CONNECT) return kw__http_reject(r, 501, KW_E_NET_HTTP);
    bool expect_continue = false;
    for (size_t i = 0; i < r->n_headers && p->http_minor >= 1; ++i)
        if (strcasecmp(r->text.data + r->name_off[i], "expect") == 0 && r->value_off[i] &&
            strcasecmp(r->text.data + r->value_off[i], "100-continue") == 0)
            expect_continue = true;
    if (r->on_phase) r->on_phase(r->user, expect_continue ? KW__HTTP_PHASE_BODY_CONTINUE : KW__HTTP_PHASE_BODY);
    return 0;
}

static int kw__http_on_body(http_parser *p, const char *at, size_t len) {
    kw__http_reader *r = p->data;
    return kw__http_append(r, &r->body, at, len, r->lim.max_body_bytes);
}

static int kw__http_on_message_complete(http_parser *p) {
    kw__http_reader *r = p->data;
    r->complete = true;
    http_parser_pause(p, 1); /* one request at a time: feed returns right after it */
    return 0;
}

static const http_parser_settings kw__http_reader_settings = {
    .on_message_begin = kw__http_on_message_begin,
    .on_url = kw__http_on_url,
    .on_header_field = kw__http_on_header_field,
    .on_header_value = kw__http_on_header_value,
    .on_headers_complete = kw__http_on_headers_complete,
    .on_body = kw__http_on_body,
    .on_message_complete = kw__http_on_message_complete,
};

int kw__http_reader_feed(kw__http_reader *r, const uint8_t *data, size_t len, size_t *used) {
    *used = 0;
    if (r->reject) KW_FAIL(r->reject_status, "HTTP: the connection already failed");
    KW_RETURN_IF(r->complete, KW_E_STATE, "HTTP: take the complete request first");
    if (!len) return 0;
    *used = http_parser_execute(&r->parser, &kw__http_reader_settings, (const char *)data, len);
    const enum http_errno err = HTTP_PARSER_ERRNO(&r->parser);
    if (err == HPE_PAUSED && r->complete) {
        http_parser_pause(&r->parser, 0);
        return KW__HTTP_REQUEST;
    }
    if (err != HPE_OK || r->parser.upgrade) {
        if (!r->reject) kw__http_reject(r, r->parser.upgrade ? 501 : 400, KW_E_NET_HTTP);
        KW_FAIL(r->reject_status, "HTTP: %d %s (%s)", r->reject, kw_http_status_text(r->reject),
                r->reject_status == KW_E_NET_HTTP ? http_errno_description(err) : "over a limit");
    }
    return 0;
}

int kw__http_reader_take(kw__http_reader *r, kw__http_req **out) {
    KW_RETURN_IF(!r->complete, KW_E_STATE, "HTTP: no complete request");
    kw__http_req *q = calloc(1, sizeof *q);
    KW_RETURN_IF(!q, KW_E_NOMEM, "HTTP: out of memory");
    const http_parser *p = &r->parser;
    size_t text_len = 0, body_len = 0;
    /* a request without a target cannot get here (http-parser requires one), but the text is checked anyway */
    int rc = kw_buf_take(&r->text, &q->text, &text_len);
    if (rc == 0) rc = kw_buf_take(&r->body, (char **)&q->body, &body_len);
    if (rc == 0) {
        q->headers = calloc(r->n_headers ? r->n_headers : 1, sizeof *q->headers);
        const char *mark = strchr(q->text, '?');
        q->path = mark ? strndup(q->text, (size_t)(mark - q->text)) : strdup(q->text);
        q->pub.query = mark ? mark + 1 : "";
        if (!q->headers || !q->path) rc = kw_error_set(KW_E_NOMEM, "HTTP: out of memory");
    }
    if (rc < 0) {
        kw__http_req_free(q);
        return rc;
    }
    for (size_t i = 0; i < r->n_headers; ++i) {
        q->headers[i].name = q->text + r->name_off[i];
        q->headers[i].value = r->value_off[i] ? q->text + r->value_off[i] : "";
    }
    q->pub.method = http_method_str((enum http_method)p->method);
    q->pub.target = q->text;
    q->pub.path = q->path;
    q->pub.headers = q->headers;
    q->pub.n_headers = r->n_headers;
    q->pub.body = q->body;
    q->pub.body_len = body_len;
    q->pub.version_minor = p->http_minor;
    q->pub.keep_alive = http_should_keep_alive(p) != 0;
    q->close_after = !q->pub.keep_alive;
    q->head_only = p->method == HTTP_HEAD;
    r->complete = false;
    r->n_headers = 0;
    r->last = KW__HTTP_LAST_URL;
    *out = q;
    return 0;
}
