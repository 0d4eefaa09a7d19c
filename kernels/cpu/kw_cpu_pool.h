/* kw_cpu_pool.h: the CPU backend's thread pool (kernels/cpu only). A backend owns one pool of n_threads - 1 worker
 * threads, started at creation and joined at destroy; an op hands it n tasks and computes tasks itself as worker 0
 * until all are done. Each thread of a run owns a contiguous share of the tasks (schedule(static)'s cut) and takes
 * them one at a time from its front; a thread done with its own takes the others' from their back, one at a time,
 * so the shares balance as a shared counter did while each thread streams through neighbouring tasks (a decode
 * matmul's panels are neighbours in memory: docs/BENCHMARKS.md "Contiguous shares"). Any task may still run on any
 * worker: the kernels' results do not depend on which (kw_cpu.h).
 *
 * Waiting: after a job, a worker spins (atomic loads and pause) for up to spin_us microseconds waiting for the next
 * one, then sleeps on a futex; the caller waits for the last tasks of the workers that joined the job the same way
 * (a worker that arrives after the caller has taken the last task does not join: the caller does not wait for it). A
 * decode step is hundreds of short jobs, so the spin keeps the workers awake between them; the bound keeps a worker
 * that has nothing to do from starving the other processes on a shared machine. How long: KW_CPU_SPIN_US (0 .. 1000000,
 * read once at creation; 0 sleeps at once) or a spin given at creation fixes it; otherwise it is automatic: the pool
 * spins KW_CPU_POOL_SPIN_LONG_US while its threads see no contention (on an idle machine a longer spin keeps the
 * workers awake across a decode step's gaps) and KW_CPU_POOL_SPIN_US while they do (a spinning thread then takes a
 * core from a thread that has work: docs/BENCHMARKS.md "The pool's spin, chosen by contention"). Every thread of the
 * pool samples its own involuntary context switches and run-queue wait (getrusage and /proc/thread-self/schedstat, at
 * most once per KW_CPU_POOL_SAMPLE_MS) and the workers their wake-up latency; kw_cpu_pool_spin_rule turns the samples
 * into the spin, which each wait reads. */
#ifndef KW_CPU_POOL_H
#define KW_CPU_POOL_H

#include <stddef.h>
#include <stdint.h>

/* The default spin, in microseconds (docs/BENCHMARKS.md "A thread pool instead of OpenMP"). */
#define KW_CPU_POOL_SPIN_US 5

/* The automatic spin's long value, used while the pool's threads see no contention (docs/BENCHMARKS.md "The pool's
 * spin, chosen by contention"). */
#define KW_CPU_POOL_SPIN_LONG_US 100

/* A thread samples its involuntary context switches at most once in this many milliseconds (the rate's window). */
#define KW_CPU_POOL_SAMPLE_MS 10
/* Contention: at least KW_CPU_POOL_NIVCSW_MIN involuntary switches in a sample, at a rate of at least
 * KW_CPU_POOL_NIVCSW_RATE per second (an idle machine shows a few per second, from kernel threads, rarely 2 in one
 * 10 ms sample), or a wake-up latency average of at least KW_CPU_POOL_WAKE_CONTENDED_NS just after a worker measured
 * one (idle: 20-50 us, with a rare wake-up of 1 ms or more that lifts the average by a quarter of it; loaded: 1-8 ms
 * often). Looser bars (2 switches at 100/s, 200 us) made the idle machine look contended a few times a second and
 * lost part of the long spin's gain there (docs/BENCHMARKS.md "The pool's spin, chosen by contention"). */
#define KW_CPU_POOL_NIVCSW_MIN        3
#define KW_CPU_POOL_NIVCSW_RATE       300
#define KW_CPU_POOL_WAKE_CONTENDED_NS 1000000
/* ... or a thread that waited runnable, not running, for at least this share (%) of its sample's interval: in a
 * scheduler's queue behind other threads, or throttled by a CPU quota (which shows few involuntary switches). */
#define KW_CPU_POOL_DELAY_PCT 25
/* The pool stays contended (spins KW_CPU_POOL_SPIN_US) for this long after the last sign of contention. */
#define KW_CPU_POOL_HOLD_MS 100

/* A thread's share of a run holds at most this many tasks, so that kw_cpu_pool_take's 32-bit counts cannot overflow;
 * a run of more than n_threads times as many is done as several jobs, one after the other. A build may lower it
 * (test_kernels_cpu_pool_jobs builds the pool with 3, so that its runs are several jobs); never above 2^31. */
#ifndef KW_CPU_POOL_SHARE_MAX
#define KW_CPU_POOL_SHARE_MAX ((int64_t)1 << 31)
#endif
/* What a take from the back adds to a share's word (kw_cpu_pool_take); a take from the front adds 1. */
#define KW_CPU_POOL_TAKE_BACK ((uint64_t)1 << 32)

/* kw_cpu_pool_create's spin_us for the automatic spin whatever the environment says (a pool like another one:
 * kw_cpu_pool_spin_us). */
#define KW_CPU_POOL_SPIN_AUTO (-2)

/* kw_cpu_pool_wake_for wakes the workers on every this many refusals for the wake-up latency (a new measurement). */
#define KW_CPU_POOL_REPROBE 64

typedef struct kw_cpu_pool kw_cpu_pool;

/* Runs task `task` (0 .. n_tasks - 1) on worker `worker` (0 .. the run's thread count - 1; the threads of one run
 * have distinct ids, so a worker may use per-thread scratch indexed by it). The ids are unique only while one thread
 * drives the pool, the backend's contract (kw_backend.h: one calling thread per backend or stream): a second thread
 * calling run during a run computes inline as id 0 beside the caller's own id 0. A nested run (from inside a task)
 * reuses the task's id, so its scratch must be sized for the outer run's thread count. */
typedef void (*kw_cpu_pool_fn)(void *ctx, int64_t task, int worker);

/* A pool for n_threads (1 .. 1024) threads in all: n_threads - 1 workers are started; *out is owned by the caller
 * (kw_cpu_pool_free). spin_us 0 .. 1000000: that spin, fixed; KW_CPU_POOL_SPIN_AUTO: the automatic spin; any other
 * negative: KW_CPU_SPIN_US from the environment, else the automatic spin. */
int kw_cpu_pool_create(int n_threads, int spin_us, kw_cpu_pool **out);
/* Stops and joins the workers and frees the pool; NULL is a no-op. No run may be in progress. */
void kw_cpu_pool_free(kw_cpu_pool *pool);

/* Runs fn(ctx, task, worker) once for every task in 0 .. n_tasks - 1 on at most n_threads threads (fewer when the
 * pool has fewer or there are fewer tasks), the caller among them, and returns when all have finished (their writes
 * visible to the caller). One caller at a time: a run called from inside a task of the same pool (or while another
 * thread runs on it) runs its tasks inline on the calling thread, with that thread's worker id. */
void kw_cpu_pool_run(kw_cpu_pool *pool, int n_threads, int64_t n_tasks, kw_cpu_pool_fn fn, void *ctx);

/* 1 when every worker is asleep on its futex (a run would have to wake them: a system call and a wake-up later),
 * 0 when one is awake (running, or spinning for the next job). A snapshot, for choosing how many threads a small
 * job is worth; a pool without workers is asleep. */
int kw_cpu_pool_asleep(kw_cpu_pool *pool);

/* The recent wake-up latency of a sleeping worker, in nanoseconds: from the start of the run that woke it to its
 * arrival (the waker's futex_wake and the scheduler's delay; a few microseconds on an idle machine, far more
 * when other processes hold the cores), averaged over the last few such wake-ups; 0 before the first. A snapshot. */
int64_t kw_cpu_pool_wake_ns(kw_cpu_pool *pool);

/* Whether a job that streams `bytes` (a decode matmul's weights) is worth waking a sleeping worker for, with wake-up
 * latency wake_ns (kw_cpu_pool_wake_ns): only when it has at least min_bytes and the worker, arriving wake_ns late,
 * finds at least half of it left to share; bytes_per_us is one thread's streaming rate. A pure function (tested). */
static inline int kw_cpu_pool_wake_pays(size_t bytes, size_t min_bytes, int64_t wake_ns, size_t bytes_per_us) {
    if (bytes < min_bytes) return 0;
    return wake_ns <= 0 || (uint64_t)bytes / 2 >= (uint64_t)bytes_per_us * (uint64_t)wake_ns / 1000;
}

/* Whether a run of a job that streams `bytes` should wake the pool's sleeping workers: kw_cpu_pool_wake_pays with the
 * pool's kw_cpu_pool_wake_ns, and also once in every KW_CPU_POOL_REPROBE times it refuses for the latency alone, so
 * that the average follows a machine that has become idle again (a worker that is never woken is never measured). */
int kw_cpu_pool_wake_for(kw_cpu_pool *pool, size_t bytes, size_t min_bytes, size_t bytes_per_us);

/* The spin the pool was created with, in microseconds, or KW_CPU_POOL_SPIN_AUTO (to create another pool like it). */
int kw_cpu_pool_spin_us(const kw_cpu_pool *pool);

/* The spin in effect now, in microseconds: the fixed one, or the automatic one's current choice. A snapshot. */
int kw_cpu_pool_spin_now(kw_cpu_pool *pool);

/* One thread's sample for kw_cpu_pool_spin_rule. */
typedef struct kw_cpu_spin_sample {
    int64_t now_ns;      /* when it was taken (CLOCK_MONOTONIC) */
    int64_t interval_ns; /* the time the switches were counted over (0: no count in this sample) */
    int64_t nivcsw;      /* the thread's involuntary context switches over interval_ns */
    int64_t delay_ns;    /* the time the thread was runnable but not running over interval_ns (0: not known) */
    int64_t wake_ns;     /* the pool's wake-up latency average just after this thread measured a wake-up; 0: none */
} kw_cpu_spin_sample;

/* What a thread reads for the automatic spin, all at one moment. */
typedef struct kw_cpu_spin_reading {
    int64_t ns;       /* when (CLOCK_MONOTONIC); 0 in a thread's first "previous" reading: none yet */
    int64_t nivcsw;   /* the thread's involuntary context switches so far */
    int64_t delay_ns; /* the thread's time runnable but not running so far; -1: the kernel does not say */
} kw_cpu_spin_reading;

/* The calling thread's reading now: the clock is read with the counts, so that a sample's interval covers exactly
 * what it counts. 0, or KW_E_IO when getrusage fails. */
int kw_cpu_pool_read_thread(kw_cpu_spin_reading *out);

/* The sample between two readings of one thread, prev then cur (no count when prev has none or cur is not later),
 * with the wake-up average wake_ns. A pure function (tested). */
static inline kw_cpu_spin_sample kw_cpu_spin_sample_between(const kw_cpu_spin_reading *prev,
                                                            const kw_cpu_spin_reading *cur, int64_t wake_ns) {
    kw_cpu_spin_sample s = {.now_ns = cur->ns, .wake_ns = wake_ns};
    if (prev->ns != 0 && cur->ns > prev->ns) {
        s.interval_ns = cur->ns - prev->ns;
        s.nivcsw = cur->nivcsw - prev->nivcsw;
        if (cur->delay_ns >= 0 && prev->delay_ns >= 0) s.delay_ns = cur->delay_ns - prev->delay_ns;
    }
    return s;
}

/* The automatic spin after sample s, in microseconds: KW_CPU_POOL_SPIN_US while the last sign of contention
 * (*last_sign_ns, INT64_MIN: never; s a sign: set to s->now_ns) is less than KW_CPU_POOL_HOLD_MS old, else
 * KW_CPU_POOL_SPIN_LONG_US. A pure function (tested); the pool keeps *last_sign_ns in an atomic, so two threads
 * applying it at once may keep the older of two recent signs, harmless. */
static inline int kw_cpu_pool_spin_rule(int64_t *last_sign_ns, const kw_cpu_spin_sample *s) {
    const int switches = s->interval_ns > 0 && s->nivcsw >= KW_CPU_POOL_NIVCSW_MIN &&
                         s->nivcsw * 1000000000 >= (int64_t)KW_CPU_POOL_NIVCSW_RATE * s->interval_ns;
    const int waited = s->interval_ns > 0 && s->delay_ns * 100 >= (int64_t)KW_CPU_POOL_DELAY_PCT * s->interval_ns;
    if (switches || waited || s->wake_ns >= KW_CPU_POOL_WAKE_CONTENDED_NS) *last_sign_ns = s->now_ns;
    const int held = *last_sign_ns != INT64_MIN && s->now_ns - *last_sign_ns < (int64_t)KW_CPU_POOL_HOLD_MS * 1000000;
    return held ? KW_CPU_POOL_SPIN_US : KW_CPU_POOL_SPIN_LONG_US;
}

/* 1 when a share's word (kw_cpu_pool_take) says every one of its `size` tasks has been taken. The counts only grow
 * during a job, so a thread that reads this from a plain load may skip the share for good: a thief reads each other
 * share's word before it adds to it, and the shares already done (most of them at the end of a job) cost it a read
 * each, which can overlap, instead of a read-modify-write each, which cannot (T - 1 of them per thread and job on T
 * threads). A pure function (tested). */
static inline int kw_cpu_pool_share_done(uint64_t word, int64_t size) {
    return (int64_t)(uint32_t)word + (int64_t)(word >> 32) >= size;
}

/* One take from a share of `size` tasks: a thread adds 1 (from the front: the share's owner) or KW_CPU_POOL_TAKE_BACK
 * (from the back: another thread, its own share done) to the share's word, whose low 32 bits count the takes from the
 * front and whose high 32 bits those from the back, and passes the value before its addition as `before`. The take
 * gets a task (1; *task: the front count, or size - 1 - the back count) while the two counts sum to less than size,
 * else the share is done (0) and the thread leaves it for good. No task goes twice: two takes that both succeed saw
 * sums below size, so a front and a back take cannot meet. A failed take adds one too many, once per thread and share
 * at most, so with size <= KW_CPU_POOL_SHARE_MAX and at most 1024 threads neither count reaches 2^32. A pure function
 * (tested). */
static inline int kw_cpu_pool_take(uint64_t before, int64_t size, int back, int64_t *task) {
    if (kw_cpu_pool_share_done(before, size)) return 0;
    *task = back ? size - 1 - (int64_t)(before >> 32) : (int64_t)(uint32_t)before;
    return 1;
}

/* The waiting policy a pool created now would have (kw_backend_cpu_wait, kernels/kw_backend.h): valid until the
 * calling thread's next call (borrowed). */
const char *kw_cpu_pool_wait_origin(void);

/* Splits n items into `parts` contiguous ranges; range `part` is [*begin, *end) (schedule(static)'s cut). */
static inline void kw_cpu_pool_range(int64_t n, int64_t parts, int64_t part, int64_t *begin, int64_t *end) {
    const int64_t base = n / parts, extra = n % parts;
    *begin = part * base + (part < extra ? part : extra);
    *end = *begin + base + (part < extra ? 1 : 0);
}

#endif
