/* test_model_real.c: the two real models `kvwire fetch-model` fetches and caches, against transformers running the same
 * GGUF file (tools/make_gguf_fixtures.py): SmolLM2-135M-Instruct (Q4_1; tests/data/model/gguf/smollm2_ref.kwfx, six
 * prompts, chat and raw, one prefilled in chunks) and Gemma 3 270M base (Q4_K_M; gemma3_ref.kwfx, six raw prompts
 * with <bos>, one longer than the 512-token sliding window so that prefill in chunks and decode both run past it):
 * last-position logits and greedy continuations. `test_model_real MODEL file|parity`, MODEL smollm2 or gemma3. Skips
 * (exit 77) with a message when the model cannot be downloaded. Two ctest entries per model run it: `file` (the file
 * opened, its config, tokenizer and chat template; cheap, every build) and `parity` (the forward; label nosan, the
 * sanitizer builds leave it out). `quantized` checks the weights kept quantized against the f32 ones: every quantized
 * tensor's values and a greedy generation's logits on every prompt, bit for bit.
 *
 * Tolerance, derived: the fixture holds the reference's top logits from an fp32 and an fp64 evaluation of the same
 * dequantized weights. E = max |fp32 - fp64| over all of them measures how far an fp32 evaluation of this model lands
 * from the exact result on these prompts (summation-order rounding; SmolLM2: 2.7e-5 on logits of ~25). kvwire is
 * another fp32 evaluation with other summation orders, so |kvwire - reference| <= |kvwire - exact| + E; allowing
 * kvwire three times the reference's rounding gives 4 E, doubled for margin: TOL = 8 E (SmolLM2: 2.1e-4; measured
 * 2.7e-5 to 9.9e-5; Gemma 3: E 1.6e-5 on logits of ~20, TOL 1.3e-4, measured 1.8e-5 to 4.7e-5, every greedy token
 * compared). A wrong weight, norm or rotation moves logits by O(1). Greedy tokens must agree at every step
 * where the reference's top-1 lead exceeds 2 TOL (a smaller lead could flip on rounding alone); after the first step
 * below that, the rest of the continuation is not compared. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "common/kw_status.h"
#include "kernels/kw_backend.h"
#include "kernels/ref/kw_ref.h"
#include "model/kw_chat.h"
#include "model/kw_dequant.h"
#include "model/kw_gguf.h"
#include "model/kw_gguf_model.h"
#include "model/kw_tokenizer.h"
#include "model/kw_generate.h"
#include "model/kw_model.h"
#include "model_fixture.h"

static char g_model[4096];

/* One real model: what fetch-model calls it, its fixture, and what its file must declare. */
typedef struct real_model {
    const char *name;    /* the command line's name */
    const char *fetch;   /* kvwire fetch-model's name */
    const char *fixture; /* under KW_TEST_DATA_DIR */
    enum kw_arch arch;
    int32_t n_layers, vocab, add_bos;
} real_model;

static const real_model g_models[] = {
    {"smollm2", "smollm2-135m-instruct", "/model/gguf/smollm2_ref.kwfx", KW_ARCH_LLAMA, 30, 49152, 0},
    {"gemma3", "gemma-3-270m", "/model/gguf/gemma3_ref.kwfx", KW_ARCH_GEMMA3, 18, 262144, 1},
};
static const real_model *g_real;

/* Runs `kvwire fetch-model NAME` (the default cache; instant when cached). 0, or 77 to skip. */
static int fetch_model(const char *name) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "%s/tools/kvwire fetch-model %s", KW_BINARY_DIR, name);
    FILE *p = popen(cmd, "r");
    if (!p) return 1;
    const size_t n = fread(g_model, 1, sizeof g_model - 1, p);
    g_model[n] = '\0';
    const int status = pclose(p);
    while (strlen(g_model) > 0 && g_model[strlen(g_model) - 1] == '\n')
        g_model[strlen(g_model) - 1] = '\0';
    if (WIFEXITED(status) && WEXITSTATUS(status) == 3) {
        printf("SKIP: %s could not be downloaded (kvwire fetch-model exit 3: offline or no pip); the real-model test "
               "needs it once, then it is cached\n",
               name);
        return 77;
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || g_model[0] == '\0') {
        fprintf(stderr, "kvwire fetch-model %s failed (status %d)\n", name, status);
        return 1;
    }
    return 0;
}

/* Loads the model's fixture into *fx (the caller frees it) and returns its prompt count. */
static int load_fixture(kwfx *fx) {
    char fixture[512];
    snprintf(fixture, sizeof fixture, "%s%s", KW_TEST_DATA_DIR, g_real->fixture);
    assert_int_equal(kwfx_load(fixture, fx), 0);
    const int32_t *np = kwfx_i32(fx, "n_prompts", NULL);
    assert_non_null(np);
    return np[0];
}

static void test_parity(void **state) {
    (void)state;
    kwfx fx;
    const int n_prompts = load_fixture(&fx);
    /* E over every stored logit */
    double E = 0;
    for (int i = 0; i < n_prompts; ++i) {
        char k[64];
        int64_t K = 0;
        snprintf(k, sizeof k, "p%d.top_f32", i);
        const float *f32 = kwfx_f32(&fx, k, &K);
        snprintf(k, sizeof k, "p%d.top_f64", i);
        const float *f64 = kwfx_f32_expect(&fx, k, K);
        assert_non_null(f32);
        for (int64_t j = 0; j < K; ++j)
            E = fmax(E, fabs((double)f32[j] - (double)f64[j]));
    }
    const double tol = 8 * E;
    print_message("E = %.3g, tolerance %.3g\n", E, tol);
    assert_true(E > 0 && E < 1e-3);

    kw_backend *be = NULL;
    assert_int_equal(kw_backend_create_cpu(0, &be), 0);
    kw_model *m = NULL;
    const kw_model_options opts = {.max_batch = 64}; /* the long prompts are prefilled in chunks */
    const int lrc = kw_model_load(be, g_model, &opts, &m);
    if (lrc < 0) fail_msg("load %s: %s", g_model, kw_error_detail());
    const kw_model_config *cfg = kw_model_get_config(m);
    assert_int_equal(cfg->arch, g_real->arch);
    assert_int_equal(cfg->n_layers, g_real->n_layers);
    assert_int_equal(cfg->vocab, g_real->vocab);
    assert_int_equal(cfg->tie_embeddings, 1);
    assert_int_equal(cfg->add_bos, g_real->add_bos);
    float *logits = malloc((size_t)cfg->vocab * sizeof *logits);
    assert_non_null(logits);
    for (int i = 0; i < n_prompts; ++i) {
        char k[64];
        int64_t P = 0, K = 0, G = 0;
        snprintf(k, sizeof k, "p%d.ids", i);
        const int32_t *ids = kwfx_i32(&fx, k, &P);
        snprintf(k, sizeof k, "p%d.top_ids", i);
        const int32_t *top = kwfx_i32(&fx, k, &K);
        snprintf(k, sizeof k, "p%d.top_f32", i);
        const float *ref = kwfx_f32_expect(&fx, k, K);
        snprintf(k, sizeof k, "p%d.gen_ids", i);
        const int32_t *gen = kwfx_i32(&fx, k, &G);
        snprintf(k, sizeof k, "p%d.gen_margin", i);
        const float *margin = kwfx_f32_expect(&fx, k, G);
        assert_true(ids && top && gen);

        kw_kvcache *cache = NULL;
        assert_int_equal(kw_model_create_cache(m, P + G + 1, KW_DTYPE_F32, &cache), 0);
        const kw_forward_args a = {.ids = ids, .n = P, .mode = KW_LOGITS_LAST, .logits = logits};
        assert_int_equal(kw_model_forward(m, cache, &a), 0);
        double worst = 0;
        for (int64_t j = 0; j < K; ++j)
            worst = fmax(worst, fabs((double)logits[top[j]] - (double)ref[j]));
        int32_t best = 0;
        for (int32_t v = 1; v < cfg->vocab; ++v)
            if (logits[v] > logits[best]) best = v;
        print_message("prompt %d (%lld tokens): max |logit - reference| over the top %lld: %.3g\n", i, (long long)P,
                      (long long)K, worst);
        assert_true(worst <= tol);
        if (ref[0] - ref[1] > 2 * tol) assert_int_equal(best, top[0]);

        kw_kvcache_truncate(cache, 0);
        kw_generate_result res = {0};
        const kw_generate_options go = {.max_new_tokens = (int32_t)G, .round = KW_LOGITS_ROUND_NONE};
        assert_int_equal(kw_generate_greedy(m, cache, ids, P, &go, &res), 0);
        int64_t compared = 0;
        for (int64_t t = 0; t < G && margin[t] > 2 * tol; ++t, ++compared) {
            assert_true(t < res.n);
            if (res.ids[t] != gen[t])
                fail_msg("prompt %d step %lld: token %d, reference %d", i, (long long)t, (int)res.ids[t], (int)gen[t]);
        }
        print_message("prompt %d: %lld of %lld greedy tokens compared and equal\n", i, (long long)compared,
                      (long long)G);
        assert_true(compared >= 1);
        if (compared == G) assert_int_equal(res.n, G);
        kw_generate_result_free(&res);
        kw_kvcache_free(cache);
    }
    free(logits);
    kw_model_free(m);
    kw_backend_destroy(be);
    kwfx_free(&fx);
}

/* ------------------------------------------------------------------------------------------------------------
 * `quantized`: the matmul weights kept quantized (kw_model_options.gguf_weights) give the same bits as the f32 ones.
 */

#define QUANT_DECODE_STEPS 8

/* Every 2-D tensor of a type kept quantized, read as codes, scales and offsets and expanded by the kernels' oracle
 * (kw_ref_quant_dequant), equals the f32 dequantization bit for bit (llama q/k rows un-permuted the same way). */
static void test_quantized_tensors(void **state) {
    (void)state;
    kw_gguf *g = NULL;
    assert_int_equal(kw_gguf_open(g_model, &g), 0);
    kw_model_config cfg;
    assert_int_equal(kw_gguf_model_config(g, &cfg), 0);
    kw_gguf_codes_buf codes = {0};
    void *buf = NULL;
    size_t cap = 0, checked = 0, seen[64] = {0};
    float *w = NULL;
    kw_backend *cpu = NULL;
    assert_int_equal(kw_backend_create_cpu(1, &cpu), 0);
    size_t superblocks = 0;
    for (size_t i = 0; i < kw_gguf_tensor_count(g); ++i) {
        const kw_gguf_tensor *t = kw_gguf_tensor_at(g, i);
        if (t->n_dims != 2 || kw_ggml_quant_layout(t->type) == KW_LAYOUT_ROWS) continue;
        char hf[128];
        int layer = 0;
        snprintf(hf, sizeof hf, "%s", t->name);
        if (sscanf(t->name, "blk.%d.attn_q.weight", &layer) == 1 && strstr(t->name, "attn_q.weight"))
            snprintf(hf, sizeof hf, "model.layers.%d.self_attn.q_proj.weight", layer);
        else if (sscanf(t->name, "blk.%d.attn_k.weight", &layer) == 1 && strstr(t->name, "attn_k.weight"))
            snprintf(hf, sizeof hf, "model.layers.%d.self_attn.k_proj.weight", layer);
        kw_quant_rows q;
        assert_int_equal(kw_gguf_model_read_codes(t, &cfg, hf, &codes, &q), 0);
        int32_t ndim = 0;
        int64_t shape[8];
        size_t nbytes = 0;
        assert_int_equal(kw_gguf_model_read(t, &cfg, hf, KW_DTYPE_F32, &buf, &cap, &ndim, shape, &nbytes), 0);
        assert_true(ndim == 2 && shape[0] == q.n && shape[1] == q.k);
        float *grown = realloc(w, nbytes);
        assert_non_null(grown);
        w = grown;
        kw_ref_quant_dequant(w, &q);
        if (memcmp(w, buf, nbytes) != 0)
            fail_msg("%s (%s): kept-quantized values differ", t->name, kw_ggml_type_name(t->type));
        const enum kw_layout sb = kw_ggml_superblock_layout(t->type);
        assert_true((q.sb_scales != NULL) == (sb != KW_LAYOUT_ROWS && q.k % KW_QUANT_SUPERBLOCK == 0));
        /* packed in its super-block layout (Q6_K: also in 6 bits): get_rows gives the f32 dequantization's rows */
        for (int six = 0; q.sb_scales && six <= (sb == KW_LAYOUT_QPANELS_S8_G16_SB); ++six) {
            q.layout = six ? KW_LAYOUT_QPANELS_S6_G16_SB : sb;
            kw_tensor tq;
            if (kw_tensor_pack_quantized(cpu, &q, &tq) < 0) fail_msg("%s: %s", t->name, kw_error_detail());
            const int32_t ids[3] = {0, (int32_t)(q.n / 2), (int32_t)(q.n - 1)};
            float *rows = malloc((size_t)(3 * q.k) * sizeof(float));
            assert_non_null(rows);
            kw_tensor tid, tr;
            assert_int_equal(kw_tensor_from_host(cpu, &tid, KW_DTYPE_I32, 1, (int64_t[]){3}, ids), 0);
            assert_int_equal(kw_tensor_from_host(cpu, &tr, KW_DTYPE_F32, 2, (int64_t[]){3, q.k}, rows), 0);
            assert_int_equal(kw_op_get_rows(cpu, &tr, &tq, &tid), 0);
            assert_int_equal(kw_backend_synchronize(cpu), 0);
            for (int r = 0; r < 3; ++r)
                if (memcmp(rows + r * q.k, (const float *)buf + ids[r] * q.k, (size_t)q.k * sizeof(float)) != 0)
                    fail_msg("%s (%s): row %d in the super-block layout %d differs", t->name,
                             kw_ggml_type_name(t->type), (int)ids[r], (int)q.layout);
            free(rows);
            kw_tensor_free(&tq);
            ++superblocks;
        }
        ++checked;
        ++seen[t->type];
    }
    print_message(
        "%zu quantized tensors equal their f32 dequantization bit for bit, %zu also in a super-block layout\n", checked,
        superblocks);
    assert_true(checked > 0);
    kw_backend_destroy(cpu);
    if (g_real->arch == KW_ARCH_GEMMA3) /* Q4_K_M: the four types it holds */
        assert_true(seen[KW_GGML_Q4_K] && seen[KW_GGML_Q6_K] && seen[KW_GGML_Q5_0] && seen[KW_GGML_Q8_0] &&
                    superblocks > 0);
    else
        assert_true(seen[KW_GGML_Q4_1] && seen[KW_GGML_Q8_0]);
    free(w);
    free(buf);
    kw_gguf_codes_buf_free(&codes);
    kw_gguf_close(g);
}

/* Loads the real model on a CPU backend of isa with the weights kept quantized or dequantized to f32. */
static kw_model *load_real(const char *isa, int threads, enum kw_gguf_weights how, kw_backend **be) {
    setenv("KW_CPU_ISA", isa, 1);
    assert_int_equal(kw_backend_create_cpu(threads, be), 0);
    unsetenv("KW_CPU_ISA");
    kw_model *m = NULL;
    const kw_model_options opts = {.max_batch = 64, .gguf_weights = how};
    if (kw_model_load(*be, g_model, &opts, &m) < 0) fail_msg("load %s: %s", g_model, kw_error_detail());
    return m;
}

/* Prompt i's ids (*n of them) from the fixture. */
static const int32_t *prompt_ids(const kwfx *fx, int i, int64_t *n) {
    char k[64];
    snprintf(k, sizeof k, "p%d.ids", i);
    const int32_t *ids = kwfx_i32(fx, k, n);
    assert_non_null(ids);
    return ids;
}

/* The last prompt position's logits, then QUANT_DECODE_STEPS greedy steps' logits, into out ((1 + steps) * vocab). */
static void greedy_logits(kw_model *m, const int32_t *ids, int64_t P, float *out) {
    const int64_t V = kw_model_get_config(m)->vocab;
    kw_kvcache *cache = NULL;
    assert_int_equal(kw_model_create_cache(m, P + QUANT_DECODE_STEPS + 1, KW_DTYPE_F32, &cache), 0);
    const kw_forward_args a = {.ids = ids, .n = P, .mode = KW_LOGITS_LAST, .logits = out};
    if (kw_model_forward(m, cache, &a) < 0) fail_msg("forward: %s", kw_error_detail());
    for (int s = 0; s < QUANT_DECODE_STEPS; ++s) {
        const float *prev = out + s * V;
        int32_t next = 0;
        for (int32_t v = 1; v < V; ++v)
            if (prev[v] > prev[next]) next = v;
        int32_t unused = 0;
        assert_int_equal(kw_model_decode_step(m, cache, next, out + (s + 1) * V, &unused, KW_ARGMAX_PLAIN), 0);
    }
    kw_kvcache_free(cache);
}

/* Greedy generation on every prompt of the fixture: the logits of every step (hence every token) are the same bits
 * with the weights kept quantized as with f32 weights, on every ISA (scalar on the first two prompts only), with the
 * prompt prefilled in chunks of 64; and fewer weight bytes are read per token. */
static void test_quantized_generation(void **state) {
    (void)state;
    kwfx fx;
    const int n_prompts = load_fixture(&fx);
    const int64_t V = g_real->vocab, per = (1 + QUANT_DECODE_STEPS) * V;
    float *want = malloc((size_t)(n_prompts * per) * sizeof(float)), *got = malloc((size_t)per * sizeof(float));
    assert_true(want && got);
    kw_backend *be = NULL;
    kw_model *m = load_real("avx512", 2, KW_GGUF_WEIGHTS_DEQUANTIZED, &be);
    const size_t f32_bytes = kw_model_weight_bytes_per_token(m);
    for (int i = 0; i < n_prompts; ++i) {
        int64_t P = 0;
        const int32_t *ids = prompt_ids(&fx, i, &P);
        greedy_logits(m, ids, P, want + i * per);
    }
    kw_model_free(m);
    kw_backend_destroy(be);
    const char *isas[3];
    const int n_isa = kw_backend_cpu_isas(isas);
    for (int is = n_isa - 1; is >= 0; --is) {
        m = load_real(isas[is], is == n_isa - 1 ? 2 : 1, KW_GGUF_WEIGHTS_QUANTIZED, &be);
        const size_t q_bytes = kw_model_weight_bytes_per_token(m);
        print_message("%s: weights read per token %.1f MB kept quantized, %.1f MB in f32\n", isas[is],
                      (double)q_bytes / 1e6, (double)f32_bytes / 1e6);
        assert_true(q_bytes * 3 < f32_bytes);
        const int prompts = strcmp(isas[is], "scalar") == 0 && n_prompts > 2 ? 2 : n_prompts;
        for (int i = 0; i < prompts; ++i) {
            int64_t P = 0;
            const int32_t *ids = prompt_ids(&fx, i, &P);
            greedy_logits(m, ids, P, got);
            for (int64_t j = 0; j < per; ++j)
                if (memcmp(&got[j], &want[i * per + j], sizeof(float)) != 0)
                    fail_msg("%s, prompt %d, step %lld, logit %lld: %.9g kept quantized, %.9g in f32", isas[is], i,
                             (long long)(j / V), (long long)(j % V), (double)got[j], (double)want[i * per + j]);
            print_message("%s, prompt %d (%lld tokens): %d steps of logits identical\n", isas[is], i, (long long)P,
                          1 + QUANT_DECODE_STEPS);
        }
        kw_model_free(m);
        kw_backend_destroy(be);
    }
    free(want);
    free(got);
    kwfx_free(&fx);
}

/* Encodes text with the tokenizer built from the real file and compares with HF's ids. */
static void check_encode(const char *text, const int32_t *want, size_t n_want) {
    kw_tokenizer *tok = NULL;
    assert_int_equal(kw_tokenizer_load(g_model, &tok), 0);
    int32_t *ids = NULL;
    size_t n = 0;
    assert_int_equal(kw_tokenizer_encode(tok, text, strlen(text), &ids, &n), 0);
    assert_int_equal(n, n_want);
    assert_memory_equal(ids, want, n_want * sizeof *want);
    free(ids);
    kw_tokenizer_free(tok);
}

/* Opens the real file and checks its header (version 3, 33 metadata keys, alignment 32, n_tensors tensors) and one
 * tensor's shape and type. The caller closes it. */
static kw_gguf *open_checked(int64_t n_tensors, const char *name, int64_t ne0, int64_t ne1, uint32_t type) {
    kw_gguf *g = NULL;
    assert_int_equal(kw_gguf_open(g_model, &g), 0);
    assert_int_equal(kw_gguf_version(g), 3);
    assert_int_equal(kw_gguf_tensor_count(g), n_tensors);
    assert_int_equal(kw_gguf_kv_count(g), 33);
    assert_int_equal(kw_gguf_alignment(g), 32);
    const kw_gguf_tensor *t = kw_gguf_find_tensor(g, name);
    assert_non_null(t);
    assert_true(t->ne[0] == ne0 && t->ne[1] == ne1 && t->type == type);
    return g;
}

/* The real SmolLM2 file: its header, the tokenizer built from it, the chat template recognised in it. */
static void test_file_smollm2(void) {
    kw_gguf *g = open_checked(272, "blk.29.ffn_down.weight", 1536, 576, 3 /* Q4_1 */);
    kw_gguf_close(g);
    /* HF tokenizers with SmolLM2's pre-tokenizer (digits split one by one) */
    static const int32_t want[] = {1780, 314, 260, 3575, 282, 4649, 47,  533, 216, 34, 32,
                                   34,   36,  28,  216,  35,  282,  216, 33,  34,  30};
    check_encode("What is the capital of France? In 2024, 3 of 12.", want, sizeof want / sizeof want[0]);
    enum kw_chat_family family = KW_CHAT_QWEN3;
    assert_int_equal(kw_chat_family_for_model(g_model, KW_ARCH_LLAMA, &family), 0);
    assert_int_equal(family, KW_CHAT_SMOLLM2);
}

/* The real Gemma 3 file: header, the config kvwire reads from it, its tokenizer, the Gemma chat template. */
static void test_file_gemma3(void) {
    kw_gguf *g = open_checked(236, "blk.17.ffn_down.weight", 2048, 640, 14 /* Q6_K */);
    kw_model_config cfg;
    assert_int_equal(kw_gguf_model_config(g, &cfg), 0);
    kw_gguf_close(g);
    /* Gemma 3 270M's config.json: head_dim 256, 4 heads, 1 KV head, window 512, every sixth layer global */
    assert_true(cfg.hidden == 640 && cfg.head_dim == 256 && cfg.n_heads == 4 && cfg.n_kv_heads == 1);
    assert_true(cfg.sliding_window == 512 && cfg.query_pre_attn_scalar == 256.0);
    assert_true(cfg.rope.theta == 1e6 && cfg.rope_local.theta == 1e4);
    for (int l = 0; l < cfg.n_layers; ++l)
        assert_int_equal(kw_config_layer_window(&cfg, l), l % 6 != 5 ? 512 : 0);
    /* HF tokenizers with Gemma 3's tokenizer.json */
    static const int32_t want[] = {3689,   563,    506,    5279,   529,    7001,   236881, 799,   236743,
                                   236778, 236771, 236778, 236812, 236764, 236743, 236800, 529,   236743,
                                   236770, 236778, 236761, 138,    231436, 5380,   236881, 163543};
    check_encode("What is the capital of France? In 2024, 3 of 12.  \xc3\x87"
                 "a va? \xf0\x9f\x98\x80",
                 want, sizeof want / sizeof want[0]);
    enum kw_chat_family family = KW_CHAT_QWEN3;
    assert_int_equal(kw_chat_family_for_model(g_model, KW_ARCH_GEMMA3, &family), 0);
    assert_int_equal(family, KW_CHAT_GEMMA3);
}

static void test_file(void **state) {
    (void)state;
    if (g_real->arch == KW_ARCH_GEMMA3)
        test_file_gemma3();
    else
        test_file_smollm2();
}

int main(int argc, char **argv) {
    for (size_t i = 0; argc == 3 && i < sizeof g_models / sizeof g_models[0]; ++i)
        if (strcmp(argv[1], g_models[i].name) == 0) g_real = &g_models[i];
    if (!g_real ||
        (strcmp(argv[2], "file") != 0 && strcmp(argv[2], "parity") != 0 && strcmp(argv[2], "quantized") != 0)) {
        fprintf(stderr, "usage: test_model_real smollm2|gemma3 file|parity|quantized\n");
        return 2;
    }
    const int f = fetch_model(g_real->fetch);
    if (f) return f;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_file),
    };
    const struct CMUnitTest parity_tests[] = {
        cmocka_unit_test(test_parity),
    };
    const struct CMUnitTest quantized_tests[] = {
        cmocka_unit_test(test_quantized_tensors),
        cmocka_unit_test(test_quantized_generation),
    };
    if (strcmp(argv[2], "quantized") == 0) return cmocka_run_group_tests(quantized_tests, NULL, NULL);
    return strcmp(argv[2], "parity") == 0 ? cmocka_run_group_tests(parity_tests, NULL, NULL)
                                          : cmocka_run_group_tests(tests, NULL, NULL);
}
