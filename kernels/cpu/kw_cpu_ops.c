/* kw_cpu_ops.c: the CPU backend's small ops: embedding lookup, RMSNorm, RoPE, KV cache store/load, activations,
 * add, scale, softmax, argmax and copy. They are memory-bound and cheap next to matmul and attention, so they are
 * plain C that follows HF's fp32 rounding steps (see kw_ref.h), spread over the backend's thread pool by rows when a
 * call is large and the bulk dtype conversions of kw_cpu_convert.c. Not here: matmul (kw_cpu_matmul.c), attention
 * (kw_cpu_attention.c). */
#include "kernels/cpu/kw_cpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_half.h"
#include "common/kw_status.h"
#include "kernels/kw_op_math.h"

/* Threads for a call touching n elements. */
static int kw_threads_for(const kw_cpu_backend *cpu, int64_t n) {
    return n >= KW_CPU_PARALLEL_MIN ? cpu->n_threads : 1;
}

int kw__cpu_get_rows(kw_backend *backend, kw_tensor *out, const kw_tensor *table, const kw_tensor *ids) {
    kw_cpu_backend *cpu = kw__cpu(backend);
    const int64_t T = kw_tensor_nelem(ids), V = table->ne[0], D = table->ne[1];
    const int32_t *id = ids->data;
    float *y = out->data;
    int64_t bad = -1;
    for (int64_t t = 0; t < T; ++t) {
        if (id[t] < 0 || id[t] >= V) {
            memset(y + t * D, 0, (size_t)D * sizeof(float));
            if (bad < 0) bad = t;
            continue;
        }
        if (table->layout == KW_LAYOUT_PANELS_BF16_PAIRS) {
            for (int64_t k = 0; k < D; ++k)
                y[t * D + k] = kw__cpu_bf16_pairs_get(table, id[t], k);
            continue;
        }
        if (table->layout != KW_LAYOUT_ROWS && table->layout != KW_LAYOUT_PANELS) { /* quantized panels */
            kw__cpu_qpanel_row(table, id[t], y + t * D);
            continue;
        }
        if (table->layout == KW_LAYOUT_PANELS) { /* column id % 64 of panel id / 64, one value per k */
            const int64_t p = id[t] / KW_PANEL_ROWS, r = id[t] % KW_PANEL_ROWS;
            for (int64_t k = 0; k < D; ++k)
                y[t * D + k] = kw_opm_load(table->data, table->dtype, (p * D + k) * KW_PANEL_ROWS + r);
            continue;
        }
        kw__cpu_to_f32(cpu->isa, y + t * D, table->data, table->dtype, (int64_t)id[t] * D, D);
    }
    if (bad >= 0)
        kw__backend_defer_error(backend, KW_E_TOKEN_ID, "get_rows: id %d at row %lld is outside [0, %lld)",
                                (int)id[bad], (long long)bad, (long long)V);
    return 0;
}

typedef struct kw_rms_job {
    const float *xs, *wf;
    float *ys;
    int64_t D;
    float eps;
} kw_rms_job;

static void kw_rms_rows(void *arg, int64_t r0, int64_t r1, int worker) {
    (void)worker;
    const kw_rms_job *j = arg;
    const int64_t D = j->D;
    for (int64_t r = r0; r < r1; ++r) {
        const float *xr = j->xs + r * D;
        float *yr = j->ys + r * D;
        /* 8 partial sums: order-independent within the fp32 bound the tests derive, and vectorizable */
        float part[8] = {0};
        int64_t d = 0;
        for (; d + 8 <= D; d += 8)
            for (int i = 0; i < 8; ++i)
                part[i] += xr[d + i] * xr[d + i];
        for (; d < D; ++d)
            part[0] += xr[d] * xr[d];
        const float ss = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
        const float inv_rms = kw_opm_rms_scale(ss, D, j->eps);
        for (d = 0; d < D; ++d)
            yr[d] = (xr[d] * inv_rms) * j->wf[d];
    }
}

int kw__cpu_rms_norm(kw_backend *backend, kw_tensor *out, const kw_tensor *x, const kw_tensor *w, float eps,
                     int flags) {
    kw_cpu_backend *cpu = kw__cpu(backend);
    const int64_t D = x->ne[x->ndim - 1], R = kw_tensor_nrows(x);
    float *wf;
    KW_FORWARD(kw__cpu_scratch(cpu, (size_t)D, &wf));
    kw__cpu_to_f32(cpu->isa, wf, w->data, w->dtype, 0, D);
    if (flags & KW_RMS_NORM_UNIT_OFFSET)
        for (int64_t d = 0; d < D; ++d)
            wf[d] = 1.0f + wf[d];
    kw_rms_job job = {x->data, wf, out->data, D, eps};
    kw__cpu_parallel_for(cpu, kw_threads_for(cpu, R * D), R, kw_rms_rows, &job);
    return 0;
}

typedef struct kw_rope_job {
    float *xs;
    const int32_t *pos;
    const float *inv_freq; /* kw_rope_rows and kw_rope_table_build: the frequencies */
    float *tab; /* kw_rope_table_rows: the tables it reads (a row per token); kw_rope_table_build: those it writes */
    int64_t H, D, half;
} kw_rope_job;

/* tab[2 i], tab[2 i + 1] = cos, sin of position pos's angle at frequency i < half: the fp32 angle as HF forms it,
 * cos/sin rounded once from double (HF's fp32 cos is within 1 ulp). */
static void kw_rope_angles(int32_t pos, const float *inv_freq, int64_t half, float *tab) {
    for (int64_t i = 0; i < half; ++i) {
        const float angle = kw_opm_rope_angle(pos, inv_freq[i]);
        tab[2 * i] = (float)cos((double)angle);
        tab[2 * i + 1] = (float)sin((double)angle);
    }
}

/* Rotates the H heads of one token x (H, D) by the {cos, sin} table tab (half frequencies). */
static void kw_rope_rotate_token(float *x, int64_t H, int64_t D, int64_t half, const float *tab) {
    for (int64_t h = 0; h < H; ++h) {
        float *xh = x + h * D;
        for (int64_t i = 0; i < half; ++i)
            kw_opm_rope_rotate(&xh[i], &xh[i + half], tab[2 * i], tab[2 * i + 1]);
    }
}

static void kw_rope_rows(void *arg, int64_t t0, int64_t t1, int worker) {
    (void)worker;
    const kw_rope_job *j = arg;
    for (int64_t t = t0; t < t1; ++t) {
        float tab[KW_ROPE_MAX_DIM];
        kw_rope_angles(j->pos[t], j->inv_freq, j->half, tab);
        kw_rope_rotate_token(j->xs + t * j->H * j->D, j->H, j->D, j->half, tab);
    }
}

/* The tables of tokens [t0, t1) into tab (row t at t * half * 2). */
static void kw_rope_table_build(void *arg, int64_t t0, int64_t t1, int worker) {
    (void)worker;
    const kw_rope_job *j = arg;
    for (int64_t t = t0; t < t1; ++t)
        kw_rope_angles(j->pos[t], j->inv_freq, j->half, j->tab + t * j->half * 2);
}

static void kw_rope_table_rows(void *arg, int64_t t0, int64_t t1, int worker) {
    (void)worker;
    const kw_rope_job *j = arg;
    for (int64_t t = t0; t < t1; ++t)
        kw_rope_rotate_token(j->xs + t * j->H * j->D, j->H, j->D, j->half, j->tab + t * j->half * 2);
}

static int kw_rope_same_params(const kw_rope_params *a, const kw_rope_params *b) {
    return a->theta == b->theta && a->rotary_dim == b->rotary_dim && a->scaling == b->scaling &&
           a->factor == b->factor && a->low_freq_factor == b->low_freq_factor &&
           a->high_freq_factor == b->high_freq_factor && a->original_max_position == b->original_max_position;
}

/* The memo of params (kw_cpu_rope_memo), its inv_freq computed when the set is new. */
static kw_cpu_rope_memo *kw_rope_memo(kw_cpu_backend *cpu, const kw_rope_params *params) {
    for (int i = 0; i < KW_CPU_ROPE_MEMOS; ++i)
        if (cpu->rope[i].used && kw_rope_same_params(&cpu->rope[i].params, params)) return &cpu->rope[i];
    kw_cpu_rope_memo *r = &cpu->rope[cpu->rope_next];
    cpu->rope_next = (cpu->rope_next + 1) % KW_CPU_ROPE_MEMOS;
    r->used = 1;
    r->n_rows = 0; /* its buffers stay for the new set */
    r->params = *params;
    kw__rope_inv_freq(params, r->inv_freq);
    return r;
}

/* 0 when r->rows_tab holds the tables of the T positions p (half frequencies each): kept from the last call with the
 * same positions (every layer of a pass; a decode step's one position too), else computed; negative (nothing held)
 * when they do not fit KW_CPU_ROPE_ROWS_MAX or the buffer cannot grow, and the caller computes them per token. */
static int kw_rope_rows_tables(kw_cpu_backend *cpu, kw_cpu_rope_memo *r, const int32_t *p, int64_t T, int64_t half) {
    if (T == 0) return -1; /* nothing to hold (and maybe no buffer yet) */
    if (r->n_rows == T && memcmp(r->rows_pos, p, (size_t)T * sizeof *p) == 0) return 0;
    r->n_rows = 0;
    if (T * half > KW_CPU_ROPE_ROWS_MAX) return -1;
    const size_t tab_bytes = (size_t)(T * half * 2) * sizeof(float), bytes = tab_bytes + (size_t)T * sizeof(int32_t);
    if (bytes > r->rows_cap) {
        float *tab = realloc(r->rows_tab, bytes);
        if (tab == NULL) return -1;
        r->rows_tab = tab;
        r->rows_cap = bytes;
    }
    r->rows_pos = (int32_t *)((char *)r->rows_tab + tab_bytes); /* floats' bytes: a multiple of int32_t's alignment */
    kw_rope_job job = {NULL, p, r->inv_freq, r->rows_tab, 0, 0, half};
    /* a cos and a sin in double cost about what 64 of the elementwise values kw_threads_for counts do; a decode
     * step's one position is one task, which the pool runs on this thread */
    kw__cpu_parallel_for(cpu, kw_threads_for(cpu, T * half * 64), T, kw_rope_table_build, &job);
    memcpy(r->rows_pos, p, (size_t)T * sizeof *p);
    r->n_rows = T;
    return 0;
}

int kw__cpu_rope(kw_backend *backend, kw_tensor *x, const kw_tensor *pos, const kw_rope_params *params) {
    kw_cpu_backend *cpu = kw__cpu(backend);
    const int64_t T = x->ne[0], H = x->ne[1], D = x->ne[2], half = params->rotary_dim / 2;
    kw_cpu_rope_memo *r = kw_rope_memo(cpu, params);
    const int32_t *p = pos->data;
    if (kw_rope_rows_tables(cpu, r, p, T, half) == 0) { /* the positions' tables, once per pass */
        kw_rope_job job = {x->data, NULL, NULL, r->rows_tab, H, D, half};
        kw__cpu_parallel_for(cpu, kw_threads_for(cpu, T * H * D), T, kw_rope_table_rows, &job);
        return 0;
    }
    kw_rope_job job = {x->data, p, r->inv_freq, NULL, H, D, half};
    kw__cpu_parallel_for(cpu, kw_threads_for(cpu, T * H * D), T, kw_rope_rows, &job);
    return 0;
}

int kw__cpu_rope_table(kw_backend *backend, kw_tensor *x, const kw_tensor *table) {
    kw_cpu_backend *cpu = kw__cpu(backend);
    const int64_t T = x->ne[0], H = x->ne[1], D = x->ne[2], half = table->ne[1];
    kw_rope_job job = {x->data, NULL, NULL, table->data, H, D, half};
    kw__cpu_parallel_for(cpu, kw_threads_for(cpu, T * H * D), T, kw_rope_table_rows, &job);
    return 0;
}

int kw__cpu_kv_store(kw_backend *backend, kw_tensor *cache, const kw_tensor *src, int64_t pos0) {
    kw_cpu_backend *cpu = kw__cpu(backend);
    const int64_t T = src->ne[0], H = src->ne[1], D = src->ne[2], cap = cache->ne[1];
    const size_t esize = kw_dtype_size(cache->dtype);
    const float *s = src->data;
    for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < H; ++h)
            kw__cpu_from_f32(cpu->isa, (char *)cache->data + (size_t)kw_opm_kv_offset(h, t, cap, pos0, D) * esize,
                             cache->dtype, s + (t * H + h) * D, D);
    return 0;
}

int kw__cpu_kv_load(kw_backend *backend, kw_tensor *out, const kw_tensor *cache, int64_t pos0) {
    kw_cpu_backend *cpu = kw__cpu(backend);
    const int64_t T = out->ne[0], H = out->ne[1], D = out->ne[2], cap = cache->ne[1];
    float *y = out->data;
    for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < H; ++h)
            kw__cpu_to_f32(cpu->isa, y + (t * H + h) * D, cache->data, cache->dtype,
                           kw_opm_kv_offset(h, t, cap, pos0, D), D);
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * Elementwise: the activation formulas are kw_opm_act's (kernels/kw_op_math.h, the lines the GPU runs). SiLU, the
 * sigmoid and the exact-erf GELU go through kw_cpu_math.c's exp and erf (the same bits on every ISA; no libm), in
 * blocks of KW_CPU_ACT_BLOCK values, and so does the tanh GELU, as x sigmoid(2 u), the same function as kw_opm_act's
 * 0.5 x (1 + tanh(u)) (kw__cpu_gelu_tanh_f32); tanh and the identity are kw_opm_act itself, plain C on every ISA.
 */

#define KW_CPU_ACT_BLOCK 1024

/* y = act(x) for n values with the bulk math functions, or NULL when act is computed by kw_opm_act. */
typedef void (*kw_cpu_bulk_act)(enum kw_cpu_isa isa, float *y, const float *x, int64_t n);

static kw_cpu_bulk_act kw_cpu_bulk_act_for(enum kw_act act) {
    switch (act) {
    case KW_ACT_SILU:
        return kw__cpu_silu_f32;
    case KW_ACT_SIGMOID:
        return kw__cpu_sigmoid_f32;
    case KW_ACT_GELU_ERF:
        return kw__cpu_gelu_erf_f32;
    case KW_ACT_GELU_TANH:
        return kw__cpu_gelu_tanh_f32;
    case KW_ACT_IDENTITY:
    case KW_ACT_TANH:
        break;
    }
    return NULL;
}

typedef struct kw_act_job {
    float *y;
    const float *x, *up;
    int64_t n;
    enum kw_act act;
    kw_cpu_bulk_act bulk;
    enum kw_cpu_isa isa;
} kw_act_job;

static void kw_act_values(void *arg, int64_t i0, int64_t i1, int worker) {
    (void)worker;
    const kw_act_job *j = arg;
    for (int64_t i = i0; i < i1; ++i)
        j->y[i] = j->up ? kw_opm_act(j->x[i], j->act) * j->up[i] : kw_opm_act(j->x[i], j->act);
}

static void kw_act_blocks(void *arg, int64_t b0, int64_t b1, int worker) {
    (void)worker;
    const kw_act_job *j = arg;
    for (int64_t b = b0; b < b1; ++b) {
        float buf[KW_CPU_ACT_BLOCK];
        const int64_t i0 = b * KW_CPU_ACT_BLOCK, m = j->n - i0 < KW_CPU_ACT_BLOCK ? j->n - i0 : KW_CPU_ACT_BLOCK;
        j->bulk(j->isa, buf, j->x + i0, m);
        for (int64_t i = 0; i < m; ++i)
            j->y[i0 + i] = j->up ? buf[i] * j->up[i0 + i] : buf[i];
    }
}

/* out = act(x) (* up when up is not NULL) over n values; out may equal x or up. */
static void kw_cpu_act(kw_cpu_backend *cpu, float *y, const float *x, const float *up, int64_t n, enum kw_act act) {
    kw_act_job job = {y, x, up, n, act, kw_cpu_bulk_act_for(act), cpu->isa};
    if (job.bulk == NULL) {
        kw__cpu_parallel_for(cpu, kw_threads_for(cpu, n / 8), n, kw_act_values, &job);
        return;
    }
    const int64_t n_blocks = (n + KW_CPU_ACT_BLOCK - 1) / KW_CPU_ACT_BLOCK;
    kw__cpu_parallel_for(cpu, kw_threads_for(cpu, n), n_blocks, kw_act_blocks, &job);
}

int kw__cpu_glu(kw_backend *backend, kw_tensor *out, const kw_tensor *gate, const kw_tensor *up, enum kw_act act) {
    kw_cpu_act(kw__cpu(backend), out->data, gate->data, up->data, kw_tensor_nelem(out), act);
    return 0;
}

int kw__cpu_unary(kw_backend *backend, kw_tensor *out, const kw_tensor *x, enum kw_act act) {
    kw_cpu_act(kw__cpu(backend), out->data, x->data, NULL, kw_tensor_nelem(out), act);
    return 0;
}

/* y = a + b, or y = a * s when b is NULL. */
typedef struct kw_axpy_job {
    float *y;
    const float *a, *b;
    float s;
} kw_axpy_job;

static void kw_axpy_values(void *arg, int64_t i0, int64_t i1, int worker) {
    (void)worker;
    const kw_axpy_job *j = arg;
    if (j->b)
        for (int64_t i = i0; i < i1; ++i)
            j->y[i] = j->a[i] + j->b[i];
    else
        for (int64_t i = i0; i < i1; ++i)
            j->y[i] = j->a[i] * j->s;
}

int kw__cpu_add(kw_backend *backend, kw_tensor *out, const kw_tensor *a, const kw_tensor *b) {
    kw_cpu_backend *cpu = kw__cpu(backend);
    const int64_t n = kw_tensor_nelem(out);
    kw_axpy_job job = {out->data, a->data, b->data, 0.0f};
    kw__cpu_parallel_for(cpu, kw_threads_for(cpu, n), n, kw_axpy_values, &job);
    return 0;
}

int kw__cpu_scale(kw_backend *backend, kw_tensor *out, const kw_tensor *x, float s) {
    kw_cpu_backend *cpu = kw__cpu(backend);
    const int64_t n = kw_tensor_nelem(out);
    kw_axpy_job job = {out->data, x->data, NULL, s};
    kw__cpu_parallel_for(cpu, kw_threads_for(cpu, n), n, kw_axpy_values, &job);
    return 0;
}

typedef struct kw_rows_job {
    const float *xs;
    void *ys;
    int64_t N;
    int flags;
    enum kw_cpu_isa isa;
} kw_rows_job;

static void kw_softmax_rows(void *arg, int64_t r0, int64_t r1, int worker) {
    (void)worker;
    const kw_rows_job *j = arg;
    const int64_t N = j->N;
    for (int64_t r = r0; r < r1; ++r) {
        const float *xr = j->xs + r * N;
        float *yr = (float *)j->ys + r * N;
        float max = -INFINITY;
        for (int64_t i = 0; i < N; ++i)
            max = xr[i] > max ? xr[i] : max;
        for (int64_t i = 0; i < N; ++i)
            yr[i] = xr[i] - max;
        kw__cpu_exp_f32(j->isa, yr, yr, N);
        float sum = 0.0f; /* in index order, the same on every ISA */
        for (int64_t i = 0; i < N; ++i)
            sum += yr[i];
        const float inv = 1.0f / sum;
        for (int64_t i = 0; i < N; ++i)
            yr[i] *= inv;
    }
}

/* Lanes of kw_argmax_row's first pass. */
#define KW_ARGMAX_LANES 16

/* kw_argmax_row's first pass over the whole lanes of x[0, n) (n < 2^31), ROUND (a constant) the bf16 rounding of
 * kw_opm_argmax_value: lane l keeps the first best of i = l, l + 16, ... Branch-free, so that the compiler vectorizes
 * it; the rounding kw_f32_to_bf16's (kw_bf16_round_bits) for every value but a NaN, which never wins anyway. Returns
 * where it stopped. */
static inline __attribute__((always_inline)) int64_t kw_argmax_lanes(const float *x, int64_t n, const int round,
                                                                     float *bv, int32_t *bi) {
    int64_t i = 0;
    for (; i + KW_ARGMAX_LANES <= n; i += KW_ARGMAX_LANES)
        for (int l = 0; l < KW_ARGMAX_LANES; ++l) {
            const float xv = x[i + l];
            const uint32_t u = kw_f32_bits(xv);
            const float v = round ? kw_f32_from_bits(kw_bf16_round_bits(u)) : xv;
            /* a greater value, or the lane's first one; never a NaN (it compares false both ways) */
            const int win = ((v > bv[l]) | (bi[l] < 0)) & (xv == xv);
            bv[l] = win ? v : bv[l];
            bi[l] = win ? (int32_t)(i + l) : bi[l];
        }
    return i;
}

/* The first maximum of x[0, n) under kw_opm_argmax_wins (NaN never wins; -1 if all are NaN), values as
 * kw_opm_argmax_value gives them: the lanes' bests (kw_argmax_lanes), merged, then the rest in order. The rule is a
 * total order, so the result is that of one loop over all i. */
static int64_t kw_argmax_row(const float *x, int64_t n, int flags) {
    float bv[KW_ARGMAX_LANES];
    int32_t bi[KW_ARGMAX_LANES];
    for (int l = 0; l < KW_ARGMAX_LANES; ++l)
        bv[l] = -INFINITY, bi[l] = -1;
    int64_t i = 0;
    if (n <= INT32_MAX)
        i = (flags & KW_ARGMAX_ROUND_BF16) ? kw_argmax_lanes(x, n, 1, bv, bi) : kw_argmax_lanes(x, n, 0, bv, bi);
    int64_t best = -1;
    float best_v = 0.0f;
    for (int l = 0; l < KW_ARGMAX_LANES; ++l)
        if (kw_opm_argmax_wins(bv[l], bi[l], best_v, best)) best = bi[l], best_v = bv[l];
    for (; i < n; ++i) {
        const float v = kw_opm_argmax_value(x[i], flags);
        if (kw_opm_argmax_wins(v, i, best_v, best)) best = i, best_v = v;
    }
    return best;
}

static void kw_argmax_rows(void *arg, int64_t r0, int64_t r1, int worker) {
    (void)worker;
    const kw_rows_job *j = arg;
    const int64_t N = j->N;
    for (int64_t r = r0; r < r1; ++r) {
        const int64_t best = kw_argmax_row(j->xs + r * N, N, j->flags);
        ((int32_t *)j->ys)[r] = best < 0 ? 0 : (int32_t)best;
    }
}

int kw__cpu_softmax(kw_backend *backend, kw_tensor *out, const kw_tensor *x) {
    kw_cpu_backend *cpu = kw__cpu(backend);
    const int64_t N = x->ne[x->ndim - 1], R = kw_tensor_nrows(x);
    kw_rows_job job = {x->data, out->data, N, 0, cpu->isa};
    kw__cpu_parallel_for(cpu, kw_threads_for(cpu, R * N / 8), R, kw_softmax_rows, &job);
    return 0;
}

int kw__cpu_argmax(kw_backend *backend, kw_tensor *out, const kw_tensor *x, int flags) {
    kw_cpu_backend *cpu = kw__cpu(backend);
    const int64_t N = x->ne[x->ndim - 1], R = kw_tensor_nrows(x);
    kw_rows_job job = {x->data, out->data, N, flags, cpu->isa};
    kw__cpu_parallel_for(cpu, kw_threads_for(cpu, R * N), R, kw_argmax_rows, &job);
    return 0;
}

int kw__cpu_copy(kw_backend *backend, kw_tensor *dst, const kw_tensor *src) {
    kw_cpu_backend *cpu = kw__cpu(backend);
    const int64_t n = kw_tensor_nelem(src);
    if (dst->dtype == src->dtype) {
        memmove(dst->data, src->data, kw_tensor_nbytes(src));
        return 0;
    }
    if (src->dtype == KW_DTYPE_F32) {
        kw__cpu_from_f32(cpu->isa, dst->data, dst->dtype, src->data, n);
    } else if (dst->dtype == KW_DTYPE_F32) {
        kw__cpu_to_f32(cpu->isa, dst->data, src->data, src->dtype, 0, n);
    } else {
        /* bf16 <-> f16 through fp32, in chunks (the fp32 value is exact, so one rounding) */
        float buf[1024];
        const size_t dsize = kw_dtype_size(dst->dtype);
        for (int64_t i = 0; i < n; i += 1024) {
            const int64_t m = n - i < 1024 ? n - i : 1024;
            kw__cpu_to_f32(cpu->isa, buf, src->data, src->dtype, i, m);
            kw__cpu_from_f32(cpu->isa, (char *)dst->data + (size_t)i * dsize, dst->dtype, buf, m);
        }
    }
    return 0;
}
