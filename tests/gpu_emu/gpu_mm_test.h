/* gpu_mm_test.h: scaffolding of the CUDA matmul tests (test_cuda_qmatmul.c, test_cuda_gemm_bf16.c), each built for
 * the emulator and, with KW_TEST_REAL_CUDA, for a device: the backend constructor, counted checks, a status check that
 * exits, and one matmul from host arrays. Test-only; include once per test executable. */
#ifndef GPU_MM_TEST_H
#define GPU_MM_TEST_H

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/kw_status.h"
#include "kernels/kw_backend.h"
#ifndef KW_TEST_REAL_CUDA
#include "kernels/cuda/emu/kw_cuda_emu_api.h"
#define kw_create_gpu kw_backend_create_cuda_emu
#else
#define kw_create_gpu kw_backend_create_cuda
#endif

static size_t failed = 0, run = 0; /* checks failed and run */

static inline void kw_expect(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Counts a check; prints "FAIL <message>" when ok is 0. */
static inline void kw_expect(int ok, const char *fmt, ...) {
    ++run;
    if (!ok) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "FAIL ");
        vfprintf(stderr, fmt, ap);
        fprintf(stderr, "\n");
        va_end(ap);
        ++failed;
    }
}

/* A negative status ends the test (exit 1), naming what failed. */
static inline void kw_check(int rc, const char *what) {
    if (rc < 0) {
        fprintf(stderr, "%s: %s (%s)\n", what, kw_status_name(rc), kw_error_detail());
        exit(1);
    }
}

/* A device tensor holding host values (uploaded; synchronized by the caller). */
static inline kw_tensor kw_dev(kw_backend *b, int32_t ndim, const int64_t *ne, const void *host, enum kw_dtype dtype) {
    kw_tensor t;
    kw_check(kw_tensor_alloc(b, &t, dtype, ndim, ne), "alloc");
    kw_check(kw_backend_upload(b, &t, 0, host, kw_tensor_nbytes(&t)), "upload");
    return t;
}

/* y (M, N) = x w^T (+ bias) on b, w already there; x, bias host arrays. */
static inline void kw_mm(kw_backend *b, float *y, const float *x, const kw_tensor *w, const float *bias, int64_t M) {
    const int64_t N = w->ne[0], K = w->ne[1];
    kw_tensor tx, ty, tb = {0};
    if (kw_backend_kind(b) == KW_BACKEND_CPU) {
        kw_check(kw_tensor_from_host(b, &tx, KW_DTYPE_F32, 2, (int64_t[]){M, K}, x), "x");
        if (bias) kw_check(kw_tensor_from_host(b, &tb, KW_DTYPE_F32, 1, (int64_t[]){N}, bias), "bias");
    } else {
        tx = kw_dev(b, 2, (int64_t[]){M, K}, x, KW_DTYPE_F32);
        if (bias) tb = kw_dev(b, 1, (int64_t[]){N}, bias, KW_DTYPE_F32);
    }
    kw_check(kw_tensor_alloc(b, &ty, KW_DTYPE_F32, 2, (int64_t[]){M, N}), "y");
    kw_check(kw_op_matmul(b, &ty, &tx, w, bias ? &tb : NULL), "matmul");
    kw_check(kw_backend_download(b, y, &ty, 0, (size_t)(M * N) * sizeof(float)), "download");
    kw_check(kw_backend_synchronize(b), "synchronize");
    kw_tensor_free(&tx), kw_tensor_free(&ty), kw_tensor_free(&tb);
}

#endif /* GPU_MM_TEST_H */
