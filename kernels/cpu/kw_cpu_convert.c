/* kw_cpu_convert.c: bulk f32 <-> bf16/f16 conversion for the CPU backend, bit-identical to common/kw_half.h
 * (round to nearest even, NaN kept quiet with its sign and top payload bits, subnormals kept) in every ISA flavour.
 * The AVX-512 bf16 path deliberately avoids VCVTNEPS2BF16, which flushes subnormal inputs to zero. */
#include "kernels/cpu/kw_cpu.h"

#include <string.h>

#include "common/kw_half.h"

#if KW_CPU_X86
#include <immintrin.h>
#endif

/* ------------------------------------------------------------------------------------------------------------
 * Scalar
 */

static void kw_to_f32_scalar(float *dst, const void *src, enum kw_dtype dtype, int64_t i0, int64_t n) {
    if (dtype == KW_DTYPE_F32) {
        memcpy(dst, (const float *)src + i0, (size_t)n * sizeof(float));
    } else if (dtype == KW_DTYPE_BF16) {
        const uint16_t *s = (const uint16_t *)src + i0;
        for (int64_t i = 0; i < n; ++i)
            dst[i] = kw_bf16_to_f32(s[i]);
    } else if (dtype == KW_DTYPE_F16) {
        const uint16_t *s = (const uint16_t *)src + i0;
        for (int64_t i = 0; i < n; ++i)
            dst[i] = kw_f16_to_f32(s[i]);
    }
}

static void kw_from_f32_scalar(void *dst, enum kw_dtype dtype, const float *src, int64_t n) {
    if (dtype == KW_DTYPE_F32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
    } else if (dtype == KW_DTYPE_BF16) {
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; ++i)
            d[i] = kw_f32_to_bf16(src[i]);
    } else if (dtype == KW_DTYPE_F16) {
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; ++i)
            d[i] = kw_f32_to_f16(src[i]);
    }
}

#if KW_CPU_X86
/* ------------------------------------------------------------------------------------------------------------
 * AVX2 (8 lanes)
 */

KW_TARGET_AVX2 static void kw_to_f32_avx2(float *dst, const void *src, enum kw_dtype dtype, int64_t i0, int64_t n) {
    int64_t i = 0;
    const uint16_t *s = (const uint16_t *)src + i0;
    if (dtype == KW_DTYPE_BF16) {
        for (; i + 8 <= n; i += 8) {
            const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(s + i)));
            _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
        }
    } else if (dtype == KW_DTYPE_F16) {
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + i))));
    }
    if (i < n) kw_to_f32_scalar(dst + i, src, dtype, i0 + i, n - i);
}

KW_TARGET_AVX2 static void kw_from_f32_avx2(void *dst, enum kw_dtype dtype, const float *src, int64_t n) {
    int64_t i = 0;
    uint16_t *d = dst;
    if (dtype == KW_DTYPE_BF16) {
        const __m256i one = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(0x7fff), quiet = _mm256_set1_epi32(0x40);
        for (; i + 8 <= n; i += 8) {
            const __m256 v = _mm256_loadu_ps(src + i);
            const __m256i u = _mm256_castps_si256(v);
            const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), one);
            __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, bias)), 16);
            const __m256i nan_bits = _mm256_or_si256(_mm256_srli_epi32(u, 16), quiet);
            const __m256i is_nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
            r = _mm256_blendv_epi8(r, nan_bits, is_nan);
            const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0xd8);
            _mm_storeu_si128((__m128i *)(d + i), _mm256_castsi256_si128(packed));
        }
    } else if (dtype == KW_DTYPE_F16) {
        for (; i + 8 <= n; i += 8)
            _mm_storeu_si128((__m128i *)(d + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    }
    if (i < n) kw_from_f32_scalar(d + i, dtype, src + i, n - i);
}

/* ------------------------------------------------------------------------------------------------------------
 * AVX-512 (16 lanes, masked tails)
 */

KW_TARGET_AVX512 static void kw_to_f32_avx512(float *dst, const void *src, enum kw_dtype dtype, int64_t i0, int64_t n) {
    const uint16_t *s = (const uint16_t *)src + i0;
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
        const __m256i h = _mm256_maskz_loadu_epi16(m, s + i);
        __m512 v;
        if (dtype == KW_DTYPE_BF16)
            v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
        else
            v = _mm512_cvtph_ps(h);
        _mm512_mask_storeu_ps(dst + i, m, v);
    }
}

KW_TARGET_AVX512 static void kw_from_f32_avx512(void *dst, enum kw_dtype dtype, const float *src, int64_t n) {
    uint16_t *d = dst;
    const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7fff), quiet = _mm512_set1_epi32(0x40);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
        const __m512 v = _mm512_maskz_loadu_ps(m, src + i);
        __m256i h;
        if (dtype == KW_DTYPE_BF16) {
            const __m512i u = _mm512_castps_si512(v);
            const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), one);
            __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, bias)), 16);
            const __mmask16 is_nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
            r = _mm512_mask_mov_epi32(r, is_nan, _mm512_or_si512(_mm512_srli_epi32(u, 16), quiet));
            h = _mm512_cvtepi32_epi16(r);
        } else {
            h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        }
        _mm256_mask_storeu_epi16(d + i, m, h);
    }
}
#endif

void kw__cpu_to_f32(enum kw_cpu_isa isa, float *dst, const void *src, enum kw_dtype dtype, int64_t i0, int64_t n) {
#if KW_CPU_X86
    if (dtype != KW_DTYPE_F32 && isa == KW_CPU_ISA_AVX512) {
        kw_to_f32_avx512(dst, src, dtype, i0, n);
        return;
    }
    if (dtype != KW_DTYPE_F32 && isa == KW_CPU_ISA_AVX2) {
        kw_to_f32_avx2(dst, src, dtype, i0, n);
        return;
    }
#endif
    (void)isa;
    kw_to_f32_scalar(dst, src, dtype, i0, n);
}

void kw__cpu_from_f32(enum kw_cpu_isa isa, void *dst, enum kw_dtype dtype, const float *src, int64_t n) {
#if KW_CPU_X86
    if (dtype != KW_DTYPE_F32 && isa == KW_CPU_ISA_AVX512) {
        kw_from_f32_avx512(dst, dtype, src, n);
        return;
    }
    if (dtype != KW_DTYPE_F32 && isa == KW_CPU_ISA_AVX2) {
        kw_from_f32_avx2(dst, dtype, src, n);
        return;
    }
#endif
    (void)isa;
    kw_from_f32_scalar(dst, dtype, src, n);
}
