/* test_regime.c: the per-family byte thresholds and the regime map of `kvload report` (loadgen/kw_load_regime.h) on
 * hand-computed runs: the fewest bytes reaching each level, "not reached", the winner per budget segment with ties
 * to fewer bytes, lower-is-better metrics, and runs without numbers left out. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "loadgen/kw_load_regime.h"

static const kw_load_regime_run runs[] = {
    {"alone", "receiver_only", 0, 0.50},   {"kv-int4", "kv_direct", 3000, 0.93},  {"kv-int6", "kv_direct", 4000, 0.96},
    {"kv-int8", "kv_direct", 5000, 0.995}, {"c2c-half", "c2c", 2000, 0.90},       {"c2c-full", "c2c", 6000, 0.97},
    {"broken", "c2c", NAN, 0.99},          {"kv-bf16", "kv_direct", 9000, 0.995},
};
#define N_RUNS (sizeof runs / sizeof runs[0])

static void test_thresholds(void **state) {
    (void)state;
    const double levels[] = {0.95, 0.99};
    kw_load_regime_threshold *t = NULL;
    size_t n = 0;
    assert_int_equal(kw_load_regime_thresholds(runs, N_RUNS, levels, 2, &t, &n), 0);
    assert_int_equal(n, 6); /* receiver_only, kv_direct, c2c x 2 levels */
    assert_string_equal(t[0].family, "receiver_only");
    assert_false(t[0].reached);
    assert_string_equal(t[2].family, "kv_direct");
    assert_true(t[2].reached && t[2].bytes == 4000 && strcmp(t[2].run, "kv-int6") == 0);
    assert_true(t[3].reached && t[3].bytes == 5000 && strcmp(t[3].run, "kv-int8") == 0); /* not kv-bf16 */
    assert_string_equal(t[4].family, "c2c");
    assert_true(t[4].reached && t[4].bytes == 6000);
    assert_false(t[5].reached); /* "broken" has no byte count: left out */
    free(t);
}

static void test_map(void **state) {
    (void)state;
    kw_load_regime_segment *s = NULL;
    size_t n = 0;
    assert_int_equal(kw_load_regime_map(runs, N_RUNS, 1, &s, &n), 0);
    /* 0: alone; 2000: c2c-half; 3000: kv-int4; 4000: kv-int6; 5000: kv-int8 (kv-bf16 ties at 0.995, more bytes) */
    assert_int_equal(n, 5);
    const char *want[] = {"alone", "c2c-half", "kv-int4", "kv-int6", "kv-int8"};
    const double from[] = {0, 2000, 3000, 4000, 5000};
    for (size_t i = 0; i < n; ++i) {
        assert_string_equal(s[i].run, want[i]);
        assert_true(s[i].from_bytes == from[i]);
        assert_true(i + 1 < n ? s[i].to_bytes == from[i + 1] : isinf(s[i].to_bytes));
    }
    free(s);
    /* lower is better (KL): the smallest value within the budget wins */
    const kw_load_regime_run kl[] = {{"a", "f", 100, 0.5}, {"b", "f", 200, 0.7}, {"c", "g", 300, 0.1}};
    assert_int_equal(kw_load_regime_map(kl, 3, 0, &s, &n), 0);
    assert_int_equal(n, 2);
    assert_string_equal(s[0].run, "a");
    assert_true(s[0].to_bytes == 300);
    assert_string_equal(s[1].run, "c");
    free(s);
    assert_int_equal(kw_load_regime_map(NULL, 0, 1, &s, &n), 0);
    assert_int_equal(n, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_thresholds), cmocka_unit_test(test_map)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
