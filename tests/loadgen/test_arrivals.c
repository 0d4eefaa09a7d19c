/* test_arrivals.c: the random numbers behind kvload's load shapes: the moments of the gamma, normal and uniform
 * variates, the open-loop arrival times (gaps with mean 1/rate and coefficient of variation 1/sqrt(burstiness),
 * Poisson counts in windows, the vLLM rescaling to n/rate), shuffles and derived seeds. Seeds are fixed, so the
 * tolerances are statistical sanity bounds (several standard errors), never flaky. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/kw_status.h"
#include "loadgen/kw_load_rng.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* |a - b| <= eps, with both values in the failure message. */
#define assert_double_equal(a, b, eps)                                                                                 \
    do {                                                                                                               \
        const double kw_a_ = (a), kw_b_ = (b);                                                                         \
        if (!(fabs(kw_a_ - kw_b_) <= (eps))) fail_msg("%s = %.17g, expected %.17g", #a, kw_a_, kw_b_);                 \
    } while (0)

static void moments(const double *x, size_t n, double *mean, double *var) {
    double m = 0, v = 0;
    for (size_t i = 0; i < n; ++i)
        m += x[i];
    m /= (double)n;
    for (size_t i = 0; i < n; ++i)
        v += (x[i] - m) * (x[i] - m);
    *mean = m;
    *var = v / (double)(n - 1);
}

static void test_gamma_moments(void **state) {
    (void)state;
    const size_t n = 200000;
    double *x = malloc(n * sizeof(*x));
    assert_non_null(x);
    const double shapes[] = {0.25, 1.0, 2.5, 9.0};
    for (size_t s = 0; s < 4; ++s) {
        kw_load_rng r;
        kw_load_rng_seed(&r, 100 + s);
        const double k = shapes[s], theta = 0.5;
        for (size_t i = 0; i < n; ++i) {
            x[i] = kw_load_rng_gamma(&r, k, theta);
            assert_true(x[i] >= 0);
        }
        double m, v;
        moments(x, n, &m, &v);
        assert_true(fabs(m / (k * theta) - 1) < 0.03);
        assert_true(fabs(v / (k * theta * theta) - 1) < 0.08);
    }
    kw_load_rng r;
    kw_load_rng_seed(&r, 7);
    for (size_t i = 0; i < n; ++i)
        x[i] = kw_load_rng_normal(&r);
    double m, v;
    moments(x, n, &m, &v);
    assert_true(fabs(m) < 0.01);
    assert_true(fabs(v - 1) < 0.02);
    free(x);
}

static void test_uniform_and_below(void **state) {
    (void)state;
    kw_load_rng r;
    kw_load_rng_seed(&r, 1);
    size_t counts[6] = {0};
    for (int i = 0; i < 60000; ++i) {
        const uint64_t v = kw_load_rng_below(&r, 6);
        assert_true(v < 6);
        counts[v]++;
        const double u = kw_load_rng_uniform(&r);
        assert_true(u >= 0 && u < 1);
    }
    for (int i = 0; i < 6; ++i)
        assert_true(counts[i] > 9500 && counts[i] < 10500); /* 10000 +- 5 sigma */
    assert_int_equal(kw_load_rng_below(&r, 0), 0);
    /* The integer stream is fixed by the seed. */
    kw_load_rng a, b;
    kw_load_rng_seed(&a, 12345);
    kw_load_rng_seed(&b, 12345);
    for (int i = 0; i < 100; ++i)
        assert_true(kw_load_rng_next(&a) == kw_load_rng_next(&b));
    assert_true(kw_load_rng_derive(0, "arrivals") != kw_load_rng_derive(0, "order"));
    assert_true(kw_load_rng_derive(5, "order") == kw_load_rng_derive(5, "order"));
    assert_true(kw_load_rng_derive(5, "order") != kw_load_rng_derive(6, "order"));
}

static void test_shuffle(void **state) {
    (void)state;
    size_t a[100], b[100];
    for (size_t i = 0; i < 100; ++i)
        a[i] = b[i] = i;
    kw_load_rng r1, r2;
    kw_load_rng_seed(&r1, 9);
    kw_load_rng_seed(&r2, 9);
    kw_load_rng_shuffle(&r1, a, 100);
    kw_load_rng_shuffle(&r2, b, 100);
    assert_memory_equal(a, b, sizeof(a));
    int seen[100] = {0}, moved = 0;
    for (size_t i = 0; i < 100; ++i) {
        assert_true(a[i] < 100);
        seen[a[i]]++;
        moved += a[i] != i;
    }
    for (size_t i = 0; i < 100; ++i)
        assert_int_equal(seen[i], 1);
    assert_true(moved > 80);
}

/* Gaps of an open loop: mean 1/rate, coefficient of variation 1/sqrt(burstiness). */
static void check_gaps(double rate, double burstiness, uint64_t seed) {
    const size_t n = 40000;
    double *off = malloc(n * sizeof(*off)), *gap = malloc(n * sizeof(*gap));
    assert_non_null(off);
    assert_non_null(gap);
    assert_int_equal(kw_load_arrivals_make(n, rate, burstiness, seed, off), 0);
    /* Rescaled exactly to n / rate, increasing. */
    assert_true(fabs(off[n - 1] - (double)n / rate) < 1e-9 * (double)n / rate);
    for (size_t i = 0; i < n; ++i) {
        gap[i] = off[i] - (i ? off[i - 1] : 0);
        assert_true(gap[i] >= 0);
    }
    double m, v;
    moments(gap, n, &m, &v);
    assert_true(fabs(m * rate - 1) < 0.01);
    const double cv = sqrt(v) / m, want = 1 / sqrt(burstiness);
    assert_true(fabs(cv / want - 1) < 0.06);
    /* Unscaled gaps drawn one by one have the same law. */
    kw_load_rng r;
    kw_load_rng_seed(&r, seed + 1);
    for (size_t i = 0; i < n; ++i)
        gap[i] = kw_load_arrival_gap(&r, rate, burstiness);
    moments(gap, n, &m, &v);
    assert_true(fabs(m * rate - 1) < 0.04);
    assert_true(fabs(sqrt(v) / m / want - 1) < 0.06);
    free(off);
    free(gap);
}

static void test_arrival_gaps(void **state) {
    (void)state;
    check_gaps(50, 1.0, 3);
    check_gaps(500, 4.0, 4);
    check_gaps(20, 0.25, 5);
}

/* Poisson arrivals: counts in unit windows have variance equal to their mean (index of dispersion 1). */
static void test_poisson_counts(void **state) {
    (void)state;
    const size_t n = 50000;
    const double rate = 25;
    double *off = malloc(n * sizeof(*off));
    assert_non_null(off);
    assert_int_equal(kw_load_arrivals_make(n, rate, 1.0, 77, off), 0);
    const size_t windows = (size_t)(off[n - 1]);
    double *counts = calloc(windows, sizeof(*counts));
    assert_non_null(counts);
    for (size_t i = 0; i < n; ++i)
        if ((size_t)off[i] < windows) counts[(size_t)off[i]]++;
    double m, v;
    moments(counts, windows, &m, &v);
    assert_true(fabs(m / rate - 1) < 0.02);
    assert_true(fabs(v / m - 1) < 0.1);
    free(counts);
    free(off);
}

static void test_arrival_edges(void **state) {
    (void)state;
    double off[4] = {1, 1, 1, 1};
    assert_int_equal(kw_load_arrivals_make(4, INFINITY, 1, 1, off), 0);
    for (int i = 0; i < 4; ++i)
        assert_double_equal(off[i], 0, 0);
    assert_int_equal(kw_load_arrivals_make(4, 0, 1, 1, off), KW_E_INVALID_ARG);
    assert_int_equal(kw_load_arrivals_make(4, -1, 1, 1, off), KW_E_INVALID_ARG);
    assert_int_equal(kw_load_arrivals_make(4, NAN, 1, 1, off), KW_E_INVALID_ARG);
    assert_int_equal(kw_load_arrivals_make(4, 10, 0, 1, off), KW_E_INVALID_ARG);
    assert_int_equal(kw_load_arrivals_make(0, 10, 1, 1, off), 0);
    /* The same seed gives the same schedule, another seed another one. */
    double a[8], b[8], c[8];
    assert_int_equal(kw_load_arrivals_make(8, 10, 1, 11, a), 0);
    assert_int_equal(kw_load_arrivals_make(8, 10, 1, 11, b), 0);
    assert_int_equal(kw_load_arrivals_make(8, 10, 1, 12, c), 0);
    assert_memory_equal(a, b, sizeof(a));
    assert_memory_not_equal(a, c, sizeof(a));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gamma_moments),  cmocka_unit_test(test_uniform_and_below),
        cmocka_unit_test(test_shuffle),        cmocka_unit_test(test_arrival_gaps),
        cmocka_unit_test(test_poisson_counts), cmocka_unit_test(test_arrival_edges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
