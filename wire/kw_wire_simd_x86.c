/* kw_wire_simd_x86.c: AVX2 and AVX-512 row kernels for KVWire (absmax of bf16/f32 rows; the minimum and maximum of a
 * row in element order; per-token and per-group f16 and log8 scales; quantization of bf16/f16/f32 rows to every
 * quantizing codec, int3 and int2 included; dequantization of every quantizing codec to f32/bf16; the v1.1 affine
 * rows, zero points and channel scales, both ways; the Hadamard rotation of head vectors). AVX-512 has its own int8,
 * int4, nf4 and fp8 kernels, minmax, affine quantization and rotation, and takes the AVX2 ones for the rest.
 * Passthrough codecs, f16 absmax and row lengths that are not a multiple of the vector width fall back to the scalar
 * kernels. The functions are compiled for their ISA with target attributes and chosen at run time
 * (kw_wire_isa_resolve), so the library runs on any x86-64 and is never built with -march=native.
 *
 * They compute exactly what kw_wire_quant.h defines, bit for bit (tests/wire/test_wire_simd.c compares them over
 * random and edge-case rows): y = fl32(x * inv) with one rounding (no FMA), clamp to [-qmax, qmax], round half to even
 * with cvtps2dq under the default MXCSR (the same rounding as the scalar 1.5*2^23 trick), two's complement packing with
 * element 2j in the low nibble; dequantization fl32(q * s); bf16 output by integer round-to-nearest-even (not
 * vcvtneps2bf16, which flushes subnormals). Like the scalar code they assume MXCSR's round to nearest; with FTZ and
 * DAZ set (a host built with -ffast-math) dequantization, quantization and absmax still give the scalar code's bits
 * (test_wire_simd's test_daz_ftz), fp8 decode by redoing the lanes of subnormal codes (kw__fp8_subnormals8_avx2).
 */
#include "wire/kw_wire_internal.h"

#include <math.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define KW_AVX2       __attribute__((target("avx2,fma,f16c,bmi2")))
#define KW_AVX512     __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi2")))
#define KW_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c,bmi2")))

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

/* 8 input values as f32 (bf16 and f16 widen exactly). */
KW_AVX2 static inline __m256 kw__load8_avx2(const void *x, uint32_t dtype, uint32_t i) {
    if (dtype == KW_WIRE_DTYPE_F32) return _mm256_loadu_ps((const float *)x + i);
    const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)x + i));
    if (dtype == KW_WIRE_DTYPE_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* The minimum and maximum of a row in element order (kw__wire_kernels.minmax): per-lane min/max, a reduction across
 * lanes (exact but for the sign of a zero result), then the sign of the first zero when a result is 0. */
KW_AVX2 static uint32_t kw__minmax_avx2(const void *x, uint32_t dtype, uint32_t n, float *lo, float *hi) {
    if (dtype < KW_WIRE_DTYPE_BF16 || dtype > KW_WIRE_DTYPE_F32 || n % 8 != 0)
        return kw__wire_minmax_scalar(x, dtype, n, lo, hi);
    const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff);
    __m256 v = kw__load8_avx2(x, dtype, 0), l = v, h = v;
    __m256i a = _mm256_and_si256(_mm256_castps_si256(v), abs_mask);
    for (uint32_t i = 8; i < n; i += 8) {
        v = kw__load8_avx2(x, dtype, i);
        l = _mm256_min_ps(v, l);
        h = _mm256_max_ps(v, h);
        a = _mm256_max_epu32(a, _mm256_and_si256(_mm256_castps_si256(v), abs_mask));
    }
    __m128 l4 = _mm_min_ps(_mm256_castps256_ps128(l), _mm256_extractf128_ps(l, 1));
    __m128 h4 = _mm_max_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    l4 = _mm_min_ps(l4, _mm_movehl_ps(l4, l4));
    h4 = _mm_max_ps(h4, _mm_movehl_ps(h4, h4));
    const float fl = _mm_cvtss_f32(_mm_min_ss(l4, _mm_shuffle_ps(l4, l4, 1)));
    const float fh = _mm_cvtss_f32(_mm_max_ss(h4, _mm_shuffle_ps(h4, h4, 1)));
    __m128i a4 = _mm_max_epu32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    a4 = _mm_max_epu32(a4, _mm_srli_si128(a4, 8));
    a4 = _mm_max_epu32(a4, _mm_srli_si128(a4, 4));
    *lo = fl == 0.0f ? kw__wire_first_zero(x, dtype, n) : fl;
    *hi = fh == 0.0f ? kw__wire_first_zero(x, dtype, n) : fh;
    return (uint32_t)_mm_cvtsi128_si32(a4);
}

/* kw__wire_kernels.minmax_fold W elements a step (W = 8, 16): FOLD(v, lo, hi, seen, new lo, new hi) picks v where seen
 * is 0 or v is strictly beyond, else the old value; the absmax as the bit patterns' unsigned maximum. */
#define KW__MINMAX_FOLD(name, attr, narrower, W, vec, veci, LOAD, LOADU, STOREU, SET1, FOLD, ABSMAX, REDUCE)           \
    attr static uint32_t name(const void *x, uint32_t dtype, uint32_t n, float *lo, float *hi, float *seen) {          \
        if (dtype < KW_WIRE_DTYPE_BF16 || dtype > KW_WIRE_DTYPE_F32 || n % W != 0)                                     \
            return narrower(x, dtype, n, lo, hi, seen);                                                                \
        veci a = (veci){0};                                                                                            \
        for (uint32_t i = 0; i < n; i += W) {                                                                          \
            const vec v = LOAD(x, dtype, i);                                                                           \
            vec nl, nh;                                                                                                \
            FOLD(v, LOADU(lo + i), LOADU(hi + i), LOADU(seen + i), nl, nh);                                            \
            STOREU(lo + i, nl);                                                                                        \
            STOREU(hi + i, nh);                                                                                        \
            STOREU(seen + i, SET1(1.0f));                                                                              \
            a = ABSMAX(a, v);                                                                                          \
        }                                                                                                              \
        return REDUCE(a);                                                                                              \
    }

/* The unsigned maximum of 8 uint32 lanes. */
KW_AVX2 static inline uint32_t kw__max_epu32_avx2(__m256i a) {
    __m128i a4 = _mm_max_epu32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    a4 = _mm_max_epu32(a4, _mm_srli_si128(a4, 8));
    a4 = _mm_max_epu32(a4, _mm_srli_si128(a4, 4));
    return (uint32_t)_mm_cvtsi128_si32(a4);
}

#define KW__FOLD8(v, l, h, s, nl, nh)                                                                                  \
    do {                                                                                                               \
        const __m256 had = _mm256_cmp_ps(s, _mm256_setzero_ps(), _CMP_NEQ_UQ);                                         \
        nl = _mm256_blendv_ps(v, _mm256_blendv_ps(l, v, _mm256_cmp_ps(v, l, _CMP_LT_OQ)), had);                        \
        nh = _mm256_blendv_ps(v, _mm256_blendv_ps(h, v, _mm256_cmp_ps(v, h, _CMP_GT_OQ)), had);                        \
    } while (0)
#define KW__ABSMAX8(a, v) _mm256_max_epu32(a, _mm256_and_si256(_mm256_castps_si256(v), _mm256_set1_epi32(0x7fffffff)))
KW__MINMAX_FOLD(kw__minmax_fold_avx2, KW_AVX2, kw__wire_minmax_fold_scalar, 8, __m256, __m256i, kw__load8_avx2,
                _mm256_loadu_ps, _mm256_storeu_ps, _mm256_set1_ps, KW__FOLD8, KW__ABSMAX8, kw__max_epu32_avx2)

/* y = clamp(fl32(v * inv), lo, hi) (min/max of an ordered value: the encoder has refused NaN and Inf already). */
KW_AVX2 static inline __m256 kw__scaled8_avx2(__m256 v, __m256 inv, __m256 lo, __m256 hi) {
    return _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(v, inv), lo), hi);
}

/* 8 codes as int16 in element order: clamp(x * inv) rounded half to even. */
KW_AVX2 static inline __m128i kw__codes8_avx2(__m256 v, __m256 inv, __m256 lo, __m256 hi) {
    const __m256i q = _mm256_cvtps_epi32(kw__scaled8_avx2(v, inv, lo, hi));
    return _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
}

/* Packs 8 int16 codes (element order) into 4 bytes of nibbles, element 2j in the low nibble. */
KW_AVX2 static inline void kw__nibbles8_avx2(__m128i q16, uint8_t *dst) {
    /* each 32-bit lane holds q[2j] (low half) and q[2j+1] (high half) */
    const __m128i b = _mm_or_si128(_mm_and_si128(q16, _mm_set1_epi32(0x0f)),
                                   _mm_and_si128(_mm_srli_epi32(q16, 12), _mm_set1_epi32(0xf0)));
    const int32_t w = _mm_cvtsi128_si32(_mm_packus_epi16(_mm_packus_epi32(b, b), _mm_setzero_si128()));
    memcpy(dst, &w, 4);
}

/* Packs 8 int16 codes into 6 bytes: four 6-bit fields per 3 bytes, a little-endian bit stream. */
KW_AVX2 static inline void kw__sextets8_avx2(__m128i q16, uint8_t *dst) {
    const __m128i c = _mm_and_si128(q16, _mm_set1_epi16(63));
    /* 32-bit lanes: c[2j] + 64 c[2j+1] (12 bits); then per 64-bit lane the low lane | the high lane << 12 */
    const __m128i p = _mm_madd_epi16(c, _mm_setr_epi16(1, 64, 1, 64, 1, 64, 1, 64));
    const __m128i w = _mm_or_si128(_mm_and_si128(p, _mm_set_epi32(0, -1, 0, -1)), _mm_srli_epi64(p, 20));
    const __m128i bytes = _mm_shuffle_epi8(w, _mm_setr_epi8(0, 1, 2, 8, 9, 10, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1));
    const uint64_t v = (uint64_t)_mm_cvtsi128_si64(bytes);
    memcpy(dst, &v, 6);
}

/* NF4 threshold k (0..14): midpoint k, or for odd k the float just below it. kw_wire_nf4_code counts the midpoints
 * below y and at a tie y == mid[k] takes the even one of codes k and k + 1, so an odd midpoint counts when y >= mid[k]:
 * when y > threshold k. The code is then the number of thresholds below y (no midpoint is 0). */
static inline float kw__nf4_threshold(uint32_t k) {
    const float m = kw_wire_nf4_mid(k);
    return (k & 1u) ? kw_f32_from_bits(m > 0.0f ? kw_f32_bits(m) - 1u : kw_f32_bits(m) + 1u) : m;
}

/* The AVX2 NF4 thresholds: 7, 3 and 11 broadcast, the odd ones 1, 5, 9, 13 and the even ones 0, 2, ..., 14. */
typedef struct kw__nf4_avx2 {
    __m256 t7, t3, t11, odd, even;
} kw__nf4_avx2;

KW_AVX2 static inline kw__nf4_avx2 kw__nf4_avx2_make(void) {
    kw__nf4_avx2 t;
    t.t7 = _mm256_set1_ps(kw__nf4_threshold(7));
    t.t3 = _mm256_set1_ps(kw__nf4_threshold(3));
    t.t11 = _mm256_set1_ps(kw__nf4_threshold(11));
    t.odd = _mm256_setr_ps(kw__nf4_threshold(1), kw__nf4_threshold(5), kw__nf4_threshold(9), kw__nf4_threshold(13),
                           0.0f, 0.0f, 0.0f, 0.0f);
    t.even = _mm256_setr_ps(kw__nf4_threshold(0), kw__nf4_threshold(2), kw__nf4_threshold(4), kw__nf4_threshold(6),
                            kw__nf4_threshold(8), kw__nf4_threshold(10), kw__nf4_threshold(12), kw__nf4_threshold(14));
    return t;
}

/* NF4 codes of 8 clamped values as int32 (kw_wire_nf4_code): the number of thresholds below y by a four-step binary
 * search, each step adding 8, 4, 2 or 1 when y is above threshold c + step - 1 (c the code so far): 7; 3 or 11; one
 * of the odd ones (index c / 4); one of the even ones (index c / 2). */
KW_AVX2 static inline __m256i kw__nf4_codes8_avx2(__m256 y, const kw__nf4_avx2 *t) {
    __m256 g = _mm256_cmp_ps(y, t->t7, _CMP_GT_OQ);
    __m256i c = _mm256_and_si256(_mm256_castps_si256(g), _mm256_set1_epi32(8));
    g = _mm256_cmp_ps(y, _mm256_blendv_ps(t->t3, t->t11, g), _CMP_GT_OQ);
    c = _mm256_add_epi32(c, _mm256_and_si256(_mm256_castps_si256(g), _mm256_set1_epi32(4)));
    g = _mm256_cmp_ps(y, _mm256_permutevar8x32_ps(t->odd, _mm256_srli_epi32(c, 2)), _CMP_GT_OQ);
    c = _mm256_add_epi32(c, _mm256_and_si256(_mm256_castps_si256(g), _mm256_set1_epi32(2)));
    g = _mm256_cmp_ps(y, _mm256_permutevar8x32_ps(t->even, _mm256_srli_epi32(c, 1)), _CMP_GT_OQ);
    return _mm256_sub_epi32(c, _mm256_castps_si256(g));
}

/* NF4 of bf16 values by their keys: with 2^-100 <= inv <= 2^100 the 15 thresholds move from y = fl32(x * inv) to x.
 * x -> fl32(x * inv) does not decrease, so y > t_k (kw__nf4_threshold) exactly when x > X_k, X_k the largest bf16
 * with fl32(X_k * inv) <= t_k (kw__nf4k_avx2_tables finds it from a candidate and one product). For the negative t_k
 * the same on magnitudes: -M_k, M_k the smallest magnitude with fl32(M_k * inv) >= |t_k|. A value's key is its
 * magnitude bits with its sign plus 127 (int16, in value order; -0 and +0 both 127; the thresholds' keys are moved the
 * same), so that a NaN's key wraps or stays below -32512, under every threshold's (code 0, as the scalar rule's NaN,
 * which no comparison holds for): +NaN's magnitude plus 127 is 0x8000 or more, -NaN's is at most -0x7f81 + 127, while
 * the magnitudes of the thresholds lie below 0x7200 (|t_k| / inv < 2^101); the code is the number of thresholds below
 * the key, found by a four-step binary search on 16 keys a vector: t7 (broadcast), then one pshufb each on byte tables
 * (low bytes and high bytes of the thresholds in separate slots) indexed by the path so far kept in both bytes of each
 * lane: tab23 holds t3 and t11 (low bytes in slots 4-5, high in 6-7) and t1, t5, t9, t13 (8-11, 12-15), tab4 the eight
 * even ones (0-7, 8-15). The path bytes start at 4 + b1 and 6 + b1 and double at each step (so 8 + n and 12 + n, then
 * 16 + n and 24 + n, of which pshufb reads the low four bits: n and 8 + n); the code, 2 n3 + b4, comes from the last
 * path bytes lo and hi as 6 lo - 4 hi + b4 (one byte multiply-add: the offsets cancel, the high bytes are zero). */
typedef struct kw__nf4k_avx2 {
    __m256i t7, tab23, tab4;
} kw__nf4k_avx2;

/* The keys' tables of m units with the inverse scales inv[0..m-1] into t[0..m-1]; ok[j] is 0 where inv[j] is outside
 * [2^-100, 2^100] (then every bound above may fail: the caller takes the thresholds on y instead; t[j] is not written).
 * A candidate R is the bf16 truncation of t_k (1 + 2^-9) / inv (by rcpps, 1.5 2^-12 relative error): it lies between
 * 0.15 and 0.6 of a bf16 step above the boundary t_k / inv (a step is 2^-8 to 2^-7 of it), so the largest bf16 at or
 * below the boundary, X_k, is R or the one below, and for the magnitudes the smallest at or above it, M_k, is R or the
 * one above: X_k = R - [fl32(R inv) > t_k], M_k = R + [fl32(R inv) < |t_k|]. */
KW_AVX2 static inline __attribute__((always_inline)) void kw__nf4k_avx2_tables(const float *inv, uint32_t m,
                                                                               kw__nf4k_avx2 *t, int *ok) {
    const __m256i hi16 = _mm256_set1_epi32((int)0xffff0000u), off = _mm256_set1_epi16(127); /* the keys' offset */
    /* lanes in the order the tables take them after the pack below: the even thresholds in the low halves, the odd
     * ones (t5 twice) in the high halves; tp, tn on positive and negative thresholds, their magnitudes */
    const __m256 tp =
        _mm256_setr_ps(kw__nf4_threshold(8), kw__nf4_threshold(10), kw__nf4_threshold(12), kw__nf4_threshold(14),
                       kw__nf4_threshold(7), kw__nf4_threshold(9), kw__nf4_threshold(11), kw__nf4_threshold(13));
    const __m256 tn =
        _mm256_setr_ps(-kw__nf4_threshold(0), -kw__nf4_threshold(2), -kw__nf4_threshold(4), -kw__nf4_threshold(6),
                       -kw__nf4_threshold(1), -kw__nf4_threshold(3), -kw__nf4_threshold(5), -kw__nf4_threshold(5));
    const __m256 bias = _mm256_set1_ps(1.0f + 0x1p-9f);
    const __m256 tpb = _mm256_mul_ps(tp, bias), tnb = _mm256_mul_ps(tn, bias);
    const __m256i i7 = _mm256_set1_epi16(9 << 8 | 8);
    /* tab23: slots 4-7 t3 and t11, 8-15 t1, t5, t9, t13 (low bytes, then high bytes); tab4: t0, t2, ..., t14 */
    const __m256i i23 = _mm256_setr_epi8(-1, -1, -1, -1, 2, 12, 3, 13, 0, 4, 10, 14, 1, 5, 11, 15, -1, -1, -1, -1, 2,
                                         12, 3, 13, 0, 4, 10, 14, 1, 5, 11, 15);
    const __m256i i4s = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8, 10, 12,
                                         14, 1, 3, 5, 7, 9, 11, 13, 15);
    for (uint32_t j = 0; j < m; ++j) {
        ok[j] = inv[j] >= 0x1p-100f && inv[j] <= 0x1p100f;
        if (!ok[j]) continue;
        const __m256 vinv = _mm256_set1_ps(inv[j]), vs = _mm256_rcp_ps(vinv);
        /* the candidates R (all normal: t / inv lies in [2^-105, 2^100]) */
        const __m256i rp = _mm256_and_si256(_mm256_castps_si256(_mm256_mul_ps(tpb, vs)), hi16);
        const __m256i rn = _mm256_and_si256(_mm256_castps_si256(_mm256_mul_ps(tnb, vs)), hi16);
        const __m256i gt =
            _mm256_castps_si256(_mm256_cmp_ps(_mm256_mul_ps(_mm256_castsi256_ps(rp), vinv), tp, _CMP_GT_OQ));
        const __m256i lt =
            _mm256_castps_si256(_mm256_cmp_ps(_mm256_mul_ps(_mm256_castsi256_ps(rn), vinv), tn, _CMP_LT_OQ));
        /* X = R + gt; -M = lt - R (masks are -1 where true) */
        const __m256i xp = _mm256_add_epi32(_mm256_srli_epi32(rp, 16), gt);
        const __m256i xn = _mm256_sub_epi32(lt, _mm256_srli_epi32(rn, 16));
        /* words 0-7: t0, t2, ..., t14 (half a); 8-15: t1, t3, t5, t5, t7, t9, t11, t13 (half b) */
        const __m256i w = _mm256_add_epi16(_mm256_packs_epi32(xn, xp), off);
        const __m256i a = _mm256_permute2x128_si256(w, w, 0x00), b = _mm256_permute2x128_si256(w, w, 0x11);
        t[j].t7 = _mm256_shuffle_epi8(b, i7);
        t[j].tab23 = _mm256_shuffle_epi8(b, i23);
        t[j].tab4 = _mm256_shuffle_epi8(a, i4s);
    }
}

/* The codes of 16 bf16 values (raw words, element order), 16-bit lanes (high bytes zero). */
KW_AVX2 static inline __m256i kw__nf4k_codes16_avx2(__m256i raw, const kw__nf4k_avx2 *t) {
    const __m256i mag = _mm256_and_si256(raw, _mm256_set1_epi16(0x7fff));
    const __m256i k = _mm256_add_epi16(_mm256_sign_epi16(mag, raw), _mm256_set1_epi16(127));
    const __m256i n1 = _mm256_sub_epi8(_mm256_set1_epi16(6 << 8 | 4), _mm256_cmpgt_epi16(k, t->t7));
    const __m256i g2 = _mm256_cmpgt_epi16(k, _mm256_shuffle_epi8(t->tab23, n1));
    const __m256i n2 = _mm256_sub_epi8(_mm256_add_epi8(n1, n1), g2);
    const __m256i g3 = _mm256_cmpgt_epi16(k, _mm256_shuffle_epi8(t->tab23, n2));
    const __m256i n3 = _mm256_sub_epi8(_mm256_add_epi8(n2, n2), g3);
    const __m256i g4 = _mm256_cmpgt_epi16(k, _mm256_shuffle_epi8(t->tab4, n3));
    return _mm256_sub_epi16(_mm256_maddubs_epi16(n3, _mm256_set1_epi16((short)(0xfc << 8 | 6))), g4);
}

/* NF4 codes of n bf16 values (n a multiple of 32) with the key tables t, 64 a step (a last 32): the codes packed to
 * bytes (values 0-7, 16-23 | 8-15, 24-31), pairs joined by a multiply-add of the bytes with 1 and 16, packed again, and
 * the 4-byte groups put in order. */
KW_AVX2 static inline __attribute__((always_inline)) void kw__quantize_nf4k_avx2(const uint16_t *x, uint32_t n,
                                                                                 const kw__nf4k_avx2 *t, uint8_t *dst) {
    const __m256i m = _mm256_set1_epi16(1 | 16 << 8);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    uint32_t i = 0;
    for (; i + 64 <= n; i += 64) { /* 64 values: the second pack joins two 32-value halves */
        const __m256i c0 = kw__nf4k_codes16_avx2(_mm256_loadu_si256((const __m256i *)(x + i)), t);
        const __m256i c1 = kw__nf4k_codes16_avx2(_mm256_loadu_si256((const __m256i *)(x + i + 16)), t);
        const __m256i c2 = kw__nf4k_codes16_avx2(_mm256_loadu_si256((const __m256i *)(x + i + 32)), t);
        const __m256i c3 = kw__nf4k_codes16_avx2(_mm256_loadu_si256((const __m256i *)(x + i + 48)), t);
        const __m256i p0 = _mm256_maddubs_epi16(_mm256_packus_epi16(c0, c1), m);
        const __m256i p1 = _mm256_maddubs_epi16(_mm256_packus_epi16(c2, c3), m);
        _mm256_storeu_si256((__m256i *)(dst + i / 2), _mm256_permutevar8x32_epi32(_mm256_packus_epi16(p0, p1), order));
    }
    if (i < n) {
        const __m256i c0 = kw__nf4k_codes16_avx2(_mm256_loadu_si256((const __m256i *)(x + i)), t);
        const __m256i c1 = kw__nf4k_codes16_avx2(_mm256_loadu_si256((const __m256i *)(x + i + 16)), t);
        const __m256i p = _mm256_maddubs_epi16(_mm256_packus_epi16(c0, c1), m);
        const __m256i b = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(p, p), order);
        _mm_storeu_si128((__m128i *)(dst + i / 2), _mm256_castsi256_si128(b));
    }
}

/* FP8 codes of 8 values y = fl32(x * inv), unclamped (finite or infinite, never NaN), as int32 0..255: exactly
 * kw__f32_to_minifloat of clamp(y), round half to even on the value, subnormals included. Normal: the significand
 * rounded by integer arithmetic with the exponent rebased in the same addition; subnormal: y / quantum is exact and
 * cvtps2dq rounds half to even. A magnitude beyond the largest finite code rounds to a code above it (Inf too), and
 * the minimum with max_code is then the clamp's code: the clamp itself is not needed. */
KW_AVX2 static inline __m256i kw__fp8_codes8_avx2(__m256 y, int mbits, int bias, int max_code) {
    const __m256i u = _mm256_castps_si256(y);
    const __m256i sign = _mm256_and_si256(_mm256_srli_epi32(u, 24), _mm256_set1_epi32(0x80));
    const __m256i a = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
    const __m128i shift = _mm_cvtsi32_si128(23 - mbits);
    /* (a - rebias + half - 1 + lsb) >> shift; a >= the smallest normal keeps the sum positive */
    const __m256i lsb = _mm256_and_si256(_mm256_srl_epi32(a, shift), _mm256_set1_epi32(1));
    const __m256i r = _mm256_add_epi32(a, _mm256_set1_epi32((1 << (22 - mbits)) - 1 - ((127 - bias) << 23)));
    const __m256i normal = _mm256_srl_epi32(_mm256_add_epi32(r, lsb), shift);
    const __m256 quanta = _mm256_castsi256_ps(_mm256_set1_epi32((127 + bias + mbits - 1) << 23));
    const __m256i sub = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_castsi256_ps(a), quanta));
    const __m256i is_sub = _mm256_cmpgt_epi32(_mm256_set1_epi32((128 - bias) << 23), a);
    const __m256i code = _mm256_min_epu32(_mm256_blendv_epi8(normal, sub, is_sub), _mm256_set1_epi32(max_code));
    return _mm256_or_si256(code, sign);
}

/* Packs the low b bits of 8 int32 values into b bytes at dst, element k at bits [k*b, (k+1)*b) (FORMAT.md §5.3):
 * each half's four fields are shifted into place and ORed into one 32-bit word, the two words joined. bits is a
 * constant where this is inlined. */
KW_AVX2 static inline __attribute__((always_inline)) void kw__fields8_put_avx2(__m256i c, uint32_t bits, uint8_t *dst) {
    const int b = (int)bits;
    const __m256i shifts = _mm256_setr_epi32(0, b, 2 * b, 3 * b, 0, b, 2 * b, 3 * b);
    __m256i v = _mm256_sllv_epi32(_mm256_and_si256(c, _mm256_set1_epi32((1 << b) - 1)), shifts);
    v = _mm256_or_si256(v, _mm256_shuffle_epi32(v, 0x4e));
    v = _mm256_or_si256(v, _mm256_shuffle_epi32(v, 0xb1));
    const uint64_t w = (uint64_t)(uint32_t)_mm256_cvtsi256_si32(v) | (uint64_t)(uint32_t)_mm256_extract_epi32(v, 4)
                                                                         << (4 * bits);
    memcpy(dst, &w, bits); /* little-endian: the stream's first bytes */
}

/* The 8 unsigned b-bit fields in the b bytes at src, as int32 (the inverse of kw__fields8_put_avx2). */
KW_AVX2 static inline __attribute__((always_inline)) __m256i kw__fields8_get_avx2(const uint8_t *src, uint32_t bits) {
    const int b = (int)bits;
    uint64_t w; /* the b bytes as one word, by loads of 1, 2, 4 or 8 bytes (a copy through memory would stall) */
    if (bits == 8) {
        memcpy(&w, src, 8);
    } else if (bits == 6) {
        uint32_t a;
        uint16_t c;
        memcpy(&a, src, 4);
        memcpy(&c, src + 4, 2);
        w = a | (uint64_t)c << 32;
    } else if (bits == 4) {
        uint32_t a;
        memcpy(&a, src, 4);
        w = a;
    } else if (bits == 3) {
        uint16_t a;
        memcpy(&a, src, 2);
        w = a | (uint32_t)src[2] << 16;
    } else {
        uint16_t a;
        memcpy(&a, src, 2);
        w = a;
    }
    const int lo = (int)(uint32_t)w, hi = (int)(uint32_t)(w >> (4 * bits));
    const __m256i v = _mm256_setr_epi32(lo, lo, lo, lo, hi, hi, hi, hi);
    return _mm256_and_si256(_mm256_srlv_epi32(v, _mm256_setr_epi32(0, b, 2 * b, 3 * b, 0, b, 2 * b, 3 * b)),
                            _mm256_set1_epi32((1 << b) - 1));
}

/* 8 per-unit values of elements i..i+7, unit i >> shift: one per element (shift 0) or one for all 8 (shift >= 3). */
KW_AVX2 static inline __attribute__((always_inline)) __m256 kw__unit8_avx2(const float *v, uint32_t i, uint32_t shift) {
    return shift == 0 ? _mm256_loadu_ps(v + i) : _mm256_set1_ps(v[i >> shift]);
}

KW_AVX2 static inline __attribute__((always_inline)) void kw__affine_row_avx2(const void *x, uint32_t dtype, uint32_t n,
                                                                              const float *z, const float *inv,
                                                                              uint32_t shift, __m256 lo, __m256 hi,
                                                                              uint32_t bits, uint8_t *dst) {
    for (uint32_t i = 0; i < n; i += 8) {
        const __m256 d = _mm256_sub_ps(kw__load8_avx2(x, dtype, i), kw__unit8_avx2(z, i, shift));
        const __m256 y = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(d, kw__unit8_avx2(inv, i, shift)), lo), hi);
        kw__fields8_put_avx2(_mm256_cvtps_epi32(y), bits, dst + (size_t)i / 8 * bits);
    }
}

/* The call of an affine row loop with a constant field width (the shifts, multipliers and store sizes fold). */
#define KW__AFFINE_BY_BITS(row)                                                                                        \
    do {                                                                                                               \
        if (bits == 2)                                                                                                 \
            row(x, dtype, n, z, inv, shift, vlo, vhi, 2, dst);                                                         \
        else if (bits == 3)                                                                                            \
            row(x, dtype, n, z, inv, shift, vlo, vhi, 3, dst);                                                         \
        else if (bits == 4)                                                                                            \
            row(x, dtype, n, z, inv, shift, vlo, vhi, 4, dst);                                                         \
        else if (bits == 6)                                                                                            \
            row(x, dtype, n, z, inv, shift, vlo, vhi, 6, dst);                                                         \
        else                                                                                                           \
            row(x, dtype, n, z, inv, shift, vlo, vhi, 8, dst);                                                         \
    } while (0)

/* kw__wire_kernels.quantize_affine: the clamp by max/min may turn a -0 into +0, which rounds to the same code. */
KW_AVX2 static void kw__quantize_affine_avx2(const void *x, uint32_t dtype, uint32_t n, const float *z,
                                             const float *inv, uint32_t shift, float lo, float hi, uint32_t bits,
                                             uint8_t *dst) {
    if (dtype < KW_WIRE_DTYPE_BF16 || dtype > KW_WIRE_DTYPE_F32 || n % 8 != 0 || shift == 1 || shift == 2) {
        kw__wire_quantize_affine_scalar(x, dtype, n, z, inv, shift, lo, hi, bits, dst);
        return;
    }
    const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
    KW__AFFINE_BY_BITS(kw__affine_row_avx2);
}

/* Stores 8 int32 values 0..255 as bytes. */
KW_AVX2 static inline void kw__bytes8_avx2(__m256i c, uint8_t *dst) {
    const __m128i c16 = _mm_packus_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
    _mm_storel_epi64((__m128i *)dst, _mm_packus_epi16(c16, c16));
}

/* 32 FP8 codes of bf16 values x[0..32) times inv > 0, as kw__fp8_codes8_avx2 gives them, into dst[0..32).
 * With inv > 0 the sign of y = fl32(x * inv) is the sign of x, so the codes are those of |y| = fl32(|x| * inv) with
 * the bf16 sign bits ORed in (a signed saturating pack of the raw bf16 words keeps bit 7 exactly where the value is
 * negative). The magnitudes are packed to bytes by two unsigned saturating packs (beyond the largest code stays beyond
 * it) and clamped there by one byte minimum. Every step rounds half to even by integer arithmetic without a branch
 * (ties are common: a bf16 value times a short inv is often exactly between two codes); steps holding a subnormal |y|
 * (zeros too: rare in real rows) also take kw__fp8_codes8_avx2's subnormal conversion. */
KW_AVX2 static inline __attribute__((always_inline)) void kw__fp8_bf16_32_avx2(int e4m3, const uint16_t *x, __m256 vinv,
                                                                               uint8_t *dst) {
    const int mbits = e4m3 ? 3 : 2, bias = e4m3 ? 7 : 15;
    const __m128i shift = _mm_cvtsi32_si128(23 - mbits);
    const __m256i z = _mm256_setzero_si256();
    const __m256i min_normal = _mm256_set1_epi32((128 - bias) << 23);
    const __m256i x0 = _mm256_loadu_si256((const __m256i *)x), x1 = _mm256_loadu_si256((const __m256i *)(x + 16));
    const __m256i a0 = _mm256_and_si256(x0, _mm256_set1_epi16(0x7fff)),
                  a1 = _mm256_and_si256(x1, _mm256_set1_epi16(0x7fff));
    const __m256i sign = _mm256_and_si256(_mm256_packs_epi16(x0, x1), _mm256_set1_epi8((char)0x80));
#define KW__Y(a, unpack) _mm256_castps_si256(_mm256_mul_ps(_mm256_castsi256_ps(unpack(z, a)), vinv))
    const __m256i y0 = KW__Y(a0, _mm256_unpacklo_epi16), y1 = KW__Y(a0, _mm256_unpackhi_epi16);
    const __m256i y2 = KW__Y(a1, _mm256_unpacklo_epi16), y3 = KW__Y(a1, _mm256_unpackhi_epi16);
#undef KW__Y
    /* normal |y|: (|y| - rebias + half - 1 + lsb) >> shift, lsb the last kept bit (|y| <= 0x7fffffff: no overflow) */
    const __m256i one = _mm256_set1_epi32(1), rnd = _mm256_set1_epi32((1 << (22 - mbits)) - 1 - ((127 - bias) << 23));
#define KW__RNE(v)                                                                                                     \
    _mm256_srl_epi32(_mm256_add_epi32(_mm256_add_epi32(v, rnd), _mm256_and_si256(_mm256_srl_epi32(v, shift), one)),    \
                     shift)
    __m256i c0 = KW__RNE(y0), c1 = KW__RNE(y1), c2 = KW__RNE(y2), c3 = KW__RNE(y3);
#undef KW__RNE
    /* a subnormal |y| (signed compares: every |y| is below 2^31, since inv is finite: the encoder's 1 / s with
     * s >= 2^-127; an inv of +Inf, never passed, makes 0 * Inf a NaN whose code then depends on the step) */
    const __m256i low = _mm256_min_epu32(_mm256_min_epu32(y0, y1), _mm256_min_epu32(y2, y3));
    const __m256i sub = _mm256_cmpgt_epi32(min_normal, low);
    if (!_mm256_testz_si256(sub, sub)) { /* the subnormal lanes converted: kw__fp8_codes8_avx2 */
        const __m256 quanta = _mm256_castsi256_ps(_mm256_set1_epi32((127 + bias + mbits - 1) << 23));
#define KW__S(c, v)                                                                                                    \
    c = _mm256_blendv_epi8(c, _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_castsi256_ps(v), quanta)),                       \
                           _mm256_cmpgt_epi32(min_normal, v))
        KW__S(c0, y0);
        KW__S(c1, y1);
        KW__S(c2, y2);
        KW__S(c3, y3);
#undef KW__S
    }
    const __m256i q = _mm256_min_epu8(_mm256_packus_epi16(_mm256_packus_epi32(c0, c1), _mm256_packus_epi32(c2, c3)),
                                      _mm256_set1_epi8(e4m3 ? 0x7e : 0x7b));
    _mm256_storeu_si256((__m256i *)dst, _mm256_permute4x64_epi64(_mm256_or_si256(q, sign), 0xd8));
}

/* 1 when inv > 0: the fast steps take each code's sign from the bf16 word (a -0 would flip it) and map Inf to the
 * largest code (Inf * +0 is the scalar rule's NaN); NaN, zeros and negative inv take the exact way. */
static inline int kw__inv_plus(float inv) {
    return inv > 0.0f;
}

/* kw__quantize_bytes_bf16_avx2 for e4m3 and e5m2: kw__fp8_bf16_32_avx2 per step (a row's loop without the sign check
 * of inv), a step whose inv is not > 0 (zeros, negative, NaN) 8 values at a time by kw__fp8_codes8_avx2. */
KW_AVX2 static inline __attribute__((always_inline)) void kw__quantize_fp8_bf16_avx2(int e4m3, const uint16_t *x,
                                                                                     uint32_t n, float inv0,
                                                                                     const float *inv, uint32_t gshift,
                                                                                     uint8_t *dst) {
    if (!inv && kw__inv_plus(inv0)) {
        const __m256 vinv = _mm256_set1_ps(inv0);
        for (uint32_t i = 0; i < n; i += 32)
            kw__fp8_bf16_32_avx2(e4m3, x + i, vinv, dst + i);
        return;
    }
    for (uint32_t i = 0; i < n; i += 32) {
        const float v = inv ? inv[i >> gshift] : inv0;
        const __m256 vinv = _mm256_set1_ps(v);
        if (kw__inv_plus(v)) {
            kw__fp8_bf16_32_avx2(e4m3, x + i, vinv, dst + i);
            continue;
        }
        for (uint32_t j = i; j < i + 32; j += 8) {
            const __m256 y = _mm256_mul_ps(kw__load8_avx2(x, KW_WIRE_DTYPE_BF16, j), vinv);
            kw__bytes8_avx2(e4m3 ? kw__fp8_codes8_avx2(y, 3, 7, 0x7e) : kw__fp8_codes8_avx2(y, 2, 15, 0x7b), dst + j);
        }
    }
}

/* int8, int4, int6, e4m3 and e5m2 codes of bf16 rows, 32 values per step (n a multiple of 32), value i with the inverse
 * scale inv[i >> gshift] (groups of 2^gshift >= 32 values), or inv0 for the row when inv is NULL: unpacking a bf16
 * vector against zeros gives f32 values in the order packssdw puts back (values 4k..4k+3 of each 128-bit lane, then
 * 4k+4..4k+7), so two packs (signed for the integer codes, unsigned for the fp8 bytes 0..255) and one 64-bit lane
 * permute give the 32 codes in element order; the values and the rounding are those of kw__codes8_avx2 and
 * kw__fp8_codes8_avx2. The integer codes clamp only from above in f32 (min(qmax, y)), convert, and clamp from below
 * on the packed bytes: a y below -qmax (down to -Inf, whose conversion is INT32_MIN) saturates in the packs to at
 * most -qmax and max(-qmax) makes it -qmax, the code clamp(y) then RNE gives; one byte maximum per 32 values instead
 * of a float maximum per 8 (NaN never comes here: the encoder refuses it). */
KW_AVX2 static inline __attribute__((always_inline)) void kw__quantize_bytes_bf16_avx2(uint32_t codec,
                                                                                       const uint16_t *x, uint32_t n,
                                                                                       float inv0, const float *inv,
                                                                                       uint32_t gshift, uint8_t *dst) {
    const float qmax = kw_wire_codec_qmax(codec);
    const __m256 hi = _mm256_set1_ps(qmax), row_inv = _mm256_set1_ps(inv0);
    const __m256i z = _mm256_setzero_si256(), qlo = _mm256_set1_epi8((char)-(int)qmax);
    if (codec == KW_WIRE_CODEC_E4M3 || codec == KW_WIRE_CODEC_E5M2) {
        kw__quantize_fp8_bf16_avx2(codec == KW_WIRE_CODEC_E4M3, x, n, inv0, inv, gshift, dst);
        return;
    }
    for (uint32_t i = 0; i < n; i += 32) {
        const __m256 vinv = inv ? _mm256_set1_ps(inv[i >> gshift]) : row_inv;
        const __m256i x0 = _mm256_loadu_si256((const __m256i *)(x + i)),
                      x1 = _mm256_loadu_si256((const __m256i *)(x + i + 16));
#define KW__Q(v) _mm256_cvtps_epi32(_mm256_min_ps(hi, _mm256_mul_ps(_mm256_castsi256_ps(v), vinv)))
        const __m256i p0 = _mm256_packs_epi32(KW__Q(_mm256_unpacklo_epi16(z, x0)), KW__Q(_mm256_unpackhi_epi16(z, x0)));
        const __m256i p1 = _mm256_packs_epi32(KW__Q(_mm256_unpacklo_epi16(z, x1)), KW__Q(_mm256_unpackhi_epi16(z, x1)));
#undef KW__Q
        const __m256i q =
            _mm256_max_epi8(_mm256_permute4x64_epi64(_mm256_packs_epi16(p0, p1), 0xd8), qlo); /* 32 codes in order */
        if (codec == KW_WIRE_CODEC_INT6) { /* 32 sextets in 24 bytes, four per 3 (FORMAT.md §5.3) */
            const __m256i c = _mm256_and_si256(q, _mm256_set1_epi8(63));
            /* 16-bit lanes c[2j] + 64 c[2j+1], then 32-bit lanes of 24 bits: the low word + 4096 the high one */
            const __m256i w12 = _mm256_maddubs_epi16(c, _mm256_set1_epi16(64 << 8 | 1));
            const __m256i w24 = _mm256_madd_epi16(w12, _mm256_set1_epi32(4096 << 16 | 1));
            /* the 3 low bytes of each dword, 12 per 128-bit lane, then the two lanes' 12 joined */
            const __m256i b =
                _mm256_shuffle_epi8(w24, _mm256_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1, 0, 1,
                                                          2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1));
            const __m256i joined = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 1, 2, 4, 5, 6, 7, 7));
            uint8_t *o = dst + (size_t)i / 4 * 3;
            _mm_storeu_si128((__m128i *)o, _mm256_castsi256_si128(joined));
            _mm_storel_epi64((__m128i *)(o + 16), _mm256_extracti128_si256(joined, 1));
            continue;
        }
        if (codec != KW_WIRE_CODEC_INT4) {
            _mm256_storeu_si256((__m256i *)(dst + i), q);
            continue;
        }
        /* 16-bit lanes q[2j] | q[2j+1] << 8 -> (q[2j] & 15) | (q[2j+1] & 15) << 4 */
        const __m256i b = _mm256_or_si256(_mm256_and_si256(q, _mm256_set1_epi16(0x000f)),
                                          _mm256_and_si256(_mm256_srli_epi16(q, 4), _mm256_set1_epi16(0x00f0)));
        _mm_storeu_si128((__m128i *)(dst + i / 2),
                         _mm_packus_epi16(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1)));
    }
}

/* NF4 codes of n values (n a multiple of 8) with the thresholds on y, t, made once by the caller. */
KW_AVX2 static inline __attribute__((always_inline)) void
kw__quantize_nf4y_avx2(const void *x, uint32_t dtype, uint32_t n, float inv, const kw__nf4_avx2 *t, uint8_t *dst) {
    const __m256 vinv = _mm256_set1_ps(inv), lo = _mm256_set1_ps(-1.0f), hi = _mm256_set1_ps(1.0f);
    for (uint32_t i = 0; i < n; i += 8) {
        const __m256i c = kw__nf4_codes8_avx2(kw__scaled8_avx2(kw__load8_avx2(x, dtype, i), vinv, lo, hi), t);
        kw__nibbles8_avx2(_mm_packs_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1)), dst + i / 2);
    }
}

/* Units whose key tables kw__quantize_nf4_units_avx2 makes in one pass before their codes. */
#define KW__NF4K_CHUNK 16u

/* Unit u of kw__quantize_nf4_units_avx2's input: rows[u / upr] + (u % upr) n elements, or x + u n elements when rows
 * is NULL (es bytes an element). */
static inline const void *kw__nf4_unit(const void *x, const uint8_t *const *rows, uint32_t upr, uint32_t n, size_t es,
                                       uint32_t u) {
    return rows ? (const void *)(rows[u / upr] + (size_t)(u % upr) * n * es)
                : (const void *)((const uint8_t *)x + (size_t)u * n * es);
}

/* The codes of units u0 .. u0 + m - 1 of kw__quantize_nf4_units_avx2 whose tables tabs[j] (ok[j]) were made: by their
 * keys, else by the thresholds on y. nk is n, passed as a constant where the caller writes the loop out for units of
 * 64 (NF4's groups). */
KW_AVX2 static inline __attribute__((always_inline)) void
kw__nf4k_units_avx2(const void *x, const uint8_t *const *rows, uint32_t upr, uint32_t dtype, uint32_t n, uint32_t nk,
                    uint32_t u0, uint32_t m, const kw__nf4k_avx2 *tabs, const int *ok, const float *inv,
                    const kw__nf4_avx2 *t, uint8_t *dst) {
    const size_t es = kw__wire_dtype_size(dtype);
    for (uint32_t j = 0; j < m; ++j) {
        const uint32_t u = u0 + j;
        const void *unit = kw__nf4_unit(x, rows, upr, nk, es, u);
        if (ok[j])
            kw__quantize_nf4k_avx2((const uint16_t *)unit, nk, &tabs[j], dst + (size_t)u * nk / 2);
        else
            kw__quantize_nf4y_avx2(unit, dtype, n, inv[u], t, dst + (size_t)u * n / 2);
    }
}

/* NF4 codes of n_units units of n values (n a multiple of 8), unit u at rows[u / upr] + (u % upr) n elements (upr
 * units a row) or, when rows is NULL, at x + u n elements, with the inverse scale inv[u], its codes at dst + u n / 2.
 * bf16 units of a multiple of 32 values go by their keys (kw__quantize_nf4k_avx2) when inv allows, KW__NF4K_CHUNK units
 * at a time: first the tables of all of them (independent chains of products, compares and shuffles that overlap
 * one another, their constants in registers), stored, then each unit's search with its tables loaded (the search's
 * own constants stay in registers; making one unit's tables between two searches spilled them); the other units by
 * the thresholds on y. */
KW_AVX2 static inline __attribute__((always_inline)) void
kw__quantize_nf4_units_avx2(const void *x, const uint8_t *const *rows, uint32_t n_units, uint32_t upr, uint32_t dtype,
                            uint32_t n, const float *inv, uint8_t *dst) {
    const kw__nf4_avx2 t = kw__nf4_avx2_make();
    if (dtype != KW_WIRE_DTYPE_BF16 || n % 32 != 0) {
        const size_t es = kw__wire_dtype_size(dtype);
        for (uint32_t u = 0; u < n_units; ++u)
            kw__quantize_nf4y_avx2(kw__nf4_unit(x, rows, upr, n, es, u), dtype, n, inv[u], &t, dst + (size_t)u * n / 2);
        return;
    }
    kw__nf4k_avx2 tabs[KW__NF4K_CHUNK];
    int ok[KW__NF4K_CHUNK];
    for (uint32_t u0 = 0; u0 < n_units; u0 += KW__NF4K_CHUNK) {
        const uint32_t m = n_units - u0 < KW__NF4K_CHUNK ? n_units - u0 : KW__NF4K_CHUNK;
        kw__nf4k_avx2_tables(inv + u0, m, tabs, ok);
        if (n == 64)
            kw__nf4k_units_avx2(x, rows, upr, dtype, n, 64u, u0, m, tabs, ok, inv, &t, dst);
        else
            kw__nf4k_units_avx2(x, rows, upr, dtype, n, n, u0, m, tabs, ok, inv, &t, dst);
    }
}

KW_AVX2 static void kw__quantize_avx2(uint32_t codec, const void *x, uint32_t dtype, uint32_t n, float inv,
                                      uint8_t *dst) {
    if (dtype < KW_WIRE_DTYPE_BF16 || dtype > KW_WIRE_DTYPE_F32 || n % 8 != 0 || kw_wire_codec_is_passthrough(codec) ||
        kw_wire_codec_bits(codec) == 0) {
        kw__wire_quantize_scalar(codec, x, dtype, n, inv, dst);
        return;
    }
    if ((codec == KW_WIRE_CODEC_INT8 || codec == KW_WIRE_CODEC_INT4 || codec == KW_WIRE_CODEC_E4M3 ||
         codec == KW_WIRE_CODEC_E5M2 || codec == KW_WIRE_CODEC_INT6) &&
        dtype == KW_WIRE_DTYPE_BF16 && n % 32 == 0) {
        kw__quantize_bytes_bf16_avx2(codec, (const uint16_t *)x, n, inv, NULL, 0, dst);
        return;
    }
    const float qmax = kw_wire_codec_qmax(codec);
    const __m256 vinv = _mm256_set1_ps(inv), lo = _mm256_set1_ps(-qmax), hi = _mm256_set1_ps(qmax);
    switch (codec) {
    case KW_WIRE_CODEC_INT8:
        for (uint32_t i = 0; i < n; i += 8) {
            const __m128i q16 = kw__codes8_avx2(kw__load8_avx2(x, dtype, i), vinv, lo, hi);
            _mm_storel_epi64((__m128i *)(dst + i), _mm_packs_epi16(q16, q16));
        }
        break;
    case KW_WIRE_CODEC_INT4:
        for (uint32_t i = 0; i < n; i += 8)
            kw__nibbles8_avx2(kw__codes8_avx2(kw__load8_avx2(x, dtype, i), vinv, lo, hi), dst + i / 2);
        break;
    case KW_WIRE_CODEC_INT6:
        for (uint32_t i = 0; i < n; i += 8)
            kw__sextets8_avx2(kw__codes8_avx2(kw__load8_avx2(x, dtype, i), vinv, lo, hi), dst + i / 8 * 6);
        break;
    case KW_WIRE_CODEC_INT3:
        for (uint32_t i = 0; i < n; i += 8)
            kw__fields8_put_avx2(_mm256_cvtps_epi32(kw__scaled8_avx2(kw__load8_avx2(x, dtype, i), vinv, lo, hi)), 3,
                                 dst + i / 8 * 3);
        break;
    case KW_WIRE_CODEC_INT2:
        for (uint32_t i = 0; i < n; i += 8)
            kw__fields8_put_avx2(_mm256_cvtps_epi32(kw__scaled8_avx2(kw__load8_avx2(x, dtype, i), vinv, lo, hi)), 2,
                                 dst + i / 8 * 2);
        break;
    case KW_WIRE_CODEC_NF4:
        kw__quantize_nf4_units_avx2(x, NULL, 1, 1, dtype, n, &inv, dst);
        break;
    case KW_WIRE_CODEC_E4M3:
    case KW_WIRE_CODEC_E5M2: {
        const int e4m3 = codec == KW_WIRE_CODEC_E4M3;
        for (uint32_t i = 0; i < n; i += 8) {
            const __m256 y = _mm256_mul_ps(kw__load8_avx2(x, dtype, i), vinv); /* the codes clamp */
            kw__bytes8_avx2(e4m3 ? kw__fp8_codes8_avx2(y, 3, 7, 0x7e) : kw__fp8_codes8_avx2(y, 2, 15, 0x7b), dst + i);
        }
        break;
    }
    default:
        kw__wire_quantize_scalar(codec, x, dtype, n, inv, dst);
        break;
    }
}

/* The log8 scale values (kw_wire_log8_to_f32) of 8 bytes 1..255 as int32: the f32 root 2^(i/8) of the low three
 * bits of c - 128 (bytes 128..135 are the roots themselves), its exponent moved by the rest (an exact power of two:
 * the same bits as the scalar product). */
KW_AVX2 static inline __m256 kw__log8_values8_avx2(__m256i c) {
    const __m256i roots = _mm256_castps_si256(_mm256_setr_ps(
        kw_wire_log8_to_f32(128), kw_wire_log8_to_f32(129), kw_wire_log8_to_f32(130), kw_wire_log8_to_f32(131),
        kw_wire_log8_to_f32(132), kw_wire_log8_to_f32(133), kw_wire_log8_to_f32(134), kw_wire_log8_to_f32(135)));
    const __m256i e = _mm256_sub_epi32(c, _mm256_set1_epi32(128));
    const __m256i root = _mm256_permutevar8x32_epi32(roots, _mm256_and_si256(e, _mm256_set1_epi32(7)));
    return _mm256_castsi256_ps(_mm256_add_epi32(root, _mm256_slli_epi32(_mm256_srai_epi32(e, 3), 23)));
}

/* The end of a step of kw__scales_avx2 for the byte scales (e8m0, log8), given the codes c and values v of 8 absmaxes
 * (zero: the lanes of absmax 0; bad: the lanes the rule refuses before its bound qmax * v <= BF16_MAX, checked here):
 * 0 if a lane with a nonzero absmax fails, else 1 with the 8 code bytes, the scales and their inverses stored (code,
 * scale and inverse 0 for absmax 0). */
KW_AVX2 static inline int kw__scales8_bytes_avx2(__m256i zero, __m256i bad, __m256i c, __m256 v, __m256 vq,
                                                 uint8_t *dst, float *s, float *inv) {
    const __m256 top = _mm256_set1_ps(KW_WIRE_BF16_MAX);
    bad = _mm256_or_si256(bad, _mm256_castps_si256(_mm256_cmp_ps(_mm256_mul_ps(vq, v), top, _CMP_NLE_UQ)));
    if (_mm256_movemask_epi8(_mm256_andnot_si256(zero, bad))) return 0;
    const __m256 keep = _mm256_castsi256_ps(_mm256_xor_si256(zero, _mm256_set1_epi32(-1)));
    const __m256i cz = _mm256_andnot_si256(zero, c);
    const __m128i c16 = _mm_packus_epi32(_mm256_castsi256_si128(cz), _mm256_extracti128_si256(cz, 1));
    _mm_storel_epi64((__m128i *)dst, _mm_packus_epi16(c16, c16));
    _mm256_storeu_ps(s, _mm256_and_ps(v, keep));
    _mm256_storeu_ps(inv, _mm256_and_ps(_mm256_div_ps(_mm256_set1_ps(1.0f), v), keep));
    return 1;
}

/* kw__wire_kernels.scales: f16, e8m0 and log8 scales 8 at a time. log8: the scalar rule's binary search in every lane.
 * f16: r = fl32(amax / qmax) by divps; vcvtps2ph with round to nearest
 * even is exactly kw_f32_to_f16 for the finite non-negative r there can be (subnormal results and overflow to Inf
 * included); then the rule's range checks, the floor at the smallest subnormal, and qmax * s <= BF16_MAX. A block
 * with any failure, and every other scale dtype, take the scalar rule, which finds the failing index. */
KW_AVX2 static uint32_t kw__scales_avx2(const uint32_t *amax, uint32_t n, float qmax, uint32_t scale_dtype,
                                        uint8_t *dst, float *s, float *inv) {
    uint32_t i = 0;
    if (scale_dtype == KW_WIRE_SCALE_F16) {
        const __m256 vq = _mm256_set1_ps(qmax), one = _mm256_set1_ps(1.0f), top = _mm256_set1_ps(KW_WIRE_BF16_MAX);
        for (; i + 8 <= n; i += 8) {
            const __m256i ab = _mm256_loadu_si256((const __m256i *)(amax + i));
            const __m256i zero = _mm256_cmpeq_epi32(ab, _mm256_setzero_si256());
            const __m256 r = _mm256_div_ps(_mm256_castsi256_ps(ab), vq);
            __m256i c = _mm256_cvtepu16_epi32(_mm256_cvtps_ph(r, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
            __m256i bad = _mm256_or_si256(_mm256_cmpgt_epi32(ab, _mm256_set1_epi32(0x7f7fffff)),
                                          _mm256_cmpgt_epi32(c, _mm256_set1_epi32(0x7bff)));
            c = _mm256_max_epi32(c, _mm256_set1_epi32(1));
            const __m128i c16 = _mm_packus_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
            const __m256 v = _mm256_cvtph_ps(c16);
            bad = _mm256_or_si256(bad, _mm256_castps_si256(_mm256_cmp_ps(_mm256_mul_ps(vq, v), top, _CMP_NLE_UQ)));
            if (_mm256_movemask_epi8(_mm256_andnot_si256(zero, bad))) break;
            const __m256 keep = _mm256_castsi256_ps(_mm256_xor_si256(zero, _mm256_set1_epi32(-1)));
            _mm_storeu_si128(
                (__m128i *)(dst + 2 * (size_t)i),
                _mm_andnot_si128(_mm_packs_epi32(_mm256_castsi256_si128(zero), _mm256_extracti128_si256(zero, 1)),
                                 c16));
            _mm256_storeu_ps(s + i, _mm256_and_ps(v, keep));
            _mm256_storeu_ps(inv + i, _mm256_and_ps(_mm256_div_ps(one, v), keep));
        }
    }
    if (scale_dtype == KW_WIRE_SCALE_E8M0) { /* kw_e8m0_ceil of r = fl32(amax / qmax), in every lane */
        const __m256 vq = _mm256_set1_ps(qmax);
        const __m256i zero32 = _mm256_setzero_si256();
        for (; i + 8 <= n; i += 8) {
            const __m256i ab = _mm256_loadu_si256((const __m256i *)(amax + i));
            const __m256i zero = _mm256_cmpeq_epi32(ab, zero32);
            const __m256i a = _mm256_castps_si256(_mm256_div_ps(_mm256_castsi256_ps(ab), vq));
            const __m256i e = _mm256_srli_epi32(a, 23), m = _mm256_and_si256(a, _mm256_set1_epi32(0x7fffff));
            /* normal r: e, plus 1 unless r is a power of two (cmpeq gives -1 there); subnormal r: code 0 (2^-127) up
             * to 2^-127 itself, else 1 */
            const __m256i normal =
                _mm256_add_epi32(_mm256_add_epi32(e, _mm256_set1_epi32(1)), _mm256_cmpeq_epi32(m, zero32));
            const __m256i sub = _mm256_srli_epi32(_mm256_cmpgt_epi32(m, _mm256_set1_epi32(0x400000)), 31);
            const __m256i c = _mm256_blendv_epi8(normal, sub, _mm256_cmpeq_epi32(e, zero32));
            /* 2^(c - 127), or 2^-127 (an f32 subnormal) for code 0 */
            const __m256 v = _mm256_castsi256_ps(_mm256_blendv_epi8(
                _mm256_slli_epi32(c, 23), _mm256_set1_epi32(0x00400000), _mm256_cmpeq_epi32(c, zero32)));
            /* code 255 (r above 2^127) has v = Inf, which the bound qmax * v <= BF16_MAX refuses */
            const __m256i bad = _mm256_cmpgt_epi32(ab, _mm256_set1_epi32(0x7f7fffff));
            if (!kw__scales8_bytes_avx2(zero, bad, c, v, vq, dst + i, s + i, inv + i)) break;
        }
    }
    if (scale_dtype == KW_WIRE_SCALE_LOG8) {
        const __m256 vq = _mm256_set1_ps(qmax);
        const __m256 ceiling = _mm256_mul_ps(_mm256_set1_ps(kw_wire_log8_to_f32(255)), vq);
        for (; i + 8 <= n; i += 8) {
            const __m256i ab = _mm256_loadu_si256((const __m256i *)(amax + i));
            const __m256 a = _mm256_castsi256_ps(ab);
            const __m256i zero = _mm256_cmpeq_epi32(ab, _mm256_setzero_si256());
            /* the scalar rule's binary search over 1..255, eight halvings in every lane */
            __m256i lo = _mm256_set1_epi32(1), hi = _mm256_set1_epi32(255);
            for (int k = 0; k < 8; ++k) {
                const __m256i mid = _mm256_srli_epi32(_mm256_add_epi32(lo, hi), 1);
                const __m256i ge =
                    _mm256_castps_si256(_mm256_cmp_ps(_mm256_mul_ps(kw__log8_values8_avx2(mid), vq), a, _CMP_GE_OQ));
                hi = _mm256_blendv_epi8(hi, mid, ge);
                lo = _mm256_blendv_epi8(_mm256_add_epi32(mid, _mm256_set1_epi32(1)), lo, ge);
            }
            const __m256 v = kw__log8_values8_avx2(lo);
            const __m256i bad = _mm256_or_si256(_mm256_cmpgt_epi32(ab, _mm256_set1_epi32(0x7f7fffff)),
                                                _mm256_castps_si256(_mm256_cmp_ps(ceiling, a, _CMP_NGE_UQ)));
            if (!kw__scales8_bytes_avx2(zero, bad, lo, v, vq, dst + i, s + i, inv + i)) break;
        }
    }
    if (i == n) return n;
    const size_t size = kw_wire_scale_size(scale_dtype);
    return i + kw__wire_scales_scalar(amax + i, n - i, qmax, scale_dtype, dst + i * size, s + i, inv + i);
}

/* 8 f32 values rounded to bf16 (integer round to nearest even, finite inputs), each in the low half of its lane. */
KW_AVX2 static inline __m256i kw__bf16_round8_avx2(__m256 v) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    return _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
}

/* Stores 8 f32 values as f32 or as bf16 (kw__bf16_round8_avx2). */
KW_AVX2 static inline void kw__store8_avx2(void *out, uint32_t out_dtype, uint32_t i, __m256 v) {
    if (out_dtype == KW_WIRE_DTYPE_F32) {
        _mm256_storeu_ps((float *)out + i, v);
        return;
    }
    const __m256i r = kw__bf16_round8_avx2(v);
    _mm_storeu_si128((__m128i *)((uint16_t *)out + i),
                     _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)));
}

/* kw__store8_avx2 of 16 values (v0: elements i..i+7, v1: i+8..i+15), one 32-byte store. To bf16 the rounding runs
 * on 16-bit halves, 16 values a vector: the high halves H and the low halves L of the f32 bits split by one byte
 * shuffle per vector and two 64-bit unpacks, then H + 1 where L + (H & 1) > 0x8000 (with saturation: the integer
 * round to nearest even of kw__bf16_round8_avx2, finite inputs), one 64-bit permute into element order: ten
 * operations per 16 values where two kw__bf16_round8_avx2, a pack and the permute take twelve. */
KW_AVX2 static inline void kw__store16_avx2(void *out, uint32_t out_dtype, uint32_t i, __m256 v0, __m256 v1) {
    if (out_dtype == KW_WIRE_DTYPE_F32) {
        _mm256_storeu_ps((float *)out + i, v0);
        _mm256_storeu_ps((float *)out + i + 8, v1);
        return;
    }
    /* per 128-bit lane: the four high halves, then the four low halves */
    const __m256i split = _mm256_setr_epi8(2, 3, 6, 7, 10, 11, 14, 15, 0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14,
                                           15, 0, 1, 4, 5, 8, 9, 12, 13);
    const __m256i a = _mm256_shuffle_epi8(_mm256_castps_si256(v0), split);
    const __m256i b = _mm256_shuffle_epi8(_mm256_castps_si256(v1), split);
    const __m256i hi = _mm256_unpacklo_epi64(a, b), lo = _mm256_unpackhi_epi64(a, b); /* values 0-3 8-11 | 4-7 12-15 */
    const __m256i x = _mm256_adds_epu16(lo, _mm256_and_si256(hi, _mm256_set1_epi16(1)));
    const __m256i up = _mm256_cmpeq_epi16(_mm256_max_epu16(x, _mm256_set1_epi16((short)0x8001)), x); /* x > 0x8000 */
    _mm256_storeu_si256((__m256i *)((uint16_t *)out + i), _mm256_permute4x64_epi64(_mm256_sub_epi16(hi, up), 0xd8));
}

/* 8 FP8 codes (int32 0..255) as f32, exactly kw_e4m3_to_f32 / kw_e5m2_to_f32 (NaN and Inf codes too); *bad gets
 * all ones in the lanes of codes that are not finite. The code goes to the top byte and an arithmetic shift puts its
 * exponent and mantissa fields where an f32's low exponent bits and top mantissa bits are (the sign's copies between
 * masked off): that f32 is the value times 2^(bias - 127), so one exact multiply by 2^(127 - bias) gives the value.
 * A subnormal code is an f32 subnormal there, which MXCSR.DAZ (a host built with -ffast-math) reads as 0: the callers
 * redo such lanes by kw__fp8_subnormals8_avx2 when kw__fp8_has_subnormal16 finds one among 16 codes (rare in real rows:
 * below 2^-6 of the largest code's 448, e4m3). */
KW_AVX2 static inline __m256 kw__fp8_values8_avx2(__m256i c, int e4m3, __m256i *bad) {
    const __m256i t = _mm256_slli_epi32(c, 24);
    __m256i v, special, special_bits;
    if (e4m3) { /* 0x7f: NaN; t | 0x7fc00000 is the sign and 0x7fc00000 (the magnitude's bits lie inside) */
        v = _mm256_and_si256(_mm256_srai_epi32(t, 4), _mm256_set1_epi32((int)0x87f00000u));
        special = _mm256_cmpeq_epi32(_mm256_and_si256(c, _mm256_set1_epi32(0x7f)), _mm256_set1_epi32(0x7f));
        special_bits = _mm256_or_si256(t, _mm256_set1_epi32(0x7fc00000));
    } else { /* exponent 31: Inf (mantissa 0) or NaN: the sign and 0x7f800000, 0x00400000 added for a NaN */
        v = _mm256_and_si256(_mm256_srai_epi32(t, 3), _mm256_set1_epi32((int)0x8fe00000u));
        special = _mm256_cmpeq_epi32(_mm256_and_si256(c, _mm256_set1_epi32(0x7c)), _mm256_set1_epi32(0x7c));
        const __m256i m = _mm256_and_si256(c, _mm256_set1_epi32(3));
        special_bits = _mm256_or_si256(_mm256_or_si256(t, _mm256_set1_epi32(0x7f800000)),
                                       _mm256_slli_epi32(_mm256_min_epu32(m, _mm256_set1_epi32(1)), 22));
    }
    v = _mm256_blendv_epi8(v, special_bits, special);
    *bad = _mm256_or_si256(*bad, special);
    return _mm256_mul_ps(_mm256_castsi256_ps(v), _mm256_set1_ps(e4m3 ? 0x1p120f : 0x1p112f));
}

/* Nonzero if one of 16 FP8 codes is subnormal (exponent 0, mantissa not 0): exponent-0 bytes all zero bytes
 * (sign aside) is ptest's carry flag. */
KW_AVX2 static inline int kw__fp8_has_subnormal16(__m128i b, int e4m3) {
    const __m128i z = _mm_setzero_si128();
    const __m128i e0 = _mm_cmpeq_epi8(_mm_and_si128(b, _mm_set1_epi8(e4m3 ? 0x78 : 0x7c)), z);
    return !_mm_testc_si128(_mm_cmpeq_epi8(_mm_and_si128(b, _mm_set1_epi8(0x7f)), z), e0);
}

/* v (kw__fp8_values8_avx2 of the codes c) with its exponent-0 lanes the sign ORed into the mantissa field m times
 * 2^(1 - bias - mbits), exact, and never an f32 subnormal on the way (what DAZ would read as 0). */
KW_AVX2 static inline __m256 kw__fp8_subnormals8_avx2(__m256i c, int e4m3, __m256 v) {
    const __m256i sub =
        _mm256_cmpeq_epi32(_mm256_and_si256(c, _mm256_set1_epi32(e4m3 ? 0x78 : 0x7c)), _mm256_setzero_si256());
    const __m256 mag = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_and_si256(c, _mm256_set1_epi32(e4m3 ? 7 : 3))),
                                     _mm256_set1_ps(e4m3 ? 0x1p-9f : 0x1p-16f));
    const __m256i sign = _mm256_and_si256(_mm256_slli_epi32(c, 24), _mm256_set1_epi32(INT32_MIN));
    return _mm256_blendv_ps(v, _mm256_or_ps(mag, _mm256_castsi256_ps(sign)), _mm256_castsi256_ps(sub));
}

/* Symmetric int3 or int2 rows: sign-extended fields times s; the field 2^(b-1) (the code -2^(b-1)) is reserved. */
KW_AVX2 static inline __attribute__((always_inline)) int
kw__dequantize_small_avx2(const uint8_t *src, uint32_t bits, uint32_t n, float s, void *out, uint32_t out_dtype) {
    const __m256 vs = _mm256_set1_ps(s);
    const __m256i half = _mm256_set1_epi32(1 << (bits - 1));
    __m256i bad = _mm256_setzero_si256();
    for (uint32_t i = 0; i < n; i += 8) {
        const __m256i f = kw__fields8_get_avx2(src + (size_t)i / 8 * bits, bits);
        bad = _mm256_or_si256(bad, _mm256_cmpeq_epi32(f, half));
        const __m256i q = _mm256_sub_epi32(_mm256_xor_si256(f, half), half);
        kw__store8_avx2(out, out_dtype, i, _mm256_mul_ps(_mm256_cvtepi32_ps(q), vs));
    }
    return _mm256_movemask_epi8(bad) ? KW_E_WIRE_VALUE : 0;
}

KW_AVX2 static inline __attribute__((always_inline)) void
kw__dequantize_affine_row_avx2(const uint8_t *src, uint32_t bits, uint32_t n, const float *s, const float *z,
                               uint32_t shift, void *out, uint32_t out_dtype) {
    for (uint32_t i = 0; i < n; i += 8) {
        const __m256 q = _mm256_cvtepi32_ps(kw__fields8_get_avx2(src + (size_t)i / 8 * bits, bits));
        kw__store8_avx2(out, out_dtype, i,
                        _mm256_add_ps(_mm256_mul_ps(q, kw__unit8_avx2(s, i, shift)), kw__unit8_avx2(z, i, shift)));
    }
}

KW_AVX2 static void kw__dequantize_affine_avx2(const uint8_t *src, uint32_t bits, uint32_t n, const float *s,
                                               const float *z, uint32_t shift, void *out, uint32_t out_dtype) {
    if (n % 8 != 0 || shift == 1 || shift == 2) {
        kw__wire_dequantize_affine_scalar(src, bits, n, s, z, shift, out, out_dtype);
        return;
    }
    switch (bits) {
    case 2:
        kw__dequantize_affine_row_avx2(src, 2, n, s, z, shift, out, out_dtype);
        break;
    case 3:
        kw__dequantize_affine_row_avx2(src, 3, n, s, z, shift, out, out_dtype);
        break;
    case 4:
        kw__dequantize_affine_row_avx2(src, 4, n, s, z, shift, out, out_dtype);
        break;
    case 6:
        kw__dequantize_affine_row_avx2(src, 6, n, s, z, shift, out, out_dtype);
        break;
    default:
        kw__dequantize_affine_row_avx2(src, 8, n, s, z, shift, out, out_dtype);
        break;
    }
}

/* int4 and nf4 rows to bf16, 64 values per step (n a multiple of 32): a row has only 16 distinct outputs, so the
 * 16 values of the codes 0..15 are computed as the 8-wide path computes them (fl32(q * s) or fl32(nf4[c] * s), rounded
 * like kw__store8_avx2) into a table whose low and high bytes two pshufb look up per nibble; byte unpacks then
 * interleave the even (low nibble) and odd elements' words, and 128-bit lane permutes put the 64 words in order. */
KW_AVX2 static inline __attribute__((always_inline)) int
kw__dequantize_nib_bf16_avx2(uint32_t codec, const uint8_t *src, uint32_t n, float s, uint16_t *out) {
    const __m256 vs = _mm256_set1_ps(s);
    __m256 v0, v1;
    if (codec == KW_WIRE_CODEC_NF4) {
        v0 = _mm256_setr_ps(kw_wire_nf4_value(0), kw_wire_nf4_value(1), kw_wire_nf4_value(2), kw_wire_nf4_value(3),
                            kw_wire_nf4_value(4), kw_wire_nf4_value(5), kw_wire_nf4_value(6), kw_wire_nf4_value(7));
        v1 = _mm256_setr_ps(kw_wire_nf4_value(8), kw_wire_nf4_value(9), kw_wire_nf4_value(10), kw_wire_nf4_value(11),
                            kw_wire_nf4_value(12), kw_wire_nf4_value(13), kw_wire_nf4_value(14), kw_wire_nf4_value(15));
    } else { /* two's complement nibbles: 0..7, then -8..-1 */
        v0 = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
        v1 = _mm256_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1);
    }
    uint16_t tab[16];
    kw__store8_avx2(tab, KW_WIRE_DTYPE_BF16, 0, _mm256_mul_ps(v0, vs));
    kw__store8_avx2(tab, KW_WIRE_DTYPE_BF16, 8, _mm256_mul_ps(v1, vs));
    const __m128i t = _mm_loadu_si128((const __m128i *)tab), t1 = _mm_loadu_si128((const __m128i *)(tab + 8));
    const __m128i split = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    const __m128i a = _mm_shuffle_epi8(t, split), b = _mm_shuffle_epi8(t1, split); /* low bytes, then high bytes */
    const __m256i lo_bytes = _mm256_broadcastsi128_si256(_mm_unpacklo_epi64(a, b));
    const __m256i hi_bytes = _mm256_broadcastsi128_si256(_mm_unpackhi_epi64(a, b));
    const __m256i m4 = _mm256_set1_epi8(0x0f), eight = _mm256_set1_epi8(8);
    __m256i bad = _mm256_setzero_si256();
    for (uint32_t i = 0; i < n; i += 64) {
        const int half = n - i == 32; /* a last 32 values: one 128-bit lane, the other zeros (code 0, valid) */
        const __m256i w =
            half ? _mm256_inserti128_si256(_mm256_setzero_si256(), _mm_loadu_si128((const __m128i *)(src + i / 2)), 0)
                 : _mm256_loadu_si256((const __m256i *)(src + i / 2));
        const __m256i ev = _mm256_and_si256(w, m4), od = _mm256_and_si256(_mm256_srli_epi16(w, 4), m4);
        bad = _mm256_or_si256(bad, _mm256_or_si256(_mm256_cmpeq_epi8(ev, eight), _mm256_cmpeq_epi8(od, eight)));
        const __m256i el = _mm256_shuffle_epi8(lo_bytes, ev), eh = _mm256_shuffle_epi8(hi_bytes, ev);
        const __m256i ol = _mm256_shuffle_epi8(lo_bytes, od), oh = _mm256_shuffle_epi8(hi_bytes, od);
        /* words of the even and odd elements, then both interleaved: per 128-bit lane (16 bytes, 32 elements) */
        const __m256i e0 = _mm256_unpacklo_epi8(el, eh), e1 = _mm256_unpackhi_epi8(el, eh);
        const __m256i o0 = _mm256_unpacklo_epi8(ol, oh), o1 = _mm256_unpackhi_epi8(ol, oh);
        const __m256i w0 = _mm256_unpacklo_epi16(e0, o0), w1 = _mm256_unpackhi_epi16(e0, o0);
        const __m256i w2 = _mm256_unpacklo_epi16(e1, o1), w3 = _mm256_unpackhi_epi16(e1, o1);
        __m256i *o = (__m256i *)(out + i);
        _mm256_storeu_si256(o, _mm256_permute2x128_si256(w0, w1, 0x20));
        _mm256_storeu_si256(o + 1, _mm256_permute2x128_si256(w2, w3, 0x20));
        if (half) break;
        _mm256_storeu_si256(o + 2, _mm256_permute2x128_si256(w0, w1, 0x31));
        _mm256_storeu_si256(o + 3, _mm256_permute2x128_si256(w2, w3, 0x31));
    }
    return codec == KW_WIRE_CODEC_INT4 && !_mm256_testz_si256(bad, bad) ? KW_E_WIRE_VALUE : 0;
}

/* kw__wire_kernels.dequantize; inlined with a constant codec and output dtype by kw__dequantize_rows_avx2. daz:
 * MXCSR.DAZ may be set, so fp8 codes are checked for subnormal ones (kw__fp8_has_subnormal16); 0 only where the caller
 * read MXCSR (stmxcsr costs about as much as a short row's decode, so the rows kernels read it once per call and the
 * one-row kernel checks the codes instead). */
KW_AVX2 static inline __attribute__((always_inline)) int kw__dequantize_avx2_inl(uint32_t codec, const uint8_t *src,
                                                                                 uint32_t n, float s, void *out,
                                                                                 uint32_t out_dtype, int daz) {
    if (n % 8 == 0 && codec == KW_WIRE_CODEC_INT3) return kw__dequantize_small_avx2(src, 3, n, s, out, out_dtype);
    if (n % 8 == 0 && codec == KW_WIRE_CODEC_INT2) return kw__dequantize_small_avx2(src, 2, n, s, out, out_dtype);
    if (n % 16 != 0 || kw_wire_codec_is_passthrough(codec) || kw_wire_codec_bits(codec) == 0 ||
        codec == KW_WIRE_CODEC_INT3 || codec == KW_WIRE_CODEC_INT2)
        return kw__wire_dequantize_scalar(codec, src, n, s, out, out_dtype);
    if ((codec == KW_WIRE_CODEC_INT4 || codec == KW_WIRE_CODEC_NF4) && out_dtype == KW_WIRE_DTYPE_BF16 && n % 32 == 0)
        return kw__dequantize_nib_bf16_avx2(codec, src, n, s, (uint16_t *)out);
    const __m256 vs = _mm256_set1_ps(s);
    __m128i bad = _mm_setzero_si128();
    __m256i bad8 = _mm256_setzero_si256();
    switch (codec) {
    case KW_WIRE_CODEC_INT8: { /* the reserved code -128 is the only one the byte minimum can reach -128 with */
        __m128i lo = _mm_set1_epi8(127);
        for (uint32_t i = 0; i < n; i += 16) {
            lo = _mm_min_epi8(lo, _mm_loadu_si128((const __m128i *)(src + i)));
            /* each half widened straight from memory (no byte shift of b) */
            const __m128i b0 = _mm_loadl_epi64((const __m128i *)(src + i)),
                          b1 = _mm_loadl_epi64((const __m128i *)(src + i + 8));
            kw__store16_avx2(out, out_dtype, i, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b0)), vs),
                             _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b1)), vs));
        }
        bad = _mm_cmpeq_epi8(lo, _mm_set1_epi8((char)0x80));
        break;
    }
    case KW_WIRE_CODEC_INT4:
    case KW_WIRE_CODEC_NF4: {
        const __m128i lo4 = _mm_set1_epi16(0x000f), hi4 = _mm_set1_epi16(0x00f0), eight = _mm_set1_epi8(8);
        const __m256 table_lo =
            _mm256_setr_ps(kw_wire_nf4_value(0), kw_wire_nf4_value(1), kw_wire_nf4_value(2), kw_wire_nf4_value(3),
                           kw_wire_nf4_value(4), kw_wire_nf4_value(5), kw_wire_nf4_value(6), kw_wire_nf4_value(7));
        const __m256 table_hi =
            _mm256_setr_ps(kw_wire_nf4_value(8), kw_wire_nf4_value(9), kw_wire_nf4_value(10), kw_wire_nf4_value(11),
                           kw_wire_nf4_value(12), kw_wire_nf4_value(13), kw_wire_nf4_value(14), kw_wire_nf4_value(15));
        for (uint32_t i = 0; i < n; i += 16) {
            /* 8 bytes -> 16 nibbles in element order, one per byte */
            const __m128i w = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(src + i / 2)));
            const __m128i nib = _mm_or_si128(_mm_and_si128(w, lo4), _mm_slli_epi16(_mm_and_si128(w, hi4), 4));
            for (uint32_t half = 0; half < 2; ++half) {
                const __m128i part = half ? _mm_srli_si128(nib, 8) : nib;
                __m256 v;
                if (codec == KW_WIRE_CODEC_NF4) { /* a 16-entry table: two 8-entry permutes, bit 3 picks */
                    const __m256i idx = _mm256_cvtepu8_epi32(part);
                    v = _mm256_blendv_ps(_mm256_permutevar8x32_ps(table_lo, idx),
                                         _mm256_permutevar8x32_ps(table_hi, idx),
                                         _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
                } else {
                    const __m128i q = _mm_sub_epi8(_mm_xor_si128(part, eight), eight); /* sign-extend the nibble */
                    v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
                }
                kw__store8_avx2(out, out_dtype, i + 8 * half, _mm256_mul_ps(v, vs));
            }
            if (codec == KW_WIRE_CODEC_INT4) bad = _mm_or_si128(bad, _mm_cmpeq_epi8(nib, eight));
        }
        break;
    }
    case KW_WIRE_CODEC_INT6: {
        /* 12 bytes -> 16 codes: lane k of each 128-bit half holds the 3-byte word of its four codes, shifted by 6k */
        const __m256i spread_lo = _mm256_setr_epi8(0, 1, 2, -1, 0, 1, 2, -1, 0, 1, 2, -1, 0, 1, 2, -1, 3, 4, 5, -1, 3,
                                                   4, 5, -1, 3, 4, 5, -1, 3, 4, 5, -1);
        const __m256i spread_hi = _mm256_add_epi8(spread_lo, _mm256_set1_epi32(0x00060606)); /* bytes 6..11 */
        /* code k of a lane to the top 6 bits, then an arithmetic shift: the signed code */
        const __m256i shifts = _mm256_setr_epi32(26, 20, 14, 8, 26, 20, 14, 8);
        const __m256i reserved = _mm256_set1_epi32(-32);
        for (uint32_t i = 0; i < n; i += 16) {
            const uint8_t *p = src + i / 8 * 6;
            __m128i w12; /* 16 bytes are read while at least 8 more codes follow in the row, else exactly 12 */
            if (i + 16 < n) {
                w12 = _mm_loadu_si128((const __m128i *)p);
            } else {
                int32_t last;
                memcpy(&last, p + 8, 4);
                w12 = _mm_insert_epi32(_mm_loadl_epi64((const __m128i *)p), last, 2);
            }
            const __m256i b = _mm256_broadcastsi128_si256(w12);
            __m256 v[2];
            for (uint32_t half = 0; half < 2; ++half) {
                const __m256i lanes = _mm256_shuffle_epi8(b, half ? spread_hi : spread_lo);
                const __m256i q = _mm256_srai_epi32(_mm256_sllv_epi32(lanes, shifts), 26);
                bad8 = _mm256_or_si256(bad8, _mm256_cmpeq_epi32(q, reserved));
                v[half] = _mm256_mul_ps(_mm256_cvtepi32_ps(q), vs);
            }
            kw__store16_avx2(out, out_dtype, i, v[0], v[1]);
        }
        break;
    }
    default: { /* E4M3, E5M2 */
        const int e4m3 = codec == KW_WIRE_CODEC_E4M3;
        if (fabsf(s) < (e4m3 ? 0x1p8f : 0x1p16f)) {
            /* kw__fp8_values8_avx2 without its NaN/Inf lanes, and one multiply: s 2^(127 - bias) is exact and finite
             * here, and the shifted code (the value times 2^(bias - 127), exact) times it is the product's one
             * rounding, as fl32(value * s). A row with a NaN or Inf code is done again below; 16 codes with a
             * subnormal one are done the exact way (kw__fp8_subnormals8_avx2, for DAZ). */
            const __m256 vk = _mm256_set1_ps(s * (e4m3 ? 0x1p120f : 0x1p112f));
            const __m256i mask = _mm256_set1_epi32(e4m3 ? (int)0x87f00000u : (int)0x8fe00000u);
            const __m128i sm = _mm_set1_epi8(e4m3 ? 0x7f : 0x7c);
            __m128i special = _mm_setzero_si128();
#define KW__FP8(c)                                                                                                     \
    _mm256_mul_ps(                                                                                                     \
        _mm256_castsi256_ps(_mm256_and_si256(_mm256_srai_epi32(_mm256_slli_epi32(c, 24), e4m3 ? 4 : 3), mask)), vk)
            for (uint32_t i = 0; i < n; i += 16) {
                const __m128i b = _mm_loadu_si128((const __m128i *)(src + i));
                special = _mm_or_si128(special, _mm_cmpeq_epi8(_mm_and_si128(b, sm), sm));
                const __m256i c0 = _mm256_cvtepu8_epi32(b), c1 = _mm256_cvtepu8_epi32(_mm_srli_si128(b, 8));
                if (daz && kw__fp8_has_subnormal16(b, e4m3)) {
                    const __m256 v0 = kw__fp8_subnormals8_avx2(c0, e4m3, kw__fp8_values8_avx2(c0, e4m3, &bad8));
                    const __m256 v1 = kw__fp8_subnormals8_avx2(c1, e4m3, kw__fp8_values8_avx2(c1, e4m3, &bad8));
                    kw__store16_avx2(out, out_dtype, i, _mm256_mul_ps(v0, vs), _mm256_mul_ps(v1, vs));
                } else {
                    kw__store16_avx2(out, out_dtype, i, KW__FP8(c0), KW__FP8(c1));
                }
            }
#undef KW__FP8
            if (_mm_testz_si128(special, special)) break;
        }
        for (uint32_t i = 0; i < n; i += 16) {
            const __m128i b = _mm_loadu_si128((const __m128i *)(src + i));
            const __m256i c0 = _mm256_cvtepu8_epi32(b), c1 = _mm256_cvtepu8_epi32(_mm_srli_si128(b, 8));
            __m256 v0 = kw__fp8_values8_avx2(c0, e4m3, &bad8), v1 = kw__fp8_values8_avx2(c1, e4m3, &bad8);
            if (daz && kw__fp8_has_subnormal16(b, e4m3)) {
                v0 = kw__fp8_subnormals8_avx2(c0, e4m3, v0);
                v1 = kw__fp8_subnormals8_avx2(c1, e4m3, v1);
            }
            kw__store16_avx2(out, out_dtype, i, _mm256_mul_ps(v0, vs), _mm256_mul_ps(v1, vs));
        }
        break;
    }
    }
    return _mm_movemask_epi8(bad) || _mm256_movemask_epi8(bad8) ? KW_E_WIRE_VALUE : 0;
}

KW_AVX2 static int kw__dequantize_avx2(uint32_t codec, const uint8_t *src, uint32_t n, float s, void *out,
                                       uint32_t out_dtype) {
    return kw__dequantize_avx2_inl(codec, src, n, s, out, out_dtype, 1);
}

/* One body per v1 codec and output dtype of a rows kernel (kw__dequantize_rows_avx2 and _avx512): DEQ(codec, src, n,
 * s, out, out_dtype) inlined with constants, row r's codes at src + r rb, its output at out[r]. */
#define KW__DEQUANTIZE_ROWS(DEQ, FALLBACK)                                                                             \
    const size_t rb = (size_t)n * kw_wire_codec_bits(codec) / 8;                                                       \
    int bad = 0;                                                                                                       \
    const int f32 = out_dtype == KW_WIRE_DTYPE_F32;                                                                    \
    const int daz = (codec == KW_WIRE_CODEC_E4M3 || codec == KW_WIRE_CODEC_E5M2) && (_mm_getcsr() & 0x40);             \
    switch (codec * 2 + (uint32_t)f32) {                                                                               \
        KW__DEQ_CASE(DEQ, KW_WIRE_CODEC_INT8)                                                                          \
        KW__DEQ_CASE(DEQ, KW_WIRE_CODEC_INT4)                                                                          \
        KW__DEQ_CASE(DEQ, KW_WIRE_CODEC_INT6)                                                                          \
        KW__DEQ_CASE(DEQ, KW_WIRE_CODEC_NF4)                                                                           \
        KW__DEQ_CASE_FP8(DEQ, KW_WIRE_CODEC_E4M3)                                                                      \
        KW__DEQ_CASE_FP8(DEQ, KW_WIRE_CODEC_E5M2)                                                                      \
    default:                                                                                                           \
        for (uint32_t r = 0; r < n_rows; ++r)                                                                          \
            bad |= FALLBACK(codec, src + r * rb, n, s[r], out[r], out_dtype);                                          \
        break;                                                                                                         \
    }                                                                                                                  \
    return bad ? KW_E_WIRE_VALUE : 0
#define KW__DEQ_CASE(DEQ, C)                                                                                           \
    case (C)*2:                                                                                                        \
        for (uint32_t r = 0; r < n_rows; ++r)                                                                          \
            bad |= DEQ(C, src + r * rb, n, s[r], out[r], KW_WIRE_DTYPE_BF16, 0);                                       \
        break;                                                                                                         \
    case (C)*2 + 1:                                                                                                    \
        for (uint32_t r = 0; r < n_rows; ++r)                                                                          \
            bad |= DEQ(C, src + r * rb, n, s[r], out[r], KW_WIRE_DTYPE_F32, 0);                                        \
        break;
/* KW__DEQ_CASE for the fp8 codecs: the rows' loop without the subnormal-code check (DAZ clear: the shift trick is
 * exact), or with it. */
#define KW__DEQ_CASE_FP8(DEQ, C)                                                                                       \
    case (C)*2:                                                                                                        \
        KW__DEQ_ROWS_DAZ(DEQ, C, KW_WIRE_DTYPE_BF16)                                                                   \
    case (C)*2 + 1:                                                                                                    \
        KW__DEQ_ROWS_DAZ(DEQ, C, KW_WIRE_DTYPE_F32)
#define KW__DEQ_ROWS_DAZ(DEQ, C, DT)                                                                                   \
    if (daz)                                                                                                           \
        for (uint32_t r = 0; r < n_rows; ++r)                                                                          \
            bad |= DEQ(C, src + r * rb, n, s[r], out[r], DT, 1);                                                       \
    else                                                                                                               \
        for (uint32_t r = 0; r < n_rows; ++r)                                                                          \
            bad |= DEQ(C, src + r * rb, n, s[r], out[r], DT, 0);                                                       \
    break;

/* kw__wire_kernels.dequantize_rows: kw__dequantize_avx2 row by row, its body inlined for each v1 codec and output
 * dtype (the constants and the dispatch out of the rows' loop). */
KW_AVX2 static int kw__dequantize_rows_avx2(uint32_t codec, const uint8_t *src, uint32_t n_rows, uint32_t n,
                                            const float *s, void *const *out, uint32_t out_dtype) {
    KW__DEQUANTIZE_ROWS(kw__dequantize_avx2_inl, kw__dequantize_avx2);
}

/* 8 f32 values as bf16, exactly kw_f32_to_bf16: integer round to nearest even, a NaN quieted with its sign kept. */
KW_AVX2 static inline __m128i kw__bf16_8_avx2(__m256 v) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
    const __m256i nan =
        _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)), _mm256_set1_epi32(0x7f800000));
    r = _mm256_blendv_epi8(r, _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40)), nan);
    return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
}

/* Stores a rotated f32 row x (D values, a multiple of 8) at dst in dst_dtype (kw__wire_kernels.rotate). */
KW_AVX2 static void kw__rotate_store_avx2(const float *x, void *dst, uint32_t dst_dtype, uint32_t D) {
    if (dst_dtype == KW_WIRE_DTYPE_F32) {
        if (dst != x) memcpy(dst, x, (size_t)D * 4);
    } else if (dst_dtype == KW_WIRE_DTYPE_BF16) {
        for (uint32_t i = 0; i < D; i += 8)
            _mm_storeu_si128((__m128i *)((uint16_t *)dst + i), kw__bf16_8_avx2(_mm256_loadu_ps(x + i)));
    } else {
        for (uint32_t i = 0; i < D; ++i)
            ((uint16_t *)dst)[i] = kw_f32_to_f16(x[i]);
    }
}

/* The rest of a rotation once the stages below len are done in x (D a multiple of 8): the stages len, 2 len, ...,
 * D / 2 on whole vectors, the inverse's signs and scale, and the store (kw__wire_kernels.rotate). */
KW_AVX2 static void kw__rotate_finish_avx2(float *x, uint32_t D, uint32_t len, const float *sx, int inverse, void *dst,
                                           uint32_t dst_dtype) {
    for (; len < D; len <<= 1)
        for (uint32_t i = 0; i < D; i += len << 1)
            for (uint32_t j = i; j < i + len; j += 8) {
                const __m256 a = _mm256_loadu_ps(x + j), b = _mm256_loadu_ps(x + j + len);
                _mm256_storeu_ps(x + j, _mm256_add_ps(a, b));
                _mm256_storeu_ps(x + j + len, _mm256_sub_ps(a, b));
            }
    if (inverse)
        for (uint32_t i = 0; i < D; i += 8)
            _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(sx + i)));
    kw__rotate_store_avx2(x, dst, dst_dtype, D);
}

/* The 3 butterfly stages len = 1, 2, 4 inside one 8-lane vector: the partner t of each lane permuted in, a + b = v + t
 * in the low lanes of each 2 len block and a - b = t - v in the high ones. */
KW_AVX2 static inline __m256 kw__rotate_in8_avx2(__m256 v) {
    __m256 t = _mm256_permute_ps(v, 0xb1);
    v = _mm256_blend_ps(_mm256_add_ps(v, t), _mm256_sub_ps(t, v), 0xaa);
    t = _mm256_permute_ps(v, 0x4e);
    v = _mm256_blend_ps(_mm256_add_ps(v, t), _mm256_sub_ps(t, v), 0xcc);
    t = _mm256_permute2f128_ps(v, v, 0x01);
    return _mm256_blend_ps(_mm256_add_ps(v, t), _mm256_sub_ps(t, v), 0xf0);
}

/* kw__rotate_regs_avx2 and kw__rotate_regs_avx512: a whole row of D = W nv values (nv a constant 1..16 where they
 * are inlined) in registers: the in-vector stages per vector (IN), the longer ones between vectors (stage len = W l
 * pairs vector j with j + l), the inverse's factors and the store to f32 or bf16 (dst may be src); each output the same
 * single f32 operation as kw__wire_rotate_row's. One body for both ISAs: VEC has W lanes, LOAD widens W inputs,
 * STORE_BF16 rounds W values to bf16 at a uint16_t pointer. */
#define KW__ROTATE_REGS(NAME, ATTR, VEC, W, LOAD, IN, STORE_BF16, SFX)                                                 \
    ATTR static inline __attribute__((always_inline)) void NAME(const void *src, uint32_t src_dtype, void *dst,        \
                                                                uint32_t dst_dtype, const float *sx, int inverse,      \
                                                                uint32_t nv) {                                         \
        VEC v[16];                                                                                                     \
        _Pragma("GCC unroll 16") for (uint32_t k = 0; k < nv; ++k) {                                                   \
            VEC a = LOAD(src, src_dtype, W * k);                                                                       \
            if (!inverse) a = _mm##SFX##_mul_ps(a, _mm##SFX##_loadu_ps(sx + W * k));                                   \
            v[k] = IN(a);                                                                                              \
        }                                                                                                              \
        _Pragma("GCC unroll 4") for (uint32_t len = 1; len < nv; len <<= 1)                                            \
            _Pragma("GCC unroll 16") for (uint32_t j = 0; j < nv; ++j) {                                               \
            if (j & len) continue; /* j: the low half of a pair; & 15 changes nothing (j + len < nv) but quiets GCC */ \
            const VEC a = v[j], b = v[(j + len) & 15];                                                                 \
            v[j] = _mm##SFX##_add_ps(a, b);                                                                            \
            v[(j + len) & 15] = _mm##SFX##_sub_ps(a, b);                                                               \
        }                                                                                                              \
        _Pragma("GCC unroll 16") for (uint32_t k = 0; k < nv; ++k) {                                                   \
            const VEC a = inverse ? _mm##SFX##_mul_ps(v[k], _mm##SFX##_loadu_ps(sx + W * k)) : v[k];                   \
            if (dst_dtype == KW_WIRE_DTYPE_F32)                                                                        \
                _mm##SFX##_storeu_ps((float *)dst + W * k, a);                                                         \
            else                                                                                                       \
                STORE_BF16((uint16_t *)dst + W * k, a);                                                                \
        }                                                                                                              \
    }                                                                                                                  \
    /* the row of D = W, 2 W, 4 W, 8 W or 16 W values, each with its constant nv */                                    \
    ATTR static void NAME##_row(const void *src, uint32_t src_dtype, void *dst, uint32_t dst_dtype, const float *sx,   \
                                int inverse, uint32_t D) {                                                             \
        switch (D / W) {                                                                                               \
        case 1:                                                                                                        \
            NAME(src, src_dtype, dst, dst_dtype, sx, inverse, 1);                                                      \
            return;                                                                                                    \
        case 2:                                                                                                        \
            NAME(src, src_dtype, dst, dst_dtype, sx, inverse, 2);                                                      \
            return;                                                                                                    \
        case 4:                                                                                                        \
            NAME(src, src_dtype, dst, dst_dtype, sx, inverse, 4);                                                      \
            return;                                                                                                    \
        case 8:                                                                                                        \
            NAME(src, src_dtype, dst, dst_dtype, sx, inverse, 8);                                                      \
            return;                                                                                                    \
        default:                                                                                                       \
            NAME(src, src_dtype, dst, dst_dtype, sx, inverse, 16);                                                     \
            return;                                                                                                    \
        }                                                                                                              \
    }

KW_AVX2 static inline void kw__store_bf16_8_avx2(uint16_t *dst, __m256 v) {
    _mm_storeu_si128((__m128i *)dst, kw__bf16_8_avx2(v));
}

KW__ROTATE_REGS(kw__rotate_regs_avx2, KW_AVX2, __m256, 8, kw__load8_avx2, kw__rotate_in8_avx2, kw__store_bf16_8_avx2,
                256)

/* kw__wire_kernels.rotate: the butterflies of kw__wire_rotate_row in the same stages, each output the same single f32
 * addition a + b or subtraction a - b of the same two values (so the same bits in any order within a stage). Stages
 * len = 1, 2, 4 inside a vector: the partner t of each lane permuted in, a + b = v + t in the low lanes of each 2 len
 * block and a - b = t - v in the high ones; the longer stages add and subtract whole vectors. The row is worked on in
 * dst when that is f32, else in a buffer. */
KW_AVX2 static void kw__rotate_avx2(const void *src, uint32_t src_dtype, void *dst, uint32_t dst_dtype, uint32_t D,
                                    const float *sx, int inverse) {
    if (D < 8 || D > 4096 || src_dtype < KW_WIRE_DTYPE_BF16 || src_dtype > KW_WIRE_DTYPE_F32) {
        kw__wire_rotate_scalar(src, src_dtype, dst, dst_dtype, D, sx, inverse);
        return;
    }
    if (D <= 128 && dst_dtype != KW_WIRE_DTYPE_F16) { /* the row fits in the 16 registers: no pass through memory */
        kw__rotate_regs_avx2_row(src, src_dtype, dst, dst_dtype, sx, inverse, D);
        return;
    }
    float buf[4096];
    float *x = dst_dtype == KW_WIRE_DTYPE_F32 ? (float *)dst : buf;
    for (uint32_t i = 0; i < D; i += 8) {
        __m256 v = kw__load8_avx2(src, src_dtype, i);
        if (!inverse) v = _mm256_mul_ps(v, _mm256_loadu_ps(sx + i));
        _mm256_storeu_ps(x + i, kw__rotate_in8_avx2(v));
    }
    kw__rotate_finish_avx2(x, D, 8, sx, inverse, dst, dst_dtype);
}

/* 8 groups' folded |x| (16 u16 maxima each, f[j] for group j) reduced to their 8 maxima as f32 bit patterns, in
 * group order: a transposing tree of u16 maxima (128-bit halves of pairs, then 64-bit words, then 32-bit ones) leaves
 * group j's maximum in dword 4 (j % 2) + {0, 2, 1, 3}[j / 2], which one permute puts back in order. */
KW_AVX2 static inline __m256i kw__amax_tree8_avx2(const __m256i *f) {
    __m256i p[4];
    for (int i = 0; i < 4; ++i) /* lane L of p[i]: group 2i + L */
        p[i] = _mm256_max_epu16(_mm256_permute2x128_si256(f[2 * i], f[2 * i + 1], 0x20),
                                _mm256_permute2x128_si256(f[2 * i], f[2 * i + 1], 0x31));
    /* lane L: word 0 group L (q0) or 4 + L (q1), word 1 group 2 + L or 6 + L */
    const __m256i q0 = _mm256_max_epu16(_mm256_unpacklo_epi64(p[0], p[1]), _mm256_unpackhi_epi64(p[0], p[1]));
    const __m256i q1 = _mm256_max_epu16(_mm256_unpacklo_epi64(p[2], p[3]), _mm256_unpackhi_epi64(p[2], p[3]));
    const __m256i t0 = _mm256_max_epu16(q0, _mm256_shuffle_epi32(q0, 0xb1));
    const __m256i t1 = _mm256_max_epu16(q1, _mm256_shuffle_epi32(q1, 0xb1));
    const __m256i b = _mm256_blend_epi32(t0, t1, 0xaa); /* lane L: groups L, 4 + L, 2 + L, 6 + L */
    const __m256i m = _mm256_max_epu32(_mm256_and_si256(b, _mm256_set1_epi32(0xffff)), _mm256_srli_epi32(b, 16));
    return _mm256_slli_epi32(_mm256_permutevar8x32_epi32(m, _mm256_setr_epi32(0, 4, 2, 6, 1, 5, 3, 7)), 16);
}

/* The bf16 groups q .. of kw__amax_groups_avx2 (group q is chunk *c of row *r, per_row a row), 8 at a time while 8
 * are left, of gl values each: G, passed as a constant where the caller writes the loop out for groups of 64 (NF4's).
 * Returns the first group left, *r and *c moved on to it. */
KW_AVX2 static inline __attribute__((always_inline)) uint32_t
kw__amax_bf16_groups8_avx2(const uint8_t *const *rows, uint32_t per_row, uint32_t total, uint32_t gl, uint32_t q,
                           uint32_t *r, uint32_t *c, uint32_t *out) {
    const __m256i mask = _mm256_set1_epi16(0x7fff);
    __m256i f[8];
    for (; q + 8 <= total; q += 8) {
        for (int j = 0; j < 8; ++j) {
            const uint16_t *x = (const uint16_t *)rows[*r] + (size_t)*c * gl;
            __m256i m = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)x), mask);
            for (uint32_t i = 16; i < gl; i += 16)
                m = _mm256_max_epu16(m, _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + i)), mask));
            f[j] = m;
            if (++*c == per_row) *c = 0, ++*r;
        }
        _mm256_storeu_si256((__m256i *)(out + q), kw__amax_tree8_avx2(f));
    }
    return q;
}

/* kw__wire_kernels.amax_groups: bf16 groups of a multiple of 16 values 8 at a time (kw__amax_tree8_avx2), the rest one
 * group at a time. */
KW_AVX2 static void kw__amax_groups_avx2(const uint8_t *const *rows, uint32_t n_rows, uint32_t dtype, uint32_t D,
                                         uint32_t G, uint32_t *out) {
    const uint32_t per_row = D / G, total = n_rows * per_row;
    const size_t es = kw__wire_dtype_size(dtype);
    uint32_t q = 0, r = 0, c = 0; /* group q is chunk c of row r */
    if (dtype == KW_WIRE_DTYPE_BF16 && G % 16 == 0)
        q = G == 64 ? kw__amax_bf16_groups8_avx2(rows, per_row, total, 64u, q, &r, &c, out)
                    : kw__amax_bf16_groups8_avx2(rows, per_row, total, G, q, &r, &c, out);
    for (; q < total; ++q) {
        out[q] = kw__amax_avx2(rows[r] + (size_t)c * G * es, dtype, G);
        if (++c == per_row) c = 0, ++r;
    }
}

/* An ISA's quantize_groups and dequantize_groups for the cases without a kernel of their own: its row kernels QUANTIZE
 * and DEQUANTIZE called group by group (kw__quantize_each_<isa>, kw__dequantize_each_<isa>). */
#define KW__EACH_GROUP(ISA, ATTR, QUANTIZE, DEQUANTIZE)                                                                \
    ATTR static void kw__quantize_each_##ISA(uint32_t codec, const void *x, uint32_t dtype, uint32_t n, uint32_t G,    \
                                             const float *inv, uint8_t *dst) {                                         \
        const size_t es = kw__wire_dtype_size(dtype), chunk = (size_t)G * kw_wire_codec_bits(codec) / 8;               \
        for (uint32_t c = 0; c < n / G; ++c)                                                                           \
            QUANTIZE(codec, (const uint8_t *)x + (size_t)c * G * es, dtype, G, inv[c], dst + c * chunk);               \
    }                                                                                                                  \
    ATTR static int kw__dequantize_each_##ISA(uint32_t codec, const uint8_t *src, uint32_t n, uint32_t G,              \
                                              const float *s, void *out, uint32_t out_dtype) {                         \
        const size_t es = out_dtype == KW_WIRE_DTYPE_F32 ? 4 : 2, chunk = (size_t)G * kw_wire_codec_bits(codec) / 8;   \
        int bad = 0;                                                                                                   \
        for (uint32_t c = 0; c < n / G; ++c)                                                                           \
            bad |= DEQUANTIZE(codec, src + c * chunk, G, s[c], (uint8_t *)out + c * G * es, out_dtype) < 0;            \
        return bad ? KW_E_WIRE_VALUE : 0;                                                                              \
    }

KW__EACH_GROUP(avx2, KW_AVX2, kw__quantize_avx2, kw__dequantize_avx2)

/* int8 or int4 groups (G a multiple of 16) of a packed row in one loop, 16 values a step with their group's scale:
 * the steps of kw__dequantize_avx2's int8 and nibble cases (int4 by sign extension). int4 to bf16 with G % 32 == 0
 * does not come here: kw__dequantize_groups_avx2 builds the bf16 table of each group instead. codec and out_dtype are
 * constants where this is inlined. */
KW_AVX2 static inline __attribute__((always_inline)) int kw__dequantize_groups84_avx2(uint32_t codec,
                                                                                      const uint8_t *src, uint32_t n,
                                                                                      uint32_t G, const float *s,
                                                                                      void *out, uint32_t out_dtype) {
    const __m128i lo4 = _mm_set1_epi16(0x000f), hi4 = _mm_set1_epi16(0x00f0), eight = _mm_set1_epi8(8);
    const __m128i invalid = codec == KW_WIRE_CODEC_INT8 ? _mm_set1_epi8((char)0x80) : eight;
    __m128i bad = _mm_setzero_si128();
    __m256 vs = _mm256_set1_ps(s[0]);
    for (uint32_t i = 0, c = 0, k = 0; i < n; i += 16) {
        if (k == G) { /* the next group */
            k = 0;
            vs = _mm256_set1_ps(s[++c]);
        }
        k += 16;
        __m128i q;
        if (codec == KW_WIRE_CODEC_INT8) {
            q = _mm_loadu_si128((const __m128i *)(src + i));
        } else { /* 8 bytes -> 16 nibbles in element order, one per byte, then sign-extended */
            const __m128i w = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(src + i / 2)));
            q = _mm_or_si128(_mm_and_si128(w, lo4), _mm_slli_epi16(_mm_and_si128(w, hi4), 4));
        }
        bad = _mm_or_si128(bad, _mm_cmpeq_epi8(q, invalid));
        if (codec == KW_WIRE_CODEC_INT4) q = _mm_sub_epi8(_mm_xor_si128(q, eight), eight);
        kw__store16_avx2(out, out_dtype, i, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), vs),
                         _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q, 8))), vs));
    }
    return _mm_movemask_epi8(bad) ? KW_E_WIRE_VALUE : 0;
}

/* kw__wire_kernels.dequantize_groups: int4 groups of a multiple of 32 values to bf16 by the per-group bf16 table
 * (kw__dequantize_nib_bf16_avx2), other int8 and int4 groups of a multiple of 16 values by
 * kw__dequantize_groups84_avx2, the rest group by group. */
KW_AVX2 static int kw__dequantize_groups_avx2(uint32_t codec, const uint8_t *src, uint32_t n, uint32_t G,
                                              const float *s, void *out, uint32_t out_dtype) {
    if ((codec != KW_WIRE_CODEC_INT8 && codec != KW_WIRE_CODEC_INT4) || G % 16 != 0)
        return kw__dequantize_each_avx2(codec, src, n, G, s, out, out_dtype);
    const int f32 = out_dtype == KW_WIRE_DTYPE_F32;
    if (codec == KW_WIRE_CODEC_INT4 && !f32 && G % 32 == 0) { /* the bf16 table of each group's 16 values */
        int bad = 0;
        for (uint32_t c = 0; c < n / G; ++c)
            bad |= kw__dequantize_nib_bf16_avx2(KW_WIRE_CODEC_INT4, src + (size_t)c * G / 2, G, s[c],
                                                (uint16_t *)out + (size_t)c * G);
        return bad ? KW_E_WIRE_VALUE : 0;
    }
    if (codec == KW_WIRE_CODEC_INT8)
        return f32 ? kw__dequantize_groups84_avx2(KW_WIRE_CODEC_INT8, src, n, G, s, out, KW_WIRE_DTYPE_F32)
                   : kw__dequantize_groups84_avx2(KW_WIRE_CODEC_INT8, src, n, G, s, out, KW_WIRE_DTYPE_BF16);
    return f32 ? kw__dequantize_groups84_avx2(KW_WIRE_CODEC_INT4, src, n, G, s, out, KW_WIRE_DTYPE_F32)
               : kw__dequantize_groups84_avx2(KW_WIRE_CODEC_INT4, src, n, G, s, out, KW_WIRE_DTYPE_BF16);
}

/* kw__wire_kernels.quantize_groups: bf16 int8, int4, int6 and fp8 groups of a multiple of 32 values in one pass of
 * kw__quantize_bytes_bf16_avx2, NF4 groups with the thresholds made once, the rest a group at a time (quantize). */
KW_AVX2 static void kw__quantize_groups_avx2(uint32_t codec, const void *x, uint32_t dtype, uint32_t n, uint32_t G,
                                             const float *inv, uint8_t *dst) {
    if ((codec == KW_WIRE_CODEC_INT8 || codec == KW_WIRE_CODEC_INT4 || codec == KW_WIRE_CODEC_E4M3 ||
         codec == KW_WIRE_CODEC_E5M2 || codec == KW_WIRE_CODEC_INT6) &&
        dtype == KW_WIRE_DTYPE_BF16 && G % 32 == 0) {
        kw__quantize_bytes_bf16_avx2(codec, (const uint16_t *)x, n, 0.0f, inv, (uint32_t)__builtin_ctz(G), dst);
        return;
    }
    if (codec == KW_WIRE_CODEC_NF4 && dtype >= KW_WIRE_DTYPE_BF16 && dtype <= KW_WIRE_DTYPE_F32 && G % 8 == 0) {
        kw__quantize_nf4_units_avx2(x, NULL, n / G, 1, dtype, G, inv, dst);
        return;
    }
    kw__quantize_each_avx2(codec, x, dtype, n, G, inv, dst);
}

/* kw__wire_kernels.quantize_group_rows: NF4 groups of all the rows in one kw__quantize_nf4_units_avx2 (the next
 * group's key tables made under this one's codes across the rows too: a row of 128 has only two groups of 64), the
 * rest row by row (quantize_groups). */
KW_AVX2 static void kw__quantize_group_rows_avx2(uint32_t codec, const uint8_t *const *rows, uint32_t n_rows,
                                                 uint32_t dtype, uint32_t D, uint32_t G, const float *inv,
                                                 uint8_t *dst) {
    if (codec == KW_WIRE_CODEC_NF4 && dtype >= KW_WIRE_DTYPE_BF16 && dtype <= KW_WIRE_DTYPE_F32 && G % 8 == 0) {
        kw__quantize_nf4_units_avx2(NULL, rows, n_rows * (D / G), D / G, dtype, G, inv, dst);
        return;
    }
    kw__wire_quantize_group_rows_each(kw__quantize_groups_avx2, codec, rows, n_rows, dtype, D, G, inv, dst);
}

/* kw__wire_kernels.quantize_rows: bf16 int8, int4, int6 and fp8 rows of a multiple of 32 values by
 * kw__quantize_bytes_bf16_avx2 inlined for each codec, NF4 rows with the thresholds made once, the rest a row at a
 * time (quantize). */
KW_AVX2 static void kw__quantize_rows_avx2(uint32_t codec, const uint8_t *const *rows, uint32_t n_rows, uint32_t dtype,
                                           uint32_t n, const float *inv, uint8_t *dst) {
    const size_t rb = (size_t)n * kw_wire_codec_bits(codec) / 8;
    if (dtype == KW_WIRE_DTYPE_BF16 && n % 32 == 0) {
#define KW__ROWS(C)                                                                                                    \
    for (uint32_t r = 0; r < n_rows; ++r)                                                                              \
        kw__quantize_bytes_bf16_avx2(C, (const uint16_t *)rows[r], n, inv[r], NULL, 0, dst + r * rb);                  \
    return
        switch (codec) {
        case KW_WIRE_CODEC_INT8:
            KW__ROWS(KW_WIRE_CODEC_INT8);
        case KW_WIRE_CODEC_INT4:
            KW__ROWS(KW_WIRE_CODEC_INT4);
        case KW_WIRE_CODEC_INT6:
            KW__ROWS(KW_WIRE_CODEC_INT6);
        case KW_WIRE_CODEC_E4M3:
            KW__ROWS(KW_WIRE_CODEC_E4M3);
        case KW_WIRE_CODEC_E5M2:
            KW__ROWS(KW_WIRE_CODEC_E5M2);
        default:
            break;
        }
#undef KW__ROWS
    }
    if (codec == KW_WIRE_CODEC_NF4 && dtype >= KW_WIRE_DTYPE_BF16 && dtype <= KW_WIRE_DTYPE_F32 && n % 8 == 0) {
        kw__quantize_nf4_units_avx2(NULL, rows, n_rows, 1, dtype, n, inv, dst);
        return;
    }
    for (uint32_t r = 0; r < n_rows; ++r)
        kw__quantize_avx2(codec, rows[r], dtype, n, inv[r], dst + r * rb);
}

/* kw__wire_kernels.outlier_scores, W doubles a step (4: AVX2, 8: AVX-512), one body for both: kw__wire_outlier_score's
 * operations lane by lane, its choices as blends (the quotient computed everywhere and kept where msd > 0). VEC has W
 * double lanes, SFX names its intrinsics, LOAD widens W floats, SEL(a, b, pred, t, f) is a pred b ? t : f lane by lane,
 * STORE narrows W values to floats (FLT_MAX converts to itself). */
#define KW__OUTLIER_SCORES(NAME, ATTR, VEC, W, SFX, LOAD, SEL, STORE)                                                  \
    ATTR static void NAME(const float *x, uint32_t n, int asym, double m, double c, double S, float *out) {            \
        const VEC vm = _mm##SFX##_set1_pd(m), vm1 = _mm##SFX##_set1_pd(m - 1.0), vc = _mm##SFX##_set1_pd(c);           \
        const VEC vs = _mm##SFX##_set1_pd(S), zero = _mm##SFX##_setzero_pd(), big = _mm##SFX##_set1_pd(FLT_MAX);       \
        uint32_t i = 0;                                                                                                \
        for (; i + W <= n; i += W) {                                                                                   \
            const VEC v = LOAD(x + i);                                                                                 \
            VEC off = v, msd;                                                                                          \
            if (asym) {                                                                                                \
                const VEC dev = _mm##SFX##_sub_pd(v, vc);                                                              \
                off = _mm##SFX##_div_pd(_mm##SFX##_mul_pd(dev, vm), vm1);                                              \
                const VEC t = _mm##SFX##_div_pd(_mm##SFX##_mul_pd(_mm##SFX##_mul_pd(dev, dev), vm), vm1);              \
                msd = _mm##SFX##_div_pd(_mm##SFX##_sub_pd(vs, t), vm1);                                                \
            } else {                                                                                                   \
                msd = _mm##SFX##_div_pd(_mm##SFX##_sub_pd(vs, _mm##SFX##_mul_pd(v, v)), vm1);                          \
            }                                                                                                          \
            const VEC q = _mm##SFX##_div_pd(_mm##SFX##_mul_pd(off, off), msd);                                         \
            const VEC score = SEL(msd, zero, _CMP_GT_OQ, q, SEL(off, zero, _CMP_NEQ_OQ, big, zero));                   \
            STORE(out + i, SEL(score, big, _CMP_LT_OQ, score, big));                                                   \
        }                                                                                                              \
        kw__wire_outlier_scores_scalar(x + i, n - i, asym, m, c, S, out + i);                                          \
    }

#define KW__LOAD4_PD(p)               _mm256_cvtps_pd(_mm_loadu_ps(p))
#define KW__SEL4_PD(a, b, pred, t, f) _mm256_blendv_pd(f, t, _mm256_cmp_pd(a, b, pred))
#define KW__STORE4_PD(p, v)           _mm_storeu_ps(p, _mm256_cvtpd_ps(v))
KW__OUTLIER_SCORES(kw__outlier_scores_avx2, KW_AVX2, __m256d, 4, 256, KW__LOAD4_PD, KW__SEL4_PD, KW__STORE4_PD)

/* kw__wire_kernels.outlier_bits, W scores a step (8: AVX2, 16: AVX-512), one body for both: the signed keys by
 * integer shifts, then MASKS(k, vlo, vhi, above, in) compares them and stores the W bits of each mask. */
#define KW__OUTLIER_BITS(NAME, ATTR, VEC, W, SFX, MASKS)                                                               \
    ATTR static void NAME(const float *sc, uint64_t n, int32_t lo, int32_t hi, uint8_t *above, uint8_t *in) {          \
        const VEC vlo = _mm##SFX##_set1_epi32(lo), vhi = _mm##SFX##_set1_epi32(hi);                                    \
        uint64_t e = 0;                                                                                                \
        for (; e + W <= n; e += W) {                                                                                   \
            const VEC u = _mm##SFX##_loadu_si##SFX((const void *)(sc + e));                                            \
            const VEC k = _mm##SFX##_xor_si##SFX(u, _mm##SFX##_srli_epi32(_mm##SFX##_srai_epi32(u, 31), 1));           \
            MASKS(k, vlo, vhi, above + e / 8, in + e / 8);                                                             \
        }                                                                                                              \
        kw__wire_outlier_bits_scalar(sc + e, n - e, lo, hi, above + e / 8, in + e / 8);                                \
    }

#define KW__MASKS8(k, vlo, vhi, a, i)                                                                                  \
    do {                                                                                                               \
        const __m256i gt = _mm256_cmpgt_epi32(k, vhi), lt = _mm256_cmpgt_epi32(vlo, k);                                \
        *(a) = (uint8_t)_mm256_movemask_ps(_mm256_castsi256_ps(gt));                                                   \
        *(i) = (uint8_t)~_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_or_si256(gt, lt)));                             \
    } while (0)
KW__OUTLIER_BITS(kw__outlier_bits_avx2, KW_AVX2, __m256i, 8, 256, KW__MASKS8)

static const kw__wire_kernels kw__avx2_kernels = {
    .isa = KW_WIRE_ISA_AVX2,
    .amax = kw__amax_avx2,
    .quantize = kw__quantize_avx2,
    .dequantize = kw__dequantize_avx2,
    .minmax = kw__minmax_avx2,
    .minmax_fold = kw__minmax_fold_avx2,
    .quantize_affine = kw__quantize_affine_avx2,
    .dequantize_affine = kw__dequantize_affine_avx2,
    .scales = kw__scales_avx2,
    .rotate = kw__rotate_avx2,
    .amax_groups = kw__amax_groups_avx2,
    .quantize_groups = kw__quantize_groups_avx2,
    .quantize_group_rows = kw__quantize_group_rows_avx2,
    .quantize_rows = kw__quantize_rows_avx2,
    .dequantize_groups = kw__dequantize_groups_avx2,
    .dequantize_rows = kw__dequantize_rows_avx2,
    .outlier_scores = kw__outlier_scores_avx2,
    .outlier_bits = kw__outlier_bits_avx2,
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

/* 16 input values as f32 (bf16 and f16 widen exactly). */
KW_AVX512 static inline __m512 kw__load16_avx512(const void *x, uint32_t dtype, uint32_t i) {
    if (dtype == KW_WIRE_DTYPE_F32) return _mm512_loadu_ps((const float *)x + i);
    const __m256i raw = _mm256_loadu_si256((const __m256i *)((const uint16_t *)x + i));
    if (dtype == KW_WIRE_DTYPE_F16) return _mm512_cvtph_ps(raw);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

/* kw__minmax_avx2 16 lanes wide. */
KW_AVX512 static uint32_t kw__minmax_avx512(const void *x, uint32_t dtype, uint32_t n, float *lo, float *hi) {
    if (dtype < KW_WIRE_DTYPE_BF16 || dtype > KW_WIRE_DTYPE_F32 || n % 16 != 0)
        return kw__minmax_avx2(x, dtype, n, lo, hi);
    const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
    __m512 v = kw__load16_avx512(x, dtype, 0), l = v, h = v;
    __m512i a = _mm512_and_si512(_mm512_castps_si512(v), abs_mask);
    for (uint32_t i = 16; i < n; i += 16) {
        v = kw__load16_avx512(x, dtype, i);
        l = _mm512_min_ps(v, l);
        h = _mm512_max_ps(v, h);
        a = _mm512_max_epu32(a, _mm512_and_si512(_mm512_castps_si512(v), abs_mask));
    }
    const float fl = _mm512_reduce_min_ps(l), fh = _mm512_reduce_max_ps(h);
    *lo = fl == 0.0f ? kw__wire_first_zero(x, dtype, n) : fl;
    *hi = fh == 0.0f ? kw__wire_first_zero(x, dtype, n) : fh;
    return (uint32_t)_mm512_reduce_max_epu32(a);
}

#define KW__FOLD16(v, l, h, s, nl, nh)                                                                                 \
    do {                                                                                                               \
        const __mmask16 had = _mm512_cmp_ps_mask(s, _mm512_setzero_ps(), _CMP_NEQ_UQ);                                 \
        nl = _mm512_mask_blend_ps((__mmask16)(~had | _mm512_cmp_ps_mask(v, l, _CMP_LT_OQ)), l, v);                     \
        nh = _mm512_mask_blend_ps((__mmask16)(~had | _mm512_cmp_ps_mask(v, h, _CMP_GT_OQ)), h, v);                     \
    } while (0)
#define KW__ABSMAX16(a, v) _mm512_max_epu32(a, _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7fffffff)))
KW__MINMAX_FOLD(kw__minmax_fold_avx512, KW_AVX512, kw__minmax_fold_avx2, 16, __m512, __m512i, kw__load16_avx512,
                _mm512_loadu_ps, _mm512_storeu_ps, _mm512_set1_ps, KW__FOLD16, KW__ABSMAX16,
                (uint32_t)_mm512_reduce_max_epu32)

/* kw__fp8_codes8_avx2 16 lanes wide (unclamped y): the significand's last bit by a test, the subnormal lanes by a
 * merging conversion, the sign by one ternary-logic OR. */
KW_AVX512 static inline __m512i kw__fp8_codes16_avx512(__m512 y, int mbits, int bias, int max_code) {
    const __m512i u = _mm512_castps_si512(y);
    const __m512i a = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
    const __m128i shift = _mm_cvtsi32_si128(23 - mbits);
    const __mmask16 odd = _mm512_test_epi32_mask(a, _mm512_set1_epi32(1 << (23 - mbits)));
    __m512i r = _mm512_add_epi32(a, _mm512_set1_epi32((1 << (22 - mbits)) - 1 - ((127 - bias) << 23)));
    r = _mm512_srl_epi32(_mm512_mask_add_epi32(r, odd, r, _mm512_set1_epi32(1)), shift);
    const __m512 quanta = _mm512_castsi512_ps(_mm512_set1_epi32((127 + bias + mbits - 1) << 23));
    const __mmask16 is_sub = _mm512_cmplt_epi32_mask(a, _mm512_set1_epi32((128 - bias) << 23));
    r = _mm512_mask_cvtps_epi32(r, is_sub, _mm512_mul_ps(_mm512_castsi512_ps(a), quanta));
    /* min(code, max_code) | (sign byte & 0x80): A | (B & C) */
    return _mm512_ternarylogic_epi32(_mm512_min_epu32(r, _mm512_set1_epi32(max_code)), _mm512_srli_epi32(u, 24),
                                     _mm512_set1_epi32(0x80), 0xf8);
}

/* NF4 by a coarse index: cell c = floor(16 y) (-16..15) covers [c / 16, (c + 1) / 16), and the thresholds
 * (kw__nf4_threshold) lie at least 0.08 apart, so a cell holds at most one: the code is the number of thresholds below
 * the cell plus 1 when y is above the cell's own threshold (2.0, above every y, in a cell without one). Indexed by
 * c mod 32; tests/wire/test_wire_simd.c derives both tables from the thresholds and checks them. y is clamped to the
 * float below 1 so the cell stays below 16: every threshold is below 0.87, so the code is that of y = 1. */
static const uint32_t kw__nf4_cell_thr[32] = {
    0x3d22fafeu, 0x3df64862u, 0x40000000u, 0x3e5067dfu, 0x3e9582d4u, 0x40000000u, 0x3ec753f8u, 0x40000000u,
    0x3f006d04u, 0x40000000u, 0x3f248daeu, 0x40000000u, 0x40000000u, 0x3f5c89dau, 0x40000000u, 0x40000000u,
    0x40000000u, 0x40000000u, 0xbf591cd8u, 0x40000000u, 0x40000000u, 0x40000000u, 0xbf1c5271u, 0x40000000u,
    0xbeeb8480u, 0x40000000u, 0xbeadea77u, 0x40000000u, 0xbe703cecu, 0xbe0d38bdu, 0x40000000u, 0xbd3a7871u};
static const int32_t kw__nf4_cell_base[32] = {7, 8, 9, 9, 10, 11, 11, 12, 12, 13, 13, 14, 14, 14, 15, 15,
                                              0, 0, 0, 1, 1,  1,  1,  2,  2,  3,  3,  4,  4,  5,  6,  6};

/* The tables of kw__nf4_cell_thr / kw__nf4_cell_base, for the tests. */
void kw__wire_nf4_cells(const uint32_t **thr, const int32_t **base) {
    *thr = kw__nf4_cell_thr;
    *base = kw__nf4_cell_base;
}

/* The cell tables of kw__nf4_cell_thr / kw__nf4_cell_base in registers, and the clamp, all on z = 16 y. */
typedef struct kw__nf4_avx512 {
    __m512 t0, t1, lo, hi;
    __m512i b0, b1;
} kw__nf4_avx512;

KW_AVX512 static inline kw__nf4_avx512 kw__nf4_avx512_make(void) {
    kw__nf4_avx512 t;
    const __m512 sixteen = _mm512_set1_ps(16.0f); /* the tables on z = 16 y (exact: 2.0 is the largest) */
    t.t0 = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_loadu_si512(kw__nf4_cell_thr)), sixteen);
    t.t1 = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_loadu_si512(kw__nf4_cell_thr + 16)), sixteen);
    t.b0 = _mm512_loadu_si512(kw__nf4_cell_base);
    t.b1 = _mm512_loadu_si512(kw__nf4_cell_base + 16);
    t.lo = _mm512_set1_ps(-16.0f);
    t.hi = _mm512_set1_ps(0x1.fffffep3f);
    return t;
}

/* NF4 codes (int32) of 16 values by the cells above, from z = 16 y (y = fl32(x * inv)): one permute for the count,
 * one for the threshold, one compare. z is fl32(x * 16 inv) when 16 inv is finite (kw__nf4_fold16): that is 16 y
 * exactly where y is normal, and where y is subnormal or 0 both lie in cell 0 or -1, whose thresholds (+-0.04) are far
 * from them, so the code (7) is the same; otherwise z is fl32(16 fl32(x * inv)) (an overflow to Inf clamps as y does).
 */
KW_AVX512 static inline __m512i kw__nf4_codes16_avx512(__m512 z, const kw__nf4_avx512 *t) {
    z = _mm512_min_ps(_mm512_max_ps(z, t->lo), t->hi); /* a NaN becomes -16: code 0, as the scalar rule's */
    const __m512i cell = _mm512_cvt_roundps_epi32(z, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    const __m512i b = _mm512_permutex2var_epi32(t->b0, cell, t->b1);
    const __m512 thr = _mm512_permutex2var_ps(t->t0, cell, t->t1);
    return _mm512_mask_add_epi32(b, _mm512_cmp_ps_mask(z, thr, _CMP_GT_OQ), b, _mm512_set1_epi32(1));
}

/* 1 when inv and 16 inv are both normal (or 0), so that the NF4 codes may take z = fl32(x * 16 inv)
 * (kw__nf4_codes16_avx512): one multiply per 16 values less. The others (NaN, |inv| beyond 2^123, a conservative
 * bound: 16 inv is Inf from 2^124 on and 0 * 16 inv NaN; subnormal inv, whose 16 inv FTZ would treat unlike inv; under
 * DAZ a subnormal inv compares equal to 0 and folds, as the scalar x * inv is then x * 0 too) multiply by 16 after
 * inv. */
static inline int kw__nf4_fold16(float inv) {
    return (inv >= 0x1p-126f && inv <= 0x1p123f) || (inv <= -0x1p-126f && inv >= -0x1p123f) || inv == 0.0f;
}

/* The code (int32) of 16 values for NF4, E4M3 or E5M2 (a constant where inlined); for NF4 vinv is 16 inv when the
 * NF4_Z pseudo-codec is asked for (kw__nf4_fold16), else inv. */
#define KW__NF4_Z 0x100u
KW_AVX512 static inline __attribute__((always_inline)) __m512i kw__code16_avx512(uint32_t codec, __m512 v, __m512 vinv,
                                                                                 const kw__nf4_avx512 *t) {
    if (codec == KW__NF4_Z) return kw__nf4_codes16_avx512(_mm512_mul_ps(v, vinv), t);
    if (codec == KW_WIRE_CODEC_NF4)
        return kw__nf4_codes16_avx512(_mm512_mul_ps(_mm512_mul_ps(v, vinv), _mm512_set1_ps(16.0f)), t);
    const __m512 y = _mm512_mul_ps(v, vinv); /* the codes clamp */
    return codec == KW_WIRE_CODEC_E4M3 ? kw__fp8_codes16_avx512(y, 3, 7, 0x7e) : kw__fp8_codes16_avx512(y, 2, 15, 0x7b);
}

/* One unit of n values (a multiple of 16) in dtype: 16 values a step; for bf16 and n a multiple of 64, 64 a step, the
 * values widened by unpacking against zeros and the codes packed to bytes in the order kw__quantize_int84_bf16_avx512
 * puts back (two unsigned packs, one 64-bit permute), NF4 bytes then joined in nibble pairs. */
KW_AVX512 static inline __attribute__((always_inline)) void
kw__quantize_unit16_avx512(uint32_t codec, const void *x, uint32_t dtype, uint32_t n, float inv,
                           const kw__nf4_avx512 *t, uint8_t *dst) {
    const __m512 vinv = _mm512_set1_ps(codec == KW__NF4_Z ? 16.0f * inv : inv);
    const int nf4 = codec == KW_WIRE_CODEC_NF4 || codec == KW__NF4_Z;
    uint32_t i = 0;
    if (dtype == KW_WIRE_DTYPE_BF16 && n % 64 == 0) {
        const __m512i z = _mm512_setzero_si512(), order = _mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7);
        for (; i < n; i += 64) {
            const __m512i x0 = _mm512_loadu_si512((const uint16_t *)x + i);
            const __m512i x1 = _mm512_loadu_si512((const uint16_t *)x + i + 32);
#define KW__C(v) kw__code16_avx512(codec, _mm512_castsi512_ps(v), vinv, t)
            const __m512i p0 =
                _mm512_packus_epi32(KW__C(_mm512_unpacklo_epi16(z, x0)), KW__C(_mm512_unpackhi_epi16(z, x0)));
            const __m512i p1 =
                _mm512_packus_epi32(KW__C(_mm512_unpacklo_epi16(z, x1)), KW__C(_mm512_unpackhi_epi16(z, x1)));
#undef KW__C
            const __m512i q = _mm512_permutexvar_epi64(order, _mm512_packus_epi16(p0, p1)); /* 64 codes in order */
            if (!nf4) {
                _mm512_storeu_si512(dst + i, q);
                continue;
            }
            const __m512i b = _mm512_or_si512(_mm512_and_si512(q, _mm512_set1_epi16(0x000f)),
                                              _mm512_and_si512(_mm512_srli_epi16(q, 4), _mm512_set1_epi16(0x00f0)));
            _mm256_storeu_si256((__m256i *)(dst + i / 2), _mm512_cvtepi16_epi8(b));
        }
        return;
    }
    for (; i < n; i += 16) {
        const __m512i c = kw__code16_avx512(codec, kw__load16_avx512(x, dtype, i), vinv, t);
        if (nf4) /* 64-bit lanes c[2j] | c[2j+1] << 32: the low byte of lane | lane >> 28 is c[2j] | c[2j+1] << 4 */
            _mm_storel_epi64((__m128i *)(dst + i / 2),
                             _mm512_cvtepi64_epi8(_mm512_or_si512(c, _mm512_srli_epi64(c, 28))));
        else
            _mm_storeu_si128((__m128i *)(dst + i), _mm512_cvtepi32_epi8(c));
    }
}

/* NF4 and FP8 codes of n_units units of n values (n a multiple of 16): unit u at rows[u], or at x + u n elements when
 * rows is NULL, with the inverse scale inv[u]; its codes at dst + u n bits / 8 (kw__quantize_unit16_avx512 inlined for
 * each codec). */
KW_AVX512 static void kw__quantize_nf4_fp8_avx512(uint32_t codec, const void *x, const uint8_t *const *rows,
                                                  uint32_t n_units, uint32_t dtype, uint32_t n, const float *inv,
                                                  uint8_t *dst) {
    const size_t es = kw__wire_dtype_size(dtype), ub = (size_t)n * kw_wire_codec_bits(codec) / 8;
    const kw__nf4_avx512 t = kw__nf4_avx512_make();
    for (uint32_t u = 0; u < n_units; ++u) {
        const void *xu = rows ? (const void *)rows[u] : (const void *)((const uint8_t *)x + (size_t)u * n * es);
        if (codec == KW_WIRE_CODEC_NF4 && kw__nf4_fold16(inv[u]))
            kw__quantize_unit16_avx512(KW__NF4_Z, xu, dtype, n, inv[u], &t, dst + u * ub);
        else if (codec == KW_WIRE_CODEC_NF4)
            kw__quantize_unit16_avx512(KW_WIRE_CODEC_NF4, xu, dtype, n, inv[u], &t, dst + u * ub);
        else if (codec == KW_WIRE_CODEC_E4M3)
            kw__quantize_unit16_avx512(KW_WIRE_CODEC_E4M3, xu, dtype, n, inv[u], &t, dst + u * ub);
        else
            kw__quantize_unit16_avx512(KW_WIRE_CODEC_E5M2, xu, dtype, n, inv[u], &t, dst + u * ub);
    }
}

/* NF4 codes of the groups of G values (G a multiple of 64) of n_rows bf16 rows of D values, rows[r]'s with the
 * inverse scales inv + r D / G, as kw__quantize_nf4_fp8_avx512 gives them (codes one after another from dst), without
 * that function's codec, dtype and size dispatch: the tables made once a call, a call per block of rows. */
KW_AVX512 static inline __attribute__((always_inline)) void kw__quantize_nf4_bf16_avx512(const uint8_t *const *rows,
                                                                                         uint32_t n_rows, uint32_t D,
                                                                                         uint32_t G, const float *inv,
                                                                                         uint8_t *dst) {
    const kw__nf4_avx512 t = kw__nf4_avx512_make();
    for (uint32_t r = 0; r < n_rows; ++r)
        for (uint32_t c = 0; c < D; c += G, ++inv, dst += G / 2) {
            const uint16_t *x = (const uint16_t *)rows[r] + c;
            if (kw__nf4_fold16(*inv))
                kw__quantize_unit16_avx512(KW__NF4_Z, x, KW_WIRE_DTYPE_BF16, G, *inv, &t, dst);
            else
                kw__quantize_unit16_avx512(KW_WIRE_CODEC_NF4, x, KW_WIRE_DTYPE_BF16, G, *inv, &t, dst);
        }
}

/* kw__quantize_bytes_bf16_avx2 for int8 and int4, 64 values per step (n a multiple of 64): the packs leave each 128-bit
 * lane's 8 codes of the two 32-value halves side by side, and one 64-bit lane permute puts them in element order. */
KW_AVX512 static inline __attribute__((always_inline)) void
kw__quantize_int84_bf16_avx512(uint32_t codec, const uint16_t *x, uint32_t n, float inv0, const float *inv,
                               uint32_t gshift, uint8_t *dst) {
    const float qmax = kw_wire_codec_qmax(codec);
    const __m512 lo = _mm512_set1_ps(-qmax), hi = _mm512_set1_ps(qmax), row_inv = _mm512_set1_ps(inv0);
    const __m512i z = _mm512_setzero_si512(), order = _mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7);
    for (uint32_t i = 0; i < n; i += 64) {
        const __m512i x0 = _mm512_loadu_si512(x + i), x1 = _mm512_loadu_si512(x + i + 32);
        /* the inverse scales of values i.. and i + 32.. (the row's one, or two groups' of 32) */
        const __m512 v0 = inv ? _mm512_set1_ps(inv[i >> gshift]) : row_inv;
        const __m512 v1 = inv ? _mm512_set1_ps(inv[(i + 32) >> gshift]) : row_inv;
#define KW__Q(v, vinv)                                                                                                 \
    _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(_mm512_castsi512_ps(v), vinv), lo), hi))
        const __m512i p0 =
            _mm512_packs_epi32(KW__Q(_mm512_unpacklo_epi16(z, x0), v0), KW__Q(_mm512_unpackhi_epi16(z, x0), v0));
        const __m512i p1 =
            _mm512_packs_epi32(KW__Q(_mm512_unpacklo_epi16(z, x1), v1), KW__Q(_mm512_unpackhi_epi16(z, x1), v1));
#undef KW__Q
        const __m512i q = _mm512_permutexvar_epi64(order, _mm512_packs_epi16(p0, p1)); /* 64 codes in order */
        if (codec == KW_WIRE_CODEC_INT8) {
            _mm512_storeu_si512(dst + i, q);
            continue;
        }
        const __m512i b = _mm512_or_si512(_mm512_and_si512(q, _mm512_set1_epi16(0x000f)),
                                          _mm512_and_si512(_mm512_srli_epi16(q, 4), _mm512_set1_epi16(0x00f0)));
        _mm256_storeu_si256((__m256i *)(dst + i / 2), _mm512_cvtepi16_epi8(b));
    }
}

KW_AVX512 static void kw__quantize_avx512(uint32_t codec, const void *x, uint32_t dtype, uint32_t n, float inv,
                                          uint8_t *dst) {
    const int wide = (codec == KW_WIRE_CODEC_NF4 || codec == KW_WIRE_CODEC_E4M3 || codec == KW_WIRE_CODEC_E5M2);
    if (wide && dtype >= KW_WIRE_DTYPE_BF16 && dtype <= KW_WIRE_DTYPE_F32 && n % 16 == 0) {
        kw__quantize_nf4_fp8_avx512(codec, x, NULL, 1, dtype, n, &inv, dst);
        return;
    }
    if ((codec == KW_WIRE_CODEC_INT8 || codec == KW_WIRE_CODEC_INT4) && dtype == KW_WIRE_DTYPE_BF16 && n % 32 == 0) {
        const uint32_t n64 = n & ~63u; /* a last 32 values (groups of 32) take the AVX2 step */
        kw__quantize_int84_bf16_avx512(codec, (const uint16_t *)x, n64, inv, NULL, 0, dst);
        if (n64 < n)
            kw__quantize_bytes_bf16_avx2(codec, (const uint16_t *)x + n64, 32, inv, NULL, 0,
                                         dst + (size_t)n64 * kw_wire_codec_bits(codec) / 8);
        return;
    }
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

/* Packs the low b bits of 16 int32 values into 2b bytes at dst (FORMAT.md §5.3), b in {2, 3, 4, 6}: the codes as
 * bytes, then pairs joined by a multiply-add (q0 + q1 << b in 16 bits), pairs of pairs (4 fields in 32 bits), and the
 * two 32-bit words of each 64-bit half (8 fields, b bytes). bits is a constant where this is inlined. */
KW_AVX512 static inline __attribute__((always_inline)) void kw__fields16_put_avx512(__m512i c, uint32_t bits,
                                                                                    uint8_t *dst) {
    const int b = (int)bits;
    const __m128i q = _mm_and_si128(_mm512_cvtepi32_epi8(c), _mm_set1_epi8((char)((1 << b) - 1)));
    const __m128i p = _mm_maddubs_epi16(q, _mm_set1_epi16((short)(1 | (1 << (8 + b)))));
    const __m128i w = _mm_madd_epi16(p, _mm_set1_epi32(1 | (1 << (16 + 2 * b))));
    const uint64_t e0 = (uint64_t)_mm_cvtsi128_si64(w), e1 = (uint64_t)_mm_extract_epi64(w, 1);
    const uint64_t r0 = (e0 & 0xffffffffu) | (e0 >> 32) << (4 * b), r1 = (e1 & 0xffffffffu) | (e1 >> 32) << (4 * b);
    memcpy(dst, &r0, bits); /* little-endian: the field stream's first bytes */
    memcpy(dst + bits, &r1, bits);
}

/* 16 per-unit values of elements i..i+15, unit i >> shift: one per element (shift 0) or one for all 16 (shift >= 4). */
KW_AVX512 static inline __attribute__((always_inline)) __m512 kw__unit16_avx512(const float *v, uint32_t i,
                                                                                uint32_t shift) {
    return shift == 0 ? _mm512_loadu_ps(v + i) : _mm512_set1_ps(v[i >> shift]);
}

/* kw__affine_row_avx2 16 lanes wide. */
KW_AVX512 static inline __attribute__((always_inline)) void
kw__affine_row_avx512(const void *x, uint32_t dtype, uint32_t n, const float *z, const float *inv, uint32_t shift,
                      __m512 lo, __m512 hi, uint32_t bits, uint8_t *dst) {
    for (uint32_t i = 0; i < n; i += 16) {
        const __m512 d = _mm512_sub_ps(kw__load16_avx512(x, dtype, i), kw__unit16_avx512(z, i, shift));
        const __m512 y = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(d, kw__unit16_avx512(inv, i, shift)), lo), hi);
        const __m512i c = _mm512_cvtps_epi32(y);
        if (bits == 8)
            _mm_storeu_si128((__m128i *)(dst + i), _mm512_cvtepi32_epi8(c));
        else
            kw__fields16_put_avx512(c, bits, dst + (size_t)i / 8 * bits);
    }
}

/* kw__wire_kernels.quantize_affine 16 values a step (kw__quantize_affine_avx2's rule); groups of 2 to 8 values and
 * rows of other lengths take the AVX2 kernel. */
KW_AVX512 static void kw__quantize_affine_avx512(const void *x, uint32_t dtype, uint32_t n, const float *z,
                                                 const float *inv, uint32_t shift, float lo, float hi, uint32_t bits,
                                                 uint8_t *dst) {
    if (dtype < KW_WIRE_DTYPE_BF16 || dtype > KW_WIRE_DTYPE_F32 || n % 16 != 0 || (shift >= 1 && shift <= 3)) {
        kw__quantize_affine_avx2(x, dtype, n, z, inv, shift, lo, hi, bits, dst);
        return;
    }
    const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
    KW__AFFINE_BY_BITS(kw__affine_row_avx512);
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

/* kw__fp8_values8_avx2 16 lanes wide: *bad gets the lanes of codes that are not finite; with daz, subnormal codes'
 * lanes as kw__fp8_subnormals8_avx2 gives them. */
KW_AVX512 static inline __m512 kw__fp8_values16_avx512(__m512i c, int e4m3, int daz, __mmask16 *bad) {
    const __m512i t = _mm512_slli_epi32(c, 24);
    __m512i v;
    __mmask16 special;
    if (e4m3) {
        v = _mm512_and_si512(_mm512_srai_epi32(t, 4), _mm512_set1_epi32((int)0x87f00000u));
        special = _mm512_cmpeq_epi32_mask(_mm512_and_si512(c, _mm512_set1_epi32(0x7f)), _mm512_set1_epi32(0x7f));
        v = _mm512_mask_or_epi32(v, special, t, _mm512_set1_epi32(0x7fc00000));
    } else {
        v = _mm512_and_si512(_mm512_srai_epi32(t, 3), _mm512_set1_epi32((int)0x8fe00000u));
        special = _mm512_cmpeq_epi32_mask(_mm512_and_si512(c, _mm512_set1_epi32(0x7c)), _mm512_set1_epi32(0x7c));
        v = _mm512_mask_or_epi32(v, special, t, _mm512_set1_epi32(0x7f800000));
        v = _mm512_mask_or_epi32(v, special & _mm512_test_epi32_mask(c, _mm512_set1_epi32(3)), v,
                                 _mm512_set1_epi32(0x00400000));
    }
    *bad |= special;
    const __m512 r = _mm512_mul_ps(_mm512_castsi512_ps(v), _mm512_set1_ps(e4m3 ? 0x1p120f : 0x1p112f));
    /* subnormal codes (rare): as kw__fp8_subnormals8_avx2, no f32 subnormal on the way (DAZ) */
    if (!daz) return r;
    const __mmask16 sub = _mm512_testn_epi32_mask(c, _mm512_set1_epi32(e4m3 ? 0x78 : 0x7c)) &
                          _mm512_test_epi32_mask(c, _mm512_set1_epi32(0x7f));
    if (!sub) return r;
    const __m512 mag = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_and_si512(c, _mm512_set1_epi32(e4m3 ? 7 : 3))),
                                     _mm512_set1_ps(e4m3 ? 0x1p-9f : 0x1p-16f));
    return _mm512_castsi512_ps(_mm512_mask_or_epi32(_mm512_castps_si512(r), sub, _mm512_castps_si512(mag),
                                                    _mm512_and_si512(t, _mm512_set1_epi32(INT32_MIN))));
}

/* int8 or int4 rows to f32 or bf16, 32 values per step, value i with the scale s[i / G] (G a multiple of 32), or s0 for
 * the whole row when s is NULL; returns a nonzero mask if a reserved code (-128, -8) was seen. int4: 16 bytes to 32
 * nibbles in element order, one per byte, then sign-extended. codec is a constant where this is inlined. */
KW_AVX512 static inline __attribute__((always_inline)) __mmask32
kw__dequantize_int84_avx512(uint32_t codec, const uint8_t *src, uint32_t n, float s0, const float *s, uint32_t G,
                            void *out, uint32_t out_dtype) {
    const __m256i eight = _mm256_set1_epi8(8);
    const __m256i invalid = codec == KW_WIRE_CODEC_INT8 ? _mm256_set1_epi8((char)0x80) : eight;
    const __m512 row = _mm512_set1_ps(s0);
    __mmask32 bad = 0;
    for (uint32_t i = 0; i < n; i += 32) {
        const __m512 vs = s ? _mm512_set1_ps(s[i / G]) : row;
        __m256i b;
        if (codec == KW_WIRE_CODEC_INT8) {
            b = _mm256_loadu_si256((const __m256i *)(src + i));
        } else {
            const __m256i w = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(src + i / 2)));
            b = _mm256_or_si256(_mm256_and_si256(w, _mm256_set1_epi16(0x000f)),
                                _mm256_slli_epi16(_mm256_and_si256(w, _mm256_set1_epi16(0x00f0)), 4));
        }
        bad |= _mm256_cmpeq_epi8_mask(b, invalid);
        if (codec == KW_WIRE_CODEC_INT4) b = _mm256_sub_epi8(_mm256_xor_si256(b, eight), eight);
        kw__store16_avx512(out, out_dtype, i,
                           _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(b))), vs));
        kw__store16_avx512(out, out_dtype, i + 16,
                           _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(b, 1))), vs));
    }
    return bad;
}

/* kw__wire_kernels.dequantize; inlined with a constant codec and output dtype by kw__dequantize_rows_avx512; daz as in
 * kw__dequantize_avx2_inl. */
KW_AVX512 static inline __attribute__((always_inline)) int kw__dequantize_avx512_inl(uint32_t codec, const uint8_t *src,
                                                                                     uint32_t n, float s, void *out,
                                                                                     uint32_t out_dtype, int daz) {
    if (codec == KW_WIRE_CODEC_INT6 && n % 16 == 0) {
        /* 12 bytes -> 16 codes: the bytes in every 128-bit lane, lane k takes the 3-byte word of codes 4k..4k+3 into
         * each of its dwords, shifted by 6j for code 4k + j (a masked load reads exactly the 12 bytes) */
        const __m512i spread = _mm512_setr_epi32(
            (int)0x80020100u, (int)0x80020100u, (int)0x80020100u, (int)0x80020100u, (int)0x80050403u, (int)0x80050403u,
            (int)0x80050403u, (int)0x80050403u, (int)0x80080706u, (int)0x80080706u, (int)0x80080706u, (int)0x80080706u,
            (int)0x800b0a09u, (int)0x800b0a09u, (int)0x800b0a09u, (int)0x800b0a09u);
        const __m512i shifts = _mm512_setr_epi32(0, 6, 12, 18, 0, 6, 12, 18, 0, 6, 12, 18, 0, 6, 12, 18);
        const __m512i m6 = _mm512_set1_epi32(63), k32 = _mm512_set1_epi32(32);
        const __m512 vs = _mm512_set1_ps(s);
        __mmask16 bad6 = 0;
        for (uint32_t i = 0; i < n; i += 16) {
            const __m512i b = _mm512_broadcast_i32x4(_mm_maskz_loadu_epi8(0x0fff, src + i / 16 * 12));
            const __m512i c = _mm512_and_si512(_mm512_srlv_epi32(_mm512_shuffle_epi8(b, spread), shifts), m6);
            bad6 |= _mm512_cmpeq_epi32_mask(c, k32); /* the field of -32 is reserved */
            const __m512i q = _mm512_sub_epi32(_mm512_xor_si512(c, k32), k32);
            kw__store16_avx512(out, out_dtype, i, _mm512_mul_ps(_mm512_cvtepi32_ps(q), vs));
        }
        return bad6 ? KW_E_WIRE_VALUE : 0;
    }
    if ((codec == KW_WIRE_CODEC_E4M3 || codec == KW_WIRE_CODEC_E5M2) && n % 16 == 0) {
        const __m512 vs = _mm512_set1_ps(s);
        __mmask16 bad16 = 0;
        for (uint32_t i = 0; i < n; i += 16) {
            const __m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(src + i)));
            kw__store16_avx512(out, out_dtype, i,
                               _mm512_mul_ps(kw__fp8_values16_avx512(c, codec == KW_WIRE_CODEC_E4M3, daz, &bad16), vs));
        }
        return bad16 ? KW_E_WIRE_VALUE : 0;
    }
    if ((codec != KW_WIRE_CODEC_INT8 && codec != KW_WIRE_CODEC_INT4) || n % 32 != 0 ||
        (codec == KW_WIRE_CODEC_INT4 && out_dtype == KW_WIRE_DTYPE_BF16 && n % 64 == 0)) /* the AVX2 table lookup */
        return kw__dequantize_avx2(codec, src, n, s, out, out_dtype);
    const __m512 vs = _mm512_set1_ps(s);
    __mmask32 bad = 0;
    if (codec == KW_WIRE_CODEC_INT8) {
        bad = kw__dequantize_int84_avx512(KW_WIRE_CODEC_INT8, src, n, s, NULL, 32, out, out_dtype);
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

KW_AVX512 static int kw__dequantize_avx512(uint32_t codec, const uint8_t *src, uint32_t n, float s, void *out,
                                           uint32_t out_dtype) {
    return kw__dequantize_avx512_inl(codec, src, n, s, out, out_dtype, 1);
}

/* kw__wire_kernels.dequantize_rows: kw__dequantize_avx512 row by row, inlined for each v1 codec and output dtype (fp8
 * with daz as MXCSR says once per call). */
/* int8 rows (n a multiple of 32) to bf16 with AVX512_BF16's vcvtne2ps2bf16, 32 values per instruction: round to
 * nearest even as kw__store16_avx512 does, for every value but an f32 subnormal (it flushes those to zero). With
 * s >= 2^-126 no fl32(q * s) is subnormal (|q| >= 1, or q = 0 and the result a zero), so such rows take it and any
 * other row takes kw__dequantize_avx512. Returns a nonzero value if a reserved code (-128) was seen. */
KW_AVX512BF16 static int kw__dequantize_int8_bf16_rows(const uint8_t *src, uint32_t n_rows, uint32_t n, const float *s,
                                                       void *const *out) {
    const __m256i invalid = _mm256_set1_epi8((char)0x80);
    int bad = 0;
    for (uint32_t r = 0; r < n_rows; ++r) {
        const uint8_t *row = src + (size_t)r * n;
        if (!(s[r] >= 0x1p-126f)) {
            bad |= kw__dequantize_avx512(KW_WIRE_CODEC_INT8, row, n, s[r], out[r], KW_WIRE_DTYPE_BF16);
            continue;
        }
        const __m512 vs = _mm512_set1_ps(s[r]);
        __mmask32 b8 = 0;
        for (uint32_t i = 0; i < n; i += 32) {
            const __m256i b = _mm256_loadu_si256((const __m256i *)(row + i));
            b8 |= _mm256_cmpeq_epi8_mask(b, invalid);
            const __m512 lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(b))), vs);
            const __m512 hi =
                _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(b, 1))), vs);
            _mm512_storeu_si512((uint16_t *)out[r] + i, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
        }
        bad |= b8 != 0;
    }
    return bad;
}

KW_AVX512 static int kw__dequantize_rows_avx512(uint32_t codec, const uint8_t *src, uint32_t n_rows, uint32_t n,
                                                const float *s, void *const *out, uint32_t out_dtype) {
    if (codec == KW_WIRE_CODEC_INT8 && out_dtype == KW_WIRE_DTYPE_BF16 && n % 32 == 0 &&
        __builtin_cpu_supports("avx512bf16"))
        return kw__dequantize_int8_bf16_rows(src, n_rows, n, s, out) ? KW_E_WIRE_VALUE : 0;
    /* int8 to f32 a call per row: measured faster than the inlined loop (0.45 against 0.41 of memcpy) */
    if (codec == KW_WIRE_CODEC_INT8 && out_dtype == KW_WIRE_DTYPE_F32) {
        int bad = 0;
        for (uint32_t r = 0; r < n_rows; ++r)
            bad |= kw__dequantize_avx512(codec, src + (size_t)r * n, n, s[r], out[r], out_dtype);
        return bad ? KW_E_WIRE_VALUE : 0;
    }
    KW__DEQUANTIZE_ROWS(kw__dequantize_avx512_inl, kw__dequantize_avx512);
}
#undef KW__DEQ_CASE
#undef KW__DEQ_CASE_FP8
#undef KW__DEQ_ROWS_DAZ
#undef KW__DEQUANTIZE_ROWS

/* 16 f32 values as bf16, exactly kw_f32_to_bf16 (kw__bf16_8_avx2 16 lanes wide). */
KW_AVX512 static inline __m256i kw__bf16_16_avx512(__m512 v) {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
    const __mmask16 nan =
        _mm512_cmpgt_epi32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
    r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    return _mm512_cvtepi32_epi16(r);
}

/* The 4 butterfly stages len = 1, 2, 4, 8 inside one 16-lane vector (a - b = t - v under a lane mask). */
KW_AVX512 static inline __m512 kw__rotate_in16_avx512(__m512 v) {
    __m512 t = _mm512_permute_ps(v, 0xb1);
    v = _mm512_mask_sub_ps(_mm512_add_ps(v, t), 0xaaaa, t, v);
    t = _mm512_permute_ps(v, 0x4e);
    v = _mm512_mask_sub_ps(_mm512_add_ps(v, t), 0xcccc, t, v);
    t = _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(2, 3, 0, 1));
    v = _mm512_mask_sub_ps(_mm512_add_ps(v, t), 0xf0f0, t, v);
    t = _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(1, 0, 3, 2));
    return _mm512_mask_sub_ps(_mm512_add_ps(v, t), 0xff00, t, v);
}

KW_AVX512 static inline void kw__store_bf16_16_avx512(uint16_t *dst, __m512 v) {
    _mm256_storeu_si256((__m256i *)dst, kw__bf16_16_avx512(v));
}

KW__ROTATE_REGS(kw__rotate_regs_avx512, KW_AVX512, __m512, 16, kw__load16_avx512, kw__rotate_in16_avx512,
                kw__store_bf16_16_avx512, 512)
#undef KW__ROTATE_REGS

/* kw__rotate_avx2 16 lanes wide: stages len = 1, 2, 4, 8 inside a vector (a - b = t - v under a lane mask); the
 * longer ones 8 lanes wide (Zen 4 splits 16-lane operations in two anyway). */
KW_AVX512 static void kw__rotate_avx512(const void *src, uint32_t src_dtype, void *dst, uint32_t dst_dtype, uint32_t D,
                                        const float *sx, int inverse) {
    if (D < 16 || D > 4096 || src_dtype < KW_WIRE_DTYPE_BF16 || src_dtype > KW_WIRE_DTYPE_F32) {
        kw__rotate_avx2(src, src_dtype, dst, dst_dtype, D, sx, inverse);
        return;
    }
    if (D <= 256 && dst_dtype != KW_WIRE_DTYPE_F16) { /* the row fits in registers: no pass through memory */
        kw__rotate_regs_avx512_row(src, src_dtype, dst, dst_dtype, sx, inverse, D);
        return;
    }
    float buf[4096];
    float *x = dst_dtype == KW_WIRE_DTYPE_F32 ? (float *)dst : buf;
    for (uint32_t i = 0; i < D; i += 16) {
        __m512 v = kw__load16_avx512(src, src_dtype, i);
        if (!inverse) v = _mm512_mul_ps(v, _mm512_loadu_ps(sx + i));
        _mm512_storeu_ps(x + i, kw__rotate_in16_avx512(v));
    }
    kw__rotate_finish_avx2(x, D, 16, sx, inverse, dst, dst_dtype);
}

/* kw__amax_tree8_avx2 for 16 groups (f[j]: group j's 32 u16 maxima): 256-bit halves of pairs, 128-bit quarters,
 * 64-bit and 32-bit words; group j's maximum ends in dword 4 (j % 4) + {0, 2, 1, 3}[j / 4]. */
KW_AVX512 static inline __m512i kw__amax_tree16_avx512(const __m512i *f) {
    __m512i p[8], q[4];
    for (int i = 0; i < 8; ++i) /* quarters 0-1 of p[i]: group 2i, 2-3: group 2i + 1 */
        p[i] = _mm512_max_epu16(_mm512_shuffle_i64x2(f[2 * i], f[2 * i + 1], 0x44),
                                _mm512_shuffle_i64x2(f[2 * i], f[2 * i + 1], 0xee));
    for (int k = 0; k < 4; ++k) /* quarter L of q[k]: group 4k + L */
        q[k] = _mm512_max_epu16(_mm512_shuffle_i64x2(p[2 * k], p[2 * k + 1], 0x88),
                                _mm512_shuffle_i64x2(p[2 * k], p[2 * k + 1], 0xdd));
    const __m512i r0 = _mm512_max_epu16(_mm512_unpacklo_epi64(q[0], q[1]), _mm512_unpackhi_epi64(q[0], q[1]));
    const __m512i r1 = _mm512_max_epu16(_mm512_unpacklo_epi64(q[2], q[3]), _mm512_unpackhi_epi64(q[2], q[3]));
    const __m512i t0 = _mm512_max_epu16(r0, _mm512_shuffle_epi32(r0, (_MM_PERM_ENUM)0xb1));
    const __m512i t1 = _mm512_max_epu16(r1, _mm512_shuffle_epi32(r1, (_MM_PERM_ENUM)0xb1));
    const __m512i b = _mm512_mask_blend_epi32(0xaaaa, t0, t1); /* quarter L: groups L, 8 + L, 4 + L, 12 + L */
    const __m512i m = _mm512_max_epu32(_mm512_and_si512(b, _mm512_set1_epi32(0xffff)), _mm512_srli_epi32(b, 16));
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 2, 6, 10, 14, 1, 5, 9, 13, 3, 7, 11, 15);
    return _mm512_slli_epi32(_mm512_permutexvar_epi32(order, m), 16);
}

/* kw__wire_kernels.amax_groups: bf16 groups of a multiple of 32 values 16 at a time, others as the AVX2 kernel. */
KW_AVX512 static void kw__amax_groups_avx512(const uint8_t *const *rows, uint32_t n_rows, uint32_t dtype, uint32_t D,
                                             uint32_t G, uint32_t *out) {
    if (dtype != KW_WIRE_DTYPE_BF16 || G % 32 != 0) {
        kw__amax_groups_avx2(rows, n_rows, dtype, D, G, out);
        return;
    }
    const uint32_t per_row = D / G, total = n_rows * per_row;
    const __m512i mask = _mm512_set1_epi16(0x7fff);
    __m512i f[16];
    uint32_t q = 0, r = 0, c = 0; /* group q is chunk c of row r */
    for (; q + 16 <= total; q += 16) {
        for (int j = 0; j < 16; ++j) {
            const uint16_t *x = (const uint16_t *)rows[r] + (size_t)c * G;
            __m512i m = _mm512_and_si512(_mm512_loadu_si512(x), mask);
            for (uint32_t i = 32; i < G; i += 32)
                m = _mm512_max_epu16(m, _mm512_and_si512(_mm512_loadu_si512(x + i), mask));
            f[j] = m;
            if (++c == per_row) c = 0, ++r;
        }
        _mm512_storeu_si512(out + q, kw__amax_tree16_avx512(f));
    }
    for (; q < total; ++q) {
        out[q] = kw__amax_avx512(rows[r] + (size_t)c * G * 2, dtype, G);
        if (++c == per_row) c = 0, ++r;
    }
}

KW__EACH_GROUP(avx512, KW_AVX512, kw__quantize_avx512, kw__dequantize_avx512)
#undef KW__EACH_GROUP

/* kw__wire_kernels.quantize_groups: bf16 int8 and int4 groups of a multiple of 32 values in one pass of
 * kw__quantize_int84_bf16_avx512, NF4 and FP8 groups of a multiple of 16 in one call of kw__quantize_nf4_fp8_avx512,
 * int6 as the AVX2 kernel, the rest a group at a time (quantize). */
KW_AVX512 static void kw__quantize_groups_avx512(uint32_t codec, const void *x, uint32_t dtype, uint32_t n, uint32_t G,
                                                 const float *inv, uint8_t *dst) {
    if ((codec == KW_WIRE_CODEC_INT8 || codec == KW_WIRE_CODEC_INT4) && dtype == KW_WIRE_DTYPE_BF16 && G % 32 == 0) {
        const uint32_t n64 = n & ~63u, gshift = (uint32_t)__builtin_ctz(G);
        kw__quantize_int84_bf16_avx512(codec, (const uint16_t *)x, n64, 0.0f, inv, gshift, dst);
        if (n64 < n) /* a last 32 values: one group */
            kw__quantize_bytes_bf16_avx2(codec, (const uint16_t *)x + n64, 32, inv[n64 >> gshift], NULL, 0,
                                         dst + (size_t)n64 * kw_wire_codec_bits(codec) / 8);
        return;
    }
    if (codec == KW_WIRE_CODEC_NF4 && dtype == KW_WIRE_DTYPE_BF16 && G % 64 == 0) {
        const uint8_t *row = (const uint8_t *)x;
        kw__quantize_nf4_bf16_avx512(&row, 1, n, G, inv, dst);
        return;
    }
    if ((codec == KW_WIRE_CODEC_NF4 || codec == KW_WIRE_CODEC_E4M3 || codec == KW_WIRE_CODEC_E5M2) &&
        dtype >= KW_WIRE_DTYPE_BF16 && dtype <= KW_WIRE_DTYPE_F32 && G % 16 == 0) {
        kw__quantize_nf4_fp8_avx512(codec, x, NULL, n / G, dtype, G, inv, dst);
        return;
    }
    if (codec == KW_WIRE_CODEC_INT6) {
        kw__quantize_groups_avx2(codec, x, dtype, n, G, inv, dst);
        return;
    }
    kw__quantize_each_avx512(codec, x, dtype, n, G, inv, dst);
}

/* kw__wire_kernels.quantize_group_rows: bf16 NF4 groups of a multiple of 64 values of all the rows in one
 * kw__quantize_nf4_bf16_avx512, the rest row by row (quantize_groups). */
KW_AVX512 static void kw__quantize_group_rows_avx512(uint32_t codec, const uint8_t *const *rows, uint32_t n_rows,
                                                     uint32_t dtype, uint32_t D, uint32_t G, const float *inv,
                                                     uint8_t *dst) {
    if (codec == KW_WIRE_CODEC_NF4 && dtype == KW_WIRE_DTYPE_BF16 && G % 64 == 0) {
        kw__quantize_nf4_bf16_avx512(rows, n_rows, D, G, inv, dst);
        return;
    }
    kw__wire_quantize_group_rows_each(kw__quantize_groups_avx512, codec, rows, n_rows, dtype, D, G, inv, dst);
}

/* kw__wire_kernels.quantize_rows: bf16 int8 and int4 rows of a multiple of 64 values by kw__quantize_int84_bf16_avx512
 * inlined for each, NF4 and FP8 rows of a multiple of 16 by kw__quantize_nf4_fp8_avx512, the rest as the AVX2 kernel.
 */
KW_AVX512 static void kw__quantize_rows_avx512(uint32_t codec, const uint8_t *const *rows, uint32_t n_rows,
                                               uint32_t dtype, uint32_t n, const float *inv, uint8_t *dst) {
    const size_t rb = (size_t)n * kw_wire_codec_bits(codec) / 8;
    if (dtype == KW_WIRE_DTYPE_BF16 && n % 64 == 0 && codec == KW_WIRE_CODEC_INT8) {
        for (uint32_t r = 0; r < n_rows; ++r)
            kw__quantize_int84_bf16_avx512(KW_WIRE_CODEC_INT8, (const uint16_t *)rows[r], n, inv[r], NULL, 0,
                                           dst + r * rb);
        return;
    }
    if (dtype == KW_WIRE_DTYPE_BF16 && n % 64 == 0 && codec == KW_WIRE_CODEC_INT4) {
        for (uint32_t r = 0; r < n_rows; ++r)
            kw__quantize_int84_bf16_avx512(KW_WIRE_CODEC_INT4, (const uint16_t *)rows[r], n, inv[r], NULL, 0,
                                           dst + r * rb);
        return;
    }
    if ((codec == KW_WIRE_CODEC_NF4 || codec == KW_WIRE_CODEC_E4M3 || codec == KW_WIRE_CODEC_E5M2) &&
        dtype >= KW_WIRE_DTYPE_BF16 && dtype <= KW_WIRE_DTYPE_F32 && n % 16 == 0) {
        kw__quantize_nf4_fp8_avx512(codec, NULL, rows, n_rows, dtype, n, inv, dst);
        return;
    }
    if ((codec == KW_WIRE_CODEC_INT8 || codec == KW_WIRE_CODEC_INT4) && dtype == KW_WIRE_DTYPE_BF16 && n % 32 == 0) {
        for (uint32_t r = 0; r < n_rows; ++r)
            kw__quantize_avx512(codec, rows[r], dtype, n, inv[r], dst + r * rb);
        return;
    }
    kw__quantize_rows_avx2(codec, rows, n_rows, dtype, n, inv, dst);
}

/* kw__wire_kernels.dequantize_groups: int8 and int4 groups of a multiple of 32 values in one loop
 * (kw__dequantize_int84_avx512 with each group's scale), the rest group by group. */
KW_AVX512 static int kw__dequantize_groups_avx512(uint32_t codec, const uint8_t *src, uint32_t n, uint32_t G,
                                                  const float *s, void *out, uint32_t out_dtype) {
    if (codec == KW_WIRE_CODEC_INT8 && G % 32 == 0)
        return kw__dequantize_int84_avx512(KW_WIRE_CODEC_INT8, src, n, 0.0f, s, G, out, out_dtype) ? KW_E_WIRE_VALUE
                                                                                                   : 0;
    if (codec == KW_WIRE_CODEC_INT4 && G % 32 == 0)
        return kw__dequantize_int84_avx512(KW_WIRE_CODEC_INT4, src, n, 0.0f, s, G, out, out_dtype) ? KW_E_WIRE_VALUE
                                                                                                   : 0;
    return kw__dequantize_each_avx512(codec, src, n, G, s, out, out_dtype);
}

#define KW__LOAD8_PD(p)               _mm512_cvtps_pd(_mm256_loadu_ps(p))
#define KW__SEL8_PD(a, b, pred, t, f) _mm512_mask_blend_pd(_mm512_cmp_pd_mask(a, b, pred), f, t)
#define KW__STORE8_PD(p, v)           _mm256_storeu_ps(p, _mm512_cvtpd_ps(v))
KW__OUTLIER_SCORES(kw__outlier_scores_avx512, KW_AVX512, __m512d, 8, 512, KW__LOAD8_PD, KW__SEL8_PD, KW__STORE8_PD)

/* x86 is little-endian: bit i of a mask register is bit i % 8 of byte i / 8 */
#define KW__MASKS16(k, vlo, vhi, a, i)                                                                                 \
    do {                                                                                                               \
        const __mmask16 gt = _mm512_cmpgt_epi32_mask(k, vhi);                                                          \
        const __mmask16 ib = _mm512_mask_cmpge_epi32_mask(_mm512_cmple_epi32_mask(k, vhi), k, vlo);                    \
        memcpy(a, &gt, 2);                                                                                             \
        memcpy(i, &ib, 2);                                                                                             \
    } while (0)
KW__OUTLIER_BITS(kw__outlier_bits_avx512, KW_AVX512, __m512i, 16, 512, KW__MASKS16)

static const kw__wire_kernels kw__avx512_kernels = {
    .isa = KW_WIRE_ISA_AVX512,
    .amax = kw__amax_avx512,
    .quantize = kw__quantize_avx512,
    .dequantize = kw__dequantize_avx512,
    .minmax = kw__minmax_avx512,
    .minmax_fold = kw__minmax_fold_avx512,
    .quantize_affine = kw__quantize_affine_avx512,
    .dequantize_affine = kw__dequantize_affine_avx2, /* the AVX2 kernel: no 16-wide one yet */
    .scales = kw__scales_avx2,
    .rotate = kw__rotate_avx512,
    .amax_groups = kw__amax_groups_avx512,
    .quantize_groups = kw__quantize_groups_avx512,
    .quantize_group_rows = kw__quantize_group_rows_avx512,
    .quantize_rows = kw__quantize_rows_avx512,
    .dequantize_groups = kw__dequantize_groups_avx512,
    .dequantize_rows = kw__dequantize_rows_avx512,
    .outlier_scores = kw__outlier_scores_avx512,
    .outlier_bits = kw__outlier_bits_avx512,
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
