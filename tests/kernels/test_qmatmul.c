/* test_qmatmul.c: matmul weights kept quantized (kernels/kw_backend.h, KW_LAYOUT_QPANELS_*) on the CPU backend.
 *
 * The oracle is kw_ref_quant_dequant (kernels/ref): the f32 weight the codes, scales and offsets stand for. A matmul
 * on the quantized panels must give the same bits as the CPU matmul on that f32 weight (packed or row-major, scalar
 * ISA, one thread), on every ISA this machine has, 1 and 2 threads, all rows at once, row by row (decode) and in
 * uneven sections (prefill chunks); get_rows on a quantized table must return the oracle's rows. A changed code
 * must change the result (the comparison can fail), and bad input is refused with a status, never an assert.
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

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;

static uint64_t kw_next(void) {
    g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
    return g_rng;
}

static float kw_rand(void) {
    return kw_rand_from(&g_rng);
}

/* Random quantized rows of a layout: in even groups as a GGUF file holds them, scales f16 values times a small integer
 * (the k-quants' d * sc), offsets f16-derived, so fl(code * scale) + offset really rounds; in odd groups any f32
 * scale. */
typedef struct kw_qcase_data {
    kw_quant_rows q;
    int8_t *codes;
    float *scales, *offsets;
} kw_qcase_data;

static kw_qcase_data kw_qcase_make(enum kw_layout layout, int64_t N, int64_t K) {
    kw_quant_layout ql;
    assert_int_equal(kw_layout_quant(layout, &ql), 1);
    kw_qcase_data d = {0};
    const int64_t groups = N * (K / ql.group);
    d.codes = malloc((size_t)(N * K));
    d.scales = malloc((size_t)groups * sizeof(float));
    d.offsets = ql.has_offset ? malloc((size_t)groups * sizeof(float)) : NULL;
    assert_true(d.codes && d.scales && (d.offsets || !ql.has_offset));
    const int span = ql.code_max - ql.code_min + 1;
    for (int64_t i = 0; i < N * K; ++i)
        d.codes[i] = (int8_t)(ql.code_min + (int)(kw_next() % (uint64_t)span));
    for (int64_t g = 0; g < groups; ++g) {
        const float half = kw_f16_to_f32(kw_f32_to_f16(kw_rand() * 0.01f));
        /* odd groups: a full 24-bit scale, so that code * scale rounds too and a fused multiply-add would show */
        d.scales[g] = g % 2 ? kw_rand() * 0.3f : half * (float)(1 + kw_next() % 63);
        if (d.offsets) d.offsets[g] = -(kw_f16_to_f32(kw_f32_to_f16(kw_rand() * 0.02f)) * (float)(kw_next() % 64));
    }
    d.q = (kw_quant_rows){layout, N, K, d.codes, d.scales, d.offsets};
    return d;
}

static void kw_qcase_free(kw_qcase_data *d) {
    free(d->codes), free(d->scales), free(d->offsets);
}

/* y = rows [m0, m1) of x times w^T (+ bias) in one call; w a tensor already on b. */
static void kw_mm(kw_backend *b, float *y, const float *x, const kw_tensor *w, const float *bias, int64_t m0,
                  int64_t m1) {
    const int64_t M = m1 - m0, N = w->ne[0], K = w->ne[1];
    kw_tensor tx = kw_wrap(b, KW_DTYPE_F32, 2, (int64_t[]){M, K}, x + m0 * K);
    kw_tensor ty = kw_wrap(b, KW_DTYPE_F32, 2, (int64_t[]){M, N}, y + m0 * N), tb = {0};
    if (bias) tb = kw_wrap(b, KW_DTYPE_F32, 1, (int64_t[]){N}, bias);
    assert_int_equal(kw_op_matmul(b, &ty, &tx, w, bias ? &tb : NULL), 0);
    assert_int_equal(kw_backend_synchronize(b), 0);
}

typedef struct kw_qmm_case {
    enum kw_layout layout;
    int64_t M, N, K;
    int bias;
} kw_qmm_case;

static const kw_qmm_case kw_qmm_cases[] = {
    {KW_LAYOUT_QPANELS_S4, 1, 1, 32, 0},       {KW_LAYOUT_QPANELS_S4, 13, 130, 96, 1},
    {KW_LAYOUT_QPANELS_U4, 7, 64, 64, 0},      {KW_LAYOUT_QPANELS_U4, 50, 200, 160, 1},
    {KW_LAYOUT_QPANELS_S8, 3, 37, 32, 0},      {KW_LAYOUT_QPANELS_S8, 70, 65, 128, 1},
    {KW_LAYOUT_QPANELS_S8_OFS, 9, 100, 64, 0}, {KW_LAYOUT_QPANELS_S8_OFS, 2, 300, 256, 1},
    {KW_LAYOUT_QPANELS_S8_G16, 5, 20, 16, 0},  {KW_LAYOUT_QPANELS_S8_G16, 33, 129, 272, 1},
};

static void test_quantized_matmul_is_the_f32_matmul(void **state) {
    (void)state;
    const char *isas[3];
    const int n_isa = kw_backend_cpu_isas(isas);
    for (size_t ci = 0; ci < sizeof kw_qmm_cases / sizeof kw_qmm_cases[0]; ++ci) {
        const kw_qmm_case *c = &kw_qmm_cases[ci];
        kw_qcase_data d = kw_qcase_make(c->layout, c->N, c->K);
        float *w = malloc((size_t)(c->N * c->K) * sizeof(float)), *x = malloc((size_t)(c->M * c->K) * sizeof(float));
        float *bias = c->bias ? malloc((size_t)c->N * sizeof(float)) : NULL;
        const size_t ybytes = (size_t)(c->M * c->N) * sizeof(float);
        float *want = malloc(ybytes), *got = malloc(ybytes);
        assert_true(w && x && want && got && (bias || !c->bias));
        kw_ref_quant_dequant(w, &d.q);
        for (int64_t i = 0; i < c->M * c->K; ++i)
            x[i] = kw_rand() * 2.0f;
        for (int64_t i = 0; bias && i < c->N; ++i)
            bias[i] = kw_rand();

        /* the f32 path: scalar, one thread, row-major weight (test_invariance holds every other f32 path to it) */
        kw_backend *ref = kw_cpu("scalar", 1);
        kw_tensor tw = kw_wrap(ref, KW_DTYPE_F32, 2, (int64_t[]){c->N, c->K}, w);
        kw_mm(ref, want, x, &tw, bias, 0, c->M);
        kw_backend_destroy(ref);

        char what[200];
        for (int i = 0; i < n_isa; ++i) {
            for (int threads = 1; threads <= 2; ++threads) {
                kw_backend *b = kw_cpu(isas[i], threads);
                kw_tensor tq;
                assert_int_equal(kw_tensor_pack_quantized(b, &d.q, &tq), 0);
                assert_int_equal(tq.layout, c->layout);
                snprintf(what, sizeof what, "layout %d M=%lld N=%lld K=%lld, %s, %d threads", (int)c->layout,
                         (long long)c->M, (long long)c->N, (long long)c->K, isas[i], threads);
                memset(got, 0xff, ybytes);
                kw_mm(b, got, x, &tq, bias, 0, c->M);
                kw_same_bits(got, want, c->M * c->N, what);
                memset(got, 0xff, ybytes);
                for (int64_t m = 0; m < c->M; ++m)
                    kw_mm(b, got, x, &tq, bias, m, m + 1);
                kw_same_bits(got, want, c->M * c->N, "row by row");
                memset(got, 0xff, ybytes);
                int64_t step = 1, prev = 1;
                for (int64_t m = 0; m < c->M;) {
                    const int64_t m1 = m + step < c->M ? m + step : c->M;
                    kw_mm(b, got, x, &tq, bias, m, m1);
                    m = m1;
                    const int64_t next = step + prev;
                    prev = step, step = next;
                }
                kw_same_bits(got, want, c->M * c->N, "in sections");

                /* get_rows on the quantized table: the oracle's rows, an out-of-range id zeroed and reported */
                const int64_t T = 4;
                int32_t ids[4] = {0, (int32_t)(c->N - 1), (int32_t)(c->N / 2), (int32_t)(c->N / 3)};
                float *rows = malloc((size_t)(T * c->K) * sizeof(float));
                assert_non_null(rows);
                kw_tensor tid = kw_wrap(b, KW_DTYPE_I32, 1, (int64_t[]){T}, ids);
                kw_tensor tr = kw_wrap(b, KW_DTYPE_F32, 2, (int64_t[]){T, c->K}, rows);
                assert_int_equal(kw_op_get_rows(b, &tr, &tq, &tid), 0);
                assert_int_equal(kw_backend_synchronize(b), 0);
                for (int64_t t = 0; t < T; ++t)
                    kw_same_bits(rows + t * c->K, w + ids[t] * c->K, c->K, "get_rows");
                ids[1] = (int32_t)c->N;
                assert_int_equal(kw_op_get_rows(b, &tr, &tq, &tid), 0);
                assert_int_equal(kw_backend_synchronize(b), KW_E_TOKEN_ID);
                free(rows);
                kw_tensor_free(&tq);
                kw_backend_destroy(b);
            }
        }
        kw_qcase_free(&d);
        free(w), free(x), free(bias), free(want), free(got);
    }
}

/* The comparison can fail: one changed code (the smallest step, +-1) changes some output. */
static void test_changed_code_is_caught(void **state) {
    (void)state;
    static const enum kw_layout layouts[] = {KW_LAYOUT_QPANELS_S4, KW_LAYOUT_QPANELS_U4, KW_LAYOUT_QPANELS_S8,
                                             KW_LAYOUT_QPANELS_S8_OFS, KW_LAYOUT_QPANELS_S8_G16};
    const int64_t M = 3, N = 70, K = 64;
    for (size_t li = 0; li < sizeof layouts / sizeof layouts[0]; ++li) {
        kw_quant_layout ql;
        kw_layout_quant(layouts[li], &ql);
        kw_qcase_data d = kw_qcase_make(layouts[li], N, K);
        float w[70 * 64], x[3 * 64], want[3 * 70], got[3 * 70];
        const int64_t at = 67 * K + 45; /* row 67: the second panel; k 45: the second group of 32 */
        d.scales[67 * (K / ql.group) + 45 / ql.group] = 0.5f; /* a step of one code is not lost to rounding */
        kw_ref_quant_dequant(w, &d.q);
        for (int64_t i = 0; i < M * K; ++i)
            x[i] = 1.0f + kw_rand() * 0.5f; /* no zero: every weight counts */
        kw_backend *b = kw_cpu("avx512", 1);
        kw_tensor tw = kw_wrap(b, KW_DTYPE_F32, 2, (int64_t[]){N, K}, w), tq;
        kw_mm(b, want, x, &tw, NULL, 0, M);
        d.codes[at] = (int8_t)(d.codes[at] == ql.code_max ? d.codes[at] - 1 : d.codes[at] + 1);
        assert_int_equal(kw_tensor_pack_quantized(b, &d.q, &tq), 0);
        kw_mm(b, got, x, &tq, NULL, 0, M);
        int differ = 0;
        for (int64_t i = 0; i < M * N; ++i)
            differ += kw_f32_bits(got[i]) != kw_f32_bits(want[i]);
        assert_int_equal(differ, M); /* column 67 of every row, and nothing else */
        for (int64_t m = 0; m < M; ++m)
            assert_int_not_equal(kw_f32_bits(got[m * N + 67]), kw_f32_bits(want[m * N + 67]));
        kw_tensor_free(&tq);
        kw_backend_destroy(b);
        kw_qcase_free(&d);
    }
}

static void test_quantized_contract(void **state) {
    (void)state;
    kw_backend *b = kw_cpu("avx512", 1);
    for (int l = KW_LAYOUT_QPANELS_S4; l <= KW_LAYOUT_QPANELS_S8_G16; ++l)
        assert_int_equal(kw_backend_supports_layout(b, (enum kw_layout)l), 1);
    assert_int_equal(kw_backend_supports_layout(NULL, KW_LAYOUT_QPANELS_S4), 0);
    kw_quant_layout ql;
    assert_int_equal(kw_layout_quant(KW_LAYOUT_PANELS, &ql), 0);
    assert_int_equal(ql.group, 0);

    kw_qcase_data d = kw_qcase_make(KW_LAYOUT_QPANELS_U4, 65, 64);
    kw_tensor tq, v;
    assert_int_equal(kw_tensor_pack_quantized(b, &d.q, &tq), 0);
    /* two panels of two groups: 64 scales + 64 offsets + 32 k * 32 bytes of nibbles each */
    assert_int_equal(kw_tensor_nbytes(&tq), 2 * 2 * (64 * 4 * 2 + 32 * 32));
    assert_int_equal(kw_tensor_view_rows(&tq, 0, 1, &v), KW_E_SHAPE);
    float out[16];
    assert_int_equal(kw_backend_download(b, out, &tq, 0, sizeof out), KW_E_SHAPE);
    assert_int_equal(kw_op_unary(b, &tq, &tq, KW_ACT_IDENTITY), KW_E_SHAPE);
    kw_tensor_free(&tq);

    kw_tensor bad;
    kw_quant_rows q = d.q;
    q.k = 48; /* not a multiple of 32 */
    assert_int_equal(kw_tensor_pack_quantized(b, &q, &bad), KW_E_SHAPE);
    q = d.q;
    q.n = 0;
    assert_int_equal(kw_tensor_pack_quantized(b, &q, &bad), KW_E_SHAPE);
    q = d.q;
    q.n = INT64_MAX / 2; /* the panels' bytes overflow: refused before any code is read */
    assert_int_equal(kw_tensor_pack_quantized(b, &q, &bad), KW_E_OVERFLOW);
    q = d.q;
    q.offsets = NULL; /* U4 has offsets */
    assert_int_equal(kw_tensor_pack_quantized(b, &q, &bad), KW_E_INVALID_ARG);
    q = d.q;
    q.layout = KW_LAYOUT_QPANELS_S4; /* no offsets there, and codes 8..15 are out of range */
    assert_int_equal(kw_tensor_pack_quantized(b, &q, &bad), KW_E_INVALID_ARG);
    q.offsets = NULL;
    d.codes[5] = 8;
    assert_int_equal(kw_tensor_pack_quantized(b, &q, &bad), KW_E_INVALID_ARG);
    assert_non_null(strstr(kw_error_detail(), "outside -8..7"));
    q = d.q;
    q.layout = KW_LAYOUT_PANELS;
    assert_int_equal(kw_tensor_pack_quantized(b, &q, &bad), KW_E_INVALID_ARG);
    q.codes = NULL;
    q.layout = KW_LAYOUT_QPANELS_U4;
    assert_int_equal(kw_tensor_pack_quantized(b, &q, &bad), KW_E_INVALID_ARG);
    assert_int_equal(kw_tensor_pack_quantized(b, NULL, &bad), KW_E_INVALID_ARG);
    kw_qcase_free(&d);
    kw_backend_destroy(b);
}

/* QPANELS_U4_X8 (int8 activations): on every ISA, 1 and 2 threads, all rows at once, row by row and in sections,
 * the bits of kw_ref_quant_matmul_x8 plus the bias; within the activation rounding of the f32 weight's matmul
 * (|y - y_f32| <= sum_g d_g / 2 * sum_k |w| + (K + 8) 2^-23 sum |x w|); get_rows gives the dequantized rows; a zero
 * group and a NaN in x follow the rule; one changed code changes exactly its column. */
static void test_x8_matmul_is_its_oracle(void **state) {
    (void)state;
    static const int64_t cases[][4] = {{1, 1, 32, 4},    {7, 64, 64, 4},    {50, 200, 160, 4},
                                       {9, 130, 256, 4}, {3, 37, 96, 4},    {1, 1, 32, 8},
                                       {6, 70, 64, 8},   {45, 129, 192, 8}, {4, 300, 256, 8}};
    const char *isas[3];
    const int n_isa = kw_backend_cpu_isas(isas);
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ++ci) {
        const int64_t M = cases[ci][0], N = cases[ci][1], K = cases[ci][2], G = K / 32;
        const enum kw_layout layout = cases[ci][3] == 4 ? KW_LAYOUT_QPANELS_U4_X8 : KW_LAYOUT_QPANELS_S8_G16_X8;
        kw_qcase_data d = kw_qcase_make(layout, N, K);
        float *w = malloc((size_t)(N * K) * sizeof(float)), *x = malloc((size_t)(M * K) * sizeof(float));
        float *bias = malloc((size_t)N * sizeof(float));
        const size_t ybytes = (size_t)(M * N) * sizeof(float);
        float *want = malloc(ybytes), *got = malloc(ybytes), *f32 = malloc(ybytes);
        assert_true(w && x && bias && want && got && f32);
        kw_ref_quant_dequant(w, &d.q);
        for (int64_t i = 0; i < M * K; ++i)
            x[i] = kw_rand() * 2.0f;
        if (K >= 64) memset(x + 32, 0, 32 * sizeof(float)); /* row 0, group 1: all zero */
        if (M >= 3) x[2 * K + K - 1] = NAN;                 /* row 2: NaN everywhere */
        for (int64_t i = 0; i < N; ++i)
            bias[i] = kw_rand();
        kw_ref_quant_matmul_x8(want, x, M, &d.q);
        kw_ref_matmul(f32, x, w, KW_DTYPE_F32, NULL, KW_DTYPE_F32, M, N, K);
        for (int64_t m = 0; m < M; ++m)
            for (int64_t n = 0; n < N; ++n) {
                double err = 0.0, mag = 0.0;
                for (int64_t g = 0; g < G; ++g) {
                    float amax = 0.0f, wsum = 0.0f;
                    for (int64_t k = g * 32; k < g * 32 + 32; ++k) {
                        amax = fmaxf(amax, fabsf(x[m * K + k]));
                        wsum += fabsf(w[n * K + k]);
                        mag += fabs((double)x[m * K + k] * w[n * K + k]);
                    }
                    err += amax / 127.0 / 2.0 * wsum;
                }
                const double diff = fabs((double)want[m * N + n] - f32[m * N + n]);
                if (m == 2 && M >= 3) {
                    assert_true(isnan(want[m * N + n]));
                    continue;
                }
                if (!(diff <= err * 1.001 + (double)(K + 8) * 0x1p-23 * mag))
                    fail_msg("x8 (%lld, %lld): %g from the f32 matmul, bound %g", (long long)m, (long long)n, diff,
                             err);
                want[m * N + n] += bias[n];
            }
        for (int64_t n = 0; M >= 3 && n < N; ++n)
            want[2 * N + n] += bias[n];

        char what[200];
        for (int i = 0; i < n_isa; ++i) {
            for (int threads = 1; threads <= 2; ++threads) {
                kw_backend *b = kw_cpu(isas[i], threads);
                assert_int_equal(kw_backend_supports_layout(b, layout), 1);
                kw_tensor tq;
                assert_int_equal(kw_tensor_pack_quantized(b, &d.q, &tq), 0);
                assert_int_equal(tq.layout, layout);
                snprintf(what, sizeof what, "x8 layout %d M=%lld N=%lld K=%lld, %s, %d threads", (int)layout,
                         (long long)M, (long long)N, (long long)K, isas[i], threads);
                memset(got, 0xff, ybytes);
                kw_mm(b, got, x, &tq, bias, 0, M);
                kw_same_bits(got, want, M * N, what);
                memset(got, 0xff, ybytes);
                for (int64_t m = 0; m < M; ++m)
                    kw_mm(b, got, x, &tq, bias, m, m + 1);
                kw_same_bits(got, want, M * N, "x8 row by row");
                memset(got, 0xff, ybytes);
                for (int64_t m = 0, step = 5; m < M; m += step, step += 3)
                    kw_mm(b, got, x, &tq, bias, m, m + step < M ? m + step : M);
                kw_same_bits(got, want, M * N, "x8 in sections");

                int32_t ids[2] = {0, (int32_t)(N - 1)};
                float *rows = malloc((size_t)(2 * K) * sizeof(float));
                assert_non_null(rows);
                kw_tensor tid = kw_wrap(b, KW_DTYPE_I32, 1, (int64_t[]){2}, ids);
                kw_tensor tr = kw_wrap(b, KW_DTYPE_F32, 2, (int64_t[]){2, K}, rows);
                assert_int_equal(kw_op_get_rows(b, &tr, &tq, &tid), 0);
                assert_int_equal(kw_backend_synchronize(b), 0);
                for (int t = 0; t < 2; ++t)
                    kw_same_bits(rows + t * K, w + ids[t] * K, K, "x8 get_rows");
                free(rows);

                if (N > 1 && M >= 1) { /* one code of the last row: its column changes in a row of x, nothing else */
                    const int64_t at = (N - 1) * K + K - 3;
                    const int8_t keep = d.codes[at];
                    d.codes[at] = (int8_t)(keep == 15 || keep == 127 ? keep - 1 : keep + 1);
                    kw_tensor tc;
                    assert_int_equal(kw_tensor_pack_quantized(b, &d.q, &tc), 0);
                    kw_mm(b, got, x, &tc, bias, 0, M);
                    d.codes[at] = keep;
                    int differ = 0;
                    for (int64_t m = 0; m < M; ++m)
                        for (int64_t n = 0; n < N; ++n)
                            if (!isnan(want[m * N + n]) &&
                                kw_f32_bits(got[m * N + n]) != kw_f32_bits(want[m * N + n])) {
                                assert_int_equal(n, N - 1);
                                ++differ;
                            }
                    assert_true(differ >= 1);
                    kw_tensor_free(&tc);
                }
                kw_tensor_free(&tq);
                kw_backend_destroy(b);
            }
        }
        kw_qcase_free(&d);
        free(w), free(x), free(bias), free(want), free(got), free(f32);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quantized_matmul_is_the_f32_matmul),
        cmocka_unit_test(test_changed_code_is_caught),
        cmocka_unit_test(test_quantized_contract),
        cmocka_unit_test(test_x8_matmul_is_its_oracle),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
