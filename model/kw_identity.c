/* kw_identity.c: SHA-256 digests of model and fuser files (see kw_identity.h), through OpenSSL's EVP interface. */
#include "model/kw_identity.h"

#include <dirent.h>
#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_file.h"
#include "common/kw_status.h"
#include "model/kw_gguf.h"

#define KW__IDENTITY_CHUNK (1u << 20) /* bytes read per call while hashing */

#define KW__IDENTITY_TO_END SIZE_MAX /* a length meaning: up to the end of the file */

/* Streams bytes [off, off + len) of path through ctx (already initialized); len KW__IDENTITY_TO_END: up to the end,
 * else the file must hold all len bytes. buf holds KW__IDENTITY_CHUNK bytes. */
static int kw__identity_update_file(EVP_MD_CTX *ctx, const char *path, size_t off, size_t len, unsigned char *buf) {
    FILE *f = fopen(path, "rb");
    KW_RETURN_IF(f == NULL, KW_E_IO, "identity: cannot open %s: %s", path, strerror(errno));
    int rc = 0;
    KW_CHECK_IF(off > 0 && fseeko(f, (off_t)off, SEEK_SET) != 0, KW_E_IO, "identity: cannot seek in %s", path);
    while (len > 0) {
        const size_t want = len < KW__IDENTITY_CHUNK ? len : KW__IDENTITY_CHUNK;
        const size_t n = fread(buf, 1, want, f);
        KW_CHECK_IF(n > 0 && EVP_DigestUpdate(ctx, buf, n) != 1, KW_E_INTERNAL, "identity: SHA-256 update failed");
        if (n < want) {
            KW_CHECK_IF(ferror(f), KW_E_IO, "identity: cannot read %s", path);
            KW_CHECK_IF(len != KW__IDENTITY_TO_END, KW_E_IO, "identity: %s ended early", path);
            break;
        }
        if (len != KW__IDENTITY_TO_END) len -= n;
    }
out:
    fclose(f);
    return rc;
}

/* SHA-256 of bytes [off, off + len) of each of the files paths[0..n), concatenated (len as kw__identity_update_file).
 */
static int kw__identity_files(char *const *paths, size_t n, size_t off, size_t len,
                              uint8_t out[KW_IDENTITY_DIGEST_BYTES]) {
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char *buf = malloc(KW__IDENTITY_CHUNK);
    int rc = 0;
    KW_CHECK_IF(ctx == NULL || buf == NULL, KW_E_NOMEM, "identity: out of memory");
    KW_CHECK_IF(EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1, KW_E_INTERNAL, "identity: SHA-256 unavailable");
    for (size_t i = 0; i < n; ++i)
        KW_CHECK(kw__identity_update_file(ctx, paths[i], off, len, buf));
    unsigned int out_len = 0;
    KW_CHECK_IF(EVP_DigestFinal_ex(ctx, out, &out_len) != 1 || out_len != KW_IDENTITY_DIGEST_BYTES, KW_E_INTERNAL,
                "identity: SHA-256 final failed");
out:
    EVP_MD_CTX_free(ctx);
    free(buf);
    return rc;
}

/* The digests of a GGUF file: what precedes the tensor data (configuration and tokenizer), then the tensor data. */
static int kw__identity_gguf(const char *path, kw_model_digest *out) {
    kw_gguf *g = NULL;
    KW_FORWARD(kw_gguf_open(path, &g));
    const size_t data = kw_gguf_data_offset(g), size = kw_gguf_file_size(g);
    kw_gguf_close(g);
    char *p = (char *)path;
    KW_FORWARD(kw__identity_files(&p, 1, 0, data, out->config_sha256));
    return kw__identity_files(&p, 1, data, size - data, out->weights_sha256);
}

int kw_identity_file(const char *path, uint8_t out[KW_IDENTITY_DIGEST_BYTES]) {
    KW_RETURN_IF(path == NULL || out == NULL, KW_E_INVALID_ARG, "identity: NULL argument");
    char *p = (char *)path;
    return kw__identity_files(&p, 1, 0, KW__IDENTITY_TO_END, out);
}

static int kw__identity_cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The regular files of dir whose name passes keep(), as joined paths sorted by name. *paths (and each entry) are the
 * caller's. */
static int kw__identity_list(const char *dir, int (*keep)(const char *name), char ***paths, size_t *n) {
    *paths = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    KW_RETURN_IF(d == NULL, KW_E_IO, "identity: cannot open folder %s: %s", dir, strerror(errno));
    char **v = NULL;
    size_t count = 0, cap = 0;
    int rc = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (!keep(e->d_name)) continue;
        char *p = kw_path_join(dir, e->d_name);
        KW_CHECK_IF(p == NULL, KW_E_NOMEM, "identity: out of memory");
        if (!kw_path_is_file(p)) {
            free(p);
            continue;
        }
        if (count == cap) {
            cap = cap ? 2 * cap : 16;
            char **nv = realloc(v, cap * sizeof *nv);
            if (nv == NULL) free(p);
            KW_CHECK_IF(nv == NULL, KW_E_NOMEM, "identity: out of memory");
            v = nv;
        }
        v[count++] = p;
    }
    qsort(v, count, sizeof *v, kw__identity_cmp); /* full paths share the folder prefix: name order */
    *paths = v;
    *n = count;
    v = NULL;
out:
    closedir(d);
    if (v) {
        for (size_t i = 0; i < count; ++i)
            free(v[i]);
        free(v);
    }
    return rc;
}

static void kw__identity_list_free(char **paths, size_t n) {
    for (size_t i = 0; i < n; ++i)
        free(paths[i]);
    free(paths);
}

static int kw__identity_ends_with(const char *s, const char *suffix) {
    const size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

static int kw__identity_is_weights(const char *name) {
    return kw__identity_ends_with(name, ".safetensors");
}

static int kw__identity_is_projector(const char *name) {
    return strncmp(name, "projector_", 10) == 0;
}

int kw_identity_model(const char *dir, kw_model_digest *out) {
    KW_RETURN_IF(dir == NULL || out == NULL, KW_E_INVALID_ARG, "identity: NULL argument");
    if (kw_path_is_file(dir) && kw_gguf_is_gguf(dir)) return kw__identity_gguf(dir, out);
    char *config = kw_path_join(dir, "config.json");
    KW_RETURN_IF(config == NULL, KW_E_NOMEM, "identity: out of memory");
    char **paths = NULL;
    size_t n = 0;
    int rc = 0;
    KW_CHECK_IF(!kw_path_is_file(config), KW_E_NOT_FOUND, "identity: %s has no config.json", dir);
    KW_CHECK(kw_identity_file(config, out->config_sha256));
    KW_CHECK(kw__identity_list(dir, kw__identity_is_weights, &paths, &n));
    KW_CHECK_IF(n == 0, KW_E_NOT_FOUND, "identity: %s has no .safetensors file", dir);
    KW_CHECK(kw__identity_files(paths, n, 0, KW__IDENTITY_TO_END, out->weights_sha256));
out:
    free(config);
    kw__identity_list_free(paths, n);
    return rc;
}

int kw_identity_fuser(const char *dir, uint8_t out[KW_IDENTITY_DIGEST_BYTES]) {
    KW_RETURN_IF(dir == NULL || out == NULL, KW_E_INVALID_ARG, "identity: NULL argument");
    char *final = kw_path_join(dir, "final");
    KW_RETURN_IF(final == NULL, KW_E_NOMEM, "identity: out of memory");
    char **paths = NULL;
    size_t n = 0;
    int rc = 0;
    KW_CHECK(kw__identity_list(kw_path_is_dir(final) ? final : dir, kw__identity_is_projector, &paths, &n));
    KW_CHECK_IF(n == 0, KW_E_NOT_FOUND, "identity: %s has no projector files", dir);
    KW_CHECK(kw__identity_files(paths, n, 0, KW__IDENTITY_TO_END, out));
out:
    free(final);
    kw__identity_list_free(paths, n);
    return rc;
}

void kw_identity_hex(const uint8_t digest[KW_IDENTITY_DIGEST_BYTES], char out[2 * KW_IDENTITY_DIGEST_BYTES + 1]) {
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < KW_IDENTITY_DIGEST_BYTES; ++i) {
        out[2 * i] = hex[digest[i] >> 4];
        out[2 * i + 1] = hex[digest[i] & 15];
    }
    out[2 * KW_IDENTITY_DIGEST_BYTES] = '\0';
}
