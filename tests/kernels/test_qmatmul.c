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
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

#include "common/kw_half.h"
#include "common/kw_status.h"
#include "kernels/cpu/kw_cpu.h"
#include "kernels/kw_backend.h"
#include "kernels/kw_backend_impl.h"
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
 * scale. For a super-block layout the scales and offsets are fl(d * s) and fl(m * o) of each super-block's d and m:
 * in even super-blocks f16 values (exact products, as Q4_K and Q6_K), in odd ones any f32 (the products round). */
typedef struct kw_qcase_data {
    kw_quant_rows q;
    int8_t *codes;
    float *scales, *offsets, *sb_scales, *sb_offsets;
} kw_qcase_data;

/* Fills d's super-block numbers and rebuilds its scales and offsets from them (kw_qcase_make). */
static void kw_qcase_superblocks(kw_qcase_data *d, const kw_quant_layout *ql, int64_t N, int64_t K) {
    const int64_t sbs = N * (K / ql->superblock), per = ql->superblock / ql->group;
    d->sb_scales = malloc((size_t)sbs * sizeof(float));
    d->sb_offsets = ql->has_offset ? malloc((size_t)sbs * sizeof(float)) : NULL;
    assert_true(d->sb_scales && (d->sb_offsets || !ql->has_offset));
    for (int64_t b = 0; b < sbs; ++b) {
        const float f16 = kw_f16_to_f32(kw_f32_to_f16(kw_rand() * 0.01f));
        /* with offsets, every third super-block has any int8 s and o (-128 and 127 in its first two groups) and m > 0,
         * so negative o times positive m too; the others Q4_K's 6-bit s and o and m < 0 */
        const int wide = ql->has_offset && b % 3 == 2;
        d->sb_scales[b] = b % 2 ? kw_rand() * 0.01f : f16;
        if (d->sb_offsets) {
            d->sb_offsets[b] = fabsf(b % 2 ? kw_rand() * 0.02f : kw_f16_to_f32(kw_f32_to_f16(f16 * 2)));
            if (!wide) d->sb_offsets[b] = -d->sb_offsets[b];
        }
        for (int64_t g = b * per; g < (b + 1) * per; ++g) {
            /* Q4_K: 6-bit s and o; Q6_K: any int8 s */
            int s = ql->has_offset && !wide ? (int)(kw_next() % 64) : (int)(kw_next() % 256) - 128;
            int o = !ql->has_offset ? 0 : wide ? (int)(kw_next() % 256) - 128 : (int)(kw_next() % 64);
            if (wide && g - b * per < 2) {
                s = g == b * per ? -128 : 127;
                o = g == b * per ? 127 : -128;
            }
            d->scales[g] = d->sb_scales[b] * (float)s;
            if (d->offsets) d->offsets[g] = d->sb_offsets[b] * (float)o;
        }
    }
}

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
    if (ql.superblock) kw_qcase_superblocks(&d, &ql, N, K);
    for (int64_t g = 0; ql.f16_scales && g < groups; ++g) /* f16 scales: the odd groups' rounded to f16 */
        d.scales[g] = kw_f16_to_f32(kw_f32_to_f16(d.scales[g]));
    d.q = (kw_quant_rows){layout, N, K, d.codes, d.scales, d.offsets, d.sb_scales, d.sb_offsets};
    return d;
}

static void kw_qcase_free(kw_qcase_data *d) {
    free(d->codes), free(d->scales), free(d->offsets), free(d->sb_scales), free(d->sb_offsets);
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
    {KW_LAYOUT_QPANELS_S4, 1, 1, 32, 0},
    {KW_LAYOUT_QPANELS_S4, 13, 130, 96, 1},
    {KW_LAYOUT_QPANELS_U4, 7, 64, 64, 0},
    {KW_LAYOUT_QPANELS_U4, 50, 200, 160, 1},
    {KW_LAYOUT_QPANELS_S8, 3, 37, 32, 0},
    {KW_LAYOUT_QPANELS_S8, 70, 65, 128, 1},
    {KW_LAYOUT_QPANELS_S8_OFS, 9, 100, 64, 0},
    {KW_LAYOUT_QPANELS_S8_OFS, 2, 300, 256, 1},
    {KW_LAYOUT_QPANELS_S8_G16, 5, 20, 16, 0},
    {KW_LAYOUT_QPANELS_S8_G16, 33, 129, 272, 1},
    {KW_LAYOUT_QPANELS_U4_SB, 1, 1, 256, 0},
    {KW_LAYOUT_QPANELS_U4_SB, 7, 64, 512, 0},
    {KW_LAYOUT_QPANELS_U4_SB, 50, 200, 768, 1},
    {KW_LAYOUT_QPANELS_S8_G16_SB, 5, 20, 256, 0},
    {KW_LAYOUT_QPANELS_S8_G16_SB, 33, 129, 512, 1},
    {KW_LAYOUT_QPANELS_S6_G16_SB, 1, 1, 256, 0},
    {KW_LAYOUT_QPANELS_S6_G16_SB, 3, 64, 512, 1},
    {KW_LAYOUT_QPANELS_S6_G16_SB, 33, 129, 768, 1},
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
            for (int threads = 1; threads <= 3; ++threads) {
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
    static const enum kw_layout layouts[] = {
        KW_LAYOUT_QPANELS_S4,     KW_LAYOUT_QPANELS_U4,    KW_LAYOUT_QPANELS_S8,        KW_LAYOUT_QPANELS_S8_OFS,
        KW_LAYOUT_QPANELS_S8_G16, KW_LAYOUT_QPANELS_U4_SB, KW_LAYOUT_QPANELS_S8_G16_SB, KW_LAYOUT_QPANELS_S6_G16_SB};
    const int64_t M = 3, N = 70;
    for (size_t li = 0; li < sizeof layouts / sizeof layouts[0]; ++li) {
        kw_quant_layout ql;
        kw_layout_quant(layouts[li], &ql);
        const int64_t K = ql.superblock ? 512 : 64;
        kw_qcase_data d = kw_qcase_make(layouts[li], N, K);
        float w[70 * 512], x[3 * 512], want[3 * 70], got[3 * 70];
        /* row 67: the second panel; k 45 (plain) or 301 (super-block): the second group of 32 (super-block) */
        const int64_t at = 67 * K + (ql.superblock ? 301 : 45), g = at % K / ql.group;
        if (ql.superblock) { /* a step of one code is not lost to rounding: d = 0.5, s = 1 */
            d.sb_scales[67 * (K / ql.superblock) + g * ql.group / ql.superblock] = 0.5f;
            const int64_t per = ql.superblock / ql.group, first = g - g % per;
            for (int64_t j = first; j < first + per; ++j) /* the super-block's other groups: s = 0 */
                d.scales[67 * (K / ql.group) + j] = j == g ? 0.5f : 0.0f;
        } else {
            d.scales[67 * (K / ql.group) + g] = 0.5f;
        }
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
    { /* K = 96: a code out of range in a row's first 64 (the range check's vector blocks) and in its last 32 */
        kw_qcase_data t = kw_qcase_make(KW_LAYOUT_QPANELS_U4, 65, 96);
        t.codes[64 * 96 + 95] = 16;
        assert_int_equal(kw_tensor_pack_quantized(b, &t.q, &bad), KW_E_INVALID_ARG);
        assert_non_null(strstr(kw_error_detail(), "code 16 at (64, 95)"));
        t.codes[64 * 96 + 95] = 15;
        t.codes[3 * 96 + 10] = -1;
        assert_int_equal(kw_tensor_pack_quantized(b, &t.q, &bad), KW_E_INVALID_ARG);
        assert_non_null(strstr(kw_error_detail(), "code -1 at (3, 10)"));
        t.codes[3 * 96 + 10] = 0;
        assert_int_equal(kw_tensor_pack_quantized(b, &t.q, &bad), 0);
        kw_tensor_free(&bad);
        kw_qcase_free(&t);
    }
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

/* The super-block layouts against the plain ones they compress: the same rows packed both ways give the same bits on
 * every ISA, for decode (1..4 rows) and prefill shapes, in 0.59375 (U4_SB), 1.078125 (S8_G16_SB) and 0.828125
 * (S6_G16_SB) bytes per weight; scales that are not int8 multiples of d, missing d or m, K not whole super-blocks and
 * (S6_G16_SB) codes beyond 6 bits are refused. */
static void test_superblock_is_the_plain_layout(void **state) {
    (void)state;
    static const enum kw_layout pairs[3][2] = {{KW_LAYOUT_QPANELS_U4_SB, KW_LAYOUT_QPANELS_U4},
                                               {KW_LAYOUT_QPANELS_S8_G16_SB, KW_LAYOUT_QPANELS_S8_G16},
                                               {KW_LAYOUT_QPANELS_S6_G16_SB, KW_LAYOUT_QPANELS_S8_G16}};
    static const int per128[3] = {76, 138, 106}; /* bytes per 128 weights */
    static const int64_t shapes[][3] = {{1, 64, 256}, {2, 130, 1024}, {4, 70, 512}, {5, 64, 256}, {29, 200, 768}};
    const char *isas[3];
    const int n_isa = kw_backend_cpu_isas(isas);
    for (int p = 0; p < 3; ++p)
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; ++si) {
            const int64_t M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
            kw_qcase_data d = kw_qcase_make(pairs[p][0], N, K);
            kw_quant_rows plain = d.q;
            plain.layout = pairs[p][1];
            float *x = malloc((size_t)(M * K) * sizeof(float));
            const size_t ybytes = (size_t)(M * N) * sizeof(float);
            float *want = malloc(ybytes), *got = malloc(ybytes);
            assert_true(x && want && got);
            for (int64_t i = 0; i < M * K; ++i)
                x[i] = kw_rand() * 2.0f;
            for (int i = 0; i < n_isa; ++i) {
                kw_backend *b = kw_cpu(isas[i], 2);
                kw_tensor tp, ts;
                assert_int_equal(kw_tensor_pack_quantized(b, &plain, &tp), 0);
                assert_int_equal(kw_tensor_pack_quantized(b, &d.q, &ts), 0);
                const size_t weights = (size_t)((N + 63) / 64 * 64 * K);
                assert_int_equal(kw_tensor_nbytes(&ts) * 128, weights * (size_t)per128[p]);
                kw_mm(b, want, x, &tp, NULL, 0, M);
                memset(got, 0xff, ybytes);
                kw_mm(b, got, x, &ts, NULL, 0, M);
                char what[160];
                snprintf(what, sizeof what, "layout %d M=%lld N=%lld K=%lld on %s", (int)pairs[p][0], (long long)M,
                         (long long)N, (long long)K, isas[i]);
                kw_same_bits(got, want, M * N, what);
                kw_tensor_free(&tp);
                kw_tensor_free(&ts);
                kw_backend_destroy(b);
            }
            free(x), free(want), free(got);
            kw_qcase_free(&d);
        }

    kw_backend *b = kw_cpu("avx512", 1);
    kw_qcase_data d = kw_qcase_make(KW_LAYOUT_QPANELS_U4_SB, 65, 512);
    kw_tensor bad;
    kw_quant_rows q = d.q;
    q.k = 288; /* whole groups of 32, not whole super-blocks */
    assert_int_equal(kw_tensor_pack_quantized(b, &q, &bad), KW_E_SHAPE);
    q = d.q;
    q.sb_offsets = NULL;
    assert_int_equal(kw_tensor_pack_quantized(b, &q, &bad), KW_E_INVALID_ARG);
    q = d.q;
    q.sb_scales = NULL;
    assert_int_equal(kw_tensor_pack_quantized(b, &q, &bad), KW_E_INVALID_ARG);
    const float keep = d.scales[13];
    d.scales[13] = nextafterf(keep, INFINITY); /* one ulp off d * s */
    assert_int_equal(kw_tensor_pack_quantized(b, &d.q, &bad), KW_E_INVALID_ARG);
    assert_non_null(strstr(kw_error_detail(), "group 13 of row 0"));
    d.scales[13] = keep;
    d.offsets[64 * 16 + 3] = d.sb_offsets[64 * 2] * 200.0f; /* o beyond int8 */
    assert_int_equal(kw_tensor_pack_quantized(b, &d.q, &bad), KW_E_INVALID_ARG);
    kw_qcase_free(&d);
    d = kw_qcase_make(KW_LAYOUT_QPANELS_S6_G16_SB, 65, 512);
    q = d.q;
    q.k = 272; /* whole groups of 16, not whole super-blocks */
    assert_int_equal(kw_tensor_pack_quantized(b, &q, &bad), KW_E_SHAPE);
    d.codes[7] = 32; /* a Q6_K code (S8_G16) that 6 bits do not hold */
    assert_int_equal(kw_tensor_pack_quantized(b, &d.q, &bad), KW_E_INVALID_ARG);
    assert_non_null(strstr(kw_error_detail(), "outside -32..31"));
    kw_qcase_free(&d);
    kw_backend_destroy(b);
}

/* One row x (q->k values) times q on every ISA's CPU backend (one thread, so MXCSR is the caller's; csr_bits set in
 * it around the matmul on x86): each result must be want's bits (q->n values, at most 130). */
static void kw_every_isa_same_bits(const kw_quant_rows *q, const float *x, const float *want, unsigned csr_bits,
                                   const char *what) {
    const char *isas[3];
    const int n_isa = kw_backend_cpu_isas(isas);
    float got[130];
    assert_true(q->n <= 130);
    for (int i = 0; i < n_isa; ++i) {
        kw_backend *b = kw_cpu(isas[i], 1);
        kw_tensor tq;
        assert_int_equal(kw_tensor_pack_quantized(b, q, &tq), 0);
        memset(got, 0xff, sizeof got);
#if defined(__x86_64__) || defined(__i386__)
        const unsigned csr = _mm_getcsr();
        _mm_setcsr(csr | csr_bits);
        kw_mm(b, got, x, &tq, NULL, 0, 1);
        _mm_setcsr(csr);
#else
        (void)csr_bits;
        kw_mm(b, got, x, &tq, NULL, 0, 1);
#endif
        char label[128];
        snprintf(label, sizeof label, "%s on %s", what, isas[i]);
        kw_same_bits(got, want, q->n, label);
        kw_tensor_free(&tq);
        kw_backend_destroy(b);
    }
}

/* The 4-bit decode rows' per-group rebuilds (kernels/cpu/kw_cpu_matmul.c, kw_qmm_row_vbmi): rows of groups built to
 * take each one, in turn along k, give the f32 matmul's bits on every ISA, for U4 and U4_SB, with x zero outside one
 * kind's groups (so no kind's rounding hides another's). Kind 0: a = d * s, b = -d * o (f16 d): the fold
 * (w = fma(128 + u, a, b - 128 a)) holds. Kind 1: the same a, b any 24-bit value: b - 128 a rounds, the fold must not
 * be taken. Kind 2 (U4 only, x = 1 at one k so y = w): a any 24-bit value in [1, 1.5) 2^-8 and b near -8 a on the
 * grid of 128 ulp(a): b - 128 a is exact, but u * a rounds and u * a + b does not for u near 8, so a fold would differ
 * from fl(u * a) + b. Kind 3: a up to 2^122, so 128 a overflows: only the convert-and-multiply rebuild is exact. */
static void kw_u4_kind(int kind, uint64_t *rng, float *d, float *m) {
    const float f16 = kw_f16_to_f32(kw_f32_to_f16(0.001f + fabsf(kw_rand_from(rng)) * 0.01f));
    const float any = 0.001f + fabsf(kw_rand_from(rng)) * 0.01f; /* a full 24-bit significand, almost surely */
    switch (kind) {
    case 0:
        *d = f16, *m = -f16;
        break;
    case 1:
        *d = f16, *m = -any;
        break;
    case 2: /* a in [1, 1.5) 2^-8, m a multiple of 128 ulp(a) (set by the caller, b = m with o = 1) */
        *d = 0x1p-8f * (1.0f + fabsf(kw_rand_from(rng)) * 0.5f), *m = 0.0f;
        break;
    default:
        *d = 0x1p116f, *m = -f16;
        break;
    }
}

static void test_u4_rebuild_paths(void **state) {
    (void)state;
    const int64_t N = 130, K = 1024, G = 32, groups = K / G, sbs = K / 256;
    uint64_t rng = 0x51ed2701ull;
    int8_t *codes = malloc((size_t)(N * K));
    float *scales = malloc((size_t)(N * groups) * sizeof(float)),
          *offsets = malloc((size_t)(N * groups) * sizeof(float));
    float *sb_d = malloc((size_t)(N * sbs) * sizeof(float)), *sb_m = malloc((size_t)(N * sbs) * sizeof(float));
    float *w = malloc((size_t)(N * K) * sizeof(float)), *x = malloc((size_t)K * sizeof(float));
    float want[130];
    assert_true(codes && scales && offsets && sb_d && sb_m && w && x);
    for (int64_t i = 0; i < N * K; ++i)
        codes[i] = (int8_t)(kw_next() % 16);
    for (int sb_layout = 0; sb_layout < 2; ++sb_layout) {
        /* U4: the kind of group g is g % 4; U4_SB: of super-block b, b % 4 (one d, m per super-block; kind 2 needs a
         * free b, so it is kind 1 there) */
        for (int64_t n = 0; n < N; ++n)
            for (int64_t b = 0; b < sbs; ++b) {
                float d, m;
                kw_u4_kind(b % 4 == 2 ? 1 : (int)(b % 4), &rng, &d, &m);
                sb_d[n * sbs + b] = d, sb_m[n * sbs + b] = m;
                for (int64_t g = b * 8; g < b * 8 + 8; ++g) {
                    const int kind = (int)(g % 4);
                    float gd = d, gm = m;
                    if (!sb_layout) kw_u4_kind(kind, &rng, &gd, &gm);
                    int s = 1 + (int)(kw_next() % 63), o = (int)(kw_next() % 64);
                    if (!sb_layout && kind == 2) /* b near -8 a on the grid of 128 ulp(a) = 2^-24 */
                        s = 1, o = 1, gm = -floorf(8.0f * gd * 0x1p24f) * 0x1p-24f;
                    scales[n * groups + g] = gd * (float)s;
                    offsets[n * groups + g] = gm * (float)o;
                }
            }
        const kw_quant_rows q = {
            sb_layout ? KW_LAYOUT_QPANELS_U4_SB : KW_LAYOUT_QPANELS_U4, N, K, codes, scales, offsets, sb_d, sb_m};
        kw_ref_quant_dequant(w, &q);
        /* one x per kind, zero outside its groups, so no kind's rounding hides another's */
        for (int kind = 0; kind < 4; ++kind) {
            for (int64_t k = 0; k < K; ++k) {
                const int at = sb_layout ? ((k / 256) % 4 == 2 ? 1 : (int)((k / 256) % 4)) : (int)((k / G) % 4);
                x[k] = at == kind ? kw_rand_from(&rng) * (kind == 3 ? 0x1p-20f : 1.0f) : 0.0f; /* kind 3: finite sums */
            }
            if (kind == 2 && !sb_layout) { /* y = w at one k of a kind-2 group: a wrong fold's few ulps stay visible */
                memset(x, 0, (size_t)K * sizeof(float));
                x[2 * G + 5] = 1.0f;
            }
            kw_backend *ref = kw_cpu("scalar", 1);
            kw_tensor tw = kw_wrap(ref, KW_DTYPE_F32, 2, (int64_t[]){N, K}, w);
            kw_mm(ref, want, x, &tw, NULL, 0, 1);
            kw_backend_destroy(ref);
            char what[64];
            snprintf(what, sizeof what, "%s rebuild kind %d", sb_layout ? "U4_SB" : "U4", kind);
            kw_every_isa_same_bits(&q, x, want, 0, what);
        }
    }
    free(codes), free(scales), free(offsets), free(sb_d), free(sb_m), free(w), free(x);
}

/* The U4 rebuilds under MXCSR.FTZ (a host built with -ffast-math may leave it set): scale a = 2^-115 and offset b =
 * 2^-108 + 2^-131 make b - 128 a = 2^-131, a subnormal that FTZ flushes, with its Fast2Sum error flushed too, so a fold
 * taken there gives (128 + u) 2^-115 where fl(fl(u a) + b) is that + 2^-131 (representable): every ISA must give the
 * scalar backend's bits under FTZ and under FTZ + DAZ, as without them. One thread: MXCSR is the caller's. */
static void test_u4_rebuild_under_ftz(void **state) {
    (void)state;
#if defined(__x86_64__) || defined(__i386__)
    const int64_t N = 64, K = 256, groups = K / 32;
    int8_t codes[64 * 256];
    float scales[64 * 8], offsets[64 * 8], x[256], want[64];
    for (int64_t i = 0; i < N * K; ++i)
        codes[i] = (int8_t)(kw_next() % 16);
    for (int64_t i = 0; i < N * groups; ++i) {
        scales[i] = 0x1p-115f;
        offsets[i] = 0x1p-108f + 0x1p-131f;
    }
    for (int64_t k = 0; k < K; ++k)
        x[k] = k == 35 ? 1.0f : 0.0f; /* y = w(n, 35), one weight of group 1: a wrong 2^-131 stays visible */
    const kw_quant_rows q = {KW_LAYOUT_QPANELS_U4, N, K, codes, scales, offsets, NULL, NULL};
    const unsigned csr = _mm_getcsr();
    for (int mode = 0; mode < 3; ++mode) {
        const unsigned bits = mode == 0 ? 0 : mode == 1 ? 0x8000 : 0x8040; /* none, FTZ, FTZ + DAZ */
        kw_backend *ref = kw_cpu("scalar", 1);
        kw_tensor rq;
        assert_int_equal(kw_tensor_pack_quantized(ref, &q, &rq), 0);
        _mm_setcsr(csr | bits);
        kw_mm(ref, want, x, &rq, NULL, 0, 1);
        _mm_setcsr(csr);
        kw_tensor_free(&rq);
        kw_backend_destroy(ref);
        char what[64];
        snprintf(what, sizeof what, "U4 rebuild, MXCSR mode %d", mode);
        kw_every_isa_same_bits(&q, x, want, bits, what);
    }
#endif
}

/* kw_backend_cpu_layout_fast: QPANELS_S6_G16_SB only on AVX-512 with VBMI (the model then keeps Q6_K in it), every
 * other supported layout always, nothing for a NULL backend. */
static void test_s6_is_chosen_with_vbmi(void **state) {
    (void)state;
    const char *isas[3];
    const int n_isa = kw_backend_cpu_isas(isas);
    __builtin_cpu_init();
    const int vbmi = __builtin_cpu_supports("avx512vbmi") ? 1 : 0;
    for (int i = 0; i < n_isa; ++i) {
        kw_backend *b = kw_cpu(isas[i], 1);
        assert_int_equal(kw_backend_cpu_layout_fast(b, KW_LAYOUT_QPANELS_S6_G16_SB),
                         strcmp(isas[i], "avx512") == 0 && vbmi);
        assert_int_equal(kw_backend_cpu_layout_fast(b, KW_LAYOUT_QPANELS_S8_G16_SB), 1);
        assert_int_equal(kw_backend_supports_layout(b, KW_LAYOUT_QPANELS_S6_G16_SB), 1);
        kw_backend_destroy(b);
    }
    assert_int_equal(kw_backend_cpu_layout_fast(NULL, KW_LAYOUT_QPANELS_S6_G16_SB), 0);
}

/* The int8-activation matmul of tq (on b) over x (M rows): all rows at once, row by row and in uneven sections, each
 * the bits of want (which holds the bias when bias is not NULL); get_rows of rows 0 and N - 1 gives w's rows. got: M x
 * N floats of scratch. */
static void kw_x8_expect(kw_backend *b, const kw_tensor *tq, const float *x, const float *bias, const float *want,
                         const float *w, float *got, int64_t M, const char *what) {
    const int64_t N = tq->ne[0], K = tq->ne[1];
    const size_t ybytes = (size_t)(M * N) * sizeof(float);
    memset(got, 0xff, ybytes);
    kw_mm(b, got, x, tq, bias, 0, M);
    kw_same_bits(got, want, M * N, what);
    memset(got, 0xff, ybytes);
    for (int64_t m = 0; m < M; ++m)
        kw_mm(b, got, x, tq, bias, m, m + 1);
    kw_same_bits(got, want, M * N, "x8 row by row");
    memset(got, 0xff, ybytes);
    for (int64_t m = 0, step = 5; m < M; m += step, step += 3)
        kw_mm(b, got, x, tq, bias, m, m + step < M ? m + step : M);
    kw_same_bits(got, want, M * N, "x8 in sections");

    int32_t ids[2] = {0, (int32_t)(N - 1)};
    float *rows = malloc((size_t)(2 * K) * sizeof(float));
    assert_non_null(rows);
    kw_tensor tid = kw_wrap(b, KW_DTYPE_I32, 1, (int64_t[]){2}, ids);
    kw_tensor tr = kw_wrap(b, KW_DTYPE_F32, 2, (int64_t[]){2, K}, rows);
    assert_int_equal(kw_op_get_rows(b, &tr, tq, &tid), 0);
    assert_int_equal(kw_backend_synchronize(b), 0);
    for (int t = 0; t < 2; ++t)
        kw_same_bits(rows + t * K, w + ids[t] * K, K, "x8 get_rows");
    free(rows);
}

/* QPANELS_U4_X8, S8_G16_X8 and S8_X8 (int8 activations): on every ISA, 1 to 3 threads, all rows at once, row by row
 * and in sections (decode rows and prefill tiles; odd N: rows past a panel; K not whole 256s), the bits of
 * kw_ref_quant_matmul_x8 plus the bias; within the activation rounding of the f32 weight's matmul
 * (|y - y_f32| <= sum_g d_g / 2 * sum_k |w| + (K + 8) 2^-23 sum |x w|, and for S8_X8 + sum_g 127 |f16(d_g) - d_g| *
 * sum_k |w|); get_rows gives the dequantized rows; a zero
 * group and a NaN in x follow the rule; one changed code changes exactly its column. */
static void test_x8_matmul_is_its_oracle(void **state) {
    (void)state;
    static const int64_t cases[][4] = {{1, 1, 32, 4},
                                       {7, 64, 64, 4},
                                       {50, 200, 160, 4},
                                       {9, 130, 256, 4},
                                       {3, 37, 96, 4},
                                       {1, 1, 32, 8},
                                       {6, 70, 64, 8},
                                       {45, 129, 192, 8},
                                       {4, 300, 256, 8},
                                       {1, 1, 32, 32},
                                       {2, 37, 96, 32},
                                       {5, 70, 160, 32},
                                       {13, 129, 288, 32},
                                       {50, 65, 64, 32},
                                       {3, 200, 1024, 32},
                                       /* decode with panels that do not divide among 2 or 3 threads: 3 and 9 (SmolLM2's
                                        * k/v and q/o), 4 with a last panel of 40 columns, 3 with one of 22 */
                                       {1, 192, 768, 32},
                                       {2, 576, 256, 32},
                                       {1, 232, 576, 8},
                                       {3, 150, 1024, 4},
                                       {1, 576, 256, 4},
                                       /* decode on 1.25 MB of weights: on every thread even while the workers sleep
                                        * (KW_MM_WAKE_MIN_BYTES; the smaller decode cases run on the caller alone
                                        * then) */
                                       {1, 576, 2048, 32}};
    const char *isas[3];
    const int n_isa = kw_backend_cpu_isas(isas);
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ++ci) {
        const int64_t M = cases[ci][0], N = cases[ci][1], K = cases[ci][2], G = K / 32;
        const enum kw_layout layout = cases[ci][3] == 4   ? KW_LAYOUT_QPANELS_U4_X8
                                      : cases[ci][3] == 8 ? KW_LAYOUT_QPANELS_S8_G16_X8
                                                          : KW_LAYOUT_QPANELS_S8_X8;
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
        if (M >= 3) x[2 * K + 3] = INFINITY;                /* and an infinity in its group 0 */
        if (K >= 96)                                        /* row 0, group 2: below 1e-30, all zero */
            for (int k = 0; k < 32; ++k)
                x[64 + k] = 1e-32f * (float)(k - 7);
        if (M >= 2) /* row 1, group 0: amax 127, so x * (127 / amax) = x: ties, rounded to even */
            for (int k = 0; k < 32; ++k)
                x[K + k] = k == 0 ? -127.0f : (float)(k - 16) + 0.5f;
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
                    const double dg = amax / 127.0f; /* the rule's f32 d */
                    err += dg / 2.0 * wsum;
                    /* S8_X8 multiplies by f16(d): each |q| <= 127 code is off by |f16(d) - d| more (2^-11 of d while
                     * d is a normal f16; the whole group when f16(d) is 0) */
                    if (layout == KW_LAYOUT_QPANELS_S8_X8) err += 127.0 * fabs(kw_round_f16((float)dg) - dg) * wsum;
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
            for (int threads = 1; threads <= 3; ++threads) {
                kw_backend *b = kw_cpu(isas[i], threads);
                assert_int_equal(kw_backend_supports_layout(b, layout), 1);
                kw_tensor tq;
                assert_int_equal(kw_tensor_pack_quantized(b, &d.q, &tq), 0);
                assert_int_equal(tq.layout, layout);
                if (layout == KW_LAYOUT_QPANELS_S8_X8) /* 1.0625 bytes per weight: 136 per 128 */
                    assert_int_equal(kw_tensor_nbytes(&tq) * 128, (size_t)((N + 63) / 64 * 64 * K) * 136);
                snprintf(what, sizeof what, "x8 layout %d M=%lld N=%lld K=%lld, %s, %d threads", (int)layout,
                         (long long)M, (long long)N, (long long)K, isas[i], threads);
                kw_x8_expect(b, &tq, x, bias, want, w, got, M, what);

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
    /* S8_X8 keeps its scales as f16: a scale that is no f16 value is refused, an f16 subnormal and a NaN are not */
    kw_backend *b = kw_cpu(isas[n_isa - 1], 1);
    kw_qcase_data d = kw_qcase_make(KW_LAYOUT_QPANELS_S8_X8, 3, 64);
    kw_tensor t;
    d.scales[5] = 0x1p-24f;
    d.scales[4] = NAN;
    assert_int_equal(kw_quant_rows_first_non_f16_scale(&d.q), -1);
    assert_int_equal(kw_tensor_pack_quantized(b, &d.q, &t), 0);
    kw_tensor_free(&t);
    d.scales[3] = nextafterf(kw_f16_to_f32(kw_f32_to_f16(0.25f)), 1.0f);
    d.scales[5] = 0x1p-25f;                                       /* below f16's smallest subnormal */
    assert_int_equal(kw_quant_rows_first_non_f16_scale(&d.q), 3); /* the first of the two */
    assert_int_equal(kw_tensor_pack_quantized(b, &d.q, &t), KW_E_INVALID_ARG);
    d.scales[3] = 0.25f;
    assert_int_equal(kw_quant_rows_first_non_f16_scale(&d.q), 5);
    assert_int_equal(kw_tensor_pack_quantized(b, &d.q, &t), KW_E_INVALID_ARG);
    kw_qcase_free(&d);
    kw_backend_destroy(b);
}

/* S8_X8's rule by hand (Q8_0's activation scale is ggml's f16 d): K = 32, x = 1 then 31 times 0.5, so amax = 1,
 * d = 1 / 127 (no f16 value: f16(d) = 1032 * 2^-17), q = 127 then 64 (63.5, even); codes all 1 (isum 2111) under
 * scales 1 and 0.5. y = fl(scale * f16(d)) * isum = 2111 * 1032 * 2^-17 (exact) and half of it, on every ISA, decode
 * rows and prefill tiles; the f32-d rule's fl(isum * d) would be another float. */
static void test_x8_s8_rule_f16_scale(void **state) {
    (void)state;
    const int64_t M = 6, N = 2, K = 32;
    kw_qcase_data d = kw_qcase_make(KW_LAYOUT_QPANELS_S8_X8, N, K);
    for (int64_t i = 0; i < N * K; ++i)
        d.codes[i] = 1;
    d.scales[0] = 1.0f;
    d.scales[1] = 0.5f;
    float x[6 * 32], want[6 * 2], w[2 * 32], got[6 * 2];
    for (int64_t i = 0; i < M * K; ++i)
        x[i] = i % K == 0 ? 1.0f : 0.5f;
    const float y = 2178552.0f * 0x1p-17f; /* 2111 * 1032 */
    assert_true(kw_f32_bits(y) != kw_f32_bits(2111.0f * (1.0f / 127.0f)));
    for (int64_t m = 0; m < M; ++m)
        want[m * N] = y, want[m * N + 1] = 0.5f * y;
    float oracle[6 * 2];
    kw_ref_quant_matmul_x8(oracle, x, M, &d.q);
    kw_same_bits(oracle, want, M * N, "x8 s8 rule: the oracle");
    kw_ref_quant_dequant(w, &d.q);
    const char *isas[3];
    const int n_isa = kw_backend_cpu_isas(isas);
    for (int i = 0; i < n_isa; ++i) {
        kw_backend *b = kw_cpu(isas[i], 2);
        kw_tensor tq;
        assert_int_equal(kw_tensor_pack_quantized(b, &d.q, &tq), 0);
        kw_x8_expect(b, &tq, x, NULL, want, w, got, M, isas[i]);
        kw_tensor_free(&tq);
        kw_backend_destroy(b);
    }
    kw_qcase_free(&d);
}

/* The three int8-activation layouts in super-blocks (QPANELS_U4_SB_X8, S8_G16_SB_X8, S6_G16_SB_X8) against the X8
 * layouts they compress (U4_X8, S8_G16_X8 for both others) and kw_ref_quant_matmul_x8: the same rows packed both ways
 * give the same bits as the oracle on every ISA, 1 to 3 threads, all rows at once (decode up to 4 rows, prefill tiles
 * beyond), row by row and in sections, odd N; in 0.59375, 1.078125 and 0.828125 bytes per weight; get_rows gives the
 * dequantized rows; a changed s (o) changes exactly its row's column; K not whole super-blocks and a missing d or m
 * are refused. */
static void test_x8_superblock_is_x8(void **state) {
    (void)state;
    static const enum kw_layout pairs[3][2] = {{KW_LAYOUT_QPANELS_U4_SB_X8, KW_LAYOUT_QPANELS_U4_X8},
                                               {KW_LAYOUT_QPANELS_S8_G16_SB_X8, KW_LAYOUT_QPANELS_S8_G16_X8},
                                               {KW_LAYOUT_QPANELS_S6_G16_SB_X8, KW_LAYOUT_QPANELS_S8_G16_X8}};
    static const int per128[3] = {76, 138, 106}; /* bytes per 128 weights */
    /* {50, 70, 256}: two panels, so with 2 and 3 threads blocks of 48 rows and 2 rows (S6_G16_SB_X8: items with and
     * without the prefill widening in one call); {1, 192, 768} and {2, 232, 768}: decode on 3 and 4 panels, which do
     * not divide among 2 and 3 threads */
    static const int64_t shapes[][3] = {{1, 1, 256},   {1, 64, 1024}, {2, 130, 512}, {3, 37, 768},
                                        {4, 70, 512},  {5, 64, 256},  {9, 193, 512}, {29, 200, 768},
                                        {50, 70, 256}, {1, 192, 768}, {2, 232, 768}};
    const char *isas[3];
    const int n_isa = kw_backend_cpu_isas(isas);
    for (int p = 0; p < 3; ++p)
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; ++si) {
            const int64_t M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
            kw_qcase_data d = kw_qcase_make(pairs[p][0], N, K);
            kw_quant_rows plain = d.q;
            plain.layout = pairs[p][1];
            float *x = malloc((size_t)(M * K) * sizeof(float)), *w = malloc((size_t)(N * K) * sizeof(float));
            const size_t ybytes = (size_t)(M * N) * sizeof(float);
            float *want = malloc(ybytes), *got = malloc(ybytes), *old = malloc(ybytes);
            assert_true(x && w && want && got && old);
            for (int64_t i = 0; i < M * K; ++i)
                x[i] = kw_rand() * 2.0f;
            if (K >= 512) memset(x + 256, 0, 32 * sizeof(float)); /* row 0: a zero activation group */
            for (int64_t k = 0; M >= 2 && k < K; ++k) /* row 1: every group below 1e-30, so its outputs are +0 */
                x[K + k] = 1e-32f * (float)(k % 13 - 6);
            if (M >= 3) x[2 * K + 5] = INFINITY; /* row 2: one infinity, so NaN outputs (no NaN in x) */
            kw_ref_quant_matmul_x8(want, x, M, &plain);
            kw_ref_quant_dequant(w, &plain);
            for (int i = 0; i < n_isa; ++i)
                for (int threads = 1; threads <= 3; ++threads) {
                    kw_backend *b = kw_cpu(isas[i], threads);
                    assert_int_equal(kw_backend_supports_layout(b, pairs[p][0]), 1);
                    kw_tensor tp, ts;
                    assert_int_equal(kw_tensor_pack_quantized(b, &plain, &tp), 0);
                    assert_int_equal(kw_tensor_pack_quantized(b, &d.q, &ts), 0);
                    assert_int_equal(ts.layout, pairs[p][0]);
                    const size_t weights = (size_t)((N + 63) / 64 * 64 * K);
                    assert_int_equal(kw_tensor_nbytes(&ts) * 128, weights * (size_t)per128[p]);
                    char what[160];
                    snprintf(what, sizeof what, "x8 sb layout %d M=%lld N=%lld K=%lld on %s, %d threads",
                             (int)pairs[p][0], (long long)M, (long long)N, (long long)K, isas[i], threads);
                    memset(old, 0xff, ybytes);
                    kw_mm(b, old, x, &tp, NULL, 0, M);
                    kw_same_bits(old, want, M * N, "x8 sb: the plain layout");
                    kw_x8_expect(b, &ts, x, NULL, want, w, got, M, what);
                    kw_tensor_free(&tp);
                    kw_tensor_free(&ts);
                    kw_backend_destroy(b);
                }
            free(x), free(w), free(want), free(got), free(old);
            kw_qcase_free(&d);
        }

    /* a changed scale (one more s in an even, f16, super-block) of the last row: only its column moves */
    kw_backend *b = kw_cpu("avx512", 2);
    for (int p = 0; p < 3; ++p) {
        const int64_t M = 3, N = 70, K = 512, per = 256 / (p == 0 ? 32 : 16), J = K / (p == 0 ? 32 : 16);
        kw_qcase_data d = kw_qcase_make(pairs[p][0], N, K);
        float *x = malloc((size_t)(M * K) * sizeof(float)), *want = malloc((size_t)(M * N) * sizeof(float));
        float *got = malloc((size_t)(M * N) * sizeof(float));
        assert_true(x && want && got);
        for (int64_t i = 0; i < M * K; ++i)
            x[i] = kw_rand() * 2.0f;
        kw_tensor t;
        assert_int_equal(kw_tensor_pack_quantized(b, &d.q, &t), 0);
        kw_mm(b, want, x, &t, NULL, 0, M);
        kw_tensor_free(&t);
        const int64_t g = (N - 1) * J + 3, sb = (N - 1) * (K / 256) + 3 / per;
        float *moved = p == 0 ? &d.offsets[g] : &d.scales[g];
        const float keep = *moved, base = p == 0 ? d.sb_offsets[sb] : d.sb_scales[sb];
        *moved = keep == base * 127.0f ? keep - base : keep + base; /* o (s) one off: still an int8 multiple */
        assert_int_equal(kw_tensor_pack_quantized(b, &d.q, &t), 0);
        kw_mm(b, got, x, &t, NULL, 0, M);
        kw_tensor_free(&t);
        *moved = keep;
        for (int64_t m = 0; m < M; ++m)
            for (int64_t n = 0; n < N; ++n)
                assert_true((kw_f32_bits(got[m * N + n]) != kw_f32_bits(want[m * N + n])) == (n == N - 1));
        kw_quant_rows q = d.q;
        q.k = 288; /* whole groups of 32 (16), not whole super-blocks */
        assert_int_equal(kw_tensor_pack_quantized(b, &q, &t), KW_E_SHAPE);
        q = d.q;
        q.sb_scales = NULL;
        assert_int_equal(kw_tensor_pack_quantized(b, &q, &t), KW_E_INVALID_ARG);
        free(x), free(want), free(got);
        kw_qcase_free(&d);
    }
    kw_backend_destroy(b);
}

/* The panel row whose byte is at of an S8_G16_X8 panel's (groups of 64 f32 scales and 1024 code bytes), or -1 for a
 * scale's byte. */
static int64_t kw_x8_code_row(size_t at) {
    const size_t in_group = at % (256 + 1024);
    if (in_group < 256) return -1;
    return (int64_t)((in_group - 256) / 256 * 16 + (in_group - 256) % 64 / 4);
}

/* The loader's group packer (kw__cpu_x8_pack_group) against the per-code packer it replaced (kw__cpu_x8_pack_code),
 * byte for byte, on the six int8-activation layouts: random codes with each layout's extremes, every strip and
 * lane position, panels of 64 rows and partial ones (63, 17, 16, 1 row: the other rows' bytes stay zero), codes read
 * at a row stride past the group. */
static void test_x8_pack_group_is_per_code(void **state) {
    (void)state;
    static const enum kw_layout layouts[] = {KW_LAYOUT_QPANELS_U4_X8,        KW_LAYOUT_QPANELS_S8_G16_X8,
                                             KW_LAYOUT_QPANELS_U4_SB_X8,     KW_LAYOUT_QPANELS_S8_G16_SB_X8,
                                             KW_LAYOUT_QPANELS_S6_G16_SB_X8, KW_LAYOUT_QPANELS_S8_X8};
    static const int64_t row_counts[] = {64, 63, 17, 16, 1};
    enum { BLOCK = 64 * 32 };
    for (size_t li = 0; li < sizeof layouts / sizeof layouts[0]; ++li) {
        kw_quant_layout ql;
        assert_int_equal(kw_layout_quant(layouts[li], &ql), 1);
        const int64_t G = ql.group, stride = 3 * G, span = ql.code_max - ql.code_min + 1;
        int8_t *src = malloc((size_t)(64 * stride));
        assert_non_null(src);
        for (int64_t i = 0; i < 64 * stride; ++i) /* rows 0 and 1: the range's ends in every position */
            src[i] = (int8_t)(i < stride       ? ql.code_min
                              : i < 2 * stride ? ql.code_max
                                               : ql.code_min + (int)(kw_next() % (uint64_t)span));
        for (size_t ri = 0; ri < sizeof row_counts / sizeof row_counts[0]; ++ri) {
            const int64_t rows = row_counts[ri];
            uint8_t want[BLOCK] = {0}, got[BLOCK] = {0};
            const int8_t *group = src + G; /* the middle group of each row */
            for (int64_t r = 0; r < rows; ++r)
                for (int64_t kk = 0; kk < G; ++kk)
                    kw__cpu_x8_pack_code(layouts[li], want, r, kk, group[r * stride + kk]);
            kw__cpu_x8_pack_group(layouts[li], got, group, stride, rows);
            for (int i = 0; i < BLOCK; ++i)
                if (got[i] != want[i])
                    fail_msg("layout %d, %lld rows: byte %d is 0x%02x, the per-code packer's 0x%02x", (int)layouts[li],
                             (long long)rows, i, got[i], want[i]);
        }
        free(src);
    }

    /* the prefill widening of S6_G16_SB_X8 (kw__cpu_x8_widen6_panel) gives the S8_G16_X8 panel of the same rows
     * byte for byte, on every ISA; a partial panel (37 rows: the code bytes of rows 37..63 are not compared, 0 in the
     * packed layout and 0x60, zero bytes widened, in the other; their scales are +0 in both), 3 super-blocks */
    const char *isas[3];
    const int n_isa = kw_backend_cpu_isas(isas);
    const int64_t N = 37, K = 768;
    kw_qcase_data d = kw_qcase_make(KW_LAYOUT_QPANELS_S6_G16_SB_X8, N, K);
    kw_quant_rows q8 = d.q;
    q8.layout = KW_LAYOUT_QPANELS_S8_G16_X8; /* the scales fl(d * s) as kw_qcase_make gives them */
    for (int i = 0; i < n_isa; ++i) {
        kw_backend *b = kw_cpu(isas[i], 1);
        kw_tensor t6, t8;
        assert_int_equal(kw_tensor_pack_quantized(b, &d.q, &t6), 0);
        assert_int_equal(kw_tensor_pack_quantized(b, &q8, &t8), 0);
        const size_t bytes = kw_tensor_nbytes(&t8);
        char *wide = malloc(bytes);
        assert_non_null(wide);
        memset(wide, 0x5a, bytes);
        kw__cpu_x8_widen6_panel(kw__cpu(b)->isa, wide, t6.data, K);
        for (size_t at = 0; at < bytes; ++at)
            if (wide[at] != ((const char *)t8.data)[at] && kw_x8_code_row(at) < N)
                fail_msg("widened S6_G16_SB_X8 on %s: byte %zu is 0x%02x, S8_G16_X8's 0x%02x", isas[i], at,
                         (uint8_t)wide[at], ((const uint8_t *)t8.data)[at]);
        free(wide);
        kw_tensor_free(&t6);
        kw_tensor_free(&t8);
        kw_backend_destroy(b);
    }
    kw_qcase_free(&d);
}

/* The loader's super-block int search with the reciprocal (kw__quant_sb_int_inv) gives kw__quant_sb_int's status
 * and s for every int multiple of d from -130 to 130, one ulp either side of it, and the special values, over normal,
 * subnormal, huge (products overflow), zero, infinite and NaN d. */
static void test_quant_sb_int_inv(void **state) {
    (void)state;
    const float nan_x86 = -NAN; /* inf * 0's bits on x86, so d = inf gives s = 0 for it */
    float ds[64] = {0.0f,  -0.0f, INFINITY, -INFINITY, NAN,      0x1p-126f, 0x1p-130f, 0x1p-149f,
                    3e38f, -2.5f, 1e-30f,   -7e-20f,   0x1p+60f, 1.0f,      -1.0f,     0x1.fffffep+127f};
    int nd = 16;
    while (nd < 64) {
        const float f16 = kw_f16_to_f32(kw_f32_to_f16(kw_rand() * 0.05f));
        ds[nd++] = f16;
        ds[nd++] = kw_rand() * 0.01f;
    }
    for (int i = 0; i < nd; ++i) {
        const float d = ds[i], inv = 1.0f / d;
        float values[261 * 3 + 6] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, nan_x86};
        int nv = 6;
        for (int t = -130; t <= 130; ++t) { /* and the ints just outside int8 */
            const float v = d * (float)t;
            values[nv++] = v;
            values[nv++] = nextafterf(v, INFINITY);
            values[nv++] = nextafterf(v, -INFINITY);
        }
        for (int k = 0; k < nv; ++k) {
            int8_t want = 99, got = 99;
            const int rc_want = kw__quant_sb_int(values[k], d, &want);
            const int rc_got = kw__quant_sb_int_inv(values[k], d, inv, &got);
            if (rc_want != rc_got || want != got)
                fail_msg("d %a, value %a: %d, s %d with the reciprocal; %d, s %d without", (double)d, (double)values[k],
                         rc_got, got, rc_want, want);
        }
    }
}

/* kw_op_matmul_shared: n weights over one x give each weight's kw_op_matmul bits, on every ISA, 1 to 3 threads,
 * decode and prefill rows, with and without biases: int8-activation weights of mixed layouts (one job, x quantized
 * once), exact quantized panels beside an f32 packed weight (one job), and mixes that take x differently or need
 * per-thread scratch (run one by one). Bad calls are refused. */
static void test_shared_matmul_is_each_matmul(void **state) {
    (void)state;
    enum { SETS = 3, PER = 3 };
    static const enum kw_layout sets[SETS][PER] = {
        {KW_LAYOUT_QPANELS_U4_SB_X8, KW_LAYOUT_QPANELS_S8_X8, KW_LAYOUT_QPANELS_S6_G16_SB_X8},
        {KW_LAYOUT_QPANELS_U4_SB, KW_LAYOUT_PANELS,
         KW_LAYOUT_QPANELS_S6_G16_SB}, /* S6: widened (own scratch) at M > 4 */
        {KW_LAYOUT_QPANELS_U4_SB_X8, KW_LAYOUT_QPANELS_U4_SB, KW_LAYOUT_QPANELS_S8_G16_SB_X8}};
    /* 3 + 2 + 2 panels, which divide neither among 2 nor among 3 threads; a last panel of 36 columns */
    static const int64_t Ns[PER] = {130, 128, 100}, Ms[3] = {1, 3, 6}, K = 512;
    const char *isas[3];
    const int n_isa = kw_backend_cpu_isas(isas);
    float *x = malloc((size_t)(6 * K) * sizeof(float)), *bias = malloc(130 * sizeof(float));
    float *want[PER], *got[PER];
    assert_true(x && bias);
    for (int i = 0; i < PER; ++i) {
        want[i] = malloc((size_t)(6 * Ns[i]) * sizeof(float));
        got[i] = malloc((size_t)(6 * Ns[i]) * sizeof(float));
        assert_true(want[i] && got[i]);
    }
    for (int64_t i = 0; i < 6 * K; ++i)
        x[i] = kw_rand() * 2.0f;
    for (int i = 0; i < 130; ++i)
        bias[i] = kw_rand();
    for (int set = 0; set < SETS; ++set) {
        kw_qcase_data d[PER];
        float *wf[PER];
        for (int i = 0; i < PER; ++i) {
            d[i] = kw_qcase_make(sets[set][i] == KW_LAYOUT_PANELS ? KW_LAYOUT_QPANELS_U4_SB : sets[set][i], Ns[i], K);
            wf[i] = malloc((size_t)(Ns[i] * K) * sizeof(float));
            assert_non_null(wf[i]);
            kw_ref_quant_dequant(wf[i], &d[i].q);
        }
        for (int is = 0; is < n_isa; ++is)
            for (int threads = 1; threads <= 3; ++threads) {
                kw_backend *b = kw_cpu(isas[is], threads);
                kw_tensor tw[PER];
                for (int i = 0; i < PER; ++i) {
                    if (sets[set][i] == KW_LAYOUT_PANELS) {
                        const kw_tensor rows = kw_wrap(b, KW_DTYPE_F32, 2, (int64_t[]){Ns[i], K}, wf[i]);
                        assert_int_equal(kw_tensor_pack_weight(b, &rows, &tw[i]), 0);
                    } else {
                        assert_int_equal(kw_tensor_pack_quantized(b, &d[i].q, &tw[i]), 0);
                    }
                    assert_int_equal(tw[i].layout, sets[set][i]);
                }
                for (int mi = 0; mi < 3; ++mi)
                    for (int with_bias = 0; with_bias < 2; ++with_bias) {
                        const int64_t M = Ms[mi];
                        kw_tensor tx = kw_wrap(b, KW_DTYPE_F32, 2, (int64_t[]){M, K}, x), ty[PER], tb[PER];
                        kw_tensor *outs[PER];
                        const kw_tensor *ws[PER], *bs[PER];
                        for (int i = 0; i < PER; ++i) {
                            const float *bi = with_bias && i != 1 ? bias : NULL; /* weight 1: never a bias */
                            kw_mm(b, want[i], x, &tw[i], bi, 0, M);
                            memset(got[i], 0xff, (size_t)(M * Ns[i]) * sizeof(float));
                            ty[i] = kw_wrap(b, KW_DTYPE_F32, 2, (int64_t[]){M, Ns[i]}, got[i]);
                            if (bi) tb[i] = kw_wrap(b, KW_DTYPE_F32, 1, (int64_t[]){Ns[i]}, bi);
                            outs[i] = &ty[i], ws[i] = &tw[i], bs[i] = bi ? &tb[i] : NULL;
                        }
                        assert_int_equal(kw_op_matmul_shared(b, PER, outs, &tx, ws, with_bias ? bs : NULL), 0);
                        assert_int_equal(kw_backend_synchronize(b), 0);
                        char what[160];
                        for (int i = 0; i < PER; ++i) {
                            snprintf(what, sizeof what,
                                     "shared matmul set %d weight %d M=%lld bias %d on %s, %d threads", set, i,
                                     (long long)M, with_bias, isas[is], threads);
                            kw_same_bits(got[i], want[i], M * Ns[i], what);
                        }
                    }
                if (set == 0) { /* refused: no weights, too many, overlapping outputs, a wrong out shape, another K */
                    kw_tensor tx = kw_wrap(b, KW_DTYPE_F32, 2, (int64_t[]){1, K}, x);
                    kw_tensor t0 = kw_wrap(b, KW_DTYPE_F32, 2, (int64_t[]){1, 130}, got[0]);
                    kw_tensor t1 = kw_wrap(b, KW_DTYPE_F32, 2, (int64_t[]){1, Ns[1]}, got[0] + 129);
                    kw_tensor *outs[5] = {&t0, &t1, &t1, &t1, &t1};
                    const kw_tensor *ws[5] = {&tw[0], &tw[1], &tw[1], &tw[1], &tw[1]};
                    assert_int_equal(kw_op_matmul_shared(b, 0, outs, &tx, ws, NULL), KW_E_INVALID_ARG);
                    assert_int_equal(kw_op_matmul_shared(b, KW_MATMUL_SHARED_MAX + 1, outs, &tx, ws, NULL),
                                     KW_E_INVALID_ARG);
                    assert_int_equal(kw_op_matmul_shared(b, 2, outs, &tx, ws, NULL), KW_E_INVALID_ARG);
                    t1 = kw_wrap(b, KW_DTYPE_F32, 2, (int64_t[]){1, Ns[1]}, got[0] + 130);
                    assert_int_equal(kw_op_matmul_shared(b, 2, outs, &tx, ws, NULL), 0);
                    ws[1] = &tw[0];
                    assert_int_equal(kw_op_matmul_shared(b, 2, outs, &tx, ws, NULL), KW_E_SHAPE);
                    kw_tensor tx2 = kw_wrap(b, KW_DTYPE_F32, 2, (int64_t[]){1, K / 2}, x);
                    assert_int_equal(kw_op_matmul_shared(b, 1, outs, &tx2, ws, NULL), KW_E_SHAPE);
                    assert_int_equal(kw_backend_synchronize(b), 0);
                }
                for (int i = 0; i < PER; ++i)
                    kw_tensor_free(&tw[i]);
                kw_backend_destroy(b);
            }
        for (int i = 0; i < PER; ++i) {
            kw_qcase_free(&d[i]);
            free(wf[i]);
        }
    }
    for (int i = 0; i < PER; ++i)
        free(want[i]), free(got[i]);
    free(x), free(bias);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quantized_matmul_is_the_f32_matmul),
        cmocka_unit_test(test_changed_code_is_caught),
        cmocka_unit_test(test_quantized_contract),
        cmocka_unit_test(test_superblock_is_the_plain_layout),
        cmocka_unit_test(test_x8_matmul_is_its_oracle),
        cmocka_unit_test(test_x8_s8_rule_f16_scale),
        cmocka_unit_test(test_x8_superblock_is_x8),
        cmocka_unit_test(test_x8_pack_group_is_per_code),
        cmocka_unit_test(test_quant_sb_int_inv),
        cmocka_unit_test(test_s6_is_chosen_with_vbmi),
        cmocka_unit_test(test_u4_rebuild_paths),
        cmocka_unit_test(test_u4_rebuild_under_ftz),
        cmocka_unit_test(test_shared_matmul_is_each_matmul),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
