/* kw_bytes.h: little-endian loads and stores for byte buffers (wire formats, safetensors headers, zip archives).
 * They compile to single moves on little-endian hosts and are correct on any host. The caller checks bounds. */
#ifndef KW_BYTES_H
#define KW_BYTES_H

#include <stdint.h>
#include <string.h>

static inline uint16_t kw_load_le16(const void *p) {
    const uint8_t *b = (const uint8_t *)p;
    return (uint16_t)(b[0] | (uint16_t)b[1] << 8);
}

static inline uint32_t kw_load_le32(const void *p) {
    const uint8_t *b = (const uint8_t *)p;
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static inline uint64_t kw_load_le64(const void *p) {
    const uint8_t *b = (const uint8_t *)p;
    return (uint64_t)kw_load_le32(b) | (uint64_t)kw_load_le32(b + 4) << 32;
}

static inline void kw_store_le16(void *p, uint16_t v) {
    uint8_t *b = (uint8_t *)p;
    b[0] = (uint8_t)v;
    b[1] = (uint8_t)(v >> 8);
}

static inline void kw_store_le32(void *p, uint32_t v) {
    uint8_t *b = (uint8_t *)p;
    b[0] = (uint8_t)v;
    b[1] = (uint8_t)(v >> 8);
    b[2] = (uint8_t)(v >> 16);
    b[3] = (uint8_t)(v >> 24);
}

static inline void kw_store_le64(void *p, uint64_t v) {
    kw_store_le32(p, (uint32_t)v);
    kw_store_le32((uint8_t *)p + 4, (uint32_t)(v >> 32));
}

static inline float kw_load_lef32(const void *p) {
    const uint32_t u = kw_load_le32(p);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline void kw_store_lef32(void *p, float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    kw_store_le32(p, u);
}

/* The smallest and largest of the n (>= 0) int8 at v in *lo, *hi (127 and -128 for n = 0): blocks of 64 without an
 * early exit, which the compiler vectorizes at -O2 (the range checks of quantized codes at model load). */
static inline void kw_i8_range(const int8_t *v, int64_t n, int8_t *lo, int8_t *hi) {
    int8_t mn = 127, mx = -128;
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        int8_t a = 127, b = -128;
        for (int j = 0; j < 64; ++j) {
            a = v[i + j] < a ? v[i + j] : a;
            b = v[i + j] > b ? v[i + j] : b;
        }
        mn = a < mn ? a : mn;
        mx = b > mx ? b : mx;
    }
    for (; i < n; ++i) {
        mn = v[i] < mn ? v[i] : mn;
        mx = v[i] > mx ? v[i] : mx;
    }
    *lo = mn;
    *hi = mx;
}

#endif /* KW_BYTES_H */
