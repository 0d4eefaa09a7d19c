/* kw_wire_internal.h: declarations shared by the wire/ sources and white-box tests, not part of the public API
 * (kw__wire_ prefix). Field offsets of the on-wire structures, the row kernels and their ISA dispatch, the running
 * checksum, codec-spec validation, size arithmetic and the token-position codec.
 */
#ifndef KW_WIRE_INTERNAL_H
#define KW_WIRE_INTERNAL_H

#include <float.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "wire/kw_wire.h"

/* Magic and markers (FORMAT.md §3, §4.1, §8). */
extern const uint8_t kw__wire_magic[8];
extern const uint8_t kw__wire_section_marker[4];
extern const uint8_t kw__wire_trailer_marker[4];

/* Header field offsets (FORMAT.md §3). */
enum {
    KW__HDR_VERSION = 8,
    KW__HDR_HEADER_BYTES = 10,
    KW__HDR_FLAGS = 12,
    KW__HDR_N_LAYERS = 16,
    KW__HDR_N_SECTIONS = 18,
    KW__HDR_N_HEADS = 20,
    KW__HDR_HEAD_DIM = 22,
    KW__HDR_N_POSITIONS = 24,
    KW__HDR_SRC_DTYPE = 28,
    KW__HDR_RESERVED1 = 29, /* 3 bytes */
    KW__HDR_MODEL_ID = 32,
    KW__HDR_POLICY_ID = 40,
    KW__HDR_RESERVED2 = 44, /* 12 bytes */
    KW__HDR_CHECKSUM = 56,
};

/* Section head field offsets (FORMAT.md §4.1). */
enum {
    KW__SEC_LAYER = 4,
    KW__SEC_INDEX_ENC = 6,
    KW__SEC_FLAGS = 7,
    KW__SEC_N_TOKENS = 8,
    KW__SEC_INDEX_BYTES = 12,
    KW__SEC_RAW_BYTES = 16,
    KW__SEC_STORED_BYTES = 20,
    KW__SEC_N_GROUPS = 24,
    KW__SEC_RESERVED = 26,      /* 2 bytes */
    KW__SEC_OUTLIER_BYTES = 28, /* v1.1: the outlier table's size with KW__SEC_FLAG_OUTLIERS, else reserved */
};
#define KW__SEC_FLAG_ZSTD     0x01u
#define KW__SEC_FLAG_PRE_ROPE 0x02u /* v1.1: K taken before RoPE (FORMAT.md §5.11) */
#define KW__SEC_FLAG_OUTLIERS 0x04u /* v1.1: an outlier table ends the raw body (FORMAT.md §5.10) */
#define KW__SEC_FLAG_ROT_K    0x08u /* v1.1: K sent Hadamard-rotated (FORMAT.md §5.12) */
#define KW__SEC_FLAG_ROT_V    0x10u /* v1.1: V sent Hadamard-rotated (FORMAT.md §5.12) */
#define KW__SEC_FLAG_RANS     0x20u /* v1.1: body coded by the static rANS byte coder (FORMAT.md §5.15) */

/* Trailer field offsets (FORMAT.md §8). */
enum { KW__TRL_RESERVED = 4, KW__TRL_BLOB_BYTES = 8, KW__TRL_CHECKSUM = 16 };

/* ------------------------------------------------------------------------------------------------------------- */
/* Checksums: XXH3-64, seed 0. The running state lives inline in its owner (no allocation), aligned at use. */

typedef struct kw__wire_hash {
    unsigned char space[704]; /* an XXH3_state_t (576 bytes in xxHash 0.8) plus alignment slack */
} kw__wire_hash;

void kw__wire_hash_reset(kw__wire_hash *h);
void kw__wire_hash_update(kw__wire_hash *h, const void *data, size_t size);
uint64_t kw__wire_hash_digest(const kw__wire_hash *h);
uint64_t kw__wire_hash_bytes(const void *data, size_t size);
/* The same hash for data read from memory rather than the caches (the decoder verifying a section of a blob it has
 * not read yet): the build that streams fastest from memory, which need not be the widest one. */
uint64_t kw__wire_hash_cold(const void *data, size_t size);
/* The same hash built for one ISA each (kw_wire_hash_avx2.c, kw_wire_hash_avx512.c); kw__wire_hash_bytes and
 * kw__wire_hash_cold pick one, within KW_CPU_ISA's cap. */
uint64_t kw__wire_hash_bytes_sse2(const void *data, size_t size);
uint64_t kw__wire_hash_bytes_avx2(const void *data, size_t size);
uint64_t kw__wire_hash_bytes_avx512(const void *data, size_t size);
int kw__wire_hash_has_avx2(void);   /* 1 if this build has the AVX2 variant */
int kw__wire_hash_has_avx512(void); /* 1 if this build has the AVX-512 variant */

/* ------------------------------------------------------------------------------------------------------------- */
/* Row kernels: one implementation per ISA, identical results (tests/wire/test_wire_simd.c). */

typedef struct kw__wire_kernels {
    enum kw_wire_isa isa;
    /* The f32 bit pattern of max |x| over n elements of x in dtype (enum kw_wire_dtype). A result >= 0x7f800000
     * means a NaN or Inf is present. */
    uint32_t (*amax)(const void *x, uint32_t dtype, uint32_t n);
    /* Quantizes n elements (n a multiple of 8) of x in dtype with inv = fl32(1/s), s != 0, into the packed row dst:
     * kw_wire_quantize_row of the f32 values. */
    void (*quantize)(uint32_t codec, const void *x, uint32_t dtype, uint32_t n, float inv, uint8_t *dst);
    /* Dequantizes the packed row src (n elements) with scale s into out (dtype F32 or BF16). Returns 0 or
     * KW_E_WIRE_VALUE for a reserved code. */
    int (*dequantize)(uint32_t codec, const uint8_t *src, uint32_t n, float s, void *out, uint32_t out_dtype);
    /* The minimum and maximum of n >= 1 elements of x in dtype as the encoder's statistics rule finds them (FORMAT.md
     * §5.9): each is the first value in element order that attains it, so a zero minimum or maximum has the sign of
     * the first zero. Writes them to *lo and *hi and returns what amax returns for the same elements (>= 0x7f800000:
     * a NaN or Inf is present, and *lo and *hi are unspecified). */
    uint32_t (*minmax)(const void *x, uint32_t dtype, uint32_t n, float *lo, float *hi);
    /* Folds n elements of x in dtype into per-element statistics (channel zero points, FORMAT.md §5.9): element i
     * sets lo[i] = hi[i] = x[i] when seen[i] is 0, else lowers lo[i] / raises hi[i] only on a strict compare (an equal
     * value never replaces the earlier one); seen[i] becomes 1. Returns what amax returns for the same elements
     * (>= 0x7f800000: a NaN or Inf is present, and the arrays are unspecified). */
    uint32_t (*minmax_fold)(const void *x, uint32_t dtype, uint32_t n, float *lo, float *hi, float *seen);
    /* The integer rows of the v1.1 general path (zero points, channel scales; FORMAT.md §5.8, §5.9): n elements (n a
     * multiple of 8) of x in dtype, element i with the zero point z[u] (0 when symmetric) and inverse scale inv[u] of
     * its unit u = i >> shift (shift 0: one per element; 31: one for the row), to the b-bit fields
     * RNE(clamp(fl32(fl32(x - z[u]) * inv[u]), lo, hi)) mod 2^b, packed as FORMAT.md §5.3 says (bits 2, 3, 4, 6 or
     * 8). With z = 0, lo = -qmax and hi = qmax this is the symmetric integer code. */
    void (*quantize_affine)(const void *x, uint32_t dtype, uint32_t n, const float *z, const float *inv, uint32_t shift,
                            float lo, float hi, uint32_t bits, uint8_t *dst);
    /* Zero-point rows back: fl32(fl32(q * s[u]) + z[u]) of the unsigned b-bit fields q of src (n a multiple of 8,
     * u = i >> shift as above), into out (dtype F32 or BF16). Every code is valid. */
    void (*dequantize_affine)(const uint8_t *src, uint32_t bits, uint32_t n, const float *s, const float *z,
                              uint32_t shift, void *out, uint32_t out_dtype);
    /* The scales of n absmaxes (f32 bit patterns, as amax returns them) by kw_wire_scale_choose (FORMAT.md §5.4):
     * each code stored at dst + i * size, its value in s[i] and fl32(1/s) in inv[i] (0 for a zero scale). Returns
     * n, or the index of the first absmax that is not finite or has no scale in the dtype (that entry and the ones
     * after it are unspecified: the caller reports it with the scalar rule). */
    uint32_t (*scales)(const uint32_t *amax, uint32_t n, float qmax, uint32_t scale_dtype, uint8_t *dst, float *s,
                       float *inv);
    /* The Hadamard rotation (FORMAT.md §5.12) of one row of head_dim = 2^m values: src in src_dtype (bf16, f16 or
     * f32) widened to f32, rotated by kw__wire_rotate_row with sx from kw__wire_rotate_factors (the same butterflies,
     * each the same f32 operation, so the same bits), stored at dst in dst_dtype (f32 as is, bf16 and f16 by
     * kw_f32_to_bf16 / kw_f32_to_f16). src and dst may be the same f32 row. */
    void (*rotate)(const void *src, uint32_t src_dtype, void *dst, uint32_t dst_dtype, uint32_t head_dim,
                   const float *sx, int inverse);
    /* amax of every group of G values (G a divisor of D) of n_rows rows of D elements in dtype: out[r * (D / G) + c]
     * is amax(rows[r] + c * G elements, dtype, G), bit for bit. The vector kernels reduce many groups at once. */
    void (*amax_groups)(const uint8_t *const *rows, uint32_t n_rows, uint32_t dtype, uint32_t D, uint32_t G,
                        uint32_t *out);
    /* quantize of every group of G values of a row of n elements (G a divisor of n) with its own inverse scale:
     * group c's codes are those of quantize(codec, x + c * G elements, dtype, G, inv[c], ...), packed one after
     * another. A zero scale's group (inv 0) gets whatever x * 0 codes to: the caller writes kw_wire_zero_row there. */
    void (*quantize_groups)(uint32_t codec, const void *x, uint32_t dtype, uint32_t n, uint32_t G, const float *inv,
                            uint8_t *dst);
    /* quantize_groups of n_rows rows of D elements (rows[r] in dtype, anywhere), row r with the inverse scales
     * inv + r * (D / G) and its codes at dst + r * D * bits / 8: one call per block of rows, so that a kernel whose
     * groups need tables of their own (NF4) makes the next group's while it codes this one across rows too. */
    void (*quantize_group_rows)(uint32_t codec, const uint8_t *const *rows, uint32_t n_rows, uint32_t dtype, uint32_t D,
                                uint32_t G, const float *inv, uint8_t *dst);
    /* quantize of n_rows rows of n elements each (n a multiple of 8; rows[r] in dtype, anywhere) with their own
     * inverse scales inv[r], row r's codes at dst + r * n * bits / 8: one call per block of rows (per-token scales),
     * the constants and the dispatch once. A zero scale's row (inv 0) gets whatever x * 0 codes to: the caller writes
     * kw_wire_zero_row there. */
    void (*quantize_rows)(uint32_t codec, const uint8_t *const *rows, uint32_t n_rows, uint32_t dtype, uint32_t n,
                          const float *inv, uint8_t *dst);
    /* dequantize of every group of G values of a packed row of n elements (G a divisor of n, G * bits a multiple of
     * 8) with its own scale s[c], into out (F32 or BF16): the same values and status as dequantize group by group. */
    int (*dequantize_groups)(uint32_t codec, const uint8_t *src, uint32_t n, uint32_t G, const float *s, void *out,
                             uint32_t out_dtype);
    /* dequantize of n_rows packed rows of n elements (row r at src + r * n * bits / 8) with their own scales s[r]
     * into out[r] (F32 or BF16): the same values as dequantize row by row; KW_E_WIRE_VALUE if any row holds a
     * reserved code, else 0. */
    int (*dequantize_rows)(uint32_t codec, const uint8_t *src, uint32_t n_rows, uint32_t n, const float *s,
                           void *const *out, uint32_t out_dtype);
    /* The outlier scores (kw__wire_outlier_score) of n values x of one scale of m > 1 values centred at c whose
     * squared deviations from c sum to S, with (asym) or without zero points, into out: the bits of the scalar rule. */
    void (*outlier_scores)(const float *x, uint32_t n, int asym, double m, double c, double S, float *out);
    /* Two bit masks over n scores (bit i of byte i / 8, the last byte's bits past n cleared) by their keys k =
     * kw__wire_score_key: above[i] = k > hi, in[i] = lo <= k <= hi. */
    void (*outlier_bits)(const float *sc, uint64_t n, int32_t lo, int32_t hi, uint8_t *above, uint8_t *in);
} kw__wire_kernels;

/* A float's bits as a signed key in the float's order (-0 just below +0; NaN never asked). */
static inline int32_t kw__wire_score_key(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return (int32_t)(u ^ ((uint32_t)((int32_t)u >> 31) >> 1));
}

/* The outlier score of value x (FORMAT.md §5.10's encoder choice, kw_wire_outliers.c) in a scale of m > 1 values
 * centred at c whose squared deviations from c sum to S: x is compared with the other m - 1 values, their centre c'
 * (x - c' = dev * m/(m-1) with zero points, x without) and mean square deviation from it, msd (their squared
 * deviations about c' sum to S - dev^2 * m/(m-1); about 0, S - x^2): (x - c')^2 / msd, FLT_MAX if that overflows or
 * msd <= 0 (a spike among equal values; 0 for a value equal to them). Each step one double operation, so the vector
 * kernels give the same bits. */
static inline float kw__wire_outlier_score(int asym, double x, double m, double c, double S) {
    double off, msd;
    if (asym) {
        const double dev = x - c;
        off = dev * m / (m - 1.0);
        msd = (S - dev * dev * m / (m - 1.0)) / (m - 1.0);
    } else {
        off = x;
        msd = (S - x * x) / (m - 1.0);
    }
    const double score = msd > 0.0 ? off * off / msd : off != 0.0 ? FLT_MAX : 0.0;
    return score < FLT_MAX ? (float)score : FLT_MAX;
}

/* The kernels for an ISA (resolved first: never NULL). */
const kw__wire_kernels *kw__wire_kernels_get(enum kw_wire_isa isa);

/* Scalar implementations, also the fallback of the vector ones for cases they do not cover. */
void kw__wire_outlier_bits_scalar(const float *sc, uint64_t n, int32_t lo, int32_t hi, uint8_t *above, uint8_t *in);
void kw__wire_outlier_scores_scalar(const float *x, uint32_t n, int asym, double m, double c, double S, float *out);
uint32_t kw__wire_amax_scalar(const void *x, uint32_t dtype, uint32_t n);
uint32_t kw__wire_minmax_scalar(const void *x, uint32_t dtype, uint32_t n, float *lo, float *hi);
uint32_t kw__wire_minmax_fold_scalar(const void *x, uint32_t dtype, uint32_t n, float *lo, float *hi, float *seen);
uint32_t kw__wire_scales_scalar(const uint32_t *amax, uint32_t n, float qmax, uint32_t scale_dtype, uint8_t *dst,
                                float *s, float *inv);
void kw__wire_quantize_affine_scalar(const void *x, uint32_t dtype, uint32_t n, const float *z, const float *inv,
                                     uint32_t shift, float lo, float hi, uint32_t bits, uint8_t *dst);
void kw__wire_dequantize_affine_scalar(const uint8_t *src, uint32_t bits, uint32_t n, const float *s, const float *z,
                                       uint32_t shift, void *out, uint32_t out_dtype);
/* The signed zero of the first element of x that is +0 or -0 (the fix-up of a vector minmax whose result is 0). */
float kw__wire_first_zero(const void *x, uint32_t dtype, uint32_t n);
void kw__wire_quantize_scalar(uint32_t codec, const void *x, uint32_t dtype, uint32_t n, float inv, uint8_t *dst);
void kw__wire_amax_groups_scalar(const uint8_t *const *rows, uint32_t n_rows, uint32_t dtype, uint32_t D, uint32_t G,
                                 uint32_t *out);
int kw__wire_dequantize_groups_scalar(uint32_t codec, const uint8_t *src, uint32_t n, uint32_t G, const float *s,
                                      void *out, uint32_t out_dtype);
void kw__wire_quantize_groups_scalar(uint32_t codec, const void *x, uint32_t dtype, uint32_t n, uint32_t G,
                                     const float *inv, uint8_t *dst);
void kw__wire_quantize_group_rows_scalar(uint32_t codec, const uint8_t *const *rows, uint32_t n_rows, uint32_t dtype,
                                         uint32_t D, uint32_t G, const float *inv, uint8_t *dst);
/* quantize_group_rows as one quantize_groups call per row (the scalar kernel, and the vector kernels' other cases). */
void kw__wire_quantize_group_rows_each(void (*quantize_groups)(uint32_t, const void *, uint32_t, uint32_t, uint32_t,
                                                               const float *, uint8_t *),
                                       uint32_t codec, const uint8_t *const *rows, uint32_t n_rows, uint32_t dtype,
                                       uint32_t D, uint32_t G, const float *inv, uint8_t *dst);
/* x86-64 only: the AVX-512 NF4 kernel's cell tables (32 threshold bit patterns, 32 counts; kw_wire_simd_x86.c). */
void kw__wire_nf4_cells(const uint32_t **thr, const int32_t **base);
int kw__wire_dequantize_rows_scalar(uint32_t codec, const uint8_t *src, uint32_t n_rows, uint32_t n, const float *s,
                                    void *const *out, uint32_t out_dtype);
void kw__wire_quantize_rows_scalar(uint32_t codec, const uint8_t *const *rows, uint32_t n_rows, uint32_t dtype,
                                   uint32_t n, const float *inv, uint8_t *dst);
int kw__wire_dequantize_scalar(uint32_t codec, const uint8_t *src, uint32_t n, float s, void *out, uint32_t out_dtype);

/* Converts n input elements of dtype (enum kw_wire_dtype) to f32, exactly. */
void kw__wire_load_f32(const void *x, uint32_t dtype, uint32_t n, float *out);

/* The vector kernel tables, NULL when the build or the CPU lacks them. */
const kw__wire_kernels *kw__wire_kernels_avx2(void);
const kw__wire_kernels *kw__wire_kernels_avx512(void);

/* Bytes per element of an input dtype (2 or 4), 0 if unknown. */
static inline size_t kw__wire_dtype_size(uint32_t dtype) {
    return dtype == KW_WIRE_DTYPE_F32 ? 4 : (dtype == KW_WIRE_DTYPE_BF16 || dtype == KW_WIRE_DTYPE_F16) ? 2 : 0;
}

/* ------------------------------------------------------------------------------------------------------------- */
/* Codec specs and sizes */

/* Validates a tensor descriptor (its four bytes) for a head_dim, with the v1.1 codecs, granularity and zero points
 * allowed if v11: 0, KW_E_WIRE_CODEC (unknown id or forbidden combination, G not a divisor of head_dim or below 4, L
 * too large) or KW_E_WIRE_RESERVED (group_log2 set without channel groups or channel runs; v1.1: bits 4..6 of the
 * scale dtype byte). In v1 the scale dtype byte is a dtype only, so the zero-point flag is an unknown dtype. */
int kw__wire_spec_check(const kw_wire_codec_spec *spec, uint32_t head_dim, int v11);

/* 1 if a tensor takes the general scalar path of the encoder and decoder (v1.1): zero points, channel scales, and
 * channel groups whose codes are not whole bytes (int3 with G = 4); the row kernels take the rest. */
static inline int kw__wire_general_path(const kw_wire_codec_spec *spec) {
    return kw_wire_spec_asym(spec) || spec->granularity == KW_WIRE_GRAN_CHANNEL ||
           (spec->granularity == KW_WIRE_GRAN_GROUP && ((kw_wire_codec_bits(spec->codec) << spec->group_log2) & 7u));
}

/* 1 for the on-wire version of v1.1 (else v1). */
static inline int kw__wire_is_v11(uint16_t version) {
    return version == KW_WIRE_VERSION_1_1;
}

/* Scales per tensor of a group of n_tokens tokens. */
uint64_t kw__wire_scale_count(const kw_wire_codec_spec *spec, uint32_t n_heads, uint32_t n_tokens, uint32_t head_dim);

/* Code bytes of a tensor of a group. */
uint64_t kw__wire_code_bytes(const kw_wire_codec_spec *spec, uint32_t n_heads, uint32_t n_tokens, uint32_t head_dim);

/* Bytes of the scale block of a tensor of a group (the zero-point block, if any, has the same size). */
uint64_t kw__wire_scale_block_bytes(const kw_wire_codec_spec *spec, uint32_t n_heads, uint32_t n_tokens,
                                    uint32_t head_dim);

/* Scale bytes + zero-point bytes + code bytes. */
uint64_t kw__wire_tensor_bytes(const kw_wire_codec_spec *spec, uint32_t n_heads, uint32_t n_tokens, uint32_t head_dim);

/* Size of a fixed-size index encoding (all but VARINT) for T tokens out of P positions. */
uint64_t kw__wire_index_fixed_bytes(uint32_t encoding, uint32_t n_tokens, uint32_t n_positions);

/* kw_wire_index_choose on a summary of T >= 1 valid positions (strictly increasing, below P): the first and the last,
 * and varint = the VARINT encoding's size (the varints of the first position and of each gap minus one). */
int kw__wire_index_pick(uint32_t n_positions, uint32_t n_tokens, uint32_t first, uint32_t last, uint64_t varint,
                        uint8_t request, uint8_t *encoding, size_t *bytes);

/* The most index bytes any T positions out of P take with this encoding request (a valid enum kw_wire_index id or
 * AUTO): AUTO the smaller of u32's 4T and the bitmap (both always apply), VARINT T times the varint of P-1, the others
 * their fixed size. */
uint64_t kw__wire_index_bound(uint32_t encoding, uint32_t n_tokens, uint32_t n_positions);

/* Bytes of the LEB128 varint of v. */
static inline uint32_t kw__wire_varint_len(uint32_t v) {
    uint32_t n = 1;
    while (v >= 0x80u) {
        v >>= 7;
        ++n;
    }
    return n;
}

/* Writes the index block of `encoding` for the T positions (NULL: 0..T-1) into dst (exactly the size
 * kw_wire_index_choose reported). */
void kw__wire_index_write(uint32_t encoding, const uint32_t *positions, uint32_t n_tokens, uint32_t n_positions,
                          uint8_t *dst);

/* Decodes and validates an index block (FORMAT.md §6): T positions out of P, into out (T entries) unless out is
 * NULL. Returns 0, KW_E_WIRE_INDICES, KW_E_WIRE_RESERVED (bitmap padding) or KW_E_WIRE_CORRUPT (size). */
int kw__wire_index_decode(uint32_t encoding, const uint8_t *data, uint32_t bytes, uint32_t n_tokens,
                          uint32_t n_positions, uint32_t *out);

/* Packs the D b-bit fields q[0..D) (already masked; D a multiple of 8) into a row in the layout of FORMAT.md §5.3,
 * and unpacks a row into unsigned fields: the row at a time, for the general path. */
static inline void kw__wire_pack_fields(uint32_t bits, const uint8_t *q, uint32_t D, uint8_t *row) {
    switch (bits) {
    case 8:
        memcpy(row, q, D);
        return;
    case 4:
        for (uint32_t i = 0; i < D / 2; ++i)
            row[i] = (uint8_t)(q[2 * i] | q[2 * i + 1] << 4);
        return;
    case 2:
        for (uint32_t i = 0; i < D / 4; ++i)
            row[i] = (uint8_t)(q[4 * i] | q[4 * i + 1] << 2 | q[4 * i + 2] << 4 | q[4 * i + 3] << 6);
        return;
    case 6:
        for (uint32_t i = 0; i < D / 4; ++i) {
            const uint32_t w = (uint32_t)q[4 * i] | (uint32_t)q[4 * i + 1] << 6 | (uint32_t)q[4 * i + 2] << 12 |
                               (uint32_t)q[4 * i + 3] << 18;
            row[3 * i] = (uint8_t)w, row[3 * i + 1] = (uint8_t)(w >> 8), row[3 * i + 2] = (uint8_t)(w >> 16);
        }
        return;
    default: /* 3 */
        for (uint32_t i = 0; i < D / 8; ++i) {
            uint32_t w = 0;
            for (uint32_t k = 0; k < 8; ++k)
                w |= (uint32_t)q[8 * i + k] << (3 * k);
            row[3 * i] = (uint8_t)w, row[3 * i + 1] = (uint8_t)(w >> 8), row[3 * i + 2] = (uint8_t)(w >> 16);
        }
        return;
    }
}

static inline void kw__wire_unpack_fields(uint32_t bits, const uint8_t *row, uint32_t D, uint8_t *q) {
    switch (bits) {
    case 8:
        memcpy(q, row, D);
        return;
    case 4:
        for (uint32_t i = 0; i < D / 2; ++i)
            q[2 * i] = row[i] & 15u, q[2 * i + 1] = row[i] >> 4;
        return;
    case 2:
        for (uint32_t i = 0; i < D / 4; ++i)
            for (uint32_t k = 0; k < 4; ++k)
                q[4 * i + k] = (row[i] >> (2 * k)) & 3u;
        return;
    case 6:
        for (uint32_t i = 0; i < D / 4; ++i) {
            const uint32_t w = (uint32_t)row[3 * i] | (uint32_t)row[3 * i + 1] << 8 | (uint32_t)row[3 * i + 2] << 16;
            for (uint32_t k = 0; k < 4; ++k)
                q[4 * i + k] = (w >> (6 * k)) & 63u;
        }
        return;
    default: /* 3 */
        for (uint32_t i = 0; i < D / 8; ++i) {
            const uint32_t w = (uint32_t)row[3 * i] | (uint32_t)row[3 * i + 1] << 8 | (uint32_t)row[3 * i + 2] << 16;
            for (uint32_t k = 0; k < 8; ++k)
                q[8 * i + k] = (w >> (3 * k)) & 7u;
        }
        return;
    }
}

/* ------------------------------------------------------------------------------------------------------------- */
/* The outlier table (v1.1, FORMAT.md §5.10; kw_wire_outliers.c) */

#define KW__OUTLIER_HEAD_BYTES 8 /* u32 count, u8 value dtype, 3 reserved */

/* kw_wire_outlier_select with the scores from kr's kernel (every ISA gives the same bits) and in *scratch (*cap bytes,
 * grown with realloc as needed; owned by the caller, who frees it), so an encoder reuses one buffer for every
 * section. */
int kw__wire_outlier_select_scratch(const kw__wire_kernels *kr, const kw_wire_header *hdr, const kw_wire_layer_in *in,
                                    const kw_wire_policy *pol, uint32_t count, uint8_t *mask, uint32_t *n_chosen,
                                    void **scratch, size_t *cap);

/* Bytes per value of an outlier value dtype (enum kw_wire_dtype), 0 if unknown. */
size_t kw__wire_outlier_value_size(uint32_t dtype);

/* The most bytes the table of min(count, 2*H*T*D) outliers can take (0 for none): every index at its longest varint.
 * dtype 0 is the header's src_dtype. */
uint64_t kw__wire_outlier_table_bound(const kw_wire_header *hdr, uint32_t n_tokens, uint32_t count, uint32_t dtype);

/* The exact bytes of the table of the n elements set in mask (elems bits), values in dtype. */
uint64_t kw__wire_outlier_table_bytes(const uint8_t *mask, uint64_t elems, uint32_t n, uint32_t dtype);

/* Writes that table (bytes as kw__wire_outlier_table_bytes gave) with the values of in: KW_E_WIRE_RANGE if a value
 * has no finite representation in dtype within the bf16 range, or is past rmax[kv] for an element of K (kv 0) or V
 * (1) where that is non-zero (a rotated tensor's kw_wire_rotated_max). */
int kw__wire_outlier_table_write(const kw_wire_header *hdr, const kw_wire_layer_in *in, const uint8_t *mask, uint32_t n,
                                 uint32_t dtype, const float rmax[2], uint8_t *dst, uint64_t bytes);

/* Validates a table of `bytes` bytes over elems elements (FORMAT.md §9.2): sets its entry count and value dtype.
 * Errors: KW_E_WIRE_CORRUPT (sizes, varints), KW_E_WIRE_RESERVED, KW_E_WIRE_CODEC (dtype), KW_E_WIRE_INDICES (an
 * element past the section), KW_E_WIRE_VALUE (a value not finite or past the largest bf16). */
int kw__wire_outlier_table_check(const uint8_t *tab, uint32_t bytes, uint64_t elems, uint32_t *n_out,
                                 uint8_t *dtype_out);

/* The table of n outliers given as ascending element numbers (elems) and their values: its bytes, and its writer
 * (KW_E_WIRE_RANGE for a value dtype cannot hold or past rmax, elements below half being K's), as
 * kw__wire_outlier_table_bytes / _write from a mask. */
uint64_t kw__wire_outlier_list_bytes(const uint32_t *elems, uint32_t n, uint32_t dtype);
int kw__wire_outlier_list_write(const uint32_t *elems, const float *values, uint32_t n, uint32_t dtype, uint64_t half,
                                const float rmax[2], uint8_t *dst, uint64_t bytes);

/* Writes a verified section's outlier values over the decoded K (k) and V (v) views; either may be NULL. */
int kw__wire_outlier_table_apply(const kw_wire_section *sec, const kw_wire_tensor_out *k, const kw_wire_tensor_out *v);

/* The Hadamard rotation's per-channel factors s_i * 2^-floor(m/2) (forward) or s_i * 2^-ceil(m/2) (inverse) into
 * sx[0..head_dim), and one row rotated with them (FORMAT.md §5.12; head_dim a checked power of two). */
void kw__wire_rotate_factors(uint32_t head_dim, int inverse, float *sx);
void kw__wire_rotate_row(float *x, uint32_t head_dim, const float *sx, int inverse);
/* kw__wire_kernels.rotate of the scalar kernels: kw__wire_load_f32, kw__wire_rotate_row, then the store. */
void kw__wire_rotate_scalar(const void *src, uint32_t src_dtype, void *dst, uint32_t dst_dtype, uint32_t head_dim,
                            const float *sx, int inverse);

#endif /* KW_WIRE_INTERNAL_H */
