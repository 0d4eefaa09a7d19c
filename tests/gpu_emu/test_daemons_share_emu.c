/* test_daemons_share_emu.c: sharerd on a CUDA backend (the emulator: tests/gpu_emu/sharerd_emu) serves receiverd
 * (CPU) through the device path of the sharer (selection and KVWire tensors on the device, docs/ARCHITECTURE.md "The
 * sharer on a CUDA backend"), and the answer is the CPU sharerd's: the same text, rows, sections and blob bytes, with
 * every section counted as encoded on the device (ShareEnd.device_sections, the record's codec.device_sections) where
 * the CPU sharer counts none. The sharer's prefill rounds differently on the GPU (test_gpu_emu_e2e.c bounds that), so
 * the blob bytes are compared by count, not content (test_share_device.c compares contents on one backend); the
 * tiny models' greedy text does not move under that difference.
 *
 * Built twice: with the emulator's sharerd (test_daemons_share_emu, label gpu-emu) and, with KW_TEST_REAL_CUDA, with
 * sharerd itself on a device (tests/gpu, test_gpu_daemons_share), which exits 77 where none exists.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "kernels/kw_backend.h"
#include "tests/daemons/kwd_harness.h"

#ifdef KW_TEST_REAL_CUDA
#define GPU_SHARERD "sharerd"
#else
#define GPU_SHARERD "tests/gpu_emu/sharerd_emu"
#endif

#define PROMPT "Which planet is known as the red planet? Answer in one word."

/* sharerd (program: "sharerd", or the emulator's) with kwd_start_sharer's models and args plus extra. */
static void start_sharer(const char *program, const char *extra, kwd_proc *out) {
    char m0[600], m1[600];
    snprintf(m0, sizeof m0, "--models.0.path=%s/tiny-qwen2", kwd_models_dir());
    snprintf(m1, sizeof m1, "--models.1.path=%s/tiny-qwen3", kwd_models_dir());
    const char *args[] = {"--models.0.name=tiny-qwen2",
                          m0,
                          "--models.1.name=tiny-qwen3",
                          m1,
                          "--listen.port=0",
                          "--compute.threads=1",
                          "--log.level=debug",
                          extra,
                          NULL};
    kwd_start(program, args, out);
}

typedef struct answer {
    char text[512];
    double sections, device_sections, blob, rows;
} answer;

static void ask(const char *program, const char *backend, const char *policy, answer *out) {
    kwd_proc s, r;
    start_sharer(program, backend, &s);
    kwd_start_receiver(s.port, NULL, &r);
    assert_true(kwd_wait_healthy(r.port, kwd_ms(60000)));
    char body[1024];
    snprintf(body, sizeof body,
             "{\"messages\":[{\"role\":\"user\",\"content\":\"" PROMPT "\"}],\"max_tokens\":8,"
             "\"kvwire\":{\"policy\":%s}}",
             policy);
    kwd_response resp;
    kwd_http(r.port, "/v1/chat/completions", body, &resp);
    if (resp.status != 200) fail_msg("%s %s: HTTP %ld: %s", program, policy, resp.status, resp.body);
    const cJSON *text =
        kwd_json_get(cJSON_GetArrayItem(cJSON_GetObjectItem(resp.json, "choices"), 0), "message.content");
    assert_true(cJSON_IsString(text));
    snprintf(out->text, sizeof out->text, "%s", text->valuestring);
    out->sections = kwd_json_num(resp.json, "kvwire.codec.sections");
    out->device_sections = kwd_json_num(resp.json, "kvwire.codec.device_sections");
    out->blob = kwd_json_num(resp.json, "kvwire.bytes.blob");
    out->rows = kwd_json_num(resp.json, "kvwire.selection.tokens_sent");
    kwd_response_free(&resp);
    kwd_stop_pair(&s, &r);
}

static void test_device_sharer_answers_as_cpu(void **state) {
    (void)state;
    static const char *const policies[] = {
        "{\"codec\":\"int8\",\"selection\":\"vnorm_topk\",\"proportion\":0.5}",
        "{\"codec\":\"int4\",\"granularity\":\"group8\",\"selection\":\"knorm_topk\",\"proportion\":0.6}",
        "{\"codec\":\"int4\",\"selection\":\"vnorm_topk\",\"proportion\":0.5,\"outliers\":0.02}",
    };
    for (size_t i = 0; i < sizeof policies / sizeof policies[0]; ++i) {
        answer cpu, gpu;
        ask("sharerd", "--compute.backend=cpu", policies[i], &cpu);
        ask(GPU_SHARERD, "--compute.backend=cuda", policies[i], &gpu);
        printf("%s: \"%s\", %g sections (%g on the device), %g blob bytes, %g rows\n", policies[i], gpu.text,
               gpu.sections, gpu.device_sections, gpu.blob, gpu.rows);
        assert_string_equal(gpu.text, cpu.text);
        assert_true(cpu.sections > 0);
        assert_true(gpu.sections == cpu.sections);
        assert_true(cpu.device_sections == 0);
        assert_true(gpu.device_sections == gpu.sections);
        assert_true(gpu.blob == cpu.blob);
        assert_true(gpu.rows == cpu.rows);
    }
}

int main(void) {
#ifdef KW_TEST_REAL_CUDA
    kw_backend *be = NULL;
    if (kw_backend_create_cuda(0, &be) < 0) {
        fprintf(stderr, "no CUDA device: skipped\n");
        return 77;
    }
    kw_backend_destroy(be);
#endif
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_device_sharer_answers_as_cpu)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
