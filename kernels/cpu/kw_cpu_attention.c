/* kw_cpu_attention.c: causal GQA attention over an f32 or bf16 KV cache on the CPU.
 *
 * One work item is a (query token, kv head) pair: the kv head's K rows are read once for the whole group of query
 * heads that share it (GQA), scores are kept in a per-thread scratch row, softmax is two-pass (max, then exp and
 * sum) in fp32, and the weighted V sum accumulates in fp32. The visible rows of query t (cache position
 * p = q_pos0 + t) are j <= p, j < n_kv, kv_mask[j] != 0 and, with a sliding window W, j > p - W; a query that
 * sees nothing gets zeros. Not here: any KV layout other than (Hkv, cap, D), or the projection of q/k/v.
 */
#include "kernels/cpu/kw_cpu.h"

#include <math.h>
#include <omp.h>
#include <string.h>

#include "common/kw_half.h"
#include "common/kw_status.h"
#include "kernels/kw_op_math.h"

#if KW_CPU_X86
#include <immintrin.h>
#endif

/* Group sizes above this run in chunks (scores for every head of a chunk live in scratch together). */
#define KW_ATTN_MAX_GROUP 16

/* ------------------------------------------------------------------------------------------------------------
 * Row primitives: dot(q, k_row) and acc += e * v_row, for f32 and bf16 rows.
 */

static float kw_dot_scalar(const float *q, const void *k, enum kw_dtype dtype, int64_t D) {
    float part[8] = {0};
    int64_t d = 0;
    if (dtype == KW_DTYPE_BF16) {
        const uint16_t *kb = k;
        for (; d + 8 <= D; d += 8)
            for (int j = 0; j < 8; ++j)
                part[j] += q[d + j] * kw_bf16_to_f32(kb[d + j]);
        for (; d < D; ++d)
            part[0] += q[d] * kw_bf16_to_f32(kb[d]);
    } else {
        const float *kf = k;
        for (; d + 8 <= D; d += 8)
            for (int j = 0; j < 8; ++j)
                part[j] += q[d + j] * kf[d + j];
        for (; d < D; ++d)
            part[0] += q[d] * kf[d];
    }
    return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

static void kw_axpy_scalar(float *acc, float e, const void *v, enum kw_dtype dtype, int64_t D) {
    if (dtype == KW_DTYPE_BF16) {
        const uint16_t *vb = v;
        for (int64_t d = 0; d < D; ++d)
            acc[d] += e * kw_bf16_to_f32(vb[d]);
    } else {
        const float *vf = v;
        for (int64_t d = 0; d < D; ++d)
            acc[d] += e * vf[d];
    }
}

#if KW_CPU_X86
KW_TARGET_AVX2 static inline __m256 kw_attn_ld8_avx2(const void *p, enum kw_dtype dtype, int64_t d) {
    if (dtype == KW_DTYPE_BF16)
        return _mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + d))), 16));
    return _mm256_loadu_ps((const float *)p + d);
}

KW_TARGET_AVX2 static float kw_dot_avx2(const float *q, const void *k, enum kw_dtype dtype, int64_t D) {
    __m256 a = _mm256_setzero_ps();
    int64_t d = 0;
    for (; d + 8 <= D; d += 8)
        a = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), kw_attn_ld8_avx2(k, dtype, d), a);
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    float r = _mm_cvtss_f32(s);
    for (; d < D; ++d)
        r += q[d] * kw_opm_load(k, dtype, d);
    return r;
}

KW_TARGET_AVX2 static void kw_axpy_avx2(float *acc, float e, const void *v, enum kw_dtype dtype, int64_t D) {
    const __m256 ev = _mm256_set1_ps(e);
    int64_t d = 0;
    for (; d + 8 <= D; d += 8)
        _mm256_storeu_ps(acc + d, _mm256_fmadd_ps(ev, kw_attn_ld8_avx2(v, dtype, d), _mm256_loadu_ps(acc + d)));
    for (; d < D; ++d)
        acc[d] += e * kw_opm_load(v, dtype, d);
}

KW_TARGET_AVX512 static inline __attribute__((always_inline)) __m512
kw_attn_ld16_avx512(const void *p, enum kw_dtype dtype, int64_t d, __mmask16 m) {
    if (dtype == KW_DTYPE_BF16)
        return _mm512_castsi512_ps(
            _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, (const uint16_t *)p + d)), 16));
    return _mm512_maskz_loadu_ps(m, (const float *)p + d);
}

KW_TARGET_AVX512 static float kw_dot_avx512(const float *q, const void *k, enum kw_dtype dtype, int64_t D) {
    __m512 a = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; d += 16) {
        const __mmask16 m = D - d >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (D - d)) - 1u);
        a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + d), kw_attn_ld16_avx512(k, dtype, d, m), a);
    }
    return _mm512_reduce_add_ps(a);
}

KW_TARGET_AVX512 static void kw_axpy_avx512(float *acc, float e, const void *v, enum kw_dtype dtype, int64_t D) {
    const __m512 ev = _mm512_set1_ps(e);
    for (int64_t d = 0; d < D; d += 16) {
        const __mmask16 m = D - d >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (D - d)) - 1u);
        const __m512 r = _mm512_fmadd_ps(ev, kw_attn_ld16_avx512(v, dtype, d, m), _mm512_maskz_loadu_ps(m, acc + d));
        _mm512_mask_storeu_ps(acc + d, m, r);
    }
}

/* One (token, kv head) item on AVX-512 for the nh query heads of a group, D a multiple of 16. Scores: 4 K rows x 2
 * query heads per step (8 independent FMA chains, each K chunk widened once); masked rows get -inf, so their exp is
 * 0. Then per head: max, exp vectorized over the score row, sum, and the weighted V sum with up to 8 chunks (128
 * dims) of output in registers. Same two-pass numerics as the portable path. dtype is a constant after inlining. */
#define KW_AVX512_INLINE KW_TARGET_AVX512 static inline __attribute__((always_inline))

KW_AVX512_INLINE void kw_attn_scores_avx512(float *scores, const float *q, int64_t nh, const char *kbase,
                                            enum kw_dtype dtype, int64_t D, int64_t lo, int64_t hi, const uint8_t *mask,
                                            float scale, int64_t n_kv) {
    const size_t row_bytes = (size_t)D * kw_dtype_size(dtype);
    for (int64_t g = 0; g < nh; g += 2) {
        const int two = nh - g >= 2;
        const float *q0 = q + g * D, *q1 = two ? q0 + D : q0;
        float *s0 = scores + g * n_kv, *s1 = two ? s0 + n_kv : s0;
        int64_t j = lo;
        for (; j + 4 <= hi + 1; j += 4) {
            __m512 acc[4][2];
#pragma GCC unroll 4
            for (int r = 0; r < 4; ++r)
                acc[r][0] = acc[r][1] = _mm512_setzero_ps();
            for (int64_t d = 0; d < D; d += 16) {
                const __m512 x0 = _mm512_loadu_ps(q0 + d), x1 = _mm512_loadu_ps(q1 + d);
#pragma GCC unroll 4
                for (int r = 0; r < 4; ++r) {
                    const __m512 kv = kw_attn_ld16_avx512(kbase + (size_t)(j + r) * row_bytes, dtype, d, 0xffff);
                    acc[r][0] = _mm512_fmadd_ps(x0, kv, acc[r][0]);
                    acc[r][1] = _mm512_fmadd_ps(x1, kv, acc[r][1]);
                }
            }
#pragma GCC unroll 4
            for (int r = 0; r < 4; ++r) {
                const int masked = kw_opm_attn_masked(mask, j + r);
                s0[j + r] = masked ? -INFINITY : _mm512_reduce_add_ps(acc[r][0]) * scale;
                s1[j + r] = masked ? -INFINITY : _mm512_reduce_add_ps(acc[r][1]) * scale;
            }
        }
        for (; j <= hi; ++j) {
            __m512 a0 = _mm512_setzero_ps(), a1 = a0;
            for (int64_t d = 0; d < D; d += 16) {
                const __m512 kv = kw_attn_ld16_avx512(kbase + (size_t)j * row_bytes, dtype, d, 0xffff);
                a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q0 + d), kv, a0);
                a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q1 + d), kv, a1);
            }
            const int masked = kw_opm_attn_masked(mask, j);
            s0[j] = masked ? -INFINITY : _mm512_reduce_add_ps(a0) * scale;
            s1[j] = masked ? -INFINITY : _mm512_reduce_add_ps(a1) * scale;
        }
    }
}

/* o[c0*16 .. (c0+B)*16) = inv * sum_j e_j v_j for B chunks of 16 dims, accumulators in registers. */
#define KW_ATTN_V_BLOCK(B)                                                                                             \
    do {                                                                                                               \
        __m512 a[B];                                                                                                   \
        _Pragma("GCC unroll 8") for (int c = 0; c < (B); ++c) a[c] = _mm512_setzero_ps();                              \
        for (int64_t j = 0; j < n; ++j) {                                                                              \
            const float e = e_row[j];                                                                                  \
            if (e == 0.0f) continue; /* masked rows and underflow contribute nothing */                                \
            const __m512 ev = _mm512_set1_ps(e);                                                                       \
            const char *vrow = vbase + (size_t)(lo + j) * row_bytes;                                                   \
            _Pragma("GCC unroll 8") for (int c = 0; c < (B); ++c) a[c] =                                               \
                _mm512_fmadd_ps(ev, kw_attn_ld16_avx512(vrow, dtype, (c0 + c) * 16, 0xffff), a[c]);                    \
        }                                                                                                              \
        _Pragma("GCC unroll 8") for (int c = 0; c < (B); ++c)                                                          \
            _mm512_storeu_ps(o + (c0 + c) * 16, _mm512_mul_ps(a[c], iv));                                              \
        c0 += (B);                                                                                                     \
    } while (0)

KW_AVX512_INLINE void kw_attn_item_avx512_impl(float *out, const float *q, int64_t nh, const char *kbase,
                                               const char *vbase, enum kw_dtype dtype, int64_t D, int64_t lo,
                                               int64_t hi, const uint8_t *mask, float scale, float *scores,
                                               int64_t n_kv) {
    const size_t row_bytes = (size_t)D * kw_dtype_size(dtype);
    const int64_t n = hi - lo + 1, nc = D / 16;
    kw_attn_scores_avx512(scores, q, nh, kbase, dtype, D, lo, hi, mask, scale, n_kv);
    for (int64_t g = 0; g < nh; ++g) {
        float *e_row = scores + g * n_kv + lo;
        __m512 mx = _mm512_set1_ps(-INFINITY);
        for (int64_t i = 0; i < n; i += 16) {
            const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
            mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), m, e_row + i));
        }
        const float max = _mm512_reduce_max_ps(mx);
        float *o = out + g * D;
        if (max == -INFINITY) { /* nothing visible */
            memset(o, 0, (size_t)D * sizeof(float));
            continue;
        }
        const __m512 mv = _mm512_set1_ps(max);
        for (int64_t i = 0; i < n; i += 16) {
            const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
            _mm512_mask_storeu_ps(e_row + i, m, _mm512_sub_ps(_mm512_maskz_loadu_ps(m, e_row + i), mv));
        }
        kw__cpu_exp_f32(KW_CPU_ISA_AVX512, e_row, e_row, n);
        __m512 sv = _mm512_setzero_ps();
        for (int64_t i = 0; i < n; i += 16) {
            const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
            sv = _mm512_add_ps(sv, _mm512_maskz_loadu_ps(m, e_row + i));
        }
        const __m512 iv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sv));
        int64_t c0 = 0;
        while (nc - c0 >= 8)
            KW_ATTN_V_BLOCK(8);
        while (nc - c0 >= 4)
            KW_ATTN_V_BLOCK(4);
        while (nc - c0 >= 1)
            KW_ATTN_V_BLOCK(1);
    }
}

KW_TARGET_AVX512 static void kw_attn_item_avx512(float *out, const float *q, int64_t nh, const char *kbase,
                                                 const char *vbase, enum kw_dtype dtype, int64_t D, int64_t lo,
                                                 int64_t hi, const uint8_t *mask, float scale, float *scores,
                                                 int64_t n_kv) {
    if (dtype == KW_DTYPE_BF16)
        kw_attn_item_avx512_impl(out, q, nh, kbase, vbase, KW_DTYPE_BF16, D, lo, hi, mask, scale, scores, n_kv);
    else
        kw_attn_item_avx512_impl(out, q, nh, kbase, vbase, KW_DTYPE_F32, D, lo, hi, mask, scale, scores, n_kv);
}
#endif

static float kw_dot(enum kw_cpu_isa isa, const float *q, const void *k, enum kw_dtype dtype, int64_t D) {
#if KW_CPU_X86
    if (isa == KW_CPU_ISA_AVX512) return kw_dot_avx512(q, k, dtype, D);
    if (isa == KW_CPU_ISA_AVX2) return kw_dot_avx2(q, k, dtype, D);
#endif
    (void)isa;
    return kw_dot_scalar(q, k, dtype, D);
}

static void kw_axpy(enum kw_cpu_isa isa, float *acc, float e, const void *v, enum kw_dtype dtype, int64_t D) {
#if KW_CPU_X86
    if (isa == KW_CPU_ISA_AVX512) {
        kw_axpy_avx512(acc, e, v, dtype, D);
        return;
    }
    if (isa == KW_CPU_ISA_AVX2) {
        kw_axpy_avx2(acc, e, v, dtype, D);
        return;
    }
#endif
    (void)isa;
    kw_axpy_scalar(acc, e, v, dtype, D);
}

/* ------------------------------------------------------------------------------------------------------------
 * Entry point
 */

int kw__cpu_attention(kw_backend *backend, kw_tensor *out, const kw_tensor *q, const kw_tensor *k_cache,
                      const kw_tensor *v_cache, const kw_attention_params *params) {
    kw_cpu_backend *cpu = kw__cpu(backend);
    const int64_t T = q->ne[0], Hq = q->ne[1], D = q->ne[2], Hkv = k_cache->ne[0], cap = k_cache->ne[1];
    const int64_t group = Hq / Hkv, chunk = group < KW_ATTN_MAX_GROUP ? group : KW_ATTN_MAX_GROUP;
    const enum kw_dtype dtype = k_cache->dtype;
    const size_t esize = kw_dtype_size(dtype);
    const uint8_t *mask = params->kv_mask ? params->kv_mask->data : NULL;
    const int64_t n_kv = params->n_kv, window = params->sliding_window, q_pos0 = params->q_pos0;
    const float scale = params->scale;
    const float *qs = q->data;
    float *os = out->data;

    const int64_t items = T * Hkv;
    const int64_t work = T * Hq * (q_pos0 + T) * D;
    const int nt =
        (int)(work >= KW_CPU_PARALLEL_MIN * 4 && items > 1 ? (items < cpu->n_threads ? items : cpu->n_threads) : 1);
    /* per thread: chunk score rows of n_kv, chunk accumulators of D */
    const size_t per_thread = (size_t)(chunk * (n_kv + D) + 16);
    float *scratch;
    KW_FORWARD(kw__cpu_scratch(cpu, per_thread * (size_t)nt, &scratch));

#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t it = 0; it < items; ++it) {
        const int64_t t = it / Hkv, kvh = it % Hkv, p = q_pos0 + t;
        float *scores = scratch + per_thread * (size_t)omp_get_thread_num();
        float *acc = scores + chunk * n_kv;
        int64_t lo, hi; /* the rows the query sees before the mask, as the GPU computes them */
        kw_opm_attn_span(p, n_kv, window, &lo, &hi);
        const char *kbase = (const char *)k_cache->data + (size_t)(kvh * cap * D) * esize;
        const char *vbase = (const char *)v_cache->data + (size_t)(kvh * cap * D) * esize;
        for (int64_t h0 = kvh * group; h0 < (kvh + 1) * group; h0 += chunk) {
            const int64_t nh = (kvh + 1) * group - h0 < chunk ? (kvh + 1) * group - h0 : chunk;
#if KW_CPU_X86
            if (cpu->isa == KW_CPU_ISA_AVX512 && D % 16 == 0) {
                if (lo <= hi)
                    kw_attn_item_avx512(os + (t * Hq + h0) * D, qs + (t * Hq + h0) * D, nh, kbase, vbase, dtype, D, lo,
                                        hi, mask, scale, scores, n_kv);
                else
                    memset(os + (t * Hq + h0) * D, 0, (size_t)(nh * D) * sizeof(float));
                continue;
            }
#endif
            float maxs[KW_ATTN_MAX_GROUP], sums[KW_ATTN_MAX_GROUP];
            for (int64_t g = 0; g < nh; ++g)
                maxs[g] = -INFINITY, sums[g] = 0.0f;
            /* scores: each K row once for the nh query heads */
            for (int64_t j = lo; j <= hi; ++j) {
                if (kw_opm_attn_masked(mask, j)) continue;
                const void *krow = kbase + (size_t)(j * D) * esize;
                for (int64_t g = 0; g < nh; ++g) {
                    const float s = kw_dot(cpu->isa, qs + (t * Hq + h0 + g) * D, krow, dtype, D) * scale;
                    scores[g * n_kv + j] = s;
                    if (s > maxs[g]) maxs[g] = s;
                }
            }
            memset(acc, 0, (size_t)(nh * D) * sizeof(float));
            for (int64_t j = lo; j <= hi; ++j) {
                if (kw_opm_attn_masked(mask, j)) continue;
                const void *vrow = vbase + (size_t)(j * D) * esize;
                for (int64_t g = 0; g < nh; ++g) {
                    const float e = expf(scores[g * n_kv + j] - maxs[g]);
                    sums[g] += e;
                    kw_axpy(cpu->isa, acc + g * D, e, vrow, dtype, D);
                }
            }
            for (int64_t g = 0; g < nh; ++g) {
                float *o = os + (t * Hq + h0 + g) * D;
                if (sums[g] == 0.0f) { /* nothing visible (or every score -inf): zeros */
                    memset(o, 0, (size_t)D * sizeof(float));
                    continue;
                }
                const float inv = 1.0f / sums[g];
                for (int64_t d = 0; d < D; ++d)
                    o[d] = acc[g * D + d] * inv;
            }
        }
    }
    return 0;
}
