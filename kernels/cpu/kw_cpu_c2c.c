/* kw_cpu_c2c.c: the CPU kernel of the C2C fuser's per-head combine, kw_op_head_scale_add.
 *
 * out[t, h, :] = base[t, h, :] + (g * w[t, h]) * x[t, h, :], with the rounding steps of torch's fp32 expression
 * `base + g * w * x`: the kernel is written as separate products and a sum, and the library is compiled as ISO C
 * (-std=c11, so GCC does not contract them into fused multiply-adds), which keeps it bit-identical to
 * kw_ref_head_scale_add. Memory-bound: plain C, OpenMP over (t, h) rows when the call is large.
 */
#include "kernels/cpu/kw_cpu.h"

int kw__cpu_head_scale_add(kw_backend *backend, kw_tensor *out, const kw_tensor *base, const kw_tensor *x,
                           const kw_tensor *w, float g) {
    const kw_cpu_backend *cpu = kw__cpu(backend);
    const int64_t rows = kw_tensor_nrows(x), D = x->ne[x->ndim - 1];
    const float *b = base->data, *xs = x->data, *ws = w->data;
    float *y = out->data;
    const int threads = rows * D >= KW_CPU_PARALLEL_MIN ? cpu->n_threads : 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        const float gw = g * ws[r];
        const float *br = b + r * D, *xr = xs + r * D;
        float *yr = y + r * D;
        for (int64_t d = 0; d < D; ++d) {
            const float p = gw * xr[d];
            yr[d] = br[d] + p;
        }
    }
    return 0;
}
