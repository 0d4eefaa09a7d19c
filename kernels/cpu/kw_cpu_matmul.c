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

/* Writes panel p of the quantized rows q into dst (kernels/kw_backend.h, the quantized panels): per group, the 64 rows'
 * scales, offsets (if any), then the codes k-major (nibbles: strip s of 16 rows in 8 bytes, row 16s + j low and
 * 16s + 8 + j high in byte j). Rows past N are zero. */
static void kw_pack_qpanel(char *dst, const kw_quant_rows *q, const kw_quant_layout *ql, int64_t p) {
    const int64_t G = ql->group, groups = q->k / G, K = q->k;
    const int64_t rows = q->n - p * KW_PANEL_ROWS < KW_PANEL_ROWS ? q->n - p * KW_PANEL_ROWS : KW_PANEL_ROWS;
    const size_t group_bytes = kw__quant_group_bytes(ql);
    memset(dst, 0, (size_t)groups * group_bytes);
    for (int64_t g = 0; g < groups; ++g) {
        char *gp = dst + (size_t)g * group_bytes;
        float *scales = (float *)gp, *offsets = scales + KW_PANEL_ROWS;
        uint8_t *codes = (uint8_t *)gp + KW_PANEL_ROWS * sizeof(float) * (size_t)(1 + ql->has_offset);
        for (int64_t r = 0; r < rows; ++r) {
            const int64_t n = p * KW_PANEL_ROWS + r;
            scales[r] = q->scales[n * groups + g];
            if (ql->has_offset) offsets[r] = q->offsets[n * groups + g];
            const int8_t *src = q->codes + n * K + g * G;
            for (int64_t kk = 0; kk < G; ++kk) {
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
    const size_t panel_bytes = (size_t)(q->k / ql.group) * kw__quant_group_bytes(&ql);
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
    const size_t group_bytes = kw__quant_group_bytes(&ql);
    const char *panel = (const char *)w->data + (size_t)p * (size_t)(K / G) * group_bytes;
    for (int64_t g = 0; g < K / G; ++g) {
        const char *gp = panel + (size_t)g * group_bytes;
        const float *scales = (const float *)gp, *offsets = scales + KW_PANEL_ROWS;
        const uint8_t *codes = (const uint8_t *)gp + KW_PANEL_ROWS * sizeof(float) * (size_t)(1 + ql.has_offset);
        for (int64_t kk = 0; kk < G; ++kk) {
            int code;
            if (ql.code_bits == 8) {
                code = (int8_t)codes[kk * KW_PANEL_ROWS + r];
            } else {
                const uint8_t byte = codes[kk * (KW_PANEL_ROWS / 2) + (r / 16) * 8 + (r % 16) % 8];
                code = (r % 16 < 8 ? byte & 0x0F : byte >> 4) + ql.code_min;
            }
            float v = (float)code * scales[r];
            if (ql.has_offset) v = v + offsets[r];
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
    const size_t panel_bytes = quantized ? (size_t)(K / ql.group) * kw__quant_group_bytes(&ql)
                                         : (size_t)(K * KW_PANEL_ROWS) * kw_dtype_size(w->dtype);
    const int packed = w->layout != KW_LAYOUT_ROWS;
    const float *xs = x->data;
    float *y = out->data;

    int nt = (M * N * K >= KW_CPU_PARALLEL_MIN * 4 && N >= 8) ? cpu->n_threads : 1;
    /* with few panels, also split the rows (into blocks of whole prefill tiles) so that every thread has work */
    const int64_t row_block = panels >= 2 * (int64_t)nt || M <= KW_MM_ROW_BLOCK ? M : KW_MM_ROW_BLOCK;
    const int64_t row_blocks = (M + row_block - 1) / row_block, items = panels * row_blocks;
    if (items < nt) nt = (int)items;

    /* a row-major weight is packed one panel at a time into per-thread scratch (64-byte aligned slices) */
    char *scratch = NULL;
    const size_t slice = (panel_bytes + 63) & ~(size_t)63;
    if (!packed) {
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
