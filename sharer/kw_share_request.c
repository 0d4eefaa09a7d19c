/* kw_share_request.c: the sharer half of one request (see kw_share_request.h). */
#include "sharer/kw_share_request.h"

#include <string.h>

#include "c2c/kw_request.h"
#include "common/kw_status.h"
#include "proto/kw_proto.h"

/* The byte cap's shape from the request: one blob per sent section, every listed layer in each. */
static int kw_share_request_budget(const kw_model *model, int64_t n, const kw_share_request_options *opt,
                                   int64_t *blob_lengths, kw_share_budget *out) {
    KW_RETURN_IF(opt->n_budget_codecs < 1 || opt->n_budget_codecs > KW_WIRE_ALLOC_MAX_CODECS ||
                     opt->budget_codecs == NULL,
                 KW_E_INVALID_ARG, "budget: 1..%d codecs, not %u", KW_WIRE_ALLOC_MAX_CODECS, opt->n_budget_codecs);
    KW_RETURN_IF(opt->sections == NULL || opt->n_sections < 1 || opt->n_sections > KW_REQUEST_MAX_SECTIONS,
                 KW_E_INVALID_ARG, "budget: bad section list");
    const kw_model_config *c = kw_model_get_config(model);
    *out = (kw_share_budget){.bytes = opt->budget_bytes,
                             .n_codecs = opt->n_budget_codecs,
                             .weight = opt->select.mode,
                             .same_positions = opt->same_positions,
                             .blob_lengths = blob_lengths,
                             .n_layers = opt->n_layers,
                             .n_positions = n,
                             .n_heads = c->n_kv_heads,
                             .head_dim = c->head_dim};
    memcpy(out->codecs, opt->budget_codecs, opt->n_budget_codecs * sizeof *opt->budget_codecs);
    for (int32_t i = 0; i + 1 < opt->n_sections; ++i)
        if (opt->sections[i].index > 0 && opt->n_layers > 0) blob_lengths[out->n_blobs++] = opt->sections[i].length;
    return 0;
}

/* A whole-layer baseline's plan over the layers given: blob_rows (the selection's count per blob), the layers'
 * codecs as overrides (n_layers entries, the caller's), the plan's minimum in b. */
static int kw_share_request_plan(const kw_share_request_options *opt, kw_share_budget *b, uint32_t *blob_rows,
                                 kw_share_layer_codec *overrides) {
    if (b->n_blobs == 0) return 0; /* nothing is sent */
    for (int32_t i = 0; i < b->n_blobs; ++i)
        blob_rows[i] = (uint32_t)kw_select_count(&opt->select, b->blob_lengths[i]);
    const kw_wire_header hdr = {.n_kv_heads = (uint16_t)b->n_heads,
                                .head_dim = (uint16_t)b->head_dim,
                                .n_positions = (uint32_t)b->n_positions,
                                .src_dtype = KW_WIRE_DTYPE_F32};
    const kw_wire_layer_plan_input in = {.hdr = &hdr,
                                         .n_layers = (uint32_t)b->n_layers,
                                         .blob_rows = blob_rows,
                                         .n_blobs = (uint32_t)b->n_blobs,
                                         .codecs = b->codecs,
                                         .n_codecs = b->n_codecs,
                                         .index_encoding = opt->wire->index_encoding,
                                         .cap = b->bytes};
    uint8_t choice[KW_WIRE_MAX_LAYERS];
    uint64_t bytes = 0;
    KW_FORWARD(kw_wire_plan_layers(b->mode, &in, choice, &bytes, &b->plan_min_bytes));
    for (int32_t i = 0; i < b->n_layers; ++i) {
        KW_RETURN_IF(choice[i] == 0, KW_E_INVALID_ARG,
                     "budget: kvcomm_like: a cap of %llu bytes does not hold layer %d with the others asked for",
                     (unsigned long long)b->bytes, (int)opt->layers[i]);
        overrides[i] = (kw_share_layer_codec){
            .layer = (uint32_t)opt->layers[i], .k = b->codecs[choice[i] - 1], .v = b->codecs[choice[i] - 1]};
    }
    b->blob_rows = blob_rows;
    return 0;
}

/* The layer callback with the per-target subsets sent first (kw_share_request_options.on_targets). */
typedef struct kw_share_request_fanout {
    const kw_share_request_options *opt;
    kw_share_wire *w;
} kw_share_request_fanout;

static int kw_share_request_on_layer(void *user, const kw_share_layer *layer) {
    const kw_share_request_fanout *fo = user;
    if (layer->targets.n > 0 && fo->opt->on_targets) KW_FORWARD(fo->opt->on_targets(fo->opt->user, layer));
    return fo->w ? kw_share_wire_layer(fo->w, layer) : fo->opt->on_rows(fo->opt->user, layer);
}

int kw_share_request_run(kw_model *model, const int32_t *ids, int64_t n, const kw_share_request_options *opt,
                         kw_share_request_stats *stats) {
    KW_RETURN_IF(opt == NULL || (opt->wire ? opt->write == NULL : opt->on_rows == NULL), KW_E_INVALID_ARG,
                 "share request: no destination for the rows");
    kw_share_request_stats local;
    if (stats == NULL) stats = &local;
    memset(stats, 0, sizeof *stats);
    kw_share_wire *w = NULL;
    int64_t blob_lengths[KW_REQUEST_MAX_SECTIONS];
    uint32_t blob_rows[KW_REQUEST_MAX_SECTIONS];
    kw_share_layer_codec plan[KW_WIRE_MAX_LAYERS];
    if (opt->wire) {
        kw_share_wire_options wo = {.policy = *opt->wire,
                                    .overrides = opt->overrides,
                                    .n_overrides = opt->n_overrides,
                                    .token_rules = opt->token_rules,
                                    .n_token_rules = opt->n_token_rules,
                                    .outlier_fraction = opt->outlier_fraction,
                                    .pre_rope = opt->pre_rope_keys ? kw_model_get_config(model) : NULL,
                                    .write = opt->write,
                                    .user = opt->user};
        if (opt->budget_bytes > 0) KW_FORWARD(kw_share_request_budget(model, n, opt, blob_lengths, &wo.budget));
        if (opt->budget_bytes > 0 && opt->budget_mode != KW_WIRE_BUDGET_TOKENS) {
            KW_RETURN_IF(opt->n_layers > KW_WIRE_MAX_LAYERS, KW_E_LIMIT, "budget: %d layers", (int)opt->n_layers);
            wo.budget.mode = opt->budget_mode;
            KW_FORWARD(kw_share_request_plan(opt, &wo.budget, blob_rows, plan));
            wo.policy.k = wo.policy.v = opt->budget_codecs[0];
            wo.overrides = plan;
            wo.n_overrides = wo.budget.n_blobs ? opt->n_layers : 0;
        }
        KW_FORWARD(kw_share_wire_create(&wo, &w));
    }
    kw_share_request_fanout fanout = {.opt = opt, .w = w};
    const kw_share_options so = {.sections = opt->sections,
                                 .n_sections = opt->n_sections,
                                 .layers = opt->layers,
                                 .n_layers = opt->n_layers,
                                 .select = opt->select,
                                 .skip_ranked = opt->skip_ranked,
                                 .select_rows = opt->select_rows,
                                 .select_user = opt->select_user,
                                 .same_positions = opt->same_positions,
                                 .cache_dtype = opt->cache_dtype,
                                 .pad = opt->pad,
                                 .device_rows = w != NULL && !opt->host_rows, /* kw_share_wire takes them there */
                                 .on_layer = kw_share_request_on_layer,
                                 .user = &fanout};
    const int rc = kw_share_run(model, ids, n, &so, &stats->share);
    if (w) stats->wire = *kw_share_wire_get_stats(w);
    kw_share_wire_free(w);
    return rc;
}

int kw_share_targets_frame(uint64_t request_id, const kw_share_layer *layer, uint8_t **frame, size_t *len) {
    const kw_share_targets *t = &layer->targets;
    KW_RETURN_IF(t->n < 1 || t->n > KW_SHARE_MAX_TARGETS || t->mask_bytes < 1, KW_E_INVALID_ARG,
                 "share: %d target subsets", (int)t->n);
    uint32_t targets[KW_SHARE_MAX_TARGETS];
    ProtobufCBinaryData masks[KW_SHARE_MAX_TARGETS];
    for (int32_t j = 0; j < t->n; ++j) {
        targets[j] = (uint32_t)t->layers[j];
        masks[j] = (ProtobufCBinaryData){(size_t)t->mask_bytes, (uint8_t *)t->masks[j]};
    }
    Kwctl__ShareTargets m = KWCTL__SHARE_TARGETS__INIT;
    m.request_id = request_id;
    m.blob = (uint32_t)layer->blob;
    m.layer = (uint32_t)layer->layer;
    m.targets = targets;
    m.n_targets = (size_t)t->n;
    m.masks = masks;
    m.n_masks = (size_t)t->n;
    return kw_proto_message_frame_pack(KW_PROTO_FRAME_SHARE_TARGETS, &m.base, frame, len);
}
