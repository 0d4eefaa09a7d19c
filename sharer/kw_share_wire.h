/* kw_share_wire.h: the sharer's encoder stage: the layers kw_share_run hands over (c2c/kw_share.h) become KVWire blobs
 * (docs/FORMAT.md), one blob per sent section, one KVWire section per layer, written out through a byte callback as
 * soon as each layer is encoded (the header before the section's first layer, the trailer after its last).
 *
 * Codecs: one policy for every layer (K and V codec specs, zstd level, smallest index encoding) with per-layer
 * overrides, or, with a byte cap (kw_share_budget below), each row dropped or given its own codec by the allocator of
 * wire/kw_wire_alloc.h within the layer's share of the cap (kv_direct: the same rows in every layer), or, for a
 * whole-layer baseline (kvcomm_like, qkvcomm_like), each layer's codec planned in advance. The rows are f32 (exact bf16
 * values with a bf16 sharer cache, so the bf16 codec is then lossless); the same rows and codecs give the same bytes on
 * every run and machine. Not here: sockets or frames (the daemon wraps the bytes in WIRE frames), the receiver.
 *
 * A layer whose rows are on the device (kw_share_layer.device) is encoded there when the section allows it: its K
 * and V tensors by kw_op_wire_encode straight from the cache rows, the section framing (head, index block, zstd,
 * checksums) by the CPU encoder around them (kw_wire_encoder_begin_section / finish_section), and only the encoded
 * tensor bytes are downloaded, into pinned memory (kw_backend_host_alloc). The bytes are the CPU encoder's. Outlier
 * tables are chosen on the device, the table written on the host from the chosen list; clipped scales are searched
 * there (kw_op_wire_encode_clip); pre-RoPE keys are rotated back there from the host's cosine and sine table
 * (kw_config_rope_table, kw_op_rope_table); a whole-layer plan's layers are plain policies. A per-token byte
 * cap downloads the rows for its allocator, then encodes the kept rows' token groups on the device from the cache.
 * Every section the device cannot encode falls back to the CPU encoder on the downloaded rows, section by section: a
 * codec the device refuses, an outlier choice past the device's 2^32 - 1 elements, a rotation or pre-RoPE keys with a
 * head_dim above 1024, or token groups of a token schedule.
 */
#ifndef KW_SHARE_WIRE_H
#define KW_SHARE_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "c2c/kw_share.h"
#include "model/kw_config.h"
#include "wire/kw_wire.h"
#include "wire/kw_wire_alloc.h"

/* Receives consecutive bytes of the blobs, in order (blob is the sent section's ordinal). A negative return stops. */
typedef int (*kw_share_bytes_fn)(void *user, int32_t blob, const void *data, size_t n);

/* A codec override for one sharer layer; with own_options also its rotation and clipping bits and code limits
 * (kw_wire_policy's rotate, clip, code_limit_k and code_limit_v) instead of the policy's. */
typedef struct kw_share_layer_codec {
    uint32_t layer;
    kw_wire_codec_spec k, v;
    int own_options;
    uint8_t rotate, clip;
    uint8_t code_limit_k, code_limit_v;
} kw_share_layer_codec;

/* A byte cap on all the blobs of one request (docs/HTTP_API.md "budget_bytes"). Every layer's candidate rows go
 * through the rate-distortion allocator (wire/kw_wire_alloc.h), which drops rows or gives each its own codec.
 *
 * The cap is split while the layers stream, never across layers after the fact: the header and trailer bytes of
 * every blob and the smallest possible section (one token, the cheapest codec) of every layer are reserved up
 * front; each layer may then spend its smallest section plus a share of what is left beyond the reservation,
 * proportional to its section's length among the layers still to come (the last layer gets all of it); whatever a
 * layer does not spend (and what zstd saves) rolls over to the later ones. The measured blob bytes of the request
 * are therefore at most the cap, and kw_share_wire_create refuses a cap below the reservation, naming it.
 *
 * kv_direct (same_positions): the receiver's validity mask is one set of positions for every layer, so only a
 * blob's first layer may drop rows. There the blob's share of the cap (its layers' smallest sections plus its
 * length-weighted part of the rest, all of it for the last blob) is divided by its layer count, and the allocator,
 * with only the cheapest codec, picks the kept positions within that quotient: every layer of the blob can then carry
 * them at the cheapest codec. Each layer of the blob, the first included, keeps exactly those positions and the
 * allocator (keep_all) only upgrades their codecs within the layer's share, the reservation for the blob's later
 * layers being the kept set at the cheapest codec instead of one token. The codec of a position may differ between
 * layers. A kept row that the cheapest codec cannot represent in a later layer is an error (KW_E_LIMIT). */
typedef struct kw_share_budget {
    uint64_t bytes; /* the cap on every blob of the request together; 0: no cap (the rest is ignored) */
    kw_wire_codec_spec codecs[KW_WIRE_ALLOC_MAX_CODECS]; /* the codecs a token may get (besides dropping) */
    uint32_t n_codecs;
    enum kw_select_mode weight; /* knorm_topk / vnorm_topk: tokens weigh their norm score; other modes: 1 */
    int same_positions;         /* kv_direct: the positions a blob's first layer keeps are every layer's */
    /* a whole-layer baseline (kvcomm_like, qkvcomm_like; wire/kw_wire_alloc.h kw_wire_plan_layers): no allocator;
     * the caller planned the layers and their codecs (the options' policy and overrides, each layer's codec one of
     * codecs) within the cap, and the encoder only counts the rows per codec */
    enum kw_wire_budget_mode mode;
    uint64_t plan_min_bytes;   /* the plan's smallest cap */
    const uint32_t *blob_rows; /* borrowed: the plan's rows per layer of each blob (a layer may carry fewer) */
    /* the request's shape, to reserve the mandatory bytes before the first layer */
    const int64_t *blob_lengths; /* borrowed: the length of each sent section (one blob each) */
    int32_t n_blobs;
    int32_t n_layers; /* layers per blob */
    int64_t n_positions;
    int32_t n_heads, head_dim;
} kw_share_budget;

typedef struct kw_share_wire_options {
    kw_wire_policy policy;                 /* every layer's (n_groups must be 0) */
    const kw_share_layer_codec *overrides; /* borrowed; strictly increasing layers; NULL if none */
    int32_t n_overrides;
    kw_share_budget budget; /* a byte cap (budget.bytes > 0): the policy's codecs are replaced by the allocator's
                               choice, its index encoding and zstd level stay; no overrides then */
    /* KVWire v1.1 (docs/FORMAT.md §5.10, §5.11; not with a byte cap): */
    double outlier_fraction;         /* this share of each section's K and V elements sent exact (0: none), bf16
                                        values with a bf16 cache (pre-RoPE keys rounded to it), else f32 */
    const kw_model_config *pre_rope; /* borrowed, non-NULL: K sent before RoPE, each row rotated back by its
                                        position with this model's rotation (kv_direct: the receiver runs it) */
    /* A per-token schedule (SharePolicy.token_schedule; not with a byte cap): in every layer whose K or V codec
     * quantizes, the selected rows a rule covers (by position; from_end counts from kw_share_layer.n_positions) form
     * token groups of their own with its codecs (kw_wire_token_split). A row two rules cover fails the layer with
     * KW_E_INVALID_ARG. Those sections are encoded by the CPU (the device encoder takes no groups). */
    const kw_wire_token_rule *token_rules; /* borrowed */
    uint32_t n_token_rules;
    uint64_t model_id; /* the blob header's opaque identities */
    uint32_t policy_id;
    kw_share_bytes_fn write;
    void *user;
} kw_share_wire_options;

typedef struct kw_share_wire_stats {
    uint64_t blob_bytes; /* every byte written */
    int32_t blobs, sections, compressed_sections;
    int32_t device_sections;     /* of the sections, those whose tensors were encoded on the device */
    double encode_ms;            /* encoding, writes excluded */
    double write_ms;             /* time in the byte callback */
    kw_wire_breakdown breakdown; /* summed over the blobs */
    /* with a byte cap: the slack is budget_bytes - blob_bytes */
    uint64_t budget_bytes;     /* the cap (0: none) */
    uint64_t budget_min_bytes; /* the reservation: the smallest cap this request accepts */
    /* the histogram; a whole-layer baseline counts every row of the layers sent as a candidate, none dropped, and has
     * no distortion (nothing is measured) */
    uint64_t tokens_candidate;                           /* rows offered to the allocator, over every layer */
    uint64_t tokens_dropped;                             /* of them, left out */
    uint64_t tokens_per_codec[KW_WIRE_ALLOC_MAX_CODECS]; /* kept, per budget codec (in budget.codecs order) */
    double distortion;                                   /* the allocator's total (kw_wire_alloc.h), over the layers */
} kw_share_wire_stats;

typedef struct kw_share_wire kw_share_wire;

/* opt is copied (overrides, token_rules, budget.blob_lengths and budget.blob_rows stay borrowed). *out is owned by the
 * caller (kw_share_wire_free). Errors: KW_E_INVALID_ARG (policy, overrides, budget codecs, a cap below the request's
 * minimum, naming it). */
int kw_share_wire_create(const kw_share_wire_options *opt, kw_share_wire **out);

/* Frees it; NULL is a no-op. */
void kw_share_wire_free(kw_share_wire *w);

/* Encodes one layer and writes its bytes. Use as (or from) kw_share_run's on_layer. */
int kw_share_wire_layer(kw_share_wire *w, const kw_share_layer *layer);

/* kw_share_run's callback form: user is the kw_share_wire. */
int kw_share_wire_on_layer(void *user, const kw_share_layer *layer);

/* The statistics so far (owned by w). */
const kw_share_wire_stats *kw_share_wire_get_stats(const kw_share_wire *w);

/* The codec policy for a sharer layer: the base policy with that layer's override applied. */
void kw_share_wire_policy_for(const kw_share_wire_options *opt, uint32_t layer, kw_wire_policy *out);

#endif /* KW_SHARE_WIRE_H */
