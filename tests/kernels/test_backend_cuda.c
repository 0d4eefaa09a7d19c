/* test_backend_cuda.c: the op parity case table (kw_backend_cases.c) on the CUDA backend, against the same kw_ref
 * oracles and tolerances as the CPU. Exits 77 (skipped) when kvwire was built without CUDA or no device exists.
 * Built a second time with KW_TEST_CUDA_EMU (test_kernels_backend_cuda_emu, label gpu-emu): the same kernels compiled
 * as host C++ and run by the CUDA emulator (kernels/cuda/emu), which needs no device; that build also checks that no
 * kernel faulted (deadlock, divergent barrier, guard bytes) and that every device allocation was freed.
 * Cases whose (op, dtype) the CUDA backend does not list in supports() are reported, not failed. Then the backend's
 * own contract:
 *  - the deferred get_rows error (kw_case_bad_ids): the device record must report what the CPU backend reports;
 *  - a refused allocation (far beyond any GPU's memory) must not make the next op fail (the runtime's last error);
 *  - two backends on one device, used alternately (separate streams, pools and error records), and a backend driven
 *    from a thread other than the one that created it (the current device is per thread);
 *  - every quantized weight layout is there (kw_backend_supports_layout 1); their parity is test_cuda_qmatmul's;
 *  - the paged quantized KV cache against the CPU backend's (kw_kvq_parity.c): the same stored bytes and loaded bits,
 *    attention with the bits of the CUDA dense attention on the held values; its ops are not recorded into graphs.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/kw_status.h"
#include "kernels/kw_backend.h"
#include "kw_backend_cases.h"
#include "kw_kvq_parity.h"

#ifdef KW_TEST_CUDA_EMU
#include "kernels/cuda/emu/kw_cuda_emu_api.h"
#define kw_create_cuda kw_backend_create_cuda_emu
#else
#define kw_create_cuda kw_backend_create_cuda
#endif

static size_t failed = 0, run = 0;

static void kw_expect(int ok, const char *what) {
    ++run;
    if (!ok) {
        fprintf(stderr, "FAIL cuda: %s\n", what);
        ++failed;
    }
}

/* The first n supported cases of the table on b; 1 if all pass. */
static int kw_some_cases(kw_backend *b, size_t n) {
    int ok = 1;
    for (size_t i = 0; i < kw_n_cases && n > 0; ++i) {
        const enum kw_case_result r = kw_case_run(b, &kw_cases[i], 0, NULL);
        if (r == KW_CASE_UNSUPPORTED) continue;
        ok = ok && r == KW_CASE_PASS;
        --n;
    }
    return ok;
}

static int kw_refused_alloc_then_op(kw_backend *b) {
    kw_tensor huge = {0};
    const int rc =
        kw_tensor_alloc(b, &huge, KW_DTYPE_F32, 2, (int64_t[]){(int64_t)1 << 20, (int64_t)1 << 18}); /* 1 TiB */
    if (rc == 0) {
        kw_tensor_free(&huge);
        fprintf(stderr, "  a 1 TiB allocation succeeded\n");
        return 0;
    }
    printf("1 TiB allocation refused: %s (%s)\n", kw_status_name(rc), kw_error_detail());
    return (rc == KW_E_NOMEM || rc == KW_E_CUDA) && kw_some_cases(b, 3) && kw_backend_synchronize(b) == 0;
}

static int kw_two_backends(kw_backend *b) {
    kw_backend *b2 = NULL;
    if (kw_create_cuda(0, &b2) != 0) {
        fprintf(stderr, "  second backend: %s\n", kw_error_detail());
        return 0;
    }
    int ok = 1;
    for (size_t i = 0; i < kw_n_cases && i < 20; ++i) {
        const enum kw_case_result r1 = kw_case_run(b, &kw_cases[i], 0, NULL);
        const enum kw_case_result r2 = kw_case_run(b2, &kw_cases[i], 0, NULL);
        ok = ok && r1 != KW_CASE_FAIL && r2 != KW_CASE_FAIL;
    }
    ok = ok && kw_case_bad_ids(b2) && kw_backend_synchronize(b) == 0; /* b2's error stays b2's */
    kw_backend_destroy(b2);
    return ok;
}

static void *kw_thread_cases(void *arg) {
    static int ok;
    ok = kw_some_cases((kw_backend *)arg, 10);
    return &ok;
}

static int kw_other_thread(kw_backend *b) {
    pthread_t th;
    void *res = NULL;
    if (pthread_create(&th, NULL, kw_thread_cases, b) != 0 || pthread_join(th, &res) != 0) return 0;
    return *(int *)res;
}

/* The CUDA backend keeps weights quantized in every layout but the CPU's int8-activation ones (a model then packs
 * GGUF weights as they are). */
static int kw_quantized_layouts(kw_backend *b) {
    for (int l = KW_LAYOUT_QPANELS_S4; l <= KW_LAYOUT_QPANELS_S8_G16; ++l)
        if (!kw_backend_supports_layout(b, (enum kw_layout)l)) return 0;
    return !kw_backend_supports_layout(b, KW_LAYOUT_QPANELS_U4_X8) &&
           !kw_backend_supports_layout(b, KW_LAYOUT_QPANELS_S8_G16_X8) &&
           !kw_backend_supports_layout(b, KW_LAYOUT_QPANELS_U4_SB_X8) &&
           !kw_backend_supports_layout(b, KW_LAYOUT_QPANELS_S8_G16_SB_X8) &&
           !kw_backend_supports_layout(b, KW_LAYOUT_QPANELS_S6_G16_SB_X8) &&
           !kw_backend_supports_layout(b, KW_LAYOUT_QPANELS_S8_X8);
}

/* A quantized-cache op while a step graph records is refused (KW_E_UNSUPPORTED) and fails the recording. */
static int kw_kvq_not_recorded(kw_backend *b) {
    const kw_kvq_geom g = {KW_KVQ_INT8, 1, 1, 32, 16, 16};
    size_t bytes = 0;
    kw_tensor store = {0}, rows = {0};
    int ok = kw_kvq_bytes(&g, &bytes) == 0 &&
             kw_tensor_alloc(b, &store, KW_DTYPE_U8, 1, (int64_t[]){(int64_t)bytes}) == 0 &&
             kw_tensor_alloc(b, &rows, KW_DTYPE_F32, 3, (int64_t[]){1, 1, 16}) == 0;
    ok = ok && kw_backend_graph_begin(b, 0) == 0;
    if (ok) {
        const int rc = kw_op_kvq_store(b, &store, &g, &rows, 0, 0);
        kw_backend_graph *graph = NULL;
        const int end = kw_backend_graph_end(b, &graph);
        kw_backend_graph_free(graph);
        ok = rc == KW_E_UNSUPPORTED && end < 0;
    }
    kw_tensor_free(&store);
    kw_tensor_free(&rows);
    return ok && kw_backend_synchronize(b) == 0;
}

int main(void) {
    kw_backend *b = NULL;
    const int rc = kw_create_cuda(0, &b);
    if (rc == KW_E_UNSUPPORTED || rc == KW_E_NO_DEVICE) {
        printf("skipped: %s (%s)\n", kw_status_name(rc), kw_error_detail());
        return 77;
    }
    if (rc != 0) {
        fprintf(stderr, "kw_backend_create_cuda: %s (%s)\n", kw_status_name(rc), kw_error_detail());
        return 1;
    }
    size_t unsupported = 0;
    char desc[160];
    for (size_t i = 0; i < kw_n_cases; ++i) {
        const enum kw_case_result r = kw_case_run(b, &kw_cases[i], 0, NULL);
        kw_case_describe(&kw_cases[i], desc, sizeof desc);
        if (r == KW_CASE_UNSUPPORTED) {
            printf("unsupported on cuda: %s\n", desc);
            ++unsupported;
            continue;
        }
        kw_expect(r == KW_CASE_PASS, desc);
    }
    kw_expect(kw_case_bad_ids(b), "get_rows bad ids reported at synchronize");
    kw_expect(kw_refused_alloc_then_op(b), "ops after a refused allocation");
    kw_expect(kw_two_backends(b), "two backends on one device, alternately");
    kw_expect(kw_other_thread(b), "a backend driven from another thread");
    kw_expect(kw_quantized_layouts(b), "every quantized weight layout supported");
    kw_expect(kw_backend_supports_kvq(b), "the quantized KV cache is supported");
    kw_expect(kw_kvq_parity(b, &run) == 0, "the quantized KV cache equals the cpu's (kw_kvq_parity)");
    kw_expect(kw_kvq_not_recorded(b), "a quantized-cache op is not recorded into a step graph");
    kw_backend_destroy(b);
#ifdef KW_TEST_CUDA_EMU
    kw_cuda_emu_stats st;
    kw_cuda_emu_get_stats(&st);
    printf("emulator: %llu kernels, %llu blocks, %llu threads, %llu fiber switches\n", (unsigned long long)st.kernels,
           (unsigned long long)st.blocks, (unsigned long long)st.threads, (unsigned long long)st.switches);
    kw_expect(st.faults == 0, "no kernel fault");
    kw_expect(st.live_allocations == 0, "every device allocation freed");
#endif
    printf("cuda: %zu checks run, %zu failed, %zu unsupported cases\n", run, failed, unsupported);
    return failed == 0 && run > 0 ? 0 : 1;
}
