/* kw_quantize.h: f32 values -> ggml block formats (the inverse of kw_dequant.h), and which type each tensor of a
 * model gets under a quantization scheme (kvwire quantize).
 *
 * The block layouts are the ones kw_dequant.c reads (ggml's), and the tests check every quantizer by a round trip
 * through kw_dequant_row. The way a block's scales and codes are chosen is kvwire's own:
 *  - Q8_0 (32 values): d = max|x| / 127, q = round(x / d);
 *  - Q5_0 (32 values): the value of largest magnitude m gives d = m / -16, q = round(x / d) + 16 in 0..31;
 *  - Q4_K (256 values, 8 sub-blocks of 32, value = d*sc*q - dmin*m, q 0..15, sc and m 6-bit): each sub-block's scale
 *    and offset start from its range [min(x, 0), max(x)], then two least-squares refits of (scale, offset) to the
 *    codes; the super-block scales d and dmin map the largest sub-block scale and offset to 63;
 *  - Q6_K (256 values, 16 sub-blocks of 16, value = d*sc*(q - 32), q 0..63, sc int8): each sub-block's value of
 *    largest magnitude m gives its scale m / -32; d maps the largest scale magnitude to 127.
 * Codes are always computed from the stored (fp16-rounded, integer sub-scaled) scales, so they are the best codes
 * for the scales the file holds. Rounding is round-half-away-from-zero (roundf) of exact IEEE f32 operations, without
 * fused multiply-add: the same input gives the same bytes on every machine.
 *
 * Not here: reading or writing files (kw_gguf_writer.h, tools/cmd_quantize.c), importance matrices.
 */
#ifndef KW_QUANTIZE_H
#define KW_QUANTIZE_H

#include <stddef.h>
#include <stdint.h>

/* 1 if kw_quantize_row can produce ggml type `type` (F32, F16, BF16, Q8_0, Q5_0, Q4_K, Q6_K), else 0. */
int kw_quantize_supported(uint32_t type);

/* Quantizes n values of x (a whole number of the type's blocks) into dst, which receives exactly
 * kw_ggml_row_bytes(type, n) bytes. x and dst are caller-owned. Errors: KW_E_MODEL_DTYPE (a type not supported),
 * KW_E_MODEL_SHAPE (n not whole blocks), KW_E_INVALID_ARG (a NULL buffer, a NaN or infinite value). */
int kw_quantize_row(uint32_t type, const float *x, int64_t n, void *dst);

/* The schemes of `kvwire quantize --type`. */
enum kw_quant_scheme {
    KW_QUANT_F32 = 0,
    KW_QUANT_BF16 = 1,
    KW_QUANT_Q8_0 = 2,
    KW_QUANT_Q4_K = 3,   /* every matrix Q4_K */
    KW_QUANT_Q4_K_M = 4, /* llama.cpp's Q4_K_M mix (kw_quant_choose_type) */
};

/* What the type choice needs to know about one tensor (GGUF name and shape, ggml order). */
typedef struct kw_quant_tensor {
    const char *name; /* GGUF name, "blk.3.attn_v.weight" */
    int32_t n_dims;
    int64_t ne0;      /* the contiguous (row) extent */
    int32_t layer;    /* the N of "blk.N.", or -1 */
    int32_t n_layers; /* the model's block count */
    int tied;         /* 1 if the model has no output.weight (token_embd is also the output matrix) */
} kw_quant_tensor;

/* The ggml type a tensor gets under scheme. 1-D tensors, and names not ending in "weight" or ending in
 * "_norm.weight", stay F32. Matrices: F32, BF16 and Q8_0 as the scheme says; Q4_K every matrix Q4_K; Q4_K_M follows
 * llama.cpp's rule for dense models (src/llama-quant.cpp, llama_tensor_get_type): output.weight, and token_embd.weight
 * when the embeddings are tied, Q6_K (Q8_0 if rows are not whole 256-value blocks); attn_v and ffn_down Q6_K in the
 * layers where use_more_bits(layer, n_layers) holds (the first and last eighth, and every third layer between), Q4_K
 * elsewhere; every other matrix Q4_K. Then, as llama.cpp falls back for rows that are not whole blocks: Q4_K -> Q5_0,
 * Q6_K -> Q8_0, and F16 when even 32-value blocks do not fit (for Q8_0 too). */
uint32_t kw_quant_choose_type(enum kw_quant_scheme scheme, const kw_quant_tensor *t);

/* llama.cpp's general.file_type (enum llama_ftype) of a scheme: F32 0, BF16 32, Q8_0 7, Q4_K_M 15; -1 for Q4_K (no
 * llama.cpp file type is "every matrix Q4_K": the key is left out). */
int32_t kw_quant_file_type(enum kw_quant_scheme scheme);

/* What kw_quantize_file did. */
#define KW_QUANT_MAX_TYPES 64
typedef struct kw_quantize_stats {
    int64_t tensors[KW_QUANT_MAX_TYPES]; /* tensors written, per ggml type */
    int64_t vocab_tokens;                /* HF input with vocab_from: tokens in its tokenizer.ggml.tokens, else 0 */
    int64_t embedding_rows;              /* HF input: the model's vocabulary size (embedding rows), else 0 */
} kw_quantize_stats;

/* Reads the model at in (an HF folder, or a GGUF file recognised by its magic) and writes the GGUF file out (replaced
 * atomically; or, when out ends in ".safetensors", a safetensors file in the layout of kw_st_quant.h, in another
 * folder than an HF input's, with the folder's config and tokenizer files copied beside it, or for a GGUF input its
 * configuration written as config.json and generation_config.json) with every tensor
 * converted to the type kw_quant_choose_type gives under scheme (how the metadata and tensors are carried over:
 * kw_quantize_file.c's header). vocab_from (HF input only, may be NULL) is a GGUF file whose tokenizer.* metadata is
 * copied. stats may be NULL. The same input gives the same bytes. Errors: those of the readers (kw_config_load,
 * kw_safetensors_open, kw_gguf_open), KW_E_MODEL_DTYPE (a GGUF tensor kvwire cannot dequantize), KW_E_MODEL_CONFIG (a
 * configuration without a GGUF form), KW_E_NOT_FOUND (an HF tensor with no GGUF name), KW_E_INVALID_ARG (also:
 * safetensors output from a GGUF file, into the input folder, or with vocab_from), KW_E_IO, KW_E_NOMEM. */
int kw_quantize_file(const char *in, const char *out, enum kw_quant_scheme scheme, const char *vocab_from,
                     kw_quantize_stats *stats);

#endif /* KW_QUANTIZE_H */
