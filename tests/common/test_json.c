/* test_json.c: JSON parsing with trailing-data rejection and typed, range-checked getters. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_json.h"
#include "common/kw_status.h"

static void test_getters(void **state) {
    (void)state;
    const char *text = "{\"n\": 28, \"f\": 1e-6, \"b\": true, \"s\": \"silu\", \"x\": 1.5, \"z\": null}";
    cJSON *root = NULL;
    assert_int_equal(kw_json_parse(text, strlen(text), &root), 0);
    int64_t n = 0;
    double f = 0;
    int b = 0;
    const char *s = NULL;
    assert_int_equal(kw_json_get_i64(root, "n", 1, 100, &n, "t"), 0);
    assert_int_equal(n, 28);
    assert_int_equal(kw_json_get_i64(root, "n", 1, 10, &n, "t"), KW_E_PARSE);
    assert_int_equal(kw_json_get_i64(root, "x", 0, 10, &n, "t"), KW_E_PARSE); /* not integral */
    assert_int_equal(kw_json_get_i64(root, "missing", 0, 10, &n, "t"), KW_E_NOT_FOUND);
    assert_int_equal(kw_json_get_i64(root, "z", 0, 10, &n, "t"), KW_E_NOT_FOUND); /* null counts as absent */
    assert_int_equal(kw_json_opt_i64(root, "z", 0, 10, 7, &n, "t"), 0);
    assert_int_equal(n, 7);
    assert_int_equal(kw_json_get_f64(root, "f", &f, "t"), 0);
    assert_true(f == 1e-6);
    assert_int_equal(kw_json_get_bool(root, "b", &b, "t"), 0);
    assert_int_equal(b, 1);
    assert_int_equal(kw_json_get_bool(root, "n", &b, "t"), KW_E_PARSE);
    assert_int_equal(kw_json_get_str(root, "s", &s, "t"), 0);
    assert_string_equal(s, "silu");
    assert_int_equal(kw_json_opt_str(root, "none", "dflt", &s, "t"), 0);
    assert_string_equal(s, "dflt");
    cJSON_Delete(root);
}

static void test_rejects(void **state) {
    (void)state;
    cJSON *root = NULL;
    assert_int_equal(kw_json_parse("{\"a\":1} x", 9, &root), KW_E_PARSE);
    assert_int_equal(kw_json_parse("{\"a\":", 5, &root), KW_E_PARSE);
    assert_int_equal(kw_json_parse("{\"a\":1}  \n", 10, &root), 0);
    cJSON_Delete(root);
}

static void test_append_string(void **state) {
    (void)state;
    char *buf = NULL;
    size_t len = 0, cap = 0;
    assert_int_equal(kw_json_append_string(&buf, &len, &cap, "a\"b\\c\n\x01", 7), 0);
    assert_string_equal(buf, "\"a\\\"b\\\\c\\n\\u0001\"");
    free(buf);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_getters),
        cmocka_unit_test(test_rejects),
        cmocka_unit_test(test_append_string),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
