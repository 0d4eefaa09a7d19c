/* kw_wire_decode.c: the KVWire decoder (docs/FORMAT.md §9): a streaming state machine fed byte chunks of any size,
 * the one-shot reader built on it, and dequantization of verified sections.
 *
 * Invariants. Every byte is checked to exist before it is read; every count and size from the blob is checked
 * against the format maxima and the caller's limits, with overflow-safe 64-bit arithmetic, before anything is
 * allocated for it; buffers grow only as bytes arrive, so memory is bounded by the bytes actually received (plus one
 * decompressed body, itself within the limit). A section is handed out only after its checksum, structure,
 * positions and scales are verified. Errors are sticky and never abort.
 *
 * A whole section that is present in the caller's chunk is used in place (no copy); the one-shot reader therefore
 * copies nothing but compressed bodies.
 */
#include "wire/kw_wire_internal.h"

#include <math.h>

#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <zstd.h>

#include "wire/kw_wire_rans.h"

#include "common/kw_bytes.h"

enum { KW__ST_HEADER, KW__ST_SECTION, KW__ST_TRAILER, KW__ST_DONE, KW__ST_ERROR };

struct kw_wire_decoder {
    kw_wire_limits lim;
    kw_wire_allocator alloc;
    uint8_t isa;
    int state, error;
    uint64_t offset; /* bytes of the blob consumed */
    kw__wire_hash hash;
    uint8_t fixed[KW_WIRE_HEADER_BYTES]; /* header or trailer being assembled */
    uint32_t fixed_len;
    kw_wire_header hdr;
    int have_hdr;
    uint32_t sections_done;
    int64_t last_layer;
    /* the section being assembled */
    int stage;     /* 0: need the head; 1: need the group table; 2: need the whole record */
    uint64_t need; /* record bytes needed by the current stage */
    uint32_t s_layer, s_tokens, s_index_bytes, s_raw, s_stored, s_groups;
    uint32_t s_outlier_bytes; /* v1.1: the outlier table's size, 0 without one */
    uint8_t s_index_enc, s_flags;
    uint8_t *rec;
    size_t rec_len, rec_cap;
    uint8_t *raw;
    size_t raw_cap;
    kw_wire_group_view *groups;
    size_t groups_cap; /* entries */
    ZSTD_DCtx *zd;
    kw_wire_section sec;
    int have_sec;
    kw_wire_breakdown bd;
    size_t peak;
};

// ---------------------------------------------------------------------------------------------------------------
// Memory

static void *kw__dec_realloc_default(void *user, void *ptr, size_t size) {
    (void)user;
    return realloc(ptr, size);
}

static void kw__dec_free_default(void *user, void *ptr) {
    (void)user;
    free(ptr);
}

/* Grows *buf to at least want bytes (and at most hard_max, the size the caller knows it will need). */
static int kw__dec_grow(kw_wire_decoder *d, void **buf, size_t *cap, size_t want, size_t hard_max, const char *what) {
    if (want <= *cap) return 0;
    size_t n = *cap < 4096 ? 4096 : *cap * 2;
    if (n > hard_max) n = hard_max;
    if (n < want) n = want;
    void *p = d->alloc.realloc_fn(d->alloc.user, *buf, n);
    KW_RETURN_IF(!p, KW_E_NOMEM, "decoder %s buffer of %zu bytes", what, n);
    d->peak += n - *cap;
    *buf = p;
    *cap = n;
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Lifecycle

void kw_wire_limits_default(kw_wire_limits *lim) {
    lim->max_layers = KW_WIRE_MAX_LAYERS;
    lim->max_heads = KW_WIRE_MAX_HEADS;
    lim->max_head_dim = KW_WIRE_MAX_HEAD_DIM;
    lim->max_positions = KW_WIRE_MAX_POSITIONS;
    lim->max_tokens = KW_WIRE_MAX_POSITIONS;
    lim->max_groups = KW_WIRE_MAX_GROUPS;
    lim->max_section_bytes = KW_WIRE_DEFAULT_SECTION_BYTES;
    lim->max_blob_bytes = UINT64_MAX;
}

static uint64_t kw__min64(uint64_t a, uint64_t b) {
    return a < b ? a : b;
}

int kw_wire_decoder_create(const kw_wire_decoder_options *opt, kw_wire_decoder **out) {
    KW_RETURN_IF(!out, KW_E_INVALID_ARG, "no output pointer");
    *out = NULL;
    kw_wire_allocator alloc = {kw__dec_realloc_default, kw__dec_free_default, NULL};
    if (opt && opt->alloc) {
        KW_RETURN_IF(!opt->alloc->realloc_fn || !opt->alloc->free_fn, KW_E_INVALID_ARG, "incomplete allocator");
        alloc = *opt->alloc;
    }
    kw_wire_decoder *d = alloc.realloc_fn(alloc.user, NULL, sizeof *d);
    KW_RETURN_IF(!d, KW_E_NOMEM, "decoder allocation failed");
    memset(d, 0, sizeof *d);
    d->alloc = alloc;
    kw_wire_limits def;
    kw_wire_limits_default(&def);
    const kw_wire_limits zero = {0};
    d->lim = (opt && memcmp(&opt->limits, &zero, sizeof zero) != 0) ? opt->limits : def;
    /* a caller's limit can only lower the format maxima */
    d->lim.max_layers = (uint32_t)kw__min64(d->lim.max_layers, def.max_layers);
    d->lim.max_heads = (uint32_t)kw__min64(d->lim.max_heads, def.max_heads);
    d->lim.max_head_dim = (uint32_t)kw__min64(d->lim.max_head_dim, def.max_head_dim);
    d->lim.max_positions = (uint32_t)kw__min64(d->lim.max_positions, def.max_positions);
    d->lim.max_groups = (uint32_t)kw__min64(d->lim.max_groups, def.max_groups);
    d->lim.max_section_bytes = kw__min64(d->lim.max_section_bytes, KW_WIRE_MAX_SECTION_BYTES);
    d->isa = (uint8_t)kw_wire_isa_resolve(opt ? (enum kw_wire_isa)opt->isa : KW_WIRE_ISA_AUTO);
    d->peak = sizeof *d;
    kw_wire_decoder_reset(d);
    *out = d;
    return 0;
}

void kw_wire_decoder_reset(kw_wire_decoder *d) {
    d->state = KW__ST_HEADER;
    d->error = 0;
    d->offset = 0;
    kw__wire_hash_reset(&d->hash);
    d->fixed_len = 0;
    memset(&d->hdr, 0, sizeof d->hdr);
    d->have_hdr = 0;
    d->sections_done = 0;
    d->last_layer = -1;
    d->stage = 0;
    d->need = KW_WIRE_SECTION_HEAD_BYTES;
    d->rec_len = 0;
    d->have_sec = 0;
    memset(&d->bd, 0, sizeof d->bd);
}

void kw_wire_decoder_destroy(kw_wire_decoder *d) {
    if (!d) return;
    ZSTD_freeDCtx(d->zd);
    d->alloc.free_fn(d->alloc.user, d->rec);
    d->alloc.free_fn(d->alloc.user, d->raw);
    d->alloc.free_fn(d->alloc.user, d->groups);
    d->alloc.free_fn(d->alloc.user, d);
}

const kw_wire_header *kw_wire_decoder_header(const kw_wire_decoder *d) {
    return d->have_hdr ? &d->hdr : NULL;
}
const kw_wire_section *kw_wire_decoder_section(const kw_wire_decoder *d) {
    return d->have_sec ? &d->sec : NULL;
}
const kw_wire_breakdown *kw_wire_decoder_breakdown(const kw_wire_decoder *d) {
    return &d->bd;
}
uint64_t kw_wire_decoder_offset(const kw_wire_decoder *d) {
    return d->offset;
}
size_t kw_wire_decoder_peak_bytes(const kw_wire_decoder *d) {
    return d->peak;
}

// ---------------------------------------------------------------------------------------------------------------
// Header and trailer

/* Checks the magic and version bytes in fixed[from, to) as soon as they arrive. */
static int kw__dec_header_prefix(const kw_wire_decoder *d, uint32_t from, uint32_t to) {
    for (uint32_t i = from; i < to && i < 8; ++i)
        KW_RETURN_IF(d->fixed[i] != kw__wire_magic[i], KW_E_WIRE_MAGIC, "not a KVWire blob (byte %u is 0x%02x)", i,
                     d->fixed[i]);
    if (from < 10 && to >= 10) {
        const uint16_t version = kw_load_le16(d->fixed + KW__HDR_VERSION);
        KW_RETURN_IF(version != KW_WIRE_VERSION && version != KW_WIRE_VERSION_1_1, KW_E_WIRE_VERSION,
                     "KVWire version 0x%04x, this decoder reads 1 (v1) and 0x0101 (v1.1)", version);
    }
    return 0;
}

static int kw__all_zero(const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; ++i)
        if (p[i]) return 0;
    return 1;
}

static int kw__dec_header(kw_wire_decoder *d) {
    const uint8_t *p = d->fixed;
    const uint64_t sum = kw__wire_hash_bytes(p, KW__HDR_CHECKSUM);
    KW_RETURN_IF(sum != kw_load_le64(p + KW__HDR_CHECKSUM), KW_E_WIRE_CHECKSUM, "header checksum mismatch");
    const uint16_t header_bytes = kw_load_le16(p + KW__HDR_HEADER_BYTES);
    KW_RETURN_IF(header_bytes != KW_WIRE_HEADER_BYTES, KW_E_WIRE_CORRUPT, "header_bytes %u, expected %d", header_bytes,
                 KW_WIRE_HEADER_BYTES);
    KW_RETURN_IF(kw_load_le32(p + KW__HDR_FLAGS) != 0, KW_E_WIRE_RESERVED, "header flags 0x%08x are reserved",
                 kw_load_le32(p + KW__HDR_FLAGS));
    KW_RETURN_IF(!kw__all_zero(p + KW__HDR_RESERVED1, 3) || !kw__all_zero(p + KW__HDR_RESERVED2, 12),
                 KW_E_WIRE_RESERVED, "reserved header bytes are not zero");
    kw_wire_header *h = &d->hdr;
    h->n_layers = kw_load_le16(p + KW__HDR_N_LAYERS);
    h->n_sections = kw_load_le16(p + KW__HDR_N_SECTIONS);
    h->n_kv_heads = kw_load_le16(p + KW__HDR_N_HEADS);
    h->head_dim = kw_load_le16(p + KW__HDR_HEAD_DIM);
    h->n_positions = kw_load_le32(p + KW__HDR_N_POSITIONS);
    h->src_dtype = p[KW__HDR_SRC_DTYPE];
    h->model_id = kw_load_le64(p + KW__HDR_MODEL_ID);
    h->policy_id = kw_load_le32(p + KW__HDR_POLICY_ID);
    h->version = kw_load_le16(p + KW__HDR_VERSION); /* checked as it arrived */
    KW_RETURN_IF(kw__wire_dtype_size(h->src_dtype) == 0, KW_E_WIRE_CODEC, "unknown src_dtype %u", h->src_dtype);
    KW_RETURN_IF(h->n_layers == 0, KW_E_WIRE_CORRUPT, "n_layers is 0");
    KW_RETURN_IF(h->n_layers > d->lim.max_layers, KW_E_WIRE_LIMIT, "n_layers %u > limit %u", h->n_layers,
                 d->lim.max_layers);
    KW_RETURN_IF(h->n_kv_heads == 0, KW_E_WIRE_CORRUPT, "n_kv_heads is 0");
    KW_RETURN_IF(h->n_kv_heads > d->lim.max_heads, KW_E_WIRE_LIMIT, "n_kv_heads %u > limit %u", h->n_kv_heads,
                 d->lim.max_heads);
    KW_RETURN_IF(h->head_dim == 0 || h->head_dim % 8 != 0, KW_E_WIRE_CORRUPT,
                 "head_dim %u is not a positive multiple of 8", h->head_dim);
    KW_RETURN_IF(h->head_dim > d->lim.max_head_dim, KW_E_WIRE_LIMIT, "head_dim %u > limit %u", h->head_dim,
                 d->lim.max_head_dim);
    KW_RETURN_IF(h->n_positions == 0, KW_E_WIRE_CORRUPT, "n_positions is 0");
    KW_RETURN_IF(h->n_positions > d->lim.max_positions, KW_E_WIRE_LIMIT, "n_positions %u > limit %u", h->n_positions,
                 d->lim.max_positions);
    KW_RETURN_IF(h->n_sections > h->n_layers, KW_E_WIRE_CORRUPT, "n_sections %u > n_layers %u", h->n_sections,
                 h->n_layers);
    return 0;
}

static int kw__dec_trailer(kw_wire_decoder *d) {
    const uint8_t *p = d->fixed;
    KW_RETURN_IF(memcmp(p, kw__wire_trailer_marker, 4) != 0, KW_E_WIRE_CORRUPT,
                 "no trailer marker after the last section (offset %llu)", (unsigned long long)d->offset);
    KW_RETURN_IF(!kw__all_zero(p + KW__TRL_RESERVED, 4), KW_E_WIRE_RESERVED, "reserved trailer bytes are not zero");
    const uint64_t declared = kw_load_le64(p + KW__TRL_BLOB_BYTES);
    KW_RETURN_IF(declared != d->offset + KW_WIRE_TRAILER_BYTES, KW_E_WIRE_CORRUPT,
                 "trailer declares %llu blob bytes, the blob has %llu", (unsigned long long)declared,
                 (unsigned long long)(d->offset + KW_WIRE_TRAILER_BYTES));
    kw__wire_hash_update(&d->hash, p, KW__TRL_CHECKSUM);
    KW_RETURN_IF(kw__wire_hash_digest(&d->hash) != kw_load_le64(p + KW__TRL_CHECKSUM), KW_E_WIRE_CHECKSUM,
                 "blob checksum mismatch");
    d->offset += KW_WIRE_TRAILER_BYTES;
    d->bd.header += KW__TRL_CHECKSUM;
    d->bd.checksums += KW_WIRE_CHECKSUM_BYTES;
    d->bd.total = d->offset;
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Sections

/* Stage 0: the 32-byte section head. */
static int kw__dec_section_head(kw_wire_decoder *d, const uint8_t *p) {
    KW_RETURN_IF(memcmp(p, kw__wire_section_marker, 4) != 0, KW_E_WIRE_CORRUPT,
                 "no section marker at offset %llu (section %u)", (unsigned long long)d->offset, d->sections_done);
    d->s_flags = p[KW__SEC_FLAGS];
    /* v1.1 gives flag bits 1 to 5 and, with bit 2, bytes 28..31 a meaning; in v1 they stay reserved */
    const uint8_t known = KW__SEC_FLAG_ZSTD | (kw__wire_is_v11(d->hdr.version)
                                                   ? KW__SEC_FLAG_PRE_ROPE | KW__SEC_FLAG_OUTLIERS |
                                                         KW__SEC_FLAG_ROT_K | KW__SEC_FLAG_ROT_V | KW__SEC_FLAG_RANS
                                                   : 0u);
    d->s_outlier_bytes = kw_load_le32(p + KW__SEC_OUTLIER_BYTES);
    KW_RETURN_IF((d->s_flags & ~known) != 0 || !kw__all_zero(p + KW__SEC_RESERVED, 2) ||
                     (!(d->s_flags & KW__SEC_FLAG_OUTLIERS) && d->s_outlier_bytes != 0),
                 KW_E_WIRE_RESERVED, "section %u: reserved flags or bytes are set", d->sections_done);
    KW_RETURN_IF((d->s_flags & KW__SEC_FLAG_OUTLIERS) && d->s_outlier_bytes < KW__OUTLIER_HEAD_BYTES + 2,
                 KW_E_WIRE_CORRUPT, "section %u: an outlier table of %u bytes", d->sections_done, d->s_outlier_bytes);
    const kw_wire_header *h = &d->hdr;
    KW_RETURN_IF((d->s_flags & (KW__SEC_FLAG_ROT_K | KW__SEC_FLAG_ROT_V)) && kw_wire_rotate_log2(h->head_dim) < 0,
                 KW_E_WIRE_CODEC, "section %u: a rotated tensor needs a power-of-two head_dim, not %u",
                 d->sections_done, h->head_dim);
    d->s_layer = kw_load_le16(p + KW__SEC_LAYER);
    KW_RETURN_IF(d->s_layer >= h->n_layers, KW_E_WIRE_CORRUPT, "section %u: layer %u >= n_layers %u", d->sections_done,
                 d->s_layer, h->n_layers);
    KW_RETURN_IF((int64_t)d->s_layer <= d->last_layer, KW_E_WIRE_ORDER, "section %u: layer %u after layer %lld",
                 d->sections_done, d->s_layer, (long long)d->last_layer);
    d->s_index_enc = p[KW__SEC_INDEX_ENC];
    KW_RETURN_IF(d->s_index_enc == 0 || d->s_index_enc >= KW_WIRE_INDEX_COUNT, KW_E_WIRE_CODEC,
                 "section %u: unknown index encoding %u", d->sections_done, d->s_index_enc);
    d->s_tokens = kw_load_le32(p + KW__SEC_N_TOKENS);
    KW_RETURN_IF(d->s_tokens == 0, KW_E_WIRE_CORRUPT, "section %u has no tokens", d->sections_done);
    KW_RETURN_IF(d->s_tokens > d->lim.max_tokens, KW_E_WIRE_LIMIT, "section %u: %u tokens > limit %u", d->sections_done,
                 d->s_tokens, d->lim.max_tokens);
    KW_RETURN_IF(d->s_tokens > h->n_positions, KW_E_WIRE_INDICES, "section %u: %u tokens > %u positions",
                 d->sections_done, d->s_tokens, h->n_positions);
    d->s_groups = kw_load_le16(p + KW__SEC_N_GROUPS);
    KW_RETURN_IF(d->s_groups == 0, KW_E_WIRE_CORRUPT, "section %u has no token groups", d->sections_done);
    KW_RETURN_IF(d->s_groups > d->lim.max_groups, KW_E_WIRE_LIMIT, "section %u: %u token groups > limit %u",
                 d->sections_done, d->s_groups, d->lim.max_groups);
    KW_RETURN_IF(d->s_groups > d->s_tokens, KW_E_WIRE_CORRUPT, "section %u: %u groups for %u tokens", d->sections_done,
                 d->s_groups, d->s_tokens);
    d->s_index_bytes = kw_load_le32(p + KW__SEC_INDEX_BYTES);
    if (d->s_index_enc == KW_WIRE_INDEX_VARINT) {
        KW_RETURN_IF(d->s_index_bytes < d->s_tokens || d->s_index_bytes > 5ull * d->s_tokens, KW_E_WIRE_CORRUPT,
                     "section %u: %u varint index bytes for %u tokens", d->sections_done, d->s_index_bytes,
                     d->s_tokens);
    } else {
        KW_RETURN_IF(d->s_index_bytes != kw__wire_index_fixed_bytes(d->s_index_enc, d->s_tokens, h->n_positions),
                     KW_E_WIRE_CORRUPT, "section %u: index_bytes %u wrong for %s encoding of %u tokens",
                     d->sections_done, d->s_index_bytes, kw_wire_index_name(d->s_index_enc), d->s_tokens);
    }
    d->s_raw = kw_load_le32(p + KW__SEC_RAW_BYTES);
    d->s_stored = kw_load_le32(p + KW__SEC_STORED_BYTES);
    KW_RETURN_IF(d->s_raw > d->lim.max_section_bytes, KW_E_WIRE_LIMIT, "section %u: body of %u bytes > limit %llu",
                 d->sections_done, d->s_raw, (unsigned long long)d->lim.max_section_bytes);
    KW_RETURN_IF((d->s_flags & KW__SEC_FLAG_ZSTD) && (d->s_flags & KW__SEC_FLAG_RANS), KW_E_WIRE_CORRUPT,
                 "section %u: the body is flagged both zstd- and rANS-coded", d->sections_done);
    if (d->s_flags & (KW__SEC_FLAG_ZSTD | KW__SEC_FLAG_RANS))
        KW_RETURN_IF(d->s_stored >= d->s_raw, KW_E_WIRE_CORRUPT,
                     "section %u: compressed body of %u bytes is not smaller than its %u raw bytes", d->sections_done,
                     d->s_stored, d->s_raw);
    else
        KW_RETURN_IF(d->s_stored != d->s_raw, KW_E_WIRE_CORRUPT,
                     "section %u: stored %u bytes differ from raw %u for an uncompressed body", d->sections_done,
                     d->s_stored, d->s_raw);
    const uint64_t total = KW_WIRE_SECTION_HEAD_BYTES + (uint64_t)KW_WIRE_GROUP_DESC_BYTES * d->s_groups + d->s_stored +
                           KW_WIRE_CHECKSUM_BYTES;
    KW_RETURN_IF(d->offset + total + KW_WIRE_TRAILER_BYTES > d->lim.max_blob_bytes, KW_E_WIRE_LIMIT,
                 "section %u ends past the blob limit of %llu bytes", d->sections_done,
                 (unsigned long long)d->lim.max_blob_bytes);
    KW_RETURN_IF(total > SIZE_MAX, KW_E_WIRE_LIMIT, "section size exceeds the address space");
    if (d->groups_cap < d->s_groups) {
        void *g = d->alloc.realloc_fn(d->alloc.user, d->groups, d->s_groups * sizeof *d->groups);
        KW_RETURN_IF(!g, KW_E_NOMEM, "group table of %u entries", d->s_groups);
        d->peak += (d->s_groups - d->groups_cap) * sizeof *d->groups;
        d->groups = g;
        d->groups_cap = d->s_groups;
    }
    d->need = KW_WIRE_SECTION_HEAD_BYTES + (uint64_t)KW_WIRE_GROUP_DESC_BYTES * d->s_groups;
    d->stage = 1;
    return 0;
}

/* Stage 1: the group table; fills the group views with body offsets (pointers are set at stage 2). */
static int kw__dec_section_table(kw_wire_decoder *d, const uint8_t *p) {
    const kw_wire_header *h = &d->hdr;
    uint64_t tokens = 0, at = d->s_index_bytes;
    for (uint32_t g = 0; g < d->s_groups; ++g) {
        const uint8_t *desc = p + KW_WIRE_SECTION_HEAD_BYTES + (size_t)KW_WIRE_GROUP_DESC_BYTES * g;
        kw_wire_group_view *gv = &d->groups[g];
        memset(gv, 0, sizeof *gv);
        gv->n_tokens = kw_load_le32(desc);
        KW_RETURN_IF(gv->n_tokens == 0, KW_E_WIRE_CORRUPT, "section %u: token group %u is empty", d->sections_done, g);
        KW_RETURN_IF(tokens + gv->n_tokens > d->s_tokens, KW_E_WIRE_CORRUPT,
                     "section %u: token groups cover more than its %u tokens", d->sections_done, d->s_tokens);
        gv->first_token = (uint32_t)tokens;
        tokens += gv->n_tokens;
        kw_wire_tensor_view *tv[2] = {&gv->k, &gv->v};
        for (int kv = 0; kv < 2; ++kv) {
            const uint8_t *s = desc + 4 + 4 * kv;
            const kw_wire_codec_spec spec = {s[0], s[1], s[2], s[3]};
            const int rc = kw__wire_spec_check(&spec, h->head_dim, kw__wire_is_v11(h->version));
            KW_RETURN_IF(rc < 0, rc, "section %u group %u: invalid %c descriptor %02x %02x %02x %02x", d->sections_done,
                         g, kv ? 'V' : 'K', s[0], s[1], s[2], s[3]);
            KW_RETURN_IF((d->s_flags & (kv ? KW__SEC_FLAG_ROT_V : KW__SEC_FLAG_ROT_K)) &&
                             kw_wire_codec_is_passthrough(spec.codec),
                         KW_E_WIRE_CODEC, "section %u group %u: %c is rotated but passthrough (§5.12)",
                         d->sections_done, g, kv ? 'V' : 'K');
            /* at most 256 heads * 2^24 tokens * 1024 channels * 4 bytes (twice with zero points): no overflow */
            const uint64_t count = kw__wire_scale_count(&spec, h->n_kv_heads, gv->n_tokens, h->head_dim);
            const uint64_t scale_bytes = count * kw_wire_scale_size(kw_wire_spec_scale(&spec));
            const uint64_t zero_bytes = kw_wire_spec_asym(&spec) ? scale_bytes : 0;
            const uint64_t code_bytes = kw__wire_code_bytes(&spec, h->n_kv_heads, gv->n_tokens, h->head_dim);
            KW_RETURN_IF(at + scale_bytes + zero_bytes + code_bytes > d->s_raw, KW_E_WIRE_CORRUPT,
                         "section %u: token groups need more than the declared %u body bytes", d->sections_done,
                         d->s_raw);
            tv[kv]->spec = spec;
            tv[kv]->scale_count = (uint32_t)count; /* < s_raw, a u32 */
            tv[kv]->scale_bytes = (uint32_t)scale_bytes;
            tv[kv]->zero_bytes = (uint32_t)zero_bytes;
            tv[kv]->code_bytes = code_bytes;
            /* offsets are kept in the pointers until the body is known (stage 2) */
            tv[kv]->scales = (const uint8_t *)(uintptr_t)at;
            tv[kv]->zeros = (const uint8_t *)(uintptr_t)(at + scale_bytes);
            tv[kv]->codes = (const uint8_t *)(uintptr_t)(at + scale_bytes + zero_bytes);
            at += scale_bytes + zero_bytes + code_bytes;
        }
    }
    KW_RETURN_IF(tokens != d->s_tokens, KW_E_WIRE_CORRUPT, "section %u: token groups cover %llu of %u tokens",
                 d->sections_done, (unsigned long long)tokens, d->s_tokens);
    KW_RETURN_IF(at + d->s_outlier_bytes != d->s_raw, KW_E_WIRE_CORRUPT,
                 "section %u: raw_body_bytes %u, the groups and the outlier table need %llu", d->sections_done,
                 d->s_raw, (unsigned long long)(at + d->s_outlier_bytes));
    d->need = KW_WIRE_SECTION_HEAD_BYTES + (uint64_t)KW_WIRE_GROUP_DESC_BYTES * d->s_groups + d->s_stored +
              KW_WIRE_CHECKSUM_BYTES;
    d->stage = 2;
    return 0;
}

/* Runs the stages the first vlen bytes of the record allow. Returns 1 when the record is complete, 0 if more bytes
 * are needed. */
static int kw__dec_section_stages(kw_wire_decoder *d, const uint8_t *view, size_t vlen) {
    if (d->stage == 0) {
        /* the marker is checked as soon as it is there, so misframed bytes fail fast */
        KW_RETURN_IF(vlen >= 4 && memcmp(view, kw__wire_section_marker, 4) != 0, KW_E_WIRE_CORRUPT,
                     "no section marker at offset %llu (section %u)", (unsigned long long)d->offset, d->sections_done);
        if (vlen < d->need) return 0;
        KW_FORWARD(kw__dec_section_head(d, view));
    }
    if (d->stage == 1) {
        if (vlen < d->need) return 0;
        KW_FORWARD(kw__dec_section_table(d, view));
    }
    return vlen >= d->need ? 1 : 0;
}

static int kw__dec_check_scales(const kw_wire_decoder *d, const kw_wire_group_view *gv, uint32_t g) {
    const kw_wire_tensor_view *tv[2] = {&gv->k, &gv->v};
    for (int kv = 0; kv < 2; ++kv) {
        const uint32_t dtype = kw_wire_spec_scale(&tv[kv]->spec);
        if (dtype == KW_WIRE_SCALE_NONE) continue;
        const int asym = kw_wire_spec_asym(&tv[kv]->spec);
        const float qmax = asym ? kw_wire_codec_qmax_asym(tv[kv]->spec.codec) : kw_wire_codec_qmax(tv[kv]->spec.codec);
        const uint32_t ss = kw_wire_scale_size(dtype);
        if (dtype == KW_WIRE_SCALE_F16 && !asym && qmax * 65504.0f <= KW_WIRE_BF16_MAX) {
            /* every f16 code below 0x7c00 (sign clear, finite) is a valid scale here: one pass of integer maxima
             * (vectorized) instead of a value check per scale; the loop below finds and reports a bad one */
            uint32_t top = 0;
            for (uint32_t i = 0; i < tv[kv]->scale_count; ++i) {
                const uint32_t c = kw_load_le16(tv[kv]->scales + (size_t)i * 2);
                top = c > top ? c : top;
            }
            if (top < 0x7c00u) continue;
        }
        for (uint32_t i = 0; i < tv[kv]->scale_count; ++i) {
            KW_RETURN_IF(!kw_wire_scale_valid(dtype, tv[kv]->scales + (size_t)i * ss, qmax), KW_E_WIRE_VALUE,
                         "section %u group %u: %c scale %u is invalid for %s (%s %g)", d->sections_done, g,
                         kv ? 'V' : 'K', i, kw_wire_codec_name(tv[kv]->spec.codec), kw_wire_scale_name(dtype),
                         (double)kw_wire_scale_load(dtype, tv[kv]->scales + (size_t)i * ss));
            if (!asym) continue;
            const float s = kw_wire_scale_load(dtype, tv[kv]->scales + (size_t)i * ss);
            KW_RETURN_IF(!kw_wire_zero_valid(dtype, tv[kv]->zeros + (size_t)i * ss, s, qmax), KW_E_WIRE_VALUE,
                         "section %u group %u: %c zero point %u (%s %g) is not finite or takes values past the "
                         "largest bf16 with scale %g",
                         d->sections_done, g, kv ? 'V' : 'K', i, kw_wire_scale_name(dtype),
                         (double)kw_wire_scale_load(dtype, tv[kv]->zeros + (size_t)i * ss), (double)s);
        }
    }
    return 0;
}

/* Stage 2 complete: verify, decompress, validate and publish the record at view. */
static int kw__dec_section_finish(kw_wire_decoder *d, const uint8_t *view) {
    const size_t table = KW_WIRE_SECTION_HEAD_BYTES + (size_t)KW_WIRE_GROUP_DESC_BYTES * d->s_groups;
    const size_t total = (size_t)d->need;
    KW_RETURN_IF(kw__wire_hash_cold(view, total - KW_WIRE_CHECKSUM_BYTES) !=
                     kw_load_le64(view + total - KW_WIRE_CHECKSUM_BYTES),
                 KW_E_WIRE_CHECKSUM, "section %u (layer %u): checksum mismatch", d->sections_done, d->s_layer);
    const uint8_t *stored = view + table;
    const uint8_t *body = stored;
    if (d->s_flags & KW__SEC_FLAG_ZSTD) {
        const unsigned long long fcs = ZSTD_getFrameContentSize(stored, d->s_stored);
        KW_RETURN_IF(fcs != d->s_raw, KW_E_WIRE_COMPRESSION, "section %u: zstd frame content size %llu, expected %u",
                     d->sections_done, fcs, d->s_raw);
        const size_t fsz = ZSTD_findFrameCompressedSize(stored, d->s_stored);
        KW_RETURN_IF(ZSTD_isError(fsz) || fsz != d->s_stored, KW_E_WIRE_COMPRESSION,
                     "section %u: the stored body is not exactly one zstd frame", d->sections_done);
        KW_FORWARD(kw__dec_grow(d, (void **)&d->raw, &d->raw_cap, d->s_raw, d->s_raw, "decompression"));
        if (!d->zd) {
            d->zd = ZSTD_createDCtx();
            KW_RETURN_IF(!d->zd, KW_E_NOMEM, "ZSTD_createDCtx failed");
        }
        const size_t r = ZSTD_decompressDCtx(d->zd, d->raw, d->s_raw, stored, d->s_stored);
        KW_RETURN_IF(ZSTD_isError(r) || r != d->s_raw, KW_E_WIRE_COMPRESSION, "section %u: zstd: %s", d->sections_done,
                     ZSTD_isError(r) ? ZSTD_getErrorName(r) : "short output");
        body = d->raw;
    } else if (d->s_flags & KW__SEC_FLAG_RANS) {
        KW_FORWARD(kw__dec_grow(d, (void **)&d->raw, &d->raw_cap, d->s_raw, d->s_raw, "decompression"));
        if (kw__wire_rans_decode(stored, d->s_stored, d->raw, d->s_raw) != 0) {
            char why[192];
            snprintf(why, sizeof why, "%s", kw_error_detail());
            KW_FAIL(KW_E_WIRE_COMPRESSION, "section %u: %s", d->sections_done, why);
        }
        body = d->raw;
    }
    KW_FORWARD(kw__wire_index_decode(d->s_index_enc, body, d->s_index_bytes, d->s_tokens, d->hdr.n_positions, NULL));
    uint64_t scale_bytes = 0, zero_bytes = 0, code_bytes = 0;
    for (uint32_t g = 0; g < d->s_groups; ++g) {
        kw_wire_group_view *gv = &d->groups[g];
        kw_wire_tensor_view *tv[2] = {&gv->k, &gv->v};
        for (int kv = 0; kv < 2; ++kv) {
            tv[kv]->scales = body + (uintptr_t)tv[kv]->scales;
            tv[kv]->zeros = kw_wire_spec_asym(&tv[kv]->spec) ? body + (uintptr_t)tv[kv]->zeros : NULL;
            tv[kv]->codes = body + (uintptr_t)tv[kv]->codes;
            scale_bytes += tv[kv]->scale_bytes + tv[kv]->zero_bytes;
            zero_bytes += tv[kv]->zero_bytes;
            code_bytes += tv[kv]->code_bytes;
        }
        KW_FORWARD(kw__dec_check_scales(d, gv, g));
    }

    uint32_t n_outliers = 0;
    uint8_t outlier_dtype = 0;
    const uint8_t *outlier_table = d->s_outlier_bytes ? body + d->s_raw - d->s_outlier_bytes : NULL;
    if (outlier_table) {
        const uint64_t elems = 2ull * d->hdr.n_kv_heads * d->s_tokens * d->hdr.head_dim;
        KW_FORWARD(kw__wire_outlier_table_check(outlier_table, d->s_outlier_bytes, elems, &n_outliers, &outlier_dtype));
    }

    kw_wire_section *s = &d->sec;
    memset(s, 0, sizeof *s);
    s->pre_rope = (d->s_flags & KW__SEC_FLAG_PRE_ROPE) != 0;
    s->rotated =
        (uint8_t)(((d->s_flags & KW__SEC_FLAG_ROT_K) ? 1u : 0u) | ((d->s_flags & KW__SEC_FLAG_ROT_V) ? 2u : 0u));
    s->n_outliers = n_outliers;
    s->outlier_dtype = outlier_dtype;
    s->outlier_table = outlier_table;
    s->outlier_bytes = d->s_outlier_bytes;
    s->ordinal = d->sections_done;
    s->layer = d->s_layer;
    s->n_tokens = d->s_tokens;
    s->n_groups = d->s_groups;
    s->n_kv_heads = d->hdr.n_kv_heads;
    s->head_dim = d->hdr.head_dim;
    s->n_positions = d->hdr.n_positions;
    s->index_encoding = d->s_index_enc;
    s->compressed = (d->s_flags & (KW__SEC_FLAG_ZSTD | KW__SEC_FLAG_RANS)) != 0;
    s->rans_coded = (d->s_flags & KW__SEC_FLAG_RANS) != 0;
    s->isa = d->isa;
    s->index_data = body;
    s->index_bytes = d->s_index_bytes;
    s->groups = d->groups;
    s->raw_body_bytes = d->s_raw;
    s->stored_body_bytes = d->s_stored;
    s->offset = d->offset;
    s->size = total;
    s->checksum = kw_load_le64(view + total - KW_WIRE_CHECKSUM_BYTES);
    d->have_sec = 1;

    kw__wire_hash_update(&d->hash, view + total - KW_WIRE_CHECKSUM_BYTES, KW_WIRE_CHECKSUM_BYTES); /* FORMAT.md §8 */
    d->offset += total;
    d->bd.header += table;
    d->bd.indices += d->s_index_bytes;
    d->bd.scales += scale_bytes;
    d->bd.zero_points += zero_bytes;
    d->bd.payload += code_bytes;
    d->bd.outliers += d->s_outlier_bytes;
    d->bd.checksums += KW_WIRE_CHECKSUM_BYTES;
    d->bd.sections += 1;
    if (s->compressed) {
        d->bd.compression_saved += d->s_raw - d->s_stored;
        d->bd.compressed_sections += 1;
    }
    d->bd.total = d->offset;
    d->last_layer = d->s_layer;
    d->sections_done += 1;
    d->stage = 0;
    d->need = KW_WIRE_SECTION_HEAD_BYTES;
    d->rec_len = 0;
    d->state = d->sections_done == d->hdr.n_sections ? KW__ST_TRAILER : KW__ST_SECTION;
    d->fixed_len = 0;
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Feeding

static int kw__dec_fail(kw_wire_decoder *d, int rc) {
    d->state = KW__ST_ERROR;
    d->error = rc;
    d->have_sec = 0;
    return rc;
}

/* Appends n bytes to the record buffer (n never takes it past the current need). */
static int kw__dec_append(kw_wire_decoder *d, const uint8_t *p, size_t n) {
    KW_FORWARD(kw__dec_grow(d, (void **)&d->rec, &d->rec_cap, d->rec_len + n, (size_t)d->need, "section"));
    memcpy(d->rec + d->rec_len, p, n);
    d->rec_len += n;
    return 0;
}

int kw_wire_decoder_feed(kw_wire_decoder *d, const void *data, size_t size, size_t *consumed) {
    size_t dummy;
    if (!consumed) consumed = &dummy;
    *consumed = 0;
    KW_RETURN_IF(!d || (!data && size), KW_E_INVALID_ARG, "null argument");
    if (d->state == KW__ST_ERROR) return d->error;
    const uint8_t *p = data;
    size_t used = 0;
    int rc;
    d->have_sec = 0;
    for (;;) {
        switch (d->state) {
        case KW__ST_HEADER:
        case KW__ST_TRAILER: {
            const int header = d->state == KW__ST_HEADER;
            const uint32_t want = header ? KW_WIRE_HEADER_BYTES : KW_WIRE_TRAILER_BYTES;
            if (used == size) goto need_more;
            const size_t take = size - used < want - d->fixed_len ? size - used : want - d->fixed_len;
            memcpy(d->fixed + d->fixed_len, p + used, take);
            used += take;
            const uint32_t from = d->fixed_len;
            d->fixed_len += (uint32_t)take;
            if (header && (rc = kw__dec_header_prefix(d, from, d->fixed_len)) < 0) goto fail;
            if (!header && from < 4 && d->fixed_len >= 4 && memcmp(d->fixed, kw__wire_trailer_marker, 4) != 0) {
                rc = kw_error_set(KW_E_WIRE_CORRUPT, "no trailer marker after the last section (offset %llu)",
                                  (unsigned long long)d->offset);
                goto fail;
            }
            if (d->fixed_len < want) goto need_more;
            d->fixed_len = 0;
            if (!header) {
                if ((rc = kw__dec_trailer(d)) < 0) goto fail;
                d->state = KW__ST_DONE;
                *consumed = used;
                return KW_WIRE_EVENT_END;
            }
            if ((rc = kw__dec_header(d)) < 0) goto fail;
            d->have_hdr = 1;
            kw__wire_hash_update(&d->hash, d->fixed, KW_WIRE_HEADER_BYTES);
            d->offset = KW_WIRE_HEADER_BYTES;
            d->bd.header += KW__HDR_CHECKSUM;
            d->bd.checksums += KW_WIRE_CHECKSUM_BYTES;
            d->bd.total = d->offset;
            d->state = d->hdr.n_sections ? KW__ST_SECTION : KW__ST_TRAILER;
            *consumed = used;
            return KW_WIRE_EVENT_HEADER;
        }
        case KW__ST_SECTION:
            if (used == size) goto need_more;
            if (d->rec_len == 0) {
                /* nothing buffered: try to use the caller's bytes in place */
                rc = kw__dec_section_stages(d, p + used, size - used);
                if (rc < 0) goto fail;
                if (rc == 1) {
                    if ((rc = kw__dec_section_finish(d, p + used)) < 0) goto fail;
                    used += d->sec.size;
                    *consumed = used;
                    return KW_WIRE_EVENT_SECTION;
                }
                /* incomplete: everything left belongs to this record (it is shorter than the current need) */
                if ((rc = kw__dec_append(d, p + used, size - used)) < 0) goto fail;
                used = size;
                goto need_more;
            }
            while (used < size) {
                const size_t want = (size_t)d->need - d->rec_len;
                const size_t take = size - used < want ? size - used : want;
                if ((rc = kw__dec_append(d, p + used, take)) < 0) goto fail;
                used += take;
                rc = kw__dec_section_stages(d, d->rec, d->rec_len);
                if (rc < 0) goto fail;
                if (rc == 1) {
                    if ((rc = kw__dec_section_finish(d, d->rec)) < 0) goto fail;
                    *consumed = used;
                    return KW_WIRE_EVENT_SECTION;
                }
            }
            goto need_more;
        case KW__ST_DONE:
            if (used == size) {
                *consumed = used;
                return KW_WIRE_EVENT_END;
            }
            rc = kw_error_set(KW_E_WIRE_TRAILING, "%zu bytes after the end of the blob", size - used);
            goto fail;
        default:
            return kw_error_set(KW_E_INTERNAL, "decoder in unknown state %d", d->state);
        }
    }
need_more:
    *consumed = used;
    return KW_WIRE_EVENT_NEED_MORE;
fail:
    *consumed = used;
    return kw__dec_fail(d, rc);
}

int kw_wire_decoder_finish(kw_wire_decoder *d) {
    KW_RETURN_IF(!d, KW_E_INVALID_ARG, "null decoder");
    if (d->state == KW__ST_ERROR) return d->error;
    if (d->state == KW__ST_DONE) return 0;
    const uint64_t got = d->offset + (d->state == KW__ST_SECTION ? d->rec_len : d->fixed_len);
    return kw__dec_fail(d, kw_error_set(KW_E_WIRE_TRUNCATED, "the blob ended after %llu bytes, inside the %s",
                                        (unsigned long long)got,
                                        d->state == KW__ST_HEADER    ? "header"
                                        : d->state == KW__ST_SECTION ? "sections"
                                                                     : "trailer"));
}

// ---------------------------------------------------------------------------------------------------------------
// One-shot reader

struct kw_wire_reader {
    kw_wire_decoder *dec;
    const uint8_t *blob;
    size_t size, pos;
    int done;
};

void kw_wire_reader_close(kw_wire_reader *r) {
    if (!r) return;
    kw_wire_decoder *d = r->dec;
    kw_wire_allocator a = d->alloc;
    kw_wire_decoder_destroy(d);
    a.free_fn(a.user, r);
}

/* Feeds the rest of the blob up to the next event; NEED_MORE at the end of the blob means it was truncated. */
static int kw__reader_step(kw_wire_reader *r) {
    size_t used = 0;
    const uint8_t *rest = r->blob ? r->blob + r->pos : NULL; /* an empty blob may have no address */
    const int ev = kw_wire_decoder_feed(r->dec, rest, r->size - r->pos, &used);
    r->pos += used;
    if (ev == KW_WIRE_EVENT_NEED_MORE) return kw_wire_decoder_finish(r->dec);
    return ev;
}

int kw_wire_reader_open(const void *blob, size_t size, const kw_wire_decoder_options *opt, kw_wire_reader **out,
                        const kw_wire_header **hdr) {
    KW_RETURN_IF(!out || (!blob && size), KW_E_INVALID_ARG, "null argument");
    *out = NULL;
    kw_wire_decoder *d;
    KW_FORWARD(kw_wire_decoder_create(opt, &d));
    kw_wire_reader *r = d->alloc.realloc_fn(d->alloc.user, NULL, sizeof *r);
    if (!r) {
        kw_wire_decoder_destroy(d);
        KW_FAIL(KW_E_NOMEM, "reader allocation failed");
    }
    memset(r, 0, sizeof *r);
    r->dec = d;
    r->blob = blob;
    r->size = size;
    const int ev = kw__reader_step(r);
    if (ev < 0) {
        kw_wire_reader_close(r);
        return ev;
    }
    if (hdr) *hdr = &d->hdr;
    *out = r;
    return 0;
}

int kw_wire_reader_next(kw_wire_reader *r, const kw_wire_section **sec) {
    KW_RETURN_IF(!r || !sec, KW_E_INVALID_ARG, "null argument");
    *sec = NULL;
    if (r->done) return 0;
    const int ev = kw__reader_step(r);
    if (ev < 0) return ev;
    if (ev == KW_WIRE_EVENT_SECTION) {
        *sec = &r->dec->sec;
        return 1;
    }
    /* END: nothing may follow the trailer */
    if (r->pos < r->size) {
        size_t used;
        return kw_wire_decoder_feed(r->dec, r->blob + r->pos, r->size - r->pos, &used);
    }
    r->done = 1;
    return 0;
}

const kw_wire_breakdown *kw_wire_reader_breakdown(const kw_wire_reader *r) {
    return &r->dec->bd;
}

// ---------------------------------------------------------------------------------------------------------------
// Section contents

int kw_wire_section_positions(const kw_wire_section *sec, uint32_t *out, size_t cap) {
    KW_RETURN_IF(!sec || !out, KW_E_INVALID_ARG, "null argument");
    KW_RETURN_IF(cap < sec->n_tokens, KW_E_BUFFER_TOO_SMALL, "%u positions, room for %zu", sec->n_tokens, cap);
    return kw__wire_index_decode(sec->index_encoding, sec->index_data, sec->index_bytes, sec->n_tokens,
                                 sec->n_positions, out);
}

/* One passthrough row to f32 or bf16. */
static int kw__dec_passthrough_row(uint32_t codec, const uint8_t *src, uint32_t n, void *out, uint32_t out_dtype) {
    if (out_dtype == KW_WIRE_DTYPE_F32) return kw_wire_passthrough_row(codec, src, n, (float *)out);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (codec == KW_WIRE_CODEC_BF16) {
        /* bf16 to bf16: a copy, after checking that every value is finite */
        uint16_t bad = 0;
        for (uint32_t i = 0; i < n; ++i) {
            uint16_t h;
            memcpy(&h, src + 2 * (size_t)i, 2);
            bad |= (uint16_t)((h & 0x7f80u) == 0x7f80u);
        }
        memcpy(out, src, (size_t)n * 2);
        return bad ? KW_E_WIRE_VALUE : 0;
    }
#endif
    float tmp[256];
    int rc = 0;
    for (uint32_t i = 0; i < n; i += 256) {
        const uint32_t m = n - i < 256 ? n - i : 256;
        const int r = kw_wire_passthrough_row(codec, src + 2 * (size_t)i, m, tmp);
        rc = r ? r : rc;
        for (uint32_t k = 0; k < m; ++k)
            ((uint16_t *)out)[i + k] = kw_f32_to_bf16(tmp[k]);
    }
    return rc;
}

/* The general path by blocks of rows that share their scales (every granularity but layer, as the encoder's
 * kw__enc_tensor_blocks): the block's scales and zero points are loaded once into per-unit arrays, unit d >> shift.
 * The same values as kw__dec_tensor_general. */
static int kw__dec_tensor_blocks(const kw__wire_kernels *k, const kw_wire_section *sec, const kw_wire_group_view *gv,
                                 const kw_wire_tensor_view *tv, const kw_wire_tensor_out *out) {
    const uint32_t H = sec->n_kv_heads, D = sec->head_dim, tg = gv->n_tokens, codec = tv->spec.codec;
    const uint32_t bits = kw_wire_codec_bits(codec), sdt = kw_wire_spec_scale(&tv->spec), gran = tv->spec.granularity;
    const int asym = kw_wire_spec_asym(&tv->spec);
    const size_t es = out->dtype == KW_WIRE_DTYPE_F32 ? 4 : 2, ss = kw_wire_scale_size(sdt);
    const size_t row_bytes = (size_t)D * bits / 8;
    const uint32_t block_rows = gran == KW_WIRE_GRAN_CHANNEL ? 1u << tv->spec.group_log2
                                : gran == KW_WIRE_GRAN_HEAD  ? tg
                                                             : 1u;
    const uint32_t shift = gran == KW_WIRE_GRAN_GROUP ? tv->spec.group_log2 : gran == KW_WIRE_GRAN_CHANNEL ? 0u : 31u;
    const uint32_t units = gran == KW_WIRE_GRAN_GROUP     ? D >> tv->spec.group_log2
                           : gran == KW_WIRE_GRAN_CHANNEL ? D
                                                          : 1u;
    float sv[KW_WIRE_MAX_HEAD_DIM], zv[KW_WIRE_MAX_HEAD_DIM], y[KW_WIRE_MAX_HEAD_DIM];
    int ok = 1;
    for (uint32_t h = 0; h < H; ++h)
        for (uint32_t b0 = 0; b0 < tg; b0 += block_rows) {
            const uint32_t b1 = tg - b0 < block_rows ? tg : b0 + block_rows;
            const uint64_t base = kw_wire_scale_index(gran, tv->spec.group_log2, tg, D, h, b0, 0);
            for (uint32_t u = 0; u < units; ++u) {
                sv[u] = kw_wire_scale_load(sdt, tv->scales + (base + u) * ss);
                zv[u] = asym ? kw_wire_scale_load(sdt, tv->zeros + (base + u) * ss) : 0.0f;
            }
            for (uint32_t t = b0; t < b1; ++t) {
                const uint8_t *codes = tv->codes + ((size_t)h * tg + t) * row_bytes;
                uint8_t *o = (uint8_t *)out->data +
                             ((size_t)(gv->first_token + t) * out->token_stride + (size_t)h * out->head_stride) * es;
                if (asym) { /* the row kernel: fl32(fl32(q * s) + z) per element, stored as f32 or bf16 */
                    k->dequantize_affine(codes, bits, D, sv, zv, shift, o, out->dtype);
                    continue;
                }
                for (uint32_t d = 0; d < D; ++d)
                    y[d] = kw_wire_code_value(codec, kw_wire_unpack_code(codec, codes, d), &ok) * sv[d >> shift];
                if (out->dtype == KW_WIRE_DTYPE_F32)
                    memcpy(o, y, (size_t)D * 4);
                else
                    for (uint32_t d = 0; d < D; ++d)
                        ((uint16_t *)o)[d] = kw_f32_to_bf16(y[d]);
            }
        }
    KW_RETURN_IF(!ok, KW_E_WIRE_VALUE, "section %u (layer %u): reserved %s code in the payload", sec->ordinal,
                 sec->layer, kw_wire_codec_name(codec));
    return 0;
}

/* The general (scalar) path of the v1.1 features (kw__wire_general_path): every value with its own scale (and zero
 * point), FORMAT.md §5.8, §5.9: the layer granularity only (kw__dec_tensor_blocks takes the others), not vectorized. */
static int kw__dec_tensor_general(const kw_wire_section *sec, const kw_wire_group_view *gv,
                                  const kw_wire_tensor_view *tv, const kw_wire_tensor_out *out) {
    const uint32_t H = sec->n_kv_heads, D = sec->head_dim, tg = gv->n_tokens, codec = tv->spec.codec;
    const uint32_t bits = kw_wire_codec_bits(codec), sdt = kw_wire_spec_scale(&tv->spec);
    const int asym = kw_wire_spec_asym(&tv->spec);
    const size_t es = out->dtype == KW_WIRE_DTYPE_F32 ? 4 : 2, ss = kw_wire_scale_size(sdt);
    const size_t row_bytes = (size_t)D * bits / 8;
    int ok = 1;
    for (uint32_t h = 0; h < H; ++h)
        for (uint32_t t = 0; t < tg; ++t) {
            const uint8_t *codes = tv->codes + ((size_t)h * tg + t) * row_bytes;
            uint8_t *o = (uint8_t *)out->data +
                         ((size_t)(gv->first_token + t) * out->token_stride + (size_t)h * out->head_stride) * es;
            for (uint32_t d = 0; d < D; ++d) {
                const size_t u =
                    (size_t)kw_wire_scale_index(tv->spec.granularity, tv->spec.group_log2, tg, D, h, t, d) * ss;
                const float s = kw_wire_scale_load(sdt, tv->scales + u);
                float y;
                if (asym)
                    y = kw_wire_dequantize_asym(kw_wire_field_get(bits, codes, d), s,
                                                kw_wire_scale_load(sdt, tv->zeros + u));
                else
                    y = kw_wire_code_value(codec, kw_wire_unpack_code(codec, codes, d), &ok) * s;
                if (out->dtype == KW_WIRE_DTYPE_F32)
                    memcpy(o + 4 * (size_t)d, &y, 4);
                else
                    ((uint16_t *)o)[d] = kw_f32_to_bf16(y);
            }
        }
    KW_RETURN_IF(!ok, KW_E_WIRE_VALUE, "section %u (layer %u): reserved %s code in the payload", sec->ordinal,
                 sec->layer, kw_wire_codec_name(codec));
    return 0;
}

/* What decoding a row of one tensor of a group on the row kernels' path takes (kw__dec_row_setup), worked out once:
 * the kernels are called through pointers, so the compiler cannot keep values read through tv across the calls. */
typedef struct kw__dec_rows {
    const uint8_t *codes, *scales; /* borrowed from the section */
    uint32_t codec, gran, sdt, D, tg, G, per_row;
    size_t ss, row_bytes, chunk_bytes;
} kw__dec_rows;

static inline kw__dec_rows kw__dec_row_setup(const kw_wire_section *sec, const kw_wire_group_view *gv,
                                             const kw_wire_tensor_view *tv) {
    kw__dec_rows r = {.codes = tv->codes,
                      .scales = tv->scales,
                      .codec = tv->spec.codec,
                      .gran = tv->spec.granularity,
                      .sdt = tv->spec.scale_dtype,
                      .D = sec->head_dim,
                      .tg = gv->n_tokens};
    r.G = r.gran == KW_WIRE_GRAN_GROUP ? 1u << tv->spec.group_log2 : r.D;
    r.per_row = r.D / r.G;
    r.ss = kw_wire_scale_size(r.sdt);
    r.row_bytes = (size_t)r.D * kw_wire_codec_bits(r.codec) / 8;
    r.chunk_bytes = (size_t)r.G * kw_wire_codec_bits(r.codec) / 8;
    return r;
}

/* Row (head h, token t of the group) of a tensor on the row kernels' path (not kw__wire_general_path) into o, in
 * out_dtype: 1 if it holds a reserved code, else 0. */
static inline int kw__dec_row(const kw__wire_kernels *k, const kw__dec_rows *rw, uint32_t h, uint32_t t, uint8_t *o,
                              uint32_t out_dtype) {
    const uint32_t D = rw->D, codec = rw->codec, gran = rw->gran, sdt = rw->sdt, G = rw->G, per_row = rw->per_row;
    const size_t es = out_dtype == KW_WIRE_DTYPE_F32 ? 4 : 2, ss = rw->ss, chunk_bytes = rw->chunk_bytes;
    const size_t r = (size_t)h * rw->tg + t;
    const uint8_t *codes = rw->codes + r * rw->row_bytes, *scales = rw->scales;
    if (gran == KW_WIRE_GRAN_NONE) return kw__dec_passthrough_row(codec, codes, D, o, out_dtype) < 0;
    if (gran == KW_WIRE_GRAN_GROUP && (codec == KW_WIRE_CODEC_INT8 || codec == KW_WIRE_CODEC_INT4)) {
        /* the row's scales, then one call for its groups (int8 and int4 have groups kernels of their own on AVX2 and
         * AVX-512; the other codecs measured faster group by group below) */
        float sv[KW_WIRE_MAX_HEAD_DIM / 4];
        for (uint32_t c = 0; c < per_row; ++c)
            sv[c] = kw_wire_scale_load(sdt, scales + (r * per_row + c) * ss);
        return k->dequantize_groups(codec, codes, D, G, sv, o, out_dtype) < 0;
    }
    int bad = 0;
    for (uint32_t c = 0; c < per_row; ++c) {
        size_t si;
        switch (gran) {
        case KW_WIRE_GRAN_LAYER:
            si = 0;
            break;
        case KW_WIRE_GRAN_HEAD:
            si = h;
            break;
        case KW_WIRE_GRAN_TOKEN:
            si = r;
            break;
        default:
            si = r * per_row + c;
            break;
        }
        const float s = kw_wire_scale_load(sdt, scales + si * ss);
        bad |= k->dequantize(codec, codes + c * chunk_bytes, G, s, o + (size_t)c * G * es, out_dtype) < 0;
    }
    return bad;
}

static int kw__dec_tensor(const kw__wire_kernels *k, const kw_wire_section *sec, const kw_wire_group_view *gv,
                          const kw_wire_tensor_view *tv, const kw_wire_tensor_out *out) {
    if (kw__wire_general_path(&tv->spec))
        return tv->spec.granularity == KW_WIRE_GRAN_LAYER ? kw__dec_tensor_general(sec, gv, tv, out)
                                                          : kw__dec_tensor_blocks(k, sec, gv, tv, out);
    const uint32_t H = sec->n_kv_heads, tg = gv->n_tokens;
    const size_t es = out->dtype == KW_WIRE_DTYPE_F32 ? 4 : 2;
    const kw__dec_rows rw = kw__dec_row_setup(sec, gv, tv);
    int bad = 0;
    if (rw.gran == KW_WIRE_GRAN_TOKEN) { /* blocks of rows in one kernel call each: the rows' scales, then the codes */
        enum { B = 64 };
        float sv[B];
        void *op[B];
        for (uint32_t h = 0; h < H; ++h)
            for (uint32_t tb = 0; tb < tg; tb += B) {
                const uint32_t nb = tg - tb < B ? tg - tb : B;
                const size_t r0 = (size_t)h * tg + tb;
                for (uint32_t i = 0; i < nb; ++i) {
                    sv[i] = kw_wire_scale_load(rw.sdt, rw.scales + (r0 + i) * rw.ss);
                    op[i] =
                        (uint8_t *)out->data +
                        ((size_t)(gv->first_token + tb + i) * out->token_stride + (size_t)h * out->head_stride) * es;
                }
                bad |= k->dequantize_rows(rw.codec, rw.codes + r0 * rw.row_bytes, nb, rw.D, sv, op, out->dtype) < 0;
            }
    } else {
        for (uint32_t h = 0; h < H; ++h)
            for (uint32_t t = 0; t < tg; ++t)
                bad |= kw__dec_row(
                    k, &rw, h, t,
                    (uint8_t *)out->data +
                        ((size_t)(gv->first_token + t) * out->token_stride + (size_t)h * out->head_stride) * es,
                    out->dtype);
    }
    KW_RETURN_IF(bad, KW_E_WIRE_VALUE, "section %u (layer %u): reserved %s code in the payload", sec->ordinal,
                 sec->layer, kw_wire_codec_name(tv->spec.codec));
    return 0;
}

/* 1 if the D values of a row rotated back are finite and within the largest bf16, as every decoded value must be:
 * the inverse rotation adds up to D values, so a payload of valid codes and scales can still decode past it. */
static int kw__dec_rotated_in_range(const float *x, uint32_t D) {
    int ok = 1;
    for (uint32_t d = 0; d < D; ++d)
        ok &= fabsf(x[d]) <= KW_WIRE_BF16_MAX; /* false for NaN */
    return ok;
}

/* Writes the D f32 values of x to a row of out (f32 or bf16, RNE). */
static void kw__dec_store_row(const float *x, uint32_t D, const kw_wire_tensor_out *out, void *dst) {
    if (out->dtype == KW_WIRE_DTYPE_F32) {
        memcpy(dst, x, (size_t)D * sizeof *x);
        return;
    }
    uint16_t *o = dst;
    for (uint32_t d = 0; d < D; ++d)
        o[d] = kw_f32_to_bf16(x[d]);
}

/* A rotated tensor without outliers on the row kernels' path (kw__dec_row for every group), a row at a time: the row
 * dequantized to f32 in a stack buffer, then rotated back into the output (f32 or bf16), the same values as
 * dequantizing the whole tensor to f32 and rotating it back. Returns 1 if it took the tensor (*rc its status), else
 * 0 and the caller takes the general route. sx: the inverse factors. */
static int kw__dec_rotated_rows(const kw__wire_kernels *k, const kw_wire_section *sec, int kv,
                                const kw_wire_tensor_out *out, const float *sx, int *rc) {
    if (sec->outlier_table) return 0;
    for (uint32_t g = 0; g < sec->n_groups; ++g)
        if (kw__wire_general_path(kv ? &sec->groups[g].v.spec : &sec->groups[g].k.spec)) return 0;
    const uint32_t H = sec->n_kv_heads, D = sec->head_dim;
    const size_t es = out->dtype == KW_WIRE_DTYPE_F32 ? 4 : 2;
    _Alignas(64) float y[KW_WIRE_MAX_HEAD_DIM];
    *rc = 0;
    for (uint32_t g = 0; g < sec->n_groups; ++g) {
        const kw_wire_group_view *gv = &sec->groups[g];
        const kw_wire_tensor_view *tv = kv ? &gv->v : &gv->k;
        const kw__dec_rows rw = kw__dec_row_setup(sec, gv, tv);
        int bad = 0, in_range = 1;
        for (uint32_t h = 0; h < H; ++h)
            for (uint32_t t = 0; t < gv->n_tokens; ++t) {
                bad |= kw__dec_row(k, &rw, h, t, (uint8_t *)y, KW_WIRE_DTYPE_F32);
                k->rotate(y, KW_WIRE_DTYPE_F32, y, KW_WIRE_DTYPE_F32, D, sx, 1);
                in_range &= kw__dec_rotated_in_range(y, D);
                kw__dec_store_row(
                    y, D, out,
                    (uint8_t *)out->data +
                        ((size_t)(gv->first_token + t) * out->token_stride + (size_t)h * out->head_stride) * es);
            }
        if (bad && *rc == 0)
            *rc = kw_error_set(KW_E_WIRE_VALUE, "section %u (layer %u): reserved %s code in the payload", sec->ordinal,
                               sec->layer, kw_wire_codec_name(tv->spec.codec));
        if (!in_range && *rc == 0)
            *rc = kw_error_set(KW_E_WIRE_VALUE, "section %u (layer %u): %c rotated back decodes past the largest bf16",
                               sec->ordinal, sec->layer, kv ? 'V' : 'K');
    }
    return 1;
}

int kw_wire_section_dequantize(const kw_wire_section *sec, const kw_wire_tensor_out *k, const kw_wire_tensor_out *v) {
    KW_RETURN_IF(!sec, KW_E_INVALID_ARG, "null section");
    const kw_wire_tensor_out *outs[2] = {k, v};
    for (int kv = 0; kv < 2; ++kv)
        if (outs[kv])
            KW_RETURN_IF(!outs[kv]->data ||
                             (outs[kv]->dtype != KW_WIRE_DTYPE_F32 && outs[kv]->dtype != KW_WIRE_DTYPE_BF16),
                         KW_E_INVALID_ARG, "output %c needs data and dtype f32 or bf16", kv ? 'V' : 'K');
    const kw__wire_kernels *kern = kw__wire_kernels_get((enum kw_wire_isa)sec->isa);
    int rc = 0;
    /* a rotated tensor (FORMAT.md §5.12) decodes to f32, gets its outliers, then rotates back in f32; a bf16 output
     * is rounded from that. Without outliers on the row kernels' path that is a row at a time (kw__dec_rotated_rows),
     * else the whole tensor goes through the output itself (f32) or a scratch copy (bf16) */
    const uint32_t H = sec->n_kv_heads, T = sec->n_tokens, D = sec->head_dim;
    const size_t per = (size_t)T * H * D;
    float *scratch[2] = {NULL, NULL};
    kw_wire_tensor_out f32_out[2];
    const kw_wire_tensor_out *use[2] = {k, v};
    float sx[KW_WIRE_MAX_HEAD_DIM];
    if (sec->rotated) kw__wire_rotate_factors(D, 1, sx);
    for (int kv = 0; kv < 2; ++kv) { /* first the rotated tensors that can go a row at a time: no scratch */
        if (!outs[kv] || !(sec->rotated & (1u << kv))) continue;
        int r = 0;
        if (kw__dec_rotated_rows(kern, sec, kv, outs[kv], sx, &r)) {
            use[kv] = NULL; /* done */
            rc = rc ? rc : r;
        }
    }
    for (int kv = 0; kv < 2; ++kv) {
        if (!use[kv] || !(sec->rotated & (1u << kv)) || outs[kv]->dtype == KW_WIRE_DTYPE_F32) continue;
        scratch[kv] = malloc(per * sizeof(float));
        KW_CHECK_IF(!scratch[kv], KW_E_NOMEM, "%zu values to rotate back", per);
        f32_out[kv] = (kw_wire_tensor_out){
            .data = scratch[kv], .dtype = KW_WIRE_DTYPE_F32, .head_stride = D, .token_stride = (size_t)H * D};
        use[kv] = &f32_out[kv];
    }
    for (uint32_t g = 0; g < sec->n_groups; ++g) {
        const kw_wire_group_view *gv = &sec->groups[g];
        const kw_wire_tensor_view *tv[2] = {&gv->k, &gv->v};
        for (int kv = 0; kv < 2; ++kv) {
            if (!use[kv]) continue;
            const int r = kw__dec_tensor(kern, sec, gv, tv[kv], use[kv]);
            rc = rc ? rc : r;
        }
    }
    KW_CHECK(rc);
    KW_CHECK(kw__wire_outlier_table_apply(sec, use[0], use[1]));
    for (int kv = 0; kv < 2; ++kv) {
        if (!use[kv] || !(sec->rotated & (1u << kv))) continue;
        float *base = use[kv]->data;
        int in_range = 1;
        for (uint32_t t = 0; t < T; ++t)
            for (uint32_t h = 0; h < H; ++h) {
                float *row = base + (size_t)t * use[kv]->token_stride + (size_t)h * use[kv]->head_stride;
                kern->rotate(row, KW_WIRE_DTYPE_F32, row, KW_WIRE_DTYPE_F32, D, sx, 1);
                in_range &= kw__dec_rotated_in_range(row, D);
                if (scratch[kv])
                    kw__dec_store_row(row, D, outs[kv],
                                      (uint16_t *)outs[kv]->data + (size_t)t * outs[kv]->token_stride +
                                          (size_t)h * outs[kv]->head_stride);
            }
        KW_CHECK_IF(!in_range, KW_E_WIRE_VALUE, "section %u (layer %u): %c rotated back decodes past the largest bf16",
                    sec->ordinal, sec->layer, kv ? 'V' : 'K');
    }
out:
    free(scratch[0]);
    free(scratch[1]);
    return rc;
}

int kw_wire_tensor_code_entropy(const kw_wire_tensor_view *t, double *bits, uint64_t *n_codes) {
    KW_RETURN_IF(!t || !bits || !n_codes, KW_E_INVALID_ARG, "null argument");
    *bits = 0.0;
    *n_codes = 0;
    if (kw_wire_codec_is_passthrough(t->spec.codec)) return 0;
    const uint32_t b = kw_wire_codec_bits(t->spec.codec);
    KW_RETURN_IF(b == 0 || b > 8, KW_E_INVALID_ARG, "codec %u has no packed codes", t->spec.codec);
    uint64_t count[256] = {0};
    const uint64_t chunks = t->code_bytes / b; /* 8 codes of b bits fill b bytes: every row is whole chunks */
    for (uint64_t c = 0; c < chunks; ++c)
        for (uint32_t j = 0; j < 8; ++j)
            ++count[kw_wire_field_get(b, t->codes + c * b, j)];
    const uint64_t n = chunks * 8;
    double h = 0.0;
    for (uint32_t v = 0; v < 256; ++v)
        if (count[v]) h -= (double)count[v] * log2((double)count[v] / (double)n);
    *bits = h;
    *n_codes = n;
    return 0;
}
