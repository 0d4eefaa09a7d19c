/* test_model_parity.c: the forward pass against HF transformers on the tiny random models of
 * tests/data/model/hf/ (made by tools/make_model_fixtures.py; Qwen2, Qwen3, Llama and three Gemma3 variants): logits
 * of every prompt position, the KV cache after prefill, the logits of every decode step and the greedy tokens; plus
 * chunked prefill, token-by-token decode (across Gemma3's sliding window too) and padded (masked) prompts against the
 * same references.
 *
 * Tolerance for fp32: max |ours - HF| over the vocabulary (or over a layer's cache) divided by max |HF| <= 1e-4.
 * Both sides compute in fp32 with the same weights; what differs is summation order (blocked matmul vs MKL/ATen,
 * attention softmax), worth a few ulp per dot product: observed ~1e-6, so 1e-4 leaves margin without hiding a
 * wrong norm, bias or rotation (those are O(1) relative). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common/kw_file.h"
#include "common/kw_half.h"
#include "common/kw_status.h"
#include "kernels/kw_backend.h"
#include "model/kw_generate.h"
#include "model/kw_model.h"
#include "model/kw_safetensors.h"
#include "model_fixture.h"
#include "tests/kw_test_util.h"

#define FP32_TOL 1e-4
/* chunked vs one-shot prefill and decode vs prefill run the same kernels on the same backend; only matmul blocking
 * (M-dependent) may change summation order */
#define SAME_BACKEND_TOL 1e-5

typedef struct fx_case {
    kw_backend *be;
    kw_model *model;
    kwfx fx;
    const kw_model_config *cfg;
    int64_t P; /* prompt length */
    const int32_t *prompt;
} fx_case;

static void case_open(fx_case *c, const char *name, int32_t max_batch) {
    memset(c, 0, sizeof *c);
    char dir[1024], ref[1100];
    snprintf(dir, sizeof dir, "%s/model/hf/%s", KW_TEST_DATA_DIR, name);
    snprintf(ref, sizeof ref, "%s/ref.kwfx", dir);
    int rc = kw_backend_create_cpu(2, &c->be);
    if (rc < 0) fail_msg("backend: %s", kw_error_detail());
    const kw_model_options opts = {.max_batch = max_batch};
    rc = kw_model_load(c->be, dir, &opts, &c->model);
    if (rc < 0) fail_msg("load %s: %s (%s)", name, kw_status_name(rc), kw_error_detail());
    rc = kwfx_load(ref, &c->fx);
    if (rc < 0) fail_msg("%s", kw_error_detail());
    c->cfg = kw_model_get_config(c->model);
    c->prompt = kwfx_i32(&c->fx, "prompt_ids", &c->P);
    assert_non_null(c->prompt);
}

static void case_close(fx_case *c) {
    kw_model_free(c->model);
    kw_backend_destroy(c->be);
    kwfx_free(&c->fx);
}

static const float *ref_f32(const fx_case *c, const char *prefix, const char *name, int64_t expect) {
    char full[96];
    snprintf(full, sizeof full, "%s%s", prefix, name);
    return kwfx_f32_expect(&c->fx, full, expect);
}

static kw_kvcache *new_cache(const fx_case *c, enum kw_dtype dtype) {
    kw_kvcache *cache = NULL;
    const int rc = kw_model_create_cache(c->model, c->P + 64, dtype, &cache);
    if (rc < 0) fail_msg("cache: %s", kw_error_detail());
    return cache;
}

static void forward_all(fx_case *c, kw_kvcache *cache, const int32_t *ids, int64_t n, const int32_t *pos,
                        float *logits) {
    const kw_forward_args a = {.ids = ids, .n = n, .positions = pos, .mode = KW_LOGITS_ALL, .logits = logits};
    const int rc = kw_model_forward(c->model, cache, &a);
    if (rc < 0) fail_msg("forward: %s (%s)", kw_status_name(rc), kw_error_detail());
}

/* Largest relative KV difference over all layers between the cache rows [0, P) and the fixture's (Hkv, P, D). */
static double kv_diff(fx_case *c, kw_kvcache *cache, const char *prefix) {
    const int64_t H = c->cfg->n_kv_heads, D = c->cfg->head_dim, P = c->P;
    float *k = malloc((size_t)(P * H * D) * sizeof *k), *v = malloc((size_t)(P * H * D) * sizeof *v);
    float *kt = malloc((size_t)(P * H * D) * sizeof *kt), *vt = malloc((size_t)(P * H * D) * sizeof *vt);
    assert_true(k && v && kt && vt);
    double worst = 0;
    for (int32_t l = 0; l < c->cfg->n_layers; ++l) {
        assert_int_equal(kw_kvcache_read_rows(cache, l, 0, P, k, v), 0);
        /* ours is (P, H, D), HF's (H, P, D) */
        for (int64_t p = 0; p < P; ++p)
            for (int64_t h = 0; h < H; ++h) {
                memcpy(kt + (h * P + p) * D, k + (p * H + h) * D, (size_t)D * sizeof *k);
                memcpy(vt + (h * P + p) * D, v + (p * H + h) * D, (size_t)D * sizeof *v);
            }
        char name[32];
        snprintf(name, sizeof name, "k.%d", (int)l);
        const double dk = kwfx_rel_diff(kt, ref_f32(c, prefix, name, P * H * D), P * H * D);
        snprintf(name, sizeof name, "v.%d", (int)l);
        const double dv = kwfx_rel_diff(vt, ref_f32(c, prefix, name, P * H * D), P * H * D);
        if (dk > worst) worst = dk;
        if (dv > worst) worst = dv;
    }
    free(k);
    free(v);
    free(kt);
    free(vt);
    return worst;
}

/* Prompt logits and KV cache after one prefill. */
static void check_prefill(fx_case *c, enum kw_dtype cache_dtype, const char *prefix, double tol_logits, double tol_kv) {
    const int64_t V = c->cfg->vocab;
    kw_kvcache *cache = new_cache(c, cache_dtype);
    float *logits = malloc((size_t)(c->P * V) * sizeof *logits);
    assert_non_null(logits);
    forward_all(c, cache, c->prompt, c->P, NULL, logits);
    assert_int_equal(kw_kvcache_length(cache), c->P);
    const double dl = kwfx_rel_diff_rows(logits, ref_f32(c, prefix, "logits", c->P * V), c->P, V);
    const double dkv = kv_diff(c, cache, prefix);
    print_message("    %s cache, ref %s: logits rel diff %.3g (tol %.3g), kv rel diff %.3g (tol %.3g)\n",
                  kw_dtype_name(cache_dtype), *prefix ? prefix : "main", dl, tol_logits, dkv, tol_kv);
    assert_true(dl <= tol_logits);
    assert_true(dkv <= tol_kv);
    free(logits);
    kw_kvcache_free(cache);
}

/* Greedy generation step by step, checking each step's logits against HF's, then through kw_generate_greedy. */
static void check_generation(fx_case *c, enum kw_dtype cache_dtype, const char *prefix, double tol_logits,
                             enum kw_logits_round round) {
    const int64_t V = c->cfg->vocab;
    int64_t G = 0, nmeta = 0;
    char name[64];
    snprintf(name, sizeof name, "%sgen_ids", prefix);
    const int32_t *gen = kwfx_i32(&c->fx, name, &G);
    const int32_t *meta = kwfx_i32(&c->fx, "meta", &nmeta);
    assert_true(gen && meta && nmeta == 4);
    const float *gen_logits = ref_f32(c, prefix, "gen_logits", G * V);
    const int flags = round == KW_LOGITS_ROUND_BF16 ? KW_ARGMAX_ROUND_BF16 : KW_ARGMAX_PLAIN;

    kw_kvcache *cache = new_cache(c, cache_dtype);
    float *logits = malloc((size_t)V * sizeof *logits);
    assert_non_null(logits);
    int32_t next = -1;
    const kw_forward_args a = {
        .ids = c->prompt, .n = c->P, .mode = KW_LOGITS_LAST, .logits = logits, .argmax = &next, .argmax_flags = flags};
    assert_int_equal(kw_model_forward(c->model, cache, &a), 0);
    double worst = 0;
    for (int64_t i = 0; i < G; ++i) {
        const double d = kwfx_rel_diff(logits, gen_logits + i * V, V);
        if (d > worst) worst = d;
        if (next != gen[i]) fail_msg("step %lld: generated %d, HF %d", (long long)i, (int)next, (int)gen[i]);
        if (i + 1 < G) assert_int_equal(kw_model_decode_step(c->model, cache, next, logits, &next, flags), 0);
    }
    print_message("    %s cache: %lld greedy tokens identical, decode logits rel diff %.3g (tol %.3g)\n",
                  kw_dtype_name(cache_dtype), (long long)G, worst, tol_logits);
    assert_true(worst <= tol_logits);
    kw_kvcache_free(cache);
    free(logits);

    /* the library loop: same tokens, same stop */
    cache = new_cache(c, cache_dtype);
    const kw_generate_options go = {.max_new_tokens = meta[1], .round = round};
    kw_generate_result r;
    const int rc = kw_generate_greedy(c->model, cache, c->prompt, c->P, &go, &r);
    if (rc < 0) fail_msg("generate: %s", kw_error_detail());
    assert_int_equal(r.n, G);
    assert_memory_equal(r.ids, gen, (size_t)G * sizeof *gen);
    assert_int_equal(r.stopped_eos, meta[2]);
    /* the last generated token is never fed back */
    assert_int_equal(kw_kvcache_length(cache), c->P + G - 1);
    kw_generate_result_free(&r);
    kw_kvcache_free(cache);
}

/* The C2C shape of a generation: prefill positions 0..P-2 without logits, then generate from the last prompt token
 * on the cache that already holds the prefix. Same tokens as HF's generate over the whole prompt. */
static void check_prefix_generation(fx_case *c) {
    int64_t G = 0;
    const int32_t *gen = kwfx_i32(&c->fx, "gen_ids", &G);
    const int32_t *meta = kwfx_i32(&c->fx, "meta", NULL);
    kw_kvcache *cache = new_cache(c, KW_DTYPE_F32);
    assert_int_equal(kw_model_prefill(c->model, cache, c->prompt, c->P - 1), 0);
    assert_int_equal(kw_kvcache_length(cache), c->P - 1);
    const kw_generate_options go = {.max_new_tokens = meta[1], .round = KW_LOGITS_ROUND_NONE};
    kw_generate_result r;
    assert_int_equal(kw_generate_greedy(c->model, cache, c->prompt + c->P - 1, 1, &go, &r), 0);
    assert_int_equal(r.n, G);
    assert_memory_equal(r.ids, gen, (size_t)G * sizeof *gen);
    kw_generate_result_free(&r);
    kw_kvcache_free(cache);
}

static void parity_fp32(const char *name) {
    fx_case c;
    case_open(&c, name, 0);
    print_message("  %s\n", name);
    check_prefill(&c, KW_DTYPE_F32, "", FP32_TOL, FP32_TOL);
    check_generation(&c, KW_DTYPE_F32, "", FP32_TOL, KW_LOGITS_ROUND_NONE);
    check_prefix_generation(&c);
    case_close(&c);
}

static void test_parity_qwen2(void **state) {
    (void)state;
    parity_fp32("qwen2_gqa2");
}

static void test_parity_qwen3(void **state) {
    (void)state;
    parity_fp32("qwen3_gqa3");
}

static void test_parity_llama(void **state) {
    (void)state;
    parity_fp32("llama_gqa4");
}

static void test_parity_gemma3_swa(void **state) {
    (void)state;
    parity_fp32("gemma3_swa");
}

static void test_parity_gemma3_bias(void **state) {
    (void)state;
    parity_fp32("gemma3_bias");
}

/* A Gemma3 cache must carry the model's layer windows: one made without them is refused, not silently attended in
 * full. */
static void test_gemma3_cache_windows(void **state) {
    (void)state;
    fx_case c;
    case_open(&c, "gemma3_swa", 0);
    kw_kvcache *cache = new_cache(&c, KW_DTYPE_F32);
    for (int32_t l = 0; l < c.cfg->n_layers; ++l)
        assert_int_equal(kw_kvcache_layer_window(cache, l), (l + 1) % 3 != 0 ? 8 : 0);
    kw_kvcache_free(cache);
    assert_int_equal(
        kw_kvcache_create(c.be, c.cfg->n_layers, c.cfg->n_kv_heads, c.cfg->head_dim, 64, KW_DTYPE_F32, &cache), 0);
    const kw_forward_args a = {.ids = c.prompt, .n = 4, .mode = KW_LOGITS_NONE};
    assert_int_equal(kw_model_forward(c.model, cache, &a), KW_E_SHAPE);
    assert_int_equal(kw_kvcache_length(cache), 0);
    kw_kvcache_free(cache);
    case_close(&c);
}

/* The bf16-weights model.
 *
 * 1. Against HF computing in fp32 from the same bf16 weights (the "f32act." arrays): this is exactly what we compute
 *    (fp32 activations, bf16 weights widened exactly), so the fp32 tolerance applies, with an f32 cache.
 *
 * 2. Against HF's real bf16 behaviour (activations rounded to bf16 after every op, bf16 cache, bf16 logits), with our
 *    bf16 cache. Derivation of the tolerance: let E be exact fp32 math on these weights, O ours, B HF-bf16. The
 *    fixture measures D = |B - E_hf| / max|E_hf| (E_hf = the f32act arrays, within FP32_TOL of E, checked in 1.).
 *    Our bf16-cache run rounds only the cached K/V to bf16 (relative error <= 2^-8 per element, round to nearest
 *    even), a strict subset of the roundings HF applies (it also rounds every activation, the rotary cos/sin and the
 *    residual stream), so its departure from E is bounded by HF's own departure D. The triangle inequality gives
 *    |O - B| <= |O - E| + |E - B| <= D + FP32_TOL + D. For the cache rows themselves we add one bf16 rounding of our
 *    own value (2^-8 relative). Greedy tokens: ours (bf16-rounded logits, lowest id on ties, as HF) must match HF's
 *    while HF's top-2 margin exceeds twice that logits bound (a smaller margin may legitimately flip); after the
 *    first such step the sequences are allowed to part. */
static double margin_rel(const float *row, int64_t V) {
    float a = -INFINITY, b = -INFINITY, mx = 0;
    for (int64_t i = 0; i < V; ++i) {
        if (row[i] > a) {
            b = a;
            a = row[i];
        } else if (row[i] > b) {
            b = row[i];
        }
        if (fabsf(row[i]) > mx) mx = fabsf(row[i]);
    }
    return (double)(a - b) / (double)mx;
}

/* gemma3_bias rewritten as a multimodal Gemma 3 checkpoint: config.json a "gemma3" config holding the text config in
 * text_config, the text weights renamed under text_prefix ("language_model.model." as the published files, or
 * "model.language_model." as transformers >= 4.52 saves), lm_head under lm_name, plus a vision tensor that must be
 * ignored. Loading it gives the same logits as the plain checkpoint. */
static void multimodal_layout(const char *text_prefix, const char *lm_name) {
    char src[1024], dir[] = "/tmp/kw_test_gemma_mm_XXXXXX", path[1200];
    snprintf(src, sizeof src, "%s/model/hf/gemma3_bias", KW_TEST_DATA_DIR);
    assert_non_null(mkdtemp(dir));
    kw_safetensors *st = NULL;
    assert_int_equal(kw_safetensors_open(src, &st), 0);
    const size_t n = kw_safetensors_count(st);
    kw_st_write_tensor *w = calloc(n + 1, sizeof *w);
    char(*names)[160] = calloc(n, sizeof *names);
    assert_true(w && names);
    for (size_t i = 0; i < n; ++i) {
        const kw_st_tensor *t = kw_safetensors_at(st, i);
        if (strncmp(t->name, "model.", 6) == 0)
            snprintf(names[i], sizeof names[i], "%s%s", text_prefix, t->name + 6);
        else
            snprintf(names[i], sizeof names[i], "%s", strcmp(t->name, "lm_head.weight") == 0 ? lm_name : t->name);
        w[i] = (kw_st_write_tensor){.name = names[i], .dtype = t->dtype, .ndim = t->ndim, .data = t->data};
        memcpy(w[i].shape, t->shape, sizeof w[i].shape);
    }
    static const float vision[4] = {1, 2, 3, 4};
    w[n] = (kw_st_write_tensor){
        .name = "vision_tower.patch.weight", .dtype = KW_DTYPE_F32, .ndim = 1, .shape = {4}, .data = vision};
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    assert_int_equal(kw_safetensors_write(path, w, n + 1, NULL), 0);
    kw_safetensors_close(st);
    free(w);
    free(names);

    char *text = NULL;
    size_t len = 0;
    snprintf(path, sizeof path, "%s/config.json", src);
    assert_int_equal(kw_file_read_all(path, 1 << 20, &text, &len), 0);
    cJSON *inner = cJSON_Parse(text), *root = cJSON_CreateObject();
    free(text);
    assert_true(inner && root);
    cJSON_AddItemToObject(root, "architectures",
                          cJSON_CreateStringArray((const char *[]){"Gemma3ForConditionalGeneration"}, 1));
    cJSON_AddStringToObject(root, "model_type", "gemma3");
    cJSON_AddStringToObject(root, "torch_dtype", "float32");
    cJSON_DeleteItemFromObject(inner, "architectures");
    cJSON_AddItemToObject(root, "text_config", inner);
    text = cJSON_Print(root);
    cJSON_Delete(root);
    snprintf(path, sizeof path, "%s/config.json", dir);
    assert_int_equal(kw_file_write_all(path, text, strlen(text)), 0);
    free(text);
    snprintf(path, sizeof path, "%s/generation_config.json", src);
    assert_int_equal(kw_file_read_all(path, 1 << 20, &text, &len), 0);
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    assert_int_equal(kw_file_write_all(path, text, len), 0);
    free(text);

    fx_case c;
    case_open(&c, "gemma3_bias", 0);
    kw_model *mm = NULL;
    int rc = kw_model_load(c.be, dir, NULL, &mm);
    if (rc < 0) fail_msg("load %s: %s", dir, kw_error_detail());
    assert_int_equal(kw_model_get_config(mm)->arch, KW_ARCH_GEMMA3);
    const int64_t V = c.cfg->vocab;
    float *logits = malloc((size_t)(c.P * V) * sizeof *logits);
    assert_non_null(logits);
    kw_kvcache *cache = NULL;
    assert_int_equal(kw_model_create_cache(mm, c.P, KW_DTYPE_F32, &cache), 0);
    const kw_forward_args a = {.ids = c.prompt, .n = c.P, .mode = KW_LOGITS_ALL, .logits = logits};
    assert_int_equal(kw_model_forward(mm, cache, &a), 0);
    const double d = kwfx_rel_diff_rows(logits, ref_f32(&c, "", "logits", c.P * V), c.P, V);
    print_message("  %s + %s: logits rel diff %.3g\n", text_prefix, lm_name, d);
    assert_true(d <= FP32_TOL);
    kw_kvcache_free(cache);
    kw_model_free(mm);
    free(logits);
    case_close(&c);
    kw_test_remove_tree(dir);
}

static void test_gemma3_multimodal_layout(void **state) {
    (void)state;
    multimodal_layout("language_model.model.", "language_model.lm_head.weight");
    multimodal_layout("model.language_model.", "lm_head.weight");
}

static void parity_bf16(const char *name) {
    fx_case c;
    case_open(&c, name, 0);
    const int64_t V = c.cfg->vocab, P = c.P;
    assert_int_equal(kw_model_logits_weight_dtype(c.model), KW_DTYPE_BF16);
    print_message("  %s vs HF fp32 compute on the bf16 weights\n", name);
    check_prefill(&c, KW_DTYPE_F32, "f32act.", FP32_TOL, FP32_TOL);
    check_generation(&c, KW_DTYPE_F32, "f32act.", FP32_TOL, KW_LOGITS_ROUND_NONE);

    /* D, measured from the fixture */
    const double d_logits =
        kwfx_rel_diff_rows(ref_f32(&c, "", "logits", P * V), ref_f32(&c, "f32act.", "logits", P * V), P, V);
    double d_kv = 0;
    for (int32_t l = 0; l < c.cfg->n_layers; ++l) {
        const int64_t n = (int64_t)c.cfg->n_kv_heads * P * c.cfg->head_dim;
        char kn[16], vn[16];
        snprintf(kn, sizeof kn, "k.%d", (int)l);
        snprintf(vn, sizeof vn, "v.%d", (int)l);
        const double dk = kwfx_rel_diff(ref_f32(&c, "", kn, n), ref_f32(&c, "f32act.", kn, n), n);
        const double dv = kwfx_rel_diff(ref_f32(&c, "", vn, n), ref_f32(&c, "f32act.", vn, n), n);
        d_kv = fmax(d_kv, fmax(dk, dv));
    }
    const double tol_logits = 2 * d_logits + FP32_TOL, tol_kv = 2 * d_kv + FP32_TOL + 1.0 / 256;
    print_message("  %s vs HF bf16 compute (D logits %.3g, D kv %.3g)\n", name, d_logits, d_kv);
    check_prefill(&c, KW_DTYPE_BF16, "", tol_logits, tol_kv);

    /* greedy with the default rounding (bf16 model -> bf16 logits) against HF bf16, while its margin is safe */
    int64_t G = 0;
    const int32_t *gen = kwfx_i32(&c.fx, "gen_ids", &G);
    const float *gen_logits = ref_f32(&c, "", "gen_logits", G * V);
    kw_kvcache *cache = new_cache(&c, KW_DTYPE_BF16);
    const kw_generate_options go = {.max_new_tokens = (int32_t)G, .round = KW_LOGITS_ROUND_AUTO};
    kw_generate_result r;
    assert_int_equal(kw_generate_greedy(c.model, cache, c.prompt, P, &go, &r), 0);
    int64_t compared = 0;
    for (int64_t i = 0; i < G && i < r.n; ++i) {
        if (margin_rel(gen_logits + i * V, V) <= 2 * tol_logits) break;
        assert_int_equal(r.ids[i], gen[i]);
        ++compared;
    }
    print_message("    greedy vs HF bf16: first %lld tokens compared (until HF's margin < %.3g) and identical\n",
                  (long long)compared, 2 * tol_logits);
    assert_true(compared >= 1); /* the fixture's first step has a safe margin: the check is not empty */
    kw_generate_result_free(&r);
    kw_kvcache_free(cache);
    case_close(&c);
}

static void test_parity_bf16_weights(void **state) {
    (void)state;
    parity_bf16("qwen3_bf16");
}

/* Gemma3 with bf16 weights. The "f32act." reference keeps HF's bf16 embedding (the sqrt(hidden) scale and the scaled
 * embedding rounded to bf16, as HF computes it in the embedding's dtype) and runs everything after it in fp32: what
 * kvwire computes. */
static void test_parity_gemma3_bf16(void **state) {
    (void)state;
    parity_bf16("gemma3_bf16");
}

/* Prefill in pieces (several calls, and internal chunking with a small max_batch) == prefill at once. */
static void chunked(const char *name, enum kw_dtype cache_dtype) {
    fx_case whole, small;
    case_open(&whole, name, 0);
    case_open(&small, name, 5); /* 32 tokens = 7 internal chunks */
    const int64_t V = whole.cfg->vocab, P = whole.P;
    float *la = malloc((size_t)(P * V) * sizeof *la), *lb = malloc((size_t)(P * V) * sizeof *lb);
    float *lc = malloc((size_t)(P * V) * sizeof *lc);
    assert_true(la && lb && lc);
    kw_kvcache *ca = new_cache(&whole, cache_dtype), *cb = new_cache(&whole, cache_dtype);
    kw_kvcache *cc = new_cache(&small, cache_dtype);
    forward_all(&whole, ca, whole.prompt, P, NULL, la);
    const int64_t pieces[] = {3, 1, 12, 16};
    int64_t at = 0;
    for (size_t i = 0; i < 4; ++i) {
        forward_all(&whole, cb, whole.prompt + at, pieces[i], NULL, lb + at * V);
        at += pieces[i];
    }
    assert_int_equal(at, P);
    forward_all(&small, cc, small.prompt, P, NULL, lc);
    const double d_calls = kwfx_rel_diff_rows(lb, la, P, V), d_chunks = kwfx_rel_diff_rows(lc, la, P, V);
    print_message("  %s, %s cache: pieces vs whole %.3g, 5-token chunks vs whole %.3g\n", name,
                  kw_dtype_name(cache_dtype), d_calls, d_chunks);
    double tol = SAME_BACKEND_TOL;
    if (cache_dtype == KW_DTYPE_BF16) {
        /* With a bf16 cache the ~1e-6 summation-order differences can move a K/V value across a bf16 rounding
         * boundary: that element then differs by one bf16 step (2^-7 relative), the same kind of perturbation as the
         * cache rounding itself, applied to a few elements instead of all. So the bound is the total effect of bf16
         * caching, measured here as whole-prompt logits with a bf16 cache vs with an f32 cache. */
        kw_kvcache *cf = new_cache(&whole, KW_DTYPE_F32);
        float *lf = malloc((size_t)(P * V) * sizeof *lf);
        assert_non_null(lf);
        forward_all(&whole, cf, whole.prompt, P, NULL, lf);
        const double d_round = kwfx_rel_diff_rows(la, lf, P, V);
        print_message("  bf16 caching itself moves the logits by %.3g (the bound)\n", d_round);
        assert_true(d_round > SAME_BACKEND_TOL && d_round < 0.05);
        tol = d_round;
        free(lf);
        kw_kvcache_free(cf);
    }
    assert_true(d_calls <= tol);
    assert_true(d_chunks <= tol);
    if (cache_dtype == KW_DTYPE_F32) {
        assert_true(kwfx_rel_diff_rows(la, ref_f32(&whole, "", "logits", P * V), P, V) <= FP32_TOL);
        assert_true(kv_diff(&whole, cb, "") <= FP32_TOL);
        assert_true(kv_diff(&small, cc, "") <= FP32_TOL);
    }
    kw_kvcache_free(ca);
    kw_kvcache_free(cb);
    kw_kvcache_free(cc);
    free(la);
    free(lb);
    free(lc);
    case_close(&whole);
    case_close(&small);
}

static void test_chunked_prefill_f32(void **state) {
    (void)state;
    chunked("qwen3_gqa3", KW_DTYPE_F32);
}

static void test_chunked_prefill_bf16(void **state) {
    (void)state;
    chunked("qwen3_gqa3", KW_DTYPE_BF16);
}

/* Chunks of 5 and pieces of 3, 1, 12, 16 tokens against Gemma3's window of 8: chunks start inside a window, and the
 * window's lower edge moves within a chunk. */
static void test_chunked_prefill_gemma3(void **state) {
    (void)state;
    chunked("gemma3_swa", KW_DTYPE_F32);
}

/* Feeding the prompt one decode step at a time gives the logits of the one-shot prefill. */
static void decode_vs_prefill(const char *name, enum kw_dtype cache_dtype) {
    fx_case c;
    case_open(&c, name, 0);
    const int64_t V = c.cfg->vocab, P = c.P;
    float *la = malloc((size_t)(P * V) * sizeof *la), *lb = malloc((size_t)(P * V) * sizeof *lb);
    assert_true(la && lb);
    kw_kvcache *ca = new_cache(&c, cache_dtype), *cb = new_cache(&c, cache_dtype);
    forward_all(&c, ca, c.prompt, P, NULL, la);
    for (int64_t t = 0; t < P; ++t) {
        int32_t next = -1;
        assert_int_equal(kw_model_decode_step(c.model, cb, c.prompt[t], lb + t * V, &next, KW_ARGMAX_PLAIN), 0);
        /* the backend argmax agrees with the host's lowest-index argmax of the same logits */
        int32_t best = 0;
        for (int64_t i = 1; i < V; ++i)
            if (lb[t * V + i] > lb[t * V + best]) best = (int32_t)i;
        assert_int_equal(next, best);
    }
    const double d = kwfx_rel_diff_rows(lb, la, P, V);
    print_message("  %s, %s cache: decode steps vs prefill %.3g\n", name, kw_dtype_name(cache_dtype), d);
    assert_true(d <= SAME_BACKEND_TOL);
    kw_kvcache_free(ca);
    kw_kvcache_free(cb);
    free(la);
    free(lb);
    case_close(&c);
}

static void test_decode_equals_prefill_f32(void **state) {
    (void)state;
    decode_vs_prefill("llama_gqa4", KW_DTYPE_F32);
}

static void test_decode_equals_prefill_bf16(void **state) {
    (void)state;
    decode_vs_prefill("llama_gqa4", KW_DTYPE_BF16);
}

static void test_decode_equals_prefill_gemma3(void **state) {
    (void)state;
    decode_vs_prefill("gemma3_swa", KW_DTYPE_F32);
}

/* A prompt with padding rows inserted, masked out and skipped by the explicit positions, gives HF's logits at the
 * real rows: the validity mask and the positions argument work together as a left/inner-padded batch row does. */
static void test_masked_padding(void **state) {
    (void)state;
    fx_case c;
    case_open(&c, "qwen2_gqa2", 0);
    const int64_t V = c.cfg->vocab, P = c.P;
    const int64_t pad_at[] = {0, 1, 9, 20}; /* padding rows placed before prompt tokens 0, 0, 8 and 18 */
    const int64_t n = P + 4;
    int32_t *ids = malloc((size_t)n * sizeof *ids), *pos = malloc((size_t)n * sizeof *pos);
    float *logits = malloc((size_t)(n * V) * sizeof *logits);
    assert_true(ids && pos && logits);
    kw_kvcache *cache = new_cache(&c, KW_DTYPE_F32);
    int64_t src = 0, npad = 0;
    for (int64_t r = 0; r < n; ++r) {
        if (npad < 4 && r == pad_at[npad]) {
            ids[r] = 7; /* any token: its row is masked */
            pos[r] = src > 0 ? (int32_t)src - 1 : 0;
            assert_int_equal(kw_kvcache_set_valid(cache, r, 1, 0), 0);
            ++npad;
        } else {
            ids[r] = c.prompt[src];
            pos[r] = (int32_t)src++;
        }
    }
    assert_non_null(kw_kvcache_mask(cache));
    forward_all(&c, cache, ids, n, pos, logits);
    const float *ref = ref_f32(&c, "", "logits", P * V);
    double worst = 0;
    src = 0;
    npad = 0;
    for (int64_t r = 0; r < n; ++r) {
        if (npad < 4 && r == pad_at[npad]) {
            ++npad;
            continue;
        }
        worst = fmax(worst, kwfx_rel_diff(logits + r * V, ref + src * V, V));
        ++src;
    }
    print_message("  padded prompt: real rows vs HF %.3g\n", worst);
    assert_true(worst <= FP32_TOL);
    /* without the mask the padding leaks into attention: the same run differs (the mask is not a no-op) */
    kw_kvcache_reset(cache);
    assert_null(kw_kvcache_mask(cache));
    forward_all(&c, cache, ids, n, pos, logits);
    assert_true(kwfx_rel_diff(logits + (n - 1) * V, ref + (P - 1) * V, V) > 1e-3);
    kw_kvcache_free(cache);
    free(ids);
    free(pos);
    free(logits);
    case_close(&c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parity_qwen2),
        cmocka_unit_test(test_parity_qwen3),
        cmocka_unit_test(test_parity_llama),
        cmocka_unit_test(test_parity_bf16_weights),
        cmocka_unit_test(test_parity_gemma3_swa),
        cmocka_unit_test(test_parity_gemma3_bias),
        cmocka_unit_test(test_parity_gemma3_bf16),
        cmocka_unit_test(test_gemma3_cache_windows),
        cmocka_unit_test(test_gemma3_multimodal_layout),
        cmocka_unit_test(test_chunked_prefill_f32),
        cmocka_unit_test(test_chunked_prefill_bf16),
        cmocka_unit_test(test_chunked_prefill_gemma3),
        cmocka_unit_test(test_decode_equals_prefill_f32),
        cmocka_unit_test(test_decode_equals_prefill_bf16),
        cmocka_unit_test(test_decode_equals_prefill_gemma3),
        cmocka_unit_test(test_masked_padding),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
