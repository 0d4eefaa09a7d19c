/* test_bf16act.c: the bf16-activation matmul (KW_LAYOUT_PANELS_BF16_PAIRS, kernels/cpu/kw_cpu_matmul_bf16.c).
 *
 * - On every ISA this machine has (scalar, AVX2 emulation, AVX-512: vdpbf16ps where the CPU has it), 1 and 2 threads,
 *   M = 1, 3, 8, 64, 130, odd and even K, N not a multiple of 64: the bits of kw_ref_matmul_bf16act (raw bits, NaNs
 *   included), all rows at once, row by row and in sections (batch invariance), with denormal, infinite and NaN
 *   inputs, and values whose chains cross 2^-126 (FTZ).
 * - Hand-made chains on the FTZ boundary give the results the instruction gave on an AMD Zen 5.
 * - Random normal data: within the bound derived from the activation rounding of the exact matmul.
 * - The packing contract: bf16 only, the byte count, get_rows gives the weights' exact values (-0, denormals, Inf,
 *   NaN payloads: the layout keeps them as given; the matmul reads a denormal as zero).
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

static uint64_t kw_seed = 0x9e3779b97f4a7c15ull;

static float kw_rand(void) {
    return kw_rand_from(&kw_seed);
}

/* y rows [m0, m1) = x rows times the packed w, on b. */
static void kw_mm(kw_backend *b, float *y, const float *x, const kw_tensor *w, int64_t m0, int64_t m1) {
    const int64_t M = m1 - m0, N = w->ne[0], K = w->ne[1];
    kw_tensor tx = kw_wrap(b, KW_DTYPE_F32, 2, (int64_t[]){M, K}, x + m0 * K);
    kw_tensor ty = kw_wrap(b, KW_DTYPE_F32, 2, (int64_t[]){M, N}, y + m0 * N);
    assert_int_equal(kw_op_matmul(b, &ty, &tx, w, NULL), 0);
    assert_int_equal(kw_backend_synchronize(b), 0);
}

/* Fails unless a and b are the same bits, NaNs included (the layout stores one NaN). */
static void kw_raw_bits(const float *a, const float *b, int64_t n, const char *what) {
    for (int64_t i = 0; i < n; ++i)
        if (kw_f32_bits(a[i]) != kw_f32_bits(b[i]))
            fail_msg("%s: element %lld: 0x%08x vs 0x%08x", what, (long long)i, kw_f32_bits(a[i]), kw_f32_bits(b[i]));
}

/* A random value: mostly of magnitude about 1, some tiny (products near 2^-126), some denormal. */
static float kw_rand_value(int tiny_mix) {
    const float u = kw_rand();
    if (!tiny_mix) return u;
    const float r = fabsf(kw_rand());
    if (r < 0.3f) return ldexpf(u, -60 - (int)(r * 40)); /* products of two: 2^-120 .. 2^-140 */
    if (r < 0.35f) return ldexpf(u, -128);               /* an f32 denormal, a bf16 denormal */
    return u;
}

/* The bits of the oracle on every ISA and cut, with specials in x and w. */
static void test_bf16act_is_its_oracle(void **state) {
    (void)state;
    /* {1, 150, 1000}, {2, 40, 2000} and {1, 256, 600}: decode rows on two threads (an odd panel count, one narrow
     * panel, an even count) */
    static const int64_t cases[][4] = {{1, 70, 33, 0},    {3, 64, 64, 1},    {8, 129, 257, 0},
                                       {64, 70, 65, 1},   {130, 130, 96, 0}, {3, 5, 1, 0},
                                       {1, 150, 1000, 0}, {2, 40, 2000, 1},  {1, 256, 600, 0}};
    const char *isas[3];
    const int n_isa = kw_backend_cpu_isas(isas);
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ++ci) {
        const int64_t M = cases[ci][0], N = cases[ci][1], K = cases[ci][2];
        const int tiny = (int)cases[ci][3];
        uint16_t *w = malloc((size_t)(N * K) * sizeof *w);
        float *x = malloc((size_t)(M * K) * sizeof(float));
        const size_t ybytes = (size_t)(M * N) * sizeof(float);
        float *want = malloc(ybytes), *got = malloc(ybytes);
        assert_true(w && x && want && got);
        for (int64_t i = 0; i < N * K; ++i)
            w[i] = kw_f32_to_bf16(kw_rand_value(tiny));
        for (int64_t i = 0; i < M * K; ++i)
            x[i] = kw_rand_value(tiny);
        if (M >= 3 && K >= 2) {
            x[1 * K + K / 2] = INFINITY;           /* row 1: +-inf, or NaN where w is zero */
            x[2 * K + 0] = NAN;                    /* row 2: NaN */
            w[0] = kw_f32_to_bf16(-INFINITY);      /* column 0 */
            w[(N - 1) * K + K - 1] = 0x0001;       /* a bf16 denormal: read as +0 */
            x[0] = 0x1p-130f;                      /* rounds to a bf16 denormal */
            x[K - 1] = 3.0e38f;                    /* rounds to +inf in bf16 */
            if (N >= 2) w[1 * K + K / 2] = 0x0000; /* inf * 0 = NaN in row 1, column 1 */
        }
        kw_ref_matmul_bf16act(want, x, w, M, N, K);
        char what[200];
        for (int i = 0; i < n_isa; ++i) {
            for (int threads = 1; threads <= 2; ++threads) {
                kw_backend *b = kw_cpu(isas[i], threads);
                assert_int_equal(kw_backend_supports_layout(b, KW_LAYOUT_PANELS_BF16_PAIRS), 1);
                kw_tensor tw = kw_wrap(b, KW_DTYPE_BF16, 2, (int64_t[]){N, K}, w), tp;
                assert_int_equal(kw_tensor_pack_weight_bf16_pairs(b, &tw, &tp), 0);
                assert_int_equal(tp.layout, KW_LAYOUT_PANELS_BF16_PAIRS);
                snprintf(what, sizeof what, "bf16act M=%lld N=%lld K=%lld, %s, %d threads", (long long)M, (long long)N,
                         (long long)K, isas[i], threads);
                memset(got, 0xff, ybytes);
                kw_mm(b, got, x, &tp, 0, M);
                kw_raw_bits(got, want, M * N, what);
                memset(got, 0xff, ybytes);
                for (int64_t m = 0; m < M; ++m)
                    kw_mm(b, got, x, &tp, m, m + 1);
                kw_raw_bits(got, want, M * N, "bf16act row by row");
                memset(got, 0xff, ybytes);
                for (int64_t m = 0, step = 5; m < M; m += step, step += 3)
                    kw_mm(b, got, x, &tp, m, m + step < M ? m + step : M);
                kw_raw_bits(got, want, M * N, "bf16act in sections");
                kw_tensor_free(&tp);
                kw_backend_destroy(b);
            }
        }
        free(w), free(x), free(want), free(got);
    }
}

/* One row, K = 2: y = F(F(x1 w1 + 0) + x0 w0) with x1 w1 = 2^-126; results as vdpbf16ps gave them on Zen 5. */
static void test_bf16act_ftz_boundary(void **state) {
    (void)state;
    static const struct {
        float x0, w0;
        uint32_t want;
        float x1, w1; /* the odd k, added first (2^-63 each: a product of 2^-126) */
    } cases[] = {
        {0x1p-75f, -0x1p-75f, 0x00000000u, 0x1p-63f, 0x1p-63f},   /* 2^-126 - 2^-150: below 2^-126 in 24 bits: 0 */
        {0x1p-75f, -0x1p-76f, 0x00800000u, 0x1p-63f, 0x1p-63f},   /* 2^-126 - 2^-151: the tie rounds to even, 2^-126 */
        {0x1p-75f, -0x1.8p-76f, 0x00000000u, 0x1p-63f, 0x1p-63f}, /* just below the tie: flushed */
        {0x1.8p-75f, -0x1p-75f, 0x00000000u, 0x1p-63f, 0x1p-63f}, /* fmaf gives a denormal: flushed */
        {-0x1p-63f, 0x1p-63f, 0x00000000u, 0x1p-63f, 0x1p-63f},   /* exactly zero: +0 */
        {0x1p-100f, 0x1p-100f, 0x00800000u, 0x1p-63f, 0x1p-63f}, /* a product far below 2^-126 leaves 2^-126 as it is */
        /* the overflow side: 2^128 (above FLT_MAX) plus the odd k's -2^127 is 2^127 when the step is fused; a
         * product rounded to f32 first would give +inf */
        {0x1p64f, 0x1p64f, 0x7f000000u, -0x1p64f, 0x1p63f},
    };
    const char *isas[3];
    const int n_isa = kw_backend_cpu_isas(isas);
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ++ci) {
        const float x[2] = {cases[ci].x0, cases[ci].x1};
        const uint16_t w[2] = {kw_f32_to_bf16(cases[ci].w0), kw_f32_to_bf16(cases[ci].w1)};
        float want;
        kw_ref_matmul_bf16act(&want, x, w, 1, 1, 2);
        if (kw_f32_bits(want) != cases[ci].want)
            fail_msg("oracle, case %zu: 0x%08x, the instruction gave 0x%08x", ci, kw_f32_bits(want), cases[ci].want);
        for (int i = 0; i < n_isa; ++i) {
            kw_backend *b = kw_cpu(isas[i], 1);
            kw_tensor tw = kw_wrap(b, KW_DTYPE_BF16, 2, (int64_t[]){1, 2}, w), tp;
            assert_int_equal(kw_tensor_pack_weight_bf16_pairs(b, &tw, &tp), 0);
            float got = -1.0f;
            kw_mm(b, &got, x, &tp, 0, 1);
            if (kw_f32_bits(got) != cases[ci].want)
                fail_msg("%s, case %zu: 0x%08x, want 0x%08x", isas[i], ci, kw_f32_bits(got), cases[ci].want);
            kw_tensor_free(&tp);
            kw_backend_destroy(b);
        }
    }
}

/* Random normal data: |y - y_exact| <= 2^-8 sum |x w| (each x rounded to bf16, 8 significant bits: a relative error
 * of at most u = 2^-8) + 2 (K + 1) 2^-24 sum |x w| (the two f32 chains' roundings, gamma_K with slack). y_exact is the
 * exact path's matmul of the same bf16 weight. */
static void test_bf16act_within_the_exact_matmul(void **state) {
    (void)state;
    const int64_t M = 9, N = 100, K = 300;
    uint16_t *w = malloc((size_t)(N * K) * sizeof *w);
    float *x = malloc((size_t)(M * K) * sizeof(float)), *got = malloc((size_t)(M * N) * sizeof(float));
    float *exact = malloc((size_t)(M * N) * sizeof(float));
    assert_true(w && x && got && exact);
    for (int64_t i = 0; i < N * K; ++i)
        w[i] = kw_f32_to_bf16(kw_rand());
    for (int64_t i = 0; i < M * K; ++i)
        x[i] = kw_rand() * 3.0f;
    kw_ref_matmul(exact, x, w, KW_DTYPE_BF16, NULL, KW_DTYPE_F32, M, N, K);
    kw_backend *b = kw_cpu("avx512", 2);
    kw_tensor tw = kw_wrap(b, KW_DTYPE_BF16, 2, (int64_t[]){N, K}, w), tp;
    assert_int_equal(kw_tensor_pack_weight_bf16_pairs(b, &tw, &tp), 0);
    kw_mm(b, got, x, &tp, 0, M);
    double worst = 0.0;
    for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) {
            double mag = 0.0;
            for (int64_t k = 0; k < K; ++k)
                mag += fabs((double)x[m * K + k] * kw_bf16_to_f32(w[n * K + k]));
            const double bound = 0x1p-8 * mag + 2.0 * (double)(K + 1) * 0x1p-24 * mag;
            const double diff = fabs((double)got[m * N + n] - exact[m * N + n]);
            if (!(diff <= bound))
                fail_msg("(%lld, %lld): %g from the exact matmul, bound %g", (long long)m, (long long)n, diff, bound);
            worst = diff / bound > worst ? diff / bound : worst;
        }
    assert_true(worst > 0.0); /* the activations were rounded: not the exact path's bits */
    kw_tensor_free(&tp);
    kw_backend_destroy(b);
    float *scalar = exact; /* the scalar path on the same data: the same bits */
    b = kw_cpu("scalar", 1);
    tw = kw_wrap(b, KW_DTYPE_BF16, 2, (int64_t[]){N, K}, w);
    assert_int_equal(kw_tensor_pack_weight_bf16_pairs(b, &tw, &tp), 0);
    kw_mm(b, scalar, x, &tp, 0, M);
    kw_same_bits(scalar, got, M * N, "bf16act scalar vs the machine's ISA");
    kw_tensor_free(&tp);
    kw_backend_destroy(b);
    free(w), free(x), free(got), free(exact);
}

/* Only row-major bf16 packs; the byte count pads K to even and N to whole panels; get_rows gives the weights' exact
 * values (-0, denormals of both signs, Inf, a NaN's payload), the bits get_rows gives on the exact path's packed layout
 * (a tied table serves both). */
static void test_bf16act_contract(void **state) {
    (void)state;
    kw_backend *b = kw_cpu("avx512", 1);
    float wf[3 * 5] = {0};
    uint16_t w[3 * 5];
    for (int i = 0; i < 15; ++i)
        w[i] = kw_f32_to_bf16((float)i - 7.0f);
    w[4] = 0x8003;  /* a negative denormal */
    w[0] = 0x8000;  /* -0 */
    w[10] = 0x0001; /* the smallest positive denormal */
    w[11] = 0x7f80; /* +Inf */
    w[12] = 0x7fc1; /* a NaN with a payload */
    w[13] = 0xff80; /* -Inf */
    kw_tensor tf = kw_wrap(b, KW_DTYPE_F32, 2, (int64_t[]){3, 5}, wf), tp;
    assert_int_equal(kw_tensor_pack_weight_bf16_pairs(b, &tf, &tp), KW_E_SHAPE);
    kw_tensor tw = kw_wrap(b, KW_DTYPE_BF16, 2, (int64_t[]){3, 5}, w);
    assert_int_equal(kw_tensor_pack_weight_bf16_pairs(b, &tw, &tp), 0);
    assert_int_equal(kw_tensor_nbytes(&tp), (size_t)KW_PANEL_ROWS * 6 * 2);
    int32_t ids[2] = {0, 2};
    float rows[2 * 5];
    kw_tensor tid = kw_wrap(b, KW_DTYPE_I32, 1, (int64_t[]){2}, ids);
    kw_tensor tr = kw_wrap(b, KW_DTYPE_F32, 2, (int64_t[]){2, 5}, rows);
    assert_int_equal(kw_op_get_rows(b, &tr, &tp, &tid), 0);
    assert_int_equal(kw_backend_synchronize(b), 0);
    kw_tensor te;
    float erows[2 * 5];
    kw_tensor ter = kw_wrap(b, KW_DTYPE_F32, 2, (int64_t[]){2, 5}, erows);
    assert_int_equal(kw_tensor_pack_weight(b, &tw, &te), 0);
    assert_int_equal(kw_op_get_rows(b, &ter, &te, &tid), 0);
    assert_int_equal(kw_backend_synchronize(b), 0);
    for (int t = 0; t < 2; ++t)
        for (int k = 0; k < 5; ++k) {
            const uint32_t want = (uint32_t)w[ids[t] * 5 + k] << 16;
            assert_int_equal(kw_f32_bits(rows[t * 5 + k]), want);
            assert_int_equal(kw_f32_bits(erows[t * 5 + k]), want);
        }
    kw_tensor_free(&te);
    /* the layout holds bf16 only: a tensor that claims f32 in it is refused, not read at the wrong stride */
    kw_tensor bad = tp;
    bad.dtype = KW_DTYPE_F32;
    float x5[5] = {1, 2, 3, 4, 5}, y3[3];
    kw_tensor tx = kw_wrap(b, KW_DTYPE_F32, 2, (int64_t[]){1, 5}, x5);
    kw_tensor ty = kw_wrap(b, KW_DTYPE_F32, 2, (int64_t[]){1, 3}, y3);
    assert_int_equal(kw_op_matmul(b, &ty, &tx, &bad, NULL), KW_E_INVALID_ARG);
    assert_int_equal(kw_op_matmul(b, &ty, &tx, &tp, NULL), 0);
    kw_tensor_free(&tp);
    kw_backend_destroy(b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bf16act_is_its_oracle),
        cmocka_unit_test(test_bf16act_ftz_boundary),
        cmocka_unit_test(test_bf16act_within_the_exact_matmul),
        cmocka_unit_test(test_bf16act_contract),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
