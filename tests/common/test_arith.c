/* test_arith.c: checked size arithmetic and little-endian byte access. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/kw_bytes.h"
#include "common/kw_size.h"

static void test_overflow_detected(void **state) {
    (void)state;
    size_t r = 123;
    assert_int_equal(kw_size_mul(SIZE_MAX / 2 + 1, 2, &r), KW_E_OVERFLOW);
    assert_int_equal(r, 123);
    assert_int_equal(kw_size_add(SIZE_MAX, 1, &r), KW_E_OVERFLOW);
    assert_int_equal(kw_size_mul3(1u << 20, 1u << 20, (size_t)1 << 10, &r), 0);
    assert_int_equal(kw_size_mul3((size_t)1 << 40, (size_t)1 << 20, 1u << 10, &r), KW_E_OVERFLOW);
    assert_int_equal(kw_size_from_i64(-1, &r), KW_E_OVERFLOW);
    assert_int_equal(kw_size_muladd(3, 4, 5, &r), 0);
    assert_int_equal(r, 17);
    assert_int_equal(kw_size_align_up(65, 64, &r), 0);
    assert_int_equal(r, 128);
    assert_int_equal(kw_size_align_up(SIZE_MAX - 2, 64, &r), KW_E_OVERFLOW);
}

static void test_little_endian(void **state) {
    (void)state;
    uint8_t b[8];
    kw_store_le32(b, 0x11223344u);
    assert_int_equal(b[0], 0x44);
    assert_int_equal(b[3], 0x11);
    assert_int_equal(kw_load_le32(b), 0x11223344u);
    kw_store_le64(b, 0x0102030405060708ull);
    assert_int_equal(b[0], 0x08);
    assert_int_equal(b[7], 0x01);
    assert_true(kw_load_le64(b) == 0x0102030405060708ull);
    kw_store_le16(b, 0xbeef);
    assert_int_equal(kw_load_le16(b), 0xbeef);
    kw_store_lef32(b, -1.5f);
    assert_true(kw_load_lef32(b) == -1.5f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_overflow_detected),
        cmocka_unit_test(test_little_endian),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
