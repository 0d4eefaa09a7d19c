/* test_genmodel.c: the deterministic model generator. Same seed -> same bytes (and the bytes of the demo models are
 * pinned by digests taken from files that tools/check_genmodel_hf.py verified against transformers and an
 * independent numpy implementation), different seed -> different weights, and every written folder reloads with
 * kw_config_load and kw_safetensors_open with the HF names, shapes and values expected. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/kw_file.h"
#include "common/kw_half.h"
#include "common/kw_status.h"
#include "model/kw_config.h"
#include "model/kw_genmodel.h"
#include "model/kw_safetensors.h"
#include "tests/kw_test_util.h"

static char g_dir[64];

static int setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/kw_test_gen_XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static const char *const g_files[] = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                                      "tokenizer_config.json"};

static int teardown(void **state) {
    (void)state;
    kw_test_remove_tree(g_dir);
    return 0;
}

static const char *sub(const char *name) {
    static char buf[4][128];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", g_dir, name);
    return buf[k];
}

static char *read_file(const char *dir, const char *name, size_t *n) {
    char *p = kw_path_join(dir, name), *data = NULL;
    assert_int_equal(kw_file_read_all(p, (size_t)1 << 30, &data, n), 0);
    free(p);
    return data;
}

static uint64_t fnv1a(const char *data, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; ++i)
        h = (h ^ (unsigned char)data[i]) * 0x100000001b3ull;
    return h;
}

static void gen(const char *preset, enum kw_arch arch, uint64_t seed, enum kw_dtype dtype, const char *tok,
                const char *dir) {
    kw_genmodel_options o;
    memset(&o, 0, sizeof o);
    assert_int_equal(kw_genmodel_preset(preset, &arch, &o.cfg), 0);
    o.dtype = dtype;
    o.seed = seed;
    o.tokenizer_dir = tok;
    const int rc = kw_genmodel_write(&o, dir);
    if (rc != 0) fail_msg("gen %s: %s", dir, kw_error_detail());
}

/* ------------------------------------------------------------------------------------------------------------ */

/* Values from tools/check_genmodel_hf.py's numpy expected_f32 (an independent implementation of the formula). */
static void test_value_formula(void **state) {
    (void)state;
    assert_true(kw_genmodel_value(1, "model.embed_tokens.weight", 0, 0) == 0x1.2cc4p-8f);
    assert_true(kw_genmodel_value(1, "model.embed_tokens.weight", 0, 1) == 0x1.82p-11f);
    assert_true(kw_genmodel_value(1, "model.embed_tokens.weight", 0, 9723903) == 0x1.4eacp-6f);
    assert_true(kw_genmodel_value(2, "model.layers.1.self_attn.q_norm.weight", 1, 0) == 0x1.0fdc3p+0f);
    assert_true(kw_genmodel_value(2, "model.layers.1.self_attn.q_norm.weight", 1, 5) == 0x1.034fcp+0f);
    assert_true(kw_genmodel_value(12345, "lm_head.weight", 0, 7) == 0x1.8c84p-7f);
    /* Gemma3's zero-centred norm kind: the norm formula minus 1 */
    assert_true(kw_genmodel_value(2, "model.layers.1.input_layernorm.weight", KW_GENMODEL_OFFSET, 0) == 0x1.aa0cp-4f);
    assert_true(kw_genmodel_value(2, "model.layers.1.input_layernorm.weight", KW_GENMODEL_OFFSET, 5) == 0x1.be54p-6f);
    for (uint64_t i = 0; i < 1000; ++i)
        assert_true(kw_genmodel_value(3, "o", KW_GENMODEL_OFFSET, i) ==
                    kw_genmodel_value(3, "o", KW_GENMODEL_NORM, i) - 1);

    /* statistics over many draws: matrix sd 2^-6, norm mean 1 sd 2^-4, bounded by 6 sd */
    double s = 0, s2 = 0, ns = 0, ns2 = 0;
    const int n = 200000;
    for (int i = 0; i < n; ++i) {
        const double v = kw_genmodel_value(7, "w", 0, (uint64_t)i), u = kw_genmodel_value(7, "n", 1, (uint64_t)i);
        assert_true(v > -6.0 / 64 && v < 6.0 / 64);
        s += v, s2 += v * v, ns += u, ns2 += u * u;
    }
    const double mean = s / n, sd = s2 / n - mean * mean, nmean = ns / n, nsd = ns2 / n - nmean * nmean;
    assert_true(mean > -2e-4 && mean < 2e-4);
    assert_true(sd > 0.98 / 4096 && sd < 1.02 / 4096); /* variance 2^-12 */
    assert_true(nmean > 0.999 && nmean < 1.001);
    assert_true(nsd > 0.98 / 256 && nsd < 1.02 / 256);
    /* a different name or seed is a different stream */
    assert_true(kw_genmodel_value(7, "w", 0, 0) != kw_genmodel_value(7, "x", 0, 0) ||
                kw_genmodel_value(7, "w", 0, 1) != kw_genmodel_value(7, "x", 0, 1));
    assert_true(kw_genmodel_value(7, "w", 0, 0) != kw_genmodel_value(8, "w", 0, 0) ||
                kw_genmodel_value(7, "w", 0, 1) != kw_genmodel_value(8, "w", 0, 1));
}

static void test_presets(void **state) {
    (void)state;
    kw_model_config c;
    enum kw_arch a = KW_ARCH_QWEN3;
    assert_int_equal(kw_genmodel_preset("tiny", &a, &c), 0);
    assert_int_equal(c.arch, KW_ARCH_QWEN3);
    assert_int_equal(c.hidden, 64);
    assert_int_equal(c.head_dim, 32);
    assert_int_equal(c.vocab, 151936);
    assert_int_equal(kw_config_validate(&c), 0);
    assert_int_equal(kw_genmodel_preset("tiny", NULL, &c), KW_E_INVALID_ARG);
    a = KW_ARCH_GEMMA3;
    assert_int_equal(kw_genmodel_preset("tiny", &a, &c), 0);
    assert_int_equal(c.vocab, 262144);
    assert_int_equal(c.sliding_window, 16);
    assert_int_equal(c.layer_sliding[0], 1);
    assert_int_equal(c.layer_sliding[1], 0);
    assert_int_equal(c.act, KW_ACT_GELU_TANH);
    assert_true(c.query_pre_attn_scalar == 32.0);
    assert_int_equal(kw_config_validate(&c), 0);
    a = (enum kw_arch)9;
    assert_int_equal(kw_genmodel_preset("tiny", &a, &c), KW_E_INVALID_ARG);
    assert_int_equal(kw_genmodel_preset("huge", NULL, &c), KW_E_INVALID_ARG);
    a = KW_ARCH_LLAMA;
    assert_int_equal(kw_genmodel_preset("qwen3-0.6b", &a, &c), KW_E_INVALID_ARG);

    /* the real shapes, checked against the real configs in tests/data/model/configs */
    struct {
        const char *preset, *dir;
    } real[] = {
        {"qwen3-0.6b", "qwen3-0.6b"},
        {"qwen2.5-0.5b", "qwen2.5-0.5b-instruct"},
        {"llama-3.2-1b", "llama-3.2-1b-instruct"},
        {"gemma-3-270m", "gemma-3-270m"},
    };
    for (size_t i = 0; i < sizeof real / sizeof real[0]; ++i) {
        kw_model_config want, got;
        assert_int_equal(kw_genmodel_preset(real[i].preset, NULL, &c), 0);
        char dir[256];
        snprintf(dir, sizeof dir, "%s/model/configs/%s", KW_TEST_DATA_DIR, real[i].dir);
        assert_int_equal(kw_config_load(dir, &want), 0);
        /* the preset's own config.json text parses back to the same config as the real files */
        char *cj = NULL, *gj = NULL;
        assert_int_equal(kw_genmodel_config_json(&c, KW_DTYPE_BF16, &cj), 0);
        assert_int_equal(kw_genmodel_generation_json(&c, &gj), 0);
        assert_int_equal(kw_config_parse(cj, gj, &got), 0);
        free(cj);
        free(gj);
        assert_memory_equal(&want, &got, sizeof want);
    }
}

static void test_fit_special_ids(void **state) {
    (void)state;
    kw_model_config c;
    enum kw_arch a = KW_ARCH_QWEN3;
    assert_int_equal(kw_genmodel_preset("tiny", &a, &c), 0);
    assert_int_equal(kw_genmodel_fit_special_ids(&c), 0);
    c.vocab = 1000;
    assert_int_equal(kw_genmodel_fit_special_ids(&c), 1);
    assert_int_equal(c.bos_id, 998);
    assert_int_equal(c.pad_id, 998);
    assert_int_equal(c.n_eos, 1); /* both eos ids land on 999: deduplicated */
    assert_int_equal(c.eos_ids[0], 999);
    assert_int_equal(kw_config_validate(&c), 0);
}

/* The demo models: pinned bytes. The digests are FNV-1a-64 of model.safetensors computed (in Python) from files that
 * tools/check_genmodel_hf.py had verified bit for bit against its numpy implementation and loaded in transformers. */
static void test_demo_models_pinned(void **state) {
    (void)state;
    const char *tok_q = KW_SOURCE_DIR "/models/tokenizers/qwen3";
    struct {
        enum kw_arch arch;
        uint64_t seed, digest;
        size_t size;
    } cases[] = {
        {KW_ARCH_QWEN3, 1, 0xb9dd1717d5fafbe4ull, 19647912},
        {KW_ARCH_QWEN2, 2, 0x0dd1a5154991e946ull, 19599208},
        {KW_ARCH_LLAMA, 3, 0xa3b0c2bec77689fbull, 32983888},
        {KW_ARCH_GEMMA3, 4, 0x24821664607ebbc7ull, 33739120},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
        const char *dir = sub("a");
        gen("tiny", cases[i].arch, cases[i].seed, KW_DTYPE_BF16, cases[i].arch == KW_ARCH_LLAMA ? NULL : tok_q, dir);
        size_t n = 0;
        char *m = read_file(dir, "model.safetensors", &n);
        assert_int_equal(n, cases[i].size);
        const uint64_t h = fnv1a(m, n);
        if (h != cases[i].digest)
            fail_msg("%s seed %llu: digest %016llx, pinned %016llx", kw_arch_name(cases[i].arch),
                     (unsigned long long)cases[i].seed, (unsigned long long)h, (unsigned long long)cases[i].digest);
        free(m);
        kw_test_remove_tree(dir);
    }
}

static void test_determinism(void **state) {
    (void)state;
    const char *tok = KW_SOURCE_DIR "/models/tokenizers/qwen3";
    gen("tiny", KW_ARCH_QWEN2, 5, KW_DTYPE_BF16, tok, sub("b"));
    gen("tiny", KW_ARCH_QWEN2, 5, KW_DTYPE_BF16, tok, sub("c"));
    gen("tiny", KW_ARCH_QWEN2, 6, KW_DTYPE_BF16, tok, sub("d"));
    for (size_t f = 0; f < sizeof g_files / sizeof g_files[0]; ++f) {
        size_t n1 = 0, n2 = 0, n3 = 0;
        char *a = read_file(sub("b"), g_files[f], &n1), *b = read_file(sub("c"), g_files[f], &n2);
        char *c = read_file(sub("d"), g_files[f], &n3);
        assert_int_equal(n1, n2);
        assert_memory_equal(a, b, n1); /* same seed: same bytes */
        assert_int_equal(n1, n3);      /* another seed: same layout ... */
        if (strcmp(g_files[f], "model.safetensors") == 0) {
            size_t differ = 0;
            for (size_t i = 0; i < n1; ++i)
                differ += a[i] != c[i];
            assert_true(differ > n1 / 2); /* ... different weights (bf16 bytes: most differ) */
        } else {
            assert_memory_equal(a, c, n1);
        }
        free(a);
        free(b);
        free(c);
    }
    /* the tokenizer files are copies */
    size_t n1 = 0, n2 = 0;
    char *a = read_file(sub("b"), "tokenizer.json", &n1), *b = read_file(tok, "tokenizer.json", &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(a, b, n1);
    free(a);
    free(b);
}

static int64_t elems(const kw_st_tensor *t) {
    int64_t n = 1;
    for (int32_t i = 0; i < t->ndim; ++i)
        n *= t->shape[i];
    return n;
}

static float elem(const kw_st_tensor *t, int64_t i) {
    const unsigned char *p = t->data;
    if (t->dtype == KW_DTYPE_F32)
        return kw_f32_from_bits((uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 | (uint32_t)p[4 * i + 2] << 16 |
                                (uint32_t)p[4 * i + 3] << 24);
    const uint16_t h = (uint16_t)(p[2 * i] | p[2 * i + 1] << 8);
    return t->dtype == KW_DTYPE_BF16 ? kw_bf16_to_f32(h) : kw_f16_to_f32(h);
}

static float rounded(float v, enum kw_dtype d) {
    return d == KW_DTYPE_F32 ? v : d == KW_DTYPE_BF16 ? kw_round_bf16(v) : kw_round_f16(v);
}

/* Reload a generated model: names, shapes, dtypes and (sampled) values. */
static void check_reload(const char *dir, const kw_model_config *want, enum kw_dtype dtype, uint64_t seed) {
    kw_model_config c;
    assert_int_equal(kw_config_load(dir, &c), 0);
    assert_int_equal(c.arch, want->arch);
    assert_int_equal(c.n_layers, want->n_layers);
    assert_int_equal(c.hidden, want->hidden);
    assert_int_equal(c.head_dim, want->head_dim);
    assert_int_equal(c.vocab, want->vocab);
    assert_int_equal(c.tie_embeddings, want->tie_embeddings);
    assert_int_equal(c.weight_dtype, dtype);
    assert_int_equal(c.rope.scaling, want->rope.scaling);
    assert_int_equal(c.n_eos, want->n_eos);
    assert_int_equal(c.sliding_window, want->sliding_window);
    assert_memory_equal(c.layer_sliding, want->layer_sliding, sizeof c.layer_sliding);
    assert_int_equal(c.attention_bias, want->attention_bias);
    kw_safetensors *st = NULL;
    assert_int_equal(kw_safetensors_open(dir, &st), 0);
    const int64_t h = c.hidden, q = (int64_t)c.n_heads * c.head_dim, kv = (int64_t)c.n_kv_heads * c.head_dim;
    const int gemma = c.arch == KW_ARCH_GEMMA3, nk = gemma ? KW_GENMODEL_OFFSET : KW_GENMODEL_NORM;
    struct {
        const char *fmt;
        int64_t rows, cols; /* cols 0: 1-D */
        int present, norm;
    } expect[] = {
        {"model.layers.%d.input_layernorm.weight", h, 0, 1, nk},
        {"model.layers.%d.self_attn.q_proj.weight", q, h, 1, 0},
        {"model.layers.%d.self_attn.k_proj.weight", kv, h, 1, 0},
        {"model.layers.%d.self_attn.v_proj.weight", kv, h, 1, 0},
        {"model.layers.%d.self_attn.o_proj.weight", h, q, 1, 0},
        {"model.layers.%d.self_attn.q_proj.bias", q, 0, c.attention_bias, 0},
        {"model.layers.%d.self_attn.k_proj.bias", kv, 0, c.attention_bias, 0},
        {"model.layers.%d.self_attn.v_proj.bias", kv, 0, c.attention_bias, 0},
        {"model.layers.%d.self_attn.o_proj.bias", h, 0, c.o_bias, 0},
        {"model.layers.%d.self_attn.q_norm.weight", c.head_dim, 0, c.qk_norm, nk},
        {"model.layers.%d.self_attn.k_norm.weight", c.head_dim, 0, c.qk_norm, nk},
        {"model.layers.%d.post_attention_layernorm.weight", h, 0, 1, nk},
        {"model.layers.%d.pre_feedforward_layernorm.weight", h, 0, gemma, nk},
        {"model.layers.%d.post_feedforward_layernorm.weight", h, 0, gemma, nk},
        {"model.layers.%d.mlp.gate_proj.weight", c.intermediate, h, 1, 0},
        {"model.layers.%d.mlp.gate_proj.bias", c.intermediate, 0, c.mlp_bias, 0},
        {"model.layers.%d.mlp.up_proj.weight", c.intermediate, h, 1, 0},
        {"model.layers.%d.mlp.up_proj.bias", c.intermediate, 0, c.mlp_bias, 0},
        {"model.layers.%d.mlp.down_proj.weight", h, c.intermediate, 1, 0},
        {"model.layers.%d.mlp.down_proj.bias", h, 0, c.mlp_bias, 0},
    };
    size_t count = 0;
    for (int32_t l = -1; l < c.n_layers; ++l) {
        for (size_t e = 0; e < (l < 0 ? 3u : sizeof expect / sizeof expect[0]); ++e) {
            char name[128];
            int64_t rows, cols;
            int present, norm;
            if (l < 0) { /* the non-layer tensors */
                const char *names[] = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"};
                snprintf(name, sizeof name, "%s", names[e]);
                rows = e == 1 ? h : c.vocab;
                cols = e == 1 ? 0 : h;
                present = e < 2 || !c.tie_embeddings;
                norm = e == 1 ? nk : KW_GENMODEL_MATRIX;
            } else {
                snprintf(name, sizeof name, expect[e].fmt, (int)l);
                rows = expect[e].rows;
                cols = expect[e].cols;
                present = expect[e].present;
                norm = expect[e].norm;
            }
            const kw_st_tensor *t = kw_safetensors_find(st, name);
            if (!present) {
                if (t) fail_msg("%s: unexpected tensor %s", dir, name);
                continue;
            }
            if (!t) fail_msg("%s: missing tensor %s", dir, name);
            ++count;
            assert_int_equal(t->dtype, dtype);
            assert_int_equal(t->ndim, cols ? 2 : 1);
            assert_int_equal(t->shape[0], rows);
            if (cols) assert_int_equal(t->shape[1], cols);
            const int64_t n = elems(t);
            for (int64_t i = 0; i < n; i += 1 + n / 97)
                assert_true(elem(t, i) == rounded(kw_genmodel_value(seed, name, norm, (uint64_t)i), dtype));
            assert_true(elem(t, n - 1) == rounded(kw_genmodel_value(seed, name, norm, (uint64_t)(n - 1)), dtype));
        }
    }
    assert_int_equal(count, kw_safetensors_count(st)); /* and nothing else */
    kw_safetensors_close(st);
}

static void test_reload_variants(void **state) {
    (void)state;
    struct {
        enum kw_arch arch;
        enum kw_dtype dtype;
        int32_t vocab, layers, tied;
    } cases[] = {
        {KW_ARCH_QWEN3, KW_DTYPE_BF16, 0, 0, -1},   {KW_ARCH_QWEN2, KW_DTYPE_F32, 512, 3, -1},
        {KW_ARCH_LLAMA, KW_DTYPE_F16, 300, 1, -1},  {KW_ARCH_LLAMA, KW_DTYPE_BF16, 256, 2, 1},
        {KW_ARCH_QWEN3, KW_DTYPE_F32, 128, 1, 0},   {KW_ARCH_GEMMA3, KW_DTYPE_F32, 512, 3, -1},
        {KW_ARCH_GEMMA3, KW_DTYPE_BF16, 300, 2, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
        kw_genmodel_options o;
        memset(&o, 0, sizeof o);
        assert_int_equal(kw_genmodel_preset("tiny", &cases[i].arch, &o.cfg), 0);
        if (cases[i].vocab) o.cfg.vocab = cases[i].vocab;
        if (cases[i].layers) o.cfg.n_layers = cases[i].layers;
        if (cases[i].tied >= 0) o.cfg.tie_embeddings = cases[i].tied;
        if (cases[i].arch == KW_ARCH_LLAMA && i == 2) o.cfg.mlp_bias = o.cfg.attention_bias = o.cfg.o_bias = 1;
        if (cases[i].arch == KW_ARCH_GEMMA3) {
            assert_int_equal(kw_config_set_sliding_pattern(&o.cfg, 2), 0);
            if (cases[i].tied == 0) o.cfg.attention_bias = o.cfg.o_bias = 1;
        }
        kw_genmodel_fit_special_ids(&o.cfg);
        o.dtype = cases[i].dtype;
        o.seed = 100 + i;
        const char *dir = sub("e");
        const int rc = kw_genmodel_write(&o, dir);
        if (rc) fail_msg("case %zu: %s", i, kw_error_detail());
        check_reload(dir, &o.cfg, o.dtype, o.seed);
        kw_test_remove_tree(dir);
    }
}

static void test_errors(void **state) {
    (void)state;
    kw_genmodel_options o;
    memset(&o, 0, sizeof o);
    enum kw_arch a = KW_ARCH_QWEN2;
    assert_int_equal(kw_genmodel_preset("tiny", &a, &o.cfg), 0);
    o.dtype = KW_DTYPE_I32;
    assert_int_equal(kw_genmodel_write(&o, sub("f")), KW_E_INVALID_ARG);
    o.dtype = KW_DTYPE_BF16;
    o.tokenizer_dir = g_dir; /* no tokenizer.json there */
    assert_int_equal(kw_genmodel_write(&o, sub("f")), KW_E_NOT_FOUND);
    o.tokenizer_dir = NULL;
    o.cfg.n_kv_heads = 3; /* 4 heads */
    assert_int_equal(kw_genmodel_write(&o, sub("f")), KW_E_MODEL_CONFIG);
    assert_int_equal(kw_genmodel_write(&o, "/nonexistent-parent/x"), KW_E_MODEL_CONFIG);
    o.cfg.n_kv_heads = 2;
    assert_int_equal(kw_genmodel_write(&o, "/nonexistent-parent/x"), KW_E_IO);
    assert_int_equal(kw_genmodel_write(NULL, sub("f")), KW_E_INVALID_ARG);
    /* Gemma3 layer kinds that no sliding_window_pattern gives */
    a = KW_ARCH_GEMMA3;
    assert_int_equal(kw_genmodel_preset("tiny", &a, &o.cfg), 0);
    o.cfg.n_layers = 4;
    const uint8_t odd[4] = {0, 1, 1, 0};
    memcpy(o.cfg.layer_sliding, odd, sizeof odd);
    assert_int_equal(kw_genmodel_write(&o, sub("f")), KW_E_INVALID_ARG);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_value_formula),   cmocka_unit_test(test_presets),
        cmocka_unit_test(test_fit_special_ids), cmocka_unit_test(test_demo_models_pinned),
        cmocka_unit_test(test_determinism),     cmocka_unit_test(test_reload_variants),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
