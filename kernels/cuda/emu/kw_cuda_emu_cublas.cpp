/* kw_cuda_emu_cublas.cpp: cuBLAS in the CUDA emulator (kw_cuda_emu_cublas.h): handles, and GEMMs queued on the handle's
 * stream that widen A and B to dense fp32 copies of op(A) and op(B) (rounded as the compute type allows), multiply
 * them with OpenBLAS's sgemm, and write alpha A B + beta C back in C's type. Not a model of cuBLAS's kernels: their
 * summation order is unspecified, and so is OpenBLAS's; both accumulate in fp32.
 */
#include "kernels/cuda/emu/kw_cuda_emu_internal.h"
#include "kernels/kw_op_math.h"

#include <cblas.h>
#include <stdio.h>
#include <string.h>

namespace kwemu {

struct emu_cublas {
    cudaStream_t stream = nullptr;
    cublasMath_t math = CUBLAS_DEFAULT_MATH;
    int valid = 1;
};

namespace {

std::vector<std::unique_ptr<emu_cublas>> g_handles; /* guarded by emu_lock(); destroyed ones stay, invalid */

emu_cublas *find_handle(cublasHandle_t h) {
    for (const auto &x : g_handles)
        if (x.get() == h) return x->valid ? x.get() : nullptr;
    return nullptr;
}

size_t type_size(cudaDataType_t t) {
    return t == CUDA_R_32F ? 4 : 2;
}

/* The project's dtype for a cuBLAS type: element loads and stores are kernels/kw_op_math.h's, the backends' own. */
enum kw_dtype kw_type(cudaDataType_t t) {
    return t == CUDA_R_16BF ? KW_DTYPE_BF16 : t == CUDA_R_16F ? KW_DTYPE_F16 : KW_DTYPE_F32;
}

float load(const void *p, cudaDataType_t t, size_t i) {
    return kw_opm_load(p, kw_type(t), (int64_t)i);
}

void store(void *p, cudaDataType_t t, size_t i, float v) {
    kw_opm_store(p, kw_type(t), (int64_t)i, v);
}

/* fp32 rounded to TF32 (10 fraction bits), to nearest even. */
float round_tf32(float v) {
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    if ((u & 0x7f800000u) != 0x7f800000u) {
        u += 0xfffu + ((u >> 13) & 1u);
        u &= ~0x1fffu;
    }
    memcpy(&v, &u, sizeof v);
    return v;
}

enum input_rounding { ROUND_NONE, ROUND_TF32, ROUND_BF16, ROUND_F16 };

float round_input(float v, input_rounding r) {
    switch (r) {
    case ROUND_TF32:
        return round_tf32(v);
    case ROUND_BF16:
        return kw_round_bf16(v);
    case ROUND_F16:
        return kw_f16_to_f32(kw_f32_to_f16(v));
    case ROUND_NONE:
        break;
    }
    return v;
}

struct gemm_args {
    int trans_a, trans_b;
    int m, n, k;
    float alpha, beta;
    const void *a;
    cudaDataType_t a_type;
    int lda;
    const void *b;
    cudaDataType_t b_type;
    int ldb;
    void *c;
    cudaDataType_t c_type;
    int ldc;
    input_rounding rounding;
};

/* Elements a column-major (rows x cols, ld) matrix spans. */
size_t extent(int rows, int cols, int ld) {
    return rows == 0 || cols == 0 ? 0 : (size_t)ld * (size_t)(cols - 1) + (size_t)rows;
}

void run_gemm(const gemm_args &g, int device) {
    const int a_rows = g.trans_a ? g.k : g.m, a_cols = g.trans_a ? g.m : g.k;
    const int b_rows = g.trans_b ? g.n : g.k, b_cols = g.trans_b ? g.k : g.n;
    const size_t a_bytes = extent(a_rows, a_cols, g.lda) * type_size(g.a_type);
    const size_t b_bytes = extent(b_rows, b_cols, g.ldb) * type_size(g.b_type);
    const size_t c_bytes = extent(g.m, g.n, g.ldc) * type_size(g.c_type);
    if ((a_bytes && !device_range_ok(g.a, a_bytes, device)) || (b_bytes && !device_range_ok(g.b, b_bytes, device)) ||
        (c_bytes && !device_range_ok(g.c, c_bytes, device))) {
        set_fault(device, cudaErrorIllegalAddress,
                  strf("cublasGemmEx m=%d n=%d k=%d: a matrix is not inside one device allocation (A: %s, %zu bytes; "
                       "B: %s, %zu bytes; C: %s, %zu bytes)",
                       g.m, g.n, g.k, describe_pointer(g.a).c_str(), a_bytes, describe_pointer(g.b).c_str(), b_bytes,
                       describe_pointer(g.c).c_str(), c_bytes));
        return;
    }
    const size_t m = (size_t)g.m, n = (size_t)g.n, k = (size_t)g.k;
    std::vector<float> a(m * k), b(k * n), c(m * n, 0.0f);
    for (size_t j = 0; j < k; ++j) /* op(A) is m x k */
        for (size_t i = 0; i < m; ++i)
            a[j * m + i] =
                round_input(load(g.a, g.a_type, g.trans_a ? i * (size_t)g.lda + j : j * (size_t)g.lda + i), g.rounding);
    for (size_t j = 0; j < n; ++j) /* op(B) is k x n */
        for (size_t i = 0; i < k; ++i)
            b[j * k + i] =
                round_input(load(g.b, g.b_type, g.trans_b ? i * (size_t)g.ldb + j : j * (size_t)g.ldb + i), g.rounding);
    /* beta == 0: C is not read (it may hold NaN), as cuBLAS documents */
    if (g.beta != 0.0f)
        for (size_t j = 0; j < n; ++j)
            for (size_t i = 0; i < m; ++i)
                c[j * m + i] = load(g.c, g.c_type, j * (size_t)g.ldc + i);
    if (k > 0)
        cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, g.m, g.n, g.k, g.alpha, a.data(), g.m, b.data(), g.k,
                    g.beta, c.data(), g.m);
    else
        for (float &v : c)
            v *= g.beta;
    for (size_t j = 0; j < n; ++j)
        for (size_t i = 0; i < m; ++i)
            store(g.c, g.c_type, j * (size_t)g.ldc + i, c[j * m + i]);
}

cublasStatus_t invalid(const std::string &why) {
    note_failure("CUBLAS_STATUS_INVALID_VALUE", why);
    return CUBLAS_STATUS_INVALID_VALUE;
}

} // namespace

inline namespace api {

cublasStatus_t cublasCreate(cublasHandle_t *handle) {
    std::lock_guard<std::recursive_mutex> lock(emu_lock());
    if (handle == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) return CUBLAS_STATUS_NOT_INITIALIZED;
    g_handles.push_back(std::unique_ptr<emu_cublas>(new emu_cublas()));
    *handle = g_handles.back().get();
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t handle) {
    std::lock_guard<std::recursive_mutex> lock(emu_lock());
    emu_cublas *h = find_handle(handle);
    if (h == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
    (void)cudaStreamSynchronize(h->stream);
    h->valid = 0;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
    std::lock_guard<std::recursive_mutex> lock(emu_lock());
    emu_cublas *h = find_handle(handle);
    if (h == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
    h->stream = stream;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetStream(cublasHandle_t handle, cudaStream_t *stream) {
    std::lock_guard<std::recursive_mutex> lock(emu_lock());
    emu_cublas *h = find_handle(handle);
    if (h == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (stream == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
    *stream = h->stream;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
    std::lock_guard<std::recursive_mutex> lock(emu_lock());
    emu_cublas *h = find_handle(handle);
    if (h == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
    const unsigned int base = (unsigned int)mode & ~16u;
    if (base > CUBLAS_TF32_TENSOR_OP_MATH) return CUBLAS_STATUS_INVALID_VALUE;
    h->math = mode;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetMathMode(cublasHandle_t handle, cublasMath_t *mode) {
    std::lock_guard<std::recursive_mutex> lock(emu_lock());
    emu_cublas *h = find_handle(handle);
    if (h == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (mode == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
    *mode = h->math;
    return CUBLAS_STATUS_SUCCESS;
}

const char *cublasGetStatusName(cublasStatus_t status) {
    switch (status) {
    case CUBLAS_STATUS_SUCCESS:
        return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
        return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED:
        return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
        return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH:
        return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR:
        return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED:
        return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR:
        return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED:
        return "CUBLAS_STATUS_NOT_SUPPORTED";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

const char *cublasGetStatusString(cublasStatus_t status) {
    switch (status) {
    case CUBLAS_STATUS_SUCCESS:
        return "the operation completed successfully";
    case CUBLAS_STATUS_NOT_INITIALIZED:
        return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED:
        return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE:
        return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_ARCH_MISMATCH:
        return "an absent device architectural feature is required";
    case CUBLAS_STATUS_MAPPING_ERROR:
        return "an access to GPU memory space failed";
    case CUBLAS_STATUS_EXECUTION_FAILED:
        return "the GPU program failed to execute";
    case CUBLAS_STATUS_INTERNAL_ERROR:
        return "an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED:
        return "the functionality requested is not supported";
    }
    return "unknown cuBLAS status";
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                          int m, int n, int k, const void *alpha, const void *A, cudaDataType_t Atype,
                                          int lda, long long stride_a, const void *B, cudaDataType_t Btype, int ldb,
                                          long long stride_b, const void *beta, void *C, cudaDataType_t Ctype, int ldc,
                                          long long stride_c, int batch_count, cublasComputeType_t computeType,
                                          cublasGemmAlgo_t algo) {
    std::lock_guard<std::recursive_mutex> lock(emu_lock());
    emu_cublas *h = find_handle(handle);
    if (h == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
    if ((transa != CUBLAS_OP_N && transa != CUBLAS_OP_T) || (transb != CUBLAS_OP_N && transb != CUBLAS_OP_T))
        return invalid(strf("transa %d / transb %d", (int)transa, (int)transb));
    if (m < 0 || n < 0 || k < 0 || batch_count < 0)
        return invalid(strf("m=%d n=%d k=%d batch=%d", m, n, k, batch_count));
    const int a_rows = transa == CUBLAS_OP_N ? m : k, b_rows = transb == CUBLAS_OP_N ? k : n;
    if (lda < (a_rows > 1 ? a_rows : 1) || ldb < (b_rows > 1 ? b_rows : 1) || ldc < (m > 1 ? m : 1))
        return invalid(strf("lda=%d ldb=%d ldc=%d for m=%d n=%d k=%d", lda, ldb, ldc, m, n, k));
    if (alpha == nullptr || beta == nullptr) return invalid("alpha or beta is NULL");
    if (algo != CUBLAS_GEMM_DEFAULT && algo != CUBLAS_GEMM_DEFAULT_TENSOR_OP) return invalid("unknown algorithm");
    const int known_type = (Atype == CUDA_R_32F || Atype == CUDA_R_16F || Atype == CUDA_R_16BF) &&
                           (Ctype == CUDA_R_32F || Ctype == CUDA_R_16F || Ctype == CUDA_R_16BF);
    /* cuBLAS's GemmEx table for the 32F compute types: A and B of one type; C of that type or fp32 */
    if (!known_type || Atype != Btype || (Ctype != CUDA_R_32F && Ctype != Atype)) return CUBLAS_STATUS_NOT_SUPPORTED;
    gemm_args g;
    g.rounding = ROUND_NONE;
    switch (computeType) {
    case CUBLAS_COMPUTE_32F:
        if ((h->math & ~16) == CUBLAS_TF32_TENSOR_OP_MATH && Atype == CUDA_R_32F) g.rounding = ROUND_TF32;
        break;
    case CUBLAS_COMPUTE_32F_PEDANTIC:
        break;
    case CUBLAS_COMPUTE_32F_FAST_TF32:
        g.rounding = Atype == CUDA_R_32F ? ROUND_TF32 : ROUND_NONE;
        break;
    case CUBLAS_COMPUTE_32F_FAST_16BF:
        g.rounding = ROUND_BF16;
        break;
    case CUBLAS_COMPUTE_32F_FAST_16F:
        g.rounding = ROUND_F16;
        break;
    default:
        return CUBLAS_STATUS_NOT_SUPPORTED; /* fp16 accumulation is not emulated */
    }
    if ((h->math & ~16) == CUBLAS_PEDANTIC_MATH) g.rounding = ROUND_NONE;
    g.trans_a = transa == CUBLAS_OP_T;
    g.trans_b = transb == CUBLAS_OP_T;
    g.m = m;
    g.n = n;
    g.k = k;
    g.alpha = *(const float *)alpha; /* host pointer mode: read at the call */
    g.beta = *(const float *)beta;
    g.a_type = Atype;
    g.b_type = Btype;
    g.c_type = Ctype;
    g.lda = lda;
    g.ldb = ldb;
    g.ldc = ldc;
    if (m == 0 || n == 0 || batch_count == 0) return CUBLAS_STATUS_SUCCESS;
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess) return CUBLAS_STATUS_NOT_INITIALIZED;
    const cudaError_t err = enqueue(h->stream, "cublasGemmEx", [=]() {
        for (int i = 0; i < batch_count; ++i) {
            gemm_args one = g;
            one.a = (const char *)A + (size_t)(stride_a * i) * type_size(Atype);
            one.b = (const char *)B + (size_t)(stride_b * i) * type_size(Btype);
            one.c = (char *)C + (size_t)(stride_c * i) * type_size(Ctype);
            run_gemm(one, device);
        }
    });
    return err == cudaSuccess ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                            int k, const void *alpha, const void *A, cudaDataType_t Atype, int lda, const void *B,
                            cudaDataType_t Btype, int ldb, const void *beta, void *C, cudaDataType_t Ctype, int ldc,
                            cublasComputeType_t computeType, cublasGemmAlgo_t algo) {
    return cublasGemmStridedBatchedEx(handle, transa, transb, m, n, k, alpha, A, Atype, lda, 0, B, Btype, ldb, 0, beta,
                                      C, Ctype, ldc, 0, 1, computeType, algo);
}

cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                           int k, const float *alpha, const float *A, int lda, const float *B, int ldb,
                           const float *beta, float *C, int ldc) {
    return cublasGemmEx(handle, transa, transb, m, n, k, alpha, A, CUDA_R_32F, lda, B, CUDA_R_32F, ldb, beta, C,
                        CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}

} // namespace api
} // namespace kwemu
