/* fuzz_replay.c: runs a fuzz target's LLVMFuzzerTestOneInput over every file of the corpus folders given on the
 * command line, as a plain program (every build, no libFuzzer needed), so the corpora are regression tests in ctest.
 * A crash or a violated invariant aborts the process and fails the test. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_file.h"
#include "common/kw_status.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int compare(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv) {
    size_t total = 0;
    for (int i = 1; i < argc; ++i) {
        DIR *dir = opendir(argv[i]);
        if (!dir) {
            fprintf(stderr, "fuzz_replay: cannot open %s\n", argv[i]);
            return 1;
        }
        char **names = NULL;
        size_t n = 0;
        struct dirent *ent;
        while ((ent = readdir(dir))) {
            if (ent->d_name[0] == '.') continue;
            names = realloc(names, (n + 1) * sizeof *names);
            names[n++] = strdup(ent->d_name);
        }
        closedir(dir);
        qsort(names, n, sizeof *names, compare);
        for (size_t k = 0; k < n; ++k) {
            char *path = kw_path_join(argv[i], names[k]);
            char *data = NULL;
            size_t size = 0;
            if (!path || kw_file_read_all(path, 1 << 26, &data, &size) < 0) {
                fprintf(stderr, "fuzz_replay: %s: %s\n", path ? path : names[k], kw_error_detail());
                return 1;
            }
            LLVMFuzzerTestOneInput((const uint8_t *)data, size);
            free(data);
            free(path);
            free(names[k]);
            ++total;
        }
        free(names);
    }
    printf("fuzz_replay: %zu inputs replayed\n", total);
    return total ? 0 : 1;
}
