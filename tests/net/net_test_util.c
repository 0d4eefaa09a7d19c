/* net_test_util.c: loop helpers, a collecting client and a throwaway PKI for the net tests (net_test_util.h). */
#include "tests/net/net_test_util.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_status.h"

// ---------------------------------------------------------------------------------------------------------------
// Loops

static void nt_watchdog_cb(uv_timer_t *t) {
    *(bool *)t->data = true;
}

void nt_run_until_fn(uv_loop_t *loop, bool (*cond)(void *arg), void *arg, uint32_t timeout_ms) {
    bool expired = false;
    uv_timer_t watchdog;
    uv_timer_init(loop, &watchdog);
    watchdog.data = &expired;
    uv_timer_start(&watchdog, nt_watchdog_cb, timeout_ms, 0);
    while (!cond(arg) && !expired)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&watchdog, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    if (!cond(arg)) fail_msg("the condition did not hold within %u ms of loop time", timeout_ms);
}

static bool nt_flag(void *arg) {
    return *(const bool *)arg;
}

void nt_run_until(uv_loop_t *loop, const bool *flag, uint32_t timeout_ms) {
    nt_run_until_fn(loop, nt_flag, (void *)flag, timeout_ms);
}

void nt_run_for(uv_loop_t *loop, uint32_t ms) {
    bool expired = false;
    uv_timer_t t;
    uv_timer_init(loop, &t);
    t.data = &expired;
    uv_timer_start(&t, nt_watchdog_cb, ms, 0);
    while (!expired)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
}

static void nt_count_open(uv_handle_t *h, void *arg) {
    if (!uv_is_closing(h)) {
        fprintf(stderr, "leaked handle: %s\n", uv_handle_type_name(uv_handle_get_type(h)));
        ++*(int *)arg;
    }
}

void nt_loop_finish(uv_loop_t *loop) {
    for (int i = 0; i < 8; ++i)
        uv_run(loop, UV_RUN_NOWAIT);
    int open = 0;
    uv_walk(loop, nt_count_open, &open);
    assert_int_equal(open, 0);
    uv_run(loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(loop), 0);
}

void nt_conn_options(kw_net_conn_options *opt) {
    kw_net_conn_options_default(opt);
    opt->connect_timeout_ms = 5000;
    opt->idle_timeout_ms = 20000;
}

// ---------------------------------------------------------------------------------------------------------------
// Collecting client

static void nt_client_open(kw_net_conn *c) {
    ((nt_client *)kw_net_conn_user(c))->opened = true;
}

static int nt_client_read(kw_net_conn *c, const uint8_t *data, size_t len, size_t *used) {
    nt_client *cl = kw_net_conn_user(c);
    cl->data = realloc(cl->data, cl->len + len + 1);
    assert_non_null(cl->data);
    memcpy(cl->data + cl->len, data, len);
    cl->len += len;
    cl->data[cl->len] = 0;
    *used = len;
    if (cl->pause_at && cl->len >= (size_t)cl->pause_at) kw_net_conn_pause_reading(c);
    return 0;
}

static void nt_client_close(kw_net_conn *c, int status) {
    nt_client *cl = kw_net_conn_user(c);
    cl->closed = true;
    cl->close_status = status;
    cl->conn = NULL;
}

void nt_client_connect(uv_loop_t *loop, nt_client *c, const char *host, uint16_t port, kw_net_tls *tls,
                       const char *server_name, const kw_net_conn_options *opt) {
    static const kw_net_conn_callbacks cb = {
        .on_open = nt_client_open, .on_read = nt_client_read, .on_close = nt_client_close};
    kw_net_client_config cfg = {.host = host, .port = port, .tls = tls, .server_name = server_name};
    if (opt)
        cfg.conn = *opt;
    else
        nt_conn_options(&cfg.conn);
    assert_int_equal(kw_net_connect(loop, &cfg, &cb, c, &c->conn), 0);
}

void nt_client_free(nt_client *c) {
    free(c->data);
    c->data = NULL;
    c->len = 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Certificates

const char *nt_path(const char *dir, const char *name) {
    static char buf[512];
    snprintf(buf, sizeof buf, "%s/%s", dir, name);
    return buf;
}

char *nt_tempdir(void) {
    char tmpl[] = "/tmp/kw_net_test_XXXXXX";
    assert_non_null(mkdtemp(tmpl));
    return strdup(tmpl);
}

static void nt_ext(X509 *x, X509 *issuer, int nid, const char *value) {
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    assert_non_null(e);
    assert_int_equal(X509_add_ext(x, e, -1), 1);
    X509_EXTENSION_free(e);
}

/* A certificate for key, named cn, signed by issuer (NULL: self-signed). */
static X509 *nt_cert(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *issuer_key, bool ca, const char *san) {
    static long serial = 1;
    X509 *x = X509_new();
    assert_non_null(x);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial++);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400L * 30);
    X509_set_pubkey(x, key);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name);
    X509 *signer = issuer ? issuer : x;
    nt_ext(x, signer, NID_basic_constraints, ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
    nt_ext(x, signer, NID_key_usage, ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature");
    if (!ca) nt_ext(x, signer, NID_ext_key_usage, "serverAuth,clientAuth");
    nt_ext(x, signer, NID_subject_key_identifier, "hash");
    nt_ext(x, signer, NID_authority_key_identifier, "keyid:always");
    if (san) nt_ext(x, signer, NID_subject_alt_name, san);
    assert_true(X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256()) > 0);
    return x;
}

static void nt_write(const char *dir, const char *name, X509 *x, EVP_PKEY *key) {
    FILE *f = fopen(nt_path(dir, name), "w");
    assert_non_null(f);
    if (x) assert_int_equal(PEM_write_X509(f, x), 1);
    if (key) assert_int_equal(PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL), 1);
    fclose(f);
}

void nt_certs_make(const char *dir) {
    EVP_PKEY *ca_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    EVP_PKEY *server_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    EVP_PKEY *client_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    EVP_PKEY *rogue_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    EVP_PKEY *rogue_client_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    assert_true(ca_key && server_key && client_key && rogue_key && rogue_client_key);
    X509 *ca = nt_cert(ca_key, "kvwire test CA", NULL, NULL, true, NULL);
    X509 *server = nt_cert(server_key, "localhost", ca, ca_key, false, "DNS:localhost,IP:127.0.0.1");
    X509 *client = nt_cert(client_key, "kvwire test receiver", ca, ca_key, false, NULL);
    X509 *rogue = nt_cert(rogue_key, "rogue CA", NULL, NULL, true, NULL);
    X509 *rogue_client = nt_cert(rogue_client_key, "rogue receiver", rogue, rogue_key, false, NULL);
    nt_write(dir, "ca.pem", ca, NULL);
    nt_write(dir, "server.pem", server, NULL);
    nt_write(dir, "server.key", NULL, server_key);
    nt_write(dir, "client.pem", client, NULL);
    nt_write(dir, "client.key", NULL, client_key);
    nt_write(dir, "rogue_ca.pem", rogue, NULL);
    nt_write(dir, "rogue_client.pem", rogue_client, NULL);
    nt_write(dir, "rogue_client.key", NULL, rogue_client_key);
    X509_free(ca);
    X509_free(server);
    X509_free(client);
    X509_free(rogue);
    X509_free(rogue_client);
    EVP_PKEY_free(ca_key);
    EVP_PKEY_free(server_key);
    EVP_PKEY_free(client_key);
    EVP_PKEY_free(rogue_key);
    EVP_PKEY_free(rogue_client_key);
}
