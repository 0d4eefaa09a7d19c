/* kw_cpu_attention_isa.h: the attention kernel for one (query token, kv head) item, written once against
 * kw_cpu_simd.h and compiled once per ISA.
 *
 * No include guard on purpose: kw_cpu_attention.c includes this file once per ISA with KW_SIMD_SFX and
 * KW_SIMD_TARGET defined, and undefines them afterwards. The arithmetic (the same on every ISA, see
 * kw_cpu_attention.c for the definition) is fixed by the primitives: the score is a 16-lane fma chain over d closed
 * by kw_v16_hsum's tree, the softmax sum a 16-lane chain over the visible rows closed by the same tree, the output an
 * fma chain over rows per dimension.
 */

/* The dtype-specialized loads of a cache row: 16 values at d, or the first n of them (the other lanes +0). */
KW_SIMD_TARGET KW_SIMD_INLINE KW_VT KW_ISA_FN(kw_attn_ld)(const void *row, enum kw_dtype dt, int64_t d) {
    if (dt == KW_DTYPE_BF16) return KW_V(load_bf16)((const uint16_t *)row + d);
    return KW_V(load)((const float *)row + d);
}
KW_SIMD_TARGET KW_SIMD_INLINE KW_VT KW_ISA_FN(kw_attn_ld_n)(const void *row, enum kw_dtype dt, int64_t d, int n) {
    if (dt == KW_DTYPE_BF16) return KW_V(load_bf16_n)((const uint16_t *)row + d, n);
    return KW_V(load_n)((const float *)row + d, n);
}

/* q . k over D dims: lane l accumulates d = l, l + 16, ... (zero past D), then the fixed tree. */
KW_SIMD_TARGET KW_SIMD_INLINE float KW_ISA_FN(kw_attn_dot)(const float *q, const void *k, enum kw_dtype dt, int64_t D) {
    KW_VT acc = KW_V(zero)();
    int64_t d = 0;
    for (; d + 16 <= D; d += 16)
        acc = KW_V(fma)(KW_V(load)(q + d), KW_ISA_FN(kw_attn_ld)(k, dt, d), acc);
    if (d < D) acc = KW_V(fma)(KW_V(load_n)(q + d, (int)(D - d)), KW_ISA_FN(kw_attn_ld_n)(k, dt, d, (int)(D - d)), acc);
    return KW_V(hsum)(acc);
}

/* kw_attn_dot of q with four consecutive cache rows (k, k + row_bytes, ...) into s[0..4): the same four chains, run
 * side by side (one chain's fma latency bound the score loop) and sharing q's loads. */
KW_SIMD_TARGET KW_SIMD_INLINE void KW_ISA_FN(kw_attn_dot4)(float s[4], const float *q, const char *k, size_t row_bytes,
                                                           enum kw_dtype dt, int64_t D) {
    KW_VT acc[4] = {KW_V(zero)(), KW_V(zero)(), KW_V(zero)(), KW_V(zero)()};
    int64_t d = 0;
    for (; d + 16 <= D; d += 16) {
        const KW_VT qv = KW_V(load)(q + d);
#pragma GCC unroll 4
        for (int r = 0; r < 4; ++r)
            acc[r] = KW_V(fma)(qv, KW_ISA_FN(kw_attn_ld)(k + (size_t)r * row_bytes, dt, d), acc[r]);
    }
    if (d < D) {
        const KW_VT qv = KW_V(load_n)(q + d, (int)(D - d));
#pragma GCC unroll 4
        for (int r = 0; r < 4; ++r)
            acc[r] = KW_V(fma)(qv, KW_ISA_FN(kw_attn_ld_n)(k + (size_t)r * row_bytes, dt, d, (int)(D - d)), acc[r]);
    }
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r)
        s[r] = KW_V(hsum)(acc[r]);
}

/* kw_attn_dot of the H query heads q, q + 16 nc, ... (D = 16 nc each) with R = 16 / H consecutive cache rows (k,
 * k + row_bytes, ...): lane h R + r of the result is head h's score of row r. Each row's chunk is loaded (and widened)
 * once for the H heads, each score's chain over the chunks from +0 is kw_attn_dot's, and the 16 trees are closed
 * together by kw_v16_hsum16 (the same bits as 16 kw_attn_dot calls). With one head its nc chunks (at most 8) stay in
 * registers beside the 16 accumulators; with more, each fma reads its q chunk from L1 instead (16 accumulators and
 * 16 q chunks do not fit 32 registers), so D = 256 can take H > 1 too. nc, bf16 and H are constants at every call
 * (kw_attn_dot16's switch), so the loops unroll and every load is one base register plus a constant. */
KW_SIMD_TARGET KW_SIMD_INLINE KW_VT KW_ISA_FN(kw_attn_dot16_fixed)(const float *q, const char *k, size_t row_bytes,
                                                                   const int nc, const int bf16, const int H) {
    const int R = 16 / H;
    const enum kw_dtype dt = bf16 ? KW_DTYPE_BF16 : KW_DTYPE_F32;
    KW_VT qv[8], acc[16];
    const int nq = H == 1 ? (nc < 8 ? nc : 8) : 0; /* the q chunks held in registers */
#pragma GCC unroll 8
    for (int c = 0; c < nq; ++c)
        qv[c] = KW_V(load)(q + c * 16);
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i)
        acc[i] = KW_V(zero)();
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
        const char *kr = k + (size_t)r * row_bytes;
#pragma GCC unroll 16
        for (int c = 0; c < nc; ++c) {
            const KW_VT kv = KW_ISA_FN(kw_attn_ld)(kr, dt, c * 16);
#pragma GCC unroll 4
            for (int h = 0; h < H; ++h)
                acc[h * R + r] = KW_V(fma)(c < nq ? qv[c & 7] : KW_V(load)(q + (h * nc + c) * 16), kv, acc[h * R + r]);
        }
    }
    return KW_V(hsum16)(acc);
}

/* The heads kw_attn_dot16 scores together for a group of nh query heads of dimension D: at D = 64 four when 4 divides
 * nh, else two when 2 does, else one; at D = 128 two when 2 divides nh, else one; at D = 256 two when 2 divides nh,
 * else 0 (no block: the four-row loop; one head's 16 chunks and 16 accumulators do not fit the registers). Measured on
 * a 512-token prefill, one thread (docs/BENCHMARKS.md): at D = 64 (Llama-3.2-1B) four heads x 4 rows 10.9-11.2 ms,
 * two x 8 11.3-12.0, one x 16 12.3-12.9; at D = 128 with groups of 4 two heads 20.8-21.4 ms, four 21.4-24.6; at
 * D = 256 (Gemma 3) two heads 4.11-4.24 ms, four 4.41-4.67. */
KW_SIMD_INLINE int KW_ISA_FN(kw_attn_dot16_heads)(int64_t nh, int64_t D) {
    if (D == 64) return nh % 4 == 0 ? 4 : nh % 2 == 0 ? 2 : 1;
    if (D == 128) return nh % 2 == 0 ? 2 : 1;
    return D == 256 && nh % 2 == 0 ? 2 : 0;
}

/* kw_attn_dot16_fixed for H = kw_attn_dot16_heads heads of dimension D on an f32 or bf16 cache. */
KW_SIMD_TARGET KW_SIMD_INLINE KW_VT KW_ISA_FN(kw_attn_dot16)(const float *q, const char *k, size_t row_bytes,
                                                             enum kw_dtype dt, int64_t D, int H) {
#define KW_ATTN_DOT16_CASE(NC, HH)                                                                                     \
    case (NC)*8 + (HH):                                                                                                \
        return dt == KW_DTYPE_BF16 ? KW_ISA_FN(kw_attn_dot16_fixed)(q, k, row_bytes, NC, 1, HH)                        \
                                   : KW_ISA_FN(kw_attn_dot16_fixed)(q, k, row_bytes, NC, 0, HH)
    switch (D / 16 * 8 + H) {
        KW_ATTN_DOT16_CASE(4, 1);
        KW_ATTN_DOT16_CASE(4, 2);
        KW_ATTN_DOT16_CASE(4, 4);
        KW_ATTN_DOT16_CASE(8, 1);
        KW_ATTN_DOT16_CASE(8, 2);
        KW_ATTN_DOT16_CASE(16, 2);
    default: /* not reached: kw_attn_dot16_heads admits only the cases above (NaN scores if it ever were, so that
              * every output of the item is NaN and the tests see it) */
        return KW_V(set1)(NAN);
    }
#undef KW_ATTN_DOT16_CASE
}

/* o[d] for the dims of up to four 16-wide chunks starting at d0: the fma chain over the rows with a nonzero weight,
 * times inv. Rows whose weight is 0 (masked, or exp underflowed) are skipped on every ISA. */
KW_SIMD_TARGET KW_SIMD_INLINE void KW_ISA_FN(kw_attn_out_block)(float *o, const float *e_row, const char *vbase,
                                                                size_t row_bytes, enum kw_dtype dt, int64_t lo,
                                                                int64_t n, int64_t D, int64_t d0, float inv) {
    KW_VT acc[4];
    const int nc = (int)((D - d0 + 15) / 16 < 4 ? (D - d0 + 15) / 16 : 4);
    const int last = (int)(D - d0 - (int64_t)(nc - 1) * 16); /* width of the last chunk, 1..16 */
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c)
        acc[c] = KW_V(zero)();
    for (int64_t j = 0; j < n; ++j) {
        const float e = e_row[j];
        if (e == 0.0f) continue;
        const KW_VT ev = KW_V(set1)(e);
        const char *vrow = vbase + (size_t)(lo + j) * row_bytes;
        for (int c = 0; c < nc; ++c) {
            const int64_t d = d0 + c * 16;
            const KW_VT v = (c == nc - 1 && last < 16) ? KW_ISA_FN(kw_attn_ld_n)(vrow, dt, d, last)
                                                       : KW_ISA_FN(kw_attn_ld)(vrow, dt, d);
            acc[c] = KW_V(fma)(ev, v, acc[c]);
        }
    }
    const KW_VT iv = KW_V(set1)(inv);
    for (int c = 0; c < nc; ++c) {
        const KW_VT r = KW_V(mul)(acc[c], iv);
        if (c == nc - 1 && last < 16)
            KW_V(store_n)(o + d0 + c * 16, r, last);
        else
            KW_V(store)(o + d0 + c * 16, r);
    }
}

/* 16 codes of a row at d, widened exactly. */
KW_SIMD_TARGET KW_SIMD_INLINE KW_VT KW_ISA_FN(kw_attnq_codes)(const uint8_t *row, enum kw_kvq_codec codec, int64_t d) {
    if (codec == KW_KVQ_INT8) return KW_V(load_i8)((const int8_t *)row + d);
    if (codec == KW_KVQ_INT6) return KW_V(load_u6)(row + d / 16 * 12, 32);
    return KW_V(load_u4)(row + d / 2, 8);
}

/* The output of m heads (e rows e[0..m), 1 / sum inv[0..m), outputs o[0..m)) for the dims of nc full 16-wide chunks
 * from d0: each value row's chunks are loaded (QUANT: rebuilt as fl(code * scale), one scale per group of G = 16 or 32
 * channels, so a chunk lies in one group) once and feed every head's fma chain over the rows, a head skipping the rows
 * whose weight is 0: per output the chain of kw_attn_out_block, so the same bits, with the value rows read once per
 * group of heads and m x nc independent chains (one head's nc = 4 chains bound decode at short context by their
 * latency). QUANT, m and nc are constants at every call (kw_attn_out_heads' switch), so the loops unroll and the
 * accumulators live in registers (with run-time bounds the compiler kept them in memory). */
KW_SIMD_TARGET KW_SIMD_INLINE void KW_ISA_FN(kw_attn_out_fixed)(const int QUANT, float *const *o, const float *const *e,
                                                                const float *inv, const kw_attn_values *src, int64_t lo,
                                                                int64_t n, int64_t d0, const int m, const int nc) {
    KW_VT acc[4][4];
    const int64_t G = QUANT ? kw_kvq_value_group(src->D) : 1;
#pragma GCC unroll 4
    for (int g = 0; g < m; ++g)
#pragma GCC unroll 4
        for (int c = 0; c < nc; ++c)
            acc[g][c] = KW_V(zero)();
    for (int64_t j = 0; j < n; ++j) {
        int any = 0;
#pragma GCC unroll 4
        for (int g = 0; g < m; ++g)
            any |= e[g][j] != 0.0f;
        if (!any) continue;
        const char *vrow = src->base + (size_t)(lo + j) * src->row_bytes;
        KW_VT v[4];
#pragma GCC unroll 4
        for (int c = 0; c < nc; ++c) {
            const int64_t d = d0 + c * 16;
            if (QUANT) {
                const float sc = src->scale_of[src->vscales[(lo + j) * (src->D / G) + d / G]];
                v[c] = KW_V(mul)(KW_ISA_FN(kw_attnq_codes)((const uint8_t *)vrow, src->codec, d), KW_V(set1)(sc));
            } else {
                v[c] = KW_ISA_FN(kw_attn_ld)(vrow, src->dt, d);
            }
        }
#pragma GCC unroll 4
        for (int g = 0; g < m; ++g) {
            const float w = e[g][j];
            if (w == 0.0f) continue;
            const KW_VT ev = KW_V(set1)(w);
#pragma GCC unroll 4
            for (int c = 0; c < nc; ++c)
                acc[g][c] = KW_V(fma)(ev, v[c], acc[g][c]);
        }
    }
#pragma GCC unroll 4
    for (int g = 0; g < m; ++g) {
        const KW_VT iv = KW_V(set1)(inv[g]);
#pragma GCC unroll 4
        for (int c = 0; c < nc; ++c)
            KW_V(store)(o[g] + d0 + c * 16, KW_V(mul)(acc[g][c], iv));
    }
}

/* kw_attn_out_fixed for 1..4 heads (m) and the dims of 1..4 full chunks from d0 (nc), with them and QUANT (src has
 * scales) as constants. */
KW_SIMD_TARGET static void KW_ISA_FN(kw_attn_out_heads)(float *const *o, const float *const *e, const float *inv, int m,
                                                        const kw_attn_values *src, int64_t lo, int64_t n, int64_t d0,
                                                        int nc) {
#define KW_ATTN_OUT_CASE(M, NC)                                                                                        \
    case (M)*8 + (NC):                                                                                                 \
        if (src->vscales)                                                                                              \
            KW_ISA_FN(kw_attn_out_fixed)(1, o, e, inv, src, lo, n, d0, M, NC);                                         \
        else                                                                                                           \
            KW_ISA_FN(kw_attn_out_fixed)(0, o, e, inv, src, lo, n, d0, M, NC);                                         \
        return
    switch (m * 8 + nc) {
        KW_ATTN_OUT_CASE(1, 1);
        KW_ATTN_OUT_CASE(1, 2);
        KW_ATTN_OUT_CASE(1, 3);
        KW_ATTN_OUT_CASE(1, 4);
        KW_ATTN_OUT_CASE(2, 1);
        KW_ATTN_OUT_CASE(2, 2);
        KW_ATTN_OUT_CASE(2, 3);
        KW_ATTN_OUT_CASE(2, 4);
        KW_ATTN_OUT_CASE(3, 1);
        KW_ATTN_OUT_CASE(3, 2);
        KW_ATTN_OUT_CASE(3, 3);
        KW_ATTN_OUT_CASE(3, 4);
        KW_ATTN_OUT_CASE(4, 1);
        KW_ATTN_OUT_CASE(4, 2);
        KW_ATTN_OUT_CASE(4, 3);
        KW_ATTN_OUT_CASE(4, 4);
    default:
        return; /* m is 1..4 and nc 1..4 (the callers' loops) */
    }
#undef KW_ATTN_OUT_CASE
}

/* The softmax numerators of one head's visible scores e_row[0, n) in place (exp(s - max), the fixed exp of
 * kw__cpu_exp_f32), returning 1 / their sum (16 lanes, then the fixed tree of hsum). */
KW_SIMD_TARGET KW_SIMD_INLINE float KW_ISA_FN(kw_attn_exp_row)(float *e_row, int64_t n, float max) {
    for (int64_t i = 0; i < n; ++i)
        e_row[i] -= max;
    kw__cpu_exp_f32(KW_SIMD_ISA, e_row, e_row, n);
    KW_VT sv = KW_V(zero)();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        sv = KW_V(add)(sv, KW_V(load)(e_row + i));
    if (i < n) sv = KW_V(add)(sv, KW_V(load_n)(e_row + i, (int)(n - i)));
    return 1.0f / KW_V(hsum)(sv);
}

/* The cache rows of a decode step come from memory (the layer's weights have streamed through the caches since they
 * were written): a few short streams per item that the hardware prefetcher barely ramps up on. So the score loop
 * prefetches the key rows KW_ATTN_PF_ROWS ahead and the value rows it is at (for the output pass), each line once:
 * rows [r0, min(r1, end)) of base. */
#define KW_ATTN_PF_ROWS 16
KW_SIMD_TARGET KW_SIMD_INLINE void KW_ISA_FN(kw_attn_prefetch)(const char *base, size_t row_bytes, int64_t r0,
                                                               int64_t r1, int64_t end) {
    if (r1 > end) r1 = end;
    for (size_t o = (size_t)r0 * row_bytes; o < (size_t)r1 * row_bytes; o += 64)
        __builtin_prefetch(base + o);
}

/* The scores of rows j, j + 1, ... in blocks of H heads x R = 16 / H rows (kw_attn_dot16) while a whole block fits
 * in [j, hi], scaled, masked and maxed as vectors, into scores (nh rows of n_kv) and maxs; returns the first row not
 * scored. H (1, 2 or 4, dividing nh) is a constant at every call, so the block's stores have constant sizes. */
KW_SIMD_TARGET KW_SIMD_INLINE int64_t KW_ISA_FN(kw_attn_score_blocks)(const int H, float *scores, float *maxs,
                                                                      const float *q, int64_t nh, const char *kbase,
                                                                      size_t row_bytes, enum kw_dtype dt, int64_t D,
                                                                      int64_t j, int64_t hi, const uint8_t *mask,
                                                                      float scale, int64_t n_kv) {
    const int R = 16 / H;
    KW_VT mv[KW_ATTN_MAX_GROUP]; /* per group of H heads: lane h R + r holds head h's max over rows r mod R */
    for (int64_t g0 = 0; g0 < nh; g0 += H)
        mv[g0 / H] = KW_V(set1)(-INFINITY);
    const KW_VT sv = KW_V(set1)(scale);
    for (; j + R - 1 <= hi; j += R) {
        const char *krow = kbase + (size_t)j * row_bytes;
        int any_masked = 0;
        for (int r = 0; mask && r < R; ++r)
            any_masked |= kw_opm_attn_masked(mask, j + r);
        for (int64_t g0 = 0; g0 < nh; g0 += H) {
            KW_VT s = KW_V(mul)(KW_ISA_FN(kw_attn_dot16)(q + g0 * D, krow, row_bytes, dt, D, H), sv);
            float lanes[16], *dst = H == 1 ? scores + g0 * n_kv + j : lanes; /* one head: straight into its row */
            KW_V(store)(dst, s);
            if (any_masked) {
                for (int i = 0; i < 16; ++i)
                    if (kw_opm_attn_masked(mask, j + i % R)) dst[i] = -INFINITY;
                s = KW_V(load)(dst);
            }
            mv[g0 / H] = KW_V(max_gt)(mv[g0 / H], s);
            if (H > 1)
#pragma GCC unroll 4
                for (int h = 0; h < H; ++h)
                    memcpy(scores + (g0 + h) * n_kv + j, lanes + h * R, (size_t)R * sizeof(float));
        }
    }
    /* the lanes' maxima into the running max: the largest score seen (its value is the row-order max's; only the sign
     * of a zero maximum may differ, which changes s - m only in the sign of a zero, and exp maps both zeros to 1) */
    for (int64_t g0 = 0; g0 < nh; g0 += H) {
        float lanes[16];
        KW_V(store)(lanes, mv[g0 / H]);
        for (int i = 0; i < 16; ++i)
            if (lanes[i] > maxs[g0 + i / R]) maxs[g0 + i / R] = lanes[i];
    }
    return j;
}

/* kw_attn_score_blocks with H (1, 2 or 4) as a constant, out of line: the item's own loops (the decode steps') keep
 * the code and registers they had without the blocks. */
KW_SIMD_TARGET __attribute__((noinline)) static int64_t
KW_ISA_FN(kw_attn_score_blocks_h)(int H, float *scores, float *maxs, const float *q, int64_t nh, const char *kbase,
                                  size_t row_bytes, enum kw_dtype dt, int64_t D, int64_t j, int64_t hi,
                                  const uint8_t *mask, float scale, int64_t n_kv) {
    if (H == 1)
        return KW_ISA_FN(kw_attn_score_blocks)(1, scores, maxs, q, nh, kbase, row_bytes, dt, D, j, hi, mask, scale,
                                               n_kv);
    if (H == 2)
        return KW_ISA_FN(kw_attn_score_blocks)(2, scores, maxs, q, nh, kbase, row_bytes, dt, D, j, hi, mask, scale,
                                               n_kv);
    return KW_ISA_FN(kw_attn_score_blocks)(4, scores, maxs, q, nh, kbase, row_bytes, dt, D, j, hi, mask, scale, n_kv);
}

/* One item: the nh query heads q (nh, D) that share the kv head whose rows start at kbase / vbase, visible rows
 * [lo, hi] minus the mask, into out (nh, D). scores holds nh rows of n_kv floats (scratch). prefetch: the cache rows
 * come from memory (a decode step, kw_attn_prefetch), not from the caches (a prefill's other tokens just read them). */
KW_SIMD_TARGET static void KW_ISA_FN(kw_attn_item)(float *out, const float *q, int64_t nh, const char *kbase,
                                                   const char *vbase, enum kw_dtype dt, int64_t D, int64_t lo,
                                                   int64_t hi, const uint8_t *mask, float scale, float *scores,
                                                   int64_t n_kv, int prefetch) {
    const size_t row_bytes = (size_t)D * kw_dtype_size(dt);
    const int64_t n = hi - lo + 1;
    float maxs[KW_ATTN_MAX_GROUP];
    for (int64_t g = 0; g < nh; ++g)
        maxs[g] = -INFINITY;
    /* scores: each K row once for the nh heads (a prefill on AVX-512: in blocks first), then four rows at a time; the
     * running max (NaN never wins) */
    int64_t j = lo;
    if (prefetch) KW_ISA_FN(kw_attn_prefetch)(kbase, row_bytes, lo, lo + KW_ATTN_PF_ROWS, hi + 1);
    /* a prefill on AVX-512: blocks of H heads x R rows (kw_attn_score_blocks; a decode step's rows stream from memory,
     * where the four-row loop with its prefetches was faster: 60-65 against 76-95 us a call on Qwen3-0.6B's shape at
     * 512 rows, `kvwire bench kernels --attention`) */
    const int H = KW_SIMD_ISA == KW_CPU_ISA_AVX512 && !prefetch ? KW_ISA_FN(kw_attn_dot16_heads)(nh, D) : 0;
    if (H > 0)
        j = KW_ISA_FN(kw_attn_score_blocks_h)(H, scores, maxs, q, nh, kbase, row_bytes, dt, D, j, hi, mask, scale,
                                              n_kv);
    for (; j + 3 <= hi; j += 4) {
        const char *krow = kbase + (size_t)j * row_bytes;
        if (prefetch) { /* K rows ahead, and these rows' V for the output pass */
            KW_ISA_FN(kw_attn_prefetch)(kbase, row_bytes, j + KW_ATTN_PF_ROWS, j + KW_ATTN_PF_ROWS + 4, hi + 1);
            KW_ISA_FN(kw_attn_prefetch)(vbase, row_bytes, j, j + 4, hi + 1);
        }
        for (int64_t g = 0; g < nh; ++g) {
            float s4[4];
            KW_ISA_FN(kw_attn_dot4)(s4, q + g * D, krow, row_bytes, dt, D);
            for (int r = 0; r < 4; ++r) {
                const float s = kw_opm_attn_masked(mask, j + r) ? -INFINITY : s4[r] * scale;
                scores[g * n_kv + j + r] = s;
                if (s > maxs[g]) maxs[g] = s;
            }
        }
    }
    if (prefetch) KW_ISA_FN(kw_attn_prefetch)(vbase, row_bytes, j, hi + 1, hi + 1);
    for (; j <= hi; ++j) {
        const int masked = kw_opm_attn_masked(mask, j);
        const char *krow = kbase + (size_t)j * row_bytes;
        for (int64_t g = 0; g < nh; ++g) {
            const float s = masked ? -INFINITY : KW_ISA_FN(kw_attn_dot)(q + g * D, krow, dt, D) * scale;
            scores[g * n_kv + j] = s;
            if (s > maxs[g]) maxs[g] = s;
        }
    }
    float *os[KW_ATTN_MAX_GROUP], inv[KW_ATTN_MAX_GROUP];
    const float *es[KW_ATTN_MAX_GROUP];
    int m = 0;
    for (int64_t g = 0; g < nh; ++g) {
        float *o = out + g * D, *e_row = scores + g * n_kv + lo;
        if (maxs[g] == -INFINITY) { /* nothing visible */
            memset(o, 0, (size_t)D * sizeof(float));
            continue;
        }
        os[m] = o, es[m] = e_row, inv[m] = KW_ISA_FN(kw_attn_exp_row)(e_row, n, maxs[g]);
        ++m;
    }
    /* the whole 16-wide chunks for up to four heads at once; a partial last chunk per head as before */
    const int64_t Dfull = D / 16 * 16;
    const kw_attn_values src = {vbase, row_bytes, dt, NULL, NULL, (enum kw_kvq_codec)0, D};
    for (int g0 = 0; g0 < m; g0 += 4)
        for (int64_t d0 = 0; d0 < Dfull; d0 += 64)
            KW_ISA_FN(kw_attn_out_heads)
    (os + g0, es + g0, inv + g0, m - g0 < 4 ? m - g0 : 4, &src, lo, n, d0,
     (int)((Dfull - d0) / 16 < 4 ? (Dfull - d0) / 16 : 4));
    if (Dfull < D)
        for (int g = 0; g < m; ++g)
            KW_ISA_FN(kw_attn_out_block)(os[g], es[g], vbase, row_bytes, dt, lo, n, D, Dfull, inv[g]);
}

/* ------------------------------------------------------------------------------------------------------------
 * The paged quantized cache (kernels/kw_kvq_format.h): the same arithmetic, with each cache value rebuilt in registers
 * as fl(code * scale) (a widened code times the scale, one rounding) where the loops above load it, so the result is
 * that of the f32 kernel on a cache holding those values. D is a multiple of 16 here.
 */

/* A key row of a full page rebuilt once into kbuf (D floats): fl(code * scale) per value, the page's channel scales sc.
 * Every query head of the item then takes the f32 kernel's dot product on it. */
KW_SIMD_TARGET KW_SIMD_INLINE void KW_ISA_FN(kw_attnq_key_row)(float *kbuf, const uint8_t *codes, const float *sc,
                                                               enum kw_kvq_codec codec, int64_t D) {
    for (int64_t d = 0; d < D; d += 16)
        KW_V(store)(kbuf + d, KW_V(mul)(KW_ISA_FN(kw_attnq_codes)(codes, codec, d), KW_V(load)(sc + d)));
}

/* The scores of the nh heads for one key row of a full page, its nc = D / 16 chunks rebuilt into registers
 * (fl(code * scale), as kw_attnq_key_row stores them) and each head's dot product taken from there with
 * kw_attn_dot's operations in its order (the same bits as the f32 kernel on the rebuilt row, without storing it and
 * reading it back per head). nc is a constant at every call (kw_attnq_key_scores' switch). */
KW_SIMD_TARGET KW_SIMD_INLINE void KW_ISA_FN(kw_attnq_key_scores_fixed)(float *scores, float *maxs, const float *q,
                                                                        int64_t nh, int64_t n_kv, int64_t j,
                                                                        const uint8_t *codes, const float *ksc,
                                                                        enum kw_kvq_codec codec, float scale,
                                                                        const int nc) {
    KW_VT k[8];
#pragma GCC unroll 8
    for (int c = 0; c < nc; ++c)
        k[c] = KW_V(mul)(KW_ISA_FN(kw_attnq_codes)(codes, codec, (int64_t)c * 16), KW_V(load)(ksc + c * 16));
    for (int64_t g = 0; g < nh; ++g) {
        KW_VT acc = KW_V(zero)();
#pragma GCC unroll 8
        for (int c = 0; c < nc; ++c)
            acc = KW_V(fma)(KW_V(load)(q + g * nc * 16 + c * 16), k[c], acc);
        const float s = KW_V(hsum)(acc) * scale;
        scores[g * n_kv + j] = s;
        if (s > maxs[g]) maxs[g] = s;
    }
}

/* kw_attnq_key_scores_fixed for D = 16 .. 128 (returns 1), else 0: the caller rebuilds the row into a buffer. */
KW_SIMD_TARGET KW_SIMD_INLINE int KW_ISA_FN(kw_attnq_key_scores)(float *scores, float *maxs, const float *q, int64_t nh,
                                                                 int64_t n_kv, int64_t j, const uint8_t *codes,
                                                                 const float *ksc, enum kw_kvq_codec codec, float scale,
                                                                 int64_t D) {
#define KW_ATTNQ_KEY_CASE(NC)                                                                                          \
    case (NC)*16:                                                                                                      \
        KW_ISA_FN(kw_attnq_key_scores_fixed)(scores, maxs, q, nh, n_kv, j, codes, ksc, codec, scale, NC);              \
        return 1
    switch (D) {
        KW_ATTNQ_KEY_CASE(1);
        KW_ATTNQ_KEY_CASE(2);
        KW_ATTNQ_KEY_CASE(3);
        KW_ATTNQ_KEY_CASE(4);
        KW_ATTNQ_KEY_CASE(5);
        KW_ATTNQ_KEY_CASE(6);
        KW_ATTNQ_KEY_CASE(7);
        KW_ATTNQ_KEY_CASE(8);
    default:
        return 0;
    }
#undef KW_ATTNQ_KEY_CASE
}

/* kw_attn_item over one kv head's key storage khead (geometry kg, full pages up to row full) and value storage vhead.
 * ksc: 2 D floats of scratch (a page's decoded channel scales, a rebuilt key row); scale_of: the 256 scale values. */
KW_SIMD_TARGET static void KW_ISA_FN(kw_attnq_item)(float *out, const float *q, int64_t nh, const uint8_t *khead,
                                                    const kw_kvq_geom *kg, const uint8_t *vhead, const kw_kvq_geom *vg,
                                                    int64_t full, int64_t lo, int64_t hi, const uint8_t *mask,
                                                    float scale, float *scores, int64_t n_kv, float *ksc,
                                                    const float *scale_of) {
    const int64_t D = kg->D, P = kg->page_tokens, n = hi - lo + 1;
    const size_t krow_bytes = kw_kvq_row_bytes(kg->codec, D), vrow_bytes = kw_kvq_row_bytes(vg->codec, D);
    const uint8_t *kscales = khead + kw_kvq_scales_offset(kg);
    const uint16_t *ktail = (const uint16_t *)(khead + kw_kvq_tail_offset(kg));
    float *kbuf = ksc + D;
    int64_t page = -1;
    float maxs[KW_ATTN_MAX_GROUP];
    for (int64_t g = 0; g < nh; ++g)
        maxs[g] = -INFINITY;
    for (int64_t j = lo; j <= hi; ++j) {
        const int masked = kw_opm_attn_masked(mask, j);
        const void *krow = NULL;
        enum kw_dtype kdt = KW_DTYPE_F32;
        if (!masked && j >= full) {
            krow = ktail + (j - full) * D, kdt = KW_DTYPE_BF16;
        } else if (!masked) {
            if (j / P != page) {
                page = j / P;
                for (int64_t d = 0; d < D; ++d)
                    ksc[d] = scale_of[kscales[page * D + d]];
            }
            const uint8_t *codes = khead + (size_t)j * krow_bytes;
            if (KW_ISA_FN(kw_attnq_key_scores)(scores, maxs, q, nh, n_kv, j, codes, ksc, kg->codec, scale, D))
                continue; /* scored from registers */
            KW_ISA_FN(kw_attnq_key_row)(kbuf, codes, ksc, kg->codec, D);
            krow = kbuf;
        }
        for (int64_t g = 0; g < nh; ++g) {
            const float s = masked ? -INFINITY : KW_ISA_FN(kw_attn_dot)(q + g * D, krow, kdt, D) * scale;
            scores[g * n_kv + j] = s;
            if (s > maxs[g]) maxs[g] = s;
        }
    }
    float *os[KW_ATTN_MAX_GROUP], inv[KW_ATTN_MAX_GROUP];
    const float *es[KW_ATTN_MAX_GROUP];
    int m = 0;
    for (int64_t g = 0; g < nh; ++g) {
        float *o = out + g * D, *e_row = scores + g * n_kv + lo;
        if (maxs[g] == -INFINITY) {
            memset(o, 0, (size_t)D * sizeof(float));
            continue;
        }
        os[m] = o, es[m] = e_row, inv[m] = KW_ISA_FN(kw_attn_exp_row)(e_row, n, maxs[g]);
        ++m;
    }
    const kw_attn_values src = {
        (const char *)vhead, vrow_bytes, KW_DTYPE_F32, vhead + kw_kvq_scales_offset(vg), scale_of, vg->codec, D};
    for (int g0 = 0; g0 < m; g0 += 4)
        for (int64_t d0 = 0; d0 < D; d0 += 64)
            KW_ISA_FN(kw_attn_out_heads)
    (os + g0, es + g0, inv + g0, m - g0 < 4 ? m - g0 : 4, &src, lo, n, d0,
     (int)((D - d0) / 16 < 4 ? (D - d0) / 16 : 4));
}
