#!/usr/bin/env bash
# hash_read.sh [ROUNDS]: XXH3-64 (xxHash's header, inlined, as wire/kw_wire_hash_*.c build it) compiled for SSE2, AVX2
# and AVX-512, each timed by thread CPU time on data not in the caches (30 MB at one of 16 places of a 512 MB buffer in
# turn) and on data in them (one buffer of 16 KB to 4 MB hashed again and again), in GB/s. It chose the decoder's
# section checksum build (kw__wire_hash_cold, issue 10 item 5): the fastest build from memory need not be the widest.
# Not part of CI; Linux x86-64, needs cc and xxhash.h. A build is skipped on a CPU without its ISA. With
# XXH_PREFETCH_DIST=BYTES in the environment xxHash's loop prefetches that far ahead instead of its default (384 here).
set -euo pipefail
. "$(dirname "$0")/bench_lib.sh" hash_read.sh "${1:-}" 3
cat >"$dir/h.c" <<'C'
#define XXH_INLINE_ALL
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>
#include "thread_clock.h"
int main(int argc, char **argv) {
    const int rounds = atoi(argv[1]);
    const size_t big = (size_t)512 << 20, n = (size_t)30 << 20;
    unsigned char *b = malloc(big + 64);
    if (!b) return 1;
    memset(b, 1, big + 64);
    unsigned long long acc = 0;
    printf("  from memory, 30 MB:");
    for (int r = 0; r < rounds; ++r) { /* 16 places 32 MB apart: none is in a 32 MB L3 from the one before */
        const unsigned char *p = b + 16 + (size_t)(r % 16) * (32u << 20);
        const double t0 = now();
        acc += XXH3_64bits(p, n);
        printf(" %.1f", (double)n / (now() - t0) * 1e-9);
    }
    printf("\n  in the caches:");
    const size_t sizes[] = {16384, 262144, 1 << 20, 4 << 20};
    for (int k = 0; k < 4; ++k) {
        const size_t m = sizes[k];
        const int it = (int)(((size_t)256 << 20) / m);
        acc += XXH3_64bits(b + 16, m);
        const double t0 = now();
        for (int i = 0; i < it; ++i)
            acc += XXH3_64bits(b + 16 + (acc & 1), m);
        printf(" %zu KB %.1f", m >> 10, (double)it * (double)m / (now() - t0) * 1e-9);
    }
    printf("\n");
    volatile unsigned long long sink = acc; /* the hashes are used: none is optimized away */
    (void)sink;
    return 0;
}
C
for isa in sse2 avx2 avx512; do
    flags=-msse2
    if [ "$isa" = avx2 ]; then
        grep -qw avx2 /proc/cpuinfo || continue
        flags=-mavx2
    fi
    if [ "$isa" = avx512 ]; then
        grep -qw avx512bw /proc/cpuinfo || continue
        flags="-mavx512f -mavx512bw"
    fi
    # shellcheck disable=SC2086
    cc -O2 $flags ${XXH_PREFETCH_DIST:+-DXXH_PREFETCH_DIST=$XXH_PREFETCH_DIST} "$dir/h.c" -o "$dir/h_$isa"
    echo "XXH3-64 $isa, GB/s (thread CPU time):"
    "$dir/h_$isa" "$rounds"
done
