/* test_pipeline.c: the two halves of a transfer joined in memory through real KVWire bytes: the sharer side
 * (c2c/kw_share.h prefilling layer by layer, sharer/kw_share_wire.h encoding each layer as it is ready) and the
 * receiver side (receiver/kw_receive.h decoding and applying each section as it arrives), on the tiny models and
 * fusers of tests/data/c2c/fusion.
 *
 *  - c2c, bf16 caches, bf16 codec (lossless for bf16 rows): the tokens and the receiver cache are the bits of the
 *    in-process kw_fusion_run, for the standard split, proportions, two sharers, fed in one piece or in pieces of
 *    1..97 bytes;
 *  - c2c through int4: the bits of kw_fusion_run with a KVWire int4 round trip in its transfer hook (what
 *    `kvwire c2c --wire int4` did in one process);
 *  - kv_direct (the sharer is the receiver's own model): with every position sent, the cache and the tokens are those
 *    of the receiver alone; with a selection, the positions left out stay hidden;
 *  - kv_direct into a quantized cache: a blob in the cache's layout goes in as pages, exactly the decoded values,
 *    closer to the receiver's own bf16 cache than the same blob requantized; another layout says why it was not;
 *  - a flipped byte, a truncated blob, a blob of another cache shape and a layer nobody asked for are refused with
 *    their own status, and nothing past the failing section is applied;
 *  - two-round refinement: round one, the probe, round two with skip_ranked give one round's cache and tokens at the
 *    larger proportion; rows at positions that already got some are refused.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "c2c/kw_fusion.h"
#include "c2c/kw_share.h"
#include "common/kw_status.h"
#include "kernels/kw_backend.h"
#include "receiver/kw_receive.h"
#include "sharer/kw_share_wire.h"
#include "../model/model_fixture.h"

#define DATA KW_TEST_DATA_DIR "/c2c/fusion"

typedef struct env {
    kw_backend *be;
    kw_model *recv, *sh_a, *sh_b;
    kw_fuser *fu_a, *fu_b;
    kw_fusion *one, *two;
    kwfx fx;
    int64_t L, G;
    const int32_t *prompt;
} env;

static env E;

static kw_model *load_model(const char *name) {
    kw_model *m = NULL;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", DATA, name);
    if (kw_model_load(E.be, dir, NULL, &m) < 0) fail_msg("%s: %s", name, kw_error_detail());
    return m;
}

static kw_fuser *load_fuser(const char *name) {
    kw_fuser *f = NULL;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", DATA, name);
    if (kw_fuser_load(dir, 0, &f) < 0) fail_msg("%s: %s", name, kw_error_detail());
    return f;
}

static int setup(void **state) {
    (void)state;
    memset(&E, 0, sizeof E);
    if (kw_backend_create_cpu(2, &E.be) < 0) return -1;
    E.recv = load_model("receiver_qwen3");
    E.sh_a = load_model("sharer_qwen2");
    E.sh_b = load_model("sharer_llama");
    E.fu_a = load_fuser("fuser_qwen2");
    E.fu_b = load_fuser("fuser_llama");
    const kw_fusion_sharer sh[2] = {{.model = E.sh_a, .fuser = E.fu_a}, {.model = E.sh_b, .fuser = E.fu_b}};
    if (kw_fusion_create(E.recv, sh, 1, 0, &E.one) < 0 || kw_fusion_create(E.recv, sh, 2, 0, &E.two) < 0)
        fail_msg("fusion: %s", kw_error_detail());
    if (kwfx_load(DATA "/pipeline.kwfx", &E.fx) < 0) fail_msg("pipeline.kwfx: %s", kw_error_detail());
    int64_t n = 0;
    const int32_t *meta = kwfx_i32(&E.fx, "meta", &n);
    E.L = meta[0];
    E.G = meta[1];
    E.prompt = kwfx_i32(&E.fx, "prompt_ids", &n);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    kw_fusion_free(E.one);
    kw_fusion_free(E.two);
    kw_fuser_free(E.fu_a);
    kw_fuser_free(E.fu_b);
    kw_model_free(E.recv);
    kw_model_free(E.sh_a);
    kw_model_free(E.sh_b);
    kw_backend_destroy(E.be);
    kwfx_free(&E.fx);
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * The sharer side into byte buffers, one per (sharer, blob)
 */

typedef struct blobs {
    unsigned char *data[2][8];
    size_t len[2][8];
    int32_t sharer; /* the sharer being run */
} blobs;

static int blobs_write(void *user, int32_t blob, const void *data, size_t n) {
    blobs *b = user;
    assert_true(blob >= 0 && blob < 8);
    unsigned char **d = &b->data[b->sharer][blob];
    *d = realloc(*d, b->len[b->sharer][blob] + n);
    assert_non_null(*d);
    memcpy(*d + b->len[b->sharer][blob], data, n);
    b->len[b->sharer][blob] += n;
    return 0;
}

static void blobs_free(blobs *b) {
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 8; ++j)
            free(b->data[i][j]);
    memset(b, 0, sizeof *b);
}

/* The sections sharer i is sent: those whose mask selects it. */
static void sections_for(const kw_fusion_section *sec, int32_t n, int32_t i, kw_fusion_section *out) {
    for (int32_t j = 0; j < n; ++j)
        out[j] = (kw_fusion_section){sec[j].length, (sec[j].index > 0 && (sec[j].index & (1 << i))) ? 1 : -1};
}

/* skip: NULL, or round two's skip_ranked (one per sent section). */
static void share_ranked(kw_model *m, int32_t sharer, const kw_fusion_section *sec, int32_t n_sec,
                         const int32_t *layers, int32_t n_layers, const kw_select_policy *sel, const int64_t *skip,
                         int same_positions, const kw_wire_policy *pol, enum kw_dtype cd, blobs *out) {
    kw_fusion_section mine[8];
    sections_for(sec, n_sec, same_positions ? 0 : sharer, mine);
    if (same_positions) /* kv_direct: sent sections are index > 0 */
        for (int32_t j = 0; j < n_sec; ++j)
            mine[j].index = sec[j].index > 0 ? 1 : -1;
    out->sharer = sharer;
    const kw_share_wire_options wo = {.policy = *pol, .write = blobs_write, .user = out};
    kw_share_wire *w = NULL;
    assert_int_equal(kw_share_wire_create(&wo, &w), 0);
    int64_t prefix = 0;
    for (int32_t j = 0; j + 1 < n_sec; ++j)
        prefix += sec[j].length;
    const kw_share_options so = {.sections = mine,
                                 .n_sections = n_sec,
                                 .layers = layers,
                                 .n_layers = n_layers,
                                 .select = *sel,
                                 .skip_ranked = skip,
                                 .same_positions = same_positions,
                                 .cache_dtype = cd,
                                 .on_layer = kw_share_wire_on_layer,
                                 .user = w};
    const int rc = kw_share_run(m, E.prompt, prefix, &so, NULL);
    if (rc < 0) fail_msg("share: %s (%s)", kw_status_name(rc), kw_error_detail());
    kw_share_wire_free(w);
}

static void share(kw_model *m, int32_t sharer, const kw_fusion_section *sec, int32_t n_sec, const int32_t *layers,
                  int32_t n_layers, const kw_select_policy *sel, int same_positions, const kw_wire_policy *pol,
                  enum kw_dtype cd, blobs *out) {
    share_ranked(m, sharer, sec, n_sec, layers, n_layers, sel, NULL, same_positions, pol, cd, out);
}

static kw_wire_policy codec(uint8_t c) {
    kw_wire_policy p = {0};
    p.k.codec = p.v.codec = c;
    if (c != KW_WIRE_CODEC_BF16 && c != KW_WIRE_CODEC_F16) {
        p.k.granularity = p.v.granularity = KW_WIRE_GRAN_TOKEN;
        p.k.scale_dtype = p.v.scale_dtype = KW_WIRE_SCALE_F32;
    }
    return p;
}

/* ------------------------------------------------------------------------------------------------------------
 * The receiver side from the buffers
 */

typedef struct received {
    kw_kvcache *cache;
    kw_fusion_result res;
    kw_receive_stats stats;
} received;

/* A quantized receiver cache (codec 0: the dense cache of the dtype), and whether to force requantizing. */
typedef struct qcache {
    enum kw_kvq_codec codec;
    int32_t page_tokens;
    int requantize;
    const char *layers; /* per-layer codecs over codec (kw_model_create_cache_layers), or NULL */
} qcache;

/* Feeds the blobs in pieces of chunk bytes (0: whole). Returns the first failure, with *failed_section set. */
static int receive_q(kw_model *m, kw_fusion *f, enum kw_receive_mode mode, const kw_fusion_section *sec, int32_t n_sec,
                     enum kw_fusion_mode fmode, enum kw_dtype cd, const blobs *b, size_t chunk, const qcache *q,
                     received *out) {
    memset(out, 0, sizeof *out);
    if (q && q->layers)
        assert_int_equal(
            kw_model_create_cache_layers(m, E.L + E.G + 8, q->codec, q->layers, q->page_tokens, &out->cache), 0);
    else if (q && q->codec)
        assert_int_equal(kw_model_create_cache_quantized(m, E.L + E.G + 8, q->codec, q->page_tokens, &out->cache), 0);
    else
        assert_int_equal(kw_model_create_cache(m, E.L + E.G + 8, cd, &out->cache), 0);
    const kw_receive_options ro = {
        .requantize = q ? q->requantize : 0,
        .mode = mode,
        .fusion = {.sections = sec,
                   .n_sections = n_sec,
                   .mode = fmode,
                   .numerics = cd == KW_DTYPE_F32 ? KW_PROJECTOR_FP32 : KW_PROJECTOR_BF16,
                   .gen = {.max_new_tokens = (int32_t)E.G,
                           .round = cd == KW_DTYPE_F32 ? KW_LOGITS_ROUND_NONE : KW_LOGITS_ROUND_AUTO}}};
    kw_receive *r = NULL;
    int rc = kw_receive_begin(m, f, out->cache, E.prompt, E.L, &ro, &r);
    int32_t blob = 0;
    for (int32_t s = 0; rc == 0 && s + 1 < n_sec; ++s) {
        rc = kw_receive_prefill(r, s);
        const int32_t want = kw_receive_section_sharers(r, s);
        for (int32_t i = 0; rc == 0 && i < 2; ++i) {
            if (!(want & (1 << i))) continue;
            const int32_t bi = mode == KW_RECEIVE_KV_DIRECT ? blob : blob; /* the ordinal among sent sections */
            const size_t len = b->len[i][bi];
            size_t step = chunk ? chunk : len;
            for (size_t off = 0; rc == 0 && off < len; off += step) {
                step = chunk ? 1 + (off * 7 + 13) % chunk : len; /* uneven pieces */
                int done = 0;
                rc = kw_receive_feed(r, i, b->data[i][bi] + off, off + step <= len ? step : len - off, &done);
            }
        }
        if (want) ++blob;
        if (rc == 0) rc = kw_receive_end_section(r, s);
    }
    if (rc == 0) rc = kw_receive_generate(r, &out->res);
    if (r) out->stats = *kw_receive_get_stats(r);
    kw_receive_free(r);
    return rc;
}

static int receive(kw_model *m, kw_fusion *f, enum kw_receive_mode mode, const kw_fusion_section *sec, int32_t n_sec,
                   enum kw_fusion_mode fmode, enum kw_dtype cd, const blobs *b, size_t chunk, received *out) {
    return receive_q(m, f, mode, sec, n_sec, fmode, cd, b, chunk, NULL, out);
}

static void received_free(received *o) {
    kw_fusion_result_free(&o->res);
    kw_kvcache_free(o->cache);
}

/* Bit equality of two caches' first n rows of every layer. */
static void same_cache(kw_kvcache *a, kw_kvcache *b, int64_t n, const char *what) {
    const int64_t cnt = n * kw_kvcache_n_kv_heads(a) * kw_kvcache_head_dim(a);
    float *ka = malloc((size_t)cnt * 4), *va = malloc((size_t)cnt * 4), *kb = malloc((size_t)cnt * 4),
          *vb = malloc((size_t)cnt * 4);
    for (int32_t l = 0; l < kw_kvcache_n_layers(a); ++l) {
        assert_int_equal(kw_kvcache_read_rows(a, l, 0, n, ka, va), 0);
        assert_int_equal(kw_kvcache_read_rows(b, l, 0, n, kb, vb), 0);
        if (memcmp(ka, kb, (size_t)cnt * 4) || memcmp(va, vb, (size_t)cnt * 4))
            fail_msg("%s: layer %d differs", what, (int)l);
    }
    free(ka), free(va), free(kb), free(vb);
}

/* Bit equality of the rows attention sees (valid in both; the validity itself equal) among the first n of every
 * layer: rows hidden in both are reserved and never written (kv_direct's positions not sent). */
static void same_visible_rows(kw_kvcache *a, kw_kvcache *b, int64_t n, const char *what) {
    const int64_t cnt = (int64_t)kw_kvcache_n_kv_heads(a) * kw_kvcache_head_dim(a);
    float *ka = malloc((size_t)cnt * 4), *va = malloc((size_t)cnt * 4), *kb = malloc((size_t)cnt * 4),
          *vb = malloc((size_t)cnt * 4);
    for (int64_t p = 0; p < n; ++p) {
        assert_int_equal(kw_kvcache_is_valid(a, p), kw_kvcache_is_valid(b, p));
        for (int32_t l = 0; kw_kvcache_is_valid(a, p) && l < kw_kvcache_n_layers(a); ++l) {
            assert_int_equal(kw_kvcache_read_rows(a, l, p, 1, ka, va), 0);
            assert_int_equal(kw_kvcache_read_rows(b, l, p, 1, kb, vb), 0);
            if (memcmp(ka, kb, (size_t)cnt * 4) || memcmp(va, vb, (size_t)cnt * 4))
                fail_msg("%s: layer %d position %lld differs", what, (int)l, (long long)p);
        }
    }
    free(ka), free(va), free(kb), free(vb);
}

static void same_tokens(const kw_fusion_result *a, const kw_fusion_result *b, const char *what) {
    if (a->gen.n != b->gen.n || memcmp(a->gen.ids, b->gen.ids, (size_t)a->gen.n * 4) != 0)
        fail_msg("%s: the generated tokens differ", what);
}

/* The in-process reference with an optional KVWire round trip in the hook. */
typedef struct hook_state {
    kw_wire_policy pol;
} hook_state;

static int roundtrip_hook(void *user, kw_fusion_transfer *t) {
    const hook_state *h = user;
    /* one section blob per layer: encode, decode, dequantize into t->k / t->v */
    const kw_wire_header hdr = {.n_layers = (uint16_t)t->n_source_layers,
                                .n_sections = 1,
                                .n_kv_heads = (uint16_t)t->n_heads,
                                .head_dim = (uint16_t)t->head_dim,
                                .n_positions = (uint32_t)(t->pos0 + t->n_tokens),
                                .src_dtype = KW_WIRE_DTYPE_F32};
    kw_wire_encoder *enc = NULL;
    KW_FORWARD(kw_wire_encoder_create(&hdr, NULL, &enc));
    uint32_t *pos = malloc((size_t)t->n_tokens * 4);
    for (int64_t i = 0; i < t->n_tokens; ++i)
        pos[i] = (uint32_t)(t->pos0 + i);
    const size_t hd = (size_t)t->head_dim, row = (size_t)t->n_heads * hd;
    const kw_wire_layer_in in = {.layer = (uint32_t)t->source_layer,
                                 .n_tokens = (uint32_t)t->n_tokens,
                                 .positions = pos,
                                 .k = {.data = t->k, .head_stride = hd, .token_stride = row},
                                 .v = {.data = t->v, .head_stride = hd, .token_stride = row}};
    size_t bound = 0, w1 = 0, w2 = 0, w3 = 0;
    KW_FORWARD(kw_wire_section_bound(&hdr, &h->pol, (uint32_t)t->n_tokens, &bound));
    unsigned char *buf = malloc(bound + 128);
    KW_FORWARD(kw_wire_encoder_write_header(enc, buf, bound + 128, &w1));
    KW_FORWARD(kw_wire_encoder_write_section(enc, &in, &h->pol, buf + w1, bound + 128 - w1, &w2));
    KW_FORWARD(kw_wire_encoder_write_trailer(enc, buf + w1 + w2, bound + 128 - w1 - w2, &w3));
    kw_wire_reader *rd = NULL;
    const kw_wire_header *rh = NULL;
    const kw_wire_section *sec = NULL;
    KW_FORWARD(kw_wire_reader_open(buf, w1 + w2 + w3, NULL, &rd, &rh));
    assert_int_equal(kw_wire_reader_next(rd, &sec), 1);
    const kw_wire_tensor_out ko = {.data = t->k, .dtype = KW_WIRE_DTYPE_F32, .head_stride = hd, .token_stride = row};
    const kw_wire_tensor_out vo = {.data = t->v, .dtype = KW_WIRE_DTYPE_F32, .head_stride = hd, .token_stride = row};
    KW_FORWARD(kw_wire_section_dequantize(sec, &ko, &vo));
    kw_wire_reader_close(rd);
    kw_wire_encoder_destroy(enc);
    free(buf);
    free(pos);
    return 0;
}

static void in_process(kw_fusion *f, const kw_fusion_section *sec, int32_t n_sec, enum kw_fusion_mode fmode,
                       enum kw_dtype cd, const kw_wire_policy *pol, received *out) {
    memset(out, 0, sizeof *out);
    assert_int_equal(kw_model_create_cache(E.recv, E.L + E.G + 8, cd, &out->cache), 0);
    hook_state h;
    memset(&h, 0, sizeof h);
    if (pol) h.pol = *pol;
    const kw_fusion_options opt = {.sections = sec,
                                   .n_sections = n_sec,
                                   .mode = fmode,
                                   .numerics = cd == KW_DTYPE_F32 ? KW_PROJECTOR_FP32 : KW_PROJECTOR_BF16,
                                   .sharer_cache_dtype = cd,
                                   .gen = {.max_new_tokens = (int32_t)E.G,
                                           .round = cd == KW_DTYPE_F32 ? KW_LOGITS_ROUND_NONE : KW_LOGITS_ROUND_AUTO},
                                   .hook = pol ? roundtrip_hook : NULL,
                                   .hook_user = &h};
    const int rc = kw_fusion_run(f, out->cache, E.prompt, E.L, &opt, &out->res);
    if (rc < 0) fail_msg("in process: %s (%s)", kw_status_name(rc), kw_error_detail());
}

static void c2c_case(kw_fusion *f, const kw_fusion_section *sec, int32_t n_sec, enum kw_fusion_mode fmode,
                     enum kw_dtype cd, uint8_t c, size_t chunk, const char *what) {
    const kw_select_policy full = {.mode = KW_SELECT_FULL, .proportion = 1.0, .min_tokens = 1};
    const kw_wire_policy pol = codec(c);
    blobs b = {0};
    kw_model *models[2] = {E.sh_a, E.sh_b};
    for (int32_t i = 0; i < kw_fusion_n_sharers(f); ++i) {
        int32_t layers[8], n_layers = 0;
        assert_int_equal(kw_fusion_needed_layers(f, i, layers, 8, &n_layers), 0);
        share(models[i], i, sec, n_sec, layers, n_layers, &full, 0, &pol, cd, &b);
    }
    received got, want;
    const int rc = receive(E.recv, f, KW_RECEIVE_C2C, sec, n_sec, fmode, cd, &b, chunk, &got);
    if (rc < 0) fail_msg("%s: %s (%s)", what, kw_status_name(rc), kw_error_detail());
    /* bf16 rows through the bf16 codec are exact: no round trip needed on the reference side */
    in_process(f, sec, n_sec, fmode, cd, c == KW_WIRE_CODEC_BF16 ? NULL : &pol, &want);
    same_tokens(&got.res, &want.res, what);
    same_cache(got.cache, want.cache, E.L, what);
    assert_true(got.stats.blob_bytes > 0);
    received_free(&got);
    received_free(&want);
    blobs_free(&b);
}

/* The standard sections of one sharer over the receiver's E.L layers into sec; returns how many. */
static int32_t standard_sections(kw_fusion_section sec[3]) {
    int32_t n = 0;
    assert_int_equal(kw_fusion_sections_standard(E.L, 1, sec, &n), 0);
    return n;
}

static void test_c2c_bf16_equals_in_process(void **state) {
    (void)state;
    kw_fusion_section sec[3];
    int32_t n = standard_sections(sec);
    c2c_case(E.one, sec, n, KW_FUSION_SEQUENTIAL, KW_DTYPE_BF16, KW_WIRE_CODEC_BF16, 0, "std, whole blobs");
    c2c_case(E.one, sec, n, KW_FUSION_SEQUENTIAL, KW_DTYPE_BF16, KW_WIRE_CODEC_BF16, 97, "std, pieces of 1..97");
    c2c_case(E.one, sec, n, KW_FUSION_SEQUENTIAL, KW_DTYPE_BF16, KW_WIRE_CODEC_BF16, 1, "std, byte by byte");
    c2c_case(E.one, sec, n, KW_FUSION_PARALLEL, KW_DTYPE_BF16, KW_WIRE_CODEC_BF16, 0, "std, parallel");
    assert_int_equal(kw_fusion_sections_proportion(E.L, 0.5, KW_FUSION_BACK, 1, sec, &n), 0);
    c2c_case(E.one, sec, n, KW_FUSION_SEQUENTIAL, KW_DTYPE_BF16, KW_WIRE_CODEC_BF16, 0, "back 0.5");
    assert_int_equal(kw_fusion_sections_proportion(E.L, 0.5, KW_FUSION_FRONT, 1, sec, &n), 0);
    c2c_case(E.one, sec, n, KW_FUSION_SEQUENTIAL, KW_DTYPE_BF16, KW_WIRE_CODEC_BF16, 0, "front 0.5");
    assert_int_equal(kw_fusion_sections_standard(E.L, 3, sec, &n), 0);
    c2c_case(E.two, sec, n, KW_FUSION_SEQUENTIAL, KW_DTYPE_BF16, KW_WIRE_CODEC_BF16, 31, "two sharers");
}

static void test_c2c_int4_equals_in_process_round_trip(void **state) {
    (void)state;
    kw_fusion_section sec[3];
    int32_t n = standard_sections(sec);
    c2c_case(E.one, sec, n, KW_FUSION_SEQUENTIAL, KW_DTYPE_BF16, KW_WIRE_CODEC_INT4, 0, "int4, bf16 caches");
    c2c_case(E.one, sec, n, KW_FUSION_SEQUENTIAL, KW_DTYPE_F32, KW_WIRE_CODEC_INT8, 13, "int8, f32 caches");
}

/* kv_direct on the receiver's own model. */
static void test_kv_direct(void **state) {
    (void)state;
    const kw_model_config *c = kw_model_get_config(E.recv);
    int32_t layers[16];
    for (int32_t l = 0; l < c->n_layers; ++l)
        layers[l] = l;
    const kw_wire_policy pol = codec(KW_WIRE_CODEC_BF16);
    /* receiver alone */
    kw_fusion_section alone[1] = {{E.L, -1}};
    received ref;
    memset(&ref, 0, sizeof ref);
    assert_int_equal(kw_model_create_cache(E.recv, E.L + E.G + 8, KW_DTYPE_BF16, &ref.cache), 0);
    const kw_generate_options gen = {.max_new_tokens = (int32_t)E.G};
    assert_int_equal(kw_generate_greedy(E.recv, ref.cache, E.prompt, E.L, &gen, &ref.res.gen), 0);
    (void)alone;
    const double props[2] = {1.0, 0.5};
    for (int p = 0; p < 2; ++p) {
        kw_fusion_section sec[3];
        int32_t n = 0;
        assert_int_equal(kw_fusion_sections_proportion(E.L, props[p], KW_FUSION_FRONT, 1, sec, &n), 0);
        const kw_select_policy full = {.mode = KW_SELECT_FULL, .proportion = 1.0, .min_tokens = 1};
        blobs b = {0};
        share(E.recv, 0, sec, n, layers, c->n_layers, &full, 1, &pol, KW_DTYPE_BF16, &b);
        received got;
        const int rc =
            receive(E.recv, NULL, KW_RECEIVE_KV_DIRECT, sec, n, KW_FUSION_SEQUENTIAL, KW_DTYPE_BF16, &b, 0, &got);
        if (rc < 0) fail_msg("kv_direct: %s (%s)", kw_status_name(rc), kw_error_detail());
        same_tokens(&got.res, &ref.res, "kv_direct, every position");
        same_cache(got.cache, ref.cache, E.L, "kv_direct, every position");
        received_free(&got);
        blobs_free(&b);
    }
    /* a selection: the positions left out are hidden from attention */
    kw_fusion_section sec[3];
    int32_t n = standard_sections(sec);
    const kw_select_policy half = {.mode = KW_SELECT_KNORM, .proportion = 0.5, .min_tokens = 1};
    blobs b = {0};
    share(E.recv, 0, sec, n, layers, c->n_layers, &half, 1, &pol, KW_DTYPE_BF16, &b);
    received got;
    assert_int_equal(
        receive(E.recv, NULL, KW_RECEIVE_KV_DIRECT, sec, n, KW_FUSION_SEQUENTIAL, KW_DTYPE_BF16, &b, 0, &got), 0);
    int64_t visible = 0;
    for (int64_t p = 0; p < E.L - 1; ++p)
        visible += kw_kvcache_is_valid(got.cache, p);
    assert_int_equal(visible, (int64_t)nearbyint((double)(E.L - 1) * 0.5));
    assert_true(got.res.gen.n >= 1);
    received_free(&got);
    blobs_free(&b);
    received_free(&ref);
}

/* Squared difference of the first n rows of every layer of two caches, K and V together, over the sum of squares of b.
 */
static double cache_rel_err(kw_kvcache *a, kw_kvcache *b, int64_t n) {
    const int64_t cnt = n * kw_kvcache_n_kv_heads(a) * kw_kvcache_head_dim(a);
    float *ka = malloc((size_t)cnt * 8), *kb = malloc((size_t)cnt * 8);
    double num = 0, den = 0;
    for (int32_t l = 0; l < kw_kvcache_n_layers(a); ++l) {
        assert_int_equal(kw_kvcache_read_rows(a, l, 0, n, ka, ka + cnt), 0);
        assert_int_equal(kw_kvcache_read_rows(b, l, 0, n, kb, kb + cnt), 0);
        for (int64_t i = 0; i < 2 * cnt; ++i) {
            num += ((double)ka[i] - kb[i]) * ((double)ka[i] - kb[i]);
            den += (double)kb[i] * kb[i];
        }
    }
    free(ka), free(kb);
    return num / den;
}

static int64_t agreeing(const kw_fusion_result *a, const kw_fusion_result *b) {
    int64_t same = 0;
    for (int64_t i = 0; i < a->gen.n && i < b->gen.n && a->gen.ids[i] == b->gen.ids[i]; ++i)
        ++same;
    return same;
}

/* kv_direct into a quantized cache (receiver/kw_kv_pages.h): a blob in the cache's layout (kw_kv_pages_specs) is
 * stored as pages, its rows exactly the decoded values (those of an f32 cache fed the same blob: fl(code x log8
 * scale) is the cache's own value of the code), while the forced requantizing path rounds them a second time, further
 * from the receiver's own bf16 cache; a blob in another layout is requantized with its reason; a dense cache says
 * "dense". */
static void test_kv_direct_pages(void **state) {
    (void)state;
    const kw_model_config *c = kw_model_get_config(E.recv);
    int32_t layers[16];
    for (int32_t l = 0; l < c->n_layers; ++l)
        layers[l] = l;
    kw_fusion_section sec[3];
    int32_t n = standard_sections(sec);
    const int64_t shared = E.L - sec[n - 1].length, P = 16;
    assert_true(shared > P); /* a full page and a partial one */
    const kw_select_policy full = {.mode = KW_SELECT_FULL, .proportion = 1.0, .min_tokens = 1};
    received ref; /* the receiver alone, bf16 cache */
    memset(&ref, 0, sizeof ref);
    assert_int_equal(kw_model_create_cache(E.recv, E.L + E.G + 8, KW_DTYPE_BF16, &ref.cache), 0);
    const kw_generate_options gen = {.max_new_tokens = (int32_t)E.G};
    assert_int_equal(kw_generate_greedy(E.recv, ref.cache, E.prompt, E.L, &gen, &ref.res.gen), 0);
    const enum kw_kvq_codec codecs[3] = {KW_KVQ_INT8, KW_KVQ_INT6, KW_KVQ_INT4};
    for (int ci = 0; ci < 3; ++ci) {
        kw_wire_policy pol = {0};
        assert_int_equal(kw_kv_pages_specs(codecs[ci], (int32_t)P, c->head_dim, &pol.k, &pol.v), 0);
        blobs b = {0};
        share(E.recv, 0, sec, n, layers, c->n_layers, &full, 1, &pol, KW_DTYPE_BF16, &b);
        const qcache qd = {codecs[ci], (int32_t)P, 0, NULL}, qr = {codecs[ci], (int32_t)P, 1, NULL};
        received direct, requant, dense;
        int rc = receive_q(E.recv, NULL, KW_RECEIVE_KV_DIRECT, sec, n, KW_FUSION_SEQUENTIAL, KW_DTYPE_BF16, &b, 0, &qd,
                           &direct);
        if (rc < 0) fail_msg("direct: %s (%s)", kw_status_name(rc), kw_error_detail());
        assert_int_equal(receive_q(E.recv, NULL, KW_RECEIVE_KV_DIRECT, sec, n, KW_FUSION_SEQUENTIAL, KW_DTYPE_BF16, &b,
                                   0, &qr, &requant),
                         0);
        assert_int_equal(
            receive(E.recv, NULL, KW_RECEIVE_KV_DIRECT, sec, n, KW_FUSION_SEQUENTIAL, KW_DTYPE_F32, &b, 0, &dense), 0);
        assert_string_equal(kw_receive_kv_store(&direct.stats), "direct");
        assert_int_equal(direct.stats.rows_direct, shared * c->n_layers);
        assert_int_equal(direct.stats.rows_tail, (shared % P) * c->n_layers);
        assert_int_equal(direct.stats.rows_requantized, 0);
        assert_string_equal(kw_receive_kv_store(&requant.stats), "requantized");
        assert_int_equal(requant.stats.store_reason, KW_KV_STORE_FORCED);
        assert_int_equal(requant.stats.rows_requantized, shared * c->n_layers);
        assert_string_equal(kw_receive_kv_store(&dense.stats), "dense");
        assert_int_equal(dense.stats.store_reason, KW_KV_STORE_DENSE_CACHE);
        /* the full page holds exactly what the wire says (the partial page was quantized once generation filled it) */
        same_cache(direct.cache, dense.cache, P, "direct pages against the decoded values");
        const double e_direct = cache_rel_err(direct.cache, ref.cache, P),
                     e_requant = cache_rel_err(requant.cache, ref.cache, P);
        print_message("%s: K/V relative squared error vs the bf16 cache over the first page: direct %.3e, "
                      "requantized %.3e; tokens agreeing with the bf16 run (prefix): direct %lld, requantized %lld of "
                      "%lld\n",
                      codecs[ci] == KW_KVQ_INT8   ? "int8"
                      : codecs[ci] == KW_KVQ_INT6 ? "int6"
                                                  : "int4",
                      e_direct, e_requant, (long long)agreeing(&direct.res, &ref.res),
                      (long long)agreeing(&requant.res, &ref.res), (long long)ref.res.gen.n);
        assert_true(e_requant > 0.0);
        assert_true(e_direct < e_requant); /* one rounding against two */
        assert_true(direct.res.gen.n >= 1);
        received_free(&direct), received_free(&requant), received_free(&dense);
        blobs_free(&b);
    }
    /* another layout: requantized, and why */
    kw_wire_policy pol = codec(KW_WIRE_CODEC_INT8);
    blobs b = {0};
    share(E.recv, 0, sec, n, layers, c->n_layers, &full, 1, &pol, KW_DTYPE_BF16, &b);
    const qcache q8 = {KW_KVQ_INT8, (int32_t)P, 0, NULL};
    received got;
    assert_int_equal(
        receive_q(E.recv, NULL, KW_RECEIVE_KV_DIRECT, sec, n, KW_FUSION_SEQUENTIAL, KW_DTYPE_BF16, &b, 0, &q8, &got),
        0);
    assert_string_equal(kw_receive_kv_store(&got.stats), "requantized");
    assert_int_equal(got.stats.store_reason, KW_KV_STORE_SCALE_DTYPE);
    received_free(&got);
    blobs_free(&b);
    received_free(&ref);
}

/* Rows [0, n) of one layer bit-equal in two caches. */
static void same_layer(kw_kvcache *a, kw_kvcache *b, int32_t l, int64_t n, const char *what) {
    const int64_t cnt = n * kw_kvcache_n_kv_heads(a) * kw_kvcache_head_dim(a);
    float *ka = malloc((size_t)cnt * 4), *va = malloc((size_t)cnt * 4), *kb = malloc((size_t)cnt * 4),
          *vb = malloc((size_t)cnt * 4);
    assert_true(ka && va && kb && vb);
    assert_int_equal(kw_kvcache_read_rows(a, l, 0, n, ka, va), 0);
    assert_int_equal(kw_kvcache_read_rows(b, l, 0, n, kb, vb), 0);
    if (memcmp(ka, kb, (size_t)cnt * 4) || memcmp(va, vb, (size_t)cnt * 4))
        fail_msg("%s: layer %d differs", what, (int)l);
    free(ka), free(va), free(kb), free(vb);
}

/* kv_direct into a mixed cache (layer 0 int8, the middle layers int4, the last bf16) of int8 sections in the int8
 * cache's layout: layer 0 takes them as pages, the int4 layers requantize them (reason "codec": the section is not in
 * THAT layer's codec), the bf16 layer is dense; each layer's received full pages are bit for bit those of a cache of
 * its codec alone fed the same blobs (all-int8: direct; all-int4: requantized; bf16: dense). A bf16 layer first
 * still reports "requantized" when other layers took pages. */
static void test_kv_direct_mixed(void **state) {
    (void)state;
    const kw_model_config *c = kw_model_get_config(E.recv);
    assert_true(c->n_layers >= 3 && c->n_layers <= 16);
    int32_t layers[16];
    for (int32_t l = 0; l < c->n_layers; ++l)
        layers[l] = l;
    kw_fusion_section sec[3];
    int32_t n = standard_sections(sec);
    const int64_t shared = E.L - sec[n - 1].length, P = 16, full = shared / P * P;
    assert_true(full >= P);
    const kw_select_policy all = {.mode = KW_SELECT_FULL, .proportion = 1.0, .min_tokens = 1};
    kw_wire_policy pol = {0};
    assert_int_equal(kw_kv_pages_specs(KW_KVQ_INT8, (int32_t)P, c->head_dim, &pol.k, &pol.v), 0);
    blobs b = {0};
    share(E.recv, 0, sec, n, layers, c->n_layers, &all, 1, &pol, KW_DTYPE_BF16, &b);
    const qcache qm = {KW_KVQ_INT4, (int32_t)P, 0, "0:int8,-1:bf16"}, q8 = {KW_KVQ_INT8, (int32_t)P, 0, NULL},
                 q4 = {KW_KVQ_INT4, (int32_t)P, 0, NULL}, qf = {KW_KVQ_INT4, (int32_t)P, 0, "0:bf16,1:int8"};
    received mix, r8, r4, dense, first;
    const enum kw_fusion_mode fm = KW_FUSION_SEQUENTIAL;
    int rc = receive_q(E.recv, NULL, KW_RECEIVE_KV_DIRECT, sec, n, fm, KW_DTYPE_BF16, &b, 0, &qm, &mix);
    if (rc < 0) fail_msg("mixed: %s (%s)", kw_status_name(rc), kw_error_detail());
    assert_int_equal(receive_q(E.recv, NULL, KW_RECEIVE_KV_DIRECT, sec, n, fm, KW_DTYPE_BF16, &b, 0, &q8, &r8), 0);
    assert_int_equal(receive_q(E.recv, NULL, KW_RECEIVE_KV_DIRECT, sec, n, fm, KW_DTYPE_BF16, &b, 0, &q4, &r4), 0);
    assert_int_equal(receive(E.recv, NULL, KW_RECEIVE_KV_DIRECT, sec, n, fm, KW_DTYPE_BF16, &b, 0, &dense), 0);
    assert_int_equal(receive_q(E.recv, NULL, KW_RECEIVE_KV_DIRECT, sec, n, fm, KW_DTYPE_BF16, &b, 0, &qf, &first), 0);
    assert_string_equal(kw_receive_kv_store(&mix.stats), "requantized");
    assert_int_equal(mix.stats.store_reason, KW_KV_STORE_CODEC);
    assert_int_equal(mix.stats.rows_direct, shared);
    assert_int_equal(mix.stats.rows_tail, shared % P);
    assert_int_equal(mix.stats.rows_requantized, shared * (c->n_layers - 1));
    assert_string_equal(kw_receive_kv_store(&r4.stats), "requantized");
    assert_int_equal(r4.stats.store_reason, KW_KV_STORE_CODEC);
    assert_string_equal(kw_receive_kv_store(&r8.stats), "direct");
    assert_string_equal(kw_receive_kv_store(&first.stats), "requantized");
    assert_int_equal(first.stats.store_reason, KW_KV_STORE_DENSE_CACHE);
    assert_int_equal(first.stats.rows_direct, shared);
    for (int32_t l = 0; l < c->n_layers; ++l) {
        kw_kvcache *want = l == 0 ? r8.cache : l == c->n_layers - 1 ? dense.cache : r4.cache;
        same_layer(mix.cache, want, l, full, "mixed cache against the cache of the layer's codec");
    }
    received_free(&mix), received_free(&r8), received_free(&r4), received_free(&dense), received_free(&first);
    blobs_free(&b);
}

/* Two-round refinement at the halves (PROTOCOL.md §5.1): round one at 0.2, the probe, round two with skip_ranked
 * applied on top give the cache and tokens of one round at 0.7, bit for bit, c2c and kv_direct; round one's blob sent
 * again as round two is refused (positions that already got rows). */
static int receive_two_rounds(kw_model *m, kw_fusion *f, enum kw_receive_mode mode, const kw_fusion_section *sec,
                              int32_t n_sec, const blobs *one, const blobs *two, double *margin, received *out) {
    memset(out, 0, sizeof *out);
    assert_int_equal(kw_model_create_cache(m, E.L + E.G + 8, KW_DTYPE_BF16, &out->cache), 0);
    const kw_receive_options ro = {.mode = mode,
                                   .fusion = {.sections = sec,
                                              .n_sections = n_sec,
                                              .numerics = KW_PROJECTOR_BF16,
                                              .gen = {.max_new_tokens = (int32_t)E.G}}};
    kw_receive *r = NULL;
    int done = 0;
    int rc = kw_receive_begin(m, f, out->cache, E.prompt, E.L, &ro, &r);
    if (rc == 0) rc = kw_receive_prefill(r, 0);
    if (rc == 0) rc = kw_receive_feed(r, 0, one->data[0][0], one->len[0][0], &done);
    if (rc == 0) rc = kw_receive_end_section(r, 0);
    if (rc == 0) rc = kw_receive_probe(r, KW_REFINE_MARGIN, margin);
    if (rc == 0) assert_int_equal(kw_kvcache_length(out->cache), E.L - 1); /* rolled back */
    if (rc == 0) rc = kw_receive_reopen(r, 0);
    if (rc == 0) rc = kw_receive_feed(r, 0, two->data[0][0], two->len[0][0], &done);
    if (rc == 0) rc = kw_receive_end_section(r, 0);
    if (rc == 0) rc = kw_receive_generate(r, &out->res);
    if (r) out->stats = *kw_receive_get_stats(r);
    kw_receive_free(r);
    return rc;
}

static void test_two_rounds(void **state) {
    (void)state;
    kw_fusion_section sec[3];
    int32_t n = standard_sections(sec);
    assert_int_equal(n, 2);
    const kw_wire_policy pol = codec(KW_WIRE_CODEC_BF16);
    for (int kv_direct = 0; kv_direct < 2; ++kv_direct) {
        kw_model *sm = kv_direct ? E.recv : E.sh_a;
        kw_fusion *f = kv_direct ? NULL : E.one;
        const enum kw_receive_mode mode = kv_direct ? KW_RECEIVE_KV_DIRECT : KW_RECEIVE_C2C;
        int32_t layers[16], n_layers = 0;
        if (kv_direct)
            for (; n_layers < kw_model_get_config(E.recv)->n_layers; ++n_layers)
                layers[n_layers] = n_layers;
        else
            assert_int_equal(kw_fusion_needed_layers(E.one, 0, layers, 16, &n_layers), 0);
        const kw_select_policy p1 = {.mode = KW_SELECT_VNORM, .proportion = 0.2, .min_tokens = 1};
        kw_select_policy p2 = p1;
        p2.proportion = 0.7;
        const int64_t skip = kw_select_count(&p1, E.L - 1);
        blobs b1 = {0}, b2 = {0}, ball = {0};
        share_ranked(sm, 0, sec, n, layers, n_layers, &p1, NULL, kv_direct, &pol, KW_DTYPE_BF16, &b1);
        share_ranked(sm, 0, sec, n, layers, n_layers, &p2, &skip, kv_direct, &pol, KW_DTYPE_BF16, &b2);
        share_ranked(sm, 0, sec, n, layers, n_layers, &p2, NULL, kv_direct, &pol, KW_DTYPE_BF16, &ball);
        received got, want;
        double margin = -1;
        const int rc = receive_two_rounds(E.recv, f, mode, sec, n, &b1, &b2, &margin, &got);
        if (rc < 0) fail_msg("two rounds: %s (%s)", kw_status_name(rc), kw_error_detail());
        assert_true(margin >= 0);
        assert_int_equal(receive(E.recv, f, mode, sec, n, KW_FUSION_SEQUENTIAL, KW_DTYPE_BF16, &ball, 0, &want), 0);
        same_tokens(&got.res, &want.res, kv_direct ? "kv_direct two rounds" : "c2c two rounds");
        if (kv_direct)
            same_visible_rows(got.cache, want.cache, E.L, "kv_direct two rounds");
        else
            same_cache(got.cache, want.cache, E.L, "c2c two rounds");
        assert_int_equal(got.stats.rows, want.stats.rows);
        if (!kv_direct) assert_int_equal(got.res.stats.tokens_fused, want.res.stats.tokens_fused);
        received_free(&got);
        received_free(&want);
        /* round one's rows again as round two */
        assert_int_equal(receive_two_rounds(E.recv, f, mode, sec, n, &b1, &b1, &margin, &got), KW_E_SHARE_POSITIONS);
        received_free(&got);
        blobs_free(&b1), blobs_free(&b2), blobs_free(&ball);
    }
}

/* The refine metrics on hand-made logits, and when each asks for round two. */
static void test_refine_metric(void **state) {
    (void)state;
    const float two[2] = {0.5f, 0.5f}, three[3] = {3.0f, 1.0f, 1.0f}, peaked[4] = {100.0f, -100.0f, -100.0f, -100.0f};
    assert_true(kw_refine_measure(KW_REFINE_MARGIN, two, 2) == 0.0);
    assert_true(fabs(kw_refine_measure(KW_REFINE_ENTROPY, two, 2) - log(2.0)) < 1e-12);
    assert_true(kw_refine_measure(KW_REFINE_MARGIN, three, 3) == 2.0);
    const double z = exp(3.0) + 2.0 * exp(1.0), h = log(z) - (3.0 * exp(3.0) + 2.0 * exp(1.0)) / z;
    assert_true(fabs(kw_refine_measure(KW_REFINE_ENTROPY, three, 3) - h) < 1e-12);
    assert_true(kw_refine_measure(KW_REFINE_ENTROPY, peaked, 4) >= 0 &&
                kw_refine_measure(KW_REFINE_ENTROPY, peaked, 4) < 1e-80);
    assert_true(kw_refine_wanted(KW_REFINE_MARGIN, 1.0, 1.5) && !kw_refine_wanted(KW_REFINE_MARGIN, 1.5, 1.5));
    assert_true(kw_refine_wanted(KW_REFINE_ENTROPY, 1.6, 1.5) && !kw_refine_wanted(KW_REFINE_ENTROPY, 1.5, 1.5));
    assert_true(!kw_refine_wanted(KW_REFINE_MARGIN, 0.0, 0.0)); /* threshold 0 never triggers a margin */
    enum kw_refine_metric m;
    assert_int_equal(kw_refine_metric_parse("entropy", &m), 0);
    assert_int_equal(m, KW_REFINE_ENTROPY);
    assert_string_equal(kw_refine_metric_name(KW_REFINE_MARGIN), "margin");
    assert_int_equal(kw_refine_metric_parse("ratio", &m), KW_E_INVALID_ARG);
}

/* Bad bytes are refused with their own status. */
static void test_refusals(void **state) {
    (void)state;
    kw_fusion_section sec[3];
    int32_t n = standard_sections(sec);
    const kw_select_policy full = {.mode = KW_SELECT_FULL, .proportion = 1.0, .min_tokens = 1};
    const kw_wire_policy pol = codec(KW_WIRE_CODEC_INT8);
    int32_t layers[8], n_layers = 0;
    assert_int_equal(kw_fusion_needed_layers(E.one, 0, layers, 8, &n_layers), 0);
    blobs good = {0};
    share(E.sh_a, 0, sec, n, layers, n_layers, &full, 0, &pol, KW_DTYPE_BF16, &good);
    received got;
    /* a flipped byte in the middle of a section */
    blobs bad = {0};
    bad.len[0][0] = good.len[0][0];
    bad.data[0][0] = malloc(bad.len[0][0]);
    memcpy(bad.data[0][0], good.data[0][0], bad.len[0][0]);
    bad.data[0][0][bad.len[0][0] / 2] ^= 0x10;
    assert_int_equal(receive(E.recv, E.one, KW_RECEIVE_C2C, sec, n, KW_FUSION_SEQUENTIAL, KW_DTYPE_BF16, &bad, 0, &got),
                     KW_E_WIRE_CHECKSUM);
    received_free(&got);
    /* truncated: the section ends before the blob */
    bad.len[0][0] = good.len[0][0] - 30;
    memcpy(bad.data[0][0], good.data[0][0], bad.len[0][0]);
    assert_int_equal(receive(E.recv, E.one, KW_RECEIVE_C2C, sec, n, KW_FUSION_SEQUENTIAL, KW_DTYPE_BF16, &bad, 0, &got),
                     KW_E_SHARE_INCOMPLETE);
    received_free(&got);
    blobs_free(&bad);
    /* a blob of another cache shape: the llama sharer's rows where the qwen2 sharer's are expected */
    int32_t lb[8], nb = 0;
    assert_int_equal(kw_fusion_needed_layers(E.two, 1, lb, 8, &nb), 0);
    share(E.sh_b, 0, sec, n, lb, nb, &full, 0, &pol, KW_DTYPE_BF16, &bad);
    assert_int_equal(receive(E.recv, E.one, KW_RECEIVE_C2C, sec, n, KW_FUSION_SEQUENTIAL, KW_DTYPE_BF16, &bad, 0, &got),
                     KW_E_SHARE_MISMATCH);
    received_free(&got);
    blobs_free(&bad);
    /* a layer nobody asked for: the llama sharer's fuser uses its layer 0 only, the blob carries layer 1 */
    kw_fusion_section only_b[3];
    assert_int_equal(kw_fusion_sections_standard(E.L, 2, only_b, &n), 0);
    const int32_t other[1] = {1};
    share(E.sh_b, 1, only_b, n, other, 1, &full, 0, &pol, KW_DTYPE_BF16, &bad);
    assert_int_equal(
        receive(E.recv, E.two, KW_RECEIVE_C2C, only_b, n, KW_FUSION_SEQUENTIAL, KW_DTYPE_BF16, &bad, 0, &got),
        KW_E_SHARE_LAYER);
    received_free(&got);
    blobs_free(&bad);
    blobs_free(&good);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_c2c_bf16_equals_in_process),
        cmocka_unit_test(test_c2c_int4_equals_in_process_round_trip),
        cmocka_unit_test(test_kv_direct),
        cmocka_unit_test(test_kv_direct_pages),
        cmocka_unit_test(test_kv_direct_mixed),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_two_rounds),
        cmocka_unit_test(test_refine_metric),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
