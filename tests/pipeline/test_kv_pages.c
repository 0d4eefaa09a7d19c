/* test_kv_pages.c: KVWire sections stored as quantized cache pages without requantizing (receiver/kw_kv_pages.h).
 *
 *  - int8, int6 and int4 sections in the cache's layout (kw_kv_pages_specs, log8 scales) and in that layout with
 *    e8m0 scales map directly; the storage bytes are checked one by one against the wire's codes and scales read here
 *    with the FORMAT.md formulas (codes repacked, a log8 scale byte as is, an e8m0 byte e as 128 + 8 (e - 127), 0 for
 *    a group of zero codes), the keys of the last partial page are the decoded values in bf16 (exactly for e8m0);
 *    every row reads back as the decoder's f32 value (tail keys: in bf16) and attention on the storages gives the bits
 *    of attention on an f32 cache holding those values; log8 sections carry the scale bytes the cache's own
 *    quantizer (kw_kvq_choose_scale) picks for the same groups;
 *  - every log8 byte maps to itself, every e8m0 byte in 2^-15..2^15 to its cache byte;
 *  - a section continuing a layer whose stored rows end on a page boundary maps at that offset;
 *  - every refusal reason, one section each; a reserved code (int8 -128, int4 nibble 8) is KW_E_WIRE_VALUE.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_half.h"
#include "common/kw_status.h"
#include "kernels/kw_backend.h"
#include "kernels/kw_kvq_format.h"
#include "receiver/kw_kv_pages.h"

#define NH  2
#define ND  64
#define NP  16
#define CAP 96

static kw_backend *BE;

static int setup(void **state) {
    (void)state;
    return kw_backend_create_cpu(2, &BE) < 0 ? -1 : 0;
}

static int teardown(void **state) {
    (void)state;
    kw_backend_destroy(BE);
    return 0;
}

/* A deterministic K/V of T rows (T, NH, ND) f32: bell-ish values, channel 5 an outlier channel, channel 9 of head 0 all
 * zero, and one value row group all zero. */
static void fill(float *k, float *v, int64_t T, float mag) {
    uint32_t s = 12345;
    for (int64_t i = 0; i < T * NH * ND; ++i) {
        s = s * 1664525u + 1013904223u;
        const float a = ((float)(s >> 8) / 16777216.0f - 0.5f) * 2.0f * mag;
        s = s * 1664525u + 1013904223u;
        const float b = ((float)(s >> 8) / 16777216.0f - 0.5f) * mag;
        const int64_t d = i % ND, h = (i / ND) % NH, t = i / (NH * ND);
        k[i] = d == 5 ? a * 20.0f : (d == 9 && h == 0) ? 0.0f : a;
        v[i] = (t == 3 && d < 32) ? 0.0f : b;
    }
}

/* One v1.1 blob of one section (layer 0) of T rows at positions pos0..pos0+T-1 with these codecs. */
static void encode(const kw_wire_policy *pol, const float *k, const float *v, int64_t T, uint32_t pos0, uint8_t **blob,
                   size_t *size) {
    const kw_wire_header hdr = {.n_layers = 2,
                                .n_sections = 1,
                                .n_kv_heads = NH,
                                .head_dim = ND,
                                .n_positions = CAP,
                                .src_dtype = KW_WIRE_DTYPE_F32,
                                .version = KW_WIRE_VERSION_1_1};
    uint32_t pos[CAP];
    for (int64_t t = 0; t < T; ++t)
        pos[t] = pos0 + (uint32_t)t;
    const kw_wire_layer_in in = {.layer = 0,
                                 .n_tokens = (uint32_t)T,
                                 .positions = pos,
                                 .k = {.data = k, .head_stride = ND, .token_stride = NH * ND},
                                 .v = {.data = v, .head_stride = ND, .token_stride = NH * ND}};
    kw_wire_encoder *enc = NULL;
    assert_int_equal(kw_wire_encoder_create(&hdr, NULL, &enc), 0);
    size_t bound = 0, w = 0, off = 0;
    assert_int_equal(kw_wire_section_bound(&hdr, pol, (uint32_t)T, &bound), 0);
    const size_t cap = bound + 1024;
    *blob = malloc(cap);
    assert_int_equal(kw_wire_encoder_write_header(enc, *blob, cap, &w), 0);
    off += w;
    const int rc = kw_wire_encoder_write_section(enc, &in, pol, *blob + off, cap - off, &w);
    if (rc < 0) fail_msg("encode: %s (%s)", kw_status_name(rc), kw_error_detail());
    off += w;
    assert_int_equal(kw_wire_encoder_write_trailer(enc, *blob + off, cap - off, &w), 0);
    *size = off + w;
    kw_wire_encoder_destroy(enc);
}

/* The cache-layout policy for codec c (pages of NP). */
static kw_wire_policy cache_policy(enum kw_kvq_codec c) {
    kw_wire_policy pol = {0};
    assert_int_equal(kw_kv_pages_specs(c, NP, ND, &pol.k, &pol.v), 0);
    return pol;
}

/* The wire code of element i of a packed row (FORMAT.md §5.3, written out here). */
static int wire_code(enum kw_kvq_codec c, const uint8_t *row, int64_t i) {
    if (c == KW_KVQ_INT8) return (int8_t)row[i];
    if (c == KW_KVQ_INT4) {
        const int nib = (row[i / 2] >> (4 * (i % 2))) & 15;
        return nib >= 8 ? nib - 16 : nib;
    }
    const uint32_t w =
        (uint32_t)row[3 * (i / 4)] | (uint32_t)row[3 * (i / 4) + 1] << 8 | (uint32_t)row[3 * (i / 4) + 2] << 16;
    const int e = (int)((w >> (6 * (i % 4))) & 63);
    return e >= 32 ? e - 64 : e;
}

static size_t wire_row_bytes(enum kw_kvq_codec c) {
    return c == KW_KVQ_INT8 ? ND : c == KW_KVQ_INT4 ? ND / 2 : ND * 6 / 8;
}

/* The cache byte of scale byte e (log8 or e8m0) for a group with a non-zero code. */
static uint8_t log_byte(uint32_t sdt, uint8_t e) {
    return sdt == KW_WIRE_SCALE_LOG8 ? e : (uint8_t)(128 + 8 * ((int)e - 127));
}

typedef struct mapped {
    uint8_t *blob;
    size_t size;
    kw_wire_reader *rd;
    const kw_wire_section *sec;
    uint32_t pos[CAP];
    enum kw_kv_store_reason reason;
    int rc;
} mapped;

/* Encodes, opens and maps one section onto a cache of codec c whose layer holds `stored` rows. */
static void map_section(mapped *m, kw_kv_pages *pg, enum kw_kvq_codec c, const kw_wire_policy *pol, const float *k,
                        const float *v, int64_t T, uint32_t pos0, int64_t stored) {
    memset(m, 0, sizeof *m);
    encode(pol, k, v, T, pos0, &m->blob, &m->size);
    const kw_wire_header *h = NULL;
    assert_int_equal(kw_wire_reader_open(m->blob, m->size, NULL, &m->rd, &h), 0);
    assert_int_equal(kw_wire_reader_next(m->rd, &m->sec), 1);
    assert_int_equal(kw_wire_section_positions(m->sec, m->pos, CAP), 0);
    const kw_kvq_geom kg = {.codec = c, .keys = 1, .H = NH, .cap = CAP, .D = ND, .page_tokens = NP};
    m->rc = kw_kv_pages_map(pg, m->sec, m->pos, &kg, stored, &m->reason);
}

static void mapped_free(mapped *m) {
    kw_wire_reader_close(m->rd);
    free(m->blob);
}

static void download(kw_kvcache *cache, int keys, uint8_t **bytes, kw_kvq_geom *g) {
    const kw_tensor *t = kw_kvcache_kvq_storage(cache, 0, keys, g);
    assert_non_null(t);
    *bytes = malloc(kw_tensor_nbytes(t));
    assert_int_equal(kw_backend_download(BE, *bytes, t, 0, kw_tensor_nbytes(t)), 0);
    assert_int_equal(kw_backend_synchronize(BE), 0);
}

/* Stores a T-row section at row 0 (after `pre` rows written normally when pre > 0) with scale dtype sdt (log8 or
 * e8m0) and checks every byte. */
static void check_direct(enum kw_kvq_codec c, int64_t T, int64_t pre, uint32_t sdt) {
    float *k = malloc((size_t)(T + pre) * NH * ND * 4), *v = malloc((size_t)(T + pre) * NH * ND * 4);
    fill(k, v, T + pre, 1.5f);
    kw_kvcache *cache = NULL;
    assert_int_equal(kw_kvcache_create_quantized(BE, 2, NH, ND, CAP, c, NP, &cache), 0);
    if (pre > 0) assert_int_equal(kw_kvcache_write_rows(cache, 0, 0, pre, k, v), 0);
    const float *ks = k + pre * NH * ND, *vs = v + pre * NH * ND;
    kw_wire_policy pol = cache_policy(c);
    pol.k.scale_dtype = pol.v.scale_dtype = (uint8_t)sdt;
    kw_kv_pages pg = {0};
    mapped m;
    map_section(&m, &pg, c, &pol, ks, vs, T, (uint32_t)pre, pre);
    assert_int_equal(m.rc, 0);
    assert_int_equal(m.reason, KW_KV_STORE_DIRECT);
    assert_int_equal(pg.full, T / NP * NP);
    assert_int_equal(kw_kvcache_store_kvq(cache, 0, pre, T, &pg.rows), 0);
    assert_int_equal(kw_kvcache_layer_rows(cache, 0), pre + T);
    /* what the decoder makes of the section */
    float *dk = malloc((size_t)T * NH * ND * 4), *dv = malloc((size_t)T * NH * ND * 4);
    const kw_wire_tensor_out ko = {.data = dk, .dtype = KW_WIRE_DTYPE_F32, .head_stride = ND, .token_stride = NH * ND};
    const kw_wire_tensor_out vo = {.data = dv, .dtype = KW_WIRE_DTYPE_F32, .head_stride = ND, .token_stride = NH * ND};
    assert_int_equal(kw_wire_section_dequantize(m.sec, &ko, &vo), 0);
    /* byte by byte */
    uint8_t *kb = NULL, *vb = NULL;
    kw_kvq_geom kg, vg;
    download(cache, 1, &kb, &kg);
    download(cache, 0, &vb, &vg);
    const kw_wire_tensor_view *wk = &m.sec->groups[0].k, *wv = &m.sec->groups[0].v;
    const size_t rb = kw_kvq_row_bytes(c, ND), wrb = wire_row_bytes(c);
    const int64_t runs = (T + NP - 1) / NP, full = T / NP * NP, G = 32;
    for (int64_t h = 0; h < NH; ++h) {
        const uint8_t *khead = kb + (size_t)h * kw_kvq_head_bytes(&kg),
                      *vhead = vb + (size_t)h * kw_kvq_head_bytes(&vg);
        for (int64_t t = 0; t < full; ++t)
            for (int64_t d = 0; d < ND; ++d)
                if (kw_kvq_get_code(khead + (size_t)(pre + t) * rb, c, d) !=
                    wire_code(c, wk->codes + (h * T + t) * wrb, d))
                    fail_msg("K code h %lld t %lld d %lld", (long long)h, (long long)t, (long long)d);
        for (int64_t p = 0; p < full / NP; ++p)
            for (int64_t d = 0; d < ND; ++d) {
                int nz = 0;
                for (int64_t t = p * NP; t < (p + 1) * NP; ++t)
                    nz |= wire_code(c, wk->codes + (h * T + t) * wrb, d) != 0;
                const uint8_t want = nz ? log_byte(sdt, wk->scales[(h * runs + p) * ND + d]) : 0;
                const uint8_t got = khead[kw_kvq_scales_offset(&kg) + (size_t)((pre / NP + p) * ND + d)];
                if (got != want)
                    fail_msg("K scale h %lld page %lld d %lld: %u, want %u", (long long)h, (long long)p, (long long)d,
                             got, want);
                if (sdt != KW_WIRE_SCALE_LOG8) continue;
                float amax = 0.0f; /* log8: the byte the cache's quantizer picks for this page's channel */
                for (int64_t t = p * NP; t < (p + 1) * NP; ++t)
                    amax = fmaxf(amax, fabsf(ks[(t * NH + h) * ND + d]));
                assert_int_equal(wk->scales[(h * runs + p) * ND + d], kw_kvq_choose_scale(amax, kw_kvq_code_max(c)));
            }
        const uint16_t *tail = (const uint16_t *)(khead + kw_kvq_tail_offset(&kg));
        for (int64_t t = full; t < T; ++t)
            for (int64_t d = 0; d < ND; ++d) {
                float *x = &dk[(t * NH + h) * ND + d];
                assert_int_equal(tail[(t - full) * ND + d], kw_f32_to_bf16(*x));
                if (sdt == KW_WIRE_SCALE_E8M0) assert_true(kw_bf16_to_f32(kw_f32_to_bf16(*x)) == *x); /* exact */
                *x = kw_bf16_to_f32(kw_f32_to_bf16(*x)); /* what the cache holds from here on */
            }
        for (int64_t t = 0; t < T; ++t) {
            for (int64_t d = 0; d < ND; ++d)
                if (kw_kvq_get_code(vhead + (size_t)(pre + t) * rb, c, d) !=
                    wire_code(c, wv->codes + (h * T + t) * wrb, d))
                    fail_msg("V code h %lld t %lld d %lld", (long long)h, (long long)t, (long long)d);
            for (int64_t g = 0; g < ND / G; ++g) {
                int nz = 0;
                for (int64_t d = g * G; d < (g + 1) * G; ++d)
                    nz |= wire_code(c, wv->codes + (h * T + t) * wrb, d) != 0;
                const uint8_t want = nz ? log_byte(sdt, wv->scales[(h * T + t) * (ND / G) + g]) : 0;
                assert_int_equal(vhead[kw_kvq_scales_offset(&vg) + (size_t)((pre + t) * (ND / G) + g)], want);
                if (sdt != KW_WIRE_SCALE_LOG8) continue;
                float amax = 0.0f;
                for (int64_t d = g * G; d < (g + 1) * G; ++d)
                    amax = fmaxf(amax, fabsf(vs[(t * NH + h) * ND + d]));
                assert_int_equal(wv->scales[(h * T + t) * (ND / G) + g], kw_kvq_choose_scale(amax, kw_kvq_code_max(c)));
            }
        }
    }
    /* the values the cache holds are the decoder's, bit for bit */
    float *rk = malloc((size_t)T * NH * ND * 4), *rv = malloc((size_t)T * NH * ND * 4);
    assert_int_equal(kw_kvcache_read_rows(cache, 0, pre, T, rk, rv), 0);
    assert_memory_equal(rk, dk, (size_t)T * NH * ND * 4);
    assert_memory_equal(rv, dv, (size_t)T * NH * ND * 4);
    /* attention on the storages = attention on an f32 cache of the decoded values (the rows before: as stored) */
    kw_kvcache *dense = NULL;
    assert_int_equal(kw_kvcache_create(BE, 2, NH, ND, CAP, KW_DTYPE_F32, &dense), 0);
    if (pre > 0) {
        float *pk = malloc((size_t)pre * NH * ND * 4), *pv = malloc((size_t)pre * NH * ND * 4);
        assert_int_equal(kw_kvcache_read_rows(cache, 0, 0, pre, pk, pv), 0);
        assert_int_equal(kw_kvcache_write_rows(dense, 0, 0, pre, pk, pv), 0);
        free(pk), free(pv);
    }
    assert_int_equal(kw_kvcache_write_rows(dense, 0, pre, T, dk, dv), 0);
    const int64_t Tq = 5, Hq = 2 * NH, n = pre + T;
    const int64_t qne[3] = {Tq, Hq, ND};
    kw_tensor q = {0}, oa = {0}, ob = {0};
    assert_int_equal(kw_tensor_alloc(BE, &q, KW_DTYPE_F32, 3, qne), 0);
    assert_int_equal(kw_tensor_alloc(BE, &oa, KW_DTYPE_F32, 3, qne), 0);
    assert_int_equal(kw_tensor_alloc(BE, &ob, KW_DTYPE_F32, 3, qne), 0);
    float *qh = malloc((size_t)(Tq * Hq * ND) * 4), *ya = malloc((size_t)(Tq * Hq * ND) * 4),
          *yb = malloc((size_t)(Tq * Hq * ND) * 4);
    for (int64_t i = 0; i < Tq * Hq * ND; ++i)
        qh[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
    assert_int_equal(kw_backend_upload(BE, &q, 0, qh, (size_t)(Tq * Hq * ND) * 4), 0);
    const kw_attention_params ap = {.q_pos0 = n - Tq, .n_kv = n, .scale = 0.125f};
    assert_int_equal(kw_kvcache_attention(cache, 0, &oa, &q, &ap), 0);
    assert_int_equal(kw_kvcache_attention(dense, 0, &ob, &q, &ap), 0);
    assert_int_equal(kw_backend_download(BE, ya, &oa, 0, (size_t)(Tq * Hq * ND) * 4), 0);
    assert_int_equal(kw_backend_download(BE, yb, &ob, 0, (size_t)(Tq * Hq * ND) * 4), 0);
    assert_int_equal(kw_backend_synchronize(BE), 0);
    assert_memory_equal(ya, yb, (size_t)(Tq * Hq * ND) * 4);
    kw_tensor_free(&q), kw_tensor_free(&oa), kw_tensor_free(&ob);
    free(qh), free(ya), free(yb), free(rk), free(rv), free(kb), free(vb), free(dk), free(dv), free(k), free(v);
    kw_kvcache_free(dense);
    kw_kvcache_free(cache);
    mapped_free(&m);
    kw_kv_pages_free(&pg);
}

static void test_direct_int8(void **state) {
    (void)state;
    for (uint32_t sdt = KW_WIRE_SCALE_E8M0; sdt <= KW_WIRE_SCALE_LOG8; ++sdt) {
        check_direct(KW_KVQ_INT8, 40, 0, sdt); /* two full pages and 8 tail rows */
        check_direct(KW_KVQ_INT8, 32, 0, sdt); /* pages only */
        check_direct(KW_KVQ_INT8, 7, 0, sdt);  /* the tail only */
    }
}

static void test_direct_int4(void **state) {
    (void)state;
    check_direct(KW_KVQ_INT4, 40, 0, KW_WIRE_SCALE_LOG8);
    check_direct(KW_KVQ_INT4, 40, 0, KW_WIRE_SCALE_E8M0);
}

static void test_direct_int6(void **state) {
    (void)state;
    check_direct(KW_KVQ_INT6, 40, 0, KW_WIRE_SCALE_LOG8);
    check_direct(KW_KVQ_INT6, 40, 0, KW_WIRE_SCALE_E8M0);
}

/* After 16 rows stored by the quantizer (a full page, tail empty) the section continues at row 16. */
static void test_direct_after_rows(void **state) {
    (void)state;
    check_direct(KW_KVQ_INT8, 21, 16, KW_WIRE_SCALE_LOG8);
    check_direct(KW_KVQ_INT4, 33, 32, KW_WIRE_SCALE_LOG8);
    check_direct(KW_KVQ_INT8, 21, 16, KW_WIRE_SCALE_E8M0);
}

/* Each refusal, with the layout changed in one place. */
static void expect_reason(enum kw_kvq_codec c, const kw_wire_policy *pol, float mag, uint32_t pos0, int64_t stored,
                          enum kw_kv_store_reason want) {
    const int64_t T = 40;
    float *k = malloc((size_t)T * NH * ND * 4), *v = malloc((size_t)T * NH * ND * 4);
    fill(k, v, T, mag);
    kw_kv_pages pg = {0};
    mapped m;
    map_section(&m, &pg, c, pol, k, v, T, pos0, stored);
    assert_int_equal(m.rc, 0);
    if (m.reason != want)
        fail_msg("reason %s, want %s", kw_kv_store_reason_name(m.reason), kw_kv_store_reason_name(want));
    mapped_free(&m);
    kw_kv_pages_free(&pg);
    free(k), free(v);
}

static void test_refusals(void **state) {
    (void)state;
    const kw_wire_policy base = cache_policy(KW_KVQ_INT8);
    expect_reason(KW_KVQ_INT8, &base, 1.5f, 0, 0, KW_KV_STORE_DIRECT);
    kw_wire_policy p = base;
    const kw_wire_token_group groups[2] = {{16, base.k, base.v}, {24, base.k, base.v}};
    p.n_groups = 2, p.groups = groups;
    expect_reason(KW_KVQ_INT8, &p, 1.5f, 0, 0, KW_KV_STORE_TOKEN_GROUPS);
    expect_reason(KW_KVQ_INT4, &base, 1.5f, 0, 0, KW_KV_STORE_CODEC); /* int8 codes, an int4 cache */
    p = base, p.v.codec = KW_WIRE_CODEC_INT4;
    expect_reason(KW_KVQ_INT8, &p, 1.5f, 0, 0, KW_KV_STORE_CODEC);
    p = base, p.k.scale_dtype = KW_WIRE_SCALE_F32 | KW_WIRE_SCALE_ZERO_POINTS;
    expect_reason(KW_KVQ_INT8, &p, 1.5f, 0, 0, KW_KV_STORE_ZERO_POINTS);
    p = base, p.v.scale_dtype = KW_WIRE_SCALE_F16;
    expect_reason(KW_KVQ_INT8, &p, 1.5f, 0, 0, KW_KV_STORE_SCALE_DTYPE);
    p = base, p.k.group_log2 = 5; /* runs of 32 rows, pages of 16 */
    expect_reason(KW_KVQ_INT8, &p, 1.5f, 0, 0, KW_KV_STORE_KEY_LAYOUT);
    p = base, p.k = (kw_wire_codec_spec){KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_E8M0, 0};
    expect_reason(KW_KVQ_INT8, &p, 1.5f, 0, 0, KW_KV_STORE_KEY_LAYOUT);
    p = base, p.v.group_log2 = 4; /* groups of 16 channels, the cache's are 32 */
    expect_reason(KW_KVQ_INT8, &p, 1.5f, 0, 0, KW_KV_STORE_VALUE_LAYOUT);
    p = base, p.outliers = 3;
    expect_reason(KW_KVQ_INT8, &p, 1.5f, 0, 0, KW_KV_STORE_OUTLIERS);
    p = base, p.pre_rope = 1;
    expect_reason(KW_KVQ_INT8, &p, 1.5f, 0, 0, KW_KV_STORE_PRE_ROPE);
    p = base, p.rotate = 2; /* V rotated: its codes are not the cache's */
    expect_reason(KW_KVQ_INT8, &p, 1.5f, 0, 0, KW_KV_STORE_ROTATED);
    expect_reason(KW_KVQ_INT8, &base, 1.5f, 1, 0, KW_KV_STORE_POSITIONS);     /* starts a row late */
    expect_reason(KW_KVQ_INT8, &base, 1.5f, 16, 0, KW_KV_STORE_POSITIONS);    /* a page late */
    expect_reason(KW_KVQ_INT8, &base, 1.5f, 5, 5, KW_KV_STORE_PAGE_BOUNDARY); /* the layer's tail is not empty */
    /* e8m0 scales: 2^16 and above have no cache byte (the outlier channel reaches 20 * 2^16 * 127 / 2...) */
    kw_wire_policy e8 = base;
    e8.k.scale_dtype = e8.v.scale_dtype = KW_WIRE_SCALE_E8M0;
    expect_reason(KW_KVQ_INT8, &e8, 1.5f, 0, 0, KW_KV_STORE_DIRECT);
    expect_reason(KW_KVQ_INT8, &e8, 1e6f, 0, 0, KW_KV_STORE_SCALE_RANGE);
    expect_reason(KW_KVQ_INT8, &e8, 1e-6f, 0, 0, KW_KV_STORE_SCALE_RANGE); /* 2^-27: below 2^-15 */
    expect_reason(KW_KVQ_INT8, &e8, 3000.0f, 0, 0, KW_KV_STORE_DIRECT);
    p = base, p.v.scale_dtype = KW_WIRE_SCALE_E8M0; /* K log8, V e8m0 */
    expect_reason(KW_KVQ_INT8, &p, 1.5f, 0, 0, KW_KV_STORE_DIRECT);
    /* log8 has no range to leave: tiny values take byte 1 (their codes round to 0), large ones map too */
    expect_reason(KW_KVQ_INT8, &base, 1e-6f, 0, 0, KW_KV_STORE_DIRECT);
    expect_reason(KW_KVQ_INT8, &base, 3000.0f, 0, 0, KW_KV_STORE_DIRECT);
    for (int r = 0; r < KW_KV_STORE_REASONS; ++r)
        assert_string_not_equal(kw_kv_store_reason_name((enum kw_kv_store_reason)r), "?");
    assert_string_equal(kw_kv_store_reason_name(KW_KV_STORE_REASONS), "?");
}

/* A hand-made section of one group of 16 rows at positions 0..15 in the cache layout of codec c, every code byte
 * code_byte, every scale 2^0. */
typedef struct handmade {
    uint8_t kcodes[NH * 16 * ND], vcodes[NH * 16 * ND], kscales[NH * ND], vscales[NH * 16 * 2];
    kw_wire_group_view g;
    kw_wire_section sec;
    uint32_t pos[16];
    kw_kvq_geom kg;
} handmade;

static void handmade_init(handmade *m, enum kw_kvq_codec c, uint8_t code_byte) {
    const kw_wire_policy pol = cache_policy(c);
    memset(m->kcodes, code_byte, sizeof m->kcodes), memset(m->vcodes, code_byte, sizeof m->vcodes);
    memset(m->kscales, 127, sizeof m->kscales), memset(m->vscales, 127, sizeof m->vscales);
    m->g = (kw_wire_group_view){.first_token = 0, .n_tokens = 16};
    m->g.k = (kw_wire_tensor_view){.spec = pol.k, .scales = m->kscales, .codes = m->kcodes};
    m->g.v = (kw_wire_tensor_view){.spec = pol.v, .scales = m->vscales, .codes = m->vcodes};
    m->sec = (kw_wire_section){
        .n_tokens = 16, .n_groups = 1, .n_kv_heads = NH, .head_dim = ND, .n_positions = CAP, .groups = &m->g};
    for (uint32_t t = 0; t < 16; ++t)
        m->pos[t] = t;
    m->kg = (kw_kvq_geom){.codec = c, .keys = 1, .H = NH, .cap = CAP, .D = ND, .page_tokens = NP};
}

/* A reserved code (a decoder would have refused it while dequantizing): int8 -128 in K's first page, int4 nibble 8
 * in V. */
static void test_reserved_codes(void **state) {
    (void)state;
    for (int which = 0; which < 2; ++which) {
        const enum kw_kvq_codec c = which ? KW_KVQ_INT4 : KW_KVQ_INT8;
        const int64_t wrb = (int64_t)wire_row_bytes(c);
        handmade m;
        handmade_init(&m, c, 0x11);
        uint8_t *bad = which ? &m.vcodes[5 * wrb + 3] : &m.kcodes[3 * wrb + 9];
        *bad = which ? 0x81 : 0x80; /* int4: element 7 of row 5 is nibble 8 */
        kw_kv_pages pg = {0};
        enum kw_kv_store_reason reason;
        assert_int_equal(kw_kv_pages_map(&pg, &m.sec, m.pos, &m.kg, 0, &reason), KW_E_WIRE_VALUE);
        *bad = 0x11; /* without the reserved code it maps */
        assert_int_equal(kw_kv_pages_map(&pg, &m.sec, m.pos, &m.kg, 0, &reason), 0);
        assert_int_equal(reason, KW_KV_STORE_DIRECT);
        kw_kv_pages_free(&pg);
    }
}

/* The ends of the scale range, in a hand-made section: e8m0 2^-15 and 2^15 map to the bytes 8 and 248, 2^-16 and 2^16
 * have no byte (with a non-zero code; a group of zero codes maps to 0 whatever its scale). */
static void test_scale_bounds(void **state) {
    (void)state;
    static handmade m;
    handmade_init(&m, KW_KVQ_INT8, 1);
    m.g.k.spec.scale_dtype = m.g.v.spec.scale_dtype = KW_WIRE_SCALE_E8M0;
    const struct {
        uint8_t e;
        int byte; /* -1: refused */
    } cases[] = {{127 - 15, 8}, {127 + 15, 248}, {127 - 16, -1}, {127 + 16, -1}, {127, 128}, {0, -1}, {254, -1}};
    kw_kv_pages pg = {0};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i)
        for (int tensor = 0; tensor < 2; ++tensor) {
            uint8_t *sc = tensor ? m.vscales : m.kscales;
            sc[3] = cases[i].e;
            enum kw_kv_store_reason reason;
            assert_int_equal(kw_kv_pages_map(&pg, &m.sec, m.pos, &m.kg, 0, &reason), 0);
            if (cases[i].byte < 0) {
                assert_int_equal(reason, KW_KV_STORE_SCALE_RANGE);
            } else {
                assert_int_equal(reason, KW_KV_STORE_DIRECT);
                assert_int_equal((tensor ? pg.rows.v_scales : pg.rows.k_scales)[3], cases[i].byte);
            }
            /* the same scale over zero codes maps to 0 */
            uint8_t *codes = tensor ? m.vcodes : m.kcodes;
            if (tensor)
                memset(codes + 32 * 3, 0, 32); /* row 1 of head 0, the group of scale 3 (rows of 2 groups) */
            else
                for (int64_t t = 0; t < 16; ++t)
                    codes[t * ND + 3] = 0; /* channel 3 of head 0 over the page */
            assert_int_equal(kw_kv_pages_map(&pg, &m.sec, m.pos, &m.kg, 0, &reason), 0);
            assert_int_equal(reason, KW_KV_STORE_DIRECT);
            assert_int_equal((tensor ? pg.rows.v_scales : pg.rows.k_scales)[3], 0);
            memset(codes, 1, tensor ? sizeof m.vcodes : sizeof m.kcodes);
            sc[3] = 127;
        }
    kw_kv_pages_free(&pg);
}

/* log8 scales in a hand-made section: every byte is the cache's byte itself, 0 over a group of zero codes. */
static void test_scale_log8(void **state) {
    (void)state;
    static handmade m;
    handmade_init(&m, KW_KVQ_INT8, 1);
    assert_int_equal(m.g.k.spec.scale_dtype, KW_WIRE_SCALE_LOG8);
    kw_kv_pages pg = {0};
    enum kw_kv_store_reason reason;
    for (int b = 0; b < 256; ++b) {
        m.kscales[3] = m.vscales[3] = (uint8_t)b;
        m.kcodes[5 * ND + 3] = 0; /* channel 3 of head 0 keeps non-zero codes in the other rows */
        assert_int_equal(kw_kv_pages_map(&pg, &m.sec, m.pos, &m.kg, 0, &reason), 0);
        assert_int_equal(reason, KW_KV_STORE_DIRECT);
        assert_int_equal(pg.rows.k_scales[3], b);
        assert_int_equal(pg.rows.v_scales[3], b);
        assert_int_equal(pg.rows.k_scales[4], 127);
        m.kcodes[5 * ND + 3] = 1;
    }
    for (int64_t t = 0; t < 16; ++t) /* channel 3 of head 0 all zero over the page, row 1's first V group too */
        m.kcodes[t * ND + 3] = 0;
    memset(m.vcodes + 32 * 3, 0, 32);
    assert_int_equal(kw_kv_pages_map(&pg, &m.sec, m.pos, &m.kg, 0, &reason), 0);
    assert_int_equal(reason, KW_KV_STORE_DIRECT);
    assert_int_equal(pg.rows.k_scales[3], 0);
    assert_int_equal(pg.rows.v_scales[3], 0);
    kw_kv_pages_free(&pg);
}

/* The specs: what the sharer is asked for. */
static void test_specs(void **state) {
    (void)state;
    kw_wire_codec_spec k, v;
    assert_int_equal(kw_kv_pages_specs(KW_KVQ_INT4, 64, 256, &k, &v), 0);
    assert_int_equal(k.codec, KW_WIRE_CODEC_INT4);
    assert_int_equal(k.granularity, KW_WIRE_GRAN_CHANNEL);
    assert_int_equal(k.group_log2, 6);
    assert_int_equal(k.scale_dtype, KW_WIRE_SCALE_LOG8);
    assert_int_equal(v.scale_dtype, KW_WIRE_SCALE_LOG8);
    assert_int_equal(v.granularity, KW_WIRE_GRAN_GROUP);
    assert_int_equal(v.group_log2, 5);
    assert_int_equal(kw_kv_pages_specs(KW_KVQ_INT8, 64, 48, &k, &v), 0);
    assert_int_equal(v.group_log2, 4); /* 48 channels: groups of 16 */
    assert_int_equal(kw_kv_pages_specs(KW_KVQ_INT8, 48, 64, &k, &v), KW_E_INVALID_ARG);
    assert_int_equal(kw_kv_pages_specs((enum kw_kvq_codec)0, 64, 64, &k, &v), KW_E_INVALID_ARG);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_direct_int8), cmocka_unit_test(test_direct_int4),
        cmocka_unit_test(test_direct_int6), cmocka_unit_test(test_direct_after_rows),
        cmocka_unit_test(test_refusals),    cmocka_unit_test(test_reserved_codes),
        cmocka_unit_test(test_specs),       cmocka_unit_test(test_scale_bounds),
        cmocka_unit_test(test_scale_log8),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
