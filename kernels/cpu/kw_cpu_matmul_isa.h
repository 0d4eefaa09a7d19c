/* kw_cpu_matmul_isa.h: the matmul kernels, written once against kw_cpu_simd.h and compiled once per ISA.
 *
 * No include guard on purpose: kw_cpu_matmul.c includes this file once per ISA with KW_SIMD_SFX (scalar, avx2,
 * avx512), KW_SIMD_TARGET (the function attribute of that ISA), KW_MM_MR (rows of x per prefill tile) and KW_MM_NV
 * (16-row strips of W per prefill tile) defined, and undefines them afterwards.
 *
 * The weight is one panel of KW_PANEL_ROWS = 64 rows in k-major order (kernels/kw_backend.h, KW_LAYOUT_PANELS): at
 * each k, 64 consecutive values, one per output column, as four strips of 16 (one kw_v16 each). A tile keeps MR x NV
 * accumulators; at each k it loads NV strips once and, for every x row, broadcasts x[m][k] and does one fma per
 * strip. So every output element y[m][n] is the chain acc = fma(x[m][k], w[n][k], acc) over k = 0, 1, ..., K-1 from
 * acc = +0, whatever the tile, the ISA or the thread that computes it: the tile shapes below are free choices of speed,
 * never of bits.
 */

/* The accumulators of an MR x NV tile set to +0. */
KW_SIMD_TARGET KW_SIMD_INLINE void KW_ISA_FN(kw_mm_tile_zero)(const int MR, const int NV,
                                                              KW_VT acc[KW_MM_MAX_MR][KW_MM_MAX_NV]) {
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v)
            acc[m][v] = KW_V(zero)();
}

/* One step of every chain of the tile: acc[m][v] = fma(x[m][k], w[v], acc[m][v]). */
KW_SIMD_TARGET KW_SIMD_INLINE void KW_ISA_FN(kw_mm_tile_step)(const int MR, const int NV,
                                                              KW_VT acc[KW_MM_MAX_MR][KW_MM_MAX_NV],
                                                              const KW_VT w[KW_MM_MAX_NV], const float *x, int64_t K,
                                                              int64_t k) {
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
        const KW_VT xb = KW_V(set1)(x[m * K + k]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v)
            acc[m][v] = KW_V(fma)(xb, w[v], acc[m][v]);
    }
}

/* Stores an MR x NV tile at y (row stride ldy), only the first ncols columns. */
KW_SIMD_TARGET KW_SIMD_INLINE void KW_ISA_FN(kw_mm_tile_store)(const int MR, const int NV,
                                                               KW_VT acc[KW_MM_MAX_MR][KW_MM_MAX_NV], float *y,
                                                               int64_t ldy, int64_t ncols) {
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
            const int64_t n = ncols - v * 16;
            if (n >= 16)
                KW_V(store)(y + m * ldy + v * 16, acc[m][v]);
            else if (n > 0)
                KW_V(store_n)(y + m * ldy + v * 16, acc[m][v], (int)n);
        }
}

/* One tile: rows [0, MR) of x against strips [0, NV) of the panel slice starting at wp (the panel base plus the first
 * strip's offset), all K. Output columns beyond ncols (the panel's valid columns from the first strip on) are not
 * stored. MR, NV and dt are constants after inlining, so the accumulators live in registers. */
KW_SIMD_TARGET KW_SIMD_INLINE void KW_ISA_FN(kw_mm_tile)(const int MR, const int NV, const enum kw_dtype dt, float *y,
                                                         int64_t ldy, const float *x, int64_t K, const char *wp,
                                                         int64_t ncols) {
    KW_VT acc[KW_MM_MAX_MR][KW_MM_MAX_NV];
    KW_ISA_FN(kw_mm_tile_zero)(MR, NV, acc);
    for (int64_t k = 0; k < K; ++k) {
        KW_VT w[KW_MM_MAX_NV];
        const int64_t at = k * KW_PANEL_ROWS;
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
            if (dt == KW_DTYPE_BF16)
                w[v] = KW_V(load_bf16)((const uint16_t *)wp + at + v * 16);
            else if (dt == KW_DTYPE_F16)
                w[v] = KW_V(load_f16)((const uint16_t *)wp + at + v * 16);
            else
                w[v] = KW_V(load)((const float *)wp + at + v * 16);
        }
        KW_ISA_FN(kw_mm_tile_step)(MR, NV, acc, w, x, K, k);
    }
    KW_ISA_FN(kw_mm_tile_store)(MR, NV, acc, y, ldy, ncols);
}

/* kw_mm_tiles_<isa>_<dtype>: the specialization of a kernel for one weight dtype. */
#define KW_MM_FN(base, DT) KW_SIMD_CAT(KW_ISA_FN(base), DT)

/* The tile for a run of mr (1..KW_MM_MR) x rows and KW_MM_NV strips, dispatched to a constant shape. */
#define KW_MM_TILE_CASE(R)                                                                                             \
    case R:                                                                                                            \
        KW_ISA_FN(kw_mm_tile)(R, KW_MM_NV, dt, y, ldy, x, K, wp, ncols);                                               \
        break;

/* The tile for mr rows, one case per row count (KW_MM_TILE_CASE expands where this is used). */
#define KW_MM_TILE_SWITCH(mr)                                                                                          \
    switch (mr) {                                                                                                      \
        KW_MM_TILE_CASE(1)                                                                                             \
        KW_MM_TILE_CASE(2)                                                                                             \
        KW_MM_TILE_CASE(3)                                                                                             \
        KW_MM_TILE_CASE(4)                                                                                             \
        KW_MM_TILE_MORE_CASES                                                                                          \
    }

#define KW_MM_TILE_DTYPE(DT)                                                                                           \
    KW_SIMD_TARGET static void KW_MM_FN(kw_mm_tiles, DT)(int mr, float *y, int64_t ldy, const float *x, int64_t K,     \
                                                         const char *wp, int64_t ncols) {                              \
        const enum kw_dtype dt = DT;                                                                                   \
        KW_MM_TILE_SWITCH(mr)                                                                                          \
    }                                                                                                                  \
    /* one x row against the whole panel: four strips, one sequential stream of the weight */                          \
    KW_SIMD_TARGET static void KW_MM_FN(kw_mm_row, DT)(float *y, const float *x, int64_t K, const char *wp,            \
                                                       int64_t ncols) {                                                \
        KW_ISA_FN(kw_mm_tile)(1, 4, DT, y, 0, x, K, wp, ncols);                                                        \
    }

KW_MM_TILE_DTYPE(KW_DTYPE_F32)
KW_MM_TILE_DTYPE(KW_DTYPE_BF16)
KW_MM_TILE_DTYPE(KW_DTYPE_F16)

/* Rows [m0, m1) of y against one panel (wp, valid columns ncols <= 64, first column n0). Below KW_MM_ROW_MAX rows each
 * x row streams the panel on its own (decode); above, tiles of KW_MM_MR rows and KW_MM_NV strips. */
KW_SIMD_TARGET static void KW_ISA_FN(kw_mm_panel)(float *y, int64_t N, const float *x, int64_t K, enum kw_dtype dt,
                                                  const char *wp, int64_t n0, int64_t ncols, int64_t m0, int64_t m1) {
    const size_t es = kw_dtype_size(dt), strip_bytes = 16 * es;
    if (m1 - m0 <= KW_MM_ROW_MAX) {
        for (int64_t m = m0; m < m1; ++m) {
            float *ym = y + m * N + n0;
            const float *xm = x + m * K;
            if (dt == KW_DTYPE_BF16)
                KW_MM_FN(kw_mm_row, KW_DTYPE_BF16)(ym, xm, K, wp, ncols);
            else if (dt == KW_DTYPE_F16)
                KW_MM_FN(kw_mm_row, KW_DTYPE_F16)(ym, xm, K, wp, ncols);
            else
                KW_MM_FN(kw_mm_row, KW_DTYPE_F32)(ym, xm, K, wp, ncols);
        }
        return;
    }
    for (int64_t m = m0; m < m1; m += KW_MM_MR) {
        const int mr = (int)(m1 - m < KW_MM_MR ? m1 - m : KW_MM_MR);
        for (int64_t s = 0; s * 16 < ncols; s += KW_MM_NV) {
            float *yt = y + m * N + n0 + s * 16;
            const float *xt = x + m * K;
            const char *wt = wp + (size_t)s * strip_bytes;
            if (dt == KW_DTYPE_BF16)
                KW_MM_FN(kw_mm_tiles, KW_DTYPE_BF16)(mr, yt, N, xt, K, wt, ncols - s * 16);
            else if (dt == KW_DTYPE_F16)
                KW_MM_FN(kw_mm_tiles, KW_DTYPE_F16)(mr, yt, N, xt, K, wt, ncols - s * 16);
            else
                KW_MM_FN(kw_mm_tiles, KW_DTYPE_F32)(mr, yt, N, xt, K, wt, ncols - s * 16);
        }
    }
}

/* ------------------------------------------------------------------------------------------------------------
 * Quantized panels (kernels/kw_backend.h, KW_LAYOUT_QPANELS_*): the same tiles and the same fma chains, the weight
 * vector of a strip rebuilt at each k from its codes as fl(fl(code * scale) + offset) (two roundings, as the
 * dequantizer does), scale and offset loaded once per group. So the bits equal those of the f32 panels of the
 * dequantized weight. BITS (4, 6 or 8), ZERO (subtracted from a nibble), OFS, G and SB (1: a super-block layout, whose
 * scale and offset are rebuilt per group as fl(d * s), fl(m * o): the same f32 values) are constants after inlining. wp
 * is the panel base and s0 the first strip of the tile: the strips of a group are interleaved, not one contiguous slice
 * each.
 */
KW_SIMD_TARGET KW_SIMD_INLINE void KW_ISA_FN(kw_qmm_tile)(const int MR, const int NV, const int BITS, const int ZERO,
                                                          const int OFS, const int G, const int SB, float *y,
                                                          int64_t ldy, const float *x, int64_t K, const char *wp,
                                                          int64_t s0, int64_t ncols) {
    KW_VT acc[KW_MM_MAX_MR][KW_MM_MAX_NV];
    KW_ISA_FN(kw_mm_tile_zero)(MR, NV, acc);
    const size_t code_bytes = (size_t)(G * KW_PANEL_ROWS * BITS / 8);
    const int PER = SB ? KW_QUANT_SUPERBLOCK / G : 1; /* groups per super-block */
    const size_t head_bytes = (size_t)KW_PANEL_ROWS * (4 + (size_t)(SB ? PER : 0)) * (size_t)(1 + OFS);
    /* plain: one group; super-block: one super-block, and group_bytes its share per group (for the prefetch) */
    const size_t unit_bytes = head_bytes + code_bytes * (size_t)PER, group_bytes = unit_bytes / (size_t)PER;
    for (int64_t g = 0; g < K / G; ++g) {
        const char *up = wp + (size_t)(g / PER) * unit_bytes, *gp = wp + (size_t)g * group_bytes;
        const int64_t j = g % PER;
        const float *scales = (const float *)up, *offsets = scales + KW_PANEL_ROWS;
        const uint8_t *codes = (const uint8_t *)up + head_bytes + (size_t)j * code_bytes;
        const int8_t *sub = (const int8_t *)up + KW_PANEL_ROWS * 4 * (1 + OFS) + j * KW_PANEL_ROWS;
        KW_VT a[KW_MM_MAX_NV], b[KW_MM_MAX_NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
            a[v] = KW_V(load)(scales + (s0 + v) * 16);
            b[v] = OFS ? KW_V(load)(offsets + (s0 + v) * 16) : KW_V(zero)();
            if (SB) {
                a[v] = KW_V(mul)(a[v], KW_V(load_i8)(sub + (s0 + v) * 16));
                if (OFS) b[v] = KW_V(mul)(b[v], KW_V(load_i8)(sub + PER * KW_PANEL_ROWS + (s0 + v) * 16));
            }
        }
        for (int kk = 0; kk < G; ++kk) {
            if (MR == 1) KW_QMM_PREFETCH(gp, group_bytes, G, kk); /* decode: memory-bound; prefill tiles are not */
            KW_VT w[KW_MM_MAX_NV];
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) {
                const KW_VT c = BITS == 4   ? KW_V(load_u4)(codes + kk * 32 + (s0 + v) * 8, ZERO)
                                : BITS == 6 ? KW_V(load_s6)(codes + kk * 48 + (s0 + v) * 12)
                                            : KW_V(load_i8)((const int8_t *)codes + kk * 64 + (s0 + v) * 16);
                w[v] = KW_V(mul)(c, a[v]);
                if (OFS) w[v] = KW_V(add)(w[v], b[v]);
            }
            const int64_t k = g * G + kk;
            KW_ISA_FN(kw_mm_tile_step)(MR, NV, acc, w, x, K, k);
        }
    }
    KW_ISA_FN(kw_mm_tile_store)(MR, NV, acc, y, ldy, ncols);
}

/* KW_MM_TILE_MORE_CASES expands where it is used, so redefining the case makes it list quantized tiles. */
#undef KW_MM_TILE_CASE
#define KW_MM_TILE_CASE(R)                                                                                             \
    case R:                                                                                                            \
        KW_ISA_FN(kw_qmm_tile)(R, KW_MM_NV, BITS, ZERO, OFS, G, SB, y, ldy, x, K, wp, s0, ncols);                      \
        break;

/* kw_qmm_tiles_<isa>_<name> and kw_qmm_row_<isa>_<name>: one quantized layout's tile dispatch and decode row. */
#define KW_QMM_LAYOUT(NAME, B, Z, O, GR, S)                                                                            \
    KW_SIMD_TARGET static void KW_SIMD_CAT(KW_ISA_FN(kw_qmm_tiles), NAME)(                                             \
        int mr, float *y, int64_t ldy, const float *x, int64_t K, const char *wp, int64_t s0, int64_t ncols) {         \
        const int BITS = B, ZERO = Z, OFS = O, G = GR, SB = S;                                                         \
        KW_MM_TILE_SWITCH(mr)                                                                                          \
    }                                                                                                                  \
    KW_SIMD_TARGET static void KW_SIMD_CAT(KW_ISA_FN(kw_qmm_row), NAME)(float *y, const float *x, int64_t K,           \
                                                                        const char *wp, int64_t ncols) {               \
        KW_ISA_FN(kw_qmm_tile)(1, 4, B, Z, O, GR, S, y, 0, x, K, wp, 0, ncols);                                        \
    }

KW_QMM_LAYOUT(s4, 4, 8, 0, 32, 0)
KW_QMM_LAYOUT(u4, 4, 0, 1, 32, 0)
KW_QMM_LAYOUT(s8, 8, 0, 0, 32, 0)
KW_QMM_LAYOUT(s8_ofs, 8, 0, 1, 32, 0)
KW_QMM_LAYOUT(s8_g16, 8, 0, 0, 16, 0)
KW_QMM_LAYOUT(u4_sb, 4, 0, 1, 32, 1)
KW_QMM_LAYOUT(s8_g16_sb, 8, 0, 0, 16, 1)
KW_QMM_LAYOUT(s6_g16_sb, 6, 0, 0, 16, 1)

/* kw_mm_panel for a quantized panel: the same split into decode rows and prefill tiles. */
KW_SIMD_TARGET static void KW_ISA_FN(kw_qmm_panel)(float *y, int64_t N, const float *x, int64_t K,
                                                   enum kw_layout layout, const char *wp, int64_t n0, int64_t ncols,
                                                   int64_t m0, int64_t m1) {
    const int rows = m1 - m0 <= KW_MM_ROW_MAX;
    for (int64_t m = m0; m < m1; m += rows ? 1 : KW_MM_MR) {
        const int mr = rows ? 1 : (int)(m1 - m < KW_MM_MR ? m1 - m : KW_MM_MR);
        for (int64_t s = 0; s * 16 < ncols; s += rows ? 4 : KW_MM_NV) {
            float *yt = y + m * N + n0 + s * 16;
            const float *xt = x + m * K;
            const int64_t nc = ncols - s * 16;
#ifdef KW_MM_QROW_FAST
            const int fast = rows && kw_mm_vbmi();
#define KW_QMM_FAST(NAME)                                                                                              \
    if (fast) {                                                                                                        \
        KW_MM_QROW_FAST(NAME)(yt, xt, K, wp, nc);                                                                      \
        break;                                                                                                         \
    }
#else
#define KW_QMM_FAST(NAME)
#endif
#define KW_QMM_CALL(NAME)                                                                                              \
    if (rows)                                                                                                          \
        KW_SIMD_CAT(KW_ISA_FN(kw_qmm_row), NAME)(yt, xt, K, wp, nc);                                                   \
    else                                                                                                               \
        KW_SIMD_CAT(KW_ISA_FN(kw_qmm_tiles), NAME)(mr, yt, N, xt, K, wp, s, nc);                                       \
    break;
            switch (layout) {
            case KW_LAYOUT_QPANELS_S4:
                KW_QMM_FAST(s4)
                KW_QMM_CALL(s4)
            case KW_LAYOUT_QPANELS_U4:
                KW_QMM_FAST(u4)
                KW_QMM_CALL(u4)
            case KW_LAYOUT_QPANELS_S8:
                KW_QMM_CALL(s8)
            case KW_LAYOUT_QPANELS_S8_OFS:
                KW_QMM_CALL(s8_ofs)
            case KW_LAYOUT_QPANELS_U4_SB:
                KW_QMM_FAST(u4_sb)
                KW_QMM_CALL(u4_sb)
            case KW_LAYOUT_QPANELS_S8_G16_SB:
                KW_QMM_CALL(s8_g16_sb)
            case KW_LAYOUT_QPANELS_S6_G16_SB:
                KW_QMM_FAST(s6_g16_sb)
                KW_QMM_CALL(s6_g16_sb)
            default:
                KW_QMM_CALL(s8_g16)
            }
#undef KW_QMM_CALL
#undef KW_QMM_FAST
        }
    }
}

/* Rows [m0, m1) of y against one panel of w in any layout: the f32/bf16/f16 panels or a quantized one. */
KW_SIMD_TARGET static void KW_ISA_FN(kw_mm_any_panel)(float *y, int64_t N, const float *x, int64_t K, enum kw_dtype dt,
                                                      enum kw_layout layout, const char *wp, int64_t n0, int64_t ncols,
                                                      int64_t m0, int64_t m1) {
    if (layout == KW_LAYOUT_ROWS || layout == KW_LAYOUT_PANELS)
        KW_ISA_FN(kw_mm_panel)(y, N, x, K, dt, wp, n0, ncols, m0, m1);
    else
        KW_ISA_FN(kw_qmm_panel)(y, N, x, K, layout, wp, n0, ncols, m0, m1);
}

#undef KW_QMM_LAYOUT
#undef KW_MM_TILE_CASE
#undef KW_MM_TILE_SWITCH
#undef KW_MM_FN
#undef KW_MM_TILE_DTYPE
