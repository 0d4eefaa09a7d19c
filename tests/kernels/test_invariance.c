/* test_invariance.c: the CPU backend gives the same bits however it runs. For matmul (row-major and packed weights,
 * every weight dtype, with and without bias), attention (f32 and bf16 caches, GQA, masks, windows, head dims that are
 * not multiples of 16), the activations, softmax, RMSNorm, RoPE and get_rows, every ISA this machine has (scalar,
 * AVX2, AVX-512; KW_CPU_ISA lowers the choice), 1, 2 and 3 threads, and every way of cutting the rows of a call (all at
 * once, one by one, uneven sections) produce bit-identical outputs; so do the bulk exp/erf/GELU/sigmoid/SiLU over
 * sweeps of the whole float range. NaN outputs compare equal to NaN (payloads are not part of the contract).
 *
 * On an AVX2 machine this holds the AVX2 kernels to the scalar ones; on an AVX-512 machine all three. The scalar path
 * is the definition (fmaf chains, kw_cpu_simd.h's fixed tree), so a machine of either kind checks the same thing.
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
#include "kernels/cpu/kw_cpu.h"
#include "kernels/kw_backend.h"
#include "kernels/kw_op_math.h"
#include "kw_cpu_test_util.h"

/* ------------------------------------------------------------------------------------------------------------
 * Helpers
 */

static uint64_t g_rng = 88172645463325252ull;

static float kw_rand(void) {
    return kw_rand_from(&g_rng);
}

/* n random values of dtype (f32 values in [-amp, amp), bf16/f16 the same rounded). */
static void *kw_rand_array(enum kw_dtype dtype, int64_t n, float amp) {
    void *p = malloc((size_t)n * kw_dtype_size(dtype) + 1);
    assert_non_null(p);
    for (int64_t i = 0; i < n; ++i) {
        kw_opm_store(p, dtype, i, kw_rand() * amp);
    }
    return p;
}

/* ------------------------------------------------------------------------------------------------------------
 * matmul
 */

typedef struct kw_mm_case {
    int64_t M, N, K;
    enum kw_dtype wdt;
    int bias; /* 0 none, else 1 + bias dtype */
} kw_mm_case;

static const kw_mm_case kw_mm_cases[] = {{1, 1, 1, KW_DTYPE_F32, 0},
                                         {7, 37, 83, KW_DTYPE_BF16, 0},
                                         {13, 64, 64, KW_DTYPE_F32, 1 + KW_DTYPE_F32},
                                         {9, 65, 17, KW_DTYPE_F16, 0},
                                         {50, 130, 100, KW_DTYPE_BF16, 1 + KW_DTYPE_BF16},
                                         {3, 200, 33, KW_DTYPE_F32, 0},
                                         {70, 20, 129, KW_DTYPE_F16, 1 + KW_DTYPE_F16},
                                         {2, 300, 256, KW_DTYPE_BF16, 0}};

/* y (M, N) of rows [m0, m1) of x computed in one call on b; w packed or not. */
static void kw_mm(kw_backend *b, float *y, const float *x, const void *w, const void *bias, const kw_mm_case *c,
                  int pack, int64_t m0, int64_t m1) {
    const int64_t M = m1 - m0;
    kw_tensor tx = kw_wrap(b, KW_DTYPE_F32, 2, (int64_t[]){M, c->K}, x + m0 * c->K);
    kw_tensor tw = kw_wrap(b, c->wdt, 2, (int64_t[]){c->N, c->K}, w), tp = {0}, tb = {0};
    kw_tensor ty = kw_wrap(b, KW_DTYPE_F32, 2, (int64_t[]){M, c->N}, y + m0 * c->N);
    if (pack) assert_int_equal(kw_tensor_pack_weight(b, &tw, &tp), 0);
    if (c->bias) tb = kw_wrap(b, (enum kw_dtype)(c->bias - 1), 1, (int64_t[]){c->N}, bias);
    assert_int_equal(kw_op_matmul(b, &ty, &tx, pack ? &tp : &tw, c->bias ? &tb : NULL), 0);
    assert_int_equal(kw_backend_synchronize(b), 0);
    kw_tensor_free(&tp);
}

static void test_matmul_same_bits_everywhere(void **state) {
    (void)state;
    const char *isas[3];
    const int n_isa = kw_backend_cpu_isas(isas);
    for (size_t ci = 0; ci < sizeof kw_mm_cases / sizeof kw_mm_cases[0]; ++ci) {
        const kw_mm_case *c = &kw_mm_cases[ci];
        float *x = kw_rand_array(KW_DTYPE_F32, c->M * c->K, 2.0f);
        void *w = kw_rand_array(c->wdt, c->N * c->K, 1.0f);
        void *bias = c->bias ? kw_rand_array((enum kw_dtype)(c->bias - 1), c->N, 1.0f) : NULL;
        const size_t ybytes = (size_t)(c->M * c->N) * sizeof(float);
        float *want = malloc(ybytes), *got = malloc(ybytes);
        assert_true(want && got);
        kw_backend *ref = kw_cpu("scalar", 1);
        kw_mm(ref, want, x, w, bias, c, 0, 0, c->M);
        kw_backend_destroy(ref);
        char what[160];
        for (int i = 0; i < n_isa; ++i) {
            for (int threads = 1; threads <= 3; ++threads) {
                kw_backend *b = kw_cpu(isas[i], threads);
                for (int pack = 0; pack <= 1; ++pack) {
                    snprintf(what, sizeof what, "matmul M=%lld N=%lld K=%lld %s, %s, %d threads, %s, all rows",
                             (long long)c->M, (long long)c->N, (long long)c->K, kw_dtype_name(c->wdt), isas[i], threads,
                             pack ? "packed" : "row-major");
                    memset(got, 0xff, ybytes);
                    kw_mm(b, got, x, w, bias, c, pack, 0, c->M);
                    kw_same_bits(got, want, c->M * c->N, what);
                    /* one row at a time (decode) */
                    memset(got, 0xff, ybytes);
                    for (int64_t m = 0; m < c->M; ++m)
                        kw_mm(b, got, x, w, bias, c, pack, m, m + 1);
                    kw_same_bits(got, want, c->M * c->N, "matmul, row by row");
                    /* uneven sections: 1, 2, 3, 5, 8, ... rows */
                    memset(got, 0xff, ybytes);
                    int64_t step = 1, prev = 1;
                    for (int64_t m = 0; m < c->M;) {
                        const int64_t m1 = m + step < c->M ? m + step : c->M;
                        kw_mm(b, got, x, w, bias, c, pack, m, m1);
                        m = m1;
                        const int64_t next = step + prev;
                        prev = step, step = next;
                    }
                    kw_same_bits(got, want, c->M * c->N, "matmul, in sections");
                }
                kw_backend_destroy(b);
            }
        }
        free(x), free(w), free(bias), free(want), free(got);
    }
}

/* ------------------------------------------------------------------------------------------------------------
 * attention
 */

typedef struct kw_attn_case {
    int64_t T, Hq, Hkv, D, q_pos0, extra, window;
    enum kw_dtype dt;
    int mask;
} kw_attn_case;

static const kw_attn_case kw_attn_cases[] = {{9, 4, 2, 64, 0, 0, 0, KW_DTYPE_BF16, 0},
                                             {7, 6, 3, 24, 5, 2, 0, KW_DTYPE_F32, 1},
                                             {12, 8, 1, 128, 3, 0, 5, KW_DTYPE_BF16, 1},
                                             {5, 2, 2, 8, 40, 3, 0, KW_DTYPE_F32, 0},
                                             {16, 16, 8, 48, 0, 0, 0, KW_DTYPE_F32, 0},
                                             {3, 4, 4, 33, 20, 0, 0, KW_DTYPE_BF16, 1},
                                             /* prefill calls long enough for AVX-512's score blocks (groups of 2, 3 and
                                              * 4 heads; D 64, 128 and 256), and their decode twins */
                                             {40, 4, 2, 128, 10, 0, 0, KW_DTYPE_BF16, 1},
                                             {24, 6, 2, 64, 30, 3, 0, KW_DTYPE_F32, 0},
                                             {20, 8, 2, 256, 0, 0, 0, KW_DTYPE_BF16, 0},
                                             {36, 8, 2, 64, 4, 0, 0, KW_DTYPE_F32, 1}};

/* out (T, Hq, D) for queries [t0, t1) of the case, each call seeing the cache rows the full call would see. */
static void kw_attn(kw_backend *b, float *out, const float *q, const void *kc, const void *vc, const uint8_t *mask,
                    const kw_attn_case *c, int64_t cap, int64_t t0, int64_t t1) {
    const int64_t T = t1 - t0, n_kv = c->q_pos0 + c->T + c->extra;
    kw_tensor tq = kw_wrap(b, KW_DTYPE_F32, 3, (int64_t[]){T, c->Hq, c->D}, q + t0 * c->Hq * c->D);
    kw_tensor to = kw_wrap(b, KW_DTYPE_F32, 3, (int64_t[]){T, c->Hq, c->D}, out + t0 * c->Hq * c->D);
    kw_tensor tk = kw_wrap(b, c->dt, 3, (int64_t[]){c->Hkv, cap, c->D}, kc);
    kw_tensor tv = kw_wrap(b, c->dt, 3, (int64_t[]){c->Hkv, cap, c->D}, vc);
    kw_tensor tm = {0};
    if (mask) tm = kw_wrap(b, KW_DTYPE_U8, 1, (int64_t[]){cap}, mask);
    const kw_attention_params ap = {.q_pos0 = c->q_pos0 + t0,
                                    .n_kv = n_kv,
                                    .scale = 1.0f / sqrtf((float)c->D),
                                    .sliding_window = c->window,
                                    .kv_mask = mask ? &tm : NULL};
    assert_int_equal(kw_op_attention(b, &to, &tq, &tk, &tv, &ap), 0);
    assert_int_equal(kw_backend_synchronize(b), 0);
}

static void test_attention_same_bits_everywhere(void **state) {
    (void)state;
    const char *isas[3];
    const int n_isa = kw_backend_cpu_isas(isas);
    for (size_t ci = 0; ci < sizeof kw_attn_cases / sizeof kw_attn_cases[0]; ++ci) {
        const kw_attn_case *c = &kw_attn_cases[ci];
        const int64_t cap = c->q_pos0 + c->T + c->extra + 2, nq = c->T * c->Hq * c->D;
        float *q = kw_rand_array(KW_DTYPE_F32, nq, 3.0f);
        void *kc = kw_rand_array(c->dt, c->Hkv * cap * c->D, 2.0f),
             *vc = kw_rand_array(c->dt, c->Hkv * cap * c->D, 1.0f);
        uint8_t *mask = NULL;
        if (c->mask) {
            mask = malloc((size_t)cap);
            assert_non_null(mask);
            for (int64_t j = 0; j < cap; ++j)
                mask[j] = (uint8_t)(j % 3 != 1);
        }
        float *want = malloc((size_t)nq * sizeof(float)), *got = malloc((size_t)nq * sizeof(float));
        assert_true(want && got);
        kw_backend *ref = kw_cpu("scalar", 1);
        kw_attn(ref, want, q, kc, vc, mask, c, cap, 0, c->T);
        kw_backend_destroy(ref);
        for (int i = 0; i < n_isa; ++i) {
            for (int threads = 1; threads <= 3; ++threads) {
                kw_backend *b = kw_cpu(isas[i], threads);
                char what[160];
                snprintf(what, sizeof what, "attention case %zu, %s, %d threads", ci, isas[i], threads);
                memset(got, 0xff, (size_t)nq * sizeof(float));
                kw_attn(b, got, q, kc, vc, mask, c, cap, 0, c->T);
                kw_same_bits(got, want, nq, what);
                memset(got, 0xff, (size_t)nq * sizeof(float));
                for (int64_t t = 0; t < c->T; ++t) /* one query at a time, as decode does */
                    kw_attn(b, got, q, kc, vc, mask, c, cap, t, t + 1);
                kw_same_bits(got, want, nq, "attention, one query at a time");
                memset(got, 0xff, (size_t)nq * sizeof(float));
                kw_attn(b, got, q, kc, vc, mask, c, cap, 0, c->T / 2);
                kw_attn(b, got, q, kc, vc, mask, c, cap, c->T / 2, c->T);
                kw_same_bits(got, want, nq, "attention, in two sections");
                kw_backend_destroy(b);
            }
        }
        free(q), free(kc), free(vc), free(mask), free(want), free(got);
    }
}
/* The heads of a GQA group share each value row's loads (kw_attn_out_fixed), yet every head keeps its own chain: a
 * group of 2 query heads gives the bits of the same heads each with its own copy of the kv head (group 1), also when
 * one head's weights underflow to 0 on rows where the other's do not (head 0 sees only row 3: its other weights are
 * exp(-2000) = 0, so head 1 must still add those rows, and an infinite value there must not reach head 0 as 0 * inf);
 * and a masked row whose K and V hold NaN changes nothing. */
static void test_attention_group_heads_own_chains(void **state) {
    (void)state;
    enum { TMAX = KW_ATTN_PREFETCH_MAX_T + 2 };
    const int64_t D = 128, Hq = 4, cap = 24, q_pos0 = 20, n_kv = 21;
    float *q = kw_rand_array(KW_DTYPE_F32, Hq * D, 1.0f);
    float *kc = kw_rand_array(KW_DTYPE_F32, 2 * cap * D, 2.0f), *vc = kw_rand_array(KW_DTYPE_F32, 2 * cap * D, 1.0f);
    float *k4 = malloc((size_t)(Hq * cap * D) * sizeof(float)), *v4 = malloc((size_t)(Hq * cap * D) * sizeof(float));
    float *qs = malloc((size_t)(TMAX * Hq * D) * sizeof(float));
    float *want = malloc((size_t)(TMAX * Hq * D) * sizeof(float)),
          *got = malloc((size_t)(TMAX * Hq * D) * sizeof(float));
    uint8_t mask[24];
    assert_true(k4 && v4 && qs && want && got);
    for (int64_t j = 0; j < cap; ++j)
        mask[j] = j != 7;
    for (int64_t h = 0; h < 2; ++h)
        for (int64_t d = 0; d < D; ++d) {
            kc[(h * cap + 7) * D + d] = NAN, vc[(h * cap + 7) * D + d] = NAN;
            if (h == 0) q[d] = 200.0f * kc[3 * D + d]; /* head 0: row 3 outscores every other by far */
        }
    vc[5 * D] = INFINITY;            /* a visible row head 0 gives weight 0: it must skip it, not add 0 * inf */
    for (int64_t h = 0; h < Hq; ++h) /* q head h's own copy of kv head h / 2 */
        memcpy(k4 + h * cap * D, kc + h / 2 * cap * D, (size_t)(cap * D) * sizeof(float)),
            memcpy(v4 + h * cap * D, vc + h / 2 * cap * D, (size_t)(cap * D) * sizeof(float));
    const char *isas[3];
    const int n_isa = kw_backend_cpu_isas(isas);
    /* as a decode step, and as the last token of a call long enough for the prefill loops (AVX-512's score blocks:
     * here two heads x 8 rows, the masked NaN row inside a block); the other tokens are the same q at earlier
     * positions */
    for (int64_t T = 1; T <= TMAX; T += TMAX - 1) {
        for (int64_t t = 0; t < T; ++t)
            memcpy(qs + t * Hq * D, q, (size_t)(Hq * D) * sizeof(float));
        const kw_attn_case split = {T, Hq, Hq, D, q_pos0 - (T - 1), n_kv - q_pos0 - 1, 0, KW_DTYPE_F32, 1};
        const kw_attn_case group = {T, Hq, 2, D, q_pos0 - (T - 1), n_kv - q_pos0 - 1, 0, KW_DTYPE_F32, 1};
        const float *last = got + (T - 1) * Hq * D;
        for (int i = 0; i < n_isa; ++i) {
            kw_backend *b = kw_cpu(isas[i], 1);
            kw_attn(b, want, qs, k4, v4, mask, &split, cap, 0, T);
            memset(got, 0xff, (size_t)(T * Hq * D) * sizeof(float));
            kw_attn(b, got, qs, kc, vc, mask, &group, cap, 0, T);
            kw_same_bits(got, want, T * Hq * D, isas[i]);
            for (int64_t e = 0; e < Hq * D; ++e) /* head 1 adds the infinity in its dim 0 */
                assert_true(isfinite(last[e]) || e == D);
            for (int64_t d = 0; d < D; ++d) /* head 0 is row 3's value, to rounding */
                assert_true(fabsf(last[d] - vc[3 * D + d]) <= 1e-6f * (1.0f + fabsf(vc[3 * D + d])));
            kw_backend_destroy(b);
        }
    }
    free(q), free(kc), free(vc), free(k4), free(v4), free(qs), free(want), free(got);
}

/* ------------------------------------------------------------------------------------------------------------
 * Bulk math over the float range, and the small ops
 */

typedef void (*kw_bulk_fn)(enum kw_cpu_isa isa, float *y, const float *x, int64_t n);

static void test_math_same_bits_everywhere(void **state) {
    (void)state;
    const char *isas[3];
    const int n_isa = kw_backend_cpu_isas(isas);
    static const kw_bulk_fn fns[] = {kw__cpu_exp_f32,       kw__cpu_erf_f32,     kw__cpu_gelu_erf_f32,
                                     kw__cpu_gelu_tanh_f32, kw__cpu_sigmoid_f32, kw__cpu_silu_f32};
    static const char *const names[] = {"exp", "erf", "gelu", "gelu tanh", "sigmoid", "silu"};
    /* every 4093rd bit pattern of both signs (about a million inputs: every exponent, subnormals, Inf, NaN), every
     * 1021st of [-110, 90] (exp's whole finite range, underflow included), then odd lengths for the vector tails */
    enum { MAX = 1 << 22 };
    float *x = malloc(MAX * sizeof(float)), *want = malloc(MAX * sizeof(float)), *got = malloc(MAX * sizeof(float));
    assert_true(x && want && got);
    int64_t n = 0;
    for (uint64_t b = 0; b <= 0xffffffffull; b += 4093)
        x[n++] = kw_f32_from_bits((uint32_t)b);
    for (uint32_t b = 0; b <= kw_f32_bits(110.0f); b += 1021) {
        x[n++] = kw_f32_from_bits(b | 0x80000000u);
        if (b <= kw_f32_bits(90.0f)) x[n++] = kw_f32_from_bits(b);
    }
    const float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 88.7228f, 88.8f, -103.97f, -104.0f, 3.92f, 4.0f};
    for (size_t i = 0; i < sizeof specials / sizeof specials[0]; ++i)
        x[n++] = specials[i];
    for (size_t f = 0; f < sizeof fns / sizeof fns[0]; ++f) {
        fns[f](KW_CPU_ISA_SCALAR, want, x, n);
        for (int i = 1; i < n_isa; ++i) {
            const enum kw_cpu_isa isa = strcmp(isas[i], "avx2") == 0 ? KW_CPU_ISA_AVX2 : KW_CPU_ISA_AVX512;
            char what[64];
            snprintf(what, sizeof what, "%s on %s", names[f], isas[i]);
            fns[f](isa, got, x, n);
            kw_same_bits(got, want, n, what);
            for (int64_t len = 1; len <= 40; ++len) { /* every tail length, at an odd offset */
                fns[f](isa, got, x + 7, len);
                kw_same_bits(got, want + 7, len, what);
            }
        }
    }
    free(x), free(want), free(got);
}

/* unary and glu (every activation), softmax, rms_norm, rope and get_rows (packed and row-major tables): every ISA and
 * thread count against the scalar backend with one thread. */
static void kw_small_ops(kw_backend *b, float *out, const float *x, const float *u, const void *table, int64_t n) {
    enum { R = 7, V = 130 };
    const int64_t D = n / R;
    float *o = out;
    kw_tensor tx = kw_wrap(b, KW_DTYPE_F32, 2, (int64_t[]){R, D}, x),
              tu = kw_wrap(b, KW_DTYPE_F32, 2, (int64_t[]){R, D}, u);
    for (int act = KW_ACT_SILU; act <= KW_ACT_IDENTITY; ++act) {
        kw_tensor to = kw_wrap(b, KW_DTYPE_F32, 2, (int64_t[]){R, D}, o);
        assert_int_equal(kw_op_unary(b, &to, &tx, (enum kw_act)act), 0);
        o += n;
        to = kw_wrap(b, KW_DTYPE_F32, 2, (int64_t[]){R, D}, o);
        assert_int_equal(kw_op_glu(b, &to, &tx, &tu, (enum kw_act)act), 0);
        o += n;
    }
    kw_tensor to = kw_wrap(b, KW_DTYPE_F32, 2, (int64_t[]){R, D}, o);
    assert_int_equal(kw_op_softmax(b, &to, &tx), 0);
    o += n;
    to = kw_wrap(b, KW_DTYPE_F32, 2, (int64_t[]){R, D}, o);
    kw_tensor tw = kw_wrap(b, KW_DTYPE_F32, 1, (int64_t[]){D}, u); /* row 0 of u as the weight */
    assert_int_equal(kw_op_rms_norm(b, &to, &tx, &tw, 1e-6f, KW_RMS_NORM_PLAIN), 0);
    o += n;
    memcpy(o, x, (size_t)n * sizeof(float));
    to = kw_wrap(b, KW_DTYPE_F32, 3, (int64_t[]){R, D / 100, 100}, o);
    const int32_t pos[R] = {0, 1, 7, 100, 5000, 3, 2};
    kw_tensor tp = kw_wrap(b, KW_DTYPE_I32, 1, (int64_t[]){R}, pos);
    const kw_rope_params rp = {.theta = 1e6, .rotary_dim = 100, .scaling = KW_ROPE_SCALING_NONE};
    assert_int_equal(kw_op_rope(b, &to, &tp, &rp), 0);
    o += n;
    const int32_t ids[R] = {0, 129, 64, 63, 1, 100, 65};
    kw_tensor ti = kw_wrap(b, KW_DTYPE_I32, 1, (int64_t[]){R}, ids);
    kw_tensor tt = kw_wrap(b, KW_DTYPE_BF16, 2, (int64_t[]){V, D}, table), tpk = {0};
    assert_int_equal(kw_tensor_pack_weight(b, &tt, &tpk), 0);
    to = kw_wrap(b, KW_DTYPE_F32, 2, (int64_t[]){R, D}, o);
    assert_int_equal(kw_op_get_rows(b, &to, &tt, &ti), 0);
    o += n;
    to = kw_wrap(b, KW_DTYPE_F32, 2, (int64_t[]){R, D}, o);
    assert_int_equal(kw_op_get_rows(b, &to, &tpk, &ti), 0);
    assert_int_equal(kw_backend_synchronize(b), 0);
    assert_memory_equal(o, o - n, (size_t)n * sizeof(float)); /* packed table == row-major table */
    kw_tensor_free(&tpk);
}

static void test_small_ops_same_bits_everywhere(void **state) {
    (void)state;
    const char *isas[3];
    const int n_isa = kw_backend_cpu_isas(isas);
    enum { R = 7, D = 2000, N = R * D, OUTS = 2 * 5 + 5 };
    float *x = kw_rand_array(KW_DTYPE_F32, N, 12.0f), *u = kw_rand_array(KW_DTYPE_F32, N, 2.0f);
    void *table = kw_rand_array(KW_DTYPE_BF16, 130 * D, 1.0f);
    x[5] = NAN, x[6] = INFINITY, x[7] = -INFINITY, x[8] = 0.0f, x[9] = -0.0f, x[10] = 100.0f, x[11] = -100.0f;
    float *want = malloc((size_t)N * OUTS * sizeof(float)), *got = malloc((size_t)N * OUTS * sizeof(float));
    assert_true(want && got);
    kw_backend *ref = kw_cpu("scalar", 1);
    kw_small_ops(ref, want, x, u, table, N);
    kw_backend_destroy(ref);
    for (int i = 0; i < n_isa; ++i)
        for (int threads = 1; threads <= 3; ++threads) {
            kw_backend *b = kw_cpu(isas[i], threads);
            kw_small_ops(b, got, x, u, table, N);
            char what[64];
            snprintf(what, sizeof what, "small ops on %s, %d threads", isas[i], threads);
            kw_same_bits(got, want, (int64_t)N * OUTS, what);
            kw_backend_destroy(b);
        }
    free(x), free(u), free(table), free(want), free(got);
}

/* A packed weight is refused where only row-major tensors are read, and views of it are refused. */
static void test_packed_weight_contract(void **state) {
    (void)state;
    kw_backend *b = kw_cpu("scalar", 1);
    float w[3 * 5] = {0};
    kw_tensor tw = kw_wrap(b, KW_DTYPE_F32, 2, (int64_t[]){3, 5}, w), tp, v;
    assert_int_equal(kw_tensor_pack_weight(b, &tw, &tp), 0);
    assert_int_equal(tp.layout, KW_LAYOUT_PANELS);
    assert_int_equal(tp.owns_data, 1);
    assert_int_equal(kw_tensor_nbytes(&tp), 64 * 5 * sizeof(float)); /* padded to a whole panel */
    assert_int_equal(kw_tensor_view_rows(&tp, 0, 1, &v), KW_E_SHAPE);
    assert_int_equal(kw_tensor_view_reshape(&tp, 1, (int64_t[]){15}, &v), KW_E_SHAPE);
    float out[15];
    assert_int_equal(kw_backend_download(b, out, &tp, 0, sizeof out), KW_E_SHAPE);
    assert_int_equal(kw_op_unary(b, &tp, &tp, KW_ACT_IDENTITY), KW_E_SHAPE);
    kw_tensor t3 = kw_wrap(b, KW_DTYPE_F32, 3, (int64_t[]){1, 3, 5}, w), tp3;
    assert_int_equal(kw_tensor_pack_weight(b, &t3, &tp3), KW_E_SHAPE);
    kw_tensor ti = kw_wrap(b, KW_DTYPE_I32, 2, (int64_t[]){3, 5}, w);
    assert_int_equal(kw_tensor_pack_weight(b, &ti, &tp3), KW_E_SHAPE);
    kw_tensor_free(&tp);
    kw_tensor_free(&tp); /* freeing twice is a no-op on the zeroed struct */
    kw_backend_destroy(b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matmul_same_bits_everywhere),      cmocka_unit_test(test_attention_same_bits_everywhere),
        cmocka_unit_test(test_attention_group_heads_own_chains), cmocka_unit_test(test_math_same_bits_everywhere),
        cmocka_unit_test(test_small_ops_same_bits_everywhere),   cmocka_unit_test(test_packed_weight_contract),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
