/* kw_wire.h: the KVWire v1 and v1.1 container (docs/FORMAT.md): an encoder that writes a blob section by section into
 * caller buffers, a streaming decoder that accepts the blob in chunks of any size, a one-shot reader on top of it,
 * exact size prediction, and the byte breakdown of a blob.
 *
 * wire/ is pure: no I/O, no global state, no threads. Every function returns 0 (or a documented non-negative value)
 * or a negative kw_status with a reason in kw_error_detail(). Peer input never makes it abort. The per-value codec
 * math lives in kw_wire_quant.h, shared with CUDA.
 *
 * Tensor layout. K and V of one layer are (H, T, D) per FORMAT.md §5.3: H = n_kv_heads, T = selected tokens, D =
 * head_dim, D contiguous. Views carry a head stride and a token stride in elements, so both the Hugging Face cache
 * layout (H, T, D) (head_stride = T*D, token_stride = D) and the kv_load layout (T, H, D) (head_stride = D,
 * token_stride = H*D) are accepted without copies; an optional row map gathers selected tokens straight from a full
 * cache.
 */
#ifndef KW_WIRE_H
#define KW_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "wire/kw_wire_quant.h"

/* ------------------------------------------------------------------------------------------------------------- */
/* Format constants (FORMAT.md §3, §4, §8, §9.1) */

#define KW_WIRE_VERSION            1      /* v1 on the wire (FORMAT.md §3) */
#define KW_WIRE_VERSION_1_1        0x0101 /* v1.1 on the wire: major in the high byte, minor in the low one */
#define KW_WIRE_HEADER_BYTES       64
#define KW_WIRE_SECTION_HEAD_BYTES 32
#define KW_WIRE_GROUP_DESC_BYTES   12
#define KW_WIRE_CHECKSUM_BYTES     8
#define KW_WIRE_TRAILER_BYTES      24

#define KW_WIRE_MAX_LAYERS            1024
#define KW_WIRE_MAX_HEADS             256
#define KW_WIRE_MAX_HEAD_DIM          1024
#define KW_WIRE_MAX_POSITIONS         (1u << 24)
#define KW_WIRE_MAX_GROUPS            4096
#define KW_WIRE_MAX_SECTION_BYTES     0xffffffffu         /* raw body, format maximum (u32 field) */
#define KW_WIRE_DEFAULT_SECTION_BYTES ((uint64_t)1 << 30) /* raw body, default decoder limit */

/* Element dtypes of encoder inputs (and the header's src_dtype) and of decoder outputs. Numbers are on the wire. */
enum kw_wire_dtype {
    KW_WIRE_DTYPE_BF16 = 1,
    KW_WIRE_DTYPE_F16 = 2, /* encoder input only */
    KW_WIRE_DTYPE_F32 = 3,
};

/* Token position encodings (FORMAT.md §6). Numbers are on the wire; 0 is never on the wire and means "choose" in a
 * policy, so a zeroed policy picks the smallest encoding. */
enum kw_wire_index {
    KW_WIRE_INDEX_AUTO = 0,   /* encoder policy: the smallest applicable encoding, ties to the lowest id */
    KW_WIRE_INDEX_FULL = 1,   /* positions 0..T-1, no bytes */
    KW_WIRE_INDEX_RANGE = 2,  /* u32 start */
    KW_WIRE_INDEX_U16 = 3,    /* T u16 */
    KW_WIRE_INDEX_U32 = 4,    /* T u32 */
    KW_WIRE_INDEX_BITMAP = 5, /* ceil(n_positions/8) bytes */
    KW_WIRE_INDEX_VARINT = 6, /* LEB128 deltas */
};
#define KW_WIRE_INDEX_COUNT 7 /* wire ids are 1..KW_WIRE_INDEX_COUNT-1 */

/* Vector code paths. AUTO picks the best the CPU supports, lowered to KW_CPU_ISA=scalar|avx2|avx512 when that is set
 * (common/kw_isa.h: the CPU backend's kernels follow the same variable); the others force one whatever KW_CPU_ISA
 * says (tests compare them, `kvwire bench codec --isa` times them). All paths produce identical bytes and values. */
enum kw_wire_isa {
    KW_WIRE_ISA_AUTO = 0,
    KW_WIRE_ISA_SCALAR = 1,
    KW_WIRE_ISA_AVX2 = 2,
    KW_WIRE_ISA_AVX512 = 3,
};

/* Returns the ISA that `isa` resolves to on this CPU (AUTO -> the best available up to KW_CPU_ISA's cap; an
 * unavailable request -> the best available below it). */
enum kw_wire_isa kw_wire_isa_resolve(enum kw_wire_isa isa);
const char *kw_wire_isa_name(enum kw_wire_isa isa);

/* Names for printing ("int4", "token", "e8m0", "bitmap"); "?" for unknown ids. Static strings. */
const char *kw_wire_codec_name(uint32_t codec);
const char *kw_wire_gran_name(uint32_t gran);
const char *kw_wire_scale_name(uint32_t scale_dtype);
const char *kw_wire_index_name(uint32_t index_encoding);
const char *kw_wire_dtype_name(uint32_t dtype);

/* ------------------------------------------------------------------------------------------------------------- */
/* Blob identity and codec choice */

/* The fixed header's content (FORMAT.md §3), minus the constant and reserved fields. */
typedef struct kw_wire_header {
    uint16_t n_layers;    /* layers of the sharer model */
    uint16_t n_sections;  /* sections the blob will carry, <= n_layers */
    uint16_t n_kv_heads;  /* H */
    uint16_t head_dim;    /* D, a multiple of 8 */
    uint32_t n_positions; /* length of the sharer sequence; positions are < n_positions */
    uint8_t src_dtype;    /* enum kw_wire_dtype of the encoder's inputs */
    uint64_t model_id;    /* opaque sharer model identity */
    uint32_t policy_id;   /* opaque policy identity */
    uint16_t version;     /* 0 or KW_WIRE_VERSION: v1; KW_WIRE_VERSION_1_1: v1.1, required by any section that uses
                             a v1.1 feature (kw_wire_spec_needs_v11). The decoder sets the version read. */
} kw_wire_header;

/* The codec of one tensor of a token group (FORMAT.md §5.1). Passthrough codecs take granularity and scale dtype
 * NONE; the others any granularity and scale dtype. group_log2 is log2(G) for KW_WIRE_GRAN_GROUP (G >= 4, G divides
 * head_dim), log2(L) for KW_WIRE_GRAN_CHANNEL (L = 1..2^24 tokens per run), else 0. The four fields are the
 * descriptor's four bytes (v1.1: scale_dtype | KW_WIRE_SCALE_ZERO_POINTS gives an integer codec a zero point beside
 * each scale, with a scale dtype f16, bf16 or f32; KW_WIRE_SCALE_LOG8 is v1.1 too, symmetric integer codecs only);
 * read them through kw_wire_spec_asym and kw_wire_spec_scale. */
typedef struct kw_wire_codec_spec {
    uint8_t codec;       /* enum kw_wire_codec */
    uint8_t granularity; /* enum kw_wire_gran */
    uint8_t scale_dtype; /* enum kw_wire_scale, possibly | KW_WIRE_SCALE_ZERO_POINTS (v1.1) */
    uint8_t group_log2;
} kw_wire_codec_spec;

/* 1 if the spec has zero points (v1.1, FORMAT.md §5.9). */
static inline int kw_wire_spec_asym(const kw_wire_codec_spec *spec) {
    return (spec->scale_dtype & KW_WIRE_SCALE_ZERO_POINTS) != 0;
}

/* The scale dtype of a validated spec without the zero-point flag (enum kw_wire_scale). */
static inline uint32_t kw_wire_spec_scale(const kw_wire_codec_spec *spec) {
    return spec->scale_dtype & KW_WIRE_SCALE_DTYPE_MASK;
}

/* 1 if the spec uses a v1.1 feature (int2, int3, channel granularity, zero points), so that its blob must be v1.1. */
int kw_wire_spec_needs_v11(const kw_wire_codec_spec *spec);

/* A run of consecutive selected tokens sharing one codec for K and one for V. */
typedef struct kw_wire_token_group {
    uint32_t n_tokens;
    kw_wire_codec_spec k, v;
} kw_wire_token_group;

/* A per-token schedule entry (issue 15; kvwire kvstats' T rules, SharePolicy.token_schedule): the rows at positions
 * first..last (inclusive), or with from_end the rows at the last `first` positions of the prompt (last unused), take
 * K codec k and V codec v in every quantized section, as token groups of their own (FORMAT.md §4.2). */
typedef struct kw_wire_token_rule {
    uint32_t first, last;
    int from_end;
    kw_wire_codec_spec k, v;
} kw_wire_token_rule;

/* Splits a section's n rows into token groups: row i (position positions[i], or p0 + i when positions is NULL) takes
 * the first of rules[0 .. n_rules) that covers it, else k and v (the layer's codecs); each run of consecutive rows
 * taking the same entry is one group. n_positions is the prompt's length (what from_end counts from). groups (n
 * entries, owned by the caller) receives *n_groups groups; *n_groups 0 when no row takes a rule (the section is then
 * one plain group: k and v). strict: a row that two rules cover is KW_E_INVALID_ARG, naming both (the two lowest
 * entries covering the first such row). The rules become sorted intervals once: O(R log R + R^2 / 64 + n log R) for R
 * rules (the R^2 / 64 a sweep over the sorted edges with one bit per rule), whatever the prompt's length and the
 * positions' values (a peer's schedule); KW_E_NOMEM for their 80 bytes each, KW_E_INVALID_ARG beyond 2^31 - 1 rules. */
int kw_wire_token_split(const kw_wire_token_rule *rules, uint32_t n_rules, int strict, const uint32_t *positions,
                        uint32_t p0, uint32_t n, uint32_t n_positions, const kw_wire_codec_spec *k,
                        const kw_wire_codec_spec *v, kw_wire_token_group *groups, uint32_t *n_groups);

/* How one section is encoded. */
typedef struct kw_wire_policy {
    kw_wire_codec_spec k, v;           /* the codecs of the single token group when n_groups == 0 */
    uint32_t n_groups;                 /* 0: one group of all tokens; else the groups below */
    const kw_wire_token_group *groups; /* borrowed; n_groups entries whose n_tokens sum to the section's tokens */
    uint8_t index_encoding;            /* enum kw_wire_index; KW_WIRE_INDEX_AUTO for the smallest */
    int zstd_level;                    /* 0: never compress; else the zstd level (1..22, or negative fast levels);
                                          the body is compressed only if that makes it strictly smaller */
    uint32_t outliers;     /* v1.1: exactly min(outliers, 2*H*T*D) elements of K and V are sent exact in an outlier
                              table (FORMAT.md §5.10) and left out of the scales; 0: none. kw_wire_outlier_select
                              says which. Only kw_wire_encoder_write_section can send them. */
    uint8_t outlier_dtype; /* enum kw_wire_dtype of the outliers' values; 0: the input's dtype (exact) */
    uint8_t pre_rope;      /* v1.1: 1 marks the section's K as taken before RoPE (FORMAT.md §5.11): the caller passes
                              pre-RoPE keys and the receiver applies RoPE after decoding; wire/ only carries the flag */
    uint8_t rotate;        /* v1.1: bit 0 K, bit 1 V sent rotated by the randomized Hadamard transform (FORMAT.md
                              §5.12): the encoder rotates each head vector before quantizing, kw_wire_section_dequantize
                              rotates back; head_dim must be a power of two, codecs quantizing. Only
                              kw_wire_encoder_write_section rotates rows itself (begin_section takes rows the caller
                              rotated). A scale unit or outlier of a rotated tensor past kw_wire_rotated_max
                              (wire/kw_wire_quant.h) is KW_E_WIRE_RANGE; a finite row whose rotation overflows the
                              src dtype comes out infinite, KW_E_WIRE_NONFINITE. */
    uint8_t clip;          /* an encoder choice, not on the wire (FORMAT.md §5.13): bit 0 K, bit 1 V take, for the
                              integer codecs, per scale unit the clipped scale (and zero point) of least squared
                              reconstruction error among the absmax (min/max) range times 1, 0.95, ..., 0.5; codes
                              saturate. Other codecs are unchanged. kw_wire_encoder_write_section clips; the
                              begin_section calls take the flag as given (it changes no framing byte): a caller
                              writing the tensors itself (the device encoder, kw_op_wire_encode_clip) clips them. */
    uint8_t code_limit_k;  /* an encoder choice, not on the wire (FORMAT.md §5.14): 0, or K's integer codes held to
                              at most this magnitude (with zero points: 0 .. code_limit) where that is below the codec's
                              own qmax, the scale chosen for that range: a coarser step in the same container, which
                              zstd then stores in fewer bits. It applies to the tensors coded by k (the layer's own
                              codec), not to token groups of other codecs; nf4, fp8 and passthrough are unchanged.
                              Only kw_wire_encoder_write_section applies it. */
    uint8_t code_limit_v;  /* the same for V */
    uint8_t rans;          /* v1.1: 1 codes the body with the static rANS byte coder (FORMAT.md §5.15, section flag
                              bit 5) where that makes it strictly smaller; with zstd_level too, the smaller of the
                              two is stored */
} kw_wire_policy;

/* The randomized Hadamard rotation of head vectors (FORMAT.md §5.12, kw_wire_rotate.c). kw_wire_rotate_log2: m with
 * head_dim = 2^m (2..4096), else -1. kw_wire_rotate_sign: the sign s_i of channel i (+1 or -1). kw_wire_rotate_rows
 * rotates n_rows rows of head_dim f32 values (row r at x + r * row_stride) in place: forward (inverse 0) as an encoder
 * does before quantizing, y = 2^-floor(m/2) H diag(s) x; inverse (1) as a decoder does after, x = 2^-ceil(m/2)
 * diag(s) H y. Exact IEEE f32 in a fixed order: the same bits on every build.
 * @return 0 or KW_E_INVALID_ARG (head_dim not a power of two in 2..4096, or row_stride < head_dim for n_rows > 1). */
int kw_wire_rotate_log2(uint32_t head_dim);
int kw_wire_rotate_sign(uint32_t i);
int kw_wire_rotate_rows(float *x, size_t n_rows, size_t row_stride, uint32_t head_dim, int inverse);

/* 1 if the policy's code limits change any tensor (FORMAT.md §5.14): code_limit_k below the largest code of an
 * integer k codec, or code_limit_v of v. Only kw_wire_encoder_write_section applies them: the begin_section calls
 * refuse such a policy, and a caller encoding tensors itself (the sharer's device encoder) leaves it to the CPU. */
int kw_wire_policy_code_limited(const kw_wire_policy *pol);

/* 1 if any token group of the policy (or its outliers or pre-RoPE flag) needs v1.1 (a header for it then needs
 * version KW_WIRE_VERSION_1_1). */
int kw_wire_policy_needs_v11(const kw_wire_policy *pol);

/* Reads a codec spec from its names (kw_wire_spec.c): codec ("int4"; v1.1 adds "int3", "int2", and the suffix
 * "-asym" after an integer codec for zero points, e.g. "int2-asym"), granularity ("layer", "head", "token",
 * "group<G>" with G a power of two in 4..1024; v1.1 adds "channel<L>" with L a power of two in 1..2^24 tokens per
 * run) and scale dtype ("f16", "bf16", "f32", "e8m0"; not e8m0 with -asym; v1.1 adds "log8", the receiver cache's
 * one-byte log scale, for the integer codecs without -asym); the passthrough codecs (bf16, f16)
 * ignore the other two. Whether G divides a head is the encoder's check. kw_wire_spec_parse accepts the v1 names only
 * (what the daemons can send today); kw_wire_spec_parse_v with version KW_WIRE_VERSION_1_1 accepts the v1.1 names.
 * @return 0 or KW_E_INVALID_ARG naming the bad part (or saying that a name needs v1.1). */
int kw_wire_spec_parse(const char *codec, const char *gran, const char *scale, kw_wire_codec_spec *out);
int kw_wire_spec_parse_v(const char *codec, const char *gran, const char *scale, uint16_t version,
                         kw_wire_codec_spec *out);

/* The granularity of spec as kw_wire_spec_parse reads it ("token", "group32", "channel16"; "none" for passthrough)
 * into buf (at least 16 bytes). */
void kw_wire_spec_gran_format(const kw_wire_codec_spec *spec, char *buf, size_t cap);

/* The codec of spec as kw_wire_spec_parse reads it ("int4", "int2-asym") into buf (at least 16 bytes). */
void kw_wire_spec_codec_format(const kw_wire_codec_spec *spec, char *buf, size_t cap);

/* ------------------------------------------------------------------------------------------------------------- */
/* Encoder */

/* A borrowed read-only view of one layer's K or V: element (h, t, d) is at data[row(t) * token_stride +
 * h * head_stride + d] where row(t) = rows ? rows[t] : t, in elements of dtype (the header's src_dtype). */
typedef struct kw_wire_tensor_in {
    const void *data;     /* borrowed */
    size_t head_stride;   /* elements between heads */
    size_t token_stride;  /* elements between rows */
    const uint32_t *rows; /* borrowed, optional: T row numbers (gather) */
} kw_wire_tensor_in;

/* One layer's selected tokens. */
typedef struct kw_wire_layer_in {
    uint32_t layer;            /* < n_layers, greater than the previous section's */
    uint32_t n_tokens;         /* T >= 1 */
    const uint32_t *positions; /* borrowed: T strictly increasing positions < n_positions; NULL means 0..T-1 */
    kw_wire_tensor_in k, v;
} kw_wire_layer_in;

/* Where the bytes of a blob go (FORMAT.md §7). total = header + indices + scales + payload + outliers + checksums -
 * saved. */
typedef struct kw_wire_breakdown {
    uint64_t header;            /* blob header and trailer (without checksums), section heads, group tables */
    uint64_t indices;           /* index blocks (before compression) */
    uint64_t scales;            /* scale and zero-point blocks (before compression) */
    uint64_t zero_points;       /* of which zero-point blocks (v1.1; already counted in scales) */
    uint64_t payload;           /* code blocks (before compression) */
    uint64_t outliers;          /* outlier tables (v1.1, before compression) */
    uint64_t checksums;         /* header, section and blob checksums */
    uint64_t compression_saved; /* sum over compressed sections of raw_body_bytes - stored_body_bytes */
    uint64_t total;             /* bytes of the blob so far */
    uint32_t sections;
    uint32_t compressed_sections;
} kw_wire_breakdown;

typedef struct kw_wire_encoder kw_wire_encoder;

typedef struct kw_wire_encoder_options {
    uint8_t isa; /* enum kw_wire_isa; 0 (AUTO) is right for everything but tests */
} kw_wire_encoder_options;

/* Creates an encoder for a blob with this header (validated against the format limits: KW_E_INVALID_ARG).
 * opt may be NULL. The encoder owns its scratch buffers; free it with kw_wire_encoder_destroy. */
int kw_wire_encoder_create(const kw_wire_header *hdr, const kw_wire_encoder_options *opt, kw_wire_encoder **out);

/* Frees the encoder; NULL is a no-op. */
void kw_wire_encoder_destroy(kw_wire_encoder *enc);

/* The three writers append the next part of the blob to the caller's buffer dst (cap bytes) and set *written. They
 * must be called in order: header once, then exactly n_sections sections, then the trailer (else KW_E_STATE).
 * KW_E_BUFFER_TOO_SMALL if cap is short (use the size functions below). A failed call writes nothing the caller
 * should use and leaves the encoder as it was, so it may be retried with another policy. */
int kw_wire_encoder_write_header(kw_wire_encoder *enc, void *dst, size_t cap, size_t *written);

/* Encodes one layer. Errors: KW_E_INVALID_ARG (layer order, positions, policy, views), KW_E_WIRE_NONFINITE (NaN or
 * Inf in K or V, or in a rotated row), KW_E_WIRE_RANGE (a value or scale the chosen codec cannot represent; in a
 * rotated tensor a value past kw_wire_rotated_max), KW_E_BUFFER_TOO_SMALL (cap below kw_wire_section_size),
 * KW_E_NOMEM. */
int kw_wire_encoder_write_section(kw_wire_encoder *enc, const kw_wire_layer_in *in, const kw_wire_policy *pol,
                                  void *dst, size_t cap, size_t *written);

/* A section whose tensor bytes someone else writes (the GPU encoder of kernels/cuda/kw_cuda_wire.h, which produces
 * exactly what kw_wire_encoder_write_section would): begin validates as write_section does (but reads no K or V),
 * writes the section head, group table and index block into dst and sets *tensors_offset to where the tensors go in
 * dst: for each token group in order, K then V, each its scales then its codes (FORMAT.md §5.3). The caller writes
 * them there, then finish compresses (if the policy asks and it is smaller), checksums and commits the section and
 * sets *written, as write_section does. Nothing of the encoder changes until finish succeeds: a section that is never
 * finished (an encoding error on the device) is simply dropped by the next begin or write_section call. pol and
 * positions are read by begin only; dst must stay valid until finish. A rotated policy (pol->rotate, FORMAT.md §5.12)
 * marks the section rotated: the caller encodes the rotated rows write_section would encode (kw_wire_rotate_rows
 * forward on each row widened to f32, stored back in the header's src_dtype), and with outliers gives their rotated
 * values; it must refuse a scale unit past kw_wire_rotated_max as write_section does (the GPU encoder does, with
 * kw_cuda_wire_spec.rotated), or the decoder may refuse the section. */
int kw_wire_encoder_begin_section(kw_wire_encoder *enc, uint32_t layer, uint32_t n_tokens, const uint32_t *positions,
                                  const kw_wire_policy *pol, void *dst, size_t cap, size_t *tensors_offset);
int kw_wire_encoder_finish_section(kw_wire_encoder *enc, size_t *written);

/* begin_section for a section with outliers (pol->outliers > 0) whose choice and values someone else made (the GPU:
 * kernels/cuda/kw_cuda_wire.h kw_cuda_wire_outlier_select, then the tensors encoded without them): elems are the n
 * chosen element numbers, ascending (n = min(pol->outliers, 2*H*T*D), the count kw_wire_outlier_select chooses),
 * values their f32 values in the input. The outlier table is written into dst behind the tensors' place, as
 * write_section writes it (values in pol->outlier_dtype, or the header's src_dtype); the tensors go at
 * *tensors_offset, then finish_section. Errors: begin_section's, KW_E_INVALID_ARG for a list that is not ascending
 * or not that long, KW_E_WIRE_RANGE for a value the table's dtype cannot hold or, in a rotated tensor, past
 * kw_wire_rotated_max. */
int kw_wire_encoder_begin_section_outliers(kw_wire_encoder *enc, uint32_t layer, uint32_t n_tokens,
                                           const uint32_t *positions, const kw_wire_policy *pol, const uint32_t *elems,
                                           const float *values, uint32_t n, void *dst, size_t cap,
                                           size_t *tensors_offset);

/* Writes the 24-byte trailer after the last section. */
int kw_wire_encoder_write_trailer(kw_wire_encoder *enc, void *dst, size_t cap, size_t *written);

/* The breakdown of everything written so far (owned by the encoder). */
const kw_wire_breakdown *kw_wire_encoder_breakdown(const kw_wire_encoder *enc);

/* Chooses the index encoding for T positions (FORMAT.md §6): the smallest applicable, ties to the lowest id; or
 * validates a forced one (KW_E_INVALID_ARG if it cannot represent the positions). positions NULL means 0..T-1.
 * Writes the encoding id and its size in bytes. */
int kw_wire_index_choose(uint32_t n_positions, const uint32_t *positions, uint32_t n_tokens, uint8_t request,
                         uint8_t *encoding, size_t *bytes);

/* The exact size of the section this policy makes for these positions when the body is not compressed (a
 * compressed section is strictly smaller). With outliers the size depends on where they are (their indices are
 * varints): it is then the largest the section can take, each index counted at its longest varint. Validates the
 * policy (KW_E_INVALID_ARG). */
int kw_wire_section_size(const kw_wire_header *hdr, const kw_wire_policy *pol, uint32_t n_tokens,
                         const uint32_t *positions, size_t *out);

/* An upper bound of the section size for any T positions (the index block counted at min(4T, ceil(P/8)), or the
 * forced encoding's worst case). */
int kw_wire_section_bound(const kw_wire_header *hdr, const kw_wire_policy *pol, uint32_t n_tokens, size_t *out);

/* Which elements of one layer's K and V a policy with outliers sends exact (FORMAT.md §5.10, the encoder's rule):
 * the min(count, 2*H*T*D) elements of largest score, ties to the lower element number e = kv*H*T*D + (h*T + t)*D + d
 * (kv 0 for K, 1 for V; t the token's index among the T). An element's score compares it with the other values its
 * scale covers in its token group: its squared distance from their centre (their mean with zero points, else 0)
 * over their mean squared distance from it; a value far outside its neighbours' spread, the one that would stretch
 * their scale, whatever the number of values a scale covers.
 * Elements of passthrough tensors score 0. Sets the chosen elements' bits in mask (ceil(2*H*T*D / 8) bytes, bit e
 * of byte e/8, zeroed first) and their number in *n_chosen. Errors: KW_E_INVALID_ARG, KW_E_WIRE_NONFINITE,
 * KW_E_NOMEM. */
int kw_wire_outlier_select(const kw_wire_header *hdr, const kw_wire_layer_in *in, const kw_wire_policy *pol,
                           uint32_t count, uint8_t *mask, uint32_t *n_chosen);

/* ------------------------------------------------------------------------------------------------------------- */
/* Decoder */

/* Decoder limits (FORMAT.md §9.1); kw_wire_limits_default fills the format maxima and a 1 GiB section. */
typedef struct kw_wire_limits {
    uint32_t max_layers, max_heads, max_head_dim, max_positions, max_tokens, max_groups;
    uint64_t max_section_bytes; /* raw (decompressed) body of one section */
    uint64_t max_blob_bytes;    /* whole blob */
} kw_wire_limits;

void kw_wire_limits_default(kw_wire_limits *lim);

/* An optional allocator for everything the decoder allocates (tests count and fail allocations with it). realloc_fn
 * follows realloc semantics (ptr NULL allocates); free_fn accepts NULL. libzstd's own fixed-size context is
 * allocated by libzstd. */
typedef struct kw_wire_allocator {
    void *(*realloc_fn)(void *user, void *ptr, size_t size);
    void (*free_fn)(void *user, void *ptr);
    void *user;
} kw_wire_allocator;

typedef struct kw_wire_decoder_options {
    kw_wire_limits limits;          /* all zero: the defaults */
    const kw_wire_allocator *alloc; /* borrowed, must outlive the decoder; NULL: malloc */
    uint8_t isa;                    /* enum kw_wire_isa for dequantization */
} kw_wire_decoder_options;

/* One tensor of a token group inside a section: its codec, scales and packed codes (borrowed from the section). */
typedef struct kw_wire_tensor_view {
    kw_wire_codec_spec spec;
    const uint8_t *scales;
    const uint8_t *zeros; /* zero points (kw_wire_spec_asym), scale_count of them in the scale dtype; else NULL */
    const uint8_t *codes;
    uint32_t scale_count, scale_bytes; /* scale_bytes: the scale block only */
    uint32_t zero_bytes;               /* the zero-point block: scale_bytes with zero points, else 0 */
    uint64_t code_bytes;
} kw_wire_tensor_view;

typedef struct kw_wire_group_view {
    uint32_t first_token, n_tokens;
    kw_wire_tensor_view k, v;
} kw_wire_group_view;

/* A validated section (structure, checksum, positions and scales checked). Every pointer borrows from the decoder or
 * from the bytes given to the kw_wire_decoder_feed call that produced it: valid until the next feed, reset or
 * destroy, and only while those bytes are unchanged. */
typedef struct kw_wire_section {
    uint32_t ordinal; /* 0-based section number in the blob */
    uint32_t layer;
    uint32_t n_tokens; /* T */
    uint32_t n_groups;
    uint32_t n_kv_heads, head_dim, n_positions;
    uint8_t index_encoding;    /* enum kw_wire_index */
    bool compressed;           /* the stored body is coded: zstd (flag bit 0) or, with rans_coded, rANS (bit 5) */
    bool rans_coded;           /* v1.1: by the static rANS byte coder (FORMAT.md §5.15) */
    uint8_t isa;               /* the decoder's enum kw_wire_isa, used by kw_wire_section_dequantize */
    const uint8_t *index_data; /* index block */
    uint32_t index_bytes;
    const kw_wire_group_view *groups; /* n_groups entries */
    bool pre_rope;                    /* v1.1: K was taken before RoPE (FORMAT.md §5.11) */
    uint8_t rotated;                  /* v1.1: bit 0 K, bit 1 V sent Hadamard-rotated (FORMAT.md §5.12); the
                                         dequantizer rotates them back */
    uint32_t n_outliers;              /* v1.1: outlier table entries (FORMAT.md §5.10), 0 without a table */
    uint8_t outlier_dtype;            /* enum kw_wire_dtype of their values */
    const uint8_t *outlier_table;     /* the whole table (outlier_bytes), NULL without one */
    uint32_t outlier_bytes;
    uint32_t raw_body_bytes, stored_body_bytes;
    uint64_t offset;   /* of the section in the blob */
    uint64_t size;     /* of the section on the wire: head + table + stored body + checksum */
    uint64_t checksum; /* the verified section checksum */
} kw_wire_section;

/* Events returned by kw_wire_decoder_feed (non-negative). */
enum kw_wire_event {
    KW_WIRE_EVENT_NEED_MORE = 0, /* all input consumed, no event */
    KW_WIRE_EVENT_HEADER = 1,    /* the header is verified: kw_wire_decoder_header */
    KW_WIRE_EVENT_SECTION = 2,   /* a section is verified: kw_wire_decoder_section */
    KW_WIRE_EVENT_END = 3,       /* the trailer is verified; the blob is complete */
};

typedef struct kw_wire_decoder kw_wire_decoder;

/* Creates a streaming decoder. opt may be NULL (default limits, malloc, AUTO). Free with kw_wire_decoder_destroy. */
int kw_wire_decoder_create(const kw_wire_decoder_options *opt, kw_wire_decoder **out);

/* Frees the decoder and its buffers; NULL is a no-op. */
void kw_wire_decoder_destroy(kw_wire_decoder *dec);

/* Forgets the current blob (keeps buffers) so the decoder can read another one. */
void kw_wire_decoder_reset(kw_wire_decoder *dec);

/* Feeds size bytes of the blob. Consumes bytes up to and including the next event and returns it with *consumed
 * set; call again with the rest. Returns KW_WIRE_EVENT_NEED_MORE once everything is consumed without an event. Never
 * reads beyond data[size-1]. Errors are sticky: after one, every feed returns it. Bytes after the trailer are
 * KW_E_WIRE_TRAILING. */
int kw_wire_decoder_feed(kw_wire_decoder *dec, const void *data, size_t size, size_t *consumed);

/* Declares the end of input: 0 if the blob was complete, KW_E_WIRE_TRUNCATED if not, or the sticky error. */
int kw_wire_decoder_finish(kw_wire_decoder *dec);

/* The verified header (after KW_WIRE_EVENT_HEADER), else NULL. Owned by the decoder. */
const kw_wire_header *kw_wire_decoder_header(const kw_wire_decoder *dec);

/* The section of the last KW_WIRE_EVENT_SECTION, else NULL. Owned by the decoder; see kw_wire_section. */
const kw_wire_section *kw_wire_decoder_section(const kw_wire_decoder *dec);

/* The breakdown of the sections verified so far (complete after KW_WIRE_EVENT_END). Owned by the decoder. */
const kw_wire_breakdown *kw_wire_decoder_breakdown(const kw_wire_decoder *dec);

/* Bytes consumed so far. */
uint64_t kw_wire_decoder_offset(const kw_wire_decoder *dec);

/* The decoder's peak buffer capacity in bytes (memory-bound tests). */
size_t kw_wire_decoder_peak_bytes(const kw_wire_decoder *dec);

/* One-shot decoding of a complete blob in memory, on the same state machine: open checks the header, next yields
 * the sections in order (1 and *sec set; 0 after the trailer is verified and nothing follows it) or a negative
 * status. The reader borrows blob (keep it alive and unchanged while sections are used). */
typedef struct kw_wire_reader kw_wire_reader;
int kw_wire_reader_open(const void *blob, size_t size, const kw_wire_decoder_options *opt, kw_wire_reader **out,
                        const kw_wire_header **hdr);
int kw_wire_reader_next(kw_wire_reader *r, const kw_wire_section **sec);
const kw_wire_breakdown *kw_wire_reader_breakdown(const kw_wire_reader *r);
/* Frees the reader; NULL is a no-op. */
void kw_wire_reader_close(kw_wire_reader *r);

/* Writes the section's T token positions to out (cap entries). */
int kw_wire_section_positions(const kw_wire_section *sec, uint32_t *out, size_t cap);

/* A borrowed writable view of a decoded K or V: element (h, t, d) goes to data[t * token_stride + h * head_stride +
 * d], dtype KW_WIRE_DTYPE_F32 or KW_WIRE_DTYPE_BF16 (rounded to nearest even from the f32 value). */
typedef struct kw_wire_tensor_out {
    void *data;
    uint8_t dtype;
    size_t head_stride, token_stride;
} kw_wire_tensor_out;

/* Dequantizes every token group of K and V into the caller's views (either may be NULL to skip it), then writes the
 * outlier table's exact values over their elements. Returns 0, or KW_E_WIRE_VALUE if a reserved code is found (the
 * output is then partially written). A pre-RoPE section's K comes out as sent: applying RoPE is the caller's. */
int kw_wire_section_dequantize(const kw_wire_section *sec, const kw_wire_tensor_out *k, const kw_wire_tensor_out *v);

/* The order-0 entropy of a tensor's codes: *bits = -sum over the distinct code values c of n_c log2(n_c / n), n_c the
 * number of its n codes (the packed fields of a quantizing codec, n = code_bytes * 8 / its bits) equal to c: what a
 * static entropy coder with one table per tensor needs for the codes alone, the table not counted (a bound for
 * entropy-coding the codes, not a coder; `kvwire inspect` prints it). Passthrough tensors give 0 and 0.
 * @return 0, or KW_E_INVALID_ARG for a NULL argument or a tensor of an unknown codec. */
int kw_wire_tensor_code_entropy(const kw_wire_tensor_view *t, double *bits, uint64_t *n_codes);

/* The section's outlier table (FORMAT.md §5.10) as numbers, for a decoder elsewhere (the receiver's device path):
 * entry i's element e = kv * H*T*D + (h * T + t) * D + d in elems[i] (strictly increasing, below 2*H*T*D: checked when
 * the section was verified) and its value widened to f32 in values[i], for i < sec->n_outliers (nothing without a
 * table). */
int kw_wire_section_outliers(const kw_wire_section *sec, uint64_t *elems, float *values);

/* ------------------------------------------------------------------------------------------------------------- */
/* Round trip in memory (kw_wire_roundtrip.c) */

/* What a receiver decodes from n rows k, v (n, heads, head_dim) f32 of one layer sent with codec specs k_spec, v_spec
 * (a v1.1 blob when they need it, no compression, n positions): a one-section KVWire blob is encoded and decoded, and
 * k, v are overwritten with the decoded rows. Errors: KW_E_INVALID_ARG, the encoder's (KW_E_WIRE_NONFINITE,
 * KW_E_WIRE_RANGE,
 * ...), KW_E_NOMEM. */
int kw_wire_roundtrip_rows(const kw_wire_codec_spec *k_spec, const kw_wire_codec_spec *v_spec, int32_t layer, int64_t n,
                           int32_t heads, int32_t head_dim, float *k, float *v);

/* kw_wire_roundtrip_rows as a callback (c2c/kw_rscore.h's quantize hook): policy is a const kw_wire_policy *, whose
 * k and v specs are used (its groups and per-layer overrides are not). */
int kw_wire_roundtrip_rows_hook(void *policy, int32_t layer, int64_t n, int32_t heads, int32_t head_dim, float *k,
                                float *v);

#endif /* KW_WIRE_H */
