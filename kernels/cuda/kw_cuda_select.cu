/* kw_cuda_select.cu: the sharer's norm selection on the GPU (kw_cuda_wire.h): per-token scores and their top-k,
 * giving the positions c2c/kw_select.c gives for knorm_topk / vnorm_topk, bit for bit. The arithmetic is
 * kernels/kw_select_math.h (this file is built with --fmad=false so no product is fused into a sum); the loops
 * are this file's own.
 *
 * Scores: a block takes 256 / H tokens, a thread one (token, head) row norm into shared memory, then one thread per
 * token adds its H norms in head order. Top-k: one block; a radix select over the 64-bit kw_selm_key (8 passes of
 * 8 bits, histograms in shared memory) finds the k-th best key exactly (keys are distinct: they hold the position),
 * then an order-preserving compaction (a block scan per chunk of 256 tokens) writes the chosen positions ascending.
 */
#include "kernels/cuda/kw_cuda.cuh"

#include <math.h>

#include "kernels/cuda/kw_cuda_wire.h"
#include "kernels/kw_op_math.h"
#include "kernels/kw_select_math.h"

#define KW_SEL_BLOCK 256 /* threads per block of both kernels; also the largest H */

__global__ void __launch_bounds__(KW_SEL_BLOCK)
    kw_k_select_scores(const void *x, enum kw_dtype dtype, int64_t T, int32_t H, int32_t D, int64_t token_stride,
                       int64_t head_stride, float *score) {
    __shared__ float norms[KW_SEL_BLOCK];
    const int per_block = KW_SEL_BLOCK / H;
    const int lt = (int)threadIdx.x / H, h = (int)threadIdx.x % H;
    for (int64_t base = (int64_t)blockIdx.x * per_block; base < T; base += (int64_t)gridDim.x * per_block) {
        const int64_t t = base + lt;
        if (lt < per_block && t < T)
            norms[threadIdx.x] = kw_selm_row_norm(x, dtype, t * token_stride + h * head_stride, D);
        __syncthreads();
        if ((int)threadIdx.x < per_block && base + threadIdx.x < T) {
            float sum = 0.0f;
            for (int j = 0; j < H; ++j)
                sum += norms[threadIdx.x * H + j];
            score[base + threadIdx.x] = kw_selm_score(sum, H);
        }
        __syncthreads(); /* norms[] is rewritten by the next chunk */
    }
}

__global__ void __launch_bounds__(KW_SEL_BLOCK)
    kw_k_select_topk(const float *score, uint32_t T, uint32_t k, uint32_t *out, uint32_t *count) {
    __shared__ unsigned int hist[256];
    __shared__ unsigned int scan[KW_SEL_BLOCK];
    __shared__ unsigned long long prefix; /* the high bytes of the k-th best key found so far */
    __shared__ unsigned int need;         /* its rank among the keys sharing that prefix (1-based) */
    __shared__ unsigned int chosen;       /* min(k, finite scores) */
    __shared__ unsigned int written;
    const unsigned int tid = threadIdx.x;
    if (tid == 0) {
        prefix = 0;
        need = k;
        written = 0;
    }
    for (int shift = 56; shift >= 0; shift -= 8) {
        for (unsigned int i = tid; i < 256; i += blockDim.x)
            hist[i] = 0;
        __syncthreads();
        const unsigned long long high = shift == 56 ? 0ull : ~0ull << (shift + 8);
        for (uint32_t t = tid; t < T; t += blockDim.x) {
            const uint64_t key = kw_selm_key(score[t], t);
            if (key != 0 && (key & high) == (prefix & high)) atomicAdd(&hist[(key >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (tid == 0) {
            if (shift == 56) {
                unsigned int finite = 0;
                for (int b = 0; b < 256; ++b)
                    finite += hist[b];
                need = need < finite ? need : finite;
                chosen = need;
            }
            if (need > 0) {
                unsigned int above = 0; /* keys in higher bins */
                int b = 255;
                while (above + hist[b] < need)
                    above += hist[b--];
                prefix |= (unsigned long long)b << shift;
                need -= above;
            }
        }
        __syncthreads();
        if (chosen == 0) break; /* uniform: every thread reads the same shared value */
    }
    /* chosen > 0: exactly the keys >= prefix (the k-th best) are chosen; write them in position order */
    for (uint32_t base = 0; chosen > 0 && base < T; base += blockDim.x) {
        const uint32_t t = base + tid;
        const unsigned int flag = t < T && kw_selm_key(score[t], t) >= prefix ? 1u : 0u;
        scan[tid] = flag;
        __syncthreads();
        for (unsigned int off = 1; off < blockDim.x; off <<= 1) { /* inclusive scan (Hillis-Steele) */
            const unsigned int v = tid >= off ? scan[tid - off] : 0u;
            __syncthreads();
            scan[tid] += v;
            __syncthreads();
        }
        if (flag) out[written + scan[tid] - 1] = t;
        __syncthreads();
        if (tid == blockDim.x - 1) written += scan[tid];
        __syncthreads();
    }
    if (tid == 0) *count = chosen;
}

extern "C" int kw_cuda_select_scores(void *stream, const void *d_x, enum kw_dtype dtype, int64_t T, int32_t H,
                                     int32_t D, int64_t token_stride, int64_t head_stride, float *d_score) {
    KW_RETURN_IF(!d_x || !d_score || T < 1 || H < 1 || H > KW_SEL_BLOCK || D < 1 || token_stride < 0 || head_stride < 0,
                 KW_E_INVALID_ARG, "select scores: bad arguments (T %lld, H %d, D %d)", (long long)T, (int)H, (int)D);
    KW_RETURN_IF(dtype != KW_DTYPE_F32 && dtype != KW_DTYPE_BF16 && dtype != KW_DTYPE_F16, KW_E_INVALID_ARG,
                 "select scores: dtype %d is not f32, bf16 or f16", (int)dtype);
    const int per_block = KW_SEL_BLOCK / H;
    KW_CUDA_LAUNCH(kw_k_select_scores, kw_opm_grid_blocks(T, per_block), KW_SEL_BLOCK, 0, (cudaStream_t)stream, d_x,
                   dtype, T, H, D, token_stride, head_stride, d_score);
    KW_CUDA_LAUNCHED();
    return 0;
}

extern "C" int kw_cuda_select_topk(void *stream, const float *d_score, int64_t T, int64_t k, uint32_t *d_out,
                                   uint32_t *d_count) {
    KW_RETURN_IF(!d_score || !d_out || !d_count || T < 1 || T > (int64_t)KW_CUDA_SELECT_MAX_TOKENS || k < 0,
                 KW_E_INVALID_ARG, "select top-k: bad arguments (T %lld, k %lld)", (long long)T, (long long)k);
    const uint32_t kk = (uint32_t)(k < T ? k : T);
    KW_CUDA_LAUNCH(kw_k_select_topk, 1, KW_SEL_BLOCK, 0, (cudaStream_t)stream, d_score, (uint32_t)T, kk, d_out,
                   d_count);
    KW_CUDA_LAUNCHED();
    return 0;
}

/* kw_backend.h's kw_op_select_scores / kw_op_select_topk (validated) on the backend's stream. */
int kw__cuda_select_scores(kw_backend *backend, kw_tensor *score, const kw_tensor *cache, int64_t pos0) {
    KW_CUDA_ENTER(cu, backend);
    const int64_t D = cache->ne[2];
    const char *x = (const char *)cache->data + (size_t)pos0 * (size_t)D * kw_dtype_size(cache->dtype);
    return kw_cuda_select_scores(cu->stream, x, cache->dtype, kw_tensor_nelem(score), (int32_t)cache->ne[0], (int32_t)D,
                                 D, cache->ne[1] * D, (float *)score->data);
}

int kw__cuda_select_topk(kw_backend *backend, kw_tensor *out, kw_tensor *count, const kw_tensor *score, int64_t k) {
    KW_CUDA_ENTER(cu, backend);
    return kw_cuda_select_topk(cu->stream, (const float *)score->data, kw_tensor_nelem(score), k, (uint32_t *)out->data,
                               (uint32_t *)count->data);
}
