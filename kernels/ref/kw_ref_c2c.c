/* kw_ref_c2c.c: the plain-C oracle of kw_op_head_scale_add (the C2C fuser's per-head combine). Unlike most oracles
 * it does not accumulate in double: the op is defined by torch's fp32 rounding steps, so the oracle performs exactly
 * those steps, one fp32 rounding each, and backends must match it bit for bit. */
#include "kernels/ref/kw_ref.h"

void kw_ref_head_scale_add(float *out, const float *base, const float *x, const float *w, float g, int64_t T, int64_t H,
                           int64_t D) {
    for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < H; ++h) {
            const int64_t row = t * H + h;
            const float gw = g * w[row]; /* (g * w) first, as torch evaluates g * w * x left to right */
            for (int64_t d = 0; d < D; ++d) {
                const float p = gw * x[row * D + d];
                out[row * D + d] = base[row * D + d] + p;
            }
        }
}
