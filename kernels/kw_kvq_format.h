/* kw_kvq_format.h: the byte layout and the number format of the paged quantized KV cache (kw_kvq_geom in
 * kw_backend.h), shared by the CPU backend and the plain-C oracle so both read and write the same bytes.
 *
 * One storage tensor holds one layer's K or V of one sequence, head after head. Codes are symmetric integers
 * (int8: -127..127 in a byte; int4: -7..7 stored as code + 8 in a nibble, 16 values per 8 bytes, byte i of a block of
 * 16 holding value i in its low and value 8 + i in its high nibble; int6: -31..31 stored as u = code + 32 in 12 bytes
 * per 16 values, the low nibbles of u as int4 stores its nibbles, then 4 bytes of high bit pairs, value j's in byte
 * 8 + j % 4 at bit 2 * (j / 4)). A scale is one byte s: 0 means the group is all
 * zeros, 1..255 mean 2^((s - 128) / 8) (steps of 9%, range 2^-15.9 .. 2^15.9), and a value is fl(code * scale) in f32.
 *   keys (per channel, KIVI): per head n_pages = ceil(cap / P) pages of P rows; a page holds P rows of D codes, then
 *     (after all the pages' codes) D scales per page, one per channel, fixed when the page fills; then the tail: P
 *     bf16 rows holding the rows of the last, not yet full page (rows [floor(n / P) * P, n) of a cache of n rows).
 *   values (per token): per head cap rows of D codes, then per row D / G scales, one per group of G = 32 channels
 *     (16 when D is not a multiple of 32), set when the row is stored.
 * No page table is stored: page p of head h sits at a fixed offset, so the table costs no bytes.
 * The functions are KW_HD: the CUDA backend (kernels/cuda/kw_cuda_kvq.cu) runs these very lines, so its bytes are the
 * CPU's (the only library calls are exact ones, or, for log2f, a first guess the loops of kw_kvq_choose_scale correct).
 */
#ifndef KW_KVQ_FORMAT_H
#define KW_KVQ_FORMAT_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "common/kw_half.h"
#include "common/kw_hd.h"
#ifdef __cplusplus
extern "C" {
#endif
#include "kernels/kw_backend.h"
#ifdef __cplusplus
}
#endif

/* The largest code magnitude of a codec (127 or 7), 0 for an unknown codec. */
KW_HD int kw_kvq_code_max(enum kw_kvq_codec codec) {
    return codec == KW_KVQ_INT8 ? 127 : codec == KW_KVQ_INT6 ? 31 : codec == KW_KVQ_INT4 ? 7 : 0;
}

/* Bytes of one row of D codes. */
KW_HD size_t kw_kvq_row_bytes(enum kw_kvq_codec codec, int64_t D) {
    return codec == KW_KVQ_INT4 ? (size_t)D / 2 : codec == KW_KVQ_INT6 ? (size_t)D / 16 * 12 : (size_t)D;
}

KW_HD int64_t kw_kvq_n_pages(const kw_kvq_geom *g) {
    return (g->cap + g->page_tokens - 1) / g->page_tokens;
}

/* Channels per value scale: 32, or 16 when D is not a multiple of 32. */
KW_HD int64_t kw_kvq_value_group(int64_t D) {
    return D % 32 == 0 ? 32 : 16;
}

/* Offsets inside the region of one head, and that region's size. */
KW_HD size_t kw_kvq_scales_offset(const kw_kvq_geom *g) {
    const int64_t rows = g->keys ? kw_kvq_n_pages(g) * g->page_tokens : g->cap;
    return (size_t)rows * kw_kvq_row_bytes(g->codec, g->D);
}
KW_HD size_t kw_kvq_tail_offset(const kw_kvq_geom *g) { /* keys only */
    return kw_kvq_scales_offset(g) + (size_t)(kw_kvq_n_pages(g) * g->D);
}
KW_HD size_t kw_kvq_head_bytes(const kw_kvq_geom *g) {
    if (g->keys) return kw_kvq_tail_offset(g) + (size_t)(g->page_tokens * g->D) * 2;
    return kw_kvq_scales_offset(g) + (size_t)(g->cap * (g->D / kw_kvq_value_group(g->D)));
}

/* 2^(i / 8) for i = 0..7, rounded to f32 (the scale format's mantissas; literals, not a table, so device code has
 * them too). */
KW_HD float kw_kvq_root8(int i) {
    return i == 0   ? 0x1p+0f
           : i == 1 ? 0x1.172b84p+0f
           : i == 2 ? 0x1.306fe0p+0f
           : i == 3 ? 0x1.4bfdaep+0f
           : i == 4 ? 0x1.6a09e6p+0f
           : i == 5 ? 0x1.8ace54p+0f
           : i == 6 ? 0x1.ae89fap+0f
                    : 0x1.d5818ep+0f;
}

/* The value of scale byte s (0 for s = 0). */
KW_HD float kw_kvq_scale(uint8_t s) {
    if (s == 0) return 0.0f;
    const int e = (int)s - 128, frac = ((e % 8) + 8) % 8;
    return ldexpf(kw_kvq_root8(frac), (e - frac) / 8);
}

/* The scale byte for a group whose largest magnitude is amax: the smallest s with scale(s) * code_max >= amax (255
 * when none is, 0 when amax is 0). A NaN amax gives 255. */
KW_HD uint8_t kw_kvq_choose_scale(float amax, int code_max) {
    if (amax == 0.0f) return 0;
    if (!(amax <= 0x1p+15f * (float)code_max)) return 255; /* huge, infinite or NaN */
    int s = (int)ceilf(8.0f * log2f(amax / (float)code_max)) + 128;
    if (s < 1) s = 1;
    if (s > 255) s = 255;
    while (s > 1 && kw_kvq_scale((uint8_t)(s - 1)) * (float)code_max >= amax)
        --s;
    while (s < 255 && kw_kvq_scale((uint8_t)s) * (float)code_max < amax)
        ++s;
    return (uint8_t)s;
}

/* The code of x under scale byte s: x / scale rounded to nearest even, clamped to +-code_max; NaN gives 0. */
KW_HD int kw_kvq_quantize(float x, uint8_t s, int code_max) {
    if (s == 0 || x != x) return 0;
    const float r = nearbyintf(x / kw_kvq_scale(s));
    return r > (float)code_max ? code_max : r < -(float)code_max ? -code_max : (int)r;
}

/* Reads code i of a row of codes. */
KW_HD int kw_kvq_get_code(const uint8_t *row, enum kw_kvq_codec codec, int64_t i) {
    if (codec == KW_KVQ_INT8) return (int8_t)row[i];
    if (codec == KW_KVQ_INT6) {
        const uint8_t *blk = row + (i / 16) * 12;
        const int64_t j = i % 16;
        const int lo = j < 8 ? (blk[j] & 0x0F) : (blk[j - 8] >> 4), hi = (blk[8 + j % 4] >> (2 * (j / 4))) & 3;
        return (lo | (hi << 4)) - 32;
    }
    const uint8_t b = row[(i / 16) * 8 + (i % 8)];
    return ((i % 16) < 8 ? (b & 0x0F) : (b >> 4)) - 8;
}

/* Writes code i of a row of codes. */
KW_HD void kw_kvq_set_code(uint8_t *row, enum kw_kvq_codec codec, int64_t i, int code) {
    if (codec == KW_KVQ_INT8) {
        row[i] = (uint8_t)(int8_t)code;
        return;
    }
    if (codec == KW_KVQ_INT6) {
        uint8_t *blk = row + (i / 16) * 12;
        const int64_t j = i % 16;
        const uint8_t u = (uint8_t)(code + 32), sh = (uint8_t)(2 * (j / 4));
        blk[j % 8] =
            j < 8 ? (uint8_t)((blk[j] & 0xF0) | (u & 0x0F)) : (uint8_t)((blk[j - 8] & 0x0F) | ((u & 0x0F) << 4));
        blk[8 + j % 4] = (uint8_t)((blk[8 + j % 4] & ~(3u << sh)) | ((u >> 4) << sh));
        return;
    }
    uint8_t *b = &row[(i / 16) * 8 + (i % 8)];
    const uint8_t nib = (uint8_t)(code + 8);
    *b = (i % 16) < 8 ? (uint8_t)((*b & 0xF0) | nib) : (uint8_t)((*b & 0x0F) | (nib << 4));
}

/* The value of dimension d of key row r of one head's storage head whose full pages end at row full (n_rows / P * P):
 * fl(code * scale), or the bf16 of the tail page widened. */
KW_HD float kw_kvq_key_at(const uint8_t *head, const kw_kvq_geom *g, int64_t full, int64_t r, int64_t d) {
    if (r >= full) return kw_bf16_to_f32(((const uint16_t *)(head + kw_kvq_tail_offset(g)))[(r - full) * g->D + d]);
    const uint8_t s = head[kw_kvq_scales_offset(g) + (size_t)(r / g->page_tokens * g->D + d)];
    return (float)kw_kvq_get_code(head + (size_t)r * kw_kvq_row_bytes(g->codec, g->D), g->codec, d) * kw_kvq_scale(s);
}

/* The value of dimension d of value row r of one head's storage head. */
KW_HD float kw_kvq_value_at(const uint8_t *head, const kw_kvq_geom *g, int64_t r, int64_t d) {
    const int64_t G = kw_kvq_value_group(g->D);
    const uint8_t s = head[kw_kvq_scales_offset(g) + (size_t)(r * (g->D / G) + d / G)];
    return (float)kw_kvq_get_code(head + (size_t)r * kw_kvq_row_bytes(g->codec, g->D), g->codec, d) * kw_kvq_scale(s);
}

#endif /* KW_KVQ_FORMAT_H */
