/* kw_cuda_wire.h: the sharer's and the receiver's per-tensor work on the GPU, straight from and into device memory:
 * the norm selection scores and their top-k (c2c/kw_select.h's knorm_topk/vnorm_topk), and the KVWire codecs of
 * one tensor of a token group (docs/FORMAT.md §5: quantize + pack into the scales-then-codes bytes of the section
 * body, unpack + dequantize back). The results are byte-identical to the CPU's (c2c/kw_select.c, wire/): both sides
 * run the KW_HD math of kernels/kw_select_math.h and wire/kw_wire_quant.h (tests/gpu_emu/test_cuda_wire.cu).
 *
 * Not here: the section framing (head, group table, index block, zstd, XXH3 checksums), which stays with the CPU
 * encoder and decoder of wire/, nor any policy. A plain C interface: every pointer named d_* is device memory, and
 * every function only enqueues work on `stream` (a cudaStream_t; NULL for the legacy default stream) and returns
 * KW_E_INVALID_ARG for bad arguments or KW_E_CUDA for a failed launch. Errors found in the data (a NaN, a value a
 * codec cannot represent, a reserved code) are written to device words the caller reads after synchronizing.
 *
 * The emulated build of kernels/cuda (kernels/cuda/emu) exports the same functions with kw_cuda_emu_ names; the
 * defines below pick them when KW_CUDA_EMU is set, so one test source drives both.
 */
#ifndef KW_CUDA_WIRE_H
#define KW_CUDA_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kw_backend.h"

#ifdef KW_CUDA_EMU
#define kw_cuda_select_scores           kw_cuda_emu_select_scores
#define kw_cuda_select_topk             kw_cuda_emu_select_topk
#define kw_cuda_wire_encode_tensor      kw_cuda_emu_wire_encode_tensor
#define kw_cuda_wire_decode_tensor      kw_cuda_emu_wire_decode_tensor
#define kw_cuda_wire_work_bytes         kw_cuda_emu_wire_work_bytes
#define kw_cuda_wire_tensor_bytes       kw_cuda_emu_wire_tensor_bytes
#define kw_cuda_wire_encode_status      kw_cuda_emu_wire_encode_status
#define kw_cuda_wire_outlier_select     kw_cuda_emu_wire_outlier_select
#define kw_cuda_wire_outlier_work_bytes kw_cuda_emu_wire_outlier_work_bytes
#define kw_cuda_wire_outlier_take       kw_cuda_emu_wire_outlier_take
#define kw_cuda_wire_outliers_apply     kw_cuda_emu_wire_outliers_apply
#define kw_cuda_wire_unrotate           kw_cuda_emu_wire_unrotate
#define kw_cuda_wire_rotate_gather      kw_cuda_emu_wire_rotate_gather
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------------------------- */
/* Selection */

/* The largest T kw_cuda_select_topk takes (positions are 32-bit). */
#define KW_CUDA_SELECT_MAX_TOKENS 0xffffffffu

/* score[t] for t < T of the rows x[t * token_stride + h * head_stride + d] (elements of dtype f32, bf16 or f16;
 * widening is exact, so bf16 input scores like its f32 copy), H heads of D values, H <= 256. */
int kw_cuda_select_scores(void *stream, const void *d_x, enum kw_dtype dtype, int64_t T, int32_t H, int32_t D,
                          int64_t token_stride, int64_t head_stride, float *d_score);

/* The k best of T scores (kw_selm_key: larger score, ties to the lower position; non-finite scores never), written
 * ascending to d_out (room for k entries), their number (min(k, finite scores)) to *d_count. One block; d_out and
 * d_count are written only by this kernel. */
int kw_cuda_select_topk(void *stream, const float *d_score, int64_t T, int64_t k, uint32_t *d_out, uint32_t *d_count);

/* ------------------------------------------------------------------------------------------------------------- */
/* KVWire codecs of one tensor of a token group */

/* The codec of the tensor: the four bytes of kw_wire_codec_spec (enum kw_wire_codec, kw_wire_gran, the scale dtype
 * byte, log2 of the channel group or, for the channel granularity, of the run length L). Passthrough codecs (bf16,
 * f16) take granularity and scale dtype 0. Every KVWire v1.1 codec feature runs here: int3 and int2, zero points
 * (bit 7 of the scale byte: the tensor's bytes are scales, zero points, codes), channel scales over runs of L tokens,
 * int3 in groups of 4 and log8 scales. The outlier side table (§5.10) is not a per-tensor feature: the sharer chooses
 * the outliers on the device (kw_cuda_wire_outlier_select, when it applies) and the host writes the table
 * (kw_wire_encoder_begin_section_outliers). A section with the Hadamard rotation of K or V (§5.12) encodes the rows
 * kw_cuda_wire_rotate_gather rotated (the encoder itself rotates nothing) and the decoder's output is rotated back by
 * kw_cuda_wire_unrotate. The clipped-scale search (§5.13, kw_wire_policy.clip) runs here when clip is set: each
 * scale unit's candidate ranges are tried by one thread per block of units the CPU encoder searches together (a row,
 * a run of rows, a head, the layer), summing the squared errors in the CPU's order in double, so the choice and the
 * bytes are the CPU's. */
typedef struct kw_cuda_wire_spec {
    uint8_t codec, granularity, scale_dtype, group_log2;
    uint8_t clip;    /* 1: clipped scales (FORMAT.md §5.13; integer codecs, ignored by the others) */
    uint8_t rotated; /* 1: the rows are rotated (§5.12): a unit past kw_wire_rotated_max(D) is KW_E_WIRE_RANGE */
} kw_cuda_wire_spec;

/* The encoder's input: element (h, t, d) of the group's token t (0-based in the group) is at d_data[row *
 * token_stride + h * head_stride + d], row = d_rows ? d_rows[t0 + t] : t0 + t, in elements of dtype (enum
 * kw_wire_dtype: 1 bf16, 2 f16, 3 f32), as kw_wire_tensor_in with the group's first token t0. */
typedef struct kw_cuda_wire_src {
    const void *d_data;     /* borrowed, device */
    uint32_t dtype;         /* enum kw_wire_dtype */
    size_t head_stride;     /* elements between heads */
    size_t token_stride;    /* elements between rows */
    const uint32_t *d_rows; /* borrowed, device, optional: the gather of kw_wire_tensor_in.rows */
    uint32_t t0;            /* the group's first token in the section */
    /* optional (d_mask NULL: none): the section's outliers (FORMAT.md §5.10), bit e of d_mask[e / 8] for element
     * e = mask_base + (h * mask_tokens + t0 + t) * D + d (mask_base 0 for K, H * mask_tokens * D for V; mask_tokens
     * the section's tokens): the mask kw_wire_outlier_select or kw_cuda_wire_outlier_select chose. As the CPU
     * encoder's general path, such elements are left out of the scales and take the code of +0 (zero points: code
     * 0); a quantizing tensor then always takes the general path. Passthrough tensors ignore it. */
    const uint8_t *d_mask; /* borrowed, device */
    uint64_t mask_base;
    uint32_t mask_tokens;
} kw_cuda_wire_src;

/* The decoder's output: element (h, t, d) goes to d_data[(t0 + t) * token_stride + h * head_stride + d], dtype
 * KW_WIRE_DTYPE_F32 or KW_WIRE_DTYPE_BF16, as kw_wire_tensor_out for a group starting at token t0. */
typedef struct kw_cuda_wire_dst {
    void *d_data; /* borrowed, device */
    uint32_t dtype;
    size_t head_stride, token_stride;
    uint32_t t0;
} kw_cuda_wire_dst;

/* Bytes of the tensor on the wire (scales then codes) for H heads, T tokens, head_dim D; 0 for an invalid spec. */
uint64_t kw_cuda_wire_tensor_bytes(const kw_cuda_wire_spec *spec, uint32_t H, uint32_t T, uint32_t D);

/* Bytes of device scratch kw_cuda_wire_encode_tensor needs for this tensor. */
uint64_t kw_cuda_wire_work_bytes(const kw_cuda_wire_spec *spec, uint32_t H, uint32_t T, uint32_t D);

/* Encodes the tensor into d_dst (kw_cuda_wire_tensor_bytes of them): the bytes the CPU encoder writes for it at its
 * place in the section body. d_work: kw_cuda_wire_work_bytes of scratch, 256-byte aligned (cudaMalloc's are).
 * *d_err (device) is overwritten with the first failure in the CPU encoder's order (~0ull: none); read it after the
 * stream synchronizes and turn it into a status with kw_cuda_wire_encode_status. On a failure the bytes of d_dst
 * are unspecified, as the CPU encoder's are. */
int kw_cuda_wire_encode_tensor(void *stream, const kw_cuda_wire_spec *spec, const kw_cuda_wire_src *src, uint32_t H,
                               uint32_t T, uint32_t D, uint8_t *d_dst, void *d_work, unsigned long long *d_err);

/* The status of an encode from its error word: 0, KW_E_WIRE_NONFINITE (NaN or Inf in the input) or KW_E_WIRE_RANGE
 * (a value or scale the codec cannot represent; with kw_cuda_wire_spec.rotated also a unit past kw_wire_rotated_max),
 * with the scale unit in the error detail. */
int kw_cuda_wire_encode_status(unsigned long long err);

/* Decodes the tensor's wire bytes d_src (scales then codes, already validated as the CPU decoder validates a
 * section: scales checked) into dst. *d_bad (device) is set to a non-zero value if a reserved code or a non-finite
 * passthrough value is found (the CPU's KW_E_WIRE_VALUE; the output is then fully written anyway, as the CPU's is);
 * the caller zeroes it first. */
int kw_cuda_wire_decode_tensor(void *stream, const kw_cuda_wire_spec *spec, const uint8_t *d_src, uint32_t H,
                               uint32_t T, uint32_t D, const kw_cuda_wire_dst *dst, unsigned int *d_bad);

/* The receiver's last two steps of a section's decode (kw_wire_section_dequantize's order: every tensor decoded,
 * then the outlier table's values written over their elements, then the rotation undone):
 *
 * kw_cuda_wire_outliers_apply writes values[i] (f32; rounded to nearest even into a bf16 output) over element
 * d_elems[i] = kv * H*T*D + (h * T + t) * D + d (kv 0: k, 1: v) for i < n, the decoded tensors of a section of T
 * tokens starting at their t0. The elements must be distinct (the table's are); one past 2*H*T*D is skipped.
 *
 * kw_cuda_wire_unrotate undoes the Hadamard rotation (FORMAT.md §5.12) of the f32 rows of x (T tokens of H heads,
 * D a power of two up to 1024) in place, bit for bit wire/kw_wire_rotate.c's (the same butterflies in the same
 * order, the same exact power-of-two factor), and sets *d_bad (device) non-zero if a value comes out not finite or
 * above the largest bf16 (the CPU decoder's KW_E_WIRE_VALUE; valid codes can add up past it). */
int kw_cuda_wire_outliers_apply(void *stream, const uint32_t *d_elems, const float *d_values, uint32_t n, uint32_t H,
                                uint32_t T, uint32_t D, const kw_cuda_wire_dst *k, const kw_cuda_wire_dst *v);
int kw_cuda_wire_unrotate(void *stream, uint32_t H, uint32_t T, uint32_t D, const kw_cuda_wire_dst *x,
                          unsigned int *d_bad);

/* The sharer's side of the rotation: d_out[(h * T + t) * D + d] (f32, H heads of T rows) = row (h, t) of src (the
 * encoder's input view, its gather and t0; dtype bf16, f16 or f32) widened to f32 and, with rotate 1, rotated forward
 * as wire/kw_wire_rotate.c's kw__wire_rotate_row with inverse 0 (x[d] * (s_d * 2^-floor(m/2)), then the butterflies),
 * bit for bit; rotate 0: the widened row itself. D a power of two up to 1024 with rotate 1. src.d_mask is ignored. */
int kw_cuda_wire_rotate_gather(void *stream, const kw_cuda_wire_src *src, uint32_t H, uint32_t T, uint32_t D,
                               int rotate, float *d_out);

/* ------------------------------------------------------------------------------------------------------------- */
/* The outlier side table's choice (FORMAT.md §5.10) */

/* Bytes of device scratch kw_cuda_wire_outlier_select needs (0 for an invalid spec). */
uint64_t kw_cuda_wire_outlier_work_bytes(const kw_cuda_wire_spec *spec_k, const kw_cuda_wire_spec *spec_v, uint32_t H,
                                         uint32_t T, uint32_t D);

/* The elements a section of one token group (T tokens, K and V read through src_k and src_v with t0 0, codecs
 * spec_k and spec_v) sends in its outlier table: kw_wire_outlier_select's choice, bit for bit (each element's score
 * against its scale's other values, then the min(count, 2*H*T*D) largest, ties to the lower element number e =
 * kv*H*T*D + (h*T + t)*D + d), written ascending to d_out (room for count) and their number to *d_count. *d_bad is
 * set non-zero if K or V holds a NaN or Inf (the CPU's KW_E_WIRE_NONFINITE; the choice is then meaningless). d_work:
 * kw_cuda_wire_outlier_work_bytes of scratch, 256-byte aligned. KW_E_LIMIT past 2^32 - 1 elements. The table's
 * bytes are the host's (kw_wire_encoder_begin_section_outliers, from kw_cuda_wire_outlier_take's values). */
int kw_cuda_wire_outlier_select(void *stream, const kw_cuda_wire_spec *spec_k, const kw_cuda_wire_spec *spec_v,
                                const kw_cuda_wire_src *src_k, const kw_cuda_wire_src *src_v, uint32_t H, uint32_t T,
                                uint32_t D, uint32_t count, void *d_work, uint32_t *d_out, uint32_t *d_count,
                                unsigned int *d_bad);

/* From that choice (d_elems ascending, *d_count of them, at most max_n): the section's mask for kw_cuda_wire_src.d_mask
 * (ceil(2*H*T*D / 32) words, bit e of byte e / 8; overwritten) and the chosen elements' values as f32 (d_values, the
 * table's values before its dtype), for kw_wire_encoder_begin_section_outliers. */
int kw_cuda_wire_outlier_take(void *stream, const kw_cuda_wire_src *src_k, const kw_cuda_wire_src *src_v, uint32_t H,
                              uint32_t T, uint32_t D, const uint32_t *d_elems, uint32_t max_n, const uint32_t *d_count,
                              unsigned int *d_mask, float *d_values);

#ifdef __cplusplus
}
#endif

#endif /* KW_CUDA_WIRE_H */
