/* gguf_build.h: a small GGUF writer for the reader tests and the fuzz corpus: a valid file holding every metadata
 * type and tensors of several ggml types, with one deliberate defect chosen by a gguf_defect value. Header-only (static
 * functions), test code only. */
#ifndef GGUF_BUILD_H
#define GGUF_BUILD_H

#include <stdint.h>
#include <string.h>

#include "common/kw_buf.h"
#include "common/kw_bytes.h"

enum gguf_defect {
    GGUF_OK = 0,
    GGUF_BAD_MAGIC,
    GGUF_VERSION_1,
    GGUF_VERSION_4,
    GGUF_BIG_ENDIAN,
    GGUF_HUGE_TENSOR_COUNT,
    GGUF_HUGE_KV_COUNT,
    GGUF_HUGE_STRING,
    GGUF_HUGE_ARRAY,
    GGUF_NESTED_ARRAY,
    GGUF_BAD_VALUE_TYPE,
    GGUF_BAD_ELEM_TYPE,
    GGUF_BAD_BOOL,
    GGUF_EMPTY_KEY,
    GGUF_NUL_IN_KEY,
    GGUF_DUP_KEY,
    GGUF_DUP_TENSOR,
    GGUF_ZERO_DIMS,
    GGUF_FIVE_DIMS,
    GGUF_ZERO_EXTENT,
    GGUF_EXTENT_OVERFLOW,
    GGUF_UNKNOWN_TYPE,
    GGUF_ROW_NOT_BLOCKS,
    GGUF_MISALIGNED_OFFSET,
    GGUF_OFFSET_PAST_END,
    GGUF_OVERLAP,
    GGUF_ALIGN_NOT_POW2,
    GGUF_ALIGN_WRONG_TYPE,
    GGUF_DATA_TRUNCATED,
    GGUF_DEFECT_COUNT,
};

static inline void gb_u32(kw_buf *b, uint32_t v) {
    uint8_t x[4];
    kw_store_le32(x, v);
    kw_buf_append(b, x, 4);
}

static inline void gb_u64(kw_buf *b, uint64_t v) {
    uint8_t x[8];
    kw_store_le64(x, v);
    kw_buf_append(b, x, 8);
}

static inline void gb_str(kw_buf *b, const char *s, size_t n) {
    gb_u64(b, n);
    kw_buf_append(b, s, n);
}

static inline void gb_key(kw_buf *b, const char *key, uint32_t type) {
    gb_str(b, key, strlen(key));
    gb_u32(b, type);
}

/* The test file: 15 metadata entries (one of each scalar type, a string, arrays of i32, f32, strings and bools,
 * general.alignment = 64) and three tensors (F32 (2, 4), Q8_0 (2, 32), Q4_K (1, 256)), each aligned. */
static inline void gguf_build(enum gguf_defect d, kw_buf *b) {
    memset(b, 0, sizeof *b);
    gb_u32(b, d == GGUF_BAD_MAGIC ? 0x46554748u : 0x46554747u);
    const uint32_t version = d == GGUF_VERSION_1    ? 1u
                             : d == GGUF_VERSION_4  ? 4u
                             : d == GGUF_BIG_ENDIAN ? 0x03000000u
                                                    : 3u;
    gb_u32(b, version);
    const uint64_t n_tensors = 3, n_kv = 15;
    gb_u64(b, d == GGUF_HUGE_TENSOR_COUNT ? (1ull << 40) : n_tensors);
    gb_u64(b, d == GGUF_HUGE_KV_COUNT ? (1ull << 60) : n_kv);

    gb_key(b, "t.u8", 0);
    kw_buf_append(b, "\x07", 1);
    gb_key(b, "t.i8", 1);
    kw_buf_append(b, "\xf9", 1);
    gb_key(b, "t.u16", 2);
    kw_buf_append(b, "\x34\x12", 2);
    gb_key(b, "t.i16", 3);
    kw_buf_append(b, "\xfe\xff", 2);
    gb_key(b, d == GGUF_EMPTY_KEY ? "" : "t.u32", d == GGUF_BAD_VALUE_TYPE ? 13 : 4);
    gb_u32(b, 100000);
    if (d == GGUF_NUL_IN_KEY) {
        gb_str(b,
               "t.i\0"
               "32",
               6);
        gb_u32(b, 5);
    } else {
        gb_key(b, d == GGUF_DUP_KEY ? "t.u8" : "t.i32", 5);
    }
    gb_u32(b, (uint32_t)-5);
    gb_key(b, "t.f32", 6);
    gb_u32(b, 0x40490fdbu); /* 3.14159274 */
    gb_key(b, "t.bool", 7);
    kw_buf_append(b, d == GGUF_BAD_BOOL ? "\x02" : "\x01", 1);
    gb_key(b, "t.str", 8);
    if (d == GGUF_HUGE_STRING)
        gb_u64(b, 1ull << 62);
    else
        gb_str(b, "hello", 5);
    gb_key(b, "t.u64", 10);
    gb_u64(b, 1ull << 40);
    gb_key(b, "t.i64", 11);
    gb_u64(b, (uint64_t)-7);
    gb_key(b, "t.f64", 12);
    gb_u64(b, 0x3ff8000000000000ull); /* 1.5 */
    gb_key(b, "t.arr_i32", 9);
    gb_u32(b, d == GGUF_NESTED_ARRAY ? 9 : d == GGUF_BAD_ELEM_TYPE ? 77 : 5);
    gb_u64(b, d == GGUF_HUGE_ARRAY ? (1ull << 61) : 3);
    gb_u32(b, 1);
    gb_u32(b, 2);
    gb_u32(b, 3);
    gb_key(b, "t.arr_str", 9);
    gb_u32(b, 8);
    gb_u64(b, 2);
    gb_str(b, "ab", 2);
    gb_str(b, "cde", 3);
    gb_key(b, "general.alignment", d == GGUF_ALIGN_WRONG_TYPE ? 5 : 4);
    gb_u32(b, d == GGUF_ALIGN_NOT_POW2 ? 48 : 64);

    /* tensor infos: name, n_dims, dims, type, offset */
    struct {
        const char *name;
        uint32_t n_dims, type;
        uint64_t ne[5], offset;
    } t[3] = {
        {"a.f32", 2, 0, {4, 2}, 0},
        {"b.q8_0", 2, 8, {32, 2}, 64},
        {"c.q4_k", 2, 12, {256, 1}, 192},
    };
    if (d == GGUF_DUP_TENSOR) t[2].name = "a.f32";
    if (d == GGUF_ZERO_DIMS) t[0].n_dims = 0;
    if (d == GGUF_FIVE_DIMS) t[0].n_dims = 5, t[0].ne[2] = t[0].ne[3] = t[0].ne[4] = 1;
    if (d == GGUF_ZERO_EXTENT) t[0].ne[1] = 0;
    if (d == GGUF_EXTENT_OVERFLOW) t[0].ne[1] = 1ull << 62;
    if (d == GGUF_UNKNOWN_TYPE) t[1].type = 5;
    if (d == GGUF_ROW_NOT_BLOCKS) t[1].ne[0] = 48, t[1].ne[1] = 1;
    if (d == GGUF_MISALIGNED_OFFSET) t[1].offset = 96;
    if (d == GGUF_OFFSET_PAST_END) t[2].offset = 4096;
    if (d == GGUF_OVERLAP) t[2].offset = 64;
    for (int i = 0; i < 3; ++i) {
        gb_str(b, t[i].name, strlen(t[i].name));
        gb_u32(b, t[i].n_dims);
        for (uint32_t k = 0; k < t[i].n_dims; ++k)
            gb_u64(b, t[i].ne[k]);
        gb_u32(b, t[i].type);
        gb_u64(b, t[i].offset);
    }
    while (b->len % 64)
        kw_buf_append(b, "", 1);
    /* data: a.f32 (32 bytes) at 0, b.q8_0 (68 bytes) at 64, c.q4_k (144 bytes) at 192 */
    const size_t data0 = b->len;
    const size_t total = d == GGUF_DATA_TRUNCATED ? 192 + 100 : 192 + 144;
    for (size_t i = 0; i < total; ++i) {
        const uint8_t v = (uint8_t)(i * 37 + 11);
        kw_buf_append(b, &v, 1);
    }
    /* finite fp16 scales: the Q8_0 d fields and the Q4_K d/dmin fields */
    uint8_t *p = (uint8_t *)b->data + data0;
    for (int r = 0; r < 2; ++r)
        kw_store_le16(p + 64 + r * 34, 0x2c00); /* 0.0625 */
    if (total >= 196) {
        kw_store_le16(p + 192, 0x2c00);
        kw_store_le16(p + 194, 0x2000);
    }
    for (int i = 0; i < 8; ++i)
        kw_store_lef32(p + 4 * i, (float)i - 3.5f);
}

#endif /* GGUF_BUILD_H */
