/* kw_genmodel.c: the deterministic random model generator behind `kvwire gen-model` (see kw_genmodel.h for the
 * weight formula and why it is machine-independent). It writes HF-layout folders; it does not train or run models. */
#include "model/kw_genmodel.h"

#include "common/kw_buf.h"
#include "common/kw_file.h"
#include "common/kw_half.h"
#include "common/kw_status.h"
#include "model/kw_safetensors.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KW_GEN_CHUNK_ELEMS   ((size_t)1 << 18) /* elements generated per write: 1 MB of f32 */
#define KW_GEN_MAX_TOKENIZER ((size_t)256 << 20)
#define KW_GEN_NAME_LEN      96

/* ------------------------------------------------------------------------------------------------------------
 * Presets
 */

static void kw_gen_qwen_ids(kw_model_config *c) {
    c->bos_id = 151643;
    c->pad_id = 151643;
    c->n_eos = 2;
    c->eos_ids[0] = 151645; /* <|im_end|> */
    c->eos_ids[1] = 151643; /* <|endoftext|> */
}

static void kw_gen_llama_ids(kw_model_config *c) {
    c->bos_id = 128000;
    c->pad_id = -1;
    c->n_eos = 3;
    c->eos_ids[0] = 128001;
    c->eos_ids[1] = 128008;
    c->eos_ids[2] = 128009;
}

static void kw_gen_gemma_ids(kw_model_config *c) {
    c->bos_id = 2;
    c->pad_id = 0;
    c->n_eos = 2;
    c->eos_ids[0] = 1;   /* <eos> */
    c->eos_ids[1] = 106; /* <end_of_turn> */
}

static void kw_gen_shape(kw_model_config *c, enum kw_arch arch, int32_t layers, int32_t hidden, int32_t heads,
                         int32_t kv, int32_t head_dim, int32_t inter, int32_t vocab, int32_t max_pos, int32_t tied) {
    memset(c, 0, sizeof *c);
    c->arch = arch;
    c->n_layers = layers;
    c->hidden = hidden;
    c->n_heads = heads;
    c->n_kv_heads = kv;
    c->head_dim = head_dim;
    c->intermediate = inter;
    c->vocab = vocab;
    c->max_positions = max_pos;
    c->tie_embeddings = tied;
    c->weight_dtype = KW_DTYPE_BF16;
    c->rope.rotary_dim = head_dim;
    c->rope.scaling = KW_ROPE_SCALING_NONE;
    c->rope.factor = 1.0;
    switch (arch) {
    case KW_ARCH_QWEN2:
        c->rms_eps = 1e-6f;
        c->rope.theta = 1000000.0;
        c->attention_bias = 1;
        kw_gen_qwen_ids(c);
        break;
    case KW_ARCH_QWEN3:
        c->rms_eps = 1e-6f;
        c->rope.theta = 1000000.0;
        c->qk_norm = 1;
        kw_gen_qwen_ids(c);
        break;
    case KW_ARCH_GEMMA3: /* gemma-3-270m's settings; the window and layer kinds are the preset's */
        c->rms_eps = 1e-6f;
        c->rope.theta = 1000000.0;
        c->qk_norm = 1;
        c->act = KW_ACT_GELU_TANH;
        c->norm_plus_one = 1;
        c->query_pre_attn_scalar = head_dim;
        c->rope_local = c->rope;
        c->rope_local.theta = 10000.0;
        kw_gen_gemma_ids(c);
        break;
    default:
        c->rms_eps = 1e-5f;
        c->rope.theta = 500000.0;
        c->rope.scaling = KW_ROPE_SCALING_LLAMA3;
        c->rope.factor = 32.0;
        c->rope.low_freq_factor = 1.0;
        c->rope.high_freq_factor = 4.0;
        c->rope.original_max_position = 8192.0;
        kw_gen_llama_ids(c);
        break;
    }
}

int kw_genmodel_preset(const char *preset, const enum kw_arch *arch, kw_model_config *cfg) {
    KW_RETURN_IF(!preset || !cfg, KW_E_INVALID_ARG, "kw_genmodel_preset: NULL argument");
    enum kw_arch want;
    if (strcmp(preset, "tiny") == 0) {
        KW_RETURN_IF(!arch, KW_E_INVALID_ARG, "preset tiny needs an architecture (qwen2, qwen3, llama or gemma3)");
        switch (*arch) {
        case KW_ARCH_QWEN2:
            kw_gen_shape(cfg, KW_ARCH_QWEN2, 2, 64, 4, 2, 16, 128, 151936, 32768, 1);
            return 0;
        case KW_ARCH_QWEN3:
            kw_gen_shape(cfg, KW_ARCH_QWEN3, 2, 64, 4, 2, 32, 128, 151936, 40960, 1);
            return 0;
        /* Untied, unlike Llama-3.2-1B, so the tiny Llama also exercises a separate lm_head. */
        case KW_ARCH_LLAMA:
            kw_gen_shape(cfg, KW_ARCH_LLAMA, 2, 64, 4, 2, 16, 128, 128256, 131072, 0);
            return 0;
        /* One sliding layer (window 16, so a short prompt already slides) and one global layer. */
        case KW_ARCH_GEMMA3:
            kw_gen_shape(cfg, KW_ARCH_GEMMA3, 2, 64, 4, 1, 32, 128, 262144, 32768, 1);
            cfg->sliding_window = 16;
            return kw_config_set_sliding_pattern(cfg, 2);
        default:
            KW_FAIL(KW_E_INVALID_ARG, "gen-model cannot make %s models", kw_arch_name(*arch));
        }
    }
    if (strcmp(preset, "qwen3-0.6b") == 0) {
        want = KW_ARCH_QWEN3;
        kw_gen_shape(cfg, want, 28, 1024, 16, 8, 128, 3072, 151936, 40960, 1);
    } else if (strcmp(preset, "qwen2.5-0.5b") == 0) {
        want = KW_ARCH_QWEN2;
        kw_gen_shape(cfg, want, 24, 896, 14, 2, 64, 4864, 151936, 32768, 1);
    } else if (strcmp(preset, "llama-3.2-1b") == 0) {
        want = KW_ARCH_LLAMA;
        kw_gen_shape(cfg, want, 16, 2048, 32, 8, 64, 8192, 128256, 131072, 1);
    } else if (strcmp(preset, "gemma-3-270m") == 0) {
        want = KW_ARCH_GEMMA3;
        kw_gen_shape(cfg, want, 18, 640, 4, 1, 256, 2048, 262144, 32768, 1);
        cfg->sliding_window = 512;
        KW_FORWARD(kw_config_set_sliding_pattern(cfg, 6));
    } else {
        KW_FAIL(KW_E_INVALID_ARG, "unknown preset \"%s\" (tiny, qwen3-0.6b, qwen2.5-0.5b, llama-3.2-1b, gemma-3-270m)",
                preset);
    }
    KW_RETURN_IF(arch && *arch != want, KW_E_INVALID_ARG, "preset %s is a %s model, not %s", preset, kw_arch_name(want),
                 kw_arch_name(*arch));
    return 0;
}

int kw_genmodel_fit_special_ids(kw_model_config *c) {
    int moved = 0;
    const int32_t last = c->vocab - 1, second = c->vocab >= 2 ? c->vocab - 2 : 0;
    if (c->bos_id >= c->vocab) c->bos_id = second, moved = 1;
    if (c->pad_id >= c->vocab) c->pad_id = second, moved = 1;
    int32_t k = 0;
    for (int32_t i = 0; i < c->n_eos; ++i) {
        int32_t id = c->eos_ids[i];
        if (id >= c->vocab) id = last, moved = 1;
        int dup = 0;
        for (int32_t j = 0; j < k; ++j)
            dup |= c->eos_ids[j] == id;
        if (!dup) c->eos_ids[k++] = id;
    }
    c->n_eos = k;
    return moved;
}

/* ------------------------------------------------------------------------------------------------------------
 * JSON texts
 */

/* The texts are built in a kw_buf, whose first failure sticks: the appends below are not checked one by one, the final
 * kw_buf_take reports it. */

/* Integral values as "1000000.0" (so float fields stay floats), others as the shortest %g text that reads back as
 * the same double (as Python's repr). */
static void kw_gen_fmt_double(char *out, size_t n, double v) {
    if (v > -1e15 && v < 1e15 && (double)(long long)v == v) {
        snprintf(out, n, "%lld.0", (long long)v);
        return;
    }
    for (int prec = 1; prec <= 17; ++prec) {
        snprintf(out, n, "%.*g", prec, v);
        if (strtod(out, NULL) == v) break;
    }
}

/* The same for a float (rms_norm_eps is stored as float; 1e-6f prints as 1e-06). */
static void kw_gen_fmt_float(char *out, size_t n, float v) {
    for (int prec = 1; prec <= 9; ++prec) {
        snprintf(out, n, "%.*g", prec, (double)v);
        if (strtof(out, NULL) == v) break;
    }
}

static const char *kw_gen_torch_dtype(enum kw_dtype d) {
    return d == KW_DTYPE_F32 ? "float32" : d == KW_DTYPE_F16 ? "float16" : "bfloat16";
}

static void kw_gen_eos(kw_buf *b, const kw_model_config *c, int list) {
    if (c->n_eos == 0) {
        kw_buf_printf(b, "null");
    } else if (!list || c->n_eos == 1) {
        kw_buf_printf(b, "%d", (int)c->eos_ids[0]);
    } else {
        kw_buf_printf(b, "[");
        for (int32_t i = 0; i < c->n_eos; ++i)
            kw_buf_printf(b, "%s%d", i ? ", " : "", (int)c->eos_ids[i]);
        kw_buf_printf(b, "]");
    }
}

static void kw_gen_id(kw_buf *b, const char *key, int32_t id, const char *sep) {
    if (id >= 0)
        kw_buf_printf(b, "  \"%s\": %d%s\n", key, (int)id, sep);
    else
        kw_buf_printf(b, "  \"%s\": null%s\n", key, sep);
}

/* The sliding_window_pattern that gives c's layer kinds (every pattern-th layer global), or -1 if none does. */
static int32_t kw_gen_pattern(const kw_model_config *c) {
    for (int32_t p = 1; p <= c->n_layers + 1; ++p) {
        int32_t l = 0;
        while (l < c->n_layers && c->layer_sliding[l] == ((l + 1) % p != 0))
            ++l;
        if (l == c->n_layers) return p;
    }
    return -1;
}

/* Gemma3ForCausalLM's config.json: what transformers 4.52 writes for a Gemma3TextConfig (its sliding_window_pattern),
 * plus the layer_types list of newer versions. */
static int kw_gen_config_gemma3(const kw_model_config *c, enum kw_dtype dtype, char **out) {
    const int32_t pattern = kw_gen_pattern(c);
    KW_RETURN_IF(pattern < 1, KW_E_INVALID_ARG, "gen-model writes Gemma3 layer kinds as a sliding_window_pattern");
    KW_RETURN_IF(c->rope.scaling == KW_ROPE_SCALING_LLAMA3, KW_E_INVALID_ARG,
                 "gen-model writes no llama3 rope scaling for Gemma3");
    char num[64];
    kw_buf b = KW_BUF_INIT;
    kw_buf_printf(&b, "{\n  \"architectures\": [\n    \"Gemma3ForCausalLM\"\n  ],\n");
    kw_buf_printf(&b, "  \"attention_bias\": %s,\n", c->attention_bias ? "true" : "false");
    kw_buf_printf(&b, "  \"attention_dropout\": 0.0,\n  \"attn_logit_softcapping\": null,\n");
    kw_gen_id(&b, "bos_token_id", c->bos_id, ",");
    kw_buf_printf(&b, "  \"cache_implementation\": \"hybrid\",\n  \"eos_token_id\": ");
    kw_gen_eos(&b, c, 1);
    kw_buf_printf(&b, ",\n");
    if (c->final_logit_softcap > 0) {
        kw_gen_fmt_double(num, sizeof num, c->final_logit_softcap);
        kw_buf_printf(&b, "  \"final_logit_softcapping\": %s,\n", num);
    } else {
        kw_buf_printf(&b, "  \"final_logit_softcapping\": null,\n");
    }
    kw_buf_printf(&b, "  \"head_dim\": %d,\n  \"hidden_activation\": \"gelu_pytorch_tanh\",\n", (int)c->head_dim);
    kw_buf_printf(&b, "  \"hidden_size\": %d,\n  \"initializer_range\": 0.02,\n", (int)c->hidden);
    kw_buf_printf(&b, "  \"intermediate_size\": %d,\n  \"layer_types\": [\n", (int)c->intermediate);
    for (int32_t l = 0; l < c->n_layers; ++l)
        kw_buf_printf(&b, "    \"%s\"%s\n", c->layer_sliding[l] ? "sliding_attention" : "full_attention",
                      l + 1 < c->n_layers ? "," : "");
    kw_buf_printf(&b, "  ],\n  \"max_position_embeddings\": %d,\n", (int)c->max_positions);
    kw_buf_printf(&b, "  \"model_type\": \"gemma3_text\",\n");
    kw_buf_printf(&b, "  \"num_attention_heads\": %d,\n  \"num_hidden_layers\": %d,\n", (int)c->n_heads,
                  (int)c->n_layers);
    kw_buf_printf(&b, "  \"num_key_value_heads\": %d,\n", (int)c->n_kv_heads);
    kw_gen_id(&b, "pad_token_id", c->pad_id, ",");
    kw_gen_fmt_double(num, sizeof num, c->query_pre_attn_scalar);
    kw_buf_printf(&b, "  \"query_pre_attn_scalar\": %s,\n", num);
    kw_gen_fmt_float(num, sizeof num, c->rms_eps);
    kw_buf_printf(&b, "  \"rms_norm_eps\": %s,\n", num);
    kw_gen_fmt_double(num, sizeof num, c->rope_local.theta);
    kw_buf_printf(&b, "  \"rope_local_base_freq\": %s,\n", num);
    if (c->rope.scaling == KW_ROPE_SCALING_LINEAR) {
        kw_gen_fmt_double(num, sizeof num, c->rope.factor);
        kw_buf_printf(&b, "  \"rope_scaling\": {\n    \"factor\": %s,\n    \"rope_type\": \"linear\"\n  },\n", num);
    } else {
        kw_buf_printf(&b, "  \"rope_scaling\": null,\n");
    }
    kw_gen_fmt_double(num, sizeof num, c->rope.theta);
    kw_buf_printf(&b, "  \"rope_theta\": %s,\n", num);
    kw_buf_printf(&b, "  \"sliding_window\": %d,\n  \"sliding_window_pattern\": %d,\n", (int)c->sliding_window,
                  (int)pattern);
    kw_buf_printf(&b, "  \"tie_word_embeddings\": %s,\n", c->tie_embeddings ? "true" : "false");
    kw_buf_printf(&b, "  \"torch_dtype\": \"%s\",\n", kw_gen_torch_dtype(dtype));
    kw_buf_printf(&b, "  \"transformers_version\": \"4.52.4\",\n  \"use_cache\": true,\n");
    kw_buf_printf(&b, "  \"vocab_size\": %d\n}\n", (int)c->vocab);
    return kw_buf_take(&b, out, NULL); /* reports the first failed append */
}

int kw_genmodel_config_json(const kw_model_config *c, enum kw_dtype dtype, char **out) {
    KW_RETURN_IF(!c || !out, KW_E_INVALID_ARG, "kw_genmodel_config_json: NULL argument");
    KW_FORWARD(kw_config_validate(c));
    if (c->arch == KW_ARCH_GEMMA3) return kw_gen_config_gemma3(c, dtype, out);
    KW_RETURN_IF(c->rope.scaling == KW_ROPE_SCALING_LINEAR, KW_E_INVALID_ARG,
                 "gen-model writes no linear rope scaling");
    static const char *const classes[] = {"Qwen2ForCausalLM", "Qwen3ForCausalLM", "LlamaForCausalLM"};
    const int qwen2 = c->arch == KW_ARCH_QWEN2, qwen3 = c->arch == KW_ARCH_QWEN3, llama = c->arch == KW_ARCH_LLAMA;
    char num[64];
    kw_buf b = KW_BUF_INIT;
    kw_buf_printf(&b, "{\n  \"architectures\": [\n    \"%s\"\n  ],\n", classes[c->arch]);
    if (!qwen2) kw_buf_printf(&b, "  \"attention_bias\": %s,\n", c->attention_bias ? "true" : "false");
    kw_buf_printf(&b, "  \"attention_dropout\": 0.0,\n");
    kw_gen_id(&b, "bos_token_id", c->bos_id, ",");
    kw_buf_printf(&b, "  \"eos_token_id\": ");
    kw_gen_eos(&b, c, llama); /* Qwen configs name one eos; Llama-3.2 lists all three */
    kw_buf_printf(&b, ",\n");
    if (!qwen2 || c->head_dim * c->n_heads != c->hidden) kw_buf_printf(&b, "  \"head_dim\": %d,\n", (int)c->head_dim);
    kw_buf_printf(&b, "  \"hidden_act\": \"silu\",\n  \"hidden_size\": %d,\n", (int)c->hidden);
    kw_buf_printf(&b, "  \"initializer_range\": 0.02,\n  \"intermediate_size\": %d,\n", (int)c->intermediate);
    kw_buf_printf(&b, "  \"max_position_embeddings\": %d,\n", (int)c->max_positions);
    if (!llama) kw_buf_printf(&b, "  \"max_window_layers\": %d,\n", (int)c->n_layers);
    if (llama) kw_buf_printf(&b, "  \"mlp_bias\": %s,\n", c->mlp_bias ? "true" : "false");
    kw_buf_printf(&b, "  \"model_type\": \"%s\",\n", kw_arch_name(c->arch));
    kw_buf_printf(&b, "  \"num_attention_heads\": %d,\n  \"num_hidden_layers\": %d,\n", (int)c->n_heads,
                  (int)c->n_layers);
    kw_buf_printf(&b, "  \"num_key_value_heads\": %d,\n", (int)c->n_kv_heads);
    if (llama) kw_buf_printf(&b, "  \"pretraining_tp\": 1,\n");
    kw_gen_fmt_float(num, sizeof num, c->rms_eps);
    kw_buf_printf(&b, "  \"rms_norm_eps\": %s,\n", num);
    if (c->rope.scaling == KW_ROPE_SCALING_LLAMA3) {
        kw_buf_printf(&b, "  \"rope_scaling\": {\n");
        kw_gen_fmt_double(num, sizeof num, c->rope.factor);
        kw_buf_printf(&b, "    \"factor\": %s,\n", num);
        kw_gen_fmt_double(num, sizeof num, c->rope.high_freq_factor);
        kw_buf_printf(&b, "    \"high_freq_factor\": %s,\n", num);
        kw_gen_fmt_double(num, sizeof num, c->rope.low_freq_factor);
        kw_buf_printf(&b, "    \"low_freq_factor\": %s,\n", num);
        kw_buf_printf(&b, "    \"original_max_position_embeddings\": %d,\n", (int)c->rope.original_max_position);
        kw_buf_printf(&b, "    \"rope_type\": \"llama3\"\n  },\n");
    } else {
        kw_buf_printf(&b, "  \"rope_scaling\": null,\n");
    }
    kw_gen_fmt_double(num, sizeof num, c->rope.theta);
    kw_buf_printf(&b, "  \"rope_theta\": %s,\n", num);
    if (!llama) kw_buf_printf(&b, "  \"sliding_window\": null,\n");
    kw_buf_printf(&b, "  \"tie_word_embeddings\": %s,\n", c->tie_embeddings ? "true" : "false");
    kw_buf_printf(&b, "  \"torch_dtype\": \"%s\",\n", kw_gen_torch_dtype(dtype));
    kw_buf_printf(&b, "  \"transformers_version\": \"4.52.4\",\n  \"use_cache\": true,\n");
    if (qwen2 || qwen3) kw_buf_printf(&b, "  \"use_sliding_window\": false,\n");
    kw_buf_printf(&b, "  \"vocab_size\": %d\n}\n", (int)c->vocab);
    return kw_buf_take(&b, out, NULL); /* reports the first failed append */
}

int kw_genmodel_generation_json(const kw_model_config *c, char **out) {
    KW_RETURN_IF(!c || !out, KW_E_INVALID_ARG, "kw_genmodel_generation_json: NULL argument");
    kw_buf b = KW_BUF_INIT;
    kw_buf_printf(&b, "{\n");
    kw_gen_id(&b, "bos_token_id", c->bos_id, ",");
    kw_buf_printf(&b, "  \"do_sample\": false,\n  \"eos_token_id\": ");
    kw_gen_eos(&b, c, 1);
    kw_buf_printf(&b, ",\n");
    if (c->pad_id >= 0) kw_gen_id(&b, "pad_token_id", c->pad_id, ",");
    kw_buf_printf(&b, "  \"transformers_version\": \"4.52.4\"\n}\n");
    return kw_buf_take(&b, out, NULL); /* reports the first failed append */
}

/* ------------------------------------------------------------------------------------------------------------
 * Weights
 */

#define KW_GEN_GAMMA 0x9E3779B97F4A7C15ull

static uint64_t kw_gen_mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t kw_gen_key(uint64_t seed, const char *name) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a 64 */
    for (const unsigned char *p = (const unsigned char *)name; *p; ++p)
        h = (h ^ *p) * 0x100000001b3ull;
    return kw_gen_mix(h ^ kw_gen_mix(seed + KW_GEN_GAMMA));
}

/* The Irwin-Hall(12) integer N of element i (see kw_genmodel.h). */
static int32_t kw_gen_irwin_hall(uint64_t key, uint64_t i) {
    int32_t sum = 0;
    for (uint64_t d = 0; d < 3; ++d) {
        const uint64_t r = kw_gen_mix(key + (3 * i + d + 1) * KW_GEN_GAMMA);
        sum +=
            (int32_t)(r & 0xffff) + (int32_t)((r >> 16) & 0xffff) + (int32_t)((r >> 32) & 0xffff) + (int32_t)(r >> 48);
    }
    return sum - 393210; /* 12 * 65535 / 2 */
}

static float kw_gen_scale(int32_t n, int is_norm) {
    /* Every product is exact: |n| + 2^20 < 2^24 fits a float mantissa and the factors are powers of two. */
    if (is_norm == KW_GENMODEL_OFFSET) return (float)n * 0x1p-20f;
    return is_norm ? (float)(n + (1 << 20)) * 0x1p-20f : (float)n * 0x1p-22f;
}

float kw_genmodel_value(uint64_t seed, const char *name, int is_norm, uint64_t index) {
    return kw_gen_scale(kw_gen_irwin_hall(kw_gen_key(seed, name), index), is_norm);
}

/* One tensor of the model being written. */
typedef struct kw_gen_tensor {
    char name[KW_GEN_NAME_LEN];
    int32_t ndim;
    int64_t shape[2];
    int is_norm;
} kw_gen_tensor;

typedef struct kw_gen_list {
    kw_gen_tensor *t;
    size_t n, cap;
} kw_gen_list;

static int kw_gen_add(kw_gen_list *l, int is_norm, int64_t rows, int64_t cols, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static int kw_gen_add(kw_gen_list *l, int is_norm, int64_t rows, int64_t cols, const char *fmt, ...) {
    if (l->n == l->cap) {
        const size_t cap = l->cap ? l->cap * 2 : 64;
        kw_gen_tensor *t = realloc(l->t, cap * sizeof *t);
        KW_RETURN_IF(!t, KW_E_NOMEM, "out of memory");
        l->t = t;
        l->cap = cap;
    }
    kw_gen_tensor *t = &l->t[l->n++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    t->is_norm = is_norm;
    t->ndim = cols > 0 ? 2 : 1;
    t->shape[0] = rows;
    t->shape[1] = cols;
    return 0;
}

/* Gemma3ForCausalLM's state-dict names and shapes, in module order. Norm weights are zero-centred (HF scales by
 * 1 + w). */
static int kw_gen_tensors_gemma3(const kw_model_config *c, kw_gen_list *l) {
    const int64_t h = c->hidden, q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
    const int64_t f = c->intermediate, d = c->head_dim;
    const int nk = KW_GENMODEL_OFFSET, ab = c->attention_bias;
    const char *p = "model.layers";
    KW_FORWARD(kw_gen_add(l, 0, c->vocab, h, "model.embed_tokens.weight"));
    for (int32_t i = 0; i < c->n_layers; ++i) {
        KW_FORWARD(kw_gen_add(l, 0, q, h, "%s.%d.self_attn.q_proj.weight", p, (int)i));
        if (ab) KW_FORWARD(kw_gen_add(l, 0, q, 0, "%s.%d.self_attn.q_proj.bias", p, (int)i));
        KW_FORWARD(kw_gen_add(l, 0, kv, h, "%s.%d.self_attn.k_proj.weight", p, (int)i));
        if (ab) KW_FORWARD(kw_gen_add(l, 0, kv, 0, "%s.%d.self_attn.k_proj.bias", p, (int)i));
        KW_FORWARD(kw_gen_add(l, 0, kv, h, "%s.%d.self_attn.v_proj.weight", p, (int)i));
        if (ab) KW_FORWARD(kw_gen_add(l, 0, kv, 0, "%s.%d.self_attn.v_proj.bias", p, (int)i));
        KW_FORWARD(kw_gen_add(l, 0, h, q, "%s.%d.self_attn.o_proj.weight", p, (int)i));
        if (ab) KW_FORWARD(kw_gen_add(l, 0, h, 0, "%s.%d.self_attn.o_proj.bias", p, (int)i));
        KW_FORWARD(kw_gen_add(l, nk, d, 0, "%s.%d.self_attn.q_norm.weight", p, (int)i));
        KW_FORWARD(kw_gen_add(l, nk, d, 0, "%s.%d.self_attn.k_norm.weight", p, (int)i));
        KW_FORWARD(kw_gen_add(l, 0, f, h, "%s.%d.mlp.gate_proj.weight", p, (int)i));
        KW_FORWARD(kw_gen_add(l, 0, f, h, "%s.%d.mlp.up_proj.weight", p, (int)i));
        KW_FORWARD(kw_gen_add(l, 0, h, f, "%s.%d.mlp.down_proj.weight", p, (int)i));
        KW_FORWARD(kw_gen_add(l, nk, h, 0, "%s.%d.input_layernorm.weight", p, (int)i));
        KW_FORWARD(kw_gen_add(l, nk, h, 0, "%s.%d.post_attention_layernorm.weight", p, (int)i));
        KW_FORWARD(kw_gen_add(l, nk, h, 0, "%s.%d.pre_feedforward_layernorm.weight", p, (int)i));
        KW_FORWARD(kw_gen_add(l, nk, h, 0, "%s.%d.post_feedforward_layernorm.weight", p, (int)i));
    }
    KW_FORWARD(kw_gen_add(l, nk, h, 0, "model.norm.weight"));
    if (!c->tie_embeddings) KW_FORWARD(kw_gen_add(l, 0, c->vocab, h, "lm_head.weight"));
    return 0;
}

/* The HF state-dict names and shapes of cfg, in module order. */
static int kw_gen_tensors(const kw_model_config *c, kw_gen_list *l) {
    if (c->arch == KW_ARCH_GEMMA3) return kw_gen_tensors_gemma3(c, l);
    const int64_t h = c->hidden, q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
    const int64_t f = c->intermediate;
    KW_FORWARD(kw_gen_add(l, 0, c->vocab, h, "model.embed_tokens.weight"));
    for (int32_t i = 0; i < c->n_layers; ++i) {
        const char *p = "model.layers";
        KW_FORWARD(kw_gen_add(l, 1, h, 0, "%s.%d.input_layernorm.weight", p, (int)i));
        KW_FORWARD(kw_gen_add(l, 0, q, h, "%s.%d.self_attn.q_proj.weight", p, (int)i));
        if (c->attention_bias) KW_FORWARD(kw_gen_add(l, 0, q, 0, "%s.%d.self_attn.q_proj.bias", p, (int)i));
        KW_FORWARD(kw_gen_add(l, 0, kv, h, "%s.%d.self_attn.k_proj.weight", p, (int)i));
        if (c->attention_bias) KW_FORWARD(kw_gen_add(l, 0, kv, 0, "%s.%d.self_attn.k_proj.bias", p, (int)i));
        KW_FORWARD(kw_gen_add(l, 0, kv, h, "%s.%d.self_attn.v_proj.weight", p, (int)i));
        if (c->attention_bias) KW_FORWARD(kw_gen_add(l, 0, kv, 0, "%s.%d.self_attn.v_proj.bias", p, (int)i));
        KW_FORWARD(kw_gen_add(l, 0, h, q, "%s.%d.self_attn.o_proj.weight", p, (int)i));
        if (c->o_bias) KW_FORWARD(kw_gen_add(l, 0, h, 0, "%s.%d.self_attn.o_proj.bias", p, (int)i));
        if (c->qk_norm) {
            KW_FORWARD(kw_gen_add(l, 1, c->head_dim, 0, "%s.%d.self_attn.q_norm.weight", p, (int)i));
            KW_FORWARD(kw_gen_add(l, 1, c->head_dim, 0, "%s.%d.self_attn.k_norm.weight", p, (int)i));
        }
        KW_FORWARD(kw_gen_add(l, 1, h, 0, "%s.%d.post_attention_layernorm.weight", p, (int)i));
        KW_FORWARD(kw_gen_add(l, 0, f, h, "%s.%d.mlp.gate_proj.weight", p, (int)i));
        if (c->mlp_bias) KW_FORWARD(kw_gen_add(l, 0, f, 0, "%s.%d.mlp.gate_proj.bias", p, (int)i));
        KW_FORWARD(kw_gen_add(l, 0, f, h, "%s.%d.mlp.up_proj.weight", p, (int)i));
        if (c->mlp_bias) KW_FORWARD(kw_gen_add(l, 0, f, 0, "%s.%d.mlp.up_proj.bias", p, (int)i));
        KW_FORWARD(kw_gen_add(l, 0, h, f, "%s.%d.mlp.down_proj.weight", p, (int)i));
        if (c->mlp_bias) KW_FORWARD(kw_gen_add(l, 0, h, 0, "%s.%d.mlp.down_proj.bias", p, (int)i));
    }
    KW_FORWARD(kw_gen_add(l, 1, h, 0, "model.norm.weight"));
    if (!c->tie_embeddings) KW_FORWARD(kw_gen_add(l, 0, c->vocab, h, "lm_head.weight"));
    return 0;
}

/* Streams one tensor's elements, converted to dtype, little-endian. */
static int kw_gen_stream(kw_st_writer *w, const kw_gen_tensor *t, uint64_t seed, enum kw_dtype dtype,
                         unsigned char *buf) {
    const uint64_t key = kw_gen_key(seed, t->name);
    const uint64_t n = (uint64_t)t->shape[0] * (uint64_t)(t->ndim == 2 ? t->shape[1] : 1);
    for (uint64_t i0 = 0; i0 < n; i0 += KW_GEN_CHUNK_ELEMS) {
        const size_t m = (size_t)(n - i0 < KW_GEN_CHUNK_ELEMS ? n - i0 : KW_GEN_CHUNK_ELEMS);
        size_t bytes = 0;
        for (size_t j = 0; j < m; ++j) {
            const float v = kw_gen_scale(kw_gen_irwin_hall(key, i0 + j), t->is_norm);
            if (dtype == KW_DTYPE_F32) {
                const uint32_t u = kw_f32_bits(v);
                buf[bytes++] = (unsigned char)u;
                buf[bytes++] = (unsigned char)(u >> 8);
                buf[bytes++] = (unsigned char)(u >> 16);
                buf[bytes++] = (unsigned char)(u >> 24);
            } else {
                const uint16_t u = dtype == KW_DTYPE_BF16 ? kw_f32_to_bf16(v) : kw_f32_to_f16(v);
                buf[bytes++] = (unsigned char)u;
                buf[bytes++] = (unsigned char)(u >> 8);
            }
        }
        KW_FORWARD(kw_st_writer_write(w, buf, bytes));
    }
    return 0;
}

static int kw_gen_write_text(const char *dir, const char *name, const char *text) {
    char *path = kw_path_join(dir, name);
    KW_RETURN_IF(!path, KW_E_NOMEM, "out of memory");
    const int rc = kw_file_write_all(path, text, strlen(text));
    free(path);
    return rc;
}

static int kw_gen_copy(const char *from_dir, const char *to_dir, const char *name) {
    int rc = 0;
    char *src = kw_path_join(from_dir, name), *dst = kw_path_join(to_dir, name), *data = NULL;
    size_t size = 0;
    KW_CHECK_IF(!src || !dst, KW_E_NOMEM, "out of memory");
    KW_CHECK(kw_file_read_all(src, KW_GEN_MAX_TOKENIZER, &data, &size));
    KW_CHECK(kw_file_write_all(dst, data, size));
out:
    free(src);
    free(dst);
    free(data);
    return rc;
}

/* The final check: the folder reads back with the project's own loaders and matches what was asked for. */
static int kw_gen_verify(const char *dir, const kw_model_config *want, size_t n_tensors) {
    kw_model_config got;
    KW_FORWARD(kw_config_load(dir, &got));
    KW_RETURN_IF(got.arch != want->arch || got.n_layers != want->n_layers || got.hidden != want->hidden ||
                     got.n_heads != want->n_heads || got.n_kv_heads != want->n_kv_heads ||
                     got.head_dim != want->head_dim || got.intermediate != want->intermediate ||
                     got.vocab != want->vocab || got.tie_embeddings != want->tie_embeddings ||
                     got.attention_bias != want->attention_bias || got.qk_norm != want->qk_norm ||
                     got.rope.scaling != want->rope.scaling || got.n_eos != want->n_eos || got.act != want->act ||
                     got.sliding_window != want->sliding_window ||
                     memcmp(got.layer_sliding, want->layer_sliding, sizeof got.layer_sliding) != 0 ||
                     got.query_pre_attn_scalar != want->query_pre_attn_scalar ||
                     got.final_logit_softcap != want->final_logit_softcap,
                 KW_E_INTERNAL, "gen-model: %s/config.json does not read back as written", dir);
    kw_safetensors *st = NULL;
    KW_FORWARD(kw_safetensors_open(dir, &st));
    const size_t count = kw_safetensors_count(st);
    kw_safetensors_close(st);
    KW_RETURN_IF(count != n_tensors, KW_E_INTERNAL, "gen-model: %s holds %zu tensors, expected %zu", dir, count,
                 n_tensors);
    return 0;
}

int kw_genmodel_write(const kw_genmodel_options *opt, const char *out_dir) {
    KW_RETURN_IF(!opt || !out_dir, KW_E_INVALID_ARG, "kw_genmodel_write: NULL argument");
    KW_RETURN_IF(opt->dtype != KW_DTYPE_F32 && opt->dtype != KW_DTYPE_BF16 && opt->dtype != KW_DTYPE_F16,
                 KW_E_INVALID_ARG, "gen-model: dtype must be f32, bf16 or f16");
    int rc = 0;
    kw_gen_list list = {0};
    kw_st_write_tensor *desc = NULL;
    kw_st_writer *w = NULL;
    unsigned char *buf = NULL;
    char *config = NULL, *generation = NULL, *st_path = NULL;
    kw_model_config cfg = opt->cfg;
    cfg.weight_dtype = opt->dtype;
    cfg.rope.rotary_dim = cfg.head_dim;
    if (cfg.arch == KW_ARCH_GEMMA3) cfg.rope_local.rotary_dim = cfg.head_dim;

    KW_CHECK(kw_genmodel_config_json(&cfg, opt->dtype, &config));
    KW_CHECK(kw_genmodel_generation_json(&cfg, &generation));
    KW_CHECK(kw_gen_tensors(&cfg, &list));
    if (opt->tokenizer_dir) {
        char *tj = kw_path_join(opt->tokenizer_dir, "tokenizer.json");
        const int ok = tj && kw_path_is_file(tj);
        free(tj);
        KW_CHECK_IF(!ok, KW_E_NOT_FOUND, "gen-model: %s has no tokenizer.json", opt->tokenizer_dir);
    }
    KW_CHECK(kw_path_mkdir(out_dir));

    desc = calloc(list.n, sizeof *desc);
    buf = malloc(KW_GEN_CHUNK_ELEMS * 4);
    st_path = kw_path_join(out_dir, "model.safetensors");
    KW_CHECK_IF(!desc || !buf || !st_path, KW_E_NOMEM, "out of memory");
    for (size_t i = 0; i < list.n; ++i) {
        desc[i].name = list.t[i].name;
        desc[i].dtype = opt->dtype;
        desc[i].ndim = list.t[i].ndim;
        desc[i].shape[0] = list.t[i].shape[0];
        desc[i].shape[1] = list.t[i].shape[1];
    }
    KW_CHECK(kw_st_writer_open(st_path, desc, list.n, "{\"format\":\"pt\"}", &w));
    for (size_t i = 0; i < list.n; ++i)
        KW_CHECK(kw_gen_stream(w, &list.t[kw_st_writer_order(w, i)], opt->seed, opt->dtype, buf));
    KW_CHECK(kw_st_writer_finish(w));

    if (opt->tokenizer_dir) {
        KW_CHECK(kw_gen_copy(opt->tokenizer_dir, out_dir, "tokenizer.json"));
        KW_CHECK(kw_gen_copy(opt->tokenizer_dir, out_dir, "tokenizer_config.json"));
    }
    /* config.json last: a folder without it is visibly incomplete */
    KW_CHECK(kw_gen_write_text(out_dir, "generation_config.json", generation));
    KW_CHECK(kw_gen_write_text(out_dir, "config.json", config));
    KW_CHECK(kw_gen_verify(out_dir, &cfg, list.n));
out:
    kw_st_writer_close(w);
    free(list.t);
    free(desc);
    free(buf);
    free(config);
    free(generation);
    free(st_path);
    return rc;
}
