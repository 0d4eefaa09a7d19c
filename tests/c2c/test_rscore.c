/* test_rscore.c: the receiver-aware selection scores (c2c/kw_rscore.h) on the tiny fusion fixtures
 * (tests/data/c2c/fusion: a qwen3 receiver, a qwen2 sharer and their fuser, one open receiver layer per sharer
 * layer; and a kw_genfuser fuser for the same pair with every gate open, where sharer layer 0 feeds two):
 *  - proj_vnorm_topk and delta_proj_vnorm_topk against a direct composition: the receiver's and the sharer's own
 *    prefills, every target's projector (kw_projector) over all T rows, the V norms taken in double, the mean over
 *    heads and the maximum over the source layer's targets;
 *  - delta through a KVWire round trip with a codec that is exact on the rows (bf16 rows, the bf16 codec) gives the
 *    exact delta scores bit for bit;
 *  - kw_share_run with the scorer sends the top-k of those scores (ties to the lower position; a hand-made tie and a
 *    NaN through kw_select_top_scores);
 *  - the same scores, bit for bit, with KW_CPU_ISA scalar and avx2 and with 1 and 2 threads;
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
#include "c2c/kw_share.h"
#include "common/kw_status.h"
#include "kernels/kw_backend.h"
#include "model/kw_kvcache.h"
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

/* The direct composition for sharer layer s: max over its targets of the mean over heads of ||fusedV (- base V)||,
 * the projection by kw_projector over all n rows, the norms in double. */
static void direct_scores(env *e, int32_t s, int delta, const float *sk, const float *sv, const float *rk,
                          const float *rv, double *out) {
    const size_t r_per = (size_t)(e->n * e->r_heads * e->r_dim);
    float *fused = malloc(r_per * sizeof(float));
    assert_non_null(fused);
    kw_projector_ws *ws = NULL;
    assert_int_equal(kw_projector_ws_create(e->be, 0, &ws), 0);
    int targets = 0;
    for (int64_t p = 0; p < e->n; ++p)
        out[p] = 0.0;
    for (int32_t t = 0; t < e->r_layers; ++t) {
        int32_t src = -1;
        const kw_fuser_projector *fp = NULL;
        if (kw_fuser_layer(e->fuser, t, &src, &fp) < 0 || fp == NULL || src != s) continue;
        kw_projector *proj = NULL;
        assert_int_equal(kw_projector_create_from_fuser(e->be, e->fuser, (int32_t)(fp - e->fuser->projectors), &proj),
                         0);
        int ko = 0, vo = 0;
        kw_projector_gates(proj, NULL, NULL, &ko, &vo);
        if (!ko && !vo) {
            kw_projector_free(proj);
            continue;
        }
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
            const double score = sum / e->r_heads;
            if (targets == 0 || score > out[p]) out[p] = score;
        }
        ++targets;
        kw_tensor_free(&tsk), kw_tensor_free(&tsv), kw_tensor_free(&tbk), kw_tensor_free(&tbv), kw_tensor_free(&tout);
        kw_projector_free(proj);
    }
    assert_true(targets > 0);
    kw_projector_ws_free(ws);
    free(fused);
}

/* The scorer's scores of every needed sharer layer, (s_layers, n) (0 for a layer not needed). */
static void scorer_scores(env *e, enum kw_select_mode mode, enum kw_dtype dtype, const kw_wire_policy *q,
                          const float *sk, const float *sv, float *out) {
    const kw_rscore_options ro = {.mode = mode,
                                  .numerics = KW_PROJECTOR_FP32,
                                  .cache_dtype = dtype,
                                  .quantize = q ? kw_share_wire_rscore_quantize : NULL,
                                  .quantize_user = (void *)q};
    kw_rscore *r = NULL;
    assert_int_equal(kw_rscore_create(e->recv, e->fusion, 0, e->prompt, e->n, &ro, &r), 0);
    int32_t layers[16], n_layers = 0;
    assert_int_equal(kw_fusion_needed_layers(e->fusion, 0, layers, 16, &n_layers), 0);
    memset(out, 0, (size_t)(e->s_layers * e->n) * sizeof(float));
    const size_t s_per = (size_t)(e->n * e->s_heads * e->s_dim);
    for (int32_t i = 0; i < n_layers; ++i) {
        const int32_t l = layers[i];
        if (kw_rscore_layer(r, l, 0, e->n, sk + s_per * (size_t)l, sv + s_per * (size_t)l, out + e->n * l) < 0)
            fail_msg("rscore: %s", kw_error_detail());
    }
    const kw_rscore_stats *st = kw_rscore_get_stats(r);
    assert_true(st->projections >= n_layers);
    kw_rscore_free(r);
}

static void check_against_direct(enum kw_select_mode mode, const char *fuser_dir, int want_multi) {
    env e;
    env_open_with(&e, NULL, 2, fuser_dir);
    float *sk, *sv, *rk, *rv;
    prefill_rows(&e, e.sharer, KW_DTYPE_F32, &sk, &sv);
    prefill_rows(&e, e.recv, KW_DTYPE_F32, &rk, &rv);
    float *got = malloc((size_t)(e.s_layers * e.n) * sizeof(float));
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
        direct_scores(&e, l, mode == KW_SELECT_DELTA_PROJ_VNORM, sk + s_per * (size_t)l, sv + s_per * (size_t)l, rk, rv,
                      want);
        for (int64_t p = 0; p < e.n; ++p) {
            const double g = got[e.n * l + p];
            if (!(fabs(g - want[p]) <= 1e-5 * fmax(1.0, fabs(want[p]))))
                fail_msg("layer %d position %lld: %.9g, direct %.9g", (int)l, (long long)p, g, want[p]);
        }
    }
    assert_int_equal(multi, want_multi); /* with two targets the score is the larger of the two */
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
    const size_t total = (size_t)(e.s_layers * e.n);
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

/* What kw_share_run handed over per layer. */
typedef struct share_log {
    int32_t layers;
    int32_t layer[16];
    int64_t n_rows[16];
    int64_t positions[16][256];
} share_log;

static int log_layer(void *user, const kw_share_layer *l) {
    share_log *log = user;
    assert_true(log->layers < 16 && l->n_rows <= 256);
    log->layer[log->layers] = l->layer;
    log->n_rows[log->layers] = l->n_rows;
    memcpy(log->positions[log->layers], l->positions, (size_t)l->n_rows * sizeof(int64_t));
    ++log->layers;
    return 0;
}

/* The share sends the top-k of the scorer's scores, each layer its own. */
static void test_share_selects_top(void **state) {
    (void)state;
    env e;
    env_open(&e, NULL, 2);
    float *sk, *sv;
    prefill_rows(&e, e.sharer, KW_DTYPE_F32, &sk, &sv);
    float *scores = malloc((size_t)(e.s_layers * e.n) * sizeof(float));
    assert_non_null(scores);
    scorer_scores(&e, KW_SELECT_PROJ_VNORM, KW_DTYPE_F32, NULL, sk, sv, scores);
    int32_t layers[16], n_layers = 0;
    assert_int_equal(kw_fusion_needed_layers(e.fusion, 0, layers, 16, &n_layers), 0);
    const kw_rscore_options ro = {
        .mode = KW_SELECT_PROJ_VNORM, .numerics = KW_PROJECTOR_FP32, .cache_dtype = KW_DTYPE_F32};
    kw_rscore *r = NULL;
    assert_int_equal(kw_rscore_create(e.recv, e.fusion, 0, e.prompt, e.n, &ro, &r), 0);
    const kw_fusion_section secs[2] = {{e.n, 1}, {1, -1}};
    share_log log;
    memset(&log, 0, sizeof log);
    const kw_share_options so = {.sections = secs,
                                 .n_sections = 2,
                                 .layers = layers,
                                 .n_layers = n_layers,
                                 .select = {.mode = KW_SELECT_PROJ_VNORM, .proportion = 0.3, .min_tokens = 1},
                                 .score = kw_rscore_share_score,
                                 .score_user = r,
                                 .cache_dtype = KW_DTYPE_F32,
                                 .on_layer = log_layer,
                                 .user = &log};
    kw_share_stats st;
    assert_int_equal(kw_share_run(e.sharer, e.prompt, e.n, &so, &st), 0);
    assert_int_equal(log.layers, n_layers);
    const int64_t k = kw_select_count(&so.select, e.n);
    int differ = 0;
    for (int32_t i = 0; i < n_layers; ++i) {
        const float *sc = scores + e.n * layers[i];
        assert_int_equal(log.n_rows[i], k);
        /* every sent row scores at least as high as every row left out (ties: the lower position went) */
        float min_in = INFINITY;
        int64_t min_in_pos = -1;
        for (int64_t j = 0; j < k; ++j)
            if (sc[log.positions[i][j]] < min_in) min_in = sc[log.positions[i][j]], min_in_pos = log.positions[i][j];
        for (int64_t p = 0, j = 0; p < e.n; ++p) {
            if (j < k && log.positions[i][j] == p) {
                ++j;
                continue;
            }
            assert_true(sc[p] < min_in || (sc[p] == min_in && p > min_in_pos));
        }
        if (i > 0) differ |= memcmp(log.positions[i], log.positions[0], (size_t)k * sizeof(int64_t)) != 0;
    }
    (void)differ; /* layers may or may not agree; each was checked against its own scores */
    /* without the scorer the receiver-aware selection is refused */
    kw_share_options bad = so;
    bad.score = NULL;
    assert_int_equal(kw_share_run(e.sharer, e.prompt, e.n, &bad, NULL), KW_E_INVALID_ARG);
    kw_rscore_free(r);
    free(scores), free(sk), free(sv);
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
        total = (size_t)(e.s_layers * e.n) * 2;
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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vnorm_formula),         cmocka_unit_test(test_top_scores_ties),
        cmocka_unit_test(test_proj_against_direct),   cmocka_unit_test(test_delta_against_direct),
        cmocka_unit_test(test_delta_exact_codec),     cmocka_unit_test(test_share_selects_top),
        cmocka_unit_test(test_isa_thread_invariance),
    };
    const int failed = cmocka_run_group_tests(tests, NULL, NULL);
    if (open_fuser_dir[0]) kw_test_remove_tree(open_fuser_dir);
    return failed;
}
