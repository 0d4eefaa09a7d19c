/* test_sensitivity.c: the layer-schedule allocation of `kvload sensitivity` (loadgen/kw_load_sensitivity.h) on
 * hand-computed cases: the cheapest loss per byte saved goes first, steps that cost no loss are always taken, the
 * budget is met with the fewest steps, a target no schedule reaches is an error naming the smallest, ties go to the
 * lower layer, and on random instances the result is within budget and matches a brute-force search whenever the
 * greedy choice lies on every layer's convex hull. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/kw_status.h"
#include "loadgen/kw_load_sensitivity.h"

/* Two layers, options {base, int8, int4}: layer 0 int8 saves 100 bytes for loss 1, int4 saves 150 for loss 10;
 * layer 1 int8 saves 100 for loss 2, int4 saves 150 for loss 3. */
static const double two_delta[] = {0, -100, -150, 0, -100, -150};
static const double two_loss[] = {0, 1, 10, 0, 2, 3};

static void test_cheapest_first(void **state) {
    (void)state;
    int32_t choice[2];
    double d = 0, l = 0;
    /* saving 100: layer 0 int8 (0.01 per byte) beats layer 1 int8 (0.02) */
    assert_int_equal(kw_load_sens_allocate(2, 3, two_delta, two_loss, -100, choice, &d, &l), 0);
    assert_int_equal(choice[0], 1);
    assert_int_equal(choice[1], 0);
    assert_true(d == -100 && l == 1);
    /* saving 200: then layer 1 int8 (0.02 per byte); its int4 (0.03 per byte from base) lies on the hull after */
    assert_int_equal(kw_load_sens_allocate(2, 3, two_delta, two_loss, -200, choice, &d, &l), 0);
    assert_int_equal(choice[0], 1);
    assert_int_equal(choice[1], 1);
    assert_true(d == -200 && l == 3);
    /* saving 250: layer 1 int8 -> int4 (1 per 50 bytes = 0.02) */
    assert_int_equal(kw_load_sens_allocate(2, 3, two_delta, two_loss, -250, choice, &d, &l), 0);
    assert_int_equal(choice[0], 1);
    assert_int_equal(choice[1], 2);
    assert_true(d == -250 && l == 4);
    /* a budget already met: nothing changes */
    assert_int_equal(kw_load_sens_allocate(2, 3, two_delta, two_loss, 0, choice, &d, &l), 0);
    assert_int_equal(choice[0], 0);
    assert_int_equal(choice[1], 0);
    assert_true(d == 0 && l == 0);
}

static void test_unreachable(void **state) {
    (void)state;
    int32_t choice[2];
    double d = 0, l = 0;
    assert_int_equal(kw_load_sens_allocate(2, 3, two_delta, two_loss, -301, choice, &d, &l), KW_E_INVALID_ARG);
    assert_non_null(strstr(kw_error_detail(), "saves 300 bytes"));
    assert_int_equal(kw_load_sens_allocate(2, 3, two_delta, two_loss, -300, choice, &d, &l), 0);
    assert_int_equal(choice[0], 2);
    assert_int_equal(choice[1], 2);
}

static void test_free_steps_and_ties(void **state) {
    (void)state;
    /* layer 1's int8 costs no loss: taken even though the budget needs nothing; equal slopes go to the lower layer */
    const double delta[] = {0, -100, 0, -100, 0, -100};
    const double loss[] = {0, 5, 0, 0, 0, 5};
    int32_t choice[3];
    double d = 0, l = 0;
    assert_int_equal(kw_load_sens_allocate(3, 2, delta, loss, 0, choice, &d, &l), 0);
    assert_int_equal(choice[0], 0);
    assert_int_equal(choice[1], 1);
    assert_int_equal(choice[2], 0);
    assert_int_equal(kw_load_sens_allocate(3, 2, delta, loss, -150, choice, &d, &l), 0);
    assert_int_equal(choice[0], 1); /* layer 0 and layer 2 tie at 0.05 per byte: the lower layer */
    assert_int_equal(choice[1], 1);
    assert_int_equal(choice[2], 0);
    /* an option that costs more bytes than the base is never chosen */
    const double up_delta[] = {0, 50}, up_loss[] = {0, 0};
    assert_int_equal(kw_load_sens_allocate(1, 2, up_delta, up_loss, 100, choice, &d, &l), 0);
    assert_int_equal(choice[0], 0);
    const double nan_loss[] = {0, NAN};
    assert_int_equal(kw_load_sens_allocate(1, 2, up_delta, nan_loss, 100, choice, &d, &l), KW_E_INVALID_ARG);
}

/* Random convex instances (loss per byte saved rising along each layer's options): the greedy schedule is then the
 * exact optimum of the multiple-choice knapsack whenever it saves exactly the budget, and always within budget. */
static void test_random_against_brute_force(void **state) {
    (void)state;
    uint64_t seed = 12345;
    int exact = 0;
    for (int trial = 0; trial < 300; ++trial) {
        enum { L = 4, O = 4 };
        double delta[L * O], loss[L * O];
        for (int l = 0; l < L; ++l) {
            double d = 0, x = 0, slope = 0;
            delta[l * O] = loss[l * O] = 0;
            for (int k = 1; k < O; ++k) {
                seed = seed * 6364136223846793005ull + 1442695040888963407ull;
                const double step = 10.0 * (double)(1 + (seed >> 60)); /* 10..160 bytes */
                slope += (double)((seed >> 40) & 0xff) / 64.0 + 0.01;  /* strictly rising */
                d -= step;
                x += slope * step;
                delta[l * O + k] = d, loss[l * O + k] = x;
            }
        }
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        const double budget = -10.0 * (double)((seed >> 33) % 50); /* on the 10-byte grid of the steps */
        int32_t choice[L];
        double pd = 0, pl = 0;
        const int rc = kw_load_sens_allocate(L, O, delta, loss, budget, choice, &pd, &pl);
        /* brute force */
        double best = INFINITY, min_total = 0;
        for (int l = 0; l < L; ++l)
            min_total += delta[l * O + O - 1];
        for (int code = 0; code < O * O * O * O; ++code) {
            double t = 0, x = 0;
            for (int l = 0, c = code; l < L; ++l, c /= O)
                t += delta[l * O + c % O], x += loss[l * O + c % O];
            if (t <= budget && x < best) best = x;
        }
        if (min_total > budget) {
            assert_int_equal(rc, KW_E_INVALID_ARG);
            continue;
        }
        assert_int_equal(rc, 0);
        double t = 0, x = 0;
        for (int l = 0; l < L; ++l)
            if (choice[l]) t += delta[l * O + choice[l]], x += loss[l * O + choice[l]];
        assert_true(t == pd && x == pl);
        assert_true(t <= budget);
        assert_true(x >= best - 1e-9);
        if (t == budget) assert_true(x <= best + 1e-9), ++exact;
    }
    assert_true(exact >= 20); /* the optimality check ran often enough to mean something */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cheapest_first),
        cmocka_unit_test(test_unreachable),
        cmocka_unit_test(test_free_steps_and_ties),
        cmocka_unit_test(test_random_against_brute_force),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
