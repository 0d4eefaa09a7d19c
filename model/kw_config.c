/* kw_config.c: config.json + generation_config.json -> kw_model_config for Qwen2, Qwen3, Llama and Gemma3.
 *
 * Absent optional fields take the defaults of the matching transformers 4.52 config class (Qwen2Config, Qwen3Config,
 * LlamaConfig, Gemma3TextConfig), so a config HF loads means the same thing here. For Qwen and Llama the shape fields
 * (layers, hidden, heads, intermediate, vocab) are required: a config without them is not a real checkpoint's. Gemma3
 * configs are different: the multimodal checkpoints nest the text model in "text_config" and leave most fields at
 * Gemma3TextConfig's defaults, so every Gemma3 field has its HF default. Everything is range-checked; every failure
 * names the field. This file does not look at weights (the model loader checks tensor shapes).
 */
#include "model/kw_config.h"

#include "common/kw_file.h"
#include "common/kw_json.h"
#include "common/kw_status.h"
#include "kernels/ref/kw_ref.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KW_CONFIG_MAX_FILE ((size_t)4 << 20)

static const char *const kw_arch_names[] = {"qwen2", "qwen3", "llama", "gemma3"};

const char *kw_arch_name(enum kw_arch arch) {
    return (unsigned)arch < sizeof kw_arch_names / sizeof kw_arch_names[0] ? kw_arch_names[arch] : "?";
}

int kw_arch_parse(const char *name, enum kw_arch *out) {
    for (unsigned i = 0; name && i < sizeof kw_arch_names / sizeof kw_arch_names[0]; ++i) {
        if (strcmp(name, kw_arch_names[i]) == 0) {
            *out = (enum kw_arch)i;
            return 0;
        }
    }
    KW_FAIL(KW_E_INVALID_ARG, "unknown architecture \"%s\" (qwen2, qwen3, llama, gemma3)", name ? name : "(null)");
}

int kw_config_is_eos(const kw_model_config *cfg, int32_t id) {
    for (int32_t i = 0; cfg && i < cfg->n_eos; ++i)
        if (cfg->eos_ids[i] == id) return 1;
    return 0;
}

int kw_config_raw_prompt_bos(const kw_model_config *cfg) {
    if (!cfg || cfg->bos_id < 0) return 0;
    if (cfg->add_bos >= 0) return cfg->add_bos != 0;
    return cfg->arch == KW_ARCH_LLAMA || cfg->arch == KW_ARCH_GEMMA3;
}

int kw_config_prepend_bos(const kw_model_config *cfg, int32_t **ids, size_t *n) {
    if (!kw_config_raw_prompt_bos(cfg)) return 0;
    int32_t *with_bos = realloc(*ids, (*n + 1) * sizeof *with_bos);
    KW_RETURN_IF(!with_bos, KW_E_NOMEM, "out of memory");
    memmove(with_bos + 1, with_bos, *n * sizeof *with_bos);
    with_bos[0] = cfg->bos_id;
    *ids = with_bos;
    ++*n;
    return 0;
}

int64_t kw_config_layer_window(const kw_model_config *cfg, int32_t layer) {
    if (!cfg || layer < 0 || layer >= cfg->n_layers || layer >= KW_CONFIG_MAX_LAYERS) return 0;
    return cfg->layer_sliding[layer] ? cfg->sliding_window : 0;
}

const kw_rope_params *kw_config_layer_rope(const kw_model_config *cfg, int32_t layer) {
    if (!cfg || layer < 0 || layer >= cfg->n_layers) return NULL;
    return kw_config_layer_window(cfg, layer) > 0 ? &cfg->rope_local : &cfg->rope;
}

/* kw_config_rope_rows (table 0: dst the rows) or kw_config_rope_table (table 1: dst the table), after checking. */
static int kw_config_rope(const kw_model_config *cfg, int32_t layer, const int64_t *positions, int64_t n, int inverse,
                          float *dst, int table) {
    const kw_rope_params *rope = kw_config_layer_rope(cfg, layer);
    KW_RETURN_IF(!rope || !positions || !dst || n < 1, KW_E_INVALID_ARG, "RoPE rows: bad arguments (layer %d)",
                 (int)layer);
    int32_t *pos = malloc((size_t)n * sizeof *pos);
    KW_RETURN_IF(!pos, KW_E_NOMEM, "RoPE rows: %lld positions", (long long)n);
    for (int64_t i = 0; i < n; ++i) {
        if (positions[i] < 0 || positions[i] > INT32_MAX) {
            free(pos);
            KW_FAIL(KW_E_INVALID_ARG, "RoPE rows: position %lld", (long long)positions[i]);
        }
        pos[i] = inverse ? -(int32_t)positions[i] : (int32_t)positions[i];
    }
    if (table)
        kw_ref_rope_table(dst, pos, n, rope);
    else
        kw_ref_rope(dst, pos, n, cfg->n_kv_heads, cfg->head_dim, rope);
    free(pos);
    return 0;
}

int kw_config_rope_rows(const kw_model_config *cfg, int32_t layer, const int64_t *positions, int64_t n, int inverse,
                        float *rows) {
    return kw_config_rope(cfg, layer, positions, n, inverse, rows, 0);
}

int kw_config_rope_table(const kw_model_config *cfg, int32_t layer, const int64_t *positions, int64_t n, int inverse,
                         float *table) {
    return kw_config_rope(cfg, layer, positions, n, inverse, table, 1);
}

int32_t kw_config_rope_half(const kw_model_config *cfg, int32_t layer) {
    const kw_rope_params *rope = kw_config_layer_rope(cfg, layer);
    return rope ? rope->rotary_dim / 2 : 0;
}

int kw_config_set_sliding_pattern(kw_model_config *cfg, int32_t pattern) {
    KW_RETURN_IF(!cfg, KW_E_INVALID_ARG, "kw_config_set_sliding_pattern: NULL config");
    KW_RETURN_IF(pattern < 1, KW_E_MODEL_CONFIG, "sliding_window_pattern %d must be >= 1", (int)pattern);
    for (int32_t l = 0; l < KW_CONFIG_MAX_LAYERS; ++l)
        cfg->layer_sliding[l] = (uint8_t)(l < cfg->n_layers && (l + 1) % pattern != 0);
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * Architecture detection
 */

struct kw_arch_alias {
    const char *name;
    enum kw_arch arch;
};

static const struct kw_arch_alias kw_arch_classes[] = {
    {"Qwen2ForCausalLM", KW_ARCH_QWEN2},
    {"Qwen3ForCausalLM", KW_ARCH_QWEN3},
    {"LlamaForCausalLM", KW_ARCH_LLAMA},
    {"Gemma3ForCausalLM", KW_ARCH_GEMMA3},
    {"Gemma3ForConditionalGeneration", KW_ARCH_GEMMA3},
};

static const struct kw_arch_alias kw_arch_model_types[] = {
    {"qwen2", KW_ARCH_QWEN2},   {"qwen3", KW_ARCH_QWEN3},        {"llama", KW_ARCH_LLAMA},
    {"gemma3", KW_ARCH_GEMMA3}, {"gemma3_text", KW_ARCH_GEMMA3},
};

static int kw_arch_lookup(const struct kw_arch_alias *table, size_t n, const char *name, enum kw_arch *out) {
    for (size_t i = 0; i < n; ++i) {
        if (strcmp(table[i].name, name) == 0) {
            *out = table[i].arch;
            return 0;
        }
    }
    return -1;
}

static int kw_config_arch(const cJSON *root, enum kw_arch *out) {
    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    const cJSON *mtype = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    int have_class = 0, have_type = 0;
    enum kw_arch from_class = KW_ARCH_QWEN2, from_type = KW_ARCH_QWEN2;
    const char *class_name = NULL, *type_name = NULL;
    if (archs && !cJSON_IsNull(archs)) {
        KW_RETURN_IF(!cJSON_IsArray(archs) || cJSON_GetArraySize(archs) < 1 || !cJSON_IsString(archs->child),
                     KW_E_MODEL_CONFIG, "config.json: \"architectures\" must be a non-empty array of strings");
        class_name = archs->child->valuestring;
        KW_RETURN_IF(kw_arch_lookup(kw_arch_classes, sizeof kw_arch_classes / sizeof kw_arch_classes[0], class_name,
                                    &from_class) < 0,
                     KW_E_MODEL_ARCH,
                     "config.json: architecture %s is not supported (Qwen2ForCausalLM, Qwen3ForCausalLM, "
                     "LlamaForCausalLM, Gemma3ForCausalLM, Gemma3ForConditionalGeneration)",
                     class_name);
        have_class = 1;
    }
    if (mtype && !cJSON_IsNull(mtype)) {
        KW_RETURN_IF(!cJSON_IsString(mtype), KW_E_MODEL_CONFIG, "config.json: \"model_type\" must be a string");
        type_name = mtype->valuestring;
        if (kw_arch_lookup(kw_arch_model_types, sizeof kw_arch_model_types / sizeof kw_arch_model_types[0], type_name,
                           &from_type) == 0)
            have_type = 1;
        else
            KW_RETURN_IF(!have_class, KW_E_MODEL_ARCH,
                         "config.json: model_type \"%s\" is not supported (qwen2, qwen3, llama, gemma3_text, gemma3)",
                         type_name);
    }
    KW_RETURN_IF(!have_class && !have_type, KW_E_MODEL_CONFIG,
                 "config.json: neither \"architectures\" nor \"model_type\" names the architecture");
    *out = have_class ? from_class : from_type;
    KW_RETURN_IF(have_class && have_type && from_class != from_type, KW_E_MODEL_CONFIG,
                 "config.json: architectures[0] %s contradicts model_type \"%s\"", class_name, type_name);
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * Field helpers: every JSON error becomes KW_E_MODEL_CONFIG with the field named.
 */

static int kw_cfg_status(int rc) {
    return rc == KW_E_NOT_FOUND || rc == KW_E_PARSE ? KW_E_MODEL_CONFIG : rc;
}

/* Re-records the current detail under another status, with a prefix. The detail is copied first: it lives in the
 * buffer kw_error_set writes to. */
static int kw_cfg_wrap(int status, const char *prefix) {
    char detail[512];
    snprintf(detail, sizeof detail, "%s", kw_error_detail());
    return kw_error_set(status, "%s%s", prefix, detail);
}

static int kw_cfg_req_i32(const cJSON *o, const char *key, int64_t min, int64_t max, int32_t *out, const char *what) {
    int64_t v = 0;
    const int rc = kw_json_get_i64(o, key, min, max, &v, what);
    if (rc < 0) return kw_cfg_wrap(kw_cfg_status(rc), "");
    *out = (int32_t)v;
    return 0;
}

static int kw_cfg_opt_i32(const cJSON *o, const char *key, int64_t min, int64_t max, int64_t def, int32_t *out,
                          const char *what) {
    int64_t v = 0;
    const int rc = kw_json_opt_i64(o, key, min, max, def, &v, what);
    if (rc < 0) return kw_cfg_wrap(kw_cfg_status(rc), "");
    *out = (int32_t)v;
    return 0;
}

static int kw_cfg_opt_f64(const cJSON *o, const char *key, double def, double *out, const char *what) {
    const int rc = kw_json_opt_f64(o, key, def, out, what);
    if (rc < 0) return kw_cfg_wrap(kw_cfg_status(rc), "");
    return 0;
}

static int kw_cfg_opt_bool(const cJSON *o, const char *key, int def, int32_t *out, const char *what) {
    int v = 0;
    const int rc = kw_json_opt_bool(o, key, def, &v, what);
    if (rc < 0) return kw_cfg_wrap(kw_cfg_status(rc), "");
    *out = v;
    return 0;
}

static int kw_cfg_opt_str(const cJSON *o, const char *key, const char *def, const char **out, const char *what) {
    const int rc = kw_json_opt_str(o, key, def, out, what);
    if (rc < 0) return kw_cfg_wrap(kw_cfg_status(rc), "");
    return 0;
}

/* A token id field: absent or null leaves *out (-1 means none); an integer must be in [0, 2^31). */
static int kw_cfg_token_id(const cJSON *o, const char *key, int32_t *out, const char *what) {
    const cJSON *item = cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
    if (!item || cJSON_IsNull(item)) return 0;
    int64_t v = 0;
    KW_RETURN_IF(kw_json_to_i64(item, 0, INT32_MAX, &v) < 0, KW_E_MODEL_CONFIG,
                 "%s: \"%s\" must be a non-negative integer token id", what, key);
    *out = (int32_t)v;
    return 0;
}

/* eos_token_id: an integer or a list of them. Returns 1 if present (and fills cfg), 0 if absent. */
static int kw_cfg_eos(const cJSON *o, kw_model_config *cfg, const char *what) {
    const cJSON *item = cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, "eos_token_id") : NULL;
    if (!item || cJSON_IsNull(item)) return 0;
    int64_t v = 0;
    if (cJSON_IsNumber(item)) {
        KW_RETURN_IF(kw_json_to_i64(item, 0, INT32_MAX, &v) < 0, KW_E_MODEL_CONFIG,
                     "%s: \"eos_token_id\" must be a non-negative integer or a list of them", what);
        cfg->eos_ids[0] = (int32_t)v;
        cfg->n_eos = 1;
        return 1;
    }
    KW_RETURN_IF(!cJSON_IsArray(item), KW_E_MODEL_CONFIG,
                 "%s: \"eos_token_id\" must be a non-negative integer or a list of them", what);
    const int n = cJSON_GetArraySize(item);
    KW_RETURN_IF(n > KW_CONFIG_MAX_EOS, KW_E_MODEL_CONFIG, "%s: \"eos_token_id\" lists %d ids (at most %d)", what, n,
                 KW_CONFIG_MAX_EOS);
    int32_t k = 0;
    for (const cJSON *e = item->child; e; e = e->next) {
        KW_RETURN_IF(kw_json_to_i64(e, 0, INT32_MAX, &v) < 0, KW_E_MODEL_CONFIG,
                     "%s: \"eos_token_id\"[%d] is not a non-negative integer", what, (int)k);
        cfg->eos_ids[k++] = (int32_t)v;
    }
    cfg->n_eos = k;
    return 1;
}

static int kw_cfg_dtype(const cJSON *root, enum kw_dtype *out) {
    const char *s = NULL;
    KW_FORWARD(kw_cfg_opt_str(root, "torch_dtype", NULL, &s, "config.json"));
    if (!s) KW_FORWARD(kw_cfg_opt_str(root, "dtype", NULL, &s, "config.json")); /* transformers >= 4.56 spelling */
    if (!s || strcmp(s, "float32") == 0)
        *out = KW_DTYPE_F32; /* HF's default */
    else if (strcmp(s, "bfloat16") == 0)
        *out = KW_DTYPE_BF16;
    else if (strcmp(s, "float16") == 0)
        *out = KW_DTYPE_F16;
    else
        KW_FAIL(KW_E_MODEL_CONFIG, "config.json: torch_dtype \"%s\" is not float32, bfloat16 or float16", s);
    return 0;
}

/* rope_scaling: null/absent/"default" -> none; "linear" (factor); "llama3" (factor, low/high_freq_factor,
 * original_max_position_embeddings). The type is read from "rope_type", or the legacy "type". */
static int kw_cfg_rope(const cJSON *root, kw_rope_params *rope) {
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    rope->scaling = KW_ROPE_SCALING_NONE;
    rope->factor = 1.0;
    rope->low_freq_factor = 0.0;
    rope->high_freq_factor = 0.0;
    rope->original_max_position = 0.0;
    if (!rs || cJSON_IsNull(rs)) return 0;
    KW_RETURN_IF(!cJSON_IsObject(rs), KW_E_MODEL_CONFIG, "config.json: \"rope_scaling\" must be an object or null");
    const char *type = NULL;
    KW_FORWARD(kw_cfg_opt_str(rs, "rope_type", NULL, &type, "config.json rope_scaling"));
    if (!type) KW_FORWARD(kw_cfg_opt_str(rs, "type", NULL, &type, "config.json rope_scaling"));
    KW_RETURN_IF(!type, KW_E_MODEL_CONFIG, "config.json: rope_scaling has neither \"rope_type\" nor \"type\"");
    if (strcmp(type, "default") == 0) return 0;
    const char *what = "config.json rope_scaling";
    double factor = 0;
    if (strcmp(type, "linear") == 0) {
        KW_FORWARD(kw_cfg_opt_f64(rs, "factor", NAN, &factor, what));
        KW_RETURN_IF(!(factor >= 1.0 && factor <= 1e6), KW_E_MODEL_CONFIG,
                     "config.json: rope_scaling.factor must be a number >= 1 for linear scaling");
        rope->scaling = KW_ROPE_SCALING_LINEAR;
        rope->factor = factor;
        return 0;
    }
    KW_RETURN_IF(strcmp(type, "llama3") != 0, KW_E_MODEL_CONFIG,
                 "config.json: rope_scaling type \"%s\" is not supported (default, linear, llama3)", type);
    double low = 0, high = 0, orig = 0;
    KW_FORWARD(kw_cfg_opt_f64(rs, "factor", NAN, &factor, what));
    KW_FORWARD(kw_cfg_opt_f64(rs, "low_freq_factor", NAN, &low, what));
    KW_FORWARD(kw_cfg_opt_f64(rs, "high_freq_factor", NAN, &high, what));
    KW_FORWARD(kw_cfg_opt_f64(rs, "original_max_position_embeddings", NAN, &orig, what));
    KW_RETURN_IF(!(factor >= 1.0 && factor <= 1e6), KW_E_MODEL_CONFIG,
                 "config.json: rope_scaling.factor must be a number >= 1 for llama3 scaling");
    KW_RETURN_IF(!(low > 0 && low <= 1e6), KW_E_MODEL_CONFIG,
                 "config.json: rope_scaling.low_freq_factor must be a positive number");
    KW_RETURN_IF(!(high > low && high <= 1e6), KW_E_MODEL_CONFIG,
                 "config.json: rope_scaling.high_freq_factor must be a number > low_freq_factor");
    KW_RETURN_IF(!(orig >= 1 && orig <= (double)(1 << 30) && orig == floor(orig)), KW_E_MODEL_CONFIG,
                 "config.json: rope_scaling.original_max_position_embeddings must be a positive integer");
    rope->scaling = KW_ROPE_SCALING_LLAMA3;
    rope->factor = factor;
    rope->low_freq_factor = low;
    rope->high_freq_factor = high;
    rope->original_max_position = orig;
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * Validation and parsing
 */

/* The Gemma3 fields: meaningful for Gemma3, neutral (zero) for the other families. */
static int kw_config_validate_gemma3(const kw_model_config *c) {
    const int gemma = c->arch == KW_ARCH_GEMMA3;
    int sliding = 0;
    for (int32_t l = 0; l < KW_CONFIG_MAX_LAYERS; ++l) {
        KW_RETURN_IF(c->layer_sliding[l] > 1 || (c->layer_sliding[l] && l >= c->n_layers), KW_E_MODEL_CONFIG,
                     "layer_sliding[%d] = %d is not a flag of one of the %d layers", (int)l, (int)c->layer_sliding[l],
                     (int)c->n_layers);
        sliding |= c->layer_sliding[l];
    }
    KW_RETURN_IF(c->norm_plus_one != 0 && c->norm_plus_one != 1, KW_E_MODEL_CONFIG, "norm_plus_one %d is not 0 or 1",
                 (int)c->norm_plus_one);
    KW_RETURN_IF(!gemma && (sliding || c->sliding_window != 0 || c->act != KW_ACT_SILU ||
                            c->query_pre_attn_scalar != 0 || c->final_logit_softcap != 0 || c->norm_plus_one != 0),
                 KW_E_MODEL_CONFIG, "%s takes no sliding window, activation, attention scalar or softcap settings",
                 kw_arch_name(c->arch));
    KW_RETURN_IF(c->act != KW_ACT_SILU && c->act != KW_ACT_GELU_TANH, KW_E_MODEL_CONFIG,
                 "MLP activation %d is not supported (silu, gelu_pytorch_tanh)", (int)c->act);
    KW_RETURN_IF(c->sliding_window < 0 || (sliding && c->sliding_window < 1), KW_E_MODEL_CONFIG,
                 "sliding_window %d must be >= 1 when a layer slides", (int)c->sliding_window);
    if (sliding) {
        KW_RETURN_IF(!(c->rope_local.theta > 0.0 && c->rope_local.theta < 1e12), KW_E_MODEL_CONFIG,
                     "rope_local_base_freq %g is outside (0, 1e12)", c->rope_local.theta);
        KW_RETURN_IF(c->rope_local.rotary_dim != c->head_dim, KW_E_MODEL_CONFIG,
                     "local rotary dim %d differs from head_dim %d", (int)c->rope_local.rotary_dim, (int)c->head_dim);
    }
    KW_RETURN_IF(!(c->query_pre_attn_scalar >= 0.0 && c->query_pre_attn_scalar <= 1e9) ||
                     (gemma && c->query_pre_attn_scalar == 0.0),
                 KW_E_MODEL_CONFIG, "query_pre_attn_scalar %g must be a positive number", c->query_pre_attn_scalar);
    KW_RETURN_IF(!(c->final_logit_softcap >= 0.0 && c->final_logit_softcap <= 1e9), KW_E_MODEL_CONFIG,
                 "final_logit_softcapping %g must be a positive number or null", c->final_logit_softcap);
    return 0;
}

int kw_config_validate(const kw_model_config *c) {
    KW_RETURN_IF(!c, KW_E_INVALID_ARG, "kw_config_validate: NULL config");
    KW_RETURN_IF(c->arch != KW_ARCH_QWEN2 && c->arch != KW_ARCH_QWEN3 && c->arch != KW_ARCH_LLAMA &&
                     c->arch != KW_ARCH_GEMMA3,
                 KW_E_MODEL_ARCH, "architecture %s is not supported", kw_arch_name(c->arch));
    KW_RETURN_IF(c->n_layers < 1 || c->n_layers > 1024, KW_E_MODEL_CONFIG, "num_hidden_layers %d is outside [1, 1024]",
                 (int)c->n_layers);
    KW_RETURN_IF(c->hidden < 1 || c->hidden > 65536, KW_E_MODEL_CONFIG, "hidden_size %d is outside [1, 65536]",
                 (int)c->hidden);
    KW_RETURN_IF(c->n_heads < 1 || c->n_heads > 1024, KW_E_MODEL_CONFIG, "num_attention_heads %d is outside [1, 1024]",
                 (int)c->n_heads);
    KW_RETURN_IF(c->n_kv_heads < 1 || c->n_kv_heads > c->n_heads, KW_E_MODEL_CONFIG,
                 "num_key_value_heads %d is outside [1, num_attention_heads=%d]", (int)c->n_kv_heads, (int)c->n_heads);
    KW_RETURN_IF(c->n_heads % c->n_kv_heads != 0, KW_E_MODEL_CONFIG,
                 "num_attention_heads %d is not a multiple of num_key_value_heads %d", (int)c->n_heads,
                 (int)c->n_kv_heads);
    KW_RETURN_IF(c->head_dim < 2 || c->head_dim > 1024 || c->head_dim % 2 != 0, KW_E_MODEL_CONFIG,
                 "head_dim %d must be even and in [2, 1024]", (int)c->head_dim);
    KW_RETURN_IF((int64_t)c->n_heads * c->head_dim > 65536, KW_E_MODEL_CONFIG,
                 "num_attention_heads x head_dim = %lld is larger than 65536", (long long)c->n_heads * c->head_dim);
    KW_RETURN_IF(c->intermediate < 1 || c->intermediate > (1 << 18), KW_E_MODEL_CONFIG,
                 "intermediate_size %d is outside [1, 262144]", (int)c->intermediate);
    KW_RETURN_IF(c->vocab < 1 || c->vocab > (1 << 24), KW_E_MODEL_CONFIG, "vocab_size %d is outside [1, 16777216]",
                 (int)c->vocab);
    KW_RETURN_IF(c->max_positions < 1 || c->max_positions > (1 << 26), KW_E_MODEL_CONFIG,
                 "max_position_embeddings %d is outside [1, 2^26]", (int)c->max_positions);
    KW_RETURN_IF(!(c->rms_eps > 0.0f && c->rms_eps < 1.0f), KW_E_MODEL_CONFIG, "rms_norm_eps %g is outside (0, 1)",
                 (double)c->rms_eps);
    KW_RETURN_IF(!(c->rope.theta > 0.0 && c->rope.theta < 1e12), KW_E_MODEL_CONFIG,
                 "rope_theta %g is outside (0, 1e12)", c->rope.theta);
    KW_RETURN_IF(c->rope.rotary_dim != c->head_dim, KW_E_MODEL_CONFIG, "rotary dim %d differs from head_dim %d",
                 (int)c->rope.rotary_dim, (int)c->head_dim);
    KW_RETURN_IF(c->bos_id >= c->vocab, KW_E_MODEL_CONFIG, "bos_token_id %d is outside the vocabulary (%d)",
                 (int)c->bos_id, (int)c->vocab);
    KW_RETURN_IF(c->pad_id >= c->vocab, KW_E_MODEL_CONFIG, "pad_token_id %d is outside the vocabulary (%d)",
                 (int)c->pad_id, (int)c->vocab);
    KW_RETURN_IF(c->n_eos < 0 || c->n_eos > KW_CONFIG_MAX_EOS, KW_E_MODEL_CONFIG, "%d eos ids (at most %d)",
                 (int)c->n_eos, KW_CONFIG_MAX_EOS);
    for (int32_t i = 0; i < c->n_eos; ++i)
        KW_RETURN_IF(c->eos_ids[i] < 0 || c->eos_ids[i] >= c->vocab, KW_E_MODEL_CONFIG,
                     "eos_token_id %d is outside the vocabulary (%d)", (int)c->eos_ids[i], (int)c->vocab);
    return kw_config_validate_gemma3(c);
}

/* Gemma3TextConfig's defaults (transformers 4.52), for the fields every family has. */
#define KW_GEMMA3_VOCAB        262208
#define KW_GEMMA3_HIDDEN       2304
#define KW_GEMMA3_INTERMEDIATE 9216
#define KW_GEMMA3_LAYERS       26
#define KW_GEMMA3_HEADS        8
#define KW_GEMMA3_KV_HEADS     4
#define KW_GEMMA3_HEAD_DIM     256
#define KW_GEMMA3_MAX_POS      131072

/* The Gemma3-only fields of the text config t: activation, attention scalar, softcaps, window and layer kinds, local
 * RoPE. */
static int kw_config_parse_gemma3(const cJSON *t, kw_model_config *cfg) {
    const char *w = "config.json";
    const char *act = NULL;
    KW_FORWARD(kw_cfg_opt_str(t, "hidden_activation", "gelu_pytorch_tanh", &act, w));
    KW_RETURN_IF(strcmp(act, "gelu_pytorch_tanh") != 0, KW_E_MODEL_CONFIG,
                 "config.json: hidden_activation \"%s\" is not supported (only gelu_pytorch_tanh)", act);
    cfg->act = KW_ACT_GELU_TANH;
    cfg->norm_plus_one = 1; /* HF's Gemma3RMSNorm */
    KW_FORWARD(kw_cfg_opt_f64(t, "query_pre_attn_scalar", 256.0, &cfg->query_pre_attn_scalar, w));
    /* NAN when absent or null (no softcap); a present value must be positive (HF divides by it) */
    double cap = NAN;
    KW_FORWARD(kw_cfg_opt_f64(t, "final_logit_softcapping", NAN, &cap, w));
    KW_RETURN_IF(cap == cap && !(cap > 0.0), KW_E_MODEL_CONFIG,
                 "config.json: final_logit_softcapping %g must be a positive number or null", cap);
    cfg->final_logit_softcap = cap == cap ? cap : 0.0;
    double attn_cap = NAN;
    KW_FORWARD(kw_cfg_opt_f64(t, "attn_logit_softcapping", NAN, &attn_cap, w));
    KW_RETURN_IF(attn_cap == attn_cap, KW_E_MODEL_CONFIG,
                 "config.json: attn_logit_softcapping %g is not supported (only null)", attn_cap);
    int32_t bidirectional = 0;
    KW_FORWARD(kw_cfg_opt_bool(t, "use_bidirectional_attention", 0, &bidirectional, w));
    KW_RETURN_IF(bidirectional, KW_E_MODEL_CONFIG,
                 "config.json: use_bidirectional_attention=true is not supported (a causal LM only)");
    KW_FORWARD(kw_cfg_opt_i32(t, "sliding_window", 1, 1 << 30, 4096, &cfg->sliding_window, w));

    /* layer kinds: layer_types, else the pattern (every pattern-th layer global) */
    const cJSON *types = cJSON_GetObjectItemCaseSensitive(t, "layer_types");
    if (types && !cJSON_IsNull(types)) {
        KW_RETURN_IF(!cJSON_IsArray(types) || cJSON_GetArraySize(types) != cfg->n_layers, KW_E_MODEL_CONFIG,
                     "config.json: layer_types must list one kind per layer (%d)", (int)cfg->n_layers);
        int32_t l = 0;
        for (const cJSON *e = types->child; e; e = e->next, ++l) {
            const int sliding = cJSON_IsString(e) && strcmp(e->valuestring, "sliding_attention") == 0;
            KW_RETURN_IF(!sliding && !(cJSON_IsString(e) && strcmp(e->valuestring, "full_attention") == 0),
                         KW_E_MODEL_CONFIG,
                         "config.json: layer_types[%d] is not \"sliding_attention\" or \"full_attention\"", (int)l);
            cfg->layer_sliding[l] = (uint8_t)sliding;
        }
    } else {
        int32_t pattern = 6;
        const char *key = cJSON_GetObjectItemCaseSensitive(t, "sliding_window_pattern") ? "sliding_window_pattern"
                                                                                        : "_sliding_window_pattern";
        KW_FORWARD(kw_cfg_opt_i32(t, key, 1, 1 << 20, 6, &pattern, w));
        KW_FORWARD(kw_config_set_sliding_pattern(cfg, pattern));
    }

    /* the sliding layers' RoPE: rope_local_base_freq, default rotation (HF copies the config without rope_scaling) */
    memset(&cfg->rope_local, 0, sizeof cfg->rope_local);
    KW_FORWARD(kw_cfg_opt_f64(t, "rope_local_base_freq", 10000.0, &cfg->rope_local.theta, w));
    cfg->rope_local.rotary_dim = cfg->head_dim;
    cfg->rope_local.scaling = KW_ROPE_SCALING_NONE;
    cfg->rope_local.factor = 1.0;
    return 0;
}

/* Special ids from one JSON object (config.json, its text_config, generation_config.json): a present field replaces
 * what an earlier source gave. */
static int kw_config_special_ids(const cJSON *o, kw_model_config *cfg, const char *what) {
    KW_FORWARD(kw_cfg_token_id(o, "bos_token_id", &cfg->bos_id, what));
    KW_FORWARD(kw_cfg_token_id(o, "pad_token_id", &cfg->pad_id, what));
    return kw_cfg_eos(o, cfg, what);
}

static int kw_config_parse_root(const cJSON *root, const cJSON *gen, kw_model_config *cfg) {
    const char *w = "config.json";
    KW_RETURN_IF(!cJSON_IsObject(root), KW_E_MODEL_CONFIG, "config.json is not a JSON object");
    KW_RETURN_IF(gen && !cJSON_IsObject(gen), KW_E_MODEL_CONFIG, "generation_config.json is not a JSON object");
    memset(cfg, 0, sizeof *cfg);
    KW_FORWARD(kw_config_arch(root, &cfg->arch));
    const int llama = cfg->arch == KW_ARCH_LLAMA, gemma = cfg->arch == KW_ARCH_GEMMA3;

    /* t: the text model's fields. A multimodal Gemma 3 config ("gemma3") nests them in text_config. */
    const cJSON *t = root;
    const cJSON *text_config = cJSON_GetObjectItemCaseSensitive(root, "text_config");
    const cJSON *mtype = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (gemma && cJSON_IsString(mtype) && strcmp(mtype->valuestring, "gemma3") == 0) {
        KW_RETURN_IF(!cJSON_IsObject(text_config), KW_E_MODEL_CONFIG,
                     "config.json: a \"gemma3\" config needs a \"text_config\" object");
        const char *inner = NULL;
        KW_FORWARD(kw_cfg_opt_str(text_config, "model_type", "gemma3_text", &inner, "config.json text_config"));
        KW_RETURN_IF(strcmp(inner, "gemma3_text") != 0, KW_E_MODEL_CONFIG,
                     "config.json: text_config.model_type \"%s\" is not gemma3_text", inner);
        t = text_config;
    }

    /* Gemma3 takes every shape field from Gemma3TextConfig's defaults when absent; the others require them. */
    if (gemma) {
        KW_FORWARD(kw_cfg_opt_i32(t, "num_hidden_layers", 1, 1024, KW_GEMMA3_LAYERS, &cfg->n_layers, w));
        KW_FORWARD(kw_cfg_opt_i32(t, "hidden_size", 1, 65536, KW_GEMMA3_HIDDEN, &cfg->hidden, w));
        KW_FORWARD(kw_cfg_opt_i32(t, "num_attention_heads", 1, 1024, KW_GEMMA3_HEADS, &cfg->n_heads, w));
        KW_FORWARD(kw_cfg_opt_i32(t, "num_key_value_heads", 1, 1024, KW_GEMMA3_KV_HEADS, &cfg->n_kv_heads, w));
        KW_FORWARD(kw_cfg_opt_i32(t, "intermediate_size", 1, 1 << 18, KW_GEMMA3_INTERMEDIATE, &cfg->intermediate, w));
        KW_FORWARD(kw_cfg_opt_i32(t, "vocab_size", 1, 1 << 24, KW_GEMMA3_VOCAB, &cfg->vocab, w));
    } else {
        KW_FORWARD(kw_cfg_req_i32(t, "num_hidden_layers", 1, 1024, &cfg->n_layers, w));
        KW_FORWARD(kw_cfg_req_i32(t, "hidden_size", 1, 65536, &cfg->hidden, w));
        KW_FORWARD(kw_cfg_req_i32(t, "num_attention_heads", 1, 1024, &cfg->n_heads, w));
        KW_FORWARD(kw_cfg_opt_i32(t, "num_key_value_heads", 1, 1024, cfg->n_heads, &cfg->n_kv_heads, w));
        KW_FORWARD(kw_cfg_req_i32(t, "intermediate_size", 1, 1 << 18, &cfg->intermediate, w));
        KW_FORWARD(kw_cfg_req_i32(t, "vocab_size", 1, 1 << 24, &cfg->vocab, w));
    }
    KW_FORWARD(kw_cfg_opt_i32(t, "max_position_embeddings", 1, 1 << 26,
                              gemma   ? KW_GEMMA3_MAX_POS
                              : llama ? 2048
                                      : 32768,
                              &cfg->max_positions, w));

    /* head_dim: explicit, else the class default (Qwen3 128, Gemma3 256), else hidden / heads (as the HF modules
     * compute it). */
    const cJSON *hd = cJSON_GetObjectItemCaseSensitive(t, "head_dim");
    if (hd && !cJSON_IsNull(hd)) {
        KW_FORWARD(kw_cfg_req_i32(t, "head_dim", 1, 1024, &cfg->head_dim, w));
    } else if (cfg->arch == KW_ARCH_QWEN3) {
        cfg->head_dim = 128;
    } else if (gemma) {
        cfg->head_dim = KW_GEMMA3_HEAD_DIM;
    } else {
        KW_RETURN_IF(cfg->hidden % cfg->n_heads != 0, KW_E_MODEL_CONFIG,
                     "config.json: hidden_size %d is not a multiple of num_attention_heads %d and head_dim is absent",
                     (int)cfg->hidden, (int)cfg->n_heads);
        cfg->head_dim = cfg->hidden / cfg->n_heads;
    }

    double eps = 0, theta = 0, partial = 0;
    KW_FORWARD(kw_cfg_opt_f64(t, "rms_norm_eps", 1e-6, &eps, w));
    cfg->rms_eps = (float)eps;
    KW_FORWARD(kw_cfg_opt_f64(t, "rope_theta", gemma ? 1000000.0 : 10000.0, &theta, w));
    KW_FORWARD(kw_cfg_opt_f64(t, "partial_rotary_factor", 1.0, &partial, w));
    KW_RETURN_IF(partial != 1.0, KW_E_MODEL_CONFIG, "config.json: partial_rotary_factor %g is not supported (only 1)",
                 partial);
    cfg->rope.theta = theta;
    cfg->rope.rotary_dim = cfg->head_dim;
    KW_FORWARD(kw_cfg_rope(t, &cfg->rope));

    KW_FORWARD(kw_cfg_opt_bool(t, "tie_word_embeddings", gemma, &cfg->tie_embeddings, w));
    if (gemma) {
        KW_FORWARD(kw_config_parse_gemma3(t, cfg));
    } else {
        const char *act = NULL;
        KW_FORWARD(kw_cfg_opt_str(t, "hidden_act", "silu", &act, w));
        KW_RETURN_IF(strcmp(act, "silu") != 0, KW_E_MODEL_CONFIG,
                     "config.json: hidden_act \"%s\" is not supported (only silu)", act);
        int32_t sliding = 0;
        KW_FORWARD(kw_cfg_opt_bool(t, "use_sliding_window", 0, &sliding, w));
        KW_RETURN_IF(sliding, KW_E_MODEL_CONFIG, "config.json: use_sliding_window=true is not supported");
    }
    int32_t tp = 1;
    KW_FORWARD(kw_cfg_opt_i32(t, "pretraining_tp", 1, 1024, 1, &tp, w));
    KW_RETURN_IF(tp != 1, KW_E_MODEL_CONFIG, "config.json: pretraining_tp %d is not supported (only 1)", (int)tp);

    int32_t attn_bias = 0, mlp_bias = 0;
    if (cfg->arch != KW_ARCH_QWEN2) KW_FORWARD(kw_cfg_opt_bool(t, "attention_bias", 0, &attn_bias, w));
    if (llama) KW_FORWARD(kw_cfg_opt_bool(t, "mlp_bias", 0, &mlp_bias, w));
    switch (cfg->arch) {
    case KW_ARCH_QWEN2: /* q/k/v always carry a bias, o_proj never */
        cfg->attention_bias = 1;
        break;
    case KW_ARCH_QWEN3: /* attention_bias applies to q, k, v and o alike */
    case KW_ARCH_GEMMA3:
        cfg->attention_bias = attn_bias;
        cfg->o_bias = attn_bias;
        cfg->qk_norm = 1;
        break;
    default:
        cfg->attention_bias = attn_bias;
        cfg->o_bias = attn_bias;
        cfg->mlp_bias = mlp_bias;
        break;
    }
    KW_FORWARD(kw_cfg_dtype(root, &cfg->weight_dtype));

    /* Special ids: generation_config.json wins, then config.json (for Gemma3 its text_config, then the top level, over
     * Gemma3TextConfig's defaults bos 2, eos 1, pad 0). */
    cfg->bos_id = gemma ? 2 : -1;
    cfg->pad_id = gemma ? 0 : -1;
    cfg->add_bos = -1;
    if (gemma) {
        cfg->n_eos = 1;
        cfg->eos_ids[0] = 1;
    }
    if (t != root) KW_FORWARD(kw_config_special_ids(t, cfg, "config.json text_config"));
    KW_FORWARD(kw_config_special_ids(root, cfg, w));
    if (gen) KW_FORWARD(kw_config_special_ids(gen, cfg, "generation_config.json"));

    const int rc = kw_config_validate(cfg);
    if (rc < 0) return kw_cfg_wrap(rc, "config.json: ");
    return 0;
}

int kw_config_parse(const char *config_json, const char *generation_json, kw_model_config *cfg) {
    KW_RETURN_IF(!config_json || !cfg, KW_E_INVALID_ARG, "kw_config_parse: NULL argument");
    int rc = 0;
    cJSON *root = NULL, *gen = NULL;
    rc = kw_json_parse(config_json, strlen(config_json), &root);
    if (rc < 0) {
        rc = kw_cfg_wrap(KW_E_MODEL_CONFIG, "config.json: ");
        goto out;
    }
    if (generation_json) {
        rc = kw_json_parse(generation_json, strlen(generation_json), &gen);
        if (rc < 0) {
            rc = kw_cfg_wrap(KW_E_MODEL_CONFIG, "generation_config.json: ");
            goto out;
        }
    }
    KW_CHECK(kw_config_parse_root(root, gen, cfg));
out:
    cJSON_Delete(root);
    cJSON_Delete(gen);
    return rc;
}

int kw_config_load(const char *dir, kw_model_config *cfg) {
    KW_RETURN_IF(!dir || !cfg, KW_E_INVALID_ARG, "kw_config_load: NULL argument");
    int rc = 0;
    char *cpath = kw_path_join(dir, "config.json"), *gpath = kw_path_join(dir, "generation_config.json");
    char *ctext = NULL, *gtext = NULL;
    size_t n = 0;
    KW_CHECK_IF(!cpath || !gpath, KW_E_NOMEM, "out of memory");
    KW_CHECK(kw_file_read_all(cpath, KW_CONFIG_MAX_FILE, &ctext, &n));
    KW_CHECK_IF(strlen(ctext) != n, KW_E_MODEL_CONFIG, "%s contains a NUL byte", cpath);
    rc = kw_file_read_all(gpath, KW_CONFIG_MAX_FILE, &gtext, &n);
    if (rc == KW_E_NOT_FOUND) {
        rc = 0;
        gtext = NULL;
    }
    KW_CHECK(rc);
    KW_CHECK_IF(gtext && strlen(gtext) != n, KW_E_MODEL_CONFIG, "%s contains a NUL byte", gpath);
    rc = kw_config_parse(ctext, gtext, cfg);
    if (rc < 0) {
        char prefix[512];
        snprintf(prefix, sizeof prefix, "%s: ", dir);
        rc = kw_cfg_wrap(rc, prefix);
    }
out:
    free(cpath);
    free(gpath);
    free(ctext);
    free(gtext);
    return rc;
}
