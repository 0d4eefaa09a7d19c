/* test_select.c: token selection (c2c/kw_select.h): the count rule (Python's banker's rounding, min_tokens, T), the
 * position modes, the seeded random draw (deterministic, distinct, sorted, another draw per seed/section/layer and a
 * fair spread), norm top-k (the right positions on hand-made rows, ties to the lower position, non-finite scores
 * never chosen), and refused policies. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "c2c/kw_select.h"
#include "common/kw_status.h"

static void test_count_rule(void **state) {
    (void)state;
    kw_select_policy p = {.mode = KW_SELECT_VNORM, .proportion = 0.5, .min_tokens = 1};
    assert_int_equal(kw_select_count(&p, 117), 58); /* 58.5 rounds to even */
    assert_int_equal(kw_select_count(&p, 119), 60); /* 59.5 rounds to even */
    p.proportion = 0.25;
    assert_int_equal(kw_select_count(&p, 140), 35);
    p.proportion = 0.0;
    assert_int_equal(kw_select_count(&p, 10), 1); /* min_tokens */
    p.min_tokens = 64;
    p.proportion = 0.1;
    assert_int_equal(kw_select_count(&p, 117), 64); /* the reference's hidden minimum, when asked for */
    assert_int_equal(kw_select_count(&p, 20), 20);  /* never more than T */
    p.mode = KW_SELECT_FULL;
    assert_int_equal(kw_select_count(&p, 33), 33);
}

static void test_position_modes(void **state) {
    (void)state;
    int64_t out[16], n = 0;
    kw_select_policy p = {.mode = KW_SELECT_FRONT, .proportion = 0.3, .min_tokens = 1};
    assert_int_equal(kw_select_positions(&p, 10, 1, 1, NULL, NULL, 0, 0, NULL, out, &n), 0);
    assert_int_equal(n, 3);
    assert_true(out[0] == 0 && out[1] == 1 && out[2] == 2);
    p.mode = KW_SELECT_BACK;
    assert_int_equal(kw_select_positions(&p, 10, 1, 1, NULL, NULL, 0, 0, NULL, out, &n), 0);
    assert_true(n == 3 && out[0] == 7 && out[1] == 8 && out[2] == 9);
    p.mode = KW_SELECT_FULL;
    assert_int_equal(kw_select_positions(&p, 4, 1, 1, NULL, NULL, 0, 0, NULL, out, &n), 0);
    assert_true(n == 4 && out[3] == 3);
}

static void test_random_draw(void **state) {
    (void)state;
    enum { T = 200 };
    int64_t a[T], b[T], n = 0, m = 0;
    kw_select_policy p = {.mode = KW_SELECT_RANDOM, .proportion = 0.25, .min_tokens = 1, .seed = 42};
    assert_int_equal(kw_select_positions(&p, T, 1, 1, NULL, NULL, 3, 7, NULL, a, &n), 0);
    assert_int_equal(n, 50);
    for (int64_t i = 1; i < n; ++i)
        assert_true(a[i] > a[i - 1]); /* sorted, distinct */
    assert_true(a[0] >= 0 && a[n - 1] < T);
    assert_int_equal(kw_select_positions(&p, T, 1, 1, NULL, NULL, 3, 7, NULL, b, &m), 0);
    assert_int_equal(m, n);
    assert_memory_equal(a, b, (size_t)n * sizeof *a); /* the same request, the same draw */
    const int64_t variants[3][3] = {{43, 3, 7}, {42, 4, 7}, {42, 3, 8}};
    for (int v = 0; v < 3; ++v) {
        p.seed = (uint64_t)variants[v][0];
        assert_int_equal(
            kw_select_positions(&p, T, 1, 1, NULL, NULL, (int32_t)variants[v][1], (int32_t)variants[v][2], NULL, b, &m),
            0);
        assert_int_equal(m, n);
        assert_true(memcmp(a, b, (size_t)n * sizeof *a) != 0);
    }
    /* a fair spread: over 400 draws of 1 of 8, every position comes up 25..75 times (mean 50) */
    int hits[8] = {0};
    p.proportion = 0.125;
    for (int s = 0; s < 400; ++s) {
        p.seed = (uint64_t)s;
        assert_int_equal(kw_select_positions(&p, 8, 1, 1, NULL, NULL, 0, 0, NULL, b, &m), 0);
        assert_int_equal(m, 1);
        ++hits[b[0]];
    }
    for (int i = 0; i < 8; ++i)
        assert_true(hits[i] >= 25 && hits[i] <= 75);
}

static void test_norm_topk(void **state) {
    (void)state;
    enum { T = 8, H = 2, D = 3 };
    float k[T * H * D], v[T * H * D], scratch[T];
    /* token t has every element of K equal to kk[t] and of V to vv[t]: score = |x| sqrt(D) */
    const float kk[T] = {1, 5, 5, 2, -7, 0, 3, 5}, vv[T] = {9, 1, 2, 3, 4, 5, 6, 7};
    for (int t = 0; t < T; ++t)
        for (int i = 0; i < H * D; ++i)
            k[t * H * D + i] = kk[t], v[t * H * D + i] = vv[t];
    int64_t out[T], n = 0;
    kw_select_policy p = {.mode = KW_SELECT_KNORM, .proportion = 0.5, .min_tokens = 1};
    assert_int_equal(kw_select_positions(&p, T, H, D, k, v, 0, 0, scratch, out, &n), 0);
    /* |K|: 7 (t4), then 5, 5, 5 (t1, t2, t7) */
    assert_int_equal(n, 4);
    assert_true(out[0] == 1 && out[1] == 2 && out[2] == 4 && out[3] == 7);
    p.proportion = 0.375; /* three: the tie among the 5s goes to the lower positions, t1 and t2 */
    assert_int_equal(kw_select_positions(&p, T, H, D, k, v, 0, 0, scratch, out, &n), 0);
    assert_true(n == 3 && out[0] == 1 && out[1] == 2 && out[2] == 4);
    p.mode = KW_SELECT_VNORM;
    p.proportion = 0.25;
    assert_int_equal(kw_select_positions(&p, T, H, D, k, v, 0, 0, scratch, out, &n), 0);
    assert_true(n == 2 && out[0] == 0 && out[1] == 7);
    /* a NaN row is never chosen, even when everything else is asked for */
    v[3 * H * D] = NAN;
    k[5 * H * D] = INFINITY;
    p.proportion = 1.0;
    assert_int_equal(kw_select_positions(&p, T, H, D, k, v, 0, 0, scratch, out, &n), 0);
    assert_int_equal(n, T - 1);
    for (int64_t i = 0; i < n; ++i)
        assert_true(out[i] != 3);
    p.mode = KW_SELECT_KNORM;
    assert_int_equal(kw_select_positions(&p, T, H, D, k, v, 0, 0, scratch, out, &n), 0);
    assert_int_equal(n, T - 1);
    for (int64_t i = 0; i < n; ++i)
        assert_true(out[i] != 5);
}

/* Round two of a refinement: for every mode, the ranks [k1, k2) (skip = k1) and the k1 of round one are disjoint
 * and together exactly the selection at the larger proportion, ties and non-finite scores included; a skip that is
 * not below the count is refused (round two would add nothing). */
static void test_skip_ranked(void **state) {
    (void)state;
    enum { T = 40, H = 2, D = 4 };
    float k[T * H * D], v[T * H * D], scratch[T];
    for (int i = 0; i < T * H * D; ++i) {
        k[i] = (float)((i * 7919) % 13) - 6.0f;
        v[i] = (float)((i * 104729) % 5); /* many equal norms: the ties decide */
    }
    v[3 * H * D] = NAN; /* never chosen */
    const enum kw_select_mode modes[] = {KW_SELECT_FRONT, KW_SELECT_BACK, KW_SELECT_RANDOM, KW_SELECT_KNORM,
                                         KW_SELECT_VNORM};
    const double props[][2] = {{0.1, 0.6}, {0.05, 1.0}, {0.5, 0.55}, {0.3, 0.9}};
    for (size_t mi = 0; mi < sizeof modes / sizeof modes[0]; ++mi) {
        for (size_t pi = 0; pi < sizeof props / sizeof props[0]; ++pi) {
            kw_select_policy one = {.mode = modes[mi], .proportion = props[pi][0], .min_tokens = 1, .seed = 11};
            kw_select_policy two = one, rest = one;
            two.proportion = rest.proportion = props[pi][1];
            int64_t a[T], b[T], c[T], na = 0, nb = 0, nc = 0;
            assert_int_equal(kw_select_positions(&one, T, H, D, k, v, 2, 5, scratch, a, &na), 0);
            assert_int_equal(kw_select_positions(&two, T, H, D, k, v, 2, 5, scratch, b, &nb), 0);
            rest.skip = kw_select_count(&one, T);
            assert_int_equal(kw_select_check_skip(&rest, T), 0);
            assert_int_equal(kw_select_positions(&rest, T, H, D, k, v, 2, 5, scratch, c, &nc), 0);
            assert_int_equal(na + nc, nb);
            uint8_t seen[T] = {0};
            for (int64_t i = 0; i < na; ++i)
                seen[a[i]] = 1;
            for (int64_t i = 0; i < nc; ++i) {
                assert_false(seen[c[i]]); /* disjoint */
                assert_true(i == 0 || c[i] > c[i - 1]);
                seen[c[i]] = 1;
            }
            for (int64_t i = 0; i < nb; ++i)
                assert_true(seen[b[i]]);          /* the union is the larger selection */
            rest.skip = kw_select_count(&two, T); /* nothing left to send */
            assert_int_equal(kw_select_check_skip(&rest, T), KW_E_INVALID_ARG);
            assert_int_equal(kw_select_positions(&rest, T, H, D, k, v, 2, 5, scratch, c, &nc), KW_E_INVALID_ARG);
        }
    }
    kw_select_policy neg = {.mode = KW_SELECT_FRONT, .proportion = 0.5, .min_tokens = 1, .skip = -1};
    assert_int_equal(kw_select_policy_check(&neg), KW_E_INVALID_ARG);
}

static void test_refused(void **state) {
    (void)state;
    int64_t out[4], n;
    kw_select_policy p = {.mode = KW_SELECT_FRONT, .proportion = 1.5, .min_tokens = 1};
    assert_int_equal(kw_select_positions(&p, 4, 1, 1, NULL, NULL, 0, 0, NULL, out, &n), KW_E_INVALID_ARG);
    p.proportion = NAN;
    assert_int_equal(kw_select_policy_check(&p), KW_E_INVALID_ARG);
    p.proportion = 0.5;
    p.min_tokens = 0;
    assert_int_equal(kw_select_policy_check(&p), KW_E_INVALID_ARG);
    p.min_tokens = 1;
    p.mode = KW_SELECT_VNORM; /* needs rows and scratch */
    assert_int_equal(kw_select_positions(&p, 4, 1, 1, NULL, NULL, 0, 0, NULL, out, &n), KW_E_INVALID_ARG);
    p.mode = (enum kw_select_mode)99;
    assert_int_equal(kw_select_policy_check(&p), KW_E_INVALID_ARG);
    enum kw_select_mode m;
    assert_int_equal(kw_select_mode_parse("vnorm_topk", &m), 0);
    assert_int_equal(m, KW_SELECT_VNORM);
    assert_int_equal(kw_select_mode_parse("vnorm", &m), KW_E_INVALID_ARG);
    assert_string_equal(kw_select_mode_name(KW_SELECT_RANDOM), "random");
    assert_null(kw_select_mode_name(KW_SELECT_COUNT));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_count_rule), cmocka_unit_test(test_position_modes), cmocka_unit_test(test_random_draw),
        cmocka_unit_test(test_norm_topk),  cmocka_unit_test(test_refused),        cmocka_unit_test(test_skip_ranked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
