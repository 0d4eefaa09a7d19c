/* kw_kvq_parity.h: the paged quantized KV cache (kw_op_kvq_*, kw_op_attention_kvq) on a second backend against the
 * CPU backend's, used by test_backend_cuda.c (the CUDA backend, emulated and on a device). */
#ifndef KW_KVQ_PARITY_H
#define KW_KVQ_PARITY_H

#include "kernels/kw_backend.h"

/* Runs the same appends (cuts of 1 to 90 rows), an overwrite of full pages, a truncation into a full page and the
 * appends after it on backend and on a CPU backend, for int8, int6 and int4: the storages' bytes must be equal after
 * every op, kvq_load must give the same bits, and attention_kvq on backend (prefill with a mask and a window, decode
 * on a context long enough for split-K) must give the same bits as kw_op_attention on backend over an f32 cache of
 * the loaded values, and be within 1e-4 (relative to 1 + |x|) of the CPU's. Prints what failed; returns the number of
 * failed checks (0: all passed), *run counts the checks. */
int kw_kvq_parity(kw_backend *backend, size_t *run);

#endif /* KW_KVQ_PARITY_H */
