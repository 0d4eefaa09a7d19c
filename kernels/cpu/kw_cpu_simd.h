/* kw_cpu_simd.h: a vector of 16 fp32 lanes in three implementations (portable scalar C, AVX2 as two 8-lane halves,
 * AVX-512 as one register), so that a kernel written once against these primitives computes the same bits on every
 * ISA. kernels/cpu only.
 *
 * Every primitive is an exact IEEE fp32 operation per lane (fma rounds once, as fmaf does), so the three
 * implementations agree bit for bit by construction; the cross-lane operation, kw_v16_hsum, adds the lanes in
 * one fixed tree: u[i] = l[i] + l[i+8], v[i] = u[i] + u[i+4], w[i] = v[i] + v[i+2], sum = w[0] + w[1]. The tree is
 * the natural one for AVX2 (half + half, then 128-bit halves, then movehl, then movehdup) and AVX-512 (extract the
 * upper 256 bits first); kw_v16_hsum16 closes 16 vectors' trees at once (AVX-512: one transposed tree of the same
 * pairs). Operand order is written identically in every implementation, but the compiler may commute an add, so
 * which NaN's payload survives is not promised (the tests take any NaN as equal to any NaN).
 *
 * Names carry the ISA as a suffix (kw_v16_fma_avx2 ...); kernels written once are included by a .c file once per ISA
 * with KW_SIMD_SFX and KW_SIMD_TARGET set (see kw_cpu_matmul.c), and call them through KW_V(op), which pastes the
 * suffix. Not here: anything that is not per-lane IEEE arithmetic (no approximations, no reassociation).
 */
#ifndef KW_CPU_SIMD_H
#define KW_CPU_SIMD_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "common/kw_half.h"
#include "kernels/cpu/kw_cpu.h"

#if KW_CPU_X86
#include <immintrin.h>
#endif

#define KW_SIMD_INLINE static inline __attribute__((always_inline))

/* ------------------------------------------------------------------------------------------------------------
 * Scalar: 16 floats, fmaf (exact fused multiply-add on every platform).
 */

typedef struct kw_v16_scalar {
    float l[16];
} kw_v16_scalar;

KW_SIMD_INLINE kw_v16_scalar kw_v16_zero_scalar(void) {
    kw_v16_scalar r;
    for (int i = 0; i < 16; ++i)
        r.l[i] = 0.0f;
    return r;
}
KW_SIMD_INLINE kw_v16_scalar kw_v16_set1_scalar(float x) {
    kw_v16_scalar r;
    for (int i = 0; i < 16; ++i)
        r.l[i] = x;
    return r;
}
KW_SIMD_INLINE kw_v16_scalar kw_v16_load_scalar(const float *p) {
    kw_v16_scalar r;
    memcpy(r.l, p, sizeof r.l);
    return r;
}
/* The first n (1..16) lanes from p, the others +0. */
KW_SIMD_INLINE kw_v16_scalar kw_v16_load_n_scalar(const float *p, int n) {
    kw_v16_scalar r = kw_v16_zero_scalar();
    memcpy(r.l, p, (size_t)n * sizeof(float));
    return r;
}
KW_SIMD_INLINE kw_v16_scalar kw_v16_load_bf16_scalar(const uint16_t *p) {
    kw_v16_scalar r;
    for (int i = 0; i < 16; ++i)
        r.l[i] = kw_bf16_to_f32(p[i]);
    return r;
}
/* The first n (1..16) bf16 values from p, widened; the other lanes +0. */
KW_SIMD_INLINE kw_v16_scalar kw_v16_load_bf16_n_scalar(const uint16_t *p, int n) {
    kw_v16_scalar r = kw_v16_zero_scalar();
    for (int i = 0; i < n; ++i)
        r.l[i] = kw_bf16_to_f32(p[i]);
    return r;
}
KW_SIMD_INLINE kw_v16_scalar kw_v16_load_f16_scalar(const uint16_t *p) {
    kw_v16_scalar r;
    for (int i = 0; i < 16; ++i)
        r.l[i] = kw_f16_to_f32(p[i]);
    return r;
}
/* 16 signed 8-bit codes, widened exactly. */
KW_SIMD_INLINE kw_v16_scalar kw_v16_load_i8_scalar(const int8_t *p) {
    kw_v16_scalar r;
    for (int i = 0; i < 16; ++i)
        r.l[i] = (float)p[i];
    return r;
}
/* 16 4-bit codes from 8 bytes (lane i < 8: low nibble of p[i]; lane 8 + i: its high nibble), minus zero, widened
 * exactly (the quantized panels' nibble order, kernels/kw_backend.h). */
KW_SIMD_INLINE kw_v16_scalar kw_v16_load_u4_scalar(const uint8_t *p, int zero) {
    kw_v16_scalar r;
    for (int i = 0; i < 8; ++i) {
        r.l[i] = (float)((p[i] & 0x0F) - zero);
        r.l[i + 8] = (float)((p[i] >> 4) - zero);
    }
    return r;
}
/* 16 6-bit codes from 12 bytes (kernels/kw_kvq_format.h's int6 block: the low nibbles as kw_v16_load_u4 reads them,
 * then bit pair j of value j in byte 8 + j % 4 at bit 2 * (j / 4)), minus zero, widened exactly. */
KW_SIMD_INLINE kw_v16_scalar kw_v16_load_u6_scalar(const uint8_t *p, int zero) {
    kw_v16_scalar r;
    for (int j = 0; j < 16; ++j) {
        const int lo = j < 8 ? (p[j] & 0x0F) : (p[j - 8] >> 4), hi = (p[8 + j % 4] >> (2 * (j / 4))) & 3;
        r.l[j] = (float)((lo | (hi << 4)) - zero);
    }
    return r;
}
/* 16 signed 6-bit codes from a 96-bit strip (kernels/kw_backend.h, QPANELS_S6_G16_SB): lane i in bits 6i..6i+5 of
 * the little-endian bit string of p[0..11], two's complement, widened exactly. */
KW_SIMD_INLINE int kw_s6_code(const uint8_t *p, int i) {
    const int bit = 6 * i, pair = p[bit / 8] | (bit / 8 + 1 < 12 ? p[bit / 8 + 1] << 8 : 0);
    const int u = (pair >> (bit % 8)) & 63;
    return u < 32 ? u : u - 64;
}
KW_SIMD_INLINE kw_v16_scalar kw_v16_load_s6_scalar(const uint8_t *p) {
    kw_v16_scalar r;
    for (int i = 0; i < 16; ++i)
        r.l[i] = (float)kw_s6_code(p, i);
    return r;
}
KW_SIMD_INLINE void kw_v16_store_scalar(float *p, kw_v16_scalar v) {
    memcpy(p, v.l, sizeof v.l);
}
/* Stores the first n (1..16) lanes. */
KW_SIMD_INLINE void kw_v16_store_n_scalar(float *p, kw_v16_scalar v, int n) {
    memcpy(p, v.l, (size_t)n * sizeof(float));
}
/* a * b + c, rounded once. */
KW_SIMD_INLINE kw_v16_scalar kw_v16_fma_scalar(kw_v16_scalar a, kw_v16_scalar b, kw_v16_scalar c) {
    kw_v16_scalar r;
    for (int i = 0; i < 16; ++i)
        r.l[i] = fmaf(a.l[i], b.l[i], c.l[i]);
    return r;
}
KW_SIMD_INLINE kw_v16_scalar kw_v16_add_scalar(kw_v16_scalar a, kw_v16_scalar b) {
    kw_v16_scalar r;
    for (int i = 0; i < 16; ++i)
        r.l[i] = a.l[i] + b.l[i];
    return r;
}
KW_SIMD_INLINE kw_v16_scalar kw_v16_mul_scalar(kw_v16_scalar a, kw_v16_scalar b) {
    kw_v16_scalar r;
    for (int i = 0; i < 16; ++i)
        r.l[i] = a.l[i] * b.l[i];
    return r;
}
KW_SIMD_INLINE float kw_v16_hsum_scalar(kw_v16_scalar v) {
    float u[8], w4[4];
    for (int i = 0; i < 8; ++i)
        u[i] = v.l[i] + v.l[i + 8];
    for (int i = 0; i < 4; ++i)
        w4[i] = u[i] + u[i + 4];
    const float a = w4[0] + w4[2], b = w4[1] + w4[3];
    return a + b;
}
/* Lane r: kw_v16_hsum of a[r] (16 trees closed side by side; the same bits as 16 hsum calls). */
KW_SIMD_INLINE kw_v16_scalar kw_v16_hsum16_scalar(const kw_v16_scalar a[16]) {
    kw_v16_scalar r;
    for (int i = 0; i < 16; ++i)
        r.l[i] = kw_v16_hsum_scalar(a[i]);
    return r;
}
/* Per lane s if s > m, else m (an ordered compare: a NaN s never wins; a NaN m stays). */
KW_SIMD_INLINE kw_v16_scalar kw_v16_max_gt_scalar(kw_v16_scalar m, kw_v16_scalar s) {
    kw_v16_scalar r;
    for (int i = 0; i < 16; ++i)
        r.l[i] = s.l[i] > m.l[i] ? s.l[i] : m.l[i];
    return r;
}

#if KW_CPU_X86
/* ------------------------------------------------------------------------------------------------------------
 * AVX2: lanes 0..7 in lo, 8..15 in hi.
 */

typedef struct kw_v16_avx2 {
    __m256 lo, hi;
} kw_v16_avx2;

#define KW_AVX2_INLINE KW_TARGET_AVX2 KW_SIMD_INLINE

KW_AVX2_INLINE kw_v16_avx2 kw_v16_zero_avx2(void) {
    return (kw_v16_avx2){_mm256_setzero_ps(), _mm256_setzero_ps()};
}
KW_AVX2_INLINE kw_v16_avx2 kw_v16_set1_avx2(float x) {
    return (kw_v16_avx2){_mm256_set1_ps(x), _mm256_set1_ps(x)};
}
KW_AVX2_INLINE kw_v16_avx2 kw_v16_load_avx2(const float *p) {
    return (kw_v16_avx2){_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)};
}
/* Mask with lanes [0, n) set, for n in -8..8 (n <= 0: none). */
KW_AVX2_INLINE __m256i kw_avx2_first_n(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
KW_AVX2_INLINE kw_v16_avx2 kw_v16_load_n_avx2(const float *p, int n) {
    return (kw_v16_avx2){_mm256_maskload_ps(p, kw_avx2_first_n(n)), _mm256_maskload_ps(p + 8, kw_avx2_first_n(n - 8))};
}
KW_AVX2_INLINE __m256 kw_avx2_bf16x8(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}
KW_AVX2_INLINE kw_v16_avx2 kw_v16_load_bf16_avx2(const uint16_t *p) {
    return (kw_v16_avx2){kw_avx2_bf16x8(p), kw_avx2_bf16x8(p + 8)};
}
KW_AVX2_INLINE kw_v16_avx2 kw_v16_load_bf16_n_avx2(const uint16_t *p, int n) {
    uint16_t buf[16] = {0};
    memcpy(buf, p, (size_t)n * sizeof(uint16_t));
    return kw_v16_load_bf16_avx2(buf);
}
KW_AVX2_INLINE kw_v16_avx2 kw_v16_load_f16_avx2(const uint16_t *p) {
    return (kw_v16_avx2){_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)),
                         _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 8)))};
}
/* 16 bytes of codes as signed integers -> two halves of 8 floats. */
KW_AVX2_INLINE kw_v16_avx2 kw_avx2_i8x16_to_f32(__m128i b) {
    return (kw_v16_avx2){_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)),
                         _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(b, b)))};
}
/* The 16 nibbles of 8 bytes in the quantized panels' order (low nibbles, then high), minus zero, as bytes. */
KW_AVX2_INLINE __m128i kw_avx2_u4x16(const uint8_t *p, int zero) {
    const __m128i v = _mm_loadl_epi64((const __m128i *)p), m = _mm_set1_epi8(0x0F);
    const __m128i lo = _mm_and_si128(v, m), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m);
    return _mm_sub_epi8(_mm_unpacklo_epi64(lo, hi), _mm_set1_epi8((char)zero));
}
/* The 16 6-bit codes of an int6 block (kw_v16_load_u6_scalar), minus zero, as bytes: the nibbles as above, and the
 * high bit pairs from the 32-bit word of bytes 8..11 repeated in four lanes, lane k shifted right by 2k. */
KW_AVX2_INLINE __m128i kw_avx2_u6x16(const uint8_t *p, int zero) {
    int32_t w;
    memcpy(&w, p + 8, 4);
    const __m128i hi = _mm_and_si128(_mm_srlv_epi32(_mm_set1_epi32(w), _mm_setr_epi32(0, 2, 4, 6)), _mm_set1_epi8(3));
    return _mm_sub_epi8(_mm_or_si128(kw_avx2_u4x16(p, 0), _mm_slli_epi16(hi, 4)), _mm_set1_epi8((char)zero));
}
KW_AVX2_INLINE kw_v16_avx2 kw_v16_load_u6_avx2(const uint8_t *p, int zero) {
    return kw_avx2_i8x16_to_f32(kw_avx2_u6x16(p, zero));
}
/* The 16 codes of a 6-bit strip (kw_v16_load_s6_scalar) as signed bytes: each code's two bytes into a 16-bit lane
 * (code i starts at bit 6i % 8 of byte 6i / 8), a multiply shifting its top to bit 15 and an arithmetic shift right
 * by 10 (the sign extension), then packed. Reads exactly the 12 bytes. */
KW_AVX2_INLINE __m128i kw_avx2_s6x16(const uint8_t *p) {
    int64_t q;
    int32_t t;
    memcpy(&q, p, 8);
    memcpy(&t, p + 8, 4);
    const __m128i v = _mm_insert_epi32(_mm_cvtsi64_si128(q), t, 2);
    const __m128i pairs_lo = _mm_setr_epi8(0, 1, 0, 1, 1, 2, 2, 3, 3, 4, 3, 4, 4, 5, 5, 6);
    const __m128i pairs_hi = _mm_add_epi8(pairs_lo, _mm_set1_epi8(6));
    const __m128i up = _mm_setr_epi16(1024, 16, 64, 256, 1024, 16, 64, 256);
    const __m128i lo = _mm_srai_epi16(_mm_mullo_epi16(_mm_shuffle_epi8(v, pairs_lo), up), 10);
    const __m128i hi = _mm_srai_epi16(_mm_mullo_epi16(_mm_shuffle_epi8(v, pairs_hi), up), 10);
    return _mm_packs_epi16(lo, hi);
}
KW_AVX2_INLINE kw_v16_avx2 kw_v16_load_s6_avx2(const uint8_t *p) {
    return kw_avx2_i8x16_to_f32(kw_avx2_s6x16(p));
}
KW_AVX2_INLINE kw_v16_avx2 kw_v16_load_i8_avx2(const int8_t *p) {
    return kw_avx2_i8x16_to_f32(_mm_loadu_si128((const __m128i *)p));
}
KW_AVX2_INLINE kw_v16_avx2 kw_v16_load_u4_avx2(const uint8_t *p, int zero) {
    return kw_avx2_i8x16_to_f32(kw_avx2_u4x16(p, zero));
}
KW_AVX2_INLINE void kw_v16_store_avx2(float *p, kw_v16_avx2 v) {
    _mm256_storeu_ps(p, v.lo);
    _mm256_storeu_ps(p + 8, v.hi);
}
KW_AVX2_INLINE void kw_v16_store_n_avx2(float *p, kw_v16_avx2 v, int n) {
    _mm256_maskstore_ps(p, kw_avx2_first_n(n), v.lo);
    _mm256_maskstore_ps(p + 8, kw_avx2_first_n(n - 8), v.hi);
}
KW_AVX2_INLINE kw_v16_avx2 kw_v16_fma_avx2(kw_v16_avx2 a, kw_v16_avx2 b, kw_v16_avx2 c) {
    return (kw_v16_avx2){_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
}
KW_AVX2_INLINE kw_v16_avx2 kw_v16_add_avx2(kw_v16_avx2 a, kw_v16_avx2 b) {
    return (kw_v16_avx2){_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)};
}
KW_AVX2_INLINE kw_v16_avx2 kw_v16_mul_avx2(kw_v16_avx2 a, kw_v16_avx2 b) {
    return (kw_v16_avx2){_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)};
}
/* The fixed tree from 8 lanes (u = l[0..7] + l[8..15] already formed). */
KW_AVX2_INLINE float kw_avx2_hsum8_tree(__m256 u) {
    const __m128 v = _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1)); /* v[i] = u[i] + u[i+4] */
    const __m128 w = _mm_add_ps(v, _mm_movehl_ps(v, v));                                 /* w[i] = v[i] + v[i+2] */
    return _mm_cvtss_f32(_mm_add_ss(w, _mm_movehdup_ps(w)));                             /* w[0] + w[1] */
}
KW_AVX2_INLINE float kw_v16_hsum_avx2(kw_v16_avx2 v) {
    return kw_avx2_hsum8_tree(_mm256_add_ps(v.lo, v.hi));
}
/* kw_v16_hsum16_scalar: one tree per row (with 8-lane halves a transposed tree saves little). */
KW_AVX2_INLINE kw_v16_avx2 kw_v16_hsum16_avx2(const kw_v16_avx2 a[16]) {
    float t[16];
    for (int i = 0; i < 16; ++i)
        t[i] = kw_v16_hsum_avx2(a[i]);
    return (kw_v16_avx2){_mm256_loadu_ps(t), _mm256_loadu_ps(t + 8)};
}
KW_AVX2_INLINE kw_v16_avx2 kw_v16_max_gt_avx2(kw_v16_avx2 m, kw_v16_avx2 s) {
    return (kw_v16_avx2){_mm256_blendv_ps(m.lo, s.lo, _mm256_cmp_ps(s.lo, m.lo, _CMP_GT_OQ)),
                         _mm256_blendv_ps(m.hi, s.hi, _mm256_cmp_ps(s.hi, m.hi, _CMP_GT_OQ))};
}

/* ------------------------------------------------------------------------------------------------------------
 * AVX-512: one register.
 */

#define KW_AVX512_INLINE KW_TARGET_AVX512 KW_SIMD_INLINE

typedef __m512 kw_v16_avx512;

KW_AVX512_INLINE kw_v16_avx512 kw_v16_zero_avx512(void) {
    return _mm512_setzero_ps();
}
KW_AVX512_INLINE kw_v16_avx512 kw_v16_set1_avx512(float x) {
    return _mm512_set1_ps(x);
}
KW_AVX512_INLINE kw_v16_avx512 kw_v16_load_avx512(const float *p) {
    return _mm512_loadu_ps(p);
}
KW_AVX512_INLINE kw_v16_avx512 kw_v16_load_n_avx512(const float *p, int n) {
    return _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1u), p);
}
KW_AVX512_INLINE kw_v16_avx512 kw_v16_load_bf16_avx512(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
KW_AVX512_INLINE kw_v16_avx512 kw_v16_load_bf16_n_avx512(const uint16_t *p, int n) {
    const __m256i h = _mm256_maskz_loadu_epi16((__mmask16)((1u << n) - 1u), p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
KW_AVX512_INLINE kw_v16_avx512 kw_v16_load_f16_avx512(const uint16_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}
KW_AVX512_INLINE kw_v16_avx512 kw_v16_load_i8_avx512(const int8_t *p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}
KW_AVX512_INLINE kw_v16_avx512 kw_v16_load_u4_avx512(const uint8_t *p, int zero) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(kw_avx2_u4x16(p, zero)));
}
KW_AVX512_INLINE kw_v16_avx512 kw_v16_load_u6_avx512(const uint8_t *p, int zero) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(kw_avx2_u6x16(p, zero)));
}
KW_AVX512_INLINE kw_v16_avx512 kw_v16_load_s6_avx512(const uint8_t *p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(kw_avx2_s6x16(p)));
}
KW_AVX512_INLINE void kw_v16_store_avx512(float *p, kw_v16_avx512 v) {
    _mm512_storeu_ps(p, v);
}
KW_AVX512_INLINE void kw_v16_store_n_avx512(float *p, kw_v16_avx512 v, int n) {
    _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1u), v);
}
KW_AVX512_INLINE kw_v16_avx512 kw_v16_fma_avx512(kw_v16_avx512 a, kw_v16_avx512 b, kw_v16_avx512 c) {
    return _mm512_fmadd_ps(a, b, c);
}
KW_AVX512_INLINE kw_v16_avx512 kw_v16_add_avx512(kw_v16_avx512 a, kw_v16_avx512 b) {
    return _mm512_add_ps(a, b);
}
KW_AVX512_INLINE kw_v16_avx512 kw_v16_mul_avx512(kw_v16_avx512 a, kw_v16_avx512 b) {
    return _mm512_mul_ps(a, b);
}
KW_AVX512_INLINE float kw_v16_hsum_avx512(kw_v16_avx512 v) {
    /* u[i] = l[i] + l[i+8], then the same 8-lane tree as AVX2 (the AVX-512 target includes AVX2) */
    return kw_avx2_hsum8_tree(_mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)));
}
/* kw_v16_hsum16_scalar as one transposed tree: each level adds the same pairs in the same operand order as
 * kw_v16_hsum, for all 16 rows at once (30 shuffles and 15 adds instead of 16 trees and 16 extractions). Level 1
 * puts rows 2i, 2i + 1 (u, 8 lanes each) in one vector, level 2 rows 4i .. 4i + 3 (v, a 128-bit quarter each), level 3
 * pairs two quarters' v into w, level 4 leaves lane 4 k + p holding the sum of input 4 p + k: so the rows are read in
 * that transposed order (a[4 (i % 4) + i / 4] as input i) and lane r comes out holding row r. */
KW_AVX512_INLINE kw_v16_avx512 kw_v16_hsum16_avx512(const kw_v16_avx512 a[16]) {
    __m512 u[8], v[4], w[2];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) { /* u[k] = l[k] + l[k + 8]: the low 256 bits of each row plus its high 256 */
        const __m512 x = a[4 * ((2 * i) % 4) + (2 * i) / 4], y = a[4 * ((2 * i + 1) % 4) + (2 * i + 1) / 4];
        u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(3, 2, 3, 2)));
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) /* v[k] = u[k] + u[k + 4] */
        v[i] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
#pragma GCC unroll 2
    for (int i = 0; i < 2; ++i) /* w[k] = v[k] + v[k + 2] */
        w[i] = _mm512_add_ps(_mm512_shuffle_ps(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(v[2 * i], v[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm512_add_ps(_mm512_shuffle_ps(w[0], w[1], _MM_SHUFFLE(2, 0, 2, 0)), /* w[0] + w[1] */
                         _mm512_shuffle_ps(w[0], w[1], _MM_SHUFFLE(3, 1, 3, 1)));
}
KW_AVX512_INLINE kw_v16_avx512 kw_v16_max_gt_avx512(kw_v16_avx512 m, kw_v16_avx512 s) {
    return _mm512_mask_mov_ps(m, _mm512_cmp_ps_mask(s, m, _CMP_GT_OQ), s);
}
#endif /* KW_CPU_X86 */

/* Pastes the ISA suffix of the current instantiation: KW_V(fma) is kw_v16_fma_avx2 when KW_SIMD_SFX is avx2. */
#define KW_SIMD_CAT2(a, b) a##_##b
#define KW_SIMD_CAT(a, b)  KW_SIMD_CAT2(a, b)
#define KW_V(op)           KW_SIMD_CAT(kw_v16_##op, KW_SIMD_SFX)
#define KW_VT              KW_SIMD_CAT(kw_v16, KW_SIMD_SFX)
#define KW_ISA_FN(name)    KW_SIMD_CAT(name, KW_SIMD_SFX)

#endif /* KW_CPU_SIMD_H */
