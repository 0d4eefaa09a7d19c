/* kw_wire_quant.h: the per-value and per-row math of the KVWire codecs (docs/FORMAT.md §5), shared by the CPU
 * encoder/decoder and by CUDA kernels (every function is KW_HD: static inline on the host, __host__ __device__ under
 * nvcc). This file IS the definition the format spec describes: scale choice, rounding, clamping, packing and the
 * validity of codes. The SIMD paths in kw_wire_simd_x86.c must match it bit for bit (tests/wire/test_wire_simd.c).
 *
 * It is not the container format (kw_wire.h) and does no I/O or allocation. Rows are n values with n a multiple of 8
 * (head_dim is; FORMAT.md §3), so packed rows are whole bytes. No expression here may be contracted into an FMA:
 * wire/ builds with -ffp-contract=off, and a CUDA caller must not enable fast math for these functions.
 */
#ifndef KW_WIRE_QUANT_H
#define KW_WIRE_QUANT_H

#include <stdint.h>

#include "common/kw_fp8.h"
#include "common/kw_half.h"
#include "common/kw_hd.h"
#include "common/kw_status.h"

/* Codec ids (FORMAT.md §5.2); the numbers are on the wire. */
enum kw_wire_codec {
    KW_WIRE_CODEC_BF16 = 1,  /* passthrough bf16 */
    KW_WIRE_CODEC_F16 = 2,   /* passthrough IEEE f16 */
    KW_WIRE_CODEC_INT8 = 3,  /* -127..127 */
    KW_WIRE_CODEC_INT4 = 4,  /* -7..7, two per byte, element 2j in the low nibble */
    KW_WIRE_CODEC_INT6 = 5,  /* -31..31, four in three bytes, little-endian bit stream */
    KW_WIRE_CODEC_NF4 = 6,   /* index into the QLoRA NF4 table, packed like int4 */
    KW_WIRE_CODEC_E4M3 = 7,  /* OCP FP8 E4M3FN */
    KW_WIRE_CODEC_E5M2 = 8,  /* OCP FP8 E5M2 */
    KW_WIRE_CODEC_INT3 = 9,  /* v1.1: -3..3, eight in three bytes, little-endian bit stream */
    KW_WIRE_CODEC_INT2 = 10, /* v1.1: -1..1, four per byte, element 4j in bits 0..1 */
};
#define KW_WIRE_CODEC_COUNT     9  /* v1 ids are 1..KW_WIRE_CODEC_COUNT-1 (what the daemons offer today) */
#define KW_WIRE_CODEC_COUNT_V11 11 /* v1.1 ids are 1..KW_WIRE_CODEC_COUNT_V11-1 */

/* Scale granularity ids (FORMAT.md §5.4). */
enum kw_wire_gran {
    KW_WIRE_GRAN_NONE = 0,    /* passthrough codecs only */
    KW_WIRE_GRAN_LAYER = 1,   /* one scale per tensor of a token group */
    KW_WIRE_GRAN_HEAD = 2,    /* one per head */
    KW_WIRE_GRAN_TOKEN = 3,   /* one per (head, token) row */
    KW_WIRE_GRAN_GROUP = 4,   /* one per G channels of a row */
    KW_WIRE_GRAN_CHANNEL = 5, /* v1.1: one per (head, channel) over a run of L tokens (FORMAT.md §5.8) */
};

/* Scale dtype ids (FORMAT.md §5.4). */
enum kw_wire_scale {
    KW_WIRE_SCALE_NONE = 0,
    KW_WIRE_SCALE_F16 = 1,
    KW_WIRE_SCALE_BF16 = 2,
    KW_WIRE_SCALE_F32 = 3,
    KW_WIRE_SCALE_E8M0 = 4, /* 2^(e-127) */
    KW_WIRE_SCALE_LOG8 = 5, /* v1.1: 0, or 2^((s-128)/8): the receiver cache's scale byte (FORMAT.md §5.4) */
};
/* v1.1: the scale dtype byte of a tensor descriptor is a dtype in bits 0..3 and, in bit 7, the zero-point flag
 * (FORMAT.md §5.1, §5.9); bits 4..6 are reserved. */
#define KW_WIRE_SCALE_DTYPE_MASK    0x0fu
#define KW_WIRE_SCALE_RESERVED_BITS 0x70u
#define KW_WIRE_SCALE_ZERO_POINTS   0x80u

/* The largest log2 of the run length L of the channel granularity (v1.1): L <= 2^24, the most tokens a group has. */
#define KW_WIRE_MAX_RUN_LOG2 24

/* The largest finite bf16, 0x1.FEp127: every decoded value is at most this in magnitude (FORMAT.md §5.4). */
#define KW_WIRE_BF16_MAX 3.38953138925153547590470800371487866880e+38f

/* The sign s_i of channel i in the Hadamard rotation of FORMAT.md §5.12 (kw_wire_rotate_sign; the device decoder's
 * too): -1 when bit 31 of i * 0x9E3779B1 (mod 2^32) is set, else +1. */
KW_HD int kw_wire_hadamard_sign(uint32_t i) {
    return ((i * 0x9E3779B1u) >> 31) ? -1 : 1;
}

/* The largest magnitude an encoder sends in a rotated tensor (FORMAT.md §5.12), for head_dim D (a power of two):
 * BF16_MAX / (4 D), exact. A decoded value is at most twice its scale unit's largest input in magnitude (a scale
 * rounds up by less than 2x and a code rounds by at most half a step), and an outlier is sent as it is, so the
 * inverse rotation's butterflies add up D values of at most BF16_MAX / (2 D): no sum overflows f32 and the rotated-back
 * value stays within BF16_MAX, which the decoder requires. Past it the encoder refuses (KW_E_WIRE_RANGE) rather than
 * send a blob its peer would refuse. */
KW_HD float kw_wire_rotated_max(uint32_t head_dim) {
    return KW_WIRE_BF16_MAX / (4.0f * (float)head_dim);
}

/* ------------------------------------------------------------------------------------------------------------- */
/* Codec properties */

/* Bits per element, or 0 for an unknown codec. */
KW_HD uint32_t kw_wire_codec_bits(uint32_t codec) {
    switch (codec) {
    case KW_WIRE_CODEC_BF16:
    case KW_WIRE_CODEC_F16:
        return 16;
    case KW_WIRE_CODEC_INT8:
    case KW_WIRE_CODEC_E4M3:
    case KW_WIRE_CODEC_E5M2:
        return 8;
    case KW_WIRE_CODEC_INT6:
        return 6;
    case KW_WIRE_CODEC_INT4:
    case KW_WIRE_CODEC_NF4:
        return 4;
    case KW_WIRE_CODEC_INT3:
        return 3;
    case KW_WIRE_CODEC_INT2:
        return 2;
    default:
        return 0;
    }
}

/* 1 for the integer codecs (int2, int3, int4, int6, int8): the ones that may carry a zero point (FORMAT.md §5.9). */
KW_HD int kw_wire_codec_is_int(uint32_t codec) {
    return codec == KW_WIRE_CODEC_INT8 || codec == KW_WIRE_CODEC_INT4 || codec == KW_WIRE_CODEC_INT6 ||
           codec == KW_WIRE_CODEC_INT3 || codec == KW_WIRE_CODEC_INT2;
}

/* qmax of an asymmetric integer codec: the largest unsigned code, 2^bits - 1 (FORMAT.md §5.9). */
KW_HD float kw_wire_codec_qmax_asym(uint32_t codec) {
    return (float)((1u << kw_wire_codec_bits(codec)) - 1u);
}

/* 1 for the passthrough codecs (no scale). */
KW_HD int kw_wire_codec_is_passthrough(uint32_t codec) {
    return codec == KW_WIRE_CODEC_BF16 || codec == KW_WIRE_CODEC_F16;
}

/* The largest code value magnitude (qmax of FORMAT.md §5.2), 0 for passthrough or unknown codecs. */
KW_HD float kw_wire_codec_qmax(uint32_t codec) {
    switch (codec) {
    case KW_WIRE_CODEC_INT8:
        return 127.0f;
    case KW_WIRE_CODEC_INT4:
        return 7.0f;
    case KW_WIRE_CODEC_INT6:
        return 31.0f;
    case KW_WIRE_CODEC_INT3:
        return 3.0f;
    case KW_WIRE_CODEC_INT2:
        return 1.0f;
    case KW_WIRE_CODEC_NF4:
        return 1.0f;
    case KW_WIRE_CODEC_E4M3:
        return KW_E4M3_MAX;
    case KW_WIRE_CODEC_E5M2:
        return KW_E5M2_MAX;
    default:
        return 0.0f;
    }
}

/* Bytes per stored scale, or 0 for KW_WIRE_SCALE_NONE and unknown ids. */
KW_HD uint32_t kw_wire_scale_size(uint32_t scale_dtype) {
    switch (scale_dtype) {
    case KW_WIRE_SCALE_F16:
    case KW_WIRE_SCALE_BF16:
        return 2;
    case KW_WIRE_SCALE_F32:
        return 4;
    case KW_WIRE_SCALE_E8M0:
    case KW_WIRE_SCALE_LOG8:
        return 1;
    default:
        return 0;
    }
}

/* The value of log8 byte s (FORMAT.md §5.4): 0 for s = 0, else 2^((s - 128) / 8) = 2^(i/8) * 2^k with s - 128 =
 * 8k + i, 0 <= i < 8, where 2^(i/8) is rounded to f32 (the bits of kernels/kw_kvq_format.h's kw_kvq_root8) and the
 * product is exact (-16 <= k <= 15: a normal f32). */
KW_HD float kw_wire_log8_to_f32(uint32_t s) {
    if ((s & 0xffu) == 0) return 0.0f;
    const int32_t e = (int32_t)(s & 0xffu) - 128, i = e & 7, k = (e - i) / 8;
    uint32_t b;
    switch (i) {
    case 0:
        b = 0x3f800000u;
        break;
    case 1:
        b = 0x3f8b95c2u;
        break;
    case 2:
        b = 0x3f9837f0u;
        break;
    case 3:
        b = 0x3fa5fed7u;
        break;
    case 4:
        b = 0x3fb504f3u;
        break;
    case 5:
        b = 0x3fc5672au;
        break;
    case 6:
        b = 0x3fd744fdu;
        break;
    default:
        b = 0x3feac0c7u;
        break;
    }
    return kw_f32_from_bits((uint32_t)((int32_t)b + k * (1 << 23)));
}

/* S_MIN of FORMAT.md §5.4: the smallest non-zero stored scale. */
KW_HD float kw_wire_scale_min(uint32_t scale_dtype) {
    switch (scale_dtype) {
    case KW_WIRE_SCALE_LOG8:
        return kw_wire_log8_to_f32(1); /* 2^-15.875 */
    case KW_WIRE_SCALE_F16:
        return kw_f32_from_bits(0x33800000u); /* 2^-24 */
    case KW_WIRE_SCALE_E8M0:
        return kw_f32_from_bits(0x00400000u); /* 2^-127 */
    default:
        return kw_f32_from_bits(0x00800000u); /* 2^-126 */
    }
}

/* ------------------------------------------------------------------------------------------------------------- */
/* Scales */

/* Scales per tensor of a token group of T tokens (H heads of head_dim D), FORMAT.md §5.4: 1 per layer, H per head,
 * H*T per token, H*T*(D/G) per group of G = 2^group_log2 channels, H*ceil(T/L)*D per channel over runs of L =
 * 2^group_log2 tokens (v1.1, §5.8); 0 for passthrough and unknown ids. Stored in that order: head-major, then token
 * (or run), then channel group (or channel). */
KW_HD uint64_t kw_wire_scale_units(uint32_t granularity, uint32_t group_log2, uint32_t H, uint32_t T, uint32_t D) {
    switch (granularity) {
    case KW_WIRE_GRAN_LAYER:
        return 1;
    case KW_WIRE_GRAN_HEAD:
        return H;
    case KW_WIRE_GRAN_TOKEN:
        return (uint64_t)H * T;
    case KW_WIRE_GRAN_GROUP:
        return (uint64_t)H * T * (D >> group_log2);
    case KW_WIRE_GRAN_CHANNEL: /* runs of L = 2^group_log2 tokens, the last one possibly shorter */
        return (uint64_t)H * (((uint64_t)T + (1ull << group_log2) - 1u) >> group_log2) * D;
    default:
        return 0;
    }
}

/* The index of the scale (and zero point) of element (h, t, d) of a tensor of a token group of T tokens, in the
 * stored order of kw_wire_scale_units (FORMAT.md §5.4, §5.8). */
KW_HD uint64_t kw_wire_scale_index(uint32_t granularity, uint32_t group_log2, uint32_t T, uint32_t D, uint32_t h,
                                   uint32_t t, uint32_t d) {
    switch (granularity) {
    case KW_WIRE_GRAN_HEAD:
        return h;
    case KW_WIRE_GRAN_TOKEN:
        return (uint64_t)h * T + t;
    case KW_WIRE_GRAN_GROUP:
        return ((uint64_t)h * T + t) * (D >> group_log2) + (d >> group_log2);
    case KW_WIRE_GRAN_CHANNEL: {
        const uint64_t runs = ((uint64_t)T + (1ull << group_log2) - 1u) >> group_log2;
        return ((uint64_t)h * runs + (t >> group_log2)) * D + d;
    }
    default:
        return 0;
    }
}

/* Loads a stored scale (little-endian bytes at p, kw_wire_scale_size(dtype) of them) as f32, without validation. */
KW_HD float kw_wire_scale_load(uint32_t scale_dtype, const uint8_t *p) {
    switch (scale_dtype) {
    case KW_WIRE_SCALE_F16:
        return kw_f16_to_f32((uint16_t)(p[0] | p[1] << 8));
    case KW_WIRE_SCALE_BF16:
        return kw_bf16_to_f32((uint16_t)(p[0] | p[1] << 8));
    case KW_WIRE_SCALE_F32:
        return kw_f32_from_bits((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
    case KW_WIRE_SCALE_E8M0:
        return kw_e8m0_to_f32(p[0]);
    case KW_WIRE_SCALE_LOG8:
        return kw_wire_log8_to_f32(p[0]);
    default:
        return 0.0f;
    }
}

/* Stores the scale code (the raw f16/bf16/f32 bits or the e8m0 or log8 byte) little-endian at p. */
KW_HD void kw_wire_scale_store(uint32_t scale_dtype, uint32_t code, uint8_t *p) {
    const uint32_t n = kw_wire_scale_size(scale_dtype);
    for (uint32_t i = 0; i < n; ++i)
        p[i] = (uint8_t)(code >> (8 * i));
}

/* 1 if the stored scale at p is valid for a codec with this qmax (FORMAT.md §5.4): finite, sign clear, zero or at
 * least S_MIN, and qmax * s at most KW_WIRE_BF16_MAX. Every log8 byte is valid (it has no sign bit). */
KW_HD int kw_wire_scale_valid(uint32_t scale_dtype, const uint8_t *p, float qmax) {
    if (scale_dtype == KW_WIRE_SCALE_E8M0) {
        if (p[0] == 255) return 0;
    } else if (scale_dtype != KW_WIRE_SCALE_LOG8) {
        const uint32_t size = kw_wire_scale_size(scale_dtype);
        if ((p[size - 1] & 0x80u) != 0) return 0; /* sign bit (NaN/Inf are caught below) */
    }
    const float s = kw_wire_scale_load(scale_dtype, p);
    if (!(s <= KW_WIRE_BF16_MAX)) return 0; /* Inf, NaN */
    if (s != 0.0f && s < kw_wire_scale_min(scale_dtype)) return 0;
    return qmax * s <= KW_WIRE_BF16_MAX;
}

/* Chooses the stored scale for a set of values whose largest magnitude is amax (finite, >= 0), following the encoder
 * rule of FORMAT.md §5.4 steps 1-4. Writes the scale code (*code, for kw_wire_scale_store) and its f32 value (*s;
 * 0 when amax is 0, in which case every code must be the zero code). Returns 0, or KW_E_WIRE_RANGE when the scale
 * dtype cannot represent a scale for amax. */
KW_HD int kw_wire_scale_choose(float amax, float qmax, uint32_t scale_dtype, uint32_t *code, float *s) {
    if (amax == 0.0f) {
        *code = 0;
        *s = 0.0f;
        return 0;
    }
    const float r = amax / qmax;
    float v;
    uint32_t c;
    switch (scale_dtype) {
    case KW_WIRE_SCALE_F16:
        c = kw_f32_to_f16(r);
        if (c >= 0x7c00u) return KW_E_WIRE_RANGE;
        if (c < 0x0001u) c = 0x0001u;
        v = kw_f16_to_f32((uint16_t)c);
        break;
    case KW_WIRE_SCALE_BF16:
        c = kw_f32_to_bf16(r);
        if (c >= 0x7f80u) return KW_E_WIRE_RANGE;
        if (c < 0x0080u) c = 0x0080u;
        v = kw_bf16_to_f32((uint16_t)c);
        break;
    case KW_WIRE_SCALE_F32:
        c = kw_f32_bits(r);
        if (c >= 0x7f800000u) return KW_E_WIRE_RANGE;
        if (c < 0x00800000u) c = 0x00800000u;
        v = kw_f32_from_bits(c);
        break;
    case KW_WIRE_SCALE_E8M0:
        c = kw_e8m0_ceil(r);
        if (c == 255) return KW_E_WIRE_RANGE;
        v = kw_e8m0_to_f32((uint8_t)c);
        break;
    case KW_WIRE_SCALE_LOG8: { /* the smallest byte c in 1..255 with fl32(log8(c) * qmax) >= amax (monotonic in c) */
        if (!(kw_wire_log8_to_f32(255) * qmax >= amax)) return KW_E_WIRE_RANGE;
        uint32_t lo = 1, hi = 255;
        while (lo < hi) {
            const uint32_t mid = (lo + hi) / 2;
            if (kw_wire_log8_to_f32(mid) * qmax >= amax)
                hi = mid;
            else
                lo = mid + 1;
        }
        c = lo;
        v = kw_wire_log8_to_f32(c);
        break;
    }
    default:
        return KW_E_WIRE_RANGE;
    }
    if (!(qmax * v <= KW_WIRE_BF16_MAX)) return KW_E_WIRE_RANGE;
    *code = c;
    *s = v;
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------- */
/* Values */

/* The NF4 table entry for code c (0..15), FORMAT.md §5.6. (A switch rather than a local array: compilers turn it
 * into a read-only table instead of building an array on the stack at every call, and it is legal device code.) */
KW_HD float kw_wire_nf4_value(uint32_t c) {
    uint32_t b;
    switch (c & 15u) {
    case 0:
        b = 0xbf800000u;
        break;
    case 1:
        b = 0xbf3239b1u;
        break;
    case 2:
        b = 0xbf066b30u;
        break;
    case 3:
        b = 0xbeca32a0u;
        break;
    case 4:
        b = 0xbe91a24du;
        break;
    case 5:
        b = 0xbe3d353fu;
        break;
    case 6:
        b = 0xbdba7871u;
        break;
    case 7:
        b = 0x00000000u;
        break;
    case 8:
        b = 0x3da2faffu;
        break;
    case 9:
        b = 0x3e24cae3u;
        break;
    case 10:
        b = 0x3e7c04ddu;
        break;
    case 11:
        b = 0x3ead033au;
        break;
    case 12:
        b = 0x3ee1a4b8u;
        break;
    case 13:
        b = 0x3f1007abu;
        break;
    case 14:
        b = 0x3f3913b3u;
        break;
    default:
        b = 0x3f800000u;
        break;
    }
    return kw_f32_from_bits(b);
}

/* Midpoint i (0..14) between NF4 codes i and i+1: fl32((NF4[i] + NF4[i+1]) * 0.5), as bits (tests recompute them). */
KW_HD float kw_wire_nf4_mid(uint32_t i) {
    uint32_t b;
    switch (i) {
    case 0:
        b = 0xbf591cd8u;
        break;
    case 1:
        b = 0xbf1c5270u;
        break;
    case 2:
        b = 0xbeeb8480u;
        break;
    case 3:
        b = 0xbeadea76u;
        break;
    case 4:
        b = 0xbe703cecu;
        break;
    case 5:
        b = 0xbe0d38bcu;
        break;
    case 6:
        b = 0xbd3a7871u;
        break;
    case 7:
        b = 0x3d22faffu;
        break;
    case 8:
        b = 0x3df64862u;
        break;
    case 9:
        b = 0x3e5067e0u;
        break;
    case 10:
        b = 0x3e9582d4u;
        break;
    case 11:
        b = 0x3ec753f9u;
        break;
    case 12:
        b = 0x3f006d04u;
        break;
    case 13:
        b = 0x3f248dafu;
        break;
    default:
        b = 0x3f5c89dau;
        break;
    }
    return kw_f32_from_bits(b);
}

/* The NF4 code of y (already clamped to [-1, 1]): the number of midpoints below y, ties to the even code. */
KW_HD uint32_t kw_wire_nf4_code(float y) {
    /* 15 compares against constants (written out so they fold to immediates), no data-dependent branch: a binary
     * search mispredicts on real data */
#define KW__NF4_ABOVE(i) (y > kw_wire_nf4_mid(i) ? 1u : 0u)
    uint32_t c = KW__NF4_ABOVE(0) + KW__NF4_ABOVE(1) + KW__NF4_ABOVE(2) + KW__NF4_ABOVE(3) + KW__NF4_ABOVE(4) +
                 KW__NF4_ABOVE(5) + KW__NF4_ABOVE(6) + KW__NF4_ABOVE(7) + KW__NF4_ABOVE(8) + KW__NF4_ABOVE(9) +
                 KW__NF4_ABOVE(10) + KW__NF4_ABOVE(11) + KW__NF4_ABOVE(12) + KW__NF4_ABOVE(13) + KW__NF4_ABOVE(14);
#undef KW__NF4_ABOVE
    if (c < 15 && y == kw_wire_nf4_mid(c) && (c & 1u)) ++c; /* tie between c and c+1: take the even one */
    return c;
}

/* y = clamp(fl32(x * inv), -qmax, qmax): step 5 of the encoder rule. */
KW_HD float kw_wire_scaled(float x, float inv, float qmax) {
    float y = x * inv;
    y = y < -qmax ? -qmax : y;
    y = y > qmax ? qmax : y;
    return y;
}

/* The code of one value x for a quantizing codec, given inv = fl32(1/s), integer codes clamped at qmax instead of
 * the codec's own (a code limit, FORMAT.md §5.14: the encoder's choice, at most the codec's qmax). Integer codecs
 * return the signed value RNE(clamp(fl32(x * inv), -qmax, qmax)); nf4 the table index and fp8 the byte, both at the
 * codec's own qmax (qmax is not used for them). Pure: no pointers, nothing owned. */
KW_HD int32_t kw_wire_quantize_value_q(uint32_t codec, float x, float inv, float qmax) {
    if (kw_wire_codec_is_int(codec)) return (int32_t)kw_rne_small(kw_wire_scaled(x, inv, qmax));
    const float y = kw_wire_scaled(x, inv, kw_wire_codec_qmax(codec));
    switch (codec) {
    case KW_WIRE_CODEC_NF4:
        return (int32_t)kw_wire_nf4_code(y);
    case KW_WIRE_CODEC_E4M3:
        return kw_f32_to_e4m3(y);
    case KW_WIRE_CODEC_E5M2:
        return kw_f32_to_e5m2(y);
    default:
        return 0;
    }
}

/* The code of one value x for a quantizing codec, given inv = fl32(1/s): kw_wire_quantize_value_q at the codec's own
 * qmax. Integer codecs return the signed value; nf4 the table index; fp8 the byte. */
KW_HD int32_t kw_wire_quantize_value(uint32_t codec, float x, float inv) {
    return kw_wire_quantize_value_q(codec, x, inv, kw_wire_codec_qmax(codec));
}

/* The unscaled value of a code (the inverse of kw_wire_quantize_value before the scale), and whether the code is
 * valid (*ok set to 0 for reserved codes, left untouched otherwise). */
KW_HD float kw_wire_code_value(uint32_t codec, int32_t code, int *ok) {
    switch (codec) {
    case KW_WIRE_CODEC_INT8:
    case KW_WIRE_CODEC_INT4:
    case KW_WIRE_CODEC_INT6:
    case KW_WIRE_CODEC_INT3:
    case KW_WIRE_CODEC_INT2: /* the most negative code, -2^(b-1), is reserved: -128, -8, -32, -4, -2 */
        if (code == -(int32_t)(1u << (kw_wire_codec_bits(codec) - 1u))) *ok = 0;
        return (float)code;
    case KW_WIRE_CODEC_NF4:
        return kw_wire_nf4_value((uint32_t)code);
    case KW_WIRE_CODEC_E4M3:
        if (!kw_e4m3_is_finite((uint8_t)code)) *ok = 0;
        return kw_e4m3_to_f32((uint8_t)code);
    case KW_WIRE_CODEC_E5M2:
        if (!kw_e5m2_is_finite((uint8_t)code)) *ok = 0;
        return kw_e5m2_to_f32((uint8_t)code);
    default:
        *ok = 0;
        return 0.0f;
    }
}

/* ------------------------------------------------------------------------------------------------------------- */
/* Packing: element i of a row occupies bits [i*b, (i+1)*b) of a little-endian bit stream (FORMAT.md §5.3). */

/* The b-bit field of element i of a packed row (b in 2, 3, 4, 6, 8), unsigned: bits [i*b, (i+1)*b) of the stream.
 * A field spans at most two bytes, and the second is read only when the field reaches into it. */
KW_HD uint32_t kw_wire_field_get(uint32_t bits, const uint8_t *row, uint32_t i) {
    const uint32_t k = i * bits, byte = k >> 3, sh = k & 7u;
    uint32_t w = row[byte];
    if (sh + bits > 8u) w |= (uint32_t)row[byte + 1] << 8;
    return (w >> sh) & ((1u << bits) - 1u);
}

/* ORs the b-bit field v (already masked) of element i into a packed row that was zeroed beforehand. */
KW_HD void kw_wire_field_put(uint32_t bits, uint8_t *row, uint32_t i, uint32_t v) {
    const uint32_t k = i * bits, byte = k >> 3, sh = k & 7u;
    row[byte] = (uint8_t)(row[byte] | (v << sh));
    if (sh + bits > 8u) row[byte + 1] = (uint8_t)(row[byte + 1] | (v >> (8u - sh)));
}

/* Clears the b-bit field of element i of a packed row (its code becomes 0). */
KW_HD void kw_wire_field_clear(uint32_t bits, uint8_t *row, uint32_t i) {
    const uint32_t k = i * bits, byte = k >> 3, sh = k & 7u, m = (1u << bits) - 1u;
    row[byte] = (uint8_t)(row[byte] & ~(m << sh));
    if (sh + bits > 8u) row[byte + 1] = (uint8_t)(row[byte + 1] & ~(m >> (8u - sh)));
}

/* The code of element i of a packed row, sign-extended for the integer codecs (nf4 and fp8 codes are unsigned). */
KW_HD int32_t kw_wire_unpack_code(uint32_t codec, const uint8_t *row, uint32_t i) {
    switch (codec) {
    case KW_WIRE_CODEC_INT8:
        return (int8_t)row[i];
    case KW_WIRE_CODEC_E4M3:
    case KW_WIRE_CODEC_E5M2:
        return row[i];
    case KW_WIRE_CODEC_INT4: {
        const int32_t nib = (row[i >> 1] >> ((i & 1u) * 4u)) & 15;
        return (nib ^ 8) - 8;
    }
    case KW_WIRE_CODEC_NF4:
        return (row[i >> 1] >> ((i & 1u) * 4u)) & 15;
    case KW_WIRE_CODEC_INT6: {
        const uint8_t *p = row + 3u * (i >> 2);
        const uint32_t w = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16;
        const int32_t v = (int32_t)((w >> (6u * (i & 3u))) & 63u);
        return (v ^ 32) - 32;
    }
    case KW_WIRE_CODEC_INT3:
        return ((int32_t)kw_wire_field_get(3, row, i) ^ 4) - 4;
    case KW_WIRE_CODEC_INT2:
        return ((int32_t)kw_wire_field_get(2, row, i) ^ 2) - 2;
    default:
        return 0;
    }
}

/* Quantizes the n values x[0..n) (n a multiple of 8) with one scale, inv = fl32(1/s), into the packed row dst
 * (n * bits / 8 bytes). s must be non-zero: a zero scale means all-zero codes (kw_wire_zero_row). */
KW_HD void kw_wire_quantize_row(uint32_t codec, const float *x, uint32_t n, float inv, uint8_t *dst) {
    switch (codec) {
    case KW_WIRE_CODEC_INT8:
    case KW_WIRE_CODEC_E4M3:
    case KW_WIRE_CODEC_E5M2:
        for (uint32_t i = 0; i < n; ++i)
            dst[i] = (uint8_t)kw_wire_quantize_value(codec, x[i], inv);
        break;
    case KW_WIRE_CODEC_INT4:
    case KW_WIRE_CODEC_NF4:
        for (uint32_t i = 0; i < n; i += 2) {
            const uint32_t lo = (uint32_t)kw_wire_quantize_value(codec, x[i], inv) & 15u;
            const uint32_t hi = (uint32_t)kw_wire_quantize_value(codec, x[i + 1], inv) & 15u;
            dst[i >> 1] = (uint8_t)(lo | hi << 4);
        }
        break;
    case KW_WIRE_CODEC_INT6:
        for (uint32_t i = 0; i < n; i += 4) {
            uint32_t w = 0;
            for (uint32_t k = 0; k < 4; ++k)
                w |= ((uint32_t)kw_wire_quantize_value(codec, x[i + k], inv) & 63u) << (6 * k);
            uint8_t *p = dst + 3u * (i >> 2);
            p[0] = (uint8_t)w;
            p[1] = (uint8_t)(w >> 8);
            p[2] = (uint8_t)(w >> 16);
        }
        break;
    case KW_WIRE_CODEC_INT3:
    case KW_WIRE_CODEC_INT2: {
        const uint32_t b = kw_wire_codec_bits(codec);
        for (uint32_t i = 0; i < n * b / 8u; ++i)
            dst[i] = 0;
        for (uint32_t i = 0; i < n; ++i)
            kw_wire_field_put(b, dst, i, (uint32_t)kw_wire_quantize_value(codec, x[i], inv) & ((1u << b) - 1u));
        break;
    }
    default:
        break;
    }
}

/* Writes the all-zero-value row of n elements (the codes of +0) for a quantizing codec: what a zero scale means. */
KW_HD void kw_wire_zero_row(uint32_t codec, uint32_t n, uint8_t *dst) {
    const uint32_t bytes = n * kw_wire_codec_bits(codec) / 8u;
    const uint8_t fill = codec == KW_WIRE_CODEC_NF4 ? 0x77u : 0x00u;
    for (uint32_t i = 0; i < bytes; ++i)
        dst[i] = fill;
}

/* Dequantizes the packed row src of n elements with scale s into out[0..n) (f32). Returns 0, or KW_E_WIRE_VALUE
 * if a reserved code was found (out is fully written either way). */
KW_HD int kw_wire_dequantize_row(uint32_t codec, const uint8_t *src, uint32_t n, float s, float *out) {
    int ok = 1;
    for (uint32_t i = 0; i < n; ++i)
        out[i] = kw_wire_code_value(codec, kw_wire_unpack_code(codec, src, i), &ok) * s;
    return ok ? 0 : KW_E_WIRE_VALUE;
}

/* Decodes a passthrough row (bf16 or f16 codes, little-endian) into f32. Returns KW_E_WIRE_VALUE if a value is
 * not finite. */
KW_HD int kw_wire_passthrough_row(uint32_t codec, const uint8_t *src, uint32_t n, float *out) {
    int ok = 1;
    for (uint32_t i = 0; i < n; ++i) {
        const uint16_t h = (uint16_t)(src[2 * i] | src[2 * i + 1] << 8);
        if (codec == KW_WIRE_CODEC_BF16) {
            ok &= (h & 0x7f80u) != 0x7f80u;
            out[i] = kw_bf16_to_f32(h);
        } else {
            ok &= (h & 0x7c00u) != 0x7c00u;
            out[i] = kw_f16_to_f32(h);
        }
    }
    return ok ? 0 : KW_E_WIRE_VALUE;
}

// ---------------------------------------------------------------------------------------------------------------
// v1.1: asymmetric integer codecs (FORMAT.md §5.9): x^ = fl32(fl32(q * s) + z), q unsigned in [0, 2^b - 1]

/* The code of value v in a scale dtype that can hold a zero point (f16, bf16, f32), RNE, and its f32 value. Returns
 * 0, or KW_E_WIRE_RANGE if the rounded value is not finite (or the dtype is e8m0 or unknown). */
KW_HD int kw_wire_zero_encode(uint32_t scale_dtype, float v, uint32_t *code, float *out) {
    switch (scale_dtype) {
    case KW_WIRE_SCALE_F16:
        *code = kw_f32_to_f16(v);
        if ((*code & 0x7c00u) == 0x7c00u) return KW_E_WIRE_RANGE;
        break;
    case KW_WIRE_SCALE_BF16:
        *code = kw_f32_to_bf16(v);
        if ((*code & 0x7f80u) == 0x7f80u) return KW_E_WIRE_RANGE;
        break;
    case KW_WIRE_SCALE_F32:
        *code = kw_f32_bits(v);
        if ((*code & 0x7f800000u) == 0x7f800000u) return KW_E_WIRE_RANGE;
        break;
    default:
        return KW_E_WIRE_RANGE;
    }
    *out = scale_dtype == KW_WIRE_SCALE_F16    ? kw_f16_to_f32((uint16_t)*code)
           : scale_dtype == KW_WIRE_SCALE_BF16 ? kw_bf16_to_f32((uint16_t)*code)
                                               : kw_f32_from_bits(*code);
    return 0;
}

/* 1 if zero point z (already finite) with the valid scale s of an asymmetric codec of this qmax keeps every decoded
 * value within +-KW_WIRE_BF16_MAX: z >= -BF16_MAX and fl32(fl32(qmax * s) + z) <= BF16_MAX (decoding is monotonic in
 * the code, so the extremes are codes 0 and qmax). */
KW_HD int kw_wire_zero_in_range(float z, float s, float qmax) {
    return z >= -KW_WIRE_BF16_MAX && qmax * s + z <= KW_WIRE_BF16_MAX;
}

/* 1 if the stored zero point at p (scale dtype f16, bf16 or f32) is valid beside the scale s: finite and in range. */
KW_HD int kw_wire_zero_valid(uint32_t scale_dtype, const uint8_t *p, float s, float qmax) {
    const float z = kw_wire_scale_load(scale_dtype, p);
    if (!(z - z == 0.0f)) return 0; /* NaN or Inf */
    return kw_wire_zero_in_range(z, s, qmax);
}

/* The encoder rule of FORMAT.md §5.9 for one set of values with minimum mn and maximum mx (finite, mn <= mx): the
 * zero point is mn rounded to the scale dtype; the scale is the symmetric rule's for amax = fl32(mx - mn) and qmax =
 * 2^b - 1 (0 when mx == mn: every code is then 0 and decodes to z). Writes both codes and values. Returns 0 or
 * KW_E_WIRE_RANGE. */
KW_HD int kw_wire_asym_choose(float mn, float mx, float qmax, uint32_t scale_dtype, uint32_t *scode, float *s,
                              uint32_t *zcode, float *z) {
    const int rc = kw_wire_zero_encode(scale_dtype, mn, zcode, z);
    if (rc < 0) return rc;
    if (mx == mn) {
        *scode = 0;
        *s = 0.0f;
    } else {
        const int r = kw_wire_scale_choose(mx - mn, qmax, scale_dtype, scode, s); /* Inf when mx - mn overflows */
        if (r < 0) return r;
    }
    return kw_wire_zero_in_range(*z, *s, qmax) ? 0 : KW_E_WIRE_RANGE;
}

/* The unsigned code of x for an asymmetric codec: RNE(clamp(fl32(fl32(x - z) * inv), 0, qmax)), inv = fl32(1/s)
 * (s != 0; a zero scale means code 0). */
KW_HD uint32_t kw_wire_quantize_asym(float x, float z, float inv, float qmax) {
    float y = (x - z) * inv;
    y = y < 0.0f ? 0.0f : y;
    y = y > qmax ? qmax : y;
    return (uint32_t)kw_rne_small(y);
}

/* The decoded value of unsigned code q: fl32(fl32(q * s) + z). Every code is valid. */
KW_HD float kw_wire_dequantize_asym(uint32_t q, float s, float z) {
    const float qs = (float)q * s;
    return qs + z;
}

#endif /* KW_WIRE_QUANT_H */
