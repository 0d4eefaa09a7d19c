/* test_config.c: config.json + generation_config.json parsing for the four real models (tests/data/model/configs),
 * HF defaults for absent fields (Gemma3TextConfig's for a nested multimodal Gemma 3 config), rope scaling variants,
 * Gemma 3's layer kinds, and invalid configs refused with KW_E_MODEL_CONFIG / KW_E_MODEL_ARCH naming the field. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "common/kw_file.h"
#include "common/kw_status.h"
#include "model/kw_config.h"
#include "tests/kw_test_util.h"

#define CONFIGS KW_TEST_DATA_DIR "/model/configs"

static void test_qwen3_0_6b(void **state) {
    (void)state;
    kw_model_config c;
    assert_int_equal(kw_config_load(CONFIGS "/qwen3-0.6b", &c), 0);
    assert_int_equal(c.arch, KW_ARCH_QWEN3);
    assert_int_equal(c.n_layers, 28);
    assert_int_equal(c.hidden, 1024);
    assert_int_equal(c.n_heads, 16);
    assert_int_equal(c.n_kv_heads, 8);
    assert_int_equal(c.head_dim, 128); /* explicit: 16 x 128 != 1024 */
    assert_int_equal(c.intermediate, 3072);
    assert_int_equal(c.vocab, 151936);
    assert_int_equal(c.max_positions, 40960);
    assert_true(c.rms_eps == 1e-6f);
    assert_int_equal(c.tie_embeddings, 1);
    assert_int_equal(c.attention_bias, 0);
    assert_int_equal(c.o_bias, 0);
    assert_int_equal(c.mlp_bias, 0);
    assert_int_equal(c.qk_norm, 1);
    assert_true(c.rope.theta == 1e6);
    assert_int_equal(c.rope.rotary_dim, 128);
    assert_int_equal(c.rope.scaling, KW_ROPE_SCALING_NONE);
    assert_int_equal(c.weight_dtype, KW_DTYPE_BF16);
    assert_int_equal(c.bos_id, 151643);
    assert_int_equal(c.pad_id, 151643);
    assert_int_equal(c.n_eos, 2); /* generation_config.json wins over config.json's single eos */
    assert_int_equal(c.eos_ids[0], 151645);
    assert_int_equal(c.eos_ids[1], 151643);
    assert_true(kw_config_is_eos(&c, 151643));
    assert_true(kw_config_is_eos(&c, 151645));
    assert_false(kw_config_is_eos(&c, 151644));
    assert_false(kw_config_is_eos(NULL, 151645));
}

static void test_qwen2_5_0_5b(void **state) {
    (void)state;
    kw_model_config c;
    assert_int_equal(kw_config_load(CONFIGS "/qwen2.5-0.5b-instruct", &c), 0);
    assert_int_equal(c.arch, KW_ARCH_QWEN2);
    assert_int_equal(c.n_layers, 24);
    assert_int_equal(c.hidden, 896);
    assert_int_equal(c.n_heads, 14);
    assert_int_equal(c.n_kv_heads, 2);
    assert_int_equal(c.head_dim, 64); /* derived: 896 / 14 */
    assert_int_equal(c.intermediate, 4864);
    assert_int_equal(c.vocab, 151936);
    assert_int_equal(c.max_positions, 32768);
    assert_int_equal(c.tie_embeddings, 1);
    assert_int_equal(c.attention_bias, 1); /* q/k/v always */
    assert_int_equal(c.o_bias, 0);
    assert_int_equal(c.qk_norm, 0);
    assert_true(c.rope.theta == 1e6);
    assert_int_equal(c.rope.scaling, KW_ROPE_SCALING_NONE);
    assert_int_equal(c.n_eos, 2);
    assert_int_equal(c.eos_ids[0], 151645);
    assert_int_equal(c.eos_ids[1], 151643);
    assert_int_equal(c.pad_id, 151643);
}

static void test_llama_3_2_1b(void **state) {
    (void)state;
    kw_model_config c;
    assert_int_equal(kw_config_load(CONFIGS "/llama-3.2-1b-instruct", &c), 0);
    assert_int_equal(c.arch, KW_ARCH_LLAMA);
    assert_int_equal(c.n_layers, 16);
    assert_int_equal(c.hidden, 2048);
    assert_int_equal(c.n_heads, 32);
    assert_int_equal(c.n_kv_heads, 8);
    assert_int_equal(c.head_dim, 64);
    assert_int_equal(c.intermediate, 8192);
    assert_int_equal(c.vocab, 128256);
    assert_int_equal(c.max_positions, 131072);
    assert_true(c.rms_eps == 1e-5f);
    assert_int_equal(c.tie_embeddings, 1);
    assert_int_equal(c.attention_bias, 0);
    assert_int_equal(c.qk_norm, 0);
    assert_true(c.rope.theta == 500000.0);
    assert_int_equal(c.rope.scaling, KW_ROPE_SCALING_LLAMA3);
    assert_true(c.rope.factor == 32.0);
    assert_true(c.rope.low_freq_factor == 1.0);
    assert_true(c.rope.high_freq_factor == 4.0);
    assert_true(c.rope.original_max_position == 8192.0);
    assert_int_equal(c.bos_id, 128000);
    assert_int_equal(c.pad_id, -1);
    assert_int_equal(c.n_eos, 3);
    assert_int_equal(c.eos_ids[0], 128001);
    assert_int_equal(c.eos_ids[1], 128008);
    assert_int_equal(c.eos_ids[2], 128009);
}

static void test_gemma_3_270m(void **state) {
    (void)state;
    kw_model_config c;
    assert_int_equal(kw_config_load(CONFIGS "/gemma-3-270m", &c), 0);
    assert_int_equal(c.arch, KW_ARCH_GEMMA3);
    assert_int_equal(c.n_layers, 18);
    assert_int_equal(c.hidden, 640);
    assert_int_equal(c.n_heads, 4);
    assert_int_equal(c.n_kv_heads, 1);
    assert_int_equal(c.head_dim, 256);
    assert_int_equal(c.intermediate, 2048);
    assert_int_equal(c.vocab, 262144);
    assert_int_equal(c.max_positions, 32768);
    assert_true(c.rms_eps == 1e-6f);
    assert_int_equal(c.tie_embeddings, 1);
    assert_int_equal(c.attention_bias, 0);
    assert_int_equal(c.o_bias, 0);
    assert_int_equal(c.qk_norm, 1);
    assert_int_equal(c.act, KW_ACT_GELU_TANH);
    assert_int_equal(c.norm_plus_one, 1);
    assert_true(c.rope.theta == 1e6);
    assert_int_equal(c.rope.scaling, KW_ROPE_SCALING_NONE);
    assert_true(c.rope_local.theta == 10000.0);
    assert_int_equal(c.rope_local.rotary_dim, 256);
    assert_int_equal(c.rope_local.scaling, KW_ROPE_SCALING_NONE);
    assert_true(c.query_pre_attn_scalar == 256.0);
    assert_true(c.final_logit_softcap == 0.0);
    assert_int_equal(c.sliding_window, 512);
    for (int32_t l = 0; l < 18; ++l) {
        assert_int_equal(c.layer_sliding[l], (l + 1) % 6 != 0);
        assert_int_equal(kw_config_layer_window(&c, l), (l + 1) % 6 != 0 ? 512 : 0);
    }
    assert_int_equal(c.layer_sliding[18], 0);
    assert_int_equal(kw_config_layer_window(&c, 18), 0);
    assert_int_equal(c.weight_dtype, KW_DTYPE_BF16);
    assert_int_equal(c.bos_id, 2);
    assert_int_equal(c.pad_id, 0);
    assert_int_equal(c.n_eos, 2); /* generation_config.json: <eos> and <end_of_turn> */
    assert_int_equal(c.eos_ids[0], 1);
    assert_int_equal(c.eos_ids[1], 106);
}

/* A multimodal Gemma 3 config (the layout of google/gemma-3-4b-it's config.json): the text model in text_config, most
 * fields left at Gemma3TextConfig's defaults, linear rope scaling for the global layers only. */
static const char *g_gemma_mm =
    "{\"architectures\":[\"Gemma3ForConditionalGeneration\"],\"boi_token_index\":255999,\"eoi_token_index\":256000,"
    "\"eos_token_id\":[1,106],\"image_token_index\":262144,\"initializer_range\":0.02,\"mm_tokens_per_image\":256,"
    "\"model_type\":\"gemma3\",\"text_config\":{\"hidden_size\":2560,\"intermediate_size\":10240,"
    "\"model_type\":\"gemma3_text\",\"num_hidden_layers\":34,\"rope_scaling\":{\"factor\":8.0,\"rope_type\":"
    "\"linear\"},\"sliding_window\":1024},\"torch_dtype\":\"bfloat16\",\"vision_config\":{\"hidden_size\":1152,"
    "\"model_type\":\"siglip_vision_model\"}}";

static void test_gemma_multimodal(void **state) {
    (void)state;
    kw_model_config c;
    assert_int_equal(kw_config_parse(g_gemma_mm, NULL, &c), 0);
    assert_int_equal(c.arch, KW_ARCH_GEMMA3);
    assert_int_equal(c.n_layers, 34);
    assert_int_equal(c.hidden, 2560);
    assert_int_equal(c.intermediate, 10240);
    assert_int_equal(c.n_heads, 8); /* Gemma3TextConfig defaults from here on */
    assert_int_equal(c.n_kv_heads, 4);
    assert_int_equal(c.head_dim, 256);
    assert_int_equal(c.vocab, 262208);
    assert_int_equal(c.max_positions, 131072);
    assert_int_equal(c.tie_embeddings, 1);
    assert_true(c.query_pre_attn_scalar == 256.0);
    assert_true(c.rope.theta == 1e6);
    assert_int_equal(c.rope.scaling, KW_ROPE_SCALING_LINEAR); /* global layers */
    assert_true(c.rope.factor == 8.0);
    assert_true(c.rope_local.theta == 10000.0);
    assert_int_equal(c.rope_local.scaling, KW_ROPE_SCALING_NONE); /* local layers: default rope */
    assert_int_equal(c.sliding_window, 1024);
    for (int32_t l = 0; l < 34; ++l) /* sliding_window_pattern 6 */
        assert_int_equal(c.layer_sliding[l], (l + 1) % 6 != 0);
    assert_int_equal(c.weight_dtype, KW_DTYPE_BF16);
    assert_int_equal(c.bos_id, 2);
    assert_int_equal(c.pad_id, 0);
    assert_int_equal(c.n_eos, 2); /* the top level's list over the text default */
    assert_int_equal(c.eos_ids[1], 106);
    assert_int_equal(c.act, KW_ACT_GELU_TANH);
}

/* ------------------------------------------------------------------------------------------------------------
 * Edits of a base config text
 */

static const char *g_qwen2 = "{\"architectures\":[\"Qwen2ForCausalLM\"],\"model_type\":\"qwen2\",\"hidden_size\":64,"
                             "\"intermediate_size\":128,\"num_hidden_layers\":2,\"num_attention_heads\":4,"
                             "\"num_key_value_heads\":2,\"vocab_size\":1000,\"eos_token_id\":7}";

/* base with key set to value_json (NULL: removed); returns the parse status. */
static int parse_edit(const char *base, const char *key, const char *value_json, const char *gen, kw_model_config *c) {
    cJSON *root = cJSON_Parse(base);
    assert_non_null(root);
    cJSON_DeleteItemFromObjectCaseSensitive(root, key);
    if (value_json) {
        cJSON *v = cJSON_Parse(value_json);
        assert_non_null(v);
        cJSON_AddItemToObject(root, key, v);
    }
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    assert_non_null(text);
    const int rc = kw_config_parse(text, gen, c);
    free(text);
    return rc;
}

static void test_defaults(void **state) {
    (void)state;
    kw_model_config c;
    assert_int_equal(kw_config_parse(g_qwen2, NULL, &c), 0);
    assert_int_equal(c.head_dim, 16);
    assert_int_equal(c.max_positions, 32768); /* Qwen2Config default */
    assert_true(c.rms_eps == 1e-6f);
    assert_true(c.rope.theta == 10000.0);
    assert_int_equal(c.tie_embeddings, 0);
    assert_int_equal(c.weight_dtype, KW_DTYPE_F32);
    assert_int_equal(c.bos_id, -1);
    assert_int_equal(c.pad_id, -1);
    assert_int_equal(c.n_eos, 1); /* config.json fallback */
    assert_int_equal(c.eos_ids[0], 7);

    /* num_key_value_heads defaults to num_attention_heads */
    assert_int_equal(parse_edit(g_qwen2, "num_key_value_heads", NULL, NULL, &c), 0);
    assert_int_equal(c.n_kv_heads, 4);
    /* no eos anywhere */
    assert_int_equal(parse_edit(g_qwen2, "eos_token_id", NULL, NULL, &c), 0);
    assert_int_equal(c.n_eos, 0);
    /* generation_config without eos falls back to config.json; its bos/pad win */
    assert_int_equal(kw_config_parse(g_qwen2, "{\"bos_token_id\":3,\"pad_token_id\":4}", &c), 0);
    assert_int_equal(c.n_eos, 1);
    assert_int_equal(c.bos_id, 3);
    assert_int_equal(c.pad_id, 4);
    assert_int_equal(kw_config_parse(g_qwen2, "{\"eos_token_id\":9}", &c), 0);
    assert_int_equal(c.n_eos, 1);
    assert_int_equal(c.eos_ids[0], 9);
    /* explicit head_dim on Qwen2 is honoured */
    assert_int_equal(parse_edit(g_qwen2, "head_dim", "32", NULL, &c), 0);
    assert_int_equal(c.head_dim, 32);
    assert_int_equal(c.rope.rotary_dim, 32);
    /* only model_type */
    assert_int_equal(parse_edit(g_qwen2, "architectures", NULL, NULL, &c), 0);
    assert_int_equal(c.arch, KW_ARCH_QWEN2);
    assert_int_equal(parse_edit(g_qwen2, "model_type", NULL, NULL, &c), 0);
    /* torch_dtype / dtype */
    assert_int_equal(parse_edit(g_qwen2, "torch_dtype", "\"float16\"", NULL, &c), 0);
    assert_int_equal(c.weight_dtype, KW_DTYPE_F16);
    assert_int_equal(parse_edit(g_qwen2, "dtype", "\"bfloat16\"", NULL, &c), 0);
    assert_int_equal(c.weight_dtype, KW_DTYPE_BF16);

    /* Qwen3 without head_dim: Qwen3Config's default 128, not hidden / heads */
    const char *q3 = "{\"architectures\":[\"Qwen3ForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":128,"
                     "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2,\"vocab_size\":1000}";
    assert_int_equal(kw_config_parse(q3, NULL, &c), 0);
    assert_int_equal(c.head_dim, 128);
    assert_int_equal(c.qk_norm, 1);
    assert_int_equal(parse_edit(q3, "attention_bias", "true", NULL, &c), 0);
    assert_int_equal(c.attention_bias, 1);
    assert_int_equal(c.o_bias, 1);

    /* Llama: max_position default 2048, biases */
    const char *ll = "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":128,"
                     "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2,\"vocab_size\":1000}";
    assert_int_equal(kw_config_parse(ll, NULL, &c), 0);
    assert_int_equal(c.max_positions, 2048);
    assert_int_equal(c.attention_bias, 0);
    assert_int_equal(c.mlp_bias, 0);
    assert_int_equal(c.qk_norm, 0);
    assert_int_equal(parse_edit(ll, "attention_bias", "true", NULL, &c), 0);
    assert_int_equal(c.attention_bias, 1);
    assert_int_equal(c.o_bias, 1);
    assert_int_equal(parse_edit(ll, "mlp_bias", "true", NULL, &c), 0);
    assert_int_equal(c.mlp_bias, 1);
}

static void test_rope_scaling(void **state) {
    (void)state;
    kw_model_config c;
    assert_int_equal(parse_edit(g_qwen2, "rope_scaling", "null", NULL, &c), 0);
    assert_int_equal(c.rope.scaling, KW_ROPE_SCALING_NONE);
    assert_int_equal(parse_edit(g_qwen2, "rope_scaling", "{\"rope_type\":\"default\"}", NULL, &c), 0);
    assert_int_equal(c.rope.scaling, KW_ROPE_SCALING_NONE);
    assert_int_equal(parse_edit(g_qwen2, "rope_scaling", "{\"type\":\"linear\",\"factor\":4}", NULL, &c), 0);
    assert_int_equal(c.rope.scaling, KW_ROPE_SCALING_LINEAR);
    assert_true(c.rope.factor == 4.0);
    const char *l3 = "{\"rope_type\":\"llama3\",\"factor\":8.0,\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,"
                     "\"original_max_position_embeddings\":8192}";
    assert_int_equal(parse_edit(g_qwen2, "rope_scaling", l3, NULL, &c), 0);
    assert_int_equal(c.rope.scaling, KW_ROPE_SCALING_LLAMA3);
    assert_true(c.rope.factor == 8.0);
    /* rope_type wins over type */
    assert_int_equal(
        parse_edit(g_qwen2, "rope_scaling", "{\"rope_type\":\"default\",\"type\":\"linear\",\"factor\":2}", NULL, &c),
        0);
    assert_int_equal(c.rope.scaling, KW_ROPE_SCALING_NONE);

    struct {
        const char *json, *detail;
    } bad[] = {
        {"{\"rope_type\":\"yarn\",\"factor\":4}", "yarn"},
        {"{\"type\":\"dynamic\",\"factor\":2}", "dynamic"},
        {"{\"factor\":2}", "rope_type"},
        {"[1]", "rope_scaling"},
        {"{\"rope_type\":\"linear\"}", "factor"},
        {"{\"rope_type\":\"linear\",\"factor\":0.5}", "factor"},
        {"{\"rope_type\":\"llama3\",\"low_freq_factor\":1,\"high_freq_factor\":4,"
         "\"original_max_position_embeddings\":8192}",
         "factor"},
        {"{\"rope_type\":\"llama3\",\"factor\":8,\"low_freq_factor\":4,\"high_freq_factor\":4,"
         "\"original_max_position_embeddings\":8192}",
         "high_freq_factor"},
        {"{\"rope_type\":\"llama3\",\"factor\":8,\"low_freq_factor\":1,\"high_freq_factor\":4,"
         "\"original_max_position_embeddings\":0}",
         "original_max_position_embeddings"},
        {"{\"rope_type\":\"llama3\",\"factor\":8,\"low_freq_factor\":1,\"high_freq_factor\":4,"
         "\"original_max_position_embeddings\":\"8192\"}",
         "original_max_position_embeddings"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; ++i) {
        const int rc = parse_edit(g_qwen2, "rope_scaling", bad[i].json, NULL, &c);
        if (rc != KW_E_MODEL_CONFIG || !strstr(kw_error_detail(), bad[i].detail))
            fail_msg("rope_scaling %s: got %s \"%s\"", bad[i].json, kw_status_name(rc), kw_error_detail());
    }
}

static void test_invalid(void **state) {
    (void)state;
    struct {
        const char *key, *value; /* value NULL: key removed */
        int code;
        const char *detail;
    } cases[] = {
        {"hidden_size", NULL, KW_E_MODEL_CONFIG, "hidden_size"},
        {"num_hidden_layers", NULL, KW_E_MODEL_CONFIG, "num_hidden_layers"},
        {"intermediate_size", NULL, KW_E_MODEL_CONFIG, "intermediate_size"},
        {"vocab_size", NULL, KW_E_MODEL_CONFIG, "vocab_size"},
        {"num_attention_heads", NULL, KW_E_MODEL_CONFIG, "num_attention_heads"},
        {"hidden_size", "0", KW_E_MODEL_CONFIG, "hidden_size"},
        {"hidden_size", "-64", KW_E_MODEL_CONFIG, "hidden_size"},
        {"hidden_size", "64.5", KW_E_MODEL_CONFIG, "hidden_size"},
        {"hidden_size", "\"64\"", KW_E_MODEL_CONFIG, "hidden_size"},
        {"hidden_size", "1e12", KW_E_MODEL_CONFIG, "hidden_size"},
        {"hidden_size", "66", KW_E_MODEL_CONFIG, "not a multiple"}, /* 66 / 4 heads, no head_dim */
        {"num_hidden_layers", "0", KW_E_MODEL_CONFIG, "num_hidden_layers"},
        {"num_key_value_heads", "3", KW_E_MODEL_CONFIG, "multiple of num_key_value_heads"},
        {"num_key_value_heads", "8", KW_E_MODEL_CONFIG, "num_key_value_heads"},
        {"num_key_value_heads", "0", KW_E_MODEL_CONFIG, "num_key_value_heads"},
        {"head_dim", "15", KW_E_MODEL_CONFIG, "head_dim"},
        {"head_dim", "0", KW_E_MODEL_CONFIG, "head_dim"},
        {"vocab_size", "0", KW_E_MODEL_CONFIG, "vocab_size"},
        {"intermediate_size", "-1", KW_E_MODEL_CONFIG, "intermediate_size"},
        {"max_position_embeddings", "0", KW_E_MODEL_CONFIG, "max_position_embeddings"},
        {"rms_norm_eps", "0", KW_E_MODEL_CONFIG, "rms_norm_eps"},
        {"rms_norm_eps", "-1e-6", KW_E_MODEL_CONFIG, "rms_norm_eps"},
        {"rms_norm_eps", "\"1e-6\"", KW_E_MODEL_CONFIG, "rms_norm_eps"},
        {"rope_theta", "0", KW_E_MODEL_CONFIG, "rope_theta"},
        {"rope_theta", "true", KW_E_MODEL_CONFIG, "rope_theta"},
        {"tie_word_embeddings", "1", KW_E_MODEL_CONFIG, "tie_word_embeddings"},
        {"hidden_act", "\"gelu\"", KW_E_MODEL_CONFIG, "hidden_act"},
        {"use_sliding_window", "true", KW_E_MODEL_CONFIG, "use_sliding_window"},
        {"partial_rotary_factor", "0.5", KW_E_MODEL_CONFIG, "partial_rotary_factor"},
        {"pretraining_tp", "2", KW_E_MODEL_CONFIG, "pretraining_tp"},
        {"torch_dtype", "\"float64\"", KW_E_MODEL_CONFIG, "torch_dtype"},
        {"torch_dtype", "16", KW_E_MODEL_CONFIG, "torch_dtype"},
        {"eos_token_id", "1000", KW_E_MODEL_CONFIG, "eos_token_id"}, /* outside the vocabulary */
        {"eos_token_id", "-1", KW_E_MODEL_CONFIG, "eos_token_id"},
        {"eos_token_id", "\"7\"", KW_E_MODEL_CONFIG, "eos_token_id"},
        {"eos_token_id", "[1,2,3,4,5,6,7,8,9]", KW_E_MODEL_CONFIG, "eos_token_id"},
        {"eos_token_id", "[1,\"2\"]", KW_E_MODEL_CONFIG, "eos_token_id"},
        {"bos_token_id", "5000", KW_E_MODEL_CONFIG, "bos_token_id"},
        {"bos_token_id", "1.5", KW_E_MODEL_CONFIG, "bos_token_id"},
        {"pad_token_id", "[1]", KW_E_MODEL_CONFIG, "pad_token_id"},
        {"architectures", "[\"MistralForCausalLM\"]", KW_E_MODEL_ARCH, "MistralForCausalLM"},
        {"architectures", "[\"Gemma3ForCausalLM\"]", KW_E_MODEL_CONFIG, "contradicts"},
        {"architectures", "[\"Gemma3ForConditionalGeneration\"]", KW_E_MODEL_CONFIG, "contradicts"},
        {"architectures", "[\"LlamaForCausalLM\"]", KW_E_MODEL_CONFIG, "contradicts"}, /* model_type qwen2 */
        {"architectures", "[]", KW_E_MODEL_CONFIG, "architectures"},
        {"architectures", "\"Qwen2ForCausalLM\"", KW_E_MODEL_CONFIG, "architectures"},
        {"model_type", "7", KW_E_MODEL_CONFIG, "model_type"},
    };
    kw_model_config c;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
        const int rc = parse_edit(g_qwen2, cases[i].key, cases[i].value, NULL, &c);
        if (rc != cases[i].code || !strstr(kw_error_detail(), cases[i].detail))
            fail_msg("%s = %s: got %s \"%s\", want %s containing \"%s\"", cases[i].key,
                     cases[i].value ? cases[i].value : "(removed)", kw_status_name(rc), kw_error_detail(),
                     kw_status_name(cases[i].code), cases[i].detail);
    }
    /* an unknown model_type */
    assert_int_equal(kw_config_parse("{\"model_type\":\"mistral\"}", NULL, &c), KW_E_MODEL_ARCH);
    assert_int_equal(kw_config_parse("{\"hidden_size\":64}", NULL, &c), KW_E_MODEL_CONFIG);
    /* not JSON / not objects */
    assert_int_equal(kw_config_parse("{\"a\":", NULL, &c), KW_E_MODEL_CONFIG);
    assert_int_equal(kw_config_parse("[1]", NULL, &c), KW_E_MODEL_CONFIG);
    assert_int_equal(kw_config_parse(g_qwen2, "{bad", &c), KW_E_MODEL_CONFIG);
    assert_non_null(strstr(kw_error_detail(), "generation_config.json"));
    assert_int_equal(kw_config_parse(g_qwen2, "[7]", &c), KW_E_MODEL_CONFIG);
    assert_int_equal(kw_config_parse(g_qwen2, "{\"eos_token_id\":[5000]}", &c), KW_E_MODEL_CONFIG);
    assert_int_equal(kw_config_parse(g_qwen2, "{\"eos_token_id\":{}}", &c), KW_E_MODEL_CONFIG);
    assert_int_equal(kw_config_parse(NULL, NULL, &c), KW_E_INVALID_ARG);
}

static const char *g_gemma = "{\"architectures\":[\"Gemma3ForCausalLM\"],\"model_type\":\"gemma3_text\","
                             "\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":8,"
                             "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"head_dim\":16,\"vocab_size\":512}";

/* Gemma3: defaults, layer kinds from layer_types or a pattern, softcap, and what is refused. */
static void test_gemma_fields(void **state) {
    (void)state;
    kw_model_config c;
    assert_int_equal(kw_config_parse(g_gemma, NULL, &c), 0);
    assert_int_equal(c.sliding_window, 4096);
    for (int32_t l = 0; l < 8; ++l)
        assert_int_equal(c.layer_sliding[l], l != 5);
    assert_int_equal(c.n_eos, 1);
    assert_int_equal(c.eos_ids[0], 1);
    assert_int_equal(c.bos_id, 2);
    assert_true(c.rope.theta == 1e6);
    assert_int_equal(c.tie_embeddings, 1);
    assert_int_equal(parse_edit(g_gemma, "sliding_window_pattern", "3", NULL, &c), 0);
    for (int32_t l = 0; l < 8; ++l)
        assert_int_equal(c.layer_sliding[l], (l + 1) % 3 != 0);
    assert_int_equal(parse_edit(g_gemma, "_sliding_window_pattern", "2", NULL, &c), 0);
    for (int32_t l = 0; l < 8; ++l)
        assert_int_equal(c.layer_sliding[l], l % 2 == 0);
    assert_int_equal(parse_edit(g_gemma, "sliding_window_pattern", "1", NULL, &c), 0); /* every layer global */
    for (int32_t l = 0; l < 8; ++l)
        assert_int_equal(kw_config_layer_window(&c, l), 0);
    const char *types = "[\"full_attention\",\"sliding_attention\",\"full_attention\",\"full_attention\","
                        "\"sliding_attention\",\"sliding_attention\",\"full_attention\",\"sliding_attention\"]";
    assert_int_equal(parse_edit(g_gemma, "layer_types", types, NULL, &c), 0);
    const uint8_t want[8] = {0, 1, 0, 0, 1, 1, 0, 1};
    assert_memory_equal(c.layer_sliding, want, 8);
    assert_int_equal(parse_edit(g_gemma, "final_logit_softcapping", "30.0", NULL, &c), 0);
    assert_true(c.final_logit_softcap == 30.0);
    assert_int_equal(parse_edit(g_gemma, "query_pre_attn_scalar", "24", NULL, &c), 0);
    assert_true(c.query_pre_attn_scalar == 24.0);
    assert_int_equal(parse_edit(g_gemma, "rope_local_base_freq", "500.0", NULL, &c), 0);
    assert_true(c.rope_local.theta == 500.0);
    assert_int_equal(parse_edit(g_gemma, "rope_scaling", "{\"rope_type\":\"linear\",\"factor\":4.0}", NULL, &c), 0);
    assert_int_equal(c.rope.scaling, KW_ROPE_SCALING_LINEAR);
    assert_int_equal(c.rope_local.scaling, KW_ROPE_SCALING_NONE);

    static const struct {
        const char *key, *value;
        int code;
        const char *detail;
    } bad[] = {
        {"hidden_activation", "\"gelu\"", KW_E_MODEL_CONFIG, "hidden_activation"},
        {"attn_logit_softcapping", "50.0", KW_E_MODEL_CONFIG, "attn_logit_softcapping"},
        {"final_logit_softcapping", "0", KW_E_MODEL_CONFIG, "final_logit_softcapping"},
        {"final_logit_softcapping", "-3", KW_E_MODEL_CONFIG, "final_logit_softcapping"},
        {"query_pre_attn_scalar", "0", KW_E_MODEL_CONFIG, "query_pre_attn_scalar"},
        {"sliding_window", "0", KW_E_MODEL_CONFIG, "sliding_window"},
        {"sliding_window_pattern", "0", KW_E_MODEL_CONFIG, "sliding_window_pattern"},
        {"layer_types", "[\"full_attention\"]", KW_E_MODEL_CONFIG, "layer_types"},
        {"layer_types", "[1,2,3,4,5,6,7,8]", KW_E_MODEL_CONFIG, "layer_types"},
        {"layer_types", "\"full_attention\"", KW_E_MODEL_CONFIG, "layer_types"},
        {"use_bidirectional_attention", "true", KW_E_MODEL_CONFIG, "use_bidirectional_attention"},
        {"rope_local_base_freq", "0", KW_E_MODEL_CONFIG, "rope_local_base_freq"},
        {"architectures", "[\"Qwen3ForCausalLM\"]", KW_E_MODEL_CONFIG, "contradicts"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; ++i) {
        const int rc = parse_edit(g_gemma, bad[i].key, bad[i].value, NULL, &c);
        if (rc != bad[i].code || !strstr(kw_error_detail(), bad[i].detail))
            fail_msg("%s = %s: got %s \"%s\", want %s containing \"%s\"", bad[i].key, bad[i].value, kw_status_name(rc),
                     kw_error_detail(), kw_status_name(bad[i].code), bad[i].detail);
    }
    /* a gemma3 config needs its text_config, of the right kind */
    assert_int_equal(kw_config_parse("{\"model_type\":\"gemma3\"}", NULL, &c), KW_E_MODEL_CONFIG);
    assert_non_null(strstr(kw_error_detail(), "text_config"));
    assert_int_equal(parse_edit(g_gemma_mm, "text_config", "{\"model_type\":\"gemma2\"}", NULL, &c), KW_E_MODEL_CONFIG);
    assert_non_null(strstr(kw_error_detail(), "text_config"));
    /* the validator keeps the Gemma3 fields to Gemma3 */
    assert_int_equal(kw_config_parse(g_qwen2, NULL, &c), 0);
    c.sliding_window = 8;
    c.layer_sliding[0] = 1;
    assert_int_equal(kw_config_validate(&c), KW_E_MODEL_CONFIG);
    assert_int_equal(kw_config_parse(g_gemma, NULL, &c), 0);
    c.layer_sliding[8] = 1; /* past the last layer */
    assert_int_equal(kw_config_validate(&c), KW_E_MODEL_CONFIG);
    c.layer_sliding[8] = 0;
    c.norm_plus_one = 2;
    assert_int_equal(kw_config_validate(&c), KW_E_MODEL_CONFIG);
    c.norm_plus_one = 0; /* GGUF-style weights that already hold 1 + w */
    assert_int_equal(kw_config_validate(&c), 0);
    assert_int_equal(kw_config_set_sliding_pattern(&c, 0), KW_E_MODEL_CONFIG);
    assert_int_equal(kw_config_set_sliding_pattern(&c, 4), 0);
    assert_int_equal(kw_config_validate(&c), 0);
    assert_int_equal(kw_config_layer_window(&c, 3), 0);
    assert_int_equal(kw_config_layer_window(&c, 2), 4096);
    assert_int_equal(kw_config_layer_window(&c, -1), 0);
    assert_int_equal(kw_config_layer_window(NULL, 0), 0);
}

static void test_load_errors(void **state) {
    (void)state;
    kw_model_config c;
    assert_int_equal(kw_config_load(CONFIGS "/no-such-model", &c), KW_E_NOT_FOUND);
    char dir[] = "/tmp/kw_test_cfg_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char p[128], g[128];
    snprintf(p, sizeof p, "%s/config.json", dir);
    snprintf(g, sizeof g, "%s/generation_config.json", dir);
    assert_int_equal(kw_file_write_all(p, g_qwen2, strlen(g_qwen2)), 0);
    assert_int_equal(kw_config_load(dir, &c), 0); /* no generation_config.json */
    assert_int_equal(c.n_eos, 1);
    assert_int_equal(kw_file_write_all(g, "{\"eos_token_id\": \"x\"}", 21), 0);
    assert_int_equal(kw_config_load(dir, &c), KW_E_MODEL_CONFIG);
    assert_non_null(strstr(kw_error_detail(), dir));
    assert_int_equal(kw_file_write_all(g, "{\"eos_token_id\": [1, 2]}", 24), 0);
    assert_int_equal(kw_config_load(dir, &c), 0);
    assert_int_equal(c.n_eos, 2);
    assert_int_equal(kw_file_write_all(p, "{\"a\":1}\0x", 9), 0);
    assert_int_equal(kw_config_load(dir, &c), KW_E_MODEL_CONFIG);
    kw_test_remove_tree(dir);
}

static void test_arch_names(void **state) {
    (void)state;
    enum kw_arch a;
    assert_int_equal(kw_arch_parse("qwen3", &a), 0);
    assert_int_equal(a, KW_ARCH_QWEN3);
    assert_int_equal(kw_arch_parse("llama", &a), 0);
    assert_int_equal(a, KW_ARCH_LLAMA);
    assert_int_equal(kw_arch_parse("gpt2", &a), KW_E_INVALID_ARG);
    assert_string_equal(kw_arch_name(KW_ARCH_QWEN2), "qwen2");
    assert_string_equal(kw_arch_name(KW_ARCH_GEMMA3), "gemma3");
    assert_string_equal(kw_arch_name((enum kw_arch)42), "?");
}

/* Raw-text prompts: the GGUF flag decides when present, else the family (HF: Llama and Gemma add BOS, Qwen not). */
static void test_raw_prompt_bos(void **state) {
    (void)state;
    kw_model_config c = {.arch = KW_ARCH_LLAMA, .bos_id = 128000, .add_bos = -1};
    assert_int_equal(kw_config_raw_prompt_bos(&c), 1);
    c.arch = KW_ARCH_GEMMA3;
    assert_int_equal(kw_config_raw_prompt_bos(&c), 1);
    c.arch = KW_ARCH_QWEN3;
    assert_int_equal(kw_config_raw_prompt_bos(&c), 0);
    c.add_bos = 1; /* a GGUF Qwen file that asks for it */
    assert_int_equal(kw_config_raw_prompt_bos(&c), 1);
    c.arch = KW_ARCH_GEMMA3, c.add_bos = 0; /* a GGUF Gemma file that does not */
    assert_int_equal(kw_config_raw_prompt_bos(&c), 0);
    c.add_bos = 1, c.bos_id = -1; /* no BOS token at all */
    assert_int_equal(kw_config_raw_prompt_bos(&c), 0);
    assert_int_equal(kw_config_raw_prompt_bos(NULL), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_raw_prompt_bos), cmocka_unit_test(test_qwen3_0_6b),
        cmocka_unit_test(test_qwen2_5_0_5b),   cmocka_unit_test(test_llama_3_2_1b),
        cmocka_unit_test(test_gemma_3_270m),   cmocka_unit_test(test_gemma_multimodal),
        cmocka_unit_test(test_defaults),       cmocka_unit_test(test_rope_scaling),
        cmocka_unit_test(test_invalid),        cmocka_unit_test(test_gemma_fields),
        cmocka_unit_test(test_load_errors),    cmocka_unit_test(test_arch_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
