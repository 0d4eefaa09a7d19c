/* test_dequant.c: kw_dequant_row against the `gguf` Python package's dequantizers, bit for bit, on blocks from the
 * real SmolLM2 and Gemma 3 GGUF files and on random blocks (tests/data/model/gguf/dequant.kwfx, written by
 * tools/make_gguf_fixtures.py dequant), in f32 and in bf16; and the argument checks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_half.h"
#include "common/kw_status.h"
#include "model/kw_dequant.h"
#include "tests/model/model_fixture.h"

static const uint32_t kTypes[] = {KW_GGML_F32,  KW_GGML_F16,  KW_GGML_BF16, KW_GGML_Q4_0, KW_GGML_Q4_1,
                                  KW_GGML_Q5_0, KW_GGML_Q5_1, KW_GGML_Q8_0, KW_GGML_Q2_K, KW_GGML_Q3_K,
                                  KW_GGML_Q4_K, KW_GGML_Q5_K, KW_GGML_Q6_K};

static void check_type(const kwfx *fx, uint32_t type) {
    const char *name = kw_ggml_type_name(type);
    char key[64];
    snprintf(key, sizeof key, "%s.meta", name);
    const int32_t *meta = kwfx_i32(fx, key, NULL);
    assert_non_null(meta);
    const int32_t n_blocks = meta[0], n_bytes = meta[1];
    kw_ggml_type_info info;
    assert_int_equal(kw_ggml_type_info_get(type, &info), 0);
    assert_true(info.dequantizable);
    assert_int_equal(n_bytes, n_blocks * info.block_bytes);
    const int64_t n = (int64_t)n_blocks * info.block_elems;

    snprintf(key, sizeof key, "%s.blocks", name);
    int64_t words = 0;
    const int32_t *blocks = kwfx_i32(fx, key, &words);
    assert_non_null(blocks);
    assert_true(words * 4 >= n_bytes);
    snprintf(key, sizeof key, "%s.values", name);
    const float *want = kwfx_f32_expect(fx, key, n);

    size_t row = 0;
    assert_int_equal(kw_ggml_row_bytes(type, n, &row), 0);
    assert_int_equal(row, (size_t)n_bytes);
    float *got = malloc((size_t)n * sizeof *got);
    uint16_t *got16 = malloc((size_t)n * sizeof *got16);
    assert_true(got && got16);
    assert_int_equal(kw_dequant_row(type, blocks, n, KW_DTYPE_F32, got), 0);
    assert_int_equal(kw_dequant_row(type, blocks, n, KW_DTYPE_BF16, got16), 0);
    int64_t bad = 0;
    for (int64_t i = 0; i < n; ++i) {
        if (kw_f32_bits(got[i]) != kw_f32_bits(want[i])) {
            if (bad < 5)
                print_error("%s value %lld: got %.9g (0x%08x), gguf gives %.9g (0x%08x)\n", name, (long long)i,
                            (double)got[i], kw_f32_bits(got[i]), (double)want[i], kw_f32_bits(want[i]));
            ++bad;
        }
        if (got16[i] != kw_f32_to_bf16(want[i])) ++bad;
    }
    if (bad) print_error("%s: %lld of %lld values differ\n", name, (long long)bad, (long long)n);
    assert_int_equal(bad, 0);
    free(got);
    free(got16);
}

static void test_against_gguf_py(void **state) {
    (void)state;
    kwfx fx;
    const int rc = kwfx_load(KW_TEST_DATA_DIR "/model/gguf/dequant.kwfx", &fx);
    if (rc) print_error("%s\n", kw_error_detail());
    assert_int_equal(rc, 0);
    for (size_t i = 0; i < sizeof kTypes / sizeof kTypes[0]; ++i)
        check_type(&fx, kTypes[i]);
    kwfx_free(&fx);
}

static void test_errors(void **state) {
    (void)state;
    uint8_t block[256] = {0};
    float out[256];
    kw_ggml_type_info info;
    size_t bytes = 0;
    assert_int_equal(kw_ggml_type_info_get(4, &info), KW_E_MODEL_DTYPE); /* retired Q4_2 */
    assert_int_equal(kw_ggml_type_info_get(1000, &info), KW_E_MODEL_DTYPE);
    assert_int_equal(kw_ggml_type_info_get(16, &info), 0); /* IQ2_XXS: known, not dequantizable */
    assert_false(info.dequantizable);
    assert_int_equal(kw_dequant_row(16, block, 256, KW_DTYPE_F32, out), KW_E_MODEL_DTYPE);
    assert_int_equal(kw_dequant_row(KW_GGML_Q4_K, block, 255, KW_DTYPE_F32, out), KW_E_MODEL_SHAPE);
    assert_int_equal(kw_dequant_row(KW_GGML_Q4_0, block, 0, KW_DTYPE_F32, out), KW_E_MODEL_SHAPE);
    assert_int_equal(kw_dequant_row(KW_GGML_Q4_0, block, 32, KW_DTYPE_F16, out), KW_E_INVALID_ARG);
    assert_int_equal(kw_dequant_row(KW_GGML_Q4_0, NULL, 32, KW_DTYPE_F32, out), KW_E_INVALID_ARG);
    assert_int_equal(kw_ggml_row_bytes(KW_GGML_Q8_0, 64, &bytes), 0);
    assert_int_equal(bytes, 68);
    assert_int_equal(kw_ggml_row_bytes(KW_GGML_F32, INT64_MAX, &bytes), KW_E_OVERFLOW);
    assert_string_equal(kw_ggml_type_name(KW_GGML_Q6_K), "Q6_K");
    assert_string_equal(kw_ggml_type_name(999), "?");
    /* all-zero blocks dequantize to zeros (Q4_0: (0 - 8) * 0) */
    assert_int_equal(kw_dequant_row(KW_GGML_Q4_0, block, 32, KW_DTYPE_F32, out), 0);
    for (int i = 0; i < 32; ++i)
        assert_true(out[i] == 0.0f);
}

/* The types kept quantized: codes, scales and offsets of random blocks, with every code in its layout's range and
 * fl(fl(code * scale) + offset) equal to kw_dequant_row bit for bit (the f16 fields random, so scales span the range);
 * and the argument checks. */
static void test_codes(void **state) {
    (void)state;
    static const uint32_t kept[] = {KW_GGML_Q4_0, KW_GGML_Q4_1, KW_GGML_Q5_0, KW_GGML_Q5_1,
                                    KW_GGML_Q8_0, KW_GGML_Q4_K, KW_GGML_Q5_K, KW_GGML_Q6_K};
    uint64_t rng = 0x2545f4914f6cdd1dull;
    for (size_t i = 0; i < sizeof kept / sizeof kept[0]; ++i) {
        kw_ggml_type_info info;
        assert_int_equal(kw_ggml_type_info_get(kept[i], &info), 0);
        assert_true(info.dequantizable);
        kw_quant_layout ql;
        assert_int_equal(kw_layout_quant(kw_ggml_quant_layout(kept[i]), &ql), 1);
        const int64_t n = 2 * (int64_t)info.block_elems;
        uint8_t blocks[2 * 292];
        for (int b = 0; b < 2 * info.block_bytes; ++b) {
            rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
            blocks[b] = (uint8_t)(rng >> 32);
        }
        /* keep the f16 scales finite: clear the top exponent bit of every byte (a 0x7c.. f16 is Inf/NaN) */
        for (int b = 0; b < 2 * info.block_bytes; ++b)
            blocks[b] &= 0xbf;
        int8_t codes[512];
        float scales[32], offsets[32], want[512];
        assert_int_equal(kw_ggml_codes_row(kept[i], blocks, n, codes, scales, offsets), 0);
        assert_int_equal(kw_dequant_row(kept[i], blocks, n, KW_DTYPE_F32, want), 0);
        for (int64_t e = 0; e < n; ++e) {
            assert_true(codes[e] >= ql.code_min && codes[e] <= ql.code_max);
            const float scaled = (float)codes[e] * scales[e / ql.group];
            const float v = ql.has_offset ? scaled + offsets[e / ql.group] : scaled;
            if (memcmp(&v, &want[e], sizeof v) != 0)
                fail_msg("%s value %lld: %.9g from codes, %.9g dequantized", info.name, (long long)e, (double)v,
                         (double)want[e]);
        }
    }
    int8_t codes[256];
    float scales[16];
    uint8_t block[256] = {0};
    assert_int_equal(kw_ggml_quant_layout(KW_GGML_Q2_K), KW_LAYOUT_ROWS);
    assert_int_equal(kw_ggml_quant_layout(KW_GGML_F16), KW_LAYOUT_ROWS);
    assert_int_equal(kw_ggml_quant_layout(999), KW_LAYOUT_ROWS);
    assert_int_equal(kw_ggml_codes_row(KW_GGML_Q2_K, block, 256, codes, scales, scales), KW_E_MODEL_DTYPE);
    assert_int_equal(kw_ggml_codes_row(999, block, 256, codes, scales, scales), KW_E_MODEL_DTYPE);
    assert_int_equal(kw_ggml_codes_row(KW_GGML_Q4_K, block, 255, codes, scales, scales), KW_E_MODEL_SHAPE);
    assert_int_equal(kw_ggml_codes_row(KW_GGML_Q8_0, block, 48, codes, scales, NULL), KW_E_MODEL_SHAPE);
    assert_int_equal(kw_ggml_codes_row(KW_GGML_Q4_1, block, 32, codes, scales, NULL), KW_E_INVALID_ARG);
    assert_int_equal(kw_ggml_codes_row(KW_GGML_Q8_0, NULL, 32, codes, scales, NULL), KW_E_INVALID_ARG);
    assert_int_equal(kw_ggml_codes_row(KW_GGML_Q8_0, block, 32, codes, scales, NULL), 0); /* no offsets needed */
}

/* The super-block numbers of Q4_K and Q6_K: on random blocks (each with its own d and dmin), every group's scale is
 * fl(d * s) and its offset fl(m * o) for the block's d (and m = -dmin) and integers in the block's range (6-bit for
 * Q4_K, int8 for Q6_K), the same bits; the other types have no super-block layout; the argument checks. */
static void test_superblocks(void **state) {
    (void)state;
    static const uint32_t types[] = {KW_GGML_Q4_K, KW_GGML_Q6_K};
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < 2; ++i) {
        const int q4 = types[i] == KW_GGML_Q4_K, G = q4 ? 32 : 16, lo = q4 ? 0 : -128, hi = q4 ? 63 : 127;
        assert_int_equal(kw_ggml_superblock_layout(types[i]),
                         q4 ? KW_LAYOUT_QPANELS_U4_SB : KW_LAYOUT_QPANELS_S8_G16_SB);
        kw_ggml_type_info info;
        assert_int_equal(kw_ggml_type_info_get(types[i], &info), 0);
        enum { NB = 6 };
        uint8_t blocks[NB * 210];
        for (int b = 0; b < NB * info.block_bytes; ++b) {
            rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
            blocks[b] = (uint8_t)(rng >> 32) & 0xbf; /* finite f16 fields, as test_codes */
        }
        int8_t codes[NB * 256];
        float scales[NB * 16], offsets[NB * 16], d[NB], m[NB];
        assert_int_equal(kw_ggml_codes_row(types[i], blocks, NB * 256, codes, scales, offsets), 0);
        assert_int_equal(kw_ggml_superblock_row(types[i], blocks, NB * 256, d, q4 ? m : NULL), 0);
        for (int g = 0; g < NB * 256 / G; ++g) {
            int found_s = 0, found_o = !q4;
            for (int v = lo; v <= hi; ++v) {
                const float sv = d[g * G / 256] * (float)v;
                found_s |= memcmp(&sv, &scales[g], 4) == 0;
                if (q4) {
                    const float ov = m[g * G / 256] * (float)v;
                    found_o |= memcmp(&ov, &offsets[g], 4) == 0;
                }
            }
            if (!found_s || !found_o)
                fail_msg("%s group %d: scale %.9g (offset %.9g) is not d %.9g (m %.9g) times an integer", info.name, g,
                         (double)scales[g], (double)offsets[g], (double)d[g * G / 256], (double)m[g * G / 256]);
        }
    }
    float d[2], m[2];
    uint8_t block[512] = {0};
    assert_int_equal(kw_ggml_superblock_layout(KW_GGML_Q4_1), KW_LAYOUT_ROWS);
    assert_int_equal(kw_ggml_superblock_layout(KW_GGML_Q5_K), KW_LAYOUT_ROWS);
    assert_int_equal(kw_ggml_superblock_row(KW_GGML_Q5_K, block, 256, d, m), KW_E_MODEL_DTYPE);
    assert_int_equal(kw_ggml_superblock_row(KW_GGML_Q4_K, block, 255, d, m), KW_E_MODEL_SHAPE);
    assert_int_equal(kw_ggml_superblock_row(KW_GGML_Q4_K, block, 256, d, NULL), KW_E_INVALID_ARG);
    assert_int_equal(kw_ggml_superblock_row(KW_GGML_Q6_K, NULL, 256, d, NULL), KW_E_INVALID_ARG);
    assert_int_equal(kw_ggml_superblock_row(KW_GGML_Q6_K, block, 512, d, NULL), 0); /* no m needed */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_against_gguf_py),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_codes),
        cmocka_unit_test(test_superblocks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
