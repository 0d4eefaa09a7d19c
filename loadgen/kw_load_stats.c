/* kw_load_stats.c: percentiles (numpy "linear"), distribution summaries and the percentile bootstrap. */
#include "loadgen/kw_load_stats.h"

#include "common/kw_status.h"
#include "loadgen/kw_load_rng.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int kw_load_cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

void kw_load_sort_doubles(double *a, size_t n) {
    if (n > 1) qsort(a, n, sizeof(*a), kw_load_cmp_double);
}

double kw_load_percentile_sorted(const double *sorted, size_t n, double p) {
    if (n == 0) return 0.0;
    const double h = (double)(n - 1) * p / 100.0;
    size_t lo = (size_t)floor(h);
    if (lo >= n - 1) return sorted[n - 1];
    const double frac = h - (double)lo;
    return sorted[lo] + frac * (sorted[lo + 1] - sorted[lo]);
}

void kw_load_dist_compute(double *values, size_t n, kw_load_dist *out) {
    memset(out, 0, sizeof(*out));
    out->n = n;
    if (n == 0) return;
    kw_load_sort_doubles(values, n);
    double sum = 0.0;
    for (size_t i = 0; i < n; ++i)
        sum += values[i];
    const double mean = sum / (double)n;
    double ss = 0.0;
    for (size_t i = 0; i < n; ++i)
        ss += (values[i] - mean) * (values[i] - mean);
    out->mean = mean;
    out->std = sqrt(ss / (double)n);
    out->median = kw_load_percentile_sorted(values, n, 50.0);
    out->p90 = kw_load_percentile_sorted(values, n, 90.0);
    out->p99 = kw_load_percentile_sorted(values, n, 99.0);
    out->min = values[0];
    out->max = values[n - 1];
}

int kw_load_samples_push(kw_load_samples *s, double x) {
    if (s->n == s->cap) {
        const size_t cap = s->cap ? s->cap * 2 : 64;
        double *v = realloc(s->v, cap * sizeof(*v));
        KW_RETURN_IF(!v, KW_E_NOMEM, "out of memory collecting %zu samples", cap);
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = x;
    return 0;
}

void kw_load_samples_free(kw_load_samples *s) {
    if (!s) return;
    free(s->v);
    memset(s, 0, sizeof(*s));
}

int kw_load_bootstrap_ratio(const double *num, const double *den, size_t n, uint32_t resamples, uint64_t seed,
                            double level, double *value, double *lo, double *hi) {
    KW_RETURN_IF(!(level > 0.0 && level < 1.0), KW_E_INVALID_ARG, "bootstrap level %g is not in (0, 1)", level);
    KW_RETURN_IF(resamples == 0, KW_E_INVALID_ARG, "the bootstrap needs at least one resample");
    *value = *lo = *hi = 0.0;
    if (n == 0) return 0;
    double sum_num = 0.0, sum_den = 0.0;
    for (size_t i = 0; i < n; ++i) {
        KW_RETURN_IF(!(den[i] > 0.0), KW_E_INVALID_ARG, "bootstrap item %zu has denominator %g", i, den[i]);
        sum_num += num[i];
        sum_den += den[i];
    }
    *value = sum_num / sum_den;
    double *stats = malloc((size_t)resamples * sizeof(*stats));
    KW_RETURN_IF(!stats, KW_E_NOMEM, "out of memory for %u bootstrap resamples", resamples);
    kw_load_rng r;
    kw_load_rng_seed(&r, seed);
    for (uint32_t b = 0; b < resamples; ++b) {
        double a = 0.0, d = 0.0;
        for (size_t i = 0; i < n; ++i) {
            const size_t j = (size_t)kw_load_rng_below(&r, n);
            a += num[j];
            d += den[j];
        }
        stats[b] = a / d; /* d > 0: every den is */
    }
    kw_load_sort_doubles(stats, resamples);
    *lo = kw_load_percentile_sorted(stats, resamples, 100.0 * (1.0 - level) / 2.0);
    *hi = kw_load_percentile_sorted(stats, resamples, 100.0 * (1.0 + level) / 2.0);
    free(stats);
    return 0;
}
