/* test_quantize.c: model/kw_quantize.c's block quantizers, checked through kvwire's dequantizers (kw_dequant_row,
 * itself checked bit for bit against the gguf Python package), and the type rule of the schemes.
 *
 * Bounds, per block type, with s the step the stored scales give a value (Q8_0, Q5_0: d; Q4_K: d * sc of its
 * sub-block; Q6_K: d * sc of its sub-block):
 *  - every code is the nearest one for the stored scales: |x - y| <= s / 2 unless the code is at the end of its range
 *    (the value lies beyond the grid), up to f32 rounding of the products (a relative 1e-6 of |x| + s);
 *  - values on the grid come back exactly (Q8_0, Q5_0, Q6_K: a block built from codes and a power-of-two scale);
 *  - blocks whose scale is below fp16's range flush to zero (a limit of the formats, shared with ggml): the small
 *    block is kept at sd 1e-3;
 *  - on normal data (sd 1) the RMS error stays below a step's uniform error bound: Q8_0 d/sqrt(12) with d <= 4.5/127
 *    (|x| < 4.5 on these 32-value blocks, the Irwin-Hall(12) sampler being bounded at 6 sd) gives 0.0103; Q4_K's
 *    sub-block step is at most (range 9 + a 6-bit scale rounding) / 15 -> a loose 0.2; Q6_K's at most 4.5/32 * 1.02
 *    -> 0.045 / sqrt(12) * 1.2 margin = 0.05; Q5_0 4.5/16/sqrt(12) -> 0.082 plus the clamped end, 0.1.
 * Plus: two runs give the same bytes, and NaN, a bad length, an unsupported type are refused. */
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
#include "model/kw_dequant.h"
#include "model/kw_quantize.h"

/* A deterministic normal-ish sample (Irwin-Hall of 12 uniforms, sd 1). */
static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;
static float normal(void) {
    double s = 0;
    for (int i = 0; i < 12; ++i) {
        rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
        s += (double)(rng_state >> 11) / 9007199254740992.0;
    }
    return (float)(s - 6.0);
}

typedef struct q_case {
    uint32_t type;
    int block;
    int group; /* values sharing one step */
    int code_lo, code_hi;
    double rms_bound;
} q_case;

static const q_case kCases[] = {
    {KW_GGML_Q8_0, 32, 32, -127, 127, 0.0103},
    {KW_GGML_Q5_0, 32, 32, -16, 15, 0.1},
    {KW_GGML_Q4_K, 256, 32, 0, 15, 0.2},
    {KW_GGML_Q6_K, 256, 16, -32, 31, 0.05},
};

/* Checks quantize -> dequantize of n values of x against the per-value bound; returns the RMS error. */
static double check_round_trip(const q_case *c, const float *x, int64_t n) {
    size_t bytes = 0;
    assert_int_equal(kw_ggml_row_bytes(c->type, n, &bytes), 0);
    uint8_t *q = malloc(bytes), *q2 = malloc(bytes);
    float *y = malloc((size_t)n * sizeof *y);
    int8_t *codes = malloc((size_t)n);
    float *scales = malloc((size_t)n * sizeof *scales), *offsets = malloc((size_t)n * sizeof *offsets);
    assert_true(q && q2 && y && codes && scales && offsets);
    assert_int_equal(kw_quantize_row(c->type, x, n, q), 0);
    assert_int_equal(kw_quantize_row(c->type, x, n, q2), 0);
    assert_memory_equal(q, q2, bytes); /* deterministic */
    assert_int_equal(kw_dequant_row(c->type, q, n, KW_DTYPE_F32, y), 0);
    assert_int_equal(kw_ggml_codes_row(c->type, q, n, codes, scales, offsets), 0);
    double se = 0;
    for (int64_t i = 0; i < n; ++i) {
        const double err = fabs((double)x[i] - y[i]), step = fabs((double)scales[i / c->group]);
        se += err * err;
        const int at_end = codes[i] == c->code_lo || codes[i] == c->code_hi;
        if (!at_end && err > step / 2 + 1e-6 * (fabs((double)x[i]) + step) + 1e-30)
            fail_msg("%s value %lld: x %.9g came back %.9g, step %.9g, code %d", kw_ggml_type_name(c->type),
                     (long long)i, (double)x[i], (double)y[i], step, (int)codes[i]);
    }
    free(q);
    free(q2);
    free(y);
    free(codes);
    free(scales);
    free(offsets);
    return sqrt(se / (double)n);
}

static void test_round_trips(void **state) {
    (void)state;
    const int64_t n = 256 * 64;
    float *x = malloc((size_t)n * sizeof *x);
    assert_non_null(x);
    for (size_t k = 0; k < sizeof kCases / sizeof kCases[0]; ++k) {
        const q_case *c = &kCases[k];
        for (int64_t i = 0; i < n; ++i)
            x[i] = normal();
        const double rms = check_round_trip(c, x, n);
        print_message("%s: RMS error %.5f on sd-1 values (bound %.4f)\n", kw_ggml_type_name(c->type), rms,
                      c->rms_bound);
        assert_true(rms <= c->rms_bound);
        /* zeros, a constant, a single spike, tiny and large magnitudes, all-negative and all-positive blocks */
        for (int64_t i = 0; i < n; ++i) {
            const int64_t b = i / 256;
            x[i] = b == 0   ? 0.0f
                   : b == 1 ? 0.25f
                   : b == 2 ? (i % 256 == 17 ? 5.0f : 0.0f)
                   : b == 3 ? 1e-3f * normal() /* small: Q6_K's d (max / 32 / 127) is an fp16 subnormal */
                   : b == 4 ? 300.0f * normal()
                   : b == 5 ? -fabsf(normal())
                   : b == 6 ? fabsf(normal()) + 1.0f
                            : normal();
        }
        check_round_trip(c, x, n);
        /* all zeros come back as zeros */
        size_t bytes = 0;
        assert_int_equal(kw_ggml_row_bytes(c->type, 256, &bytes), 0);
        uint8_t *q = malloc(bytes);
        float y[256];
        assert_int_equal(kw_quantize_row(c->type, x, 256, q), 0);
        assert_int_equal(kw_dequant_row(c->type, q, 256, KW_DTYPE_F32, y), 0);
        for (int i = 0; i < 256; ++i)
            assert_true(y[i] == 0.0f);
        free(q);
    }
    free(x);
}

/* Values on a grid the format can hold exactly come back exactly. */
static void test_exact_grid(void **state) {
    (void)state;
    float x[256], y[256];
    uint8_t q[256 * sizeof(float)]; /* the largest row: 256 f32 values */
    /* Q8_0: codes -127..127 times 2^-4 (the code 127 fixes d = 2^-4) */
    for (int i = 0; i < 256; ++i)
        x[i] = (float)((i * 37) % 255 - 127) / 16.0f;
    for (int b = 0; b < 8; ++b)
        x[32 * b] = 127.0f / 16.0f;
    assert_int_equal(kw_quantize_row(KW_GGML_Q8_0, x, 256, q), 0);
    assert_int_equal(kw_dequant_row(KW_GGML_Q8_0, q, 256, KW_DTYPE_F32, y), 0);
    assert_memory_equal(x, y, sizeof x);
    /* Q5_0: codes -16..15 times 2^-3 with -16 present in each block */
    for (int i = 0; i < 256; ++i)
        x[i] = (float)((i * 11) % 32 - 16) / 8.0f;
    for (int b = 0; b < 8; ++b)
        x[32 * b + 3] = -2.0f;
    assert_int_equal(kw_quantize_row(KW_GGML_Q5_0, x, 256, q), 0);
    assert_int_equal(kw_dequant_row(KW_GGML_Q5_0, q, 256, KW_DTYPE_F32, y), 0);
    assert_memory_equal(x, y, sizeof x);
    /* Q6_K: codes -32..31 times 2^-5, -32 in every sub-block; the stored step d * sc is d = fp16(2^-5 / 127) times
     * 127, within fp16's relative 2^-11 of 2^-5: the values come back within 1e-3 relative */
    for (int i = 0; i < 256; ++i)
        x[i] = (float)((i * 13) % 64 - 32) / 32.0f;
    for (int s = 0; s < 16; ++s)
        x[16 * s + 5] = -1.0f;
    assert_int_equal(kw_quantize_row(KW_GGML_Q6_K, x, 256, q), 0);
    assert_int_equal(kw_dequant_row(KW_GGML_Q6_K, q, 256, KW_DTYPE_F32, y), 0);
    for (int i = 0; i < 256; ++i)
        assert_true(fabsf(x[i] - y[i]) <= 1e-3f * fabsf(x[i]) + 1e-6f);
    /* F32, F16, BF16 */
    assert_int_equal(kw_quantize_row(KW_GGML_F32, x, 256, q), 0);
    assert_int_equal(kw_dequant_row(KW_GGML_F32, q, 256, KW_DTYPE_F32, y), 0);
    assert_memory_equal(x, y, sizeof x);
    assert_int_equal(kw_quantize_row(KW_GGML_BF16, x, 256, q), 0);
    assert_int_equal(kw_dequant_row(KW_GGML_BF16, q, 256, KW_DTYPE_F32, y), 0);
    assert_memory_equal(x, y, sizeof x); /* multiples of 2^-5 below 1 fit bf16's 8 bits */
    assert_int_equal(kw_quantize_row(KW_GGML_F16, x, 256, q), 0);
    assert_int_equal(kw_dequant_row(KW_GGML_F16, q, 256, KW_DTYPE_F32, y), 0);
    assert_memory_equal(x, y, sizeof x);
}

static void test_refusals(void **state) {
    (void)state;
    float x[256] = {0};
    uint8_t q[256 * sizeof(float)]; /* the largest row: 256 f32 values */
    assert_int_equal(kw_quantize_row(KW_GGML_Q4_K, x, 128, q), KW_E_MODEL_SHAPE);
    assert_int_equal(kw_quantize_row(KW_GGML_Q4_0, x, 32, q), KW_E_MODEL_DTYPE);
    assert_int_equal(kw_quantize_row(KW_GGML_Q8_0, NULL, 32, q), KW_E_INVALID_ARG);
    x[3] = NAN;
    assert_int_equal(kw_quantize_row(KW_GGML_Q8_0, x, 32, q), KW_E_INVALID_ARG);
    x[3] = INFINITY;
    assert_int_equal(kw_quantize_row(KW_GGML_BF16, x, 32, q), KW_E_INVALID_ARG);
}

static uint32_t pick(enum kw_quant_scheme s, const char *name, int32_t n_dims, int64_t ne0, int32_t layer, int tied) {
    const kw_quant_tensor t = {
        .name = name, .n_dims = n_dims, .ne0 = ne0, .layer = layer, .n_layers = 24, .tied = tied};
    return kw_quant_choose_type(s, &t);
}

/* The Q4_K_M rule on a 24-layer model: use_more_bits holds for layers 0-2, 21-23 and 5, 8, 11, 14, 17, 20. */
static void test_type_rule(void **state) {
    (void)state;
    const int more[24] = {1, 1, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 1, 1, 1};
    char name[64];
    for (int32_t l = 0; l < 24; ++l) {
        snprintf(name, sizeof name, "blk.%d.attn_v.weight", (int)l);
        assert_int_equal(pick(KW_QUANT_Q4_K_M, name, 2, 1024, l, 0), more[l] ? KW_GGML_Q6_K : KW_GGML_Q4_K);
        assert_int_equal(pick(KW_QUANT_Q4_K, name, 2, 1024, l, 0), KW_GGML_Q4_K);
        snprintf(name, sizeof name, "blk.%d.ffn_down.weight", (int)l);
        assert_int_equal(pick(KW_QUANT_Q4_K_M, name, 2, 3072, l, 0), more[l] ? KW_GGML_Q6_K : KW_GGML_Q4_K);
        /* rows that are not whole 256-value blocks: Q6_K -> Q8_0, Q4_K -> Q5_0 */
        assert_int_equal(pick(KW_QUANT_Q4_K_M, name, 2, 1536 + 32, l, 0), more[l] ? KW_GGML_Q8_0 : KW_GGML_Q5_0);
        snprintf(name, sizeof name, "blk.%d.attn_q.weight", (int)l);
        assert_int_equal(pick(KW_QUANT_Q4_K_M, name, 2, 1024, l, 0), KW_GGML_Q4_K);
        assert_int_equal(pick(KW_QUANT_Q4_K_M, name, 2, 576, l, 0), KW_GGML_Q5_0);
        snprintf(name, sizeof name, "blk.%d.attn_norm.weight", (int)l);
        assert_int_equal(pick(KW_QUANT_Q4_K_M, name, 1, 1024, l, 0), KW_GGML_F32);
        assert_int_equal(pick(KW_QUANT_BF16, name, 1, 1024, l, 0), KW_GGML_F32);
    }
    assert_int_equal(pick(KW_QUANT_Q4_K_M, "output.weight", 2, 1024, -1, 0), KW_GGML_Q6_K);
    assert_int_equal(pick(KW_QUANT_Q4_K_M, "output.weight", 2, 576, -1, 0), KW_GGML_Q8_0);
    assert_int_equal(pick(KW_QUANT_Q4_K_M, "token_embd.weight", 2, 1024, -1, 1), KW_GGML_Q6_K);
    assert_int_equal(pick(KW_QUANT_Q4_K_M, "token_embd.weight", 2, 1024, -1, 0), KW_GGML_Q4_K);
    assert_int_equal(pick(KW_QUANT_Q4_K_M, "token_embd.weight", 2, 576, -1, 1), KW_GGML_Q8_0);
    assert_int_equal(pick(KW_QUANT_Q8_0, "output.weight", 2, 1024, -1, 0), KW_GGML_Q8_0);
    assert_int_equal(pick(KW_QUANT_Q8_0, "blk.0.attn_q.weight", 2, 48, 0, 0), KW_GGML_F16);
    assert_int_equal(pick(KW_QUANT_Q8_0, "blk.0.attn_q.bias", 1, 1024, 0, 0), KW_GGML_F32);
    assert_int_equal(pick(KW_QUANT_Q8_0, "blk.0.attn_q_norm.weight", 2, 1024, 0, 0), KW_GGML_F32);
    assert_int_equal(pick(KW_QUANT_BF16, "blk.0.attn_q.weight", 2, 1024, 0, 0), KW_GGML_BF16);
    assert_int_equal(pick(KW_QUANT_F32, "blk.0.attn_q.weight", 2, 1024, 0, 0), KW_GGML_F32);
    assert_int_equal(kw_quant_file_type(KW_QUANT_Q4_K_M), 15);
    assert_int_equal(kw_quant_file_type(KW_QUANT_Q8_0), 7);
    assert_int_equal(kw_quant_file_type(KW_QUANT_BF16), 32);
    assert_int_equal(kw_quant_file_type(KW_QUANT_Q4_K), -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trips),
        cmocka_unit_test(test_exact_grid),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_type_rule),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
