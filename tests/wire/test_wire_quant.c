/* test_wire_quant.c: the per-value codec math of kw_wire_quant.h and common/kw_fp8.h against independent slow
 * references: fp8 and NF4 rounding by brute-force nearest search with ties to the even code, scale choice against
 * its definition computed in double, packing against hand-worked bytes, reserved codes and scale validity, and the
 * per-element error bound of every codec (FORMAT.md §5.4), derived from the quantization step. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>

#include "common/kw_bytes.h"
#include "kernels/kw_kvq_format.h"
#include "tests/wire/wire_test_util.h"
#include "wire/kw_wire.h"
#include "wire/kw_wire_quant.h"

static uint32_t bits(float f) {
    return kw_f32_bits(f);
}

/* A random finite f32 with a uniformly random exponent in [emin, emax] (unbiased exponents) and random sign. */
static float rand_float(wt_rng *r, int emin, int emax) {
    const int e = emin + (int)wt_below(r, (uint32_t)(emax - emin + 1));
    const float m = 1.0f + (float)(wt_next(r) >> 41) * 0x1p-23f;
    const float v = ldexpf(m, e);
    return (wt_next(r) & 1) ? -v : v;
}

// ---------------------------------------------------------------------------------------------------------------

static void test_rne_small(void **state) {
    (void)state;
    wt_rng r = {1};
    for (int i = 0; i < 200000; ++i) {
        float y = wt_uniform(&r) * 300.0f;
        if (i % 4 == 0) y = floorf(y) + 0.5f; /* exact ties */
        assert_true(kw_rne_small(y) == rintf(y));
    }
    assert_true(kw_rne_small(2.5f) == 2.0f && kw_rne_small(3.5f) == 4.0f && kw_rne_small(-2.5f) == -2.0f);
    assert_true(kw_rne_small(-0.25f) == 0.0f && !signbit(kw_rne_small(-0.25f)));
}

/* Brute-force nearest code of y among the finite codes of an 8-bit float, ties to the even code. */
static uint8_t nearest_fp8(float y, float (*dec)(uint8_t), int (*finite)(uint8_t)) {
    int best = -1;
    double bd = INFINITY;
    for (int c = 0; c < 256; ++c) {
        if (!finite((uint8_t)c)) continue;
        const float v = dec((uint8_t)c);
        if (signbit(v) != signbit(y)) continue; /* the sign is kept; +-0 differ by sign only */
        const double dist = fabs((double)v - (double)y);
        if (dist < bd || (dist == bd && (c & 1) == 0)) {
            bd = dist;
            best = c;
        }
    }
    return (uint8_t)best;
}

static void check_fp8(float (*dec)(uint8_t), uint8_t (*enc)(float), int (*finite)(uint8_t), float max, int emin) {
    /* every finite code round-trips */
    for (int c = 0; c < 256; ++c) {
        if (!finite((uint8_t)c)) continue;
        assert_int_equal(enc(dec((uint8_t)c)), c);
    }
    /* midpoints between neighbours go to the even code, values just off them to the nearest */
    for (int c = 0; c < 127; ++c) {
        if (!finite((uint8_t)(c + 1))) break;
        const float a = dec((uint8_t)c), b = dec((uint8_t)(c + 1));
        const float mid = (a + b) * 0.5f; /* exact: two 4-bit significands */
        assert_true((double)mid == ((double)a + (double)b) / 2);
        assert_int_equal(enc(mid), (c & 1) ? c + 1 : c);
        assert_int_equal(enc(-mid), 0x80 | ((c & 1) ? c + 1 : c));
        assert_int_equal(enc(nextafterf(mid, 0.0f)), c);
        assert_int_equal(enc(nextafterf(mid, INFINITY)), c + 1);
    }
    /* random values across the whole range, subnormals included */
    wt_rng r = {7};
    for (int i = 0; i < 100000; ++i) {
        float y = rand_float(&r, emin - 4, (int)log2f(max));
        if (fabsf(y) > max) y = copysignf(max, y);
        assert_int_equal(enc(y), nearest_fp8(y, dec, finite));
    }
    /* saturation and NaN */
    assert_int_equal(enc(max * 1.5f) & 0x7f, enc(max));
    assert_int_equal(enc(-1e30f), 0x80 | enc(max));
    assert_false(finite(enc(NAN)));
}

static int e4m3_finite(uint8_t c) {
    return kw_e4m3_is_finite(c);
}
static int e5m2_finite(uint8_t c) {
    return kw_e5m2_is_finite(c);
}

static void test_e4m3(void **state) {
    (void)state;
    check_fp8(kw_e4m3_to_f32, kw_f32_to_e4m3, e4m3_finite, 448.0f, -9);
    assert_int_equal(kw_f32_to_e4m3(448.0f), 0x7e);
    assert_int_equal(kw_f32_to_e4m3(1.0f), 0x38);
    assert_int_equal(kw_f32_to_e4m3(0x1p-9f), 0x01);
    assert_int_equal(kw_f32_to_e4m3(0x1p-6f), 0x08);
    assert_int_equal(kw_f32_to_e4m3(0x1p-10f), 0x00); /* tie between 0 and 2^-9: even */
    assert_true(kw_e4m3_to_f32(0x7e) == 448.0f && kw_e4m3_to_f32(0x01) == 0x1p-9f);
    assert_true(isnan(kw_e4m3_to_f32(0x7f)) && isnan(kw_e4m3_to_f32(0xff)));
}

static void test_e5m2(void **state) {
    (void)state;
    check_fp8(kw_e5m2_to_f32, kw_f32_to_e5m2, e5m2_finite, 57344.0f, -16);
    assert_int_equal(kw_f32_to_e5m2(57344.0f), 0x7b);
    assert_int_equal(kw_f32_to_e5m2(1.0f), 0x3c);
    assert_int_equal(kw_f32_to_e5m2(0x1p-16f), 0x01);
    assert_true(isinf(kw_e5m2_to_f32(0x7c)) && isnan(kw_e5m2_to_f32(0x7d)));
    /* e5m2 is the top byte of f16: check against the (exhaustively tested) f16 conversion for exact f16 values */
    for (uint32_t h = 0; h < 0x7c00; h += 0x100)
        assert_int_equal(kw_f32_to_e5m2(kw_f16_to_f32((uint16_t)h)), h >> 8);
}

static void test_e8m0(void **state) {
    (void)state;
    assert_true(kw_e8m0_to_f32(127) == 1.0f && kw_e8m0_to_f32(0) == 0x1p-127f && kw_e8m0_to_f32(254) == 0x1p127f);
    assert_true(isnan(kw_e8m0_to_f32(255)));
    wt_rng r = {3};
    for (int i = 0; i < 100000; ++i) {
        const float x = fabsf(rand_float(&r, -149, 127));
        const uint8_t e = kw_e8m0_ceil(x);
        if (e == 255) {
            assert_true(x > 0x1p127f);
            continue;
        }
        const float v = kw_e8m0_to_f32(e);
        assert_true(v >= x);                      /* rounds up */
        assert_true(e == 0 || (double)v / 2 < x); /* to the smallest such power of two */
    }
    assert_int_equal(kw_e8m0_ceil(0.0f), 0);
    assert_int_equal(kw_e8m0_ceil(1.0f), 127);
    assert_int_equal(kw_e8m0_ceil(nextafterf(1.0f, 2.0f)), 128);
}

/* log8 (v1.1): every byte's value against 2^((b-128)/8) computed in double and rounded once (2^k * fl32(2^(i/8)) is
 * that rounding: a power of two scales out) and against the receiver cache's kw_kvq_scale; the encoder's choice
 * against its definition (the smallest byte whose fl32(scale * qmax) reaches amax) and against the cache's
 * kw_kvq_choose_scale; every byte is a valid scale; the names. */
static void test_log8(void **state) {
    (void)state;
    const uint8_t zero = 0;
    assert_true(kw_wire_scale_load(KW_WIRE_SCALE_LOG8, &zero) == 0.0f);
    for (uint32_t b = 1; b < 256; ++b) {
        const uint8_t byte = (uint8_t)b;
        const float v = kw_wire_scale_load(KW_WIRE_SCALE_LOG8, &byte);
        if (bits(v) != bits((float)exp2(((double)b - 128.0) / 8.0)) || bits(v) != bits(kw_kvq_scale(byte)))
            fail_msg("log8 byte %u: %a, want %a", b, (double)v, exp2(((double)b - 128.0) / 8.0));
        assert_true(kw_wire_scale_valid(KW_WIRE_SCALE_LOG8, &byte, 127.0f));
    }
    assert_true(kw_wire_scale_valid(KW_WIRE_SCALE_LOG8, &zero, 127.0f));
    assert_int_equal(kw_wire_scale_size(KW_WIRE_SCALE_LOG8), 1);
    assert_true(kw_wire_scale_min(KW_WIRE_SCALE_LOG8) == kw_kvq_scale(1));
    static const int kQmax[] = {127, 31, 7, 3, 1};
    wt_rng r = {17};
    for (size_t qi = 0; qi < sizeof kQmax / sizeof kQmax[0]; ++qi)
        for (int i = 0; i < 30000; ++i) {
            const float qmax = (float)kQmax[qi];
            const float amax = i == 0 ? kw_kvq_scale(255) * qmax : fabsf(rand_float(&r, -40, 24));
            uint32_t code = 0;
            float s = -1.0f;
            const int rc = kw_wire_scale_choose(amax, qmax, KW_WIRE_SCALE_LOG8, &code, &s);
            if (!(kw_kvq_scale(255) * qmax >= amax)) {
                assert_int_equal(rc, KW_E_WIRE_RANGE);
                continue;
            }
            assert_int_equal(rc, 0);
            assert_true(code >= 1 && code <= 255);
            assert_true(s == kw_kvq_scale((uint8_t)code));
            assert_true(s * qmax >= amax);                                             /* never clips */
            assert_true(code == 1 || kw_kvq_scale((uint8_t)(code - 1)) * qmax < amax); /* the smallest */
            /* the cache's quantizer agrees where it searches (it takes 255 for anything above 2^15 * qmax) */
            if (amax <= 0x1p15f * qmax) assert_int_equal(code, kw_kvq_choose_scale(amax, kQmax[qi]));
        }
    uint32_t code;
    float s;
    assert_int_equal(kw_wire_scale_choose(0.0f, 7.0f, KW_WIRE_SCALE_LOG8, &code, &s), 0);
    assert_true(s == 0.0f && code == 0);
    /* names: v1.1 only, symmetric integer codecs only */
    assert_string_equal(kw_wire_scale_name(KW_WIRE_SCALE_LOG8), "log8");
    kw_wire_codec_spec sp;
    assert_int_equal(kw_wire_spec_parse_v("int4", "group32", "log8", KW_WIRE_VERSION_1_1, &sp), 0);
    assert_true(sp.codec == KW_WIRE_CODEC_INT4 && sp.scale_dtype == KW_WIRE_SCALE_LOG8 && kw_wire_spec_needs_v11(&sp));
    assert_int_equal(kw_wire_spec_parse_v("int2", "channel64", "log8", KW_WIRE_VERSION_1_1, &sp), 0);
    assert_int_equal(kw_wire_spec_parse("int8", "token", "log8", &sp), KW_E_INVALID_ARG); /* v1 */
    static const char *const bad[][2] = {
        {"nf4", "token"}, {"e4m3", "head"}, {"e5m2", "group32"}, {"int4-asym", "token"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; ++i)
        if (kw_wire_spec_parse_v(bad[i][0], bad[i][1], "log8", KW_WIRE_VERSION_1_1, &sp) != KW_E_INVALID_ARG)
            fail_msg("%s/%s/log8 was accepted", bad[i][0], bad[i][1]);
}

// ---------------------------------------------------------------------------------------------------------------

static void test_nf4(void **state) {
    (void)state;
    for (uint32_t i = 0; i < 15; ++i) {
        const float a = kw_wire_nf4_value(i), b = kw_wire_nf4_value(i + 1);
        assert_true(a < b);
        /* the midpoint constants are exactly fl32((a + b) * 0.5) */
        const float mid = (a + b) * 0.5f;
        assert_int_equal(kw_wire_nf4_code(mid), (i & 1) ? i + 1 : i);
        assert_int_equal(kw_wire_nf4_code(nextafterf(mid, -2.0f)), i);
        assert_int_equal(kw_wire_nf4_code(nextafterf(mid, 2.0f)), i + 1);
        assert_int_equal(kw_wire_nf4_code(a), i);
    }
    assert_int_equal(kw_wire_nf4_code(0.0f), 7);
    assert_int_equal(kw_wire_nf4_code(-1.0f), 0);
    assert_int_equal(kw_wire_nf4_code(1.0f), 15);
    wt_rng r = {5};
    for (int i = 0; i < 100000; ++i) {
        const float y = wt_uniform(&r);
        uint32_t best = 0;
        for (uint32_t c = 1; c < 16; ++c)
            if (fabsf(kw_wire_nf4_value(c) - y) < fabsf(kw_wire_nf4_value(best) - y)) best = c;
        assert_int_equal(kw_wire_nf4_code(y), best);
    }
}

// ---------------------------------------------------------------------------------------------------------------

static const uint32_t kCodecs[] = {KW_WIRE_CODEC_INT8, KW_WIRE_CODEC_INT4, KW_WIRE_CODEC_INT6,
                                   KW_WIRE_CODEC_NF4,  KW_WIRE_CODEC_E4M3, KW_WIRE_CODEC_E5M2};
static const uint32_t kScales[] = {KW_WIRE_SCALE_F16, KW_WIRE_SCALE_BF16, KW_WIRE_SCALE_F32, KW_WIRE_SCALE_E8M0};

/* The scale rule of FORMAT.md §5.4 recomputed in double. */
static void test_scale_choose(void **state) {
    (void)state;
    wt_rng r = {11};
    for (size_t ci = 0; ci < sizeof kCodecs / sizeof kCodecs[0]; ++ci)
        for (size_t si = 0; si < sizeof kScales / sizeof kScales[0]; ++si)
            for (int i = 0; i < 20000; ++i) {
                const uint32_t codec = kCodecs[ci], sd = kScales[si];
                const float qmax = kw_wire_codec_qmax(codec);
                const float amax = fabsf(rand_float(&r, -149, 127));
                const float rr = (float)((double)amax / qmax); /* = fl32(amax / qmax): no double rounding for / */
                uint32_t code = 0;
                float s = -1.0f;
                const int rc = kw_wire_scale_choose(amax, qmax, sd, &code, &s);
                float expect; /* the scale before the range check */
                switch (sd) {
                case KW_WIRE_SCALE_F16:
                    expect = kw_round_f16(rr);
                    break;
                case KW_WIRE_SCALE_BF16:
                    expect = kw_round_bf16(rr);
                    break;
                case KW_WIRE_SCALE_F32:
                    expect = rr;
                    break;
                default:
                    expect = rr > 0x1p127f ? INFINITY : kw_e8m0_to_f32(kw_e8m0_ceil(rr));
                    break;
                }
                if (isfinite(expect) && expect < kw_wire_scale_min(sd)) expect = kw_wire_scale_min(sd);
                if (!isfinite(expect) || (double)qmax * expect > KW_WIRE_BF16_MAX) {
                    assert_int_equal(rc, KW_E_WIRE_RANGE);
                    continue;
                }
                assert_int_equal(rc, 0);
                assert_true(s == expect);
                if (sd == KW_WIRE_SCALE_E8M0) assert_true(s >= rr); /* never clips */
                uint8_t stored[4];
                kw_wire_scale_store(sd, code, stored);
                assert_true(kw_wire_scale_load(sd, stored) == s);
                assert_true(kw_wire_scale_valid(sd, stored, qmax));
            }
    uint32_t code;
    float s;
    assert_int_equal(kw_wire_scale_choose(0.0f, 127.0f, KW_WIRE_SCALE_E8M0, &code, &s), 0);
    assert_true(s == 0.0f && code == 0);
}

static void test_scale_valid(void **state) {
    (void)state;
    const uint8_t f16_neg[] = {0x00, 0xbc}, f16_inf[] = {0x00, 0x7c}, f16_nan[] = {0x01, 0x7e}, f16_sub[] = {0x01, 0};
    assert_false(kw_wire_scale_valid(KW_WIRE_SCALE_F16, f16_neg, 127));
    assert_false(kw_wire_scale_valid(KW_WIRE_SCALE_F16, f16_inf, 127));
    assert_false(kw_wire_scale_valid(KW_WIRE_SCALE_F16, f16_nan, 127));
    assert_true(kw_wire_scale_valid(KW_WIRE_SCALE_F16, f16_sub, 127)); /* 2^-24 is f16's S_MIN */
    const uint8_t bf_sub[] = {0x01, 0x00}, bf_min[] = {0x80, 0x00}, bf_big[] = {0x7f, 0x7f}, zero[] = {0, 0, 0, 0};
    assert_false(kw_wire_scale_valid(KW_WIRE_SCALE_BF16, bf_sub, 127));
    assert_true(kw_wire_scale_valid(KW_WIRE_SCALE_BF16, bf_min, 127));
    assert_false(kw_wire_scale_valid(KW_WIRE_SCALE_BF16, bf_big, 127)); /* 127 * s overflows bf16 */
    assert_true(kw_wire_scale_valid(KW_WIRE_SCALE_BF16, bf_big, 1));    /* nf4: qmax 1 */
    assert_true(kw_wire_scale_valid(KW_WIRE_SCALE_F32, zero, 127));
    const uint8_t f32_negzero[] = {0, 0, 0, 0x80};
    assert_false(kw_wire_scale_valid(KW_WIRE_SCALE_F32, f32_negzero, 127));
    const uint8_t e0 = 0, e254 = 254, e255 = 255, e247 = 247;
    assert_true(kw_wire_scale_valid(KW_WIRE_SCALE_E8M0, &e0, 127));
    assert_false(kw_wire_scale_valid(KW_WIRE_SCALE_E8M0, &e255, 1));
    assert_false(kw_wire_scale_valid(KW_WIRE_SCALE_E8M0, &e254, 127));
    assert_true(kw_wire_scale_valid(KW_WIRE_SCALE_E8M0, &e254, 1));
    assert_true(kw_wire_scale_valid(KW_WIRE_SCALE_E8M0, &e247, 127)); /* 127 * 2^120 < BF16_MAX */
}

// ---------------------------------------------------------------------------------------------------------------

static void test_packing_bytes(void **state) {
    (void)state;
    const float x4[8] = {1, -1, 7, -7, 0, 3, -3, 2};
    uint8_t b4[4];
    kw_wire_quantize_row(KW_WIRE_CODEC_INT4, x4, 8, 1.0f, b4);
    const uint8_t e4[4] = {0xf1, 0x97, 0x30, 0x2d}; /* element 2j in the low nibble, two's complement */
    assert_memory_equal(b4, e4, 4);
    const float x6[8] = {1, 2, 3, -1, 31, -31, 0, 5};
    uint8_t b6[6];
    kw_wire_quantize_row(KW_WIRE_CODEC_INT6, x6, 8, 1.0f, b6);
    /* w0 = 1 | 2<<6 | 3<<12 | 63<<18 = 0xfc3081; w1 = 31 | 33<<6 | 0<<12 | 5<<18 = 0x14085f */
    const uint8_t e6[6] = {0x81, 0x30, 0xfc, 0x5f, 0x08, 0x14};
    assert_memory_equal(b6, e6, 6);
    for (uint32_t i = 0; i < 8; ++i) {
        assert_int_equal(kw_wire_unpack_code(KW_WIRE_CODEC_INT4, b4, i), (int)x4[i]);
        assert_int_equal(kw_wire_unpack_code(KW_WIRE_CODEC_INT6, b6, i), (int)x6[i]);
    }
    const float x8[8] = {127, -127, 0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f}; /* ties to even */
    uint8_t b8[8];
    kw_wire_quantize_row(KW_WIRE_CODEC_INT8, x8, 8, 1.0f, b8);
    const uint8_t e8[8] = {127, 0x81, 0, 2, 2, 0, 0xfe, 0xfe};
    assert_memory_equal(b8, e8, 8);
    const float big[8] = {1000, -1000, 7.49f, -7.5f, 6.5f, 0, 0, 0}; /* clamped to +-qmax */
    kw_wire_quantize_row(KW_WIRE_CODEC_INT4, big, 8, 1.0f, b4);
    assert_int_equal(kw_wire_unpack_code(KW_WIRE_CODEC_INT4, b4, 0), 7);
    assert_int_equal(kw_wire_unpack_code(KW_WIRE_CODEC_INT4, b4, 1), -7);
    assert_int_equal(kw_wire_unpack_code(KW_WIRE_CODEC_INT4, b4, 2), 7);
    assert_int_equal(kw_wire_unpack_code(KW_WIRE_CODEC_INT4, b4, 3), -7);
    assert_int_equal(kw_wire_unpack_code(KW_WIRE_CODEC_INT4, b4, 4), 6);
    uint8_t z[8];
    kw_wire_zero_row(KW_WIRE_CODEC_NF4, 16, z);
    for (int i = 0; i < 8; ++i)
        assert_int_equal(z[i], 0x77);
}

static void test_reserved_codes(void **state) {
    (void)state;
    float out[8];
    uint8_t row[8];
    for (int c = 0; c < 256; ++c) {
        memset(row, 0, sizeof row);
        row[3] = (uint8_t)c;
        assert_int_equal(kw_wire_dequantize_row(KW_WIRE_CODEC_INT8, row, 8, 1.0f, out) < 0, c == 0x80);
        assert_int_equal(kw_wire_dequantize_row(KW_WIRE_CODEC_E4M3, row, 8, 1.0f, out) < 0, (c & 0x7f) == 0x7f);
        assert_int_equal(kw_wire_dequantize_row(KW_WIRE_CODEC_E5M2, row, 8, 1.0f, out) < 0, (c & 0x7c) == 0x7c);
        assert_int_equal(kw_wire_dequantize_row(KW_WIRE_CODEC_INT4, row, 8, 1.0f, out) < 0,
                         (c & 15) == 8 || (c >> 4) == 8);
        assert_int_equal(kw_wire_dequantize_row(KW_WIRE_CODEC_NF4, row, 8, 1.0f, out), 0);
    }
    /* int6: code -32 (0x20) in each of the four slots of a triple */
    for (int slot = 0; slot < 4; ++slot) {
        const uint32_t w = 0x20u << (6 * slot);
        const uint8_t r6[6] = {(uint8_t)w, (uint8_t)(w >> 8), (uint8_t)(w >> 16), 0, 0, 0};
        assert_int_equal(kw_wire_dequantize_row(KW_WIRE_CODEC_INT6, r6, 8, 1.0f, out), KW_E_WIRE_VALUE);
    }
    const uint8_t inf_bf16[16] = {0, 0, 0x80, 0x7f}, inf_f16[16] = {0, 0x7c};
    assert_int_equal(kw_wire_passthrough_row(KW_WIRE_CODEC_BF16, inf_bf16, 8, out), KW_E_WIRE_VALUE);
    assert_int_equal(kw_wire_passthrough_row(KW_WIRE_CODEC_F16, inf_f16, 8, out), KW_E_WIRE_VALUE);
}

/* v1.1: int3 and int2 packing against hand-worked bytes, the generic bit fields against the v1 layouts, and the
 * reserved codes -4 and -2 in every slot. */
static void test_packing_v11(void **state) {
    (void)state;
    const float x3[8] = {1, -1, 3, -3, 0, 2, -2, 3};
    uint8_t b3[3];
    kw_wire_quantize_row(KW_WIRE_CODEC_INT3, x3, 8, 1.0f, b3);
    /* w = 1 | 7<<3 | 3<<6 | 5<<9 | 0<<12 | 2<<15 | 6<<18 | 3<<21 = 0x790af9 */
    const uint8_t e3[3] = {0xf9, 0x0a, 0x79};
    assert_memory_equal(b3, e3, 3);
    const float x2[8] = {1, -1, 0, 1, -1, -1, 0, 0};
    uint8_t b2[2];
    kw_wire_quantize_row(KW_WIRE_CODEC_INT2, x2, 8, 1.0f, b2);
    const uint8_t e2[2] = {0x4d, 0x0f}; /* element 4j+k in bits 2k..2k+1 */
    assert_memory_equal(b2, e2, 2);
    for (uint32_t i = 0; i < 8; ++i) {
        assert_int_equal(kw_wire_unpack_code(KW_WIRE_CODEC_INT3, b3, i), (int)x3[i]);
        assert_int_equal(kw_wire_unpack_code(KW_WIRE_CODEC_INT2, b2, i), (int)x2[i]);
    }
    const float big[8] = {100, -100, 2.5f, -2.5f, 0.5f, 1.5f, 0, 0}; /* clamped to +-qmax, ties to even */
    kw_wire_quantize_row(KW_WIRE_CODEC_INT3, big, 8, 1.0f, b3);
    static const int want3[8] = {3, -3, 2, -2, 0, 2, 0, 0};
    for (uint32_t i = 0; i < 8; ++i)
        assert_int_equal(kw_wire_unpack_code(KW_WIRE_CODEC_INT3, b3, i), want3[i]);
    kw_wire_quantize_row(KW_WIRE_CODEC_INT2, big, 8, 1.0f, b2);
    static const int want2[8] = {1, -1, 1, -1, 0, 1, 0, 0};
    for (uint32_t i = 0; i < 8; ++i)
        assert_int_equal(kw_wire_unpack_code(KW_WIRE_CODEC_INT2, b2, i), want2[i]);
    /* the generic fields read the v1 layouts of int4, int6 and int8 */
    wt_rng r = {31};
    static const uint32_t widths[5] = {2, 3, 4, 6, 8};
    for (int w = 0; w < 5; ++w) {
        uint8_t row[16] = {0};
        uint32_t v[16];
        for (uint32_t i = 0; i < 16; ++i) {
            v[i] = wt_below(&r, 1u << widths[w]);
            kw_wire_field_put(widths[w], row, i, v[i]);
        }
        for (uint32_t i = 0; i < 16; ++i) {
            assert_int_equal(kw_wire_field_get(widths[w], row, i), v[i]);
            const uint32_t codec = widths[w] == 4   ? KW_WIRE_CODEC_INT4
                                   : widths[w] == 6 ? KW_WIRE_CODEC_INT6
                                   : widths[w] == 8 ? KW_WIRE_CODEC_INT8
                                   : widths[w] == 3 ? KW_WIRE_CODEC_INT3
                                                    : KW_WIRE_CODEC_INT2;
            const int32_t half = 1 << (widths[w] - 1);
            assert_int_equal(kw_wire_unpack_code(codec, row, i),
                             (int32_t)v[i] >= half ? (int32_t)v[i] - 2 * half : (int32_t)v[i]);
        }
    }
    float out[8];
    for (uint32_t slot = 0; slot < 8; ++slot) {
        uint8_t r3[3] = {0}, r2[2] = {0};
        kw_wire_field_put(3, r3, slot, 4);
        kw_wire_field_put(2, r2, slot, 2);
        assert_int_equal(kw_wire_dequantize_row(KW_WIRE_CODEC_INT3, r3, 8, 1.0f, out), KW_E_WIRE_VALUE);
        assert_int_equal(kw_wire_dequantize_row(KW_WIRE_CODEC_INT2, r2, 8, 1.0f, out), KW_E_WIRE_VALUE);
    }
}

/* v1.1 zero points (FORMAT.md §5.9): the encoder rule on worked examples and its range failures. */
static void test_asym(void **state) {
    (void)state;
    uint32_t sc, zc;
    float s, z;
    /* [-1, 2] with int2 (qmax 3), f32: s = 1, z = -1; codes 0..3 decode to -1, 0, 1, 2 exactly */
    assert_int_equal(kw_wire_asym_choose(-1.0f, 2.0f, 3.0f, KW_WIRE_SCALE_F32, &sc, &s, &zc, &z), 0);
    assert_true(s == 1.0f && z == -1.0f && zc == bits(-1.0f));
    for (uint32_t q = 0; q < 4; ++q) {
        assert_int_equal(kw_wire_quantize_asym((float)q - 1.0f, z, 1.0f / s, 3.0f), q);
        assert_true(kw_wire_dequantize_asym(q, s, z) == (float)q - 1.0f);
    }
    assert_int_equal(kw_wire_quantize_asym(-5.0f, z, 1.0f, 3.0f), 0); /* clamped */
    assert_int_equal(kw_wire_quantize_asym(9.0f, z, 1.0f, 3.0f), 3);
    assert_int_equal(kw_wire_quantize_asym(-0.5f, z, 1.0f, 3.0f), 0); /* y = 0.5: tie to even */
    assert_int_equal(kw_wire_quantize_asym(0.5f, z, 1.0f, 3.0f), 2);  /* y = 1.5 */
    /* a constant set: zero scale, the zero point is the value (rounded to the dtype) */
    assert_int_equal(kw_wire_asym_choose(0.3f, 0.3f, 15.0f, KW_WIRE_SCALE_F16, &sc, &s, &zc, &z), 0);
    assert_true(s == 0.0f && sc == 0 && z == kw_round_f16(0.3f) && zc == kw_f32_to_f16(0.3f));
    assert_true(kw_wire_dequantize_asym(7, s, z) == z);
    /* f16 zero points cannot hold -70000; e8m0 cannot hold a zero point; an infinite range; past BF16_MAX */
    assert_int_equal(kw_wire_asym_choose(-70000.0f, 1.0f, 3.0f, KW_WIRE_SCALE_F16, &sc, &s, &zc, &z), KW_E_WIRE_RANGE);
    assert_int_equal(kw_wire_asym_choose(-1.0f, 1.0f, 3.0f, KW_WIRE_SCALE_E8M0, &sc, &s, &zc, &z), KW_E_WIRE_RANGE);
    assert_int_equal(kw_wire_asym_choose(-3e38f, 3e38f, 3.0f, KW_WIRE_SCALE_F32, &sc, &s, &zc, &z), KW_E_WIRE_RANGE);
    assert_int_equal(kw_wire_asym_choose(3.3e38f, 3.395e38f, 3.0f, KW_WIRE_SCALE_F32, &sc, &s, &zc, &z),
                     KW_E_WIRE_RANGE);
    /* zero-point validity: finite, and the top code stays within BF16_MAX */
    uint8_t p[4];
    kw_store_le32(p, bits(1.0f));
    assert_true(kw_wire_zero_valid(KW_WIRE_SCALE_F32, p, 1.0f, 255.0f));
    kw_store_le32(p, 0x7fc00000u);
    assert_false(kw_wire_zero_valid(KW_WIRE_SCALE_F32, p, 1.0f, 255.0f));
    kw_store_le32(p, bits(-KW_WIRE_BF16_MAX));
    assert_true(kw_wire_zero_valid(KW_WIRE_SCALE_F32, p, 1.0f, 255.0f));
    kw_store_le32(p, bits(KW_WIRE_BF16_MAX));
    assert_false(kw_wire_zero_valid(KW_WIRE_SCALE_F32, p, 0x1p100f, 255.0f));
}

/* v1.1 names: codecs with -asym, channel<L>, and their round trip through the formatters. */
static int kw_wire_spec_parse_v11(const char *codec, const char *gran, const char *scale, kw_wire_codec_spec *out) {
    return kw_wire_spec_parse_v(codec, gran, scale, KW_WIRE_VERSION_1_1, out);
}

static void test_spec_names(void **state) {
    (void)state;
    kw_wire_codec_spec v1;
    assert_int_equal(kw_wire_spec_parse("int3", "token", "f16", &v1), KW_E_INVALID_ARG); /* v1 names only */
    assert_int_equal(kw_wire_spec_parse("int4-asym", "token", "f16", &v1), KW_E_INVALID_ARG);
    assert_int_equal(kw_wire_spec_parse("int4", "channel16", "f16", &v1), KW_E_INVALID_ARG);
    assert_int_equal(kw_wire_spec_parse("int4", "group32", "f16", &v1), 0);
    kw_wire_codec_spec sp;
    char a[32], b[32];
    assert_int_equal(kw_wire_spec_parse_v11("int3", "token", "f16", &sp), 0);
    assert_true(sp.codec == KW_WIRE_CODEC_INT3 && sp.scale_dtype == KW_WIRE_SCALE_F16 && !kw_wire_spec_asym(&sp));
    assert_int_equal(kw_wire_spec_parse_v11("int2-asym", "channel32", "bf16", &sp), 0);
    assert_true(sp.codec == KW_WIRE_CODEC_INT2 && sp.granularity == KW_WIRE_GRAN_CHANNEL && sp.group_log2 == 5);
    assert_true(kw_wire_spec_asym(&sp) && kw_wire_spec_scale(&sp) == KW_WIRE_SCALE_BF16 && kw_wire_spec_needs_v11(&sp));
    kw_wire_spec_codec_format(&sp, a, sizeof a);
    kw_wire_spec_gran_format(&sp, b, sizeof b);
    assert_string_equal(a, "int2-asym");
    assert_string_equal(b, "channel32");
    assert_int_equal(kw_wire_spec_parse_v11("int8-asym", "channel1", "f32", &sp), 0);
    assert_true(sp.group_log2 == 0 && sp.scale_dtype == (KW_WIRE_SCALE_F32 | KW_WIRE_SCALE_ZERO_POINTS));
    assert_int_equal(kw_wire_spec_parse_v11("int4", "group32", "f16", &sp), 0);
    assert_false(kw_wire_spec_needs_v11(&sp));
    static const char *const bad[][3] = {
        {"nf4-asym", "token", "f16"},       {"e4m3-asym", "token", "f16"}, {"int4-asym", "token", "e8m0"},
        {"int4", "channel3", "f16"},        {"int4", "channel0", "f16"},   {"int4", "channel", "f16"},
        {"int4", "channel33554432", "f16"}, {"-asym", "token", "f16"},     {"int4-asymm", "token", "f16"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; ++i)
        if (kw_wire_spec_parse_v11(bad[i][0], bad[i][1], bad[i][2], &sp) != KW_E_INVALID_ARG)
            fail_msg("%s/%s/%s was accepted", bad[i][0], bad[i][1], bad[i][2]);
}

static void test_row_error_bounds(void **state) {
    (void)state;
    wt_rng r = {13};
    float x[64], xh[64];
    uint8_t packed[128];
    for (size_t ci = 0; ci < sizeof kCodecs / sizeof kCodecs[0]; ++ci)
        for (size_t si = 0; si < sizeof kScales / sizeof kScales[0]; ++si)
            for (int it = 0; it < 3000; ++it) {
                const uint32_t codec = kCodecs[ci], sd = kScales[si];
                const float qmax = kw_wire_codec_qmax(codec);
                const int e = (int)wt_below(&r, 40) - 20; /* magnitudes 2^-20 .. 2^20 */
                float amax = 0;
                for (int i = 0; i < 64; ++i) {
                    x[i] = ldexpf(wt_bell(&r), e);
                    if (it % 7 == 0 && i == 5) x[i] = ldexpf(50.0f, e); /* an outlier */
                    amax = fmaxf(amax, fabsf(x[i]));
                }
                uint32_t code;
                float s;
                if (kw_wire_scale_choose(amax, qmax, sd, &code, &s) < 0) continue; /* f16 cannot reach 2^20 */
                kw_wire_quantize_row(codec, x, 64, 1.0f / s, packed);
                assert_int_equal(kw_wire_dequantize_row(codec, packed, 64, s, xh), 0);
                for (int i = 0; i < 64; ++i) {
                    const double err = fabs((double)x[i] - xh[i]);
                    const double bound = wt_element_bound(codec, x[i], xh[i], s, qmax);
                    if (err > bound)
                        fail_msg("%s/%s x=%a xh=%a s=%a err=%g bound=%g", kw_wire_codec_name(codec),
                                 kw_wire_scale_name(sd), (double)x[i], (double)xh[i], (double)s, err, bound);
                }
            }
    (void)bits;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rne_small),     cmocka_unit_test(test_e4m3),
        cmocka_unit_test(test_e5m2),          cmocka_unit_test(test_e8m0),
        cmocka_unit_test(test_log8),          cmocka_unit_test(test_nf4),
        cmocka_unit_test(test_scale_choose),  cmocka_unit_test(test_scale_valid),
        cmocka_unit_test(test_packing_bytes), cmocka_unit_test(test_reserved_codes),
        cmocka_unit_test(test_packing_v11),   cmocka_unit_test(test_asym),
        cmocka_unit_test(test_spec_names),    cmocka_unit_test(test_row_error_bounds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
