/* kw_net_pki.c: a small private PKI for kvwire deployments, tests and benchmarks: one CA, a server certificate for
 * the names given, and a client certificate for mutual TLS, all EC P-256 and SHA-256, written as PEM files.
 *
 * Not a general certificate tool (no CSRs, revocation or chains longer than one CA); a site with its own PKI points
 * the TLS configuration at its own files instead.
 */
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/kw_status.h"
#include "net/kw_net.h"

static int kw__pki_fail(const char *what) {
    char reason[256];
    ERR_error_string_n(ERR_peek_last_error(), reason, sizeof reason);
    ERR_clear_error();
    return kw_error_set(KW_E_NET_TLS, "PKI %s: %s", what, reason);
}

static int kw__pki_ext(X509 *x, X509 *issuer, int nid, const char *value) {
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (!e) return kw__pki_fail(value);
    const int ok = X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
    return ok == 1 ? 0 : kw__pki_fail("extension");
}

/* A certificate for key named cn, signed by issuer/issuer_key (NULL: self-signed). */
static int kw__pki_cert(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *issuer_key, bool ca, const char *san,
                        long serial, uint32_t days, X509 **out) {
    int rc = 0;
    X509 *x = X509_new();
    KW_CHECK_IF(!x, KW_E_NOMEM, "PKI: out of memory");
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600); /* tolerate clocks a little behind */
    X509_gmtime_adj(X509_getm_notAfter(x), 86400L * days);
    X509_set_pubkey(x, key);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name);
    X509 *signer = issuer ? issuer : x;
    KW_CHECK(kw__pki_ext(x, signer, NID_basic_constraints, ca ? "critical,CA:TRUE" : "critical,CA:FALSE"));
    KW_CHECK(kw__pki_ext(x, signer, NID_key_usage, ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature"));
    if (!ca) KW_CHECK(kw__pki_ext(x, signer, NID_ext_key_usage, "serverAuth,clientAuth"));
    KW_CHECK(kw__pki_ext(x, signer, NID_subject_key_identifier, "hash"));
    KW_CHECK(kw__pki_ext(x, signer, NID_authority_key_identifier, "keyid:always"));
    if (san) KW_CHECK(kw__pki_ext(x, signer, NID_subject_alt_name, san));
    KW_CHECK_IF(X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256()) <= 0, kw__pki_fail("sign"), "%s",
                kw_error_detail());
    *out = x;
    x = NULL;
out:
    X509_free(x);
    return rc;
}

/* Writes dir/name: a certificate, or a private key (mode 0600). */
static int kw__pki_write(const char *dir, const char *name, X509 *x, EVP_PKEY *key) {
    char path[4096];
    KW_RETURN_IF((size_t)snprintf(path, sizeof path, "%s/%s", dir, name) >= sizeof path, KW_E_INVALID_ARG,
                 "PKI: path too long");
    const int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, key ? 0600 : 0644);
    KW_RETURN_IF(fd < 0, KW_E_IO, "PKI: cannot create %s", path);
    FILE *f = fdopen(fd, "w");
    if (!f) {
        close(fd);
        KW_FAIL(KW_E_IO, "PKI: cannot write %s", path);
    }
    const int ok = x ? PEM_write_X509(f, x) : PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
    const int closed = fclose(f);
    KW_RETURN_IF(ok != 1 || closed != 0, KW_E_IO, "PKI: cannot write %s", path);
    return 0;
}

int kw_net_pki_generate(const char *dir, const kw_net_pki_options *opt) {
    KW_RETURN_IF(!dir, KW_E_INVALID_ARG, "PKI: no output folder");
    const char *san = opt && opt->server_san ? opt->server_san : "DNS:localhost,IP:127.0.0.1";
    const uint32_t days = opt && opt->days ? opt->days : 365;
    const char *ca_name = opt && opt->ca_name ? opt->ca_name : "kvwire CA";
    int rc = 0;
    EVP_PKEY *keys[3] = {NULL, NULL, NULL}; /* CA, server, client */
    X509 *certs[3] = {NULL, NULL, NULL};
    for (int i = 0; i < 3; ++i) {
        keys[i] = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
        KW_CHECK_IF(!keys[i], kw__pki_fail("key"), "%s", kw_error_detail());
    }
    /* distinct serials per run: two PKIs made in the same second must not share issuer+serial pairs */
    const long serial = (long)(getpid() & 0xffff) << 16 | (long)(time(NULL) & 0xffff);
    KW_CHECK(kw__pki_cert(keys[0], ca_name, NULL, NULL, true, NULL, serial, days, &certs[0]));
    KW_CHECK(kw__pki_cert(keys[1], "kvwire server", certs[0], keys[0], false, san, serial + 1, days, &certs[1]));
    KW_CHECK(kw__pki_cert(keys[2], "kvwire client", certs[0], keys[0], false, NULL, serial + 2, days, &certs[2]));
    KW_CHECK(kw__pki_write(dir, "ca.pem", certs[0], NULL));
    KW_CHECK(kw__pki_write(dir, "ca.key", NULL, keys[0]));
    KW_CHECK(kw__pki_write(dir, "server.pem", certs[1], NULL));
    KW_CHECK(kw__pki_write(dir, "server.key", NULL, keys[1]));
    KW_CHECK(kw__pki_write(dir, "client.pem", certs[2], NULL));
    KW_CHECK(kw__pki_write(dir, "client.key", NULL, keys[2]));
out:
    for (int i = 0; i < 3; ++i) {
        X509_free(certs[i]);
        EVP_PKEY_free(keys[i]);
    }
    return rc;
}
