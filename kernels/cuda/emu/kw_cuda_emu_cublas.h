/* kw_cuda_emu_cublas.h: the cuBLAS subset the project calls, routed to a CPU GEMM (OpenBLAS sgemm on fp32 copies)
 * queued on the handle's stream. Part of the CUDA emulation layer (kernels/cuda/emu/kw_cuda_emu.h).
 *
 * Numerics follow what cuBLAS promises, not what it happens to do: products accumulate in fp32 (in OpenBLAS's order,
 * which the parity tolerances allow as any order), and the reduced-precision modes are applied where cuBLAS may apply
 * them: CUBLAS_COMPUTE_32F_FAST_TF32 (or CUBLAS_TF32_TENSOR_OP_MATH with CUBLAS_COMPUTE_32F) rounds A and B to TF32,
 * CUBLAS_COMPUTE_32F_FAST_16BF / _16F round them to bf16 / fp16, so a kernel that allows TF32 sees TF32's error here
 * too. Arguments are checked as cuBLAS checks them (sizes, leading dimensions, type combinations) and, beyond that,
 * every matrix must lie inside one live device allocation.
 */
#ifndef KW_CUDA_EMU_CUBLAS_H
#define KW_CUDA_EMU_CUBLAS_H

#include "kernels/cuda/emu/kw_cuda_emu_runtime.h"

namespace kwemu {

struct emu_cublas;

inline namespace api {

enum cublasStatus_t {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_ALLOC_FAILED = 3,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_ARCH_MISMATCH = 8,
    CUBLAS_STATUS_MAPPING_ERROR = 11,
    CUBLAS_STATUS_EXECUTION_FAILED = 13,
    CUBLAS_STATUS_INTERNAL_ERROR = 14,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
};

enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUBLAS_OP_C = 2 };

enum cublasMath_t {
    CUBLAS_DEFAULT_MATH = 0,
    CUBLAS_TENSOR_OP_MATH = 1,
    CUBLAS_PEDANTIC_MATH = 2,
    CUBLAS_TF32_TENSOR_OP_MATH = 3,
    CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION = 16,
};

enum cublasComputeType_t {
    CUBLAS_COMPUTE_16F = 64,
    CUBLAS_COMPUTE_16F_PEDANTIC = 65,
    CUBLAS_COMPUTE_32F = 68,
    CUBLAS_COMPUTE_32F_PEDANTIC = 69,
    CUBLAS_COMPUTE_32F_FAST_16F = 74,
    CUBLAS_COMPUTE_32F_FAST_16BF = 75,
    CUBLAS_COMPUTE_32F_FAST_TF32 = 77,
};

enum cublasGemmAlgo_t { CUBLAS_GEMM_DEFAULT = -1, CUBLAS_GEMM_DEFAULT_TENSOR_OP = 99 };

enum cudaDataType_t { CUDA_R_32F = 0, CUDA_R_16F = 2, CUDA_R_16BF = 14 };

typedef emu_cublas *cublasHandle_t;

cublasStatus_t cublasCreate(cublasHandle_t *handle);
/* Waits for the handle's queued work, then releases it. */
cublasStatus_t cublasDestroy(cublasHandle_t handle);
cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream);
cublasStatus_t cublasGetStream(cublasHandle_t handle, cudaStream_t *stream);
cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode);
cublasStatus_t cublasGetMathMode(cublasHandle_t handle, cublasMath_t *mode);
const char *cublasGetStatusString(cublasStatus_t status);
const char *cublasGetStatusName(cublasStatus_t status);

/* C = alpha op(A) op(B) + beta C, column-major; alpha and beta are host pointers to floats (compute type 32F) read at
 * the call. */
cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                            int k, const void *alpha, const void *A, cudaDataType_t Atype, int lda, const void *B,
                            cudaDataType_t Btype, int ldb, const void *beta, void *C, cudaDataType_t Ctype, int ldc,
                            cublasComputeType_t computeType, cublasGemmAlgo_t algo);
/* batch_count GEMMs; matrix i of A, B, C starts stride_a * i, stride_b * i, stride_c * i elements further. */
cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                          int m, int n, int k, const void *alpha, const void *A, cudaDataType_t Atype,
                                          int lda, long long stride_a, const void *B, cudaDataType_t Btype, int ldb,
                                          long long stride_b, const void *beta, void *C, cudaDataType_t Ctype, int ldc,
                                          long long stride_c, int batch_count, cublasComputeType_t computeType,
                                          cublasGemmAlgo_t algo);
cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                           int k, const float *alpha, const float *A, int lda, const float *B, int ldb,
                           const float *beta, float *C, int ldc);

} // namespace api
} // namespace kwemu

#endif /* KW_CUDA_EMU_CUBLAS_H */
