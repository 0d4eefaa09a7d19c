/* test_kvstats.c: tools/kw_kvstats.c (`kvwire kvstats`) on the tiny random Qwen3 model (tests/data/model/hf), its
 * numbers checked against values computed here another way:
 *  - the magnitudes per (layer, head) against the prompt rows read from a cache this test prefills itself;
 *  - the control row (the cache as it is): agreement 1, KL exactly 0, error 0, f32 bytes;
 *  - int8 per token: the reconstruction error within the bound its scale allows (|x' - x| <= amax(row) / 254 per
 *    value), above 0; int4 per token: a larger error in fewer bytes;
 *  - the reference tokens: the same as an independent greedy run of the whole prompt;
 *  - teacher-forced agreement 1 implies free-running agreement 1, for every codec;
 *  - centred keys, query-weighted keys and --qk-gain's G against their definitions recomputed here. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_half.h"
#include "common/kw_status.h"
#include "kernels/kw_backend.h"
#include "model/kw_generate.h"
#include "model/kw_config.h"
#include "model/kw_kvcache.h"
#include "model/kw_model.h"
#include "tools/kw_kvstats.h"

enum { N_NEW = 12 };

static const int32_t g_prompts[2][9] = {{5, 17, 101, 3, 77, 250, 9, 31, 400}, {300, 2, 2, 2, 8, 64, 128, 255, 1}};

static kw_kvstats_codec codec(const char *name, const char *gran) {
    kw_kvstats_codec c = {0};
    if (!name) {
        c.lossless = 1;
        return c;
    }
    assert_int_equal(kw_wire_spec_parse(name, gran, "f32", &c.spec), 0);
    c.spec_v = c.spec;
    return c;
}

/* Prompt rows [0, n - 1) of every layer, read from a cache prefilled here: k[l], v[l] (T, H, D). */
static void read_prompt_rows(kw_model *m, const int32_t *ids, int64_t n, float **k, float **v) {
    const kw_model_config *cfg = kw_model_get_config(m);
    kw_kvcache *cache = NULL;
    assert_int_equal(kw_model_create_cache(m, n, KW_DTYPE_F32, &cache), 0);
    const kw_forward_args a = {.ids = ids, .n = n - 1, .mode = KW_LOGITS_NONE};
    assert_int_equal(kw_model_forward(m, cache, &a), 0);
    const size_t per = (size_t)(n - 1) * (size_t)cfg->n_kv_heads * (size_t)cfg->head_dim;
    for (int32_t l = 0; l < cfg->n_layers; ++l) {
        k[l] = malloc(per * sizeof **k);
        v[l] = malloc(per * sizeof **v);
        assert_true(k[l] && v[l]);
        assert_int_equal(kw_kvcache_read_rows(cache, l, 0, n - 1, k[l], v[l]), 0);
    }
    kw_kvcache_free(cache);
}

/* A one-thread CPU backend (*be, owned by the caller) and the tiny model tests/data/model/hf/<name> on it (owned). */
static kw_model *load_model(const char *name, kw_backend **be) {
    char path[512];
    snprintf(path, sizeof path, "%s/model/hf/%s", KW_TEST_DATA_DIR, name);
    kw_model *m = NULL;
    assert_int_equal(kw_backend_create_cpu(1, be), 0);
    assert_int_equal(kw_model_load(*be, path, NULL, &m), 0);
    return m;
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void test_kvstats_tiny(void **state) {
    (void)state;
    kw_backend *be = NULL;
    kw_model *m = load_model("qwen3_gqa3", &be);
    const kw_model_config *cfg = kw_model_get_config(m);
    const int32_t L = cfg->n_layers, H = cfg->n_kv_heads, D = cfg->head_dim;
    const kw_kvstats_codec codecs[] = {codec(NULL, NULL), codec("int8", "token"), codec("int4", "token"),
                                       codec("nf4", "head")};
    kw_kvstats *s = NULL;
    assert_int_equal(kw_kvstats_create(m, codecs, 4, N_NEW, &s), 0);
    assert_int_equal(kw_kvstats_add_prompt(s, g_prompts[0], 1, NULL), KW_E_INVALID_ARG);

    float **k[2], **v[2];
    int64_t rows = 0;
    double bound2 = 0.0, norm2 = 0.0; /* int8/token: the error bound of K, and K's squared norm */
    for (int p = 0; p < 2; ++p) {
        const int64_t n = 9;
        int32_t ref[N_NEW];
        assert_int_equal(kw_kvstats_add_prompt(s, g_prompts[p], n, ref), 0);
        rows += n - 1;
        /* the reference: an independent greedy run of the whole prompt */
        kw_kvcache *cache = NULL;
        assert_int_equal(kw_model_create_cache(m, n + N_NEW, KW_DTYPE_F32, &cache), 0);
        static const int32_t no_eos = -1;
        const kw_generate_options go = {
            .max_new_tokens = N_NEW, .round = KW_LOGITS_ROUND_NONE, .eos_ids = &no_eos, .n_eos = 0};
        kw_generate_result res = {0};
        assert_int_equal(kw_generate_greedy(m, cache, g_prompts[p], n, &go, &res), 0);
        assert_int_equal(res.n, N_NEW);
        assert_memory_equal(res.ids, ref, sizeof ref);
        kw_generate_result_free(&res);
        kw_kvcache_free(cache);
        k[p] = calloc((size_t)L, sizeof *k[p]);
        v[p] = calloc((size_t)L, sizeof *v[p]);
        assert_true(k[p] && v[p]);
        read_prompt_rows(m, g_prompts[p], n, k[p], v[p]);
        for (int32_t l = 0; l < L; ++l)
            for (int64_t r = 0; r < (n - 1) * H; ++r) {
                double amax = 0.0;
                for (int32_t d = 0; d < D; ++d) {
                    const double x = k[p][l][r * D + d];
                    amax = fmax(amax, fabs(x));
                    norm2 += x * x;
                }
                bound2 += (double)D * (amax / 254.0) * (amax / 254.0);
            }
    }
    assert_int_equal(kw_kvstats_rows(s), rows);

    /* magnitudes, recomputed from the rows */
    for (int32_t l = 0; l < L; ++l)
        for (int32_t h = 0; h < H; ++h) {
            double ch_abs[256] = {0}, ch_min[256], ch_max[256], sum = 0.0, mx = 0.0, token_range = 0.0;
            for (int32_t d = 0; d < D; ++d)
                ch_min[d] = INFINITY, ch_max[d] = -INFINITY;
            for (int p = 0; p < 2; ++p)
                for (int64_t t = 0; t < 8; ++t) {
                    const float *row = k[p][l] + ((size_t)t * (size_t)H + (size_t)h) * (size_t)D;
                    double lo = INFINITY, hi = -INFINITY;
                    for (int32_t d = 0; d < D; ++d) {
                        ch_abs[d] += fabs((double)row[d]);
                        sum += fabs((double)row[d]);
                        mx = fmax(mx, fabs((double)row[d]));
                        ch_min[d] = fmin(ch_min[d], row[d]), ch_max[d] = fmax(ch_max[d], row[d]);
                        lo = fmin(lo, row[d]), hi = fmax(hi, row[d]);
                    }
                    token_range += hi - lo;
                }
            double sorted[256], channel_range = 0.0;
            int32_t best = 0;
            for (int32_t d = 0; d < D; ++d) {
                sorted[d] = ch_abs[d];
                channel_range += ch_max[d] - ch_min[d];
                if (ch_abs[d] > ch_abs[best]) best = d;
            }
            qsort(sorted, (size_t)D, sizeof *sorted, cmp_double);
            const double median = D % 2 ? sorted[D / 2] : 0.5 * (sorted[D / 2 - 1] + sorted[D / 2]);
            kw_kvstats_head got;
            assert_int_equal(kw_kvstats_head_get(s, 0, l, h, &got), 0);
            assert_float_equal(got.max_abs, mx, 1e-12);
            assert_float_equal(got.mean_abs, sum / (double)(rows * D), 1e-9);
            assert_float_equal(got.outlier_ratio, ch_abs[best] / median, 1e-9);
            assert_int_equal(got.outlier_channel, best);
            assert_float_equal(got.token_range, token_range / (double)rows, 1e-9);
            assert_float_equal(got.channel_range, channel_range / (double)D, 1e-9);
        }

    const kw_kvstats_result *none = kw_kvstats_result_get(s, 0), *i8 = kw_kvstats_result_get(s, 1),
                            *i4 = kw_kvstats_result_get(s, 2);
    assert_null(kw_kvstats_result_get(s, 4));
    assert_int_equal(none->status, 0);
    assert_int_equal(none->tf_steps, 2 * N_NEW);
    assert_int_equal(none->tf_agree, 2 * N_NEW);
    assert_int_equal(none->free_agree, 2 * N_NEW);
    assert_true(none->kl_sum == 0.0 && none->k_err2 == 0.0 && none->v_err2 == 0.0);
    assert_int_equal(none->blob_bytes, rows * L * H * D * 2 * 4);
    assert_float_equal(none->k_norm2, norm2, 1e-9 * norm2);
    assert_true(i8->k_err2 > 0.0 && i8->k_err2 <= bound2 * 1.0001);
    assert_true(i4->k_err2 > 4.0 * i8->k_err2 && i4->v_err2 > 4.0 * i8->v_err2);
    assert_true(i4->blob_bytes < i8->blob_bytes && i8->blob_bytes < none->blob_bytes);
    print_message("int8/token K error %.3g (bound %.3g), int4/token %.3g; TF agreement int8 %lld/%lld, int4 %lld\n",
                  sqrt(i8->k_err2 / norm2), sqrt(bound2 / norm2), sqrt(i4->k_err2 / norm2), (long long)i8->tf_agree,
                  (long long)i8->tf_steps, (long long)i4->tf_agree);
    for (int32_t c = 0; c < 4; ++c) {
        const kw_kvstats_result *r = kw_kvstats_result_get(s, c);
        assert_int_equal(r->status, 0);
        assert_true(r->tf_agree <= r->tf_steps && r->free_agree <= r->free_steps && r->kl_sum >= 0.0);
        if (r->tf_agree == r->tf_steps) assert_int_equal(r->free_agree, r->free_steps);
        if (c > 0) assert_true(r->kl_sum > 0.0);
    }
    for (int p = 0; p < 2; ++p) {
        for (int32_t l = 0; l < L; ++l)
            free(k[p][l]), free(v[p][l]);
        free(k[p]);
        free(v[p]);
    }
    kw_kvstats_free(s);
    kw_model_free(m);
    kw_backend_destroy(be);
}

/* The v1.1 options: keys sent before RoPE come back rotated (bf16 keys sent unrotated decode as close as bf16 keys
 * sent as they are: a missing or wrong rotation would make K's error of order 1), and outliers sent exact lower the
 * error at more bytes. */
static void test_kvstats_v11_options(void **state) {
    (void)state;
    kw_backend *be = NULL;
    kw_model *m = load_model("qwen3_gqa3", &be);
    kw_kvstats_codec codecs[5] = {codec("bf16", "token"), codec("bf16", "token"), codec("int4", "token"),
                                  codec("int4", "token"), codec("int4", "token")};
    codecs[1].pre_rope = 1;
    codecs[3].outlier_fraction = 0.02;
    codecs[4].pre_rope = 1;
    kw_kvstats *s = NULL;
    assert_int_equal(kw_kvstats_create(m, codecs, 5, N_NEW, &s), 0);
    for (int p = 0; p < 2; ++p)
        assert_int_equal(kw_kvstats_add_prompt(s, g_prompts[p], 9, NULL), 0);
    const kw_kvstats_result *plain = kw_kvstats_result_get(s, 0), *rope = kw_kvstats_result_get(s, 1),
                            *i4 = kw_kvstats_result_get(s, 2), *i4o = kw_kvstats_result_get(s, 3),
                            *i4r = kw_kvstats_result_get(s, 4);
    for (int c = 0; c < 5; ++c)
        assert_int_equal(kw_kvstats_result_get(s, c)->status, 0);
    const double k_plain = sqrt(plain->k_err2 / plain->k_norm2), k_rope = sqrt(rope->k_err2 / rope->k_norm2);
    assert_true(k_plain > 0.0 && k_plain < 4e-3);
    assert_true(k_rope > 0.0 && k_rope < 2.0 * k_plain);
    assert_true(rope->v_err2 == plain->v_err2); /* V is not rotated */
    assert_true(rope->blob_bytes == plain->blob_bytes);
    assert_true(i4o->k_err2 + i4o->v_err2 < i4->k_err2 + i4->v_err2);
    assert_true(i4o->blob_bytes > i4->blob_bytes);
    assert_true(i4r->blob_bytes == i4->blob_bytes);
    assert_true(i4r->k_err2 != i4->k_err2 && sqrt(i4r->k_err2 / i4r->k_norm2) < 0.5);
    kw_kvstats_free(s);
    kw_model_free(m);
    kw_backend_destroy(be);
}

/* Hadamard-rotated K and V (FORMAT.md §5.12) on a model with head_dim 32: the same bytes as unrotated, other errors,
 * and rotated back (values left rotated would be off by order 1); a head_dim of 24 (qwen3_gqa3) is refused. */
static void test_kvstats_rotate(void **state) {
    (void)state;
    kw_backend *be = NULL;
    kw_model *m = load_model("qwen3_bf16", &be);
    kw_kvstats_codec codecs[2] = {codec("int4", "token"), codec("int4", "token")};
    codecs[1].rotate = 3, codecs[1].pre_rope = 1;
    kw_kvstats *s = NULL;
    assert_int_equal(kw_kvstats_create(m, codecs, 2, N_NEW, &s), 0);
    for (int p = 0; p < 2; ++p)
        assert_int_equal(kw_kvstats_add_prompt(s, g_prompts[p], 9, NULL), 0);
    const kw_kvstats_result *i4 = kw_kvstats_result_get(s, 0), *i4h = kw_kvstats_result_get(s, 1);
    assert_int_equal(i4h->status, 0);
    assert_true(i4h->blob_bytes == i4->blob_bytes && i4h->v_err2 != i4->v_err2 && i4h->k_err2 != i4->k_err2);
    assert_true(sqrt(i4h->k_err2 / i4h->k_norm2) < 0.5 && sqrt(i4h->v_err2 / i4h->v_norm2) < 0.5);
    kw_kvstats_free(s);
    kw_model_free(m);
    assert_int_equal(kw_model_load(be, KW_TEST_DATA_DIR "/model/hf/qwen3_gqa3", NULL, &m), 0);
    assert_int_equal(kw_kvstats_create(m, codecs + 1, 1, N_NEW, &s), 0);
    assert_int_equal(kw_kvstats_add_prompt(s, g_prompts[0], 9, NULL), KW_E_INVALID_ARG);
    kw_kvstats_free(s);
    kw_model_free(m);
    kw_backend_destroy(be);
}

/* Clipped scales (FORMAT.md §5.13): the same bytes; at 4 bits a lower error on the clipped tensor (the search keeps
 * the absmax scale when nothing is better, so it is never higher) and the same error on the other one. */
static void test_kvstats_clip(void **state) {
    (void)state;
    kw_backend *be = NULL;
    kw_model *m = load_model("qwen3_bf16", &be);
    kw_kvstats_codec codecs[3] = {codec("int4", "token"), codec("int4", "token"), codec("int4", "token")};
    codecs[1].clip = 1, codecs[2].clip = 3;
    kw_kvstats *s = NULL;
    assert_int_equal(kw_kvstats_create(m, codecs, 3, N_NEW, &s), 0);
    for (int p = 0; p < 2; ++p)
        assert_int_equal(kw_kvstats_add_prompt(s, g_prompts[p], 9, NULL), 0);
    const kw_kvstats_result *a = kw_kvstats_result_get(s, 0), *k = kw_kvstats_result_get(s, 1),
                            *kv = kw_kvstats_result_get(s, 2);
    assert_int_equal(k->status, 0);
    assert_int_equal(kv->status, 0);
    assert_true(k->blob_bytes == a->blob_bytes && kv->blob_bytes == a->blob_bytes);
    assert_true(k->k_err2 < a->k_err2 && k->v_err2 == a->v_err2);
    assert_true(kv->k_err2 == k->k_err2 && kv->v_err2 < a->v_err2);
    kw_kvstats_free(s);
    kw_model_free(m);
    kw_backend_destroy(be);
}

/* Per-layer schedules: an int4 row with layer 0 at int8 costs exactly one int8 section in place of one int4 section
 * (every section of a codec has the same size here: same rows, heads, head_dim); a row with only layer 1 quantized
 * (the rest as they are) and the int4 row with layer 1 left as it is split the int4 row's error between them and
 * count the untouched layers at f32 beside one blob of header and trailer. Bad schedules are refused. */
static void test_kvstats_schedule(void **state) {
    (void)state;
    kw_backend *be = NULL;
    kw_model *m = load_model("qwen3_gqa3", &be);
    const int32_t L = kw_model_get_config(m)->n_layers;
    assert_true(L >= 2);
    kw_kvstats_codec codecs[6] = {codec(NULL, NULL),      codec("int4", "token"), codec("int8", "token"),
                                  codec("int4", "token"), codec(NULL, NULL),      codec("int4", "token")};
    const kw_kvstats_layer_codec i8 = {.spec = codecs[2].spec, .spec_v = codecs[2].spec_v},
                                 i4 = {.spec = codecs[1].spec, .spec_v = codecs[1].spec_v}, exact = {.lossless = 1};
    codecs[3].n_overrides = 1, codecs[3].overrides[0] = i8, codecs[3].layer_codec[0] = 1;    /* int4, layer 0 int8 */
    codecs[4].n_overrides = 1, codecs[4].overrides[0] = i4, codecs[4].layer_codec[1] = 1;    /* only layer 1, int4 */
    codecs[5].n_overrides = 1, codecs[5].overrides[0] = exact, codecs[5].layer_codec[1] = 1; /* int4 but layer 1 */
    kw_kvstats *s = NULL;
    assert_int_equal(kw_kvstats_create(m, codecs, 6, N_NEW, &s), 0);
    for (int p = 0; p < 2; ++p)
        assert_int_equal(kw_kvstats_add_prompt(s, g_prompts[p], 9, NULL), 0);
    const kw_kvstats_result *none = kw_kvstats_result_get(s, 0), *a4 = kw_kvstats_result_get(s, 1),
                            *a8 = kw_kvstats_result_get(s, 2), *mix = kw_kvstats_result_get(s, 3),
                            *only1 = kw_kvstats_result_get(s, 4), *but1 = kw_kvstats_result_get(s, 5);
    for (int c = 0; c < 6; ++c)
        assert_int_equal(kw_kvstats_result_get(s, c)->status, 0);
    assert_true((int64_t)L * mix->blob_bytes == (int64_t)(L - 1) * a4->blob_bytes + a8->blob_bytes);
    const int64_t blob = KW_WIRE_HEADER_BYTES + KW_WIRE_TRAILER_BYTES, /* section checksums are in the sections */
        f32_layer = none->blob_bytes / L;
    assert_int_equal((a4->blob_bytes - 2 * blob) % L, 0);
    const int64_t sec4 = (a4->blob_bytes - 2 * blob) / L; /* one int4 section per prompt, both prompts */
    assert_int_equal(only1->blob_bytes, 2 * blob + sec4 + (L - 1) * f32_layer);
    assert_int_equal(but1->blob_bytes, 2 * blob + (L - 1) * sec4 + f32_layer);
    assert_true(mix->k_err2 < a4->k_err2 && mix->k_err2 > a8->k_err2);
    assert_true(only1->k_err2 > 0.0 && but1->k_err2 > 0.0);
    assert_float_equal(only1->k_err2 + but1->k_err2, a4->k_err2, 1e-9 * a4->k_err2);
    assert_float_equal(only1->v_err2 + but1->v_err2, a4->v_err2, 1e-9 * a4->v_err2);
    assert_true(only1->k_norm2 == none->k_norm2);
    kw_kvstats_free(s);

    /* refused: a layer the model lacks, an override that does not exist, too many overrides */
    kw_kvstats_codec bad = codec("int4", "token");
    bad.n_overrides = 1, bad.overrides[0] = i8, bad.layer_codec[L] = 1;
    assert_int_equal(kw_kvstats_create(m, &bad, 1, N_NEW, &s), KW_E_INVALID_ARG);
    assert_null(s);
    bad.layer_codec[L] = 0, bad.layer_codec[0] = 2;
    assert_int_equal(kw_kvstats_create(m, &bad, 1, N_NEW, &s), KW_E_INVALID_ARG);
    bad.layer_codec[0] = 1, bad.n_overrides = KW_KVSTATS_MAX_OVERRIDES + 1;
    assert_int_equal(kw_kvstats_create(m, &bad, 1, N_NEW, &s), KW_E_INVALID_ARG);
    bad.n_overrides = 1;
    assert_int_equal(kw_kvstats_create(m, &bad, 1, N_NEW, &s), 0);
    kw_kvstats_free(s);
    kw_model_free(m);
    kw_backend_destroy(be);
}

/* Row c of codecs with one token rule appended: positions first..last (from_end: the last `first` rows) at spec. */
static void add_rule(kw_kvstats_codec *c, uint32_t first, uint32_t last, int from_end, const kw_wire_codec_spec *spec) {
    c->token_rules[c->n_token_rules++] =
        (kw_kvstats_token_rule){.first = first, .last = last, .from_end = from_end, .spec = *spec, .spec_v = *spec};
}

/* Per-token schedules on prompts of 8 rows: each rule's rows are a token group of their own in every section, so a row
 * with position 0 at int8 costs the int4 row plus, per section, one group descriptor (12 bytes) and one row's
 * difference between int8 and int4 (measured from the two plain rows); groups that give the same rows the same codecs
 * read the same bytes and errors whatever way the rules name them (positions, Tlast, the first rule winning); a rule
 * over every row is the int8 row. A prefix not sent (omit) is exact and costs fewer bytes; every row omitted is the
 * reference at 0 bytes; with pre-RoPE keys the rows after it are rotated back by their own positions. The per-position
 * norms against the prompt rows read here. Bad rules are refused. */
static void test_kvstats_tokens(void **state) {
    (void)state;
    kw_backend *be = NULL;
    kw_model *m = load_model("qwen3_gqa3", &be);
    const kw_model_config *cfg = kw_model_get_config(m);
    const int32_t L = cfg->n_layers, H = cfg->n_kv_heads, D = cfg->head_dim;
    enum { A4, A8, SINK8, SINK8_AS_BASE, REST8, REST8_AS_BASE, FIRST_WINS, ALL8, OMIT0, OMIT_ALL, OMIT_ROPE, N_ROWS };
    kw_kvstats_codec c[N_ROWS];
    for (int i = 0; i < N_ROWS; ++i)
        c[i] = codec("int4", "token");
    const kw_wire_codec_spec i4 = c[A4].spec, i8 = codec("int8", "token").spec;
    c[A8].spec = c[A8].spec_v = i8;
    add_rule(&c[SINK8], 0, 0, 0, &i8); /* int4, position 0 int8 */
    c[SINK8_AS_BASE].spec = c[SINK8_AS_BASE].spec_v = i8;
    add_rule(&c[SINK8_AS_BASE], 1, 7, 0, &i4); /* int8, positions 1-7 int4: the same groups */
    add_rule(&c[REST8], 7, 0, 1, &i8);         /* int4, the last 7 rows int8 */
    c[REST8_AS_BASE].spec = c[REST8_AS_BASE].spec_v = i8;
    add_rule(&c[REST8_AS_BASE], 0, 0, 0, &i4); /* int8, position 0 int4: the same groups */
    c[FIRST_WINS].spec = c[FIRST_WINS].spec_v = i8;
    add_rule(&c[FIRST_WINS], 0, 0, 0, &i4);
    add_rule(&c[FIRST_WINS], 8, 0, 1, &i8); /* covers position 0 too, after the first rule */
    add_rule(&c[ALL8], 0, 1000, 0, &i8);
    add_rule(&c[OMIT0], 1, 1, 0, &i8); /* position 1 int8, position 0 not sent (the omitted prefix wins) */
    add_rule(&c[OMIT0], 0, 1, 0, &i8);
    c[OMIT0].token_rules[1].omit = 1, c[OMIT0].token_rules[1].last = 0;
    add_rule(&c[OMIT_ALL], 0, 100, 0, &i8);
    c[OMIT_ALL].token_rules[0].omit = 1;
    c[OMIT_ROPE] =
        codec("bf16", "token"); /* bf16 keys before RoPE, rows 0-1 omitted, 2.. re-rotated by their own positions */
    c[OMIT_ROPE].pre_rope = 1;
    add_rule(&c[OMIT_ROPE], 0, 1, 0, &i8);
    c[OMIT_ROPE].token_rules[0].omit = 1;
    kw_kvstats *s = NULL;
    assert_int_equal(kw_kvstats_create(m, c, N_ROWS, N_NEW, &s), 0);
    float **k[2], **v[2];
    double norm0[2] = {0}, rest[2] = {0}; /* K, V: sums of head-vector norms at position 0 and at 4.. */
    for (int p = 0; p < 2; ++p) {
        assert_int_equal(kw_kvstats_add_prompt(s, g_prompts[p], 9, NULL), 0);
        k[p] = calloc((size_t)L, sizeof *k[p]);
        v[p] = calloc((size_t)L, sizeof *v[p]);
        assert_true(k[p] && v[p]);
        read_prompt_rows(m, g_prompts[p], 9, k[p], v[p]);
        for (int kind = 0; kind < 2; ++kind)
            for (int64_t t = 0; t < 8; ++t)
                for (int32_t h = 0; h < H; ++h) {
                    double sq = 0.0;
                    for (int32_t d = 0; d < D; ++d) {
                        const double x = (kind ? v : k)[p][L - 1][(t * H + h) * D + d];
                        sq += x * x;
                    }
                    if (t == 0) norm0[kind] += sqrt(sq);
                    if (t >= KW_KVSTATS_POSITIONS) rest[kind] += sqrt(sq);
                }
    }
    const kw_kvstats_result *r[N_ROWS];
    for (int i = 0; i < N_ROWS; ++i) {
        r[i] = kw_kvstats_result_get(s, i);
        assert_int_equal(r[i]->status, 0);
    }
    const int64_t sections = 2 * (int64_t)L, rows = 8 * sections; /* two prompts of 8 rows */
    assert_int_equal((r[A8]->blob_bytes - r[A4]->blob_bytes) % rows, 0);
    const int64_t row_diff = (r[A8]->blob_bytes - r[A4]->blob_bytes) / rows; /* one row: int8 minus int4 */
    assert_true(row_diff > 0);
    assert_int_equal(r[SINK8]->blob_bytes, r[A4]->blob_bytes + sections * (12 + row_diff));
    assert_int_equal(r[REST8]->blob_bytes, r[A4]->blob_bytes + sections * (12 + 7 * row_diff));
    assert_int_equal(r[ALL8]->blob_bytes, r[A8]->blob_bytes);
    assert_true(r[ALL8]->k_err2 == r[A8]->k_err2 && r[ALL8]->v_err2 == r[A8]->v_err2);
    const int same[][2] = {{SINK8, SINK8_AS_BASE}, {REST8, REST8_AS_BASE}, {REST8_AS_BASE, FIRST_WINS}};
    for (size_t i = 0; i < sizeof same / sizeof same[0]; ++i) {
        const kw_kvstats_result *x = r[same[i][0]], *y = r[same[i][1]];
        assert_int_equal(x->blob_bytes, y->blob_bytes);
        assert_true(x->k_err2 == y->k_err2 && x->v_err2 == y->v_err2 && x->kl_sum == y->kl_sum);
    }
    for (int i = SINK8; i <= REST8; i += REST8 - SINK8)
        assert_true(r[i]->k_err2 < r[A4]->k_err2 && r[i]->k_err2 > r[A8]->k_err2 && r[i]->v_err2 < r[A4]->v_err2);
    assert_true(r[SINK8]->k_err2 > r[REST8]->k_err2); /* one int8 row against seven */
    /* position 0 not sent: exact, fewer bytes than int4; every row omitted: the reference itself at 0 bytes */
    assert_true(r[OMIT0]->k_err2 > 0.0 && r[OMIT0]->k_err2 < r[A4]->k_err2 && r[OMIT0]->v_err2 < r[A4]->v_err2);
    assert_true(r[OMIT0]->blob_bytes < r[A4]->blob_bytes);
    assert_true(r[OMIT_ALL]->k_err2 == 0.0 && r[OMIT_ALL]->v_err2 == 0.0 && r[OMIT_ALL]->kl_sum == 0.0);
    assert_int_equal(r[OMIT_ALL]->blob_bytes, 0);
    assert_int_equal(r[OMIT_ALL]->tf_agree, r[OMIT_ALL]->tf_steps);
    assert_true(r[OMIT_ROPE]->k_err2 > 0.0 && sqrt(r[OMIT_ROPE]->k_err2 / r[OMIT_ROPE]->k_norm2) < 4e-3);
    /* the per-position norms of the last layer */
    for (int kind = 0; kind < 2; ++kind) {
        double norm = 0.0;
        int64_t count = 0;
        assert_int_equal(kw_kvstats_position_get(s, kind, L - 1, 0, &norm, &count), 0);
        assert_int_equal(count, 2 * H);
        assert_float_equal(norm, norm0[kind] / (2.0 * H), 1e-9 * norm);
        assert_int_equal(kw_kvstats_position_get(s, kind, L - 1, KW_KVSTATS_POSITIONS, &norm, &count), 0);
        assert_int_equal(count, 2 * H * (8 - KW_KVSTATS_POSITIONS));
        assert_float_equal(norm, rest[kind] / (double)count, 1e-9 * norm);
    }
    double norm = 0.0;
    int64_t count = 0;
    assert_int_equal(kw_kvstats_position_get(s, 0, L, 0, &norm, &count), KW_E_INVALID_ARG);
    assert_int_equal(kw_kvstats_position_get(s, 0, 0, KW_KVSTATS_POSITIONS + 1, &norm, &count), KW_E_INVALID_ARG);
    kw_kvstats_free(s);
    for (int p = 0; p < 2; ++p) {
        for (int32_t l = 0; l < L; ++l)
            free(k[p][l]), free(v[p][l]);
        free(k[p]), free(v[p]);
    }

    /* refused: a range backwards, Tlast0, too many rules, rules on a row that quantizes nothing */
    kw_kvstats_codec bad = codec("int4", "token");
    add_rule(&bad, 3, 2, 0, &i8);
    assert_int_equal(kw_kvstats_create(m, &bad, 1, N_NEW, &s), KW_E_INVALID_ARG);
    assert_null(s);
    bad.token_rules[0] = (kw_kvstats_token_rule){.first = 0, .from_end = 1, .spec = i8, .spec_v = i8};
    assert_int_equal(kw_kvstats_create(m, &bad, 1, N_NEW, &s), KW_E_INVALID_ARG);
    bad.token_rules[0].first = 1;
    bad.n_token_rules = KW_KVSTATS_MAX_TOKEN_RULES + 1;
    assert_int_equal(kw_kvstats_create(m, &bad, 1, N_NEW, &s), KW_E_INVALID_ARG);
    bad.n_token_rules = 1;
    bad.lossless = 1;
    assert_int_equal(kw_kvstats_create(m, &bad, 1, N_NEW, &s), KW_E_INVALID_ARG);
    bad.lossless = 0;
    bad.token_rules[0].omit = 1; /* omitting the last row: not a prefix */
    assert_int_equal(kw_kvstats_create(m, &bad, 1, N_NEW, &s), KW_E_INVALID_ARG);
    bad.token_rules[0] = (kw_kvstats_token_rule){.first = 1, .last = 2, .omit = 1};
    assert_int_equal(kw_kvstats_create(m, &bad, 1, N_NEW, &s), KW_E_INVALID_ARG);
    bad.token_rules[0].first = 0;
    assert_int_equal(kw_kvstats_create(m, &bad, 1, N_NEW, &s), 0);
    kw_kvstats_free(s);
    bad.token_rules[0] = (kw_kvstats_token_rule){.first = 1, .from_end = 1, .spec = i8, .spec_v = i8};
    assert_int_equal(kw_kvstats_create(m, &bad, 1, N_NEW, &s), 0);
    kw_kvstats_free(s);
    kw_model_free(m);
    kw_backend_destroy(be);
}

/* The codec's own round trip of one layer's rows (T, H, D) of K and V in a blob of one section, written to kq, vq. */
static void wire_roundtrip(const kw_model_config *cfg, int32_t l, const kw_wire_codec_spec *spec, const float *k,
                           const float *v, int64_t T, float *kq, float *vq) {
    const size_t H = (size_t)cfg->n_kv_heads, D = (size_t)cfg->head_dim;
    const kw_wire_header hdr = {.version = KW_WIRE_VERSION,
                                .n_layers = (uint16_t)cfg->n_layers,
                                .n_sections = 1,
                                .n_kv_heads = (uint16_t)H,
                                .head_dim = (uint16_t)D,
                                .n_positions = (uint32_t)T,
                                .src_dtype = KW_WIRE_DTYPE_F32};
    const kw_wire_policy pol = {.k = *spec, .v = *spec};
    size_t cap = KW_WIRE_HEADER_BYTES + KW_WIRE_TRAILER_BYTES + KW_WIRE_CHECKSUM_BYTES, n = 0, used = 0;
    assert_int_equal(kw_wire_section_bound(&hdr, &pol, (uint32_t)T, &n), 0);
    cap += n;
    uint8_t *blob = malloc(cap);
    assert_non_null(blob);
    kw_wire_encoder *enc = NULL;
    assert_int_equal(kw_wire_encoder_create(&hdr, NULL, &enc), 0);
    assert_int_equal(kw_wire_encoder_write_header(enc, blob, cap, &n), 0);
    used += n;
    const kw_wire_layer_in in = {.layer = (uint32_t)l,
                                 .n_tokens = (uint32_t)T,
                                 .k = {.data = k, .head_stride = D, .token_stride = H * D},
                                 .v = {.data = v, .head_stride = D, .token_stride = H * D}};
    assert_int_equal(kw_wire_encoder_write_section(enc, &in, &pol, blob + used, cap - used, &n), 0);
    used += n;
    assert_int_equal(kw_wire_encoder_write_trailer(enc, blob + used, cap - used, &n), 0);
    used += n;
    kw_wire_encoder_destroy(enc);
    kw_wire_reader *r = NULL;
    const kw_wire_header *got = NULL;
    const kw_wire_section *sec = NULL;
    assert_int_equal(kw_wire_reader_open(blob, used, NULL, &r, &got), 0);
    assert_int_equal(kw_wire_reader_next(r, &sec), 1);
    const kw_wire_tensor_out ko = {.data = kq, .dtype = KW_WIRE_DTYPE_F32, .head_stride = D, .token_stride = H * D};
    kw_wire_tensor_out vo = ko;
    vo.data = vq;
    assert_int_equal(kw_wire_section_dequantize(sec, &ko, &vo), 0);
    assert_int_equal(kw_wire_reader_next(r, &sec), 0);
    kw_wire_reader_close(r);
    free(blob);
}

/* Centred keys (issue 15): the K error of int4 per token with @center (mu of the pre-RoPE keys), @centerpost and
 * @center8 (mu as int8 codes times an f16 scale) equals, to the last bit, that of R(p) mu + the codec's own round trip
 * of the residual computed here (mu: the mean in double rounded to f16, rebuilt at each position); V's error is the
 * plain row's, the bytes the plain row's plus mu's (H x D f16, or H x (D + 2) bytes) per layer and prompt; the plain
 * row is bit-identical beside centred rows and the query-gain sums. */
static void test_kvstats_center(void **state) {
    (void)state;
    kw_backend *be = NULL;
    kw_model *m = load_model("qwen3_bf16", &be);
    const kw_model_config *cfg = kw_model_get_config(m);
    const int32_t L = cfg->n_layers, H = cfg->n_kv_heads, D = cfg->head_dim;
    kw_kvstats_codec codecs[4] = {codec("int4", "token"), codec("int4", "token"), codec("int4", "token"),
                                  codec("int4", "token")};
    codecs[1].center = KW_KVSTATS_CENTER_PRE;
    codecs[2].center = KW_KVSTATS_CENTER_POST;
    codecs[3].center = KW_KVSTATS_CENTER_PRE8;
    kw_kvstats *s = NULL, *plain = NULL;
    assert_int_equal(kw_kvstats_create(m, codecs, 4, N_NEW, &s), 0);
    assert_int_equal(kw_kvstats_qk_gain_enable(s), 0);
    assert_int_equal(kw_kvstats_create(m, codecs, 1, N_NEW, &plain), 0);
    double k_err2[3] = {0, 0, 0}, k_norm2 = 0; /* PRE, POST, PRE8 */
    for (int p = 0; p < 2; ++p) {
        assert_int_equal(kw_kvstats_add_prompt(s, g_prompts[p], 9, NULL), 0);
        assert_int_equal(kw_kvstats_add_prompt(plain, g_prompts[p], 9, NULL), 0);
        float *k[64], *v[64];
        assert_true(L <= 64);
        read_prompt_rows(m, g_prompts[p], 9, k, v);
        const int64_t T = 8;
        const size_t hd = (size_t)H * (size_t)D, rows = (size_t)T * hd;
        float *tmp = malloc(rows * sizeof *tmp), *off = malloc(rows * sizeof *off), *res = malloc(rows * sizeof *res),
              *kq = malloc(rows * sizeof *kq), *vq = malloc(rows * sizeof *vq), *mu = malloc(hd * sizeof *mu);
        assert_true(tmp && off && res && kq && vq && mu);
        int64_t pos[8];
        for (int64_t t = 0; t < T; ++t)
            pos[t] = t;
        for (int mode = 0; mode < 3; ++mode)
            for (int32_t l = 0; l < L; ++l) {
                memcpy(tmp, k[l], rows * sizeof *tmp);
                if (mode != 1) assert_int_equal(kw_config_rope_rows(cfg, l, pos, T, 1, tmp), 0);
                for (size_t i = 0; i < hd; ++i) {
                    double sum = 0.0;
                    for (int64_t t = 0; t < T; ++t)
                        sum += (double)tmp[(size_t)t * hd + i];
                    mu[i] = kw_round_f16((float)(sum / (double)T));
                }
                for (int32_t h = 0; h < H && mode == 2; ++h) { /* int8 codes, f16 scale absmax / 127 */
                    float amax = 0.0f, *mh = mu + (size_t)h * (size_t)D;
                    for (int32_t d = 0; d < D; ++d)
                        amax = fmaxf(amax, fabsf(mh[d]));
                    const float sc = kw_round_f16(amax / 127.0f);
                    for (int32_t d = 0; d < D; ++d)
                        mh[d] = sc > 0.0f ? fminf(fmaxf(rintf(mh[d] / sc), -127.0f), 127.0f) * sc : 0.0f;
                }
                for (int64_t t = 0; t < T; ++t)
                    memcpy(off + (size_t)t * hd, mu, hd * sizeof *off);
                if (mode != 1) assert_int_equal(kw_config_rope_rows(cfg, l, pos, T, 0, off), 0);
                for (size_t i = 0; i < rows; ++i)
                    res[i] = k[l][i] - off[i];
                wire_roundtrip(cfg, l, &codecs[0].spec, res, v[l], T, kq, vq);
                for (size_t i = 0; i < rows; ++i) {
                    const double d = (double)(kq[i] + off[i]) - (double)k[l][i];
                    k_err2[mode] += d * d;
                    if (mode == 0) k_norm2 += (double)k[l][i] * (double)k[l][i];
                }
            }
        for (int32_t l = 0; l < L; ++l) {
            free(k[l]);
            free(v[l]);
        }
        free(tmp), free(off), free(res), free(kq), free(vq), free(mu);
    }
    const kw_kvstats_result *r0 = kw_kvstats_result_get(s, 0), *rp = kw_kvstats_result_get(plain, 0);
    assert_memory_equal(r0, rp, sizeof *r0);
    for (int mode = 0; mode < 3; ++mode) {
        const kw_kvstats_result *rc = kw_kvstats_result_get(s, 1 + mode);
        assert_int_equal(rc->status, 0);
        assert_true(rc->k_err2 == k_err2[mode] && rc->k_norm2 == k_norm2);
        assert_true(rc->k_err2 != r0->k_err2 && rc->v_err2 == r0->v_err2);
        assert_true(rc->blob_bytes == r0->blob_bytes + 2 * (int64_t)L * H * (mode == 2 ? D + 2 : 2 * D));
    }
    /* the gain: at least 1 (Cauchy-Schwarz), and the pair-symmetric scaling, a constrained one, never above the
     * per-channel one */
    for (int32_t l = 0; l < L; ++l)
        for (int32_t h = 0; h < H; ++h)
            for (int c = 0; c < 2; ++c) {
                double g_ch = 0, g_pair = 0;
                assert_int_equal(kw_kvstats_qk_gain_get(s, l, h, c, 0, &g_ch), 0);
                assert_int_equal(kw_kvstats_qk_gain_get(s, l, h, c, 1, &g_pair), 0);
                assert_true(g_pair >= 1.0 - 1e-12 && g_ch >= g_pair - 1e-12 && g_ch < 100.0);
            }
    double g = 0;
    assert_int_equal(kw_kvstats_qk_gain_get(plain, 0, 0, 0, 0, &g), KW_E_INVALID_ARG); /* not enabled */
    kw_kvstats_free(plain);
    kw_kvstats_free(s);
    codecs[1].pre_rope = 1; /* centring pre-RoPE keys: refused */
    assert_int_equal(kw_kvstats_create(m, codecs, 2, N_NEW, &s), KW_E_INVALID_ARG);
    codecs[1].pre_rope = 0, codecs[1].lossless = 1;
    assert_int_equal(kw_kvstats_create(m, codecs, 2, N_NEW, &s), KW_E_INVALID_ARG);
    kw_model_free(m);
    kw_backend_destroy(be);
}

/* Query-weighted keys (@qscale): a power of two per channel commutes with bf16's rounding, so bf16 keys scaled and
 * scaled back carry bf16's own error to the bit (an exponent not undone, or undone with the wrong sign or channel,
 * would not), plus one byte per (layer, KV head, channel) and prompt; int4 per token sees other keys. */
static void test_kvstats_qscale(void **state) {
    (void)state;
    kw_backend *be = NULL;
    kw_model *m = load_model("qwen3_bf16", &be);
    const kw_model_config *cfg = kw_model_get_config(m);
    kw_kvstats_codec codecs[4] = {codec("bf16", "token"), codec("bf16", "token"), codec("int4", "token"),
                                  codec("int4", "token")};
    codecs[1].qscale = 1, codecs[3].qscale = 1;
    kw_kvstats *s = NULL;
    assert_int_equal(kw_kvstats_create(m, codecs, 4, N_NEW, &s), 0);
    for (int p = 0; p < 2; ++p)
        assert_int_equal(kw_kvstats_add_prompt(s, g_prompts[p], 9, NULL), 0);
    const kw_kvstats_result *b = kw_kvstats_result_get(s, 0), *bq = kw_kvstats_result_get(s, 1),
                            *i4 = kw_kvstats_result_get(s, 2), *i4q = kw_kvstats_result_get(s, 3);
    const int64_t extra = 2 * (int64_t)cfg->n_layers * cfg->n_kv_heads * cfg->head_dim;
    assert_true(bq->status == 0 && bq->k_err2 == b->k_err2 && bq->v_err2 == b->v_err2);
    assert_true(bq->blob_bytes == b->blob_bytes + extra && i4q->blob_bytes == i4->blob_bytes + extra);
    assert_true(i4q->k_err2 != i4->k_err2 && i4q->v_err2 == i4->v_err2 && sqrt(i4q->k_err2 / i4q->k_norm2) < 0.5);
    kw_kvstats_free(s);
    codecs[3].pre_rope = 1;
    assert_int_equal(kw_kvstats_create(m, codecs, 4, N_NEW, &s), KW_E_INVALID_ARG);
    kw_model_free(m);
    kw_backend_destroy(be);
}

/* The prefill's queries of every layer, (T, Hq, D) each: on_queries' target. */
typedef struct test_queries {
    float *q[64];
    int64_t T;
    size_t row;
} test_queries;

static int test_on_queries(void *user, int32_t layer, int64_t row0, int64_t n, const float *q) {
    test_queries *tq = user;
    memcpy(tq->q[layer] + (size_t)row0 * tq->row, q, (size_t)n * tq->row * sizeof *q);
    return 0;
}

/* --qk-gain's G per (layer, KV head), keys raw and centred, per channel and per RoPE pair, against sums recomputed here
 * from the prefill's queries (the model's hook) and keys over both prompts. */
static void test_kvstats_qk_gain(void **state) {
    (void)state;
    kw_backend *be = NULL;
    kw_model *m = load_model("qwen3_gqa3", &be);
    const kw_model_config *cfg = kw_model_get_config(m);
    const int32_t L = cfg->n_layers, H = cfg->n_kv_heads, D = cfg->head_dim, Hq = cfg->n_heads;
    assert_true(L <= 64 && Hq > H);
    kw_kvstats_codec none = codec(NULL, NULL);
    kw_kvstats *s = NULL;
    assert_int_equal(kw_kvstats_create(m, &none, 1, N_NEW, &s), 0);
    assert_int_equal(kw_kvstats_qk_gain_enable(s), 0);
    const size_t n_ch = (size_t)L * (size_t)H * (size_t)D;
    double *a = calloc(n_ch, sizeof *a), *b = calloc(n_ch, sizeof *b), *bc = calloc(n_ch, sizeof *bc);
    assert_true(a && b && bc);
    for (int p = 0; p < 2; ++p) {
        assert_int_equal(kw_kvstats_add_prompt(s, g_prompts[p], 9, NULL), 0);
        const int64_t T = 8;
        test_queries tq = {.T = T, .row = (size_t)Hq * (size_t)D};
        for (int32_t l = 0; l < L; ++l) {
            tq.q[l] = malloc((size_t)T * tq.row * sizeof(float));
            assert_non_null(tq.q[l]);
        }
        kw_kvcache *cache = NULL;
        assert_int_equal(kw_model_create_cache(m, 9, KW_DTYPE_F32, &cache), 0);
        const kw_forward_args fa = {
            .ids = g_prompts[p], .n = T, .mode = KW_LOGITS_NONE, .on_queries = test_on_queries, .user = &tq};
        assert_int_equal(kw_model_forward(m, cache, &fa), 0);
        const size_t hd = (size_t)H * (size_t)D;
        float *k = malloc((size_t)T * hd * sizeof *k), *v = malloc((size_t)T * hd * sizeof *v),
              *pre = malloc((size_t)T * hd * sizeof *pre);
        assert_true(k && v && pre);
        int64_t pos[8];
        for (int64_t t = 0; t < T; ++t)
            pos[t] = t;
        for (int32_t l = 0; l < L; ++l) {
            assert_int_equal(kw_kvcache_read_rows(cache, l, 0, T, k, v), 0);
            memcpy(pre, k, (size_t)T * hd * sizeof *pre);
            assert_int_equal(kw_config_rope_rows(cfg, l, pos, T, 1, pre), 0);
            for (size_t i = 0; i < hd; ++i) { /* pre-RoPE mean (f16), its rotation subtracted row by row */
                double sum = 0.0;
                for (int64_t t = 0; t < T; ++t)
                    sum += pre[(size_t)t * hd + i];
                const float mu = kw_round_f16((float)(sum / (double)T));
                for (int64_t t = 0; t < T; ++t)
                    pre[(size_t)t * hd + i] = mu;
            }
            assert_int_equal(kw_config_rope_rows(cfg, l, pos, T, 0, pre), 0);
            for (int64_t t = 0; t < T; ++t)
                for (size_t i = 0; i < hd; ++i) {
                    const double x = k[(size_t)t * hd + i], c = x - (double)pre[(size_t)t * hd + i];
                    b[(size_t)l * hd + i] += x * x;
                    bc[(size_t)l * hd + i] += c * c;
                }
            for (int64_t t = 0; t < T; ++t)
                for (int32_t h = 0; h < Hq; ++h)
                    for (int32_t d = 0; d < D; ++d) {
                        const double x = tq.q[l][(size_t)t * tq.row + (size_t)h * D + d];
                        a[(size_t)l * hd + (size_t)(h / (Hq / H)) * D + d] += x * x;
                    }
        }
        free(k), free(v), free(pre);
        kw_kvcache_free(cache);
        for (int32_t l = 0; l < L; ++l)
            free(tq.q[l]);
    }
    for (int32_t l = 0; l < L; ++l) {
        const int32_t half = kw_config_rope_half(cfg, l);
        for (int32_t h = 0; h < H; ++h)
            for (int c = 0; c < 4; ++c) {
                const double *A = a + ((size_t)l * H + h) * D, *B = (c & 1 ? bc : b) + ((size_t)l * H + h) * D;
                const int pairs = c >> 1;
                double sa = 0, sb = 0, sab = 0, g = 0;
                for (int32_t d = 0; d < D; ++d) {
                    double x = A[d], y = B[d];
                    if (pairs && d >= half && d < 2 * half) continue;
                    if (pairs && d < half) x += A[d + half], y += B[d + half];
                    sa += x, sb += y, sab += sqrt(x * y);
                }
                assert_int_equal(kw_kvstats_qk_gain_get(s, l, h, c & 1, pairs, &g), 0);
                const double want = sa * sb / (sab * sab);
                assert_true(fabs(g - want) <= 1e-9 * want && g >= 1.0);
            }
    }
    free(a), free(b), free(bc);
    kw_kvstats_free(s);
    kw_model_free(m);
    kw_backend_destroy(be);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kvstats_tiny),     cmocka_unit_test(test_kvstats_v11_options),
        cmocka_unit_test(test_kvstats_rotate),   cmocka_unit_test(test_kvstats_clip),
        cmocka_unit_test(test_kvstats_schedule), cmocka_unit_test(test_kvstats_tokens),
        cmocka_unit_test(test_kvstats_center),   cmocka_unit_test(test_kvstats_qscale),
        cmocka_unit_test(test_kvstats_qk_gain),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
