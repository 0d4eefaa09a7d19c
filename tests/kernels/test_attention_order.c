/* test_attention_order.c: the CPU attention scores a cache row with the same bits whichever of its loops scores it.
 *
 * kw_cpu_attention_isa.h scores the visible span [lo, hi] of a prefill on AVX-512 in blocks of H heads x 16 / H rows
 * first (kw_attn_score_blocks, the trees closed by kw_v16_hsum16), then four rows at a time (kw_attn_dot4) and the last
 * rows one at a time (kw_attn_dot); all must be the one dot16 of kw_cpu_attention.c's header. Which loop takes a row,
 * and in which slot, depends only on the row's offset from lo and on the span's length, which the ISA-invariance tests
 * vary little: here every slot is reached on purpose.
 *
 * Here one query sees the same n rows [L, L + n) in calls whose span is widened by s = 0..15 masked rows in front (a
 * longer sliding window) and r = 0..15 masked rows behind (a later query position), r = 0..3 and 13..15 for each s,
 * each call both as a decode step (four-row loop) and as the last token of a longer call (the prefill loops: on
 * AVX-512, kw_attn_dot16's blocks of 1, 2 or 4 heads x 16, 8 or 4 rows): each visible row is scored in every slot of
 * those blocks and of dot4 and, where the span leaves it in the tail, by dot. Every call must give the bits of the
 * unpadded decode step (test_attention_row_order_free), and that step and its prefill twin the bits of a reference
 * written here from the header's rule (test_attention_follows_the_rule): per row 16 fmaf lane chains closed
 * by kw_v16_hsum's tree, the row-order max, kw__cpu_exp_f32, the 16-lane sum, per dimension the fmaf chain over rows.
 * Every ISA this machine has, f32 and bf16 caches, head dims that are and are not multiples of 16 (up to 256), GQA
 * groups of 1, 2 and 4 query heads, n = 1 .. 12 and 29 .. 32. The padding rows hold NaN keys and values: a masked row
 * that a block scores and drops must not reach a visible row. test_attention_special_scores: visible rows scoring -Inf
 * (weight 0; all of them: zeros out), +Inf or NaN (NaN out) in every slot kind, against the rule. test_hsum16_trees:
 * kw_v16_hsum16 equals 16 kw_v16_hsum calls bit for bit (any NaN equals any NaN).
 *
 * The inputs make a one-ulp change of any score show in the output: q and k in [1, 2) put every score near one large
 * value (well within a factor 2 of the max m, so s - m is exact) and a power-of-two scale (exact) keeps s - m within
 * about ten units, so every row keeps a weight, and that weight moves by about ulp(s) relative when s moves one ulp.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/kw_cpu.h"
#include "kernels/cpu/kw_cpu_simd.h"
#include "kernels/kw_backend.h"
#include "kernels/kw_op_math.h"
#include "kw_cpu_test_util.h"

#define ORD_L    15 /* rows before the visible ones: room for the front padding */
#define ORD_HQ   4
#define ORD_DMAX 256
#define ORD_NMAX 32
#define ORD_PAD  15 /* the most masked rows behind */

static const int64_t ord_dims[] = {8, 24, 33, 64, 72, 128, 256};
/* kv heads: GQA groups of 1, 2 and 4 query heads (the prefill blocks score 1, 2 or 4 heads x 16, 8 or 4 rows) */
static const int64_t ord_hkvs[] = {4, 2, 1};
static const int64_t ord_rows[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 29, 30, 31, 32};

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;

/* One query (ORD_HQ heads) over rows [ORD_L, ORD_L + n) of (hkv, cap, D) caches; every other row NaN and
 * masked. All arrays owned. */
typedef struct ord_case {
    int64_t D, n, cap, hkv;
    enum kw_dtype dt;
    float scale;
    float *q;
    void *kc, *vc;
    uint8_t *mask;
} ord_case;

static ord_case ord_case_make(int64_t D, int64_t n, int64_t hkv, enum kw_dtype dt) {
    ord_case c = {.D = D, .n = n, .cap = ORD_L + n + ORD_PAD, .hkv = hkv, .dt = dt};
    c.scale = ldexpf(1.0f, -(int)floorf(log2f(0.62f * sqrtf((float)D)))); /* the spread of q . k is ~0.62 sqrt(D) */
    const size_t cells = (size_t)(hkv * c.cap * D);
    c.q = malloc((size_t)(ORD_HQ * D) * sizeof(float));
    c.kc = malloc(cells * kw_dtype_size(dt) + 64), c.vc = malloc(cells * kw_dtype_size(dt) + 64);
    c.mask = malloc((size_t)c.cap);
    assert_true(c.q && c.kc && c.vc && c.mask);
    for (int64_t i = 0; i < ORD_HQ * D; ++i)
        c.q[i] = 1.5f + 0.5f * kw_rand_from(&g_rng);
    for (int64_t j = 0; j < c.cap; ++j)
        c.mask[j] = (uint8_t)(j >= ORD_L && j < ORD_L + n);
    for (int64_t h = 0; h < hkv; ++h)
        for (int64_t j = 0; j < c.cap; ++j)
            for (int64_t d = 0; d < D; ++d) {
                const int64_t i = (h * c.cap + j) * D + d;
                kw_opm_store(c.kc, dt, i, c.mask[j] ? 1.5f + 0.5f * kw_rand_from(&g_rng) : NAN);
                kw_opm_store(c.vc, dt, i, c.mask[j] ? kw_rand_from(&g_rng) : NAN);
            }
    return c;
}

static void ord_case_free(ord_case *c) {
    free(c->q), free(c->kc), free(c->vc), free(c->mask);
}

/* The query tokens of a prefill-sized call (ord_run): more than kw_cpu.h's KW_ATTN_PREFETCH_MAX_T, so the call takes
 * the prefill loops (AVX-512: kw_attn_dot16). */
#define ORD_PREFILL_T (KW_ATTN_PREFETCH_MAX_T + 1)

/* out (ORD_HQ, D): the query on b with s masked rows before the visible ones and r after them in its span, as a
 * decode step (prefill 0) or as the last of ORD_PREFILL_T query tokens at consecutive positions (prefill 1: the
 * others are the same q, seeing fewer rows; only the last token's output is kept). */
static void ord_run(kw_backend *b, const ord_case *c, int s, int r, int prefill, float *out) {
    const int64_t D = c->D, hi = ORD_L + c->n - 1 + r, T = prefill ? ORD_PREFILL_T : 1;
    float *qs = malloc((size_t)(T * ORD_HQ * D) * sizeof(float)),
          *os = malloc((size_t)(T * ORD_HQ * D) * sizeof(float));
    assert_true(qs && os);
    for (int64_t t = 0; t < T; ++t)
        memcpy(qs + t * ORD_HQ * D, c->q, (size_t)(ORD_HQ * D) * sizeof(float));
    kw_tensor tq = kw_wrap(b, KW_DTYPE_F32, 3, (int64_t[]){T, ORD_HQ, D}, qs);
    kw_tensor to = kw_wrap(b, KW_DTYPE_F32, 3, (int64_t[]){T, ORD_HQ, D}, os);
    kw_tensor tk = kw_wrap(b, c->dt, 3, (int64_t[]){c->hkv, c->cap, D}, c->kc);
    kw_tensor tv = kw_wrap(b, c->dt, 3, (int64_t[]){c->hkv, c->cap, D}, c->vc);
    kw_tensor tm = kw_wrap(b, KW_DTYPE_U8, 1, (int64_t[]){c->cap}, c->mask);
    const kw_attention_params ap = {
        .q_pos0 = hi - (T - 1), .n_kv = hi + 1, .scale = c->scale, .sliding_window = c->n + s + r, .kv_mask = &tm};
    assert_int_equal(kw_op_attention(b, &to, &tq, &tk, &tv, &ap), 0);
    assert_int_equal(kw_backend_synchronize(b), 0);
    memcpy(out, os + (T - 1) * ORD_HQ * D, (size_t)(ORD_HQ * D) * sizeof(float));
    free(qs), free(os);
}

/* kw_v16_hsum's tree: u[i] = l[i] + l[i+8], v[i] = u[i] + u[i+4], w[i] = v[i] + v[i+2], w[0] + w[1]. */
static float ord_hsum(const float l[16]) {
    float u[8], v[4];
    for (int i = 0; i < 8; ++i)
        u[i] = l[i] + l[i + 8];
    for (int i = 0; i < 4; ++i)
        v[i] = u[i] + u[i + 4];
    const float w0 = v[0] + v[2], w1 = v[1] + v[3];
    return w0 + w1;
}

/* The unpadded call's output from the rule of kw_cpu_attention.c's header. */
static void ord_reference(const ord_case *c, float *out) {
    const int64_t D = c->D, n = c->n;
    for (int64_t g = 0; g < ORD_HQ; ++g) {
        const int64_t base = g / (ORD_HQ / c->hkv) * c->cap + ORD_L; /* row ORD_L of the group's kv head */
        const float *q = c->q + g * D;
        float e[ORD_NMAX], m = -INFINITY, lane[16];
        for (int64_t i = 0; i < n; ++i) { /* s_i: lane l an fma chain over d = l, l + 16, ..., zero past D */
            memset(lane, 0, sizeof lane);
            for (int64_t d0 = 0; d0 < D; d0 += 16)
                for (int64_t d = d0; d < d0 + 16; ++d) {
                    const float qd = d < D ? q[d] : 0.0f,
                                kd = d < D ? kw_opm_load(c->kc, c->dt, (base + i) * D + d) : 0.0f;
                    lane[d - d0] = fmaf(qd, kd, lane[d - d0]);
                }
            e[i] = ord_hsum(lane) * c->scale;
            if (e[i] > m) m = e[i];
        }
        if (m == -INFINITY) { /* every visible row scores -Inf: zeros, as a query with none (kw_backend.h) */
            memset(out + g * D, 0, (size_t)D * sizeof *out);
            continue;
        }
        for (int64_t i = 0; i < n; ++i)
            e[i] -= m;
        kw__cpu_exp_f32(KW_CPU_ISA_SCALAR, e, e, n);
        memset(lane, 0, sizeof lane);
        for (int64_t i = 0; i < n; ++i)
            lane[i % 16] += e[i];
        const float inv = 1.0f / ord_hsum(lane);
        for (int64_t d = 0; d < D; ++d) {
            float acc = 0.0f;
            for (int64_t i = 0; i < n; ++i)
                if (e[i] != 0.0f) acc = fmaf(e[i], kw_opm_load(c->vc, c->dt, (base + i) * D + d), acc);
            out[g * D + d] = acc * inv;
        }
    }
}

/* 1 if a and b (n floats) differ in any bit (NaN equals NaN); the first difference is printed under what. */
static int ord_differ(const float *a, const float *b, int64_t n, const char *what) {
    for (int64_t i = 0; i < n; ++i)
        if (!(isnan(a[i]) && isnan(b[i])) && kw_f32_bits(a[i]) != kw_f32_bits(b[i])) {
            print_message("%s: element %lld %.9g (0x%08x) vs %.9g (0x%08x)\n", what, (long long)i, (double)a[i],
                          kw_f32_bits(a[i]), (double)b[i], kw_f32_bits(b[i]));
            return 1;
        }
    return 0;
}

/* Every case on every ISA; against_rule: the unpadded call vs ord_reference, else every padded call vs the unpadded
 * one. Counts the failing cases per ISA, prints the counts, then fails if any. */
static void ord_sweep(int against_rule) {
    const char *isas[3];
    const int n_isa = kw_backend_cpu_isas(isas);
    static const enum kw_dtype dts[] = {KW_DTYPE_F32, KW_DTYPE_BF16};
    int bad[3] = {0}, cases = 0;
    float want[ORD_HQ * ORD_DMAX], base[ORD_HQ * ORD_DMAX], got[ORD_HQ * ORD_DMAX];
    char what[200];
    for (int i = 0; i < n_isa; ++i) {
        kw_backend *b = kw_cpu(isas[i], 1);
        for (size_t t = 0; t < sizeof dts / sizeof dts[0]; ++t)
            for (size_t di = 0; di < sizeof ord_dims / sizeof ord_dims[0]; ++di)
                for (size_t hi = 0; hi < sizeof ord_hkvs / sizeof ord_hkvs[0]; ++hi)
                    for (size_t ni = 0; ni < sizeof ord_rows / sizeof ord_rows[0]; ++ni) {
                        ord_case c = ord_case_make(ord_dims[di], ord_rows[ni], ord_hkvs[hi], dts[t]);
                        const int64_t nout = ORD_HQ * c.D;
                        int differs = 0;
                        memset(base, 0xff, sizeof base);
                        ord_run(b, &c, 0, 0, 0, base);
                        if (against_rule) {
                            ord_reference(&c, want);
                            snprintf(what, sizeof what, "%s %s D=%lld n=%lld kv heads %lld: kernel vs the rule",
                                     isas[i], kw_dtype_name(c.dt), (long long)c.D, (long long)c.n, (long long)c.hkv);
                            differs = ord_differ(base, want, nout, what);
                        }
                        /* every padding, as a decode step and as a prefill's last token, against the unpadded step */
                        for (int s = 0; s <= ORD_L && !differs; ++s)
                            for (int r = 0; r <= ORD_PAD && !differs; r = r == 3 ? ORD_PAD - 2 : r + 1)
                                for (int prefill = s == 0 && r == 0; prefill < 2 && !differs; ++prefill) {
                                    if (against_rule && (s > 0 || r > 0)) break; /* the rule: the unpadded calls */
                                    memset(got, 0xff, sizeof got);
                                    ord_run(b, &c, s, r, prefill, got);
                                    snprintf(what, sizeof what,
                                             "%s %s D=%lld n=%lld kv heads %lld: %d masked rows before, %d after, %s "
                                             "vs an unpadded decode step",
                                             isas[i], kw_dtype_name(c.dt), (long long)c.D, (long long)c.n,
                                             (long long)c.hkv, s, r, prefill ? "in a prefill" : "a decode step");
                                    differs = ord_differ(got, base, nout, what);
                                }
                        bad[i] += differs, cases += i == 0;
                        ord_case_free(&c);
                    }
        kw_backend_destroy(b);
    }
    int total = 0;
    for (int i = 0; i < n_isa; ++i) {
        print_message("%s: %d of %d cases differ\n", isas[i], bad[i], cases);
        total += bad[i];
    }
    assert_int_equal(total, 0);
}

static void test_attention_row_order_free(void **state) {
    (void)state;
    ord_sweep(0);
}

static void test_attention_follows_the_rule(void **state) {
    (void)state;
    ord_sweep(1);
}

/* ------------------------------------------------------------------------------------------------------------
 * Visible rows whose scores are not finite: -Inf (a row the query cannot attend to, yet not masked), +Inf and NaN.
 */

enum ord_special {
    ORD_NEG_INF_FIRST, /* the first visible row's keys -Inf: its score is -Inf (q > 0), its weight 0 */
    ORD_NEG_INF_MID,
    ORD_NEG_INF_LAST,
    ORD_NEG_INF_TWO, /* the second and the second-to-last */
    ORD_NEG_INF_ALL, /* every visible row: the max stays -Inf, and the query gets zeros, as one with no visible row
                        (kw_backend.h; torch's softmax would give NaN) */
    ORD_POS_INF,     /* one row +Inf: the max is +Inf, that row's s - m NaN: NaN out */
    ORD_NAN_KEY,     /* one key channel NaN: that row's score NaN, NaN out */
    ORD_SPECIALS
};
static const char *const ord_special_names[] = {"-Inf first",     "-Inf middle", "-Inf last", "-Inf two",
                                                "-Inf every row", "+Inf",        "NaN key"};
_Static_assert(sizeof ord_special_names / sizeof ord_special_names[0] == ORD_SPECIALS, "a name for every kind");

/* Plants special kind in every kv head of c (keys only; the values stay finite). */
static void ord_plant(ord_case *c, int kind) {
    const int64_t n = c->n, D = c->D;
    for (int64_t h = 0; h < c->hkv; ++h)
        for (int64_t i = 0; i < n; ++i) {
            const int hit = kind == ORD_NEG_INF_ALL || (kind == ORD_NEG_INF_FIRST && i == 0) ||
                            (kind == ORD_NEG_INF_MID && i == n / 2) || (kind == ORD_NEG_INF_LAST && i == n - 1) ||
                            (kind == ORD_NEG_INF_TWO && (i == 1 || i == n - 2)) ||
                            ((kind == ORD_POS_INF || kind == ORD_NAN_KEY) && i == n / 3);
            if (!hit) continue;
            const int64_t row = (h * c->cap + ORD_L + i) * D;
            if (kind == ORD_NAN_KEY) {
                kw_opm_store(c->kc, c->dt, row + D / 2, NAN);
                continue;
            }
            for (int64_t d = 0; d < D; ++d)
                kw_opm_store(c->kc, c->dt, row + d, kind == ORD_POS_INF ? INFINITY : -INFINITY);
        }
}

/* Every ISA, both cache dtypes, head dims on and off the 16-lane grid, GQA groups of 1, 2 and 4, spans that the
 * prefill blocks, the four-row loop and the one-row tail each end: every call (unpadded and padded, decode step and
 * prefill) gives the rule's bits (NaN as a class), finite where the rule is. */
static void test_attention_special_scores(void **state) {
    (void)state;
    static const int64_t dims[] = {33, 64, 256}, rows[] = {5, 17, 32};
    static const int pads[][2] = {{0, 0}, {5, 2}, {13, 15}};
    static const enum kw_dtype dts[] = {KW_DTYPE_F32, KW_DTYPE_BF16};
    const char *isas[3];
    const int n_isa = kw_backend_cpu_isas(isas);
    float want[ORD_HQ * ORD_DMAX], got[ORD_HQ * ORD_DMAX];
    char what[200];
    int bad = 0, calls = 0, nan_cases = 0;
    for (int i = 0; i < n_isa; ++i) {
        kw_backend *b = kw_cpu(isas[i], 1);
        for (size_t t = 0; t < sizeof dts / sizeof dts[0]; ++t)
            for (size_t di = 0; di < sizeof dims / sizeof dims[0]; ++di)
                for (size_t hi = 0; hi < sizeof ord_hkvs / sizeof ord_hkvs[0]; ++hi)
                    for (size_t ni = 0; ni < sizeof rows / sizeof rows[0]; ++ni)
                        for (int kind = 0; kind < ORD_SPECIALS; ++kind) {
                            ord_case c = ord_case_make(dims[di], rows[ni], ord_hkvs[hi], dts[t]);
                            ord_plant(&c, kind);
                            ord_reference(&c, want);
                            const int64_t nout = ORD_HQ * c.D;
                            nan_cases += i == 0 && isnan(want[0]);
                            int differs = 0;
                            for (size_t p = 0; p < sizeof pads / sizeof pads[0] && !differs; ++p)
                                for (int prefill = 0; prefill < 2 && !differs; ++prefill) {
                                    memset(got, 0xff, sizeof got);
                                    ord_run(b, &c, pads[p][0], pads[p][1], prefill, got);
                                    snprintf(what, sizeof what,
                                             "%s %s D=%lld n=%lld kv heads %lld, %s: %d masked rows before, %d after, "
                                             "%s vs the rule",
                                             isas[i], kw_dtype_name(c.dt), (long long)c.D, (long long)c.n,
                                             (long long)c.hkv, ord_special_names[kind], pads[p][0], pads[p][1],
                                             prefill ? "in a prefill" : "a decode step");
                                    differs = ord_differ(got, want, nout, what);
                                    ++calls;
                                }
                            bad += differs;
                            ord_case_free(&c);
                        }
        kw_backend_destroy(b);
    }
    print_message("%d calls on %d ISAs, %d cases differ; %d of the cases are NaN by the rule\n", calls, n_isa, bad,
                  nan_cases);
    assert_int_equal(bad, 0);
    /* exactly the +Inf and NaN kinds are NaN by the rule: the others compare finite bits, not NaN with NaN */
    assert_int_equal(nan_cases, (int)(sizeof dts / sizeof dts[0] * sizeof dims / sizeof dims[0] * sizeof ord_hkvs /
                                      sizeof ord_hkvs[0] * sizeof rows / sizeof rows[0] * 2));
}

/* ------------------------------------------------------------------------------------------------------------
 * kw_v16_hsum16 against kw_v16_hsum, row by row.
 */

/* 16 rows of 16 lanes: values of mixed magnitude and sign (so that the order of the adds shows in the rounding), and
 * in some trials zeros of both signs, infinities and NaNs with distinct payloads. */
static void hsum_rows(float rows[16][16], int trial) {
    for (int r = 0; r < 16; ++r)
        for (int l = 0; l < 16; ++l) {
            const float x = kw_rand_from(&g_rng);
            rows[r][l] = ldexpf(x, (int)(kw_rand_from(&g_rng) * 40.0f) - 20);
            if (trial % 4 != 0) continue;
            const int pick = (int)(kw_rand_from(&g_rng) * 64.0f + 64.0f) % 64;
            if (pick == 0) rows[r][l] = 0.0f;
            if (pick == 1) rows[r][l] = -0.0f;
            if (pick == 2) rows[r][l] = INFINITY;
            if (pick == 3) rows[r][l] = -INFINITY;
            if (pick == 4) rows[r][l] = kw_f32_from_bits(0x7fc00000u | (uint32_t)(r * 16 + l + 1)); /* payload */
        }
}

static void hsum16_scalar(const float rows[16][16], float out[16], float one[16]) {
    kw_v16_scalar a[16];
    for (int r = 0; r < 16; ++r) {
        memcpy(a[r].l, rows[r], sizeof a[r].l);
        one[r] = kw_v16_hsum_scalar(a[r]);
    }
    kw_v16_store_scalar(out, kw_v16_hsum16_scalar(a));
}

#if KW_CPU_X86
KW_TARGET_AVX2 static void hsum16_avx2(const float rows[16][16], float out[16], float one[16]) {
    kw_v16_avx2 a[16];
    for (int r = 0; r < 16; ++r) {
        a[r] = kw_v16_load_avx2(rows[r]);
        one[r] = kw_v16_hsum_avx2(a[r]);
    }
    kw_v16_store_avx2(out, kw_v16_hsum16_avx2(a));
}

KW_TARGET_AVX512 static void hsum16_avx512(const float rows[16][16], float out[16], float one[16]) {
    kw_v16_avx512 a[16];
    for (int r = 0; r < 16; ++r) {
        a[r] = kw_v16_load_avx512(rows[r]);
        one[r] = kw_v16_hsum_avx512(a[r]);
    }
    kw_v16_store_avx512(out, kw_v16_hsum16_avx512(a));
}
#endif

/* Every ISA this machine has: lane r of hsum16 has the bits of hsum of row r on the same ISA and of the scalar tree,
 * a NaN as a class (the compiler may commute an add, so which operand's payload survives is not promised). */
static void test_hsum16_trees(void **state) {
    (void)state;
    typedef void (*hsum16_fn)(const float[16][16], float[16], float[16]);
    hsum16_fn fns[3] = {hsum16_scalar, NULL, NULL};
    const char *names[3] = {"scalar", "avx2", "avx512"};
#if KW_CPU_X86
    const char *isas[3];
    const int n_isa = kw_backend_cpu_isas(isas); /* the ISAs the backend would run here */
    for (int i = 0; i < n_isa; ++i) {
        if (strcmp(isas[i], "avx2") == 0) fns[1] = hsum16_avx2;
        if (strcmp(isas[i], "avx512") == 0) fns[2] = hsum16_avx512;
    }
#endif
    int checked = 0;
    for (int trial = 0; trial < 2000; ++trial) {
        float rows[16][16], want[16], ignored[16], got[16], one[16];
        hsum_rows(rows, trial);
        hsum16_scalar(rows, ignored, want);
        for (int i = 0; i < 3; ++i) {
            if (!fns[i]) continue;
            fns[i](rows, got, one);
            for (int r = 0; r < 16; ++r) {
                if (isnan(want[r])
                        ? !isnan(got[r]) || !isnan(one[r])
                        : kw_f32_bits(got[r]) != kw_f32_bits(want[r]) || kw_f32_bits(one[r]) != kw_f32_bits(want[r]))
                    fail_msg("%s trial %d row %d: hsum16 0x%08x, hsum 0x%08x, scalar tree 0x%08x", names[i], trial, r,
                             kw_f32_bits(got[r]), kw_f32_bits(one[r]), kw_f32_bits(want[r]));
            }
            checked += trial == 0;
        }
    }
    print_message("hsum16 checked on %d ISAs\n", checked);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attention_row_order_free),
        cmocka_unit_test(test_attention_follows_the_rule),
        cmocka_unit_test(test_attention_special_scores),
        cmocka_unit_test(test_hsum16_trees),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
