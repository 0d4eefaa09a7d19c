/* kw_st_quant.h: quantized matrices in safetensors files, the layout `kvwire quantize --out X.safetensors` writes and
 * kvwire loads back (docs/FORMAT.md, "Appendix: quantized safetensors checkpoints", is the reference for
 * other tools).
 *
 * A quantized matrix NAME (an HF name such as "model.layers.0.mlp.up_proj.weight", N rows of K inputs) is three
 * tensors and one metadata entry:
 *   NAME         the codes, row-major: I8 [N, K] (one code per value), or U8 [N, K/2] (two 4-bit codes per byte,
 *                value 2j in the low nibble of byte j, value 2j + 1 in the high nibble);
 *   NAME_scale   one scale per group of G consecutive inputs of a row: [N, K/G], F16 or F32 (any float dtype is read);
 *   NAME_min     only for layouts with a minimum: [N, K/G], F32;
 *   __metadata__ "quantization.NAME" = the layout, and once per file "quantization" = "kvwire-v1".
 * value(n, k) = fl(code * scale) in f32, or fl(fl(code * scale) - min) with a minimum (two f32 roundings, no fused
 * multiply-add): exactly the f32 value ggml's dequantizer gives for the GGUF block the matrix came from.
 * The layouts (and the GGUF types kvwire quantize writes in them):
 *   "int8/g32"      I8 codes, G 32, F16 scale: Q8_0 (codes -127..127, scale d) and Q5_0 (codes -16..15, scale d);
 *   "uint4/g32/min" U8 nibbles 0..15, G 32, F32 scale d*sc and F32 min dmin*m: Q4_K (f16 times 6-bit integers,
 *                   exact in f32);
 *   "int8/g16"      I8 codes -32..31, G 16, F32 scale d*sc: Q6_K.
 * Tensors not quantized (norms, 1-D tensors, rows that are not whole blocks) are plain F32 / F16 / BF16 tensors.
 */
#ifndef KW_ST_QUANT_H
#define KW_ST_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kw_backend.h"
#include "model/kw_gguf_model.h"
#include "model/kw_safetensors.h"

#define KW_STQ_VERSION "kvwire-v1" /* the value of __metadata__["quantization"] */
#define KW_STQ_KEY     "quantization"
#define KW_STQ_PREFIX  "quantization." /* + NAME: the layout of matrix NAME; + "scheme": what kvwire quantize ran */

/* One matrix in the layout, as the writer hands it to kw_safetensors_write: every buffer malloc'ed and owned by the
 * struct (kw_stq_matrix_free). */
typedef struct kw_stq_matrix {
    const char *layout;        /* "int8/g32", ... (static) */
    enum kw_dtype codes_dtype; /* KW_DTYPE_I8 or KW_DTYPE_U8 */
    int64_t codes_shape[2];    /* [N, K] or [N, K/2] */
    void *codes;
    enum kw_dtype scale_dtype; /* KW_DTYPE_F16 or KW_DTYPE_F32; mins are F32 */
    int64_t groups_shape[2];   /* [N, K/G] */
    void *scales;
    void *mins; /* NULL for a layout without minimum */
} kw_stq_matrix;

/* Splits rows x cols values held as ggml blocks of `type` (rows * kw_ggml_row_bytes(type, cols) bytes at blocks,
 * borrowed) into *out. Errors: KW_E_MODEL_DTYPE (a type with no layout here: only those kept quantized in
 * int8/g32, uint4/g32/min or int8/g16), KW_E_MODEL_SHAPE, KW_E_OVERFLOW, KW_E_NOMEM. */
int kw_stq_from_blocks(uint32_t type, const void *blocks, int64_t rows, int64_t cols, kw_stq_matrix *out);

/* Frees the buffers of m and zeroes it. NULL is a no-op. */
void kw_stq_matrix_free(kw_stq_matrix *m);

/* The quantized matrices of an open safetensors checkpoint, validated. */
typedef struct kw_stq_index kw_stq_index; /* opaque */

/* Reads the quantization metadata of st (borrowed: it must outlive the index) and checks every matrix it names: the
 * layout is known, the codes, scales and minimums exist with the dtypes and shapes above. A file without the
 * "quantization" key gives an empty index. *out is owned by the caller (kw_stq_index_free). Errors:
 * KW_E_MODEL_FORMAT (an unknown version or layout, a missing tensor, a wrong dtype or shape; the detail names the
 * tensor), KW_E_NOMEM. */
int kw_stq_index_open(const kw_safetensors *st, kw_stq_index **out);

/* NULL is a no-op. */
void kw_stq_index_free(kw_stq_index *ix);

/* Number of quantized matrices in ix (0 for a plain checkpoint). */
size_t kw_stq_count(const kw_stq_index *ix);

/* What tensor name is in ix: 1 a quantized matrix (its codes; shape[0..1] = {N, K}), 2 the _scale or _min tensor of
 * one, 0 anything else (shape untouched). */
int kw_stq_role(const kw_stq_index *ix, const char *name, int64_t *shape);

/* If name is a quantized matrix of ix: 1 and *out describing it (codes, scales and offsets = -min, in row order),
 * pointing into the mapping where the file's bytes already are that (I8 codes, F32 scales) and into buf otherwise
 * (valid until the next read into buf). 0 if name is not quantized in ix. Errors: KW_E_NOMEM. */
int kw_stq_read(const kw_stq_index *ix, const char *name, kw_gguf_codes_buf *buf, kw_quant_rows *out);

/* If name is a quantized matrix of ix: 1, its values dequantized as above into *buf (grown with realloc to *cap
 * bytes; owned by the caller) as out_dtype (KW_DTYPE_F32, or KW_DTYPE_BF16: the f32 value rounded to nearest even),
 * *nbytes bytes, and shape[0..1] = {N, K}. 0 if name is not quantized in ix. Errors: KW_E_INVALID_ARG (another
 * dtype), KW_E_NOMEM. */
int kw_stq_dequantize(const kw_stq_index *ix, const char *name, enum kw_dtype out_dtype, void **buf, size_t *cap,
                      size_t *nbytes, int64_t *shape);

#endif /* KW_ST_QUANT_H */
