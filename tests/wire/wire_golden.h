/* wire_golden.h: the catalogue of golden KVWire blobs (tests/golden/wire/, valid; tests/golden/wire-errors/,
 * must-reject) and the text description (.expect) of a decoded blob. Shared by the generator
 * (tests/golden/gen_wire_golden.c, run by hand to regenerate, which is a deliberate act tied to a format version)
 * and by test_wire_golden.c (decodes the committed files, compares with the .expect files, and checks that
 * regenerating gives the same bytes). Inputs are exact dyadic values from a seeded RNG, so the bytes do not depend
 * on the platform's libm; only zstd-compressed sections depend on the libzstd version recorded in each .expect. */
#ifndef KW_WIRE_GOLDEN_H
#define KW_WIRE_GOLDEN_H

#include <stdarg.h>
#include <zstd.h>

#include "tests/wire/wire_mutate.h"

// ---------------------------------------------------------------------------------------------------------------
// Valid blobs

typedef struct wg_spec {
    const char *name;
    const char *what;
    uint16_t H, D;
    uint32_t P, T;
    uint8_t src;
    kw_wire_codec_spec k, v;
    uint8_t index;
    int zstd;
    int data; /* 0 random, 1 constant rows, 2 zeros, 3 integers in [-127, 127] with 127 present */
} wg_spec;

#define WG_Q(c, g, s, l)                                                                                               \
    { KW_WIRE_CODEC_##c, KW_WIRE_GRAN_##g, KW_WIRE_SCALE_##s, l }
/* v1.1: with zero points */
#define WG_QZ(c, g, s, l)                                                                                              \
    { KW_WIRE_CODEC_##c, KW_WIRE_GRAN_##g, KW_WIRE_SCALE_##s | KW_WIRE_SCALE_ZERO_POINTS, l }
#define WG_PASS(c)                                                                                                     \
    { KW_WIRE_CODEC_##c, 0, 0, 0 }

static const wg_spec wg_valid[] = {
    {"int8_token_f16_full", "int8, one f16 scale per (head, token), all positions", 2, 8, 4, 4, KW_WIRE_DTYPE_BF16,
     WG_Q(INT8, TOKEN, F16, 0), WG_Q(INT8, TOKEN, F16, 0), KW_WIRE_INDEX_AUTO, 0, 0},
    {"int4_head_bf16_range", "int4 with per-head bf16 scales, a contiguous window", 2, 16, 40, 10, KW_WIRE_DTYPE_F32,
     WG_Q(INT4, HEAD, BF16, 0), WG_Q(INT4, HEAD, BF16, 0), KW_WIRE_INDEX_AUTO, 0, 0},
    {"int6_group4_f32_u16", "int6 with an f32 scale per 4 channels, u16 positions", 1, 8, 300, 3, KW_WIRE_DTYPE_BF16,
     WG_Q(INT6, GROUP, F32, 2), WG_Q(INT6, GROUP, F32, 2), KW_WIRE_INDEX_U16, 0, 0},
    {"nf4_group8_e8m0_bitmap", "nf4 with e8m0 scales per 8 channels, bitmap of 61 positions", 2, 16, 61, 20,
     KW_WIRE_DTYPE_BF16, WG_Q(NF4, GROUP, E8M0, 3), WG_Q(NF4, GROUP, E8M0, 3), KW_WIRE_INDEX_AUTO, 0, 0},
    {"e4m3_layer_f32_varint", "fp8 e4m3 with one f32 scale per tensor, varint positions", 2, 8, 1000, 5,
     KW_WIRE_DTYPE_BF16, WG_Q(E4M3, LAYER, F32, 0), WG_Q(E4M3, LAYER, F32, 0), KW_WIRE_INDEX_AUTO, 0, 0},
    {"e5m2_token_f16_u32", "fp8 e5m2 per (head, token) f16 scales, u32 positions, f16 input", 1, 8, 100000, 3,
     KW_WIRE_DTYPE_F16, WG_Q(E5M2, TOKEN, F16, 0), WG_Q(E5M2, TOKEN, F16, 0), KW_WIRE_INDEX_U32, 0, 0},
    {"passthrough_bf16_f16", "K bf16 and V f16 passthrough from f32 input", 2, 8, 6, 6, KW_WIRE_DTYPE_F32,
     WG_PASS(BF16), WG_PASS(F16), KW_WIRE_INDEX_AUTO, 0, 0},
    {"int8_zstd", "int8 per token on repetitive data, zstd level 19", 2, 32, 64, 64, KW_WIRE_DTYPE_BF16,
     WG_Q(INT8, TOKEN, F16, 0), WG_Q(INT4, TOKEN, F16, 0), KW_WIRE_INDEX_AUTO, 19, 1},
    {"zeros_e8m0", "all-zero K and V with e8m0 scales: scale byte 0, zero codes, exact zeros out", 1, 8, 4, 4,
     KW_WIRE_DTYPE_BF16, WG_Q(INT4, TOKEN, E8M0, 0), WG_Q(E4M3, HEAD, E8M0, 0), KW_WIRE_INDEX_AUTO, 0, 2},
    {"int8_layer_f32_exact", "integers with absmax 127 and one f32 scale: s = 1 and the decode is exact", 1, 8, 2, 2,
     KW_WIRE_DTYPE_F32, WG_Q(INT8, LAYER, F32, 0), WG_Q(INT8, LAYER, F32, 0), KW_WIRE_INDEX_AUTO, 0, 3},
    /* v1.1 */
    {"v11_int2z_channel4_f16",
     "v1.1: K int2 with zero points, f16 scales per channel over runs of 4 of 10 tokens; V "
     "int2 with zero points per token",
     2, 16, 10, 10, KW_WIRE_DTYPE_BF16, WG_QZ(INT2, CHANNEL, F16, 2), WG_QZ(INT2, TOKEN, F16, 0), KW_WIRE_INDEX_AUTO, 0,
     0},
    {"v11_int3_group8_bf16", "v1.1: symmetric int3, bf16 scales per 8 channels (K) and per token (V), f32 input", 2, 16,
     40, 7, KW_WIRE_DTYPE_F32, WG_Q(INT3, GROUP, BF16, 3), WG_Q(INT3, TOKEN, BF16, 0), KW_WIRE_INDEX_AUTO, 0, 0},
    {"v11_int8z_channel_constant",
     "v1.1: int8 with zero points per channel over all tokens on values constant along "
     "tokens: zero scales, the zero points decode exactly",
     1, 8, 4, 4, KW_WIRE_DTYPE_BF16, WG_QZ(INT8, CHANNEL, F32, 4), WG_QZ(INT4, CHANNEL, F16, 1), KW_WIRE_INDEX_AUTO, 0,
     1},
    {"v11_int6z_group4_int3_group4",
     "v1.1: int6 with zero points and bf16 scales per 4 channels (K), int3 per 4 "
     "channels (12-bit groups) with f32 scales (V), u16 positions",
     1, 8, 300, 3, KW_WIRE_DTYPE_F16, WG_QZ(INT6, GROUP, BF16, 2), WG_Q(INT3, GROUP, F32, 2), KW_WIRE_INDEX_U16, 0, 0},
    {"v11_int4_channel4_log8",
     "v1.1: log8 scales (the receiver cache's byte), K int4 per channel over runs of 4 of 10 tokens, V int8 per 8 "
     "channels",
     2, 16, 10, 10, KW_WIRE_DTYPE_BF16, WG_Q(INT4, CHANNEL, LOG8, 2), WG_Q(INT8, GROUP, LOG8, 3), KW_WIRE_INDEX_AUTO, 0,
     0},
    {"v11_int6_token_int2_head_log8", "v1.1: log8 scales, K int6 per token, V int2 per head, f32 input", 2, 8, 30, 5,
     KW_WIRE_DTYPE_F32, WG_Q(INT6, TOKEN, LOG8, 0), WG_Q(INT2, HEAD, LOG8, 0), KW_WIRE_INDEX_AUTO, 0, 0},
};
#define WG_N_VALID (sizeof wg_valid / sizeof wg_valid[0])

/* Extra valid blobs built differently: the three-section base of wire_mutate.h, and a blob with no sections. */
static const char *const wg_extra[] = {"mixed_three_sections", "empty",       "v11_base",
                                       "v11_outliers",         "v11_rotated", "v11_rans"};
#define WG_N_EXTRA 6

/* Builds valid golden i (0..WG_N_VALID + WG_N_EXTRA - 1) into a new buffer. */
static inline void wg_build(size_t i, uint8_t **blob, size_t *size) {
    if (i == WG_N_VALID) {
        wm_blob b;
        wm_base(&b);
        *blob = b.data;
        *size = b.size;
        return;
    }
    if (i >= WG_N_VALID + 2) {
        void (*const bases[4])(wm_blob *) = {wm_base11, wm_base11o, wm_base11r, wm_base11z};
        wm_blob b;
        bases[i - WG_N_VALID - 2](&b);
        *blob = b.data;
        *size = b.size;
        return;
    }
    if (i == WG_N_VALID + 1) {
        const kw_wire_header hdr = {.n_layers = 28,
                                    .n_sections = 0,
                                    .n_kv_heads = 8,
                                    .head_dim = 128,
                                    .n_positions = 512,
                                    .src_dtype = KW_WIRE_DTYPE_BF16,
                                    .model_id = 1,
                                    .policy_id = 2};
        if (wt_encode_blob(&hdr, NULL, NULL, 0, 0, blob, size) < 0) abort();
        return;
    }
    const wg_spec *g = &wg_valid[i];
    wt_rng r = {0x601de + i};
    const kw_wire_header hdr = {.n_layers = 4,
                                .n_sections = 1,
                                .n_kv_heads = g->H,
                                .head_dim = g->D,
                                .n_positions = g->P,
                                .src_dtype = g->src,
                                .model_id = 0xabcdef00u + i,
                                .policy_id = (uint32_t)i,
                                .version = kw_wire_spec_needs_v11(&g->k) || kw_wire_spec_needs_v11(&g->v)
                                               ? KW_WIRE_VERSION_1_1
                                               : KW_WIRE_VERSION};
    const size_t n = (size_t)g->H * g->T * g->D, es = g->src == KW_WIRE_DTYPE_F32 ? 4 : 2;
    uint8_t *data[2] = {wt_xmalloc(n * es), wt_xmalloc(n * es)};
    for (int kv = 0; kv < 2; ++kv)
        for (size_t e = 0; e < n; ++e) {
            float v;
            switch (g->data) {
            case 1:
                v = (float)((e % g->D) % 5) * 0.25f - 0.5f;
                break;
            case 2:
                v = 0.0f;
                break;
            case 3:
                v = e == 3 ? 127.0f : (float)((int)(wt_below(&r, 255)) - 127);
                break;
            default:
                v = wt_bell(&r);
                break;
            }
            if (g->src == KW_WIRE_DTYPE_F32)
                memcpy(data[kv] + e * 4, &v, 4);
            else {
                const uint16_t h = g->src == KW_WIRE_DTYPE_BF16 ? kw_f32_to_bf16(v) : kw_f32_to_f16(v);
                memcpy(data[kv] + e * 2, &h, 2);
            }
        }
    uint32_t *pos = wt_xmalloc((size_t)g->T * 4);
    if (g->T == g->P)
        for (uint32_t t = 0; t < g->T; ++t)
            pos[t] = t;
    else if (i == 1)
        for (uint32_t t = 0; t < g->T; ++t)
            pos[t] = 17 + t;
    else
        wt_sample_positions(&r, g->P, g->T, pos);
    kw_wire_layer_in in = {.layer = 2, .n_tokens = g->T, .positions = pos};
    in.k = (kw_wire_tensor_in){data[0], (size_t)g->T * g->D, g->D, NULL};
    in.v = (kw_wire_tensor_in){data[1], (size_t)g->T * g->D, g->D, NULL};
    const kw_wire_policy pol = {.k = g->k, .v = g->v, .index_encoding = g->index, .zstd_level = g->zstd};
    if (wt_encode_blob(&hdr, &in, &pol, 1, 0, blob, size) < 0) {
        fprintf(stderr, "golden %s: %s\n", g->name, kw_error_detail());
        abort();
    }
    free(data[0]);
    free(data[1]);
    free(pos);
}

static inline const char *wg_name(size_t i) {
    return i < WG_N_VALID ? wg_valid[i].name : wg_extra[i - WG_N_VALID];
}

// ---------------------------------------------------------------------------------------------------------------
// Must-reject blobs: mutations of the base blob by name, plus truncation and trailing bytes

static const char *const wg_errors[] = {
    "magic",
    "version_future",
    "header_checksum",
    "header_flags",
    "layers_over_limit",
    "sections_more",
    "layer_repeated",
    "index_encoding_unknown",
    "groups_over_limit",
    "raw_bytes_over_limit",
    "codec_unknown",
    "scale_dtype_unknown", /* 5: log8, a v1.1 dtype, in a v1 blob */
    "group_log2_reserved",
    "section_checksum",
    "bitmap_padding",
    "varint_position_out_of_range",
    "scale_negative",
    "code_int8_minus_128",
    "zstd_frame_damaged",
    "trailer_checksum",
    "truncated",
    "trailing",
    /* v1.1 fields, faults in v11_base */
    "v11_as_v1",
    "v11_version_two",
    "v11_scale_flags_reserved",
    "v11_zero_points_e8m0",
    "v11_zero_points_fp8",
    "v11_zero_points_passthrough",
    "v11_channel_run_too_long",
    "v11_granularity_unknown",
    "v11_codec_unknown",
    "v11_zero_points_dropped",
    "v11_channel_run_changed",
    "v11_zero_point_nan",
    "v11_zero_point_inf",
    "v11_zero_point_too_large",
    "v11_scale_negative",
    "v11_code_int3_minus_4",
    "v11_code_int2_minus_2",
    "v11_log8_zero_points",
    "v11_log8_fp8",
    "v11_log8_nf4",
    "v11_scale_dtype_6",
    "v11_log8_size_changed",
    /* the outlier table and the v1.1 section head, faults in v11_outliers */
    "v11o_as_v1",
    "v11o_flags_reserved",
    "v11o_table_size_without_flag",
    "v11o_table_size_short",
    "v11o_table_size_wrong",
    "v11o_count_zero",
    "v11o_count_wrong",
    "v11o_dtype_unknown",
    "v11o_reserved",
    "v11o_varint_overlong",
    "v11o_index_out_of_range",
    "v11o_last_past_end",
    "v11o_value_nan",
    "v11o_value_inf",
    /* the rotation flags: in a v1 blob, reserved bits, a head_dim that is no power of two, passthrough rotated */
    "section_flags_rotated",
    "v11r_as_v1",
    "v11r_flags_reserved",
    "v11r_head_dim_24",
    "v11r_k_passthrough",
    "v11r_v_passthrough",
    /* the rANS-coded body: in a v1 blob, with zstd's flag too, the flag dropped, bad run lists, two bad tables */
    "v11z_as_v1",
    "v11z_zstd_too",
    "v11z_flag_dropped",
    "v11z_five_tables",
    "v11z_run_table",
    "v11z_runs_short",
    "v11z_implied_entry",
    "v11z_frequency_length",
};
#define WG_N_ERRORS (sizeof wg_errors / sizeof wg_errors[0])

/* The case called name of a catalogue applied to base b into *blob; returns its expected status, 0 if none is. */
static inline int wg_find_case(const wm_blob *b, const wm_case *cases, size_t n, const char *name, uint8_t **blob,
                               size_t *size) {
    for (size_t c = 0; c < n; ++c)
        if (!strcmp(cases[c].name, name)) {
            *blob = wm_apply(b, &cases[c], size);
            return cases[c].expect;
        }
    return 0;
}

/* Builds must-reject blob i; returns its expected status. */
static inline int wg_build_error(size_t i, uint8_t **blob, size_t *size) {
    wm_blob b;
    wm_base(&b);
    const char *name = wg_errors[i];
    int expect;
    if (!strcmp(name, "truncated")) {
        *blob = b.data;
        *size = b.size - 1;
        return KW_E_WIRE_TRUNCATED;
    }
    if (!strcmp(name, "trailing")) {
        *blob = realloc(b.data, b.size + 1);
        (*blob)[b.size] = 0;
        *size = b.size + 1;
        return KW_E_WIRE_TRAILING;
    }
    expect = wg_find_case(&b, wm_cases, WM_N_CASES, name, blob, size);
    free(b.data);
    void (*const bases[4])(wm_blob *) = {wm_base11, wm_base11o, wm_base11r, wm_base11z};
    const wm_case *const catalogues[4] = {wm_cases11, wm_cases11o, wm_cases11r, wm_cases11z};
    const size_t n_cases[4] = {WM_N_CASES11, WM_N_CASES11O, WM_N_CASES11R, WM_N_CASES11Z};
    for (int k = 0; k < 4 && !expect; ++k) {
        bases[k](&b);
        expect = wg_find_case(&b, catalogues[k], n_cases[k], name, blob, size);
        free(b.data);
    }
    if (!expect) abort();
    return expect;
}

// ---------------------------------------------------------------------------------------------------------------
// Describing a decoded blob

typedef struct wg_text {
    char *s;
    size_t len, cap;
} wg_text;

static inline void wg_printf(wg_text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static inline void wg_printf(wg_text *t, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        const int n = vsnprintf(t->s ? t->s + t->len : NULL, t->s ? t->cap - t->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) abort();
        if (t->s && t->len + (size_t)n < t->cap) {
            t->len += (size_t)n;
            return;
        }
        t->cap = (t->cap + (size_t)n + 1) * 2;
        t->s = realloc(t->s, t->cap);
        if (!t->s) abort();
    }
}

/* XXH3 of n f32 values serialized as little-endian bits. */
static inline uint64_t wg_hash_f32(const float *v, size_t n) {
    uint8_t *b = wt_xmalloc(n * 4);
    for (size_t i = 0; i < n; ++i)
        kw_store_le32(b + 4 * i, kw_f32_bits(v[i]));
    const uint64_t h = kw__wire_hash_bytes(b, n * 4);
    free(b);
    return h;
}

static inline uint64_t wg_hash_u16(const uint16_t *v, size_t n) {
    uint8_t *b = wt_xmalloc(n * 2);
    for (size_t i = 0; i < n; ++i)
        kw_store_le16(b + 2 * i, v[i]);
    const uint64_t h = kw__wire_hash_bytes(b, n * 2);
    free(b);
    return h;
}

static inline void wg_spec_text(wg_text *t, const kw_wire_codec_spec *s) {
    wg_printf(t, "%s/%s/%s", kw_wire_codec_name(s->codec), kw_wire_gran_name(s->granularity),
              kw_wire_scale_name(kw_wire_spec_scale(s)));
    if (s->granularity == KW_WIRE_GRAN_GROUP) wg_printf(t, "/G%u", 1u << s->group_log2);
    if (s->granularity == KW_WIRE_GRAN_CHANNEL) wg_printf(t, "/L%u", 1u << s->group_log2);
    if (kw_wire_spec_asym(s)) wg_printf(t, "/zero-points");
}

/* "v1" or "v1.1": the version a golden file's first line names. */
static inline const char *wg_version_name(uint16_t version) {
    return version == KW_WIRE_VERSION_1_1 ? "v1.1" : "v1";
}

/* The .expect text of a valid blob (decoded one-shot; the caller has checked it decodes). */
static inline int wg_describe(const char *what, const uint8_t *blob, size_t size, wg_text *t) {
    int compressed = 0;
    kw_wire_reader *r;
    const kw_wire_header *h;
    int rc = kw_wire_reader_open(blob, size, NULL, &r, &h);
    if (rc < 0) return rc;
    wg_printf(t, "# KVWire %s golden blob: %s\n", wg_version_name(h->version), what);
    wg_printf(t, "size %zu\nblob_xxh3 %016llx\n", size, (unsigned long long)kw__wire_hash_bytes(blob, size));
    wg_printf(t,
              "header layers=%u sections=%u heads=%u head_dim=%u positions=%u src=%s model_id=%016llx policy_id=%u\n",
              h->n_layers, h->n_sections, h->n_kv_heads, h->head_dim, h->n_positions, kw_wire_dtype_name(h->src_dtype),
              (unsigned long long)h->model_id, h->policy_id);
    const kw_wire_header hdr = *h;
    const kw_wire_section *s;
    wt_blob_out o = {0};
    o.hdr = hdr;
    while ((rc = kw_wire_reader_next(r, &s)) == 1) {
        wg_printf(t, "section %u layer=%u tokens=%u index=%s index_bytes=%u raw=%u stored=%u compressed=%d groups=%u\n",
                  s->ordinal, s->layer, s->n_tokens, kw_wire_index_name(s->index_encoding), s->index_bytes,
                  s->raw_body_bytes, s->stored_body_bytes, (int)s->compressed, s->n_groups);
        compressed |= s->compressed && !s->rans_coded; /* zstd's bytes depend on its version, the rANS coder's not */
        if (s->rans_coded) wg_printf(t, "  rans=1\n");
        if (s->pre_rope || s->n_outliers)
            wg_printf(t, "  pre_rope=%d outliers=%u outlier_dtype=%s outlier_bytes=%u\n", (int)s->pre_rope,
                      s->n_outliers, s->n_outliers ? kw_wire_dtype_name(s->outlier_dtype) : "-", s->outlier_bytes);
        if (s->rotated) wg_printf(t, "  rotated k=%d v=%d\n", s->rotated & 1, (s->rotated >> 1) & 1);
        for (uint32_t g = 0; g < s->n_groups; ++g) {
            wg_printf(t, "  group %u first=%u tokens=%u k=", g, s->groups[g].first_token, s->groups[g].n_tokens);
            wg_spec_text(t, &s->groups[g].k.spec);
            wg_printf(t, " v=");
            wg_spec_text(t, &s->groups[g].v.spec);
            wg_printf(t, "\n");
        }
        if ((rc = wt_take_section(&hdr, s, &o)) < 0) break;
        const wt_layer_out *l = &o.layers[o.n - 1];
        wg_printf(t, "  positions");
        for (uint32_t i = 0; i < l->n_tokens; ++i)
            wg_printf(t, " %u", l->positions[i]);
        const size_t n = (size_t)hdr.n_kv_heads * l->n_tokens * hdr.head_dim;
        wg_printf(t, "\n  k_f32_xxh3 %016llx v_f32_xxh3 %016llx k_bf16_xxh3 %016llx v_bf16_xxh3 %016llx\n",
                  (unsigned long long)wg_hash_f32(l->k, n), (unsigned long long)wg_hash_f32(l->v, n),
                  (unsigned long long)wg_hash_u16(l->kb, n), (unsigned long long)wg_hash_u16(l->vb, n));
        if (n <= 64)
            for (int kv = 0; kv < 2; ++kv) {
                wg_printf(t, "  %c (f32 bits, (H, T, D) order)", kv ? 'v' : 'k');
                for (size_t e = 0; e < n; ++e)
                    wg_printf(t, " %08x", kw_f32_bits((kv ? l->v : l->k)[e]));
                wg_printf(t, "\n");
            }
    }
    if (rc == 0) {
        const kw_wire_breakdown *bd = kw_wire_reader_breakdown(r);
        wg_printf(t,
                  "breakdown header=%llu indices=%llu scales=%llu payload=%llu checksums=%llu saved=%llu total=%llu\n",
                  (unsigned long long)bd->header, (unsigned long long)bd->indices, (unsigned long long)bd->scales,
                  (unsigned long long)bd->payload, (unsigned long long)bd->checksums,
                  (unsigned long long)bd->compression_saved, (unsigned long long)bd->total);
        if (bd->outliers) wg_printf(t, "outliers %llu\n", (unsigned long long)bd->outliers);
        /* compressed bytes are deterministic for one libzstd version: the regeneration check needs the same one */
        if (compressed) wg_printf(t, "zstd %u\n", ZSTD_versionNumber());
    }
    wt_blob_out_free(&o);
    kw_wire_reader_close(r);
    return rc;
}

#endif /* KW_WIRE_GOLDEN_H */
