/* test_fusion.c: the C2C fusion pipeline (c2c/kw_fusion.h) against RosettaModel (C2C reference, wrapper.py at
 * d03cc7b) on the tiny models and fusers of tests/data/c2c/fusion (tools/make_c2c_fixtures.py): for every scenario of
 * pipeline.kwfx (receiver only; the standard L-1/1 split; parallel with one sharer; cache proportion 0.5 front and
 * back and 0.3 back; a general section list with index values 1, -1, 1, 0, -1; two sharers sequential and parallel;
 * sections selecting sharer 2 then sharer 1) the 32 greedy tokens must be identical and the receiver cache after the
 * prompt (fused rows and the last token's) within the fp32 tolerance. Then: closed gates leave rows bit-identical,
 * parallel equals sequential for one sharer, the section builders, the transfer hook (identity: same bits;
 * perturbation: a different result; failure: reported), and bad input. The step-by-step session API (what the
 * receiver half drives): a selection of positions gets exactly the fully fused rows there and the receiver's own rows
 * elsewhere; rows arriving out of order (layers reversed, sharer 1 before sharer 0) give kw_fusion_run's bits;
 * parallel mode refuses sharers that sent other positions; misuse is refused.
 *
 * Tolerance: everything is fp32 on both sides (fp32 models, fp32 projectors from the bf16 weights, f32 caches); what
 * differs is summation order, ~1e-6 relative (see tests/model/test_model_parity.c), so max |ours - ref| / max |ref|
 * <= 1e-4 per cache layer. Greedy tokens are compared exactly: the fixture generator picked a prompt whose every
 * step keeps a relative top-2 logit margin >= 1e-4 in every scenario, far above fp32 noise. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "c2c/kw_fusion.h"
#include "c2c/kw_share.h"
#include "common/kw_status.h"
#include "kernels/kw_backend.h"
#include "../model/model_fixture.h"

#define FP32_TOL 1e-4
#define DATA     KW_TEST_DATA_DIR "/c2c/fusion"

typedef struct env {
    kw_backend *be;
    kw_model *recv, *sh_a, *sh_b;
    kw_fuser *fu_a, *fu_b;
    kw_fusion *one, *two; /* [qwen2] and [qwen2, llama] */
    kwfx fx;
    int64_t L, G;
    const int32_t *prompt;
    int32_t n_layers, n_heads, head_dim;
} env;

static env E;

static kw_model *load_model(const char *name) {
    kw_model *m = NULL;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", DATA, name);
    const int rc = kw_model_load(E.be, dir, NULL, &m);
    if (rc < 0) fail_msg("%s: %s (%s)", name, kw_status_name(rc), kw_error_detail());
    return m;
}

static kw_fuser *load_fuser(const char *name) {
    kw_fuser *f = NULL;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", DATA, name);
    const int rc = kw_fuser_load(dir, 0, &f);
    if (rc < 0) fail_msg("%s: %s (%s)", name, kw_status_name(rc), kw_error_detail());
    return f;
}

static int setup(void **state) {
    (void)state;
    memset(&E, 0, sizeof E);
    if (kw_backend_create_cpu(2, &E.be) < 0) return -1;
    E.recv = load_model("receiver_qwen3");
    E.sh_a = load_model("sharer_qwen2");
    E.sh_b = load_model("sharer_llama");
    E.fu_a = load_fuser("fuser_qwen2");
    E.fu_b = load_fuser("fuser_llama");
    const kw_fusion_sharer sh[2] = {{.model = E.sh_a, .fuser = E.fu_a}, {.model = E.sh_b, .fuser = E.fu_b}};
    int rc = kw_fusion_create(E.recv, sh, 1, 0, &E.one);
    if (rc == 0) rc = kw_fusion_create(E.recv, sh, 2, 0, &E.two);
    if (rc < 0) fail_msg("fusion: %s (%s)", kw_status_name(rc), kw_error_detail());
    if (kwfx_load(DATA "/pipeline.kwfx", &E.fx) < 0) fail_msg("pipeline.kwfx: %s", kw_error_detail());
    int64_t n = 0;
    const int32_t *meta = kwfx_i32(&E.fx, "meta", &n);
    assert_int_equal(n, 3);
    E.L = meta[0];
    E.G = meta[1];
    E.prompt = kwfx_i32(&E.fx, "prompt_ids", &n);
    assert_int_equal(n, E.L);
    const kw_model_config *c = kw_model_get_config(E.recv);
    E.n_layers = c->n_layers, E.n_heads = c->n_kv_heads, E.head_dim = c->head_dim;
    return 0;
}

static int teardown(void **state) {
    (void)state;
    kw_fusion_free(E.one);
    kw_fusion_free(E.two);
    kw_fuser_free(E.fu_a);
    kw_fuser_free(E.fu_b);
    kw_model_free(E.recv);
    kw_model_free(E.sh_a);
    kw_model_free(E.sh_b);
    kw_backend_destroy(E.be);
    kwfx_free(&E.fx);
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * Running scenarios
 */

typedef struct scenario {
    kw_fusion_section sections[8];
    int32_t n_sections;
    int32_t n_sharers;
    enum kw_fusion_mode mode;
} scenario;

static scenario fixture_scenario(const char *name) {
    scenario s;
    memset(&s, 0, sizeof s);
    char key[64];
    int64_t n = 0;
    snprintf(key, sizeof key, "%s.config", name);
    const int32_t *cfg = kwfx_i32(&E.fx, key, &n);
    if (!cfg || n != 2) fail_msg("fixture has no %s", key);
    s.n_sharers = cfg[0];
    s.mode = cfg[1] ? KW_FUSION_PARALLEL : KW_FUSION_SEQUENTIAL;
    snprintf(key, sizeof key, "%s.sections", name);
    const int32_t *sec = kwfx_i32(&E.fx, key, &n);
    if (!sec || n % 2 || n / 2 > 8) fail_msg("fixture has no valid %s", key);
    s.n_sections = (int32_t)(n / 2);
    for (int32_t i = 0; i < s.n_sections; ++i)
        s.sections[i] = (kw_fusion_section){sec[2 * i], sec[2 * i + 1]};
    return s;
}

typedef struct run_out {
    kw_kvcache *cache;
    kw_fusion_result res;
} run_out;

static int run_ex(const scenario *s, enum kw_dtype cache_dtype, enum kw_projector_numerics num, kw_fusion_hook_fn hook,
                  void *user, run_out *o) {
    memset(o, 0, sizeof *o);
    assert_int_equal(kw_model_create_cache(E.recv, E.L + E.G + 8, cache_dtype, &o->cache), 0);
    kw_fusion_options opt = {
        .sections = s->sections,
        .n_sections = s->n_sections,
        .mode = s->mode,
        .numerics = num,
        .sharer_cache_dtype = cache_dtype,
        .gen = {.max_new_tokens = (int32_t)E.G,
                .round = cache_dtype == KW_DTYPE_F32 ? KW_LOGITS_ROUND_NONE : KW_LOGITS_ROUND_AUTO},
        .hook = hook,
        .hook_user = user};
    return kw_fusion_run(s->n_sharers == 2 ? E.two : E.one, o->cache, E.prompt, E.L, &opt, &o->res);
}

static void run(const scenario *s, enum kw_dtype cache_dtype, kw_fusion_hook_fn hook, void *user, run_out *o) {
    const int rc =
        run_ex(s, cache_dtype, cache_dtype == KW_DTYPE_F32 ? KW_PROJECTOR_FP32 : KW_PROJECTOR_BF16, hook, user, o);
    if (rc < 0) fail_msg("run: %s (%s)", kw_status_name(rc), kw_error_detail());
}

static void run_free(run_out *o) {
    kw_fusion_result_free(&o->res);
    kw_kvcache_free(o->cache);
}

/* Rows [0, L) of layer l as (H, L, D), the fixture's layout. */
static void cache_rows(kw_kvcache *c, int32_t l, float *k, float *v) {
    const int64_t H = E.n_heads, D = E.head_dim, L = E.L;
    float *tk = malloc((size_t)(L * H * D) * sizeof *tk), *tv = malloc((size_t)(L * H * D) * sizeof *tv);
    assert_true(tk && tv);
    assert_int_equal(kw_kvcache_read_rows(c, l, 0, L, tk, tv), 0);
    for (int64_t p = 0; p < L; ++p)
        for (int64_t h = 0; h < H; ++h) {
            memcpy(k + (h * L + p) * D, tk + (p * H + h) * D, (size_t)D * sizeof *k);
            memcpy(v + (h * L + p) * D, tv + (p * H + h) * D, (size_t)D * sizeof *v);
        }
    free(tk);
    free(tv);
}

static const float *ref_f32(const char *name, int64_t expect) {
    return kwfx_f32_expect(&E.fx, name, expect);
}

/* ------------------------------------------------------------------------------------------------------------
 * Parity with the reference
 */

static void check_scenario(const char *name) {
    const scenario s = fixture_scenario(name);
    run_out o;
    run(&s, KW_DTYPE_F32, NULL, NULL, &o);
    char key[64];
    int64_t n = 0;
    snprintf(key, sizeof key, "%s.gen_ids", name);
    const int32_t *gen = kwfx_i32(&E.fx, key, &n);
    assert_non_null(gen);
    assert_int_equal(o.res.gen.n, n);
    for (int64_t i = 0; i < n; ++i)
        if (o.res.gen.ids[i] != gen[i])
            fail_msg("%s: token %lld is %d, reference %d", name, (long long)i, (int)o.res.gen.ids[i], (int)gen[i]);
    const int64_t cnt = E.n_heads * E.L * E.head_dim;
    float *k = malloc((size_t)cnt * sizeof *k), *v = malloc((size_t)cnt * sizeof *v);
    double worst = 0;
    for (int32_t l = 0; l < E.n_layers; ++l) {
        cache_rows(o.cache, l, k, v);
        snprintf(key, sizeof key, "%s.k.%d", name, (int)l);
        const double dk = kwfx_rel_diff(k, ref_f32(key, cnt), cnt);
        snprintf(key, sizeof key, "%s.v.%d", name, (int)l);
        const double dv = kwfx_rel_diff(v, ref_f32(key, cnt), cnt);
        worst = fmax(worst, fmax(dk, dv));
    }
    const kw_fusion_stats *st = &o.res.stats;
    print_message("  %-8s %lld tokens identical; cache rel diff %.3g; fused %lld tokens, layers fused %d skipped %d, "
                  "sharer KV %lld B\n",
                  name, (long long)n, worst, (long long)st->tokens_fused, (int)st->layers_fused,
                  (int)st->layers_skipped, (long long)st->sharer_kv_bytes);
    assert_true(worst <= FP32_TOL);
    free(k);
    free(v);
    run_free(&o);
}

static void test_parity_receiver_only(void **state) {
    (void)state;
    check_scenario("recv");
}
static void test_parity_standard(void **state) {
    (void)state;
    check_scenario("std");
}
static void test_parity_parallel_one_sharer(void **state) {
    (void)state;
    check_scenario("par1");
}
static void test_parity_proportion(void **state) {
    (void)state;
    check_scenario("front50");
    check_scenario("back50");
    check_scenario("back30");
}
static void test_parity_general_sections(void **state) {
    (void)state;
    check_scenario("general");
}
static void test_parity_two_sharers(void **state) {
    (void)state;
    check_scenario("seq2");
    check_scenario("par2");
    check_scenario("mask21");
}

/* ------------------------------------------------------------------------------------------------------------
 * Invariants
 */

/* fuser_qwen2: layer 1 has both gates closed, layer 2 only K open, layer 3 only V open. Against the receiver-only
 * run, the untouched rows must be the same bits, the fused ones must differ; the stats must say so. */
static void test_closed_gates_bit_identical(void **state) {
    (void)state;
    const scenario recv = fixture_scenario("recv"), std = fixture_scenario("std");
    for (int dt = 0; dt < 2; ++dt) {
        const enum kw_dtype cd = dt ? KW_DTYPE_BF16 : KW_DTYPE_F32;
        run_out a, b;
        run(&recv, cd, NULL, NULL, &a);
        run(&std, cd, NULL, NULL, &b);
        const int64_t cnt = E.n_heads * E.L * E.head_dim;
        float *ka = malloc((size_t)cnt * 4), *va = malloc((size_t)cnt * 4), *kb = malloc((size_t)cnt * 4),
              *vb = malloc((size_t)cnt * 4);
        const int open[4][2] = {{1, 1}, {0, 0}, {1, 0}, {0, 1}};
        for (int32_t l = 0; l < E.n_layers; ++l) {
            cache_rows(a.cache, l, ka, va);
            cache_rows(b.cache, l, kb, vb);
            /* the last token's row is computed on the fused cache, so compare the fused section only */
            for (int br = 0; br < 2; ++br) {
                const float *x = br ? va : ka, *y = br ? vb : kb;
                int same = 1;
                for (int64_t h = 0; h < E.n_heads; ++h)
                    same &= memcmp(x + h * E.L * E.head_dim, y + h * E.L * E.head_dim,
                                   (size_t)((E.L - 1) * E.head_dim) * 4) == 0;
                if (same == open[l][br])
                    fail_msg("%s cache, layer %d %c: rows %s but the gate is %s", kw_dtype_name(cd), (int)l,
                             br ? 'V' : 'K', same ? "unchanged" : "changed", open[l][br] ? "open" : "closed");
            }
        }
        assert_int_equal(b.res.stats.tokens_fused, E.L - 1);
        assert_int_equal(b.res.stats.layers_fused, 3);
        assert_int_equal(b.res.stats.layers_skipped, 1);
        /* sharer layers {0, 1, 2} feed the open receiver layers {0, 2, 3} (last_aligned 4 <- 3: 0, 0, 1, 2) */
        assert_int_equal(b.res.stats.sharer_kv_bytes, 3 * 2 * (E.L - 1) * 2 * 8 * (int64_t)kw_dtype_size(cd));
        assert_int_equal(a.res.stats.tokens_fused, 0);
        assert_int_equal(a.res.stats.sharer_kv_bytes, 0);
        free(ka), free(va), free(kb), free(vb);
        run_free(&a);
        run_free(&b);
    }
}

/* With one sharer, parallel (base + (proj - base), fp32) equals sequential up to the rounding of that sum: one fp32
 * rounding of each value in an f32 cache; in a bf16 cache the stored value may land one bf16 step away at most. */
static void test_parallel_equals_sequential_one_sharer(void **state) {
    (void)state;
    scenario s = fixture_scenario("std");
    for (int dt = 0; dt < 2; ++dt) {
        const enum kw_dtype cd = dt ? KW_DTYPE_BF16 : KW_DTYPE_F32;
        run_out a, b;
        s.mode = KW_FUSION_SEQUENTIAL;
        run(&s, cd, NULL, NULL, &a);
        s.mode = KW_FUSION_PARALLEL;
        run(&s, cd, NULL, NULL, &b);
        const int64_t cnt = E.n_heads * E.L * E.head_dim;
        float *ka = malloc((size_t)cnt * 4), *va = malloc((size_t)cnt * 4), *kb = malloc((size_t)cnt * 4),
              *vb = malloc((size_t)cnt * 4);
        int64_t differ = 0;
        for (int32_t l = 0; l < E.n_layers; ++l) {
            cache_rows(a.cache, l, ka, va);
            cache_rows(b.cache, l, kb, vb);
            for (int64_t i = 0; i < cnt; ++i) {
                const float x[2] = {ka[i], va[i]}, y[2] = {kb[i], vb[i]};
                for (int j = 0; j < 2; ++j) {
                    /* one rounding step of the sum: 2^-23 relative (f32) or 2^-7 (bf16, an adjacent value) */
                    const double step = (dt ? 1.0 / 128 : 1.0 / 8388608) * fabs((double)x[j]);
                    if (x[j] != y[j]) ++differ;
                    if (fabs((double)x[j] - (double)y[j]) > step)
                        fail_msg("layer %d: %.9g vs %.9g", (int)l, x[j], y[j]);
                }
            }
        }
        print_message("  %s cache: parallel vs sequential, %lld of %lld values one rounding apart, tokens %s\n",
                      kw_dtype_name(cd), (long long)differ, (long long)(2 * cnt * E.n_layers),
                      memcmp(a.res.gen.ids, b.res.gen.ids, (size_t)a.res.gen.n * 4) ? "differ" : "identical");
        if (!dt) assert_memory_equal(a.res.gen.ids, b.res.gen.ids, (size_t)a.res.gen.n * 4);
        free(ka), free(va), free(kb), free(vb);
        run_free(&a);
        run_free(&b);
    }
}

static void expect_sections(const kw_fusion_section *got, int32_t n, const int64_t *want, int32_t n_want) {
    assert_int_equal(n, n_want);
    for (int32_t i = 0; i < n; ++i) {
        assert_int_equal(got[i].length, want[2 * i]);
        assert_int_equal(got[i].index, want[2 * i + 1]);
    }
}

/* The builders against the fixture's sections (computed with the reference's run-splitting) and edge cases. */
static void test_section_builders(void **state) {
    (void)state;
    kw_fusion_section s[3];
    int32_t n = 0;
    const struct {
        const char *name;
        double p;
        enum kw_fusion_order order;
    } cases[] = {{"front50", 0.5, KW_FUSION_FRONT}, {"back50", 0.5, KW_FUSION_BACK}, {"back30", 0.3, KW_FUSION_BACK}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; ++c) {
        assert_int_equal(kw_fusion_sections_proportion(E.L, cases[c].p, cases[c].order, 1, s, &n), 0);
        const scenario want = fixture_scenario(cases[c].name);
        assert_int_equal(n, want.n_sections);
        for (int32_t i = 0; i < n; ++i) {
            assert_int_equal(s[i].length, want.sections[i].length);
            assert_int_equal(s[i].index, want.sections[i].index);
        }
    }
    assert_int_equal(kw_fusion_sections_standard(E.L, 1, s, &n), 0);
    expect_sections(s, n, (int64_t[]){E.L - 1, 1, 1, -1}, 2);
    assert_int_equal(kw_fusion_sections_standard(1, 1, s, &n), 0);
    expect_sections(s, n, (int64_t[]){1, -1}, 1);
    /* p = 1 is the standard split; p = 0 is the receiver alone, in either order */
    assert_int_equal(kw_fusion_sections_proportion(24, 1.0, KW_FUSION_BACK, 3, s, &n), 0);
    expect_sections(s, n, (int64_t[]){23, 3, 1, -1}, 2);
    assert_int_equal(kw_fusion_sections_proportion(24, 0.0, KW_FUSION_FRONT, 1, s, &n), 0);
    expect_sections(s, n, (int64_t[]){24, -1}, 1);
    assert_int_equal(kw_fusion_sections_proportion(24, 0.0, KW_FUSION_BACK, 1, s, &n), 0);
    expect_sections(s, n, (int64_t[]){24, -1}, 1);
    /* int(23 * 0.3) = int(6.8999999999999995) = 6, not 7 */
    assert_int_equal(kw_fusion_sections_proportion(24, 0.3, KW_FUSION_FRONT, 2, s, &n), 0);
    expect_sections(s, n, (int64_t[]){6, 2, 18, -1}, 2);
    /* a mask <= 0 fuses nothing: one run */
    assert_int_equal(kw_fusion_sections_proportion(24, 0.5, KW_FUSION_BACK, -1, s, &n), 0);
    expect_sections(s, n, (int64_t[]){24, -1}, 1);
    assert_int_equal(kw_fusion_sections_proportion(1, 0.5, KW_FUSION_BACK, 1, s, &n), 0);
    expect_sections(s, n, (int64_t[]){1, -1}, 1);
    assert_int_equal(kw_fusion_sections_proportion(24, 1.5, KW_FUSION_BACK, 1, s, &n), KW_E_INVALID_ARG);
    assert_int_equal(kw_fusion_sections_proportion(24, NAN, KW_FUSION_BACK, 1, s, &n), KW_E_INVALID_ARG);
    assert_int_equal(kw_fusion_sections_proportion(24, 0.5, (enum kw_fusion_order)2, 1, s, &n), KW_E_INVALID_ARG);
    assert_int_equal(kw_fusion_sections_standard(0, 1, s, &n), KW_E_INVALID_ARG);
}

/* ------------------------------------------------------------------------------------------------------------
 * The transfer hook
 */

typedef struct hook_log {
    int calls;
    int layers_seen; /* bitmask of source layers */
    int64_t tokens;
    float scale;   /* perturbation: K *= scale (1 = identity) */
    int fail_at;   /* call number that fails (0: never) */
    int bad_shape; /* calls with unexpected geometry */
} hook_log;

static int hook(void *user, kw_fusion_transfer *t) {
    hook_log *h = user;
    ++h->calls;
    if (h->fail_at && h->calls == h->fail_at) return kw_error_set(KW_E_WIRE_CORRUPT, "test hook: injected failure");
    h->layers_seen |= 1 << t->source_layer;
    h->tokens = t->n_tokens;
    if (t->sharer != 0 || t->n_heads != 2 || t->head_dim != 8 || t->pos0 != 0 || t->section != 0 ||
        t->n_source_layers != 3 || t->n_layers_sent != 3 || t->layer_index != t->source_layer)
        ++h->bad_shape;
    for (int64_t i = 0; i < t->n_tokens * t->n_heads * t->head_dim; ++i)
        t->k[i] *= h->scale;
    t->wire_bytes = 1000 + t->source_layer;
    return 0;
}

static void test_transfer_hook(void **state) {
    (void)state;
    const scenario s = fixture_scenario("std");
    run_out plain, same, moved;
    run(&s, KW_DTYPE_BF16, NULL, NULL, &plain);
    hook_log id = {.scale = 1.0f};
    run(&s, KW_DTYPE_BF16, hook, &id, &same);
    assert_int_equal(id.calls, 3); /* sharer layers 0, 1, 2 (layer 1's receiver target is closed, 0 feeds two) */
    assert_int_equal(id.layers_seen, 0x7);
    assert_int_equal(id.tokens, E.L - 1);
    assert_int_equal(id.bad_shape, 0);
    assert_int_equal(same.res.stats.hook_calls, 3);
    assert_int_equal(same.res.stats.wire_bytes, 3003);
    assert_int_equal(plain.res.stats.wire_bytes, 0);
    /* identity: the same bits as without a hook */
    assert_int_equal(same.res.gen.n, plain.res.gen.n);
    assert_memory_equal(same.res.gen.ids, plain.res.gen.ids, (size_t)plain.res.gen.n * 4);
    const int64_t cnt = E.n_heads * E.L * E.head_dim;
    float *ka = malloc((size_t)cnt * 4), *va = malloc((size_t)cnt * 4), *kb = malloc((size_t)cnt * 4),
          *vb = malloc((size_t)cnt * 4);
    for (int32_t l = 0; l < E.n_layers; ++l) {
        cache_rows(plain.cache, l, ka, va);
        cache_rows(same.cache, l, kb, vb);
        assert_memory_equal(ka, kb, (size_t)cnt * 4);
        assert_memory_equal(va, vb, (size_t)cnt * 4);
    }
    /* a perturbed sharer K changes the fused K rows (layers 0 and 2 have K open) and nothing else of the prefix */
    hook_log pert = {.scale = 3.0f};
    run(&s, KW_DTYPE_BF16, hook, &pert, &moved);
    for (int32_t l = 0; l < E.n_layers; ++l) {
        cache_rows(plain.cache, l, ka, va);
        cache_rows(moved.cache, l, kb, vb);
        int k_same = 1, v_same = 1;
        for (int64_t h = 0; h < E.n_heads; ++h) {
            const size_t off = (size_t)(h * E.L * E.head_dim), len = (size_t)((E.L - 1) * E.head_dim) * 4;
            k_same &= memcmp(ka + off, kb + off, len) == 0;
            v_same &= memcmp(va + off, vb + off, len) == 0;
        }
        assert_int_equal(k_same, !(l == 0 || l == 2));
        assert_true(v_same);
    }
    free(ka), free(va), free(kb), free(vb);
    /* a failing hook stops the run with its status */
    hook_log bad = {.scale = 1.0f, .fail_at = 2};
    run_out o;
    assert_int_equal(run_ex(&s, KW_DTYPE_BF16, KW_PROJECTOR_BF16, hook, &bad, &o), KW_E_WIRE_CORRUPT);
    assert_null(o.res.gen.ids);
    assert_int_equal(o.res.gen.n, 0);
    kw_kvcache_free(o.cache);
    run_free(&plain);
    run_free(&same);
    run_free(&moved);
}

/* The bf16 pipeline (bf16 caches, bf16-emulating projector, bf16-rounded logits) runs end to end and stays near the
 * fp32 reference: each cached value carries one bf16 rounding (2^-9 relative) and the fused rows the projector's bf16
 * noise (D ~ 1e-3 of the fused change in test_projector), compounded over 4 layers of attention; 5e-2 of the largest
 * value allows ~25 bf16 steps and would still catch a missing or misplaced fusion (O(1) relative). */
static void test_bf16_pipeline_near_reference(void **state) {
    (void)state;
    const scenario s = fixture_scenario("std");
    run_out o;
    run(&s, KW_DTYPE_BF16, NULL, NULL, &o);
    const int64_t cnt = E.n_heads * E.L * E.head_dim;
    float *k = malloc((size_t)cnt * 4), *v = malloc((size_t)cnt * 4);
    double worst = 0;
    char key[32];
    for (int32_t l = 0; l < E.n_layers; ++l) {
        cache_rows(o.cache, l, k, v);
        snprintf(key, sizeof key, "std.k.%d", (int)l);
        worst = fmax(worst, kwfx_rel_diff(k, ref_f32(key, cnt), cnt));
        snprintf(key, sizeof key, "std.v.%d", (int)l);
        worst = fmax(worst, kwfx_rel_diff(v, ref_f32(key, cnt), cnt));
    }
    int64_t n = 0, same = 0;
    const int32_t *gen = kwfx_i32(&E.fx, "std.gen_ids", &n);
    while (same < n && same < o.res.gen.n && o.res.gen.ids[same] == gen[same])
        ++same;
    print_message("  bf16 pipeline vs fp32 reference: cache rel diff %.3g, first %lld tokens identical\n", worst,
                  (long long)same);
    assert_true(worst <= 5e-2);
    assert_int_equal(o.res.gen.n, E.G);
    free(k), free(v);
    run_free(&o);
}

static void test_bad_input(void **state) {
    (void)state;
    scenario s = fixture_scenario("std");
    run_out o;
    s.sections[0].length = E.L - 2; /* the sections cover L - 1 tokens */
    assert_int_equal(run_ex(&s, KW_DTYPE_F32, KW_PROJECTOR_FP32, NULL, NULL, &o), KW_E_INVALID_ARG);
    kw_kvcache_free(o.cache);
    s = fixture_scenario("std");
    s.sections[0].index = 2; /* sharer bit 1, but one sharer */
    assert_int_equal(run_ex(&s, KW_DTYPE_F32, KW_PROJECTOR_FP32, NULL, NULL, &o), KW_E_INVALID_ARG);
    assert_non_null(strstr(kw_error_detail(), "sharer"));
    kw_kvcache_free(o.cache);
    s = fixture_scenario("std");
    s.sections[1].index = 6; /* the last section's value is never read */
    assert_int_equal(run_ex(&s, KW_DTYPE_F32, KW_PROJECTOR_FP32, NULL, NULL, &o), 0);
    run_free(&o);
    s.sections[1].length = 0;
    assert_int_equal(run_ex(&s, KW_DTYPE_F32, KW_PROJECTOR_FP32, NULL, NULL, &o), KW_E_INVALID_ARG);
    kw_kvcache_free(o.cache);
    /* a cache that already holds rows */
    s = fixture_scenario("std");
    kw_kvcache *c = NULL;
    assert_int_equal(kw_model_create_cache(E.recv, 100, KW_DTYPE_F32, &c), 0);
    assert_int_equal(kw_model_prefill(E.recv, c, E.prompt, 2), 0);
    kw_fusion_options opt = {.sections = s.sections, .n_sections = s.n_sections, .sharer_cache_dtype = KW_DTYPE_F32};
    kw_fusion_result r;
    assert_int_equal(kw_fusion_run(E.one, c, E.prompt, E.L, &opt, &r), KW_E_INVALID_ARG);
    /* a cache of another model */
    kw_kvcache_free(c);
    assert_int_equal(kw_model_create_cache(E.sh_a, 100, KW_DTYPE_F32, &c), 0);
    assert_int_equal(kw_fusion_run(E.one, c, E.prompt, E.L, &opt, &r), KW_E_INVALID_ARG);
    kw_kvcache_free(c);
    /* a fuser that does not fit: fuser_llama's sharer dims against the qwen2 sharer */
    const kw_fusion_sharer wrong = {.model = E.sh_a, .fuser = E.fu_b};
    kw_fusion *f = NULL;
    assert_int_equal(kw_fusion_create(E.recv, &wrong, 1, 0, &f), KW_E_FUSER_CONFIG);
    assert_null(f);
    kw_fusion_free(NULL);
    kw_fusion_result_free(NULL);
}

/* Two sharers: the hook is called per sharer with that sharer's geometry and layer count, in order. */
typedef struct hook2_log {
    int calls[2];
    int order_ok;
    int last_sharer;
} hook2_log;

static int hook2(void *user, kw_fusion_transfer *t) {
    hook2_log *h = user;
    if (t->sharer < 0 || t->sharer > 1 || t->sharer < h->last_sharer) h->order_ok = 0;
    h->last_sharer = t->sharer;
    const int want_layers = t->sharer == 0 ? 3 : 2, want_sent = t->sharer == 0 ? 3 : 1;
    const int want_heads = t->sharer == 0 ? 2 : 1;
    if (t->n_source_layers != want_layers || t->n_layers_sent != want_sent || t->n_heads != want_heads ||
        t->layer_index != h->calls[t->sharer])
        h->order_ok = 0;
    ++h->calls[t->sharer];
    return 0;
}

static void test_transfer_hook_two_sharers(void **state) {
    (void)state;
    const scenario s = fixture_scenario("seq2");
    run_out plain, hooked;
    run(&s, KW_DTYPE_F32, NULL, NULL, &plain);
    hook2_log h = {.order_ok = 1};
    run(&s, KW_DTYPE_F32, hook2, &h, &hooked);
    /* fuser_llama maps receiver layers 0-2 to llama layer 0 and layer 3 (closed) to layer 1: one layer travels */
    assert_int_equal(h.calls[0], 3);
    assert_int_equal(h.calls[1], 1);
    assert_true(h.order_ok);
    assert_int_equal(hooked.res.stats.hook_calls, 4);
    assert_memory_equal(hooked.res.gen.ids, plain.res.gen.ids, (size_t)plain.res.gen.n * 4);
    run_free(&plain);
    run_free(&hooked);
}

/* ------------------------------------------------------------------------------------------------------------
 * The session API: rows that arrive out of order, selections of positions, and misuse
 */

/* A sharer's K/V rows of every layer after prefilling the first n prompt tokens, (n, H, D) per layer. */
typedef struct sharer_rows {
    int32_t n_layers;
    int64_t per_layer; /* floats per layer */
    float *k, *v;
} sharer_rows;

static void sharer_rows_get(kw_model *m, int64_t n, sharer_rows *out) {
    const kw_model_config *c = kw_model_get_config(m);
    kw_kvcache *sc = NULL;
    assert_int_equal(kw_model_create_cache(m, n, KW_DTYPE_F32, &sc), 0);
    assert_int_equal(kw_model_prefill(m, sc, E.prompt, n), 0);
    out->n_layers = c->n_layers;
    out->per_layer = n * c->n_kv_heads * c->head_dim;
    out->k = malloc((size_t)(out->per_layer * c->n_layers) * sizeof(float));
    out->v = malloc((size_t)(out->per_layer * c->n_layers) * sizeof(float));
    assert_true(out->k && out->v);
    for (int32_t l = 0; l < c->n_layers; ++l)
        assert_int_equal(kw_kvcache_read_rows(sc, l, 0, n, out->k + l * out->per_layer, out->v + l * out->per_layer),
                         0);
    kw_kvcache_free(sc);
}

/* The rows of the positions in pos (NULL: all n) of one sharer layer, gathered into k, v. */
static void gather(const sharer_rows *r, int32_t l, const int64_t *pos, int64_t n_sel, int64_t row_floats, float *k,
                   float *v) {
    for (int64_t i = 0; i < n_sel; ++i) {
        const int64_t p = pos ? pos[i] : i;
        memcpy(k + i * row_floats, r->k + l * r->per_layer + p * row_floats, (size_t)row_floats * sizeof(float));
        memcpy(v + i * row_floats, r->v + l * r->per_layer + p * row_floats, (size_t)row_floats * sizeof(float));
    }
}

static void put_layer(kw_fusion_session *ss, const sharer_rows *r, int32_t sharer, int32_t l, const int64_t *pos,
                      int64_t n_sel, int64_t row_floats) {
    float *k = malloc((size_t)(n_sel * row_floats) * sizeof(float)), *v = malloc((size_t)(n_sel * row_floats) * 4);
    assert_true(k && v);
    gather(r, l, pos, n_sel, row_floats, k, v);
    const kw_fusion_rows rows = {
        .sharer = sharer, .section = 0, .source_layer = l, .n_rows = n_sel, .positions = pos, .k = k, .v = v};
    const int rc = kw_fusion_put(ss, &rows);
    if (rc < 0) fail_msg("put: %s (%s)", kw_status_name(rc), kw_error_detail());
    free(k), free(v);
}

/* Fusing every third position of the section (and its first and last) gives those positions exactly the rows of a
 * full fusion and leaves the others exactly as the receiver computed them; the sharer layers arrive in reverse. */
static void test_session_selected_positions(void **state) {
    (void)state;
    const scenario recv = fixture_scenario("recv"), std = fixture_scenario("std");
    run_out full, alone;
    run(&std, KW_DTYPE_F32, NULL, NULL, &full);
    run(&recv, KW_DTYPE_F32, NULL, NULL, &alone);
    const int64_t L1 = E.L - 1;
    sharer_rows r;
    sharer_rows_get(E.sh_a, L1, &r);
    int64_t pos[64], n_sel = 0;
    for (int64_t p = 0; p < L1; ++p)
        if (p % 3 == 0 || p == L1 - 1) pos[n_sel++] = p;
    assert_true(n_sel < 64);
    kw_kvcache *cache = NULL;
    assert_int_equal(kw_model_create_cache(E.recv, E.L + E.G + 8, KW_DTYPE_F32, &cache), 0);
    const kw_fusion_options opt = {.sections = std.sections,
                                   .n_sections = std.n_sections,
                                   .numerics = KW_PROJECTOR_FP32,
                                   .gen = {.max_new_tokens = 2, .round = KW_LOGITS_ROUND_NONE}};
    kw_fusion_session *ss = NULL;
    assert_int_equal(kw_fusion_begin(E.one, cache, E.prompt, E.L, &opt, &ss), 0);
    int32_t layers[8], n_layers = 0;
    assert_int_equal(kw_fusion_needed_layers(E.one, 0, layers, 8, &n_layers), 0);
    assert_int_equal(n_layers, 3); /* sharer layers 0, 1, 2 feed the open receiver layers */
    const kw_model_config *sc = kw_model_get_config(E.sh_a);
    const int64_t row_floats = (int64_t)sc->n_kv_heads * sc->head_dim;
    /* rows before their section is prefilled are refused */
    const kw_fusion_rows early = {.sharer = 0, .section = 0, .source_layer = 0, .n_rows = 1, .k = r.k, .v = r.v};
    assert_int_equal(kw_fusion_put(ss, &early), KW_E_STATE);
    assert_int_equal(kw_fusion_prefill(ss, 0), 0);
    for (int32_t i = n_layers - 1; i >= 0; --i)
        put_layer(ss, &r, 0, layers[i], pos, n_sel, row_floats);
    assert_int_equal(kw_fusion_end_section(ss, 0), 0);
    kw_fusion_result res;
    assert_int_equal(kw_fusion_generate(ss, &res), 0);
    assert_int_equal(res.stats.tokens_fused, n_sel);
    assert_int_equal(res.stats.layers_fused, 3);
    const int64_t cnt = E.n_heads * E.L * E.head_dim;
    float *k = malloc((size_t)cnt * 4), *v = malloc((size_t)cnt * 4), *kf = malloc((size_t)cnt * 4),
          *vf = malloc((size_t)cnt * 4), *ka = malloc((size_t)cnt * 4), *va = malloc((size_t)cnt * 4);
    for (int32_t l = 0; l < E.n_layers; ++l) {
        cache_rows(cache, l, k, v);
        cache_rows(full.cache, l, kf, vf);
        cache_rows(alone.cache, l, ka, va);
        for (int64_t h = 0; h < E.n_heads; ++h)
            for (int64_t p = 0, j = 0; p < L1; ++p) {
                const int sel = j < n_sel && pos[j] == p;
                j += sel;
                const size_t off = (size_t)((h * E.L + p) * E.head_dim), bytes = (size_t)E.head_dim * 4;
                assert_memory_equal(k + off, (sel ? kf : ka) + off, bytes);
                assert_memory_equal(v + off, (sel ? vf : va) + off, bytes);
            }
    }
    free(k), free(v), free(kf), free(vf), free(ka), free(va);
    free(r.k), free(r.v);
    kw_fusion_result_free(&res);
    kw_fusion_session_free(ss);
    kw_kvcache_free(cache);
    run_free(&full);
    run_free(&alone);
}

/* Two sharers, sequential: sharer 1's rows arriving before sharer 0's wait for them, and the cache ends up the same
 * bits as kw_fusion_run's. Parallel mode refuses sharers that sent other positions. Misuse is refused. */
static void test_session_two_sharers_out_of_order(void **state) {
    (void)state;
    const scenario seq2 = fixture_scenario("seq2");
    run_out ref;
    run(&seq2, KW_DTYPE_F32, NULL, NULL, &ref);
    const int64_t L1 = seq2.sections[0].length;
    sharer_rows ra, rb;
    sharer_rows_get(E.sh_a, L1, &ra);
    sharer_rows_get(E.sh_b, L1, &rb);
    const kw_model_config *ca = kw_model_get_config(E.sh_a), *cb = kw_model_get_config(E.sh_b);
    const int64_t fa = (int64_t)ca->n_kv_heads * ca->head_dim, fb = (int64_t)cb->n_kv_heads * cb->head_dim;
    int32_t la[8], lb[8], na = 0, nb = 0;
    assert_int_equal(kw_fusion_needed_layers(E.two, 0, la, 8, &na), 0);
    assert_int_equal(kw_fusion_needed_layers(E.two, 1, lb, 8, &nb), 0);
    for (int parallel = 0; parallel <= 1; ++parallel) {
        kw_kvcache *cache = NULL;
        assert_int_equal(kw_model_create_cache(E.recv, E.L + E.G + 8, KW_DTYPE_F32, &cache), 0);
        const kw_fusion_options opt = {.sections = seq2.sections,
                                       .n_sections = seq2.n_sections,
                                       .mode = parallel ? KW_FUSION_PARALLEL : KW_FUSION_SEQUENTIAL,
                                       .numerics = KW_PROJECTOR_FP32,
                                       .gen = {.max_new_tokens = (int32_t)E.G, .round = KW_LOGITS_ROUND_NONE}};
        kw_fusion_session *ss = NULL;
        assert_int_equal(kw_fusion_begin(E.two, cache, E.prompt, E.L, &opt, &ss), 0);
        assert_int_equal(kw_fusion_prefill(ss, 1), KW_E_STATE); /* out of order */
        assert_int_equal(kw_fusion_prefill(ss, 0), 0);
        if (parallel) { /* sharer 1 sends the first half only: not what sharer 0 sends */
            int64_t half[32];
            for (int64_t p = 0; p < L1 / 2; ++p)
                half[p] = p;
            for (int32_t i = 0; i < nb; ++i)
                put_layer(ss, &rb, 1, lb[i], half, L1 / 2, fb);
            int rc = 0;
            for (int32_t i = 0; i < na && rc == 0; ++i) {
                float *k = malloc((size_t)(L1 * fa) * 4), *v = malloc((size_t)(L1 * fa) * 4);
                gather(&ra, la[i], NULL, L1, fa, k, v);
                const kw_fusion_rows rows = {
                    .sharer = 0, .section = 0, .source_layer = la[i], .n_rows = L1, .k = k, .v = v};
                rc = kw_fusion_put(ss, &rows);
                free(k), free(v);
            }
            assert_int_equal(rc, KW_E_UNSUPPORTED);
            kw_fusion_session_free(ss);
            kw_kvcache_free(cache);
            continue;
        }
        for (int32_t i = 0; i < nb; ++i) /* sharer 1 first: it must wait for sharer 0 at every layer */
            put_layer(ss, &rb, 1, lb[i], NULL, L1, fb);
        for (int32_t i = 0; i < na; ++i)
            put_layer(ss, &ra, 0, la[i], NULL, L1, fa);
        /* misuse: a layer twice, a layer fusion does not use, a sharer the section does not select */
        const kw_fusion_rows dup = {
            .sharer = 0, .section = 0, .source_layer = la[0], .n_rows = L1, .k = ra.k, .v = ra.v};
        assert_int_equal(kw_fusion_put(ss, &dup), KW_E_INVALID_ARG);
        const kw_fusion_rows unused = {
            .sharer = 1, .section = 0, .source_layer = 1, .n_rows = L1, .k = rb.k, .v = rb.v};
        assert_int_equal(kw_fusion_put(ss, &unused), KW_E_INVALID_ARG);
        const int64_t bad_pos[2] = {3, 3};
        const kw_fusion_rows unsorted = {
            .sharer = 0, .section = 0, .source_layer = 0, .n_rows = 2, .positions = bad_pos, .k = ra.k, .v = ra.v};
        assert_int_equal(kw_fusion_put(ss, &unsorted), KW_E_INVALID_ARG);
        assert_int_equal(kw_fusion_end_section(ss, 0), 0);
        assert_int_equal(kw_fusion_end_section(ss, 0), KW_E_STATE);
        kw_fusion_result res;
        assert_int_equal(kw_fusion_generate(ss, &res), 0);
        assert_int_equal(res.gen.n, ref.res.gen.n);
        assert_memory_equal(res.gen.ids, ref.res.gen.ids, (size_t)res.gen.n * 4);
        const int64_t cnt = E.n_heads * E.L * E.head_dim;
        float *k = malloc((size_t)cnt * 4), *v = malloc((size_t)cnt * 4), *kr = malloc((size_t)cnt * 4),
              *vr = malloc((size_t)cnt * 4);
        for (int32_t l = 0; l < E.n_layers; ++l) {
            cache_rows(cache, l, k, v);
            cache_rows(ref.cache, l, kr, vr);
            assert_memory_equal(k, kr, (size_t)cnt * 4);
            assert_memory_equal(v, vr, (size_t)cnt * 4);
        }
        free(k), free(v), free(kr), free(vr);
        kw_fusion_result_free(&res);
        kw_fusion_session_free(ss);
        kw_kvcache_free(cache);
    }
    free(ra.k), free(ra.v), free(rb.k), free(rb.v);
    run_free(&ref);
}

/* ------------------------------------------------------------------------------------------------------------
 * The split pipeline: kw_share_run (sharer side, layer by layer) joined in memory to the session (receiver side)
 */

/* Every layer kw_share_run handed over, copied. */
typedef struct share_log {
    int32_t n;
    struct {
        int32_t sharer, section, layer;
        int64_t n_rows, *positions;
        float *k, *v;
    } e[64];
    int32_t sharer; /* the sharer being run */
} share_log;

static int share_collect(void *user, const kw_share_layer *l) {
    share_log *log = user;
    assert_true(log->n < 64);
    const size_t floats = (size_t)(l->n_rows * l->n_heads * l->head_dim);
    log->e[log->n].sharer = log->sharer;
    log->e[log->n].section = l->section;
    log->e[log->n].layer = l->layer;
    log->e[log->n].n_rows = l->n_rows;
    log->e[log->n].positions = malloc((size_t)l->n_rows * sizeof(int64_t));
    log->e[log->n].k = malloc(floats * 4);
    log->e[log->n].v = malloc(floats * 4);
    memcpy(log->e[log->n].positions, l->positions, (size_t)l->n_rows * sizeof(int64_t));
    memcpy(log->e[log->n].k, l->k, floats * 4);
    memcpy(log->e[log->n].v, l->v, floats * 4);
    ++log->n;
    return 0;
}

static void share_log_free(share_log *log) {
    for (int32_t i = 0; i < log->n; ++i)
        free(log->e[i].positions), free(log->e[i].k), free(log->e[i].v);
    log->n = 0;
}

/* Runs scenario s split: each sharer's kw_share_run, then the session fed from the log. */
static void run_split(const scenario *s, const kw_select_policy *sel, enum kw_dtype cd, run_out *o, share_log *log) {
    kw_fusion *f = s->n_sharers == 2 ? E.two : E.one;
    kw_model *models[2] = {E.sh_a, E.sh_b};
    int64_t prefix = E.L - s->sections[s->n_sections - 1].length;
    memset(log, 0, sizeof *log);
    for (int32_t i = 0; i < s->n_sharers; ++i) {
        int32_t layers[8], n_layers = 0;
        assert_int_equal(kw_fusion_needed_layers(f, i, layers, 8, &n_layers), 0);
        /* a sharer is sent the sections that select it */
        kw_fusion_section mine[8];
        for (int32_t j = 0; j < s->n_sections; ++j)
            mine[j] = (kw_fusion_section){s->sections[j].length,
                                          (s->sections[j].index > 0 && (s->sections[j].index & (1 << i))) ? 1 : -1};
        const kw_share_options so = {.sections = mine,
                                     .n_sections = s->n_sections,
                                     .layers = layers,
                                     .n_layers = n_layers,
                                     .select = *sel,
                                     .cache_dtype = cd,
                                     .on_layer = share_collect,
                                     .user = log};
        log->sharer = i;
        kw_share_stats st;
        const int rc = kw_share_run(models[i], E.prompt, prefix, &so, &st);
        if (rc < 0) fail_msg("share: %s (%s)", kw_status_name(rc), kw_error_detail());
    }
    memset(o, 0, sizeof *o);
    assert_int_equal(kw_model_create_cache(E.recv, E.L + E.G + 8, cd, &o->cache), 0);
    const kw_fusion_options opt = {.sections = s->sections,
                                   .n_sections = s->n_sections,
                                   .mode = s->mode,
                                   .numerics = cd == KW_DTYPE_F32 ? KW_PROJECTOR_FP32 : KW_PROJECTOR_BF16,
                                   .gen = {.max_new_tokens = (int32_t)E.G,
                                           .round = cd == KW_DTYPE_F32 ? KW_LOGITS_ROUND_NONE : KW_LOGITS_ROUND_AUTO}};
    kw_fusion_session *ss = NULL;
    assert_int_equal(kw_fusion_begin(f, o->cache, E.prompt, E.L, &opt, &ss), 0);
    for (int32_t sec = 0; sec + 1 < s->n_sections; ++sec) {
        assert_int_equal(kw_fusion_prefill(ss, sec), 0);
        for (int32_t j = 0; j < log->n; ++j) {
            if (log->e[j].section != sec) continue;
            const kw_fusion_rows rows = {.sharer = log->e[j].sharer,
                                         .section = sec,
                                         .source_layer = log->e[j].layer,
                                         .n_rows = log->e[j].n_rows,
                                         .positions = log->e[j].positions,
                                         .k = log->e[j].k,
                                         .v = log->e[j].v};
            const int rc = kw_fusion_put(ss, &rows);
            if (rc < 0) fail_msg("put: %s (%s)", kw_status_name(rc), kw_error_detail());
        }
        assert_int_equal(kw_fusion_end_section(ss, sec), 0);
    }
    assert_int_equal(kw_fusion_generate(ss, &o->res), 0);
    kw_fusion_session_free(ss);
}

/* With every position sent, the split pipeline gives kw_fusion_run's tokens and the same cache bits, in every
 * scenario of the fixture and with both cache dtypes. */
static void test_split_equals_in_process(void **state) {
    (void)state;
    static const char *const names[] = {"std", "par1", "front50", "back30", "general", "seq2", "par2", "mask21"};
    const kw_select_policy full = {.mode = KW_SELECT_FULL, .proportion = 1.0, .min_tokens = 1};
    for (int dt = 0; dt < 2; ++dt) {
        const enum kw_dtype cd = dt ? KW_DTYPE_BF16 : KW_DTYPE_F32;
        for (size_t i = 0; i < sizeof names / sizeof names[0]; ++i) {
            const scenario s = fixture_scenario(names[i]);
            run_out a, b;
            share_log log;
            run(&s, cd, NULL, NULL, &a);
            run_split(&s, &full, cd, &b, &log);
            assert_int_equal(a.res.gen.n, b.res.gen.n);
            assert_memory_equal(a.res.gen.ids, b.res.gen.ids, (size_t)a.res.gen.n * 4);
            const int64_t cnt = E.n_heads * E.L * E.head_dim;
            float *ka = malloc((size_t)cnt * 4), *va = malloc((size_t)cnt * 4), *kb = malloc((size_t)cnt * 4),
                  *vb = malloc((size_t)cnt * 4);
            for (int32_t l = 0; l < E.n_layers; ++l) {
                cache_rows(a.cache, l, ka, va);
                cache_rows(b.cache, l, kb, vb);
                if (memcmp(ka, kb, (size_t)cnt * 4) != 0 || memcmp(va, vb, (size_t)cnt * 4) != 0)
                    fail_msg("%s, %s cache: layer %d differs between the split and the in-process pipeline", names[i],
                             kw_dtype_name(cd), (int)l);
            }
            assert_int_equal(a.res.stats.tokens_fused, b.res.stats.tokens_fused);
            assert_int_equal(a.res.stats.layers_fused, b.res.stats.layers_fused);
            free(ka), free(va), free(kb), free(vb);
            share_log_free(&log);
            run_free(&a);
            run_free(&b);
        }
    }
}

/* A selection sends fewer rows per layer (vnorm per sharer layer), the positions are the selection's, and the run
 * still decodes. */
static void test_split_with_selection(void **state) {
    (void)state;
    const scenario s = fixture_scenario("std");
    const kw_select_policy sel = {.mode = KW_SELECT_VNORM, .proportion = 0.25, .min_tokens = 1};
    run_out o;
    share_log log;
    run_split(&s, &sel, KW_DTYPE_F32, &o, &log);
    const int64_t L1 = s.sections[0].length, k = (int64_t)nearbyint((double)L1 * 0.25);
    assert_int_equal(log.n, 3);
    for (int32_t i = 0; i < log.n; ++i)
        assert_int_equal(log.e[i].n_rows, k);
    assert_true(o.res.stats.tokens_fused >= k && o.res.stats.tokens_fused <= 3 * k);
    assert_true(o.res.gen.n >= 1 && o.res.gen.n <= E.G);
    share_log_free(&log);
    run_free(&o);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split_equals_in_process),
        cmocka_unit_test(test_split_with_selection),
        cmocka_unit_test(test_session_selected_positions),
        cmocka_unit_test(test_session_two_sharers_out_of_order),
        cmocka_unit_test(test_parity_receiver_only),
        cmocka_unit_test(test_parity_standard),
        cmocka_unit_test(test_parity_parallel_one_sharer),
        cmocka_unit_test(test_parity_proportion),
        cmocka_unit_test(test_parity_general_sections),
        cmocka_unit_test(test_parity_two_sharers),
        cmocka_unit_test(test_closed_gates_bit_identical),
        cmocka_unit_test(test_parallel_equals_sequential_one_sharer),
        cmocka_unit_test(test_section_builders),
        cmocka_unit_test(test_transfer_hook),
        cmocka_unit_test(test_transfer_hook_two_sharers),
        cmocka_unit_test(test_bf16_pipeline_near_reference),
        cmocka_unit_test(test_bad_input),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
