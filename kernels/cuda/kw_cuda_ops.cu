/* kw_cuda_ops.cu: the CUDA backend's kernels other than cuBLAS: streaming GEMV, weight widening, weights kept quantized
 * (the packing of their device layout; the GEMV, widening and get_rows kernels read them through kw_cuda_qweight),
 * bias, embedding lookup, RMSNorm, RoPE, attention, KV store/load, activations, add, scale, softmax, argmax and copy.
 *
 * The numerics follow the CPU backend and kernels/ref: fp32 throughout; the per-element rules (dtype loads and
 * stores, activations, RMSNorm's scale, the RoPE rotation, the attention span, argmax's candidate order, KV
 * indexing) and the grid arithmetic are the KW_HD functions of kernels/kw_op_math.h, the lines the CPU backend runs
 * and tests/kernels/test_op_math.c checks; attention is a two-pass softmax (max, then exp and weighted sum,
 * recomputing the scores) so that no rescaling error accumulates. Straightforward kernels: correct first; not tuned on
 * real hardware (no GPU was available while writing them).
 */
#include "kernels/cuda/kw_cuda.cuh"
#include "kernels/cuda/kw_cuda_reduce.cuh"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kw_kvq_format.h"
#include "kernels/kw_op_math.h"

#define KW_BLOCK 256

/* ------------------------------------------------------------------------------------------------------------
 * Matmul helpers
 */

/* The kernels below read a weight through W: kw_cuda_dense (row-major f32/bf16/f16) or kw_cuda_qweight (kept quantized,
 * dequantized in registers). Both give the value of element (n, k) as an f32 and everything after the load is the same
 * code, so a quantized weight gives the bits of its dequantized f32 weight (kw_ref_quant_dequant) on every path. */

template <typename W> __global__ void kw_k_widen_rows(float *dst, W w, int64_t n0, int64_t K, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = w(n0 + i / K, i % K);
}

int kw__cuda_widen_rows(kw_cuda_backend *cu, float *dst, const kw_tensor *w, int64_t n0, int64_t rows) {
    const int64_t K = w->ne[1], n = rows * K;
    if (w->layout != KW_LAYOUT_ROWS) {
        KW_CUDA_LAUNCH(kw_k_widen_rows<kw_cuda_qweight>, kw_opm_grid_blocks(n, KW_BLOCK), KW_BLOCK, 0, cu->stream, dst,
                       kw__cuda_qweight(w), n0, K, n);
    } else {
        const kw_cuda_dense d = {w->data, w->dtype, K};
        KW_CUDA_LAUNCH(kw_k_widen_rows<kw_cuda_dense>, kw_opm_grid_blocks(n, KW_BLOCK), KW_BLOCK, 0, cu->stream, dst, d,
                       n0, K, n);
    }
    KW_CUDA_LAUNCHED();
    return 0;
}

__global__ void kw_k_round_bf16(uint16_t *dst, const float *x, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = kw_f32_to_bf16(x[i]);
}

int kw__cuda_round_bf16(kw_cuda_backend *cu, uint16_t *dst, const float *x, int64_t n) {
    KW_CUDA_LAUNCH(kw_k_round_bf16, kw_opm_grid_blocks(n, KW_BLOCK), KW_BLOCK, 0, cu->stream, dst, x, n);
    KW_CUDA_LAUNCHED();
    return 0;
}

/* One warp per output row n: lanes stride over K (lane l sums k = l, l + 32, ... in ascending order), then a warp
 * reduction; each x row is reread from L1/L2. */
template <typename W> __global__ void kw_k_gemv(float *y, const float *x, W w, int64_t M, int64_t N, int64_t K) {
    const int lane = threadIdx.x & 31;
    const int64_t n = blockIdx.x * (int64_t)(blockDim.x >> 5) + (threadIdx.x >> 5);
    if (n >= N) return;
    float acc[KW_CUDA_GEMV_ROWS];
    for (int m = 0; m < KW_CUDA_GEMV_ROWS; ++m)
        acc[m] = 0.0f;
    for (int64_t k = lane; k < K; k += 32) {
        const float wv = w(n, k);
        for (int m = 0; m < KW_CUDA_GEMV_ROWS; ++m)
            if (m < M) acc[m] += x[m * K + k] * wv;
    }
    for (int m = 0; m < KW_CUDA_GEMV_ROWS; ++m) {
        if (m >= M) break;
        const float s = kw_warp_sum(acc[m]);
        if (lane == 0) y[m * N + n] = s;
    }
}

template <typename W>
static int kw_gemv_run(kw_cuda_backend *cu, float *y, const float *x, W w, int64_t M, int64_t N, int64_t K) {
    for (int64_t m0 = 0; m0 < M; m0 += KW_CUDA_GEMV_ROWS) {
        const int64_t rows = M - m0 < KW_CUDA_GEMV_ROWS ? M - m0 : KW_CUDA_GEMV_ROWS;
        KW_CUDA_LAUNCH(kw_k_gemv<W>, (unsigned)((N + 7) / 8), 256, 0, cu->stream, y + m0 * N, x + m0 * K, w, rows, N,
                       K);
        KW_CUDA_LAUNCHED();
    }
    return 0;
}

int kw__cuda_gemv(kw_cuda_backend *cu, float *y, const float *x, const kw_tensor *w, int64_t M, int64_t N, int64_t K) {
    KW_RETURN_IF((N + 7) / 8 > INT32_MAX, KW_E_UNSUPPORTED, "cuda matmul: %lld output columns", (long long)N);
    if (w->layout != KW_LAYOUT_ROWS) return kw_gemv_run(cu, y, x, kw__cuda_qweight(w), M, N, K);
    const kw_cuda_dense d = {w->data, w->dtype, K};
    return kw_gemv_run(cu, y, x, d, M, N, K);
}

/* ------------------------------------------------------------------------------------------------------------
 * Weights kept quantized: the layout (kw_cuda.cuh) and its packing
 */

void kw__cuda_qparts(enum kw_layout layout, int64_t N, int64_t K, kw_cuda_qparts *out) {
    kw_quant_layout ql;
    kw_layout_quant(layout, &ql);
    out->rows_pad = (N + KW_PANEL_ROWS - 1) / KW_PANEL_ROWS * KW_PANEL_ROWS;
    out->row_bytes = K * ql.code_bits / 8;
    out->groups = K / ql.group;
    out->codes = 0;
    out->scales = (size_t)(out->rows_pad * out->row_bytes);
    out->offsets = ql.has_offset ? out->scales + (size_t)(out->rows_pad * out->groups) * sizeof(float) : 0;
}

kw_cuda_qweight kw__cuda_qweight(const kw_tensor *w) {
    kw_quant_layout ql;
    kw_layout_quant(w->layout, &ql);
    kw_cuda_qparts p;
    kw__cuda_qparts(w->layout, w->ne[0], w->ne[1], &p);
    const char *base = (const char *)w->data;
    kw_cuda_qweight q;
    q.codes = (const uint8_t *)base + p.codes;
    q.scales = (const float *)(base + p.scales);
    q.offsets = ql.has_offset ? (const float *)(base + p.offsets) : NULL;
    q.row_bytes = p.row_bytes;
    q.groups = p.groups;
    q.bits = ql.code_bits;
    q.group_shift = ql.group == 16 ? 4 : 5;
    q.code_min = ql.code_min;
    return q;
}

int kw__cuda_pack_quantized(kw_backend *backend, const kw_quant_rows *q, kw_tensor *packed) {
    KW_CUDA_ENTER(cu, backend);
    kw_quant_layout ql;
    kw_layout_quant(q->layout, &ql);
    const int64_t ne[2] = {q->n, q->k};
    kw_tensor t;
    KW_FORWARD(kw__tensor_alloc_layout(backend, &t, KW_DTYPE_F32, 2, ne, q->layout));
    const size_t nbytes = kw_tensor_nbytes(&t);
    kw_cuda_qparts p;
    kw__cuda_qparts(q->layout, q->n, q->k, &p);
    /* the whole tensor is built in host memory (zero rows past N) and uploaded in one copy */
    uint8_t *host = (uint8_t *)calloc(1, nbytes);
    if (host == NULL) {
        kw_tensor_free(&t);
        KW_FAIL(KW_E_NOMEM, "cuda: %zu bytes to pack a quantized weight", nbytes);
    }
    for (int64_t n = 0; n < q->n; ++n) {
        uint8_t *row = host + p.codes + (size_t)(n * p.row_bytes);
        const int8_t *src = q->codes + n * q->k;
        for (int64_t k = 0; k < q->k; ++k) {
            if (ql.code_bits == 8)
                row[k] = (uint8_t)src[k];
            else
                row[k >> 1] |= (uint8_t)((unsigned)(src[k] - ql.code_min) << ((k & 1) * 4));
        }
    }
    const size_t scale_bytes = (size_t)(q->n * p.groups) * sizeof(float); /* rows [0, N): row-major as given */
    memcpy(host + p.scales, q->scales, scale_bytes);
    if (ql.has_offset) memcpy(host + p.offsets, q->offsets, scale_bytes);
    cudaError_t err = cudaMemcpyAsync(t.data, host, nbytes, cudaMemcpyHostToDevice, cu->stream);
    if (err == cudaSuccess) err = cudaStreamSynchronize(cu->stream); /* host is freed next */
    free(host);
    if (err != cudaSuccess) {
        kw_tensor_free(&t);
        return kw__cuda_fail(err, "cuda: uploading a quantized weight");
    }
    *packed = t;
    return 0;
}

__global__ void kw_k_add_bias(float *y, const void *bias, enum kw_dtype dtype, int64_t M, int64_t N) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < M * N; i += (int64_t)gridDim.x * blockDim.x)
        y[i] += kw_opm_load(bias, dtype, i % N);
}

int kw__cuda_add_bias(kw_cuda_backend *cu, float *y, const void *bias, enum kw_dtype dtype, int64_t M, int64_t N) {
    KW_CUDA_LAUNCH(kw_k_add_bias, kw_opm_grid_blocks(M * N, KW_BLOCK), KW_BLOCK, 0, cu->stream, y, bias, dtype, M, N);
    KW_CUDA_LAUNCHED();
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * get_rows
 */

/* One block per id. A bad id zeroes its row and is recorded in err (see kw_cuda_err) for synchronize. */
template <typename W>
__global__ void kw_k_get_rows(float *out, W table, int64_t V, int64_t D, const int32_t *ids, kw_cuda_err *err,
                              unsigned int launch) {
    const int64_t t = blockIdx.x;
    const int32_t id = ids[t];
    const int bad = id < 0 || id >= V;
    if (bad && threadIdx.x == 0) {
        const unsigned int owner = atomicCAS(&err->launch, 0u, launch);
        if (owner == 0u || owner == launch) {
            atomicMax(&err->key, (unsigned long long)kw_opm_bad_id_key(t, id));
            err->table_rows = V; /* the same value from every block of the launch */
        }
    }
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
        out[t * D + d] = bad ? 0.0f : table(id, d);
}

int kw__cuda_get_rows(kw_backend *backend, kw_tensor *out, const kw_tensor *table, const kw_tensor *ids) {
    KW_CUDA_ENTER(cu, backend);
    const int64_t T = kw_tensor_nelem(ids), V = table->ne[0], D = table->ne[1];
    KW_RETURN_IF(T > INT32_MAX, KW_E_UNSUPPORTED, "cuda get_rows: too many ids");
    if (++cu->get_rows_launches == 0) ++cu->get_rows_launches;
    float *o = (float *)out->data;
    const int32_t *id = (const int32_t *)ids->data;
    if (table->layout != KW_LAYOUT_ROWS) {
        KW_CUDA_LAUNCH(kw_k_get_rows<kw_cuda_qweight>, (unsigned)T, 128, 0, cu->stream, o, kw__cuda_qweight(table), V,
                       D, id, cu->d_err, cu->get_rows_launches);
    } else {
        const kw_cuda_dense d = {table->data, table->dtype, D};
        KW_CUDA_LAUNCH(kw_k_get_rows<kw_cuda_dense>, (unsigned)T, 128, 0, cu->stream, o, d, V, D, id, cu->d_err,
                       cu->get_rows_launches);
    }
    KW_CUDA_LAUNCHED();
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * rms_norm: one block per row
 */

__global__ void kw_k_rms_norm(float *out, const float *x, const void *w, enum kw_dtype dtype, int64_t D, float eps,
                              int unit_offset) {
    const float *xr = x + blockIdx.x * D;
    float *yr = out + blockIdx.x * D;
    float ss = 0.0f;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
        ss += xr[d] * xr[d];
    ss = kw_block_sum(ss);
    const float inv_rms = kw_opm_rms_scale(ss, D, eps);
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
        float wd = kw_opm_load(w, dtype, d);
        if (unit_offset) wd = 1.0f + wd;
        yr[d] = (xr[d] * inv_rms) * wd;
    }
}

int kw__cuda_rms_norm(kw_backend *backend, kw_tensor *out, const kw_tensor *x, const kw_tensor *w, float eps,
                      int flags) {
    KW_CUDA_ENTER(cu, backend);
    const int64_t D = x->ne[x->ndim - 1], R = kw_tensor_nrows(x);
    KW_RETURN_IF(R > INT32_MAX, KW_E_UNSUPPORTED, "cuda rms_norm: too many rows");
    KW_CUDA_LAUNCH(kw_k_rms_norm, (unsigned)R, D >= 256 ? 256 : 64, 0, cu->stream, (float *)out->data,
                   (const float *)x->data, w->data, w->dtype, D, eps, flags & KW_RMS_NORM_UNIT_OFFSET);
    KW_CUDA_LAUNCHED();
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * rope: one block per (token, head); the frequency table travels by value
 */

struct kw_rope_table {
    float inv_freq[KW_ROPE_MAX_DIM / 2];
};

__global__ void kw_k_rope(float *x, const int32_t *pos, int64_t H, int64_t D, int64_t half, kw_rope_table tab) {
    const int64_t t = blockIdx.x / H;
    float *xh = x + blockIdx.x * D;
    for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
        float s, c;
        sincosf(kw_opm_rope_angle(pos[t], tab.inv_freq[i]), &s, &c); /* within 2 ulp over the whole range */
        kw_opm_rope_rotate(&xh[i], &xh[i + half], c, s);
    }
}

int kw__cuda_rope(kw_backend *backend, kw_tensor *x, const kw_tensor *pos, const kw_rope_params *params) {
    KW_CUDA_ENTER(cu, backend);
    const int64_t T = x->ne[0], H = x->ne[1], D = x->ne[2];
    KW_RETURN_IF(T * H > INT32_MAX, KW_E_UNSUPPORTED, "cuda rope: too many rows");
    kw_rope_table tab;
    kw__rope_inv_freq(params, tab.inv_freq);
    KW_CUDA_LAUNCH(kw_k_rope, (unsigned)(T * H), 64, 0, cu->stream, (float *)x->data, (const int32_t *)pos->data, H, D,
                   params->rotary_dim / 2, tab);
    KW_CUDA_LAUNCHED();
    return 0;
}

/* rope_table: one block per (token, head), the cos and sin read from the table. The products and sums are the
 * correctly rounded intrinsics, so that nvcc's default --fmad=true fuses none of them: kw_ref_rope_apply's bits. */
__global__ void kw_k_rope_table(float *x, const float *table, int64_t H, int64_t D, int64_t half) {
    const int64_t t = blockIdx.x / H;
    float *xh = x + blockIdx.x * D;
    const float *row = table + t * half * 2;
    for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
        const float c = row[2 * i], s = row[2 * i + 1], x0 = xh[i], x1 = xh[i + half];
        xh[i] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
        xh[i + half] = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x0, s));
    }
}

int kw__cuda_rope_table(kw_backend *backend, kw_tensor *x, const kw_tensor *table) {
    KW_CUDA_ENTER(cu, backend);
    const int64_t T = x->ne[0], H = x->ne[1], D = x->ne[2];
    KW_RETURN_IF(T * H > INT32_MAX, KW_E_UNSUPPORTED, "cuda rope_table: too many rows");
    KW_CUDA_LAUNCH(kw_k_rope_table, (unsigned)(T * H), 64, 0, cu->stream, (float *)x->data, (const float *)table->data,
                   H, D, table->ne[1]);
    KW_CUDA_LAUNCHED();
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * attention: a two-pass softmax. Pass 1 finds the maximum score m of the query's visible rows, pass 2 sums
 * exp(score - m) and the weighted V rows, recomputing the scores, so that no rescaling error accumulates. Warps of
 * a block stride over cache rows, lanes over the head dimension, NPL dimensions per lane in registers
 * (kw_opm_attn_dims_per_lane: the smallest power of two with 32 NPL >= D, so D = 128 keeps 4 accumulators per lane
 * instead of the 16 that D = 512 needs). The rows are those of kw_opm_attn_span minus kw_opm_attn_masked, the CPU
 * backend's rule. A query that sees no row (the maximum stays -inf) writes zeros; NaN scores propagate to NaN outputs
 * as in the oracle.
 *
 * Short spans or many (token, head) rows: one block of 4 warps per (token, query head), both passes in it. Long
 * spans with few rows (decode on a long context: one block per head would leave most of the GPU idle): the span is
 * cut into chunks of KW_ATTN_CHUNK_ROWS rows, a grid (rows, chunks), and the passes become three kernels: each chunk
 * block writes its maximum; each chunk block takes the maximum over the row's chunks (the same m as above: fmaxf is
 * exact) and writes its sums of exp(score - m) and of the weighted V rows; one block per row adds the chunks' sums and
 * divides. The exponentials are the same numbers as in the one-block kernel and only the order of the sums changes,
 * so the parity bound (any summation order) holds for both paths.
 */

#define KW_ATTN_WARPS      4
#define KW_ATTN_CHUNK_ROWS 256
#define KW_ATTN_MAX_CHUNKS 64

/* Where the kernels below read K and V: a source type with head(kvh), the view of one kv head, whose k(j, d) and
 * v(j, d) are the value of dimension d of cache row j as an f32. The dense cache (kw_attn_dense) widens an f32/bf16
 * element; the paged quantized cache (kw_attn_kvq, kernels/kw_kvq_format.h) rebuilds fl(code * scale) in registers,
 * or widens a bf16 key of the tail page. The arithmetic around the reads is one template, so the quantized cache
 * gives the same bits as the dense kernel on an f32 cache holding those values. */
struct kw_attn_dense_head {
    const void *kc, *vc;
    enum kw_dtype dtype;
    int64_t base, D; /* element offset of the kv head in the caches; head dim */
    __device__ __forceinline__ float k(int64_t j, int64_t d) const { return kw_opm_load(kc, dtype, base + j * D + d); }
    __device__ __forceinline__ float v(int64_t j, int64_t d) const { return kw_opm_load(vc, dtype, base + j * D + d); }
};

struct kw_attn_dense {
    const void *kc, *vc;
    enum kw_dtype dtype;
    int64_t cap, D;
    __device__ __forceinline__ kw_attn_dense_head head(int64_t kvh) const {
        return kw_attn_dense_head{kc, vc, dtype, kvh * cap * D, D};
    }
};

struct kw_attn_kvq_head {
    const uint8_t *kcodes, *kscales, *vcodes, *vscales;
    const uint16_t *ktail;
    enum kw_kvq_codec kcodec, vcodec;
    int64_t krow, vrow, P, D, G, full; /* code bytes per row; page rows; head dim; value group; rows in full pages */
    __device__ __forceinline__ float k(int64_t j, int64_t d) const {
        if (j >= full) return kw_bf16_to_f32(ktail[(j - full) * D + d]);
        return (float)kw_kvq_get_code(kcodes + j * krow, kcodec, d) * kw_kvq_scale(kscales[j / P * D + d]);
    }
    __device__ __forceinline__ float v(int64_t j, int64_t d) const {
        return (float)kw_kvq_get_code(vcodes + j * vrow, vcodec, d) * kw_kvq_scale(vscales[j * (D / G) + d / G]);
    }
};

struct kw_attn_kvq {
    const uint8_t *k, *v;
    kw_kvq_geom kg, vg;
    int64_t full; /* rows of the storages in full key pages (n_rows / P * P) */
    __device__ __forceinline__ kw_attn_kvq_head head(int64_t kvh) const {
        const uint8_t *kh = k + (size_t)kvh * kw_kvq_head_bytes(&kg), *vh = v + (size_t)kvh * kw_kvq_head_bytes(&vg);
        return kw_attn_kvq_head{kh,
                                kh + kw_kvq_scales_offset(&kg),
                                vh,
                                vh + kw_kvq_scales_offset(&vg),
                                (const uint16_t *)(kh + kw_kvq_tail_offset(&kg)),
                                kg.codec,
                                vg.codec,
                                (int64_t)kw_kvq_row_bytes(kg.codec, kg.D),
                                (int64_t)kw_kvq_row_bytes(vg.codec, vg.D),
                                kg.page_tokens,
                                kg.D,
                                kw_kvq_value_group(kg.D),
                                full};
    }
};

/* q . k_j for row j of the kv head kv, summed over the warp: every lane of the warp must call it (full-mask
 * shuffles). Lane l holds dimensions l, l + 32, ... of q in qv. */
template <int NPL, class KV>
__device__ __forceinline__ float kw_attn_dot(const float (&qv)[NPL], const KV &kv, int64_t j, int64_t D, int lane) {
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < NPL; ++i)
        if (lane + 32 * i < D) dot += qv[i] * kv.k(j, lane + 32 * i);
    return kw_warp_sum(dot);
}

/* What a kernel adds to its position arguments: 0 for a plain launch (step NULL), the step's position when it runs in
 * a recorded graph (kw_cuda_backend.cu: the arguments were recorded relative to it). */
__device__ __forceinline__ int64_t kw_step_base(const int64_t *step) {
    return step ? *step : 0;
}

/* What both paths share about one (token, query head) row of the attention. */
struct kw_attn_row {
    int64_t lo, hi;  /* visible rows before the mask, [lo, hi] */
    int64_t kvh;     /* the row's kv head */
    const float *q;  /* the query, D values */
    int64_t q_index; /* t * Hq + h */
};

__device__ __forceinline__ kw_attn_row kw_attn_row_of(int64_t q_index, const float *q, int64_t Hq, int64_t group,
                                                      int64_t D, int64_t q_pos0, int64_t n_kv, const int64_t *step,
                                                      int64_t window) {
    kw_attn_row r;
    const int64_t t = q_index / Hq, h = q_index % Hq, b = kw_step_base(step);
    kw_opm_attn_span(q_pos0 + b + t, n_kv + b, window, &r.lo, &r.hi);
    r.kvh = h / group;
    r.q = q + q_index * D;
    r.q_index = q_index;
    return r;
}

template <int NPL>
__device__ __forceinline__ void kw_attn_load_q(float (&qv)[NPL], const float *q, int64_t D, int lane) {
#pragma unroll
    for (int i = 0; i < NPL; ++i)
        qv[i] = lane + 32 * i < D ? q[lane + 32 * i] : 0.0f;
}

/* Pass 1 over rows [lo, hi] (this warp's share): the maximum score. The branch on the mask depends on j only, so
 * whole warps take it together and every lane reaches the shuffles of kw_warp_sum. */
template <int NPL, class KV>
__device__ __forceinline__ float kw_attn_max(const float (&qv)[NPL], const KV &kv, const uint8_t *mask, int64_t D,
                                             int64_t lo, int64_t hi, float scale, int lane, int warp) {
    float m = -INFINITY;
    for (int64_t j = lo + warp; j <= hi; j += KW_ATTN_WARPS) {
        if (kw_opm_attn_masked(mask, j)) continue;
        m = fmaxf(m, kw_attn_dot<NPL>(qv, kv, j, D, lane) * scale);
    }
    return m;
}

/* Pass 2 over rows [lo, hi] (this warp's share), with the row's maximum m: returns the sum of exp(score - m), adds
 * the weighted V rows to acc. The score is the one pass 1 computed (the same inlined code); were it an ulp off, e
 * would exceed 1 by as little, which the normalization absorbs. */
template <int NPL, class KV>
__device__ __forceinline__ float kw_attn_sum(const float (&qv)[NPL], float (&acc)[NPL], const KV &kv,
                                             const uint8_t *mask, int64_t D, int64_t lo, int64_t hi, float scale,
                                             float m, int lane, int warp) {
    float l = 0.0f;
    for (int64_t j = lo + warp; j <= hi; j += KW_ATTN_WARPS) {
        if (kw_opm_attn_masked(mask, j)) continue;
        const float e = expf(kw_attn_dot<NPL>(qv, kv, j, D, lane) * scale - m);
        l += e;
#pragma unroll
        for (int i = 0; i < NPL; ++i)
            if (lane + 32 * i < D) acc[i] += e * kv.v(j, lane + 32 * i);
    }
    return l;
}

/* Adds the warps' sums through shared memory; *total gets the block's sum of l. With normalize, out[d] (d < D, threads
 * striding) is the block's weighted V sum divided by that total (0 when empty is set: the query sees no row), else
 * the sum itself. Every thread must call it (it holds a barrier). */
template <int NPL>
__device__ __forceinline__ void kw_attn_merge_warps(const float (&acc)[NPL], float l, int64_t D, int lane, int warp,
                                                    int normalize, int empty, float *total, float *out) {
    __shared__ float s_acc[KW_ATTN_WARPS][32 * NPL];
    __shared__ float s_l[KW_ATTN_WARPS];
#pragma unroll
    for (int i = 0; i < NPL; ++i)
        s_acc[warp][lane + 32 * i] = acc[i];
    if (lane == 0) s_l[warp] = l;
    __syncthreads();
    float t = 0.0f;
    for (int w = 0; w < KW_ATTN_WARPS; ++w)
        t += s_l[w];
    *total = t;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
        float s = 0.0f;
        for (int w = 0; w < KW_ATTN_WARPS; ++w)
            s += s_acc[w][d];
        out[d] = !normalize ? s : empty ? 0.0f : s * (1.0f / t);
    }
}

/* One block per (token, query head): both passes. */
template <int NPL, class KVS>
__global__ void __launch_bounds__(32 * KW_ATTN_WARPS)
    kw_k_attention(float *out, const float *q, KVS src, const uint8_t *mask, int64_t Hq, int64_t group, int64_t D,
                   int64_t q_pos0, int64_t n_kv, const int64_t *step, int64_t window, float scale) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const kw_attn_row r = kw_attn_row_of(blockIdx.x, q, Hq, group, D, q_pos0, n_kv, step, window);
    const auto kv = src.head(r.kvh);
    float qv[NPL], acc[NPL];
    kw_attn_load_q<NPL>(qv, r.q, D, lane);
    float m = kw_attn_max<NPL>(qv, kv, mask, D, r.lo, r.hi, scale, lane, warp);
    m = kw_block_max(m); /* every thread: uniform control flow */
    float l = 0.0f;
#pragma unroll
    for (int i = 0; i < NPL; ++i)
        acc[i] = 0.0f;
    if (m != -INFINITY) /* m is the same in every thread, so is the branch */
        l = kw_attn_sum<NPL>(qv, acc, kv, mask, D, r.lo, r.hi, scale, m, lane, warp);
    float total;
    kw_attn_merge_warps<NPL>(acc, l, D, lane, warp, 1, m == -INFINITY, &total, out + r.q_index * D);
}

/* The rows of chunk c of a row's span. */
__device__ __forceinline__ void kw_attn_chunk(const kw_attn_row &r, int64_t c, int64_t *lo, int64_t *hi) {
    *lo = r.lo + c * KW_ATTN_CHUNK_ROWS;
    *hi = r.hi < *lo + KW_ATTN_CHUNK_ROWS - 1 ? r.hi : *lo + KW_ATTN_CHUNK_ROWS - 1;
}

/* Split pass 1: block (row, chunk) writes the chunk's maximum score to part_max[row * chunks + chunk]. */
template <int NPL, class KVS>
__global__ void __launch_bounds__(32 * KW_ATTN_WARPS)
    kw_k_attn_split_max(float *part_max, const float *q, KVS src, const uint8_t *mask, int64_t Hq, int64_t group,
                        int64_t D, int64_t q_pos0, int64_t n_kv, const int64_t *step, int64_t window, float scale) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const kw_attn_row r = kw_attn_row_of(blockIdx.x, q, Hq, group, D, q_pos0, n_kv, step, window);
    const auto kv = src.head(r.kvh);
    int64_t lo, hi;
    kw_attn_chunk(r, blockIdx.y, &lo, &hi);
    float qv[NPL];
    kw_attn_load_q<NPL>(qv, r.q, D, lane);
    const float m = kw_block_max(kw_attn_max<NPL>(qv, kv, mask, D, lo, hi, scale, lane, warp));
    if (threadIdx.x == 0) part_max[blockIdx.x * gridDim.y + blockIdx.y] = m;
}

/* The row's maximum over its chunks (the same value in every thread). */
__device__ __forceinline__ float kw_attn_row_max(const float *part_max, int64_t row, int64_t chunks) {
    float m = -INFINITY;
    for (int64_t c = 0; c < chunks; ++c)
        m = fmaxf(m, part_max[row * chunks + c]);
    return m;
}

/* Split pass 2: block (row, chunk) writes the chunk's sum of exp(score - m) to part_l and its weighted V sum to
 * part_acc (D values), m the row's maximum. */
template <int NPL, class KVS>
__global__ void __launch_bounds__(32 * KW_ATTN_WARPS)
    kw_k_attn_split_sum(float *part_l, float *part_acc, const float *part_max, const float *q, KVS src,
                        const uint8_t *mask, int64_t Hq, int64_t group, int64_t D, int64_t q_pos0, int64_t n_kv,
                        const int64_t *step, int64_t window, float scale) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const kw_attn_row r = kw_attn_row_of(blockIdx.x, q, Hq, group, D, q_pos0, n_kv, step, window);
    const auto kv = src.head(r.kvh);
    const int64_t slot = blockIdx.x * (int64_t)gridDim.y + blockIdx.y;
    int64_t lo, hi;
    kw_attn_chunk(r, blockIdx.y, &lo, &hi);
    const float m = kw_attn_row_max(part_max, blockIdx.x, gridDim.y);
    float qv[NPL], acc[NPL], l = 0.0f;
    kw_attn_load_q<NPL>(qv, r.q, D, lane);
#pragma unroll
    for (int i = 0; i < NPL; ++i)
        acc[i] = 0.0f;
    if (m != -INFINITY) l = kw_attn_sum<NPL>(qv, acc, kv, mask, D, lo, hi, scale, m, lane, warp);
    float total;
    kw_attn_merge_warps<NPL>(acc, l, D, lane, warp, 0, 0, &total, part_acc + slot * D);
    if (threadIdx.x == 0) part_l[slot] = total;
}

/* Split combine: one block per row adds its chunks' sums and divides. */
__global__ void kw_k_attn_split_combine(float *out, const float *part_max, const float *part_l, const float *part_acc,
                                        int64_t chunks, int64_t D) {
    const int64_t row = blockIdx.x;
    const float m = kw_attn_row_max(part_max, row, chunks);
    float total = 0.0f;
    for (int64_t c = 0; c < chunks; ++c)
        total += part_l[row * chunks + c];
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
        float s = 0.0f;
        for (int64_t c = 0; c < chunks; ++c)
            s += part_acc[(row * chunks + c) * D + d];
        out[row * D + d] = m == -INFINITY ? 0.0f : s * (1.0f / total);
    }
}

int kw__cuda_attn_chunks(int64_t rows, int64_t max_span) {
    if (rows >= KW_CUDA_ATTN_SPLIT_MAX_ROWS || max_span <= 2 * KW_ATTN_CHUNK_ROWS) return 1;
    const int64_t chunks = (max_span + KW_ATTN_CHUNK_ROWS - 1) / KW_ATTN_CHUNK_ROWS;
    return (int)(chunks < KW_ATTN_MAX_CHUNKS ? chunks : KW_ATTN_MAX_CHUNKS);
}

int kw__cuda_attn_plan(int64_t T, int64_t Hq, int64_t q_pos0, int64_t n_kv, int64_t window) {
    int64_t max_span = 0;
    for (int64_t t = 0; t < T; ++t) {
        int64_t lo, hi;
        kw_opm_attn_span(q_pos0 + t, n_kv, window, &lo, &hi);
        max_span = hi - lo + 1 > max_span ? hi - lo + 1 : max_span;
    }
    return kw__cuda_attn_chunks(T * Hq, max_span);
}

/* The attention of q over the kv heads of src (Hkv of them), one-block or split as kw__cuda_attn_plan says. */
template <int NPL, class KVS>
static int kw_attention_run(kw_cuda_backend *cu, kw_tensor *out, const kw_tensor *q, const KVS &src, int64_t Hkv,
                            const kw_attention_params *params) {
    const int64_t T = q->ne[0], Hq = q->ne[1], D = q->ne[2];
    const uint8_t *mask = params->kv_mask ? (const uint8_t *)params->kv_mask->data : NULL;
    const unsigned rows = (unsigned)(T * Hq);
    const int chunks = kw__cuda_attn_plan(T, Hq, params->q_pos0, params->n_kv, params->sliding_window);
    /* recording a graph: positions relative to the step's (see kw_cuda_backend.cu) */
    const int64_t *step = kw__cuda_step(cu);
    const int64_t q_pos0 = params->q_pos0 - kw__cuda_step_base(cu), n_kv = params->n_kv - kw__cuda_step_base(cu);
    if (cu->recording) KW_FORWARD(kw__cuda_record_attn(cu, T, Hq, q_pos0, n_kv, params->sliding_window, chunks));
    if (chunks == 1) {
        const auto one_block = kw_k_attention<NPL, KVS>; /* a name without a comma for the launch macro */
        KW_CUDA_LAUNCH(one_block, rows, 32 * KW_ATTN_WARPS, 0, cu->stream, (float *)out->data, (const float *)q->data,
                       src, mask, Hq, Hq / Hkv, D, q_pos0, n_kv, step, params->sliding_window, params->scale);
        KW_CUDA_LAUNCHED();
        return 0;
    }
    /* the chunks' maxima, sums and weighted V sums in the backend's workspace (stream order keeps it ours) */
    float *work = NULL;
    const int64_t slots = (int64_t)rows * chunks;
    KW_FORWARD(kw__cuda_workspace(cu, (size_t)(slots * (D + 2)), &work));
    float *part_max = work, *part_l = work + slots, *part_acc = work + 2 * slots;
    const dim3 grid(rows, (unsigned)chunks);
    const auto split_max = kw_k_attn_split_max<NPL, KVS>;
    const auto split_sum = kw_k_attn_split_sum<NPL, KVS>;
    KW_CUDA_LAUNCH(split_max, grid, 32 * KW_ATTN_WARPS, 0, cu->stream, part_max, (const float *)q->data, src, mask, Hq,
                   Hq / Hkv, D, q_pos0, n_kv, step, params->sliding_window, params->scale);
    KW_CUDA_LAUNCHED();
    KW_CUDA_LAUNCH(split_sum, grid, 32 * KW_ATTN_WARPS, 0, cu->stream, part_l, part_acc, part_max,
                   (const float *)q->data, src, mask, Hq, Hq / Hkv, D, q_pos0, n_kv, step, params->sliding_window,
                   params->scale);
    KW_CUDA_LAUNCHED();
    KW_CUDA_LAUNCH(kw_k_attn_split_combine, rows, D >= 128 ? 128 : 32, 0, cu->stream, (float *)out->data, part_max,
                   part_l, part_acc, (int64_t)chunks, D);
    KW_CUDA_LAUNCHED();
    return 0;
}

/* kw_attention_run with NPL chosen from the head dim. */
template <class KVS>
static int kw_attention_dispatch(kw_cuda_backend *cu, kw_tensor *out, const kw_tensor *q, const KVS &src, int64_t Hkv,
                                 const kw_attention_params *params) {
    const int64_t T = q->ne[0], Hq = q->ne[1], D = q->ne[2];
    KW_RETURN_IF(T * Hq > INT32_MAX, KW_E_UNSUPPORTED, "cuda attention: too many query rows");
    switch (kw_opm_attn_dims_per_lane(D)) {
    case 1:
        return kw_attention_run<1>(cu, out, q, src, Hkv, params);
    case 2:
        return kw_attention_run<2>(cu, out, q, src, Hkv, params);
    case 4:
        return kw_attention_run<4>(cu, out, q, src, Hkv, params);
    case 8:
        return kw_attention_run<8>(cu, out, q, src, Hkv, params);
    case 16:
        return kw_attention_run<16>(cu, out, q, src, Hkv, params);
    default:
        KW_FAIL(KW_E_SHAPE, "cuda attention: head dim %lld outside 1..%d", (long long)D, KW_ATTENTION_MAX_HEAD_DIM);
    }
}

int kw__cuda_attention(kw_backend *backend, kw_tensor *out, const kw_tensor *q, const kw_tensor *k_cache,
                       const kw_tensor *v_cache, const kw_attention_params *params) {
    KW_CUDA_ENTER(cu, backend);
    const kw_attn_dense src = {k_cache->data, v_cache->data, k_cache->dtype, k_cache->ne[1], q->ne[2]};
    return kw_attention_dispatch(cu, out, q, src, k_cache->ne[0], params);
}

int kw__cuda_attention_kvq(kw_backend *backend, kw_tensor *out, const kw_tensor *q, const kw_tensor *k_store,
                           const kw_kvq_geom *kg, const kw_tensor *v_store, const kw_kvq_geom *vg,
                           const kw_attention_params *params, int64_t n_rows) {
    KW_CUDA_ENTER(cu, backend);
    /* a step graph would replay n_rows (where the full key pages end) as recorded: kw_model runs no graph for a
     * quantized cache, and a recording that meets one fails (the step then runs op by op) */
    if (cu->recording) return kw__cuda_not_while_recording(cu, "attention_kvq");
    const kw_attn_kvq src = {(const uint8_t *)k_store->data, (const uint8_t *)v_store->data, *kg, *vg,
                             n_rows / kg->page_tokens * kg->page_tokens};
    return kw_attention_dispatch(cu, out, q, src, kg->H, params);
}

/* ------------------------------------------------------------------------------------------------------------
 * KV cache rows: (T, H, D) <-> (H, cap, D) at pos0
 */

__global__ void kw_k_kv_store(void *cache, enum kw_dtype dtype, const float *src, int64_t T, int64_t H, int64_t cap,
                              int64_t D, int64_t pos0, const int64_t *step) {
    const int64_t n = T * H * D;
    pos0 += kw_step_base(step);
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t t, h, d;
        kw_opm_split3(i, H, D, &t, &h, &d);
        kw_opm_store(cache, dtype, kw_opm_kv_offset(h, t, cap, pos0, D) + d, src[i]);
    }
}

__global__ void kw_k_kv_load(float *out, const void *cache, enum kw_dtype dtype, int64_t T, int64_t H, int64_t cap,
                             int64_t D, int64_t pos0, const int64_t *step) {
    const int64_t n = T * H * D;
    pos0 += kw_step_base(step);
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t t, h, d;
        kw_opm_split3(i, H, D, &t, &h, &d);
        out[i] = kw_opm_load(cache, dtype, kw_opm_kv_offset(h, t, cap, pos0, D) + d);
    }
}

int kw__cuda_kv_store(kw_backend *backend, kw_tensor *cache, const kw_tensor *src, int64_t pos0) {
    KW_CUDA_ENTER(cu, backend);
    const int64_t n = kw_tensor_nelem(src);
    KW_CUDA_LAUNCH(kw_k_kv_store, kw_opm_grid_blocks(n, KW_BLOCK), KW_BLOCK, 0, cu->stream, cache->data, cache->dtype,
                   (const float *)src->data, src->ne[0], src->ne[1], cache->ne[1], src->ne[2],
                   pos0 - kw__cuda_step_base(cu), kw__cuda_step(cu));
    KW_CUDA_LAUNCHED();
    return 0;
}

int kw__cuda_kv_load(kw_backend *backend, kw_tensor *out, const kw_tensor *cache, int64_t pos0) {
    KW_CUDA_ENTER(cu, backend);
    const int64_t n = kw_tensor_nelem(out);
    KW_CUDA_LAUNCH(kw_k_kv_load, kw_opm_grid_blocks(n, KW_BLOCK), KW_BLOCK, 0, cu->stream, (float *)out->data,
                   cache->data, cache->dtype, out->ne[0], out->ne[1], cache->ne[1], out->ne[2],
                   pos0 - kw__cuda_step_base(cu), kw__cuda_step(cu));
    KW_CUDA_LAUNCHED();
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * Elementwise
 */

__global__ void kw_k_glu(float *y, const float *g, const float *u, int64_t n, enum kw_act act) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = kw_opm_act(g[i], act) * u[i];
}

__global__ void kw_k_unary(float *y, const float *x, int64_t n, enum kw_act act) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = kw_opm_act(x[i], act);
}

__global__ void kw_k_add(float *y, const float *a, const float *b, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = __fadd_rn(a[i], b[i]);
}

__global__ void kw_k_scale(float *y, const float *x, int64_t n, float s) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = __fmul_rn(x[i], s);
}

int kw__cuda_glu(kw_backend *backend, kw_tensor *out, const kw_tensor *gate, const kw_tensor *up, enum kw_act act) {
    KW_CUDA_ENTER(cu, backend);
    const int64_t n = kw_tensor_nelem(out);
    KW_CUDA_LAUNCH(kw_k_glu, kw_opm_grid_blocks(n, KW_BLOCK), KW_BLOCK, 0, cu->stream, (float *)out->data,
                   (const float *)gate->data, (const float *)up->data, n, act);
    KW_CUDA_LAUNCHED();
    return 0;
}

int kw__cuda_unary(kw_backend *backend, kw_tensor *out, const kw_tensor *x, enum kw_act act) {
    KW_CUDA_ENTER(cu, backend);
    const int64_t n = kw_tensor_nelem(out);
    KW_CUDA_LAUNCH(kw_k_unary, kw_opm_grid_blocks(n, KW_BLOCK), KW_BLOCK, 0, cu->stream, (float *)out->data,
                   (const float *)x->data, n, act);
    KW_CUDA_LAUNCHED();
    return 0;
}

int kw__cuda_add(kw_backend *backend, kw_tensor *out, const kw_tensor *a, const kw_tensor *b) {
    KW_CUDA_ENTER(cu, backend);
    const int64_t n = kw_tensor_nelem(out);
    KW_CUDA_LAUNCH(kw_k_add, kw_opm_grid_blocks(n, KW_BLOCK), KW_BLOCK, 0, cu->stream, (float *)out->data,
                   (const float *)a->data, (const float *)b->data, n);
    KW_CUDA_LAUNCHED();
    return 0;
}

int kw__cuda_scale(kw_backend *backend, kw_tensor *out, const kw_tensor *x, float s) {
    KW_CUDA_ENTER(cu, backend);
    const int64_t n = kw_tensor_nelem(out);
    KW_CUDA_LAUNCH(kw_k_scale, kw_opm_grid_blocks(n, KW_BLOCK), KW_BLOCK, 0, cu->stream, (float *)out->data,
                   (const float *)x->data, n, s);
    KW_CUDA_LAUNCHED();
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * softmax and argmax: one block per row
 */

__global__ void kw_k_softmax(float *out, const float *x, int64_t N) {
    const float *xr = x + blockIdx.x * N;
    float *yr = out + blockIdx.x * N;
    float m = -INFINITY;
    for (int64_t i = threadIdx.x; i < N; i += blockDim.x)
        m = fmaxf(m, xr[i]);
    m = kw_block_max(m);
    float s = 0.0f;
    for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
        const float e = expf(xr[i] - m);
        yr[i] = e;
        s += e;
    }
    s = kw_block_sum(s);
    const float inv = 1.0f / s;
    for (int64_t i = threadIdx.x; i < N; i += blockDim.x)
        yr[i] *= inv;
}

int kw__cuda_softmax(kw_backend *backend, kw_tensor *out, const kw_tensor *x) {
    KW_CUDA_ENTER(cu, backend);
    const int64_t N = x->ne[x->ndim - 1], R = kw_tensor_nrows(x);
    KW_RETURN_IF(R > INT32_MAX, KW_E_UNSUPPORTED, "cuda softmax: too many rows");
    KW_CUDA_LAUNCH(kw_k_softmax, (unsigned)R, KW_BLOCK, 0, cu->stream, (float *)out->data, (const float *)x->data, N);
    KW_CUDA_LAUNCHED();
    return 0;
}

/* Folds the candidate (ov, oi) into the best so far (*v, *i) by kw_opm_argmax_wins (NaN never wins, the lower
 * index wins ties, oi < 0 is "nothing"): a total order, so the butterfly and the warp merge give the first maximum,
 * as the replay in test_op_math.c checks. */
__device__ __forceinline__ void kw_argmax_merge(float *v, int64_t *i, float ov, int64_t oi) {
    if (kw_opm_argmax_wins(ov, oi, *v, *i)) {
        *v = ov;
        *i = oi;
    }
}

__global__ void kw_k_argmax(int32_t *out, const float *x, int64_t N, int flags) {
    const float *xr = x + blockIdx.x * N;
    float best = 0.0f;
    int64_t idx = -1;
    for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
        kw_argmax_merge(&best, &idx, kw_opm_argmax_value(xr[i], flags), i);
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, best, o);
        const long long oi = __shfl_xor_sync(0xffffffffu, (long long)idx, o);
        kw_argmax_merge(&best, &idx, ov, (int64_t)oi);
    }
    __shared__ float s_v[32];
    __shared__ int64_t s_i[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) s_v[warp] = best, s_i[warp] = idx;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); ++w)
            kw_argmax_merge(&best, &idx, s_v[w], s_i[w]);
        out[blockIdx.x] = idx < 0 ? 0 : (int32_t)idx;
    }
}

int kw__cuda_argmax(kw_backend *backend, kw_tensor *out, const kw_tensor *x, int flags) {
    KW_CUDA_ENTER(cu, backend);
    const int64_t N = x->ne[x->ndim - 1], R = kw_tensor_nrows(x);
    KW_RETURN_IF(R > INT32_MAX, KW_E_UNSUPPORTED, "cuda argmax: too many rows");
    KW_CUDA_LAUNCH(kw_k_argmax, (unsigned)R, KW_BLOCK, 0, cu->stream, (int32_t *)out->data, (const float *)x->data, N,
                   flags);
    KW_CUDA_LAUNCHED();
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * copy
 */

__global__ void kw_k_convert(void *dst, enum kw_dtype ddt, const void *src, enum kw_dtype sdt, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        kw_opm_store(dst, ddt, i, kw_opm_load(src, sdt, i));
}

int kw__cuda_copy(kw_backend *backend, kw_tensor *dst, const kw_tensor *src) {
    KW_CUDA_ENTER(cu, backend);
    if (dst->dtype == src->dtype) {
        /* cudaMemcpy is undefined for overlapping ranges (the CPU's memmove is not); a tensor copied onto itself is
         * the one overlap the interface lets through */
        if (dst->data != src->data)
            KW_CUDA_TRY(
                cudaMemcpyAsync(dst->data, src->data, kw_tensor_nbytes(src), cudaMemcpyDeviceToDevice, cu->stream));
        return 0;
    }
    const int64_t n = kw_tensor_nelem(src);
    KW_CUDA_LAUNCH(kw_k_convert, kw_opm_grid_blocks(n, KW_BLOCK), KW_BLOCK, 0, cu->stream, dst->data, dst->dtype,
                   src->data, src->dtype, n);
    KW_CUDA_LAUNCHED();
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * head_scale_add: explicit round-to-nearest intrinsics so nvcc cannot fuse the product into the sum
 */

__global__ void kw_k_head_scale_add(float *y, const float *base, const float *x, const float *w, float g, int64_t TH,
                                    int64_t D) {
    const int64_t n = TH * D;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const float gw = __fmul_rn(g, w[i / D]);
        y[i] = __fadd_rn(base[i], __fmul_rn(gw, x[i]));
    }
}

int kw__cuda_head_scale_add(kw_backend *backend, kw_tensor *out, const kw_tensor *base, const kw_tensor *x,
                            const kw_tensor *w, float g) {
    KW_CUDA_ENTER(cu, backend);
    const int64_t TH = base->ne[0] * base->ne[1], D = base->ne[2];
    KW_CUDA_LAUNCH(kw_k_head_scale_add, kw_opm_grid_blocks(TH * D, KW_BLOCK), KW_BLOCK, 0, cu->stream,
                   (float *)out->data, (const float *)base->data, (const float *)x->data, (const float *)w->data, g, TH,
                   D);
    KW_CUDA_LAUNCHED();
    return 0;
}
