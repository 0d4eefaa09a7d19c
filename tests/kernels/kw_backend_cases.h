/* kw_backend_cases.h: the op parity case table shared by test_backend_ops (CPU) and test_backend_cuda (GPU).
 *
 * Each case is {op, dtype, sizes, seed}. kw_case_run generates the inputs from the seed, runs the op on the
 * backend and the kw_ref oracle on the host, and compares: exact equality where both sides must round identically
 * (argmax, copies, kv_store/kv_load, get_rows, add, scale), otherwise a per-element bound derived from fp32 error
 * analysis (comments at each comparison in kw_backend_cases.c). Not a benchmark harness, though --perf reuses it.
 */
#ifndef KW_BACKEND_CASES_H
#define KW_BACKEND_CASES_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kw_backend.h"

/* Sizes per op (a[] entries; unused ones are 0):
 *   GET_ROWS  V, D, T                 MATMUL   M, N, K, bias (0 none, else 1 + bias dtype)
 *   RMS_NORM  R, D, flags, small (inputs ~1e-3)   ROPE     T, H, D, rotary_dim, scaling, first position
 *   ATTENTION T, Hq, Hkv, D, cap, q_pos0, n_kv - (q_pos0 + T), window, mask (0 none, 1 random, 2 none visible
 *             for the first query)
 *   KV_STORE / KV_LOAD  T, H, D, cap, pos0
 *   GLU / UNARY  n, act               ADD / SCALE / SOFTMAX  R, N
 *   ARGMAX    R, N, flags, data (0 random, 1 ties, 2 NaN and +-Inf, 3 bf16-rounding ties)
 *   COPY      n, src dtype (dtype is the destination)
 *   HEAD_SCALE_ADD  T, H, D, g, in place (0 no, 1 out = base, 2 out = x)
 * dtype is the operand supports() is asked about (weight, table, cache, copy destination). */
struct kw_case {
    enum kw_op op;
    enum kw_dtype dtype;
    int64_t a[9];
    uint32_t seed;
};

extern const struct kw_case kw_cases[];
extern const size_t kw_n_cases;

/* One line describing the case ("matmul bf16 M=1 N=37 K=83 seed 3"). */
const char *kw_case_describe(const struct kw_case *c, char *buf, size_t size);

enum kw_case_result { KW_CASE_PASS = 0, KW_CASE_FAIL = 1, KW_CASE_UNSUPPORTED = 2 };

/* Runs one case on backend against the oracle. On failure prints what differed (first elements, bound) to stderr.
 * With perf_reps > 0, also times perf_reps runs of the op alone (inputs stay on the backend) and stores the mean
 * seconds per run in *perf_seconds. */
enum kw_case_result kw_case_run(kw_backend *backend, const struct kw_case *c, int perf_reps, double *perf_seconds);

/* The deferred get_rows error on backend: two calls with bad ids before one synchronize report the first bad row of
 * the first call, with the message the CPU backend writes, once; bad rows are zeroed, good rows written. Returns 1 if
 * all of that holds (prints what did not to stderr). */
int kw_case_bad_ids(kw_backend *backend);

#endif /* KW_BACKEND_CASES_H */
