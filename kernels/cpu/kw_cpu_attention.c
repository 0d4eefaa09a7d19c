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
        r += q[d] * (dtype == KW_DTYPE_BF16 ? kw_bf16_to_f32(((const uint16_t *)k)[d]) : ((const float *)k)[d]);
    return r;
}

KW_TARGET_AVX2 static void kw_axpy_avx2(float *acc, float e, const void *v, enum kw_dtype dtype, int64_t D) {
    const __m256 ev = _mm256_set1_ps(e);
    int64_t d = 0;
    for (; d + 8 <= D; d += 8)
        _mm256_storeu_ps(acc + d, _mm256_fmadd_ps(ev, kw_attn_ld8_avx2(v, dtype, d), _mm256_loadu_ps(acc + d)));
    for (; d < D; ++d)
        acc[d] += e * (dtype == KW_DTYPE_BF16 ? kw_bf16_to_f32(((const uint16_t *)v)[d]) : ((const float *)v)[d]);
}

KW_TARGET_AVX512 static inline __m512 kw_attn_ld16_avx512(const void *p, enum kw_dtype dtype, int64_t d, __mmask16 m) {
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
        const int64_t hi = p < n_kv - 1 ? p : n_kv - 1;
        const int64_t lo = window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
        const char *kbase = (const char *)k_cache->data + (size_t)(kvh * cap * D) * esize;
        const char *vbase = (const char *)v_cache->data + (size_t)(kvh * cap * D) * esize;
        for (int64_t h0 = kvh * group; h0 < (kvh + 1) * group; h0 += chunk) {
            const int64_t nh = (kvh + 1) * group - h0 < chunk ? (kvh + 1) * group - h0 : chunk;
            float maxs[KW_ATTN_MAX_GROUP], sums[KW_ATTN_MAX_GROUP];
            for (int64_t g = 0; g < nh; ++g)
                maxs[g] = -INFINITY, sums[g] = 0.0f;
            /* scores: each K row once for the nh query heads */
            for (int64_t j = lo; j <= hi; ++j) {
                if (mask && mask[j] == 0) continue;
                const void *krow = kbase + (size_t)(j * D) * esize;
                for (int64_t g = 0; g < nh; ++g) {
                    const float s = kw_dot(cpu->isa, qs + (t * Hq + h0 + g) * D, krow, dtype, D) * scale;
                    scores[g * n_kv + j] = s;
                    if (s > maxs[g]) maxs[g] = s;
                }
            }
            memset(acc, 0, (size_t)(nh * D) * sizeof(float));
            for (int64_t j = lo; j <= hi; ++j) {
                if (mask && mask[j] == 0) continue;
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
