/* kw_cpu_attention.c: causal GQA attention over an f32 or bf16 KV cache on the CPU.
 *
 * One work item is a (query token, kv head) pair: the kv head's K rows are read once for the whole group of query
 * heads that share it (GQA), and every query row is computed on its own, so its bits do not depend on the other rows
 * of the call (how a prompt was chunked), on the thread that runs it, or on the ISA. For query t (cache position
 * p = q_pos0 + t) the visible rows are j <= p, j < n_kv, kv_mask[j] != 0 and, with a sliding window W, j > p - W; a
 * query that sees nothing gets zeros. The arithmetic, identical on every ISA (kw_cpu_attention_isa.h):
 *   s_j = dot16(q, k_j) * scale     dot16: 16 lanes, lane l an fma chain over d = l, l + 16, ..., kw_v16_hsum's tree
 *   m   = max s_j                   exact (AVX-512 prefill blocks: per lane, then across; the same value, up to the
 *                                   sign of a zero maximum, which exp(s_j - m) does not see)
 *   e_j = exp(s_j - m)              kw_cpu_math.c's exp; masked rows give 0
 *   S   = sum16(e_lo .. e_hi)       lane l adds rows lo + l, lo + l + 16, ... in order, then the same tree
 *   o_d = (fma chain over j of e_j v_j[d], rows with e_j = 0 skipped) * (1 / S)
 * The paged quantized cache (kw__cpu_attention_kvq) runs the same arithmetic with each K and V value rebuilt in
 * registers as fl(code * scale), so it equals this kernel on an f32 cache of those values, bit for bit.
 * Not here: the projection of q/k/v.
 */
#include "kernels/cpu/kw_cpu.h"

#include <math.h>
#include <pthread.h>
#include <string.h>

#include "common/kw_status.h"
#include "kernels/cpu/kw_cpu_simd.h"
#include "kernels/kw_kvq_format.h"
#include "kernels/kw_op_math.h"

/* Group sizes above this run in chunks (scores for every head of a chunk live in scratch together). */
#define KW_ATTN_MAX_GROUP 16

/* The value rows an output pass reads (kw_attn_out_fixed): an f32/bf16 cache (vscales NULL), or a paged quantized
 * cache's codes (base, row_bytes) with their scale bytes and the 256 scale values. All borrowed. */
typedef struct kw_attn_values {
    const char *base;
    size_t row_bytes;
    enum kw_dtype dt;
    const uint8_t *vscales;
    const float *scale_of;
    enum kw_kvq_codec codec;
    int64_t D;
} kw_attn_values;

#define KW_SIMD_SFX    scalar
#define KW_SIMD_TARGET /* portable */
#define KW_SIMD_ISA    KW_CPU_ISA_SCALAR
#include "kernels/cpu/kw_cpu_attention_isa.h"
#undef KW_SIMD_SFX
#undef KW_SIMD_TARGET
#undef KW_SIMD_ISA

#if KW_CPU_X86
#define KW_SIMD_SFX    avx2
#define KW_SIMD_TARGET KW_TARGET_AVX2
#define KW_SIMD_ISA    KW_CPU_ISA_AVX2
#include "kernels/cpu/kw_cpu_attention_isa.h"
#undef KW_SIMD_SFX
#undef KW_SIMD_TARGET
#undef KW_SIMD_ISA

#define KW_SIMD_SFX    avx512
#define KW_SIMD_TARGET KW_TARGET_AVX512
#define KW_SIMD_ISA    KW_CPU_ISA_AVX512
#include "kernels/cpu/kw_cpu_attention_isa.h"
#undef KW_SIMD_SFX
#undef KW_SIMD_TARGET
#undef KW_SIMD_ISA
#endif

static void kw_attn_item(enum kw_cpu_isa isa, float *out, const float *q, int64_t nh, const char *kbase,
                         const char *vbase, enum kw_dtype dt, int64_t D, int64_t lo, int64_t hi, const uint8_t *mask,
                         float scale, float *scores, int64_t n_kv, int prefetch) {
#if KW_CPU_X86
    if (isa == KW_CPU_ISA_AVX512) {
        kw_attn_item_avx512(out, q, nh, kbase, vbase, dt, D, lo, hi, mask, scale, scores, n_kv, prefetch);
        return;
    }
    if (isa == KW_CPU_ISA_AVX2) {
        kw_attn_item_avx2(out, q, nh, kbase, vbase, dt, D, lo, hi, mask, scale, scores, n_kv, prefetch);
        return;
    }
#endif
    (void)isa;
    kw_attn_item_scalar(out, q, nh, kbase, vbase, dt, D, lo, hi, mask, scale, scores, n_kv, prefetch);
}

/* ------------------------------------------------------------------------------------------------------------
 * Entry point
 */

typedef struct kw_attn_job {
    enum kw_cpu_isa isa;
    float *os, *scratch;
    const float *qs;
    const kw_tensor *k_cache, *v_cache;
    const uint8_t *mask;
    size_t per_thread, esize;
    int64_t T, Hq, D, Hkv, cap, group, chunk, n_kv, window, q_pos0;
    float scale;
} kw_attn_job;

static void kw_attn_task(void *arg, int64_t it, int worker) {
    const kw_attn_job *j = arg;
    const int64_t D = j->D, Hq = j->Hq, group = j->group, chunk = j->chunk, cap = j->cap;
    const int64_t T = j->T, t = it % T, kvh = it / T, p = j->q_pos0 + t;
    float *scores = j->scratch + j->per_thread * (size_t)worker;
    int64_t lo, hi; /* the rows the query sees before the mask, as the GPU computes them */
    kw_opm_attn_span(p, j->n_kv, j->window, &lo, &hi);
    const char *kbase = (const char *)j->k_cache->data + (size_t)(kvh * cap * D) * j->esize;
    const char *vbase = (const char *)j->v_cache->data + (size_t)(kvh * cap * D) * j->esize;
    for (int64_t h0 = kvh * group; h0 < (kvh + 1) * group; h0 += chunk) {
        const int64_t nh = (kvh + 1) * group - h0 < chunk ? (kvh + 1) * group - h0 : chunk;
        float *o = j->os + (t * Hq + h0) * D;
        if (lo > hi)
            memset(o, 0, (size_t)(nh * D) * sizeof(float));
        else
            kw_attn_item(j->isa, o, j->qs + (t * Hq + h0) * D, nh, kbase, vbase, j->k_cache->dtype, D, lo, hi, j->mask,
                         j->scale, scores, j->n_kv, T <= KW_ATTN_PREFETCH_MAX_T);
    }
}

int kw__cpu_attention(kw_backend *backend, kw_tensor *out, const kw_tensor *q, const kw_tensor *k_cache,
                      const kw_tensor *v_cache, const kw_attention_params *params) {
    kw_cpu_backend *cpu = kw__cpu(backend);
    const int64_t T = q->ne[0], Hq = q->ne[1], D = q->ne[2], Hkv = k_cache->ne[0], cap = k_cache->ne[1];
    const int64_t group = Hq / Hkv, chunk = group < KW_ATTN_MAX_GROUP ? group : KW_ATTN_MAX_GROUP;
    const size_t esize = kw_dtype_size(k_cache->dtype);
    const uint8_t *mask = params->kv_mask ? params->kv_mask->data : NULL;
    const int64_t n_kv = params->n_kv, window = params->sliding_window, q_pos0 = params->q_pos0;
    const float scale = params->scale;
    const float *qs = q->data;
    float *os = out->data;

    const int64_t items = T * Hkv;
    const int64_t work = T * Hq * (q_pos0 + T) * D;
    const int nt =
        (int)(work >= KW_CPU_PARALLEL_MIN * 4 && items > 1 ? (items < cpu->n_threads ? items : cpu->n_threads) : 1);
    /* per thread: chunk score rows of n_kv */
    const size_t per_thread = (size_t)(chunk * n_kv + 16);
    float *scratch;
    KW_FORWARD(kw__cpu_scratch(cpu, per_thread * (size_t)nt, &scratch));

    kw_attn_job job = {cpu->isa, os, scratch, qs,  k_cache, v_cache, mask, per_thread, esize,  T,
                       Hq,       D,  Hkv,     cap, group,   chunk,   n_kv, window,     q_pos0, scale};
    kw_cpu_pool_run(cpu->pool, nt, items, kw_attn_task, &job);
    return 0;
}

/* The 256 values of the scale byte, computed once. */
static float kw_attnq_scales[256];
static pthread_once_t kw_attnq_scales_once = PTHREAD_ONCE_INIT;
static void kw_attnq_scales_init(void) {
    for (int s = 0; s < 256; ++s)
        kw_attnq_scales[s] = kw_kvq_scale((uint8_t)s);
}

static void kw_attnq_item(enum kw_cpu_isa isa, float *out, const float *q, int64_t nh, const uint8_t *khead,
                          const kw_kvq_geom *kg, const uint8_t *vhead, const kw_kvq_geom *vg, int64_t full, int64_t lo,
                          int64_t hi, const uint8_t *mask, float scale, float *scores, int64_t n_kv, float *ksc,
                          const float *scale_of) {
#if KW_CPU_X86
    if (isa == KW_CPU_ISA_AVX512) {
        kw_attnq_item_avx512(out, q, nh, khead, kg, vhead, vg, full, lo, hi, mask, scale, scores, n_kv, ksc, scale_of);
        return;
    }
    if (isa == KW_CPU_ISA_AVX2) {
        kw_attnq_item_avx2(out, q, nh, khead, kg, vhead, vg, full, lo, hi, mask, scale, scores, n_kv, ksc, scale_of);
        return;
    }
#endif
    (void)isa;
    kw_attnq_item_scalar(out, q, nh, khead, kg, vhead, vg, full, lo, hi, mask, scale, scores, n_kv, ksc, scale_of);
}

typedef struct kw_attnq_job {
    enum kw_cpu_isa isa;
    float *os, *scratch;
    const float *qs, *scale_of;
    const kw_tensor *k_store, *v_store;
    const kw_kvq_geom *kg, *vg;
    const uint8_t *mask;
    size_t per_thread, kbytes, vbytes;
    int64_t Hq, D, Hkv, group, chunk, full, n_kv, window, q_pos0;
    float scale;
} kw_attnq_job;

static void kw_attnq_task(void *arg, int64_t it, int worker) {
    const kw_attnq_job *j = arg;
    const int64_t Hkv = j->Hkv, D = j->D, Hq = j->Hq, group = j->group, chunk = j->chunk;
    const int64_t t = it / Hkv, kvh = it % Hkv, p = j->q_pos0 + t;
    float *scores = j->scratch + j->per_thread * (size_t)worker, *ksc = scores + chunk * j->n_kv + 16;
    int64_t lo, hi;
    kw_opm_attn_span(p, j->n_kv, j->window, &lo, &hi);
    const uint8_t *khead = (const uint8_t *)j->k_store->data + (size_t)kvh * j->kbytes;
    const uint8_t *vhead = (const uint8_t *)j->v_store->data + (size_t)kvh * j->vbytes;
    for (int64_t h0 = kvh * group; h0 < (kvh + 1) * group; h0 += chunk) {
        const int64_t nh = (kvh + 1) * group - h0 < chunk ? (kvh + 1) * group - h0 : chunk;
        float *o = j->os + (t * Hq + h0) * D;
        if (lo > hi)
            memset(o, 0, (size_t)(nh * D) * sizeof(float));
        else
            kw_attnq_item(j->isa, o, j->qs + (t * Hq + h0) * D, nh, khead, j->kg, vhead, j->vg, j->full, lo, hi,
                          j->mask, j->scale, scores, j->n_kv, ksc, j->scale_of);
    }
}

int kw__cpu_attention_kvq(kw_backend *backend, kw_tensor *out, const kw_tensor *q, const kw_tensor *k_store,
                          const kw_kvq_geom *kg, const kw_tensor *v_store, const kw_kvq_geom *vg,
                          const kw_attention_params *params, int64_t n_rows) {
    kw_cpu_backend *cpu = kw__cpu(backend);
    const int64_t T = q->ne[0], Hq = q->ne[1], D = q->ne[2], Hkv = kg->H;
    const int64_t group = Hq / Hkv, chunk = group < KW_ATTN_MAX_GROUP ? group : KW_ATTN_MAX_GROUP;
    const int64_t full = n_rows / kg->page_tokens * kg->page_tokens;
    const size_t kbytes = kw_kvq_head_bytes(kg), vbytes = kw_kvq_head_bytes(vg);
    const uint8_t *mask = params->kv_mask ? params->kv_mask->data : NULL;
    const int64_t n_kv = params->n_kv, window = params->sliding_window, q_pos0 = params->q_pos0;
    const float scale = params->scale;
    const float *qs = q->data;
    float *os = out->data;
    pthread_once(&kw_attnq_scales_once, kw_attnq_scales_init);
    const float *scale_of = kw_attnq_scales;

    const int64_t items = T * Hkv;
    const int64_t work = T * Hq * (q_pos0 + T) * D;
    const int nt =
        (int)(work >= KW_CPU_PARALLEL_MIN * 4 && items > 1 ? (items < cpu->n_threads ? items : cpu->n_threads) : 1);
    /* per thread: chunk score rows of n_kv, then D decoded key scales and a rebuilt key row of D */
    const size_t per_thread = (size_t)(chunk * n_kv + 16 + 2 * D);
    float *scratch;
    KW_FORWARD(kw__cpu_scratch(cpu, per_thread * (size_t)nt, &scratch));

    kw_attnq_job job = {cpu->isa, os,    scratch,    qs,     scale_of, k_store, v_store, kg,
                        vg,       mask,  per_thread, kbytes, vbytes,   Hq,      D,       Hkv,
                        group,    chunk, full,       n_kv,   window,   q_pos0,  scale};
    kw_cpu_pool_run(cpu->pool, nt, items, kw_attnq_task, &job);
    return 0;
}
