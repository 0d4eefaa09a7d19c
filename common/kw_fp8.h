/* kw_fp8.h: OCP 8-bit float conversions (FP8 E4M3FN, FP8 E5M2, and the E8M0 power-of-two scale of the MX formats),
 * shared by the CPU and CUDA code (KW_HD), plus kw_rne_small, the round-half-to-even helper they use.
 *
 * Conversions from f32 round to nearest, ties to even, on the value (subnormals included). They are meant for inputs
 * already clamped to the format's range (KVWire clamps before converting, docs/FORMAT.md §5.4); for completeness a
 * finite value beyond the largest finite value saturates to it, and NaN maps to a NaN code. This is not a general
 * fp8 library: there is no E4M3FNUZ/E5M2FNUZ (the AMD variants) and no arithmetic.
 */
#ifndef KW_FP8_H
#define KW_FP8_H

#include <stdint.h>

#include "kw_half.h"
#include "kw_hd.h"

/* Rounds y to the nearest integer, ties to even, for |y| < 2^22, in the default rounding mode (round to nearest
 * even, as f32 addition rounds on CPUs and GPUs). Adding and subtracting 1.5 * 2^23 pushes the fraction bits out of
 * the significand; it equals rintf(y) and x86 cvtps2dq there. Results of -0.5 .. -0.0 come out as +0.0. Callers
 * convert the result to an integer with a plain cast. Never compile this with -ffast-math. */
KW_HD float kw_rne_small(float y) {
    const float magic = 12582912.0f; /* 1.5 * 2^23 */
    return (y + magic) - magic;      /* IEEE semantics (no -ffast-math) forbid folding this into y */
}

/* Shared f32 -> small float (1 sign, E exponent bits, M mantissa bits, bias B) with RNE. max_code is the largest finite
 * magnitude code (saturation target). */
KW_HD uint8_t kw__f32_to_minifloat(float x, int ebits, int mbits, int bias, uint8_t max_code, uint8_t nan_code) {
    const uint32_t u = kw_f32_bits(x);
    const uint8_t sign = (uint8_t)((u >> 24) & 0x80u);
    const uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint8_t)(sign | nan_code);
    (void)ebits;
    /* smallest normal of the small format: 2^(1 - bias), as f32 exponent field 128 - bias */
    const uint32_t min_normal_bits = (uint32_t)(128 - bias) << 23;
    uint32_t code;
    if (a < min_normal_bits) {
        /* subnormal: quantum 2^(1 - bias - mbits); value / quantum is exact (power-of-two scaling of a small value) */
        const float scaled = kw_f32_from_bits(a) * kw_f32_from_bits((uint32_t)(127 + bias + mbits - 1) << 23);
        code = (uint32_t)kw_rne_small(scaled); /* 0 .. 2^mbits; 2^mbits is the smallest normal's code */
    } else {
        const int shift = 23 - mbits;
        const uint32_t r = a + ((1u << (shift - 1)) - 1u) + ((a >> shift) & 1u);
        code = (r >> shift) - ((uint32_t)(127 - bias) << mbits);
    }
    if (code > max_code) code = max_code;
    return (uint8_t)(sign | code);
}

/* Shared small float -> f32 (exact). */
KW_HD float kw__minifloat_to_f32(uint8_t c, int mbits, int bias) {
    const uint32_t sign = (uint32_t)(c & 0x80u) << 24;
    const uint32_t e = (uint32_t)(c & 0x7fu) >> mbits;
    const uint32_t m = (uint32_t)c & ((1u << mbits) - 1u);
    if (e == 0) {
        /* m * 2^(1 - bias - mbits): exact in f32 */
        const float v = (float)m * kw_f32_from_bits((uint32_t)(127 + 1 - bias - mbits) << 23);
        return kw_f32_from_bits(kw_f32_bits(v) | sign);
    }
    return kw_f32_from_bits(sign | (e + (uint32_t)(127 - bias)) << 23 | m << (23 - mbits));
}

/* E4M3FN: bias 7, no infinities, 0x7f/0xff are NaN, largest finite 448 (0x7e). */
#define KW_E4M3_MAX 448.0f
KW_HD uint8_t kw_f32_to_e4m3(float x) {
    return kw__f32_to_minifloat(x, 4, 3, 7, 0x7e, 0x7f);
}
KW_HD float kw_e4m3_to_f32(uint8_t c) {
    if ((c & 0x7fu) == 0x7fu) return kw_f32_from_bits(0x7fc00000u | (uint32_t)(c & 0x80u) << 24);
    return kw__minifloat_to_f32(c, 3, 7);
}
/* 1 if c is a finite E4M3 code (not NaN). */
KW_HD int kw_e4m3_is_finite(uint8_t c) {
    return (c & 0x7fu) != 0x7fu;
}

/* E5M2: bias 15, exponent 31 is Inf (mantissa 0) or NaN, largest finite 57344 (0x7b). */
#define KW_E5M2_MAX 57344.0f
KW_HD uint8_t kw_f32_to_e5m2(float x) {
    const uint32_t a = kw_f32_bits(x) & 0x7fffffffu;
    if (a == 0x7f800000u) return (uint8_t)(((kw_f32_bits(x) >> 24) & 0x80u) | 0x7cu); /* keep infinities */
    return kw__f32_to_minifloat(x, 5, 2, 15, 0x7b, 0x7e);
}
KW_HD float kw_e5m2_to_f32(uint8_t c) {
    if ((c & 0x7cu) == 0x7cu) {
        const uint32_t sign = (uint32_t)(c & 0x80u) << 24;
        return kw_f32_from_bits(sign | ((c & 3u) ? 0x7fc00000u : 0x7f800000u));
    }
    return kw__minifloat_to_f32(c, 2, 15);
}
/* 1 if c is a finite E5M2 code (exponent field not all ones). */
KW_HD int kw_e5m2_is_finite(uint8_t c) {
    return (c & 0x7cu) != 0x7cu;
}

/* E8M0 (OCP MX scale): the value 2^(e - 127) for e in 0..254; 255 is NaN. */
KW_HD float kw_e8m0_to_f32(uint8_t e) {
    if (e == 255) return kw_f32_from_bits(0x7fc00000u);
    if (e == 0) return kw_f32_from_bits(0x00400000u); /* 2^-127 is an f32 subnormal */
    return kw_f32_from_bits((uint32_t)e << 23);
}

/* The smallest E8M0 value >= r, for finite r >= 0 (r = 0 gives 0, i.e. 2^-127). Returns 255 when that value would
 * exceed 2^127 (not representable). */
KW_HD uint8_t kw_e8m0_ceil(float r) {
    const uint32_t a = kw_f32_bits(r) & 0x7fffffffu;
    if (a >= 0x7f800000u) return 255;
    const uint32_t e = a >> 23, m = a & 0x7fffffu;
    if (e == 0) return (uint8_t)(m <= 0x400000u ? 0 : 1); /* subnormal r: 2^-127 or 2^-126 */
    const uint32_t c = m ? e + 1 : e;
    return (uint8_t)(c > 254 ? 255 : c);
}

#endif /* KW_FP8_H */
