/* kw_select.h: which token positions of a section a sharer sends (latentwire_spec.md §4, done deterministically).
 *
 * Modes, for T tokens and a proportion p:
 *   full               every position (p is ignored)
 *   front / back       the first / last k positions
 *   random             k distinct positions drawn by a seeded generator (splitmix64 of seed, section and layer), so
 *                      the same request gives the same draw on every machine; the reference's draw was unseeded
 *   knorm / vnorm      the k positions with the largest score[t] = mean over heads of ||X[h, t, :]||_2 (X = K or V),
 *                      computed in fp32 in one fixed order; ties go to the lower position (the reference's torch.topk
 *                      left them unspecified); positions with a non-finite score are never chosen
 *   proj_vnorm_topk    receiver-aware (§4.3): the same top-k on a score the caller computes from the receiver's side,
 *   delta_proj_vnorm_topk  mean over the receiver's heads of ||fusedV|| or ||fusedV(quantized rows) - base V||
 *                      (c2c/kw_rscore.h); kw_select_positions cannot make it, kw_select_top_scores takes the scores
 * with k = round_half_even(T * p) (Python's round), then max(min_tokens, k), then min(k, T). The result is sorted
 * ascending. The reference's hidden minimum of 64 tokens (§4.4) is not a default here: min_tokens defaults to 1.
 *
 * Each mode is a ranking of the positions whose first k entries are its selection: front 0, 1, ...; back T - 1,
 * T - 2, ...; random the order of the seeded shuffle; the norm modes the score order (ties to the lower position);
 * full is front. A policy with skip > 0 (round two of a refinement, docs/PROTOCOL.md §5.1) selects the ranks
 * [skip, k) only: the tokens a policy of a larger proportion adds to one whose count was skip, so that the two
 * rounds together are exactly the larger policy's selection.
 * Pure: no I/O, no allocation but the caller's buffers.
 */
#ifndef KW_SELECT_H
#define KW_SELECT_H

#include <stdint.h>

enum kw_select_mode {
    KW_SELECT_FULL = 0,
    KW_SELECT_FRONT = 1,
    KW_SELECT_BACK = 2,
    KW_SELECT_RANDOM = 3,
    KW_SELECT_KNORM = 4,
    KW_SELECT_VNORM = 5,
    KW_SELECT_PROJ_VNORM = 6,
    KW_SELECT_DELTA_PROJ_VNORM = 7,
    KW_SELECT_COUNT = 8,
};

typedef struct kw_select_policy {
    enum kw_select_mode mode;
    double proportion;  /* in [0, 1] (full: ignored) */
    int64_t min_tokens; /* >= 1 */
    uint64_t seed;      /* random only */
    int64_t skip;       /* >= 0: the first skip ranks are left out (0: a plain selection) */
} kw_select_policy;

/* "full", "front", "back", "random", "knorm_topk", "vnorm_topk", "proj_vnorm_topk", "delta_proj_vnorm_topk"; NULL
 * for an invalid mode. */
const char *kw_select_mode_name(enum kw_select_mode mode);

/* The mode called name (the names above), or KW_E_INVALID_ARG. */
int kw_select_mode_parse(const char *name, enum kw_select_mode *out);

/* Checks a policy's fields (KW_E_INVALID_ARG with the reason). */
int kw_select_policy_check(const kw_select_policy *pol);

/* 1 for the modes whose scores need the receiver's rows and the fuser (proj_vnorm_topk, delta_proj_vnorm_topk). */
int kw_select_mode_receiver_aware(enum kw_select_mode mode);

/* The number of positions the policy's ranking keeps out of T (before non-finite scores are dropped), skip
 * included: the rows sent are kw_select_count - skip. */
int64_t kw_select_count(const kw_select_policy *pol, int64_t T);

/* Checks a skip against the count of a section of T tokens: KW_E_INVALID_ARG unless 0 <= skip < count (round two
 * must add at least one token). skip 0 always passes. */
int kw_select_check_skip(const kw_select_policy *pol, int64_t T);

/* The score of each of T tokens, out[t] (T floats): knorm / vnorm the norm score above (k or v is (T, H, D) f32,
 * the other may be NULL), every other mode 1 (no rows read; the receiver-aware modes' scores come from kw_rscore).
 * The rate-distortion allocator weighs tokens with it. */
void kw_select_scores(enum kw_select_mode mode, int64_t T, int32_t H, int32_t D, const float *k, const float *v,
                      float *out);

/* Selects among T tokens. k and v are (T, H, D) f32 host arrays (row-major, token first), read only for the norm
 * modes (may be NULL otherwise). section and layer feed the random draw. Writes *n_out <= T ascending offsets in
 * [0, T) to out (T entries of room): the ranks [skip, k), so with skip > 0 fewer (none if the finite scores end
 * before rank skip). scratch: T floats (norm modes; may be NULL otherwise). Errors: KW_E_INVALID_ARG (the policy, a
 * skip not below the count). The receiver-aware modes are refused (KW_E_INVALID_ARG): their scores come from
 * elsewhere, see kw_select_top_scores. */
int kw_select_positions(const kw_select_policy *pol, int64_t T, int32_t H, int32_t D, const float *k, const float *v,
                        int32_t section, int32_t layer, float *scratch, int64_t *out, int64_t *n_out);

/* The top-k of T given scores (borrowed), k = kw_select_count(pol, T) whatever pol's mode: the largest first, ties to
 * the lower position, non-finite scores never chosen. Writes *n_out ascending offsets to out (T entries of room). */
int kw_select_top_scores(const kw_select_policy *pol, int64_t T, const float *scores, int64_t *out, int64_t *n_out);

#endif /* KW_SELECT_H */
