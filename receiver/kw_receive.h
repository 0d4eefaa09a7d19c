/* kw_receive.h: the receiver half of a request, whatever carries the bytes (an in-memory buffer in `kvwire c2c`, a
 * socket in receiverd): it prefills the receiver's sections, takes the KVWire blobs the sharers sent (one blob per
 * sent section and sharer, fed in pieces of any size), decodes each KVWire section as soon as it is complete and
 * applies it at once, then generates.
 *
 * Modes:
 *   c2c        the rows go to the C2C fusion session (c2c/kw_fusion.h): projected into the receiver cache layer by
 *              layer while later layers are still in flight.
 *   kv_direct  the sharer runs the receiver's own model: the rows of every layer are written into the receiver cache
 *              as its own (disaggregated prefill), every layer with the same positions; positions of a sent section
 *              that were not selected stay hidden (the cache's validity mask). Sections that are not sent are
 *              prefilled here, on top of what arrived. Into a quantized cache, a section in the cache's layout goes in
 *              as pages, its codes as sent (receiver/kw_kv_pages.h; the stats say which rows did and why others did
 *              not), and the positions not sent are stored as hidden zero rows (a quantized layer has no gaps).
 * Everything a sharer sends is checked before use: the blob's geometry against the sharer's, the positions against
 * the section, each layer against the layers the request asked for, the checksums by the KVWire decoder. A bad blob
 * fails the request with that error; nothing of it is applied past the failing section.
 * Not here: sockets, frames, the sharer, receiver_only and text_relay (nothing to receive but text).
 */
#ifndef KW_RECEIVE_H
#define KW_RECEIVE_H

#include <stddef.h>
#include <stdint.h>

#include "c2c/kw_fusion.h"
#include "c2c/kw_select.h"
#include "c2c/kw_share.h"
#include "receiver/kw_kv_pages.h"
#include "wire/kw_wire.h"
#include "wire/kw_wire_alloc.h"

enum kw_receive_mode { KW_RECEIVE_C2C = 1, KW_RECEIVE_KV_DIRECT = 2 };

/* Most receiver layers one sharer layer's per-target subsets name (kw_receive_targets). */
#define KW_RECEIVE_MAX_TARGETS KW_SHARE_MAX_TARGETS

typedef struct kw_receive_options {
    enum kw_receive_mode mode;
    kw_fusion_options fusion; /* sections (borrowed), fusion mode, numerics, generation; kv_direct: sections and
                                 generation only */
    kw_wire_limits limits;    /* all zero: the KVWire defaults */
    /* c2c: the sharer layers each sharer's blobs carry, ascending, a subset of those its fuser uses
     * (c2c/kw_request.h kw_request_sharer_layers); NULL: all of those. Layers not sent are not fused. Borrowed. */
    const int32_t *layers[KW_FUSION_MAX_SHARERS];
    int32_t n_layers[KW_FUSION_MAX_SHARERS];
    /* kv_direct with a quantized cache: 1 decodes every section and stores it through the cache's quantizer even when
     * its codes could be stored as pages (receiver/kw_kv_pages.h); the comparison the tests and benchmarks make */
    int requantize;
    /* 1: decode every KVWire section on the host even when the model's backend decodes on its device
     * (kw_backend_supports_wire_decode); the reference the device decode is tested against */
    int host_decode;
} kw_receive_options;

typedef struct kw_receive_stats {
    uint64_t blob_bytes; /* bytes fed */
    int32_t blobs, sections;
    int64_t rows;           /* rows applied, over all layers */
    double decode_ms;       /* KVWire verification and dequantization */
    double apply_ms;        /* kv_direct: writing rows into the cache; c2c: staging and projection (fusion stats) */
    double prefill_ms;      /* the receiver's own prefill of the sections before the last */
    double probe_ms;        /* refinement: the trial runs of the last section (kw_receive_probe) */
    kw_fusion_stats fusion; /* c2c */
    /* kv_direct: how the sections' rows went into the cache, counted over every layer (receiver/kw_kv_pages.h) */
    int64_t rows_direct;      /* rows stored as their sent codes (keys of the last, partial page: their exact values
                                 in the bf16 tail) */
    int64_t rows_tail;        /* of those, rows whose keys went to the tail */
    int64_t rows_requantized; /* rows decoded and stored through the cache's quantizer (dense cache: its rounding) */
    int32_t store_reason;     /* enum kw_kv_store_reason of the first section not stored as pages, else 0 */
    /* of the sections, those decoded on the device (a CUDA backend: their bytes uploaded once, the rows decoded
     * there, never on the host); the others were decoded by the CPU decoder and their rows uploaded */
    int32_t device_sections;
} kw_receive_stats;

/* How a kv_direct request's rows went into its cache: "direct" (every row as its sent codes), "requantized" (some or
 * all decoded and quantized again, or written to a mixed cache's bf16 layers: stats->store_reason says why), "dense"
 * (a bf16 or f32 cache, no row direct), "none" (no rows). */
const char *kw_receive_kv_store(const kw_receive_stats *stats);

typedef struct kw_receive kw_receive; /* one request */

/* Starts a request for prompt ids[0..n) (borrowed, must outlive it) on model with its empty cache. c2c: f is the
 * receiver's fusion (sharers' geometry and fusers); kv_direct: f is NULL and the sharer is the model itself.
 * *out is owned by the caller (kw_receive_free). */
int kw_receive_begin(kw_model *model, kw_fusion *f, kw_kvcache *cache, const int32_t *ids, int64_t n,
                     const kw_receive_options *opt, kw_receive **out);

/* Prefills the next section before the last (c2c: the receiver's own rows to fuse into; kv_direct: a sent section
 * gets its rows reserved, hidden until they arrive; another is prefilled). */
int kw_receive_prefill(kw_receive *r, int32_t section);

/* Feeds n bytes of sharer's blob for the current section (any split). Complete KVWire sections are applied as they
 * are verified; *done is set to 1 once the blob's trailer is verified (bytes after it are an error). */
int kw_receive_feed(kw_receive *r, int32_t sharer, const void *data, size_t n, int *done);

/* As kw_receive_feed, for a stream of blobs back to back (one per sent section, as the protocol carries them): stops
 * right after the current blob's trailer, with *used the bytes consumed (the rest belongs to the next section's blob)
 * and *done 1. */
int kw_receive_feed_some(kw_receive *r, int32_t sharer, const void *data, size_t n, size_t *used, int *done);

/* The in-memory transport without a codec (`kvwire c2c` without --wire): n_rows rows of one sharer layer at the given
 * ascending positions, k and v (n_rows, heads, head_dim) f32, applied exactly as a decoded KVWire section would be;
 * then kw_receive_rows_done says that sharer sent everything for the section. */
int kw_receive_rows(kw_receive *r, int32_t sharer, int32_t layer, int64_t n_rows, const int64_t *positions,
                    const float *k, const float *v);
int kw_receive_rows_done(kw_receive *r, int32_t sharer);

/* The per-target subsets of sharer layer `layer` in the current section (the receiver-aware selections; PROTOCOL.md
 * SHARE_TARGETS): receiver layer layers[j] fuses only the rows at the section offsets whose bit is set in masks[j]
 * (mask_bytes = ceil(section length / 8) bytes each, LSB first). c2c only; before that layer's rows arrive, once per
 * layer and section; copied. Errors: KW_E_INVALID_ARG (sizes, a layer given twice), KW_E_STATE (no section open). */
int kw_receive_targets(kw_receive *r, int32_t sharer, int32_t layer, int32_t n, const int32_t *layers,
                       const uint8_t *const *masks, int64_t mask_bytes);

/* Ends the current section: every sent blob must be complete (KW_E_SHARE_INCOMPLETE otherwise); kv_direct: every layer
 * must have arrived, and the selected positions become visible. */
int kw_receive_end_section(kw_receive *r, int32_t section);

/* Runs the last section and decodes greedily. *out as kw_fusion_generate's (the stats are the fusion's in c2c). */
int kw_receive_generate(kw_receive *r, kw_fusion_result *out);

/* ------------------------------------------------------------------------------------------------------------
 * Two-round refinement (docs/PROTOCOL.md §5.1): after round one, the receiver measures its uncertainty on the first
 * answer token and may ask the sharer for the tokens a larger proportion adds (SharePolicy.skip_ranked), applies
 * them on top of round one and generates. Needs exactly one sent section, the one right before the last: the rows
 * of nothing else depend on it, so both rounds together give the cache one round at the larger proportion would.
 */

enum kw_refine_metric {
    KW_REFINE_MARGIN = 0,  /* top-1 minus top-2 logit; round two when below the threshold */
    KW_REFINE_ENTROPY = 1, /* of the softmax, in nats; round two when above the threshold */
};

/* "margin", "entropy"; NULL for an invalid metric. */
const char *kw_refine_metric_name(enum kw_refine_metric m);

/* The metric called name, or KW_E_INVALID_ARG. */
int kw_refine_metric_parse(const char *name, enum kw_refine_metric *out);

/* The metric of vocab logits (f32, as the model returns them: no rounding) in double precision. */
double kw_refine_measure(enum kw_refine_metric m, const float *logits, int32_t vocab);

/* 1 when the measured value asks for round two: margin < threshold, entropy > threshold. */
int kw_refine_wanted(enum kw_refine_metric m, double value, double threshold);

/* Round two's SharePolicy.skip_ranked: for each sent section of the sharer's view (index > 0, the last section
 * excluded), in order, round one's count kw_select_count(one, length), written to skip (KW_REQUEST_MAX_SECTIONS
 * entries of room), *n_skip of them. *adds is 1 when two (the same policy at a larger proportion) keeps more tokens
 * than one in every sent section, else 0 (round two would send nothing there; the sharer refuses a skip that is not
 * below the count). */
int kw_refine_skips(const kw_fusion_section *sharer_sections, int32_t n_sections, const kw_select_policy *one,
                    const kw_select_policy *two, uint32_t *skip, int32_t *n_skip, int *adds);

/* Runs the last section on the cache as round one left it, measures the metric on the first answer token's logits
 * (*value) and rolls the cache back to the sections before the last, so that kw_receive_generate or a round two
 * follow. Every section before the last must be ended. */
int kw_receive_probe(kw_receive *r, enum kw_refine_metric metric, double *value);

/* Round two: opens the sent section right before the last again (after kw_receive_probe) for the sharer's second
 * blob; feed it (kw_receive_feed, _feed_some, _rows) and end it with kw_receive_end_section as in round one. A
 * position that already got rows in a layer is refused (KW_E_SHARE_POSITIONS): round two only adds. Errors:
 * KW_E_STATE (not that section, not rolled back). */
int kw_receive_reopen(kw_receive *r, int32_t section);

/* A whole-layer byte-cap baseline (wire/kw_wire_alloc.h kw_wire_plan_layers) as the receiver plans it before asking
 * the sharer: kvcomm_like chooses which sharer layers it fuses, so the sharer is never asked for a layer the cap
 * cannot hold (layers[0..*n_layers), ascending, is rewritten in place to the planned ones); qkvcomm_like only checks
 * the cap (the sharer picks the codecs). shape: the sharer's heads, head_dim and shared tokens; sharer_sections: the
 * sharer's view (index > 0: sent, one blob each), the last one included; every sent section carries
 * kw_select_count(select, length) rows per layer. codecs: the mode's (1 or 2). *min_bytes: the smallest cap.
 * Errors: KW_E_INVALID_ARG (a cap below that minimum, naming it). */
int kw_receive_plan_layers(enum kw_wire_budget_mode mode, const kw_wire_header *shape,
                           const kw_fusion_section *sharer_sections, int32_t n_sections, const kw_select_policy *select,
                           const kw_wire_codec_spec *codecs, uint32_t n_codecs, uint64_t cap, int32_t *layers,
                           int32_t *n_layers, uint64_t *min_bytes);

/* 1 if the section's index sends anything in this mode (c2c: a sharer bitmask > 0; kv_direct: index > 0). */
int kw_receive_section_sent(const kw_receive *r, int32_t section);

/* The sharers whose blobs the current section expects (bit i: sharer i). */
int32_t kw_receive_section_sharers(const kw_receive *r, int32_t section);

const kw_receive_stats *kw_receive_get_stats(const kw_receive *r);

/* Releases the request (not the model, cache or fusion). NULL is a no-op. */
void kw_receive_free(kw_receive *r);

#endif /* KW_RECEIVE_H */
