/* test_json.c: JSON parsing with trailing-data rejection, typed, range-checked getters, and the string literal codec
 * (encoding, and decoding that keeps U+0000). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
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

/* Decodes literal and compares with want[0..want_len). */
static void check_decoded(const char *literal, const char *want, size_t want_len) {
    char *got = NULL;
    size_t got_len = 99;
    assert_int_equal(kw_json_decode_string(literal, strlen(literal), &got, &got_len), 0);
    assert_int_equal(got_len, want_len);
    assert_memory_equal(got, want, want_len);
    assert_int_equal(got[got_len], '\0');
    free(got);
}

static void test_decode_string(void **state) {
    (void)state;
    check_decoded("\"\"", "", 0);
    check_decoded("\"plain text\"", "plain text", 10);
    check_decoded("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", "\"\\/\b\f\n\r\t", 8);
    check_decoded("\"x\\u0000B\"", "x\0B", 3); /* NUL kept, not a terminator */
    check_decoded("\"\\u00e9\\u20AC\\ud83d\\ude00\"", "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9);
    check_decoded(" \t\"a\"\r\n", "a", 1);                     /* JSON whitespace around the literal */
    check_decoded("\"\xff raw bytes\"", "\xff raw bytes", 11); /* bytes are copied, not validated */
    /* An embedded NUL byte in the input is a raw control character, also past the closing quote. */
    char *got = NULL;
    size_t n = 0;
    assert_int_equal(kw_json_decode_string("\"a\0\"", 4, &got, &n), KW_E_PARSE);
    assert_int_equal(kw_json_decode_string("\"a\"\0", 4, &got, &n), KW_E_PARSE);
    assert_int_equal(kw_json_decode_string(NULL, 0, &got, &n), KW_E_PARSE);

    static const struct {
        const char *text;
        int status;
        const char *detail;
    } bad[] = {
        {"", KW_E_PARSE, "expected a JSON string"},
        {"  ", KW_E_PARSE, "expected a JSON string"},
        {"not json", KW_E_PARSE, "expected a JSON string"},
        {"[\"a\"]", KW_E_PARSE, "expected a JSON string"},
        {"\"unterminated", KW_E_PARSE, "unterminated JSON string"},
        {"\"a\\", KW_E_PARSE, "unterminated escape"},
        {"\"\\q\"", KW_E_PARSE, "unknown escape \\q"},
        {"\"\\u12\"", KW_E_PARSE, "bad \\u escape"},
        {"\"\\u12", KW_E_PARSE, "bad \\u escape"},
        {"\"\\u12g4\"", KW_E_PARSE, "bad \\u escape"},
        {"\"raw\ttab\"", KW_E_PARSE, "raw control character 0x09"},
        {"\"a\" \"b\"", KW_E_PARSE, "trailing characters"},
        {"\"a\"x", KW_E_PARSE, "trailing characters"},
        {"\"lone \\ud800\"", KW_E_UTF8, "lone high surrogate \\uD800"},
        {"\"\\ud800\\u0041\"", KW_E_UTF8, "lone high surrogate"},
        {"\"\\ud800\\ud800\"", KW_E_UTF8, "lone high surrogate"},
        {"\"\\ud800\\udc0", KW_E_UTF8, "lone high surrogate"},
        {"\"\\udc00\"", KW_E_UTF8, "lone low surrogate \\uDC00"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; ++i) {
        char *out = (char *)"untouched";
        size_t out_len = 7;
        const int rc = kw_json_decode_string(bad[i].text, strlen(bad[i].text), &out, &out_len);
        if (rc != bad[i].status || !strstr(kw_error_detail(), bad[i].detail))
            print_error("case %zu (%s): status %d, detail \"%s\"\n", i, bad[i].text, rc, kw_error_detail());
        assert_int_equal(rc, bad[i].status);
        assert_non_null(strstr(kw_error_detail(), bad[i].detail));
        assert_string_equal(out, "untouched");
        assert_int_equal(out_len, 7);
    }
}

/* Whatever the encoder writes, the decoder reads back byte for byte, NULs and control bytes included. */
static void test_string_round_trip(void **state) {
    (void)state;
    char text[256];
    for (int i = 0; i < 256; ++i)
        text[i] = (char)(255 - i);
    for (size_t n = 0; n <= sizeof text; n += 17) {
        char *buf = NULL, *back = NULL;
        size_t len = 0, cap = 0, back_len = 0;
        assert_int_equal(kw_json_append_string(&buf, &len, &cap, text + sizeof text - n, n), 0);
        assert_int_equal(kw_json_decode_string(buf, len, &back, &back_len), 0);
        assert_int_equal(back_len, n);
        if (n) assert_memory_equal(back, text + sizeof text - n, n);
        free(back);
        free(buf);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_getters),           cmocka_unit_test(test_rejects),
        cmocka_unit_test(test_append_string),     cmocka_unit_test(test_decode_string),
        cmocka_unit_test(test_string_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
