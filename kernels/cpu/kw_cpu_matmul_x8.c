/* kw_cpu_matmul_x8.c: matmul with int8 activations, the way llama.cpp runs its k-quants: integer dot products per
 * group and a short float epilogue, instead of one f32 weight rebuilt and fused per (row, k). Three plain weight
 * layouts: KW_LAYOUT_QPANELS_U4_X8 (4-bit codes, f32 scale and offset per 32 k: ggml Q4_K and Q4_1),
 * KW_LAYOUT_QPANELS_S8_G16_X8 (8-bit codes, f32 scale per 16 k: Q6_K) and KW_LAYOUT_QPANELS_S8_X8 (8-bit codes, f16
 * scale per 32 k: Q8_0, Q5_0; the storage form "2" of the functions below), the first two each also in super-blocks
 * (KW_LAYOUT_QPANELS_U4_SB_X8, S8_G16_SB_X8, and S6_G16_SB_X8 with Q6_K's codes in 6 bits: the scale and offset
 * rebuilt per group as fl(d * s) and fl(m * o) from int8 s, o and the super-block's f32 d, m, which are the bits the
 * plain layouts store, so the five layouts follow one rule and give the same bits on the same rows).
 *
 * The numerics contract (the same bits on every ISA, for any batch, chunking and thread count):
 *  1. Each row of x is quantized per group of 32 k by kw__cpu_x8_quantize (scalar C, or AVX2 / AVX-512 doing the
 *     same IEEE operations: kw_x8_qgroup_avx512): amax = the largest |x|; d = amax / 127,
 *     q = lrintf(x * (127 / amax)) clamped to [-127, 127], and xs = d * (float)(sum of q).
 *     A group with amax below 1e-30 (or zero) has d = xs = 0 and q = 0; a group with a NaN or infinite x has
 *     d = xs = NaN (so its outputs are NaN, as the f32 chain would make them). For S8_X8 also dh = f16(d) (rule 3).
 *  2. isum(n, j) = sum over the k of weight group j (32 k for U4 and S8, 16 for S8_G16) of code(n, k) * q(k), an exact
 *     int32 (|isum| <= 32 * 128 * 127). S8_X8's scale is its stored f16 widened exactly (vcvtph2ps, kw_f16_to_f32).
 *  3. y[m][n] = the chain over the weight groups j = 0, 1, ... from +0 of
 *         acc = fma(scale(n, j), fl((float)isum * d(j's activation group)), acc)
 *     and for U4 (j = g) then acc = fma(offset(n, g), xs(g), acc); but for S8_X8 (Q8_0, Q5_0: the activation rounding
 *     ggml gives them, whose q8_0 activation blocks store d as f16)
 *         acc = fma(fl(scale(n, j) * f16(d(g))), (float)isum, acc)
 *     with f16() rounding to the nearest f16, even on ties (kw_round_f16, done once per activation group by
 *     kw__cpu_x8_quantize into kw_x8_act.dh, which every ISA's tiles read): the scale product ggml forms
 *     (ggml_vec_dot_q8_0_q8_0 and sgemm's Q8_0 tiles), within f32 rounding of its matmul on the same x (ggml sums each
 *     output in 8 lanes of 4 k and adds them at the end; one chain here). Bias added once by the caller, as for every
 *     other layout.
 * Integer sums are exact whatever the instructions (AVX-512 VNNI vpdpbusd; AVX2 vpmaddubsw + vpmaddwd, which cannot
 * saturate: 2 * 15 * 127 and, with the 8-bit codes' signs moved onto q, 2 * 128 * 127 < 32767; or scalar), and the
 * epilogue is the same IEEE operations in the same order, so the ISAs agree bit for bit with kw_ref_quant_matmul_x8
 * (kernels/ref). The result is the f32-weight matmul's up to the activation rounding: |y - y_f32| <= sum_g d(g) / 2 *
 * sum_k |w(n, k)| plus f32 roundings, and for S8_X8 plus sum_g 127 |f16(d(g)) - d(g)| * sum_k |w(n, k)| (2^-11 of d
 * while d is a normal f16, amax >= 127 * 2^-14; more when f16(d) is subnormal; a group with amax < 127 * 2^-25 has
 * f16(d) = 0 and adds nothing). A finite S8_X8 group with amax >= 65520 * 127 has f16(d) = Inf, so its outputs are
 * +-Inf or NaN (an isum or weight scale of 0): ggml's q8_0 activations overflow the same way.
 *
 * Weight groups (kernels/kw_backend.h): 64 f32 scales, (U4) 64 f32 offsets, then 1024 code bytes, strip s of 16 rows
 * at 256 s as four 64-byte vectors t whose byte 4 i + b holds row 16 s + i, k = 4 t + b (U4: low nibble, and k = 16
 * + 4 t + b the high nibble; S8_G16: the code + 128 as an unsigned byte, which vpdpbusd multiplies directly and
 * 128 * (sum of q over the 16 k) takes back). S8_X8: 64 f16 scales, then 2048 code bytes as code + 128, strips of
 * 512: eight vectors t, k = 4 t + b, 128 * (sum of q over the 32 k) taken back. A 32-bit lane of a vector is one row's
 * 4 consecutive k. The super-block layouts keep the same 1024-byte code blocks (S6_G16_SB_X8: 768 bytes, strips of 192:
 * two nibble vectors and one of the top two bits, each code stored as code + 32 and 32 * sum q taken back), after their
 * super-block's head of d, m, s and o (kw_x8_group).
 */
#include "kernels/cpu/kw_cpu.h"

#include <math.h>
#include <string.h>

#include "common/kw_half.h"

#if KW_CPU_X86
#include <immintrin.h>
#endif

#define KW_X8_G           32                   /* k per group */
#define KW_X8_CODE_BYTES  (KW_PANEL_ROWS * 16) /* 64 rows x 32 nibbles */
#define KW_X8_CODE_BYTES6 (KW_PANEL_ROWS * 12) /* 64 rows x 16 six-bit codes */
#define KW_X8_GROUP       (KW_PANEL_ROWS * 8 + KW_X8_CODE_BYTES)
#define KW_X8_PF          4 /* groups prefetched ahead by a decode row (as kw_cpu_matmul.c, KW_QMM_PF) */
#define KW_X8_MAX_MR      4
/* Up to this many rows, each row streams the panel on its own (as KW_MM_ROW_MAX). */
#define KW_X8_ROW_MAX 4

typedef struct kw_x8q_job {
    enum kw_cpu_isa isa;
    const float *x;
    int64_t K;
    int8_t *xq;
    float *xd, *xs;
    int32_t *xs16;
    float *xdh; /* NULL: not wanted */
} kw_x8q_job;

/* One activation group v (32 k) by rule 1 of the header: its q, d (*xd), d * sum q (*xs) and the sums of q over its two
 * halves (s16). */
static void kw_x8_qgroup_scalar(const float *v, int8_t *q, float *xd, float *xs, int32_t *s16) {
    float amax = 0.0f;
    int finite = 1;
    for (int k = 0; k < KW_X8_G; ++k) {
        const float a = fabsf(v[k]);
        finite &= isfinite(a) != 0;
        amax = a > amax ? a : amax;
    }
    s16[0] = s16[1] = 0;
    if (!finite || amax < 1e-30f) {
        memset(q, 0, KW_X8_G);
        *xd = *xs = finite ? 0.0f : NAN;
        return;
    }
    const float inv = 127.0f / amax, d = amax / 127.0f;
    for (int k = 0; k < KW_X8_G; ++k) {
        long r = lrintf(v[k] * inv);
        r = r > 127 ? 127 : r < -127 ? -127 : r;
        q[k] = (int8_t)r;
        s16[k / 16] += (int32_t)r;
    }
    *xd = d;
    *xs = d * (float)(s16[0] + s16[1]);
}

#if KW_CPU_X86
/* kw_x8_qgroup_scalar with the same IEEE operations on vectors: |v| and its maximum are exact, fl(v * inv) is the same
 * product, and vcvtps2dq rounds to nearest even as lrintf does in the default rounding mode; a group that is not all
 * finite, or below 1e-30, goes to the scalar code. */
KW_TARGET_AVX512 static void kw_x8_qgroup_avx512(const float *v, int8_t *q, float *xd, float *xs, int32_t *s16) {
    const __m512 x0 = _mm512_loadu_ps(v), x1 = _mm512_loadu_ps(v + 16);
    const __m512 a0 = _mm512_abs_ps(x0), a1 = _mm512_abs_ps(x1), inf = _mm512_set1_ps(INFINITY);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(a0, a1));
    if ((_mm512_cmp_ps_mask(a0, inf, _CMP_LT_OQ) & _mm512_cmp_ps_mask(a1, inf, _CMP_LT_OQ)) != 0xFFFF ||
        amax < 1e-30f) {
        kw_x8_qgroup_scalar(v, q, xd, xs, s16);
        return;
    }
    const float inv = 127.0f / amax, d = amax / 127.0f;
    const __m512 vi = _mm512_set1_ps(inv);
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
    const __m512i r0 = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(x0, vi)), lo), hi);
    const __m512i r1 = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(x1, vi)), lo), hi);
    _mm_storeu_si128((__m128i *)q, _mm512_cvtepi32_epi8(r0));
    _mm_storeu_si128((__m128i *)(q + 16), _mm512_cvtepi32_epi8(r1));
    s16[0] = _mm512_reduce_add_epi32(r0);
    s16[1] = _mm512_reduce_add_epi32(r1);
    *xd = d;
    *xs = d * (float)(s16[0] + s16[1]);
}

/* The 8 int32 of r (each in -127..127) as int8 at q, and their sum. */
KW_TARGET_AVX2 static inline int32_t kw_x8_store8_avx2(int8_t *q, __m256i r) {
    const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
    _mm_storel_epi64((__m128i *)q, _mm_packs_epi16(w, w));
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
    t = _mm_hadd_epi32(t, t);
    return _mm_cvtsi128_si32(_mm_hadd_epi32(t, t));
}

/* kw_x8_qgroup_avx512 on 8-lane vectors. */
KW_TARGET_AVX2 static void kw_x8_qgroup_avx2(const float *v, int8_t *q, float *xd, float *xs, int32_t *s16) {
    const __m256 sign = _mm256_set1_ps(-0.0f), inf = _mm256_set1_ps(INFINITY);
    __m256 x[4], m = _mm256_setzero_ps();
    int finite = 1;
    for (int i = 0; i < 4; ++i) {
        x[i] = _mm256_loadu_ps(v + 8 * i);
        const __m256 a = _mm256_andnot_ps(sign, x[i]);
        finite &= _mm256_movemask_ps(_mm256_cmp_ps(a, inf, _CMP_LT_OQ)) == 0xFF;
        m = _mm256_max_ps(m, a);
    }
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    const float amax = _mm_cvtss_f32(_mm_max_ss(h, _mm_shuffle_ps(h, h, 1)));
    if (!finite || amax < 1e-30f) {
        kw_x8_qgroup_scalar(v, q, xd, xs, s16);
        return;
    }
    const float inv = 127.0f / amax, d = amax / 127.0f;
    const __m256 vi = _mm256_set1_ps(inv);
    const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
    s16[0] = s16[1] = 0;
    for (int i = 0; i < 4; ++i) {
        const __m256i r = _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(x[i], vi)), lo), hi);
        s16[i / 2] += kw_x8_store8_avx2(q + 8 * i, r);
    }
    *xd = d;
    *xs = d * (float)(s16[0] + s16[1]);
}
#endif

static void kw_x8_quantize_rows(void *arg, int64_t m0, int64_t m1, int worker) {
    (void)worker;
    const kw_x8q_job *j = arg;
    const int64_t K = j->K, G = K / KW_X8_G;
    void (*group)(const float *, int8_t *, float *, float *, int32_t *) = kw_x8_qgroup_scalar;
#if KW_CPU_X86
    if (j->isa == KW_CPU_ISA_AVX512)
        group = kw_x8_qgroup_avx512;
    else if (j->isa == KW_CPU_ISA_AVX2)
        group = kw_x8_qgroup_avx2;
#endif
    for (int64_t m = m0; m < m1; ++m)
        for (int64_t g = 0; g < G; ++g) {
            group(j->x + m * K + g * KW_X8_G, j->xq + m * K + g * KW_X8_G, &j->xd[m * G + g], &j->xs[m * G + g],
                  &j->xs16[m * 2 * G + 2 * g]);
            if (j->xdh) j->xdh[m * G + g] = kw_round_f16(j->xd[m * G + g]); /* rule 3's f16(d), once per group */
        }
}

void kw__cpu_x8_quantize(kw_cpu_backend *cpu, const float *x, int64_t M, int64_t K, int nt, int8_t *xq, float *xd,
                         float *xs, int32_t *xs16, float *xdh) {
    kw_x8q_job job = {cpu->isa, x, K, xq, xd, xs, xs16, xdh};
    kw__cpu_parallel_for(cpu, nt, M, kw_x8_quantize_rows, &job);
}

int kw__cpu_layout_x8(enum kw_layout layout) {
    return layout == KW_LAYOUT_QPANELS_U4_X8 || layout == KW_LAYOUT_QPANELS_S8_G16_X8 ||
           layout == KW_LAYOUT_QPANELS_U4_SB_X8 || layout == KW_LAYOUT_QPANELS_S8_G16_SB_X8 ||
           layout == KW_LAYOUT_QPANELS_S6_G16_SB_X8 || layout == KW_LAYOUT_QPANELS_S8_X8;
}

/* The code width: 8 or 6 for the layouts of Q6_K and Q8_0, else 4. */
static inline int kw_x8_bits(enum kw_layout layout) {
    if (layout == KW_LAYOUT_QPANELS_S6_G16_SB_X8) return 6;
    return layout == KW_LAYOUT_QPANELS_S8_G16_X8 || layout == KW_LAYOUT_QPANELS_S8_G16_SB_X8 ||
                   layout == KW_LAYOUT_QPANELS_S8_X8
               ? 8
               : 4;
}

/* The storage form of a layout, the SB argument of the group, tile and panel functions: 0 the plain layouts (f32
 * scales and offsets per weight group), 1 the super-block layouts, 2 QPANELS_S8_X8 (8-bit codes, f16 scales per
 * 32 k, strips of 512 bytes). */
static inline int kw_x8_form(enum kw_layout layout) {
    if (layout == KW_LAYOUT_QPANELS_S8_X8) return 2;
    return layout == KW_LAYOUT_QPANELS_U4_SB_X8 || layout == KW_LAYOUT_QPANELS_S8_G16_SB_X8 ||
           layout == KW_LAYOUT_QPANELS_S6_G16_SB_X8;
}

/* The bytes of a 16-row strip of one weight group's codes (code width bits, storage form kw_x8_form), 64 per vector of
 * 16 rows x 4 bytes: 6-bit codes three vectors (16 k), S8_X8 eight (32 k), the others four (4-bit: 32 k as two
 * nibbles; 8-bit: 16 k). */
static inline int64_t kw_x8_strip(int bits, int form) {
    return bits == 6 ? 192 : form == 2 ? 512 : 256;
}

/* Where weight group j (WG k) of a panel keeps its numbers (kernels/kw_backend.h): the plain layouts' f32 scales and
 * offsets (SB 0), or the super-block layouts' int8 s, o and their super-block's f32 d, m (SB 1), or S8_X8's f16 scales
 * (SB 2: kw_x8_form); then its 1024 code bytes (768 for 6-bit codes, 2048 for S8_X8). at and bytes: the group's share
 * of the panel's byte stream (its start, and the panel bytes per group), for prefetching. */
typedef struct kw_x8_grp {
    const float *scales, *offsets, *d, *m;
    const uint16_t *scales16; /* S8_X8 (SB 2): its f16 scales */
    const int8_t *s, *o;
    const uint8_t *codes;
    size_t at, bytes;
} kw_x8_grp;

static inline __attribute__((always_inline)) kw_x8_grp kw_x8_group(const int BITS, const int SB, const char *wp,
                                                                   int64_t j) {
    const size_t ofs = BITS == 4 ? 2 : 1, per = BITS == 4 ? 8 : 16; /* per: groups per super-block */
    const size_t code_bytes = BITS == 6 ? KW_X8_CODE_BYTES6 : KW_X8_CODE_BYTES;
    kw_x8_grp g = {0};
    if (SB == 2) { /* S8_X8: 64 f16 scales, then 2048 code bytes */
        g.bytes = KW_PANEL_ROWS * 2 + 2 * KW_X8_CODE_BYTES;
        g.at = (size_t)j * g.bytes;
        g.scales16 = (const uint16_t *)(wp + g.at);
        g.codes = (const uint8_t *)(wp + g.at) + KW_PANEL_ROWS * 2;
        return g;
    }
    if (!SB) {
        g.bytes = KW_PANEL_ROWS * 4 * ofs + KW_X8_CODE_BYTES;
        g.at = (size_t)j * g.bytes;
        g.scales = (const float *)(wp + g.at);
        g.offsets = g.scales + KW_PANEL_ROWS;
        g.codes = (const uint8_t *)(wp + g.at) + KW_PANEL_ROWS * 4 * ofs;
        return g;
    }
    const size_t head = KW_PANEL_ROWS * (4 + per) * ofs, sb_bytes = head + per * code_bytes;
    const size_t jj = (size_t)j % per;
    const char *sbp = wp + (size_t)j / per * sb_bytes;
    g.bytes = sb_bytes / per;
    g.at = (size_t)(sbp - wp) + jj * g.bytes;
    g.d = (const float *)sbp;
    g.m = g.d + KW_PANEL_ROWS;
    g.s = (const int8_t *)(sbp + KW_PANEL_ROWS * 4 * ofs) + jj * KW_PANEL_ROWS;
    g.o = g.s + per * KW_PANEL_ROWS;
    g.codes = (const uint8_t *)sbp + head + jj * code_bytes;
    return g;
}

/* The byte of row r (0..63) at k kk of a group's 4- or 8-bit codes, strips of strip bytes (kw_x8_strip: 256; 512 for
 * S8_X8, whose eight vectors hold the 32 k of its groups). */
static inline size_t kw_x8_byte(int64_t strip, int64_t r, int64_t kk) {
    return (size_t)((r / 16) * strip + ((kk % (strip / 16)) / 4) * 64 + 4 * (r % 16) + kk % 4);
}

/* The 6-bit codes' bytes of row r at k kk (0..15): its nibble's byte (the low nibble for kk < 8) and the byte of
 * its top two bits (bits 2 (kk / 4) .. + 1). */
static inline size_t kw_x8_nibble6(int64_t r, int64_t kk) {
    return (size_t)((r / 16) * 192 + ((kk / 4) % 2) * 64 + 4 * (r % 16) + kk % 4);
}
static inline size_t kw_x8_top6(int64_t r, int64_t kk) {
    return (size_t)((r / 16) * 192 + 128 + 4 * (r % 16) + kk % 4);
}

/* The code of row r at k kk: 4-bit (U4_X8), 8-bit stored + 128 (S8_G16_X8; S8_X8, SB 2, in strips of 512 bytes) or
 * 6-bit stored + 32 (S6_G16_SB_X8). */
static inline int kw_x8_code(int bits, int sb, const uint8_t *codes, int64_t r, int64_t kk) {
    if (bits == 6) {
        const uint8_t nib = codes[kw_x8_nibble6(r, kk)], top = codes[kw_x8_top6(r, kk)];
        const int lo = kk < 8 ? nib & 0x0F : nib >> 4, hi = (top >> (2 * (kk / 4))) & 3;
        return (lo | hi << 4) - 32;
    }
    const uint8_t byte = codes[kw_x8_byte(kw_x8_strip(bits, sb), r, kk)];
    if (bits == 8) return (int)byte - 128;
    return kk < 16 ? byte & 0x0F : byte >> 4;
}

void kw__cpu_x8_pack_code(enum kw_layout layout, uint8_t *codes, int64_t r, int64_t kk, int code) {
    if (kw_x8_bits(layout) == 6) {
        const unsigned u = (unsigned)(code + 32);
        codes[kw_x8_nibble6(r, kk)] |= (uint8_t)(kk < 8 ? u & 15u : (u & 15u) << 4);
        codes[kw_x8_top6(r, kk)] |= (uint8_t)((u >> 4) << (2 * (kk / 4)));
        return;
    }
    uint8_t *byte = codes + kw_x8_byte(kw_x8_strip(kw_x8_bits(layout), kw_x8_form(layout)), r, kk);
    if (kw_x8_bits(layout) == 8)
        *byte = (uint8_t)(code + 128);
    else
        *byte |= (uint8_t)(kk < 16 ? code : code << 4);
}

int kw__cpu_x8_get_code(enum kw_layout layout, const uint8_t *codes, int64_t r, int64_t kk) {
    return kw_x8_code(kw_x8_bits(layout), kw_x8_form(layout), codes, r, kk);
}

/* 4 consecutive int8 codes at p as one little-endian word (byte b: code b). */
static inline uint32_t kw_x8_word(const int8_t *p) {
    uint32_t w;
    memcpy(&w, p, 4);
    return w;
}

/* One row's codes of a group (kw__cpu_x8_pack_group) into its strip: kw__cpu_x8_pack_code's bytes, 4 k per word. A
 * 32-bit lane holds the row's 4 consecutive k, so each lane is one word store. Bytes of 4-bit codes: k and k + 16 as
 * low and high nibble; 8-bit: code + 128 (the sign bit flipped; form 2: S8_X8's 32 k in eight vectors); 6-bit: code +
 * 32 = (code & 63) ^ 32, its low nibbles in vectors 0 (k 0..3, 8..11) and 1 (k 4..7, 12..15), its top two bits of k 4 t
 * + b at bits 2 t of lane byte b. */
static inline void kw_x8_pack_row(const int bits, const int form, uint8_t *lane, const int8_t *src) {
    const int vectors = (int)(kw_x8_strip(bits, form) / 64);
    uint32_t out[8];
    if (bits == 8) {
        for (int t = 0; t < vectors; ++t)
            out[t] = kw_x8_word(src + 4 * t) ^ 0x80808080u;
    } else if (bits == 4) {
        for (int t = 0; t < 4; ++t)
            out[t] = kw_x8_word(src + 4 * t) | kw_x8_word(src + 16 + 4 * t) << 4;
    } else {
        uint32_t u[4];
        for (int t = 0; t < 4; ++t)
            u[t] = (kw_x8_word(src + 4 * t) & 0x3F3F3F3Fu) ^ 0x20202020u;
        out[0] = (u[0] & 0x0F0F0F0Fu) | (u[2] & 0x0F0F0F0Fu) << 4;
        out[1] = (u[1] & 0x0F0F0F0Fu) | (u[3] & 0x0F0F0F0Fu) << 4;
        out[2] = 0;
        for (int t = 0; t < 4; ++t)
            out[2] |= (u[t] >> 4 & 0x03030303u) << (2 * t);
    }
    for (int t = 0; t < vectors; ++t)
        memcpy(lane + 64 * t, &out[t], 4);
}

void kw__cpu_x8_pack_group(enum kw_layout layout, uint8_t *codes, const int8_t *src, int64_t stride, int64_t rows) {
    const int bits = kw_x8_bits(layout), form = kw_x8_form(layout);
    const int64_t strip = kw_x8_strip(bits, form);
    for (int64_t r = 0; r < rows; ++r)
        kw_x8_pack_row(bits, form, codes + (r / 16) * strip + 4 * (r % 16), src + r * stride);
}

/* ------------------------------------------------------------------------------------------------------------
 * Scalar
 */

static void kw_x8_panel_scalar(const int BITS, const int SB, float *y, int64_t N, const kw_x8_act *a, int64_t K,
                               const char *wp, int64_t n0, int64_t ncols, int64_t m0, int64_t m1) {
    const int64_t G = K / KW_X8_G, WG = BITS == 4 || SB == 2 ? 32 : 16, OFS = BITS == 4;
    for (int64_t m = m0; m < m1; ++m) {
        for (int64_t c = 0; c < ncols; ++c) {
            float acc = 0.0f;
            for (int64_t j = 0; j < K / WG; ++j) {
                const kw_x8_grp gr = kw_x8_group(BITS, SB, wp, j);
                const int8_t *q = a->q + m * K + j * WG;
                const int64_t g = j * WG / KW_X8_G;
                int32_t isum = 0;
                for (int kk = 0; kk < WG; ++kk)
                    isum += kw_x8_code(BITS, SB, gr.codes, c, kk) * q[kk];
                if (SB == 2) { /* rule 3's S8_X8 form: fma(fl(f16 scale * f16(d)), isum, acc), f16(d) from dh */
                    acc = fmaf(kw_f16_to_f32(gr.scales16[c]) * a->dh[m * G + g], (float)isum, acc);
                    continue;
                }
                const float d = a->d[m * G + g];
                const float scale = SB ? gr.d[c] * (float)gr.s[c] : gr.scales[c];
                acc = fmaf(scale, (float)isum * d, acc);
                if (OFS) acc = fmaf(SB ? gr.m[c] * (float)gr.o[c] : gr.offsets[c], a->s[m * G + g], acc);
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

/* a's arrays from row m on. */
static inline kw_x8_act kw_x8_rows(const kw_x8_act *a, int64_t K, int64_t m) {
    const int64_t G = K / KW_X8_G;
    return (kw_x8_act){a->q + m * K, a->d + m * G, a->s + m * G, a->s16 + m * 2 * G, a->dh ? a->dh + m * G : NULL};
}

/* ------------------------------------------------------------------------------------------------------------
 * AVX2: vectors of 8 rows (half a 16-row strip); the 4-byte dot product is vpmaddubsw (u8 x s8, pairs summed in
 * int16) then vpmaddwd with ones. 8-bit codes: |code| times q with the code's sign (vpsignb), so no pair exceeds
 * 2 * 128 * 127.
 */

KW_TARGET_AVX2 static inline __m256i kw_x8_dp_avx2(__m256i acc, __m256i u, __m256i s) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
}

/* acc + the dot products of the biased 8-bit codes c (code + 128) with q, by the signed codes. */
KW_TARGET_AVX2 static inline __m256i kw_x8_dp8_avx2(__m256i acc, __m256i c, __m256i q) {
    const __m256i cs = _mm256_xor_si256(c, _mm256_set1_epi8((char)0x80));
    return kw_x8_dp_avx2(acc, _mm256_abs_epi8(cs), _mm256_sign_epi8(q, cs));
}

/* Stores the first n (1..8) lanes of v at y. */
KW_TARGET_AVX2 static inline void kw_x8_store_n_avx2(float *y, __m256 v, int n) {
    float tmp[8];
    if (n == 8) {
        _mm256_storeu_ps(y, v);
        return;
    }
    _mm256_storeu_ps(tmp, v);
    memcpy(y, tmp, (size_t)n * sizeof(float));
}

#define X8_SFX              avx2
#define X8_TARGET           KW_TARGET_AVX2
#define X8_LANES            8
#define X8_MR               3
#define X8_BIASED           0
#define X8_PF8              1 /* kept: more work per byte than VNNI; off was no clear gain (docs/BENCHMARKS.md) */
#define X8_VI               __m256i
#define X8_VF               __m256
#define X8_ZEROI()          _mm256_setzero_si256()
#define X8_ZEROF()          _mm256_setzero_ps()
#define X8_LOADI(p)         _mm256_loadu_si256((const __m256i *)(p))
#define X8_LOW4(c)          _mm256_and_si256((c), _mm256_set1_epi8(0x0F))
#define X8_HIGH4(c)         _mm256_and_si256(_mm256_srli_epi16((c), 4), _mm256_set1_epi8(0x0F))
#define X8_OR(a, b)         _mm256_or_si256((a), (b))
#define X8_AND(a, b)        _mm256_and_si256((a), (b))
#define X8_SLLI16(v, n)     _mm256_slli_epi16((v), (n))
#define X8_SRLI16(v, n)     _mm256_srli_epi16((v), (n))
#define X8_SET1B(b)         _mm256_set1_epi8(b)
#define X8_SET1I(v)         _mm256_set1_epi32(v)
#define X8_SET1F(v)         _mm256_set1_ps(v)
#define X8_DP4(acc, u, q)   kw_x8_dp_avx2((acc), (u), (q))
#define X8_DP8(acc, c, q)   kw_x8_dp8_avx2((acc), (c), (q))
#define X8_SUBI(a, b)       _mm256_sub_epi32((a), (b))
#define X8_CVT(v)           _mm256_cvtepi32_ps(v)
#define X8_MULF(a, b)       _mm256_mul_ps((a), (b))
#define X8_FMA(a, b, c)     _mm256_fmadd_ps((a), (b), (c))
#define X8_LOADF(p)         _mm256_loadu_ps(p)
#define X8_LOADS8F(p)       _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p))))
#define X8_LOADHF(p)        _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
#define X8_STORE_N(p, v, n) kw_x8_store_n_avx2((p), (v), (n))
#include "kernels/cpu/kw_cpu_matmul_x8_isa.h"

/* ------------------------------------------------------------------------------------------------------------
 * AVX-512 with VNNI: vectors of one 16-row strip, vpdpbusd for the 4-byte dot product (8-bit codes as code + 128,
 * then 128 * sum q subtracted).
 */
#define KW_TARGET_X8_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))

#define X8_SFX              vnni
#define X8_TARGET           KW_TARGET_X8_VNNI
#define X8_LANES            16
#define X8_MR               4
#define X8_BIASED           1
#define X8_PF8              0 /* without: x8q8 gain 0.89x -> 0.98-1.00x at M = 1 (docs/BENCHMARKS.md) */
#define X8_VI               __m512i
#define X8_VF               __m512
#define X8_ZEROI()          _mm512_setzero_si512()
#define X8_ZEROF()          _mm512_setzero_ps()
#define X8_LOADI(p)         _mm512_loadu_si512(p)
#define X8_LOW4(c)          _mm512_and_si512((c), _mm512_set1_epi8(0x0F))
#define X8_HIGH4(c)         _mm512_and_si512(_mm512_srli_epi16((c), 4), _mm512_set1_epi8(0x0F))
#define X8_OR(a, b)         _mm512_or_si512((a), (b))
#define X8_AND(a, b)        _mm512_and_si512((a), (b))
#define X8_SLLI16(v, n)     _mm512_slli_epi16((v), (n))
#define X8_SRLI16(v, n)     _mm512_srli_epi16((v), (n))
#define X8_SET1B(b)         _mm512_set1_epi8(b)
#define X8_SET1I(v)         _mm512_set1_epi32(v)
#define X8_SET1F(v)         _mm512_set1_ps(v)
#define X8_DP4(acc, u, q)   _mm512_dpbusd_epi32((acc), (u), (q))
#define X8_DP8(acc, c, q)   _mm512_dpbusd_epi32((acc), (c), (q))
#define X8_SUBI(a, b)       _mm512_sub_epi32((a), (b))
#define X8_CVT(v)           _mm512_cvtepi32_ps(v)
#define X8_MULF(a, b)       _mm512_mul_ps((a), (b))
#define X8_FMA(a, b, c)     _mm512_fmadd_ps((a), (b), (c))
#define X8_LOADF(p)         _mm512_loadu_ps(p)
#define X8_LOADS8F(p)       _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p))))
#define X8_LOADHF(p)        _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))
#define X8_STORE_N(p, v, n) _mm512_mask_storeu_ps((p), (__mmask16)((1u << (n)) - 1), (v))
#include "kernels/cpu/kw_cpu_matmul_x8_isa.h"

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

#if KW_CPU_X86
/* The panel functions with the code width and the storage as constants, so that the tiles specialize. */
#define KW_X8_SPECIALIZE(sfx, target, bits, sb)                                                                        \
    target static void kw_x8_panel_##sfx##_##bits##_##sb(float *y, int64_t N, const kw_x8_act *a, int64_t K,           \
                                                         const char *wp, int64_t n0, int64_t ncols, int64_t m0,        \
                                                         int64_t m1) {                                                 \
        kw_x8_panel_##sfx(bits, sb, y, N, a, K, wp, n0, ncols, m0, m1);                                                \
    }
KW_X8_SPECIALIZE(vnni, KW_TARGET_X8_VNNI, 4, 0)
KW_X8_SPECIALIZE(vnni, KW_TARGET_X8_VNNI, 8, 0)
KW_X8_SPECIALIZE(vnni, KW_TARGET_X8_VNNI, 4, 1)
KW_X8_SPECIALIZE(vnni, KW_TARGET_X8_VNNI, 8, 1)
KW_X8_SPECIALIZE(vnni, KW_TARGET_X8_VNNI, 6, 1)
KW_X8_SPECIALIZE(vnni, KW_TARGET_X8_VNNI, 8, 2)
KW_X8_SPECIALIZE(avx2, KW_TARGET_AVX2, 4, 0)
KW_X8_SPECIALIZE(avx2, KW_TARGET_AVX2, 8, 0)
KW_X8_SPECIALIZE(avx2, KW_TARGET_AVX2, 4, 1)
KW_X8_SPECIALIZE(avx2, KW_TARGET_AVX2, 8, 1)
KW_X8_SPECIALIZE(avx2, KW_TARGET_AVX2, 6, 1)
KW_X8_SPECIALIZE(avx2, KW_TARGET_AVX2, 8, 2)
#undef KW_X8_SPECIALIZE
#endif

/* ------------------------------------------------------------------------------------------------------------
 * Prefill on S6_G16_SB_X8: a work item of more than KW_X8_ROW_MAX rows first widens its panel into the plain
 * S8_G16_X8 panel of the same rows (kw__cpu_x8_widen6_panel, the caller's per-thread scratch), then runs the
 * S8_G16_X8 tiles on it. Each group's 64 f32 scales are fl(d * s), the value the S6 tiles rebuild (and the plain
 * layout stores for these rows), and the integer sums are the same exact int32 (the S8 tiles take back 128 * sum q
 * where the S6 ones take back 32 * sum q), so the bits are the same; the unpack and the scale rebuild are paid once
 * per panel and work item instead of once per tile (per-tile, S6 prefill ran at 0.84-0.92x S8_G16_X8:
 * docs/BENCHMARKS.md). A group's 768 code bytes become 1024: byte i of 8-bit vector t of a strip is code + 128 =
 * (code + 32) + 96, the nibble of byte i of 6-bit vector t % 2 (low for t < 2) ored with bits 2 t, 2 t + 1 of byte i
 * of the strip's top vector moved to bits 4, 5.
 */

int kw__cpu_x8_widens(enum kw_layout layout, int64_t rows) {
    return layout == KW_LAYOUT_QPANELS_S6_G16_SB_X8 && rows > KW_X8_ROW_MAX;
}

/* One group g of an S6_G16_SB_X8 panel into dst, one group of S8_G16_X8: 64 f32 scales fl(d * s), then 1024 code
 * bytes, each 16-row strip's 192 bytes of 6-bit codes to 256, 8 bytes at a time (a code + 32 is at most 63, so + 96
 * carries into no other byte). */
static void kw_x8_widen6_group_scalar(char *dst, const kw_x8_grp *g) {
    float *scales = (float *)dst;
    for (int r = 0; r < KW_PANEL_ROWS; ++r)
        scales[r] = g->d[r] * (float)g->s[r];
    uint8_t *codes = (uint8_t *)(scales + KW_PANEL_ROWS);
    const uint64_t low = 0x0F0F0F0F0F0F0F0Full, two = 0x0303030303030303ull, bias = 0x6060606060606060ull;
    for (int st = 0; st < KW_PANEL_ROWS / 16; ++st)
        for (int i = 0; i < 64; i += 8) {
            const uint8_t *src = g->codes + 192 * st + i;
            uint64_t n0, n1, top;
            memcpy(&n0, src, 8);
            memcpy(&n1, src + 64, 8);
            memcpy(&top, src + 128, 8);
            const uint64_t v[4] = {(n0 & low) | (top & two) << 4, (n1 & low) | (top >> 2 & two) << 4,
                                   (n0 >> 4 & low) | (top >> 4 & two) << 4, (n1 >> 4 & low) | (top >> 6 & two) << 4};
            for (int t = 0; t < 4; ++t) {
                const uint64_t w = v[t] + bias;
                memcpy(codes + 256 * st + 64 * t + i, &w, 8);
            }
        }
}

#if KW_CPU_X86
/* kw_x8_widen6_group_scalar on 32-byte vectors (for AVX-512 too: the widening is a small part of a work item). */
KW_TARGET_AVX2 static void kw_x8_widen6_group_avx2(char *dst, const kw_x8_grp *g) {
    float *scales = (float *)dst;
    for (int r = 0; r < KW_PANEL_ROWS; r += 8) {
        const __m256 s = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(g->s + r))));
        _mm256_storeu_ps(scales + r, _mm256_mul_ps(_mm256_loadu_ps(g->d + r), s));
    }
    uint8_t *codes = (uint8_t *)(scales + KW_PANEL_ROWS);
    const __m256i low = _mm256_set1_epi8(0x0F), two = _mm256_set1_epi8(0x30), bias = _mm256_set1_epi8(0x60);
    for (int st = 0; st < KW_PANEL_ROWS / 16; ++st)
        for (int i = 0; i < 64; i += 32) {
            const uint8_t *src = g->codes + 192 * st + i;
            const __m256i n0 = _mm256_loadu_si256((const __m256i *)src);
            const __m256i n1 = _mm256_loadu_si256((const __m256i *)(src + 64));
            const __m256i top = _mm256_loadu_si256((const __m256i *)(src + 128));
            const __m256i v[4] = {
                _mm256_or_si256(_mm256_and_si256(n0, low), _mm256_and_si256(_mm256_slli_epi16(top, 4), two)),
                _mm256_or_si256(_mm256_and_si256(n1, low), _mm256_and_si256(_mm256_slli_epi16(top, 2), two)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(n0, 4), low), _mm256_and_si256(top, two)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(n1, 4), low),
                                _mm256_and_si256(_mm256_srli_epi16(top, 2), two))};
            for (int t = 0; t < 4; ++t)
                _mm256_storeu_si256((__m256i *)(codes + 256 * st + 64 * t + i), _mm256_add_epi8(v[t], bias));
        }
}
#endif

void kw__cpu_x8_widen6_panel(enum kw_cpu_isa isa, char *dst, const char *src, int64_t K) {
    void (*group)(char *, const kw_x8_grp *) = kw_x8_widen6_group_scalar;
#if KW_CPU_X86
    if (isa >= KW_CPU_ISA_AVX2) group = kw_x8_widen6_group_avx2; /* AVX-512 too: a few % of a work item either way */
#endif
    (void)isa;
    for (int64_t j = 0; j < K / 16; ++j) {
        const kw_x8_grp g = kw_x8_group(6, 1, src, j);
        for (size_t l = 0; l < g.bytes; l += 64)
            __builtin_prefetch(src + g.at + KW_X8_PF * g.bytes + l);
        group(dst + (size_t)j * (KW_PANEL_ROWS * sizeof(float) + KW_X8_CODE_BYTES), &g);
    }
}

void kw__cpu_x8_panel(enum kw_cpu_isa isa, enum kw_layout layout, float *y, int64_t N, const kw_x8_act *a, int64_t K,
                      const char *wp, int64_t n0, int64_t ncols, int64_t m0, int64_t m1) {
    const int bits = kw_x8_bits(layout), sb = kw_x8_form(layout);
#if KW_CPU_X86
    typedef void (*panel_fn)(float *, int64_t, const kw_x8_act *, int64_t, const char *, int64_t, int64_t, int64_t,
                             int64_t);
    /* [sb][bits 4, 8, 6] (6-bit codes: super-blocks only; form 2: 8-bit only) */
    static const panel_fn vnni[3][3] = {{kw_x8_panel_vnni_4_0, kw_x8_panel_vnni_8_0, NULL},
                                        {kw_x8_panel_vnni_4_1, kw_x8_panel_vnni_8_1, kw_x8_panel_vnni_6_1},
                                        {NULL, kw_x8_panel_vnni_8_2, NULL}};
    static const panel_fn avx2[3][3] = {{kw_x8_panel_avx2_4_0, kw_x8_panel_avx2_8_0, NULL},
                                        {kw_x8_panel_avx2_4_1, kw_x8_panel_avx2_8_1, kw_x8_panel_avx2_6_1},
                                        {NULL, kw_x8_panel_avx2_8_2, NULL}};
    const int w = bits == 4 ? 0 : bits == 8 ? 1 : 2;
    if (isa == KW_CPU_ISA_AVX512 && kw_x8_vnni()) {
        vnni[sb][w](y, N, a, K, wp, n0, ncols, m0, m1);
        return;
    }
    if (isa >= KW_CPU_ISA_AVX2) { /* AVX-512 without VNNI too: the same integer sums */
        avx2[sb][w](y, N, a, K, wp, n0, ncols, m0, m1);
        return;
    }
#endif
    (void)isa;
    if (bits == 4)
        kw_x8_panel_scalar(4, sb, y, N, a, K, wp, n0, ncols, m0, m1);
    else if (bits == 8)
        kw_x8_panel_scalar(8, sb, y, N, a, K, wp, n0, ncols, m0, m1);
    else
        kw_x8_panel_scalar(6, 1, y, N, a, K, wp, n0, ncols, m0, m1);
}
