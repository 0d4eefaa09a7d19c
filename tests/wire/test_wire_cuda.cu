/* test_wire_cuda.cu: the KVWire codec math of wire/kw_wire_quant.h compiled for the GPU (KW_HD = __host__
 * __device__) must give the same bytes and values as on the CPU: scale choice, quantization and packing of rows of
 * every codec, and dequantization of arbitrary bytes (reserved codes included). Exits 77 (skipped) without a device. */
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <cuda_runtime.h>

#include "wire/kw_wire_quant.h"

enum { ROWS = 4096, N = 64 };

struct row_case {
    uint32_t codec, scale_dtype;
};

__global__ void kw_test_quant_kernel(const float *x, const row_case *cases, uint8_t *codes, uint32_t *scale_codes,
                                     int *scale_rc, const uint8_t *src, float *deq, int *deq_rc) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= ROWS) return;
    const row_case c = cases[r];
    float amax = 0.0f;
    for (int i = 0; i < N; ++i)
        amax = fmaxf(amax, fabsf(x[r * N + i]));
    float s = 0.0f;
    scale_rc[r] = kw_wire_scale_choose(amax, kw_wire_codec_qmax(c.codec), c.scale_dtype, &scale_codes[r], &s);
    uint8_t *dst = codes + (size_t)r * N; /* room for 8-bit codes */
    if (scale_rc[r] == 0) {
        if (s == 0.0f)
            kw_wire_zero_row(c.codec, N, dst);
        else
            kw_wire_quantize_row(c.codec, x + r * N, N, 1.0f / s, dst);
    }
    deq_rc[r] = kw_wire_dequantize_row(c.codec, src + (size_t)r * N, N, 0.37f, deq + r * N);
}

#define CK(e)                                                                                                          \
    do {                                                                                                               \
        cudaError_t err_ = (e);                                                                                        \
        if (err_ != cudaSuccess) {                                                                                     \
            fprintf(stderr, "%s: %s\n", #e, cudaGetErrorString(err_));                                                 \
            return 1;                                                                                                  \
        }                                                                                                              \
    } while (0)

int main() {
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
        printf("no CUDA device: skipped\n");
        return 77;
    }
    std::vector<float> x(ROWS * N);
    std::vector<row_case> cases(ROWS);
    std::vector<uint8_t> src(ROWS * N);
    uint64_t st = 12345;
    auto next = [&]() {
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        return (uint32_t)(st >> 33);
    };
    for (int r = 0; r < ROWS; ++r) {
        cases[r].codec = KW_WIRE_CODEC_INT8 + next() % 6;
        cases[r].scale_dtype = 1 + next() % 4;
        const float mag = ldexpf(1.0f, (int)(next() % 40) - 20);
        for (int i = 0; i < N; ++i) {
            x[r * N + i] = ((float)(next() % 20001) / 10000.0f - 1.0f) * mag;
            if (r % 17 == 0) x[r * N + i] = (float)((int)(next() % 15) - 7) + 0.5f; /* rounding ties */
            if (r % 31 == 0) x[r * N + i] = 0.0f;
        }
        for (int i = 0; i < N; ++i)
            src[r * N + i] = (uint8_t)next();
    }
    float *dx, *ddeq;
    row_case *dcases;
    uint8_t *dcodes, *dsrc;
    uint32_t *dscodes;
    int *dsrc_rc, *ddeq_rc;
    CK(cudaMalloc(&dx, x.size() * 4));
    CK(cudaMalloc(&ddeq, x.size() * 4));
    CK(cudaMalloc(&dcases, ROWS * sizeof(row_case)));
    CK(cudaMalloc(&dcodes, ROWS * N));
    CK(cudaMalloc(&dsrc, ROWS * N));
    CK(cudaMalloc(&dscodes, ROWS * 4));
    CK(cudaMalloc(&dsrc_rc, ROWS * 4));
    CK(cudaMalloc(&ddeq_rc, ROWS * 4));
    CK(cudaMemcpy(dx, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dcases, cases.data(), ROWS * sizeof(row_case), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dsrc, src.data(), ROWS * N, cudaMemcpyHostToDevice));
    CK(cudaMemset(dcodes, 0, ROWS * N));
    kw_test_quant_kernel<<<ROWS / 128, 128>>>(dx, dcases, dcodes, dscodes, dsrc_rc, dsrc, ddeq, ddeq_rc);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    std::vector<uint8_t> gcodes(ROWS * N);
    std::vector<uint32_t> gscodes(ROWS);
    std::vector<int> gsrc_rc(ROWS), gdeq_rc(ROWS);
    std::vector<float> gdeq(ROWS * N);
    CK(cudaMemcpy(gcodes.data(), dcodes, ROWS * N, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(gscodes.data(), dscodes, ROWS * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(gsrc_rc.data(), dsrc_rc, ROWS * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(gdeq_rc.data(), ddeq_rc, ROWS * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(gdeq.data(), ddeq, ROWS * N * 4, cudaMemcpyDeviceToHost));
    int bad = 0;
    for (int r = 0; r < ROWS && bad < 10; ++r) {
        const row_case c = cases[r];
        float amax = 0.0f;
        for (int i = 0; i < N; ++i)
            amax = fmaxf(amax, fabsf(x[r * N + i]));
        uint32_t code = 0;
        float s = 0.0f;
        const int rc = kw_wire_scale_choose(amax, kw_wire_codec_qmax(c.codec), c.scale_dtype, &code, &s);
        uint8_t codes[N] = {0};
        if (rc == 0) {
            if (s == 0.0f)
                kw_wire_zero_row(c.codec, N, codes);
            else
                kw_wire_quantize_row(c.codec, &x[r * N], N, 1.0f / s, codes);
        }
        float deq[N];
        const int drc = kw_wire_dequantize_row(c.codec, &src[r * N], N, 0.37f, deq);
        const size_t bytes = (size_t)N * kw_wire_codec_bits(c.codec) / 8;
        if (rc != gsrc_rc[r] || (rc == 0 && code != gscodes[r]) || memcmp(codes, &gcodes[r * N], bytes) != 0 ||
            drc != gdeq_rc[r] || memcmp(deq, &gdeq[r * N], sizeof deq) != 0) {
            fprintf(stderr, "row %d (codec %u, scale %u): GPU differs from CPU\n", r, c.codec, c.scale_dtype);
            ++bad;
        }
    }
    cudaFree(dx);
    cudaFree(ddeq);
    cudaFree(dcases);
    cudaFree(dcodes);
    cudaFree(dsrc);
    cudaFree(dscodes);
    cudaFree(dsrc_rc);
    cudaFree(ddeq_rc);
    printf("%d rows compared, %d differ\n", ROWS, bad);
    return bad ? 1 : 0;
}
