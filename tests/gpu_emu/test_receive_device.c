/* test_receive_device.c: the receiver on a CUDA backend decodes KVWire on the device (kw_receive.c's device decode:
 * a section's bytes uploaded once, its tensors decoded into device rows, its outlier table and Hadamard rotation
 * applied there), bit for bit the CPU decoder, and generates the CPU backend's tokens.
 *
 * The rows: the receiver model (tests/data/c2c/fusion/receiver_qwen3, head_dim 16) shares its own prompt but the last
 * token with a key-norm selection of 60% (kw_share_run on the CPU backend, same positions in every layer: kv_direct),
 * and one blob is encoded from them by the CPU encoder per policy case (every codec family, granularity, zero points,
 * log8 scales, two token groups, an outlier table, rotated K and V, zstd). Each blob is received in kv_direct mode
 * three ways: on the emulated CUDA backend with the device decode, on the same backend with host_decode (the CPU
 * decoder, rows uploaded: the reference), and on the CPU backend. Checked:
 *  - the cache rows of every layer at the sent positions: device decode == host decode, bit for bit;
 *  - the counters: device_sections = every section for the device decode (a pre-RoPE blob's keys rotated there by
 *    kw_op_rope_table), 0 with host_decode and on the CPU backend;
 *  - greedy tokens: device decode == host decode (same rows, same backend), and == the CPU backend's (the fixture's
 *    steps are decisive at f32: tests/gpu_emu/test_gpu_emu_e2e.c).
 * C2C likewise (test_c2c): the sharer model (sharer_qwen2, on the CPU backend) sends the layers its fuser uses, a
 * key-norm selection per layer, and the receiver fuses them (kw_fusion_put with the device rows); the receiver caches
 * over the prompt are compared bit for bit, the tokens as above; and once more with per-target subsets
 * (test_c2c_subsets: kw_receive_targets for every sharer layer, each receiver layer it feeds a different
 * every-few-positions mask, so the fuser gathers each target's rows from the device rows). Two more blobs carry a value
 * only a decoder sees (a reserved int8 code, an f16 NaN; their tensors written around kw_wire_encoder_begin_section so
 * the checksums hold): both paths refuse them with KW_E_WIRE_VALUE.
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
#include "receiver/kw_receive.h"
#include "tests/kw_test_util.h"
#include "tests/model/model_fixture.h"
#include "wire/kw_wire.h"

#define DATA  KW_TEST_DATA_DIR "/c2c/fusion"
#define STEPS 8

/* The rows kw_share_run hands over for one sent section, layer by layer, and the sharer's cache geometry. */
typedef struct kept_rows {
    int32_t n, layer[64];
    int64_t rows[64];
    uint32_t *pos[64];
    float *k[64], *v[64];
    int32_t n_model_layers, H, D;
} kept_rows;

static struct {
    kw_backend *gpu, *cpu;
    kw_model *mg, *mc; /* the receiver model on each */
    kwfx fx;
    const int32_t *prompt;
    int64_t L;
    kw_fusion_section sec[2];
    int32_t n_sec, n_layers, H, D;
    kept_rows kr; /* kv_direct: the receiver model's own rows, the same positions in every layer */
    kept_rows ks; /* c2c: the sharer model's (sharer_qwen2 on the CPU backend), positions per layer */
    kw_model *ms; /* the sharer model */
    kw_fuser *fuser;
} E;

static int keep_rows(void *user, const kw_share_layer *l) {
    kept_rows *kr = user;
    assert_true(kr->n < 64);
    const int32_t i = kr->n++;
    kr->layer[i] = l->layer;
    kr->rows[i] = l->n_rows;
    kr->pos[i] = malloc((size_t)l->n_rows * sizeof *kr->pos[i]);
    assert_non_null(kr->pos[i]);
    for (int64_t r = 0; r < l->n_rows; ++r)
        kr->pos[i][r] = (uint32_t)l->positions[r];
    kr->n_model_layers = l->n_source_layers, kr->H = l->n_heads, kr->D = l->head_dim;
    kwfx_copy_share_layer(l, &kr->k[i], &kr->v[i], NULL);
    return 0;
}

static int setup(void **state) {
    (void)state;
    memset(&E, 0, sizeof E);
    int rc = kw_create_gpu(0, &E.gpu);
    if (rc == KW_E_NO_DEVICE || rc == KW_E_UNSUPPORTED) {
        fprintf(stderr, "no CUDA device: skipped\n");
        exit(77);
    }
    if (rc == 0) rc = kw_backend_create_cpu(1, &E.cpu);
    if (rc == 0) rc = kw_model_load(E.gpu, DATA "/receiver_qwen3", NULL, &E.mg);
    if (rc == 0) rc = kw_model_load(E.cpu, DATA "/receiver_qwen3", NULL, &E.mc);
    if (rc == 0) rc = kwfx_load(DATA "/pipeline.kwfx", &E.fx);
    if (rc < 0) {
        fprintf(stderr, "setup: %s (%s)\n", kw_status_name(rc), kw_error_detail());
        return -1;
    }
    E.prompt = kwfx_i32(&E.fx, "prompt_ids", &E.L);
    if (!E.prompt || E.L < 24) return -1;
    if (kw_fusion_sections_standard(E.L, 1, E.sec, &E.n_sec) < 0 || E.n_sec != 2) return -1;
    const kw_model_config *c = kw_model_get_config(E.mc);
    E.n_layers = c->n_layers, E.H = c->n_kv_heads, E.D = c->head_dim;
    if (E.n_layers > 64) return -1;
    int32_t layers[64];
    for (int32_t l = 0; l < E.n_layers; ++l)
        layers[l] = l;
    const kw_share_options so = {.sections = E.sec,
                                 .n_sections = E.n_sec,
                                 .layers = layers,
                                 .n_layers = E.n_layers,
                                 .select = {.mode = KW_SELECT_KNORM, .proportion = 0.6, .min_tokens = 1},
                                 .same_positions = 1,
                                 .cache_dtype = KW_DTYPE_F32,
                                 .on_layer = keep_rows,
                                 .user = &E.kr};
    rc = kw_share_run(E.mc, E.prompt, E.L - 1, &so, NULL);
    if (rc < 0 || E.kr.n != E.n_layers || E.kr.rows[0] >= E.L - 1) {
        fprintf(stderr, "setup: share: %s (%s), %d layers of %lld rows\n", kw_status_name(rc), kw_error_detail(),
                (int)E.kr.n, (long long)E.kr.rows[0]);
        return -1;
    }
    for (int32_t l = 1; l < E.kr.n; ++l)
        if (E.kr.rows[l] != E.kr.rows[0] || memcmp(E.kr.pos[l], E.kr.pos[0], (size_t)E.kr.rows[0] * 4) != 0) return -1;
    /* c2c: the sharer's rows of the layers its fuser uses, a key-norm selection per layer */
    kw_fusion *f = NULL;
    int32_t needed[64], n_needed = 0;
    rc = kw_model_load(E.cpu, DATA "/sharer_qwen2", NULL, &E.ms);
    if (rc == 0) rc = kw_fuser_load(DATA "/fuser_qwen2", 0, &E.fuser);
    const kw_fusion_sharer sh = {.model = E.ms, .fuser = E.fuser};
    if (rc == 0) rc = kw_fusion_create(E.mc, &sh, 1, 0, &f);
    if (rc == 0) rc = kw_fusion_needed_layers(f, 0, needed, 64, &n_needed);
    kw_fusion_free(f);
    kw_share_options ss = so;
    ss.layers = needed, ss.n_layers = n_needed, ss.same_positions = 0, ss.user = &E.ks;
    if (rc == 0) rc = kw_share_run(E.ms, E.prompt, E.L - 1, &ss, NULL);
    if (rc < 0 || E.ks.n != n_needed || n_needed < 2) {
        fprintf(stderr, "setup: c2c share: %s (%s)\n", kw_status_name(rc), kw_error_detail());
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    for (int32_t i = 0; i < E.kr.n; ++i)
        free(E.kr.k[i]), free(E.kr.v[i]), free(E.kr.pos[i]);
    for (int32_t i = 0; i < E.ks.n; ++i)
        free(E.ks.k[i]), free(E.ks.v[i]), free(E.ks.pos[i]);
    kw_model_free(E.ms);
    kw_fuser_free(E.fuser);
    kw_model_free(E.mg);
    kw_model_free(E.mc);
    kw_backend_destroy(E.gpu);
    kw_backend_destroy(E.cpu);
    kwfx_free(&E.fx);
    return 0;
}

typedef struct recv_case {
    const char *name;
    const char *k[3], *v[3];   /* codec, granularity, scale dtype */
    const char *k2[3], *v2[3]; /* a second token group's (NULL: one group) */
    uint32_t outliers;         /* kw_wire_policy.outliers */
    uint8_t rotate, pre_rope;
    int zstd;
} recv_case;

static void policy_of(const recv_case *c, uint32_t T, kw_wire_policy *pol, kw_wire_token_group *groups) {
    memset(pol, 0, sizeof *pol);
    assert_int_equal(kw_wire_spec_parse_v(c->k[0], c->k[1], c->k[2], KW_WIRE_VERSION_1_1, &pol->k), 0);
    assert_int_equal(kw_wire_spec_parse_v(c->v[0], c->v[1], c->v[2], KW_WIRE_VERSION_1_1, &pol->v), 0);
    if (c->k2[0]) { /* the first third of the tokens with the first codecs, the rest with the second */
        groups[0].n_tokens = T / 3;
        groups[0].k = pol->k, groups[0].v = pol->v;
        groups[1].n_tokens = T - groups[0].n_tokens;
        assert_int_equal(kw_wire_spec_parse_v(c->k2[0], c->k2[1], c->k2[2], KW_WIRE_VERSION_1_1, &groups[1].k), 0);
        assert_int_equal(kw_wire_spec_parse_v(c->v2[0], c->v2[1], c->v2[2], KW_WIRE_VERSION_1_1, &groups[1].v), 0);
        pol->n_groups = 2;
        pol->groups = groups;
    }
    pol->outliers = c->outliers;
    pol->rotate = c->rotate;
    pol->pre_rope = c->pre_rope;
    pol->zstd_level = c->zstd;
}

/* The blob of the kept rows under the case's policy (one section per kept layer), malloc'ed. */
static uint8_t *encode_blob(const recv_case *c, const kept_rows *kr, size_t *len) {
    const kw_wire_header hdr = {.n_layers = (uint16_t)kr->n_model_layers,
                                .n_sections = (uint16_t)kr->n,
                                .n_kv_heads = (uint16_t)kr->H,
                                .head_dim = (uint16_t)kr->D,
                                .n_positions = (uint32_t)(E.L - 1),
                                .src_dtype = KW_WIRE_DTYPE_F32,
                                .version = KW_WIRE_VERSION_1_1};
    kw_wire_encoder *enc = NULL;
    assert_int_equal(kw_wire_encoder_create(&hdr, NULL, &enc), 0);
    size_t cap = 4096;
    for (int32_t i = 0; i < kr->n; ++i) {
        kw_wire_policy pol;
        kw_wire_token_group groups[2];
        policy_of(c, (uint32_t)kr->rows[i], &pol, groups);
        size_t bound = 0;
        assert_int_equal(kw_wire_section_bound(&hdr, &pol, (uint32_t)kr->rows[i], &bound), 0);
        cap += bound;
    }
    uint8_t *blob = malloc(cap);
    assert_non_null(blob);
    size_t at = 0, n = 0;
    assert_int_equal(kw_wire_encoder_write_header(enc, blob, cap, &n), 0);
    at += n;
    const size_t row = (size_t)kr->H * (size_t)kr->D;
    for (int32_t i = 0; i < kr->n; ++i) {
        kw_wire_policy pol;
        kw_wire_token_group groups[2];
        policy_of(c, (uint32_t)kr->rows[i], &pol, groups);
        const kw_wire_layer_in in = {.layer = (uint32_t)kr->layer[i],
                                     .n_tokens = (uint32_t)kr->rows[i],
                                     .positions = kr->pos[i],
                                     .k = {.data = kr->k[i], .head_stride = (size_t)kr->D, .token_stride = row},
                                     .v = {.data = kr->v[i], .head_stride = (size_t)kr->D, .token_stride = row}};
        const int rc = kw_wire_encoder_write_section(enc, &in, &pol, blob + at, cap - at, &n);
        if (rc < 0) fail_msg("%s: encode layer %d: %s (%s)", c->name, (int)i, kw_status_name(rc), kw_error_detail());
        at += n;
    }
    assert_int_equal(kw_wire_encoder_write_trailer(enc, blob + at, cap - at, &n), 0);
    at += n;
    kw_wire_encoder_destroy(enc);
    *len = at;
    return blob;
}

/* c2c with subsets: for every sharer layer sent, each receiver layer it feeds (kw_fusion_layer_targets) fuses the
 * section positions p with (p + target + layer) % 3 != 0 only (kw_receive_targets); full: every position. */
static int set_subsets(kw_receive *r, kw_fusion *f, int full) {
    const int64_t len = E.sec[0].length, mask_bytes = (len + 7) / 8;
    uint8_t masks[KW_RECEIVE_MAX_TARGETS][64];
    const uint8_t *mp[KW_RECEIVE_MAX_TARGETS];
    int32_t any = 0;
    if (mask_bytes > 64) return KW_E_LIMIT;
    for (int32_t i = 0; i < E.ks.n; ++i) {
        int32_t targets[KW_RECEIVE_MAX_TARGETS], n = 0;
        KW_FORWARD(kw_fusion_layer_targets(f, 0, E.ks.layer[i], targets, KW_RECEIVE_MAX_TARGETS, &n));
        for (int32_t j = 0; j < n; ++j) {
            memset(masks[j], 0, sizeof masks[j]);
            for (int64_t p = 0; p < len; ++p)
                if (full || (p + targets[j] + E.ks.layer[i]) % 3 != 0) masks[j][p >> 3] |= (uint8_t)(1u << (p & 7));
            mp[j] = masks[j];
        }
        if (n > 0) KW_FORWARD(kw_receive_targets(r, 0, E.ks.layer[i], n, targets, mp, mask_bytes));
        any += n;
    }
    return any > 0 ? 0 : KW_E_STATE; /* the fixture's fuser maps every sharer layer it uses onto some target */
}

/* One request on model m fed the blob (in 3 pieces): kv_direct (f NULL) or c2c through the fusion f (subsets 1: with
 * set_subsets', 2: with full ones); its cache (owned by the caller), stats and result. Returns the first failing status
 * (0: generated). */
static int receive(kw_model *m, kw_fusion *f, int subsets, const uint8_t *blob, size_t len, int host_decode,
                   kw_kvcache **cache, kw_receive_stats *st, kw_fusion_result *res) {
    int rc = kw_model_create_cache(m, E.L + STEPS + 4, KW_DTYPE_F32, cache);
    const kw_receive_options ro = {
        .mode = f ? KW_RECEIVE_C2C : KW_RECEIVE_KV_DIRECT,
        .host_decode = host_decode,
        .fusion = {.sections = E.sec,
                   .n_sections = E.n_sec,
                   .mode = KW_FUSION_SEQUENTIAL,
                   .numerics = KW_PROJECTOR_FP32,
                   .sharer_cache_dtype = KW_DTYPE_F32,
                   .gen = {.max_new_tokens = STEPS, .round = KW_LOGITS_ROUND_NONE, .eos_ids = E.prompt, .n_eos = 0}}};
    kw_receive *r = NULL;
    if (rc == 0) rc = kw_receive_begin(m, f, *cache, E.prompt, E.L, &ro, &r);
    if (rc == 0) rc = kw_receive_prefill(r, 0);
    if (rc == 0 && subsets) rc = set_subsets(r, f, subsets == 2);
    const size_t cut[4] = {0, len / 3, 2 * len / 3, len};
    int done = 0;
    for (int i = 0; rc == 0 && i < 3; ++i)
        rc = kw_receive_feed(r, 0, blob + cut[i], cut[i + 1] - cut[i], &done);
    if (rc == 0 && !done) rc = KW_E_STATE;
    if (rc == 0) rc = kw_receive_end_section(r, 0);
    if (rc == 0) rc = kw_receive_generate(r, res);
    if (r) *st = *kw_receive_get_stats(r);
    kw_receive_free(r);
    return rc;
}

/* The receiver caches' rows at positions pos[0..n) (NULL: 0..n-1) of every layer, K then V, must be the same bits. */
static void compare_rows(const char *what, kw_kvcache *a, kw_kvcache *b, const uint32_t *pos, int64_t n) {
    const size_t row = (size_t)E.H * (size_t)E.D;
    float *ka = malloc(row * sizeof *ka), *va = malloc(row * sizeof *va), *kb = malloc(row * sizeof *kb),
          *vb = malloc(row * sizeof *vb);
    assert_true(ka && va && kb && vb);
    for (int32_t l = 0; l < E.n_layers; ++l)
        for (int64_t i = 0; i < n; ++i) {
            const int64_t p = pos ? pos[i] : i;
            assert_int_equal(kw_kvcache_read_rows(a, l, p, 1, ka, va), 0);
            assert_int_equal(kw_kvcache_read_rows(b, l, p, 1, kb, vb), 0);
            for (size_t j = 0; j < row; ++j)
                if (memcmp(&ka[j], &kb[j], sizeof *ka) != 0 || memcmp(&va[j], &vb[j], sizeof *va) != 0)
                    fail_msg("%s: layer %d position %lld value %zu: K %.9g / %.9g, V %.9g / %.9g", what, (int)l,
                             (long long)p, j, ka[j], kb[j], va[j], vb[j]);
        }
    free(ka), free(va), free(kb), free(vb);
}

/* The blob received three ways (device decode, host decode on the emulated backend, the CPU backend): kv_direct (fg,
 * fc NULL) or c2c through fg (on E.mg) and fc (on E.mc). Checks the counters (device_sections: expect_device), the
 * caches (device == host decode at pos, n) and the tokens (all three equal). */
static void receive_three(const char *name, const uint8_t *blob, size_t len, kw_fusion *fg, kw_fusion *fc, int subsets,
                          int32_t n_sections, int32_t expect_device, const uint32_t *pos, int64_t n) {
    kw_kvcache *cd = NULL, *ch = NULL, *cc = NULL;
    kw_receive_stats sd, sh, sc;
    kw_fusion_result rd, rh, rcpu;
    memset(&rd, 0, sizeof rd), memset(&rh, 0, sizeof rh), memset(&rcpu, 0, sizeof rcpu);
    int rc = receive(E.mg, fg, subsets, blob, len, 0, &cd, &sd, &rd);
    if (rc < 0) fail_msg("%s: device decode: %s (%s)", name, kw_status_name(rc), kw_error_detail());
    rc = receive(E.mg, fg, subsets, blob, len, 1, &ch, &sh, &rh);
    if (rc < 0) fail_msg("%s: host decode: %s (%s)", name, kw_status_name(rc), kw_error_detail());
    rc = receive(E.mc, fc, subsets, blob, len, 0, &cc, &sc, &rcpu);
    if (rc < 0) fail_msg("%s: CPU backend: %s (%s)", name, kw_status_name(rc), kw_error_detail());
    printf("  %-38s %6zu bytes, %d sections, %d on the device, %lld tokens\n", name, len, (int)sd.sections,
           (int)sd.device_sections, (long long)rd.gen.n);
    assert_int_equal(sd.sections, n_sections);
    assert_int_equal(sd.device_sections, expect_device);
    assert_int_equal(sh.device_sections, 0);
    assert_int_equal(sc.device_sections, 0);
    compare_rows(name, cd, ch, pos, n);
    assert_int_equal(rd.gen.n, STEPS);
    assert_int_equal(rh.gen.n, STEPS);
    assert_int_equal(rcpu.gen.n, STEPS);
    assert_memory_equal(rd.gen.ids, rh.gen.ids, STEPS * sizeof *rd.gen.ids);
    assert_memory_equal(rd.gen.ids, rcpu.gen.ids, STEPS * sizeof *rd.gen.ids);
    kw_fusion_result_free(&rd), kw_fusion_result_free(&rh), kw_fusion_result_free(&rcpu);
    kw_kvcache_free(cd), kw_kvcache_free(ch), kw_kvcache_free(cc);
}

static void run_case(const recv_case *c) {
    size_t len = 0;
    uint8_t *blob = encode_blob(c, &E.kr, &len);
    receive_three(c->name, blob, len, NULL, NULL, 0, E.n_layers, E.n_layers, E.kr.pos[0], E.kr.rows[0]);
    free(blob);
}

/* c2c: the sharer's blob fused into the receiver (kw_fusion_put with the device rows; subsets: with set_subsets'); the
 * receiver cache over the prompt but its last token compared. */
static void run_c2c(const recv_case *c, int subsets) {
    size_t len = 0;
    uint8_t *blob = encode_blob(c, &E.ks, &len);
    const kw_fusion_sharer sh = {
        .fuser = E.fuser, .n_layers = E.ks.n_model_layers, .n_kv_heads = E.ks.H, .head_dim = E.ks.D};
    kw_fusion *fg = NULL, *fc = NULL;
    assert_int_equal(kw_fusion_create(E.mg, &sh, 1, 0, &fg), 0);
    assert_int_equal(kw_fusion_create(E.mc, &sh, 1, 0, &fc), 0);
    char name[96];
    snprintf(name, sizeof name, "c2c%s %s", subsets ? " subsets" : "", c->name);
    receive_three(name, blob, len, fg, fc, subsets, E.ks.n, E.ks.n, NULL, E.L - 1);
    kw_fusion_free(fg);
    kw_fusion_free(fc);
    free(blob);
}

#define ONE                                                                                                            \
    {NULL, NULL, NULL}, {                                                                                              \
        NULL, NULL, NULL                                                                                               \
    }
static const recv_case CASES[] = {
    {"int8 token f16", {"int8", "token", "f16"}, {"int8", "token", "f16"}, ONE, 0, 0, 0, 0},
    {"int4 group4 bf16 / group8 f32, zstd", {"int4", "group4", "bf16"}, {"int4", "group8", "f32"}, ONE, 0, 0, 0, 3},
    {"int6 head f32 / nf4 layer f16", {"int6", "head", "f32"}, {"nf4", "layer", "f16"}, ONE, 0, 0, 0, 0},
    {"e4m3 token e8m0 / e5m2 token f16", {"e4m3", "token", "e8m0"}, {"e5m2", "token", "f16"}, ONE, 0, 0, 0, 0},
    {"bf16 / f16 passthrough", {"bf16", "none", "none"}, {"f16", "none", "none"}, ONE, 0, 0, 0, 0},
    {"int4-asym channel4 / int2-asym group8",
     {"int4-asym", "channel4", "f16"},
     {"int2-asym", "group8", "bf16"},
     ONE,
     0,
     0,
     0,
     0},
    {"int3 group4 / int3 token", {"int3", "group4", "f16"}, {"int3", "token", "f32"}, ONE, 0, 0, 0, 0},
    {"int8 log8 channel4 / int4 log8 group8",
     {"int8", "channel4", "log8"},
     {"int4", "group8", "log8"},
     ONE,
     0,
     0,
     0,
     0},
    {"two groups: int8 token, int4 group8",
     {"int8", "token", "f16"},
     {"int8", "token", "f16"},
     {"int4", "group8", "f16"},
     {"int2-asym", "token", "f16"},
     0,
     0,
     0,
     0},
    {"outliers 40, int4 token", {"int4", "token", "f16"}, {"int4", "token", "f16"}, ONE, 40, 0, 0, 0},
    {"outliers 200, asym channel2", {"int4-asym", "channel2", "f16"}, {"int3", "group4", "bf16"}, ONE, 200, 0, 0, 0},
    {"rotated K and V, int4", {"int4", "token", "f16"}, {"int4", "group8", "f16"}, ONE, 0, 3, 0, 0},
    {"rotated V, outliers 64, two groups",
     {"int8", "token", "f16"},
     {"int4", "token", "f16"},
     {"int6", "head", "f16"},
     {"int3", "group4", "f32"},
     64,
     2,
     0,
     0},
    {"pre-RoPE keys", {"int8", "token", "f16"}, {"int8", "token", "f16"}, ONE, 0, 0, 1, 0},
    {"pre-RoPE keys, rotated, outliers 40", {"int4", "token", "f16"}, {"int4", "group8", "f16"}, ONE, 40, 3, 1, 0},
};

static void test_cases(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof CASES / sizeof *CASES; ++i)
        run_case(&CASES[i]);
}

static void test_c2c(void **state) {
    (void)state;
    run_c2c(&CASES[0], 0);  /* int8 token */
    run_c2c(&CASES[12], 0); /* rotated V, outliers, two groups */
}

/* Subsets that hold every row are no subsets: the device-decoded rows gathered for each target (the identity gather)
 * give the receiver cache of the request without subsets, bit for bit. The pattern subsets themselves are checked
 * against a fusion sent only each target's rows in tests/c2c/test_rscore.c (test_fusion_per_target, CPU backend). */
static void run_c2c_full(const recv_case *c) {
    size_t len = 0;
    uint8_t *blob = encode_blob(c, &E.ks, &len);
    const kw_fusion_sharer sh = {
        .fuser = E.fuser, .n_layers = E.ks.n_model_layers, .n_kv_heads = E.ks.H, .head_dim = E.ks.D};
    kw_fusion *fg = NULL;
    assert_int_equal(kw_fusion_create(E.mg, &sh, 1, 0, &fg), 0);
    kw_kvcache *ca = NULL, *cb = NULL;
    kw_receive_stats sa, sb;
    kw_fusion_result ra, rb;
    memset(&ra, 0, sizeof ra), memset(&rb, 0, sizeof rb);
    assert_int_equal(receive(E.mg, fg, 2, blob, len, 0, &ca, &sa, &ra), 0);
    assert_int_equal(receive(E.mg, fg, 0, blob, len, 0, &cb, &sb, &rb), 0);
    assert_int_equal(sa.device_sections, E.ks.n);
    compare_rows("c2c full subsets", ca, cb, NULL, E.L - 1);
    kw_fusion_result_free(&ra), kw_fusion_result_free(&rb);
    kw_kvcache_free(ca), kw_kvcache_free(cb);
    kw_fusion_free(fg);
    free(blob);
}

static void test_c2c_subsets(void **state) {
    (void)state;
    run_c2c(&CASES[0], 1);
    run_c2c(&CASES[12], 1);
    run_c2c_full(&CASES[12]);
}

/* A blob whose tensors are written here (kw_wire_encoder_begin_section, so the checksums are right) with int8 K and
 * V per token (f16 scales 1.0, codes 1) and one reserved code -128 in layer 1's V; or (kind 1) f16 passthrough codes
 * with one f16 NaN there; or (kind 2) K and V flagged Hadamard-rotated with f32 scales, layer 1's V all codes 127
 * under scales of 1e38 / 127, which the inverse butterflies add up past f32 (FORMAT.md §5.12): values only a decoder
 * sees. Both decodes refuse it with KW_E_WIRE_VALUE. */
static uint8_t *bad_blob(int kind, size_t *len) {
    const int nan = kind == 1, rot = kind == 2;
    kw_wire_policy pol;
    memset(&pol, 0, sizeof pol);
    const char *codec = nan ? "f16" : "int8", *gran = nan ? "none" : "token",
               *scale = nan   ? "none"
                        : rot ? "f32"
                              : "f16";
    assert_int_equal(kw_wire_spec_parse_v(codec, gran, scale, KW_WIRE_VERSION_1_1, &pol.k), 0);
    pol.v = pol.k;
    pol.rotate = rot ? 3 : 0;
    const kw_wire_header hdr = {.n_layers = (uint16_t)E.n_layers,
                                .n_sections = (uint16_t)E.n_layers,
                                .n_kv_heads = (uint16_t)E.H,
                                .head_dim = (uint16_t)E.D,
                                .n_positions = (uint32_t)(E.L - 1),
                                .src_dtype = KW_WIRE_DTYPE_F32,
                                .version = KW_WIRE_VERSION_1_1};
    kw_wire_encoder *enc = NULL;
    assert_int_equal(kw_wire_encoder_create(&hdr, NULL, &enc), 0);
    const size_t T = (size_t)E.kr.rows[0], vals = (size_t)E.H * T * (size_t)E.D;
    size_t bound = 0;
    assert_int_equal(kw_wire_section_bound(&hdr, &pol, (uint32_t)T, &bound), 0);
    const size_t cap = 4096 + (size_t)E.n_layers * bound;
    uint8_t *blob = malloc(cap);
    assert_non_null(blob);
    size_t at = 0, n = 0, off = 0;
    assert_int_equal(kw_wire_encoder_write_header(enc, blob, cap, &n), 0);
    at += n;
    for (int32_t l = 0; l < E.n_layers; ++l) {
        assert_int_equal(
            kw_wire_encoder_begin_section(enc, (uint32_t)l, (uint32_t)T, E.kr.pos[0], &pol, blob + at, cap - at, &off),
            0);
        uint8_t *p = blob + at + off;
        for (int kv = 0; kv < 2; ++kv) {
            if (nan) { /* f16 1.0 everywhere */
                for (size_t i = 0; i < vals; ++i)
                    p[2 * i] = 0x00, p[2 * i + 1] = 0x3c;
                if (l == 1 && kv == 1) p[2 * 7] = 0x00, p[2 * 7 + 1] = 0x7e; /* an f16 NaN */
                p += 2 * vals;
            } else if (rot) { /* H * T f32 scales (1.0, or 1e38 / 127 in layer 1's V), then the codes */
                const int big = l == 1 && kv == 1;
                const float sv = big ? 1e38f / 127.0f : 1.0f;
                for (size_t i = 0; i < (size_t)E.H * T; ++i)
                    memcpy(p + 4 * i, &sv, 4);
                p += 4 * (size_t)E.H * T;
                memset(p, big ? 127 : 1, vals);
                p += vals;
            } else { /* H * T f16 scales 1.0, then the codes */
                for (size_t i = 0; i < (size_t)E.H * T; ++i)
                    p[2 * i] = 0x00, p[2 * i + 1] = 0x3c;
                p += 2 * (size_t)E.H * T;
                memset(p, 1, vals);
                if (l == 1 && kv == 1) p[7] = 0x80; /* the reserved int8 code -128 */
                p += vals;
            }
        }
        assert_int_equal(kw_wire_encoder_finish_section(enc, &n), 0);
        at += n;
    }
    assert_int_equal(kw_wire_encoder_write_trailer(enc, blob + at, cap - at, &n), 0);
    at += n;
    kw_wire_encoder_destroy(enc);
    *len = at;
    return blob;
}

static void test_bad_value(void **state) {
    (void)state;
    if (kw_wire_rotate_log2((uint32_t)E.D) < 0) fail_msg("the test model's head_dim %d is no power of two", E.D);
    static const char *const kinds[] = {"int8 -128", "f16 NaN", "rotated past f32"};
    for (int kind = 0; kind < 3; ++kind) {
        size_t len = 0;
        uint8_t *blob = bad_blob(kind, &len);
        for (int host = 0; host < 2; ++host) {
            kw_kvcache *cache = NULL;
            kw_receive_stats st;
            kw_fusion_result res;
            memset(&st, 0, sizeof st), memset(&res, 0, sizeof res);
            const int rc = receive(E.mg, NULL, 0, blob, len, host, &cache, &st, &res);
            printf("  %s, %s decode: %s, %d sections on the device\n", kinds[kind], host ? "host" : "device",
                   kw_status_name(rc), (int)st.device_sections);
            assert_int_equal(rc, KW_E_WIRE_VALUE);
            assert_int_equal(st.device_sections, host ? 0 : 1); /* layer 0 went through, layer 1 failed */
            kw_fusion_result_free(&res);
            kw_kvcache_free(cache);
        }
        free(blob);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cases),
        cmocka_unit_test(test_c2c),
        cmocka_unit_test(test_c2c_subsets),
        cmocka_unit_test(test_bad_value),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
