/* test_kvstats_attn.c: kvstats' token rules that pick rows by the attention they received (issue 15, Tattn, Tleast,
 * Trand in tools/kw_kvstats.c) and the model hook that hands them the prefill's queries (kw_forward_args.on_queries):
 *  - kw_kvstats_attention_received on queries and keys made by hand (softmax weights known in closed form), with GQA,
 *    a window and the last queries only;
 *  - kw_kvstats_pick_rows on the column sums of an attention matrix made by hand: the exact rows, ties to the lower
 *    position, the count's rounding, rows a positional rule takes left out, bad fractions refused;
 *  - the hook changes nothing: the cache and logits of a forward with it are bit-identical to one without, its
 *    queries do not depend on the chunking, and a failing callback stops the forward with its status;
 *  - in kvstats on the tiny random Qwen3: rows without a picking rule give bit-identical results whether or not a
 *    picking row (and so the hook) runs beside them; a rule picking every row is the high codec's row, byte for
 *    byte; a partial one lands between the two codecs, and its reconstruction error is the sum, row by row, of the
 *    two codecs' errors at the rows the ranking (recomputed here from the hook's queries) chooses in each layer, the
 *    rows of a positional rule beside it left out of the ranking. (The parser's refusals: cli_kvstats_attn.sh.) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_status.h"
#include "kernels/kw_backend.h"
#include "model/kw_kvcache.h"
#include "model/kw_model.h"
#include "tools/kw_kvstats.h"
#include "wire/kw_wire.h"

enum { N_NEW = 6, N_IDS = 11, T_ROWS = N_IDS - 1 };

static const int32_t g_ids[N_IDS] = {5, 17, 101, 3, 77, 250, 9, 31, 400, 2, 64};

/* q and k with D = 1, scale 1: query 1 sees k_0 = ln 3 and k_1 = 0 with q_1 = 1, so it puts 3/4 on row 0 and 1/4 on
 * row 1; query 0 sees row 0 only (1); query 2 (q_2 = 0) spreads 1/3 on each. Two query heads on one KV head: twice. */
static void test_attention_by_hand(void **state) {
    (void)state;
    const float q1[3 * 2] = {0.5f, 0.5f, 1.0f, 1.0f, 0.0f, 0.0f}; /* (T 3, Hq 2, D 1) */
    const float k1[3] = {(float)log(3.0), 0.0f, 7.0f};            /* (T 3, Hkv 1, D 1) */
    double mass[3];
    assert_int_equal(kw_kvstats_attention_received(q1, k1, 3, 2, 1, 1, 1.0f, 0, 0, mass), 0);
    const double want[3] = {2.0 * (1.0 + 0.75 + 1.0 / 3.0), 2.0 * (0.25 + 1.0 / 3.0), 2.0 / 3.0};
    for (int t = 0; t < 3; ++t)
        assert_float_equal(mass[t], want[t], 1e-6);
    /* the last query only: rows 0-2 get 1/3 each per head */
    assert_int_equal(kw_kvstats_attention_received(q1, k1, 3, 2, 1, 1, 1.0f, 0, 2, mass), 0);
    for (int t = 0; t < 3; ++t)
        assert_float_equal(mass[t], 2.0 / 3.0, 1e-6);
    /* a window of 1: every query sees itself only */
    assert_int_equal(kw_kvstats_attention_received(q1, k1, 3, 2, 1, 1, 1.0f, 1, 0, mass), 0);
    for (int t = 0; t < 3; ++t)
        assert_float_equal(mass[t], 2.0, 0.0);
    /* GQA: query heads 0, 1 read KV head 0, heads 2, 3 KV head 1. Query 1, from it only: heads 0, 1 have q = 1 and
     * KV head 0 k_0 = ln 3, k_1 = 0 (weights 3/4, 1/4); heads 2, 3 have q = 0 (1/2, 1/2 whatever KV head 1 holds). */
    const float q2[2 * 4] = {0, 0, 0, 0, 1, 1, 0, 0};
    const float k2[2 * 2] = {(float)log(3.0), 0.0f, 0.0f, (float)log(7.0)}; /* (T 2, Hkv 2, D 1) */
    assert_int_equal(kw_kvstats_attention_received(q2, k2, 2, 4, 2, 1, 1.0f, 0, 1, mass), 0);
    assert_float_equal(mass[0], 2.0 * 0.75 + 2.0 * 0.5, 1e-6);
    assert_float_equal(mass[1], 2.0 * 0.25 + 2.0 * 0.5, 1e-6);
    assert_int_equal(kw_kvstats_attention_received(q2, k2, 2, 3, 2, 1, 1.0f, 0, 0, mass), KW_E_INVALID_ARG);
}

/* An attention matrix by hand (T 6, each row a query's weights over rows 0..i), its column sums the scores. */
static void test_pick_by_hand(void **state) {
    (void)state;
    enum { T = 6 };
    static const double p[T][T] = {
        {1.0},
        {0.5, 0.5},
        {0.6, 0.1, 0.3},
        {0.4, 0.1, 0.2, 0.3},
        {0.2, 0.1, 0.2, 0.1, 0.4},
        {0.3, 0.1, 0.2, 0.1, 0.2, 0.1},
    };
    double score[T] = {0};
    for (int i = 0; i < T; ++i)
        for (int j = 0; j <= i; ++j)
            score[j] += p[i][j];                        /* 3.0, 0.9, 0.9, 0.5, 0.6, 0.1 */
    static const uint8_t taken[T] = {0, 1, 0, 0, 1, 0}; /* rows 1 and 4: a positional rule's */
    static const struct {
        int64_t t0;
        int taken;
        double fraction;
        int64_t n;
        uint8_t want[T];
    } cases[] = {
        {0, 0, 0.5, 3, {1, 1, 1, 0, 0, 0}},  /* rows 1 and 2 tie at 0.9: both in */
        {0, 0, 0.25, 2, {1, 1, 0, 0, 0, 0}}, /* round(1.5) = 2: row 1, the lower of the tie */
        {1, 0, 0.25, 1, {0, 1, 0, 0, 0, 0}}, /* row 0 not sent: 5 rows, round(1.25) = 1 */
        {1, 1, 0.4, 2, {0, 0, 1, 1, 0, 0}},  /* of rows 2, 3, 5, round(5 x 0.4) = 2: 2 (0.9) and 3 (0.5) */
        {0, 0, 0.01, 1, {1, 0, 0, 0, 0, 0}}, /* at least one row */
        {1, 1, 1.0, 3, {0, 0, 1, 1, 0, 1}},  /* at most the rows left */
    };
    uint8_t chosen[T];
    int64_t n = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
        assert_int_equal(
            kw_kvstats_pick_rows(score, cases[i].t0, T, cases[i].taken ? taken : NULL, cases[i].fraction, chosen, &n),
            0);
        assert_int_equal(n, cases[i].n);
        assert_memory_equal(chosen, cases[i].want, T);
    }
    /* the least attended (scores negated): 2 rows, 5 (0.1) and 3 (0.5) */
    double neg[T];
    for (int t = 0; t < T; ++t)
        neg[t] = -score[t];
    assert_int_equal(kw_kvstats_pick_rows(neg, 0, T, NULL, 0.3, chosen, &n), 0);
    assert_memory_equal(chosen, ((uint8_t[T]){0, 0, 0, 1, 0, 1}), T);
    /* NaN scores (a NaN in the prefill) rank last wherever they stand, so the order stays total */
    for (int at = 0; at < T; ++at) {
        double with_nan[T] = {3.0, 0.9, 0.8, 0.5, 0.6, 0.1};
        with_nan[at] = NAN;
        assert_int_equal(kw_kvstats_pick_rows(with_nan, 0, T, NULL, 0.5, chosen, &n), 0);
        uint8_t want[T] = {0};
        for (int k = 0, got = 0; k < T && got < 3; ++k) /* the three best of the others, by score */
            for (int t = 0; t < T && got < 3; ++t) {
                static const int order[T] = {0, 1, 2, 4, 3, 5};
                if (t == order[k] && t != at) want[t] = 1, ++got;
            }
        assert_memory_equal(chosen, want, T);
    }
    assert_int_equal(kw_kvstats_pick_rows(score, 0, T, NULL, 0.0, chosen, &n), KW_E_INVALID_ARG);
    assert_int_equal(kw_kvstats_pick_rows(score, 0, T, NULL, 1.01, chosen, &n), KW_E_INVALID_ARG);
    assert_int_equal(kw_kvstats_pick_rows(score, 0, T, NULL, NAN, chosen, &n), KW_E_INVALID_ARG);
}

static kw_model *load_model(int32_t max_batch, kw_backend **be) {
    char path[512];
    snprintf(path, sizeof path, "%s/model/hf/qwen3_gqa3", KW_TEST_DATA_DIR);
    kw_model *m = NULL;
    const kw_model_options o = {.max_batch = max_batch};
    assert_int_equal(kw_backend_create_cpu(1, be), 0);
    assert_int_equal(kw_model_load(*be, path, &o, &m), 0);
    return m;
}

typedef struct queries {
    float *q; /* (L, T, Hq * D) */
    int64_t T;
    size_t row;
    int calls, fail_at;
} queries;

static int on_queries(void *user, int32_t layer, int64_t row0, int64_t n, const float *q) {
    queries *qs = user;
    assert_true(row0 >= 0 && row0 + n <= qs->T && n >= 1);
    memcpy(qs->q + ((size_t)layer * (size_t)qs->T + (size_t)row0) * qs->row, q, (size_t)n * qs->row * sizeof *q);
    return ++qs->calls == qs->fail_at ? KW_E_IO : 0;
}

/* A prefill of T_ROWS tokens with all logits: (cache K, V, logits) with the hook or without; the queries it got. */
static void prefill(kw_model *m, queries *qs, float *k, float *v, float *logits) {
    const kw_model_config *cfg = kw_model_get_config(m);
    kw_kvcache *cache = NULL;
    assert_int_equal(kw_model_create_cache(m, N_IDS, KW_DTYPE_F32, &cache), 0);
    const kw_forward_args a = {.ids = g_ids,
                               .n = T_ROWS,
                               .mode = KW_LOGITS_ALL,
                               .logits = logits,
                               .on_queries = qs ? on_queries : NULL,
                               .user = qs};
    assert_int_equal(kw_model_forward(m, cache, &a), 0);
    const size_t per = (size_t)T_ROWS * (size_t)cfg->n_kv_heads * (size_t)cfg->head_dim;
    for (int32_t l = 0; l < cfg->n_layers; ++l)
        assert_int_equal(kw_kvcache_read_rows(cache, l, 0, T_ROWS, k + l * per, v + l * per), 0);
    kw_kvcache_free(cache);
}

/* The hook: bit-identical results, the same queries in chunks of 3 as in one, a failing callback's status. */
static void test_query_hook(void **state) {
    (void)state;
    kw_backend *be1 = NULL, *be3 = NULL;
    kw_model *m1 = load_model(0, &be1), *m3 = load_model(3, &be3);
    const kw_model_config *cfg = kw_model_get_config(m1);
    const size_t L = (size_t)cfg->n_layers, per = (size_t)T_ROWS * cfg->n_kv_heads * cfg->head_dim;
    const size_t row = (size_t)cfg->n_heads * cfg->head_dim, nl = (size_t)T_ROWS * cfg->vocab;
    float *buf = calloc(4 * L * per + 2 * nl + 2 * L * T_ROWS * row, sizeof *buf);
    assert_non_null(buf);
    float *k0 = buf, *v0 = k0 + L * per, *k1 = v0 + L * per, *v1 = k1 + L * per, *lg0 = v1 + L * per, *lg1 = lg0 + nl;
    queries qa = {.q = lg1 + nl, .T = T_ROWS, .row = row}, qb = {.q = qa.q + L * T_ROWS * row, .T = T_ROWS, .row = row};
    prefill(m1, NULL, k0, v0, lg0);
    prefill(m1, &qa, k1, v1, lg1);
    assert_memory_equal(k0, k1, L * per * sizeof *k0);
    assert_memory_equal(v0, v1, L * per * sizeof *v0);
    assert_memory_equal(lg0, lg1, nl * sizeof *lg0);
    assert_int_equal(qa.calls, (int)L);
    prefill(m3, &qb, k1, v1, lg1); /* chunks of 3, 3, 3, 1: rows at their offsets */
    assert_int_equal(qb.calls, 4 * (int)L);
    assert_memory_equal(qa.q, qb.q, L * T_ROWS * row * sizeof *qa.q);
    /* a failing callback stops the forward with its status, the cache as it was */
    kw_kvcache *cache = NULL;
    assert_int_equal(kw_model_create_cache(m3, N_IDS, KW_DTYPE_F32, &cache), 0);
    queries qf = {.q = qb.q, .T = T_ROWS, .row = row, .fail_at = 2};
    const kw_forward_args a = {
        .ids = g_ids, .n = T_ROWS, .mode = KW_LOGITS_NONE, .on_queries = on_queries, .user = &qf};
    assert_int_equal(kw_model_forward(m3, cache, &a), KW_E_IO);
    assert_int_equal(qf.calls, 2);
    assert_int_equal(kw_kvcache_length(cache), 0);
    kw_kvcache_free(cache);
    free(buf);
    kw_model_free(m1);
    kw_model_free(m3);
    kw_backend_destroy(be1);
    kw_backend_destroy(be3);
}

static kw_kvstats_codec codec(const char *name) {
    kw_kvstats_codec c = {0};
    assert_int_equal(kw_wire_spec_parse(name, "token", "f32", &c.spec), 0);
    c.spec_v = c.spec;
    return c;
}

static kw_kvstats_codec picking(int pick, double fraction, uint32_t queries_n) {
    kw_kvstats_codec c = codec("int4");
    const kw_wire_codec_spec i8 = codec("int8").spec;
    c.token_rules[c.n_token_rules++] =
        (kw_kvstats_token_rule){.pick = pick, .fraction = fraction, .queries = queries_n, .spec = i8, .spec_v = i8};
    return c;
}

/* Squared error of row t (all heads, row floats) of y against x, both (T, H, D). */
static double row_err2(const float *x, const float *y, int64_t t, size_t row) {
    double e = 0.0;
    for (size_t i = 0; i < row; ++i) {
        const double d = (double)y[(size_t)t * row + i] - (double)x[(size_t)t * row + i];
        e += d * d;
    }
    return e;
}

/* kvstats on the tiny model (see the top). */
static void test_kvstats_picks(void **state) {
    (void)state;
    kw_backend *be = NULL;
    kw_model *m = load_model(0, &be);
    const kw_model_config *cfg = kw_model_get_config(m);
    const int32_t L = cfg->n_layers;
    enum { A4, A8, ATTN, ATTN_ALL, RAND_ALL, LEAST, ATTN_LAST, ATTN_POS, N_ROWS };
    kw_kvstats_codec c[N_ROWS] = {[A4] = codec("int4"), [A8] = codec("int8")};
    c[ATTN] = picking(KW_KVSTATS_PICK_ATTN, 0.3, 0);
    c[ATTN_ALL] = picking(KW_KVSTATS_PICK_ATTN, 1.0, 0);
    c[RAND_ALL] = picking(KW_KVSTATS_PICK_RAND, 1.0, 0);
    c[LEAST] = picking(KW_KVSTATS_PICK_LEAST, 0.3, 0);
    c[ATTN_LAST] = picking(KW_KVSTATS_PICK_ATTN, 0.3, 2);
    c[ATTN_POS] = picking(KW_KVSTATS_PICK_ATTN, 0.3, 0); /* after positions 2-3 at int8: picks among the others */
    c[ATTN_POS].token_rules[1] = c[ATTN_POS].token_rules[0];
    c[ATTN_POS].token_rules[0] =
        (kw_kvstats_token_rule){.first = 2, .last = 3, .spec = c[A8].spec, .spec_v = c[A8].spec};
    c[ATTN_POS].n_token_rules = 2;
    kw_kvstats *plain = NULL, *s = NULL;
    assert_int_equal(kw_kvstats_create(m, c, 2, N_NEW, &plain), 0); /* A4 and A8 alone: no queries asked for */
    assert_int_equal(kw_kvstats_create(m, c, N_ROWS, N_NEW, &s), 0);
    assert_int_equal(kw_kvstats_add_prompt(plain, g_ids, N_IDS, NULL), 0);
    assert_int_equal(kw_kvstats_add_prompt(s, g_ids, N_IDS, NULL), 0);
    const kw_kvstats_result *r[N_ROWS];
    for (int i = 0; i < N_ROWS; ++i) {
        r[i] = kw_kvstats_result_get(s, i);
        assert_int_equal(r[i]->status, 0);
    }
    for (int i = A4; i <= A8; ++i) { /* bit-identical beside picking rows */
        const kw_kvstats_result *x = kw_kvstats_result_get(plain, i), *y = r[i];
        assert_true(x->k_err2 == y->k_err2 && x->v_err2 == y->v_err2 && x->kl_sum == y->kl_sum);
        assert_true(x->blob_bytes == y->blob_bytes && x->tf_agree == y->tf_agree && x->free_agree == y->free_agree);
    }
    for (int i = ATTN_ALL; i <= RAND_ALL; ++i) { /* every row picked: the int8 row (one group, the plain one) */
        assert_true(r[i]->k_err2 == r[A8]->k_err2 && r[i]->v_err2 == r[A8]->v_err2 && r[i]->kl_sum == r[A8]->kl_sum);
        assert_int_equal(r[i]->blob_bytes, r[A8]->blob_bytes);
    }
    for (int i = ATTN; i < N_ROWS; i += (i == ATTN ? LEAST - ATTN : 1)) {
        assert_true(r[i]->k_err2 < r[A4]->k_err2 && r[i]->k_err2 > r[A8]->k_err2);
        assert_true(r[i]->blob_bytes > r[A4]->blob_bytes && r[i]->blob_bytes < r[A8]->blob_bytes);
    }

    /* The K error of the partial rows, row by row: int8's error at the rows the ranking of the hook's queries (or
     * the negated ranking, or the last 2 queries') chooses in each layer, int4's at the others. Per-token scales: a
     * row's error does not depend on its group. */
    const size_t H = (size_t)cfg->n_kv_heads, D = (size_t)cfg->head_dim, row = H * D, per = T_ROWS * row;
    const size_t qrow = (size_t)cfg->n_heads * D, nl = (size_t)T_ROWS * cfg->vocab;
    float *buf = calloc(4 * L * per + nl + L * T_ROWS * qrow, sizeof *buf);
    assert_non_null(buf);
    float *k = buf, *v = k + L * per, *k4 = v + L * per, *k8 = k4 + L * per, *lg = k8 + L * per;
    queries qs = {.q = lg + nl, .T = T_ROWS, .row = qrow};
    prefill(m, &qs, k, v, lg);
    const kw_wire_codec_spec i4 = codec("int4").spec, i8 = codec("int8").spec;
    float *vt = malloc(per * sizeof *vt);
    assert_non_null(vt);
    for (int32_t l = 0; l < L; ++l) {
        memcpy(k4 + l * per, k + l * per, per * sizeof *k);
        memcpy(k8 + l * per, k + l * per, per * sizeof *k);
        memcpy(vt, v + l * per, per * sizeof *vt);
        assert_int_equal(kw_wire_roundtrip_rows(&i4, &i4, l, T_ROWS, (int32_t)H, (int32_t)D, k4 + l * per, vt), 0);
        memcpy(vt, v + l * per, per * sizeof *vt);
        assert_int_equal(kw_wire_roundtrip_rows(&i8, &i8, l, T_ROWS, (int32_t)H, (int32_t)D, k8 + l * per, vt), 0);
    }
    free(vt);
    const double scale = 1.0 / sqrt(cfg->query_pre_attn_scalar > 0 ? cfg->query_pre_attn_scalar : (double)D);
    const int rows_checked[] = {ATTN, LEAST, ATTN_LAST, ATTN_POS};
    double want[4] = {0};
    for (int w = 0; w < 4; ++w) {
        const int pos = rows_checked[w] == ATTN_POS; /* rows 2 and 3 are the positional rule's */
        const kw_kvstats_token_rule *tr = &c[rows_checked[w]].token_rules[pos];
        const uint8_t taken[T_ROWS] = {0, 0, pos, pos};
        for (int32_t l = 0; l < L; ++l) {
            double score[T_ROWS];
            uint8_t chosen[T_ROWS];
            assert_int_equal(kw_kvstats_attention_received(qs.q + (size_t)l * T_ROWS * qrow, k + (size_t)l * per,
                                                           T_ROWS, cfg->n_heads, (int32_t)H, (int32_t)D, (float)scale,
                                                           0, tr->queries ? T_ROWS - tr->queries : 0, score),
                             0);
            for (int t = 0; t < T_ROWS && tr->pick == KW_KVSTATS_PICK_LEAST; ++t)
                score[t] = -score[t];
            int64_t n = 0;
            assert_int_equal(kw_kvstats_pick_rows(score, 0, T_ROWS, taken, tr->fraction, chosen, &n), 0);
            assert_int_equal(n, 3); /* round(0.3 x 10) */
            for (int t = 0; t < T_ROWS; ++t)
                want[w] += row_err2(k + l * per, (chosen[t] || taken[t] ? k8 : k4) + l * per, t, row);
        }
        const double got = r[rows_checked[w]]->k_err2;
        assert_float_equal(got, want[w], 1e-9 * want[w]);
    }
    assert_true(want[0] != want[1] && want[0] != want[2]); /* the rankings choose differently */
    free(buf);
    kw_kvstats_free(plain);
    kw_kvstats_free(s);
    kw_model_free(m);
    kw_backend_destroy(be);
}

/* A picking rule whose rows make more token groups than a section holds (FORMAT.md §4.2): that row is refused with
 * KW_E_LIMIT and a reason naming the groups; the plain row beside it is measured as usual. Every other row of a
 * 8,400-row prompt at random (Trand 50%) makes about 4,200 runs, 8,400 groups, over KW_WIRE_MAX_GROUPS. */
static void test_kvstats_group_limit_refuses_the_row(void **state) {
    (void)state;
    kw_backend *be = NULL;
    kw_model *m = load_model(512, &be);
    enum { N = 8401 };
    int32_t *ids = malloc(N * sizeof *ids);
    assert_non_null(ids);
    for (int i = 0; i < N; ++i)
        ids[i] = (int32_t)((7u + 2654435761u * (uint32_t)i) % 500u);
    kw_kvstats_codec c[2] = {codec("int4"), picking(KW_KVSTATS_PICK_RAND, 0.5, 0)};
    kw_kvstats *s = NULL;
    assert_int_equal(kw_kvstats_create(m, c, 2, 1, &s), 0);
    assert_int_equal(kw_kvstats_add_prompt(s, ids, N, NULL), 0);
    const kw_kvstats_result *plain = kw_kvstats_result_get(s, 0), *picked = kw_kvstats_result_get(s, 1);
    assert_int_equal(plain->status, 0);
    assert_true(plain->blob_bytes > 0 && plain->tf_steps == 1);
    assert_int_equal(picked->status, KW_E_LIMIT);
    assert_non_null(strstr(picked->why, "token groups"));
    kw_kvstats_free(s);
    free(ids);
    kw_model_free(m);
    kw_backend_destroy(be);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attention_by_hand),
        cmocka_unit_test(test_pick_by_hand),
        cmocka_unit_test(test_query_hook),
        cmocka_unit_test(test_kvstats_picks),
        cmocka_unit_test(test_kvstats_group_limit_refuses_the_row),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
