/* test_stats.c: kvload's statistics against values computed by hand: numpy "linear" percentiles, the distribution
 * summary, and the percentile bootstrap on inputs whose answer is known (constant data, and 0/1 data, whose bootstrap
 * distribution is exactly Binomial(n, k/n)/n, so its 2.5% and 97.5% quantiles can be computed exactly). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/kw_status.h"
#include "loadgen/kw_load_stats.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* |a - b| <= eps, with both values in the failure message. */
#define assert_double_equal(a, b, eps)                                                                                 \
    do {                                                                                                               \
        const double kw_a_ = (a), kw_b_ = (b);                                                                         \
        if (!(fabs(kw_a_ - kw_b_) <= (eps))) fail_msg("%s = %.17g, expected %.17g", #a, kw_a_, kw_b_);                 \
    } while (0)

static void test_percentiles_by_hand(void **state) {
    (void)state;
    const double a[] = {15, 20, 35, 40, 50};
    assert_double_equal(kw_load_percentile_sorted(a, 5, 0), 15, 1e-12);
    assert_double_equal(kw_load_percentile_sorted(a, 5, 25), 20, 1e-12); /* rank 1 exactly */
    assert_double_equal(kw_load_percentile_sorted(a, 5, 40), 29, 1e-12); /* rank 1.6: 20 + 0.6 * 15 */
    assert_double_equal(kw_load_percentile_sorted(a, 5, 50), 35, 1e-12);
    assert_double_equal(kw_load_percentile_sorted(a, 5, 90), 46, 1e-12);   /* rank 3.6: 40 + 0.6 * 10 */
    assert_double_equal(kw_load_percentile_sorted(a, 5, 99), 49.6, 1e-12); /* rank 3.96 */
    assert_double_equal(kw_load_percentile_sorted(a, 5, 100), 50, 1e-12);
    const double one[] = {7.5};
    assert_double_equal(kw_load_percentile_sorted(one, 1, 99), 7.5, 0);
    const double two[] = {1, 3};
    assert_double_equal(kw_load_percentile_sorted(two, 2, 50), 2, 1e-12);
    assert_double_equal(kw_load_percentile_sorted(two, 2, 99), 2.98, 1e-12);
}

static void test_dist(void **state) {
    (void)state;
    double v[] = {3, 1, 2};
    kw_load_dist d;
    kw_load_dist_compute(v, 3, &d);
    assert_int_equal(d.n, 3);
    assert_double_equal(d.mean, 2, 1e-12);
    assert_double_equal(d.std, sqrt(2.0 / 3.0), 1e-12); /* population std, as np.std */
    assert_double_equal(d.median, 2, 1e-12);
    assert_double_equal(d.p90, 2.8, 1e-12);
    assert_double_equal(d.p99, 2.98, 1e-12);
    assert_double_equal(d.min, 1, 0);
    assert_double_equal(d.max, 3, 0);
    assert_double_equal(v[0], 1, 0); /* sorted in place */
    kw_load_dist_compute(NULL, 0, &d);
    assert_int_equal(d.n, 0);
    assert_double_equal(d.mean, 0, 0);
    kw_load_samples s = {0};
    for (int i = 0; i < 1000; ++i)
        assert_int_equal(kw_load_samples_push(&s, i), 0);
    assert_int_equal(s.n, 1000);
    kw_load_dist_compute(s.v, s.n, &d);
    assert_double_equal(d.median, 499.5, 1e-9);
    assert_double_equal(d.p99, 989.01, 1e-9); /* rank 989.01 */
    kw_load_samples_free(&s);
    kw_load_samples_free(NULL);
}

static void test_bootstrap_degenerate(void **state) {
    (void)state;
    double num[20], den[20];
    for (int i = 0; i < 20; ++i)
        num[i] = 1, den[i] = 1;
    double v, lo, hi;
    assert_int_equal(kw_load_bootstrap_ratio(num, den, 20, 1000, 1, 0.95, &v, &lo, &hi), 0);
    assert_double_equal(v, 1, 0);
    assert_double_equal(lo, 1, 0);
    assert_double_equal(hi, 1, 0);
    for (int i = 0; i < 20; ++i)
        num[i] = 0;
    assert_int_equal(kw_load_bootstrap_ratio(num, den, 20, 1000, 1, 0.95, &v, &lo, &hi), 0);
    assert_double_equal(v, 0, 0);
    assert_double_equal(hi, 0, 0);
    num[0] = 1;
    assert_int_equal(kw_load_bootstrap_ratio(num, den, 1, 100, 1, 0.95, &v, &lo, &hi), 0);
    assert_double_equal(lo, 1, 0);
    assert_double_equal(hi, 1, 0);
    assert_int_equal(kw_load_bootstrap_ratio(num, den, 0, 100, 1, 0.95, &v, &lo, &hi), 0);
    assert_double_equal(v, 0, 0);
    /* A ratio of sums, not a mean of ratios: (1 + 3) / (1 + 4). */
    const double rn[] = {1, 3}, rd[] = {1, 4};
    assert_int_equal(kw_load_bootstrap_ratio(rn, rd, 2, 500, 3, 0.95, &v, &lo, &hi), 0);
    assert_double_equal(v, 0.8, 1e-12);
    assert_true(lo >= 0.75 - 1e-12 && hi <= 1.0 + 1e-12 && lo <= v && v <= hi);
    /* Bad arguments. */
    assert_int_equal(kw_load_bootstrap_ratio(rn, rd, 2, 500, 3, 1.0, &v, &lo, &hi), KW_E_INVALID_ARG);
    assert_int_equal(kw_load_bootstrap_ratio(rn, rd, 2, 0, 3, 0.95, &v, &lo, &hi), KW_E_INVALID_ARG);
    const double zero_den[] = {1, 0};
    assert_int_equal(kw_load_bootstrap_ratio(rn, zero_den, 2, 10, 3, 0.95, &v, &lo, &hi), KW_E_INVALID_ARG);
}

/* The q-quantile of Binomial(n, p) / n as numpy's linear percentile of a huge sample would see it: the smallest j
 * with CDF(j) >= q. */
static double binomial_quantile(int n, double p, double q) {
    double cdf = 0;
    for (int j = 0; j <= n; ++j) {
        const double logc = lgamma(n + 1.0) - lgamma(j + 1.0) - lgamma(n - j + 1.0);
        cdf += exp(logc + j * log(p) + (n - j) * log1p(-p));
        if (cdf >= q) return (double)j / n;
    }
    return 1.0;
}

static void test_bootstrap_binomial(void **state) {
    (void)state;
    const int n = 40, k = 24;
    double num[40], den[40];
    for (int i = 0; i < n; ++i)
        num[i] = i < k ? 1 : 0, den[i] = 1;
    double v, lo, hi;
    assert_int_equal(kw_load_bootstrap_ratio(num, den, n, 20000, 42, 0.95, &v, &lo, &hi), 0);
    assert_double_equal(v, 0.6, 1e-12);
    const double want_lo = binomial_quantile(n, 0.6, 0.025), want_hi = binomial_quantile(n, 0.6, 0.975);
    /* A sample quantile of a discrete law sits on (or, interpolated, next to) the exact one. */
    assert_true(fabs(lo - want_lo) <= 1.0 / n + 1e-12);
    assert_true(fabs(hi - want_hi) <= 1.0 / n + 1e-12);
    /* And it is about the normal approximation's width, 2 * 1.96 * sqrt(p (1 - p) / n) = 0.30. */
    assert_true(hi - lo > 0.22 && hi - lo < 0.38);
    /* The same seed gives the same interval. */
    double v2, lo2, hi2;
    assert_int_equal(kw_load_bootstrap_ratio(num, den, n, 20000, 42, 0.95, &v2, &lo2, &hi2), 0);
    assert_double_equal(lo, lo2, 0);
    assert_double_equal(hi, hi2, 0);
    /* A 50% interval is inside the 95% one. */
    assert_int_equal(kw_load_bootstrap_ratio(num, den, n, 20000, 42, 0.5, &v2, &lo2, &hi2), 0);
    assert_true(lo2 >= lo && hi2 <= hi && lo2 < hi2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_percentiles_by_hand),
        cmocka_unit_test(test_dist),
        cmocka_unit_test(test_bootstrap_degenerate),
        cmocka_unit_test(test_bootstrap_binomial),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
