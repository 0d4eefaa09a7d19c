/* test_arena.c: arena alignment, growth, reset and free. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "common/kw_arena.h"

static void test_alloc_aligned_and_distinct(void **state) {
    (void)state;
    kw_arena a;
    kw_arena_init(&a, 256);
    unsigned char *p = kw_arena_alloc(&a, 10);
    unsigned char *q = kw_arena_alloc(&a, 1000); /* larger than a chunk */
    unsigned char *r = kw_arena_alloc(&a, 0);
    assert_non_null(p);
    assert_non_null(q);
    assert_non_null(r);
    assert_int_equal((uintptr_t)p % 64, 0);
    assert_int_equal((uintptr_t)q % 64, 0);
    assert_int_equal((uintptr_t)r % 64, 0);
    memset(p, 1, 10);
    memset(q, 2, 1000);
    assert_int_equal(p[9], 1);
    assert_true(p != q && q != r && p != r);
    assert_int_equal(a.bytes_in_use, 1010);
    int *z = kw_arena_calloc(&a, 100, sizeof(int));
    for (int i = 0; i < 100; ++i)
        assert_int_equal(z[i], 0);
    assert_null(kw_arena_calloc(&a, SIZE_MAX / 2, 4));
    assert_null(kw_arena_alloc(&a, SIZE_MAX - 8));
    kw_arena_reset(&a);
    assert_int_equal(a.bytes_in_use, 0);
    assert_non_null(kw_arena_alloc(&a, 64));
    kw_arena_free(&a);
    kw_arena_free(&a);   /* twice is fine */
    kw_arena_free(NULL); /* NULL is a no-op */
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_alloc_aligned_and_distinct)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
