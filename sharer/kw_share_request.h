/* kw_share_request.h: the sharer half of one request, as `kvwire c2c` and sharerd both run it: kw_share_run
 * (layer-by-layer prefill and selection, c2c/kw_share.h) with its layers either encoded into KVWire blobs
 * (kw_share_wire.h: one blob per sent section, bytes handed to a callback as soon as they exist) or, with no codec,
 * handed over as f32 rows; with a byte cap the encoder allocates the rows' codecs (kw_share_budget). The sections,
 * layers and ids come from the request plan (c2c/kw_request.h on the receiver's side, or a ShareRequest on the wire).
 * Not here: sockets, frames, queues.
 */
#ifndef KW_SHARE_REQUEST_H
#define KW_SHARE_REQUEST_H

#include <stdint.h>

#include "c2c/kw_share.h"
#include "sharer/kw_share_wire.h"

typedef struct kw_share_request_options {
    const kw_fusion_section *sections; /* borrowed: the sharer's view (index 1 = sent), the last one included */
    int32_t n_sections;
    const int32_t *layers; /* borrowed: sharer layers to send, ascending */
    int32_t n_layers;
    kw_select_policy select;
    const int64_t *skip_ranked;     /* NULL, or borrowed, one per sent section: round two's skip (c2c/kw_share.h) */
    kw_share_select_fn select_rows; /* the receiver-aware modes' selection (kw_share_options) */
    void *select_user;
    int same_positions;        /* kv_direct: one selection per section for every layer */
    enum kw_dtype cache_dtype; /* KW_DTYPE_BF16 or KW_DTYPE_F32 */
    const uint8_t *pad;        /* NULL, or one flag per prefix position (1 = padding) */
    int host_rows;             /* 1: the rows go to the host and the CPU encodes them even on a device backend (the
                                  reference the device path is checked against); 0: kw_share_options.device_rows */
    /* KVWire (wire not NULL): the codecs, and where the blob bytes go */
    const kw_wire_policy *wire;
    const kw_share_layer_codec *overrides; /* borrowed; strictly increasing layers */
    int32_t n_overrides;
    const kw_wire_token_rule
        *token_rules; /* borrowed: the per-token schedule (kw_share_wire_options); not with a cap */
    uint32_t n_token_rules;
    kw_share_bytes_fn write;
    double outlier_fraction; /* KVWire v1.1: this share of each section's K and V elements sent exact (0: none) */
    int pre_rope_keys;       /* KVWire v1.1, kv_direct: K sent before RoPE (the receiver rotates it back) */
    /* a byte cap on the request's blobs (budget_bytes > 0; kw_share_wire.h kw_share_budget). budget_mode tokens: the
     * selection's rows are the allocator's candidates, weighed by its norm score (knorm_topk, vnorm_topk) or
     * uniformly. kvcomm_like (budget_codecs: the one codec) and qkvcomm_like (int4 then int8): whole layers planned
     * by kw_wire_plan_layers over the layers given; kvcomm_like refuses layers the cap does not hold (the receiver
     * plans which it fuses), qkvcomm_like sets each layer's codec (overrides are then not taken) */
    uint64_t budget_bytes;
    const kw_wire_codec_spec *budget_codecs; /* borrowed: 1..KW_WIRE_ALLOC_MAX_CODECS */
    uint32_t n_budget_codecs;
    enum kw_wire_budget_mode budget_mode;
    /* no codec (wire NULL): the rows themselves */
    kw_share_fn on_rows;
    /* the receiver-aware selections: called with each sent layer that has per-target subsets (layer->targets.n > 0)
     * before its bytes or rows go out (the receiver needs the subsets when the layer arrives); NULL: dropped */
    kw_share_fn on_targets;
    void *user; /* for write, on_rows and on_targets */
} kw_share_request_options;

typedef struct kw_share_request_stats {
    kw_share_stats share;
    kw_share_wire_stats wire; /* zero without a codec */
} kw_share_request_stats;

/* Prefills ids[0..n) (n: the tokens of every section but the last) on model and streams the sent layers. *stats (may
 * be NULL) is filled, also on failure as far as the run went. Errors: kw_share_run's and kw_share_wire's, the
 * callbacks'. */
int kw_share_request_run(kw_model *model, const int32_t *ids, int64_t n, const kw_share_request_options *opt,
                         kw_share_request_stats *stats);

/* The SHARE_TARGETS frame (docs/PROTOCOL.md) of a sent layer with per-target subsets (layer->targets.n > 0), header
 * included: *frame (*len bytes) is owned by the caller (free). kvwire c2c counts these bytes as sharerd sends them. */
int kw_share_targets_frame(uint64_t request_id, const kw_share_layer *layer, uint8_t **frame, size_t *len);

#endif /* KW_SHARE_REQUEST_H */
