/* test_model_gguf.c: models loaded from GGUF files (tests/data/model/gguf, tools/make_gguf_fixtures.py models): tiny
 * Qwen2, Qwen3 and Llama models written as llama.cpp writes them (its names and keys, llama q/k rows permuted, 2-D
 * weights quantized to Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 F16 BF16 F32 in turn), against transformers' model classes run on the
 * weights transformers' GGUF loader would prepare; an unquantized GGUF against the HF folder it came from; the
 * configuration mapping; bf16 dequantization.
 *
 * Tolerance: as test_model_parity.c, max |ours - ref| / max |ref| <= 1e-4 over each logits row. Both sides hold the
 * same f32 weights (dequantization is bit-exact, test_model_dequant) and differ only in summation order. A wrong
 * name, a missing un-permutation or a wrong dequantizer moves logits by O(1). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/kw_status.h"
#include "kernels/kw_backend.h"
#include "model/kw_generate.h"
#include "model/kw_gguf.h"
#include "model/kw_identity.h"
#include "model/kw_model.h"
#include "model_fixture.h"

#define FP32_TOL 1e-4

static kw_model *load(kw_backend *be, const char *path, enum kw_dtype dtype) {
    kw_model *m = NULL;
    const kw_model_options o = {.weights = {.gguf_dtype = dtype}};
    const int rc = kw_model_load(be, path, &o, &m);
    if (rc < 0) fail_msg("load %s: %s (%s)", path, kw_status_name(rc), kw_error_detail());
    return m;
}

static void check_case(const char *name) {
    char path[1024];
    kw_backend *be = NULL;
    kwfx fx;
    assert_int_equal(kw_backend_create_cpu(2, &be), 0);
    snprintf(path, sizeof path, "%s/model/gguf/%s.kwfx", KW_TEST_DATA_DIR, name);
    assert_int_equal(kwfx_load(path, &fx), 0);
    snprintf(path, sizeof path, "%s/model/gguf/%s.gguf", KW_TEST_DATA_DIR, name);
    kw_model *m = load(be, path, KW_DTYPE_F32);
    const kw_model_config *cfg = kw_model_get_config(m);
    int64_t P = 0, G = 0;
    const int32_t *prompt = kwfx_i32(&fx, "prompt_ids", &P);
    const int32_t *gen = kwfx_i32(&fx, "gen_ids", &G);
    assert_true(prompt && gen && P > 0 && G > 0);
    const float *want = kwfx_f32_expect(&fx, "logits", P * cfg->vocab);
    float *got = kwfx_prompt_logits(m, prompt, P);
    const double d = kwfx_rel_diff_rows(got, want, P, cfg->vocab);
    print_message("%s: prompt logits max relative difference %.3g\n", name, d);
    assert_true(d <= FP32_TOL);

    kw_kvcache *cache = NULL;
    assert_int_equal(kw_model_create_cache(m, P + G, KW_DTYPE_F32, &cache), 0);
    const kw_generate_options go = {.max_new_tokens = (int32_t)G, .round = KW_LOGITS_ROUND_NONE};
    kw_generate_result res = {0};
    assert_int_equal(kw_generate_greedy(m, cache, prompt, P, &go, &res), 0);
    /* the fixture's model has EOS 511 but generated with eos_token_id=None: compare the common prefix */
    assert_true(res.n >= 1);
    for (int64_t i = 0; i < res.n && i < G; ++i)
        assert_int_equal(res.ids[i], gen[i]);
    kw_generate_result_free(&res);
    kw_kvcache_free(cache);
    free(got);
    kw_model_free(m);
    kwfx_free(&fx);
    kw_backend_destroy(be);
}

static void test_qwen2_quantized(void **state) {
    (void)state;
    check_case("qwen2_q");
}

static void test_qwen3_quantized(void **state) {
    (void)state;
    check_case("qwen3_q");
}

static void test_llama_quantized(void **state) {
    (void)state;
    check_case("llama_q");
}

static void test_qwen3_f32(void **state) {
    (void)state;
    check_case("qwen3_f32");
}

/* Weights kept quantized (Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 in these files; F16, BF16 and F32 weights dequantized as before)
 * give the logits of the f32 weights bit for bit, llama's un-permuted q/k rows included, on the best ISA and on the
 * scalar one; fewer bytes are read per token. */
static void test_kept_quantized_same_bits(void **state) {
    (void)state;
    static const char *const cases[] = {"qwen2_q", "qwen3_q", "llama_q"};
    static const char *const isas[] = {"avx512", "scalar"};
    const int32_t ids[] = {5, 17, 300, 2, 99, 511, 0, 42};
    const int64_t n = sizeof ids / sizeof ids[0];
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; ++c) {
        char path[1024];
        snprintf(path, sizeof path, "%s/model/gguf/%s.gguf", KW_TEST_DATA_DIR, cases[c]);
        kw_backend *be = NULL;
        assert_int_equal(kw_backend_create_cpu(2, &be), 0);
        kw_model *f = NULL;
        const kw_model_options deq = {.gguf_weights = KW_GGUF_WEIGHTS_DEQUANTIZED};
        assert_int_equal(kw_model_load(be, path, &deq, &f), 0);
        float *want = kwfx_prompt_logits(f, ids, n);
        const int64_t V = kw_model_get_config(f)->vocab;
        for (size_t i = 0; i < sizeof isas / sizeof isas[0]; ++i) {
            setenv("KW_CPU_ISA", isas[i], 1);
            kw_backend *bq = NULL;
            assert_int_equal(kw_backend_create_cpu(1, &bq), 0);
            unsetenv("KW_CPU_ISA");
            kw_model *q = NULL;
            const kw_model_options o = {.gguf_weights = KW_GGUF_WEIGHTS_QUANTIZED};
            assert_int_equal(kw_model_load(bq, path, &o, &q), 0);
            assert_true(kw_model_weight_bytes_per_token(q) < kw_model_weight_bytes_per_token(f));
            float *got = kwfx_prompt_logits(q, ids, n);
            if (memcmp(got, want, (size_t)(n * V) * sizeof *got) != 0)
                fail_msg("%s, %s: logits differ", cases[c], isas[i]);
            free(got);
            kw_model_free(q);
            kw_backend_destroy(bq);
        }
        free(want);
        kw_model_free(f);
        kw_backend_destroy(be);
    }
    /* an out-of-range choice is refused */
    kw_backend *be = NULL;
    assert_int_equal(kw_backend_create_cpu(1, &be), 0);
    kw_model *m = NULL;
    const kw_model_options bad = {.gguf_weights = (enum kw_gguf_weights)7};
    assert_int_equal(kw_model_load(be, KW_TEST_DATA_DIR "/model/gguf/llama_q.gguf", &bad, &m), KW_E_INVALID_ARG);
    kw_backend_destroy(be);
}

/* The unquantized GGUF and the HF folder it was written from give the same bits. */
static void test_same_bits_as_hf_folder(void **state) {
    (void)state;
    kw_backend *be = NULL;
    assert_int_equal(kw_backend_create_cpu(2, &be), 0);
    kw_model *g = load(be, KW_TEST_DATA_DIR "/model/gguf/qwen3_f32.gguf", KW_DTYPE_F32);
    kw_model *h = load(be, KW_TEST_DATA_DIR "/model/hf/qwen3_gqa3", KW_DTYPE_F32);
    const kw_model_config *cg = kw_model_get_config(g), *ch = kw_model_get_config(h);
    assert_int_equal(cg->arch, ch->arch);
    assert_int_equal(cg->n_layers, ch->n_layers);
    assert_int_equal(cg->head_dim, ch->head_dim);
    assert_int_equal(cg->qk_norm, 1);
    assert_int_equal(cg->tie_embeddings, ch->tie_embeddings);
    assert_true(cg->rope.theta == ch->rope.theta && cg->rms_eps == ch->rms_eps);
    assert_int_equal(kw_model_weight_bytes_per_token(g), kw_model_weight_bytes_per_token(h));
    const int32_t ids[] = {5, 17, 300, 2, 99, 511, 0, 42};
    const int64_t n = sizeof ids / sizeof ids[0];
    float *a = kwfx_prompt_logits(g, ids, n), *b = kwfx_prompt_logits(h, ids, n);
    assert_memory_equal(a, b, (size_t)(n * cg->vocab) * sizeof *a);
    free(a);
    free(b);
    kw_model_free(g);
    kw_model_free(h);
    kw_backend_destroy(be);
}

/* A GGUF file's identity (what sharerd and receiverd compare at hello): the configuration digest covers the bytes
 * before the tensor data, the weights digest the tensor data; one flipped weight byte changes the second only. */
static void test_identity(void **state) {
    (void)state;
    const char *src = KW_TEST_DATA_DIR "/model/gguf/qwen3_f32.gguf";
    kw_model_digest a, b, c;
    assert_int_equal(kw_identity_model(src, &a), 0);
    assert_int_equal(kw_identity_model(src, &b), 0);
    assert_memory_equal(&a, &b, sizeof a);
    assert_memory_not_equal(a.config_sha256, a.weights_sha256, KW_IDENTITY_DIGEST_BYTES);
    kw_gguf *g = NULL;
    assert_int_equal(kw_gguf_open(src, &g), 0);
    const size_t data = kw_gguf_data_offset(g), size = kw_gguf_file_size(g);
    kw_gguf_close(g);
    assert_true(data < size);
    FILE *f = fopen(src, "rb");
    assert_non_null(f);
    unsigned char *bytes = malloc(size);
    assert_non_null(bytes);
    assert_int_equal(fread(bytes, 1, size, f), size);
    fclose(f);
    bytes[data + (size - data) / 2] ^= 0x10;
    char copy[] = "/tmp/kw_test_identity_XXXXXX";
    const int fd = mkstemp(copy);
    assert_true(fd >= 0);
    f = fdopen(fd, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(bytes, 1, size, f), size);
    fclose(f);
    assert_int_equal(kw_identity_model(copy, &c), 0);
    assert_memory_equal(a.config_sha256, c.config_sha256, KW_IDENTITY_DIGEST_BYTES);
    assert_memory_not_equal(a.weights_sha256, c.weights_sha256, KW_IDENTITY_DIGEST_BYTES);
    /* A file cut inside its tensor data is refused, not hashed. */
    f = fopen(copy, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(bytes, 1, size - 1, f), size - 1);
    fclose(f);
    assert_true(kw_identity_model(copy, &c) < 0);
    unlink(copy);
    free(bytes);
}

/* What the metadata and the tensors present map to. */
static void test_config_mapping(void **state) {
    (void)state;
    kw_backend *be = NULL;
    assert_int_equal(kw_backend_create_cpu(1, &be), 0);
    kw_model *m = load(be, KW_TEST_DATA_DIR "/model/gguf/llama_q.gguf", KW_DTYPE_F32);
    const kw_model_config *c = kw_model_get_config(m);
    assert_int_equal(c->arch, KW_ARCH_LLAMA);
    assert_int_equal(c->n_layers, 2);
    assert_int_equal(c->hidden, 64);
    assert_int_equal(c->n_heads, 4);
    assert_int_equal(c->n_kv_heads, 1);
    assert_int_equal(c->head_dim, 16);
    assert_int_equal(c->intermediate, 192);
    assert_int_equal(c->vocab, 512);
    assert_int_equal(c->max_positions, 256);
    assert_int_equal(c->attention_bias, 1);
    assert_int_equal(c->o_bias, 1);
    assert_int_equal(c->mlp_bias, 1);
    assert_int_equal(c->qk_norm, 0);
    assert_int_equal(c->tie_embeddings, 0);
    assert_int_equal(c->rope.scaling, KW_ROPE_SCALING_NONE);
    assert_int_equal(c->bos_id, 1);
    assert_int_equal(c->n_eos, 1);
    assert_int_equal(c->eos_ids[0], 511);
    assert_int_equal(c->add_bos, -1);
    assert_int_equal(kw_model_logits_weight_dtype(m), KW_DTYPE_F32);
    kw_model_free(m);
    m = load(be, KW_TEST_DATA_DIR "/model/gguf/qwen2_q.gguf", KW_DTYPE_F32);
    c = kw_model_get_config(m);
    assert_int_equal(c->arch, KW_ARCH_QWEN2);
    assert_int_equal(c->attention_bias, 1);
    assert_int_equal(c->o_bias, 0);
    assert_int_equal(c->tie_embeddings, 1);
    kw_model_free(m);
    kw_backend_destroy(be);
}

/* Weights dequantized to bf16 on request: the model runs with bf16 weights, the logits move by about the bf16
 * rounding of the weights (2^-9 relative each; measured 2.3e-2 on these random weights), far less than the O(1) of a
 * mapping error. */
static void test_bf16_weights(void **state) {
    (void)state;
    kw_backend *be = NULL;
    kwfx fx;
    assert_int_equal(kw_backend_create_cpu(2, &be), 0);
    assert_int_equal(kwfx_load(KW_TEST_DATA_DIR "/model/gguf/qwen3_q.kwfx", &fx), 0);
    kw_model *m = load(be, KW_TEST_DATA_DIR "/model/gguf/qwen3_q.gguf", KW_DTYPE_BF16);
    assert_int_equal(kw_model_logits_weight_dtype(m), KW_DTYPE_BF16);
    int64_t P = 0;
    const int32_t *prompt = kwfx_i32(&fx, "prompt_ids", &P);
    const int64_t V = kw_model_get_config(m)->vocab;
    float *got = kwfx_prompt_logits(m, prompt, P);
    const double d = kwfx_rel_diff_rows(got, kwfx_f32_expect(&fx, "logits", P * V), P, V);
    print_message("qwen3_q with bf16 weights: max relative difference %.3g\n", d);
    assert_true(d > 0 && d < 0.1);
    free(got);
    kw_model_free(m);
    kwfx_free(&fx);
    kw_backend_destroy(be);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_qwen2_quantized),
        cmocka_unit_test(test_qwen3_quantized),
        cmocka_unit_test(test_llama_quantized),
        cmocka_unit_test(test_qwen3_f32),
        cmocka_unit_test(test_kept_quantized_same_bits),
        cmocka_unit_test(test_same_bits_as_hf_folder),
        cmocka_unit_test(test_config_mapping),
        cmocka_unit_test(test_bf16_weights),
        cmocka_unit_test(test_identity),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
