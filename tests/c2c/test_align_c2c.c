/* test_align_c2c.c: C2C with token alignment end to end against the C2C reference: a Qwen3 receiver and a Llama
 * sharer with the real vocabularies (tiny hidden size), the prompt aligned by kw_align, fused through kw_fusion,
 * 32 greedy tokens identical to RosettaModel.generate (tests/data/c2c/align/c2c_llama.json, written by
 * tools/make_align_c2c_fixtures.py).
 *
 * The models are made here with kw_genmodel_write / kw_genfuser_write using the options the script gave
 * `kvwire gen-model` / `kvwire gen-fuser` (too large to commit: the embeddings have the real vocabularies), and the
 * written files must hash (FNV-1a 64) to the values the script recorded, so both sides ran the same models. The
 * reference ran in fp32 on the CPU, so the C side uses f32 caches, the fp32 projector and unrounded logits; the
 * fixture's smallest relative top-2 logit margin (>= 1.7e-4) is far above fp32 summation-order differences.
 * Checks per scenario: the aligned streams, the kv_cache_index sections, then the tokens, with the receiver's pads
 * visible in decoding as in the reference (KW_ALIGN_PADS_REFERENCE) or kept masked (a scenario run that way by the
 * script with the receiver alone after the prompt). Also: fusion and the pad mode really change the tokens. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "c2c/kw_align.h"
#include "c2c/kw_fuser_load.h"
#include "c2c/kw_genfuser.h"
#include "common/kw_json.h"
#include "common/kw_status.h"
#include "model/kw_genmodel.h"
#include "tests/kw_test_util.h"

typedef struct env {
    char tmp[256], recv_dir[300], shar_dir[300], fuser_dir[300];
    kw_backend *be;
    kw_model *recv, *shar;
    kw_fuser *fuser;
    kw_fusion *fusion;
    kw_tokenizer *qwen, *llama;
    cJSON *fx;
} env;

static env E;

static uint64_t fnv_file(const char *path) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    uint64_t h = 0xcbf29ce484222325ull;
    unsigned char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        for (size_t i = 0; i < n; ++i)
            h = (h ^ buf[i]) * 0x100000001b3ull;
    fclose(f);
    return h;
}

/* `kvwire gen-model --arch A --preset tiny --layers N --seed S --dtype bf16 [--tied 0]` */
static void gen_model(const char *dir, enum kw_arch arch, int32_t layers, uint64_t seed, int untied) {
    kw_genmodel_options o;
    memset(&o, 0, sizeof o);
    assert_int_equal(kw_genmodel_preset("tiny", &arch, &o.cfg), 0);
    o.cfg.n_layers = layers;
    if (untied) o.cfg.tie_embeddings = 0;
    o.cfg.rope.rotary_dim = o.cfg.head_dim;
    kw_genmodel_fit_special_ids(&o.cfg);
    o.dtype = KW_DTYPE_BF16;
    o.seed = seed;
    assert_int_equal(kw_config_validate(&o.cfg), 0);
    const int rc = kw_genmodel_write(&o, dir);
    if (rc < 0) fail_msg("gen-model %s: %s", dir, kw_error_detail());
}

/* `kvwire gen-fuser --receiver R --sharer S --out F --seed 73 --hidden 64 --intermediate 96` */
static void gen_fuser(void) {
    kw_model_config rc, sc;
    assert_int_equal(kw_config_load(E.recv_dir, &rc), 0);
    assert_int_equal(kw_config_load(E.shar_dir, &sc), 0);
    kw_genfuser_options o;
    memset(&o, 0, sizeof o);
    o.dtype = KW_DTYPE_BF16;
    o.recv_layers = rc.n_layers;
    o.sharer_layers = sc.n_layers;
    o.dims = (kw_fuser_dims){.source_dim = sc.head_dim,
                             .source_heads = sc.n_kv_heads,
                             .target_dim = rc.head_dim,
                             .target_heads = rc.n_kv_heads,
                             .hidden_dim = 64,
                             .intermediate_dim = 96,
                             .num_layers = 3};
    o.seed = 73;
    o.base_model = E.recv_dir;
    o.teacher_model = E.shar_dir;
    o.is_do_alignment = 1;
    const int r = kw_genfuser_write(&o, E.fuser_dir);
    if (r < 0) fail_msg("gen-fuser: %s", kw_error_detail());
}

static void expect_hash(const char *dir, const char *model, const char *file) {
    char path[512], hex[32];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)fnv_file(path));
    const cJSON *want = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(E.fx, "models"), model), file);
    assert_true(cJSON_IsString(want));
    if (strcmp(hex, want->valuestring) != 0)
        fail_msg("%s/%s hashes to %s, the reference's to %s: not the models the reference ran", model, file, hex,
                 want->valuestring);
}

static int setup(void **state) {
    (void)state;
    memset(&E, 0, sizeof E);
    char path[1024];
    snprintf(path, sizeof path, "%s/c2c/align/c2c_llama.json", KW_TEST_DATA_DIR);
    if (kw_json_load_file(path, 1 << 20, &E.fx) < 0) return -1;
    snprintf(E.tmp, sizeof E.tmp, "/tmp/kw_test_align_c2c_XXXXXX");
    if (!mkdtemp(E.tmp)) return -1;
    snprintf(E.recv_dir, sizeof E.recv_dir, "%s/receiver", E.tmp);
    snprintf(E.shar_dir, sizeof E.shar_dir, "%s/sharer", E.tmp);
    snprintf(E.fuser_dir, sizeof E.fuser_dir, "%s/fuser", E.tmp);
    gen_model(E.recv_dir, KW_ARCH_QWEN3, 4, 71, 1);
    gen_model(E.shar_dir, KW_ARCH_LLAMA, 2, 72, 0);
    gen_fuser();
    expect_hash(E.recv_dir, "receiver", "config.json");
    expect_hash(E.recv_dir, "receiver", "model.safetensors");
    expect_hash(E.shar_dir, "sharer", "config.json");
    expect_hash(E.shar_dir, "sharer", "model.safetensors");
    if (kw_backend_create_cpu(2, &E.be) < 0) return -1;
    int rc = kw_model_load(E.be, E.recv_dir, NULL, &E.recv);
    if (rc == 0) rc = kw_model_load(E.be, E.shar_dir, NULL, &E.shar);
    if (rc == 0) rc = kw_fuser_load(E.fuser_dir, 0, &E.fuser);
    const kw_fusion_sharer sh = {.model = E.shar, .fuser = E.fuser};
    if (rc == 0) rc = kw_fusion_create(E.recv, &sh, 1, 0, &E.fusion);
    snprintf(path, sizeof path, "%s/models/tokenizers/qwen3", KW_SOURCE_DIR);
    if (rc == 0) rc = kw_tokenizer_load(path, &E.qwen);
    snprintf(path, sizeof path, "%s/models/tokenizers/llama3", KW_SOURCE_DIR);
    if (rc == 0) rc = kw_tokenizer_load(path, &E.llama);
    if (rc < 0) fail_msg("setup: %s (%s)", kw_status_name(rc), kw_error_detail());
    return 0;
}

static int teardown(void **state) {
    (void)state;
    kw_fusion_free(E.fusion);
    kw_fuser_free(E.fuser);
    kw_model_free(E.recv);
    kw_model_free(E.shar);
    kw_backend_destroy(E.be);
    kw_tokenizer_free(E.qwen);
    kw_tokenizer_free(E.llama);
    cJSON_Delete(E.fx);
    if (E.tmp[0]) kw_test_remove_tree(E.tmp);
    return 0;
}

static const cJSON *get(const cJSON *o, const char *key) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!it) fail_msg("fixture: missing %s", key);
    return it;
}

static int32_t *ints(const cJSON *a, int32_t *n) {
    *n = cJSON_GetArraySize(a);
    int32_t *v = malloc((size_t)(*n + 1) * sizeof *v);
    assert_non_null(v);
    int32_t i = 0;
    for (const cJSON *it = a->child; it; it = it->next)
        v[i++] = (int32_t)it->valuedouble;
    return v;
}

/* Aligns the scenario's messages as the reference evaluator does (generation prompt, thinking off, the date). */
static void align(const cJSON *sc, kw_align_result *r) {
    kw_align_side qs, ls;
    assert_int_equal(kw_align_side_init(E.qwen, KW_CHAT_QWEN3, &qs), 0);
    assert_int_equal(kw_align_side_init(E.llama, KW_CHAT_LLAMA32, &ls), 0);
    kw_aligner *al = NULL;
    const int longest = strcmp(get(sc, "strategy")->valuestring, "longest") == 0;
    assert_int_equal(kw_aligner_create(&qs, &ls, longest ? KW_ALIGN_LONGEST : KW_ALIGN_FIRST, &al), 0);
    const cJSON *msgs = get(sc, "messages");
    kw_chat_message m[16];
    size_t n = 0;
    for (const cJSON *it = msgs->child; it && n < 16; it = it->next, ++n)
        m[n] = (kw_chat_message){get(it, "role")->valuestring, get(it, "content")->valuestring};
    const kw_align_chat_options opt = {
        .add_generation_prompt = 1, .enable_thinking = 0, .date_string = get(E.fx, "date")->valuestring};
    assert_int_equal(kw_aligner_align_chat(al, m, n, &opt, r), 0);
    kw_aligner_free(al);
}

/* Runs C2C on an aligned prompt; fused == 0 replaces the sections by one unfused prefix (receiver and sharer run,
 * nothing is projected) to show that fusion changes the output. Returns the new tokens (malloc'd, *n). */
static int32_t *run(const kw_align_result *r, enum kw_align_decode_pads pads, int fused, int64_t *n) {
    int32_t n_eos = 0;
    int32_t *eos = ints(get(E.fx, "eos"), &n_eos);
    const int32_t max_new = (int32_t)get(E.fx, "max_new_tokens")->valuedouble;
    kw_kvcache *cache = NULL;
    assert_int_equal(kw_model_create_cache(E.recv, r->n + max_new, KW_DTYPE_F32, &cache), 0);
    kw_fusion_options base = {
        .mode = KW_FUSION_SEQUENTIAL,
        .numerics = KW_PROJECTOR_FP32,
        .sharer_cache_dtype = KW_DTYPE_F32,
        .gen = {.max_new_tokens = max_new, .round = KW_LOGITS_ROUND_NONE, .eos_ids = eos, .n_eos = n_eos}};
    kw_fusion_result res;
    int rc;
    if (fused) {
        rc = kw_align_run(E.fusion, cache, r, &base, pads, &res);
    } else {
        /* the same streams and masks by hand, with no section fused */
        const kw_fusion_section secs[2] = {{r->n - 1, -1}, {1, -1}};
        const int32_t *sids[1] = {r->sharer_ids};
        const uint8_t *spad[1] = {r->sharer_pad};
        base.sections = secs;
        base.n_sections = 2;
        base.sharer_ids = sids;
        base.sharer_pad = spad;
        for (int64_t p = 0; p < r->n; ++p)
            if (r->recv_pad[p]) assert_int_equal(kw_kvcache_set_valid(cache, p, 1, 0), 0);
        rc = kw_fusion_run(E.fusion, cache, r->recv_ids, r->n, &base, &res);
    }
    if (rc < 0) fail_msg("run: %s (%s)", kw_status_name(rc), kw_error_detail());
    int32_t *ids = res.gen.ids;
    *n = res.gen.n;
    res.gen.ids = NULL;
    if (fused) assert_true(res.stats.tokens_fused > 0);
    kw_fusion_result_free(&res);
    kw_kvcache_free(cache);
    free(eos);
    return ids;
}

static void test_scenarios(void **state) {
    (void)state;
    const cJSON *scs = get(E.fx, "scenarios");
    int32_t *first_ref = NULL;
    int64_t first_n = 0;
    int checked = 0;
    for (const cJSON *sc = scs->child; sc; sc = sc->next, ++checked) {
        const char *name = get(sc, "name")->valuestring;
        kw_align_result r;
        align(sc, &r);
        /* the aligned streams and the sections the reference ran */
        int32_t n = 0;
        int32_t *want = ints(get(sc, "recv_ids"), &n);
        assert_int_equal(r.n, n);
        assert_memory_equal(r.recv_ids, want, (size_t)n * sizeof *want);
        free(want);
        want = ints(get(sc, "sharer_ids"), &n);
        assert_int_equal(r.n, n);
        assert_memory_equal(r.sharer_ids, want, (size_t)n * sizeof *want);
        free(want);
        kw_fusion_section *fs = NULL;
        int32_t n_fs = 0;
        assert_int_equal(kw_align_fusion_sections(&r, 1, &fs, &n_fs), 0);
        const cJSON *kv = get(sc, "kv");
        assert_int_equal(n_fs, cJSON_GetArraySize(kv));
        int32_t i = 0;
        for (const cJSON *it = kv->child; it; it = it->next, ++i) {
            assert_int_equal(fs[i].length, (int64_t)cJSON_GetArrayItem(it, 0)->valuedouble);
            assert_int_equal(fs[i].index, (int32_t)cJSON_GetArrayItem(it, 1)->valuedouble);
        }
        free(fs);
        int64_t pads_r = 0, pads_s = 0;
        for (int64_t p = 0; p < r.n; ++p)
            pads_r += r.recv_pad[p], pads_s += r.sharer_pad[p];
        assert_int_equal(pads_r, (int64_t)get(sc, "recv_pads")->valuedouble);
        assert_int_equal(pads_s, (int64_t)get(sc, "sharer_pads")->valuedouble);
        assert_true(pads_r > 0 && pads_s > 0);

        /* the tokens */
        const int masked = strcmp(get(sc, "decode_pads")->valuestring, "masked") == 0;
        int64_t g = 0;
        int32_t *got = run(&r, masked ? KW_ALIGN_PADS_MASKED : KW_ALIGN_PADS_REFERENCE, 1, &g);
        want = ints(get(sc, "gen_ids"), &n);
        printf("%s: %lld prompt tokens, %d sections, %lld/%lld pads, %lld tokens:", name, (long long)r.n, (int)n_fs,
               (long long)pads_r, (long long)pads_s, (long long)g);
        for (int64_t k = 0; k < g && k < 8; ++k)
            printf(" %d", got[k]);
        printf(" ...\n");
        for (int64_t k = 0; k < g && k < n; ++k)
            if (got[k] != want[k])
                fail_msg("%s: token %lld is %d, the reference's %d", name, (long long)k, got[k], want[k]);
        assert_int_equal(g, n);
        if (checked == 0) {
            /* fusion matters: the same prompt without projection gives other tokens */
            int64_t g0 = 0;
            int32_t *plain = run(&r, KW_ALIGN_PADS_REFERENCE, 0, &g0);
            assert_true(g0 != g || memcmp(plain, got, (size_t)g * sizeof *got) != 0);
            free(plain);
            first_ref = got;
            first_n = g;
            got = NULL;
        } else if (masked && first_ref) {
            /* the pad mode matters: same prompt, pads masked in decoding, other tokens than the reference mode */
            assert_true(first_n != g || memcmp(first_ref, got, (size_t)g * sizeof *got) != 0);
        }
        free(got);
        free(want);
        kw_align_result_free(&r);
    }
    free(first_ref);
    assert_int_equal(checked, 4);
}

static void test_run_errors(void **state) {
    (void)state;
    kw_align_result r;
    align(get(E.fx, "scenarios")->child, &r);
    kw_kvcache *cache = NULL;
    assert_int_equal(kw_model_create_cache(E.recv, r.n + 4, KW_DTYPE_F32, &cache), 0);
    kw_fusion_options base = {.sharer_cache_dtype = KW_DTYPE_F32, .gen = {.max_new_tokens = 2}};
    kw_fusion_result res;
    const kw_fusion_section secs[1] = {{r.n, -1}};
    base.sections = secs;
    base.n_sections = 1;
    assert_int_equal(kw_align_run(E.fusion, cache, &r, &base, KW_ALIGN_PADS_REFERENCE, &res), KW_E_INVALID_ARG);
    base.sections = NULL;
    base.n_sections = 0;
    assert_int_equal(kw_align_run(E.fusion, cache, &r, &base, (enum kw_align_decode_pads)5, &res), KW_E_INVALID_ARG);
    assert_int_equal(kw_align_run(NULL, cache, &r, &base, KW_ALIGN_PADS_REFERENCE, &res), KW_E_INVALID_ARG);
    kw_kvcache *small = NULL;
    assert_int_equal(kw_model_create_cache(E.recv, r.n - 1, KW_DTYPE_F32, &small), 0);
    assert_int_equal(kw_align_run(E.fusion, small, &r, &base, KW_ALIGN_PADS_REFERENCE, &res), KW_E_INVALID_ARG);
    kw_kvcache_free(small);
    /* a valid run leaves the receiver's pads masked when asked to */
    assert_int_equal(kw_align_run(E.fusion, cache, &r, &base, KW_ALIGN_PADS_MASKED, &res), 0);
    assert_non_null(kw_kvcache_mask(cache));
    kw_fusion_result_free(&res);
    /* and unmasks them (after the first token) in the reference mode */
    kw_kvcache_reset(cache);
    assert_int_equal(kw_align_run(E.fusion, cache, &r, &base, KW_ALIGN_PADS_REFERENCE, &res), 0);
    assert_null(kw_kvcache_mask(cache));
    kw_fusion_result_free(&res);
    kw_kvcache_free(cache);
    kw_align_result_free(&r);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scenarios),
        cmocka_unit_test(test_run_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
