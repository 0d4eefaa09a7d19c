/* kw_size.h: checked size arithmetic. Every size derived from a file or the network goes through these before it is
 * used to allocate or index. Each returns 0 and writes *out, or KW_E_OVERFLOW and leaves *out untouched. */
#ifndef KW_SIZE_H
#define KW_SIZE_H

#include <stddef.h>
#include <stdint.h>

#include "kw_status.h"

static inline int kw_size_add(size_t a, size_t b, size_t *out) {
    size_t r;
    if (__builtin_add_overflow(a, b, &r)) return KW_E_OVERFLOW;
    *out = r;
    return 0;
}

static inline int kw_size_mul(size_t a, size_t b, size_t *out) {
    size_t r;
    if (__builtin_mul_overflow(a, b, &r)) return KW_E_OVERFLOW;
    *out = r;
    return 0;
}

/* a * b * c */
static inline int kw_size_mul3(size_t a, size_t b, size_t c, size_t *out) {
    size_t ab;
    if (kw_size_mul(a, b, &ab) < 0) return KW_E_OVERFLOW;
    return kw_size_mul(ab, c, out);
}

/* a * b + c */
static inline int kw_size_muladd(size_t a, size_t b, size_t c, size_t *out) {
    size_t ab;
    if (kw_size_mul(a, b, &ab) < 0) return KW_E_OVERFLOW;
    return kw_size_add(ab, c, out);
}

/* Converts a signed 64-bit count (as found in JSON headers) to size_t; negative values are an overflow. */
static inline int kw_size_from_i64(int64_t v, size_t *out) {
    if (v < 0 || (uint64_t)v > (uint64_t)SIZE_MAX) return KW_E_OVERFLOW;
    *out = (size_t)v;
    return 0;
}

/* Rounds a up to a multiple of align (a power of two). */
static inline int kw_size_align_up(size_t a, size_t align, size_t *out) {
    size_t r;
    if (kw_size_add(a, align - 1, &r) < 0) return KW_E_OVERFLOW;
    *out = r & ~(align - 1);
    return 0;
}

#endif /* KW_SIZE_H */
