/* kw_time.c: monotonic clock and peak-RSS readings. */
#define _POSIX_C_SOURCE 200809L
#include "kw_time.h"

#include <sys/resource.h>
#include <time.h>

uint64_t kw_time_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t kw_time_peak_rss_bytes(void) {
    struct rusage usage;
    if (getrusage(RUSAGE_SELF, &usage) != 0) return 0;
    return (uint64_t)usage.ru_maxrss * 1024u; /* Linux reports kilobytes */
}
