/* test_buf.c: kw_buf appends (bytes with NULs, strings, printf longer than the free room), growth across many
 * appends, the terminator, take/free ownership, and sticky failures. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_buf.h"
#include "common/kw_status.h"

static void test_empty_take_gives_empty_string(void **state) {
    (void)state;
    kw_buf b = KW_BUF_INIT;
    char *s = NULL;
    size_t n = 99;
    assert_int_equal(kw_buf_take(&b, &s, &n), 0);
    assert_non_null(s);
    assert_int_equal(n, 0);
    assert_string_equal(s, "");
    free(s);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, 0);
    assert_int_equal(kw_buf_append(&b, NULL, 0), 0); /* nothing to copy: data may be NULL */
    assert_int_equal(kw_buf_take(&b, &s, NULL), 0);
    assert_string_equal(s, "");
    free(s);
}

static void test_append_bytes_str_printf(void **state) {
    (void)state;
    kw_buf b = KW_BUF_INIT;
    assert_int_equal(kw_buf_append_str(&b, "ab"), 0);
    assert_int_equal(kw_buf_append(&b, "\0c", 2), 0);
    assert_int_equal(kw_buf_printf(&b, "[%d:%s]", 42, "x"), 0);
    assert_int_equal(b.len, 10);
    assert_int_equal(b.data[b.len], '\0');
    assert_memory_equal(b.data, "ab\0c[42:x]", 10);
    assert_true(b.cap > b.len);
    char *s = NULL;
    size_t n = 0;
    assert_int_equal(kw_buf_take(&b, &s, &n), 0);
    assert_int_equal(n, 10);
    assert_memory_equal(s, "ab\0c[42:x]", 11);
    free(s);
    assert_null(b.data);
}

/* printf output that does not fit the free room goes through the grow-and-retry path, at every starting length
 * around the first capacity. */
static void test_printf_longer_than_room(void **state) {
    (void)state;
    char big[1200];
    memset(big, 'z', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    for (size_t pre = 0; pre < 300; pre += 7) {
        kw_buf b = KW_BUF_INIT;
        for (size_t i = 0; i < pre; ++i)
            assert_int_equal(kw_buf_append(&b, "y", 1), 0);
        assert_int_equal(kw_buf_printf(&b, "<%s|%zu>", big, pre), 0);
        char want[1300];
        const int k = snprintf(want, sizeof want, "<%s|%zu>", big, pre);
        assert_int_equal(b.len, pre + (size_t)k);
        for (size_t i = 0; i < pre; ++i)
            assert_int_equal(b.data[i], 'y');
        assert_memory_equal(b.data + pre, want, (size_t)k + 1);
        kw_buf_free(&b);
    }
}

/* Many small appends: the contents stay exact and terminated through every reallocation. */
static void test_growth(void **state) {
    (void)state;
    kw_buf b = KW_BUF_INIT;
    size_t want_len = 0;
    for (int i = 0; i < 20000; ++i) {
        assert_int_equal(kw_buf_printf(&b, "%d,", i), 0);
        want_len += (size_t)snprintf(NULL, 0, "%d,", i);
        assert_int_equal(b.len, want_len);
        assert_int_equal(b.data[b.len], '\0');
    }
    size_t off = 0;
    for (int i = 0; i < 20000; ++i) {
        char tmp[16];
        const int k = snprintf(tmp, sizeof tmp, "%d,", i);
        assert_memory_equal(b.data + off, tmp, (size_t)k);
        off += (size_t)k;
    }
    assert_int_equal(off, b.len);
    kw_buf_free(&b);
    kw_buf_free(&b);   /* twice is fine */
    kw_buf_free(NULL); /* NULL is a no-op */
}

/* A size that overflows is refused before anything is allocated, and the failure sticks until take or free. */
static void test_sticky_overflow(void **state) {
    (void)state;
    kw_buf b = KW_BUF_INIT;
    assert_int_equal(kw_buf_append_str(&b, "keep"), 0);
    assert_int_equal(kw_buf_reserve(&b, SIZE_MAX - 2), KW_E_OVERFLOW);
    assert_non_null(strstr(kw_error_detail(), "cannot grow"));
    assert_int_equal(b.status, KW_E_OVERFLOW);
    assert_int_equal(kw_buf_append_str(&b, "more"), KW_E_OVERFLOW);
    assert_int_equal(kw_buf_printf(&b, "%d", 1), KW_E_OVERFLOW);
    assert_int_equal(kw_buf_reserve(&b, 0), KW_E_OVERFLOW);
    assert_int_equal(b.len, 4);
    assert_string_equal(b.data, "keep"); /* untouched and still terminated */
    char *s = (char *)"unchanged";
    assert_int_equal(kw_buf_take(&b, &s, NULL), KW_E_OVERFLOW);
    assert_string_equal(s, "unchanged");
    assert_null(b.data);
    assert_int_equal(b.status, 0); /* reusable */
    assert_int_equal(kw_buf_append_str(&b, "again"), 0);
    assert_int_equal(kw_buf_take(&b, &s, NULL), 0);
    assert_string_equal(s, "again");
    free(s);

    assert_int_equal(kw_buf_append_str(&b, "x"), 0);
    assert_int_equal(kw_buf_append(&b, "y", SIZE_MAX), KW_E_OVERFLOW);
    kw_buf_free(&b);
    assert_int_equal(b.status, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_take_gives_empty_string),
        cmocka_unit_test(test_append_bytes_str_printf),
        cmocka_unit_test(test_printf_longer_than_room),
        cmocka_unit_test(test_growth),
        cmocka_unit_test(test_sticky_overflow),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
