/* kw_dequant.c: ggml block formats -> f32, one block at a time.
 *
 * Each block function reads one block of bytes (no alignment assumed: multi-byte fields are loaded with memcpy, as
 * little-endian) and writes its values in order. The arithmetic is ggml's, term for term: a scale is an fp16 widened
 * to f32, multiplied by the integer sub-scale in f32 first, then by the quant, then the min subtracted (or added),
 * each step rounded to f32. Nothing here may be contracted into a fused multiply-add: this file is compiled without
 * FMA-enabling flags and the C standard mode keeps -ffp-contract off.
 */
#include "model/kw_dequant.h"

#include <string.h>

#include "common/kw_bytes.h"
#include "common/kw_half.h"
#include "common/kw_size.h"
#include "common/kw_status.h"

#define KW_QK   32  /* values per block of the legacy formats */
#define KW_QK_K 256 /* values per super-block of the k-quants */

typedef void (*kw_dequant_block_fn)(const uint8_t *b, float *y);

typedef struct kw_ggml_type_row {
    uint32_t type;
    const char *name;
    int32_t block_elems, block_bytes;
    kw_dequant_block_fn fn; /* NULL: known but not dequantizable */
} kw_ggml_type_row;

static float kw_dq_f16(const uint8_t *p) {
    return kw_f16_to_f32(kw_load_le16(p));
}

// ---------------------------------------------------------------------------------------------------------------
// Plain formats

static void kw_dq_f32(const uint8_t *b, float *y) {
    y[0] = kw_load_lef32(b);
}

static void kw_dq_f16_1(const uint8_t *b, float *y) {
    y[0] = kw_dq_f16(b);
}

static void kw_dq_bf16(const uint8_t *b, float *y) {
    y[0] = kw_bf16_to_f32(kw_load_le16(b));
}

// ---------------------------------------------------------------------------------------------------------------
// Legacy 32-value blocks. The nibbles of qs[j] are values j (low) and j + 16 (high).

/* Q4_0: f16 d, qs[16]; y = (q - 8) * d */
static void kw_dq_q4_0(const uint8_t *b, float *y) {
    const float d = kw_dq_f16(b);
    const uint8_t *qs = b + 2;
    for (int j = 0; j < KW_QK / 2; ++j) {
        y[j] = (float)((qs[j] & 0x0F) - 8) * d;
        y[j + KW_QK / 2] = (float)((qs[j] >> 4) - 8) * d;
    }
}

/* Q4_1: f16 d, f16 m, qs[16]; y = q * d + m */
static void kw_dq_q4_1(const uint8_t *b, float *y) {
    const float d = kw_dq_f16(b), m = kw_dq_f16(b + 2);
    const uint8_t *qs = b + 4;
    for (int j = 0; j < KW_QK / 2; ++j) {
        y[j] = (float)(qs[j] & 0x0F) * d + m;
        y[j + KW_QK / 2] = (float)(qs[j] >> 4) * d + m;
    }
}

/* Q5_0: f16 d, u32 qh (bit i = fifth bit of value i), qs[16]; y = (q - 16) * d */
static void kw_dq_q5_0(const uint8_t *b, float *y) {
    const float d = kw_dq_f16(b);
    const uint32_t qh = kw_load_le32(b + 2);
    const uint8_t *qs = b + 6;
    for (int j = 0; j < KW_QK / 2; ++j) {
        const int lo = (qs[j] & 0x0F) | (int)(((qh >> j) & 1u) << 4);
        const int hi = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4);
        y[j] = (float)(lo - 16) * d;
        y[j + KW_QK / 2] = (float)(hi - 16) * d;
    }
}

/* Q5_1: f16 d, f16 m, u32 qh, qs[16]; y = q * d + m */
static void kw_dq_q5_1(const uint8_t *b, float *y) {
    const float d = kw_dq_f16(b), m = kw_dq_f16(b + 2);
    const uint32_t qh = kw_load_le32(b + 4);
    const uint8_t *qs = b + 8;
    for (int j = 0; j < KW_QK / 2; ++j) {
        const int lo = (qs[j] & 0x0F) | (int)(((qh >> j) & 1u) << 4);
        const int hi = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4);
        y[j] = (float)lo * d + m;
        y[j + KW_QK / 2] = (float)hi * d + m;
    }
}

/* Q8_0: f16 d, int8 qs[32]; y = q * d */
static void kw_dq_q8_0(const uint8_t *b, float *y) {
    const float d = kw_dq_f16(b);
    for (int j = 0; j < KW_QK; ++j)
        y[j] = (float)(int8_t)b[2 + j] * d;
}

// ---------------------------------------------------------------------------------------------------------------
// k-quants: 256-value super-blocks

/* Q2_K: scales[16] (low nibble scale, high nibble min), qs[64] (2 bits), f16 d, f16 dmin. Value e = 128h + 32k + l
 * is bits 2k..2k+1 of qs[32h + l], in sub-block e / 16: y = (d * sc) * q - dmin * m. */
static void kw_dq_q2_k(const uint8_t *b, float *y) {
    const uint8_t *scales = b, *qs = b + 16;
    const float d = kw_dq_f16(b + 80), dmin = kw_dq_f16(b + 82);
    for (int e = 0; e < KW_QK_K; ++e) {
        const int h = e / 128, k = (e % 128) / 32, l = e % 32;
        const uint8_t sc = scales[e / 16];
        const float dl = d * (float)(sc & 0x0F), ml = dmin * (float)(sc >> 4);
        const int q = (qs[32 * h + l] >> (2 * k)) & 3;
        y[e] = dl * (float)q - ml;
    }
}

/* Q3_K: hmask[32], qs[64] (2 low bits), scales[12] (16 six-bit scales), f16 d. Value e = 128h + 32k + l: low bits
 * 2k..2k+1 of qs[32h + l]; high bit: bit e / 32 of hmask[e % 32], and 4 is subtracted when it is CLEAR;
 * y = (d * (scale - 32)) * q. */
static void kw_dq_q3_k(const uint8_t *b, float *y) {
    const uint8_t *hmask = b, *qs = b + 32, *sc = b + 96;
    const float d = kw_dq_f16(b + 108);
    int8_t scales[16];
    for (int i = 0; i < 16; ++i) {
        const int lo = (i < 8 ? sc[i] : sc[i - 8] >> 4) & 0x0F;
        const int hi = (sc[8 + i % 4] >> (2 * (i / 4))) & 3;
        scales[i] = (int8_t)((lo | (hi << 4)) - 32);
    }
    for (int e = 0; e < KW_QK_K; ++e) {
        const int h = e / 128, k = (e % 128) / 32, l = e % 32;
        const int low = (qs[32 * h + l] >> (2 * k)) & 3;
        const int high = (hmask[l] >> (e / 32)) & 1;
        const float dl = d * (float)scales[e / 16];
        y[e] = dl * (float)(low - (high ? 0 : 4));
    }
}

/* The eight 6-bit scales and mins of Q4_K / Q5_K, packed in 12 bytes. */
static void kw_dq_scale_min_k4(const uint8_t *s, uint8_t sc[8], uint8_t mn[8]) {
    for (int j = 0; j < 4; ++j) {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
        sc[j + 4] = (uint8_t)((s[j + 8] & 0x0F) | ((s[j] >> 2) & 0x30));
        mn[j + 4] = (uint8_t)((s[j + 8] >> 4) | ((s[j + 4] >> 2) & 0x30));
    }
}

/* Q4_K: f16 d, f16 dmin, scales[12], qs[128]. Value e = 64g + 32s + l is nibble s of qs[32g + l], in sub-block e / 32:
 * y = (d * sc) * q - dmin * m. */
static void kw_dq_q4_k(const uint8_t *b, float *y) {
    const float d = kw_dq_f16(b), dmin = kw_dq_f16(b + 2);
    uint8_t sc[8], mn[8];
    kw_dq_scale_min_k4(b + 4, sc, mn);
    const uint8_t *qs = b + 16;
    for (int e = 0; e < KW_QK_K; ++e) {
        const int g = e / 64, s = (e % 64) / 32, l = e % 32;
        const int q = (qs[32 * g + l] >> (4 * s)) & 0x0F;
        const float d1 = d * (float)sc[e / 32], m1 = dmin * (float)mn[e / 32];
        y[e] = d1 * (float)q - m1;
    }
}

/* Q5_K: f16 d, f16 dmin, scales[12], qh[32], qs[128]. Low nibble as Q4_K; fifth bit: bit e / 32 of qh[e % 32]. */
static void kw_dq_q5_k(const uint8_t *b, float *y) {
    const float d = kw_dq_f16(b), dmin = kw_dq_f16(b + 2);
    uint8_t sc[8], mn[8];
    kw_dq_scale_min_k4(b + 4, sc, mn);
    const uint8_t *qh = b + 16, *qs = b + 48;
    for (int e = 0; e < KW_QK_K; ++e) {
        const int g = e / 64, s = (e % 64) / 32, l = e % 32;
        const int q = ((qs[32 * g + l] >> (4 * s)) & 0x0F) | (((qh[l] >> (e / 32)) & 1) << 4);
        const float d1 = d * (float)sc[e / 32], m1 = dmin * (float)mn[e / 32];
        y[e] = d1 * (float)q - m1;
    }
}

/* Q6_K: ql[128], qh[64], int8 scales[16], f16 d. Value e = 128h + r: low nibble r / 64 of ql[64h + r % 64], high
 * two bits 2(r / 32) of qh[32h + r % 32]; y = (d * scale) * (q - 32), scale = scales[e / 16]. */
static void kw_dq_q6_k(const uint8_t *b, float *y) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *scales = (const int8_t *)(b + 192);
    const float d = kw_dq_f16(b + 208);
    for (int e = 0; e < KW_QK_K; ++e) {
        const int h = e / 128, r = e % 128;
        const int lo = (ql[64 * h + r % 64] >> (4 * (r / 64))) & 0x0F;
        const int hi = (qh[32 * h + r % 32] >> (2 * (r / 32))) & 3;
        const float dl = d * (float)scales[e / 16];
        y[e] = dl * (float)((lo | (hi << 4)) - 32);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The type table

static const kw_ggml_type_row kw_ggml_types[] = {
    {KW_GGML_F32, "F32", 1, 4, kw_dq_f32},
    {KW_GGML_F16, "F16", 1, 2, kw_dq_f16_1},
    {KW_GGML_Q4_0, "Q4_0", KW_QK, 18, kw_dq_q4_0},
    {KW_GGML_Q4_1, "Q4_1", KW_QK, 20, kw_dq_q4_1},
    {KW_GGML_Q5_0, "Q5_0", KW_QK, 22, kw_dq_q5_0},
    {KW_GGML_Q5_1, "Q5_1", KW_QK, 24, kw_dq_q5_1},
    {KW_GGML_Q8_0, "Q8_0", KW_QK, 34, kw_dq_q8_0},
    {KW_GGML_Q8_1, "Q8_1", KW_QK, 36, NULL},
    {KW_GGML_Q2_K, "Q2_K", KW_QK_K, 84, kw_dq_q2_k},
    {KW_GGML_Q3_K, "Q3_K", KW_QK_K, 110, kw_dq_q3_k},
    {KW_GGML_Q4_K, "Q4_K", KW_QK_K, 144, kw_dq_q4_k},
    {KW_GGML_Q5_K, "Q5_K", KW_QK_K, 176, kw_dq_q5_k},
    {KW_GGML_Q6_K, "Q6_K", KW_QK_K, 210, kw_dq_q6_k},
    {KW_GGML_Q8_K, "Q8_K", KW_QK_K, 292, NULL},
    {16, "IQ2_XXS", KW_QK_K, 66, NULL},
    {17, "IQ2_XS", KW_QK_K, 74, NULL},
    {18, "IQ3_XXS", KW_QK_K, 98, NULL},
    {19, "IQ1_S", KW_QK_K, 50, NULL},
    {20, "IQ4_NL", KW_QK, 18, NULL},
    {21, "IQ3_S", KW_QK_K, 110, NULL},
    {22, "IQ2_S", KW_QK_K, 82, NULL},
    {23, "IQ4_XS", KW_QK_K, 136, NULL},
    {24, "I8", 1, 1, NULL},
    {25, "I16", 1, 2, NULL},
    {26, "I32", 1, 4, NULL},
    {27, "I64", 1, 8, NULL},
    {28, "F64", 1, 8, NULL},
    {29, "IQ1_M", KW_QK_K, 56, NULL},
    {KW_GGML_BF16, "BF16", 1, 2, kw_dq_bf16},
    {34, "TQ1_0", KW_QK_K, 54, NULL},
    {35, "TQ2_0", KW_QK_K, 66, NULL},
    {39, "MXFP4", KW_QK, 17, NULL},
};

static const kw_ggml_type_row *kw_ggml_row(uint32_t type) {
    for (size_t i = 0; i < sizeof kw_ggml_types / sizeof kw_ggml_types[0]; ++i)
        if (kw_ggml_types[i].type == type) return &kw_ggml_types[i];
    return NULL;
}

int kw_ggml_type_info_get(uint32_t type, kw_ggml_type_info *out) {
    const kw_ggml_type_row *r = kw_ggml_row(type);
    KW_RETURN_IF(!r, KW_E_MODEL_DTYPE, "ggml type %u is unknown", (unsigned)type);
    *out = (kw_ggml_type_info){r->name, r->block_elems, r->block_bytes, r->fn != NULL};
    return 0;
}

const char *kw_ggml_type_name(uint32_t type) {
    const kw_ggml_type_row *r = kw_ggml_row(type);
    return r ? r->name : "?";
}

int kw_ggml_row_bytes(uint32_t type, int64_t n, size_t *out) {
    const kw_ggml_type_row *r = kw_ggml_row(type);
    KW_RETURN_IF(!r, KW_E_MODEL_DTYPE, "ggml type %u is unknown", (unsigned)type);
    KW_RETURN_IF(n <= 0 || n % r->block_elems != 0, KW_E_MODEL_SHAPE,
                 "%lld values of %s are not a positive whole number of %d-value blocks", (long long)n, r->name,
                 (int)r->block_elems);
    KW_RETURN_IF(kw_size_mul((size_t)(n / r->block_elems), (size_t)r->block_bytes, out) < 0, KW_E_OVERFLOW,
                 "%lld values of %s overflow a size", (long long)n, r->name);
    return 0;
}

int kw_dequant_row(uint32_t type, const void *src, int64_t n, enum kw_dtype out_dtype, void *dst) {
    KW_RETURN_IF(!src || !dst, KW_E_INVALID_ARG, "kw_dequant_row: NULL buffer");
    KW_RETURN_IF(out_dtype != KW_DTYPE_F32 && out_dtype != KW_DTYPE_BF16, KW_E_INVALID_ARG,
                 "kw_dequant_row: output dtype %s (f32 or bf16)", kw_dtype_name(out_dtype));
    const kw_ggml_type_row *r = kw_ggml_row(type);
    KW_RETURN_IF(!r, KW_E_MODEL_DTYPE, "ggml type %u is unknown", (unsigned)type);
    KW_RETURN_IF(!r->fn, KW_E_MODEL_DTYPE, "ggml type %s cannot be dequantized by kvwire", r->name);
    size_t bytes = 0;
    KW_FORWARD(kw_ggml_row_bytes(type, n, &bytes));
    const uint8_t *s = src;
    const int64_t nb = n / r->block_elems, be = r->block_elems;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (out_dtype == KW_DTYPE_F32 && type == KW_GGML_F32) {
        memcpy(dst, src, bytes); /* the stored little-endian bytes are the values */
        return 0;
    }
#endif
    if (out_dtype == KW_DTYPE_F32) {
        float *y = dst;
        for (int64_t i = 0; i < nb; ++i)
            r->fn(s + (size_t)i * (size_t)r->block_bytes, y + i * be);
        return 0;
    }
    uint16_t *y = dst;
    float tmp[KW_QK_K];
    for (int64_t i = 0; i < nb; ++i) {
        r->fn(s + (size_t)i * (size_t)r->block_bytes, tmp);
        for (int64_t j = 0; j < be; ++j)
            y[i * be + j] = kw_f32_to_bf16(tmp[j]);
    }
    return 0;
}
