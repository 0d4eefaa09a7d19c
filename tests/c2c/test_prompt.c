/* test_prompt.c: evaluation prompts against strings made by the reference's own prompt code
 * (tests/data/c2c/prompts.jsonl, made by tools/make_prompt_fixtures.py). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "c2c/kw_prompt.h"
#include "common/kw_json.h"
#include "common/kw_status.h"
#include "tests/kw_test_util.h"

static void test_reference_prompts(void **state) {
    (void)state;
    kw_test_jsonl rows;
    kw_test_jsonl_open(&rows, KW_TEST_DATA_DIR "/c2c/prompts.jsonl");
    size_t n = 0, datasets = 0;
    for (const cJSON *v; (v = kw_test_jsonl_next(&rows)) != NULL;) {
        const char *dataset = cJSON_GetObjectItemCaseSensitive(v, "dataset")->valuestring;
        const int cot = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(v, "use_cot"));
        const int tmpl = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(v, "use_template"));
        const char *want = cJSON_GetObjectItemCaseSensitive(v, "prompt")->valuestring;
        char *got = NULL;
        if (strcmp(dataset, "build_prompt") == 0) {
            const char *q = cJSON_GetObjectItemCaseSensitive(v, "question")->valuestring;
            const char *c = cJSON_GetObjectItemCaseSensitive(v, "choices")->valuestring;
            assert_int_equal(kw_prompt_mc(q, c, cot, tmpl, &got), 0);
        } else {
            assert_int_equal(kw_prompt_from_item(dataset, cJSON_GetObjectItemCaseSensitive(v, "item"), cot, tmpl, &got),
                             0);
            ++datasets;
        }
        if (strcmp(got, want) != 0) fprintf(stderr, "case %zu (%s): got\n%s\n--- want\n%s\n", n, dataset, got, want);
        assert_string_equal(got, want);
        free(got);
        ++n;
    }
    kw_test_jsonl_close(&rows);
    assert_true(n >= 90);
    assert_true(datasets >= 60);
}

static void test_choices_block(void **state) {
    (void)state;
    const char *opts[] = {"x", "", "z"};
    char *s = NULL;
    assert_int_equal(kw_prompt_choices(opts, 3, 0, &s), 0);
    assert_string_equal(s, "A. x\nB. \nC. z\n");
    free(s);
    assert_int_equal(kw_prompt_choices(opts, 3, 1, &s), 0);
    assert_string_equal(s, "A. x\nC. z\n");
    free(s);
    assert_int_equal(kw_prompt_choices(NULL, 0, 0, &s), 0);
    assert_string_equal(s, "");
    free(s);
    const char *many[KW_PROMPT_MAX_OPTIONS + 1];
    for (size_t i = 0; i <= KW_PROMPT_MAX_OPTIONS; ++i)
        many[i] = "o";
    assert_int_equal(kw_prompt_choices(many, KW_PROMPT_MAX_OPTIONS + 1, 0, &s), KW_E_LIMIT);
}

static void test_bad_items(void **state) {
    (void)state;
    static const struct {
        const char *dataset;
        const char *json;
        int rc;
    } cases[] = {
        {"mmlu-redux", "{\"choices\": [\"a\"]}", KW_E_PARSE}, /* question is required */
        {"mmlu-redux", "{\"question\": \"q\"}", KW_E_PARSE},  /* choices is required */
        {"mmlu-redux", "{\"question\": \"q\", \"choices\": [1]}", KW_E_PARSE},
        {"mmmlu", "{\"A\": \"a\"}", KW_E_PARSE}, /* Question is required */
        {"ceval", "{\"question\": \"q\", \"A\": 3}", KW_E_PARSE},
        {"openbookqa", "{\"choices\": {\"text\": \"abc\"}}", KW_E_PARSE},
        {"gsm8k", "[]", KW_E_PARSE},
        {"no-such-dataset", "{}", KW_E_INVALID_ARG},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
        cJSON *item = NULL;
        assert_int_equal(kw_json_parse(cases[i].json, strlen(cases[i].json), &item), 0);
        char *out = (char *)"untouched";
        assert_int_equal(kw_prompt_from_item(cases[i].dataset, item, 0, 1, &out), cases[i].rc);
        assert_string_equal(out, "untouched");
        cJSON_Delete(item);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_prompts),
        cmocka_unit_test(test_choices_block),
        cmocka_unit_test(test_bad_items),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
