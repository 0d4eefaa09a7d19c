/* kw_kvcache.c: the per-layer KV cache (see kw_kvcache.h). Storage and bookkeeping only; the attention that reads
 * it is a backend op, the forward pass that fills it is kw_model.c. */
#include "model/kw_kvcache.h"

#include <stdlib.h>
#include <string.h>

#include "common/kw_size.h"
#include "common/kw_status.h"
#include "kernels/kw_kvq_format.h"

struct kw_kvcache {
    kw_backend *backend; /* borrowed */
    int32_t n_layers;
    int32_t n_kv_heads;
    int32_t head_dim;
    int64_t capacity;
    enum kw_dtype dtype; /* of the dense layers (bf16 or f32) */
    int64_t length;
    kw_tensor *k; /* n_layers tensors (Hkv, capacity, head_dim), or for a quantized layer its u8 key storage */
    kw_tensor *v; /* likewise for the values */
    enum kw_kvq_codec *codec; /* (n_layers) 0: a dense layer; else the layer's quantized codec */
    int32_t n_quantized;      /* layers with a codec */
    int32_t page_tokens;      /* of every quantized layer (0 when there is none) */
    kw_kvq_geom *kg, *vg;     /* (n_layers) the storages' geometry of a quantized layer */
    int64_t *stored;          /* (n_layers) rows stored in each layer's quantized storages (the tail's place) */
    int64_t *window;          /* (n_layers) attention window per layer, 0 = global */
    uint8_t *valid;           /* host mirror of the mask, capacity entries */
    int64_t n_masked;         /* number of zeros in valid */
    kw_tensor mask;           /* (capacity) u8, allocated when a row is first masked */
    kw_backend_graph *graph;  /* owned: kw_kvcache_set_graph */
    uint64_t graph_key;
};

/* The common part of both constructors: checks, the struct and its host arrays (not the tensors). */
static int kvcache_new(kw_backend *backend, int32_t n_layers, int32_t n_kv_heads, int32_t head_dim, int64_t capacity,
                       kw_kvcache **out) {
    KW_RETURN_IF(!backend || !out, KW_E_INVALID_ARG, "kvcache: NULL argument");
    *out = NULL;
    KW_RETURN_IF(n_layers <= 0 || n_kv_heads <= 0 || head_dim <= 0 || capacity <= 0, KW_E_INVALID_ARG,
                 "kvcache: bad geometry (%d layers, %d heads, head_dim %d, capacity %lld)", (int)n_layers,
                 (int)n_kv_heads, (int)head_dim, (long long)capacity);
    kw_kvcache *c = calloc(1, sizeof *c);
    KW_RETURN_IF(!c, KW_E_NOMEM, "kvcache: out of memory");
    c->backend = backend;
    c->n_layers = n_layers;
    c->n_kv_heads = n_kv_heads;
    c->head_dim = head_dim;
    c->capacity = capacity;
    c->k = calloc((size_t)n_layers, sizeof *c->k);
    c->v = calloc((size_t)n_layers, sizeof *c->v);
    c->window = calloc((size_t)n_layers, sizeof *c->window);
    c->stored = calloc((size_t)n_layers, sizeof *c->stored);
    c->codec = calloc((size_t)n_layers, sizeof *c->codec);
    c->kg = calloc((size_t)n_layers, sizeof *c->kg);
    c->vg = calloc((size_t)n_layers, sizeof *c->vg);
    c->valid = malloc((size_t)capacity);
    if (!c->k || !c->v || !c->window || !c->stored || !c->codec || !c->kg || !c->vg || !c->valid) {
        kw_kvcache_free(c);
        KW_FAIL(KW_E_NOMEM, "kvcache: out of memory");
    }
    memset(c->valid, 1, (size_t)capacity);
    *out = c;
    return 0;
}

/* The size of a dense layer's K or V tensor (Hkv, capacity, head_dim) of dtype. */
static int kvcache_dense_check(kw_backend *backend, int32_t n_kv_heads, int32_t head_dim, int64_t capacity,
                               enum kw_dtype dtype) {
    KW_RETURN_IF(dtype != KW_DTYPE_BF16 && dtype != KW_DTYPE_F32, KW_E_INVALID_ARG,
                 "kvcache: dtype %s (only bf16 and f32 caches exist)", kw_dtype_name(dtype));
    KW_RETURN_IF(!kw_backend_supports(backend, KW_OP_ATTENTION, dtype) ||
                     !kw_backend_supports(backend, KW_OP_KV_STORE, dtype),
                 KW_E_OP_UNSUPPORTED, "kvcache: backend %s has no %s cache support", kw_backend_name(backend),
                 kw_dtype_name(dtype));
    size_t bytes;
    KW_RETURN_IF(kw_size_mul3((size_t)n_kv_heads, (size_t)head_dim, (size_t)capacity, &bytes) < 0 ||
                     kw_size_mul(bytes, kw_dtype_size(dtype), &bytes) < 0,
                 KW_E_OVERFLOW, "kvcache: size overflows");
    return 0;
}

/* Every constructor: layer l is quantized with layer_codecs[l] when that is not 0 (layer_codecs may be NULL: all
 * dense), else dense of dtype. */
static int kvcache_create(kw_backend *backend, int32_t n_layers, int32_t n_kv_heads, int32_t head_dim, int64_t capacity,
                          enum kw_dtype dtype, const enum kw_kvq_codec *layer_codecs, int32_t page_tokens,
                          kw_kvcache **out) {
    KW_RETURN_IF(!backend || !out, KW_E_INVALID_ARG, "kvcache: NULL argument");
    *out = NULL;
    KW_RETURN_IF(n_layers <= 0 || n_kv_heads <= 0 || head_dim <= 0 || capacity <= 0, KW_E_INVALID_ARG,
                 "kvcache: bad geometry (%d layers, %d heads, head_dim %d, capacity %lld)", (int)n_layers,
                 (int)n_kv_heads, (int)head_dim, (long long)capacity);
    int32_t n_quantized = 0;
    for (int32_t l = 0; layer_codecs && l < n_layers; ++l)
        n_quantized += layer_codecs[l] != 0;
    if (n_quantized < n_layers) KW_FORWARD(kvcache_dense_check(backend, n_kv_heads, head_dim, capacity, dtype));
    KW_RETURN_IF(n_quantized > 0 && !kw_backend_supports_kvq(backend), KW_E_OP_UNSUPPORTED,
                 "kvcache: backend %s has no quantized KV cache", kw_backend_name(backend));
    int rc = 0;
    kw_kvcache *c = NULL;
    KW_FORWARD(kvcache_new(backend, n_layers, n_kv_heads, head_dim, capacity, &c));
    c->dtype = dtype;
    c->n_quantized = n_quantized;
    c->page_tokens = n_quantized > 0 ? page_tokens : 0;
    const int64_t ne[3] = {n_kv_heads, capacity, head_dim};
    for (int32_t l = 0; l < n_layers; ++l) {
        const enum kw_kvq_codec codec = layer_codecs ? layer_codecs[l] : 0;
        if (!codec) {
            KW_CHECK(kw_tensor_alloc(backend, &c->k[l], dtype, 3, ne));
            KW_CHECK(kw_tensor_alloc(backend, &c->v[l], dtype, 3, ne));
            continue;
        }
        const kw_kvq_geom kg = {
            .codec = codec, .keys = 1, .H = n_kv_heads, .cap = capacity, .D = head_dim, .page_tokens = page_tokens};
        kw_kvq_geom vg = kg;
        vg.keys = 0;
        size_t kbytes, vbytes;
        KW_CHECK(kw_kvq_bytes(&kg, &kbytes));
        KW_CHECK(kw_kvq_bytes(&vg, &vbytes));
        c->codec[l] = codec;
        c->kg[l] = kg;
        c->vg[l] = vg;
        const int64_t kne[1] = {(int64_t)kbytes}, vne[1] = {(int64_t)vbytes};
        KW_CHECK(kw_tensor_alloc(backend, &c->k[l], KW_DTYPE_U8, 1, kne));
        KW_CHECK(kw_tensor_alloc(backend, &c->v[l], KW_DTYPE_U8, 1, vne));
    }
    *out = c;
    c = NULL;
out:
    kw_kvcache_free(c);
    return rc;
}

int kw_kvcache_create_mixed(kw_backend *backend, int32_t n_layers, int32_t n_kv_heads, int32_t head_dim,
                            int64_t capacity, const enum kw_kvq_codec *layer_codecs, int32_t page_tokens,
                            kw_kvcache **out) {
    KW_RETURN_IF(!out || !layer_codecs, KW_E_INVALID_ARG, "kvcache: NULL argument");
    *out = NULL;
    for (int32_t l = 0; l < n_layers; ++l)
        KW_RETURN_IF(layer_codecs[l] != 0 && layer_codecs[l] != KW_KVQ_INT8 && layer_codecs[l] != KW_KVQ_INT6 &&
                         layer_codecs[l] != KW_KVQ_INT4,
                     KW_E_INVALID_ARG, "kvcache: layer %d: codec %d", (int)l, (int)layer_codecs[l]);
    return kvcache_create(backend, n_layers, n_kv_heads, head_dim, capacity, KW_DTYPE_BF16, layer_codecs, page_tokens,
                          out);
}

int kw_kvcache_create_quantized(kw_backend *backend, int32_t n_layers, int32_t n_kv_heads, int32_t head_dim,
                                int64_t capacity, enum kw_kvq_codec codec, int32_t page_tokens, kw_kvcache **out) {
    KW_RETURN_IF(!out, KW_E_INVALID_ARG, "kvcache: NULL argument");
    *out = NULL;
    KW_RETURN_IF(n_layers <= 0 || codec == 0, KW_E_INVALID_ARG, "kvcache: %d layers, codec %d", (int)n_layers,
                 (int)codec);
    enum kw_kvq_codec *codecs = malloc((size_t)n_layers * sizeof *codecs);
    KW_RETURN_IF(!codecs, KW_E_NOMEM, "kvcache: out of memory");
    for (int32_t l = 0; l < n_layers; ++l)
        codecs[l] = codec;
    const int rc = kw_kvcache_create_mixed(backend, n_layers, n_kv_heads, head_dim, capacity, codecs, page_tokens, out);
    free(codecs);
    return rc;
}

int kw_kvcache_create(kw_backend *backend, int32_t n_layers, int32_t n_kv_heads, int32_t head_dim, int64_t capacity,
                      enum kw_dtype dtype, kw_kvcache **out) {
    return kvcache_create(backend, n_layers, n_kv_heads, head_dim, capacity, dtype, NULL, 0, out);
}

void kw_kvcache_free(kw_kvcache *cache) {
    if (!cache) return;
    if (cache->k || cache->v) kw_backend_synchronize(cache->backend);
    kw_backend_graph_free(cache->graph);
    for (int32_t l = 0; l < cache->n_layers; ++l) {
        if (cache->k) kw_tensor_free(&cache->k[l]);
        if (cache->v) kw_tensor_free(&cache->v[l]);
    }
    kw_tensor_free(&cache->mask);
    free(cache->k);
    free(cache->v);
    free(cache->window);
    free(cache->stored);
    free(cache->codec);
    free(cache->kg);
    free(cache->vg);
    free(cache->valid);
    free(cache);
}

int32_t kw_kvcache_n_layers(const kw_kvcache *cache) {
    return cache->n_layers;
}
int32_t kw_kvcache_n_kv_heads(const kw_kvcache *cache) {
    return cache->n_kv_heads;
}
int32_t kw_kvcache_head_dim(const kw_kvcache *cache) {
    return cache->head_dim;
}
int64_t kw_kvcache_capacity(const kw_kvcache *cache) {
    return cache->capacity;
}
enum kw_dtype kw_kvcache_dtype(const kw_kvcache *cache) {
    return cache->n_quantized == cache->n_layers ? KW_DTYPE_U8 : cache->dtype;
}
kw_backend *kw_kvcache_backend(const kw_kvcache *cache) {
    return cache->backend;
}
int64_t kw_kvcache_length(const kw_kvcache *cache) {
    return cache->length;
}

int64_t kw_kvcache_layer_window(const kw_kvcache *cache, int32_t layer) {
    return (cache && layer >= 0 && layer < cache->n_layers) ? cache->window[layer] : 0;
}

int kw_kvcache_set_layer_window(kw_kvcache *cache, int32_t layer, int64_t window) {
    KW_RETURN_IF(!cache || layer < 0 || layer >= cache->n_layers || window < 0, KW_E_INVALID_ARG,
                 "kvcache: cannot set window %lld of layer %d", (long long)window, (int)layer);
    cache->window[layer] = window;
    return 0;
}

enum kw_kvq_codec kw_kvcache_codec(const kw_kvcache *cache) {
    for (int32_t l = 1; l < cache->n_layers; ++l)
        if (cache->codec[l] != cache->codec[0]) return 0;
    return cache->codec[0];
}

enum kw_kvq_codec kw_kvcache_layer_codec(const kw_kvcache *cache, int32_t layer) {
    return (cache && layer >= 0 && layer < cache->n_layers) ? cache->codec[layer] : 0;
}

int kw_kvcache_quantized(const kw_kvcache *cache) {
    return cache->n_quantized > 0;
}

int32_t kw_kvcache_page_tokens(const kw_kvcache *cache) {
    return cache->page_tokens;
}

uint64_t kw_kvcache_layer_bytes(const kw_kvcache *cache, int32_t layer) {
    if (!cache || layer < 0 || layer >= cache->n_layers) return 0;
    return kw_tensor_nbytes(&cache->k[layer]) + kw_tensor_nbytes(&cache->v[layer]);
}

uint64_t kw_kvcache_bytes(const kw_kvcache *cache) {
    uint64_t total = 0;
    for (int32_t l = 0; l < cache->n_layers; ++l)
        total += kw_kvcache_layer_bytes(cache, l);
    return total;
}

kw_tensor *kw_kvcache_k(kw_kvcache *cache, int32_t layer) {
    return (layer >= 0 && layer < cache->n_layers && !cache->codec[layer]) ? &cache->k[layer] : NULL;
}

kw_tensor *kw_kvcache_v(kw_kvcache *cache, int32_t layer) {
    return (layer >= 0 && layer < cache->n_layers && !cache->codec[layer]) ? &cache->v[layer] : NULL;
}

int kw_kvcache_attention(kw_kvcache *cache, int32_t layer, kw_tensor *out, const kw_tensor *q,
                         const kw_attention_params *params) {
    KW_RETURN_IF(layer < 0 || layer >= cache->n_layers, KW_E_INVALID_ARG, "kvcache: layer %d of %d", (int)layer,
                 (int)cache->n_layers);
    if (!cache->codec[layer])
        return kw_op_attention(cache->backend, out, q, &cache->k[layer], &cache->v[layer], params);
    return kw_op_attention_kvq(cache->backend, out, q, &cache->k[layer], &cache->kg[layer], &cache->v[layer],
                               &cache->vg[layer], params, cache->stored[layer]);
}

int kw_kvcache_is_valid(const kw_kvcache *cache, int64_t p) {
    return cache != NULL && p >= 0 && p < cache->capacity && cache->valid[p] != 0;
}

void kw_kvcache_set_graph(kw_kvcache *cache, kw_backend_graph *graph, uint64_t key) {
    if (cache->graph != graph) kw_backend_graph_free(cache->graph);
    cache->graph = graph;
    cache->graph_key = key;
}

kw_backend_graph *kw_kvcache_graph(const kw_kvcache *cache, uint64_t key) {
    return cache->graph_key == key ? cache->graph : NULL;
}

const kw_tensor *kw_kvcache_mask(const kw_kvcache *cache) {
    return cache->n_masked > 0 ? &cache->mask : NULL;
}

/* Sets valid[p0, p0+n) and mirrors the change to the backend mask. */
static int kvcache_mark(kw_kvcache *c, int64_t p0, int64_t n, uint8_t value) {
    int64_t changed = 0;
    for (int64_t p = p0; p < p0 + n; ++p) {
        if (c->valid[p] != value) {
            c->n_masked += value ? -1 : 1;
            c->valid[p] = value;
            ++changed;
        }
    }
    if (!changed) return 0;
    if (!c->mask.data) {
        if (c->n_masked == 0) return 0; /* nothing masked and no mask yet: attention needs none */
        const int64_t ne[1] = {c->capacity};
        KW_FORWARD(kw_tensor_alloc(c->backend, &c->mask, KW_DTYPE_U8, 1, ne));
        KW_FORWARD(kw_backend_upload(c->backend, &c->mask, 0, c->valid, (size_t)c->capacity));
    } else {
        KW_FORWARD(kw_backend_upload(c->backend, &c->mask, (size_t)p0, c->valid + p0, (size_t)n));
    }
    /* valid is the source of an upload and changes on the next call: wait for the copy to finish */
    return kw_backend_synchronize(c->backend);
}

int kw_kvcache_truncate(kw_kvcache *cache, int64_t new_length) {
    KW_RETURN_IF(new_length < 0 || new_length > cache->length, KW_E_INVALID_ARG,
                 "kvcache: truncate to %lld, length is %lld", (long long)new_length, (long long)cache->length);
    const int64_t old = cache->length;
    for (int32_t l = 0; l < cache->n_layers; ++l) {
        if (!cache->codec[l] || cache->stored[l] <= new_length) continue;
        KW_FORWARD(kw_op_kvq_truncate(cache->backend, &cache->k[l], &cache->kg[l], cache->stored[l], new_length));
        KW_FORWARD(kw_op_kvq_truncate(cache->backend, &cache->v[l], &cache->vg[l], cache->stored[l], new_length));
        cache->stored[l] = new_length;
    }
    cache->length = new_length;
    return kvcache_mark(cache, new_length, old - new_length, 1);
}

int kw_kvcache_reset(kw_kvcache *cache) {
    cache->length = 0;
    for (int32_t l = 0; l < cache->n_layers; ++l)
        cache->stored[l] = 0; /* an empty storage has no tail to keep */
    return cache->n_masked ? kvcache_mark(cache, 0, cache->capacity, 1) : 0;
}

int kw_kvcache_set_valid(kw_kvcache *cache, int64_t p0, int64_t n, int valid) {
    KW_RETURN_IF(p0 < 0 || n < 0 || p0 > cache->capacity || n > cache->capacity - p0, KW_E_INVALID_ARG,
                 "kvcache: rows [%lld, +%lld) outside capacity %lld", (long long)p0, (long long)n,
                 (long long)cache->capacity);
    return kvcache_mark(cache, p0, n, valid ? 1 : 0);
}

int kw_kvcache_append(kw_kvcache *cache, int64_t n, int64_t *row0) {
    KW_RETURN_IF(n < 0, KW_E_INVALID_ARG, "kvcache: append %lld rows", (long long)n);
    KW_RETURN_IF(n > cache->capacity - cache->length, KW_E_MODEL_CONTEXT,
                 "kvcache: %lld rows do not fit (length %lld, capacity %lld)", (long long)n, (long long)cache->length,
                 (long long)cache->capacity);
    *row0 = cache->length;
    cache->length += n;
    return 0;
}

static int kvcache_check_rows(const kw_kvcache *c, int32_t layer, const kw_tensor *t, int64_t *rows) {
    KW_RETURN_IF(layer < 0 || layer >= c->n_layers, KW_E_INVALID_ARG, "kvcache: layer %d of %d", (int)layer,
                 (int)c->n_layers);
    if (!t) return 0;
    KW_RETURN_IF(t->dtype != KW_DTYPE_F32 || t->ndim != 3 || t->ne[1] != c->n_kv_heads || t->ne[2] != c->head_dim,
                 KW_E_SHAPE, "kvcache: rows tensor must be f32 (T, %d, %d)", (int)c->n_kv_heads, (int)c->head_dim);
    *rows = t->ne[0];
    return 0;
}

int kw_kvcache_load_rows(kw_kvcache *cache, int32_t layer, int64_t p0, kw_tensor *k_out, kw_tensor *v_out) {
    int64_t nk = -1, nv = -1;
    KW_FORWARD(kvcache_check_rows(cache, layer, k_out, &nk));
    KW_FORWARD(kvcache_check_rows(cache, layer, v_out, &nv));
    const int64_t n = nk >= 0 ? nk : nv;
    KW_RETURN_IF(nk >= 0 && nv >= 0 && nk != nv, KW_E_SHAPE, "kvcache: K and V row counts differ");
    KW_RETURN_IF(p0 < 0 || n > cache->length - p0, KW_E_INVALID_ARG, "kvcache: rows [%lld, +%lld) beyond length %lld",
                 (long long)p0, (long long)n, (long long)cache->length);
    if (cache->codec[layer]) {
        const int64_t stored = cache->stored[layer];
        KW_RETURN_IF(n > stored - p0, KW_E_INVALID_ARG, "kvcache: rows [%lld, +%lld) were never stored (%lld are)",
                     (long long)p0, (long long)n, (long long)stored);
        if (k_out) KW_FORWARD(kw_op_kvq_load(cache->backend, k_out, &cache->k[layer], &cache->kg[layer], p0, stored));
        if (v_out) KW_FORWARD(kw_op_kvq_load(cache->backend, v_out, &cache->v[layer], &cache->vg[layer], p0, stored));
        return 0;
    }
    if (k_out) KW_FORWARD(kw_op_kv_load(cache->backend, k_out, &cache->k[layer], p0));
    if (v_out) KW_FORWARD(kw_op_kv_load(cache->backend, v_out, &cache->v[layer], p0));
    return 0;
}

int kw_kvcache_store_rows(kw_kvcache *cache, int32_t layer, int64_t p0, const kw_tensor *k_src,
                          const kw_tensor *v_src) {
    int64_t nk = -1, nv = -1;
    KW_FORWARD(kvcache_check_rows(cache, layer, k_src, &nk));
    KW_FORWARD(kvcache_check_rows(cache, layer, v_src, &nv));
    const int64_t n = nk >= 0 ? nk : nv;
    KW_RETURN_IF(nk >= 0 && nv >= 0 && nk != nv, KW_E_SHAPE, "kvcache: K and V row counts differ");
    KW_RETURN_IF(p0 < 0 || p0 > cache->length, KW_E_INVALID_ARG,
                 "kvcache: store at row %lld leaves a gap (length %lld)", (long long)p0, (long long)cache->length);
    KW_RETURN_IF(n > cache->capacity - p0, KW_E_MODEL_CONTEXT, "kvcache: rows [%lld, +%lld) beyond capacity %lld",
                 (long long)p0, (long long)n, (long long)cache->capacity);
    if (cache->codec[layer]) {
        /* a quantized layer stores K and V together: its stored row count is shared */
        const int64_t stored = cache->stored[layer];
        KW_RETURN_IF((!k_src || !v_src) && n > stored - p0, KW_E_INVALID_ARG,
                     "kvcache: a quantized cache gains new rows for K and V together");
        KW_RETURN_IF(p0 > stored, KW_E_INVALID_ARG, "kvcache: store at row %lld leaves a gap (%lld stored)",
                     (long long)p0, (long long)stored);
        if (k_src) KW_FORWARD(kw_op_kvq_store(cache->backend, &cache->k[layer], &cache->kg[layer], k_src, p0, stored));
        if (v_src) KW_FORWARD(kw_op_kvq_store(cache->backend, &cache->v[layer], &cache->vg[layer], v_src, p0, stored));
        if (p0 + n > stored) cache->stored[layer] = p0 + n;
    } else {
        if (k_src) KW_FORWARD(kw_op_kv_store(cache->backend, &cache->k[layer], k_src, p0));
        if (v_src) KW_FORWARD(kw_op_kv_store(cache->backend, &cache->v[layer], v_src, p0));
    }
    if (p0 + n > cache->length) cache->length = p0 + n;
    return 0;
}

/* A temporary f32 (n, Hkv, D) backend tensor for the host copies. */
static int kvcache_tmp(kw_kvcache *c, int64_t n, kw_tensor *t) {
    KW_RETURN_IF(n <= 0, KW_E_INVALID_ARG, "kvcache: %lld rows", (long long)n);
    const int64_t ne[3] = {n, c->n_kv_heads, c->head_dim};
    return kw_tensor_alloc(c->backend, t, KW_DTYPE_F32, 3, ne);
}

int kw_kvcache_read_rows(kw_kvcache *cache, int32_t layer, int64_t p0, int64_t n, float *k, float *v) {
    KW_RETURN_IF(layer < 0 || layer >= cache->n_layers, KW_E_INVALID_ARG, "kvcache: layer %d", (int)layer);
    KW_RETURN_IF(p0 < 0 || n < 0 || n > cache->length - p0, KW_E_INVALID_ARG,
                 "kvcache: rows [%lld, +%lld) beyond length %lld", (long long)p0, (long long)n,
                 (long long)cache->length);
    if (n == 0) return 0;
    int rc = 0;
    kw_tensor tk = {0}, tv = {0};
    if (k) KW_CHECK(kvcache_tmp(cache, n, &tk));
    if (v) KW_CHECK(kvcache_tmp(cache, n, &tv));
    KW_CHECK(kw_kvcache_load_rows(cache, layer, p0, k ? &tk : NULL, v ? &tv : NULL));
    if (k) KW_CHECK(kw_backend_download(cache->backend, k, &tk, 0, kw_tensor_nbytes(&tk)));
    if (v) KW_CHECK(kw_backend_download(cache->backend, v, &tv, 0, kw_tensor_nbytes(&tv)));
out:;
    const int sync = kw_backend_synchronize(cache->backend);
    if (rc == 0) rc = sync;
    kw_tensor_free(&tk);
    kw_tensor_free(&tv);
    return rc;
}

int kw_kvcache_write_rows(kw_kvcache *cache, int32_t layer, int64_t p0, int64_t n, const float *k, const float *v) {
    KW_RETURN_IF(layer < 0 || layer >= cache->n_layers, KW_E_INVALID_ARG, "kvcache: layer %d", (int)layer);
    KW_RETURN_IF(n < 0, KW_E_INVALID_ARG, "kvcache: %lld rows", (long long)n);
    if (n == 0) return 0;
    int rc = 0;
    kw_tensor tk = {0}, tv = {0};
    if (k) {
        KW_CHECK(kvcache_tmp(cache, n, &tk));
        KW_CHECK(kw_backend_upload(cache->backend, &tk, 0, k, kw_tensor_nbytes(&tk)));
    }
    if (v) {
        KW_CHECK(kvcache_tmp(cache, n, &tv));
        KW_CHECK(kw_backend_upload(cache->backend, &tv, 0, v, kw_tensor_nbytes(&tv)));
    }
    KW_CHECK(kw_kvcache_store_rows(cache, layer, p0, k ? &tk : NULL, v ? &tv : NULL));
out:;
    const int sync = kw_backend_synchronize(cache->backend);
    if (rc == 0) rc = sync;
    kw_tensor_free(&tk);
    kw_tensor_free(&tv);
    return rc;
}

const kw_tensor *kw_kvcache_kvq_storage(const kw_kvcache *cache, int32_t layer, int keys, kw_kvq_geom *geom) {
    if (!cache || layer < 0 || layer >= cache->n_layers || !cache->codec[layer]) return NULL;
    if (geom) *geom = keys ? cache->kg[layer] : cache->vg[layer];
    return keys ? &cache->k[layer] : &cache->v[layer];
}

int64_t kw_kvcache_layer_rows(const kw_kvcache *cache, int32_t layer) {
    if (!cache || layer < 0 || layer >= cache->n_layers) return -1;
    return cache->codec[layer] ? cache->stored[layer] : cache->length;
}

int kw_kvcache_store_kvq(kw_kvcache *cache, int32_t layer, int64_t p0, int64_t n, const kw_kvq_rows *rows) {
    KW_RETURN_IF(!cache || !rows, KW_E_INVALID_ARG, "kvcache: raw rows need a quantized cache");
    KW_RETURN_IF(layer < 0 || layer >= cache->n_layers || n < 0, KW_E_INVALID_ARG, "kvcache: layer %d, %lld rows",
                 (int)layer, (long long)n);
    KW_RETURN_IF(!cache->codec[layer], KW_E_INVALID_ARG, "kvcache: raw rows need a quantized layer (layer %d is dense)",
                 (int)layer);
    const kw_kvq_geom *kg = &cache->kg[layer], *vg = &cache->vg[layer];
    const int64_t P = kg->page_tokens, D = kg->D, H = kg->H, G = kw_kvq_value_group(D);
    KW_RETURN_IF(p0 != cache->stored[layer] || p0 % P != 0 || p0 > cache->length, KW_E_INVALID_ARG,
                 "kvcache: raw rows at %lld, but layer %d holds %lld rows (pages of %lld, length %lld)", (long long)p0,
                 (int)layer, (long long)cache->stored[layer], (long long)P, (long long)cache->length);
    KW_RETURN_IF(n > cache->capacity - p0, KW_E_MODEL_CONTEXT, "kvcache: rows [%lld, +%lld) beyond capacity %lld",
                 (long long)p0, (long long)n, (long long)cache->capacity);
    const int64_t full = n / P * P;
    KW_RETURN_IF(!rows->v_codes || !rows->v_scales || (full > 0 && (!rows->k_codes || !rows->k_scales)) ||
                     (n > full && !rows->k_tail),
                 KW_E_INVALID_ARG, "kvcache: raw rows without their bytes");
    if (n == 0) return 0;
    const size_t rb = kw_kvq_row_bytes(kg->codec, D), khead = kw_kvq_head_bytes(kg), vhead = kw_kvq_head_bytes(vg);
    kw_tensor *ks = &cache->k[layer], *vs = &cache->v[layer];
    int rc = 0;
    for (int64_t h = 0; h < H && rc == 0; ++h) {
        const size_t kb = (size_t)h * khead, vb = (size_t)h * vhead;
        if (full > 0) {
            rc = kw_backend_upload(cache->backend, ks, kb + (size_t)p0 * rb, rows->k_codes + (size_t)(h * full) * rb,
                                   (size_t)full * rb);
            if (rc == 0)
                rc = kw_backend_upload(cache->backend, ks, kb + kw_kvq_scales_offset(kg) + (size_t)(p0 / P * D),
                                       rows->k_scales + (size_t)(h * (full / P) * D), (size_t)(full / P * D));
        }
        if (rc == 0 && n > full)
            rc = kw_backend_upload(cache->backend, ks, kb + kw_kvq_tail_offset(kg),
                                   rows->k_tail + (size_t)(h * (n - full) * D), (size_t)((n - full) * D) * 2);
        if (rc == 0)
            rc = kw_backend_upload(cache->backend, vs, vb + (size_t)p0 * rb, rows->v_codes + (size_t)(h * n) * rb,
                                   (size_t)n * rb);
        if (rc == 0)
            rc = kw_backend_upload(cache->backend, vs, vb + kw_kvq_scales_offset(vg) + (size_t)(p0 * (D / G)),
                                   rows->v_scales + (size_t)(h * n * (D / G)), (size_t)(n * (D / G)));
    }
    const int sync = kw_backend_synchronize(cache->backend); /* rows are the caller's again when this returns */
    if (rc == 0) rc = sync;
    KW_FORWARD(rc);
    cache->stored[layer] = p0 + n;
    if (p0 + n > cache->length) cache->length = p0 + n;
    return 0;
}

int kw_kvcache_codec_parse(const char *name, enum kw_kvq_codec *codec) {
    static const struct {
        const char *name;
        enum kw_kvq_codec codec;
    } names[] = {{"int8", KW_KVQ_INT8}, {"int6", KW_KVQ_INT6}, {"int4", KW_KVQ_INT4}, {"bf16", 0}};
    for (size_t i = 0; name && i < sizeof names / sizeof names[0]; ++i) {
        if (strcmp(name, names[i].name) == 0) {
            *codec = names[i].codec;
            return 0;
        }
    }
    KW_FAIL(KW_E_INVALID_ARG, "kvcache: unknown layer codec \"%s\" (int8, int6, int4 or bf16)", name ? name : "");
}

/* One "L:codec" (or "L=codec") entry of len bytes at e into codecs; seen marks the layers named so far. */
static int kvcache_parse_entry(const char *e, size_t len, int32_t n_layers, enum kw_kvq_codec *codecs, uint8_t *seen) {
    while (len > 0 && (*e == ' ' || *e == '\t'))
        ++e, --len;
    while (len > 0 && (e[len - 1] == ' ' || e[len - 1] == '\t'))
        --len;
    char buf[64];
    KW_RETURN_IF(len == 0 || len >= sizeof buf, KW_E_INVALID_ARG,
                 "kvcache: layer codec entry \"%.*s\" is not LAYER:CODEC", (int)len, e);
    memcpy(buf, e, len);
    buf[len] = '\0';
    char *sep = strpbrk(buf, ":=");
    KW_RETURN_IF(!sep, KW_E_INVALID_ARG, "kvcache: layer codec entry \"%s\" is not LAYER:CODEC", buf);
    *sep = '\0';
    char *end = NULL;
    const long long idx = strtoll(buf, &end, 10);
    KW_RETURN_IF(end == buf || *end != '\0', KW_E_INVALID_ARG,
                 "kvcache: layer codec entry \"%.*s\": \"%s\" is not a layer", (int)len, e, buf);
    KW_RETURN_IF(idx < -(long long)n_layers || idx >= n_layers, KW_E_INVALID_ARG,
                 "kvcache: layer %lld is out of range (the model has %d layers: 0..%d, or -%d..-1 from the end)", idx,
                 (int)n_layers, (int)n_layers - 1, (int)n_layers);
    const int32_t layer = (int32_t)(idx < 0 ? idx + n_layers : idx);
    KW_RETURN_IF(seen[layer], KW_E_INVALID_ARG, "kvcache: layer %d is given a codec twice", (int)layer);
    seen[layer] = 1;
    return kw_kvcache_codec_parse(sep + 1, &codecs[layer]);
}

int kw_kvcache_parse_layer_codecs(const char *spec, int32_t n_layers, enum kw_kvq_codec *codecs) {
    KW_RETURN_IF(!spec || !codecs || n_layers <= 0, KW_E_INVALID_ARG, "kvcache: NULL argument");
    uint8_t *seen = calloc((size_t)n_layers, 1);
    KW_RETURN_IF(!seen, KW_E_NOMEM, "kvcache: out of memory");
    int rc = 0;
    for (const char *p = spec; rc == 0;) {
        const char *comma = strchr(p, ',');
        const size_t len = comma ? (size_t)(comma - p) : strlen(p);
        rc = kvcache_parse_entry(p, len, n_layers, codecs, seen);
        if (!comma) break;
        p = comma + 1;
    }
    free(seen);
    return rc;
}
