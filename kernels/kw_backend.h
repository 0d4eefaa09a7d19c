/* kw_backend.h: the compute backend interface shared by the CPU and CUDA backends.
 *
 * Model code (model/, c2c/) talks to compute only through this header. The contract is written for a GPU:
 *  - Tensor memory belongs to a backend and may live in device memory. Host code never dereferences
 *    kw_tensor.data; it moves bytes with kw_backend_upload / kw_backend_download.
 *  - Ops are enqueued on the backend's in-order stream and may run asynchronously (a backend has one stream; several
 *    requests at once use stream contexts, kw_backend_create_stream). An op returns after
 *    enqueueing; errors it can detect up front (shapes, dtypes, support) are returned at once, errors found while
 *    running surface at the next kw_backend_synchronize.
 *  - Host memory passed to upload/download must stay valid and untouched until kw_backend_synchronize returns.
 *    Only synchronize makes results visible to the host.
 *  - Scalars an op needs (positions offset, eps, scale) are passed by value, never through host pointers.
 *  - The CPU backend runs ops synchronously on its own thread pool; it obeys the same contract.
 *
 * Tensors are dense and row-major: ne[ndim-1] is the contiguous dimension. Shapes below are written outermost
 * first, e.g. x (T, D) is T rows of D contiguous values.
 *
 * Every op has a plain-C oracle in kernels/ref (kw_ref_*), and tests/kernels compares each backend against it.
 */
#ifndef KW_BACKEND_H
#define KW_BACKEND_H

#include <stddef.h>
#include <stdint.h>

/* Element types. Numbers are stable (used in fixtures). */
enum kw_dtype {
    KW_DTYPE_F32 = 0,
    KW_DTYPE_BF16 = 1,
    KW_DTYPE_F16 = 2,
    KW_DTYPE_I32 = 3,
    KW_DTYPE_U8 = 4,
    KW_DTYPE_I8 = 5, /* only as file data (quantized safetensors codes): no op takes it */
    KW_DTYPE_COUNT = 6,
};

/* Bytes per element of a dtype (0 for an invalid value). */
size_t kw_dtype_size(enum kw_dtype dtype);
/* "f32", "bf16", ...; "?" for an invalid value. */
const char *kw_dtype_name(enum kw_dtype dtype);

/* The single list of ops; supports() answers per op and dtype. Keep kw_op_names in kw_backend.c in step
 * (a _Static_assert checks the count). */
enum kw_op {
    KW_OP_GET_ROWS = 0, /* embedding lookup */
    KW_OP_MATMUL,       /* y = x W^T (+ b) */
    KW_OP_RMS_NORM,     /* row RMSNorm (also per-head q/k norm) */
    KW_OP_ROPE,         /* rotary embedding, "half" layout */
    KW_OP_ATTENTION,    /* causal GQA attention over a KV cache */
    KW_OP_KV_STORE,     /* write (T, H, D) rows into a (H, cap, D) cache */
    KW_OP_KV_LOAD,      /* read cache rows back as (T, H, D) */
    KW_OP_GLU,          /* act(gate) * up */
    KW_OP_UNARY,        /* elementwise activation */
    KW_OP_ADD,          /* elementwise add */
    KW_OP_SCALE,        /* elementwise multiply by a scalar */
    KW_OP_SOFTMAX,      /* row softmax */
    KW_OP_ARGMAX,       /* row argmax, lowest index wins ties */
    KW_OP_COPY,         /* copy with dtype conversion (round to nearest even) */
    /* base + (g * w[t, h]) * x[t, h, :]: the C2C fuser's per-head combine */
    KW_OP_HEAD_SCALE_ADD,
    KW_OP_COUNT
};

const char *kw_op_name(enum kw_op op);

/* How a tensor's elements are laid out in memory. */
enum kw_layout {
    KW_LAYOUT_ROWS = 0, /* dense row-major (every tensor unless stated) */
    /* A matmul weight (N, K) packed by kw_tensor_pack_weight for the CPU kernels: panels of KW_PANEL_ROWS rows, each
     * panel k-major (element (n, k) at ((n / 64) * K + k) * 64 + n % 64, rows past N zero). Usable only as the weight
     * of kw_op_matmul and the table of kw_op_get_rows; views, uploads and downloads refuse it. */
    KW_LAYOUT_PANELS = 1,
    /* Matmul weights kept quantized (kw_tensor_pack_quantized), "quantized panels": each weight is rebuilt in registers
     * as value(n, k) = fl(fl(scale * code) + offset) in f32 without fusing (fl(scale * code) for the layouts without
     * offsets), where code is a small integer and scale, offset are f32 numbers shared by a group of consecutive k of
     * one row. This is exactly how ggml (and model/kw_dequant.c) computes a dequantized Q4_0 ... Q6_K value, so a
     * matmul on the quantized panels gives the same bits as one on the dequantized f32 weight (and reads 0.75 to 1.25
     * bytes per weight instead of 4). The five layouts differ in the code width, the group and the offset:
     *   QPANELS_S4:     4-bit codes in -8..7,    scale per 32 k          (ggml Q4_0)
     *   QPANELS_U4:     4-bit codes in 0..15,    scale and offset per 32 (Q4_1, Q4_K)
     *   QPANELS_S8:     8-bit codes in -128..127, scale per 32           (Q8_0, Q5_0)
     *   QPANELS_S8_OFS: 8-bit codes,             scale and offset per 32 (Q5_1, Q5_K)
     *   QPANELS_S8_G16: 8-bit codes,             scale per 16            (Q6_K)
     * Storage on the CPU backend (K a multiple of the group; dtype KW_DTYPE_F32, the type of the values; ndim 2):
     * panels of 64 rows as in KW_LAYOUT_PANELS; a panel is K / group groups one after the other, and a group is 64 f32
     * scales (one per row), then 64 f32 offsets (layouts with offsets), then its codes k-major: per k, 64 bytes (8-bit:
     * byte r is row r) or 32 bytes (4-bit: 8 bytes per strip of 16 rows, byte j of strip s holding row 16s + j in its
     * low nibble and row 16s + 8 + j in its high nibble, as the nibble minus 8 for S4). Rows past N are zero. So a GEMV
     * streams each panel once, sequentially. Usable only as the weight of kw_op_matmul and the table of kw_op_get_rows,
     * like PANELS. The CUDA backend stores the same layouts its own way, in the same number of bytes (row-major codes,
     * then the scales, then the offsets: kernels/cuda/kw_cuda.cuh, kw_cuda_qweight). */
    KW_LAYOUT_QPANELS_S4 = 2,
    KW_LAYOUT_QPANELS_U4 = 3,
    KW_LAYOUT_QPANELS_S8 = 4,
    KW_LAYOUT_QPANELS_S8_OFS = 5,
    KW_LAYOUT_QPANELS_S8_G16 = 6,
    /* QPANELS_U4_X8: the codes, scales and offsets of QPANELS_U4 (Q4_K, Q4_1), but a different matmul: the activations
     * are quantized to int8 per group of 32 k and every group's code sums are exact integers (kw_cpu_matmul_x8.c
     * states the rule), so a row's result is the same on every ISA and in any batch, yet NOT the bits of the f32
     * weight's matmul: it is within the activation rounding of it (|y - y_f32| <= sum_g d_g / 2 * sum |w| plus the
     * f32 roundings). Storage as QPANELS_U4 but the codes of a group are arranged for 4-byte integer dot products:
     * strip s of 16 rows at byte 256 s, as four 64-byte vectors t = 0..3 whose byte 4 i + b holds row 16 s + i, k =
     * 4 t + b in its low nibble and k = 16 + 4 t + b in its high nibble. The CPU backend only
     * (kw_backend_supports_layout); get_rows on it returns fl(fl(scale * code) + offset) like QPANELS_U4. */
    KW_LAYOUT_QPANELS_U4_X8 = 7,
    /* QPANELS_S8_G16_X8: QPANELS_S8_G16 (Q6_K) with int8 activations the same way: the codes of a group of 16 k as
     * code + 128 in one byte each, strip s at byte 256 s as four 64-byte vectors t, byte 4 i + b = row 16 s + i, k =
     * 4 t + b. CPU only, like U4_X8. */
    KW_LAYOUT_QPANELS_S8_G16_X8 = 8,
    /* The super-block layouts: QPANELS_U4 (Q4_K) and QPANELS_S8_G16 (Q6_K) in fewer bytes, the same weights and the
     * same matmul bits. A group's scale and offset are not stored as f32 but as small integers s, o (int8) with one
     * f32 d and m per super-block of 256 k of a row: scale = fl(d * s), offset = fl(m * o) (for Q4_K d is the f16 d
     * and m the negated dmin, so both products are exact, as ggml's). The kernel rebuilds them per group and then runs
     * QPANELS_U4 / QPANELS_S8_G16 unchanged. Storage: panels of 64 rows, a panel K / 256 super-blocks one after the
     * other, a super-block 64 f32 d (one per row), 64 f32 m (U4_SB only), then per group j of the super-block 64 bytes
     * of s (byte r: row r), then (U4_SB) per group 64 bytes of o, then the super-block's groups' codes as the plain
     * layout stores them (4-bit: 32 bytes per k; 8-bit: 64). Q4_K reads 0.59 bytes per weight instead of 0.75, Q6_K
     * 1.08 instead of 1.25. K a multiple of 256; the CPU backend only (kw_backend_supports_layout). */
    KW_LAYOUT_QPANELS_U4_SB = 9,
    KW_LAYOUT_QPANELS_S8_G16_SB = 10,
    /* QPANELS_S6_G16_SB: QPANELS_S8_G16_SB (Q6_K) with the codes (-32..31) in 6 bits, 48 bytes per k instead of 64: per
     * k, the 64 rows' codes as one little-endian bit string, row r in bits 6r..6r+5 (two's complement), so a strip of
     * 16 rows is 12 contiguous bytes and 8 rows are 6 bytes (what one AVX-512 VBMI byte permute and one multishift
     * unpack). The rest (d, s, group order) as S8_G16_SB; 0.828 bytes per weight instead of 1.078. CPU only. */
    KW_LAYOUT_QPANELS_S6_G16_SB = 11,
    /* PANELS_BF16_PAIRS: a bf16 matmul weight (kw_tensor_pack_weight_bf16_pairs) run with bf16 activations, the way
     * llama.cpp runs BF16 weights with AVX-512 BF16 (vdpbf16ps): x rounded to bf16, products of k pairs summed in f32
     * (kernels/cpu/kw_cpu_matmul_bf16.c states the rule). The same bits on every ISA and batch, but NOT those of the
     * exact path: within the activation rounding of it. Storage: panels of 64 rows, a panel K2 / 2 pair rows (K2 = K
     * rounded up to even) of 64 x 2 bf16: element (n, k) at ((n / 64) * K2 + (k & ~1)) * 64 + (n % 64) * 2 + (k & 1),
     * the padding k and rows past N zero, every weight stored as given (matmul reads a denormal as the zero of its
     * sign, as the instruction does). dtype KW_DTYPE_BF16. The CPU backend only (kw_backend_supports_layout); get_rows
     * on it returns the weights' exact values (so a tied embedding table serves get_rows and lm_head in it). */
    KW_LAYOUT_PANELS_BF16_PAIRS = 12,
    /* The int8-activation layouts in super-blocks: QPANELS_U4_X8 (Q4_K) and QPANELS_S8_G16_X8 (Q6_K) with their
     * scales and offsets kept as QPANELS_U4_SB / S8_G16_SB keep them (int8 s, o per group, f32 d, m per 256 k of a row;
     * scale = fl(d * s), offset = fl(m * o), rebuilt in the kernel) and each group's codes arranged as the X8 layout
     * arranges them. The matmul is the X8 layouts' (the same rule and the same bits as U4_X8 / S8_G16_X8 on the same
     * rows: kw_ref_quant_matmul_x8 is the oracle of all five, S6_G16_SB_X8 below included), in 0.59 bytes per weight
     * instead of 0.75 (U4) and 1.08 instead of 1.25 (S8_G16). Storage: a panel K / 256 super-blocks, a super-block the
     * head of U4_SB / S8_G16_SB (64 f32 d, 64 f32 m (U4 only), per group 64 bytes of s, (U4) per group 64 bytes of o),
     * then its groups' 1024-byte X8 code blocks in order. K a multiple of 256; the CPU backend only
     * (kw_backend_supports_layout). */
    KW_LAYOUT_QPANELS_U4_SB_X8 = 13,
    KW_LAYOUT_QPANELS_S8_G16_SB_X8 = 14,
    /* QPANELS_S6_G16_SB_X8: QPANELS_S8_G16_SB_X8 (Q6_K) with the codes (-32..31) as code + 32 in 6 bits, 768 bytes per
     * group instead of 1024: strip s of 16 rows at byte 192 s, as two 64-byte nibble vectors t = 0, 1 (byte 4 i + b:
     * row 16 s + i, k = 4 t + b in the low nibble, k = 8 + 4 t + b in the high one) and one 64-byte vector of the top
     * two bits (byte 4 i + b, bits 2 t .. 2 t + 1: k = 4 t + b, t = 0..3). The same matmul and bits as S8_G16_X8;
     * 0.828 bytes per weight. CPU only. */
    KW_LAYOUT_QPANELS_S6_G16_SB_X8 = 15,
    /* QPANELS_S8_X8: QPANELS_S8 (Q8_0, Q5_0: 8-bit codes, one scale per 32 k, no offset) with int8 activations, the
     * way llama.cpp runs Q8_0 (the X8 matmul and bits: one weight group per activation group, kw_ref_quant_matmul_x8
     * the oracle), and the scales kept as the f16 they are in the file: a group is 64 f16 scales (one per row; the
     * packer refuses a scale that is not an f16 value; the kernels widen them exactly, F16C or kw_f16_to_f32), then
     * its 2048 code bytes as code + 128, strip s of 16 rows at byte 512 s as eight 64-byte vectors t = 0..7 whose byte
     * 4 i + b holds row 16 s + i, k = 4 t + b. 1.0625 bytes per weight (llama.cpp's Q8_0: 34 bytes per 32) instead of
     * QPANELS_S8's 1.125. K a multiple of 32; CPU only; get_rows returns fl(scale * code) like QPANELS_S8. */
    KW_LAYOUT_QPANELS_S8_X8 = 16,
    KW_LAYOUT_COUNT = 17,
};

#define KW_PANEL_ROWS 64

/* What a quantized layout holds (all zero for KW_LAYOUT_ROWS and KW_LAYOUT_PANELS). */
typedef struct kw_quant_layout {
    int32_t code_bits;          /* 4, 6 or 8 */
    int32_t group;              /* consecutive k sharing a scale (and offset): 16 or 32 */
    int32_t has_offset;         /* 1: value = fl(fl(scale * code) + offset); 0: value = fl(scale * code) */
    int32_t code_min, code_max; /* the codes' range */
    int32_t superblock;         /* 0, or 256: the super-block layouts (k sharing one f32 d and m; s, o in int8) */
    int32_t f16_scales;         /* 1: the scales stored as f16 (QPANELS_S8_X8), else f32 */
} kw_quant_layout;

#define KW_QUANT_SUPERBLOCK 256

/* Fills *out for layout and returns 1 if it is a quantized layout (KW_LAYOUT_QPANELS_*), else zeroes *out and
 * returns 0. */
int kw_layout_quant(enum kw_layout layout, kw_quant_layout *out);

/* A tensor. The struct is a plain value; the memory behind data belongs to whoever allocated it
 * (kw_tensor_alloc: the tensor, to be released with kw_tensor_free; views and wrapped host memory: someone else). */
typedef struct kw_tensor {
    struct kw_backend *backend; /* the backend whose memory holds data */
    void *data;                 /* device (or, on CPU, host) address; never dereferenced by host code */
    enum kw_dtype dtype;
    int32_t ndim;          /* 1..4 */
    int64_t ne[4];         /* logical shape, outermost first; unused trailing entries are 1 */
    int32_t owns_data;     /* 1 if kw_tensor_free must release data */
    enum kw_layout layout; /* KW_LAYOUT_ROWS (0) unless made by kw_tensor_pack_weight */
} kw_tensor;

/* Number of elements (product of ne[0..ndim-1]). */
int64_t kw_tensor_nelem(const kw_tensor *t);
/* Number of bytes of data (for KW_LAYOUT_PANELS and the quantized panels: including the zero rows that pad N to whole
 * panels; for the quantized panels, codes, scales and offsets). */
size_t kw_tensor_nbytes(const kw_tensor *t);
/* Number of rows when viewed as 2-D: product of all but the last dimension. */
int64_t kw_tensor_nrows(const kw_tensor *t);

typedef struct kw_backend kw_backend; /* opaque */

enum kw_backend_kind { KW_BACKEND_CPU = 0, KW_BACKEND_CUDA = 1 };

/* The kinds' names, indexed by enum kw_backend_kind, NULL-terminated ("cpu", "cuda"): config choices. */
extern const char *const kw_backend_kind_names[3];

/* Creates the CPU backend with n_threads workers (0: one per online core). *out is owned by the caller. The SIMD
 * level (AVX-512, AVX2+FMA+F16C or scalar) is detected at run time; KW_CPU_ISA=scalar|avx2|avx512 in the environment
 * caps it (never raises it). */
int kw_backend_create_cpu(int n_threads, kw_backend **out);

/* The threads each of n_workers CPU backends (a daemon's compute.workers, sharing the machine) should run: n_threads
 * when it is above 0, else the online cores divided among the workers, at least 1 each (n_workers below 1 counts as
 * 1). */
int kw_backend_threads_per_worker(int n_threads, int n_workers);

/* The threads a CPU backend computes on, the caller's included (a stream context has its parent's); 0 for a backend
 * of another kind. */
int kw_backend_cpu_threads(const kw_backend *backend);

/* How the threads of a CPU backend created now wait between ops: "KW_CPU_SPIN_US=50" when the environment sets the
 * spin (microseconds of spinning before a worker sleeps; 0: sleep at once), else "auto spin 5..100 us by contention"
 * (the pool's automatic spin, kernels/cpu/kw_cpu_pool.h; with a note when KW_CPU_SPIN_US is set but not a number in
 * 0..1000000). The daemons log it and receiverd's /health has it. A
 * string valid until the calling thread's next call (borrowed). */
const char *kw_backend_cpu_wait(void);

/* The SIMD flavour a CPU backend runs: "scalar", "avx2" or "avx512" (results are the same bits on each; only the
 * speed differs). NULL for a backend of another kind. */
const char *kw_backend_cpu_isa(const kw_backend *backend);

/* 1 if a CPU backend has layout and its decode on it is not slower than on the layout it compresses (a choice of
 * speed only: the bits are the same). 0 for KW_LAYOUT_QPANELS_S6_G16_SB unless the backend runs AVX-512 on a CPU with
 * VBMI (without it the 6-bit unpack made decode 0.59x S8_G16_SB: docs/BENCHMARKS.md); 0 for another backend kind. */
int kw_backend_cpu_layout_fast(const kw_backend *backend, enum kw_layout layout);

/* The SIMD flavours the CPU backend can run on this machine, slowest first ("scalar", then "avx2", "avx512" as the
 * CPU allows), in names; returns how many (1..3). KW_CPU_ISA=<name> selects one of them for new backends. */
int kw_backend_cpu_isas(const char *names[3]);

/* Creates the CUDA backend on a device. Returns KW_E_UNSUPPORTED when built without CUDA and KW_E_NO_DEVICE when
 * no such device exists. */
int kw_backend_create_cuda(int device, kw_backend **out);

/* What a daemon's config chooses (compute.backend, compute.threads, compute.device, compute.memory_limit_mb). */
typedef struct kw_backend_options {
    enum kw_backend_kind kind;
    int n_threads;         /* CPU: threads (0: the online cores, divided among n_workers) */
    int n_workers;         /* compute threads that each drive this backend or a stream context of it (0 counts as 1) */
    int device;            /* CUDA: the device index */
    uint64_t memory_limit; /* bytes the backend may allocate; 0: no limit (kw_backend_set_memory_limit) */
} kw_backend_options;

/* Creates the backend o describes (kw_backend_create_cpu or kw_backend_create_cuda, then the memory limit). *out is
 * owned by the caller. Errors: those of the two, e.g. KW_E_UNSUPPORTED (CUDA asked of a build without it),
 * KW_E_NO_DEVICE. */
int kw_backend_create_with(const kw_backend_options *o, kw_backend **out);

/* For test programs that link the CUDA emulator (kernels/cuda/emu/kw_cuda_emu_api.h): kw_backend_create_with makes
 * its CUDA backends with create (kw_backend_create_cuda_emu) instead of kw_backend_create_cuda; NULL restores that.
 * Process-wide: set it before the first backend is created. The product never sets it. */
void kw_backend_set_cuda_create(int (*create)(int device, kw_backend **out));

/* Waits for queued work, releases the backend. NULL is a no-op. All tensors allocated from it must be freed first. */
void kw_backend_destroy(kw_backend *backend);

enum kw_backend_kind kw_backend_kind(const kw_backend *backend);
const char *kw_backend_name(const kw_backend *backend);

/* 1 if the backend can run op with the given dtype for its weight/cache operand (the dtype that varies per op:
 * matmul W, get_rows table, rms_norm weight, attention/kv cache, copy destination), else 0. A whitelist: anything
 * not listed is unsupported. */
int kw_backend_supports(const kw_backend *backend, enum kw_op op, enum kw_dtype dtype);

/* Blocks until every queued op and transfer has finished. Returns the first asynchronous error, if any. */
int kw_backend_synchronize(kw_backend *backend);

/* Backend memory accounting. live: bytes held now (tensors from kw_tensor_alloc, kw_tensor_pack_weight and, on a
 * device backend, kw_tensor_from_host; plus a backend's own scratch, e.g. the CUDA backend's matmul and attention
 * workspace); peak: the most held since creation; limit: the cap, 0 for none. */
typedef struct kw_backend_memory {
    uint64_t live, peak, limit;
} kw_backend_memory;

void kw_backend_get_memory(const kw_backend *backend, kw_backend_memory *out);

/* Caps the backend memory: an allocation that would take live past limit fails with KW_E_NOMEM before anything is
 * allocated, its reason naming the request and the budget (so a request whose KV cache does not fit is refused
 * cleanly). 0 removes the cap. KW_E_INVALID_ARG if limit is below what is live now. */
int kw_backend_set_memory_limit(kw_backend *backend, uint64_t limit);

/* ------------------------------------------------------------------------------------------------------------
 * Stream contexts: several requests on one backend at once, one host thread each.
 *
 * kw_backend_create_stream makes a backend that shares parent's device, its tensors (every tensor allocated on the
 * parent, e.g. a model's weights, is usable by ops of the context, and the parent may use the context's), its memory
 * accounting and limit (kw_backend_get_memory and kw_backend_set_memory_limit of any of them act on the one shared
 * record: a context can never take the total past the limit, and an allocation that does not fit fails with
 * KW_E_NOMEM as on the parent) and its kw_backend_host_bytes count. A context has its own queue and its own scratch:
 * on the CUDA backend its own stream, cuBLAS handle, workspace, bad-id record, step position and graph recording; on
 * the CPU backend its own scratch and its own thread pool (the calling thread and workers, the parent's thread count),
 * so two contexts driven by two threads compute at once. Ops, transfers and synchronize of a context order
 * only against that context: kw_backend_synchronize(context) waits for the context's work, not the parent's.
 *
 * Rules:
 *  - Each backend (parent or context) is driven by one thread at a time; different ones may run concurrently.
 *  - Tensors the parent uploaded must be complete (kw_backend_synchronize(parent)) before a context reads them, and
 *    a context must not write a tensor another backend reads concurrently (weights are read-only).
 *  - A tensor is freed on the backend that allocated it (kw_tensor_free does this), which must still exist; memory
 *    freed by a context becomes reusable by others (CUDA: the shared stream-ordered pool hands a block freed on one
 *    stream to another stream only once the free has completed or behind an event the driver inserts, the pool's own
 *    cross-stream rule; nothing here allocates from the pool on one stream and frees on another).
 *  - The parent must outlive its contexts: destroy every context first (kw_backend_destroy of a parent with live
 *    contexts logs an error). A context of a context is a context of the first parent.
 * *out is owned by the caller (kw_backend_destroy). Errors: KW_E_UNSUPPORTED (a backend without contexts),
 * KW_E_NOMEM, KW_E_CUDA. */
int kw_backend_create_stream(kw_backend *parent, kw_backend **out);

/* The backend whose tensors and accounting backend shares: backend itself, or a stream context's parent. */
kw_backend *kw_backend_root(const kw_backend *backend);

/* ------------------------------------------------------------------------------------------------------------
 * Step graphs (optional: the CUDA backend has them; the CPU backend answers KW_E_UNSUPPORTED). A decode step
 * enqueues the same ops every token; a device backend can record them once and replay them with one launch. What
 * changes from step to step is the step's position: while recording, the position arguments of kv_store, kv_load and
 * attention (pos0, q_pos0, n_kv) are taken relative to the base given to kw_backend_graph_begin, and a replay at
 * another base moves them all. Everything else (tensors, shapes, scalars) is fixed at recording.
 */

typedef struct kw_backend_graph kw_backend_graph; /* opaque: a recorded step */

/* Starts recording the ops enqueued next instead of running them, with base as the step's position. No transfer,
 * allocation, free or synchronize may happen until kw_backend_graph_end. KW_E_UNSUPPORTED: the backend has no graphs
 * or they are turned off (KW_CUDA_GRAPHS=0). */
int kw_backend_graph_begin(kw_backend *backend, int64_t base);

/* Ends recording. On success *out is a new graph owned by the caller (kw_backend_graph_free), not yet run; on failure
 * (an op could not be recorded) *out is NULL and nothing was run: enqueue the ops again without a graph. Always ends
 * the recording. */
int kw_backend_graph_end(kw_backend *backend, kw_backend_graph **out);

/* Enqueues graph with the step's position base. Returns 1 if launched, 0 if the graph does not fit this base (a
 * launch configuration chosen at recording, e.g. attention's split count, would differ now, or backend scratch it
 * uses has moved): nothing was enqueued, record again. Negative: an error. */
int kw_backend_graph_launch(kw_backend *backend, kw_backend_graph *graph, int64_t base);

/* Releases a graph. NULL is a no-op. */
void kw_backend_graph_free(kw_backend_graph *graph);

/* ------------------------------------------------------------------------------------------------------------
 * Memory
 */

/* Allocates a tensor of the given dtype and shape in backend memory (contents undefined). Release with
 * kw_tensor_free. */
int kw_tensor_alloc(kw_backend *backend, kw_tensor *t, enum kw_dtype dtype, int32_t ndim, const int64_t *ne);

/* Frees memory owned by t (owns_data) and zeroes t. A zeroed tensor or NULL is a no-op. */
void kw_tensor_free(kw_tensor *t);

/* Makes t describe memory that must outlive it, with no ownership: on the CPU backend it aliases host_data
 * (zero-copy, e.g. an mmapped safetensors file); on a device backend it allocates and uploads a copy (owns_data=1)
 * and the host memory may be released after the next synchronize. */
int kw_tensor_from_host(kw_backend *backend, kw_tensor *t, enum kw_dtype dtype, int32_t ndim, const int64_t *ne,
                        const void *host_data);

/* Prepares w (N, K) f32/bf16/f16 (row-major) as a matmul weight for repeated use. On the CPU backend *packed is a
 * new tensor in KW_LAYOUT_PANELS, owned by the caller (kw_tensor_free), and w may be released afterwards; the packed
 * weight gives bit-identical matmul results to w itself, read as one sequential stream. A backend without a layout of
 * its own returns a view of w in *packed (owns_data = 0: w must outlive it). Errors: KW_E_SHAPE (not a 2-D float
 * tensor), KW_E_NOMEM. */
int kw_tensor_pack_weight(kw_backend *backend, const kw_tensor *w, kw_tensor *packed);

/* Packs w (N, K) bf16 (row-major) into *packed, a new tensor in KW_LAYOUT_PANELS_BF16_PAIRS owned by the caller
 * (kw_tensor_free); w may be released afterwards. Errors: KW_E_OP_UNSUPPORTED (the backend has no such layout),
 * KW_E_SHAPE (not a 2-D row-major bf16 tensor), KW_E_NOMEM. */
int kw_tensor_pack_weight_bf16_pairs(kw_backend *backend, const kw_tensor *w, kw_tensor *packed);

/* A matmul weight (N, K) in quantized form, row-major host memory, as the model hands it to kw_tensor_pack_quantized:
 * value (n, k) = fl(fl(scales[n * (K / G) + k / G] * codes[n * K + k]) + offsets[same]) in f32, G the layout's group
 * (the offset term only for layouts with offsets). All three arrays belong to the caller and are only read during the
 * call. A NaN or infinite scale or offset is packed as it is (the f32 weight would hold the same values). */
typedef struct kw_quant_rows {
    enum kw_layout layout; /* a KW_LAYOUT_QPANELS_* layout: code width, group, offsets */
    int64_t n, k;          /* rows and columns; k a multiple of the group */
    const int8_t *codes;   /* n * k codes, each in the layout's range */
    const float *scales;   /* n * (k / group) */
    const float *offsets;  /* n * (k / group), or NULL for a layout without offsets */
    /* The super-block layouts only (ignored by the others): n * (k / 256) f32 d, and m (for a layout with offsets),
     * such that every scale of the super-block is fl(d * s) and every offset fl(m * o) for integers s, o in -128..127;
     * the packer finds s and o and refuses (KW_E_INVALID_ARG) a group where no integer gives the same bits. */
    const float *sb_scales, *sb_offsets;
} kw_quant_rows;

/* The index (n * (K / G) + k / G) of the first scale of q that is not an f16 value, or -1 if every one is (a NaN
 * counts as one: it stays a NaN in f16); G is the group of q->layout. The layouts with f16 scales
 * (kw_quant_layout.f16_scales) need -1 (kw_tensor_pack_quantized refuses anything else); a model asks it to choose
 * such a layout. */
int64_t kw_quant_rows_first_non_f16_scale(const kw_quant_rows *q);

/* 1 if the backend keeps matmul weights in the quantized layout (kw_tensor_pack_quantized works), else 0 (a model then
 * dequantizes at load): the CPU and the CUDA backend have them all but the X8 and SB layouts, which only the CPU has.
 */
int kw_backend_supports_layout(const kw_backend *backend, enum kw_layout layout);

/* Packs q into *packed, a new tensor (N, K) f32 in layout q->layout owned by the caller (kw_tensor_free). matmul with
 * it gives the same bits as with the f32 weight the formula above describes, on the same backend. Errors:
 * KW_E_OP_UNSUPPORTED (the backend has no such layout: kw_backend_supports_layout), KW_E_SHAPE (K not a multiple of the
 * group, a non-positive size), KW_E_INVALID_ARG (a NULL array, offsets missing or given where the layout has none, a
 * code out of range, super-block values missing or that do not give the scales' and offsets' bits), KW_E_OVERFLOW (a
 * size too large), KW_E_NOMEM. */
int kw_tensor_pack_quantized(kw_backend *backend, const kw_quant_rows *q, kw_tensor *packed);

/* A view of rows [row0, row0+nrows) of the outermost dimension of src: same memory, no ownership. */
int kw_tensor_view_rows(const kw_tensor *src, int64_t row0, int64_t nrows, kw_tensor *view);

/* A view with another shape of the same number of elements: same memory, no ownership. */
int kw_tensor_view_reshape(const kw_tensor *src, int32_t ndim, const int64_t *ne, kw_tensor *view);

/* Copies bytes [offset, offset+size) of dst from host memory (asynchronous, see the header comment). */
int kw_backend_upload(kw_backend *backend, kw_tensor *dst, size_t offset, const void *src, size_t size);

/* Copies bytes [offset, offset+size) of src to host memory (asynchronous, see the header comment). */
int kw_backend_download(kw_backend *backend, void *dst, const kw_tensor *src, size_t offset, size_t size);

/* Host memory for transfers, e.g. the wire path's row buffers (the sharer downloads KV rows into them, the receiver
 * decodes KVWire into them and uploads): page-locked on the CUDA backend (cudaMallocHost), so a transfer from or into
 * it is one direct DMA and really asynchronous (pageable memory is staged by the driver, and a download into it waits
 * for the stream); ordinary memory on the CPU backend. The header comment's rule applies as for any host memory (do
 * not touch it until kw_backend_synchronize returns), and on a device a pinned transfer does run late. *out (size > 0
 * bytes, 64-byte aligned) is owned by the caller: kw_backend_host_free (NULL is a no-op). Errors: KW_E_NOMEM,
 * KW_E_CUDA. */
int kw_backend_host_alloc(kw_backend *backend, size_t size, void **out);
void kw_backend_host_free(kw_backend *backend, void *p);

/* Bytes of kw_backend_host_alloc memory held now (not part of kw_backend_get_memory, which counts backend memory). */
uint64_t kw_backend_host_bytes(const kw_backend *backend);

/* Sets every byte of t to zero. */
int kw_backend_memset_zero(kw_backend *backend, kw_tensor *t);

/* ------------------------------------------------------------------------------------------------------------
 * Ops. All outputs are distinct from inputs unless "in place" is stated. Activations are f32 unless stated.
 */

/* out (T, D) f32 = table[ids[t], :]; table (V, D) f32/bf16/f16 (row-major, or packed by kw_tensor_pack_weight or
 * kw_tensor_pack_quantized on the backend that packed it: a quantized row is rebuilt value by value), ids (T) i32. Ids
 * outside [0, V) are an error reported at synchronize (KW_E_TOKEN_ID) and leave the row zeroed. */
int kw_op_get_rows(kw_backend *backend, kw_tensor *out, const kw_tensor *table, const kw_tensor *ids);

/* out (M, N) f32 = x (M, K) f32 times w (N, K)^T, plus bias (N) if not NULL; w f32/bf16/f16 (row-major or packed by
 * kw_tensor_pack_weight) or kept quantized (kw_tensor_pack_quantized: the bits of the f32 weight it stands for),
 * bias f32/bf16/f16. Accumulates in f32. On the CPU backend every element is one fused
 * multiply-add chain in ascending k starting from +0, then + bias: the result of a row never depends on M, on the
 * other rows, on the thread count or on the ISA (docs/ARCHITECTURE.md, "Same bits however it runs"). */
int kw_op_matmul(kw_backend *backend, kw_tensor *out, const kw_tensor *x, const kw_tensor *w, const kw_tensor *bias);

/* The most weights one kw_op_matmul_shared takes. */
#define KW_MATMUL_SHARED_MAX 4

/* kw_op_matmul of n (1..KW_MATMUL_SHARED_MAX) weights w[i] over the same x: out[i] = x w[i]^T (+ bias[i]; bias may be
 * NULL for none, or hold NULLs), each out[i] the bits kw_op_matmul(out[i], x, w[i], bias[i]) gives; the outputs may
 * not overlap. A backend may run them as one job: the CPU backend hands out the panels of all n weights in one pool
 * run, and quantizes x once for the int8-activation layouts (a decode step's q, k, v and gate, up). */
int kw_op_matmul_shared(kw_backend *backend, int n, kw_tensor *const *out, const kw_tensor *x,
                        const kw_tensor *const *w, const kw_tensor *const *bias);

enum kw_rms_norm_flags {
    KW_RMS_NORM_PLAIN = 0,
    KW_RMS_NORM_UNIT_OFFSET = 1, /* multiply by (1 + w) as Gemma does, instead of w */
};

/* out (R, D) = x / sqrt(mean(x^2) + eps) * w, per row; w (D) f32/bf16/f16. x is viewed as rows of D = the last
 * dimension, so per-head q/k norm is x (T, H, D) with w (D). out may equal x (in place). */
int kw_op_rms_norm(kw_backend *backend, kw_tensor *out, const kw_tensor *x, const kw_tensor *w, float eps, int flags);

enum kw_rope_scaling { KW_ROPE_SCALING_NONE = 0, KW_ROPE_SCALING_LLAMA3 = 1, KW_ROPE_SCALING_LINEAR = 2 };

typedef struct kw_rope_params {
    double theta;                 /* rope_theta */
    int32_t rotary_dim;           /* dims rotated (== head_dim for all supported models) */
    enum kw_rope_scaling scaling; /* how inv_freq is rescaled */
    double factor;                /* llama3 / linear factor */
    double low_freq_factor;       /* llama3 */
    double high_freq_factor;      /* llama3 */
    double original_max_position; /* llama3 original_max_position_embeddings */
} kw_rope_params;

/* In place on x (T, H, D) f32: rotate each head of token t by position pos[t] (pos (T) i32), non-interleaved
 * "half" layout: x' = x*cos + rotate_half(x)*sin with rotate_half(x) = cat(-x[D/2:], x[:D/2]). */
int kw_op_rope(kw_backend *backend, kw_tensor *x, const kw_tensor *pos, const kw_rope_params *params);

/* In place on x (T, H, D) f32: kw_op_rope's rotation with the angles' cos and sin given, table (T, half, 2) f32 =
 * {cos, sin} per token and frequency (kernels/ref's kw_ref_rope_table, model/'s kw_config_rope_table), 2 * half <= D:
 * x'[i] = x[i] c - x[i + half] s, x'[i + half] = x[i + half] c + x[i] s, each product and sum rounded to f32 (no
 * FMA). Every backend gives kw_ref_rope_apply's bits, so a table computed on the host makes device rows equal to the
 * host's kw_config_rope_rows bit for bit (the receiver's pre-RoPE keys; the inverse table takes keys back). */
int kw_op_rope_table(kw_backend *backend, kw_tensor *x, const kw_tensor *table);

typedef struct kw_attention_params {
    int64_t q_pos0;           /* cache position of the first query row; query t sits at q_pos0 + t */
    int64_t n_kv;             /* number of valid cache rows (>= q_pos0 + T) */
    float scale;              /* score scale, usually 1/sqrt(D) */
    int64_t sliding_window;   /* 0: none; else query at p attends to positions > p - window */
    const kw_tensor *kv_mask; /* optional (cap) u8 in backend memory: 0 = masked (padding), 1 = attend; NULL = all */
} kw_attention_params;

/* Largest head dimension kw_op_attention accepts (backends keep a row of D accumulators on chip). */
#define KW_ATTENTION_MAX_HEAD_DIM 512

/* Causal GQA attention: out (T, Hq, D) f32; q (T, Hq, D) f32; k_cache, v_cache (Hkv, cap, D) f32/bf16. Query head h
 * uses kv head h / (Hq / Hkv). Query t attends to cache rows [0, q_pos0 + t] (minus masked or out-of-window rows),
 * softmax in f32. A query with no visible row, or whose visible rows all score -Inf, produces zeros (torch's softmax
 * would give NaN there); a visible score of +Inf or NaN makes the query's output NaN. */
int kw_op_attention(kw_backend *backend, kw_tensor *out, const kw_tensor *q, const kw_tensor *k_cache,
                    const kw_tensor *v_cache, const kw_attention_params *params);

/* cache (H, cap, D) f32/bf16 rows [pos0, pos0+T) = src (T, H, D) f32, converted with round-to-nearest-even. */
int kw_op_kv_store(kw_backend *backend, kw_tensor *cache, const kw_tensor *src, int64_t pos0);

/* out (T, H, D) f32 = cache (H, cap, D) f32/bf16 rows [pos0, pos0+T). */
int kw_op_kv_load(kw_backend *backend, kw_tensor *out, const kw_tensor *cache, int64_t pos0);

/* ------------------------------------------------------------------------------------------------------------
 * The paged quantized KV cache (model/kw_kvcache.c's int8 and int4 caches). One storage tensor (u8, 1-D,
 * kw_kvq_bytes long) holds one layer's K or V of one sequence; kernels/kw_kvq_format.h defines its bytes. Keys are
 * quantized per channel over a page of page_tokens rows (the scales are fixed when the page fills; the rows of the
 * page not yet full wait in a bf16 tail, and stored keys are rounded to bf16 first, so a page's codes depend on its
 * rows' bf16 values only, not on how the rows arrived); values are quantized per row, one scale per group of 32
 * channels. A stored value dequantizes to fl(code * scale) in f32, and attention on the storage gives the same bits as
 * kw_op_attention on an f32 cache holding those values (kw_op_kvq_load reads them), on every ISA. The ops take the
 * number of rows stored so far (n_rows): the caller (kw_kvcache) keeps it. Backends without these ops:
 * kw_backend_supports_kvq answers 0. */
enum kw_kvq_codec { KW_KVQ_INT8 = 1, KW_KVQ_INT4 = 2, KW_KVQ_INT6 = 3 };

typedef struct kw_kvq_geom {
    enum kw_kvq_codec codec;
    int32_t keys;        /* 1: keys (per-channel page scales and a bf16 tail), 0: values (per-row group scales) */
    int64_t H, cap, D;   /* kv heads, capacity in rows, head dim (a multiple of 16) */
    int32_t page_tokens; /* rows per page: 16..4096, a multiple of 16 */
} kw_kvq_geom;

/* Bytes of the storage tensor of g in *out. KW_E_INVALID_ARG for a bad geometry, KW_E_OVERFLOW. */
int kw_kvq_bytes(const kw_kvq_geom *g, size_t *out);

/* 1 if the backend has the kvq ops below (the CPU and the CUDA backend), else 0. */
int kw_backend_supports_kvq(const kw_backend *backend);

/* Stores src (T, H, D) f32 into rows [pos0, pos0 + T) of the storage, which holds n_rows rows (pos0 <= n_rows,
 * pos0 + T <= cap); afterwards it holds max(n_rows, pos0 + T). Appending quantizes only the new rows (values) or the
 * pages they fill (keys); overwriting rows of a full key page requantizes that page. */
int kw_op_kvq_store(kw_backend *backend, kw_tensor *store, const kw_kvq_geom *g, const kw_tensor *src, int64_t pos0,
                    int64_t n_rows);

/* out (T, H, D) f32 = the values of rows [pos0, pos0 + T) (pos0 + T <= n_rows) of a storage holding n_rows rows. */
int kw_op_kvq_load(kw_backend *backend, kw_tensor *out, const kw_tensor *store, const kw_kvq_geom *g, int64_t pos0,
                   int64_t n_rows);

/* Shrinks a storage of n_rows rows to new_rows (<= n_rows): a key page that is no longer full goes back to the tail
 * (its values rounded to bf16). */
int kw_op_kvq_truncate(kw_backend *backend, kw_tensor *store, const kw_kvq_geom *g, int64_t n_rows, int64_t new_rows);

/* kw_op_attention over quantized storages: k_store (geometry kg, keys) and v_store (vg, values) hold n_rows rows each
 * (params->n_kv <= n_rows); same heads, capacity and D in both. */
int kw_op_attention_kvq(kw_backend *backend, kw_tensor *out, const kw_tensor *q, const kw_tensor *k_store,
                        const kw_kvq_geom *kg, const kw_tensor *v_store, const kw_kvq_geom *vg,
                        const kw_attention_params *params, int64_t n_rows);

/* ------------------------------------------------------------------------------------------------------------
 * The sharer's device work (kernels/cuda/kw_cuda_wire.h on the CUDA backend): the norm selection scores and their
 * top-k straight from a dense KV cache tensor, the KVWire encode of one tensor of a section (FORMAT.md §5.3: its
 * scales then its codes) from the cache rows into device bytes, and a section's outlier choice (§5.10), so only the
 * encoded bytes (and the outliers' numbers and values) are downloaded.
 * Results are bit for bit the CPU's (c2c/kw_select.c, wire/); the section framing stays with the CPU encoder
 * (kw_wire_encoder_begin_section / finish_section). The CPU backend has none of it: kw_backend_supports_share
 * answers 0 and the calls KW_E_OP_UNSUPPORTED (the CPU code is the path there). Asynchronous like every op.
 */

/* 1 if the backend has the ops below, else 0. */
int kw_backend_supports_share(const kw_backend *backend);

/* score (T) f32 = the knorm/vnorm score (c2c/kw_select.h kw_select_scores) of rows [pos0, pos0 + T) of cache
 * (H, cap, D) f32/bf16, H <= 256. */
int kw_op_select_scores(kw_backend *backend, kw_tensor *score, const kw_tensor *cache, int64_t pos0);

/* out (T) i32 = the min(k, finite scores) best of score (T) f32 as ascending offsets (c2c/kw_select.c's ranking
 * with skip 0: larger score, ties to the lower offset, non-finite never), their number in count (1) i32. */
int kw_op_select_topk(kw_backend *backend, kw_tensor *out, kw_tensor *count, const kw_tensor *score, int64_t k);

/* The four bytes of a KVWire codec spec (wire/kw_wire.h kw_wire_codec_spec, which kernels/ does not include), and
 * whether the rows kw_op_wire_encode reads are Hadamard-rotated (FORMAT.md §5.12; kw_op_wire_rotate_rows's output):
 * then a scale unit with a value past wire/kw_wire_quant.h's kw_wire_rotated_max is refused (KW_E_WIRE_RANGE), as the
 * CPU encoder refuses it. */
typedef struct kw_wire_op_spec {
    uint8_t codec, granularity, scale_dtype, group_log2;
    uint8_t rotated; /* 1: the rows are rotated */
} kw_wire_op_spec;

/* The bytes of one tensor of H heads, T tokens, head_dim D on the wire and the device scratch kw_op_wire_encode
 * needs for it. KW_E_UNSUPPORTED for a spec the device encoder does not take (none today), KW_E_INVALID_ARG for an
 * invalid one, KW_E_OP_UNSUPPORTED without the ops: the caller encodes that tensor on the CPU. */
int kw_backend_wire_sizes(const kw_backend *backend, const kw_wire_op_spec *spec, uint32_t H, uint32_t T, uint32_t D,
                          uint64_t *tensor_bytes, uint64_t *work_bytes);

/* Encodes T rows of cache (H, cap, D) f32/bf16 into bytes [offset, offset + tensor_bytes) of dst (u8): token t is
 * cache row rows[t0 + t] (rows (n) i32 of cache positions, t0 + T <= n). work (u8): the scratch of
 * kw_backend_wire_sizes; err (u8, 8 * n bytes): error word err_index is overwritten with the encode's outcome, read
 * with kw_backend_wire_status after the work is done. mask (u8, may be NULL): a section's outliers from
 * kw_op_wire_outliers, this tensor's elements from mask_base (0 for K, H * T * D for V; one token group). */
int kw_op_wire_encode(kw_backend *backend, kw_tensor *dst, size_t offset, const kw_wire_op_spec *spec,
                      const kw_tensor *cache, const kw_tensor *rows, uint32_t t0, uint32_t T, kw_tensor *work,
                      kw_tensor *err, int64_t err_index, const kw_tensor *mask, uint64_t mask_base);

/* The same two with clipped scales when clip is non-zero (kw_wire_policy.clip's bit for this tensor, FORMAT.md
 * §5.13; integer codecs, the others ignore it): the per-unit candidate search of the CPU encoder on the device, the
 * bytes the CPU encoder writes with that policy; the work is larger (kw_backend_wire_sizes_clip). */
int kw_backend_wire_sizes_clip(const kw_backend *backend, const kw_wire_op_spec *spec, int clip, uint32_t H, uint32_t T,
                               uint32_t D, uint64_t *tensor_bytes, uint64_t *work_bytes);
int kw_op_wire_encode_clip(kw_backend *backend, kw_tensor *dst, size_t offset, const kw_wire_op_spec *spec, int clip,
                           const kw_tensor *cache, const kw_tensor *rows, uint32_t t0, uint32_t T, kw_tensor *work,
                           kw_tensor *err, int64_t err_index, const kw_tensor *mask, uint64_t mask_base);

/* The outlier table's choice for a one-group section (FORMAT.md §5.10) of T rows of cache_k and cache_v (rows as
 * kw_op_wire_encode's, t0 0) with codecs sk and sv: the min(count, 2 * H * T * D) elements kw_wire_outlier_select
 * chooses, ascending in elems (i32, >= count entries), their number in n (1) i32, their values in values (f32,
 * >= count), the section's mask for kw_op_wire_encode in mask (u8, ceil(2 * H * T * D / 32) * 4 bytes), and bad (1)
 * i32 non-zero if K or V holds a NaN or Inf. work (u8): kw_backend_wire_outlier_work bytes (KW_E_LIMIT from it past
 * 2^32 - 1 elements: the CPU path then). */
int kw_backend_wire_outlier_work(const kw_backend *backend, const kw_wire_op_spec *sk, const kw_wire_op_spec *sv,
                                 uint32_t H, uint32_t T, uint32_t D, uint64_t *work_bytes);
int kw_op_wire_outliers(kw_backend *backend, const kw_wire_op_spec *sk, const kw_wire_op_spec *sv,
                        const kw_tensor *cache_k, const kw_tensor *cache_v, const kw_tensor *rows, uint32_t T,
                        uint32_t count, kw_tensor *work, kw_tensor *elems, kw_tensor *n, kw_tensor *values,
                        kw_tensor *mask, kw_tensor *bad);

/* Downloads the first n error words of err (synchronizing) and returns the first failure among them, the CPU
 * encoder's status for it (KW_E_WIRE_NONFINITE, KW_E_WIRE_RANGE), or 0. */
int kw_backend_wire_status(kw_backend *backend, const kw_tensor *err, int64_t n);

/* out (H, T, D) f32 = cache rows rows[0..T) (cache (H, cap, D) f32/bf16, rows (>= T) i32) widened to f32 and, with
 * rotate 1, rotated forward by the Hadamard rotation of a rotated section (FORMAT.md §5.12; wire/kw_wire.h
 * kw_wire_rotate_rows with inverse 0, bit for bit; D a power of two up to 1024), for kw_op_wire_encode and
 * kw_op_wire_outliers to read as a cache of T rows (with the rows 0..T-1). */
int kw_op_wire_rotate_rows(kw_backend *backend, kw_tensor *out, const kw_tensor *cache, const kw_tensor *rows,
                           uint32_t T, int rotate);

/* ------------------------------------------------------------------------------------------------------------
 * The receiver's device work (kernels/cuda/kw_cuda_wire.h on the CUDA backend): a verified KVWire section's tensors
 * (their scales, zero points and codes, uploaded as they came) decoded into device rows, its outlier table written
 * over them and its Hadamard rotation undone, bit for bit wire/'s kw_wire_section_dequantize. Parsing and checking
 * the section (lengths, scales, the table's element numbers) stay with the CPU decoder. The CPU backend has none of
 * it (kw_backend_supports_wire_decode 0, the calls KW_E_OP_UNSUPPORTED). Asynchronous like every op.
 */

/* 1 if the backend has the three ops below, else 0. */
int kw_backend_supports_wire_decode(const kw_backend *backend);

/* Decodes one tensor of a token group (T tokens of H heads, head_dim D, codec spec; its bytes [offset, offset +
 * tensor_bytes) of src (u8), scales then codes as the section holds them, tensor_bytes as kw_backend_wire_sizes) into
 * rows [t0, t0 + T) of out (n, H, D) f32. bad (1) i32 is set non-zero on a reserved code or a non-finite passthrough
 * value (the CPU decoder's KW_E_WIRE_VALUE); the caller zeroes it first. */
int kw_op_wire_decode(kw_backend *backend, kw_tensor *out, uint32_t t0, uint32_t T, const kw_wire_op_spec *spec,
                      const kw_tensor *src, size_t offset, kw_tensor *bad);

/* Writes values[i] over element elems[i] of the decoded section k, v (T, H, D) f32 for i < n: element e = kv * T*H*D
 * + (h * T + t) * D + d, as the outlier table (FORMAT.md §5.10) numbers them; elems (i32, read as u32, distinct,
 * below 2*T*H*D) and values (f32) hold at least n entries. KW_E_LIMIT past 2^32 - 1 elements. */
int kw_op_wire_outliers_apply(kw_backend *backend, kw_tensor *k, kw_tensor *v, const kw_tensor *elems,
                              const kw_tensor *values, uint32_t n);

/* Undoes the Hadamard rotation (FORMAT.md §5.12) of every head row of x (T, H, D) f32 in place, D a power of two in
 * 2..1024: wire/kw_wire.h's kw_wire_rotate_rows with inverse 1, bit for bit. bad (one i32, as kw_op_wire_decode's) is
 * set non-zero if a value comes out not finite or above the largest bf16 (the CPU decoder's KW_E_WIRE_VALUE). */
int kw_op_wire_unrotate(kw_backend *backend, kw_tensor *x, kw_tensor *bad);

enum kw_act {
    KW_ACT_SILU = 0,      /* x * sigmoid(x) */
    KW_ACT_GELU_ERF = 1,  /* 0.5 x (1 + erf(x / sqrt 2)), torch nn.GELU() */
    KW_ACT_GELU_TANH = 2, /* torch gelu(approximate="tanh") */
    KW_ACT_SIGMOID = 3,
    KW_ACT_IDENTITY = 4,
    KW_ACT_TANH = 5, /* torch.tanh (Gemma's final logit softcap) */
};

/* out = act(gate) * up, elementwise; all f32, same shape. */
int kw_op_glu(kw_backend *backend, kw_tensor *out, const kw_tensor *gate, const kw_tensor *up, enum kw_act act);

/* out = act(x), elementwise f32; out may equal x. */
int kw_op_unary(kw_backend *backend, kw_tensor *out, const kw_tensor *x, enum kw_act act);

/* out = a + b, elementwise f32, same shapes; out may equal a or b. */
int kw_op_add(kw_backend *backend, kw_tensor *out, const kw_tensor *a, const kw_tensor *b);

/* out = x * s, elementwise f32; out may equal x. */
int kw_op_scale(kw_backend *backend, kw_tensor *out, const kw_tensor *x, float s);

/* out (R, N) = softmax of each row of x (R, N), f32, max-subtracted; out may equal x. */
int kw_op_softmax(kw_backend *backend, kw_tensor *out, const kw_tensor *x);

enum kw_argmax_flags {
    KW_ARGMAX_PLAIN = 0,
    KW_ARGMAX_ROUND_BF16 = 1, /* compare values rounded to bf16, as HF does with bf16 logits */
};

/* out (R) i32 = index of the maximum of each row of x (R, N) f32; ties go to the lowest index; NaN never wins. */
int kw_op_argmax(kw_backend *backend, kw_tensor *out, const kw_tensor *x, int flags);

/* dst = src converted elementwise (same element count; f32/bf16/f16 both ways, round to nearest even). */
int kw_op_copy(kw_backend *backend, kw_tensor *dst, const kw_tensor *src);

/* out (T, H, D) = base + (g * w[t, h]) * x[t, h, :], all f32; base and x (T, H, D), w (T, H) (any shape of T * H
 * elements, row-major). Evaluated as torch does `base + g * w * x` with fp32 tensors: the product g * w rounded to
 * fp32, times x rounded to fp32, then the sum rounded to fp32 (no fused multiply-add), so every backend gives the
 * same bits. out may equal base or x. This is the C2C projector's per-head combine (c2c_spec.md §2.3, §2.5). */
int kw_op_head_scale_add(kw_backend *backend, kw_tensor *out, const kw_tensor *base, const kw_tensor *x,
                         const kw_tensor *w, float g);

#endif /* KW_BACKEND_H */
