/* kw_load_run.h: one kvload run: a dataset replayed against receiverd with one policy and one load shape, written as
 * a run folder:
 *
 *   run.json       what was asked: every option, the dataset's digest and skipped rows, the server's /health and
 *                  /v1/models answers, the command line, kvload's version, the start time
 *   records.jsonl  one line per measured request, written as each one finishes (kw_load_run.c lists the fields)
 *   forced.jsonl   with a reference and teacher forcing: one line per teacher-forced item
 *   summary.json   what was measured (kw_load_summary.h), written last and atomically: a run folder with a
 *                  summary.json whose "complete" is true is finished
 *
 * Phases: warm-up requests (num_warmups, closed loop, not recorded), the measured requests (closed loop: at most
 * max_concurrency in flight; open loop: send times from kw_load_arrivals_make, or gaps drawn one by one when only a
 * duration bounds the run, and max_concurrency as a cap when not 0), then the teacher-forced requests (closed loop),
 * whose timings are recorded but not mixed into the latency statistics.
 *
 * A progress bar goes to the console on a terminal (plain lines every few seconds otherwise). kw_load_run_interrupt
 * (e.g. from a SIGINT handler) stops sending; requests in flight finish, the summary is written with "complete": false
 * and the run returns KW_E_CANCELLED.
 */
#ifndef KW_LOAD_RUN_H
#define KW_LOAD_RUN_H

#include <stdio.h>

#include "loadgen/kw_load_config.h"

typedef struct kw_load_run_info {
    const char *version; /* kvload's version */
    int argc;            /* the command line, recorded in run.json (may be 0) */
    char **argv;
} kw_load_run_info;

/* Runs c (validated here) into c->out, which is created; an existing records.jsonl there is replaced. console gets
 * the progress and the human-readable summary (may be NULL: silent).
 * @return 0 when every measured request was sent and answered (failed requests are results, not errors of the run);
 * KW_E_CANCELLED when interrupted; KW_E_INVALID_ARG (bad options), KW_E_IO (the server is unreachable, a file cannot be
 * written), KW_E_PARSE (the dataset or reference), KW_E_NOMEM, with the reason in the detail. */
int kw_load_run(const kw_load_config *c, const kw_load_run_info *info, FILE *console);

/* Asks the run in progress to stop sending. Async-signal-safe (sets a flag). */
void kw_load_run_interrupt(void);

/* 1 once kw_load_run_interrupt was called (until kw_load_run_clear_interrupt). */
int kw_load_run_interrupted(void);
void kw_load_run_clear_interrupt(void);

#endif /* KW_LOAD_RUN_H */
