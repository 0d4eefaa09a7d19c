/* kw_cpu_c2c.c: the CPU kernel of the C2C fuser's per-head combine, kw_op_head_scale_add.
 *
 * out[t, h, :] = base[t, h, :] + (g * w[t, h]) * x[t, h, :], with the rounding steps of torch's fp32 expression
 * `base + g * w * x`: the kernel is written as separate products and a sum, and the library is compiled as ISO C
 * (-std=c11, so GCC does not contract them into fused multiply-adds), which keeps it bit-identical to
 * kw_ref_head_scale_add. Memory-bound: plain C, spread over the backend's thread pool by (t, h) rows when the call is
 * large.
 */
#include "kernels/cpu/kw_cpu.h"

typedef struct kw_hsa_job {
    const float *b, *xs, *ws;
    float *y;
    int64_t D;
    float g;
} kw_hsa_job;

static void kw_hsa_rows(void *arg, int64_t r0, int64_t r1, int worker) {
    (void)worker;
    const kw_hsa_job *j = arg;
    const int64_t D = j->D;
    for (int64_t r = r0; r < r1; ++r) {
        const float gw = j->g * j->ws[r];
        const float *br = j->b + r * D, *xr = j->xs + r * D;
        float *yr = j->y + r * D;
        for (int64_t d = 0; d < D; ++d) {
            const float p = gw * xr[d];
            yr[d] = br[d] + p;
        }
    }
}

int kw__cpu_head_scale_add(kw_backend *backend, kw_tensor *out, const kw_tensor *base, const kw_tensor *x,
                           const kw_tensor *w, float g) {
    kw_cpu_backend *cpu = kw__cpu(backend);
    const int64_t rows = kw_tensor_nrows(x), D = x->ne[x->ndim - 1];
    const int threads = rows * D >= KW_CPU_PARALLEL_MIN ? cpu->n_threads : 1;
    kw_hsa_job job = {base->data, x->data, w->data, out->data, D, g};
    kw__cpu_parallel_for(cpu, threads, rows, kw_hsa_rows, &job);
    return 0;
}
