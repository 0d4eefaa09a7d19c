/* kw_load_sensitivity.h: per-layer codec sensitivity of a transfer, measured through the daemons, and the layer
 * schedule it predicts for a byte target (`kvload sensitivity`).
 *
 * What is measured, exactly: a reference point (every sent layer at the base codec, bf16 by default: lossless for a
 * bf16 cache) and, for each sent sharer layer l and each candidate codec c, a point where only layer l travels as c
 * (the HTTP policy's `schedule`: [{"layers": [l, l], "codec": c}]), all run as one resumable kvload sweep
 * (kw_load_sweep.h) on the same items. For each (l, c): the mean KVWire bytes per request (bytes.blob, what the
 * receiver read), its difference from the reference's, and the loss against the reference by kvload's label-free
 * measures (kw_load_quality.h): mean KL (top-k + rest, nats) and 1 - teacher-forced top-1 agreement. The layers
 * are the ones the reference requests sent (their records' kvwire.policy.layers).
 *
 * The schedule: a codec per layer that brings the predicted mean bytes per request (reference bytes plus the sum of
 * the chosen per-layer differences; exact when zstd is off, since KVWire sections are independent) to at most the
 * target, with the least predicted loss (the sum of the one-layer losses: an additive model, which the verification
 * point then checks). The choice is the greedy solution of that multiple-choice knapsack over each layer's lower
 * convex hull of (bytes, loss): the cheapest loss per byte saved first, ties to the lower layer, then the lower
 * codec index. The chosen schedule is run as a last point ("schedule-<target bytes>") and its measured bytes and
 * losses are reported beside the predicted ones; it is written as a ready `kvwire.policy` object
 * (OUT/schedule.json).
 */
#ifndef KW_LOAD_SENSITIVITY_H
#define KW_LOAD_SENSITIVITY_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "loadgen/kw_load_run.h"
#include "loadgen/kw_load_sweep.h"

#define KW_LOAD_SENS_MAX_CODECS 8
#define KW_LOAD_SENS_MAX_LAYERS 1024

enum kw_load_sens_metric {
    KW_LOAD_SENS_KL = 0,        /* mean KL (nats) */
    KW_LOAD_SENS_AGREEMENT = 1, /* 1 - teacher-forced top-1 agreement */
};

typedef struct kw_load_sensitivity_options {
    const char *out;                             /* the sweep folder (borrowed) */
    const char *mode;                            /* "kv_direct" or "c2c" (borrowed) */
    const char *base_codec;                      /* the reference's codec (NULL: bf16) */
    const char *codecs[KW_LOAD_SENS_MAX_CODECS]; /* candidate codecs, e.g. "int8" (borrowed) */
    int n_codecs;
    const char *granularity, *scale;          /* of every candidate (NULL: the server's defaults) */
    int64_t target_bytes;                     /* mean KVWire bytes per request to meet; 0: target_fraction */
    double target_fraction;                   /* of the reference's mean bytes, in (0, 1] when target_bytes is 0 */
    enum kw_load_sens_metric metric;          /* the loss the schedule minimises */
    const kw_load_sweep_overrides *overrides; /* run options (dataset, url, max_tokens, ...); may be NULL */
} kw_load_sensitivity_options;

/* Runs the measurement, chooses and verifies the schedule, writes OUT/sensitivity.json and OUT/schedule.json and
 * prints the table to console (may be NULL). @return 0; KW_E_INVALID_ARG (options; a target below the smallest
 * schedule's predicted bytes, naming that minimum); the sweep's errors; KW_E_PARSE / KW_E_IO for the run folders. */
int kw_load_sensitivity_run(const kw_load_sensitivity_options *o, const kw_load_run_info *info, FILE *console);

/* The schedule for n_layers layers of n_options options each: delta_bytes[l * n_options + k] and loss[...] of
 * option k on layer l; option 0 is the base (delta 0, loss 0 by definition; the values given for it are ignored).
 * Writes choice[l] (the option per layer), *predicted_delta (sum of the chosen deltas) and *predicted_loss. budget
 * is the largest allowed sum of deltas (<= 0: bytes must be saved). Deterministic: no dependence on anything but the
 * numbers. @return 0, or KW_E_INVALID_ARG when even the smallest choice exceeds the budget (the detail names it). */
int kw_load_sens_allocate(int32_t n_layers, int32_t n_options, const double *delta_bytes, const double *loss,
                          double budget, int32_t *choice, double *predicted_delta, double *predicted_loss);

#endif /* KW_LOAD_SENSITIVITY_H */
