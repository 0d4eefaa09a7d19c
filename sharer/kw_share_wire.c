/* kw_share_wire.c: KVWire encoding of the sharer's layers (see kw_share_wire.h). */
#include "sharer/kw_share_wire.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_status.h"
#include "common/kw_time.h"

struct kw_share_wire {
    kw_share_wire_options opt;
    kw_wire_encoder *enc; /* the current blob's, NULL between blobs */
    kw_wire_header hdr;
    int32_t blob; /* the current blob's ordinal */
    unsigned char *buf;
    size_t cap;
    uint32_t *positions;
    size_t positions_cap;
    kw_share_wire_stats stats;
    uint16_t version; /* the blobs' KVWire version: v1.1 when a codec or option needs it */
    float *unroped;   /* pre-RoPE keys: the current layer's K rotated back */
    size_t unroped_cap;
    /* with a byte cap */
    kw_wire_alloc *alloc;
    float *weights;              /* positions_cap entries */
    kw_wire_token_group *groups; /* positions_cap entries: the token schedule's groups of the current layer */
    uint64_t min_section;        /* the smallest section of any layer */
    int64_t lengths_left;        /* sum of the section lengths of the layers not yet encoded */
    int32_t layers_left;         /* layers not yet encoded, over every blob */
    /* kv_direct (budget.same_positions): the current blob's kept rows, fixed by its first layer */
    uint64_t kept_floor;           /* their section at the cheapest codec: the reservation of each later layer */
    uint32_t n_kept, n_candidates; /* kept rows; candidate rows of every layer of the blob */
    uint32_t *kept_rows;           /* n_kept candidate indices, ascending */
    uint32_t *kept_positions;      /* their positions */
    float *kept_k, *kept_v;        /* (n_kept, H, D): the current layer's kept rows */
    float *kept_weights;           /* n_kept */
    /* the device encode: buf comes from kw_backend_host_alloc of pinned_be (pinned) once a layer is on a device */
    kw_backend *pinned_be;
};

void kw_share_wire_policy_for(const kw_share_wire_options *opt, uint32_t layer, kw_wire_policy *out) {
    *out = opt->policy;
    for (int32_t i = 0; i < opt->n_overrides; ++i)
        if (opt->overrides[i].layer == layer) {
            out->k = opt->overrides[i].k;
            out->v = opt->overrides[i].v;
            if (opt->overrides[i].own_options) {
                out->rotate = opt->overrides[i].rotate, out->clip = opt->overrides[i].clip;
                out->code_limit_k = opt->overrides[i].code_limit_k, out->code_limit_v = opt->overrides[i].code_limit_v;
            }
        }
}

/* ------------------------------------------------------------------------------------------------------------
 * The byte cap (kw_share_budget in the header): reservation and per-layer shares
 */

static void kw_share_wire_alloc_options(const kw_share_wire *w, kw_wire_alloc_options *out) {
    *out = (kw_wire_alloc_options){.codecs = w->opt.budget.codecs,
                                   .n_codecs = w->opt.budget.n_codecs,
                                   .index_encoding = w->opt.policy.index_encoding};
}

/* The header every blob of the request gets (positions, heads and layers as kw_share_wire_layer writes them). */
static int kw_share_wire_budget_header(const kw_share_budget *b, kw_wire_header *out) {
    KW_RETURN_IF(b->n_blobs < 1 || b->n_layers < 1 || b->blob_lengths == NULL || b->n_positions < 1 ||
                     b->n_positions > KW_WIRE_MAX_POSITIONS || b->n_heads < 1 || b->n_heads > UINT16_MAX ||
                     b->head_dim < 1 || b->head_dim > UINT16_MAX || b->n_layers > UINT16_MAX,
                 KW_E_INVALID_ARG, "budget: the request's shape is missing or out of range");
    *out = (kw_wire_header){.n_layers = (uint16_t)b->n_layers,
                            .n_sections = (uint16_t)b->n_layers,
                            .n_kv_heads = (uint16_t)b->n_heads,
                            .head_dim = (uint16_t)b->head_dim,
                            .n_positions = (uint32_t)b->n_positions,
                            .src_dtype = KW_WIRE_DTYPE_F32};
    return 0;
}

static int kw_share_wire_budget_init(kw_share_wire *w) {
    const kw_share_budget *b = &w->opt.budget;
    if (b->mode != KW_WIRE_BUDGET_TOKENS) { /* planned by the caller */
        KW_RETURN_IF(b->blob_rows == NULL || b->n_codecs < 1, KW_E_INVALID_ARG, "budget: no layer plan");
        w->stats.budget_bytes = b->bytes;
        w->stats.budget_min_bytes = b->plan_min_bytes;
        return 0;
    }
    KW_RETURN_IF(w->opt.n_overrides > 0, KW_E_INVALID_ARG,
                 "budget: per-layer codec overrides and a byte cap do not go together (the allocator chooses)");
    w->stats.budget_bytes = b->bytes;
    if (b->n_blobs == 0) return 0; /* nothing is sent */
    kw_wire_header hdr;
    KW_FORWARD(kw_share_wire_budget_header(b, &hdr));
    kw_wire_alloc_options ao;
    kw_share_wire_alloc_options(w, &ao);
    KW_FORWARD(kw_wire_alloc_min_bytes(&hdr, &ao, &w->min_section));
    KW_FORWARD(kw_wire_alloc_min_blob_bytes(&hdr, &ao, (uint32_t)b->n_blobs, &w->stats.budget_min_bytes));
    KW_FORWARD(kw_wire_alloc_check_cap(&hdr, &ao, (uint32_t)b->n_blobs, b->bytes));
    w->layers_left = b->n_blobs * b->n_layers;
    for (int32_t i = 0; i < b->n_blobs; ++i)
        w->lengths_left += b->blob_lengths[i] * b->n_layers;
    KW_FORWARD(kw_wire_alloc_create(&w->alloc));
    return 0;
}

/* The smallest section each layer of the current blob still to come needs: one token, or (kv_direct) the kept
 * set at the cheapest codec. */
static uint64_t kw_share_wire_budget_floor(const kw_share_wire *w) {
    return w->opt.budget.same_positions ? w->kept_floor : w->min_section;
}

/* What the cap leaves for the `layers` layers from the current one on (the rest of the layers reserved at their
 * floors, the current blob's trailer and the later blobs' headers and trailers), their floors included. */
static int kw_share_wire_budget_left(const kw_share_wire *w, const kw_share_layer *l, int32_t layers, uint64_t floor,
                                     uint64_t *out) {
    const kw_share_budget *b = &w->opt.budget;
    const uint64_t spent = w->stats.blob_bytes;
    const int32_t blobs_after = b->n_blobs - 1 - l->blob, blob_after = l->n_layers_sent - l->layer_index - layers;
    const int32_t later = w->layers_left - layers - (blob_after > 0 ? blob_after : 0);
    const uint64_t reserve = (uint64_t)later * w->min_section + (uint64_t)(blob_after > 0 ? blob_after : 0) * floor +
                             KW_WIRE_TRAILER_BYTES +
                             (uint64_t)blobs_after * (KW_WIRE_HEADER_BYTES + KW_WIRE_TRAILER_BYTES);
    /* the reservation made at creation holds at every layer, since each layer spends at most its share */
    KW_RETURN_IF(spent + reserve + (uint64_t)layers * floor > b->bytes, KW_E_INTERNAL,
                 "budget: %llu bytes spent and %llu reserved leave no section within the cap of %llu",
                 (unsigned long long)spent, (unsigned long long)reserve, (unsigned long long)b->bytes);
    *out = b->bytes - spent - reserve;
    return 0;
}

/* The floor of `layers` layers of length each plus their length-weighted part of what lies beyond the floors
 * (left, with lengths_left over every layer to come); the last layers get all of it. */
static uint64_t kw_share_wire_budget_part(const kw_share_wire *w, uint64_t left, uint64_t floors, int64_t length) {
    if (w->lengths_left <= length) return left;
    const unsigned __int128 part = (unsigned __int128)(left - floors) * (uint64_t)length / (uint64_t)w->lengths_left;
    return floors + (uint64_t)part;
}

/* The bytes the layer about to be encoded may take (its blob's header is already written). */
static int kw_share_wire_budget_share(const kw_share_wire *w, const kw_share_layer *l, uint64_t *out) {
    const uint64_t floor = kw_share_wire_budget_floor(w);
    uint64_t left = 0;
    KW_FORWARD(kw_share_wire_budget_left(w, l, 1, floor, &left));
    *out = w->layers_left <= 1 ? left : kw_share_wire_budget_part(w, left, floor, l->length);
    return 0;
}

/* kv_direct, at a blob's first layer: the rows every layer of the blob keeps, chosen by the allocator with the
 * cheapest codec alone within the blob's share divided by its layer count. */
static int kw_share_wire_budget_positions(kw_share_wire *w, const kw_share_layer *l) {
    const int32_t n_layers = l->n_layers_sent;
    uint64_t left = 0;
    KW_FORWARD(kw_share_wire_budget_left(w, l, n_layers, w->min_section, &left));
    const uint64_t blob_share =
        kw_share_wire_budget_part(w, left, (uint64_t)n_layers * w->min_section, l->length * (int64_t)n_layers);
    kw_wire_alloc_options ao;
    kw_share_wire_alloc_options(w, &ao);
    uint32_t cheapest = 0;
    KW_FORWARD(kw_wire_alloc_cheapest(&w->hdr, &ao, &cheapest));
    ao.codecs = &w->opt.budget.codecs[cheapest];
    ao.n_codecs = 1;
    const kw_wire_alloc_input in = {.hdr = &w->hdr,
                                    .n_tokens = (uint32_t)l->n_rows,
                                    .positions = w->positions,
                                    .k = l->k,
                                    .v = l->v,
                                    .weight = w->weights,
                                    .budget = blob_share / (uint64_t)n_layers};
    const kw_wire_alloc_result *res = NULL;
    KW_FORWARD(kw_wire_alloc_run(w->alloc, &ao, &in, &res));
    w->n_candidates = (uint32_t)l->n_rows;
    w->n_kept = res->n_kept;
    w->kept_floor = res->bytes;
    memcpy(w->kept_rows, res->rows, res->n_kept * sizeof *w->kept_rows);
    memcpy(w->kept_positions, res->positions, res->n_kept * sizeof *w->kept_positions);
    return 0;
}

/* kv_direct: the allocator's input for this layer, the blob's kept rows gathered (the same positions as at its
 * first layer, or KW_E_STATE). */
static int kw_share_wire_budget_gather(kw_share_wire *w, const kw_share_layer *l, uint64_t share,
                                       kw_wire_alloc_input *out) {
    KW_RETURN_IF((uint32_t)l->n_rows != w->n_candidates, KW_E_STATE,
                 "budget: kv_direct layer %d has %lld rows, the blob's first layer had %u", (int)l->layer,
                 (long long)l->n_rows, w->n_candidates);
    const size_t row = (size_t)l->n_heads * (size_t)l->head_dim;
    for (uint32_t i = 0; i < w->n_kept; ++i) {
        const uint32_t r = w->kept_rows[i];
        KW_RETURN_IF(w->positions[r] != w->kept_positions[i], KW_E_STATE,
                     "budget: kv_direct layer %d's row %u is position %u, not %u as in the blob's first layer",
                     (int)l->layer, r, w->positions[r], w->kept_positions[i]);
        memcpy(w->kept_k + i * row, l->k + r * row, row * sizeof *l->k);
        memcpy(w->kept_v + i * row, l->v + r * row, row * sizeof *l->v);
        w->kept_weights[i] = w->weights[r];
    }
    *out = (kw_wire_alloc_input){.hdr = &w->hdr,
                                 .n_tokens = w->n_kept,
                                 .positions = w->kept_positions,
                                 .k = w->kept_k,
                                 .v = w->kept_v,
                                 .weight = w->kept_weights,
                                 .budget = share,
                                 .keep_all = 1};
    return 0;
}

/* Runs the allocator on the layer's rows: *res holds the kept rows (indices into *k and *v, the rows the section
 * encodes from) and their token groups. */
static int kw_share_wire_budget_layer(kw_share_wire *w, const kw_share_layer *l, const kw_wire_alloc_result **res,
                                      const float **k, const float **v) {
    const kw_share_budget *b = &w->opt.budget;
    KW_RETURN_IF(l->n_heads != b->n_heads || l->head_dim != b->head_dim || l->n_positions != b->n_positions ||
                     l->n_layers_sent != b->n_layers || l->blob >= b->n_blobs || l->length != b->blob_lengths[l->blob],
                 KW_E_STATE, "budget: layer %d of blob %d does not match the request's shape", (int)l->layer,
                 (int)l->blob);
    kw_select_scores(b->weight, l->n_rows, l->n_heads, l->head_dim, l->k, l->v, w->weights);
    kw_wire_alloc_options ao;
    kw_share_wire_alloc_options(w, &ao);
    kw_wire_alloc_input in = {.hdr = &w->hdr,
                              .n_tokens = (uint32_t)l->n_rows,
                              .positions = w->positions,
                              .k = l->k,
                              .v = l->v,
                              .weight = w->weights};
    double dropped_weight = 0.0; /* kv_direct: the distortion of the rows the blob's first layer left out */
    if (b->same_positions) {
        if (l->layer_index == 0) KW_FORWARD(kw_share_wire_budget_positions(w, l));
        uint64_t share = 0;
        KW_FORWARD(kw_share_wire_budget_share(w, l, &share));
        KW_FORWARD(kw_share_wire_budget_gather(w, l, share, &in));
        for (int64_t r = 0, i = 0; r < l->n_rows; ++r) {
            if (i < w->n_kept && w->kept_rows[i] == (uint32_t)r) {
                ++i;
                continue;
            }
            if (isfinite(w->weights[r]) && w->weights[r] >= 0.0f) dropped_weight += (double)w->weights[r];
        }
    } else {
        KW_FORWARD(kw_share_wire_budget_share(w, l, &in.budget));
    }
    KW_FORWARD(kw_wire_alloc_run(w->alloc, &ao, &in, res));
    *k = in.k;
    *v = in.v;
    w->stats.tokens_candidate += (uint64_t)l->n_rows;
    w->stats.tokens_dropped += (uint64_t)l->n_rows - (*res)->n_kept;
    for (uint32_t c = 0; c < ao.n_codecs; ++c)
        w->stats.tokens_per_codec[c] += (*res)->per_codec[c];
    w->stats.distortion += (*res)->distortion + dropped_weight;
    w->lengths_left -= l->length;
    w->layers_left -= 1;
    return 0;
}

/* A whole-layer baseline: the layer is within the plan (its rows, a planned codec); counts its rows. */
static int kw_share_wire_planned_layer(kw_share_wire *w, const kw_share_layer *l, const kw_wire_policy *pol) {
    const kw_share_budget *b = &w->opt.budget;
    KW_RETURN_IF(l->blob >= b->n_blobs || (uint64_t)l->n_rows > b->blob_rows[l->blob], KW_E_STATE,
                 "budget: layer %d of blob %d carries %lld rows, more than the plan's", (int)l->layer, (int)l->blob,
                 (long long)l->n_rows);
    uint32_t c = 0;
    while (c < b->n_codecs && memcmp(&b->codecs[c], &pol->k, sizeof pol->k) != 0)
        ++c;
    KW_RETURN_IF(c == b->n_codecs || memcmp(&pol->k, &pol->v, sizeof pol->k) != 0, KW_E_STATE,
                 "budget: layer %d's codec is not one of the plan's", (int)l->layer);
    w->stats.tokens_candidate += (uint64_t)l->n_rows;
    w->stats.tokens_per_codec[c] += (uint64_t)l->n_rows;
    return 0;
}

int kw_share_wire_create(const kw_share_wire_options *opt, kw_share_wire **out) {
    KW_RETURN_IF(opt == NULL || out == NULL || opt->write == NULL, KW_E_INVALID_ARG, "share wire: NULL argument");
    KW_RETURN_IF(opt->policy.n_groups != 0, KW_E_INVALID_ARG, "share wire: token groups are not a layer policy");
    KW_RETURN_IF(opt->n_overrides < 0 || (opt->n_overrides > 0 && opt->overrides == NULL), KW_E_INVALID_ARG,
                 "share wire: bad override list");
    for (int32_t i = 1; i < opt->n_overrides; ++i)
        KW_RETURN_IF(opt->overrides[i].layer <= opt->overrides[i - 1].layer, KW_E_INVALID_ARG,
                     "share wire: override layers must increase (entry %d)", (int)i);
    KW_RETURN_IF(!(opt->outlier_fraction >= 0.0 && opt->outlier_fraction <= 1.0), KW_E_INVALID_ARG,
                 "share wire: outlier fraction %g not in [0, 1]", opt->outlier_fraction);
    for (int32_t i = 0; i < opt->n_overrides; ++i)
        KW_RETURN_IF(opt->overrides[i].own_options && (opt->overrides[i].rotate > 3 || opt->overrides[i].clip > 3),
                     KW_E_INVALID_ARG, "share wire: override %d's rotation or clipping bits", (int)i);
    KW_RETURN_IF((opt->outlier_fraction > 0.0 || opt->pre_rope || opt->policy.rotate || opt->policy.clip ||
                  opt->policy.code_limit_k || opt->policy.code_limit_v) &&
                     opt->budget.bytes > 0,
                 KW_E_INVALID_ARG,
                 "share wire: outliers, pre-RoPE keys, rotation, clipping and code limits are not for a byte cap");
    KW_RETURN_IF(opt->n_token_rules > 0 && (opt->token_rules == NULL || opt->budget.bytes > 0), KW_E_INVALID_ARG,
                 "share wire: a token schedule is not for a byte cap (the allocator makes the groups)");
    for (uint32_t i = 0; i < opt->n_token_rules; ++i) {
        const kw_wire_token_rule *r = &opt->token_rules[i];
        KW_RETURN_IF(r->from_end ? r->first == 0 : r->first > r->last, KW_E_INVALID_ARG,
                     "share wire: token schedule entry %u covers no position", i);
        KW_RETURN_IF(((opt->policy.rotate & 1) && kw_wire_codec_is_passthrough(r->k.codec)) ||
                         ((opt->policy.rotate & 2) && kw_wire_codec_is_passthrough(r->v.codec)),
                     KW_E_INVALID_ARG,
                     "share wire: token schedule entry %u sends a rotated tensor with a passthrough codec (rotation "
                     "needs a quantizing codec)",
                     i);
    }
    *out = NULL;
    kw_share_wire *w = calloc(1, sizeof *w);
    KW_RETURN_IF(w == NULL, KW_E_NOMEM, "share wire: out of memory");
    w->opt = *opt;
    w->blob = -1;
    int v11 = kw_wire_policy_needs_v11(&opt->policy) || opt->outlier_fraction > 0.0 || opt->pre_rope != NULL;
    for (int32_t i = 0; i < opt->n_overrides; ++i)
        v11 |= kw_wire_spec_needs_v11(&opt->overrides[i].k) || kw_wire_spec_needs_v11(&opt->overrides[i].v) ||
               (opt->overrides[i].own_options && opt->overrides[i].rotate);
    for (uint32_t i = 0; opt->budget.bytes > 0 && i < opt->budget.n_codecs; ++i)
        v11 |= kw_wire_spec_needs_v11(&opt->budget.codecs[i]);
    for (uint32_t i = 0; i < opt->n_token_rules; ++i)
        v11 |= kw_wire_spec_needs_v11(&opt->token_rules[i].k) || kw_wire_spec_needs_v11(&opt->token_rules[i].v);
    w->version = v11 ? KW_WIRE_VERSION_1_1 : KW_WIRE_VERSION;
    if (opt->budget.bytes > 0) {
        const int rc = kw_share_wire_budget_init(w);
        if (rc < 0) {
            kw_share_wire_free(w);
            return rc;
        }
    }
    *out = w;
    return 0;
}

void kw_share_wire_free(kw_share_wire *w) {
    if (w == NULL) return;
    kw_wire_alloc_free(w->alloc);
    free(w->weights);
    free(w->groups);
    free(w->kept_rows);
    free(w->kept_positions);
    free(w->kept_k);
    free(w->kept_v);
    free(w->kept_weights);
    kw_wire_encoder_destroy(w->enc);
    if (w->pinned_be)
        kw_backend_host_free(w->pinned_be, w->buf);
    else
        free(w->buf);
    free(w->positions);
    free(w->unroped);
    free(w);
}

const kw_share_wire_stats *kw_share_wire_get_stats(const kw_share_wire *w) {
    return w ? &w->stats : NULL;
}

/* Room for n bytes in buf; what it held is not kept (every part is emitted before the next is written). */
static int kw_share_wire_reserve(kw_share_wire *w, size_t n) {
    if (n <= w->cap) return 0;
    if (w->pinned_be) {
        kw_backend_host_free(w->pinned_be, w->buf);
        w->buf = NULL;
        w->cap = 0;
        KW_FORWARD(kw_backend_host_alloc(w->pinned_be, n, (void **)&w->buf));
        w->cap = n;
        return 0;
    }
    unsigned char *b = realloc(w->buf, n);
    KW_RETURN_IF(b == NULL, KW_E_NOMEM, "share wire: cannot allocate %zu bytes", n);
    w->buf = b;
    w->cap = n;
    return 0;
}

/* kv_direct with a cap: room for the kept rows of a layer of l's shape. */
static int kw_share_wire_kept_reserve(kw_share_wire *w, const kw_share_layer *l) {
    const size_t n = (size_t)l->n_rows, row = (size_t)l->n_heads * (size_t)l->head_dim;
    uint32_t *rows = realloc(w->kept_rows, n * sizeof *rows);
    if (rows) w->kept_rows = rows;
    uint32_t *positions = realloc(w->kept_positions, n * sizeof *positions);
    if (positions) w->kept_positions = positions;
    float *k = realloc(w->kept_k, n * row * sizeof *k);
    if (k) w->kept_k = k;
    float *v = realloc(w->kept_v, n * row * sizeof *v);
    if (v) w->kept_v = v;
    float *weights = realloc(w->kept_weights, n * sizeof *weights);
    if (weights) w->kept_weights = weights;
    KW_RETURN_IF(!rows || !positions || !k || !v || !weights, KW_E_NOMEM, "share wire: out of memory");
    return 0;
}

/* Hands n encoded bytes to the callback and counts them. */
static int kw_share_wire_emit(kw_share_wire *w, size_t n) {
    const uint64_t t0 = kw_time_now_ns();
    const int rc = w->opt.write(w->opt.user, w->blob, w->buf, n);
    w->stats.write_ms += kw_time_ms(t0, kw_time_now_ns());
    if (rc < 0) {
        if (kw_error_detail()[0] == '\0') kw_error_set(rc, "share wire: the byte sink failed");
        return rc;
    }
    w->stats.blob_bytes += n;
    return 0;
}

static void kw_share_wire_add_breakdown(kw_wire_breakdown *sum, const kw_wire_breakdown *b) {
    sum->header += b->header;
    sum->indices += b->indices;
    sum->scales += b->scales;
    sum->payload += b->payload;
    sum->zero_points += b->zero_points;
    sum->outliers += b->outliers;
    sum->checksums += b->checksums;
    sum->compression_saved += b->compression_saved;
    sum->total += b->total;
    sum->sections += b->sections;
    sum->compressed_sections += b->compressed_sections;
}

/* From now on buf is pinned memory of be (the device encode downloads into it). */
static int kw_share_wire_pin(kw_share_wire *w, kw_backend *be) {
    if (w->pinned_be) {
        KW_RETURN_IF(w->pinned_be != be, KW_E_STATE, "share wire: layers on two backends in one encoder");
        return 0;
    }
    const size_t cap = w->cap > 0 ? w->cap : KW_WIRE_HEADER_BYTES;
    free(w->buf);
    w->buf = NULL;
    w->cap = 0;
    w->pinned_be = be;
    return kw_share_wire_reserve(w, cap);
}

/* 1 if the device encoder takes the section (no per-token byte cap, whose allocator reads the rows, and so no token
 * groups, which only it makes; a whole-layer plan's layers are plain policies; a rotation of a head_dim the device
 * rotates; codecs and outlier counts it encodes; clipped scales are searched and pre-RoPE keys rotated back there;
 * no code limit, FORMAT.md §5.14, which only the CPU encoder applies), with each tensor's bytes and scratch; 0 for
 * the CPU encoder. */
static int kw_share_wire_device_ok(const kw_share_wire *w, const kw_share_layer *l, const kw_wire_policy *pol,
                                   uint32_t T, uint64_t bytes[2], uint64_t *work) {
    if (l->device == NULL || w->alloc != NULL || pol->n_groups != 0) return 0; /* the allocator reads the rows */
    if (kw_wire_policy_code_limited(pol)) return 0;
    if (pol->rotate && (l->head_dim > 1024 || kw_wire_rotate_log2((uint32_t)l->head_dim) < 0)) return 0;
    if (w->opt.pre_rope && l->head_dim > 1024) return 0; /* the rotated-back copies are kw_op_wire_rotate_rows's */
    const kw_wire_codec_spec *specs[2] = {&pol->k, &pol->v};
    *work = 0;
    for (int kv = 0; kv < 2; ++kv) {
        const kw_wire_op_spec s = {specs[kv]->codec, specs[kv]->granularity, specs[kv]->scale_dtype,
                                   specs[kv]->group_log2, 0};
        uint64_t scratch = 0;
        if (kw_backend_wire_sizes_clip(l->device->backend, &s, (pol->clip >> kv) & 1, (uint32_t)l->n_heads, T,
                                       (uint32_t)l->head_dim, &bytes[kv], &scratch) < 0) {
            kw_error_clear();
            return 0;
        }
        *work = scratch > *work ? scratch : *work;
    }
    uint64_t scratch = 0;
    const kw_wire_op_spec sk = {pol->k.codec, pol->k.granularity, pol->k.scale_dtype, pol->k.group_log2, 0};
    const kw_wire_op_spec sv = {pol->v.codec, pol->v.granularity, pol->v.scale_dtype, pol->v.group_log2, 0};
    if (pol->outliers && kw_backend_wire_outlier_work(l->device->backend, &sk, &sv, (uint32_t)l->n_heads, T,
                                                      (uint32_t)l->head_dim, &scratch) < 0) {
        kw_error_clear(); /* past the device's 2^32 elements: the CPU's */
        return 0;
    }
    return 1;
}

/* The section's K and V as the device encoder reads them: cache tensors (H, cap, D) and the rows of the section. */
typedef struct kw_share_wire_src {
    const kw_tensor *k, *v, *rows; /* borrowed */
} kw_share_wire_src;

/* A section's outliers chosen on the device (kw_op_wire_outliers) from src: the mask the tensors' encode reads stays
 * there, the chosen elements and their values come to the host and begin_section_outliers writes the table. */
static int kw_share_wire_device_outliers(kw_share_wire *w, const kw_share_layer *l, const kw_share_wire_src *src,
                                         const kw_wire_policy *pol, kw_tensor *mask, size_t *at) {
    const kw_share_device *dev = l->device;
    kw_backend *be = dev->backend;
    const uint32_t T = (uint32_t)l->n_rows, H = (uint32_t)l->n_heads, D = (uint32_t)l->head_dim;
    const uint64_t total = 2ull * H * T * D;
    const uint32_t count = pol->outliers < total ? pol->outliers : (uint32_t)total;
    const kw_wire_op_spec sk = {pol->k.codec, pol->k.granularity, pol->k.scale_dtype, pol->k.group_log2, 0};
    const kw_wire_op_spec sv = {pol->v.codec, pol->v.granularity, pol->v.scale_dtype, pol->v.group_log2, 0};
    uint64_t work_bytes = 0;
    KW_FORWARD(kw_backend_wire_outlier_work(be, &sk, &sv, H, T, D, &work_bytes));
    const int64_t nw = (int64_t)work_bytes, nc = count, one = 1, nm = (int64_t)((total + 31) / 32 * 4);
    kw_tensor work = {0}, elems = {0}, n = {0}, values = {0}, bad = {0};
    uint32_t *h_elems = malloc((size_t)count * sizeof *h_elems);
    float *h_values = malloc((size_t)count * sizeof *h_values);
    int32_t h_n = 0, h_bad = 0;
    int rc = 0;
    KW_CHECK_IF(!h_elems || !h_values, KW_E_NOMEM, "share wire: out of memory for %u outliers", count);
    KW_CHECK(kw_tensor_alloc(be, &work, KW_DTYPE_U8, 1, &nw));
    KW_CHECK(kw_tensor_alloc(be, &elems, KW_DTYPE_I32, 1, &nc));
    KW_CHECK(kw_tensor_alloc(be, &n, KW_DTYPE_I32, 1, &one));
    KW_CHECK(kw_tensor_alloc(be, &values, KW_DTYPE_F32, 1, &nc));
    KW_CHECK(kw_tensor_alloc(be, &bad, KW_DTYPE_I32, 1, &one));
    KW_CHECK(kw_tensor_alloc(be, mask, KW_DTYPE_U8, 1, &nm));
    KW_CHECK(
        kw_op_wire_outliers(be, &sk, &sv, src->k, src->v, src->rows, T, count, &work, &elems, &n, &values, mask, &bad));
    KW_CHECK(kw_backend_download(be, &h_n, &n, 0, sizeof h_n));
    KW_CHECK(kw_backend_download(be, &h_bad, &bad, 0, sizeof h_bad));
    KW_CHECK(kw_backend_download(be, h_elems, &elems, 0, (size_t)count * sizeof *h_elems));
    KW_CHECK(kw_backend_download(be, h_values, &values, 0, (size_t)count * sizeof *h_values));
    KW_CHECK(kw_backend_synchronize(be));
    KW_CHECK_IF(h_bad != 0, KW_E_WIRE_NONFINITE, "share wire: layer %d holds NaN or Inf", (int)l->layer);
    KW_CHECK_IF(h_n != (int32_t)count, KW_E_INTERNAL, "share wire: the device chose %d of %u outliers", (int)h_n,
                count);
    KW_CHECK(kw_wire_encoder_begin_section_outliers(w->enc, (uint32_t)l->layer, T, w->positions, pol, h_elems, h_values,
                                                    count, w->buf, w->cap, at));
out:
    kw_tensor_free(&work);
    kw_tensor_free(&elems);
    kw_tensor_free(&n);
    kw_tensor_free(&values);
    kw_tensor_free(&bad);
    free(h_elems);
    free(h_values);
    return rc;
}

/* The section's keys rotated back by their positions (FORMAT.md §5.11) into uk (H, T, D) f32, as kw_config_rope_rows
 * rotates the host's rows: the rows gathered and widened (kw_op_wire_rotate_rows without rotation), the cosines and
 * sines from the host (kw_config_rope_table, inverse), repeated for each head so that uk's H * T rows take
 * kw_op_rope_table as (H * T, 1, D) with their token's factors. *h_tab (uploaded from) is freed by the caller after its
 * synchronize. */
static int kw_share_wire_device_unrope(const kw_share_wire *w, const kw_share_layer *l, kw_tensor *uk, kw_tensor *tab,
                                       float **h_tab) {
    const kw_share_device *dev = l->device;
    kw_backend *be = dev->backend;
    const int64_t T = l->n_rows, H = l->n_heads, ne[3] = {H, T, l->head_dim}, rows[3] = {H * T, 1, l->head_dim};
    const int32_t half = kw_config_rope_half(w->opt.pre_rope, l->layer);
    KW_RETURN_IF(half < 1 || 2 * half > l->head_dim, KW_E_INVALID_ARG,
                 "share wire: layer %d has no RoPE of head_dim %d", (int)l->layer, (int)l->head_dim);
    const size_t per_head = (size_t)T * (size_t)half * 2;
    *h_tab = malloc(per_head * (size_t)H * sizeof **h_tab);
    KW_RETURN_IF(*h_tab == NULL, KW_E_NOMEM, "share wire: out of memory for the RoPE table of %lld rows", (long long)T);
    KW_FORWARD(kw_config_rope_table(w->opt.pre_rope, l->layer, l->positions, T, 1, *h_tab));
    for (int64_t h = 1; h < H; ++h)
        memcpy(*h_tab + (size_t)h * per_head, *h_tab, per_head * sizeof **h_tab);
    const int64_t nt[3] = {H * T, half, 2};
    KW_FORWARD(kw_tensor_alloc(be, tab, KW_DTYPE_F32, 3, nt));
    KW_FORWARD(kw_backend_upload(be, tab, 0, *h_tab, per_head * (size_t)H * sizeof **h_tab));
    KW_FORWARD(kw_tensor_alloc(be, uk, KW_DTYPE_F32, 3, ne));
    KW_FORWARD(kw_op_wire_rotate_rows(be, uk, dev->k, dev->rows, (uint32_t)T, 0));
    kw_tensor view;
    KW_FORWARD(kw_tensor_view_reshape(uk, 3, rows, &view));
    return kw_op_rope_table(be, &view, tab);
}

/* The section's K and V encoded on the device into buf at the place begin_section gives, the framing on the CPU. A
 * rotated section (FORMAT.md §5.12) encodes the selected rows rotated on the device (kw_op_wire_rotate_rows: K and V
 * gathered into (H, T, D) f32 copies, the tensors pol->rotate names rotated), as the CPU encoder does; pre-RoPE keys
 * (§5.11) are rotated back first (kw_share_wire_device_unrope), V then gathered likewise. */
static int kw_share_wire_device_section(kw_share_wire *w, const kw_share_layer *l, const kw_wire_policy *pol,
                                        const uint64_t bytes[2], uint64_t work_bytes, size_t *written) {
    const kw_share_device *dev = l->device;
    kw_backend *be = dev->backend;
    const uint32_t T = (uint32_t)l->n_rows;
    size_t at = 0;
    kw_tensor dst = {0}, work = {0}, err = {0}, mask = {0}, rk = {0}, rv = {0}, seq = {0}, uk = {0}, tab = {0};
    int32_t *h_seq = NULL;
    float *h_tab = NULL;
    kw_share_wire_src src = {dev->k, dev->v, dev->rows};
    int rc = 0;
    if (pol->pre_rope) KW_CHECK(kw_share_wire_device_unrope(w, l, &uk, &tab, &h_tab));
    if (pol->rotate || pol->pre_rope) {
        const int64_t ne[3] = {l->n_heads, T, l->head_dim}, nt = T;
        h_seq = malloc((size_t)T * sizeof *h_seq);
        KW_CHECK_IF(h_seq == NULL, KW_E_NOMEM, "share wire: out of memory");
        for (uint32_t t = 0; t < T; ++t)
            h_seq[t] = (int32_t)t;
        KW_CHECK(kw_tensor_alloc(be, &rv, KW_DTYPE_F32, 3, ne));
        KW_CHECK(kw_tensor_alloc(be, &seq, KW_DTYPE_I32, 1, &nt));
        KW_CHECK(kw_backend_upload(be, &seq, 0, h_seq, (size_t)T * sizeof *h_seq));
        const kw_tensor *keys = &uk; /* the rotated-back keys are already the section's (H, T, D) rows */
        if (!pol->pre_rope || (pol->rotate & 1)) {
            KW_CHECK(kw_tensor_alloc(be, &rk, KW_DTYPE_F32, 3, ne));
            if (pol->pre_rope) /* the rotated-back keys, a cache of T rows */
                KW_CHECK(kw_op_wire_rotate_rows(be, &rk, &uk, &seq, T, 1));
            else
                KW_CHECK(kw_op_wire_rotate_rows(be, &rk, dev->k, dev->rows, T, pol->rotate & 1));
            keys = &rk;
        }
        KW_CHECK(kw_op_wire_rotate_rows(be, &rv, dev->v, dev->rows, T, (pol->rotate >> 1) & 1));
        src = (kw_share_wire_src){keys, &rv, &seq};
    }
    if (pol->outliers)
        KW_CHECK(kw_share_wire_device_outliers(w, l, &src, pol, &mask, &at));
    else
        KW_CHECK(kw_wire_encoder_begin_section(w->enc, (uint32_t)l->layer, T, w->positions, pol, w->buf, w->cap, &at));
    KW_CHECK_IF(at + bytes[0] + bytes[1] > w->cap, KW_E_INTERNAL,
                "share wire: the device's tensors (%llu bytes at %zu) overrun the section's %zu",
                (unsigned long long)(bytes[0] + bytes[1]), at, w->cap);
    const kw_wire_codec_spec *specs[2] = {&pol->k, &pol->v};
    const kw_tensor *rows[2] = {src.k, src.v};
    const int64_t nb = (int64_t)(bytes[0] + bytes[1]), nw = (int64_t)(work_bytes ? work_bytes : 1), ne = 16;
    const uint64_t half = (uint64_t)l->n_heads * T * (uint64_t)l->head_dim;
    KW_CHECK(kw_tensor_alloc(be, &dst, KW_DTYPE_U8, 1, &nb));
    KW_CHECK(kw_tensor_alloc(be, &work, KW_DTYPE_U8, 1, &nw));
    KW_CHECK(kw_tensor_alloc(be, &err, KW_DTYPE_U8, 1, &ne));
    for (int kv = 0; kv < 2; ++kv) {
        const kw_wire_op_spec s = {specs[kv]->codec, specs[kv]->granularity, specs[kv]->scale_dtype,
                                   specs[kv]->group_log2, (uint8_t)((pol->rotate >> kv) & 1)};
        KW_CHECK(kw_op_wire_encode_clip(be, &dst, kv ? (size_t)bytes[0] : 0, &s, (pol->clip >> kv) & 1, rows[kv],
                                        src.rows, 0, T, &work, &err, kv, pol->outliers ? &mask : NULL, kv ? half : 0));
    }
    KW_CHECK(kw_backend_download(be, w->buf + at, &dst, 0, (size_t)nb));
    KW_CHECK(kw_backend_wire_status(be, &err, 2)); /* synchronizes */
    KW_CHECK(kw_wire_encoder_finish_section(w->enc, written));
    ++w->stats.device_sections;
out:;
    const int sync = kw_backend_synchronize(be); /* nothing may still write buf */
    if (rc == 0) rc = sync;
    kw_tensor_free(&dst);
    kw_tensor_free(&work);
    kw_tensor_free(&err);
    kw_tensor_free(&mask);
    kw_tensor_free(&rk);
    kw_tensor_free(&rv);
    kw_tensor_free(&seq);
    kw_tensor_free(&uk);
    kw_tensor_free(&tab);
    free(h_seq); /* uploaded from: after the synchronize above */
    free(h_tab);
    return rc;
}

/* A per-token byte cap's section on the device: the allocator chose the kept rows and their codecs on the host rows
 * (downloaded for it), and the kept rows' tensors are encoded group by group from the device cache through their
 * cache positions (kw_op_wire_encode; kv_direct: the candidates of the blob's kept set), the framing on the CPU as in
 * kw_share_wire_device_section. *done 0 (and nothing written) when the device does not take a group's codec. */
static int kw_share_wire_device_groups(kw_share_wire *w, const kw_share_layer *l, const kw_share_device *dev,
                                       const kw_wire_alloc_result *res, const kw_wire_policy *pol, size_t *written,
                                       int *done) {
    kw_backend *be = dev->backend;
    const uint32_t n = res->n_kept, H = (uint32_t)l->n_heads, D = (uint32_t)l->head_dim, G = pol->n_groups;
    *done = 0;
    if (n == 0 || G == 0) return 0;
    uint64_t *bytes = malloc(2 * (size_t)G * sizeof *bytes); /* owned: each group's K then V tensor bytes */
    KW_RETURN_IF(!bytes, KW_E_NOMEM, "share wire: out of memory for %u token groups", G);
    uint64_t total = 0, scratch = 0;
    for (uint32_t g = 0; g < G; ++g)
        for (int kv = 0; kv < 2; ++kv) {
            const kw_wire_codec_spec *c = kv ? &pol->groups[g].v : &pol->groups[g].k;
            const kw_wire_op_spec s = {c->codec, c->granularity, c->scale_dtype, c->group_log2, 0};
            uint64_t sc = 0;
            if (kw_backend_wire_sizes(be, &s, H, pol->groups[g].n_tokens, D, &bytes[2 * (size_t)g + kv], &sc) < 0) {
                kw_error_clear(); /* the CPU's */
                free(bytes);
                return 0;
            }
            total += bytes[2 * (size_t)g + kv];
            scratch = sc > scratch ? sc : scratch;
        }
    kw_tensor dst = {0}, work = {0}, err = {0}, rows = {0};
    int32_t *h_rows = malloc((size_t)l->n_rows * sizeof *h_rows), *h_kept = malloc((size_t)n * sizeof *h_kept);
    size_t at = 0;
    int rc = 0;
    KW_CHECK_IF(!h_rows || !h_kept, KW_E_NOMEM, "share wire: out of memory for %u kept rows", n);
    KW_CHECK(kw_backend_download(be, h_rows, dev->rows, 0, (size_t)l->n_rows * sizeof *h_rows));
    KW_CHECK(kw_backend_synchronize(be));
    for (uint32_t i = 0; i < n; ++i) { /* the kept row's candidate, then its cache position */
        const uint32_t c = w->opt.budget.same_positions ? w->kept_rows[res->rows[i]] : res->rows[i];
        KW_CHECK_IF(c >= (uint64_t)l->n_rows, KW_E_INTERNAL, "share wire: kept row %u of %lld", c,
                    (long long)l->n_rows);
        h_kept[i] = h_rows[c];
    }
    const int64_t nn = n, nb = (int64_t)total, nw = (int64_t)(scratch ? scratch : 1), ne = 16 * (int64_t)G;
    KW_CHECK(kw_tensor_alloc(be, &rows, KW_DTYPE_I32, 1, &nn));
    KW_CHECK(kw_backend_upload(be, &rows, 0, h_kept, (size_t)n * sizeof *h_kept));
    KW_CHECK(kw_wire_encoder_begin_section(w->enc, (uint32_t)l->layer, n, res->positions, pol, w->buf, w->cap, &at));
    KW_CHECK_IF(at + total > w->cap, KW_E_INTERNAL, "share wire: the device's tensors (%llu bytes at %zu) overrun %zu",
                (unsigned long long)total, at, w->cap);
    KW_CHECK(kw_tensor_alloc(be, &dst, KW_DTYPE_U8, 1, &nb));
    KW_CHECK(kw_tensor_alloc(be, &work, KW_DTYPE_U8, 1, &nw));
    KW_CHECK(kw_tensor_alloc(be, &err, KW_DTYPE_U8, 1, &ne));
    size_t off = 0;
    for (uint32_t g = 0, t0 = 0; g < G; t0 += pol->groups[g].n_tokens, ++g)
        for (int kv = 0; kv < 2; ++kv) { /* the section's order: each group's K, then its V */
            const kw_wire_codec_spec *c = kv ? &pol->groups[g].v : &pol->groups[g].k;
            const kw_wire_op_spec s = {c->codec, c->granularity, c->scale_dtype, c->group_log2, 0};
            KW_CHECK(kw_op_wire_encode(be, &dst, off, &s, kv ? dev->v : dev->k, &rows, t0, pol->groups[g].n_tokens,
                                       &work, &err, 2 * (int64_t)g + kv, NULL, 0));
            off += (size_t)bytes[2 * (size_t)g + kv]; /* asked above (a function of its arguments) */
        }
    KW_CHECK(kw_backend_download(be, w->buf + at, &dst, 0, (size_t)total));
    KW_CHECK(kw_backend_wire_status(be, &err, 2 * (int64_t)G)); /* synchronizes */
    KW_CHECK(kw_wire_encoder_finish_section(w->enc, written));
    ++w->stats.device_sections;
    *done = 1;
out:;
    const int sync = kw_backend_synchronize(be); /* nothing may still write buf or read h_kept */
    if (rc == 0) rc = sync;
    kw_tensor_free(&dst);
    kw_tensor_free(&work);
    kw_tensor_free(&err);
    kw_tensor_free(&rows);
    free(h_rows);
    free(h_kept);
    free(bytes);
    return rc;
}

int kw_share_wire_layer(kw_share_wire *w, const kw_share_layer *l) {
    KW_RETURN_IF(w == NULL || l == NULL, KW_E_INVALID_ARG, "share wire: NULL argument");
    KW_RETURN_IF(l->n_rows < 1 || l->n_rows > UINT32_MAX || l->n_positions > KW_WIRE_MAX_POSITIONS ||
                     l->n_layers_sent > UINT16_MAX || l->n_source_layers > UINT16_MAX,
                 KW_E_LIMIT, "share wire: the layer does not fit KVWire (%lld rows, %lld positions)",
                 (long long)l->n_rows, (long long)l->n_positions);
    size_t written = 0;
    uint64_t t0 = kw_time_now_ns();
    if (l->layer_index == 0) { /* the section's blob starts */
        KW_RETURN_IF(w->enc != NULL, KW_E_STATE, "share wire: blob %d was not finished", (int)w->blob);
        w->hdr = (kw_wire_header){.n_layers = (uint16_t)l->n_source_layers,
                                  .n_sections = (uint16_t)l->n_layers_sent,
                                  .n_kv_heads = (uint16_t)l->n_heads,
                                  .head_dim = (uint16_t)l->head_dim,
                                  .n_positions = (uint32_t)l->n_positions,
                                  .src_dtype = KW_WIRE_DTYPE_F32,
                                  .model_id = w->opt.model_id,
                                  .policy_id = w->opt.policy_id,
                                  .version = w->version};
        KW_FORWARD(kw_wire_encoder_create(&w->hdr, NULL, &w->enc));
        w->blob = l->blob;
        KW_FORWARD(kw_share_wire_reserve(w, KW_WIRE_HEADER_BYTES));
        KW_FORWARD(kw_wire_encoder_write_header(w->enc, w->buf, w->cap, &written));
        w->stats.encode_ms += kw_time_ms(t0, kw_time_now_ns());
        KW_FORWARD(kw_share_wire_emit(w, written));
        ++w->stats.blobs;
        t0 = kw_time_now_ns();
    }
    KW_RETURN_IF(w->enc == NULL || l->blob != w->blob, KW_E_STATE, "share wire: layer %d of blob %d out of order",
                 (int)l->layer, (int)l->blob);
    if ((size_t)l->n_rows > w->positions_cap) {
        uint32_t *p = realloc(w->positions, (size_t)l->n_rows * sizeof *p);
        KW_RETURN_IF(p == NULL, KW_E_NOMEM, "share wire: out of memory");
        w->positions = p;
        float *f = realloc(w->weights, (size_t)l->n_rows * sizeof *f);
        KW_RETURN_IF(f == NULL, KW_E_NOMEM, "share wire: out of memory");
        w->weights = f;
        kw_wire_token_group *g = realloc(w->groups, (size_t)l->n_rows * sizeof *g);
        KW_RETURN_IF(g == NULL, KW_E_NOMEM, "share wire: out of memory");
        w->groups = g;
        if (w->alloc && w->opt.budget.same_positions) KW_FORWARD(kw_share_wire_kept_reserve(w, l));
        w->positions_cap = (size_t)l->n_rows;
    }
    for (int64_t i = 0; i < l->n_rows; ++i)
        w->positions[i] = (uint32_t)l->positions[i];
    const size_t hd = (size_t)l->head_dim, row = (size_t)l->n_heads * hd;
    kw_wire_policy pol;
    kw_share_wire_policy_for(&w->opt, (uint32_t)l->layer, &pol);
    if (w->opt.outlier_fraction > 0.0) { /* (not with a cap) with a bf16 cache the rows are bf16 values, so are their
                                            outliers */
        pol.outliers = (uint32_t)floor(w->opt.outlier_fraction * 2.0 * (double)l->n_rows * (double)row + 0.5);
        pol.outlier_dtype = l->cache_dtype == KW_DTYPE_BF16 ? KW_WIRE_DTYPE_BF16 : KW_WIRE_DTYPE_F32;
    }
    if (w->opt.n_token_rules > 0 && !(kw_wire_codec_is_passthrough(pol.k.codec) &&
                                      kw_wire_codec_is_passthrough(pol.v.codec))) { /* quantized layers only */
        KW_FORWARD(kw_wire_token_split(w->opt.token_rules, w->opt.n_token_rules, 1, w->positions, 0,
                                       (uint32_t)l->n_rows, (uint32_t)l->n_positions, &pol.k, &pol.v, w->groups,
                                       &pol.n_groups));
        pol.groups = w->groups; /* the device encoder takes no groups: the CPU's (kw_share_wire_device_ok) */
    }
    uint64_t dev_bytes[2] = {0, 0}, dev_work = 0;
    const int on_device = kw_share_wire_device_ok(w, l, &pol, (uint32_t)l->n_rows, dev_bytes, &dev_work);
    const kw_share_device *dev = l->device; /* a per-token cap: the allocator's choice encoded there if it can */
    kw_share_layer host;                    /* a layer on the device that the CPU encodes: its rows downloaded */
    if (l->device && !on_device) {
        host = *l;
        KW_FORWARD(l->device->host_rows(l->device->ctx, &host.k, &host.v));
        host.device = NULL;
        l = &host;
    }
    const float *lk = l->k, *lv = l->v;
    kw_wire_layer_in in = {.layer = (uint32_t)l->layer,
                           .n_tokens = (uint32_t)l->n_rows,
                           .positions = w->positions,
                           .k = {.data = lk, .head_stride = hd, .token_stride = row},
                           .v = {.data = lv, .head_stride = hd, .token_stride = row}};
    const kw_wire_alloc_result *res = NULL;
    if (w->alloc) { /* a byte cap: the allocator's rows and token groups */
        const float *k = NULL, *v = NULL;
        KW_FORWARD(kw_share_wire_budget_layer(w, l, &res, &k, &v));
        in.k.data = k;
        in.v.data = v;
        kw_wire_alloc_options ao;
        kw_share_wire_alloc_options(w, &ao);
        kw_wire_alloc_policy(res, &ao, w->opt.policy.zstd_level, &pol);
        pol.rans = w->opt.policy.rans;
        in.n_tokens = res->n_kept;
        in.positions = res->positions;
        in.k.rows = res->rows;
        in.v.rows = res->rows;
    }
    if (w->opt.budget.bytes > 0 && w->alloc == NULL) KW_FORWARD(kw_share_wire_planned_layer(w, l, &pol));
    if (w->opt.pre_rope) pol.pre_rope = 1;
    if (w->opt.pre_rope && !on_device) { /* the keys before RoPE: each row rotated back by its position (§5.11) */
        const size_t n = (size_t)l->n_rows * row;
        if (n > w->unroped_cap) {
            float *p = realloc(w->unroped, n * sizeof *p);
            KW_RETURN_IF(p == NULL, KW_E_NOMEM, "share wire: out of memory for %zu pre-RoPE keys", n);
            w->unroped = p;
            w->unroped_cap = n;
        }
        memcpy(w->unroped, lk, n * sizeof *w->unroped);
        KW_FORWARD(kw_config_rope_rows(w->opt.pre_rope, l->layer, l->positions, l->n_rows, 1, w->unroped));
        in.k.data = w->unroped;
    }
    size_t bound = 0;
    KW_FORWARD(kw_wire_section_bound(&w->hdr, &pol, in.n_tokens, &bound));
    if (on_device || (dev && res)) KW_FORWARD(kw_share_wire_pin(w, dev->backend)); /* the device's bytes land in buf */
    KW_FORWARD(kw_share_wire_reserve(w, bound > KW_WIRE_TRAILER_BYTES ? bound : KW_WIRE_TRAILER_BYTES));
    int done = 0;
    if (on_device) {
        KW_FORWARD(kw_share_wire_device_section(w, l, &pol, dev_bytes, dev_work, &written));
        done = 1;
    } else if (dev && res) {
        KW_FORWARD(kw_share_wire_device_groups(w, l, dev, res, &pol, &written, &done));
    }
    if (!done) KW_FORWARD(kw_wire_encoder_write_section(w->enc, &in, &pol, w->buf, w->cap, &written));
    w->stats.encode_ms += kw_time_ms(t0, kw_time_now_ns());
    KW_FORWARD(kw_share_wire_emit(w, written));
    ++w->stats.sections;
    if (l->layer_index + 1 == l->n_layers_sent) { /* the blob ends */
        t0 = kw_time_now_ns();
        KW_FORWARD(kw_wire_encoder_write_trailer(w->enc, w->buf, w->cap, &written));
        const kw_wire_breakdown *b = kw_wire_encoder_breakdown(w->enc);
        kw_share_wire_add_breakdown(&w->stats.breakdown, b);
        w->stats.compressed_sections += (int32_t)b->compressed_sections;
        w->stats.encode_ms += kw_time_ms(t0, kw_time_now_ns());
        KW_FORWARD(kw_share_wire_emit(w, written));
        kw_wire_encoder_destroy(w->enc);
        w->enc = NULL;
    }
    return 0;
}

int kw_share_wire_on_layer(void *user, const kw_share_layer *layer) {
    return kw_share_wire_layer(user, layer);
}
