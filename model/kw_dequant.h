/* kw_dequant.h: the ggml tensor types a GGUF file may hold, their block layouts, and dequantization of whole rows of
 * blocks into f32 (or bf16) values.
 *
 * The block layouts and the arithmetic follow ggml's reference dequantizers (dequantize_row_* in ggml-quants.c), which
 * the `gguf` Python package re-implements; every type is checked bit for bit against that package on blocks taken
 * from real files and on random blocks (tests/model/test_dequant.c, fixtures by tools/make_gguf_fixtures.py).
 * Each value is computed as ggml computes it, in f32 with the same order of operations (no fused multiply-add), so
 * the results are the same bits on every machine.
 *
 * Not here: quantization (kvwire only reads GGUF files), the i-quants (IQ*), TQ*, MXFP4 and Q8_K (a type for
 * activations): kw_ggml_type_info reports them as known but not dequantizable.
 */
#ifndef KW_DEQUANT_H
#define KW_DEQUANT_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kw_backend.h"

/* ggml's type numbers (enum ggml_type), as stored in GGUF tensor infos. Numbers 4 and 5 (Q4_2, Q4_3) are retired. */
enum kw_ggml_type {
    KW_GGML_F32 = 0,
    KW_GGML_F16 = 1,
    KW_GGML_Q4_0 = 2,
    KW_GGML_Q4_1 = 3,
    KW_GGML_Q5_0 = 6,
    KW_GGML_Q5_1 = 7,
    KW_GGML_Q8_0 = 8,
    KW_GGML_Q8_1 = 9,
    KW_GGML_Q2_K = 10,
    KW_GGML_Q3_K = 11,
    KW_GGML_Q4_K = 12,
    KW_GGML_Q5_K = 13,
    KW_GGML_Q6_K = 14,
    KW_GGML_Q8_K = 15,
    KW_GGML_BF16 = 30,
    KW_GGML_TYPE_LIMIT = 64, /* type numbers at or above this are refused outright */
};

typedef struct kw_ggml_type_info {
    const char *name;      /* "Q4_K", ... */
    int32_t block_elems;   /* values per block (1 for F32/F16/BF16) */
    int32_t block_bytes;   /* bytes per block */
    int32_t dequantizable; /* 1 if kw_dequant_row handles it */
} kw_ggml_type_info;

/* Fills *out for a known ggml type (including ones kvwire cannot dequantize, so a file holding them still parses).
 * KW_E_MODEL_DTYPE for an unknown or retired type number. */
int kw_ggml_type_info_get(uint32_t type, kw_ggml_type_info *out);

/* The name of a type number, or "?" (never NULL). */
const char *kw_ggml_type_name(uint32_t type);

/* Bytes of a row of n values of the given type: n must be a positive multiple of the block size.
 * KW_E_MODEL_DTYPE for an unknown type, KW_E_MODEL_SHAPE if n is not a multiple, KW_E_OVERFLOW. */
int kw_ggml_row_bytes(uint32_t type, int64_t n, size_t *out);

/* Dequantizes n values (a whole number of blocks) from src, which holds exactly the kw_ggml_row_bytes(type, n)
 * bytes, into dst as out_dtype (KW_DTYPE_F32, or KW_DTYPE_BF16: the f32 value rounded to nearest even). src and dst
 * are caller-owned and must not overlap. Errors: KW_E_MODEL_DTYPE (a type kvwire cannot dequantize, named in the
 * detail), KW_E_MODEL_SHAPE (n not a multiple of the block size), KW_E_INVALID_ARG (another out_dtype). */
int kw_dequant_row(uint32_t type, const void *src, int64_t n, enum kw_dtype out_dtype, void *dst);

/* The quantized layout a type is kept in (kernels/kw_backend.h, KW_LAYOUT_QPANELS_*): Q4_0 S4, Q4_1 and Q4_K U4, Q8_0
 * and Q5_0 S8, Q5_1 and Q5_K S8_OFS, Q6_K S8_G16; KW_LAYOUT_ROWS for every other type (dequantized at load). */
enum kw_layout kw_ggml_quant_layout(uint32_t type);

/* Splits n values (a whole number of blocks) of a type kept quantized into integer codes (n, in the layout's range),
 * scales and offsets (n / group each, group the layout's; offsets only for layouts with offsets, else may be NULL),
 * such that value i = fl(fl(codes[i] * scales[i / group]) + offsets[i / group]) (or without the offset term) is the
 * very f32 kw_dequant_row gives: kw_dequant_row computes those types through this split. Buffers are caller-owned.
 * Errors: KW_E_MODEL_DTYPE (a type not kept quantized), KW_E_MODEL_SHAPE (n not a multiple of the block size),
 * KW_E_INVALID_ARG (a NULL buffer). */
int kw_ggml_codes_row(uint32_t type, const void *src, int64_t n, int8_t *codes, float *scales, float *offsets);

/* The super-block layout a type can also be kept in (kernels/kw_backend.h): Q4_K KW_LAYOUT_QPANELS_U4_SB, Q6_K
 * KW_LAYOUT_QPANELS_S8_G16_SB; KW_LAYOUT_ROWS for every other type. */
enum kw_layout kw_ggml_superblock_layout(uint32_t type);

/* The super-blocks' f32 d and m of n values (whole 256-value super-blocks) of such a type, n / 256 each (m only for
 * Q4_K: the negated dmin; may be NULL for Q6_K), such that kw_ggml_codes_row's scale of each group is fl(d * s) and its
 * offset fl(m * o) for the block's 6-bit (Q4_K) or int8 (Q6_K) sub-scales s and sub-mins o. Errors: KW_E_MODEL_DTYPE
 * (another type), KW_E_MODEL_SHAPE (n not whole super-blocks), KW_E_INVALID_ARG (a NULL buffer). */
int kw_ggml_superblock_row(uint32_t type, const void *src, int64_t n, float *d, float *m);

#endif /* KW_DEQUANT_H */
