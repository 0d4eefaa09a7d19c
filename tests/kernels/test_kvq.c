/* test_kvq.c: the paged quantized KV cache ops on the CPU backend (kw_op_kvq_*, kw_op_attention_kvq; format in
 * kernels/kw_kvq_format.h).
 *
 * Oracles: kw_ref_kvq_values (kernels/ref) says which values a cache holds after rows were appended; the rows the
 * CPU reads back (kvq_load) must be those bits, whatever cut the rows were appended in. Attention on the storage must
 * give the same bits as the CPU attention on an f32 cache of those values (on every ISA and thread count, decode and
 * prefill, with a mask and a sliding window) and be close to kw_ref_attention. Truncation, overwrites, the error of
 * the codecs on keys with outlier channels, the byte size and bad arguments are checked too.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_half.h"
#include "common/kw_status.h"
#include "kernels/kw_backend.h"
#include "kernels/ref/kw_ref.h"
#include "kw_cpu_test_util.h"

static uint64_t g_rng = 0x2545f4914f6cdd1dull;

/* Rows (n, H, D) like real keys: channel d scaled by a per-channel gain, channels 3 and 17 outliers (x30). */
static float *kvq_rows_outliers(int64_t n, int64_t H, int64_t D, float outlier) {
    float *x = malloc((size_t)(n * H * D) * sizeof(float));
    assert_non_null(x);
    for (int64_t i = 0; i < n * H * D; ++i) {
        const int64_t d = i % D;
        const float gain = (d == 3 || d == 17) ? outlier : 0.5f + (float)(d % 7) * 0.25f;
        x[i] = kw_rand_from(&g_rng) * gain;
    }
    return x;
}

static float *kvq_rows(int64_t n, int64_t H, int64_t D) {
    return kvq_rows_outliers(n, H, D, 30.0f);
}

/* Rows like real values: channel gains without outlier channels (KIVI: values have none, which is why they are
 * quantized per row; the real-model test measures the error on real values). */
static float *kvq_value_rows(int64_t n, int64_t H, int64_t D) {
    return kvq_rows_outliers(n, H, D, 1.0f);
}

typedef struct kvq_pair {
    kw_kvq_geom kg, vg;
    kw_tensor k, v;
} kvq_pair;

static kvq_pair kvq_alloc(kw_backend *b, enum kw_kvq_codec codec, int64_t H, int64_t cap, int64_t D, int32_t P) {
    kvq_pair s = {.kg = {codec, 1, H, cap, D, P}, .vg = {codec, 0, H, cap, D, P}};
    size_t kb, vb;
    assert_int_equal(kw_kvq_bytes(&s.kg, &kb), 0);
    assert_int_equal(kw_kvq_bytes(&s.vg, &vb), 0);
    assert_int_equal(kw_tensor_alloc(b, &s.k, KW_DTYPE_U8, 1, (int64_t[]){(int64_t)kb}), 0);
    assert_int_equal(kw_tensor_alloc(b, &s.v, KW_DTYPE_U8, 1, (int64_t[]){(int64_t)vb}), 0);
    return s;
}

static void kvq_free(kvq_pair *s) {
    kw_tensor_free(&s->k);
    kw_tensor_free(&s->v);
}

/* Stores rows [p0, p0 + n) of k and v (token-major (., H, D)) with n_rows stored before. */
static void kvq_store(kw_backend *b, kvq_pair *s, const float *k, const float *v, int64_t p0, int64_t n,
                      int64_t n_rows) {
    const int64_t H = s->kg.H, D = s->kg.D;
    kw_tensor tk = kw_wrap(b, KW_DTYPE_F32, 3, (int64_t[]){n, H, D}, k + p0 * H * D);
    kw_tensor tv = kw_wrap(b, KW_DTYPE_F32, 3, (int64_t[]){n, H, D}, v + p0 * H * D);
    assert_int_equal(kw_op_kvq_store(b, &s->k, &s->kg, &tk, p0, n_rows), 0);
    assert_int_equal(kw_op_kvq_store(b, &s->v, &s->vg, &tv, p0, n_rows), 0);
    assert_int_equal(kw_backend_synchronize(b), 0);
}

/* The held values of rows [0, n) as (H, cap, D) arrays kc and vc (rows past n left as they are). */
static void kvq_load_all(kw_backend *b, kvq_pair *s, int64_t n, float *kc, float *vc) {
    const int64_t H = s->kg.H, D = s->kg.D, cap = s->kg.cap;
    float *kr = malloc((size_t)(n * H * D) * sizeof(float)), *vr = malloc((size_t)(n * H * D) * sizeof(float));
    assert_true(kr && vr);
    kw_tensor tk = kw_wrap(b, KW_DTYPE_F32, 3, (int64_t[]){n, H, D}, kr);
    kw_tensor tv = kw_wrap(b, KW_DTYPE_F32, 3, (int64_t[]){n, H, D}, vr);
    assert_int_equal(kw_op_kvq_load(b, &tk, &s->k, &s->kg, 0, n), 0);
    assert_int_equal(kw_op_kvq_load(b, &tv, &s->v, &s->vg, 0, n), 0);
    assert_int_equal(kw_backend_synchronize(b), 0);
    for (int64_t r = 0; r < n; ++r)
        for (int64_t h = 0; h < H; ++h) {
            memcpy(kc + (h * cap + r) * D, kr + (r * H + h) * D, (size_t)D * sizeof(float));
            memcpy(vc + (h * cap + r) * D, vr + (r * H + h) * D, (size_t)D * sizeof(float));
        }
    free(kr);
    free(vr);
}

/* Compares rows [0, n) of two (H, cap, D) arrays bit for bit. */
static void kvq_same_rows(const float *a, const float *b, int64_t H, int64_t cap, int64_t D, int64_t n,
                          const char *what) {
    for (int64_t h = 0; h < H; ++h)
        kw_same_bits(a + h * cap * D, b + h * cap * D, n * D, what);
}

static const int64_t kvq_cuts[] = {1, 5, 16, 1, 37, 2, 64, 3, 1, 1, 90, 7};

/* Appends n rows in the cuts above and checks the held values against the oracle after every store. */
static void kvq_check_appends(enum kw_kvq_codec codec, int64_t H, int64_t cap, int64_t D, int32_t P, int64_t n) {
    kw_backend *b = kw_cpu("scalar", 2);
    kvq_pair s = kvq_alloc(b, codec, H, cap, D, P);
    float *k = kvq_rows(n, H, D), *v = kvq_value_rows(n, H, D);
    const size_t cells = (size_t)(H * cap * D);
    float *kc = calloc(cells, sizeof(float)), *vc = calloc(cells, sizeof(float));
    float *ko = calloc(cells, sizeof(float)), *vo = calloc(cells, sizeof(float));
    assert_true(kc && vc && ko && vo);
    int64_t done = 0;
    for (size_t c = 0; done < n; c = (c + 1) % (sizeof kvq_cuts / sizeof kvq_cuts[0])) {
        const int64_t m = kvq_cuts[c] < n - done ? kvq_cuts[c] : n - done;
        kvq_store(b, &s, k, v, done, m, done);
        done += m;
        kvq_load_all(b, &s, done, kc, vc);
        kw_ref_kvq_values(ko, &s.kg, k, done);
        kw_ref_kvq_values(vo, &s.vg, v, done);
        kvq_same_rows(kc, ko, H, cap, D, done, "keys vs oracle");
        kvq_same_rows(vc, vo, H, cap, D, done, "values vs oracle");
    }
    /* the codecs' error on these rows (outlier channels included) */
    double ek = 0, ev = 0, nk = 0, nv = 0;
    for (int64_t r = 0; r < n; ++r)
        for (int64_t h = 0; h < H; ++h)
            for (int64_t d = 0; d < D; ++d) {
                const double xk = k[(r * H + h) * D + d], xv = v[(r * H + h) * D + d];
                ek += (kc[(h * cap + r) * D + d] - xk) * (kc[(h * cap + r) * D + d] - xk), nk += xk * xk;
                ev += (vc[(h * cap + r) * D + d] - xv) * (vc[(h * cap + r) * D + d] - xv), nv += xv * xv;
            }
    const double limit = codec == KW_KVQ_INT8 ? 0.01 : codec == KW_KVQ_INT6 ? 0.04 : 0.2;
    print_message("relative error %s D=%lld: keys %.4f values %.4f\n",
                  codec == KW_KVQ_INT8   ? "int8"
                  : codec == KW_KVQ_INT6 ? "int6"
                                         : "int4",
                  (long long)D, sqrt(ek / nk), sqrt(ev / nv));
    assert_true(sqrt(ek / nk) < limit);
    assert_true(sqrt(ev / nv) < limit);
    free(k), free(v), free(kc), free(vc), free(ko), free(vo);
    kvq_free(&s);
    kw_backend_destroy(b);
}

static void test_kvq_appends_int8(void **state) {
    (void)state;
    kvq_check_appends(KW_KVQ_INT8, 2, 300, 64, 32, 250);
    kvq_check_appends(KW_KVQ_INT8, 1, 80, 256, 16, 80);
}

static void test_kvq_appends_int6(void **state) {
    (void)state;
    kvq_check_appends(KW_KVQ_INT6, 2, 300, 64, 64, 250);
    kvq_check_appends(KW_KVQ_INT6, 1, 80, 48, 16, 75);
}

static void test_kvq_appends_int4(void **state) {
    (void)state;
    kvq_check_appends(KW_KVQ_INT4, 2, 300, 64, 64, 250);
    kvq_check_appends(KW_KVQ_INT4, 1, 80, 32, 16, 71);
}

/* Truncating into a full page puts its first rows back into the tail (as bf16); appending again continues from them. */
static void test_kvq_truncate(void **state) {
    (void)state;
    const int64_t H = 2, cap = 128, D = 32, n = 100, cut = 70;
    const int32_t P = 32;
    kw_backend *b = kw_cpu("scalar", 1);
    kvq_pair s = kvq_alloc(b, KW_KVQ_INT8, H, cap, D, P);
    float *k = kvq_rows(n, H, D), *v = kvq_rows(n, H, D);
    const size_t cells = (size_t)(H * cap * D);
    float *kc = calloc(cells, sizeof(float)), *vc = calloc(cells, sizeof(float)), *ko = calloc(cells, sizeof(float));
    assert_true(kc && vc && ko);
    kvq_store(b, &s, k, v, 0, n, 0);
    kvq_load_all(b, &s, n, kc, vc);
    assert_int_equal(kw_op_kvq_truncate(b, &s.k, &s.kg, n, cut), 0);
    assert_int_equal(kw_op_kvq_truncate(b, &s.v, &s.vg, n, cut), 0);
    /* the rows the oracle sees: 64..69 now hold their dequantized values; 70..99 new rows */
    float *k2 = kvq_rows(n, H, D);
    memcpy(k2, k, (size_t)(64 * H * D) * sizeof(float));
    for (int64_t r = 64; r < cut; ++r)
        for (int64_t h = 0; h < H; ++h)
            memcpy(k2 + (r * H + h) * D, kc + (h * cap + r) * D, (size_t)D * sizeof(float));
    kvq_store(b, &s, k2, v, cut, n - cut, cut);
    kvq_load_all(b, &s, n, kc, vc);
    kw_ref_kvq_values(ko, &s.kg, k2, n);
    kvq_same_rows(kc, ko, H, cap, D, n, "keys after truncate and append");
    /* a truncated-to-zero storage starts afresh */
    assert_int_equal(kw_op_kvq_truncate(b, &s.k, &s.kg, n, 0), 0);
    kvq_store(b, &s, k, v, 0, 40, 0);
    kvq_load_all(b, &s, 40, kc, vc);
    kw_ref_kvq_values(ko, &s.kg, k, 40);
    kvq_same_rows(kc, ko, H, cap, D, 40, "keys after truncate to 0");
    free(k), free(k2), free(v), free(kc), free(vc), free(ko);
    kvq_free(&s);
    kw_backend_destroy(b);
}

/* Overwriting rows of full pages (the C2C fuser's store_rows) requantizes those pages: the new rows read back within
 * the int8 error, the untouched ones stay close to what they were. */
static void test_kvq_overwrite(void **state) {
    (void)state;
    const int64_t H = 1, cap = 128, D = 64, n = 100;
    kw_backend *b = kw_cpu("scalar", 1);
    kvq_pair s = kvq_alloc(b, KW_KVQ_INT8, H, cap, D, 32);
    float *k = kvq_rows(n, H, D), *v = kvq_rows(n, H, D), *k2 = kvq_rows(n, H, D);
    float *kc = calloc((size_t)(cap * D), sizeof(float)), *vc = calloc((size_t)(cap * D), sizeof(float));
    assert_true(kc && vc);
    kvq_store(b, &s, k, v, 0, n, 0);
    kvq_store(b, &s, k2, k2, 20, 50, n); /* rows 20..69: pages 0, 1 and 2 partly */
    kvq_load_all(b, &s, n, kc, vc);
    for (int64_t r = 0; r < n; ++r) {
        const float *want = (r >= 20 && r < 70) ? k2 : k;
        double e = 0, nn = 0;
        for (int64_t d = 0; d < D; ++d)
            e += (kc[r * D + d] - want[r * D + d]) * (kc[r * D + d] - want[r * D + d]),
                nn += want[r * D + d] * want[r * D + d];
        assert_true(sqrt(e / nn) < 0.02);
    }
    free(k), free(v), free(k2), free(kc), free(vc);
    kvq_free(&s);
    kw_backend_destroy(b);
}

/* attention_kvq: out (T, Hq, D) for queries at q_pos0.. over n_rows stored rows. */
static void kvq_attend(kw_backend *b, kvq_pair *s, float *out, const float *q, int64_t T, int64_t Hq,
                       const kw_attention_params *ap, int64_t n_rows) {
    const int64_t D = s->kg.D;
    kw_tensor tq = kw_wrap(b, KW_DTYPE_F32, 3, (int64_t[]){T, Hq, D}, q);
    kw_tensor to = kw_wrap(b, KW_DTYPE_F32, 3, (int64_t[]){T, Hq, D}, out);
    assert_int_equal(kw_op_attention_kvq(b, &to, &tq, &s->k, &s->kg, &s->v, &s->vg, ap, n_rows), 0);
    assert_int_equal(kw_backend_synchronize(b), 0);
}

/* Same bits as the f32 attention on the held values, on every ISA and thread count, and close to the oracle. */
static void kvq_check_attention(enum kw_kvq_codec codec, int64_t D, int64_t window, int masked, int64_t Hq) {
    const int64_t Hkv = 2, cap = 160, n = 150, T = 20;
    const int32_t P = 32;
    kw_backend *b0 = kw_cpu("scalar", 1);
    kvq_pair s0 = kvq_alloc(b0, codec, Hkv, cap, D, P);
    float *k = kvq_rows(n, Hkv, D), *v = kvq_value_rows(n, Hkv, D), *q = kvq_value_rows(T, Hq, D);
    const size_t cells = (size_t)(Hkv * cap * D), outs = (size_t)(T * Hq * D);
    float *kc = calloc(cells, sizeof(float)), *vc = calloc(cells, sizeof(float));
    float *want = calloc(outs, sizeof(float)), *got = calloc(outs, sizeof(float)), *ref = calloc(outs, sizeof(float));
    uint8_t mask[160];
    for (int i = 0; i < 160; ++i)
        mask[i] = masked ? (uint8_t)(i % 7 != 3) : 1;
    assert_true(kc && vc && want && got && ref);
    kvq_store(b0, &s0, k, v, 0, n, 0);
    kvq_load_all(b0, &s0, n, kc, vc);
    kw_tensor tmask = kw_wrap(b0, KW_DTYPE_U8, 1, (int64_t[]){cap}, mask);
    kw_attention_params ap = {
        .q_pos0 = n - T, .n_kv = n, .scale = 0.125f, .sliding_window = window, .kv_mask = masked ? &tmask : NULL};
    /* the f32 kernel on the held values */
    kw_tensor tk = kw_wrap(b0, KW_DTYPE_F32, 3, (int64_t[]){Hkv, cap, D}, kc);
    kw_tensor tv = kw_wrap(b0, KW_DTYPE_F32, 3, (int64_t[]){Hkv, cap, D}, vc);
    kw_tensor tq = kw_wrap(b0, KW_DTYPE_F32, 3, (int64_t[]){T, Hq, D}, q);
    kw_tensor tw = kw_wrap(b0, KW_DTYPE_F32, 3, (int64_t[]){T, Hq, D}, want);
    assert_int_equal(kw_op_attention(b0, &tw, &tq, &tk, &tv, &ap), 0);
    assert_int_equal(kw_backend_synchronize(b0), 0);
    kw_ref_attention(ref, q, kc, vc, KW_DTYPE_F32, masked ? mask : NULL, T, Hq, Hkv, cap, D, &ap);
    double worst = 0;
    for (size_t i = 0; i < outs; ++i)
        worst = fmax(worst, fabsf(want[i] - ref[i]) / (1.0f + fabsf(ref[i])));
    print_message("attention vs the oracle: worst error %.3g\n", worst);
    assert_true(worst < 1e-4);
    const char *isas[3];
    const int n_isas = kw_backend_cpu_isas(isas);
    for (int i = 0; i < n_isas; ++i)
        for (int threads = 1; threads <= 3; ++threads) {
            kw_backend *b = kw_cpu(isas[i], threads);
            kvq_pair s = kvq_alloc(b, codec, Hkv, cap, D, P);
            /* appended in another cut: the storage must hold the same values */
            kvq_store(b, &s, k, v, 0, 33, 0);
            kvq_store(b, &s, k, v, 33, n - 33, 33);
            kw_tensor tm = kw_wrap(b, KW_DTYPE_U8, 1, (int64_t[]){cap}, mask);
            kw_attention_params bp = ap;
            bp.kv_mask = masked ? &tm : NULL;
            memset(got, 0, outs * sizeof(float));
            kvq_attend(b, &s, got, q, T, Hq, &bp, n); /* prefill of T rows */
            kw_same_bits(got, want, (int64_t)outs, "prefill attention_kvq vs f32 attention");
            for (int64_t t = 0; t < T; t += 7) { /* decode, one row */
                kw_attention_params dp = bp;
                dp.q_pos0 = n - T + t;
                dp.n_kv = n - T + t + 1;
                kvq_attend(b, &s, got, q + t * Hq * D, 1, Hq, &dp, n);
                kw_same_bits(got, want + t * Hq * D, Hq * D, "decode attention_kvq vs f32 attention");
            }
            kvq_free(&s);
            kw_backend_destroy(b);
        }
    free(k), free(v), free(q), free(kc), free(vc), free(want), free(got), free(ref);
    kvq_free(&s0);
    kw_backend_destroy(b0);
}

static void test_kvq_attention(void **state) {
    (void)state;
    kvq_check_attention(KW_KVQ_INT8, 64, 0, 0, 6);
    kvq_check_attention(KW_KVQ_INT8, 256, 40, 1, 6);
    kvq_check_attention(KW_KVQ_INT4, 64, 0, 1, 6);
    kvq_check_attention(KW_KVQ_INT6, 64, 0, 1, 6);
    kvq_check_attention(KW_KVQ_INT6, 256, 33, 0, 6);
    kvq_check_attention(KW_KVQ_INT4, 80, 17, 0, 6);
    /* 1, 2, 4 and 5 query heads per kv head (the kernel handles up to four at a time) and 1..3 16-wide chunks past the
     * last 64 dims: every (heads, chunks) case of the value pass */
    kvq_check_attention(KW_KVQ_INT8, 48, 0, 1, 2);
    kvq_check_attention(KW_KVQ_INT8, 96, 0, 0, 4);
    kvq_check_attention(KW_KVQ_INT4, 112, 9, 1, 8);
    kvq_check_attention(KW_KVQ_INT6, 64, 0, 0, 10);
    kvq_check_attention(KW_KVQ_INT8, 16, 0, 1, 8);
}

/* The byte size: codes, one scale byte per (page, channel) of keys and per (row, 32 channels) of values, one bf16
 * tail page. */
static void test_kvq_bytes(void **state) {
    (void)state;
    size_t bytes;
    kw_kvq_geom g = {KW_KVQ_INT8, 1, 3, 4096, 64, 64};
    assert_int_equal(kw_kvq_bytes(&g, &bytes), 0);
    assert_int_equal(bytes, 3 * (4096 * 64 + 64 * 64 + 64 * 64 * 2));
    g.keys = 0;
    assert_int_equal(kw_kvq_bytes(&g, &bytes), 0);
    assert_int_equal(bytes, 3 * (4096 * 64 + 4096 * 2)); /* two 32-channel groups a row */
    g.codec = KW_KVQ_INT4;
    assert_int_equal(kw_kvq_bytes(&g, &bytes), 0);
    assert_int_equal(bytes, 3 * (4096 * 32 + 4096 * 2));
    g.codec = KW_KVQ_INT6;
    assert_int_equal(kw_kvq_bytes(&g, &bytes), 0);
    assert_int_equal(bytes, 3 * (4096 * 48 + 4096 * 2));
    /* bad geometries and arguments are refused with a status */
    g.D = 40;
    assert_int_equal(kw_kvq_bytes(&g, &bytes), KW_E_INVALID_ARG);
    g.D = 64, g.page_tokens = 8;
    assert_int_equal(kw_kvq_bytes(&g, &bytes), KW_E_INVALID_ARG);
    g.page_tokens = 64, g.codec = (enum kw_kvq_codec)7;
    assert_int_equal(kw_kvq_bytes(&g, &bytes), KW_E_INVALID_ARG);
    kw_backend *b = kw_cpu("scalar", 1);
    kvq_pair s = kvq_alloc(b, KW_KVQ_INT8, 1, 64, 16, 16);
    float rows[4 * 16] = {0};
    kw_tensor t = kw_wrap(b, KW_DTYPE_F32, 3, (int64_t[]){4, 1, 16}, rows);
    assert_int_equal(kw_op_kvq_store(b, &s.k, &s.kg, &t, 5, 4), KW_E_SHAPE);   /* a gap */
    assert_int_equal(kw_op_kvq_store(b, &s.k, &s.kg, &t, 61, 61), KW_E_SHAPE); /* past capacity */
    assert_int_equal(kw_op_kvq_load(b, &t, &s.k, &s.kg, 2, 4), KW_E_SHAPE);    /* past the stored rows */
    assert_int_equal(kw_op_kvq_store(b, &s.k, &s.vg, &t, 0, 0), KW_E_SHAPE);   /* storage of another geometry */
    assert_int_equal(kw_op_kvq_truncate(b, &s.k, &s.kg, 4, 5), KW_E_SHAPE);
    kvq_free(&s);
    kw_backend_destroy(b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kvq_bytes),        cmocka_unit_test(test_kvq_appends_int8),
        cmocka_unit_test(test_kvq_appends_int4), cmocka_unit_test(test_kvq_appends_int6),
        cmocka_unit_test(test_kvq_truncate),     cmocka_unit_test(test_kvq_overwrite),
        cmocka_unit_test(test_kvq_attention),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
