/* kw_cpu_matmul_x8.c: matmul with int8 activations, the way llama.cpp runs its k-quants: integer dot products per
 * group and a short float epilogue, instead of one f32 weight rebuilt and fused per (row, k). Two weight layouts:
 * KW_LAYOUT_QPANELS_U4_X8 (4-bit codes, f32 scale and offset per 32 k: ggml Q4_K and Q4_1) and
 * KW_LAYOUT_QPANELS_S8_G16_X8 (8-bit codes, f32 scale per 16 k: Q6_K).
 *
 * The numerics contract (the same bits on every ISA, for any batch, chunking and thread count):
 *  1. Each row of x is quantized per group of 32 k by kw__cpu_x8_quantize, scalar C on every ISA: amax = the largest
 *     |x|; d = amax / 127, q = lrintf(x * (127 / amax)) clamped to [-127, 127], and xs = d * (float)(sum of q).
 *     A group with amax below 1e-30 (or zero) has d = xs = 0 and q = 0; a group with a NaN or infinite x has
 *     d = xs = NaN (so its outputs are NaN, as the f32 chain would make them).
 *  2. isum(n, j) = sum over the k of weight group j (32 k for U4, 16 for S8_G16) of code(n, k) * q(k), an exact
 *     int32 (|isum| <= 32 * 128 * 127).
 *  3. y[m][n] = the chain over the weight groups j = 0, 1, ... from +0 of
 *         acc = fma(scale(n, j), fl((float)isum * d(j's activation group)), acc)
 *     and for U4 (j = g) then acc = fma(offset(n, g), xs(g), acc); bias added once by the caller, as for every other
 *     layout.
 * Integer sums are exact whatever the instructions (AVX-512 VNNI vpdpbusd; AVX2 vpmaddubsw + vpmaddwd, which cannot
 * saturate: 2 * 15 * 127 and, with the 8-bit codes' signs moved onto q, 2 * 128 * 127 < 32767; or scalar), and the
 * epilogue is the same IEEE operations in the same order, so the ISAs agree bit for bit with kw_ref_quant_matmul_x8
 * (kernels/ref). The result is the f32-weight matmul's up to the activation rounding: |y - y_f32| <= sum_g d(g) / 2 *
 * sum_k |w(n, k)| plus f32 roundings.
 *
 * Weight groups (kernels/kw_backend.h): 64 f32 scales, (U4) 64 f32 offsets, then 1024 code bytes, strip s of 16 rows
 * at 256 s as four 64-byte vectors t whose byte 4 i + b holds row 16 s + i, k = 4 t + b (U4: low nibble, and k = 16
 * + 4 t + b the high nibble; S8_G16: the code + 128 as an unsigned byte, which vpdpbusd multiplies directly and
 * 128 * (sum of q over the 16 k) takes back). A 32-bit lane of a vector is one row's 4 consecutive k.
 */
#include "kernels/cpu/kw_cpu.h"

#include <math.h>
#include <omp.h>
#include <string.h>

#if KW_CPU_X86
#include <immintrin.h>
#endif

#define KW_X8_G          32                   /* k per group */
#define KW_X8_CODE_BYTES (KW_PANEL_ROWS * 16) /* 64 rows x 32 nibbles */
#define KW_X8_GROUP      (KW_PANEL_ROWS * 8 + KW_X8_CODE_BYTES)
#define KW_X8_PF         4 /* groups prefetched ahead by a decode row (as kw_cpu_matmul.c, KW_QMM_PF) */
#define KW_X8_MAX_MR     4
/* Up to this many rows, each row streams the panel on its own (as KW_MM_ROW_MAX). */
#define KW_X8_ROW_MAX 4

void kw__cpu_x8_quantize(const float *x, int64_t M, int64_t K, int nt, int8_t *xq, float *xd, float *xs,
                         int32_t *xs16) {
    const int64_t G = K / KW_X8_G;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t m = 0; m < M; ++m) {
        for (int64_t g = 0; g < G; ++g) {
            const float *v = x + m * K + g * KW_X8_G;
            int8_t *q = xq + m * K + g * KW_X8_G;
            float amax = 0.0f;
            int finite = 1;
            for (int k = 0; k < KW_X8_G; ++k) {
                const float a = fabsf(v[k]);
                finite &= isfinite(a) != 0;
                amax = a > amax ? a : amax;
            }
            xs16[m * 2 * G + 2 * g] = xs16[m * 2 * G + 2 * g + 1] = 0;
            if (!finite || amax < 1e-30f) {
                memset(q, 0, KW_X8_G);
                xd[m * G + g] = xs[m * G + g] = finite ? 0.0f : NAN;
                continue;
            }
            const float inv = 127.0f / amax, d = amax / 127.0f;
            int sum = 0;
            for (int k = 0; k < KW_X8_G; ++k) {
                long r = lrintf(v[k] * inv);
                r = r > 127 ? 127 : r < -127 ? -127 : r;
                q[k] = (int8_t)r;
                sum += (int)r;
                xs16[m * 2 * G + 2 * g + k / 16] += (int32_t)r;
            }
            xd[m * G + g] = d;
            xs[m * G + g] = d * (float)sum;
        }
    }
}

/* The byte of row r (0..63) at k kk of a group's codes. */
static inline size_t kw_x8_byte(int64_t r, int64_t kk) {
    return (size_t)((r / 16) * 256 + ((kk % 16) / 4) * 64 + 4 * (r % 16) + kk % 4);
}

/* The code of row r at k kk: 4-bit (U4_X8) or 8-bit stored + 128 (S8_G16_X8). */
static inline int kw_x8_code(int bits, const uint8_t *codes, int64_t r, int64_t kk) {
    const uint8_t byte = codes[kw_x8_byte(r, kk)];
    if (bits == 8) return (int)byte - 128;
    return kk < 16 ? byte & 0x0F : byte >> 4;
}

void kw__cpu_x8_pack_code(enum kw_layout layout, uint8_t *codes, int64_t r, int64_t kk, int code) {
    uint8_t *byte = codes + kw_x8_byte(r, kk);
    if (layout == KW_LAYOUT_QPANELS_S8_G16_X8)
        *byte = (uint8_t)(code + 128);
    else
        *byte |= (uint8_t)(kk < 16 ? code : code << 4);
}

int kw__cpu_x8_get_code(enum kw_layout layout, const uint8_t *codes, int64_t r, int64_t kk) {
    return kw_x8_code(layout == KW_LAYOUT_QPANELS_S8_G16_X8 ? 8 : 4, codes, r, kk);
}

/* ------------------------------------------------------------------------------------------------------------
 * Scalar
 */

static void kw_x8_panel_scalar(const int BITS, float *y, int64_t N, const kw_x8_act *a, int64_t K, const char *wp,
                               int64_t n0, int64_t ncols, int64_t m0, int64_t m1) {
    const int64_t G = K / KW_X8_G, WG = BITS == 4 ? 32 : 16, OFS = BITS == 4;
    const size_t group_bytes = (size_t)KW_PANEL_ROWS * 4 * (size_t)(1 + OFS) + KW_X8_CODE_BYTES;
    for (int64_t m = m0; m < m1; ++m) {
        for (int64_t c = 0; c < ncols; ++c) {
            float acc = 0.0f;
            for (int64_t j = 0; j < K / WG; ++j) {
                const char *gp = wp + (size_t)j * group_bytes;
                const float *scales = (const float *)gp, *offsets = scales + KW_PANEL_ROWS;
                const uint8_t *codes = (const uint8_t *)gp + KW_PANEL_ROWS * 4 * (1 + OFS);
                const int8_t *q = a->q + m * K + j * WG;
                const int64_t g = j * WG / KW_X8_G;
                int32_t isum = 0;
                for (int kk = 0; kk < WG; ++kk)
                    isum += kw_x8_code(BITS, codes, c, kk) * q[kk];
                const float t = (float)isum * a->d[m * G + g];
                acc = fmaf(scales[c], t, acc);
                if (OFS) acc = fmaf(offsets[c], a->s[m * G + g], acc);
            }
            y[m * N + n0 + c] = acc;
        }
    }
}

#if KW_CPU_X86
/* The activation broadcast for 4 k of row m at k0 (a 32-bit lane of 4 int8). */
static inline int32_t kw_x8_q4(const kw_x8_act *a, int64_t K, int m, int64_t k0) {
    int32_t v;
    memcpy(&v, a->q + m * K + k0, 4);
    return v;
}

/* ------------------------------------------------------------------------------------------------------------
 * AVX2: vectors of 8 rows (half a 16-row strip: bytes 0..31 or 32..63 of each 64-byte code vector); the 4-byte dot
 * product is vpmaddubsw (u8 x s8, pairs summed in int16) then vpmaddwd with ones. 8-bit codes: |code| times q with
 * the code's sign (vpsignb), so no pair exceeds 2 * 128 * 127.
 */

KW_TARGET_AVX2 static inline __m256i kw_x8_dp_avx2(__m256i acc, __m256i u, __m256i s) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
}

/* Rows [0, MR) of a against NH half-strips starting at half-strip h0 of the panel. */
KW_TARGET_AVX2 static inline __attribute__((always_inline)) void
kw_x8_tile_avx2(const int BITS, const int MR, const int NH, float *y, int64_t ldy, const kw_x8_act *a, int64_t K,
                const char *wp, int64_t h0, int64_t ncols, int pf) {
    const int64_t G = K / KW_X8_G, WG = BITS == 4 ? 32 : 16;
    const int OFS = BITS == 4;
    const size_t group_bytes = (size_t)KW_PANEL_ROWS * 4 * (size_t)(1 + OFS) + KW_X8_CODE_BYTES;
    const __m256i lo4 = _mm256_set1_epi8(0x0F), bias = _mm256_set1_epi8((char)0x80);
    __m256 acc[KW_X8_MAX_MR][4];
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
        for (int h = 0; h < NH; ++h)
            acc[m][h] = _mm256_setzero_ps();
    for (int64_t j = 0; j < K / WG; ++j) {
        const char *gp = wp + (size_t)j * group_bytes;
        const float *scales = (const float *)gp, *offsets = scales + KW_PANEL_ROWS;
        const uint8_t *codes = (const uint8_t *)gp + KW_PANEL_ROWS * 4 * (1 + OFS);
        const int64_t g = j * WG / KW_X8_G;
        __m256i is[KW_X8_MAX_MR][4];
#pragma GCC unroll 4
        for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
            for (int h = 0; h < NH; ++h)
                is[m][h] = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int t = 0; t < 4; ++t) {
            if (pf)
                for (size_t l = 0; l < group_bytes / 256; ++l)
                    __builtin_prefetch(gp + KW_X8_PF * group_bytes + t * (group_bytes / 4) + l * 64);
#pragma GCC unroll 4
            for (int h = 0; h < NH; ++h) {
                const int64_t hs = h0 + h;
                const __m256i c =
                    _mm256_loadu_si256((const __m256i *)(codes + (hs / 2) * 256 + t * 64 + (hs % 2) * 32));
                if (BITS == 4) {
                    const __m256i lo = _mm256_and_si256(c, lo4), hi = _mm256_and_si256(_mm256_srli_epi16(c, 4), lo4);
#pragma GCC unroll 4
                    for (int m = 0; m < MR; ++m) {
                        is[m][h] = kw_x8_dp_avx2(is[m][h], lo, _mm256_set1_epi32(kw_x8_q4(a, K, m, j * 32 + 4 * t)));
                        is[m][h] =
                            kw_x8_dp_avx2(is[m][h], hi, _mm256_set1_epi32(kw_x8_q4(a, K, m, j * 32 + 16 + 4 * t)));
                    }
                } else {
                    const __m256i cs = _mm256_xor_si256(c, bias), u = _mm256_abs_epi8(cs);
#pragma GCC unroll 4
                    for (int m = 0; m < MR; ++m) {
                        const __m256i q = _mm256_set1_epi32(kw_x8_q4(a, K, m, j * 16 + 4 * t));
                        is[m][h] = kw_x8_dp_avx2(is[m][h], u, _mm256_sign_epi8(q, cs));
                    }
                }
            }
        }
#pragma GCC unroll 4
        for (int m = 0; m < MR; ++m) {
            const __m256 d = _mm256_set1_ps(a->d[m * G + g]);
#pragma GCC unroll 4
            for (int h = 0; h < NH; ++h) {
                const int64_t hs = h0 + h;
                const __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(is[m][h]), d);
                acc[m][h] = _mm256_fmadd_ps(_mm256_loadu_ps(scales + hs * 8), f, acc[m][h]);
                if (OFS)
                    acc[m][h] =
                        _mm256_fmadd_ps(_mm256_loadu_ps(offsets + hs * 8), _mm256_set1_ps(a->s[m * G + g]), acc[m][h]);
            }
        }
    }
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
        for (int h = 0; h < NH; ++h) {
            const int64_t n = ncols - (h0 + h) * 8;
            float tmp[8];
            if (n >= 8) {
                _mm256_storeu_ps(y + m * ldy + (h0 + h) * 8, acc[m][h]);
            } else if (n > 0) {
                _mm256_storeu_ps(tmp, acc[m][h]);
                memcpy(y + m * ldy + (h0 + h) * 8, tmp, (size_t)n * sizeof(float));
            }
        }
}

/* a's arrays from row m on. */
static inline kw_x8_act kw_x8_rows(const kw_x8_act *a, int64_t K, int64_t m) {
    const int64_t G = K / KW_X8_G;
    return (kw_x8_act){a->q + m * K, a->d + m * G, a->s + m * G, a->s16 + m * 2 * G};
}

KW_TARGET_AVX2 static void kw_x8_panel_avx2(const int BITS, float *y, int64_t N, const kw_x8_act *a, int64_t K,
                                            const char *wp, int64_t n0, int64_t ncols, int64_t m0, int64_t m1) {
    const int64_t halves = (ncols + 7) / 8;
    if (m1 - m0 <= KW_X8_ROW_MAX) {
        for (int64_t m = m0; m < m1; ++m) {
            const kw_x8_act r = kw_x8_rows(a, K, m);
            for (int64_t h = 0; h < halves; h += 4)
                kw_x8_tile_avx2(BITS, 1, 4, y + m * N + n0, N, &r, K, wp, h, ncols, h == 0);
        }
        return;
    }
    for (int64_t m = m0; m < m1; m += 3) {
        const int mr = (int)(m1 - m < 3 ? m1 - m : 3);
        const kw_x8_act r = kw_x8_rows(a, K, m);
        for (int64_t h = 0; h < halves; h += 2) {
            float *yt = y + m * N + n0;
            if (mr == 3)
                kw_x8_tile_avx2(BITS, 3, 2, yt, N, &r, K, wp, h, ncols, 0);
            else if (mr == 2)
                kw_x8_tile_avx2(BITS, 2, 2, yt, N, &r, K, wp, h, ncols, 0);
            else
                kw_x8_tile_avx2(BITS, 1, 2, yt, N, &r, K, wp, h, ncols, 0);
        }
    }
}

/* ------------------------------------------------------------------------------------------------------------
 * AVX-512 with VNNI: vectors of one 16-row strip, vpdpbusd for the 4-byte dot product (8-bit codes as code + 128,
 * then 128 * sum q subtracted).
 */
#define KW_TARGET_X8_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))

/* Rows [0, MR) of a against NV strips starting at strip s0 of the panel. */
KW_TARGET_X8_VNNI static inline __attribute__((always_inline)) void
kw_x8_tile_vnni(const int BITS, const int MR, const int NV, float *y, int64_t ldy, const kw_x8_act *a, int64_t K,
                const char *wp, int64_t s0, int64_t ncols, int pf) {
    const int64_t G = K / KW_X8_G, WG = BITS == 4 ? 32 : 16;
    const int OFS = BITS == 4;
    const size_t group_bytes = (size_t)KW_PANEL_ROWS * 4 * (size_t)(1 + OFS) + KW_X8_CODE_BYTES;
    const __m512i lo4 = _mm512_set1_epi8(0x0F);
    __m512 acc[KW_X8_MAX_MR][4];
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v)
            acc[m][v] = _mm512_setzero_ps();
    for (int64_t j = 0; j < K / WG; ++j) {
        const char *gp = wp + (size_t)j * group_bytes;
        const float *scales = (const float *)gp, *offsets = scales + KW_PANEL_ROWS;
        const uint8_t *codes = (const uint8_t *)gp + KW_PANEL_ROWS * 4 * (1 + OFS);
        const int64_t g = j * WG / KW_X8_G;
        __m512i is[KW_X8_MAX_MR][4];
#pragma GCC unroll 4
        for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v)
                is[m][v] = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int t = 0; t < 4; ++t) {
            if (pf)
                for (size_t l = 0; l < group_bytes / 256; ++l)
                    __builtin_prefetch(gp + KW_X8_PF * group_bytes + t * (group_bytes / 4) + l * 64);
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) {
                const __m512i c = _mm512_loadu_si512(codes + (s0 + v) * 256 + t * 64);
                if (BITS == 4) {
                    const __m512i lo = _mm512_and_si512(c, lo4), hi = _mm512_and_si512(_mm512_srli_epi16(c, 4), lo4);
#pragma GCC unroll 4
                    for (int m = 0; m < MR; ++m) {
                        is[m][v] =
                            _mm512_dpbusd_epi32(is[m][v], lo, _mm512_set1_epi32(kw_x8_q4(a, K, m, j * 32 + 4 * t)));
                        is[m][v] = _mm512_dpbusd_epi32(is[m][v], hi,
                                                       _mm512_set1_epi32(kw_x8_q4(a, K, m, j * 32 + 16 + 4 * t)));
                    }
                } else {
#pragma GCC unroll 4
                    for (int m = 0; m < MR; ++m)
                        is[m][v] =
                            _mm512_dpbusd_epi32(is[m][v], c, _mm512_set1_epi32(kw_x8_q4(a, K, m, j * 16 + 4 * t)));
                }
            }
        }
#pragma GCC unroll 4
        for (int m = 0; m < MR; ++m) {
            const __m512 d = _mm512_set1_ps(a->d[m * G + g]);
            const __m512i back = _mm512_set1_epi32(BITS == 4 ? 0 : 128 * a->s16[m * 2 * G + j]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) {
                const __m512i isum = BITS == 4 ? is[m][v] : _mm512_sub_epi32(is[m][v], back);
                const __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(isum), d);
                acc[m][v] = _mm512_fmadd_ps(_mm512_loadu_ps(scales + (s0 + v) * 16), f, acc[m][v]);
                if (OFS)
                    acc[m][v] = _mm512_fmadd_ps(_mm512_loadu_ps(offsets + (s0 + v) * 16),
                                                _mm512_set1_ps(a->s[m * G + g]), acc[m][v]);
            }
        }
    }
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) {
            const int64_t n = ncols - (s0 + v) * 16;
            if (n >= 16)
                _mm512_storeu_ps(y + m * ldy + (s0 + v) * 16, acc[m][v]);
            else if (n > 0)
                _mm512_mask_storeu_ps(y + m * ldy + (s0 + v) * 16, (__mmask16)((1u << n) - 1), acc[m][v]);
        }
}

KW_TARGET_X8_VNNI static void kw_x8_panel_vnni(const int BITS, float *y, int64_t N, const kw_x8_act *a, int64_t K,
                                               const char *wp, int64_t n0, int64_t ncols, int64_t m0, int64_t m1) {
    const int64_t strips = (ncols + 15) / 16;
    if (m1 - m0 <= KW_X8_ROW_MAX) {
        for (int64_t m = m0; m < m1; ++m) {
            const kw_x8_act r = kw_x8_rows(a, K, m);
            kw_x8_tile_vnni(BITS, 1, 4, y + m * N + n0, N, &r, K, wp, 0, ncols, 1);
        }
        return;
    }
    for (int64_t m = m0; m < m1; m += 4) {
        const int mr = (int)(m1 - m < 4 ? m1 - m : 4);
        const kw_x8_act r = kw_x8_rows(a, K, m);
        for (int64_t s = 0; s < strips; s += 2) {
            float *yt = y + m * N + n0;
            switch (mr) {
            case 4:
                kw_x8_tile_vnni(BITS, 4, 2, yt, N, &r, K, wp, s, ncols, 0);
                break;
            case 3:
                kw_x8_tile_vnni(BITS, 3, 2, yt, N, &r, K, wp, s, ncols, 0);
                break;
            case 2:
                kw_x8_tile_vnni(BITS, 2, 2, yt, N, &r, K, wp, s, ncols, 0);
                break;
            default:
                kw_x8_tile_vnni(BITS, 1, 2, yt, N, &r, K, wp, s, ncols, 0);
            }
        }
    }
}

/* 1 if the CPU has AVX-512 VNNI. */
static int kw_x8_vnni(void) {
    static int known = -1;
    int v = __atomic_load_n(&known, __ATOMIC_RELAXED);
    if (v < 0) {
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx512vnni") ? 1 : 0;
        __atomic_store_n(&known, v, __ATOMIC_RELAXED);
    }
    return v;
}
#endif

void kw__cpu_x8_panel(enum kw_cpu_isa isa, enum kw_layout layout, float *y, int64_t N, const kw_x8_act *a, int64_t K,
                      const char *wp, int64_t n0, int64_t ncols, int64_t m0, int64_t m1) {
    const int bits = layout == KW_LAYOUT_QPANELS_S8_G16_X8 ? 8 : 4;
#if KW_CPU_X86
    /* the bits as constants, so that the tiles specialize */
    if (isa == KW_CPU_ISA_AVX512 && kw_x8_vnni()) {
        if (bits == 4)
            kw_x8_panel_vnni(4, y, N, a, K, wp, n0, ncols, m0, m1);
        else
            kw_x8_panel_vnni(8, y, N, a, K, wp, n0, ncols, m0, m1);
        return;
    }
    if (isa >= KW_CPU_ISA_AVX2) { /* AVX-512 without VNNI too: the same integer sums */
        if (bits == 4)
            kw_x8_panel_avx2(4, y, N, a, K, wp, n0, ncols, m0, m1);
        else
            kw_x8_panel_avx2(8, y, N, a, K, wp, n0, ncols, m0, m1);
        return;
    }
#endif
    (void)isa;
    kw_x8_panel_scalar(bits, y, N, a, K, wp, n0, ncols, m0, m1);
}
