/* test_wheel.c: tools/kw_wheel.c (the ZIP member reader of kvwire fetch-model) on archives written by Python's
 * zipfile (tests/data/tools/members.whl, tools/make_gguf_fixtures.py wheels): stored, deflated and empty members read
 * back; a missing member, every truncation of the archive, and corrupted member bytes (caught by inflate or the
 * CRC-32) refused without a crash. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/kw_file.h"
#include "common/kw_status.h"
#include "tools/kw_wheel.h"

#define WHEEL KW_TEST_DATA_DIR "/tools/members.whl"

static void test_members(void **state) {
    (void)state;
    char *text = NULL;
    size_t n = 0;
    assert_int_equal(kw_wheel_read_small(WHEEL, "pkg/stored.txt", 1024, &text, &n), 0);
    assert_string_equal(text, "stored bytes\n");
    free(text);
    assert_int_equal(kw_wheel_read_small(WHEEL, "pkg/deflated.bin", 1 << 20, &text, &n), 0);
    assert_int_equal(n, 20000);
    for (size_t i = 0; i < n; ++i)
        assert_non_null(strchr("abcdefgh ", text[i]));
    free(text);
    assert_int_equal(kw_wheel_read_small(WHEEL, "pkg/empty", 16, &text, &n), 0);
    assert_int_equal(n, 0);
    free(text);
    assert_int_equal(kw_wheel_read_small(WHEEL, "pkg/deflated.bin", 100, &text, &n), KW_E_LIMIT);
    assert_int_equal(kw_wheel_read_small(WHEEL, "pkg/none", 100, &text, &n), KW_E_NOT_FOUND);
    assert_int_equal(kw_wheel_read_small("/nonexistent.whl", "x", 100, &text, &n), KW_E_NOT_FOUND);
}

/* Writes bytes to a temporary file and reads pkg/deflated.bin from it; returns the status. */
static int read_mutated(const char *bytes, size_t len) {
    char path[] = "/tmp/kw_wheel_test_XXXXXX";
    const int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(kw_file_write_all(path, bytes, len), 0);
    char *text = NULL;
    size_t n = 0;
    const int rc = kw_wheel_read_small(path, "pkg/deflated.bin", 1 << 20, &text, &n);
    free(text);
    unlink(path);
    return rc;
}

static void test_damage(void **state) {
    (void)state;
    char *data = NULL;
    size_t size = 0;
    assert_int_equal(kw_file_read_all(WHEEL, 1 << 20, &data, &size), 0);
    for (size_t n = 0; n < size; n += 97) /* truncations: the end record or the member goes missing */
        assert_true(read_mutated(data, n) < 0);
    /* corrupt the deflate stream (the member data starts after the first local header and stored.txt) */
    size_t refused = 0;
    for (size_t i = 120; i < 4000; i += 61) {
        data[i] ^= 0x5a;
        const int rc = read_mutated(data, size);
        assert_true(rc == 0 || rc == KW_E_PARSE);
        refused += rc == KW_E_PARSE;
        data[i] ^= 0x5a;
    }
    assert_true(refused > 10);
    free(data);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_members),
        cmocka_unit_test(test_damage),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
