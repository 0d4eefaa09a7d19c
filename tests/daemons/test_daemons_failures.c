/* test_daemons_failures.c: the failure behaviour of issue 8, with the daemons as separate processes:
 *  - a sharer that dies or stalls mid-stream (a fake sharer in this process speaks the protocol, then closes or goes
 *    silent): the request fails within sharer.request_timeout_ms with a clear error and a 5xx, receiverd keeps serving,
 *    and once a real sharerd listens on that port again a request succeeds;
 *  - corrupted and truncated blobs, a frame of an unknown type, an oversized frame from the sharer: 502, nothing used;
 *  - garbage, an oversized frame and a slowloris peer on sharerd's port, and on receiverd's HTTP port: the connection
 *    is closed (with 400/413 for HTTP), the daemons keep serving; an oversized frame at once, with an Error naming
 *    KW_E_PROTO_FRAME_SIZE; a frame shorter than its length says only by the hello timeout;
 *  - a model pair that cannot work is refused at hello with the reason (by receiverd, and by sharerd), kv_direct
 *    against another model is a 400;
 *  - TLS: an untrusted server certificate and plaintext against a TLS sharer are refused; mutual TLS needs the client
 *    certificate;
 *  - a full request queue is a 503 (KW_E_SHARE_BUSY);
 *  - a refinement's round two whose skip_ranked is not below the selection's count is refused by sharerd;
 * and every daemon exits cleanly on SIGTERM (no leak under the sanitizer build). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/kw_status.h"
#include "kwd_harness.h"
#include "proto/kw_proto.h"
#include "wire/kw_wire.h"

#define PROMPT_BODY(kv)                                                                                                \
    "{\"messages\":[{\"role\":\"user\",\"content\":\"Name a red planet.\"}],\"max_tokens\":4,\"kvwire\":" kv "}"

// ---------------------------------------------------------------------------------------------------------------
// A fake sharer: it speaks the protocol over blocking sockets, and misbehaves as told

enum fake_mode { FAKE_DIE, FAKE_STALL, FAKE_CORRUPT, FAKE_TRUNCATE, FAKE_BAD_TYPE, FAKE_OVERSIZE, FAKE_MODES };

typedef struct fake_sharer {
    int listen_fd;
    uint16_t port;
    volatile int mode;
    volatile int stop;
    pthread_t thread;
    int requests;
} fake_sharer;

static void read_until(int fd, uint32_t want, ProtobufCMessage **out);

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int send_all(int fd, const void *b, size_t n) {
    const uint8_t *p = b;
    while (n) {
        const ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k <= 0) return -1;
        p += k, n -= (size_t)k;
    }
    return 0;
}

static int recv_all(int fd, void *b, size_t n, volatile int *stop) {
    uint8_t *p = b;
    while (n) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (poll(&pf, 1, 100) == 0) {
            if (*stop) return -1;
            continue;
        }
        const ssize_t k = recv(fd, p, n, 0);
        if (k <= 0) return -1;
        p += k, n -= (size_t)k;
    }
    return 0;
}

static int send_msg(int fd, uint32_t type, const ProtobufCMessage *m) {
    uint8_t *frame = NULL;
    size_t n = 0;
    if (kw_proto_message_frame_pack(type, m, &frame, &n) < 0) return -1;
    const int rc = send_all(fd, frame, n);
    free(frame);
    return rc;
}

static int send_wire(int fd, const uint8_t *b, size_t n) {
    uint8_t head[KW_PROTO_FRAME_HEADER_BYTES];
    kw_proto_frame_header_write(KW_PROTO_FRAME_WIRE, n, head);
    return send_all(fd, head, sizeof head) || send_all(fd, b, n) ? -1 : 0;
}

/* A real KVWire blob of a (2 layers, 2 heads, 16 dims) sharer over T positions, for the given layers; pieces[i] is
 * where piece i starts (header, one per section, trailer, end). */
static uint8_t *fake_blob(uint32_t T, const uint32_t *layers, size_t n_layers, size_t *pieces, size_t *len) {
    const kw_wire_header hdr = {.n_layers = 2,
                                .n_sections = (uint16_t)n_layers,
                                .n_kv_heads = 2,
                                .head_dim = 16,
                                .n_positions = T,
                                .src_dtype = KW_WIRE_DTYPE_F32};
    const kw_wire_policy pol = {.k = {KW_WIRE_CODEC_BF16, 0, 0, 0}, .v = {KW_WIRE_CODEC_BF16, 0, 0, 0}};
    const size_t cap = 1 << 20;
    uint8_t *b = malloc(cap);
    float *k = malloc((size_t)T * 32 * sizeof *k), *v = malloc((size_t)T * 32 * sizeof *v);
    assert_true(b && k && v);
    for (size_t i = 0; i < (size_t)T * 32; ++i)
        k[i] = (float)((int)(i % 17) - 8) / 16.0f, v[i] = (float)((int)(i % 13) - 6) / 8.0f;
    kw_wire_encoder *enc = NULL;
    assert_int_equal(kw_wire_encoder_create(&hdr, NULL, &enc), 0);
    size_t at = 0, n = 0;
    pieces[0] = 0;
    assert_int_equal(kw_wire_encoder_write_header(enc, b, cap, &n), 0);
    at = n;
    for (size_t l = 0; l < n_layers; ++l) {
        pieces[l + 1] = at;
        const kw_wire_layer_in in = {.layer = layers[l], .n_tokens = T, .k = {k, 16, 32, NULL}, .v = {v, 16, 32, NULL}};
        assert_int_equal(kw_wire_encoder_write_section(enc, &in, &pol, b + at, cap - at, &n), 0);
        at += n;
    }
    pieces[n_layers + 1] = at;
    assert_int_equal(kw_wire_encoder_write_trailer(enc, b + at, cap - at, &n), 0);
    at += n;
    pieces[n_layers + 2] = at;
    kw_wire_encoder_destroy(enc);
    free(k), free(v);
    *len = at;
    return b;
}

/* Answers one ShareRequest the way the mode says. Returns -1 when the connection is to be dropped. */
static int fake_share(fake_sharer *f, int fd, const Kwctl__ShareRequest *req) {
    ++f->requests;
    uint32_t layers[2] = {0, 1};
    size_t n_layers = 2;
    if (req->policy && req->policy->n_layers) {
        n_layers = req->policy->n_layers;
        for (size_t i = 0; i < n_layers && i < 2; ++i)
            layers[i] = req->policy->layers[i];
    }
    Kwctl__KvShape kv = KWCTL__KV_SHAPE__INIT;
    kv.n_layers = 2, kv.n_kv_heads = 2, kv.head_dim = 16;
    Kwctl__ShareHeader h = KWCTL__SHARE_HEADER__INIT;
    h.request_id = req->request_id;
    h.mode = req->mode;
    h.layers = layers;
    h.n_layers = n_layers;
    h.tokens_prefilled = h.tokens_kept = (uint32_t)req->n_token_ids;
    h.kv = &kv;
    if (send_msg(fd, KW_PROTO_FRAME_SHARE_HEADER, &h.base) < 0) return -1;
    size_t pieces[8], len = 0;
    uint8_t *blob = fake_blob((uint32_t)req->n_token_ids, layers, n_layers, pieces, &len);
    int rc = 0;
    const size_t sec0 = pieces[1], sec0_len = pieces[2] - pieces[1];
    switch (f->mode) {
    case FAKE_DIE:
    case FAKE_STALL:
        /* the blob header and half of the first section, then nothing more */
        rc = send_wire(fd, blob, pieces[1]) || send_wire(fd, blob + sec0, sec0_len / 2) ? -1 : 0;
        if (f->mode == FAKE_DIE) {
            rc = -1;
        } else {
            while (!f->stop) {
                char buf[256];
                struct pollfd pf = {.fd = fd, .events = POLLIN};
                if (poll(&pf, 1, 50) > 0 && recv(fd, buf, sizeof buf, 0) <= 0) break; /* the receiver gave up */
            }
            rc = -1;
        }
        break;
    case FAKE_CORRUPT:
    case FAKE_TRUNCATE: {
        if (f->mode == FAKE_CORRUPT) blob[sec0 + sec0_len - 12] ^= 0x40; /* in the first section's data */
        const size_t end = f->mode == FAKE_CORRUPT ? len : pieces[2];    /* truncate: header and one section */
        for (size_t p = 0; p + 1 < 8 && pieces[p] < end; ++p) {
            const size_t stop = pieces[p + 1] < end ? pieces[p + 1] : end;
            if (send_wire(fd, blob + pieces[p], stop - pieces[p]) < 0) rc = -1;
            if (stop == end) break;
        }
        Kwctl__ShareEnd e = KWCTL__SHARE_END__INIT;
        e.request_id = req->request_id;
        e.blob_bytes = end;
        if (rc == 0 && send_msg(fd, KW_PROTO_FRAME_SHARE_END, &e.base) < 0) rc = -1;
        break;
    }
    case FAKE_BAD_TYPE: {
        const uint8_t frame[] = {1, 0, 0, 0, 77, 0}; /* type 77 does not exist */
        send_all(fd, frame, sizeof frame);
        break;
    }
    case FAKE_OVERSIZE: {
        uint8_t head[KW_PROTO_FRAME_HEADER_BYTES] = {0xf0, 0xff, 0xff, 0x7f, KW_PROTO_FRAME_WIRE}; /* ~2 GiB */
        send_all(fd, head, sizeof head);
        break;
    }
    }
    free(blob);
    return rc;
}

static void fake_serve(fake_sharer *f, int fd) {
    for (;;) {
        uint8_t head[KW_PROTO_FRAME_HEADER_BYTES];
        if (recv_all(fd, head, sizeof head, &f->stop) < 0) return;
        const uint32_t len =
            (uint32_t)head[0] | (uint32_t)head[1] << 8 | (uint32_t)head[2] << 16 | (uint32_t)head[3] << 24;
        if (len > (1u << 20)) return;
        uint8_t *payload = malloc(len ? len : 1);
        if (!payload || recv_all(fd, payload, len, &f->stop) < 0) {
            free(payload);
            return;
        }
        ProtobufCMessage *m = NULL;
        const int rc = kw_proto_message_unpack(NULL, head[4], payload, len, &m);
        free(payload);
        if (rc < 0) return;
        int out = 0;
        if (head[4] == KW_PROTO_FRAME_HELLO) {
            Kwctl__KvShape kv = KWCTL__KV_SHAPE__INIT;
            kv.n_layers = 2, kv.n_kv_heads = 2, kv.head_dim = 16;
            Kwctl__ModelIdentity id = KWCTL__MODEL_IDENTITY__INIT;
            id.name = "tiny-qwen2";
            id.architecture = "qwen2";
            id.kv = &kv;
            Kwctl__ModelIdentity *models[] = {&id};
            Kwctl__HelloReply r = KWCTL__HELLO_REPLY__INIT;
            r.protocol_version = 1;
            r.accepted = 1;
            r.role = KWCTL__ROLE__ROLE_SHARER;
            r.software = "fake sharer";
            r.models = models;
            r.n_models = 1;
            out = send_msg(fd, KW_PROTO_FRAME_HELLO_REPLY, &r.base);
        } else if (head[4] == KW_PROTO_FRAME_SHARE_REQUEST) {
            out = fake_share(f, fd, (const Kwctl__ShareRequest *)m);
        }
        kw_proto_message_free(m);
        if (out < 0) return;
    }
}

static void *fake_thread(void *arg) {
    fake_sharer *f = arg;
    while (!f->stop) {
        struct pollfd pf = {.fd = f->listen_fd, .events = POLLIN};
        if (poll(&pf, 1, 50) <= 0) continue;
        const int fd = accept(f->listen_fd, NULL, NULL);
        if (fd < 0) continue;
        fake_serve(f, fd);
        close(fd);
    }
    return NULL;
}

static void fake_start(fake_sharer *f, uint16_t port) {
    memset(f, 0, sizeof *f);
    f->port = port;
    f->listen_fd = kwd_listen(&f->port);
    assert_int_equal(pthread_create(&f->thread, NULL, fake_thread, f), 0);
}

static void fake_stop(fake_sharer *f) {
    f->stop = 1;
    pthread_join(f->thread, NULL);
    close(f->listen_fd);
}

// ---------------------------------------------------------------------------------------------------------------
// Helpers

/* POSTs body and asserts the status and the kw_status name in the error. */
static void expect_error(uint16_t port, const char *body, long status, const char *code, double *seconds) {
    kwd_response r;
    kwd_http(port, "/v1/chat/completions", body, &r);
    if (r.status != status) fail_msg("expected HTTP %ld, got %ld: %s", status, r.status, r.body);
    const cJSON *c = kwd_json_get(r.json, "error.code");
    if (code && (!cJSON_IsString(c) || strcmp(c->valuestring, code) != 0))
        fail_msg("expected error %s, got %s", code, r.body);
    const cJSON *msg = kwd_json_get(r.json, "error.message");
    assert_true(cJSON_IsString(msg) && strlen(msg->valuestring) > 10); /* a message a person can act on */
    if (seconds) *seconds = r.seconds;
    kwd_response_free(&r);
}

static void expect_ok(uint16_t port, const char *body) {
    kwd_response r;
    kwd_http(port, "/v1/chat/completions", body, &r);
    if (r.status != 200) fail_msg("expected HTTP 200, got %ld: %s", r.status, r.body);
    kwd_response_free(&r);
}

/* The receiver's /health reason for its first sharer contains text. */
static void expect_health_reason(uint16_t port, const char *text) {
    kwd_response r;
    for (int attempt = 0; attempt < 200; ++attempt) {
        kwd_http(port, "/health", NULL, &r);
        const cJSON *reason = kwd_json_get(cJSON_GetArrayItem(cJSON_GetObjectItem(r.json, "sharers"), 0), "reason");
        const bool hit = r.status == 503 && cJSON_IsString(reason) && strstr(reason->valuestring, text);
        if (hit) {
            kwd_response_free(&r);
            return;
        }
        if (attempt == 199) fail_msg("/health never gave a reason with \"%s\": %s", text, r.body);
        kwd_response_free(&r);
        usleep(50000);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Tests

/* A sharer that dies, stalls or sends bad bytes mid-stream; receiverd keeps serving; a real sharer later works. */
static void test_sharer_fails_mid_stream(void **state) {
    (void)state;
    fake_sharer f;
    fake_start(&f, 0);
    char timeout[64];
    snprintf(timeout, sizeof timeout, "--sharer.request_timeout_ms=%d", kwd_ms(1500));
    const char *extra[] = {timeout, NULL};
    kwd_proc rd;
    kwd_start_receiver(f.port, extra, &rd);
    assert_true(kwd_wait_healthy(rd.port, kwd_ms(30000)));
    const char *c2c = PROMPT_BODY("{}");
    const char *local = PROMPT_BODY("{\"mode\":\"receiver_only\"}");
    static const struct {
        int mode;
        long status;
        const char *code;
    } cases[] = {
        {FAKE_DIE, 502, NULL},
        {FAKE_STALL, 504, "KW_E_NET_REQUEST_TIMEOUT"},
        {FAKE_CORRUPT, 502, "KW_E_WIRE_CHECKSUM"},
        {FAKE_TRUNCATE, 502, NULL},
        {FAKE_BAD_TYPE, 502, NULL},
        {FAKE_OVERSIZE, 502, "KW_E_PROTO_FRAME_SIZE"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
        f.mode = cases[i].mode;
        assert_true(kwd_wait_healthy(rd.port, kwd_ms(30000))); /* reconnected after the last failure */
        double seconds = 0;
        expect_error(rd.port, c2c, cases[i].status, cases[i].code, &seconds);
        if (cases[i].mode == FAKE_STALL) /* within its timeout, not long after */
            assert_true(seconds >= 1.4 && seconds < 1.5 * KWD_TIMEOUT_MULTIPLIER + 10.0);
        expect_ok(rd.port, local); /* receiverd keeps serving */
    }
    assert_int_equal(f.requests, (int)(sizeof cases / sizeof cases[0]));
    /* the sharer goes away for good: requests fail fast with 503 and the reason */
    const uint16_t port = f.port;
    fake_stop(&f);
    expect_health_reason(rd.port, "");
    expect_error(rd.port, c2c, 503, NULL, NULL);
    /* a real sharerd on the same port: the receiver reconnects, the request succeeds */
    kwd_proc sd;
    kwd_start_sharer(port, NULL, &sd);
    assert_true(kwd_wait_healthy(rd.port, kwd_ms(30000)));
    expect_ok(rd.port, c2c);
    /* it dies (SIGKILL) between requests: 503 or 502, then back again */
    kwd_kill(&sd);
    kwd_response r;
    kwd_http(rd.port, "/v1/chat/completions", c2c, &r);
    assert_true(r.status == 502 || r.status == 503);
    kwd_response_free(&r);
    kwd_start_sharer(port, NULL, &sd);
    assert_true(kwd_wait_healthy(rd.port, kwd_ms(30000)));
    expect_ok(rd.port, c2c);
    kwd_stop(&rd);
    kwd_stop(&sd);
}

/* Garbage, an oversized frame and a slow peer on sharerd's control port and on receiverd's HTTP port. */
static void test_hostile_peers(void **state) {
    (void)state;
    char hello[64], header[64];
    snprintf(hello, sizeof hello, "--timeouts.hello_ms=%d", kwd_ms(1000));
    snprintf(header, sizeof header, "--http.header_timeout_ms=%d", kwd_ms(1000));
    const char *sd_extra[] = {hello, NULL}, *rd_extra[] = {header, NULL};
    kwd_proc sd, rd;
    kwd_start_sharer(0, sd_extra, &sd);
    kwd_start_receiver(sd.port, rd_extra, &rd);
    assert_true(kwd_wait_healthy(rd.port, kwd_ms(30000)));
    const int wait = kwd_ms(5000);
    /* sharerd: garbage (an HTTP request is a frame of a huge length), an oversized frame, a slow hello */
    int fd = kwd_connect(sd.port);
    assert_true(fd >= 0);
    const char *garbage = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    send_all(fd, garbage, strlen(garbage));
    assert_true(kwd_closed_within(fd, wait));
    close(fd);
    /* an oversized frame is refused on its header at once: an Error (request 0) naming KW_E_PROTO_FRAME_SIZE, then the
     * close, well before the hello timeout could have ended it */
    fd = kwd_connect(sd.port);
    const double t0 = now_s();
    const uint8_t big[] = {0xff, 0xff, 0xff, 0x7f, KW_PROTO_FRAME_HELLO};
    send_all(fd, big, sizeof big);
    ProtobufCMessage *m = NULL;
    read_until(fd, KW_PROTO_FRAME_ERROR, &m);
    const Kwctl__Error *e = (const Kwctl__Error *)m;
    assert_int_equal(e->status, KW_E_PROTO_FRAME_SIZE);
    assert_non_null(strstr(e->message, "exceeds the"));
    kw_proto_message_free(m);
    assert_true(kwd_closed_within(fd, wait));
    assert_true(now_s() - t0 < kwd_ms(1000) / 2000.0);
    close(fd);
    /* a length under the limit with fewer bytes behind it cannot be told from a slow peer: the decoder waits, and only
     * the hello timeout (after the hello: timeouts.idle_ms) ends it */
    fd = kwd_connect(sd.port);
    const uint8_t short_frame[] = {0x10, 0x00, 0x00, 0x00, KW_PROTO_FRAME_HELLO, 1, 2, 3};
    send_all(fd, short_frame, sizeof short_frame);
    assert_false(kwd_closed_within(fd, 200));
    assert_true(kwd_closed_within(fd, wait));
    close(fd);
    fd = kwd_connect(sd.port);
    const uint8_t slow[] = {0x10, 0x00};
    send_all(fd, slow, sizeof slow); /* a frame header begun, never finished */
    assert_false(kwd_closed_within(fd, 200));
    assert_true(kwd_closed_within(fd, wait));
    close(fd);
    /* receiverd's HTTP port: garbage, a body over the limit, a slow request line */
    fd = kwd_connect(rd.port);
    send_all(fd, "\x01\x02 garbage\r\n\r\n", 14);
    assert_true(kwd_closed_within(fd, wait));
    close(fd);
    fd = kwd_connect(rd.port);
    const char *huge = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n";
    send_all(fd, huge, strlen(huge));
    char buf[256] = "";
    const ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
    assert_true(n > 12 && strncmp(buf, "HTTP/1.1 413", 12) == 0);
    close(fd);
    fd = kwd_connect(rd.port);
    send_all(fd, "POST /v1/comp", 13);
    assert_false(kwd_closed_within(fd, 200));
    assert_true(kwd_closed_within(fd, wait));
    close(fd);
    /* a request past the model's context (the tiny models': 32768 or 40960 positions) is a 400 naming it */
    expect_error(rd.port,
                 "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":1048576,\"kvwire\":{}}", 400,
                 "KW_E_LIMIT", NULL);
    /* both still serve */
    expect_ok(rd.port, PROMPT_BODY("{}"));
    kwd_stop(&rd);
    kwd_stop(&sd);
}

/* A sharer model whose context is shorter than the shared prompt refuses the share, naming its context, and the
 * client gets that error rather than a silent over-long prefill. */
static void test_sharer_context(void **state) {
    (void)state;
    char cmd[2048], m0[700];
    snprintf(
        cmd, sizeof cmd,
        "rm -rf '%s/short-qwen2' && cp -r '%s/tiny-qwen2' '%s/short-qwen2' && "
        "sed -i 's/\"max_position_embeddings\": [0-9]*/\"max_position_embeddings\": 8/' '%s/short-qwen2/config.json'",
        kwd_scratch_dir(), kwd_models_dir(), kwd_scratch_dir(), kwd_scratch_dir());
    assert_int_equal(system(cmd), 0);
    snprintf(m0, sizeof m0, "--models.0.path=%s/short-qwen2", kwd_scratch_dir());
    const char *extra[] = {m0, NULL};
    kwd_proc sd, rd;
    kwd_start_sharer(0, extra, &sd);
    kwd_start_receiver(sd.port, NULL, &rd);
    assert_true(kwd_wait_healthy(rd.port, kwd_ms(30000)));
    kwd_response r;
    kwd_http(rd.port, "/v1/chat/completions", PROMPT_BODY("{}"), &r);
    if (r.status != 400 || !strstr(r.body, "context of 8 positions"))
        fail_msg("expected a 400 naming the sharer's context, got %ld: %s", r.status, r.body);
    kwd_response_free(&r);
    expect_ok(rd.port, PROMPT_BODY("{\"mode\":\"receiver_only\"}"));
    kwd_stop(&rd);
    kwd_stop(&sd);
}

/* Model pairs that cannot work: refused at hello, with the reason, by either side; kv_direct against other files. */
static void test_wrong_pair(void **state) {
    (void)state;
    kwd_proc sd, rd;
    kwd_start_sharer(0, NULL, &sd);
    /* kv_direct needs the receiver's own files */
    kwd_start_receiver(sd.port, NULL, &rd);
    assert_true(kwd_wait_healthy(rd.port, kwd_ms(30000)));
    expect_error(rd.port, PROMPT_BODY("{\"mode\":\"kv_direct\",\"sharer_model\":\"tiny-qwen2\"}"), 400,
                 "KW_E_SHARE_MODE", NULL);
    expect_ok(rd.port, PROMPT_BODY("{\"mode\":\"kv_direct\"}")); /* the default is the receiver's own model */
    kwd_stop(&rd);
    /* the receiver refuses: its fuser takes a sharer shaped like tiny-qwen3, configured for tiny-qwen2 */
    char fuser[600];
    snprintf(fuser, sizeof fuser, "--fusers.0.path=%s/fuser-qwen3", kwd_models_dir());
    const char *wrong[] = {fuser, NULL};
    kwd_start_receiver(sd.port, wrong, &rd);
    expect_health_reason(rd.port, "fits no model");
    expect_error(rd.port, PROMPT_BODY("{}"), 503, NULL, NULL);
    kwd_stop(&rd);
    kwd_stop(&sd);
    /* the sharer refuses: it serves only tiny-qwen2, which neither the receiver's fuser nor its model matches */
    char m0[600];
    snprintf(m0, sizeof m0, "--models.0.path=%s/tiny-qwen2", kwd_models_dir());
    const char *only_qwen2[] = {"--models.0.name=tiny-qwen2", m0, "--listen.port=0", "--compute.threads=1", NULL};
    kwd_start("sharerd", only_qwen2, &sd);
    const char *unpinned[] = {fuser, "--fusers.0.sharer_model=", NULL};
    kwd_start_receiver(sd.port, unpinned, &rd);
    expect_health_reason(rd.port, "refused the hello");
    kwd_stop(&rd);
    kwd_stop(&sd);
}

/* TLS: the right CA works; another CA, plaintext against TLS and a missing client certificate are refused. */
static void test_tls(void **state) {
    (void)state;
    char a[600], b[600], args[1400];
    snprintf(a, sizeof a, "%s/pki-a", kwd_scratch_dir());
    snprintf(b, sizeof b, "%s/pki-b", kwd_scratch_dir());
    snprintf(args, sizeof args, "gen-certs --out %s && mkdir -p %s", a, b);
    char cmd[2000];
    snprintf(cmd, sizeof cmd, "mkdir -p %s %s", a, b);
    assert_int_equal(system(cmd), 0);
    snprintf(args, sizeof args, "gen-certs --out %s", a);
    free(kwd_kvwire(args));
    snprintf(args, sizeof args, "gen-certs --out %s", b);
    free(kwd_kvwire(args));
    char cert[700], key[700], ca[700], ca_b[700], ccert[700], ckey[700];
    snprintf(cert, sizeof cert, "--tls.cert=%s/server.pem", a);
    snprintf(key, sizeof key, "--tls.key=%s/server.key", a);
    snprintf(ca, sizeof ca, "--tls.ca=%s/ca.pem", a);
    const char *sd_args[] = {"--tls.enabled=true", cert, key, ca, "--tls.verify_client=true", NULL};
    kwd_proc sd, rd;
    kwd_start_sharer(0, sd_args, &sd);
    /* trusted, with the client certificate: works, and TLS costs bytes beyond the frames */
    char rca[700];
    snprintf(rca, sizeof rca, "--sharers.0.tls_ca=%s/ca.pem", a);
    snprintf(ccert, sizeof ccert, "--sharers.0.tls_cert=%s/client.pem", a);
    snprintf(ckey, sizeof ckey, "--sharers.0.tls_key=%s/client.key", a);
    const char *good[] = {"--sharers.0.tls=true", rca, ccert, ckey, "--sharers.0.server_name=localhost", NULL};
    kwd_start_receiver(sd.port, good, &rd);
    assert_true(kwd_wait_healthy(rd.port, kwd_ms(30000)));
    kwd_response r;
    kwd_http(rd.port, "/v1/chat/completions", PROMPT_BODY("{\"policy\":{\"codec\":\"int4\"}}"), &r);
    assert_int_equal(r.status, 200);
    assert_true(kwd_json_num(r.json, "kvwire.bytes.transport_in") > kwd_json_num(r.json, "kvwire.bytes.socket_in"));
    kwd_response_free(&r);
    kwd_stop(&rd);
    /* a server certificate from another CA */
    snprintf(ca_b, sizeof ca_b, "--sharers.0.tls_ca=%s/ca.pem", b);
    const char *untrusted[] = {"--sharers.0.tls=true", ca_b, ccert, ckey, "--sharers.0.server_name=localhost", NULL};
    kwd_start_receiver(sd.port, untrusted, &rd);
    expect_health_reason(rd.port, "KW_E_NET_TLS");
    expect_error(rd.port, PROMPT_BODY("{}"), 503, NULL, NULL);
    kwd_stop(&rd);
    /* no client certificate for a sharer that asks for one */
    const char *anonymous[] = {"--sharers.0.tls=true", rca, "--sharers.0.server_name=localhost", NULL};
    kwd_start_receiver(sd.port, anonymous, &rd);
    expect_health_reason(rd.port, "KW_E_");
    kwd_stop(&rd);
    /* plaintext against TLS */
    kwd_start_receiver(sd.port, NULL, &rd);
    expect_health_reason(rd.port, "KW_E_");
    expect_error(rd.port, PROMPT_BODY("{}"), 503, NULL, NULL);
    kwd_stop(&rd);
    kwd_stop(&sd);
}

typedef struct background_request {
    uint16_t port;
    const char *body;
    long status;
} background_request;

static void *background(void *arg) {
    background_request *b = arg;
    kwd_response r;
    kwd_http(b->port, "/v1/chat/completions", b->body, &r);
    b->status = r.status;
    kwd_response_free(&r);
    return NULL;
}

/* queue.max 1: while one request holds the compute thread (its sharer stalls), the next is a 503. */
static void test_busy(void **state) {
    (void)state;
    fake_sharer f;
    fake_start(&f, 0);
    f.mode = FAKE_STALL;
    char timeout[64];
    snprintf(timeout, sizeof timeout, "--sharer.request_timeout_ms=%d", kwd_ms(3000));
    const char *extra[] = {timeout, "--queue.max=1", NULL};
    kwd_proc rd;
    kwd_start_receiver(f.port, extra, &rd);
    assert_true(kwd_wait_healthy(rd.port, kwd_ms(30000)));
    background_request bg = {rd.port, PROMPT_BODY("{}"), 0};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, background, &bg), 0);
    bool queued = false;
    for (int i = 0; i < 400 && !queued; ++i) { /* until the first request is in the queue */
        kwd_response h;
        kwd_http(rd.port, "/health", NULL, &h);
        queued = kwd_json_num(h.json, "queue_depth") == 1;
        kwd_response_free(&h);
        if (!queued) usleep(10000);
    }
    assert_true(queued);
    expect_error(rd.port, PROMPT_BODY("{\"mode\":\"receiver_only\"}"), 503, "KW_E_SHARE_BUSY", NULL);
    pthread_join(t, NULL);
    assert_int_equal(bg.status, 504);
    kwd_response m;
    kwd_http(rd.port, "/metrics", NULL, &m);
    assert_non_null(strstr(m.body, "kvwire_requests_total{mode=\"receiver_only\",outcome=\"busy\"} 1"));
    assert_non_null(strstr(m.body, "kvwire_requests_total{mode=\"c2c\",outcome=\"timeout\"} 1"));
    kwd_response_free(&m);
    kwd_stop(&rd);
    fake_stop(&f);
}

// ---------------------------------------------------------------------------------------------------------------
// sharerd's own queue, spoken to directly

/* Reads frames until one of type want (others are skipped); *out is the unpacked message. */
static void read_until(int fd, uint32_t want, ProtobufCMessage **out) {
    volatile int never = 0;
    for (;;) {
        uint8_t head[KW_PROTO_FRAME_HEADER_BYTES];
        assert_int_equal(recv_all(fd, head, sizeof head, &never), 0);
        const uint32_t len =
            (uint32_t)head[0] | (uint32_t)head[1] << 8 | (uint32_t)head[2] << 16 | (uint32_t)head[3] << 24;
        assert_true(len < (1u << 24));
        uint8_t *payload = malloc(len ? len : 1);
        assert_int_equal(recv_all(fd, payload, len, &never), 0);
        if (head[4] == want) {
            assert_int_equal(kw_proto_message_unpack(NULL, head[4], payload, len, out), 0);
            free(payload);
            return;
        }
        free(payload);
    }
}

static int client_hello(uint16_t port) {
    const int fd = kwd_connect(port);
    assert_true(fd >= 0);
    Kwctl__Hello h = KWCTL__HELLO__INIT;
    h.protocol_version = 1;
    h.role = KWCTL__ROLE__ROLE_CLIENT;
    h.software = "test";
    assert_int_equal(send_msg(fd, KW_PROTO_FRAME_HELLO, &h.base), 0);
    ProtobufCMessage *m = NULL;
    read_until(fd, KW_PROTO_FRAME_HELLO_REPLY, &m);
    assert_true(((Kwctl__HelloReply *)m)->accepted);
    kw_proto_message_free(m);
    return fd;
}

/* A c2c share of tiny-qwen2 (n tokens, one sent section) with policy (NULL: every token at bf16). */
static void client_request_policy(int fd, uint64_t id, uint32_t n, Kwctl__SharePolicy *policy) {
    uint32_t *ids = malloc(n * sizeof *ids);
    for (uint32_t i = 0; i < n; ++i)
        ids[i] = 100 + i % 5000;
    Kwctl__Section sec = KWCTL__SECTION__INIT;
    sec.length = n;
    sec.sent = 1;
    Kwctl__Section *secs[] = {&sec};
    Kwctl__CodecSpec c = KWCTL__CODEC_SPEC__INIT;
    c.codec = KW_WIRE_CODEC_BF16;
    Kwctl__SharePolicy p = KWCTL__SHARE_POLICY__INIT;
    p.k = p.v = &c;
    p.selection = KWCTL__SELECTION__SELECTION_FULL;
    Kwctl__ShareRequest r = KWCTL__SHARE_REQUEST__INIT;
    r.request_id = id;
    r.mode = KWCTL__MODE__MODE_C2C;
    r.sharer_model = "tiny-qwen2";
    r.token_ids = ids;
    r.n_token_ids = n;
    r.sections = secs;
    r.n_sections = 1;
    r.policy = policy ? policy : &p;
    r.cache_dtype = KWCTL__CACHE_DTYPE__CACHE_DTYPE_BF16;
    assert_int_equal(send_msg(fd, KW_PROTO_FRAME_SHARE_REQUEST, &r.base), 0);
    free(ids);
}

/* A long c2c share of tiny-qwen2 (n tokens). */
static void client_request(int fd, uint64_t id, uint32_t n) {
    client_request_policy(fd, id, n, NULL);
}

/* Round two of a refinement (SharePolicy.skip_ranked): a skip not below the selection's count is refused with
 * KW_E_INVALID_ARG before any work (the protocol only knows the section's length); one below it sends the ranks
 * [skip, count) only. */
static void test_sharer_skip_ranked(void **state) {
    (void)state;
    kwd_proc sd;
    kwd_start_sharer(0, NULL, &sd);
    const int fd = client_hello(sd.port);
    Kwctl__CodecSpec c = KWCTL__CODEC_SPEC__INIT;
    c.codec = KW_WIRE_CODEC_BF16;
    uint32_t skip = 4;
    Kwctl__SharePolicy p = KWCTL__SHARE_POLICY__INIT;
    p.k = p.v = &c;
    p.selection = KWCTL__SELECTION__SELECTION_VNORM_TOPK;
    p.proportion = 0.25; /* 4 of 16 */
    p.skip_ranked = &skip;
    p.n_skip_ranked = 1;
    client_request_policy(fd, 3, 16, &p);
    ProtobufCMessage *m = NULL;
    read_until(fd, KW_PROTO_FRAME_ERROR, &m);
    assert_int_equal(((Kwctl__Error *)m)->request_id, 3);
    assert_int_equal(((Kwctl__Error *)m)->status, KW_E_INVALID_ARG);
    assert_non_null(strstr(((Kwctl__Error *)m)->message, "skip_ranked"));
    kw_proto_message_free(m);
    skip = 3;
    client_request_policy(fd, 4, 16, &p);
    read_until(fd, KW_PROTO_FRAME_SHARE_HEADER, &m);
    assert_int_equal(((Kwctl__ShareHeader *)m)->tokens_kept, 1);
    kw_proto_message_free(m);
    read_until(fd, KW_PROTO_FRAME_SHARE_END, &m);
    const Kwctl__ShareEnd *e = (const Kwctl__ShareEnd *)m;
    assert_int_equal(e->request_id, 4);
    assert_true(e->layers_sent > 0 && e->rows_sent == e->layers_sent); /* one row per layer: rank 3 */
    kw_proto_message_free(m);
    close(fd);
    kwd_stop(&sd);
}

/* queue.max 1: a second share while one runs is refused KW_E_SHARE_BUSY at once; CANCEL stops the first. */
static void test_sharer_busy_and_cancel(void **state) {
    (void)state;
    const char *extra[] = {"--queue.max=1", NULL};
    kwd_proc sd;
    kwd_start_sharer(0, extra, &sd);
    const int a = client_hello(sd.port), b = client_hello(sd.port);
    client_request(a, 1, 4096); /* long enough to still run while the next request arrives */
    ProtobufCMessage *m = NULL;
    read_until(a, KW_PROTO_FRAME_SHARE_HEADER, &m);
    kw_proto_message_free(m);
    client_request(b, 7, 16);
    read_until(b, KW_PROTO_FRAME_ERROR, &m);
    assert_int_equal(((Kwctl__Error *)m)->request_id, 7);
    assert_int_equal(((Kwctl__Error *)m)->status, KW_E_SHARE_BUSY);
    kw_proto_message_free(m);
    Kwctl__Cancel c = KWCTL__CANCEL__INIT;
    c.request_id = 1;
    assert_int_equal(send_msg(a, KW_PROTO_FRAME_CANCEL, &c.base), 0);
    read_until(a, KW_PROTO_FRAME_ERROR, &m); /* WIRE frames of the share may come first */
    assert_int_equal(((Kwctl__Error *)m)->request_id, 1);
    assert_int_equal(((Kwctl__Error *)m)->status, KW_E_CANCELLED);
    kw_proto_message_free(m);
    /* the queue is free again */
    client_request(b, 8, 16);
    read_until(b, KW_PROTO_FRAME_SHARE_END, &m);
    assert_int_equal(((Kwctl__ShareEnd *)m)->request_id, 8);
    kw_proto_message_free(m);
    close(a);
    close(b);
    kwd_stop(&sd);
}

/* scoring: receiver at sharerd, spoken to directly (docs/PROTOCOL.md §5.2): a request of tiny-qwen2 (16 tokens, one
 * sent section) with proj_vnorm_topk and a bf16 preview; *h is its ShareHeader and its SHARE_PREVIEW frame has been
 * read (the preview's WIRE frames follow). */
static void client_scored_request(int fd, uint64_t id, uint32_t timeout_ms, Kwctl__ShareHeader **h) {
    Kwctl__CodecSpec c = KWCTL__CODEC_SPEC__INIT, pv = KWCTL__CODEC_SPEC__INIT;
    c.codec = KW_WIRE_CODEC_INT8, c.granularity = KW_WIRE_GRAN_TOKEN, c.scale_dtype = KW_WIRE_SCALE_F32;
    pv.codec = KW_WIRE_CODEC_BF16;
    Kwctl__SharePolicy p = KWCTL__SHARE_POLICY__INIT;
    p.k = p.v = &c;
    p.selection = KWCTL__SELECTION__SELECTION_PROJ_VNORM_TOPK;
    p.proportion = 0.25;
    p.scoring = KWCTL__SCORING__SCORING_RECEIVER;
    p.preview = &pv;
    uint32_t ids[16];
    for (uint32_t i = 0; i < 16; ++i)
        ids[i] = 100 + i;
    Kwctl__Section sec = KWCTL__SECTION__INIT;
    sec.length = 16;
    sec.sent = 1;
    Kwctl__Section *secs[] = {&sec};
    Kwctl__ShareRequest r = KWCTL__SHARE_REQUEST__INIT;
    r.request_id = id;
    r.mode = KWCTL__MODE__MODE_C2C;
    r.sharer_model = "tiny-qwen2";
    r.token_ids = ids;
    r.n_token_ids = 16;
    r.sections = secs;
    r.n_sections = 1;
    r.policy = &p;
    r.cache_dtype = KWCTL__CACHE_DTYPE__CACHE_DTYPE_BF16;
    r.timeout_ms = timeout_ms;
    assert_int_equal(send_msg(fd, KW_PROTO_FRAME_SHARE_REQUEST, &r.base), 0);
    ProtobufCMessage *m = NULL;
    read_until(fd, KW_PROTO_FRAME_SHARE_HEADER, &m);
    *h = (Kwctl__ShareHeader *)m;
    assert_int_equal((*h)->request_id, id);
    read_until(fd, KW_PROTO_FRAME_SHARE_PREVIEW, &m);
    assert_int_equal(((Kwctl__SharePreview *)m)->request_id, id);
    assert_int_equal(((Kwctl__SharePreview *)m)->blob, 0);
    kw_proto_message_free(m);
}

static void client_selection(int fd, uint64_t id, const uint8_t *sel, size_t len) {
    Kwctl__ShareSelection q = KWCTL__SHARE_SELECTION__INIT;
    q.request_id = id;
    q.selection.data = (uint8_t *)sel;
    q.selection.len = len;
    assert_int_equal(send_msg(fd, KW_PROTO_FRAME_SHARE_SELECTION, &q.base), 0);
}

static void expect_request_error(int fd, uint64_t id, int status) {
    ProtobufCMessage *m = NULL;
    read_until(fd, KW_PROTO_FRAME_ERROR, &m);
    assert_int_equal(((Kwctl__Error *)m)->request_id, id);
    assert_int_equal(((Kwctl__Error *)m)->status, status);
    kw_proto_message_free(m);
}

/* The sharer's wait for the selection: a receiver that never sends it (the share's deadline), a CANCEL, a malformed
 * selection, one naming a layer not sent, all end the share with an error and the sharer serves on; a selection in
 * c2c/kw_rselect.h's encoding (written here byte by byte) gets exactly its rows and the scoring report. */
static void test_sharer_receiver_scoring(void **state) {
    (void)state;
    kwd_proc sd;
    kwd_start_sharer(0, NULL, &sd);
    const int fd = client_hello(sd.port);
    Kwctl__ShareHeader *h = NULL;
    client_scored_request(fd, 11, 1500, &h); /* never answered */
    kw_proto_message_free(&h->base);
    expect_request_error(fd, 11, KW_E_TIMEOUT);
    client_scored_request(fd, 12, 0, &h);
    kw_proto_message_free(&h->base);
    Kwctl__Cancel c = KWCTL__CANCEL__INIT;
    c.request_id = 12;
    assert_int_equal(send_msg(fd, KW_PROTO_FRAME_CANCEL, &c.base), 0);
    expect_request_error(fd, 12, KW_E_CANCELLED);
    client_scored_request(fd, 13, 0, &h);
    kw_proto_message_free(&h->base);
    const uint8_t garbage[] = {0xff, 0xff};
    client_selection(fd, 13, garbage, sizeof garbage);
    expect_request_error(fd, 13, KW_E_PROTO_FIELD);
    /* one entry per sent layer: pos0 0, the layer, length 16, rows 0, 3 and 5 (bitmap 0x29 0x00), one target */
    client_scored_request(fd, 14, 0, &h);
    uint8_t sel[1 + 64 * 6];
    size_t n = 0;
    assert_true(h->n_layers >= 1 && h->n_layers < 64);
    sel[n++] = (uint8_t)h->n_layers;
    for (size_t i = 0; i < h->n_layers; ++i) {
        const uint8_t e[] = {0, (uint8_t)h->layers[i], 16, 0x29, 0x00, 0};
        memcpy(sel + n, e, sizeof e);
        n += sizeof e;
    }
    const size_t layers = h->n_layers;
    kw_proto_message_free(&h->base);
    uint8_t bad_layer[7] = {1, 0, 100, 16, 0x29, 0x00, 0}; /* a layer the share does not send */
    client_selection(fd, 14, bad_layer, sizeof bad_layer);
    expect_request_error(fd, 14, KW_E_PROTO_FIELD);
    client_scored_request(fd, 15, 0, &h);
    kw_proto_message_free(&h->base);
    client_selection(fd, 15, sel, n);
    ProtobufCMessage *m = NULL;
    read_until(fd, KW_PROTO_FRAME_SHARE_END, &m);
    const Kwctl__ShareEnd *e = (const Kwctl__ShareEnd *)m;
    assert_int_equal(e->request_id, 15);
    assert_int_equal(e->layers_sent, layers);
    assert_int_equal(e->rows_sent, 3 * layers);
    assert_non_null(e->scoring);
    assert_int_equal(e->scoring->placement, KWCTL__SCORING__SCORING_RECEIVER);
    assert_int_equal(e->scoring->selection_bytes, n);
    assert_true(e->scoring->preview_bytes > e->blob_bytes);
    kw_proto_message_free(m);
    client_request(fd, 16, 16); /* still serving */
    read_until(fd, KW_PROTO_FRAME_SHARE_END, &m);
    assert_int_equal(((Kwctl__ShareEnd *)m)->request_id, 16);
    kw_proto_message_free(m);
    close(fd);
    kwd_stop(&sd);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sharer_fails_mid_stream),
        cmocka_unit_test(test_hostile_peers),
        cmocka_unit_test(test_wrong_pair),
        cmocka_unit_test(test_sharer_context),
        cmocka_unit_test(test_tls),
        cmocka_unit_test(test_busy),
        cmocka_unit_test(test_sharer_busy_and_cancel),
        cmocka_unit_test(test_sharer_skip_ranked),
        cmocka_unit_test(test_sharer_receiver_scoring),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
