/* bench_bandwidth.c: `kvwire bench bandwidth`, and the memory-bandwidth baseline of `kvwire bench kernels` and
 * `kvwire bench model`: the best of
 * several ways to read a buffer far larger than the caches (1..N threads x 1 or 4 streams per thread x 64-bit integer
 * sums, AVX2 loads, AVX2 non-temporal loads or AVX-512 loads), so that no kernel the benchmarks time can read faster
 * than the bound they report it against. Each pattern keeps independent accumulators, so additions never limit the
 * rate. The buffer is mapped as the CPU backend maps packed weights (2 MiB-aligned, its 2 MiB blocks advised
 * MADV_HUGEPAGE unless KW_HUGEPAGES=0), since huge pages read faster than 4 KiB ones (fewer TLB misses, prefetchers not
 * stopped every 4 KiB) and the bound must be the fastest way to stream the weights' memory.
 */
#include "bench/bench_bandwidth.h"
#include "kw_benches.h"

#include <omp.h>
#include <stdint.h>
#include <sys/mman.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_hugepage.h"
#include "common/kw_status.h"
#include "common/kw_time.h"
#include "tools/kw_cli.h"

const char kw_bench_bandwidth_summary[] = "memory read bandwidth: every read pattern of the CPU benchmarks' bound";

#if defined(__x86_64__)
#include <immintrin.h>
#define KW_BW_X86 1
#endif

enum { KW_BW_SCALAR = 0, KW_BW_AVX2 = 1, KW_BW_AVX2_NT = 2, KW_BW_AVX512 = 3 };

/* Sum of n uint64 (n a multiple of 8) with four accumulators. */
static uint64_t kw_bw_sum_scalar(const uint64_t *p, size_t n) {
    uint64_t a = 0, b = 0, c = 0, d = 0;
    for (size_t i = 0; i < n; i += 8) {
        a += p[i] + p[i + 4];
        b += p[i + 1] + p[i + 5];
        c += p[i + 2] + p[i + 6];
        d += p[i + 3] + p[i + 7];
    }
    return (a + b) + (c + d);
}

#ifdef KW_BW_X86
/* The same with 256-bit loads (nt: non-temporal, vmovntdqa); n a multiple of 16, p 32-byte aligned. */
__attribute__((target("avx2"))) static uint64_t kw_bw_sum_avx2(const uint64_t *p, size_t n, int nt) {
    __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
    for (size_t i = 0; i < n; i += 16) {
        const __m256i *q = (const __m256i *)(p + i);
        if (nt) {
            a = _mm256_add_epi64(a, _mm256_stream_load_si256(q));
            b = _mm256_add_epi64(b, _mm256_stream_load_si256(q + 1));
            c = _mm256_add_epi64(c, _mm256_stream_load_si256(q + 2));
            d = _mm256_add_epi64(d, _mm256_stream_load_si256(q + 3));
        } else {
            a = _mm256_add_epi64(a, _mm256_load_si256(q));
            b = _mm256_add_epi64(b, _mm256_load_si256(q + 1));
            c = _mm256_add_epi64(c, _mm256_load_si256(q + 2));
            d = _mm256_add_epi64(d, _mm256_load_si256(q + 3));
        }
    }
    const __m256i s = _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d));
    uint64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, s);
    return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}

/* The same with 512-bit loads, the width of the AVX-512 kernels; n a multiple of 32, p 64-byte aligned. */
__attribute__((target("avx512f"))) static uint64_t kw_bw_sum_avx512(const uint64_t *p, size_t n) {
    __m512i a = _mm512_setzero_si512(), b = a, c = a, d = a;
    for (size_t i = 0; i < n; i += 32) {
        const __m512i *q = (const __m512i *)(p + i);
        a = _mm512_add_epi64(a, _mm512_load_si512(q));
        b = _mm512_add_epi64(b, _mm512_load_si512(q + 1));
        c = _mm512_add_epi64(c, _mm512_load_si512(q + 2));
        d = _mm512_add_epi64(d, _mm512_load_si512(q + 3));
    }
    /* the lanes added as uint64_t: the sums wrap, and GCC's _mm512_reduce_add_epi64 adds them as signed (undefined on
     * overflow, which UBSan reports) */
    uint64_t lanes[8];
    _mm512_storeu_si512(lanes, _mm512_add_epi64(_mm512_add_epi64(a, b), _mm512_add_epi64(c, d)));
    uint64_t sum = 0;
    for (int i = 0; i < 8; ++i)
        sum += lanes[i];
    return sum;
}
#endif

static uint64_t kw_bw_sum(const uint64_t *p, size_t n, int kind) {
#ifdef KW_BW_X86
    if (kind == KW_BW_AVX512) return kw_bw_sum_avx512(p, n);
    if (kind != KW_BW_SCALAR) return kw_bw_sum_avx2(p, n, kind == KW_BW_AVX2_NT);
#else
    (void)kind;
#endif
    return kw_bw_sum_scalar(p, n);
}

/* A piece of memory one call of kw_bw_sum reads: n words (a multiple of 32), p 64-byte aligned. */
typedef struct kw_bw_chunk {
    const uint64_t *p;
    size_t n;
} kw_bw_chunk;

/* One timed pass: threads split the chunks; each reads its share as `streams` interleaved sub-ranges (a chunk taken
 * from each in turn), so several hardware prefetch streams run per thread. GB/s over the bytes read. */
static double kw_bw_pass(const kw_bw_chunk *chunks, size_t n_chunks, int threads, int streams, int kind,
                         uint64_t *sink) {
    uint64_t total = 0;
    size_t words = 0;
    const uint64_t t0 = kw_time_now_ns();
#pragma omp parallel num_threads(threads) reduction(+ : total, words)
    {
        const size_t nth = (size_t)omp_get_num_threads(), tid = (size_t)omp_get_thread_num();
        const size_t lo = n_chunks * tid / nth, hi = n_chunks * (tid + 1) / nth;
        const size_t per = (hi - lo + (size_t)streams - 1) / (size_t)streams;
        for (size_t off = 0; off < per; ++off)
            for (int s = 0; s < streams; ++s) {
                const size_t c = lo + (size_t)s * per + off;
                if (c >= hi) continue;
                total += kw_bw_sum(chunks[c].p, chunks[c].n, kind);
                words += chunks[c].n;
            }
    }
    const double sec = kw_time_seconds(t0, kw_time_now_ns());
    *sink ^= total;
    return (double)(words * sizeof(uint64_t)) / sec * 1e-9;
}

struct kw_bench_bw {
    uint64_t *buf; /* n words, 2 MiB-aligned inside map; NULL when reading spans of someone else's */
    void *map;     /* owned: the buffer's own mapping (map_bytes; munmap), or NULL */
    size_t map_bytes;
    kw_bw_chunk *chunks; /* owned: n_chunks pieces of buf or of the spans, 64 KiB at most each */
    size_t n, n_chunks, bytes;
    int threads;
    uint64_t sink;
};

/* Cuts [p, p + bytes) into chunks of 64 KiB at most, after aligning its start up to 64 bytes and its length down to 256
 * (a multiple of every pattern's step); appends them to bw->chunks (capacity cap, grown) and counts their bytes. */
static int kw_bw_add_span(kw_bench_bw *bw, size_t *cap, const void *p, size_t bytes) {
    const uintptr_t a = ((uintptr_t)p + 63) & ~(uintptr_t)63;
    if (bytes < a - (uintptr_t)p + 256) return 0;
    size_t words = (bytes - (a - (uintptr_t)p)) / 256 * 32;
    for (const uint64_t *q = (const uint64_t *)a; words > 0;) {
        const size_t n = words < 8192 ? words : 8192; /* uint64 = 64 KiB */
        if (bw->n_chunks == *cap) {
            const size_t grown_cap = *cap ? 2 * *cap : 1024;
            kw_bw_chunk *grown = realloc(bw->chunks, grown_cap * sizeof *grown);
            if (!grown) return KW_E_NOMEM;
            bw->chunks = grown;
            *cap = grown_cap;
        }
        bw->chunks[bw->n_chunks++] = (kw_bw_chunk){q, n};
        bw->bytes += n * sizeof *q;
        q += n;
        words -= n;
    }
    return 0;
}

int kw_bench_bw_create(int threads, size_t bytes, kw_bench_bw **out) {
    *out = NULL;
    const size_t n = bytes / sizeof(uint64_t) / 65536 * 65536;
    if (threads < 1 || n == 0) return KW_E_INVALID_ARG;
    kw_bench_bw *bw = calloc(1, sizeof *bw);
    if (!bw) return KW_E_NOMEM;
    /* as the CPU backend maps packed weights (kw_hugepage_alloc): 2 MiB-aligned, its 2 MiB blocks advised
     * MADV_HUGEPAGE unless KW_HUGEPAGES=0; but always a mapping of its own, unmapped at once when freed, ASan builds
     * included (whose kw_hugepage_alloc is posix_memalign, and a freed block of up to 256 MiB would stay resident in
     * ASan's quarantine behind the model phase that `bench model` reports the peak RSS of) */
    bw->map_bytes = n * sizeof *bw->buf + KW_HUGEPAGE_SIZE;
    bw->map = mmap(NULL, bw->map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (bw->map == MAP_FAILED) bw->map = NULL;
    if (bw->map) {
        const uintptr_t at = ((uintptr_t)bw->map + KW_HUGEPAGE_SIZE - 1) & ~(uintptr_t)(KW_HUGEPAGE_SIZE - 1);
        bw->buf = (uint64_t *)at;
#ifdef MADV_HUGEPAGE
        if (kw_hugepages_enabled()) (void)madvise(bw->buf, n * sizeof *bw->buf, MADV_HUGEPAGE); /* best effort */
#endif
    }
    size_t cap = 0;
    if (!bw->buf || kw_bw_add_span(bw, &cap, bw->buf, n * sizeof *bw->buf) != 0) {
        kw_bench_bw_free(bw);
        return KW_E_NOMEM;
    }
    bw->n = n;
    bw->threads = threads;
    uint64_t *buf = bw->buf;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (size_t i = 0; i < n; ++i)
        buf[i] = i * 0x9e3779b97f4a7c15ull;
    *out = bw;
    return 0;
}

int kw_bench_bw_create_spans(int threads, const kw_model_span *spans, size_t n, kw_bench_bw **out) {
    *out = NULL;
    if (threads < 1 || (n && !spans)) return KW_E_INVALID_ARG;
    kw_bench_bw *bw = calloc(1, sizeof *bw);
    if (!bw) return KW_E_NOMEM;
    size_t cap = 0;
    for (size_t i = 0; i < n; ++i)
        if (spans[i].data && kw_bw_add_span(bw, &cap, spans[i].data, spans[i].bytes) != 0) {
            kw_bench_bw_free(bw);
            return KW_E_NOMEM;
        }
    if (bw->n_chunks == 0) {
        kw_bench_bw_free(bw);
        return KW_E_INVALID_ARG;
    }
    bw->threads = threads;
    *out = bw;
    return 0;
}

size_t kw_bench_bw_bytes(const kw_bench_bw *bw) {
    return bw ? bw->bytes : 0;
}

double kw_bench_bw_measure(kw_bench_bw *bw, int reps, FILE *report) {
    if (!bw || reps < 1) return 0.0;
    int kinds = 1;
#ifdef KW_BW_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) kinds = 3;
    if (kinds == 3 && __builtin_cpu_supports("avx512f")) kinds = 4;
#endif
    static const char *const kind_names[] = {"u64 sums", "avx2 loads", "avx2 non-temporal loads", "avx512 loads"};
    static const int stream_counts[] = {1, 4};
    double best = 0.0;
    for (int t = 1; t <= bw->threads; ++t)
        for (int k = 0; k < kinds; ++k)
            for (size_t s = 0; s < sizeof stream_counts / sizeof stream_counts[0]; ++s) {
                double gbs = 0.0;
                for (int r = 0; r < reps; ++r) {
                    const double g = kw_bw_pass(bw->chunks, bw->n_chunks, t, stream_counts[s], k, &bw->sink);
                    gbs = g > gbs ? g : gbs;
                }
                if (report)
                    fprintf(report, "  read %-24s %d thread%s x %d stream%s: %6.2f GB/s\n", kind_names[k], t,
                            t > 1 ? "s" : " ", stream_counts[s], stream_counts[s] > 1 ? "s" : " ", gbs);
                best = gbs > best ? gbs : best;
            }
    if (report && bw->buf) {
        const long kb = kw_hugepage_smaps_kb(KW_SMAPS_ANON_HUGE, bw->buf, bw->n * sizeof *bw->buf);
        if (kb >= 0)
            fprintf(report, "  (buffer %.0f MiB, %.0f MiB of it on 2 MiB pages%s)\n",
                    (double)(bw->n * sizeof *bw->buf) / 1048576.0, (double)kb / 1024.0,
                    kw_hugepages_enabled() ? "" : ": KW_HUGEPAGES=0");
    }
    if (bw->sink == 42 && report) fputc(' ', report); /* keeps the sums alive */
    return best;
}

void kw_bench_bw_free(kw_bench_bw *bw) {
    if (!bw) return;
    if (bw->map) munmap(bw->map, bw->map_bytes);
    free(bw->chunks);
    free(bw);
}

double kw_bench_read_bandwidth(int threads, size_t bytes, int reps, FILE *report) {
    kw_bench_bw *bw = NULL;
    if (reps < 1 || kw_bench_bw_create(threads, bytes, &bw) != 0) return 0.0;
    const double best = kw_bench_bw_measure(bw, reps, report);
    kw_bench_bw_free(bw);
    return best;
}

static void kw_bench_bandwidth_usage(FILE *f) {
    fprintf(f,
            "usage: kvwire bench bandwidth [--threads N] [--mib N] [--reps N]\n"
            "Reads a buffer of N MiB (default 512; on 2 MiB pages as the packed weights are, unless KW_HUGEPAGES=0)\n"
            "with every pattern (1..threads threads, 1 or 4 streams, 64-bit sums, AVX2 loads, AVX2 non-temporal\n"
            "loads, AVX-512 loads) and prints each one's best of reps passes and the best of all: the bound\n"
            "`kvwire bench kernels` and `kvwire bench model` compare decode against.\n");
}

int kw_bench_bandwidth(int argc, char **argv) {
    int64_t threads = 2, mib = 512, reps = 3;
    const kw_cli_option opts[] = {
        KW_CLI_INT("--threads", &threads, 1, 256),
        KW_CLI_INT("--mib", &mib, 1, 1 << 20),
        KW_CLI_INT("--reps", &reps, 1, 1000),
    };
    const int st = KW_CLI_PARSE("kvwire bench bandwidth", argc, argv, opts, kw_bench_bandwidth_usage);
    if (st != KW_CLI_RUN) return st;
    printf("read bandwidth, %lld MiB buffer, best of %lld passes per pattern:\n", (long long)mib, (long long)reps);
    const double best = kw_bench_read_bandwidth((int)threads, (size_t)mib << 20, (int)reps, stdout);
    if (best <= 0) {
        fprintf(stderr, "kvwire bench bandwidth: cannot allocate %lld MiB\n", (long long)mib);
        return 1;
    }
    printf("bound: %.2f GB/s (the best pattern)\n", best);
    return 0;
}
