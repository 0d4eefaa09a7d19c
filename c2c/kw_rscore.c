/* kw_rscore.c: the receiver-aware selection scores (see kw_rscore.h). */
#include "c2c/kw_rscore.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_status.h"
#include "common/kw_time.h"
#include "kernels/kw_select_math.h"
#include "model/kw_kvcache.h"

struct kw_rscore {
    kw_model *receiver;
    kw_fusion *fusion;
    int32_t sharer;
    kw_rscore_options opt;
    kw_kvcache *base; /* the receiver's prefill of the prefix */
    int64_t n;
    int32_t r_layers, r_heads, r_dim; /* the receiver's geometry */
    int32_t s_heads, s_dim;           /* the sharer's */
    int32_t *targets;                 /* r_layers entries */
    int32_t *sel_targets;             /* kw_rscore_select's targets, r_layers entries */
    uint8_t *masks;                   /* kw_rscore_select's bitmaps (the last call's) */
    uint8_t **mask_ptrs;              /* into masks, r_layers entries */
    kw_rscore_stats stats;
};

void kw_rscore_free(kw_rscore *r) {
    if (r == NULL) return;
    kw_kvcache_free(r->base);
    free(r->targets), free(r->sel_targets), free(r->masks), free(r->mask_ptrs);
    free(r);
}

const kw_rscore_stats *kw_rscore_get_stats(const kw_rscore *r) {
    return r ? &r->stats : NULL;
}

int kw_rscore_create(kw_model *receiver, kw_fusion *f, int32_t sharer, const int32_t *ids, int64_t n,
                     const kw_rscore_options *opt, kw_rscore **out) {
    KW_RETURN_IF(receiver == NULL || f == NULL || ids == NULL || opt == NULL || out == NULL || n < 1, KW_E_INVALID_ARG,
                 "rscore: NULL argument or empty prefix");
    *out = NULL;
    KW_RETURN_IF(!kw_select_mode_receiver_aware(opt->mode), KW_E_INVALID_ARG,
                 "rscore: %s is not a receiver-aware selection",
                 kw_select_mode_name(opt->mode) ? kw_select_mode_name(opt->mode) : "?");
    KW_RETURN_IF(opt->cache_dtype != KW_DTYPE_BF16 && opt->cache_dtype != KW_DTYPE_F32, KW_E_INVALID_ARG,
                 "rscore: caches are bf16 or f32");
    KW_RETURN_IF(kw_projector_numerics_name(opt->numerics) == NULL, KW_E_INVALID_ARG, "rscore: unknown numerics %d",
                 (int)opt->numerics);
    const kw_model_config *c = kw_model_get_config(receiver);
    kw_rscore *r = calloc(1, sizeof *r);
    KW_RETURN_IF(r == NULL, KW_E_NOMEM, "rscore: out of memory");
    int rc;
    r->receiver = receiver;
    r->fusion = f;
    r->sharer = sharer;
    r->opt = *opt;
    r->n = n;
    r->r_layers = c->n_layers;
    r->r_heads = c->n_kv_heads;
    r->r_dim = c->head_dim;
    KW_CHECK(kw_fusion_sharer_geometry(f, sharer, NULL, &r->s_heads, &r->s_dim));
    r->targets = malloc((size_t)r->r_layers * sizeof *r->targets);
    r->sel_targets = malloc((size_t)r->r_layers * sizeof *r->sel_targets);
    r->mask_ptrs = calloc((size_t)r->r_layers, sizeof *r->mask_ptrs);
    KW_CHECK_IF(!r->targets || !r->sel_targets || !r->mask_ptrs, KW_E_NOMEM, "rscore: out of memory");
    KW_CHECK(kw_model_create_cache(receiver, n, opt->cache_dtype, &r->base));
    for (int64_t p = 0; opt->pad && p < n; ++p)
        if (opt->pad[p]) KW_CHECK(kw_kvcache_set_valid(r->base, p, 1, 0));
    const uint64_t t0 = kw_time_now_ns();
    KW_CHECK(kw_model_prefill(receiver, r->base, ids, n));
    r->stats.prefill_ms = kw_time_ms(t0, kw_time_now_ns());
    *out = r;
    return 0;
out:
    kw_rscore_free(r);
    return rc;
}

void kw_rscore_vnorm(int64_t T, int32_t H, int32_t D, const float *fused_v, const float *base_v, float *out) {
    for (int64_t t = 0; t < T; ++t) {
        float sum = 0.0f;
        for (int32_t h = 0; h < H; ++h) {
            const int64_t off = (t * H + h) * (int64_t)D;
            float ss = 0.0f;
            for (int32_t d = 0; d < D; ++d) {
                const float x = base_v ? fused_v[off + d] - base_v[off + d] : fused_v[off + d];
                ss += x * x;
            }
            sum += sqrtf(ss);
        }
        out[t] = kw_selm_score(sum, H);
    }
}

/* The scratch of one kw_rscore_layer call. */
typedef struct kw_rscore_bufs {
    float *qk, *qv;         /* quantized sharer rows (delta) */
    float *bk, *bv, *fused; /* receiver rows of one target */
} kw_rscore_bufs;

static void kw_rscore_bufs_free(kw_rscore_bufs *b) {
    free(b->qk), free(b->qv), free(b->bk), free(b->bv), free(b->fused);
}

int kw_rscore_layer(kw_rscore *r, int32_t source_layer, int64_t pos0, int64_t T, const float *k, const float *v,
                    float *scores, int32_t *targets, int32_t *n_targets) {
    KW_RETURN_IF(r == NULL || k == NULL || v == NULL || scores == NULL || n_targets == NULL, KW_E_INVALID_ARG,
                 "rscore: NULL argument");
    KW_RETURN_IF(pos0 < 0 || T < 1 || T > r->n - pos0, KW_E_INVALID_ARG,
                 "rscore: rows [%lld, %lld) are outside the %lld-token prefix", (long long)pos0, (long long)(pos0 + T),
                 (long long)r->n);
    const uint64_t t0 = kw_time_now_ns();
    KW_FORWARD(kw_fusion_layer_targets(r->fusion, r->sharer, source_layer, r->targets, r->r_layers, n_targets));
    if (targets) memcpy(targets, r->targets, (size_t)*n_targets * sizeof *targets);
    if (*n_targets == 0) return 0;
    const size_t src = (size_t)(T * r->s_heads * r->s_dim), tgt = (size_t)(T * r->r_heads * r->r_dim);
    const int delta = r->opt.mode == KW_SELECT_DELTA_PROJ_VNORM;
    kw_rscore_bufs b = {0};
    int rc;
    b.bk = malloc(tgt * sizeof(float));
    b.bv = malloc(tgt * sizeof(float));
    b.fused = malloc(tgt * sizeof(float));
    KW_CHECK_IF(!b.bk || !b.bv || !b.fused, KW_E_NOMEM, "rscore: out of memory for %lld rows", (long long)T);
    const float *sk = k, *sv = v;
    if (delta && r->opt.quantize) { /* what the receiver would decode */
        b.qk = malloc(src * sizeof(float));
        b.qv = malloc(src * sizeof(float));
        KW_CHECK_IF(!b.qk || !b.qv, KW_E_NOMEM, "rscore: out of memory for %lld rows", (long long)T);
        memcpy(b.qk, k, src * sizeof(float));
        memcpy(b.qv, v, src * sizeof(float));
        KW_CHECK(r->opt.quantize(r->opt.quantize_user, source_layer, T, r->s_heads, r->s_dim, b.qk, b.qv));
        sk = b.qk, sv = b.qv;
    }
    for (int32_t i = 0; i < *n_targets; ++i) {
        const int32_t t = r->targets[i];
        KW_CHECK(kw_kvcache_read_rows(r->base, t, pos0, T, b.bk, b.bv));
        KW_CHECK(kw_fusion_project_v(r->fusion, r->sharer, t, r->opt.numerics, T, sk, sv, b.bk, b.bv, b.fused));
        kw_rscore_vnorm(T, r->r_heads, r->r_dim, b.fused, delta ? b.bv : NULL, scores + (size_t)i * (size_t)T);
        ++r->stats.projections;
    }
    rc = 0;
out:
    kw_rscore_bufs_free(&b);
    r->stats.projection_ms += kw_time_ms(t0, kw_time_now_ns());
    return rc;
}

int kw_rscore_select(kw_rscore *r, const kw_select_policy *pol, int32_t source_layer, int64_t pos0, int64_t T,
                     const float *k, const float *v, int64_t *out, int64_t *n_out, kw_share_targets *targets) {
    KW_RETURN_IF(r == NULL || pol == NULL || out == NULL || n_out == NULL || targets == NULL, KW_E_INVALID_ARG,
                 "rscore: NULL argument");
    memset(targets, 0, sizeof *targets);
    *n_out = 0;
    const size_t mask_bytes = (size_t)((T + 7) / 8);
    float *scores = malloc((size_t)r->r_layers * (size_t)T * sizeof *scores);
    int64_t *sel = malloc((size_t)T * sizeof *sel);
    uint8_t *masks = calloc((size_t)r->r_layers, mask_bytes), *all = calloc(1, mask_bytes);
    free(r->masks);
    r->masks = masks;
    int rc;
    KW_CHECK_IF(!scores || !sel || !masks || !all, KW_E_NOMEM, "rscore: out of memory for %lld rows", (long long)T);
    int32_t n_targets = 0;
    KW_CHECK(kw_rscore_layer(r, source_layer, pos0, T, k, v, scores, r->sel_targets, &n_targets));
    for (int32_t i = 0; i < n_targets; ++i) { /* each target its own top-k, marked in its bitmap */
        int64_t n = 0;
        KW_CHECK(kw_select_top_scores(pol, T, scores + (size_t)i * (size_t)T, sel, &n));
        uint8_t *m = masks + (size_t)i * mask_bytes;
        for (int64_t j = 0; j < n; ++j) {
            m[sel[j] >> 3] |= (uint8_t)(1u << (sel[j] & 7));
            all[sel[j] >> 3] |= (uint8_t)(1u << (sel[j] & 7));
        }
        r->mask_ptrs[i] = m;
    }
    for (int64_t p = 0; p < T; ++p) /* the rows sent: the union, ascending */
        if (all[p >> 3] & (1u << (p & 7))) out[(*n_out)++] = p;
    if (n_targets > 1) { /* one target fuses every row sent: no subsets needed */
        targets->n = n_targets;
        targets->layers = r->sel_targets;
        targets->masks = (const uint8_t *const *)r->mask_ptrs;
        targets->mask_bytes = (int64_t)mask_bytes;
    }
    rc = 0;
out:
    free(scores), free(sel), free(all);
    return rc;
}

int kw_rscore_share_select(void *user, const kw_select_policy *pol, int32_t layer, int64_t pos0, int64_t T,
                           const float *k, const float *v, int64_t *out, int64_t *n_out, kw_share_targets *targets) {
    return kw_rscore_select(user, pol, layer, pos0, T, k, v, out, n_out, targets);
}
