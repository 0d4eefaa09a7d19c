/* test_answer.c: the answer extractor against outputs of the reference Python function
 * (tests/data/c2c/answer_vectors.jsonl, made by tools/make_answer_fixtures.py), plus its input checks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "c2c/kw_answer.h"
#include "common/kw_json.h"
#include "common/kw_status.h"
#include "tests/kw_test_util.h"

static void test_reference_vectors(void **state) {
    (void)state;
    kw_test_jsonl rows;
    kw_test_jsonl_open(&rows, KW_TEST_DATA_DIR "/c2c/answer_vectors.jsonl");
    size_t n = 0, failures = 0, spec_letters = 0;
    for (const cJSON *v; (v = kw_test_jsonl_next(&rows)) != NULL;) {
        const cJSON *hex = cJSON_GetObjectItemCaseSensitive(v, "hex");
        const cJSON *expected = cJSON_GetObjectItemCaseSensitive(v, "expected");
        assert_true(cJSON_IsString(hex));
        size_t n_bytes = 0;
        char *bytes = kw_test_hex_decode(hex->valuestring, &n_bytes);
        char got = 'X';
        assert_int_equal(kw_answer_extract(bytes, n_bytes, &got), 0);
        const char want = cJSON_IsString(expected) ? expected->valuestring[0] : 0;
        if (!cJSON_IsString(expected)) assert_true(cJSON_IsNull(expected));
        if (got != want) {
            ++failures;
            fprintf(stderr, "vector %zu (%s): got %c, reference %c\n", n, hex->valuestring, got ? got : '-',
                    want ? want : '-');
        }
        spec_letters += want != 0;
        free(bytes);
        ++n;
    }
    kw_test_jsonl_close(&rows);
    assert_int_equal(failures, 0);
    assert_true(n >= 22 + 60);       /* the spec's 22 and at least 60 of our own */
    assert_true(spec_letters > 100); /* a mix of letters and None, not a degenerate file */
}

static void test_spot_checks(void **state) {
    (void)state;
    /* A few cases written out, so a regenerated fixture cannot silently change them. */
    static const struct {
        const char *in;
        char want;
    } cases[] = {
        {"The correct answer is B", 'B'},
        {"answer: c", 'C'},
        {"2+2=4 so the result is d", 0},
        {"\xe6\xad\xa3\xe7\xa1\xae\xe7\xad\x94\xe6\xa1\x88\xe6\x98\xaf"
         "B",
         'B'},                          /* 正确答案是B */
        {"AN\xc5\xbfWER: b", 'B'},      /* long s matches 's' under IGNORECASE */
        {"Using the rule, it is C", 0}, /* "sin" inside "Using" counts as math */
        {"", 0},
        {"   \t\n", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
        char got = 'X';
        assert_int_equal(kw_answer_extract(cases[i].in, strlen(cases[i].in), &got), 0);
        assert_int_equal(got, cases[i].want);
    }
}

static void test_invalid_input(void **state) {
    (void)state;
    static const char *const bad[] = {
        "\xff", "A\xc3", "\xc0\xaf\x42" /* overlong '/' then 'B' */, "\xed\xa0\x80", "\xf4\x90\x80\x80", "\x80"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; ++i) {
        char got = 'X';
        assert_int_equal(kw_answer_extract(bad[i], strlen(bad[i]), &got), KW_E_UTF8);
        assert_int_equal(got, 0);
    }
    char got = 'X';
    assert_int_equal(kw_answer_extract(NULL, 3, &got), KW_E_INVALID_ARG);
    assert_int_equal(kw_answer_extract("A", 1, NULL), KW_E_INVALID_ARG);
    assert_int_equal(kw_answer_extract(NULL, 0, &got), 0);
    assert_int_equal(got, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_vectors),
        cmocka_unit_test(test_spot_checks),
        cmocka_unit_test(test_invalid_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
