/* test_net_http.c: the HTTP/1.1 front on loopback, driven by a raw TCP client writing request bytes: exact response
 * bytes, keep-alive, pipelining (responses in request order, one deferred), chunked request bodies, Expect:
 * 100-continue, the limits (431, 413, 400, 501), HTTP/1.0, slowloris (headers sent slowly or not finished) against
 * the header timeout, a server-sent-events stream, a client that leaves mid-request, and graceful shutdown with a
 * request in flight and with requests sent just before it (from a client still in the accept queue and from one
 * accepted but not yet read). Responses are checked by parsing them with http-parser in response mode. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "common/kw_status.h"
#include "net/kw_http.h"
#include "tests/net/net_test_util.h"

// ---------------------------------------------------------------------------------------------------------------
// The application under test

typedef struct app {
    uv_loop_t *loop;
    kw_http_server *server;
    uv_timer_t timer;          /* completes deferred responses */
    kw_http_request *deferred; /* /async or /sse waiting for the timer */
    int sse_sent;
    kw_http_request *slow; /* /slow: completed by the test */
    int aborts;
    int requests;
    int slow_rc;
    bool done;
} app;

static void app_timer_cb(uv_timer_t *t) {
    app *a = t->data;
    kw_http_request *r = a->deferred;
    if (strcmp(r->path, "/async") == 0) {
        a->deferred = NULL;
        assert_int_equal(kw_http_respond(r, 200, "text/plain", NULL, 0, "later", 5), 0);
        return;
    }
    /* /sse: three events, one of them on two lines, then the end */
    if (a->sse_sent < 3) {
        char data[32];
        snprintf(data, sizeof data, a->sse_sent == 1 ? "line a\nline b" : "%d", a->sse_sent);
        assert_true(kw_http_sse_send(r, a->sse_sent == 2 ? "done" : NULL, data) >= 0);
        ++a->sse_sent;
        uv_timer_start(&a->timer, app_timer_cb, 5, 0);
        return;
    }
    a->deferred = NULL;
    assert_int_equal(kw_http_response_end(r), 0);
}

static void app_abort(kw_http_request *r, void *user) {
    app *a = user;
    (void)r;
    ++a->aborts;
}

static void app_handle(kw_http_request *r, void *user) {
    app *a = user;
    ++a->requests;
    if (strcmp(r->path, "/hello") == 0) {
        assert_int_equal(kw_http_respond(r, 200, "text/plain", NULL, 0, "hello", 5), 0);
    } else if (strcmp(r->path, "/echo") == 0) {
        const char *t = kw_http_request_header(r, "x-test");
        const kw_http_header extra[] = {{"X-Test", t ? t : "-"}, {"X-Query", r->query}};
        assert_int_equal(kw_http_respond(r, 200, "application/octet-stream", extra, 2, r->body, r->body_len), 0);
    } else if (strcmp(r->path, "/async") == 0 || strcmp(r->path, "/sse") == 0) {
        assert_null(a->deferred);
        a->deferred = r;
        if (r->path[1] == 's') {
            const kw_http_header extra[] = {{"Cache-Control", "no-cache"}};
            assert_int_equal(kw_http_response_start(r, 200, "text/event-stream", extra, 1), 0);
            a->sse_sent = 0;
        }
        uv_timer_start(&a->timer, app_timer_cb, 10, 0);
    } else if (strcmp(r->path, "/slow") == 0) {
        a->slow = r;
        kw_http_request_watch(r, app_abort, NULL, a);
    } else {
        assert_int_equal(kw_http_respond(r, 404, NULL, NULL, 0, NULL, 0), 0);
    }
}

static void app_start(uv_loop_t *loop, app *a, const kw_http_server_config *cfg_in) {
    memset(a, 0, sizeof *a);
    a->loop = loop;
    kw_http_server_config cfg;
    if (cfg_in)
        cfg = *cfg_in;
    else
        kw_http_server_config_default(&cfg);
    cfg.net.host = "127.0.0.1";
    cfg.net.port = 0;
    assert_int_equal(kw_http_server_start(loop, &cfg, app_handle, a, &a->server), 0);
    uv_timer_init(loop, &a->timer);
    a->timer.data = a;
}

static void app_done(kw_http_server *s, void *user) {
    (void)s;
    ((app *)user)->done = true;
}

static void app_stop(app *a) {
    if (!a->done) {
        kw_http_server_shutdown(a->server, 2000, app_done, a);
        nt_run_until(a->loop, &a->done, 5000);
    }
    kw_http_server_free(a->server);
    uv_close((uv_handle_t *)&a->timer, NULL);
}

/* Every test runs against a fresh loop and server: the fixture (state) of the setup functions below. */
typedef struct fixture {
    uv_loop_t loop;
    app a;
} fixture;

static int fixture_up(void **state, const kw_http_server_config *cfg) {
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    uv_loop_init(&f->loop);
    app_start(&f->loop, &f->a, cfg);
    *state = f;
    return 0;
}

static int setup_default(void **state) {
    return fixture_up(state, NULL);
}

static int setup_limits(void **state) {
    kw_http_server_config cfg;
    kw_http_server_config_default(&cfg);
    cfg.max_header_bytes = 256;
    cfg.max_headers = 4;
    cfg.max_body_bytes = 100;
    return fixture_up(state, &cfg);
}

static int setup_slowloris(void **state) {
    kw_http_server_config cfg;
    kw_http_server_config_default(&cfg);
    cfg.header_timeout_ms = 150;
    cfg.body_timeout_ms = 150;
    return fixture_up(state, &cfg);
}

static int teardown(void **state) {
    fixture *f = *state;
    app_stop(&f->a);
    nt_loop_finish(&f->loop);
    free(f);
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Responses, parsed back with http-parser

typedef struct response {
    int status;
    char headers[1024]; /* "name: value\n" lines, names lowercased */
    char body[4096];
    size_t body_len;
    bool complete;
} response;

typedef struct responses {
    response r[8];
    int n;
    bool in_value;
    char field[128];
} responses;

static int rs_begin(http_parser *p) {
    responses *rs = p->data;
    assert_true(rs->n < 8);
    memset(&rs->r[rs->n], 0, sizeof rs->r[0]);
    ++rs->n;
    return 0;
}

static int rs_field(http_parser *p, const char *at, size_t len) {
    responses *rs = p->data;
    snprintf(rs->field, sizeof rs->field, "%.*s", (int)len, at);
    for (char *c = rs->field; *c; ++c)
        *c = (char)(*c >= 'A' && *c <= 'Z' ? *c + 32 : *c);
    return 0;
}

static int rs_value(http_parser *p, const char *at, size_t len) {
    responses *rs = p->data;
    response *r = &rs->r[rs->n - 1];
    const size_t used = strlen(r->headers);
    snprintf(r->headers + used, sizeof r->headers - used, "%s: %.*s\n", rs->field, (int)len, at);
    return 0;
}

static int rs_headers_done(http_parser *p) {
    responses *rs = p->data;
    rs->r[rs->n - 1].status = (int)p->status_code;
    return 0;
}

static int rs_body(http_parser *p, const char *at, size_t len) {
    responses *rs = p->data;
    response *r = &rs->r[rs->n - 1];
    assert_true(r->body_len + len < sizeof r->body);
    memcpy(r->body + r->body_len, at, len);
    r->body_len += len;
    return 0;
}

static int rs_complete(http_parser *p) {
    responses *rs = p->data;
    rs->r[rs->n - 1].complete = true;
    return 0;
}

/* Parses every response in data[0..len); eof: the connection closed (ends a body without a length). */
static void parse_responses(const uint8_t *data, size_t len, bool eof, responses *rs) {
    memset(rs, 0, sizeof *rs);
    static const http_parser_settings settings = {.on_message_begin = rs_begin,
                                                  .on_header_field = rs_field,
                                                  .on_header_value = rs_value,
                                                  .on_headers_complete = rs_headers_done,
                                                  .on_body = rs_body,
                                                  .on_message_complete = rs_complete};
    http_parser p;
    http_parser_init(&p, HTTP_RESPONSE);
    p.data = rs;
    const size_t n = http_parser_execute(&p, &settings, (const char *)data, len);
    assert_int_equal(n, len);
    if (eof) http_parser_execute(&p, &settings, NULL, 0);
    assert_int_equal(HTTP_PARSER_ERRNO(&p), HPE_OK);
}

typedef struct wait_responses {
    nt_client *c;
    int n;
} wait_responses;

static bool have_responses(void *arg) {
    wait_responses *w = arg;
    responses rs;
    parse_responses(w->c->data, w->c->len, w->c->closed, &rs);
    int complete = 0;
    for (int i = 0; i < rs.n; ++i)
        complete += rs.r[i].complete;
    return complete >= w->n || w->c->closed;
}

/* Sends text on c and waits for n complete responses (or the close); parses them into rs. */
static void request(uv_loop_t *loop, nt_client *c, const char *text, int n, responses *rs) {
    if (text)
        assert_int_equal(kw_net_conn_write(c->conn, NULL, 0, &(kw_net_buf){text, strlen(text)}, 1, NULL, NULL), 0);
    wait_responses w = {c, n};
    nt_run_until_fn(loop, have_responses, &w, 10000);
    parse_responses(c->data, c->len, c->closed, rs);
}

static void connect_client(uv_loop_t *loop, nt_client *c, const app *a) {
    memset(c, 0, sizeof *c);
    nt_client_connect(loop, c, "127.0.0.1", kw_http_server_port(a->server), NULL, NULL, NULL);
    nt_run_until(loop, &c->opened, 5000);
}

static void finish_client(uv_loop_t *loop, nt_client *c) {
    if (!c->closed) kw_net_conn_close(c->conn, 0);
    nt_run_until(loop, &c->closed, 5000);
    nt_client_free(c);
}

// ---------------------------------------------------------------------------------------------------------------
// Tests

static void test_basic_keepalive(void **state) {
    fixture *f = *state;
    uv_loop_t *loop = &f->loop;
    app *a = &f->a;
    nt_client c;
    connect_client(loop, &c, a);
    responses rs;
    request(loop, &c, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n", 1, &rs);
    static const char want[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello";
    assert_int_equal(c.len, sizeof want - 1);
    assert_memory_equal(c.data, want, sizeof want - 1);
    /* the connection stays open: a second request on it, with a body, a header and a query */
    request(loop, &c,
            "POST /echo?k=v HTTP/1.1\r\nHost: x\r\nX-Test: abc\r\nX-Empty:\r\nContent-Length: 11\r\n\r\nhello world", 2,
            &rs);
    assert_int_equal(rs.n, 2);
    assert_int_equal(rs.r[1].status, 200);
    assert_int_equal(rs.r[1].body_len, 11);
    assert_memory_equal(rs.r[1].body, "hello world", 11);
    assert_non_null(strstr(rs.r[1].headers, "x-test: abc\n"));
    assert_non_null(strstr(rs.r[1].headers, "x-query: k=v\n"));
    /* an unknown path, then Connection: close ends the connection after the response */
    request(loop, &c, "GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 3, &rs);
    assert_int_equal(rs.r[2].status, 404);
    assert_non_null(strstr(rs.r[2].headers, "connection: close\n"));
    nt_run_until(loop, &c.closed, 5000);
    assert_int_equal(c.close_status, KW_E_NET_CLOSED);
    assert_int_equal(a->requests, 3);
    nt_client_free(&c);
    /* HTTP/1.0: no keep-alive unless asked, the answer is HTTP/1.0 */
    connect_client(loop, &c, a);
    request(loop, &c, "GET /hello HTTP/1.0\r\n\r\n", 1, &rs);
    nt_run_until(loop, &c.closed, 5000);
    assert_memory_equal(c.data, "HTTP/1.0 200 OK\r\n", 17);
    nt_client_free(&c);
}

static void test_pipelining(void **state) {
    fixture *f = *state;
    uv_loop_t *loop = &f->loop;
    app *a = &f->a;
    nt_client c;
    connect_client(loop, &c, a);
    /* three requests in one write; the first is answered later from a timer: the others wait their turn */
    responses rs;
    request(loop, &c,
            "GET /async HTTP/1.1\r\nHost: x\r\n\r\n"
            "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nchunk\r\n3\r\ned!\r\n0\r\n\r\n"
            "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n",
            3, &rs);
    assert_int_equal(rs.n, 3);
    assert_memory_equal(rs.r[0].body, "later", 5);
    assert_int_equal(rs.r[1].body_len, 8);
    assert_memory_equal(rs.r[1].body, "chunked!", 8);
    assert_memory_equal(rs.r[2].body, "hello", 5);
    /* the same, one byte per write */
    finish_client(loop, &c);
    connect_client(loop, &c, a);
    static const char two[] = "GET /async HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n";
    for (size_t i = 0; i < sizeof two - 1; ++i)
        assert_int_equal(kw_net_conn_write(c.conn, &two[i], 1, NULL, 0, NULL, NULL), 0);
    request(loop, &c, NULL, 2, &rs);
    assert_memory_equal(rs.r[0].body, "later", 5);
    assert_memory_equal(rs.r[1].body, "hello", 5);
    finish_client(loop, &c);
}

static void test_expect_continue(void **state) {
    fixture *f = *state;
    uv_loop_t *loop = &f->loop;
    app *a = &f->a;
    nt_client c;
    connect_client(loop, &c, a);
    static const char head[] = "POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n";
    assert_int_equal(kw_net_conn_write(c.conn, NULL, 0, &(kw_net_buf){head, sizeof head - 1}, 1, NULL, NULL), 0);
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    while (c.len < sizeof cont - 1)
        uv_run(loop, UV_RUN_ONCE);
    assert_memory_equal(c.data, cont, sizeof cont - 1);
    responses rs;
    request(loop, &c, "body", 2, &rs); /* the interim 100 and the 200 */
    assert_int_equal(rs.r[rs.n - 1].status, 200);
    assert_memory_equal(rs.r[rs.n - 1].body, "body", 4);
    finish_client(loop, &c);
}

/* Sends text on a new connection and expects one response with status, then the close; the handler never runs. */
static void expect_rejected(uv_loop_t *loop, app *a, const char *text, int status) {
    nt_client c;
    connect_client(loop, &c, a);
    const int before = a->requests;
    responses rs;
    request(loop, &c, text, 1, &rs);
    nt_run_until(loop, &c.closed, 5000);
    parse_responses(c.data, c.len, true, &rs);
    assert_int_equal(rs.n, 1);
    assert_int_equal(rs.r[0].status, status);
    assert_non_null(strstr(rs.r[0].headers, "connection: close\n"));
    assert_int_equal(a->requests, before);
    nt_client_free(&c);
}

static void test_limits(void **state) {
    fixture *f = *state;
    uv_loop_t *loop = &f->loop;
    app *a = &f->a;
    char big[600];
    snprintf(big, sizeof big, "GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: %0400d\r\n\r\n", 0);
    expect_rejected(loop, a, big, 431);
    char url[400];
    snprintf(url, sizeof url, "GET /%0300d HTTP/1.1\r\n\r\n", 0);
    expect_rejected(loop, a, url, 431);
    expect_rejected(loop, a, "GET /hello HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n\r\n", 431);
    expect_rejected(loop, a, "POST /echo HTTP/1.1\r\nContent-Length: 101\r\n\r\n", 413);
    char chunked[400];
    snprintf(chunked, sizeof chunked,
             "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n50\r\n%080d\r\n50\r\n%080d\r\n0\r\n\r\n", 0, 0);
    expect_rejected(loop, a, chunked, 413);
    expect_rejected(loop, a, "GARBAGE\r\n\r\n", 400);
    expect_rejected(loop, a, "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx", 400);
    expect_rejected(loop, a, "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 501);
    expect_rejected(loop, a, "CONNECT example.com:443 HTTP/1.1\r\n\r\n", 501);
    /* the header cap counts the target and each name and value plus one byte apiece (what is kept of them): 256 of it
     * with one header of a 245-byte value is at the cap, 246 bytes one past it */
    char at_cap[400], past_cap[400];
    snprintf(at_cap, sizeof at_cap, "GET /hello HTTP/1.1\r\nX-A: %0245d\r\n\r\n", 0);
    snprintf(past_cap, sizeof past_cap, "GET /hello HTTP/1.1\r\nX-A: %0246d\r\n\r\n", 0);
    expect_rejected(loop, a, past_cap, 431);
    /* exactly at the limits is fine: the header bytes, the header count, the body */
    nt_client c;
    connect_client(loop, &c, a);
    responses at;
    request(loop, &c, at_cap, 1, &at);
    assert_int_equal(at.r[0].status, 200);
    request(loop, &c, "GET /hello HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n", 2, &at);
    assert_int_equal(at.r[1].status, 200);
    char body[200];
    snprintf(body, sizeof body, "POST /echo HTTP/1.1\r\nContent-Length: 100\r\n\r\n%0100d", 0);
    responses rs;
    request(loop, &c, body, 3, &rs);
    assert_int_equal(rs.n, 3);
    assert_int_equal(rs.r[2].status, 200);
    assert_int_equal(rs.r[2].body_len, 100);
    finish_client(loop, &c);
}

typedef struct trickle {
    nt_client *c;
    uv_timer_t timer;
    const char *text;
    size_t at;
} trickle;

static void trickle_cb(uv_timer_t *t) {
    trickle *tr = t->data;
    if (tr->c->closed || !tr->text[tr->at]) return;
    assert_true(kw_net_conn_write(tr->c->conn, &tr->text[tr->at++], 1, NULL, 0, NULL, NULL) >= 0);
    uv_timer_start(t, trickle_cb, 20, 0);
}

static void test_slowloris(void **state) {
    fixture *f = *state;
    uv_loop_t *loop = &f->loop;
    app *a = &f->a;
    /* headers started and never finished */
    nt_client c;
    connect_client(loop, &c, a);
    static const char part[] = "GET /hello HTTP/1.1\r\nHost: x\r\n";
    assert_int_equal(kw_net_conn_write(c.conn, part, sizeof part - 1, NULL, 0, NULL, NULL), 0);
    nt_run_until(loop, &c.closed, 5000);
    assert_int_equal(c.len, 0);
    nt_client_free(&c);
    /* headers trickled a byte every 20 ms: activity does not help, the deadline counts from the first byte */
    connect_client(loop, &c, a);
    trickle tr = {&c,
                  .text = "GET /hello HTTP/1.1\r\nHost: example\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n"};
    uv_timer_init(loop, &tr.timer);
    tr.timer.data = &tr;
    uv_timer_start(&tr.timer, trickle_cb, 0, 0);
    nt_run_until(loop, &c.closed, 5000);
    assert_true(tr.text[tr.at] != 0); /* closed before the headers were complete */
    assert_int_equal(c.len, 0);
    assert_int_equal(a->requests, 0);
    uv_close((uv_handle_t *)&tr.timer, NULL);
    nt_client_free(&c);
    /* a body promised and not sent */
    connect_client(loop, &c, a);
    static const char nobody[] = "POST /echo HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc";
    assert_int_equal(kw_net_conn_write(c.conn, nobody, sizeof nobody - 1, NULL, 0, NULL, NULL), 0);
    nt_run_until(loop, &c.closed, 5000);
    assert_int_equal(c.len, 0);
    nt_client_free(&c);
}

static void test_sse(void **state) {
    fixture *f = *state;
    uv_loop_t *loop = &f->loop;
    app *a = &f->a;
    nt_client c;
    connect_client(loop, &c, a);
    responses rs;
    request(loop, &c, "GET /sse HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n", 1, &rs);
    assert_int_equal(rs.r[0].status, 200);
    assert_non_null(strstr(rs.r[0].headers, "content-type: text/event-stream\n"));
    assert_non_null(strstr(rs.r[0].headers, "transfer-encoding: chunked\n"));
    assert_non_null(strstr(rs.r[0].headers, "cache-control: no-cache\n"));
    static const char events[] = "data: 0\n\ndata: line a\ndata: line b\n\nevent: done\ndata: 2\n\n";
    assert_int_equal(rs.r[0].body_len, sizeof events - 1);
    assert_memory_equal(rs.r[0].body, events, sizeof events - 1);
    /* keep-alive after a chunked response */
    request(loop, &c, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n", 2, &rs);
    assert_memory_equal(rs.r[1].body, "hello", 5);
    finish_client(loop, &c);
}

static void test_client_gone(void **state) {
    fixture *f = *state;
    uv_loop_t *loop = &f->loop;
    app *a = &f->a;
    nt_client c;
    connect_client(loop, &c, a);
    assert_int_equal(kw_net_conn_write(c.conn, "GET /slow HTTP/1.1\r\n\r\n", 22, NULL, 0, NULL, NULL), 0);
    while (!a->slow)
        uv_run(loop, UV_RUN_ONCE);
    kw_net_conn_abort(c.conn, 0);
    nt_run_until(loop, &c.closed, 5000);
    while (a->aborts == 0)
        uv_run(loop, UV_RUN_ONCE);
    /* the handler completes the request anyway: told the client is gone, the request is freed */
    assert_int_equal(kw_http_respond(a->slow, 200, NULL, NULL, 0, "x", 1), KW_E_NET_CLOSED);
    nt_client_free(&c);
}

static void test_shutdown_in_flight(void **state) {
    fixture *f = *state;
    uv_loop_t *loop = &f->loop;
    app *a = &f->a;
    nt_client busy, idle;
    connect_client(loop, &busy, a);
    connect_client(loop, &idle, a);
    responses rs;
    request(loop, &idle, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n", 1, &rs); /* idle, kept alive */
    assert_int_equal(kw_net_conn_write(busy.conn, "GET /slow HTTP/1.1\r\n\r\n", 22, NULL, 0, NULL, NULL), 0);
    while (!a->slow)
        uv_run(loop, UV_RUN_ONCE);
    kw_http_server_shutdown(a->server, 5000, app_done, a);
    nt_run_until(loop, &idle.closed, 5000); /* the idle connection goes at once */
    assert_false(busy.closed);
    assert_false(a->done);
    /* the request in flight completes: its response arrives, then its connection closes, then the server is done */
    assert_int_equal(kw_http_respond(a->slow, 200, "text/plain", NULL, 0, "finally", 7), 0);
    nt_run_until(loop, &busy.closed, 5000);
    parse_responses(busy.data, busy.len, true, &rs);
    assert_int_equal(rs.n, 1);
    assert_memory_equal(rs.r[0].body, "finally", 7);
    nt_run_until(loop, &a->done, 5000);
    nt_client_free(&busy);
    nt_client_free(&idle);
}

/* A plain blocking socket connected to the server: the kernel completes the handshake and keeps what it sends
 * whether or not the server's loop has run. */
static int raw_connect(uint16_t port) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (const struct sockaddr *)&addr, sizeof addr), 0);
    const struct timeval limit = {.tv_sec = 5};
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit), 0);
    return fd;
}

/* Reads fd to its end (or a reset, or the 5 s receive limit) and checks that it holds exactly one complete
 * response, the /hello one. */
static void raw_expect_hello(int fd) {
    uint8_t buf[4096];
    size_t len = 0;
    for (;;) {
        const ssize_t n = recv(fd, buf + len, sizeof buf - len, 0);
        if (n <= 0) break;
        len += (size_t)n;
        assert_true(len < sizeof buf);
    }
    close(fd);
    responses rs;
    parse_responses(buf, len, true, &rs);
    assert_int_equal(rs.n, 1);
    assert_true(rs.r[0].complete);
    assert_int_equal(rs.r[0].status, 200);
    assert_memory_equal(rs.r[0].body, "hello", 5);
}

/* Clients that connected and sent their request just before the shutdown get their response: one still in the
 * kernel's accept queue (the loop never ran after its connect), one accepted whose request is unread. */
static void test_shutdown_pending(void **state) {
    fixture *f = *state;
    uv_loop_t *loop = &f->loop;
    app *a = &f->a;
    static const char hello[] = "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n";
    const int accepted = raw_connect(kw_http_server_port(a->server));
    nt_run_for(loop, 50); /* the server accepts it */
    const int queued = raw_connect(kw_http_server_port(a->server));
    assert_int_equal(send(accepted, hello, sizeof hello - 1, 0), (ssize_t)(sizeof hello - 1));
    assert_int_equal(send(queued, hello, sizeof hello - 1, 0), (ssize_t)(sizeof hello - 1));
    kw_http_server_shutdown(a->server, 5000, app_done, a);
    nt_run_until(loop, &a->done, 5000);
    assert_int_equal(a->requests, 2);
    raw_expect_hello(accepted);
    raw_expect_hello(queued);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_basic_keepalive, setup_default, teardown),
        cmocka_unit_test_setup_teardown(test_pipelining, setup_default, teardown),
        cmocka_unit_test_setup_teardown(test_expect_continue, setup_default, teardown),
        cmocka_unit_test_setup_teardown(test_limits, setup_limits, teardown),
        cmocka_unit_test_setup_teardown(test_slowloris, setup_slowloris, teardown),
        cmocka_unit_test_setup_teardown(test_sse, setup_default, teardown),
        cmocka_unit_test_setup_teardown(test_client_gone, setup_default, teardown),
        cmocka_unit_test_setup_teardown(test_shutdown_in_flight, setup_default, teardown),
        cmocka_unit_test_setup_teardown(test_shutdown_pending, setup_default, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
