/* test_model_quantized_file.c: kw_quantize_file on gen-model folders (Llama with its own output matrix and permuted
 * q/k rows, Qwen3 with tied embeddings and q/k norms, Gemma 3 with its 1 + w norms and sliding layers; f32 weights,
 * hidden 256 so every matrix row is whole Q4_K blocks), each written as F32, BF16, Q8_0, Q4_K and Q4_K_M GGUF files,
 * loaded by kvwire (quantized weights kept quantized) and run against the HF folder.
 *
 * - F32: the same weights in another container, so the logits agree to 1e-5 relative (summation order at most):
 *   a wrong name, a missing permutation or a norm without its + 1 moves them by O(1).
 * - The others: eps = the relative RMS error of the file's matrices against the source weights (measured here by
 *   dequantizing them). Each of the 7 matrices of a layer and the output matrix perturbs the residual stream by about
 *   eps of its size, independently, so the logits move by about sqrt(7 L + 1) * eps relative (RMS); the bound is
 *   twice that. And greedy: wherever the reference's top logit leads the runner-up by more than twice the largest
 *   logit change, the quantized model picks the same token (otherwise it cannot).
 * - Q8_0, Q4_K and Q4_K_M again with int8 activations (KW_GGUF_WEIGHTS_QUANTIZED_INT8): the bound with the
 *   activations' rounding added (check_int8_activations); the Q4_K file with int8 activations reads as many weight
 *   bytes per token as without (QPANELS_U4_SB_X8 and U4_SB), the Q8_0 file fewer (QPANELS_S8_X8's f16 scales: 1.0625
 *   bytes per weight, not S8's 1.125), and its logits are the same bits on every CPU ISA (scalar, AVX2, AVX-512).
 * - The weight bytes a decode token reads (kw_model_weight_bytes_per_token, the bytes `kvwire bench model` divides the
 *   bandwidth by) equal a count by hand from the file's tensor types and the layouts' definitions, per file and mode.
 * - Determinism: two runs write the same bytes. */
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
#include "common/kw_status.h"
#include "kernels/kw_backend.h"
#include "model/kw_dequant.h"
#include "model/kw_genmodel.h"
#include "model/kw_gguf.h"
#include "model/kw_model.h"
#include "model/kw_quantize.h"
#include "model_fixture.h"

#define N_IDS 24

/* The relative RMS difference of the 2-D tensors of GGUF file a against those of file ref (same names). */
static double weight_error(const char *a_path, const char *ref_path) {
    kw_gguf *a = NULL, *ref = NULL;
    assert_int_equal(kw_gguf_open(a_path, &a), 0);
    assert_int_equal(kw_gguf_open(ref_path, &ref), 0);
    double se = 0, ss = 0;
    assert_int_equal(kw_gguf_tensor_count(a), kw_gguf_tensor_count(ref));
    for (size_t i = 0; i < kw_gguf_tensor_count(a); ++i) {
        const kw_gguf_tensor *t = kw_gguf_tensor_at(a, i), *r = kw_gguf_find_tensor(ref, t->name);
        assert_non_null(r);
        assert_int_equal(r->type, KW_GGML_F32);
        if (t->n_dims != 2) continue;
        const int64_t cols = t->ne[0], rows = t->ne[1];
        size_t row_bytes = 0;
        assert_int_equal(kw_ggml_row_bytes(t->type, cols, &row_bytes), 0);
        float *y = malloc((size_t)cols * sizeof *y);
        assert_non_null(y);
        for (int64_t row = 0; row < rows; ++row) {
            assert_int_equal(
                kw_dequant_row(t->type, (const uint8_t *)t->data + (size_t)row * row_bytes, cols, KW_DTYPE_F32, y), 0);
            const float *x = (const float *)r->data + row * cols;
            for (int64_t j = 0; j < cols; ++j) {
                se += ((double)y[j] - x[j]) * ((double)y[j] - x[j]);
                ss += (double)x[j] * x[j];
            }
        }
        free(y);
    }
    kw_gguf_close(a);
    kw_gguf_close(ref);
    return sqrt(se / ss);
}

/* The weight bytes a decode token reads, counted by hand from GGUF file path's tensor types: every 1-D tensor (the
 * norms, f32 in these files) at 4 bytes per value; every 2-D one (rows padded to whole 64-row panels) at the bytes per
 * weight of the layout it is kept in, with int8 activations (int8 1) or not, written out here from the layouts'
 * definitions (kernels/kw_backend.h); token_embd only when no output.weight exists (tied: the table is the lm_head;
 * else decode reads one row of it). F32: 4 (f32 panels). Q8_0 in QPANELS_S8: 32 codes and an f32 scale per 32
 * weights; in QPANELS_S8_X8: 32 codes and an f16 scale. Q4_K in QPANELS_U4_SB(_X8): per 256 weights, 128 bytes of
 * nibbles, f32 d and m, and an int8 scale and offset per 32. Q6_K with int8 activations in QPANELS_S6_G16_SB_X8: per
 * 256, 192 bytes of 6-bit codes, an f32 d and an int8 scale per 16. 0 when a tensor's type has no count here (Q6_K
 * without int8 activations: S6_G16_SB or S8_G16_SB by the CPU). */
static size_t hand_bytes_per_token(const char *path, int int8) {
    kw_gguf *g = NULL;
    assert_int_equal(kw_gguf_open(path, &g), 0);
    const int tied = kw_gguf_find_tensor(g, "output.weight") == NULL;
    double bytes = 0;
    for (size_t i = 0; i < kw_gguf_tensor_count(g); ++i) {
        const kw_gguf_tensor *t = kw_gguf_tensor_at(g, i);
        if (t->n_dims == 1) {
            assert_int_equal(t->type, KW_GGML_F32);
            bytes += 4.0 * (double)t->ne[0];
            continue;
        }
        if (!tied && strcmp(t->name, "token_embd.weight") == 0) continue;
        const double weights = (double)t->ne[0] * (double)((t->ne[1] + 63) / 64 * 64); /* ne[0]: k, ne[1]: rows */
        double per = 0;
        if (t->type == KW_GGML_F32) per = 4.0;
        if (t->type == KW_GGML_Q8_0) per = int8 ? (32.0 + 2.0) / 32.0 : (32.0 + 4.0) / 32.0;
        if (t->type == KW_GGML_Q4_K) per = (128.0 + 2.0 * 4.0 + 2.0 * 8.0) / 256.0;
        if (t->type == KW_GGML_Q6_K && int8) per = (192.0 + 4.0 + 16.0) / 256.0;
        if (per == 0) {
            kw_gguf_close(g);
            return 0;
        }
        bytes += weights * per;
    }
    kw_gguf_close(g);
    return (size_t)bytes;
}

/* The same file with KW_GGUF_WEIGHTS_QUANTIZED_INT8 (Q8_0, Q4_K and Q6_K matmuls with int8 activations per 32): other
 * logits than the exact kept-quantized ones (the option acts), within the bound with the activations' rounding added
 * to the weights': a group's step is amax / 127 and amax <= sqrt(32) RMS of the group, so the relative RMS rounding
 * error of an activation vector is at most sqrt(32) / (127 sqrt(12)) = 0.0129, and the two errors add in quadrature. */
static void check_int8_activations(kw_backend *be, const char *path, const int32_t *ids, const float *want,
                                   const float *exact, int64_t V, int32_t L, double eps, int all_q4_k, int q8_0,
                                   size_t exact_bytes) {
    const kw_model_options o = {.gguf_weights = KW_GGUF_WEIGHTS_QUANTIZED_INT8};
    int64_t V2 = 0;
    size_t bytes = 0;
    float *got = kwfx_model_logits(be, path, &o, ids, N_IDS, &V2, &bytes);
    assert_int_equal(bytes, hand_bytes_per_token(path, 1)); /* what bench model divides the bandwidth by */
    /* every matmul weight Q4_K with K a multiple of 256: kept in QPANELS_U4_SB_X8, as many bytes as the exact path's
     * QPANELS_U4_SB (0.59 per weight, not U4_X8's 0.75) */
    if (all_q4_k) assert_int_equal(bytes, exact_bytes);
    if (q8_0) { /* QPANELS_S8_X8 (f16 scales) instead of S8 (f32): fewer bytes; the same logits on every ISA */
        assert_true(bytes < exact_bytes);
        const char *isas[3];
        const int n_isa = kw_backend_cpu_isas(isas);
        for (int i = 0; i < n_isa; ++i) {
            setenv("KW_CPU_ISA", isas[i], 1);
            kw_backend *b = NULL;
            assert_int_equal(kw_backend_create_cpu(2, &b), 0);
            unsetenv("KW_CPU_ISA");
            float *on = kwfx_model_logits(b, path, &o, ids, N_IDS, &V2, NULL);
            if (memcmp(on, got, (size_t)(N_IDS * V) * sizeof(float)) != 0)
                fail_msg("Q8_0 with int8 activations: other logits on %s", isas[i]);
            free(on);
            kw_backend_destroy(b);
        }
        print_message("    int8 activations: %zu weight bytes per token (exact path %zu); same logits on %d ISAs\n",
                      bytes, exact_bytes, n_isa);
    }
    assert_int_equal(V2, V);
    double se = 0, ss = 0, sx = 0, ssx = 0;
    int64_t moved = 0;
    for (int64_t i = 0; i < N_IDS * V; ++i) {
        const double d = (double)got[i] - want[i], dx = (double)got[i] - exact[i];
        se += d * d;
        ss += (double)want[i] * want[i];
        sx += dx * dx;
        ssx += (double)exact[i] * exact[i];
        moved += got[i] != exact[i];
    }
    const double eps_a = sqrt(32.0) / (127.0 * sqrt(12.0)), rel = sqrt(se / ss), rel_x = sqrt(sx / ssx);
    const double bound = 2.0 * sqrt(7.0 * L + 1.0) * sqrt(eps * eps + eps_a * eps_a);
    const double bound_x = 2.0 * sqrt(7.0 * L + 1.0) * eps_a; /* against the same weights without int8 activations */
    print_message(
        "    int8 activations: logits relative RMS %.3g (bound %.3g); against the exact kept-quantized ones %.3g"
        " (bound %.3g); %lld of %lld logits moved\n",
        rel, bound, rel_x, bound_x, (long long)moved, (long long)(N_IDS * V));
    assert_true(moved > 0);
    assert_true(rel <= bound);
    assert_true(rel_x <= bound_x);
    free(got);

    /* decode steps with a layer's q/k/v and gate/up as one kw_op_matmul_shared each (the default) and as separate
     * matmuls (kw_model_set_shared_matmuls(0)): the same logits, bit for bit */
    kw_model *m = NULL;
    assert_int_equal(kw_model_load(be, path, &o, &m), 0);
    /* the spans bench model reads for the bound are those bytes: non-NULL memory, summing to the count */
    size_t n_spans = 0, span_sum = 0;
    const kw_model_span *spans = kw_model_weight_spans(m, &n_spans);
    for (size_t i = 0; i < n_spans; ++i) {
        assert_non_null(spans[i].data);
        span_sum += spans[i].bytes;
    }
    assert_int_equal(span_sum, bytes);
    float *steps[2];
    for (int shared = 0; shared < 2; ++shared) {
        steps[shared] = malloc((size_t)(N_IDS * V) * sizeof(float));
        assert_non_null(steps[shared]);
        kw_model_set_shared_matmuls(m, shared);
        kw_kvcache *cache = NULL;
        assert_int_equal(kw_model_create_cache(m, N_IDS, KW_DTYPE_BF16, &cache), 0);
        for (int64_t t = 0; t < N_IDS; ++t) {
            int32_t next;
            assert_int_equal(kw_model_decode_step(m, cache, ids[t], steps[shared] + t * V, &next, 0), 0);
        }
        kw_kvcache_free(cache);
    }
    for (int64_t i = 0; i < N_IDS * V; ++i)
        if (memcmp(&steps[0][i], &steps[1][i], sizeof(float)) != 0)
            fail_msg("decode logit %lld: %.9g with separate matmuls, %.9g shared", (long long)i, steps[0][i],
                     steps[1][i]);
    free(steps[0]), free(steps[1]);
    kw_model_free(m);
}

static void run_arch(enum kw_arch arch, int tied) {
    char dir[] = "/tmp/kw_quantize_test_XXXXXX";
    assert_non_null(mkdtemp(dir));
    kw_genmodel_options go = {.dtype = KW_DTYPE_F32, .seed = 11};
    assert_int_equal(kw_genmodel_preset("tiny", &arch, &go.cfg), 0);
    go.cfg.hidden = 256;
    go.cfg.head_dim = 64;
    go.cfg.intermediate = 512;
    go.cfg.vocab = 1024;
    go.cfg.tie_embeddings = tied;
    go.cfg.rope.rotary_dim = 64;
    if (arch == KW_ARCH_LLAMA) { /* llama3 RoPE scaling has no GGUF form kvwire reads (a rope_freqs tensor) */
        go.cfg.rope.scaling = KW_ROPE_SCALING_NONE;
        go.cfg.rope.factor = 1.0;
    }
    kw_genmodel_fit_special_ids(&go.cfg);
    if (arch == KW_ARCH_GEMMA3) go.cfg.query_pre_attn_scalar = go.cfg.head_dim;
    int rc = kw_genmodel_write(&go, dir);
    if (rc < 0) fail_msg("gen-model: %s", kw_error_detail());
    const int32_t L = go.cfg.n_layers;

    kw_backend *be = NULL;
    assert_int_equal(kw_backend_create_cpu(2, &be), 0);
    int32_t ids[N_IDS];
    for (int i = 0; i < N_IDS; ++i)
        ids[i] = (int32_t)(((uint64_t)i * 2654435761u + 7) % 1000);
    int64_t V = 0;
    float *want = kwfx_model_logits(be, dir, NULL, ids, N_IDS, &V, NULL);

    static const char *const names[] = {"f32", "bf16", "q8_0", "q4_k", "q4_k_m"};
    static const uint32_t main_type[] = {KW_GGML_F32, KW_GGML_BF16, KW_GGML_Q8_0, KW_GGML_Q4_K, KW_GGML_Q4_K};
    char ref_path[600], path[600], again[600];
    snprintf(ref_path, sizeof ref_path, "%s/f32.gguf", dir);
    for (int s = 0; s < 5; ++s) {
        snprintf(path, sizeof path, "%s/%s.gguf", dir, names[s]);
        kw_quantize_stats st;
        rc = kw_quantize_file(dir, path, (enum kw_quant_scheme)s, NULL, &st);
        if (rc < 0) fail_msg("quantize %s: %s", names[s], kw_error_detail());
        assert_true(st.tensors[main_type[s]] > 0);
        if (s == KW_QUANT_Q4_K_M) assert_true(st.tensors[KW_GGML_Q6_K] > 0); /* attn_v, ffn_down of layer 1 */
        snprintf(again, sizeof again, "%s/%s.again.gguf", dir, names[s]);
        assert_int_equal(kw_quantize_file(dir, again, (enum kw_quant_scheme)s, NULL, NULL), 0);
        kwfx_expect_same_file(path, again);
        unlink(again);

        int64_t V2 = 0;
        size_t exact_bytes = 0;
        float *got = kwfx_model_logits(be, path, NULL, ids, N_IDS, &V2, &exact_bytes);
        assert_int_equal(V2, V);
        if (s != KW_QUANT_BF16) { /* BF16: dequantized at load */
            const size_t hand = hand_bytes_per_token(path, 0);
            if (hand)
                assert_int_equal(exact_bytes, hand);
            else
                assert_int_equal(s, KW_QUANT_Q4_K_M); /* its Q6_K tensors' layout depends on the CPU */
        }
        double se = 0, ss = 0, max_d = 0;
        for (int64_t i = 0; i < N_IDS * V; ++i) {
            const double d = (double)got[i] - want[i];
            se += d * d;
            ss += (double)want[i] * want[i];
            max_d = fmax(max_d, fabs(d));
        }
        const double rel = sqrt(se / ss);
        const double eps = s == 0 ? 0.0 : weight_error(path, ref_path);
        const double bound = s == 0 ? 1e-5 : 2.0 * sqrt(7.0 * L + 1.0) * eps;
        int checked = 0;
        for (int t = 0; t < N_IDS; ++t) {
            const float *w = want + t * V, *g = got + t * V;
            int64_t best = 0, gbest = 0;
            for (int64_t v = 1; v < V; ++v) {
                if (w[v] > w[best]) best = v;
                if (g[v] > g[gbest]) gbest = v;
            }
            float second = -INFINITY;
            for (int64_t v = 0; v < V; ++v)
                if (v != best && w[v] > second) second = w[v];
            if (w[best] - second > 2 * max_d) {
                ++checked;
                if (gbest != best)
                    fail_msg("%s %s position %d: greedy %lld, reference %lld (margin %g, max change %g)",
                             kw_arch_name(arch), names[s], t, (long long)gbest, (long long)best,
                             (double)(w[best] - second), max_d);
            }
        }
        print_message("  %s %-6s: weight error %.4f, logits relative RMS %.3g (bound %.3g), greedy checked at %d/%d\n",
                      kw_arch_name(arch), names[s], eps, rel, bound, checked, N_IDS);
        assert_true(rel <= bound);
        if (s >= KW_QUANT_Q8_0)
            check_int8_activations(be, path, ids, want, got, V, L, eps, s == KW_QUANT_Q4_K, s == KW_QUANT_Q8_0,
                                   exact_bytes);
        free(got);
    }
    free(want);
    kw_backend_destroy(be);
    /* the folder and its files */
    static const char *const files[] = {"f32.gguf",    "bf16.gguf",   "q8_0.gguf",         "q4_k.gguf",
                                        "q4_k_m.gguf", "config.json", "model.safetensors", "generation_config.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; ++i) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        unlink(path);
    }
    rmdir(dir);
}

static void test_llama_untied(void **state) {
    (void)state;
    run_arch(KW_ARCH_LLAMA, 0);
}

static void test_qwen3_tied(void **state) {
    (void)state;
    run_arch(KW_ARCH_QWEN3, 1);
}

static void test_gemma3(void **state) {
    (void)state;
    run_arch(KW_ARCH_GEMMA3, 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llama_untied),
        cmocka_unit_test(test_qwen3_tied),
        cmocka_unit_test(test_gemma3),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
