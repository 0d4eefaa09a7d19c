/* kw_half.h: bf16 and IEEE fp16 <-> fp32 conversion, shared by the CPU and CUDA backends (KW_HD).
 *
 * Rounding from fp32 is round-to-nearest-even, as torch's .to(bfloat16)/.to(float16) does. NaN stays NaN (quiet);
 * +-Inf and signed zeros are preserved; fp16 results that overflow become +-Inf, tiny ones become subnormal or zero.
 * Values are carried as raw uint16_t bit patterns so the layouts are the same in C, CUDA and on the wire.
 */
#ifndef KW_HALF_H
#define KW_HALF_H

#include <stdint.h>
#include <string.h>

#include "kw_hd.h"

KW_HD uint32_t kw_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

KW_HD float kw_f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

KW_HD float kw_bf16_to_f32(uint16_t h) {
    return kw_f32_from_bits((uint32_t)h << 16);
}

/* The bits of a non-NaN fp32 value (bits u) rounded to the nearest bf16 (ties to even), as fp32 bits: the low 16 bits
 * zero. Branch-free, so a loop over it vectorizes (kw_argmax_lanes); a NaN's result is meaningless (kw_f32_to_bf16
 * quiets it instead). */
KW_HD uint32_t kw_bf16_round_bits(uint32_t u) {
    return (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
}

KW_HD uint16_t kw_f32_to_bf16(float f) {
    const uint32_t u = kw_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u); /* quiet NaN, sign kept */
    return (uint16_t)(kw_bf16_round_bits(u) >> 16);
}

/* Rounds an fp32 value to the nearest bf16 and back: the value a bf16 tensor would hold. */
KW_HD float kw_round_bf16(float f) {
    return kw_bf16_to_f32(kw_f32_to_bf16(f));
}

KW_HD float kw_f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0x1f) return kw_f32_from_bits(sign | 0x7f800000u | (mant << 13)); /* Inf / NaN */
    if (exp == 0) {
        if (mant == 0) return kw_f32_from_bits(sign);
        /* subnormal: value = mant * 2^-24 */
        int e = -1;
        do {
            ++e;
            mant <<= 1;
        } while ((mant & 0x400u) == 0);
        mant &= 0x3ffu;
        return kw_f32_from_bits(sign | (uint32_t)(127 - 15 - e) << 23 | mant << 13);
    }
    return kw_f32_from_bits(sign | (exp + 112u) << 23 | mant << 13);
}

KW_HD uint16_t kw_f32_to_f16(float f) {
    const uint32_t u = kw_f32_bits(f);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    const uint32_t abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((abs >> 13) & 0x3ffu)); /* NaN, quiet */
    if (abs >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);                         /* rounds to >= 65520: Inf */
    if (abs < 0x38800000u) {
        /* result is subnormal or zero: value / 2^-24, rounded to nearest even */
        if (abs < 0x33000000u) return sign; /* < 2^-25: rounds to zero */
        const uint32_t exp = abs >> 23;
        const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126u - exp; /* 14 + (113 - exp) - 1 */
        uint32_t q = mant >> shift;
        const uint32_t rem = mant & ((1u << shift) - 1u);
        const uint32_t half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (q & 1u))) ++q;
        return (uint16_t)(sign | q);
    }
    /* normal: rebias and round the 13 dropped mantissa bits to nearest even */
    const uint32_t rebased = abs - 0x38000000u;
    const uint32_t rounded = rebased + 0xfffu + ((rebased >> 13) & 1u);
    return (uint16_t)(sign | (rounded >> 13));
}

KW_HD float kw_round_f16(float f) {
    return kw_f16_to_f32(kw_f32_to_f16(f));
}

#endif /* KW_HALF_H */
