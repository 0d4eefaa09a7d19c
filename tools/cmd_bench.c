/* cmd_bench.c: `kvwire bench <name>` runs one of the benchmarks collected from bench/bench_*.c. Benchmarks print
 * their results with a baseline measured in the same run; docs/BENCHMARKS.md records them with the command line. */
#include "kw_benches.h"
#include "kw_commands.h"

#include <stdio.h>
#include <string.h>

const char kw_cmd_bench_summary[] = "run a benchmark: kvwire bench <name> [options] (kvwire bench lists them)";

struct kw_bench_entry {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
};

static const struct kw_bench_entry kw_bench_table[] = {KW_BENCH_ENTRIES{NULL, NULL, NULL}};

int kw_cmd_bench(int argc, char **argv) {
    if (argc >= 2) {
        for (size_t i = 0; kw_bench_table[i].name; ++i)
            if (strcmp(argv[1], kw_bench_table[i].name) == 0) return kw_bench_table[i].run(argc - 1, argv + 1);
        fprintf(stderr, "kvwire bench: unknown benchmark '%s'\n", argv[1]);
    }
    fprintf(argc >= 2 ? stderr : stdout, "usage: kvwire bench <name> [options]\n\nbenchmarks:\n");
    for (size_t i = 0; kw_bench_table[i].name; ++i)
        fprintf(argc >= 2 ? stderr : stdout, "  %-12s %s\n", kw_bench_table[i].name, kw_bench_table[i].summary);
    return argc >= 2 ? 2 : 0;
}
