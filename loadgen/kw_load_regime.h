/* kw_load_regime.h: which policy family wins at which byte budget, and what each family needs to reach a quality
 * level, from measured runs (`kvload report`: budgets.csv, regime.csv and their tables on the page).
 *
 * Input: one entry per run with its family, its mean bytes per request (the report's x axis) and its metric value;
 * runs without a number for either are left out. For metrics where higher is better (accuracy, agreements):
 *   threshold rows   per family and level X (0.95 and 0.99 by default): the fewest bytes per request of a run of the
 *                    family whose value is at least X, the run and its value, or "not reached";
 *   regime map       the budget axis cut where the winner changes: for a budget B, the winner is the run with the
 *                    best value among runs of at most B bytes (ties: fewer bytes, then the name), so the map is a step
 *                    function with steps at measured byte counts only; each segment [from, to) names the winning
 *                    run and family (to is +infinity for the last).
 * For mean KL lower is better (no threshold rows). Pure: no I/O; strings are borrowed from the input.
 */
#ifndef KW_LOAD_REGIME_H
#define KW_LOAD_REGIME_H

#include <stddef.h>

typedef struct kw_load_regime_run {
    const char *name, *family; /* borrowed */
    double bytes, value;
} kw_load_regime_run;

typedef struct kw_load_regime_threshold {
    const char *family; /* borrowed */
    double level;
    int reached;     /* 0: no run of the family reaches the level */
    double bytes;    /* the fewest bytes per request that do */
    const char *run; /* that run (borrowed) */
    double value;
} kw_load_regime_threshold;

typedef struct kw_load_regime_segment {
    double from_bytes, to_bytes; /* [from, to); to = INFINITY for the last segment */
    const char *run, *family;    /* the winner (borrowed) */
    double value;
} kw_load_regime_segment;

/* The threshold rows: families in order of first appearance, each with every level in order. *out (malloc'ed, caller
 * frees) gets n_families * n_levels rows, *n_out their count. @return 0 or KW_E_NOMEM. */
int kw_load_regime_thresholds(const kw_load_regime_run *runs, size_t n, const double *levels, size_t n_levels,
                              kw_load_regime_threshold **out, size_t *n_out);

/* The regime map (see above); higher_better 0 for metrics where lower is better. *out malloc'ed (caller frees).
 * @return 0 or KW_E_NOMEM. */
int kw_load_regime_map(const kw_load_regime_run *runs, size_t n, int higher_better, kw_load_regime_segment **out,
                       size_t *n_out);

#endif /* KW_LOAD_REGIME_H */
