/* kw_dequant.c: ggml block formats -> f32, one block at a time, and the integer codes, scales and offsets of the types
 * kvwire keeps quantized (the value is code * scale + offset, the form kernels/kw_backend.h's quantized panels take).
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
/* Splits one block into its integer codes (block_elems), scales and offsets (one per group of the type's layout). */
typedef void (*kw_codes_block_fn)(const uint8_t *b, int8_t *codes, float *scales, float *offsets);

typedef struct kw_ggml_type_row {
    uint32_t type;
    const char *name;
    int32_t block_elems, block_bytes;
    kw_dequant_block_fn fn;  /* the plain and the 2/3-bit types; NULL for the others */
    kw_codes_block_fn codes; /* the types kept quantized: the value is code * scale (+ offset) */
    enum kw_layout layout;   /* their quantized layout (kernels/kw_backend.h); KW_LAYOUT_ROWS for the others */
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
// Legacy 32-value blocks: one scale (and for _1, one offset) per block. The nibbles of qs[j] are values j (low) and
// j + 16 (high). Each block function splits a block into integer codes c, scales and offsets; the value is then
// c * d (+ m), see kw_dq_from_codes.

/* Q4_0: f16 d, qs[16]; y = (q - 8) * d */
static void kw_cq_q4_0(const uint8_t *b, int8_t *c, float *scale, float *offset) {
    (void)offset;
    scale[0] = kw_dq_f16(b);
    const uint8_t *qs = b + 2;
    for (int j = 0; j < KW_QK / 2; ++j) {
        c[j] = (int8_t)((qs[j] & 0x0F) - 8);
        c[j + KW_QK / 2] = (int8_t)((qs[j] >> 4) - 8);
    }
}

/* Q4_1: f16 d, f16 m, qs[16]; y = q * d + m */
static void kw_cq_q4_1(const uint8_t *b, int8_t *c, float *scale, float *offset) {
    scale[0] = kw_dq_f16(b);
    offset[0] = kw_dq_f16(b + 2);
    const uint8_t *qs = b + 4;
    for (int j = 0; j < KW_QK / 2; ++j) {
        c[j] = (int8_t)(qs[j] & 0x0F);
        c[j + KW_QK / 2] = (int8_t)(qs[j] >> 4);
    }
}

/* The 32 five-bit values of a Q5 block: low nibbles in qs[16], fifth bits in qh (bit i for value i), minus zero. */
static void kw_cq_q5_values(const uint8_t *qs, uint32_t qh, int zero, int8_t *c) {
    for (int j = 0; j < KW_QK / 2; ++j) {
        c[j] = (int8_t)(((qs[j] & 0x0F) | (int)(((qh >> j) & 1u) << 4)) - zero);
        c[j + KW_QK / 2] = (int8_t)(((qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4)) - zero);
    }
}

/* Q5_0: f16 d, u32 qh (bit i = fifth bit of value i), qs[16]; y = (q - 16) * d */
static void kw_cq_q5_0(const uint8_t *b, int8_t *c, float *scale, float *offset) {
    (void)offset;
    scale[0] = kw_dq_f16(b);
    kw_cq_q5_values(b + 6, kw_load_le32(b + 2), 16, c);
}

/* Q5_1: f16 d, f16 m, u32 qh, qs[16]; y = q * d + m */
static void kw_cq_q5_1(const uint8_t *b, int8_t *c, float *scale, float *offset) {
    scale[0] = kw_dq_f16(b);
    offset[0] = kw_dq_f16(b + 2);
    kw_cq_q5_values(b + 8, kw_load_le32(b + 4), 0, c);
}

/* Q8_0: f16 d, int8 qs[32]; y = q * d */
static void kw_cq_q8_0(const uint8_t *b, int8_t *c, float *scale, float *offset) {
    (void)offset;
    scale[0] = kw_dq_f16(b);
    memcpy(c, b + 2, KW_QK);
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

/* The scales and offsets of the eight 32-value sub-blocks of Q4_K / Q5_K: d * sc and -(dmin * m), in f32 as ggml. */
static void kw_cq_k4_scales(const uint8_t *b, float *scale, float *offset) {
    const float d = kw_dq_f16(b), dmin = kw_dq_f16(b + 2);
    uint8_t sc[8], mn[8];
    kw_dq_scale_min_k4(b + 4, sc, mn);
    for (int i = 0; i < 8; ++i) {
        scale[i] = d * (float)sc[i];
        offset[i] = -(dmin * (float)mn[i]);
    }
}

/* Q4_K: f16 d, f16 dmin, scales[12], qs[128]. Value e = 64g + 32s + l is nibble s of qs[32g + l], in sub-block e / 32:
 * y = (d * sc) * q - dmin * m (the minus written as + -(dmin * m): the same IEEE operation). */
static void kw_cq_q4_k(const uint8_t *b, int8_t *c, float *scale, float *offset) {
    kw_cq_k4_scales(b, scale, offset);
    const uint8_t *qs = b + 16;
    for (int g = 0; g < 4; ++g) /* loops of 32 independent bytes (vectorized): the load time of Q4_K files */
        for (int l = 0; l < 32; ++l) {
            c[64 * g + l] = (int8_t)(qs[32 * g + l] & 0x0F);
            c[64 * g + 32 + l] = (int8_t)(qs[32 * g + l] >> 4);
        }
}

/* Q5_K: f16 d, f16 dmin, scales[12], qh[32], qs[128]. Low nibble as Q4_K; fifth bit: bit e / 32 of qh[e % 32]. */
static void kw_cq_q5_k(const uint8_t *b, int8_t *c, float *scale, float *offset) {
    kw_cq_k4_scales(b, scale, offset);
    const uint8_t *qh = b + 16, *qs = b + 48;
    for (int e = 0; e < KW_QK_K; ++e) {
        const int g = e / 64, s = (e % 64) / 32, l = e % 32;
        c[e] = (int8_t)(((qs[32 * g + l] >> (4 * s)) & 0x0F) | (((qh[l] >> (e / 32)) & 1) << 4));
    }
}

/* Q6_K: ql[128], qh[64], int8 scales[16], f16 d. Value e = 128h + r: low nibble r / 64 of ql[64h + r % 64], high
 * two bits 2(r / 32) of qh[32h + r % 32]; y = (d * scale) * (q - 32), scale = scales[e / 16]. */
static void kw_cq_q6_k(const uint8_t *b, int8_t *c, float *scale, float *offset) {
    (void)offset;
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *scales = (const int8_t *)(b + 192);
    const float d = kw_dq_f16(b + 208);
    for (int i = 0; i < KW_QK_K / 16; ++i)
        scale[i] = d * (float)scales[i];
    for (int h = 0; h < 2; ++h) /* e = 128 h + 32 j + l: loops of 32 independent bytes (vectorized) */
        for (int j = 0; j < 4; ++j)
            for (int l = 0; l < 32; ++l) {
                const int lo = (ql[64 * h + 32 * (j % 2) + l] >> (4 * (j / 2))) & 0x0F;
                const int hi = (qh[32 * h + l] >> (2 * j)) & 3;
                c[128 * h + 32 * j + l] = (int8_t)((lo | (hi << 4)) - 32);
            }
}

// ---------------------------------------------------------------------------------------------------------------
// The type table

static const kw_ggml_type_row kw_ggml_types[] = {
    {KW_GGML_F32, "F32", 1, 4, kw_dq_f32, NULL, KW_LAYOUT_ROWS},
    {KW_GGML_F16, "F16", 1, 2, kw_dq_f16_1, NULL, KW_LAYOUT_ROWS},
    {KW_GGML_Q4_0, "Q4_0", KW_QK, 18, NULL, kw_cq_q4_0, KW_LAYOUT_QPANELS_S4},
    {KW_GGML_Q4_1, "Q4_1", KW_QK, 20, NULL, kw_cq_q4_1, KW_LAYOUT_QPANELS_U4},
    {KW_GGML_Q5_0, "Q5_0", KW_QK, 22, NULL, kw_cq_q5_0, KW_LAYOUT_QPANELS_S8},
    {KW_GGML_Q5_1, "Q5_1", KW_QK, 24, NULL, kw_cq_q5_1, KW_LAYOUT_QPANELS_S8_OFS},
    {KW_GGML_Q8_0, "Q8_0", KW_QK, 34, NULL, kw_cq_q8_0, KW_LAYOUT_QPANELS_S8},
    {KW_GGML_Q8_1, "Q8_1", KW_QK, 36, NULL, NULL, KW_LAYOUT_ROWS},
    {KW_GGML_Q2_K, "Q2_K", KW_QK_K, 84, kw_dq_q2_k, NULL, KW_LAYOUT_ROWS},
    {KW_GGML_Q3_K, "Q3_K", KW_QK_K, 110, kw_dq_q3_k, NULL, KW_LAYOUT_ROWS},
    {KW_GGML_Q4_K, "Q4_K", KW_QK_K, 144, NULL, kw_cq_q4_k, KW_LAYOUT_QPANELS_U4},
    {KW_GGML_Q5_K, "Q5_K", KW_QK_K, 176, NULL, kw_cq_q5_k, KW_LAYOUT_QPANELS_S8_OFS},
    {KW_GGML_Q6_K, "Q6_K", KW_QK_K, 210, NULL, kw_cq_q6_k, KW_LAYOUT_QPANELS_S8_G16},
    {KW_GGML_Q8_K, "Q8_K", KW_QK_K, 292, NULL, NULL, KW_LAYOUT_ROWS},
    {16, "IQ2_XXS", KW_QK_K, 66, NULL, NULL, KW_LAYOUT_ROWS},
    {17, "IQ2_XS", KW_QK_K, 74, NULL, NULL, KW_LAYOUT_ROWS},
    {18, "IQ3_XXS", KW_QK_K, 98, NULL, NULL, KW_LAYOUT_ROWS},
    {19, "IQ1_S", KW_QK_K, 50, NULL, NULL, KW_LAYOUT_ROWS},
    {20, "IQ4_NL", KW_QK, 18, NULL, NULL, KW_LAYOUT_ROWS},
    {21, "IQ3_S", KW_QK_K, 110, NULL, NULL, KW_LAYOUT_ROWS},
    {22, "IQ2_S", KW_QK_K, 82, NULL, NULL, KW_LAYOUT_ROWS},
    {23, "IQ4_XS", KW_QK_K, 136, NULL, NULL, KW_LAYOUT_ROWS},
    {24, "I8", 1, 1, NULL, NULL, KW_LAYOUT_ROWS},
    {25, "I16", 1, 2, NULL, NULL, KW_LAYOUT_ROWS},
    {26, "I32", 1, 4, NULL, NULL, KW_LAYOUT_ROWS},
    {27, "I64", 1, 8, NULL, NULL, KW_LAYOUT_ROWS},
    {28, "F64", 1, 8, NULL, NULL, KW_LAYOUT_ROWS},
    {29, "IQ1_M", KW_QK_K, 56, NULL, NULL, KW_LAYOUT_ROWS},
    {KW_GGML_BF16, "BF16", 1, 2, kw_dq_bf16, NULL, KW_LAYOUT_ROWS},
    {34, "TQ1_0", KW_QK_K, 54, NULL, NULL, KW_LAYOUT_ROWS},
    {35, "TQ2_0", KW_QK_K, 66, NULL, NULL, KW_LAYOUT_ROWS},
    {39, "MXFP4", KW_QK, 17, NULL, NULL, KW_LAYOUT_ROWS},
};

static const kw_ggml_type_row *kw_ggml_row(uint32_t type) {
    for (size_t i = 0; i < sizeof kw_ggml_types / sizeof kw_ggml_types[0]; ++i)
        if (kw_ggml_types[i].type == type) return &kw_ggml_types[i];
    return NULL;
}

int kw_ggml_type_info_get(uint32_t type, kw_ggml_type_info *out) {
    const kw_ggml_type_row *r = kw_ggml_row(type);
    KW_RETURN_IF(!r, KW_E_MODEL_DTYPE, "ggml type %u is unknown", (unsigned)type);
    *out = (kw_ggml_type_info){r->name, r->block_elems, r->block_bytes, r->fn != NULL || r->codes != NULL};
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

/* Dequantizes one block of a type kept quantized: its codes, then each value code * scale (+ offset), two roundings
 * (this file is compiled without contraction: see the header comment). */
static void kw_dq_from_codes(const kw_ggml_type_row *r, const uint8_t *b, float *y) {
    int8_t codes[KW_QK_K];
    float scales[KW_QK_K / 16], offsets[KW_QK_K / 16];
    kw_quant_layout ql;
    kw_layout_quant(r->layout, &ql);
    r->codes(b, codes, scales, offsets);
    for (int e = 0; e < r->block_elems; ++e) {
        const float scaled = (float)codes[e] * scales[e / ql.group];
        y[e] = ql.has_offset ? scaled + offsets[e / ql.group] : scaled;
    }
}

enum kw_layout kw_ggml_quant_layout(uint32_t type) {
    const kw_ggml_type_row *r = kw_ggml_row(type);
    return r ? r->layout : KW_LAYOUT_ROWS;
}

int kw_ggml_codes_row(uint32_t type, const void *src, int64_t n, int8_t *codes, float *scales, float *offsets) {
    KW_RETURN_IF(!src || !codes || !scales, KW_E_INVALID_ARG, "kw_ggml_codes_row: NULL buffer");
    const kw_ggml_type_row *r = kw_ggml_row(type);
    KW_RETURN_IF(!r, KW_E_MODEL_DTYPE, "ggml type %u is unknown", (unsigned)type);
    KW_RETURN_IF(!r->codes, KW_E_MODEL_DTYPE, "ggml type %s is not kept quantized by kvwire", r->name);
    kw_quant_layout ql;
    kw_layout_quant(r->layout, &ql);
    KW_RETURN_IF(ql.has_offset && !offsets, KW_E_INVALID_ARG, "kw_ggml_codes_row: %s needs an offsets buffer", r->name);
    size_t bytes = 0;
    KW_FORWARD(kw_ggml_row_bytes(type, n, &bytes));
    const int64_t nb = n / r->block_elems, groups = r->block_elems / ql.group;
    float unused[KW_QK_K / 16];
    for (int64_t i = 0; i < nb; ++i)
        r->codes((const uint8_t *)src + (size_t)i * (size_t)r->block_bytes, codes + i * r->block_elems,
                 scales + i * groups, ql.has_offset ? offsets + i * groups : unused);
    return 0;
}

enum kw_layout kw_ggml_superblock_layout(uint32_t type) {
    if (type == KW_GGML_Q4_K) return KW_LAYOUT_QPANELS_U4_SB;
    if (type == KW_GGML_Q6_K) return KW_LAYOUT_QPANELS_S8_G16_SB;
    return KW_LAYOUT_ROWS;
}

int kw_ggml_superblock_row(uint32_t type, const void *src, int64_t n, float *d, float *m) {
    const int q4 = type == KW_GGML_Q4_K;
    KW_RETURN_IF(!src || !d || (q4 && !m), KW_E_INVALID_ARG, "kw_ggml_superblock_row: NULL buffer");
    KW_RETURN_IF(!q4 && type != KW_GGML_Q6_K, KW_E_MODEL_DTYPE, "ggml type %s has no super-block layout",
                 kw_ggml_type_name(type));
    size_t bytes = 0;
    KW_FORWARD(kw_ggml_row_bytes(type, n, &bytes));
    const kw_ggml_type_row *r = kw_ggml_row(type);
    for (int64_t i = 0; i < n / KW_QK_K; ++i) {
        const uint8_t *b = (const uint8_t *)src + (size_t)i * (size_t)r->block_bytes;
        if (q4) {
            d[i] = kw_dq_f16(b); /* kw_cq_k4_scales: scale = d * sc, offset = -(dmin * m) = (-dmin) * m */
            m[i] = -kw_dq_f16(b + 2);
        } else {
            d[i] = kw_dq_f16(b + 208); /* kw_cq_q6_k: scale = d * scales[i] */
        }
    }
    return 0;
}

int kw_dequant_row(uint32_t type, const void *src, int64_t n, enum kw_dtype out_dtype, void *dst) {
    KW_RETURN_IF(!src || !dst, KW_E_INVALID_ARG, "kw_dequant_row: NULL buffer");
    KW_RETURN_IF(out_dtype != KW_DTYPE_F32 && out_dtype != KW_DTYPE_BF16, KW_E_INVALID_ARG,
                 "kw_dequant_row: output dtype %s (f32 or bf16)", kw_dtype_name(out_dtype));
    const kw_ggml_type_row *r = kw_ggml_row(type);
    KW_RETURN_IF(!r, KW_E_MODEL_DTYPE, "ggml type %u is unknown", (unsigned)type);
    KW_RETURN_IF(!r->fn && !r->codes, KW_E_MODEL_DTYPE, "ggml type %s cannot be dequantized by kvwire", r->name);
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
        for (int64_t i = 0; i < nb; ++i) {
            if (r->codes)
                kw_dq_from_codes(r, s + (size_t)i * (size_t)r->block_bytes, y + i * be);
            else
                r->fn(s + (size_t)i * (size_t)r->block_bytes, y + i * be);
        }
        return 0;
    }
    uint16_t *y = dst;
    float tmp[KW_QK_K];
    for (int64_t i = 0; i < nb; ++i) {
        if (r->codes)
            kw_dq_from_codes(r, s + (size_t)i * (size_t)r->block_bytes, tmp);
        else
            r->fn(s + (size_t)i * (size_t)r->block_bytes, tmp);
        for (int64_t j = 0; j < be; ++j)
            y[i * be + j] = kw_f32_to_bf16(tmp[j]);
    }
    return 0;
}
