/* test_request_sections.c: kw_request_recompute_prefix, kv_direct's recompute_prefix on the receiver's sections: the
 * prefix leaves the sent sections (split where it cuts one, merged with an unsent neighbour), the final token's
 * section stays last, prefix 0 changes nothing, and a prefix that leaves nothing to send is refused naming the
 * shared length. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdint.h>
#include <string.h>

#include "c2c/kw_request.h"
#include "common/kw_status.h"

static void expect(const kw_fusion_section *got, int32_t n, const kw_fusion_section *want, int32_t n_want) {
    assert_int_equal(n, n_want);
    for (int32_t i = 0; i < n; ++i) {
        assert_int_equal(got[i].length, want[i].length);
        assert_int_equal(got[i].index, want[i].index);
    }
}

static void test_standard_split(void **state) {
    (void)state;
    kw_fusion_section s[4];
    int32_t n = 0;
    assert_int_equal(kw_request_sections(13, 1, -1.0, KW_FUSION_FRONT, s, &n), 0); /* [12 sent][1] */
    assert_int_equal(kw_request_recompute_prefix(s, &n, 4, 0), 0);
    expect(s, n, (const kw_fusion_section[]){{12, 1}, {1, -1}}, 2);
    assert_int_equal(kw_request_recompute_prefix(s, &n, 4, 1), 0);
    expect(s, n, (const kw_fusion_section[]){{1, -1}, {11, 1}, {1, -1}}, 3);
    assert_int_equal(kw_request_recompute_prefix(s, &n, 4, 3), 0); /* again: the unsent prefix grows */
    expect(s, n, (const kw_fusion_section[]){{3, -1}, {9, 1}, {1, -1}}, 3);
    assert_int_equal(kw_request_recompute_prefix(s, &n, 4, 12), KW_E_INVALID_ARG);
    assert_non_null(strstr(kw_error_detail(), "the prompt shares 12"));
    kw_error_clear();
    expect(s, n, (const kw_fusion_section[]){{3, -1}, {9, 1}, {1, -1}}, 3);       /* unchanged on error */
    assert_int_equal(kw_request_recompute_prefix(s, &n, 2, 4), KW_E_INVALID_ARG); /* no room */
    kw_error_clear();
}

/* The cache-length split, back order: [unsent][sent][last]; the prefix first eats the unsent part. */
static void test_back_order(void **state) {
    (void)state;
    kw_fusion_section s[4] = {{4, -1}, {8, 1}, {1, -1}};
    int32_t n = 3;
    assert_int_equal(kw_request_recompute_prefix(s, &n, 4, 2), 0);
    expect(s, n, (const kw_fusion_section[]){{4, -1}, {8, 1}, {1, -1}}, 3);
    assert_int_equal(kw_request_recompute_prefix(s, &n, 4, 6), 0);
    expect(s, n, (const kw_fusion_section[]){{6, -1}, {6, 1}, {1, -1}}, 3);
    /* front order: [sent][unsent + last]: the prefix cuts the sent section */
    kw_fusion_section f[4] = {{5, 1}, {8, -1}};
    n = 2;
    assert_int_equal(kw_request_recompute_prefix(f, &n, 4, 2), 0);
    expect(f, n, (const kw_fusion_section[]){{2, -1}, {3, 1}, {8, -1}}, 3);
    assert_int_equal(kw_request_recompute_prefix(f, &n, 4, 5), KW_E_INVALID_ARG);
    kw_error_clear();
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_standard_split),
        cmocka_unit_test(test_back_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
