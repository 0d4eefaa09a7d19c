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
 * Their decode rows prefetch the panel stream, and the 4-bit ones have a cheaper AVX-512 VBMI form (kw_qmm_row_vbmi).
 *
 * Work is split into (panel, block of rows) items handed to the OpenMP team dynamically. Few rows (decode): each row
 * streams a panel with 4 strips in flight; many rows (prefill): register tiles of KW_MM_MR rows x KW_MM_NV strips
 * reuse each loaded weight vector for every row of the tile.
 */
#include "kernels/cpu/kw_cpu.h"

#include <omp.h>
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
 * same bits as kw_qmm_row_avx512_s4/u4, about half the instructions per weight. One multishift puts the nibble u of
 * lane i into bits 16..19 and a ternary op masks it and ors in the exponent of 2^7, so f = 128 + u exactly; then
 * w = fma(f, scale, -C * scale) with C = 128 + ZERO equals (u - ZERO) * scale rounded once, fl(code * scale), whenever
 * C * scale is exact. That is checked per group (fma(scale, C, -C * scale) == 0 in every lane, which also rejects
 * overflow and NaN), and a group that fails takes the convert-and-multiply path. The offset is added as before. (For
 * 8-bit codes the same trick needs a shuffle and an xor per 16 weights, no fewer than the convert: measured no gain.)
 */
#define KW_TARGET_AVX512_VBMI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx2,fma,f16c")))

KW_TARGET_AVX512_VBMI KW_SIMD_INLINE void kw_qmm_row_vbmi(const int ZERO, const int OFS, const int G, const int SB,
                                                          float *y, const float *x, int64_t K, const char *wp,
                                                          int64_t ncols) {
    /* the group's place as in kw_qmm_tile (kw_cpu_matmul_isa.h) */
    const size_t code_bytes = (size_t)(G * KW_PANEL_ROWS / 2);
    const int PER = SB ? KW_QUANT_SUPERBLOCK / G : 1;
    const size_t head_bytes = (size_t)KW_PANEL_ROWS * (4 + (size_t)(SB ? PER : 0)) * (size_t)(1 + OFS);
    const size_t unit_bytes = head_bytes + code_bytes * (size_t)PER, group_bytes = unit_bytes / (size_t)PER;
    const float C = 128.0f + (float)ZERO;
    const __m512i P = _mm512_set1_epi32(0x43000000);
    /* nibbles: byte 2 of lane i takes the 8 bits at the nibble's offset in the strip's 8 bytes (low nibbles of bytes
     * 0..7 for lanes 0..7, high nibbles for 8..15); the ternary keeps its low 4 bits and ors in P */
    uint8_t ctl[64] = {0};
    for (int i = 0; i < 16; ++i) {
        ctl[4 * i + 2] = (uint8_t)(i < 8 ? 8 * i : 8 * (i - 8) + 4);
    }
    const __m512i ctrl = _mm512_loadu_si512(ctl), nib = _mm512_set1_epi32(0x000F0000);
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
        __m512 a[4], b[4], nc[4];
        __mmask16 exact = 0xFFFF;
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) {
            a[v] = _mm512_loadu_ps(scales + v * 16);
            b[v] = OFS ? _mm512_loadu_ps(offsets + v * 16) : _mm512_setzero_ps();
            if (SB) {
                a[v] = _mm512_mul_ps(a[v], kw_v16_load_i8_avx512(sub + v * 16));
                if (OFS) b[v] = _mm512_mul_ps(b[v], kw_v16_load_i8_avx512(sub + PER * KW_PANEL_ROWS + v * 16));
            }
            const __m512 cs = _mm512_mul_ps(a[v], _mm512_set1_ps(C));
            exact &= _mm512_cmp_ps_mask(_mm512_fmsub_ps(a[v], _mm512_set1_ps(C), cs), _mm512_setzero_ps(), _CMP_EQ_OQ);
            nc[v] = _mm512_sub_ps(_mm512_setzero_ps(), cs);
        }
        for (int kk = 0; kk < G; ++kk) {
            const float *xk = x + g * G + kk;
            KW_QMM_PREFETCH(gp, group_bytes, G, kk);
            __m512 w[4];
            if (exact == 0xFFFF) {
#pragma GCC unroll 4
                for (int v = 0; v < 4; ++v) {
                    uint64_t q;
                    memcpy(&q, codes + kk * 32 + v * 8, 8);
                    const __m512i t = _mm512_multishift_epi64_epi8(ctrl, _mm512_set1_epi64((long long)q));
                    w[v] =
                        _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_ternarylogic_epi32(t, nib, P, 0xEA)), a[v], nc[v]);
                }
            } else {
#pragma GCC unroll 4
                for (int v = 0; v < 4; ++v)
                    w[v] = _mm512_mul_ps(kw_v16_load_u4_avx512(codes + kk * 32 + v * 8, ZERO), a[v]);
            }
            const __m512 xb = _mm512_set1_ps(*xk);
#pragma GCC unroll 4
            for (int v = 0; v < 4; ++v) {
                if (OFS) w[v] = _mm512_add_ps(w[v], b[v]);
                acc[v] = _mm512_fmadd_ps(xb, w[v], acc[v]);
            }
        }
    }
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
        const int64_t n = ncols - v * 16;
        if (n >= 16)
            kw_v16_store_avx512(y + v * 16, acc[v]);
        else if (n > 0)
            kw_v16_store_n_avx512(y + v * 16, acc[v], (int)n);
    }
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

int kw__cpu_pack_weight(kw_backend *backend, const kw_tensor *w, kw_tensor *packed) {
    kw_cpu_backend *cpu = kw__cpu(backend);
    const int64_t N = w->ne[0], K = w->ne[1], panels = (N + KW_PANEL_ROWS - 1) / KW_PANEL_ROWS;
    kw_tensor t;
    KW_FORWARD(kw__tensor_alloc_layout(backend, &t, w->dtype, 2, w->ne, KW_LAYOUT_PANELS));
    const size_t panel_bytes = (size_t)(K * KW_PANEL_ROWS) * kw_dtype_size(w->dtype);
    const int nt = N * K >= KW_CPU_PARALLEL_MIN * 8 ? cpu->n_threads : 1;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t p = 0; p < panels; ++p)
        kw_pack_panel((char *)t.data + (size_t)p * panel_bytes, w->data, w->dtype, N, K, p);
    *packed = t;
    return 0;
}

/* Where group g of a quantized panel keeps its numbers (kernels/kw_backend.h): the plain layouts' f32 scales and
 * offsets, or the super-block layouts' int8 s and o and their super-block's f32 d and m; then its codes. */
typedef struct kw_qgroup {
    float *scales, *offsets; /* plain layouts (offsets: with offsets only) */
    float *d, *m;            /* super-block layouts (m: with offsets only) */
    int8_t *s, *o;
    uint8_t *codes;
} kw_qgroup;

static kw_qgroup kw_qgroup_at(const char *panel, const kw_quant_layout *ql, int64_t g) {
    kw_qgroup q = {0};
    const size_t ofs = (size_t)(1 + ql->has_offset);
    if (!ql->superblock) {
        char *gp = (char *)panel + (size_t)g * kw__quant_group_bytes(ql);
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
    const int x8 = q->layout == KW_LAYOUT_QPANELS_U4_X8 || q->layout == KW_LAYOUT_QPANELS_S8_G16_X8;
    const int64_t per = ql->superblock / G, sbs = ql->superblock ? K / ql->superblock : 0;
    memset(dst, 0, kw__quant_panel_bytes(ql, K));
    for (int64_t g = 0; g < groups; ++g) {
        const kw_qgroup qg = kw_qgroup_at(dst, ql, g);
        uint8_t *codes = qg.codes;
        for (int64_t r = 0; r < rows; ++r) {
            const int64_t n = p * KW_PANEL_ROWS + r;
            if (ql->superblock) {
                const int64_t sb = n * sbs + g / per;
                qg.d[r] = q->sb_scales[sb];
                (void)kw__quant_sb_int(q->scales[n * groups + g], qg.d[r], &qg.s[r]); /* checked by the caller */
                if (ql->has_offset) {
                    qg.m[r] = q->sb_offsets[sb];
                    (void)kw__quant_sb_int(q->offsets[n * groups + g], qg.m[r], &qg.o[r]);
                }
            } else {
                qg.scales[r] = q->scales[n * groups + g];
                if (ql->has_offset) qg.offsets[r] = q->offsets[n * groups + g];
            }
            const int8_t *src = q->codes + n * K + g * G;
            for (int64_t kk = 0; kk < G; ++kk) {
                if (x8) {
                    kw__cpu_x8_pack_code(q->layout, codes, r, kk, src[kk]);
                    continue;
                }
                if (ql->code_bits == 8) {
                    codes[kk * KW_PANEL_ROWS + r] = (uint8_t)src[kk];
                    continue;
                }
                const int64_t in_strip = r % 16;
                const uint8_t nibble = (uint8_t)(src[kk] - ql->code_min);
                uint8_t *byte = codes + kk * (KW_PANEL_ROWS / 2) + (r / 16) * 8 + in_strip % 8;
                *byte |= in_strip < 8 ? nibble : (uint8_t)(nibble << 4);
            }
        }
    }
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
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t p = 0; p < panels; ++p)
        kw_pack_qpanel((char *)t.data + (size_t)p * panel_bytes, q, &ql, p);
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
        } else {
            scale = qg.scales[r];
            if (ql.has_offset) offset = qg.offsets[r];
        }
        for (int64_t kk = 0; kk < G; ++kk) {
            int code;
            if (w->layout == KW_LAYOUT_QPANELS_U4_X8 || w->layout == KW_LAYOUT_QPANELS_S8_G16_X8) {
                code = kw__cpu_x8_get_code(w->layout, codes, r, kk);
            } else if (ql.code_bits == 8) {
                code = (int8_t)codes[kk * KW_PANEL_ROWS + r];
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
 * Entry point
 */

int kw__cpu_matmul(kw_backend *backend, kw_tensor *out, const kw_tensor *x, const kw_tensor *w, const kw_tensor *bias) {
    kw_cpu_backend *cpu = kw__cpu(backend);
    const int64_t M = kw_tensor_nrows(x), K = w->ne[1], N = w->ne[0];
    const int64_t panels = (N + KW_PANEL_ROWS - 1) / KW_PANEL_ROWS;
    kw_quant_layout ql;
    const int quantized = kw_layout_quant(w->layout, &ql);
    const int bf16_act = w->layout == KW_LAYOUT_PANELS_BF16_PAIRS; /* K padded to even */
    const size_t panel_bytes = quantized  ? kw__quant_panel_bytes(&ql, K)
                               : bf16_act ? (size_t)(((K + 1) & ~(int64_t)1) * KW_PANEL_ROWS) * kw_dtype_size(w->dtype)
                                          : (size_t)(K * KW_PANEL_ROWS) * kw_dtype_size(w->dtype);
    const int packed = w->layout != KW_LAYOUT_ROWS;
    const float *xs = x->data;
    float *y = out->data;

    int nt = (M * N * K >= KW_CPU_PARALLEL_MIN * 4 && N >= 8) ? cpu->n_threads : 1;
    /* with few panels, also split the rows (into blocks of whole prefill tiles) so that every thread has work */
    const int64_t row_block = panels >= 2 * (int64_t)nt || M <= KW_MM_ROW_BLOCK ? M : KW_MM_ROW_BLOCK;
    const int64_t row_blocks = (M + row_block - 1) / row_block, items = panels * row_blocks;
    if (items < nt) nt = (int)items;

    /* a row-major weight is packed one panel at a time into per-thread scratch (64-byte aligned slices); with int8
     * activations (the X8 layouts) the scratch holds x quantized instead (kw_x8_act: d, s, s16, q) */
    char *scratch = NULL;
    const size_t slice = (panel_bytes + 63) & ~(size_t)63;
    const int x8 = w->layout == KW_LAYOUT_QPANELS_U4_X8 || w->layout == KW_LAYOUT_QPANELS_S8_G16_X8;
    kw_x8_act act = {0};
    uint16_t *xb = NULL; /* bf16_act: x rounded to bf16, rows of K rounded up to even */
    if (bf16_act) {
        float *s;
        KW_FORWARD(kw__cpu_scratch(cpu, (size_t)M * (size_t)((K + 1) / 2), &s));
        xb = (uint16_t *)s;
        kw__cpu_bf16_round_x(x->data, M, K, M * K >= KW_CPU_PARALLEL_MIN ? cpu->n_threads : 1, xb);
    } else if (x8) {
        const size_t groups = (size_t)M * (size_t)(K / 32);
        float *xd;
        KW_FORWARD(kw__cpu_scratch(cpu, 4 * groups + ((size_t)M * (size_t)K + 3) / 4, &xd));
        float *xsum = xd + groups;
        int32_t *xs16 = (int32_t *)(xsum + groups);
        int8_t *xq = (int8_t *)(xs16 + 2 * groups);
        kw__cpu_x8_quantize(x->data, M, K, M * K >= KW_CPU_PARALLEL_MIN ? cpu->n_threads : 1, xq, xd, xsum, xs16);
        act = (kw_x8_act){xq, xd, xsum, xs16};
    } else if (!packed) {
        float *s;
        KW_FORWARD(kw__cpu_scratch(cpu, slice / sizeof(float) * (size_t)nt, &s));
        scratch = (char *)s;
    }

#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t it = 0; it < items; ++it) {
        const int64_t p = it / row_blocks, m0 = (it % row_blocks) * row_block;
        const int64_t m1 = M - m0 < row_block ? M : m0 + row_block;
        const int64_t n0 = p * KW_PANEL_ROWS, ncols = N - n0 < KW_PANEL_ROWS ? N - n0 : KW_PANEL_ROWS;
        const char *wp;
        if (packed) {
            wp = (const char *)w->data + (size_t)p * panel_bytes;
        } else {
            char *mine = scratch + slice * (size_t)omp_get_thread_num();
            kw_pack_panel(mine, w->data, w->dtype, N, K, p);
            wp = mine;
        }
        if (bf16_act)
            kw__cpu_bf16_panel(cpu->isa, y, N, xb, K, (const uint16_t *)wp, n0, ncols, m0, m1);
        else if (x8)
            kw__cpu_x8_panel(cpu->isa, w->layout, y, N, &act, K, wp, n0, ncols, m0, m1);
        else
            kw_mm_panel(cpu->isa, y, N, xs, K, w->dtype, w->layout, wp, n0, ncols, m0, m1);
        if (bias) {
            for (int64_t n = n0; n < n0 + ncols; ++n) {
                const float b = kw_opm_load(bias->data, bias->dtype, n);
                for (int64_t m = m0; m < m1; ++m)
                    y[m * N + n] += b;
            }
        }
    }
    return 0;
}
