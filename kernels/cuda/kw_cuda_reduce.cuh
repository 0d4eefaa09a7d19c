/* kw_cuda_reduce.cuh: the warp and block reductions of the CUDA kernels (sum and max over fp32), in a header so that
 * tests/gpu_emu/test_cuda_emu.cu can run them directly: no kernel of kernels/cuda calls one block reduction twice, so
 * only that test sees what the first barrier of kw_block_reduce protects. Device code only; needs the CUDA runtime or
 * the emulator header (kernels/cuda/emu/kw_cuda_emu.h) first. */
#ifndef KW_CUDA_REDUCE_CUH
#define KW_CUDA_REDUCE_CUH

#include <math.h>

/* Every lane of a warp must call the warp ones (full mask); every thread of a block must call the block ones, from
 * uniform control flow (they contain __syncthreads). blockDim.x is a multiple of 32, at most 1024. */
struct kw_sum_op {
    static __device__ __forceinline__ float identity() { return 0.0f; }
    static __device__ __forceinline__ float apply(float a, float b) { return a + b; }
};

struct kw_max_op { /* fmaxf: a NaN operand is ignored, as the oracles' `v > max` comparisons ignore it */
    static __device__ __forceinline__ float identity() { return -INFINITY; }
    static __device__ __forceinline__ float apply(float a, float b) { return fmaxf(a, b); }
};

template <typename Op> __device__ __forceinline__ float kw_warp_reduce(float v) {
    for (int o = 16; o > 0; o >>= 1)
        v = Op::apply(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Block-wide reduction; every thread gets the result. part[] is one array per Op (a __shared__ variable is static),
 * so only a second call with the same Op in one kernel reuses it: the first barrier keeps that call's writes from
 * overwriting part[] while a slow warp still reads the first call's values. */
template <typename Op> __device__ float kw_block_reduce(float v) {
    __shared__ float part[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = kw_warp_reduce<Op>(v);
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    const float s = lane < (int)(blockDim.x >> 5) ? part[lane] : Op::identity();
    return kw_warp_reduce<Op>(s);
}

__device__ __forceinline__ float kw_warp_sum(float v) {
    return kw_warp_reduce<kw_sum_op>(v);
}
__device__ __forceinline__ float kw_block_sum(float v) {
    return kw_block_reduce<kw_sum_op>(v);
}
__device__ __forceinline__ float kw_block_max(float v) {
    return kw_block_reduce<kw_max_op>(v);
}

#endif
