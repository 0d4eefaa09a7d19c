/* kw_gguf_model.c: GGUF metadata -> kw_model_config, HF tensor names -> GGUF names, and reading a GGUF tensor in the
 * HF layout (dequantized, llama q/k rows un-permuted; Gemma 3 norms stay 1 + w, as stored). See kw_gguf_model.h for the
 * conventions; the key names are llama.cpp's (gguf-py/gguf/constants.py lists them). */
#include "model/kw_gguf_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_half.h"
#include "common/kw_size.h"
#include "common/kw_status.h"
#include "model/kw_dequant.h"

// ---------------------------------------------------------------------------------------------------------------
// Configuration

typedef struct kw_gguf_arch_name {
    const char *name;
    enum kw_arch arch;
} kw_gguf_arch_name;

static const kw_gguf_arch_name kw_gguf_archs[] = {
    {"llama", KW_ARCH_LLAMA},
    {"qwen2", KW_ARCH_QWEN2},
    {"qwen3", KW_ARCH_QWEN3},
    {"gemma3", KW_ARCH_GEMMA3},
};

/* "<arch>.<suffix>" */
static const char *kw_gguf_key(char *buf, size_t cap, const char *arch, const char *suffix) {
    snprintf(buf, cap, "%s.%s", arch, suffix);
    return buf;
}

/* An integer key: required (KW_E_MODEL_CONFIG if absent) or def when absent; range-checked. */
static int kw_gguf_cfg_int(const kw_gguf *g, const char *arch, const char *suffix, int required, int64_t def,
                           int64_t min, int64_t max, int32_t *out) {
    char key[128];
    int64_t v = def;
    const int rc = kw_gguf_get_int(g, kw_gguf_key(key, sizeof key, arch, suffix), min, max, &v);
    if (rc == KW_E_NOT_FOUND) {
        KW_RETURN_IF(required, KW_E_MODEL_CONFIG, "GGUF metadata %s is missing", key);
        v = def;
    } else if (rc < 0) {
        return kw_error_set(KW_E_MODEL_CONFIG, "%s", kw_error_detail());
    }
    *out = (int32_t)v;
    return 0;
}

static int kw_gguf_cfg_float(const kw_gguf *g, const char *key, int required, double def, double *out) {
    const int rc = kw_gguf_get_float(g, key, out);
    if (rc == KW_E_NOT_FOUND) {
        KW_RETURN_IF(required, KW_E_MODEL_CONFIG, "GGUF metadata %s is missing", key);
        *out = def;
        return 0;
    }
    if (rc < 0) return kw_error_set(KW_E_MODEL_CONFIG, "%s", kw_error_detail());
    KW_RETURN_IF(!isfinite(*out), KW_E_MODEL_CONFIG, "GGUF metadata %s is not finite", key);
    return 0;
}

/* A special token id from tokenizer.ggml.<name>_token_id: -1 when absent. */
static int kw_gguf_cfg_token(const kw_gguf *g, const char *name, int32_t *out) {
    char key[96];
    snprintf(key, sizeof key, "tokenizer.ggml.%s_token_id", name);
    int64_t v = -1;
    const int rc = kw_gguf_get_int(g, key, 0, INT32_MAX, &v);
    if (rc == KW_E_NOT_FOUND)
        v = -1;
    else if (rc < 0)
        return kw_error_set(KW_E_MODEL_CONFIG, "%s", kw_error_detail());
    *out = (int32_t)v;
    return 0;
}

static int kw_gguf_has(const kw_gguf *g, const char *name) {
    return kw_gguf_find_tensor(g, name) != NULL;
}

static int kw_gguf_cfg_rope(const kw_gguf *g, const char *arch, kw_model_config *cfg) {
    char key[128];
    cfg->rope.scaling = KW_ROPE_SCALING_NONE;
    cfg->rope.factor = 1.0;
    KW_RETURN_IF(kw_gguf_has(g, "rope_freqs.weight"), KW_E_MODEL_CONFIG,
                 "GGUF: per-frequency RoPE factors (rope_freqs.weight, llama3-style scaling) are not supported");
    const char *type = NULL;
    size_t n = 0;
    const int rc = kw_gguf_get_str(g, kw_gguf_key(key, sizeof key, arch, "rope.scaling.type"), &type, &n);
    if (rc < 0 && rc != KW_E_NOT_FOUND) return kw_error_set(KW_E_MODEL_CONFIG, "%s", kw_error_detail());
    double factor = 0.0;
    if (rc == KW_E_NOT_FOUND) {
        /* older files: <arch>.rope.scale_linear */
        KW_FORWARD(kw_gguf_cfg_float(g, kw_gguf_key(key, sizeof key, arch, "rope.scale_linear"), 0, 1.0, &factor));
        if (factor == 1.0) return 0;
    } else if (n == 4 && memcmp(type, "none", 4) == 0) {
        return 0;
    } else if (n == 6 && memcmp(type, "linear", 6) == 0) {
        KW_FORWARD(kw_gguf_cfg_float(g, kw_gguf_key(key, sizeof key, arch, "rope.scaling.factor"), 1, 0.0, &factor));
    } else {
        KW_FAIL(KW_E_MODEL_CONFIG, "GGUF: %s.rope.scaling.type \"%.*s\" is not supported (none, linear)", arch,
                (int)(n < 32 ? n : 32), type);
    }
    KW_RETURN_IF(!(factor >= 1.0 && factor <= 1e6), KW_E_MODEL_CONFIG, "GGUF: linear RoPE scaling factor %g", factor);
    cfg->rope.scaling = KW_ROPE_SCALING_LINEAR;
    cfg->rope.factor = factor;
    return 0;
}

static int kw_gguf_cfg_special(const kw_gguf *g, kw_model_config *cfg) {
    KW_FORWARD(kw_gguf_cfg_token(g, "bos", &cfg->bos_id));
    KW_FORWARD(kw_gguf_cfg_token(g, "padding", &cfg->pad_id));
    /* End of generation: EOS, then the end-of-turn and end-of-message ids llama.cpp also stops at. */
    static const char *const eog[] = {"eos", "eot", "eom"};
    for (size_t i = 0; i < sizeof eog / sizeof eog[0]; ++i) {
        int32_t id = -1;
        KW_FORWARD(kw_gguf_cfg_token(g, eog[i], &id));
        if (id < 0 || kw_config_is_eos(cfg, id)) continue;
        cfg->eos_ids[cfg->n_eos++] = id;
    }
    int add_bos = 0;
    const int rc = kw_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &add_bos);
    if (rc < 0 && rc != KW_E_NOT_FOUND) return kw_error_set(KW_E_MODEL_CONFIG, "%s", kw_error_detail());
    cfg->add_bos = rc == KW_E_NOT_FOUND ? -1 : add_bos;
    return 0;
}

/* Gemma 3's own numbers, as llama.cpp's llama-model.cpp reads a gemma3 file: every sixth layer global (the others
 * slide over <arch>.attention.sliding_window; a file may name another pattern), local RoPE base 10000, attention
 * scale key_length^-0.5 (the 27B model: (hidden / heads)^-0.5), tanh-GELU, an optional final_logit_softcapping;
 * "<end_of_turn>" also ends generation. The norm weights of the file already hold 1 + w (llama.cpp's converter adds
 * the 1), so they are applied as they are (norm_plus_one = 0). */
static int kw_gguf_cfg_gemma3(const kw_gguf *g, const char *arch, kw_model_config *cfg) {
    int32_t pattern = 6;
    KW_FORWARD(kw_gguf_cfg_int(g, arch, "attention.sliding_window", 1, 0, 1, 1 << 26, &cfg->sliding_window));
    KW_FORWARD(kw_gguf_cfg_int(g, arch, "attention.sliding_window_pattern", 0, 6, 1, 1024, &pattern));
    KW_FORWARD(kw_config_set_sliding_pattern(cfg, pattern));
    cfg->act = KW_ACT_GELU_TANH;
    cfg->rope_local =
        (kw_rope_params){.theta = 10000.0, .rotary_dim = cfg->head_dim, .scaling = KW_ROPE_SCALING_NONE, .factor = 1.0};
    cfg->query_pre_attn_scalar =
        cfg->n_layers == 62 && cfg->hidden == 5376 ? (double)(cfg->hidden / cfg->n_heads) : (double)cfg->head_dim;
    cfg->norm_plus_one = 0;
    char key[128];
    KW_FORWARD(kw_gguf_cfg_float(g, kw_gguf_key(key, sizeof key, arch, "final_logit_softcapping"), 0, 0.0,
                                 &cfg->final_logit_softcap));
    const kw_gguf_kv *tokens = NULL;
    if (kw_gguf_get_array(g, "tokenizer.ggml.tokens", KW_GGUF_STRING, &tokens) == 0) {
        for (uint64_t i = 0; i < tokens->count && i < (uint64_t)cfg->vocab; ++i) {
            const char *s = NULL;
            size_t n = 0;
            if (kw_gguf_array_str(g, tokens, i, &s, &n) == 0 && n == 13 && memcmp(s, "<end_of_turn>", 13) == 0 &&
                !kw_config_is_eos(cfg, (int32_t)i) && cfg->n_eos < KW_CONFIG_MAX_EOS) {
                cfg->eos_ids[cfg->n_eos++] = (int32_t)i;
                break;
            }
        }
    }
    return 0;
}

int kw_gguf_model_config(const kw_gguf *g, kw_model_config *cfg) {
    KW_RETURN_IF(!g || !cfg, KW_E_INVALID_ARG, "kw_gguf_model_config: NULL argument");
    memset(cfg, 0, sizeof *cfg);
    const char *s = NULL;
    size_t n = 0;
    KW_RETURN_IF(kw_gguf_get_str(g, "general.architecture", &s, &n) < 0, KW_E_MODEL_CONFIG,
                 "GGUF: general.architecture is missing or not a string");
    const char *arch = NULL;
    for (size_t i = 0; i < sizeof kw_gguf_archs / sizeof kw_gguf_archs[0]; ++i) {
        if (strlen(kw_gguf_archs[i].name) == n && memcmp(kw_gguf_archs[i].name, s, n) == 0) {
            arch = kw_gguf_archs[i].name;
            cfg->arch = kw_gguf_archs[i].arch;
        }
    }
    KW_RETURN_IF(!arch, KW_E_MODEL_ARCH, "GGUF architecture \"%.*s\" is not supported (llama, qwen2, qwen3, gemma3)",
                 (int)(n < 64 ? n : 64), s);

    KW_FORWARD(kw_gguf_cfg_int(g, arch, "block_count", 1, 0, 1, 1024, &cfg->n_layers));
    KW_FORWARD(kw_gguf_cfg_int(g, arch, "embedding_length", 1, 0, 1, 65536, &cfg->hidden));
    KW_FORWARD(kw_gguf_cfg_int(g, arch, "feed_forward_length", 1, 0, 1, 1 << 18, &cfg->intermediate));
    KW_FORWARD(kw_gguf_cfg_int(g, arch, "attention.head_count", 1, 0, 1, 1024, &cfg->n_heads));
    KW_FORWARD(kw_gguf_cfg_int(g, arch, "attention.head_count_kv", 0, cfg->n_heads, 1, 1024, &cfg->n_kv_heads));
    KW_FORWARD(kw_gguf_cfg_int(g, arch, "context_length", 1, 0, 1, 1 << 26, &cfg->max_positions));
    int32_t head_dim = 0, value_dim = 0;
    KW_FORWARD(kw_gguf_cfg_int(g, arch, "attention.key_length", 0, 0, 0, 1024, &head_dim));
    KW_FORWARD(kw_gguf_cfg_int(g, arch, "attention.value_length", 0, head_dim, 0, 1024, &value_dim));
    if (head_dim == 0) {
        KW_RETURN_IF(cfg->hidden % cfg->n_heads != 0, KW_E_MODEL_CONFIG,
                     "GGUF: %s.embedding_length %d is not a multiple of the head count %d and key_length is absent",
                     arch, (int)cfg->hidden, (int)cfg->n_heads);
        head_dim = value_dim = cfg->hidden / cfg->n_heads;
    }
    KW_RETURN_IF(value_dim != head_dim, KW_E_MODEL_CONFIG,
                 "GGUF: %s.attention.value_length %d differs from key_length %d", arch, (int)value_dim, (int)head_dim);
    cfg->head_dim = head_dim;
    KW_FORWARD(kw_gguf_cfg_int(g, arch, "rope.dimension_count", 0, head_dim, 1, 1024, &cfg->rope.rotary_dim));
    char key[128];
    double eps = 0.0, theta = 0.0;
    KW_FORWARD(
        kw_gguf_cfg_float(g, kw_gguf_key(key, sizeof key, arch, "attention.layer_norm_rms_epsilon"), 1, 0.0, &eps));
    cfg->rms_eps = (float)eps;
    KW_FORWARD(kw_gguf_cfg_float(g, kw_gguf_key(key, sizeof key, arch, "rope.freq_base"), 0, 10000.0, &theta));
    cfg->rope.theta = theta;
    KW_FORWARD(kw_gguf_cfg_rope(g, arch, cfg));

    /* The vocabulary and the tying come from the tensors, as llama.cpp decides them. */
    const kw_gguf_tensor *embd = kw_gguf_find_tensor(g, "token_embd.weight");
    KW_RETURN_IF(!embd || embd->n_dims != 2, KW_E_MODEL_CONFIG, "GGUF: token_embd.weight is missing or not 2-D");
    KW_RETURN_IF(embd->ne[0] != cfg->hidden || embd->ne[1] > (1 << 24), KW_E_MODEL_CONFIG,
                 "GGUF: token_embd.weight is (%lld, %lld), the hidden size is %d", (long long)embd->ne[1],
                 (long long)embd->ne[0], (int)cfg->hidden);
    cfg->vocab = (int32_t)embd->ne[1];
    cfg->tie_embeddings = !kw_gguf_has(g, "output.weight");
    cfg->attention_bias = kw_gguf_has(g, "blk.0.attn_q.bias");
    cfg->o_bias = kw_gguf_has(g, "blk.0.attn_output.bias");
    cfg->mlp_bias = kw_gguf_has(g, "blk.0.ffn_gate.bias");
    cfg->qk_norm = cfg->arch == KW_ARCH_QWEN3 || cfg->arch == KW_ARCH_GEMMA3;
    KW_RETURN_IF(cfg->arch == KW_ARCH_QWEN2 && !cfg->attention_bias, KW_E_MODEL_CONFIG,
                 "GGUF: a qwen2 model without q/k/v biases (blk.0.attn_q.bias)");
    cfg->weight_dtype = KW_DTYPE_F32;
    KW_FORWARD(kw_gguf_cfg_special(g, cfg));
    if (cfg->arch == KW_ARCH_GEMMA3) KW_FORWARD(kw_gguf_cfg_gemma3(g, arch, cfg));
    const int rc = kw_config_validate(cfg);
    if (rc < 0) return kw_error_set(rc, "GGUF: %s", kw_error_detail());
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Tensor names

typedef struct kw_gguf_name_map {
    const char *hf;   /* suffix after "model.layers.N." */
    const char *gguf; /* suffix after "blk.N." */
} kw_gguf_name_map;

/* Every family: attention and MLP projections. */
static const kw_gguf_name_map kw_gguf_layer_names[] = {
    {"self_attn.q_proj.weight", "attn_q.weight"},      {"self_attn.q_proj.bias", "attn_q.bias"},
    {"self_attn.k_proj.weight", "attn_k.weight"},      {"self_attn.k_proj.bias", "attn_k.bias"},
    {"self_attn.v_proj.weight", "attn_v.weight"},      {"self_attn.v_proj.bias", "attn_v.bias"},
    {"self_attn.o_proj.weight", "attn_output.weight"}, {"self_attn.o_proj.bias", "attn_output.bias"},
    {"self_attn.q_norm.weight", "attn_q_norm.weight"}, {"self_attn.k_norm.weight", "attn_k_norm.weight"},
    {"mlp.gate_proj.weight", "ffn_gate.weight"},       {"mlp.gate_proj.bias", "ffn_gate.bias"},
    {"mlp.up_proj.weight", "ffn_up.weight"},           {"mlp.up_proj.bias", "ffn_up.bias"},
    {"mlp.down_proj.weight", "ffn_down.weight"},       {"mlp.down_proj.bias", "ffn_down.bias"},
    {"input_layernorm.weight", "attn_norm.weight"},
};

/* Llama, Qwen2, Qwen3: the norm before the MLP is HF's post_attention_layernorm. */
static const kw_gguf_name_map kw_gguf_prenorm_names[] = {
    {"post_attention_layernorm.weight", "ffn_norm.weight"},
};

/* Gemma 3: norms after attention and after the MLP as well. */
static const kw_gguf_name_map kw_gguf_gemma3_names[] = {
    {"post_attention_layernorm.weight", "post_attention_norm.weight"},
    {"pre_feedforward_layernorm.weight", "ffn_norm.weight"},
    {"post_feedforward_layernorm.weight", "post_ffw_norm.weight"},
};

static const char *kw_gguf_map_suffix(const kw_gguf_name_map *t, size_t n, const char *hf) {
    for (size_t i = 0; i < n; ++i)
        if (strcmp(t[i].hf, hf) == 0) return t[i].gguf;
    return NULL;
}

int kw_gguf_model_tensor_name(enum kw_arch arch, const char *hf_name, char *out, size_t cap) {
    KW_RETURN_IF(!hf_name || !out || cap == 0, KW_E_INVALID_ARG, "kw_gguf_model_tensor_name: NULL argument");
    const char *g = NULL;
    if (strcmp(hf_name, "model.embed_tokens.weight") == 0)
        g = "token_embd.weight";
    else if (strcmp(hf_name, "model.norm.weight") == 0)
        g = "output_norm.weight";
    else if (strcmp(hf_name, "lm_head.weight") == 0)
        g = "output.weight";
    if (g) {
        KW_RETURN_IF((size_t)snprintf(out, cap, "%s", g) >= cap, KW_E_BUFFER_TOO_SMALL, "tensor name too long");
        return 0;
    }
    static const char prefix[] = "model.layers.";
    KW_RETURN_IF(strncmp(hf_name, prefix, sizeof prefix - 1) != 0, KW_E_NOT_FOUND, "no GGUF name for %.200s", hf_name);
    const char *p = hf_name + sizeof prefix - 1;
    unsigned layer = 0;
    int digits = 0;
    while (*p >= '0' && *p <= '9' && digits < 6) {
        layer = layer * 10 + (unsigned)(*p++ - '0');
        ++digits;
    }
    KW_RETURN_IF(digits == 0 || *p != '.', KW_E_NOT_FOUND, "no GGUF name for %.200s", hf_name);
    ++p;
    g = kw_gguf_map_suffix(kw_gguf_layer_names, sizeof kw_gguf_layer_names / sizeof kw_gguf_layer_names[0], p);
    if (!g && arch == KW_ARCH_GEMMA3)
        g = kw_gguf_map_suffix(kw_gguf_gemma3_names, sizeof kw_gguf_gemma3_names / sizeof kw_gguf_gemma3_names[0], p);
    else if (!g)
        g = kw_gguf_map_suffix(kw_gguf_prenorm_names, sizeof kw_gguf_prenorm_names / sizeof kw_gguf_prenorm_names[0],
                               p);
    KW_RETURN_IF(!g, KW_E_NOT_FOUND, "no GGUF name for %.200s", hf_name);
    KW_RETURN_IF((size_t)snprintf(out, cap, "blk.%u.%s", layer, g) >= cap, KW_E_BUFFER_TOO_SMALL,
                 "tensor name too long");
    return 0;
}

static const char *kw_gguf_map_hf(const kw_gguf_name_map *t, size_t n, const char *gguf) {
    for (size_t i = 0; i < n; ++i)
        if (strcmp(t[i].gguf, gguf) == 0) return t[i].hf;
    return NULL;
}

int kw_gguf_model_hf_name(enum kw_arch arch, const char *gguf_name, char *out, size_t cap) {
    KW_RETURN_IF(!gguf_name || !out || cap == 0, KW_E_INVALID_ARG, "kw_gguf_model_hf_name: NULL argument");
    const char *h = strcmp(gguf_name, "token_embd.weight") == 0    ? "model.embed_tokens.weight"
                    : strcmp(gguf_name, "output_norm.weight") == 0 ? "model.norm.weight"
                    : strcmp(gguf_name, "output.weight") == 0      ? "lm_head.weight"
                                                                   : NULL;
    if (h) {
        KW_RETURN_IF((size_t)snprintf(out, cap, "%s", h) >= cap, KW_E_BUFFER_TOO_SMALL, "tensor name too long");
        return 0;
    }
    unsigned layer = 0;
    int used = 0;
    KW_RETURN_IF(sscanf(gguf_name, "blk.%6u.%n", &layer, &used) != 1 || used == 0, KW_E_NOT_FOUND,
                 "no HF name for GGUF tensor %.200s", gguf_name);
    const char *p = gguf_name + used;
    h = kw_gguf_map_hf(kw_gguf_layer_names, sizeof kw_gguf_layer_names / sizeof kw_gguf_layer_names[0], p);
    if (!h && arch == KW_ARCH_GEMMA3)
        h = kw_gguf_map_hf(kw_gguf_gemma3_names, sizeof kw_gguf_gemma3_names / sizeof kw_gguf_gemma3_names[0], p);
    else if (!h)
        h = kw_gguf_map_hf(kw_gguf_prenorm_names, sizeof kw_gguf_prenorm_names / sizeof kw_gguf_prenorm_names[0], p);
    KW_RETURN_IF(!h, KW_E_NOT_FOUND, "no HF name for GGUF tensor %.200s", gguf_name);
    KW_RETURN_IF((size_t)snprintf(out, cap, "model.layers.%u.%s", layer, h) >= cap, KW_E_BUFFER_TOO_SMALL,
                 "tensor name too long");
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Reading

/* The HF row (or, for a 1-D bias, element) that GGUF row r of a permuted q/k tensor holds: within each head of
 * hd rows, GGUF row 2j + i is HF row i * hd/2 + j. */
static int64_t kw_gguf_unpermute(int64_t r, int64_t hd) {
    const int64_t h = r / hd, rr = r % hd;
    return h * hd + (rr % 2) * (hd / 2) + rr / 2;
}

/* Whether GGUF tensor t, read as HF tensor hf_name, has llama.cpp's q/k row permutation to undo; if so *hd is the
 * head size in units (rows of a weight, values of a bias). */
static int kw_gguf_permuted(const kw_gguf_tensor *t, const kw_model_config *cfg, const char *hf_name, int *permute,
                            int64_t *hd) {
    const int q = strstr(hf_name, ".self_attn.q_proj.") != NULL, k = strstr(hf_name, ".self_attn.k_proj.") != NULL;
    *permute = cfg->arch == KW_ARCH_LLAMA && (q || k);
    *hd = 0;
    if (!*permute) return 0;
    int64_t nelem = 1;
    for (int32_t d = 0; d < t->n_dims; ++d)
        nelem *= t->ne[d];
    const int64_t units = t->n_dims == 1 ? t->ne[0] : nelem / t->ne[0], heads = q ? cfg->n_heads : cfg->n_kv_heads;
    KW_RETURN_IF(heads <= 0 || units % (2 * heads) != 0, KW_E_MODEL_SHAPE,
                 "GGUF tensor %s: %lld rows do not split into %lld heads of an even size", t->name, (long long)units,
                 (long long)heads);
    *hd = units / heads;
    return 0;
}

/* Grows *p (elements of size es, *cap of them) to at least n. */
static int kw_gguf_grow(void **p, size_t *cap, size_t n, size_t es) {
    if (n <= *cap) return 0;
    size_t bytes = 0;
    KW_RETURN_IF(kw_size_mul(n, es, &bytes) < 0, KW_E_OVERFLOW, "tensor too large");
    void *q = realloc(*p, bytes);
    KW_RETURN_IF(!q, KW_E_NOMEM, "out of memory for %zu bytes", bytes);
    *p = q;
    *cap = n;
    return 0;
}

void kw_gguf_codes_buf_free(kw_gguf_codes_buf *buf) {
    if (!buf) return;
    free(buf->codes);
    free(buf->scales);
    free(buf->offsets);
    free(buf->sb_scales);
    free(buf->sb_offsets);
    memset(buf, 0, sizeof *buf);
}

int kw_gguf_codes_buf_reserve(kw_gguf_codes_buf *buf, size_t n_codes, size_t n_scales, size_t n_offsets) {
    void *codes = buf->codes, *scales = buf->scales, *offsets = buf->offsets;
    KW_FORWARD(kw_gguf_grow(&codes, &buf->codes_cap, n_codes, 1));
    buf->codes = codes;
    KW_FORWARD(kw_gguf_grow(&scales, &buf->scales_cap, n_scales, sizeof(float)));
    buf->scales = scales;
    KW_FORWARD(kw_gguf_grow(&offsets, &buf->offsets_cap, n_offsets, sizeof(float)));
    buf->offsets = offsets;
    return 0;
}

int kw_gguf_model_read_codes(const kw_gguf_tensor *t, const kw_model_config *cfg, const char *hf_name,
                             kw_gguf_codes_buf *buf, kw_quant_rows *out) {
    KW_RETURN_IF(!t || !cfg || !hf_name || !buf || !out, KW_E_INVALID_ARG, "kw_gguf_model_read_codes: NULL argument");
    const enum kw_layout layout = kw_ggml_quant_layout(t->type);
    kw_quant_layout ql;
    KW_RETURN_IF(!kw_layout_quant(layout, &ql), KW_E_MODEL_DTYPE, "GGUF tensor %s is %s, which is not kept quantized",
                 t->name, kw_ggml_type_name(t->type));
    KW_RETURN_IF(t->n_dims != 2, KW_E_MODEL_SHAPE, "GGUF tensor %s has %d dimensions; a quantized weight has 2",
                 t->name, (int)t->n_dims);
    const int64_t cols = t->ne[0], rows = t->ne[1];
    size_t row_bytes = 0;
    KW_FORWARD(kw_ggml_row_bytes(t->type, cols, &row_bytes));
    KW_RETURN_IF(cols % ql.group != 0, KW_E_MODEL_SHAPE, "GGUF tensor %s: %lld columns are not whole groups of %d",
                 t->name, (long long)cols, (int)ql.group);
    int permute = 0;
    int64_t hd = 0;
    KW_FORWARD(kw_gguf_permuted(t, cfg, hf_name, &permute, &hd));
    const size_t n = (size_t)rows * (size_t)cols, groups = n / (size_t)ql.group; /* bounded at open */
    KW_FORWARD(kw_gguf_codes_buf_reserve(buf, n, groups, ql.has_offset ? groups : 0));
    const int64_t row_groups = cols / ql.group;
    const enum kw_layout sb_layout = kw_ggml_superblock_layout(t->type);
    const int sb = sb_layout != KW_LAYOUT_ROWS && cols % KW_QUANT_SUPERBLOCK == 0;
    const int64_t row_sbs = cols / KW_QUANT_SUPERBLOCK;
    if (sb) {
        void *d = buf->sb_scales, *m = buf->sb_offsets;
        KW_FORWARD(kw_gguf_grow(&d, &buf->sb_caps[0], n / KW_QUANT_SUPERBLOCK, sizeof(float)));
        buf->sb_scales = d;
        KW_FORWARD(kw_gguf_grow(&m, &buf->sb_caps[1], ql.has_offset ? n / KW_QUANT_SUPERBLOCK : 0, sizeof(float)));
        buf->sb_offsets = m;
    }
    for (int64_t r = 0; r < rows; ++r) {
        const int64_t to = permute ? kw_gguf_unpermute(r, hd) : r;
        const uint8_t *src = (const uint8_t *)t->data + (size_t)r * row_bytes;
        KW_FORWARD(kw_ggml_codes_row(t->type, src, cols, buf->codes + to * cols, buf->scales + to * row_groups,
                                     ql.has_offset ? buf->offsets + to * row_groups : NULL));
        if (sb)
            KW_FORWARD(kw_ggml_superblock_row(t->type, src, cols, buf->sb_scales + to * row_sbs,
                                              ql.has_offset ? buf->sb_offsets + to * row_sbs : NULL));
    }
    *out = (kw_quant_rows){.layout = layout,
                           .n = rows,
                           .k = cols,
                           .codes = buf->codes,
                           .scales = buf->scales,
                           .offsets = ql.has_offset ? buf->offsets : NULL,
                           .sb_scales = sb ? buf->sb_scales : NULL,
                           .sb_offsets = sb && ql.has_offset ? buf->sb_offsets : NULL};
    return 0;
}

int kw_gguf_model_read(const kw_gguf_tensor *t, const kw_model_config *cfg, const char *hf_name, enum kw_dtype dtype,
                       void **buf, size_t *cap, int32_t *ndim, int64_t *shape, size_t *nbytes) {
    KW_RETURN_IF(!t || !cfg || !hf_name || !buf || !cap || !ndim || !shape || !nbytes, KW_E_INVALID_ARG,
                 "kw_gguf_model_read: NULL argument");
    KW_RETURN_IF(dtype != KW_DTYPE_F32 && dtype != KW_DTYPE_BF16, KW_E_INVALID_ARG,
                 "GGUF tensors are dequantized to f32 or bf16, not %s", kw_dtype_name(dtype));
    kw_ggml_type_info info;
    KW_FORWARD(kw_ggml_type_info_get(t->type, &info));
    KW_RETURN_IF(!info.dequantizable, KW_E_MODEL_DTYPE, "GGUF tensor %s is %s, which kvwire cannot dequantize", t->name,
                 info.name);
    int64_t nelem = 1;
    for (int32_t d = 0; d < t->n_dims; ++d)
        nelem *= t->ne[d]; /* bounded at open */
    size_t need = 0;
    KW_RETURN_IF(kw_size_mul((size_t)nelem, sizeof(float), &need) < 0, KW_E_OVERFLOW, "tensor %s too large", t->name);
    if (need > *cap) {
        void *p = realloc(*buf, need);
        KW_RETURN_IF(!p, KW_E_NOMEM, "out of memory for %zu bytes of %s", need, t->name);
        *buf = p;
        *cap = need;
    }
    float *y = *buf;
    const int64_t cols = t->ne[0], rows = nelem / cols;
    size_t row_bytes = 0;
    KW_FORWARD(kw_ggml_row_bytes(t->type, cols, &row_bytes));
    const uint8_t *src = t->data;

    int permute = 0;
    int64_t hd = 0;
    KW_FORWARD(kw_gguf_permuted(t, cfg, hf_name, &permute, &hd));
    if (!permute) {
        for (int64_t r = 0; r < rows; ++r)
            KW_FORWARD(kw_dequant_row(t->type, src + (size_t)r * row_bytes, cols, KW_DTYPE_F32, y + r * cols));
    } else {
        /* Weights (rows = heads * D, cols = hidden): whole rows move. A bias (one row of heads * D values): each
         * value moves. */
        if (t->n_dims == 1) {
            float *tmp = malloc((size_t)cols * sizeof *tmp);
            KW_RETURN_IF(!tmp, KW_E_NOMEM, "out of memory");
            const int rc = kw_dequant_row(t->type, src, cols, KW_DTYPE_F32, tmp);
            for (int64_t r = 0; rc == 0 && r < cols; ++r)
                y[kw_gguf_unpermute(r, hd)] = tmp[r];
            free(tmp);
            KW_FORWARD(rc);
        } else {
            for (int64_t r = 0; r < rows; ++r)
                KW_FORWARD(kw_dequant_row(t->type, src + (size_t)r * row_bytes, cols, KW_DTYPE_F32,
                                          y + kw_gguf_unpermute(r, hd) * cols));
        }
    }
    if (dtype == KW_DTYPE_BF16) {
        /* In place, front to back: value i's two bytes go below its four, which were read already. */
        unsigned char *b = *buf;
        for (int64_t i = 0; i < nelem; ++i) {
            float v;
            memcpy(&v, b + (size_t)i * 4, sizeof v);
            const uint16_t h = kw_f32_to_bf16(v);
            memcpy(b + (size_t)i * 2, &h, sizeof h);
        }
    }
    *ndim = t->n_dims;
    for (int32_t d = 0; d < t->n_dims; ++d)
        shape[d] = t->ne[t->n_dims - 1 - d];
    *nbytes = (size_t)nelem * kw_dtype_size(dtype);
    return 0;
}
