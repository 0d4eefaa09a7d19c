/* test_model_invariance.c: a forward pass gives the same bits however it is scheduled. On tiny `kvwire gen-model`
 * models (Qwen3 with tied embeddings, Llama untied, Gemma 3 with its window of 16 and a final softcap; bf16 and f32
 * weights; f32 and bf16 caches), prefilling positions
 * 0..L-1 in one call, in uneven sections, token by token, and in chunks of a small max_batch gives bit-identical KV
 * rows in every layer and bit-identical logits at every position, with 1 and 2 threads and on every ISA this machine
 * has (scalar, AVX2, AVX-512), all against the scalar one-call run. This is the property the daemons rely on: the
 * sharer and the receiver prefill in other chunks than `kvwire c2c` does and must still produce its tokens.
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

#include "common/kw_half.h"
#include "kernels/kw_backend.h"
#include "model/kw_genmodel.h"
#include "model/kw_kvcache.h"
#include "model/kw_model.h"
#include "tests/kw_test_util.h"

enum { L = 29 };

/* One run's results: every layer's K and V rows (layers, L, Hkv, D) and the logits of every position (L, vocab). */
typedef struct kw_run {
    float *k, *v, *logits;
} kw_run;

static void kw_run_free(kw_run *r) {
    free(r->k), free(r->v), free(r->logits);
}

/* The calls list that selects kw_model_forward_layers (two calls of 17 and L - 17 tokens). */
static const int64_t kw_layer_by_layer_marker[1] = {0};
#define KW_LAYER_BY_LAYER kw_layer_by_layer_marker

/* What the layer callback saw: every call must come in layer order with the call's rows. */
typedef struct kw_layer_log {
    int32_t calls, next_layer, n_layers;
    int64_t row0;
} kw_layer_log;

static int kw_on_layer(void *user, int32_t layer, int64_t row0, int64_t n) {
    kw_layer_log *log = user;
    if (layer == 0) log->row0 = row0;
    assert_int_equal(layer, log->next_layer);
    assert_int_equal(row0, log->row0);
    assert_true(row0 == 0 ? n == 17 : (row0 == 17 && n == L - 17));
    log->next_layer = layer + 1 < log->n_layers ? layer + 1 : 0;
    ++log->calls;
    return 0;
}

/* Prefills ids[0..L) on a fresh backend in calls of the given sizes (a 0-terminated list; NULL: one call), with the
 * model's max_batch, and collects the results. */
static void kw_prefill(const char *dir, const char *isa, int threads, int32_t max_batch, enum kw_dtype cache_dtype,
                       const int32_t *ids, const int64_t *calls, kw_run *out) {
    setenv("KW_CPU_ISA", isa, 1);
    kw_backend *be = NULL;
    assert_int_equal(kw_backend_create_cpu(threads, &be), 0);
    unsetenv("KW_CPU_ISA");
    kw_model *m = NULL;
    const kw_model_options mo = {.max_batch = max_batch};
    assert_int_equal(kw_model_load(be, dir, &mo, &m), 0);
    const kw_model_config *c = kw_model_get_config(m);
    kw_kvcache *cache = NULL;
    assert_int_equal(kw_model_create_cache(m, L + 4, cache_dtype, &cache), 0);
    const size_t row = (size_t)c->n_kv_heads * (size_t)c->head_dim;
    out->k = malloc((size_t)c->n_layers * L * row * sizeof(float));
    out->v = malloc((size_t)c->n_layers * L * row * sizeof(float));
    out->logits = malloc((size_t)L * (size_t)c->vocab * sizeof(float));
    assert_true(out->k && out->v && out->logits);
    const int64_t one[2] = {L, 0};
    int64_t done = 0;
    if (calls == KW_LAYER_BY_LAYER) { /* layer-major, as the sharer streams: K/V only, logits left as they are */
        kw_layer_log log = {.n_layers = c->n_layers};
        assert_int_equal(kw_model_forward_layers(m, cache, ids, 17, NULL, kw_on_layer, &log), 0);
        assert_int_equal(kw_model_forward_layers(m, cache, ids + 17, L - 17, NULL, kw_on_layer, &log), 0);
        assert_int_equal(log.calls, 2 * c->n_layers);
        done = L;
    }
    for (const int64_t *n = calls ? calls : one; calls != KW_LAYER_BY_LAYER && *n && done < L; ++n) {
        const int64_t cnt = done + *n <= L ? *n : L - done;
        const kw_forward_args a = {.ids = ids + done,
                                   .n = cnt,
                                   .mode = KW_LOGITS_ALL,
                                   .logits = out->logits + (size_t)done * (size_t)c->vocab};
        assert_int_equal(kw_model_forward(m, cache, &a), 0);
        done += cnt;
    }
    assert_int_equal(done, L);
    for (int32_t l = 0; l < c->n_layers; ++l)
        assert_int_equal(
            kw_kvcache_read_rows(cache, l, 0, L, out->k + (size_t)l * L * row, out->v + (size_t)l * L * row), 0);
    kw_kvcache_free(cache);
    kw_model_free(m);
    kw_backend_destroy(be);
}

static void kw_expect_same(const float *a, const float *b, size_t n, const char *what) {
    for (size_t i = 0; i < n; ++i) {
        if (kw_f32_bits(a[i]) != kw_f32_bits(b[i]) && !(isnan(a[i]) && isnan(b[i]))) {
            fprintf(stderr, "%s: value %zu differs: %.9g vs %.9g\n", what, i, (double)a[i], (double)b[i]);
            fail();
        }
    }
}

static void kw_check_model(enum kw_arch arch, int tied, enum kw_dtype wdtype, enum kw_dtype cache_dtype) {
    char dir[] = "/tmp/kw_invariance_XXXXXX";
    assert_non_null(mkdtemp(dir));
    kw_genmodel_options go = {.dtype = wdtype, .seed = 11};
    assert_int_equal(kw_genmodel_preset("tiny", &arch, &go.cfg), 0);
    go.cfg.tie_embeddings = tied;
    go.cfg.vocab =
        3001; /* no tokenizer needed; a cut vocabulary keeps the scalar runs quick (and the last panel partial) */
    kw_genmodel_fit_special_ids(&go.cfg);
    if (arch == KW_ARCH_GEMMA3) go.cfg.final_logit_softcap = 5.0; /* the tanh path too */
    assert_int_equal(kw_genmodel_write(&go, dir), 0);
    const kw_model_config *c = &go.cfg;
    const size_t kv = (size_t)c->n_layers * L * (size_t)c->n_kv_heads * (size_t)c->head_dim;
    const size_t lg = (size_t)L * (size_t)c->vocab;

    int32_t ids[L];
    uint32_t s = 7u;
    for (int i = 0; i < L; ++i) {
        s = s * 1664525u + 1013904223u;
        ids[i] = (int32_t)(s % (uint32_t)c->vocab);
    }
    kw_run want;
    kw_prefill(dir, "scalar", 1, 0, cache_dtype, ids, NULL, &want);

    static const int64_t sections[] = {5, 1, 14, 3, 100, 0};
    static const int64_t tokens[] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
                                     1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0};
    _Static_assert(sizeof tokens / sizeof tokens[0] == L + 1, "one call per token");
    const char *isas[3];
    const int n_isa = kw_backend_cpu_isas(isas);
    for (int i = 0; i < n_isa; ++i) {
        for (int threads = 1; threads <= 3; ++threads) {
            struct {
                const int64_t *calls;
                int32_t max_batch;
                const char *name;
            } ways[] = {{NULL, 0, "one call"},
                        {sections, 0, "sections 5+1+14+3+6"},
                        {tokens, 0, "token by token"},
                        {NULL, 4, "one call, max_batch 4"},
                        {KW_LAYER_BY_LAYER, 5, "layer by layer, max_batch 5"}};
            for (size_t w = 0; w < sizeof ways / sizeof ways[0]; ++w) {
                kw_run got;
                kw_prefill(dir, isas[i], threads, ways[w].max_batch, cache_dtype, ids, ways[w].calls, &got);
                char what[192];
                snprintf(what, sizeof what, "%s %s weights, %s cache, KV, %s, %d threads, %s", kw_arch_name(arch),
                         kw_dtype_name(wdtype), kw_dtype_name(cache_dtype), isas[i], threads, ways[w].name);
                kw_expect_same(got.k, want.k, kv, what);
                kw_expect_same(got.v, want.v, kv, what);
                snprintf(what, sizeof what, "%s logits, %s, %d threads, %s", kw_arch_name(arch), isas[i], threads,
                         ways[w].name);
                if (ways[w].calls != KW_LAYER_BY_LAYER) kw_expect_same(got.logits, want.logits, lg, what);
                kw_run_free(&got);
            }
        }
    }
    kw_run_free(&want);
    assert_int_equal(kw_test_remove_tree(dir), 0);
}

static void test_qwen3_tied_bf16(void **state) {
    (void)state;
    kw_check_model(KW_ARCH_QWEN3, 1, KW_DTYPE_BF16, KW_DTYPE_F32);
}

static void test_llama_untied_f32_bf16_cache(void **state) {
    (void)state;
    kw_check_model(KW_ARCH_LLAMA, 0, KW_DTYPE_F32, KW_DTYPE_BF16);
}

static void test_qwen2_f16(void **state) {
    (void)state;
    kw_check_model(KW_ARCH_QWEN2, 0, KW_DTYPE_F16, KW_DTYPE_F32);
}

/* 29 positions against a window of 16: sections and chunks that start inside the window, the window's edge moving
 * within a chunk, the bf16 embedding rounding and the softcap. */
static void test_gemma3_bf16(void **state) {
    (void)state;
    kw_check_model(KW_ARCH_GEMMA3, 1, KW_DTYPE_BF16, KW_DTYPE_BF16);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_qwen3_tied_bf16),
        cmocka_unit_test(test_llama_untied_f32_bf16_cache),
        cmocka_unit_test(test_qwen2_f16),
        cmocka_unit_test(test_gemma3_bf16),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
