/* kw_cpu_matmul.c: y (M, N) = x (M, K) w (N, K)^T (+ bias) on the CPU, w f32/bf16/f16, fp32 accumulation.
 *
 * Two regimes:
 *  - small M (decode, and on AVX-512 anything up to M = 32..64, see kw_gemv_max_m): threads take blocks of 64 W
 *    rows and stream each exactly once, in memory order, widening bf16/f16 to fp32 in registers; every x
 *    row is applied to a W row while it sits in L1. At M = 1 this is memory-bound and reads each weight byte once.
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

#include "common/kw_status.h"
#include "kernels/kw_op_math.h"

#if KW_CPU_X86
#include <immintrin.h>
#endif

/* Largest M served by the streaming kernels, from thread-CPU-time measurements on this machine (EPYC Zen 4,
 * N = 1024..3072, K = 1024 and 3072): the AVX-512 bf16 kernel applies four x rows to each W row at 75-85 GFLOP/s
 * while those four rows fit L1 (K <= 2048), about 45 beyond; widen + sgemm gives 70-85 at M >= 64 but only 28-57
 * at M = 16..64. The f16/f32 AVX-512 kernels run at 40-56 for M <= 32. The AVX2 and scalar kernels hand over
 * early. */
static int64_t kw_gemv_max_m(enum kw_cpu_isa isa, enum kw_dtype dtype, int64_t K) {
    if (isa != KW_CPU_ISA_AVX512) return 4;
    if (dtype == KW_DTYPE_BF16) return K <= 2048 ? 64 : 32;
    return 32;
}

/* ------------------------------------------------------------------------------------------------------------
 * Streaming kernels, rows [n0, n1) of W
 */

static void kw_gemv_scalar(float *y, const float *x, const void *w, enum kw_dtype dtype, int64_t M, int64_t N,
                           int64_t K, int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
        for (int64_t m = 0; m < M; ++m) {
            const float *xm = x + m * K;
            float part[8] = {0};
            int64_t k = 0;
            for (; k + 8 <= K; k += 8)
                for (int j = 0; j < 8; ++j)
                    part[j] += xm[k + j] * kw_opm_load(w, dtype, n * K + k + j);
            for (; k < K; ++k)
                part[0] += xm[k] * kw_opm_load(w, dtype, n * K + k);
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

/* One W row at a time in memory order (see kw_gemv_avx512_bf16_split for why), four accumulators over 32 values,
 * scalar tail. */
#define KW_GEMV_AVX2_BODY(DTYPE)                                                                                       \
    do {                                                                                                               \
        const int64_t k32 = K & ~(int64_t)31;                                                                          \
        for (int64_t n = n0; n < n1; ++n) {                                                                            \
            const int64_t r = n * K;                                                                                   \
            for (int64_t m = 0; m < M; ++m) {                                                                          \
                const float *xm = x + m * K;                                                                           \
                __m256 a = _mm256_setzero_ps(), b = a, c = a, d = a;                                                   \
                int64_t k = 0;                                                                                         \
                for (; k < k32; k += 32) {                                                                             \
                    a = _mm256_fmadd_ps(_mm256_loadu_ps(xm + k), kw_ld8_avx2(w, DTYPE, r + k), a);                     \
                    b = _mm256_fmadd_ps(_mm256_loadu_ps(xm + k + 8), kw_ld8_avx2(w, DTYPE, r + k + 8), b);             \
                    c = _mm256_fmadd_ps(_mm256_loadu_ps(xm + k + 16), kw_ld8_avx2(w, DTYPE, r + k + 16), c);           \
                    d = _mm256_fmadd_ps(_mm256_loadu_ps(xm + k + 24), kw_ld8_avx2(w, DTYPE, r + k + 24), d);           \
                }                                                                                                      \
                for (; k + 8 <= K; k += 8)                                                                             \
                    a = _mm256_fmadd_ps(_mm256_loadu_ps(xm + k), kw_ld8_avx2(w, DTYPE, r + k), a);                     \
                float sum = kw_hsum_avx2(_mm256_add_ps(_mm256_add_ps(a, b), _mm256_add_ps(c, d)));                     \
                for (; k < K; ++k)                                                                                     \
                    sum += xm[k] * kw_opm_load(w, DTYPE, r + k);                                                       \
                y[m * N + n] = sum;                                                                                    \
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

/* One W row at a time in memory order (see kw_gemv_avx512_bf16_split), four accumulators over 64 values. */
#define KW_GEMV_AVX512_BODY(DTYPE)                                                                                     \
    do {                                                                                                               \
        const int64_t k64 = K & ~(int64_t)63;                                                                          \
        for (int64_t n = n0; n < n1; ++n) {                                                                            \
            for (int64_t m = 0; m < M; ++m) {                                                                          \
                const float *xm = x + m * K;                                                                           \
                const int64_t r = n * K;                                                                               \
                __m512 a = _mm512_setzero_ps(), b = a, c = a, d = a;                                                   \
                int64_t k = 0;                                                                                         \
                for (; k < k64; k += 64) {                                                                             \
                    a = _mm512_fmadd_ps(_mm512_loadu_ps(xm + k), kw_ld16_avx512(w, DTYPE, r + k, 0xffff), a);          \
                    b = _mm512_fmadd_ps(_mm512_loadu_ps(xm + k + 16), kw_ld16_avx512(w, DTYPE, r + k + 16, 0xffff),    \
                                        b);                                                                            \
                    c = _mm512_fmadd_ps(_mm512_loadu_ps(xm + k + 32), kw_ld16_avx512(w, DTYPE, r + k + 32, 0xffff),    \
                                        c);                                                                            \
                    d = _mm512_fmadd_ps(_mm512_loadu_ps(xm + k + 48), kw_ld16_avx512(w, DTYPE, r + k + 48, 0xffff),    \
                                        d);                                                                            \
                }                                                                                                      \
                for (; k < K; k += 16) {                                                                               \
                    const __mmask16 mk = K - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (K - k)) - 1u);          \
                    a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, xm + k), kw_ld16_avx512(w, DTYPE, r + k, mk), a);    \
                }                                                                                                      \
                y[m * N + n] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a, b), _mm512_add_ps(c, d)));          \
            }                                                                                                          \
        }                                                                                                              \
    } while (0)

/* bf16 on AVX-512 without a widening shuffle: a 64-byte load holds 32 bf16 values; as 16 fp32 lanes, the even
 * elements are the lanes shifted left by 16 and the odd ones the lanes with the low half cleared. x is prepared once
 * per call in the matching order (per 32-block: 16 even values, then 16 odd ones, zero-padded to Kp), so one load,
 * one shift, one and and two FMAs cover 32 weights.
 * W is read strictly in memory order, one row at a time (four accumulators over 64 weights per step): measured on
 * this machine, a single sequential stream runs at the memory-read baseline, while four interleaved row streams
 * (with or without software prefetching) reached less than half of it. Other x rows reuse the row from L1, four at
 * a time. */
KW_TARGET_AVX512 static void kw_gemv_avx512_bf16_split(float *y, const float *xp, const uint16_t *w, int64_t M,
                                                       int64_t N, int64_t K, int64_t Kp, int64_t n0, int64_t n1) {
    const int64_t k64 = K & ~(int64_t)63, k32 = K & ~(int64_t)31;
    const __mmask32 tail = (__mmask32)((K - k32) ? ((1ull << (K - k32)) - 1ull) : 0);
    const __m512i hi_mask = _mm512_set1_epi32((int)0xffff0000u);
#define KW_BF16_EVEN(v) _mm512_castsi512_ps(_mm512_slli_epi32((v), 16))
#define KW_BF16_ODD(v)  _mm512_castsi512_ps(_mm512_and_si512((v), hi_mask))
    const int64_t m4 = M & ~(int64_t)3;
    /* W in blocks of 64 rows (128 KiB at K = 1024, L2-resident) so that with many x rows each W row comes from
     * DRAM once and each group of four x rows stays in L1 across the block */
    for (int64_t nb0 = n0; nb0 < n1; nb0 += 64) {
        const int64_t nb1 = n1 - nb0 < 64 ? n1 : nb0 + 64;
        /* four x rows per pass over a W row: each widened chunk feeds eight independent FMA chains */
        for (int64_t m = 0; m < m4; m += 4) {
            const float *x0 = xp + m * Kp, *x1 = x0 + Kp, *x2 = x1 + Kp, *x3 = x2 + Kp;
            for (int64_t n = nb0; n < nb1; ++n) {
                const uint16_t *wr = w + n * K;
                __m512 e0 = _mm512_setzero_ps(), o0 = e0, e1 = e0, o1 = e0, e2 = e0, o2 = e0, e3 = e0, o3 = e0;
                for (int64_t k = 0; k < Kp; k += 32) {
                    const __m512i v = k < k32 ? _mm512_loadu_si512(wr + k) : _mm512_maskz_loadu_epi16(tail, wr + k);
                    const __m512 we = KW_BF16_EVEN(v), wo = KW_BF16_ODD(v);
                    e0 = _mm512_fmadd_ps(_mm512_loadu_ps(x0 + k), we, e0);
                    o0 = _mm512_fmadd_ps(_mm512_loadu_ps(x0 + k + 16), wo, o0);
                    e1 = _mm512_fmadd_ps(_mm512_loadu_ps(x1 + k), we, e1);
                    o1 = _mm512_fmadd_ps(_mm512_loadu_ps(x1 + k + 16), wo, o1);
                    e2 = _mm512_fmadd_ps(_mm512_loadu_ps(x2 + k), we, e2);
                    o2 = _mm512_fmadd_ps(_mm512_loadu_ps(x2 + k + 16), wo, o2);
                    e3 = _mm512_fmadd_ps(_mm512_loadu_ps(x3 + k), we, e3);
                    o3 = _mm512_fmadd_ps(_mm512_loadu_ps(x3 + k + 16), wo, o3);
                }
                y[m * N + n] = _mm512_reduce_add_ps(_mm512_add_ps(e0, o0));
                y[(m + 1) * N + n] = _mm512_reduce_add_ps(_mm512_add_ps(e1, o1));
                y[(m + 2) * N + n] = _mm512_reduce_add_ps(_mm512_add_ps(e2, o2));
                y[(m + 3) * N + n] = _mm512_reduce_add_ps(_mm512_add_ps(e3, o3));
            }
        }
        /* the remaining x rows (all of them at M = 1): one row, four accumulators over 64 weights per step */
        for (int64_t m = m4; m < M; ++m) {
            const float *xm = xp + m * Kp;
            for (int64_t n = nb0; n < nb1; ++n) {
                const uint16_t *wr = w + n * K;
                __m512 a = _mm512_setzero_ps(), b = a, c = a, d = a;
                int64_t k = 0;
                for (; k < k64; k += 64) {
                    const __m512i v0 = _mm512_loadu_si512(wr + k), v1 = _mm512_loadu_si512(wr + k + 32);
                    a = _mm512_fmadd_ps(_mm512_loadu_ps(xm + k), KW_BF16_EVEN(v0), a);
                    b = _mm512_fmadd_ps(_mm512_loadu_ps(xm + k + 16), KW_BF16_ODD(v0), b);
                    c = _mm512_fmadd_ps(_mm512_loadu_ps(xm + k + 32), KW_BF16_EVEN(v1), c);
                    d = _mm512_fmadd_ps(_mm512_loadu_ps(xm + k + 48), KW_BF16_ODD(v1), d);
                }
                if (k < k32) {
                    const __m512i v0 = _mm512_loadu_si512(wr + k);
                    a = _mm512_fmadd_ps(_mm512_loadu_ps(xm + k), KW_BF16_EVEN(v0), a);
                    b = _mm512_fmadd_ps(_mm512_loadu_ps(xm + k + 16), KW_BF16_ODD(v0), b);
                    k += 32;
                }
                if (tail) {
                    const __m512i v0 = _mm512_maskz_loadu_epi16(tail, wr + k);
                    c = _mm512_fmadd_ps(_mm512_loadu_ps(xm + k), KW_BF16_EVEN(v0), c);
                    d = _mm512_fmadd_ps(_mm512_loadu_ps(xm + k + 16), KW_BF16_ODD(v0), d);
                }
                y[m * N + n] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a, b), _mm512_add_ps(c, d)));
            }
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

    if (M <= kw_gemv_max_m(cpu->isa, w->dtype, K) || M > INT32_MAX || N > INT32_MAX || K > INT32_MAX) {
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
        /* Blocks of 64 W rows handed out dynamically: each block is one sequential stream, and a thread that loses
         * its core to another process (the daemons share the machine) does not hold the others back. */
        const int64_t blocks = (N + 63) / 64;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
        for (int64_t blk = 0; blk < blocks; ++blk) {
            const int64_t n0 = blk * 64, n1 = n0 + 64 < N ? n0 + 64 : N;
#if KW_CPU_X86
            if (split_bf16)
                kw_gemv_avx512_bf16_split(y, xp, w->data, M, N, K, Kp, n0, n1);
            else
#endif
                kw_gemv_rows(cpu->isa, y, xs, w->data, w->dtype, M, N, K, n0, n1);
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
