/* test_rscore.c: the receiver-aware selection scores (c2c/kw_rscore.h) on the tiny fusion fixtures
 * (tests/data/c2c/fusion: a qwen3 receiver, a qwen2 sharer and their fuser, one open receiver layer per sharer
 * layer; and a kw_genfuser fuser for the same pair with every gate open, where sharer layer 0 feeds two):
 *  - proj_vnorm_topk and delta_proj_vnorm_topk against a direct composition: the receiver's and the sharer's own
 *    prefills, every target's projector (kw_projector) over all T rows, the V norms taken in double, the mean over
 *    heads, for every (sharer layer, receiver layer) pair;
 *  - delta through a KVWire round trip with a codec that is exact on the rows (bf16 rows, the bf16 codec) gives the
 *    exact delta scores bit for bit;
 *  - kw_share_run with the scorer: each target's subset is the top-k of its own scores (ties to the lower position;
 *    a hand-made tie and a NaN through kw_select_top_scores), the rows sent their union; fusion with those subsets
 *    gives each receiver layer exactly the rows of a fusion that sent it its subset alone, and the receiver's own rows
 *    at the union's other positions;
 *  - the same scores, bit for bit, with KW_CPU_ISA scalar and avx2 and with 1 and 2 threads;
 *  - scoring: receiver (receiver/kw_receive_preview.h): a bf16 preview blob of bf16 rows gives, byte for byte, the
 *    selection kw_rscore_select makes on the rows themselves (proj and delta); a preview that is not whole sections,
 *    of another geometry or truncated is refused;
 *  - refusals (a non receiver-aware mode, the share without a scorer, kw_select_positions on the new modes). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "c2c/kw_fuser_load.h"
#include "c2c/kw_fusion.h"
#include "c2c/kw_genfuser.h"
#include "c2c/kw_projector.h"
#include "c2c/kw_rscore.h"
#include "c2c/kw_rselect.h"
#include "c2c/kw_share.h"
#include "common/kw_status.h"
#include "kernels/kw_backend.h"
#include "model/kw_kvcache.h"
#include "receiver/kw_receive_preview.h"
#include "sharer/kw_share_wire.h"
#include "tests/kw_test_util.h"
#include "../model/model_fixture.h"

#define DATA KW_TEST_DATA_DIR "/c2c/fusion"

/* One backend with the fixture models and fusion. */
typedef struct env {
    kw_backend *be;
    kw_model *recv, *sharer;
    kw_fuser *fuser;
    kw_fusion *fusion;
    kwfx fx;
    const int32_t *prompt;
    int64_t n; /* the shared prefix: the prompt but its last token */
    int32_t s_layers, s_heads, s_dim, r_layers, r_heads, r_dim;
} env;

static kw_model *load_model(kw_backend *be, const char *name) {
    kw_model *m = NULL;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", DATA, name);
    if (kw_model_load(be, dir, NULL, &m) < 0) fail_msg("%s: %s", name, kw_error_detail());
    return m;
}

/* A fuser for the fixture pair with every gate open (kw_genfuser, last_aligned: receiver layers 0 and 1 both read
 * sharer layer 0), written once into the test's scratch folder; its path. */
static char open_fuser_dir[512];

static const char *open_gates_fuser(void) {
    char *dir = open_fuser_dir;
    if (dir[0]) return dir;
    snprintf(dir, sizeof open_fuser_dir, "%s/rscore_open_fuser.%d", P_tmpdir, (int)getpid());
    uint8_t gates[4] = {KW_GENFUSER_GATE_OPEN, KW_GENFUSER_GATE_OPEN, KW_GENFUSER_GATE_OPEN, KW_GENFUSER_GATE_OPEN};
    const kw_genfuser_options o = {.recv_layers = 4,
                                   .sharer_layers = 3,
                                   .dims = {.source_dim = 8,
                                            .source_heads = 2,
                                            .target_dim = 16,
                                            .target_heads = 2,
                                            .hidden_dim = 32,
                                            .intermediate_dim = 48,
                                            .num_layers = 3},
                                   .dtype = KW_DTYPE_BF16,
                                   .seed = 11,
                                   .gates = gates};
    if (kw_genfuser_write(&o, dir) < 0) fail_msg("gen fuser: %s", kw_error_detail());
    return dir;
}

static void env_open_with(env *e, const char *isa, int threads, const char *fuser_dir);

static void env_open(env *e, const char *isa, int threads) {
    env_open_with(e, isa, threads, DATA "/fuser_qwen2");
}

static void env_open_with(env *e, const char *isa, int threads, const char *fuser_dir) {
    memset(e, 0, sizeof *e);
    if (isa) setenv("KW_CPU_ISA", isa, 1);
    assert_int_equal(kw_backend_create_cpu(threads, &e->be), 0);
    unsetenv("KW_CPU_ISA");
    e->recv = load_model(e->be, "receiver_qwen3");
    e->sharer = load_model(e->be, "sharer_qwen2");
    if (kw_fuser_load(fuser_dir, 0, &e->fuser) < 0) fail_msg("fuser %s: %s", fuser_dir, kw_error_detail());
    const kw_fusion_sharer sh = {.model = e->sharer, .fuser = e->fuser};
    assert_int_equal(kw_fusion_create(e->recv, &sh, 1, 0, &e->fusion), 0);
    if (kwfx_load(DATA "/pipeline.kwfx", &e->fx) < 0) fail_msg("pipeline.kwfx: %s", kw_error_detail());
    int64_t L = 0;
    e->prompt = kwfx_i32(&e->fx, "prompt_ids", &L);
    assert_true(L > 8);
    e->n = L - 1;
    const kw_model_config *s = kw_model_get_config(e->sharer), *r = kw_model_get_config(e->recv);
    e->s_layers = s->n_layers, e->s_heads = s->n_kv_heads, e->s_dim = s->head_dim;
    e->r_layers = r->n_layers, e->r_heads = r->n_kv_heads, e->r_dim = r->head_dim;
}

static void env_close(env *e) {
    kw_fusion_free(e->fusion);
    kw_fuser_free(e->fuser);
    kw_model_free(e->recv);
    kw_model_free(e->sharer);
    kw_backend_destroy(e->be);
    kwfx_free(&e->fx);
}

/* Every layer's prefix rows of model m prefilled on the prompt: (layers, n, H, D) each. */
static void prefill_rows(env *e, kw_model *m, enum kw_dtype dtype, float **k, float **v) {
    const kw_model_config *c = kw_model_get_config(m);
    const size_t per = (size_t)(e->n * c->n_kv_heads * c->head_dim);
    *k = malloc(per * (size_t)c->n_layers * sizeof(float));
    *v = malloc(per * (size_t)c->n_layers * sizeof(float));
    assert_non_null(*k);
    assert_non_null(*v);
    kw_kvcache *cache = NULL;
    assert_int_equal(kw_model_create_cache(m, e->n, dtype, &cache), 0);
    assert_int_equal(kw_model_prefill(m, cache, e->prompt, e->n), 0);
    for (int32_t l = 0; l < c->n_layers; ++l)
        assert_int_equal(kw_kvcache_read_rows(cache, l, 0, e->n, *k + per * (size_t)l, *v + per * (size_t)l), 0);
    kw_kvcache_free(cache);
}

/* The direct composition for receiver layer t: the mean over heads of ||fusedV (- base V)|| of its projector
 * (kw_projector) over all n rows of sharer rows sk, sv and the receiver's rows rk, rv of every layer, norms in double.
 */
static void direct_scores(env *e, int32_t t, int delta, const float *sk, const float *sv, const float *rk,
                          const float *rv, double *out) {
    const size_t r_per = (size_t)(e->n * e->r_heads * e->r_dim);
    float *fused = malloc(r_per * sizeof(float));
    assert_non_null(fused);
    kw_projector_ws *ws = NULL;
    assert_int_equal(kw_projector_ws_create(e->be, 0, &ws), 0);
    int32_t src = -1;
    const kw_fuser_projector *fp = NULL;
    assert_int_equal(kw_fuser_layer(e->fuser, t, &src, &fp), 0);
    kw_projector *proj = NULL;
    assert_int_equal(kw_projector_create_from_fuser(e->be, e->fuser, (int32_t)(fp - e->fuser->projectors), &proj), 0);
    const int64_t ne_s[3] = {e->n, e->s_heads, e->s_dim}, ne_r[3] = {e->n, e->r_heads, e->r_dim};
    const float *bk = rk + r_per * (size_t)t, *bv = rv + r_per * (size_t)t;
    kw_tensor tsk = {0}, tsv = {0}, tbk = {0}, tbv = {0}, tout = {0};
    assert_int_equal(kw_tensor_from_host(e->be, &tsk, KW_DTYPE_F32, 3, ne_s, sk), 0);
    assert_int_equal(kw_tensor_from_host(e->be, &tsv, KW_DTYPE_F32, 3, ne_s, sv), 0);
    assert_int_equal(kw_tensor_from_host(e->be, &tbk, KW_DTYPE_F32, 3, ne_r, bk), 0);
    assert_int_equal(kw_tensor_from_host(e->be, &tbv, KW_DTYPE_F32, 3, ne_r, bv), 0);
    assert_int_equal(kw_tensor_from_host(e->be, &tout, KW_DTYPE_F32, 3, ne_r, fused), 0);
    const kw_projector_io io = {.src_k = &tsk, .src_v = &tsv, .tgt_k = &tbk, .tgt_v = &tbv, .out_v = &tout};
    assert_int_equal(kw_projector_forward(proj, ws, KW_PROJECTOR_FP32, &io), 0);
    assert_int_equal(kw_backend_synchronize(e->be), 0);
    for (int64_t p = 0; p < e->n; ++p) {
        double sum = 0.0;
        for (int32_t h = 0; h < e->r_heads; ++h) {
            double ss = 0.0;
            for (int32_t d = 0; d < e->r_dim; ++d) {
                const size_t i = (size_t)((p * e->r_heads + h) * e->r_dim + d);
                const double x = (double)fused[i] - (delta ? (double)bv[i] : 0.0);
                ss += x * x;
            }
            sum += sqrt(ss);
        }
        out[p] = sum / e->r_heads;
    }
    kw_tensor_free(&tsk), kw_tensor_free(&tsv), kw_tensor_free(&tbk), kw_tensor_free(&tbv), kw_tensor_free(&tout);
    kw_projector_free(proj);
    kw_projector_ws_free(ws);
    free(fused);
}

/* The scorer's scores of every (needed sharer layer, target) pair into out, (r_layers, n) by target receiver layer
 * (0 for a receiver layer no needed sharer layer feeds). */
static void scorer_scores(env *e, enum kw_select_mode mode, enum kw_dtype dtype, const kw_wire_policy *q,
                          const float *sk, const float *sv, float *out) {
    const kw_rscore_options ro = {.mode = mode,
                                  .numerics = KW_PROJECTOR_FP32,
                                  .cache_dtype = dtype,
                                  .quantize = q ? kw_wire_roundtrip_rows_hook : NULL,
                                  .quantize_user = (void *)q};
    kw_rscore *r = NULL;
    assert_int_equal(kw_rscore_create(e->recv, e->fusion, 0, e->prompt, e->n, &ro, &r), 0);
    int32_t layers[16], n_layers = 0, projections = 0;
    assert_int_equal(kw_fusion_needed_layers(e->fusion, 0, layers, 16, &n_layers), 0);
    memset(out, 0, (size_t)(e->r_layers * e->n) * sizeof(float));
    float *per = malloc((size_t)(e->r_layers * e->n) * sizeof(float));
    assert_non_null(per);
    const size_t s_per = (size_t)(e->n * e->s_heads * e->s_dim);
    for (int32_t i = 0; i < n_layers; ++i) {
        const int32_t l = layers[i];
        int32_t targets[16], n_targets = 0;
        if (kw_rscore_layer(r, l, 0, e->n, sk + s_per * (size_t)l, sv + s_per * (size_t)l, per, targets, &n_targets) <
            0)
            fail_msg("rscore: %s", kw_error_detail());
        for (int32_t j = 0; j < n_targets; ++j)
            memcpy(out + e->n * targets[j], per + e->n * j, (size_t)e->n * sizeof(float));
        projections += n_targets;
    }
    assert_int_equal(kw_rscore_get_stats(r)->projections, projections);
    free(per);
    kw_rscore_free(r);
}

static void check_against_direct(enum kw_select_mode mode, const char *fuser_dir, int want_multi) {
    env e;
    env_open_with(&e, NULL, 2, fuser_dir);
    float *sk, *sv, *rk, *rv;
    prefill_rows(&e, e.sharer, KW_DTYPE_F32, &sk, &sv);
    prefill_rows(&e, e.recv, KW_DTYPE_F32, &rk, &rv);
    float *got = malloc((size_t)(e.r_layers * e.n) * sizeof(float));
    double *want = malloc((size_t)e.n * sizeof(double));
    assert_non_null(got);
    assert_non_null(want);
    scorer_scores(&e, mode, KW_DTYPE_F32, NULL, sk, sv, got);
    int32_t layers[16], n_layers = 0, multi = 0;
    assert_int_equal(kw_fusion_needed_layers(e.fusion, 0, layers, 16, &n_layers), 0);
    assert_true(n_layers > 0);
    const size_t s_per = (size_t)(e.n * e.s_heads * e.s_dim);
    for (int32_t i = 0; i < n_layers; ++i) {
        const int32_t l = layers[i];
        int32_t targets[16], n_targets = 0;
        assert_int_equal(kw_fusion_layer_targets(e.fusion, 0, l, targets, 16, &n_targets), 0);
        multi |= n_targets > 1;
        for (int32_t j = 0; j < n_targets; ++j) {
            direct_scores(&e, targets[j], mode == KW_SELECT_DELTA_PROJ_VNORM, sk + s_per * (size_t)l,
                          sv + s_per * (size_t)l, rk, rv, want);
            for (int64_t p = 0; p < e.n; ++p) {
                const double g = got[e.n * targets[j] + p];
                if (!(fabs(g - want[p]) <= 1e-5 * fmax(1.0, fabs(want[p]))))
                    fail_msg("layer %d -> %d position %lld: %.9g, direct %.9g", (int)l, (int)targets[j], (long long)p,
                             g, want[p]);
            }
        }
    }
    assert_int_equal(multi, want_multi); /* a sharer layer that feeds two receiver layers: each scored on its own */
    free(got), free(want), free(sk), free(sv), free(rk), free(rv);
    env_close(&e);
}

static void test_proj_against_direct(void **state) {
    (void)state;
    check_against_direct(KW_SELECT_PROJ_VNORM, DATA "/fuser_qwen2", 0);
    check_against_direct(KW_SELECT_PROJ_VNORM, open_gates_fuser(), 1);
}

static void test_delta_against_direct(void **state) {
    (void)state;
    check_against_direct(KW_SELECT_DELTA_PROJ_VNORM, DATA "/fuser_qwen2", 0);
    check_against_direct(KW_SELECT_DELTA_PROJ_VNORM, open_gates_fuser(), 1);
}

/* bf16 cache rows through the bf16 codec arrive exactly: the round trip changes no score bit. */
static void test_delta_exact_codec(void **state) {
    (void)state;
    env e;
    env_open(&e, NULL, 2);
    float *sk, *sv;
    prefill_rows(&e, e.sharer, KW_DTYPE_BF16, &sk, &sv);
    const size_t total = (size_t)(e.r_layers * e.n);
    float *exact = malloc(total * sizeof(float)), *wired = malloc(total * sizeof(float));
    assert_non_null(exact);
    assert_non_null(wired);
    kw_wire_policy pol;
    memset(&pol, 0, sizeof pol);
    assert_int_equal(kw_wire_spec_parse("bf16", "token", "f32", &pol.k), 0);
    pol.v = pol.k;
    scorer_scores(&e, KW_SELECT_DELTA_PROJ_VNORM, KW_DTYPE_BF16, NULL, sk, sv, exact);
    scorer_scores(&e, KW_SELECT_DELTA_PROJ_VNORM, KW_DTYPE_BF16, &pol, sk, sv, wired);
    assert_memory_equal(exact, wired, total * sizeof(float));
    /* a lossy codec moves the delta scores */
    assert_int_equal(kw_wire_spec_parse("int4", "token", "f32", &pol.k), 0);
    pol.v = pol.k;
    scorer_scores(&e, KW_SELECT_DELTA_PROJ_VNORM, KW_DTYPE_BF16, &pol, sk, sv, wired);
    assert_true(memcmp(exact, wired, total * sizeof(float)) != 0);
    free(exact), free(wired), free(sk), free(sv);
    env_close(&e);
}

/* What kw_share_run handed over per layer: the rows sent and the per-target subsets. */
typedef struct share_log {
    int32_t layers;
    int32_t layer[16];
    int64_t n_rows[16];
    int64_t positions[16][256];
    float k[16][256 * 16], v[16][256 * 16];
    int32_t n_targets[16], targets[16][8];
    uint8_t masks[16][8][32];
} share_log;

static int log_layer(void *user, const kw_share_layer *l) {
    share_log *log = user;
    const int32_t i = log->layers;
    const int64_t row = (int64_t)l->n_heads * l->head_dim;
    assert_true(i < 16 && l->n_rows <= 256 && l->n_rows * row <= 256 * 16 && l->targets.n <= 8 &&
                l->targets.mask_bytes <= 32);
    log->layer[i] = l->layer;
    log->n_rows[i] = l->n_rows;
    memcpy(log->positions[i], l->positions, (size_t)l->n_rows * sizeof(int64_t));
    memcpy(log->k[i], l->k, (size_t)(l->n_rows * row) * sizeof(float));
    memcpy(log->v[i], l->v, (size_t)(l->n_rows * row) * sizeof(float));
    log->n_targets[i] = l->targets.n;
    for (int32_t j = 0; j < l->targets.n; ++j) {
        log->targets[i][j] = l->targets.layers[j];
        memcpy(log->masks[i][j], l->targets.masks[j], (size_t)l->targets.mask_bytes);
    }
    ++log->layers;
    return 0;
}

#define BIT(m, p) (((m)[(p) >> 3] >> ((p)&7)) & 1)

/* The expected selection of one target: k rows, every one scoring at least as high as every row left out (ties: the
 * lower position went), non-finite never. */
static void check_top_k(const float *sc, int64_t n, int64_t k, const uint8_t *mask) {
    int64_t count = 0, min_pos = -1;
    float min_in = INFINITY;
    for (int64_t p = 0; p < n; ++p)
        if (BIT(mask, p)) {
            ++count;
            assert_true(isfinite(sc[p]));
            if (sc[p] < min_in || min_pos < 0) min_in = sc[p], min_pos = p;
        }
    assert_int_equal(count, k);
    for (int64_t p = 0; p < n; ++p)
        if (!BIT(mask, p)) assert_true(sc[p] < min_in || (sc[p] == min_in && p > min_pos));
}

/* Runs the share with the scorer on the generated fuser (sharer layer 0 feeds receiver layers 0 and 1). */
static void share_open_fuser(env *e, share_log *log, float **scores) {
    env_open_with(e, NULL, 2, open_gates_fuser());
    float *sk, *sv;
    prefill_rows(e, e->sharer, KW_DTYPE_F32, &sk, &sv);
    *scores = malloc((size_t)(e->r_layers * e->n) * sizeof(float));
    assert_non_null(*scores);
    scorer_scores(e, KW_SELECT_PROJ_VNORM, KW_DTYPE_F32, NULL, sk, sv, *scores);
    free(sk), free(sv);
    int32_t layers[16], n_layers = 0;
    assert_int_equal(kw_fusion_needed_layers(e->fusion, 0, layers, 16, &n_layers), 0);
    const kw_rscore_options ro = {
        .mode = KW_SELECT_PROJ_VNORM, .numerics = KW_PROJECTOR_FP32, .cache_dtype = KW_DTYPE_F32};
    kw_rscore *r = NULL;
    assert_int_equal(kw_rscore_create(e->recv, e->fusion, 0, e->prompt, e->n, &ro, &r), 0);
    const kw_fusion_section secs[2] = {{e->n, 1}, {1, -1}};
    memset(log, 0, sizeof *log);
    const kw_share_options so = {.sections = secs,
                                 .n_sections = 2,
                                 .layers = layers,
                                 .n_layers = n_layers,
                                 .select = {.mode = KW_SELECT_PROJ_VNORM, .proportion = 0.3, .min_tokens = 1},
                                 .select_rows = kw_rscore_share_select,
                                 .select_user = r,
                                 .cache_dtype = KW_DTYPE_F32,
                                 .on_layer = log_layer,
                                 .user = log};
    assert_int_equal(kw_share_run(e->sharer, e->prompt, e->n, &so, NULL), 0);
    assert_int_equal(log->layers, n_layers);
    /* without the selection hook the receiver-aware selection is refused */
    kw_share_options bad = so;
    bad.select_rows = NULL;
    assert_int_equal(kw_share_run(e->sharer, e->prompt, e->n, &bad, NULL), KW_E_INVALID_ARG);
    kw_rscore_free(r);
}

/* share_open_fuser into a new log (the caller frees it and *scores). */
static share_log *share_logged(env *e, float **scores) {
    share_log *log = malloc(sizeof *log);
    assert_non_null(log);
    share_open_fuser(e, log, scores);
    return log;
}

/* Each target's subset is its own top-k; the rows sent are their union; a layer with one target sends no subsets. */
static void test_share_selects_per_target(void **state) {
    (void)state;
    env e;
    float *scores = NULL;
    share_log *log = share_logged(&e, &scores);
    const kw_select_policy pol = {.mode = KW_SELECT_PROJ_VNORM, .proportion = 0.3, .min_tokens = 1};
    const int64_t k = kw_select_count(&pol, e.n);
    int multi = 0;
    for (int32_t i = 0; i < log->layers; ++i) {
        int32_t targets[16], n_targets = 0;
        assert_int_equal(kw_fusion_layer_targets(e.fusion, 0, log->layer[i], targets, 16, &n_targets), 0);
        uint8_t all[32] = {0}, one[32] = {0};
        if (n_targets == 1) { /* the rows sent are that target's top-k */
            assert_int_equal(log->n_targets[i], 0);
            for (int64_t j = 0; j < log->n_rows[i]; ++j)
                one[log->positions[i][j] >> 3] |= (uint8_t)(1u << (log->positions[i][j] & 7));
            check_top_k(scores + e.n * targets[0], e.n, k, one);
            continue;
        }
        multi = 1;
        assert_int_equal(log->n_targets[i], n_targets);
        for (int32_t j = 0; j < n_targets; ++j) {
            assert_int_equal(log->targets[i][j], targets[j]);
            check_top_k(scores + e.n * targets[j], e.n, k, log->masks[i][j]);
            for (int b = 0; b < 32; ++b)
                all[b] |= log->masks[i][j][b];
        }
        int64_t j = 0; /* the rows sent: exactly the union, ascending */
        for (int64_t p = 0; p < e.n; ++p)
            if (BIT(all, p)) {
                assert_true(j < log->n_rows[i] && log->positions[i][j] == p);
                ++j;
            }
        assert_int_equal(j, log->n_rows[i]);
        assert_true(j > k); /* the targets chose differently */
    }
    assert_true(multi);
    free(scores), free(log);
    env_close(&e);
}

/* One fusion session of the prefix's one fused section with the logged rows (with their subsets, or for receiver
 * layer only_target: the rows of its subset alone and no subsets); the receiver cache afterwards, (layers, n, H, D)
 * K then V. */
static void fuse_logged(env *e, const share_log *log, int32_t only_target, float *ck, float *cv) {
    kw_kvcache *cache = NULL;
    assert_int_equal(kw_model_create_cache(e->recv, e->n + 1, KW_DTYPE_F32, &cache), 0);
    const kw_fusion_section secs[2] = {{e->n, 1}, {1, -1}};
    const kw_fusion_options fo = {.sections = secs, .n_sections = 2, .numerics = KW_PROJECTOR_FP32};
    int32_t ids[512];
    memcpy(ids, e->prompt, (size_t)e->n * sizeof *ids);
    ids[e->n] = e->prompt[e->n];
    kw_fusion_session *s = NULL;
    assert_int_equal(kw_fusion_begin(e->fusion, cache, ids, e->n + 1, &fo, &s), 0);
    assert_int_equal(kw_fusion_prefill(s, 0), 0);
    const int64_t row = (int64_t)e->s_heads * e->s_dim;
    for (int32_t i = 0; i < log->layers; ++i) {
        kw_fusion_rows rows = {.sharer = 0,
                               .section = 0,
                               .source_layer = log->layer[i],
                               .n_rows = log->n_rows[i],
                               .positions = log->positions[i],
                               .k = log->k[i],
                               .v = log->v[i]};
        const uint8_t *masks[8];
        int64_t pos[256];
        float *k = malloc((size_t)(log->n_rows[i] * row) * sizeof *k),
              *v = malloc((size_t)(log->n_rows[i] * row) * sizeof *v);
        assert_non_null(k);
        assert_non_null(v);
        int32_t m = -1;
        for (int32_t j = 0; j < log->n_targets[i]; ++j) {
            masks[j] = log->masks[i][j];
            if (log->targets[i][j] == only_target) m = j;
        }
        if (only_target < 0) {
            rows.n_targets = log->n_targets[i];
            rows.target_layers = log->targets[i];
            rows.target_masks = masks;
        } else if (m >= 0) { /* that target's rows only */
            int64_t n = 0;
            for (int64_t r = 0; r < log->n_rows[i]; ++r) {
                if (!BIT(log->masks[i][m], log->positions[i][r])) continue;
                pos[n] = log->positions[i][r];
                memcpy(k + n * row, log->k[i] + r * row, (size_t)row * sizeof *k);
                memcpy(v + n * row, log->v[i] + r * row, (size_t)row * sizeof *v);
                ++n;
            }
            rows.n_rows = n, rows.positions = pos, rows.k = k, rows.v = v;
        }
        assert_int_equal(kw_fusion_put(s, &rows), 0);
        free(k), free(v);
    }
    assert_int_equal(kw_fusion_end_section(s, 0), 0);
    const size_t per = (size_t)(e->n * e->r_heads * e->r_dim);
    for (int32_t l = 0; l < e->r_layers; ++l)
        assert_int_equal(kw_kvcache_read_rows(cache, l, 0, e->n, ck + per * (size_t)l, cv + per * (size_t)l), 0);
    kw_fusion_session_free(s);
    kw_kvcache_free(cache);
}

/* Each receiver layer fuses exactly its own subset: its rows equal those of a fusion that sent only that subset, and
 * the union's other rows keep the receiver's own values there. */
static void test_fusion_per_target(void **state) {
    (void)state;
    env e;
    float *scores = NULL;
    share_log *log = share_logged(&e, &scores);
    const size_t per = (size_t)(e.n * e.r_heads * e.r_dim), all = per * (size_t)e.r_layers;
    float *ak = malloc(all * sizeof(float)), *av = malloc(all * sizeof(float));
    float *bk = malloc(all * sizeof(float)), *bv = malloc(all * sizeof(float));
    float *rk, *rv;
    assert_true(ak && av && bk && bv);
    prefill_rows(&e, e.recv, KW_DTYPE_F32, &rk, &rv);
    fuse_logged(&e, log, -1, ak, av);
    int checked = 0;
    for (int32_t i = 0; i < log->layers; ++i)
        for (int32_t j = 0; j < log->n_targets[i]; ++j) {
            const int32_t t = log->targets[i][j];
            fuse_logged(&e, log, t, bk, bv);
            assert_memory_equal(ak + per * (size_t)t, bk + per * (size_t)t, per * sizeof(float));
            assert_memory_equal(av + per * (size_t)t, bv + per * (size_t)t, per * sizeof(float));
            const size_t row = (size_t)e.r_heads * (size_t)e.r_dim;
            for (int64_t r = 0; r < log->n_rows[i]; ++r) { /* sent, not this target's: the receiver's own row */
                const int64_t p = log->positions[i][r];
                if (BIT(log->masks[i][j], p)) continue;
                assert_memory_equal(av + per * (size_t)t + row * (size_t)p, rv + per * (size_t)t + row * (size_t)p,
                                    row * sizeof(float));
                ++checked;
            }
        }
    assert_true(checked > 0);
    free(ak), free(av), free(bk), free(bv), free(rk), free(rv), free(scores), free(log);
    env_close(&e);
}

/* Ties go to the lower position, NaN and infinities are never chosen, the count rule holds. */
static void test_top_scores_ties(void **state) {
    (void)state;
    const float s[8] = {1.0f, 2.0f, NAN, 2.0f, INFINITY, 0.5f, 2.0f, -INFINITY};
    kw_select_policy p = {.mode = KW_SELECT_PROJ_VNORM, .proportion = 0.25, .min_tokens = 1};
    int64_t out[8], n = 0;
    assert_int_equal(kw_select_top_scores(&p, 8, s, out, &n), 0);
    assert_int_equal(n, 2);
    assert_true(out[0] == 1 && out[1] == 3); /* three 2.0 ties: the two lowest positions */
    p.proportion = 1.0;
    assert_int_equal(kw_select_top_scores(&p, 8, s, out, &n), 0);
    assert_int_equal(n, 5); /* the three non-finite scores are left out */
    assert_true(out[0] == 0 && out[1] == 1 && out[2] == 3 && out[3] == 5 && out[4] == 6);
    /* the new modes: names, and kw_select_positions cannot score them */
    enum kw_select_mode m;
    assert_int_equal(kw_select_mode_parse("delta_proj_vnorm_topk", &m), 0);
    assert_int_equal(m, KW_SELECT_DELTA_PROJ_VNORM);
    assert_string_equal(kw_select_mode_name(KW_SELECT_PROJ_VNORM), "proj_vnorm_topk");
    assert_true(kw_select_mode_receiver_aware(m) && !kw_select_mode_receiver_aware(KW_SELECT_VNORM));
    float scratch[8], rows[8] = {0};
    p.mode = KW_SELECT_PROJ_VNORM;
    assert_int_equal(kw_select_positions(&p, 8, 1, 1, rows, rows, 0, 0, scratch, out, &n), KW_E_INVALID_ARG);
}

/* The same scores, bit for bit, on the scalar and AVX2 paths and with 1 and 2 threads. */
static void test_isa_thread_invariance(void **state) {
    (void)state;
    const struct {
        const char *isa;
        int threads;
    } runs[3] = {{"scalar", 1}, {"avx2", 2}, {"scalar", 2}};
    float *first = NULL;
    size_t total = 0;
    for (int i = 0; i < 3; ++i) {
        env e;
        env_open(&e, runs[i].isa, runs[i].threads);
        float *sk, *sv;
        prefill_rows(&e, e.sharer, KW_DTYPE_BF16, &sk, &sv);
        total = (size_t)(e.r_layers * e.n) * 2;
        float *got = malloc(total * sizeof(float));
        assert_non_null(got);
        scorer_scores(&e, KW_SELECT_PROJ_VNORM, KW_DTYPE_BF16, NULL, sk, sv, got);
        scorer_scores(&e, KW_SELECT_DELTA_PROJ_VNORM, KW_DTYPE_BF16, NULL, sk, sv, got + total / 2);
        if (first == NULL) {
            first = got;
        } else {
            assert_memory_equal(first, got, total * sizeof(float));
            free(got);
        }
        free(sk), free(sv);
        env_close(&e);
    }
    free(first);
}

/* The pure norm: fp32, heads in order, mean over heads. */
static void test_vnorm_formula(void **state) {
    (void)state;
    const float fused[2 * 2 * 2] = {3.0f, 4.0f, 0.0f, 1.0f, 1.0f, 1.0f, 2.0f, 2.0f};
    const float base[2 * 2 * 2] = {0.0f, 0.0f, 0.0f, 1.0f, 1.0f, 1.0f, 2.0f, 2.0f};
    float out[2];
    kw_rscore_vnorm(2, 2, 2, fused, NULL, out);
    assert_true(out[0] == 3.0f && fabsf(out[1] - (sqrtf(2.0f) + sqrtf(8.0f)) / 2.0f) < 1e-6f);
    kw_rscore_vnorm(2, 2, 2, fused, base, out);
    assert_true(out[0] == 2.5f && out[1] == 0.0f);
}

/* A preview blob of the needed layers' rows of sk, sv (layers, n, H, D) f32 at positions [0, n) with the bf16 codec:
 * gap leaves position 1 out, heads declares another head count. *len bytes, owned by the caller. */
static uint8_t *preview_blob(env *e, const float *sk, const float *sv, int gap, int32_t heads, size_t *len) {
    int32_t layers[16], n_layers = 0;
    assert_int_equal(kw_fusion_needed_layers(e->fusion, 0, layers, 16, &n_layers), 0);
    const kw_wire_header hdr = {.n_layers = (uint16_t)e->s_layers,
                                .n_sections = (uint16_t)n_layers,
                                .n_kv_heads = (uint16_t)heads,
                                .head_dim = (uint16_t)e->s_dim,
                                .n_positions = (uint32_t)e->n,
                                .src_dtype = KW_WIRE_DTYPE_F32};
    kw_wire_policy pol;
    memset(&pol, 0, sizeof pol);
    assert_int_equal(kw_wire_spec_parse("bf16", "none", "none", &pol.k), 0);
    pol.v = pol.k;
    uint32_t pos[256];
    assert_true(e->n <= 256);
    const uint32_t T = (uint32_t)(gap ? e->n - 1 : e->n);
    for (uint32_t t = 0; t < T; ++t)
        pos[t] = gap && t > 0 ? t + 1 : t;
    size_t cap = KW_WIRE_HEADER_BYTES + KW_WIRE_TRAILER_BYTES, part = 0, used = 0;
    for (int32_t i = 0; i < n_layers; ++i) {
        size_t b = 0;
        assert_int_equal(kw_wire_section_bound(&hdr, &pol, T, &b), 0);
        cap += b;
    }
    uint8_t *blob = malloc(cap);
    assert_non_null(blob);
    kw_wire_encoder *enc = NULL;
    assert_int_equal(kw_wire_encoder_create(&hdr, NULL, &enc), 0);
    assert_int_equal(kw_wire_encoder_write_header(enc, blob, cap, &part), 0);
    used += part;
    const size_t per = (size_t)(e->n * e->s_heads * e->s_dim), row = (size_t)(heads * e->s_dim);
    for (int32_t i = 0; i < n_layers; ++i) {
        const size_t off = per * (size_t)layers[i];
        const kw_wire_layer_in in = {
            .layer = (uint32_t)layers[i],
            .n_tokens = T,
            .positions = pos,
            .k = {.data = sk + off, .head_stride = (size_t)e->s_dim, .token_stride = row, .rows = pos},
            .v = {.data = sv + off, .head_stride = (size_t)e->s_dim, .token_stride = row, .rows = pos}};
        assert_int_equal(kw_wire_encoder_write_section(enc, &in, &pol, blob + used, cap - used, &part), 0);
        used += part;
    }
    assert_int_equal(kw_wire_encoder_write_trailer(enc, blob + used, cap - used, &part), 0);
    kw_wire_encoder_destroy(enc);
    *len = used + part;
    return blob;
}

/* The encoding of a selection, compared with another's. */
static void assert_same_selection(const kw_rselect *a, const kw_rselect *b) {
    uint8_t *ea = NULL, *eb = NULL;
    size_t la = 0, lb = 0;
    assert_int_equal(kw_rselect_encode(a, &ea, &la), 0);
    assert_int_equal(kw_rselect_encode(b, &eb, &lb), 0);
    assert_int_equal(la, lb);
    assert_memory_equal(ea, eb, la);
    free(ea), free(eb);
}

static void check_preview(env *e, enum kw_select_mode mode, const float *sk, const float *sv) {
    kw_wire_policy q;
    memset(&q, 0, sizeof q);
    assert_int_equal(kw_wire_spec_parse("int4", "token", "f32", &q.k), 0);
    q.v = q.k;
    const kw_rscore_options ro = {.mode = mode,
                                  .numerics = KW_PROJECTOR_FP32,
                                  .cache_dtype = KW_DTYPE_BF16,
                                  .quantize = mode == KW_SELECT_DELTA_PROJ_VNORM ? kw_wire_roundtrip_rows_hook : NULL,
                                  .quantize_user = &q};
    kw_rscore *r = NULL;
    assert_int_equal(kw_rscore_create(e->recv, e->fusion, 0, e->prompt, e->n, &ro, &r), 0);
    const kw_select_policy pol = {.mode = mode, .proportion = 0.25, .min_tokens = 1};
    /* what scoring: local selects on the rows themselves */
    kw_rselect want = {0}, got = {0};
    int32_t layers[16], n_layers = 0;
    assert_int_equal(kw_fusion_needed_layers(e->fusion, 0, layers, 16, &n_layers), 0);
    const size_t per = (size_t)(e->n * e->s_heads * e->s_dim);
    int64_t out[256], n_out = 0;
    for (int32_t i = 0; i < n_layers; ++i) {
        kw_share_targets t;
        const size_t off = per * (size_t)layers[i];
        assert_int_equal(kw_rscore_select(r, &pol, layers[i], 0, e->n, sk + off, sv + off, out, &n_out, &t), 0);
        assert_int_equal(kw_rselect_add(&want, 0, e->n, layers[i], out, n_out, &t), 0);
    }
    /* the receiver's, on a lossless preview */
    size_t len = 0;
    uint8_t *blob = preview_blob(e, sk, sv, 0, e->s_heads, &len);
    kw_receive_preview_stats st = {0};
    if (kw_receive_preview_score(r, e->fusion, 0, &pol, blob, len, &got, &st) < 0)
        fail_msg("preview: %s", kw_error_detail());
    assert_same_selection(&want, &got);
    assert_int_equal(st.layers, n_layers);
    assert_int_equal(st.rows, n_layers * e->n);
    kw_rselect_free(&got);
    assert_true(kw_receive_preview_score(r, e->fusion, 0, &pol, blob, len - 1, &got, NULL) < 0); /* truncated */
    kw_rselect_free(&got);
    free(blob);
    blob = preview_blob(e, sk, sv, 1, e->s_heads, &len); /* position 1 left out: not one whole section */
    assert_int_equal(kw_receive_preview_score(r, e->fusion, 0, &pol, blob, len, &got, NULL), KW_E_PARSE);
    kw_rselect_free(&got);
    free(blob);
    blob = preview_blob(e, sk, sv, 0, e->s_heads - 1, &len); /* another geometry */
    assert_int_equal(kw_receive_preview_score(r, e->fusion, 0, &pol, blob, len, &got, NULL), KW_E_SHAPE);
    kw_rselect_free(&got);
    free(blob);
    kw_rselect_free(&want);
    kw_rscore_free(r);
}

static void test_preview_selection(void **state) {
    (void)state;
    env e;
    env_open_with(&e, NULL, 2, open_gates_fuser());
    float *sk, *sv;
    prefill_rows(&e, e.sharer, KW_DTYPE_BF16, &sk, &sv);
    check_preview(&e, KW_SELECT_PROJ_VNORM, sk, sv);
    check_preview(&e, KW_SELECT_DELTA_PROJ_VNORM, sk, sv);
    free(sk), free(sv);
    env_close(&e);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vnorm_formula),       cmocka_unit_test(test_top_scores_ties),
        cmocka_unit_test(test_proj_against_direct), cmocka_unit_test(test_delta_against_direct),
        cmocka_unit_test(test_delta_exact_codec),   cmocka_unit_test(test_share_selects_per_target),
        cmocka_unit_test(test_fusion_per_target),   cmocka_unit_test(test_isa_thread_invariance),
        cmocka_unit_test(test_preview_selection),
    };
    const int failed = cmocka_run_group_tests(tests, NULL, NULL);
    if (open_fuser_dir[0]) kw_test_remove_tree(open_fuser_dir);
    return failed;
}
