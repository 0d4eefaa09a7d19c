/* kw_kv_pages.c: KVWire sections as quantized cache pages, codes repacked, never requantized (see kw_kv_pages.h). */
#include "receiver/kw_kv_pages.h"

#include <stdlib.h>
#include <string.h>

#include "common/kw_fp8.h"
#include "common/kw_half.h"
#include "common/kw_status.h"
#include "kernels/kw_kvq_format.h"

static const char *const kw_kv_store_names[KW_KV_STORE_REASONS] = {
    "direct",        "dense_cache", "forced",       "token_groups", "codec",    "zero_points",
    "scale_dtype",   "key_layout",  "value_layout", "outliers",     "pre_rope", "positions",
    "page_boundary", "scale_range", "no_codec",     "rotated"};

const char *kw_kv_store_reason_name(enum kw_kv_store_reason reason) {
    return (unsigned)reason < KW_KV_STORE_REASONS ? kw_kv_store_names[reason] : "?";
}

void kw_kv_pages_free(kw_kv_pages *pg) {
    if (!pg) return;
    free(pg->buf);
    memset(pg, 0, sizeof *pg);
}

/* The KVWire codec of a cache codec. */
static uint32_t kw_kv_pages_wire_codec(enum kw_kvq_codec c) {
    return c == KW_KVQ_INT8 ? KW_WIRE_CODEC_INT8 : c == KW_KVQ_INT6 ? KW_WIRE_CODEC_INT6 : KW_WIRE_CODEC_INT4;
}

int kw_kv_pages_specs(enum kw_kvq_codec codec, int32_t page_tokens, int32_t head_dim, kw_wire_codec_spec *k,
                      kw_wire_codec_spec *v) {
    KW_RETURN_IF(codec != KW_KVQ_INT8 && codec != KW_KVQ_INT6 && codec != KW_KVQ_INT4, KW_E_INVALID_ARG,
                 "kv pages: cache codec %d", (int)codec);
    KW_RETURN_IF(page_tokens < 16 || page_tokens > 4096 || (page_tokens & (page_tokens - 1)) != 0 || head_dim < 16 ||
                     head_dim % 16 != 0,
                 KW_E_INVALID_ARG,
                 "kv pages: pages of %d rows (KVWire runs are a power of two long) or head_dim %d (a multiple of 16)",
                 (int)page_tokens, (int)head_dim);
    int l2 = 0;
    while ((1 << l2) < page_tokens)
        ++l2;
    const uint8_t c = (uint8_t)kw_kv_pages_wire_codec(codec);
    *k = (kw_wire_codec_spec){c, KW_WIRE_GRAN_CHANNEL, KW_WIRE_SCALE_LOG8, (uint8_t)l2};
    *v = (kw_wire_codec_spec){c, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_LOG8, kw_kvq_value_group(head_dim) == 32 ? 5 : 4};
    return 0;
}

/* The first reason the section's layout keeps it from mapping onto pages of kg, or KW_KV_STORE_DIRECT. */
static enum kw_kv_store_reason kw_kv_pages_layout(const kw_wire_section *sec, const uint32_t *positions,
                                                  const kw_kvq_geom *kg, int64_t stored) {
    if (sec->n_groups != 1) return KW_KV_STORE_TOKEN_GROUPS;
    const kw_wire_codec_spec *k = &sec->groups[0].k.spec, *v = &sec->groups[0].v.spec;
    const uint32_t codec = kw_kv_pages_wire_codec(kg->codec);
    if (k->codec != codec || v->codec != codec) return KW_KV_STORE_CODEC;
    if (kw_wire_spec_asym(k) || kw_wire_spec_asym(v)) return KW_KV_STORE_ZERO_POINTS;
    const uint32_t ks = kw_wire_spec_scale(k), vs = kw_wire_spec_scale(v);
    if ((ks != KW_WIRE_SCALE_LOG8 && ks != KW_WIRE_SCALE_E8M0) ||
        (vs != KW_WIRE_SCALE_LOG8 && vs != KW_WIRE_SCALE_E8M0))
        return KW_KV_STORE_SCALE_DTYPE;
    if (k->granularity != KW_WIRE_GRAN_CHANNEL || (1ll << k->group_log2) != kg->page_tokens)
        return KW_KV_STORE_KEY_LAYOUT;
    if (v->granularity != KW_WIRE_GRAN_GROUP || (1ll << v->group_log2) != kw_kvq_value_group(kg->D))
        return KW_KV_STORE_VALUE_LAYOUT;
    if (sec->n_outliers > 0) return KW_KV_STORE_OUTLIERS;
    if (sec->pre_rope) return KW_KV_STORE_PRE_ROPE;
    if (sec->rotated) return KW_KV_STORE_ROTATED; /* the cache's codes would be of the rotated values */
    if (stored % kg->page_tokens != 0) return KW_KV_STORE_PAGE_BOUNDARY;
    for (uint32_t t = 0; t < sec->n_tokens; ++t)
        if ((int64_t)positions[t] != stored + t) return KW_KV_STORE_POSITIONS;
    return KW_KV_STORE_DIRECT;
}

/* The cache's scale byte for scale byte e (dtype sdt) of a group with a non-zero code (nz), or -1 when it has none.
 * A log8 byte is the cache's byte itself. e8m0: 2^(e-127) is 2^((s-128)/8) for s = 128 + 8 (e - 127), a byte for
 * -15 <= e - 127 <= 15. A group of zero codes gets 0. */
static int kw_kv_pages_scale(uint32_t sdt, uint8_t e, int nz) {
    if (!nz) return 0;
    if (sdt == KW_WIRE_SCALE_LOG8) return e;
    const int k = (int)e - 127;
    return k < -15 || k > 15 ? -1 : 128 + 8 * k;
}

/* Repacks code i of a wire row into code i of a cache row; 0 for a reserved code. *nz |= (code != 0). */
static int kw_kv_pages_code(uint32_t codec, const uint8_t *wire_row, enum kw_kvq_codec cc, uint8_t *row, int64_t i,
                            int *nz, int32_t *code) {
    int ok = 1;
    *code = kw_wire_unpack_code(codec, wire_row, (uint32_t)i);
    (void)kw_wire_code_value(codec, *code, &ok);
    if (!ok) return 0;
    kw_kvq_set_code(row, cc, i, *code);
    *nz |= *code != 0;
    return 1;
}

int kw_kv_pages_map(kw_kv_pages *pg, const kw_wire_section *sec, const uint32_t *positions, const kw_kvq_geom *kg,
                    int64_t stored, enum kw_kv_store_reason *reason) {
    KW_RETURN_IF(!pg || !sec || !positions || !kg || !reason || stored < 0, KW_E_INVALID_ARG,
                 "kv pages: NULL argument");
    KW_RETURN_IF((int64_t)sec->n_kv_heads != kg->H || (int64_t)sec->head_dim != kg->D ||
                     kg->D > KW_ATTENTION_MAX_HEAD_DIM,
                 KW_E_INVALID_ARG, "kv pages: a (%u heads, %u dims) section for a (%lld, %lld) cache", sec->n_kv_heads,
                 sec->head_dim, (long long)kg->H, (long long)kg->D);
    *reason = kw_kv_pages_layout(sec, positions, kg, stored);
    if (*reason != KW_KV_STORE_DIRECT) return 0;
    const enum kw_kvq_codec cc = kg->codec;
    const uint32_t codec = kw_kv_pages_wire_codec(cc);
    const int64_t H = kg->H, D = kg->D, P = kg->page_tokens, T = sec->n_tokens, G = kw_kvq_value_group(D);
    const int64_t full = T / P * P, runs = (T + P - 1) / P;
    const size_t rb = kw_kvq_row_bytes(cc, D), wrb = (size_t)D * kw_wire_codec_bits(codec) / 8;
    /* tail first: the bf16 rows want 2-byte alignment, malloc gives more */
    const size_t tail_b = (size_t)(H * (T - full) * D) * 2, kc_b = (size_t)(H * full) * rb,
                 ks_b = (size_t)(H * (full / P) * D), vc_b = (size_t)(H * T) * rb, vs_b = (size_t)(H * T * (D / G));
    const size_t need = tail_b + kc_b + ks_b + vc_b + vs_b;
    if (need > pg->cap) {
        uint8_t *b = realloc(pg->buf, need);
        KW_RETURN_IF(!b, KW_E_NOMEM, "kv pages: out of memory");
        pg->buf = b;
        pg->cap = need;
    }
    uint16_t *tail = (uint16_t *)pg->buf;
    uint8_t *kcodes = pg->buf + tail_b, *kscales = kcodes + kc_b, *vcodes = kscales + ks_b, *vscales = vcodes + vc_b;
    const kw_wire_tensor_view *kv = &sec->groups[0].k, *vv = &sec->groups[0].v;
    const uint32_t ks = kw_wire_spec_scale(&kv->spec), vs = kw_wire_spec_scale(&vv->spec);
    int nz[KW_ATTENTION_MAX_HEAD_DIM];
    int32_t code;
    for (int64_t h = 0; h < H; ++h) {
        for (int64_t p = 0; p < runs; ++p) { /* keys, page by page: codes (or tail values), then the page's scales */
            memset(nz, 0, (size_t)D * sizeof *nz);
            for (int64_t t = p * P; t < T && t < (p + 1) * P; ++t) {
                const uint8_t *wrow = kv->codes + (size_t)(h * T + t) * wrb;
                if (t < full) {
                    uint8_t *row = kcodes + (size_t)(h * full + t) * rb;
                    for (int64_t d = 0; d < D; ++d)
                        KW_RETURN_IF(!kw_kv_pages_code(codec, wrow, cc, row, d, &nz[d], &code), KW_E_WIRE_VALUE,
                                     "kv pages: layer %u: reserved K code at token %lld", sec->layer, (long long)t);
                    continue;
                }
                uint16_t *trow = tail + (h * (T - full) + (t - full)) * D;
                for (int64_t d = 0; d < D; ++d) { /* the decoded value, fl(code * s) in bf16 (exact for e8m0) */
                    int ok = 1;
                    code = kw_wire_unpack_code(codec, wrow, (uint32_t)d);
                    const float c = kw_wire_code_value(codec, code, &ok);
                    KW_RETURN_IF(!ok, KW_E_WIRE_VALUE, "kv pages: layer %u: reserved K code at token %lld", sec->layer,
                                 (long long)t);
                    trow[d] = kw_f32_to_bf16(c * kw_wire_scale_load(ks, &kv->scales[(h * runs + p) * D + d]));
                }
            }
            if (p * P >= full) continue;
            for (int64_t d = 0; d < D; ++d) {
                const int s = kw_kv_pages_scale(ks, kv->scales[(h * runs + p) * D + d], nz[d]);
                if (s < 0) {
                    *reason = KW_KV_STORE_SCALE_RANGE;
                    return 0;
                }
                kscales[(h * (full / P) + p) * D + d] = (uint8_t)s;
            }
        }
        for (int64_t t = 0; t < T; ++t) { /* values, row by row, group by group */
            const uint8_t *wrow = vv->codes + (size_t)(h * T + t) * wrb;
            uint8_t *row = vcodes + (size_t)(h * T + t) * rb;
            for (int64_t g = 0; g < D / G; ++g) {
                int any = 0;
                for (int64_t d = g * G; d < (g + 1) * G; ++d)
                    KW_RETURN_IF(!kw_kv_pages_code(codec, wrow, cc, row, d, &any, &code), KW_E_WIRE_VALUE,
                                 "kv pages: layer %u: reserved V code at token %lld", sec->layer, (long long)t);
                const int s = kw_kv_pages_scale(vs, vv->scales[(h * T + t) * (D / G) + g], any);
                if (s < 0) {
                    *reason = KW_KV_STORE_SCALE_RANGE;
                    return 0;
                }
                vscales[(h * T + t) * (D / G) + g] = (uint8_t)s;
            }
        }
    }
    pg->rows = (kw_kvq_rows){.k_codes = kcodes,
                             .k_scales = kscales,
                             .k_tail = T > full ? tail : NULL,
                             .v_codes = vcodes,
                             .v_scales = vscales};
    pg->n_rows = T;
    pg->full = full;
    return 0;
}
