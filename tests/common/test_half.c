/* test_half.c: bf16 and fp16 conversions against exhaustive round trips and hand-checked IEEE values. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>

#include "common/kw_half.h"

static void test_bf16_exhaustive_round_trip(void **state) {
    (void)state;
    for (uint32_t h = 0; h < 65536; ++h) {
        const float f = kw_bf16_to_f32((uint16_t)h);
        if (isnan(f)) {
            assert_true(isnan(kw_bf16_to_f32(kw_f32_to_bf16(f))));
            continue;
        }
        assert_int_equal(kw_f32_to_bf16(f), h);
    }
}

static void test_bf16_rounding(void **state) {
    (void)state;
    /* 1 + 2^-8 is exactly halfway between bf16 1.0 and 1.0078125: ties to even -> 1.0 */
    assert_int_equal(kw_f32_to_bf16(1.0f + 1.0f / 256.0f), 0x3f80);
    /* 1.0078125 + 2^-8 is halfway between 0x3f81 and 0x3f82: ties to even -> 0x3f82 */
    assert_int_equal(kw_f32_to_bf16(1.0078125f + 1.0f / 256.0f), 0x3f82);
    /* just above halfway rounds up */
    assert_int_equal(kw_f32_to_bf16(nextafterf(1.0f + 1.0f / 256.0f, 2.0f)), 0x3f81);
    assert_int_equal(kw_f32_to_bf16(INFINITY), 0x7f80);
    assert_int_equal(kw_f32_to_bf16(-0.0f), 0x8000);
    assert_int_equal(kw_f32_to_bf16(3.4e38f), 0x7f80); /* rounds past the largest finite bf16 */
}

static void test_f16_exhaustive_round_trip(void **state) {
    (void)state;
    for (uint32_t h = 0; h < 65536; ++h) {
        const float f = kw_f16_to_f32((uint16_t)h);
        if (isnan(f)) {
            assert_true(isnan(kw_f16_to_f32(kw_f32_to_f16(f))));
            continue;
        }
        assert_int_equal(kw_f32_to_f16(f), h);
    }
}

static void test_f16_values(void **state) {
    (void)state;
    assert_true(kw_f16_to_f32(0x3c00) == 1.0f);
    assert_true(kw_f16_to_f32(0x7bff) == 65504.0f);
    assert_true(kw_f16_to_f32(0x0001) == ldexpf(1.0f, -24));
    assert_int_equal(kw_f32_to_f16(65519.0f), 0x7bff);
    assert_int_equal(kw_f32_to_f16(65520.0f), 0x7c00);
    assert_int_equal(kw_f32_to_f16(ldexpf(1.0f, -25)), 0x0000);                   /* tie to even zero */
    assert_int_equal(kw_f32_to_f16(nextafterf(ldexpf(1.0f, -25), 1.0f)), 0x0001); /* above the tie */
    assert_int_equal(kw_f32_to_f16(ldexpf(3.0f, -25)), 0x0002);                   /* 1.5 ulp: tie to even 2 */
    assert_int_equal(kw_f32_to_f16(1.0f + ldexpf(1.0f, -11)), 0x3c00);            /* tie to even */
    assert_int_equal(kw_f32_to_f16(1.0f + ldexpf(3.0f, -11)), 0x3c02);            /* tie to even, upward */
    assert_int_equal(kw_f32_to_f16(-INFINITY), 0xfc00);
    /* every fp32 in a sweep rounds to the nearest fp16 (checked by distance, ties excluded) */
    for (float x = 1e-8f; x < 70000.0f; x *= 1.0137f) {
        const uint16_t h = kw_f32_to_f16(x);
        const float y = kw_f16_to_f32(h);
        if (isinf(y) || h == 0) continue;
        const float below = kw_f16_to_f32((uint16_t)(h - 1)), above = kw_f16_to_f32((uint16_t)(h + 1));
        assert_true(fabsf(x - y) <= fabsf(x - below));
        if (!isinf(above)) assert_true(fabsf(x - y) <= fabsf(x - above));
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bf16_exhaustive_round_trip),
        cmocka_unit_test(test_bf16_rounding),
        cmocka_unit_test(test_f16_exhaustive_round_trip),
        cmocka_unit_test(test_f16_values),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
