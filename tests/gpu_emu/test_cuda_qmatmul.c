/* test_cuda_qmatmul.c: matmul weights kept quantized (KW_LAYOUT_QPANELS_*) on the CUDA backend, every layout, against
 * the CUDA matmul on the f32 weight they stand for (kw_ref_quant_dequant) and against the CPU backend.
 *
 * The contract (kernels/cuda/kw_cuda.cuh, docs/ARCHITECTURE.md): the CUDA kernels read a quantized weight element as
 * fl(fl(code * scale) + offset) and then run the code they run for an f32 weight, so
 *  - kw_op_matmul on the quantized weight gives the same bits as kw_op_matmul on the dequantized f32 weight on the same
 *    backend: the streaming kernel (M <= 8) and the cuBLAS path (M > 8: a dequantized panel, then the GEMM; the shapes
 *    here fit one panel, so its cuBLAS call has the f32 path's arguments);
 *  - get_rows on a quantized table gives the oracle's rows exactly;
 *  - against the CPU backend (one fused chain per element, ascending k) only the summation order differs: for
 *    y = sum_k x_k w_k + b computed in fp32 in any order, |y_hat - y| <= gamma_{K+1} (sum_k |x_k w_k| + |b|) with
 *    gamma_n = n u / (1 - n u), u = 2^-24, so two such results differ by at most twice that (computed in double).
 * Shapes: N = 67 and 131 (a partial panel of 64 rows), K with a lane tail (K = 48 for the 16-groups: lanes 16..31 get
 * one element), M = 1, 3, 8 (the streaming kernel's largest) and 13 (cuBLAS); with and without a bias. A changed code
 * must change the result, so the comparison can fail.
 *
 * Built against the emulator (test_cuda_qmatmul_emu, label gpu-emu, also under KW_CUDA_EMU_SEED's randomized
 * schedule) and, with KW_TEST_REAL_CUDA, against a device (tests/gpu, test_gpu_qmatmul), which exits 77 without one.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_half.h"
#include "kernels/ref/kw_ref.h"
#include "tests/gpu_emu/gpu_mm_test.h"

static uint64_t g_rng = 0x2545f4914f6cdd1dull;

static uint64_t kw_next(void) {
    g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
    return g_rng;
}

/* uniform in [-1, 1) */
static float kw_uniform(void) {
    return (float)((double)(kw_next() >> 11) / (double)(1ull << 52) - 1.0);
}

/* Quantized rows as a GGUF file holds them: in even groups an f16 scale times a small integer (a k-quant's d * sc),
 * in odd groups any f32 scale, so fl(code * scale) really rounds and a fused multiply-add would show. */
typedef struct kw_qdata {
    kw_quant_rows q;
    int8_t *codes;
    float *scales, *offsets;
} kw_qdata;

static kw_qdata kw_qdata_make(enum kw_layout layout, int64_t N, int64_t K) {
    kw_quant_layout ql;
    kw_layout_quant(layout, &ql);
    kw_qdata d;
    const int64_t groups = N * (K / ql.group);
    d.codes = malloc((size_t)(N * K));
    d.scales = malloc((size_t)groups * sizeof(float));
    d.offsets = ql.has_offset ? malloc((size_t)groups * sizeof(float)) : NULL;
    if (!d.codes || !d.scales || (ql.has_offset && !d.offsets)) kw_check(KW_E_NOMEM, "test data");
    const int span = ql.code_max - ql.code_min + 1;
    for (int64_t i = 0; i < N * K; ++i)
        d.codes[i] = (int8_t)(ql.code_min + (int)(kw_next() % (uint64_t)span));
    for (int64_t g = 0; g < groups; ++g) {
        const float f16 = kw_f16_to_f32(kw_f32_to_f16(kw_uniform() * 0.01f));
        d.scales[g] = g % 2 ? kw_uniform() * 0.3f : f16 * (float)(1 + kw_next() % 63);
        if (d.offsets) d.offsets[g] = -kw_f16_to_f32(kw_f32_to_f16(kw_uniform() * 0.02f)) * (float)(kw_next() % 64);
    }
    d.q = (kw_quant_rows){layout, N, K, d.codes, d.scales, d.offsets, NULL, NULL};
    return d;
}

static void kw_qdata_free(kw_qdata *d) {
    free(d->codes), free(d->scales), free(d->offsets);
}

static const char *kw_layout_label(enum kw_layout l) {
    static const char *const names[] = {"rows", "panels", "S4", "U4", "S8", "S8_OFS", "S8_G16"};
    return names[l];
}

/* One layout and shape: every M, with and without a bias. */
static void kw_case(kw_backend *gpu, kw_backend *cpu, enum kw_layout layout, int64_t N, int64_t K) {
    const char *name = kw_layout_label(layout);
    kw_qdata d = kw_qdata_make(layout, N, K);
    float *w = malloc((size_t)(N * K) * sizeof *w);
    if (!w) kw_check(KW_E_NOMEM, "w");
    kw_ref_quant_dequant(w, &d.q);

    kw_tensor gq, gf, cq;
    kw_check(kw_tensor_pack_quantized(gpu, &d.q, &gq), "pack on the gpu");
    kw_check(kw_tensor_pack_quantized(cpu, &d.q, &cq), "pack on the cpu");
    gf = kw_dev(gpu, 2, (int64_t[]){N, K}, w, KW_DTYPE_F32);
    kw_check(kw_backend_synchronize(gpu), "synchronize");
    const int64_t rows_pad = (N + KW_PANEL_ROWS - 1) / KW_PANEL_ROWS * KW_PANEL_ROWS; /* both backends pad N */
    kw_expect(kw_tensor_nbytes(&gq) <= (size_t)(rows_pad * K) * 5 / 4, "%s %lld x %lld: more than 1.25 bytes a weight",
              name, (long long)N, (long long)K);

    enum { MAXM = 13 };
    const int64_t Ms[] = {1, 3, 8, MAXM};
    float *x = malloc((size_t)(MAXM * K) * sizeof *x), *bias = malloc((size_t)N * sizeof *bias);
    float *yq = malloc((size_t)(MAXM * N) * sizeof *yq), *yf = malloc((size_t)(MAXM * N) * sizeof *yf);
    float *yc = malloc((size_t)(MAXM * N) * sizeof *yc);
    if (!x || !bias || !yq || !yf || !yc) kw_check(KW_E_NOMEM, "buffers");
    for (int64_t i = 0; i < MAXM * K; ++i)
        x[i] = kw_uniform();
    for (int64_t n = 0; n < N; ++n)
        bias[n] = kw_uniform();
    const double u = ldexp(1.0, -24), gamma = (double)(K + 1) * u / (1.0 - (double)(K + 1) * u);
    for (int with_bias = 0; with_bias < 2; ++with_bias)
        for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; ++mi) {
            const int64_t M = Ms[mi];
            const float *b = with_bias ? bias : NULL;
            kw_mm(gpu, yq, x, &gq, b, M);
            kw_mm(gpu, yf, x, &gf, b, M);
            kw_mm(cpu, yc, x, &cq, b, M);
            kw_expect(memcmp(yq, yf, (size_t)(M * N) * sizeof *yq) == 0,
                      "%s M %lld, N %lld, K %lld, bias %d: quantized and f32 weights differ in bits", name,
                      (long long)M, (long long)N, (long long)K, with_bias);
            int within = 1;
            for (int64_t m = 0; m < M; ++m)
                for (int64_t n = 0; n < N; ++n) {
                    double mag = b ? fabs((double)b[n]) : 0.0;
                    for (int64_t k = 0; k < K; ++k)
                        mag += fabs((double)x[m * K + k] * (double)w[n * K + k]);
                    const double diff = fabs((double)yq[m * N + n] - (double)yc[m * N + n]);
                    if (!(diff <= 2.0 * gamma * mag)) {
                        if (within)
                            fprintf(stderr, "  (%lld, %lld): gpu %.9g cpu %.9g, bound %.3g\n", (long long)m,
                                    (long long)n, (double)yq[m * N + n], (double)yc[m * N + n], 2.0 * gamma * mag);
                        within = 0;
                    }
                }
            kw_expect(within, "%s M %lld, N %lld, K %lld, bias %d: gpu and cpu beyond the summation-order bound", name,
                      (long long)M, (long long)N, (long long)K, with_bias);
        }

    /* a changed code changes the result: the comparisons above can fail */
    d.codes[(N - 1) * K + K - 1] = (int8_t)(d.codes[(N - 1) * K + K - 1] == 0 ? 1 : 0);
    kw_tensor gq2;
    kw_check(kw_tensor_pack_quantized(gpu, &d.q, &gq2), "pack the changed weight");
    kw_mm(gpu, yq, x, &gq2, NULL, 1);
    kw_mm(gpu, yf, x, &gf, NULL, 1);
    kw_expect(memcmp(yq, yf, (size_t)N * sizeof *yq) != 0, "%s N %lld, K %lld: a changed code went unseen", name,
              (long long)N, (long long)K);
    kw_tensor_free(&gq2);

    /* get_rows on the quantized table: the oracle's rows, bit for bit; a bad id is reported at synchronize */
    const int32_t ids[5] = {0, (int32_t)(N - 1), (int32_t)(N / 2), 1, (int32_t)(N - 2)};
    kw_tensor tid = kw_dev(gpu, 1, (int64_t[]){5}, ids, KW_DTYPE_I32), trow;
    kw_check(kw_tensor_alloc(gpu, &trow, KW_DTYPE_F32, 2, (int64_t[]){5, K}), "rows");
    kw_check(kw_op_get_rows(gpu, &trow, &gq, &tid), "get_rows");
    float *rows = malloc((size_t)(5 * K) * sizeof *rows);
    if (!rows) kw_check(KW_E_NOMEM, "rows");
    kw_check(kw_backend_download(gpu, rows, &trow, 0, (size_t)(5 * K) * sizeof *rows), "download rows");
    kw_check(kw_backend_synchronize(gpu), "synchronize");
    int same = 1;
    for (int i = 0; i < 5; ++i)
        same = same && memcmp(rows + i * K, w + ids[i] * K, (size_t)K * sizeof *rows) == 0;
    kw_expect(same, "%s get_rows (N %lld, K %lld): not the oracle's rows", name, (long long)N, (long long)K);
    const int32_t bad = (int32_t)N;
    kw_check(kw_backend_upload(gpu, &tid, sizeof bad, &bad, sizeof bad), "upload a bad id");
    kw_check(kw_op_get_rows(gpu, &trow, &gq, &tid), "get_rows");
    kw_expect(kw_backend_synchronize(gpu) == KW_E_TOKEN_ID, "%s get_rows (N %lld, K %lld): bad id unseen", name,
              (long long)N, (long long)K);
    free(rows);
    kw_tensor_free(&tid), kw_tensor_free(&trow);

    kw_tensor_free(&gq), kw_tensor_free(&gf), kw_tensor_free(&cq);
    free(x), free(bias), free(yq), free(yf), free(yc), free(w);
    kw_qdata_free(&d);
}

int main(void) {
    kw_backend *gpu = NULL, *cpu = NULL;
    const int rc = kw_create_gpu(0, &gpu);
    if (rc == KW_E_UNSUPPORTED || rc == KW_E_NO_DEVICE) {
        printf("skipped: %s (%s)\n", kw_status_name(rc), kw_error_detail());
        return 77;
    }
    kw_check(rc, "create the gpu backend");
    kw_check(kw_backend_create_cpu(1, &cpu), "create the cpu backend");
    /* the X8 and super-block layouts are the CPU's: a model on the GPU keeps Q4_K and Q6_K in U4 and S8_G16 */
    if (kw_backend_supports_layout(gpu, KW_LAYOUT_QPANELS_U4_SB) ||
        kw_backend_supports_layout(gpu, KW_LAYOUT_QPANELS_S8_G16_SB) ||
        kw_backend_supports_layout(gpu, KW_LAYOUT_QPANELS_S6_G16_SB) ||
        kw_backend_supports_layout(gpu, KW_LAYOUT_QPANELS_U4_SB_X8) ||
        kw_backend_supports_layout(gpu, KW_LAYOUT_QPANELS_S8_G16_SB_X8) ||
        kw_backend_supports_layout(gpu, KW_LAYOUT_QPANELS_S6_G16_SB_X8) ||
        kw_backend_supports_layout(gpu, KW_LAYOUT_QPANELS_S8_X8) ||
        kw_backend_cpu_layout_fast(gpu, KW_LAYOUT_QPANELS_S8_G16_SB) ||
        !kw_backend_supports_layout(cpu, KW_LAYOUT_QPANELS_U4_SB))
        kw_check(KW_E_INTERNAL, "the super-block layouts are the CPU backend's only");
    for (int l = KW_LAYOUT_QPANELS_S4; l <= KW_LAYOUT_QPANELS_S8_G16; ++l) {
        kw_quant_layout ql;
        kw_layout_quant((enum kw_layout)l, &ql);
        const int64_t K = ql.group == 16 ? 48 : 96;
        kw_case(gpu, cpu, (enum kw_layout)l, 67, K);
        kw_case(gpu, cpu, (enum kw_layout)l, 131, 3 * K + 2 * ql.group);
    }
    kw_backend_destroy(cpu);
    kw_backend_destroy(gpu);
#ifndef KW_TEST_REAL_CUDA
    kw_cuda_emu_stats st;
    kw_cuda_emu_get_stats(&st);
    printf("emulator: %llu kernels, %llu blocks, %llu fiber switches\n", (unsigned long long)st.kernels,
           (unsigned long long)st.blocks, (unsigned long long)st.switches);
    kw_expect(st.faults == 0, "emulator: a kernel faulted");
    kw_expect(st.live_allocations == 0, "emulator: device allocations left");
#endif
    printf("cuda quantized weights: %zu checks run, %zu failed\n", run, failed);
    return failed == 0 && run > 0 ? 0 : 1;
}
