/* kw_rscore.h: the receiver-aware selection scores (latentwire_spec.md §4.3), the one scoring core of both
 * placements: "scoring: local", a sharer that holds the receiver model and the fuser scores its own rows; "scoring:
 * receiver", the receiver scores the rows of a preview blob the sharer sent (receiver/kw_receive_preview.h), the
 * decoded preview rows taking the place of the sharer rows below, and sends the selection back (c2c/kw_rselect.h).
 * For one sent sharer layer s of a section of T positions:
 *   proj_vnorm_topk        score_t[p] = mean over the receiver's kv heads h of ||fusedV_t[p, h, :]||_2, fusedV_t the V
 *                          output of receiver layer t's projector on the unquantized sharer rows and the receiver's
 *                          own rows of layer t (base);
 *   delta_proj_vnorm_topk  score_t[p] = mean over h of ||fusedV_t(q(src))[p, h, :] - baseV_t[p, h, :]||_2, q the
 *                          request's codec (a quantize hook: a KVWire encode/decode round trip; none = exact);
 * for every receiver layer t with an open gate that s feeds (kw_fusion_layer_targets). The base is the receiver's
 * unfused prefill of the shared prefix (its own token ids, its padding hidden) in a cache of the request's dtype,
 * read back as the cache holds it; with one fused section this is the base the fusion projects onto, with several
 * (or several sharers in sequence) later sections' base rows are taken unfused. Norms are summed in fp32 in head
 * order (kernels/kw_select_math.h, as vnorm_topk), so the selection is the same on every CPU ISA and thread count as
 * far as the projector's output is.
 * Selection per (source, target) pair, as the reference: every target t gets the top-k of its own score_t; the sharer
 * sends the union of the targets' selections (one KVWire section per source layer) and, when s feeds more than one
 * target, one bitmap per target over the section's positions, so that each target fuses exactly its own top-k
 * (kw_fusion_rows.target_masks; on the wire PROTOCOL.md SHARE_TARGETS).
 * Not here: the top-k rule (kw_select_top_scores), codecs (the hook), frames and sockets.
 */
#ifndef KW_RSCORE_H
#define KW_RSCORE_H

#include <stdint.h>

#include "c2c/kw_fusion.h"
#include "c2c/kw_select.h"
#include "c2c/kw_share.h"
#include "model/kw_model.h"

/* Rewrites n rows k, v (n, heads, head_dim) f32 of sharer layer `layer` in place with what the receiver would
 * decode. */
typedef int (*kw_rscore_quantize_fn)(void *user, int32_t layer, int64_t n, int32_t heads, int32_t head_dim, float *k,
                                     float *v);

typedef struct kw_rscore_options {
    enum kw_select_mode mode;            /* KW_SELECT_PROJ_VNORM or KW_SELECT_DELTA_PROJ_VNORM */
    enum kw_projector_numerics numerics; /* the request's (what fusion will run) */
    enum kw_dtype cache_dtype;           /* the receiver's cache dtype: KW_DTYPE_BF16 or KW_DTYPE_F32 */
    const uint8_t *pad;                  /* NULL, or one flag per prefix position: 1 = receiver padding (borrowed) */
    kw_rscore_quantize_fn quantize;      /* delta only; NULL: the rows arrive exactly */
    void *quantize_user;
} kw_rscore_options;

typedef struct kw_rscore_stats {
    double prefill_ms;    /* the receiver's prefill of the prefix */
    double projection_ms; /* base reads, quantization round trips, projections and norms */
    int64_t projections;  /* (source layer, target layer, section) projections run */
} kw_rscore_stats;

typedef struct kw_rscore kw_rscore; /* opaque: the receiver's base cache and scratch (owned), models borrowed */

/* Prefills the receiver model on its ids[0..n) of the shared prefix (borrowed for the call) and gets ready to score
 * for sharer `sharer` of fusion f (whose receiver is `receiver`). receiver, f and opt->pad must outlive the scorer.
 * *out is owned by the caller (kw_rscore_free). Errors: KW_E_INVALID_ARG, the model's. */
int kw_rscore_create(kw_model *receiver, kw_fusion *f, int32_t sharer, const int32_t *ids, int64_t n,
                     const kw_rscore_options *opt, kw_rscore **out);

/* Releases the base cache and scratch. NULL is a no-op. */
void kw_rscore_free(kw_rscore *r);

/* The scores of the T rows [pos0, pos0 + T) of sharer layer source_layer (k, v: (T, sharer kv heads, head_dim) f32,
 * borrowed, unquantized), one row of T floats per target of the layer into scores (receiver layers T floats of
 * room), the targets (ascending receiver layers) into targets (receiver layers entries; may be NULL) and their count
 * into *n_targets (0: the layer feeds no open target). Errors: KW_E_INVALID_ARG (range), the projector's, the
 * hook's. */
int kw_rscore_layer(kw_rscore *r, int32_t source_layer, int64_t pos0, int64_t T, const float *k, const float *v,
                    float *scores, int32_t *targets, int32_t *n_targets);

/* The selection of those rows: each target's top-k (pol's count, ties to the lower position, non-finite never
 * chosen), their union into out (ascending offsets in [0, T), T entries of room; *n_out of them) and, when the layer
 * feeds more than one target, *targets: the receiver layers and one bitmap per target over the T offsets (LSB
 * first), owned by r and valid until the next call (targets->n 0: every target fuses every row sent). */
int kw_rscore_select(kw_rscore *r, const kw_select_policy *pol, int32_t source_layer, int64_t pos0, int64_t T,
                     const float *k, const float *v, int64_t *out, int64_t *n_out, kw_share_targets *targets);

/* kw_rscore_select as kw_share_options' select hook (c2c/kw_share.h): user is the kw_rscore. */
int kw_rscore_share_select(void *user, const kw_select_policy *pol, int32_t layer, int64_t pos0, int64_t T,
                           const float *k, const float *v, int64_t *out, int64_t *n_out, kw_share_targets *targets);

/* The score of each of T rows from fused V rows fused_v (T, H, D): mean over heads of ||fused_v - base_v|| (base_v
 * may be NULL: ||fused_v||), fp32, heads in order. Pure. */
void kw_rscore_vnorm(int64_t T, int32_t H, int32_t D, const float *fused_v, const float *base_v, float *out);

/* The stats so far (owned by r). */
const kw_rscore_stats *kw_rscore_get_stats(const kw_rscore *r);

#endif /* KW_RSCORE_H */
