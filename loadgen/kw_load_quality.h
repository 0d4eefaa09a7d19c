/* kw_load_quality.h: quality without labels: a policy judged against a reference run (full transfer, no quantization)
 * on the same items.
 *
 * What is computed, exactly:
 *  - answer agreement: per item, the two runs' extracted answers are equal (both none counts as equal); for a plain
 *    prompt list, the two output texts are equal byte for byte;
 *  - free-running token agreement: per item, the positions t < min(n_ref, n_pol) where both greedy outputs have the
 *    same token id, over max(n_ref, n_pol) positions (a length difference counts as disagreement); pooled over items;
 *  - teacher-forced top-1 agreement: the reference's continuation is fed to the judged policy (kvwire.force_tokens)
 *    and, at each position, its most likely next token is compared with the reference's token there (receiverd
 *    counts it: kvwire.teacher_forcing); pooled over positions of all items;
 *  - mean KL: at each forced position, KL(P_ref || P_pol) in nats over the reference's top-k tokens plus one bucket
 *    for the rest of the vocabulary: sum_i p_i (log p_i - log q_i) + p_r (log p_r - log q_r), with p_i the
 *    reference's probabilities of its top-k ids, q_i the judged policy's probabilities of the same ids
 *    (kvwire.score_ids / scored_logprobs), p_r = 1 - sum p_i and q_r = 1 - sum q_i (floored at 1e-12; a term with
 *    p_r = 0 is 0). Merging the other tokens into one bucket can only lower a KL divergence, so this is a lower bound
 *    of the full-vocabulary KL, equal to it when the top-k hold all the mass; averaged over all forced positions.
 * Each comes with a 95% percentile-bootstrap interval over items (kw_load_bootstrap_ratio).
 */
#ifndef KW_LOAD_QUALITY_H
#define KW_LOAD_QUALITY_H

#include <stddef.h>
#include <stdint.h>

#include "loadgen/kw_load_map.h"
#include "loadgen/kw_load_reply.h"

/* One item of a reference run, from its records.jsonl. */
typedef struct kw_load_ref_item {
    char *item_id;      /* owned */
    char *answer;       /* owned; NULL when none was extracted */
    char *output;       /* owned: the output text */
    int has_ids;        /* the record had output_ids */
    int has_top;        /* ... and top_logprobs for every position */
    kw_load_tokens tok; /* ids, their log-probabilities, top-k alternatives */
} kw_load_ref_item;

typedef struct kw_load_refset {
    kw_load_ref_item *items; /* owned, n; successful records only */
    size_t n;
    kw_load_map by_id;    /* item_id -> index */
    char *dataset_sha256; /* owned: the reference run's dataset digest (run.json), or NULL */
    char *dataset_name;   /* owned */
} kw_load_refset;

/* Reads a reference run folder (run.json and records.jsonl; the first successful record of each item is kept).
 * @return 0; KW_E_IO/KW_E_NOT_FOUND (missing files), KW_E_PARSE (a malformed line: the detail names it), KW_E_NOMEM. */
int kw_load_refset_read(const char *run_dir, kw_load_refset *out);

/* The reference item with this id, or NULL. */
const kw_load_ref_item *kw_load_refset_find(const kw_load_refset *s, const char *item_id);

void kw_load_refset_free(kw_load_refset *s);

/* Free-running agreement counts of two token sequences: *match positions with equal ids among the first
 * min(na, nb), *total = max(na, nb). */
void kw_load_token_agreement(const int32_t *a, size_t na, const int32_t *b, size_t nb, size_t *match, size_t *total);

/* KL(P_ref || P_pol) over k reference top ids plus the rest bucket (see above), in nats. ref_lps and pol_lps are
 * natural-log probabilities of the same k ids. Non-finite inputs give NAN. */
double kw_load_kl_topk(const double *ref_lps, const double *pol_lps, size_t k);

#endif /* KW_LOAD_QUALITY_H */
