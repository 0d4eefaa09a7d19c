/* kw_cpu_pool.c: the CPU backend's spin-then-sleep thread pool; see kw_cpu_pool.h.
 *
 * Each worker has its own `go` word (its cache line): a run increments the go words of the workers it uses only, so an
 * idle worker is not woken for a job it is not part of. A worker waits for go to change (spin, then futex), then joins
 * the job through the `gate` word if it is still open and the worker's id is below the job's thread count (a CAS that
 * counts it in), takes tasks (its own share from the front, then the others' from the back) and leaves (counts itself
 * out). When the caller has no task left it closes the gate and waits (the same way) only for the workers inside: a
 * worker woken late, after the caller has done the job alone, no longer holds the caller up (it finds the gate closed,
 * or joins a later job). The job is rewritten only while the gate is closed and nobody is inside. A worker's go runs at
 * most one ahead of what it has acknowledged (`acked`), so it cannot come back to the value the worker last saw however
 * late the worker is. The sleeping flags spare the futex_wake system call when nobody sleeps: the waker stores the word
 * then reads the flag, the sleeper sets the flag then reads the word (both sequentially consistent), so one of them
 * sees the other. A worker that slept measures its wake-up: from the start of the run that woke it (its wake_ns,
 * written with the go increment) to its arrival, averaged into the pool's wake_lat_ns.
 *
 * The automatic spin: a thread that has finished its part of a job (a worker after leaving the gate, the caller once
 * no task is left, while the workers finish theirs) reads its own involuntary context switches and time runnable but
 * not running (getrusage(RUSAGE_THREAD) and /proc/thread-self/schedstat, when KW_CPU_POOL_SAMPLE_MS have passed since
 * its last read: a few system calls every 10 ms at most) and, a worker that slept, the wake-up latency average;
 * kw_cpu_pool_spin_rule turns that into spin_now, which every wait reads (a relaxed load). */
#include "kernels/cpu/kw_cpu_pool.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "common/kw_status.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define kw_pool_pause() _mm_pause()
#elif defined(__aarch64__)
#define kw_pool_pause() __asm__ __volatile__("yield")
#else
#define kw_pool_pause() ((void)0)
#endif

#define KW_POOL_SPIN_MAX 1000000 /* 1 s */

/* One thread's share of a job: tasks [begin, begin + size), on a cache line of its own. */
typedef struct kw_pool_share {
    _Alignas(64) _Atomic uint64_t taken; /* kw_cpu_pool_take's word: from the front (owner) and from the back */
    int64_t begin;
    int64_t size; /* at most KW_CPU_POOL_SHARE_MAX */
} kw_pool_share;

typedef struct kw_pool_worker {
    _Alignas(64) _Atomic uint32_t go; /* wake-ups handed to this worker (mod 2^32): at most acked + 1 */
    _Atomic uint32_t acked;           /* the go value the worker last woke for */
    _Atomic int64_t wake_ns;          /* when the run of the last go increment started (CLOCK_MONOTONIC) */
    _Atomic int sleeping;
    int id;
    kw_cpu_pool *pool;
    pthread_t thread;
} kw_pool_worker;

struct kw_cpu_pool {
    int n_threads;           /* workers + the caller */
    int spin_us;             /* fixed, or KW_CPU_POOL_SPIN_AUTO */
    int started;             /* workers whose thread runs */
    kw_pool_worker *workers; /* n_threads - 1 (owned) */
    kw_pool_share *shares;   /* n_threads (owned): share i is worker id i's */
    _Atomic int busy;        /* a run is in progress */
    _Atomic int stop;
    /* the job: written by the caller while the gate is closed and empty, read by the workers that joined it */
    kw_cpu_pool_fn fn;
    void *ctx;
    int64_t first; /* task ids start here (a run of more than n_threads x KW_CPU_POOL_SHARE_MAX tasks: several jobs) */
    int n_shares;  /* the job's thread count: shares 0 .. n_shares - 1 */
    _Atomic int64_t wake_lat_ns;        /* the workers' recent wake-up latency, an average (0: none measured) */
    _Atomic uint32_t refused;           /* kw_cpu_pool_wake_for's refusals for the latency alone */
    _Atomic int spin_now;               /* the spin every wait uses (the fixed one, or the automatic one's choice) */
    _Atomic int64_t last_sign_ns;       /* the automatic spin's last sign of contention (INT64_MIN: never) */
    _Alignas(64) _Atomic uint32_t gate; /* KW_POOL_GATE_OPEN | thread count << 16 | workers inside */
    _Atomic int caller_sleeping;
};

#define KW_POOL_GATE_OPEN 0x80000000u
#define KW_POOL_GATE_IN   0xffffu /* the workers inside (< 1024) */

/* The pool and worker id of the task this thread is running (NULL outside a run). */
static _Thread_local kw_cpu_pool *kw_pool_current;
static _Thread_local int kw_pool_current_id;

static void kw_pool_futex_wait(_Atomic uint32_t *word, uint32_t expected) {
    (void)syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}

static void kw_pool_futex_wake(_Atomic uint32_t *word, int n) {
    (void)syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE_PRIVATE, n, NULL, NULL, 0);
}

static int64_t kw_pool_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* This thread's last reading for the automatic spin (ns 0: none yet). */
static _Thread_local kw_cpu_spin_reading kw_pool_last_reading;

/* The calling thread's time spent runnable but not running, in ns (/proc/thread-self/schedstat's second field: a
 * scheduler's queue, or a CPU quota's throttling); -1 when the kernel does not say. */
static int64_t kw_pool_thread_delay(void) {
    FILE *f = fopen("/proc/thread-self/schedstat", "re");
    if (f == NULL) return -1;
    long long run, delay;
    const int n = fscanf(f, "%lld %lld", &run, &delay);
    fclose(f);
    return n == 2 && delay >= 0 ? (int64_t)delay : -1;
}

int kw_cpu_pool_read_thread(kw_cpu_spin_reading *out) {
    struct rusage ru;
    KW_RETURN_IF(getrusage(RUSAGE_THREAD, &ru) != 0, KW_E_IO, "getrusage(RUSAGE_THREAD): %s", strerror(errno));
    *out = (kw_cpu_spin_reading){.ns = kw_pool_now_ns(), .nivcsw = ru.ru_nivcsw, .delay_ns = kw_pool_thread_delay()};
    return 0;
}

/* Applies the calling thread's sample to an automatic pool's spin: a new reading when at least KW_CPU_POOL_SAMPLE_MS
 * have passed since its last one (`now`, maybe a little old, only decides that), and wake_ns (kw_cpu_spin_sample).
 * Cheap unless a reading is due. */
static void kw_pool_sample(kw_cpu_pool *pool, int64_t now, int64_t wake_ns) {
    if (pool->spin_us != KW_CPU_POOL_SPIN_AUTO) return;
    kw_cpu_spin_sample s = {.now_ns = now, .wake_ns = wake_ns};
    kw_cpu_spin_reading cur;
    if (kw_pool_last_reading.ns == 0 || now - kw_pool_last_reading.ns >= (int64_t)KW_CPU_POOL_SAMPLE_MS * 1000000) {
        if (kw_cpu_pool_read_thread(&cur) == 0) {
            s = kw_cpu_spin_sample_between(&kw_pool_last_reading, &cur, wake_ns);
            kw_pool_last_reading = cur;
        }
    } else if (wake_ns == 0) {
        return; /* nothing new: the rule's answer changes only with time, checked at the next reading */
    }
    int64_t last = atomic_load_explicit(&pool->last_sign_ns, memory_order_relaxed);
    const int64_t before = last;
    const int spin = kw_cpu_pool_spin_rule(&last, &s);
    if (last != before) atomic_store_explicit(&pool->last_sign_ns, last, memory_order_relaxed);
    if (atomic_load_explicit(&pool->spin_now, memory_order_relaxed) != spin)
        atomic_store_explicit(&pool->spin_now, spin, memory_order_relaxed);
}

/* Waits until *word != old: spins for up to spin_us, then sleeps on the futex with *sleeping set (*slept = 1 then,
 * else 0). */
static uint32_t kw_pool_wait_change(_Atomic uint32_t *word, uint32_t old, _Atomic int *sleeping, int spin_us,
                                    int *slept) {
    *slept = 0;
    uint32_t v = atomic_load_explicit(word, memory_order_acquire);
    if (v != old) return v;
    if (spin_us > 0) {
        const int64_t until = kw_pool_now_ns() + (int64_t)spin_us * 1000;
        for (unsigned i = 1;; ++i) {
            kw_pool_pause();
            v = atomic_load_explicit(word, memory_order_acquire);
            if (v != old) return v;
            if (i % 64 == 0 && kw_pool_now_ns() >= until) break;
        }
    }
    *slept = 1;
    for (;;) {
        atomic_store(sleeping, 1);
        v = atomic_load(word);
        if (v == old) kw_pool_futex_wait(word, old);
        atomic_store(sleeping, 0);
        v = atomic_load_explicit(word, memory_order_acquire);
        if (v != old) return v;
    }
}

static void kw_pool_wake(_Atomic uint32_t *word, _Atomic int *sleeping) {
    if (atomic_load(sleeping)) kw_pool_futex_wake(word, 1);
}

/* Takes tasks until none are left: its own share (id) from the front, then the others' from the back. */
static void kw_pool_work(kw_cpu_pool *pool, int id) {
    kw_cpu_pool *const outer = kw_pool_current;
    const int outer_id = kw_pool_current_id;
    kw_pool_current = pool;
    kw_pool_current_id = id;
    const kw_cpu_pool_fn fn = pool->fn;
    void *const ctx = pool->ctx;
    const int64_t first = pool->first;
    const int n = pool->n_shares;
    /* its own share from the front, then the others' from the back, each share once: contiguous streams of tasks */
    for (int k = 0; k < n; ++k) {
        kw_pool_share *sh = &pool->shares[(id + k) % n];
        const uint64_t step = k == 0 ? 1 : KW_CPU_POOL_TAKE_BACK;
        /* another thread's share, with more than one other: skipped without a write when a plain read already finds it
         * done (on two threads the one other share is taken from directly, as before: not measurable either way) */
        if (k != 0 && n > 2 && kw_cpu_pool_share_done(atomic_load_explicit(&sh->taken, memory_order_relaxed), sh->size))
            continue;
        int64_t t;
        while (
            kw_cpu_pool_take(atomic_fetch_add_explicit(&sh->taken, step, memory_order_relaxed), sh->size, k != 0, &t))
            fn(ctx, first + sh->begin + t, id);
    }
    kw_pool_current = outer;
    kw_pool_current_id = outer_id;
}

/* Counts worker id into the open job when its thread count admits it; 0 when the gate is closed or id is too high. */
static int kw_pool_join(kw_cpu_pool *pool, int id) {
    uint32_t g = atomic_load(&pool->gate);
    while ((g & KW_POOL_GATE_OPEN) && (uint32_t)id < ((g & ~KW_POOL_GATE_OPEN) >> 16))
        if (atomic_compare_exchange_weak(&pool->gate, &g, g + 1)) return 1; /* seq_cst: acquires the job */
    return 0;
}

static void *kw_pool_worker_main(void *arg) {
    kw_pool_worker *w = arg;
    kw_cpu_pool *pool = w->pool;
    uint32_t seen = 0;
    for (;;) {
        int slept;
        seen = kw_pool_wait_change(&w->go, seen, &w->sleeping,
                                   atomic_load_explicit(&pool->spin_now, memory_order_relaxed), &slept);
        /* the latency of this wake-up, read before the acknowledgement: after it the next run may rewrite wake_ns */
        const int64_t lat = slept ? kw_pool_now_ns() - atomic_load_explicit(&w->wake_ns, memory_order_relaxed) : 0;
        atomic_store(&w->acked, seen); /* seq_cst: before the gate read, against the caller's gate store, acked read */
        if (atomic_load_explicit(&pool->stop, memory_order_acquire)) break;
        int64_t wake_avg = 0;
        if (slept) { /* an average over the last few wake-ups: 3/4 of the old and 1/4 of this one (a load and a store:
                      * two workers arriving together may lose one sample, harmless for an estimate) */
            const int64_t sample = lat < 1 ? 1 : lat > 1000000000 ? 1000000000 : lat;
            const int64_t old = atomic_load_explicit(&pool->wake_lat_ns, memory_order_relaxed);
            wake_avg = old == 0 ? sample : (3 * old + sample) / 4;
            atomic_store_explicit(&pool->wake_lat_ns, wake_avg, memory_order_relaxed);
        }
        if (kw_pool_join(pool, w->id)) {
            kw_pool_work(pool, w->id);
            const uint32_t g = atomic_fetch_sub(&pool->gate, 1); /* seq_cst: the store-then-read handshake */
            if (!(g & KW_POOL_GATE_OPEN) && (g & KW_POOL_GATE_IN) == 1)
                kw_pool_wake(&pool->gate, &pool->caller_sleeping);
        } /* else late: the caller has closed the job */
        if (pool->spin_us == KW_CPU_POOL_SPIN_AUTO) kw_pool_sample(pool, kw_pool_now_ns(), wake_avg);
    }
    return NULL;
}

/* KW_CPU_SPIN_US when set to a number in 0 .. KW_POOL_SPIN_MAX, else -1. */
static int kw_pool_env_spin(void) {
    const char *s = getenv("KW_CPU_SPIN_US");
    if (s == NULL || *s == '\0') return -1;
    char *end;
    errno = 0;
    const long v = strtol(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < 0 || v > KW_POOL_SPIN_MAX) return -1;
    return (int)v;
}

const char *kw_cpu_pool_wait_origin(void) {
    static _Thread_local char text[128];
    const int env = kw_pool_env_spin();
    const char *set = getenv("KW_CPU_SPIN_US");
    if (env >= 0) {
        snprintf(text, sizeof text, "KW_CPU_SPIN_US=%d", env);
        return text;
    }
    const int n =
        snprintf(text, sizeof text, "auto spin %d..%d us by contention", KW_CPU_POOL_SPIN_US, KW_CPU_POOL_SPIN_LONG_US);
    if (set != NULL && *set != '\0')
        snprintf(text + n, sizeof text - (size_t)n, " (KW_CPU_SPIN_US ignored: not 0..%d)", KW_POOL_SPIN_MAX);
    return text;
}

int kw_cpu_pool_create(int n_threads, int spin_us, kw_cpu_pool **out) {
    KW_RETURN_IF(out == NULL || n_threads < 1 || n_threads > 1024 || spin_us > KW_POOL_SPIN_MAX, KW_E_INVALID_ARG,
                 "kw_cpu_pool_create: %d threads, spin %d us", n_threads, spin_us);
    if (spin_us < 0 && spin_us != KW_CPU_POOL_SPIN_AUTO) {
        spin_us = kw_pool_env_spin();
        if (spin_us < 0) spin_us = KW_CPU_POOL_SPIN_AUTO;
    }
    /* its counters sit on cache lines of their own (_Alignas(64)), so the struct needs 64-byte alignment: calloc's
     * 16 bytes are not enough (clang's UBSan: misaligned member access) */
    const size_t pool_bytes = (sizeof(kw_cpu_pool) + 63) & ~(size_t)63;
    kw_cpu_pool *pool = aligned_alloc(64, pool_bytes);
    KW_RETURN_IF(pool == NULL, KW_E_NOMEM, "kw_cpu_pool_create: out of memory");
    memset(pool, 0, pool_bytes);
    pool->n_threads = n_threads;
    pool->spin_us = spin_us;
    /* automatic: long until a sign of contention */
    atomic_init(&pool->spin_now, spin_us == KW_CPU_POOL_SPIN_AUTO ? KW_CPU_POOL_SPIN_LONG_US : spin_us);
    atomic_init(&pool->last_sign_ns, INT64_MIN);
    if (n_threads > 1) {
        pool->workers = aligned_alloc(64, sizeof(kw_pool_worker) * (size_t)(n_threads - 1));
        pool->shares = aligned_alloc(64, sizeof(kw_pool_share) * (size_t)n_threads);
        if (pool->workers == NULL || pool->shares == NULL) {
            free(pool->workers);
            free(pool->shares);
            free(pool);
            KW_RETURN_IF(1, KW_E_NOMEM, "kw_cpu_pool_create: out of memory");
        }
        memset(pool->workers, 0, sizeof(kw_pool_worker) * (size_t)(n_threads - 1));
        memset(pool->shares, 0, sizeof(kw_pool_share) * (size_t)n_threads);
    }
    for (int i = 0; i < n_threads - 1; ++i) {
        kw_pool_worker *w = &pool->workers[i];
        w->id = i + 1;
        w->pool = pool;
        const int rc = pthread_create(&w->thread, NULL, kw_pool_worker_main, w);
        if (rc != 0) {
            kw_cpu_pool_free(pool);
            KW_RETURN_IF(1, KW_E_NOMEM, "kw_cpu_pool_create: thread %d of %d: %s", i + 1, n_threads, strerror(rc));
        }
        pool->started = i + 1;
    }
    *out = pool;
    return 0;
}

void kw_cpu_pool_free(kw_cpu_pool *pool) {
    if (pool == NULL) return;
    atomic_store_explicit(&pool->stop, 1, memory_order_release);
    for (int i = 0; i < pool->started; ++i) {
        atomic_fetch_add(&pool->workers[i].go, 1);
        kw_pool_wake(&pool->workers[i].go, &pool->workers[i].sleeping);
    }
    for (int i = 0; i < pool->started; ++i)
        pthread_join(pool->workers[i].thread, NULL);
    free(pool->workers);
    free(pool->shares);
    free(pool);
}

int kw_cpu_pool_asleep(kw_cpu_pool *pool) {
    for (int i = 0; i < pool->started; ++i)
        if (!atomic_load_explicit(&pool->workers[i].sleeping, memory_order_relaxed)) return 0;
    return 1;
}

int64_t kw_cpu_pool_wake_ns(kw_cpu_pool *pool) {
    return atomic_load_explicit(&pool->wake_lat_ns, memory_order_relaxed);
}

int kw_cpu_pool_wake_for(kw_cpu_pool *pool, size_t bytes, size_t min_bytes, size_t bytes_per_us) {
    if (bytes < min_bytes) return 0;
    if (kw_cpu_pool_wake_pays(bytes, min_bytes, kw_cpu_pool_wake_ns(pool), bytes_per_us)) return 1;
    const uint32_t n = atomic_fetch_add_explicit(&pool->refused, 1, memory_order_relaxed);
    return n % KW_CPU_POOL_REPROBE == KW_CPU_POOL_REPROBE - 1;
}

int kw_cpu_pool_spin_us(const kw_cpu_pool *pool) {
    return pool->spin_us;
}

int kw_cpu_pool_spin_now(kw_cpu_pool *pool) {
    return atomic_load_explicit(&pool->spin_now, memory_order_relaxed);
}

/* One job of a run: tasks first .. first + n_tasks - 1 (at most nt x KW_CPU_POOL_SHARE_MAX) on nt threads, the caller
 * among them; returns when the workers that joined have finished. */
static void kw_pool_job(kw_cpu_pool *pool, int nt, int64_t first, int64_t n_tasks, kw_cpu_pool_fn fn, void *ctx) {
    pool->fn = fn;
    pool->ctx = ctx;
    pool->first = first;
    pool->n_shares = nt;
    for (int i = 0; i < nt; ++i) { /* share i: schedule(static)'s part i */
        int64_t end;
        kw_cpu_pool_range(n_tasks, nt, i, &pool->shares[i].begin, &end);
        pool->shares[i].size = end - pool->shares[i].begin;
        atomic_store_explicit(&pool->shares[i].taken, 0, memory_order_relaxed);
    }
    atomic_store(&pool->gate, KW_POOL_GATE_OPEN | (uint32_t)nt << 16); /* seq_cst: releases the job */
    /* a worker's go one more, unless it has not yet acknowledged the last one (it is on its way and will find the
     * gate open, or a later job's): seq_cst against its acked store and gate read, so one of the two sees the other */
    const int64_t now = kw_pool_now_ns();
    for (int i = 0; i < nt - 1; ++i) {
        kw_pool_worker *w = &pool->workers[i];
        if (atomic_load(&w->go) != atomic_load(&w->acked)) continue;
        atomic_store_explicit(&w->wake_ns, now, memory_order_relaxed);
        atomic_fetch_add(&w->go, 1); /* seq_cst: after wake_ns, before the sleeping read */
        kw_pool_wake(&w->go, &w->sleeping);
    }
    kw_pool_work(pool, 0);
    /* no task left: close, then wait for the workers inside to finish theirs */
    uint32_t g = atomic_fetch_and(&pool->gate, ~KW_POOL_GATE_OPEN) & ~KW_POOL_GATE_OPEN;
    kw_pool_sample(pool, now, 0); /* the caller's switches, while the workers finish */
    while ((g & KW_POOL_GATE_IN) != 0) {
        int slept;
        kw_pool_wait_change(&pool->gate, g, &pool->caller_sleeping,
                            atomic_load_explicit(&pool->spin_now, memory_order_relaxed), &slept);
        g = atomic_load_explicit(&pool->gate, memory_order_acquire);
    }
}

void kw_cpu_pool_run(kw_cpu_pool *pool, int n_threads, int64_t n_tasks, kw_cpu_pool_fn fn, void *ctx) {
    if (n_tasks <= 0) return;
    int nt = n_threads < pool->n_threads ? n_threads : pool->n_threads;
    if (n_tasks < nt) nt = (int)n_tasks;
    if (nt <= 1 || kw_pool_current == pool || atomic_exchange_explicit(&pool->busy, 1, memory_order_acquire)) {
        /* alone, nested or beside another caller: inline, as the thread's worker id in this pool (0 outside it), which
         * a run nested in these tasks keeps too */
        kw_cpu_pool *const outer = kw_pool_current;
        const int outer_id = kw_pool_current_id, id = outer == pool ? outer_id : 0;
        kw_pool_current = pool;
        kw_pool_current_id = id;
        for (int64_t t = 0; t < n_tasks; ++t)
            fn(ctx, t, id);
        kw_pool_current = outer;
        kw_pool_current_id = outer_id;
        return;
    }
    /* a job per n_threads x KW_CPU_POOL_SHARE_MAX tasks (one, short of billions of tasks) */
    const int64_t per_job = (int64_t)nt * KW_CPU_POOL_SHARE_MAX;
    for (int64_t first = 0; first < n_tasks; first += per_job)
        kw_pool_job(pool, nt, first, n_tasks - first < per_job ? n_tasks - first : per_job, fn, ctx);
    atomic_store_explicit(&pool->busy, 0, memory_order_release);
}
