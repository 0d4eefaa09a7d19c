/* test_backend_cuda.c: the op parity case table (kw_backend_cases.c) on the CUDA backend, against the same kw_ref
 * oracles and tolerances as the CPU. Exits 77 (skipped) when kvwire was built without CUDA or no device exists.
 * Cases whose (op, dtype) the CUDA backend does not list in supports() are reported, not failed. Then the deferred
 * get_rows error (kw_case_bad_ids): the device record must report what the CPU backend reports. */
#include <stdio.h>
#include <stdlib.h>

#include "common/kw_status.h"
#include "kernels/kw_backend.h"
#include "kw_backend_cases.h"

int main(void) {
    kw_backend *b = NULL;
    const int rc = kw_backend_create_cuda(0, &b);
    if (rc == KW_E_UNSUPPORTED || rc == KW_E_NO_DEVICE) {
        printf("skipped: %s (%s)\n", kw_status_name(rc), kw_error_detail());
        return 77;
    }
    if (rc != 0) {
        fprintf(stderr, "kw_backend_create_cuda: %s (%s)\n", kw_status_name(rc), kw_error_detail());
        return 1;
    }
    size_t failed = 0, run = 0, unsupported = 0;
    char desc[160];
    for (size_t i = 0; i < kw_n_cases; ++i) {
        const enum kw_case_result r = kw_case_run(b, &kw_cases[i], 0, NULL);
        kw_case_describe(&kw_cases[i], desc, sizeof desc);
        if (r == KW_CASE_UNSUPPORTED) {
            printf("unsupported on cuda: %s\n", desc);
            ++unsupported;
            continue;
        }
        ++run;
        if (r == KW_CASE_FAIL) {
            fprintf(stderr, "FAIL cuda: %s\n", desc);
            ++failed;
        }
    }
    ++run;
    if (!kw_case_bad_ids(b)) {
        fprintf(stderr, "FAIL cuda: get_rows bad ids reported at synchronize\n");
        ++failed;
    }
    kw_backend_destroy(b);
    printf("cuda: %zu cases run, %zu failed, %zu unsupported\n", run, failed, unsupported);
    return failed == 0 && run > 0 ? 0 : 1;
}
