/* test_wire_simd.c: the AVX2 and AVX-512 row kernels must equal the scalar reference of kw_wire_quant.h bit for bit:
 * absmax (with NaN, Inf, -0 and subnormals), quantization (random rows, exact rounding ties, clamping, every row
 * length and alignment), dequantization of arbitrary bytes (reserved codes included) to f32 and bf16, scales, the
 * Hadamard rotation, and whole blobs encoded and decoded through each ISA; the decoders, quantize and absmax also under
 * MXCSR.FTZ and DAZ. ISAs the CPU lacks are reported and skipped.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tests/wire/wire_test_util.h"
#include "wire/kw_wire_internal.h"

#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

static const kw__wire_kernels *g_isas[3];
static int g_n_isas;

static int setup(void **state) {
    (void)state;
    g_isas[g_n_isas++] = kw__wire_kernels_get(KW_WIRE_ISA_SCALAR);
    if (kw__wire_kernels_avx2())
        g_isas[g_n_isas++] = kw__wire_kernels_avx2();
    else
        print_message("AVX2 not available: skipped\n");
    if (kw__wire_kernels_avx512())
        g_isas[g_n_isas++] = kw__wire_kernels_avx512();
    else
        print_message("AVX-512 not available: skipped\n");
    return 0;
}

static const uint32_t kLens[] = {8, 16, 24, 32, 48, 64, 96, 128, 136, 256, 1024};

/* Makes every code of a packed row of n elements valid: a reserved integer field 2^(b-1) becomes 2^(b-1) + 1, an e4m3
 * NaN 0x7f/0xff becomes 0x7e/0xfe, an e5m2 Inf or NaN (exponent 31) gets exponent 27. */
static void make_valid(uint32_t codec, uint8_t *row, uint32_t n) {
    const uint32_t bits = kw_wire_codec_bits(codec);
    for (uint32_t i = 0; i < n; ++i) {
        int ok = 1;
        (void)kw_wire_code_value(codec, kw_wire_unpack_code(codec, row, i), &ok);
        if (ok) continue;
        const uint32_t f = kw_wire_field_get(bits, row, i);
        kw_wire_field_clear(bits, row, i);
        kw_wire_field_put(bits, row, i, f ^ (codec == KW_WIRE_CODEC_E5M2 ? 0x10u : 1u));
    }
}

/* A dequantization scale: s 2^k (k in -30..29) with s in [1, 1.5), negated one time in four; one time in sixteen
 * +-1e30 (s 2^(127 - bias) overflows: no fp8 fast path). */
static float deq_scale(wt_rng *r) {
    float s = ldexpf(1.0f + wt_uniform(r) / 2, (int)wt_below(r, 60) - 30);
    if (wt_below(r, 16) == 0) s = 1e30f;
    return wt_below(r, 4) ? s : -s;
}

/* Fills n elements of dtype; special != 0 mixes in edge values. */
static void fill(wt_rng *r, uint8_t *buf, uint32_t dtype, uint32_t n, int special, float scale) {
    for (uint32_t i = 0; i < n; ++i) {
        float v = wt_bell(r) * scale;
        if (special) {
            switch (wt_below(r, 14)) {
            case 0:
                v = -0.0f;
                break;
            case 1:
                v = 0x1p-140f * (float)wt_below(r, 100);
                break; /* f32 subnormal */
            case 2:
                v = (float)((int)wt_below(r, 15) - 7) + 0.5f;
                break; /* ties when inv = 1 */
            case 3:
                v = 1e5f;
                break; /* clamped */
            case 4:    /* an exact E4M3 rounding tie (E5M2 too at even k), normal or subnormal */
                v = ldexpf(1.0f + (float)(2 * wt_below(r, 8) + 1) / 16.0f, (int)wt_below(r, 24) - 14);
                break;
            case 6: /* an NF4 midpoint: a tie between two codes when inv = 1 */
                v = kw_wire_nf4_mid(wt_below(r, 15));
                break;
            case 5: /* an exact E5M2 rounding tie */
                v = -ldexpf(1.0f + (float)(2 * wt_below(r, 4) + 1) / 8.0f, (int)wt_below(r, 30) - 20);
                break;
            default:
                break;
            }
        }
        if (dtype == KW_WIRE_DTYPE_F32)
            memcpy(buf + 4 * (size_t)i, &v, 4);
        else {
            const uint16_t h = dtype == KW_WIRE_DTYPE_BF16 ? kw_f32_to_bf16(v) : kw_f32_to_f16(v);
            memcpy(buf + 2 * (size_t)i, &h, 2);
        }
    }
}

static void test_amax(void **state) {
    (void)state;
    wt_rng r = {1};
    uint8_t buf[1024 * 4 + 4];
    for (int it = 0; it < 3000; ++it)
        for (uint32_t dtype = 1; dtype <= 3; ++dtype) {
            const uint32_t n = kLens[wt_below(&r, sizeof kLens / sizeof kLens[0])];
            const uint32_t off = wt_below(&r, 2) * (uint32_t)kw__wire_dtype_size(dtype); /* misaligned rows */
            fill(&r, buf + off, dtype, n, it % 2, ldexpf(1.0f, (int)wt_below(&r, 20) - 10));
            if (it % 5 == 0) { /* a NaN or Inf somewhere */
                const uint32_t at = wt_below(&r, n);
                const float bad = it % 10 ? INFINITY : NAN;
                if (dtype == KW_WIRE_DTYPE_F32)
                    memcpy(buf + off + 4 * at, &bad, 4);
                else {
                    const uint16_t h = dtype == KW_WIRE_DTYPE_BF16 ? kw_f32_to_bf16(bad) : kw_f32_to_f16(bad);
                    memcpy(buf + off + 2 * at, &h, 2);
                }
            }
            const uint32_t want = g_isas[0]->amax(buf + off, dtype, n);
            for (int k = 1; k < g_n_isas; ++k)
                assert_int_equal(g_isas[k]->amax(buf + off, dtype, n), want);
        }
}

/* minmax_fold: per element, the value itself where seen is 0, else the old minimum / maximum unless the value is
 * strictly beyond it (zeros of both signs make the strictness visible), seen set to 1, and amax's result; the scalar
 * kernel against that rule on the f32 values, every ISA against the scalar kernel bit for bit. */
static void test_minmax_fold(void **state) {
    (void)state;
    wt_rng r = {17};
    uint8_t buf[1024 * 4 + 4];
    float x[1024], l0[1024], h0[1024], s0[1024], lw[1024], hw[1024], sw[1024], lg[1024], hg[1024], sg[1024];
    for (int it = 0; it < 3000; ++it)
        for (uint32_t dtype = 1; dtype <= 3; ++dtype) {
            const uint32_t n = kLens[wt_below(&r, sizeof kLens / sizeof kLens[0])];
            const uint32_t off = wt_below(&r, 2) * (uint32_t)kw__wire_dtype_size(dtype);
            const int zeros = it % 3 == 0;
            fill(&r, buf + off, dtype, n, it % 2, ldexpf(1.0f, (int)wt_below(&r, 20) - 10));
            for (uint32_t i = 0; i < n && zeros; ++i) /* some elements +0 or -0 against old zeros of either sign */
                if (wt_below(&r, 2)) {
                    const float v = wt_below(&r, 2) ? -0.0f : 0.0f;
                    const uint16_t hv = dtype == KW_WIRE_DTYPE_BF16 ? kw_f32_to_bf16(v) : kw_f32_to_f16(v);
                    memcpy(buf + off + kw__wire_dtype_size(dtype) * i, dtype == KW_WIRE_DTYPE_F32 ? (void *)&v : &hv,
                           kw__wire_dtype_size(dtype));
                }
            kw__wire_load_f32(buf + off, dtype, n, x);
            for (uint32_t i = 0; i < n; ++i) {
                s0[i] = wt_below(&r, 3) ? 1.0f : 0.0f;
                l0[i] = zeros ? (wt_below(&r, 2) ? -0.0f : 0.0f) : wt_bell(&r);
                h0[i] = zeros ? (wt_below(&r, 2) ? -0.0f : 0.0f) : wt_bell(&r);
            }
            memcpy(lw, l0, n * 4);
            memcpy(hw, h0, n * 4);
            memcpy(sw, s0, n * 4);
            const uint32_t want = g_isas[0]->minmax_fold(buf + off, dtype, n, lw, hw, sw);
            assert_int_equal(want, g_isas[0]->amax(buf + off, dtype, n));
            for (uint32_t i = 0; i < n; ++i) {
                const float el = s0[i] == 0.0f || x[i] < l0[i] ? x[i] : l0[i];
                const float eh = s0[i] == 0.0f || x[i] > h0[i] ? x[i] : h0[i];
                assert_int_equal(kw_f32_bits(lw[i]), kw_f32_bits(el));
                assert_int_equal(kw_f32_bits(hw[i]), kw_f32_bits(eh));
                assert_true(sw[i] == 1.0f);
            }
            for (int k = 1; k < g_n_isas; ++k) {
                memcpy(lg, l0, n * 4);
                memcpy(hg, h0, n * 4);
                memcpy(sg, s0, n * 4);
                assert_int_equal(g_isas[k]->minmax_fold(buf + off, dtype, n, lg, hg, sg), want);
                if (memcmp(lg, lw, n * 4) != 0 || memcmp(hg, hw, n * 4) != 0 || memcmp(sg, sw, n * 4) != 0)
                    fail_msg("%s minmax_fold dtype %u n=%u: differs from scalar", kw_wire_isa_name(g_isas[k]->isa),
                             dtype, n);
            }
        }
}

/* minmax: the minimum and maximum in element order, each the first value that attains it (a zero result keeps the
 * sign of the first zero), and amax's result, on rows built to make zero the minimum or maximum. */
static void test_minmax(void **state) {
    (void)state;
    wt_rng r = {6};
    uint8_t buf[1024 * 4 + 4];
    static const uint32_t lens[] = {4, 8, 12, 16, 24, 32, 48, 64, 128, 136, 256, 1024};
    for (int it = 0; it < 4000; ++it)
        for (uint32_t dtype = 1; dtype <= 3; ++dtype) {
            const uint32_t n = lens[wt_below(&r, sizeof lens / sizeof lens[0])];
            const uint32_t off = wt_below(&r, 2) * (uint32_t)kw__wire_dtype_size(dtype);
            const int mode = it % 6; /* 0, 1: values; 2: zeros and positives; 3: zeros and negatives; 4: zeros */
            fill(&r, buf + off, dtype, n, mode == 1, ldexpf(1.0f, (int)wt_below(&r, 20) - 10));
            for (uint32_t i = 0; i < n && mode >= 2; ++i) {
                float v = wt_below(&r, 2) ? -0.0f : 0.0f;
                if (mode == 2 && wt_below(&r, 4) == 0) v = 1.0f + wt_uniform(&r);
                if (mode == 3 && wt_below(&r, 4) == 0) v = -1.0f - wt_uniform(&r);
                if (mode == 5 && wt_below(&r, 3) == 0) v = wt_bell(&r); /* zeros and both signs */
                if (dtype == KW_WIRE_DTYPE_F32) {
                    memcpy(buf + off + 4 * i, &v, 4);
                } else {
                    const uint16_t h = dtype == KW_WIRE_DTYPE_BF16 ? kw_f32_to_bf16(v) : kw_f32_to_f16(v);
                    memcpy(buf + off + 2 * i, &h, 2);
                }
            }
            float lo, hi;
            const uint32_t want = g_isas[0]->minmax(buf + off, dtype, n, &lo, &hi);
            assert_int_equal(want, g_isas[0]->amax(buf + off, dtype, n));
            for (int k = 1; k < g_n_isas; ++k) {
                float l, h;
                assert_int_equal(g_isas[k]->minmax(buf + off, dtype, n, &l, &h), want);
                if (kw_f32_bits(l) != kw_f32_bits(lo) || kw_f32_bits(h) != kw_f32_bits(hi))
                    fail_msg("%s dtype %u n=%u mode %d: min/max %a %a, scalar %a %a", kw_wire_isa_name(g_isas[k]->isa),
                             dtype, n, mode, (double)l, (double)h, (double)lo, (double)hi);
            }
        }
}

static void test_quantize(void **state) {
    (void)state;
    wt_rng r = {2};
    uint8_t buf[1024 * 4 + 4], want[1024 + 16], got[1024 + 16];
    for (int it = 0; it < 2000; ++it)
        for (uint32_t codec = KW_WIRE_CODEC_INT8; codec < KW_WIRE_CODEC_COUNT_V11; ++codec)
            for (uint32_t dtype = 1; dtype <= 3; ++dtype) {
                const uint32_t n = kLens[wt_below(&r, sizeof kLens / sizeof kLens[0])];
                const uint32_t off = wt_below(&r, 2) * (uint32_t)kw__wire_dtype_size(dtype);
                fill(&r, buf + off, dtype, n, it % 3 == 0, 1.0f);
                float inv = 1.0f; /* exact ties for the special values */
                if (it % 3) {
                    uint32_t code;
                    float s;
                    const float amax = kw_f32_from_bits(g_isas[0]->amax(buf + off, dtype, n));
                    if (!(amax > 0) ||
                        kw_wire_scale_choose(amax, kw_wire_codec_qmax(codec), 1 + wt_below(&r, 4), &code, &s) < 0)
                        continue;
                    inv = 1.0f / s;
                }
                const size_t bytes = (size_t)n * kw_wire_codec_bits(codec) / 8;
                g_isas[0]->quantize(codec, buf + off, dtype, n, inv, want);
                for (int k = 1; k < g_n_isas; ++k) {
                    memset(got, 0xa5, sizeof got);
                    g_isas[k]->quantize(codec, buf + off, dtype, n, inv, got);
                    if (memcmp(got, want, bytes) != 0)
                        fail_msg("%s %s n=%u: quantized bytes differ from scalar", kw_wire_isa_name(g_isas[k]->isa),
                                 kw_wire_codec_name(codec), n);
                    assert_int_equal(got[bytes], 0xa5); /* nothing written past the row */
                }
            }
}

/* quantize_rows: blocks of rows of every codec at scattered, misaligned addresses, each with its own inverse scale
 * (from its absmax, 1 for the exact ties of fill(), or 0 for a zero scale): the same bytes as quantize row by row,
 * none past the block. */
static void test_quantize_rows(void **state) {
    (void)state;
    wt_rng r = {23};
    static const uint32_t dims[] = {8, 32, 48, 64, 96, 128, 256};
    enum { R = 9 };
    uint8_t buf[R][256 * 4 + 8], want[R * 256 + 16], got[R * 256 + 16];
    const uint8_t *rows[R];
    float inv[R];
    for (int it = 0; it < 800; ++it)
        for (uint32_t codec = KW_WIRE_CODEC_INT8; codec < KW_WIRE_CODEC_COUNT_V11; ++codec) {
            const uint32_t dtype = 1 + wt_below(&r, 3), D = dims[wt_below(&r, 7)], n_rows = 1 + wt_below(&r, R);
            const size_t es = kw__wire_dtype_size(dtype), rb = (size_t)D * kw_wire_codec_bits(codec) / 8;
            for (uint32_t i = 0; i < n_rows; ++i) {
                rows[i] = buf[i] + wt_below(&r, 3) * es;
                fill(&r, (uint8_t *)rows[i], dtype, D, it % 3 == 0, ldexpf(1.0f, (int)wt_below(&r, 10) - 5));
                uint32_t code;
                float sc;
                const float amax = kw_f32_from_bits(g_isas[0]->amax(rows[i], dtype, D));
                inv[i] = it % 3 == 0 ? 1.0f : 0.0f;
                if (it % 3 && wt_below(&r, 8) && amax > 0 &&
                    kw_wire_scale_choose(amax, kw_wire_codec_qmax(codec), KW_WIRE_SCALE_F16, &code, &sc) == 0)
                    inv[i] = 1.0f / sc;
                g_isas[0]->quantize(codec, rows[i], dtype, D, inv[i], want + i * rb);
            }
            for (int k = 0; k < g_n_isas; ++k) {
                memset(got, 0xa5, sizeof got);
                g_isas[k]->quantize_rows(codec, rows, n_rows, dtype, D, inv, got);
                if (memcmp(got, want, n_rows * rb) != 0)
                    fail_msg("%s quantize_rows %s dtype %u D=%u rows %u: bytes differ from quantize per row",
                             kw_wire_isa_name(g_isas[k]->isa), kw_wire_codec_name(codec), dtype, D, n_rows);
                assert_int_equal(got[n_rows * rb], 0xa5);
            }
        }
}

/* Every ISA's quantize, quantize_rows (rows of 64), quantize_groups (G 16, 32 and 64) and quantize_group_rows (rows
 * of 64 and 128 in reverse order, G half a row) of n values x of dtype (f32 or bf16, n a multiple of 64) with one
 * inverse scale inv against the scalar kernel, MXCSR's FTZ and DAZ bits set to csr. */
static void check_codes(uint32_t codec, const void *x, uint32_t dtype, uint32_t n, float inv, unsigned csr,
                        const char *what) {
    const size_t bytes = (size_t)n * kw_wire_codec_bits(codec) / 8, es = kw__wire_dtype_size(dtype);
    uint8_t *want = malloc(bytes + 1), *got = malloc(bytes + 1), *tmp = malloc(bytes);
    float *invs = malloc(n / 16 * sizeof *invs);
    const uint8_t **rows = malloc(n / 64 * sizeof *rows);
    assert_non_null(want);
    assert_non_null(got);
    assert_non_null(tmp);
    assert_non_null(invs);
    assert_non_null(rows);
    for (uint32_t i = 0; i < n / 16; ++i)
        invs[i] = inv;
    for (uint32_t i = 0; i < n / 64; ++i)
        rows[i] = (const uint8_t *)x + 64 * es * i;
#if defined(__x86_64__)
    const unsigned saved = _mm_getcsr();
    _mm_setcsr((saved & ~0x8040u) | csr);
#endif
    g_isas[0]->quantize(codec, x, dtype, n, inv, want);
    for (int k = 1; k < g_n_isas; ++k)
        for (int way = 0; way < 7; ++way) {
            /* ways 5 and 6: quantize_group_rows of rows of 64 (G 32) and 128 (G 64) values in reverse order */
            const uint32_t len = way == 5 ? 64 : 128, nr = n / len;
            const size_t rb = (size_t)len * kw_wire_codec_bits(codec) / 8;
            if (way == 6 && n % 128) continue;
            for (uint32_t i = 0; way >= 5 && i < nr; ++i)
                rows[i] = (const uint8_t *)x + (size_t)(nr - 1 - i) * len * es;
            memset(got, 0xa5, bytes + 1);
            if (way == 0) g_isas[k]->quantize(codec, x, dtype, n, inv, got);
            if (way == 1) g_isas[k]->quantize_rows(codec, rows, n / 64, dtype, 64, invs, got);
            if (way >= 2 && way < 5) g_isas[k]->quantize_groups(codec, x, dtype, n, 16u << (way - 2), invs, got);
            if (way >= 5) g_isas[k]->quantize_group_rows(codec, rows, nr, dtype, len, len / 2, invs, got);
            if (way >= 5) { /* back in element order, and the rows of 64 for way 1 */
                for (uint32_t i = 0; i < nr; ++i)
                    memcpy(tmp + (size_t)(nr - 1 - i) * rb, got + (size_t)i * rb, rb);
                memcpy(got, tmp, bytes);
                for (uint32_t i = 0; i < n / 64; ++i)
                    rows[i] = (const uint8_t *)x + 64 * es * i;
            }
            for (size_t b = 0; b < bytes; ++b)
                if (got[b] != want[b]) {
#if defined(__x86_64__)
                    _mm_setcsr(saved);
#endif
                    const size_t e = b * 8 / kw_wire_codec_bits(codec);
                    float v;
                    kw__wire_load_f32((const uint8_t *)x + e * es, dtype, 1, &v);
                    fail_msg("%s %s (%s, inv %a, csr %#x, way %d): byte %zu (value %zu = %a) is 0x%02x, scalar 0x%02x",
                             kw_wire_isa_name(g_isas[k]->isa), kw_wire_codec_name(codec), what, (double)inv, csr, way,
                             b, e, (double)v, got[b], want[b]);
                }
            assert_int_equal(got[bytes], 0xa5);
        }
#if defined(__x86_64__)
    _mm_setcsr(saved);
#endif
    free(want);
    free(got);
    free(tmp);
    free(invs);
    free(rows);
}

/* check_codes of f32 values with inv = 1 (so y = x exactly). */
static void check_exact_codes(uint32_t codec, const float *v, uint32_t n, const char *what) {
    check_codes(codec, v, KW_WIRE_DTYPE_F32, n, 1.0f, 0, what);
}

/* The NF4 kernels at every decision point: each midpoint and each 1/16 step of [-1, 1] (the AVX-512 kernel's cells,
 * whose tables are checked against the thresholds) with 24 floats either side, -0, +-1 and beyond, f32 subnormals,
 * then every 2^11-th float in [-1, 1]. */
static void test_nf4_edges(void **state) {
    (void)state;
    enum { N = 1u << 20 };
    float *v = malloc(N * sizeof *v);
    assert_non_null(v);
    uint32_t n = 0;
    for (int c = -16; c <= 16; ++c)
        for (int d = -24; d <= 24; ++d) {
            const float b = (float)c / 16.0f;
            v[n++] = kw_f32_from_bits((uint32_t)((int32_t)kw_f32_bits(b) + d));
            if (b == 0.0f)
                v[n - 1] = kw_f32_from_bits(d < 0 ? 0x80000000u + (uint32_t)-d : (uint32_t)d); /* both signs */
        }
    for (uint32_t k = 0; k < 15; ++k)
        for (int d = -24; d <= 24; ++d)
            v[n++] = kw_f32_from_bits((uint32_t)((int32_t)kw_f32_bits(kw_wire_nf4_mid(k)) + d));
    const float special[] = {-0.0f, 0.0f, 1.0f, -1.0f, 1.5f, -1.5f, 0x1p-149f, -0x1p-149f, 0x1p-126f, 1e30f, -1e30f};
    for (size_t i = 0; i < sizeof special / sizeof special[0]; ++i)
        v[n++] = special[i];
    while (n % 64)
        v[n++] = 0.5f;
    check_exact_codes(KW_WIRE_CODEC_NF4, v, n, "decision points");
    /* every 2^11-th float of [0, 1] with both signs: 2^20 values a call */
    uint32_t u = 0;
    while (u <= 0x3f800000u) {
        for (n = 0; n < N && u <= 0x3f800000u; u += 1u << 11) {
            v[n++] = kw_f32_from_bits(u);
            v[n++] = -kw_f32_from_bits(u + (1u << 10));
        }
        while (n % 64)
            v[n++] = 0.0f;
        check_exact_codes(KW_WIRE_CODEC_NF4, v, n, "sweep");
    }
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    /* the AVX-512 cell tables from the thresholds: base = how many lie below the cell, thr = the one inside or 2.0 */
    const uint32_t *thr;
    const int32_t *base;
    kw__wire_nf4_cells(&thr, &base);
    for (int c = -16; c < 16; ++c) {
        const float lo = (float)c / 16.0f, hi = (float)(c + 1) / 16.0f;
        int32_t below = 0;
        uint32_t inside = 0x40000000u, count = 0;
        for (uint32_t k = 0; k < 15; ++k) {
            const float m = kw_wire_nf4_mid(k); /* odd k: the float below (kw_wire_nf4_code's tie rule) */
            const float t = k & 1 ? kw_f32_from_bits(m > 0.0f ? kw_f32_bits(m) - 1u : kw_f32_bits(m) + 1u) : m;
            below += t < lo;
            if (t >= lo && t < hi) inside = kw_f32_bits(t), ++count;
        }
        assert_true(count <= 1);
        assert_int_equal(base[c & 31], below);
        assert_int_equal(thr[c & 31], inside);
    }
#endif
    free(v);
}

/* The FP8 kernels at every rounding decision: for every f32 exponent from the smallest subnormal to beyond the
 * largest code, mantissas at each rounding position's tie, one ulp either side, the steps between codes and a few
 * random ones, both signs; then +-0, +-Inf and the saturation boundary. inv = 1, so y is the value itself. */
static void test_fp8_edges(void **state) {
    (void)state;
    wt_rng r = {29};
    enum { N = 1u << 16 };
    float *v = malloc(N * sizeof *v);
    assert_non_null(v);
    for (uint32_t codec = KW_WIRE_CODEC_E4M3; codec <= KW_WIRE_CODEC_E5M2; ++codec) {
        const uint32_t lsb = codec == KW_WIRE_CODEC_E4M3 ? 20 : 21; /* the mantissa bit of the code's last bit */
        for (uint32_t e = 0; e < 160; ++e) {
            uint32_t n = 0;
            for (uint32_t k = 0; k < (1u << (23 - lsb)); ++k) {
                const uint32_t m = k << lsb, half = 1u << (lsb - 1);
                const uint32_t ms[] = {m, m + 1, m + half - 1, m + half, m + half + 1, m + (1u << lsb) - 1};
                for (size_t i = 0; i < sizeof ms / sizeof ms[0]; ++i)
                    for (uint32_t sign = 0; sign < 2; ++sign)
                        v[n++] = kw_f32_from_bits(sign << 31 | e << 23 | (ms[i] & 0x7fffffu));
            }
            /* the ties of the subnormal codes at every shift: exponents below e only reach them through the sweep */
            while (n % 64 || n < 128)
                v[n++] = kw_f32_from_bits(e << 23 | (uint32_t)(wt_next(&r) & 0x807fffffu));
            check_exact_codes(codec, v, n, "exponent sweep");
        }
        const float special[] = {0.0f,    -0.0f,    INFINITY, -INFINITY,  448.0f,    464.0f, 464.00003f, 480.0f,
                                 -480.0f, 57344.0f, 61440.0f, 61439.996f, -61440.0f, 1e38f,  0x1p-149f,  -0x1p-149f};
        uint32_t n = 0;
        for (size_t i = 0; i < sizeof special / sizeof special[0]; ++i)
            v[n++] = special[i];
        while (n % 64)
            v[n++] = 1.0f;
        check_exact_codes(codec, v, n, "specials");
    }
    free(v);
}

/* The AVX2 FP8 step of 32 bf16 values rounds every lane half to even without a branch and converts subnormal lanes
 * only in steps that hold one: steps of rounding ties (y exactly between two codes, both signs, the largest finite
 * code's tie with saturation among them) with one lane, at each of the 32 positions in turn, a subnormal y (a tie
 * between subnormal codes, half the smallest one, or a zero of either sign), at inverse scales that keep the values
 * exact (powers of two) and at 3 / 4 of them (still exact: two significant bits). */
static void test_fp8_tie_steps(void **state) {
    (void)state;
    wt_rng r = {47};
    enum { N = 32 * 32 };
    uint16_t x[N];
    for (uint32_t codec = KW_WIRE_CODEC_E4M3; codec <= KW_WIRE_CODEC_E5M2; ++codec) {
        const int mbits = codec == KW_WIRE_CODEC_E4M3 ? 3 : 2, emin = codec == KW_WIRE_CODEC_E4M3 ? -6 : -14;
        const int emax = codec == KW_WIRE_CODEC_E4M3 ? 8 : 15;
        for (int round = 0; round < 8; ++round)
            for (int ie = -2; ie <= 2; ++ie) {
                const float inv = ldexpf(round % 2 ? 0.75f : 1.0f, ie);
                for (uint32_t i = 0; i < N; ++i) {
                    /* a tie at y = x * inv (for inv = 2^ie; 3 / 4 of it moves the tie): code bits, then a half */
                    const uint32_t k = (uint32_t)wt_next(&r) & ((1u << mbits) - 1u);
                    const int e = emin + (int)(wt_next(&r) % (uint64_t)(emax - emin + 1)) - ie;
                    float v = ldexpf(1.0f + (float)k / (float)(1u << mbits) + 1.0f / (float)(2u << mbits), e);
                    if (i % 32 == i / 32) { /* the step's subnormal lane */
                        const uint32_t kind = (uint32_t)(wt_next(&r) % 4);
                        const float q = ldexpf(1.0f, emin - mbits - ie); /* the subnormal quantum before inv */
                        v = kind == 0 ? 0.0f : kind == 1 ? -0.0f : kind == 2 ? 0.5f * q : q * (1.5f + (float)(k & 1u));
                    }
                    if (wt_next(&r) & 1) v = -v;
                    x[i] = kw_f32_to_bf16(v);
                }
                if (round == 6) x[5] = kw_f32_to_bf16((codec == KW_WIRE_CODEC_E4M3 ? 464.0f : 61440.0f) / inv);
                check_codes(codec, x, KW_WIRE_DTYPE_BF16, N, inv, 0, "tie steps");
            }
    }
}

/* The bf16 paths of NF4 (thresholds moved to the input's keys) and FP8 (signs from the input words, the subnormal
 * conversion only in steps that hold one): every bf16 word (NaN too for NF4; FP8 assumes none, as the encoder) at
 * inverse scales that put a threshold just on, above and below a bf16 value (t_k / g for a bf16 g, and the floats
 * either side), at the bounds of the key path (2^-100, 2^100 and just outside, where the thresholds on y take over),
 * at powers of two (exact FP8 ties), at FP8 ties and one f32 either side (y = inv at x = 1), and at random ones, some
 * negated, with and without FTZ/DAZ. */
static void test_bf16_codes(void **state) {
    (void)state;
    wt_rng r = {43};
    enum { N = 65536 };
    uint16_t *x = malloc(N * sizeof *x);
    assert_non_null(x);
    for (uint32_t codec = KW_WIRE_CODEC_NF4; codec <= KW_WIRE_CODEC_E5M2; ++codec) {
        for (uint32_t i = 0; i < N; ++i) { /* the words in order: runs of subnormals, normals, Inf, NaN */
            x[i] = (uint16_t)i;
            if (codec != KW_WIRE_CODEC_NF4 && (i & 0x7fffu) > 0x7f80u) x[i] = (uint16_t)(i & 0x8000u); /* NaN -> 0 */
        }
        for (int it = 0; it < 98; ++it) {
            float inv;
            if (it >= 96) { /* +0 and -0 (the sign of -0 flips every code's sign bit); Inf * 0 is a NaN, which FP8
                             * assumes away as above: Inf words -> 0 */
                inv = it == 96 ? 0.0f : -0.0f;
                for (uint32_t i = 0; codec != KW_WIRE_CODEC_NF4 && i < N; ++i)
                    if ((x[i] & 0x7fffu) == 0x7f80u) x[i] = 0;
            } else if (it < 48) { /* a threshold on a bf16 value g, then one f32 either side */
                const uint32_t k = wt_below(&r, 15);
                const float m = kw_wire_nf4_mid(k), t = k & 1 ? kw_f32_from_bits(kw_f32_bits(m) + (m > 0 ? -1 : 1)) : m;
                const float g = kw_bf16_to_f32((uint16_t)(0x3f80u + wt_below(&r, 0x600u) - 0x300u));
                inv = fabsf(t / g);
                if (it % 3) inv = kw_f32_from_bits(kw_f32_bits(inv) + (it % 3 == 1 ? 1u : -1u));
                if (codec != KW_WIRE_CODEC_NF4) inv *= 448.0f;
            } else if (it < 56) {
                static const float bounds[] = {0x1p-100f,        0x1p100f,        0x1.000002p-100f, 0x1.fffffep99f,
                                               0x1.fffffep-101f, 0x1.000002p100f, 0x1p-126f,        0x1p127f};
                inv = bounds[it - 48];
            } else if (it < 64) { /* FP8: y = inv at x = 1 one below, at and one above a rounding tie */
                const uint32_t lsb = codec == KW_WIRE_CODEC_E4M3 ? 20 : 21;
                inv = kw_f32_from_bits((117u + wt_below(&r, 20)) << 23 | wt_below(&r, 1u << (23 - lsb)) << lsb |
                                       ((1u << (lsb - 1)) + (uint32_t)(it % 3) - 1u));
            } else if (it < 72) {
                inv = ldexpf(1.0f, (int)wt_below(&r, 40) - 20);
            } else {
                inv = ldexpf(1.0f + wt_uniform(&r) / 2, (int)wt_below(&r, 60) - 30);
            }
            if (it % 8 == 5 && it < 96) inv = -inv; /* not the encoder's, but the kernels' rule holds for any inv */
            check_codes(codec, x, KW_WIRE_DTYPE_BF16, N, inv, it % 4 == 3 ? 0x8040u : 0, "bf16 words");
        }
    }
    /* NF4's bounds of the AVX-512 kernel's z = fl32(x * 16 inv) (normal inv and 16 inv): 2^123 and the floats either
     * side (16 inv Inf above it, 0 * Inf a NaN), 2^-126 and the subnormals below (16 inv flushed by FTZ or not), both
     * signs, under no flag, FTZ, DAZ and both */
    for (uint32_t i = 0; i < N; ++i)
        x[i] = (uint16_t)i;
    static const float fold[] = {0x1p123f,  0x1.fffffep122f,  0x1.000002p123f,  0x1p124f,  0x1p127f, 0x1p-126f,
                                 0x1p-127f, 0x1.fffffcp-127f, 0x1.000002p-126f, 0x1p-149f, 0x1p-140f};
    for (size_t i = 0; i < sizeof fold / sizeof fold[0]; ++i)
        for (int sign = 0; sign < 2; ++sign)
            for (unsigned csr = 0; csr < 4; ++csr)
                check_codes(KW_WIRE_CODEC_NF4, x, KW_WIRE_DTYPE_BF16, N, sign ? -fold[i] : fold[i],
                            (csr & 1 ? 0x8000u : 0) | (csr & 2 ? 0x0040u : 0), "bf16 words, fold bounds");
    free(x);
}

/* NF4 of bf16 groups near every threshold at the inverse scale of every f16 scale the encoder can make (1 / s for
 * each positive finite f16 s) and at 2^17 random ones (log-uniform over [2^-110, 2^110], both signs, so past the key
 * path's bounds too): a group of 64 per inverse scale holding, for each of the 15 thresholds t_k, the four bf16 words
 * from two below to one above the bf16 nearest t_k / inv (the key tables' X_k and M_k and their neighbours), and +-0,
 * a NaN and -Inf. quantize_groups and quantize_group_rows (rows of two groups) of every ISA against the scalar
 * kernel. */
static void test_nf4_threshold_sweep(void **state) {
    (void)state;
    wt_rng r = {47};
    enum { NF16 = 0x7c00 - 1, NRAND = 1 << 17, NG = NF16 + NRAND + 1 }; /* NG even: whole rows of two groups */
    uint16_t *x = malloc((size_t)NG * 64 * sizeof *x);
    float *inv = malloc((size_t)NG * sizeof *inv);
    uint8_t *want = malloc((size_t)NG * 32), *got = malloc((size_t)NG * 32 + 1);
    const uint8_t **rows = malloc((size_t)NG / 2 * sizeof *rows);
    assert_true(x && inv && want && got && rows);
    for (uint32_t g = 0; g < NG; ++g) {
        if (g < NF16)
            inv[g] = 1.0f / kw_f16_to_f32((uint16_t)(g + 1));
        else if (g < NF16 + NRAND)
            inv[g] = (wt_below(&r, 2) ? -1.0f : 1.0f) * ldexpf(1.0f + wt_uniform(&r), (int)wt_below(&r, 221) - 110);
        else
            inv[g] = 0x1p-100f;
        uint16_t *v = x + (size_t)g * 64;
        for (uint32_t k = 0; k < 15; ++k) {
            const float m = kw_wire_nf4_mid(k);
            const uint16_t c = kw_f32_to_bf16(m / inv[g]);
            for (int d = -2; d <= 1; ++d)
                v[4 * k + (uint32_t)(d + 2)] = (uint16_t)(c + d);
        }
        v[60] = 0x0000;
        v[61] = 0x8000;
        v[62] = 0x7fc1;
        v[63] = 0xff80;
    }
    for (uint32_t i = 0; i < NG / 2; ++i)
        rows[i] = (const uint8_t *)(x + (size_t)i * 128);
    g_isas[0]->quantize_groups(KW_WIRE_CODEC_NF4, x, KW_WIRE_DTYPE_BF16, NG * 64, 64, inv, want);
    for (int k = 1; k < g_n_isas; ++k)
        for (int way = 0; way < 2; ++way) {
            memset(got, 0xa5, (size_t)NG * 32 + 1);
            if (way == 0)
                g_isas[k]->quantize_groups(KW_WIRE_CODEC_NF4, x, KW_WIRE_DTYPE_BF16, NG * 64, 64, inv, got);
            else
                g_isas[k]->quantize_group_rows(KW_WIRE_CODEC_NF4, rows, NG / 2, KW_WIRE_DTYPE_BF16, 128, 64, inv, got);
            for (size_t b = 0; b < (size_t)NG * 32; ++b)
                if (got[b] != want[b])
                    fail_msg("%s nf4 way %d: group %zu (inv %a), byte %zu (words 0x%04x 0x%04x) is 0x%02x, scalar "
                             "0x%02x",
                             kw_wire_isa_name(g_isas[k]->isa), way, b / 32, (double)inv[b / 32], b % 32, x[2 * b],
                             x[2 * b + 1], got[b], want[b]);
            assert_int_equal(got[(size_t)NG * 32], 0xa5);
        }
    free(x);
    free(inv);
    free(want);
    free(got);
    free(rows);
}

/* dequantize_rows: blocks of arbitrary rows (reserved codes in some) of every codec, each with its own scale, to
 * f32 and bf16 rows at scattered, misaligned addresses: the values and status of dequantize row by row, nothing
 * written between or past the rows. */
static void test_dequantize_rows(void **state) {
    (void)state;
    wt_rng r = {31};
    static const uint32_t dims[] = {8, 16, 32, 48, 64, 96, 128, 256};
    enum { R = 9, W = 256 * 4 + 16 };
    uint8_t src[R * 256], want[R][W], got[R][W];
    void *out[R];
    float sc[R];
    for (int it = 0; it < 1500; ++it)
        for (uint32_t codec = KW_WIRE_CODEC_INT8; codec < KW_WIRE_CODEC_COUNT_V11; ++codec) {
            const uint32_t D = dims[wt_below(&r, 8)], n_rows = 1 + wt_below(&r, R);
            const uint32_t dtype = wt_below(&r, 2) ? KW_WIRE_DTYPE_F32 : KW_WIRE_DTYPE_BF16;
            const size_t rb = (size_t)D * kw_wire_codec_bits(codec) / 8, es = dtype == KW_WIRE_DTYPE_F32 ? 4 : 2;
            for (size_t i = 0; i < sizeof src; ++i)
                src[i] = (uint8_t)wt_next(&r);
            for (uint32_t i = 0; it % 4 && i < n_rows; ++i) /* valid rows three times in four */
                make_valid(codec, src + i * rb, D);
            int rc = 0;
            size_t off[R];
            for (uint32_t i = 0; i < n_rows; ++i) {
                sc[i] = deq_scale(&r);
                if (wt_below(&r, 8) == 0) /* around 2^-126: subnormal products, which bf16 conversion must keep */
                    sc[i] = wt_below(&r, 4) ? ldexpf(1.0f + wt_uniform(&r) / 2, (int)wt_below(&r, 8) - 131) : 0.0f;
                off[i] = wt_below(&r, 3) * es;
                rc |= g_isas[0]->dequantize(codec, src + i * rb, D, sc[i], want[i] + off[i], dtype);
            }
            if (it % 4) assert_int_equal(rc, 0);
            for (int k = 0; k < g_n_isas; ++k) {
                memset(got, 0xa5, sizeof got);
                for (uint32_t i = 0; i < n_rows; ++i)
                    out[i] = got[i] + off[i];
                assert_int_equal(g_isas[k]->dequantize_rows(codec, src, n_rows, D, sc, out, dtype), rc);
                for (uint32_t i = 0; i < n_rows; ++i) {
                    if (memcmp(got[i] + off[i], want[i] + off[i], D * es) != 0)
                        fail_msg("%s dequantize_rows %s D=%u dtype %u: row %u differs from dequantize",
                                 kw_wire_isa_name(g_isas[k]->isa), kw_wire_codec_name(codec), D, dtype, i);
                    assert_int_equal(got[i][off[i] + D * es], 0xa5);
                    assert_int_equal(got[i][0], off[i] ? 0xa5 : got[i][0]);
                }
            }
        }
}

static void test_dequantize(void **state) {
    (void)state;
    wt_rng r = {3};
    uint8_t src[1024 + 1];
    float want[1024], got[1024 + 1];
    uint16_t wantb[1024], gotb[1024 + 1];
    for (int it = 0; it < 3000; ++it)
        for (uint32_t codec = KW_WIRE_CODEC_INT8; codec < KW_WIRE_CODEC_COUNT_V11; ++codec) {
            const uint32_t n = kLens[wt_below(&r, sizeof kLens / sizeof kLens[0])];
            const uint32_t off = wt_below(&r, 2);
            for (size_t i = 0; i < sizeof src; ++i)
                src[i] = (uint8_t)wt_next(&r);
            if (it % 2) make_valid(codec, src + off, n);
            const float s = deq_scale(&r);
            const int rc = g_isas[0]->dequantize(codec, src + off, n, s, want, KW_WIRE_DTYPE_F32);
            if (it % 2) assert_int_equal(rc, 0);
            const int rcb = g_isas[0]->dequantize(codec, src + off, n, s, wantb, KW_WIRE_DTYPE_BF16);
            assert_int_equal(rc, rcb);
            for (int k = 1; k < g_n_isas; ++k) {
                got[n] = 42.0f;
                gotb[n] = 42;
                assert_int_equal(g_isas[k]->dequantize(codec, src + off, n, s, got, KW_WIRE_DTYPE_F32), rc);
                assert_int_equal(g_isas[k]->dequantize(codec, src + off, n, s, gotb, KW_WIRE_DTYPE_BF16), rc);
                assert_memory_equal(got, want, (size_t)n * 4);
                assert_memory_equal(gotb, wantb, (size_t)n * 2);
                assert_true(got[n] == 42.0f && gotb[n] == 42);
            }
        }
}

/* amax_groups: every group of G values of rows at scattered, misaligned addresses (bf16, f16, f32; with NaN, Inf and
 * the edge values of fill()), G from 4 to the whole row, row counts that leave partial batches of 8 and 16 groups;
 * the same absmax bits as the scalar kernel, and nothing written past the last group. */
static void test_amax_groups(void **state) {
    (void)state;
    wt_rng r = {10};
    static uint8_t buf[48 * 1024 * 4 + 64];
    static const uint32_t dims[] = {16, 32, 64, 128, 256, 1024};
    const uint8_t *rows[48];
    uint32_t want[48 * 256 + 1], got[48 * 256 + 1];
    for (int it = 0; it < 1500; ++it) {
        const uint32_t dtype = 1 + wt_below(&r, 3), D = dims[wt_below(&r, 6)], n_rows = 1 + wt_below(&r, 48);
        uint32_t G = 4u << wt_below(&r, 9);
        G = G > D ? D : G;
        const size_t es = kw__wire_dtype_size(dtype), row_bytes = (size_t)D * es;
        for (uint32_t i = 0; i < n_rows; ++i) { /* rows in shuffled slots, at an odd element offset half the time */
            const size_t slot = (i * 7u + (uint32_t)it) % 48u;
            rows[i] = buf + slot * row_bytes + (wt_below(&r, 2) ? es : 0);
            fill(&r, (uint8_t *)rows[i], dtype, D, it % 2, ldexpf(1.0f, (int)wt_below(&r, 20) - 10));
            if (it % 7 == 0 && wt_below(&r, 3) == 0) { /* a NaN or Inf in this row */
                const float bad = wt_below(&r, 2) ? INFINITY : -NAN;
                const uint32_t at = wt_below(&r, D);
                if (dtype == KW_WIRE_DTYPE_F32) {
                    memcpy((uint8_t *)rows[i] + 4 * at, &bad, 4);
                } else {
                    const uint16_t h = dtype == KW_WIRE_DTYPE_BF16 ? kw_f32_to_bf16(bad) : kw_f32_to_f16(bad);
                    memcpy((uint8_t *)rows[i] + 2 * at, &h, 2);
                }
            }
        }
        const uint32_t n = n_rows * (D / G);
        g_isas[0]->amax_groups(rows, n_rows, dtype, D, G, want);
        for (uint32_t q = 0; q < n; ++q) /* the reference is the row kernel on each group */
            assert_int_equal(want[q], g_isas[0]->amax(rows[q / (D / G)] + (size_t)(q % (D / G)) * G * es, dtype, G));
        for (int k = 1; k < g_n_isas; ++k) {
            got[n] = 0xa5a5a5a5u;
            g_isas[k]->amax_groups(rows, n_rows, dtype, D, G, got);
            for (uint32_t q = 0; q < n; ++q)
                if (got[q] != want[q])
                    fail_msg("%s amax_groups dtype %u D=%u G=%u rows %u: group %u is 0x%08x, scalar 0x%08x",
                             kw_wire_isa_name(g_isas[k]->isa), dtype, D, G, n_rows, q, got[q], want[q]);
            assert_int_equal(got[n], 0xa5a5a5a5u);
        }
    }
}

/* quantize_groups: a row of every codec in groups of G values, each with its own inverse scale (from its absmax, or 1
 * for the exact ties of fill(), or 0 for a zero scale): the same bytes as quantize group by group, none past the row;
 * quantize_group_rows the same of three rows, their groups' scales rotated. */
static void test_quantize_groups(void **state) {
    (void)state;
    wt_rng r = {11};
    static const uint32_t dims[] = {32, 64, 96, 128, 256, 1024};
    uint8_t buf[1024 * 4 + 4], want[1024 + 16], got[1024 + 16], want3[3 * 1024 + 16], got3[3 * 1024 + 16];
    float inv[256], inv3[3 * 256];
    for (int it = 0; it < 1500; ++it)
        for (uint32_t codec = KW_WIRE_CODEC_INT8; codec < KW_WIRE_CODEC_COUNT_V11; ++codec) {
            const uint32_t dtype = 1 + wt_below(&r, 3), D = dims[wt_below(&r, 6)], bits = kw_wire_codec_bits(codec);
            uint32_t G = 8u << wt_below(&r, 8);
            while (D % G)
                G >>= 1;
            const uint32_t off = wt_below(&r, 2) * (uint32_t)kw__wire_dtype_size(dtype);
            const size_t es = kw__wire_dtype_size(dtype);
            fill(&r, buf + off, dtype, D, it % 3 == 0, ldexpf(1.0f, (int)wt_below(&r, 10) - 5));
            for (uint32_t c = 0; c < D / G; ++c) {
                uint32_t code;
                float sc;
                const float amax = kw_f32_from_bits(g_isas[0]->amax(buf + off + (size_t)c * G * es, dtype, G));
                inv[c] = it % 3 == 0 ? 1.0f : 0.0f;
                if (it % 3 && wt_below(&r, 8) && amax > 0 &&
                    kw_wire_scale_choose(amax, kw_wire_codec_qmax(codec), KW_WIRE_SCALE_F16, &code, &sc) == 0)
                    inv[c] = 1.0f / sc;
            }
            const size_t bytes = (size_t)D * bits / 8, chunk = (size_t)G * bits / 8;
            for (uint32_t c = 0; c < D / G; ++c)
                g_isas[0]->quantize(codec, buf + off + (size_t)c * G * es, dtype, G, inv[c], want + c * chunk);
            /* quantize_group_rows: three rows, the same row each time, row r with group c's inverse scale that
             * of group (c + r) mod D / G */
            const uint32_t ng = D / G;
            const uint8_t *rows[3] = {buf + off, buf + off, buf + off};
            for (uint32_t q = 0; q < 3 * ng; ++q)
                inv3[q] = inv[(q % ng + q / ng) % ng];
            for (uint32_t q = 0; q < 3 * ng; ++q)
                g_isas[0]->quantize(codec, buf + off + (size_t)(q % ng) * G * es, dtype, G, inv3[q], want3 + q * chunk);
            for (int k = 0; k < g_n_isas; ++k) {
                memset(got, 0xa5, sizeof got);
                g_isas[k]->quantize_groups(codec, buf + off, dtype, D, G, inv, got);
                if (memcmp(got, want, bytes) != 0)
                    fail_msg("%s quantize_groups %s dtype %u D=%u G=%u: bytes differ from quantize per group",
                             kw_wire_isa_name(g_isas[k]->isa), kw_wire_codec_name(codec), dtype, D, G);
                assert_int_equal(got[bytes], 0xa5);
                memset(got3, 0xa5, sizeof got3);
                g_isas[k]->quantize_group_rows(codec, rows, 3, dtype, D, G, inv3, got3);
                if (memcmp(got3, want3, 3 * bytes) != 0)
                    fail_msg("%s quantize_group_rows %s dtype %u D=%u G=%u: bytes differ from quantize per group",
                             kw_wire_isa_name(g_isas[k]->isa), kw_wire_codec_name(codec), dtype, D, G);
                assert_int_equal(got3[3 * bytes], 0xa5);
            }
        }
}

/* NF4 groups whose inverse scales differ group by group, some inside the AVX-512 kernel's fold (inv and 16 inv
 * normal) and some outside it (2^123 and up, subnormal, 0, Inf, NaN, both signs), in one call: quantize_groups and
 * quantize_group_rows (three distinct rows) of every ISA against the scalar quantize per group, bf16 (G 64, 128: the
 * dispatch-free path) and f32 (G 32, 64), under no flag, FTZ, DAZ and both. A decision taken once per call (from the
 * first group's inv) instead of per group fails it (review of the eighth pass). */
static void test_nf4_mixed_fold(void **state) {
    (void)state;
    wt_rng r = {41};
    static const float pool[] = {0x1p123f,  0x1.fffffep122f, 0x1.000002p123f, 0x1p124f, 0x1p127f, 0x1.fffffep127f,
                                 0x1p-126f, 0x1p-127f,       0x1p-149f,       0.0f,     1.0f,     0x1.5p3f,
                                 1.0f / 3,  0x1.8p-7f,       INFINITY,        NAN,      0x1p100f, 0x1p-100f};
    enum { D = 256, NR = 3 };
    uint8_t buf[NR][D * 4], want[NR * D / 2 + 1], got[NR * D / 2 + 1];
    float inv[NR * D / 16];
    for (int it = 0; it < 400; ++it) {
        const uint32_t dtype = it % 2 ? KW_WIRE_DTYPE_BF16 : KW_WIRE_DTYPE_F32;
        const uint32_t G = dtype == KW_WIRE_DTYPE_BF16 ? 64u << (it / 2 % 2) : 32u << (it / 2 % 2), ng = D / G;
        const size_t es = kw__wire_dtype_size(dtype), chunk = G / 2;
        const uint8_t *rows[NR];
        for (int q = 0; q < NR; ++q) {
            fill(&r, buf[q], dtype, D, it % 3 == 0, ldexpf(1.0f, (int)wt_below(&r, 12) - 6));
            rows[q] = buf[q];
        }
        for (uint32_t q = 0; q < NR * ng; ++q) {
            const float v = pool[wt_below(&r, sizeof pool / sizeof pool[0])];
            inv[q] = wt_below(&r, 2) ? -v : v;
        }
        const unsigned csr = (it / 4 % 4 & 1 ? 0x8000u : 0) | (it / 4 % 4 & 2 ? 0x0040u : 0);
#if defined(__x86_64__)
        const unsigned saved = _mm_getcsr();
        _mm_setcsr((saved & ~0x8040u) | csr);
#endif
        for (uint32_t q = 0; q < NR * ng; ++q)
            g_isas[0]->quantize(KW_WIRE_CODEC_NF4, rows[q / ng] + (size_t)(q % ng) * G * es, dtype, G, inv[q],
                                want + q * chunk);
        int bad = -1, way = 0;
        for (int k = 1; k < g_n_isas && bad < 0; ++k)
            for (way = 0; way < 2 && bad < 0; ++way) {
                memset(got, 0xa5, sizeof got);
                if (way == 0)
                    for (int q = 0; q < NR; ++q)
                        g_isas[k]->quantize_groups(KW_WIRE_CODEC_NF4, rows[q], dtype, D, G, inv + q * ng,
                                                   got + (size_t)q * D / 2);
                else
                    g_isas[k]->quantize_group_rows(KW_WIRE_CODEC_NF4, rows, NR, dtype, D, G, inv, got);
                if (memcmp(got, want, NR * D / 2) != 0 || got[NR * D / 2] != 0xa5) bad = k;
            }
#if defined(__x86_64__)
        _mm_setcsr(saved);
#endif
        if (bad >= 0)
            fail_msg("%s nf4 %s (dtype %u, G %u, csr %#x, iteration %d): codes differ from quantize per group",
                     kw_wire_isa_name(g_isas[bad]->isa), way == 1 ? "quantize_groups" : "quantize_group_rows", dtype, G,
                     csr, it);
    }
}

/* dequantize_groups: arbitrary bytes (reserved codes included half the time) of every codec in groups of G values,
 * each with its own scale, to f32 and bf16: the values and the status of dequantize group by group, nothing written
 * past the row. */
static void test_dequantize_groups(void **state) {
    (void)state;
    wt_rng r = {13};
    static const uint32_t dims[] = {32, 64, 96, 128, 256, 1024};
    uint8_t src[1024 + 1];
    float sc[256], want[1024], got[1024 + 1];
    uint16_t wantb[1024], gotb[1024 + 1];
    for (int it = 0; it < 1500; ++it)
        for (uint32_t codec = KW_WIRE_CODEC_INT8; codec < KW_WIRE_CODEC_COUNT_V11; ++codec) {
            const uint32_t D = dims[wt_below(&r, 6)], bits = kw_wire_codec_bits(codec);
            uint32_t G = 8u << wt_below(&r, 8);
            while (D % G)
                G >>= 1;
            for (size_t i = 0; i < sizeof src; ++i)
                src[i] = (uint8_t)wt_next(&r);
            if (it % 2) make_valid(codec, src, D);
            for (uint32_t c = 0; c < D / G; ++c)
                sc[c] = c % 7 == 6 ? 0.0f : deq_scale(&r);
            const size_t chunk = (size_t)G * bits / 8;
            int rc = 0;
            for (uint32_t c = 0; c < D / G; ++c) {
                const int a = g_isas[0]->dequantize(codec, src + c * chunk, G, sc[c], want + c * G, KW_WIRE_DTYPE_F32);
                const int b =
                    g_isas[0]->dequantize(codec, src + c * chunk, G, sc[c], wantb + c * G, KW_WIRE_DTYPE_BF16);
                assert_int_equal(a, b);
                rc = a ? a : rc;
            }
            if (it % 2) assert_int_equal(rc, 0);
            for (int k = 0; k < g_n_isas; ++k) {
                got[D] = 42.0f;
                gotb[D] = 42;
                assert_int_equal(g_isas[k]->dequantize_groups(codec, src, D, G, sc, got, KW_WIRE_DTYPE_F32), rc);
                assert_int_equal(g_isas[k]->dequantize_groups(codec, src, D, G, sc, gotb, KW_WIRE_DTYPE_BF16), rc);
                if (memcmp(got, want, (size_t)D * 4) || memcmp(gotb, wantb, (size_t)D * 2))
                    fail_msg("%s dequantize_groups %s D=%u G=%u: values differ from dequantize per group",
                             kw_wire_isa_name(g_isas[k]->isa), kw_wire_codec_name(codec), D, G);
                assert_true(got[D] == 42.0f && gotb[D] == 42);
            }
        }
}

/* A group whose values are all zeros (here -0) has a zero scale and the codes of +0 (kw_wire_zero_row), whatever
 * x * 0 codes to in the row kernels: decoded, every value of it is +0 (an fp8 -0 code would give -0), on every ISA,
 * through the groups kernels (bf16, groups of 32) and the per-group ones (f32, groups of 16). */
static void test_zero_groups(void **state) {
    (void)state;
    static const uint8_t codecs[] = {KW_WIRE_CODEC_E4M3, KW_WIRE_CODEC_E5M2, KW_WIRE_CODEC_NF4,
                                     KW_WIRE_CODEC_INT8, KW_WIRE_CODEC_INT4, KW_WIRE_CODEC_INT6};
    enum { T = 3, D = 64 };
    wt_rng r = {12};
    for (int f32 = 0; f32 < 2; ++f32)
        for (size_t c = 0; c < sizeof codecs / sizeof codecs[0]; ++c) {
            const uint8_t dtype = f32 ? KW_WIRE_DTYPE_F32 : KW_WIRE_DTYPE_BF16;
            const uint8_t log2 = f32 ? 4 : 5, G = (uint8_t)(1u << log2);
            uint8_t data[T * D * 4];
            float x[T * D];
            for (uint32_t e = 0; e < T * D; ++e) /* row 0: group 0 zeros; row 2: all zeros */
                x[e] = (e < G || e >= 2 * D) ? -0.0f : wt_bell(&r);
            for (uint32_t e = 0; e < T * D; ++e) {
                const uint16_t h = kw_f32_to_bf16(x[e]);
                if (f32)
                    memcpy(data + 4 * e, &x[e], 4);
                else
                    memcpy(data + 2 * e, &h, 2);
            }
            const kw_wire_header hdr = {
                .n_layers = 1, .n_sections = 1, .n_kv_heads = 1, .head_dim = D, .n_positions = T, .src_dtype = dtype};
            const kw_wire_codec_spec sp = {codecs[c], KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_F16, log2};
            const kw_wire_policy pol = {.k = sp, .v = sp};
            kw_wire_layer_in in = {.layer = 0, .n_tokens = T};
            in.k = in.v = (kw_wire_tensor_in){data, (size_t)T * D, D, NULL};
            for (uint8_t isa = KW_WIRE_ISA_SCALAR; isa <= KW_WIRE_ISA_AVX512; ++isa) {
                uint8_t *blob = NULL;
                size_t size = 0;
                assert_int_equal(wt_encode_blob(&hdr, &in, &pol, 1, isa, &blob, &size), 0);
                wt_blob_out o;
                assert_int_equal(wt_decode_oneshot(blob, size, NULL, &o), 0);
                for (uint32_t e = 0; e < T * D; ++e)
                    if ((e < G || e >= 2 * D) && (kw_f32_bits(o.layers[0].k[e]) || kw_f32_bits(o.layers[0].v[e])))
                        fail_msg("%s %s dtype %u: element %u of a zero group decodes to %a", kw_wire_isa_name(isa),
                                 kw_wire_codec_name(codecs[c]), dtype, e, (double)o.layers[0].k[e]);
                wt_blob_out_free(&o);
                free(blob);
            }
        }
}

/* quantize_affine and dequantize_affine (the v1.1 general path's integer rows): zero points with exact rounding ties
 * (z and x - z integers + 0.5 when inv = 1), clamping at 0 and qmax, zero scales (inv = 0), the symmetric form
 * (z = 0, lo = -qmax), every field width; the decoded values of arbitrary bytes to f32 and bf16. */
static void test_affine(void **state) {
    (void)state;
    wt_rng r = {7};
    static const uint32_t widths[] = {2, 3, 4, 6, 8};
    uint8_t buf[1024 * 4 + 4], want[1024 + 16], got[1024 + 16];
    float z[1024], inv[1024], sc[1024], wantf[1024], gotf[1024 + 1];
    uint16_t wantb[1024], gotb[1024 + 1];
    for (int it = 0; it < 3000; ++it) {
        const uint32_t bits = widths[wt_below(&r, 5)], dtype = 1 + wt_below(&r, 3);
        const uint32_t n = kLens[wt_below(&r, sizeof kLens / sizeof kLens[0])];
        const uint32_t off = wt_below(&r, 2) * (uint32_t)kw__wire_dtype_size(dtype);
        const int asym = it % 2, ties = it % 3 == 0;
        const float qmax = asym ? (float)((1u << bits) - 1u) : (float)((1u << (bits - 1)) - 1u);
        fill(&r, buf + off, dtype, n, ties, ldexpf(1.0f, (int)wt_below(&r, 6) - 3));
        const float unit_inv = ldexpf(1.0f + wt_uniform(&r), (int)wt_below(&r, 6));
        static const uint32_t shifts[] = {0, 1, 2, 3, 4, 5, 31}; /* channel, groups of 2..32, one for the row */
        const uint32_t shift = shifts[wt_below(&r, 7)];
        for (uint32_t u = 0; u < n; ++u) { /* unit u: elements [u << shift, (u + 1) << shift) */
            z[u] = asym ? (ties ? (float)((int)(u % 5) - 2) : -0.25f * (float)(u % 7)) : 0.0f;
            inv[u] = ties ? 1.0f : (u % 9 == 8 ? 0.0f : unit_inv * (1.0f + 0.125f * (float)(u % 3)));
        }
        const size_t bytes = (size_t)n * bits / 8;
        g_isas[0]->quantize_affine(buf + off, dtype, n, z, inv, shift, asym ? 0.0f : -qmax, qmax, bits, want);
        for (int k = 1; k < g_n_isas; ++k) {
            memset(got, 0xa5, sizeof got);
            g_isas[k]->quantize_affine(buf + off, dtype, n, z, inv, shift, asym ? 0.0f : -qmax, qmax, bits, got);
            if (memcmp(got, want, bytes) != 0)
                fail_msg("%s quantize_affine %u bits n=%u asym %d: bytes differ from scalar",
                         kw_wire_isa_name(g_isas[k]->isa), bits, n, asym);
            assert_int_equal(got[bytes], 0xa5);
        }
        /* decoding arbitrary fields */
        for (size_t i = 0; i < bytes; ++i)
            want[i] = (uint8_t)wt_next(&r);
        for (uint32_t i = 0; i < n; ++i) {
            sc[i] = ldexpf(1.0f + wt_uniform(&r), (int)wt_below(&r, 40) - 20);
            z[i] = wt_bell(&r) * ldexpf(1.0f, (int)wt_below(&r, 40) - 20);
        }
        g_isas[0]->dequantize_affine(want, bits, n, sc, z, shift, wantf, KW_WIRE_DTYPE_F32);
        g_isas[0]->dequantize_affine(want, bits, n, sc, z, shift, wantb, KW_WIRE_DTYPE_BF16);
        for (int k = 1; k < g_n_isas; ++k) {
            gotf[n] = 42.0f;
            gotb[n] = 42;
            g_isas[k]->dequantize_affine(want, bits, n, sc, z, shift, gotf, KW_WIRE_DTYPE_F32);
            g_isas[k]->dequantize_affine(want, bits, n, sc, z, shift, gotb, KW_WIRE_DTYPE_BF16);
            assert_memory_equal(gotf, wantf, (size_t)n * 4);
            assert_memory_equal(gotb, wantb, (size_t)n * 2);
            assert_true(gotf[n] == 42.0f && gotb[n] == 42);
        }
    }
}

/* scales: every scale dtype and codec qmax over absmaxes from 0 and the f32 subnormals to Inf and NaN, with the
 * f16 edges (the smallest subnormal, rounding ties, 65504 and the overflow to Inf) made likely; the same index of
 * the first failure, codes, scales and inverses bit for bit. */
static void test_scales(void **state) {
    (void)state;
    wt_rng r = {8};
    static const float qmaxes[] = {127, 7, 31, 3, 1, 448, 57344, 15, 255};
    uint32_t am[300];
    uint8_t want[300 * 4], got[300 * 4];
    float ws[300], wi[300], gs[300], gi[300];
    for (int it = 0; it < 20000; ++it) {
        const uint32_t n = 1 + wt_below(&r, 300), sd = 1 + wt_below(&r, 5); /* f16 .. log8 */
        const float qmax = qmaxes[wt_below(&r, sizeof qmaxes / sizeof qmaxes[0])];
        for (uint32_t i = 0; i < n; ++i) {
            const uint32_t pick = wt_below(&r, 64), edgy = it % 4 == 0; /* failures end the comparison early */
            if (pick < 4)
                am[i] = 0;
            else if (pick < 12) /* around the f16 subnormals and the smallest one, times qmax */
                am[i] = kw_f32_bits(ldexpf(1.0f + (float)wt_below(&r, 64) / 64.0f, -(int)wt_below(&r, 20) - 14) * qmax);
            else if (pick == 12 && edgy) /* near the f16 maximum times qmax */
                am[i] = kw_f32_bits(65504.0f * qmax) + (uint32_t)wt_below(&r, 40000) - 20000u;
            else if (pick == 13 && edgy) /* any finite bits */
                am[i] = (uint32_t)wt_next(&r) % 0x7f800000u;
            else if (pick == 14 && it % 50 == 0) /* not finite */
                am[i] = 0x7f800000u + (uint32_t)wt_below(&r, 2);
            else if (pick == 15) /* f32 subnormals */
                am[i] = (uint32_t)wt_below(&r, 0x800000u);
            else if (pick == 16) /* a log8 scale's reach fl32(log8(c) * qmax), or one ulp either side of it */
                am[i] = kw_f32_bits(kw_wire_log8_to_f32(1 + wt_below(&r, 255)) * qmax) + wt_below(&r, 3) - 1u;
            else if (pick == 17) /* r = amax / qmax near 2^-127, e8m0's smallest scale (an f32 subnormal) */
                am[i] = kw_f32_bits(kw_f32_from_bits(0x400000u + wt_below(&r, 5) - 2u) * qmax) + wt_below(&r, 3) - 1u;
            else if (pick == 18) /* r an exact power of two, or one ulp off */
                am[i] = kw_f32_bits(ldexpf(1.0f, (int)wt_below(&r, 60) - 40) * qmax) + wt_below(&r, 3) - 1u;
            else /* KV-like magnitudes */
                am[i] = kw_f32_bits(ldexpf(1.0f + wt_uniform(&r), (int)wt_below(&r, 30) - 15));
        }
        memset(want, 0, sizeof want);
        const uint32_t ref = g_isas[0]->scales(am, n, qmax, sd, want, ws, wi);
        for (int k = 1; k < g_n_isas; ++k) {
            memset(got, 0, sizeof got);
            const uint32_t ok = g_isas[k]->scales(am, n, qmax, sd, got, gs, gi);
            if (ok != ref)
                fail_msg("%s scales dtype %u qmax %g: %u done, scalar %u", kw_wire_isa_name(g_isas[k]->isa), sd,
                         (double)qmax, ok, ref);
            assert_memory_equal(got, want, (size_t)ref * kw_wire_scale_size(sd));
            assert_memory_equal(gs, ws, (size_t)ref * 4);
            assert_memory_equal(gi, wi, (size_t)ref * 4);
        }
    }
}

/* The Hadamard rotation (FORMAT.md §5.12) of every ISA equals the scalar kernel bit for bit, forward and back, at
 * every power-of-two head_dim, from bf16, f16 and f32 rows to f32 (also in place), bf16 and f16, on rows with signed
 * zeros, subnormals, rounding ties, large values and sums that overflow to Inf (a NaN result need only be a NaN:
 * which payload survives a NaN + NaN is not part of the rule). */
static int same_value(uint32_t dtype, const uint8_t *a, const uint8_t *b, uint32_t i) {
    float x, y;
    if (dtype == KW_WIRE_DTYPE_F32) {
        memcpy(&x, a + 4 * (size_t)i, 4);
        memcpy(&y, b + 4 * (size_t)i, 4);
    } else {
        uint16_t p, q;
        memcpy(&p, a + 2 * (size_t)i, 2);
        memcpy(&q, b + 2 * (size_t)i, 2);
        if (p == q) return 1;
        x = dtype == KW_WIRE_DTYPE_BF16 ? kw_bf16_to_f32(p) : kw_f16_to_f32(p);
        y = dtype == KW_WIRE_DTYPE_BF16 ? kw_bf16_to_f32(q) : kw_f16_to_f32(q);
        return isnan(x) && isnan(y);
    }
    return kw_f32_bits(x) == kw_f32_bits(y) || (isnan(x) && isnan(y));
}

static void test_rotate(void **state) {
    (void)state;
    wt_rng r = {9};
    static uint8_t x[4096 * 4], want[4096 * 4], got[4096 * 4];
    static float sx[4096];
    for (uint32_t D = 2; D <= 4096; D <<= 1)
        for (int inverse = 0; inverse < 2; ++inverse) {
            kw__wire_rotate_factors(D, inverse, sx);
            for (int it = 0; it < (D <= 256 ? 300 : 30); ++it) {
                const uint32_t sdt = 1 + wt_below(&r, 3), ddt = it % 4 == 3 ? sdt : 1 + wt_below(&r, 3);
                const int in_place = sdt == KW_WIRE_DTYPE_F32 && ddt == KW_WIRE_DTYPE_F32 && it % 2;
                fill(&r, x, sdt, D, it % 2, it % 5 ? 1.0f : 0x1p-126f);
                if (it % 13 == 0) /* large: some sums overflow */
                    for (uint32_t k = 0; k < 4 && sdt == KW_WIRE_DTYPE_F32; ++k) {
                        const float big = (wt_below(&r, 2) ? 1.0f : -1.0f) * 0x1.fp126f;
                        memcpy(x + 4 * (size_t)wt_below(&r, D), &big, 4);
                    }
                const size_t in_bytes = (size_t)D * kw__wire_dtype_size(sdt);
                memcpy(want, x, in_bytes);
                g_isas[0]->rotate(in_place ? want : x, sdt, want, ddt, D, sx, inverse);
                for (int k = 1; k < g_n_isas; ++k) {
                    memcpy(got, x, in_bytes);
                    g_isas[k]->rotate(in_place ? got : x, sdt, got, ddt, D, sx, inverse);
                    for (uint32_t d = 0; d < D; ++d)
                        if (!same_value(ddt, got, want, d))
                            fail_msg("%s rotate D=%u inverse %d dtype %u -> %u: element %u differs",
                                     kw_wire_isa_name(g_isas[k]->isa), D, inverse, sdt, ddt, d);
                }
            }
        }
}

/* Whole blobs: every ISA encodes the same bytes and decodes the same values. */
/* The outlier kernels: scores (every ISA the scalar rule's bits; scales whose sums leave msd > 0, = 0 and < 0, so
 * spikes at FLT_MAX and equal values at 0, quotients past FLT_MAX, lengths that are not a multiple of the vector width)
 * and the key masks (random keys against bins at random, at the lowest and highest keys, negative zeros). */
static void test_outlier_kernels(void **state) {
    (void)state;
    wt_rng r = {17};
    float x[1031], want[1031], got[1031], sc[1031];
    uint8_t wa[130], wi[130], ga[130], gi[130];
    for (int it = 0; it < 3000; ++it) {
        const uint32_t n = 1 + wt_below(&r, 1031), mode = (uint32_t)it % 5;
        const int asym = it & 1;
        double sum = 0.0, S = 0.0;
        for (uint32_t i = 0; i < n; ++i) {
            x[i] = mode == 0 ? 1.5f : wt_bell(&r) * ldexpf(1.0f, (int)wt_below(&r, 40) - 20);
            if (mode == 1 && wt_below(&r, 50) == 0) x[i] = 1e30f; /* quotients past FLT_MAX */
            if (mode == 2 && i > 0) x[i] = 0.0f;                  /* one spike among zeros: msd 0 */
            sum += asym ? (double)x[i] : 0.0;
        }
        const double m = (double)(n > 1 ? n : 2), c = sum / m;
        for (uint32_t i = 0; i < n; ++i)
            S += ((double)x[i] - c) * ((double)x[i] - c);
        if (mode == 3) S *= 0.5; /* sums below what the values give: msd < 0 for the largest */
        g_isas[0]->outlier_scores(x, n, asym, m, c, S, want);
        for (uint32_t i = 0; i < n; ++i)
            assert_int_equal(kw_f32_bits(want[i]), kw_f32_bits(kw__wire_outlier_score(asym, x[i], m, c, S)));
        for (int k = 1; k < g_n_isas; ++k) {
            g_isas[k]->outlier_scores(x, n, asym, m, c, S, got);
            for (uint32_t i = 0; i < n; ++i)
                if (kw_f32_bits(got[i]) != kw_f32_bits(want[i]))
                    fail_msg("%s outlier_scores n=%u mode %u asym %d: [%u] %a, scalar %a",
                             kw_wire_isa_name(g_isas[k]->isa), n, mode, asym, i, got[i], want[i]);
        }
        for (uint32_t i = 0; i < n; ++i) /* keys: scores of every sign, zeros of both signs */
            sc[i] = wt_below(&r, 8) == 0 ? (wt_below(&r, 2) ? -0.0f : 0.0f) : x[i] * (wt_below(&r, 2) ? -1.0f : 1.0f);
        int32_t lo = kw__wire_score_key(sc[wt_below(&r, n)]), hi = kw__wire_score_key(sc[wt_below(&r, n)]);
        if (lo > hi) {
            const int32_t t = lo;
            lo = hi;
            hi = t;
        }
        if (mode == 4) lo = INT32_MIN, hi = it % 4 == 0 ? INT32_MAX : hi;
        memset(wa, 0xa5, sizeof wa);
        memset(wi, 0xa5, sizeof wi);
        g_isas[0]->outlier_bits(sc, n, lo, hi, wa, wi);
        for (uint32_t i = 0; i < n; ++i) {
            const int32_t key = kw__wire_score_key(sc[i]);
            assert_int_equal((wa[i / 8] >> (i % 8)) & 1, key > hi);
            assert_int_equal((wi[i / 8] >> (i % 8)) & 1, key >= lo && key <= hi);
        }
        if (n % 8) assert_int_equal(wa[n / 8] >> (n % 8), 0);
        for (int k = 1; k < g_n_isas; ++k) {
            memset(ga, 0x5a, sizeof ga);
            memset(gi, 0x5a, sizeof gi);
            g_isas[k]->outlier_bits(sc, n, lo, hi, ga, gi);
            if (memcmp(ga, wa, (n + 7) / 8) || memcmp(gi, wi, (n + 7) / 8))
                fail_msg("%s outlier_bits n=%u: masks differ from the scalar kernel's",
                         kw_wire_isa_name(g_isas[k]->isa), n);
        }
    }
}

static void test_blobs(void **state) {
    (void)state;
    wt_rng r = {4};
    for (int it = 0; it < 160; ++it) {
        /* it 12, 17, ... 37 (NF4 below): half of them bf16 rows of 64 or 128, the AVX-512 bf16 group path */
        const int nf4_wide = it >= 8 && it < 40 && it % 5 == 2 && it % 10 == 7;
        const uint16_t H = (uint16_t)(1 + wt_below(&r, 8)),
                       D = (uint16_t)(nf4_wide ? 64u << (it / 10 % 2) : 16 * (1 + wt_below(&r, 8)));
        const uint32_t T = 1 + wt_below(&r, 64);
        const uint8_t dtype = it % 2 ? KW_WIRE_DTYPE_BF16 : KW_WIRE_DTYPE_F32;
        kw_wire_header hdr = {
            .n_layers = 2, .n_sections = 1, .n_kv_heads = H, .head_dim = D, .n_positions = T, .src_dtype = dtype};
        uint8_t *data = wt_xmalloc((size_t)H * T * D * 4);
        /* v1 (it < 40): int8, int4, then NF4 (in groups of 16..64) and FP8 (from it 8) */
        static const uint8_t v1_codecs[] = {KW_WIRE_CODEC_INT8, KW_WIRE_CODEC_INT4, KW_WIRE_CODEC_NF4,
                                            KW_WIRE_CODEC_E4M3, KW_WIRE_CODEC_E5M2};
        const uint8_t codec = it >= 8 && it < 40 && it % 5 >= 2 ? v1_codecs[it % 5]
                              : it % 4 < 2                      ? KW_WIRE_CODEC_INT8
                                                                : KW_WIRE_CODEC_INT4;
        const uint8_t gran = codec == KW_WIRE_CODEC_NF4 ? KW_WIRE_GRAN_GROUP : (uint8_t)(1 + wt_below(&r, 4));
        const uint8_t log2g = D % 64 == 0 ? 6 : D % 32 == 0 ? 5 : 4;
        kw_wire_policy pol = {
            .k = {codec, gran, (uint8_t)(1 + wt_below(&r, 4)), gran == 4 ? (it % 5 >= 2 ? log2g : 4) : 0}};
        pol.v = pol.k;
        /* specials (1e5 among them) only for the integer codecs: NF4's and FP8's scale of 1e5 is beyond f16 */
        fill(&r, data, dtype, H * T * D, it % 3 == 0 && codec <= KW_WIRE_CODEC_INT4, 0.1f);
        if (it >= 40) { /* KVWire v1.1: int3/int2, zero points, channel scales, log8 scales, outliers */
            static const uint8_t codecs[] = {KW_WIRE_CODEC_INT8, KW_WIRE_CODEC_INT4, KW_WIRE_CODEC_INT6,
                                             KW_WIRE_CODEC_INT3, KW_WIRE_CODEC_INT2};
            hdr.version = KW_WIRE_VERSION_1_1;
            for (int kv = 0; kv < 2; ++kv) {
                kw_wire_codec_spec *sp = kv ? &pol.v : &pol.k;
                const uint8_t g = (uint8_t)(1 + wt_below(&r, 5)), asym = (uint8_t)wt_below(&r, 3) != 0;
                const uint8_t codec11 = codecs[wt_below(&r, 5)];
                /* log8 (symmetric only; int2's largest log8 scale 2^15.9 is under the special 1e5) */
                const int log8 = !asym && wt_below(&r, 2) == 0 && (codec11 != KW_WIRE_CODEC_INT2 || it % 3 != 0);
                const uint8_t sdt = log8 ? KW_WIRE_SCALE_LOG8 : (uint8_t)(2 + wt_below(&r, 2));
                *sp = (kw_wire_codec_spec){codec11, g, (uint8_t)(sdt | (asym ? KW_WIRE_SCALE_ZERO_POINTS : 0)),
                                           (uint8_t)(g == 4   ? 2 + wt_below(&r, 3)
                                                     : g == 5 ? wt_below(&r, 5)
                                                              : 0)};
            }
            pol.outliers = it % 3 == 0 ? 1 + wt_below(&r, 20) : 0;          /* bf16 and f32 scales: 1e5 has one */
            pol.rotate = (D & (D - 1)) == 0 ? (uint8_t)wt_below(&r, 4) : 0; /* the Hadamard rotation of K, V */
        }
        kw_wire_layer_in in = {.layer = 1, .n_tokens = T};
        in.k = (kw_wire_tensor_in){data, (size_t)T * D, D, NULL};
        in.v = (kw_wire_tensor_in){data, D, (size_t)H * D, NULL}; /* the same bytes seen as (T, H, D) */
        uint8_t *ref = NULL;
        size_t ref_size = 0;
        wt_blob_out ref_out = {0};
        for (uint8_t isa = KW_WIRE_ISA_SCALAR; isa <= KW_WIRE_ISA_AVX512; ++isa) {
            uint8_t *blob = NULL;
            size_t size = 0;
            assert_int_equal(wt_encode_blob(&hdr, &in, &pol, 1, isa, &blob, &size), 0);
            const kw_wire_decoder_options opt = {.isa = isa};
            wt_blob_out o;
            assert_int_equal(wt_decode_oneshot(blob, size, &opt, &o), 0);
            if (!ref) {
                ref = blob;
                ref_size = size;
                ref_out = o;
                continue;
            }
            assert_int_equal(size, ref_size);
            assert_memory_equal(blob, ref, size);
            assert_true(wt_blob_out_equal(&o, &ref_out));
            wt_blob_out_free(&o);
            free(blob);
        }
        wt_blob_out_free(&ref_out);
        free(ref);
        free(data);
    }
}

/* The XXH3 builds for each ISA give the same hash, and that hash is XXH3-64 (a known value). */
static void test_hash_variants(void **state) {
    (void)state;
    wt_rng r = {5};
    uint8_t *buf = wt_xmalloc(1 << 20);
    for (size_t i = 0; i < (1 << 20); ++i)
        buf[i] = (uint8_t)wt_next(&r);
    for (int it = 0; it < 300; ++it) {
        const size_t n = it < 100 ? (size_t)it * 37 : wt_below(&r, 1 << 20);
        const size_t off = wt_below(&r, 64);
        const uint64_t want = kw__wire_hash_bytes_sse2(buf + off, n > (1u << 20) - off ? (1u << 20) - off : n);
        const size_t m = n > (1u << 20) - off ? (1u << 20) - off : n;
        assert_true(kw__wire_hash_bytes(buf + off, m) == want);
        assert_true(kw__wire_hash_cold(buf + off, m) == want); /* the decoder's choice for data from memory */
        if (kw__wire_hash_has_avx2() && __builtin_cpu_supports("avx2"))
            assert_true(kw__wire_hash_bytes_avx2(buf + off, m) == want);
        if (kw__wire_hash_has_avx512() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw"))
            assert_true(kw__wire_hash_bytes_avx512(buf + off, m) == want);
        kw__wire_hash h; /* streaming in pieces = one shot */
        kw__wire_hash_reset(&h);
        for (size_t a = 0; a < m;) {
            const size_t k = 1 + wt_below(&r, 5000);
            kw__wire_hash_update(&h, buf + off + a, a + k > m ? m - a : k);
            a += k;
        }
        assert_true(kw__wire_hash_digest(&h) == want);
    }
    /* XXH3-64 of the empty input with seed 0 (xxHash reference value) */
    assert_true(kw__wire_hash_bytes("", 0) == 0x2D06800538D394C2ull);
    free(buf);
}

/* AUTO follows KW_CPU_ISA (common/kw_isa.h), which CI sets to rerun the wire tests on the AVX2 and scalar paths: it
 * lowers the choice, never raises it, and an explicit ISA is not capped. */
static void test_env_cap(void **state) {
    (void)state;
    const char *was = getenv("KW_CPU_ISA");
    char *saved = was ? strdup(was) : NULL;
    const enum kw_wire_isa best = kw__wire_kernels_avx512() ? KW_WIRE_ISA_AVX512
                                  : kw__wire_kernels_avx2() ? KW_WIRE_ISA_AVX2
                                                            : KW_WIRE_ISA_SCALAR;
    const enum kw_wire_isa avx2 = kw__wire_kernels_avx2() ? KW_WIRE_ISA_AVX2 : KW_WIRE_ISA_SCALAR;
    static const struct {
        const char *env;
        int want; /* 0: best, 1: avx2 (or scalar without it), 2: scalar */
    } cases[] = {{"scalar", 2}, {"avx2", 1}, {"avx512", 0}, {"", 0}, {"sse9", 0}, {NULL, 0}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
        if (cases[i].env)
            setenv("KW_CPU_ISA", cases[i].env, 1);
        else
            unsetenv("KW_CPU_ISA");
        const enum kw_wire_isa want = cases[i].want == 2 ? KW_WIRE_ISA_SCALAR : cases[i].want == 1 ? avx2 : best;
        assert_int_equal(kw_wire_isa_resolve(KW_WIRE_ISA_AUTO), want);
        assert_int_equal(kw__wire_kernels_get(KW_WIRE_ISA_AUTO)->isa, want);
        assert_int_equal(kw_wire_isa_resolve(KW_WIRE_ISA_AVX512), best); /* a forced ISA ignores the cap */
    }
    if (saved)
        setenv("KW_CPU_ISA", saved, 1);
    else
        unsetenv("KW_CPU_ISA");
    free(saved);
}

/* MXCSR.FTZ and DAZ set (as a host built with -ffast-math runs): every ISA's dequantize, dequantize_rows,
 * dequantize_groups, quantize and amax give the scalar kernels' bits under the same MXCSR (fp8 subnormal codes, which
 * the AVX2/AVX-512 shift trick would make f32 subnormals, decode to their values, e4m3 0x01 to 2^-9), on random rows,
 * reserved codes included, with normal scales whose products are subnormal (a subnormal scale is not compared: the
 * compiler folds the scalar nf4 1.0f * s to s, which DAZ would have made 0). MXCSR is restored before any assert. */
static void test_daz_ftz(void **state) {
    (void)state;
#if defined(__x86_64__)
    wt_rng r = {41};
    const unsigned csr = _mm_getcsr();
    static uint8_t src[1024 * 4 + 8], buf[1024 * 4 + 8];
    static float want[1024], got[1024], sc[1024];
    static uint16_t wantb[1024], gotb[1024];
    void *outs[8];
    for (int it = 0; it < 1500; ++it)
        for (uint32_t codec = KW_WIRE_CODEC_INT8; codec < KW_WIRE_CODEC_COUNT_V11; ++codec) {
            const uint32_t n = kLens[wt_below(&r, sizeof kLens / sizeof kLens[0])], bits = kw_wire_codec_bits(codec);
            const uint32_t dtype = 1 + wt_below(&r, 3), G = n % 32 == 0 && wt_below(&r, 2) ? 32 : 8;
            for (size_t i = 0; i < (size_t)n * bits / 8; ++i) /* subnormal fp8 codes half the time */
                src[i] = (uint8_t)(it % 2 ? wt_next(&r) : wt_next(&r) & (codec == KW_WIRE_CODEC_E5M2 ? 0x83 : 0x87));
            if (it % 3) make_valid(codec, src, n);
            for (uint32_t c = 0; c < n / G; ++c)
                sc[c] = it % 4 ? ldexpf(1.0f + fabsf(wt_uniform(&r)), (int)wt_below(&r, 30) - 126) : deq_scale(&r);
            if (it % 8 == 0) sc[0] = 1.0f;
            fill(&r, buf, dtype, n, 1, ldexpf(1.0f, -(int)wt_below(&r, 30) - 110));
            const float inv = ldexpf(1.0f, 100 + (int)wt_below(&r, 27));
            const uint32_t n_rows = n % 64 ? 1 : 8, L = n / n_rows; /* dequantize_rows: rows of L values */
            const size_t rb = (size_t)L * bits / 8;
            for (uint32_t i = 0; i < n_rows; ++i)
                outs[i] = got + (size_t)i * L;
            uint8_t qwant[1024], qgot[1024];
            for (int k = 0; k < g_n_isas; ++k) {
                const kw__wire_kernels *K = g_isas[k];
                _mm_setcsr(csr | 0x8040); /* FTZ (bit 15) and DAZ (bit 6) */
                const int rc = g_isas[0]->dequantize(codec, src, n, sc[0], want, KW_WIRE_DTYPE_F32);
                const int rcb = g_isas[0]->dequantize(codec, src, n, sc[0], wantb, KW_WIRE_DTYPE_BF16);
                const int a = K->dequantize(codec, src, n, sc[0], got, KW_WIRE_DTYPE_F32);
                const int b = K->dequantize(codec, src, n, sc[0], gotb, KW_WIRE_DTYPE_BF16);
                _mm_setcsr(csr);
                uint32_t at = 0; /* the first value that differs */
                while (at < n && !memcmp(got + at, want + at, 4) && gotb[at] == wantb[at])
                    ++at;
                if (a != rc || b != rcb || at < n)
                    fail_msg("%s dequantize %s n=%u s=%a under FTZ/DAZ: value %u is %a (bf16 %04x), scalar %a (%04x)",
                             kw_wire_isa_name(K->isa), kw_wire_codec_name(codec), n, (double)sc[0], at,
                             (double)got[at % n], gotb[at % n], (double)want[at % n], wantb[at % n]);
                _mm_setcsr(csr | 0x8040);
                const int rg = g_isas[0]->dequantize_groups(codec, src, n, G, sc, want, KW_WIRE_DTYPE_F32);
                const int ag = K->dequantize_groups(codec, src, n, G, sc, got, KW_WIRE_DTYPE_F32);
                _mm_setcsr(csr);
                if (ag != rg || memcmp(got, want, n * 4u))
                    fail_msg("%s dequantize_groups %s n=%u G=%u under FTZ/DAZ: differs from scalar",
                             kw_wire_isa_name(K->isa), kw_wire_codec_name(codec), n, G);
                _mm_setcsr(csr | 0x8040);
                int rr = 0;
                float srows[8];
                for (uint32_t i = 0; i < n_rows; ++i) {
                    srows[i] = sc[i % (n / G)];
                    rr |= g_isas[0]->dequantize(codec, src + i * rb, L, srows[i], want + (size_t)i * L,
                                                KW_WIRE_DTYPE_F32);
                }
                const int ar = K->dequantize_rows(codec, src, n_rows, L, srows, outs, KW_WIRE_DTYPE_F32);
                _mm_setcsr(csr);
                assert_int_equal(ar != 0, rr != 0);
                if (memcmp(got, want, n * 4u))
                    fail_msg("%s dequantize_rows %s %u x %u under FTZ/DAZ: differs from scalar",
                             kw_wire_isa_name(K->isa), kw_wire_codec_name(codec), n_rows, L);
                _mm_setcsr(csr | 0x8040);
                const uint32_t am = g_isas[0]->amax(buf, dtype, n), am_k = K->amax(buf, dtype, n);
                g_isas[0]->quantize(codec, buf, dtype, n, inv, qwant);
                K->quantize(codec, buf, dtype, n, inv, qgot);
                _mm_setcsr(csr);
                assert_int_equal(am_k, am);
                if (memcmp(qgot, qwant, (size_t)n * bits / 8))
                    fail_msg("%s quantize %s dtype %u n=%u under FTZ/DAZ: differs from scalar",
                             kw_wire_isa_name(K->isa), kw_wire_codec_name(codec), dtype, n);
            }
        }
    for (int k = 0; k < g_n_isas; ++k) /* the first fp8 subnormal code of each format, scale 1 */
        for (uint32_t codec = KW_WIRE_CODEC_E4M3; codec <= KW_WIRE_CODEC_E5M2; ++codec) {
            memset(src, 0x01, 64);
            _mm_setcsr(csr | 0x8040);
            const int rc = g_isas[k]->dequantize(codec, src, 64, 1.0f, got, KW_WIRE_DTYPE_F32);
            _mm_setcsr(csr);
            assert_int_equal(rc, 0);
            for (uint32_t i = 0; i < 64; ++i)
                assert_true(got[i] == (codec == KW_WIRE_CODEC_E4M3 ? 0x1p-9f : 0x1p-16f));
        }
#else
    skip();
#endif
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_amax),
        cmocka_unit_test(test_minmax),
        cmocka_unit_test(test_minmax_fold),
        cmocka_unit_test(test_quantize),
        cmocka_unit_test(test_amax_groups),
        cmocka_unit_test(test_quantize_groups),
        cmocka_unit_test(test_nf4_mixed_fold),
        cmocka_unit_test(test_quantize_rows),
        cmocka_unit_test(test_nf4_edges),
        cmocka_unit_test(test_nf4_threshold_sweep),
        cmocka_unit_test(test_fp8_edges),
        cmocka_unit_test(test_fp8_tie_steps),
        cmocka_unit_test(test_bf16_codes),
        cmocka_unit_test(test_zero_groups),
        cmocka_unit_test(test_dequantize_groups),
        cmocka_unit_test(test_dequantize),
        cmocka_unit_test(test_dequantize_rows),
        cmocka_unit_test(test_daz_ftz),
        cmocka_unit_test(test_affine),
        cmocka_unit_test(test_scales),
        cmocka_unit_test(test_rotate),
        cmocka_unit_test(test_outlier_kernels),
        cmocka_unit_test(test_blobs),
        cmocka_unit_test(test_hash_variants),
        cmocka_unit_test(test_env_cap),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
