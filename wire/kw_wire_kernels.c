/* kw_wire_kernels.c: the scalar row kernels (absmax, quantize, dequantize) built directly on kw_wire_quant.h, and
 * the choice of kernel table per ISA. The scalar kernels are the reference the vector ones must reproduce bit for
 * bit; they are not tuned. */
#include "wire/kw_wire_internal.h"

#include <string.h>

#include "common/kw_bytes.h"

uint32_t kw__wire_amax_scalar(const void *x, uint32_t dtype, uint32_t n) {
    uint32_t m = 0;
    if (dtype == KW_WIRE_DTYPE_F32) {
        const uint8_t *p = (const uint8_t *)x;
        for (uint32_t i = 0; i < n; ++i) {
            uint32_t u;
            memcpy(&u, p + 4 * (size_t)i, 4);
            u &= 0x7fffffffu;
            m = u > m ? u : m;
        }
        return m;
    }
    const uint16_t *h = (const uint16_t *)x;
    for (uint32_t i = 0; i < n; ++i) {
        const uint32_t a = h[i] & 0x7fffu;
        m = a > m ? a : m;
    }
    if (dtype == KW_WIRE_DTYPE_BF16) return m << 16;
    return kw_f32_bits(kw_f16_to_f32((uint16_t)m)); /* f16 magnitudes order like their bit patterns */
}

uint32_t kw__wire_minmax_scalar(const void *x, uint32_t dtype, uint32_t n, float *lo, float *hi) {
    float tmp[256], l = 0.0f, h = 0.0f;
    for (uint32_t i = 0; i < n; i += 256) {
        const uint32_t m = n - i < 256 ? n - i : 256;
        kw__wire_load_f32((const uint8_t *)x + (size_t)i * kw__wire_dtype_size(dtype), dtype, m, tmp);
        if (i == 0) l = h = tmp[0];
        for (uint32_t k = 0; k < m; ++k) { /* strict compares: an equal value later in the row does not replace */
            l = tmp[k] < l ? tmp[k] : l;
            h = tmp[k] > h ? tmp[k] : h;
        }
    }
    *lo = l;
    *hi = h;
    return kw__wire_amax_scalar(x, dtype, n);
}

uint32_t kw__wire_minmax_fold_scalar(const void *x, uint32_t dtype, uint32_t n, float *lo, float *hi, float *seen) {
    float tmp[256];
    uint32_t am = 0;
    for (uint32_t i = 0; i < n; i += 256) {
        const uint32_t m = n - i < 256 ? n - i : 256;
        kw__wire_load_f32((const uint8_t *)x + (size_t)i * kw__wire_dtype_size(dtype), dtype, m, tmp);
        for (uint32_t k = 0; k < m; ++k) {
            const float v = tmp[k];
            const uint32_t a = kw_f32_bits(v) & 0x7fffffffu;
            const int had = seen[i + k] != 0.0f;
            lo[i + k] = had && !(v < lo[i + k]) ? lo[i + k] : v;
            hi[i + k] = had && !(v > hi[i + k]) ? hi[i + k] : v;
            seen[i + k] = 1.0f;
            am = a > am ? a : am;
        }
    }
    return am;
}

void kw__wire_quantize_affine_scalar(const void *x, uint32_t dtype, uint32_t n, const float *z, const float *inv,
                                     uint32_t shift, float lo, float hi, uint32_t bits, uint8_t *dst) {
    float tmp[256];
    uint8_t q[256];
    const uint32_t mask = (1u << bits) - 1u;
    for (uint32_t i = 0; i < n; i += 256) {
        const uint32_t m = n - i < 256 ? n - i : 256;
        kw__wire_load_f32((const uint8_t *)x + (size_t)i * kw__wire_dtype_size(dtype), dtype, m, tmp);
        for (uint32_t k = 0; k < m; ++k) {
            const uint32_t u = (i + k) >> shift;
            float y = (tmp[k] - z[u]) * inv[u];
            y = y < lo ? lo : y;
            y = y > hi ? hi : y;
            q[k] = (uint8_t)((uint32_t)(int32_t)kw_rne_small(y) & mask);
        }
        kw__wire_pack_fields(bits, q, m, dst + (size_t)i * bits / 8);
    }
}

void kw__wire_dequantize_affine_scalar(const uint8_t *src, uint32_t bits, uint32_t n, const float *s, const float *z,
                                       uint32_t shift, void *out, uint32_t out_dtype) {
    uint8_t q[256];
    for (uint32_t i = 0; i < n; i += 256) {
        const uint32_t m = n - i < 256 ? n - i : 256;
        kw__wire_unpack_fields(bits, src + (size_t)i * bits / 8, m, q);
        for (uint32_t k = 0; k < m; ++k) {
            const float y = kw_wire_dequantize_asym(q[k], s[(i + k) >> shift], z[(i + k) >> shift]);
            if (out_dtype == KW_WIRE_DTYPE_F32)
                ((float *)out)[i + k] = y;
            else
                ((uint16_t *)out)[i + k] = kw_f32_to_bf16(y);
        }
    }
}

uint32_t kw__wire_scales_scalar(const uint32_t *amax, uint32_t n, float qmax, uint32_t scale_dtype, uint8_t *dst,
                                float *s, float *inv) {
    const size_t size = kw_wire_scale_size(scale_dtype);
    for (uint32_t i = 0; i < n; ++i) {
        uint32_t code;
        if (amax[i] >= 0x7f800000u ||
            kw_wire_scale_choose(kw_f32_from_bits(amax[i]), qmax, scale_dtype, &code, &s[i]) < 0)
            return i;
        kw_wire_scale_store(scale_dtype, code, dst + i * size);
        inv[i] = s[i] != 0.0f ? 1.0f / s[i] : 0.0f;
    }
    return n;
}

float kw__wire_first_zero(const void *x, uint32_t dtype, uint32_t n) {
    for (uint32_t i = 0; i < n; ++i) {
        uint32_t bits;
        if (dtype == KW_WIRE_DTYPE_F32) {
            memcpy(&bits, (const uint8_t *)x + 4 * (size_t)i, 4);
        } else {
            const uint16_t h = ((const uint16_t *)x)[i];
            bits = (uint32_t)h << 16; /* bf16 and f16 alike: only the sign and whether the rest is 0 matter */
        }
        if ((bits & 0x7fffffffu) == 0) return bits ? -0.0f : 0.0f;
    }
    return 0.0f;
}

void kw__wire_load_f32(const void *x, uint32_t dtype, uint32_t n, float *out) {
    const uint16_t *h = (const uint16_t *)x;
    switch (dtype) {
    case KW_WIRE_DTYPE_F32:
        memcpy(out, x, (size_t)n * 4);
        break;
    case KW_WIRE_DTYPE_BF16:
        for (uint32_t i = 0; i < n; ++i)
            out[i] = kw_bf16_to_f32(h[i]);
        break;
    default:
        for (uint32_t i = 0; i < n; ++i)
            out[i] = kw_f16_to_f32(h[i]);
        break;
    }
}

void kw__wire_quantize_scalar(uint32_t codec, const void *x, uint32_t dtype, uint32_t n, float inv, uint8_t *dst) {
    float tmp[256];
    for (uint32_t i = 0; i < n; i += 256) {
        const uint32_t m = n - i < 256 ? n - i : 256;
        kw__wire_load_f32((const uint8_t *)x + (size_t)i * kw__wire_dtype_size(dtype), dtype, m, tmp);
        kw_wire_quantize_row(codec, tmp, m, inv, dst + (size_t)i * kw_wire_codec_bits(codec) / 8);
    }
}

void kw__wire_amax_groups_scalar(const uint8_t *const *rows, uint32_t n_rows, uint32_t dtype, uint32_t D, uint32_t G,
                                 uint32_t *out) {
    const size_t es = kw__wire_dtype_size(dtype);
    for (uint32_t r = 0; r < n_rows; ++r)
        for (uint32_t c = 0; c < D / G; ++c)
            *out++ = kw__wire_amax_scalar(rows[r] + (size_t)c * G * es, dtype, G);
}

void kw__wire_quantize_groups_scalar(uint32_t codec, const void *x, uint32_t dtype, uint32_t n, uint32_t G,
                                     const float *inv, uint8_t *dst) {
    const size_t es = kw__wire_dtype_size(dtype), chunk = (size_t)G * kw_wire_codec_bits(codec) / 8;
    for (uint32_t c = 0; c < n / G; ++c)
        kw__wire_quantize_scalar(codec, (const uint8_t *)x + (size_t)c * G * es, dtype, G, inv[c], dst + c * chunk);
}

void kw__wire_quantize_group_rows_each(void (*quantize_groups)(uint32_t, const void *, uint32_t, uint32_t, uint32_t,
                                                               const float *, uint8_t *),
                                       uint32_t codec, const uint8_t *const *rows, uint32_t n_rows, uint32_t dtype,
                                       uint32_t D, uint32_t G, const float *inv, uint8_t *dst) {
    const size_t row_bytes = (size_t)D * kw_wire_codec_bits(codec) / 8;
    for (uint32_t r = 0; r < n_rows; ++r)
        quantize_groups(codec, rows[r], dtype, D, G, inv + (size_t)r * (D / G), dst + r * row_bytes);
}

void kw__wire_quantize_group_rows_scalar(uint32_t codec, const uint8_t *const *rows, uint32_t n_rows, uint32_t dtype,
                                         uint32_t D, uint32_t G, const float *inv, uint8_t *dst) {
    kw__wire_quantize_group_rows_each(kw__wire_quantize_groups_scalar, codec, rows, n_rows, dtype, D, G, inv, dst);
}

void kw__wire_quantize_rows_scalar(uint32_t codec, const uint8_t *const *rows, uint32_t n_rows, uint32_t dtype,
                                   uint32_t n, const float *inv, uint8_t *dst) {
    const size_t row_bytes = (size_t)n * kw_wire_codec_bits(codec) / 8;
    for (uint32_t r = 0; r < n_rows; ++r)
        kw__wire_quantize_scalar(codec, rows[r], dtype, n, inv[r], dst + r * row_bytes);
}

int kw__wire_dequantize_scalar(uint32_t codec, const uint8_t *src, uint32_t n, float s, void *out, uint32_t out_dtype) {
    if (out_dtype == KW_WIRE_DTYPE_F32) return kw_wire_dequantize_row(codec, src, n, s, (float *)out);
    float tmp[256];
    int rc = 0;
    uint16_t *o = (uint16_t *)out;
    for (uint32_t i = 0; i < n; i += 256) {
        const uint32_t m = n - i < 256 ? n - i : 256;
        const int r = kw_wire_dequantize_row(codec, src + (size_t)i * kw_wire_codec_bits(codec) / 8, m, s, tmp);
        rc = r ? r : rc;
        for (uint32_t k = 0; k < m; ++k)
            o[i + k] = kw_f32_to_bf16(tmp[k]);
    }
    return rc;
}

int kw__wire_dequantize_rows_scalar(uint32_t codec, const uint8_t *src, uint32_t n_rows, uint32_t n, const float *s,
                                    void *const *out, uint32_t out_dtype) {
    const size_t rb = (size_t)n * kw_wire_codec_bits(codec) / 8;
    int bad = 0;
    for (uint32_t r = 0; r < n_rows; ++r)
        bad |= kw__wire_dequantize_scalar(codec, src + r * rb, n, s[r], out[r], out_dtype) < 0;
    return bad ? KW_E_WIRE_VALUE : 0;
}

int kw__wire_dequantize_groups_scalar(uint32_t codec, const uint8_t *src, uint32_t n, uint32_t G, const float *s,
                                      void *out, uint32_t out_dtype) {
    const size_t es = out_dtype == KW_WIRE_DTYPE_F32 ? 4 : 2, chunk = (size_t)G * kw_wire_codec_bits(codec) / 8;
    int rc = 0;
    for (uint32_t c = 0; c < n / G; ++c) {
        const int r =
            kw__wire_dequantize_scalar(codec, src + c * chunk, G, s[c], (uint8_t *)out + c * G * es, out_dtype);
        rc = r ? r : rc;
    }
    return rc;
}

void kw__wire_outlier_scores_scalar(const float *x, uint32_t n, int asym, double m, double c, double S, float *out) {
    for (uint32_t i = 0; i < n; ++i)
        out[i] = kw__wire_outlier_score(asym, x[i], m, c, S);
}

void kw__wire_outlier_bits_scalar(const float *sc, uint64_t n, int32_t lo, int32_t hi, uint8_t *above, uint8_t *in) {
    for (uint64_t e = 0; e < n; e += 8) {
        const uint32_t m = n - e < 8 ? (uint32_t)(n - e) : 8u;
        uint32_t a = 0, b = 0;
        for (uint32_t j = 0; j < m; ++j) {
            const int32_t k = kw__wire_score_key(sc[e + j]);
            a |= (uint32_t)(k > hi) << j;
            b |= (uint32_t)(k >= lo && k <= hi) << j;
        }
        above[e / 8] = (uint8_t)a;
        in[e / 8] = (uint8_t)b;
    }
}

static const kw__wire_kernels kw__wire_scalar_kernels = {
    .isa = KW_WIRE_ISA_SCALAR,
    .amax = kw__wire_amax_scalar,
    .quantize = kw__wire_quantize_scalar,
    .dequantize = kw__wire_dequantize_scalar,
    .minmax = kw__wire_minmax_scalar,
    .minmax_fold = kw__wire_minmax_fold_scalar,
    .quantize_affine = kw__wire_quantize_affine_scalar,
    .dequantize_affine = kw__wire_dequantize_affine_scalar,
    .scales = kw__wire_scales_scalar,
    .rotate = kw__wire_rotate_scalar,
    .amax_groups = kw__wire_amax_groups_scalar,
    .quantize_groups = kw__wire_quantize_groups_scalar,
    .quantize_group_rows = kw__wire_quantize_group_rows_scalar,
    .quantize_rows = kw__wire_quantize_rows_scalar,
    .dequantize_groups = kw__wire_dequantize_groups_scalar,
    .dequantize_rows = kw__wire_dequantize_rows_scalar,
    .outlier_scores = kw__wire_outlier_scores_scalar,
    .outlier_bits = kw__wire_outlier_bits_scalar,
};

const kw__wire_kernels *kw__wire_kernels_get(enum kw_wire_isa isa) {
    switch (kw_wire_isa_resolve(isa)) {
    case KW_WIRE_ISA_AVX512:
        return kw__wire_kernels_avx512();
    case KW_WIRE_ISA_AVX2:
        return kw__wire_kernels_avx2();
    default:
        return &kw__wire_scalar_kernels;
    }
}
