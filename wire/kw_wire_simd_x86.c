/* kw_wire_simd_x86.c: AVX2 and AVX-512 row kernels for the hot KVWire paths (absmax of bf16/f32 rows; int8 and int4
 * quantization from bf16/f32; int8 and int4 dequantization to f32/bf16). Everything else falls back to the scalar
 * kernels. The functions are compiled for their ISA with target attributes and chosen at run time
 * (kw_wire_isa_resolve), so the library runs on any x86-64 and is never built with -march=native.
 *
 * They compute exactly what kw_wire_quant.h defines, bit for bit (tests/wire/test_wire_simd.c compares them over
 * random and edge-case rows): y = fl32(x * inv) with one rounding (no FMA), clamp to [-qmax, qmax], round half to even
 * with cvtps2dq under the default MXCSR (the same rounding as the scalar 1.5*2^23 trick), two's complement packing with
 * element 2j in the low nibble; dequantization fl32(q * s); bf16 output by integer round-to-nearest-even (not
 * vcvtneps2bf16, which flushes subnormals). Like the scalar code they assume the default MXCSR (round to nearest, no
 * FTZ/DAZ).
 */
#include "wire/kw_wire_internal.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define KW_AVX2   __attribute__((target("avx2,fma,f16c,bmi2")))
#define KW_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi2")))

// ---------------------------------------------------------------------------------------------------------------
// AVX2

KW_AVX2 static uint32_t kw__amax_avx2(const void *x, uint32_t dtype, uint32_t n) {
    if (dtype == KW_WIRE_DTYPE_BF16 && n % 16 == 0) {
        const __m256i mask = _mm256_set1_epi16(0x7fff);
        __m256i m = _mm256_setzero_si256();
        for (uint32_t i = 0; i < n; i += 16)
            m = _mm256_max_epu16(
                m, _mm256_and_si256(_mm256_loadu_si256((const __m256i *)((const uint16_t *)x + i)), mask));
        __m128i r = _mm_max_epu16(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
        r = _mm_max_epu16(r, _mm_srli_si128(r, 8));
        r = _mm_max_epu16(r, _mm_srli_si128(r, 4));
        r = _mm_max_epu16(r, _mm_srli_si128(r, 2));
        return (uint32_t)(_mm_cvtsi128_si32(r) & 0xffff) << 16;
    }
    if (dtype == KW_WIRE_DTYPE_F32 && n % 8 == 0) {
        const __m256i mask = _mm256_set1_epi32(0x7fffffff);
        __m256i m = _mm256_setzero_si256();
        for (uint32_t i = 0; i < n; i += 8)
            m = _mm256_max_epu32(m,
                                 _mm256_and_si256(_mm256_loadu_si256((const __m256i *)((const float *)x + i)), mask));
        __m128i r = _mm_max_epu32(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
        r = _mm_max_epu32(r, _mm_srli_si128(r, 8));
        r = _mm_max_epu32(r, _mm_srli_si128(r, 4));
        return (uint32_t)_mm_cvtsi128_si32(r);
    }
    return kw__wire_amax_scalar(x, dtype, n);
}

/* 8 input values as f32. */
KW_AVX2 static inline __m256 kw__load8_avx2(const void *x, uint32_t dtype, uint32_t i) {
    if (dtype == KW_WIRE_DTYPE_F32) return _mm256_loadu_ps((const float *)x + i);
    const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)x + i)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
}

/* 8 codes as int16 in element order: clamp(x * inv) rounded half to even. */
KW_AVX2 static inline __m128i kw__codes8_avx2(__m256 v, __m256 inv, __m256 lo, __m256 hi) {
    const __m256 y = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(v, inv), lo), hi);
    const __m256i q = _mm256_cvtps_epi32(y);
    return _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
}

KW_AVX2 static void kw__quantize_avx2(uint32_t codec, const void *x, uint32_t dtype, uint32_t n, float inv,
                                      uint8_t *dst) {
    if ((codec != KW_WIRE_CODEC_INT8 && codec != KW_WIRE_CODEC_INT4) ||
        (dtype != KW_WIRE_DTYPE_BF16 && dtype != KW_WIRE_DTYPE_F32) || n % 8 != 0) {
        kw__wire_quantize_scalar(codec, x, dtype, n, inv, dst);
        return;
    }
    const float qmax = kw_wire_codec_qmax(codec);
    const __m256 vinv = _mm256_set1_ps(inv), lo = _mm256_set1_ps(-qmax), hi = _mm256_set1_ps(qmax);
    if (codec == KW_WIRE_CODEC_INT8) {
        for (uint32_t i = 0; i < n; i += 8) {
            const __m128i q16 = kw__codes8_avx2(kw__load8_avx2(x, dtype, i), vinv, lo, hi);
            _mm_storel_epi64((__m128i *)(dst + i), _mm_packs_epi16(q16, q16));
        }
        return;
    }
    const __m128i m4 = _mm_set1_epi32(0x0f), m4h = _mm_set1_epi32(0xf0);
    for (uint32_t i = 0; i < n; i += 8) {
        /* each 32-bit lane holds q[2j] (low half) and q[2j+1] (high half) */
        const __m128i q16 = kw__codes8_avx2(kw__load8_avx2(x, dtype, i), vinv, lo, hi);
        const __m128i b = _mm_or_si128(_mm_and_si128(q16, m4), _mm_and_si128(_mm_srli_epi32(q16, 12), m4h));
        const __m128i p = _mm_packus_epi16(_mm_packus_epi32(b, b), _mm_setzero_si128());
        const int32_t w = _mm_cvtsi128_si32(p);
        memcpy(dst + i / 2, &w, 4);
    }
}

/* Stores 8 f32 values as f32 or as bf16 (integer round to nearest even, finite inputs). */
KW_AVX2 static inline void kw__store8_avx2(void *out, uint32_t out_dtype, uint32_t i, __m256 v) {
    if (out_dtype == KW_WIRE_DTYPE_F32) {
        _mm256_storeu_ps((float *)out + i, v);
        return;
    }
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
    _mm_storeu_si128((__m128i *)((uint16_t *)out + i),
                     _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)));
}

KW_AVX2 static int kw__dequantize_avx2(uint32_t codec, const uint8_t *src, uint32_t n, float s, void *out,
                                       uint32_t out_dtype) {
    if ((codec != KW_WIRE_CODEC_INT8 && codec != KW_WIRE_CODEC_INT4) || n % 16 != 0)
        return kw__wire_dequantize_scalar(codec, src, n, s, out, out_dtype);
    const __m256 vs = _mm256_set1_ps(s);
    __m128i bad = _mm_setzero_si128();
    if (codec == KW_WIRE_CODEC_INT8) {
        const __m128i invalid = _mm_set1_epi8((char)0x80);
        for (uint32_t i = 0; i < n; i += 16) {
            const __m128i b = _mm_loadu_si128((const __m128i *)(src + i));
            bad = _mm_or_si128(bad, _mm_cmpeq_epi8(b, invalid));
            kw__store8_avx2(out, out_dtype, i, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)), vs));
            kw__store8_avx2(out, out_dtype, i + 8,
                            _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8))), vs));
        }
    } else {
        const __m128i lo4 = _mm_set1_epi16(0x000f), hi4 = _mm_set1_epi16(0x00f0), eight = _mm_set1_epi8(8);
        for (uint32_t i = 0; i < n; i += 16) {
            /* 8 bytes -> 16 nibbles in element order, one per byte */
            const __m128i w = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(src + i / 2)));
            const __m128i nib = _mm_or_si128(_mm_and_si128(w, lo4), _mm_slli_epi16(_mm_and_si128(w, hi4), 4));
            bad = _mm_or_si128(bad, _mm_cmpeq_epi8(nib, eight));
            const __m128i q = _mm_sub_epi8(_mm_xor_si128(nib, eight), eight); /* sign-extend the nibble */
            kw__store8_avx2(out, out_dtype, i, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), vs));
            kw__store8_avx2(out, out_dtype, i + 8,
                            _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q, 8))), vs));
        }
    }
    return _mm_movemask_epi8(bad) ? KW_E_WIRE_VALUE : 0;
}

static const kw__wire_kernels kw__avx2_kernels = {
    .isa = KW_WIRE_ISA_AVX2,
    .amax = kw__amax_avx2,
    .quantize = kw__quantize_avx2,
    .dequantize = kw__dequantize_avx2,
};

const kw__wire_kernels *kw__wire_kernels_avx2(void) {
    return __builtin_cpu_supports("avx2") ? &kw__avx2_kernels : NULL;
}

// ---------------------------------------------------------------------------------------------------------------
// AVX-512 (F, BW, VL, DQ)

KW_AVX512 static uint32_t kw__amax_avx512(const void *x, uint32_t dtype, uint32_t n) {
    if (dtype == KW_WIRE_DTYPE_BF16 && n % 32 == 0) {
        const __m512i mask = _mm512_set1_epi16(0x7fff);
        __m512i m = _mm512_setzero_si512();
        for (uint32_t i = 0; i < n; i += 32)
            m = _mm512_max_epu16(m, _mm512_and_si512(_mm512_loadu_si512((const uint16_t *)x + i), mask));
        /* widen to 32-bit lanes to use the reduce intrinsic */
        const __m512i a = _mm512_max_epu32(_mm512_and_si512(m, _mm512_set1_epi32(0xffff)), _mm512_srli_epi32(m, 16));
        return (uint32_t)_mm512_reduce_max_epu32(a) << 16;
    }
    if (dtype == KW_WIRE_DTYPE_F32 && n % 16 == 0) {
        const __m512i mask = _mm512_set1_epi32(0x7fffffff);
        __m512i m = _mm512_setzero_si512();
        for (uint32_t i = 0; i < n; i += 16)
            m = _mm512_max_epu32(m, _mm512_and_si512(_mm512_loadu_si512((const float *)x + i), mask));
        return (uint32_t)_mm512_reduce_max_epu32(m);
    }
    return kw__amax_avx2(x, dtype, n);
}

KW_AVX512 static inline __m512 kw__load16_avx512(const void *x, uint32_t dtype, uint32_t i) {
    if (dtype == KW_WIRE_DTYPE_F32) return _mm512_loadu_ps((const float *)x + i);
    const __m512i h = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)x + i)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
}

KW_AVX512 static void kw__quantize_avx512(uint32_t codec, const void *x, uint32_t dtype, uint32_t n, float inv,
                                          uint8_t *dst) {
    if ((codec != KW_WIRE_CODEC_INT8 && codec != KW_WIRE_CODEC_INT4) ||
        (dtype != KW_WIRE_DTYPE_BF16 && dtype != KW_WIRE_DTYPE_F32) || n % 16 != 0) {
        kw__quantize_avx2(codec, x, dtype, n, inv, dst);
        return;
    }
    const float qmax = kw_wire_codec_qmax(codec);
    const __m512 vinv = _mm512_set1_ps(inv), lo = _mm512_set1_ps(-qmax), hi = _mm512_set1_ps(qmax);
    for (uint32_t i = 0; i < n; i += 16) {
        const __m512 y = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(kw__load16_avx512(x, dtype, i), vinv), lo), hi);
        const __m128i q8 = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(y)); /* 16 codes, in range: no saturation */
        if (codec == KW_WIRE_CODEC_INT8) {
            _mm_storeu_si128((__m128i *)(dst + i), q8);
        } else {
            /* 16-bit lanes hold q[2j] | q[2j+1] << 8 -> (q[2j] & 15) | (q[2j+1] & 15) << 4 */
            const __m128i b = _mm_or_si128(_mm_and_si128(q8, _mm_set1_epi16(0x000f)),
                                           _mm_and_si128(_mm_srli_epi16(q8, 4), _mm_set1_epi16(0x00f0)));
            _mm_storel_epi64((__m128i *)(dst + i / 2), _mm_packus_epi16(b, b));
        }
    }
}

KW_AVX512 static inline void kw__store16_avx512(void *out, uint32_t out_dtype, uint32_t i, __m512 v) {
    if (out_dtype == KW_WIRE_DTYPE_F32) {
        _mm512_storeu_ps((float *)out + i, v);
        return;
    }
    const __m512i u = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
    _mm256_storeu_si256((__m256i *)((uint16_t *)out + i), _mm512_cvtepi32_epi16(r));
}

KW_AVX512 static int kw__dequantize_avx512(uint32_t codec, const uint8_t *src, uint32_t n, float s, void *out,
                                           uint32_t out_dtype) {
    if ((codec != KW_WIRE_CODEC_INT8 && codec != KW_WIRE_CODEC_INT4) || n % 32 != 0)
        return kw__dequantize_avx2(codec, src, n, s, out, out_dtype);
    const __m512 vs = _mm512_set1_ps(s);
    __mmask32 bad = 0;
    if (codec == KW_WIRE_CODEC_INT8) {
        const __m256i invalid = _mm256_set1_epi8((char)0x80);
        for (uint32_t i = 0; i < n; i += 32) {
            const __m256i b = _mm256_loadu_si256((const __m256i *)(src + i));
            bad |= _mm256_cmpeq_epi8_mask(b, invalid);
            kw__store16_avx512(out, out_dtype, i,
                               _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(b))), vs));
            kw__store16_avx512(
                out, out_dtype, i + 16,
                _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(b, 1))), vs));
        }
    } else {
        const __m256i lo4 = _mm256_set1_epi16(0x000f), hi4 = _mm256_set1_epi16(0x00f0), eight = _mm256_set1_epi8(8);
        for (uint32_t i = 0; i < n; i += 32) {
            /* 16 bytes -> 32 nibbles in element order, one per byte */
            const __m256i w = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(src + i / 2)));
            const __m256i nib =
                _mm256_or_si256(_mm256_and_si256(w, lo4), _mm256_slli_epi16(_mm256_and_si256(w, hi4), 4));
            bad |= _mm256_cmpeq_epi8_mask(nib, eight);
            const __m256i q = _mm256_sub_epi8(_mm256_xor_si256(nib, eight), eight);
            kw__store16_avx512(out, out_dtype, i,
                               _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(q))), vs));
            kw__store16_avx512(
                out, out_dtype, i + 16,
                _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(q, 1))), vs));
        }
    }
    return bad ? KW_E_WIRE_VALUE : 0;
}

static const kw__wire_kernels kw__avx512_kernels = {
    .isa = KW_WIRE_ISA_AVX512,
    .amax = kw__amax_avx512,
    .quantize = kw__quantize_avx512,
    .dequantize = kw__dequantize_avx512,
};

const kw__wire_kernels *kw__wire_kernels_avx512(void) {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                   __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                   __builtin_cpu_supports("avx2")
               ? &kw__avx512_kernels
               : NULL;
}

#else /* not x86-64: the scalar kernels only */

const kw__wire_kernels *kw__wire_kernels_avx2(void) {
    return NULL;
}
const kw__wire_kernels *kw__wire_kernels_avx512(void) {
    return NULL;
}

#endif
