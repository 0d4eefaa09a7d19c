/* kw_model.h: a decoder-only transformer (Qwen2, Qwen3, Llama, Gemma3) bound to a compute backend, and its forward
 * pass.
 *
 * kw_model_load reads a HF model folder (config.json, generation_config.json, model.safetensors or a sharded index)
 * or a GGUF file (kw_weights.h) and binds every weight to a backend tensor: safetensors weights with
 * kw_tensor_from_host (on the CPU backend norms and biases alias the read-only file mapping, zero copy, bf16/f16/f32
 * as stored), GGUF weights dequantized at load to f32 (or bf16) and uploaded into tensors the model owns, except the
 * matmul weights of the types kept quantized, which the CPU backend holds in its quantized panels (gguf_weights); on
 * the CPU the matmul weights (and a tied embedding table) are then packed once into the CPU's panel layout
 * (kw_tensor_pack_weight: same dtype and size, one sequential stream per panel; their file pages are then released);
 * a device backend uploads them once. Activations are f32. Results do not depend on how the tokens are split into
 * calls or chunks, the thread count or the CPU's ISA (bit for bit). The forward pass runs a range of tokens, appends
 * their K/V to a kw_kvcache and optionally returns logits or greedy ids. All compute goes through kernels/kw_backend.h,
 * so the same code drives every backend.
 *
 * Not here: tokenization (kw_tokenizer.h), the generation loop (kw_generate.h), sampling other than greedy.
 * A kw_model is used by one thread at a time (it owns scratch activations); weights are read-only, and kw_model_fork
 * gives other threads their own scratch over the same weights.
 */
#ifndef KW_MODEL_H
#define KW_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kw_backend.h"
#include "model/kw_config.h"
#include "model/kw_kvcache.h"
#include "model/kw_weights.h"

typedef struct kw_model kw_model; /* opaque */

/* What a GGUF file's quantized matmul weights become at load. */
enum kw_gguf_weights {
    /* KW_GGUF_WEIGHTS_QUANTIZED when weights.gguf_dtype is f32 (the same logits, fewer bytes), else DEQUANTIZED */
    KW_GGUF_WEIGHTS_DEFAULT = 0,
    KW_GGUF_WEIGHTS_QUANTIZED = 1,   /* kept quantized where the backend has the layout, else dequantized */
    KW_GGUF_WEIGHTS_DEQUANTIZED = 2, /* dequantized to weights.gguf_dtype */
    /* kept quantized as QUANTIZED, and the weights with 4-bit codes and offsets (Q4_K, Q4_1), 8-bit codes per 16
     * (Q6_K) or 8-bit codes per 32 with f16 scales (Q8_0, Q5_0: QPANELS_S8_X8, 1.0625 bytes per weight) run with int8
     * activations where the backend has those layouts (kernels/kw_backend.h, QPANELS_U4_X8 and S8_G16_X8, or U4_SB_X8
     * and S6_G16_SB_X8 where K is whole 256-value super-blocks: the CPU; S6 is the 6-bit form, which decodes faster and
     * prefills 8-16% slower than S8_G16_SB_X8 on its matmuls, docs/BENCHMARKS.md), the way llama.cpp runs them: fewer
     * instructions per weight, a result within the activation rounding of the f32 weights' (not their bits), still the
     * same on every ISA and batch */
    KW_GGUF_WEIGHTS_QUANTIZED_INT8 = 3,
};

typedef struct kw_model_options {
    int32_t max_batch;          /* tokens per forward chunk; scratch activations are sized for it once. 0: 256 */
    kw_weights_options weights; /* GGUF files: the dtype weights are dequantized to (zero: f32) */
    /* GGUF files: KW_GGUF_WEIGHTS_QUANTIZED (the default with f32 weights) keeps the matmul weights and the embedding
     * table of the types kvwire keeps quantized (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K: model/kw_dequant.h) in
     * the backend's quantized panels (kernels/kw_backend.h; the CPU and CUDA backends both have them, a backend without
     * them gets those weights dequantized as before). The logits are the same bits as with f32 weights
     * (weights.gguf_dtype F32) on the same backend; 0.75-1.25 bytes are read per weight instead of 4. Other tensors
     * (norms, biases, F16/F32/Q2_K/Q3_K weights) are dequantized to weights.gguf_dtype. */
    enum kw_gguf_weights gguf_weights;
    /* 1: the bf16 matmul weights (a tied embedding table too: get_rows reads its exact values) run with bf16
     * activations where the backend has that layout (KW_LAYOUT_PANELS_BF16_PAIRS: the CPU), the way llama.cpp runs
     * BF16 weights with AVX-512 BF16: x rounded to bf16, pair products summed in f32 (vdpbf16ps). Not the exact
     * path's logits (within the activation rounding of them), still the same on every ISA and batch. 0: exact. */
    int bf16_activations;
} kw_model_options;

/* The weight modes the command lines offer (`kvwire generate --weights`, `kvwire bench model --weights`), NULL-ended:
 * "f32" and "bf16" (a GGUF file's weights dequantized at load to that dtype), "quantized" (the default: the types kept
 * quantized, the f32 weights' logits), "quantized-int8" (KW_GGUF_WEIGHTS_QUANTIZED_INT8: int8 activations, llama.cpp's
 * way), "bf16-act" (bf16 weights, an HF folder's too, with bf16 activations: bf16_activations). */
extern const char *const kw_model_weight_modes[];

/* The indices of kw_model_weight_modes, in its order. */
enum kw_model_weight_mode {
    KW_MODEL_WEIGHT_MODE_F32 = 0,
    KW_MODEL_WEIGHT_MODE_BF16 = 1,
    KW_MODEL_WEIGHT_MODE_QUANTIZED = 2,
    KW_MODEL_WEIGHT_MODE_QUANTIZED_INT8 = 3,
    KW_MODEL_WEIGHT_MODE_BF16_ACT = 4,
};

/* Sets opts' weights.gguf_dtype, gguf_weights and bf16_activations for kw_model_weight_modes[mode] (an enum
 * kw_model_weight_mode; the other fields are left as they are). */
void kw_model_options_set_weight_mode(kw_model_options *opts, int mode);

/* Loads the model in folder dir, or the GGUF file dir, onto backend (borrowed: it must outlive the model). opts may
 * be NULL. *out is owned by the caller (kw_model_free). Gemma 3 multimodal checkpoints
 * (Gemma3ForConditionalGeneration) load their text model and ignore the vision tower. Errors: those of
 * kw_weights_open, KW_E_MODEL_MISSING (a required tensor absent, named in the detail), KW_E_MODEL_SHAPE,
 * KW_E_OP_UNSUPPORTED (the backend cannot use a weight dtype). */
int kw_model_load(kw_backend *backend, const char *dir, const kw_model_options *opts, kw_model **out);

/* Releases the scratch tensors, the weight bindings and the file mappings. NULL is a no-op. */
void kw_model_free(kw_model *model);

/* A second handle on a loaded model's weights for another thread: *out shares every weight binding of parent
 * (borrowed: parent must outlive it, and is never modified through it) and has its own scratch activations, profiling
 * counters and step graphs, on backend: parent's backend or one of its stream contexts (kw_backend_create_stream),
 * NULL meaning parent's. Forks on different stream contexts (or one on the parent's backend) may run kw_model_forward
 * and the rest concurrently, one thread each, with the same results bit for bit as the parent alone; caches for a fork
 * come from kw_model_create_cache on the fork (on its backend). A fork of a fork forks the loaded model. Costs only
 * the scratch (kw_model_options.max_batch rows). Fork while no thread runs parent (its bindings are copied). *out is
 * owned by the caller (kw_model_free, before parent's).
 * Errors: KW_E_INVALID_ARG (a backend of another device or parent), KW_E_NOMEM (also the backend's memory limit). */
int kw_model_fork(const kw_model *parent, kw_backend *backend, kw_model **out);

/* The model a fork runs the weights of, or NULL for a loaded model. */
const kw_model *kw_model_parent(const kw_model *model);

/* The configuration the model was loaded with, owned by the model. */
const kw_model_config *kw_model_get_config(const kw_model *model);

/* The backend the model runs on (borrowed). */
kw_backend *kw_model_backend(const kw_model *model);

/* The dtype of the output projection (lm_head), which decides the default logits rounding (bf16 models produce bf16
 * logits in HF). */
enum kw_dtype kw_model_logits_weight_dtype(const kw_model *model);

/* Bytes of weights one decode step reads: every layer, the final norm and lm_head (the embedding table counts only if
 * it is the tied lm_head). The numerator of the memory-bandwidth bound. */
size_t kw_model_weight_bytes_per_token(const kw_model *model);

/* The memory those bytes are in: *n spans (each a bound weight: data as the backend holds it, on the CPU backend host
 * memory the kernels stream; bytes in its layout), in the order they were bound, summing to
 * kw_model_weight_bytes_per_token. Borrowed from the model (a fork: from its parent). `kvwire bench model` reads them
 * for the bandwidth bound, so that the bound streams the very pages decode streams. */
typedef struct kw_model_span {
    const void *data;
    size_t bytes;
} kw_model_span;
const kw_model_span *kw_model_weight_spans(const kw_model *model, size_t *n);

/* Creates an empty KV cache shaped for this model (layers, kv heads, head_dim, each layer's attention window) on the
 * model's backend. capacity is in positions; dtype KW_DTYPE_BF16 or KW_DTYPE_F32. *out is owned by the caller
 * (kw_kvcache_free). */
int kw_model_create_cache(const kw_model *model, int64_t capacity, enum kw_dtype dtype, kw_kvcache **out);

/* Like kw_model_create_cache, with a quantized cache (kw_kvcache_create_quantized: codec KW_KVQ_INT8, KW_KVQ_INT6 or
 * KW_KVQ_INT4, pages of page_tokens rows). *out is owned by the caller. */
int kw_model_create_cache_quantized(const kw_model *model, int64_t capacity, enum kw_kvq_codec codec,
                                    int32_t page_tokens, kw_kvcache **out);

/* Like kw_model_create_cache, with a codec per layer (kw_kvcache_create_mixed: layer_codecs has the model's n_layers
 * entries, 0 for a bf16 layer; borrowed for the call). *out is owned by the caller. */
int kw_model_create_cache_mixed(const kw_model *model, int64_t capacity, const enum kw_kvq_codec *layer_codecs,
                                int32_t page_tokens, kw_kvcache **out);

/* kw_model_create_cache_mixed with every layer of codec (0: bf16) except those layers names
 * (kw_kvcache_parse_layer_codecs: "L:codec,...", -1 the last layer; NULL: none). KW_E_INVALID_ARG, saying which entry,
 * for a bad layers string. *out is owned by the caller. */
int kw_model_create_cache_layers(const kw_model *model, int64_t capacity, enum kw_kvq_codec codec, const char *layers,
                                 int32_t page_tokens, kw_kvcache **out);

enum kw_logits_mode {
    KW_LOGITS_NONE = 0, /* K/V only (prefill whose logits nobody reads: C2C receiver and sharer prefill) */
    KW_LOGITS_LAST = 1, /* the last token's row */
    KW_LOGITS_ALL = 2,  /* one row per token */
};

/* Called by kw_model_forward after each layer of each chunk when kw_forward_args.on_queries is set: q holds that
 * layer's queries of the chunk's n tokens at cache rows [row0, row0 + n), (n, n_heads, head_dim) f32 as the attention
 * took them (after the q-norm and RoPE), in host memory borrowed for the call. For measurements (kvwire kvstats'
 * attention-ranked token rules): it costs a download and a synchronize per layer. A negative return stops the forward
 * with that status. */
typedef int (*kw_model_query_fn)(void *user, int32_t layer, int64_t row0, int64_t n, const float *q);

/* One forward call. The tokens are appended to the cache at rows [length, length + n). */
typedef struct kw_forward_args {
    const int32_t *ids;           /* n token ids in [0, vocab), borrowed */
    int64_t n;                    /* >= 1 */
    const int32_t *positions;     /* n RoPE positions >= 0, borrowed; NULL: position = cache row */
    enum kw_logits_mode mode;     /* which rows produce logits */
    float *logits;                /* NULL, or caller-owned (rows, vocab) f32 receiving the logits rows */
    int32_t *argmax;              /* NULL, or caller-owned (rows) receiving each row's argmax (lowest id on ties) */
    int argmax_flags;             /* KW_ARGMAX_PLAIN or KW_ARGMAX_ROUND_BF16 */
    kw_model_query_fn on_queries; /* NULL (the results do not depend on it), or each layer's queries (above) */
    void *user;                   /* on_queries' first argument */
} kw_forward_args;

/* Runs the tokens through every layer in chunks of at most max_batch, appending their K/V to cache (created by
 * kw_model_create_cache for this model: its geometry and layer windows must be the model's, else KW_E_SHAPE), and fills
 * logits/argmax for the rows of args->mode. Returns after the backend has finished (results are on the host). On
 * failure the cache is truncated back to its length before the call. Errors: KW_E_TOKEN_ID, KW_E_MODEL_CONTEXT (cache
 * full), KW_E_INVALID_ARG, backend errors. */
int kw_model_forward(kw_model *model, kw_kvcache *cache, const kw_forward_args *args);

/* Called by kw_model_forward_layers once a layer's K/V rows [row0, row0 + n) are in the cache (the backend has
 * finished them). A negative return stops the forward with that status. */
typedef int (*kw_model_layer_fn)(void *user, int32_t layer, int64_t row0, int64_t n);

/* Prefill without logits, layer by layer: every token through layer 0 (in chunks of max_batch), then through layer 1,
 * ..., calling on_layer (may be NULL) after each layer, so that a layer's K/V can be used (e.g. streamed to a
 * receiver) while the next ones run. The cache rows are bit-identical to kw_model_forward's (every op computes a row
 * independently of the others). positions NULL: position = cache row. Holds the hidden states of all n tokens
 * (n x hidden f32) during the call. On failure the cache is truncated back. */
int kw_model_forward_layers(kw_model *model, kw_kvcache *cache, const int32_t *ids, int64_t n, const int32_t *positions,
                            kw_model_layer_fn on_layer, void *user);

/* Prefill without logits: K/V of ids[0..n) at the next cache rows. */
int kw_model_prefill(kw_model *model, kw_kvcache *cache, const int32_t *ids, int64_t n);

/* One decode step for token id at the next cache row: logits (vocab, caller-owned, or NULL) and/or next (the argmax
 * with argmax_flags, or NULL). */
int kw_model_decode_step(kw_model *model, kw_kvcache *cache, int32_t id, float *logits, int32_t *next,
                         int argmax_flags);

/* Decode steps (forwards of one token) run through a step graph where the backend has them (kw_backend.h: the CUDA
 * backend unless KW_CUDA_GRAPHS=0; never while profiling), recorded once per cache and replayed at each step, with
 * the same results as running the ops one by one. Counts, since the model was loaded: graphs recorded and steps
 * that ran as a graph launch. Either pointer may be NULL. */
void kw_model_graph_counts(const kw_model *model, int64_t *recordings, int64_t *launches);

/* Per-op profiling: when on, every op is followed by a synchronize and its wall time is added to a per-op total
 * (slower; for benchmarks). kw_model_profile copies the totals (ms and call counts, indexed by enum kw_op; arrays of
 * KW_OP_COUNT entries, caller-owned) and, if reset, zeroes them. */
void kw_model_set_profiling(kw_model *model, int on);
void kw_model_profile(kw_model *model, double *ms, int64_t *calls, int reset);

/* 1 (the default): a layer's q, k, v and its gate, up run as one kw_op_matmul_shared each; 0: as separate
 * kw_op_matmul calls (the same bits; `kvwire bench model --interleave-shared` times both). */
void kw_model_set_shared_matmuls(kw_model *model, int on);

#endif /* KW_MODEL_H */
