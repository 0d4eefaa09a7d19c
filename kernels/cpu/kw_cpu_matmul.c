/* kw_cpu_matmul.c: y (M, N) = x (M, K) w (N, K)^T (+ bias) on the CPU, w f32/bf16/f16 or kept quantized, fp32
 * accumulation, and the weight packing that feeds it.
 *
 * One reduction order per output element, on every path: y[m][n] is the chain acc = fma(x[m][k], w[n][k], acc) for
 * k = 0 .. K-1 starting from +0, then acc + bias[n] rounded once. Nothing else: no lanes summed across k, no blocked
 * k, no BLAS. So a row's bits do not depend on how many rows were computed with it, how a prompt was cut into
 * chunks, the thread count, or the ISA (scalar fmaf, AVX2 and AVX-512 run the same chains; kw_cpu_matmul_isa.h).
 *
 * The weight is read in KW_LAYOUT_PANELS (kernels/kw_backend.h): 64 rows per panel, k-major, so that a vector of 16
 * output columns takes one contiguous load per k and a panel is one sequential stream. kw__cpu_pack_weight converts a
 * row-major weight once (the model does this at load); a row-major weight handed to matmul directly is packed panel
 * by panel into per-thread scratch on every call, which gives the same bits at the price of the copy.
 *
 * The quantized panels (KW_LAYOUT_QPANELS_*) run the same tiles and chains with each weight rebuilt in registers from
 * its code, scale and offset (kw_cpu_matmul_isa.h), so they give the bits of the f32 panels of the dequantized weight.
 * Their decode rows prefetch the panel stream, and the 4-bit and 6-bit ones have a cheaper AVX-512 VBMI form
 * (kw_qmm_row_vbmi, kw_qmm_row_vbmi_s6_g16_sb).
 *
 * Work is split into (panel, block of rows) items handed to the backend's thread pool one at a time. Few rows
 * (decode): each row streams a panel with 4 strips in flight; many rows (prefill): register tiles of KW_MM_MR rows x
 * KW_MM_NV strips reuse each loaded weight vector for every row of the tile. A decode on less than
 * KW_MM_WAKE_MIN_BYTES of weights does not wake sleeping workers: the caller computes it alone.
 */
#include "kernels/cpu/kw_cpu.h"

#include <string.h>

#include "common/kw_status.h"
#include "kernels/cpu/kw_cpu_simd.h"
#include "kernels/kw_op_math.h"

/* Largest tile shapes any ISA uses (the accumulator arrays are sized by them). */
#define KW_MM_MAX_MR 8
#define KW_MM_MAX_NV 4
/* Up to this many rows, each row streams the panel on its own. */
#define KW_MM_ROW_MAX 4
/* Rows per work item when the panels alone are too few to feed every thread. */
#define KW_MM_ROW_BLOCK 48
/* A decode matmul (or shared run) reading fewer weight bytes than this runs on the caller alone when every worker
 * of the pool is asleep: waking one costs more than its share saves (docs/BENCHMARKS.md, "SmolLM2 decode: thread
 * split and dispatches"). An awake (spinning) worker still takes its share. */
#define KW_MM_WAKE_MIN_BYTES ((size_t)1 << 20)
/* A larger one also stays on the caller when the pool's recent wake-up latency (kw_cpu_pool_wake_ns) is so long that
 * a woken worker would find less than half of it left: at this streaming rate of one thread, bytes per microsecond
 * (16.8 GB/s, an estimate: about half of what SmolLM2-135M Q8_0's decode at ~260 tok/s on the idle 2-vCPU guest
 * streams; docs/BENCHMARKS.md "SmolLM2 decode: wake-up latency and late workers (issue 10; 2026-12-06)"). */
#define KW_MM_STREAM_BYTES_PER_US ((size_t)16 << 10)

/* The quantized kernels prefetch the panel stream KW_QMM_PF groups ahead, one or two lines per k (a group is at most
 * 2 G lines: 64 scales, 64 offsets and G * 64 code bytes): without it the hardware prefetcher leaves a decode row
 * waiting on memory (docs/BENCHMARKS.md). A prefetch past the panel's end is harmless. */
#define KW_QMM_PF 4
#define KW_QMM_PREFETCH(gp, group_bytes, G, kk)                                                                        \
    do {                                                                                                               \
        __builtin_prefetch((gp) + KW_QMM_PF * (group_bytes) + (size_t)(kk)*64);                                        \
        if ((size_t)(G)*64 < (group_bytes))                                                                            \
            __builtin_prefetch((gp) + KW_QMM_PF * (group_bytes) + (size_t)((G) + (kk)) * 64);                          \
    } while (0)

/* ------------------------------------------------------------------------------------------------------------
 * The kernels, once per ISA (tile shapes: scalar 4 x 1, AVX2 6 x 1 = 12 ymm accumulators, AVX-512 8 x 2 = 16 zmm)
 */

#define KW_SIMD_SFX    scalar
#define KW_SIMD_TARGET /* portable */
#define KW_MM_MR       4
#define KW_MM_NV       1
#define KW_MM_TILE_MORE_CASES
#include "kernels/cpu/kw_cpu_matmul_isa.h"
#undef KW_SIMD_SFX
#undef KW_SIMD_TARGET
#undef KW_MM_MR
#undef KW_MM_NV
#undef KW_MM_TILE_MORE_CASES

#if KW_CPU_X86
#define KW_SIMD_SFX           avx2
#define KW_SIMD_TARGET        KW_TARGET_AVX2
#define KW_MM_MR              6
#define KW_MM_NV              1
#define KW_MM_TILE_MORE_CASES KW_MM_TILE_CASE(5) KW_MM_TILE_CASE(6)
#include "kernels/cpu/kw_cpu_matmul_isa.h"
#undef KW_SIMD_SFX
#undef KW_SIMD_TARGET
#undef KW_MM_MR
#undef KW_MM_NV
#undef KW_MM_TILE_MORE_CASES

/* The decode row of a 4-bit quantized panel with AVX-512 VBMI (taken when the CPU has it): the same chains and the
 * same bits as kw_qmm_row_avx512_s4/u4, about half the instructions per weight. Per k, kw_u4_unpack_vbmi gives
 * f = 128 + u exactly for the 64 rows (u the nibble) in one byte permute, four shifts and four ternary ops; a
 * multishift per 16 rows did it before, but on Zen 5 it runs on the two ports of the fmas, which bound the loop
 * (docs/BENCHMARKS.md). Then, per group, the cheapest rebuild whose condition holds in all 64 lanes:
 *   fold (layouts with offsets): w = fma(f, a, c) with c = b - 128 a, when u * a is exact for every nibble (the low
 *     4 bits of a's significand are 0) and c is exact (its Fast2Sum error is 0): then f * a + c = u * a + b exactly,
 *     rounded once, which is fl(fl(u * a) + b). For Q4_K (a = f16 d times a 6-bit s, b = f16 dmin times a 6-bit o)
 *     u * a is always exact, and c was in every group of a Qwen3-0.6B Q4_K_M file. (A zero weight's sign can differ
 *     from the reference's and never reaches y: the chain starts at +0, so acc is never -0.)
 *   exact: w = fma(f, a, -C a) with C = 128 + ZERO, when C a is exact: fl((u - ZERO) * a), then + b if offsets.
 *   else: w = fl((f - C) * a) (+ b), f - C the code exactly.
 * (For 8-bit codes the same trick needs a shuffle and an xor per 16 weights, no fewer than the convert: measured no
 * gain.) */
#define KW_TARGET_AVX512_VBMI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx2,fma,f16c")))

/* The VBMI decode rows' helpers. kw_qmm_row_store_vbmi stores a row's 64 accumulators, only the first ncols.
 * kw_qmm_scale_exact gives -fl(C * a) in *neg and the lanes where C * a is exact (fma(a, C, -fl(C * a)) == 0, which
 * also rejects overflow and NaN): there fma(f, a, -C * a) = fl((f - C) * a) for f - C an integer. kw_qmm_fold_exact
 * gives c = fl(b - 128 a) in *c and the lanes where the fold holds: a's low 4 significand bits 0 (so u * a, u <= 15,
 * has at most 24 bits) and c exact: Fast2Sum on the operands ordered by magnitude (vrangeps), hi + lo = c, error
 * lo - (c - hi) == 0 (overflow and NaN fail, and |a| > FLT_MAX / 128, about 2^121, overflows 128 a; when |b| =
 * |128 a| the range ops may return one operand twice, and then c is 0 or 2b, exact, or the error is not 0); and a, b
 * each 0 or of magnitude >= 2^-100, so every nonzero c and error is a multiple of 2^-123 and normal: a host that
 * leaves MXCSR.FTZ set (-ffast-math) cannot flush a wrong c's error to 0 (the other rebuilds and ISAs flush alike). */
KW_TARGET_AVX512_VBMI KW_SIMD_INLINE void kw_qmm_row_store_vbmi(float *y, const __m512 acc[4], int64_t ncols) {
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
        const int64_t n = ncols - v * 16;
        if (n >= 16)
            kw_v16_store_avx512(y + v * 16, acc[v]);
        else if (n > 0)
            kw_v16_store_n_avx512(y + v * 16, acc[v], (int)n);
    }
}
KW_TARGET_AVX512_VBMI KW_SIMD_INLINE __mmask16 kw_qmm_scale_exact(__m512 a, __m512 C, __m512 *neg) {
    const __m512 cs = _mm512_mul_ps(a, C);
    *neg = _mm512_sub_ps(_mm512_setzero_ps(), cs);
    return _mm512_cmp_ps_mask(_mm512_fmsub_ps(a, C, cs), _mm512_setzero_ps(), _CMP_EQ_OQ);
}
KW_TARGET_AVX512_VBMI KW_SIMD_INLINE __mmask16 kw_qmm_fold_exact(__m512 a, __m512 b, __m512 m128, __m512 *c) {
    const __m512 y = _mm512_mul_ps(a, m128), s = _mm512_add_ps(b, y);
    const __m512 hi = _mm512_range_ps(b, y, 7), lo = _mm512_range_ps(b, y, 6); /* larger, smaller magnitude */
    const __m512 err = _mm512_sub_ps(lo, _mm512_sub_ps(s, hi));
    *c = s;
    const __m512i abs_bits = _mm512_set1_epi32(0x7fffffff), tiny = _mm512_set1_epi32(0x0d800000); /* 2^-100 */
    const __m512i a_abs = _mm512_and_si512(_mm512_castps_si512(a), abs_bits),
                  b_abs = _mm512_and_si512(_mm512_castps_si512(b), abs_bits);
    const __mmask16 low4 = _mm512_testn_epi32_mask(_mm512_castps_si512(a), _mm512_set1_epi32(15));
    const __mmask16 big = (_mm512_cmpge_epu32_mask(a_abs, tiny) | _mm512_testn_epi32_mask(a_abs, a_abs)) &
                          (_mm512_cmpge_epu32_mask(b_abs, tiny) | _mm512_testn_epi32_mask(b_abs, b_abs));
    return _mm512_mask_cmp_ps_mask(low4 & big, err, _mm512_setzero_ps(), _CMP_EQ_OQ);
}

/* kw_u4_unpack_vbmi's constants. One byte permute gives lane i the four code bytes that hold the nibbles of rows i,
 * 16 + i, 32 + i, 48 + i (byte 8 v + i % 8 for row 16 v + i), at bytes 2, 3, 1, 0; then per strip v one variable
 * shift moves its nibble (the low one for i < 8, the high one above) to bits 16..19. */
typedef struct kw_u4_unpack {
    __m512i idx, right[2], left[2], ctrl;
} kw_u4_unpack;

KW_TARGET_AVX512_VBMI KW_SIMD_INLINE kw_u4_unpack kw_u4_unpack_init(void) {
    static const int at[4] = {2, 3, 1, 0}; /* strip v's byte in the lane */
    uint8_t b[64];
    int32_t sh[4][16];
    for (int i = 0; i < 16; ++i)
        for (int v = 0; v < 4; ++v) {
            b[4 * i + at[v]] = (uint8_t)(8 * v + i % 8);
            sh[v][i] = 8 * at[v] + (i < 8 ? 0 : 4) - 16; /* the nibble's bit minus 16 */
        }
    kw_u4_unpack p;
    p.idx = _mm512_loadu_si512(b);
    for (int v = 0; v < 4; ++v)
        for (int i = 0; i < 16; ++i)
            sh[v][i] = sh[v][i] < 0 ? -sh[v][i] : sh[v][i];
    p.right[0] = _mm512_loadu_si512(sh[0]), p.right[1] = _mm512_loadu_si512(sh[1]);
    p.left[0] = _mm512_loadu_si512(sh[2]), p.left[1] = _mm512_loadu_si512(sh[3]);
    memset(b, 0, sizeof b); /* kw_u4_unpack_ms: byte 2 of lane i takes the 8 bits at the nibble's offset */
    for (int i = 0; i < 16; ++i)
        b[4 * i + 2] = (uint8_t)(i < 8 ? 8 * i : 8 * (i - 8) + 4);
    p.ctrl = _mm512_loadu_si512(b);
    return p;
}

/* f[v] lane i = 128 + the nibble of row 16 v + i at this k (its 32 code bytes at k_codes), exactly: the shifted
 * nibble kept and the bits of 128.0f ored in (one ternary op). */
KW_TARGET_AVX512_VBMI KW_SIMD_INLINE void kw_u4_unpack_vbmi(const kw_u4_unpack *p, const uint8_t *k_codes,
                                                            __m512 f[4]) {
    const __m512i x =
        _mm512_permutexvar_epi8(p->idx, _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)k_codes)));
    const __m512i t[4] = {_mm512_srlv_epi32(x, p->right[0]), _mm512_srlv_epi32(x, p->right[1]),
                          _mm512_sllv_epi32(x, p->left[0]), _mm512_sllv_epi32(x, p->left[1])};
    const __m512i nib = _mm512_set1_epi32(0x000F0000), P = _mm512_set1_epi32(0x43000000);
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v)
        f[v] = _mm512_castsi512_ps(_mm512_ternarylogic_epi32(t[v], nib, P, 0xEA)); /* (t & nib) | P */
}

/* kw_u4_unpack_vbmi's f with one multishift per strip instead (the form before it): fewer instructions, but the
 * multishifts share the fmas' ports; faster where each w also takes an add (the exact and the slow rebuilds). */
KW_TARGET_AVX512_VBMI KW_SIMD_INLINE void kw_u4_unpack_ms(const kw_u4_unpack *p, const uint8_t *k_codes, __m512 f[4]) {
    const __m512i nib = _mm512_set1_epi32(0x000F0000), P = _mm512_set1_epi32(0x43000000);
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
        uint64_t q;
        memcpy(&q, k_codes + v * 8, 8);
        const __m512i t = _mm512_multishift_epi64_epi8(p->ctrl, _mm512_set1_epi64((long long)q));
        f[v] = _mm512_castsi512_ps(_mm512_ternarylogic_epi32(t, nib, P, 0xEA));
    }
}

/* One group's G steps of the VBMI row: w = fma(f, a, c) (+ b when ADD), or (SLOW) fl((f - C) * a) (+ b). */
KW_TARGET_AVX512_VBMI KW_SIMD_INLINE void kw_qmm_group_vbmi(const int G, const int ADD, const int SLOW, __m512 acc[4],
                                                            const float *xg, const uint8_t *codes, const char *gp,
                                                            size_t group_bytes, const __m512 a[4], const __m512 b[4],
                                                            const __m512 c[4], __m512 C, const kw_u4_unpack *p) {
    for (int kk = 0; kk < G; ++kk) {
        KW_QMM_PREFETCH(gp, group_bytes, G, kk);
        __m512 w[4];
        if (ADD || SLOW)
            kw_u4_unpack_ms(p, codes + kk * 32, w);
        else
            kw_u4_unpack_vbmi(p, codes + kk * 32, w);
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) {
            w[v] = SLOW ? _mm512_mul_ps(_mm512_sub_ps(w[v], C), a[v]) : _mm512_fmadd_ps(w[v], a[v], c[v]);
            if (ADD) w[v] = _mm512_add_ps(w[v], b[v]);
        }
        const __m512 xb = _mm512_set1_ps(xg[kk]);
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v)
            acc[v] = _mm512_fmadd_ps(xb, w[v], acc[v]);
    }
}

KW_TARGET_AVX512_VBMI KW_SIMD_INLINE void kw_qmm_row_vbmi(const int ZERO, const int OFS, const int G, const int SB,
                                                          float *y, const float *x, int64_t K, const char *wp,
                                                          int64_t ncols) {
    /* the group's place as in kw_qmm_tile (kw_cpu_matmul_isa.h) */
    const size_t code_bytes = (size_t)(G * KW_PANEL_ROWS / 2);
    const int PER = SB ? KW_QUANT_SUPERBLOCK / G : 1;
    const size_t head_bytes = (size_t)KW_PANEL_ROWS * (4 + (size_t)(SB ? PER : 0)) * (size_t)(1 + OFS);
    const size_t unit_bytes = head_bytes + code_bytes * (size_t)PER, group_bytes = unit_bytes / (size_t)PER;
    const kw_u4_unpack unpack = kw_u4_unpack_init();
    const __m512 C = _mm512_set1_ps(128.0f + (float)ZERO), M128 = _mm512_set1_ps(-128.0f);
    __m512 acc[4];
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v)
        acc[v] = _mm512_setzero_ps();
    for (int64_t g = 0; g < K / G; ++g) {
        const char *up = wp + (size_t)(g / PER) * unit_bytes, *gp = wp + (size_t)g * group_bytes;
        const int64_t j = g % PER;
        const float *scales = (const float *)up, *offsets = scales + KW_PANEL_ROWS;
        const uint8_t *codes = (const uint8_t *)up + head_bytes + (size_t)j * code_bytes;
        const int8_t *sub = (const int8_t *)up + KW_PANEL_ROWS * 4 * (1 + OFS) + j * KW_PANEL_ROWS;
        __m512 a[4], b[4], c[4];
        __mmask16 fold = OFS ? 0xFFFF : 0;
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) {
            a[v] = _mm512_loadu_ps(scales + v * 16);
            b[v] = OFS ? _mm512_loadu_ps(offsets + v * 16) : _mm512_setzero_ps();
            if (SB) {
                a[v] = _mm512_mul_ps(a[v], kw_v16_load_i8_avx512(sub + v * 16));
                if (OFS) b[v] = _mm512_mul_ps(b[v], kw_v16_load_i8_avx512(sub + PER * KW_PANEL_ROWS + v * 16));
            }
            if (OFS) fold &= kw_qmm_fold_exact(a[v], b[v], M128, &c[v]);
        }
        const float *xg = x + g * G;
        if (fold == 0xFFFF) {
            kw_qmm_group_vbmi(G, 0, 0, acc, xg, codes, gp, group_bytes, a, b, c, C, &unpack);
            continue;
        }
        __mmask16 exact = 0xFFFF;
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v)
            exact &= kw_qmm_scale_exact(a[v], C, &c[v]);
        if (exact == 0xFFFF)
            kw_qmm_group_vbmi(G, OFS, 0, acc, xg, codes, gp, group_bytes, a, b, c, C, &unpack);
        else
            kw_qmm_group_vbmi(G, OFS, 1, acc, xg, codes, gp, group_bytes, a, b, c, C, &unpack);
    }
    kw_qmm_row_store_vbmi(y, acc, ncols);
}

/* kw_qmm_row_vbmi_<name>: kw_qmm_row_vbmi for one 4-bit layout (the parameters of KW_QMM_LAYOUT but the bits). */
#define KW_QMM_VBMI(NAME, Z, O, GR, S)                                                                                 \
    KW_TARGET_AVX512_VBMI static void kw_qmm_row_vbmi_##NAME(float *y, const float *x, int64_t K, const char *wp,      \
                                                             int64_t ncols) {                                          \
        kw_qmm_row_vbmi(Z, O, GR, S, y, x, K, wp, ncols);                                                              \
    }
KW_QMM_VBMI(s4, 8, 0, 32, 0)
KW_QMM_VBMI(u4, 0, 1, 32, 0)
KW_QMM_VBMI(u4_sb, 0, 1, 32, 1)
#undef KW_QMM_VBMI

/* QPANELS_S6_G16_SB (Q6_K in 6 bits) with AVX-512 VBMI. kw_s6_unpack_vbmi turns the 48 code bytes of one k into the
 * 64 codes plus 32 (0..63), one byte per row, in four instructions: a masked load, a byte permute that gives qword i
 * the 6 bytes of rows 8i..8i+7, a multishift that puts row r's code in the low 6 bits of byte r, and a ternary op that
 * clears the top 2 bits and flips bit 5 (two's complement -> code + 32). kw_s6_strip_vbmi then moves byte 16 v + i of
 * that to byte 2 of lane i over the bytes of 2^7 (one merge-masked byte permute), so lane i is exactly the f32
 * 128 + 32 + code. */
KW_TARGET_AVX512_VBMI KW_SIMD_INLINE __m512i kw_s6_unpack_vbmi(const uint8_t *k_codes) {
    static const uint8_t spread[64] = {0,  1,  2,  3,  4,  5,  5,  5,  6,  7,  8,  9,  10, 11, 11, 11,
                                       12, 13, 14, 15, 16, 17, 17, 17, 18, 19, 20, 21, 22, 23, 23, 23,
                                       24, 25, 26, 27, 28, 29, 29, 29, 30, 31, 32, 33, 34, 35, 35, 35,
                                       36, 37, 38, 39, 40, 41, 41, 41, 42, 43, 44, 45, 46, 47, 47, 47};
    const __m512i shifts = _mm512_set1_epi64(0x2A241E18120C0600ll); /* byte b of a qword: its bits 6b..6b+7 */
    const __m512i t = _mm512_multishift_epi64_epi8(
        shifts, _mm512_permutexvar_epi8(_mm512_loadu_si512(spread),
                                        _mm512_maskz_loadu_epi8((__mmask64)((1ull << 48) - 1), k_codes)));
    return _mm512_ternarylogic_epi32(t, _mm512_set1_epi8(0x3F), _mm512_set1_epi8(0x20), 0x6A); /* (t & B) ^ C */
}

/* Lane i: the f32 160 + code of row 16 v + i, from kw_s6_unpack_vbmi's bytes u. */
KW_TARGET_AVX512_VBMI KW_SIMD_INLINE __m512 kw_s6_strip_vbmi(__m512i u, int v) {
    static const uint8_t lane[64] = {0,  0,  0,  0,  1,  1,  1,  1,  2,  2,  2,  2,  3,  3,  3,  3,
                                     4,  4,  4,  4,  5,  5,  5,  5,  6,  6,  6,  6,  7,  7,  7,  7,
                                     8,  8,  8,  8,  9,  9,  9,  9,  10, 10, 10, 10, 11, 11, 11, 11,
                                     12, 12, 12, 12, 13, 13, 13, 13, 14, 14, 14, 14, 15, 15, 15, 15};
    const __m512i at = _mm512_add_epi8(_mm512_loadu_si512(lane), _mm512_set1_epi8((char)(16 * v)));
    return _mm512_castsi512_ps(
        _mm512_mask_permutexvar_epi8(_mm512_set1_epi32(0x43000000), (__mmask64)0x4444444444444444ull, at, u));
}

/* The decode row of QPANELS_S6_G16_SB with VBMI: the same chains and bits as kw_qmm_row_avx512_s6_g16_sb. With f =
 * 160 + code from kw_s6_strip_vbmi, w = fma(f, scale, -160 * scale) is fl(code * scale) whenever 160 * scale is exact
 * (always for Q6_K, whose scale is an f16 d times an int8), checked per group as in kw_qmm_row_vbmi; a group that
 * fails takes w = fl((f - 160) * scale), one subtraction more. */
KW_TARGET_AVX512_VBMI static void kw_qmm_row_vbmi_s6_g16_sb(float *y, const float *x, int64_t K, const char *wp,
                                                            int64_t ncols) {
    enum { G = 16, PER = KW_QUANT_SUPERBLOCK / G, CODE_BYTES = G * KW_PANEL_ROWS * 6 / 8 };
    const size_t head_bytes = (size_t)KW_PANEL_ROWS * (4 + PER);
    const size_t unit_bytes = head_bytes + (size_t)CODE_BYTES * PER, group_bytes = unit_bytes / PER;
    const __m512 C = _mm512_set1_ps(160.0f), zero = _mm512_setzero_ps();
    __m512 acc[4] = {zero, zero, zero, zero};
    for (int64_t g = 0; g < K / G; ++g) {
        const char *up = wp + (size_t)(g / PER) * unit_bytes, *gp = wp + (size_t)g * group_bytes;
        const int64_t j = g % PER;
        const uint8_t *codes = (const uint8_t *)up + head_bytes + (size_t)j * CODE_BYTES;
        const int8_t *sub = (const int8_t *)up + KW_PANEL_ROWS * 4 + j * KW_PANEL_ROWS;
        __m512 a[4], nc[4];
        __mmask16 exact = 0xFFFF;
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) {
            a[v] = _mm512_mul_ps(_mm512_loadu_ps((const float *)up + v * 16), kw_v16_load_i8_avx512(sub + v * 16));
            exact &= kw_qmm_scale_exact(a[v], C, &nc[v]);
        }
        for (int kk = 0; kk < G; ++kk) {
            KW_QMM_PREFETCH(gp, group_bytes, G, kk);
            const __m512i u = kw_s6_unpack_vbmi(codes + kk * (CODE_BYTES / G));
            __m512 w[4];
            if (exact == 0xFFFF) {
#pragma GCC unroll 4
                for (int v = 0; v < 4; ++v)
                    w[v] = _mm512_fmadd_ps(kw_s6_strip_vbmi(u, v), a[v], nc[v]);
            } else {
#pragma GCC unroll 4
                for (int v = 0; v < 4; ++v)
                    w[v] = _mm512_mul_ps(_mm512_sub_ps(kw_s6_strip_vbmi(u, v), C), a[v]);
            }
            const __m512 xb = _mm512_set1_ps(x[g * G + kk]);
#pragma GCC unroll 4
            for (int v = 0; v < 4; ++v)
                acc[v] = _mm512_fmadd_ps(xb, w[v], acc[v]);
        }
    }
    kw_qmm_row_store_vbmi(y, acc, ncols);
}

/* 1 if the CPU has AVX-512 VBMI (the AVX-512 instantiation's decode rows then use kw_qmm_row_vbmi_*). */
static int kw_mm_vbmi(void) {
    static int known = -1;
    int v = __atomic_load_n(&known, __ATOMIC_RELAXED);
    if (v < 0) {
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx512vbmi") ? 1 : 0;
        __atomic_store_n(&known, v, __ATOMIC_RELAXED);
    }
    return v;
}

#define KW_MM_QROW_FAST(NAME) kw_qmm_row_vbmi_##NAME
#define KW_SIMD_SFX           avx512
#define KW_SIMD_TARGET        KW_TARGET_AVX512
#define KW_MM_MR              8
#define KW_MM_NV              2
#define KW_MM_TILE_MORE_CASES KW_MM_TILE_CASE(5) KW_MM_TILE_CASE(6) KW_MM_TILE_CASE(7) KW_MM_TILE_CASE(8)
#include "kernels/cpu/kw_cpu_matmul_isa.h"
#undef KW_SIMD_SFX
#undef KW_SIMD_TARGET
#undef KW_MM_MR
#undef KW_MM_NV
#undef KW_MM_TILE_MORE_CASES
#undef KW_MM_QROW_FAST
#endif

int kw__cpu_has_vbmi(void) {
#if KW_CPU_X86
    return kw_mm_vbmi();
#else
    return 0;
#endif
}

/* Rows [m0, m1) of y against one panel (the row-major weight's panel packed into scratch, or a packed one of any
 * layout), on the backend's ISA. */
static void kw_mm_panel(enum kw_cpu_isa isa, float *y, int64_t N, const float *x, int64_t K, enum kw_dtype dt,
                        enum kw_layout layout, const char *wp, int64_t n0, int64_t ncols, int64_t m0, int64_t m1) {
#if KW_CPU_X86
    if (isa == KW_CPU_ISA_AVX512) {
        kw_mm_any_panel_avx512(y, N, x, K, dt, layout, wp, n0, ncols, m0, m1);
        return;
    }
    if (isa == KW_CPU_ISA_AVX2) {
        kw_mm_any_panel_avx2(y, N, x, K, dt, layout, wp, n0, ncols, m0, m1);
        return;
    }
#endif
    (void)isa;
    kw_mm_any_panel_scalar(y, N, x, K, dt, layout, wp, n0, ncols, m0, m1);
}

/* ------------------------------------------------------------------------------------------------------------
 * Packing
 */

/* Writes panel p of the row-major weight w (N, K) into dst (K * 64 elements of w's dtype): dst[k * 64 + r] =
 * w[p * 64 + r][k], zero for rows past N. Works in blocks of 64 k so that the strided writes stay in L1. */
static void kw_pack_panel(void *dst, const void *w, enum kw_dtype dtype, int64_t N, int64_t K, int64_t p) {
    const size_t es = kw_dtype_size(dtype);
    const int64_t r_end = N - p * KW_PANEL_ROWS < KW_PANEL_ROWS ? N - p * KW_PANEL_ROWS : KW_PANEL_ROWS;
    if (r_end < KW_PANEL_ROWS) memset(dst, 0, (size_t)(K * KW_PANEL_ROWS) * es);
    for (int64_t k0 = 0; k0 < K; k0 += 64) {
        const int64_t k1 = K - k0 < 64 ? K : k0 + 64;
        for (int64_t r = 0; r < r_end; ++r) {
            const int64_t row = p * KW_PANEL_ROWS + r;
            if (es == 2) {
                const uint16_t *src = (const uint16_t *)w + row * K;
                uint16_t *d = dst;
                for (int64_t k = k0; k < k1; ++k)
                    d[k * KW_PANEL_ROWS + r] = src[k];
            } else {
                const uint32_t *src = (const uint32_t *)w + row * K;
                uint32_t *d = dst;
                for (int64_t k = k0; k < k1; ++k)
                    d[k * KW_PANEL_ROWS + r] = src[k];
            }
        }
    }
}

typedef struct kw_pack_job {
    char *dst;
    size_t panel_bytes;
    const kw_tensor *w;     /* kw_pack_panels */
    const kw_quant_rows *q; /* kw_pack_qpanels */
    const kw_quant_layout *ql;
} kw_pack_job;

static void kw_pack_panels(void *arg, int64_t p0, int64_t p1, int worker) {
    (void)worker;
    const kw_pack_job *j = arg;
    for (int64_t p = p0; p < p1; ++p)
        kw_pack_panel(j->dst + (size_t)p * j->panel_bytes, j->w->data, j->w->dtype, j->w->ne[0], j->w->ne[1], p);
}

int kw__cpu_pack_weight(kw_backend *backend, const kw_tensor *w, kw_tensor *packed) {
    kw_cpu_backend *cpu = kw__cpu(backend);
    const int64_t N = w->ne[0], K = w->ne[1], panels = (N + KW_PANEL_ROWS - 1) / KW_PANEL_ROWS;
    kw_tensor t;
    KW_FORWARD(kw__tensor_alloc_layout(backend, &t, w->dtype, 2, w->ne, KW_LAYOUT_PANELS));
    const size_t panel_bytes = (size_t)(K * KW_PANEL_ROWS) * kw_dtype_size(w->dtype);
    const int nt = N * K >= KW_CPU_PARALLEL_MIN * 8 ? cpu->n_threads : 1;
    kw_pack_job job = {t.data, panel_bytes, w, NULL, NULL};
    kw__cpu_parallel_for(cpu, nt, panels, kw_pack_panels, &job);
    *packed = t;
    return 0;
}

/* Where group g of a quantized panel keeps its numbers (kernels/kw_backend.h): the plain layouts' f32 scales and
 * offsets, or the super-block layouts' int8 s and o and their super-block's f32 d and m; then its codes. */
typedef struct kw_qgroup {
    float *scales, *offsets; /* plain layouts (offsets: with offsets only) */
    uint16_t *scales16;      /* the layouts with f16 scales (instead of scales) */
    float *d, *m;            /* super-block layouts (m: with offsets only) */
    int8_t *s, *o;
    uint8_t *codes;
} kw_qgroup;

static kw_qgroup kw_qgroup_at(const char *panel, const kw_quant_layout *ql, int64_t g) {
    kw_qgroup q = {0};
    const size_t ofs = (size_t)(1 + ql->has_offset);
    if (!ql->superblock) {
        char *gp = (char *)panel + (size_t)g * kw__quant_group_bytes(ql);
        if (ql->f16_scales) { /* no offsets */
            q.scales16 = (uint16_t *)gp;
            q.codes = (uint8_t *)gp + KW_PANEL_ROWS * sizeof(uint16_t);
            return q;
        }
        q.scales = (float *)gp;
        q.offsets = q.scales + KW_PANEL_ROWS;
        q.codes = (uint8_t *)gp + KW_PANEL_ROWS * sizeof(float) * ofs;
        return q;
    }
    const int64_t per = ql->superblock / ql->group, j = g % per;
    char *sbp = (char *)panel + (size_t)(g / per) * kw__quant_sb_bytes(ql);
    q.d = (float *)sbp;
    q.m = q.d + KW_PANEL_ROWS;
    q.s = (int8_t *)(sbp + KW_PANEL_ROWS * sizeof(float) * ofs) + j * KW_PANEL_ROWS;
    q.o = q.s + per * KW_PANEL_ROWS;
    q.codes = (uint8_t *)sbp + (size_t)KW_PANEL_ROWS * (sizeof(float) + (size_t)per) * ofs +
              (size_t)(j * ql->group * KW_PANEL_ROWS * ql->code_bits / 8);
    return q;
}

/* Writes panel p of the quantized rows q into dst (kernels/kw_backend.h, the quantized panels): per group, the 64 rows'
 * scales, offsets (if any), or their int8 s, o and the super-block's d, m, then the codes k-major (nibbles: strip s of
 * 16 rows in 8 bytes, row 16s + j low and 16s + 8 + j high in byte j). Rows past N are zero. */
static void kw_pack_qpanel(char *dst, const kw_quant_rows *q, const kw_quant_layout *ql, int64_t p) {
    const int64_t G = ql->group, groups = q->k / G, K = q->k;
    const int64_t rows = q->n - p * KW_PANEL_ROWS < KW_PANEL_ROWS ? q->n - p * KW_PANEL_ROWS : KW_PANEL_ROWS;
    const int x8 = kw__cpu_layout_x8(q->layout);
    const int64_t per = ql->superblock / G, sbs = ql->superblock ? K / ql->superblock : 0;
    memset(dst, 0, kw__quant_panel_bytes(ql, K));
    float di[KW_PANEL_ROWS], mi[KW_PANEL_ROWS]; /* 1 / d and 1 / m of the rows' current super-block */
    for (int64_t g = 0; g < groups; ++g) {
        const kw_qgroup qg = kw_qgroup_at(dst, ql, g);
        uint8_t *codes = qg.codes;
        for (int64_t r = 0; r < rows; ++r) {
            const int64_t n = p * KW_PANEL_ROWS + r;
            if (ql->superblock) {
                const int64_t sb = n * sbs + g / per;
                qg.d[r] = q->sb_scales[sb];
                if (g % per == 0) di[r] = 1.0f / qg.d[r];
                /* checked by the caller */
                (void)kw__quant_sb_int_inv(q->scales[n * groups + g], qg.d[r], di[r], &qg.s[r]);
                if (ql->has_offset) {
                    qg.m[r] = q->sb_offsets[sb];
                    if (g % per == 0) mi[r] = 1.0f / qg.m[r];
                    (void)kw__quant_sb_int_inv(q->offsets[n * groups + g], qg.m[r], mi[r], &qg.o[r]);
                }
            } else if (ql->f16_scales) { /* checked by the caller: an f16 value */
                qg.scales16[r] = kw_f32_to_f16(q->scales[n * groups + g]);
            } else {
                qg.scales[r] = q->scales[n * groups + g];
                if (ql->has_offset) qg.offsets[r] = q->offsets[n * groups + g];
            }
            if (x8) continue; /* the codes below, the group's rows at once */
            const int8_t *src = q->codes + n * K + g * G;
            for (int64_t kk = 0; kk < G; ++kk) {
                if (ql->code_bits == 8) {
                    codes[kk * KW_PANEL_ROWS + r] = (uint8_t)src[kk];
                    continue;
                }
                if (ql->code_bits == 6) { /* row r in bits 6r..6r+5 of the k's 48 bytes */
                    const unsigned u = (unsigned)src[kk] & 63u, bit = (unsigned)r * 6u;
                    uint8_t *at = codes + kk * (KW_PANEL_ROWS * 6 / 8) + bit / 8;
                    at[0] |= (uint8_t)(u << (bit % 8));
                    if (bit % 8 > 2) at[1] |= (uint8_t)(u >> (8 - bit % 8));
                    continue;
                }
                const int64_t in_strip = r % 16;
                const uint8_t nibble = (uint8_t)(src[kk] - ql->code_min);
                uint8_t *byte = codes + kk * (KW_PANEL_ROWS / 2) + (r / 16) * 8 + in_strip % 8;
                *byte |= in_strip < 8 ? nibble : (uint8_t)(nibble << 4);
            }
        }
        if (x8) kw__cpu_x8_pack_group(q->layout, codes, q->codes + p * KW_PANEL_ROWS * K + g * G, K, rows);
    }
}

static void kw_pack_qpanels(void *arg, int64_t p0, int64_t p1, int worker) {
    (void)worker;
    const kw_pack_job *j = arg;
    for (int64_t p = p0; p < p1; ++p)
        kw_pack_qpanel(j->dst + (size_t)p * j->panel_bytes, j->q, j->ql, p);
}

int kw__cpu_pack_quantized(kw_backend *backend, const kw_quant_rows *q, kw_tensor *packed) {
    kw_cpu_backend *cpu = kw__cpu(backend);
    kw_quant_layout ql;
    kw_layout_quant(q->layout, &ql);
    const int64_t ne[2] = {q->n, q->k}, panels = (q->n + KW_PANEL_ROWS - 1) / KW_PANEL_ROWS;
    kw_tensor t;
    KW_FORWARD(kw__tensor_alloc_layout(backend, &t, KW_DTYPE_F32, 2, ne, q->layout));
    const size_t panel_bytes = kw__quant_panel_bytes(&ql, q->k);
    const int nt = q->n * q->k >= KW_CPU_PARALLEL_MIN * 8 ? cpu->n_threads : 1;
    kw_pack_job job = {t.data, panel_bytes, NULL, q, &ql};
    kw__cpu_parallel_for(cpu, nt, panels, kw_pack_qpanels, &job);
    *packed = t;
    return 0;
}

void kw__cpu_qpanel_row(const kw_tensor *w, int64_t n, float *dst) {
    kw_quant_layout ql;
    kw_layout_quant(w->layout, &ql);
    const int64_t K = w->ne[1], G = ql.group, p = n / KW_PANEL_ROWS, r = n % KW_PANEL_ROWS;
    const char *panel = (const char *)w->data + (size_t)p * kw__quant_panel_bytes(&ql, K);
    for (int64_t g = 0; g < K / G; ++g) {
        const kw_qgroup qg = kw_qgroup_at(panel, &ql, g);
        const uint8_t *codes = qg.codes;
        float scale, offset = 0.0f;
        if (ql.superblock) {
            scale = qg.d[r] * (float)qg.s[r];
            if (ql.has_offset) offset = qg.m[r] * (float)qg.o[r];
        } else if (ql.f16_scales) {
            scale = kw_f16_to_f32(qg.scales16[r]);
        } else {
            scale = qg.scales[r];
            if (ql.has_offset) offset = qg.offsets[r];
        }
        for (int64_t kk = 0; kk < G; ++kk) {
            int code;
            if (kw__cpu_layout_x8(w->layout)) {
                code = kw__cpu_x8_get_code(w->layout, codes, r, kk);
            } else if (ql.code_bits == 8) {
                code = (int8_t)codes[kk * KW_PANEL_ROWS + r];
            } else if (ql.code_bits == 6) {
                code = kw_s6_code(codes + kk * (KW_PANEL_ROWS * 6 / 8) + (r / 16) * 12, (int)(r % 16));
            } else {
                const uint8_t byte = codes[kk * (KW_PANEL_ROWS / 2) + (r / 16) * 8 + (r % 16) % 8];
                code = (r % 16 < 8 ? byte & 0x0F : byte >> 4) + ql.code_min;
            }
            float v = (float)code * scale;
            if (ql.has_offset) v = v + offset;
            dst[g * G + kk] = v;
        }
    }
}

/* ------------------------------------------------------------------------------------------------------------
 * Prefill on QPANELS_S6_G16_SB: each work item first widens its panel into the QPANELS_S8_G16_SB panel of the same d,
 * s and codes (per-thread scratch), then runs the S8_G16_SB tiles on it: the same bits, and the 6-bit unpack is paid
 * once per panel instead of once per tile (unpacking in every tile made prefill 0.77x S8_G16_SB at one thread:
 * docs/BENCHMARKS.md). The super-block's head (64 d, 16 x 64 s) is the same in both layouts; a k's 48 code bytes
 * become 64 int8.
 */

enum { KW_S6_HEAD = KW_PANEL_ROWS * (4 + KW_QUANT_SUPERBLOCK / 16), KW_S6_K_BYTES = KW_PANEL_ROWS * 6 / 8 };

static void kw_s6_widen_scalar(int8_t *dst, const uint8_t *src) {
    for (int r = 0; r < KW_PANEL_ROWS; ++r)
        dst[r] = (int8_t)kw_s6_code(src + r / 16 * 12, r % 16);
}

#if KW_CPU_X86
KW_TARGET_AVX2 static void kw_s6_widen_avx2(int8_t *dst, const uint8_t *src) {
    for (int v = 0; v < 4; ++v)
        _mm_storeu_si128((__m128i *)(dst + 16 * v), kw_avx2_s6x16(src + 12 * v));
}

KW_TARGET_AVX512_VBMI static void kw_s6_widen_vbmi(int8_t *dst, const uint8_t *src) {
    _mm512_storeu_si512(dst, _mm512_sub_epi8(kw_s6_unpack_vbmi(src), _mm512_set1_epi8(32)));
}
#endif

static void kw_s6_widen_panel(enum kw_cpu_isa isa, char *dst, const char *src, int64_t K) {
    void (*widen)(int8_t *, const uint8_t *) = kw_s6_widen_scalar;
#if KW_CPU_X86
    if (isa == KW_CPU_ISA_AVX512 && kw_mm_vbmi())
        widen = kw_s6_widen_vbmi;
    else if (isa != KW_CPU_ISA_SCALAR)
        widen = kw_s6_widen_avx2;
#endif
    (void)isa;
    for (int64_t sb = 0; sb < K / KW_QUANT_SUPERBLOCK; ++sb) {
        memcpy(dst, src, KW_S6_HEAD);
        int8_t *d = (int8_t *)dst + KW_S6_HEAD;
        const uint8_t *c = (const uint8_t *)src + KW_S6_HEAD;
        for (int k = 0; k < KW_QUANT_SUPERBLOCK; ++k)
            widen(d + k * KW_PANEL_ROWS, c + k * KW_S6_K_BYTES);
        dst += KW_S6_HEAD + KW_QUANT_SUPERBLOCK * KW_PANEL_ROWS;
        src += KW_S6_HEAD + KW_QUANT_SUPERBLOCK * KW_S6_K_BYTES;
    }
}

/* ------------------------------------------------------------------------------------------------------------
 * Entry point
 */

/* One matmul call's work items: (panel, row block) pairs, handed out one at a time. */
typedef struct kw_mm_job {
    enum kw_cpu_isa isa;
    float *y;
    const float *xs;
    const kw_tensor *w, *bias;
    const kw_x8_act *act; /* the X8 layouts, else NULL */
    const uint16_t *xb;   /* PANELS_BF16_PAIRS: x rounded to bf16 (kw__cpu_bf16_round_x), else NULL */
    char *scratch;        /* a row-major weight, or widened S6 panels: one slice per worker */
    int packed, widen;    /* widen: QPANELS_S6_G16_SB with prefill rows, widened to S8_G16_SB per item */
    size_t slice, wide_slice, panel_bytes;
    int64_t M, N, K, row_block, row_blocks, items; /* items: (panel, row block) pairs */
} kw_mm_job;

static void kw_mm_item(void *arg, int64_t it, int worker) {
    const kw_mm_job *j = arg;
    const kw_tensor *w = j->w;
    const int64_t M = j->M, N = j->N, K = j->K;
    const int64_t p = it / j->row_blocks, m0 = (it % j->row_blocks) * j->row_block;
    const int64_t m1 = M - m0 < j->row_block ? M : m0 + j->row_block;
    const int64_t n0 = p * KW_PANEL_ROWS, ncols = N - n0 < KW_PANEL_ROWS ? N - n0 : KW_PANEL_ROWS;
    const char *wp;
    if (j->packed) {
        wp = (const char *)w->data + (size_t)p * j->panel_bytes;
    } else {
        char *mine = j->scratch + j->slice * (size_t)worker;
        kw_pack_panel(mine, w->data, w->dtype, N, K, p);
        wp = mine;
    }
    enum kw_layout layout = w->layout;
    if (j->widen && layout == KW_LAYOUT_QPANELS_S6_G16_SB && m1 - m0 > KW_MM_ROW_MAX) {
        char *mine = j->scratch + j->wide_slice * (size_t)worker;
        kw_s6_widen_panel(j->isa, mine, wp, K);
        wp = mine;
        layout = KW_LAYOUT_QPANELS_S8_G16_SB;
    } else if (j->widen && kw__cpu_x8_widens(layout, m1 - m0)) {
        char *mine = j->scratch + j->wide_slice * (size_t)worker;
        kw__cpu_x8_widen6_panel(j->isa, mine, wp, K);
        wp = mine;
        layout = KW_LAYOUT_QPANELS_S8_G16_X8;
    }
    if (j->xb)
        kw__cpu_bf16_panel(j->isa, j->y, N, j->xb, K, (const uint16_t *)wp, n0, ncols, m0, m1);
    else if (j->act)
        kw__cpu_x8_panel(j->isa, layout, j->y, N, j->act, K, wp, n0, ncols, m0, m1);
    else
        kw_mm_panel(j->isa, j->y, N, j->xs, K, w->dtype, layout, wp, n0, ncols, m0, m1);
    if (j->bias) {
        for (int64_t n = n0; n < n0 + ncols; ++n) {
            const float b = kw_opm_load(j->bias->data, j->bias->dtype, n);
            for (int64_t m = m0; m < m1; ++m)
                j->y[m * N + n] += b;
        }
    }
}

/* Fills j's shape, panel and work-item fields for out = x w^T + bias, and returns the threads the matmul alone would
 * use (the x and scratch fields are left to the caller). */
static int kw_mm_setup(const kw_cpu_backend *cpu, kw_mm_job *j, kw_tensor *out, const kw_tensor *x, const kw_tensor *w,
                       const kw_tensor *bias) {
    const int64_t M = kw_tensor_nrows(x), K = w->ne[1], N = w->ne[0];
    const int64_t panels = (N + KW_PANEL_ROWS - 1) / KW_PANEL_ROWS;
    kw_quant_layout ql;
    const int quantized = kw_layout_quant(w->layout, &ql);
    const int bf16_act = w->layout == KW_LAYOUT_PANELS_BF16_PAIRS; /* K padded to even */
    const size_t panel_bytes = quantized  ? kw__quant_panel_bytes(&ql, K)
                               : bf16_act ? (size_t)(((K + 1) & ~(int64_t)1) * KW_PANEL_ROWS) * kw_dtype_size(w->dtype)
                                          : (size_t)(K * KW_PANEL_ROWS) * kw_dtype_size(w->dtype);
    int nt = (M * N * K >= KW_CPU_PARALLEL_MIN * 4 && N >= 8) ? cpu->n_threads : 1;
    /* with few panels, also split the rows (into blocks of whole prefill tiles) so that every thread has work */
    const int64_t row_block = panels >= 2 * (int64_t)nt || M <= KW_MM_ROW_BLOCK ? M : KW_MM_ROW_BLOCK;
    const int64_t row_blocks = (M + row_block - 1) / row_block, items = panels * row_blocks;
    if (items < nt) nt = (int)items;
    *j = (kw_mm_job){.isa = cpu->isa,
                     .y = out->data,
                     .xs = x->data,
                     .w = w,
                     .bias = bias,
                     .packed = w->layout != KW_LAYOUT_ROWS,
                     /* QPANELS_S6_G16_SB (S6_G16_SB_X8) with prefill rows: each thread's panel widened in the
                      * scratch to S8_G16_SB (S8_G16_X8): kw_s6_widen_panel, kw__cpu_x8_widen6_panel */
                     .widen = (w->layout == KW_LAYOUT_QPANELS_S6_G16_SB && M > KW_MM_ROW_MAX) ||
                              kw__cpu_x8_widens(w->layout, M),
                     .slice = (panel_bytes + 63) & ~(size_t)63,
                     .panel_bytes = panel_bytes,
                     .M = M,
                     .N = N,
                     .K = K,
                     .row_block = row_block,
                     .row_blocks = row_blocks,
                     .items = items};
    if (j->widen) {
        kw_quant_layout wide;
        kw_layout_quant(kw__cpu_layout_x8(w->layout) ? KW_LAYOUT_QPANELS_S8_G16_X8 : KW_LAYOUT_QPANELS_S8_G16_SB,
                        &wide);
        j->wide_slice = (kw__quant_panel_bytes(&wide, K) + 63) & ~(size_t)63;
    }
    return nt;
}

/* The threads a run of nt threads over the n jobs (one x: the same M) gets: 1 for decode rows (at most KW_MM_ROW_MAX)
 * when every worker sleeps and waking one does not pay for the jobs' weights (each panel read once; fewer than
 * KW_MM_WAKE_MIN_BYTES, or too few for the recent wake-up latency: kw_cpu_pool_wake_for), else nt. Which threads
 * compute an item does not change its bits. */
static int kw_mm_threads(kw_cpu_backend *cpu, int nt, const kw_mm_job *job, int n) {
    if (nt <= 1 || job[0].M > KW_MM_ROW_MAX || !kw_cpu_pool_asleep(cpu->pool)) return nt;
    size_t bytes = 0;
    for (int i = 0; i < n; ++i)
        bytes += job[i].panel_bytes * (size_t)(job[i].items / job[i].row_blocks);
    return kw_cpu_pool_wake_for(cpu->pool, bytes, KW_MM_WAKE_MIN_BYTES, KW_MM_STREAM_BYTES_PER_US) ? nt : 1;
}

/* x rounded to bf16 for PANELS_BF16_PAIRS (*xb) or quantized for the X8 layouts (*act; f16d: with act->dh, for an
 * S8_X8 weight), in the backend's scratch; for X8, after lead_floats floats kept for the caller at *lead (the widened
 * panels: one scratch, as a second call may move the first). */
static int kw_mm_prepare_x(kw_cpu_backend *cpu, const kw_tensor *x, int64_t K, int x8, int f16d, size_t lead_floats,
                           char **lead, uint16_t **xb, kw_x8_act *act) {
    const int64_t M = kw_tensor_nrows(x);
    const int nt = M * K >= KW_CPU_PARALLEL_MIN ? cpu->n_threads : 1;
    if (!x8) {
        float *s;
        KW_FORWARD(kw__cpu_scratch(cpu, (size_t)M * (size_t)((K + 1) / 2), &s));
        *xb = (uint16_t *)s;
        kw__cpu_bf16_round_x(cpu, x->data, M, K, nt, *xb);
        return 0;
    }
    /* per activation group of 32: d, s, two half sums s16 and (f16d) dh, then the codes */
    const size_t groups = (size_t)M * (size_t)(K / 32), dh_groups = f16d ? groups : 0;
    float *xd;
    KW_FORWARD(kw__cpu_scratch(cpu, lead_floats + 4 * groups + dh_groups + ((size_t)M * (size_t)K + 3) / 4, &xd));
    *lead = (char *)xd;
    xd += lead_floats;
    float *xsum = xd + groups;
    int32_t *xs16 = (int32_t *)(xsum + groups);
    float *xdh = f16d ? (float *)(xs16 + 2 * groups) : NULL;
    int8_t *xq = (int8_t *)(xs16 + 2 * groups + dh_groups);
    kw__cpu_x8_quantize(cpu, x->data, M, K, nt, xq, xd, xsum, xs16, xdh);
    *act = (kw_x8_act){xq, xd, xsum, xs16, xdh};
    return 0;
}

int kw__cpu_matmul(kw_backend *backend, kw_tensor *out, const kw_tensor *x, const kw_tensor *w, const kw_tensor *bias) {
    kw_cpu_backend *cpu = kw__cpu(backend);
    kw_mm_job job;
    int nt = kw_mm_setup(cpu, &job, out, x, w, bias);
    nt = kw_mm_threads(cpu, nt, &job, 1);
    /* a row-major weight is packed one panel at a time into per-thread scratch (64-byte aligned slices); with int8
     * activations (the X8 layouts) the scratch holds x quantized instead (kw_x8_act: d, s, s16, dh, q), with bf16
     * activations x rounded; a widened S6 weight, each thread's widened panel */
    const int x8 = kw__cpu_layout_x8(w->layout);
    kw_x8_act act = {0};
    if (x8 || w->layout == KW_LAYOUT_PANELS_BF16_PAIRS) {
        uint16_t *xb = NULL;
        char *lead = NULL;
        KW_FORWARD(kw_mm_prepare_x(cpu, x, job.K, x8, w->layout == KW_LAYOUT_QPANELS_S8_X8,
                                   job.widen ? job.wide_slice / sizeof(float) * (size_t)nt : 0, &lead, &xb, &act));
        job.xb = xb;
        job.act = x8 ? &act : NULL;
        if (job.widen) job.scratch = lead;
    } else if (!job.packed || job.widen) {
        float *s;
        KW_FORWARD(kw__cpu_scratch(cpu, (job.widen ? job.wide_slice : job.slice) / sizeof(float) * (size_t)nt, &s));
        job.scratch = (char *)s;
    }
    kw_cpu_pool_run(cpu->pool, nt, job.items, kw_mm_item, &job);
    return 0;
}

/* The work items of n jobs as one run: item it is item it - first[i] of job i for first[i] <= it < first[i + 1]. */
typedef struct kw_mm_jobs {
    int n;
    kw_mm_job *job; /* n jobs (borrowed) */
    int64_t first[KW_MATMUL_SHARED_MAX + 1];
} kw_mm_jobs;

static void kw_mm_items(void *arg, int64_t it, int worker) {
    const kw_mm_jobs *js = arg;
    int i = 0;
    while (it >= js->first[i + 1])
        ++i;
    kw_mm_item(&js->job[i], it - js->first[i], worker);
}

int kw__cpu_matmul_shared(kw_backend *backend, int n, kw_tensor *const *out, const kw_tensor *x,
                          const kw_tensor *const *w, const kw_tensor *const *bias) {
    kw_cpu_backend *cpu = kw__cpu(backend);
    /* one run when every weight takes x the same way (all X8 layouts: quantized once; all BF16_PAIRS: rounded once;
     * all packed f32 or exact quantized panels: as it is) and needs no per-thread scratch */
    const int x8 = kw__cpu_layout_x8(w[0]->layout), bf16 = w[0]->layout == KW_LAYOUT_PANELS_BF16_PAIRS;
    int one_run = n > 1, f16d = 0; /* f16d: an S8_X8 weight reads act.dh */
    kw_mm_job job[KW_MATMUL_SHARED_MAX];
    kw_mm_jobs js = {.n = n, .job = job};
    int nt = 1;
    for (int i = 0; i < n && one_run; ++i) {
        const int t = kw_mm_setup(cpu, &job[i], out[i], x, w[i], bias ? bias[i] : NULL);
        nt = t > nt ? t : nt;
        one_run = kw__cpu_layout_x8(w[i]->layout) == x8 && (w[i]->layout == KW_LAYOUT_PANELS_BF16_PAIRS) == bf16 &&
                  job[i].packed && !job[i].widen;
        js.first[i + 1] = js.first[i] + job[i].items;
        f16d |= w[i]->layout == KW_LAYOUT_QPANELS_S8_X8;
    }
    if (!one_run) {
        for (int i = 0; i < n; ++i)
            KW_FORWARD(kw__cpu_matmul(backend, out[i], x, w[i], bias ? bias[i] : NULL));
        return 0;
    }
    nt = kw_mm_threads(cpu, nt, job, n);
    kw_x8_act act = {0};
    uint16_t *xb = NULL;
    char *lead = NULL; /* no job widens here */
    if (x8 || bf16) KW_FORWARD(kw_mm_prepare_x(cpu, x, job[0].K, x8, f16d, 0, &lead, &xb, &act));
    for (int i = 0; i < n; ++i) {
        job[i].act = x8 ? &act : NULL;
        job[i].xb = xb;
    }
    kw_cpu_pool_run(cpu->pool, nt, js.first[n], kw_mm_items, &js);
    return 0;
}
