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

/* A 64-bit FNV-1a step over bytes, to compare what two decoders produced. */
static inline uint64_t fuzz_hash(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = (const unsigned char *)data;
    for (size_t i = 0; i < n; ++i)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

#endif /* KW_FUZZ_CHECK_H */
