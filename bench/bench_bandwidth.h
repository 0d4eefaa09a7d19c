/* bench_bandwidth.h: the memory-bandwidth bound of the CPU benchmarks (bench_bandwidth.c). */
#ifndef KW_BENCH_BANDWIDTH_H
#define KW_BENCH_BANDWIDTH_H

#include <stddef.h>
#include <stdio.h>

#include "model/kw_model.h"

/* The best read bandwidth in GB/s over every pattern (1..threads threads, 1 or 4 streams each, 64-bit integer sums,
 * AVX2 loads and AVX2 non-temporal loads where the CPU has AVX2), each the best of reps passes over a buffer of
 * `bytes` bytes (allocated and freed here; make it far larger than the caches). Each pattern's figure is printed to
 * report unless it is NULL. 0 if the buffer cannot be allocated. */
double kw_bench_read_bandwidth(int threads, size_t bytes, int reps, FILE *report);

/* The same measurement, repeated over one buffer kept between calls (a bracket around each timed run costs no
 * allocation or page faults). */
typedef struct kw_bench_bw kw_bench_bw;

/* A buffer of `bytes` (rounded down to 512 KiB; make it far larger than the caches) filled by `threads` threads.
 * 0, KW_E_INVALID_ARG (threads < 1 or bytes < 512 KiB) or KW_E_NOMEM. *out is owned by the caller: kw_bench_bw_free. */
int kw_bench_bw_create(int threads, size_t bytes, kw_bench_bw **out);

/* The same patterns over memory someone else owns, e.g. a model's packed weights (kw_model_weight_spans, so that the
 * bound streams the very pages a kernel streams, mapped however they are): n spans (borrowed; their memory must stay
 * mapped and unchanged until kw_bench_bw_free; spans with NULL data skipped), each read from its first 64-byte
 * boundary in whole 256-byte steps. 0, KW_E_INVALID_ARG (threads < 1, or nothing to read) or KW_E_NOMEM. *out is
 * owned by the caller. */
int kw_bench_bw_create_spans(int threads, const kw_model_span *spans, size_t n, kw_bench_bw **out);

/* The bytes one pass of bw reads (0 for NULL). */
size_t kw_bench_bw_bytes(const kw_bench_bw *bw);

/* kw_bench_read_bandwidth's figure over bw's buffer (borrowed): GB/s, 0 if bw is NULL or reps < 1. */
double kw_bench_bw_measure(kw_bench_bw *bw, int reps, FILE *report);

/* Frees bw (owned); NULL is a no-op. */
void kw_bench_bw_free(kw_bench_bw *bw);

#endif /* KW_BENCH_BANDWIDTH_H */
