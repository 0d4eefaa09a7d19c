/* kw_weights.h: where a model's weights come from, behind one interface: an HF model folder (config.json +
 * safetensors, read zero-copy from the mapping) or a GGUF file (metadata mapped to the same kw_model_config, tensors
 * renamed to HF names and dequantized at load, or read as codes, scales and offsets: kw_weights_get_quantized). The
 * model loader asks for HF tensor names and gets dtype, shape and host bytes either way, so kw_model.c binds weights
 * through one code path.
 *
 * GGUF tensors are converted to what the HF-layout forward expects, exactly as transformers' GGUF loader does:
 * dequantized to f32 (or bf16 on request), shapes reversed to HF order, llama q/k rows un-permuted (llama.cpp's
 * converter interleaves the two rotary halves of every head: kw_gguf_model.h). Gemma 3 norm weights stay as stored
 * (1 + w; the GGUF config sets norm_plus_one = 0).
 *
 * A safetensors checkpoint with quantized matrices (kvwire quantize --out X.safetensors, model/kw_st_quant.h) is read
 * like a GGUF file: kw_weights_get_quantized hands out their codes, kw_weights_get their values dequantized to
 * gguf_dtype (the same bits as the GGUF file the same scheme writes); its other tensors are handed out as stored.
 *
 * Not here: which names a model needs and their shapes (kw_model.c checks them against the config).
 */
#ifndef KW_WEIGHTS_H
#define KW_WEIGHTS_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kw_backend.h"
#include "model/kw_config.h"

#define KW_WEIGHTS_MAX_DIMS 8

typedef struct kw_weights kw_weights; /* opaque */

typedef struct kw_weights_options {
    /* dtype of dequantized GGUF tensors and quantized safetensors matrices: KW_DTYPE_F32 (0, the default) or
     * KW_DTYPE_BF16 */
    enum kw_dtype gguf_dtype;
} kw_weights_options;

/* One tensor, HF name and layout. */
typedef struct kw_weight {
    enum kw_dtype dtype; /* F32, BF16 or F16 */
    int32_t ndim;
    int64_t shape[KW_WEIGHTS_MAX_DIMS]; /* outermost first */
    const void *data;                   /* host bytes, owned by the kw_weights */
    size_t nbytes;
    int transient; /* 1: data is valid only until the next kw_weights_get (a dequantization buffer); 0: until close */
} kw_weight;

enum kw_weights_kind { KW_WEIGHTS_SAFETENSORS = 0, KW_WEIGHTS_GGUF = 1 };

/* Opens path: a GGUF file (recognised by its magic), or an HF model folder (config.json, generation_config.json,
 * safetensors). Reads the configuration. opts may be NULL. *out is owned by the caller (kw_weights_close). Errors:
 * those of kw_config_load / kw_safetensors_open, of kw_gguf_open, and of kw_gguf_model_config. */
int kw_weights_open(const char *path, const kw_weights_options *opts, kw_weights **out);

/* Releases the mappings and buffers. NULL is a no-op. */
void kw_weights_close(kw_weights *w);

enum kw_weights_kind kw_weights_kind_of(const kw_weights *w);

/* The configuration read at open (owned by w). */
const kw_model_config *kw_weights_config(const kw_weights *w);

/* Looks up the tensor called hf_name (an HF checkpoint name, e.g. "model.layers.3.self_attn.q_proj.weight").
 * Returns 1 and fills *out if present, 0 if absent, or a negative status (a GGUF tensor of a type kvwire cannot
 * dequantize: KW_E_MODEL_DTYPE; KW_E_NOMEM). */
int kw_weights_get(kw_weights *w, const char *hf_name, kw_weight *out);

/* Looks up tensor hf_name as a weight kept quantized: returns 1 and fills *out (codes, scales, offsets in HF row order,
 * valid until the next kw_weights_get_quantized on w; owned by w) if it is a 2-D GGUF tensor of a type kvwire keeps
 * quantized (model/kw_dequant.h, kw_ggml_quant_layout), 0 if not (absent, an HF folder, another type: use
 * kw_weights_get), or a negative status (KW_E_MODEL_SHAPE, KW_E_NOMEM). The f32 weight *out stands for is bit for bit
 * what kw_weights_get would hand out in f32. */
int kw_weights_get_quantized(kw_weights *w, const char *hf_name, kw_quant_rows *out);

/* 1 if tensor hf_name is present, 0 if not (nothing is read or dequantized). */
int kw_weights_has(const kw_weights *w, const char *hf_name);

/* Tells w that the bytes of tensor hf_name are no longer read (the model holds a packed copy): a safetensors file's
 * pages go back to the kernel (kw_safetensors_release); GGUF tensors were copied at bind, nothing to do. */
void kw_weights_release(kw_weights *w, const char *hf_name);

/* Binds *wt to a backend tensor t: with kw_tensor_from_host when its bytes live as long as w (zero copy on the CPU
 * backend), else by allocating t on the backend, uploading and synchronizing, so t owns its memory and the transient
 * buffer may be reused. */
int kw_weights_bind(kw_backend *backend, const kw_weight *wt, kw_tensor *t);

#endif /* KW_WEIGHTS_H */
