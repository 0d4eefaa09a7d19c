/* kw_kvq_parity.c: the quantized KV cache of a backend against the CPU backend's (see kw_kvq_parity.h). */
#include "kw_kvq_parity.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_status.h"

/* One backend's pair of storages (keys, values) of one geometry. */
typedef struct kvq_side {
    kw_backend *b;
    kw_tensor k, v;
} kvq_side;

typedef struct kvq_run {
    kvq_side cpu, dev;
    kw_kvq_geom kg, vg;
    size_t failed, *run;
    const char *codec;
} kvq_run;

#define KVQ_H   2
#define KVQ_HQ  4
#define KVQ_D   64
#define KVQ_P   32
#define KVQ_CAP 640
#define KVQ_N   560 /* > 2 * 256 rows: decode over all of them takes the split-K kernels */

static void kvq_die(const char *what, int rc) {
    fprintf(stderr, "kvq parity setup: %s: %s (%s)\n", what, kw_status_name(rc), kw_error_detail());
    abort();
}

static void kvq_expect(kvq_run *r, int ok, const char *what, long long at) {
    ++*r->run;
    if (!ok) {
        fprintf(stderr, "FAIL kvq %s: %s (at %lld)\n", r->codec, what, at);
        ++r->failed;
    }
}

/* A tensor on b holding host (NULL: zeros). */
static void kvq_put(kw_backend *b, kw_tensor *t, enum kw_dtype dtype, int32_t ndim, const int64_t *ne,
                    const void *host) {
    int rc = kw_tensor_alloc(b, t, dtype, ndim, ne);
    if (rc == 0) rc = host ? kw_backend_upload(b, t, 0, host, kw_tensor_nbytes(t)) : kw_backend_memset_zero(b, t);
    if (rc != 0) kvq_die("tensor", rc);
}

/* t's bytes in a new host buffer (synchronized). */
static void *kvq_get(kw_backend *b, const kw_tensor *t) {
    void *p = malloc(kw_tensor_nbytes(t));
    if (!p) kvq_die("malloc", KW_E_NOMEM);
    int rc = kw_backend_download(b, p, t, 0, kw_tensor_nbytes(t));
    if (rc == 0) rc = kw_backend_synchronize(b);
    if (rc != 0) kvq_die("download", rc);
    return p;
}

/* Rows (n, H, D) like real keys: a per-channel gain, channels 3 and 17 outliers; values without outliers. */
static float *kvq_rows(int64_t n, float outlier, uint64_t seed) {
    float *x = malloc((size_t)(n * KVQ_H * KVQ_D) * sizeof(float));
    if (!x) kvq_die("malloc", KW_E_NOMEM);
    for (int64_t i = 0; i < n * KVQ_H * KVQ_D; ++i) {
        seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
        const int64_t d = i % KVQ_D;
        const float u = (float)((double)(seed >> 11) / 9007199254740992.0 * 2.0 - 1.0);
        x[i] = u * (0.5f + (float)(d % 5) * 0.25f) * (d == 3 || d == 17 ? outlier : 1.0f);
    }
    return x;
}

/* Both storages of both sides byte for byte. */
static void kvq_same_bytes(kvq_run *r, const char *what, long long at) {
    const kw_tensor *c[2] = {&r->cpu.k, &r->cpu.v}, *g[2] = {&r->dev.k, &r->dev.v};
    for (int i = 0; i < 2; ++i) {
        unsigned char *a = kvq_get(r->cpu.b, c[i]), *b = kvq_get(r->dev.b, g[i]);
        const size_t n = kw_tensor_nbytes(c[i]);
        size_t first = n;
        for (size_t j = 0; j < n && first == n; ++j)
            if (a[j] != b[j]) first = j;
        if (first < n)
            fprintf(stderr, "  %s storage: byte %zu of %zu differs (cpu 0x%02x, dev 0x%02x)\n", i ? "value" : "key",
                    first, n, a[first], b[first]);
        kvq_expect(r, first == n, what, at);
        free(a), free(b);
    }
}

/* kvq_store of rows [p0, p0 + n) of k and v on both sides, n_rows stored before; then the bytes. */
static void kvq_store(kvq_run *r, const float *k, const float *v, int64_t p0, int64_t n, int64_t n_rows) {
    kvq_side *s[2] = {&r->cpu, &r->dev};
    for (int i = 0; i < 2; ++i) {
        kw_tensor tk, tv;
        kvq_put(s[i]->b, &tk, KW_DTYPE_F32, 3, (int64_t[]){n, KVQ_H, KVQ_D}, k + p0 * KVQ_H * KVQ_D);
        kvq_put(s[i]->b, &tv, KW_DTYPE_F32, 3, (int64_t[]){n, KVQ_H, KVQ_D}, v + p0 * KVQ_H * KVQ_D);
        int rc = kw_op_kvq_store(s[i]->b, &s[i]->k, &r->kg, &tk, p0, n_rows);
        if (rc == 0) rc = kw_op_kvq_store(s[i]->b, &s[i]->v, &r->vg, &tv, p0, n_rows);
        if (rc == 0) rc = kw_backend_synchronize(s[i]->b);
        if (rc != 0) kvq_die("kvq_store", rc);
        kw_tensor_free(&tk), kw_tensor_free(&tv);
    }
    kvq_same_bytes(r, "stored bytes equal the cpu's", (long long)(p0 + n));
}

static void kvq_truncate(kvq_run *r, int64_t n_rows, int64_t new_rows) {
    kvq_side *s[2] = {&r->cpu, &r->dev};
    for (int i = 0; i < 2; ++i) {
        int rc = kw_op_kvq_truncate(s[i]->b, &s[i]->k, &r->kg, n_rows, new_rows);
        if (rc == 0) rc = kw_op_kvq_truncate(s[i]->b, &s[i]->v, &r->vg, n_rows, new_rows);
        if (rc != 0) kvq_die("kvq_truncate", rc);
    }
    kvq_same_bytes(r, "bytes after truncate equal the cpu's", (long long)new_rows);
}

/* kvq_load of rows [0, n) of one storage of side s, (n, H, D) on the host. */
static float *kvq_load(kvq_side *s, const kw_tensor *store, const kw_kvq_geom *g, int64_t n) {
    kw_tensor t;
    kvq_put(s->b, &t, KW_DTYPE_F32, 3, (int64_t[]){n, KVQ_H, KVQ_D}, NULL);
    const int rc = kw_op_kvq_load(s->b, &t, store, g, 0, n);
    if (rc != 0) kvq_die("kvq_load", rc);
    float *x = kvq_get(s->b, &t);
    kw_tensor_free(&t);
    return x;
}

static int kvq_same_floats(const float *a, const float *b, int64_t n, long long *at) {
    for (int64_t i = 0; i < n; ++i)
        if (memcmp(&a[i], &b[i], sizeof(float)) != 0) {
            *at = (long long)i;
            return 0;
        }
    return 1;
}

/* attention_kvq of q (T, Hq, D) on side s. */
static float *kvq_attend(kvq_side *s, const kw_kvq_geom *kg, const kw_kvq_geom *vg, const float *q, int64_t T,
                         const kw_attention_params *ap, const uint8_t *mask, int64_t n_rows) {
    kw_tensor tq, to, tm;
    kvq_put(s->b, &tq, KW_DTYPE_F32, 3, (int64_t[]){T, KVQ_HQ, KVQ_D}, q);
    kvq_put(s->b, &to, KW_DTYPE_F32, 3, (int64_t[]){T, KVQ_HQ, KVQ_D}, NULL);
    kw_attention_params p = *ap;
    if (mask) {
        kvq_put(s->b, &tm, KW_DTYPE_U8, 1, (int64_t[]){KVQ_CAP}, mask);
        p.kv_mask = &tm;
    }
    const int rc = kw_op_attention_kvq(s->b, &to, &tq, &s->k, kg, &s->v, vg, &p, n_rows);
    if (rc != 0) kvq_die("attention_kvq", rc);
    float *out = kvq_get(s->b, &to);
    kw_tensor_free(&tq), kw_tensor_free(&to);
    if (mask) kw_tensor_free(&tm);
    return out;
}

/* kw_op_attention on side s over f32 caches (H, cap, D) holding kc / vc (rows (n, H, D)). */
static float *kvq_attend_dense(kvq_side *s, const float *kr, const float *vr, int64_t n, const float *q, int64_t T,
                               const kw_attention_params *ap, const uint8_t *mask) {
    float *kc = calloc((size_t)(KVQ_H * KVQ_CAP * KVQ_D), sizeof(float));
    float *vc = calloc((size_t)(KVQ_H * KVQ_CAP * KVQ_D), sizeof(float));
    if (!kc || !vc) kvq_die("malloc", KW_E_NOMEM);
    for (int64_t r = 0; r < n; ++r)
        for (int64_t h = 0; h < KVQ_H; ++h) {
            memcpy(kc + (h * KVQ_CAP + r) * KVQ_D, kr + (r * KVQ_H + h) * KVQ_D, KVQ_D * sizeof(float));
            memcpy(vc + (h * KVQ_CAP + r) * KVQ_D, vr + (r * KVQ_H + h) * KVQ_D, KVQ_D * sizeof(float));
        }
    kw_tensor tq, to, tk, tv, tm;
    kvq_put(s->b, &tq, KW_DTYPE_F32, 3, (int64_t[]){T, KVQ_HQ, KVQ_D}, q);
    kvq_put(s->b, &to, KW_DTYPE_F32, 3, (int64_t[]){T, KVQ_HQ, KVQ_D}, NULL);
    kvq_put(s->b, &tk, KW_DTYPE_F32, 3, (int64_t[]){KVQ_H, KVQ_CAP, KVQ_D}, kc);
    kvq_put(s->b, &tv, KW_DTYPE_F32, 3, (int64_t[]){KVQ_H, KVQ_CAP, KVQ_D}, vc);
    kw_attention_params p = *ap;
    if (mask) {
        kvq_put(s->b, &tm, KW_DTYPE_U8, 1, (int64_t[]){KVQ_CAP}, mask);
        p.kv_mask = &tm;
    }
    const int rc = kw_op_attention(s->b, &to, &tq, &tk, &tv, &p);
    if (rc != 0) kvq_die("attention", rc);
    float *out = kvq_get(s->b, &to);
    kw_tensor_free(&tq), kw_tensor_free(&to), kw_tensor_free(&tk), kw_tensor_free(&tv);
    if (mask) kw_tensor_free(&tm);
    free(kc), free(vc);
    return out;
}

/* Attention of T queries at q_pos0 over n_kv rows of n stored: same bits as the dense kernel on backend, close to
 * the cpu's. */
static void kvq_check_attention(kvq_run *r, const float *kr, const float *vr, int64_t n, int64_t T, int64_t q_pos0,
                                int64_t window, const uint8_t *mask, const char *what) {
    const kw_attention_params ap = {
        .q_pos0 = q_pos0, .n_kv = q_pos0 + T, .scale = 0.125f, .sliding_window = window, .kv_mask = NULL};
    float *q = kvq_rows(T * KVQ_HQ / KVQ_H, 1.0f, 0x9e3779b97f4a7c15ull + (uint64_t)q_pos0);
    float *got = kvq_attend(&r->dev, &r->kg, &r->vg, q, T, &ap, mask, n);
    float *dense = kvq_attend_dense(&r->dev, kr, vr, n, q, T, &ap, mask);
    float *cpu = kvq_attend(&r->cpu, &r->kg, &r->vg, q, T, &ap, mask, n);
    long long at = -1;
    char msg[160];
    snprintf(msg, sizeof msg, "%s: attention_kvq has the bits of the dense attention on the held values", what);
    const int same = kvq_same_floats(got, dense, T * KVQ_HQ * KVQ_D, &at);
    kvq_expect(r, same, msg, at);
    double worst = 0;
    for (int64_t i = 0; i < T * KVQ_HQ * KVQ_D; ++i)
        worst = fmax(worst, fabs((double)got[i] - (double)cpu[i]) / (1.0 + fabs((double)cpu[i])));
    snprintf(msg, sizeof msg, "%s: attention_kvq within 1e-4 of the cpu's (worst %.3g)", what, worst);
    kvq_expect(r, worst <= 1e-4, msg, -1);
    free(q), free(got), free(dense), free(cpu);
}

static void kvq_side_alloc(kvq_run *r, kvq_side *s, kw_backend *b) {
    size_t kb = 0, vb = 0;
    int rc = kw_kvq_bytes(&r->kg, &kb);
    if (rc == 0) rc = kw_kvq_bytes(&r->vg, &vb);
    if (rc != 0) kvq_die("kvq_bytes", rc);
    s->b = b;
    kvq_put(b, &s->k, KW_DTYPE_U8, 1, (int64_t[]){(int64_t)kb}, NULL);
    kvq_put(b, &s->v, KW_DTYPE_U8, 1, (int64_t[]){(int64_t)vb}, NULL);
}

static const int64_t kvq_cuts[] = {1, 5, 16, 1, 37, 2, 64, 3, 1, 1, 90, 7};

static size_t kvq_codec(kw_backend *dev, kw_backend *cpu, enum kw_kvq_codec codec, const char *name, size_t *run) {
    kvq_run r = {.kg = {codec, 1, KVQ_H, KVQ_CAP, KVQ_D, KVQ_P}, .vg = {codec, 0, KVQ_H, KVQ_CAP, KVQ_D, KVQ_P}};
    r.run = run, r.codec = name;
    kvq_side_alloc(&r, &r.cpu, cpu);
    kvq_side_alloc(&r, &r.dev, dev);
    float *k = kvq_rows(KVQ_N, 30.0f, 0x2545f4914f6cdd1dull + (uint64_t)codec), *v = kvq_rows(KVQ_N, 1.0f, 77);
    float *k2 = kvq_rows(KVQ_N, 30.0f, 5), *v2 = kvq_rows(KVQ_N, 1.0f, 6);
    /* appends in uneven cuts: decode-like single rows, pages filling mid-call, several pages at once */
    int64_t done = 0;
    for (size_t c = 0; done < 300; c = (c + 1) % (sizeof kvq_cuts / sizeof kvq_cuts[0])) {
        const int64_t m = kvq_cuts[c] < 300 - done ? kvq_cuts[c] : 300 - done;
        kvq_store(&r, k, v, done, m, done);
        done += m;
    }
    /* overwrite rows 20..69 (full pages 0..2 partly, C2C's store_rows), then truncate into full page 7 and append */
    kvq_store(&r, k2, v2, 20, 50, done);
    kvq_truncate(&r, done, 236);
    kvq_store(&r, k, v, 236, 1, 236);
    kvq_store(&r, k, v, 237, KVQ_N - 237 - 3, 237);
    for (int64_t p = KVQ_N - 3; p < KVQ_N; ++p)
        kvq_store(&r, k, v, p, 1, p);
    /* loads */
    float *kc = kvq_load(&r.cpu, &r.cpu.k, &r.kg, KVQ_N), *kd = kvq_load(&r.dev, &r.dev.k, &r.kg, KVQ_N);
    float *vc = kvq_load(&r.cpu, &r.cpu.v, &r.vg, KVQ_N), *vd = kvq_load(&r.dev, &r.dev.v, &r.vg, KVQ_N);
    long long at = -1;
    int same = kvq_same_floats(kc, kd, KVQ_N * KVQ_H * KVQ_D, &at);
    kvq_expect(&r, same, "loaded keys equal the cpu's", at);
    same = kvq_same_floats(vc, vd, KVQ_N * KVQ_H * KVQ_D, &at);
    kvq_expect(&r, same, "loaded values equal the cpu's", at);
    /* attention: prefill with a mask and a window, decode over every row (split-K), decode with the tail page */
    uint8_t mask[KVQ_CAP];
    for (int i = 0; i < KVQ_CAP; ++i)
        mask[i] = (uint8_t)(i % 7 != 3);
    kvq_check_attention(&r, kd, vd, KVQ_N, 6, 200, 50, mask, "prefill, mask and window");
    kvq_check_attention(&r, kd, vd, KVQ_N, 1, KVQ_N - 1, 0, NULL, "decode, split-K");
    kvq_check_attention(&r, kd, vd, KVQ_N, 1, 100, 0, mask, "decode, short");
    free(k), free(v), free(k2), free(v2), free(kc), free(kd), free(vc), free(vd);
    kw_tensor_free(&r.cpu.k), kw_tensor_free(&r.cpu.v), kw_tensor_free(&r.dev.k), kw_tensor_free(&r.dev.v);
    return r.failed;
}

int kw_kvq_parity(kw_backend *backend, size_t *run) {
    kw_backend *cpu = NULL;
    const int rc = kw_backend_create_cpu(1, &cpu);
    if (rc != 0) kvq_die("cpu backend", rc);
    size_t failed = kvq_codec(backend, cpu, KW_KVQ_INT8, "int8", run);
    failed += kvq_codec(backend, cpu, KW_KVQ_INT6, "int6", run);
    failed += kvq_codec(backend, cpu, KW_KVQ_INT4, "int4", run);
    kw_backend_destroy(cpu);
    return (int)failed;
}
