/* test_cpu_pool.c: the CPU backend's thread pool (kernels/cpu/kw_cpu_pool.h). Every task of a run runs exactly once
 * (n_tasks 0 .. 1000, pools of 1 .. 4 threads, every thread count asked), its writes are seen by the caller, worker
 * ids stay below the run's thread count and no id is used by two threads at once; a run from inside a task runs
 * inline on that thread's id; each thread runs its own share (schedule(static)'s part) from the front, in order, then
 * takes from the others' back, in descending order (kw_cpu_pool_take's arithmetic at its edges; built with
 * KW_CPU_POOL_SHARE_MAX 3 as test_kernels_cpu_pool_jobs, every run of more than 3 tasks a thread is several jobs, each
 * dealt so); workers that went to sleep wake for the next run; pools are created and freed 100 times, with no spin and
 * with a long one; two threads drive two pools at once; KW_CPU_SPIN_US is read at creation; kw_cpu_pool_asleep tells
 * sleeping workers from spinning ones; a worker woken from sleep measures its wake-up latency (kw_cpu_pool_wake_ns),
 * one that was spinning does not; kw_cpu_pool_wake_pays' arithmetic, and kw_cpu_pool_wake_for waking on exactly one of
 * every KW_CPU_POOL_REPROBE refusals for the latency; the automatic spin's rule (kw_cpu_pool_spin_rule: each sign of
 * contention (switches, run-queue wait, late wake-ups), the thresholds' edges, the hysteresis), which pools get it (the
 * environment unset or not a number, KW_CPU_POOL_SPIN_AUTO) and which do not (KW_CPU_SPIN_US, spin_us >= 0), and an
 * automatic pool running jobs. No test depends on the machine's load: the rule is a pure function. The counters the
 * tasks bump are plain ints, so ThreadSanitizer also checks that the pool orders them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/cpu/kw_cpu_pool.h"

#define MAX_TASKS 1000
#define MAX_IDS   8

/* What the tasks of one run record. */
typedef struct run_log {
    int count[MAX_TASKS];      /* runs of each task (plain: the pool must order them) */
    int id_of[MAX_TASKS];      /* the worker that ran it */
    int seq_of[MAX_TASKS];     /* its place among that worker's tasks (0, 1, ...) */
    int next_seq[MAX_IDS];     /* each worker's tasks so far (written by that id only) */
    _Atomic int busy[MAX_IDS]; /* 1 while a thread runs a task as that id */
    _Atomic int bad;           /* an id out of range or used twice at once */
    int max_id;                /* ids must be below this */
} run_log;

static void log_task(void *arg, int64_t task, int worker) {
    run_log *log = arg;
    if (worker < 0 || worker >= log->max_id || worker >= MAX_IDS) {
        atomic_store(&log->bad, 1);
        return;
    }
    if (atomic_exchange(&log->busy[worker], 1) != 0) atomic_store(&log->bad, 1);
    for (volatile int spin = 0; spin < (int)(task % 7) * 50; ++spin) /* uneven tasks */
        ;
    log->count[task] += 1;
    log->id_of[task] = worker;
    log->seq_of[task] = log->next_seq[worker]++;
    atomic_store(&log->busy[worker], 0);
}

/* How one job of a run, tasks first .. first + n - 1 on nt threads, was dealt: share i (schedule(static)'s part i) is
 * worker i's, taken from its front in order, so its owner ran a prefix of it, in ascending order, before any task of
 * another share; the rest of it went to other threads from its back, each of them taking its part in descending
 * order. */
static void check_job_shares(const run_log *log, int64_t first, int64_t n, int nt) {
    for (int i = 0; i < nt; ++i) {
        int64_t begin, end;
        kw_cpu_pool_range(n, nt, i, &begin, &end);
        begin += first;
        end += first;
        int64_t t = begin;
        for (; t < end && log->id_of[t] == i; ++t) /* the owner's prefix, ascending */
            if (t > begin && log->seq_of[t] != log->seq_of[t - 1] + 1)
                fail_msg("share %d of %d (%lld tasks): the owner's task %lld out of order", i, nt, (long long)n,
                         (long long)t);
        for (int64_t u = t; u < end; ++u) {
            const int j = log->id_of[u];
            if (j == i)
                fail_msg("share %d of %d (%lld tasks): its owner ran task %lld after another thread's", i, nt,
                         (long long)n, (long long)u);
            for (int64_t v = u + 1; v < end; ++v) /* one thread's part of the back: descending */
                if (log->id_of[v] == j && log->seq_of[v] > log->seq_of[u])
                    fail_msg("share %d of %d (%lld tasks): worker %d took %lld before %lld", i, nt, (long long)n, j,
                             (long long)u, (long long)v);
            int64_t own_begin, own_end; /* and only after its own share */
            kw_cpu_pool_range(n, nt, j, &own_begin, &own_end);
            for (int64_t v = first + own_begin; v < first + own_end; ++v)
                if (log->id_of[v] == j && log->seq_of[v] > log->seq_of[u])
                    fail_msg("share %d of %d (%lld tasks): worker %d ran its own task %lld after task %lld", i, nt,
                             (long long)n, j, (long long)v, (long long)u);
        }
    }
}

/* A run of n tasks on nt threads: one job, or (past nt x KW_CPU_POOL_SHARE_MAX tasks) several one after the other,
 * each dealt as check_job_shares says; a run on one thread is inline, in order. */
static void check_shares(const run_log *log, int64_t n, int nt) {
    const int64_t per_job = nt > 1 ? (int64_t)nt * KW_CPU_POOL_SHARE_MAX : n;
    for (int64_t first = 0; first < n; first += per_job)
        check_job_shares(log, first, n - first < per_job ? n - first : per_job, nt);
}

/* One run of n tasks on nt threads of pool (which has pool_threads), checked. */
static void check_run(kw_cpu_pool *pool, int pool_threads, int nt, int64_t n, run_log *log) {
    memset(log, 0, sizeof *log);
    int expect = nt < pool_threads ? nt : pool_threads;
    if (n < expect) expect = (int)n;
    log->max_id = expect > 1 ? expect : 1;
    kw_cpu_pool_run(pool, nt, n, log_task, log);
    if (atomic_load(&log->bad))
        fail_msg("bad worker id: pool %d threads, run on %d, %lld tasks", pool_threads, nt, (long long)n);
    for (int64_t t = 0; t < n; ++t)
        if (log->count[t] != 1)
            fail_msg("task %lld of %lld ran %d times (pool %d threads, run on %d)", (long long)t, (long long)n,
                     log->count[t], pool_threads, nt);
    for (int64_t t = n; t < MAX_TASKS; ++t)
        assert_int_equal(log->count[t], 0);
    check_shares(log, n, log->max_id);
}

static void test_every_task_once(void **state) {
    (void)state;
    static run_log log;
    const int spins[] = {0, 50, -1};
    for (int threads = 1; threads <= 4; ++threads)
        for (size_t s = 0; s < sizeof spins / sizeof spins[0]; ++s) {
            kw_cpu_pool *pool = NULL;
            assert_int_equal(kw_cpu_pool_create(threads, spins[s], &pool), 0);
            for (int64_t n = 0; n <= MAX_TASKS; n += (n < 40 ? 1 : 37))
                for (int nt = 1; nt <= threads + 1; ++nt)
                    check_run(pool, threads, nt, n, &log);
            check_run(pool, threads, threads, MAX_TASKS, &log);
            kw_cpu_pool_free(pool);
        }
}

/* With 4 threads and enough work, more than one thread takes tasks (the pool is not the caller alone). Which
 * threads take part is the scheduler's choice: the caller may take none in a run (or in all 200, seen under TSan on a
 * loaded machine), so only the workers' part is asserted. */
static void test_workers_take_part(void **state) {
    (void)state;
    static run_log log;
    kw_cpu_pool *pool = NULL;
    assert_int_equal(kw_cpu_pool_create(4, -1, &pool), 0);
    int seen[MAX_IDS] = {0};
    /* the caller does not wait for a worker that has not joined, so on a loaded machine (or with KW_CPU_SPIN_US=0)
     * it may do many runs alone before a woken worker gets a core: 200 runs, then more for up to 10 s */
    for (int rep = 0; rep < 200 || (seen[1] + seen[2] + seen[3] == 0 && rep < 20000); ++rep) {
        check_run(pool, 4, 4, MAX_TASKS, &log);
        for (int t = 0; t < MAX_TASKS; ++t)
            seen[log.id_of[t]] = 1;
        if (rep >= 200) usleep(500);
    }
    assert_true(seen[1] + seen[2] + seen[3] >= 1);
    kw_cpu_pool_free(pool);
}

/* Nested runs: each outer task runs an inner run on the same pool; it must run inline, on the outer task's id. */
typedef struct nested {
    kw_cpu_pool *pool;
    int inner_count[64][64];
    int inner_id[64][64];
    int outer_id[64];
} nested;

typedef struct inner_ctx {
    nested *n;
    int64_t outer;
} inner_ctx;

static void inner_task(void *arg, int64_t task, int worker) {
    inner_ctx *c = arg;
    c->n->inner_count[c->outer][task] += 1;
    c->n->inner_id[c->outer][task] = worker;
    usleep(20); /* long enough for woken workers to take part, were the inner run not inline */
}

static void outer_task(void *arg, int64_t task, int worker) {
    nested *n = arg;
    n->outer_id[task] = worker;
    inner_ctx c = {n, task};
    kw_cpu_pool_run(n->pool, 4, 64, inner_task, &c);
}

static void test_nested_inline(void **state) {
    (void)state;
    static nested n;
    memset(&n, 0, sizeof n);
    assert_int_equal(kw_cpu_pool_create(4, -1, &n.pool), 0);
    /* the outer run on 4 threads, and on 1 (inline: its nested runs must stay inline on id 0 too) */
    for (int outer_threads = 4; outer_threads >= 1; outer_threads -= 3) {
        memset(n.inner_count, 0, sizeof n.inner_count);
        kw_cpu_pool_run(n.pool, outer_threads, 64, outer_task, &n);
        for (int o = 0; o < 64; ++o)
            for (int i = 0; i < 64; ++i) {
                assert_int_equal(n.inner_count[o][i], 1);
                assert_int_equal(n.inner_id[o][i], n.outer_id[o]);
            }
    }
    kw_cpu_pool_free(n.pool);
}

/* Workers asleep (spin 0, and a short spin that runs out) wake for every run; no wake-up is lost. */
static void test_sleep_and_wake(void **state) {
    (void)state;
    static run_log log;
    const int spins[] = {0, 20};
    for (size_t s = 0; s < 2; ++s) {
        kw_cpu_pool *pool = NULL;
        assert_int_equal(kw_cpu_pool_create(3, spins[s], &pool), 0);
        for (int rep = 0; rep < 300; ++rep) {
            if (rep % 3 == 0) usleep((useconds_t)(rep % 7) * 100);
            check_run(pool, 3, 3, 1 + rep % 50, &log);
        }
        kw_cpu_pool_free(pool);
    }
}

/* kw_cpu_pool_asleep: a pool without workers is asleep; with spin 0 every worker is asleep soon after a run (polled
 * for up to 2 s); with a 1 s spin the workers are awake (spinning) just after a run. */
static void test_asleep(void **state) {
    (void)state;
    static run_log log;
    kw_cpu_pool *pool = NULL;
    assert_int_equal(kw_cpu_pool_create(1, 0, &pool), 0);
    assert_int_equal(kw_cpu_pool_asleep(pool), 1);
    kw_cpu_pool_free(pool);
    assert_int_equal(kw_cpu_pool_create(3, 0, &pool), 0);
    for (int rep = 0; rep < 3; ++rep) {
        check_run(pool, 3, 3, 100, &log);
        int asleep = 0;
        for (int i = 0; i < 2000 && !asleep; ++i) {
            asleep = kw_cpu_pool_asleep(pool);
            if (!asleep) usleep(1000);
        }
        assert_int_equal(asleep, 1);
    }
    kw_cpu_pool_free(pool);
    assert_int_equal(kw_cpu_pool_create(3, 1000000, &pool), 0);
    check_run(pool, 3, 3, 100, &log);
    assert_int_equal(kw_cpu_pool_asleep(pool), 0);
    kw_cpu_pool_free(pool);
}

static void test_create_free(void **state) {
    (void)state;
    static run_log log;
    for (int i = 0; i < 100; ++i) {
        kw_cpu_pool *pool = NULL;
        const int threads = 1 + i % 4, spin = i % 2 ? 0 : 1000000; /* no spin; a 1 s spin */
        assert_int_equal(kw_cpu_pool_create(threads, spin, &pool), 0);
        assert_int_equal(kw_cpu_pool_spin_us(pool), spin);
        assert_int_equal(kw_cpu_pool_spin_now(pool), spin);
        if (i % 3) check_run(pool, threads, threads, 1 + i * 7, &log);
        kw_cpu_pool_free(pool); /* joins at once, also while the workers spin */
    }
    kw_cpu_pool_free(NULL);
    kw_cpu_pool *pool = NULL;
    assert_true(kw_cpu_pool_create(0, 0, &pool) < 0);
    assert_true(kw_cpu_pool_create(1025, 0, &pool) < 0);
    assert_true(kw_cpu_pool_create(2, 1000001, &pool) < 0);
    assert_true(kw_cpu_pool_create(2, 0, NULL) < 0);
    assert_null(pool);
}

/* Two threads, each driving a pool of its own at the same time. */
static void *drive_pool(void *arg) {
    run_log *log = arg;
    kw_cpu_pool *pool = NULL;
    if (kw_cpu_pool_create(2, -1, &pool) < 0) return (void *)1;
    for (int rep = 0; rep < 400; ++rep) {
        const int64_t n = 1 + (rep * 13) % MAX_TASKS;
        memset(log, 0, sizeof *log);
        log->max_id = 2;
        kw_cpu_pool_run(pool, 2, n, log_task, log);
        if (atomic_load(&log->bad)) return (void *)1;
        for (int64_t t = 0; t < n; ++t)
            if (log->count[t] != 1) return (void *)1;
    }
    kw_cpu_pool_free(pool);
    return NULL;
}

static void test_concurrent_pools(void **state) {
    (void)state;
    static run_log logs[2];
    pthread_t th[2];
    for (int i = 0; i < 2; ++i)
        assert_int_equal(pthread_create(&th[i], NULL, drive_pool, &logs[i]), 0);
    for (int i = 0; i < 2; ++i) {
        void *rc;
        assert_int_equal(pthread_join(th[i], &rc), 0);
        assert_null(rc);
    }
}

static void test_spin_env(void **state) {
    (void)state;
    kw_cpu_pool *pool = NULL;
    setenv("KW_CPU_SPIN_US", "37", 1);
    assert_int_equal(kw_cpu_pool_create(2, -1, &pool), 0);
    assert_int_equal(kw_cpu_pool_spin_us(pool), 37);
    assert_int_equal(kw_cpu_pool_spin_now(pool), 37);
    assert_string_equal(kw_cpu_pool_wait_origin(), "KW_CPU_SPIN_US=37");
    kw_cpu_pool_free(pool);
    assert_int_equal(kw_cpu_pool_create(2, 5, &pool), 0); /* an explicit spin wins */
    assert_int_equal(kw_cpu_pool_spin_us(pool), 5);
    assert_int_equal(kw_cpu_pool_spin_now(pool), 5);
    kw_cpu_pool_free(pool);
    assert_int_equal(kw_cpu_pool_create(2, 0, &pool), 0); /* also 0 */
    assert_int_equal(kw_cpu_pool_spin_us(pool), 0);
    assert_int_equal(kw_cpu_pool_spin_now(pool), 0);
    kw_cpu_pool_free(pool);
    assert_int_equal(kw_cpu_pool_create(2, KW_CPU_POOL_SPIN_AUTO, &pool), 0); /* automatic whatever the environment */
    assert_int_equal(kw_cpu_pool_spin_us(pool), KW_CPU_POOL_SPIN_AUTO);
    kw_cpu_pool_free(pool);
    char expect[96];
    snprintf(expect, sizeof expect, "auto spin %d..%d us by contention", KW_CPU_POOL_SPIN_US, KW_CPU_POOL_SPIN_LONG_US);
    const char *bad[] = {"", "-1", "12x", "1000001", "99999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; ++i) { /* ignored: automatic */
        setenv("KW_CPU_SPIN_US", bad[i], 1);
        assert_int_equal(kw_cpu_pool_create(2, -1, &pool), 0);
        assert_int_equal(kw_cpu_pool_spin_us(pool), KW_CPU_POOL_SPIN_AUTO);
        const int now = kw_cpu_pool_spin_now(pool);
        assert_true(now == KW_CPU_POOL_SPIN_US || now == KW_CPU_POOL_SPIN_LONG_US);
        kw_cpu_pool_free(pool);
        const char *origin = kw_cpu_pool_wait_origin();
        assert_int_equal(strncmp(origin, expect, strlen(expect)), 0);
        if (*bad[i]) assert_non_null(strstr(origin, "ignored"));
    }
    unsetenv("KW_CPU_SPIN_US");
    assert_string_equal(kw_cpu_pool_wait_origin(), expect);
    assert_int_equal(kw_cpu_pool_create(2, -1, &pool), 0);
    assert_int_equal(kw_cpu_pool_spin_us(pool), KW_CPU_POOL_SPIN_AUTO);
    kw_cpu_pool_free(pool);
}

/* Waits (up to 2 s) until every worker of pool sleeps on its futex. */
static void wait_asleep(kw_cpu_pool *pool) {
    for (int i = 0; i < 2000 && !kw_cpu_pool_asleep(pool); ++i)
        usleep(1000);
    assert_int_equal(kw_cpu_pool_asleep(pool), 1);
}

/* Waits (up to 2 s) until a worker of pool has measured a wake-up: the run that woke it may have returned before the
 * worker got there (the caller does not wait for a worker that has not joined). */
static int64_t wait_measured(kw_cpu_pool *pool) {
    for (int i = 0; i < 2000 && kw_cpu_pool_wake_ns(pool) == 0; ++i)
        usleep(1000);
    return kw_cpu_pool_wake_ns(pool);
}

static void test_wake_latency(void **state) {
    (void)state;
    static run_log log;
    kw_cpu_pool *pool = NULL;
    assert_int_equal(kw_cpu_pool_create(1, 0, &pool), 0); /* no worker: nothing to measure */
    check_run(pool, 1, 1, 10, &log);
    assert_int_equal(kw_cpu_pool_wake_ns(pool), 0);
    kw_cpu_pool_free(pool);
    assert_int_equal(kw_cpu_pool_create(2, 1000000, &pool), 0); /* a 1 s spin: the worker is awake for the run */
    assert_int_equal(kw_cpu_pool_wake_ns(pool), 0);
    check_run(pool, 2, 2, 10, &log);
    assert_int_equal(kw_cpu_pool_wake_ns(pool), 0);
    kw_cpu_pool_free(pool);
    assert_int_equal(kw_cpu_pool_create(2, 0, &pool), 0); /* no spin: the worker sleeps before every run */
    assert_int_equal(kw_cpu_pool_wake_ns(pool), 0);
    wait_asleep(pool);
    check_run(pool, 2, 2, 10, &log);
    const int64_t first = wait_measured(pool);
    assert_true(first > 0 && first <= 1000000000);
    wait_asleep(pool);
    check_run(pool, 2, 1, 10, &log); /* a run on the caller alone wakes nobody: the average stays */
    const int64_t ns = kw_cpu_pool_wake_ns(pool);
    check_run(pool, 2, 1, 10, &log);
    assert_int_equal(kw_cpu_pool_wake_ns(pool), ns);
    kw_cpu_pool_free(pool);
}

static void test_wake_pays(void **state) {
    (void)state;
    const size_t mib = (size_t)1 << 20, rate = (size_t)16 << 10;       /* 16 KiB per microsecond */
    assert_int_equal(kw_cpu_pool_wake_pays(mib - 1, mib, 0, rate), 0); /* under the floor: never */
    assert_int_equal(kw_cpu_pool_wake_pays(mib - 1, mib, 1, rate), 0);
    assert_int_equal(kw_cpu_pool_wake_pays(mib, mib, 0, rate), 1);         /* nothing measured yet: wake */
    assert_int_equal(kw_cpu_pool_wake_pays(2 * mib, mib, 50000, rate), 1); /* 1 MiB left >= 16 KiB x 50 us */
    assert_int_equal(kw_cpu_pool_wake_pays(2 * mib, mib, 64000, rate), 1); /* 1 MiB = 16 KiB x 64 us: the edge */
    assert_int_equal(kw_cpu_pool_wake_pays(2 * mib, mib, 64001, rate), 0);
    assert_int_equal(kw_cpu_pool_wake_pays(2 * mib, mib, 1000000, rate), 0); /* 1 ms late */
    assert_int_equal(kw_cpu_pool_wake_pays(64 * mib, mib, 1000000, rate), 1);
    assert_int_equal(kw_cpu_pool_wake_pays(64 * mib, mib, 1000000000, rate), 0); /* 1 s: no overflow */
}

static void test_wake_for(void **state) {
    (void)state;
    static run_log log;
    const size_t mib = (size_t)1 << 20, fast = (size_t)1 << 30; /* 1 GiB per microsecond: any latency refuses */
    kw_cpu_pool *pool = NULL;
    assert_int_equal(kw_cpu_pool_create(2, 0, &pool), 0);
    for (int i = 0; i < 3 * KW_CPU_POOL_REPROBE; ++i) {
        assert_int_equal(kw_cpu_pool_wake_for(pool, mib - 1, mib, fast), 0); /* under the floor: never */
        assert_int_equal(kw_cpu_pool_wake_for(pool, mib, mib, fast), 1);     /* nothing measured yet */
    }
    wait_asleep(pool);
    check_run(pool, 2, 2, 10, &log);
    assert_true(wait_measured(pool) > 0);
    for (int round = 0; round < 3; ++round) {
        int yes = 0, last = -1;
        for (int i = 0; i < KW_CPU_POOL_REPROBE; ++i) {
            assert_int_equal(kw_cpu_pool_wake_for(pool, mib - 1, mib, fast), 0); /* not counted as refusals */
            if (kw_cpu_pool_wake_for(pool, mib, mib, fast)) {
                ++yes;
                last = i;
            }
        }
        assert_int_equal(yes, 1); /* one re-measurement per KW_CPU_POOL_REPROBE refusals */
        assert_int_equal(last, KW_CPU_POOL_REPROBE - 1);
    }
    kw_cpu_pool_free(pool);
}

/* kw_cpu_pool_take: the front and back counts in the word, the edges of a share, the largest share. */
static void test_take(void **state) {
    (void)state;
    const uint64_t B = KW_CPU_POOL_TAKE_BACK;
    int64_t t = -1;
    assert_int_equal(kw_cpu_pool_take(0, 0, 0, &t), 0); /* an empty share */
    assert_int_equal(kw_cpu_pool_take(0, 0, 1, &t), 0);
    assert_int_equal(t, -1);
    assert_int_equal(kw_cpu_pool_take(0, 5, 0, &t), 1); /* the owner's first: 0 */
    assert_int_equal(t, 0);
    assert_int_equal(kw_cpu_pool_take(0, 5, 1, &t), 1); /* a thief's first: the last */
    assert_int_equal(t, 4);
    assert_int_equal(kw_cpu_pool_take(2 + 1 * B, 5, 0, &t), 1); /* 2 from the front, 1 from the back */
    assert_int_equal(t, 2);
    assert_int_equal(kw_cpu_pool_take(2 + 1 * B, 5, 1, &t), 1);
    assert_int_equal(t, 3);
    assert_int_equal(kw_cpu_pool_take(2 + 2 * B, 5, 0, &t), 1); /* the last one, either way */
    assert_int_equal(t, 2);
    assert_int_equal(kw_cpu_pool_take(2 + 2 * B, 5, 1, &t), 1);
    assert_int_equal(t, 2);
    t = -1;
    assert_int_equal(kw_cpu_pool_take(3 + 2 * B, 5, 0, &t), 0); /* done */
    assert_int_equal(kw_cpu_pool_take(3 + 2 * B, 5, 1, &t), 0);
    assert_int_equal(kw_cpu_pool_take(5, 5, 1, &t), 0);
    assert_int_equal(kw_cpu_pool_take(5 * B, 5, 0, &t), 0);
    assert_int_equal(kw_cpu_pool_take(4 + 3 * B, 5, 0, &t), 0); /* after overshoots */
    assert_int_equal(t, -1);
    /* the largest share: the counts' halves do not mix */
    const int64_t max = KW_CPU_POOL_SHARE_MAX;
    assert_int_equal(kw_cpu_pool_take((uint64_t)(max - 1), max, 0, &t), 1);
    assert_int_equal(t, max - 1);
    assert_int_equal(kw_cpu_pool_take((uint64_t)(max - 1) * B, max, 1, &t), 1);
    assert_int_equal(t, 0);
    assert_int_equal(kw_cpu_pool_take((uint64_t)max + 1023 * B, max, 1, &t), 0); /* overshot by 1024 threads */
    assert_int_equal(kw_cpu_pool_take((uint64_t)(max + 1) + (uint64_t)(max + 1023) * B, max, 0, &t), 0);
    /* done exactly when a take would fail: every word above, and the edges */
    const struct {
        uint64_t word;
        int64_t size;
        int done;
    } words[] = {{0, 0, 1},
                 {0, 5, 0},
                 {2 + 1 * B, 5, 0},
                 {2 + 2 * B, 5, 0},
                 {3 + 2 * B, 5, 1},
                 {5, 5, 1},
                 {5 * B, 5, 1},
                 {4 + 3 * B, 5, 1},
                 {4, 5, 0},
                 {4 * B, 5, 0},
                 {(uint64_t)(max - 1), max, 0},
                 {(uint64_t)max + 1023 * B, max, 1},
                 {(uint64_t)(max - 1) * B + 1, max, 1}};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; ++i) {
        assert_int_equal(kw_cpu_pool_share_done(words[i].word, words[i].size), words[i].done);
        assert_int_equal(kw_cpu_pool_take(words[i].word, words[i].size, 0, &t), !words[i].done);
        assert_int_equal(kw_cpu_pool_take(words[i].word, words[i].size, 1, &t), !words[i].done);
    }
}

/* The automatic spin's rule, one sample at a time (times in ns from an arbitrary origin t0). */
static int rule(int64_t *last, int64_t now, int64_t interval, int64_t nivcsw, int64_t wake) {
    const kw_cpu_spin_sample s = {.now_ns = now, .interval_ns = interval, .nivcsw = nivcsw, .wake_ns = wake};
    return kw_cpu_pool_spin_rule(last, &s);
}

static void test_spin_rule(void **state) {
    (void)state;
    const int LONG = KW_CPU_POOL_SPIN_LONG_US, SHORT = KW_CPU_POOL_SPIN_US;
    const int64_t ms = 1000000, t0 = 5000 * ms, hold = (int64_t)KW_CPU_POOL_HOLD_MS * ms;
    const int64_t win = (int64_t)KW_CPU_POOL_SAMPLE_MS * ms;
    assert_true(LONG > SHORT);
    int64_t last = INT64_MIN;
    /* no contention: long, and the state stays "never" */
    assert_int_equal(rule(&last, t0, 0, 0, 0), LONG);
    assert_int_equal(rule(&last, t0, win, 0, 0), LONG);
    assert_int_equal(rule(&last, t0, win, 1, 0), LONG); /* one switch: a kernel thread */
    assert_int_equal(rule(&last, t0, 1000 * ms, KW_CPU_POOL_NIVCSW_RATE - 1, 0), LONG); /* a rate under the bar */
    assert_int_equal(rule(&last, t0, 1, KW_CPU_POOL_NIVCSW_MIN - 1, 0), LONG); /* a high rate, too few switches */
    assert_int_equal(rule(&last, t0, 0, 1000, 0), LONG);                       /* no interval: no count */
    assert_int_equal(rule(&last, t0, win, 0, KW_CPU_POOL_WAKE_CONTENDED_NS - 1), LONG);
    assert_int_equal(last, INT64_MIN);
    /* a rate of switches at the bar: short, held for KW_CPU_POOL_HOLD_MS after it */
    assert_int_equal(rule(&last, t0, 1000 * ms, KW_CPU_POOL_NIVCSW_RATE, 0), SHORT);
    assert_int_equal(last, t0);
    assert_int_equal(rule(&last, t0 + win, win, 0, 0), SHORT);
    assert_int_equal(rule(&last, t0 + hold - 1, win, 0, 0), SHORT);
    assert_int_equal(rule(&last, t0 + hold, win, 0, 0), LONG); /* the hold is over */
    assert_int_equal(last, t0);
    /* KW_CPU_POOL_NIVCSW_MIN switches in a window: a sign; a later sign extends the hold */
    const int64_t t1 = t0 + 10 * hold;
    assert_int_equal(rule(&last, t1, win, KW_CPU_POOL_NIVCSW_MIN, 0), SHORT);
    assert_int_equal(rule(&last, t1 + hold / 2, win, KW_CPU_POOL_NIVCSW_MIN, 0), SHORT);
    assert_int_equal(last, t1 + hold / 2);
    assert_int_equal(rule(&last, t1 + hold, win, 0, 0), SHORT); /* held from the second sign */
    assert_int_equal(rule(&last, t1 + hold / 2 + hold - 1, win, 0, 0), SHORT);
    assert_int_equal(rule(&last, t1 + hold / 2 + hold, win, 0, 0), LONG);
    /* a late wake-up (the average at the bar), with or without a count of switches */
    const int64_t t2 = t1 + 10 * hold;
    assert_int_equal(rule(&last, t2, 0, 0, KW_CPU_POOL_WAKE_CONTENDED_NS), SHORT);
    assert_int_equal(last, t2);
    assert_int_equal(rule(&last, t2 + hold - 1, 0, 0, 1000), SHORT); /* a prompt wake-up does not end the hold */
    assert_int_equal(rule(&last, t2 + hold, 0, 0, 1000), LONG);
    assert_int_equal(rule(&last, t2 + 2 * hold, win, 0, 8 * ms), SHORT); /* 8 ms: a loaded machine */
    /* a thread runnable but not running for KW_CPU_POOL_DELAY_PCT % of its interval (a queue, or a CPU quota's
     * throttling, which shows few switches) */
    const int64_t t3 = t2 + 10 * hold, pct = KW_CPU_POOL_DELAY_PCT;
    kw_cpu_spin_sample d = {.now_ns = t3, .interval_ns = 100 * ms, .delay_ns = pct * ms - 1};
    assert_int_equal(kw_cpu_pool_spin_rule(&last, &d), LONG); /* just under the share */
    d.delay_ns = pct * ms;
    assert_int_equal(kw_cpu_pool_spin_rule(&last, &d), SHORT);
    assert_int_equal(last, t3);
    assert_int_equal(rule(&last, t3 + hold, win, 0, 0), LONG);
    d = (kw_cpu_spin_sample){.now_ns = t3 + 2 * hold, .delay_ns = 1000 * ms}; /* no interval: no share */
    assert_int_equal(kw_cpu_pool_spin_rule(&last, &d), LONG);
    /* large counts and intervals do not overflow */
    last = INT64_MIN;
    assert_int_equal(rule(&last, t0, 3600 * 1000 * ms, 1000000000, 0), SHORT);
    last = INT64_MIN;
    assert_int_equal(rule(&last, t0, 3600 * 1000 * ms, 2, 0), LONG);
    const kw_cpu_spin_sample big = {.now_ns = t0, .interval_ns = 3600 * 1000 * ms, .delay_ns = 3600 * 1000 * ms};
    assert_int_equal(kw_cpu_pool_spin_rule(&last, &big), SHORT);
}

/* A sample between two readings counts over exactly their interval (review rev15: the caller's sample once took its
 * interval from the run's start and its counts from after its share of the run, inflating the rates after a long
 * run), and only where both readings say. */
static void test_spin_sample_between(void **state) {
    (void)state;
    const int64_t ms = 1000000;
    const kw_cpu_spin_reading none = {0}, a = {.ns = 100 * ms, .nivcsw = 7, .delay_ns = 40 * ms},
                              b = {.ns = 310 * ms, .nivcsw = 23, .delay_ns = 104 * ms},
                              unknown = {.ns = 330 * ms, .nivcsw = 30, .delay_ns = -1};
    kw_cpu_spin_sample s = kw_cpu_spin_sample_between(&a, &b, 5);
    assert_int_equal(s.now_ns, 310 * ms);
    assert_int_equal(s.interval_ns, 210 * ms);
    assert_int_equal(s.nivcsw, 16);
    assert_int_equal(s.delay_ns, 64 * ms);
    assert_int_equal(s.wake_ns, 5);
    /* 16 switches over 210 ms (76/s) and 64 ms waited of 210 (30%): the wait is a sign, the switches are not */
    int64_t last = INT64_MIN;
    s.delay_ns = 0;
    assert_int_equal(kw_cpu_pool_spin_rule(&last, &s), KW_CPU_POOL_SPIN_LONG_US);
    s.delay_ns = 64 * ms;
    assert_int_equal(kw_cpu_pool_spin_rule(&last, &s), KW_CPU_POOL_SPIN_US);
    /* no previous reading, or one that is not earlier: no count */
    s = kw_cpu_spin_sample_between(&none, &b, 0);
    assert_int_equal(s.interval_ns, 0);
    assert_int_equal(s.nivcsw, 0);
    assert_int_equal(s.now_ns, 310 * ms);
    s = kw_cpu_spin_sample_between(&b, &a, 0);
    assert_int_equal(s.interval_ns, 0);
    s = kw_cpu_spin_sample_between(&b, &b, 0);
    assert_int_equal(s.interval_ns, 0);
    /* the wait unknown on either side: not counted */
    s = kw_cpu_spin_sample_between(&b, &unknown, 0);
    assert_int_equal(s.interval_ns, 20 * ms);
    assert_int_equal(s.nivcsw, 7);
    assert_int_equal(s.delay_ns, 0);
    s = kw_cpu_spin_sample_between(&unknown, &(kw_cpu_spin_reading){.ns = 400 * ms, .delay_ns = 5 * ms}, 0);
    assert_int_equal(s.delay_ns, 0);
}

/* A thread's reading takes the clock with its counts: two readings around 30 ms of work are at least 30 ms apart (a
 * lower bound only: a loaded machine stretches it), and the counts never go back. */
static void test_read_thread(void **state) {
    (void)state;
    kw_cpu_spin_reading a, b;
    assert_int_equal(kw_cpu_pool_read_thread(&a), 0);
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    volatile uint64_t sink = 0;
    do {
        for (int i = 0; i < 1000; ++i)
            sink += (uint64_t)i;
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while ((t.tv_sec - t0.tv_sec) * 1000000000LL + (t.tv_nsec - t0.tv_nsec) < 30000000LL);
    assert_true(sink > 0); /* the work was done (and clang's -Wunused-but-set-variable is satisfied) */
    assert_int_equal(kw_cpu_pool_read_thread(&b), 0);
    assert_true(b.ns - a.ns >= 30000000);
    assert_true(b.nivcsw >= a.nivcsw && a.nivcsw >= 0);
    assert_true(a.delay_ns >= -1 && (a.delay_ns < 0 || b.delay_ns >= a.delay_ns));
    const kw_cpu_spin_sample s = kw_cpu_spin_sample_between(&a, &b, 0);
    assert_int_equal(s.interval_ns, b.ns - a.ns);
}

/* An automatic pool runs jobs right whatever its spin (the choice is timing; only its range is asserted), and a
 * stream pool made like it (kw_cpu_pool_spin_us) is automatic too. */
static void test_auto_runs(void **state) {
    (void)state;
    static run_log log;
    kw_cpu_pool *pool = NULL;
    assert_int_equal(kw_cpu_pool_create(3, KW_CPU_POOL_SPIN_AUTO, &pool), 0);
    assert_int_equal(kw_cpu_pool_spin_now(pool), KW_CPU_POOL_SPIN_LONG_US); /* no sign yet */
    for (int rep = 0; rep < 400; ++rep) {
        if (rep % 50 == 0) usleep((useconds_t)KW_CPU_POOL_SAMPLE_MS * 1000 + 500); /* a count of switches is due */
        if (rep % 7 == 0) usleep(200);                                             /* past the long spin: asleep */
        check_run(pool, 3, 1 + rep % 3, 1 + (rep * 11) % MAX_TASKS, &log);
        const int now = kw_cpu_pool_spin_now(pool);
        assert_true(now == KW_CPU_POOL_SPIN_US || now == KW_CPU_POOL_SPIN_LONG_US);
    }
    kw_cpu_pool *like = NULL;
    assert_int_equal(kw_cpu_pool_create(3, kw_cpu_pool_spin_us(pool), &like), 0);
    assert_int_equal(kw_cpu_pool_spin_us(like), KW_CPU_POOL_SPIN_AUTO);
    check_run(like, 3, 3, MAX_TASKS, &log);
    kw_cpu_pool_free(like);
    kw_cpu_pool_free(pool);
}

static void test_range(void **state) {
    (void)state;
    for (int64_t n = 0; n < 50; ++n)
        for (int64_t parts = 1; parts <= 9; ++parts) {
            int64_t next = 0;
            for (int64_t p = 0; p < parts; ++p) {
                int64_t b, e;
                kw_cpu_pool_range(n, parts, p, &b, &e);
                assert_int_equal(b, next);
                assert_true(e >= b && e - b <= n / parts + 1 && e - b >= n / parts);
                next = e;
            }
            assert_int_equal(next, n);
        }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_task_once),   cmocka_unit_test(test_take),
        cmocka_unit_test(test_workers_take_part), cmocka_unit_test(test_nested_inline),
        cmocka_unit_test(test_sleep_and_wake),    cmocka_unit_test(test_create_free),
        cmocka_unit_test(test_concurrent_pools),  cmocka_unit_test(test_asleep),
        cmocka_unit_test(test_spin_env),          cmocka_unit_test(test_range),
        cmocka_unit_test(test_wake_latency),      cmocka_unit_test(test_wake_pays),
        cmocka_unit_test(test_wake_for),          cmocka_unit_test(test_spin_rule),
        cmocka_unit_test(test_auto_runs),         cmocka_unit_test(test_spin_sample_between),
        cmocka_unit_test(test_read_thread),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
