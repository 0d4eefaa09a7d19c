/* kvload_check.c: `kvload_check RUN_DIR...` (a test helper, not installed): for each run folder, adds up its records
 * and checks its summary against them (run_check.h); prints "ok DIR" or the first mismatch and exits 1. The shell
 * tests run it on folders written by kvload against the stub and against the daemons. */
#include "run_check.h"

#include <stdio.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: kvload_check RUN_DIR...\n");
        return 2;
    }
    int status = 0;
    for (int i = 1; i < argc; ++i) {
        run_tally t = {0};
        char why[256] = "";
        if (run_tally_records(argv[i], &t) < 0) {
            printf("FAIL %s: %s\n", argv[i], t.why);
            status = 1;
        } else if (run_check_summary(argv[i], &t, why, sizeof(why)) < 0) {
            printf("FAIL %s: %s\n", argv[i], why);
            status = 1;
        } else {
            printf("ok %s: %zu records, %zu failed, %zu graded, %zu with token ids\n", argv[i], t.n, t.failed, t.graded,
                   t.with_ids);
        }
    }
    return status;
}
