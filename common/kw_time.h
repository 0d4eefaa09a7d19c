/* kw_time.h: monotonic timing for stage timings and benchmarks. */
#ifndef KW_TIME_H
#define KW_TIME_H

#include <stdint.h>

/* Nanoseconds from CLOCK_MONOTONIC; only differences are meaningful. */
uint64_t kw_time_now_ns(void);

/* Seconds between two kw_time_now_ns readings. */
static inline double kw_time_seconds(uint64_t start_ns, uint64_t end_ns) {
    return (double)(end_ns - start_ns) * 1e-9;
}

/* Milliseconds between two kw_time_now_ns readings. */
static inline double kw_time_ms(uint64_t start_ns, uint64_t end_ns) {
    return (double)(end_ns - start_ns) * 1e-6;
}

/* Peak resident set size of this process in bytes (getrusage), or 0 if unknown. */
uint64_t kw_time_peak_rss_bytes(void);

#endif /* KW_TIME_H */
