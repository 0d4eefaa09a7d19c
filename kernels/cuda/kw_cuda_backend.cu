/* kw_cuda_backend.cu: the CUDA backend's lifetime, memory, transfers, support whitelist, matmul and step graphs.
 *
 * One device, one stream, one cuBLAS handle per backend (a stream context, kw_backend_create_stream, is a backend of
 * its own with its own stream, handle, workspace, error record and step word, and borrows its parent's pool). Memory
 * comes from the stream-ordered allocator, from a pool the (parent) backend owns: the device's default pool has a
 * release threshold of 0, so every synchronize would hand all freed memory back to the driver and the next forward pass
 * would map it again; this pool keeps it (threshold UINT64_MAX) and gives everything back at destroy, without changing
 * the process-wide default pool other code may use. Transfers are cudaMemcpyAsync on the stream, and
 * kw_backend_synchronize waits for the stream and then reads the device error record that kernels fill when they meet
 * bad input (token ids).
 *
 * Matmul keeps x in fp32 as the interface requires: cuBLAS's GemmEx has no f32-activation x bf16-weight form, so
 * small M runs a streaming kernel (kw__cuda_gemv) that widens weights in registers, and larger M widens W panel by
 * panel into an f32 workspace and calls cublasGemmEx with f32 operands and CUBLAS_COMPUTE_32F (no TF32). With f32
 * weights GemmEx runs on W directly. A weight kept quantized (KW_LAYOUT_QPANELS_*, kw_cuda.cuh) takes the same two
 * paths, dequantized in registers by the streaming kernel and into the f32 panel for cuBLAS.
 *
 * Opt-in (KW_CUDA_GEMM=bf16 in the environment when the backend or stream context is created): for M > 8 and a
 * row-major bf16 weight, x is rounded to bf16 (to nearest even, one kernel into the workspace) and cublasGemmEx runs
 * on W's bf16 bytes as stored and the rounded x (CUDA_R_16BF A and B, f32 C, CUBLAS_COMPUTE_32F, the handle's math
 * mode switched from pedantic to default for the call so that tensor cores may serve it). The products of two bf16
 * values are exact in fp32, so the result differs from the exact path by x's rounding (relative 2^-9 per element)
 * plus the summation order; tokens may then differ from the CPU backend's. Other weights, and M <= 8 (decode), keep
 * the exact path.
 */
#include "kernels/cuda/kw_cuda.cuh"

#include <stdlib.h>
#include <string.h>

#include "kernels/kw_op_math.h"

extern "C" {
#include "common/kw_log.h"
#include "common/kw_size.h"
}

/* Rows of M at or below which the streaming kernel beats widening W. */
#define KW_CUDA_GEMV_MAX_M 8
/* Largest widened weight panel, in floats (64 MiB). */
#define KW_CUDA_PANEL_FLOATS ((int64_t)16 << 20)

int kw__cuda_malloc(kw_cuda_backend *cu, size_t size, void **out) {
    KW_RETURN_IF(cu->recording, KW_E_UNSUPPORTED, "cuda alloc of %zu bytes while recording a step graph", size);
    const cudaError_t err = cudaMallocFromPoolAsync(out, size, cu->pool, cu->stream);
    if (err == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError(); /* handled here: not an error of the next launch */
        KW_FAIL(KW_E_NOMEM, "cuda alloc of %zu bytes on device %d: %s", size, cu->device, cudaGetErrorString(err));
    }
    KW_CUDA_TRY(err);
    return 0;
}

int kw__cuda_workspace(kw_cuda_backend *cu, size_t n, float **out) {
    cu->rec_uses_work |= cu->recording;
    if (n > cu->work_floats) {
        /* a graph keeps the workspace's address: it cannot move under a recording (the step then runs without one,
         * grows it, and the next step records) */
        if (cu->recording) {
            cu->rec_failed = 1;
            KW_FAIL(KW_E_UNSUPPORTED, "the CUDA workspace must grow while recording a step graph");
        }
        if (cu->work) {
            KW_CUDA_TRY(cudaFreeAsync(cu->work, cu->stream));
            kw__backend_uncharge(&cu->base, cu->work_floats * sizeof(float));
        }
        cu->work = NULL;
        cu->work_floats = 0;
        /* the workspace counts against the backend's memory limit like its tensors */
        KW_FORWARD(kw__backend_charge(&cu->base, n * sizeof(float), "the CUDA workspace"));
        const int rc = kw__cuda_malloc(cu, n * sizeof(float), (void **)&cu->work);
        if (rc < 0) {
            kw__backend_uncharge(&cu->base, n * sizeof(float));
            return rc;
        }
        cu->work_floats = n;
    }
    *out = cu->work;
    return 0;
}

static void kw_cuda_destroy(kw_backend *backend) {
    kw_cuda_backend *cu = kw_cuda(backend);
    if (cudaSetDevice(cu->device) != cudaSuccess) (void)cudaGetLastError();
    if (cu->recording) {
        cudaGraph_t g = NULL;
        if (cudaStreamEndCapture(cu->stream, &g) == cudaSuccess) cudaGraphDestroy(g);
        (void)cudaGetLastError();
    }
    free(cu->rec_attn);
    if (cu->d_step) cudaFreeAsync(cu->d_step, cu->stream);
    if (cu->work) {
        cudaFreeAsync(cu->work, cu->stream);
        /* a stream context's workspace leaves the accounting it shares with its parent (a parent's own accounting
         * ends with it: its lock is gone by now) */
        if (cu->base.root != &cu->base) kw__backend_uncharge(&cu->base, cu->work_floats * sizeof(float));
    }
    if (cu->d_err) cudaFreeAsync(cu->d_err, cu->stream);
    if (cu->stream) cudaStreamSynchronize(cu->stream);
    /* tensors still allocated keep it alive until they are freed; a stream context's pool is its parent's */
    if (cu->pool && cu->owns_pool) cudaMemPoolDestroy(cu->pool);
    if (cu->h_err) cudaFreeHost(cu->h_err);
    if (cu->cublas) cublasDestroy(cu->cublas);
    if (cu->stream) cudaStreamDestroy(cu->stream);
    free(cu);
}

/* The whitelist: exactly what this folder implements. */
static int kw_cuda_supports(const kw_backend *backend, enum kw_op op, enum kw_dtype dtype) {
    (void)backend;
    const int is_float = dtype == KW_DTYPE_F32 || dtype == KW_DTYPE_BF16 || dtype == KW_DTYPE_F16;
    switch (op) {
    case KW_OP_GET_ROWS:
    case KW_OP_MATMUL:
    case KW_OP_RMS_NORM:
        return is_float;
    case KW_OP_ATTENTION:
    case KW_OP_KV_STORE:
    case KW_OP_KV_LOAD:
        return dtype == KW_DTYPE_F32 || dtype == KW_DTYPE_BF16;
    case KW_OP_ROPE:
    case KW_OP_GLU:
    case KW_OP_UNARY:
    case KW_OP_ADD:
    case KW_OP_SCALE:
    case KW_OP_SOFTMAX:
    case KW_OP_ARGMAX:
    case KW_OP_HEAD_SCALE_ADD:
        return dtype == KW_DTYPE_F32;
    case KW_OP_COPY:
        return is_float || dtype == KW_DTYPE_I32 || dtype == KW_DTYPE_U8;
    case KW_OP_COUNT:
        break;
    }
    return 0;
}

int kw__cuda_not_while_recording(kw_cuda_backend *cu, const char *what) {
    cu->rec_failed = 1;
    KW_FAIL(KW_E_UNSUPPORTED, "cuda %s while recording a step graph", what);
}

static int kw_cuda_synchronize(kw_backend *backend) {
    KW_CUDA_ENTER(cu, backend);
    if (cu->recording) return kw__cuda_not_while_recording(cu, "synchronize");
    KW_CUDA_TRY(cudaMemcpyAsync(cu->h_err, cu->d_err, sizeof *cu->h_err, cudaMemcpyDeviceToHost, cu->stream));
    KW_CUDA_TRY(cudaStreamSynchronize(cu->stream));
    if (cu->h_err->launch != 0) {
        const uint64_t key = cu->h_err->key;
        kw__backend_defer_error(backend, KW_E_TOKEN_ID, "get_rows: id %d at row %lld is outside [0, %lld)",
                                (int)kw_opm_bad_id_id(key), (long long)kw_opm_bad_id_row(key),
                                (long long)cu->h_err->table_rows);
        KW_CUDA_TRY(cudaMemsetAsync(cu->d_err, 0, sizeof *cu->d_err, cu->stream));
        KW_CUDA_TRY(cudaStreamSynchronize(cu->stream));
    }
    return 0;
}

static int kw_cuda_alloc(kw_backend *backend, size_t size, void **data) {
    KW_CUDA_ENTER(cu, backend);
    return kw__cuda_malloc(cu, size, data);
}

static void kw_cuda_free(kw_backend *backend, void *data) {
    kw_cuda_backend *cu = kw_cuda(backend);
    cudaError_t err = cudaSetDevice(cu->device);
    if (err == cudaSuccess) err = cudaFreeAsync(data, cu->stream);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        KW_LOG_WARN("cudaFreeAsync: %s", cudaGetErrorString(err));
    }
}

/* Transfers. The interface's rule (host memory valid and untouched until kw_backend_synchronize, results visible only
 * after it) is what callers must follow; what CUDA actually does with cudaMemcpyAsync is stricter for pageable
 * (ordinary malloc'd or mmapped) memory, per the runtime's "API synchronization behavior":
 *  - host -> device from pageable memory: the call may first wait for the stream's earlier work, and returns once
 *    the bytes are staged, so the source could already be reused on return (the transfer itself is still ordered
 *    on the stream). From pinned memory (cudaMallocHost, cudaHostRegister) it is truly asynchronous: the source
 *    must stay untouched until synchronize, exactly the interface's rule.
 *  - device -> host into pageable memory: the call returns only when the copy has completed, which means the host
 *    has waited for everything queued before it; into pinned memory it is asynchronous and the bytes are there
 *    after synchronize.
 * So code written for the interface is correct either way, and must not rely on the early completion: with pinned
 * buffers (a possible optimization for per-token ids and logits) it would read stale bytes. */
static int kw_cuda_upload(kw_backend *backend, void *dst, const void *src, size_t size) {
    KW_CUDA_ENTER(cu, backend);
    if (cu->recording) return kw__cuda_not_while_recording(cu, "upload");
    KW_CUDA_TRY(cudaMemcpyAsync(dst, src, size, cudaMemcpyHostToDevice, cu->stream));
    return 0;
}

static int kw_cuda_download(kw_backend *backend, void *dst, const void *src, size_t size) {
    KW_CUDA_ENTER(cu, backend);
    if (cu->recording) return kw__cuda_not_while_recording(cu, "download");
    KW_CUDA_TRY(cudaMemcpyAsync(dst, src, size, cudaMemcpyDeviceToHost, cu->stream));
    return 0;
}

/* Pinned host memory for transfers (kw_backend_host_alloc); the emulator registers it as pinned, so a copy from it
 * runs when the stream reaches it, as on a device. */
static int kw_cuda_host_alloc(kw_backend *backend, size_t size, void **p) {
    KW_CUDA_ENTER(cu, backend);
    const cudaError_t err = cudaMallocHost(p, size);
    if (err == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        KW_FAIL(KW_E_NOMEM, "cudaMallocHost of %zu bytes: %s", size, cudaGetErrorString(err));
    }
    KW_CUDA_TRY(err);
    return 0;
}

static void kw_cuda_host_free(kw_backend *backend, void *p) {
    kw_cuda_backend *cu = kw_cuda(backend);
    cudaError_t err = cudaSetDevice(cu->device);
    if (err == cudaSuccess) err = cudaFreeHost(p);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        KW_LOG_WARN("cudaFreeHost: %s", cudaGetErrorString(err));
    }
}

static int kw_cuda_memset_zero(kw_backend *backend, void *dst, size_t size) {
    KW_CUDA_ENTER(cu, backend);
    KW_CUDA_TRY(cudaMemsetAsync(dst, 0, size, cu->stream));
    return 0;
}

/* cublasGemmEx over rows of W given as A (already offset by g->a_offset) and x as B, both of type ab_type, with the
 * arguments of kw_opm_gemm_rows (tests/kernels/test_op_math.c runs them through a column-major reference GEMM on the
 * CPU). */
static int kw_cuda_gemm(kw_cuda_backend *cu, const kw_opm_gemm *g, const void *a, const void *x, cudaDataType_t ab_type,
                        float *y) {
    const float alpha = 1.0f, beta = 0.0f;
    KW_CUBLAS_TRY(cublasGemmEx(cu->cublas, g->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                               g->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, (int)g->m, (int)g->n, (int)g->k, &alpha, a,
                               ab_type, (int)g->lda, x, ab_type, (int)g->ldb, &beta, y + g->c_offset, CUDA_R_32F,
                               (int)g->ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return 0;
}

/* The opt-in bf16 GEMM (see the file comment): x rounded into the workspace, then one GemmEx on W's bf16 rows, under
 * the default math mode (the handle is pedantic otherwise: the f32 GEMMs stay exact). */
static int kw_cuda_gemm_bf16(kw_cuda_backend *cu, float *y, const float *x, const kw_tensor *w, int64_t M, int64_t N,
                             int64_t K) {
    float *work = NULL;
    KW_FORWARD(kw__cuda_workspace(cu, (size_t)((M * K + 1) / 2), &work));
    uint16_t *xb = (uint16_t *)work;
    KW_FORWARD(kw__cuda_round_bf16(cu, xb, x, M * K));
    const kw_opm_gemm g = kw_opm_gemm_rows(M, N, K, 0, N);
    KW_CUBLAS_TRY(cublasSetMathMode(cu->cublas, CUBLAS_DEFAULT_MATH));
    const int rc = kw_cuda_gemm(cu, &g, (const uint16_t *)w->data + g.a_offset, xb, CUDA_R_16BF, y);
    KW_CUBLAS_TRY(cublasSetMathMode(cu->cublas, CUBLAS_PEDANTIC_MATH));
    return rc;
}

/* y (M, N) = x (M, K) w (N, K)^T (+ bias): the streaming kernel for small M, else cuBLAS (see the file comment). */
static int kw_cuda_matmul(kw_backend *backend, kw_tensor *out, const kw_tensor *x, const kw_tensor *w,
                          const kw_tensor *bias) {
    KW_CUDA_ENTER(cu, backend);
    const int64_t M = kw_tensor_nrows(x), K = w->ne[1], N = w->ne[0];
    float *y = (float *)out->data;
    const float *xs = (const float *)x->data;
    /* cuBLAS takes int sizes; beyond them the streaming kernel (64-bit indexing, 8 rows of x per launch) serves,
     * slowly but correctly, as the CPU backend does */
    const int cublas_sizes = M <= INT32_MAX && N <= INT32_MAX && K <= INT32_MAX;
    if (M <= KW_CUDA_GEMV_MAX_M || !cublas_sizes) {
        KW_FORWARD(kw__cuda_gemv(cu, y, xs, w, M, N, K));
    } else if (cu->gemm_bf16 && w->dtype == KW_DTYPE_BF16 && w->layout == KW_LAYOUT_ROWS) {
        KW_FORWARD(kw_cuda_gemm_bf16(cu, y, xs, w, M, N, K));
    } else {
        if (w->dtype == KW_DTYPE_F32 && w->layout == KW_LAYOUT_ROWS) {
            const kw_opm_gemm g = kw_opm_gemm_rows(M, N, K, 0, N);
            KW_FORWARD(kw_cuda_gemm(cu, &g, (const float *)w->data + g.a_offset, xs, CUDA_R_32F, y));
        } else {
            const int64_t nb = kw_opm_panel_rows(N, K, KW_CUDA_PANEL_FLOATS);
            float *panel = NULL;
            KW_FORWARD(kw__cuda_workspace(cu, (size_t)(nb * K), &panel));
            for (int64_t n0 = 0; n0 < N; n0 += nb) {
                const int64_t rows = N - n0 < nb ? N - n0 : nb;
                const kw_opm_gemm g = kw_opm_gemm_rows(M, N, K, n0, rows);
                /* the panel holds W's rows [n0, n0 + rows) widened (or dequantized): it is A itself, no offset */
                KW_FORWARD(kw__cuda_widen_rows(cu, panel, w, n0, rows));
                KW_FORWARD(kw_cuda_gemm(cu, &g, panel, xs, CUDA_R_32F, y));
            }
        }
    }
    if (bias) KW_FORWARD(kw__cuda_add_bias(cu, y, bias->data, bias->dtype, M, N));
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * Step graphs: stream capture of cu->stream into a CUDA graph, replayed with cudaGraphLaunch.
 *
 * A decode step differs from the last only in its position (the KV row it writes, the query's position, the number
 * of rows attention reads). Rather than patching kernel nodes before each replay (cudaGraphExecKernelNodeSetParams,
 * per node and per kernel signature), the kernels that take positions also take a pointer to a device int64, the
 * step's position: a recording passes positions relative to it, a plain launch passes NULL and absolute positions
 * (kw__cuda_step). A replay is then one one-thread kernel that stores the new position (kernel arguments are copied
 * at launch, so no host buffer has to outlive the call) and the graph launch, both in stream order.
 *
 * Attention's split count grows with the context (kw__cuda_attn_chunks: one more chunk every 256 rows past 512, at
 * most 64) and changes the kernels launched and their grids. A graph is recorded for one count and re-recorded when
 * a replay would need another (kw_backend_graph_launch answers 0): that happens once every 256 tokens, while
 * recording for the largest count and letting surplus blocks exit would change the summation order, and with it the
 * bits, against the plain launches. The workspace the split kernels use must also stay where it was.
 */

struct kw_cuda_graph {
    kw_backend_graph base; /* first: a kw_backend_graph * points here */
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    float *work;                   /* the workspace at recording (the kernels hold its address) if they use it */
    struct kw_cuda_attn_rec *attn; /* the attention launches' choices (owned) */
    int n_attn;
};

__global__ void kw_k_set_step(int64_t *step, int64_t base) {
    *step = base;
}

int kw__cuda_record_attn(kw_cuda_backend *cu, int64_t T, int64_t Hq, int64_t q_pos0, int64_t n_kv, int64_t window,
                         int chunks) {
    if (cu->n_rec_attn == cu->cap_rec_attn) {
        const int cap = cu->cap_rec_attn ? 2 * cu->cap_rec_attn : 64;
        struct kw_cuda_attn_rec *r = (struct kw_cuda_attn_rec *)realloc(cu->rec_attn, (size_t)cap * sizeof *r);
        if (r == NULL) {
            cu->rec_failed = 1;
            KW_FAIL(KW_E_NOMEM, "cuda graph: out of memory");
        }
        cu->rec_attn = r;
        cu->cap_rec_attn = cap;
    }
    const struct kw_cuda_attn_rec r = {T, Hq, q_pos0, n_kv, window, chunks};
    cu->rec_attn[cu->n_rec_attn++] = r;
    return 0;
}

static void kw_cuda_graph_free(kw_backend_graph *graph) {
    struct kw_cuda_graph *g = (struct kw_cuda_graph *)graph;
    if (cudaSetDevice(kw_cuda(graph->backend)->device) != cudaSuccess) (void)cudaGetLastError();
    if (g->exec) cudaGraphExecDestroy(g->exec);
    if (g->graph) cudaGraphDestroy(g->graph);
    free(g->attn);
    free(g);
}

static int kw_cuda_graph_begin(kw_backend *backend, int64_t base) {
    KW_CUDA_ENTER(cu, backend);
    KW_RETURN_IF(cu->graphs_off, KW_E_UNSUPPORTED, "cuda step graphs are off (KW_CUDA_GRAPHS=0)");
    KW_RETURN_IF(cu->recording, KW_E_INVALID_ARG, "cuda graph_begin: already recording");
    /* thread-local: another thread's unrelated cudaMalloc does not break this recording */
    KW_CUDA_TRY(cudaStreamBeginCapture(cu->stream, cudaStreamCaptureModeThreadLocal));
    cu->recording = 1;
    cu->rec_base = base;
    cu->rec_failed = 0;
    cu->rec_uses_work = 0;
    cu->n_rec_attn = 0;
    return 0;
}

/* Instantiates the captured graph g into a new kw_cuda_graph (*out); takes g either way. */
static int kw_cuda_graph_make(kw_cuda_backend *cu, cudaGraph_t graph, kw_backend_graph **out) {
    struct kw_cuda_graph *g = (struct kw_cuda_graph *)calloc(1, sizeof *g);
    if (g == NULL) {
        cudaGraphDestroy(graph);
        KW_FAIL(KW_E_NOMEM, "cuda graph: out of memory");
    }
    g->base.backend = &cu->base;
    g->graph = graph;
    g->work = cu->rec_uses_work ? cu->work : NULL;
    g->attn = cu->rec_attn; /* moved: the next recording starts a new list */
    g->n_attn = cu->n_rec_attn;
    cu->rec_attn = NULL;
    cu->n_rec_attn = cu->cap_rec_attn = 0;
    const cudaError_t err = cudaGraphInstantiate(&g->exec, graph, 0);
    if (err != cudaSuccess) {
        g->exec = NULL;
        kw_cuda_graph_free(&g->base);
        return kw__cuda_fail(err, "cudaGraphInstantiate");
    }
    *out = &g->base;
    return 0;
}

static int kw_cuda_graph_end(kw_backend *backend, kw_backend_graph **out) {
    KW_CUDA_ENTER(cu, backend);
    KW_RETURN_IF(!cu->recording, KW_E_INVALID_ARG, "cuda graph_end: not recording");
    cu->recording = 0;
    cudaGraph_t graph = NULL;
    const cudaError_t err = cudaStreamEndCapture(cu->stream, &graph);
    if (err != cudaSuccess || cu->rec_failed) {
        if (graph) cudaGraphDestroy(graph);
        (void)cudaGetLastError();
        KW_RETURN_IF(cu->rec_failed, KW_E_UNSUPPORTED, "cuda graph_end: an op could not be recorded");
        return kw__cuda_fail(err, "cudaStreamEndCapture");
    }
    return kw_cuda_graph_make(cu, graph, out);
}

static int kw_cuda_graph_launch(kw_backend *backend, kw_backend_graph *graph, int64_t base) {
    KW_CUDA_ENTER(cu, backend);
    KW_RETURN_IF(cu->recording, KW_E_INVALID_ARG, "cuda graph_launch while recording");
    const struct kw_cuda_graph *g = (const struct kw_cuda_graph *)graph;
    if (g->work != NULL && g->work != cu->work) return 0;
    for (int i = 0; i < g->n_attn; ++i) {
        const struct kw_cuda_attn_rec *r = &g->attn[i];
        if (kw__cuda_attn_plan(r->T, r->Hq, r->q_pos0 + base, r->n_kv + base, r->window) != r->chunks) return 0;
    }
    KW_CUDA_LAUNCH(kw_k_set_step, 1, 1, 0, cu->stream, cu->d_step, base);
    KW_CUDA_LAUNCHED();
    KW_CUDA_TRY(cudaGraphLaunch(g->exec, cu->stream));
    return 1;
}

static int kw_cuda_create_stream(kw_backend *parent, kw_backend **out);

/* The function table (C++ has no designated initializers before C++20, so it is filled by a function). */
static struct kw_backend_i kw_cuda_make_iface(void) {
    struct kw_backend_i iface;
    memset(&iface, 0, sizeof iface);
    struct kw_backend_i *i = &iface;
    i->name = "cuda";
    i->kind = KW_BACKEND_CUDA;
    i->host_memory = 0;
    i->destroy = kw_cuda_destroy;
    i->supports = kw_cuda_supports;
    i->synchronize = kw_cuda_synchronize;
    i->alloc = kw_cuda_alloc;
    i->free = kw_cuda_free;
    i->upload = kw_cuda_upload;
    i->download = kw_cuda_download;
    i->memset_zero = kw_cuda_memset_zero;
    i->host_alloc = kw_cuda_host_alloc;
    i->host_free = kw_cuda_host_free;
    i->pack_quantized = kw__cuda_pack_quantized;
    i->get_rows = kw__cuda_get_rows;
    i->matmul = kw_cuda_matmul;
    i->rms_norm = kw__cuda_rms_norm;
    i->rope = kw__cuda_rope;
    i->rope_table = kw__cuda_rope_table;
    i->attention = kw__cuda_attention;
    i->kv_store = kw__cuda_kv_store;
    i->kv_load = kw__cuda_kv_load;
    i->glu = kw__cuda_glu;
    i->unary = kw__cuda_unary;
    i->add = kw__cuda_add;
    i->scale = kw__cuda_scale;
    i->softmax = kw__cuda_softmax;
    i->argmax = kw__cuda_argmax;
    i->copy = kw__cuda_copy;
    i->head_scale_add = kw__cuda_head_scale_add;
    i->kvq_store = kw__cuda_kvq_store;
    i->kvq_load = kw__cuda_kvq_load;
    i->kvq_truncate = kw__cuda_kvq_truncate;
    i->attention_kvq = kw__cuda_attention_kvq;
    i->select_scores = kw__cuda_select_scores;
    i->select_topk = kw__cuda_select_topk;
    i->wire_sizes = kw__cuda_wire_sizes;
    i->wire_encode = kw__cuda_wire_encode;
    i->wire_status = kw__cuda_wire_status;
    i->wire_outlier_work = kw__cuda_wire_outlier_work;
    i->wire_outliers = kw__cuda_wire_outliers;
    i->wire_rotate_rows = kw__cuda_wire_rotate_rows;
    i->wire_decode = kw__cuda_wire_decode;
    i->wire_outliers_apply = kw__cuda_wire_outliers_apply;
    i->wire_unrotate = kw__cuda_wire_unrotate;
    i->graph_begin = kw_cuda_graph_begin;
    i->graph_end = kw_cuda_graph_end;
    i->graph_launch = kw_cuda_graph_launch;
    i->graph_free = kw_cuda_graph_free;
    i->create_stream = kw_cuda_create_stream;
    return iface;
}

/* The per-stream set-up: stream, cuBLAS handle, error record, step word. */
static int kw_cuda_init_stream(kw_cuda_backend *cu) {
    KW_CUDA_TRY(cudaStreamCreateWithFlags(&cu->stream, cudaStreamNonBlocking));
    KW_CUBLAS_TRY(cublasCreate(&cu->cublas));
    KW_CUBLAS_TRY(cublasSetStream(cu->cublas, cu->stream));
    KW_CUBLAS_TRY(cublasSetMathMode(cu->cublas, CUBLAS_PEDANTIC_MATH)); /* fp32 means fp32: no TF32 */
    KW_CUDA_TRY(cudaMallocHost((void **)&cu->h_err, sizeof *cu->h_err));
    KW_FORWARD(kw__cuda_malloc(cu, sizeof *cu->d_err, (void **)&cu->d_err));
    KW_FORWARD(kw__cuda_malloc(cu, sizeof *cu->d_step, (void **)&cu->d_step));
    const char *graphs = getenv("KW_CUDA_GRAPHS");
    cu->graphs_off = graphs != NULL && strcmp(graphs, "0") == 0;
    const char *gemm = getenv("KW_CUDA_GEMM");
    KW_RETURN_IF(gemm != NULL && *gemm != '\0' && strcmp(gemm, "bf16") != 0 && strcmp(gemm, "f32") != 0,
                 KW_E_INVALID_ARG, "KW_CUDA_GEMM=%s: expected bf16 or f32", gemm);
    cu->gemm_bf16 = gemm != NULL && strcmp(gemm, "bf16") == 0;
    KW_CUDA_TRY(cudaMemsetAsync(cu->d_err, 0, sizeof *cu->d_err, cu->stream));
    KW_CUDA_TRY(cudaStreamSynchronize(cu->stream));
    return 0;
}

/* The set-up steps after the state exists; on failure the caller destroys the partial state. */
static int kw_cuda_init(kw_cuda_backend *cu) {
    KW_CUDA_TRY(cudaSetDevice(cu->device));
    int pools = 0;
    KW_CUDA_TRY(cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, cu->device));
    KW_RETURN_IF(!pools, KW_E_UNSUPPORTED, "CUDA device %d has no stream-ordered memory pools (cudaMallocAsync)",
                 cu->device);
    cudaMemPoolProps props;
    memset(&props, 0, sizeof props);
    props.allocType = cudaMemAllocationTypePinned;
    props.handleTypes = cudaMemHandleTypeNone;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = cu->device;
    KW_CUDA_TRY(cudaMemPoolCreate(&cu->pool, &props));
    cu->owns_pool = 1;
    uint64_t keep = UINT64_MAX;
    KW_CUDA_TRY(cudaMemPoolSetAttribute(cu->pool, cudaMemPoolAttrReleaseThreshold, &keep));
    return kw_cuda_init_stream(cu);
}

/* A stream context (kw_backend_create_stream): the parent's device and pool (borrowed), a stream and the rest of its
 * own. Cross-stream reuse in the shared pool is the stream-ordered allocator's rule (a block freed on one stream goes
 * to another once the free is known complete, or behind a dependency the driver inserts), so a context never sees
 * memory another stream still uses; each block here is allocated and freed on the one stream of its backend. */
static int kw_cuda_create_stream(kw_backend *parent, kw_backend **out) {
    const kw_cuda_backend *p = kw_cuda(parent);
    kw_cuda_backend *cu = (kw_cuda_backend *)calloc(1, sizeof *cu);
    KW_RETURN_IF(cu == NULL, KW_E_NOMEM, "kw_backend_create_stream: out of memory");
    kw__backend_init(&cu->base, parent->iface);
    cu->device = p->device;
    cu->pool = p->pool;
    int rc = 0;
    const cudaError_t err = cudaSetDevice(cu->device);
    if (err != cudaSuccess)
        rc = kw__cuda_fail(err, "cudaSetDevice");
    else
        rc = kw_cuda_init_stream(cu);
    if (rc < 0) {
        kw_cuda_destroy(&cu->base);
        return rc;
    }
    *out = &cu->base;
    return 0;
}

extern "C" int kw_backend_create_cuda(int device, kw_backend **out) {
    KW_RETURN_IF(out == NULL, KW_E_INVALID_ARG, "kw_backend_create_cuda: NULL out");
    *out = NULL;
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) (void)cudaGetLastError();
    KW_RETURN_IF(err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver || (err == cudaSuccess && count == 0),
                 KW_E_NO_DEVICE, "no CUDA device (%s)", err == cudaSuccess ? "count 0" : cudaGetErrorString(err));
    KW_RETURN_IF(err != cudaSuccess, KW_E_NO_DEVICE, "cudaGetDeviceCount: %s", cudaGetErrorString(err));
    KW_RETURN_IF(device < 0 || device >= count, KW_E_NO_DEVICE, "CUDA device %d does not exist (%d present)", device,
                 count);
    /* initialized once, thread-safely (a function-local static); read-only afterwards, so backends created
     * concurrently on several threads share it without a data race */
    static const struct kw_backend_i kw_cuda_iface = kw_cuda_make_iface();
    kw_cuda_backend *cu = (kw_cuda_backend *)calloc(1, sizeof *cu);
    KW_RETURN_IF(cu == NULL, KW_E_NOMEM, "kw_backend_create_cuda: out of memory");
    kw__backend_init(&cu->base, &kw_cuda_iface);
    cu->device = device;
    const int rc = kw_cuda_init(cu);
    if (rc < 0) {
        kw_cuda_destroy(&cu->base);
        return rc;
    }
    *out = &cu->base;
    return 0;
}
