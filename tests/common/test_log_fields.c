/* test_log_fields.c: the structured fields of common/kw_log.h: kw_log_fields_add keeps "NAME=value" entries and
 * drops whole what does not fit, kw_log_fields_request names a request's fields and leaves unset ones out, the stderr
 * line of a record with fields is the line without them, and kw_log_journal_auto takes the journal only when
 * JOURNAL_STREAM names file descriptor 2. The journal path itself is tested by tests/deploy/cli_deploy_journal.sh.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/kw_log.h"
#include "common/kw_status.h"

/* Field i of f as a NUL-terminated copy. */
static const char *field(const kw_log_fields *f, int i) {
    static char copy[KW_LOG_FIELDS_TEXT + 1];
    assert_true(i < f->n);
    memcpy(copy, f->text + f->start[i], f->len[i]);
    copy[f->len[i]] = '\0';
    return copy;
}

static void test_add_keeps_name_and_value(void **state) {
    (void)state;
    kw_log_fields f = {0};
    kw_log_fields_add(&f, "KW_A", "%d", 42);
    kw_log_fields_add(&f, "KW_B", "%s and %s", "x", "y=z");
    assert_int_equal(f.n, 2);
    assert_string_equal(field(&f, 0), "KW_A=42");
    assert_string_equal(field(&f, 1), "KW_B=x and y=z");
}

static void test_add_drops_what_does_not_fit(void **state) {
    (void)state;
    kw_log_fields f = {0};
    char big[KW_LOG_FIELDS_TEXT];
    memset(big, 'v', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    kw_log_fields_add(&f, "KW_SMALL", "1");
    kw_log_fields_add(&f, "KW_BIG", "%s", big); /* dropped whole, never cut */
    assert_int_equal(f.n, 1);
    kw_log_fields_add(&f, "KW_AFTER", "2"); /* the room it did not take is still there */
    assert_int_equal(f.n, 2);
    assert_string_equal(field(&f, 1), "KW_AFTER=2");
    for (int i = f.n; i < KW_LOG_FIELDS_MAX + 3; ++i)
        kw_log_fields_add(&f, "KW_MORE", "%d", i);
    assert_int_equal(f.n, KW_LOG_FIELDS_MAX);
}

static void test_request_fields(void **state) {
    (void)state;
    kw_log_fields f = {0};
    const kw_log_request ok = {.id = 7,
                               .mode = "c2c",
                               .status = 0,
                               .bytes_sent = 100,
                               .bytes_received = 2000,
                               .duration_ms = 12.5,
                               .http_status = 200};
    kw_log_fields_request(&f, &ok);
    const char *want[] = {"KW_REQUEST_ID=7",        "KW_MODE=c2c",         "KW_OUTCOME=ok", "KW_BYTES_SENT=100",
                          "KW_BYTES_RECEIVED=2000", "KW_DURATION_MS=12.5", "KW_STATUS=200"};
    assert_int_equal(f.n, (int)(sizeof want / sizeof want[0]));
    for (int i = 0; i < f.n; ++i)
        assert_string_equal(field(&f, i), want[i]);

    kw_log_fields g = {0};
    const kw_log_request failed = {
        .id = 8, .status = KW_E_SHARE_BUSY, .bytes_sent = -1, .bytes_received = -1, .duration_ms = -1};
    kw_log_fields_request(&g, &failed);
    assert_int_equal(g.n, 2);
    assert_string_equal(field(&g, 0), "KW_REQUEST_ID=8");
    assert_string_equal(field(&g, 1), "KW_OUTCOME=KW_E_SHARE_BUSY");
}

/* The stderr line of a record with fields: the message alone, as without fields. */
static void test_stderr_line_has_no_fields(void **state) {
    (void)state;
    char path[] = "/tmp/kw-test-log-XXXXXX";
    const int fd = mkstemp(path);
    assert_true(fd >= 0);
    fflush(stderr);
    const int saved = dup(STDERR_FILENO);
    assert_true(dup2(fd, STDERR_FILENO) >= 0);
    kw_log_fields f = {0};
    kw_log_fields_add(&f, "KW_REQUEST_ID", "5");
    KW_LOG_WITH(KW_LOG_LEVEL_WARN, &f, "request %d refused", 5);
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    char line[256] = {0};
    assert_true(pread(fd, line, sizeof line - 1, 0) > 0);
    close(fd);
    unlink(path);
    const char *tail = strchr(line, 'Z'); /* after the ISO time */
    assert_non_null(tail);
    assert_string_equal(tail, "Z warn  request 5 refused\n");
}

static void test_journal_only_when_stderr_is_the_stream(void **state) {
    (void)state;
    unsetenv("JOURNAL_STREAM");
    assert_int_equal(kw_log_journal_auto("test"), 0);
    struct stat st;
    assert_int_equal(fstat(STDERR_FILENO, &st), 0);
    char value[64];
    snprintf(value, sizeof value, "%llu:%llu", (unsigned long long)st.st_dev, (unsigned long long)st.st_ino + 1);
    setenv("JOURNAL_STREAM", value, 1); /* another file of the same device */
    assert_int_equal(kw_log_journal_auto("test"), 0);
    snprintf(value, sizeof value, "%llu:%llux", (unsigned long long)st.st_dev, (unsigned long long)st.st_ino);
    setenv("JOURNAL_STREAM", value, 1);
    assert_int_equal(kw_log_journal_auto("test"), 0);
    snprintf(value, sizeof value, "%llu:%llu", (unsigned long long)st.st_dev, (unsigned long long)st.st_ino);
    setenv("JOURNAL_STREAM", value, 1);
    assert_int_equal(kw_log_journal_auto("test"), 1);
    unsetenv("JOURNAL_STREAM"); /* back to stderr: nothing here may reach a real journal */
    assert_int_equal(kw_log_journal_auto("test"), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_add_keeps_name_and_value),
        cmocka_unit_test(test_add_drops_what_does_not_fit),
        cmocka_unit_test(test_request_fields),
        cmocka_unit_test(test_stderr_line_has_no_fields),
        cmocka_unit_test(test_journal_only_when_stderr_is_the_stream),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
