/* kw_projector.h: the forward pass of one C2C fuser projector (C2CProjector, c2c_spec.md §2), on a compute backend.
 *
 * A projector maps, token by token, a sharer's K (or V) row and the receiver's own K (or V) row to a new receiver
 * row. Key and value branches are independent and identical in structure:
 *   x = cat(src heads flattened, tgt heads flattened)                 (in = Hs*Ds + Ht*Dt)
 *   h = in(x); h = h + W2(GELU(W1(RMSNorm(h))))                       (mlp1, RMSNorm eps 1e-6, exact-erf GELU)
 *   p = proj_out(proj_mlp2(h))  (num_layers - 2 residual blocks)      (T, Ht*Dt)
 *   w = sigmoid(scalar_head(scalar_mlp2(h)))                          (T, Ht): one weight per token and head
 *   out[t, j, :] = tgt[t, j, :] + g * w[t, j] * p[t, j, :]             g = 1 if gate_logit > 0 else 0
 * All positions of a call are batched as GEMM rows (in chunks of the workspace's row count) through
 * kernels/kw_backend.h only, so the same code runs on every backend. A branch whose gate is closed is not computed:
 * its output is the target exactly.
 *
 * Numerics (enum kw_projector_numerics):
 *  - FP32: every activation in fp32, the weights widened exactly (what torch computes with the projector cast to
 *    fp32: parity within 1e-4 relative).
 *  - BF16: emulates torch running the projector in bf16 (as the reference does): the inputs are rounded to bf16,
 *    and so is each Linear output (fp32 accumulation plus bias, one rounding), the GELU and sigmoid outputs, the
 *    residual sums and the RMSNorm output. The final combine stays fp32, as in torch (the gate is an fp32 tensor):
 *    the result is rounded to bf16 only when a bf16 cache stores it. Two RMSNorm rules exist, because torch changed
 *    its bf16 rms_norm; r = 1 / sqrt(mean(x^2) + eps), all in fp32 from the bf16 row x, w the bf16 weight:
 *      KW_PROJECTOR_BF16 (the default): y = bf16(bf16(x * r) * w) with eps = bf16(1e-6) = 9.98377799987793e-07,
 *        torch's composite rms_norm up to 2.6 (nn.RMSNorm exists since 2.4): the normalized row is rounded to bf16,
 *        the weight product is a bf16 op (rounded again), and eps is held in the input dtype. This is what the C2C
 *        reference (pinned to torch 2.6.0) and its released results used. Verified bit for bit against torch 2.6.0.
 *      KW_PROJECTOR_BF16_FUSED_NORM: y = bf16(x * r * w) with eps = 1e-6 in fp32, one rounding: newer torch
 *        (c2c_spec.md §2.5 places the change at 2.7; verified bit for bit against torch 2.15.0 only).
 *    The two differ by one bf16 step in about a quarter of the norm outputs on random rows, which changes most
 *    projector outputs by up to one or two bf16 steps of the fused change (tests/c2c/test_projector_bf16.c).
 *    Summation order differs from torch's, so a value can still land on the other side of a bf16 rounding boundary;
 *    tests/c2c/test_projector.c and tests/c2c/test_projector_bf16.c derive the resulting tolerances.
 * The in-Linear is run as two GEMMs over its source and target column blocks (sums added in fp32, then rounded),
 * which is why the projector keeps its own copy of that weight split in two.
 *
 * Not here: loading fuser folders (kw_fuser_load.h), reading and writing caches, the layer mapping and the pipeline
 * (kw_fusion.h).
 */
#ifndef KW_PROJECTOR_H
#define KW_PROJECTOR_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kw_backend.h"

/* C2CProjector constructor arguments (projector_{i}.json init_args). */
typedef struct kw_projector_dims {
    int32_t src_heads;    /* sharer num_key_value_heads (source_num_heads) */
    int32_t src_head_dim; /* sharer head_dim (source_dim) */
    int32_t tgt_heads;    /* receiver num_key_value_heads (target_num_heads) */
    int32_t tgt_head_dim; /* receiver head_dim (target_dim) */
    int32_t hidden;       /* hidden_dim: width of the residual stream */
    int32_t intermediate; /* intermediate_dim: FFN width of mlp1 and proj_mlp2 (scalar_mlp2 uses hidden) */
    int32_t num_layers;   /* >= 3; proj_mlp2 has num_layers - 2 blocks */
} kw_projector_dims;

/* Largest value accepted for each dims field (num_layers: 64). */
#define KW_PROJECTOR_MAX_DIM 65536

/* One state-dict tensor on the host, as a lookup returns it. */
typedef struct kw_projector_tensor {
    enum kw_dtype dtype; /* KW_DTYPE_F32, KW_DTYPE_BF16 or KW_DTYPE_F16 */
    int32_t ndim;        /* 0..4; shape[i] for i < ndim */
    int64_t shape[4];
    const void *data; /* little-endian elements, borrowed: must stay valid and unchanged while the projector lives */
} kw_projector_tensor;

/* Finds the tensor with a state-dict name ("key_in.weight", "value_proj_mlp2.blocks.0.w1.weight", "key_gate_logit",
 * ...). Returns 0 and fills *out, KW_E_NOT_FOUND when absent, another negative status on failure. */
typedef int (*kw_projector_lookup_fn)(void *user, const char *name, kw_projector_tensor *out);

typedef struct kw_projector kw_projector; /* opaque: weight bindings (read-only after creation) */

enum kw_projector_numerics {
    KW_PROJECTOR_FP32 = 0,
    KW_PROJECTOR_BF16 = 1,            /* bf16, RMSNorm rounded twice as torch <= 2.6 (the reference's) */
    KW_PROJECTOR_BF16_FUSED_NORM = 2, /* bf16, RMSNorm rounded once as torch >= 2.7 */
};

/* "fp32", "bf16" or "bf16-fused-norm"; NULL for a value outside the enum (how callers validate one). */
const char *kw_projector_numerics_name(enum kw_projector_numerics numerics);

/* Binds the 26 + 6 * (num_layers - 2) learned tensors of one projector, found by name through lookup, to backend
 * tensors (zero copy on the CPU backend, except the split in-Linear weight, which the projector copies and owns, as it
 * owns a row of hidden ones the two-rounding RMSNorm uses). Every tensor must exist with exactly the shape dims imply;
 * the gate logits may be 0-dim or hold one element. backend is borrowed and must outlive the projector; so must the
 * tensors' host data. *out is owned by the caller (kw_projector_free). Errors: KW_E_INVALID_ARG (dims out of range),
 * KW_E_FUSER_TENSOR (a tensor missing, misshaped or of another dtype, named in the detail), KW_E_OP_UNSUPPORTED (the
 * backend cannot use a weight dtype), KW_E_NOMEM, backend errors. */
int kw_projector_create(kw_backend *backend, const kw_projector_dims *dims, kw_projector_lookup_fn lookup, void *user,
                        kw_projector **out);

struct kw_fuser;

/* Binds projector number index of a fuser loaded by kw_fuser_load (c2c/kw_fuser_load.h), which is borrowed and must
 * outlive the projector. Errors: KW_E_INVALID_ARG (index out of range), then as kw_projector_create. */
int kw_projector_create_from_fuser(kw_backend *backend, const struct kw_fuser *fuser, int32_t index,
                                   kw_projector **out);

/* Releases the bindings and the owned copies. NULL is a no-op. */
void kw_projector_free(kw_projector *p);

/* The dims the projector was created with (owned by it). */
const kw_projector_dims *kw_projector_get_dims(const kw_projector *p);

/* The gate logits (as stored, widened to fp32) and whether each gate is open (logit > 0). Any pointer may be NULL. */
void kw_projector_gates(const kw_projector *p, float *key_logit, float *value_logit, int *key_open, int *value_open);

/* Multiply-adds per token of one branch (every Linear's weight used once); FLOPs are twice that. */
int64_t kw_projector_branch_macs(const kw_projector_dims *dims);

/* Scratch space for kw_projector_forward: backend tensors that grow on demand, shared by any number of projectors
 * on the same backend (one forward at a time). */
typedef struct kw_projector_ws kw_projector_ws;

/* Creates a workspace on backend (borrowed). max_rows is the number of positions run per GEMM chunk (0: 256);
 * longer calls are processed in chunks. *out is owned by the caller (kw_projector_ws_free). */
int kw_projector_ws_create(kw_backend *backend, int64_t max_rows, kw_projector_ws **out);

/* Releases the scratch tensors. NULL is a no-op. */
void kw_projector_ws_free(kw_projector_ws *ws);

/* Bytes of backend memory the workspace currently holds. */
size_t kw_projector_ws_bytes(const kw_projector_ws *ws);

/* One forward call over T positions. All tensors are f32 on the projector's backend; the sources are (T, Hs, Ds)
 * and the targets and outputs (T, Ht, Dt), token-major (what kw_kvcache_load_rows produces). An output may be NULL
 * (that branch is not run) and may be the same tensor as its target (updated in place). A closed branch with an
 * output copies the target there unchanged (in BF16 mode too: the inputs are expected to be bf16 values, as a bf16
 * cache holds them; the open branches round them anyway). Asynchronous like every backend op: results are visible after
 * kw_backend_synchronize. Errors: KW_E_INVALID_ARG, KW_E_SHAPE, backend errors. */
typedef struct kw_projector_io {
    const kw_tensor *src_k, *src_v; /* sharer rows */
    const kw_tensor *tgt_k, *tgt_v; /* receiver rows */
    kw_tensor *out_k, *out_v;       /* results, or NULL */
} kw_projector_io;

int kw_projector_forward(const kw_projector *p, kw_projector_ws *ws, enum kw_projector_numerics numerics,
                         const kw_projector_io *io);

#endif /* KW_PROJECTOR_H */
