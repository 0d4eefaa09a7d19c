/* kw_cpu_test_util.h: helpers the CPU-backend bit-identity tests share (test_invariance.c, test_qmatmul.c): a backend
 * of a chosen ISA, a bit-for-bit comparison, host arrays wrapped as tensors, a seeded random stream. Static inline:
 * include after <cmocka.h>; a test may use any subset. */
#ifndef KW_CPU_TEST_UTIL_H
#define KW_CPU_TEST_UTIL_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/kw_half.h"
#include "kernels/kw_backend.h"

/* A CPU backend running isa ("scalar", "avx2", "avx512"; lowered to what the machine has) on threads threads. The
 * caller destroys it. */
static inline kw_backend *kw_cpu(const char *isa, int threads) {
    setenv("KW_CPU_ISA", isa, 1);
    kw_backend *b = NULL;
    assert_int_equal(kw_backend_create_cpu(threads, &b), 0);
    unsetenv("KW_CPU_ISA");
    return b;
}

/* Uniform in [-1, 1) from the xorshift64 stream *state. */
static inline float kw_rand_from(uint64_t *state) {
    *state ^= *state << 13, *state ^= *state >> 7, *state ^= *state << 17;
    return (float)((double)(*state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* Fails the test (naming what) unless a and b agree bit for bit (any NaN equals any NaN). */
static inline void kw_same_bits(const float *a, const float *b, int64_t n, const char *what) {
    for (int64_t i = 0; i < n; ++i) {
        if (isnan(a[i]) && isnan(b[i])) continue;
        if (kw_f32_bits(a[i]) != kw_f32_bits(b[i])) {
            fprintf(stderr, "%s: element %lld differs: %.9g (0x%08x) vs %.9g (0x%08x)\n", what, (long long)i,
                    (double)a[i], kw_f32_bits(a[i]), (double)b[i], kw_f32_bits(b[i]));
            fail();
        }
    }
}

/* A host array wrapped as a backend tensor (the CPU backend aliases host memory). */
static inline kw_tensor kw_wrap(kw_backend *b, enum kw_dtype dtype, int32_t ndim, const int64_t *ne, const void *data) {
    kw_tensor t;
    assert_int_equal(kw_tensor_from_host(b, &t, dtype, ndim, ne, data), 0);
    return t;
}

#endif /* KW_CPU_TEST_UTIL_H */
