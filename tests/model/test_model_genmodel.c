/* test_model_genmodel.c: the forward pass and greedy generation on `kvwire gen-model` tiny models with the real
 * vocabularies (151936 / 128256 / 262144 rows, bf16 weights; Gemma3's 70 rows also cross its window of 16): all-rows
 * logits over more rows than one lm_head block holds (the logits scratch is split), equal to token-by-token decode;
 * generation with the automatic bf16 logits rounding equal to a host argmax over bf16-rounded logits with the lowest id
 * on ties; deterministic. */
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

#include "common/kw_half.h"
#include "common/kw_status.h"
#include "kernels/kw_backend.h"
#include "model/kw_generate.h"
#include "model/kw_genmodel.h"
#include "model/kw_model.h"
#include "model_fixture.h"
#include "tests/kw_test_util.h"

static int32_t host_argmax_bf16(const float *row, int64_t V) {
    int32_t best = 0;
    float bv = kw_round_bf16(row[0]);
    for (int64_t i = 1; i < V; ++i) {
        const float r = kw_round_bf16(row[i]);
        if (r > bv) {
            bv = r;
            best = (int32_t)i;
        }
    }
    return best;
}

static void run_arch(enum kw_arch arch) {
    char dir[] = "/tmp/kw_genmodel_test_XXXXXX";
    assert_non_null(mkdtemp(dir));
    kw_genmodel_options go = {.dtype = KW_DTYPE_BF16, .seed = 5};
    assert_int_equal(kw_genmodel_preset("tiny", &arch, &go.cfg), 0);
    int rc = kw_genmodel_write(&go, dir);
    if (rc < 0) fail_msg("gen-model: %s", kw_error_detail());

    kw_backend *be = NULL;
    kw_model *m = NULL;
    assert_int_equal(kw_backend_create_cpu(2, &be), 0);
    rc = kw_model_load(be, dir, NULL, &m);
    if (rc < 0) fail_msg("load: %s", kw_error_detail());
    const kw_model_config *cfg = kw_model_get_config(m);
    const int64_t V = cfg->vocab, P = 70; /* 70 rows > the 55-row logits block of a 152k vocabulary */
    assert_true(V > 100000);
    assert_int_equal(kw_model_logits_weight_dtype(m), KW_DTYPE_BF16);
    int32_t ids[70];
    for (int64_t i = 0; i < P; ++i)
        ids[i] = (int32_t)(((uint64_t)i * 2654435761u) % (uint64_t)(V - 1));

    float *all = malloc((size_t)(P * V) * sizeof *all), *step = malloc((size_t)V * sizeof *step);
    assert_true(all && step);
    kw_kvcache *ca = NULL, *cb = NULL;
    assert_int_equal(kw_model_create_cache(m, P + 16, KW_DTYPE_F32, &ca), 0);
    assert_int_equal(kw_model_create_cache(m, P + 16, KW_DTYPE_F32, &cb), 0);
    const kw_forward_args a = {.ids = ids, .n = P, .mode = KW_LOGITS_ALL, .logits = all};
    assert_int_equal(kw_model_forward(m, ca, &a), 0);
    double worst = 0;
    for (int64_t t = 0; t < P; ++t) {
        assert_int_equal(kw_model_decode_step(m, cb, ids[t], step, NULL, 0), 0);
        worst = fmax(worst, kwfx_rel_diff(step, all + t * V, V));
    }
    print_message("  %s: all-rows logits vs decode steps %.3g\n", kw_arch_name(arch), worst);
    assert_true(worst <= 1e-5);

    /* greedy (auto = bf16 rounding for this bf16 model) vs host bf16 argmax of the step logits */
    kw_kvcache *cg = NULL;
    assert_int_equal(kw_model_create_cache(m, P + 16, KW_DTYPE_BF16, &cg), 0);
    const kw_generate_options o = {.max_new_tokens = 12, .eos_ids = ids, .n_eos = 0}; /* never stop early */
    kw_generate_result r, r2;
    assert_int_equal(kw_generate_greedy(m, cg, ids, 8, &o, &r), 0);
    assert_int_equal(r.n, 12);
    assert_int_equal(r.stopped_eos, 0);
    kw_kvcache *ch = NULL;
    assert_int_equal(kw_model_create_cache(m, P + 16, KW_DTYPE_BF16, &ch), 0);
    const kw_forward_args pre = {.ids = ids, .n = 8, .mode = KW_LOGITS_LAST, .logits = step};
    assert_int_equal(kw_model_forward(m, ch, &pre), 0);
    for (int64_t i = 0; i < r.n; ++i) {
        assert_int_equal(r.ids[i], host_argmax_bf16(step, V));
        if (i + 1 < r.n) assert_int_equal(kw_model_decode_step(m, ch, r.ids[i], step, NULL, 0), 0);
    }
    /* deterministic across runs */
    assert_int_equal(kw_kvcache_reset(cg), 0);
    assert_int_equal(kw_generate_greedy(m, cg, ids, 8, &o, &r2), 0);
    assert_int_equal(r2.n, r.n);
    assert_memory_equal(r2.ids, r.ids, (size_t)r.n * sizeof *r.ids);

    kw_generate_result_free(&r);
    kw_generate_result_free(&r2);
    kw_kvcache_free(ca);
    kw_kvcache_free(cb);
    kw_kvcache_free(cg);
    kw_kvcache_free(ch);
    free(all);
    free(step);
    kw_model_free(m);
    kw_backend_destroy(be);
    kw_test_remove_tree(dir);
}

static void test_genmodel_qwen3(void **state) {
    (void)state;
    run_arch(KW_ARCH_QWEN3);
}

static void test_genmodel_llama(void **state) {
    (void)state;
    run_arch(KW_ARCH_LLAMA);
}

static void test_genmodel_gemma3(void **state) {
    (void)state;
    run_arch(KW_ARCH_GEMMA3);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_genmodel_qwen3),
        cmocka_unit_test(test_genmodel_llama),
        cmocka_unit_test(test_genmodel_gemma3),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
