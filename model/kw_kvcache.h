/* kw_kvcache.h: the per-layer key/value cache of one sequence, in backend memory.
 *
 * Each layer holds K and V as (Hkv, capacity, head_dim) tensors, bf16 (the default, what HF bf16 caches hold) or f32
 * (for exact fp32 parity), or (kw_kvcache_create_quantized) as paged int8, int6 or int4 storages (kw_kvq_geom in
 * kernels/kw_backend.h: keys per channel over pages of page_tokens rows with a bf16 tail for the page not yet full,
 * values per row), which attention reads directly; kw_kvcache_create_mixed picks the kind per layer (a codec per layer,
 * or bf16 for a layer; one page length). Every function below works on both kinds except kw_kvcache_k/v, which only a
 * dense layer has; a quantized layer's rows read back as the values it holds (fl(code * scale)), exactly what a cache
 * of that layer's codec alone would hold for the same rows. Rows are
 * positions: row p holds the K/V of the token at cache position p, K after RoPE (and after the per-head k_norm of
 * Qwen3), exactly what HF DynamicCache stores. The cache has a length: rows [0, length) are in use; the forward pass
 * appends at length. A per-position validity mask (1 = attend, 0 = padding) lets padded prompts (token alignment) hide
 * rows from attention.
 *
 * Each layer also records the attention window its model uses (0: global attention; Gemma3's sliding layers: the
 * sliding window), set by kw_model_create_cache. Rows outside a layer's window stay stored (positions are rows, and
 * the C2C fuser and the wire code address rows by position); the window tells attention, and any code that
 * transfers or compresses KV, which rows a query can still see.
 *
 * Later stages use it directly: the C2C fuser reads a layer's rows (kw_kvcache_load_rows / kw_kvcache_read_rows) and
 * overwrites them with fused values (kw_kvcache_store_rows / kw_kvcache_write_rows); the wire code reads rows to the
 * host to quantize them. It is not thread-safe: one user at a time, on the backend's stream.
 */
#ifndef KW_KVCACHE_H
#define KW_KVCACHE_H

#include <stdint.h>

#include "kernels/kw_backend.h"

typedef struct kw_kvcache kw_kvcache; /* opaque */

/* Creates an empty cache for n_layers layers of (n_kv_heads, capacity, head_dim) K and V in dtype (KW_DTYPE_BF16 or
 * KW_DTYPE_F32) on backend (borrowed: it must outlive the cache). All positions start valid. *out is owned by the
 * caller (kw_kvcache_free). */
int kw_kvcache_create(kw_backend *backend, int32_t n_layers, int32_t n_kv_heads, int32_t head_dim, int64_t capacity,
                      enum kw_dtype dtype, kw_kvcache **out);

/* Creates an empty quantized cache (codec KW_KVQ_INT8, KW_KVQ_INT6 or KW_KVQ_INT4, pages of page_tokens rows: 16..4096,
 * a multiple of 16; head_dim a multiple of 16) on backend (borrowed). KW_E_OP_UNSUPPORTED when the backend has no
 * quantized cache (kw_backend_supports_kvq: the CPU and the CUDA backend have one). *out is owned by the caller
 * (kw_kvcache_free). */
int kw_kvcache_create_quantized(kw_backend *backend, int32_t n_layers, int32_t n_kv_heads, int32_t head_dim,
                                int64_t capacity, enum kw_kvq_codec codec, int32_t page_tokens, kw_kvcache **out);

/* Creates an empty cache whose layer l is quantized with layer_codecs[l] (KW_KVQ_INT8, KW_KVQ_INT6 or KW_KVQ_INT4,
 * pages of page_tokens rows as for kw_kvcache_create_quantized) or, when layer_codecs[l] is 0, a dense bf16 layer.
 * layer_codecs (n_layers entries) is borrowed for the call. Each layer holds what a cache of its kind alone would hold
 * for the same rows. KW_E_INVALID_ARG for a codec that is none of these; KW_E_OP_UNSUPPORTED as for the other
 * constructors. *out is owned by the caller (kw_kvcache_free). */
int kw_kvcache_create_mixed(kw_backend *backend, int32_t n_layers, int32_t n_kv_heads, int32_t head_dim,
                            int64_t capacity, const enum kw_kvq_codec *layer_codecs, int32_t page_tokens,
                            kw_kvcache **out);

/* A layer codec's name: "int8", "int6", "int4", or "bf16" (0, a dense layer) into *codec. KW_E_INVALID_ARG with the
 * names in the message for any other (or NULL). */
int kw_kvcache_codec_parse(const char *name, enum kw_kvq_codec *codec);

/* Sets the codecs of the layers named by spec, "L:codec[,L:codec...]" ("L=codec" too; spaces around entries are
 * ignored), in codecs (n_layers entries, caller-owned; the layers not named keep their value). L is a layer index,
 * negative from the end (-1 is the last layer); codec as for kw_kvcache_codec_parse. KW_E_INVALID_ARG, saying which
 * entry, for an entry that is not LAYER:CODEC, a layer out of range, a layer named twice or an unknown codec (codecs
 * may then be partly set). */
int kw_kvcache_parse_layer_codecs(const char *spec, int32_t n_layers, enum kw_kvq_codec *codecs);

/* The page length of quantized caches unless configured: 64 rows keeps an int8 cache of 4,096 rows under 52% and an
 * int4 one under 28% of bf16 with every scale and the bf16 tail counted (docs/ARCHITECTURE.md). */
#define KW_KVCACHE_PAGE_TOKENS 64

/* Releases the tensors and the cache. NULL is a no-op. */
void kw_kvcache_free(kw_kvcache *cache);

/* Geometry and state. */
int32_t kw_kvcache_n_layers(const kw_kvcache *cache);
int32_t kw_kvcache_n_kv_heads(const kw_kvcache *cache);
int32_t kw_kvcache_head_dim(const kw_kvcache *cache);
int64_t kw_kvcache_capacity(const kw_kvcache *cache);
/* KW_DTYPE_U8 when every layer is quantized, else the dense layers' dtype (bf16 in a mixed cache) */
enum kw_dtype kw_kvcache_dtype(const kw_kvcache *cache);
/* The codec every layer has, or 0 for a dense (bf16/f32) cache and for a cache whose layers differ (mixed). */
enum kw_kvq_codec kw_kvcache_codec(const kw_kvcache *cache);
/* A layer's codec, 0 for a dense layer or a layer out of range. */
enum kw_kvq_codec kw_kvcache_layer_codec(const kw_kvcache *cache, int32_t layer);
/* 1 when some layer is quantized, else 0. */
int kw_kvcache_quantized(const kw_kvcache *cache);
/* The page length of the quantized layers (0 when there is none). */
int32_t kw_kvcache_page_tokens(const kw_kvcache *cache);
/* Backend bytes of all K and V storage (codes, scales, tails; capacity rows, used or not). */
uint64_t kw_kvcache_bytes(const kw_kvcache *cache);
/* The same for one layer (0 for a layer out of range). */
uint64_t kw_kvcache_layer_bytes(const kw_kvcache *cache, int32_t layer);
kw_backend *kw_kvcache_backend(const kw_kvcache *cache);
/* Rows [0, length) are in use. */
int64_t kw_kvcache_length(const kw_kvcache *cache);

/* The attention window of a layer (0: global, all rows; w > 0: a query at position p sees rows > p - w), or 0 for a
 * layer out of range. */
int64_t kw_kvcache_layer_window(const kw_kvcache *cache, int32_t layer);

/* Sets a layer's window (>= 0; all layers start at 0). KW_E_INVALID_ARG for a layer out of range or window < 0. */
int kw_kvcache_set_layer_window(kw_kvcache *cache, int32_t layer, int64_t window);

/* The K or V tensor (Hkv, capacity, head_dim) of a layer, owned by the cache (valid until kw_kvcache_free), or NULL
 * for a layer out of range or a quantized layer (use kw_kvcache_store_rows / kw_kvcache_attention). Backend ops may
 * read and write it; rows >= length are undefined. */
kw_tensor *kw_kvcache_k(kw_kvcache *cache, int32_t layer);
kw_tensor *kw_kvcache_v(kw_kvcache *cache, int32_t layer);

/* kw_op_attention of q (T, Hq, D) over one layer of the cache into out: for a dense layer exactly kw_op_attention on
 * its tensors; for a quantized one kw_op_attention_kvq on its storages (the same bits as kw_op_attention on an f32
 * cache of the values the storages hold). params as for kw_op_attention (n_kv <= the rows stored in the layer). */
int kw_kvcache_attention(kw_kvcache *cache, int32_t layer, kw_tensor *out, const kw_tensor *q,
                         const kw_attention_params *params);

/* The (capacity) u8 validity mask in backend memory, owned by the cache, or NULL while every row is valid (attention
 * then needs no mask). Pass it as kw_attention_params.kv_mask. */
const kw_tensor *kw_kvcache_mask(const kw_kvcache *cache);

/* 1 if row p is valid (not masked), 0 if masked or outside [0, capacity). From the host mirror: no backend call. */
int kw_kvcache_is_valid(const kw_kvcache *cache, int64_t p);

/* Forgets rows [length, old length): length becomes new_length (<= length, else KW_E_INVALID_ARG). The validity of
 * the forgotten rows is reset to valid. */
int kw_kvcache_truncate(kw_kvcache *cache, int64_t new_length);

/* Empties the cache (length 0, every position valid). */
int kw_kvcache_reset(kw_kvcache *cache);

/* Marks rows [p0, p0 + n) valid (1) or masked (0). Rows may lie beyond length (a padded prompt can be marked before
 * it is run). KW_E_INVALID_ARG when the range leaves [0, capacity). */
int kw_kvcache_set_valid(kw_kvcache *cache, int64_t p0, int64_t n, int valid);

/* The slot for a graph recorded with this cache (kw_model.c's decode step records one per cache, since it holds the
 * cache's tensors). kw_kvcache_set_graph gives graph (may be NULL) to the cache, which frees it with itself or when
 * it is replaced, together with key, what the recording depended on; kw_kvcache_graph returns it while key is the
 * same, else NULL. */
void kw_kvcache_set_graph(kw_kvcache *cache, kw_backend_graph *graph, uint64_t key);
kw_backend_graph *kw_kvcache_graph(const kw_kvcache *cache, uint64_t key);

/* Reserves rows [length, length + n) for the caller, who is about to write them with kv_store (the forward pass does
 * this before each chunk): returns the first row in *row0 and grows length by n. KW_E_MODEL_CONTEXT when the
 * capacity would be exceeded. */
int kw_kvcache_append(kw_kvcache *cache, int64_t n, int64_t *row0);

/* Backend-side row access for one layer: k_out, v_out are f32 (T, Hkv, head_dim) tensors of the cache's backend
 * (owned by the caller) receiving rows [p0, p0 + T); T comes from their outermost dimension. Rows must lie in
 * [0, length). Either output may be NULL. Asynchronous like every op. */
int kw_kvcache_load_rows(kw_kvcache *cache, int32_t layer, int64_t p0, kw_tensor *k_out, kw_tensor *v_out);

/* Overwrites rows [p0, p0 + T) of one layer from f32 (T, Hkv, head_dim) tensors (converted with round-to-nearest-even
 * for a bf16 cache, quantized for a quantized one). p0 <= length; rows past length extend it (p0 + T <= capacity).
 * Either source may be NULL, except that a quantized cache gains rows past those its layer has stored only for K and V
 * together (and needs p0 <= those rows, which the forward pass's append then store keeps equal to length). */
int kw_kvcache_store_rows(kw_kvcache *cache, int32_t layer, int64_t p0, const kw_tensor *k_src, const kw_tensor *v_src);

/* The raw storages of a quantized cache (kernels/kw_kvq_format.h), for code that writes or checks their bytes: one
 * layer's K (keys 1) or V (keys 0) storage, owned by the cache, with its geometry in *geom (may be NULL). NULL for a
 * dense layer or a layer out of range. */
const kw_tensor *kw_kvcache_kvq_storage(const kw_kvcache *cache, int32_t layer, int keys, kw_kvq_geom *geom);

/* The rows layer holds: a quantized layer's stored rows (K and V gain rows together, kw_kvcache_store_rows), a dense
 * layer's the cache's length; -1 for a layer out of range. */
int64_t kw_kvcache_layer_rows(const kw_kvcache *cache, int32_t layer);

/* Rows already in the format of a quantized cache's storages (kernels/kw_kvq_format.h), in host memory laid out per
 * head as the storages lay them out, for kw_kvcache_store_kvq. With P = page_tokens, n rows and full = n / P * P: */
typedef struct kw_kvq_rows {
    const uint8_t *k_codes;  /* (H, full, row bytes): the key codes of the full pages */
    const uint8_t *k_scales; /* (H, full / P, D): their per-channel scale bytes */
    const uint16_t *k_tail;  /* (H, n - full, D) bf16: the keys of the last page, not full (NULL when n = full) */
    const uint8_t *v_codes;  /* (H, n, row bytes): the value codes of every row */
    const uint8_t *v_scales; /* (H, n, D / G): their per-group scale bytes (G = kw_kvq_value_group(D)) */
} kw_kvq_rows;

/* Stores rows [p0, p0 + n) of one quantized layer (the layer's codec and geometry) as the given bytes, without
 * quantizing anything: p0 must be the rows the layer has stored so far and a multiple of page_tokens (its tail page is
 * empty), p0 + n <= capacity. The layer then holds p0 + n rows (length grows to at least that). The bytes are the
 * caller's claim: the codes and scale bytes are copied as they are (any byte is a valid scale; the int8 code -128 and
 * the int6 code -32 are the caller's to avoid). KW_E_INVALID_ARG (a dense layer, a bad position), KW_E_MODEL_CONTEXT
 * (past capacity). Has finished with rows when it returns. */
int kw_kvcache_store_kvq(kw_kvcache *cache, int32_t layer, int64_t p0, int64_t n, const kw_kvq_rows *rows);

/* Host copies: k and v (either may be NULL) are caller-owned f32 arrays of n * Hkv * head_dim values laid out
 * (n, Hkv, head_dim), token-major. read_rows synchronizes the backend before returning; write_rows has the placement
 * rules of store_rows and has finished with k and v when it returns. */
int kw_kvcache_read_rows(kw_kvcache *cache, int32_t layer, int64_t p0, int64_t n, float *k, float *v);
int kw_kvcache_write_rows(kw_kvcache *cache, int32_t layer, int64_t p0, int64_t n, const float *k, const float *v);

#endif /* KW_KVCACHE_H */
