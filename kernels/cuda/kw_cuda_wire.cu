/* kw_cuda_wire.cu: the KVWire codecs of one tensor of a token group on the GPU (kw_cuda_wire.h), byte-identical to
 * the CPU encoder (wire/kw_wire_encode.c) and decoder (wire/kw_wire_decode.c): scale choice, rounding, clamping and
 * packing are the KW_HD functions of wire/kw_wire_quant.h, called on the same runs of values (8, or the 4 of a
 * 4-channel group), and this file is built with --fmad=false so nvcc fuses nothing the CPU rounds twice.
 *
 * Encoding is three launches: (1) the absmax of every scale unit as f32 bits (one warp per (head, token) row; a
 * head or the layer gathers its rows with atomicMax, as the CPU's running max of bit patterns), (2) one thread per
 * scale unit chooses and stores the scale, or records the failure, (3) one thread per 8 values quantizes and packs.
 * Failures go to one 64-bit word under atomicMin of (unit << 1 | kind): the CPU encoder stops at the first failing
 * unit in its loop order (heads, then tokens, then channel groups), and within a unit it tests NaN/Inf first, so
 * the smallest key is the error the CPU reports. Decoding is one launch, one thread per 8 values.
 *
 * KVWire v1.1's general path (zero points, channel scales, int3 in groups of 4: the CPU's kw__wire_general_path)
 * swaps launch (1) for kw_k_wire_stats (one thread per 8 values, atomics per unit: absmax, and with zero points the
 * minimum, maximum and first zero of §5.9), keys failures by the CPU's block (kw_wire_err_block), and quantizes and
 * dequantizes value by value with each value's own unit, as kw__enc_tensor_blocks and kw__dec_tensor_blocks do.
 *
 * Clipped scales (FORMAT.md §5.13, kw_cuda_wire_spec.clip) take the general path with one more launch between the
 * statistics and the scales: kw_k_wire_clip, one thread per block of units the CPU's kw__enc_clip searches together,
 * running its loop as written (candidates, the block's live units, the squared errors summed in double in the
 * [h][t][d] order), so each unit's chosen range is the CPU's; the scales kernel then reads those ranges.
 */
#include "kernels/cuda/kw_cuda.cuh"

#include <float.h>

#include "kernels/cuda/kw_cuda_wire.h"
#include "kernels/kw_op_math.h"
#include "wire/kw_wire_quant.h"

#define KW_WIRE_BLOCK 256

/* enum kw_wire_dtype numbers (wire/kw_wire.h, which is not for kernels/): 1 bf16, 2 f16, 3 f32 */
#define KW__WDT_BF16 1u
#define KW__WDT_F16  2u
#define KW__WDT_F32  3u

/* The magnitude of element i as f32 bits (what the CPU's absmax compares; f16 magnitudes order like their bits). */
__device__ __forceinline__ uint32_t kw_wire_abs_bits(const void *x, uint32_t dtype, size_t i) {
    if (dtype == KW__WDT_F32) return kw_f32_bits(((const float *)x)[i]) & 0x7fffffffu;
    const uint32_t h = ((const uint16_t *)x)[i] & 0x7fffu;
    return dtype == KW__WDT_BF16 ? h << 16 : kw_f32_bits(kw_f16_to_f32((uint16_t)h));
}

__device__ __forceinline__ float kw_wire_load(const void *x, uint32_t dtype, size_t i) {
    if (dtype == KW__WDT_F32) return ((const float *)x)[i];
    const uint16_t h = ((const uint16_t *)x)[i];
    return dtype == KW__WDT_BF16 ? kw_bf16_to_f32(h) : kw_f16_to_f32(h);
}

/* Everything the kernels need about the tensor, passed by value. */
struct kw_wire_geom {
    uint32_t codec, gran, scale_dtype, group_log2; /* scale_dtype without the zero-point bit */
    uint32_t H, T, D;
    uint32_t bits;      /* per code */
    uint32_t ss;        /* bytes per scale (0: passthrough) */
    uint32_t asym;      /* 1: zero points (FORMAT.md §5.9) */
    uint32_t general;   /* 1: the CPU's general path (kw__wire_general_path): a scale unit per element below */
    uint32_t clip;      /* 1: clipped scales (an integer codec with kw_cuda_wire_spec.clip; general then) */
    float rot_max;      /* rotated rows: kw_wire_rotated_max(D), the most a unit's values may reach; 0: not rotated */
    uint64_t units;     /* scale units (rows for passthrough) */
    uint64_t zeros_off; /* where the zero points start in the tensor's bytes (asym) */
    uint64_t codes_off; /* where the codes start in the tensor's bytes */
};

/* The scale unit of the value (h, row r = h * T + t, channel d). */
__device__ __forceinline__ uint64_t kw_wire_unit(const kw_wire_geom &g, uint32_t h, uint64_t r, uint32_t d) {
    switch (g.gran) {
    case KW_WIRE_GRAN_LAYER:
        return 0;
    case KW_WIRE_GRAN_HEAD:
        return h;
    case KW_WIRE_GRAN_GROUP:
        return r * (g.D >> g.group_log2) + (d >> g.group_log2);
    case KW_WIRE_GRAN_CHANNEL:
        return kw_wire_scale_index(g.gran, g.group_log2, g.T, g.D, h, (uint32_t)(r % g.T), d);
    default: /* token, and the rows of a passthrough tensor */
        return r;
    }
}

/* Offset in elements of row r's first value in the source. */
__device__ __forceinline__ size_t kw_wire_src_row(const kw_cuda_wire_src &src, const kw_wire_geom &g, uint64_t r) {
    const uint32_t h = (uint32_t)(r / g.T), t = (uint32_t)(r % g.T);
    const size_t row = src.d_rows ? src.d_rows[src.t0 + t] : (size_t)src.t0 + t;
    return row * src.token_stride + (size_t)h * src.head_stride;
}

/* 1 if element (row r = h * T + t, channel d) of the tensor is an outlier of the section (kw_cuda_wire_src.d_mask). */
__device__ __forceinline__ int kw_wire_masked(const kw_cuda_wire_src &src, const kw_wire_geom &g, uint64_t r,
                                              uint32_t d) {
    if (!src.d_mask) return 0;
    const uint32_t h = (uint32_t)(r / g.T), t = (uint32_t)(r % g.T);
    const uint64_t e = src.mask_base + ((uint64_t)h * src.mask_tokens + src.t0 + t) * g.D + d;
    return (src.d_mask[e >> 3] >> (e & 7)) & 1;
}

/* (1) absmax per unit; amax[] starts zeroed. */
__global__ void __launch_bounds__(KW_WIRE_BLOCK)
    kw_k_wire_amax(kw_cuda_wire_src src, kw_wire_geom g, unsigned int *amax) {
    const uint32_t lane = threadIdx.x & 31u;
    const uint64_t rows = (uint64_t)g.H * g.T;
    const uint64_t warps = (uint64_t)gridDim.x * (blockDim.x >> 5);
    for (uint64_t r = blockIdx.x * (uint64_t)(blockDim.x >> 5) + (threadIdx.x >> 5); r < rows; r += warps) {
        const size_t base = kw_wire_src_row(src, g, r);
        uint32_t m = 0;
        for (uint32_t c = lane; c < g.D / 8; c += 32) {
            uint32_t half[2] = {0, 0};
            for (uint32_t i = 0; i < 8; ++i) {
                const uint32_t a = kw_wire_abs_bits(src.d_data, src.dtype, base + c * 8 + i);
                half[i >> 2] = a > half[i >> 2] ? a : half[i >> 2];
            }
            if (g.gran == KW_WIRE_GRAN_GROUP) {
                const uint32_t h = (uint32_t)(r / g.T);
                if (g.group_log2 == 2) { /* two groups in these 8 values */
                    atomicMax(&amax[kw_wire_unit(g, h, r, c * 8)], half[0]);
                    atomicMax(&amax[kw_wire_unit(g, h, r, c * 8 + 4)], half[1]);
                } else {
                    atomicMax(&amax[kw_wire_unit(g, h, r, c * 8)], half[0] > half[1] ? half[0] : half[1]);
                }
            } else {
                const uint32_t a = half[0] > half[1] ? half[0] : half[1];
                m = a > m ? a : m;
            }
        }
        if (g.gran == KW_WIRE_GRAN_GROUP) continue; /* warp-uniform */
        for (int o = 16; o > 0; o >>= 1) {
            const uint32_t other = __shfl_xor_sync(0xffffffffu, m, o);
            m = other > m ? other : m;
        }
        if (lane == 0) atomicMax(&amax[kw_wire_unit(g, (uint32_t)(r / g.T), r, 0)], m);
    }
}

/* The CPU encoder's general path (kw__enc_tensor_blocks, kw__enc_tensor_general) checks a block's rows for NaN/Inf
 * before it chooses the block's scales, block by block: a channel group's row, a run of L rows of a head (channel),
 * a head, the layer. The failure key of unit u is its block's number, so the smallest key is still the CPU's error. */
__device__ __forceinline__ uint64_t kw_wire_err_block(const kw_wire_geom &g, uint64_t u) {
    if (!g.general) return u;
    return g.gran == KW_WIRE_GRAN_GROUP ? u / (g.D >> g.group_log2) : g.gran == KW_WIRE_GRAN_CHANNEL ? u / g.D : u;
}

/* Order-preserving u32 key of a finite f32 with -0 = +0 (FORMAT.md §5.9 compares values, not bits), and back. */
__device__ __forceinline__ uint32_t kw_wire_order_key(float x) {
    const uint32_t b = x == 0.0f ? 0u : kw_f32_bits(x);
    return (b & 0x80000000u) ? ~b : b | 0x80000000u;
}
__device__ __forceinline__ float kw_wire_order_value(uint32_t k) {
    return kw_f32_from_bits((k & 0x80000000u) ? k & 0x7fffffffu : ~k);
}

/* (1') the general path's statistics, one thread per 8 values: per unit the absmax bits (the NaN/Inf check and the
 * symmetric scale), and with zero points the minimum and maximum as order keys and the first zero, (element number
 * << 1 | sign), in [h][t][d] order: a zero extreme takes that zero's sign, the value §5.9's first-attainer rule
 * gives (a zero minimum or maximum means every value of the unit is >= 0 or <= 0, so every zero attains it). Runs of
 * values of one unit are folded in registers before the atomics. amax, mx and fz start at 0, mn at ~0. */
__global__ void __launch_bounds__(KW_WIRE_BLOCK)
    kw_k_wire_stats(kw_cuda_wire_src src, kw_wire_geom g, unsigned int *amax, unsigned int *mn, unsigned int *mx,
                    unsigned long long *fz) {
    const uint64_t chunks = (uint64_t)g.H * g.T * (g.D / 8);
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < chunks;
         i += (uint64_t)gridDim.x * blockDim.x) {
        const uint64_t r = i / (g.D / 8);
        const uint32_t d0 = (uint32_t)(i % (g.D / 8)) * 8, h = (uint32_t)(r / g.T);
        const size_t base = kw_wire_src_row(src, g, r) + d0;
        uint64_t cur = kw_wire_unit(g, h, r, d0);
        uint32_t a = 0, lo = ~0u, hi = 0;
        unsigned long long z = ~0ull;
        for (uint32_t j = 0; j < 8; ++j) {
            const uint64_t u = kw_wire_unit(g, h, r, d0 + j);
            if (u != cur) {
                atomicMax(&amax[cur], a);
                if (g.asym) {
                    atomicMin(&mn[cur], lo);
                    atomicMax(&mx[cur], hi);
                    if (z != ~0ull) atomicMin(&fz[cur], z);
                }
                cur = u;
                a = 0, lo = ~0u, hi = 0, z = ~0ull;
            }
            if (kw_wire_masked(src, g, r, d0 + j)) continue; /* an outlier: out of the statistics */
            const uint32_t ab = kw_wire_abs_bits(src.d_data, src.dtype, base + j);
            a = ab > a ? ab : a;
            if (!g.asym || ab >= 0x7f800000u) continue; /* a NaN has no order: the unit fails on amax */
            const float x = kw_wire_load(src.d_data, src.dtype, base + j);
            const uint32_t k = kw_wire_order_key(x);
            lo = k < lo ? k : lo;
            hi = k > hi ? k : hi;
            if (x == 0.0f && z == ~0ull) z = (r * g.D + d0 + j) << 1 | (kw_f32_bits(x) >> 31);
        }
        atomicMax(&amax[cur], a);
        if (g.asym) {
            atomicMin(&mn[cur], lo);
            atomicMax(&mx[cur], hi);
            if (z != ~0ull) atomicMin(&fz[cur], z);
        }
    }
}

/* A zero extreme with the sign of the unit's first zero (kw_k_wire_stats). */
__device__ __forceinline__ float kw_wire_signed_extreme(uint32_t key, unsigned long long fz) {
    const float v = kw_wire_order_value(key);
    return v == 0.0f && (fz & 1u) ? -0.0f : v;
}

/* Unit u's statistics as the CPU's general path holds them: [lo, hi] = [min, max] with zero points (0 and 0 for a
 * unit whose every value is an outlier, *seen 0 then), else lo = 0 and hi = the absmax. */
__device__ __forceinline__ void kw_wire_unit_range(const kw_wire_geom &g, const unsigned int *amax,
                                                   const unsigned int *mn, const unsigned int *mx,
                                                   const unsigned long long *fz, uint64_t u, float *lo, float *hi,
                                                   int *seen) {
    *seen = 1;
    if (!g.asym) {
        *lo = 0.0f;
        *hi = kw_f32_from_bits(amax[u]);
        return;
    }
    *seen = mn[u] != ~0u;
    *lo = *seen ? kw_wire_signed_extreme(mn[u], fz[u]) : 0.0f;
    *hi = *seen ? kw_wire_signed_extreme(mx[u], fz[u]) : 0.0f;
}

/* The clipped-scale search's scratch, per unit (kw__enc_clip_scratch): the candidate's and the best squared error,
 * the candidate's scale, zero point and 1/s (s < 0: no candidate), and the chosen range, which the scales read. */
struct kw_wire_clip_work {
    double *err, *best;
    float *s, *z, *inv;
    float *lo, *hi;
};

#define KW_WIRE_CLIP_STEPS 11u

/* Candidate k's range (wire/kw_wire_encode.c kw__enc_clip_range): c = fl32(20 - k) / 20, the absmax times c, or
 * [min, max] narrowed about its midpoint to the width fl32(fl32(max - min) * c); k = 0 the range itself. */
__device__ __forceinline__ void kw_wire_clip_range(uint32_t asym, uint32_t k, float lo, float hi, float *clo,
                                                   float *chi) {
    const float c = __fdiv_rn((float)(20u - k), 20.0f);
    if (k == 0) {
        *clo = lo;
        *chi = hi;
    } else if (!asym) {
        *clo = 0.0f;
        *chi = __fmul_rn(hi, c);
    } else {
        const float span = __fsub_rn(hi, lo), w = __fmul_rn(span, c);
        *clo = __fadd_rn(lo, __fmul_rn(__fsub_rn(span, w), 0.5f));
        *chi = __fadd_rn(*clo, w);
    }
}

/* The first element (h, t, d) of unit u and the unit's extent: heads [h, h + nh), tokens [t, t + nt), channels
 * [d, d + nd), in the order kw_wire_scale_index numbers units. */
__device__ __forceinline__ void kw_out_unit_box(const kw_wire_geom &g, uint64_t u, uint32_t *h, uint32_t *nh,
                                                uint32_t *t, uint32_t *nt, uint32_t *d, uint32_t *nd) {
    *h = 0, *nh = 1, *t = 0, *nt = 1, *d = 0, *nd = g.D;
    switch (g.gran) {
    case KW_WIRE_GRAN_LAYER:
        *nh = g.H, *nt = g.T;
        return;
    case KW_WIRE_GRAN_HEAD:
        *h = (uint32_t)u, *nt = g.T;
        return;
    case KW_WIRE_GRAN_TOKEN:
        *h = (uint32_t)(u / g.T), *t = (uint32_t)(u % g.T);
        return;
    case KW_WIRE_GRAN_GROUP: {
        const uint32_t groups = g.D >> g.group_log2;
        const uint64_t row = u / groups;
        *h = (uint32_t)(row / g.T), *t = (uint32_t)(row % g.T);
        *d = (uint32_t)(u % groups) << g.group_log2, *nd = 1u << g.group_log2;
        return;
    }
    default: { /* channel: (h, run, d) */
        const uint32_t L = 1u << g.group_log2, runs = (g.T + L - 1) >> g.group_log2;
        const uint64_t hr = u / g.D;
        *d = (uint32_t)(u % g.D), *nd = 1;
        *h = (uint32_t)(hr / runs), *t = (uint32_t)(hr % runs) << g.group_log2;
        *nt = g.T - *t < L ? g.T - *t : L;
        return;
    }
    }
}

/* Block b of the CPU's search: heads [h0, h1), tokens [t0, t1) (its first unit's), its units base .. base + nu - 1,
 * channel d in unit base + (d >> shift) (shift 31: one unit). The layer is one block; a head, a token row (token,
 * channel groups) or a run of L rows of a head (channel scales) is one: g.units / nu blocks. */
__device__ __forceinline__ void kw_wire_clip_block(const kw_wire_geom &g, uint64_t b, uint32_t *h0, uint32_t *h1,
                                                   uint32_t *t0, uint32_t *t1, uint32_t *shift, uint32_t *nu,
                                                   uint64_t *base) {
    *nu = g.gran == KW_WIRE_GRAN_GROUP ? g.D >> g.group_log2 : g.gran == KW_WIRE_GRAN_CHANNEL ? g.D : 1u;
    *shift = g.gran == KW_WIRE_GRAN_GROUP ? g.group_log2 : g.gran == KW_WIRE_GRAN_CHANNEL ? 0u : 31u;
    *base = b * *nu;
    uint32_t nh, nt, d, nd;
    kw_out_unit_box(g, *base, h0, &nh, t0, &nt, &d, &nd);
    *h1 = *h0 + nh;
    *t1 = *t0 + nt;
}

/* (1'') the clipped-scale search, one thread per block (kw_wire_clip_block), wire/kw_wire_encode.c's kw__enc_clip
 * step for step: for each candidate k every unit of the block gets its range and stored scale (a unit without values,
 * with a zero range, whose k = 0 is refused, or whose candidate is refused, none), the search stops when no unit of
 * the block has one, the squared errors fl64(x - x^)^2 of the unit's values (outliers left out) are summed in double
 * in the block's [h][t][d] order, and a strictly smaller sum replaces the best (ties keep the wider range). A block
 * with a NaN or Inf is left unclipped: the scales kernel reports it. */
__global__ void __launch_bounds__(KW_WIRE_BLOCK)
    kw_k_wire_clip(kw_cuda_wire_src src, kw_wire_geom g, const unsigned int *amax, const unsigned int *mn,
                   const unsigned int *mx, const unsigned long long *fz, kw_wire_clip_work cw) {
    const uint64_t blocks = g.units / (g.gran == KW_WIRE_GRAN_GROUP     ? g.D >> g.group_log2
                                       : g.gran == KW_WIRE_GRAN_CHANNEL ? g.D
                                                                        : 1u);
    const float qmax = g.asym ? kw_wire_codec_qmax_asym(g.codec) : kw_wire_codec_qmax(g.codec);
    for (uint64_t b = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; b < blocks;
         b += (uint64_t)gridDim.x * blockDim.x) {
        uint32_t h0, h1, t0, t1, shift, nu;
        uint64_t base;
        kw_wire_clip_block(g, b, &h0, &h1, &t0, &t1, &shift, &nu, &base);
        int finite = 1, seen;
        float lo, hi;
        for (uint32_t j = 0; j < nu; ++j) {
            const uint64_t u = base + j;
            finite &= amax[u] < 0x7f800000u;
            kw_wire_unit_range(g, amax, mn, mx, fz, u, &cw.lo[u], &cw.hi[u], &seen);
            cw.best[u] = INFINITY;
        }
        if (!finite) continue;
        for (uint32_t k = 0; k < KW_WIRE_CLIP_STEPS; ++k) {
            uint32_t live = 0;
            for (uint32_t j = 0; j < nu; ++j) {
                const uint64_t u = base + j;
                uint32_t sc, zc;
                float l, m, s = 0.0f, z = 0.0f;
                cw.err[u] = 0.0;
                cw.s[u] = -1.0f; /* skipped */
                kw_wire_unit_range(g, amax, mn, mx, fz, u, &lo, &hi, &seen);
                if ((g.asym && !seen) || hi == lo || (k > 0 && cw.best[u] == INFINITY)) continue;
                kw_wire_clip_range(g.asym, k, lo, hi, &l, &m);
                const int rc = g.asym ? kw_wire_asym_choose(l, m, qmax, g.scale_dtype, &sc, &s, &zc, &z)
                                      : kw_wire_scale_choose(m, qmax, g.scale_dtype, &sc, &s);
                if (rc < 0) continue;
                cw.s[u] = s;
                cw.z[u] = z;
                cw.inv[u] = s != 0.0f ? __fdiv_rn(1.0f, s) : 0.0f;
                ++live;
            }
            if (live == 0) break; /* narrower candidates are not tried either */
            for (uint32_t h = h0; h < h1; ++h)
                for (uint32_t t = t0; t < t1; ++t) {
                    const uint64_t r = (uint64_t)h * g.T + t;
                    const size_t row = kw_wire_src_row(src, g, r);
                    for (uint32_t d = 0; d < g.D; ++d) {
                        const uint64_t u = base + (shift >= 31u ? 0u : d >> shift);
                        const float s = cw.s[u];
                        if (s < 0.0f || kw_wire_masked(src, g, r, d)) continue;
                        const float x = kw_wire_load(src.d_data, src.dtype, row + d);
                        float y;
                        if (g.asym)
                            y = kw_wire_dequantize_asym(
                                s != 0.0f ? kw_wire_quantize_asym(x, cw.z[u], cw.inv[u], qmax) : 0u, s, cw.z[u]);
                        else
                            y = s != 0.0f ? __fmul_rn((float)kw_wire_quantize_value(g.codec, x, cw.inv[u]), s) : 0.0f;
                        const double e = __dadd_rn((double)x, -(double)y); /* x - y */
                        cw.err[u] = __dadd_rn(cw.err[u], __dmul_rn(e, e));
                    }
                }
            for (uint32_t j = 0; j < nu; ++j) {
                const uint64_t u = base + j;
                if (cw.s[u] >= 0.0f && cw.err[u] < cw.best[u]) {
                    cw.best[u] = cw.err[u];
                    kw_wire_unit_range(g, amax, mn, mx, fz, u, &lo, &hi, &seen);
                    kw_wire_clip_range(g.asym, k, lo, hi, &cw.lo[u], &cw.hi[u]);
                }
            }
        }
    }
}

/* (2) one thread per unit: the scale (stored little-endian at dst + unit * ss), its value and inverse; or the
 * failure. Passthrough units are rows: only the checks. */
__global__ void __launch_bounds__(KW_WIRE_BLOCK)
    kw_k_wire_scales(kw_wire_geom g, const unsigned int *amax, const unsigned int *mn, const unsigned int *mx,
                     const unsigned long long *fz, const float *clo, const float *chi, float *sv, float *iv, float *zv,
                     uint8_t *dst, unsigned long long *err) {
    for (uint64_t u = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; u < g.units;
         u += (uint64_t)gridDim.x * blockDim.x) {
        const uint32_t m = amax[u];
        const uint64_t blk = kw_wire_err_block(g, u);
        sv[u] = 0.0f; /* a failed unit is packed as zeros: no NaN reaches a float-to-int conversion */
        iv[u] = 0.0f;
        if (g.asym) zv[u] = 0.0f;
        if (m >= 0x7f800000u) {
            atomicMin(err, (unsigned long long)(blk << 1));
            continue;
        }
        if (g.asym) { /* kw__enc_general_scales: s and z, and with s = 0 the code 0 (z = 0, 1/s = 0 as the CPU) */
            uint32_t sc = 0, zc = 0;
            float s = 0.0f, z = 0.0f;
            /* a unit whose every value is an outlier has none: minimum and maximum +0, as the CPU starts them; with
             * clipped scales the range kw_k_wire_clip chose */
            int seen;
            float lo, hi;
            kw_wire_unit_range(g, amax, mn, mx, fz, u, &lo, &hi, &seen);
            if (g.clip) lo = clo[u], hi = chi[u];
            /* a rotated tensor's limit on the range the scale is chosen from (kw__enc_general_scales) */
            if (g.rot_max > 0.0f && (hi > g.rot_max || -lo > g.rot_max)) {
                atomicMin(err, (unsigned long long)(blk << 1 | 1u));
                continue;
            }
            if (kw_wire_asym_choose(lo, hi, kw_wire_codec_qmax_asym(g.codec), g.scale_dtype, &sc, &s, &zc, &z) < 0) {
                atomicMin(err, (unsigned long long)(blk << 1 | 1u));
                continue;
            }
            kw_wire_scale_store(g.scale_dtype, sc, dst + u * g.ss);
            kw_wire_scale_store(g.scale_dtype, zc, dst + g.zeros_off + u * g.ss);
            sv[u] = s;
            zv[u] = s != 0.0f ? z : 0.0f;
            iv[u] = s != 0.0f ? 1.0f / s : 0.0f;
            continue;
        }
        if (g.ss == 0) {
            /* the magnitude from which RNE to the passthrough dtype gives an infinity */
            const uint32_t limit = g.codec == KW_WIRE_CODEC_BF16 ? 0x7f7f8000u : 0x477ff000u;
            if (m >= limit) atomicMin(err, (unsigned long long)(u << 1 | 1u)); /* never rotated (FORMAT.md §5.12) */
            continue;
        }
        uint32_t code = 0;
        float s = 0.0f;
        const float am = g.clip ? chi[u] : kw_f32_from_bits(m); /* clipped: kw_k_wire_clip's absmax */
        if (g.rot_max > 0.0f && am > g.rot_max) { /* a rotated tensor's limit (kw__enc_scale, kw__enc_general_scales) */
            atomicMin(err, (unsigned long long)(blk << 1 | 1u));
            continue;
        }
        if (kw_wire_scale_choose(am, kw_wire_codec_qmax(g.codec), g.scale_dtype, &code, &s) < 0) {
            atomicMin(err, (unsigned long long)(blk << 1 | 1u));
            continue;
        }
        kw_wire_scale_store(g.scale_dtype, code, dst + u * g.ss);
        sv[u] = s;
        iv[u] = s != 0.0f ? 1.0f / s : 0.0f;
    }
}

/* (3) one thread per 8 values: quantize and pack (or convert, for passthrough). */
__global__ void __launch_bounds__(KW_WIRE_BLOCK) kw_k_wire_pack(kw_cuda_wire_src src, kw_wire_geom g, const float *sv,
                                                                const float *iv, const float *zv, uint8_t *dst) {
    const uint64_t chunks = (uint64_t)g.H * g.T * (g.D / 8);
    uint8_t *codes = dst + g.codes_off;
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < chunks;
         i += (uint64_t)gridDim.x * blockDim.x) {
        const uint64_t r = i / (g.D / 8);
        const uint32_t d0 = (uint32_t)(i % (g.D / 8)) * 8;
        const uint32_t h = (uint32_t)(r / g.T);
        const size_t base = kw_wire_src_row(src, g, r) + d0;
        float x[8];
        for (int j = 0; j < 8; ++j)
            x[j] = kw_wire_load(src.d_data, src.dtype, base + j);
        uint8_t *o = codes + (r * g.D + d0) * g.bits / 8;
        if (g.ss == 0) {
            for (int j = 0; j < 8; ++j) {
                const uint16_t c = g.codec == KW_WIRE_CODEC_BF16 ? kw_f32_to_bf16(x[j]) : kw_f32_to_f16(x[j]);
                o[2 * j] = (uint8_t)c;
                o[2 * j + 1] = (uint8_t)(c >> 8);
            }
            continue;
        }
        if (g.general) { /* value by value, as kw__enc_tensor_blocks: fields of 8 * bits whole bytes */
            const float qmax = g.asym ? kw_wire_codec_qmax_asym(g.codec) : 0.0f;
            uint8_t f[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (uint32_t j = 0; j < 8; ++j) {
                const uint64_t u = kw_wire_unit(g, h, r, d0 + j);
                const int value = sv[u] != 0.0f && !kw_wire_masked(src, g, r, d0 + j);
                uint32_t q;
                if (g.asym)
                    q = value ? kw_wire_quantize_asym(x[j], zv[u], iv[u], qmax) : 0u;
                else /* a zero scale or an outlier: the code of +0 */
                    q = (uint32_t)kw_wire_quantize_value(g.codec, value ? x[j] : 0.0f, iv[u]);
                kw_wire_field_put(g.bits, f, j, q & ((1u << g.bits) - 1u));
            }
            for (uint32_t b = 0; b < g.bits; ++b)
                o[b] = f[b];
            continue;
        }
        const uint32_t run = g.gran == KW_WIRE_GRAN_GROUP && g.group_log2 == 2 ? 4 : 8; /* values per scale here */
        for (uint32_t j = 0; j < 8; j += run) {
            const uint64_t u = kw_wire_unit(g, h, r, d0 + j);
            uint8_t *p = o + j * g.bits / 8;
            if (sv[u] == 0.0f)
                kw_wire_zero_row(g.codec, run, p);
            else
                kw_wire_quantize_row(g.codec, x + j, run, iv[u], p);
        }
    }
}

/* Decoding: one thread per 8 values. */
__global__ void __launch_bounds__(KW_WIRE_BLOCK)
    kw_k_wire_unpack(kw_wire_geom g, const uint8_t *bytes, kw_cuda_wire_dst dst, unsigned int *bad) {
    const uint64_t chunks = (uint64_t)g.H * g.T * (g.D / 8);
    const uint8_t *codes = bytes + g.codes_off;
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < chunks;
         i += (uint64_t)gridDim.x * blockDim.x) {
        const uint64_t r = i / (g.D / 8);
        const uint32_t d0 = (uint32_t)(i % (g.D / 8)) * 8;
        const uint32_t h = (uint32_t)(r / g.T), t = (uint32_t)(r % g.T);
        const uint8_t *c = codes + (r * g.D + d0) * g.bits / 8;
        const size_t at = ((size_t)dst.t0 + t) * dst.token_stride + (size_t)h * dst.head_stride + d0;
        float y[8];
        int rc = 0;
        if (g.ss == 0) {
            rc = kw_wire_passthrough_row(g.codec, c, 8, y);
            if (g.codec == KW_WIRE_CODEC_BF16 && dst.dtype == KW__WDT_BF16) { /* the CPU copies the codes */
                for (int j = 0; j < 8; ++j)
                    ((uint16_t *)dst.d_data)[at + j] = (uint16_t)(c[2 * j] | c[2 * j + 1] << 8);
                if (rc < 0) atomicOr(bad, 1u);
                continue;
            }
        } else if (g.general) { /* kw__dec_tensor_blocks / kw__dec_tensor_general, value by value */
            int ok = 1;
            for (uint32_t j = 0; j < 8; ++j) {
                const uint64_t u = kw_wire_unit(g, h, r, d0 + j);
                const float s = kw_wire_scale_load(g.scale_dtype, bytes + u * g.ss);
                if (g.asym)
                    y[j] = kw_wire_dequantize_asym(kw_wire_field_get(g.bits, c, j), s,
                                                   kw_wire_scale_load(g.scale_dtype, bytes + g.zeros_off + u * g.ss));
                else
                    y[j] = kw_wire_code_value(g.codec, kw_wire_unpack_code(g.codec, c, j), &ok) * s;
            }
            rc = ok ? 0 : KW_E_WIRE_VALUE;
        } else {
            const uint32_t run = g.gran == KW_WIRE_GRAN_GROUP && g.group_log2 == 2 ? 4 : 8;
            for (uint32_t j = 0; j < 8; j += run) {
                const float s = kw_wire_scale_load(g.scale_dtype, bytes + kw_wire_unit(g, h, r, d0 + j) * g.ss);
                const int q = kw_wire_dequantize_row(g.codec, c + j * g.bits / 8, run, s, y + j);
                rc = q < 0 ? q : rc;
            }
        }
        if (rc < 0) atomicOr(bad, 1u);
        for (int j = 0; j < 8; ++j) {
            if (dst.dtype == KW__WDT_F32)
                ((float *)dst.d_data)[at + j] = y[j];
            else
                ((uint16_t *)dst.d_data)[at + j] = kw_f32_to_bf16(y[j]);
        }
    }
}

/* ------------------------------------------------------------------------------------------------------------
 * The outlier selection (wire/kw_wire_outliers.c kw__out_scores, FORMAT.md §5.10): each scale unit's count, centre
 * and sum of squared deviations in f64, one thread per unit adding its elements in the CPU's (head, token, channel)
 * order; then one thread per element for its score, with the CPU's expression order; the top-k kernel of
 * kw_cuda_select.cu (larger score, ties to the lower element number) is the CPU's threshold-and-ties rule.
 */

/* Per unit: acc[3u] count, acc[3u + 1] sum (zero points: of the values, else 0), acc[3u + 2] squared deviations
 * from the mean (or from 0). A NaN or Inf sets *bad. */
__global__ void __launch_bounds__(KW_WIRE_BLOCK)
    kw_k_out_units(kw_cuda_wire_src src, kw_wire_geom g, double *acc, unsigned int *bad) {
    for (uint64_t u = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; u < g.units;
         u += (uint64_t)gridDim.x * blockDim.x) {
        uint32_t h0, nh, t0, nt, d0, nd;
        kw_out_unit_box(g, u, &h0, &nh, &t0, &nt, &d0, &nd);
        double cnt = 0.0, sum = 0.0;
        for (uint32_t h = h0; h < h0 + nh; ++h)
            for (uint32_t t = t0; t < t0 + nt; ++t) {
                const size_t base = kw_wire_src_row(src, g, (uint64_t)h * g.T + t);
                for (uint32_t d = d0; d < d0 + nd; ++d) {
                    const float x = kw_wire_load(src.d_data, src.dtype, base + d);
                    if (!(x - x == 0.0f)) atomicOr(bad, 1u);
                    cnt += 1.0;
                    sum += g.asym ? (double)x : 0.0;
                }
            }
        const double c = sum / cnt;
        double ss = 0.0;
        for (uint32_t h = h0; h < h0 + nh; ++h)
            for (uint32_t t = t0; t < t0 + nt; ++t) {
                const size_t base = kw_wire_src_row(src, g, (uint64_t)h * g.T + t);
                for (uint32_t d = d0; d < d0 + nd; ++d) {
                    const double x = kw_wire_load(src.d_data, src.dtype, base + d);
                    ss += (x - c) * (x - c);
                }
            }
        acc[3 * u] = cnt;
        acc[3 * u + 1] = sum;
        acc[3 * u + 2] = ss;
    }
}

/* One thread per element: score[(h * T + t) * D + d] (0 for a passthrough tensor, acc unused then). */
__global__ void __launch_bounds__(KW_WIRE_BLOCK)
    kw_k_out_scores(kw_cuda_wire_src src, kw_wire_geom g, const double *acc, float *score) {
    const uint64_t n_el = (uint64_t)g.H * g.T * g.D;
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n_el;
         i += (uint64_t)gridDim.x * blockDim.x) {
        if (g.ss == 0) {
            score[i] = 0.0f;
            continue;
        }
        const uint64_t r = i / g.D;
        const uint32_t d = (uint32_t)(i % g.D), h = (uint32_t)(r / g.T);
        const double *a = acc + 3 * kw_wire_unit(g, h, r, d);
        if (!(a[0] > 1.0)) { /* a scale of one value */
            score[i] = 0.0f;
            continue;
        }
        const double x = kw_wire_load(src.d_data, src.dtype, kw_wire_src_row(src, g, r) + d);
        const double n = a[0], c = a[1] / a[0], S = a[2];
        double sc;
        if (g.asym) {
            const double dev = x - c;
            const double off = dev * n / (n - 1.0), rest = S - dev * dev * n / (n - 1.0);
            const double msd = rest / (n - 1.0), q = off * off / msd;
            sc = msd > 0.0 ? q : off != 0.0 ? (double)FLT_MAX : 0.0;
        } else {
            const double msd = (S - x * x) / (n - 1.0), q = x * x / msd;
            sc = msd > 0.0 ? q : x != 0.0 ? (double)FLT_MAX : 0.0;
        }
        score[i] = sc < (double)FLT_MAX ? (float)sc : FLT_MAX;
    }
}

/* From the chosen elements (elems, *count of them, ascending): their bits in the mask (32-bit words, zeroed before;
 * bit e of byte e / 8, as the little-endian words hold it) and their values as f32. */
__global__ void __launch_bounds__(KW_WIRE_BLOCK)
    kw_k_out_take(kw_cuda_wire_src k, kw_cuda_wire_src v, kw_wire_geom g, const uint32_t *elems, const uint32_t *count,
                  unsigned int *mask, float *values) {
    const uint64_t half = (uint64_t)g.H * g.T * g.D;
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < *count; i += gridDim.x * blockDim.x) {
        const uint32_t e = elems[i];
        const uint64_t r = e % half;
        const kw_cuda_wire_src &src = e < half ? k : v;
        values[i] = kw_wire_load(src.d_data, src.dtype, kw_wire_src_row(src, g, r / g.D) + r % g.D);
        atomicOr(&mask[e >> 5], 1u << (e & 31));
    }
}

/* The receiver's outlier table (FORMAT.md §5.10) written over decoded K and V: one thread per entry. Element e =
 * kv * H*T*D + (h * T + t) * D + d; the entries are distinct elements (the host parsed the table's strictly
 * increasing numbers), so no two threads write one value. An element past 2*H*T*D is skipped. */
__global__ void __launch_bounds__(KW_WIRE_BLOCK)
    kw_k_wire_out_apply(const uint32_t *elems, const float *values, uint32_t n, uint32_t H, uint32_t T, uint32_t D,
                        kw_cuda_wire_dst k, kw_cuda_wire_dst v) {
    const uint64_t half = (uint64_t)H * T * D;
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const uint64_t e = elems[i];
        if (e >= 2 * half) continue;
        const kw_cuda_wire_dst &o = e < half ? k : v;
        const uint64_t r = e % half;
        const uint32_t d = (uint32_t)(r % D), t = (uint32_t)(r / D % T), h = (uint32_t)(r / D / T);
        const size_t at = ((size_t)o.t0 + t) * o.token_stride + (size_t)h * o.head_stride + d;
        if (o.dtype == KW__WDT_F32)
            ((float *)o.d_data)[at] = values[i];
        else
            ((uint16_t *)o.d_data)[at] = kw_f32_to_bf16(values[i]);
    }
}

/* The butterflies of wire/kw_wire_rotate.c's kw__rotate_butterflies over the D values of xs (shared memory, written
 * by the block before the call), each stage (len = 1, 2, .., D/2) spread over the block with a barrier after it, so
 * every pair sees the same operands in the same order as the CPU's loop. Every thread of the block calls it. */
__device__ void kw_wire_butterflies(float *xs, uint32_t D) {
    for (uint32_t len = 1; len < D; len <<= 1) {
        for (uint32_t j = threadIdx.x; j < D / 2; j += blockDim.x) {
            const uint32_t i = (j / len) * (len << 1) + j % len;
            const float a = xs[i], b = xs[i + len];
            xs[i] = a + b;
            xs[i + len] = a - b;
        }
        __syncthreads();
    }
}

/* The inverse Hadamard rotation (FORMAT.md §5.12) of f32 head rows in place, as wire/kw_wire_rotate.c's
 * kw__wire_rotate_row with inverse 1: one block per (token, head) row, the row in shared memory (D floats), the
 * butterflies (kw_wire_butterflies), then x[d] * (s_d * scale), scale = 2^-ceil(m/2); *bad set where a value is not
 * finite or above the largest bf16. */
#define KW_WIRE_ROT_BLOCK 128
__global__ void __launch_bounds__(KW_WIRE_ROT_BLOCK)
    kw_k_wire_unrotate(kw_cuda_wire_dst x, uint32_t H, uint32_t T, uint32_t D, float scale, unsigned int *bad) {
    KW_DYNAMIC_SHARED(float, xs);
    const uint64_t rows = (uint64_t)H * T;
    for (uint64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const uint32_t t = (uint32_t)(r / H), h = (uint32_t)(r % H);
        float *p = (float *)x.d_data + ((size_t)x.t0 + t) * x.token_stride + (size_t)h * x.head_stride;
        for (uint32_t d = threadIdx.x; d < D; d += blockDim.x)
            xs[d] = p[d];
        __syncthreads();
        kw_wire_butterflies(xs, D);
        for (uint32_t d = threadIdx.x; d < D; d += blockDim.x) {
            const float y = xs[d] * ((float)kw_wire_hadamard_sign(d) * scale);
            p[d] = y;
            if (!(fabsf(y) <= KW_WIRE_BF16_MAX)) *bad = 1u; /* a race of equal writes */
        }
        __syncthreads(); /* the next row's loads overwrite xs */
    }
}

/* The sharer's rotated rows (kw_cuda_wire_rotate_gather): one block per (head, token) row, gathered and widened into
 * shared memory, scaled by the forward factors, then the butterflies as kw_k_wire_unrotate's. */
__global__ void __launch_bounds__(KW_WIRE_ROT_BLOCK)
    kw_k_wire_rotate_gather(kw_cuda_wire_src src, uint32_t H, uint32_t T, uint32_t D, int rotate, float scale,
                            float *out) {
    KW_DYNAMIC_SHARED(float, xs);
    const uint64_t rows = (uint64_t)H * T;
    for (uint64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const uint32_t h = (uint32_t)(r / T), t = (uint32_t)(r % T);
        const size_t row = src.d_rows ? src.d_rows[src.t0 + t] : (size_t)src.t0 + t;
        const size_t base = row * src.token_stride + (size_t)h * src.head_stride;
        for (uint32_t d = threadIdx.x; d < D; d += blockDim.x) {
            const float x = kw_wire_load(src.d_data, src.dtype, base + d);
            xs[d] = rotate ? x * ((float)kw_wire_hadamard_sign(d) * scale) : x;
        }
        __syncthreads();
        if (rotate) kw_wire_butterflies(xs, D); /* rotate is the same in every thread */
        for (uint32_t d = threadIdx.x; d < D; d += blockDim.x)
            out[r * D + d] = xs[d];
        __syncthreads();
    }
}

/* ------------------------------------------------------------------------------------------------------------
 * Host side
 */

/* Validates the spec as the format does (kw__wire_spec_check's rules) and fills g. */
static int kw_wire_geom_make(const kw_cuda_wire_spec *spec, uint32_t H, uint32_t T, uint32_t D, kw_wire_geom *g) {
    KW_RETURN_IF(!spec || H < 1 || T < 1 || D < 8 || D % 8 != 0 || D > 1024, KW_E_INVALID_ARG,
                 "wire on the GPU: bad shape (H %u, T %u, D %u)", H, T, D);
    const uint32_t bits = kw_wire_codec_bits(spec->codec), sdt = spec->scale_dtype & KW_WIRE_SCALE_DTYPE_MASK;
    const uint32_t asym = (spec->scale_dtype & KW_WIRE_SCALE_ZERO_POINTS) ? 1u : 0u;
    KW_RETURN_IF(bits == 0, KW_E_INVALID_ARG, "wire on the GPU: unknown codec %u", spec->codec);
    /* log8 scales (FORMAT.md §5.4): the symmetric integer codecs only, as the format says */
    KW_RETURN_IF(sdt == KW_WIRE_SCALE_LOG8 && (!kw_wire_codec_is_int(spec->codec) || asym), KW_E_INVALID_ARG,
                 "wire on the GPU: log8 scales are for the integer codecs without zero points (codec %u)", spec->codec);
    if (kw_wire_codec_is_passthrough(spec->codec)) {
        KW_RETURN_IF(spec->granularity != KW_WIRE_GRAN_NONE || spec->scale_dtype != KW_WIRE_SCALE_NONE ||
                         spec->group_log2 != 0,
                     KW_E_INVALID_ARG, "wire on the GPU: passthrough codec %u with a scale", spec->codec);
    } else {
        KW_RETURN_IF(spec->granularity < KW_WIRE_GRAN_LAYER || spec->granularity > KW_WIRE_GRAN_CHANNEL ||
                         kw_wire_scale_size(sdt) == 0 || (spec->scale_dtype & KW_WIRE_SCALE_RESERVED_BITS),
                     KW_E_INVALID_ARG, "wire on the GPU: codec %u needs a granularity and a scale dtype", spec->codec);
        KW_RETURN_IF(asym && (!kw_wire_codec_is_int(spec->codec) || sdt == KW_WIRE_SCALE_E8M0), KW_E_INVALID_ARG,
                     "wire on the GPU: zero points need an integer codec and an f16, bf16 or f32 scale (codec %u)",
                     spec->codec);
        if (spec->granularity == KW_WIRE_GRAN_CHANNEL)
            KW_RETURN_IF(spec->group_log2 > KW_WIRE_MAX_RUN_LOG2, KW_E_INVALID_ARG,
                         "wire on the GPU: channel run 2^%u is longer than 2^%u tokens", spec->group_log2,
                         KW_WIRE_MAX_RUN_LOG2);
        else if (spec->granularity == KW_WIRE_GRAN_GROUP)
            KW_RETURN_IF(spec->group_log2 < 2 || spec->group_log2 > 10 || D % (1u << spec->group_log2) != 0,
                         KW_E_INVALID_ARG, "wire on the GPU: channel group 2^%u does not divide head_dim %u",
                         spec->group_log2, D);
        else
            KW_RETURN_IF(spec->group_log2 != 0, KW_E_INVALID_ARG, "wire on the GPU: group_log2 without groups");
    }
    g->codec = spec->codec;
    g->gran = spec->granularity;
    g->scale_dtype = sdt;
    g->asym = asym;
    /* kw__wire_general_path: zero points, channel scales, channel groups of a fractional byte (int3 in 4s) */
    g->general = asym || spec->granularity == KW_WIRE_GRAN_CHANNEL ||
                 (spec->granularity == KW_WIRE_GRAN_GROUP && ((bits << spec->group_log2) & 7u));
    g->clip = spec->clip && kw_wire_codec_is_int(spec->codec) ? 1u : 0u; /* §5.13: the integer codecs */
    g->general |= g->clip;                                               /* as kw__enc_tensor */
    g->rot_max = spec->rotated ? kw_wire_rotated_max(D) : 0.0f;
    g->group_log2 = spec->group_log2;
    g->H = H;
    g->T = T;
    g->D = D;
    g->bits = bits;
    g->ss = kw_wire_scale_size(sdt);
    const uint64_t scales = kw_wire_scale_units(spec->granularity, spec->group_log2, H, T, D);
    g->units = g->ss ? scales : (uint64_t)H * T;
    g->zeros_off = scales * g->ss;
    g->codes_off = scales * g->ss * (asym ? 2u : 1u);
    return 0;
}

static uint64_t kw_wire_round256(uint64_t n) {
    return (n + 255) & ~(uint64_t)255;
}

/* Where the clipped-scale search's scratch starts in the encoder's work (after the statistics and scales). */
static uint64_t kw_wire_clip_off(const kw_wire_geom &g) {
    return (g.asym ? 6 : 3) * kw_wire_round256(g.units * 4) + (g.asym ? kw_wire_round256(g.units * 8) : 0);
}

extern "C" uint64_t kw_cuda_wire_tensor_bytes(const kw_cuda_wire_spec *spec, uint32_t H, uint32_t T, uint32_t D) {
    kw_wire_geom g;
    if (kw_wire_geom_make(spec, H, T, D, &g) < 0) return 0;
    return g.codes_off + (uint64_t)H * T * D * g.bits / 8;
}

extern "C" uint64_t kw_cuda_wire_work_bytes(const kw_cuda_wire_spec *spec, uint32_t H, uint32_t T, uint32_t D) {
    kw_wire_geom g;
    if (kw_wire_geom_make(spec, H, T, D, &g) < 0) return 0;
    /* absmax, scale, 1/s; with zero points also the minimum and maximum keys, z and the first zeros; clipped: the
     * search's two sums and five floats (kw_wire_clip_work) */
    return kw_wire_clip_off(g) + (g.clip ? 2 * kw_wire_round256(g.units * 8) + 5 * kw_wire_round256(g.units * 4) : 0);
}

extern "C" int kw_cuda_wire_encode_tensor(void *stream, const kw_cuda_wire_spec *spec, const kw_cuda_wire_src *src,
                                          uint32_t H, uint32_t T, uint32_t D, uint8_t *d_dst, void *d_work,
                                          unsigned long long *d_err) {
    kw_wire_geom g;
    KW_FORWARD(kw_wire_geom_make(spec, H, T, D, &g));
    KW_RETURN_IF(!src || !src->d_data || !d_dst || !d_work || !d_err, KW_E_INVALID_ARG,
                 "wire encode on the GPU: null argument");
    KW_RETURN_IF(src->dtype < KW__WDT_BF16 || src->dtype > KW__WDT_F32, KW_E_INVALID_ARG,
                 "wire encode on the GPU: unknown input dtype %u", src->dtype);
    /* outliers: the CPU encoder's general path for every quantizing tensor of the section */
    if (src->d_mask && g.ss != 0) g.general = 1;
    const cudaStream_t st = (cudaStream_t)stream;
    const uint64_t slot = kw_wire_round256(g.units * 4);
    uint8_t *w = (uint8_t *)d_work;
    unsigned int *amax = (unsigned int *)w;
    float *sv = (float *)(w + slot), *iv = (float *)(w + 2 * slot);
    /* with zero points only (kw_cuda_wire_work_bytes); NULL and never read without */
    unsigned int *mn = g.asym ? (unsigned int *)(w + 3 * slot) : nullptr;
    unsigned int *mx = g.asym ? (unsigned int *)(w + 4 * slot) : nullptr;
    float *zv = g.asym ? (float *)(w + 5 * slot) : nullptr;
    unsigned long long *fz = g.asym ? (unsigned long long *)(w + 6 * slot) : nullptr;
    KW_CUDA_TRY(cudaMemsetAsync(amax, 0, g.units * 4, st));
    KW_CUDA_TRY(cudaMemsetAsync(d_err, 0xff, sizeof *d_err, st));
    const uint64_t rows = (uint64_t)H * T;
    kw_wire_clip_work cw = {nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
    if (g.general) {
        if (g.asym) {
            KW_CUDA_TRY(cudaMemsetAsync(mn, 0xff, g.units * 4, st));
            KW_CUDA_TRY(cudaMemsetAsync(mx, 0, g.units * 4, st));
            KW_CUDA_TRY(cudaMemsetAsync(fz, 0xff, g.units * 8, st));
        }
        KW_CUDA_LAUNCH(kw_k_wire_stats, kw_opm_grid_blocks((int64_t)(rows * (D / 8)), KW_WIRE_BLOCK), KW_WIRE_BLOCK, 0,
                       st, *src, g, amax, mn, mx, fz);
        if (g.clip) {
            KW_CUDA_LAUNCHED();
            uint8_t *c = w + kw_wire_clip_off(g);
            const uint64_t u8 = kw_wire_round256(g.units * 8), u4 = kw_wire_round256(g.units * 4);
            cw.err = (double *)c;
            cw.best = (double *)(c + u8);
            cw.s = (float *)(c + 2 * u8);
            cw.z = (float *)(c + 2 * u8 + u4);
            cw.inv = (float *)(c + 2 * u8 + 2 * u4);
            cw.lo = (float *)(c + 2 * u8 + 3 * u4);
            cw.hi = (float *)(c + 2 * u8 + 4 * u4);
            /* the CPU searches (h, b0) blocks: as many threads */
            KW_CUDA_LAUNCH(kw_k_wire_clip, kw_opm_grid_blocks((int64_t)g.units, KW_WIRE_BLOCK), KW_WIRE_BLOCK, 0, st,
                           *src, g, (const unsigned int *)amax, (const unsigned int *)mn, (const unsigned int *)mx,
                           (const unsigned long long *)fz, cw);
        }
    } else {
        KW_CUDA_LAUNCH(kw_k_wire_amax, kw_opm_grid_blocks((int64_t)rows, KW_WIRE_BLOCK / 32), KW_WIRE_BLOCK, 0, st,
                       *src, g, amax);
    }
    KW_CUDA_LAUNCHED();
    KW_CUDA_LAUNCH(kw_k_wire_scales, kw_opm_grid_blocks((int64_t)g.units, KW_WIRE_BLOCK), KW_WIRE_BLOCK, 0, st, g,
                   (const unsigned int *)amax, (const unsigned int *)mn, (const unsigned int *)mx,
                   (const unsigned long long *)fz, (const float *)cw.lo, (const float *)cw.hi, sv, iv, zv, d_dst,
                   d_err);
    KW_CUDA_LAUNCHED();
    KW_CUDA_LAUNCH(kw_k_wire_pack, kw_opm_grid_blocks((int64_t)(rows * (D / 8)), KW_WIRE_BLOCK), KW_WIRE_BLOCK, 0, st,
                   *src, g, (const float *)sv, (const float *)iv, (const float *)zv, d_dst);
    KW_CUDA_LAUNCHED();
    return 0;
}

extern "C" int kw_cuda_wire_encode_status(unsigned long long err) {
    if (err == ~0ull) return 0;
    KW_RETURN_IF((err & 1u) == 0, KW_E_WIRE_NONFINITE, "wire encode on the GPU: scale unit %llu holds NaN or Inf",
                 err >> 1);
    KW_FAIL(KW_E_WIRE_RANGE,
            "wire encode on the GPU: scale unit %llu has a value or scale the codec cannot represent (rotated rows: "
            "or a value past kw_wire_rotated_max, FORMAT.md §5.12)",
            err >> 1);
}

extern "C" int kw_cuda_wire_decode_tensor(void *stream, const kw_cuda_wire_spec *spec, const uint8_t *d_src, uint32_t H,
                                          uint32_t T, uint32_t D, const kw_cuda_wire_dst *dst, unsigned int *d_bad) {
    kw_wire_geom g;
    KW_FORWARD(kw_wire_geom_make(spec, H, T, D, &g));
    KW_RETURN_IF(!d_src || !dst || !dst->d_data || !d_bad, KW_E_INVALID_ARG, "wire decode on the GPU: null argument");
    KW_RETURN_IF(dst->dtype != KW__WDT_F32 && dst->dtype != KW__WDT_BF16, KW_E_INVALID_ARG,
                 "wire decode on the GPU: output dtype %u is not f32 or bf16", dst->dtype);
    const uint64_t chunks = (uint64_t)H * T * (D / 8);
    KW_CUDA_LAUNCH(kw_k_wire_unpack, kw_opm_grid_blocks((int64_t)chunks, KW_WIRE_BLOCK), KW_WIRE_BLOCK, 0,
                   (cudaStream_t)stream, g, d_src, *dst, d_bad);
    KW_CUDA_LAUNCHED();
    return 0;
}

extern "C" int kw_cuda_wire_outliers_apply(void *stream, const uint32_t *d_elems, const float *d_values, uint32_t n,
                                           uint32_t H, uint32_t T, uint32_t D, const kw_cuda_wire_dst *k,
                                           const kw_cuda_wire_dst *v) {
    KW_RETURN_IF(!k || !v || !k->d_data || !v->d_data || (n > 0 && (!d_elems || !d_values)), KW_E_INVALID_ARG,
                 "wire outliers on the GPU: null argument");
    KW_RETURN_IF(H < 1 || T < 1 || D < 1, KW_E_INVALID_ARG, "wire outliers on the GPU: bad shape (H %u, T %u, D %u)", H,
                 T, D);
    for (const kw_cuda_wire_dst *o = k; o; o = o == k ? v : nullptr)
        KW_RETURN_IF(o->dtype != KW__WDT_F32 && o->dtype != KW__WDT_BF16, KW_E_INVALID_ARG,
                     "wire outliers on the GPU: output dtype %u is not f32 or bf16", o->dtype);
    if (n == 0) return 0;
    KW_CUDA_LAUNCH(kw_k_wire_out_apply, kw_opm_grid_blocks((int64_t)n, KW_WIRE_BLOCK), KW_WIRE_BLOCK, 0,
                   (cudaStream_t)stream, d_elems, d_values, n, H, T, D, *k, *v);
    KW_CUDA_LAUNCHED();
    return 0;
}

extern "C" int kw_cuda_wire_unrotate(void *stream, uint32_t H, uint32_t T, uint32_t D, const kw_cuda_wire_dst *x,
                                     unsigned int *d_bad) {
    KW_RETURN_IF(!x || !x->d_data || x->dtype != KW__WDT_F32 || !d_bad, KW_E_INVALID_ARG,
                 "wire rotation on the GPU: an f32 output and a flag are needed");
    KW_RETURN_IF(H < 1 || T < 1 || D < 2 || D > 1024 || (D & (D - 1)) != 0, KW_E_INVALID_ARG,
                 "wire rotation on the GPU: bad shape (H %u, T %u, D %u; D a power of two in 2..1024)", H, T, D);
    int m = 0;
    while ((1u << m) < D)
        ++m;
    /* the decoder's factor 2^-ceil(m/2) (kw__wire_rotate_factors with inverse 1): exact */
    const float scale = 1.0f / (float)(1u << (m - m / 2));
    KW_CUDA_LAUNCH(kw_k_wire_unrotate, kw_opm_grid_blocks((int64_t)H * T, 1), KW_WIRE_ROT_BLOCK, D * sizeof(float),
                   (cudaStream_t)stream, *x, H, T, D, scale, d_bad);
    KW_CUDA_LAUNCHED();
    return 0;
}

extern "C" int kw_cuda_wire_rotate_gather(void *stream, const kw_cuda_wire_src *src, uint32_t H, uint32_t T, uint32_t D,
                                          int rotate, float *d_out) {
    KW_RETURN_IF(!src || !src->d_data || !d_out, KW_E_INVALID_ARG, "wire rotation on the GPU: null argument");
    KW_RETURN_IF(src->dtype < KW__WDT_BF16 || src->dtype > KW__WDT_F32, KW_E_INVALID_ARG,
                 "wire rotation on the GPU: unknown input dtype %u", src->dtype);
    KW_RETURN_IF(H < 1 || T < 1 || D < 1 || D > 1024 || (rotate && (D < 2 || (D & (D - 1)) != 0)), KW_E_INVALID_ARG,
                 "wire rotation on the GPU: bad shape (H %u, T %u, D %u; D a power of two in 2..1024)", H, T, D);
    int m = 0;
    while ((1u << m) < D)
        ++m;
    /* the encoder's factor 2^-floor(m/2) (kw__wire_rotate_factors with inverse 0): exact */
    const float scale = 1.0f / (float)(1u << (m / 2));
    KW_CUDA_LAUNCH(kw_k_wire_rotate_gather, kw_opm_grid_blocks((int64_t)H * T, 1), KW_WIRE_ROT_BLOCK, D * sizeof(float),
                   (cudaStream_t)stream, *src, H, T, D, rotate, scale, d_out);
    KW_CUDA_LAUNCHED();
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * kw_backend.h's sharer ops (validated) on the backend's stream
 */

static kw_cuda_wire_spec kw_cuda_spec_of(const kw_wire_op_spec *s) {
    const kw_cuda_wire_spec c = {s->codec, s->granularity, s->scale_dtype, s->group_log2, 0, s->rotated};
    return c;
}

int kw__cuda_wire_sizes(const kw_wire_op_spec *spec, int clip, uint32_t H, uint32_t T, uint32_t D,
                        uint64_t *tensor_bytes, uint64_t *work_bytes) {
    kw_cuda_wire_spec s = kw_cuda_spec_of(spec);
    s.clip = clip ? 1 : 0;
    kw_wire_geom g;
    KW_FORWARD(kw_wire_geom_make(&s, H, T, D, &g));
    *tensor_bytes = kw_cuda_wire_tensor_bytes(&s, H, T, D);
    *work_bytes = kw_cuda_wire_work_bytes(&s, H, T, D);
    return 0;
}

/* The source of one tensor of the cache (H, cap, D): rows through the cache positions of rows, from token t0. */
static kw_cuda_wire_src kw_cuda_cache_src(const kw_tensor *cache, const kw_tensor *rows, uint32_t t0) {
    kw_cuda_wire_src src;
    const size_t D = (size_t)cache->ne[2];
    src.d_data = cache->data;
    src.dtype = cache->dtype == KW_DTYPE_BF16 ? KW__WDT_BF16 : KW__WDT_F32;
    src.head_stride = (size_t)cache->ne[1] * D;
    src.token_stride = D;
    src.d_rows = (const uint32_t *)rows->data; /* cache positions: >= 0 */
    src.t0 = t0;
    src.d_mask = nullptr;
    src.mask_base = 0;
    src.mask_tokens = 0;
    return src;
}

int kw__cuda_wire_encode(kw_backend *backend, kw_tensor *dst, size_t offset, const kw_wire_op_spec *spec, int clip,
                         const kw_tensor *cache, const kw_tensor *rows, uint32_t t0, uint32_t T, kw_tensor *work,
                         kw_tensor *err, int64_t err_index, const kw_tensor *mask, uint64_t mask_base) {
    KW_CUDA_ENTER(cu, backend);
    kw_cuda_wire_spec s = kw_cuda_spec_of(spec);
    s.clip = clip ? 1 : 0;
    kw_cuda_wire_src src = kw_cuda_cache_src(cache, rows, t0);
    if (mask) {
        src.d_mask = (const uint8_t *)mask->data;
        src.mask_base = mask_base;
        src.mask_tokens = t0 + T;
    }
    return kw_cuda_wire_encode_tensor(cu->stream, &s, &src, (uint32_t)cache->ne[0], T, (uint32_t)cache->ne[2],
                                      (uint8_t *)dst->data + offset, work->data,
                                      (unsigned long long *)err->data + err_index);
}

int kw__cuda_wire_rotate_rows(kw_backend *backend, kw_tensor *out, const kw_tensor *cache, const kw_tensor *rows,
                              uint32_t T, int rotate) {
    KW_CUDA_ENTER(cu, backend);
    const kw_cuda_wire_src src = kw_cuda_cache_src(cache, rows, 0);
    return kw_cuda_wire_rotate_gather(cu->stream, &src, (uint32_t)cache->ne[0], T, (uint32_t)cache->ne[2], rotate,
                                      (float *)out->data);
}

int kw__cuda_wire_outlier_work(const kw_wire_op_spec *sk, const kw_wire_op_spec *sv, uint32_t H, uint32_t T, uint32_t D,
                               uint64_t *work_bytes) {
    const kw_cuda_wire_spec k = kw_cuda_spec_of(sk), v = kw_cuda_spec_of(sv);
    kw_wire_geom g;
    KW_FORWARD(kw_wire_geom_make(&k, H, T, D, &g));
    KW_FORWARD(kw_wire_geom_make(&v, H, T, D, &g));
    KW_RETURN_IF(2ull * H * T * D > (uint64_t)KW_CUDA_SELECT_MAX_TOKENS, KW_E_LIMIT,
                 "outliers on the GPU: %llu elements (element numbers are 32-bit here)",
                 (unsigned long long)(2ull * H * T * D));
    *work_bytes = kw_cuda_wire_outlier_work_bytes(&k, &v, H, T, D);
    return 0;
}

int kw__cuda_wire_outliers(kw_backend *backend, const kw_wire_op_spec *sk, const kw_wire_op_spec *sv,
                           const kw_tensor *cache_k, const kw_tensor *cache_v, const kw_tensor *rows, uint32_t T,
                           uint32_t count, kw_tensor *work, kw_tensor *elems, kw_tensor *n, kw_tensor *values,
                           kw_tensor *mask, kw_tensor *bad) {
    KW_CUDA_ENTER(cu, backend);
    const kw_cuda_wire_spec k = kw_cuda_spec_of(sk), v = kw_cuda_spec_of(sv);
    const kw_cuda_wire_src srck = kw_cuda_cache_src(cache_k, rows, 0), srcv = kw_cuda_cache_src(cache_v, rows, 0);
    const uint32_t H = (uint32_t)cache_k->ne[0], D = (uint32_t)cache_k->ne[2];
    KW_FORWARD(kw_cuda_wire_outlier_select(cu->stream, &k, &v, &srck, &srcv, H, T, D, count, work->data,
                                           (uint32_t *)elems->data, (uint32_t *)n->data, (unsigned int *)bad->data));
    return kw_cuda_wire_outlier_take(cu->stream, &srck, &srcv, H, T, D, (const uint32_t *)elems->data, count,
                                     (const uint32_t *)n->data, (unsigned int *)mask->data, (float *)values->data);
}

int kw__cuda_wire_status(unsigned long long err) {
    return kw_cuda_wire_encode_status(err);
}

/* The rows of x (n, H, D) f32 from row t0, as a decoder output. */
static kw_cuda_wire_dst kw_cuda_rows_dst(kw_tensor *x, uint32_t t0) {
    kw_cuda_wire_dst d;
    d.d_data = x->data;
    d.dtype = KW__WDT_F32;
    d.head_stride = (size_t)x->ne[2];
    d.token_stride = (size_t)x->ne[1] * (size_t)x->ne[2];
    d.t0 = t0;
    return d;
}

int kw__cuda_wire_decode(kw_backend *backend, kw_tensor *out, uint32_t t0, uint32_t T, const kw_wire_op_spec *spec,
                         const kw_tensor *src, size_t offset, kw_tensor *bad) {
    KW_CUDA_ENTER(cu, backend);
    const kw_cuda_wire_spec s = kw_cuda_spec_of(spec);
    const kw_cuda_wire_dst dst = kw_cuda_rows_dst(out, t0);
    return kw_cuda_wire_decode_tensor(cu->stream, &s, (const uint8_t *)src->data + offset, (uint32_t)out->ne[1], T,
                                      (uint32_t)out->ne[2], &dst, (unsigned int *)bad->data);
}

int kw__cuda_wire_outliers_apply(kw_backend *backend, kw_tensor *k, kw_tensor *v, const kw_tensor *elems,
                                 const kw_tensor *values, uint32_t n) {
    KW_CUDA_ENTER(cu, backend);
    const kw_cuda_wire_dst dk = kw_cuda_rows_dst(k, 0), dv = kw_cuda_rows_dst(v, 0);
    return kw_cuda_wire_outliers_apply(cu->stream, (const uint32_t *)elems->data, (const float *)values->data, n,
                                       (uint32_t)k->ne[1], (uint32_t)k->ne[0], (uint32_t)k->ne[2], &dk, &dv);
}

int kw__cuda_wire_unrotate(kw_backend *backend, kw_tensor *x, kw_tensor *bad) {
    KW_CUDA_ENTER(cu, backend);
    const kw_cuda_wire_dst dx = kw_cuda_rows_dst(x, 0);
    return kw_cuda_wire_unrotate(cu->stream, (uint32_t)x->ne[1], (uint32_t)x->ne[0], (uint32_t)x->ne[2], &dx,
                                 (unsigned int *)bad->data);
}

/* ------------------------------------------------------------------------------------------------------------
 * The outlier selection, host side
 */

extern "C" uint64_t kw_cuda_wire_outlier_work_bytes(const kw_cuda_wire_spec *spec_k, const kw_cuda_wire_spec *spec_v,
                                                    uint32_t H, uint32_t T, uint32_t D) {
    kw_wire_geom gk, gv;
    if (kw_wire_geom_make(spec_k, H, T, D, &gk) < 0 || kw_wire_geom_make(spec_v, H, T, D, &gv) < 0) return 0;
    const uint64_t units = gk.units > gv.units ? gk.units : gv.units;
    return kw_wire_round256(2ull * H * T * D * 4) + kw_wire_round256(units * 24) + 256;
}

extern "C" int kw_cuda_wire_outlier_select(void *stream, const kw_cuda_wire_spec *spec_k,
                                           const kw_cuda_wire_spec *spec_v, const kw_cuda_wire_src *src_k,
                                           const kw_cuda_wire_src *src_v, uint32_t H, uint32_t T, uint32_t D,
                                           uint32_t count, void *d_work, uint32_t *d_out, uint32_t *d_count,
                                           unsigned int *d_bad) {
    kw_wire_geom g[2];
    KW_FORWARD(kw_wire_geom_make(spec_k, H, T, D, &g[0]));
    KW_FORWARD(kw_wire_geom_make(spec_v, H, T, D, &g[1]));
    KW_RETURN_IF(!src_k || !src_v || !src_k->d_data || !src_v->d_data || !d_work || !d_out || !d_count || !d_bad,
                 KW_E_INVALID_ARG, "outlier selection on the GPU: null argument");
    const uint64_t half = (uint64_t)H * T * D, elems = 2 * half;
    KW_RETURN_IF(elems > (uint64_t)KW_CUDA_SELECT_MAX_TOKENS, KW_E_LIMIT,
                 "outlier selection on the GPU: %llu elements (element numbers are 32-bit here)",
                 (unsigned long long)elems);
    const cudaStream_t st = (cudaStream_t)stream;
    float *score = (float *)d_work;
    double *acc = (double *)((uint8_t *)d_work + kw_wire_round256(elems * 4));
    KW_CUDA_TRY(cudaMemsetAsync(d_bad, 0, sizeof *d_bad, st));
    const kw_cuda_wire_src *srcs[2] = {src_k, src_v};
    for (int kv = 0; kv < 2; ++kv) {
        if (g[kv].ss != 0) {
            KW_CUDA_LAUNCH(kw_k_out_units, kw_opm_grid_blocks((int64_t)g[kv].units, KW_WIRE_BLOCK), KW_WIRE_BLOCK, 0,
                           st, *srcs[kv], g[kv], acc, d_bad);
            KW_CUDA_LAUNCHED();
        }
        KW_CUDA_LAUNCH(kw_k_out_scores, kw_opm_grid_blocks((int64_t)half, KW_WIRE_BLOCK), KW_WIRE_BLOCK, 0, st,
                       *srcs[kv], g[kv], (const double *)acc, score + kv * half);
        KW_CUDA_LAUNCHED();
    }
    return kw_cuda_select_topk(stream, score, (int64_t)elems, count, d_out, d_count);
}

extern "C" int kw_cuda_wire_outlier_take(void *stream, const kw_cuda_wire_src *src_k, const kw_cuda_wire_src *src_v,
                                         uint32_t H, uint32_t T, uint32_t D, const uint32_t *d_elems, uint32_t max_n,
                                         const uint32_t *d_count, unsigned int *d_mask, float *d_values) {
    KW_RETURN_IF(!src_k || !src_v || !d_elems || !d_count || !d_mask || !d_values || H < 1 || T < 1 || D < 1,
                 KW_E_INVALID_ARG, "outlier values on the GPU: bad arguments");
    kw_wire_geom g = {};
    g.H = H, g.T = T, g.D = D;
    const cudaStream_t st = (cudaStream_t)stream;
    KW_CUDA_TRY(cudaMemsetAsync(d_mask, 0, (2ull * H * T * D + 31) / 32 * 4, st));
    if (max_n == 0) return 0;
    KW_CUDA_LAUNCH(kw_k_out_take, kw_opm_grid_blocks((int64_t)max_n, KW_WIRE_BLOCK), KW_WIRE_BLOCK, 0, st, *src_k,
                   *src_v, g, d_elems, d_count, d_mask, d_values);
    KW_CUDA_LAUNCHED();
    return 0;
}
