/* bench_median.h: the median of a benchmark's per-round figures, shared by the `kvwire bench` commands. */
#ifndef KW_BENCH_MEDIAN_H
#define KW_BENCH_MEDIAN_H

#include <stddef.h>
#include <stdlib.h>

static inline int kw_bench_cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Sorts v[0 .. n) (borrowed, n >= 1) ascending in place and returns its median (the mean of the middle two for even
 * n); v[0] and v[n - 1] are then the minimum and maximum. */
static inline double kw_bench_median(double *v, size_t n) {
    qsort(v, n, sizeof *v, kw_bench_cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

#endif /* KW_BENCH_MEDIAN_H */
