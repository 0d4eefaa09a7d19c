/* kw_cpu_matmul_x8_isa.h: the int8-activation tiles and panel loop (kw_cpu_matmul_x8.c), written once against a few
 * vector macros and compiled once per x86 ISA.
 *
 * No include guard on purpose: kw_cpu_matmul_x8.c includes this file with X8_SFX (avx2, vnni), X8_TARGET, X8_LANES
 * (rows per vector: 8 or 16), X8_MR (x rows per prefill tile, <= KW_X8_MAX_MR), X8_BIASED (1: 8-bit codes are
 * multiplied as code + 128 and 128 * sum q is taken back; 0: the dot product takes signed codes), X8_PF8 (1: S8_X8's
 * decode rows prefetch, as the other layouts' always do) and the vector
 * macros defined (X8_VI / X8_VF the integer and float vector types, X8_DP4 / X8_DP8 the 4-byte dot products on 4-bit
 * and 8-bit codes, X8_OR, X8_AND, X8_SLLI16, X8_SRLI16 (16-bit lanes) and X8_SET1B for the 6-bit codes,
 * X8_LOADS8F the X8_LANES int8 at p as floats, X8_LOADHF the X8_LANES f16 at p as floats (exact), and the loads, stores
 * and arithmetic below); it undefines them all at its end. A vector holds X8_LANES consecutive rows of a 16-row strip;
 * vector hs starts at byte (hs * X8_LANES / 16) * 256 (192 for 6-bit codes, 512 for S8_X8) + (hs * X8_LANES % 16) * 4
 * of each 64-byte code block and at scale hs * X8_LANES.
 */

#define X8_CAT2(a, b) a##_##b
#define X8_CAT(a, b)  X8_CAT2(a, b)
#define X8_FN(name)   X8_CAT(name, X8_SFX)

/* Bits 2 t, 2 t + 1 of every byte of h moved to bits 4, 5 (the 6-bit codes' top bits of vector t), t 0..3. */
X8_TARGET static inline __attribute__((always_inline)) X8_VI X8_FN(kw_x8_top2)(X8_VI h, int t) {
    const X8_VI h2 = t == 0 ? X8_SLLI16(h, 4) : t == 1 ? X8_SLLI16(h, 2) : t == 2 ? h : X8_SRLI16(h, 2);
    return X8_AND(h2, X8_SET1B(0x30));
}

/* Rows [0, MR) of a against NV vectors of rows starting at vector h0 of the panel (SB: a super-block layout, the
 * scales and offsets rebuilt as fl(d * s), fl(m * o)). */
X8_TARGET static inline __attribute__((always_inline)) void
X8_FN(kw_x8_tile)(const int BITS, const int SB, const int MR, const int NV, float *y, int64_t ldy, const kw_x8_act *a,
                  int64_t K, const char *wp, int64_t h0, int64_t ncols, int pf) {
    const int64_t G = K / KW_X8_G, WG = BITS == 4 || SB == 2 ? 32 : 16;
    const int OFS = BITS == 4, TN = SB == 2 ? 8 : 4;   /* TN: code vectors per strip */
    const int64_t strip_bytes = kw_x8_strip(BITS, SB); /* a 16-row strip of a group's codes */
    X8_VF acc[KW_X8_MAX_MR][4];
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v)
            acc[m][v] = X8_ZEROF();
    for (int64_t j = 0; j < K / WG; ++j) {
        const kw_x8_grp gr = kw_x8_group(BITS, SB, wp, j);
        const uint8_t *codes = gr.codes;
        const int64_t g = j * WG / KW_X8_G;
        X8_VI is[KW_X8_MAX_MR][4];
#pragma GCC unroll 4
        for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v)
                is[m][v] = X8_ZEROI();
#pragma GCC unroll 8
        for (int t = 0; t < TN; ++t) {
            if (pf) { /* the group KW_X8_PF groups ahead: S8_X8 its 34 lines as lines t, t + TN, ...; the others
                       * 1 / TN of the group's bytes per t (one loop for both: a loop that is dead in some of this
                       * template's instances loses its unroll annotation, which -O0 builds report) */
                const size_t a0 = SB == 2 ? (size_t)t * 64 : (size_t)t * (gr.bytes / TN);
                const size_t step = SB == 2 ? (size_t)TN * 64 : 64;
                const size_t end = SB == 2 ? gr.bytes : a0 + (gr.bytes + 64 * TN - 1) / (64 * TN) * 64;
                const char *ahead = wp + gr.at + KW_X8_PF * gr.bytes;
#pragma GCC unroll 6
                for (size_t o = a0; o < end; o += step)
                    __builtin_prefetch(ahead + o);
            }
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) {
                const int64_t hs = h0 + v;
                const uint8_t *lane = codes + (hs * X8_LANES / 16) * strip_bytes + (hs * X8_LANES % 16) * 4;
                if (BITS == 6) { /* code + 32: the nibble of vector t % 2 (low for t < 2) and the top two bits */
                    const X8_VI n = X8_LOADI(lane + (t % 2) * 64);
                    const X8_VI u = X8_OR(t < 2 ? X8_LOW4(n) : X8_HIGH4(n), X8_FN(kw_x8_top2)(X8_LOADI(lane + 128), t));
#pragma GCC unroll 4
                    for (int m = 0; m < MR; ++m)
                        is[m][v] = X8_DP4(is[m][v], u, X8_SET1I(kw_x8_q4(a, K, m, j * 16 + 4 * t)));
                    continue;
                }
                const X8_VI c = X8_LOADI(lane + t * 64);
                if (BITS == 4) {
                    const X8_VI lo = X8_LOW4(c), hi = X8_HIGH4(c);
#pragma GCC unroll 4
                    for (int m = 0; m < MR; ++m) {
                        is[m][v] = X8_DP4(is[m][v], lo, X8_SET1I(kw_x8_q4(a, K, m, j * 32 + 4 * t)));
                        is[m][v] = X8_DP4(is[m][v], hi, X8_SET1I(kw_x8_q4(a, K, m, j * 32 + 16 + 4 * t)));
                    }
                } else {
#pragma GCC unroll 4
                    for (int m = 0; m < MR; ++m)
                        is[m][v] = X8_DP8(is[m][v], c, X8_SET1I(kw_x8_q4(a, K, m, j * WG + 4 * t)));
                }
            }
        }
        /* the group's scales and offsets, once for all MR rows */
        X8_VF scale[4], ofs[4];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
            const int64_t r = (h0 + v) * X8_LANES;
            scale[v] = SB == 2 ? X8_LOADHF(gr.scales16 + r)
                       : SB    ? X8_MULF(X8_LOADF(gr.d + r), X8_LOADS8F(gr.s + r))
                               : X8_LOADF(gr.scales + r);
            if (OFS) ofs[v] = SB ? X8_MULF(X8_LOADF(gr.m + r), X8_LOADS8F(gr.o + r)) : X8_LOADF(gr.offsets + r);
        }
#pragma GCC unroll 4
        for (int m = 0; m < MR; ++m) {
            const X8_VF d = X8_SET1F(SB == 2 ? a->dh[m * G + g] : a->d[m * G + g]); /* S8_X8: rule 3's f16(d) */
            const int32_t bias = BITS == 6 ? 32 : BITS == 8 && X8_BIASED ? 128 : 0; /* the codes' bias */
            /* the sum of q over the weight group: a half activation group, or (S8_X8) all of it */
            const int32_t qs =
                SB == 2 ? a->s16[m * 2 * G + 2 * j] + a->s16[m * 2 * G + 2 * j + 1] : a->s16[m * 2 * G + j];
            const X8_VI back = X8_SET1I(bias * qs);
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) {
                const X8_VF f = X8_CVT(X8_SUBI(is[m][v], back));
                if (SB == 2) /* fma(fl(scale * d), isum, acc) */
                    acc[m][v] = X8_FMA(X8_MULF(scale[v], d), f, acc[m][v]);
                else /* fma(scale, fl(isum * d), acc) */
                    acc[m][v] = X8_FMA(scale[v], X8_MULF(f, d), acc[m][v]);
                if (OFS) acc[m][v] = X8_FMA(ofs[v], X8_SET1F(a->s[m * G + g]), acc[m][v]);
            }
        }
    }
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
            const int64_t n = ncols - (h0 + v) * X8_LANES;
            if (n > 0) X8_STORE_N(y + m * ldy + (h0 + v) * X8_LANES, acc[m][v], n < X8_LANES ? (int)n : X8_LANES);
        }
}

/* Rows [m0, m1) of a panel: each row streams it alone (decode) up to KW_X8_ROW_MAX rows, else tiles of X8_MR rows x 2
 * vectors. A decode row prefetches the panel stream, but S8_X8's not where X8_PF8 is 0: its demand loads and the
 * hardware prefetcher keep up alone, and the prefetches slow it (docs/BENCHMARKS.md, "The x8 decode tile's
 * streaming"). */
X8_TARGET static inline __attribute__((always_inline)) void X8_FN(kw_x8_panel)(const int BITS, const int SB, float *y,
                                                                               int64_t N, const kw_x8_act *a, int64_t K,
                                                                               const char *wp, int64_t n0,
                                                                               int64_t ncols, int64_t m0, int64_t m1) {
    const int64_t nvec = (ncols + X8_LANES - 1) / X8_LANES;
    if (m1 - m0 <= KW_X8_ROW_MAX) {
        for (int64_t m = m0; m < m1; ++m) {
            const kw_x8_act r = kw_x8_rows(a, K, m);
            for (int64_t h = 0; h < nvec; h += 4) {
                const int pf = h == 0 && (SB != 2 || X8_PF8);
                X8_FN(kw_x8_tile)(BITS, SB, 1, 4, y + m * N + n0, N, &r, K, wp, h, ncols, pf);
            }
        }
        return;
    }
    for (int64_t m = m0; m < m1; m += X8_MR) {
        const int mr = (int)(m1 - m < X8_MR ? m1 - m : X8_MR);
        const kw_x8_act r = kw_x8_rows(a, K, m);
        float *yt = y + m * N + n0;
        for (int64_t h = 0; h < nvec; h += 2) {
            if (mr >= 4)
                X8_FN(kw_x8_tile)(BITS, SB, X8_MR >= 4 ? 4 : 1, 2, yt, N, &r, K, wp, h, ncols, 0);
            else if (mr == 3)
                X8_FN(kw_x8_tile)(BITS, SB, 3, 2, yt, N, &r, K, wp, h, ncols, 0);
            else if (mr == 2)
                X8_FN(kw_x8_tile)(BITS, SB, 2, 2, yt, N, &r, K, wp, h, ncols, 0);
            else
                X8_FN(kw_x8_tile)(BITS, SB, 1, 2, yt, N, &r, K, wp, h, ncols, 0);
        }
    }
}

#undef X8_FN
/* the parameters, so that the next ISA defines its own */
#undef X8_SFX
#undef X8_TARGET
#undef X8_LANES
#undef X8_MR
#undef X8_BIASED
#undef X8_PF8
#undef X8_VI
#undef X8_VF
#undef X8_ZEROI
#undef X8_ZEROF
#undef X8_LOADI
#undef X8_LOW4
#undef X8_HIGH4
#undef X8_OR
#undef X8_AND
#undef X8_SLLI16
#undef X8_SRLI16
#undef X8_SET1B
#undef X8_SET1I
#undef X8_SET1F
#undef X8_DP4
#undef X8_DP8
#undef X8_SUBI
#undef X8_CVT
#undef X8_MULF
#undef X8_FMA
#undef X8_LOADF
#undef X8_LOADS8F
#undef X8_LOADHF
#undef X8_STORE_N
#undef X8_CAT
#undef X8_CAT2
