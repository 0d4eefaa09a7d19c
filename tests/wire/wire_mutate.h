/* wire_mutate.h: a fixed three-section base blob and a catalogue of single-fault mutations of it, each with the
 * status code a conforming decoder must report (FORMAT.md §9.2). Shared by test_wire_corrupt.c and the golden-blob
 * generator (tests/golden/gen_wire_golden.c). Mutations that damage a field re-seal every checksum afterwards, so the
 * field check itself is what fails; mutations aimed at checksums do not. Test code: aborts on misuse. */
#ifndef KW_WIRE_MUTATE_H
#define KW_WIRE_MUTATE_H

#include "tests/wire/wire_test_util.h"
#include "common/kw_bytes.h"

/* XXH3-64 from the library's own wrapper, so tests use exactly the format's checksum. */
#include "wire/kw_wire_internal.h"

// ---------------------------------------------------------------------------------------------------------------
// The base blob: P = 61 positions (not a multiple of 8), H = 2, D = 16, n_layers = 8, three sections:
//   s0: layer 1, 9 tokens, bitmap index, K int8/token/f16, V int4/head/bf16
//   s1: layer 3, 20 tokens, range index, K and V int8/layer/f32 on constant values, zstd-compressed
//   s2: layer 6, 12 tokens, varint index, groups {5: K nf4/group8/e8m0, V e4m3/token/f32},
//                                                  {7: K bf16 passthrough, V int6/token/f16}

enum { WM_H = 2, WM_D = 16, WM_P = 61, WM_LAYERS = 8 };

typedef struct wm_blob {
    uint8_t *data;
    size_t size;
    int n;          /* sections: 3 (wm_base) or 1 (wm_base11, wm_base11o) */
    size_t sec[3];  /* section offsets */
    size_t body[3]; /* body offsets (after the group table) */
    size_t trailer; /* trailer offset */
} wm_blob;

static inline void wm_fill(wt_rng *r, float *v, size_t n, int constant) {
    for (size_t i = 0; i < n; ++i)
        v[i] = kw_round_bf16(constant ? 0.75f - (float)(i % WM_D) / 16 : wt_bell(r));
}

/* The header of the base blobs. */
static inline kw_wire_header wm_header(uint16_t n_sections, uint32_t policy_id, uint16_t version) {
    const kw_wire_header hdr = {.n_layers = WM_LAYERS,
                                .n_sections = n_sections,
                                .n_kv_heads = WM_H,
                                .head_dim = WM_D,
                                .n_positions = WM_P,
                                .src_dtype = KW_WIRE_DTYPE_BF16,
                                .model_id = 0xfeedface,
                                .policy_id = policy_id,
                                .version = version};
    return hdr;
}

/* Builds the base blob (deterministic bytes for a given libzstd). */
static inline void wm_base(wm_blob *b) {
    wt_rng r = {0x5eed};
    static const uint32_t T[3] = {9, 20, 12}, layers[3] = {1, 3, 6};
    uint32_t pos[3][20];
    wt_sample_positions(&r, WM_P, T[0], pos[0]);
    for (uint32_t t = 0; t < T[1]; ++t)
        pos[1][t] = 30 + t;
    wt_sample_positions(&r, WM_P, T[2], pos[2]);
    uint16_t *kv[3][2];
    kw_wire_layer_in in[3];
    for (int s = 0; s < 3; ++s) {
        const size_t n = (size_t)WM_H * T[s] * WM_D;
        float *tmp = wt_xmalloc(n * 4);
        for (int k = 0; k < 2; ++k) {
            wm_fill(&r, tmp, n, s == 1);
            kv[s][k] = wt_xmalloc(n * 2);
            for (size_t i = 0; i < n; ++i)
                kv[s][k][i] = kw_f32_to_bf16(tmp[i]);
        }
        free(tmp);
        in[s] = (kw_wire_layer_in){.layer = layers[s], .n_tokens = T[s], .positions = pos[s]};
        in[s].k = (kw_wire_tensor_in){kv[s][0], (size_t)T[s] * WM_D, WM_D, NULL};
        in[s].v = (kw_wire_tensor_in){kv[s][1], (size_t)T[s] * WM_D, WM_D, NULL};
    }
    static const kw_wire_token_group g2[2] = {
        {5,
         {KW_WIRE_CODEC_NF4, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_E8M0, 3},
         {KW_WIRE_CODEC_E4M3, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F32, 0}},
        {7, {KW_WIRE_CODEC_BF16, 0, 0, 0}, {KW_WIRE_CODEC_INT6, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0}},
    };
    const kw_wire_policy pol[3] = {
        {.k = {KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0},
         .v = {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_HEAD, KW_WIRE_SCALE_BF16, 0},
         .index_encoding = KW_WIRE_INDEX_BITMAP},
        {.k = {KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_LAYER, KW_WIRE_SCALE_F32, 0},
         .v = {KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_LAYER, KW_WIRE_SCALE_F32, 0},
         .zstd_level = 19},
        {.n_groups = 2, .groups = g2, .index_encoding = KW_WIRE_INDEX_VARINT},
    };
    const kw_wire_header hdr = wm_header(3, 7, 0);
    if (wt_encode_blob(&hdr, in, pol, 3, 0, &b->data, &b->size) < 0) {
        fprintf(stderr, "wm_base: %s\n", kw_error_detail());
        abort();
    }
    for (int s = 0; s < 3; ++s)
        free(kv[s][0]), free(kv[s][1]);
    size_t at = KW_WIRE_HEADER_BYTES;
    for (int s = 0; s < 3; ++s) {
        b->sec[s] = at;
        const uint32_t groups = kw_load_le16(b->data + at + KW__SEC_N_GROUPS);
        b->body[s] = at + KW_WIRE_SECTION_HEAD_BYTES + (size_t)KW_WIRE_GROUP_DESC_BYTES * groups;
        at = b->body[s] + kw_load_le32(b->data + at + KW__SEC_STORED_BYTES) + KW_WIRE_CHECKSUM_BYTES;
    }
    b->trailer = at;
    b->n = 3;
    if (!(b->data[b->sec[1] + KW__SEC_FLAGS] & 1) || at + KW_WIRE_TRAILER_BYTES != b->size) {
        fprintf(stderr, "wm_base: unexpected layout\n");
        abort();
    }
}

/* Recomputes the header checksum. */
static inline void wm_seal_header(uint8_t *p) {
    kw_store_le64(p + KW__HDR_CHECKSUM, kw__wire_hash_bytes(p, KW__HDR_CHECKSUM));
}

/* The blob checksum (FORMAT.md §8): header, the section checksums, trailer bytes 0..15. */
static inline uint64_t wm_blob_sum(const wm_blob *b, const uint8_t *p) {
    kw__wire_hash h;
    kw__wire_hash_reset(&h);
    kw__wire_hash_update(&h, p, KW_WIRE_HEADER_BYTES);
    for (int s = 0; s < b->n; ++s)
        kw__wire_hash_update(&h, p + (s + 1 < b->n ? b->sec[s + 1] : b->trailer) - 8, 8);
    kw__wire_hash_update(&h, p + b->trailer, KW__TRL_CHECKSUM);
    return kw__wire_hash_digest(&h);
}

/* Recomputes every checksum of a blob with the base layout (section sizes unchanged). */
static inline void wm_seal_all(const wm_blob *b, uint8_t *p, size_t size) {
    wm_seal_header(p);
    for (int s = 0; s < b->n; ++s) {
        const size_t end = b->body[s] + kw_load_le32(p + b->sec[s] + KW__SEC_STORED_BYTES);
        if (end + 8 > size) return;
        kw_store_le64(p + end, kw__wire_hash_bytes(p + b->sec[s], end - b->sec[s]));
    }
    if (b->trailer + KW_WIRE_TRAILER_BYTES <= size) kw_store_le64(p + b->trailer + KW__TRL_CHECKSUM, wm_blob_sum(b, p));
}

/* Encodes a one-section base blob (the caller's K and V arrays, freed here) and records its offsets; aborts unless
 * the section's raw body is raw_expected bytes (the catalogue's offsets depend on the layout). */
static inline void wm_one_section(wm_blob *b, const char *name, const kw_wire_header *hdr, const kw_wire_layer_in *in,
                                  const kw_wire_policy *pol, uint32_t n_groups, uint16_t *kv[2],
                                  uint32_t raw_expected) {
    if (wt_encode_blob(hdr, in, pol, 1, 0, &b->data, &b->size) < 0) {
        fprintf(stderr, "%s: %s\n", name, kw_error_detail());
        abort();
    }
    free(kv[0]);
    free(kv[1]);
    b->n = 1;
    b->sec[0] = KW_WIRE_HEADER_BYTES;
    b->body[0] = b->sec[0] + KW_WIRE_SECTION_HEAD_BYTES + (size_t)n_groups * KW_WIRE_GROUP_DESC_BYTES;
    const uint32_t raw = kw_load_le32(b->data + b->sec[0] + KW__SEC_RAW_BYTES);
    b->trailer = b->body[0] + raw + KW_WIRE_CHECKSUM_BYTES;
    if (raw != raw_expected || b->trailer + KW_WIRE_TRAILER_BYTES != b->size) {
        fprintf(stderr, "%s: unexpected layout (raw %u, size %zu)\n", name, raw, b->size);
        abort();
    }
}

/* The v1.1 base blob: the same shape (P = 61, H = 2, D = 16, 8 layers), one section (layer 1, positions 20..29, range
 * index) with two token groups:
 *   g0, 6 tokens: K int2 with zero points, f16 channel scales over runs of L = 4 tokens; V int3/token/bf16
 *   g1, 4 tokens: K int3 with zero points, f32 scales per 8 channels; V int2/head/f16
 * Body: range (4) | g0 K scales 64 x f16 (128), zero points (128), codes (48) | g0 V scales 12 x bf16 (24), codes (72)
 *       | g1 K scales 16 x f32 (64), zero points (64), codes (48) | g1 V scales 2 x f16 (4), codes (32): 616 bytes. */
static inline void wm_base11(wm_blob *b) {
    enum { T = 10 };
    wt_rng r = {0x11e1};
    uint32_t pos[T];
    for (uint32_t t = 0; t < T; ++t)
        pos[t] = 20 + t;
    const size_t n = (size_t)WM_H * T * WM_D;
    uint16_t *kv[2] = {wt_xmalloc(n * 2), wt_xmalloc(n * 2)};
    float *tmp = wt_xmalloc(n * 4);
    for (int k = 0; k < 2; ++k) {
        wm_fill(&r, tmp, n, 0);
        for (size_t i = 0; i < n; ++i)
            kv[k][i] = kw_f32_to_bf16(tmp[i] + (k == 0 && i % WM_D == 3 ? 8.0f : 0.0f)); /* a K outlier channel */
    }
    free(tmp);
    kw_wire_layer_in in = {.layer = 1, .n_tokens = T, .positions = pos};
    in.k = (kw_wire_tensor_in){kv[0], (size_t)T * WM_D, WM_D, NULL};
    in.v = (kw_wire_tensor_in){kv[1], (size_t)T * WM_D, WM_D, NULL};
    const uint8_t zp = KW_WIRE_SCALE_ZERO_POINTS;
    const kw_wire_token_group g[2] = {
        {6,
         {KW_WIRE_CODEC_INT2, KW_WIRE_GRAN_CHANNEL, KW_WIRE_SCALE_F16 | zp, 2},
         {KW_WIRE_CODEC_INT3, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_BF16, 0}},
        {4,
         {KW_WIRE_CODEC_INT3, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_F32 | zp, 3},
         {KW_WIRE_CODEC_INT2, KW_WIRE_GRAN_HEAD, KW_WIRE_SCALE_F16, 0}},
    };
    const kw_wire_policy pol = {.n_groups = 2, .groups = g};
    const kw_wire_header hdr = wm_header(1, 11, KW_WIRE_VERSION_1_1);
    wm_one_section(b, "wm_base11", &hdr, &in, &pol, 2, kv, 616);
}

// ---------------------------------------------------------------------------------------------------------------
// The catalogue

/* The v1.1 base blob with an outlier table and the pre-RoPE flag: one section, layer 2, 10 tokens (positions 40..49,
 * range index), K int4/token/f16 and V int8/group8/bf16 (v1 codecs: only the section head and the table are v1.1),
 * 6 outliers in bf16, the planted spikes (elements 5, 57, 170, 340, 520, 639). Body: range (4) | K scales (40) | K
 * codes (160) | V scales (80) | V codes (320) | outlier table at 604: n, dtype, reserved (8) | 6 varints | 6 values. */
#define WM11O_TABLE 604

/* The K and V of the one-section v1.1 bases (10 tokens): bell-shaped bf16 values with, for wm_base11o, three planted
 * spikes per tensor and, for wm_base11r (channel 1), one channel 12x larger (what the rotation spreads out). *in
 * takes layer, positions pos0.. (pos: 10 entries) and the tensors kv[0..2) (allocated; freed by wm_one_section). */
static inline void wm_one_layer10(uint64_t seed, int channel, uint32_t layer, uint32_t pos0, uint32_t *pos,
                                  uint16_t *kv[2], kw_wire_layer_in *in) {
    enum { T = 10 };
    wt_rng r = {seed};
    for (uint32_t t = 0; t < T; ++t)
        pos[t] = pos0 + t;
    const size_t n = (size_t)WM_H * T * WM_D;
    kv[0] = wt_xmalloc(n * 2), kv[1] = wt_xmalloc(n * 2);
    float *tmp = wt_xmalloc(n * 4);
    static const size_t spikes[2][3] = {{5, 3 * WM_D + 9, 170}, {20, 200, 319}};
    for (int k = 0; k < 2; ++k) {
        wm_fill(&r, tmp, n, 0);
        if (channel)
            for (size_t t = 0; t < (size_t)WM_H * T; ++t)
                tmp[t * WM_D + 3 + 5 * k] *= 12.0f;
        else
            for (int i = 0; i < 3; ++i)
                tmp[spikes[k][i]] = (float)(i + 1) * (k ? -24.0f : 32.0f);
        for (size_t i = 0; i < n; ++i)
            kv[k][i] = kw_f32_to_bf16(tmp[i]);
    }
    free(tmp);
    *in = (kw_wire_layer_in){.layer = layer, .n_tokens = T, .positions = pos};
    in->k = (kw_wire_tensor_in){kv[0], (size_t)T * WM_D, WM_D, NULL};
    in->v = (kw_wire_tensor_in){kv[1], (size_t)T * WM_D, WM_D, NULL};
}

static inline void wm_base11o(wm_blob *b) {
    uint32_t pos[10];
    uint16_t *kv[2];
    kw_wire_layer_in in;
    wm_one_layer10(0x0071, 0, 2, 40, pos, kv, &in);
    const kw_wire_policy pol = {.k = {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0},
                                .v = {KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_BF16, 3},
                                .outliers = 6,
                                .pre_rope = 1};
    const kw_wire_header hdr = wm_header(1, 12, KW_WIRE_VERSION_1_1);
    /* the catalogue's offsets assume this layout: varints of 1, 1, 1, 2, 2, 1 bytes (a table of 8 + 8 + 12) */
    wm_one_section(b, "wm_base11o", &hdr, &in, &pol, 1, kv, WM11O_TABLE + 28);
    if (kw_load_le32(b->data + b->sec[0] + KW__SEC_OUTLIER_BYTES) != 28 || b->data[b->sec[0] + KW__SEC_FLAGS] != 0x06) {
        fprintf(stderr, "wm_base11o: unexpected outlier table or flags\n");
        abort();
    }
}

/* The v1.1 base blob with rotated K and V (FORMAT.md §5.12) and pre-RoPE keys: one section, layer 4, 10 tokens
 * (positions 20..29, range index), K int4/token/f16 and V int8/group8/bf16, flags 0x1a. Body: range (4) | K scales (40)
 * | K codes (160) | V scales (80) | V codes (320). */
static inline void wm_base11r(wm_blob *b) {
    uint32_t pos[10];
    uint16_t *kv[2];
    kw_wire_layer_in in;
    wm_one_layer10(0x0172, 1, 4, 20, pos, kv, &in);
    const kw_wire_policy pol = {.k = {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0},
                                .v = {KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_BF16, 3},
                                .pre_rope = 1,
                                .rotate = 3};
    const kw_wire_header hdr = wm_header(1, 13, KW_WIRE_VERSION_1_1);
    wm_one_section(b, "wm_base11r", &hdr, &in, &pol, 1, kv, 604);
    if (b->data[b->sec[0] + KW__SEC_FLAGS] != 0x1a) {
        fprintf(stderr, "wm_base11r: unexpected flags\n");
        abort();
    }
}

/* The v1.1 base blob with a rANS-coded body (FORMAT.md §5.15): one section, layer 5, 10 tokens (positions 30..39,
 * range index), K and V int8/token/f16 of bell values with one channel 12x larger (the other codes crowd near 0),
 * flags 0x20. Raw body: range (4) | K scales (40) | K codes (320) | V scales (40) | V codes (320) = 724 bytes, stored
 * coded in fewer; the stored body starts with the run list (tables - 1 = 1, four runs: range and K scales by table
 * 0, K codes by table 1, V scales by 0, V codes by 1, each a two-byte varint), then table 0 at byte 10 (entries - 1,
 * implied entry, then the escape's frequency length in the low nibble of byte 12). */
static inline void wm_base11z(wm_blob *b) {
    uint32_t pos[10];
    uint16_t *kv[2];
    kw_wire_layer_in in;
    wm_one_layer10(0x02a5, 1, 5, 30, pos, kv, &in);
    const kw_wire_codec_spec q8 = {KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0};
    const kw_wire_policy pol = {.k = q8, .v = q8, .rans = 1};
    const kw_wire_header hdr = wm_header(1, 14, KW_WIRE_VERSION_1_1);
    if (wt_encode_blob(&hdr, &in, &pol, 1, 0, &b->data, &b->size) < 0) {
        fprintf(stderr, "wm_base11z: %s\n", kw_error_detail());
        abort();
    }
    free(kv[0]);
    free(kv[1]);
    b->n = 1;
    b->sec[0] = KW_WIRE_HEADER_BYTES;
    b->body[0] = b->sec[0] + KW_WIRE_SECTION_HEAD_BYTES + KW_WIRE_GROUP_DESC_BYTES;
    const uint32_t raw = kw_load_le32(b->data + b->sec[0] + KW__SEC_RAW_BYTES);
    const uint32_t stored = kw_load_le32(b->data + b->sec[0] + KW__SEC_STORED_BYTES);
    b->trailer = b->body[0] + stored + KW_WIRE_CHECKSUM_BYTES;
    if (raw != 724 || stored < 64 || stored >= raw || b->data[b->sec[0] + KW__SEC_FLAGS] != 0x20 ||
        memcmp(b->data + b->body[0], "\x01\x04\xac\x01\xfd\x09\x9c\x01\xfd\x09", 10) != 0 ||
        b->data[b->body[0] + 10] == 0xff || b->data[b->body[0] + 11] == 0xff ||
        b->trailer + KW_WIRE_TRAILER_BYTES != b->size) {
        fprintf(stderr, "wm_base11z: unexpected layout (raw %u, stored %u)\n", raw, stored);
        abort();
    }
}

typedef struct wm_case {
    const char *name;
    int expect; /* status a decoder must return (dequantizing every section) */
    int seal;   /* 1: recompute all checksums after the change; 2: the header checksum only */
    size_t off; /* byte to change: an offset from `base` */
    int base;   /* 0 blob start, 1..3 section s-1 start, 4..6 section body s-4, 7 trailer */
    int width;  /* 1, 2 or 4 bytes little-endian; 0: xor the byte with value */
    uint32_t value;
} wm_case;

#define WM_HDR     0
#define WM_SEC(s)  (1 + (s))
#define WM_BODY(s) (4 + (s))
#define WM_TRL     7

/* s0 body: bitmap (8 bytes) | K scales f16 (2*9*2 = 36) | K int8 codes (288) | V scales bf16 (4) | V int4 (144).
 * s1 body (raw, compressed on the wire): range start (4) | ...; s2 body: varint (12+) | ... */
static const wm_case wm_cases[] = {
    {"magic", KW_E_WIRE_MAGIC, 0, 0, WM_HDR, 0, 0x01},
    {"magic_last_byte", KW_E_WIRE_MAGIC, 0, 7, WM_HDR, 0, 0x40},
    {"version_future", KW_E_WIRE_VERSION, 0, KW__HDR_VERSION, WM_HDR, 2, 2},
    {"version_zero", KW_E_WIRE_VERSION, 0, KW__HDR_VERSION, WM_HDR, 2, 0},
    {"header_checksum", KW_E_WIRE_CHECKSUM, 0, KW__HDR_CHECKSUM + 3, WM_HDR, 0, 0x10},
    {"header_field_unsealed", KW_E_WIRE_CHECKSUM, 0, KW__HDR_N_HEADS, WM_HDR, 0, 0x01},
    {"header_bytes", KW_E_WIRE_CORRUPT, 1, KW__HDR_HEADER_BYTES, WM_HDR, 2, 65},
    {"header_flags", KW_E_WIRE_RESERVED, 1, KW__HDR_FLAGS, WM_HDR, 4, 1},
    {"header_reserved1", KW_E_WIRE_RESERVED, 1, KW__HDR_RESERVED1 + 1, WM_HDR, 1, 1},
    {"header_reserved2", KW_E_WIRE_RESERVED, 1, KW__HDR_RESERVED2 + 11, WM_HDR, 1, 0x80},
    {"src_dtype_zero", KW_E_WIRE_CODEC, 1, KW__HDR_SRC_DTYPE, WM_HDR, 1, 0},
    {"src_dtype_unknown", KW_E_WIRE_CODEC, 1, KW__HDR_SRC_DTYPE, WM_HDR, 1, 4},
    {"layers_zero", KW_E_WIRE_CORRUPT, 1, KW__HDR_N_LAYERS, WM_HDR, 2, 0},
    {"layers_over_limit", KW_E_WIRE_LIMIT, 1, KW__HDR_N_LAYERS, WM_HDR, 2, 2000},
    {"heads_zero", KW_E_WIRE_CORRUPT, 1, KW__HDR_N_HEADS, WM_HDR, 2, 0},
    {"heads_over_limit", KW_E_WIRE_LIMIT, 1, KW__HDR_N_HEADS, WM_HDR, 2, 300},
    {"head_dim_not_multiple_of_8", KW_E_WIRE_CORRUPT, 1, KW__HDR_HEAD_DIM, WM_HDR, 2, 12},
    {"head_dim_over_limit", KW_E_WIRE_LIMIT, 1, KW__HDR_HEAD_DIM, WM_HDR, 2, 2048},
    {"positions_zero", KW_E_WIRE_CORRUPT, 1, KW__HDR_N_POSITIONS, WM_HDR, 4, 0},
    {"positions_over_limit", KW_E_WIRE_LIMIT, 1, KW__HDR_N_POSITIONS, WM_HDR, 4, (1u << 24) + 1},
    {"sections_over_layers", KW_E_WIRE_CORRUPT, 1, KW__HDR_N_SECTIONS, WM_HDR, 2, 9},
    {"sections_fewer", KW_E_WIRE_CORRUPT, 1, KW__HDR_N_SECTIONS, WM_HDR, 2, 2},
    {"sections_more", KW_E_WIRE_CORRUPT, 1, KW__HDR_N_SECTIONS, WM_HDR, 2, 4},
    {"model_id_header_sealed", KW_E_WIRE_CHECKSUM, 2, KW__HDR_MODEL_ID, WM_HDR, 0, 0x01},
    {"section_marker", KW_E_WIRE_CORRUPT, 1, 1, WM_SEC(0), 0, 0x20},
    {"section_flags_reserved", KW_E_WIRE_RESERVED, 1, KW__SEC_FLAGS, WM_SEC(0), 1, 2},
    {"section_flags_rotated", KW_E_WIRE_RESERVED, 1, KW__SEC_FLAGS, WM_SEC(0), 1, 0x08}, /* v1.1's rotated K in v1 */
    {"section_reserved", KW_E_WIRE_RESERVED, 1, KW__SEC_RESERVED + 5, WM_SEC(2), 1, 1},
    {"layer_out_of_range", KW_E_WIRE_CORRUPT, 1, KW__SEC_LAYER, WM_SEC(2), 2, WM_LAYERS},
    {"layer_repeated", KW_E_WIRE_ORDER, 1, KW__SEC_LAYER, WM_SEC(1), 2, 1},
    {"layer_decreasing", KW_E_WIRE_ORDER, 1, KW__SEC_LAYER, WM_SEC(2), 2, 2},
    {"index_encoding_zero", KW_E_WIRE_CODEC, 1, KW__SEC_INDEX_ENC, WM_SEC(0), 1, 0},
    {"index_encoding_unknown", KW_E_WIRE_CODEC, 1, KW__SEC_INDEX_ENC, WM_SEC(0), 1, 7},
    {"tokens_zero", KW_E_WIRE_CORRUPT, 1, KW__SEC_N_TOKENS, WM_SEC(0), 4, 0},
    {"tokens_over_positions", KW_E_WIRE_INDICES, 1, KW__SEC_N_TOKENS, WM_SEC(0), 4, WM_P + 1},
    {"tokens_over_limit", KW_E_WIRE_LIMIT, 1, KW__SEC_N_TOKENS, WM_SEC(0), 4, 0x7fffffff},
    {"groups_zero", KW_E_WIRE_CORRUPT, 1, KW__SEC_N_GROUPS, WM_SEC(0), 2, 0},
    {"groups_over_limit", KW_E_WIRE_LIMIT, 1, KW__SEC_N_GROUPS, WM_SEC(1), 2, 5000},
    {"groups_over_tokens", KW_E_WIRE_CORRUPT, 1, KW__SEC_N_GROUPS, WM_SEC(0), 2, 10},
    {"groups_sum_short", KW_E_WIRE_CORRUPT, 1, KW__SEC_N_GROUPS, WM_SEC(2), 2, 1},
    {"index_bytes_wrong", KW_E_WIRE_CORRUPT, 1, KW__SEC_INDEX_BYTES, WM_SEC(0), 4, 9},
    {"varint_index_bytes_impossible", KW_E_WIRE_CORRUPT, 1, KW__SEC_INDEX_BYTES, WM_SEC(2), 4, 61},
    {"raw_bytes_over_limit", KW_E_WIRE_LIMIT, 1, KW__SEC_RAW_BYTES, WM_SEC(0), 4, 0xffffffffu},
    {"raw_bytes_mismatch", KW_E_WIRE_CORRUPT, 1, KW__SEC_RAW_BYTES, WM_SEC(0), 0, 0x01},
    {"stored_bytes_mismatch", KW_E_WIRE_CORRUPT, 1, KW__SEC_STORED_BYTES, WM_SEC(0), 0, 0x01},
    {"compressed_not_smaller", KW_E_WIRE_CORRUPT, 1, KW__SEC_FLAGS, WM_SEC(0), 1, 1},
    {"group_tokens_zero", KW_E_WIRE_CORRUPT, 1, 32, WM_SEC(2), 4, 0},
    {"group_tokens_sum", KW_E_WIRE_CORRUPT, 1, 32, WM_SEC(2), 4, 6},
    {"codec_zero", KW_E_WIRE_CODEC, 1, 36, WM_SEC(0), 1, 0},
    {"codec_unknown", KW_E_WIRE_CODEC, 1, 40, WM_SEC(0), 1, 9},
    {"passthrough_with_scale", KW_E_WIRE_CODEC, 1, 50, WM_SEC(2), 1, KW_WIRE_SCALE_F16},
    {"granularity_unknown", KW_E_WIRE_CODEC, 1, 37, WM_SEC(0), 1, 5},
    {"scale_dtype_unknown", KW_E_WIRE_CODEC, 1, 38, WM_SEC(0), 1, 5},
    {"group_log2_reserved", KW_E_WIRE_RESERVED, 1, 39, WM_SEC(0), 1, 3},
    {"group_size_not_divisor", KW_E_WIRE_CODEC, 1, 39, WM_SEC(2), 1, 5},
    {"section_checksum", KW_E_WIRE_CHECKSUM, 0, 100, WM_BODY(0), 0, 0x04},
    {"compressed_checksum", KW_E_WIRE_CHECKSUM, 0, 10, WM_BODY(1), 0, 0x04},
    {"bitmap_padding", KW_E_WIRE_RESERVED, 1, 7, WM_BODY(0), 0, 0x80},
    {"bitmap_extra_position", KW_E_WIRE_INDICES, 1, 0, WM_BODY(0), 0, 0x01},
    {"varint_runs_past_block", KW_E_WIRE_INDICES, 1, 11, WM_BODY(2), 0, 0x80},
    {"varint_position_out_of_range", KW_E_WIRE_INDICES, 1, 0, WM_BODY(2), 1, 60},
    {"scale_negative", KW_E_WIRE_VALUE, 1, 8 + 1, WM_BODY(0), 0, 0x80},
    {"scale_infinite", KW_E_WIRE_VALUE, 1, 8 + 2, WM_BODY(0), 2, 0x7c00},
    {"scale_nan_bf16", KW_E_WIRE_VALUE, 1, 8 + 36 + 288, WM_BODY(0), 2, 0x7fc0},
    {"code_int8_minus_128", KW_E_WIRE_VALUE, 1, 8 + 36 + 17, WM_BODY(0), 1, 0x80},
    {"code_int4_minus_8", KW_E_WIRE_VALUE, 1, 8 + 36 + 288 + 4 + 3, WM_BODY(0), 1, 0x38},
    {"zstd_frame_damaged", KW_E_WIRE_COMPRESSION, 1, 0, WM_BODY(1), 0, 0xff},
    {"trailer_marker", KW_E_WIRE_CORRUPT, 1, 0, WM_TRL, 0, 0x01},
    {"trailer_reserved", KW_E_WIRE_RESERVED, 1, KW__TRL_RESERVED, WM_TRL, 1, 1},
    {"trailer_blob_bytes", KW_E_WIRE_CORRUPT, 1, KW__TRL_BLOB_BYTES, WM_TRL, 0, 0x01},
    {"trailer_checksum", KW_E_WIRE_CHECKSUM, 0, KW__TRL_CHECKSUM + 7, WM_TRL, 0, 0x01},
};
#define WM_N_CASES (sizeof wm_cases / sizeof wm_cases[0])

/* Faults in the v1.1 fields, applied to wm_base11. Descriptors: g0 K at section offset 36, V 40; g1 K 48, V 52. */
static const wm_case wm_cases11[] = {
    {"v11_as_v1", KW_E_WIRE_CODEC, 1, KW__HDR_VERSION, WM_HDR, 2, KW_WIRE_VERSION},
    {"v11_version_two", KW_E_WIRE_VERSION, 1, KW__HDR_VERSION, WM_HDR, 2, 2},
    {"v11_scale_flags_reserved", KW_E_WIRE_RESERVED, 1, 38, WM_SEC(0), 1, 0x91},
    {"v11_zero_points_e8m0", KW_E_WIRE_CODEC, 1, 38, WM_SEC(0), 1, 0x84},
    {"v11_zero_points_fp8", KW_E_WIRE_CODEC, 1, 36, WM_SEC(0), 1, KW_WIRE_CODEC_E4M3},
    {"v11_zero_points_passthrough", KW_E_WIRE_CODEC, 1, 52, WM_SEC(0), 4, 0x00800001u},
    {"v11_channel_run_too_long", KW_E_WIRE_CODEC, 1, 39, WM_SEC(0), 1, 25},
    {"v11_granularity_unknown", KW_E_WIRE_CODEC, 1, 37, WM_SEC(0), 1, 6},
    {"v11_codec_unknown", KW_E_WIRE_CODEC, 1, 40, WM_SEC(0), 1, 11},
    {"v11_zero_points_dropped", KW_E_WIRE_CORRUPT, 1, 38, WM_SEC(0), 1, KW_WIRE_SCALE_F16},
    {"v11_channel_run_changed", KW_E_WIRE_CORRUPT, 1, 39, WM_SEC(0), 1, 3},
    {"v11_zero_point_nan", KW_E_WIRE_VALUE, 1, 4 + 128, WM_BODY(0), 2, 0x7e00},
    {"v11_zero_point_inf", KW_E_WIRE_VALUE, 1, 468, WM_BODY(0), 4, 0xff800000u},
    {"v11_zero_point_too_large", KW_E_WIRE_VALUE, 1, 468, WM_BODY(0), 4, 0x7f7fffffu},
    {"v11_scale_negative", KW_E_WIRE_VALUE, 1, 4 + 1, WM_BODY(0), 0, 0x80},
    {"v11_code_int3_minus_4", KW_E_WIRE_VALUE, 1, 332, WM_BODY(0), 1, 0x04},
    {"v11_code_int2_minus_2", KW_E_WIRE_VALUE, 1, 584, WM_BODY(0), 1, 0x02},
    /* log8 scales (dtype 5): symmetric integer codecs only; dtypes 6..15 unknown; a log8 scale is 1 byte */
    {"v11_log8_zero_points", KW_E_WIRE_CODEC, 1, 38, WM_SEC(0), 1, 0x80 | KW_WIRE_SCALE_LOG8},
    {"v11_log8_fp8", KW_E_WIRE_CODEC, 1, 40, WM_SEC(0), 4, 0x00050307u},
    {"v11_log8_nf4", KW_E_WIRE_CODEC, 1, 40, WM_SEC(0), 4, 0x00050306u},
    {"v11_scale_dtype_6", KW_E_WIRE_CODEC, 1, 42, WM_SEC(0), 1, 6},
    {"v11_log8_size_changed", KW_E_WIRE_CORRUPT, 1, 42, WM_SEC(0), 1, KW_WIRE_SCALE_LOG8},
};
#define WM_N_CASES11 (sizeof wm_cases11 / sizeof wm_cases11[0])

/* Faults in the outlier table and the v1.1 section head, applied to wm_base11o (table at body offset WM11O_TABLE:
 * n (4), dtype (1), reserved (3), varints 05 33 70 a9-01 b3-01 76 at 8..15, six bf16 values at 16..27). */
static const wm_case wm_cases11o[] = {
    {"v11o_as_v1", KW_E_WIRE_RESERVED, 1, KW__HDR_VERSION, WM_HDR, 2, KW_WIRE_VERSION},
    {"v11o_flags_reserved", KW_E_WIRE_RESERVED, 1, KW__SEC_FLAGS, WM_SEC(0), 1, 0x46},
    {"v11o_table_size_without_flag", KW_E_WIRE_RESERVED, 1, KW__SEC_FLAGS, WM_SEC(0), 1, 0x02},
    {"v11o_table_size_short", KW_E_WIRE_CORRUPT, 1, KW__SEC_OUTLIER_BYTES, WM_SEC(0), 4, 10},
    {"v11o_table_size_wrong", KW_E_WIRE_CORRUPT, 1, KW__SEC_OUTLIER_BYTES, WM_SEC(0), 4, 29},
    {"v11o_count_zero", KW_E_WIRE_CORRUPT, 1, WM11O_TABLE, WM_BODY(0), 4, 0},
    {"v11o_count_wrong", KW_E_WIRE_CORRUPT, 1, WM11O_TABLE, WM_BODY(0), 4, 5},
    {"v11o_dtype_unknown", KW_E_WIRE_CODEC, 1, WM11O_TABLE + 4, WM_BODY(0), 1, 4},
    {"v11o_dtype_f32", KW_E_WIRE_CORRUPT, 1, WM11O_TABLE + 4, WM_BODY(0), 1, KW_WIRE_DTYPE_F32},
    {"v11o_reserved", KW_E_WIRE_RESERVED, 1, WM11O_TABLE + 6, WM_BODY(0), 1, 1},
    {"v11o_varint_overlong", KW_E_WIRE_CORRUPT, 1, WM11O_TABLE + 11, WM_BODY(0), 2, 0x0080},
    {"v11o_index_out_of_range", KW_E_WIRE_INDICES, 1, WM11O_TABLE + 12, WM_BODY(0), 1, 0x81},
    {"v11o_last_past_end", KW_E_WIRE_INDICES, 1, WM11O_TABLE + 15, WM_BODY(0), 1, 0x77},
    {"v11o_value_nan", KW_E_WIRE_VALUE, 1, WM11O_TABLE + 16, WM_BODY(0), 2, 0x7fc0},
    {"v11o_value_inf", KW_E_WIRE_VALUE, 1, WM11O_TABLE + 18, WM_BODY(0), 2, 0xff80},
};
#define WM_N_CASES11O (sizeof wm_cases11o / sizeof wm_cases11o[0])

/* Faults in the rotation flags (FORMAT.md §5.12), applied to wm_base11r (flags 0x1a; the group descriptor's K spec at
 * section offset 36, V's at 40). */
static const wm_case wm_cases11r[] = {
    {"v11r_as_v1", KW_E_WIRE_RESERVED, 1, KW__HDR_VERSION, WM_HDR, 2, KW_WIRE_VERSION},
    {"v11r_flags_reserved", KW_E_WIRE_RESERVED, 1, KW__SEC_FLAGS, WM_SEC(0), 1, 0x5a},
    {"v11r_head_dim_24", KW_E_WIRE_CODEC, 1, KW__HDR_HEAD_DIM, WM_HDR, 2, 24},
    {"v11r_k_passthrough", KW_E_WIRE_CODEC, 1, KW_WIRE_SECTION_HEAD_BYTES + 4, WM_SEC(0), 4, KW_WIRE_CODEC_BF16},
    {"v11r_v_passthrough", KW_E_WIRE_CODEC, 1, KW_WIRE_SECTION_HEAD_BYTES + 8, WM_SEC(0), 4, KW_WIRE_CODEC_F16},
};
#define WM_N_CASES11R (sizeof wm_cases11r / sizeof wm_cases11r[0])

/* Faults in the rANS-coded body (FORMAT.md §5.15), applied to wm_base11z (flags 0x20; the stored body's run list and
 * table 0 as its comment says, which the base checks). A damaged coded stream under a resealed checksum is no case
 * here: like damaged raw codes it may decode, to other values (the coder checks lengths and its final state, the
 * checksum catches damage). */
static const wm_case wm_cases11z[] = {
    {"v11z_as_v1", KW_E_WIRE_RESERVED, 1, KW__HDR_VERSION, WM_HDR, 2, KW_WIRE_VERSION},
    {"v11z_zstd_too", KW_E_WIRE_CORRUPT, 1, KW__SEC_FLAGS, WM_SEC(0), 1, 0x21},
    {"v11z_flag_dropped", KW_E_WIRE_CORRUPT, 1, KW__SEC_FLAGS, WM_SEC(0), 1, 0x00},
    {"v11z_five_tables", KW_E_WIRE_COMPRESSION, 1, 0, WM_BODY(0), 1, 0x04},
    {"v11z_run_table", KW_E_WIRE_COMPRESSION, 1, 2, WM_BODY(0), 1, 0xae},  /* the first run by table 2 of 2 */
    {"v11z_runs_short", KW_E_WIRE_COMPRESSION, 1, 1, WM_BODY(0), 1, 0x03}, /* three runs: 404 of 724 bytes */
    {"v11z_implied_entry", KW_E_WIRE_COMPRESSION, 1, 11, WM_BODY(0), 1, 0xff},
    {"v11z_frequency_length", KW_E_WIRE_COMPRESSION, 1, 12, WM_BODY(0), 1, 0xff}, /* the escape's length nibble 15 */
    {"v11z_stream_unsealed", KW_E_WIRE_CHECKSUM, 0, 40, WM_BODY(0), 0, 0x10},
};
#define WM_N_CASES11Z (sizeof wm_cases11z / sizeof wm_cases11z[0])

/* A copy of the base blob with case c applied (caller frees). */
static inline uint8_t *wm_apply(const wm_blob *b, const wm_case *c, size_t *size) {
    uint8_t *p = wt_xmalloc(b->size);
    memcpy(p, b->data, b->size);
    *size = b->size;
    size_t at = c->off;
    if (c->base >= 1 && c->base <= 3) at += b->sec[c->base - 1];
    if (c->base >= 4 && c->base <= 6) at += b->body[c->base - 4];
    if (c->base == 7) at += b->trailer;
    switch (c->width) {
    case 0:
        p[at] ^= (uint8_t)c->value;
        break;
    case 1:
        p[at] = (uint8_t)c->value;
        break;
    case 2:
        kw_store_le16(p + at, (uint16_t)c->value);
        break;
    default:
        kw_store_le32(p + at, c->value);
        break;
    }
    if (c->seal == 1) wm_seal_all(b, p, *size);
    if (c->seal == 2) wm_seal_header(p);
    return p;
}

#endif /* KW_WIRE_MUTATE_H */
