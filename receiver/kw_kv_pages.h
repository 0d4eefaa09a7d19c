/* kw_kv_pages.h: KVWire sections stored as the pages of a quantized KV cache without dequantizing and requantizing
 * (kv_direct, docs/ARCHITECTURE.md "The wire format as the cache format").
 *
 * A section maps losslessly onto the cache's storages (kernels/kw_kvq_format.h) when its codes are the cache's codes
 * and its scales the cache's scales: one token group; K and V in the cache's codec (int8, int6 or int4, symmetric: no
 * zero points); log8 scales (KVWire v1.1), which are the cache's log-scale bytes themselves, or e8m0 scales 2^k with
 * -15 <= k <= 15, which are the cache's bytes 128 + 8k exactly (a group whose codes are all 0 maps to the byte 0
 * whatever its scale); K per channel over runs of exactly page_tokens rows
 * (KVWire v1.1 granularity channel<page_tokens>) and V per group of the cache's value group (32 channels, 16 when
 * head_dim is not a multiple of 32); no outlier table and no pre-RoPE keys; and positions that continue the layer's
 * stored rows, which end on a page boundary. Codes are repacked (the cache's int4 and int6 packing differs from the
 * wire's), never recomputed. The section's full pages become key pages; the keys of its last rows, fewer than a page,
 * go to the cache's bf16 tail as their decoded values fl(code * s) rounded to bf16, what the decoding path stores
 * there too (with e8m0 scales bf16 holds them exactly: a code has at most 7 significant bits). Values have no tail:
 * every row is direct.
 */
#ifndef KW_KV_PAGES_H
#define KW_KV_PAGES_H

#include <stdint.h>

#include "model/kw_kvcache.h"
#include "wire/kw_wire.h"

/* Why a section is not stored directly (KW_KV_STORE_DIRECT: it is). */
enum kw_kv_store_reason {
    KW_KV_STORE_DIRECT = 0,
    KW_KV_STORE_DENSE_CACHE = 1,    /* the cache is bf16 or f32: nothing to store codes in */
    KW_KV_STORE_FORCED = 2,         /* the caller asked for the requantizing path */
    KW_KV_STORE_TOKEN_GROUPS = 3,   /* more than one token group */
    KW_KV_STORE_CODEC = 4,          /* K or V is not in the cache's codec */
    KW_KV_STORE_ZERO_POINTS = 5,    /* K or V has zero points (the cache's codes are symmetric) */
    KW_KV_STORE_SCALE_DTYPE = 6,    /* K or V scales are neither log8 nor e8m0 */
    KW_KV_STORE_KEY_LAYOUT = 7,     /* K is not per channel over runs of page_tokens rows */
    KW_KV_STORE_VALUE_LAYOUT = 8,   /* V is not per group of the cache's value group */
    KW_KV_STORE_OUTLIERS = 9,       /* the section has an outlier table */
    KW_KV_STORE_PRE_ROPE = 10,      /* K was sent before RoPE (it is rotated after decoding) */
    KW_KV_STORE_POSITIONS = 11,     /* the positions are not the rows that continue the layer's stored ones */
    KW_KV_STORE_PAGE_BOUNDARY = 12, /* the layer's stored rows do not end on a page boundary */
    KW_KV_STORE_SCALE_RANGE = 13,   /* an e8m0 scale of a group with a non-zero code is outside 2^-15..2^15 */
    KW_KV_STORE_NO_CODEC = 14,      /* f32 rows without a KVWire section (kw_receive_rows): quantized once */
    KW_KV_STORE_ROTATED = 15, /* K or V was sent Hadamard-rotated (rotated back after decoding, FORMAT.md §5.12) */
};
#define KW_KV_STORE_REASONS 16

/* "direct", "dense_cache", "forced", "token_groups", "codec", "zero_points", "scale_dtype", "key_layout",
 * "value_layout", "outliers", "pre_rope", "positions", "page_boundary", "scale_range", "no_codec", "rotated"; "?" for
 * others. */
const char *kw_kv_store_reason_name(enum kw_kv_store_reason reason);

/* The host buffers one section's rows take in the cache's format (owned, reused from section to section). */
typedef struct kw_kv_pages {
    kw_kvq_rows rows; /* views into the buffers below, for kw_kvcache_store_kvq */
    int64_t n_rows;   /* rows of the last mapped section */
    int64_t full;     /* of which in full key pages */
    uint8_t *buf;     /* owned */
    size_t cap;
} kw_kv_pages;

/* Maps a verified section (sec, its T positions) onto the storages of geometry kg (the cache's key geometry;
 * kw_kvcache_kvq_storage) whose layer holds `stored` rows. *reason says whether it maps; when it does
 * (KW_KV_STORE_DIRECT), pg->rows holds the section's bytes for kw_kvcache_store_kvq(cache, layer, stored, T, ...).
 * Returns 0, KW_E_WIRE_VALUE for a reserved code (the decoder would reject it too: the section is bad whatever the
 * path), KW_E_NOMEM, KW_E_INVALID_ARG. */
int kw_kv_pages_map(kw_kv_pages *pg, const kw_wire_section *sec, const uint32_t *positions, const kw_kvq_geom *kg,
                    int64_t stored, enum kw_kv_store_reason *reason);

/* The KVWire codecs whose sections map onto the pages of a cache of this codec, page length and head_dim (a multiple of
 * 16): K codec channel<page_tokens> log8, V codec group<32 or 16> log8 (needs KVWire v1.1). The sharer encodes
 * with them when a kv_direct request asks for the receiver's cache layout (policy codec "cache"). KW_E_INVALID_ARG for
 * a page length that is not a power of two (a KVWire run length is one) or a bad codec. */
int kw_kv_pages_specs(enum kw_kvq_codec codec, int32_t page_tokens, int32_t head_dim, kw_wire_codec_spec *k,
                      kw_wire_codec_spec *v);

/* Frees the buffers (pg itself is the caller's); NULL is a no-op. */
void kw_kv_pages_free(kw_kv_pages *pg);

#endif /* KW_KV_PAGES_H */
