/* kw_ref.h: the plain-C reference oracles, one function per backend op, over host pointers.
 *
 * These are deliberately slow and obvious: straight loops, sums accumulated in double, transcendental functions in
 * double and rounded once to fp32. They are what tests/kernels compares every backend against; nothing in the
 * runtime path calls them. Shapes follow kw_backend.h (outermost first, last dimension contiguous); the caller
 * guarantees sizes and pointers (the generic layer's checks do not run here). "Weight" operands take a dtype (f32,
 * bf16 or f16, stored as raw bits) and are widened exactly to fp32.
 */
#ifndef KW_REF_H
#define KW_REF_H

#include <stdint.h>

#include "kernels/kw_backend.h"

/* Element i of a f32/bf16/f16 array, widened to fp32 (exact). */
float kw_ref_load(const void *data, enum kw_dtype dtype, int64_t i);
/* Stores v into element i of a f32/bf16/f16 array, rounding to nearest even. */
void kw_ref_store(void *data, enum kw_dtype dtype, int64_t i, float v);

/* out (T, D) = table (V, D)[ids[t]]. Returns 0, or KW_E_TOKEN_ID if an id is outside [0, V) (its row is zeroed,
 * the others are still written). */
int kw_ref_get_rows(float *out, const void *table, enum kw_dtype table_dtype, int64_t V, int64_t D, const int32_t *ids,
                    int64_t T);

/* out (M, N) = x (M, K) w (N, K)^T + bias (N, optional: NULL). */
void kw_ref_matmul(float *out, const float *x, const void *w, enum kw_dtype w_dtype, const void *bias,
                   enum kw_dtype bias_dtype, int64_t M, int64_t N, int64_t K);

/* The f32 weight (q->n, q->k) that quantized rows stand for (kernels/kw_backend.h, kw_quant_rows): each value
 * fl(fl(code * scale) + offset), or fl(code * scale) without offsets, two roundings, never fused. w is caller-owned.
 * A kept-quantized matmul must give the bits of the CPU backend's matmul on this weight. */
void kw_ref_quant_dequant(float *w, const kw_quant_rows *q);

/* out (M, N) = x (M, K) times the weight of q (layout KW_LAYOUT_QPANELS_U4_X8, S8_G16_X8 or S8_X8, or the super-block
 * forms U4_SB_X8, S8_G16_SB_X8, S6_G16_SB_X8, whose scales and offsets q also holds as f32) with int8 activations,
 * written out plainly from the rule in kernels/cpu/kw_cpu_matmul_x8.c: x per 32 k to d = amax / 127 and q =
 * lrintf(x * (127 / amax)) in [-127, 127] (amax < 1e-30: all zero; a NaN or infinity: d = NaN), per weight group the
 * exact integer sum, then acc = fma(scale, fl(isum * d), acc) (S8_X8: acc = fma(fl(scale * kw_round_f16(d)), isum,
 * acc), so a group with amax >= 65520 * 127 gives +-Inf or NaN, as ggml's q8_0) and, with offsets, acc = fma(offset,
 * fl(d * sum q), acc). No bias. out is caller-owned. */
void kw_ref_quant_matmul_x8(float *out, const float *x, int64_t M, const kw_quant_rows *q);

/* out (M, N) = x (M, K) times the bf16 weight w (N, K, row-major) with bf16 activations, written out plainly from the
 * rule in kernels/cpu/kw_cpu_matmul_bf16.c (VDPBF16PS): x rounded to bf16 (nearest even), denormal bf16 inputs read
 * as zeros of their sign, per pair of k (the odd one first) one fused multiply-add each, a result below 2^-126 after
 * rounding to 24 bits flushed to the zero of its sign, a NaN result stored as 0x7fc00000. No bias. out is
 * caller-owned. */
void kw_ref_matmul_bf16act(float *out, const float *x, const uint16_t *w, int64_t M, int64_t N, int64_t K);

/* out (R, D) = x * (1 / sqrt(mean(x^2) + eps)) * w (or * (1 + w) with KW_RMS_NORM_UNIT_OFFSET), as HF writes it:
 * the normalized row is formed in fp32 first, then multiplied by the weight. out may equal x. */
void kw_ref_rms_norm(float *out, const float *x, const void *w, enum kw_dtype w_dtype, int64_t R, int64_t D, float eps,
                     int flags);

/* In place, x (T, H, D): for each dim pair (i, i + rd/2), i < rd/2 = rotary_dim/2, angle = fp32(pos[t] * inv_freq[i])
 * with inv_freq from kw__rope_inv_freq; x'[i] = x[i] cos - x[i + rd/2] sin, x'[i + rd/2] = x[i + rd/2] cos + x[i] sin,
 * each product rounded to fp32 as torch does. Dimensions past rotary_dim are unchanged. */
void kw_ref_rope(float *x, const int32_t *pos, int64_t T, int64_t H, int64_t D, const kw_rope_params *params);

/* kw_ref_rope split in two: table (T, rotary_dim/2, 2) f32 = {cos, sin} of each token's angles, computed as
 * kw_ref_rope computes them; kw_ref_rope_apply rotates x (T, H, D) in place by such a table (half = rotary_dim/2), the
 * products and sums of kw_ref_rope. Applying the table of pos is kw_ref_rope with pos, bit for bit. */
void kw_ref_rope_table(float *table, const int32_t *pos, int64_t T, const kw_rope_params *params);
void kw_ref_rope_apply(float *x, const float *table, int64_t T, int64_t H, int64_t D, int64_t half);

/* Causal GQA attention, out (T, Hq, D), q (T, Hq, D), caches (Hkv, cap, D) f32/bf16; kv_mask (cap) u8 or NULL.
 * Semantics of kw_op_attention. */
void kw_ref_attention(float *out, const float *q, const void *k_cache, const void *v_cache, enum kw_dtype cache_dtype,
                      const uint8_t *kv_mask, int64_t T, int64_t Hq, int64_t Hkv, int64_t cap, int64_t D,
                      const kw_attention_params *params);

/* cache (H, cap, D) rows [pos0, pos0 + T) = src (T, H, D). */
void kw_ref_kv_store(void *cache, enum kw_dtype cache_dtype, const float *src, int64_t T, int64_t H, int64_t cap,
                     int64_t D, int64_t pos0);
/* out (T, H, D) = cache (H, cap, D) rows [pos0, pos0 + T). */
void kw_ref_kv_load(float *out, const void *cache, enum kw_dtype cache_dtype, int64_t T, int64_t H, int64_t cap,
                    int64_t D, int64_t pos0);

/* The values a paged quantized cache of geometry g (kernels/kw_kvq_format.h) holds after rows (n_rows, H, D) were
 * appended, in any cut: out (H, cap, D), rows [0, n_rows) written. Keys: each full page of P rows quantized per
 * channel from the rows' bf16 values (scale byte: the smallest s with scale(s) * code_max >= the channel's largest
 * magnitude), the rest of the rows bf16; values: each row's groups of 32 channels (16 when D is not a multiple of
 * 32) quantized on their own from the f32 values. */
void kw_ref_kvq_values(float *out, const kw_kvq_geom *g, const float *rows, int64_t n_rows);

/* act(x) in double, rounded to fp32. */
float kw_ref_act(float x, enum kw_act act);
/* out[i] = act(gate[i]) * up[i] (the activation rounded to fp32, then the product, as torch does). */
void kw_ref_glu(float *out, const float *gate, const float *up, int64_t n, enum kw_act act);
void kw_ref_unary(float *out, const float *x, int64_t n, enum kw_act act);
void kw_ref_add(float *out, const float *a, const float *b, int64_t n);
void kw_ref_scale(float *out, const float *x, int64_t n, float s);
/* Row softmax of x (R, N), max-subtracted, in double. */
void kw_ref_softmax(float *out, const float *x, int64_t R, int64_t N);
/* out[r] = first index of the maximum of row r of x (R, N); NaN never wins (an all-NaN row gives 0); with
 * KW_ARGMAX_ROUND_BF16 the values are rounded to bf16 before comparing. */
void kw_ref_argmax(int32_t *out, const float *x, int64_t R, int64_t N, int flags);
/* dst = src converted (f32/bf16/f16 both ways, round to nearest even; same dtype copies bytes of any dtype). */
void kw_ref_copy(void *dst, enum kw_dtype dst_dtype, const void *src, enum kw_dtype src_dtype, int64_t n);

/* out (T, H, D) = base + (g * w[t, h]) * x[t, h, :], each step rounded to fp32 in that order (kw_ref_c2c.c). out may
 * equal base or x. */
void kw_ref_head_scale_add(float *out, const float *base, const float *x, const float *w, float g, int64_t T, int64_t H,
                           int64_t D);

#endif /* KW_REF_H */
