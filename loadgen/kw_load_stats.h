/* kw_load_stats.h: the statistics kvload reports: percentiles with numpy's default definition, the distribution
 * summary vLLM's `bench serve` prints (mean, median, std, p90, p99), and percentile-bootstrap confidence intervals
 * for ratios of sums over items (accuracy, agreement, mean KL).
 *
 * Pure computation over caller arrays; no I/O.
 */
#ifndef KW_LOAD_STATS_H
#define KW_LOAD_STATS_H

#include <stddef.h>
#include <stdint.h>

/* The p-th percentile (p in [0, 100]) of sorted[0..n), n >= 1, with numpy's default "linear" rule: the value at
 * rank h = (n - 1) * p / 100, interpolated between sorted[floor(h)] and sorted[floor(h) + 1]. */
double kw_load_percentile_sorted(const double *sorted, size_t n, double p);

/* Sorts a[0..n) ascending (NaN must not occur). */
void kw_load_sort_doubles(double *a, size_t n);

/* A distribution summary. With n == 0 every value is 0. std is the population standard deviation (numpy's np.std,
 * ddof 0), as vLLM reports it. */
typedef struct kw_load_dist {
    size_t n;
    double mean, median, std, p90, p99, min, max;
} kw_load_dist;

/* Summarises values[0..n) (the array is sorted in place). */
void kw_load_dist_compute(double *values, size_t n, kw_load_dist *out);

/* A growable array of doubles (for collecting samples). Zero-initialised is empty; kw_load_samples_free. */
typedef struct kw_load_samples {
    double *v; /* owned */
    size_t n, cap;
} kw_load_samples;

/* Appends x. @return 0 or KW_E_NOMEM. */
int kw_load_samples_push(kw_load_samples *s, double x);
void kw_load_samples_free(kw_load_samples *s);

/* The ratio sum(num) / sum(den) over n items, and its percentile-bootstrap interval at the given level (0.95 for
 * 95%): `resamples` times, n items are drawn with replacement (kw_load_rng_below, seeded with seed) and the ratio of
 * the drawn sums is recorded; the interval is the (1 - level) / 2 and (1 + level) / 2 percentiles (numpy linear) of
 * those ratios. For accuracy num[i] is 1 for a correct item
 * and den[i] is 1; for a pooled per-position rate num[i] is the item's agreeing positions and den[i] its positions.
 * Every den[i] must be > 0. n == 0 gives *value = *lo = *hi = 0.
 * @return 0, KW_E_INVALID_ARG (level outside (0, 1), resamples == 0, a den <= 0) or KW_E_NOMEM. */
int kw_load_bootstrap_ratio(const double *num, const double *den, size_t n, uint32_t resamples, uint64_t seed,
                            double level, double *value, double *lo, double *hi);

#endif /* KW_LOAD_STATS_H */
