/* kw_receive.c: the receiver half of a request (see kw_receive.h). */
#include "receiver/kw_receive.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "c2c/kw_request.h"
#include "common/kw_status.h"
#include "common/kw_time.h"

/* What one sharer's blobs must look like, and the decoder reading the current one. */
typedef struct kw_receive_peer {
    kw_wire_decoder *dec;
    int32_t n_layers, n_heads, head_dim; /* the sharer model's cache */
    int32_t *needed;                     /* the layers its blob carries, ascending (owned) */
    int32_t n_needed;
    int expecting; /* a blob is due in the current section */
    int done;      /* its trailer was verified */
    uint8_t *got;  /* bit (sharer layer * prefix + position): rows applied there (owned), so a round two only adds */
    /* per sharer layer, the current section's per-target subsets (kw_receive_targets), owned; n 0: none */
    int32_t *tg_n;
    int32_t **tg_layers;
    uint8_t **tg_masks;
} kw_receive_peer;

struct kw_receive {
    enum kw_receive_mode mode;
    kw_model *model;
    kw_fusion *f;
    kw_fusion_session *session; /* c2c */
    kw_kvcache *cache;
    const int32_t *ids;
    int64_t n, prefix;
    kw_fusion_section *sections;
    int32_t n_sections;
    kw_generate_options gen;
    kw_receive_peer peers[KW_FUSION_MAX_SHARERS];
    int32_t n_peers;
    int32_t next_prefill, current;
    int64_t cur_start, cur_len;
    /* dequantization buffers for one KVWire section */
    float *k, *v;
    size_t rows_cap;
    uint32_t *pos32;
    int64_t *pos;
    size_t pos_cap;
    /* kv_direct: which layers of the current section arrived, and the positions they carry */
    uint8_t *layer_seen;
    int64_t *direct_pos;
    int64_t direct_n;
    int requantize;  /* kw_receive_options.requantize */
    int host_decode; /* kw_receive_options.host_decode */
    /* the device decode (kw_receive_decode_device): the section's tensor bytes and outlier table staged in pinned
     * memory (stage, kw_backend_host_alloc), uploaded once into d_src (and the table into d_elems, d_values), decoded
     * into rows [0, T) of d_k, d_v (d_rows rows each); d_bad the decoder's flag; pre-RoPE keys: their positions' RoPE
     * table (kw_config_rope_table) staged after the outlier table, uploaded into d_rope (d_rope_rows, half, 2). All
     * owned. */
    uint8_t *stage;
    size_t stage_cap;
    kw_tensor d_src, d_k, d_v, d_elems, d_values, d_bad, d_rope;
    int64_t d_rows, d_rope_rows;
    kw_kv_pages pages; /* kv_direct: the current section as cache pages */
    kw_receive_stats stats;
};

/* Drops a peer's per-target subsets (the section ended). */
static void kw_receive_targets_clear(kw_receive_peer *p) {
    for (int32_t l = 0; p->tg_n && l < p->n_layers; ++l) {
        free(p->tg_layers[l]), free(p->tg_masks[l]);
        p->tg_layers[l] = NULL, p->tg_masks[l] = NULL, p->tg_n[l] = 0;
    }
}

void kw_receive_free(kw_receive *r) {
    if (r == NULL) return;
    kw_fusion_session_free(r->session);
    for (int32_t i = 0; i < r->n_peers; ++i) {
        kw_wire_decoder_destroy(r->peers[i].dec);
        free(r->peers[i].needed);
        free(r->peers[i].got);
        kw_receive_targets_clear(&r->peers[i]);
        free(r->peers[i].tg_n), free(r->peers[i].tg_layers), free(r->peers[i].tg_masks);
    }
    free(r->sections);
    if (r->model) {
        kw_backend_host_free(kw_model_backend(r->model), r->k);
        kw_backend_host_free(kw_model_backend(r->model), r->v);
        kw_backend_host_free(kw_model_backend(r->model), r->stage);
    }
    kw_tensor_free(&r->d_src), kw_tensor_free(&r->d_k), kw_tensor_free(&r->d_v);
    kw_tensor_free(&r->d_elems), kw_tensor_free(&r->d_values), kw_tensor_free(&r->d_bad);
    kw_tensor_free(&r->d_rope);
    free(r->pos32), free(r->pos);
    free(r->layer_seen), free(r->direct_pos);
    kw_kv_pages_free(&r->pages);
    free(r);
}

const char *kw_receive_kv_store(const kw_receive_stats *stats) {
    if (stats->rows_requantized > 0) /* a mixed cache's bf16 layers are dense, its other layers may not be */
        return stats->store_reason == KW_KV_STORE_DENSE_CACHE && stats->rows_direct == 0 ? "dense" : "requantized";
    return stats->rows_direct > 0 ? "direct" : "none";
}

const kw_receive_stats *kw_receive_get_stats(const kw_receive *r) {
    return r ? &r->stats : NULL;
}

int kw_receive_section_sent(const kw_receive *r, int32_t section) {
    if (r == NULL || section < 0 || section + 1 >= r->n_sections) return 0;
    return r->sections[section].index > 0;
}

int32_t kw_receive_section_sharers(const kw_receive *r, int32_t section) {
    if (!kw_receive_section_sent(r, section)) return 0;
    return r->mode == KW_RECEIVE_KV_DIRECT ? 1 : r->sections[section].index;
}

/* Sets up peer i's expectations. */
static int kw_receive_peer_init(kw_receive *r, int32_t i, const kw_wire_decoder_options *dopt,
                                const kw_receive_options *opt) {
    kw_receive_peer *p = &r->peers[i];
    if (r->mode == KW_RECEIVE_C2C) {
        KW_FORWARD(kw_fusion_sharer_geometry(r->f, i, &p->n_layers, &p->n_heads, &p->head_dim));
    } else {
        const kw_model_config *c = kw_model_get_config(r->model);
        p->n_layers = c->n_layers, p->n_heads = c->n_kv_heads, p->head_dim = c->head_dim;
    }
    p->needed = malloc((size_t)p->n_layers * sizeof *p->needed);
    p->got = calloc(((size_t)p->n_layers * (size_t)(r->prefix > 0 ? r->prefix : 1) + 7) / 8, 1);
    KW_RETURN_IF(p->needed == NULL || p->got == NULL, KW_E_NOMEM, "receive: out of memory");
    if (r->mode == KW_RECEIVE_C2C) {
        KW_FORWARD(kw_fusion_needed_layers(r->f, i, p->needed, p->n_layers, &p->n_needed));
        if (opt->layers[i]) { /* a subset of them */
            int32_t kept = 0;
            for (int32_t j = 0; j < opt->n_layers[i]; ++j) {
                const int32_t l = opt->layers[i][j];
                KW_RETURN_IF(j > 0 && l <= opt->layers[i][j - 1], KW_E_INVALID_ARG,
                             "kw_receive_begin: sharer %d's layers are not ascending", (int)i);
                int found = 0;
                for (int32_t k = 0; k < p->n_needed && !found; ++k)
                    found = p->needed[k] == l;
                KW_RETURN_IF(!found, KW_E_INVALID_ARG, "kw_receive_begin: sharer %d layer %d is not one its fuser uses",
                             (int)i, (int)l);
                p->needed[kept++] = l;
            }
            p->n_needed = kept;
        }
    } else {
        for (int32_t l = 0; l < p->n_layers; ++l)
            p->needed[l] = l;
        p->n_needed = p->n_layers;
    }
    return kw_wire_decoder_create(dopt, &p->dec);
}

int kw_receive_begin(kw_model *model, kw_fusion *f, kw_kvcache *cache, const int32_t *ids, int64_t n,
                     const kw_receive_options *opt, kw_receive **out) {
    KW_RETURN_IF(model == NULL || cache == NULL || ids == NULL || opt == NULL || out == NULL || n < 1, KW_E_INVALID_ARG,
                 "kw_receive_begin: NULL argument or empty prompt");
    KW_RETURN_IF(opt->mode != KW_RECEIVE_C2C && opt->mode != KW_RECEIVE_KV_DIRECT, KW_E_INVALID_ARG,
                 "kw_receive_begin: unknown mode %d", (int)opt->mode);
    KW_RETURN_IF(opt->mode == KW_RECEIVE_C2C && f == NULL, KW_E_INVALID_ARG, "kw_receive_begin: c2c needs a fusion");
    const kw_fusion_options *fo = &opt->fusion;
    KW_RETURN_IF(fo->sections == NULL || fo->n_sections < 1, KW_E_INVALID_ARG, "kw_receive_begin: no sections");
    *out = NULL;
    kw_receive *r = calloc(1, sizeof *r);
    KW_RETURN_IF(r == NULL, KW_E_NOMEM, "kw_receive_begin: out of memory");
    int rc = 0;
    r->mode = opt->mode;
    r->requantize = opt->requantize;
    r->host_decode = opt->host_decode;
    r->model = model;
    r->f = f;
    r->cache = cache;
    r->ids = ids;
    r->n = n;
    r->gen = fo->gen;
    r->current = -1;
    r->n_sections = fo->n_sections;
    r->sections = malloc((size_t)fo->n_sections * sizeof *r->sections);
    KW_CHECK_IF(r->sections == NULL, KW_E_NOMEM, "kw_receive_begin: out of memory");
    memcpy(r->sections, fo->sections, (size_t)fo->n_sections * sizeof *r->sections);
    int64_t total = 0;
    for (int32_t i = 0; i < fo->n_sections; ++i) {
        KW_CHECK_IF(r->sections[i].length < 1 || r->sections[i].length > n - total, KW_E_INVALID_ARG,
                    "kw_receive_begin: section %d does not fit the %lld-token prompt", (int)i, (long long)n);
        total += r->sections[i].length;
    }
    KW_CHECK_IF(total != n, KW_E_INVALID_ARG, "kw_receive_begin: the sections cover %lld of %lld tokens",
                (long long)total, (long long)n);
    r->prefix = n - r->sections[fo->n_sections - 1].length;
    kw_wire_decoder_options dopt = {.limits = opt->limits};
    if (r->mode == KW_RECEIVE_C2C) {
        KW_CHECK(kw_fusion_begin(f, cache, ids, n, fo, &r->session));
        r->n_peers = kw_fusion_n_sharers(f);
    } else {
        KW_CHECK_IF(kw_kvcache_length(cache) != 0, KW_E_INVALID_ARG, "kw_receive_begin: the cache must be empty");
        r->n_peers = 1;
        r->layer_seen = calloc((size_t)kw_model_get_config(model)->n_layers, 1);
        KW_CHECK_IF(r->layer_seen == NULL, KW_E_NOMEM, "kw_receive_begin: out of memory");
    }
    for (int32_t i = 0; i < r->n_peers; ++i)
        KW_CHECK(kw_receive_peer_init(r, i, &dopt, opt));
    *out = r;
    return 0;
out:
    kw_receive_free(r);
    return rc;
}

int kw_receive_prefill(kw_receive *r, int32_t section) {
    KW_RETURN_IF(r == NULL, KW_E_INVALID_ARG, "kw_receive_prefill: NULL request");
    KW_RETURN_IF(r->current >= 0 || section != r->next_prefill || section + 1 >= r->n_sections, KW_E_STATE,
                 "kw_receive_prefill: section %d out of order", (int)section);
    int64_t start = 0;
    for (int32_t i = 0; i < section; ++i)
        start += r->sections[i].length;
    const int64_t len = r->sections[section].length;
    const uint64_t t0 = kw_time_now_ns();
    const int32_t expect = kw_receive_section_sharers(r, section);
    if (r->mode == KW_RECEIVE_C2C) {
        KW_FORWARD(kw_fusion_prefill(r->session, section));
    } else if (expect) { /* rows reserved, hidden until they arrive */
        int64_t row0 = 0;
        KW_FORWARD(kw_kvcache_append(r->cache, len, &row0));
        KW_FORWARD(kw_kvcache_set_valid(r->cache, row0, len, 0));
        memset(r->layer_seen, 0, (size_t)r->peers[0].n_layers);
        r->direct_n = -1;
    } else {
        KW_FORWARD(kw_model_prefill(r->model, r->cache, r->ids + start, len));
    }
    r->stats.prefill_ms += kw_time_ms(t0, kw_time_now_ns());
    r->next_prefill = section + 1;
    r->current = section;
    r->cur_start = start;
    r->cur_len = len;
    for (int32_t i = 0; i < r->n_peers; ++i) {
        r->peers[i].expecting = (expect >> i) & 1;
        r->peers[i].done = 0;
        kw_wire_decoder_reset(r->peers[i].dec);
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * Applying one verified KVWire section
 */

static int kw_receive_reserve(kw_receive *r, size_t rows_floats, size_t n_pos) {
    if (rows_floats > r->rows_cap) {
        /* the decoded rows are uploaded from here: pinned on a device backend (kw_backend_host_alloc); the old
         * contents are not needed */
        kw_backend *be = kw_model_backend(r->model);
        kw_backend_host_free(be, r->k);
        kw_backend_host_free(be, r->v);
        r->k = r->v = NULL;
        r->rows_cap = 0;
        KW_FORWARD(kw_backend_host_alloc(be, rows_floats * sizeof(float), (void **)&r->k));
        KW_FORWARD(kw_backend_host_alloc(be, rows_floats * sizeof(float), (void **)&r->v));
        r->rows_cap = rows_floats;
    }
    if (n_pos > r->pos_cap) {
        uint32_t *p32 = realloc(r->pos32, n_pos * sizeof *p32);
        if (p32) r->pos32 = p32;
        int64_t *p = p32 ? realloc(r->pos, n_pos * sizeof *p) : NULL;
        if (p) r->pos = p;
        KW_RETURN_IF(!p32 || !p, KW_E_NOMEM, "receive: out of memory");
        r->pos_cap = n_pos;
    }
    return 0;
}

static int kw_receive_layer_expected(const kw_receive_peer *p, uint32_t layer) {
    for (int32_t i = 0; i < p->n_needed; ++i)
        if ((uint32_t)p->needed[i] == layer) return 1;
    return 0;
}

/* kv_direct, quantized cache: a layer of it holds rows [0, stored) with nothing missing, so the hidden rows of
 * positions not sent (reserved and masked, never attended) are stored as zeros up to row `upto` before rows after
 * them are written (a zero row widens no scale). A dense cache needs nothing. */
static int kw_receive_fill_hidden(kw_receive *r, int32_t layer, int64_t upto) {
    const int64_t stored = kw_kvcache_layer_rows(r->cache, layer);
    if (!kw_kvcache_layer_codec(r->cache, layer) || stored >= upto) return 0;
    const int64_t row = (int64_t)r->peers[0].n_heads * r->peers[0].head_dim;
    float *zeros = calloc((size_t)((upto - stored) * row), sizeof *zeros);
    KW_RETURN_IF(zeros == NULL, KW_E_NOMEM, "receive: out of memory");
    const int rc = kw_kvcache_write_rows(r->cache, layer, stored, upto - stored, zeros, zeros);
    free(zeros);
    return rc;
}

/* kv_direct: the rows become the receiver's own, layer by layer, with the same positions in every layer. The rows
 * are host arrays k, v or device tensors dk, dv (T, H, D) f32 (the device decode); all NULL: the pages. */
static int kw_receive_direct(kw_receive *r, int32_t layer, int64_t T, const int64_t *pos, const float *k,
                             const float *v, const kw_tensor *dk, const kw_tensor *dv) {
    KW_RETURN_IF(r->layer_seen[layer], KW_E_SHARE_LAYER, "receive: kv_direct layer %d arrived twice", (int)layer);
    if (r->direct_n < 0) {
        free(r->direct_pos);
        r->direct_pos = malloc((size_t)T * sizeof *r->direct_pos);
        KW_RETURN_IF(r->direct_pos == NULL, KW_E_NOMEM, "receive: out of memory");
        memcpy(r->direct_pos, pos, (size_t)T * sizeof *pos);
        r->direct_n = T;
    }
    KW_RETURN_IF(T != r->direct_n || memcmp(pos, r->direct_pos, (size_t)T * sizeof *pos) != 0, KW_E_SHARE_POSITIONS,
                 "receive: kv_direct layer %d carries other positions than the first layer", (int)layer);
    for (int64_t i = 1; i < T; ++i)
        KW_RETURN_IF(pos[i] <= pos[i - 1], KW_E_SHARE_POSITIONS, "receive: kv_direct positions are not increasing");
    if (k == NULL && dk == NULL) { /* the section mapped onto pages (kw_receive_try_pages): its bytes as they are */
        KW_FORWARD(kw_kvcache_store_kvq(r->cache, layer, pos[0], T, &r->pages.rows));
        r->stats.rows_direct += T;
        r->stats.rows_tail += T - r->pages.full;
        r->layer_seen[layer] = 1;
        return 0;
    }
    const int64_t row = (int64_t)r->peers[0].n_heads * r->peers[0].head_dim;
    r->stats.rows_requantized += T;
    if (r->stats.store_reason == KW_KV_STORE_DIRECT) /* rows without a section (kw_receive_rows) */
        r->stats.store_reason =
            kw_kvcache_layer_codec(r->cache, layer) ? KW_KV_STORE_NO_CODEC : KW_KV_STORE_DENSE_CACHE;
    for (int64_t i = 0; i < T;) {
        int64_t len = 1;
        while (i + len < T && pos[i + len] == pos[i] + len)
            ++len;
        KW_FORWARD(kw_receive_fill_hidden(r, layer, pos[i]));
        if (dk) {
            kw_tensor rk, rv;
            KW_FORWARD(kw_tensor_view_rows(dk, i, len, &rk));
            KW_FORWARD(kw_tensor_view_rows(dv, i, len, &rv));
            KW_FORWARD(kw_kvcache_store_rows(r->cache, layer, pos[i], &rk, &rv));
        } else {
            KW_FORWARD(kw_kvcache_write_rows(r->cache, layer, pos[i], len, k + i * row, v + i * row));
        }
        i += len;
    }
    r->layer_seen[layer] = 1;
    return 0;
}

/* kv_direct: whether the section goes into the cache as pages (*direct 1, r->pages filled) or is decoded (0, the
 * reason recorded in the stats when it is the request's first). */
static int kw_receive_try_pages(kw_receive *r, const kw_wire_section *sec, int *direct) {
    *direct = 0;
    const int64_t stored = kw_kvcache_layer_rows(r->cache, (int32_t)sec->layer);
    if (stored < 0) return 0; /* a layer the cache does not have: kw_receive_apply refuses it */
    /* the layer's own codec and geometry: in a mixed cache (kw_kvcache_create_mixed) layers differ, and a section
     * maps only onto a layer of its codec (else KW_KV_STORE_CODEC; a bf16 layer: KW_KV_STORE_DENSE_CACHE) */
    enum kw_kv_store_reason reason = KW_KV_STORE_DENSE_CACHE;
    kw_kvq_geom kg;
    const int quantized = kw_kvcache_kvq_storage(r->cache, (int32_t)sec->layer, 1, &kg) != NULL;
    if (quantized && r->requantize)
        reason = KW_KV_STORE_FORCED;
    else if (quantized)
        KW_FORWARD(kw_kv_pages_map(&r->pages, sec, r->pos32, &kg, stored, &reason));
    if (reason == KW_KV_STORE_DIRECT) {
        *direct = 1;
    } else if (r->stats.store_reason == KW_KV_STORE_DIRECT) {
        r->stats.store_reason = (int32_t)reason;
    }
    return 0;
}

/* Applies T rows of one sharer layer at positions pos (validated here) from host rows k, v or device rows dk, dv
 * (kv_direct: all NULL when the section goes in as r->pages). */
static int kw_receive_apply(kw_receive *r, int32_t sharer, int32_t layer, int64_t T, const int64_t *pos, const float *k,
                            const float *v, const kw_tensor *dk, const kw_tensor *dv) {
    const kw_receive_peer *p = &r->peers[sharer];
    KW_RETURN_IF(layer < 0 || !kw_receive_layer_expected(p, (uint32_t)layer), KW_E_SHARE_LAYER,
                 "receive: sharer %d sent layer %d, which the request did not ask for", (int)sharer, (int)layer);
    for (int64_t i = 0; i < T; ++i)
        KW_RETURN_IF(pos[i] < r->cur_start || pos[i] >= r->cur_start + r->cur_len, KW_E_SHARE_POSITIONS,
                     "receive: sharer %d layer %d: position %lld is outside the section [%lld, %lld)", (int)sharer,
                     (int)layer, (long long)pos[i], (long long)r->cur_start, (long long)(r->cur_start + r->cur_len));
    const size_t base = (size_t)layer * (size_t)r->prefix;
    for (int64_t i = 0; i < T; ++i) { /* only a round two can repeat a position: the rows are increasing per layer */
        const size_t bit = base + (size_t)pos[i];
        KW_RETURN_IF(p->got[bit / 8] >> (bit % 8) & 1, KW_E_SHARE_POSITIONS,
                     "receive: sharer %d layer %d: position %lld already got rows (round two only adds)", (int)sharer,
                     (int)layer, (long long)pos[i]);
    }
    for (int64_t i = 0; i < T; ++i) {
        const size_t bit = base + (size_t)pos[i];
        p->got[bit / 8] |= (uint8_t)(1u << (bit % 8));
    }
    const uint64_t t0 = kw_time_now_ns();
    if (r->mode == KW_RECEIVE_C2C) {
        const uint8_t *masks[KW_RECEIVE_MAX_TARGETS];
        const int32_t n_tg = p->tg_n ? p->tg_n[layer] : 0;
        const int64_t mask_bytes = (r->cur_len + 7) / 8;
        for (int32_t j = 0; j < n_tg; ++j)
            masks[j] = p->tg_masks[layer] + (size_t)j * (size_t)mask_bytes;
        const kw_fusion_rows rows = {.sharer = sharer,
                                     .section = r->current,
                                     .source_layer = layer,
                                     .n_rows = T,
                                     .positions = pos,
                                     .k = k,
                                     .v = v,
                                     .dk = dk,
                                     .dv = dv,
                                     .n_targets = n_tg,
                                     .target_layers = n_tg ? p->tg_layers[layer] : NULL,
                                     .target_masks = n_tg ? masks : NULL};
        KW_FORWARD(kw_fusion_put(r->session, &rows));
    } else {
        KW_FORWARD(kw_receive_direct(r, layer, T, pos, k, v, dk, dv));
    }
    r->stats.apply_ms += kw_time_ms(t0, kw_time_now_ns());
    r->stats.rows += T;
    ++r->stats.sections;
    return 0;
}

/* Grows the device decode's buffers for a section of T rows of `row` values, `bytes` staged, n outliers and a RoPE
 * table of half frequencies (0: none). */
static int kw_receive_device_reserve(kw_receive *r, kw_backend *be, int64_t T, int64_t heads, int64_t dim, size_t bytes,
                                     uint32_t n, int64_t half) {
    if (bytes > r->stage_cap) {
        kw_backend_host_free(be, r->stage);
        r->stage = NULL, r->stage_cap = 0;
        KW_FORWARD(kw_backend_host_alloc(be, bytes, (void **)&r->stage));
        r->stage_cap = bytes;
    }
    if (r->d_src.data == NULL || kw_tensor_nbytes(&r->d_src) < bytes) {
        kw_tensor_free(&r->d_src);
        const int64_t ne[1] = {(int64_t)bytes};
        KW_FORWARD(kw_tensor_alloc(be, &r->d_src, KW_DTYPE_U8, 1, ne));
    }
    if (r->d_rows < T) {
        kw_tensor_free(&r->d_k), kw_tensor_free(&r->d_v);
        r->d_rows = 0;
        const int64_t ne[3] = {T, heads, dim};
        KW_FORWARD(kw_tensor_alloc(be, &r->d_k, KW_DTYPE_F32, 3, ne));
        KW_FORWARD(kw_tensor_alloc(be, &r->d_v, KW_DTYPE_F32, 3, ne));
        r->d_rows = T;
    }
    if (n > 0 && (r->d_elems.data == NULL || kw_tensor_nelem(&r->d_elems) < n)) {
        kw_tensor_free(&r->d_elems), kw_tensor_free(&r->d_values);
        const int64_t ne[1] = {n};
        KW_FORWARD(kw_tensor_alloc(be, &r->d_elems, KW_DTYPE_I32, 1, ne));
        KW_FORWARD(kw_tensor_alloc(be, &r->d_values, KW_DTYPE_F32, 1, ne));
    }
    if (r->d_bad.data == NULL) {
        const int64_t ne[1] = {1};
        KW_FORWARD(kw_tensor_alloc(be, &r->d_bad, KW_DTYPE_I32, 1, ne));
    }
    if (half > 0 && (r->d_rope_rows < T || r->d_rope.ne[1] != half)) {
        kw_tensor_free(&r->d_rope);
        r->d_rope_rows = 0;
        const int64_t ne[3] = {T, half, 2};
        KW_FORWARD(kw_tensor_alloc(be, &r->d_rope, KW_DTYPE_F32, 3, ne));
        r->d_rope_rows = T;
    }
    return 0;
}

/* The op spec of a tensor view. */
static kw_wire_op_spec kw_receive_op_spec(const kw_wire_tensor_view *tv) {
    const kw_wire_op_spec sp = {tv->spec.codec, tv->spec.granularity, tv->spec.scale_dtype, tv->spec.group_log2, 0};
    return sp;
}

/* Whether the device decodes the verified section sec (1) or the CPU decoder does (0), and its tensors' bytes. Pre-RoPE
 * keys are rotated there too (kv_direct; kw_op_rope_table with the host's table, bit for bit kw_config_rope_rows) and
 * a c2c layer with per-target subsets goes to the fuser as device rows (it gathers each target's rows there). A
 * section the device cannot take: pre-RoPE keys in c2c (the CPU path refuses them), a rotation of a head_dim the
 * device kernel does not take, an outlier table past 32-bit element numbers, a codec the device decoder refuses or a
 * tensor whose bytes are not the ones the device decoder reads. */
static int kw_receive_device_ok(const kw_receive *r, const kw_receive_peer *p, const kw_wire_section *sec,
                                kw_backend *be, uint64_t *bytes) {
    if (r->host_decode || !kw_backend_supports_wire_decode(be)) return 0;
    if (sec->pre_rope && (r->mode != KW_RECEIVE_KV_DIRECT ||
                          kw_config_rope_half(kw_model_get_config(r->model), (int32_t)sec->layer) < 1))
        return 0;
    if (sec->layer >= (uint32_t)p->n_layers) return 0;
    const uint32_t H = sec->n_kv_heads, T = sec->n_tokens, D = sec->head_dim;
    if (sec->rotated && (D > 1024 || kw_wire_rotate_log2(D) < 0)) return 0;
    if (sec->outlier_table && 2ull * H * T * D > UINT32_MAX) return 0;
    *bytes = 0;
    for (uint32_t g = 0; g < sec->n_groups; ++g) {
        const kw_wire_group_view *gv = &sec->groups[g];
        for (int kv = 0; kv < 2; ++kv) {
            const kw_wire_tensor_view *tv = kv ? &gv->v : &gv->k;
            const kw_wire_op_spec sp = kw_receive_op_spec(tv);
            uint64_t n = 0, work = 0;
            if (kw_backend_wire_sizes(be, &sp, H, gv->n_tokens, D, &n, &work) < 0) return 0;
            if (n != (uint64_t)tv->scale_bytes + tv->zero_bytes + tv->code_bytes) return 0;
            *bytes += n;
        }
    }
    return 1;
}

/* The device decode of a verified section (*done 1), bit for bit kw_wire_section_dequantize: its tensors' scales,
 * zero points and codes (and its outlier table as numbers) copied into the pinned staging buffer, uploaded once,
 * decoded into rows [0, T) of r->d_k, r->d_v, the outliers written over them and the rotation undone there; pre-RoPE
 * keys then rotated by their positions (the table computed here, r->pos, as kw_config_rope_rows would). Nothing
 * decoded comes back to the host: only the decoder's flag (a reserved code: KW_E_WIRE_VALUE, as the CPU decoder).
 * *done 0: the section is for the CPU decoder (kw_receive_device_ok). */
static int kw_receive_decode_device(kw_receive *r, const kw_receive_peer *p, const kw_wire_section *sec, int *done) {
    *done = 0;
    kw_backend *be = kw_model_backend(r->model);
    uint64_t tensor_bytes = 0;
    if (!kw_receive_device_ok(r, p, sec, be, &tensor_bytes)) return 0;
    const uint32_t H = sec->n_kv_heads, T = sec->n_tokens, D = sec->head_dim, n_out = sec->n_outliers;
    const size_t table_at = ((size_t)tensor_bytes + 7) & ~(size_t)7;
    const size_t rope_at = table_at + (size_t)n_out * (sizeof(uint32_t) + sizeof(float));
    const int64_t half = sec->pre_rope ? kw_config_rope_half(kw_model_get_config(r->model), (int32_t)sec->layer) : 0;
    const size_t total = rope_at + (size_t)T * (size_t)half * 2 * sizeof(float);
    KW_FORWARD(kw_receive_device_reserve(r, be, T, H, D, total > 0 ? total : 1, n_out, half));
    size_t at = 0;
    for (uint32_t g = 0; g < sec->n_groups; ++g) {
        const kw_wire_tensor_view *tv[2] = {&sec->groups[g].k, &sec->groups[g].v};
        for (int kv = 0; kv < 2; ++kv) {
            memcpy(r->stage + at, tv[kv]->scales, tv[kv]->scale_bytes);
            at += tv[kv]->scale_bytes;
            if (tv[kv]->zero_bytes) memcpy(r->stage + at, tv[kv]->zeros, tv[kv]->zero_bytes);
            at += tv[kv]->zero_bytes;
            memcpy(r->stage + at, tv[kv]->codes, (size_t)tv[kv]->code_bytes);
            at += (size_t)tv[kv]->code_bytes;
        }
    }
    uint32_t *elems = (uint32_t *)(r->stage + table_at);
    float *values = (float *)(elems + n_out);
    if (n_out > 0) {
        uint64_t *e64 = malloc((size_t)n_out * sizeof *e64);
        KW_RETURN_IF(e64 == NULL, KW_E_NOMEM, "receive: out of memory");
        const int rc = kw_wire_section_outliers(sec, e64, values);
        for (uint32_t i = 0; rc == 0 && i < n_out; ++i)
            elems[i] = (uint32_t)e64[i]; /* < 2*H*T*D <= UINT32_MAX (kw_receive_device_ok) */
        free(e64);
        KW_FORWARD(rc);
    }
    KW_FORWARD(kw_backend_upload(be, &r->d_src, 0, r->stage, (size_t)tensor_bytes));
    if (n_out > 0) {
        KW_FORWARD(kw_backend_upload(be, &r->d_elems, 0, elems, (size_t)n_out * sizeof *elems));
        KW_FORWARD(kw_backend_upload(be, &r->d_values, 0, values, (size_t)n_out * sizeof *values));
    }
    kw_tensor rope = {0};
    /* KVWire v1.1 pre-RoPE keys (FORMAT.md §5.11): the receiver's own RoPE, as the CPU path applies it */
    if (half > 0) {
        float *table = (float *)(r->stage + rope_at);
        KW_FORWARD(kw_config_rope_table(kw_model_get_config(r->model), (int32_t)sec->layer, r->pos, T, 0, table));
        KW_FORWARD(kw_tensor_view_rows(&r->d_rope, 0, T, &rope));
        KW_FORWARD(kw_backend_upload(be, &rope, 0, table, (size_t)T * (size_t)half * 2 * sizeof *table));
    }
    KW_FORWARD(kw_backend_memset_zero(be, &r->d_bad));
    kw_tensor k, v;
    KW_FORWARD(kw_tensor_view_rows(&r->d_k, 0, T, &k));
    KW_FORWARD(kw_tensor_view_rows(&r->d_v, 0, T, &v));
    at = 0;
    for (uint32_t g = 0; g < sec->n_groups; ++g) {
        const kw_wire_group_view *gv = &sec->groups[g];
        const kw_wire_tensor_view *tv[2] = {&gv->k, &gv->v};
        for (int kv = 0; kv < 2; ++kv) {
            const kw_wire_op_spec sp = kw_receive_op_spec(tv[kv]);
            KW_FORWARD(
                kw_op_wire_decode(be, kv ? &v : &k, gv->first_token, gv->n_tokens, &sp, &r->d_src, at, &r->d_bad));
            at += (size_t)tv[kv]->scale_bytes + tv[kv]->zero_bytes + (size_t)tv[kv]->code_bytes;
        }
    }
    if (n_out > 0) KW_FORWARD(kw_op_wire_outliers_apply(be, &k, &v, &r->d_elems, &r->d_values, n_out));
    for (int kv = 0; kv < 2; ++kv)
        if (sec->rotated & (1u << kv)) KW_FORWARD(kw_op_wire_unrotate(be, kv ? &v : &k, &r->d_bad));
    if (half > 0) KW_FORWARD(kw_op_rope_table(be, &k, &rope));
    int32_t bad = 0;
    KW_FORWARD(kw_backend_download(be, &bad, &r->d_bad, 0, sizeof bad));
    KW_FORWARD(kw_backend_synchronize(be)); /* the staging buffer is reused by the next section */
    KW_RETURN_IF(
        bad != 0, KW_E_WIRE_VALUE,
        "section %u (layer %u): reserved code or non-finite value in the payload, or a value rotated back past "
        "the largest bf16 (device decode)",
        sec->ordinal, sec->layer);
    ++r->stats.device_sections;
    *done = 1;
    return 0;
}

static int kw_receive_section(kw_receive *r, int32_t sharer, const kw_wire_section *sec) {
    const kw_receive_peer *p = &r->peers[sharer];
    const int64_t T = sec->n_tokens, row = (int64_t)p->n_heads * p->head_dim;
    KW_FORWARD(kw_receive_reserve(r, 0, (size_t)T));
    const uint64_t t0 = kw_time_now_ns();
    KW_FORWARD(kw_wire_section_positions(sec, r->pos32, r->pos_cap));
    for (int64_t i = 0; i < T; ++i)
        r->pos[i] = r->pos32[i];
    if (r->mode == KW_RECEIVE_KV_DIRECT) {
        int direct = 0;
        KW_FORWARD(kw_receive_try_pages(r, sec, &direct));
        if (direct) { /* nothing to dequantize: the codes are the cache's */
            r->stats.decode_ms += kw_time_ms(t0, kw_time_now_ns());
            return kw_receive_apply(r, sharer, (int32_t)sec->layer, T, r->pos, NULL, NULL, NULL, NULL);
        }
    }
    int on_device = 0;
    KW_FORWARD(kw_receive_decode_device(r, p, sec, &on_device));
    if (on_device) {
        kw_tensor k, v;
        KW_FORWARD(kw_tensor_view_rows(&r->d_k, 0, T, &k));
        KW_FORWARD(kw_tensor_view_rows(&r->d_v, 0, T, &v));
        r->stats.decode_ms += kw_time_ms(t0, kw_time_now_ns());
        return kw_receive_apply(r, sharer, (int32_t)sec->layer, T, r->pos, NULL, NULL, &k, &v);
    }
    KW_FORWARD(kw_receive_reserve(r, (size_t)(T * row), (size_t)T));
    const kw_wire_tensor_out ko = {
        .data = r->k, .dtype = KW_WIRE_DTYPE_F32, .head_stride = (size_t)p->head_dim, .token_stride = (size_t)row};
    const kw_wire_tensor_out vo = {
        .data = r->v, .dtype = KW_WIRE_DTYPE_F32, .head_stride = (size_t)p->head_dim, .token_stride = (size_t)row};
    KW_FORWARD(kw_wire_section_dequantize(sec, &ko, &vo));
    if (sec->pre_rope) { /* KVWire v1.1 pre-RoPE keys (FORMAT.md §5.11): only the sharer's own model can rotate them */
        KW_RETURN_IF(r->mode != KW_RECEIVE_KV_DIRECT, KW_E_SHARE_LAYER,
                     "receive: sharer %d layer %u came with pre-RoPE keys, which only kv_direct can take", (int)sharer,
                     sec->layer);
        KW_FORWARD(kw_config_rope_rows(kw_model_get_config(r->model), (int32_t)sec->layer, r->pos, T, 0, r->k));
    }
    r->stats.decode_ms += kw_time_ms(t0, kw_time_now_ns());
    return kw_receive_apply(r, sharer, (int32_t)sec->layer, T, r->pos, r->k, r->v, NULL, NULL);
}

int kw_receive_rows(kw_receive *r, int32_t sharer, int32_t layer, int64_t n_rows, const int64_t *positions,
                    const float *k, const float *v) {
    KW_RETURN_IF(r == NULL || positions == NULL || k == NULL || v == NULL || n_rows < 1, KW_E_INVALID_ARG,
                 "kw_receive_rows: bad argument");
    KW_RETURN_IF(r->current < 0, KW_E_STATE, "kw_receive_rows: no section is open");
    KW_RETURN_IF(sharer < 0 || sharer >= r->n_peers || !r->peers[sharer].expecting, KW_E_STATE,
                 "kw_receive_rows: section %d expects nothing from sharer %d", (int)r->current, (int)sharer);
    return kw_receive_apply(r, sharer, layer, n_rows, positions, k, v, NULL, NULL);
}

int kw_receive_rows_done(kw_receive *r, int32_t sharer) {
    KW_RETURN_IF(r == NULL || sharer < 0 || sharer >= r->n_peers, KW_E_INVALID_ARG, "kw_receive_rows_done: no sharer");
    r->peers[sharer].done = 1;
    return 0;
}

static int kw_receive_check_header(const kw_receive *r, int32_t sharer, const kw_wire_header *h) {
    const kw_receive_peer *p = &r->peers[sharer];
    KW_RETURN_IF(
        h->n_layers != p->n_layers || h->n_kv_heads != p->n_heads || h->head_dim != p->head_dim, KW_E_SHARE_MISMATCH,
        "receive: sharer %d's blob is for a (%u layers, %u heads, %u dims) cache, expected (%d, %d, %d)", (int)sharer,
        h->n_layers, h->n_kv_heads, h->head_dim, (int)p->n_layers, (int)p->n_heads, (int)p->head_dim);
    KW_RETURN_IF(h->n_sections != p->n_needed, KW_E_SHARE_MISMATCH,
                 "receive: sharer %d's blob has %u sections, the request asked for %d layers", (int)sharer,
                 h->n_sections, (int)p->n_needed);
    KW_RETURN_IF(h->n_positions != (uint64_t)r->prefix, KW_E_SHARE_MISMATCH,
                 "receive: sharer %d's blob covers %u positions, the shared prompt has %lld", (int)sharer,
                 h->n_positions, (long long)r->prefix);
    return 0;
}

/* Feeds data to sharer's decoder; stop_at_end: return right after the blob's trailer with *used its bytes. */
static int kw_receive_feed_impl(kw_receive *r, int32_t sharer, const void *data, size_t n, int stop_at_end,
                                size_t *used_out, int *done) {
    KW_RETURN_IF(r == NULL || (n > 0 && data == NULL), KW_E_INVALID_ARG, "kw_receive_feed: NULL argument");
    KW_RETURN_IF(r->current < 0, KW_E_STATE, "kw_receive_feed: no section is open");
    KW_RETURN_IF(sharer < 0 || sharer >= r->n_peers || !r->peers[sharer].expecting, KW_E_STATE,
                 "kw_receive_feed: section %d expects no blob from sharer %d", (int)r->current, (int)sharer);
    kw_receive_peer *p = &r->peers[sharer];
    const unsigned char *bytes = data;
    size_t off = 0;
    while (off < n || n == 0) {
        if (stop_at_end && p->done) break;
        size_t used = 0;
        const uint64_t t0 = kw_time_now_ns();
        const int ev = kw_wire_decoder_feed(p->dec, bytes + off, n - off, &used);
        r->stats.decode_ms += kw_time_ms(t0, kw_time_now_ns());
        if (ev < 0) return ev;
        off += used;
        r->stats.blob_bytes += used;
        if (ev == KW_WIRE_EVENT_HEADER) {
            KW_FORWARD(kw_receive_check_header(r, sharer, kw_wire_decoder_header(p->dec)));
        } else if (ev == KW_WIRE_EVENT_SECTION) {
            KW_FORWARD(kw_receive_section(r, sharer, kw_wire_decoder_section(p->dec)));
        } else if (ev == KW_WIRE_EVENT_END) {
            p->done = 1;
            ++r->stats.blobs;
        } else {
            break; /* NEED_MORE: everything consumed */
        }
        if (n == 0) break;
    }
    if (used_out) *used_out = off;
    if (done) *done = p->done;
    return 0;
}

int kw_receive_feed(kw_receive *r, int32_t sharer, const void *data, size_t n, int *done) {
    return kw_receive_feed_impl(r, sharer, data, n, 0, NULL, done);
}

int kw_receive_feed_some(kw_receive *r, int32_t sharer, const void *data, size_t n, size_t *used, int *done) {
    KW_RETURN_IF(used == NULL, KW_E_INVALID_ARG, "kw_receive_feed_some: NULL used");
    return kw_receive_feed_impl(r, sharer, data, n, 1, used, done);
}

int kw_receive_targets(kw_receive *r, int32_t sharer, int32_t layer, int32_t n, const int32_t *layers,
                       const uint8_t *const *masks, int64_t mask_bytes) {
    KW_RETURN_IF(r == NULL || sharer < 0 || sharer >= r->n_peers || (n > 0 && (!layers || !masks)), KW_E_INVALID_ARG,
                 "kw_receive_targets: bad argument");
    KW_RETURN_IF(r->mode != KW_RECEIVE_C2C || r->current < 0, KW_E_STATE, "kw_receive_targets: no c2c section open");
    kw_receive_peer *p = &r->peers[sharer];
    KW_RETURN_IF(layer < 0 || layer >= p->n_layers || !kw_receive_layer_expected(p, (uint32_t)layer), KW_E_SHARE_LAYER,
                 "receive: target subsets for sharer %d layer %d, which the request did not ask for", (int)sharer,
                 (int)layer);
    KW_RETURN_IF(n < 1 || n > KW_RECEIVE_MAX_TARGETS || mask_bytes != (r->cur_len + 7) / 8, KW_E_INVALID_ARG,
                 "receive: %d target subsets of %lld bytes for a section of %lld positions", (int)n,
                 (long long)mask_bytes, (long long)r->cur_len);
    if (p->tg_n == NULL) {
        p->tg_n = calloc((size_t)p->n_layers, sizeof *p->tg_n);
        p->tg_layers = calloc((size_t)p->n_layers, sizeof *p->tg_layers);
        p->tg_masks = calloc((size_t)p->n_layers, sizeof *p->tg_masks);
        KW_RETURN_IF(!p->tg_n || !p->tg_layers || !p->tg_masks, KW_E_NOMEM, "receive: out of memory");
    }
    KW_RETURN_IF(p->tg_n[layer] != 0, KW_E_INVALID_ARG, "receive: target subsets for sharer %d layer %d came twice",
                 (int)sharer, (int)layer);
    p->tg_layers[layer] = malloc((size_t)n * sizeof **p->tg_layers);
    p->tg_masks[layer] = malloc((size_t)n * (size_t)mask_bytes);
    KW_RETURN_IF(!p->tg_layers[layer] || !p->tg_masks[layer], KW_E_NOMEM, "receive: out of memory");
    memcpy(p->tg_layers[layer], layers, (size_t)n * sizeof *layers);
    for (int32_t j = 0; j < n; ++j)
        memcpy(p->tg_masks[layer] + (size_t)j * (size_t)mask_bytes, masks[j], (size_t)mask_bytes);
    p->tg_n[layer] = n;
    return 0;
}

int kw_receive_end_section(kw_receive *r, int32_t section) {
    KW_RETURN_IF(r == NULL, KW_E_INVALID_ARG, "kw_receive_end_section: NULL request");
    KW_RETURN_IF(r->current < 0 || section != r->current, KW_E_STATE, "kw_receive_end_section: section %d is not open",
                 (int)section);
    for (int32_t i = 0; i < r->n_peers; ++i)
        KW_RETURN_IF(r->peers[i].expecting && !r->peers[i].done, KW_E_SHARE_INCOMPLETE,
                     "receive: the blob of sharer %d for section %d is incomplete", (int)i, (int)section);
    for (int32_t i = 0; i < r->n_peers; ++i)
        kw_receive_targets_clear(&r->peers[i]);
    if (r->mode == KW_RECEIVE_C2C) {
        KW_FORWARD(kw_fusion_end_section(r->session, section));
    } else if (r->peers[0].expecting) {
        for (int32_t l = 0; l < r->peers[0].n_layers; ++l)
            KW_RETURN_IF(!r->layer_seen[l], KW_E_SHARE_INCOMPLETE, "receive: kv_direct layer %d never arrived", (int)l);
        for (int32_t l = 0; l < r->peers[0].n_layers; ++l)
            KW_FORWARD(kw_receive_fill_hidden(r, l, r->cur_start + r->cur_len));
        for (int64_t i = 0; i < r->direct_n; ++i)
            KW_FORWARD(kw_kvcache_set_valid(r->cache, r->direct_pos[i], 1, 1));
    }
    r->current = -1;
    return 0;
}

int kw_receive_generate(kw_receive *r, kw_fusion_result *out) {
    KW_RETURN_IF(r == NULL || out == NULL, KW_E_INVALID_ARG, "kw_receive_generate: NULL argument");
    memset(out, 0, sizeof *out);
    if (r->mode == KW_RECEIVE_C2C) {
        KW_FORWARD(kw_fusion_generate(r->session, out));
        r->stats.fusion = out->stats;
        return 0;
    }
    KW_RETURN_IF(r->current >= 0 || r->next_prefill != r->n_sections - 1, KW_E_STATE,
                 "kw_receive_generate: sections before the last are not all done");
    KW_FORWARD(kw_generate_greedy(r->model, r->cache, r->ids + r->prefix, r->n - r->prefix, &r->gen, &out->gen));
    out->stats.receiver_prefill_ms = r->stats.prefill_ms;
    out->stats.last_prompt_ms = out->gen.prefill_ms;
    out->stats.decode_ms = out->gen.decode_ms;
    out->stats.n_decode = out->gen.n_decode;
    return 0;
}

int kw_receive_plan_layers(enum kw_wire_budget_mode mode, const kw_wire_header *shape,
                           const kw_fusion_section *sharer_sections, int32_t n_sections, const kw_select_policy *select,
                           const kw_wire_codec_spec *codecs, uint32_t n_codecs, uint64_t cap, int32_t *layers,
                           int32_t *n_layers, uint64_t *min_bytes) {
    KW_RETURN_IF(*n_layers < 0 || *n_layers > KW_WIRE_MAX_LAYERS || n_sections < 1 ||
                     n_sections > KW_REQUEST_MAX_SECTIONS,
                 KW_E_INVALID_ARG, "budget plan: %d layers, %d sections", (int)*n_layers, (int)n_sections);
    uint32_t blob_rows[KW_REQUEST_MAX_SECTIONS], n_blobs = 0;
    for (int32_t i = 0; i + 1 < n_sections; ++i)
        if (sharer_sections[i].index > 0)
            blob_rows[n_blobs++] = (uint32_t)kw_select_count(select, sharer_sections[i].length);
    *min_bytes = 0;
    if (n_blobs == 0 || *n_layers == 0) return 0; /* nothing is sent */
    const kw_wire_layer_plan_input in = {.hdr = shape,
                                         .n_layers = (uint32_t)*n_layers,
                                         .blob_rows = blob_rows,
                                         .n_blobs = n_blobs,
                                         .codecs = codecs,
                                         .n_codecs = n_codecs,
                                         .index_encoding = KW_WIRE_INDEX_AUTO,
                                         .cap = cap};
    uint8_t choice[KW_WIRE_MAX_LAYERS];
    uint64_t bytes = 0;
    KW_FORWARD(kw_wire_plan_layers(mode, &in, choice, &bytes, min_bytes));
    int32_t kept = 0;
    for (int32_t i = 0; i < *n_layers; ++i)
        if (choice[i]) layers[kept++] = layers[i];
    *n_layers = kept;
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * Two-round refinement
 */

static const char *const kw_refine_names[] = {"margin", "entropy"};

const char *kw_refine_metric_name(enum kw_refine_metric m) {
    return (unsigned)m < 2 ? kw_refine_names[m] : NULL;
}

int kw_refine_metric_parse(const char *name, enum kw_refine_metric *out) {
    KW_RETURN_IF(name == NULL || out == NULL, KW_E_INVALID_ARG, "refine: NULL argument");
    for (int i = 0; i < 2; ++i)
        if (strcmp(name, kw_refine_names[i]) == 0) {
            *out = (enum kw_refine_metric)i;
            return 0;
        }
    KW_FAIL(KW_E_INVALID_ARG, "unknown refine metric \"%s\" (margin, entropy)", name);
}

double kw_refine_measure(enum kw_refine_metric m, const float *logits, int32_t vocab) {
    double top1 = -INFINITY, top2 = -INFINITY;
    for (int32_t i = 0; i < vocab; ++i) {
        const double x = logits[i];
        if (x > top1) {
            top2 = top1;
            top1 = x;
        } else if (x > top2) {
            top2 = x;
        }
    }
    if (m == KW_REFINE_MARGIN) return vocab > 1 ? top1 - top2 : INFINITY;
    double sum = 0.0, dot = 0.0; /* H = log Z - sum p x with Z, x shifted by the maximum */
    for (int32_t i = 0; i < vocab; ++i) {
        const double x = (double)logits[i] - top1, e = exp(x);
        sum += e;
        dot += e * x;
    }
    return log(sum) - dot / sum;
}

int kw_refine_wanted(enum kw_refine_metric m, double value, double threshold) {
    return m == KW_REFINE_MARGIN ? value < threshold : value > threshold;
}

int kw_refine_skips(const kw_fusion_section *sharer_sections, int32_t n_sections, const kw_select_policy *one,
                    const kw_select_policy *two, uint32_t *skip, int32_t *n_skip, int *adds) {
    KW_RETURN_IF(n_sections < 1 || n_sections > KW_REQUEST_MAX_SECTIONS, KW_E_INVALID_ARG, "refine: %d sections",
                 (int)n_sections);
    *n_skip = 0;
    *adds = 1;
    for (int32_t i = 0; i + 1 < n_sections; ++i) {
        if (sharer_sections[i].index <= 0) continue;
        const int64_t k1 = kw_select_count(one, sharer_sections[i].length);
        const int64_t k2 = kw_select_count(two, sharer_sections[i].length);
        skip[(*n_skip)++] = (uint32_t)k1;
        if (k2 <= k1) *adds = 0;
    }
    return 0;
}

int kw_receive_probe(kw_receive *r, enum kw_refine_metric metric, double *value) {
    KW_RETURN_IF(r == NULL || value == NULL, KW_E_INVALID_ARG, "kw_receive_probe: NULL argument");
    KW_RETURN_IF(r->current >= 0 || r->next_prefill != r->n_sections - 1, KW_E_STATE,
                 "kw_receive_probe: sections before the last are not all done");
    const int32_t vocab = kw_model_get_config(r->model)->vocab;
    float *logits = malloc((size_t)vocab * sizeof *logits);
    KW_RETURN_IF(logits == NULL, KW_E_NOMEM, "kw_receive_probe: out of memory");
    const kw_forward_args a = {
        .ids = r->ids + r->prefix, .n = r->n - r->prefix, .mode = KW_LOGITS_LAST, .logits = logits};
    const uint64_t t0 = kw_time_now_ns();
    int rc = kw_model_forward(r->model, r->cache, &a);
    if (rc == 0) rc = kw_kvcache_truncate(r->cache, r->prefix);
    if (rc == 0) *value = kw_refine_measure(metric, logits, vocab);
    r->stats.probe_ms += kw_time_ms(t0, kw_time_now_ns());
    free(logits);
    return rc;
}

int kw_receive_reopen(kw_receive *r, int32_t section) {
    KW_RETURN_IF(r == NULL, KW_E_INVALID_ARG, "kw_receive_reopen: NULL request");
    KW_RETURN_IF(r->current >= 0 || section < 0 || section + 2 != r->n_sections || r->next_prefill != section + 1 ||
                     !kw_receive_section_sent(r, section),
                 KW_E_STATE, "kw_receive_reopen: section %d is not the sent section before the last", (int)section);
    KW_RETURN_IF(kw_kvcache_length(r->cache) != r->prefix, KW_E_STATE,
                 "kw_receive_reopen: the cache holds %lld rows, not the %lld shared ones (probe first)",
                 (long long)kw_kvcache_length(r->cache), (long long)r->prefix);
    if (r->mode == KW_RECEIVE_C2C) {
        KW_FORWARD(kw_fusion_reopen(r->session, section));
    } else { /* the positions round one did not send are still reserved and hidden */
        memset(r->layer_seen, 0, (size_t)r->peers[0].n_layers);
        r->direct_n = -1;
    }
    r->current = section;
    r->cur_len = r->sections[section].length;
    r->cur_start = r->prefix - r->cur_len;
    const int32_t expect = kw_receive_section_sharers(r, section);
    for (int32_t i = 0; i < r->n_peers; ++i) {
        r->peers[i].expecting = (expect >> i) & 1;
        r->peers[i].done = 0;
        kw_wire_decoder_reset(r->peers[i].dec);
    }
    return 0;
}
