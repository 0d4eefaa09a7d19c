/* kw_cpu.h: internals of the CPU backend (kernels/cpu only).
 *
 * The backend runs every op synchronously on the calling thread plus the n_threads - 1 workers of its thread pool
 * (kw_cpu_pool.h), which the backend starts at creation and joins at destroy. Kernels come in
 * up to three flavours chosen once per backend from the CPU's features: AVX-512 (F, BW, VL, DQ with FMA and F16C),
 * AVX2 (with FMA and F16C) and portable scalar C. The build never uses -march=native: each SIMD function carries
 * its own __attribute__((target)), so the library runs on any x86-64 and picks the fastest path at run time.
 * KW_CPU_ISA=scalar|avx2|avx512 in the environment lowers the choice (tests use it to exercise every path).
 *
 * The flavours differ in speed only: every op computes one fixed sequence of IEEE fp32 operations per output element
 * (matmul: an fma chain in ascending k; attention and reductions: kw_cpu_simd.h's 16 lanes and fixed tree; exp and
 * erf: kw_cpu_math.c's polynomials), so a result's bits depend neither on the ISA nor on the thread count nor on how
 * the rows of a call were batched. tests/kernels/test_invariance.c holds every flavour to that.
 */
#ifndef KW_CPU_H
#define KW_CPU_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/cpu/kw_cpu_pool.h"
#include "kernels/kw_backend_impl.h"

enum kw_cpu_isa { KW_CPU_ISA_SCALAR = 0, KW_CPU_ISA_AVX2 = 1, KW_CPU_ISA_AVX512 = 2 };

#if defined(__x86_64__) || defined(__i386__)
#define KW_CPU_X86       1
#define KW_TARGET_AVX2   __attribute__((target("avx2,fma,f16c")))
#define KW_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#else
#define KW_CPU_X86 0
#endif

/* Attention calls of at most this many query tokens prefetch the cache rows (kw_cpu_attention.c: a decode step's
 * rows come from memory) and score them four at a time; a longer call does not: its items run kv head by kv head (as
 * every call's do), so all but a head's first token find the rows in the caches, where the prefetches were a fifth of a
 * 512-token prefill's score pass, and AVX-512 scores them in blocks of heads x rows, 16 scores a block
 * (kw_attn_score_blocks). */
#define KW_ATTN_PREFETCH_MAX_T 4

/* What kw__cpu_rope keeps of one set of rope parameters (kw_cpu_ops.c): their inv_freq and the {cos, sin} tables of
 * the positions of its last call (a prefill's run or a decode step's one position, up to KW_CPU_ROPE_ROWS_MAX
 * {cos, sin} pairs: 16 MiB, and their positions, kept until the backend is destroyed). A forward pass rotates q and k
 * of every layer at the same positions, so the frequencies and angles are computed once per model (Gemma 3: two sets)
 * and pass instead of twice per layer; the same values (one formula). */
#define KW_CPU_ROPE_MEMOS    2
#define KW_CPU_ROPE_ROWS_MAX ((int64_t)1 << 21)
typedef struct kw_cpu_rope_memo {
    int used; /* params and inv_freq hold a set */
    kw_rope_params params;
    float inv_freq[KW_ROPE_MAX_DIM / 2];
    float *rows_tab;   /* n_rows {cos, sin} tables (half frequencies each, as kw_op_rope_table's table) of the positions
                          rows_pos, then room for the positions (owned: one allocation of rows_cap bytes) */
    int32_t *rows_pos; /* the positions of the n_rows tables, in call order: inside rows_tab's allocation (borrowed) */
    int64_t n_rows;    /* 0: no tables held */
    size_t rows_cap;   /* the bytes of rows_tab's allocation */
} kw_cpu_rope_memo;

typedef struct kw_cpu_backend {
    kw_backend base; /* first: a kw_backend * points here */
    int n_threads;
    enum kw_cpu_isa isa;
    float *scratch; /* grows on demand; per-op temporary space (owned) */
    size_t scratch_floats;
    kw_cpu_pool *pool; /* n_threads in all (owned) */
    kw_cpu_rope_memo rope[KW_CPU_ROPE_MEMOS];
    int rope_next; /* the memo a new parameter set replaces */
} kw_cpu_backend;

/* fn(ctx, begin, end, worker) over [0, n) cut into min(nt, n) contiguous ranges (schedule(static)'s cut), one per
 * task of the backend's pool; returns when all have run. */
typedef void (*kw_cpu_range_fn)(void *ctx, int64_t begin, int64_t end, int worker);
void kw__cpu_parallel_for(kw_cpu_backend *cpu, int nt, int64_t n, kw_cpu_range_fn fn, void *ctx);

/* The backend's scratch buffer, at least n floats (64-byte aligned); valid until the next call. */
int kw__cpu_scratch(kw_cpu_backend *cpu, size_t n, float **out);

const char *kw__cpu_isa_name(enum kw_cpu_isa isa);

/* 1 if the CPU has AVX-512 VBMI (kw_cpu_matmul.c: the AVX-512 kernels' decode rows then use it); 0 elsewhere. */
int kw__cpu_has_vbmi(void);

/* Packs a row-major matmul weight into KW_LAYOUT_PANELS (kw_cpu_matmul.c; arguments validated). */
int kw__cpu_pack_weight(kw_backend *backend, const kw_tensor *w, kw_tensor *packed);

/* Packs validated quantized rows into their quantized panels (kw_cpu_matmul.c). */
int kw__cpu_pack_quantized(kw_backend *backend, const kw_quant_rows *q, kw_tensor *packed);
/* Writes row n (K values) of the quantized-panel weight w to dst, each value as the matmul kernels rebuild it. */
void kw__cpu_qpanel_row(const kw_tensor *w, int64_t n, float *dst);

/* The int8-activation layouts KW_LAYOUT_QPANELS_U4_X8, S8_G16_X8, S8_X8 and the super-block forms U4_SB_X8,
 * S8_G16_SB_X8, S6_G16_SB_X8 (kw_cpu_matmul_x8.c, which states the numerics).
 * x (M, K) quantized per group of 32 k: q (M, K), d and s (M, K / 32 each: the step, and step * sum of q), s16
 * (M, K / 16: the sum of q per 16 k), and dh (M, K / 32: d rounded to f16 once per group, kw_round_f16, the d of
 * S8_X8's rule 3; NULL when no S8_X8 weight reads x). All five belong to the caller. */
typedef struct kw_x8_act {
    const int8_t *q;
    const float *d, *s;
    const int32_t *s16;
    const float *dh;
} kw_x8_act;
/* 1 if layout is one of the six int8-activation layouts. */
int kw__cpu_layout_x8(enum kw_layout layout);
/* Fills xq, xd, xs, xs16 and, unless it is NULL, xdh (the arrays of a kw_x8_act) from x, nt threads of cpu's pool. */
void kw__cpu_x8_quantize(kw_cpu_backend *cpu, const float *x, int64_t M, int64_t K, int nt, int8_t *xq, float *xd,
                         float *xs, int32_t *xs16, float *xdh);
/* Rows [m0, m1) of y (row stride N) against one panel wp of an x8 layout, columns n0 .. n0 + ncols. */
void kw__cpu_x8_panel(enum kw_cpu_isa isa, enum kw_layout layout, float *y, int64_t N, const kw_x8_act *a, int64_t K,
                      const char *wp, int64_t n0, int64_t ncols, int64_t m0, int64_t m1);
/* 1 if a work item of rows x rows on a panel of layout runs on its panel widened (kw__cpu_x8_widen6_panel) into
 * KW_LAYOUT_QPANELS_S8_G16_X8: S6_G16_SB_X8 with prefill rows. */
int kw__cpu_x8_widens(enum kw_layout layout, int64_t rows);
/* Writes the S8_G16_X8 panel of the S6_G16_SB_X8 panel src (K a multiple of 256) to dst (caller-owned, its panel
 * bytes): the same codes, and scales fl(d * s), so kw__cpu_x8_panel on it gives src's bits. */
void kw__cpu_x8_widen6_panel(enum kw_cpu_isa isa, char *dst, const char *src, int64_t K);
/* The code of row r (0..63) at k kk (0..group-1) of a group's code bytes: ored in (the bytes zeroed first) / read. */
void kw__cpu_x8_pack_code(enum kw_layout layout, uint8_t *codes, int64_t r, int64_t kk, int code);
int kw__cpu_x8_get_code(enum kw_layout layout, const uint8_t *codes, int64_t r, int64_t kk);
/* Rows [0, rows) (rows <= 64) of a group's codes at once, row r's group codes (its k's in order; 32 for the 4-bit
 * layouts, else 16) at src + r * stride: the bytes kw__cpu_x8_pack_code gives the zeroed block, every byte of those
 * rows' lanes written (the other rows' bytes are left as they are). The loader's packer; kw__cpu_x8_pack_code stays its
 * test oracle. */
void kw__cpu_x8_pack_group(enum kw_layout layout, uint8_t *codes, const int8_t *src, int64_t stride, int64_t rows);

/* The bf16-activation layout KW_LAYOUT_PANELS_BF16_PAIRS (kw_cpu_matmul_bf16.c, which states the numerics). */
/* Packs the row-major bf16 weight w (validated) into the layout. */
int kw__cpu_pack_bf16_pairs(kw_backend *backend, const kw_tensor *w, kw_tensor *packed);
/* Value (n, k) of a weight in the layout. */
float kw__cpu_bf16_pairs_get(const kw_tensor *w, int64_t n, int64_t k);
/* Rounds x (M, K) to bf16 into xb (M rows of K rounded up to even, caller-owned), nt threads. */
void kw__cpu_bf16_round_x(kw_cpu_backend *cpu, const float *x, int64_t M, int64_t K, int nt, uint16_t *xb);
/* Rows [m0, m1) of y (row stride N) against one panel wp of the layout, columns n0 .. n0 + ncols. */
void kw__cpu_bf16_panel(enum kw_cpu_isa isa, float *y, int64_t N, const uint16_t *xb, int64_t K, const uint16_t *wp,
                        int64_t n0, int64_t ncols, int64_t m0, int64_t m1);

/* Op kernels (arguments validated by the generic layer). */
int kw__cpu_matmul(kw_backend *backend, kw_tensor *out, const kw_tensor *x, const kw_tensor *w, const kw_tensor *bias);
int kw__cpu_matmul_shared(kw_backend *backend, int n, kw_tensor *const *out, const kw_tensor *x,
                          const kw_tensor *const *w, const kw_tensor *const *bias);
int kw__cpu_attention(kw_backend *backend, kw_tensor *out, const kw_tensor *q, const kw_tensor *k_cache,
                      const kw_tensor *v_cache, const kw_attention_params *params);
int kw__cpu_get_rows(kw_backend *backend, kw_tensor *out, const kw_tensor *table, const kw_tensor *ids);
int kw__cpu_rms_norm(kw_backend *backend, kw_tensor *out, const kw_tensor *x, const kw_tensor *w, float eps, int flags);
int kw__cpu_rope(kw_backend *backend, kw_tensor *x, const kw_tensor *pos, const kw_rope_params *params);
int kw__cpu_rope_table(kw_backend *backend, kw_tensor *x, const kw_tensor *table);
int kw__cpu_kv_store(kw_backend *backend, kw_tensor *cache, const kw_tensor *src, int64_t pos0);
int kw__cpu_kv_load(kw_backend *backend, kw_tensor *out, const kw_tensor *cache, int64_t pos0);

/* kw_cpu_kvq.c and kw_cpu_attention.c: the paged quantized KV cache (kw_op_kvq_*, kw_op_attention_kvq). */
int kw__cpu_kvq_store(kw_backend *backend, kw_tensor *store, const kw_kvq_geom *g, const kw_tensor *src, int64_t pos0,
                      int64_t n_rows);
int kw__cpu_kvq_load(kw_backend *backend, kw_tensor *out, const kw_tensor *store, const kw_kvq_geom *g, int64_t pos0,
                     int64_t n_rows);
int kw__cpu_kvq_truncate(kw_backend *backend, kw_tensor *store, const kw_kvq_geom *g, int64_t n_rows, int64_t new_rows);
int kw__cpu_attention_kvq(kw_backend *backend, kw_tensor *out, const kw_tensor *q, const kw_tensor *k_store,
                          const kw_kvq_geom *kg, const kw_tensor *v_store, const kw_kvq_geom *vg,
                          const kw_attention_params *params, int64_t n_rows);
int kw__cpu_glu(kw_backend *backend, kw_tensor *out, const kw_tensor *gate, const kw_tensor *up, enum kw_act act);
int kw__cpu_unary(kw_backend *backend, kw_tensor *out, const kw_tensor *x, enum kw_act act);
int kw__cpu_add(kw_backend *backend, kw_tensor *out, const kw_tensor *a, const kw_tensor *b);
int kw__cpu_scale(kw_backend *backend, kw_tensor *out, const kw_tensor *x, float s);
int kw__cpu_softmax(kw_backend *backend, kw_tensor *out, const kw_tensor *x);
int kw__cpu_argmax(kw_backend *backend, kw_tensor *out, const kw_tensor *x, int flags);
int kw__cpu_copy(kw_backend *backend, kw_tensor *dst, const kw_tensor *src);
int kw__cpu_head_scale_add(kw_backend *backend, kw_tensor *out, const kw_tensor *base, const kw_tensor *x,
                           const kw_tensor *w, float g); /* kw_cpu_c2c.c */

/* Converts n values of a f32/bf16/f16 array starting at element i0 to fp32 (vectorized where the ISA allows). */
void kw__cpu_to_f32(enum kw_cpu_isa isa, float *dst, const void *src, enum kw_dtype dtype, int64_t i0, int64_t n);
/* Converts n fp32 values to a f32/bf16/f16 array (round to nearest even, as kw_half.h). */
void kw__cpu_from_f32(enum kw_cpu_isa isa, void *dst, enum kw_dtype dtype, const float *src, int64_t n);

/* Bulk fp32 math of kw_cpu_math.c, bit-identical on every ISA (one sequence of IEEE operations, no libm). Each
 * writes n values (y may equal x):
 *   exp:      e^x within 2 ulp of the correctly rounded value (+Inf above 88.72, 0 below -103.97, NaN kept)
 *   erf:      within 1.5 ulp of erf (checked by test_kernels_backend_ops' sweep)
 *   gelu_erf: (x * 0.5) * (1 + erf(x * 0.70710678)), kw_opm_act's formula on this erf
 *   gelu_tanh: torch's tanh GELU as x / (1 + exp(-2 u)), u kw_opm_act's inner polynomial (the same function as its
 *             0.5 x (1 + tanh(u)), without tanh; within about 1.12 eps |x| + 6 eps |y|, eps = 2^-24)
 *   sigmoid:  1 / (1 + exp(-x)) and silu: x / (1 + exp(-x)), kw_opm_act's formulas on this exp */
void kw__cpu_exp_f32(enum kw_cpu_isa isa, float *y, const float *x, int64_t n);
void kw__cpu_erf_f32(enum kw_cpu_isa isa, float *y, const float *x, int64_t n);
void kw__cpu_gelu_erf_f32(enum kw_cpu_isa isa, float *y, const float *x, int64_t n);
void kw__cpu_gelu_tanh_f32(enum kw_cpu_isa isa, float *y, const float *x, int64_t n);
void kw__cpu_sigmoid_f32(enum kw_cpu_isa isa, float *y, const float *x, int64_t n);
void kw__cpu_silu_f32(enum kw_cpu_isa isa, float *y, const float *x, int64_t n);

/* Work smaller than this many elements (or multiply-adds) stays on one thread. */
#define KW_CPU_PARALLEL_MIN 32768

static inline kw_cpu_backend *kw__cpu(kw_backend *backend) {
    return (kw_cpu_backend *)backend;
}

#endif /* KW_CPU_H */
