/* bench_net.c: `kvwire bench net` measures the transport the daemons use, on loopback, against raw TCP measured by
 * the same harness in the same run:
 *  1. throughput: 64 MiB of KVWire-section-sized frames (by default a real int8 section of a Qwen3-0.6B-shaped
 *     layer, 512 tokens) sent from a sender thread to a receiver thread, as raw TCP (blocking POSIX sockets, the
 *     payload alone), as net/ connection bytes without framing, as proto/ frames over net/ (the framed connection:
 *     5-byte header copied + section borrowed; the receiver's decoder streams the payload without copying), and
 *     the same over TLS; goodput = payload bytes / (first byte written .. last byte received), best of --reps;
 *  2. the per-request protocol overhead, measured on the socket: one c2c-shaped share (a ShareRequest of --prompt
 *     tokens, ShareHeader, a real KVWire blob of --layers sections in WIRE frames, ShareEnd) between a minimal
 *     receiver and sharer speaking docs/PROTOCOL.md, handshake (TCP, TLS, Hello) excluded; the blob is decoded by
 *     the receiver with the streaming KVWire decoder, so what is counted is a working exchange.
 * Not a model benchmark: no prefill, no selection; the bytes are fixed before the clock starts.
 */
#include "kw_benches.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench/bench_median.h"
#include "common/kw_half.h"
#include "common/kw_status.h"
#include "common/kw_time.h"
#include "net/kw_net.h"
#include "proto/kw_proto.h"
#include "tools/kw_cli.h"
#include "wire/kw_wire.h"

const char kw_bench_net_summary[] = "framed TCP/TLS loopback throughput vs raw TCP, and per-request protocol bytes";

#define KW__BN_READ_BYTES (256u << 10) /* the receive buffer of every variant (net/'s default) */

static void kw__bench_net_usage(FILE *out) {
    fprintf(out,
            "usage: kvwire bench net [--mib N] [--section-bytes N] [--reps N] [--layers N] [--heads N] [--dim N]\n"
            "                        [--tokens N] [--prompt N] [--only TEXT] [--throughput-only]\n"
            "Throughput: N MiB (default 64) of frames of one KVWire section each, by default a real int8/token/f16\n"
            "section of --heads x --dim x --tokens (8 x 128 x 512, Qwen3-0.6B); --section-bytes sets another frame\n"
            "size (synthetic bytes). Variants: raw TCP (POSIX sockets), net/ bytes, proto/ frames over net/, and\n"
            "frames over TLS, in --reps (3) rounds; each variant's ratio is the median over rounds of its rate over\n"
            "the raw TCP rate of the same round; the CPU time of each thread is reported per byte. --only TEXT runs\n"
            "raw TCP and the variants whose name contains TEXT. Overhead (unless --throughput-only): one share of\n"
            "--layers (28) sections of --prompt (128) tokens, bytes and round trips on the socket, TCP and TLS.\n");
}

/* CPU time of the calling thread, in seconds (user + system). */
static double kw__bn_thread_cpu(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_THREAD, &ru) != 0) return 0;
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
           1e-6 * (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

static uint64_t kw__bn_rng(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* K/V-like bf16 values for one layer: (H, T, D), a few outlier channels. */
static void kw__bn_fill(uint16_t *x, size_t n, uint32_t D, uint64_t seed) {
    for (size_t i = 0; i < n; ++i) {
        const float v = (float)((int32_t)(kw__bn_rng(&seed) >> 40) - (1 << 23)) * 0x1p-23f;
        x[i] = kw_f32_to_bf16(i % D == 5 ? 8.0f * v : v);
    }
}

/* The int8/token/f16 codec of both tensors: what a c2c request typically asks for. */
static const kw_wire_policy kw__bn_policy = {
    .k = {KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0},
    .v = {KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0},
};

/* Encodes a real KVWire blob of L layers (H, T, D): header, sections, trailer, each piece's offset recorded so a
 * sender can put each in its own WIRE frame. *blob (malloc) and *pieces (malloc, L + 3 offsets) are the caller's. */
static int kw__bn_blob(uint32_t L, uint32_t H, uint32_t D, uint32_t T, uint8_t **blob, size_t *blob_len,
                       size_t **pieces) {
    const kw_wire_header hdr = {.n_layers = (uint16_t)L,
                                .n_sections = (uint16_t)L,
                                .n_kv_heads = (uint16_t)H,
                                .head_dim = (uint16_t)D,
                                .n_positions = T,
                                .src_dtype = KW_WIRE_DTYPE_BF16};
    size_t sec = 0;
    KW_FORWARD(kw_wire_section_size(&hdr, &kw__bn_policy, T, NULL, &sec));
    const size_t cap = KW_WIRE_HEADER_BYTES + (size_t)L * sec + KW_WIRE_TRAILER_BYTES;
    const size_t per = (size_t)H * T * D;
    uint8_t *b = malloc(cap);
    uint16_t *k = malloc(per * 2), *v = malloc(per * 2);
    size_t *off = malloc((L + 3) * sizeof *off);
    kw_wire_encoder *enc = NULL;
    int rc = (!b || !k || !v || !off) ? kw_error_set(KW_E_NOMEM, "bench net: out of memory") : 0;
    size_t at = 0, n = 0;
    if (rc == 0) rc = kw_wire_encoder_create(&hdr, NULL, &enc);
    if (rc == 0) rc = kw_wire_encoder_write_header(enc, b, cap, &n);
    if (rc == 0) {
        off[0] = 0;
        at = n;
    }
    for (uint32_t l = 0; l < L && rc == 0; ++l) {
        kw__bn_fill(k, per, D, 2 * l + 1);
        kw__bn_fill(v, per, D, 2 * l + 2);
        const kw_wire_layer_in in = {
            .layer = l, .n_tokens = T, .k = {k, (size_t)T * D, D, NULL}, .v = {v, (size_t)T * D, D, NULL}};
        off[l + 1] = at;
        rc = kw_wire_encoder_write_section(enc, &in, &kw__bn_policy, b + at, cap - at, &n);
        at += n;
    }
    if (rc == 0) {
        off[L + 1] = at;
        rc = kw_wire_encoder_write_trailer(enc, b + at, cap - at, &n);
        at += n;
        off[L + 2] = at;
    }
    kw_wire_encoder_destroy(enc);
    free(k);
    free(v);
    if (rc < 0) {
        free(b);
        free(off);
        return rc;
    }
    *blob = b;
    *blob_len = at;
    *pieces = off;
    return 0;
}

/* CPU seconds per byte of AES-128-GCM alone (the cipher the TLS variant negotiates) over n bytes, as 16 KiB
 * records each with its own nonce and tag, like TLS 1.3 records: encrypt (decrypt = false) or decrypt (true, tag
 * checked). Best of reps. A lower bound of what TLS adds per byte at each end. */
static double kw__bn_gcm_ns_per_byte(const uint8_t *in, size_t n, bool decrypt, int reps) {
    enum { RECORD = 16384 };
    uint8_t key[16] = {1, 2, 3}, iv[12] = {0}, tag[16];
    uint8_t *out = malloc(RECORD + 32), *ct = malloc(n + 16);
    uint8_t *tags = malloc((n / RECORD + 1) * 16);
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    double best = 0;
    if (!out || !ct || !tags || !ctx) goto out;
    /* the ciphertext and tags to decrypt */
    for (size_t at = 0, r = 0; at < n; at += RECORD, ++r) {
        const int len = (int)(n - at < RECORD ? n - at : RECORD);
        int outl = 0;
        iv[0] = (uint8_t)r, iv[1] = (uint8_t)(r >> 8);
        EVP_EncryptInit_ex(ctx, EVP_aes_128_gcm(), NULL, key, iv);
        EVP_EncryptUpdate(ctx, ct + at, &outl, in + at, len);
        EVP_EncryptFinal_ex(ctx, ct + at + outl, &outl);
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, tags + 16 * r);
    }
    best = 1e30;
    for (int rep = 0; rep < reps; ++rep) {
        const double t0 = kw__bn_thread_cpu();
        for (size_t at = 0, r = 0; at < n; at += RECORD, ++r) {
            const int len = (int)(n - at < RECORD ? n - at : RECORD);
            int outl = 0;
            iv[0] = (uint8_t)r, iv[1] = (uint8_t)(r >> 8);
            if (decrypt) {
                EVP_DecryptInit_ex(ctx, EVP_aes_128_gcm(), NULL, key, iv);
                EVP_DecryptUpdate(ctx, out, &outl, ct + at, len);
                memcpy(tag, tags + 16 * r, 16);
                EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16, tag);
                if (EVP_DecryptFinal_ex(ctx, out + outl, &outl) != 1) best = 0;
            } else {
                EVP_EncryptInit_ex(ctx, EVP_aes_128_gcm(), NULL, key, iv);
                EVP_EncryptUpdate(ctx, out, &outl, in + at, len);
                EVP_EncryptFinal_ex(ctx, out + outl, &outl);
                EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, tag);
            }
        }
        const double t = kw__bn_thread_cpu() - t0;
        if (best > 0 && t < best) best = t;
    }
    best = best > 0 && best < 1e30 ? 1e9 * best / (double)n : 0;
out:
    EVP_CIPHER_CTX_free(ctx);
    free(out);
    free(ct);
    free(tags);
    return best;
}

/* CPU seconds of the calling thread (nanosecond clock: the calls timed below last a fraction of a millisecond). */
static double kw__bn_thread_cpu_fine(void) {
    struct timespec t;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t) != 0) return 0;
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Whole TLS with no socket: a TLS 1.3 connection (AES-128-GCM, the suite the TLS variant negotiates) between two
 * SSL objects of this thread joined by an OpenSSL BIO pair, n bytes sent as SSL_write calls of frame bytes and read
 * back with SSL_read into a 64 KiB buffer like net/'s. CPU ns per byte of SSL_write (*send) and of SSL_read (*recv),
 * best of reps: what OpenSSL costs each end per byte beyond the cipher (its record copies, the BIO's one copy,
 * per-record work), before any socket. *send and *recv are 0 when it could not run. */
static void kw__bn_tls_memory_ns_per_byte(const char *cert, const char *key, const uint8_t *frame, size_t frame_bytes,
                                          size_t n, int reps, double *send, double *recv) {
    *send = *recv = 0;
    SSL_CTX *sctx = SSL_CTX_new(TLS_server_method()), *cctx = SSL_CTX_new(TLS_client_method());
    SSL *s = NULL, *c = NULL;
    BIO *sb = NULL, *cb = NULL;
    uint8_t *plain = malloc(64u << 10);
    /* the pair holds one whole frame's ciphertext, so SSL_write never waits for the reader */
    const size_t ring = frame_bytes + frame_bytes / 16384 * 64 + (64u << 10);
    if (!sctx || !cctx || !plain || SSL_CTX_use_certificate_chain_file(sctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(sctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_set_ciphersuites(sctx, "TLS_AES_128_GCM_SHA256") != 1 ||
        SSL_CTX_set_ciphersuites(cctx, "TLS_AES_128_GCM_SHA256") != 1 || !(s = SSL_new(sctx)) || !(c = SSL_new(cctx)) ||
        BIO_new_bio_pair(&sb, ring, &cb, ring) != 1)
        goto out;
    SSL_set_bio(s, sb, sb); /* each SSL owns its half of the pair */
    SSL_set_bio(c, cb, cb);
    SSL_set_accept_state(s);
    SSL_set_connect_state(c);
    for (int i = 0; i < 16 && (!SSL_is_init_finished(s) || !SSL_is_init_finished(c)); ++i) {
        SSL_do_handshake(c);
        SSL_do_handshake(s);
    }
    if (!SSL_is_init_finished(s) || !SSL_is_init_finished(c)) goto out;
    double best_send = 1e30, best_recv = 1e30;
    for (int rep = 0; rep < reps; ++rep) {
        double ts = 0, tr = 0;
        for (size_t done = 0; done < n; done += frame_bytes) {
            size_t written = 0, got = 0;
            const double t0 = kw__bn_thread_cpu_fine();
            if (SSL_write_ex(s, frame, frame_bytes, &written) != 1 || written != frame_bytes) goto out;
            const double t1 = kw__bn_thread_cpu_fine();
            while (got < frame_bytes) {
                size_t r = 0;
                if (SSL_read_ex(c, plain, 64u << 10, &r) != 1) goto out;
                got += r;
            }
            ts += t1 - t0;
            tr += kw__bn_thread_cpu_fine() - t1;
        }
        if (ts < best_send) best_send = ts;
        if (tr < best_recv) best_recv = tr;
    }
    *send = 1e9 * best_send / (double)n;
    *recv = 1e9 * best_recv / (double)n;
out:
    ERR_clear_error();
    SSL_free(s); /* frees its half of the pair */
    SSL_free(c);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
    free(plain);
}

// ---------------------------------------------------------------------------------------------------------------
// Throughput

enum kw__bn_variant { KW__BN_RAW, KW__BN_NET, KW__BN_FRAMED, KW__BN_FRAMED_TLS, KW__BN_VARIANTS };
static const char *const kw__bn_names[KW__BN_VARIANTS] = {"raw TCP (POSIX sockets)", "net/ bytes, no framing",
                                                          "proto/ frames over net/", "proto/ frames over TLS"};

typedef struct kw__bn_run {
    enum kw__bn_variant variant;
    const uint8_t *payload;
    size_t payload_bytes; /* per frame */
    size_t n_frames;
    kw_net_tls *server_tls, *client_tls;
    /* receiver (its own thread and loop) */
    uv_loop_t rloop;
    kw_net_server *server;
    kw_proto_decoder *dec;
    uint64_t received;
    uint64_t t_end;
    double receiver_cpu; /* seconds of the receiver thread */
    int listen_fd;
    /* sender */
    kw_net_conn *conn;
    size_t sent;
    bool blocked, closed;
    uint64_t t_start;
    uint64_t socket_bytes_out;
    double sender_cpu; /* seconds of the sender thread */
    int status;
} kw__bn_run;

static uint64_t kw__bn_total(const kw__bn_run *r) {
    return (uint64_t)r->payload_bytes * r->n_frames;
}

static int kw__bn_count(void *user, const kw_proto_frame *f) {
    kw__bn_run *r = user;
    r->received += f->data_len;
    return 0;
}

static int kw__bn_recv_read(kw_net_conn *c, const uint8_t *data, size_t len, size_t *used) {
    kw__bn_run *r = kw_net_conn_user(c);
    if (r->variant == KW__BN_NET) {
        r->received += len;
        *used = len;
    } else {
        const int rc = kw_proto_decoder_feed_all(r->dec, data, len, used, kw__bn_count, r);
        if (rc < 0) return rc;
    }
    if (r->received == kw__bn_total(r) && !r->t_end) {
        r->t_end = kw_time_now_ns();
        kw_net_conn_close(c, 0);
    }
    return 0;
}

static void kw__bn_server_done(kw_net_server *s, void *user) {
    (void)s, (void)user;
}

static void kw__bn_recv_close(kw_net_conn *c, int status) {
    kw__bn_run *r = kw_net_conn_user(c);
    if (status < 0 && !r->t_end) r->status = status;
    kw_net_server_shutdown(r->server, 1000, kw__bn_server_done, r);
}

static void kw__bn_accept(kw_net_server *s, kw_net_conn *c, void *user) {
    (void)s;
    static const kw_net_conn_callbacks cb = {.on_read = kw__bn_recv_read, .on_close = kw__bn_recv_close};
    kw_net_conn_set_callbacks(c, &cb, user);
}

static void kw__bn_receiver_thread(void *arg) {
    kw__bn_run *r = arg;
    const double cpu0 = kw__bn_thread_cpu();
    if (r->variant != KW__BN_RAW) {
        uv_run(&r->rloop, UV_RUN_DEFAULT);
        r->receiver_cpu = kw__bn_thread_cpu() - cpu0;
        return;
    }
    const int fd = accept(r->listen_fd, NULL, NULL);
    if (fd < 0) {
        r->status = KW_E_NET_IO;
        return;
    }
    uint8_t *buf = malloc(KW__BN_READ_BYTES);
    const uint64_t total = kw__bn_total(r);
    while (buf && r->received < total) {
        const ssize_t n = recv(fd, buf, KW__BN_READ_BYTES, 0);
        if (n <= 0) {
            r->status = KW_E_NET_IO;
            break;
        }
        r->received += (uint64_t)n;
    }
    r->t_end = kw_time_now_ns();
    r->receiver_cpu = kw__bn_thread_cpu() - cpu0;
    free(buf);
    close(fd);
}

static void kw__bn_pump(kw__bn_run *r);

static void kw__bn_write_done(kw_net_conn *c, int status, void *user) {
    kw__bn_run *r = user;
    (void)c;
    if (status < 0 && !r->status) r->status = status;
}

static void kw__bn_pump(kw__bn_run *r) {
    while (!r->blocked && r->sent < r->n_frames) {
        uint8_t head[KW_PROTO_FRAME_HEADER_BYTES];
        const bool framed = r->variant != KW__BN_NET;
        if (framed) kw_proto_frame_header_write(KW_PROTO_FRAME_WIRE, r->payload_bytes, head);
        const kw_net_buf payload = {r->payload, r->payload_bytes};
        const int rc = kw_net_conn_write(r->conn, framed ? head : NULL, framed ? sizeof head : 0, &payload, 1,
                                         kw__bn_write_done, r);
        if (rc < 0) {
            r->status = rc;
            kw_net_conn_abort(r->conn, rc);
            return;
        }
        ++r->sent;
        if (rc == KW_NET_WRITE_FULL) r->blocked = true;
    }
    if (r->sent == r->n_frames) kw_net_conn_close(r->conn, 0); /* the queued frames still go out */
}

static void kw__bn_send_open(kw_net_conn *c) {
    kw__bn_run *r = kw_net_conn_user(c);
    r->t_start = kw_time_now_ns();
    kw__bn_pump(r);
}

static void kw__bn_send_drain(kw_net_conn *c) {
    kw__bn_run *r = kw_net_conn_user(c);
    r->blocked = false;
    kw__bn_pump(r);
}

static int kw__bn_send_read(kw_net_conn *c, const uint8_t *data, size_t len, size_t *used) {
    (void)c, (void)data;
    *used = len;
    return 0;
}

static void kw__bn_send_close(kw_net_conn *c, int status) {
    kw__bn_run *r = kw_net_conn_user(c);
    kw_net_conn_stats st;
    kw_net_conn_get_stats(c, &st);
    r->socket_bytes_out = st.socket_bytes_out;
    if (status < 0 && status != KW_E_NET_CLOSED && !r->status) r->status = status;
    r->closed = true;
}

static int kw__bn_raw_send(kw__bn_run *r, uint16_t port) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    KW_RETURN_IF(fd < 0, KW_E_NET_IO, "bench net: socket");
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        close(fd);
        KW_FAIL(KW_E_NET_CONNECT, "bench net: connect");
    }
    r->t_start = kw_time_now_ns();
    for (size_t i = 0; i < r->n_frames; ++i) {
        size_t at = 0;
        while (at < r->payload_bytes) {
            const ssize_t n = send(fd, r->payload + at, r->payload_bytes - at, 0);
            if (n <= 0) {
                close(fd);
                KW_FAIL(KW_E_NET_IO, "bench net: send");
            }
            at += (size_t)n;
        }
    }
    r->socket_bytes_out = kw__bn_total(r);
    close(fd);
    return 0;
}

/* One run of a variant; returns the goodput in bytes per second, or a negative status. */
static int kw__bn_run_once(kw__bn_run *r, double *bytes_per_s) {
    uv_thread_t thread;
    uint16_t port = 0;
    int rc = 0;
    uv_loop_t sloop;
    if (r->variant == KW__BN_RAW) {
        r->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof addr;
        if (r->listen_fd < 0 || bind(r->listen_fd, (struct sockaddr *)&addr, sizeof addr) < 0 ||
            listen(r->listen_fd, 4) < 0 || getsockname(r->listen_fd, (struct sockaddr *)&addr, &len) < 0)
            KW_FAIL(KW_E_NET_IO, "bench net: listen");
        port = ntohs(addr.sin_port);
        uv_thread_create(&thread, kw__bn_receiver_thread, r);
        const double cpu0 = kw__bn_thread_cpu();
        rc = kw__bn_raw_send(r, port);
        r->sender_cpu = kw__bn_thread_cpu() - cpu0;
        uv_thread_join(&thread);
        close(r->listen_fd);
    } else {
        uv_loop_init(&r->rloop);
        kw_net_server_config scfg = {.host = "127.0.0.1",
                                     .tls = r->variant == KW__BN_FRAMED_TLS ? r->server_tls : NULL};
        kw_net_conn_options_default(&scfg.conn);
        const kw_proto_decoder_options dopt = {.stream_raw = true};
        KW_FORWARD(kw_proto_decoder_create(&dopt, &r->dec));
        KW_FORWARD(kw_net_server_start(&r->rloop, &scfg, kw__bn_accept, r, &r->server));
        port = kw_net_server_port(r->server);
        uv_thread_create(&thread, kw__bn_receiver_thread, r);
        uv_loop_init(&sloop);
        kw_net_client_config ccfg = {.host = "127.0.0.1",
                                     .port = port,
                                     .tls = r->variant == KW__BN_FRAMED_TLS ? r->client_tls : NULL,
                                     .server_name = "localhost"};
        kw_net_conn_options_default(&ccfg.conn);
        static const kw_net_conn_callbacks cb = {.on_open = kw__bn_send_open,
                                                 .on_read = kw__bn_send_read,
                                                 .on_drain = kw__bn_send_drain,
                                                 .on_close = kw__bn_send_close};
        const double cpu0 = kw__bn_thread_cpu();
        rc = kw_net_connect(&sloop, &ccfg, &cb, r, &r->conn);
        if (rc == 0) uv_run(&sloop, UV_RUN_DEFAULT);
        r->sender_cpu = kw__bn_thread_cpu() - cpu0;
        uv_loop_close(&sloop);
        uv_thread_join(&thread);
        kw_net_server_free(r->server);
        uv_loop_close(&r->rloop);
        kw_proto_decoder_destroy(r->dec);
        r->dec = NULL;
    }
    if (rc == 0) rc = r->status;
    if (rc == 0 && r->received != kw__bn_total(r))
        rc = kw_error_set(KW_E_INTERNAL, "bench net: %llu of %llu bytes arrived", (unsigned long long)r->received,
                          (unsigned long long)kw__bn_total(r));
    if (rc < 0) return rc;
    *bytes_per_s = (double)kw__bn_total(r) / kw_time_seconds(r->t_start, r->t_end);
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Per-request overhead: a minimal receiver and sharer speaking docs/PROTOCOL.md on one loop

typedef struct kw__bn_share {
    /* the share */
    const uint8_t *blob;
    size_t blob_len;
    const size_t *pieces; /* L + 3 offsets: header, sections, trailer, end */
    uint32_t n_layers, n_tokens;
    uint32_t prompt;
    kw_net_tls *server_tls, *client_tls;
    bool tls;
    uv_loop_t loop;
    kw_net_server *server;
    /* sharer side */
    kw_net_conn *sconn;
    kw_proto_decoder *sdec;
    /* receiver side */
    kw_net_conn *rconn;
    kw_proto_decoder *rdec;
    kw_wire_decoder *wdec;
    kw_net_conn_stats after_hello;
    bool counting;        /* the hello is over: the request's exchange is being counted */
    bool sent_since_recv; /* the receiver sent something since the last frame it received */
    int round_trips;      /* times a frame arrived after the receiver had sent something: turns of the exchange */
    uint64_t blob_received;
    uint32_t sections_decoded;
    size_t frames_in;
    kw_net_conn_stats at_end;
    bool done, server_done;
    int status;
} kw__bn_share;

static void kw__bn_free_done(kw_net_conn *c, int status, void *user) {
    (void)c, (void)status;
    free(user);
}

/* Packs m into a frame and queues it; the buffer is borrowed by the write and freed when it completes. */
static int kw__bn_send_msg(kw_net_conn *c, uint32_t type, const ProtobufCMessage *m) {
    uint8_t *frame = NULL;
    size_t n = 0;
    KW_FORWARD(kw_proto_message_frame_pack(type, m, &frame, &n));
    const kw_net_buf b = {frame, n};
    const int rc = kw_net_conn_write(c, NULL, 0, &b, 1, kw__bn_free_done, frame);
    if (rc < 0) free(frame);
    return rc < 0 ? rc : 0;
}

static const uint32_t kw__bn_ids_seed = 151643; /* token ids near the top of Qwen's vocabulary: 3-byte varints */

static int kw__bn_sharer_frame(void *user, const kw_proto_frame *f) {
    kw__bn_share *s = user;
    ProtobufCMessage *m = NULL;
    KW_FORWARD(kw_proto_message_unpack(NULL, f->type, f->data, f->data_len, &m));
    int rc = 0;
    if (f->type == KW_PROTO_FRAME_HELLO) {
        Kwctl__HelloReply reply = KWCTL__HELLO_REPLY__INIT;
        reply.protocol_version = KW_PROTO_VERSION;
        reply.accepted = 1;
        reply.role = KWCTL__ROLE__ROLE_SHARER;
        reply.software = "kvwire bench";
        rc = kw__bn_send_msg(s->sconn, KW_PROTO_FRAME_HELLO_REPLY, &reply.base);
    } else if (f->type == KW_PROTO_FRAME_SHARE_REQUEST) {
        const Kwctl__ShareRequest *req = (const Kwctl__ShareRequest *)m;
        uint32_t layers[KW_WIRE_MAX_LAYERS];
        for (uint32_t l = 0; l < s->n_layers; ++l)
            layers[l] = l;
        Kwctl__KvShape kv = KWCTL__KV_SHAPE__INIT;
        kv.n_layers = s->n_layers, kv.n_kv_heads = 8, kv.head_dim = 128;
        Kwctl__ShareHeader h = KWCTL__SHARE_HEADER__INIT;
        h.request_id = req->request_id;
        h.mode = req->mode;
        h.layers = layers;
        h.n_layers = s->n_layers;
        h.tokens_prefilled = (uint32_t)req->n_token_ids;
        h.tokens_kept = s->n_tokens;
        h.blob_bytes_max = s->blob_len;
        h.section_bytes_max = (uint32_t)(s->pieces[2] - s->pieces[1]);
        h.kv = &kv;
        rc = kw__bn_send_msg(s->sconn, KW_PROTO_FRAME_SHARE_HEADER, &h.base);
        /* the blob: its header, one frame per section, its trailer (PROTOCOL.md §3.3) */
        for (uint32_t p = 0; p < s->n_layers + 2 && rc >= 0; ++p) {
            uint8_t head[KW_PROTO_FRAME_HEADER_BYTES];
            const size_t len = s->pieces[p + 1] - s->pieces[p];
            kw_proto_frame_header_write(KW_PROTO_FRAME_WIRE, len, head);
            const kw_net_buf b = {s->blob + s->pieces[p], len};
            rc = kw_net_conn_write(s->sconn, head, sizeof head, &b, 1, NULL, NULL);
        }
        Kwctl__ShareEnd e = KWCTL__SHARE_END__INIT;
        e.request_id = req->request_id;
        e.blob_bytes = s->blob_len;
        e.sections = s->n_layers;
        e.tokens_prefilled = (uint32_t)req->n_token_ids;
        e.tokens_kept = s->n_tokens;
        /* typical magnitudes of the stage timings (they cost bytes as varints); not measurements of anything */
        e.queue_ns = 15000, e.prefill_ns = 48000000, e.select_ns = 900000, e.encode_ns = 6000000;
        e.total_ns = 56000000, e.frames_sent = s->n_layers + 4;
        if (rc >= 0) rc = kw__bn_send_msg(s->sconn, KW_PROTO_FRAME_SHARE_END, &e.base);
    }
    kw_proto_message_free(m);
    return rc < 0 ? rc : 0;
}

static int kw__bn_sharer_read(kw_net_conn *c, const uint8_t *data, size_t len, size_t *used) {
    kw__bn_share *s = kw_net_conn_user(c);
    return kw_proto_decoder_feed_all(s->sdec, data, len, used, kw__bn_sharer_frame, s);
}

static void kw__bn_sharer_close(kw_net_conn *c, int status) {
    kw__bn_share *s = kw_net_conn_user(c);
    if (status < 0 && status != KW_E_NET_CLOSED && !s->status) s->status = status;
    s->sconn = NULL;
}

static void kw__bn_share_accept(kw_net_server *srv, kw_net_conn *c, void *user) {
    kw__bn_share *s = user;
    (void)srv;
    s->sconn = c;
    static const kw_net_conn_callbacks cb = {.on_read = kw__bn_sharer_read, .on_close = kw__bn_sharer_close};
    kw_net_conn_set_callbacks(c, &cb, s);
}

static int kw__bn_send_request(kw__bn_share *s) {
    uint32_t *ids = malloc(s->prompt * sizeof *ids);
    KW_RETURN_IF(!ids, KW_E_NOMEM, "bench net: out of memory");
    uint64_t seed = 7;
    for (uint32_t i = 0; i < s->prompt; ++i)
        ids[i] = (uint32_t)(kw__bn_rng(&seed) % kw__bn_ids_seed);
    Kwctl__CodecSpec codec = KWCTL__CODEC_SPEC__INIT;
    codec.codec = KW_WIRE_CODEC_INT8, codec.granularity = KW_WIRE_GRAN_TOKEN, codec.scale_dtype = KW_WIRE_SCALE_F16;
    Kwctl__SharePolicy p = KWCTL__SHARE_POLICY__INIT;
    p.k = &codec;
    p.v = &codec;
    p.selection = KWCTL__SELECTION__SELECTION_FULL;
    Kwctl__Section section = KWCTL__SECTION__INIT; /* the whole shared prompt, sent */
    section.length = s->prompt;
    section.sent = 1;
    Kwctl__Section *sections[] = {&section};
    Kwctl__ShareRequest r = KWCTL__SHARE_REQUEST__INIT;
    r.request_id = 1;
    r.mode = KWCTL__MODE__MODE_C2C;
    r.sharer_model = "qwen2.5-0.5b-instruct";
    r.token_ids = ids;
    r.n_token_ids = s->prompt;
    r.policy = &p;
    r.timeout_ms = 30000;
    r.sections = sections;
    r.n_sections = 1;
    r.cache_dtype = KWCTL__CACHE_DTYPE__CACHE_DTYPE_BF16;
    const int rc = kw__bn_send_msg(s->rconn, KW_PROTO_FRAME_SHARE_REQUEST, &r.base);
    free(ids);
    s->sent_since_recv = true;
    return rc;
}

static int kw__bn_receiver_frame(void *user, const kw_proto_frame *f) {
    kw__bn_share *s = user;
    if (kw_proto_frame_complete(f)) ++s->frames_in;
    if (s->counting && s->sent_since_recv) {
        ++s->round_trips;
        s->sent_since_recv = false;
    }
    if (f->type == KW_PROTO_FRAME_WIRE) {
        /* the blob goes through the real streaming decoder: what is counted is a working exchange */
        size_t at = 0;
        while (at < f->data_len) {
            size_t used = 0;
            const int ev = kw_wire_decoder_feed(s->wdec, f->data + at, f->data_len - at, &used);
            if (ev < 0) return ev;
            at += used;
            if (ev == KW_WIRE_EVENT_SECTION) ++s->sections_decoded;
        }
        s->blob_received += f->data_len;
        return 0;
    }
    ProtobufCMessage *m = NULL;
    KW_FORWARD(kw_proto_message_unpack(NULL, f->type, f->data, f->data_len, &m));
    int rc = 0;
    if (f->type == KW_PROTO_FRAME_HELLO_REPLY) {
        kw_net_conn_get_stats(s->rconn, &s->after_hello);
        s->counting = true;
        rc = kw__bn_send_request(s);
    } else if (f->type == KW_PROTO_FRAME_SHARE_END) {
        rc = kw_wire_decoder_finish(s->wdec);
        kw_net_conn_get_stats(s->rconn, &s->at_end);
        s->done = true;
        kw_net_conn_close(s->rconn, 0);
    }
    kw_proto_message_free(m);
    return rc;
}

static int kw__bn_receiver_read(kw_net_conn *c, const uint8_t *data, size_t len, size_t *used) {
    kw__bn_share *s = kw_net_conn_user(c);
    return kw_proto_decoder_feed_all(s->rdec, data, len, used, kw__bn_receiver_frame, s);
}

static void kw__bn_receiver_open(kw_net_conn *c) {
    Kwctl__Hello h = KWCTL__HELLO__INIT;
    h.protocol_version = KW_PROTO_VERSION;
    h.role = KWCTL__ROLE__ROLE_RECEIVER;
    h.software = "kvwire bench";
    const int rc = kw__bn_send_msg(c, KW_PROTO_FRAME_HELLO, &h.base);
    if (rc < 0) kw_net_conn_abort(c, rc);
}

static void kw__bn_share_server_done(kw_net_server *srv, void *user) {
    (void)srv;
    ((kw__bn_share *)user)->server_done = true;
}

static void kw__bn_receiver_close(kw_net_conn *c, int status) {
    kw__bn_share *s = kw_net_conn_user(c);
    if (status < 0 && !s->status) s->status = status;
    kw_net_server_shutdown(s->server, 1000, kw__bn_share_server_done, s);
}

static int kw__bn_share_once(kw__bn_share *s) {
    kw_proto_decoder_options dopt = {.stream_raw = true};
    kw_wire_decoder_options wopt;
    memset(&wopt, 0, sizeof wopt);
    KW_FORWARD(kw_proto_decoder_create(&dopt, &s->rdec));
    KW_FORWARD(kw_proto_decoder_create(&dopt, &s->sdec));
    KW_FORWARD(kw_wire_decoder_create(&wopt, &s->wdec));
    uv_loop_init(&s->loop);
    kw_net_server_config scfg = {.host = "127.0.0.1", .tls = s->tls ? s->server_tls : NULL};
    kw_net_conn_options_default(&scfg.conn);
    int rc = kw_net_server_start(&s->loop, &scfg, kw__bn_share_accept, s, &s->server);
    if (rc == 0) {
        kw_net_client_config ccfg = {.host = "127.0.0.1",
                                     .port = kw_net_server_port(s->server),
                                     .tls = s->tls ? s->client_tls : NULL,
                                     .server_name = "localhost"};
        kw_net_conn_options_default(&ccfg.conn);
        static const kw_net_conn_callbacks cb = {
            .on_open = kw__bn_receiver_open, .on_read = kw__bn_receiver_read, .on_close = kw__bn_receiver_close};
        rc = kw_net_connect(&s->loop, &ccfg, &cb, s, &s->rconn);
        if (rc == 0) uv_run(&s->loop, UV_RUN_DEFAULT);
        kw_net_server_free(s->server);
    }
    uv_loop_close(&s->loop);
    kw_proto_decoder_destroy(s->rdec);
    kw_proto_decoder_destroy(s->sdec);
    kw_wire_decoder_destroy(s->wdec);
    if (rc == 0) rc = s->status;
    if (rc == 0 && (!s->done || s->blob_received != s->blob_len || s->sections_decoded != s->n_layers))
        rc = kw_error_set(KW_E_INTERNAL, "bench net: the share did not complete (%llu of %zu blob bytes)",
                          (unsigned long long)s->blob_received, s->blob_len);
    return rc;
}

// ---------------------------------------------------------------------------------------------------------------

int kw_bench_net(int argc, char **argv) {
    int64_t mib = 64, section_bytes = 0, reps = 3, layers = 28, heads = 8, dim = 128, tokens = 512, prompt = 128;
    int throughput_only = 0;
    const char *only = NULL;
    const kw_cli_option opts[] = {
        KW_CLI_STR("--only", &only),
        KW_CLI_FLAG("--throughput-only", &throughput_only),
        KW_CLI_INT("--mib", &mib, 1, 4096),
        KW_CLI_INT("--section-bytes", &section_bytes, 0, 256 << 20),
        KW_CLI_INT("--reps", &reps, 1, 100),
        KW_CLI_INT("--layers", &layers, 1, KW_WIRE_MAX_LAYERS),
        KW_CLI_INT("--heads", &heads, 1, KW_WIRE_MAX_HEADS),
        KW_CLI_INT("--dim", &dim, 8, KW_WIRE_MAX_HEAD_DIM),
        KW_CLI_INT("--tokens", &tokens, 1, 1 << 16),
        KW_CLI_INT("--prompt", &prompt, 1, 1 << 16),
    };
    const int st = KW_CLI_PARSE("kvwire bench net", argc, argv, opts, kw__bench_net_usage);
    if (st != KW_CLI_RUN) return st;
    if (dim % 8) {
        fprintf(stderr, "kvwire bench net: --dim must be a multiple of 8\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int rc = 0;
    double *ratios = NULL;
    char dir[] = "/tmp/kvwire_bench_net_XXXXXX";
    uint8_t *section_blob = NULL, *payload = NULL, *blob = NULL;
    size_t *section_pieces = NULL, *pieces = NULL;
    kw_net_tls *stls = NULL, *ctls = NULL;
    if (!mkdtemp(dir)) {
        fprintf(stderr, "kvwire bench net: cannot make a temporary folder\n");
        return 1;
    }
    char cert[256], key[256], ca[256];
    snprintf(cert, sizeof cert, "%s/server.pem", dir);
    snprintf(key, sizeof key, "%s/server.key", dir);
    snprintf(ca, sizeof ca, "%s/ca.pem", dir);
    const kw_net_tls_config sc = {.cert_file = cert, .key_file = key};
    const kw_net_tls_config cc = {.ca_file = ca, .verify_peer = true};
    KW_CHECK(kw_net_pki_generate(dir, NULL));
    KW_CHECK(kw_net_tls_create(&sc, true, &stls));
    KW_CHECK(kw_net_tls_create(&cc, false, &ctls));

    /* the frame payload: one real section (layer 0 of a one-layer blob), or synthetic bytes */
    size_t payload_bytes = 0;
    if (section_bytes == 0) {
        size_t len;
        KW_CHECK(
            kw__bn_blob(1, (uint32_t)heads, (uint32_t)dim, (uint32_t)tokens, &section_blob, &len, &section_pieces));
        payload = section_blob + section_pieces[1];
        payload_bytes = section_pieces[2] - section_pieces[1];
    } else {
        payload_bytes = (size_t)section_bytes;
        section_blob = malloc(payload_bytes);
        KW_CHECK_IF(!section_blob, KW_E_NOMEM, "bench net: out of memory");
        uint64_t seed = 1;
        for (size_t i = 0; i < payload_bytes; ++i)
            section_blob[i] = (uint8_t)kw__bn_rng(&seed);
        payload = section_blob;
    }
    const size_t n_frames = (((size_t)mib << 20) + payload_bytes - 1) / payload_bytes;
    printf("net loopback: %zu frames of %zu bytes (%s) = %.1f MiB of payload, one sender thread and one receiver "
           "thread, %lld rounds of every variant\n",
           n_frames, payload_bytes, section_bytes ? "synthetic" : "an int8/token/f16 KVWire section",
           (double)(n_frames * payload_bytes) / (1 << 20), (long long)reps);
    double best[KW__BN_VARIANTS] = {0};
    double cpu_send[KW__BN_VARIANTS], cpu_recv[KW__BN_VARIANTS];     /* least seconds per run */
    ratios = calloc((size_t)reps * KW__BN_VARIANTS, sizeof *ratios); /* [variant][round] vs raw */
    KW_CHECK_IF(!ratios, KW_E_NOMEM, "bench net: out of memory");
    for (int v = 0; v < KW__BN_VARIANTS; ++v)
        cpu_send[v] = cpu_recv[v] = 1e30;
    for (int64_t rep = 0; rep < reps; ++rep) {
        double raw_bps = 0;
        for (int v = 0; v < KW__BN_VARIANTS; ++v) {
            if (v != KW__BN_RAW && only && !strstr(kw__bn_names[v], only)) continue;
            kw__bn_run run = {.variant = (enum kw__bn_variant)v,
                              .payload = payload,
                              .payload_bytes = payload_bytes,
                              .n_frames = n_frames,
                              .server_tls = stls,
                              .client_tls = ctls};
            double bps = 0;
            KW_CHECK(kw__bn_run_once(&run, &bps));
            if (bps > best[v]) best[v] = bps;
            if (v == KW__BN_RAW) raw_bps = bps;
            ratios[(size_t)v * (size_t)reps + (size_t)rep] = bps / raw_bps;
            if (run.sender_cpu < cpu_send[v]) cpu_send[v] = run.sender_cpu;
            if (run.receiver_cpu < cpu_recv[v]) cpu_recv[v] = run.receiver_cpu;
        }
    }
    /* CPU time per payload byte of each thread does not depend on how busy the machine is, unlike wall time: it
     * says what each end costs; the busier end bounds the rate when both ends have a core each */
    const double payload_total = (double)(n_frames * payload_bytes);
    /* The ratio is the median over rounds of (variant / raw TCP of the same round): each variant runs right after
     * its own baseline, so a change in the machine's load between rounds cancels out. */
    printf("%-26s %10s %9s %9s %12s %12s %14s\n", "variant", "best MB/s", "vs raw", "target", "send ns/B", "recv ns/B",
           "est. vs raw*");
    const double raw_bound = payload_total / (cpu_send[0] > cpu_recv[0] ? cpu_send[0] : cpu_recv[0]);
    for (int v = 0; v < KW__BN_VARIANTS; ++v) {
        if (!best[v]) continue;
        const char *target = v == KW__BN_FRAMED ? ">= 80%" : v == KW__BN_FRAMED_TLS ? ">= 60%" : "";
        const double bound = payload_total / (cpu_send[v] > cpu_recv[v] ? cpu_send[v] : cpu_recv[v]);
        double *r = ratios + (size_t)v * (size_t)reps;
        const double median = kw_bench_median(r, (size_t)reps);
        printf("%-26s %10.1f %8.1f%% %9s %12.3f %12.3f %13.1f%%\n", kw__bn_names[v], best[v] * 1e-6, 100.0 * median,
               target, 1e9 * cpu_send[v] / payload_total, 1e9 * cpu_recv[v] / payload_total, 100.0 * bound / raw_bound);
    }
    printf("vs raw: the median over rounds of the variant's rate over raw TCP's in the same round\n");
    printf("* an estimate, not a measurement: payload bytes / CPU time of the busier thread, relative to raw TCP's; "
           "the ratio a core per thread and nothing else running would give\n");
    printf("framing on the wire: %zu bytes per %zu-byte frame (%.4f%%)\n", (size_t)KW_PROTO_FRAME_HEADER_BYTES,
           payload_bytes, 100.0 * KW_PROTO_FRAME_HEADER_BYTES / (double)payload_bytes);
    if (!only || strstr(kw__bn_names[KW__BN_FRAMED_TLS], only)) {
        /* the crypto alone, on the same bytes, in the same run: what TLS adds at each end at the least */
        uint8_t *big = malloc(32u << 20);
        KW_CHECK_IF(!big, KW_E_NOMEM, "bench net: out of memory");
        for (size_t at = 0; at < (32u << 20); at += payload_bytes)
            memcpy(big + at, payload, (32u << 20) - at < payload_bytes ? (32u << 20) - at : payload_bytes);
        const double enc = kw__bn_gcm_ns_per_byte(big, 32u << 20, false, (int)reps);
        const double dec = kw__bn_gcm_ns_per_byte(big, 32u << 20, true, (int)reps);
        free(big);
        printf("AES-128-GCM alone (EVP, 16 KiB records, one core): encrypt %.3f ns/B, decrypt %.3f ns/B, against "
               "raw TCP's %.3f ns/B to send and %.3f ns/B to receive\n",
               enc, dec, 1e9 * cpu_send[KW__BN_RAW] / payload_total, 1e9 * cpu_recv[KW__BN_RAW] / payload_total);
        /* all of OpenSSL's TLS, still without a socket: the least a TLS end can cost on top of raw TCP's */
        double tls_send = 0, tls_recv = 0;
        const size_t frames = payload_bytes < (32u << 20) ? (32u << 20) / payload_bytes : 1;
        kw__bn_tls_memory_ns_per_byte(cert, key, payload, payload_bytes, frames * payload_bytes, (int)reps, &tls_send,
                                      &tls_recv);
        if (tls_send > 0) {
            const double raw_s = 1e9 * cpu_send[KW__BN_RAW] / payload_total;
            const double raw_r = 1e9 * cpu_recv[KW__BN_RAW] / payload_total;
            const double least_s = raw_s + tls_send, least_r = raw_r + tls_recv;
            printf("OpenSSL TLS without a socket (TLS 1.3 AES-128-GCM over a BIO pair, one core): SSL_write %.3f ns/B, "
                   "SSL_read %.3f ns/B; with raw TCP's costs added, %.3f and %.3f ns/B: an est. vs raw* of at most "
                   "%.1f%%\n",
                   tls_send, tls_recv, least_s, least_r,
                   100.0 * (raw_s > raw_r ? raw_s : raw_r) / (least_s > least_r ? least_s : least_r));
        } else {
            printf("OpenSSL TLS without a socket: not measured (OpenSSL could not set the connection up)\n");
        }
    }

    /* per-request overhead */
    if (throughput_only) goto out;
    size_t blob_len = 0;
    KW_CHECK(
        kw__bn_blob((uint32_t)layers, (uint32_t)heads, (uint32_t)dim, (uint32_t)prompt, &blob, &blob_len, &pieces));
    printf("\nper-request protocol overhead, one c2c share: %lld-token prompt, KVWire blob of %lld sections (%lld "
           "heads x %lld dims x %lld tokens, int8/token/f16) = %zu bytes; handshake excluded\n",
           (long long)prompt, (long long)layers, (long long)heads, (long long)dim, (long long)prompt, blob_len);
    printf("%-10s %14s %14s %16s %14s %12s\n", "transport", "request bytes", "answer bytes", "answer - blob",
           "overhead", "round trips");
    for (int tls = 0; tls < 2; ++tls) {
        kw__bn_share s = {.blob = blob,
                          .blob_len = blob_len,
                          .pieces = pieces,
                          .n_layers = (uint32_t)layers,
                          .n_tokens = (uint32_t)prompt,
                          .prompt = (uint32_t)prompt,
                          .server_tls = stls,
                          .client_tls = ctls,
                          .tls = tls};
        KW_CHECK(kw__bn_share_once(&s));
        const uint64_t out = s.at_end.socket_bytes_out - s.after_hello.socket_bytes_out;
        const uint64_t in = s.at_end.socket_bytes_in - s.after_hello.socket_bytes_in;
        printf("%-10s %14llu %14llu %16llu %14llu %12d\n", tls ? "TLS" : "TCP", (unsigned long long)out,
               (unsigned long long)in, (unsigned long long)(in - blob_len), (unsigned long long)(out + in - blob_len),
               s.round_trips);
        if (!tls)
            printf("%-10s framing: %llu bytes of WIRE headers (%lld sections + blob header + trailer), the rest "
                   "ShareRequest, ShareHeader, ShareEnd\n",
                   "", (unsigned long long)(KW_PROTO_FRAME_HEADER_BYTES * (layers + 2)), (long long)layers);
    }
out:
    if (rc < 0) fprintf(stderr, "kvwire bench net: %s (%s)\n", kw_error_detail(), kw_status_name(rc));
    free(ratios);
    free(section_blob);
    free(section_pieces);
    free(blob);
    free(pieces);
    kw_net_tls_free(stls);
    kw_net_tls_free(ctls);
    static const char *const pki_files[] = {"ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key"};
    for (size_t i = 0; i < sizeof pki_files / sizeof pki_files[0]; ++i) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s", dir, pki_files[i]);
        unlink(path);
    }
    rmdir(dir);
    return rc < 0 ? 1 : 0;
}
