/* bench_bandwidth.h: the memory-bandwidth bound of the CPU benchmarks (bench_bandwidth.c). */
#ifndef KW_BENCH_BANDWIDTH_H
#define KW_BENCH_BANDWIDTH_H

#include <stddef.h>
#include <stdio.h>

/* The best read bandwidth in GB/s over every pattern (1..threads threads, 1 or 4 streams each, 64-bit integer sums,
 * AVX2 loads and AVX2 non-temporal loads where the CPU has AVX2), each the best of reps passes over a buffer of
 * `bytes` bytes (allocated and freed here; make it far larger than the caches). Each pattern's figure is printed to
 * report unless it is NULL. 0 if the buffer cannot be allocated. */
double kw_bench_read_bandwidth(int threads, size_t bytes, int reps, FILE *report);

#endif /* KW_BENCH_BANDWIDTH_H */
