/* kw_share.c: the sharer side of a KV transfer (see kw_share.h). */
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
} kw_share_state;

static int kw_share_find_layer(const kw_share_options *opt, int32_t layer) {
    for (int32_t i = 0; i < opt->n_layers; ++i)
        if (opt->layers[i] == layer) return i;
    return -1;
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
    KW_FORWARD(kw_kvcache_read_rows(st->cache, layer, st->pos0, st->length, st->k, st->v));
    if (!opt->same_positions || !st->have_sel) {
        if (kw_select_mode_receiver_aware(opt->select.mode)) {
            KW_RETURN_IF(opt->skip_ranked, KW_E_INVALID_ARG,
                         "share: a refinement's round two (skip_ranked) does not take the receiver-aware selections");
            const uint64_t s0 = kw_time_now_ns();
            const int src = opt->select_rows(opt->select_user, &opt->select, layer, st->pos0, st->length, st->k, st->v,
                                             st->sel, &st->n_sel, &st->targets);
            score_ms = kw_time_ms(s0, kw_time_now_ns());
            st->stats->score_ms += score_ms;
            KW_FORWARD(src);
        } else {
            kw_select_policy sel = opt->select;
            sel.skip = opt->skip_ranked ? opt->skip_ranked[st->blob] : 0;
            KW_FORWARD(kw_select_positions(&sel, st->length, (int32_t)H, (int32_t)D, st->k, st->v, st->section, layer,
                                           st->scratch, st->sel, &st->n_sel));
        }
        KW_RETURN_IF(st->n_sel < 1, KW_E_UNSUPPORTED,
                     "share: section %d layer %d has no finite rows to send (non-finite K or V)", (int)st->section,
                     (int)layer);
        st->have_sel = 1;
    }
    for (int64_t i = 0; i < st->n_sel; ++i) {
        memcpy(st->sk + i * row, st->k + st->sel[i] * row, (size_t)row * sizeof(float));
        memcpy(st->sv + i * row, st->v + st->sel[i] * row, (size_t)row * sizeof(float));
        st->positions[i] = st->pos0 + st->sel[i];
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
                                .k = st->sk,
                                .v = st->sv,
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
    kw_kvcache_free(st.cache);
    kw_backend_host_free(be, st.k);
    kw_backend_host_free(be, st.v);
    free(st.sk), free(st.sv), free(st.scratch), free(st.sel), free(st.positions);
    return rc;
}
