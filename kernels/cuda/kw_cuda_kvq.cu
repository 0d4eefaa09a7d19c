/* kw_cuda_kvq.cu: the paged quantized KV cache's store, load and truncate on the CUDA backend (kw_op_kvq_*, format in
 * kernels/kw_kvq_format.h; the attention that reads the storage is kw_cuda_ops.cu's kw__cuda_attention_kvq).
 *
 * The stored bytes are the CPU backend's (kernels/cpu/kw_cpu_kvq.c) for the same input: every scale, code and bf16
 * is computed by the KW_HD functions of kw_kvq_format.h, which the CPU runs too, from the same values (keys rounded
 * to bf16 first; a page's amax is a max, exact in any order). Keys: one block per head. A store that stays in the tail
 * page writes bf16 rows only (a decode step, mostly); otherwise the block gathers every row from the first page it
 * touches to the new end into the workspace (new rows as bf16, old ones as the values they hold), then quantizes the
 * pages that filled or were overwritten (one thread per (page, channel) for the scale, then one per (row, 16
 * channels) for the codes, so no two threads share a packed byte) and writes the rest back as the tail. Values: one
 * thread per (row, head, group of G channels). Not tuned on hardware.
 */
#include "kernels/cuda/kw_cuda.cuh"

#include "kernels/kw_kvq_format.h"
#include "kernels/kw_op_math.h"

#define KW_KVQ_BLOCK 256

/* The rows a key store touches: rows [first, new_len) are gathered; pages [first / P, new_tail) are quantized unless
 * they are full pages before old_tail that the new rows [pos0, end) miss. */
struct kw_kvq_span {
    int64_t pos0, end, old_full, first, new_len, new_tail;
};

__device__ __forceinline__ bool kw_kvq_page_requantized(const kw_kvq_span &s, int64_t p, int64_t P) {
    return p * P >= s.old_full || p * P < s.end;
}

__global__ void __launch_bounds__(KW_KVQ_BLOCK)
    kw_k_kvq_store_keys(uint8_t *store, kw_kvq_geom g, const float *src, kw_kvq_span s, float *buf) {
    const int64_t h = blockIdx.x, P = g.page_tokens, D = g.D, H = g.H;
    const int qmax = kw_kvq_code_max(g.codec);
    uint8_t *head = store + (size_t)h * kw_kvq_head_bytes(&g);
    float *b = buf + (size_t)h * (size_t)((s.new_len - s.first) * D);
    /* 1. gather: the bf16 of a new row, the held value of an old one */
    for (int64_t i = threadIdx.x; i < (s.new_len - s.first) * D; i += blockDim.x) {
        const int64_t row = s.first + i / D, d = i % D;
        b[i] = row >= s.pos0 && row < s.end ? kw_round_bf16(src[((row - s.pos0) * H + h) * D + d])
                                            : kw_kvq_key_at(head, &g, s.old_full, row, d);
    }
    __syncthreads();
    /* 2. the channel scales of the pages quantized */
    uint8_t *scales = head + kw_kvq_scales_offset(&g);
    const int64_t p0 = s.first / P, n_pages = s.new_tail - p0;
    for (int64_t i = threadIdx.x; i < n_pages * D; i += blockDim.x) {
        const int64_t p = p0 + i / D, d = i % D;
        if (!kw_kvq_page_requantized(s, p, P)) continue;
        const float *pv = b + (p * P - s.first) * D;
        float amax = 0.0f;
        for (int64_t r = 0; r < P; ++r) {
            const float a = fabsf(pv[r * D + d]);
            if (a > amax) amax = a; /* NaN is ignored here and stored as 0, as on the CPU */
        }
        scales[p * D + d] = kw_kvq_choose_scale(amax, qmax);
    }
    __syncthreads();
    /* 3. the codes, 16 channels (whole packed bytes) per thread; the tail rows as bf16 */
    const size_t row_bytes = kw_kvq_row_bytes(g.codec, D);
    const int64_t blocks = D / 16;
    for (int64_t i = threadIdx.x; i < n_pages * P * blocks; i += blockDim.x) {
        const int64_t row = p0 * P + i / blocks, d0 = i % blocks * 16;
        if (!kw_kvq_page_requantized(s, row / P, P)) continue;
        uint8_t *codes = head + (size_t)row * row_bytes;
        const float *x = b + (row - s.first) * D;
        for (int64_t d = d0; d < d0 + 16; ++d)
            kw_kvq_set_code(codes, g.codec, d, kw_kvq_quantize(x[d], scales[row / P * D + d], qmax));
    }
    uint16_t *tail = (uint16_t *)(head + kw_kvq_tail_offset(&g));
    const int64_t tail0 = s.new_tail * P;
    for (int64_t i = threadIdx.x; i < (s.new_len - tail0) * D; i += blockDim.x)
        tail[i] = kw_f32_to_bf16(b[(tail0 - s.first) * D + i]);
}

/* Rows that stay in the tail page: element (t, h, d) of src into the tail as bf16. */
__global__ void kw_k_kvq_store_tail(uint8_t *store, kw_kvq_geom g, const float *src, int64_t T, int64_t pos0,
                                    int64_t full) {
    const int64_t n = T * g.H * g.D;
    const size_t head_bytes = kw_kvq_head_bytes(&g), tail_off = kw_kvq_tail_offset(&g);
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t t, h, d;
        kw_opm_split3(i, g.H, g.D, &t, &h, &d);
        uint16_t *tail = (uint16_t *)(store + (size_t)h * head_bytes + tail_off);
        tail[(pos0 + t - full) * g.D + d] = kw_f32_to_bf16(src[i]);
    }
}

/* Value rows: one thread per (row, head, group), its scale and its G codes (whole packed bytes). */
__global__ void kw_k_kvq_store_values(uint8_t *store, kw_kvq_geom g, const float *src, int64_t T, int64_t pos0) {
    const int64_t G = kw_kvq_value_group(g.D), groups = g.D / G, n = T * g.H * groups;
    const int qmax = kw_kvq_code_max(g.codec);
    const size_t head_bytes = kw_kvq_head_bytes(&g), row_bytes = kw_kvq_row_bytes(g.codec, g.D);
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t t, h, c;
        kw_opm_split3(i, g.H, groups, &t, &h, &c);
        const float *x = src + (t * g.H + h) * g.D + c * G;
        uint8_t *head = store + (size_t)h * head_bytes;
        float amax = 0.0f;
        for (int64_t d = 0; d < G; ++d) {
            const float a = fabsf(x[d]);
            if (a > amax) amax = a;
        }
        const uint8_t sc = kw_kvq_choose_scale(amax, qmax);
        head[kw_kvq_scales_offset(&g) + (size_t)((pos0 + t) * groups + c)] = sc;
        uint8_t *codes = head + (size_t)(pos0 + t) * row_bytes;
        for (int64_t d = 0; d < G; ++d)
            kw_kvq_set_code(codes, g.codec, c * G + d, kw_kvq_quantize(x[d], sc, qmax));
    }
}

int kw__cuda_kvq_store(kw_backend *backend, kw_tensor *store, const kw_kvq_geom *g, const kw_tensor *src, int64_t pos0,
                       int64_t n_rows) {
    KW_CUDA_ENTER(cu, backend);
    if (cu->recording) return kw__cuda_not_while_recording(cu, "kvq_store");
    const int64_t T = src->ne[0], P = g->page_tokens, D = g->D;
    uint8_t *base = (uint8_t *)store->data;
    const float *s = (const float *)src->data;
    if (!g->keys) {
        KW_CUDA_LAUNCH(kw_k_kvq_store_values, kw_opm_grid_blocks(T * g->H * (D / kw_kvq_value_group(D)), KW_KVQ_BLOCK),
                       KW_KVQ_BLOCK, 0, cu->stream, base, *g, s, T, pos0);
        KW_CUDA_LAUNCHED();
        return 0;
    }
    const int64_t old_full = n_rows / P * P, end = pos0 + T, new_len = end > n_rows ? end : n_rows;
    if (pos0 >= old_full && new_len / P == n_rows / P) { /* the rows stay in the tail page */
        KW_CUDA_LAUNCH(kw_k_kvq_store_tail, kw_opm_grid_blocks(T * g->H * D, KW_KVQ_BLOCK), KW_KVQ_BLOCK, 0, cu->stream,
                       base, *g, s, T, pos0, old_full);
        KW_CUDA_LAUNCHED();
        return 0;
    }
    const int64_t first = (pos0 / P < n_rows / P ? pos0 / P : n_rows / P) * P;
    const kw_kvq_span span = {pos0, end, old_full, first, new_len, new_len / P};
    float *buf = NULL;
    KW_FORWARD(kw__cuda_workspace(cu, (size_t)(g->H * (new_len - first) * D), &buf));
    KW_CUDA_LAUNCH(kw_k_kvq_store_keys, (unsigned)g->H, KW_KVQ_BLOCK, 0, cu->stream, base, *g, s, span, buf);
    KW_CUDA_LAUNCHED();
    return 0;
}

/* out (T, H, D) = rows [pos0, pos0 + T) of the storage. */
__global__ void kw_k_kvq_load(float *out, const uint8_t *store, kw_kvq_geom g, int64_t T, int64_t pos0, int64_t full) {
    const int64_t n = T * g.H * g.D;
    const size_t head_bytes = kw_kvq_head_bytes(&g);
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t t, h, d;
        kw_opm_split3(i, g.H, g.D, &t, &h, &d);
        const uint8_t *head = store + (size_t)h * head_bytes;
        out[i] = g.keys ? kw_kvq_key_at(head, &g, full, pos0 + t, d) : kw_kvq_value_at(head, &g, pos0 + t, d);
    }
}

int kw__cuda_kvq_load(kw_backend *backend, kw_tensor *out, const kw_tensor *store, const kw_kvq_geom *g, int64_t pos0,
                      int64_t n_rows) {
    KW_CUDA_ENTER(cu, backend);
    if (cu->recording) return kw__cuda_not_while_recording(cu, "kvq_load");
    const int64_t T = out->ne[0];
    KW_CUDA_LAUNCH(kw_k_kvq_load, kw_opm_grid_blocks(T * g->H * g->D, KW_KVQ_BLOCK), KW_KVQ_BLOCK, 0, cu->stream,
                   (float *)out->data, (const uint8_t *)store->data, *g, T, pos0,
                   n_rows / g->page_tokens * g->page_tokens);
    KW_CUDA_LAUNCHED();
    return 0;
}

/* Rows [page * P, new_rows) of every head, held in the full page `page`, into the tail as bf16. */
__global__ void kw_k_kvq_untail(uint8_t *store, kw_kvq_geom g, int64_t page, int64_t rows, int64_t old_full) {
    const int64_t n = g.H * rows * g.D;
    const size_t head_bytes = kw_kvq_head_bytes(&g);
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t h, r, d;
        kw_opm_split3(i, rows, g.D, &h, &r, &d);
        uint8_t *head = store + (size_t)h * head_bytes;
        const float x = kw_kvq_key_at(head, &g, old_full, page * g.page_tokens + r, d);
        ((uint16_t *)(head + kw_kvq_tail_offset(&g)))[r * g.D + d] = kw_f32_to_bf16(x);
    }
}

int kw__cuda_kvq_truncate(kw_backend *backend, kw_tensor *store, const kw_kvq_geom *g, int64_t n_rows,
                          int64_t new_rows) {
    KW_CUDA_ENTER(cu, backend);
    if (cu->recording) return kw__cuda_not_while_recording(cu, "kvq_truncate");
    const int64_t P = g->page_tokens, page = new_rows / P;
    if (!g->keys || page == n_rows / P || new_rows == page * P) return 0; /* the rule of kw__cpu_kvq_truncate */
    const int64_t rows = new_rows - page * P;
    KW_CUDA_LAUNCH(kw_k_kvq_untail, kw_opm_grid_blocks(g->H * rows * g->D, KW_KVQ_BLOCK), KW_KVQ_BLOCK, 0, cu->stream,
                   (uint8_t *)store->data, *g, page, rows, n_rows / P * P);
    KW_CUDA_LAUNCHED();
    return 0;
}
