/* kw_fusion.c: the C2C fusion pipeline (see kw_fusion.h for the semantics, c2c_spec.md §1 for the reference).
 *
 * Per fused section of T positions the work is split in two phases:
 *   transfer    for each selected sharer and each sharer layer some open receiver layer maps to: its K/V rows
 *               [start, start + T) as (T, Hs, Ds) f32 backend tensors, read directly from the sharer cache, or, with a
 *               hook, read to the host, passed to the hook and uploaded back;
 *   projection  for each receiver layer with at least one active (mapped, some gate open) selected sharer: the
 *               receiver rows are loaded, projected (sequential: sharer by sharer, in place, stored after each;
 *               parallel: every sharer from the same clean rows, residuals summed in fp32) and stored back. Storing
 *               into a bf16 cache rounds to nearest even, as torch's copy into the bf16 cache does.
 * Scratch tensors are allocated per section (T varies) and released at its end.
 */
#include "c2c/kw_fusion.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_status.h"
#include "common/kw_time.h"

/* Per sharer: the models' geometry and the bindings of its fuser. */
typedef struct kw_fusion_sh {
    kw_model *model;
    const kw_fuser *fuser;
    int32_t n_layers, n_heads, head_dim; /* the sharer model's */
    int32_t n_proj;
    kw_projector **proj;     /* n_proj, owned */
    int32_t *tgt_src;        /* per receiver layer: sharer layer, or -1 when not mapped */
    kw_projector **tgt_proj; /* per receiver layer: the projector (borrowed from proj), or NULL */
    int32_t *tgt_open;       /* per receiver layer: bit 0 key gate open, bit 1 value gate open */
} kw_fusion_sh;

struct kw_fusion {
    kw_model *receiver;
    kw_backend *backend;
    int32_t n_layers, n_heads, head_dim; /* the receiver's */
    int32_t n_sharers;
    kw_fusion_sh sh[KW_FUSION_MAX_SHARERS];
    kw_projector_ws *ws;
};

/* ------------------------------------------------------------------------------------------------------------
 * Sections
 */

int kw_fusion_sections_standard(int64_t n_prompt, int32_t mask, kw_fusion_section *out, int32_t *n_out) {
    KW_RETURN_IF(out == NULL || n_out == NULL || n_prompt < 1, KW_E_INVALID_ARG,
                 "kw_fusion_sections_standard: bad argument (n_prompt %lld)", (long long)n_prompt);
    if (n_prompt == 1) {
        out[0] = (kw_fusion_section){1, -1};
        *n_out = 1;
        return 0;
    }
    out[0] = (kw_fusion_section){n_prompt - 1, mask};
    out[1] = (kw_fusion_section){1, -1};
    *n_out = 2;
    return 0;
}

int kw_fusion_sections_proportion(int64_t n_prompt, double proportion, enum kw_fusion_order order, int32_t mask,
                                  kw_fusion_section *out, int32_t *n_out) {
    KW_RETURN_IF(out == NULL || n_out == NULL || n_prompt < 1, KW_E_INVALID_ARG,
                 "kw_fusion_sections_proportion: bad argument (n_prompt %lld)", (long long)n_prompt);
    KW_RETURN_IF(!(proportion >= 0.0 && proportion <= 1.0), KW_E_INVALID_ARG,
                 "kw_fusion_sections_proportion: proportion %g is outside [0, 1]", proportion);
    KW_RETURN_IF(order != KW_FUSION_FRONT && order != KW_FUSION_BACK, KW_E_INVALID_ARG,
                 "kw_fusion_sections_proportion: unknown order %d", (int)order);
    const int64_t instr = n_prompt - 1;
    /* int(instruction_length * proportion) in Python: the double product, truncated (it is >= 0) */
    const int64_t pos = (int64_t)((double)instr * proportion);
    const int64_t neg = instr - pos;
    /* the per-token values, then runs of equal value; a fused run never touches the final token */
    kw_fusion_section runs[3];
    int32_t n = 0;
    const int32_t fused = mask > 0 ? mask : -1; /* a non-positive mask means "no projection" (-1) */
    const int64_t first_len = order == KW_FUSION_FRONT ? pos : neg, second_len = order == KW_FUSION_FRONT ? neg : pos;
    const int32_t first_val = order == KW_FUSION_FRONT ? fused : -1, second_val = order == KW_FUSION_FRONT ? -1 : fused;
    const struct {
        int64_t len;
        int32_t val;
    } parts[3] = {{first_len, first_val}, {second_len, second_val}, {1, -1}};
    for (int i = 0; i < 3; ++i) {
        if (parts[i].len == 0) continue;
        if (n > 0 && runs[n - 1].index == parts[i].val)
            runs[n - 1].length += parts[i].len;
        else
            runs[n++] = (kw_fusion_section){parts[i].len, parts[i].val};
    }
    memcpy(out, runs, (size_t)n * sizeof *runs);
    *n_out = n;
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * Setup
 */

static void kw_fusion_sh_free(kw_fusion_sh *s) {
    for (int32_t i = 0; s->proj && i < s->n_proj; ++i)
        kw_projector_free(s->proj[i]);
    free(s->proj);
    free(s->tgt_src);
    free(s->tgt_proj);
    free(s->tgt_open);
    memset(s, 0, sizeof *s);
}

void kw_fusion_free(kw_fusion *f) {
    if (f == NULL) return;
    for (int32_t i = 0; i < f->n_sharers; ++i)
        kw_fusion_sh_free(&f->sh[i]);
    kw_projector_ws_free(f->ws);
    free(f);
}

static int kw_fusion_sh_init(kw_fusion *f, int32_t index, const kw_fusion_sharer *in) {
    kw_fusion_sh *s = &f->sh[index];
    KW_RETURN_IF(in->model == NULL || in->fuser == NULL, KW_E_INVALID_ARG, "fusion: sharer %d has no model or fuser",
                 (int)index);
    KW_RETURN_IF(kw_model_backend(in->model) != f->backend, KW_E_INVALID_ARG,
                 "fusion: sharer %d runs on another backend than the receiver", (int)index);
    const kw_model_config *c = kw_model_get_config(in->model);
    s->model = in->model;
    s->fuser = in->fuser;
    s->n_layers = c->n_layers;
    s->n_heads = c->n_kv_heads;
    s->head_dim = c->head_dim;
    const int rc =
        kw_fuser_check_models(in->fuser, f->n_layers, f->n_heads, f->head_dim, c->n_layers, c->n_kv_heads, c->head_dim);
    if (rc < 0) KW_FAIL(rc, "fusion: sharer %d: %s", (int)index, kw_error_detail());
    s->n_proj = in->fuser->n_projectors;
    s->proj = calloc((size_t)(s->n_proj > 0 ? s->n_proj : 1), sizeof *s->proj);
    s->tgt_src = calloc((size_t)f->n_layers, sizeof *s->tgt_src);
    s->tgt_proj = calloc((size_t)f->n_layers, sizeof *s->tgt_proj);
    s->tgt_open = calloc((size_t)f->n_layers, sizeof *s->tgt_open);
    KW_RETURN_IF(!s->proj || !s->tgt_src || !s->tgt_proj || !s->tgt_open, KW_E_NOMEM, "fusion: out of memory");
    for (int32_t t = 0; t < f->n_layers; ++t) {
        int32_t src = -1;
        const kw_fuser_projector *fp = NULL;
        s->tgt_src[t] = -1;
        if (kw_fuser_layer(in->fuser, t, &src, &fp) < 0 || fp == NULL) continue; /* not fused */
        const int32_t pi = (int32_t)(fp - in->fuser->projectors);
        KW_RETURN_IF(pi < 0 || pi >= s->n_proj || src < 0 || src >= s->n_layers, KW_E_FUSER_CONFIG,
                     "fusion: sharer %d layer mapping of receiver layer %d is out of range", (int)index, (int)t);
        if (s->proj[pi] == NULL) {
            const int prc = kw_projector_create_from_fuser(f->backend, in->fuser, pi, &s->proj[pi]);
            if (prc < 0) KW_FAIL(prc, "fusion: sharer %d: %s", (int)index, kw_error_detail());
        }
        int ko = 0, vo = 0;
        kw_projector_gates(s->proj[pi], NULL, NULL, &ko, &vo);
        s->tgt_src[t] = src;
        s->tgt_proj[t] = s->proj[pi];
        s->tgt_open[t] = (ko ? 1 : 0) | (vo ? 2 : 0);
    }
    return 0;
}

int kw_fusion_create(kw_model *receiver, const kw_fusion_sharer *sharers, int32_t n_sharers, int64_t max_rows,
                     kw_fusion **out) {
    KW_RETURN_IF(receiver == NULL || out == NULL || (n_sharers > 0 && sharers == NULL), KW_E_INVALID_ARG,
                 "kw_fusion_create: NULL argument");
    KW_RETURN_IF(n_sharers < 0 || n_sharers > KW_FUSION_MAX_SHARERS, KW_E_INVALID_ARG,
                 "kw_fusion_create: %d sharers (at most %d)", (int)n_sharers, KW_FUSION_MAX_SHARERS);
    *out = NULL;
    kw_fusion *f = calloc(1, sizeof *f);
    KW_RETURN_IF(f == NULL, KW_E_NOMEM, "kw_fusion_create: out of memory");
    const kw_model_config *rc_cfg = kw_model_get_config(receiver);
    f->receiver = receiver;
    f->backend = kw_model_backend(receiver);
    f->n_layers = rc_cfg->n_layers;
    f->n_heads = rc_cfg->n_kv_heads;
    f->head_dim = rc_cfg->head_dim;
    int rc;
    KW_CHECK(kw_projector_ws_create(f->backend, max_rows, &f->ws));
    for (int32_t i = 0; i < n_sharers; ++i) {
        f->n_sharers = i + 1;
        KW_CHECK(kw_fusion_sh_init(f, i, &sharers[i]));
    }
    *out = f;
    return 0;
out:
    kw_fusion_free(f);
    return rc;
}

/* ------------------------------------------------------------------------------------------------------------
 * One fused section
 */

/* Section-wide scratch: the sharer rows per (sharer, sharer layer) and the receiver-side rows. */
typedef struct kw_fusion_scratch {
    kw_tensor *src_k[KW_FUSION_MAX_SHARERS], *src_v[KW_FUSION_MAX_SHARERS]; /* per sharer layer, NULL data if unused */
    kw_tensor base_k, base_v, out_k, out_v, neg_k, neg_v, acc_k, acc_v;
    float *host_k, *host_v; /* hook staging */
} kw_fusion_scratch;

static void kw_fusion_scratch_free(kw_fusion *f, kw_fusion_scratch *s) {
    for (int32_t i = 0; i < f->n_sharers; ++i) {
        for (int32_t l = 0; s->src_k[i] && l < f->sh[i].n_layers; ++l) {
            kw_tensor_free(&s->src_k[i][l]);
            kw_tensor_free(&s->src_v[i][l]);
        }
        free(s->src_k[i]);
        free(s->src_v[i]);
    }
    kw_tensor_free(&s->base_k), kw_tensor_free(&s->base_v), kw_tensor_free(&s->out_k), kw_tensor_free(&s->out_v);
    kw_tensor_free(&s->neg_k), kw_tensor_free(&s->neg_v), kw_tensor_free(&s->acc_k), kw_tensor_free(&s->acc_v);
    free(s->host_k);
    free(s->host_v);
    memset(s, 0, sizeof *s);
}

typedef struct kw_fusion_run_state {
    kw_fusion *f;
    const kw_fusion_options *opt;
    kw_kvcache *cache;
    kw_kvcache *scache[KW_FUSION_MAX_SHARERS];
    kw_fusion_stats *stats;
    uint8_t *pair_fused, *pair_skipped; /* (sharer, receiver layer) flags */
} kw_fusion_run_state;

/* 1 if some receiver layer with an open gate takes its rows from sharer layer l. */
static int kw_fusion_layer_needed(const kw_fusion *f, const kw_fusion_sh *s, int32_t l) {
    for (int32_t t = 0; t < f->n_layers; ++t)
        if (s->tgt_src[t] == l && s->tgt_open[t] != 0) return 1;
    return 0;
}

/* The transfer phase: sharer rows [start, start + T) of every needed sharer layer into backend tensors. */
static int kw_fusion_do_transfer(kw_fusion_run_state *st, kw_fusion_scratch *sc, int32_t section, int64_t start,
                                 int64_t T, int32_t mask) {
    kw_fusion *f = st->f;
    for (int32_t i = 0; i < f->n_sharers; ++i) {
        if (!(mask & (1 << i))) continue;
        const kw_fusion_sh *s = &f->sh[i];
        sc->src_k[i] = calloc((size_t)s->n_layers, sizeof(kw_tensor));
        sc->src_v[i] = calloc((size_t)s->n_layers, sizeof(kw_tensor));
        KW_RETURN_IF(!sc->src_k[i] || !sc->src_v[i], KW_E_NOMEM, "fusion: out of memory");
        int32_t n_sent = 0, sent = 0;
        for (int32_t l = 0; l < s->n_layers; ++l)
            n_sent += kw_fusion_layer_needed(f, s, l);
        for (int32_t l = 0; l < s->n_layers; ++l) {
            if (!kw_fusion_layer_needed(f, s, l)) continue;
            const int64_t ne[3] = {T, s->n_heads, s->head_dim};
            KW_FORWARD(kw_tensor_alloc(f->backend, &sc->src_k[i][l], KW_DTYPE_F32, 3, ne));
            KW_FORWARD(kw_tensor_alloc(f->backend, &sc->src_v[i][l], KW_DTYPE_F32, 3, ne));
            st->stats->sharer_kv_bytes +=
                2 * T * s->n_heads * s->head_dim * (int64_t)kw_dtype_size(st->opt->sharer_cache_dtype);
            if (st->opt->hook == NULL) {
                KW_FORWARD(kw_kvcache_load_rows(st->scache[i], l, start, &sc->src_k[i][l], &sc->src_v[i][l]));
                continue;
            }
            const int64_t n = T * s->n_heads * s->head_dim;
            free(sc->host_k);
            free(sc->host_v);
            sc->host_k = malloc((size_t)n * sizeof(float));
            sc->host_v = malloc((size_t)n * sizeof(float));
            KW_RETURN_IF(!sc->host_k || !sc->host_v, KW_E_NOMEM, "fusion: out of memory");
            KW_FORWARD(kw_kvcache_read_rows(st->scache[i], l, start, T, sc->host_k, sc->host_v));
            kw_fusion_transfer xfer = {.sharer = i,
                                       .source_layer = l,
                                       .n_source_layers = s->n_layers,
                                       .layer_index = sent++,
                                       .n_layers_sent = n_sent,
                                       .section = section,
                                       .pos0 = start,
                                       .n_tokens = T,
                                       .n_heads = s->n_heads,
                                       .head_dim = s->head_dim,
                                       .cache_dtype = st->opt->sharer_cache_dtype,
                                       .k = sc->host_k,
                                       .v = sc->host_v};
            const int hrc = st->opt->hook(st->opt->hook_user, &xfer);
            if (hrc < 0) {
                if (kw_error_detail()[0] == '\0')
                    KW_FAIL(hrc, "fusion: the transfer hook failed (sharer %d, layer %d)", (int)i, (int)l);
                return hrc;
            }
            ++st->stats->hook_calls;
            st->stats->wire_bytes += xfer.wire_bytes;
            KW_FORWARD(kw_backend_upload(f->backend, &sc->src_k[i][l], 0, sc->host_k, (size_t)n * sizeof(float)));
            KW_FORWARD(kw_backend_upload(f->backend, &sc->src_v[i][l], 0, sc->host_v, (size_t)n * sizeof(float)));
            KW_FORWARD(kw_backend_synchronize(f->backend)); /* the staging buffers are reused */
        }
    }
    return kw_backend_synchronize(f->backend);
}

/* The projection phase for one receiver layer. */
static int kw_fusion_layer(kw_fusion_run_state *st, kw_fusion_scratch *sc, int32_t t, int64_t start, int32_t mask) {
    kw_fusion *f = st->f;
    const int parallel = st->opt->mode == KW_FUSION_PARALLEL;
    int32_t active = 0, any_open = 0;
    for (int32_t i = 0; i < f->n_sharers; ++i) {
        if (!(mask & (1 << i))) continue;
        const kw_fusion_sh *s = &f->sh[i];
        const size_t pair = (size_t)i * (size_t)f->n_layers + (size_t)t;
        if (s->tgt_proj[t] == NULL || s->tgt_open[t] == 0) {
            st->pair_skipped[pair] = 1;
            continue;
        }
        st->pair_fused[pair] = 1;
        active |= 1 << i;
        any_open |= s->tgt_open[t];
    }
    if (active == 0) return 0;
    KW_FORWARD(kw_kvcache_load_rows(st->cache, t, start, &sc->base_k, &sc->base_v));
    if (!parallel) {
        for (int32_t i = 0; i < f->n_sharers; ++i) {
            if (!(active & (1 << i))) continue;
            const kw_fusion_sh *s = &f->sh[i];
            const int32_t src = s->tgt_src[t], open = s->tgt_open[t];
            /* the rows as the cache holds them now (fused by the previous sharer, rounded if the cache is bf16) */
            if (active & ((1 << i) - 1))
                KW_FORWARD(kw_kvcache_load_rows(st->cache, t, start, &sc->base_k, &sc->base_v));
            const kw_projector_io io = {.src_k = &sc->src_k[i][src],
                                        .src_v = &sc->src_v[i][src],
                                        .tgt_k = &sc->base_k,
                                        .tgt_v = &sc->base_v,
                                        .out_k = (open & 1) ? &sc->base_k : NULL,
                                        .out_v = (open & 2) ? &sc->base_v : NULL};
            KW_FORWARD(kw_projector_forward(s->tgt_proj[t], f->ws, st->opt->numerics, &io));
            KW_FORWARD(kw_kvcache_store_rows(st->cache, t, start, io.out_k, io.out_v));
        }
        return 0;
    }
    /* parallel: base + sum_s (proj_s(base) - base), every term fp32 */
    KW_FORWARD(kw_backend_memset_zero(f->backend, &sc->acc_k));
    KW_FORWARD(kw_backend_memset_zero(f->backend, &sc->acc_v));
    KW_FORWARD(kw_op_scale(f->backend, &sc->neg_k, &sc->base_k, -1.0f));
    KW_FORWARD(kw_op_scale(f->backend, &sc->neg_v, &sc->base_v, -1.0f));
    for (int32_t i = 0; i < f->n_sharers; ++i) {
        if (!(active & (1 << i))) continue;
        const kw_fusion_sh *s = &f->sh[i];
        const int32_t src = s->tgt_src[t], open = s->tgt_open[t];
        const kw_projector_io io = {.src_k = &sc->src_k[i][src],
                                    .src_v = &sc->src_v[i][src],
                                    .tgt_k = &sc->base_k,
                                    .tgt_v = &sc->base_v,
                                    .out_k = (open & 1) ? &sc->out_k : NULL,
                                    .out_v = (open & 2) ? &sc->out_v : NULL};
        KW_FORWARD(kw_projector_forward(s->tgt_proj[t], f->ws, st->opt->numerics, &io));
        /* a closed branch adds (base - base) = 0 in the reference: nothing to add */
        if (open & 1) {
            KW_FORWARD(kw_op_add(f->backend, &sc->out_k, &sc->out_k, &sc->neg_k));
            KW_FORWARD(kw_op_add(f->backend, &sc->acc_k, &sc->acc_k, &sc->out_k));
        }
        if (open & 2) {
            KW_FORWARD(kw_op_add(f->backend, &sc->out_v, &sc->out_v, &sc->neg_v));
            KW_FORWARD(kw_op_add(f->backend, &sc->acc_v, &sc->acc_v, &sc->out_v));
        }
    }
    if (any_open & 1) KW_FORWARD(kw_op_add(f->backend, &sc->base_k, &sc->base_k, &sc->acc_k));
    if (any_open & 2) KW_FORWARD(kw_op_add(f->backend, &sc->base_v, &sc->base_v, &sc->acc_v));
    return kw_kvcache_store_rows(st->cache, t, start, (any_open & 1) ? &sc->base_k : NULL,
                                 (any_open & 2) ? &sc->base_v : NULL);
}

static int kw_fusion_section_fuse(kw_fusion_run_state *st, int32_t section, int64_t start, int64_t T, int32_t mask) {
    kw_fusion *f = st->f;
    kw_fusion_scratch sc;
    memset(&sc, 0, sizeof sc);
    int rc;
    uint64_t t0 = kw_time_now_ns();
    KW_CHECK(kw_fusion_do_transfer(st, &sc, section, start, T, mask));
    const uint64_t t1 = kw_time_now_ns();
    st->stats->transfer_ms += kw_time_ms(t0, t1);

    const int64_t ne[3] = {T, f->n_heads, f->head_dim};
    kw_tensor *bufs[] = {&sc.base_k, &sc.base_v, &sc.out_k, &sc.out_v, &sc.neg_k, &sc.neg_v, &sc.acc_k, &sc.acc_v};
    const size_t nbufs = st->opt->mode == KW_FUSION_PARALLEL ? 8 : 2;
    for (size_t b = 0; b < nbufs; ++b)
        KW_CHECK(kw_tensor_alloc(f->backend, bufs[b], KW_DTYPE_F32, 3, ne));
    for (int32_t t = 0; t < f->n_layers; ++t)
        KW_CHECK(kw_fusion_layer(st, &sc, t, start, mask));
    KW_CHECK(kw_backend_synchronize(f->backend));
    st->stats->projection_ms += kw_time_ms(t1, kw_time_now_ns());
    st->stats->tokens_fused += T;
out:
    kw_fusion_scratch_free(f, &sc);
    return rc;
}

/* ------------------------------------------------------------------------------------------------------------
 * The run
 */

static int kw_fusion_check_options(const kw_fusion *f, kw_kvcache *cache, const int32_t *ids, int64_t n,
                                   const kw_fusion_options *opt) {
    KW_RETURN_IF(cache == NULL || ids == NULL || opt == NULL || n < 1, KW_E_INVALID_ARG,
                 "kw_fusion_run: NULL argument or empty prompt");
    KW_RETURN_IF(kw_kvcache_length(cache) != 0, KW_E_INVALID_ARG,
                 "kw_fusion_run: the receiver cache must be empty (it holds %lld rows)",
                 (long long)kw_kvcache_length(cache));
    KW_RETURN_IF(kw_kvcache_backend(cache) != f->backend || kw_kvcache_n_layers(cache) != f->n_layers ||
                     kw_kvcache_n_kv_heads(cache) != f->n_heads || kw_kvcache_head_dim(cache) != f->head_dim,
                 KW_E_INVALID_ARG, "kw_fusion_run: the cache does not belong to the receiver");
    KW_RETURN_IF(opt->sections == NULL || opt->n_sections < 1, KW_E_INVALID_ARG, "kw_fusion_run: no sections");
    KW_RETURN_IF(opt->mode != KW_FUSION_SEQUENTIAL && opt->mode != KW_FUSION_PARALLEL, KW_E_INVALID_ARG,
                 "kw_fusion_run: unknown mode %d", (int)opt->mode);
    KW_RETURN_IF(kw_projector_numerics_name(opt->numerics) == NULL, KW_E_INVALID_ARG,
                 "kw_fusion_run: unknown numerics %d", (int)opt->numerics);
    KW_RETURN_IF(opt->sharer_cache_dtype != KW_DTYPE_BF16 && opt->sharer_cache_dtype != KW_DTYPE_F32, KW_E_INVALID_ARG,
                 "kw_fusion_run: sharer caches are bf16 or f32, not %s", kw_dtype_name(opt->sharer_cache_dtype));
    int64_t total = 0;
    for (int32_t i = 0; i < opt->n_sections; ++i) {
        const kw_fusion_section *s = &opt->sections[i];
        KW_RETURN_IF(s->length < 1 || s->length > n - total, KW_E_INVALID_ARG,
                     "kw_fusion_run: section %d has length %lld (the sections must cover the %lld prompt tokens)",
                     (int)i, (long long)s->length, (long long)n);
        /* the last section's value is never read (as in the reference), so only the others must fit the sharers */
        KW_RETURN_IF(i + 1 < opt->n_sections && s->index > 0 && (s->index >> f->n_sharers) != 0, KW_E_INVALID_ARG,
                     "kw_fusion_run: section %d selects sharer bits 0x%x but there are %d sharers", (int)i,
                     (unsigned)s->index, (int)f->n_sharers);
        total += s->length;
    }
    KW_RETURN_IF(total != n, KW_E_INVALID_ARG, "kw_fusion_run: the sections cover %lld of %lld prompt tokens",
                 (long long)total, (long long)n);
    return 0;
}

int kw_fusion_run(kw_fusion *f, kw_kvcache *cache, const int32_t *ids, int64_t n, const kw_fusion_options *opt,
                  kw_fusion_result *out) {
    KW_RETURN_IF(f == NULL || out == NULL, KW_E_INVALID_ARG, "kw_fusion_run: NULL argument");
    memset(out, 0, sizeof *out);
    KW_FORWARD(kw_fusion_check_options(f, cache, ids, n, opt));
    kw_fusion_run_state st = {.f = f, .opt = opt, .cache = cache, .stats = &out->stats};
    int rc = 0;
    const int64_t prefix = n - opt->sections[opt->n_sections - 1].length;
    const size_t pairs = (size_t)(f->n_sharers > 0 ? f->n_sharers : 1) * (size_t)f->n_layers;
    st.pair_fused = calloc(pairs, 1);
    st.pair_skipped = calloc(pairs, 1);
    KW_CHECK_IF(!st.pair_fused || !st.pair_skipped, KW_E_NOMEM, "kw_fusion_run: out of memory");
    if (prefix > 0)
        for (int32_t i = 0; i < f->n_sharers; ++i)
            KW_CHECK(kw_model_create_cache(f->sh[i].model, prefix, opt->sharer_cache_dtype, &st.scache[i]));
    for (int32_t i = 0; i < f->n_sharers && prefix > 0 && opt->sharer_pad; ++i)
        for (int64_t p = 0; opt->sharer_pad[i] && p < prefix; ++p)
            if (opt->sharer_pad[i][p]) KW_CHECK(kw_kvcache_set_valid(st.scache[i], p, 1, 0));

    int64_t start = 0;
    for (int32_t sec = 0; sec + 1 < opt->n_sections; ++sec) {
        const int64_t len = opt->sections[sec].length;
        uint64_t t0 = kw_time_now_ns();
        KW_CHECK(kw_model_prefill(f->receiver, cache, ids + start, len));
        uint64_t t1 = kw_time_now_ns();
        out->stats.receiver_prefill_ms += kw_time_ms(t0, t1);
        for (int32_t i = 0; i < f->n_sharers; ++i)
            KW_CHECK(kw_model_prefill(f->sh[i].model, st.scache[i],
                                      (opt->sharer_ids && opt->sharer_ids[i] ? opt->sharer_ids[i] : ids) + start, len));
        out->stats.sharer_prefill_ms += kw_time_ms(t1, kw_time_now_ns());
        if (opt->sections[sec].index > 0)
            KW_CHECK(kw_fusion_section_fuse(&st, sec, start, len, opt->sections[sec].index));
        start += len;
    }
    KW_CHECK(kw_generate_greedy(f->receiver, cache, ids + start, n - start, &opt->gen, &out->gen));
    out->stats.last_prompt_ms = out->gen.prefill_ms;
    out->stats.decode_ms = out->gen.decode_ms;
    out->stats.n_decode = out->gen.n_decode;
    for (size_t p = 0; p < pairs; ++p) {
        out->stats.layers_fused += st.pair_fused[p];
        out->stats.layers_skipped += st.pair_skipped[p] && !st.pair_fused[p];
    }
out:
    for (int32_t i = 0; i < f->n_sharers; ++i)
        kw_kvcache_free(st.scache[i]);
    free(st.pair_fused);
    free(st.pair_skipped);
    if (rc < 0) {
        kw_generate_result_free(&out->gen);
        memset(out, 0, sizeof *out);
    }
    return rc;
}

void kw_fusion_result_free(kw_fusion_result *out) {
    if (out == NULL) return;
    kw_generate_result_free(&out->gen);
    memset(out, 0, sizeof *out);
}
