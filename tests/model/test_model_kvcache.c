/* test_model_kvcache.c: the KV cache API (row read/write round trips in f32 and bf16, backend-side load/store,
 * overwrite then attend, truncate/reset, the validity mask) and the forward pass's argument and capacity errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/kw_file.h"
#include "common/kw_half.h"
#include "common/kw_status.h"
#include "kernels/kw_backend.h"
#include "model/kw_kvcache.h"
#include "model/kw_model.h"
#include "model/kw_safetensors.h"
#include "tests/kw_test_util.h"

enum { L = 3, H = 2, D = 24, CAP = 40 };

static float *random_rows(int64_t n, unsigned seed) {
    float *p = malloc((size_t)(n * H * D) * sizeof *p);
    assert_non_null(p);
    srand(seed);
    for (int64_t i = 0; i < n * H * D; ++i)
        p[i] = (float)rand() / (float)RAND_MAX * 4.0f - 2.0f;
    return p;
}

static void round_trip(enum kw_dtype dtype) {
    kw_backend *be = NULL;
    kw_kvcache *c = NULL;
    assert_int_equal(kw_backend_create_cpu(1, &be), 0);
    assert_int_equal(kw_kvcache_create(be, L, H, D, CAP, dtype, &c), 0);
    assert_int_equal(kw_kvcache_length(c), 0);
    assert_int_equal(kw_kvcache_dtype(c), dtype);
    float *k = random_rows(10, 1), *v = random_rows(10, 2);
    float *rk = calloc(10 * H * D, sizeof *rk), *rv = calloc(10 * H * D, sizeof *rv);
    assert_true(rk && rv);

    /* rows past length are refused for reading; writing at length appends */
    assert_int_equal(kw_kvcache_read_rows(c, 0, 0, 1, rk, rv), KW_E_INVALID_ARG);
    assert_int_equal(kw_kvcache_write_rows(c, 1, 1, 4, k, v), KW_E_INVALID_ARG); /* would leave a gap at row 0 */
    assert_int_equal(kw_kvcache_write_rows(c, 1, 0, 10, k, v), 0);
    assert_int_equal(kw_kvcache_length(c), 10);
    assert_int_equal(kw_kvcache_read_rows(c, 1, 0, 10, rk, rv), 0);
    for (int64_t i = 0; i < 10 * H * D; ++i) {
        const float ek = dtype == KW_DTYPE_BF16 ? kw_round_bf16(k[i]) : k[i];
        const float ev = dtype == KW_DTYPE_BF16 ? kw_round_bf16(v[i]) : v[i];
        assert_true(rk[i] == ek && rv[i] == ev);
    }

    /* overwrite rows 3..5 of layer 1 with new values, K only; V and other rows unchanged */
    float *k2 = random_rows(3, 3);
    assert_int_equal(kw_kvcache_write_rows(c, 1, 3, 3, k2, NULL), 0);
    assert_int_equal(kw_kvcache_length(c), 10);
    assert_int_equal(kw_kvcache_read_rows(c, 1, 0, 10, rk, rv), 0);
    for (int64_t i = 0; i < 10 * H * D; ++i) {
        const int64_t row = i / (H * D);
        const float src = (row >= 3 && row < 6) ? k2[i - 3 * H * D] : k[i];
        assert_true(rk[i] == (dtype == KW_DTYPE_BF16 ? kw_round_bf16(src) : src));
        assert_true(rv[i] == (dtype == KW_DTYPE_BF16 ? kw_round_bf16(v[i]) : v[i]));
    }

    /* backend-side: load rows 2..6 of layer 1 into tensors, store them into layer 2 at 0, read back */
    kw_tensor tk = {0}, tv = {0};
    const int64_t ne[3] = {5, H, D};
    assert_int_equal(kw_tensor_alloc(be, &tk, KW_DTYPE_F32, 3, ne), 0);
    assert_int_equal(kw_tensor_alloc(be, &tv, KW_DTYPE_F32, 3, ne), 0);
    assert_int_equal(kw_kvcache_load_rows(c, 1, 2, &tk, &tv), 0);
    assert_int_equal(kw_kvcache_load_rows(c, 1, 6, &tk, &tv), KW_E_INVALID_ARG); /* 6 + 5 > length */
    assert_int_equal(kw_kvcache_store_rows(c, 2, 0, &tk, &tv), 0);
    float *lk = calloc(5 * H * D, sizeof *lk), *lv = calloc(5 * H * D, sizeof *lv);
    assert_true(lk && lv);
    assert_int_equal(kw_kvcache_read_rows(c, 2, 0, 5, lk, lv), 0);
    assert_memory_equal(lk, rk + 2 * H * D, 5 * H * D * sizeof *lk);
    assert_memory_equal(lv, rv + 2 * H * D, 5 * H * D * sizeof *lv);
    /* wrong shape */
    kw_tensor bad = {0};
    const int64_t nb[3] = {5, H + 1, D};
    assert_int_equal(kw_tensor_alloc(be, &bad, KW_DTYPE_F32, 3, nb), 0);
    assert_int_equal(kw_kvcache_store_rows(c, 2, 0, &bad, NULL), KW_E_SHAPE);
    assert_int_equal(kw_kvcache_load_rows(c, L, 0, &tk, NULL), KW_E_INVALID_ARG);

    /* truncate / append / reset */
    assert_int_equal(kw_kvcache_truncate(c, 11), KW_E_INVALID_ARG);
    assert_int_equal(kw_kvcache_truncate(c, 4), 0);
    assert_int_equal(kw_kvcache_length(c), 4);
    int64_t row0 = -1;
    assert_int_equal(kw_kvcache_append(c, CAP - 4 + 1, &row0), KW_E_MODEL_CONTEXT);
    assert_int_equal(kw_kvcache_append(c, CAP - 4, &row0), 0);
    assert_int_equal(row0, 4);
    assert_int_equal(kw_kvcache_length(c), CAP);
    assert_int_equal(kw_kvcache_reset(c), 0);
    assert_int_equal(kw_kvcache_length(c), 0);

    /* the mask exists only while a row is masked */
    assert_null(kw_kvcache_mask(c));
    assert_int_equal(kw_kvcache_set_valid(c, CAP - 1, 2, 0), KW_E_INVALID_ARG);
    assert_int_equal(kw_kvcache_set_valid(c, 5, 2, 0), 0);
    assert_non_null(kw_kvcache_mask(c));
    assert_int_equal(kw_kvcache_set_valid(c, 5, 2, 1), 0);
    assert_null(kw_kvcache_mask(c));
    assert_null(kw_kvcache_k(c, L));
    assert_non_null(kw_kvcache_v(c, L - 1));

    kw_tensor_free(&tk);
    kw_tensor_free(&tv);
    kw_tensor_free(&bad);
    free(k);
    free(v);
    free(k2);
    free(rk);
    free(rv);
    free(lk);
    free(lv);
    kw_kvcache_free(c);
    kw_kvcache_free(NULL);
    kw_backend_destroy(be);
}

static void test_round_trip_f32(void **state) {
    (void)state;
    round_trip(KW_DTYPE_F32);
}

static void test_round_trip_bf16(void **state) {
    (void)state;
    round_trip(KW_DTYPE_BF16);
}

static void test_create_errors(void **state) {
    (void)state;
    kw_backend *be = NULL;
    kw_kvcache *c = NULL;
    assert_int_equal(kw_backend_create_cpu(1, &be), 0);
    assert_int_equal(kw_kvcache_create(be, L, H, D, CAP, KW_DTYPE_F16, &c), KW_E_INVALID_ARG);
    assert_int_equal(kw_kvcache_create(be, 0, H, D, CAP, KW_DTYPE_F32, &c), KW_E_INVALID_ARG);
    assert_int_equal(kw_kvcache_create(be, L, H, D, 0, KW_DTYPE_F32, &c), KW_E_INVALID_ARG);
    assert_int_equal(kw_kvcache_create(be, L, H, D, INT64_MAX / 2, KW_DTYPE_F32, &c), KW_E_OVERFLOW);
    assert_null(c);
    kw_backend_destroy(be);
}

enum { AQD = 32 }; /* head_dim of the caches same_attention compares */

/* Attention of two random query rows (2H heads over the caches' H: grouped) at positions n-2 and n-1 over layer la of
 * a and layer lb of b gives the same bits; a layer past a's last is refused. */
static void same_attention(kw_backend *be, kw_kvcache *a, int32_t la, kw_kvcache *b, int32_t lb, int64_t n) {
    float q[2 * H * 2 * AQD], o1[2 * H * 2 * AQD], o2[2 * H * 2 * AQD];
    for (size_t i = 0; i < sizeof q / sizeof q[0]; ++i)
        q[i] = (float)rand() / (float)RAND_MAX - 0.5f;
    kw_tensor tq, t1, t2;
    const int64_t ne[3] = {2, 2 * H, AQD};
    assert_int_equal(kw_tensor_from_host(be, &tq, KW_DTYPE_F32, 3, ne, q), 0);
    assert_int_equal(kw_tensor_from_host(be, &t1, KW_DTYPE_F32, 3, ne, o1), 0);
    assert_int_equal(kw_tensor_from_host(be, &t2, KW_DTYPE_F32, 3, ne, o2), 0);
    const kw_attention_params ap = {.q_pos0 = n - 2, .n_kv = n, .scale = 0.2f};
    assert_int_equal(kw_kvcache_attention(a, la, &t1, &tq, &ap), 0);
    assert_int_equal(kw_kvcache_attention(b, lb, &t2, &tq, &ap), 0);
    assert_int_equal(kw_backend_synchronize(be), 0);
    assert_memory_equal(o1, o2, sizeof o1);
    assert_int_equal(kw_kvcache_attention(a, kw_kvcache_n_layers(a), &t1, &tq, &ap), KW_E_INVALID_ARG);
}

/* A quantized cache through the kvcache API: rows read back within the codec's error, K-only overwrites of stored
 * rows, truncate then append, attention equal bit for bit to the dense f32 attention on the rows it reads back, the
 * geometry checks. */
static void quantized_round_trip(enum kw_kvq_codec codec) {
    enum { QD = AQD, N = 50 };
    kw_backend *be = NULL;
    kw_kvcache *c = NULL, *f = NULL;
    assert_int_equal(kw_backend_create_cpu(1, &be), 0);
    assert_int_equal(kw_kvcache_create_quantized(be, L, H, QD, 64, codec, 16, &c), 0);
    assert_int_equal(kw_kvcache_codec(c), codec);
    assert_int_equal(kw_kvcache_page_tokens(c), 16);
    assert_int_equal(kw_kvcache_dtype(c), KW_DTYPE_U8);
    assert_null(kw_kvcache_k(c, 0));
    const size_t cells = (size_t)(N * H * QD);
    float *k = malloc(cells * sizeof *k), *v = malloc(cells * sizeof *v);
    float *rk = calloc(cells, sizeof *rk), *rv = calloc(cells, sizeof *rv);
    assert_true(k && v && rk && rv);
    srand(7);
    for (size_t i = 0; i < cells; ++i) {
        k[i] = ((float)rand() / (float)RAND_MAX * 2.0f - 1.0f) * (i % QD == 5 ? 20.0f : 1.0f);
        v[i] = (float)rand() / (float)RAND_MAX * 2.0f - 1.0f;
    }
    assert_int_equal(kw_kvcache_write_rows(c, 1, 0, 20, k, NULL), KW_E_INVALID_ARG); /* new rows: K and V together */
    assert_int_equal(kw_kvcache_write_rows(c, 1, 0, 20, k, v), 0);
    assert_int_equal(kw_kvcache_write_rows(c, 1, 20, N - 20, k + 20 * H * QD, v + 20 * H * QD), 0);
    assert_int_equal(kw_kvcache_length(c), N);
    assert_int_equal(kw_kvcache_read_rows(c, 1, 0, N, rk, rv), 0);
    double ek = 0, nk = 0, ev = 0, nv = 0;
    for (size_t i = 0; i < cells; ++i) {
        ek += (rk[i] - k[i]) * (rk[i] - k[i]), nk += k[i] * k[i];
        ev += (rv[i] - v[i]) * (rv[i] - v[i]), nv += v[i] * v[i];
    }
    const double limit = codec == KW_KVQ_INT8 ? 0.01 : codec == KW_KVQ_INT6 ? 0.04 : 0.15;
    assert_true(sqrt(ek / nk) < limit && sqrt(ev / nv) < limit);
    /* rows of the bf16 tail (48, 49) read back as bf16 */
    for (int64_t i = 48 * H * QD; i < N * H * QD; ++i)
        assert_true(rk[i] == kw_round_bf16(k[i]));
    /* a K-only overwrite of stored rows */
    assert_int_equal(kw_kvcache_write_rows(c, 1, 10, 5, v, NULL), 0);
    /* truncate into a full page, then append again */
    assert_int_equal(kw_kvcache_truncate(c, 40), 0);
    assert_int_equal(kw_kvcache_write_rows(c, 1, 40, 10, k + 40 * H * QD, v + 40 * H * QD), 0);
    assert_int_equal(kw_kvcache_read_rows(c, 1, 0, N, rk, rv), 0);
    for (int64_t i = 40 * H * QD; i < 48 * H * QD; ++i)
        assert_true(fabsf(rk[i] - k[i]) < (codec == KW_KVQ_INT8 ? 0.1f : codec == KW_KVQ_INT6 ? 0.5f : 2.0f));

    /* attention over the quantized layer = dense f32 attention over the rows it reads back */
    assert_int_equal(kw_kvcache_create(be, L, H, QD, 64, KW_DTYPE_F32, &f), 0);
    assert_int_equal(kw_kvcache_write_rows(f, 1, 0, N, rk, rv), 0);
    same_attention(be, c, 1, f, 1, N);

    assert_int_equal(kw_kvcache_reset(c), 0);
    assert_int_equal(kw_kvcache_read_rows(c, 1, 0, 1, rk, rv), KW_E_INVALID_ARG);
    kw_kvcache_free(f);
    kw_kvcache_free(c);
    free(k), free(v), free(rk), free(rv);
    /* geometry the quantized cache refuses */
    assert_int_equal(kw_kvcache_create_quantized(be, L, H, 24, 64, codec, 16, &c), KW_E_INVALID_ARG);
    assert_int_equal(kw_kvcache_create_quantized(be, L, H, QD, 64, codec, 20, &c), KW_E_INVALID_ARG);
    assert_null(c);
    kw_backend_destroy(be);
}

static void test_quantized_int8(void **state) {
    (void)state;
    quantized_round_trip(KW_KVQ_INT8);
}

static void test_quantized_int6(void **state) {
    (void)state;
    quantized_round_trip(KW_KVQ_INT6);
}

static void test_quantized_int4(void **state) {
    (void)state;
    quantized_round_trip(KW_KVQ_INT4);
}

/* The memory goals at 4,096 tokens with everything counted (codes, scales, the bf16 tail; the page table is
 * implicit): int8 <= 52% and int4 <= 28% of the bf16 cache, for SmolLM2's (3 kv heads of 64) and Gemma 3's (1 of
 * 256) geometry, with the default page length. */
static void test_quantized_memory(void **state) {
    (void)state;
    kw_backend *be = NULL;
    assert_int_equal(kw_backend_create_cpu(1, &be), 0);
    const int32_t geo[2][3] = {{30, 3, 64}, {18, 1, 256}};
    for (int g = 0; g < 2; ++g) {
        kw_kvcache *b = NULL, *q8 = NULL, *q4 = NULL;
        assert_int_equal(kw_kvcache_create(be, geo[g][0], geo[g][1], geo[g][2], 4096, KW_DTYPE_BF16, &b), 0);
        assert_int_equal(kw_kvcache_create_quantized(be, geo[g][0], geo[g][1], geo[g][2], 4096, KW_KVQ_INT8,
                                                     KW_KVCACHE_PAGE_TOKENS, &q8),
                         0);
        assert_int_equal(kw_kvcache_create_quantized(be, geo[g][0], geo[g][1], geo[g][2], 4096, KW_KVQ_INT4,
                                                     KW_KVCACHE_PAGE_TOKENS, &q4),
                         0);
        const double r8 = (double)kw_kvcache_bytes(q8) / (double)kw_kvcache_bytes(b);
        const double r4 = (double)kw_kvcache_bytes(q4) / (double)kw_kvcache_bytes(b);
        print_message("head_dim %d: int8 %.2f%%, int4 %.2f%% of bf16\n", (int)geo[g][2], 100 * r8, 100 * r4);
        assert_true(r8 <= 0.52 && r4 <= 0.28);
        kw_kvcache_free(b), kw_kvcache_free(q8), kw_kvcache_free(q4);
    }
    kw_backend_destroy(be);
}

/* Forwards ids (nt tokens) into the empty cache c at once (logits into one, nt x V), then again in cuts of 5 (into
 * cut) and as a 7-token prefill then decode steps (dec, V): fails unless every row's logits are the same bits. */
static void same_logits_however_cut(kw_model *m, kw_kvcache *c, const int32_t *ids, int64_t nt, int64_t V, float *one,
                                    float *cut, float *dec) {
    const kw_forward_args fa = {.ids = ids, .n = nt, .mode = KW_LOGITS_ALL, .logits = one};
    assert_int_equal(kw_model_forward(m, c, &fa), 0);
    assert_int_equal(kw_kvcache_reset(c), 0);
    for (int64_t i = 0; i < nt; i += 5) {
        kw_forward_args fc = {.ids = ids + i, .n = 5, .mode = KW_LOGITS_ALL, .logits = cut + i * V};
        assert_int_equal(kw_model_forward(m, c, &fc), 0);
    }
    assert_memory_equal(one, cut, (size_t)(nt * V) * sizeof *one);
    assert_int_equal(kw_kvcache_reset(c), 0);
    assert_int_equal(kw_model_prefill(m, c, ids, 7), 0);
    for (int64_t i = 7; i < nt; ++i) {
        assert_int_equal(kw_model_decode_step(m, c, ids[i], dec, NULL, 0), 0);
        assert_memory_equal(dec, one + i * V, (size_t)V * sizeof *dec);
    }
}

/* A mixed cache (kw_kvcache_create_mixed: int8, int4, bf16, int6 layers) holds in each layer exactly what a cache of
 * that layer's codec alone holds for the same rows (written in pieces, a K-only overwrite, a truncate into a full
 * page, appending again), and each layer's attention gives that cache's bits; bytes are counted per layer; the
 * accessors answer per layer. */
static void test_mixed_layers(void **state) {
    (void)state;
    enum { ML = 4, QD = AQD, N = 50, MCAP = 64 };
    const enum kw_kvq_codec codecs[ML] = {KW_KVQ_INT8, KW_KVQ_INT4, 0, KW_KVQ_INT6};
    kw_backend *be = NULL;
    assert_int_equal(kw_backend_create_cpu(1, &be), 0);
    kw_kvcache *mix = NULL, *one[ML] = {NULL};
    assert_int_equal(kw_kvcache_create_mixed(be, ML, H, QD, MCAP, codecs, 16, &mix), 0);
    for (int l = 0; l < ML; ++l) {
        if (codecs[l])
            assert_int_equal(kw_kvcache_create_quantized(be, ML, H, QD, MCAP, codecs[l], 16, &one[l]), 0);
        else
            assert_int_equal(kw_kvcache_create(be, ML, H, QD, MCAP, KW_DTYPE_BF16, &one[l]), 0);
    }
    assert_int_equal(kw_kvcache_codec(mix), 0); /* the layers differ */
    assert_int_equal(kw_kvcache_quantized(mix), 1);
    assert_int_equal(kw_kvcache_quantized(one[2]), 0);
    assert_int_equal(kw_kvcache_page_tokens(mix), 16);
    assert_int_equal(kw_kvcache_dtype(mix), KW_DTYPE_BF16);
    uint64_t total = 0;
    for (int32_t l = 0; l < ML; ++l) {
        assert_int_equal(kw_kvcache_layer_codec(mix, l), codecs[l]);
        assert_int_equal(kw_kvcache_layer_bytes(mix, l), kw_kvcache_layer_bytes(one[l], l));
        assert_true((kw_kvcache_k(mix, l) != NULL) == (codecs[l] == 0));
        assert_true((kw_kvcache_v(mix, l) != NULL) == (codecs[l] == 0));
        kw_kvq_geom g;
        assert_true((kw_kvcache_kvq_storage(mix, l, 1, &g) != NULL) == (codecs[l] != 0));
        if (codecs[l]) assert_int_equal(g.codec, codecs[l]);
        total += kw_kvcache_layer_bytes(mix, l);
    }
    assert_int_equal(kw_kvcache_bytes(mix), total);
    assert_int_equal(kw_kvcache_layer_codec(mix, ML), 0);
    assert_int_equal(kw_kvcache_layer_bytes(mix, -1), 0);

    const size_t cells = (size_t)(N * H * QD);
    float *k = malloc(ML * cells * sizeof *k), *v = malloc(ML * cells * sizeof *v);
    float *ak = malloc(cells * sizeof *ak), *av = malloc(cells * sizeof *av);
    float *bk = malloc(cells * sizeof *bk), *bv = malloc(cells * sizeof *bv);
    assert_true(k && v && ak && av && bk && bv);
    srand(11);
    for (size_t i = 0; i < ML * cells; ++i) {
        k[i] = ((float)rand() / (float)RAND_MAX * 2.0f - 1.0f) * (i % QD == 3 ? 12.0f : 1.0f);
        v[i] = (float)rand() / (float)RAND_MAX * 2.0f - 1.0f;
    }
    kw_kvcache *both[2] = {mix, NULL};
    for (int32_t l = 0; l < ML; ++l) { /* each layer its own rows, the same into both caches */
        both[1] = one[l];
        const float *kl = k + (size_t)l * cells, *vl = v + (size_t)l * cells;
        for (int c = 0; c < 2; ++c) {
            assert_int_equal(kw_kvcache_write_rows(both[c], l, 0, 20, kl, vl), 0);
            assert_int_equal(kw_kvcache_write_rows(both[c], l, 20, N - 20, kl + 20 * H * QD, vl + 20 * H * QD), 0);
            assert_int_equal(kw_kvcache_write_rows(both[c], l, 10, 5, vl, NULL), 0);
        }
    }
    for (int c = 0; c <= ML; ++c) { /* truncate into a full page, append again */
        kw_kvcache *t = c < ML ? one[c] : mix;
        assert_int_equal(kw_kvcache_truncate(t, 40), 0);
        for (int32_t l = 0; l < ML; ++l)
            if (t == mix || l == c)
                assert_int_equal(kw_kvcache_write_rows(t, l, 40, N - 40, k + (size_t)l * cells + 40 * H * QD,
                                                       v + (size_t)l * cells + 40 * H * QD),
                                 0);
    }
    for (int32_t l = 0; l < ML; ++l) {
        assert_int_equal(kw_kvcache_layer_rows(mix, l), N);
        assert_int_equal(kw_kvcache_read_rows(mix, l, 0, N, ak, av), 0);
        assert_int_equal(kw_kvcache_read_rows(one[l], l, 0, N, bk, bv), 0);
        assert_memory_equal(ak, bk, cells * sizeof *ak);
        assert_memory_equal(av, bv, cells * sizeof *av);
        same_attention(be, mix, l, one[l], l, N);
    }
    /* raw rows go only into a quantized layer */
    const kw_kvq_rows raw = {0};
    assert_int_equal(kw_kvcache_store_kvq(mix, 2, N, 0, &raw), KW_E_INVALID_ARG);
    assert_int_equal(kw_kvcache_reset(mix), 0);
    assert_int_equal(kw_kvcache_layer_rows(mix, 0), 0);
    free(k), free(v), free(ak), free(av), free(bk), free(bv);
    kw_kvcache_free(mix);
    for (int l = 0; l < ML; ++l)
        kw_kvcache_free(one[l]);
    /* a codec that is none is refused */
    const enum kw_kvq_codec bad[2] = {KW_KVQ_INT8, (enum kw_kvq_codec)9};
    assert_int_equal(kw_kvcache_create_mixed(be, 2, H, QD, MCAP, bad, 16, &mix), KW_E_INVALID_ARG);
    assert_null(mix);
    kw_backend_destroy(be);
}

/* "L:codec" lists (receiverd's cache.layers, kvwire generate --cache-layer): negative layers from the end, both
 * separators, spaces; every bad entry refused with KW_E_INVALID_ARG. */
static void test_layer_codec_lists(void **state) {
    (void)state;
    enum kw_kvq_codec c[5];
    for (int i = 0; i < 5; ++i)
        c[i] = KW_KVQ_INT6;
    assert_int_equal(kw_kvcache_parse_layer_codecs("0:int8, -1=int8,2:bf16 ,-4:int4", 5, c), 0);
    const enum kw_kvq_codec want[5] = {KW_KVQ_INT8, KW_KVQ_INT4, 0, KW_KVQ_INT6, KW_KVQ_INT8};
    assert_memory_equal(c, want, sizeof want);
    static const char *const bad[] = {"5:int8",  "-6:int8",       "0:int5",         "0:f32",    "x:int8", "0int8", "",
                                      "0:int8,", "1:int8,1:int4", "4:int8,-1:int4", "1.5:int8", "0:",     ":int8"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; ++i) {
        if (kw_kvcache_parse_layer_codecs(bad[i], 5, c) != KW_E_INVALID_ARG) fail_msg("accepted \"%s\"", bad[i]);
    }
    enum kw_kvq_codec one;
    assert_int_equal(kw_kvcache_codec_parse("int4", &one), 0);
    assert_int_equal(one, KW_KVQ_INT4);
    assert_int_equal(kw_kvcache_codec_parse(NULL, &one), KW_E_INVALID_ARG);
}

/* A model forward through a mixed cache (int8, int4, bf16 layers in turn; sliding-window layers too) gives the same
 * logits for one prefill, prefill in cuts of 5 and decode steps one by one, the same bits on every CPU ISA, and a
 * mixed cache of one codec everywhere is that codec's quantized cache, bit for bit. */
static void test_mixed_forward(void **state) {
    (void)state;
    enum { NT = 40 };
    const char *isas[3];
    const int n_isa = kw_backend_cpu_isas(isas);
    float *first = NULL;
    for (int i = 0; i < n_isa; ++i) {
        setenv("KW_CPU_ISA", isas[i], 1);
        kw_backend *be = NULL;
        assert_int_equal(kw_backend_create_cpu(2, &be), 0);
        unsetenv("KW_CPU_ISA");
        kw_model *m = NULL;
        if (kw_model_load(be, KW_TEST_DATA_DIR "/model/hf/gemma3_swa", NULL, &m) < 0) fail_msg("%s", kw_error_detail());
        const kw_model_config *cfg = kw_model_get_config(m);
        const int64_t V = cfg->vocab;
        int32_t ids[NT];
        for (int t = 0; t < NT; ++t)
            ids[t] = (int32_t)((t * 7919 + 13) % V);
        enum kw_kvq_codec codecs[16];
        assert_true(cfg->n_layers <= 16);
        for (int32_t l = 0; l < cfg->n_layers; ++l)
            codecs[l] = l % 3 == 0 ? KW_KVQ_INT8 : l % 3 == 1 ? KW_KVQ_INT4 : 0;
        float *one = malloc((size_t)(NT * V) * sizeof *one), *cut = malloc((size_t)(NT * V) * sizeof *cut);
        float *dec = malloc((size_t)V * sizeof *dec);
        assert_true(one && cut && dec);
        kw_kvcache *c = NULL;
        assert_int_equal(kw_model_create_cache_mixed(m, 48, codecs, 16, &c), 0);
        same_logits_however_cut(m, c, ids, NT, V, one, cut, dec);
        kw_forward_args fa = {.ids = ids, .n = NT, .mode = KW_LOGITS_ALL, .logits = one};
        kw_kvcache_free(c);
        if (!first) {
            first = one;
            one = NULL;
        } else {
            assert_memory_equal(one, first, (size_t)(NT * V) * sizeof *one); /* the same bits on every ISA */
        }
        /* one codec everywhere through create_mixed = create_quantized */
        kw_kvcache *q = NULL;
        for (int32_t l = 0; l < cfg->n_layers; ++l)
            codecs[l] = KW_KVQ_INT6;
        assert_int_equal(kw_model_create_cache_mixed(m, 48, codecs, 16, &c), 0);
        assert_int_equal(kw_model_create_cache_quantized(m, 48, KW_KVQ_INT6, 16, &q), 0);
        assert_int_equal(kw_kvcache_codec(c), KW_KVQ_INT6);
        fa.logits = cut;
        assert_int_equal(kw_model_forward(m, c, &fa), 0);
        fa.logits = malloc((size_t)(NT * V) * sizeof(float));
        assert_non_null(fa.logits);
        assert_int_equal(kw_model_forward(m, q, &fa), 0);
        assert_memory_equal(cut, fa.logits, (size_t)(NT * V) * sizeof *cut);
        free(fa.logits);
        kw_kvcache_free(c), kw_kvcache_free(q);
        free(one), free(cut), free(dec);
        kw_model_free(m);
        kw_backend_destroy(be);
    }
    free(first);
}

/* Each layer's attention window: 0 (global) until set; out-of-range layers and negative windows are refused. */
static void test_layer_windows(void **state) {
    (void)state;
    kw_backend *be = NULL;
    kw_kvcache *c = NULL;
    assert_int_equal(kw_backend_create_cpu(1, &be), 0);
    assert_int_equal(kw_kvcache_create(be, L, H, D, CAP, KW_DTYPE_F32, &c), 0);
    for (int32_t l = 0; l < L; ++l)
        assert_int_equal(kw_kvcache_layer_window(c, l), 0);
    assert_int_equal(kw_kvcache_set_layer_window(c, 1, 512), 0);
    assert_int_equal(kw_kvcache_layer_window(c, 1), 512);
    assert_int_equal(kw_kvcache_layer_window(c, 0), 0);
    assert_int_equal(kw_kvcache_set_layer_window(c, L, 4), KW_E_INVALID_ARG);
    assert_int_equal(kw_kvcache_set_layer_window(c, -1, 4), KW_E_INVALID_ARG);
    assert_int_equal(kw_kvcache_set_layer_window(c, 0, -4), KW_E_INVALID_ARG);
    assert_int_equal(kw_kvcache_set_layer_window(NULL, 0, 4), KW_E_INVALID_ARG);
    assert_int_equal(kw_kvcache_layer_window(c, L), 0);
    assert_int_equal(kw_kvcache_layer_window(NULL, 0), 0);
    assert_int_equal(kw_kvcache_reset(c), 0); /* the windows are the model's, not the contents: they stay */
    assert_int_equal(kw_kvcache_layer_window(c, 1), 512);
    kw_kvcache_free(c);
    kw_backend_destroy(be);
}

/* A quantized cache gives every position the same logits however the tokens arrive: one prefill, prefill in cuts of
 * 5, or decode steps one by one (the forward cuts its attention at page boundaries so that a query sees its page as a
 * decode step would), on a model with sliding-window layers. Also the logits stay near those of the f32 cache. */
static void test_quantized_forward_invariance(void **state) {
    (void)state;
    kw_backend *be = NULL;
    kw_model *m = NULL;
    assert_int_equal(kw_backend_create_cpu(2, &be), 0);
    const int rc = kw_model_load(be, KW_TEST_DATA_DIR "/model/hf/gemma3_swa", NULL, &m);
    if (rc < 0) fail_msg("%s", kw_error_detail());
    const kw_model_config *cfg = kw_model_get_config(m);
    enum { NT = 40 };
    int32_t ids[NT];
    for (int i = 0; i < NT; ++i)
        ids[i] = (int32_t)((i * 7919 + 13) % cfg->vocab);
    const int64_t V = cfg->vocab;
    float *one = malloc((size_t)(NT * V) * sizeof *one), *cut = malloc((size_t)(NT * V) * sizeof *cut);
    float *dec = malloc((size_t)V * sizeof *dec), *dense = malloc((size_t)(NT * V) * sizeof *dense);
    assert_true(one && cut && dec && dense);
    kw_kvcache *c = NULL;
    assert_int_equal(kw_model_create_cache(m, 48, KW_DTYPE_F32, &c), 0);
    kw_forward_args fa = {.ids = ids, .n = NT, .mode = KW_LOGITS_ALL, .logits = dense};
    assert_int_equal(kw_model_forward(m, c, &fa), 0);
    kw_kvcache_free(c);
    for (int codec = KW_KVQ_INT8; codec <= KW_KVQ_INT6; ++codec) {
        assert_int_equal(kw_model_create_cache_quantized(m, 48, (enum kw_kvq_codec)codec, 16, &c), 0);
        same_logits_however_cut(m, c, ids, NT, V, one, cut, dec);
        double worst = 0, scale = 0;
        for (int64_t i = 0; i < NT * V; ++i)
            worst = fmax(worst, fabs((double)one[i] - dense[i])), scale = fmax(scale, fabs((double)dense[i]));
        print_message("%s: largest logit change %.4g (largest logit %.3g)\n",
                      codec == KW_KVQ_INT8   ? "int8"
                      : codec == KW_KVQ_INT6 ? "int6"
                                             : "int4",
                      worst, scale);
        assert_true(worst < (codec == KW_KVQ_INT8 ? 0.03 : codec == KW_KVQ_INT6 ? 0.15 : 0.5) * scale);
        kw_kvcache_free(c);
        c = NULL;
    }
    free(one), free(cut), free(dec), free(dense);
    kw_model_free(m);
    kw_backend_destroy(be);
}

/* Overwriting a layer's rows changes what the next token attends to, and writing back the original rows restores
 * the original logits bit for bit: the C2C fuser's write path reaches attention. */
static void test_overwrite_reaches_attention(void **state) {
    (void)state;
    kw_backend *be = NULL;
    kw_model *m = NULL;
    kw_kvcache *c = NULL;
    assert_int_equal(kw_backend_create_cpu(2, &be), 0);
    const int rc = kw_model_load(be, KW_TEST_DATA_DIR "/model/hf/qwen3_gqa3", NULL, &m);
    if (rc < 0) fail_msg("%s", kw_error_detail());
    const kw_model_config *cfg = kw_model_get_config(m);
    const int32_t ids[8] = {5, 17, 300, 42, 42, 7, 511, 90};
    const int64_t rows = 7, n = rows * cfg->n_kv_heads * cfg->head_dim, V = cfg->vocab;
    float *base = malloc((size_t)V * sizeof *base), *other = malloc((size_t)V * sizeof *other);
    float *k = malloc((size_t)n * sizeof *k), *v = malloc((size_t)n * sizeof *v);
    float *z = calloc((size_t)n, sizeof *z);
    assert_true(base && other && k && v && z);
    for (int dt = 0; dt < 2; ++dt) {
        assert_int_equal(kw_model_create_cache(m, 16, dt ? KW_DTYPE_BF16 : KW_DTYPE_F32, &c), 0);
        assert_int_equal(kw_model_prefill(m, c, ids, rows), 0);
        assert_int_equal(kw_kvcache_read_rows(c, 1, 0, rows, k, v), 0);
        assert_int_equal(kw_model_decode_step(m, c, ids[7], base, NULL, 0), 0);
        /* zero layer 1's V: the last token's output must change */
        assert_int_equal(kw_kvcache_truncate(c, rows), 0);
        assert_int_equal(kw_kvcache_write_rows(c, 1, 0, rows, NULL, z), 0);
        assert_int_equal(kw_model_decode_step(m, c, ids[7], other, NULL, 0), 0);
        double diff = 0;
        for (int64_t i = 0; i < V; ++i)
            diff = fmax(diff, fabs((double)other[i] - (double)base[i]));
        assert_true(diff > 1e-3);
        /* restore: identical again (bf16 values written back are exact) */
        assert_int_equal(kw_kvcache_truncate(c, rows), 0);
        assert_int_equal(kw_kvcache_write_rows(c, 1, 0, rows, k, v), 0);
        assert_int_equal(kw_model_decode_step(m, c, ids[7], other, NULL, 0), 0);
        assert_memory_equal(other, base, (size_t)V * sizeof *base);
        kw_kvcache_free(c);
        c = NULL;
    }
    free(base);
    free(other);
    free(k);
    free(v);
    free(z);
    kw_model_free(m);
    kw_backend_destroy(be);
}

static void test_forward_errors(void **state) {
    (void)state;
    kw_backend *be = NULL;
    kw_model *m = NULL, *other = NULL;
    kw_kvcache *c = NULL, *wrong = NULL;
    assert_int_equal(kw_backend_create_cpu(1, &be), 0);
    assert_int_equal(kw_model_load(be, KW_TEST_DATA_DIR "/model/hf/qwen2_gqa2", NULL, &m), 0);
    assert_int_equal(kw_model_load(be, KW_TEST_DATA_DIR "/model/hf/llama_gqa4", NULL, &other), 0);
    assert_int_equal(kw_model_create_cache(m, 8, KW_DTYPE_F32, &c), 0);
    assert_int_equal(kw_model_create_cache(other, 8, KW_DTYPE_F32, &wrong), 0);
    const int32_t ids[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    assert_int_equal(kw_model_prefill(m, wrong, ids, 3), KW_E_SHAPE);
    assert_int_equal(kw_model_prefill(m, c, ids, 5), 0);
    assert_int_equal(kw_model_prefill(m, c, ids, 4), KW_E_MODEL_CONTEXT); /* 5 + 4 > 8 */
    assert_int_equal(kw_kvcache_length(c), 5);
    const int32_t bad[2] = {3, 512};
    assert_int_equal(kw_model_prefill(m, c, bad, 2), KW_E_TOKEN_ID);
    assert_int_equal(kw_kvcache_length(c), 5);
    assert_int_equal(kw_model_prefill(m, c, ids, 0), KW_E_INVALID_ARG);
    const int32_t neg[1] = {-1};
    const kw_forward_args a = {.ids = ids, .n = 1, .positions = neg};
    assert_int_equal(kw_model_forward(m, c, &a), KW_E_INVALID_ARG);
    assert_int_equal(kw_model_prefill(m, c, ids, 3), 0);
    assert_int_equal(kw_kvcache_length(c), 8);
    kw_kvcache_free(c);
    kw_kvcache_free(wrong);
    kw_model_free(m);
    kw_model_free(other);
    kw_model_free(NULL);
    kw_backend_destroy(be);
}

/* Writes dir/config.json (config text with one substring replaced) and dir/model.safetensors (the qwen2 fixture's
 * tensors minus the one called drop). */
static void write_variant(const char *dir, const char *from, const char *to, const char *drop) {
    char *cfg = NULL;
    size_t len = 0;
    assert_int_equal(kw_file_read_all(KW_TEST_DATA_DIR "/model/hf/qwen2_gqa2/config.json", 1 << 20, &cfg, &len), 0);
    char *at = strstr(cfg, from);
    assert_non_null(at);
    char *edited = malloc(len + strlen(to) + 1);
    assert_non_null(edited);
    snprintf(edited, len + strlen(to) + 1, "%.*s%s%s", (int)(at - cfg), cfg, to, at + strlen(from));
    char *path = kw_path_join(dir, "config.json");
    assert_int_equal(kw_file_write_all(path, edited, strlen(edited)), 0);
    free(path);
    kw_safetensors *st = NULL;
    assert_int_equal(kw_safetensors_open(KW_TEST_DATA_DIR "/model/hf/qwen2_gqa2", &st), 0);
    const size_t n = kw_safetensors_count(st);
    kw_st_write_tensor *w = calloc(n, sizeof *w);
    assert_non_null(w);
    size_t k = 0;
    for (size_t i = 0; i < n; ++i) {
        const kw_st_tensor *t = kw_safetensors_at(st, i);
        if (drop && strcmp(t->name, drop) == 0) continue;
        w[k].name = t->name;
        w[k].dtype = t->dtype;
        w[k].ndim = t->ndim;
        memcpy(w[k].shape, t->shape, sizeof w[k].shape);
        w[k].data = t->data;
        ++k;
    }
    path = kw_path_join(dir, "model.safetensors");
    assert_int_equal(kw_safetensors_write(path, w, k, NULL), 0);
    free(path);
    free(w);
    kw_safetensors_close(st);
    free(cfg);
    free(edited);
}

/* Loader errors: a missing folder, a missing tensor, a shape that disagrees with the config. */
static void test_load_errors(void **state) {
    (void)state;
    kw_backend *be = NULL;
    kw_model *m = NULL;
    assert_int_equal(kw_backend_create_cpu(1, &be), 0);
    assert_true(kw_model_load(be, KW_TEST_DATA_DIR "/model/hf/does_not_exist", NULL, &m) < 0);
    assert_null(m);
    char dir[] = "/tmp/kw_model_test_XXXXXX";
    assert_non_null(mkdtemp(dir));
    write_variant(dir, "\"hidden_size\"", "\"hidden_size\"", "model.layers.1.self_attn.k_proj.bias");
    assert_int_equal(kw_model_load(be, dir, NULL, &m), KW_E_MODEL_MISSING);
    assert_non_null(strstr(kw_error_detail(), "model.layers.1.self_attn.k_proj.bias"));
    write_variant(dir, "\"intermediate_size\": 160", "\"intermediate_size\": 150", NULL);
    assert_int_equal(kw_model_load(be, dir, NULL, &m), KW_E_MODEL_SHAPE);
    assert_non_null(strstr(kw_error_detail(), "mlp"));
    write_variant(dir, "\"intermediate_size\": 160", "\"intermediate_size\": 160", NULL);
    assert_int_equal(kw_model_load(be, dir, NULL, &m), 0);
    kw_model_free(m);
    kw_test_remove_tree(dir);
    kw_backend_destroy(be);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_f32),   cmocka_unit_test(test_round_trip_bf16),
        cmocka_unit_test(test_create_errors),    cmocka_unit_test(test_quantized_int8),
        cmocka_unit_test(test_quantized_int4),   cmocka_unit_test(test_quantized_int6),
        cmocka_unit_test(test_quantized_memory), cmocka_unit_test(test_quantized_forward_invariance),
        cmocka_unit_test(test_layer_windows),    cmocka_unit_test(test_overwrite_reaches_attention),
        cmocka_unit_test(test_forward_errors),   cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_mixed_layers),     cmocka_unit_test(test_layer_codec_lists),
        cmocka_unit_test(test_mixed_forward),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
