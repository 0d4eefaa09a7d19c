/* kw_load_sweep.h: a grid of transfer policies run in one go, one run folder per point, resumable.
 *
 * A sweep file (YAML or JSON):
 *
 *   run:                      # base run options, the names of kw_load_config.h (dataset_path, max_tokens, ...)
 *     dataset_name: openbookqa
 *     dataset_path: loadgen/samples/openbookqa.jsonl
 *   reference: full-bf16      # optional: the point the others are judged against (quality without labels)
 *   points:                   # explicit points: name, optional family, kvwire object, optional run overrides
 *     - name: full-bf16
 *       kvwire: {mode: c2c, policy: {codec: bf16}}
 *     - name: receiver-only
 *       kvwire: {mode: receiver_only}
 *   grids:                    # cartesian products over dotted paths of the kvwire object
 *     - name: knorm           # point names: knorm_codec-int8_proportion-0.25, ...
 *       family: c2c knorm     # optional; default from the kvwire object (mode, selection, codec)
 *       kvwire: {mode: c2c, policy: {selection: knorm_topk}}
 *       axes:
 *         policy.codec: [int8, int4]
 *         policy.proportion: [0.25, 0.5, 1.0]
 *       run: {max_concurrency: 2}
 *
 * Each point runs into OUT/<name>/ with the base options, its own run overrides, then the command line's; the
 * reference point runs first and records top-20 log-probabilities (record_logprobs), the others get
 * reference: OUT/<reference>. A point whose folder holds a summary.json that is complete and was made with the same
 * options (config_identity) is done and not run again; a folder with another point's options is an error (nothing is
 * overwritten); anything else (no summary, an interrupted run) is run again from the start. OUT/sweep.json lists the
 * points and their state.
 */
#ifndef KW_LOAD_SWEEP_H
#define KW_LOAD_SWEEP_H

#include <stddef.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "loadgen/kw_load_config.h"
#include "loadgen/kw_load_run.h"

/* Command-line run options that override the file's, as text (kw_load_config_set). */
typedef struct kw_load_sweep_overrides {
    const char *const *keys;
    const char *const *values;
    size_t n;
} kw_load_sweep_overrides;

typedef struct kw_load_sweep_options {
    const char *out;                          /* the sweep folder */
    int max_points;                           /* stop after running this many points (0: all); the rest stay to do */
    int dry_run;                              /* list the points and whether they are done; run nothing */
    const kw_load_sweep_overrides *overrides; /* may be NULL */
} kw_load_sweep_options;

/* One expanded point. */
typedef struct kw_load_sweep_point {
    char *name;         /* owned, [A-Za-z0-9._-] */
    kw_load_config cfg; /* owned: the full run options (out, name, family, reference filled in) */
} kw_load_sweep_point;

typedef struct kw_load_sweep_plan {
    kw_load_sweep_point *points; /* owned; the reference first */
    size_t n;
    char *reference; /* owned: the reference point's name, or NULL */
} kw_load_sweep_plan;

/* Expands a parsed sweep document into points. @return 0, KW_E_PARSE (a malformed file, an unknown option, a
 * duplicate point name, a reference that names no point: the detail says where), KW_E_NOMEM. */
int kw_load_sweep_expand(const cJSON *doc, const char *out, const kw_load_sweep_overrides *ov,
                         kw_load_sweep_plan *plan);

void kw_load_sweep_plan_free(kw_load_sweep_plan *plan);

/* 1 when dir holds a complete run of exactly these options, 0 when it holds none (or an incomplete one).
 * @return 1, 0, or KW_E_STATE when dir holds a complete run of other options. */
int kw_load_sweep_point_done(const char *dir, const kw_load_config *cfg);

/* Runs a sweep file. @return 0 when every point is done; KW_E_CANCELLED when interrupted or stopped by max_points;
 * the first failing point's error otherwise (points before it stay done). */
int kw_load_sweep_run(const char *file, const kw_load_sweep_options *o, const kw_load_run_info *info, FILE *console);

#endif /* KW_LOAD_SWEEP_H */
