/* kw_cuda.cuh: internals of the CUDA backend (kernels/cuda only): the backend state, the error-conversion macros
 * and the op launchers of kw_cuda_ops.cu. Everything runs on one stream per backend (a stream context is a backend);
 * host code never touches device memory. Not here: anything model-specific. */
#ifndef KW_CUDA_CUH
#define KW_CUDA_CUH

#ifdef KW_CUDA_EMU
/* compiled as host C++ for the emulator: kernels/cuda/emu/kw_cuda_emu.h (force-included) is the runtime and cuBLAS */
#include "kernels/cuda/emu/kw_cuda_emu.h"
#else
#include <cublas_v2.h>
#include <cuda_runtime.h>
#endif

#include "kernels/cuda/kw_cuda_launch.cuh"

extern "C" {
#include "common/kw_status.h"
#include "kernels/kw_backend_impl.h"
}
#include "kernels/kw_op_math.h"

/* The device-side record of get_rows' bad ids, read at synchronize; all zero means none. Launches on the stream run
 * one after another, so the first faulting launch claims `launch` with atomicCAS and only its blocks update `key`
 * (kw_opm_bad_id_key under atomicMax: its lowest bad row and that row's id) and `table_rows`. The report is the
 * CPU backend's: the first bad row of the first faulting call. */
struct kw_cuda_err {
    unsigned int launch;    /* sequence number of the faulting launch, 0: none */
    unsigned int unused;    /* keeps key 8-byte aligned explicitly */
    unsigned long long key; /* kw_opm_bad_id_key(row, id) */
    long long table_rows;   /* V of the faulting launch */
};

struct kw_cuda_backend {
    kw_backend base; /* first: a kw_backend * points here */
    int device;
    cudaStream_t stream;
    cudaMemPool_t pool; /* the stream-ordered pool; keeps freed memory until destroy (a stream context's: borrowed) */
    int owns_pool;      /* 1: pool is this backend's (destroyed with it); 0: a stream context's parent's */
    cublasHandle_t cublas;
    kw_cuda_err *d_err;             /* device */
    kw_cuda_err *h_err;             /* pinned host mirror, read at synchronize */
    unsigned int get_rows_launches; /* numbers get_rows launches for kw_cuda_err (never 0) */
    float *work; /* f32 workspace (stream-ordered allocation): widened weight panels, attention chunk sums */
    size_t work_floats;
    /* Step graphs (kw_cuda_backend.cu). */
    int64_t *d_step;   /* device: the step's position, read by the position arguments of a recorded graph */
    int graphs_off;    /* KW_CUDA_GRAPHS=0 in the environment at creation */
    int gemm_bf16;     /* KW_CUDA_GEMM=bf16 at creation: cuBLAS on bf16 weights and bf16-rounded x (opt-in) */
    int recording;     /* between graph_begin and graph_end: cu->stream is capturing */
    int64_t rec_base;  /* the step's position given to graph_begin */
    int rec_failed;    /* an op could not be recorded (graph_end fails) */
    int rec_uses_work; /* a recorded kernel uses the workspace */
    struct kw_cuda_attn_rec *rec_attn; /* the attention launches recorded (owned; moved into the graph at its end) */
    int n_rec_attn, cap_rec_attn;
};

/* What a recorded attention launch chose from its positions (relative to the step's), so that a replay at another
 * step can tell whether it would choose the same (kw__cuda_attn_plan). */
struct kw_cuda_attn_rec {
    int64_t T, Hq, q_pos0, n_kv, window;
    int chunks;
};

static inline kw_cuda_backend *kw_cuda(kw_backend *b) {
    return (kw_cuda_backend *)b;
}

/* Turns a failed runtime call into KW_E_CUDA with the call and cudaGetErrorString in the detail. It also clears the
 * runtime's per-thread "last error": a failure the caller handles (an allocation answered with KW_E_NOMEM, say)
 * would otherwise be returned by the cudaGetLastError after the next, unrelated kernel launch. Sticky errors (a
 * kernel fault) cannot be cleared and keep being reported, which is right: the context is unusable. */
static inline int kw__cuda_fail(cudaError_t err, const char *what) {
    (void)cudaGetLastError();
    return kw_error_set(KW_E_CUDA, "%s: %s", what, cudaGetErrorString(err));
}

#define KW_CUDA_TRY(expr)                                                                                              \
    do {                                                                                                               \
        const cudaError_t kw_cuda_err_ = (expr);                                                                       \
        if (kw_cuda_err_ != cudaSuccess) return kw__cuda_fail(kw_cuda_err_, #expr);                                    \
    } while (0)

/* The same for cuBLAS (whose failed internal launches can leave a runtime error behind too). */
#define KW_CUBLAS_TRY(expr)                                                                                            \
    do {                                                                                                               \
        const cublasStatus_t kw_cublas_st_ = (expr);                                                                   \
        if (kw_cublas_st_ != CUBLAS_STATUS_SUCCESS) {                                                                  \
            (void)cudaGetLastError();                                                                                  \
            return kw_error_set(KW_E_CUBLAS, "%s: %s", #expr, cublasGetStatusString(kw_cublas_st_));                   \
        }                                                                                                              \
    } while (0)

/* Opens every entry point that returns a status: cu is the backend state, and the backend's device is made current.
 * The current device is per host thread: the backend may be driven from a thread other than the one that created
 * it (DESIGN: one compute thread per device), or share a thread with a backend on another GPU, and kernel launches,
 * cuBLAS calls and stream-ordered frees all act on the current device. */
#define KW_CUDA_ENTER(cu, backend)                                                                                     \
    kw_cuda_backend *const cu = kw_cuda(backend);                                                                      \
    KW_CUDA_TRY(cudaSetDevice(cu->device))

/* After a kernel launch: a bad configuration (grid, block, shared memory) is reported at once. A fault while a kernel
 * runs (an illegal address, say) is sticky: the next runtime call reports it, the launch check of a later op or
 * synchronize, as KW_E_CUDA, and the backend cannot be used afterwards (destroy it). The only errors the device
 * reports as data, at synchronize, are get_rows' bad ids (kw_cuda_err). */
#define KW_CUDA_LAUNCHED() KW_CUDA_TRY(cudaGetLastError())

/* Attention splits a long span into chunks (kw_cuda_ops.cu) only when fewer (token, head) rows than this would each
 * get a block: beyond it the one-block-per-row kernel already fills the device. */
#define KW_CUDA_ATTN_SPLIT_MAX_ROWS 512

/* Chunks the attention of `rows` (token, head) rows whose longest visible span is max_span cache rows is cut into
 * (1: the one-block-per-row kernel). */
int kw__cuda_attn_chunks(int64_t rows, int64_t max_span);

/* The chunks attention over T tokens of Hq heads at positions q_pos0.. with n_kv rows is cut into. */
int kw__cuda_attn_plan(int64_t T, int64_t Hq, int64_t q_pos0, int64_t n_kv, int64_t window);

/* While recording: notes an attention launch (its positions relative to the step's) for the replay check. */
int kw__cuda_record_attn(kw_cuda_backend *cu, int64_t T, int64_t Hq, int64_t q_pos0, int64_t n_kv, int64_t window,
                         int chunks);

/* A call a recording cannot hold (a transfer, a wait, a quantized-cache op): the recording fails (rec_failed, so
 * graph_end fails and the step runs op by op), and so does the call, with KW_E_UNSUPPORTED naming what. */
int kw__cuda_not_while_recording(kw_cuda_backend *cu, const char *what);

/* The device pointer kernels read the step's position from (NULL when not recording: plain launches pass absolute
 * positions), and what to subtract from a position argument before passing it. */
static inline const int64_t *kw__cuda_step(const kw_cuda_backend *cu) {
    return cu->recording ? cu->d_step : NULL;
}
static inline int64_t kw__cuda_step_base(const kw_cuda_backend *cu) {
    return cu->recording ? cu->rec_base : 0;
}

/* x rows handled per streaming-matmul launch (registers per thread). */
#define KW_CUDA_GEMV_ROWS 8

/* size bytes of device memory from the backend's pool, usable in stream order (every allocation here goes through
 * it; release with cudaFreeAsync on cu->stream). */
int kw__cuda_malloc(kw_cuda_backend *cu, size_t size, void **out);

/* Grows the backend's f32 workspace to at least n floats. */
int kw__cuda_workspace(kw_cuda_backend *cu, size_t n, float **out);

/* Matmul weights kept quantized (KW_LAYOUT_QPANELS_*, kw_tensor_pack_quantized). The CUDA backend stores these layouts
 * its own way, in the same number of bytes as the CPU's panels (kw_tensor_nbytes), with the rows padded to whole panels
 * of 64 as there:
 *   codes    rows_pad rows of K codes, row-major: 8-bit codes one byte each (two's complement); 4-bit codes two to a
 *            byte, k even in the low nibble and k odd in the high one, as the code minus code_min (0..15);
 *   scales   rows_pad x (K / group) f32, row-major, right after the codes;
 *   offsets  the same again, for the layouts with offsets.
 * Rows past N are zero. Why not the CPU's k-major panels: the streaming kernel gives each output row to a warp whose
 * lanes take k = lane, lane + 32, ... (the order the f32 weights are summed in), and in row-major codes those 32 lanes
 * read 32 (or 16) consecutive bytes, one memory transaction, where the panels would put them 64 bytes apart. */
struct kw_cuda_qweight {
    const uint8_t *codes;
    const float *scales;
    const float *offsets; /* NULL for the layouts without offsets */
    int64_t row_bytes;    /* bytes of codes per row: K or K / 2 */
    int64_t groups;       /* K / group */
    int32_t bits;         /* 8 or 4 */
    int32_t group_shift;  /* log2 of the group (16 or 32) */
    int32_t code_min;     /* added to a 4-bit nibble */

    /* The weight (n, k) exactly as ggml and kw_ref_quant_dequant compute it: fl(fl(code * scale) + offset), two
     * roundings (the _rn intrinsics: nvcc may not fuse them into one FMA). */
    __device__ __forceinline__ float operator()(int64_t n, int64_t k) const {
        int code;
        if (bits == 8) {
            code = (int8_t)codes[n * row_bytes + k];
        } else {
            const unsigned byte = codes[n * row_bytes + (k >> 1)];
            code = (int)((k & 1) ? byte >> 4 : byte & 15u) + code_min;
        }
        const int64_t g = n * groups + (k >> group_shift);
        const float v = __fmul_rn((float)code, scales[g]);
        return offsets ? __fadd_rn(v, offsets[g]) : v;
    }
};

/* A row-major f32/bf16/f16 weight (N, K), read as the kernels read kw_qweight. */
struct kw_cuda_dense {
    const void *w;
    enum kw_dtype dtype;
    int64_t K;
    __device__ __forceinline__ float operator()(int64_t n, int64_t k) const { return kw_opm_load(w, dtype, n * K + k); }
};

/* Where the parts of a quantized weight (layout, N, K) start, relative to data, in the layout above. */
struct kw_cuda_qparts {
    size_t codes, scales, offsets; /* byte offsets (offsets: 0 if the layout has none) */
    int64_t rows_pad, row_bytes, groups;
};
void kw__cuda_qparts(enum kw_layout layout, int64_t N, int64_t K, kw_cuda_qparts *out);

/* The device view of a quantized weight tensor. */
kw_cuda_qweight kw__cuda_qweight(const kw_tensor *w);

/* kw_tensor_pack_quantized on the CUDA backend (validated q): the layout above, uploaded once. */
int kw__cuda_pack_quantized(kw_backend *backend, const kw_quant_rows *q, kw_tensor *packed);

/* Writes rows [n0, n0 + rows) of the weight w (row-major f32/bf16/f16, or kept quantized) as f32 rows into dst, on the
 * stream: the panel a cuBLAS GEMM then reads. */
int kw__cuda_widen_rows(kw_cuda_backend *cu, float *dst, const kw_tensor *w, int64_t n0, int64_t rows);

/* dst[i] = x[i] rounded to bf16 (to nearest even), i < n, on the stream: the bf16 GEMM's activations. */
int kw__cuda_round_bf16(kw_cuda_backend *cu, uint16_t *dst, const float *x, int64_t n);

/* The streaming matmul for small M (one warp per output row, weights read once), w row-major or kept quantized. */
int kw__cuda_gemv(kw_cuda_backend *cu, float *y, const float *x, const kw_tensor *w, int64_t M, int64_t N, int64_t K);
/* y (M, N) += bias (N) */
int kw__cuda_add_bias(kw_cuda_backend *cu, float *y, const void *bias, enum kw_dtype dtype, int64_t M, int64_t N);

/* Op entries of the function table (validated arguments). */
int kw__cuda_get_rows(kw_backend *backend, kw_tensor *out, const kw_tensor *table, const kw_tensor *ids);
int kw__cuda_rms_norm(kw_backend *backend, kw_tensor *out, const kw_tensor *x, const kw_tensor *w, float eps,
                      int flags);
int kw__cuda_rope(kw_backend *backend, kw_tensor *x, const kw_tensor *pos, const kw_rope_params *params);
int kw__cuda_rope_table(kw_backend *backend, kw_tensor *x, const kw_tensor *table);
int kw__cuda_attention(kw_backend *backend, kw_tensor *out, const kw_tensor *q, const kw_tensor *k_cache,
                       const kw_tensor *v_cache, const kw_attention_params *params);
int kw__cuda_kv_store(kw_backend *backend, kw_tensor *cache, const kw_tensor *src, int64_t pos0);
int kw__cuda_kv_load(kw_backend *backend, kw_tensor *out, const kw_tensor *cache, int64_t pos0);
int kw__cuda_glu(kw_backend *backend, kw_tensor *out, const kw_tensor *gate, const kw_tensor *up, enum kw_act act);
int kw__cuda_unary(kw_backend *backend, kw_tensor *out, const kw_tensor *x, enum kw_act act);
int kw__cuda_add(kw_backend *backend, kw_tensor *out, const kw_tensor *a, const kw_tensor *b);
int kw__cuda_scale(kw_backend *backend, kw_tensor *out, const kw_tensor *x, float s);
int kw__cuda_softmax(kw_backend *backend, kw_tensor *out, const kw_tensor *x);
int kw__cuda_argmax(kw_backend *backend, kw_tensor *out, const kw_tensor *x, int flags);
int kw__cuda_copy(kw_backend *backend, kw_tensor *dst, const kw_tensor *src);
int kw__cuda_head_scale_add(kw_backend *backend, kw_tensor *out, const kw_tensor *base, const kw_tensor *x,
                            const kw_tensor *w, float g);
/* The paged quantized KV cache (kw_cuda_kvq.cu; its attention is kw_cuda_ops.cu's). */
int kw__cuda_kvq_store(kw_backend *backend, kw_tensor *store, const kw_kvq_geom *g, const kw_tensor *src, int64_t pos0,
                       int64_t n_rows);
int kw__cuda_kvq_load(kw_backend *backend, kw_tensor *out, const kw_tensor *store, const kw_kvq_geom *g, int64_t pos0,
                      int64_t n_rows);
int kw__cuda_kvq_truncate(kw_backend *backend, kw_tensor *store, const kw_kvq_geom *g, int64_t n_rows,
                          int64_t new_rows);
int kw__cuda_attention_kvq(kw_backend *backend, kw_tensor *out, const kw_tensor *q, const kw_tensor *k_store,
                           const kw_kvq_geom *kg, const kw_tensor *v_store, const kw_kvq_geom *vg,
                           const kw_attention_params *params, int64_t n_rows);

/* The sharer's device work of kw_backend.h (kw_cuda_select.cu and kw_cuda_wire.cu: kw_cuda_wire.h on cu->stream). */
int kw__cuda_select_scores(kw_backend *backend, kw_tensor *score, const kw_tensor *cache, int64_t pos0);
int kw__cuda_select_topk(kw_backend *backend, kw_tensor *out, kw_tensor *count, const kw_tensor *score, int64_t k);
int kw__cuda_wire_sizes(const kw_wire_op_spec *spec, int clip, uint32_t H, uint32_t T, uint32_t D,
                        uint64_t *tensor_bytes, uint64_t *work_bytes);
int kw__cuda_wire_encode(kw_backend *backend, kw_tensor *dst, size_t offset, const kw_wire_op_spec *spec, int clip,
                         const kw_tensor *cache, const kw_tensor *rows, uint32_t t0, uint32_t T, kw_tensor *work,
                         kw_tensor *err, int64_t err_index, const kw_tensor *mask, uint64_t mask_base);
int kw__cuda_wire_outlier_work(const kw_wire_op_spec *sk, const kw_wire_op_spec *sv, uint32_t H, uint32_t T, uint32_t D,
                               uint64_t *work_bytes);
int kw__cuda_wire_outliers(kw_backend *backend, const kw_wire_op_spec *sk, const kw_wire_op_spec *sv,
                           const kw_tensor *cache_k, const kw_tensor *cache_v, const kw_tensor *rows, uint32_t T,
                           uint32_t count, kw_tensor *work, kw_tensor *elems, kw_tensor *n, kw_tensor *values,
                           kw_tensor *mask, kw_tensor *bad);
int kw__cuda_wire_status(unsigned long long err);
int kw__cuda_wire_rotate_rows(kw_backend *backend, kw_tensor *out, const kw_tensor *cache, const kw_tensor *rows,
                              uint32_t T, int rotate);
/* The receiver's device decode of kw_backend.h (kw_cuda_wire.cu). */
int kw__cuda_wire_decode(kw_backend *backend, kw_tensor *out, uint32_t t0, uint32_t T, const kw_wire_op_spec *spec,
                         const kw_tensor *src, size_t offset, kw_tensor *bad);
int kw__cuda_wire_outliers_apply(kw_backend *backend, kw_tensor *k, kw_tensor *v, const kw_tensor *elems,
                                 const kw_tensor *values, uint32_t n);
int kw__cuda_wire_unrotate(kw_backend *backend, kw_tensor *x, kw_tensor *bad);

#endif /* KW_CUDA_CUH */
