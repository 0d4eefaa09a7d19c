/* kw_ref.c: reference implementations of every backend op (see kw_ref.h). Slow and obvious on purpose: no SIMD, no
 * threads, no blocking, sums in double. Where HF rounds an intermediate to fp32 (RMSNorm's normalized row, RoPE's
 * products, GLU's activation), the oracle rounds it too, so a backend that follows HF can match it closely. */
#include "kernels/ref/kw_ref.h"

#include <math.h>
#include <string.h>

#include "common/kw_half.h"
#include "common/kw_status.h"
#include "kernels/kw_backend_impl.h"
#include "kernels/kw_kvq_format.h"

float kw_ref_load(const void *data, enum kw_dtype dtype, int64_t i) {
    switch (dtype) {
    case KW_DTYPE_F32:
        return ((const float *)data)[i];
    case KW_DTYPE_BF16:
        return kw_bf16_to_f32(((const uint16_t *)data)[i]);
    case KW_DTYPE_F16:
        return kw_f16_to_f32(((const uint16_t *)data)[i]);
    default:
        return NAN;
    }
}

void kw_ref_store(void *data, enum kw_dtype dtype, int64_t i, float v) {
    switch (dtype) {
    case KW_DTYPE_F32:
        ((float *)data)[i] = v;
        break;
    case KW_DTYPE_BF16:
        ((uint16_t *)data)[i] = kw_f32_to_bf16(v);
        break;
    case KW_DTYPE_F16:
        ((uint16_t *)data)[i] = kw_f32_to_f16(v);
        break;
    default:
        break;
    }
}

int kw_ref_get_rows(float *out, const void *table, enum kw_dtype table_dtype, int64_t V, int64_t D, const int32_t *ids,
                    int64_t T) {
    int rc = 0;
    for (int64_t t = 0; t < T; ++t) {
        const int32_t id = ids[t];
        for (int64_t d = 0; d < D; ++d)
            out[t * D + d] = (id >= 0 && id < V) ? kw_ref_load(table, table_dtype, (int64_t)id * D + d) : 0.0f;
        if (id < 0 || id >= V) rc = KW_E_TOKEN_ID;
    }
    return rc;
}

void kw_ref_matmul(float *out, const float *x, const void *w, enum kw_dtype w_dtype, const void *bias,
                   enum kw_dtype bias_dtype, int64_t M, int64_t N, int64_t K) {
    for (int64_t m = 0; m < M; ++m) {
        for (int64_t n = 0; n < N; ++n) {
            double acc = 0.0;
            for (int64_t k = 0; k < K; ++k)
                acc += (double)x[m * K + k] * (double)kw_ref_load(w, w_dtype, n * K + k);
            if (bias) acc += (double)kw_ref_load(bias, bias_dtype, n);
            out[m * N + n] = (float)acc;
        }
    }
}

void kw_ref_quant_dequant(float *w, const kw_quant_rows *q) {
    kw_quant_layout ql;
    kw_layout_quant(q->layout, &ql);
    const int64_t groups = q->k / ql.group;
    for (int64_t n = 0; n < q->n; ++n)
        for (int64_t k = 0; k < q->k; ++k) {
            const int64_t g = n * groups + k / ql.group;
            const float scaled = (float)q->codes[n * q->k + k] * q->scales[g];
            w[n * q->k + k] = ql.has_offset ? scaled + q->offsets[g] : scaled;
        }
}

void kw_ref_quant_matmul_x8(float *out, const float *x, int64_t M, const kw_quant_rows *q) {
    kw_quant_layout ql;
    kw_layout_quant(q->layout, &ql);
    const int64_t K = q->k, WG = ql.group, J = K / WG;
    int8_t xq[32];
    for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < q->n; ++n) {
            float acc = 0.0f, d = 0.0f, dh = 0.0f; /* dh: d rounded to f16 (S8_X8) */
            int32_t qsum = 0;
            for (int64_t j = 0; j < J; ++j) {
                const int64_t k0 = j * WG;
                if (k0 % 32 == 0) { /* a new activation group: quantize it */
                    const float *xg = x + m * K + k0;
                    float amax = 0.0f;
                    int bad = 0;
                    for (int k = 0; k < 32; ++k) {
                        bad |= isnan(xg[k]) || isinf(xg[k]);
                        amax = fmaxf(amax, fabsf(xg[k]));
                    }
                    d = bad ? NAN : amax >= 1e-30f ? amax / 127.0f : 0.0f;
                    qsum = 0;
                    for (int k = 0; k < 32; ++k) {
                        const long r = bad || amax < 1e-30f ? 0 : lrintf(xg[k] * (127.0f / amax));
                        xq[k] = (int8_t)(r > 127 ? 127 : r < -127 ? -127 : r);
                        qsum += xq[k];
                    }
                    dh = kw_round_f16(d);
                }
                int32_t isum = 0;
                for (int64_t k = k0; k < k0 + WG; ++k)
                    isum += xq[k % 32] * q->codes[n * K + k];
                if (q->layout == KW_LAYOUT_QPANELS_S8_X8) /* its f16 scale times d rounded to f16, then the fma */
                    acc = fmaf(q->scales[n * J + j] * dh, (float)isum, acc);
                else
                    acc = fmaf(q->scales[n * J + j], (float)isum * d, acc);
                if (ql.has_offset) acc = fmaf(q->offsets[n * J + j], d * (float)qsum, acc);
            }
            out[m * q->n + n] = acc;
        }
}

void kw_ref_rms_norm(float *out, const float *x, const void *w, enum kw_dtype w_dtype, int64_t R, int64_t D, float eps,
                     int flags) {
    for (int64_t r = 0; r < R; ++r) {
        const float *xr = x + r * D;
        double ss = 0.0;
        for (int64_t d = 0; d < D; ++d)
            ss += (double)xr[d] * (double)xr[d];
        const float variance = (float)(ss / (double)D);
        const float inv_rms = 1.0f / sqrtf(variance + eps); /* torch.rsqrt(variance + eps) */
        for (int64_t d = 0; d < D; ++d) {
            float wd = kw_ref_load(w, w_dtype, d);
            if (flags & KW_RMS_NORM_UNIT_OFFSET) wd = 1.0f + wd;
            const float normed = xr[d] * inv_rms;
            out[r * D + d] = normed * wd;
        }
    }
}

/* Row t's cos and sin per frequency i < half: table[2i] = fp32 cos, table[2i + 1] = fp32 sin of the fp32 angle. */
static void kw_ref_rope_row(float *table, int32_t pos, int64_t half, const float *inv_freq) {
    for (int64_t i = 0; i < half; ++i) {
        const float angle = (float)pos * inv_freq[i];
        table[2 * i] = (float)cos((double)angle);
        table[2 * i + 1] = (float)sin((double)angle);
    }
}

void kw_ref_rope_table(float *table, const int32_t *pos, int64_t T, const kw_rope_params *params) {
    float inv_freq[KW_ROPE_MAX_DIM / 2];
    kw__rope_inv_freq(params, inv_freq);
    const int64_t half = params->rotary_dim / 2;
    for (int64_t t = 0; t < T; ++t)
        kw_ref_rope_row(table + t * 2 * half, pos[t], half, inv_freq);
}

void kw_ref_rope_apply(float *x, const float *table, int64_t T, int64_t H, int64_t D, int64_t half) {
    for (int64_t t = 0; t < T; ++t) {
        for (int64_t i = 0; i < half; ++i) {
            const float c = table[(t * half + i) * 2], s = table[(t * half + i) * 2 + 1];
            for (int64_t h = 0; h < H; ++h) {
                float *xh = x + (t * H + h) * D;
                const float x0 = xh[i], x1 = xh[i + half];
                const float a0 = x0 * c, b0 = x1 * s; /* x*cos + rotate_half(x)*sin, rotate_half = (-x1, x0) */
                const float a1 = x1 * c, b1 = x0 * s;
                xh[i] = a0 - b0;
                xh[i + half] = a1 + b1;
            }
        }
    }
}

void kw_ref_rope(float *x, const int32_t *pos, int64_t T, int64_t H, int64_t D, const kw_rope_params *params) {
    float inv_freq[KW_ROPE_MAX_DIM / 2], table[KW_ROPE_MAX_DIM];
    kw__rope_inv_freq(params, inv_freq);
    const int64_t half = params->rotary_dim / 2;
    for (int64_t t = 0; t < T; ++t) { /* one token's table at a time: the rows of kw_ref_rope_table */
        kw_ref_rope_row(table, pos[t], half, inv_freq);
        kw_ref_rope_apply(x + t * H * D, table, 1, H, D, half);
    }
}

/* 1 if query at cache position p may see cache row j. */
static int kw_ref_visible(int64_t j, int64_t p, const uint8_t *kv_mask, const kw_attention_params *params) {
    if (j > p || j >= params->n_kv) return 0;
    if (kv_mask && kv_mask[j] == 0) return 0;
    if (params->sliding_window > 0 && j <= p - params->sliding_window) return 0;
    return 1;
}

void kw_ref_attention(float *out, const float *q, const void *k_cache, const void *v_cache, enum kw_dtype cache_dtype,
                      const uint8_t *kv_mask, int64_t T, int64_t Hq, int64_t Hkv, int64_t cap, int64_t D,
                      const kw_attention_params *params) {
    const int64_t group = Hq / Hkv;
    for (int64_t t = 0; t < T; ++t) {
        const int64_t p = params->q_pos0 + t;
        for (int64_t h = 0; h < Hq; ++h) {
            const float *qh = q + (t * Hq + h) * D;
            float *oh = out + (t * Hq + h) * D;
            const int64_t kvh = h / group;
            double max_score = -INFINITY;
            for (int64_t j = 0; j <= p; ++j) {
                if (!kw_ref_visible(j, p, kv_mask, params)) continue;
                double dot = 0.0;
                for (int64_t d = 0; d < D; ++d)
                    dot += (double)qh[d] * (double)kw_ref_load(k_cache, cache_dtype, (kvh * cap + j) * D + d);
                const double score = dot * (double)params->scale;
                if (score > max_score) max_score = score;
            }
            double denom = 0.0;
            for (int64_t d = 0; d < D; ++d)
                oh[d] = 0.0f;
            if (max_score == -INFINITY) continue;   /* nothing visible: zeros */
            double accp[KW_ATTENTION_MAX_HEAD_DIM]; /* D is at most this (checked by kw_op_attention) */
            for (int64_t d = 0; d < D; ++d)
                accp[d] = 0.0;
            for (int64_t j = 0; j <= p; ++j) {
                if (!kw_ref_visible(j, p, kv_mask, params)) continue;
                double dot = 0.0;
                for (int64_t d = 0; d < D; ++d)
                    dot += (double)qh[d] * (double)kw_ref_load(k_cache, cache_dtype, (kvh * cap + j) * D + d);
                const double e = exp(dot * (double)params->scale - max_score);
                denom += e;
                for (int64_t d = 0; d < D; ++d)
                    accp[d] += e * (double)kw_ref_load(v_cache, cache_dtype, (kvh * cap + j) * D + d);
            }
            for (int64_t d = 0; d < D; ++d)
                oh[d] = (float)(accp[d] / denom);
        }
    }
}

void kw_ref_kv_store(void *cache, enum kw_dtype cache_dtype, const float *src, int64_t T, int64_t H, int64_t cap,
                     int64_t D, int64_t pos0) {
    for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < H; ++h)
            for (int64_t d = 0; d < D; ++d)
                kw_ref_store(cache, cache_dtype, (h * cap + pos0 + t) * D + d, src[(t * H + h) * D + d]);
}

void kw_ref_kv_load(float *out, const void *cache, enum kw_dtype cache_dtype, int64_t T, int64_t H, int64_t cap,
                    int64_t D, int64_t pos0) {
    for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < H; ++h)
            for (int64_t d = 0; d < D; ++d)
                out[(t * H + h) * D + d] = kw_ref_load(cache, cache_dtype, (h * cap + pos0 + t) * D + d);
}

float kw_ref_act(float x, enum kw_act act) {
    const double v = x;
    switch (act) {
    case KW_ACT_SILU:
        return (float)(v / (1.0 + exp(-v)));
    case KW_ACT_GELU_ERF:
        return (float)(0.5 * v * (1.0 + erf(v / sqrt(2.0))));
    case KW_ACT_GELU_TANH:
        return (float)(0.5 * v * (1.0 + tanh(sqrt(2.0 / 3.14159265358979323846) * (v + 0.044715 * v * v * v))));
    case KW_ACT_SIGMOID:
        return (float)(1.0 / (1.0 + exp(-v)));
    case KW_ACT_IDENTITY:
        return x;
    case KW_ACT_TANH:
        return (float)tanh(v);
    }
    return NAN;
}

void kw_ref_glu(float *out, const float *gate, const float *up, int64_t n, enum kw_act act) {
    for (int64_t i = 0; i < n; ++i)
        out[i] = kw_ref_act(gate[i], act) * up[i];
}

void kw_ref_unary(float *out, const float *x, int64_t n, enum kw_act act) {
    for (int64_t i = 0; i < n; ++i)
        out[i] = kw_ref_act(x[i], act);
}

void kw_ref_add(float *out, const float *a, const float *b, int64_t n) {
    for (int64_t i = 0; i < n; ++i)
        out[i] = a[i] + b[i];
}

void kw_ref_scale(float *out, const float *x, int64_t n, float s) {
    for (int64_t i = 0; i < n; ++i)
        out[i] = x[i] * s;
}

void kw_ref_softmax(float *out, const float *x, int64_t R, int64_t N) {
    for (int64_t r = 0; r < R; ++r) {
        const float *xr = x + r * N;
        float *yr = out + r * N;
        double max = -INFINITY;
        for (int64_t i = 0; i < N; ++i)
            if (xr[i] > max) max = xr[i];
        double sum = 0.0;
        for (int64_t i = 0; i < N; ++i)
            sum += exp((double)xr[i] - max);
        for (int64_t i = 0; i < N; ++i)
            yr[i] = (float)(exp((double)xr[i] - max) / sum);
    }
}

void kw_ref_argmax(int32_t *out, const float *x, int64_t R, int64_t N, int flags) {
    for (int64_t r = 0; r < R; ++r) {
        int32_t best = 0;
        float best_v = -INFINITY;
        int found = 0;
        for (int64_t i = 0; i < N; ++i) {
            float v = x[r * N + i];
            if (flags & KW_ARGMAX_ROUND_BF16) v = kw_round_bf16(v);
            if (isnan(v)) continue;
            if (!found || v > best_v) {
                best = (int32_t)i;
                best_v = v;
                found = 1;
            }
        }
        out[r] = best;
    }
}

void kw_ref_copy(void *dst, enum kw_dtype dst_dtype, const void *src, enum kw_dtype src_dtype, int64_t n) {
    if (dst_dtype == src_dtype) {
        memcpy(dst, src, (size_t)n * kw_dtype_size(src_dtype));
        return;
    }
    for (int64_t i = 0; i < n; ++i)
        kw_ref_store(dst, dst_dtype, i, kw_ref_load(src, src_dtype, i));
}

/* The scale byte of a group with largest magnitude amax, by scanning the format's scales. */
static uint8_t kw_ref_kvq_scale_byte(float amax, int qmax) {
    if (amax == 0.0f) return 0;
    for (int s = 1; s < 256; ++s)
        if ((double)kw_kvq_scale((uint8_t)s) * qmax >= (double)amax && kw_kvq_scale((uint8_t)s) * (float)qmax >= amax)
            return (uint8_t)s;
    return 255;
}

/* x quantized with scale byte s and rebuilt: fl(code * scale). */
static float kw_ref_kvq_round(float x, uint8_t s, int qmax) {
    if (s == 0 || isnan(x)) return 0.0f;
    const float scale = kw_kvq_scale(s);
    double c = nearbyint((double)(x / scale));
    c = c > qmax ? qmax : c < -qmax ? -qmax : c;
    return (float)(int)c * scale; /* an integer code: a zero code rebuilds +0 */
}

void kw_ref_kvq_values(float *out, const kw_kvq_geom *g, const float *rows, int64_t n_rows) {
    const int64_t H = g->H, D = g->D, P = g->page_tokens, cap = g->cap, full = n_rows / P * P;
    const int qmax = kw_kvq_code_max(g->codec);
    for (int64_t h = 0; h < H; ++h) {
        for (int64_t r = 0; r < n_rows; ++r) {
            const float *x = rows + (r * H + h) * D;
            float *y = out + (h * cap + r) * D;
            if (!g->keys) {
                const int64_t G = D % 32 == 0 ? 32 : 16;
                for (int64_t d0 = 0; d0 < D; d0 += G) {
                    float amax = 0.0f;
                    for (int64_t d = d0; d < d0 + G; ++d)
                        amax = fabsf(x[d]) > amax ? fabsf(x[d]) : amax;
                    const uint8_t s = kw_ref_kvq_scale_byte(amax, qmax);
                    for (int64_t d = d0; d < d0 + G; ++d)
                        y[d] = kw_ref_kvq_round(x[d], s, qmax);
                }
            } else if (r >= full) {
                for (int64_t d = 0; d < D; ++d)
                    y[d] = kw_round_bf16(x[d]);
            } else {
                const int64_t p0 = r / P * P;
                for (int64_t d = 0; d < D; ++d) {
                    float amax = 0.0f;
                    for (int64_t i = p0; i < p0 + P; ++i) {
                        const float a = fabsf(kw_round_bf16(rows[(i * H + h) * D + d]));
                        amax = a > amax ? a : amax;
                    }
                    y[d] = kw_ref_kvq_round(kw_round_bf16(x[d]), kw_ref_kvq_scale_byte(amax, qmax), qmax);
                }
            }
        }
    }
}

/* A bf16 input as the instruction reads it: widened, a denormal as the zero of its sign. */
static float kw_ref_bf16_in(uint16_t h) {
    const float v = kw_bf16_to_f32(h);
    return fpclassify(v) == FP_SUBNORMAL ? copysignf(0.0f, v) : v;
}

/* fl(a * b + c) rounded to nearest even with x86 FTZ: zero (of the result's sign) when the exact value rounded to 24
 * bits with an unbounded exponent lies below 2^-126. Of the exact values that fmaf rounds to a normal number, only
 * those in [2^-126 - 2^-150, 2^-126 - 2^-151) round below 2^-126 in 24 bits (they give fmaf's +-2^-126); the double
 * fma sees them (a * b is exact in double, and the sums that can land there need far fewer than 53 bits). */
static float kw_ref_fma_ftz(float a, float b, float c) {
    const float r = fmaf(a, b, c);
    if (isnan(r) || isinf(r)) return r;
    const double exact = fma((double)a, (double)b, (double)c);
    const int tiny = fpclassify(r) == FP_SUBNORMAL || fabs(exact) < 0x1p-126 - 0x1p-151;
    return tiny ? copysignf(0.0f, r) : r;
}

void kw_ref_matmul_bf16act(float *out, const float *x, const uint16_t *w, int64_t M, int64_t N, int64_t K) {
    for (int64_t m = 0; m < M; ++m) {
        for (int64_t n = 0; n < N; ++n) {
            float acc = 0.0f;
            for (int64_t k = 0; k < K; k += 2) {
                const int two = k + 1 < K; /* an odd K's last pair: the missing k is a zero pair */
                const float xo = two ? kw_ref_bf16_in(kw_f32_to_bf16(x[m * K + k + 1])) : 0.0f;
                const float wo = two ? kw_ref_bf16_in(w[n * K + k + 1]) : 0.0f;
                acc = kw_ref_fma_ftz(xo, wo, acc);
                acc = kw_ref_fma_ftz(kw_ref_bf16_in(kw_f32_to_bf16(x[m * K + k])), kw_ref_bf16_in(w[n * K + k]), acc);
            }
            out[m * N + n] = isnan(acc) ? kw_f32_from_bits(0x7fc00000u) : acc;
        }
    }
}
