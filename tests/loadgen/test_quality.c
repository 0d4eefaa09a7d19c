/* test_quality.c: the label-free measures on values computed by hand: the top-k KL with its rest bucket (and that it
 * bounds the full KL from below), free-running token agreement, and a reference run folder read back (first
 * successful record per item, ids and top-k pairs, malformed records refused with the line). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/kw_file.h"
#include "common/kw_status.h"
#include "tests/kw_test_util.h"
#include "loadgen/kw_load_quality.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void test_kl(void **state) {
    (void)state;
    /* P = (0.5, 0.3 | rest 0.2), Q = (0.4, 0.4 | rest 0.2). */
    const double p[] = {log(0.5), log(0.3)}, q[] = {log(0.4), log(0.4)};
    const double want = 0.5 * log(0.5 / 0.4) + 0.3 * log(0.3 / 0.4);
    assert_true(fabs(kw_load_kl_topk(p, q, 2) - want) < 1e-12);
    assert_true(fabs(kw_load_kl_topk(p, p, 2)) < 1e-15);
    /* The full distributions P = (.5, .3, .1, .1), Q = (.4, .4, .15, .05): the bucketed value is a lower bound. */
    const double pf[] = {log(0.5), log(0.3), log(0.1), log(0.1)}, qf[] = {log(0.4), log(0.4), log(0.15), log(0.05)};
    const double full = kw_load_kl_topk(pf, qf, 4);
    assert_true(fabs(full - (want + 0.1 * log(0.1 / 0.15) + 0.1 * log(0.1 / 0.05))) < 1e-12);
    assert_true(kw_load_kl_topk(p, q, 2) <= full);
    /* All of Q's mass on the listed ids while P keeps 0.2 elsewhere: the rest is floored, the value finite. */
    const double q_all[] = {log(0.6), log(0.4)};
    const double v = kw_load_kl_topk(p, q_all, 2);
    assert_true(isfinite(v) && v > 1.0);
    /* Q = 0 where P > 0 is infinite; NaN input is NaN. */
    const double q_zero[] = {-INFINITY, log(0.4)};
    assert_true(isinf(kw_load_kl_topk(p, q_zero, 2)));
    const double q_nan[] = {NAN, log(0.4)};
    assert_true(isnan(kw_load_kl_topk(p, q_nan, 2)));
    /* k = 0: everything is the rest bucket, equal mass, KL 0. */
    assert_true(fabs(kw_load_kl_topk(p, q, 0)) < 1e-15);
}

static void test_token_agreement(void **state) {
    (void)state;
    const int32_t a[] = {1, 2, 3}, b[] = {1, 5, 3, 4};
    size_t m, t;
    kw_load_token_agreement(a, 3, b, 4, &m, &t);
    assert_int_equal(m, 2);
    assert_int_equal(t, 4);
    kw_load_token_agreement(a, 3, a, 3, &m, &t);
    assert_int_equal(m, 3);
    assert_int_equal(t, 3);
    kw_load_token_agreement(a, 0, b, 0, &m, &t);
    assert_int_equal(t, 0);
}

static void write_file(const char *dir, const char *name, const char *text) {
    char *p = kw_path_join(dir, name);
    assert_non_null(p);
    assert_int_equal(kw_file_write_all(p, text, strlen(text)), 0);
    free(p);
}

static void test_refset(void **state) {
    (void)state;
    char dir[] = "/tmp/kw_refset_XXXXXX";
    assert_non_null(mkdtemp(dir));
    write_file(dir, "run.json", "{\"dataset\": {\"name\": \"openbookqa\", \"sha256\": \"abc\"}}\n");
    write_file(dir, "records.jsonl",
               "{\"item_id\": \"a\", \"success\": false, \"output\": \"\"}\n"
               "{\"item_id\": \"a\", \"success\": true, \"answer\": \"B\", \"output\": \"The correct answer is B\", "
               "\"output_ids\": [1, 6, 0], \"output_logprobs\": [-0.1, -0.2, -0.3], \"top_logprobs\": [[[1, -0.1], "
               "[2, -3]], [[6, -0.2]], [[0, -0.3], [5, -2]]]}\n"
               "{\"item_id\": \"a\", \"success\": true, \"answer\": \"C\", \"output\": \"second\"}\n"
               "{\"item_id\": \"b\", \"success\": true, \"answer\": null, \"output\": \"x\", \"output_ids\": [4]}\n");
    kw_load_refset s;
    assert_int_equal(kw_load_refset_read(dir, &s), 0);
    assert_int_equal(s.n, 2);
    assert_string_equal(s.dataset_sha256, "abc");
    const kw_load_ref_item *a = kw_load_refset_find(&s, "a");
    assert_non_null(a);
    assert_string_equal(a->answer, "B");
    assert_true(a->has_ids && a->has_top);
    assert_int_equal(a->tok.n, 3);
    assert_int_equal(a->tok.ids[1], 6);
    assert_int_equal(a->tok.top_off[1], 2);
    assert_int_equal(a->tok.top_off[3], 5);
    assert_int_equal(a->tok.top_ids[4], 5);
    assert_true(fabs(a->tok.top_lps[1] + 3) < 1e-12);
    const kw_load_ref_item *b = kw_load_refset_find(&s, "b");
    assert_non_null(b);
    assert_null(b->answer);
    assert_true(b->has_ids);
    assert_false(b->has_top);
    assert_null(kw_load_refset_find(&s, "c"));
    kw_load_refset_free(&s);
    kw_load_refset_free(NULL);
    /* A malformed record is refused with its line. */
    write_file(dir, "records.jsonl",
               "{\"item_id\": \"a\", \"success\": true, \"output\": \"x\", \"output_ids\": "
               "[1], \"top_logprobs\": [[[1]]]}\n");
    assert_int_equal(kw_load_refset_read(dir, &s), KW_E_PARSE);
    assert_non_null(strstr(kw_error_detail(), "line 1"));
    kw_test_remove_tree(dir);
    assert_true(kw_load_refset_read(dir, &s) < 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kl),
        cmocka_unit_test(test_token_agreement),
        cmocka_unit_test(test_refset),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
