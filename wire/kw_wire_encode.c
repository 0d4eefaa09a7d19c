/* kw_wire_encode.c: the KVWire encoder (docs/FORMAT.md). It writes a blob as header, sections and trailer into caller
 * buffers, one call each, so a sharer can put every section on the socket as soon as its layer is ready. Encoding is
 * deterministic: the same header, inputs and policies give the same bytes (for one libzstd version when compression
 * is on). It validates its inputs and never writes a blob a conforming decoder would reject.
 *
 * Not here: the per-value math (kw_wire_quant.h), the row kernels (kw_wire_kernels.c, kw_wire_simd_x86.c).
 */
#include "wire/kw_wire_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "wire/kw_wire_rans.h"

#include "common/kw_bytes.h"
#include "common/kw_half.h"

struct kw_wire_encoder {
    kw_wire_header hdr;
    const kw__wire_kernels *kernels;
    int stage; /* 0: header due; 1: sections; 2: trailer written */
    uint32_t sections;
    int64_t last_layer;
    uint64_t total; /* bytes written so far */
    kw__wire_hash hash;
    ZSTD_CCtx *zc;
    uint8_t *scratch; /* zstd's output */
    size_t scratch_cap;
    uint8_t *rans_scratch; /* the rANS coder's output */
    size_t rans_scratch_cap;
    kw__wire_rans_run *rans_runs; /* the pending section's body as the rANS coder's runs (FORMAT.md §5.15) */
    size_t rans_runs_cap;         /* bytes */
    void *outlier_scratch;        /* the outlier selection's scores (kw__wire_outlier_select_scratch) */
    size_t outlier_scratch_cap;
    uint8_t *outlier_mask; /* the chosen outliers of the section being written */
    size_t outlier_mask_cap;
    uint8_t *rotated; /* the section's rotated K and V (FORMAT.md §5.12), (T, H, D) each in src_dtype */
    size_t rotated_cap;
    uint8_t *rot_block; /* KW__ENC_ROT_BYTES: a block of rows kw__enc_tensor rotates itself (NULL until needed) */
    float rot_sx[KW_WIRE_MAX_HEAD_DIM]; /* the forward rotation factors (kw__wire_rotate_factors) */
    kw_wire_breakdown bd;
    struct kw__enc_pending { /* a section begun and not yet finished (dst NULL: none) */
        uint8_t *dst;
        uint32_t layer, n_groups;
        size_t table, index_bytes;
        uint64_t raw, scale_bytes, zero_bytes, code_bytes; /* scale_bytes includes zero_bytes */
        uint64_t outlier_bytes;
        int zstd_level;
        uint8_t rans;
        size_t n_rans_runs;
    } pending;
};

// ---------------------------------------------------------------------------------------------------------------
// Validation and sizes

static int kw__enc_check_header(const kw_wire_header *h) {
    KW_RETURN_IF(!h, KW_E_INVALID_ARG, "no header");
    KW_RETURN_IF(h->n_layers < 1 || h->n_layers > KW_WIRE_MAX_LAYERS, KW_E_INVALID_ARG, "n_layers %u not in 1..%u",
                 h->n_layers, KW_WIRE_MAX_LAYERS);
    KW_RETURN_IF(h->n_sections > h->n_layers, KW_E_INVALID_ARG, "n_sections %u > n_layers %u", h->n_sections,
                 h->n_layers);
    KW_RETURN_IF(h->n_kv_heads < 1 || h->n_kv_heads > KW_WIRE_MAX_HEADS, KW_E_INVALID_ARG, "n_kv_heads %u not in 1..%u",
                 h->n_kv_heads, KW_WIRE_MAX_HEADS);
    KW_RETURN_IF(h->head_dim < 8 || h->head_dim > KW_WIRE_MAX_HEAD_DIM || h->head_dim % 8 != 0, KW_E_INVALID_ARG,
                 "head_dim %u is not a multiple of 8 in 8..%u", h->head_dim, KW_WIRE_MAX_HEAD_DIM);
    KW_RETURN_IF(h->n_positions < 1 || h->n_positions > KW_WIRE_MAX_POSITIONS, KW_E_INVALID_ARG,
                 "n_positions %u not in 1..%u", h->n_positions, KW_WIRE_MAX_POSITIONS);
    KW_RETURN_IF(kw__wire_dtype_size(h->src_dtype) == 0, KW_E_INVALID_ARG, "unknown src_dtype %u", h->src_dtype);
    KW_RETURN_IF(h->version != 0 && h->version != KW_WIRE_VERSION && h->version != KW_WIRE_VERSION_1_1,
                 KW_E_INVALID_ARG, "version 0x%04x is neither v1 (1) nor v1.1 (0x0101)", h->version);
    return 0;
}

/* Validates one tensor's spec for the header's version. */
static int kw__enc_spec(const kw_wire_header *hdr, const kw_wire_codec_spec *sp, uint32_t g, char kv) {
    const int v11 = kw__wire_is_v11(hdr->version);
    KW_RETURN_IF(!v11 && kw_wire_spec_needs_v11(sp), KW_E_INVALID_ARG,
                 "group %u: the %c codec (%s%s/%s) needs KVWire v1.1: set the header's version to "
                 "KW_WIRE_VERSION_1_1",
                 g, kv, kw_wire_codec_name(sp->codec), kw_wire_spec_asym(sp) ? "-asym" : "",
                 kw_wire_gran_name(sp->granularity));
    KW_RETURN_IF(kw__wire_spec_check(sp, hdr->head_dim, v11) < 0, KW_E_INVALID_ARG,
                 "group %u: invalid %c codec (%s%s/%s/%s, log2 %u) for head_dim %u", g, kv,
                 kw_wire_codec_name(sp->codec), kw_wire_spec_asym(sp) ? "-asym" : "",
                 kw_wire_gran_name(sp->granularity), kw_wire_scale_name(kw_wire_spec_scale(sp)), sp->group_log2,
                 hdr->head_dim);
    return 0;
}

/* Resolves a policy to its token groups (the single-group form is written to *single). */
static int kw__enc_policy(const kw_wire_header *hdr, const kw_wire_policy *pol, uint32_t n_tokens,
                          kw_wire_token_group *single, const kw_wire_token_group **groups, uint32_t *n_groups) {
    KW_RETURN_IF(!pol, KW_E_INVALID_ARG, "no policy");
    KW_RETURN_IF(n_tokens < 1, KW_E_INVALID_ARG, "a section needs at least one token");
    if (pol->n_groups == 0) {
        single->n_tokens = n_tokens;
        single->k = pol->k;
        single->v = pol->v;
        *groups = single;
        *n_groups = 1;
    } else {
        KW_RETURN_IF(!pol->groups, KW_E_INVALID_ARG, "n_groups %u without groups", pol->n_groups);
        KW_RETURN_IF(pol->n_groups > KW_WIRE_MAX_GROUPS, KW_E_INVALID_ARG, "%u token groups > %u", pol->n_groups,
                     KW_WIRE_MAX_GROUPS);
        *groups = pol->groups;
        *n_groups = pol->n_groups;
    }
    uint64_t sum = 0;
    for (uint32_t g = 0; g < *n_groups; ++g) {
        const kw_wire_token_group *tg = &(*groups)[g];
        KW_RETURN_IF(tg->n_tokens < 1, KW_E_INVALID_ARG, "token group %u is empty", g);
        sum += tg->n_tokens;
        KW_FORWARD(kw__enc_spec(hdr, &tg->k, g, 'K'));
        KW_FORWARD(kw__enc_spec(hdr, &tg->v, g, 'V'));
    }
    KW_RETURN_IF(sum != n_tokens, KW_E_INVALID_ARG, "token groups cover %llu tokens, the section has %u",
                 (unsigned long long)sum, n_tokens);
    KW_RETURN_IF((pol->outliers || pol->pre_rope) && !kw__wire_is_v11(hdr->version), KW_E_INVALID_ARG,
                 "outliers and pre-RoPE keys need KVWire v1.1: set the header's version to KW_WIRE_VERSION_1_1");
    KW_RETURN_IF(pol->pre_rope > 1, KW_E_INVALID_ARG, "pre_rope %u is neither 0 nor 1", pol->pre_rope);
    KW_RETURN_IF(pol->rotate && !kw__wire_is_v11(hdr->version), KW_E_INVALID_ARG,
                 "rotated K or V needs KVWire v1.1: set the header's version to KW_WIRE_VERSION_1_1");
    KW_RETURN_IF(pol->rans && !kw__wire_is_v11(hdr->version), KW_E_INVALID_ARG,
                 "the rANS body coder needs KVWire v1.1: set the header's version to KW_WIRE_VERSION_1_1");
    KW_RETURN_IF(pol->rans > 1, KW_E_INVALID_ARG, "rans %u is neither 0 nor 1", pol->rans);
    KW_RETURN_IF(pol->rotate > 3, KW_E_INVALID_ARG, "rotate %u: bit 0 is K, bit 1 V, no others", pol->rotate);
    KW_RETURN_IF(pol->clip > 3, KW_E_INVALID_ARG, "clip %u: bit 0 is K, bit 1 V, no others", pol->clip);
    KW_RETURN_IF(pol->rotate && kw_wire_rotate_log2(hdr->head_dim) < 0, KW_E_INVALID_ARG,
                 "the Hadamard rotation needs a head_dim that is a power of two, not %u", hdr->head_dim);
    for (uint32_t g = 0; pol->rotate && g < *n_groups; ++g)
        KW_RETURN_IF(((pol->rotate & 1) && kw_wire_codec_is_passthrough((*groups)[g].k.codec)) ||
                         ((pol->rotate & 2) && kw_wire_codec_is_passthrough((*groups)[g].v.codec)),
                     KW_E_INVALID_ARG, "token group %u: a rotated tensor needs a quantizing codec, not passthrough", g);
    KW_RETURN_IF(pol->outlier_dtype != 0 && kw__wire_outlier_value_size(pol->outlier_dtype) == 0, KW_E_INVALID_ARG,
                 "unknown outlier value dtype %u", pol->outlier_dtype);
    if (pol->zstd_level != 0)
        KW_RETURN_IF(pol->zstd_level < ZSTD_minCLevel() || pol->zstd_level > ZSTD_maxCLevel(), KW_E_INVALID_ARG,
                     "zstd level %d not in %d..%d", pol->zstd_level, ZSTD_minCLevel(), ZSTD_maxCLevel());
    return 0;
}

/* Raw body bytes minus the index block. */
static uint64_t kw__enc_tensors_bytes(const kw_wire_header *hdr, const kw_wire_token_group *groups, uint32_t n) {
    uint64_t sum = 0;
    for (uint32_t g = 0; g < n; ++g)
        sum += kw__wire_tensor_bytes(&groups[g].k, hdr->n_kv_heads, groups[g].n_tokens, hdr->head_dim) +
               kw__wire_tensor_bytes(&groups[g].v, hdr->n_kv_heads, groups[g].n_tokens, hdr->head_dim);
    return sum;
}

static int kw__enc_total(uint32_t n_groups, uint64_t raw, size_t *out) {
    KW_RETURN_IF(raw > KW_WIRE_MAX_SECTION_BYTES, KW_E_WIRE_LIMIT,
                 "section body of %llu bytes exceeds the format "
                 "maximum (4 GiB - 1)",
                 (unsigned long long)raw);
    const uint64_t total =
        KW_WIRE_SECTION_HEAD_BYTES + (uint64_t)KW_WIRE_GROUP_DESC_BYTES * n_groups + raw + KW_WIRE_CHECKSUM_BYTES;
    KW_RETURN_IF(total > SIZE_MAX, KW_E_OVERFLOW, "section size overflows size_t");
    *out = (size_t)total;
    return 0;
}

int kw_wire_section_size(const kw_wire_header *hdr, const kw_wire_policy *pol, uint32_t n_tokens,
                         const uint32_t *positions, size_t *out) {
    KW_FORWARD(kw__enc_check_header(hdr));
    kw_wire_token_group single;
    const kw_wire_token_group *groups;
    uint32_t n_groups;
    KW_FORWARD(kw__enc_policy(hdr, pol, n_tokens, &single, &groups, &n_groups));
    uint8_t enc;
    size_t index_bytes;
    KW_FORWARD(kw_wire_index_choose(hdr->n_positions, positions, n_tokens, pol->index_encoding, &enc, &index_bytes));
    return kw__enc_total(n_groups,
                         index_bytes + kw__enc_tensors_bytes(hdr, groups, n_groups) +
                             kw__wire_outlier_table_bound(hdr, n_tokens, pol->outliers, pol->outlier_dtype),
                         out);
}

int kw_wire_section_bound(const kw_wire_header *hdr, const kw_wire_policy *pol, uint32_t n_tokens, size_t *out) {
    KW_FORWARD(kw__enc_check_header(hdr));
    kw_wire_token_group single;
    const kw_wire_token_group *groups;
    uint32_t n_groups;
    KW_FORWARD(kw__enc_policy(hdr, pol, n_tokens, &single, &groups, &n_groups));
    KW_RETURN_IF(n_tokens > hdr->n_positions, KW_E_INVALID_ARG, "%u tokens out of %u positions", n_tokens,
                 hdr->n_positions);
    KW_RETURN_IF(pol->index_encoding >= KW_WIRE_INDEX_COUNT, KW_E_INVALID_ARG, "unknown index encoding %u",
                 pol->index_encoding);
    const uint64_t index = kw__wire_index_bound(pol->index_encoding, n_tokens, hdr->n_positions);
    return kw__enc_total(n_groups,
                         index + kw__enc_tensors_bytes(hdr, groups, n_groups) +
                             kw__wire_outlier_table_bound(hdr, n_tokens, pol->outliers, pol->outlier_dtype),
                         out);
}

uint64_t kw__wire_index_bound(uint32_t encoding, uint32_t n_tokens, uint32_t n_positions) {
    const uint64_t bitmap = kw__wire_index_fixed_bytes(KW_WIRE_INDEX_BITMAP, n_tokens, n_positions);
    switch (encoding) {
    case KW_WIRE_INDEX_AUTO:
        return 4ull * n_tokens < bitmap ? 4ull * n_tokens : bitmap;
    case KW_WIRE_INDEX_VARINT:
        return (uint64_t)n_tokens * kw__wire_varint_len(n_positions - 1);
    default:
        return kw__wire_index_fixed_bytes(encoding, n_tokens, n_positions);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Lifecycle

int kw_wire_encoder_create(const kw_wire_header *hdr, const kw_wire_encoder_options *opt, kw_wire_encoder **out) {
    KW_RETURN_IF(!out, KW_E_INVALID_ARG, "no output pointer");
    *out = NULL;
    KW_FORWARD(kw__enc_check_header(hdr));
    kw_wire_encoder *e = calloc(1, sizeof *e);
    KW_RETURN_IF(!e, KW_E_NOMEM, "encoder allocation failed");
    e->hdr = *hdr;
    e->kernels = kw__wire_kernels_get(opt ? (enum kw_wire_isa)opt->isa : KW_WIRE_ISA_AUTO);
    e->last_layer = -1;
    kw__wire_hash_reset(&e->hash);
    *out = e;
    return 0;
}

void kw_wire_encoder_destroy(kw_wire_encoder *e) {
    if (!e) return;
    ZSTD_freeCCtx(e->zc);
    free(e->scratch);
    free(e->rans_scratch);
    free(e->rans_runs);
    free(e->outlier_scratch);
    free(e->outlier_mask);
    free(e->rotated);
    free(e->rot_block);
    free(e);
}

const kw_wire_breakdown *kw_wire_encoder_breakdown(const kw_wire_encoder *e) {
    return &e->bd;
}

/* Records n bytes just written at p as part of the blob; hashed (the blob checksum of FORMAT.md §8) are the header
 * and each section's checksum, the last 8 of its bytes. */
static void kw__enc_commit(kw_wire_encoder *e, const uint8_t *p, size_t n, int section) {
    if (section)
        kw__wire_hash_update(&e->hash, p + n - KW_WIRE_CHECKSUM_BYTES, KW_WIRE_CHECKSUM_BYTES);
    else
        kw__wire_hash_update(&e->hash, p, n);
    e->total += n;
    e->bd.total = e->total;
}

int kw_wire_encoder_write_header(kw_wire_encoder *e, void *dst, size_t cap, size_t *written) {
    KW_RETURN_IF(!e || !dst || !written, KW_E_INVALID_ARG, "null argument");
    KW_RETURN_IF(e->stage != 0, KW_E_STATE, "the header was already written");
    KW_RETURN_IF(cap < KW_WIRE_HEADER_BYTES, KW_E_BUFFER_TOO_SMALL, "header needs %d bytes, have %zu",
                 KW_WIRE_HEADER_BYTES, cap);
    uint8_t *p = dst;
    memset(p, 0, KW_WIRE_HEADER_BYTES);
    memcpy(p, kw__wire_magic, 8);
    kw_store_le16(p + KW__HDR_VERSION, kw__wire_is_v11(e->hdr.version) ? KW_WIRE_VERSION_1_1 : KW_WIRE_VERSION);
    kw_store_le16(p + KW__HDR_HEADER_BYTES, KW_WIRE_HEADER_BYTES);
    kw_store_le16(p + KW__HDR_N_LAYERS, e->hdr.n_layers);
    kw_store_le16(p + KW__HDR_N_SECTIONS, e->hdr.n_sections);
    kw_store_le16(p + KW__HDR_N_HEADS, e->hdr.n_kv_heads);
    kw_store_le16(p + KW__HDR_HEAD_DIM, e->hdr.head_dim);
    kw_store_le32(p + KW__HDR_N_POSITIONS, e->hdr.n_positions);
    p[KW__HDR_SRC_DTYPE] = e->hdr.src_dtype;
    kw_store_le64(p + KW__HDR_MODEL_ID, e->hdr.model_id);
    kw_store_le32(p + KW__HDR_POLICY_ID, e->hdr.policy_id);
    kw_store_le64(p + KW__HDR_CHECKSUM, kw__wire_hash_bytes(p, KW__HDR_CHECKSUM));
    e->stage = 1;
    e->bd.header += KW__HDR_CHECKSUM;
    e->bd.checksums += KW_WIRE_CHECKSUM_BYTES;
    kw__enc_commit(e, p, KW_WIRE_HEADER_BYTES, 0);
    *written = KW_WIRE_HEADER_BYTES;
    return 0;
}

int kw_wire_encoder_write_trailer(kw_wire_encoder *e, void *dst, size_t cap, size_t *written) {
    KW_RETURN_IF(!e || !dst || !written, KW_E_INVALID_ARG, "null argument");
    KW_RETURN_IF(e->stage != 1 || e->sections != e->hdr.n_sections, KW_E_STATE,
                 "trailer after %u of %u sections (stage %d)", e->sections, e->hdr.n_sections, e->stage);
    KW_RETURN_IF(cap < KW_WIRE_TRAILER_BYTES, KW_E_BUFFER_TOO_SMALL, "trailer needs %d bytes, have %zu",
                 KW_WIRE_TRAILER_BYTES, cap);
    uint8_t *p = dst;
    memset(p, 0, KW_WIRE_TRAILER_BYTES);
    memcpy(p, kw__wire_trailer_marker, 4);
    kw_store_le64(p + KW__TRL_BLOB_BYTES, e->total + KW_WIRE_TRAILER_BYTES);
    kw__wire_hash_update(&e->hash, p, KW__TRL_CHECKSUM);
    kw_store_le64(p + KW__TRL_CHECKSUM, kw__wire_hash_digest(&e->hash));
    e->total += KW_WIRE_TRAILER_BYTES;
    e->bd.total = e->total;
    e->bd.header += KW__TRL_CHECKSUM;
    e->bd.checksums += KW_WIRE_CHECKSUM_BYTES;
    e->stage = 2;
    *written = KW_WIRE_TRAILER_BYTES;
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Tensors

static inline const uint8_t *kw__enc_row(const kw_wire_tensor_in *in, size_t es, uint32_t h, uint32_t t) {
    const size_t r = in->rows ? in->rows[t] : t;
    return (const uint8_t *)in->data + (r * in->token_stride + (size_t)h * in->head_stride) * es;
}

/* KW_E_WIRE_RANGE if a rotated tensor's (rmax > 0) scale unit has a value past rmax (kw_wire_rotated_max): amax_bits
 * is its absmax, finite. */
static inline int kw__enc_rotated_range(uint32_t amax_bits, float rmax, const char *what, uint32_t h, uint32_t t) {
    KW_RETURN_IF(rmax > 0.0f && kw_f32_from_bits(amax_bits) > rmax, KW_E_WIRE_RANGE,
                 "%s head %u token %u: |x| = %g is past %g, the most a rotated value may be (FORMAT.md §5.12)", what, h,
                 t, (double)kw_f32_from_bits(amax_bits), (double)rmax);
    return 0;
}

/* The first of the n absmaxes (bits) that is finite and past rmax (a rotated tensor's limit; 0: none), or n. A NaN
 * or Inf is the scale rule's to report (kw__enc_scale), so a unit before the first one past rmax still reports it. */
static inline uint32_t kw__enc_first_past(const uint32_t *am, uint32_t n, float rmax) {
    if (!(rmax > 0.0f)) return n;
    const uint32_t lim = kw_f32_bits(rmax);
    for (uint32_t i = 0; i < n; ++i)
        if (am[i] > lim && am[i] < 0x7f800000u) return i;
    return n;
}

/* Passthrough rows: copy or convert to bf16/f16 (RNE), rejecting values the target cannot hold (never rotated:
 * FORMAT.md §5.12 forbids it and kw__enc_policy refuses it). */
static int kw__enc_passthrough(const kw_wire_encoder *e, const kw_wire_tensor_in *in, uint32_t codec, uint32_t t0,
                               uint32_t tg, uint8_t *dst, const char *what) {
    const uint32_t H = e->hdr.n_kv_heads, D = e->hdr.head_dim, dt = e->hdr.src_dtype;
    const size_t es = kw__wire_dtype_size(dt);
    /* the magnitude from which RNE to the target dtype gives an infinity */
    const uint32_t limit = codec == KW_WIRE_CODEC_BF16 ? 0x7f7f8000u : 0x477ff000u;
    for (uint32_t h = 0; h < H; ++h) {
        for (uint32_t t = 0; t < tg; ++t) {
            const uint8_t *row = kw__enc_row(in, es, h, t0 + t);
            const uint32_t amax = e->kernels->amax(row, dt, D);
            KW_RETURN_IF(amax >= 0x7f800000u, KW_E_WIRE_NONFINITE, "%s head %u token %u holds NaN or Inf", what, h,
                         t0 + t);
            KW_RETURN_IF(amax >= limit, KW_E_WIRE_RANGE, "%s head %u token %u: |x| = %g overflows %s", what, h, t0 + t,
                         (double)kw_f32_from_bits(amax), kw_wire_codec_name(codec));
            uint8_t *o = dst + ((size_t)h * tg + t) * D * 2;
            const uint16_t *x16 = (const uint16_t *)row;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            if ((dt == KW_WIRE_DTYPE_BF16 && codec == KW_WIRE_CODEC_BF16) ||
                (dt == KW_WIRE_DTYPE_F16 && codec == KW_WIRE_CODEC_F16)) {
                memcpy(o, row, (size_t)D * 2); /* same dtype: the bytes are the codes */
                continue;
            }
#endif
            for (uint32_t d = 0; d < D; ++d) {
                float f;
                if (dt == KW_WIRE_DTYPE_F32)
                    memcpy(&f, row + 4 * (size_t)d, 4);
                else
                    f = dt == KW_WIRE_DTYPE_BF16 ? kw_bf16_to_f32(x16[d]) : kw_f16_to_f32(x16[d]);
                kw_store_le16(o + 2 * (size_t)d, codec == KW_WIRE_CODEC_BF16 ? kw_f32_to_bf16(f) : kw_f32_to_f16(f));
            }
        }
    }
    return 0;
}

/* The scale for amax (bits): stores it and returns its value and inverse. rmax: a rotated tensor's limit (0: none). */
static inline int kw__enc_scale(const kw_wire_codec_spec *sp, uint32_t amax_bits, float rmax, uint8_t *scale_dst,
                                float *s, float *inv, const char *what, uint32_t h, uint32_t t) {
    KW_RETURN_IF(amax_bits >= 0x7f800000u, KW_E_WIRE_NONFINITE, "%s head %u token %u holds NaN or Inf", what, h, t);
    KW_FORWARD(kw__enc_rotated_range(amax_bits, rmax, what, h, t));
    uint32_t code;
    const float amax = kw_f32_from_bits(amax_bits);
    const int rc = kw_wire_scale_choose(amax, kw_wire_codec_qmax(sp->codec), sp->scale_dtype, &code, s);
    KW_RETURN_IF(rc < 0, rc, "%s head %u token %u: absmax %g has no %s scale for %s", what, h, t, (double)amax,
                 kw_wire_scale_name(sp->scale_dtype), kw_wire_codec_name(sp->codec));
    kw_wire_scale_store(sp->scale_dtype, code, scale_dst);
    *inv = *s != 0.0f ? 1.0f / *s : 0.0f;
    return 0;
}

static inline void kw__enc_emit(const kw__wire_kernels *k, uint32_t codec, const uint8_t *x, uint32_t dt, uint32_t n,
                                float s, float inv, uint8_t *dst) {
    if (s == 0.0f)
        kw_wire_zero_row(codec, n, dst);
    else
        k->quantize(codec, x, dt, n, inv, dst);
}

/* The largest code of the spec's codec (the unsigned one with zero points): what its decoder allows. */
static float kw__enc_codec_qmax(const kw_wire_codec_spec *sp) {
    return kw_wire_spec_asym(sp) ? kw_wire_codec_qmax_asym(sp->codec) : kw_wire_codec_qmax(sp->codec);
}

/* The largest code the encoder writes for the spec under a code limit (kw_wire_policy.code_limit_k/v, 0: none):
 * min(limit, the codec's), integer codecs only; the codec's own for the others. */
static float kw__enc_qmax(const kw_wire_codec_spec *sp, uint32_t limit) {
    const float cq = kw__enc_codec_qmax(sp);
    return limit && kw_wire_codec_is_int(sp->codec) && (float)limit < cq ? (float)limit : cq;
}

/* 1 if the code limit changes the spec's tensors: kw__enc_qmax below the codec's own (sp is borrowed). */
static int kw__enc_limited(const kw_wire_codec_spec *sp, uint32_t limit) {
    return kw__enc_qmax(sp, limit) != kw__enc_codec_qmax(sp);
}

/* Chooses the scale (and zero point) of every unit of a tensor in the general path, from lo/hi (min and max of the
 * unit's values, or hi = absmax when symmetric) for codes up to qmax (kw__enc_qmax); stores them and leaves s, z and
 * 1/s in lo, hi and iv. rmax: a rotated tensor's limit on lo/hi (0: none). */
static int kw__enc_general_scales(const kw_wire_codec_spec *sp, float qmax, float rmax, uint64_t units, float *lo,
                                  float *hi, float *iv, uint8_t *scales, uint8_t *zeros, const char *what) {
    const uint32_t sdt = kw_wire_spec_scale(sp);
    const int asym = kw_wire_spec_asym(sp);
    const size_t ss = kw_wire_scale_size(sdt);
    const float cq = kw__enc_codec_qmax(sp); /* what the decoder checks the stored scale against */
    for (uint64_t u = 0; u < units; ++u) {
        uint32_t sc = 0, zc = 0;
        float s = 0.0f, z = 0.0f;
        KW_RETURN_IF(rmax > 0.0f && (hi[u] > rmax || (asym && -lo[u] > rmax)), KW_E_WIRE_RANGE,
                     "%s scale %llu: values in [%g, %g] are past %g, the most a rotated value may be (FORMAT.md §5.12)",
                     what, (unsigned long long)u, (double)(asym ? lo[u] : -hi[u]), (double)hi[u], (double)rmax);
        const int rc = asym ? kw_wire_asym_choose(lo[u], hi[u], qmax, sdt, &sc, &s, &zc, &z)
                            : kw_wire_scale_choose(hi[u], qmax, sdt, &sc, &s);
        KW_RETURN_IF(rc < 0, rc, "%s scale %llu: values in [%g, %g] have no %s scale%s for %s", what,
                     (unsigned long long)u, (double)(asym ? lo[u] : -hi[u]), (double)hi[u], kw_wire_scale_name(sdt),
                     asym ? " and zero point" : "", kw_wire_codec_name(sp->codec));
        kw_wire_scale_store(sdt, sc, scales + u * ss);
        if (asym) kw_wire_scale_store(sdt, zc, zeros + u * ss);
        /* a code limit's larger step must still be a valid scale (and zero point) for the codec's own codes */
        KW_RETURN_IF(qmax < cq && !(kw_wire_scale_valid(sdt, scales + u * ss, cq) &&
                                    (!asym || kw_wire_zero_valid(sdt, zeros + u * ss, s, cq))),
                     KW_E_WIRE_RANGE,
                     "%s scale %llu: values in [%g, %g] need a step of %g, past %s's range at %g codes", what,
                     (unsigned long long)u, (double)(asym ? lo[u] : -hi[u]), (double)hi[u], (double)s,
                     kw_wire_codec_name(sp->codec), (double)cq);
        lo[u] = s;
        hi[u] = z;
        iv[u] = s != 0.0f ? 1.0f / s : 0.0f;
    }
    return 0;
}

/* Folds value x into its scale's statistics: the absmax in *hi (symmetric), or the minimum and maximum in *lo and *hi
 * starting from the first value, *seen set to 1 by it (zero points). */
static inline void kw__enc_stat(int asym, float x, float *lo, float *hi, float *seen) {
    if (!asym) {
        const float a = x < 0.0f ? -x : x;
        *hi = a > *hi ? a : *hi;
    } else if (*seen == 0.0f) {
        *lo = *hi = x;
        *seen = 1.0f;
    } else {
        *lo = x < *lo ? x : *lo;
        *hi = x > *hi ? x : *hi;
    }
}

/* The elements of a section sent in its outlier table (v1.1): bit e of mask for element e = base + (h*T + t)*D + d of
 * the tensor at hand, t the section's token index (FORMAT.md §5.10). */
typedef struct kw__enc_outliers {
    const uint8_t *mask; /* borrowed */
    uint64_t base;       /* 0 for K, H*T*D for V */
    uint32_t n_tokens;   /* T */
} kw__enc_outliers;

static inline int kw__enc_is_outlier(const kw__enc_outliers *o, uint32_t D, uint32_t h, uint32_t t, uint32_t d) {
    if (!o) return 0;
    const uint64_t e = o->base + ((uint64_t)h * o->n_tokens + t) * D + d;
    return (o->mask[e / 8] >> (e % 8)) & 1u;
}

/* Folds one row into the statistics of its block (kw__enc_tensor_blocks) with the row kernels: the same values as
 * kw__enc_stat element by element, leaving out the elements whose bit is set in skip (the row's D bits, NULL: none),
 * seen[u] the flag that unit u has a value. Channel scales take the elementwise minimum and maximum (strict compares,
 * so an equal later value never replaces an earlier one); the other granularities the row kernels' minmax (absmax)
 * per unit of 2^shift values (the whole row for shift 31), folded into the block's by the same strict rule, which
 * keeps the first value that attains the minimum or maximum. In a unit with skipped elements these take the value of
 * its first kept one (zero when symmetric), which changes neither the extremes nor which value attains them first
 * (a copy of the first kept value has its bits). x: D floats of scratch. */
static int kw__enc_row_stats(const kw__wire_kernels *k, const uint8_t *row, uint32_t dt, uint32_t D, uint32_t gran,
                             uint32_t shift, int asym, const uint8_t *skip, float *x, float *lo, float *hi, float *seen,
                             const char *what, uint32_t h, uint32_t t) {
    if (skip) {
        uint32_t any = 0;
        for (uint32_t i = 0; i < D / 8; ++i)
            any |= skip[i];
        if (!any) skip = NULL;
    }
    /* every value is checked, skipped ones too; zero points on a row without skipped values: by the absmax that
     * minmax (each unit's, the units covering the row) or minmax_fold returns (one pass over the row, not two) */
    const int by_minmax = asym && !skip;
    const uint32_t am = by_minmax && gran == KW_WIRE_GRAN_CHANNEL ? k->minmax_fold(row, dt, D, lo, hi, seen)
                        : by_minmax                               ? 0u
                                                                  : k->amax(row, dt, D);
    KW_RETURN_IF(am >= 0x7f800000u, KW_E_WIRE_NONFINITE, "%s head %u token %u holds NaN or Inf", what, h, t);
    if (by_minmax && gran == KW_WIRE_GRAN_CHANNEL) return 0;
#define KW__SKIPPED(d) (skip && ((skip[(d) >> 3] >> ((d)&7u)) & 1u))
    if (gran == KW_WIRE_GRAN_CHANNEL) {
        kw__wire_load_f32(row, dt, D, x);
        if (!asym) {
            for (uint32_t d = 0; d < D; ++d) {
                const float a = x[d] < 0.0f ? -x[d] : x[d];
                hi[d] = a > hi[d] && !KW__SKIPPED(d) ? a : hi[d];
            }
            return 0;
        }
        for (uint32_t d = 0; d < D; ++d) {
            if (KW__SKIPPED(d)) continue;
            const int had = seen[d] != 0.0f;
            lo[d] = had ? (x[d] < lo[d] ? x[d] : lo[d]) : x[d];
            hi[d] = had ? (x[d] > hi[d] ? x[d] : hi[d]) : x[d];
            seen[d] = 1.0f;
        }
        return 0;
    }
    const uint32_t n = shift >= 31u ? D : 1u << shift, units = D / n;
    const size_t es = kw__wire_dtype_size(dt);
    if (skip) kw__wire_load_f32(row, dt, D, x);
    for (uint32_t u = 0; u < units; ++u) {
        const void *p = row + (size_t)u * n * es;
        uint32_t pdt = dt;
        if (skip) { /* the unit's values with the skipped ones replaced, as f32 */
            uint32_t first = n;
            for (uint32_t j = 0; j < n && first == n; ++j)
                first = KW__SKIPPED(u * n + j) ? n : j;
            if (first == n) continue; /* every value skipped: the unit gets nothing from this row */
            const float fill = asym ? x[u * n + first] : 0.0f;
            for (uint32_t j = 0; j < n; ++j)
                x[u * n + j] = KW__SKIPPED(u * n + j) ? fill : x[u * n + j];
            p = x + u * n;
            pdt = KW_WIRE_DTYPE_F32;
        }
        float l = 0.0f, m = 0.0f;
        const uint32_t a = asym ? k->minmax(p, pdt, n, &l, &m) : k->amax(p, pdt, n);
        KW_RETURN_IF(by_minmax && a >= 0x7f800000u, KW_E_WIRE_NONFINITE, "%s head %u token %u holds NaN or Inf", what,
                     h, t);
        if (!asym) {
            const float v = kw_f32_from_bits(a);
            hi[u] = v > hi[u] ? v : hi[u];
        } else if (seen[u] == 0.0f) {
            lo[u] = l;
            hi[u] = m;
        } else {
            lo[u] = l < lo[u] ? l : lo[u];
            hi[u] = m > hi[u] ? m : hi[u];
        }
        seen[u] = 1.0f;
    }
#undef KW__SKIPPED
    return 0;
}

/* The clipped-scale search (an encoder choice, FORMAT.md §5.13): candidate k = 0..KW__CLIP_STEPS-1 narrows each
 * unit's range by c = (20 - k) / 20: the absmax to fl32(amax * c) (symmetric), or [min, max] about its midpoint to
 * the width w = fl32(fl32(max - min) * c), lo = fl32(min + fl32(fl32(max - min) - w) * 0.5), hi = fl32(lo + w)
 * (zero points); k = 0 is the unit's own statistics, bit for bit. */
#define KW__CLIP_STEPS 11u

static void kw__enc_clip_range(int asym, uint32_t k, float lo, float hi, float *clo, float *chi) {
    const float c = (float)(20u - k) / 20.0f;
    if (k == 0) {
        *clo = lo;
        *chi = hi;
    } else if (!asym) {
        *clo = 0.0f;
        *chi = hi * c;
    } else {
        const float span = hi - lo, w = span * c;
        *clo = lo + (span - w) * 0.5f;
        *chi = *clo + w;
    }
}

/* Scratch of the search for up to `units` scale units (one allocation; kw__enc_clip_scratch_free frees it). */
typedef struct kw__enc_clip_scratch {
    double *err, *best; /* the candidate's and the best sum of squared errors of each unit */
    float *s, *z, *inv; /* the candidate's stored scale, zero point and 1/s */
    float *blo, *bhi;   /* the best candidate's statistics */
} kw__enc_clip_scratch;

static int kw__enc_clip_scratch_init(kw__enc_clip_scratch *cs, uint64_t units) {
    double *p = malloc((size_t)units * (2 * sizeof(double) + 5 * sizeof(float)));
    KW_RETURN_IF(!p, KW_E_NOMEM, "clipped-scale search of %llu scales", (unsigned long long)units);
    float *f = (float *)(p + 2 * units);
    *cs = (kw__enc_clip_scratch){p, p + units, f, f + units, f + 2 * units, f + 3 * units, f + 4 * units};
    return 0;
}

static void kw__enc_clip_scratch_free(kw__enc_clip_scratch *cs) {
    free(cs->err);
}

/* Replaces the statistics lo/hi of the units of one block of rows (heads h0..h1-1, the group's tokens b0..b1-1; the
 * unit of channel d is d >> shift, shift 31: one unit) by those of the candidate range whose stored scale (and zero
 * point) gives the least sum over the unit's values (outliers left out) of fl64(x - x^)^2, x^ decoded as the decoder
 * does; ties keep the wider range, so candidate 0, the unclipped encoding, is chosen unless another is strictly
 * better. The sums run in a fixed order in double: the same choice on every build. Units without values, with a zero
 * range or without a valid unclipped scale are left alone (kw__enc_general_scales reports the last). seen: iv of the
 * statistics pass; x: D floats of scratch. */
static void kw__enc_clip(const kw_wire_encoder *e, const kw_wire_tensor_in *in, const kw_wire_codec_spec *sp,
                         float qmax, uint32_t t0, uint32_t h0, uint32_t h1, uint32_t b0, uint32_t b1, uint32_t shift,
                         uint32_t units, const kw__enc_outliers *out, const float *seen, float *lo, float *hi,
                         const kw__enc_clip_scratch *cs, float *x) {
    const uint32_t D = e->hdr.head_dim, dt = e->hdr.src_dtype, codec = sp->codec, sdt = kw_wire_spec_scale(sp);
    const size_t es = kw__wire_dtype_size(dt);
    const int asym = kw_wire_spec_asym(sp);
    for (uint32_t u = 0; u < units; ++u) {
        cs->best[u] = INFINITY;
        cs->blo[u] = lo[u];
        cs->bhi[u] = hi[u];
    }
    for (uint32_t k = 0; k < KW__CLIP_STEPS; ++k) {
        uint32_t live = 0;
        for (uint32_t u = 0; u < units; ++u) {
            uint32_t sc, zc;
            float l, m, s = 0.0f, z = 0.0f;
            cs->err[u] = 0.0f;
            cs->s[u] = -1.0f; /* skipped */
            if ((asym && seen[u] == 0.0f) || hi[u] == lo[u] || (k > 0 && cs->best[u] == INFINITY)) continue;
            kw__enc_clip_range(asym, k, lo[u], hi[u], &l, &m);
            const int rc = asym ? kw_wire_asym_choose(l, m, qmax, sdt, &sc, &s, &zc, &z)
                                : kw_wire_scale_choose(m, qmax, sdt, &sc, &s);
            if (rc < 0) continue;
            cs->s[u] = s;
            cs->z[u] = z;
            cs->inv[u] = s != 0.0f ? 1.0f / s : 0.0f;
            ++live;
        }
        if (live == 0) break; /* no unit has a (valid) candidate k, and narrower ones are not tried either */
        for (uint32_t h = h0; h < h1; ++h)
            for (uint32_t t = b0; t < b1; ++t) {
                kw__wire_load_f32(kw__enc_row(in, es, h, t0 + t), dt, D, x);
                for (uint32_t d = 0; d < D; ++d) {
                    const uint32_t u = shift >= 31u ? 0u : d >> shift;
                    const float s = cs->s[u];
                    if (s < 0.0f || kw__enc_is_outlier(out, D, h, t0 + t, d)) continue;
                    float y;
                    if (asym)
                        y = kw_wire_dequantize_asym(
                            s != 0.0f ? kw_wire_quantize_asym(x[d], cs->z[u], cs->inv[u], qmax) : 0u, s, cs->z[u]);
                    else
                        y = s != 0.0f ? (float)kw_wire_quantize_value_q(codec, x[d], cs->inv[u], qmax) * s : 0.0f;
                    const double r = (double)x[d] - (double)y;
                    cs->err[u] += r * r;
                }
            }
        for (uint32_t u = 0; u < units; ++u)
            if (cs->s[u] >= 0.0f && cs->err[u] < cs->best[u]) {
                cs->best[u] = cs->err[u];
                kw__enc_clip_range(asym, k, lo[u], hi[u], &cs->blo[u], &cs->bhi[u]);
            }
    }
    for (uint32_t u = 0; u < units; ++u) {
        lo[u] = cs->blo[u];
        hi[u] = cs->bhi[u];
    }
}

/* The D bits of row (h, t) in the outlier mask (D is a multiple of 8 and so is the tensor's first element number:
 * whole bytes), NULL without outliers. */
static inline const uint8_t *kw__enc_row_outliers(const kw__enc_outliers *o, uint32_t D, uint32_t h, uint32_t t) {
    return o ? o->mask + (o->base + ((uint64_t)h * o->n_tokens + t) * D) / 8 : NULL;
}

/* The general path of the v1.1 features (kw__wire_general_path: zero points, channel scales, channel groups that
 * are not whole bytes; and every tensor of a section with outliers) for the layer granularity (kw__enc_tensor_blocks
 * takes the others): the statistics of every scale unit in one pass, the scales, then the codes value by value
 * (FORMAT.md §5.8, §5.9). The outliers (out, may be NULL) are left out of the statistics and take the code of +0 (zero
 * points: code 0), §5.10. Without outliers the statistics take the row kernels; the codes stay scalar. */
static int kw__enc_tensor_general(const kw_wire_encoder *e, const kw_wire_tensor_in *in, const kw_wire_codec_spec *sp,
                                  uint32_t t0, uint32_t tg, const kw__enc_outliers *out, int clip, float qmax,
                                  float rmax, uint8_t *dst, const char *what) {
    const uint32_t H = e->hdr.n_kv_heads, D = e->hdr.head_dim, dt = e->hdr.src_dtype, codec = sp->codec;
    const uint32_t bits = kw_wire_codec_bits(codec), mask = (1u << bits) - 1u;
    const size_t es = kw__wire_dtype_size(dt), row_bytes = (size_t)D * bits / 8;
    const uint64_t units = kw__wire_scale_count(sp, H, tg, D);
    const size_t sblock = (size_t)kw__wire_scale_block_bytes(sp, H, tg, D);
    const int asym = kw_wire_spec_asym(sp);
    uint8_t *scales = dst, *zeros = dst + sblock, *codes = dst + sblock * (asym ? 2u : 1u);
    float *lo = malloc((size_t)units * 3 * sizeof(float) + (size_t)D * sizeof(float));
    KW_RETURN_IF(!lo, KW_E_NOMEM, "%s: statistics of %llu scales", what, (unsigned long long)units);
    float *hi = lo + units, *iv = hi + units, *x = iv + units;
    for (uint64_t u = 0; u < units; ++u) {
        lo[u] = 0.0f;
        hi[u] = 0.0f;
        iv[u] = 0.0f; /* 1: the unit has a value (asymmetric min/max start from it) */
    }
    int rc = 0;
    for (uint32_t h = 0; h < H && rc == 0; ++h)
        for (uint32_t t = 0; t < tg && rc == 0; ++t) {
            if (!out && sp->granularity == KW_WIRE_GRAN_LAYER) { /* one unit: the row kernels, row by row */
                rc = kw__enc_row_stats(e->kernels, kw__enc_row(in, es, h, t0 + t), dt, D, KW_WIRE_GRAN_LAYER, 31u, asym,
                                       NULL, x, lo, hi, iv, what, h, t0 + t);
                continue;
            }
            kw__wire_load_f32(kw__enc_row(in, es, h, t0 + t), dt, D, x);
            for (uint32_t d = 0; d < D; ++d) {
                if (!(x[d] - x[d] == 0.0f)) {
                    rc = kw_error_set(KW_E_WIRE_NONFINITE, "%s head %u token %u holds NaN or Inf", what, h, t0 + t);
                    break;
                }
                if (kw__enc_is_outlier(out, D, h, t0 + t, d)) continue;
                const uint64_t u = kw_wire_scale_index(sp->granularity, sp->group_log2, tg, D, h, t, d);
                kw__enc_stat(asym, x[d], &lo[u], &hi[u], &iv[u]);
            }
        }
    if (rc == 0 && clip) { /* the layer granularity: one unit, every row of the tensor */
        kw__enc_clip_scratch cs = {0};
        rc = kw__enc_clip_scratch_init(&cs, units);
        if (rc == 0) kw__enc_clip(e, in, sp, qmax, t0, 0, H, 0, tg, 31u, 1u, out, iv, lo, hi, &cs, x);
        kw__enc_clip_scratch_free(&cs);
    }
    if (rc == 0) rc = kw__enc_general_scales(sp, qmax, rmax, units, lo, hi, iv, scales, zeros, what);
    for (uint32_t h = 0; h < H && rc == 0; ++h)
        for (uint32_t t = 0; t < tg; ++t) {
            kw__wire_load_f32(kw__enc_row(in, es, h, t0 + t), dt, D, x);
            uint8_t *row = codes + ((size_t)h * tg + t) * row_bytes;
            memset(row, 0, row_bytes);
            for (uint32_t d = 0; d < D; ++d) {
                const uint64_t u = kw_wire_scale_index(sp->granularity, sp->group_log2, tg, D, h, t, d);
                const float s = lo[u];
                const int outlier = kw__enc_is_outlier(out, D, h, t0 + t, d);
                uint32_t q;
                if (asym)
                    q = s != 0.0f && !outlier ? kw_wire_quantize_asym(x[d], hi[u], iv[u], qmax) : 0u;
                else /* a zero scale or an outlier: the code of +0 */
                    q = (uint32_t)kw_wire_quantize_value_q(codec, s != 0.0f && !outlier ? x[d] : 0.0f, iv[u], qmax);
                kw_wire_field_put(bits, row, d, q & mask);
            }
        }
    free(lo);
    return rc;
}

/* The general path by blocks of rows that share their scales (every granularity but layer): one row (token, channel
 * group), a run of L rows (channel) or a head's rows (head). Within a block an element's scale depends on its channel
 * only (unit u = 0, d >> log2 G or d), so each block is two passes over its rows, statistics then codes, with the
 * per-unit arrays on the stack. The same arithmetic as kw__enc_tensor_general, value for value. */
static int kw__enc_tensor_blocks(const kw_wire_encoder *e, const kw_wire_tensor_in *in, const kw_wire_codec_spec *sp,
                                 uint32_t t0, uint32_t tg, const kw__enc_outliers *out, int clip, float qmax,
                                 float rmax, uint8_t *dst, const char *what) {
    const kw__wire_kernels *k = e->kernels;
    const uint32_t H = e->hdr.n_kv_heads, D = e->hdr.head_dim, dt = e->hdr.src_dtype, codec = sp->codec;
    const uint32_t bits = kw_wire_codec_bits(codec), mask = (1u << bits) - 1u, gran = sp->granularity;
    const size_t es = kw__wire_dtype_size(dt), row_bytes = (size_t)D * bits / 8;
    const size_t sblock = (size_t)kw__wire_scale_block_bytes(sp, H, tg, D);
    const size_t ss = kw_wire_scale_size(kw_wire_spec_scale(sp));
    const int asym = kw_wire_spec_asym(sp);
    uint8_t *scales = dst, *zeros = dst + sblock, *codes = dst + sblock * (asym ? 2u : 1u);
    /* rows per block and units per block; an element's unit is d >> shift (token, head: every d maps to 0) */
    const uint32_t block_rows = gran == KW_WIRE_GRAN_CHANNEL ? 1u << sp->group_log2
                                : gran == KW_WIRE_GRAN_HEAD  ? tg
                                                             : 1u;
    const uint32_t shift = gran == KW_WIRE_GRAN_GROUP ? sp->group_log2 : gran == KW_WIRE_GRAN_CHANNEL ? 0u : 31u;
    const uint32_t units = gran == KW_WIRE_GRAN_GROUP ? D >> sp->group_log2 : gran == KW_WIRE_GRAN_CHANNEL ? D : 1u;
    float x[KW_WIRE_MAX_HEAD_DIM], lo[KW_WIRE_MAX_HEAD_DIM], hi[KW_WIRE_MAX_HEAD_DIM], iv[KW_WIRE_MAX_HEAD_DIM];
    float zd[KW_WIRE_MAX_HEAD_DIM], ivd[KW_WIRE_MAX_HEAD_DIM], zu[KW_WIRE_MAX_HEAD_DIM], ivu[KW_WIRE_MAX_HEAD_DIM];
    uint8_t q[KW_WIRE_MAX_HEAD_DIM];
    /* kw__wire_kernels.quantize_affine is the scalar rule of both loops below for the integer codecs (with zero
     * points max(y, 0) may give +0 where the rule keeps -0, the same code), and the code of +0 is 0 for both */
    const int row_kernel = kw_wire_codec_is_int(codec);
    kw__enc_clip_scratch cs = {0};
    if (clip) KW_FORWARD(kw__enc_clip_scratch_init(&cs, units));
    int rc = 0;
    for (uint32_t h = 0; h < H && rc == 0; ++h)
        for (uint32_t b0 = 0; b0 < tg && rc == 0; b0 += block_rows) {
            const uint32_t b1 = tg - b0 < block_rows ? tg : b0 + block_rows;
            for (uint32_t u = 0; u < units; ++u)
                lo[u] = hi[u] = iv[u] = 0.0f; /* iv 1: the unit has a value (min/max start from it) */
            for (uint32_t t = b0; t < b1 && rc == 0; ++t)
                rc = kw__enc_row_stats(k, kw__enc_row(in, es, h, t0 + t), dt, D, gran, shift, asym,
                                       kw__enc_row_outliers(out, D, h, t0 + t), x, lo, hi, iv, what, h, t0 + t);
            if (rc == 0 && clip)
                kw__enc_clip(e, in, sp, qmax, t0, h, h + 1, b0, b1, shift, units, out, iv, lo, hi, &cs, x);
            const uint64_t base = kw_wire_scale_index(gran, sp->group_log2, tg, D, h, b0, 0);
            if (rc == 0)
                rc = kw__enc_general_scales(sp, qmax, rmax, units, lo, hi, iv, scales + base * ss, zeros + base * ss,
                                            what);
            if (rc < 0) break;
            /* each unit's zero point and 1/s (with a zero scale: 0 and 0, which gives code 0 as the rule says;
             * symmetric: z = 0), then each element's for the loops below */
            for (uint32_t u = 0; u < units; ++u) {
                zu[u] = lo[u] != 0.0f ? hi[u] : 0.0f;
                ivu[u] = lo[u] != 0.0f ? iv[u] : 0.0f;
            }
            if (row_kernel) { /* integer codes: fl32(x - z) * (1/s), clamped and rounded; outliers then get code 0 */
                for (uint32_t t = b0; t < b1; ++t) {
                    uint8_t *crow = codes + ((size_t)h * tg + t) * row_bytes;
                    k->quantize_affine(kw__enc_row(in, es, h, t0 + t), dt, D, zu, ivu, shift, asym ? 0.0f : -qmax, qmax,
                                       bits, crow);
                    const uint8_t *skip = kw__enc_row_outliers(out, D, h, t0 + t);
                    for (uint32_t i = 0; skip && i < D / 8; ++i)
                        for (uint32_t m = skip[i]; m; m &= m - 1u)
                            kw_wire_field_clear(bits, crow, 8 * i + (uint32_t)__builtin_ctz(m));
                }
                continue;
            }
            for (uint32_t d = 0; d < D; ++d) {
                zd[d] = zu[d >> shift];
                ivd[d] = ivu[d >> shift];
            }
            for (uint32_t t = b0; t < b1; ++t) {
                kw__wire_load_f32(kw__enc_row(in, es, h, t0 + t), dt, D, x);
                if (asym && units == 1) /* one scale for the row: the scalar form of the loop below */
                    for (uint32_t d = 0; d < D; ++d)
                        q[d] = (uint8_t)kw_wire_quantize_asym(x[d], zd[0], ivd[0], qmax);
                else if (asym)
                    for (uint32_t d = 0; d < D; ++d)
                        q[d] = (uint8_t)kw_wire_quantize_asym(x[d], zd[d], ivd[d], qmax);
                else /* a zero scale: the code of +0 */
                    for (uint32_t d = 0; d < D; ++d)
                        q[d] = (uint8_t)((uint32_t)kw_wire_quantize_value(codec, ivd[d] != 0.0f ? x[d] : 0.0f, ivd[d]) &
                                         mask);
                if (out) /* an outlier: the code of +0 (zero points: code 0) */
                    for (uint32_t d = 0; d < D; ++d)
                        if (kw__enc_is_outlier(out, D, h, t0 + t, d))
                            q[d] = asym ? 0u : (uint8_t)((uint32_t)kw_wire_quantize_value(codec, 0.0f, ivd[d]) & mask);
                kw__wire_pack_fields(bits, q, D, codes + ((size_t)h * tg + t) * row_bytes);
            }
        }
    kw__enc_clip_scratch_free(&cs);
    return rc;
}

/* 1 if kw__enc_tensor can rotate this tensor's rows itself, a block at a time (kw__enc_rotate_block): per-token and
 * per-group scales on the row kernels' path, no outliers, no clipped scales and no code limit below the codec's
 * (those read the rows more than once or take the general path: they take the rotated copy of kw__enc_rotate). */
static int kw__enc_fusable(const kw_wire_codec_spec *sp, int clip, uint32_t limit) {
    return (sp->granularity == KW_WIRE_GRAN_TOKEN || sp->granularity == KW_WIRE_GRAN_GROUP) &&
           !kw__wire_general_path(sp) && !(clip && kw_wire_codec_is_int(sp->codec)) && !kw__enc_limited(sp, limit);
}

/* The rows of a block rotated on the fly fit in this many bytes (L1-resident). */
#define KW__ENC_ROT_BYTES      16384u
#define KW__ENC_PREFETCH_BYTES 16384u /* input rows prefetched a block ahead (bf16 rows of 128: 64) */
/* Input rows per block of the per-token path without a rotation or outliers (bf16 rows of 128: 32). Issue 10 item 5's
 * tenth pass (docs/BENCHMARKS.md): 8 KB blocks encoded int8 and int4 per token 0.1-0.3x of memcpy faster than the
 * 16 KB (rows of 128) or 32 KB (rows of 256) blocks of 64 rows, likely because this block, the next one being
 * prefetched and the block's codes then fit in L1 together; 4 KB blocks (rows of 64) measured the same as 8 KB. */
#define KW__ENC_TOKEN_BLOCK_BYTES 8192u
/* both hold at least one row of the widest input (f32) of the largest head: a block of 0 rows would never advance */
_Static_assert(KW__ENC_TOKEN_BLOCK_BYTES >= 4u * KW_WIRE_MAX_HEAD_DIM && KW__ENC_ROT_BYTES >= 4u * KW_WIRE_MAX_HEAD_DIM,
               "an encoder block must hold a row of KW_WIRE_MAX_HEAD_DIM f32 values");

/* The codes of the n units (len values each, stride bytes apart from codes) whose scale sv[i] is zero, rewritten as
 * kw_wire_zero_row (the kernels code x * 0). Zero scales are rare: a pass without branches says whether there are
 * any before the pass that rewrites them (one compare and branch per unit cost about 2% of AVX2 NF4 encode). */
static void kw__enc_zero_units(uint32_t codec, const float *sv, uint32_t n, uint32_t len, uint8_t *codes,
                               size_t stride) {
    uint32_t any = 0;
    for (uint32_t i = 0; i < n; ++i)
        any |= sv[i] == 0.0f;
    for (uint32_t i = 0; any && i < n; ++i)
        if (sv[i] == 0.0f) kw_wire_zero_row(codec, len, codes + i * stride);
}

/* Points rp[i] at the rows of head h, tokens t .. t + n - 1 of the tensor: with sx (the forward factors of a tensor
 * kw__enc_tensor rotates itself) each row is rotated into buf (n * D elements of src_dtype, the bits kw__enc_rotate
 * would store); with out (never with sx) a row with outliers is copied into buf with those values set to +0; else
 * the input rows. */
static void kw__enc_rotate_block(const kw_wire_encoder *e, const kw_wire_tensor_in *in, const float *sx,
                                 const kw__enc_outliers *out, uint32_t h, uint32_t t, uint32_t n, uint8_t *buf,
                                 const uint8_t **rp) {
    const uint32_t D = e->hdr.head_dim, dt = e->hdr.src_dtype;
    const size_t es = kw__wire_dtype_size(dt);
    for (uint32_t i = 0; i < n; ++i) {
        rp[i] = kw__enc_row(in, es, h, t + i);
        uint8_t *dst = buf ? buf + (size_t)i * D * es : NULL; /* no buffer without sx or outliers (no NULL + offset) */
        if (sx) {
            e->kernels->rotate(rp[i], dt, dst, dt, D, sx, 0);
            rp[i] = dst;
        }
        const uint8_t *skip = kw__enc_row_outliers(out, D, h, t + i);
        uint32_t any = 0;
        for (uint32_t b = 0; skip && b < D / 8; ++b)
            any |= skip[b];
        if (!any) continue;
        memcpy(dst, rp[i], (size_t)D * es);
        for (uint32_t b = 0; b < D / 8; ++b)
            for (uint32_t m = skip[b]; m; m &= m - 1u)
                memset(dst + (8 * b + (uint32_t)__builtin_ctz(m)) * es, 0, es); /* +0 in every src dtype */
        rp[i] = dst;
    }
}

/* Asks for the n bytes at p to be brought into the caches (a hint: no fault, no effect on results). */
static inline void kw__enc_prefetch_row(const uint8_t *p, size_t n) {
    for (size_t o = 0; o < n; o += 64)
        __builtin_prefetch(p + o, 0, 3);
}

/* Encodes one tensor of one token group: scales, then codes (FORMAT.md §5.3, §5.4). rot: the forward rotation
 * factors when this call rotates the rows itself (kw__enc_fusable), else NULL. Outliers with symmetric per-token or
 * per-group scales (the ones kw__enc_fusable takes) stay on the row kernels' path: their rows are read through a copy
 * with the outliers set to +0, which widens no symmetric scale and codes to the code of +0, what the general path
 * (the outliers left out of the statistics, their fields given the code of +0) writes, byte for byte; the selection
 * has refused NaN and Inf in every value of the section. rmax: for a rotated tensor (rotated here or by
 * kw__enc_rotate), kw_wire_rotated_max, which every scale unit's values must stay within; 0 for one not rotated. */
static int kw__enc_tensor(const kw_wire_encoder *e, const kw_wire_tensor_in *in, const kw_wire_codec_spec *sp,
                          uint32_t t0, uint32_t tg, const kw__enc_outliers *out, int clip, uint32_t limit,
                          const float *rot, float rmax, uint8_t *dst, const char *what) {
    if (kw_wire_codec_is_passthrough(sp->codec)) return kw__enc_passthrough(e, in, sp->codec, t0, tg, dst, what);
    clip = clip && kw_wire_codec_is_int(sp->codec); /* FORMAT.md §5.13: the integer codecs; the others as they are */
    const float qmax = kw__enc_qmax(sp, limit);     /* §5.14: below the codec's only for a code limit */
    const int limited = kw__enc_limited(sp, limit);
    KW_RETURN_IF(rot && (out || clip || !kw__enc_fusable(sp, clip, limit)), KW_E_INTERNAL,
                 "%s: a rotation fused into a path that reads rows twice", what);
    if ((out && !kw__enc_fusable(sp, clip, limit)) || clip || limited || kw__wire_general_path(sp))
        return sp->granularity == KW_WIRE_GRAN_LAYER
                   ? kw__enc_tensor_general(e, in, sp, t0, tg, out, clip, qmax, rmax, dst, what)
                   : kw__enc_tensor_blocks(e, in, sp, t0, tg, out, clip, qmax, rmax, dst, what);
    const int block = rot || out; /* rows through e->rot_block (kw__enc_rotate_block) */
    const kw__wire_kernels *k = e->kernels;
    const uint32_t H = e->hdr.n_kv_heads, D = e->hdr.head_dim, dt = e->hdr.src_dtype, codec = sp->codec;
    const size_t es = kw__wire_dtype_size(dt);
    const size_t ss = kw_wire_scale_size(sp->scale_dtype);
    const size_t row_bytes = (size_t)D * kw_wire_codec_bits(codec) / 8;
    uint8_t *scales = dst;
    uint8_t *codes = dst + kw__wire_scale_count(sp, H, tg, D) * ss;
    float s = 0.0f, inv = 0.0f;
    /* input rows prefetched a block ahead by the token and group paths: at most KW__ENC_PREFETCH_BYTES of them, so
     * that this block's rows stay in L1 for the code pass */
    const uint32_t ahead = KW__ENC_PREFETCH_BYTES / (D * (uint32_t)es);
    switch (sp->granularity) {
    case KW_WIRE_GRAN_LAYER:
    case KW_WIRE_GRAN_HEAD: {
        const int per_head = sp->granularity == KW_WIRE_GRAN_HEAD;
        uint32_t amax = 0;
        for (uint32_t h = 0; h < H; ++h) {
            if (per_head) amax = 0;
            for (uint32_t t = 0; t < tg; ++t) {
                const uint32_t a = k->amax(kw__enc_row(in, es, h, t0 + t), dt, D);
                amax = a > amax ? a : amax;
            }
            if (!per_head && h + 1 < H) continue;
            /* scale of head h (per head), or of all heads once the last one is scanned (per layer) */
            KW_FORWARD(kw__enc_scale(sp, amax, rmax, scales + (per_head ? h : 0) * ss, &s, &inv, what, h, t0));
            for (uint32_t hh = per_head ? h : 0; hh <= h; ++hh)
                for (uint32_t t = 0; t < tg; ++t)
                    kw__enc_emit(k, codec, kw__enc_row(in, es, hh, t0 + t), dt, D, s, inv,
                                 codes + ((size_t)hh * tg + t) * row_bytes);
        }
        return 0;
    }
    case KW_WIRE_GRAN_TOKEN: {
        /* rows in blocks: all absmaxes, then all scales, then all codes, so the scale arithmetic (a division and a
         * dtype conversion per row) pipelines instead of sitting between the vector loops. A block holds at most
         * KW__ENC_TOKEN_BLOCK_BYTES of input rows (at most B rows) */
        enum { B = 64 };
        uint32_t am[B];
        float sv[B], iv[B];
        const uint8_t *rp[B];
        const uint32_t row_in = D * (uint32_t)es,
                       fit = (block ? KW__ENC_ROT_BYTES : KW__ENC_TOKEN_BLOCK_BYTES) / row_in;
        const uint32_t bmax = fit >= B ? B : fit;
        for (uint32_t h = 0; h < H; ++h)
            for (uint32_t tb = 0; tb < tg; tb += bmax) {
                const uint32_t nb = tg - tb < bmax ? tg - tb : bmax;
                const size_t r0 = (size_t)h * tg + tb;
                if (block)
                    kw__enc_rotate_block(e, in, rot, out, h, t0 + tb, nb, e->rot_block, rp);
                else
                    for (uint32_t i = 0; i < nb; ++i)
                        rp[i] = kw__enc_row(in, es, h, t0 + tb + i);
                /* the next block's rows are asked for while this one is scanned: more reads in flight than the
                 * hardware prefetcher keeps on its own (the input is read from memory once, here); at most `ahead` */
                uint32_t nn = tg - tb - nb < bmax ? tg - tb - nb : bmax;
                nn = nn < ahead ? nn : ahead;
                for (uint32_t i = 0; i < nb; ++i) {
                    if (i < nn) kw__enc_prefetch_row(kw__enc_row(in, es, h, t0 + tb + nb + i), (size_t)D * es);
                    am[i] = k->amax(rp[i], dt, D);
                }
                const uint32_t ok = k->scales(am, kw__enc_first_past(am, nb, rmax), kw_wire_codec_qmax(codec),
                                              sp->scale_dtype, scales + r0 * ss, sv, iv);
                if (ok < nb) { /* the scalar rule says what is wrong with that one */
                    KW_FORWARD(kw__enc_scale(sp, am[ok], rmax, scales + (r0 + ok) * ss, &sv[ok], &iv[ok], what, h,
                                             t0 + tb + ok));
                    KW_FAIL(KW_E_INTERNAL, "%s head %u token %u: the scale kernels disagree", what, h, t0 + tb + ok);
                }
                k->quantize_rows(codec, rp, nb, dt, D, iv, codes + r0 * row_bytes); /* then the zero scales' rows */
                kw__enc_zero_units(codec, sv, nb, D, codes + r0 * row_bytes, row_bytes);
            }
        return 0;
    }
    case KW_WIRE_GRAN_GROUP: {
        /* rows in blocks of about 64 groups, as the token case: the absmaxes, one scales call, then the codes */
        const uint32_t G = 1u << sp->group_log2, per_row = D / G, fit = KW__ENC_ROT_BYTES / (D * (uint32_t)es);
        uint32_t B = per_row >= 64 ? 1u : 64u / per_row;
        B = block && fit < B ? fit : B;
        const size_t chunk_bytes = (size_t)G * kw_wire_codec_bits(codec) / 8;
        uint32_t am[256]; /* B * per_row <= max(64, D / G) <= 1024 / 4 */
        float sv[256], iv[256];
        const uint8_t *rp[64];
        for (uint32_t h = 0; h < H; ++h)
            for (uint32_t tb = 0; tb < tg; tb += B) {
                const uint32_t nb = tg - tb < B ? tg - tb : B, ng = nb * per_row;
                const size_t r0 = (size_t)h * tg + tb;
                kw__enc_rotate_block(e, in, rot, out, h, t0 + tb, nb, e->rot_block, rp);
                k->amax_groups(rp, nb, dt, D, G, am);
                const uint32_t ok = k->scales(am, kw__enc_first_past(am, ng, rmax), kw_wire_codec_qmax(codec),
                                              sp->scale_dtype, scales + r0 * per_row * ss, sv, iv);
                if (ok < ng) {
                    const uint32_t t = tb + ok / per_row;
                    KW_FORWARD(kw__enc_scale(sp, am[ok], rmax, scales + (r0 * per_row + ok) * ss, &sv[ok], &iv[ok],
                                             what, h, t0 + t));
                    KW_FAIL(KW_E_INTERNAL, "%s head %u token %u: the scale kernels disagree", what, h, t0 + t);
                }
                /* the next block's rows (this head's or the next head's first) are asked for before this block's
                 * codes: the code pass is arithmetic, so their reads from memory run under it and the next absmax
                 * pass finds them in the caches; at most `ahead` rows */
                for (uint32_t i = 0, t = tb + nb; i < B && i < ahead; ++i, ++t) {
                    if (t < tg)
                        kw__enc_prefetch_row(kw__enc_row(in, es, h, t0 + t), (size_t)D * es);
                    else if (h + 1 < H && t - tg < tg)
                        kw__enc_prefetch_row(kw__enc_row(in, es, h + 1, t0 + t - tg), (size_t)D * es);
                }
                /* the block's groups in one call, then its zero scales' codes */
                k->quantize_group_rows(codec, rp, nb, dt, D, G, iv, codes + r0 * row_bytes);
                kw__enc_zero_units(codec, sv, ng, G, codes + r0 * row_bytes, chunk_bytes);
            }
        return 0;
    }
    default:
        KW_FAIL(KW_E_INTERNAL, "unchecked granularity %u", sp->granularity);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Sections

/* Grows *buf (owned by the encoder) to at least need bytes. */
static int kw__enc_scratch(void **buf, size_t *cap, size_t need) {
    if (*cap >= need && *buf) return 0;
    void *p = realloc(*buf, need ? need : 1);
    KW_RETURN_IF(!p, KW_E_NOMEM, "coding scratch of %zu bytes", need);
    *buf = p;
    *cap = need;
    return 0;
}

static int kw__enc_compress(kw_wire_encoder *e, const uint8_t *body, size_t raw, int level, size_t *csize) {
    const size_t bound = ZSTD_compressBound(raw);
    if (!e->zc) {
        e->zc = ZSTD_createCCtx();
        KW_RETURN_IF(!e->zc, KW_E_NOMEM, "ZSTD_createCCtx failed");
    }
    KW_FORWARD(kw__enc_scratch((void **)&e->scratch, &e->scratch_cap, bound));
    const size_t r = ZSTD_compressCCtx(e->zc, e->scratch, bound, body, raw, level);
    KW_RETURN_IF(ZSTD_isError(r), KW_E_INTERNAL, "zstd compression failed: %s", ZSTD_getErrorName(r));
    *csize = r;
    return 0;
}

/* Validates the section and writes its head, group table and index block into dst; records what finishing it takes
 * in e->pending (the encoder is otherwise unchanged). The tensors' bytes go at dst + e->pending.table +
 * e->pending.index_bytes, K then V of each group in order. */
static int kw__enc_begin(kw_wire_encoder *e, uint32_t layer, uint32_t n_tokens, const uint32_t *positions,
                         const kw_wire_policy *pol, uint64_t outlier_bytes, void *dst, size_t cap,
                         const kw_wire_token_group **groups_out, kw_wire_token_group *single) {
    KW_RETURN_IF(!e || !dst, KW_E_INVALID_ARG, "null argument");
    e->pending.dst = NULL;
    KW_RETURN_IF(e->stage != 1 || e->sections >= e->hdr.n_sections, KW_E_STATE,
                 "section %u of %u (stage %d): write the header first, and no more sections than declared", e->sections,
                 e->hdr.n_sections, e->stage);
    const kw_wire_header *hdr = &e->hdr;
    KW_RETURN_IF(layer >= hdr->n_layers, KW_E_INVALID_ARG, "layer %u >= n_layers %u", layer, hdr->n_layers);
    KW_RETURN_IF((int64_t)layer <= e->last_layer, KW_E_INVALID_ARG, "layer %u after layer %lld", layer,
                 (long long)e->last_layer);
    const kw_wire_token_group *groups;
    uint32_t n_groups;
    KW_FORWARD(kw__enc_policy(hdr, pol, n_tokens, single, &groups, &n_groups));
    uint8_t index_enc = KW_WIRE_INDEX_AUTO;
    size_t index_bytes = 0;
    KW_FORWARD(
        kw_wire_index_choose(hdr->n_positions, positions, n_tokens, pol->index_encoding, &index_enc, &index_bytes));
    const uint64_t raw = index_bytes + kw__enc_tensors_bytes(hdr, groups, n_groups) + outlier_bytes;
    size_t size = 0;
    KW_FORWARD(kw__enc_total(n_groups, raw, &size));
    KW_RETURN_IF(cap < size, KW_E_BUFFER_TOO_SMALL, "section of layer %u needs %zu bytes, have %zu", layer, size, cap);

    uint8_t *p = dst;
    const size_t table = KW_WIRE_SECTION_HEAD_BYTES + (size_t)KW_WIRE_GROUP_DESC_BYTES * n_groups;
    memset(p, 0, KW_WIRE_SECTION_HEAD_BYTES);
    memcpy(p, kw__wire_section_marker, 4);
    kw_store_le16(p + KW__SEC_LAYER, (uint16_t)layer);
    p[KW__SEC_INDEX_ENC] = index_enc;
    p[KW__SEC_FLAGS] =
        (uint8_t)((pol->pre_rope ? KW__SEC_FLAG_PRE_ROPE : 0u) | (outlier_bytes ? KW__SEC_FLAG_OUTLIERS : 0u) |
                  ((pol->rotate & 1) ? KW__SEC_FLAG_ROT_K : 0u) | ((pol->rotate & 2) ? KW__SEC_FLAG_ROT_V : 0u));
    kw_store_le32(p + KW__SEC_OUTLIER_BYTES, (uint32_t)outlier_bytes);
    kw_store_le32(p + KW__SEC_N_TOKENS, n_tokens);
    kw_store_le32(p + KW__SEC_INDEX_BYTES, (uint32_t)index_bytes);
    kw_store_le32(p + KW__SEC_RAW_BYTES, (uint32_t)raw);
    kw_store_le16(p + KW__SEC_N_GROUPS, (uint16_t)n_groups);
    kw__wire_index_write(index_enc, positions, n_tokens, hdr->n_positions, p + table);

    /* the body's runs for the rANS coder: the index block and the outliers, then each tensor's scales, zero points and
     * codes, each its own kind, and again apart for token groups of another codec spec than the first group's (a row
     * at full int8 beside rows held to a code limit: its codes would be escapes in their table) */
    size_t n_runs = 0;
    if (pol->rans) {
        KW_FORWARD(kw__enc_scratch((void **)&e->rans_runs, &e->rans_runs_cap,
                                   (2u + 6u * (size_t)n_groups) * sizeof *e->rans_runs));
        e->rans_runs[n_runs++] = (kw__wire_rans_run){.bytes = (uint32_t)index_bytes, .cls = 0};
    }
    _Static_assert(KW__WIRE_RANS_MAX_CLASSES >= 14, "rANS kinds: 2, then 2 specs x K/V x scales, zero points, codes");
    uint64_t scale_bytes = 0, zero_bytes = 0, code_bytes = 0;
    for (uint32_t g = 0; g < n_groups; ++g) {
        const kw_wire_token_group *tg = &groups[g];
        uint8_t *desc = p + KW_WIRE_SECTION_HEAD_BYTES + (size_t)KW_WIRE_GROUP_DESC_BYTES * g;
        kw_store_le32(desc, tg->n_tokens);
        const kw_wire_codec_spec *kv_specs[2] = {&tg->k, &tg->v};
        for (int kv = 0; kv < 2; ++kv) {
            uint8_t *d = desc + 4 + 4 * kv; /* the spec is the descriptor's four bytes */
            d[0] = kv_specs[kv]->codec;
            d[1] = kv_specs[kv]->granularity;
            d[2] = kv_specs[kv]->scale_dtype;
            d[3] = kv_specs[kv]->group_log2;
            const uint64_t sb = kw__wire_scale_block_bytes(kv_specs[kv], hdr->n_kv_heads, tg->n_tokens, hdr->head_dim);
            scale_bytes += sb * (kw_wire_spec_asym(kv_specs[kv]) ? 2u : 1u);
            zero_bytes += kw_wire_spec_asym(kv_specs[kv]) ? sb : 0u;
            const uint64_t cb = kw__wire_code_bytes(kv_specs[kv], hdr->n_kv_heads, tg->n_tokens, hdr->head_dim);
            code_bytes += cb;
            if (pol->rans) {
                const int other = memcmp(kv_specs[kv], kv ? &groups[0].v : &groups[0].k, sizeof *kv_specs[kv]) != 0;
                const uint8_t kind = (uint8_t)(2 + 3 * kv + 6 * other);
                e->rans_runs[n_runs++] = (kw__wire_rans_run){.bytes = (uint32_t)sb, .cls = kind};
                e->rans_runs[n_runs++] =
                    (kw__wire_rans_run){.bytes = kw_wire_spec_asym(kv_specs[kv]) ? (uint32_t)sb : 0u, .cls = kind + 1};
                e->rans_runs[n_runs++] = (kw__wire_rans_run){.bytes = (uint32_t)cb, .cls = kind + 2};
            }
        }
    }
    if (pol->rans) e->rans_runs[n_runs++] = (kw__wire_rans_run){.bytes = (uint32_t)outlier_bytes, .cls = 1};
    e->pending = (struct kw__enc_pending){.dst = p,
                                          .layer = layer,
                                          .n_groups = n_groups,
                                          .table = table,
                                          .index_bytes = index_bytes,
                                          .raw = raw,
                                          .scale_bytes = scale_bytes,
                                          .zero_bytes = zero_bytes,
                                          .code_bytes = code_bytes,
                                          .outlier_bytes = outlier_bytes,
                                          .zstd_level = pol->zstd_level,
                                          .rans = pol->rans,
                                          .n_rans_runs = n_runs};
    *groups_out = groups;
    return 0;
}

/* Compresses (if asked and smaller), checksums and commits the pending section. */
static int kw__enc_finish(kw_wire_encoder *e, size_t *written) {
    const struct kw__enc_pending pd = e->pending;
    KW_RETURN_IF(!pd.dst, KW_E_STATE, "no section was begun (or it failed)");
    e->pending.dst = NULL;
    uint8_t *p = pd.dst, *body = p + pd.table;
    size_t stored = (size_t)pd.raw;
    uint8_t coded_flag = 0;
    if (pd.zstd_level != 0) {
        size_t csize = 0;
        KW_FORWARD(kw__enc_compress(e, body, (size_t)pd.raw, pd.zstd_level, &csize));
        if (csize < stored) {
            stored = csize;
            coded_flag = KW__SEC_FLAG_ZSTD;
        }
    }
    if (pd.rans && stored > 0) {
        /* only a body smaller than the best so far is kept: the coder stops once it would not fit */
        KW_FORWARD(kw__enc_scratch((void **)&e->rans_scratch, &e->rans_scratch_cap, stored - 1));
        size_t rsize = 0;
        const int rc = kw__wire_rans_encode(body, (size_t)pd.raw, e->rans_runs, pd.n_rans_runs, e->rans_scratch,
                                            stored - 1, &rsize);
        KW_RETURN_IF(rc != 0 && rc != KW_E_BUFFER_TOO_SMALL, rc, "rANS coding failed");
        if (rc != 0) kw_error_clear(); /* not smaller: no failure, so no reason left behind */
        if (rc == 0) {
            stored = rsize;
            coded_flag = KW__SEC_FLAG_RANS;
        }
    }
    if (coded_flag) {
        memcpy(body, coded_flag == KW__SEC_FLAG_RANS ? e->rans_scratch : e->scratch, stored);
        p[KW__SEC_FLAGS] |= coded_flag;
    }
    kw_store_le32(p + KW__SEC_STORED_BYTES, (uint32_t)stored);
    kw_store_le64(body + stored, kw__wire_hash_bytes(p, pd.table + stored));
    const size_t total = pd.table + stored + KW_WIRE_CHECKSUM_BYTES;

    e->bd.header += pd.table;
    e->bd.indices += pd.index_bytes;
    e->bd.scales += pd.scale_bytes;
    e->bd.zero_points += pd.zero_bytes;
    e->bd.payload += pd.code_bytes;
    e->bd.outliers += pd.outlier_bytes;
    e->bd.checksums += KW_WIRE_CHECKSUM_BYTES;
    e->bd.sections += 1;
    if (stored < pd.raw) {
        e->bd.compression_saved += pd.raw - stored;
        e->bd.compressed_sections += 1;
    }
    e->sections += 1;
    e->last_layer = pd.layer;
    kw__enc_commit(e, p, total, 1);
    *written = total;
    return 0;
}

/* The rotated copy of the tensors that rotate names (FORMAT.md §5.12; bit 0 K, bit 1 V): each selected row loaded
 * to f32, rotated forward, and stored back in src_dtype (RNE; f32 exactly) into e->rotated as (T, H, D); *rin is in
 * with those tensors' views replaced. The rows stay in the section's token order, so the rest of the encoder
 * (outliers, scales, codes) works on them as on any input. Tensors kw__enc_tensor can rotate a block of rows at a
 * time (kw__enc_fusable) are left out by the caller: they never take this copy. */
static int kw__enc_rotate(kw_wire_encoder *e, const kw_wire_layer_in *in, uint8_t rotate, kw_wire_layer_in *rin) {
    *rin = *in;
    if (!rotate || e->stage != 1) return 0;
    const uint32_t H = e->hdr.n_kv_heads, D = e->hdr.head_dim, T = in->n_tokens, dt = e->hdr.src_dtype;
    const size_t es = kw__wire_dtype_size(dt), per = (size_t)T * H * D * es;
    KW_RETURN_IF(T == 0 || T > e->hdr.n_positions, KW_E_INVALID_ARG, "layer %u: %u tokens", in->layer, T);
    const size_t need = 2 * per;
    if (e->rotated_cap < need) {
        uint8_t *p = realloc(e->rotated, need);
        KW_RETURN_IF(!p, KW_E_NOMEM, "rotation scratch of %zu bytes", need);
        e->rotated = p;
        e->rotated_cap = need;
    }
    float sx[KW_WIRE_MAX_HEAD_DIM];
    kw__wire_rotate_factors(D, 0, sx);
    const kw_wire_tensor_in *src[2] = {&in->k, &in->v};
    kw_wire_tensor_in *dstv[2] = {&rin->k, &rin->v};
    for (int kv = 0; kv < 2; ++kv) {
        if (!(rotate & (1u << kv))) continue;
        uint8_t *out = e->rotated + (size_t)kv * per;
        for (uint32_t t = 0; t < T; ++t)
            for (uint32_t h = 0; h < H; ++h)
                e->kernels->rotate(kw__enc_row(src[kv], es, h, t), dt, out + ((size_t)t * H + h) * D * es, dt, D, sx,
                                   0);
        *dstv[kv] = (kw_wire_tensor_in){.data = out, .head_stride = D, .token_stride = (size_t)H * D, .rows = NULL};
    }
    return 0;
}

/* The code limit (0: none) of a tensor of K (kv 0) or V (1) coded by spec: the policy's, for the layer's own codec
 * (pol->k or pol->v) only; a token group of another codec is coded as it is (FORMAT.md §5.14). */
static uint32_t kw__enc_limit(const kw_wire_policy *pol, const kw_wire_codec_spec *spec, int kv) {
    const kw_wire_codec_spec *own = kv ? &pol->v : &pol->k;
    return memcmp(spec, own, sizeof *own) == 0 ? (kv ? pol->code_limit_v : pol->code_limit_k) : 0u;
}

int kw_wire_encoder_write_section(kw_wire_encoder *e, const kw_wire_layer_in *in, const kw_wire_policy *pol, void *dst,
                                  size_t cap, size_t *written) {
    KW_RETURN_IF(!e || !in || !dst || !written || !pol, KW_E_INVALID_ARG, "null argument");
    e->pending.dst = NULL;
    KW_RETURN_IF(e->stage == 1 && (!in->k.data || !in->v.data), KW_E_INVALID_ARG, "layer %u: K or V has no data",
                 in->layer);
    kw_wire_layer_in rotated_in; /* in, with the tensors rotated through a copy (FORMAT.md §5.12) */
    uint8_t fused = 0;           /* the rotated tensors kw__enc_tensor rotates block by block instead */
    if (pol->rotate) {           /* the policy is checked first: the rotation needs a power-of-two head_dim */
        kw_wire_token_group one;
        const kw_wire_token_group *g0 = NULL;
        uint32_t n_g0 = 0;
        KW_FORWARD(kw__enc_policy(&e->hdr, pol, in->n_tokens, &one, &g0, &n_g0));
        for (int kv = 0; kv < 2 && !pol->outliers; ++kv) {
            int all = (pol->rotate >> kv) & 1;
            for (uint32_t g = 0; g < n_g0 && all; ++g)
                all = kw__enc_fusable(kv ? &g0[g].v : &g0[g].k, (pol->clip >> kv) & 1,
                                      kw__enc_limit(pol, kv ? &g0[g].v : &g0[g].k, kv));
            fused |= (uint8_t)(all << kv);
        }
        if (fused && !e->rot_block) {
            e->rot_block = malloc(KW__ENC_ROT_BYTES);
            KW_RETURN_IF(!e->rot_block, KW_E_NOMEM, "rotation block of %u bytes", KW__ENC_ROT_BYTES);
        }
        if (fused) kw__wire_rotate_factors(e->hdr.head_dim, 0, e->rot_sx);
        KW_FORWARD(kw__enc_rotate(e, in, (uint8_t)(pol->rotate & ~fused), &rotated_in));
        in = &rotated_in;
    }
    /* the outliers first: the section's size depends on where they are */
    uint8_t *mask = NULL;
    uint32_t n_out = 0;
    uint64_t out_bytes = 0;
    const uint32_t out_dtype = pol->outlier_dtype ? pol->outlier_dtype : e->hdr.src_dtype;
    int rc;
    if (pol->outliers > 0 && e->stage == 1) {
        kw_wire_token_group one; /* validated before the selection reads the groups */
        const kw_wire_token_group *g0 = NULL;
        uint32_t n_g0 = 0;
        KW_FORWARD(kw__enc_policy(&e->hdr, pol, in->n_tokens, &one, &g0, &n_g0));
        const uint64_t elems = 2ull * e->hdr.n_kv_heads * in->n_tokens * e->hdr.head_dim;
        if (e->outlier_mask_cap < (elems + 7) / 8) {
            uint8_t *p = realloc(e->outlier_mask, (size_t)((elems + 7) / 8));
            KW_RETURN_IF(!p, KW_E_NOMEM, "outlier mask of %llu elements", (unsigned long long)elems);
            e->outlier_mask = p;
            e->outlier_mask_cap = (size_t)((elems + 7) / 8);
        }
        mask = e->outlier_mask;
        if (!e->rot_block) { /* kw__enc_tensor copies rows with outliers there */
            e->rot_block = malloc(KW__ENC_ROT_BYTES);
            KW_RETURN_IF(!e->rot_block, KW_E_NOMEM, "row block of %u bytes", KW__ENC_ROT_BYTES);
        }
        KW_CHECK(kw__wire_outlier_select_scratch(e->kernels, &e->hdr, in, pol, pol->outliers, mask, &n_out,
                                                 &e->outlier_scratch, &e->outlier_scratch_cap));
        out_bytes = kw__wire_outlier_table_bytes(mask, elems, n_out, out_dtype);
    }
    kw_wire_token_group single;
    const kw_wire_token_group *groups = NULL;
    KW_CHECK(kw__enc_begin(e, in->layer, in->n_tokens, in->positions, pol, out_bytes, dst, cap, &groups, &single));
    const float rmax[2] = {(pol->rotate & 1) ? kw_wire_rotated_max(e->hdr.head_dim) : 0.0f,
                           (pol->rotate & 2) ? kw_wire_rotated_max(e->hdr.head_dim) : 0.0f};
    uint8_t *body = (uint8_t *)dst + e->pending.table;
    size_t at = e->pending.index_bytes;
    uint32_t t0 = 0;
    for (uint32_t g = 0; g < e->pending.n_groups; ++g) {
        const kw_wire_token_group *tg = &groups[g];
        const kw_wire_codec_spec *kv_specs[2] = {&tg->k, &tg->v};
        const kw_wire_tensor_in *views[2] = {&in->k, &in->v};
        for (int kv = 0; kv < 2; ++kv) {
            const kw__enc_outliers o = {mask, kv ? (uint64_t)e->hdr.n_kv_heads * in->n_tokens * e->hdr.head_dim : 0,
                                        in->n_tokens};
            KW_CHECK(kw__enc_tensor(e, views[kv], kv_specs[kv], t0, tg->n_tokens, mask ? &o : NULL,
                                    (pol->clip >> kv) & 1, kw__enc_limit(pol, kv_specs[kv], kv),
                                    ((fused >> kv) & 1) ? e->rot_sx : NULL, rmax[kv], body + at,
                                    /* a rotated row's NaN or Inf may be a finite row's rotation overflowing */
                                    rmax[kv] > 0.0f ? (kv ? "V (rotated)" : "K (rotated)") : (kv ? "V" : "K")));
            at += (size_t)kw__wire_tensor_bytes(kv_specs[kv], e->hdr.n_kv_heads, tg->n_tokens, e->hdr.head_dim);
        }
        t0 += tg->n_tokens;
    }
    if (mask) KW_CHECK(kw__wire_outlier_table_write(&e->hdr, in, mask, n_out, out_dtype, rmax, body + at, out_bytes));
    return kw__enc_finish(e, written);
out:
    e->pending.dst = NULL;
    return rc;
}

int kw_wire_policy_code_limited(const kw_wire_policy *pol) {
    return kw__enc_limited(&pol->k, pol->code_limit_k) || kw__enc_limited(&pol->v, pol->code_limit_v);
}

int kw_wire_encoder_begin_section(kw_wire_encoder *e, uint32_t layer, uint32_t n_tokens, const uint32_t *positions,
                                  const kw_wire_policy *pol, void *dst, size_t cap, size_t *tensors_offset) {
    KW_RETURN_IF(!e || !tensors_offset, KW_E_INVALID_ARG, "null argument");
    KW_RETURN_IF(pol && pol->outliers, KW_E_INVALID_ARG,
                 "a section written by someone else cannot have outliers: use kw_wire_encoder_write_section");
    KW_RETURN_IF(pol && kw_wire_policy_code_limited(pol), KW_E_INVALID_ARG,
                 "a section written by someone else cannot have code limits: use kw_wire_encoder_write_section");
    kw_wire_token_group single;
    const kw_wire_token_group *groups = NULL;
    KW_FORWARD(kw__enc_begin(e, layer, n_tokens, positions, pol, 0, dst, cap, &groups, &single));
    *tensors_offset = e->pending.table + e->pending.index_bytes;
    return 0;
}

int kw_wire_encoder_begin_section_outliers(kw_wire_encoder *e, uint32_t layer, uint32_t n_tokens,
                                           const uint32_t *positions, const kw_wire_policy *pol, const uint32_t *elems,
                                           const float *values, uint32_t n, void *dst, size_t cap,
                                           size_t *tensors_offset) {
    KW_RETURN_IF(!e || !tensors_offset || !pol || !pol->outliers || !elems || !values, KW_E_INVALID_ARG,
                 "begin_section_outliers: null argument or no outliers");
    KW_RETURN_IF(kw_wire_policy_code_limited(pol), KW_E_INVALID_ARG,
                 "a section written by someone else cannot have code limits: use kw_wire_encoder_write_section");
    const uint64_t elems_total = 2ull * e->hdr.n_kv_heads * n_tokens * e->hdr.head_dim;
    const uint64_t want = pol->outliers < elems_total ? pol->outliers : elems_total;
    KW_RETURN_IF(n != want, KW_E_INVALID_ARG, "%u outliers given, the policy chooses %llu", n,
                 (unsigned long long)want);
    for (uint32_t i = 0; i < n; ++i)
        KW_RETURN_IF(elems[i] >= elems_total || (i > 0 && elems[i] <= elems[i - 1]), KW_E_INVALID_ARG,
                     "outlier %u: element %u is not ascending below %llu", i, elems[i],
                     (unsigned long long)elems_total);
    const uint32_t dtype = pol->outlier_dtype ? pol->outlier_dtype : e->hdr.src_dtype;
    const uint64_t out_bytes = kw__wire_outlier_list_bytes(elems, n, dtype);
    kw_wire_token_group single;
    const kw_wire_token_group *groups = NULL;
    KW_FORWARD(kw__enc_begin(e, layer, n_tokens, positions, pol, out_bytes, dst, cap, &groups, &single));
    const size_t at = e->pending.table + e->pending.index_bytes;
    const uint64_t tensors = kw__enc_tensors_bytes(&e->hdr, groups, e->pending.n_groups);
    const float rmax[2] = {(pol->rotate & 1) ? kw_wire_rotated_max(e->hdr.head_dim) : 0.0f,
                           (pol->rotate & 2) ? kw_wire_rotated_max(e->hdr.head_dim) : 0.0f};
    const int rc = kw__wire_outlier_list_write(elems, values, n, dtype, elems_total / 2, rmax,
                                               (uint8_t *)dst + at + tensors, out_bytes);
    if (rc < 0) {
        e->pending.dst = NULL;
        return rc;
    }
    *tensors_offset = at;
    return 0;
}

int kw_wire_encoder_finish_section(kw_wire_encoder *e, size_t *written) {
    KW_RETURN_IF(!e || !written, KW_E_INVALID_ARG, "null argument");
    return kw__enc_finish(e, written);
}
