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

/* Per sharer: its geometry, its model when it runs in process, and the bindings of its fuser. */
typedef struct kw_fusion_sh {
    kw_model *model; /* NULL unless kw_fusion_run may prefill it */
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
    KW_RETURN_IF(in->fuser == NULL, KW_E_INVALID_ARG, "fusion: sharer %d has no fuser", (int)index);
    s->model = in->model;
    s->fuser = in->fuser;
    s->n_layers = in->n_layers;
    s->n_heads = in->n_kv_heads;
    s->head_dim = in->head_dim;
    if (in->model) {
        KW_RETURN_IF(kw_model_backend(in->model) != f->backend, KW_E_INVALID_ARG,
                     "fusion: sharer %d runs on another backend than the receiver", (int)index);
        const kw_model_config *c = kw_model_get_config(in->model);
        KW_RETURN_IF((s->n_layers && s->n_layers != c->n_layers) || (s->n_heads && s->n_heads != c->n_kv_heads) ||
                         (s->head_dim && s->head_dim != c->head_dim),
                     KW_E_INVALID_ARG, "fusion: sharer %d's geometry disagrees with its model", (int)index);
        s->n_layers = c->n_layers;
        s->n_heads = c->n_kv_heads;
        s->head_dim = c->head_dim;
    }
    KW_RETURN_IF(s->n_layers < 1 || s->n_heads < 1 || s->head_dim < 1, KW_E_INVALID_ARG,
                 "fusion: sharer %d has no model and no geometry", (int)index);
    const int rc =
        kw_fuser_check_models(in->fuser, f->n_layers, f->n_heads, f->head_dim, s->n_layers, s->n_heads, s->head_dim);
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

/* 1 if some receiver layer with an open gate takes its rows from sharer layer l. */
static int kw_fusion_layer_needed(const kw_fusion *f, const kw_fusion_sh *s, int32_t l) {
    for (int32_t t = 0; t < f->n_layers; ++t)
        if (s->tgt_src[t] == l && s->tgt_open[t] != 0) return 1;
    return 0;
}

int32_t kw_fusion_n_sharers(const kw_fusion *f) {
    return f ? f->n_sharers : 0;
}

int kw_fusion_sharer_geometry(const kw_fusion *f, int32_t sharer, int32_t *n_layers, int32_t *n_kv_heads,
                              int32_t *head_dim) {
    KW_RETURN_IF(f == NULL || sharer < 0 || sharer >= f->n_sharers, KW_E_INVALID_ARG,
                 "kw_fusion_sharer_geometry: no sharer %d", (int)sharer);
    if (n_layers) *n_layers = f->sh[sharer].n_layers;
    if (n_kv_heads) *n_kv_heads = f->sh[sharer].n_heads;
    if (head_dim) *head_dim = f->sh[sharer].head_dim;
    return 0;
}

int kw_fusion_needed_layers(const kw_fusion *f, int32_t sharer, int32_t *layers, int32_t cap, int32_t *n) {
    KW_RETURN_IF(f == NULL || n == NULL || (cap > 0 && layers == NULL), KW_E_INVALID_ARG,
                 "kw_fusion_needed_layers: NULL argument");
    KW_RETURN_IF(sharer < 0 || sharer >= f->n_sharers, KW_E_INVALID_ARG, "kw_fusion_needed_layers: no sharer %d",
                 (int)sharer);
    const kw_fusion_sh *s = &f->sh[sharer];
    int32_t count = 0;
    for (int32_t l = 0; l < s->n_layers; ++l) {
        if (!kw_fusion_layer_needed(f, s, l)) continue;
        KW_RETURN_IF(count >= cap, KW_E_LIMIT, "kw_fusion_needed_layers: more than %d layers", (int)cap);
        layers[count++] = l;
    }
    *n = count;
    return 0;
}

int kw_fusion_layer_targets(const kw_fusion *f, int32_t sharer, int32_t source_layer, int32_t *targets, int32_t cap,
                            int32_t *n) {
    KW_RETURN_IF(f == NULL || n == NULL || (cap > 0 && targets == NULL), KW_E_INVALID_ARG,
                 "kw_fusion_layer_targets: NULL argument");
    KW_RETURN_IF(sharer < 0 || sharer >= f->n_sharers, KW_E_INVALID_ARG, "kw_fusion_layer_targets: no sharer %d",
                 (int)sharer);
    const kw_fusion_sh *s = &f->sh[sharer];
    int32_t count = 0;
    for (int32_t t = 0; t < f->n_layers; ++t) {
        if (s->tgt_src[t] != source_layer || s->tgt_open[t] == 0) continue;
        KW_RETURN_IF(count >= cap, KW_E_LIMIT, "kw_fusion_layer_targets: more than %d layers", (int)cap);
        targets[count++] = t;
    }
    *n = count;
    return 0;
}

int kw_fusion_project_v(kw_fusion *f, int32_t sharer, int32_t target, enum kw_projector_numerics numerics, int64_t n,
                        const float *src_k, const float *src_v, const float *base_k, const float *base_v,
                        float *out_v) {
    KW_RETURN_IF(f == NULL || n < 1 || !src_k || !src_v || !base_k || !base_v || !out_v, KW_E_INVALID_ARG,
                 "kw_fusion_project_v: bad argument");
    KW_RETURN_IF(sharer < 0 || sharer >= f->n_sharers || target < 0 || target >= f->n_layers ||
                     f->sh[sharer].tgt_proj[target] == NULL,
                 KW_E_INVALID_ARG, "kw_fusion_project_v: sharer %d has no projector for receiver layer %d", (int)sharer,
                 (int)target);
    const kw_fusion_sh *sh = &f->sh[sharer];
    const int64_t ne_s[3] = {n, sh->n_heads, sh->head_dim}, ne_t[3] = {n, f->n_heads, f->head_dim};
    const size_t bytes_s = (size_t)(n * sh->n_heads * sh->head_dim) * sizeof(float);
    const size_t bytes_t = (size_t)(n * f->n_heads * f->head_dim) * sizeof(float);
    kw_tensor sk = {0}, sv = {0}, bk = {0}, bv = {0}, ov = {0};
    int rc;
    KW_CHECK(kw_tensor_alloc(f->backend, &sk, KW_DTYPE_F32, 3, ne_s));
    KW_CHECK(kw_tensor_alloc(f->backend, &sv, KW_DTYPE_F32, 3, ne_s));
    KW_CHECK(kw_tensor_alloc(f->backend, &bk, KW_DTYPE_F32, 3, ne_t));
    KW_CHECK(kw_tensor_alloc(f->backend, &bv, KW_DTYPE_F32, 3, ne_t));
    KW_CHECK(kw_tensor_alloc(f->backend, &ov, KW_DTYPE_F32, 3, ne_t));
    KW_CHECK(kw_backend_upload(f->backend, &sk, 0, src_k, bytes_s));
    KW_CHECK(kw_backend_upload(f->backend, &sv, 0, src_v, bytes_s));
    KW_CHECK(kw_backend_upload(f->backend, &bk, 0, base_k, bytes_t));
    KW_CHECK(kw_backend_upload(f->backend, &bv, 0, base_v, bytes_t));
    const kw_projector_io io = {.src_k = &sk, .src_v = &sv, .tgt_k = &bk, .tgt_v = &bv, .out_v = &ov};
    KW_CHECK(kw_projector_forward(sh->tgt_proj[target], f->ws, numerics, &io));
    KW_CHECK(kw_backend_download(f->backend, out_v, &ov, 0, bytes_t));
    KW_CHECK(kw_backend_synchronize(f->backend));
out:
    kw_backend_synchronize(f->backend);
    kw_tensor_free(&sk), kw_tensor_free(&sv), kw_tensor_free(&bk), kw_tensor_free(&bv), kw_tensor_free(&ov);
    return rc;
}

/* ------------------------------------------------------------------------------------------------------------
 * The session: state of one request on the receiver side
 */

/* The rows of one sharer layer staged for the current section. */
typedef struct kw_fusion_staged {
    int present;
    int64_t n_rows;
    int64_t *positions; /* n_rows cache positions (owned) */
    kw_tensor k, v;     /* (n_rows, sharer heads, sharer head_dim) f32, owned */
    /* per-target subsets (kw_fusion_rows.target_masks), or NULL: per receiver layer, NULL (every row) or a bitmap
     * over the section's positions; a target's subset is gathered from k, v on the backend (owned) */
    uint8_t **tmask;
} kw_fusion_staged;

struct kw_fusion_session {
    kw_fusion *f;
    kw_fusion_options opt; /* copied; sections point at the copy below */
    kw_fusion_section *sections;
    kw_kvcache *cache;
    const int32_t *ids;
    int64_t n;
    int32_t next_prefill; /* the next section to prefill */
    int32_t current;      /* the section prefilled and not ended, or -1 */
    int64_t cur_start, cur_len;
    int32_t cur_mask;
    kw_fusion_staged *staged[KW_FUSION_MAX_SHARERS]; /* per sharer layer, for the current section */
    uint8_t *fused;                                  /* (sharer, receiver layer) fused in the current section */
    uint8_t *covered;                                /* per position of the current section: got rows */
    uint8_t *counted;                                /* per prompt position: in tokens_fused (a reopened section) */
    uint8_t *pair_fused, *pair_skipped;              /* (sharer, receiver layer), over the whole request */
    kw_tensor base_k, base_v, out_k, out_v, neg_k, neg_v, acc_k, acc_v; /* (section length, H, D) scratch */
    kw_fusion_stats stats;
};

static void kw_fusion_drop_staged(kw_fusion_session *s) {
    for (int32_t i = 0; i < s->f->n_sharers; ++i) {
        for (int32_t l = 0; s->staged[i] && l < s->f->sh[i].n_layers; ++l) {
            kw_fusion_staged *st = &s->staged[i][l];
            kw_tensor_free(&st->k);
            kw_tensor_free(&st->v);
            free(st->positions);
            for (int32_t t = 0; st->tmask && t < s->f->n_layers; ++t)
                free(st->tmask[t]);
            free(st->tmask);
        }
        free(s->staged[i]);
        s->staged[i] = NULL;
    }
    kw_tensor *bufs[] = {&s->base_k, &s->base_v, &s->out_k, &s->out_v, &s->neg_k, &s->neg_v, &s->acc_k, &s->acc_v};
    for (size_t b = 0; b < sizeof bufs / sizeof bufs[0]; ++b)
        kw_tensor_free(bufs[b]);
    free(s->covered);
    s->covered = NULL;
}

void kw_fusion_session_free(kw_fusion_session *s) {
    if (s == NULL) return;
    kw_backend_synchronize(s->f->backend);
    kw_fusion_drop_staged(s);
    free(s->sections);
    free(s->fused);
    free(s->pair_fused);
    free(s->pair_skipped);
    free(s->counted);
    free(s);
}

const kw_fusion_stats *kw_fusion_session_stats(const kw_fusion_session *s) {
    return s ? &s->stats : NULL;
}

static int kw_fusion_check_options(const kw_fusion *f, kw_kvcache *cache, const int32_t *ids, int64_t n,
                                   const kw_fusion_options *opt) {
    KW_RETURN_IF(cache == NULL || ids == NULL || opt == NULL || n < 1, KW_E_INVALID_ARG,
                 "kw_fusion: NULL argument or empty prompt");
    KW_RETURN_IF(kw_kvcache_length(cache) != 0, KW_E_INVALID_ARG,
                 "kw_fusion: the receiver cache must be empty (it holds %lld rows)",
                 (long long)kw_kvcache_length(cache));
    KW_RETURN_IF(kw_kvcache_backend(cache) != f->backend || kw_kvcache_n_layers(cache) != f->n_layers ||
                     kw_kvcache_n_kv_heads(cache) != f->n_heads || kw_kvcache_head_dim(cache) != f->head_dim,
                 KW_E_INVALID_ARG, "kw_fusion: the cache does not belong to the receiver");
    KW_RETURN_IF(opt->sections == NULL || opt->n_sections < 1, KW_E_INVALID_ARG, "kw_fusion: no sections");
    KW_RETURN_IF(opt->mode != KW_FUSION_SEQUENTIAL && opt->mode != KW_FUSION_PARALLEL, KW_E_INVALID_ARG,
                 "kw_fusion: unknown mode %d", (int)opt->mode);
    KW_RETURN_IF(kw_projector_numerics_name(opt->numerics) == NULL, KW_E_INVALID_ARG, "kw_fusion: unknown numerics %d",
                 (int)opt->numerics);
    int64_t total = 0;
    for (int32_t i = 0; i < opt->n_sections; ++i) {
        const kw_fusion_section *s = &opt->sections[i];
        KW_RETURN_IF(s->length < 1 || s->length > n - total, KW_E_INVALID_ARG,
                     "kw_fusion: section %d has length %lld (the sections must cover the %lld prompt tokens)", (int)i,
                     (long long)s->length, (long long)n);
        /* the last section's value is never read (as in the reference), so only the others must fit the sharers */
        KW_RETURN_IF(i + 1 < opt->n_sections && s->index > 0 && (s->index >> f->n_sharers) != 0, KW_E_INVALID_ARG,
                     "kw_fusion: section %d selects sharer bits 0x%x but there are %d sharers", (int)i,
                     (unsigned)s->index, (int)f->n_sharers);
        total += s->length;
    }
    KW_RETURN_IF(total != n, KW_E_INVALID_ARG, "kw_fusion: the sections cover %lld of %lld prompt tokens",
                 (long long)total, (long long)n);
    return 0;
}

int kw_fusion_begin(kw_fusion *f, kw_kvcache *cache, const int32_t *ids, int64_t n, const kw_fusion_options *opt,
                    kw_fusion_session **out) {
    KW_RETURN_IF(f == NULL || out == NULL, KW_E_INVALID_ARG, "kw_fusion_begin: NULL argument");
    *out = NULL;
    KW_FORWARD(kw_fusion_check_options(f, cache, ids, n, opt));
    kw_fusion_session *s = calloc(1, sizeof *s);
    KW_RETURN_IF(s == NULL, KW_E_NOMEM, "kw_fusion_begin: out of memory");
    s->f = f;
    s->opt = *opt;
    s->cache = cache;
    s->ids = ids;
    s->n = n;
    s->current = -1;
    const size_t pairs = (size_t)(f->n_sharers > 0 ? f->n_sharers : 1) * (size_t)f->n_layers;
    s->sections = malloc((size_t)opt->n_sections * sizeof *s->sections);
    s->fused = calloc(pairs, 1);
    s->pair_fused = calloc(pairs, 1);
    s->pair_skipped = calloc(pairs, 1);
    s->counted = calloc((size_t)n, 1);
    if (!s->sections || !s->fused || !s->pair_fused || !s->pair_skipped || !s->counted) {
        kw_fusion_session_free(s);
        KW_FAIL(KW_E_NOMEM, "kw_fusion_begin: out of memory");
    }
    memcpy(s->sections, opt->sections, (size_t)opt->n_sections * sizeof *s->sections);
    s->opt.sections = s->sections;
    *out = s;
    return 0;
}

static int kw_fusion_open(kw_fusion_session *s, int32_t section, int64_t start, int64_t len);

int kw_fusion_prefill(kw_fusion_session *s, int32_t section) {
    KW_RETURN_IF(s == NULL, KW_E_INVALID_ARG, "kw_fusion_prefill: NULL session");
    KW_RETURN_IF(s->current >= 0, KW_E_STATE, "kw_fusion_prefill: section %d is not ended", (int)s->current);
    KW_RETURN_IF(section != s->next_prefill || section + 1 >= s->opt.n_sections, KW_E_STATE,
                 "kw_fusion_prefill: section %d out of order (next: %d of %d; the last runs in kw_fusion_generate)",
                 (int)section, (int)s->next_prefill, (int)s->opt.n_sections);
    int64_t start = 0;
    for (int32_t i = 0; i < section; ++i)
        start += s->sections[i].length;
    const int64_t len = s->sections[section].length;
    const uint64_t t0 = kw_time_now_ns();
    KW_FORWARD(kw_model_prefill(s->f->receiver, s->cache, s->ids + start, len));
    s->stats.receiver_prefill_ms += kw_time_ms(t0, kw_time_now_ns());
    s->next_prefill = section + 1;
    return kw_fusion_open(s, section, start, len);
}

int kw_fusion_reopen(kw_fusion_session *s, int32_t section) {
    KW_RETURN_IF(s == NULL, KW_E_INVALID_ARG, "kw_fusion_reopen: NULL session");
    KW_RETURN_IF(s->current >= 0, KW_E_STATE, "kw_fusion_reopen: section %d is not ended", (int)s->current);
    KW_RETURN_IF(section < 0 || section + 2 != s->opt.n_sections || s->next_prefill != section + 1 ||
                     s->sections[section].index <= 0,
                 KW_E_STATE, "kw_fusion_reopen: section %d is not the fused section before the last", (int)section);
    const int64_t start = s->n - s->sections[section + 1].length - s->sections[section].length;
    KW_RETURN_IF(kw_kvcache_length(s->cache) != start + s->sections[section].length, KW_E_STATE,
                 "kw_fusion_reopen: the cache holds %lld rows, not the %lld of the sections before the last",
                 (long long)kw_kvcache_length(s->cache), (long long)(start + s->sections[section].length));
    return kw_fusion_open(s, section, start, s->sections[section].length);
}

/* Makes section [start, start + len) the one rows are put into: its scratch and staging. */
static int kw_fusion_open(kw_fusion_session *s, int32_t section, int64_t start, int64_t len) {
    s->current = section;
    s->cur_start = start;
    s->cur_len = len;
    s->cur_mask = s->sections[section].index > 0 ? s->sections[section].index : 0;
    memset(s->fused, 0, (size_t)(s->f->n_sharers > 0 ? s->f->n_sharers : 1) * (size_t)s->f->n_layers);
    if (s->cur_mask == 0) return 0;
    const int64_t ne[3] = {len, s->f->n_heads, s->f->head_dim};
    kw_tensor *bufs[] = {&s->base_k, &s->base_v, &s->out_k, &s->out_v, &s->neg_k, &s->neg_v, &s->acc_k, &s->acc_v};
    const size_t nbufs = s->opt.mode == KW_FUSION_PARALLEL ? 8 : 2;
    for (size_t b = 0; b < nbufs; ++b)
        KW_FORWARD(kw_tensor_alloc(s->f->backend, bufs[b], KW_DTYPE_F32, 3, ne));
    s->covered = calloc((size_t)len, 1);
    KW_RETURN_IF(s->covered == NULL, KW_E_NOMEM, "kw_fusion: out of memory");
    for (int32_t i = 0; i < s->f->n_sharers; ++i) {
        if (!(s->cur_mask & (1 << i))) continue;
        s->staged[i] = calloc((size_t)s->f->sh[i].n_layers, sizeof(kw_fusion_staged));
        KW_RETURN_IF(s->staged[i] == NULL, KW_E_NOMEM, "kw_fusion: out of memory");
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * Fusing one receiver layer
 */

/* Reads (store = 0) or writes (store = 1) the cache rows of layer t at the n sorted positions into / from rows
 * [0, n) of k and v (either may be NULL when storing), one contiguous run at a time. */
static int kw_fusion_rows_io(kw_kvcache *cache, int32_t t, const int64_t *pos, int64_t n, kw_tensor *k, kw_tensor *v,
                             int store) {
    for (int64_t r = 0; r < n;) {
        int64_t len = 1;
        while (r + len < n && pos[r + len] == pos[r] + len)
            ++len;
        kw_tensor kr = {0}, vr = {0};
        if (k) KW_FORWARD(kw_tensor_view_rows(k, r, len, &kr));
        if (v) KW_FORWARD(kw_tensor_view_rows(v, r, len, &vr));
        if (store)
            KW_FORWARD(kw_kvcache_store_rows(cache, t, pos[r], k ? &kr : NULL, v ? &vr : NULL));
        else
            KW_FORWARD(kw_kvcache_load_rows(cache, t, pos[r], &kr, &vr));
        r += len;
    }
    return 0;
}

/* Views rows [0, n) of a (section length, H, D) scratch tensor. */
static int kw_fusion_view(const kw_tensor *t, int64_t n, kw_tensor *out) {
    return kw_tensor_view_rows(t, 0, n, out);
}

/* Projects n sharer rows src_k, src_v of sharer i into receiver layer t at positions pos. */
static int kw_fusion_project_rows(kw_fusion_session *s, int32_t i, int32_t t, const int64_t *pos, int64_t n,
                                  const kw_tensor *src_k, const kw_tensor *src_v) {
    kw_fusion *f = s->f;
    const kw_fusion_sh *sh = &f->sh[i];
    const int32_t open = sh->tgt_open[t];
    kw_tensor bk, bv;
    KW_FORWARD(kw_fusion_view(&s->base_k, n, &bk));
    KW_FORWARD(kw_fusion_view(&s->base_v, n, &bv));
    /* the rows as the cache holds them now (fused by the previous sharer, rounded if the cache is bf16) */
    KW_FORWARD(kw_fusion_rows_io(s->cache, t, pos, n, &bk, &bv, 0));
    const kw_projector_io io = {.src_k = src_k,
                                .src_v = src_v,
                                .tgt_k = &bk,
                                .tgt_v = &bv,
                                .out_k = (open & 1) ? &bk : NULL,
                                .out_v = (open & 2) ? &bv : NULL};
    KW_FORWARD(kw_projector_forward(sh->tgt_proj[t], f->ws, s->opt.numerics, &io));
    return kw_fusion_rows_io(s->cache, t, pos, n, io.out_k, io.out_v, 1);
}

/* Receiver layer t's subset of the staged rows (its bitmap over the section): gathered on the host, uploaded,
 * projected. */
static int kw_fusion_apply_subset(kw_fusion_session *s, int32_t i, int32_t t, const kw_fusion_staged *st,
                                  const uint8_t *mask) {
    kw_fusion *f = s->f;
    const kw_fusion_sh *sh = &f->sh[i];
    const int64_t row = (int64_t)sh->n_heads * sh->head_dim;
    int64_t *pos = malloc((size_t)st->n_rows * sizeof *pos);
    int32_t *ids = malloc((size_t)st->n_rows * sizeof *ids);
    kw_tensor tk = {0}, tv = {0}, tid = {0};
    int rc = 0;
    KW_CHECK_IF(!pos || !ids, KW_E_NOMEM, "fusion: out of memory");
    int64_t n = 0;
    for (int64_t r = 0; r < st->n_rows; ++r) {
        const int64_t o = st->positions[r] - s->cur_start;
        if (!(mask[o >> 3] & (1u << (o & 7)))) continue;
        pos[n] = st->positions[r];
        ids[n++] = (int32_t)r; /* r < n_rows <= the section's length, an int64 of at most a prompt's length */
    }
    if (n > 0) { /* the subset's rows gathered on the backend from the staged rows (a copy: the same bits) */
        const int64_t ne[3] = {n, sh->n_heads, sh->head_dim}, ne2[2] = {n, row}, src2[2] = {st->n_rows, row};
        kw_tensor k2, v2, sk2, sv2;
        KW_CHECK(kw_tensor_alloc(f->backend, &tk, KW_DTYPE_F32, 3, ne));
        KW_CHECK(kw_tensor_alloc(f->backend, &tv, KW_DTYPE_F32, 3, ne));
        KW_CHECK(kw_tensor_alloc(f->backend, &tid, KW_DTYPE_I32, 1, &n));
        KW_CHECK(kw_backend_upload(f->backend, &tid, 0, ids, (size_t)n * sizeof *ids));
        KW_CHECK(kw_tensor_view_reshape(&tk, 2, ne2, &k2));
        KW_CHECK(kw_tensor_view_reshape(&tv, 2, ne2, &v2));
        KW_CHECK(kw_tensor_view_reshape(&st->k, 2, src2, &sk2));
        KW_CHECK(kw_tensor_view_reshape(&st->v, 2, src2, &sv2));
        KW_CHECK(kw_op_get_rows(f->backend, &k2, &sk2, &tid));
        KW_CHECK(kw_op_get_rows(f->backend, &v2, &sv2, &tid));
        KW_CHECK(kw_fusion_project_rows(s, i, t, pos, n, &tk, &tv));
        KW_CHECK(kw_backend_synchronize(f->backend)); /* before the ids and tensors go */
    }
out:
    kw_tensor_free(&tk), kw_tensor_free(&tv), kw_tensor_free(&tid);
    free(pos), free(ids);
    return rc;
}

/* Sequential mode: sharer i's rows projected into receiver layer t at their positions (its subset of them when the
 * rows came with per-target subsets). */
static int kw_fusion_apply(kw_fusion_session *s, int32_t i, int32_t t) {
    const kw_fusion_staged *st = &s->staged[i][s->f->sh[i].tgt_src[t]];
    if (st->tmask && st->tmask[t]) return kw_fusion_apply_subset(s, i, t, st, st->tmask[t]);
    return kw_fusion_project_rows(s, i, t, st->positions, st->n_rows, &st->k, &st->v);
}

/* Parallel mode: every active sharer at t projected from the same clean rows, base + sum (proj - base) in fp32. */
static int kw_fusion_apply_parallel(kw_fusion_session *s, int32_t active, int32_t t) {
    kw_fusion *f = s->f;
    const kw_fusion_staged *first = NULL;
    int32_t any_open = 0;
    for (int32_t i = 0; i < f->n_sharers; ++i) {
        if (!(active & (1 << i))) continue;
        const kw_fusion_staged *st = &s->staged[i][f->sh[i].tgt_src[t]];
        if (first == NULL) first = st;
        KW_RETURN_IF(st->n_rows != first->n_rows ||
                         memcmp(st->positions, first->positions, (size_t)st->n_rows * sizeof *st->positions) != 0,
                     KW_E_UNSUPPORTED, "fusion: parallel mode needs the same positions from every sharer (layer %d)",
                     (int)t);
        any_open |= f->sh[i].tgt_open[t];
    }
    const int64_t n = first->n_rows;
    kw_tensor bk, bv, ok, ov, nk, nv, ak, av;
    KW_FORWARD(kw_fusion_view(&s->base_k, n, &bk));
    KW_FORWARD(kw_fusion_view(&s->base_v, n, &bv));
    KW_FORWARD(kw_fusion_view(&s->out_k, n, &ok));
    KW_FORWARD(kw_fusion_view(&s->out_v, n, &ov));
    KW_FORWARD(kw_fusion_view(&s->neg_k, n, &nk));
    KW_FORWARD(kw_fusion_view(&s->neg_v, n, &nv));
    KW_FORWARD(kw_fusion_view(&s->acc_k, n, &ak));
    KW_FORWARD(kw_fusion_view(&s->acc_v, n, &av));
    KW_FORWARD(kw_fusion_rows_io(s->cache, t, first->positions, n, &bk, &bv, 0));
    KW_FORWARD(kw_backend_memset_zero(f->backend, &ak));
    KW_FORWARD(kw_backend_memset_zero(f->backend, &av));
    KW_FORWARD(kw_op_scale(f->backend, &nk, &bk, -1.0f));
    KW_FORWARD(kw_op_scale(f->backend, &nv, &bv, -1.0f));
    for (int32_t i = 0; i < f->n_sharers; ++i) {
        if (!(active & (1 << i))) continue;
        const kw_fusion_sh *sh = &f->sh[i];
        const int32_t open = sh->tgt_open[t];
        const kw_fusion_staged *st = &s->staged[i][sh->tgt_src[t]];
        const kw_projector_io io = {.src_k = &st->k,
                                    .src_v = &st->v,
                                    .tgt_k = &bk,
                                    .tgt_v = &bv,
                                    .out_k = (open & 1) ? &ok : NULL,
                                    .out_v = (open & 2) ? &ov : NULL};
        KW_FORWARD(kw_projector_forward(sh->tgt_proj[t], f->ws, s->opt.numerics, &io));
        /* a closed branch adds (base - base) = 0 in the reference: nothing to add */
        if (open & 1) {
            KW_FORWARD(kw_op_add(f->backend, &ok, &ok, &nk));
            KW_FORWARD(kw_op_add(f->backend, &ak, &ak, &ok));
        }
        if (open & 2) {
            KW_FORWARD(kw_op_add(f->backend, &ov, &ov, &nv));
            KW_FORWARD(kw_op_add(f->backend, &av, &av, &ov));
        }
    }
    if (any_open & 1) KW_FORWARD(kw_op_add(f->backend, &bk, &bk, &ak));
    if (any_open & 2) KW_FORWARD(kw_op_add(f->backend, &bv, &bv, &av));
    return kw_fusion_rows_io(s->cache, t, first->positions, n, (any_open & 1) ? &bk : NULL, (any_open & 2) ? &bv : NULL,
                             1);
}

/* The sharers selected for the current section that fuse into receiver layer t (open gate, mapped). */
static int32_t kw_fusion_active(const kw_fusion_session *s, int32_t t) {
    int32_t active = 0;
    for (int32_t i = 0; i < s->f->n_sharers; ++i)
        if ((s->cur_mask & (1 << i)) && s->f->sh[i].tgt_proj[t] != NULL && s->f->sh[i].tgt_open[t] != 0)
            active |= 1 << i;
    return active;
}

static int kw_fusion_staged_at(const kw_fusion_session *s, int32_t i, int32_t t) {
    return s->staged[i] != NULL && s->staged[i][s->f->sh[i].tgt_src[t]].present;
}

/* Fuses what is ready. final: the section ends, so rows that never came no longer hold later sharers back. */
static int kw_fusion_progress(kw_fusion_session *s, int final) {
    kw_fusion *f = s->f;
    const size_t L = (size_t)f->n_layers;
    for (int32_t t = 0; t < f->n_layers; ++t) {
        const int32_t active = kw_fusion_active(s, t);
        if (active == 0) continue;
        if (s->opt.mode == KW_FUSION_PARALLEL) {
            int32_t have = 0, done = 0;
            for (int32_t i = 0; i < f->n_sharers; ++i) {
                if ((active & (1 << i)) && kw_fusion_staged_at(s, i, t)) have |= 1 << i;
                if (s->fused[(size_t)i * L + (size_t)t]) done = 1;
            }
            if (done || have == 0 || (have != active && !final)) continue;
            const uint64_t t0 = kw_time_now_ns();
            KW_FORWARD(kw_fusion_apply_parallel(s, have, t));
            KW_FORWARD(kw_backend_synchronize(f->backend));
            s->stats.projection_ms += kw_time_ms(t0, kw_time_now_ns());
            for (int32_t i = 0; i < f->n_sharers; ++i)
                if (have & (1 << i)) s->fused[(size_t)i * L + (size_t)t] = 1;
            continue;
        }
        for (int32_t i = 0; i < f->n_sharers; ++i) {
            if (!(active & (1 << i)) || s->fused[(size_t)i * L + (size_t)t]) continue;
            if (!kw_fusion_staged_at(s, i, t)) {
                if (final) continue; /* never came: the next sharer goes on from the rows as they are */
                break;               /* wait for it: sharer i + 1 must see its rows */
            }
            const uint64_t t0 = kw_time_now_ns();
            KW_FORWARD(kw_fusion_apply(s, i, t));
            KW_FORWARD(kw_backend_synchronize(f->backend));
            s->stats.projection_ms += kw_time_ms(t0, kw_time_now_ns());
            s->fused[(size_t)i * L + (size_t)t] = 1;
        }
    }
    return 0;
}

/* Keeps the rows' per-target subsets (kw_fusion_apply_subset gathers each from the staged rows). */
static int kw_fusion_stage_masks(kw_fusion_session *s, const kw_fusion_rows *rows, kw_fusion_staged *st) {
    kw_fusion *f = s->f;
    const kw_fusion_sh *sh = &f->sh[rows->sharer];
    KW_RETURN_IF(s->opt.mode != KW_FUSION_SEQUENTIAL, KW_E_UNSUPPORTED,
                 "kw_fusion_put: per-target subsets need sequential fusion");
    KW_RETURN_IF(rows->target_layers == NULL || rows->target_masks == NULL, KW_E_INVALID_ARG,
                 "kw_fusion_put: %d target subsets without their layers or masks", (int)rows->n_targets);
    const size_t mask_bytes = (size_t)((s->cur_len + 7) / 8);
    st->tmask = calloc((size_t)f->n_layers, sizeof *st->tmask);
    KW_RETURN_IF(!st->tmask, KW_E_NOMEM, "kw_fusion_put: out of memory");
    for (int32_t j = 0; j < rows->n_targets; ++j) {
        const int32_t t = rows->target_layers[j];
        KW_RETURN_IF(t < 0 || t >= f->n_layers || sh->tgt_src[t] != rows->source_layer || st->tmask[t] != NULL ||
                         rows->target_masks[j] == NULL,
                     KW_E_INVALID_ARG, "kw_fusion_put: receiver layer %d is not a target of sharer layer %d (once)",
                     (int)t, (int)rows->source_layer);
        st->tmask[t] = malloc(mask_bytes);
        KW_RETURN_IF(st->tmask[t] == NULL, KW_E_NOMEM, "kw_fusion_put: out of memory");
        memcpy(st->tmask[t], rows->target_masks[j], mask_bytes);
    }
    return 0;
}

int kw_fusion_put(kw_fusion_session *s, const kw_fusion_rows *rows) {
    KW_RETURN_IF(s == NULL || rows == NULL || (rows->k == NULL) != (rows->v == NULL) ||
                     (rows->dk == NULL) != (rows->dv == NULL) || (rows->k == NULL) == (rows->dk == NULL),
                 KW_E_INVALID_ARG, "kw_fusion_put: NULL argument (host rows k, v or device rows dk, dv)");
    kw_fusion *f = s->f;
    KW_RETURN_IF(s->current < 0 || rows->section != s->current, KW_E_STATE,
                 "kw_fusion_put: rows for section %d, but the section being fused is %d", (int)rows->section,
                 (int)s->current);
    KW_RETURN_IF(rows->sharer < 0 || rows->sharer >= f->n_sharers || !(s->cur_mask & (1 << rows->sharer)),
                 KW_E_INVALID_ARG, "kw_fusion_put: sharer %d is not selected for section %d", (int)rows->sharer,
                 (int)rows->section);
    const kw_fusion_sh *sh = &f->sh[rows->sharer];
    KW_RETURN_IF(rows->source_layer < 0 || rows->source_layer >= sh->n_layers ||
                     !kw_fusion_layer_needed(f, sh, rows->source_layer),
                 KW_E_INVALID_ARG, "kw_fusion_put: sharer layer %d is not one fusion uses", (int)rows->source_layer);
    kw_fusion_staged *st = &s->staged[rows->sharer][rows->source_layer];
    KW_RETURN_IF(st->present, KW_E_INVALID_ARG, "kw_fusion_put: sharer %d layer %d was already sent", (int)rows->sharer,
                 (int)rows->source_layer);
    const int64_t n = rows->n_rows;
    KW_RETURN_IF(n < 1 || n > s->cur_len || (rows->positions == NULL && n != s->cur_len), KW_E_INVALID_ARG,
                 "kw_fusion_put: %lld rows for a section of %lld", (long long)n, (long long)s->cur_len);
    const uint64_t t0 = kw_time_now_ns();
    st->positions = malloc((size_t)n * sizeof *st->positions);
    KW_RETURN_IF(st->positions == NULL, KW_E_NOMEM, "kw_fusion_put: out of memory");
    for (int64_t r = 0; r < n; ++r) {
        const int64_t p = rows->positions ? rows->positions[r] : s->cur_start + r;
        KW_RETURN_IF(p < s->cur_start || p >= s->cur_start + s->cur_len || (r > 0 && p <= st->positions[r - 1]),
                     KW_E_INVALID_ARG,
                     "kw_fusion_put: position %lld (row %lld) is not increasing inside the section [%lld, %lld)",
                     (long long)p, (long long)r, (long long)s->cur_start, (long long)(s->cur_start + s->cur_len));
        st->positions[r] = p;
    }
    const int64_t ne[3] = {n, sh->n_heads, sh->head_dim};
    KW_FORWARD(kw_tensor_alloc(f->backend, &st->k, KW_DTYPE_F32, 3, ne));
    KW_FORWARD(kw_tensor_alloc(f->backend, &st->v, KW_DTYPE_F32, 3, ne));
    if (rows->dk) { /* device rows: copied on the backend's stream, in order before any later use of the caller's */
        KW_RETURN_IF(rows->dk->ndim != 3 || memcmp(rows->dk->ne, ne, sizeof ne) != 0 || rows->dv->ndim != 3 ||
                         memcmp(rows->dv->ne, ne, sizeof ne) != 0,
                     KW_E_INVALID_ARG, "kw_fusion_put: device rows of another shape than (%lld, %lld, %lld)",
                     (long long)n, (long long)sh->n_heads, (long long)sh->head_dim);
        KW_FORWARD(kw_op_copy(f->backend, &st->k, rows->dk));
        KW_FORWARD(kw_op_copy(f->backend, &st->v, rows->dv));
    } else {
        const size_t bytes = kw_tensor_nbytes(&st->k);
        KW_FORWARD(kw_backend_upload(f->backend, &st->k, 0, rows->k, bytes));
        KW_FORWARD(kw_backend_upload(f->backend, &st->v, 0, rows->v, bytes));
        KW_FORWARD(kw_backend_synchronize(f->backend)); /* the caller's arrays are borrowed for the call only */
    }
    if (rows->n_targets > 0) KW_FORWARD(kw_fusion_stage_masks(s, rows, st));
    st->n_rows = n;
    st->present = 1;
    for (int64_t r = 0; r < n; ++r)
        s->covered[st->positions[r] - s->cur_start] = 1;
    s->stats.transfer_ms += kw_time_ms(t0, kw_time_now_ns());
    return kw_fusion_progress(s, 0);
}

int kw_fusion_end_section(kw_fusion_session *s, int32_t section) {
    KW_RETURN_IF(s == NULL, KW_E_INVALID_ARG, "kw_fusion_end_section: NULL session");
    KW_RETURN_IF(s->current < 0 || section != s->current, KW_E_STATE, "kw_fusion_end_section: section %d is not open",
                 (int)section);
    kw_fusion *f = s->f;
    int rc = 0;
    if (s->cur_mask != 0) {
        KW_CHECK(kw_fusion_progress(s, 1));
        for (int32_t i = 0; i < f->n_sharers; ++i) {
            if (!(s->cur_mask & (1 << i))) continue;
            for (int32_t t = 0; t < f->n_layers; ++t) {
                const size_t pair = (size_t)i * (size_t)f->n_layers + (size_t)t;
                if (s->fused[pair])
                    s->pair_fused[pair] = 1;
                else
                    s->pair_skipped[pair] = 1;
            }
        }
        for (int64_t p = 0; p < s->cur_len; ++p) {
            const int first = s->covered[p] && !s->counted[s->cur_start + p];
            s->stats.tokens_fused += first;
            s->counted[s->cur_start + p] |= (uint8_t)first;
        }
    }
out:
    kw_fusion_drop_staged(s);
    s->current = -1;
    return rc;
}

int kw_fusion_generate(kw_fusion_session *s, kw_fusion_result *out) {
    KW_RETURN_IF(s == NULL || out == NULL, KW_E_INVALID_ARG, "kw_fusion_generate: NULL argument");
    memset(out, 0, sizeof *out);
    KW_RETURN_IF(s->current >= 0 || s->next_prefill != s->opt.n_sections - 1, KW_E_STATE,
                 "kw_fusion_generate: sections before the last are not all prefilled and ended");
    const int64_t start = s->n - s->sections[s->opt.n_sections - 1].length;
    KW_FORWARD(kw_generate_greedy(s->f->receiver, s->cache, s->ids + start, s->n - start, &s->opt.gen, &out->gen));
    s->stats.last_prompt_ms = out->gen.prefill_ms;
    s->stats.decode_ms = out->gen.decode_ms;
    s->stats.n_decode = out->gen.n_decode;
    const size_t pairs = (size_t)(s->f->n_sharers > 0 ? s->f->n_sharers : 1) * (size_t)s->f->n_layers;
    s->stats.layers_fused = 0;
    s->stats.layers_skipped = 0;
    for (size_t p = 0; p < pairs; ++p) {
        s->stats.layers_fused += s->pair_fused[p];
        s->stats.layers_skipped += s->pair_skipped[p] && !s->pair_fused[p];
    }
    out->stats = s->stats;
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * In process: kw_fusion_run
 */

/* The sharers' part of one fused section: every selected sharer's needed layers read from its cache, through the
 * hook, into the session. */
static int kw_fusion_run_transfer(kw_fusion_session *s, kw_kvcache *const *scache, int32_t section, int64_t start,
                                  int64_t T, int32_t mask) {
    kw_fusion *f = s->f;
    const kw_fusion_options *opt = &s->opt;
    float *host_k = NULL, *host_v = NULL;
    int rc = 0;
    for (int32_t i = 0; i < f->n_sharers; ++i) {
        if (!(mask & (1 << i))) continue;
        const kw_fusion_sh *sh = &f->sh[i];
        const int64_t n = T * sh->n_heads * sh->head_dim;
        free(host_k);
        free(host_v);
        host_k = malloc((size_t)n * sizeof(float));
        host_v = malloc((size_t)n * sizeof(float));
        KW_CHECK_IF(!host_k || !host_v, KW_E_NOMEM, "fusion: out of memory");
        int32_t n_sent = 0, sent = 0;
        for (int32_t l = 0; l < sh->n_layers; ++l)
            n_sent += kw_fusion_layer_needed(f, sh, l);
        for (int32_t l = 0; l < sh->n_layers; ++l) {
            if (!kw_fusion_layer_needed(f, sh, l)) continue;
            const uint64_t t0 = kw_time_now_ns();
            s->stats.sharer_kv_bytes +=
                2 * T * sh->n_heads * sh->head_dim * (int64_t)kw_dtype_size(opt->sharer_cache_dtype);
            KW_CHECK(kw_kvcache_read_rows(scache[i], l, start, T, host_k, host_v));
            if (opt->hook) {
                kw_fusion_transfer xfer = {.sharer = i,
                                           .source_layer = l,
                                           .n_source_layers = sh->n_layers,
                                           .layer_index = sent++,
                                           .n_layers_sent = n_sent,
                                           .section = section,
                                           .pos0 = start,
                                           .n_tokens = T,
                                           .n_heads = sh->n_heads,
                                           .head_dim = sh->head_dim,
                                           .cache_dtype = opt->sharer_cache_dtype,
                                           .k = host_k,
                                           .v = host_v};
                const int hrc = opt->hook(opt->hook_user, &xfer);
                if (hrc < 0) {
                    if (kw_error_detail()[0] == '\0')
                        kw_error_set(hrc, "fusion: the transfer hook failed (sharer %d, layer %d)", (int)i, (int)l);
                    rc = hrc;
                    goto out;
                }
                ++s->stats.hook_calls;
                s->stats.wire_bytes += xfer.wire_bytes;
            }
            s->stats.transfer_ms += kw_time_ms(t0, kw_time_now_ns());
            const kw_fusion_rows rows = {
                .sharer = i, .section = section, .source_layer = l, .n_rows = T, .k = host_k, .v = host_v};
            KW_CHECK(kw_fusion_put(s, &rows));
        }
    }
out:
    free(host_k);
    free(host_v);
    return rc;
}

int kw_fusion_run(kw_fusion *f, kw_kvcache *cache, const int32_t *ids, int64_t n, const kw_fusion_options *opt,
                  kw_fusion_result *out) {
    KW_RETURN_IF(f == NULL || out == NULL, KW_E_INVALID_ARG, "kw_fusion_run: NULL argument");
    memset(out, 0, sizeof *out);
    KW_RETURN_IF(opt == NULL, KW_E_INVALID_ARG, "kw_fusion_run: NULL options");
    KW_RETURN_IF(opt->sharer_cache_dtype != KW_DTYPE_BF16 && opt->sharer_cache_dtype != KW_DTYPE_F32, KW_E_INVALID_ARG,
                 "kw_fusion_run: sharer caches are bf16 or f32, not %s", kw_dtype_name(opt->sharer_cache_dtype));
    for (int32_t i = 0; i < f->n_sharers; ++i)
        KW_RETURN_IF(f->sh[i].model == NULL, KW_E_INVALID_ARG, "kw_fusion_run: sharer %d has no model", (int)i);
    kw_fusion_session *s = NULL;
    kw_kvcache *scache[KW_FUSION_MAX_SHARERS] = {0};
    int rc = 0;
    KW_CHECK(kw_fusion_begin(f, cache, ids, n, opt, &s));
    const int64_t prefix = n - opt->sections[opt->n_sections - 1].length;
    if (prefix > 0)
        for (int32_t i = 0; i < f->n_sharers; ++i)
            KW_CHECK(kw_model_create_cache(f->sh[i].model, prefix, opt->sharer_cache_dtype, &scache[i]));
    for (int32_t i = 0; i < f->n_sharers && prefix > 0 && opt->sharer_pad; ++i)
        for (int64_t p = 0; opt->sharer_pad[i] && p < prefix; ++p)
            if (opt->sharer_pad[i][p]) KW_CHECK(kw_kvcache_set_valid(scache[i], p, 1, 0));
    int64_t start = 0;
    for (int32_t sec = 0; sec + 1 < opt->n_sections; ++sec) {
        const int64_t len = opt->sections[sec].length;
        KW_CHECK(kw_fusion_prefill(s, sec));
        const uint64_t t1 = kw_time_now_ns();
        for (int32_t i = 0; i < f->n_sharers; ++i)
            KW_CHECK(kw_model_prefill(f->sh[i].model, scache[i],
                                      (opt->sharer_ids && opt->sharer_ids[i] ? opt->sharer_ids[i] : ids) + start, len));
        s->stats.sharer_prefill_ms += kw_time_ms(t1, kw_time_now_ns());
        if (opt->sections[sec].index > 0)
            KW_CHECK(kw_fusion_run_transfer(s, scache, sec, start, len, opt->sections[sec].index));
        KW_CHECK(kw_fusion_end_section(s, sec));
        start += len;
    }
    KW_CHECK(kw_fusion_generate(s, out));
out:
    for (int32_t i = 0; i < f->n_sharers; ++i)
        kw_kvcache_free(scache[i]);
    kw_fusion_session_free(s);
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
