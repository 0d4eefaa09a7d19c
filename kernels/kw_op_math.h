/* kw_op_math.h: the per-element rules of the backend ops, written once for the CPU and the CUDA backend, plus the
 * CUDA launch geometry as plain host functions. Prefix kw_opm_ ("op math").
 *
 * KW_HD functions are static inline in C and __host__ __device__ under nvcc, so the GPU runs exactly the lines the
 * CPU backend runs and tests/kernels/test_op_math.c checks on any machine. The activations are the exception on the
 * CPU, which computes SiLU, the sigmoid and both GELUs with its own exp and erf (kernels/cpu/kw_cpu_math.c: the same
 * bits on every ISA, no libm), the tanh GELU as x sigmoid(2u), the same function as the formula below; the GPU runs
 * kw_opm_act as written. Both are checked against the double oracle within tolerances, not against each other. What
 * belongs here: rules both backends must apply identically (dtype loads and stores, the activation formulas, RMSNorm's
 * scale, the RoPE rotation, which cache rows a query sees, argmax's NaN and tie rule, the get_rows error key) and the
 * CUDA launch arithmetic (block counts, per-lane widths, cuBLAS arguments and panel heights), which would otherwise
 * only meet a test on a GPU. What does not: loops, SIMD, cross-thread reductions, and the kw_ref oracles, which stay
 * independent so that a mistake here shows up as a parity failure instead of being copied into the reference.
 *
 * Rounding: the helpers are written as separate fp32 operations. The CPU library is ISO C11 (GCC does not contract
 * a * b + c into an FMA there); nvcc contracts by default, which the parity tolerances allow wherever it can happen
 * (the RoPE rotation, the tanh-GELU polynomial). Ops that must be bit-identical (add, scale, head_scale_add) do not
 * go through a contractible expression on the GPU.
 */
#ifndef KW_OP_MATH_H
#define KW_OP_MATH_H

#include <math.h>
#include <stdint.h>

#include "common/kw_half.h"
#ifdef __cplusplus
extern "C" {
#endif
#include "kernels/kw_backend.h"
#ifdef __cplusplus
}
#endif

/* ------------------------------------------------------------------------------------------------------------
 * Elements
 */

/* Element i of an f32/bf16/f16 array, widened to fp32 (exact). Any other dtype reads as f32. */
KW_HD float kw_opm_load(const void *p, enum kw_dtype dtype, int64_t i) {
    if (dtype == KW_DTYPE_BF16) return kw_bf16_to_f32(((const uint16_t *)p)[i]);
    if (dtype == KW_DTYPE_F16) return kw_f16_to_f32(((const uint16_t *)p)[i]);
    return ((const float *)p)[i];
}

/* Stores v as element i of an f32/bf16/f16 array, rounding to nearest even (NaN stays a quiet NaN). */
KW_HD void kw_opm_store(void *p, enum kw_dtype dtype, int64_t i, float v) {
    if (dtype == KW_DTYPE_BF16)
        ((uint16_t *)p)[i] = kw_f32_to_bf16(v);
    else if (dtype == KW_DTYPE_F16)
        ((uint16_t *)p)[i] = kw_f32_to_f16(v);
    else
        ((float *)p)[i] = v;
}

/* act(x) in fp32 with the formulas torch's kernels use (the library's expf/erff/tanhf: glibc on the CPU, CUDA's
 * math library on the GPU, both within 2 ulp). */
KW_HD float kw_opm_act(float x, enum kw_act act) {
    switch (act) {
    case KW_ACT_SILU:
        return x / (1.0f + expf(-x));
    case KW_ACT_GELU_ERF:
        return (x * 0.5f) * (1.0f + erff(x * 0.70710678118654752440f));
    case KW_ACT_GELU_TANH: {
        const float inner = 0.79788456080286535588f * (x + 0.044715f * (x * x * x));
        return (0.5f * x) * (1.0f + tanhf(inner));
    }
    case KW_ACT_SIGMOID:
        return 1.0f / (1.0f + expf(-x));
    case KW_ACT_IDENTITY:
        return x;
    case KW_ACT_TANH:
        return tanhf(x);
    }
    return NAN;
}

/* RMSNorm's row scale from the fp32 sum of squares of D values: 1 / sqrt(mean + eps), as torch.rsqrt(variance +
 * eps) with the variance rounded to fp32 first (division and sqrt correctly rounded on both sides). */
KW_HD float kw_opm_rms_scale(float sum_sq, int64_t D, float eps) {
    return 1.0f / sqrtf(sum_sq / (float)D + eps);
}

/* RoPE's angle for a position: the fp32 product HF forms (position_ids.float() @ inv_freq). */
KW_HD float kw_opm_rope_angle(int32_t pos, float inv_freq) {
    return (float)pos * inv_freq;
}

/* Rotates the pair (x[i], x[i + rd/2]) of the "half" layout: x0' = x0 cos - x1 sin, x1' = x1 cos + x0 sin, each
 * product rounded to fp32 as torch's x * cos + rotate_half(x) * sin does. */
KW_HD void kw_opm_rope_rotate(float *x0, float *x1, float c, float s) {
    const float a0 = *x0 * c, b0 = *x1 * s;
    const float a1 = *x1 * c, b1 = *x0 * s;
    *x0 = a0 - b0;
    *x1 = a1 + b1;
}

/* ------------------------------------------------------------------------------------------------------------
 * Indexing
 */

/* Element offset of row pos0 + t of head h in a (H, cap, D) KV cache (the first of its D values). */
KW_HD int64_t kw_opm_kv_offset(int64_t h, int64_t t, int64_t cap, int64_t pos0, int64_t D) {
    return (h * cap + pos0 + t) * D;
}

/* Splits a flat index i of a (T, H, D) tensor into (t, h, d). */
KW_HD void kw_opm_split3(int64_t i, int64_t H, int64_t D, int64_t *t, int64_t *h, int64_t *d) {
    const int64_t row = i / D;
    *d = i - row * D;
    *t = row / H;
    *h = row - *t * H;
}

/* The cache rows the query at cache position p may see before kv_mask: [*lo, *hi], causal (j <= p), valid
 * (j < n_kv) and, with a sliding window w > 0, j > p - w. Empty when *lo > *hi. */
KW_HD void kw_opm_attn_span(int64_t p, int64_t n_kv, int64_t window, int64_t *lo, int64_t *hi) {
    *hi = p < n_kv - 1 ? p : n_kv - 1;
    *lo = window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
}

/* 1 if kv_mask (NULL: none) hides cache row j. */
KW_HD int kw_opm_attn_masked(const uint8_t *mask, int64_t j) {
    return mask != NULL && mask[j] == 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * argmax
 */

/* The value argmax compares for x under flags (KW_ARGMAX_ROUND_BF16 rounds to bf16 first, as HF's bf16 logits). */
KW_HD float kw_opm_argmax_value(float x, int flags) {
    return (flags & KW_ARGMAX_ROUND_BF16) ? kw_round_bf16(x) : x;
}

/* 1 if the candidate (v, i) replaces the best so far (best_v, best_i). An index < 0 means "nothing" on either side;
 * NaN never wins; of equal values (+0 == -0 included) the lower index wins. The rule is a total order on
 * candidates, so any merge order (a loop, a warp butterfly, a tree across warps) ends at the first maximum. */
KW_HD int kw_opm_argmax_wins(float v, int64_t i, float best_v, int64_t best_i) {
    if (i < 0 || v != v) return 0;
    return best_i < 0 || v > best_v || (v == best_v && i < best_i);
}

/* ------------------------------------------------------------------------------------------------------------
 * get_rows' deferred error on the GPU: the first bad row of the first faulting launch is kept in one 64-bit word
 * updated with atomicMax. The key of (row, id) is larger for lower rows (rows are < 2^31), and never 0, so a
 * zeroed record means "no error".
 */

KW_HD uint64_t kw_opm_bad_id_key(int64_t row, int32_t id) {
    return ~(((uint64_t)row << 32) | (uint64_t)(uint32_t)id);
}

KW_HD int64_t kw_opm_bad_id_row(uint64_t key) {
    return (int64_t)(~key >> 32);
}

KW_HD int32_t kw_opm_bad_id_id(uint64_t key) {
    return (int32_t)(uint32_t)(~key & 0xffffffffu);
}

/* ------------------------------------------------------------------------------------------------------------
 * CUDA launch geometry (host code; plain C so that it is tested without a GPU)
 */

/* Grid-stride kernels never launch more blocks than this (2^21 - 32; gridDim.x itself allows 2^31 - 1). */
#define KW_OPM_MAX_BLOCKS ((int64_t)65535 * 32)

/* Blocks of per_block threads for a grid-stride loop over n >= 1 items: ceil(n / per_block), capped. */
static inline unsigned kw_opm_grid_blocks(int64_t n, int per_block) {
    const int64_t b = (n + per_block - 1) / per_block;
    return (unsigned)(b < 1 ? 1 : b < KW_OPM_MAX_BLOCKS ? b : KW_OPM_MAX_BLOCKS);
}

/* Head dimensions each of a warp's 32 lanes holds in registers in the attention kernel: the smallest power of two n
 * with 32 * n >= D (1 .. KW_ATTENTION_MAX_HEAD_DIM / 32 = 16), or 0 for a D outside 1..KW_ATTENTION_MAX_HEAD_DIM. */
static inline int kw_opm_attn_dims_per_lane(int64_t D) {
    if (D < 1 || D > KW_ATTENTION_MAX_HEAD_DIM) return 0;
    int n = 1;
    while (32 * n < D)
        n *= 2;
    return n;
}

/* cublasGemmEx's arguments for rows [n0, n0 + rows) of y (M, N) = x (M, K) W (N, K)^T, all row-major. cuBLAS is
 * column-major, where a row-major (r, c) matrix reads as its (c, r) transpose with leading dimension c: the product
 * is y^T (N x M, ld N) = W (N x K) x^T (K x M), that is op(A) = A^T with A = W^T as stored (K x rows, lda K, starting
 * at W + a_offset), op(B) = B with B = x^T (K x M, ldb K), and C = y + c_offset (rows x M, ldc N). */
typedef struct kw_opm_gemm {
    int trans_a, trans_b;       /* 1: CUBLAS_OP_T, 0: CUBLAS_OP_N */
    int64_t m, n, k;            /* op(A) is m x k, op(B) k x n, C m x n */
    int64_t lda, ldb, ldc;      /* leading dimensions */
    int64_t a_offset, c_offset; /* elements from W and y to A and C */
} kw_opm_gemm;

static inline kw_opm_gemm kw_opm_gemm_rows(int64_t M, int64_t N, int64_t K, int64_t n0, int64_t rows) {
    kw_opm_gemm g;
    g.trans_a = 1;
    g.trans_b = 0;
    g.m = rows;
    g.n = M;
    g.k = K;
    g.lda = K;
    g.ldb = K;
    g.ldc = N;
    g.a_offset = n0 * K;
    g.c_offset = n0;
    return g;
}

/* Rows of W per widened fp32 panel when at most max_floats fit: in [1, N], and rows * K <= max_floats unless a single
 * row is already larger. */
static inline int64_t kw_opm_panel_rows(int64_t N, int64_t K, int64_t max_floats) {
    const int64_t nb = max_floats / K;
    return nb < 1 ? 1 : nb > N ? N : nb;
}

#endif /* KW_OP_MATH_H */
