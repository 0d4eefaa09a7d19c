/* test_status.c: status codes have stable numbers, names and texts; the thread-local detail works. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "common/kw_status.h"

static int fails_with_detail(int value) {
    KW_RETURN_IF(value > 3, KW_E_LIMIT, "value %d over 3", value);
    return 0;
}

static void test_numbers_are_stable(void **state) {
    (void)state;
    /* These numbers are part of the protocol and of golden files: changing one must fail this test. */
    assert_int_equal(KW_E_NOMEM, -1);
    assert_int_equal(KW_E_WIRE_MAGIC, -100);
    assert_int_equal(KW_E_MODEL_FORMAT, -200);
    assert_int_equal(KW_E_PT_FORMAT, -300);
    assert_int_equal(KW_E_BACKEND, -400);
    /* proto/ and net/: every code is pinned, they travel in Error frames (docs/PROTOCOL.md) */
    assert_int_equal(KW_E_PROTO_FRAME_TYPE, -500);
    assert_int_equal(KW_E_PROTO_FRAME_SIZE, -501);
    assert_int_equal(KW_E_PROTO_MESSAGE, -502);
    assert_int_equal(KW_E_PROTO_TRUNCATED, -503);
    assert_int_equal(KW_E_PROTO_TRAILING, -504);
    assert_int_equal(KW_E_PROTO_VERSION, -505);
    assert_int_equal(KW_E_PROTO_FIELD, -506);
    assert_int_equal(KW_E_PROTO_SEQUENCE, -507);
    assert_int_equal(KW_E_PROTO_REFUSED, -508);
    assert_int_equal(KW_E_NET_ADDRESS, -550);
    assert_int_equal(KW_E_NET_CONNECT, -551);
    assert_int_equal(KW_E_NET_CONNECT_TIMEOUT, -552);
    assert_int_equal(KW_E_NET_IDLE_TIMEOUT, -553);
    assert_int_equal(KW_E_NET_REQUEST_TIMEOUT, -554);
    assert_int_equal(KW_E_NET_CLOSED, -555);
    assert_int_equal(KW_E_NET_IO, -556);
    assert_int_equal(KW_E_NET_BACKPRESSURE, -557);
    assert_int_equal(KW_E_NET_TLS, -558);
    assert_int_equal(KW_E_NET_TLS_VERIFY, -559);
    assert_int_equal(KW_E_NET_NOT_TLS, -560);
    assert_int_equal(KW_E_NET_SHUTDOWN, -561);
    assert_int_equal(KW_E_NET_HTTP, -562);
    assert_int_equal(KW_E_NET_HTTP_LIMIT, -563);
    assert_int_equal(KW_E_SHARE_MISMATCH, -600);
    assert_int_equal(KW_E_SHARE_MODE, -604);
}

static void test_names_and_texts(void **state) {
    (void)state;
    assert_string_equal(kw_status_name(KW_E_WIRE_CHECKSUM), "KW_E_WIRE_CHECKSUM");
    assert_string_equal(kw_status_name(0), "KW_OK");
    assert_string_equal(kw_status_name(-9999), "KW_E_UNKNOWN");
    assert_string_equal(kw_strerror(-9999), "unknown error");
    assert_true(strlen(kw_strerror(KW_E_IO)) > 5);
}

static void test_detail(void **state) {
    (void)state;
    kw_error_clear();
    assert_string_equal(kw_error_detail(), "");
    assert_int_equal(fails_with_detail(2), 0);
    assert_int_equal(fails_with_detail(7), KW_E_LIMIT);
    assert_string_equal(kw_error_detail(), "value 7 over 3");
    /* adding context to the current detail (the detail is both output and argument) */
    assert_int_equal(kw_error_set(KW_E_IO, "reading x: %s", kw_error_detail()), KW_E_IO);
    assert_string_equal(kw_error_detail(), "reading x: value 7 over 3");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_numbers_are_stable),
        cmocka_unit_test(test_names_and_texts),
        cmocka_unit_test(test_detail),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
