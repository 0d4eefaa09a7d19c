/* kw_gguf_model.h: what a GGUF file's metadata and tensor names mean for kvwire's models, following llama.cpp's
 * conventions (its convert_hf_to_gguf.py writes them; its src/llama-model.cpp reads them).
 *
 * Configuration: general.architecture (llama, qwen2, qwen3, gemma3) selects the family and the key prefix;
 * <arch>.block_count, .embedding_length, .feed_forward_length, .attention.head_count, .attention.head_count_kv,
 * .attention.key_length, .attention.layer_norm_rms_epsilon, .rope.freq_base, .rope.dimension_count,
 * .rope.scaling.*, .context_length map to the kw_model_config fields; the special ids come from tokenizer.ggml.*;
 * the vocabulary size and tied embeddings from the tensors (no output.weight: tied), the biases and q/k norms from
 * the tensors present. Anything kvwire's forward cannot honour (yarn scaling, a rope_freqs tensor, a partial rotary
 * dimension) is refused with KW_E_MODEL_CONFIG naming the key.
 *
 * Tensor names: HF "model.layers.N.self_attn.q_proj.weight" is GGUF "blk.N.attn_q.weight", and so on (table in
 * kw_gguf_model.c; Gemma 3 names its four norms differently from the other families).
 *
 * Layout: llama.cpp's converter permutes the rows of llama q and k weights (and biases) within each head, from HF's
 * "rotate half" order to the interleaved pairs its RoPE uses: row i*(D/2) + j of a head becomes row 2j + i
 * (i in {0, 1}, j < D/2; k uses the kv head count). kw_gguf_model_read applies the inverse, so the HF-layout forward
 * computes exactly what HF computes. Gemma 3 norm weights are stored as 1 + w and are used as stored: the config
 * says so (norm_plus_one = 0), where an HF Gemma 3 folder holds w and applies 1 + w.
 */
#ifndef KW_GGUF_MODEL_H
#define KW_GGUF_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kw_backend.h"
#include "model/kw_config.h"
#include "model/kw_gguf.h"

/* Fills *cfg from g's metadata and tensor infos, then kw_config_validate. Errors: KW_E_MODEL_ARCH (an architecture
 * kvwire does not run), KW_E_MODEL_CONFIG (a missing or out-of-range key, named in the detail). */
int kw_gguf_model_config(const kw_gguf *g, kw_model_config *cfg);

/* Writes the GGUF name of HF tensor hf_name for arch into out (cap bytes). KW_E_NOT_FOUND if the name has no GGUF
 * counterpart, KW_E_BUFFER_TOO_SMALL. */
int kw_gguf_model_tensor_name(enum kw_arch arch, const char *hf_name, char *out, size_t cap);

/* The inverse: writes the HF name of GGUF tensor gguf_name for arch into out (cap bytes). Same errors. */
int kw_gguf_model_hf_name(enum kw_arch arch, const char *gguf_name, char *out, size_t cap);

/* Reads the GGUF tensor t as HF tensor hf_name of a model configured by cfg: dequantized to dtype (F32 or BF16) into
 * *buf (grown with realloc as needed; *buf and *cap are the caller's, free(*buf) when done), shape written in HF
 * order (outermost first) to shape[0..*ndim), with the llama q/k un-permutation applied.
 * *nbytes receives the byte count. Errors: KW_E_MODEL_DTYPE, KW_E_MODEL_SHAPE (a q/k tensor whose rows do not
 * divide into the configured heads), KW_E_NOMEM. */
int kw_gguf_model_read(const kw_gguf_tensor *t, const kw_model_config *cfg, const char *hf_name, enum kw_dtype dtype,
                       void **buf, size_t *cap, int32_t *ndim, int64_t *shape, size_t *nbytes);

/* Host buffers that kw_gguf_model_read_codes fills and reuses (grown with realloc); owned by whoever holds the struct,
 * released with kw_gguf_codes_buf_free (NULL and a zeroed struct are no-ops). Zero-initialize before first use. */
typedef struct kw_gguf_codes_buf {
    int8_t *codes;
    float *scales, *offsets;
    float *sb_scales, *sb_offsets;                         /* the super-blocks' d and m (Q4_K, Q6_K) */
    size_t codes_cap, scales_cap, offsets_cap, sb_caps[2]; /* elements */
} kw_gguf_codes_buf;

void kw_gguf_codes_buf_free(kw_gguf_codes_buf *buf);

/* Grows buf (realloc, contents kept) to hold at least n_codes codes, n_scales scales and n_offsets offsets.
 * Errors: KW_E_OVERFLOW, KW_E_NOMEM. */
int kw_gguf_codes_buf_reserve(kw_gguf_codes_buf *buf, size_t n_codes, size_t n_scales, size_t n_offsets);

/* Reads the 2-D GGUF tensor t, of a type kvwire keeps quantized (kw_ggml_quant_layout), as HF matmul weight hf_name:
 * its codes, scales and offsets row by row in HF order (llama q/k rows un-permuted) into *buf, and *out describing
 * them (pointing into buf: valid until the next read into buf), ready for kw_tensor_pack_quantized. For a type with a
 * super-block layout (kw_ggml_superblock_layout) whose rows are whole super-blocks, *out also carries the super-blocks'
 * d and m (sb_scales, sb_offsets), so the caller may pack it in that layout instead. The f32 weight
 * *out stands for is exactly what kw_gguf_model_read would give in f32. Errors: KW_E_MODEL_DTYPE (a type not kept
 * quantized), KW_E_MODEL_SHAPE (not 2-D, a row not whole blocks, q/k rows that do not split into heads), KW_E_NOMEM. */
int kw_gguf_model_read_codes(const kw_gguf_tensor *t, const kw_model_config *cfg, const char *hf_name,
                             kw_gguf_codes_buf *buf, kw_quant_rows *out);

#endif /* KW_GGUF_MODEL_H */
