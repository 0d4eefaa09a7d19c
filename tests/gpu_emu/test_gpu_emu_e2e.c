/* test_gpu_emu_e2e.c: end-to-end greedy decoding on the CUDA backend run by the CUDA emulator (kernels/cuda/emu),
 * against the CPU backend: receiver-only (kw_model_forward / kw_generate_greedy) on the fp32 tiny Qwen3 of
 * tests/data/c2c/fusion and on a bf16 tiny Qwen3 generated here (1024-token vocabulary, bf16 weights widened by the
 * kernels), Cache-to-Cache (kw_fusion_run, receiver Qwen3 + sharer Qwen2 + fuser of the same fixtures, standard
 * L-1/1 split) and kv_direct (the receiver's own model as the sharer: kw_share_run's layer-by-layer prefill, the rows
 * handed to kw_receive exactly, then generation). With the argument "gguf" (its own ctest entry): Q8_0 and Q4_K_M GGUF
 * files from kw_quantize_file, their weights kept quantized on both backends, receiver-only. With "bf16-gemm": the
 * opt-in bf16 GEMM (KW_CUDA_GEMM=bf16), checked within a looser bound (test_receiver_only_bf16_gemm). The prompt is
 * long enough (24+ tokens) that prefill takes the cuBLAS path of the matmul and decode the streaming kernel.
 *
 * Tolerance. Both backends compute in fp32 from the same weights and differ only in summation order (blocked, tree,
 * FMA or not); that is the situation of tests/model/test_model_parity.c (CPU vs HF torch, two fp32 implementations),
 * whose bound this test reuses: max_i |gpu_i - cpu_i| <= TOL max_i |cpu_i| over each logits row, TOL = 1e-4 (the op
 * parity bounds put single-op differences near 1e-6 for these sizes; 1e-4 still flags a wrong row, norm or mask,
 * which are O(1)). The bound is verified at every step, not assumed: each step's measured difference must be within
 * it. The caches are f32: with a bf16 cache one stored element may round to the other bf16 neighbour on one backend,
 * a difference no fp32 argument bounds; bf16 cache stores, loads and attention are checked op by op (bit-exact stores)
 * by the parity suite instead.
 *
 * Built twice: against the emulator (test_gpu_emu_e2e, label gpu-emu) and, with KW_TEST_REAL_CUDA, against the real
 * CUDA backend (tests/gpu, test_gpu_e2e, label gpu), which exits 77 where no device exists.
 *
 * Near-ties. If every logit differs by at most t = tol max|cpu|, the argmax is the same whenever the CPU's top-2
 * margin exceeds 2t; closer than that, either token is a correct result. So:
 *  - teacher forcing: both backends are fed the CPU's tokens, step by step; at every step the logits must be within
 *    t, and at every decisive step (margin > 2t) the GPU's argmax must be the CPU's token. A near-tie step is
 *    reported, not failed, and does not desynchronize the later steps;
 *  - free running: kw_generate_greedy (and kw_fusion_run) on both backends must give identical tokens up to the first
 *    near-tie step of the CPU run;
 *  - at least 3/4 of the steps must be decisive, so the token check cannot pass vacuously (the fixtures here have
 *    none; a change of the CPU numerics could add one, which is fine).
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
#include <unistd.h>

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
#include "model/kw_generate.h"
#include "model/kw_genmodel.h"
#include "model/kw_model.h"
#include "model/kw_quantize.h"
#include "receiver/kw_receive.h"
#include "tests/kw_test_util.h"
#include "tests/model/model_fixture.h"

#define TOL   1e-4
#define STEPS 16
#define DATA  KW_TEST_DATA_DIR "/c2c/fusion"

typedef struct env {
    kw_backend *cpu, *gpu;
    kwfx fx;
    int64_t L;
    const int32_t *prompt;
} env;

static env E;

static int setup(void **state) {
    (void)state;
    memset(&E, 0, sizeof E);
    int rc = kw_backend_create_cpu(2, &E.cpu);
    if (rc == 0) rc = kw_create_gpu(0, &E.gpu);
    if (rc < 0) {
        fprintf(stderr, "backends: %s (%s)\n", kw_status_name(rc), kw_error_detail());
        return -1;
    }
    if (kwfx_load(DATA "/pipeline.kwfx", &E.fx) < 0) return -1;
    E.prompt = kwfx_i32(&E.fx, "prompt_ids", &E.L);
    return E.prompt && E.L >= 24 ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    kw_backend_destroy(E.gpu);
    kw_backend_destroy(E.cpu);
    kwfx_free(&E.fx);
#ifdef KW_TEST_REAL_CUDA
    return 0;
#else
    kw_cuda_emu_stats st;
    kw_cuda_emu_get_stats(&st);
    printf("emulator: %llu kernels, %llu blocks, %llu threads, %llu fiber switches, %llu faults, %llu allocations "
           "left\n",
           (unsigned long long)st.kernels, (unsigned long long)st.blocks, (unsigned long long)st.threads,
           (unsigned long long)st.switches, (unsigned long long)st.faults, (unsigned long long)st.live_allocations);
    return st.faults == 0 && st.live_allocations == 0 ? 0 : -1;
#endif
}

static kw_model *load(kw_backend *be, const char *dir) {
    kw_model *m = NULL;
    const int rc = kw_model_load(be, dir, NULL, &m);
    if (rc < 0) fail_msg("load %s on %s: %s (%s)", dir, kw_backend_name(be), kw_status_name(rc), kw_error_detail());
    return m;
}

static int32_t argmax(const float *row, int64_t V) {
    int32_t best = 0;
    for (int64_t i = 1; i < V; ++i)
        if (row[i] > row[best]) best = (int32_t)i;
    return best;
}

static double max_abs(const float *row, int64_t V) {
    double m = 0;
    for (int64_t i = 0; i < V; ++i)
        m = fmax(m, fabs(row[i]));
    return m;
}

/* top-1 minus top-2 of a row */
static double margin(const float *row, int64_t V) {
    const int32_t b = argmax(row, V);
    double second = -INFINITY;
    for (int64_t i = 0; i < V; ++i)
        if (i != b) second = fmax(second, row[i]);
    return row[b] - second;
}

/* Logits of STEPS greedy steps with teacher forcing: rows[0] is the logits after `prefill` has run (the caller did
 * it), then each step feeds feed[s] (NULL: this run's own argmax) and reads the next row. Returns the tokens fed. */
static void teacher_forced(kw_model *m, kw_kvcache *c, const float *first, const int32_t *feed, float *rows,
                           int32_t *tokens) {
    const int64_t V = kw_model_get_config(m)->vocab;
    memcpy(rows, first, (size_t)V * sizeof *rows);
    for (int s = 0; s < STEPS; ++s) {
        tokens[s] = feed ? feed[s] : argmax(rows + (size_t)s * V, V);
        if (s + 1 == STEPS) break;
        const int rc = kw_model_decode_step(m, c, tokens[s], rows + (size_t)(s + 1) * V, NULL, 0);
        if (rc < 0)
            fail_msg("decode step %d on %s: %s (%s)", s, kw_backend_name(kw_model_backend(m)), kw_status_name(rc),
                     kw_error_detail());
    }
}

/* Compares the teacher-forced rows of the two backends (see the header); returns the index of the first near-tie
 * step (STEPS if none). */
static int compare_steps(const char *what, const float *cpu, const float *gpu, const int32_t *cpu_tokens, int64_t V,
                         double tol) {
    int first_tie = STEPS, decisive = 0;
    double worst = 0;
    for (int s = 0; s < STEPS; ++s) {
        const float *c = cpu + (size_t)s * V, *g = gpu + (size_t)s * V;
        const double scale = max_abs(c, V), t = tol * scale;
        double d = 0;
        for (int64_t i = 0; i < V; ++i)
            d = fmax(d, fabs((double)g[i] - (double)c[i]));
        worst = fmax(worst, d / scale);
        if (!(d <= t)) fail_msg("%s step %d: logits differ by %.3g, bound %.3g (rel %.3g)", what, s, d, t, tol);
        if (margin(c, V) > 2 * t) {
            ++decisive;
            if (argmax(g, V) != cpu_tokens[s])
                fail_msg("%s step %d: gpu token %d, cpu token %d (margin %.3g > 2t = %.3g)", what, s, (int)argmax(g, V),
                         (int)cpu_tokens[s], margin(c, V), 2 * t);
        } else {
            print_message("  %s step %d: near-tie (margin %.3g <= 2t = %.3g), token not compared\n", what, s,
                          margin(c, V), 2 * t);
            if (first_tie == STEPS) first_tie = s;
        }
    }
    print_message("  %s: %d steps, %d decisive, worst logits difference %.3g of max |logit| (bound %.3g)\n", what,
                  STEPS, decisive, worst, tol);
    assert_true(decisive * 4 >= STEPS * 3);
    return first_tie;
}

/* ------------------------------------------------------------------------------------------------------------
 * Receiver only
 */

/* A cache for m: dense of cache_dtype, or quantized with codec (pages of 16 rows, so that the prompt fills some). */
static kw_kvcache *make_cache(kw_model *m, int64_t cap, enum kw_dtype cache_dtype, enum kw_kvq_codec codec) {
    kw_kvcache *c = NULL;
    const int rc =
        codec ? kw_model_create_cache_quantized(m, cap, codec, 16, &c) : kw_model_create_cache(m, cap, cache_dtype, &c);
    if (rc < 0)
        fail_msg("cache on %s: %s (%s)", kw_backend_name(kw_model_backend(m)), kw_status_name(rc), kw_error_detail());
    return c;
}

static void receiver_only(const char *dir, enum kw_dtype cache_dtype, enum kw_kvq_codec codec, double tol) {
    kw_model *mc = load(E.cpu, dir), *mg = load(E.gpu, dir);
    const int64_t V = kw_model_get_config(mc)->vocab, L = E.L, cap = L + STEPS + 4;
    float *rc = malloc((size_t)(STEPS * V) * sizeof *rc), *rg = malloc((size_t)(STEPS * V) * sizeof *rg);
    float *first = malloc((size_t)V * sizeof *first);
    int32_t tc[STEPS], tg[STEPS];
    assert_true(rc && rg && first);
    int32_t *ids = malloc((size_t)L * sizeof *ids);
    for (int64_t i = 0; i < L; ++i)
        ids[i] = (int32_t)(E.prompt[i] % V);

    kw_kvcache *cc = make_cache(mc, cap, cache_dtype, codec), *cg = make_cache(mg, cap, cache_dtype, codec);
    /* each backend prefills the prompt (its own first row), then follows the cpu's tokens */
    const kw_forward_args pre = {.ids = ids, .n = L, .mode = KW_LOGITS_LAST, .logits = first};
    assert_int_equal(kw_model_forward(mc, cc, &pre), 0);
    teacher_forced(mc, cc, first, NULL, rc, tc);
    int rcode = kw_model_forward(mg, cg, &pre);
    if (rcode < 0) fail_msg("gpu prefill: %s (%s)", kw_status_name(rcode), kw_error_detail());
    teacher_forced(mg, cg, first, tc, rg, tg);
    const int first_tie = compare_steps(dir, rc, rg, tc, V, tol);

    /* free-running greedy: identical tokens up to the first near-tie */
    kw_generate_options o = {.max_new_tokens = STEPS, .round = KW_LOGITS_ROUND_NONE, .eos_ids = ids, .n_eos = 0};
    kw_generate_result gc, gg;
    assert_int_equal(kw_kvcache_reset(cc), 0);
    assert_int_equal(kw_kvcache_reset(cg), 0);
    assert_int_equal(kw_generate_greedy(mc, cc, ids, L, &o, &gc), 0);
    rcode = kw_generate_greedy(mg, cg, ids, L, &o, &gg);
    if (rcode < 0) fail_msg("gpu generate: %s (%s)", kw_status_name(rcode), kw_error_detail());
    assert_int_equal(gc.n, STEPS);
    assert_int_equal(gg.n, STEPS);
    for (int s = 0; s < first_tie; ++s) {
        assert_int_equal(gc.ids[s], tc[s]);
        assert_int_equal(gg.ids[s], gc.ids[s]);
    }
    print_message("  %s: free-running greedy, %d tokens identical\n", dir, first_tie);
    if (codec) { /* a quantized cache decodes op by op: no step graph recorded or launched */
        int64_t recordings, launches;
        kw_model_graph_counts(mg, &recordings, &launches);
        assert_int_equal(recordings, 0);
        assert_int_equal(launches, 0);
    }

    kw_generate_result_free(&gc);
    kw_generate_result_free(&gg);
    kw_kvcache_free(cc);
    kw_kvcache_free(cg);
    free(ids), free(rc), free(rg), free(first);
    kw_model_free(mc);
    kw_model_free(mg);
}

static void test_receiver_only_fp32(void **state) {
    (void)state;
    receiver_only(DATA "/receiver_qwen3", KW_DTYPE_F32, 0, TOL);
}

/* The quantized caches (pages of 16 rows, int8 and int4): the CPU's and the GPU's K and V differ in their last bits
 * before they are quantized, so a value within that difference of a rounding boundary of its codec takes the
 * neighbouring code on one backend (about 1e-6 x 127 of the int8 values, 1e-6 x 7 of the int4 ones), which moves the
 * logits by a fraction of one code's share of an attention output. Measured: no larger than the dense cache's
 * difference (about 1.5e-6 of max |logit| on this fixture, both codecs); QTOL = 1e-3 leaves room for such flips and
 * keeps every step with a top-2 margin above 2e-3 max |logit| decisive. */
#define QTOL 1e-3

static void test_receiver_only_int8(void **state) {
    (void)state;
    receiver_only(DATA "/receiver_qwen3", KW_DTYPE_F32, KW_KVQ_INT8, QTOL);
}

static void test_receiver_only_int4(void **state) {
    (void)state;
    receiver_only(DATA "/receiver_qwen3", KW_DTYPE_F32, KW_KVQ_INT4, QTOL);
}

/* A request whose KV cache does not fit the backend's memory limit is refused before anything is allocated, with a
 * reason that names the budget, and the model serves the next request. */
static void test_cache_over_memory_limit(void **state) {
    (void)state;
    kw_model *m = load(E.gpu, DATA "/receiver_qwen3");
    kw_backend_memory mem;
    kw_backend_get_memory(E.gpu, &mem);
    assert_int_equal(kw_backend_set_memory_limit(E.gpu, mem.live + (1u << 20)), 0);
    kw_kvcache *c = NULL;
    const int rc = kw_model_create_cache(m, 100000, KW_DTYPE_F32, &c); /* 4 layers x 2 heads x 16 x 4 B x 2: 25 MB */
    if (rc != KW_E_NOMEM || strstr(kw_error_detail(), "memory limit") == NULL)
        fail_msg("a cache past the limit gave %s (%s)", kw_status_name(rc), kw_error_detail());
    print_message("  refused: %s\n", kw_error_detail());
    assert_null(c);
    kw_backend_memory after;
    kw_backend_get_memory(E.gpu, &after);
    assert_int_equal(after.live, mem.live);
    assert_int_equal(kw_model_create_cache(m, 64, KW_DTYPE_F32, &c), 0);
    int32_t next = -1;
    assert_int_equal(kw_model_decode_step(m, c, E.prompt[0], NULL, &next, 0), 0);
    assert_true(next >= 0);
    kw_kvcache_free(c);
    assert_int_equal(kw_backend_set_memory_limit(E.gpu, 0), 0);
    kw_model_free(m);
}

/* A bf16 tiny Qwen3 (2 layers, hidden 64) with a 1024-token vocabulary, generated for the test. */
/* Writes the bf16 tiny Qwen3 (1024-token vocabulary, untied embeddings, seed 11) into the new folder dir. */
static void write_bf16_tiny(char *dir) {
    assert_non_null(mkdtemp(dir));
    kw_genmodel_options go;
    memset(&go, 0, sizeof go);
    const enum kw_arch arch = KW_ARCH_QWEN3;
    assert_int_equal(kw_genmodel_preset("tiny", &arch, &go.cfg), 0);
    go.cfg.vocab = 1024;
    go.cfg.tie_embeddings = 0;
    kw_genmodel_fit_special_ids(&go.cfg);
    go.dtype = KW_DTYPE_BF16;
    go.seed = 11;
    const int rc = kw_genmodel_write(&go, dir);
    if (rc < 0) fail_msg("gen-model: %s", kw_error_detail());
}

static void test_receiver_only_bf16(void **state) {
    (void)state;
    char dir[] = "/tmp/kw_gpu_emu_e2e_XXXXXX";
    write_bf16_tiny(dir);
    receiver_only(dir, KW_DTYPE_F32, 0, TOL);
    kw_test_remove_tree(dir);
}

/* The opt-in bf16 GEMM (KW_CUDA_GEMM=bf16, its own ctest entry): the bf16 tiny Qwen3 on a GPU backend created with
 * the option, whose prefill (M = L > 8) runs cuBLAS on bf16-rounded activations. Its tokens may differ from the CPU's
 * (x's rounding, relative 2^-8, moves the logits well beyond TOL), so this checks what must hold: greedy generation
 * completes with STEPS tokens inside the vocabulary, the prefill logits differ from the default GPU path's (the option
 * took effect) but stay within BF16_TOL max |cpu| of the CPU's (a wrong GEMM gives O(1) differences; measured on
 * this fixture: 1.4e-3, printed below), and the default GPU backend's logits stay within TOL of the CPU's. */
#define BF16_TOL 1e-2
static void test_receiver_only_bf16_gemm(void **state) {
    (void)state;
    char dir[] = "/tmp/kw_gpu_emu_bf16g_XXXXXX";
    write_bf16_tiny(dir);
    kw_backend *bf = NULL;
    assert_int_equal(setenv("KW_CUDA_GEMM", "bf16", 1), 0);
    const int brc = kw_create_gpu(0, &bf);
    unsetenv("KW_CUDA_GEMM");
    if (brc < 0) fail_msg("bf16 GEMM backend: %s (%s)", kw_status_name(brc), kw_error_detail());
    kw_model *mc = load(E.cpu, dir), *mg = load(E.gpu, dir), *mb = load(bf, dir);
    const int64_t V = kw_model_get_config(mc)->vocab, L = E.L, cap = L + STEPS + 4;
    int32_t *ids = malloc((size_t)L * sizeof *ids);
    float *lc = malloc((size_t)V * sizeof *lc), *lg = malloc((size_t)V * sizeof *lg),
          *lb = malloc((size_t)V * sizeof *lb);
    assert_true(ids && lc && lg && lb);
    for (int64_t i = 0; i < L; ++i)
        ids[i] = (int32_t)(E.prompt[i] % V);
    kw_kvcache *cc = make_cache(mc, cap, KW_DTYPE_F32, 0), *cg = make_cache(mg, cap, KW_DTYPE_F32, 0);
    kw_kvcache *cb = make_cache(mb, cap, KW_DTYPE_F32, 0);
    kw_forward_args pre = {.ids = ids, .n = L, .mode = KW_LOGITS_LAST, .logits = lc};
    assert_int_equal(kw_model_forward(mc, cc, &pre), 0);
    pre.logits = lg;
    assert_int_equal(kw_model_forward(mg, cg, &pre), 0);
    pre.logits = lb;
    const int frc = kw_model_forward(mb, cb, &pre);
    if (frc < 0) fail_msg("bf16 GEMM prefill: %s (%s)", kw_status_name(frc), kw_error_detail());
    double dg = 0, db = 0;
    for (int64_t i = 0; i < V; ++i) {
        dg = fmax(dg, fabs((double)lg[i] - (double)lc[i]));
        db = fmax(db, fabs((double)lb[i] - (double)lc[i]));
    }
    const double scale = max_abs(lc, V);
    print_message("  bf16 GEMM prefill: max |logit diff| / max |cpu logit| = %.3g (default GPU path: %.3g)\n",
                  db / scale, dg / scale);
    assert_true(dg <= TOL * scale);
    assert_true(db <= BF16_TOL * scale);
    assert_true(memcmp(lb, lg, (size_t)V * sizeof *lb) != 0);

    kw_generate_options o = {.max_new_tokens = STEPS, .round = KW_LOGITS_ROUND_NONE, .eos_ids = ids, .n_eos = 0};
    kw_generate_result gc, gb;
    assert_int_equal(kw_kvcache_reset(cc), 0);
    assert_int_equal(kw_kvcache_reset(cb), 0);
    assert_int_equal(kw_generate_greedy(mc, cc, ids, L, &o, &gc), 0);
    const int grc = kw_generate_greedy(mb, cb, ids, L, &o, &gb);
    if (grc < 0) fail_msg("bf16 GEMM generate: %s (%s)", kw_status_name(grc), kw_error_detail());
    assert_int_equal(gb.n, STEPS);
    int same = 0;
    while (same < STEPS && gb.ids[same] == gc.ids[same])
        ++same;
    for (int s = 0; s < STEPS; ++s)
        assert_true(gb.ids[s] >= 0 && gb.ids[s] < V);
    print_message("  bf16 GEMM greedy: %d of %d leading tokens equal to the CPU's (not required)\n", same, STEPS);

    kw_generate_result_free(&gc);
    kw_generate_result_free(&gb);
    kw_kvcache_free(cc), kw_kvcache_free(cg), kw_kvcache_free(cb);
    free(ids), free(lc), free(lg), free(lb);
    kw_model_free(mc), kw_model_free(mg), kw_model_free(mb);
    kw_backend_destroy(bf);
    kw_test_remove_tree(dir);
}

/* A GGUF file written by kw_quantize_file (`kvwire quantize`) from a tiny Qwen3 (2 layers, hidden 256 so every row is
 * whole Q4_K blocks, tied embeddings: token_embd is also the output matrix), loaded with its weights kept quantized on
 * both backends: Q8_0 (KW_LAYOUT_QPANELS_S8) and Q4_K_M (Q4_K in QPANELS_U4, Q6_K in QPANELS_S8_G16 on the GPU, in
 * their super-block layouts U4_SB and S8_G16_SB on the CPU, the embedding table read by get_rows among them). The GPU
 * must hold the weights quantized (its memory well below the f32 model's), the CPU reads fewer bytes for Q4_K_M, and
 * the logits and tokens follow the CPU's as for the f32 models. */
static void test_receiver_only_gguf_quantized(void **state) {
    (void)state;
    char dir[] = "/tmp/kw_gpu_emu_gguf_XXXXXX";
    assert_non_null(mkdtemp(dir));
    kw_genmodel_options go;
    memset(&go, 0, sizeof go);
    const enum kw_arch arch = KW_ARCH_QWEN3;
    assert_int_equal(kw_genmodel_preset("tiny", &arch, &go.cfg), 0);
    go.cfg.hidden = 256;
    go.cfg.head_dim = 64;
    go.cfg.intermediate = 512;
    go.cfg.vocab = 1024;
    go.cfg.tie_embeddings = 1;
    go.cfg.rope.rotary_dim = 64;
    kw_genmodel_fit_special_ids(&go.cfg);
    go.dtype = KW_DTYPE_F32;
    go.seed = 5;
    int rc = kw_genmodel_write(&go, dir);
    if (rc < 0) fail_msg("gen-model: %s", kw_error_detail());
    kw_model *mf = load(E.gpu, dir);
    const size_t f32_bytes = kw_model_weight_bytes_per_token(mf);
    kw_model_free(mf);

    static const struct {
        enum kw_quant_scheme scheme;
        const char *name;
    } files[] = {{KW_QUANT_Q8_0, "q8_0"}, {KW_QUANT_Q4_K_M, "q4_k_m"}};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; ++i) {
        char path[128];
        snprintf(path, sizeof path, "%s/%s.gguf", dir, files[i].name);
        rc = kw_quantize_file(dir, path, files[i].scheme, NULL, NULL);
        if (rc < 0) fail_msg("quantize %s: %s", files[i].name, kw_error_detail());
        kw_model *mq = load(E.gpu, path), *mc = load(E.cpu, path);
        const size_t q_bytes = kw_model_weight_bytes_per_token(mq);
        print_message("  %s: %zu weight bytes read per token on the gpu (cpu %zu), %zu with f32 weights\n",
                      files[i].name, q_bytes, kw_model_weight_bytes_per_token(mc), f32_bytes);
        assert_true(q_bytes * 3 < f32_bytes); /* 1.125 (Q8_0) or 0.63-1.25 (Q4_K_M) bytes a weight, not 4 */
        const double cpu_share = (double)kw_model_weight_bytes_per_token(mc) / (double)q_bytes;
        if (files[i].scheme == KW_QUANT_Q8_0) /* the same layout on both */
            assert_int_equal(q_bytes, kw_model_weight_bytes_per_token(mc));
        else /* the CPU's super-block layouts: Q4_K 0.59375 bytes a weight instead of 0.75, Q6_K 1.078 for 1.25 (0.828
              * in 6 bits with AVX-512 VBMI) */
            assert_true(cpu_share >= 0.828125 / 1.25 - 1e-9 && cpu_share <= 1.078125 / 1.25 + 1e-9);
        kw_model_free(mq);
        kw_model_free(mc);
        receiver_only(path, KW_DTYPE_F32, 0, TOL);
    }
    kw_test_remove_tree(dir);
}

/* ------------------------------------------------------------------------------------------------------------
 * Pinned host buffers
 */

/* kw_backend_host_alloc memory (pinned on the GPU backend) carries bytes to the device and back unchanged, through a
 * tensor and through KV cache rows; the transfers are asynchronous (on the emulator a download into pinned memory
 * has visibly not happened before kw_backend_synchronize); the bytes are accounted and given back. */
static void test_pinned_round_trip(void **state) {
    (void)state;
    kw_backend *be = E.gpu;
    const uint64_t before = kw_backend_host_bytes(be);
    const size_t n = 3 * 4096 + 17;
    uint8_t *a = NULL, *b = NULL;
    assert_int_equal(kw_backend_host_alloc(be, n, (void **)&a), 0);
    assert_int_equal(kw_backend_host_alloc(be, n, (void **)&b), 0);
    assert_true(((uintptr_t)a & 63) == 0 && ((uintptr_t)b & 63) == 0);
    assert_int_equal(kw_backend_host_bytes(be), before + 2 * n);
#ifndef KW_TEST_REAL_CUDA
    kw_cuda_emu_stats st0, st1;
    kw_cuda_emu_get_stats(&st0);
    uint8_t *third = NULL;
    assert_int_equal(kw_backend_host_alloc(be, n, (void **)&third), 0);
    kw_cuda_emu_get_stats(&st1);
    kw_backend_host_free(be, third);
    assert_int_equal(st1.live_allocations, st0.live_allocations + 1); /* pinned: the runtime's, not malloc's */
    assert_true(st1.live_bytes >= st0.live_bytes + n);
#endif
    for (size_t i = 0; i < n; ++i)
        a[i] = (uint8_t)(i * 131 + 7);
    memset(b, 0, n);
    kw_tensor t;
    const int64_t ne[1] = {(int64_t)n};
    assert_int_equal(kw_tensor_alloc(be, &t, KW_DTYPE_U8, 1, ne), 0);
    assert_int_equal(kw_backend_upload(be, &t, 0, a, n), 0);
    assert_int_equal(kw_backend_download(be, b, &t, 0, n), 0);
#ifndef KW_TEST_REAL_CUDA
    assert_int_equal(b[1], 0); /* queued, not done: a pinned download completes at synchronize */
#endif
    assert_int_equal(kw_backend_synchronize(be), 0);
    assert_memory_equal(a, b, n);
    kw_tensor_free(&t);

    /* KV rows as the wire path moves them: written from pinned buffers, read back into pinned buffers */
    kw_kvcache *c = NULL;
    const int64_t T = 37, H = 2, D = 16, vals = T * H * D;
    assert_int_equal(kw_kvcache_create(be, 2, (int32_t)H, (int32_t)D, 64, KW_DTYPE_F32, &c), 0);
    float *k = NULL, *v = NULL, *k2 = NULL, *v2 = NULL;
    const size_t bytes = (size_t)vals * sizeof(float);
    assert_int_equal(kw_backend_host_alloc(be, bytes, (void **)&k), 0);
    assert_int_equal(kw_backend_host_alloc(be, bytes, (void **)&v), 0);
    assert_int_equal(kw_backend_host_alloc(be, bytes, (void **)&k2), 0);
    assert_int_equal(kw_backend_host_alloc(be, bytes, (void **)&v2), 0);
    for (int64_t i = 0; i < vals; ++i) {
        k[i] = (float)i * 0.25f - 100.0f;
        v[i] = -(float)i / 3.0f;
    }
    assert_int_equal(kw_kvcache_write_rows(c, 1, 0, T, k, v), 0);
    assert_int_equal(kw_kvcache_read_rows(c, 1, 0, T, k2, v2), 0);
    assert_memory_equal(k, k2, bytes);
    assert_memory_equal(v, v2, bytes);
    kw_kvcache_free(c);
    kw_backend_host_free(be, k), kw_backend_host_free(be, v), kw_backend_host_free(be, k2),
        kw_backend_host_free(be, v2);
    kw_backend_host_free(be, a);
    kw_backend_host_free(be, b);
    kw_backend_host_free(be, NULL);
    assert_int_equal(kw_backend_host_bytes(be), before);
}

/* ------------------------------------------------------------------------------------------------------------
 * Step graphs
 */

#define GRAPH_PROMPT 500 /* decode then crosses 512 cache rows, where attention starts splitting (kw_cuda_ops.cu) */
#define GRAPH_STEPS  24
#define GRAPH_MASK   8  /* the step before which a few rows are masked (the cache's mask appears) */
#define GRAPH_GROW   16 /* the step before which another op grows the backend's workspace (it moves) */

/* Fills rows [0, GRAPH_PROMPT) of every layer of c with the same pseudo-random K and V on any backend: a long
 * context without the emulator's cost of prefilling one. */
static void fill_context(kw_model *m, kw_kvcache *c) {
    const kw_model_config *cfg = kw_model_get_config(m);
    const size_t n = (size_t)GRAPH_PROMPT * (size_t)cfg->n_kv_heads * (size_t)cfg->head_dim;
    float *k = malloc(n * sizeof *k), *v = malloc(n * sizeof *v);
    assert_true(k && v);
    uint32_t x = 12345;
    for (int32_t l = 0; l < cfg->n_layers; ++l) {
        for (size_t i = 0; i < n; ++i) {
            x = x * 1664525u + 1013904223u;
            k[i] = (float)(x >> 8) / (float)(1u << 24) * 2.0f - 1.0f;
            x = x * 1664525u + 1013904223u;
            v[i] = (float)(x >> 8) / (float)(1u << 24) * 2.0f - 1.0f;
        }
        assert_int_equal(kw_kvcache_write_rows(c, l, 0, GRAPH_PROMPT, k, v), 0);
    }
    free(k), free(v);
}

/* An attention over a long span with few rows, alone on be: it splits into more chunks than the decode steps, so
 * the CUDA backend's workspace grows (moves). */
static void grow_workspace(kw_backend *be) {
    const int64_t nq[3] = {1, 16, 16}, nc[3] = {1, 2048, 16};
    kw_tensor q, out, k, v;
    assert_int_equal(kw_tensor_alloc(be, &q, KW_DTYPE_F32, 3, nq), 0);
    assert_int_equal(kw_tensor_alloc(be, &out, KW_DTYPE_F32, 3, nq), 0);
    assert_int_equal(kw_tensor_alloc(be, &k, KW_DTYPE_F32, 3, nc), 0);
    assert_int_equal(kw_tensor_alloc(be, &v, KW_DTYPE_F32, 3, nc), 0);
    kw_tensor *all[4] = {&q, &out, &k, &v};
    for (int i = 0; i < 4; ++i)
        assert_int_equal(kw_backend_memset_zero(be, all[i]), 0);
    const kw_attention_params ap = {.q_pos0 = 2000, .n_kv = 2001, .scale = 0.25f};
    assert_int_equal(kw_op_attention(be, &out, &q, &k, &v, &ap), 0);
    assert_int_equal(kw_backend_synchronize(be), 0);
    for (int i = 0; i < 4; ++i)
        kw_tensor_free(all[i]);
}

/* Decode steps through step graphs (the default) give the same bits as the ops launched one by one
 * (KW_CUDA_GRAPHS=0): two fresh GPU backends, every step's logits and token, across the context length where
 * attention's split count changes (the recording fails for want of workspace, a plain step grows it, the next step
 * records), after rows are masked and after the workspace moved (new recordings each). */
static void test_step_graphs_bit_identical(void **state) {
    (void)state;
    kw_backend *on = NULL, *off = NULL;
    int rc = kw_create_gpu(0, &on);
    assert_int_equal(setenv("KW_CUDA_GRAPHS", "0", 1), 0);
    if (rc == 0) rc = kw_create_gpu(0, &off);
    unsetenv("KW_CUDA_GRAPHS");
    if (rc < 0) fail_msg("gpu backends: %s (%s)", kw_status_name(rc), kw_error_detail());
    kw_model *mg = load(on, DATA "/receiver_qwen3"), *mo = load(off, DATA "/receiver_qwen3");
    const int64_t V = kw_model_get_config(mg)->vocab, cap = GRAPH_PROMPT + GRAPH_STEPS + 4;
    float *lg = malloc((size_t)V * sizeof *lg), *lo = malloc((size_t)V * sizeof *lo);
    assert_true(lg && lo);
    kw_kvcache *cg = NULL, *co = NULL;
    assert_int_equal(kw_model_create_cache(mg, cap, KW_DTYPE_F32, &cg), 0);
    assert_int_equal(kw_model_create_cache(mo, cap, KW_DTYPE_F32, &co), 0);
    fill_context(mg, cg);
    fill_context(mo, co);
    int32_t next_g = -1, next_o = E.prompt[0];
    for (int s = 0; s < GRAPH_STEPS; ++s) {
        if (s == GRAPH_MASK) {
            assert_int_equal(kw_kvcache_set_valid(cg, 3, 5, 0), 0);
            assert_int_equal(kw_kvcache_set_valid(co, 3, 5, 0), 0);
        }
        if (s == GRAPH_GROW) grow_workspace(on);
        const int32_t tok = next_o;
        int r = kw_model_decode_step(mg, cg, tok, lg, &next_g, 0);
        if (r == 0) r = kw_model_decode_step(mo, co, tok, lo, &next_o, 0);
        if (r < 0) fail_msg("decode step %d: %s (%s)", s, kw_status_name(r), kw_error_detail());
        if (memcmp(lg, lo, (size_t)V * sizeof *lg) != 0 || next_g != next_o)
            fail_msg("step %d (cache row %d): graph and plain launches differ (tokens %d, %d)", s, GRAPH_PROMPT + s,
                     (int)next_g, (int)next_o);
    }
    int64_t rec = 0, launches = 0, off_launches = 0;
    kw_model_graph_counts(mg, &rec, &launches);
    kw_model_graph_counts(mo, NULL, &off_launches);
    print_message("  step graphs: %lld recordings, %lld of %d steps launched as a graph\n", (long long)rec,
                  (long long)launches, GRAPH_STEPS);
    assert_true(rec >= 4); /* the first step, the mask, past 512 rows, the workspace moved */
    /* at most one plain step per recording, and at least one (the workspace grown past 512 rows) */
    assert_true(launches >= GRAPH_STEPS - rec && launches < GRAPH_STEPS);
    assert_int_equal(off_launches, 0);
    kw_kvcache_free(cg);
    kw_kvcache_free(co);
    kw_model_free(mg);
    kw_model_free(mo);
    kw_backend_destroy(off);
    kw_backend_destroy(on);
    free(lg), free(lo);
}

/* ------------------------------------------------------------------------------------------------------------
 * Cache-to-Cache
 */

typedef struct c2c_run {
    kw_model *recv, *sharer;
    kw_fuser *fuser;
    kw_fusion *fusion;
    kw_kvcache *cache;
    kw_fusion_result res;
} c2c_run;

static void c2c_open(c2c_run *r, kw_backend *be, const kw_fusion_section *sec, int32_t n_sec) {
    memset(r, 0, sizeof *r);
    r->recv = load(be, DATA "/receiver_qwen3");
    r->sharer = load(be, DATA "/sharer_qwen2");
    int rc = kw_fuser_load(DATA "/fuser_qwen2", 0, &r->fuser);
    const kw_fusion_sharer sh = {.model = r->sharer, .fuser = r->fuser};
    if (rc == 0) rc = kw_fusion_create(r->recv, &sh, 1, 0, &r->fusion);
    if (rc == 0) rc = kw_model_create_cache(r->recv, E.L + STEPS + 4, KW_DTYPE_F32, &r->cache);
    const kw_fusion_options opt = {
        .sections = sec,
        .n_sections = n_sec,
        .mode = KW_FUSION_SEQUENTIAL,
        .numerics = KW_PROJECTOR_FP32,
        .sharer_cache_dtype = KW_DTYPE_F32,
        .gen = {.max_new_tokens = STEPS, .round = KW_LOGITS_ROUND_NONE, .eos_ids = E.prompt, .n_eos = 0}};
    if (rc == 0) rc = kw_fusion_run(r->fusion, r->cache, E.prompt, E.L, &opt, &r->res);
    if (rc < 0) fail_msg("c2c on %s: %s (%s)", kw_backend_name(be), kw_status_name(rc), kw_error_detail());
}

static void c2c_close(c2c_run *r) {
    kw_fusion_result_free(&r->res);
    kw_kvcache_free(r->cache);
    kw_fusion_free(r->fusion);
    kw_fuser_free(r->fuser);
    kw_model_free(r->recv);
    kw_model_free(r->sharer);
}

/* After a run that fused (or received) the prompt on each backend: the receiver caches over the prompt within TOL
 * layer by layer, then the decode steps again, teacher-forced on each backend's own cache (truncated to rows 0..L-2,
 * the last prompt token fed, then the cpu's tokens), compared step by step; the runs' own tokens (cpu_gen, gpu_gen)
 * must agree up to the first near-tie. */
static void compare_after_prompt(const char *what, kw_model *mc, kw_kvcache *cc, const int32_t *cpu_gen, kw_model *mg,
                                 kw_kvcache *cg, const int32_t *gpu_gen) {
    const kw_model_config *cfg = kw_model_get_config(mc);
    const int64_t n = E.L * cfg->n_kv_heads * cfg->head_dim, V = cfg->vocab;
    float *kc = malloc((size_t)n * sizeof *kc), *vc = malloc((size_t)n * sizeof *vc);
    float *kg = malloc((size_t)n * sizeof *kg), *vg = malloc((size_t)n * sizeof *vg);
    assert_true(kc && vc && kg && vg);
    double worst = 0;
    for (int32_t l = 0; l < cfg->n_layers; ++l) {
        assert_int_equal(kw_kvcache_read_rows(cc, l, 0, E.L, kc, vc), 0);
        assert_int_equal(kw_kvcache_read_rows(cg, l, 0, E.L, kg, vg), 0);
        worst = fmax(worst, fmax(kwfx_rel_diff(kg, kc, n), kwfx_rel_diff(vg, vc, n)));
    }
    print_message("  %s: receiver cache over the prompt, worst layer difference %.3g of max |value| (bound %.3g)\n",
                  what, worst, TOL);
    assert_true(worst <= TOL);

    float *rc = malloc((size_t)(STEPS * V) * sizeof *rc), *rg = malloc((size_t)(STEPS * V) * sizeof *rg);
    float *first = malloc((size_t)V * sizeof *first);
    int32_t tc[STEPS], tg[STEPS];
    assert_true(rc && rg && first);
    assert_int_equal(kw_kvcache_truncate(cc, E.L - 1), 0);
    assert_int_equal(kw_model_decode_step(mc, cc, E.prompt[E.L - 1], first, NULL, 0), 0);
    teacher_forced(mc, cc, first, NULL, rc, tc);
    for (int s = 0; s < STEPS; ++s)
        assert_int_equal(tc[s], cpu_gen[s]); /* the replay is the run's own decode */
    assert_int_equal(kw_kvcache_truncate(cg, E.L - 1), 0);
    assert_int_equal(kw_model_decode_step(mg, cg, E.prompt[E.L - 1], first, NULL, 0), 0);
    teacher_forced(mg, cg, first, tc, rg, tg);
    const int first_tie = compare_steps(what, rc, rg, tc, V, TOL);
    for (int s = 0; s < first_tie; ++s)
        assert_int_equal(gpu_gen[s], cpu_gen[s]);
    print_message("  %s: %d generated tokens identical\n", what, first_tie);
    free(kc), free(vc), free(kg), free(vg), free(rc), free(rg), free(first);
}

static void test_c2c(void **state) {
    (void)state;
    kw_fusion_section sec[2];
    int32_t n_sec = 0;
    assert_int_equal(kw_fusion_sections_standard(E.L, 1, sec, &n_sec), 0);
    c2c_run c, g;
    c2c_open(&c, E.cpu, sec, n_sec);
    c2c_open(&g, E.gpu, sec, n_sec);
    assert_true(c.res.stats.layers_fused > 0);
    assert_int_equal(g.res.stats.layers_fused, c.res.stats.layers_fused);
    assert_int_equal(c.res.gen.n, STEPS);
    assert_int_equal(g.res.gen.n, STEPS);
    compare_after_prompt("c2c", c.recv, c.cache, c.res.gen.ids, g.recv, g.cache, g.res.gen.ids);
    c2c_close(&c);
    c2c_close(&g);
}

/* ------------------------------------------------------------------------------------------------------------
 * kv_direct
 */

/* The rows kw_share_run hands over, kept until the receiver takes them (one sent section). */
typedef struct kept_rows {
    int32_t n, layer[64];
    int64_t rows[64], *pos[64];
    float *k[64], *v[64];
    kw_backend *be;       /* the sharer's backend */
    uint64_t host_bytes;  /* its kw_backend_host_bytes during the callback: the wire rows' staging buffers */
    size_t largest_layer; /* bytes of the largest layer handed over (K or V) */
} kept_rows;

static int keep_rows(void *user, const kw_share_layer *l) {
    kept_rows *kr = user;
    assert_true(kr->n < 64);
    const size_t vals = (size_t)(l->n_rows * l->n_heads * l->head_dim);
    const int32_t i = kr->n++;
    kr->layer[i] = l->layer;
    kr->rows[i] = l->n_rows;
    kwfx_copy_share_layer(l, &kr->k[i], &kr->v[i], &kr->pos[i]);
    kr->host_bytes = kw_backend_host_bytes(kr->be);
    if (vals * sizeof(float) > kr->largest_layer) kr->largest_layer = vals * sizeof(float);
    return 0;
}

/* kv_direct on one backend with the standard split: the model shares the prompt but its last token, every layer and
 * position, with itself as the receiver. */
static void kv_direct_run(kw_model *m, kw_kvcache **cache, kw_fusion_result *res) {
    kw_fusion_section sec[2];
    int32_t n_sec = 0, layers[64];
    assert_int_equal(kw_fusion_sections_standard(E.L, 1, sec, &n_sec), 0);
    const int32_t n_layers = kw_model_get_config(m)->n_layers;
    assert_true(n_layers <= 64);
    for (int32_t l = 0; l < n_layers; ++l)
        layers[l] = l;
    kept_rows kr;
    memset(&kr, 0, sizeof kr);
    kr.be = kw_model_backend(m);
    const uint64_t host_before = kw_backend_host_bytes(kr.be);
    const kw_share_options so = {.sections = sec,
                                 .n_sections = n_sec,
                                 .layers = layers,
                                 .n_layers = n_layers,
                                 .select = {.mode = KW_SELECT_FULL, .proportion = 1.0, .min_tokens = 1},
                                 .same_positions = 1,
                                 .cache_dtype = KW_DTYPE_F32,
                                 .on_layer = keep_rows,
                                 .user = &kr};
    int rc = kw_share_run(m, E.prompt, E.L - 1, &so, NULL);
    if (rc < 0)
        fail_msg("share on %s: %s (%s)", kw_backend_name(kw_model_backend(m)), kw_status_name(rc), kw_error_detail());
    assert_int_equal(kr.n, n_layers);
    /* the rows were downloaded into kw_backend_host_alloc memory (pinned on the GPU), K and V, released after */
    assert_true(kr.host_bytes >= host_before + 2 * kr.largest_layer);
    assert_int_equal(kw_backend_host_bytes(kr.be), host_before);
    assert_int_equal(kw_model_create_cache(m, E.L + STEPS + 4, KW_DTYPE_F32, cache), 0);
    const kw_receive_options ro = {
        .mode = KW_RECEIVE_KV_DIRECT,
        .fusion = {.sections = sec,
                   .n_sections = n_sec,
                   .gen = {.max_new_tokens = STEPS, .round = KW_LOGITS_ROUND_NONE, .eos_ids = E.prompt, .n_eos = 0}}};
    kw_receive *r = NULL;
    rc = kw_receive_begin(m, NULL, *cache, E.prompt, E.L, &ro, &r);
    if (rc == 0) rc = kw_receive_prefill(r, 0);
    for (int32_t i = 0; rc == 0 && i < kr.n; ++i)
        rc = kw_receive_rows(r, 0, kr.layer[i], kr.rows[i], kr.pos[i], kr.k[i], kr.v[i]);
    if (rc == 0) rc = kw_receive_rows_done(r, 0);
    if (rc == 0) rc = kw_receive_end_section(r, 0);
    if (rc == 0) rc = kw_receive_generate(r, res);
    if (rc < 0)
        fail_msg("receive on %s: %s (%s)", kw_backend_name(kw_model_backend(m)), kw_status_name(rc), kw_error_detail());
    kw_receive_free(r);
    for (int32_t i = 0; i < kr.n; ++i)
        free(kr.pos[i]), free(kr.k[i]), free(kr.v[i]);
}

static void test_kv_direct(void **state) {
    (void)state;
    kw_model *mc = load(E.cpu, DATA "/receiver_qwen3"), *mg = load(E.gpu, DATA "/receiver_qwen3");
    kw_kvcache *cc = NULL, *cg = NULL;
    kw_fusion_result c, g;
    kv_direct_run(mc, &cc, &c);
    kv_direct_run(mg, &cg, &g);
    assert_int_equal(c.gen.n, STEPS);
    assert_int_equal(g.gen.n, STEPS);
    compare_after_prompt("kv_direct", mc, cc, c.gen.ids, mg, cg, g.gen.ids);
    kw_fusion_result_free(&c);
    kw_fusion_result_free(&g);
    kw_kvcache_free(cc);
    kw_kvcache_free(cg);
    kw_model_free(mc);
    kw_model_free(mg);
}

/* No argument: every test but the quantized GGUF one and the quantized caches'; "gguf" or "kvq": those alone (their
 * own ctest entries, so each stays short). */
int main(int argc, char **argv) {
#ifdef KW_TEST_REAL_CUDA
    kw_backend *probe = NULL;
    const int rc = kw_backend_create_cuda(0, &probe);
    if (rc == KW_E_NO_DEVICE || rc == KW_E_UNSUPPORTED) {
        printf("skipped: %s (%s)\n", kw_status_name(rc), kw_error_detail());
        return 77;
    }
    kw_backend_destroy(probe);
#endif
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_receiver_only_fp32),
        cmocka_unit_test(test_receiver_only_bf16),
        cmocka_unit_test(test_c2c),
        cmocka_unit_test(test_kv_direct),
        cmocka_unit_test(test_cache_over_memory_limit),
        cmocka_unit_test(test_step_graphs_bit_identical),
        cmocka_unit_test(test_pinned_round_trip),
    };
    const struct CMUnitTest gguf[] = {
        cmocka_unit_test(test_receiver_only_gguf_quantized),
    };
    const struct CMUnitTest bf16_gemm[] = {
        cmocka_unit_test(test_receiver_only_bf16_gemm),
    };
    const struct CMUnitTest kvq[] = {
        cmocka_unit_test(test_receiver_only_int8),
        cmocka_unit_test(test_receiver_only_int4),
    };
    if (argc > 1 && strcmp(argv[1], "gguf") == 0) return cmocka_run_group_tests(gguf, setup, teardown);
    if (argc > 1 && strcmp(argv[1], "bf16-gemm") == 0) return cmocka_run_group_tests(bf16_gemm, setup, teardown);
    if (argc > 1 && strcmp(argv[1], "kvq") == 0) return cmocka_run_group_tests(kvq, setup, teardown);
    return cmocka_run_group_tests(tests, setup, teardown);
}
