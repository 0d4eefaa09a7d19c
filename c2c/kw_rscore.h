/* kw_rscore.h: the receiver-aware selection scores (latentwire_spec.md §4.3), for a sharer that holds the receiver
 * model and the fuser ("scoring: local"). For one sent sharer layer s of a section of T positions:
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
 * Selection granularity, a simplification of the reference's per-(source, target) pair selection: the sharer sends
 * one selection per source layer, and its score is the maximum over the layer's targets of score_t (a row that
 * matters to any target it feeds is kept). With a fuser that maps every source layer to one target (the usual
 * one-to-one or strided mappings) this is exactly the per-pair selection.
 * Not here: the top-k (kw_select_top_scores), codecs (the hook), sockets.
 */
#ifndef KW_RSCORE_H
#define KW_RSCORE_H

#include <stdint.h>

#include "c2c/kw_fusion.h"
#include "c2c/kw_select.h"
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
 * borrowed, unquantized) into scores (T floats): the maximum over the layer's targets (see above); a layer with no
 * open target scores 0 everywhere. Errors: KW_E_INVALID_ARG (range), the projector's, the hook's. */
int kw_rscore_layer(kw_rscore *r, int32_t source_layer, int64_t pos0, int64_t T, const float *k, const float *v,
                    float *scores);

/* kw_rscore_layer as kw_share_options' score hook (c2c/kw_share.h): user is the kw_rscore. */
int kw_rscore_share_score(void *user, int32_t layer, int64_t pos0, int64_t T, const float *k, const float *v,
                          float *scores);

/* The score of each of T rows from fused V rows fused_v (T, H, D): mean over heads of ||fused_v - base_v|| (base_v
 * may be NULL: ||fused_v||), fp32, heads in order. Pure. */
void kw_rscore_vnorm(int64_t T, int32_t H, int32_t D, const float *fused_v, const float *base_v, float *out);

/* The stats so far (owned by r). */
const kw_rscore_stats *kw_rscore_get_stats(const kw_rscore *r);

#endif /* KW_RSCORE_H */
