/* test_relay.c: the text relay's string work (c2c/kw_relay.h): the UTF-8 cap at a character boundary (Python's
 * encode()[:cap].decode(errors="ignore")), stripping, the style names, and the messages of the styles that need no
 * model: raw (the question, stripped and capped) and extractive (whole whitespace-collapsed sentences in order while
 * they fit). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "c2c/kw_relay.h"
#include "common/kw_status.h"

static void expect_text(enum kw_relay_style style, const char *q, int64_t cap, const char *want, int want_truncated) {
    char *out = NULL;
    size_t len = 0;
    int truncated = -1;
    assert_int_equal(kw_relay_text(style, q, strlen(q), cap, &out, &len, &truncated), 0);
    if (strcmp(out, want) != 0 || len != strlen(want) || truncated != want_truncated)
        fail_msg("style %d cap %lld: got \"%s\" (%zu, truncated %d), want \"%s\" (truncated %d)", (int)style,
                 (long long)cap, out, len, truncated, want, want_truncated);
    free(out);
}

static void test_cap_utf8(void **state) {
    (void)state;
    const char *t = "a\xc3\xa9z"; /* a, e-acute (2 bytes), z */
    size_t len = 0;
    int tr = 0;
    kw_relay_cap_utf8(t, 4, 2, &len, &tr); /* the cut falls inside e-acute: dropped */
    assert_int_equal(len, 1);
    assert_int_equal(tr, 1);
    kw_relay_cap_utf8(t, 4, 3, &len, &tr);
    assert_int_equal(len, 3);
    kw_relay_cap_utf8(t, 4, 4, &len, &tr);
    assert_int_equal(len, 4);
    assert_int_equal(tr, 0);
    kw_relay_cap_utf8(t, 4, -1, &len, &tr);
    assert_int_equal(len, 4);
    kw_relay_cap_utf8(t, 4, 0, &len, &tr);
    assert_int_equal(len, 0);
    assert_int_equal(tr, 1);
}

static void test_styles(void **state) {
    (void)state;
    enum kw_relay_style s;
    for (int i = 0; i < KW_RELAY_STYLE_COUNT; ++i) {
        assert_int_equal(kw_relay_style_parse(kw_relay_style_name((enum kw_relay_style)i), &s), 0);
        assert_int_equal(s, i);
    }
    assert_int_equal(kw_relay_style_parse("summary", &s), KW_E_INVALID_ARG);
    assert_null(kw_relay_style_name(KW_RELAY_STYLE_COUNT));
    char *out = NULL;
    size_t len = 0;
    int tr = 0;
    assert_int_equal(kw_relay_text(KW_RELAY_GENERATED, "q", 1, -1, &out, &len, &tr), KW_E_INVALID_ARG);
}

static void test_raw(void **state) {
    (void)state;
    expect_text(KW_RELAY_RAW, "  What is 2+2?\n", -1, "What is 2+2?", 0);
    expect_text(KW_RELAY_RAW, "  What is 2+2?\n", 7, "What is", 1);
    expect_text(KW_RELAY_RAW, "caf\xc3\xa9 au lait", 4, "caf", 1);
    expect_text(KW_RELAY_RAW, "abc", 0, "", 1);
}

static void test_extractive(void **state) {
    (void)state;
    const char *q = "The sun  is a star. It is hot!  Why?\nChoices:\nA. gas\nB.   rock";
    expect_text(KW_RELAY_EXTRACTIVE, q, -1, "The sun is a star. It is hot! Why? Choices: A. gas B. rock", 0);
    /* whole sentences only: 18 bytes hold the first, 29 the first two (18 + 1 + 10) */
    expect_text(KW_RELAY_EXTRACTIVE, q, 18, "The sun is a star.", 1);
    expect_text(KW_RELAY_EXTRACTIVE, q, 28, "The sun is a star.", 1);
    expect_text(KW_RELAY_EXTRACTIVE, q, 29, "The sun is a star. It is hot!", 1);
    expect_text(KW_RELAY_EXTRACTIVE, q, 17, "", 1);
    /* "A. gas" is a sentence ("A." then whitespace) split in two: punctuation then space ends a sentence */
    expect_text(KW_RELAY_EXTRACTIVE, "x.y? z\r\n\r\n  \n w", -1, "x.y? z w", 0);
    expect_text(KW_RELAY_EXTRACTIVE, "   \n\t ", -1, "", 0);
    expect_text(KW_RELAY_EXTRACTIVE, "end.", 4, "end.", 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cap_utf8),
        cmocka_unit_test(test_styles),
        cmocka_unit_test(test_raw),
        cmocka_unit_test(test_extractive),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
