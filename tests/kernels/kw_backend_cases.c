/* kw_backend_cases.c: the op parity cases and their runner (see kw_backend_cases.h).
 *
 * Tolerances. u = 2^-24 is the fp32 unit roundoff and g(n) = n u / (1 - n u) the classic bound on the relative
 * error of an n-term fp32 sum in ANY order (blocked, tree, FMA or not), relative to the sum of absolute values.
 * The oracle accumulates in double and rounds once, so its own error is at most u |ref|. Every float comparison
 * below is |got - ref| <= tol[i] with tol[i] built from those two facts and from the error of the fp32 library
 * functions a backend may use: at most 2 ulp (glibc's expf/erff/tanhf and the CPU backend's vector exp are within
 * about 1 ulp, CUDA's documented maxima are 2 ulp); one ulp is at most 2u relative, so 2 ulp is LIB_REL = 4u. The
 * bounds are worst cases, so they do not depend on the seed, and they are far below the error of any real bug (a wrong
 * row, a missing term, a wrong rounding mode), which the cases are sized to expose: K, D and row counts are kept small
 * enough that g(K) stays well below the weight of a single term.
 */
#include "kw_backend_cases.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_half.h"
#include "common/kw_status.h"
#include "common/kw_time.h"
#include "kernels/ref/kw_ref.h"

#define U_F32   (1.0 / 16777216.0)
#define TINY    1e-37 /* slack for results that underflow to subnormals on one side only */
#define LIB_REL 4.0   /* relative error of a backend's fp32 exp/erf/tanh (2 ulp), in units of u */

static double g_n(double n) {
    return n * U_F32 / (1.0 - n * U_F32);
}

/* ------------------------------------------------------------------------------------------------------------
 * The case table
 */

#define B16 KW_DTYPE_BF16
#define F16 KW_DTYPE_F16
#define F32 KW_DTYPE_F32

const struct kw_case kw_cases[] = {
    /* get_rows: V, D, T */
    {KW_OP_GET_ROWS, F32, {50, 16, 7}, 1},
    {KW_OP_GET_ROWS, B16, {1000, 33, 5}, 2},
    {KW_OP_GET_ROWS, F16, {17, 64, 1}, 3},
    /* matmul: M, N, K, bias; odd K, M=1 (decode) and M > 4 (the panel/sgemm path) */
    {KW_OP_MATMUL, F32, {1, 37, 83, 0}, 10},
    {KW_OP_MATMUL, B16, {1, 37, 83, 0}, 11},
    {KW_OP_MATMUL, F16, {1, 37, 83, 0}, 12},
    {KW_OP_MATMUL, B16, {1, 256, 1024, 0}, 13},
    {KW_OP_MATMUL, B16, {1, 5, 15, 1 + F32}, 14},
    {KW_OP_MATMUL, B16, {2, 130, 100, 1 + B16}, 15},
    {KW_OP_MATMUL, F16, {3, 19, 257, 1 + F16}, 16},
    {KW_OP_MATMUL, F32, {4, 64, 64, 0}, 17},
    {KW_OP_MATMUL, B16, {7, 37, 83, 0}, 18},
    {KW_OP_MATMUL, F32, {7, 37, 83, 1 + F32}, 19},
    {KW_OP_MATMUL, F16, {7, 37, 83, 0}, 20},
    {KW_OP_MATMUL, B16, {33, 300, 200, 1 + B16}, 21},
    {KW_OP_MATMUL, B16, {128, 96, 512, 0}, 22},
    {KW_OP_MATMUL, F32, {16, 1, 1, 0}, 23},
    {KW_OP_MATMUL, B16, {1, 9, 32, 0}, 24},  /* K a whole 32-block: no tail in the split bf16 kernel */
    {KW_OP_MATMUL, B16, {3, 41, 47, 0}, 25}, /* tail of 15 */
    {KW_OP_MATMUL, B16, {1, 3, 1, 1 + F16}, 26},
    {KW_OP_MATMUL, B16, {5, 70, 96, 0}, 27},        /* the panel path without AVX-512, streaming with it */
    {KW_OP_MATMUL, F32, {40, 50, 70, 1 + F32}, 28}, /* M past the AVX-512 streaming limits: the panel path */
    {KW_OP_MATMUL, F16, {48, 33, 65, 0}, 29},
    {KW_OP_MATMUL, B16, {65, 20, 40, 1 + B16}, 30},
    /* rms_norm: R, D, flags */
    {KW_OP_RMS_NORM, F32, {5, 64, 0}, 30},
    {KW_OP_RMS_NORM, B16, {3, 1024, 0}, 31},
    {KW_OP_RMS_NORM, F16, {7, 33, 0}, 32},
    {KW_OP_RMS_NORM, B16, {12, 128, KW_RMS_NORM_UNIT_OFFSET}, 33},
    {KW_OP_RMS_NORM, F32, {1, 1, 0}, 34},
    {KW_OP_RMS_NORM, F32, {4, 96, 0, 1}, 35}, /* inputs ~1e-3: eps is a large part of the mean square */
    /* rope: T, H, D, rotary_dim, scaling, first position */
    {KW_OP_ROPE, F32, {5, 4, 128, 128, KW_ROPE_SCALING_NONE, 0}, 40},
    {KW_OP_ROPE, F32, {3, 2, 64, 64, KW_ROPE_SCALING_LLAMA3, 9000}, 41},
    {KW_OP_ROPE, F32, {33, 3, 64, 64, KW_ROPE_SCALING_LINEAR, 7}, 42},
    {KW_OP_ROPE, F32, {2, 1, 10, 6, KW_ROPE_SCALING_NONE, 100}, 43},
    /* attention: T, Hq, Hkv, D, cap, q_pos0, extra n_kv, window, mask */
    {KW_OP_ATTENTION, F32, {1, 4, 4, 16, 8, 0, 0, 0, 0}, 50},
    {KW_OP_ATTENTION, F32, {1, 8, 4, 64, 40, 30, 5, 0, 0}, 51},
    {KW_OP_ATTENTION, B16, {1, 16, 8, 128, 64, 40, 0, 0, 0}, 52},
    {KW_OP_ATTENTION, B16, {7, 14, 2, 64, 32, 3, 2, 0, 1}, 53},
    {KW_OP_ATTENTION, F32, {33, 7, 1, 32, 48, 0, 0, 0, 0}, 54},
    {KW_OP_ATTENTION, B16, {17, 4, 2, 48, 40, 10, 0, 6, 0}, 55},
    {KW_OP_ATTENTION, F32, {9, 2, 2, 16, 20, 4, 0, 3, 1}, 56},
    {KW_OP_ATTENTION, B16, {4, 4, 1, 24, 16, 2, 0, 0, 2}, 57},
    {KW_OP_ATTENTION, F32, {2, 32, 2, 8, 8, 0, 0, 0, 0}, 58},
    /* long spans over few (token, head) rows: the CUDA backend cuts them into chunks (kw__cuda_attn_chunks: spans
     * beyond 512 rows with fewer than 512 rows), decode and prefill, with a mask, a window, padding */
    {KW_OP_ATTENTION, F32, {1, 4, 2, 64, 1100, 1040, 0, 0, 0}, 59},
    {KW_OP_ATTENTION, B16, {1, 8, 2, 128, 1500, 1300, 100, 0, 1}, 120},
    {KW_OP_ATTENTION, F32, {5, 2, 1, 32, 900, 800, 0, 0, 0}, 121},
    {KW_OP_ATTENTION, B16, {1, 4, 4, 16, 1200, 1100, 0, 600, 0}, 122},
    {KW_OP_ATTENTION, F32, {2, 2, 1, 24, 800, 700, 0, 0, 2}, 123},
    /* GQA groups above the CPU's chunk of 16 query heads per kv head (kw_cpu_attention.c, KW_ATTN_MAX_GROUP): 20 =
     * 16 + 4 and 24 = 16 + 8, prefills (on AVX-512 the score blocks) and a decode step */
    {KW_OP_ATTENTION, F32, {9, 40, 2, 64, 48, 20, 0, 0, 0}, 124},
    {KW_OP_ATTENTION, B16, {6, 24, 1, 128, 40, 30, 0, 0, 1}, 125},
    {KW_OP_ATTENTION, B16, {1, 20, 1, 256, 64, 50, 0, 0, 0}, 126},
    /* kv_store / kv_load: T, H, D, cap, pos0 */
    {KW_OP_KV_STORE, B16, {5, 2, 64, 16, 3}, 60},
    {KW_OP_KV_STORE, F32, {1, 8, 128, 10, 9}, 61},
    {KW_OP_KV_STORE, B16, {1, 3, 17, 4, 0}, 62},
    {KW_OP_KV_LOAD, B16, {5, 2, 64, 16, 3}, 63},
    {KW_OP_KV_LOAD, F32, {2, 7, 33, 3, 1}, 64},
    /* glu / unary: n, act */
    {KW_OP_GLU, F32, {1000, KW_ACT_SILU}, 70},
    {KW_OP_GLU, F32, {77, KW_ACT_GELU_TANH}, 71},
    {KW_OP_GLU, F32, {100, KW_ACT_GELU_ERF}, 72},
    {KW_OP_UNARY, F32, {999, KW_ACT_GELU_ERF}, 73},
    {KW_OP_UNARY, F32, {300, KW_ACT_SIGMOID}, 74},
    {KW_OP_UNARY, F32, {300, KW_ACT_SILU}, 75},
    {KW_OP_UNARY, F32, {300, KW_ACT_GELU_TANH}, 76},
    {KW_OP_UNARY, F32, {31, KW_ACT_IDENTITY}, 77},
    {KW_OP_UNARY, F32, {70000, KW_ACT_SILU}, 78},
    {KW_OP_UNARY, F32, {300, KW_ACT_TANH}, 79},
    /* add, scale, softmax: R, N */
    {KW_OP_ADD, F32, {3, 1001}, 80},
    {KW_OP_ADD, F32, {1, 70000}, 81},
    {KW_OP_SCALE, F32, {2, 513}, 82},
    {KW_OP_SOFTMAX, F32, {4, 100}, 83},
    {KW_OP_SOFTMAX, F32, {1, 151936}, 84},
    {KW_OP_SOFTMAX, F32, {9, 1}, 85},
    /* argmax: R, N, flags, data */
    {KW_OP_ARGMAX, F32, {3, 1000, 0, 0}, 90},
    {KW_OP_ARGMAX, F32, {4, 64, 0, 1}, 91},
    {KW_OP_ARGMAX, F32, {4, 64, KW_ARGMAX_ROUND_BF16, 1}, 92},
    {KW_OP_ARGMAX, F32, {5, 40, 0, 2}, 93},
    {KW_OP_ARGMAX, F32, {5, 40, KW_ARGMAX_ROUND_BF16, 2}, 94},
    {KW_OP_ARGMAX, F32, {4, 50, 0, 3}, 95},
    {KW_OP_ARGMAX, F32, {4, 50, KW_ARGMAX_ROUND_BF16, 3}, 96},
    {KW_OP_ARGMAX, F32, {1, 151936, KW_ARGMAX_ROUND_BF16, 0}, 97},
    {KW_OP_ARGMAX, F32, {4, 70, 0, 4}, 98},
    {KW_OP_ARGMAX, F32, {4, 70, KW_ARGMAX_ROUND_BF16, 4}, 99},
    /* copy: n, src dtype */
    {KW_OP_COPY, B16, {1000, F32}, 100},
    {KW_OP_COPY, F16, {1000, F32}, 101},
    {KW_OP_COPY, F32, {999, B16}, 102},
    {KW_OP_COPY, F32, {999, F16}, 103},
    {KW_OP_COPY, F16, {77, B16}, 104},
    {KW_OP_COPY, B16, {77, F16}, 105},
    {KW_OP_COPY, F32, {13, F32}, 106},
    {KW_OP_COPY, KW_DTYPE_I32, {13, KW_DTYPE_I32}, 107},
    /* head_scale_add: T, H, D, g, in place (0 no, 1 out = base, 2 out = x) */
    {KW_OP_HEAD_SCALE_ADD, F32, {23, 8, 128, 1, 0}, 110},
    {KW_OP_HEAD_SCALE_ADD, F32, {1, 3, 17, 1, 1}, 111},
    {KW_OP_HEAD_SCALE_ADD, F32, {300, 2, 64, 0, 2}, 112},
};
const size_t kw_n_cases = sizeof kw_cases / sizeof kw_cases[0];

const char *kw_case_describe(const struct kw_case *c, char *buf, size_t size) {
    int n = snprintf(buf, size, "%s %s", kw_op_name(c->op), kw_dtype_name(c->dtype));
    static const char *const names[KW_OP_COUNT][9] = {
        [KW_OP_GET_ROWS] = {"V", "D", "T"},
        [KW_OP_MATMUL] = {"M", "N", "K", "bias"},
        [KW_OP_RMS_NORM] = {"R", "D", "flags", "small"},
        [KW_OP_ROPE] = {"T", "H", "D", "rd", "scaling", "pos"},
        [KW_OP_ATTENTION] = {"T", "Hq", "Hkv", "D", "cap", "q_pos0", "extra", "window", "mask"},
        [KW_OP_KV_STORE] = {"T", "H", "D", "cap", "pos0"},
        [KW_OP_KV_LOAD] = {"T", "H", "D", "cap", "pos0"},
        [KW_OP_GLU] = {"n", "act"},
        [KW_OP_UNARY] = {"n", "act"},
        [KW_OP_ADD] = {"R", "N"},
        [KW_OP_SCALE] = {"R", "N"},
        [KW_OP_SOFTMAX] = {"R", "N"},
        [KW_OP_ARGMAX] = {"R", "N", "flags", "data"},
        [KW_OP_COPY] = {"n", "src"},
        [KW_OP_HEAD_SCALE_ADD] = {"T", "H", "D", "g", "inplace"},
    };
    for (int i = 0; i < 9 && names[c->op][i] && n > 0 && (size_t)n < size; ++i)
        n += snprintf(buf + n, size - (size_t)n, " %s=%lld", names[c->op][i], (long long)c->a[i]);
    if (n > 0 && (size_t)n < size) snprintf(buf + n, size - (size_t)n, " seed %u", (unsigned)c->seed);
    return buf;
}

/* ------------------------------------------------------------------------------------------------------------
 * Inputs
 */

typedef struct kw_rng {
    uint64_t s;
} kw_rng;

static uint64_t kw_rng_next(kw_rng *r) {
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 0x2545F4914F6CDD1DULL;
}

/* uniform in [-1, 1) */
static float kw_rng_uniform(kw_rng *r) {
    return (float)((double)(kw_rng_next(r) >> 11) * 0x1.0p-52 - 1.0);
}

static void *kw_xmalloc(size_t n) {
    void *p = calloc(n ? n : 1, 1);
    if (!p) {
        fprintf(stderr, "out of memory (%zu bytes)\n", n);
        abort();
    }
    return p;
}

/* n values scaled by amp, stored as dtype (bf16/f16 rounded) */
static void *kw_random_array(kw_rng *r, enum kw_dtype dtype, int64_t n, float amp) {
    void *p = kw_xmalloc((size_t)n * kw_dtype_size(dtype));
    for (int64_t i = 0; i < n; ++i)
        kw_ref_store(p, dtype, i, amp * kw_rng_uniform(r));
    return p;
}

static void kw_abs_array(void *p, enum kw_dtype dtype, int64_t n) {
    for (int64_t i = 0; i < n; ++i)
        kw_ref_store(p, dtype, i, fabsf(kw_ref_load(p, dtype, i)));
}

/* A backend tensor holding a copy of host data (alloc + upload; the caller synchronizes before host data goes). */
static void kw_put(kw_backend *b, kw_tensor *t, enum kw_dtype dtype, int32_t ndim, const int64_t *ne,
                   const void *host) {
    int rc = kw_tensor_alloc(b, t, dtype, ndim, ne);
    if (rc == 0 && host) rc = kw_backend_upload(b, t, 0, host, kw_tensor_nbytes(t));
    if (rc != 0) {
        fprintf(stderr, "setup failed: %s (%s)\n", kw_status_name(rc), kw_error_detail());
        abort();
    }
}

/* Downloads t into a fresh host buffer and synchronizes; returns the synchronize status in *sync_rc. */
static void *kw_get(kw_backend *b, const kw_tensor *t, int *sync_rc) {
    void *host = kw_xmalloc(kw_tensor_nbytes(t));
    int rc = kw_backend_download(b, host, t, 0, kw_tensor_nbytes(t));
    const int rc2 = kw_backend_synchronize(b);
    *sync_rc = rc ? rc : rc2;
    return host;
}

/* ------------------------------------------------------------------------------------------------------------
 * Comparisons
 */

/* |got - want| <= tol[i] elementwise (NaN must meet NaN). Prints the first offenders, the max error and the NMSE. */
static int kw_check_close(const char *what, const float *got, const float *want, const double *tol, int64_t n) {
    int64_t bad = 0;
    double max_err = 0.0, err2 = 0.0, ref2 = 0.0;
    for (int64_t i = 0; i < n; ++i) {
        const double g = got[i], w = want[i];
        int ok;
        if (isnan(w) || isnan(g))
            ok = isnan(w) && isnan(g);
        else if (isinf(w) || isinf(g))
            ok = g == w;
        else {
            const double e = fabs(g - w);
            ok = e <= tol[i];
            max_err = e > max_err ? e : max_err;
            err2 += e * e;
            ref2 += w * w;
        }
        if (!ok && bad++ < 5)
            fprintf(stderr, "  %s[%lld]: got %.9g want %.9g (|diff| %.3g > tol %.3g)\n", what, (long long)i, g, w,
                    fabs(g - w), tol[i]);
    }
    if (bad)
        fprintf(stderr, "  %s: %lld of %lld elements outside the bound; max |diff| %.3g, NMSE %.3g\n", what,
                (long long)bad, (long long)n, max_err, ref2 > 0 ? err2 / ref2 : err2);
    return bad == 0;
}

static int kw_check_bytes(const char *what, const void *got, const void *want, size_t n) {
    if (memcmp(got, want, n) == 0) return 1;
    const uint8_t *g = got, *w = want;
    size_t i = 0;
    while (g[i] == w[i])
        ++i;
    fprintf(stderr, "  %s: first differing byte at %zu (got 0x%02x want 0x%02x)\n", what, i, g[i], w[i]);
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * Per-op runners. Each builds inputs, runs the backend (perf_reps extra times when asked) and the oracle, and
 * compares. They return 1 on agreement.
 */

typedef struct kw_perf {
    int reps;
    double seconds;
} kw_perf;

#define KW_OP_OR_FAIL(expr)                                                                                            \
    do {                                                                                                               \
        const int op_rc_ = (expr);                                                                                     \
        if (op_rc_ != 0) {                                                                                             \
            fprintf(stderr, "  op failed: %s (%s)\n", kw_status_name(op_rc_), kw_error_detail());                      \
            ok = 0;                                                                                                    \
            goto out;                                                                                                  \
        }                                                                                                              \
    } while (0)

/* Times reps runs of a statement plus one synchronize. */
#define KW_PERF(perf, b, stmt)                                                                                         \
    do {                                                                                                               \
        if ((perf)->reps > 0) {                                                                                        \
            const uint64_t t0_ = kw_time_now_ns();                                                                     \
            for (int rep_ = 0; rep_ < (perf)->reps; ++rep_)                                                            \
                (void)(stmt);                                                                                          \
            (void)kw_backend_synchronize(b);                                                                           \
            (perf)->seconds = kw_time_seconds(t0_, kw_time_now_ns()) / (perf)->reps;                                   \
        }                                                                                                              \
    } while (0)

static int kw_run_get_rows(kw_backend *b, const struct kw_case *c, kw_rng *r, kw_perf *perf) {
    const int64_t V = c->a[0], D = c->a[1], T = c->a[2];
    int ok = 1, sync_rc = 0;
    void *table = kw_random_array(r, c->dtype, V * D, 1.0f);
    int32_t *ids = kw_xmalloc((size_t)T * sizeof(int32_t));
    for (int64_t t = 0; t < T; ++t)
        ids[t] = (int32_t)(kw_rng_next(r) % (uint64_t)V);
    ids[T - 1] = (int32_t)(V - 1); /* the last row, to catch off-by-one addressing */
    float *want = kw_xmalloc((size_t)(T * D) * sizeof(float)), *got = NULL;
    kw_ref_get_rows(want, table, c->dtype, V, D, ids, T);
    kw_tensor tt = {0}, ti = {0}, to = {0};
    kw_put(b, &tt, c->dtype, 2, (int64_t[]){V, D}, table);
    kw_put(b, &ti, KW_DTYPE_I32, 1, (int64_t[]){T}, ids);
    kw_put(b, &to, KW_DTYPE_F32, 2, (int64_t[]){T, D}, NULL);
    KW_OP_OR_FAIL(kw_op_get_rows(b, &to, &tt, &ti));
    got = kw_get(b, &to, &sync_rc);
    KW_OP_OR_FAIL(sync_rc);
    /* widening bf16/f16 to f32 is exact: bit-identical rows */
    ok = kw_check_bytes("out", got, want, (size_t)(T * D) * sizeof(float));
    KW_PERF(perf, b, kw_op_get_rows(b, &to, &tt, &ti));
out:
    kw_tensor_free(&tt), kw_tensor_free(&ti), kw_tensor_free(&to);
    free(table), free(ids), free(want), free(got);
    return ok;
}

static int kw_run_matmul(kw_backend *b, const struct kw_case *c, kw_rng *r, kw_perf *perf) {
    const int64_t M = c->a[0], N = c->a[1], K = c->a[2];
    const int has_bias = c->a[3] != 0;
    const enum kw_dtype bdt = has_bias ? (enum kw_dtype)(c->a[3] - 1) : KW_DTYPE_F32;
    int ok = 1, sync_rc = 0;
    float *x = kw_random_array(r, KW_DTYPE_F32, M * K, 1.0f);
    void *w = kw_random_array(r, c->dtype, N * K, 1.0f);
    void *bias = has_bias ? kw_random_array(r, bdt, N, 1.0f) : NULL;
    float *want = kw_xmalloc((size_t)(M * N) * sizeof(float)), *mag = kw_xmalloc((size_t)(M * N) * sizeof(float));
    double *tol = kw_xmalloc((size_t)(M * N) * sizeof(double));
    float *got = NULL;
    kw_ref_matmul(want, x, w, c->dtype, bias, bdt, M, N, K);
    kw_tensor tx = {0}, tw = {0}, tb = {0}, to = {0};
    kw_put(b, &tx, KW_DTYPE_F32, 2, (int64_t[]){M, K}, x);
    kw_put(b, &tw, c->dtype, 2, (int64_t[]){N, K}, w);
    if (has_bias) kw_put(b, &tb, bdt, 1, (int64_t[]){N}, bias);
    kw_put(b, &to, KW_DTYPE_F32, 2, (int64_t[]){M, N}, NULL);
    KW_OP_OR_FAIL(kw_op_matmul(b, &to, &tx, &tw, has_bias ? &tb : NULL));
    got = kw_get(b, &to, &sync_rc);
    KW_OP_OR_FAIL(sync_rc);
    /* K products and a bias summed in fp32 in any order: |err| <= g(K + 1) sum|x w| + |b|; the oracle adds u|ref|.
     * The magnitudes come from the oracle run on |x|, |w|, |b| (inputs are exact in fp32). */
    kw_abs_array(x, KW_DTYPE_F32, M * K), kw_abs_array(w, c->dtype, N * K);
    if (bias) kw_abs_array(bias, bdt, N);
    kw_ref_matmul(mag, x, w, c->dtype, bias, bdt, M, N, K);
    for (int64_t i = 0; i < M * N; ++i)
        tol[i] = (g_n((double)K + 1) + U_F32) * mag[i] * 1.0001 + TINY;
    ok = kw_check_close("y", got, want, tol, M * N);
    KW_PERF(perf, b, kw_op_matmul(b, &to, &tx, &tw, has_bias ? &tb : NULL));
out:
    kw_tensor_free(&tx), kw_tensor_free(&tw), kw_tensor_free(&tb), kw_tensor_free(&to);
    free(x), free(w), free(bias), free(want), free(mag), free(tol), free(got);
    return ok;
}

static int kw_run_rms_norm(kw_backend *b, const struct kw_case *c, kw_rng *r, kw_perf *perf) {
    const int64_t R = c->a[0], D = c->a[1];
    const int flags = (int)c->a[2];
    const float eps = 1e-6f;
    int ok = 1, sync_rc = 0;
    float *x = kw_random_array(r, KW_DTYPE_F32, R * D, c->a[3] ? 2e-3f : 3.0f);
    void *w = kw_random_array(r, c->dtype, D, 2.0f);
    float *want = kw_xmalloc((size_t)(R * D) * sizeof(float)), *got = NULL;
    double *tol = kw_xmalloc((size_t)(R * D) * sizeof(double));
    kw_ref_rms_norm(want, x, w, c->dtype, R, D, eps, flags);
    kw_tensor tx = {0}, tw = {0}, to = {0};
    kw_put(b, &tx, KW_DTYPE_F32, 2, (int64_t[]){R, D}, x);
    kw_put(b, &tw, c->dtype, 1, (int64_t[]){D}, w);
    kw_put(b, &to, KW_DTYPE_F32, 2, (int64_t[]){R, D}, NULL);
    KW_OP_OR_FAIL(kw_op_rms_norm(b, &to, &tx, &tw, eps, flags));
    got = kw_get(b, &to, &sync_rc);
    KW_OP_OR_FAIL(sync_rc);
    /* The sum of squares has only positive terms, so its fp32 relative error is <= g(D) + u (the squares); the
     * division by D, + eps, sqrt and reciprocal add one rounding each; sqrt halves the relative error of its input.
     * Then x * inv_rms and * w round once each, and the oracle once more: relative to |ref|,
     * (g(D) + 2u) / 2 + 3u + 3u, written as ((D + 2) / 2 + 7) u with a 1% margin for second-order terms. */
    for (int64_t i = 0; i < R * D; ++i)
        tol[i] = (((double)D + 2) / 2 + 7) * U_F32 * fabs(want[i]) * 1.01 + TINY;
    ok = kw_check_close("y", got, want, tol, R * D);
    /* in place: out == x must give the same values */
    KW_OP_OR_FAIL(kw_op_rms_norm(b, &tx, &tx, &tw, eps, flags));
    free(got);
    got = kw_get(b, &tx, &sync_rc);
    KW_OP_OR_FAIL(sync_rc);
    ok = ok && kw_check_close("y in place", got, want, tol, R * D);
    KW_PERF(perf, b, kw_op_rms_norm(b, &to, &tx, &tw, eps, flags));
out:
    kw_tensor_free(&tx), kw_tensor_free(&tw), kw_tensor_free(&to);
    free(x), free(w), free(want), free(tol), free(got);
    return ok;
}

static int kw_run_rope(kw_backend *b, const struct kw_case *c, kw_rng *r, kw_perf *perf) {
    const int64_t T = c->a[0], H = c->a[1], D = c->a[2], half = c->a[3] / 2;
    const kw_rope_params params = {
        .theta = c->a[4] == KW_ROPE_SCALING_LLAMA3 ? 500000.0 : 1000000.0,
        .rotary_dim = (int32_t)c->a[3],
        .scaling = (enum kw_rope_scaling)c->a[4],
        .factor = c->a[4] == KW_ROPE_SCALING_LLAMA3 ? 32.0 : 4.0,
        .low_freq_factor = 1.0,
        .high_freq_factor = 4.0,
        .original_max_position = 8192.0,
    };
    int ok = 1, sync_rc = 0;
    float *x = kw_random_array(r, KW_DTYPE_F32, T * H * D, 2.0f);
    int32_t *pos = kw_xmalloc((size_t)T * sizeof(int32_t));
    for (int64_t t = 0; t < T; ++t)
        pos[t] = (int32_t)(c->a[5] + t * (t % 3 == 2 ? 5 : 1)); /* not only p0 + t */
    float *want = kw_xmalloc((size_t)(T * H * D) * sizeof(float)), *got = NULL;
    double *tol = kw_xmalloc((size_t)(T * H * D) * sizeof(double));
    memcpy(want, x, (size_t)(T * H * D) * sizeof(float));
    kw_ref_rope(want, pos, T, H, D, &params);
    kw_tensor tx = {0}, tp = {0};
    kw_put(b, &tx, KW_DTYPE_F32, 3, (int64_t[]){T, H, D}, x);
    kw_put(b, &tp, KW_DTYPE_I32, 1, (int64_t[]){T}, pos);
    KW_OP_OR_FAIL(kw_op_rope(b, &tx, &tp, &params));
    got = kw_get(b, &tx, &sync_rc);
    KW_OP_OR_FAIL(sync_rc);
    /* x' = x_i cos - x_j sin: the angle is the same fp32 product on both sides; cos and sin may each be 2 ulp (4u)
     * off (the oracle's are correctly rounded), and the two products round once each (or fuse):
     * |err| <= (4 + 1) u (|x_i| + |x_j|) + 2u |x'| (the sum's rounding on each side). Dims past rotary_dim must come
     * back unchanged. */
    for (int64_t row = 0; row < T * H; ++row) {
        for (int64_t d = 0; d < D; ++d) {
            const int64_t i = row * D + d;
            if (d >= 2 * half) {
                tol[i] = 0.0;
                continue;
            }
            const int64_t pair = d < half ? i + half : i - half;
            tol[i] = (5.0 * (fabs(x[i]) + fabs(x[pair])) + 2.0 * fabs(want[i])) * U_F32 * 1.01 + TINY;
        }
    }
    ok = kw_check_close("x", got, want, tol, T * H * D);
    KW_PERF(perf, b, kw_op_rope(b, &tx, &tp, &params));
out:
    kw_tensor_free(&tx), kw_tensor_free(&tp);
    free(x), free(pos), free(want), free(tol), free(got);
    return ok;
}

static int kw_run_attention(kw_backend *b, const struct kw_case *c, kw_rng *r, kw_perf *perf) {
    const int64_t T = c->a[0], Hq = c->a[1], Hkv = c->a[2], D = c->a[3], cap = c->a[4];
    kw_attention_params params = {
        .q_pos0 = c->a[5],
        .n_kv = c->a[5] + T + c->a[6],
        .scale = 1.0f / sqrtf((float)D),
        .sliding_window = c->a[7],
        .kv_mask = NULL,
    };
    const int mask_mode = (int)c->a[8];
    int ok = 1, sync_rc = 0;
    float *q = kw_random_array(r, KW_DTYPE_F32, T * Hq * D, 2.0f);
    void *k = kw_random_array(r, c->dtype, Hkv * cap * D, 2.0f);
    void *v = kw_random_array(r, c->dtype, Hkv * cap * D, 1.0f);
    uint8_t *mask = NULL;
    if (mask_mode) {
        mask = kw_xmalloc((size_t)cap);
        for (int64_t j = 0; j < cap; ++j)
            mask[j] = mask_mode == 1 ? (kw_rng_next(r) % 4 != 0) : 1;
        if (mask_mode == 2) /* the first query sees nothing: every row up to its position is padding */
            for (int64_t j = 0; j <= params.q_pos0; ++j)
                mask[j] = 0;
    }
    const int64_t n = T * Hq * D;
    float *want = kw_xmalloc((size_t)n * sizeof(float)), *amag = kw_xmalloc((size_t)n * sizeof(float)), *got = NULL;
    double *tol = kw_xmalloc((size_t)n * sizeof(double));
    kw_ref_attention(want, q, k, v, c->dtype, mask, T, Hq, Hkv, cap, D, &params);
    kw_tensor tq = {0}, tk = {0}, tv = {0}, to = {0}, tm = {0};
    kw_put(b, &tq, KW_DTYPE_F32, 3, (int64_t[]){T, Hq, D}, q);
    kw_put(b, &tk, c->dtype, 3, (int64_t[]){Hkv, cap, D}, k);
    kw_put(b, &tv, c->dtype, 3, (int64_t[]){Hkv, cap, D}, v);
    kw_put(b, &to, KW_DTYPE_F32, 3, (int64_t[]){T, Hq, D}, NULL);
    if (mask) {
        kw_put(b, &tm, KW_DTYPE_U8, 1, (int64_t[]){cap}, mask);
        params.kv_mask = &tm;
    }
    KW_OP_OR_FAIL(kw_op_attention(b, &to, &tq, &tk, &tv, &params));
    got = kw_get(b, &to, &sync_rc);
    KW_OP_OR_FAIL(sync_rc);
    /* Let S = |scale| max_j sum_d |q_d k_jd| over all cache rows. Each fp32 score is within E = g(D + 1) S of the
     * exact one and every |score - max| is <= L = 2 S. Shifting all scores by one constant does not change the
     * softmax, so each exp(s_j - m) carries a relative error <= 2E (scores) + u L (the subtraction) + LIB_REL u
     * (exp). The numerator sum_j e_j v_jd and the denominator sum_j e_j then each have relative error (to sums of
     * absolute values) <= that + g(n_kv), and the final division adds u, the oracle u:
     * |err| <= (2 (2E + 2uS + 2u + g(n_kv)) + 2u) A_d, A_d = sum_j p_j |v_jd| (the oracle run on |v|), +10%
     * for second-order terms. */
    kw_abs_array(v, c->dtype, Hkv * cap * D);
    kw_ref_attention(amag, q, k, v, c->dtype, mask, T, Hq, Hkv, cap, D, &params);
    for (int64_t t = 0; t < T; ++t) {
        for (int64_t h = 0; h < Hq; ++h) {
            const int64_t kvh = h / (Hq / Hkv);
            double S = 0.0;
            for (int64_t j = 0; j < cap; ++j) {
                double s = 0.0;
                for (int64_t d = 0; d < D; ++d)
                    s += fabs((double)q[(t * Hq + h) * D + d] * kw_ref_load(k, c->dtype, (kvh * cap + j) * D + d));
                S = s > S ? s : S;
            }
            S *= fabs((double)params.scale);
            const double E = g_n((double)D + 1) * S;
            const double rel =
                2.0 * (2.0 * E + 2.0 * U_F32 * S + LIB_REL * U_F32 + g_n((double)params.n_kv)) + 2.0 * U_F32;
            for (int64_t d = 0; d < D; ++d) {
                const int64_t i = (t * Hq + h) * D + d;
                tol[i] = rel * amag[i] * 1.1 + TINY;
            }
        }
    }
    ok = kw_check_close("out", got, want, tol, n);
    if (mask_mode == 2) /* the query with nothing visible must be exactly zero */
        for (int64_t i = 0; i < Hq * D; ++i)
            if (got[i] != 0.0f || want[i] != 0.0f) {
                fprintf(stderr, "  out[%lld] of the fully masked query is %g, not 0\n", (long long)i, got[i]);
                ok = 0;
                break;
            }
    KW_PERF(perf, b, kw_op_attention(b, &to, &tq, &tk, &tv, &params));
out:
    kw_tensor_free(&tq), kw_tensor_free(&tk), kw_tensor_free(&tv), kw_tensor_free(&to), kw_tensor_free(&tm);
    free(q), free(k), free(v), free(mask), free(want), free(amag), free(tol), free(got);
    return ok;
}

static int kw_run_kv(kw_backend *b, const struct kw_case *c, kw_rng *r, kw_perf *perf) {
    const int64_t T = c->a[0], H = c->a[1], D = c->a[2], cap = c->a[3], pos0 = c->a[4];
    const size_t cache_bytes = (size_t)(H * cap * D) * kw_dtype_size(c->dtype);
    int ok = 1, sync_rc = 0;
    float *rows = kw_random_array(r, KW_DTYPE_F32, T * H * D, 4.0f);
    /* rounding ties and specials in the first head row: RNE must pick the even neighbour, NaN stays NaN, tiny
     * values are not flushed */
    const float specials[] = {
        1.0f + 1.0f / 256.0f, 1.0078125f + 1.0f / 256.0f, -0.0f, NAN, INFINITY, 1e-40f, -3.0e38f, 65504.0f};
    for (size_t i = 0; i < sizeof specials / sizeof specials[0] && (int64_t)i < D; ++i)
        rows[i] = specials[i];
    void *cache = kw_random_array(r, c->dtype, H * cap * D, 1.0f);
    void *want_cache = kw_xmalloc(cache_bytes), *got_cache = NULL;
    float *want_rows = kw_xmalloc((size_t)(T * H * D) * sizeof(float)), *got_rows = NULL;
    memcpy(want_cache, cache, cache_bytes);
    kw_tensor tc = {0}, tr = {0};
    kw_put(b, &tc, c->dtype, 3, (int64_t[]){H, cap, D}, cache);
    kw_put(b, &tr, KW_DTYPE_F32, 3, (int64_t[]){T, H, D}, rows);
    if (c->op == KW_OP_KV_STORE) {
        kw_ref_kv_store(want_cache, c->dtype, rows, T, H, cap, D, pos0);
        KW_OP_OR_FAIL(kw_op_kv_store(b, &tc, &tr, pos0));
        got_cache = kw_get(b, &tc, &sync_rc);
        KW_OP_OR_FAIL(sync_rc);
        /* same round-to-nearest-even on both sides; rows outside [pos0, pos0 + T) untouched: whole cache equal */
        ok = kw_check_bytes("cache", got_cache, want_cache, cache_bytes);
        KW_PERF(perf, b, kw_op_kv_store(b, &tc, &tr, pos0));
    } else {
        kw_ref_kv_load(want_rows, cache, c->dtype, T, H, cap, D, pos0);
        KW_OP_OR_FAIL(kw_op_kv_load(b, &tr, &tc, pos0));
        got_rows = kw_get(b, &tr, &sync_rc);
        KW_OP_OR_FAIL(sync_rc);
        ok = kw_check_bytes("rows", got_rows, want_rows, (size_t)(T * H * D) * sizeof(float));
        KW_PERF(perf, b, kw_op_kv_load(b, &tr, &tc, pos0));
    }
out:
    kw_tensor_free(&tc), kw_tensor_free(&tr);
    free(rows), free(cache), free(want_cache), free(got_cache), free(want_rows), free(got_rows);
    return ok;
}

/* Error bound of a backend's fp32 activation relative to the oracle's correctly rounded one (see kw_ref_act).
 * silu/sigmoid: exp (4u), 1 + e (u), the division (u), the oracle (u): 7u |ref|.
 * gelu erf: the argument x/sqrt2 (u, and |erf'(z) z| <= 0.43), erf (4u of a value <= 1), 1 + erf (u, absolute),
 * the two products and the oracle (3u |ref|): 0.5 |x| (0.43u + 4u + u) + 3u |ref| <= 2.75u |x| + 3u |ref|.
 * gelu tanh: the inner polynomial (4 roundings, |tanh'(z) z| <= 0.45), tanh (4u), 1 + tanh, two products:
 * 0.5 |x| (4 * 0.45u + 4u + u) + 3u |ref| <= 3.4u |x| + 3u |ref|. tanh: the library's tanhf (4u) and the oracle
 * (u): 5u |ref|. Identity is exact. Doubled for margin. */
static double kw_act_tol(float x, float ref, enum kw_act act) {
    switch (act) {
    case KW_ACT_SILU:
    case KW_ACT_SIGMOID:
        return 2.0 * 7.0 * U_F32 * fabs(ref) + TINY;
    case KW_ACT_GELU_ERF:
        return 2.0 * (2.75 * fabs(x) + 3.0 * fabs(ref)) * U_F32 + TINY;
    case KW_ACT_GELU_TANH:
        return 2.0 * (3.4 * fabs(x) + 3.0 * fabs(ref)) * U_F32 + TINY;
    case KW_ACT_IDENTITY:
        return 0.0;
    case KW_ACT_TANH:
        return 2.0 * 5.0 * U_F32 * fabs(ref) + TINY;
    }
    return 0.0;
}

static int kw_run_elementwise(kw_backend *b, const struct kw_case *c, kw_rng *r, kw_perf *perf) {
    const int64_t n = c->op == KW_OP_GLU || c->op == KW_OP_UNARY ? c->a[0] : c->a[0] * c->a[1];
    const enum kw_act act = (enum kw_act)c->a[1];
    int ok = 1, sync_rc = 0;
    float *x = kw_random_array(r, KW_DTYPE_F32, n, 8.0f);
    float *y = kw_random_array(r, KW_DTYPE_F32, n, 3.0f);
    /* the activation's awkward spots: zero, signed zero, large magnitudes, exp overflow (x < -88.7) */
    const float specials[] = {0.0f, -0.0f, -10.0f, 10.0f, -30.0f, 30.0f, -100.0f, 100.0f, 1e-30f, -5.5f};
    if (c->op == KW_OP_GLU || c->op == KW_OP_UNARY)
        for (size_t i = 0; i < sizeof specials / sizeof specials[0] && (int64_t)i < n; ++i)
            x[i] = specials[i];
    const float s = 0.7071067811865476f;
    float *want = kw_xmalloc((size_t)n * sizeof(float)), *got = NULL;
    double *tol = kw_xmalloc((size_t)n * sizeof(double));
    const int64_t R = c->a[0], N = c->a[1];
    kw_tensor tx = {0}, ty = {0}, to = {0};
    const int64_t ne2[2] = {c->op == KW_OP_GLU || c->op == KW_OP_UNARY ? 1 : R,
                            c->op == KW_OP_GLU || c->op == KW_OP_UNARY ? n : N};
    kw_put(b, &tx, KW_DTYPE_F32, 2, ne2, x);
    kw_put(b, &ty, KW_DTYPE_F32, 2, ne2, y);
    kw_put(b, &to, KW_DTYPE_F32, 2, ne2, NULL);
    switch (c->op) {
    case KW_OP_GLU:
        kw_ref_glu(want, x, y, n, act);
        KW_OP_OR_FAIL(kw_op_glu(b, &to, &tx, &ty, act));
        /* the activation's bound times |up|, plus the product's rounding */
        for (int64_t i = 0; i < n; ++i)
            tol[i] = kw_act_tol(x[i], kw_ref_act(x[i], act), act) * fabs(y[i]) * 1.01 + U_F32 * fabs(want[i]) + TINY;
        break;
    case KW_OP_UNARY:
        kw_ref_unary(want, x, n, act);
        KW_OP_OR_FAIL(kw_op_unary(b, &to, &tx, act));
        for (int64_t i = 0; i < n; ++i)
            tol[i] = kw_act_tol(x[i], want[i], act);
        break;
    case KW_OP_ADD:
        kw_ref_add(want, x, y, n);
        KW_OP_OR_FAIL(kw_op_add(b, &to, &tx, &ty));
        memset(tol, 0, (size_t)n * sizeof(double)); /* one correctly rounded fp32 op: exact */
        break;
    case KW_OP_SCALE:
        kw_ref_scale(want, x, n, s);
        KW_OP_OR_FAIL(kw_op_scale(b, &to, &tx, s));
        memset(tol, 0, (size_t)n * sizeof(double));
        break;
    case KW_OP_SOFTMAX:
        kw_ref_softmax(want, x, R, N);
        KW_OP_OR_FAIL(kw_op_softmax(b, &to, &tx));
        /* per row, L = max |x - max| <= 16 (inputs in [-8, 8)): each exp has relative error <= uL + LIB_REL u (the
         * subtraction, exp), the sum that + g(N), the normalization 2u (reciprocal and product), the oracle u */
        for (int64_t i = 0; i < n; ++i)
            tol[i] =
                (2.0 * (16.0 * U_F32 + LIB_REL * U_F32) + g_n((double)N) + 3.0 * U_F32) * fabs(want[i]) * 1.01 + TINY;
        break;
    default:
        ok = 0;
        goto out;
    }
    got = kw_get(b, &to, &sync_rc);
    KW_OP_OR_FAIL(sync_rc);
    ok = kw_check_close("out", got, want, tol, n);
    if (ok && c->op != KW_OP_GLU) { /* in place (out == x) gives the same */
        if (c->op == KW_OP_UNARY) KW_OP_OR_FAIL(kw_op_unary(b, &tx, &tx, act));
        if (c->op == KW_OP_ADD) KW_OP_OR_FAIL(kw_op_add(b, &tx, &tx, &ty));
        if (c->op == KW_OP_SCALE) KW_OP_OR_FAIL(kw_op_scale(b, &tx, &tx, s));
        if (c->op == KW_OP_SOFTMAX) KW_OP_OR_FAIL(kw_op_softmax(b, &tx, &tx));
        free(got);
        got = kw_get(b, &tx, &sync_rc);
        KW_OP_OR_FAIL(sync_rc);
        ok = kw_check_close("out in place", got, want, tol, n);
    }
    switch (c->op) {
    case KW_OP_GLU:
        KW_PERF(perf, b, kw_op_glu(b, &to, &tx, &ty, act));
        break;
    case KW_OP_UNARY:
        KW_PERF(perf, b, kw_op_unary(b, &to, &tx, act));
        break;
    case KW_OP_ADD:
        KW_PERF(perf, b, kw_op_add(b, &to, &tx, &ty));
        break;
    case KW_OP_SCALE:
        KW_PERF(perf, b, kw_op_scale(b, &to, &tx, s));
        break;
    default:
        KW_PERF(perf, b, kw_op_softmax(b, &to, &tx));
        break;
    }
out:
    kw_tensor_free(&tx), kw_tensor_free(&ty), kw_tensor_free(&to);
    free(x), free(y), free(want), free(tol), free(got);
    return ok;
}

static int kw_run_argmax(kw_backend *b, const struct kw_case *c, kw_rng *r, kw_perf *perf) {
    const int64_t R = c->a[0], N = c->a[1], data = c->a[3];
    const int flags = (int)c->a[2];
    int ok = 1, sync_rc = 0;
    float *x = kw_random_array(r, KW_DTYPE_F32, R * N, 10.0f);
    for (int64_t row = 0; row < R; ++row) {
        float *xr = x + row * N;
        if (data == 1) { /* exact ties: the maximum appears at several places, the first one must win */
            const float m = 20.0f + (float)row;
            for (int64_t k = 0; k < 3; ++k)
                xr[(row * 7 + k * 11 + 5) % N] = m;
        } else if (data == 2) { /* NaN never wins; +Inf wins; all-NaN row gives 0; -Inf rows tie at index 0 */
            for (int64_t i = 0; i < N; i += 3)
                xr[i] = NAN;
            if (row == 0) xr[16] = 1e6f; /* after the NaN at 0 in the CPU's lane 0 */
            if (row == 1) xr[N - 1] = INFINITY;
            if (row == 2)
                for (int64_t i = 0; i < N; ++i)
                    xr[i] = NAN;
            if (row == 3)
                for (int64_t i = 0; i < N; ++i)
                    xr[i] = -INFINITY;
            if (row == 4) xr[N / 2] = 1e30f, xr[N / 2 + 1] = NAN;
        } else if (data == 3) { /* values equal after bf16 rounding but not before: the flag decides */
            xr[row + 2] = 100.0f;
            xr[row + 9] = 100.25f; /* bf16 spacing at 100 is 0.5: rounds to 100 */
        } else if (data == 4) {    /* N % 16 != 0: ties between the CPU's 16 lanes and its tail, -0 / +0, overflow */
            if (row < 2) xr[3 + row] = 50.0f, xr[N - 1 - row] = 50.0f; /* the lane's index wins */
            if (row == 2) {
                for (int64_t i = 0; i < N; ++i)
                    xr[i] = -1.0f;
                xr[5] = -0.0f, xr[N - 2] = 0.0f; /* equal: the first wins */
            }
            if (row == 3) xr[2] = FLT_MAX, xr[9] = INFINITY; /* FLT_MAX rounds to +Inf in bf16: then 2 wins */
        }
    }
    int32_t *want = kw_xmalloc((size_t)R * sizeof(int32_t)), *got = NULL;
    kw_ref_argmax(want, x, R, N, flags);
    kw_tensor tx = {0}, to = {0};
    kw_put(b, &tx, KW_DTYPE_F32, 2, (int64_t[]){R, N}, x);
    kw_put(b, &to, KW_DTYPE_I32, 1, (int64_t[]){R}, NULL);
    KW_OP_OR_FAIL(kw_op_argmax(b, &to, &tx, flags));
    got = kw_get(b, &to, &sync_rc);
    KW_OP_OR_FAIL(sync_rc);
    ok = kw_check_bytes("index", got, want, (size_t)R * sizeof(int32_t));
    /* the oracle itself on the hand-made rows: the expected indices written out */
    if (data == 3) {
        for (int64_t row = 0; row < R; ++row) {
            const int32_t expect = (int32_t)(flags & KW_ARGMAX_ROUND_BF16 ? row + 2 : row + 9);
            if (want[row] != expect) {
                fprintf(stderr, "  oracle row %lld: %d, expected %d\n", (long long)row, want[row], expect);
                ok = 0;
            }
        }
    }
    if (data == 4 && (want[0] != 3 || want[1] != 4 || want[2] != 5 || want[3] != (flags ? 2 : 9))) {
        fprintf(stderr, "  oracle lane/tail rows gave %d %d %d %d\n", want[0], want[1], want[2], want[3]);
        ok = 0;
    }
    if (data == 2 && (want[0] != 16 || want[1] != N - 1 || want[2] != 0 || want[3] != 0 || want[4] != N / 2)) {
        fprintf(stderr, "  oracle NaN/Inf rows gave %d %d %d %d %d\n", want[0], want[1], want[2], want[3], want[4]);
        ok = 0;
    }
    KW_PERF(perf, b, kw_op_argmax(b, &to, &tx, flags));
out:
    kw_tensor_free(&tx), kw_tensor_free(&to);
    free(x), free(want), free(got);
    return ok;
}

static int kw_run_copy(kw_backend *b, const struct kw_case *c, kw_rng *r, kw_perf *perf) {
    const int64_t n = c->a[0];
    const enum kw_dtype sdt = (enum kw_dtype)c->a[1];
    int ok = 1, sync_rc = 0;
    void *src;
    if (sdt == KW_DTYPE_I32) {
        src = kw_xmalloc((size_t)n * 4);
        for (int64_t i = 0; i < n; ++i)
            ((int32_t *)src)[i] = (int32_t)kw_rng_next(r);
    } else {
        src = kw_random_array(r, sdt, n, 70000.0f); /* beyond f16's range: overflow to Inf must round the same */
        const float specials[] = {NAN,   -INFINITY, 1e-40f,   -6e-8f,  1.0f + 1.0f / 2048.0f,
                                  3e-5f, -0.0f,     65519.0f, 65520.0f};
        for (size_t i = 0; i < sizeof specials / sizeof specials[0] && (int64_t)i < n; ++i)
            kw_ref_store(src, sdt, (int64_t)i, specials[i]);
        for (int64_t i = 20; i < n && i < 60; ++i) /* small magnitudes: subnormal f16 results */
            kw_ref_store(src, sdt, i, kw_ref_load(src, sdt, i) * 1e-9f);
    }
    const size_t dbytes = (size_t)n * kw_dtype_size(c->dtype);
    void *want = kw_xmalloc(dbytes), *got = NULL;
    kw_ref_copy(want, c->dtype, src, sdt, n);
    kw_tensor ts = {0}, td = {0};
    kw_put(b, &ts, sdt, 1, (int64_t[]){n}, src);
    kw_put(b, &td, c->dtype, 1, (int64_t[]){n}, NULL);
    KW_OP_OR_FAIL(kw_op_copy(b, &td, &ts));
    got = kw_get(b, &td, &sync_rc);
    KW_OP_OR_FAIL(sync_rc);
    /* round to nearest even on both sides, the same NaN rule: bit-identical */
    ok = kw_check_bytes("dst", got, want, dbytes);
    KW_PERF(perf, b, kw_op_copy(b, &td, &ts));
out:
    kw_tensor_free(&ts), kw_tensor_free(&td);
    free(src), free(want), free(got);
    return ok;
}

/* The C2C combine: defined by torch's fp32 rounding steps, which oracle and backends both perform one by one, so the
 * comparison is bit-exact. g = 1 (an open gate) or 0 (closed: out must equal base exactly, Inf-free inputs). */
static int kw_run_head_scale_add(kw_backend *b, const struct kw_case *c, kw_rng *r, kw_perf *perf) {
    const int64_t T = c->a[0], H = c->a[1], D = c->a[2], inplace = c->a[4];
    const float g = (float)c->a[3];
    int ok = 1, sync_rc = 0;
    float *base = kw_random_array(r, KW_DTYPE_F32, T * H * D, 4.0f);
    float *x = kw_random_array(r, KW_DTYPE_F32, T * H * D, 4.0f);
    float *w = kw_random_array(r, KW_DTYPE_F32, T * H, 1.0f);
    float *want = kw_xmalloc((size_t)(T * H * D) * sizeof(float)), *got = NULL;
    kw_ref_head_scale_add(want, base, x, w, g, T, H, D);
    if (g == 0.0f && memcmp(want, base, (size_t)(T * H * D) * sizeof(float)) != 0) {
        fprintf(stderr, "  oracle: a closed gate changed base\n");
        ok = 0;
    }
    kw_tensor tb = {0}, tx = {0}, tw = {0}, to = {0};
    const int64_t ne[3] = {T, H, D};
    kw_put(b, &tb, KW_DTYPE_F32, 3, ne, base);
    kw_put(b, &tx, KW_DTYPE_F32, 3, ne, x);
    kw_put(b, &tw, KW_DTYPE_F32, 2, (int64_t[]){T, H}, w);
    kw_put(b, &to, KW_DTYPE_F32, 3, ne, NULL);
    kw_tensor *dst = inplace == 1 ? &tb : inplace == 2 ? &tx : &to;
    KW_OP_OR_FAIL(kw_op_head_scale_add(b, dst, &tb, &tx, &tw, g));
    got = kw_get(b, dst, &sync_rc);
    KW_OP_OR_FAIL(sync_rc);
    ok = kw_check_bytes("out", got, want, (size_t)(T * H * D) * sizeof(float)) && ok;
    KW_PERF(perf, b, kw_op_head_scale_add(b, &to, &tb, &tx, &tw, g));
out:
    kw_tensor_free(&tb), kw_tensor_free(&tx), kw_tensor_free(&tw), kw_tensor_free(&to);
    free(base), free(x), free(w), free(want), free(got);
    return ok;
}

int kw_case_bad_ids(kw_backend *b) {
    const float table[3 * 2] = {1, 2, 3, 4, 5, 6};
    const int32_t ids1[4] = {2, 3, -1, 0}, ids2[2] = {7, 0}; /* first bad row: 1 (id 3) of the first call */
    float out1[4 * 2], out2[2 * 2];
    memset(out1, 0x55, sizeof out1);
    memset(out2, 0x55, sizeof out2);
    int ok = 1, rc;
    kw_tensor tt = {0}, ti1 = {0}, ti2 = {0}, to1 = {0}, to2 = {0};
    kw_put(b, &tt, KW_DTYPE_F32, 2, (int64_t[]){3, 2}, table);
    kw_put(b, &ti1, KW_DTYPE_I32, 1, (int64_t[]){4}, ids1);
    kw_put(b, &ti2, KW_DTYPE_I32, 1, (int64_t[]){2}, ids2);
    kw_put(b, &to1, KW_DTYPE_F32, 2, (int64_t[]){4, 2}, NULL);
    kw_put(b, &to2, KW_DTYPE_F32, 2, (int64_t[]){2, 2}, NULL);
    KW_OP_OR_FAIL(kw_op_get_rows(b, &to1, &tt, &ti1)); /* enqueued fine: the ids are only read on the backend */
    KW_OP_OR_FAIL(kw_op_get_rows(b, &to2, &tt, &ti2));
    KW_OP_OR_FAIL(kw_backend_download(b, out1, &to1, 0, sizeof out1));
    KW_OP_OR_FAIL(kw_backend_download(b, out2, &to2, 0, sizeof out2));
    rc = kw_backend_synchronize(b);
    if (rc != KW_E_TOKEN_ID || strcmp(kw_error_detail(), "get_rows: id 3 at row 1 is outside [0, 3)") != 0) {
        fprintf(stderr, "  bad ids: synchronize gave %s (%s)\n", kw_status_name(rc), kw_error_detail());
        ok = 0;
    }
    const float want1[8] = {5, 6, 0, 0, 0, 0, 1, 2}, want2[4] = {0, 0, 1, 2};
    ok = kw_check_bytes("rows of the first call", out1, want1, sizeof want1) && ok;
    ok = kw_check_bytes("rows of the second call", out2, want2, sizeof want2) && ok;
    KW_OP_OR_FAIL(kw_backend_synchronize(b));          /* reported once */
    KW_OP_OR_FAIL(kw_op_get_rows(b, &to2, &tt, &ti2)); /* a later bad call is reported on its own */
    rc = kw_backend_synchronize(b);
    if (rc != KW_E_TOKEN_ID || strcmp(kw_error_detail(), "get_rows: id 7 at row 0 is outside [0, 3)") != 0) {
        fprintf(stderr, "  bad ids, second round: synchronize gave %s (%s)\n", kw_status_name(rc), kw_error_detail());
        ok = 0;
    }
out:
    kw_tensor_free(&tt), kw_tensor_free(&ti1), kw_tensor_free(&ti2), kw_tensor_free(&to1), kw_tensor_free(&to2);
    return ok;
}

enum kw_case_result kw_case_run(kw_backend *backend, const struct kw_case *c, int perf_reps, double *perf_seconds) {
    enum kw_dtype probe = c->dtype;
    if (c->op == KW_OP_MATMUL && c->a[3] && !kw_backend_supports(backend, c->op, (enum kw_dtype)(c->a[3] - 1)))
        return KW_CASE_UNSUPPORTED;
    if (c->op == KW_OP_COPY && !kw_backend_supports(backend, c->op, (enum kw_dtype)c->a[1])) return KW_CASE_UNSUPPORTED;
    if (!kw_backend_supports(backend, c->op, probe)) return KW_CASE_UNSUPPORTED;
    kw_rng r = {0x9E3779B97F4A7C15ULL ^ ((uint64_t)c->seed * 0xD1B54A32D192ED03ULL)};
    kw_perf perf = {perf_reps, 0.0};
    int ok = 0;
    switch (c->op) {
    case KW_OP_GET_ROWS:
        ok = kw_run_get_rows(backend, c, &r, &perf);
        break;
    case KW_OP_MATMUL:
        ok = kw_run_matmul(backend, c, &r, &perf);
        break;
    case KW_OP_RMS_NORM:
        ok = kw_run_rms_norm(backend, c, &r, &perf);
        break;
    case KW_OP_ROPE:
        ok = kw_run_rope(backend, c, &r, &perf);
        break;
    case KW_OP_ATTENTION:
        ok = kw_run_attention(backend, c, &r, &perf);
        break;
    case KW_OP_KV_STORE:
    case KW_OP_KV_LOAD:
        ok = kw_run_kv(backend, c, &r, &perf);
        break;
    case KW_OP_GLU:
    case KW_OP_UNARY:
    case KW_OP_ADD:
    case KW_OP_SCALE:
    case KW_OP_SOFTMAX:
        ok = kw_run_elementwise(backend, c, &r, &perf);
        break;
    case KW_OP_ARGMAX:
        ok = kw_run_argmax(backend, c, &r, &perf);
        break;
    case KW_OP_COPY:
        ok = kw_run_copy(backend, c, &r, &perf);
        break;
    case KW_OP_HEAD_SCALE_ADD:
        ok = kw_run_head_scale_add(backend, c, &r, &perf);
        break;
    case KW_OP_COUNT:
        break;
    }
    if (perf_seconds) *perf_seconds = perf.seconds;
    return ok ? KW_CASE_PASS : KW_CASE_FAIL;
}
