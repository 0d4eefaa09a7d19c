/* kw_wire_alloc.h: a rate-distortion allocator for one KVWire section under an exact byte cap. Given a layer's
 * candidate tokens (their K/V rows and a weight each) and a set of allowed codecs, it chooses per token either to
 * drop it or to send it with one codec (the same for K and V), so that the section's exact size
 * (kw_wire_section_size: head, token-group table, index block, scales, codes, checksum) is at most the budget and
 * the total distortion is small.
 *
 * Distortion model (measured, not assumed). For a token t with weight w_t and rows x_t (its K and V, every head):
 *   D(t, drop) = w_t
 *   D(t, c)    = w_t * ||x_t - Q_c(x_t)||^2 / ||x_t||^2      (0 when x_t is all zero)
 * where Q_c is the real codec: the scale rule, rounding and clamping of kw_wire_quant.h applied to the token's own
 * rows, so codecs must be token-local (granularity token or group, or a passthrough codec; a layer or head scale
 * would make one token's error depend on the others). The error is summed in fp64 in one fixed order.
 *
 * Algorithm (greedy on convex hulls, the discrete form of the Lagrangian solution): each token's options, sorted by
 * bytes, are reduced to their lower convex hull starting at drop; a move is the step to the next hull point and its
 * efficiency is the distortion it removes per byte (the codec's own bytes: codes and scales of K and V). Moves are
 * taken in order of efficiency (ties: the lower candidate first), each one only if the section's exact size stays
 * within the budget and its token groups within KW_WIRE_MAX_GROUPS (the size is kept exact move by move from the
 * token's kept neighbours, O(gap) a move, and checked against kw_wire_section_size at the end); when a hull step
 * does not fit, the token's cheaper options that still lower its distortion are
 * tried once, best efficiency first, and the token is then finished. A token with nothing to gain (weight 0) still
 * takes its cheapest codec at efficiency 0, after every useful move. Everything is in fixed-order fp64 / integer
 * arithmetic: the same input gives the same choice on every CPU and thread count.
 *
 * Keeping every token (keep_all): each hull starts at the cheapest codec (kw_wire_alloc_cheapest) instead of drop, so
 * the same greedy only spends the budget beyond "every token at its cheapest codec" on upgrades.
 *
 * Reduction: with one codec that reconstructs the rows exactly (error 0), every token's only move has efficiency
 * w_t / bytes with equal bytes, so the moves run in the order of weight, then position: the kept set is the top-k
 * by weight (ties to the lower position) for the largest k that fits, which is what kw_select_positions picks.
 *
 * Pure: no I/O, no global state; the allocator owns its scratch buffers and its result.
 */
#ifndef KW_WIRE_ALLOC_H
#define KW_WIRE_ALLOC_H

#include <stdint.h>

#include "wire/kw_wire.h"

#define KW_WIRE_ALLOC_MAX_CODECS 8

/* The choices a section may use. */
typedef struct kw_wire_alloc_options {
    const kw_wire_codec_spec *codecs; /* borrowed: 1..KW_WIRE_ALLOC_MAX_CODECS distinct token-local specs */
    uint32_t n_codecs;
    uint8_t index_encoding; /* enum kw_wire_index the section will use (KW_WIRE_INDEX_AUTO: the smallest) */
} kw_wire_alloc_options;

/* One section's candidates. */
typedef struct kw_wire_alloc_input {
    const kw_wire_header *hdr; /* borrowed: the blob's (H, D, n_positions) */
    uint32_t n_tokens;         /* candidates, >= 1 */
    const uint32_t *positions; /* borrowed: n_tokens strictly increasing positions < n_positions */
    const float *k, *v;        /* borrowed: (n_tokens, H, D) f32, token first */
    const float *weight;       /* borrowed: n_tokens weights (NULL: all 1); a non-finite or negative one is never
                                  kept, nor is a token with a non-finite value */
    uint64_t budget;           /* the most bytes the section may take */
    int keep_all;              /* 1: drop nothing (kv_direct's later layers: the positions are fixed); every token
                                  starts at the cheapest codec (kw_wire_alloc_cheapest) and only moves up from there */
} kw_wire_alloc_input;

/* The choice (owned by the allocator, valid until its next run or free). */
typedef struct kw_wire_alloc_result {
    uint32_t n_kept;
    const uint32_t *rows;              /* n_kept candidate indices, ascending */
    const uint32_t *positions;         /* their positions */
    const uint8_t *choice;             /* n_tokens entries: 0 dropped, 1 + i for codecs[i] */
    const kw_wire_token_group *groups; /* runs of kept tokens with one codec, in order */
    uint32_t n_groups;
    uint64_t bytes;                               /* the section's exact size (uncompressed), <= budget */
    double distortion;                            /* sum of D(t, choice) over the candidates with a finite weight */
    uint32_t per_codec[KW_WIRE_ALLOC_MAX_CODECS]; /* kept tokens per codec */
} kw_wire_alloc_result;

typedef struct kw_wire_alloc kw_wire_alloc;

/* *out is owned by the caller (kw_wire_alloc_free). */
int kw_wire_alloc_create(kw_wire_alloc **out);

/* Frees it; NULL is a no-op. */
void kw_wire_alloc_free(kw_wire_alloc *a);

/* Checks the options against a header: codecs valid for head_dim, token-local, distinct (KW_E_INVALID_ARG). */
int kw_wire_alloc_check(const kw_wire_header *hdr, const kw_wire_alloc_options *opt);

/* The index into opt->codecs of the codec with the fewest bytes per token (ties: the first listed). */
int kw_wire_alloc_cheapest(const kw_wire_header *hdr, const kw_wire_alloc_options *opt, uint32_t *out);

/* The size every section needs at least: one token with the cheapest codec and the index encoding's worst case for
 * one token (kw_wire_section_bound). A budget of this much always keeps one token. */
int kw_wire_alloc_min_bytes(const kw_wire_header *hdr, const kw_wire_alloc_options *opt, uint64_t *out);

/* The smallest byte cap of n_blobs blobs with this header (hdr->n_sections sections each, every section at least the
 * one token of kw_wire_alloc_min_bytes): their headers, trailers and smallest sections. */
int kw_wire_alloc_min_blob_bytes(const kw_wire_header *hdr, const kw_wire_alloc_options *opt, uint32_t n_blobs,
                                 uint64_t *out);

/* 0 if cap holds kw_wire_alloc_min_blob_bytes, else KW_E_INVALID_ARG naming that minimum. */
int kw_wire_alloc_check_cap(const kw_wire_header *hdr, const kw_wire_alloc_options *opt, uint32_t n_blobs,
                            uint64_t cap);

/* Chooses. Keeps at least one token; KW_E_LIMIT (with both numbers) if no token fits the budget or none is
 * representable. With in->keep_all, KW_E_LIMIT also when the tokens at their cheapest codecs do not fit or one of
 * them is not representable. *out points into the allocator. */
int kw_wire_alloc_run(kw_wire_alloc *a, const kw_wire_alloc_options *opt, const kw_wire_alloc_input *in,
                      const kw_wire_alloc_result **out);

/* ------------------------------------------------------------------------------------------------------------
 * Whole-layer baselines under the same byte cap (docs/HTTP_API.md "budget_mode"): every sent layer carries all its
 * selected rows with one codec, so a blob's size is known before any row exists (kw_wire_section_bound: the index
 * encoding's worst case, never under the written size) and the plan is exact arithmetic on the request's shape.
 *  - kvcomm_like: codecs[0] for every sent layer; as many whole layers as fit the cap, taken middle-first among the
 *    candidates (the candidate nearest the middle of the list first, ties to the lower one). KVComm ranks layers by
 *    their measured attention importance; this stand-in is data-free so that the receiver, which must know which
 *    layers it fuses before the sharer runs, and the sharer compute the same list. The rest are not sent.
 *  - qkvcomm_like: every candidate is sent, at codecs[0] (int4) first, its cost charged; layers are then upgraded
 *    to codecs[1] (int8) deepest first (the last candidate first) while the cap holds the upgrade.
 */
enum kw_wire_budget_mode {
    KW_WIRE_BUDGET_TOKENS = 0,       /* the per-token rate-distortion allocator above */
    KW_WIRE_BUDGET_KVCOMM_LIKE = 1,  /* whole layers at one codec, the rest not sent */
    KW_WIRE_BUDGET_QKVCOMM_LIKE = 2, /* every layer, int4 or int8 per layer */
};

/* "tokens", "kvcomm_like", "qkvcomm_like" (NULL for another value). */
const char *kw_wire_budget_mode_name(enum kw_wire_budget_mode mode);

/* The request's shape for a whole-layer plan. */
typedef struct kw_wire_layer_plan_input {
    const kw_wire_header *hdr; /* borrowed: heads, head_dim, n_positions (the layer counts are not used) */
    uint32_t n_layers;         /* candidate layers, in ascending layer order, >= 1 */
    const uint32_t *blob_rows; /* borrowed: n_blobs entries, the rows each layer of that blob carries (>= 1) */
    uint32_t n_blobs;
    const kw_wire_codec_spec *codecs; /* borrowed: kvcomm_like 1, qkvcomm_like 2 (the cheap one first) */
    uint32_t n_codecs;
    uint8_t index_encoding;
    uint64_t cap;
} kw_wire_layer_plan_input;

/* Plans mode (kvcomm_like or qkvcomm_like): choice[i] (n_layers entries, the caller's) is 0 for a candidate not sent,
 * else 1 + the index of its codec; *bytes is the blobs' bound under that plan (<= cap) and *min_bytes the smallest cap
 * the request takes (one layer at codecs[0], or every layer at codecs[0]). Errors: KW_E_INVALID_ARG (a cap below
 * *min_bytes, naming it; bad input). */
int kw_wire_plan_layers(enum kw_wire_budget_mode mode, const kw_wire_layer_plan_input *in, uint8_t *choice,
                        uint64_t *bytes, uint64_t *min_bytes);

/* The policy that encodes the result: the groups, the index encoding and zstd_level (borrows from the result). */
void kw_wire_alloc_policy(const kw_wire_alloc_result *res, const kw_wire_alloc_options *opt, int zstd_level,
                          kw_wire_policy *out);

#endif /* KW_WIRE_ALLOC_H */
