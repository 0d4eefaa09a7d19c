/* kw_load_report.h: `kvload report`: run folders (their summary.json) to the files users look at first.
 *
 *   report.csv             one row per run: labels, policy, accuracy and agreement with 95% intervals, bytes per
 *                          request, throughput, latency (the columns are listed in the header row)
 *   quality_vs_bytes.svg   the metric (accuracy; without labels, teacher-forced top-1 agreement) against measured
 *                          bytes per request, a line per policy family, runs of receiver_only as a dashed level with
 *                          its interval band, text relay as its own family, 95% bootstrap error bars; log x when the
 *                          bytes span more than a factor 20
 *   latency_stages.svg     per stage (receiverd's timings_ms, then the client's TTFT and end-to-end latency), the
 *                          mean ms of every run, one colour per run
 *   budgets.csv            per policy family, the fewest measured bytes per request at which the metric reaches
 *                          0.95 and 0.99 (metrics where higher is better; kw_load_regime.h)
 *   regime.csv             the regime map: the byte-budget axis cut where the winning run changes, each segment
 *                          with the run and family that give the best metric within that budget
 *   index.html             one self-contained page (inline CSS and SVG, no external resources) with both plots,
 *                          the runs table and the two tables above; a short script stamps data-check="ok" on <body>
 *                          once the plots have laid out with a non-zero size and the table has one row per run (what
 *                          the headless-browser test reads)
 *
 * Not here: computing summaries (kw_load_summary.h).
 */
#ifndef KW_LOAD_REPORT_H
#define KW_LOAD_REPORT_H

#include <stddef.h>
#include <stdio.h>

typedef struct kw_load_report_options {
    const char *out;     /* the folder to write (created) */
    const char *x_bytes; /* "payload" (blob + text, default), "blob", "socket_in", "socket_out" */
    const char *metric;  /* "auto" (default), "accuracy", "answer_agreement", "token_agreement",
                            "tf_top1_agreement", "mean_kl" */
    const char *title;   /* page title (default "kvload report") */
} kw_load_report_options;

void kw_load_report_options_default(kw_load_report_options *o);

/* Reads the runs (a folder with summary.json is a run; any other folder stands for its subfolders that are runs, in
 * name order) and writes the report. console (may be NULL) gets the written paths.
 * @return 0; KW_E_NOT_FOUND (no run found), KW_E_INVALID_ARG (unknown metric or byte kind), KW_E_IO, KW_E_PARSE
 * (a summary.json that is not one), KW_E_NOMEM. */
int kw_load_report_write(const char *const *dirs, size_t n_dirs, const kw_load_report_options *o, FILE *console);

#endif /* KW_LOAD_REPORT_H */
