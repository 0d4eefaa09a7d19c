/* test_backend_streams.c: stream contexts (kw_backend_create_stream) on the CPU backend, on the emulated CUDA backend
 * (built with KW_TEST_CUDA_EMU, label gpu-emu) and on a real device (KW_TEST_REAL_CUDA, label gpu: exits 77 without
 * one). Two contexts of one parent, each driven by its own thread at the same time, run a chain of ops over weights
 * allocated on the parent and must give the same bits as the same chains run one after the other; the shared memory
 * accounting is back to where it started once both finish; the limit is one for all (a context cannot take the total
 * past it, whoever set it); each context keeps its own bad-id record; a tensor of an unrelated backend is refused.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/kw_status.h"
#include "kernels/kw_backend.h"
#ifdef KW_TEST_CUDA_EMU
#include "kernels/cuda/emu/kw_cuda_emu_api.h"
#endif

static int failed = 0;

#define CHECK(cond, ...)                                                                                               \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                                       \
            fprintf(stderr, __VA_ARGS__);                                                                              \
            fprintf(stderr, " (%s)\n", kw_error_detail());                                                             \
            ++failed;                                                                                                  \
        }                                                                                                              \
    } while (0)

/* Shapes: M rows of K through W (N, K); M above the CUDA backend's streaming-matmul bound, so cuBLAS (or the
 * emulator's GEMM) and the widened-weight workspace run too. */
#if defined(KW_TEST_CUDA_EMU)
enum { M = 12, K = 64, N = 96, ROUNDS = 6, REPS = 3 };
#else
enum { M = 12, K = 64, N = 96, ROUNDS = 200, REPS = 5 }; /* enough work for the two threads to overlap */
#endif

typedef struct shared_weights {
    kw_tensor w_f32, w_bf16, norm, w_kv; /* on the parent; norm in bf16 (widened in the CPU's scratch) */
} shared_weights;

typedef struct job {
    kw_backend *be;
    const shared_weights *sw;
    uint32_t seed;
    float out[M * N];
    int32_t amax[M];
    int rc;
} job;

static float rnd(uint32_t *s) {
    *s = *s * 1664525u + 1013904223u;
    return (float)((*s >> 8) & 0xffff) / 32768.0f - 1.0f;
}

/* One request's work: ROUNDS times rms_norm, causal attention of the rows over a KV cache of their own (4 query heads,
 * 2 kv heads of 16), matmul (f32 and bf16 weights), silu, add, softmax; then argmax; the result is downloaded once at
 * the end. */
static int run_job(job *j) {
    kw_backend *b = j->be;
    float x_host[M * K];
    uint32_t s = j->seed;
    for (int i = 0; i < M * K; ++i)
        x_host[i] = rnd(&s);
    kw_tensor x = {0}, y = {0}, y2 = {0}, h = {0}, am = {0}, kv = {0}, kc = {0}, vc = {0}, att = {0};
    int rc = 0;
    KW_CHECK(kw_tensor_alloc(b, &kv, KW_DTYPE_F32, 3, (int64_t[]){M, 2, 16}));
    KW_CHECK(kw_tensor_alloc(b, &kc, KW_DTYPE_F32, 3, (int64_t[]){2, M, 16}));
    KW_CHECK(kw_tensor_alloc(b, &vc, KW_DTYPE_F32, 3, (int64_t[]){2, M, 16}));
    KW_CHECK(kw_tensor_alloc(b, &att, KW_DTYPE_F32, 3, (int64_t[]){M, 4, 16}));
    KW_CHECK(kw_tensor_alloc(b, &x, KW_DTYPE_F32, 2, (int64_t[]){M, K}));
    KW_CHECK(kw_tensor_alloc(b, &y, KW_DTYPE_F32, 2, (int64_t[]){M, N}));
    KW_CHECK(kw_tensor_alloc(b, &y2, KW_DTYPE_F32, 2, (int64_t[]){M, N}));
    KW_CHECK(kw_tensor_alloc(b, &h, KW_DTYPE_F32, 2, (int64_t[]){M, K}));
    KW_CHECK(kw_tensor_alloc(b, &am, KW_DTYPE_I32, 1, (int64_t[]){M}));
    KW_CHECK(kw_backend_upload(b, &x, 0, x_host, sizeof x_host));
    for (int r = 0; r < ROUNDS; ++r) {
        KW_CHECK(kw_op_rms_norm(b, &h, &x, &j->sw->norm, 1e-6f, KW_RMS_NORM_PLAIN));
        kw_tensor kv2, q, att2;
        KW_CHECK(kw_tensor_view_reshape(&kv, 2, (int64_t[]){M, 32}, &kv2));
        KW_CHECK(kw_op_matmul(b, &kv2, &h, &j->sw->w_kv, NULL));
        KW_CHECK(kw_op_kv_store(b, &kc, &kv, 0));
        KW_CHECK(kw_op_scale(b, &kv, &kv, -0.5f));
        KW_CHECK(kw_op_kv_store(b, &vc, &kv, 0));
        KW_CHECK(kw_tensor_view_reshape(&h, 3, (int64_t[]){M, 4, 16}, &q));
        const kw_attention_params ap = {.q_pos0 = 0, .n_kv = M, .scale = 0.25f};
        KW_CHECK(kw_op_attention(b, &att, &q, &kc, &vc, &ap));
        KW_CHECK(kw_tensor_view_reshape(&att, 2, (int64_t[]){M, K}, &att2));
        KW_CHECK(kw_op_add(b, &h, &h, &att2));
        KW_CHECK(kw_op_matmul(b, &y, &h, &j->sw->w_f32, NULL));
        KW_CHECK(kw_op_matmul(b, &y2, &h, &j->sw->w_bf16, NULL));
        KW_CHECK(kw_op_unary(b, &y2, &y2, KW_ACT_SILU));
        KW_CHECK(kw_op_add(b, &y, &y, &y2));
        KW_CHECK(kw_op_softmax(b, &y, &y));
        /* feed the result back: the first K columns scaled up become the next round's input */
        kw_tensor yv;
        KW_CHECK(kw_tensor_view_reshape(&y, 2, (int64_t[]){M * N / K, K}, &yv));
        kw_tensor head;
        KW_CHECK(kw_tensor_view_rows(&yv, 0, M, &head));
        KW_CHECK(kw_op_scale(b, &x, &head, 50.0f));
    }
    KW_CHECK(kw_op_argmax(b, &am, &y, KW_ARGMAX_PLAIN));
    KW_CHECK(kw_backend_download(b, j->out, &y, 0, sizeof j->out));
    KW_CHECK(kw_backend_download(b, j->amax, &am, 0, sizeof j->amax));
    KW_CHECK(kw_backend_synchronize(b));
out:
    kw_tensor_free(&x), kw_tensor_free(&y), kw_tensor_free(&y2), kw_tensor_free(&h), kw_tensor_free(&am);
    kw_tensor_free(&kv), kw_tensor_free(&kc), kw_tensor_free(&vc), kw_tensor_free(&att);
    j->rc = rc;
    return rc;
}

static void *job_thread(void *arg) {
    run_job(arg);
    return NULL;
}

static int make_weights(kw_backend *p, shared_weights *sw) {
    static float w[N * K], wkv[32 * K];
    static uint16_t wb[N * K], n[K];
    uint32_t s = 7;
    for (int i = 0; i < N * K; ++i) {
        w[i] = rnd(&s) * 0.2f;
        uint32_t u;
        memcpy(&u, &w[i], 4);
        wb[i] = (uint16_t)(u >> 16);
    }
    for (int i = 0; i < K; ++i) {
        const float f = 1.0f + rnd(&s) * 0.1f;
        uint32_t u;
        memcpy(&u, &f, 4);
        n[i] = (uint16_t)(u >> 16);
    }
    for (int i = 0; i < 32 * K; ++i)
        wkv[i] = rnd(&s) * 0.3f;
    KW_FORWARD(kw_tensor_alloc(p, &sw->w_f32, KW_DTYPE_F32, 2, (int64_t[]){N, K}));
    KW_FORWARD(kw_tensor_alloc(p, &sw->w_bf16, KW_DTYPE_BF16, 2, (int64_t[]){N, K}));
    KW_FORWARD(kw_tensor_alloc(p, &sw->norm, KW_DTYPE_BF16, 1, (int64_t[]){K}));
    KW_FORWARD(kw_tensor_alloc(p, &sw->w_kv, KW_DTYPE_F32, 2, (int64_t[]){32, K}));
    KW_FORWARD(kw_backend_upload(p, &sw->w_kv, 0, wkv, sizeof wkv));
    KW_FORWARD(kw_backend_upload(p, &sw->w_f32, 0, w, sizeof w));
    KW_FORWARD(kw_backend_upload(p, &sw->w_bf16, 0, wb, sizeof wb));
    KW_FORWARD(kw_backend_upload(p, &sw->norm, 0, n, sizeof n));
    return kw_backend_synchronize(p); /* the parent's uploads complete before a context reads them */
}

static void free_weights(shared_weights *sw) {
    kw_tensor_free(&sw->w_f32), kw_tensor_free(&sw->w_bf16), kw_tensor_free(&sw->norm), kw_tensor_free(&sw->w_kv);
}

/* Concurrent == sequential, bit for bit, and the accounting back to its start. */
static void check_concurrency(const char *name, kw_backend *p) {
    shared_weights sw = {0};
    CHECK(make_weights(p, &sw) == 0, "%s: weights", name);
    kw_backend *a = NULL, *b = NULL;
    CHECK(kw_backend_create_stream(p, &a) == 0, "%s: stream a", name);
    CHECK(kw_backend_create_stream(a, &b) == 0, "%s: stream b (from a context: a context of the parent)", name);
    if (!a || !b) return;
    CHECK(kw_backend_root(a) == p && kw_backend_root(b) == p && kw_backend_root(p) == p, "%s: roots", name);
    /* the parent alone first (on CUDA it grows the parent's workspace, which stays charged while the parent lives) */
    static job alone;
    alone = (job){.be = p, .sw = &sw, .seed = 1001u};
    CHECK(run_job(&alone) == 0, "%s: job on the parent", name);
    kw_backend_memory m0, m;
    kw_backend_get_memory(p, &m0);

    static job seq[2], par[2];
    memset(seq, 0, sizeof seq), memset(par, 0, sizeof par);
    kw_backend *ctx[2] = {a, b};
    for (int i = 0; i < 2; ++i) {
        seq[i] = (job){.be = ctx[i], .sw = &sw, .seed = 1000u + (uint32_t)i};
        par[i] = seq[i];
        CHECK(run_job(&seq[i]) == 0, "%s: sequential job %d", name, i);
    }
    /* the parent alone gave the same */
    CHECK(memcmp(alone.out, seq[1].out, sizeof alone.out) == 0, "%s: the parent's result differs from a context's",
          name);
    for (int rep = 0; rep < REPS; ++rep) {
        pthread_t t[2];
        for (int i = 0; i < 2; ++i) {
            par[i] = (job){.be = ctx[i], .sw = &sw, .seed = 1000u + (uint32_t)i};
            CHECK(pthread_create(&t[i], NULL, job_thread, &par[i]) == 0, "%s: thread", name);
        }
        for (int i = 0; i < 2; ++i)
            pthread_join(t[i], NULL);
        for (int i = 0; i < 2; ++i) {
            CHECK(par[i].rc == 0, "%s: concurrent job %d failed", name, i);
            CHECK(memcmp(par[i].out, seq[i].out, sizeof par[i].out) == 0, "%s: concurrent job %d differs", name, i);
            CHECK(memcmp(par[i].amax, seq[i].amax, sizeof par[i].amax) == 0, "%s: concurrent argmax %d differs", name,
                  i);
        }
    }
    CHECK(memcmp(seq[0].out, seq[1].out, sizeof seq[0].out) != 0, "%s: the two jobs should differ", name);
    /* every tensor of the jobs freed: the shared live bytes are back (a CUDA context keeps its workspace, charged
     * once per context; so compare against a state taken after a first run, as above) */
    kw_backend_get_memory(b, &m);
    CHECK(m.live == m0.live || kw_backend_kind(p) == KW_BACKEND_CUDA, "%s: live %llu after, %llu before", name,
          (unsigned long long)m.live, (unsigned long long)m0.live);
    kw_backend_memory ma, mp;
    kw_backend_get_memory(a, &ma);
    kw_backend_get_memory(p, &mp);
    CHECK(ma.live == mp.live && ma.peak == mp.peak, "%s: a context's accounting is not the parent's", name);
    kw_backend_destroy(b);
    kw_backend_destroy(a);
    kw_backend_get_memory(p, &m);
    CHECK(m.live == m0.live, "%s: live %llu once the contexts are gone, %llu at the start", name,
          (unsigned long long)m.live, (unsigned long long)m0.live);
    free_weights(&sw);
}

/* One limit for all, whoever sets it; per-context bad-id records; foreign tensors refused. */
static void check_limits(const char *name, kw_backend *p, kw_backend *other) {
    kw_backend *a = NULL, *b = NULL;
    CHECK(kw_backend_create_stream(p, &a) == 0 && kw_backend_create_stream(p, &b) == 0, "%s: streams", name);
    if (!a || !b) return;
    kw_backend_memory m0, m;
    kw_backend_get_memory(p, &m0);
    CHECK(kw_backend_set_memory_limit(a, m0.live + (1u << 20)) == 0, "%s: limit set through a context", name);
    kw_backend_get_memory(p, &m);
    CHECK(m.limit == m0.live + (1u << 20), "%s: the parent does not see the limit a context set", name);
    kw_tensor t1 = {0}, t2 = {0}, t3 = {0};
    CHECK(kw_tensor_alloc(a, &t1, KW_DTYPE_F32, 1, (int64_t[]){(700 << 10) / 4}) == 0, "%s: 700 KiB on a", name);
    const int rc = kw_tensor_alloc(b, &t2, KW_DTYPE_F32, 1, (int64_t[]){(700 << 10) / 4});
    CHECK(rc == KW_E_NOMEM && strstr(kw_error_detail(), "memory limit") != NULL,
          "%s: 700 more KiB on b must not fit the shared limit (got %s)", name, kw_status_name(rc));
    CHECK(t2.data == NULL, "%s: refused tensor", name);
    kw_backend_get_memory(b, &m);
    CHECK(m.live == m0.live + (700u << 10), "%s: live %llu, expected start + 700 KiB", name,
          (unsigned long long)m.live);
    CHECK(kw_tensor_alloc(p, &t3, KW_DTYPE_F32, 1, (int64_t[]){(700 << 10) / 4}) == KW_E_NOMEM, "%s: nor on the parent",
          name);
    kw_tensor_free(&t1);
    CHECK(kw_tensor_alloc(b, &t2, KW_DTYPE_F32, 1, (int64_t[]){(700 << 10) / 4}) == 0, "%s: fits once a freed", name);
    kw_tensor_free(&t2);
    CHECK(kw_backend_set_memory_limit(p, 0) == 0, "%s: lift", name);

    /* a bad id on a is a's error, not b's */
    kw_tensor table = {0}, ids = {0}, rows = {0}, rows_b = {0}, ids_b = {0};
    const int32_t bad[2] = {1, 99}, good[2] = {0, 1};
    CHECK(kw_tensor_alloc(p, &table, KW_DTYPE_F32, 2, (int64_t[]){4, 8}) == 0, "%s: table", name);
    CHECK(kw_backend_memset_zero(p, &table) == 0 && kw_backend_synchronize(p) == 0, "%s: table zero", name);
    CHECK(kw_tensor_alloc(a, &ids, KW_DTYPE_I32, 1, (int64_t[]){2}) == 0, "%s: ids", name);
    CHECK(kw_tensor_alloc(a, &rows, KW_DTYPE_F32, 2, (int64_t[]){2, 8}) == 0, "%s: rows", name);
    CHECK(kw_tensor_alloc(b, &ids_b, KW_DTYPE_I32, 1, (int64_t[]){2}) == 0, "%s: ids b", name);
    CHECK(kw_tensor_alloc(b, &rows_b, KW_DTYPE_F32, 2, (int64_t[]){2, 8}) == 0, "%s: rows b", name);
    CHECK(kw_backend_upload(a, &ids, 0, bad, sizeof bad) == 0, "%s: upload", name);
    CHECK(kw_backend_upload(b, &ids_b, 0, good, sizeof good) == 0, "%s: upload b", name);
    CHECK(kw_op_get_rows(a, &rows, &table, &ids) == 0, "%s: get_rows a", name);
    CHECK(kw_op_get_rows(b, &rows_b, &table, &ids_b) == 0, "%s: get_rows b", name);
    CHECK(kw_backend_synchronize(b) == 0, "%s: b saw a's bad id", name);
    CHECK(kw_backend_synchronize(p) == 0, "%s: the parent saw a's bad id", name);
    CHECK(kw_backend_synchronize(a) == KW_E_TOKEN_ID, "%s: a lost its bad id", name);
    CHECK(kw_backend_synchronize(a) == 0, "%s: reported once", name);

    /* a tensor of an unrelated backend is refused, the context's own and the parent's accepted */
    kw_tensor foreign = {0};
    CHECK(kw_tensor_alloc(other, &foreign, KW_DTYPE_F32, 2, (int64_t[]){2, 8}) == 0, "%s: foreign", name);
    CHECK(kw_op_add(a, &rows, &rows, &foreign) == KW_E_INVALID_ARG, "%s: a foreign tensor was accepted", name);
    CHECK(kw_op_add(a, &rows, &rows, &rows_b) == 0, "%s: a sibling's tensor was refused", name);
    CHECK(kw_backend_synchronize(a) == 0 && kw_backend_synchronize(b) == 0, "%s: sync", name);
    kw_tensor_free(&foreign);
    kw_tensor_free(&table), kw_tensor_free(&ids), kw_tensor_free(&rows), kw_tensor_free(&ids_b),
        kw_tensor_free(&rows_b);
    kw_backend_destroy(b);
    kw_backend_destroy(a);
    kw_backend_get_memory(p, &m);
    CHECK(m.live == m0.live, "%s: live %llu at the end, %llu at the start", name, (unsigned long long)m.live,
          (unsigned long long)m0.live);
}

static void check_backend(const char *name, kw_backend *p, kw_backend *other) {
    check_concurrency(name, p);
    check_limits(name, p, other);
}

int main(void) {
    kw_backend *p = NULL, *other = NULL;
#if defined(KW_TEST_CUDA_EMU) || defined(KW_TEST_REAL_CUDA)
#ifdef KW_TEST_CUDA_EMU
    const int rc = kw_backend_create_cuda_emu(0, &p);
    if (rc == 0) kw_backend_create_cuda_emu(0, &other);
#else
    const int rc = kw_backend_create_cuda(0, &p);
    if (rc == KW_E_NO_DEVICE || rc == KW_E_UNSUPPORTED) {
        printf("SKIP: no CUDA device (%s)\n", kw_error_detail());
        return 77;
    }
    if (rc == 0) kw_backend_create_cuda(0, &other);
#endif
    CHECK(rc == 0 && other != NULL, "cuda backend");
    if (p && other) check_backend("cuda", p, other);
#else
    CHECK(kw_backend_create_cpu(2, &p) == 0 && kw_backend_create_cpu(1, &other) == 0, "cpu backend");
    kw_backend *c = NULL;
    CHECK(kw_backend_create_stream(p, &c) == 0, "cpu stream");
    CHECK(c && kw_backend_cpu_isa(c) && strcmp(kw_backend_cpu_isa(c), kw_backend_cpu_isa(p)) == 0, "cpu isa");
    CHECK(kw_backend_cpu_threads(p) == 2 && kw_backend_cpu_threads(c) == 2,
          "a stream context has its parent's threads");
    kw_backend_destroy(c);
    /* compute.threads 0 with compute.workers N: the online cores divided among the workers, at least 1 each */
    const int cores = kw_backend_threads_per_worker(0, 1);
    CHECK(cores == (int)sysconf(_SC_NPROCESSORS_ONLN), "threads 0, one worker: every core (%d)", cores);
    CHECK(kw_backend_threads_per_worker(0, 0) == cores, "threads 0, workers 0 counts as 1");
    CHECK(kw_backend_threads_per_worker(0, 2) == (cores / 2 > 1 ? cores / 2 : 1), "threads 0, two workers");
    CHECK(kw_backend_threads_per_worker(0, cores + 1) == 1, "more workers than cores: one thread each");
    CHECK(kw_backend_threads_per_worker(3, 4) == 3, "threads given: kept whatever the workers");
    const kw_backend_options two = {.kind = KW_BACKEND_CPU, .n_threads = 0, .n_workers = 2};
    kw_backend *w = NULL;
    CHECK(kw_backend_create_with(&two, &w) == 0 && kw_backend_cpu_threads(w) == kw_backend_threads_per_worker(0, 2),
          "kw_backend_create_with divides the cores among n_workers");
    kw_backend_destroy(w);
    check_backend("cpu", p, other);
#endif
    kw_backend_destroy(other);
    kw_backend_destroy(p);
    if (failed) {
        fprintf(stderr, "%d check(s) failed\n", failed);
        return 1;
    }
    printf("ok\n");
    return 0;
}
