/* kw_cpu_matmul.c: y (M, N) = x (M, K) w (N, K)^T (+ bias) on the CPU, w f32/bf16/f16, fp32 accumulation.
 *
 * Two regimes:
 *  - small M (decode, and on AVX-512 anything up to M = 32..64, see kw_gemv_max_m): each thread streams its own
 *    contiguous slice of W's rows exactly once, widening bf16/f16 to fp32 in registers, four W rows in flight
 *    against every x row. At M = 1 this is memory-bound and reads each weight byte once.
 *  - larger M (prefill): compute-bound. W is widened panel by panel into per-thread fp32 buffers and multiplied with
 *    OpenBLAS sgemm (single-threaded, one panel per OpenMP thread): about 75 GFLOP/s per core at M = 128, just
 *    ahead of the streaming kernel (docs/BENCHMARKS.md, ### Kernels).
 * Summation order differs from the oracle (16 lanes then a tree, or sgemm's blocking); the tests bound the
 * difference by the fp32 error of a K-term dot product.
 */
#include "kernels/cpu/kw_cpu.h"

#include <cblas.h>
#include <omp.h>
#include <string.h>

#include "common/kw_half.h"
#include "common/kw_status.h"

#if KW_CPU_X86
#include <immintrin.h>
#endif

/* Largest M served by the streaming kernels. On AVX-512 they keep 65-72 GFLOP/s per core for any M (W stays in L1
 * across the x rows), which beats widening W and calling sgemm until M reaches about 64 for bf16 and 32 for f16/f32
 * (thread CPU time, N=3072, K=1024, EPYC Zen 4); the AVX2 and scalar kernels convert W once per x row, so they hand
 * over to sgemm early. */
static int64_t kw_gemv_max_m(enum kw_cpu_isa isa, enum kw_dtype dtype) {
    if (isa == KW_CPU_ISA_AVX512) return dtype == KW_DTYPE_BF16 ? 64 : 32;
    return 4;
}

/* ------------------------------------------------------------------------------------------------------------
 * Streaming kernels, rows [n0, n1) of W
 */

static float kw_w_scalar(const void *w, enum kw_dtype dtype, int64_t i) {
    if (dtype == KW_DTYPE_BF16) return kw_bf16_to_f32(((const uint16_t *)w)[i]);
    if (dtype == KW_DTYPE_F16) return kw_f16_to_f32(((const uint16_t *)w)[i]);
    return ((const float *)w)[i];
}

static void kw_gemv_scalar(float *y, const float *x, const void *w, enum kw_dtype dtype, int64_t M, int64_t N,
                           int64_t K, int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
        for (int64_t m = 0; m < M; ++m) {
            const float *xm = x + m * K;
            float part[8] = {0};
            int64_t k = 0;
            for (; k + 8 <= K; k += 8)
                for (int j = 0; j < 8; ++j)
                    part[j] += xm[k + j] * kw_w_scalar(w, dtype, n * K + k + j);
            for (; k < K; ++k)
                part[0] += xm[k] * kw_w_scalar(w, dtype, n * K + k);
            y[m * N + n] = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
        }
    }
}

#if KW_CPU_X86
/* AVX2: 8 lanes, 4 rows at a time, scalar tail in K. */
KW_TARGET_AVX2 static inline __m256 kw_ld8_avx2(const void *w, enum kw_dtype dtype, int64_t i) {
    if (dtype == KW_DTYPE_BF16)
        return _mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i))), 16));
    if (dtype == KW_DTYPE_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i)));
    return _mm256_loadu_ps((const float *)w + i);
}

KW_TARGET_AVX2 static inline float kw_hsum_avx2(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

#define KW_GEMV_AVX2_BODY(DTYPE)                                                                                       \
    do {                                                                                                               \
        int64_t n = n0;                                                                                                \
        for (; n + 4 <= n1; n += 4) {                                                                                  \
            for (int64_t m = 0; m < M; ++m) {                                                                          \
                const float *xm = x + m * K;                                                                           \
                __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                                            \
                int64_t k = 0;                                                                                         \
                for (; k + 8 <= K; k += 8) {                                                                           \
                    const __m256 xv = _mm256_loadu_ps(xm + k);                                                         \
                    a0 = _mm256_fmadd_ps(xv, kw_ld8_avx2(w, DTYPE, (n + 0) * K + k), a0);                              \
                    a1 = _mm256_fmadd_ps(xv, kw_ld8_avx2(w, DTYPE, (n + 1) * K + k), a1);                              \
                    a2 = _mm256_fmadd_ps(xv, kw_ld8_avx2(w, DTYPE, (n + 2) * K + k), a2);                              \
                    a3 = _mm256_fmadd_ps(xv, kw_ld8_avx2(w, DTYPE, (n + 3) * K + k), a3);                              \
                }                                                                                                      \
                float s0 = kw_hsum_avx2(a0), s1 = kw_hsum_avx2(a1), s2 = kw_hsum_avx2(a2), s3 = kw_hsum_avx2(a3);      \
                for (; k < K; ++k) {                                                                                   \
                    s0 += xm[k] * kw_w_scalar(w, DTYPE, (n + 0) * K + k);                                              \
                    s1 += xm[k] * kw_w_scalar(w, DTYPE, (n + 1) * K + k);                                              \
                    s2 += xm[k] * kw_w_scalar(w, DTYPE, (n + 2) * K + k);                                              \
                    s3 += xm[k] * kw_w_scalar(w, DTYPE, (n + 3) * K + k);                                              \
                }                                                                                                      \
                y[m * N + n] = s0;                                                                                     \
                y[m * N + n + 1] = s1;                                                                                 \
                y[m * N + n + 2] = s2;                                                                                 \
                y[m * N + n + 3] = s3;                                                                                 \
            }                                                                                                          \
        }                                                                                                              \
        for (; n < n1; ++n) {                                                                                          \
            for (int64_t m = 0; m < M; ++m) {                                                                          \
                const float *xm = x + m * K;                                                                           \
                __m256 a0 = _mm256_setzero_ps();                                                                       \
                int64_t k = 0;                                                                                         \
                for (; k + 8 <= K; k += 8)                                                                             \
                    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xm + k), kw_ld8_avx2(w, DTYPE, n * K + k), a0);               \
                float s0 = kw_hsum_avx2(a0);                                                                           \
                for (; k < K; ++k)                                                                                     \
                    s0 += xm[k] * kw_w_scalar(w, DTYPE, n * K + k);                                                    \
                y[m * N + n] = s0;                                                                                     \
            }                                                                                                          \
        }                                                                                                              \
    } while (0)

KW_TARGET_AVX2 static void kw_gemv_avx2_bf16(float *y, const float *x, const void *w, int64_t M, int64_t N, int64_t K,
                                             int64_t n0, int64_t n1) {
    KW_GEMV_AVX2_BODY(KW_DTYPE_BF16);
}
KW_TARGET_AVX2 static void kw_gemv_avx2_f16(float *y, const float *x, const void *w, int64_t M, int64_t N, int64_t K,
                                            int64_t n0, int64_t n1) {
    KW_GEMV_AVX2_BODY(KW_DTYPE_F16);
}
KW_TARGET_AVX2 static void kw_gemv_avx2_f32(float *y, const float *x, const void *w, int64_t M, int64_t N, int64_t K,
                                            int64_t n0, int64_t n1) {
    KW_GEMV_AVX2_BODY(KW_DTYPE_F32);
}

/* AVX-512: 16 lanes, 4 rows at a time, masked tail in K. */
KW_TARGET_AVX512 static inline __m512 kw_ld16_avx512(const void *w, enum kw_dtype dtype, int64_t i, __mmask16 m) {
    if (dtype == KW_DTYPE_BF16)
        return _mm512_castsi512_ps(
            _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, (const uint16_t *)w + i)), 16));
    if (dtype == KW_DTYPE_F16) return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)w + i));
    return _mm512_maskz_loadu_ps(m, (const float *)w + i);
}

#define KW_GEMV_AVX512_BODY(DTYPE)                                                                                     \
    do {                                                                                                               \
        const int64_t k_full = K & ~(int64_t)15;                                                                       \
        const __mmask16 tail = (__mmask16)((1u << (K - k_full)) - 1u);                                                 \
        int64_t n = n0;                                                                                                \
        for (; n + 4 <= n1; n += 4) {                                                                                  \
            for (int64_t m = 0; m < M; ++m) {                                                                          \
                const float *xm = x + m * K;                                                                           \
                __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                                            \
                for (int64_t k = 0; k < k_full; k += 16) {                                                             \
                    const __m512 xv = _mm512_loadu_ps(xm + k);                                                         \
                    a0 = _mm512_fmadd_ps(xv, kw_ld16_avx512(w, DTYPE, (n + 0) * K + k, 0xffff), a0);                   \
                    a1 = _mm512_fmadd_ps(xv, kw_ld16_avx512(w, DTYPE, (n + 1) * K + k, 0xffff), a1);                   \
                    a2 = _mm512_fmadd_ps(xv, kw_ld16_avx512(w, DTYPE, (n + 2) * K + k, 0xffff), a2);                   \
                    a3 = _mm512_fmadd_ps(xv, kw_ld16_avx512(w, DTYPE, (n + 3) * K + k, 0xffff), a3);                   \
                }                                                                                                      \
                if (tail) {                                                                                            \
                    const __m512 xv = _mm512_maskz_loadu_ps(tail, xm + k_full);                                        \
                    a0 = _mm512_fmadd_ps(xv, kw_ld16_avx512(w, DTYPE, (n + 0) * K + k_full, tail), a0);                \
                    a1 = _mm512_fmadd_ps(xv, kw_ld16_avx512(w, DTYPE, (n + 1) * K + k_full, tail), a1);                \
                    a2 = _mm512_fmadd_ps(xv, kw_ld16_avx512(w, DTYPE, (n + 2) * K + k_full, tail), a2);                \
                    a3 = _mm512_fmadd_ps(xv, kw_ld16_avx512(w, DTYPE, (n + 3) * K + k_full, tail), a3);                \
                }                                                                                                      \
                y[m * N + n] = _mm512_reduce_add_ps(a0);                                                               \
                y[m * N + n + 1] = _mm512_reduce_add_ps(a1);                                                           \
                y[m * N + n + 2] = _mm512_reduce_add_ps(a2);                                                           \
                y[m * N + n + 3] = _mm512_reduce_add_ps(a3);                                                           \
            }                                                                                                          \
        }                                                                                                              \
        for (; n < n1; ++n) {                                                                                          \
            for (int64_t m = 0; m < M; ++m) {                                                                          \
                const float *xm = x + m * K;                                                                           \
                __m512 a0 = _mm512_setzero_ps();                                                                       \
                for (int64_t k = 0; k < k_full; k += 16)                                                               \
                    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(xm + k), kw_ld16_avx512(w, DTYPE, n * K + k, 0xffff), a0);    \
                if (tail)                                                                                              \
                    a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, xm + k_full),                                     \
                                         kw_ld16_avx512(w, DTYPE, n * K + k_full, tail), a0);                          \
                y[m * N + n] = _mm512_reduce_add_ps(a0);                                                               \
            }                                                                                                          \
        }                                                                                                              \
    } while (0)

/* bf16 on AVX-512 without a widening shuffle: a 64-byte load holds 32 bf16 values; as 16 fp32 lanes, the even
 * elements are the lanes shifted left by 16 and the odd ones the lanes with the low half cleared. x is prepared once
 * per call in the matching order (per 32-block: 16 even values, then 16 odd ones, zero-padded to Kp), so one load,
 * one shift, one and and two FMAs cover 32 weights. Two accumulators per row keep the FMA chains short. */
KW_TARGET_AVX512 static void kw_gemv_avx512_bf16_split(float *y, const float *xp, const uint16_t *w, int64_t M,
                                                       int64_t N, int64_t K, int64_t Kp, int64_t n0, int64_t n1) {
    const int64_t k_full = K & ~(int64_t)31;
    const __mmask32 tail = (__mmask32)((K - k_full) ? ((1ull << (K - k_full)) - 1ull) : 0);
    const __m512i hi_mask = _mm512_set1_epi32((int)0xffff0000u);
#define KW_BF16_EVEN(v) _mm512_castsi512_ps(_mm512_slli_epi32((v), 16))
#define KW_BF16_ODD(v)  _mm512_castsi512_ps(_mm512_and_si512((v), hi_mask))
    int64_t n = n0;
    for (; n + 4 <= n1; n += 4) {
        const uint16_t *w0 = w + n * K, *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;
        for (int64_t m = 0; m < M; ++m) {
            const float *xm = xp + m * Kp;
            __m512 a0 = _mm512_setzero_ps(), b0 = a0, a1 = a0, b1 = a0, a2 = a0, b2 = a0, a3 = a0, b3 = a0;
            int64_t k = 0;
            for (; k < k_full; k += 32) {
                const __m512 xe = _mm512_loadu_ps(xm + k), xo = _mm512_loadu_ps(xm + k + 16);
                const __m512i v0 = _mm512_loadu_si512(w0 + k), v1 = _mm512_loadu_si512(w1 + k);
                const __m512i v2 = _mm512_loadu_si512(w2 + k), v3 = _mm512_loadu_si512(w3 + k);
                a0 = _mm512_fmadd_ps(xe, KW_BF16_EVEN(v0), a0), b0 = _mm512_fmadd_ps(xo, KW_BF16_ODD(v0), b0);
                a1 = _mm512_fmadd_ps(xe, KW_BF16_EVEN(v1), a1), b1 = _mm512_fmadd_ps(xo, KW_BF16_ODD(v1), b1);
                a2 = _mm512_fmadd_ps(xe, KW_BF16_EVEN(v2), a2), b2 = _mm512_fmadd_ps(xo, KW_BF16_ODD(v2), b2);
                a3 = _mm512_fmadd_ps(xe, KW_BF16_EVEN(v3), a3), b3 = _mm512_fmadd_ps(xo, KW_BF16_ODD(v3), b3);
            }
            if (tail) {
                const __m512 xe = _mm512_loadu_ps(xm + k), xo = _mm512_loadu_ps(xm + k + 16);
                const __m512i v0 = _mm512_maskz_loadu_epi16(tail, w0 + k), v1 = _mm512_maskz_loadu_epi16(tail, w1 + k);
                const __m512i v2 = _mm512_maskz_loadu_epi16(tail, w2 + k), v3 = _mm512_maskz_loadu_epi16(tail, w3 + k);
                a0 = _mm512_fmadd_ps(xe, KW_BF16_EVEN(v0), a0), b0 = _mm512_fmadd_ps(xo, KW_BF16_ODD(v0), b0);
                a1 = _mm512_fmadd_ps(xe, KW_BF16_EVEN(v1), a1), b1 = _mm512_fmadd_ps(xo, KW_BF16_ODD(v1), b1);
                a2 = _mm512_fmadd_ps(xe, KW_BF16_EVEN(v2), a2), b2 = _mm512_fmadd_ps(xo, KW_BF16_ODD(v2), b2);
                a3 = _mm512_fmadd_ps(xe, KW_BF16_EVEN(v3), a3), b3 = _mm512_fmadd_ps(xo, KW_BF16_ODD(v3), b3);
            }
            y[m * N + n] = _mm512_reduce_add_ps(_mm512_add_ps(a0, b0));
            y[m * N + n + 1] = _mm512_reduce_add_ps(_mm512_add_ps(a1, b1));
            y[m * N + n + 2] = _mm512_reduce_add_ps(_mm512_add_ps(a2, b2));
            y[m * N + n + 3] = _mm512_reduce_add_ps(_mm512_add_ps(a3, b3));
        }
    }
    for (; n < n1; ++n) {
        const uint16_t *w0 = w + n * K;
        for (int64_t m = 0; m < M; ++m) {
            const float *xm = xp + m * Kp;
            __m512 a0 = _mm512_setzero_ps(), b0 = a0;
            int64_t k = 0;
            for (; k < k_full; k += 32) {
                const __m512i v0 = _mm512_loadu_si512(w0 + k);
                a0 = _mm512_fmadd_ps(_mm512_loadu_ps(xm + k), KW_BF16_EVEN(v0), a0);
                b0 = _mm512_fmadd_ps(_mm512_loadu_ps(xm + k + 16), KW_BF16_ODD(v0), b0);
            }
            if (tail) {
                const __m512i v0 = _mm512_maskz_loadu_epi16(tail, w0 + k);
                a0 = _mm512_fmadd_ps(_mm512_loadu_ps(xm + k), KW_BF16_EVEN(v0), a0);
                b0 = _mm512_fmadd_ps(_mm512_loadu_ps(xm + k + 16), KW_BF16_ODD(v0), b0);
            }
            y[m * N + n] = _mm512_reduce_add_ps(_mm512_add_ps(a0, b0));
        }
    }
#undef KW_BF16_EVEN
#undef KW_BF16_ODD
}
KW_TARGET_AVX512 static void kw_gemv_avx512_f16(float *y, const float *x, const void *w, int64_t M, int64_t N,
                                                int64_t K, int64_t n0, int64_t n1) {
    KW_GEMV_AVX512_BODY(KW_DTYPE_F16);
}
KW_TARGET_AVX512 static void kw_gemv_avx512_f32(float *y, const float *x, const void *w, int64_t M, int64_t N,
                                                int64_t K, int64_t n0, int64_t n1) {
    KW_GEMV_AVX512_BODY(KW_DTYPE_F32);
}
#endif

static void kw_gemv_rows(enum kw_cpu_isa isa, float *y, const float *x, const void *w, enum kw_dtype dtype, int64_t M,
                         int64_t N, int64_t K, int64_t n0, int64_t n1) {
#if KW_CPU_X86
    if (isa == KW_CPU_ISA_AVX512) {
        if (dtype == KW_DTYPE_BF16) /* normally served by kw_gemv_avx512_bf16_split */
            kw_gemv_avx2_bf16(y, x, w, M, N, K, n0, n1);
        else if (dtype == KW_DTYPE_F16)
            kw_gemv_avx512_f16(y, x, w, M, N, K, n0, n1);
        else
            kw_gemv_avx512_f32(y, x, w, M, N, K, n0, n1);
        return;
    }
    if (isa == KW_CPU_ISA_AVX2) {
        if (dtype == KW_DTYPE_BF16)
            kw_gemv_avx2_bf16(y, x, w, M, N, K, n0, n1);
        else if (dtype == KW_DTYPE_F16)
            kw_gemv_avx2_f16(y, x, w, M, N, K, n0, n1);
        else
            kw_gemv_avx2_f32(y, x, w, M, N, K, n0, n1);
        return;
    }
#endif
    (void)isa;
    kw_gemv_scalar(y, x, w, dtype, M, N, K, n0, n1);
}

/* ------------------------------------------------------------------------------------------------------------
 * Entry point
 */

int kw__cpu_matmul(kw_backend *backend, kw_tensor *out, const kw_tensor *x, const kw_tensor *w, const kw_tensor *bias) {
    kw_cpu_backend *cpu = kw__cpu(backend);
    const int64_t M = kw_tensor_nrows(x), K = w->ne[1], N = w->ne[0];
    const float *xs = x->data;
    float *y = out->data;
    const int work_threads = (M * N * K >= KW_CPU_PARALLEL_MIN * 4 && N >= 8) ? cpu->n_threads : 1;

    if (M <= kw_gemv_max_m(cpu->isa, w->dtype) || M > INT32_MAX || N > INT32_MAX || K > INT32_MAX) {
        const int nt = work_threads;
        const int split_bf16 = KW_CPU_X86 && cpu->isa == KW_CPU_ISA_AVX512 && w->dtype == KW_DTYPE_BF16;
        const int64_t Kp = (K + 31) & ~(int64_t)31;
        float *xp = NULL;
        if (split_bf16) {
            KW_FORWARD(kw__cpu_scratch(cpu, (size_t)(M * Kp), &xp));
            for (int64_t m = 0; m < M; ++m) {
                float *dst = xp + m * Kp;
                for (int64_t k = 0; k < Kp; ++k) {
                    const int64_t blk = k & ~(int64_t)31, j = k & 31;
                    const int64_t src = blk + (j < 16 ? 2 * j : 2 * (j - 16) + 1);
                    dst[k] = src < K ? xs[m * K + src] : 0.0f;
                }
            }
        }
#pragma omp parallel num_threads(nt)
        {
            const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
            /* contiguous slices of whole 4-row groups, so each thread streams one region of W */
            const int64_t groups = (N + 3) / 4;
            const int64_t g0 = groups * tid / nth, g1 = groups * (tid + 1) / nth;
            const int64_t n0 = g0 * 4, n1 = g1 * 4 < N ? g1 * 4 : N;
            if (n0 < n1) {
#if KW_CPU_X86
                if (split_bf16)
                    kw_gemv_avx512_bf16_split(y, xp, w->data, M, N, K, Kp, n0, n1);
                else
#endif
                    kw_gemv_rows(cpu->isa, y, xs, w->data, w->dtype, M, N, K, n0, n1);
            }
        }
    } else {
        /* panels of NB rows of W, about 512 KiB of fp32 each (fits L2 with room for the x tile) */
        int64_t NB = ((int64_t)1 << 17) / K;
        NB = NB < 16 ? 16 : NB > 512 ? 512 : NB & ~(int64_t)15;
        const int64_t panels = (N + NB - 1) / NB;
        const int nt = (int)(panels < work_threads ? panels : work_threads);
        float *buf = NULL;
        if (w->dtype != KW_DTYPE_F32) KW_FORWARD(kw__cpu_scratch(cpu, (size_t)(NB * K) * (size_t)nt, &buf));
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t p = 0; p < panels; ++p) {
            const int64_t n0 = p * NB, nb = N - n0 < NB ? N - n0 : NB;
            const float *wp;
            if (w->dtype == KW_DTYPE_F32) {
                wp = (const float *)w->data + n0 * K;
            } else {
                float *mine = buf + (size_t)omp_get_thread_num() * (size_t)(NB * K);
                kw__cpu_to_f32(cpu->isa, mine, w->data, w->dtype, n0 * K, nb * K);
                wp = mine;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)nb, (int)K, 1.0f, xs, (int)K, wp, (int)K,
                        0.0f, y + n0, (int)N);
        }
    }

    if (bias) {
        for (int64_t n = 0; n < N; ++n) {
            float b;
            kw__cpu_to_f32(KW_CPU_ISA_SCALAR, &b, bias->data, bias->dtype, n, 1);
            for (int64_t m = 0; m < M; ++m)
                y[m * N + n] += b;
        }
    }
    return 0;
}
