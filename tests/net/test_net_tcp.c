/* test_net_tcp.c: the TCP transport on loopback (ephemeral ports) as the daemons use it, with proto/'s frame decoder
 * on the read side (the framed connection): many frames, large ones included, verified byte for byte; socket byte
 * counts; backpressure (FULL, refusal at the hard limit, on_drain) against a receiver that stops reading; read
 * pause/resume with kept bytes; connect failure; idle and per-request timeouts; graceful shutdown (idle
 * connections closed, a request in flight finishes, a stuck one is aborted at the deadline) and SIGTERM. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_status.h"
#include "net/kw_net.h"
#include "proto/kw_proto.h"
#include "tests/net/net_test_util.h"

static uint8_t pattern(uint64_t frame, size_t i) {
    return (uint8_t)(frame * 29 + i * 7 + (i >> 9));
}

// ---------------------------------------------------------------------------------------------------------------
// A framed peer: a server connection that decodes frames, checks WIRE payloads against the pattern, answers Ping
// with Pong, and can stop reading.

typedef struct peer {
    kw_net_conn *conn;
    kw_proto_decoder *dec;
    uint64_t frames, wire_frames, wire_bytes, pings;
    bool hold;                /* consume nothing (the connection keeps the bytes and stops reading) */
    bool deadline_on_request; /* a SHARE_REQUEST starts a request with deadline_ms (0: none), never stopped */
    uint32_t deadline_ms;
    bool closed;
    int close_status;
    kw_net_conn_stats stats;
} peer;

typedef struct server_ctx {
    kw_net_server *server;
    peer peers[4];
    int n_peers;
    bool hold_new, deadline_new;
    uint32_t deadline_ms_new;
    bool done;
} server_ctx;

static int peer_frame(void *user, const kw_proto_frame *f) {
    peer *p = user;
    if (f->type == KW_PROTO_FRAME_WIRE) {
        for (uint32_t i = 0; i < f->data_len; ++i)
            if (f->data[i] != pattern(p->wire_frames, f->offset + i))
                fail_msg("WIRE frame %llu byte %u differs", (unsigned long long)p->wire_frames, f->offset + i);
        p->wire_bytes += f->data_len;
        if (!kw_proto_frame_complete(f)) return 0;
        ++p->wire_frames;
    } else if (f->type == KW_PROTO_FRAME_PING) {
        ProtobufCMessage *m;
        KW_FORWARD(kw_proto_message_unpack(NULL, f->type, f->data, f->data_len, &m));
        Kwctl__Pong pong = KWCTL__PONG__INIT;
        pong.nonce = ((Kwctl__Ping *)m)->nonce;
        kw_proto_message_free(m);
        uint8_t buf[32];
        size_t n;
        KW_FORWARD(kw_proto_message_frame_write(KW_PROTO_FRAME_PONG, &pong.base, buf, sizeof buf, &n));
        const int rc = kw_net_conn_write(p->conn, buf, n, NULL, 0, NULL, NULL);
        if (rc < 0) return rc;
        ++p->pings;
    } else if (f->type == KW_PROTO_FRAME_SHARE_REQUEST && p->deadline_on_request) {
        kw_net_conn_deadline_start(p->conn, p->deadline_ms);
    }
    ++p->frames;
    return 0;
}

static int peer_read(kw_net_conn *c, const uint8_t *data, size_t len, size_t *used) {
    peer *p = kw_net_conn_user(c);
    if (p->hold) {
        *used = 0;
        return 0;
    }
    return kw_proto_decoder_feed_all(p->dec, data, len, used, peer_frame, p) < 0
               ? kw_error_set(KW_E_PROTO_MESSAGE, "bad frame")
               : 0;
}

static void peer_close(kw_net_conn *c, int status) {
    peer *p = kw_net_conn_user(c);
    kw_net_conn_get_stats(c, &p->stats);
    p->closed = true;
    p->close_status = status;
    p->conn = NULL;
    kw_proto_decoder_destroy(p->dec);
    p->dec = NULL;
}

static void on_accept(kw_net_server *s, kw_net_conn *c, void *user) {
    server_ctx *ctx = user;
    (void)s;
    assert_true(ctx->n_peers < 4);
    peer *p = &ctx->peers[ctx->n_peers++];
    memset(p, 0, sizeof *p);
    p->conn = c;
    p->hold = ctx->hold_new;
    p->deadline_on_request = ctx->deadline_new;
    p->deadline_ms = ctx->deadline_ms_new;
    kw_proto_decoder_options opt = {.stream_raw = true};
    assert_int_equal(kw_proto_decoder_create(&opt, &p->dec), 0);
    static const kw_net_conn_callbacks cb = {.on_read = peer_read, .on_close = peer_close};
    kw_net_conn_set_callbacks(c, &cb, p);
}

static void server_start(uv_loop_t *loop, server_ctx *ctx, const kw_net_conn_options *opt) {
    memset(ctx->peers, 0, sizeof ctx->peers);
    kw_net_server_config cfg = {.host = "127.0.0.1", .port = 0};
    if (opt)
        cfg.conn = *opt;
    else
        nt_conn_options(&cfg.conn);
    assert_int_equal(kw_net_server_start(loop, &cfg, on_accept, ctx, &ctx->server), 0);
    assert_true(kw_net_server_port(ctx->server) > 0);
}

static void server_done(kw_net_server *s, void *user) {
    (void)s;
    ((server_ctx *)user)->done = true;
}

static void server_stop(uv_loop_t *loop, server_ctx *ctx) {
    kw_net_server_shutdown(ctx->server, 2000, server_done, ctx);
    nt_run_until(loop, &ctx->done, 5000);
    kw_net_server_free(ctx->server);
}

// ---------------------------------------------------------------------------------------------------------------
// A framed sender: writes a list of frames (a 5-byte head and a borrowed payload) respecting backpressure.

typedef struct sender {
    nt_client cl;
    size_t n_frames, next, completed;
    size_t *sizes; /* payload bytes per frame; SIZE_MAX: a Ping */
    uint8_t **payloads;
    int full_returns, drains;
    bool blocked;
} sender;

static void sender_done(kw_net_conn *c, int status, void *user) {
    sender *s = user;
    (void)c;
    assert_int_equal(status, 0);
    ++s->completed;
}

static void sender_pump(sender *s) {
    while (!s->blocked && s->next < s->n_frames) {
        const size_t i = s->next;
        int rc;
        if (s->sizes[i] == SIZE_MAX) {
            Kwctl__Ping ping = KWCTL__PING__INIT;
            ping.nonce = i;
            uint8_t buf[32];
            size_t n;
            assert_int_equal(kw_proto_message_frame_write(KW_PROTO_FRAME_PING, &ping.base, buf, sizeof buf, &n), 0);
            rc = kw_net_conn_write(s->cl.conn, buf, n, NULL, 0, sender_done, s);
        } else {
            uint8_t head[KW_PROTO_FRAME_HEADER_BYTES];
            assert_int_equal(kw_proto_frame_header_write(KW_PROTO_FRAME_WIRE, s->sizes[i], head), 0);
            const kw_net_buf payload = {s->payloads[i], s->sizes[i]};
            rc = kw_net_conn_write(s->cl.conn, head, sizeof head, &payload, 1, sender_done, s);
        }
        assert_true(rc >= 0);
        ++s->next;
        if (rc == KW_NET_WRITE_FULL) {
            ++s->full_returns;
            s->blocked = true;
        }
    }
}

static void sender_drain(kw_net_conn *c) {
    sender *s = kw_net_conn_user(c);
    ++s->drains;
    s->blocked = false;
    sender_pump(s);
}

static void sender_open(kw_net_conn *c) {
    sender *s = kw_net_conn_user(c);
    s->cl.opened = true;
    sender_pump(s);
}

static int sender_read(kw_net_conn *c, const uint8_t *data, size_t len, size_t *used) {
    sender *s = kw_net_conn_user(c);
    s->cl.data = realloc(s->cl.data, s->cl.len + len);
    memcpy(s->cl.data + s->cl.len, data, len);
    s->cl.len += len;
    *used = len;
    return 0;
}

static void sender_close(kw_net_conn *c, int status) {
    sender *s = kw_net_conn_user(c);
    s->cl.closed = true;
    s->cl.close_status = status;
    s->cl.conn = NULL;
}

static void sender_connect(uv_loop_t *loop, sender *s, uint16_t port, const kw_net_conn_options *opt) {
    static const kw_net_conn_callbacks cb = {
        .on_open = sender_open, .on_read = sender_read, .on_drain = sender_drain, .on_close = sender_close};
    kw_net_client_config cfg = {.host = "127.0.0.1", .port = port};
    cfg.conn = *opt;
    assert_int_equal(kw_net_connect(loop, &cfg, &cb, s, &s->cl.conn), 0);
}

static void sender_make(sender *s, size_t n, const size_t *sizes) {
    memset(s, 0, sizeof *s);
    s->n_frames = n;
    s->sizes = malloc(n * sizeof *s->sizes);
    s->payloads = calloc(n, sizeof *s->payloads);
    uint64_t wire = 0;
    for (size_t i = 0; i < n; ++i) {
        s->sizes[i] = sizes[i];
        if (sizes[i] == SIZE_MAX) continue;
        s->payloads[i] = malloc(sizes[i] ? sizes[i] : 1);
        for (size_t k = 0; k < sizes[i]; ++k)
            s->payloads[i][k] = pattern(wire, k);
        ++wire;
    }
}

static void sender_free(sender *s) {
    for (size_t i = 0; i < s->n_frames; ++i)
        free(s->payloads[i]);
    free(s->payloads);
    free(s->sizes);
    nt_client_free(&s->cl);
}

static size_t sender_wire_bytes(const sender *s, size_t *frames, size_t *pings) {
    size_t total = 0;
    *frames = *pings = 0;
    for (size_t i = 0; i < s->n_frames; ++i) {
        if (s->sizes[i] == SIZE_MAX) {
            ++*pings;
        } else {
            total += s->sizes[i];
            ++*frames;
        }
    }
    return total;
}

// ---------------------------------------------------------------------------------------------------------------
// Tests

typedef struct many_wait {
    sender *s;
    server_ctx *ctx;
    size_t n;
    size_t pong_bytes;
} many_wait;

static bool many_done(void *arg) {
    const many_wait *w = arg;
    return w->s->completed == w->n && w->ctx->n_peers == 1 && w->ctx->peers[0].frames == w->n &&
           w->s->cl.len == w->pong_bytes;
}

static bool have_peer(void *arg) {
    return ((server_ctx *)arg)->n_peers > 0;
}

static bool drained(void *arg) {
    return ((sender *)arg)->drains > 0;
}

typedef struct frames_wait {
    peer *p;
    uint64_t frames;
} frames_wait;

static bool peer_has_frames(void *arg) {
    const frames_wait *w = arg;
    return w->p->wire_frames >= w->frames;
}

static void test_many_frames(void **state) {
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    server_ctx ctx = {0};
    server_start(&loop, &ctx, NULL);
    /* 300 frames: pings, empty frames, odd sizes, and a few of 3-6 MiB (larger than the read buffer and the
     * high water mark) */
    enum { N = 300 };
    size_t sizes[N];
    for (size_t i = 0; i < N; ++i) {
        if (i % 7 == 3)
            sizes[i] = SIZE_MAX;
        else if (i % 50 == 10)
            sizes[i] = (3u << 20) + i * 10007;
        else if (i % 11 == 0)
            sizes[i] = 0;
        else
            sizes[i] = 1 + (i * 7919) % 70000;
    }
    sender s;
    sender_make(&s, N, sizes);
    kw_net_conn_options opt;
    nt_conn_options(&opt);
    sender_connect(&loop, &s, kw_net_server_port(ctx.server), &opt);
    size_t frames, pings, pong_bytes = 0;
    const size_t wire = sender_wire_bytes(&s, &frames, &pings);
    for (size_t i = 0; i < N; ++i)
        if (sizes[i] == SIZE_MAX) {
            Kwctl__Pong pong = KWCTL__PONG__INIT;
            pong.nonce = i;
            size_t n;
            assert_int_equal(kw_proto_message_frame_size(KW_PROTO_FRAME_PONG, &pong.base, &n), 0);
            pong_bytes += n;
        }
    many_wait w = {&s, &ctx, N, pong_bytes};
    nt_run_until_fn(&loop, many_done, &w, 60000);
    peer *p = &ctx.peers[0];
    assert_int_equal(p->wire_frames, frames);
    assert_int_equal(p->wire_bytes, wire);
    assert_int_equal(p->pings, pings);
    assert_true(s.full_returns > 0); /* the big frames went over the 4 MiB high water mark */
    assert_int_equal(s.full_returns, s.drains);
    /* the client got exactly the Pongs, in order */
    kw_proto_decoder *d;
    assert_int_equal(kw_proto_decoder_create(NULL, &d), 0);
    size_t at = 0, n_pongs = 0;
    while (at < s.cl.len) {
        size_t used;
        kw_proto_frame f;
        const int ev = kw_proto_decoder_feed(d, s.cl.data + at, s.cl.len - at, &used, &f);
        assert_true(ev >= 0);
        at += used;
        if (ev == KW_PROTO_EVENT_FRAME) {
            assert_int_equal(f.type, KW_PROTO_FRAME_PONG);
            ++n_pongs;
        }
    }
    assert_int_equal(kw_proto_decoder_finish(d), 0);
    kw_proto_decoder_destroy(d);
    assert_int_equal(n_pongs, pings);
    /* socket byte counts: every frame's header and payload, nothing else */
    kw_net_conn_stats st;
    kw_net_conn_get_stats(s.cl.conn, &st);
    size_t ping_bytes = 0;
    for (size_t i = 0; i < N; ++i)
        if (sizes[i] == SIZE_MAX) {
            Kwctl__Ping ping = KWCTL__PING__INIT;
            ping.nonce = i;
            size_t n;
            assert_int_equal(kw_proto_message_frame_size(KW_PROTO_FRAME_PING, &ping.base, &n), 0);
            ping_bytes += n;
        }
    assert_int_equal(st.socket_bytes_out, wire + frames * KW_PROTO_FRAME_HEADER_BYTES + ping_bytes);
    assert_int_equal(st.app_bytes_out, st.socket_bytes_out);
    assert_int_equal(st.socket_bytes_in, s.cl.len);
    /* a clean close from the client: it sees 0, the server sees the peer closing */
    kw_net_conn_close(s.cl.conn, 0);
    nt_run_until(&loop, &s.cl.closed, 5000);
    nt_run_until(&loop, &p->closed, 5000);
    assert_int_equal(s.cl.close_status, 0);
    assert_int_equal(p->close_status, KW_E_NET_CLOSED);
    assert_int_equal(p->stats.socket_bytes_in, st.socket_bytes_out);
    server_stop(&loop, &ctx);
    sender_free(&s);
    nt_loop_finish(&loop);
}

static void test_backpressure(void **state) {
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    server_ctx ctx = {.hold_new = true}; /* the receiver reads nothing until told */
    server_start(&loop, &ctx, NULL);
    kw_net_conn_options opt;
    nt_conn_options(&opt);
    opt.write_high_water = 2u << 20;
    opt.write_low_water = 1u << 20;
    opt.write_max_bytes = 48u << 20;
    enum { N = 64 };
    size_t sizes[N];
    for (size_t i = 0; i < N; ++i)
        sizes[i] = 1u << 20;
    sender s;
    sender_make(&s, N, sizes);
    /* connect without pumping: the test drives the writes itself */
    static const kw_net_conn_callbacks cb = {
        .on_open = sender_open, .on_read = sender_read, .on_drain = sender_drain, .on_close = sender_close};
    kw_net_client_config cfg = {.host = "127.0.0.1", .port = kw_net_server_port(ctx.server), .conn = opt};
    s.blocked = true;
    assert_int_equal(kw_net_connect(&loop, &cfg, &cb, &s, &s.cl.conn), 0);
    nt_run_until_fn(&loop, have_peer, &ctx, 5000);
    nt_run_until(&loop, &s.cl.opened, 5000);
    /* Synchronous writes: the queue grows by 1 MiB + 5 per write (no write callback runs in between). */
    uint8_t head[KW_PROTO_FRAME_HEADER_BYTES];
    int first_full = -1, refused_at = -1;
    for (size_t i = 0; i < N; ++i) {
        assert_int_equal(kw_proto_frame_header_write(KW_PROTO_FRAME_WIRE, sizes[i], head), 0);
        const kw_net_buf payload = {s.payloads[i], sizes[i]};
        const int rc = kw_net_conn_write(s.cl.conn, head, sizeof head, &payload, 1, sender_done, &s);
        if (rc == KW_NET_WRITE_FULL && first_full < 0) first_full = (int)i;
        if (rc == KW_E_NET_BACKPRESSURE) {
            refused_at = (int)i;
            break;
        }
        assert_true(rc >= 0);
        s.next = i + 1;
    }
    /* FULL once the queue passed 2 MiB (the 2nd write); refused once it held 48 MiB (the 49th) */
    assert_int_equal(first_full, 1);
    assert_int_equal(refused_at, 48);
    assert_int_equal(kw_net_conn_write_queued(s.cl.conn), 48 * ((1u << 20) + 5));
    /* The receiver is not reading: the kernel buffers take a few MiB and the rest stays queued, so no drain. */
    nt_run_for(&loop, 300);
    assert_int_equal(s.drains, 0);
    assert_true(kw_net_conn_write_queued(s.cl.conn) > opt.write_low_water);
    assert_true(ctx.peers[0].wire_bytes < 48u << 20);
    /* The receiver reads again: the kept bytes are delivered first, the queue drains, on_drain runs, the sender
     * writes the remaining frames. */
    ctx.peers[0].hold = false;
    kw_net_conn_resume_reading(ctx.peers[0].conn);
    s.blocked = true;
    nt_run_until_fn(&loop, drained, &s, 20000);
    frames_wait fw = {&ctx.peers[0], N};
    nt_run_until_fn(&loop, peer_has_frames, &fw, 20000);
    assert_int_equal(ctx.peers[0].wire_bytes, (uint64_t)N << 20);
    assert_int_equal(s.completed, N);
    kw_net_conn_close(s.cl.conn, 0);
    nt_run_until(&loop, &s.cl.closed, 5000);
    server_stop(&loop, &ctx);
    sender_free(&s);
    nt_loop_finish(&loop);
}

static void test_connect_refused(void **state) {
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    /* a port that was just free: bind a server, remember its port, shut it down */
    server_ctx ctx = {0};
    server_start(&loop, &ctx, NULL);
    const uint16_t port = kw_net_server_port(ctx.server);
    server_stop(&loop, &ctx);
    nt_client c = {0};
    nt_client_connect(&loop, &c, "127.0.0.1", port, NULL, NULL, NULL);
    nt_run_until(&loop, &c.closed, 5000);
    assert_false(c.opened);
    assert_int_equal(c.close_status, KW_E_NET_CONNECT);
    /* a name that does not resolve */
    nt_client d = {0};
    nt_client_connect(&loop, &d, "no-such-host.invalid", port, NULL, NULL, NULL);
    nt_run_until(&loop, &d.closed, 10000);
    assert_int_equal(d.close_status, KW_E_NET_ADDRESS);
    /* a name that does */
    server_start(&loop, &ctx, NULL);
    nt_client e = {0};
    nt_client_connect(&loop, &e, "localhost", kw_net_server_port(ctx.server), NULL, NULL, NULL);
    nt_run_until(&loop, &e.opened, 10000);
    kw_net_conn_close(e.conn, 0);
    nt_run_until(&loop, &e.closed, 5000);
    server_stop(&loop, &ctx);
    /* a port in use */
    server_start(&loop, &ctx, NULL);
    kw_net_server_config cfg = {.host = "127.0.0.1", .port = kw_net_server_port(ctx.server)};
    nt_conn_options(&cfg.conn);
    kw_net_server *other = NULL;
    assert_int_equal(kw_net_server_start(&loop, &cfg, on_accept, &ctx, &other), KW_E_NET_ADDRESS);
    cfg.host = "not-an-address";
    assert_int_equal(kw_net_server_start(&loop, &cfg, on_accept, &ctx, &other), KW_E_NET_ADDRESS);
    server_stop(&loop, &ctx);
    nt_loop_finish(&loop);
}

static void test_idle_timeout(void **state) {
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    kw_net_conn_options opt;
    nt_conn_options(&opt);
    opt.idle_timeout_ms = 150;
    server_ctx ctx = {0};
    server_start(&loop, &ctx, &opt);
    nt_client c = {0};
    nt_client_connect(&loop, &c, "127.0.0.1", kw_net_server_port(ctx.server), NULL, NULL, NULL);
    nt_run_until(&loop, &c.closed, 5000); /* the silent client is dropped by the server */
    assert_true(c.opened);
    assert_int_equal(c.close_status, KW_E_NET_CLOSED);
    nt_run_until(&loop, &ctx.peers[0].closed, 5000);
    assert_int_equal(ctx.peers[0].close_status, KW_E_NET_IDLE_TIMEOUT);
    server_stop(&loop, &ctx);
    nt_loop_finish(&loop);
}

static void write_share_request(kw_net_conn *c) {
    uint32_t ids[] = {1, 2, 3};
    Kwctl__ShareRequest r = KWCTL__SHARE_REQUEST__INIT;
    r.request_id = 1;
    r.mode = KWCTL__MODE__MODE_TEXT_RELAY;
    r.sharer_model = "m";
    r.token_ids = ids;
    r.n_token_ids = 3;
    uint8_t *frame;
    size_t n;
    assert_int_equal(kw_proto_message_frame_pack(KW_PROTO_FRAME_SHARE_REQUEST, &r.base, &frame, &n), 0);
    assert_true(n <= KW_NET_WRITE_HEAD_MAX);
    assert_int_equal(kw_net_conn_write(c, frame, n, NULL, 0, NULL, NULL), 0);
    free(frame);
}

static void test_request_deadline(void **state) {
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    kw_net_conn_options opt;
    nt_conn_options(&opt);
    opt.idle_timeout_ms = 60; /* suspended while a request is in flight: the deadline decides */
    server_ctx ctx = {.deadline_new = true, .deadline_ms_new = 150};
    server_start(&loop, &ctx, &opt);
    /* server side: the request never finishes, the server's 150 ms deadline aborts the connection */
    nt_client c = {0};
    kw_net_conn_options copt;
    nt_conn_options(&copt);
    nt_client_connect(&loop, &c, "127.0.0.1", kw_net_server_port(ctx.server), NULL, NULL, &copt);
    nt_run_until(&loop, &c.opened, 5000);
    write_share_request(c.conn);
    /* the client waits for an answer with a deadline longer than the server's */
    kw_net_conn_deadline_start(c.conn, 10000);
    nt_run_until(&loop, &ctx.peers[0].closed, 5000);
    assert_int_equal(ctx.peers[0].close_status, KW_E_NET_REQUEST_TIMEOUT);
    nt_run_until(&loop, &c.closed, 5000);
    assert_int_equal(c.close_status, KW_E_NET_CLOSED);
    /* client side: a server that holds the request (busy, no deadline, so its idle timeout is suspended too); the
     * client's own 100 ms deadline fires */
    ctx.deadline_ms_new = 0;
    nt_client d = {0};
    nt_client_connect(&loop, &d, "127.0.0.1", kw_net_server_port(ctx.server), NULL, NULL, &copt);
    nt_run_until(&loop, &d.opened, 5000);
    write_share_request(d.conn);
    kw_net_conn_deadline_start(d.conn, 100);
    nt_run_until(&loop, &d.closed, 5000);
    assert_int_equal(d.close_status, KW_E_NET_REQUEST_TIMEOUT);
    server_stop(&loop, &ctx);
    nt_loop_finish(&loop);
}

// ---------------------------------------------------------------------------------------------------------------
// Graceful shutdown

typedef struct shutdown_ctx {
    kw_net_server *server;
    kw_net_conn *conns[3];
    int n;
    int close_status[3];
    bool closed[3];
    int shutdown_notices;
    int requests;
    bool done;
} shutdown_ctx;

static bool sd_all_accepted(void *arg) {
    return ((shutdown_ctx *)arg)->n == 3;
}

static bool sd_two_requests(void *arg) {
    return ((shutdown_ctx *)arg)->requests == 2;
}

static int sd_read(kw_net_conn *c, const uint8_t *data, size_t len, size_t *used) {
    shutdown_ctx *sc = kw_net_conn_user(c);
    *used = len;
    /* connections 1 and 2 start a request on their first byte */
    for (int i = 1; i < 3; ++i)
        if (sc->conns[i] == c && len) {
            kw_net_conn_deadline_start(c, 0);
            ++sc->requests;
        }
    (void)data;
    return 0;
}

static void sd_close(kw_net_conn *c, int status) {
    shutdown_ctx *sc = kw_net_conn_user(c);
    for (int i = 0; i < sc->n; ++i)
        if (sc->conns[i] == c) {
            sc->closed[i] = true;
            sc->close_status[i] = status;
            sc->conns[i] = NULL;
        }
}

static void sd_shutdown_notice(kw_net_conn *c) {
    shutdown_ctx *sc = kw_net_conn_user(c);
    ++sc->shutdown_notices;
}

static void sd_accept(kw_net_server *s, kw_net_conn *c, void *user) {
    shutdown_ctx *sc = user;
    (void)s;
    sc->conns[sc->n++] = c;
    static const kw_net_conn_callbacks cb = {
        .on_read = sd_read, .on_shutdown = sd_shutdown_notice, .on_close = sd_close};
    kw_net_conn_set_callbacks(c, &cb, sc);
}

static void sd_done(kw_net_server *s, void *user) {
    (void)s;
    ((shutdown_ctx *)user)->done = true;
}

/* Completes the request of connection 1. */
static void sd_finish(shutdown_ctx *sc) {
    kw_net_conn *c = sc->conns[1];
    assert_non_null(c);
    static const char answer[] = "answer";
    assert_true(kw_net_conn_write(c, answer, sizeof answer - 1, NULL, 0, NULL, NULL) >= 0);
    kw_net_conn_deadline_stop(c); /* the request is over: the shutting-down server closes the connection */
}

static void sd_signal(int signum, void *user) {
    shutdown_ctx *sc = user;
    assert_int_equal(signum, SIGTERM);
    kw_net_server_shutdown(sc->server, 2000, sd_done, sc);
}

static void run_shutdown(bool by_signal) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    shutdown_ctx sc = {0};
    kw_net_server_config cfg = {.host = "127.0.0.1"};
    nt_conn_options(&cfg.conn);
    assert_int_equal(kw_net_server_start(&loop, &cfg, sd_accept, &sc, &sc.server), 0);
    const uint16_t port = kw_net_server_port(sc.server);
    nt_client cl[3] = {{0}};
    /* one at a time, so that the server's connection i is client i's */
    for (int i = 0; i < 3; ++i) {
        nt_client_connect(&loop, &cl[i], "127.0.0.1", port, NULL, NULL, NULL);
        nt_run_until(&loop, &cl[i].opened, 5000);
        while (sc.n < i + 1)
            uv_run(&loop, UV_RUN_ONCE);
    }
    nt_run_until_fn(&loop, sd_all_accepted, &sc, 5000);
    /* connections 1 and 2 have requests in flight; 0 is idle */
    for (int i = 1; i < 3; ++i)
        assert_int_equal(kw_net_conn_write(cl[i].conn, "go", 2, NULL, 0, NULL, NULL), 0);
    nt_run_until_fn(&loop, sd_two_requests, &sc, 5000);
    kw_net_signals *sig = NULL;
    if (by_signal) {
        assert_int_equal(kw_net_signals_watch(&loop, sd_signal, &sc, &sig), 0);
        raise(SIGTERM);
    } else {
        kw_net_server_shutdown(sc.server, 2000, sd_done, &sc);
    }
    nt_run_until(&loop, &sc.closed[0], 5000); /* the idle connection goes at once */
    assert_int_equal(sc.close_status[0], KW_E_NET_SHUTDOWN);
    assert_false(sc.closed[1]);
    assert_false(sc.closed[2]);
    assert_int_equal(sc.shutdown_notices, 2);
    /* no new connections */
    nt_client late = {0};
    nt_client_connect(&loop, &late, "127.0.0.1", port, NULL, NULL, NULL);
    nt_run_until(&loop, &late.closed, 5000);
    assert_int_equal(late.close_status, KW_E_NET_CONNECT);
    /* connection 1 finishes its request, its client gets the answer, then the close */
    sd_finish(&sc);
    nt_run_until(&loop, &cl[1].closed, 5000);
    assert_string_equal((const char *)cl[1].data, "answer");
    assert_int_equal(sc.close_status[1], KW_E_NET_SHUTDOWN);
    /* connection 2 never finishes: aborted at the deadline */
    nt_run_until(&loop, &sc.done, 5000);
    assert_int_equal(sc.close_status[2], KW_E_NET_SHUTDOWN);
    nt_run_until(&loop, &cl[2].closed, 5000);
    nt_run_until(&loop, &cl[0].closed, 5000);
    assert_int_equal(kw_net_server_connections(sc.server), 0);
    kw_net_server_free(sc.server);
    kw_net_signals_close(sig);
    for (int i = 0; i < 3; ++i)
        nt_client_free(&cl[i]);
    nt_loop_finish(&loop);
    if (by_signal) { /* a closed watcher leaves SIGTERM ignored, never at its default action: a repeated signal must
                        not kill a stopping daemon (this raise would end the test with the default action) */
        struct sigaction now;
        assert_int_equal(sigaction(SIGTERM, NULL, &now), 0);
        assert_true(now.sa_handler == SIG_IGN);
        raise(SIGTERM);
        /* a second watcher may open once the first one's handle has closed, and a third not beside it */
        uv_loop_t again;
        assert_int_equal(uv_loop_init(&again), 0);
        kw_net_signals *w1 = NULL, *w2 = NULL;
        assert_int_equal(kw_net_signals_watch(&again, sd_signal, &sc, &w1), 0);
        assert_int_equal(kw_net_signals_watch(&again, sd_signal, &sc, &w2), KW_E_STATE);
        kw_net_signals_close(w1);
        uv_run(&again, UV_RUN_DEFAULT);
        assert_int_equal(uv_loop_close(&again), 0);
        signal(SIGTERM, SIG_DFL);
        signal(SIGINT, SIG_DFL);
    }
}

static void test_graceful_shutdown(void **state) {
    (void)state;
    run_shutdown(false);
}

static void test_sigterm_shutdown(void **state) {
    (void)state;
    run_shutdown(true);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_many_frames),      cmocka_unit_test(test_backpressure),
        cmocka_unit_test(test_connect_refused),  cmocka_unit_test(test_idle_timeout),
        cmocka_unit_test(test_request_deadline), cmocka_unit_test(test_graceful_shutdown),
        cmocka_unit_test(test_sigterm_shutdown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
