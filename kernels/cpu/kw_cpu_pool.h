/* kw_cpu_pool.h: the CPU backend's thread pool (kernels/cpu only). A backend owns one pool of n_threads - 1 worker
 * threads, started at creation and joined at destroy; an op hands it n tasks and computes tasks itself as worker 0
 * until all are done. Tasks are handed out one at a time by an atomic counter, so any task may run on any worker:
 * the kernels' results do not depend on which (kw_cpu.h).
 *
 * Waiting: after a job, a worker spins (atomic loads and pause) for up to spin_us microseconds waiting for the next
 * one, then sleeps on a futex; the caller waits for the last tasks of the workers that joined the job the same way
 * (a worker that arrives after the caller has taken the last task does not join: the caller does not wait for it). A
 * decode step is hundreds of short jobs, so the spin keeps the workers awake between them; the bound keeps a worker
 * that has nothing to do from starving the other processes on a shared machine. KW_CPU_SPIN_US (0 .. 1000000, read once
 * at creation) overrides KW_CPU_POOL_SPIN_US; 0 sleeps at once. */
#ifndef KW_CPU_POOL_H
#define KW_CPU_POOL_H

#include <stddef.h>
#include <stdint.h>

/* The default spin, in microseconds (docs/BENCHMARKS.md "A thread pool instead of OpenMP"). */
#define KW_CPU_POOL_SPIN_US 5

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
 * (kw_cpu_pool_free). spin_us < 0: KW_CPU_SPIN_US from the environment, else KW_CPU_POOL_SPIN_US. */
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

/* The spin the pool was created with, in microseconds. */
int kw_cpu_pool_spin_us(const kw_cpu_pool *pool);

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
