/* test_cuda_gemm_bf16.c: the CUDA backend's opt-in bf16 GEMM (KW_CUDA_GEMM=bf16, kernels/cuda/kw_cuda_backend.cu)
 * against double-precision references, and the default (exact) path against itself.
 *
 * With the option, a matmul with M > 8 on a row-major bf16 weight rounds x to bf16 (xb) and runs cuBLAS on bf16 A and
 * B with fp32 accumulation. Each product of two bf16 values is exact in fp32, so only the sums (in an order cuBLAS
 * does not specify) and the bias add round: with gamma_n = n u / (1 - n u), u = 2^-24,
 *  - |y - sum_k xb_k w_k - b| <= gamma_{K+1} (sum_k |xb_k w_k| + |b|)  (the double reference of the rounded inputs);
 *  - against the exact path's y_e, which holds |y_e - sum_k x_k w_k - b| <= gamma_{K+1} (sum_k |x_k w_k| + |b|), and
 *    |xb_k - x_k| <= 2^-8 |x_k| (round to nearest, 8 significant bits):
 *    |y - y_e| <= 2^-8 sum_k |x_k w_k| + gamma_{K+1} (sum_k |xb_k w_k| + sum_k |x_k w_k| + 2 |b|).
 * The first bound is far tighter than x's rounding (K = 130: gamma ~ 7.8e-6 against 2^-8 ~ 3.9e-3), so x left
 * unrounded fails it. M <= 8 (the streaming kernel) and an f32 weight keep the exact path: the same bits as a backend
 * created without the option. An unknown KW_CUDA_GEMM value fails backend creation.
 *
 * Built against the emulator (test_cuda_gemm_bf16_emu, label gpu-emu) and, with KW_TEST_REAL_CUDA, against a device
 * (tests/gpu, test_gpu_gemm_bf16), which exits 77 without one.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_half.h"
#include "tests/gpu_emu/gpu_mm_test.h"

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;

/* uniform in [-1, 1) */
static float kw_uniform(void) {
    g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
    return (float)((double)(g_rng >> 11) / (double)(1ull << 52) - 1.0);
}

/* One shape on the opt-in backend bf and the default one ex; M > 8 takes cuBLAS. */
static void kw_case(kw_backend *bf, kw_backend *ex, int64_t M, int64_t N, int64_t K, int with_bias) {
    uint16_t *wb = malloc((size_t)(N * K) * sizeof *wb);
    float *wf = malloc((size_t)(N * K) * sizeof *wf), *x = malloc((size_t)(M * K) * sizeof *x);
    float *bias = malloc((size_t)N * sizeof *bias), *y = malloc((size_t)(M * N) * sizeof *y);
    float *ye = malloc((size_t)(M * N) * sizeof *ye);
    if (!wb || !wf || !x || !bias || !y || !ye) kw_check(KW_E_NOMEM, "buffers");
    for (int64_t i = 0; i < N * K; ++i) {
        wb[i] = kw_f32_to_bf16(kw_uniform());
        wf[i] = kw_bf16_to_f32(wb[i]);
    }
    for (int64_t i = 0; i < M * K; ++i)
        x[i] = kw_uniform(); /* fp32 values: almost none is a bf16 value */
    for (int64_t n = 0; n < N; ++n)
        bias[n] = kw_uniform();
    const float *b = with_bias ? bias : NULL;
    kw_tensor wbf = kw_dev(bf, 2, (int64_t[]){N, K}, wb, KW_DTYPE_BF16);
    kw_tensor wex = kw_dev(ex, 2, (int64_t[]){N, K}, wb, KW_DTYPE_BF16);
    kw_mm(bf, y, x, &wbf, b, M);
    kw_mm(ex, ye, x, &wex, b, M);
    const size_t bytes = (size_t)(M * N) * sizeof *y;
    if (M <= 8) {
        kw_expect(memcmp(y, ye, bytes) == 0, "M %lld N %lld K %lld bias %d: the streaming path changed with the option",
                  (long long)M, (long long)N, (long long)K, with_bias);
    } else {
        const double u = ldexp(1.0, -24), gamma = (double)(K + 1) * u / (1.0 - (double)(K + 1) * u);
        int near_ref = 1, near_exact = 1;
        for (int64_t m = 0; m < M; ++m)
            for (int64_t n = 0; n < N; ++n) {
                double ref = b ? (double)b[n] : 0.0, mag_b = 0.0, mag = 0.0;
                for (int64_t k = 0; k < K; ++k) {
                    const double xb = (double)kw_bf16_to_f32(kw_f32_to_bf16(x[m * K + k])), w = wf[n * K + k];
                    ref += xb * w;
                    mag_b += fabs(xb * w);
                    mag += fabs((double)x[m * K + k] * w);
                }
                const double ab = b ? fabs((double)b[n]) : 0.0, yv = y[m * N + n], yev = ye[m * N + n];
                const double bound_ref = gamma * (mag_b + ab);
                const double bound_exact = ldexp(mag, -8) + gamma * (mag_b + mag + 2.0 * ab);
                if (!(fabs(yv - ref) <= bound_ref)) {
                    if (near_ref)
                        fprintf(stderr, "  (%lld, %lld): %.9g, bf16 reference %.9g, bound %.3g\n", (long long)m,
                                (long long)n, yv, ref, bound_ref);
                    near_ref = 0;
                }
                if (!(fabs(yv - yev) <= bound_exact)) {
                    if (near_exact)
                        fprintf(stderr, "  (%lld, %lld): %.9g, exact path %.9g, bound %.3g\n", (long long)m,
                                (long long)n, yv, yev, bound_exact);
                    near_exact = 0;
                }
            }
        kw_expect(near_ref, "M %lld N %lld K %lld bias %d: beyond the bound around the bf16 inputs' reference",
                  (long long)M, (long long)N, (long long)K, with_bias);
        kw_expect(near_exact, "M %lld N %lld K %lld bias %d: beyond the activation-rounding bound of the exact path",
                  (long long)M, (long long)N, (long long)K, with_bias);
        /* the option took effect: x's rounding shows in the bits */
        kw_expect(memcmp(y, ye, bytes) != 0, "M %lld N %lld K %lld bias %d: the opt-in gave the exact path's bits",
                  (long long)M, (long long)N, (long long)K, with_bias);
    }
    /* an f32 weight keeps the exact path under the option */
    kw_tensor fbf = kw_dev(bf, 2, (int64_t[]){N, K}, wf, KW_DTYPE_F32);
    kw_tensor fex = kw_dev(ex, 2, (int64_t[]){N, K}, wf, KW_DTYPE_F32);
    kw_mm(bf, y, x, &fbf, b, M);
    kw_mm(ex, ye, x, &fex, b, M);
    kw_expect(memcmp(y, ye, bytes) == 0, "M %lld N %lld K %lld bias %d: an f32 weight changed with the option",
              (long long)M, (long long)N, (long long)K, with_bias);
    kw_tensor_free(&wbf), kw_tensor_free(&wex), kw_tensor_free(&fbf), kw_tensor_free(&fex);
    free(wb), free(wf), free(x), free(bias), free(y), free(ye);
}

int main(void) {
    kw_backend *ex = NULL, *bf = NULL;
    unsetenv("KW_CUDA_GEMM");
    const int rc = kw_create_gpu(0, &ex);
    if (rc == KW_E_UNSUPPORTED || rc == KW_E_NO_DEVICE) {
        printf("skipped: %s (%s)\n", kw_status_name(rc), kw_error_detail());
        return 77;
    }
    kw_check(rc, "create the default backend");
    setenv("KW_CUDA_GEMM", "bf17", 1);
    kw_backend *bad = NULL;
    kw_expect(kw_create_gpu(0, &bad) == KW_E_INVALID_ARG && bad == NULL, "KW_CUDA_GEMM=bf17 was accepted");
    setenv("KW_CUDA_GEMM", "bf16", 1);
    kw_check(kw_create_gpu(0, &bf), "create the bf16 GEMM backend");
    unsetenv("KW_CUDA_GEMM");
    const int64_t shapes[][3] = {{13, 67, 130}, {40, 131, 96}, {9, 5, 1}, {3, 67, 130}, {8, 33, 64}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; ++i)
        for (int with_bias = 0; with_bias < 2; ++with_bias)
            kw_case(bf, ex, shapes[i][0], shapes[i][1], shapes[i][2], with_bias);
    kw_backend_destroy(bf);
    kw_backend_destroy(ex);
#ifndef KW_TEST_REAL_CUDA
    kw_cuda_emu_stats st;
    kw_cuda_emu_get_stats(&st);
    kw_expect(st.faults == 0, "emulator: a kernel faulted");
    kw_expect(st.live_allocations == 0, "emulator: device allocations left");
#endif
    printf("cuda bf16 gemm: %zu checks run, %zu failed\n", run, failed);
    return failed == 0 && run > 0 ? 0 : 1;
}
