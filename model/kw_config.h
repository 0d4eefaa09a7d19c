/* kw_config.h: the HF model configuration kvwire understands, read from a model folder's config.json and
 * generation_config.json. One struct for every supported architecture; fields a family does not use keep the
 * neutral values documented below. */
#ifndef KW_CONFIG_H
#define KW_CONFIG_H

#include <stdint.h>

#include "kernels/kw_backend.h"

enum kw_arch {
    KW_ARCH_QWEN2 = 0,  /* Qwen2ForCausalLM: q/k/v bias, no q/k norm */
    KW_ARCH_QWEN3 = 1,  /* Qwen3ForCausalLM: q/k RMSNorm per head, explicit head_dim */
    KW_ARCH_LLAMA = 2,  /* LlamaForCausalLM: optional llama3 rope scaling, optional attention/mlp bias */
    KW_ARCH_GEMMA3 = 3, /* Gemma3ForCausalLM (later issue; rejected by the loader until supported) */
};

#define KW_CONFIG_MAX_EOS 8

typedef struct kw_model_config {
    enum kw_arch arch;
    int32_t n_layers;           /* num_hidden_layers */
    int32_t hidden;             /* hidden_size */
    int32_t n_heads;            /* num_attention_heads */
    int32_t n_kv_heads;         /* num_key_value_heads (defaults to n_heads) */
    int32_t head_dim;           /* explicit head_dim, else hidden / n_heads */
    int32_t intermediate;       /* intermediate_size */
    int32_t vocab;              /* vocab_size (embedding rows) */
    int32_t max_positions;      /* max_position_embeddings */
    float rms_eps;              /* rms_norm_eps */
    int32_t tie_embeddings;     /* tie_word_embeddings: lm_head = embed_tokens */
    int32_t attention_bias;     /* q/k/v (and o for Llama attention_bias) carry biases: Qwen2 always has q/k/v bias */
    int32_t o_bias;             /* o_proj has a bias (Llama attention_bias=true) */
    int32_t mlp_bias;           /* gate/up/down carry biases (Llama mlp_bias) */
    int32_t qk_norm;            /* per-head RMSNorm on q and k before RoPE (Qwen3) */
    kw_rope_params rope;        /* theta and scaling */
    enum kw_dtype weight_dtype; /* torch_dtype in config.json (informational; tensors carry their own dtype) */
    int32_t bos_id;             /* -1 if none */
    int32_t pad_id;             /* -1 if none */
    int32_t n_eos;              /* generation_config eos_token_id (falls back to config.json) */
    int32_t eos_ids[KW_CONFIG_MAX_EOS];
    int32_t add_bos; /* GGUF tokenizer.ggml.add_bos_token (0 or 1); -1 when the model does not say (HF folders) */
} kw_model_config;

/* Reads dir/config.json and, if present, dir/generation_config.json. Unknown architectures (and Gemma3, for now) give
 * KW_E_MODEL_ARCH; missing or out-of-range fields KW_E_MODEL_CONFIG with the field name in kw_error_detail().
 * Required: num_hidden_layers, hidden_size, num_attention_heads, intermediate_size, vocab_size. Absent optional
 * fields take the transformers 4.52 defaults of the family's config class (e.g. Qwen3 head_dim 128, rope_theta
 * 10000, tie_word_embeddings false). Special ids come from generation_config.json, falling back to config.json. */
int kw_config_load(const char *dir, kw_model_config *cfg);

/* Parses config.json text (and optional generation_config.json text, NULL if absent). */
int kw_config_parse(const char *config_json, const char *generation_json, kw_model_config *cfg);

/* Checks the ranges and relations of a filled config (the checks kw_config_parse ends with; the model generator uses
 * it too): supported arch, positive dims, n_heads % n_kv_heads == 0, head_dim even, rotary_dim == head_dim, special
 * ids inside the vocabulary. KW_E_MODEL_CONFIG (or KW_E_MODEL_ARCH) naming the field. */
int kw_config_validate(const kw_model_config *cfg);

/* "qwen2", "qwen3", "llama", "gemma3"; parse returns KW_E_INVALID_ARG for other names. */
const char *kw_arch_name(enum kw_arch arch);
int kw_arch_parse(const char *name, enum kw_arch *out);

/* 1 if id is one of cfg's EOS ids. */
int kw_config_is_eos(const kw_model_config *cfg, int32_t id);

#endif /* KW_CONFIG_H */
