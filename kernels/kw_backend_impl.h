/* kw_backend_impl.h: what a backend implements (internal to kernels/; model code includes kw_backend.h only).
 *
 * A backend is a table of function pointers (struct kw_backend_i, in the spirit of ggml_backend_i) plus a
 * struct kw_backend placed first in the backend's own state. The generic layer (kw_backend.c) validates every
 * argument once (pointers, owning backend, dtypes, shapes, bounds) and asks supports() before it dispatches, so an
 * implementation may assume valid input and a supported dtype. supports() is a whitelist: it returns 1 only for
 * (op, dtype) pairs the backend really runs; everything else, including ops added later, is unsupported.
 *
 * Entries marked (optional) may be NULL; the generic layer then answers KW_E_OP_UNSUPPORTED. supports() must never
 * say yes for an op whose entry is NULL (the generic layer checks that too).
 */
#ifndef KW_BACKEND_IMPL_H
#define KW_BACKEND_IMPL_H

#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>

#include "kernels/kw_backend.h"

struct kw_backend_i {
    const char *name;
    enum kw_backend_kind kind;
    /* 1 if tensor data pointers are host addresses: kw_tensor_from_host then aliases host memory. */
    int host_memory;

    /* Releases the backend state (the generic layer has already synchronized). */
    void (*destroy)(kw_backend *backend);
    /* The whitelist (see kw_backend_supports in kw_backend.h). */
    int (*supports)(const kw_backend *backend, enum kw_op op, enum kw_dtype dtype);
    /* Waits for queued work; returns a failure of the wait itself (deferred op errors are kept by the generic
     * layer, see kw__backend_defer_error). */
    int (*synchronize)(kw_backend *backend);

    /* Allocates size > 0 bytes of backend memory, aligned to at least 64 bytes. */
    int (*alloc)(kw_backend *backend, size_t size, void **data);
    /* Optional: alloc for a packed matmul weight (any layout but KW_LAYOUT_ROWS), which lives as long as its model;
     * released by free like alloc's. NULL: alloc. */
    int (*alloc_weight)(kw_backend *backend, size_t size, void **data);
    /* Releases memory from alloc; data is never NULL. */
    void (*free)(kw_backend *backend, void *data);
    /* Host -> backend and backend -> host copies of size bytes (bounds already checked). */
    int (*upload)(kw_backend *backend, void *dst, const void *src, size_t size);
    int (*download)(kw_backend *backend, void *dst, const void *src, size_t size);
    int (*memset_zero)(kw_backend *backend, void *dst, size_t size);
    /* (optional, both or none) Host memory for transfers (kw_backend_host_alloc: size > 0, at least 64-byte aligned)
     * and its release (p never NULL). NULL: ordinary aligned host memory. */
    int (*host_alloc)(kw_backend *backend, size_t size, void **p);
    void (*host_free)(kw_backend *backend, void *p);
    /* (optional) Packs w (validated: a 2-D row-major float tensor whose dtype supports() allows for matmul) into the
     * backend's own weight layout as a new tensor owned by the caller (kw__tensor_alloc_layout allocates it). NULL:
     * kw_tensor_pack_weight hands back a view of w. */
    int (*pack_weight)(kw_backend *backend, const kw_tensor *w, kw_tensor *packed);
    /* (optional) Packs validated quantized rows (kw_tensor_pack_quantized) into a new tensor in q->layout. NULL: the
     * backend keeps no weight quantized (kw_backend_supports_layout answers 0). */
    int (*pack_quantized)(kw_backend *backend, const kw_quant_rows *q, kw_tensor *packed);
    /* (optional) Packs a validated row-major bf16 weight into KW_LAYOUT_PANELS_BF16_PAIRS, which matmul then takes.
     * NULL: the backend has no such layout. */
    int (*pack_bf16_pairs)(kw_backend *backend, const kw_tensor *w, kw_tensor *packed);
    /* 1 if pack_quantized and matmul also take the int8-activation layouts (KW_LAYOUT_QPANELS_U4_X8, S8_G16_X8,
     * S8_X8; with superblocks also U4_SB_X8, S8_G16_SB_X8, S6_G16_SB_X8). */
    int int8_activations;
    /* 1 if pack_quantized and matmul also take the super-block layouts (KW_LAYOUT_QPANELS_U4_SB, S8_G16_SB). */
    int superblocks;

    /* (optional) Creates a stream context of parent (kw_backend_create_stream; parent is a backend made by a create
     * function, never itself a stream context): a new backend state of this iface, set up with kw__backend_init, that
     * may use every tensor of parent and has its own queue, scratch and error record. The generic layer links it to
     * parent's accounting afterwards. NULL: the backend has no stream contexts (KW_E_UNSUPPORTED). */
    int (*create_stream)(kw_backend *parent, kw_backend **out);

    /* (optional, all four or none) Step graphs, as in kw_backend.h; graph_free releases a graph of this backend. */
    int (*graph_begin)(kw_backend *backend, int64_t base);
    int (*graph_end)(kw_backend *backend, kw_backend_graph **out);
    int (*graph_launch)(kw_backend *backend, kw_backend_graph *graph, int64_t base);
    void (*graph_free)(kw_backend_graph *graph);

    /* Ops, with the argument lists of kw_backend.h (validated). All (optional). */
    int (*get_rows)(kw_backend *backend, kw_tensor *out, const kw_tensor *table, const kw_tensor *ids);
    int (*matmul)(kw_backend *backend, kw_tensor *out, const kw_tensor *x, const kw_tensor *w, const kw_tensor *bias);
    /* (optional) kw_op_matmul_shared (validated, n >= 1); NULL: the generic layer calls matmul n times. */
    int (*matmul_shared)(kw_backend *backend, int n, kw_tensor *const *out, const kw_tensor *x,
                         const kw_tensor *const *w, const kw_tensor *const *bias);
    int (*rms_norm)(kw_backend *backend, kw_tensor *out, const kw_tensor *x, const kw_tensor *w, float eps, int flags);
    int (*rope)(kw_backend *backend, kw_tensor *x, const kw_tensor *pos, const kw_rope_params *params);
    int (*rope_table)(kw_backend *backend, kw_tensor *x, const kw_tensor *table);
    int (*attention)(kw_backend *backend, kw_tensor *out, const kw_tensor *q, const kw_tensor *k_cache,
                     const kw_tensor *v_cache, const kw_attention_params *params);
    int (*kv_store)(kw_backend *backend, kw_tensor *cache, const kw_tensor *src, int64_t pos0);
    int (*kv_load)(kw_backend *backend, kw_tensor *out, const kw_tensor *cache, int64_t pos0);
    int (*glu)(kw_backend *backend, kw_tensor *out, const kw_tensor *gate, const kw_tensor *up, enum kw_act act);
    int (*unary)(kw_backend *backend, kw_tensor *out, const kw_tensor *x, enum kw_act act);
    int (*add)(kw_backend *backend, kw_tensor *out, const kw_tensor *a, const kw_tensor *b);
    int (*scale)(kw_backend *backend, kw_tensor *out, const kw_tensor *x, float s);
    int (*softmax)(kw_backend *backend, kw_tensor *out, const kw_tensor *x);
    int (*argmax)(kw_backend *backend, kw_tensor *out, const kw_tensor *x, int flags);
    int (*copy)(kw_backend *backend, kw_tensor *dst, const kw_tensor *src);
    /* (optional, all four or none) The paged quantized KV cache ops of kw_backend.h (validated). */
    int (*kvq_store)(kw_backend *backend, kw_tensor *store, const kw_kvq_geom *g, const kw_tensor *src, int64_t pos0,
                     int64_t n_rows);
    int (*kvq_load)(kw_backend *backend, kw_tensor *out, const kw_tensor *store, const kw_kvq_geom *g, int64_t pos0,
                    int64_t n_rows);
    int (*kvq_truncate)(kw_backend *backend, kw_tensor *store, const kw_kvq_geom *g, int64_t n_rows, int64_t new_rows);
    int (*attention_kvq)(kw_backend *backend, kw_tensor *out, const kw_tensor *q, const kw_tensor *k_store,
                         const kw_kvq_geom *kg, const kw_tensor *v_store, const kw_kvq_geom *vg,
                         const kw_attention_params *params, int64_t n_rows);
    /* (optional, all eight or none) The sharer's device work of kw_backend.h (validated; kw_cuda_wire.h's kernels). */
    int (*select_scores)(kw_backend *backend, kw_tensor *score, const kw_tensor *cache, int64_t pos0);
    int (*select_topk)(kw_backend *backend, kw_tensor *out, kw_tensor *count, const kw_tensor *score, int64_t k);
    int (*wire_sizes)(const kw_wire_op_spec *spec, int clip, uint32_t H, uint32_t T, uint32_t D, uint64_t *tensor_bytes,
                      uint64_t *work_bytes);
    int (*wire_encode)(kw_backend *backend, kw_tensor *dst, size_t offset, const kw_wire_op_spec *spec, int clip,
                       const kw_tensor *cache, const kw_tensor *rows, uint32_t t0, uint32_t T, kw_tensor *work,
                       kw_tensor *err, int64_t err_index, const kw_tensor *mask, uint64_t mask_base);
    int (*wire_outlier_work)(const kw_wire_op_spec *sk, const kw_wire_op_spec *sv, uint32_t H, uint32_t T, uint32_t D,
                             uint64_t *work_bytes);
    int (*wire_outliers)(kw_backend *backend, const kw_wire_op_spec *sk, const kw_wire_op_spec *sv,
                         const kw_tensor *cache_k, const kw_tensor *cache_v, const kw_tensor *rows, uint32_t T,
                         uint32_t count, kw_tensor *work, kw_tensor *elems, kw_tensor *n, kw_tensor *values,
                         kw_tensor *mask, kw_tensor *bad);
    /* the status of one error word (kw_cuda_wire_encode_status) */
    int (*wire_status)(unsigned long long err);
    int (*wire_rotate_rows)(kw_backend *backend, kw_tensor *out, const kw_tensor *cache, const kw_tensor *rows,
                            uint32_t T, int rotate);
    /* (optional, all three or none) The receiver's device decode of kw_backend.h (validated; kw_cuda_wire.h). */
    int (*wire_decode)(kw_backend *backend, kw_tensor *out, uint32_t t0, uint32_t T, const kw_wire_op_spec *spec,
                       const kw_tensor *src, size_t offset, kw_tensor *bad);
    int (*wire_outliers_apply)(kw_backend *backend, kw_tensor *k, kw_tensor *v, const kw_tensor *elems,
                               const kw_tensor *values, uint32_t n);
    int (*wire_unrotate)(kw_backend *backend, kw_tensor *x, kw_tensor *bad);
    int (*head_scale_add)(kw_backend *backend, kw_tensor *out, const kw_tensor *base, const kw_tensor *x,
                          const kw_tensor *w, float g);
};

/* The generic part of every backend; each backend's state struct starts with one. */
struct kw_backend {
    const struct kw_backend_i *iface;
    /* The backend whose memory accounting, limit and host-byte count this one uses, and whose tensors it may use:
     * itself, or for a stream context the backend it was made from (borrowed: it outlives the context). */
    kw_backend *root;
    int64_t n_live_allocs;     /* kw_tensor_alloc'd buffers not yet freed (atomic; checked by destroy) */
    int64_t n_streams;         /* root: stream contexts alive (atomic; checked by destroy) */
    int deferred_status;       /* first error found while running ops since the last synchronize, or 0 */
    char deferred_detail[256]; /* its human-readable reason */
    /* root only, under mem_lock (stream contexts charge it from their threads): bytes held (tensors and charged
     * scratch of the root and every stream context), peak and limit: kw__backend_charge */
    kw_backend_memory mem;
    pthread_mutex_t mem_lock;
    uint64_t host_bytes; /* root only: kw_backend_host_alloc bytes held (atomic: read from any thread) */
};

/* The generic part of every backend's graph; a backend's graph struct starts with one. */
struct kw_backend_graph {
    kw_backend *backend; /* the backend that recorded it */
};

/* Accounts bytes of backend memory about to be allocated (what names them in the error): KW_E_NOMEM, with the request
 * and the budget in the reason, if that would take the live bytes past the limit; nothing is charged then. Both
 * act on backend->root's shared accounting (thread-safe: stream contexts charge from their own threads). The
 * generic layer charges tensor allocations; a backend charges its own scratch (CUDA: workspace) the same way and
 * calls kw__backend_uncharge when it frees it. */
int kw__backend_charge(kw_backend *backend, uint64_t bytes, const char *what);
void kw__backend_uncharge(kw_backend *backend, uint64_t bytes);

/* Bytes of one group of a quantized layout within a panel (64 scales, 64 offsets if any, group * 64 codes). */
size_t kw__quant_group_bytes(const kw_quant_layout *q);
/* Bytes of one super-block of a super-block layout within a panel (kernels/kw_backend.h, KW_LAYOUT_QPANELS_U4_SB). */
size_t kw__quant_sb_bytes(const kw_quant_layout *q);
/* Bytes of one panel (64 rows, K columns) of a quantized layout. */
size_t kw__quant_panel_bytes(const kw_quant_layout *q, int64_t K);
/* The int8 s with fl(d * s) of the same bits as value (the super-block layouts' scales and offsets): 0 and *s, or
 * KW_E_INVALID_ARG if there is none. */
int kw__quant_sb_int(float value, float d, int8_t *s);
/* kw__quant_sb_int given inv = 1.0f / d, computed once per super-block: the int nearest value * inv if d times it has
 * value's bits (then no other int does: distinct s give products at least |d| apart, their roundings far smaller),
 * else kw__quant_sb_int's own search. The same answers; a multiply per group instead of a division. */
static inline int kw__quant_sb_int_inv(float value, float d, float inv, int8_t *s) {
    const float g = value * inv;
    if (g > -128.5f && g < 127.5f) { /* false for a NaN */
        const int t = (int)(g < 0.0f ? g - 0.5f : g + 0.5f);
        const float v = d * (float)t;
        if (__builtin_memcmp(&v, &value, sizeof v) == 0) {
            *s = (int8_t)t;
            return 0;
        }
    }
    return kw__quant_sb_int(value, d, s);
}

/* kw_tensor_alloc with a layout: the byte size follows kw_tensor_nbytes for that layout (KW_LAYOUT_PANELS and the
 * quantized panels: ndim 2). */
int kw__tensor_alloc_layout(kw_backend *backend, kw_tensor *t, enum kw_dtype dtype, int32_t ndim, const int64_t *ne,
                            enum kw_layout layout);

/* Fills the generic part of a new backend (its own root; kw_backend_create_stream relinks a stream context). */
void kw__backend_init(kw_backend *backend, const struct kw_backend_i *iface);

/* Records an error found while running an op (e.g. a token id out of range); the first one since the last
 * synchronize wins and is returned by it. Call from the thread that enqueued the op. */
void kw__backend_defer_error(kw_backend *backend, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The rotary inverse frequencies inv_freq[i], i < rotary_dim / 2, exactly as HF computes them in fp32
 * (default, linear and llama3 rope types). Parameters are validated by the generic layer. */
void kw__rope_inv_freq(const kw_rope_params *params, float *inv_freq);

/* Upper bound of rotary_dim accepted by kw_op_rope (keeps per-call tables on the stack). */
#define KW_ROPE_MAX_DIM 1024

#endif /* KW_BACKEND_IMPL_H */
