/* run_check.h: an independent check of a kvload run folder: the records are added up here, without
 * kw_load_summary.c, and every summary figure that follows from them must match (counts, accuracy = correct / graded,
 * byte totals = sums, means); forced.jsonl's pooled top-1 rate must equal the summary's. Test-only code, shared by the
 * in-process end-to-end test and the kvload_check helper the shell tests run (against the stub and the daemons). */
#ifndef KW_RUN_CHECK_H
#define KW_RUN_CHECK_H

#include <stddef.h>

/* What the records say. */
typedef struct run_tally {
    size_t n, ok, failed, graded, correct, with_ttft, with_ids;
    double blob, socket_in, socket_out, text, e2el, out_tokens;
    const double *want_sched; /* open loop: the expected send schedule (ms) by index, or NULL */
    char first_error[64];
    char why[256]; /* the first problem found (tally) */
} run_tally;

/* Adds up dir/records.jsonl. @return 0, or -1 with the reason in t->why. */
int run_tally_records(const char *dir, run_tally *t);

/* Checks dir/summary.json (complete, counts, accuracy, bytes, means, quality against forced.jsonl) against t.
 * @return 0, or -1 with the reason in why (cap bytes). */
int run_check_summary(const char *dir, const run_tally *t, char *why, size_t cap);

#endif /* KW_RUN_CHECK_H */
