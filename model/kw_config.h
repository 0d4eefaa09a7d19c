/* kw_config.h: the HF model configuration kvwire understands, read from a model folder's config.json and
 * generation_config.json. One struct for every supported architecture; fields a family does not use keep the
 * neutral values documented below (all zero, so a zeroed struct plus the shape fields describes a Qwen/Llama-style
 * model). */
#ifndef KW_CONFIG_H
#define KW_CONFIG_H

#include <stdint.h>

#include "kernels/kw_backend.h"

enum kw_arch {
    KW_ARCH_QWEN2 = 0,  /* Qwen2ForCausalLM: q/k/v bias, no q/k norm */
    KW_ARCH_QWEN3 = 1,  /* Qwen3ForCausalLM: q/k RMSNorm per head, explicit head_dim */
    KW_ARCH_LLAMA = 2,  /* LlamaForCausalLM: optional llama3 rope scaling, optional attention/mlp bias */
    KW_ARCH_GEMMA3 = 3, /* Gemma3ForCausalLM (gemma3_text): (1 + w) RMSNorm before and after attention and MLP, q/k
                           norm, tanh-GELU GLU, embeddings scaled by sqrt(hidden), interleaved sliding-window layers */
};

#define KW_CONFIG_MAX_EOS    8
#define KW_CONFIG_MAX_LAYERS 1024

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

    /* Gemma3 (zero for the other families). The structural differences (four (1 + w) norms per layer, scaled
     * embeddings) follow from arch == KW_ARCH_GEMMA3; the numbers are here. */
    enum kw_act act;        /* MLP activation: KW_ACT_SILU (0) or KW_ACT_GELU_TANH (gelu_pytorch_tanh) */
    int32_t sliding_window; /* window of the sliding layers: a query at p sees positions > p - window */
    uint8_t layer_sliding[KW_CONFIG_MAX_LAYERS]; /* 1 for a sliding-window layer, 0 for global attention */
    kw_rope_params rope_local;                   /* RoPE of the sliding layers (rope_local_base_freq, no scaling) */
    double query_pre_attn_scalar; /* attention scale is query_pre_attn_scalar^-0.5; 0: head_dim (the others) */
    double final_logit_softcap;   /* final_logit_softcapping: logits = cap * tanh(logits / cap); 0: none */
    int32_t norm_plus_one; /* Gemma3: 1 = RMSNorm weights are HF's w, applied as 1 + w; 0 = they already hold 1 + w
                              (llama.cpp's GGUF converter adds the 1), applied as they are */
} kw_model_config;

/* Reads dir/config.json and, if present, dir/generation_config.json. Unknown architectures give KW_E_MODEL_ARCH;
 * missing or out-of-range fields KW_E_MODEL_CONFIG with the field name in kw_error_detail(). For Qwen2, Qwen3 and
 * Llama, num_hidden_layers, hidden_size, num_attention_heads, intermediate_size and vocab_size are required; Gemma3
 * takes every absent field from Gemma3TextConfig's defaults, as HF does (the text_config of the multimodal Gemma 3
 * checkpoints leaves most of them out). Absent optional fields take the transformers 4.52 defaults of the family's
 * config class (e.g. Qwen3 head_dim 128, rope_theta 10000, tie_word_embeddings false). A Gemma3 config is either
 * model_type "gemma3_text" or a "gemma3" config whose "text_config" object holds it. Gemma3's sliding layers come
 * from "layer_types" (newer configs) or from the pattern "sliding_window_pattern" / "_sliding_window_pattern"
 * (default 6: every sixth layer is global). Special ids come from generation_config.json, falling back to
 * config.json. */
int kw_config_load(const char *dir, kw_model_config *cfg);

/* Parses config.json text (and optional generation_config.json text, NULL if absent). */
int kw_config_parse(const char *config_json, const char *generation_json, kw_model_config *cfg);

/* Checks the ranges and relations of a filled config (the checks kw_config_parse ends with; the model generator and
 * the GGUF mapping use it too): supported arch, positive dims, n_heads % n_kv_heads == 0, head_dim even, rotary_dim
 * == head_dim, special ids inside the vocabulary, and for Gemma3 the window, the local RoPE, the attention scalar
 * and the softcap. KW_E_MODEL_CONFIG (or KW_E_MODEL_ARCH) naming the field. */
int kw_config_validate(const kw_model_config *cfg);

/* "qwen2", "qwen3", "llama", "gemma3"; parse returns KW_E_INVALID_ARG for other names. */
const char *kw_arch_name(enum kw_arch arch);
int kw_arch_parse(const char *name, enum kw_arch *out);

/* 1 if id is one of cfg's EOS ids. */
int kw_config_is_eos(const kw_model_config *cfg, int32_t id);

/* 1 if a prompt tokenized as raw text (no chat template) starts with cfg's BOS, as HF's tokenizer(text) or
 * llama.cpp give it: a GGUF file's tokenizer.ggml.add_bos_token decides; HF folders: Llama-3's and Gemma 3's
 * tokenizers add it (add_special_tokens), Qwen's has none. The chat templates write BOS themselves. */
int kw_config_raw_prompt_bos(const kw_model_config *cfg);
/* Prepends cfg's BOS to the raw-text prompt *ids (n ids, malloc'ed, owned by the caller; reallocated) when
 * kw_config_raw_prompt_bos says so. KW_E_NOMEM leaves *ids and *n as they were. */
int kw_config_prepend_bos(const kw_model_config *cfg, int32_t **ids, size_t *n);

/* The window layer l attends over (0: global attention), from sliding_window and layer_sliding. */
int64_t kw_config_layer_window(const kw_model_config *cfg, int32_t layer);

/* The RoPE parameters of layer l (Gemma 3's sliding layers have a base of their own), or NULL for a bad layer. */
const kw_rope_params *kw_config_layer_rope(const kw_model_config *cfg, int32_t layer);

/* Rotates rows (n, n_kv_heads, head_dim) f32 of layer l's keys in place by RoPE at positions[i] (inverse: by
 * -positions[i], taking post-RoPE keys back to pre-RoPE ones, as KVWire v1.1's pre-RoPE keys are sent), with the
 * reference arithmetic of kernels/ref (fp32 angles, cos and sin in double). Errors: KW_E_INVALID_ARG (layer, n,
 * a position outside 0..2^31-1), KW_E_NOMEM. */
int kw_config_rope_rows(const kw_model_config *cfg, int32_t layer, const int64_t *positions, int64_t n, int inverse,
                        float *rows);

/* kw_config_rope_rows in two steps for a device: table (n, kw_config_rope_half, 2) f32 gets the {cos, sin} of each
 * position's angles (kernels/ref's kw_ref_rope_table); kw_op_rope_table with it on rows (n, n_kv_heads, head_dim)
 * gives kw_config_rope_rows' bits on any backend. Same errors. kw_config_rope_half: rotary_dim / 2 of layer l (0 for
 * a bad layer). */
int kw_config_rope_table(const kw_model_config *cfg, int32_t layer, const int64_t *positions, int64_t n, int inverse,
                         float *table);
int32_t kw_config_rope_half(const kw_model_config *cfg, int32_t layer);

/* Marks layer l sliding iff (l + 1) % pattern != 0 (HF's sliding_window_pattern: pattern 6 makes every sixth layer
 * global); pattern 1 makes every layer global. KW_E_MODEL_CONFIG for pattern < 1. */
int kw_config_set_sliding_pattern(kw_model_config *cfg, int32_t pattern);

#endif /* KW_CONFIG_H */
