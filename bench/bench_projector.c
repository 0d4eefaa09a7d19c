/* bench_projector.c: `kvwire bench projector`: C2C projector throughput on the real fuser dimensions.
 *
 * The fuser of the Qwen3-0.6B receiver x Qwen2.5-0.5B sharer pair (c2c_spec.md §2): 28 projectors, hidden and
 * intermediate 1024, num_layers 3, source 2 heads x 64, target 8 heads x 128, bf16 weights (random, deterministic:
 * this measures speed, not a trained fuser), both gates open. One pass projects T positions through all 28 layers,
 * key and value branches, which is what fusing a T-token prompt section costs; reported as fused tokens/s and as the
 * GFLOP/s of its GEMMs (2 x multiply-adds of every Linear, the elementwise work not counted).
 *
 * Baseline, measured in the same run on the same backend and threads: kw_op_matmul alone on the projector's dominant
 * GEMM shape, x (T, 1024) f32 times W (1024, 1024) bf16, cycling through 16 distinct weights so they do not stay in
 * cache more than the projector's do. The ratio projector GFLOP/s / matmul GFLOP/s says how much of the kernels' GEMM
 * speed survives the projector's small ops (RMSNorm, GELU, sigmoid, bf16 rounding copies, the combine).
 *
 * Options: --tokens N (default 128 and 512), --threads N (default 2), --layers N (default 28), --reps N (default 3),
 * --numerics bf16|fp32|both (default both), --quick (T = 64, 4 layers, 1 rep, where --tokens, --layers, --reps are
 * not given).
 */
#include "kw_benches.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "c2c/kw_fuser_load.h"
#include "c2c/kw_projector.h"
#include "common/kw_half.h"
#include "common/kw_status.h"
#include "common/kw_time.h"
#include "kernels/kw_backend.h"
#include "tools/kw_cli.h"

const char kw_bench_projector_summary[] = "C2C projector: fused tokens/s on the real fuser dims vs the matmul peak";

/* ------------------------------------------------------------------------------------------------------------
 * Random weights for one projector, found by name
 */

typedef struct kw_bp_tensor {
    char name[64];
    int32_t ndim;
    int64_t shape[2];
    uint16_t *data; /* bf16, owned */
} kw_bp_tensor;

typedef struct kw_bp_layer {
    kw_bp_tensor *t;
    size_t n;
} kw_bp_layer;

static uint64_t kw_bp_rng(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1DULL;
}

/* uniform in [-a, a) */
static float kw_bp_uniform(uint64_t *s, float a) {
    return (float)(((double)(kw_bp_rng(s) >> 11) * 0x1.0p-53 * 2.0 - 1.0) * a);
}

static void kw_bp_layer_free(kw_bp_layer *l) {
    for (size_t i = 0; l->t && i < l->n; ++i)
        free(l->t[i].data);
    free(l->t);
    memset(l, 0, sizeof *l);
}

/* nn.Linear-like scales: weights U(-1/sqrt(in), 1/sqrt(in)), biases small, norm weights around 1, gates open. */
static int kw_bp_layer_make(const kw_fuser_dims *d, uint64_t seed, kw_bp_layer *l) {
    l->n = kw_fuser_tensor_count(d);
    l->t = calloc(l->n, sizeof *l->t);
    KW_RETURN_IF(l->t == NULL, KW_E_NOMEM, "bench projector: out of memory");
    uint64_t s = seed * 0x9E3779B97F4A7C15ULL + 1;
    for (size_t i = 0; i < l->n; ++i) {
        kw_bp_tensor *t = &l->t[i];
        KW_FORWARD(kw_fuser_tensor_spec(d, i, t->name, sizeof t->name, &t->ndim, t->shape));
        int64_t n = 1;
        for (int32_t k = 0; k < t->ndim; ++k)
            n *= t->shape[k];
        t->data = malloc((size_t)n * sizeof *t->data);
        KW_RETURN_IF(t->data == NULL, KW_E_NOMEM, "bench projector: out of memory");
        const int is_gate = t->ndim == 0, is_norm = strstr(t->name, "norm.weight") != NULL;
        const float a = t->ndim == 2 ? 1.0f / sqrtf((float)t->shape[1]) : 0.1f;
        for (int64_t k = 0; k < n; ++k) {
            const float v = is_gate ? 1.0f : is_norm ? 1.0f + kw_bp_uniform(&s, 0.5f) : kw_bp_uniform(&s, a);
            t->data[k] = kw_f32_to_bf16(v);
        }
    }
    return 0;
}

static int kw_bp_find(void *user, const char *name, kw_projector_tensor *out) {
    const kw_bp_layer *l = user;
    for (size_t i = 0; i < l->n; ++i) {
        if (strcmp(l->t[i].name, name) != 0) continue;
        memset(out, 0, sizeof *out);
        out->dtype = KW_DTYPE_BF16;
        out->ndim = l->t[i].ndim;
        out->shape[0] = l->t[i].shape[0];
        out->shape[1] = l->t[i].shape[1];
        out->data = l->t[i].data;
        return 0;
    }
    return KW_E_NOT_FOUND;
}

/* ------------------------------------------------------------------------------------------------------------
 * Measurements
 */

static int kw_bp_fill(kw_backend *be, kw_tensor *t, int64_t T, int64_t H, int64_t D, uint64_t seed) {
    KW_FORWARD(kw_tensor_alloc(be, t, KW_DTYPE_F32, 3, (int64_t[]){T, H, D}));
    const size_t n = (size_t)(T * H * D);
    float *h = malloc(n * sizeof *h);
    KW_RETURN_IF(h == NULL, KW_E_NOMEM, "bench projector: out of memory");
    uint64_t s = seed;
    for (size_t i = 0; i < n; ++i)
        h[i] = kw_round_bf16(kw_bp_uniform(&s, 2.0f)); /* values a bf16 cache holds */
    int rc = kw_backend_upload(be, t, 0, h, n * sizeof *h);
    if (rc == 0) rc = kw_backend_synchronize(be);
    free(h);
    return rc;
}

/* Best seconds of reps passes of all layers over T positions. */
static int kw_bp_time_projector(kw_backend *be, kw_projector *const *proj, int32_t layers, int64_t T, int reps,
                                enum kw_projector_numerics num, double *best) {
    kw_projector_ws *ws = NULL;
    kw_tensor sk = {0}, sv = {0}, tk = {0}, tv = {0}, ok = {0}, ov = {0};
    int rc;
    KW_CHECK(kw_projector_ws_create(be, 0, &ws));
    KW_CHECK(kw_bp_fill(be, &sk, T, 2, 64, 11));
    KW_CHECK(kw_bp_fill(be, &sv, T, 2, 64, 12));
    KW_CHECK(kw_bp_fill(be, &tk, T, 8, 128, 13));
    KW_CHECK(kw_bp_fill(be, &tv, T, 8, 128, 14));
    KW_CHECK(kw_tensor_alloc(be, &ok, KW_DTYPE_F32, 3, (int64_t[]){T, 8, 128}));
    KW_CHECK(kw_tensor_alloc(be, &ov, KW_DTYPE_F32, 3, (int64_t[]){T, 8, 128}));
    const kw_projector_io io = {&sk, &sv, &tk, &tv, &ok, &ov};
    *best = 1e30;
    for (int r = -1; r < reps; ++r) { /* r = -1: warm-up (workspace, page faults) */
        const uint64_t t0 = kw_time_now_ns();
        for (int32_t l = 0; l < layers; ++l)
            KW_CHECK(kw_projector_forward(proj[l], ws, num, &io));
        KW_CHECK(kw_backend_synchronize(be));
        const double s = kw_time_seconds(t0, kw_time_now_ns());
        if (r >= 0 && s < *best) *best = s;
    }
out:
    kw_tensor_free(&sk), kw_tensor_free(&sv), kw_tensor_free(&tk), kw_tensor_free(&tv);
    kw_tensor_free(&ok), kw_tensor_free(&ov);
    kw_projector_ws_free(ws);
    return rc;
}

/* Best GFLOP/s of the baseline matmul: x (T, 1024) f32 times 16 distinct (1024, 1024) bf16 weights. */
static int kw_bp_time_matmul(kw_backend *be, int64_t T, int reps, double *gflops) {
    enum { NW = 16, N = 1024, K = 1024 };
    uint16_t *host = malloc((size_t)NW * N * K * sizeof *host);
    KW_RETURN_IF(host == NULL, KW_E_NOMEM, "bench projector: out of memory");
    uint64_t s = 99;
    for (size_t i = 0; i < (size_t)NW * N * K; ++i)
        host[i] = kw_f32_to_bf16(kw_bp_uniform(&s, 0.03f));
    kw_tensor w[NW], x = {0}, y = {0};
    memset(w, 0, sizeof w);
    int rc;
    for (int i = 0; i < NW; ++i) { /* packed, as the projector packs its weights */
        kw_tensor rows;
        KW_CHECK(kw_tensor_from_host(be, &rows, KW_DTYPE_BF16, 2, (int64_t[]){N, K}, host + (size_t)i * N * K));
        KW_CHECK(kw_tensor_pack_weight(be, &rows, &w[i]));
    }
    KW_CHECK(kw_bp_fill(be, &x, T, 1, K, 21));
    kw_tensor x2;
    KW_CHECK(kw_tensor_view_reshape(&x, 2, (int64_t[]){T, K}, &x2));
    KW_CHECK(kw_tensor_alloc(be, &y, KW_DTYPE_F32, 2, (int64_t[]){T, N}));
    double best = 1e30;
    const int calls = 4 * NW;
    for (int r = -1; r < reps; ++r) {
        const uint64_t t0 = kw_time_now_ns();
        for (int c = 0; c < calls; ++c)
            KW_CHECK(kw_op_matmul(be, &y, &x2, &w[c % NW], NULL));
        KW_CHECK(kw_backend_synchronize(be));
        const double sec = kw_time_seconds(t0, kw_time_now_ns()) / calls;
        if (r >= 0 && sec < best) best = sec;
    }
    *gflops = 2.0 * (double)T * N * K / best * 1e-9;
out:
    for (int i = 0; i < NW; ++i)
        kw_tensor_free(&w[i]);
    kw_tensor_free(&x), kw_tensor_free(&y);
    free(host);
    return rc;
}

/* Milliseconds per call of the projector's elementwise ops on one (R, 1024) chunk, next to one GEMM of that chunk:
 * where a pass spends what its GEMMs do not. */
static int kw_bp_time_small_ops(kw_backend *be, int64_t R, int reps) {
    kw_tensor x = {0}, y = {0}, w = {0}, n = {0}, h = {0}, s16 = {0}, w8 = {0};
    uint16_t *wh = calloc((size_t)1024 * 1024, sizeof *wh);
    int rc;
    KW_CHECK_IF(wh == NULL, KW_E_NOMEM, "bench projector: out of memory");
    KW_CHECK(kw_bp_fill(be, &x, R, 1, 1024, 31));
    KW_CHECK(kw_tensor_alloc(be, &y, KW_DTYPE_F32, 3, (int64_t[]){R, 1, 1024}));
    KW_CHECK(kw_tensor_alloc(be, &h, KW_DTYPE_F32, 3, (int64_t[]){R, 8, 128}));
    KW_CHECK(kw_tensor_alloc(be, &s16, KW_DTYPE_BF16, 3, (int64_t[]){R, 1, 1024}));
    KW_CHECK(kw_tensor_alloc(be, &n, KW_DTYPE_F32, 1, (int64_t[]){1024}));
    KW_CHECK(kw_backend_memset_zero(be, &n));
    kw_tensor w_rows, x2, y2;
    KW_CHECK(kw_tensor_from_host(be, &w_rows, KW_DTYPE_BF16, 2, (int64_t[]){1024, 1024}, wh));
    KW_CHECK(kw_tensor_pack_weight(be, &w_rows, &w));
    KW_CHECK(kw_tensor_view_reshape(&x, 2, (int64_t[]){R, 1024}, &x2));
    KW_CHECK(kw_tensor_view_reshape(&y, 2, (int64_t[]){R, 1024}, &y2));
    KW_CHECK(kw_tensor_alloc(be, &w8, KW_DTYPE_F32, 2, (int64_t[]){R, 8}));
    KW_CHECK(kw_backend_memset_zero(be, &w8));
    const char *names[6] = {"matmul 1024x1024 bf16", "gelu (erf)",    "rms_norm", "sigmoid",
                            "bf16 round (2 copies)", "head_scale_add"};
    double best[6];
    for (int op = 0; op < 6; ++op) {
        best[op] = 1e30;
        for (int r = -1; r < reps; ++r) {
            const uint64_t t0 = kw_time_now_ns();
            for (int c = 0; c < 8; ++c) {
                switch (op) {
                case 0:
                    KW_CHECK(kw_op_matmul(be, &y2, &x2, &w, NULL));
                    break;
                case 1:
                    KW_CHECK(kw_op_unary(be, &y, &x, KW_ACT_GELU_ERF));
                    break;
                case 2:
                    KW_CHECK(kw_op_rms_norm(be, &y, &x, &n, 1e-6f, KW_RMS_NORM_PLAIN));
                    break;
                case 3:
                    KW_CHECK(kw_op_unary(be, &y, &x, KW_ACT_SIGMOID));
                    break;
                case 4:
                    KW_CHECK(kw_op_copy(be, &s16, &x));
                    KW_CHECK(kw_op_copy(be, &y, &s16));
                    break;
                default: {
                    kw_tensor x3;
                    KW_CHECK(kw_tensor_view_reshape(&x, 3, (int64_t[]){R, 8, 128}, &x3));
                    KW_CHECK(kw_op_head_scale_add(be, &h, &x3, &x3, &w8, 1.0f));
                    break;
                }
                }
            }
            KW_CHECK(kw_backend_synchronize(be));
            const double ms = kw_time_ms(t0, kw_time_now_ns()) / 8;
            if (r >= 0 && ms < best[op]) best[op] = ms;
        }
    }
    printf("per call on a (%lld, 1024) chunk:", (long long)R);
    for (int op = 0; op < 6; ++op)
        printf("%s %s %.3f ms", op ? "," : "", names[op], best[op]);
    printf("\n(a branch runs 7 GEMMs, one of K = 128 and one of N = 8, 3 GELUs, 3 RMSNorms, one sigmoid on (R, 8), "
           "~20 bf16 rounds in bf16 mode and one head_scale_add per chunk)\n");
out:
    kw_tensor_free(&x), kw_tensor_free(&y), kw_tensor_free(&w), kw_tensor_free(&n), kw_tensor_free(&h);
    kw_tensor_free(&s16), kw_tensor_free(&w8);
    free(wh);
    return rc;
}

static void kw_bp_usage(FILE *f) {
    fprintf(f, "usage: kvwire bench projector [--tokens N] [--threads N] [--layers N] [--reps N] "
               "[--numerics bf16|fp32|both] [--quick]\n");
}

int kw_bench_projector(int argc, char **argv) {
    static const char *const numerics_names[] = {"bf16", "fp32", "both", NULL};
    int64_t threads_opt = 2, layers_opt = -1, reps_opt = -1, tokens_opt = -1;
    int numerics = 2, quick = 0;
    const kw_cli_option opts[] = {
        KW_CLI_INT("--tokens", &tokens_opt, 1, 1 << 16),
        KW_CLI_INT("--threads", &threads_opt, 1, 1024),
        KW_CLI_INT("--layers", &layers_opt, 1, 28),
        KW_CLI_INT("--reps", &reps_opt, 1, 1000),
        KW_CLI_CHOICE("--numerics", &numerics, numerics_names),
        KW_CLI_FLAG("--quick", &quick),
    };
    const int st = KW_CLI_PARSE("kvwire bench projector", argc, argv, opts, kw_bp_usage);
    if (st != KW_CLI_RUN) return st;
    const long threads = (long)threads_opt, tokens = tokens_opt > 0 ? (long)tokens_opt : quick ? 64 : 0;
    const long layers = layers_opt > 0 ? (long)layers_opt : quick ? 4 : 28;
    const long reps = reps_opt > 0 ? (long)reps_opt : quick ? 1 : 3;
    const int do_bf16 = numerics != 1, do_fp32 = numerics != 0;
    const int64_t token_list[2] = {tokens ? tokens : 128, 512};
    const int n_tokens = tokens ? 1 : 2;

    const kw_fuser_dims fd = {.source_dim = 64,
                              .source_heads = 2,
                              .target_dim = 128,
                              .target_heads = 8,
                              .hidden_dim = 1024,
                              .intermediate_dim = 1024,
                              .num_layers = 3};
    const kw_projector_dims pd = {2, 64, 8, 128, 1024, 1024, 3};
    int rc = 0;
    kw_backend *be = NULL;
    kw_bp_layer *lw = calloc((size_t)layers, sizeof *lw);
    kw_projector **proj = calloc((size_t)layers, sizeof *proj);
    KW_CHECK_IF(!lw || !proj, KW_E_NOMEM, "out of memory");
    KW_CHECK(kw_backend_create_cpu((int)threads, &be));
    const uint64_t g0 = kw_time_now_ns();
    for (long l = 0; l < layers; ++l) {
        KW_CHECK(kw_bp_layer_make(&fd, (uint64_t)l + 1, &lw[l]));
        KW_CHECK(kw_projector_create(be, &pd, kw_bp_find, &lw[l], &proj[l]));
    }
    const double macs = (double)kw_projector_branch_macs(&pd) * 2.0 * (double)layers; /* per token */
    printf("C2C projector, Qwen3-0.6B x Qwen2.5-0.5B fuser dims: %ld layers x 2 branches, hidden 1024, %.1f M "
           "multiply-adds per token (bf16 weights %.0f MiB, random), %.3f GFLOP per fused token; %ld thread(s), best "
           "of %ld; "
           "weights made in %.1f s\n",
           layers, macs * 1e-6, macs * 2.0 / 1048576.0, 2.0 * macs * 1e-9, threads, reps,
           kw_time_seconds(g0, kw_time_now_ns()));
    printf("%-6s %-5s %12s %14s %12s %18s %8s\n", "T", "mode", "ms/pass", "fused tok/s", "GFLOP/s", "matmul GFLOP/s",
           "ratio");
    for (int ti = 0; ti < n_tokens; ++ti) {
        const int64_t T = token_list[ti];
        double mm = 0;
        KW_CHECK(kw_bp_time_matmul(be, T, (int)reps, &mm));
        for (int m = 0; m < 2; ++m) {
            if ((m == 0 && !do_bf16) || (m == 1 && !do_fp32)) continue;
            double sec = 0;
            KW_CHECK(kw_bp_time_projector(be, proj, (int32_t)layers, T, (int)reps,
                                          m == 0 ? KW_PROJECTOR_BF16 : KW_PROJECTOR_FP32, &sec));
            const double gf = 2.0 * macs * (double)T / sec * 1e-9;
            printf("%-6lld %-5s %12.2f %14.1f %12.1f %18.1f %7.0f%%\n", (long long)T, m == 0 ? "bf16" : "fp32",
                   sec * 1e3, (double)T / sec, gf, mm, 100.0 * gf / mm);
        }
    }
    KW_CHECK(kw_bp_time_small_ops(be, token_list[0] < 256 ? token_list[0] : 256, (int)reps));
out:
    if (rc < 0) fprintf(stderr, "kvwire bench projector: %s (%s)\n", kw_strerror(rc), kw_error_detail());
    for (long l = 0; proj && l < layers; ++l)
        kw_projector_free(proj[l]);
    kw_backend_destroy(be);
    for (long l = 0; lw && l < layers; ++l)
        kw_bp_layer_free(&lw[l]);
    free(proj);
    free(lw);
    return rc < 0 ? 1 : 0;
}
