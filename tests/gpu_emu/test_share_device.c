/* test_share_device.c: the sharer on a CUDA backend keeps its rows on the device (kw_share_options.device_rows):
 * the norm selections are scored and ranked there and the KVWire tensors encoded there (kw_share_wire.c), and the
 * blobs are byte-identical to the same backend's CPU path (rows downloaded, kw_select_positions, the CPU encoder).
 *
 * Each case runs the sharer model (tests/data/c2c/fusion/sharer_qwen2) on the emulated CUDA backend three ways:
 *  - reference: kw_share_run without device_rows and kw_share_wire: the rows go to the host, everything else is CPU;
 *  - device: kw_share_request_run, the in-process path sharerd and `kvwire c2c` take (device_rows on);
 *  - device, rows on the host: kw_share_run with device_rows and kw_share_wire directly (the same blobs, and the
 *    stats counted here).
 * The blobs must be equal byte for byte, and the counters must say where each part ran: device_selections for the
 * norm selections without a skip, device_sections for every section whose codecs the device encodes (every section
 * here: none falls back to the CPU encoder); rotated K and V are rotated and encoded on the device, clipped scales
 * (FORMAT.md §5.13) searched there and pre-RoPE keys (§5.11) rotated back there. Both cache dtypes (f32, bf16: the
 * device encoder reads bf16 rows, the CPU their exact f32 widening). The blobs of the CPU backend are not compared: its
 * prefill rounds differently (tests/gpu_emu/test_gpu_emu_e2e.c bounds that difference), so its rows are other numbers.
 *
 * Built twice: against the emulator (label gpu-emu) and, with KW_TEST_REAL_CUDA, against a real device (tests/gpu,
 * label gpu), which exits 77 without one.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "c2c/kw_fusion.h"
#include "c2c/kw_share.h"
#include "common/kw_status.h"
#ifndef KW_TEST_REAL_CUDA
#include "kernels/cuda/emu/kw_cuda_emu_api.h"
#define kw_create_gpu kw_backend_create_cuda_emu
#else
#define kw_create_gpu kw_backend_create_cuda
#endif
#include "kernels/kw_backend.h"
#include "model/kw_model.h"
#include "sharer/kw_share_request.h"
#include "sharer/kw_share_wire.h"
#include "tests/kw_test_util.h"
#include "tests/model/model_fixture.h"

#define DATA KW_TEST_DATA_DIR "/c2c/fusion"

static struct {
    kw_backend *gpu;
    kw_model *m;
    kwfx fx;
    const int32_t *prompt;
    int64_t L;
    kw_fusion_section sec[4];
    int32_t n_sec;
    int32_t layers[64], n_layers;
} E;

static int setup(void **state) {
    (void)state;
    memset(&E, 0, sizeof E);
    int rc = kw_create_gpu(0, &E.gpu);
    if (rc == KW_E_NO_DEVICE || rc == KW_E_UNSUPPORTED) {
        fprintf(stderr, "no CUDA device: skipped\n");
        exit(77);
    }
    if (rc == 0) rc = kw_model_load(E.gpu, DATA "/sharer_qwen2", NULL, &E.m);
    if (rc == 0) rc = kwfx_load(DATA "/pipeline.kwfx", &E.fx);
    if (rc < 0) {
        fprintf(stderr, "setup: %s (%s)\n", kw_status_name(rc), kw_error_detail());
        return -1;
    }
    E.prompt = kwfx_i32(&E.fx, "prompt_ids", &E.L);
    if (!E.prompt || E.L < 24) return -1;
    /* two sent sections, so a blob's second section is a later position range: [0, 9) kept, [9, 18) and
     * [18, L - 1) sent, the last token the receiver's */
    E.sec[0] = (kw_fusion_section){9, -1};
    E.sec[1] = (kw_fusion_section){9, 1};
    E.sec[2] = (kw_fusion_section){E.L - 19, 1};
    E.sec[3] = (kw_fusion_section){1, -1};
    E.n_sec = 4;
    E.n_layers = kw_model_get_config(E.m)->n_layers;
    for (int32_t l = 0; l < E.n_layers; ++l)
        E.layers[l] = l;
    return 0;
}

static int teardown(void **state) {
    (void)state;
    kw_model_free(E.m);
    kw_backend_destroy(E.gpu);
    kwfx_free(&E.fx);
    return 0;
}

/* The blobs' bytes, concatenated in order. */
typedef struct sink {
    uint8_t *data;
    size_t len, cap;
} sink;

static int sink_write(void *user, int32_t blob, const void *data, size_t n) {
    sink *s = user;
    (void)blob;
    if (s->len + n > s->cap) {
        s->cap = (s->len + n) * 2;
        s->data = realloc(s->data, s->cap);
        assert_non_null(s->data);
    }
    memcpy(s->data + s->len, data, n);
    s->len += n;
    return 0;
}

typedef struct share_case {
    const char *name;
    const char *k[3], *v[3]; /* codec, granularity, scale dtype */
    kw_select_policy select;
    int zstd, same_positions, pre_rope;
    double outliers;
    int device_encodes; /* 1: every section is encoded on the device */
    uint8_t rotate;     /* kw_wire_policy.rotate: rotated on the device (kw_op_wire_rotate_rows), then encoded there */
    uint8_t clip;       /* kw_wire_policy.clip: clipped scales (§5.13), searched on the device */
} share_case;

static void policy_of(const share_case *c, kw_wire_policy *pol) {
    memset(pol, 0, sizeof *pol);
    assert_int_equal(kw_wire_spec_parse_v(c->k[0], c->k[1], c->k[2], KW_WIRE_VERSION_1_1, &pol->k), 0);
    assert_int_equal(kw_wire_spec_parse_v(c->v[0], c->v[1], c->v[2], KW_WIRE_VERSION_1_1, &pol->v), 0);
    pol->zstd_level = c->zstd;
    pol->rotate = c->rotate;
    pol->clip = c->clip;
}

static kw_share_options share_options(const share_case *c, enum kw_dtype cd) {
    return (kw_share_options){.sections = E.sec,
                              .n_sections = E.n_sec,
                              .layers = E.layers,
                              .n_layers = E.n_layers,
                              .select = c->select,
                              .same_positions = c->same_positions,
                              .cache_dtype = cd};
}

/* kw_share_run with kw_share_wire; device_rows and skip_ranked (NULL: none) as asked. */
static void run_wire(const share_case *c, enum kw_dtype cd, int device_rows, const int64_t *skip, sink *out,
                     kw_share_stats *ss, kw_share_wire_stats *ws) {
    kw_wire_policy pol;
    policy_of(c, &pol);
    const kw_share_wire_options wo = {.policy = pol,
                                      .outlier_fraction = c->outliers,
                                      .pre_rope = c->pre_rope ? kw_model_get_config(E.m) : NULL,
                                      .write = sink_write,
                                      .user = out};
    kw_share_wire *w = NULL;
    assert_int_equal(kw_share_wire_create(&wo, &w), 0);
    kw_share_options so = share_options(c, cd);
    so.device_rows = device_rows;
    so.skip_ranked = skip;
    so.on_layer = kw_share_wire_on_layer;
    so.user = w;
    const int rc = kw_share_run(E.m, E.prompt, E.L - 1, &so, ss);
    if (rc < 0) fail_msg("%s: share: %s (%s)", c->name, kw_status_name(rc), kw_error_detail());
    *ws = *kw_share_wire_get_stats(w);
    kw_share_wire_free(w);
}

static void run_case(const share_case *c, enum kw_dtype cd) {
    sink ref = {0}, dev = {0}, req = {0};
    kw_share_stats ref_s, dev_s;
    kw_share_wire_stats ref_w, dev_w;
    run_wire(c, cd, 0, NULL, &ref, &ref_s, &ref_w);
    run_wire(c, cd, 1, NULL, &dev, &dev_s, &dev_w);

    kw_wire_policy pol;
    policy_of(c, &pol);
    const kw_share_request_options ro = {.sections = E.sec,
                                         .n_sections = E.n_sec,
                                         .layers = E.layers,
                                         .n_layers = E.n_layers,
                                         .select = c->select,
                                         .same_positions = c->same_positions,
                                         .cache_dtype = cd,
                                         .wire = &pol,
                                         .write = sink_write,
                                         .outlier_fraction = c->outliers,
                                         .pre_rope_keys = c->pre_rope,
                                         .user = &req};
    kw_share_request_stats rs;
    const int rc = kw_share_request_run(E.m, E.prompt, E.L - 1, &ro, &rs);
    if (rc < 0) fail_msg("%s: share request: %s (%s)", c->name, kw_status_name(rc), kw_error_detail());

    printf("%-28s %s: %zu bytes, %d sections, %d on the device, %d device selections\n", c->name,
           cd == KW_DTYPE_BF16 ? "bf16" : "f32 ", dev.len, (int)dev_w.sections, (int)dev_w.device_sections,
           (int)dev_s.device_selections);
    assert_true(ref.len > 0);
    assert_int_equal(ref_w.device_sections, 0);
    assert_int_equal(ref_s.device_selections, 0);
    assert_int_equal(dev.len, ref.len);
    assert_memory_equal(dev.data, ref.data, ref.len);
    assert_int_equal(req.len, ref.len);
    assert_memory_equal(req.data, ref.data, ref.len);
    assert_int_equal(dev_w.sections, ref_w.sections);
    assert_int_equal(dev_w.device_sections, c->device_encodes ? dev_w.sections : 0);
    assert_int_equal(rs.wire.device_sections, dev_w.device_sections);
    /* the norm selections without a skip run on the device: once per (section, layer), once per section for
     * kv_direct */
    const int norm = c->select.mode == KW_SELECT_KNORM || c->select.mode == KW_SELECT_VNORM;
    const int32_t want = !norm ? 0 : c->same_positions ? dev_s.sections_sent : dev_s.layers_sent;
    assert_int_equal(dev_s.device_selections, want);
    assert_int_equal(dev_s.tokens_sent, ref_s.tokens_sent);
    free(ref.data), free(dev.data), free(req.data);
}

#define KNORM(p)                                                                                                       \
    { .mode = KW_SELECT_KNORM, .proportion = (p), .min_tokens = 1 }
#define VNORM(p)                                                                                                       \
    { .mode = KW_SELECT_VNORM, .proportion = (p), .min_tokens = 1 }

static const share_case CASES[] = {
    /* v1 */
    {"int8 token, knorm", {"int8", "token", "f16"}, {"int8", "token", "f16"}, KNORM(0.5), 0, 0, 0, 0.0, 1, 0, 0},
    {"int4 group4/8, vnorm, zstd",
     {"int4", "group4", "bf16"},
     {"int4", "group8", "f32"},
     VNORM(0.4),
     3,
     0,
     0,
     0.0,
     1,
     0,
     0},
    {"int8/int4 head, front",
     {"int8", "head", "f32"},
     {"int4", "token", "e8m0"},
     {.mode = KW_SELECT_FRONT, .proportion = 0.5, .min_tokens = 1},
     0,
     0,
     0,
     0.0,
     1,
     0,
     0},
    {"bf16 passthrough, full",
     {"bf16", "none", "none"},
     {"f16", "none", "none"},
     {.mode = KW_SELECT_FULL, .proportion = 1.0, .min_tokens = 1},
     0,
     0,
     0,
     0.0,
     1,
     0,
     0},
    /* v1.1 */
    {"int4-asym channel4, knorm",
     {"int4-asym", "channel4", "f16"},
     {"int2-asym", "group8", "bf16"},
     KNORM(0.6),
     0,
     0,
     0,
     0.0,
     1,
     0,
     0},
    {"int3 group4, vnorm", {"int3", "group4", "f16"}, {"int3", "token", "f32"}, VNORM(0.7), 0, 0, 0, 0.0, 1, 0, 0},
    /* log8 scales, the receiver cache's layout (int8 keys per channel run, values per group) */
    {"int8 log8 channel4/group8",
     {"int8", "channel4", "log8"},
     {"int8", "group8", "log8"},
     VNORM(0.5),
     0,
     0,
     0,
     0.0,
     1,
     0,
     0},
    /* kv_direct: one selection per section, on the device, the same rows for every layer */
    {"kv_direct int8, knorm", {"int8", "token", "f16"}, {"int4", "group8", "f16"}, KNORM(0.5), 0, 1, 0, 0.0, 1, 0, 0},
    /* outlier tables: chosen on the device, the tensors encoded without them there, the table written on the host */
    {"outliers 1%", {"int4", "token", "f16"}, {"int4", "token", "f16"}, KNORM(0.5), 0, 0, 0, 0.01, 1, 0, 0},
    {"outliers 5%, asym channel",
     {"int4-asym", "channel2", "f16"},
     {"int2-asym", "group4", "bf16"},
     VNORM(0.7),
     3,
     0,
     0,
     0.05,
     1,
     0,
     0},
    {"kv_direct outliers, layer",
     {"int8", "layer", "f32"},
     {"int4", "head", "f16"},
     KNORM(0.6),
     0,
     1,
     0,
     0.02,
     1,
     0,
     0},

    /* pre-RoPE keys (FORMAT.md §5.11): rotated back on the device with the host's table (kw_op_rope_table) */
    {"pre-RoPE, kv_direct",
     {"int8", "token", "f16"},
     {"int8", "token", "f16"},
     {.mode = KW_SELECT_FULL, .proportion = 1.0, .min_tokens = 1},
     0,
     1,
     1,
     0.0,
     1,
     0,
     0},
    {"pre-RoPE, knorm, outliers 2%",
     {"int4-asym", "channel4", "f16"},
     {"int4", "group8", "bf16"},
     KNORM(0.5),
     3,
     0,
     1,
     0.02,
     1,
     0,
     0},
    {"pre-RoPE, rotated K, clipped",
     {"int3", "token", "f16"},
     {"int4", "token", "f16"},
     VNORM(0.6),
     0,
     0,
     1,
     0.0,
     1,
     1,
     3},
    {"rotated K and V", {"int4", "token", "f16"}, {"int4", "group8", "f16"}, KNORM(0.5), 0, 0, 0, 0.0, 1, 3, 0},
    {"rotated V, outliers 2%, zstd",
     {"int8", "token", "f16"},
     {"int4-asym", "channel4", "f16"},
     VNORM(0.6),
     3,
     0,
     0,
     0.02,
     1,
     2,
     0},
    /* clipped scales (FORMAT.md §5.13): the candidate search on the device */
    {"clipped K scales", {"int3-asym", "token", "f16"}, {"int4", "group8", "f16"}, KNORM(0.5), 0, 0, 0, 0.0, 1, 0, 1},
    {"clipped K and V, channel, log8",
     {"int4-asym", "channel4", "bf16"},
     {"int2", "group8", "log8"},
     VNORM(0.6),
     3,
     0,
     0,
     0.0,
     1,
     0,
     3},
    {"clipped V, rotated, outliers 2%",
     {"int8", "token", "f16"},
     {"int3", "head", "f16"},
     KNORM(0.5),
     0,
     0,
     0,
     0.02,
     1,
     3,
     2},
    {"kv_direct clipped, layer",
     {"int2-asym", "layer", "f32"},
     {"int4", "token", "e8m0"},
     KNORM(0.6),
     0,
     1,
     0,
     0.0,
     1,
     0,
     3},
};

static void test_cases_f32(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; ++i)
        run_case(&CASES[i], KW_DTYPE_F32);
}

static void test_cases_bf16(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; ++i)
        run_case(&CASES[i], KW_DTYPE_BF16);
}

/* Round two of a refinement (a skip): the ranking is the CPU's (the device top-k has no skip), on rows downloaded
 * for it; the tensors are still encoded on the device. */
static void test_skip_ranked(void **state) {
    (void)state;
    const share_case c = {
        "knorm, skip", {"int8", "token", "f16"}, {"int8", "token", "f16"}, KNORM(0.5), 0, 0, 0, 0.0, 1, 0, 0};
    const int64_t skip[2] = {2, 1}; /* of the 4 and 2 rows knorm keeps of 9 and 5 */
    sink out[2] = {{0}, {0}};
    kw_share_stats ss[2];
    kw_share_wire_stats ws[2];
    for (int d = 0; d < 2; ++d)
        run_wire(&c, KW_DTYPE_F32, d, skip, &out[d], &ss[d], &ws[d]);
    assert_int_equal(out[1].len, out[0].len);
    assert_memory_equal(out[1].data, out[0].data, out[0].len);
    assert_int_equal(ss[1].device_selections, 0);
    assert_int_equal(ws[1].device_sections, ws[1].sections);
    free(out[0].data), free(out[1].data);
}

/* A byte cap with a whole-layer plan (kvcomm_like, qkvcomm_like): no allocator reads the rows, each layer is a plain
 * policy (the plan's codec or not sent), so every section is encoded on the device; the blobs are the host path's. */
static void test_budget_plan_on_device(void **state) {
    (void)state;
    kw_wire_codec_spec codecs[2];
    assert_int_equal(kw_wire_spec_parse("int4", "token", "f16", &codecs[0]), 0);
    assert_int_equal(kw_wire_spec_parse("int8", "token", "f16", &codecs[1]), 0);
    const share_case c = {"plan", {"int8", "token", "f16"}, {"int8", "token", "f16"}, KNORM(0.8), 0, 0, 0, 0.0, 0, 0,
                          0};
    kw_wire_policy pol;
    policy_of(&c, &pol);
    const enum kw_wire_budget_mode modes[2] = {KW_WIRE_BUDGET_KVCOMM_LIKE, KW_WIRE_BUDGET_QKVCOMM_LIKE};
    const uint64_t caps[2] = {1400, 1700}; /* qkvcomm_like: some layers at int8 */
    for (int m = 0; m < 2; ++m) {
        sink out[2] = {{0}, {0}};
        kw_share_request_stats rs[2];
        for (int host = 0; host < 2; ++host) {
            const kw_share_request_options ro = {.sections = E.sec,
                                                 .n_sections = E.n_sec,
                                                 .layers = E.layers,
                                                 .n_layers = E.n_layers,
                                                 .select = c.select,
                                                 .cache_dtype = KW_DTYPE_BF16,
                                                 .host_rows = host,
                                                 .wire = &pol,
                                                 .write = sink_write,
                                                 .budget_bytes = caps[m],
                                                 .budget_codecs = codecs,
                                                 .n_budget_codecs = m == 0 ? 1 : 2,
                                                 .budget_mode = modes[m],
                                                 .user = &out[host]};
            const int rc = kw_share_request_run(E.m, E.prompt, E.L - 1, &ro, &rs[host]);
            if (rc < 0) fail_msg("plan: %s (%s)", kw_status_name(rc), kw_error_detail());
        }
        printf("%s %llu: %zu bytes, %d sections, %d on the device, rows per codec %llu %llu\n",
               kw_wire_budget_mode_name(modes[m]), (unsigned long long)caps[m], out[0].len, (int)rs[0].wire.sections,
               (int)rs[0].wire.device_sections, (unsigned long long)rs[0].wire.tokens_per_codec[0],
               (unsigned long long)rs[0].wire.tokens_per_codec[1]);
        assert_true(out[0].len <= caps[m] && rs[0].wire.sections > 0);
        if (m == 1) assert_true(rs[0].wire.tokens_per_codec[0] > 0 && rs[0].wire.tokens_per_codec[1] > 0);
        assert_int_equal(out[0].len, out[1].len);
        assert_memory_equal(out[0].data, out[1].data, out[1].len);
        assert_int_equal(rs[0].wire.device_sections, rs[0].wire.sections);
        assert_int_equal(rs[1].wire.device_sections, 0);
        free(out[0].data), free(out[1].data);
    }
}

/* A per-token byte cap: the allocator reads each layer's rows (downloaded for it) and chooses the kept rows and their
 * codecs, whose tensors are then encoded on the device group by group from the cache; the selection stays on the
 * device. The blobs are the host path's (kw_share_request_options.host_rows): a cap that only lowers codecs, one that
 * drops rows, and kv_direct (the blob's first layer fixes the kept rows of every layer). */
static void test_budget_tokens_on_device(void **state) {
    (void)state;
    kw_wire_codec_spec codecs[2];
    assert_int_equal(kw_wire_spec_parse("int8", "token", "f16", &codecs[0]), 0);
    assert_int_equal(kw_wire_spec_parse("int4", "group8", "bf16", &codecs[1]), 0);
    const share_case c = {"cap", {"int8", "token", "f16"}, {"int8", "token", "f16"}, KNORM(0.8), 0, 0, 0, 0.0, 0, 0, 0};
    kw_wire_policy pol;
    policy_of(&c, &pol);
    const struct {
        uint64_t cap;
        int same_positions;
        enum kw_dtype cache;
    } runs[] = {{1400, 0, KW_DTYPE_F32}, {1000, 0, KW_DTYPE_BF16}, {1200, 1, KW_DTYPE_F32}};
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; ++i) {
        sink out[2] = {{0}, {0}};
        kw_share_request_stats rs[2];
        for (int host = 0; host < 2; ++host) {
            const kw_share_request_options ro = {.sections = E.sec,
                                                 .n_sections = E.n_sec,
                                                 .layers = E.layers,
                                                 .n_layers = E.n_layers,
                                                 .select = c.select,
                                                 .same_positions = runs[i].same_positions,
                                                 .cache_dtype = runs[i].cache,
                                                 .host_rows = host,
                                                 .wire = &pol,
                                                 .write = sink_write,
                                                 .budget_bytes = runs[i].cap,
                                                 .budget_codecs = codecs,
                                                 .n_budget_codecs = 2,
                                                 .budget_mode = KW_WIRE_BUDGET_TOKENS,
                                                 .user = &out[host]};
            const int rc = kw_share_request_run(E.m, E.prompt, E.L - 1, &ro, &rs[host]);
            if (rc < 0) fail_msg("cap: %s (%s)", kw_status_name(rc), kw_error_detail());
        }
        printf("cap %llu%s: %zu bytes, %llu of %llu rows dropped, %llu int4, %d of %d sections on the device, %d "
               "device selections\n",
               (unsigned long long)runs[i].cap, runs[i].same_positions ? " kv_direct" : "", out[0].len,
               (unsigned long long)rs[0].wire.tokens_dropped, (unsigned long long)rs[0].wire.tokens_candidate,
               (unsigned long long)rs[0].wire.tokens_per_codec[1], (int)rs[0].wire.device_sections,
               (int)rs[0].wire.sections, (int)rs[0].share.device_selections);
        assert_true(out[0].len <= runs[i].cap);
        assert_true(rs[0].wire.tokens_dropped > 0 || rs[0].wire.tokens_per_codec[1] > 0); /* the cap bites */
        assert_int_equal(out[0].len, out[1].len);
        assert_memory_equal(out[0].data, out[1].data, out[1].len);
        assert_int_equal(rs[0].wire.device_sections, rs[0].wire.sections);
        assert_int_equal(rs[1].wire.device_sections, 0);
        assert_true(rs[0].share.device_selections > 0);
        assert_int_equal(rs[1].share.device_selections, 0);
        free(out[0].data), free(out[1].data);
    }
}

/* The CPU backend has none of the sharer's device ops: the host path is the only one there. */
static void test_cpu_has_none(void **state) {
    (void)state;
    kw_backend *cpu = NULL;
    assert_int_equal(kw_backend_create_cpu(1, &cpu), 0);
    assert_int_equal(kw_backend_supports_share(cpu), 0);
    assert_int_equal(kw_backend_supports_share(E.gpu), 1);
    const kw_wire_op_spec s = {KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0, 0};
    uint64_t bytes = 0, work = 0;
    assert_int_equal(kw_backend_wire_sizes(cpu, &s, 2, 4, 8, &bytes, &work), KW_E_OP_UNSUPPORTED);
    assert_int_equal(kw_backend_wire_sizes(E.gpu, &s, 2, 4, 8, &bytes, &work), 0);
    assert_int_equal(bytes, 2 * 4 * 2 + 2 * 4 * 8); /* a scale per (head, token), a byte per value */
    kw_backend_destroy(cpu);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cases_f32),
        cmocka_unit_test(test_cases_bf16),
        cmocka_unit_test(test_skip_ranked),
        cmocka_unit_test(test_budget_tokens_on_device),
        cmocka_unit_test(test_budget_plan_on_device),
        cmocka_unit_test(test_cpu_has_none),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
