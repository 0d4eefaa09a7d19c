/* test_model_bf16act.c: a model run with bf16 activations (kw_model_options.bf16_activations: the bf16 matmul weights
 * in KW_LAYOUT_PANELS_BF16_PAIRS) on gen-model bf16 folders (Qwen3 with its own lm_head; Llama with a tied table,
 * packed in that layout too: get_rows reads its exact values from it, lm_head runs with bf16 activations).
 *
 * - The option acts (logits move) and stays within the bound: each x rounded to bf16 has a relative error of at most
 *   u = 2^-8, RMS at most u / sqrt(3) over a vector; each of the 7 matrices of a layer and lm_head perturbs the
 *   residual stream by about that much of its size, independently, so the logits move by about sqrt(7 L + 1) u /
 *   sqrt(3) relative (RMS); the bound is twice that (as test_model_quantized_file's). Greedy: wherever the exact
 *   model's top logit leads the runner-up by more than twice the largest logit change, the same token.
 * - A greedy run of 12 tokens, one decode step at a time, completes, and its logits are the bits of the same tokens
 *   run as one prefill (batch invariance), on every ISA: the same tokens and logits bits for scalar, AVX2, AVX-512.
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
#include "common/kw_status.h"
#include "kernels/kw_backend.h"
#include "model/kw_genmodel.h"
#include "model/kw_model.h"
#include "model_fixture.h"

#define N_IDS  16
#define N_GEN  12
#define N_ALL  (N_IDS + N_GEN)
#define N_ISAS 3

/* Greedy decode of N_GEN tokens after ids[0..N_IDS) on model m, one step at a time: the tokens into ids[N_IDS..] and
 * every step's logits row (N_GEN x V) into rows. */
static void greedy(kw_model *m, int32_t *ids, float *rows, int64_t V) {
    kw_kvcache *c = NULL;
    assert_int_equal(kw_model_create_cache(m, N_ALL, KW_DTYPE_F32, &c), 0);
    int32_t next = 0;
    kw_forward_args a = {.ids = ids, .n = N_IDS, .mode = KW_LOGITS_LAST, .argmax = &next};
    assert_int_equal(kw_model_forward(m, c, &a), 0);
    for (int i = 0; i < N_GEN; ++i) {
        ids[N_IDS + i] = next;
        a = (kw_forward_args){
            .ids = ids + N_IDS + i, .n = 1, .mode = KW_LOGITS_LAST, .logits = rows + i * V, .argmax = &next};
        assert_int_equal(kw_model_forward(m, c, &a), 0);
    }
    kw_kvcache_free(c);
}

static void run_arch(enum kw_arch arch, int tied) {
    char dir[] = "/tmp/kw_bf16act_test_XXXXXX";
    assert_non_null(mkdtemp(dir));
    kw_genmodel_options go = {.dtype = KW_DTYPE_BF16, .seed = 5};
    assert_int_equal(kw_genmodel_preset("tiny", &arch, &go.cfg), 0);
    go.cfg.hidden = 256;
    go.cfg.head_dim = 64;
    go.cfg.intermediate = 384;
    go.cfg.vocab = 1000;
    go.cfg.tie_embeddings = tied;
    go.cfg.rope.rotary_dim = 64;
    kw_genmodel_fit_special_ids(&go.cfg);
    if (kw_genmodel_write(&go, dir) < 0) fail_msg("gen-model: %s", kw_error_detail());
    const int32_t L = go.cfg.n_layers;

    kw_backend *be = NULL;
    assert_int_equal(kw_backend_create_cpu(2, &be), 0);
    int32_t ids[N_ALL];
    for (int i = 0; i < N_IDS; ++i)
        ids[i] = (int32_t)(((uint64_t)i * 2654435761u + 3) % 997);
    int64_t V = 0, V2 = 0;
    const kw_model_options act = {.bf16_activations = 1};
    float *exact = kwfx_model_logits(be, dir, NULL, ids, N_IDS, &V, NULL);
    float *got = kwfx_model_logits(be, dir, &act, ids, N_IDS, &V2, NULL);
    assert_int_equal(V, V2);
    double se = 0, ss = 0, worst = 0;
    int64_t moved = 0;
    for (int64_t i = 0; i < N_IDS * V; ++i) {
        const double d = (double)got[i] - exact[i];
        se += d * d;
        ss += (double)exact[i] * exact[i];
        worst = fabs(d) > worst ? fabs(d) : worst;
        moved += kw_f32_bits(got[i]) != kw_f32_bits(exact[i]);
    }
    const double rel = sqrt(se / ss), bound = 2.0 * sqrt(7.0 * L + 1.0) * 0x1p-8 / sqrt(3.0);
    int same = 0, decided = 0;
    for (int t = 0; t < N_IDS; ++t) {
        const float *e = exact + t * V, *g = got + t * V;
        int64_t top = 0, gtop = 0;
        for (int64_t v = 1; v < V; ++v) {
            top = e[v] > e[top] ? v : top;
            gtop = g[v] > g[gtop] ? v : gtop;
        }
        float second = -INFINITY;
        for (int64_t v = 0; v < V; ++v)
            second = v != top && e[v] > second ? e[v] : second;
        if (e[top] - second > 2.0 * worst) {
            ++decided;
            same += gtop == top;
        }
    }
    print_message("    %s%s: logits relative RMS %.3g from the exact path (bound %.3g), %lld of %lld moved; greedy "
                  "decided at %d of %d positions, same at %d\n",
                  kw_arch_name(arch), tied ? " (tied)" : "", rel, bound, (long long)moved, (long long)(N_IDS * V),
                  decided, N_IDS, same);
    assert_true(moved > 0);
    assert_true(rel <= bound);
    assert_int_equal(same, decided);
    free(exact), free(got);
    kw_backend_destroy(be);

    /* greedy, step by step, on every ISA: the same tokens and bits, and the bits of one prefill of those tokens */
    const char *isas[N_ISAS];
    const int n_isa = kw_backend_cpu_isas(isas);
    int32_t first[N_ALL];
    float *rows0 = malloc((size_t)(N_GEN * V) * sizeof(float)), *rows = malloc((size_t)(N_GEN * V) * sizeof(float));
    assert_true(rows0 && rows);
    for (int i = 0; i < n_isa; ++i) {
        setenv("KW_CPU_ISA", isas[i], 1);
        assert_int_equal(kw_backend_create_cpu(2, &be), 0);
        unsetenv("KW_CPU_ISA");
        kw_model *m = NULL;
        assert_int_equal(kw_model_load(be, dir, &act, &m), 0);
        int32_t seq[N_ALL];
        memcpy(seq, ids, sizeof(int32_t) * N_IDS);
        greedy(m, seq, i ? rows : rows0, V);
        float *all = kwfx_prompt_logits(m, seq, N_ALL); /* row N_IDS + j: the logits of decode step j */
        for (int64_t j = 0; j < N_GEN * V; ++j)
            if (kw_f32_bits(all[N_IDS * V + j]) != kw_f32_bits((i ? rows : rows0)[j]))
                fail_msg("%s: decode step %lld's logit %lld is not the prefill's", isas[i], (long long)(j / V),
                         (long long)(j % V));
        free(all);
        if (i == 0)
            memcpy(first, seq, sizeof first);
        else {
            assert_memory_equal(seq, first, sizeof first);
            for (int64_t j = 0; j < N_GEN * V; ++j)
                if (kw_f32_bits(rows[j]) != kw_f32_bits(rows0[j]))
                    fail_msg("%s: decode logit %lld differs from %s's", isas[i], (long long)j, isas[0]);
        }
        kw_model_free(m);
        kw_backend_destroy(be);
    }
    free(rows0), free(rows);
    char cmd[100];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

static void test_qwen3_untied(void **state) {
    (void)state;
    run_arch(KW_ARCH_QWEN3, 0);
}

static void test_llama_tied(void **state) {
    (void)state;
    run_arch(KW_ARCH_LLAMA, 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_qwen3_untied),
        cmocka_unit_test(test_llama_tied),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
