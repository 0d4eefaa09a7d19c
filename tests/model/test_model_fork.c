/* test_model_fork.c: kw_model_fork. Two forks of one loaded tiny Qwen3 (bf16 weights, generated here), each on its
 * own stream context of the backend, greedy-decode two different prompts in two threads at the same time and must
 * produce the same tokens and the same logits bits as each fork alone and as the loaded model itself. On the CPU
 * backend and, built with KW_TEST_CUDA_EMU (label gpu-emu), on the emulated CUDA backend (which also records and
 * replays a step graph per context). Also: forks borrow the weights (a fork costs only its scratch, the memory
 * accounting is back to its start once forks, caches and contexts are gone), a fork of a fork runs the loaded model,
 * and a backend of another device is refused.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_status.h"
#include "kernels/kw_backend.h"
#include "model/kw_genmodel.h"
#include "model/kw_model.h"
#include "tests/kw_test_util.h"
#ifdef KW_TEST_CUDA_EMU
#include "kernels/cuda/emu/kw_cuda_emu_api.h"
#endif

/* The CPU runs enough steps for the two threads' ops to interleave (they start together at a barrier); the emulator,
 * slower, fewer. */
#ifdef KW_TEST_CUDA_EMU
enum { VOCAB = 1024, STEPS = 6, PROMPT = 9, REPS = 2 };
#else
enum { VOCAB = 1024, STEPS = 48, PROMPT = 9, REPS = 10 };
#endif

static pthread_barrier_t start_line;

static const int32_t prompts[2][PROMPT] = {{5, 17, 301, 44, 9, 870, 12, 3, 640},
                                           {900, 2, 77, 77, 512, 18, 1000, 6, 31}};

typedef struct decode_run {
    kw_model *model;
    const int32_t *prompt;
    int32_t tokens[STEPS];
    float logits[STEPS][VOCAB];
    int together; /* wait at start_line first */
    int rc;
} decode_run;

/* Prefill the prompt, then STEPS greedy steps, keeping every step's logits. */
static void *decode(void *arg) {
    decode_run *r = arg;
    kw_kvcache *cache = NULL;
    int rc = 0;
    KW_CHECK(kw_model_create_cache(r->model, PROMPT + STEPS + 1, KW_DTYPE_BF16, &cache));
    if (r->together) pthread_barrier_wait(&start_line);
    const kw_forward_args fa = {.ids = r->prompt,
                                .n = PROMPT,
                                .mode = KW_LOGITS_LAST,
                                .logits = r->logits[0],
                                .argmax = &r->tokens[0],
                                .argmax_flags = KW_ARGMAX_ROUND_BF16};
    KW_CHECK(kw_model_forward(r->model, cache, &fa));
    for (int s = 1; s < STEPS; ++s)
        KW_CHECK(
            kw_model_decode_step(r->model, cache, r->tokens[s - 1], r->logits[s], &r->tokens[s], KW_ARGMAX_ROUND_BF16));
out:
    kw_kvcache_free(cache);
    r->rc = rc;
    return NULL;
}

static void same(const decode_run *a, const decode_run *b, const char *what) {
    assert_int_equal(a->rc, 0);
    assert_int_equal(b->rc, 0);
    if (memcmp(a->tokens, b->tokens, sizeof a->tokens) != 0) fail_msg("%s: other tokens", what);
    if (memcmp(a->logits, b->logits, sizeof a->logits) != 0) fail_msg("%s: other logits bits", what);
}

static int make_model(char *dir) {
    if (!mkdtemp(dir)) return KW_E_IO;
    kw_genmodel_options go;
    memset(&go, 0, sizeof go);
    const enum kw_arch arch = KW_ARCH_QWEN3;
    KW_FORWARD(kw_genmodel_preset("tiny", &arch, &go.cfg));
    go.cfg.vocab = VOCAB;
    go.cfg.tie_embeddings = 0;
    kw_genmodel_fit_special_ids(&go.cfg);
    go.dtype = KW_DTYPE_BF16;
    go.seed = 5;
    return kw_genmodel_write(&go, dir);
}

static void forks_on(kw_backend *be, kw_backend *other) {
    char dir[] = "/tmp/kw_model_fork_XXXXXX";
    if (make_model(dir) < 0) fail_msg("gen-model: %s", kw_error_detail());
    kw_backend_memory m0, m1, m;
    kw_backend_get_memory(be, &m0);
    kw_model *model = NULL;
    const kw_model_options mo = {.max_batch = 4}; /* the prompt runs in three chunks */
    assert_int_equal(kw_model_load(be, dir, &mo, &model), 0);
    kw_backend_get_memory(be, &m1);
    kw_backend *ctx[2] = {NULL, NULL};
    kw_model *fork[2] = {NULL, NULL};
    for (int i = 0; i < 2; ++i) {
        assert_int_equal(kw_backend_create_stream(be, &ctx[i]), 0);
        assert_int_equal(kw_model_fork(model, ctx[i], &fork[i]), 0);
        assert_ptr_equal(kw_model_parent(fork[i]), model);
        assert_ptr_equal(kw_model_backend(fork[i]), ctx[i]);
    }
    kw_backend_get_memory(be, &m);
    /* two forks cost scratch only: well under the weights the loaded model holds */
    if (kw_backend_kind(be) != KW_BACKEND_CPU) assert_true(m.live - m1.live < m1.live - m0.live);
    kw_model *ff = NULL;
    assert_int_equal(kw_model_fork(fork[0], NULL, &ff), 0);
    assert_ptr_equal(kw_model_parent(ff), model);
    assert_ptr_equal(kw_model_backend(ff), ctx[0]);
    kw_model_free(ff);
    assert_int_equal(kw_model_fork(model, other, &ff), KW_E_INVALID_ARG);
    assert_null(ff);

    static decode_run base[2], alone[2], par[2];
    for (int i = 0; i < 2; ++i) {
        base[i] = (decode_run){.model = model, .prompt = prompts[i]};
        decode(&base[i]);
        alone[i] = (decode_run){.model = fork[i], .prompt = prompts[i]};
        decode(&alone[i]);
        same(&alone[i], &base[i], "a fork alone against the loaded model");
    }
    assert_true(memcmp(base[0].logits, base[1].logits, sizeof base[0].logits) != 0);
    pthread_barrier_init(&start_line, NULL, 2);
    for (int rep = 0; rep < REPS; ++rep) {
        pthread_t t[2];
        for (int i = 0; i < 2; ++i) {
            par[i] = (decode_run){.model = fork[i], .prompt = prompts[i], .together = 1};
            assert_int_equal(pthread_create(&t[i], NULL, decode, &par[i]), 0);
        }
        for (int i = 0; i < 2; ++i)
            pthread_join(t[i], NULL);
        for (int i = 0; i < 2; ++i)
            same(&par[i], &alone[i], "two forks at once against each alone");
    }
    pthread_barrier_destroy(&start_line);
    for (int i = 0; i < 2; ++i) {
        int64_t recordings = 0, launches = 0;
        kw_model_graph_counts(fork[i], &recordings, &launches);
        if (kw_backend_kind(be) == KW_BACKEND_CUDA) /* each context recorded and replayed its own step graphs */
            assert_true(recordings > 0 && launches > 0);
        kw_model_free(fork[i]);
        kw_backend_destroy(ctx[i]);
    }
    kw_backend_get_memory(be, &m);
    if (m.live != m1.live)
        fail_msg("live %llu after the forks, %llu before", (unsigned long long)m.live, (unsigned long long)m1.live);
    kw_model_free(model);
    kw_test_remove_tree(dir);
}

#ifdef KW_TEST_CUDA_EMU
#define CREATE(threads, out) kw_backend_create_cuda_emu(0, out)
#else
#define CREATE(threads, out) kw_backend_create_cpu(threads, out)
#endif

static void test_forks(void **state) {
    (void)state;
    kw_backend *be = NULL, *other = NULL;
    assert_int_equal(CREATE(2, &be), 0);
    assert_int_equal(CREATE(1, &other), 0);
    forks_on(be, other);
    kw_backend_destroy(other);
    kw_backend_destroy(be);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_forks)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
