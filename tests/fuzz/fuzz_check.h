/* fuzz_check.h: FUZZ_CHECK(cond), the assertion of the fuzz targets: a violated invariant prints where and aborts
 * (it is our bug, never the input's fault), in libFuzzer runs and in the corpus replay alike. Fuzz-only code. */
#ifndef KW_FUZZ_CHECK_H
#define KW_FUZZ_CHECK_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define FUZZ_CHECK(cond)                                                                                               \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz invariant failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__);                         \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

/* The element count of a decoded tensor's shape (every extent checked non-negative), the model-file targets' check
 * that nbytes matches it. */
static inline size_t fuzz_numel(int32_t ndim, const int64_t *shape) {
    size_t numel = 1;
    for (int32_t d = 0; d < ndim; ++d) {
        FUZZ_CHECK(shape[d] >= 0);
        numel *= (size_t)shape[d];
    }
    return numel;
}

/* A 64-bit FNV-1a step over bytes, to compare what two decoders produced. */
static inline uint64_t fuzz_hash(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = (const unsigned char *)data;
    for (size_t i = 0; i < n; ++i)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

/* The next chunk size of a stream fed in pieces: one time in eight `big` bytes, else 1..small, never more than
 * left. Advances *seed (a 64-bit LCG), so the same input always gives the same chunking. */
static inline size_t fuzz_next_chunk(uint64_t *seed, size_t small, size_t big, size_t left) {
    *seed = *seed * 6364136223846793005ull + 1442695040888963407ull;
    const uint32_t pick = (uint32_t)(*seed >> 33);
    const size_t n = (pick & 7) == 0 ? big : 1 + (pick >> 3) % small;
    return n < left ? n : left;
}

#endif /* KW_FUZZ_CHECK_H */
