/* kw_share.c: the sharer side of a KV transfer (see kw_share.h). With device_rows on a backend with the sharer's
 * device work, a dense layer's rows stay on the device: the norm selections are scored and ranked there
 * (kw_op_select_scores / _topk) and only the chosen offsets come back; the rows are downloaded only when a caller or
 * a selection that has no device form (a skip, the receiver-aware modes) needs them. */
#include "c2c/kw_share.h"

#include <stdlib.h>
#include <string.h>

#include "common/kw_status.h"
#include "common/kw_time.h"

/* State of one run, seen by the layer callback. */
typedef struct kw_share_state {
    const kw_share_options *opt;
    kw_kvcache *cache;
    kw_share_stats *stats;
    int32_t n_model_layers, n_heads, head_dim;
    int32_t section, blob;
    int64_t pos0, length, n_prefix;
    float *k, *v;             /* the section's rows of one layer (length, H, D) */
    float *sk, *sv;           /* the selected rows */
    float *scratch;           /* length floats: scores */
    int64_t *sel, *positions; /* length entries: offsets in the section, then cache positions */
    int64_t n_sel;
    int have_sel;             /* same_positions: the section's selection is made */
    kw_share_targets targets; /* the receiver-aware selections' per-target subsets of the layer */
    int32_t next_layer_index;
    /* device_rows on a backend that has the sharer's device work */
    kw_backend *be;
    int device;                       /* 1: dense layers stay on the device */
    int32_t layer;                    /* the layer being handed over */
    int loaded;                       /* k and v hold the section's rows of that layer */
    kw_tensor d_rows, d_score, d_top; /* longest entries: i32 cache positions, f32 scores, i32 top-k offsets */
    kw_tensor d_count;                /* (1) i32 */
    int32_t *h_rows;                  /* longest entries (pinned): the positions uploaded, the offsets downloaded */
    int32_t h_count;
} kw_share_state;

static int kw_share_find_layer(const kw_share_options *opt, int32_t layer) {
    for (int32_t i = 0; i < opt->n_layers; ++i)
        if (opt->layers[i] == layer) return i;
    return -1;
}

/* The section's rows of the current layer in k and v (downloaded once per layer). */
static int kw_share_load(kw_share_state *st) {
    if (st->loaded) return 0;
    KW_FORWARD(kw_kvcache_read_rows(st->cache, st->layer, st->pos0, st->length, st->k, st->v));
    st->loaded = 1;
    return 0;
}

/* The selected rows, gathered into sk and sv. */
static int kw_share_gather(kw_share_state *st) {
    KW_FORWARD(kw_share_load(st));
    const int64_t row = (int64_t)st->n_heads * st->head_dim;
    for (int64_t i = 0; i < st->n_sel; ++i) {
        memcpy(st->sk + i * row, st->k + st->sel[i] * row, (size_t)row * sizeof(float));
        memcpy(st->sv + i * row, st->v + st->sel[i] * row, (size_t)row * sizeof(float));
    }
    return 0;
}

/* kw_share_device.host_rows. */
static int kw_share_host_rows(void *ctx, const float **k, const float **v) {
    kw_share_state *st = ctx;
    KW_FORWARD(kw_share_gather(st));
    *k = st->sk;
    *v = st->sv;
    return 0;
}

/* A norm selection without a skip on the device: scores and top-k from the cache tensor, the offsets downloaded. */
static int kw_share_select_device(kw_share_state *st, const kw_select_policy *sel, int32_t layer) {
    kw_tensor score, top;
    KW_FORWARD(kw_tensor_view_rows(&st->d_score, 0, st->length, &score));
    KW_FORWARD(kw_tensor_view_rows(&st->d_top, 0, st->length, &top));
    kw_tensor *x = sel->mode == KW_SELECT_KNORM ? kw_kvcache_k(st->cache, layer) : kw_kvcache_v(st->cache, layer);
    KW_FORWARD(kw_op_select_scores(st->be, &score, x, st->pos0));
    KW_FORWARD(kw_op_select_topk(st->be, &top, &st->d_count, &score, kw_select_count(sel, st->length)));
    KW_FORWARD(kw_backend_download(st->be, &st->h_count, &st->d_count, 0, sizeof st->h_count));
    KW_FORWARD(kw_backend_download(st->be, st->h_rows, &top, 0, (size_t)st->length * sizeof *st->h_rows));
    KW_FORWARD(kw_backend_synchronize(st->be));
    KW_RETURN_IF(st->h_count < 0 || st->h_count > st->length, KW_E_INTERNAL, "share: device top-k count %d of %lld",
                 (int)st->h_count, (long long)st->length);
    st->n_sel = st->h_count;
    for (int64_t i = 0; i < st->n_sel; ++i)
        st->sel[i] = st->h_rows[i];
    st->stats->device_selections += 1;
    return 0;
}

static int kw_share_on_layer(void *user, int32_t layer, int64_t row0, int64_t n) {
    kw_share_state *st = user;
    const kw_share_options *opt = st->opt;
    (void)row0;
    (void)n;
    const int index = kw_share_find_layer(opt, layer);
    if (index < 0) return 0;
    const uint64_t t0 = kw_time_now_ns();
    const int64_t H = st->n_heads, D = st->head_dim, row = H * D;
    double score_ms = 0.0;
    st->layer = layer;
    st->loaded = 0;
    const int on_device = st->device && kw_kvcache_k(st->cache, layer) != NULL;
    if (!on_device) KW_FORWARD(kw_share_load(st));
    if (!opt->same_positions || !st->have_sel) {
        if (kw_select_mode_receiver_aware(opt->select.mode)) {
            KW_RETURN_IF(opt->skip_ranked, KW_E_INVALID_ARG,
                         "share: a refinement's round two (skip_ranked) does not take the receiver-aware selections");
            KW_FORWARD(kw_share_load(st));
            const uint64_t s0 = kw_time_now_ns();
            const int src = opt->select_rows(opt->select_user, &opt->select, layer, st->pos0, st->length, st->k, st->v,
                                             st->sel, &st->n_sel, &st->targets);
            score_ms = kw_time_ms(s0, kw_time_now_ns());
            st->stats->score_ms += score_ms;
            KW_FORWARD(src);
        } else {
            kw_select_policy sel = opt->select;
            sel.skip = opt->skip_ranked ? opt->skip_ranked[st->blob] : 0;
            const int norm = sel.mode == KW_SELECT_KNORM || sel.mode == KW_SELECT_VNORM;
            if (on_device && norm && sel.skip == 0)
                KW_FORWARD(kw_share_select_device(st, &sel, layer));
            else if (norm)
                KW_FORWARD(kw_share_load(st));
            if (!on_device || !norm || sel.skip != 0) /* the other modes read no rows */
                KW_FORWARD(kw_select_positions(&sel, st->length, (int32_t)H, (int32_t)D, st->k, st->v, st->section,
                                               layer, st->scratch, st->sel, &st->n_sel));
        }
        KW_RETURN_IF(st->n_sel < 1, KW_E_UNSUPPORTED,
                     "share: section %d layer %d has no finite rows to send (non-finite K or V)", (int)st->section,
                     (int)layer);
        st->have_sel = 1;
    }
    for (int64_t i = 0; i < st->n_sel; ++i)
        st->positions[i] = st->pos0 + st->sel[i];
    kw_share_device dev = {0};
    if (on_device) { /* the selected rows' cache positions go to the device; the rows stay there */
        for (int64_t i = 0; i < st->n_sel; ++i)
            st->h_rows[i] = (int32_t)st->positions[i];
        KW_FORWARD(kw_backend_upload(st->be, &st->d_rows, 0, st->h_rows, (size_t)st->n_sel * sizeof *st->h_rows));
        KW_FORWARD(kw_backend_synchronize(st->be)); /* h_rows is rewritten at the next layer */
        dev = (kw_share_device){.backend = st->be,
                                .k = kw_kvcache_k(st->cache, layer),
                                .v = kw_kvcache_v(st->cache, layer),
                                .rows = &st->d_rows,
                                .host_rows = kw_share_host_rows,
                                .ctx = st};
    } else {
        KW_FORWARD(kw_share_gather(st));
    }
    const uint64_t t1 = kw_time_now_ns();
    const kw_share_layer out = {.section = st->section,
                                .blob = st->blob,
                                .layer = layer,
                                .layer_index = st->next_layer_index++,
                                .n_layers_sent = opt->n_layers,
                                .n_source_layers = st->n_model_layers,
                                .pos0 = st->pos0,
                                .length = st->length,
                                .n_positions = st->n_prefix,
                                .n_rows = st->n_sel,
                                .positions = st->positions,
                                .k = on_device ? NULL : st->sk,
                                .v = on_device ? NULL : st->sv,
                                .device = on_device ? &dev : NULL,
                                .n_heads = (int32_t)H,
                                .head_dim = (int32_t)D,
                                .cache_dtype = opt->cache_dtype,
                                .targets = st->targets};
    const int rc = opt->on_layer ? opt->on_layer(opt->user, &out) : 0;
    const uint64_t t2 = kw_time_now_ns();
    st->stats->select_ms += kw_time_ms(t0, t1) - score_ms;
    st->stats->callback_ms += kw_time_ms(t1, t2);
    st->stats->tokens_total += st->length;
    st->stats->tokens_sent += st->n_sel;
    st->stats->kv_bytes += 2 * st->n_sel * row * (int64_t)kw_dtype_size(opt->cache_dtype);
    st->stats->layers_sent += 1;
    if (rc < 0 && kw_error_detail()[0] == '\0') kw_error_set(rc, "share: the layer callback failed at layer %d", layer);
    return rc;
}

static int kw_share_check(const kw_model *model, int64_t n, const kw_share_options *opt) {
    KW_RETURN_IF(opt == NULL || opt->sections == NULL || opt->n_sections < 1, KW_E_INVALID_ARG, "share: no sections");
    KW_RETURN_IF(opt->cache_dtype != KW_DTYPE_BF16 && opt->cache_dtype != KW_DTYPE_F32, KW_E_INVALID_ARG,
                 "share: caches are bf16 or f32, not %s", kw_dtype_name(opt->cache_dtype));
    KW_FORWARD(kw_select_policy_check(&opt->select));
    KW_RETURN_IF(
        kw_select_mode_receiver_aware(opt->select.mode) && (opt->select_rows == NULL || opt->same_positions),
        KW_E_INVALID_ARG,
        "share: %s needs the receiver-side selection hook (scoring: local: the receiver model and the fuser) and "
        "is not for kv_direct",
        kw_select_mode_name(opt->select.mode));
    int64_t prefix = 0;
    for (int32_t i = 0; i + 1 < opt->n_sections; ++i) {
        KW_RETURN_IF(opt->sections[i].length < 1, KW_E_INVALID_ARG, "share: section %d is empty", (int)i);
        prefix += opt->sections[i].length;
    }
    KW_RETURN_IF(prefix != n, KW_E_INVALID_ARG, "share: %lld ids for sections that share %lld tokens", (long long)n,
                 (long long)prefix);
    const int32_t L = kw_model_get_config(model)->n_layers;
    KW_RETURN_IF(opt->n_layers < 0 || (opt->n_layers > 0 && opt->layers == NULL), KW_E_INVALID_ARG,
                 "share: bad layer list");
    for (int32_t i = 0; i < opt->n_layers; ++i)
        KW_RETURN_IF(opt->layers[i] < 0 || opt->layers[i] >= L || (i > 0 && opt->layers[i] <= opt->layers[i - 1]),
                     KW_E_INVALID_ARG, "share: layer list entry %d (%d) is not an ascending layer of the %d", (int)i,
                     (int)opt->layers[i], (int)L);
    return 0;
}

int kw_share_run(kw_model *model, const int32_t *ids, int64_t n, const kw_share_options *opt, kw_share_stats *stats) {
    KW_RETURN_IF(model == NULL || (n > 0 && ids == NULL), KW_E_INVALID_ARG, "kw_share_run: NULL argument");
    kw_share_stats local;
    if (stats == NULL) stats = &local;
    memset(stats, 0, sizeof *stats);
    KW_FORWARD(kw_share_check(model, n, opt));
    if (n == 0) return 0;
    const kw_model_config *c = kw_model_get_config(model);
    kw_share_state st = {.opt = opt,
                         .stats = stats,
                         .n_model_layers = c->n_layers,
                         .n_heads = c->n_kv_heads,
                         .head_dim = c->head_dim,
                         .n_prefix = n};
    int64_t longest = 0;
    for (int32_t i = 0; i + 1 < opt->n_sections; ++i)
        longest = opt->sections[i].length > longest ? opt->sections[i].length : longest;
    const size_t rows = (size_t)longest * (size_t)c->n_kv_heads * (size_t)c->head_dim;
    int rc = 0;
    /* the rows downloaded for the wire: pinned on a device backend (kw_backend_host_alloc) */
    kw_backend *be = kw_model_backend(model);
    const size_t row_bytes = (rows ? rows : 1) * sizeof(float);
    KW_CHECK(kw_backend_host_alloc(be, row_bytes, (void **)&st.k));
    KW_CHECK(kw_backend_host_alloc(be, row_bytes, (void **)&st.v));
    st.sk = malloc(rows * sizeof(float));
    st.sv = malloc(rows * sizeof(float));
    st.scratch = malloc((size_t)longest * sizeof(float));
    st.sel = malloc((size_t)longest * sizeof(int64_t));
    st.positions = malloc((size_t)longest * sizeof(int64_t));
    KW_CHECK_IF(!st.sk || !st.sv || !st.scratch || !st.sel || !st.positions, KW_E_NOMEM,
                "share: out of memory for %lld-token sections", (long long)longest);
    KW_CHECK(kw_model_create_cache(model, n, opt->cache_dtype, &st.cache));
    st.be = be;
    /* the device selection takes up to 256 heads (kw_op_select_scores); more stay on the host path */
    st.device = opt->device_rows && kw_backend_supports_share(be) && longest > 0 && c->n_kv_heads <= 256;
    if (st.device) {
        const int64_t ne = longest, one = 1;
        KW_CHECK(kw_tensor_alloc(be, &st.d_rows, KW_DTYPE_I32, 1, &ne));
        KW_CHECK(kw_tensor_alloc(be, &st.d_score, KW_DTYPE_F32, 1, &ne));
        KW_CHECK(kw_tensor_alloc(be, &st.d_top, KW_DTYPE_I32, 1, &ne));
        KW_CHECK(kw_tensor_alloc(be, &st.d_count, KW_DTYPE_I32, 1, &one));
        KW_CHECK(kw_backend_host_alloc(be, (size_t)longest * sizeof *st.h_rows, (void **)&st.h_rows));
    }
    for (int64_t p = 0; opt->pad && p < n; ++p)
        if (opt->pad[p]) KW_CHECK(kw_kvcache_set_valid(st.cache, p, 1, 0));
    int64_t start = 0;
    for (int32_t sec = 0; sec + 1 < opt->n_sections; ++sec) {
        const int64_t len = opt->sections[sec].length;
        const int sends = opt->sections[sec].index > 0 && opt->n_layers > 0;
        st.section = sec;
        st.pos0 = start;
        st.length = len;
        st.have_sel = 0;
        st.next_layer_index = 0;
        const double before = stats->select_ms + stats->score_ms + stats->callback_ms;
        const uint64_t t0 = kw_time_now_ns();
        KW_CHECK(
            kw_model_forward_layers(model, st.cache, ids + start, len, NULL, sends ? kw_share_on_layer : NULL, &st));
        stats->prefill_ms +=
            kw_time_ms(t0, kw_time_now_ns()) - (stats->select_ms + stats->score_ms + stats->callback_ms - before);
        if (sends) {
            ++stats->sections_sent;
            ++st.blob;
        }
        start += len;
    }
out:
    kw_tensor_free(&st.d_rows);
    kw_tensor_free(&st.d_score);
    kw_tensor_free(&st.d_top);
    kw_tensor_free(&st.d_count);
    kw_backend_host_free(be, st.h_rows);
    kw_kvcache_free(st.cache);
    kw_backend_host_free(be, st.k);
    kw_backend_host_free(be, st.v);
    free(st.sk), free(st.sv), free(st.scratch), free(st.sel), free(st.positions);
    return rc;
}
