/* kw_select_math.h: the arithmetic of the sharer's norm selection (c2c/kw_select.h, modes knorm_topk and
 * vnorm_topk), written once for the CPU (c2c/kw_select.c) and the CUDA kernels (kernels/cuda/kw_cuda_select.cu), so
 * that both choose the same positions bit for bit. Prefix kw_selm_ ("selection math").
 *
 * score[t] = (sum over h, in head order, of sqrtf(sum over d, in index order, of x*x)) / H, in fp32; the order of
 * the candidates is kw_selm_key: larger score first, ties to the lower position, non-finite scores never chosen.
 * Every step is a separate fp32 operation: the CPU library is ISO C (no contraction) and the CUDA files that use
 * this header are built with --fmad=false (kernels/CMakeLists.txt). Not here: the heap and the radix select, which
 * are the two sides' own loops.
 */
#ifndef KW_SELECT_MATH_H
#define KW_SELECT_MATH_H

#include <math.h>
#include <stdint.h>

#include "common/kw_half.h"
#include "common/kw_hd.h"
#include "kernels/kw_op_math.h"

/* The L2 norm of the D values x[offset .. offset + D) (f32, bf16 or f16, widened exactly), the squares summed in
 * index order. */
KW_HD float kw_selm_row_norm(const void *x, enum kw_dtype dtype, int64_t offset, int32_t D) {
    float ss = 0.0f;
    for (int32_t d = 0; d < D; ++d) {
        const float v = kw_opm_load(x, dtype, offset + d);
        ss += v * v;
    }
    return sqrtf(ss);
}

/* The score of a token from the sum of its H head norms (summed in head order). */
KW_HD float kw_selm_score(float norm_sum, int32_t H) {
    return norm_sum / (float)H;
}

/* The selection order as one integer: a larger key is the better candidate (larger score, then lower position t <
 * 2^32); 0 for a non-finite score, which is never chosen. -0 counts as +0, as the float comparison has it. */
KW_HD uint64_t kw_selm_key(float score, uint32_t t) {
    uint32_t b = kw_f32_bits(score);
    if ((b & 0x7f800000u) == 0x7f800000u) return 0;
    if (b == 0x80000000u) b = 0;
    const uint32_t ordered = (b & 0x80000000u) ? ~b : b | 0x80000000u; /* monotone in the float order */
    return (uint64_t)ordered << 32 | (uint32_t)(0xffffffffu - t);
}

#endif /* KW_SELECT_MATH_H */
