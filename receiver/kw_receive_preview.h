/* kw_receive_preview.h: the receiver's half of the receiver-aware selections with "scoring: receiver"
 * (docs/PROTOCOL.md "Receiver-aware selections"): the sharer sends a preview, every row of each sent layer of a
 * sent section as one KVWire blob at a cheap codec (the sharer half with select full); the receiver decodes it and
 * scores the decoded rows as the sharer rows (c2c/kw_rscore.h kw_rscore_select: proj_vnorm_topk projects them,
 * delta_proj_vnorm_topk projects them quantized again with the request's codec, minus its own base rows), and
 * appends each layer's selection to a c2c/kw_rselect.h selection, which goes back to the sharer.
 * Not here: the scores, the selection's encoding, sockets.
 */
#ifndef KW_RECEIVE_PREVIEW_H
#define KW_RECEIVE_PREVIEW_H

#include <stddef.h>
#include <stdint.h>

#include "c2c/kw_fusion.h"
#include "c2c/kw_rscore.h"
#include "c2c/kw_rselect.h"

typedef struct kw_receive_preview_stats {
    double decode_ms; /* reading and dequantizing the preview */
    double score_ms;  /* kw_rscore_select (projections, norms, top-k) */
    int64_t layers;   /* preview sections (sharer layers) scored */
    int64_t rows;     /* preview rows */
} kw_receive_preview_stats;

/* Scores one preview blob (len bytes, borrowed) of sharer `sharer` of fusion f with scorer r (made for that sharer):
 * every KVWire section must carry the contiguous rows of one section of the prefix in the sharer's geometry. Each
 * layer's selection (pol's top-k per target) is appended to sel; *stats (may be NULL) is added to. Errors: the
 * decoder's, KW_E_SHAPE (geometry), KW_E_PARSE (rows that are not one whole section), kw_rscore_select's. */
int kw_receive_preview_score(kw_rscore *r, kw_fusion *f, int32_t sharer, const kw_select_policy *pol, const void *blob,
                             size_t len, kw_rselect *sel, kw_receive_preview_stats *stats);

#endif /* KW_RECEIVE_PREVIEW_H */
