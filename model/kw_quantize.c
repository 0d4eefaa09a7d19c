/* kw_quantize.c: f32 -> Q8_0, Q5_0, Q4_K, Q6_K, F16, BF16, F32 blocks (the layouts kw_dequant.c reads; how scales and
 * codes are chosen is described in kw_quantize.h), and the per-tensor type rule of the quantization schemes. Like
 * kw_dequant.c this file must not contract multiplies and adds into FMAs (the C standard mode keeps -ffp-contract
 * off), so every machine computes the same codes. */
#include "model/kw_quantize.h"

#include <math.h>
#include <string.h>

#include "common/kw_bytes.h"
#include "common/kw_half.h"
#include "common/kw_status.h"
#include "model/kw_dequant.h"

#define KW_QK   32
#define KW_QK_K 256

/* x rounded to an fp16 scale and widened back: the value the file will hold. Magnitudes beyond fp16 saturate at
 * 65504 (weights never get there; the file stays valid). */
static float kw_q_f16_round(float x, uint16_t *stored) {
    if (x > 65504.0f) x = 65504.0f;
    if (x < -65504.0f) x = -65504.0f;
    *stored = kw_f32_to_f16(x);
    return kw_f16_to_f32(*stored);
}

static int kw_q_clamp(float v, int lo, int hi) {
    const float r = roundf(v);
    if (!(r >= (float)lo)) return lo; /* also NaN */
    if (r > (float)hi) return hi;
    return (int)r;
}

// ---------------------------------------------------------------------------------------------------------------
// Legacy 32-value blocks

/* Q8_0: f16 d, int8 qs[32]. */
static void kw_q_q8_0(const float *x, uint8_t *b) {
    float amax = 0.0f;
    for (int j = 0; j < KW_QK; ++j)
        amax = fmaxf(amax, fabsf(x[j]));
    uint16_t dh = 0;
    const float d = kw_q_f16_round(amax / 127.0f, &dh);
    kw_store_le16(b, dh);
    for (int j = 0; j < KW_QK; ++j)
        b[2 + j] = (uint8_t)(int8_t)(d > 0.0f ? kw_q_clamp(x[j] / d, -127, 127) : 0);
}

/* Q5_0: f16 d, u32 qh (bit j: fifth bit of value j), qs[16] (value j low nibble, value j + 16 high nibble). */
static void kw_q_q5_0(const float *x, uint8_t *b) {
    float m = 0.0f;
    for (int j = 0; j < KW_QK; ++j)
        if (fabsf(x[j]) > fabsf(m)) m = x[j];
    uint16_t dh = 0;
    const float d = kw_q_f16_round(m / -16.0f, &dh);
    kw_store_le16(b, dh);
    uint32_t qh = 0;
    uint8_t *qs = b + 6;
    int q[KW_QK];
    for (int j = 0; j < KW_QK; ++j) {
        q[j] = d != 0.0f ? kw_q_clamp(x[j] / d, -16, 15) + 16 : 16;
        qh |= (uint32_t)((q[j] >> 4) & 1) << j;
    }
    for (int j = 0; j < KW_QK / 2; ++j)
        qs[j] = (uint8_t)((q[j] & 0x0F) | ((q[j + KW_QK / 2] & 0x0F) << 4));
    kw_store_le32(b + 2, qh);
}

// ---------------------------------------------------------------------------------------------------------------
// Q4_K

/* Least-squares fit of x ~ a * q + b over n values for fixed codes q; keeps *a, *b when the codes are all equal.
 * a is kept >= 0 and b <= 0 (Q4_K stores a non-negative scale and subtracts a non-negative minimum). */
static void kw_q_fit(const float *x, const int *q, int n, float *a, float *b) {
    double sq = 0, sx = 0, sqq = 0, sqx = 0;
    for (int i = 0; i < n; ++i) {
        sq += q[i];
        sx += x[i];
        sqq += (double)q[i] * q[i];
        sqx += (double)q[i] * x[i];
    }
    const double den = n * sqq - sq * sq;
    if (den <= 0) return;
    double fa = (n * sqx - sq * sx) / den, fb = (sx - fa * sq) / n;
    if (fb > 0) { /* offset must be <= 0: refit the scale alone through the origin */
        fb = 0;
        fa = sqq > 0 ? sqx / sqq : 0;
    }
    if (fa < 0) fa = 0;
    *a = (float)fa;
    *b = (float)fb;
}

/* Codes of x for value = a * q + b, q in 0..qmax. */
static void kw_q_codes(const float *x, int n, float a, float b, int qmax, int *q) {
    for (int i = 0; i < n; ++i)
        q[i] = a > 0.0f ? kw_q_clamp((x[i] - b) / a, 0, qmax) : 0;
}

/* Q4_K: f16 d, f16 dmin, scales[12] (eight 6-bit scales and mins), qs[128] (value 64g + 32s + l: nibble s of
 * qs[32g + l]). */
static void kw_q_q4_k(const float *x, uint8_t *b) {
    float scale[8], mn[8];
    int q[KW_QK_K];
    for (int j = 0; j < 8; ++j) {
        const float *xs = x + 32 * j;
        float lo = 0.0f, hi = xs[0];
        for (int i = 0; i < 32; ++i) {
            lo = fminf(lo, xs[i]);
            hi = fmaxf(hi, xs[i]);
        }
        float a = hi > lo ? (hi - lo) / 15.0f : 0.0f, off = lo;
        for (int it = 0; it < 2; ++it) {
            kw_q_codes(xs, 32, a, off, 15, q + 32 * j);
            kw_q_fit(xs, q + 32 * j, 32, &a, &off);
        }
        scale[j] = a;
        mn[j] = -off;
    }
    float max_scale = 0.0f, max_min = 0.0f;
    for (int j = 0; j < 8; ++j) {
        max_scale = fmaxf(max_scale, scale[j]);
        max_min = fmaxf(max_min, mn[j]);
    }
    uint16_t dh = 0, dminh = 0;
    const float d = kw_q_f16_round(max_scale / 63.0f, &dh), dmin = kw_q_f16_round(max_min / 63.0f, &dminh);
    uint8_t sc[8], m[8];
    for (int j = 0; j < 8; ++j) {
        sc[j] = (uint8_t)(d > 0.0f ? kw_q_clamp(scale[j] / d, 0, 63) : 0);
        m[j] = (uint8_t)(dmin > 0.0f ? kw_q_clamp(mn[j] / dmin, 0, 63) : 0);
    }
    kw_store_le16(b, dh);
    kw_store_le16(b + 2, dminh);
    uint8_t *s = b + 4;
    for (int j = 0; j < 4; ++j) {
        s[j] = (uint8_t)((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
        s[j + 4] = (uint8_t)((m[j] & 63) | ((m[j + 4] >> 4) << 6));
        s[j + 8] = (uint8_t)((sc[j + 4] & 0x0F) | ((m[j + 4] & 0x0F) << 4));
    }
    /* The final codes, against the scales as stored (computed as kw_dequant.c computes them). */
    for (int j = 0; j < 8; ++j) {
        const float a = d * (float)sc[j], off = -(dmin * (float)m[j]);
        kw_q_codes(x + 32 * j, 32, a, off, 15, q + 32 * j);
    }
    uint8_t *qs = b + 16;
    for (int g = 0; g < 4; ++g)
        for (int l = 0; l < 32; ++l)
            qs[32 * g + l] = (uint8_t)(q[64 * g + l] | (q[64 * g + 32 + l] << 4));
}

// ---------------------------------------------------------------------------------------------------------------
// Q6_K

/* Q6_K: ql[128], qh[64], int8 scales[16], f16 d. Value e = 128h + r: low nibble r / 64 of ql[64h + r % 64], high two
 * bits 2(r / 32) of qh[32h + r % 32]; value = d * scale[e / 16] * (q - 32). */
static void kw_q_q6_k(const float *x, uint8_t *b) {
    float scale[16], max_abs = 0.0f;
    for (int i = 0; i < 16; ++i) {
        float m = 0.0f;
        for (int j = 0; j < 16; ++j)
            if (fabsf(x[16 * i + j]) > fabsf(m)) m = x[16 * i + j];
        scale[i] = m / -32.0f;
        max_abs = fmaxf(max_abs, fabsf(scale[i]));
    }
    uint16_t dh = 0;
    const float d = kw_q_f16_round(max_abs / 127.0f, &dh);
    uint8_t *ql = b, *qh = b + 128;
    int8_t sc[16];
    for (int i = 0; i < 16; ++i)
        sc[i] = (int8_t)(d > 0.0f ? kw_q_clamp(scale[i] / d, -127, 127) : 0);
    int q[KW_QK_K];
    for (int e = 0; e < KW_QK_K; ++e) {
        const float s = d * (float)sc[e / 16];
        q[e] = s != 0.0f ? kw_q_clamp(x[e] / s, -32, 31) + 32 : 32;
    }
    memset(ql, 0, 128);
    memset(qh, 0, 64);
    for (int e = 0; e < KW_QK_K; ++e) {
        const int h = e / 128, r = e % 128;
        ql[64 * h + r % 64] |= (uint8_t)((q[e] & 0x0F) << (4 * (r / 64)));
        qh[32 * h + r % 32] |= (uint8_t)((q[e] >> 4) << (2 * (r / 32)));
    }
    memcpy(b + 192, sc, 16);
    kw_store_le16(b + 208, dh);
}

// ---------------------------------------------------------------------------------------------------------------
// Rows

int kw_quantize_supported(uint32_t type) {
    switch (type) {
    case KW_GGML_F32:
    case KW_GGML_F16:
    case KW_GGML_BF16:
    case KW_GGML_Q8_0:
    case KW_GGML_Q5_0:
    case KW_GGML_Q4_K:
    case KW_GGML_Q6_K:
        return 1;
    default:
        return 0;
    }
}

int kw_quantize_row(uint32_t type, const float *x, int64_t n, void *dst) {
    KW_RETURN_IF(!x || !dst, KW_E_INVALID_ARG, "kw_quantize_row: NULL buffer");
    KW_RETURN_IF(!kw_quantize_supported(type), KW_E_MODEL_DTYPE, "kvwire cannot quantize to %s",
                 kw_ggml_type_name(type));
    kw_ggml_type_info info;
    size_t bytes = 0;
    KW_FORWARD(kw_ggml_type_info_get(type, &info));
    KW_FORWARD(kw_ggml_row_bytes(type, n, &bytes));
    for (int64_t i = 0; i < n; ++i)
        KW_RETURN_IF(!isfinite(x[i]), KW_E_INVALID_ARG, "value %lld of a row to quantize is %g", (long long)i,
                     (double)x[i]);
    uint8_t *b = dst;
    for (int64_t i = 0; i < n / info.block_elems; ++i) {
        const float *xb = x + i * info.block_elems;
        uint8_t *bb = b + (size_t)i * (size_t)info.block_bytes;
        switch (type) {
        case KW_GGML_F32:
            kw_store_lef32(bb, xb[0]);
            break;
        case KW_GGML_F16:
            kw_store_le16(bb, kw_f32_to_f16(xb[0]));
            break;
        case KW_GGML_BF16:
            kw_store_le16(bb, kw_f32_to_bf16(xb[0]));
            break;
        case KW_GGML_Q8_0:
            kw_q_q8_0(xb, bb);
            break;
        case KW_GGML_Q5_0:
            kw_q_q5_0(xb, bb);
            break;
        case KW_GGML_Q4_K:
            kw_q_q4_k(xb, bb);
            break;
        default:
            kw_q_q6_k(xb, bb);
            break;
        }
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Type choice

static int kw_q_ends_with(const char *s, const char *suffix) {
    const size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* llama.cpp's use_more_bits: the first and last eighth of the layers, and every third layer between. */
static int kw_q_more_bits(int32_t i, int32_t n) {
    return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

uint32_t kw_quant_choose_type(enum kw_quant_scheme scheme, const kw_quant_tensor *t) {
    if (t->n_dims < 2 || !kw_q_ends_with(t->name, "weight") || kw_q_ends_with(t->name, "_norm.weight"))
        return KW_GGML_F32;
    uint32_t type = KW_GGML_F32;
    switch (scheme) {
    case KW_QUANT_F32:
        return KW_GGML_F32;
    case KW_QUANT_BF16:
        return KW_GGML_BF16;
    case KW_QUANT_Q8_0:
        type = KW_GGML_Q8_0;
        break;
    case KW_QUANT_Q4_K:
        type = KW_GGML_Q4_K;
        break;
    case KW_QUANT_Q4_K_M: {
        type = KW_GGML_Q4_K;
        const int output =
            strcmp(t->name, "output.weight") == 0 || (t->tied && strcmp(t->name, "token_embd.weight") == 0);
        const int more = t->layer >= 0 && kw_q_more_bits(t->layer, t->n_layers);
        if (output)
            type = t->ne0 % KW_QK_K != 0 ? KW_GGML_Q8_0 : KW_GGML_Q6_K;
        else if (more && (kw_q_ends_with(t->name, ".attn_v.weight") || kw_q_ends_with(t->name, ".ffn_down.weight")))
            type = KW_GGML_Q6_K;
        break;
    }
    }
    if (t->ne0 % KW_QK_K != 0) {
        if (type == KW_GGML_Q4_K) type = KW_GGML_Q5_0;
        if (type == KW_GGML_Q6_K) type = KW_GGML_Q8_0;
    }
    if (t->ne0 % KW_QK != 0) type = KW_GGML_F16;
    return type;
}

int32_t kw_quant_file_type(enum kw_quant_scheme scheme) {
    switch (scheme) {
    case KW_QUANT_F32:
        return 0;
    case KW_QUANT_BF16:
        return 32;
    case KW_QUANT_Q8_0:
        return 7;
    case KW_QUANT_Q4_K_M:
        return 15;
    default:
        return -1;
    }
}
