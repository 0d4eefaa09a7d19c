/* kw_cpu_matmul_bf16.c: matmul with bf16 activations on bf16 weights (KW_LAYOUT_PANELS_BF16_PAIRS), the way llama.cpp
 * runs BF16 weights on a CPU with AVX-512 BF16: x rounded to bf16 and the products of bf16 pairs summed in f32 by
 * vdpbf16ps, twice the f32 FMA rate of the exact path (kw_cpu_matmul.c), which widens the weights instead.
 *
 * The numerics contract (the same bits on every ISA, for any batch, chunking and thread count):
 *  1. Each x is rounded to bf16 (to nearest even; a NaN stays a quiet NaN of its sign) and a denormal bf16 becomes the
 *     zero of its sign: the instruction reads its inputs as denormals-are-zero. The weights are read the same way: the
 *     packed panels keep them as given (so get_rows on a packed tied embedding table returns its exact values), and
 *     every path flushes a denormal x or weight when it reads it (the instruction itself, MXCSR's DAZ on AVX2,
 *     kw_bf16_daz in the scalar path). An odd K is padded with a zero x and a zero weight.
 *  2. y[m][n] is the chain over the pairs p = 0 .. K2 / 2 - 1, from +0, of
 *         acc = F(x[2p+1] * w[2p+1] + acc), then acc = F(x[2p] * w[2p] + acc)
 *     (the odd k first, as the Intel SDM writes VDPBF16PS), each step one fused multiply-add rounded to nearest even,
 *     where F flushes a result that is tiny after rounding (below 2^-126 when rounded to 24 bits with an unbounded
 *     exponent) to the zero of its sign: x86's FTZ. Checked against the instruction on an AMD EPYC (Zen 5): same bits
 *     on 32M random lanes (normal, denormal and mixed ranges) and on the rounding boundary just below 2^-126.
 *  3. A NaN result is stored as 0x7fc00000 (the SDM does not say which NaN the instruction returns).
 *  4. The bias is added once by the caller, as for every layout.
 * Paths: AVX-512 with AVX512_BF16 (the cpuid bit): vdpbf16ps; AVX2, and AVX-512 without BF16: two FMAs per pair with
 * MXCSR's FTZ and DAZ bits set for the call (x86 detects tininess after rounding, as the instruction does); scalar:
 * fmaf and the flush written out (kw_bf16_step). kw_ref_matmul_bf16act (kernels/ref) is the independent oracle.
 */
#include "kernels/cpu/kw_cpu.h"

#include <math.h>
#include <string.h>

#include "common/kw_half.h"
#include "common/kw_status.h"

#if KW_CPU_X86
#include <immintrin.h>
#endif

#define KW_BF16_PAIR_BYTES (KW_PANEL_ROWS * 4) /* one pair row of a panel: 64 rows x 2 bf16 */

/* bf16 h with a denormal turned into the zero of its sign (the instruction's DAZ). */
static uint16_t kw_bf16_daz(uint16_t h) {
    return (h & 0x7f80u) == 0 ? (uint16_t)(h & 0x8000u) : h;
}

typedef struct kw_bf16_round_job {
    enum kw_cpu_isa isa;
    const float *x;
    int64_t K;
    uint16_t *xb;
} kw_bf16_round_job;

/* x rounded to bf16 by the bulk conversion (kw__cpu_from_f32: kw_f32_to_bf16's bits on every ISA); a denormal is
 * kept, as a denormal weight is: the panels read it as zero (rule 1). */
static void kw_bf16_round_rows(void *ctx, int64_t begin, int64_t end, int worker) {
    const kw_bf16_round_job *j = ctx;
    const int64_t K = j->K, K2 = (K + 1) & ~(int64_t)1;
    (void)worker;
    for (int64_t m = begin; m < end; ++m) {
        kw__cpu_from_f32(j->isa, j->xb + m * K2, KW_DTYPE_BF16, j->x + m * K, K);
        if (K2 != K) j->xb[m * K2 + K] = 0;
    }
}

void kw__cpu_bf16_round_x(kw_cpu_backend *cpu, const float *x, int64_t M, int64_t K, int nt, uint16_t *xb) {
    kw_bf16_round_job job = {cpu->isa, x, K, xb};
    kw__cpu_parallel_for(cpu, nt, M, kw_bf16_round_rows, &job);
}

typedef struct kw_bf16_pack_job {
    const uint16_t *src;
    uint16_t *dst;
    size_t panel_elems;
    int64_t N, K;
} kw_bf16_pack_job;

static void kw_bf16_pack_panels(void *ctx, int64_t begin, int64_t end, int worker) {
    const kw_bf16_pack_job *j = ctx;
    const int64_t N = j->N, K = j->K;
    (void)worker;
    for (int64_t p = begin; p < end; ++p) {
        uint16_t *dst = j->dst + (size_t)p * j->panel_elems;
        memset(dst, 0, j->panel_elems * sizeof *dst);
        const int64_t rows = N - p * KW_PANEL_ROWS < KW_PANEL_ROWS ? N - p * KW_PANEL_ROWS : KW_PANEL_ROWS;
        for (int64_t r = 0; r < rows; ++r) {
            const uint16_t *row = j->src + (p * KW_PANEL_ROWS + r) * K;
            for (int64_t k = 0; k < K; ++k)
                dst[(k & ~(int64_t)1) * KW_PANEL_ROWS + r * 2 + (k & 1)] = row[k];
        }
    }
}

int kw__cpu_pack_bf16_pairs(kw_backend *backend, const kw_tensor *w, kw_tensor *packed) {
    kw_cpu_backend *cpu = kw__cpu(backend);
    const int64_t N = w->ne[0], K = w->ne[1], K2 = (K + 1) & ~(int64_t)1;
    const int64_t panels = (N + KW_PANEL_ROWS - 1) / KW_PANEL_ROWS;
    kw_tensor t;
    KW_FORWARD(kw__tensor_alloc_layout(backend, &t, KW_DTYPE_BF16, 2, w->ne, KW_LAYOUT_PANELS_BF16_PAIRS));
    const size_t panel_elems = (size_t)(K2 * KW_PANEL_ROWS);
    const uint16_t *src = w->data;
    const int nt = N * K >= KW_CPU_PARALLEL_MIN * 8 ? cpu->n_threads : 1;
    kw_bf16_pack_job job = {src, (uint16_t *)t.data, panel_elems, N, K};
    kw__cpu_parallel_for(cpu, nt, panels, kw_bf16_pack_panels, &job);
    *packed = t;
    return 0;
}

float kw__cpu_bf16_pairs_get(const kw_tensor *w, int64_t n, int64_t k) {
    const int64_t K2 = (w->ne[1] + 1) & ~(int64_t)1, p = n / KW_PANEL_ROWS, r = n % KW_PANEL_ROWS;
    const uint16_t *panel = (const uint16_t *)w->data + (size_t)(p * K2 * KW_PANEL_ROWS);
    return kw_bf16_to_f32(panel[(k & ~(int64_t)1) * KW_PANEL_ROWS + r * 2 + (k & 1)]);
}

/* ------------------------------------------------------------------------------------------------------------
 * Scalar
 */

/* One step of the chain: F(a * b + c) (rule 2), from fmaf's correctly rounded result. fmaf rounds a tiny result to a
 * denormal; FTZ decides on the 24-bit rounding instead, which differs only where fmaf gives exactly 2^-126: there the
 * exact sum (a * b is exact in double, and the one rounding of the double fma cannot cross the 24-bit tie point
 * 2^-126 - 2^-151, whose distance from any such sum is far above a double ulp) tells. */
static float kw_bf16_step(float a, float b, float c) {
    const float r = fmaf(a, b, c);
    const float mag = fabsf(r);
    if (mag < 0x1p-126f) return copysignf(0.0f, r);
    if (mag == 0x1p-126f && fabs(fma((double)a, (double)b, (double)c)) < 0x1p-126 - 0x1p-151) return copysignf(0.0f, r);
    return r;
}

static float kw_bf16_canon(float v) {
    return isnan(v) ? kw_f32_from_bits(0x7fc00000u) : v;
}

static void kw_bf16_panel_scalar(float *y, int64_t N, const uint16_t *xb, int64_t K2, const uint16_t *wp, int64_t ncols,
                                 int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
        const uint16_t *xr = xb + m * K2;
        for (int64_t r = 0; r < ncols; ++r) {
            float acc = 0.0f;
            for (int64_t k = 0; k < K2; k += 2) {
                const uint16_t *wk = wp + k * KW_PANEL_ROWS + r * 2;
                acc = kw_bf16_step(kw_bf16_to_f32(kw_bf16_daz(xr[k + 1])), kw_bf16_to_f32(kw_bf16_daz(wk[1])), acc);
                acc = kw_bf16_step(kw_bf16_to_f32(kw_bf16_daz(xr[k])), kw_bf16_to_f32(kw_bf16_daz(wk[0])), acc);
            }
            y[m * N + r] = kw_bf16_canon(acc);
        }
    }
}

#if KW_CPU_X86
/* ------------------------------------------------------------------------------------------------------------
 * AVX2 (and AVX-512 without BF16): two FMAs per pair under MXCSR FTZ | DAZ, tiles of up to 4 rows x 16 columns
 */

#define KW_BF16_AVX2_MR  4
#define KW_MXCSR_FTZ_DAZ 0x8040u

KW_TARGET_AVX2 static inline __attribute__((always_inline)) void kw_bf16_tile_avx2(const int MR, float *y, int64_t N,
                                                                                   const uint32_t *x, int64_t P,
                                                                                   const uint32_t *wp, int64_t c0,
                                                                                   int64_t ncols) {
    __m256 acc[KW_BF16_AVX2_MR][2];
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
        acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    const __m256i hi = _mm256_set1_epi32((int)0xffff0000u);
    for (int64_t p = 0; p < P; ++p) {
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)(wp + p * KW_PANEL_ROWS + c0));
        const __m256i w1 = _mm256_loadu_si256((const __m256i *)(wp + p * KW_PANEL_ROWS + c0 + 8));
        const __m256 wo0 = _mm256_castsi256_ps(_mm256_and_si256(w0, hi));
        const __m256 wo1 = _mm256_castsi256_ps(_mm256_and_si256(w1, hi));
        const __m256 we0 = _mm256_castsi256_ps(_mm256_slli_epi32(w0, 16));
        const __m256 we1 = _mm256_castsi256_ps(_mm256_slli_epi32(w1, 16));
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i) {
            const uint32_t xp = x[i * P + p];
            const __m256 xo = _mm256_set1_ps(kw_f32_from_bits(xp & 0xffff0000u));
            const __m256 xe = _mm256_set1_ps(kw_f32_from_bits(xp << 16));
            acc[i][0] = _mm256_fmadd_ps(xe, we0, _mm256_fmadd_ps(xo, wo0, acc[i][0]));
            acc[i][1] = _mm256_fmadd_ps(xe, we1, _mm256_fmadd_ps(xo, wo1, acc[i][1]));
        }
    }
    const __m256 qnan = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000));
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
        float out[16];
#pragma GCC unroll 8
        for (int v = 0; v < 2; ++v) {
            const __m256 nan = _mm256_cmp_ps(acc[i][v], acc[i][v], _CMP_UNORD_Q);
            _mm256_storeu_ps(out + 8 * v, _mm256_blendv_ps(acc[i][v], qnan, nan));
        }
        const int64_t n = ncols - c0 < 16 ? ncols - c0 : 16;
        memcpy(y + i * N + c0, out, (size_t)n * sizeof(float));
    }
}

KW_TARGET_AVX2 static void kw_bf16_panel_avx2(float *y, int64_t N, const uint16_t *xb, int64_t K2, const uint16_t *wp,
                                              int64_t ncols, int64_t m0, int64_t m1) {
    const unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | KW_MXCSR_FTZ_DAZ);
    const int64_t P = K2 / 2;
    const uint32_t *w = (const uint32_t *)wp;
    for (int64_t m = m0; m < m1; m += KW_BF16_AVX2_MR) {
        const int64_t mr = m1 - m < KW_BF16_AVX2_MR ? m1 - m : KW_BF16_AVX2_MR;
        const uint32_t *x = (const uint32_t *)(xb + m * K2);
        for (int64_t c0 = 0; c0 < ncols; c0 += 16) {
            /* clang-format off */
#define KW_BF16_CASE(R) case R: kw_bf16_tile_avx2(R, y + m * N, N, x, P, w, c0, ncols); break;
            switch (mr) {
            KW_BF16_CASE(1) KW_BF16_CASE(2) KW_BF16_CASE(3)
            default: kw_bf16_tile_avx2(4, y + m * N, N, x, P, w, c0, ncols); break;
            }
#undef KW_BF16_CASE
            /* clang-format on */
        }
    }
    _mm_setcsr(csr);
}

/* ------------------------------------------------------------------------------------------------------------
 * AVX-512 BF16: vdpbf16ps, tiles of up to 6 rows x the panel's 64 columns (24 accumulators)
 */

#define KW_TARGET_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")))
#define KW_BF16_512_MR        6

KW_TARGET_AVX512_BF16 static inline __attribute__((always_inline)) void
kw_bf16_tile_avx512(const int MR, float *y, int64_t N, const uint32_t *x, int64_t P, const uint32_t *wp,
                    int64_t ncols) {
    __m512 acc[KW_BF16_512_MR][4];
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
        for (int v = 0; v < 4; ++v)
            acc[i][v] = _mm512_setzero_ps();
    for (int64_t p = 0; p < P; ++p) {
        const uint32_t *wr = wp + p * KW_PANEL_ROWS;
        __m512bh w[4];
#pragma GCC unroll 8
        for (int v = 0; v < 4; ++v)
            w[v] = (__m512bh)_mm512_loadu_si512(wr + 16 * v);
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i) {
            const __m512bh xp = (__m512bh)_mm512_set1_epi32((int)x[i * P + p]);
#pragma GCC unroll 8
            for (int v = 0; v < 4; ++v)
                acc[i][v] = _mm512_dpbf16_ps(acc[i][v], xp, w[v]);
        }
    }
    const __m512 qnan = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fc00000));
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
        for (int v = 0; v < 4; ++v) {
            const int64_t n = ncols - 16 * v;
            if (n <= 0) break;
            const __mmask16 nan = _mm512_cmp_ps_mask(acc[i][v], acc[i][v], _CMP_UNORD_Q);
            const __m512 out = _mm512_mask_mov_ps(acc[i][v], nan, qnan);
            const __mmask16 keep = n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
            _mm512_mask_storeu_ps(y + i * N + 16 * v, keep, out);
        }
    }
}

KW_TARGET_AVX512_BF16 static void kw_bf16_panel_avx512(float *y, int64_t N, const uint16_t *xb, int64_t K2,
                                                       const uint16_t *wp, int64_t ncols, int64_t m0, int64_t m1) {
    const int64_t P = K2 / 2;
    const uint32_t *w = (const uint32_t *)wp;
    for (int64_t m = m0; m < m1; m += KW_BF16_512_MR) {
        const int64_t mr = m1 - m < KW_BF16_512_MR ? m1 - m : KW_BF16_512_MR;
        const uint32_t *x = (const uint32_t *)(xb + m * K2);
        /* the tile's row count as a constant, so that its loops unroll into registers */
        /* clang-format off */
#define KW_BF16_CASE(R) case R: kw_bf16_tile_avx512(R, y + m * N, N, x, P, w, ncols); break;
        switch (mr) {
        KW_BF16_CASE(1) KW_BF16_CASE(2) KW_BF16_CASE(3) KW_BF16_CASE(4) KW_BF16_CASE(5)
        default: kw_bf16_tile_avx512(6, y + m * N, N, x, P, w, ncols); break;
        }
#undef KW_BF16_CASE
        /* clang-format on */
    }
}

/* 1 if the CPU has AVX512_BF16 (the AVX-512 backend then uses the instruction, else the AVX2 emulation). */
static int kw_bf16_has_instruction(void) {
    static int known = -1;
    int v = __atomic_load_n(&known, __ATOMIC_RELAXED);
    if (v < 0) {
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx512bf16") ? 1 : 0;
        __atomic_store_n(&known, v, __ATOMIC_RELAXED);
    }
    return v;
}
#endif

void kw__cpu_bf16_panel(enum kw_cpu_isa isa, float *y, int64_t N, const uint16_t *xb, int64_t K, const uint16_t *wp,
                        int64_t n0, int64_t ncols, int64_t m0, int64_t m1) {
    const int64_t K2 = (K + 1) & ~(int64_t)1;
#if KW_CPU_X86
    if (isa == KW_CPU_ISA_AVX512 && kw_bf16_has_instruction()) {
        kw_bf16_panel_avx512(y + n0, N, xb, K2, wp, ncols, m0, m1);
        return;
    }
    if (isa >= KW_CPU_ISA_AVX2) {
        kw_bf16_panel_avx2(y + n0, N, xb, K2, wp, ncols, m0, m1);
        return;
    }
#endif
    (void)isa;
    kw_bf16_panel_scalar(y + n0, N, xb, K2, wp, ncols, m0, m1);
}
