/* kw_net_tls.c: TLS contexts and the TLS transport. OpenSSL is a pure byte layer over memory: its BIO is a memory
 * BIO of our own (the kind h2o calls a write BIO) that reads ciphertext from the socket buffer the connection just
 * filled, and writes ciphertext into a buffer this file then hands to the socket through the connection core, so
 * each direction costs one copy less than BIO_s_mem (no copy into a BIO buffer and out again, no growing it).
 * SSL_read turns the ciphertext into plaintext for on_read; SSL_write turns a write's buffers into ciphertext at
 * once. OpenSSL never sees the file descriptor and never blocks.
 *
 * Not here: sockets, timeouts, the write queue (kw_net_conn.c). Error mapping: certificate problems (ours refused
 * by the peer, or the peer's not trusted) are KW_E_NET_TLS_VERIFY, a peer that is not speaking TLS at all is
 * KW_E_NET_NOT_TLS, anything else KW_E_NET_TLS; the OpenSSL reason is kept in the detail.
 */
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/kw_status.h"
#include "net/kw_net_internal.h"

#define KW__NET_TLS_PLAIN_BYTES (64u << 10) /* plaintext read buffer: several 16 KiB records per SSL_read loop */
#define KW__NET_TLS_RECORD      16384u      /* the most plaintext one TLS record carries */

struct kw_net_tls {
    SSL_CTX *ctx;
    bool server;
};

/* The last OpenSSL error as text (the error queue is cleared). */
static void kw__net_tls_reason(char *buf, size_t cap) {
    const unsigned long e = ERR_peek_last_error();
    if (e)
        ERR_error_string_n(e, buf, cap);
    else
        snprintf(buf, cap, "no OpenSSL reason");
    ERR_clear_error();
}

static int kw__net_tls_fail(int status, const char *what) {
    char reason[256];
    kw__net_tls_reason(reason, sizeof reason);
    return kw_error_set(status, "TLS %s: %s", what, reason);
}

// ---------------------------------------------------------------------------------------------------------------
// Contexts

static int kw__net_tls_readable(const char *what, const char *path) {
    KW_RETURN_IF(access(path, R_OK) != 0, KW_E_IO, "TLS %s %s cannot be read", what, path);
    return 0;
}

int kw_net_tls_create(const kw_net_tls_config *cfg, bool server, kw_net_tls **out) {
    KW_RETURN_IF(!cfg, KW_E_INVALID_ARG, "TLS: no configuration");
    KW_RETURN_IF(server && (!cfg->cert_file || !cfg->key_file), KW_E_INVALID_ARG,
                 "TLS server: a certificate and a key are required");
    KW_RETURN_IF(!cfg->cert_file != !cfg->key_file, KW_E_INVALID_ARG, "TLS: a certificate needs its key");
    KW_RETURN_IF(server && cfg->verify_peer && !cfg->ca_file, KW_E_INVALID_ARG,
                 "TLS server: verifying clients (mutual TLS) needs a CA file");
    if (cfg->cert_file) {
        KW_FORWARD(kw__net_tls_readable("certificate", cfg->cert_file));
        KW_FORWARD(kw__net_tls_readable("key", cfg->key_file));
    }
    if (cfg->ca_file) KW_FORWARD(kw__net_tls_readable("CA file", cfg->ca_file));

    int rc = 0;
    kw_net_tls *t = calloc(1, sizeof *t);
    KW_RETURN_IF(!t, KW_E_NOMEM, "TLS: out of memory");
    t->server = server;
    t->ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    KW_CHECK_IF(!t->ctx, kw__net_tls_fail(KW_E_NET_TLS, "context"), "TLS: %s", kw_error_detail());
    SSL_CTX_set_min_proto_version(t->ctx, TLS1_2_VERSION);
    /* connections are long-lived and the protocol has its own hello: no resumption, no tickets */
    SSL_CTX_set_session_cache_mode(t->ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(t->ctx, SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* AES-128-GCM first (OpenSSL's default order starts with AES-256-GCM, which costs 40% more rounds for a margin
     * bulk KV transfer between two hosts of one cluster does not need); read ahead: fewer, larger BIO reads */
    SSL_CTX_set_ciphersuites(t->ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256");
    SSL_CTX_set_read_ahead(t->ctx, 1);
    if (server) SSL_CTX_set_num_tickets(t->ctx, 0);
    if (cfg->cert_file) {
        KW_CHECK_IF(SSL_CTX_use_certificate_chain_file(t->ctx, cfg->cert_file) != 1,
                    kw__net_tls_fail(KW_E_NET_TLS, cfg->cert_file), "%s", kw_error_detail());
        KW_CHECK_IF(SSL_CTX_use_PrivateKey_file(t->ctx, cfg->key_file, SSL_FILETYPE_PEM) != 1,
                    kw__net_tls_fail(KW_E_NET_TLS, cfg->key_file), "%s", kw_error_detail());
        KW_CHECK_IF(SSL_CTX_check_private_key(t->ctx) != 1, kw__net_tls_fail(KW_E_NET_TLS, "key/certificate pair"),
                    "%s", kw_error_detail());
    }
    if (cfg->verify_peer) {
        if (cfg->ca_file) {
            KW_CHECK_IF(SSL_CTX_load_verify_locations(t->ctx, cfg->ca_file, NULL) != 1,
                        kw__net_tls_fail(KW_E_NET_TLS, cfg->ca_file), "%s", kw_error_detail());
        } else {
            KW_CHECK_IF(SSL_CTX_set_default_verify_paths(t->ctx) != 1,
                        kw__net_tls_fail(KW_E_NET_TLS, "system trust store"), "%s", kw_error_detail());
        }
        if (server) {
            STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(cfg->ca_file);
            if (names) SSL_CTX_set_client_CA_list(t->ctx, names); /* takes ownership */
            ERR_clear_error();
            SSL_CTX_set_verify(t->ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
        } else {
            SSL_CTX_set_verify(t->ctx, SSL_VERIFY_PEER, NULL);
        }
    } else {
        SSL_CTX_set_verify(t->ctx, SSL_VERIFY_NONE, NULL);
    }
    *out = t;
    t = NULL;
out:
    kw_net_tls_free(t);
    return rc;
}

void kw_net_tls_free(kw_net_tls *t) {
    if (!t) return;
    SSL_CTX_free(t->ctx);
    free(t);
}

int kw_net_tls_reload(kw_net_tls *t, const kw_net_tls_config *cfg) {
    KW_RETURN_IF(!t, KW_E_INVALID_ARG, "TLS reload: no context");
    kw_net_tls *fresh = NULL;
    KW_FORWARD(kw_net_tls_create(cfg, t->server, &fresh));
    /* every SSL made from the old context holds a reference to it (SSL_new), so open connections keep it */
    SSL_CTX *old = t->ctx;
    t->ctx = fresh->ctx;
    fresh->ctx = old;
    kw_net_tls_free(fresh);
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Transport

/* Maps a failed SSL call to a status, with OpenSSL's reason in the detail. */
static int kw__net_tls_error(kw_net_conn *c, int ret, const char *what) {
    const int err = SSL_get_error(c->ssl, ret);
    if (err == SSL_ERROR_ZERO_RETURN) {
        ERR_clear_error();
        KW_FAIL(KW_E_NET_CLOSED, "the peer ended TLS (close_notify)");
    }
    const unsigned long e = ERR_peek_last_error();
    const int reason = ERR_GET_REASON(e);
    const long verify = SSL_get_verify_result(c->ssl);
    char text[256];
    kw__net_tls_reason(text, sizeof text);
    if (err == SSL_ERROR_SYSCALL && !e) KW_FAIL(KW_E_NET_TLS, "TLS %s: unexpected end of the stream", what);
    if (verify != X509_V_OK && !SSL_is_server(c->ssl))
        KW_FAIL(KW_E_NET_TLS_VERIFY, "TLS %s: the server's certificate: %s", what,
                X509_verify_cert_error_string(verify));
    if (verify != X509_V_OK)
        KW_FAIL(KW_E_NET_TLS_VERIFY, "TLS %s: the client's certificate: %s", what,
                X509_verify_cert_error_string(verify));
    switch (reason) {
    case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
    case SSL_R_CERTIFICATE_VERIFY_FAILED:
    case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
    case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
    case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
        KW_FAIL(KW_E_NET_TLS_VERIFY, "TLS %s: %s", what, text);
    case SSL_R_WRONG_VERSION_NUMBER:
    case SSL_R_HTTP_REQUEST:
    case SSL_R_HTTPS_PROXY_REQUEST:
    case SSL_R_UNKNOWN_PROTOCOL:
    case SSL_R_PACKET_LENGTH_TOO_LONG:
    case SSL_R_RECORD_LENGTH_MISMATCH:
        if (c->state == KW__NET_HANDSHAKE)
            KW_FAIL(KW_E_NET_NOT_TLS, "TLS %s: the peer is not speaking TLS (%s)", what, text);
        break;
    default:
        break;
    }
    KW_FAIL(KW_E_NET_TLS, "TLS %s: %s", what, text);
}

// ---------------------------------------------------------------------------------------------------------------
// The byte layer: one BIO for both directions, its data the connection

static int kw__net_bio_write(BIO *b, const char *data, int len) {
    kw_net_conn *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (len <= 0) return 0;
    const size_t need = c->tls_out_len + (size_t)len;
    if (need > c->tls_out_cap) {
        /* kw__net_tls_write reserves enough for a whole write, so this grows only for handshake flights */
        size_t cap = c->tls_out_cap ? c->tls_out_cap * 2 : 4096;
        if (cap < need) cap = need;
        uint8_t *nb = realloc(c->tls_out, cap);
        if (!nb) return -1;
        c->tls_out = nb;
        c->tls_out_cap = cap;
    }
    memcpy(c->tls_out + c->tls_out_len, data, (size_t)len);
    c->tls_out_len = need;
    return len;
}

static int kw__net_bio_read(BIO *b, char *out, int len) {
    kw_net_conn *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (!c->tls_in_len) {
        BIO_set_retry_read(b); /* not the end of the stream: more may come from the socket */
        return -1;
    }
    const size_t n = (size_t)len < c->tls_in_len ? (size_t)len : c->tls_in_len;
    memcpy(out, c->tls_in, n);
    c->tls_in += n;
    c->tls_in_len -= n;
    return (int)n;
}

static long kw__net_bio_ctrl(BIO *b, int cmd, long num, void *ptr) {
    kw_net_conn *c = BIO_get_data(b);
    (void)num, (void)ptr;
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;
    case BIO_CTRL_PENDING:
        return (long)c->tls_in_len;
    case BIO_CTRL_WPENDING:
        return (long)c->tls_out_len;
    default:
        return 0;
    }
}

static int kw__net_bio_create(BIO *b) {
    BIO_set_init(b, 1);
    return 1;
}

static BIO_METHOD *kw__net_bio_method;
static uv_once_t kw__net_bio_once = UV_ONCE_INIT;

static void kw__net_bio_init(void) {
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "kvwire memory");
    if (!m) return;
    BIO_meth_set_write(m, kw__net_bio_write);
    BIO_meth_set_read(m, kw__net_bio_read);
    BIO_meth_set_ctrl(m, kw__net_bio_ctrl);
    BIO_meth_set_create(m, kw__net_bio_create);
    kw__net_bio_method = m; /* lives for the process */
}

/* Puts the ciphertext OpenSSL produced on the socket, attached to w (a user write) or as an internal write. */
static int kw__net_tls_flush(kw_net_conn *c, kw__net_write *w) {
    if (!c->tls_out_len) return w ? kw_error_set(KW_E_INTERNAL, "TLS produced no bytes for a write") : 0;
    uint8_t *buf = c->tls_out;
    const size_t len = c->tls_out_len, cap = c->tls_out_cap;
    c->tls_out = NULL;
    c->tls_out_len = c->tls_out_cap = 0;
    return kw__net_socket_write(c, w, buf, len, cap);
}

/* Keeps the ciphertext OpenSSL has not read yet (a pause stopped it) beyond the socket buffer it points into. */
static int kw__net_tls_keep_input(kw_net_conn *c) {
    if (!c->tls_in_len) {
        free(c->tls_in_held);
        c->tls_in_held = NULL;
        c->tls_in = NULL;
        return 0;
    }
    if (c->tls_in_held) return 0; /* already ours (a pause never lets new socket bytes in) */
    uint8_t *h = malloc(c->tls_in_len);
    KW_RETURN_IF(!h, KW_E_NOMEM, "TLS: cannot keep %zu received bytes", c->tls_in_len);
    memcpy(h, c->tls_in, c->tls_in_len);
    c->tls_in_held = h;
    c->tls_in = h;
    return 0;
}

static int kw__net_tls_attach(kw_net_conn *c, kw_net_tls *tls, bool server, const char *server_name) {
    KW_RETURN_IF(!tls || tls->server != server, KW_E_INVALID_ARG, "TLS: a %s context is needed",
                 server ? "server" : "client");
    uv_once(&kw__net_bio_once, kw__net_bio_init);
    KW_RETURN_IF(!kw__net_bio_method, KW_E_NOMEM, "TLS: cannot create the BIO method");
    c->ssl = SSL_new(tls->ctx);
    if (!c->ssl) return kw__net_tls_fail(KW_E_NET_TLS, "new connection");
    c->bio = BIO_new(kw__net_bio_method);
    c->plain = malloc(KW__NET_TLS_PLAIN_BYTES);
    c->tls_stage = malloc(KW__NET_TLS_RECORD);
    if (!c->bio || !c->plain || !c->tls_stage) {
        BIO_free(c->bio);
        c->bio = NULL;
        KW_FAIL(KW_E_NOMEM, "TLS: out of memory");
    }
    BIO_set_data(c->bio, c);
    c->plain_cap = KW__NET_TLS_PLAIN_BYTES;
    SSL_set_bio(c->ssl, c->bio, c->bio); /* the same BIO both ways: ssl owns its one reference from here on */
    if (server) {
        SSL_set_accept_state(c->ssl);
        return 0;
    }
    SSL_set_connect_state(c->ssl);
    if (server_name && *server_name) {
        /* an IP address is checked against the certificate's IP entries and sent without SNI */
        X509_VERIFY_PARAM *param = SSL_get0_param(c->ssl);
        if (X509_VERIFY_PARAM_set1_ip_asc(param, server_name) != 1) {
            ERR_clear_error();
            if (SSL_set_tlsext_host_name(c->ssl, server_name) != 1 || SSL_set1_host(c->ssl, server_name) != 1)
                return kw__net_tls_fail(KW_E_NET_TLS, "server name");
        }
    }
    return 0;
}

static void kw__net_tls_detach(kw_net_conn *c) {
    SSL_free(c->ssl); /* frees the BIO */
    c->ssl = NULL;
    c->bio = NULL;
    free(c->plain);
    c->plain = NULL;
    free(c->tls_stage);
    c->tls_stage = NULL;
    free(c->tls_out);
    c->tls_out = NULL;
    free(c->tls_in_held);
    c->tls_in_held = NULL;
}

static int kw__net_tls_handshake(kw_net_conn *c) {
    const int r = SSL_do_handshake(c->ssl);
    int rc = kw__net_tls_flush(c, NULL);
    if (rc < 0) return rc;
    if (r == 1) {
        kw__net_opened(c);
        return 0;
    }
    const int err = SSL_get_error(c->ssl, r);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return 0;
    return kw__net_tls_error(c, r, "handshake");
}

static int kw__net_tls_start(kw_net_conn *c) {
    c->state = KW__NET_HANDSHAKE;
    /* both sides read from now on: the server waits for the ClientHello, the client for the server's flight */
    KW_FORWARD(kw__net_read_start(c));
    return SSL_is_server(c->ssl) ? 0 : kw__net_tls_handshake(c);
}

static int kw__net_tls_pump(kw_net_conn *c) {
    while (kw__net_can_deliver(c)) {
        const int n = SSL_read(c->ssl, c->plain, (int)c->plain_cap);
        if (n <= 0) {
            const int err = SSL_get_error(c->ssl, n);
            if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) break;
            const int rc = kw__net_tls_error(c, n, "read");
            kw__net_tls_flush(c, NULL); /* an alert for the peer, if OpenSSL made one */
            return rc;
        }
        c->stats.app_bytes_in += (uint64_t)n;
        KW_FORWARD(kw__net_deliver(c, c->plain, (size_t)n));
    }
    /* TLS 1.3 post-handshake messages (key updates) may have produced bytes to send */
    KW_FORWARD(kw__net_tls_flush(c, NULL));
    return kw__net_tls_keep_input(c);
}

static int kw__net_tls_on_socket_bytes(kw_net_conn *c, const uint8_t *data, size_t len) {
    /* reading stops while a pause keeps input, so nothing is held when new socket bytes arrive */
    KW_RETURN_IF(c->tls_in_len, KW_E_INTERNAL, "TLS: socket bytes arrived while %zu were kept", c->tls_in_len);
    c->tls_in = data;
    c->tls_in_len = len;
    int rc = 0;
    if (c->state == KW__NET_HANDSHAKE) rc = kw__net_tls_handshake(c);
    if (rc == 0 && c->state == KW__NET_OPEN) rc = kw__net_tls_pump(c);
    if (rc == 0 && c->state == KW__NET_CLOSED) c->tls_in_len = 0; /* closed meanwhile: nothing more is read */
    if (rc == 0) rc = kw__net_tls_keep_input(c);
    return rc;
}

/* Encrypts n bytes into c->tls_out (OpenSSL cuts them into records of at most 16 KiB). */
static int kw__net_tls_seal(kw_net_conn *c, const uint8_t *data, size_t n) {
    size_t written = 0;
    const int r = SSL_write_ex(c->ssl, data, n, &written);
    if (r != 1 || written != n) {
        /* whatever was encrypted cannot be taken back: the stream is broken, the caller aborts */
        c->tls_out_len = 0;
        return kw__net_tls_error(c, r, "write");
    }
    return 0;
}

/* The plaintext of w as full 16 KiB records wherever it can be: the whole records of each buffer go to OpenSSL
 * straight from the caller's memory, and the rest of a buffer (the frame's 5-byte head, the tail of a section) is
 * completed with the start of the next buffer in c->tls_stage, so a frame costs one record of overhead less than
 * a record per buffer would (no record of its own for the head, no short record in the middle) and a short record
 * only ends the write. What is encrypted goes to the socket as one buffer, in one uv_write: handing it over in
 * pieces of 64-512 KiB while the socket took them (uv_try_write, the buffer reused while in cache) was measured
 * slower, all of it kernel time (docs/BENCHMARKS.md, network section). */
static int kw__net_tls_write(kw_net_conn *c, kw__net_write *w) {
    /* Room for the whole ciphertext at once: the plaintext plus, per 16 KiB record, at most 5 bytes of header, 1
     * of content type and 16 of tag (TLS 1.3) or 8 of explicit nonce (TLS 1.2), rounded up generously. */
    const size_t records = w->app_bytes / KW__NET_TLS_RECORD + 2;
    const size_t want = c->tls_out_len + w->app_bytes + records * 64;
    if (want > c->tls_out_cap) {
        size_t cap = 0;
        uint8_t *nb = kw__net_buffer_get(c, want, &cap);
        KW_RETURN_IF(!nb, KW_E_NOMEM, "TLS: cannot buffer a %zu-byte write", w->app_bytes);
        if (c->tls_out_len) memcpy(nb, c->tls_out, c->tls_out_len);
        free(c->tls_out);
        c->tls_out = nb;
        c->tls_out_cap = cap;
    }
    size_t staged = 0, left = w->app_bytes;
    for (size_t i = 0; i < w->n_bufs; ++i) {
        const uint8_t *p = (const uint8_t *)w->bufs[i].base;
        size_t n = w->bufs[i].len;
        if (staged) { /* complete the record a previous buffer started */
            const size_t take = n < KW__NET_TLS_RECORD - staged ? n : KW__NET_TLS_RECORD - staged;
            memcpy(c->tls_stage + staged, p, take);
            staged += take;
            p += take;
            n -= take;
            left -= take;
            if (staged < KW__NET_TLS_RECORD && left) continue;
            KW_FORWARD(kw__net_tls_seal(c, c->tls_stage, staged));
            staged = 0;
        }
        /* whole records straight from the buffer, and all of the write's last buffer */
        const size_t direct = n == left ? n : n - n % KW__NET_TLS_RECORD;
        if (direct) KW_FORWARD(kw__net_tls_seal(c, p, direct));
        p += direct;
        n -= direct;
        left -= direct;
        if (n) { /* less than a record, and more buffers follow */
            memcpy(c->tls_stage, p, n);
            staged = n;
            left -= n;
        }
    }
    KW_RETURN_IF(left || staged, KW_E_INTERNAL, "TLS: %zu bytes of a write were not encrypted", left + staged);
    return kw__net_tls_flush(c, w);
}

static void kw__net_tls_close_notify(kw_net_conn *c) {
    if (SSL_shutdown(c->ssl) < 0) ERR_clear_error();
    kw__net_tls_flush(c, NULL);
}

const kw__net_transport kw__net_transport_tls = {
    .name = "tls",
    .attach = kw__net_tls_attach,
    .detach = kw__net_tls_detach,
    .start = kw__net_tls_start,
    .on_socket_bytes = kw__net_tls_on_socket_bytes,
    .write = kw__net_tls_write,
    .pump = kw__net_tls_pump,
    .close_notify = kw__net_tls_close_notify,
};
