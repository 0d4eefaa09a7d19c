/* test_backend_memory.c: backend memory accounting (kw_backend_get_memory, kw_backend_set_memory_limit) on the CPU
 * backend and, where the CUDA emulator is built, on the emulated CUDA backend: tensors are charged and released,
 * the peak is kept, an allocation past the limit is refused with KW_E_NOMEM before anything is allocated and its
 * reason names the budget, a limit below what is live is refused, and on CUDA the matmul workspace counts too (an op
 * whose scratch does not fit fails cleanly and works once the limit is lifted). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_status.h"
#include "kernels/kw_backend.h"
#ifdef KW_TEST_CUDA_EMU
#include "kernels/cuda/emu/kw_cuda_emu_api.h"
#endif

static void expect_nomem(int rc) {
    if (rc != KW_E_NOMEM || strstr(kw_error_detail(), "does not fit its memory limit") == NULL)
        fail_msg("expected KW_E_NOMEM naming the limit, got %s (%s)", kw_status_name(rc), kw_error_detail());
}

static void memory_contract(kw_backend *b) {
    kw_backend_memory m0, m;
    kw_backend_get_memory(b, &m0);
    assert_int_equal(m0.limit, 0);
    const uint64_t live0 = m0.live;
    assert_int_equal(kw_backend_set_memory_limit(b, live0 + (1u << 20)), 0);

    kw_tensor a = {0}, c = {0};
    assert_int_equal(kw_tensor_alloc(b, &a, KW_DTYPE_F32, 2, (int64_t[]){256, 512}), 0); /* 512 KiB */
    kw_backend_get_memory(b, &m);
    assert_int_equal(m.live, live0 + (512u << 10));
    assert_true(m.peak >= m.live);
    expect_nomem(kw_tensor_alloc(b, &c, KW_DTYPE_F32, 2, (int64_t[]){300, 512})); /* 600 KiB more: refused */
    assert_null(c.data);
    kw_backend_get_memory(b, &m);
    assert_int_equal(m.live, live0 + (512u << 10)); /* nothing charged by the refusal */
    assert_int_equal(kw_backend_set_memory_limit(b, live0 + 1000), KW_E_INVALID_ARG);

    kw_tensor_free(&a);
    kw_backend_get_memory(b, &m);
    assert_int_equal(m.live, live0);
    assert_true(m.peak >= live0 + (512u << 10));
    assert_int_equal(kw_backend_set_memory_limit(b, 0), 0);
}

static void test_cpu(void **state) {
    (void)state;
    kw_backend *b = NULL;
    assert_int_equal(kw_backend_create_cpu(1, &b), 0);
    memory_contract(b);
    kw_backend_destroy(b);
}

#ifdef KW_TEST_CUDA_EMU
static void test_cuda_emu(void **state) {
    (void)state;
    kw_backend *b = NULL;
    assert_int_equal(kw_backend_create_cuda_emu(0, &b), 0);
    memory_contract(b);

    /* a bf16 matmul with M > 8 widens W into the workspace: 300 x 200 floats do not fit a limit 64 KiB above */
    kw_tensor x = {0}, w = {0}, y = {0};
    assert_int_equal(kw_tensor_alloc(b, &x, KW_DTYPE_F32, 2, (int64_t[]){33, 200}), 0);
    assert_int_equal(kw_tensor_alloc(b, &w, KW_DTYPE_BF16, 2, (int64_t[]){300, 200}), 0);
    assert_int_equal(kw_tensor_alloc(b, &y, KW_DTYPE_F32, 2, (int64_t[]){33, 300}), 0);
    assert_int_equal(kw_backend_memset_zero(b, &x), 0);
    assert_int_equal(kw_backend_memset_zero(b, &w), 0);
    kw_backend_memory m;
    kw_backend_get_memory(b, &m);
    assert_int_equal(kw_backend_set_memory_limit(b, m.live + (64u << 10)), 0);
    const int rc = kw_op_matmul(b, &y, &x, &w, NULL);
    expect_nomem(rc);
    assert_non_null(strstr(kw_error_detail(), "workspace"));
    assert_int_equal(kw_backend_set_memory_limit(b, 0), 0);
    assert_int_equal(kw_op_matmul(b, &y, &x, &w, NULL), 0);
    assert_int_equal(kw_backend_synchronize(b), 0);
    kw_backend_memory after;
    kw_backend_get_memory(b, &after);
    assert_int_equal(after.live, m.live + 300 * 200 * sizeof(float)); /* the workspace, kept for the next call */
    kw_tensor_free(&x), kw_tensor_free(&w), kw_tensor_free(&y);
    kw_backend_destroy(b);
}
#endif

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cpu),
#ifdef KW_TEST_CUDA_EMU
        cmocka_unit_test(test_cuda_emu),
#endif
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
