/* kw_share.h: the sharer side of a KV transfer. The sharer model prefills the shared part of the prompt section by
 * section, layer by layer (kw_model_forward_layers), and as soon as a layer's K/V exist the rows of every section
 * that is sent go through the selection (c2c/kw_select.h) and out through a callback, before the next layer runs:
 * a caller encodes them (sharer/: one KVWire section per layer) and streams them while the model goes on.
 *
 * The sections are the receiver's (kw_fusion_section): every section but the last is prefilled (the sharer's cache
 * must hold the earlier ones), those with index > 0 are sent, the last is never seen by the sharer (the receiver runs
 * it on its own cache). Positions are cache rows, as on the receiver. The layers sent are the caller's list (for
 * C2C, kw_fusion_needed_layers on the receiver's side; for kv_direct, every layer). Results are the same bits as the
 * in-process kw_fusion_run's sharer rows (the layer-major prefill is bit-identical to the chunked one).
 * Not here: codecs, sockets, the receiver.
 */
#ifndef KW_SHARE_H
#define KW_SHARE_H

#include <stdint.h>

#include "c2c/kw_fusion.h"
#include "c2c/kw_select.h"
#include "model/kw_model.h"

/* Most receiver layers one sharer layer's per-target subsets name (the SHARE_TARGETS frame's limit). */
#define KW_SHARE_MAX_TARGETS 64

/* The per-target subsets of a sent layer (the receiver-aware selections, c2c/kw_rscore.h): receiver layer layers[j]
 * fuses only the rows whose section offset has its bit set in masks[j] (mask_bytes = ceil(section length / 8) bytes,
 * LSB first). n 0: every receiver layer fuses every row sent. */
typedef struct kw_share_targets {
    int32_t n;
    const int32_t *layers;
    const uint8_t *const *masks;
    int64_t mask_bytes;
} kw_share_targets;

/* A sent layer's rows where they are, in device memory (kw_share_options.device_rows on a backend with the sharer's
 * device work, kw_backend_supports_share, and a dense cache layer): the layer's cache tensors and the selected rows'
 * cache positions on the device, so a KVWire encoder on the device (kw_op_wire_encode) reads them there. The rows
 * reach the host only if the callback asks for them (host_rows: downloads the section's rows, gathers the selected
 * ones and returns them as kw_share_layer.k and .v would be, valid during the call). All borrowed for the call. */
typedef struct kw_share_device {
    kw_backend *backend;
    const kw_tensor *k, *v; /* the layer's cache tensors (H, cap, D), f32 or bf16 (the cache dtype) */
    const kw_tensor *rows;  /* (>= n_rows) i32: entry i is the cache position of selected row i */
    int (*host_rows)(void *ctx, const float **k, const float **v);
    void *ctx;
} kw_share_device;

/* One sent layer of one section, as the callback sees it. Pointers are owned by kw_share_run and valid during the
 * call only. */
typedef struct kw_share_layer {
    int32_t section;               /* index into the sections */
    int32_t blob;                  /* ordinal of this section among the sent ones (0, 1, ...) */
    int32_t layer;                 /* sharer layer */
    int32_t layer_index;           /* this is the layer_index-th of the n_layers_sent layers of this section */
    int32_t n_layers_sent;         /* the caller's layer count */
    int32_t n_source_layers;       /* layers of the sharer model */
    int64_t pos0, length;          /* the section: positions [pos0, pos0 + length) */
    int64_t n_positions;           /* the shared prefix's length (every position is below it) */
    int64_t n_rows;                /* selected rows, >= 1 */
    const int64_t *positions;      /* n_rows ascending cache positions */
    const float *k, *v;            /* (n_rows, n_heads, head_dim) f32 (exact bf16 values with a bf16 cache); NULL when
                                      device is set: device->host_rows gives them */
    const kw_share_device *device; /* NULL: the rows are on the host only */
    int32_t n_heads, head_dim;
    enum kw_dtype cache_dtype;
    kw_share_targets targets; /* the receiver-aware selections' per-target subsets (n 0: none) */
} kw_share_layer;

/* Called for each sent (section, layer), sections in order, layers ascending. A negative return stops the run. */
typedef int (*kw_share_fn)(void *user, const kw_share_layer *layer);

/* The receiver-aware selections (c2c/kw_rscore.h kw_rscore_share_select): of the T rows [pos0, pos0 + T) of sharer
 * layer `layer` (k and v (T, heads, head_dim) f32, borrowed for the call), the rows to send as ascending offsets in
 * out (T entries of room, *n_out) and their per-target subsets in *targets (valid until the next call). */
typedef int (*kw_share_select_fn)(void *user, const kw_select_policy *pol, int32_t layer, int64_t pos0, int64_t T,
                                  const float *k, const float *v, int64_t *out, int64_t *n_out,
                                  kw_share_targets *targets);

typedef struct kw_share_options {
    const kw_fusion_section *sections; /* borrowed; the prompt's sections, the last one included */
    int32_t n_sections;
    const int32_t *layers; /* borrowed: the sharer layers to send, strictly ascending */
    int32_t n_layers;
    kw_select_policy select;        /* its skip is not used: skip_ranked below */
    const int64_t *skip_ranked;     /* NULL, or borrowed, one per sent section (blob order): that section's
                                       kw_select_policy.skip (round two of a refinement: only ranks [skip, k) are sent) */
    kw_share_select_fn select_rows; /* required by the receiver-aware modes (proj_vnorm_topk, delta_proj_vnorm_topk) */
    void *select_user;
    int same_positions;        /* 1: one selection per section (made at its first sent layer) for every layer */
    enum kw_dtype cache_dtype; /* KW_DTYPE_BF16 or KW_DTYPE_F32 */
    int device_rows;           /* 1: on a backend with the sharer's device work (kw_backend_supports_share), leave
                                  the rows on the device (kw_share_layer.device; the callback must take that form)
                                  and select there when the policy allows (knorm_topk, vnorm_topk without a skip) */
    const uint8_t *pad;        /* NULL, or one flag per prefix position: 1 = padding, hidden from attention */
    kw_share_fn on_layer;
    void *user;
} kw_share_options;

typedef struct kw_share_stats {
    double prefill_ms;         /* the model's forward, callbacks excluded */
    double select_ms;          /* reading rows to the host, scoring, gathering (the score hook excluded) */
    double score_ms;           /* in the score hook (the receiver-aware selections' receiver-side scoring) */
    double callback_ms;        /* time in on_layer */
    int64_t tokens_total;      /* sum over sent layers of the section length */
    int64_t tokens_sent;       /* sum over sent layers of the selected rows */
    int64_t kv_bytes;          /* selected K and V at the cache dtype (what an uncompressed transfer would carry) */
    int32_t layers_sent;       /* callbacks */
    int32_t sections_sent;     /* sections with index > 0 */
    int32_t device_selections; /* (section, layer) selections scored and ranked on the device (device_rows) */
} kw_share_stats;

/* Prefills ids[0..n) (the sharer's ids of every section but the last; n is their total length) on a new cache of
 * this model and streams the sent layers. *stats (may be NULL) is filled. Errors: KW_E_INVALID_ARG (sections,
 * layers, policy), the model's, the callback's. */
int kw_share_run(kw_model *model, const int32_t *ids, int64_t n, const kw_share_options *opt, kw_share_stats *stats);

#endif /* KW_SHARE_H */
