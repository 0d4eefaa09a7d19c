/* test_daemons_receive_emu.c: receiverd on a CUDA backend (the emulator: tests/gpu_emu/receiverd_emu) decodes the
 * CPU sharerd's KVWire sections on the device (docs/ARCHITECTURE.md "The receiver on a CUDA backend") and answers as
 * the CPU receiverd does: the same text, sections and blob bytes, with every section counted as decoded on the
 * device (the record's codec.device_decoded_sections) where the CPU receiverd counts none. c2c and kv_direct, with an
 * outlier table and rotated K and V among the policies. The receiver's own prefill and fusion round differently on
 * the GPU (test_gpu_emu_e2e.c bounds that); the tiny models' greedy text does not move under that difference. The
 * text is a weak check in c2c: the tiny fuser's answers barely depend on the fused rows (V fused as K left them
 * unchanged when tried), so there this checks the path and the counters, and test_receive_device.c the rows bit for
 * bit; in kv_direct the rows are the receiver's cache and a wrong row changes the text (tried: V stored as K).
 *
 * Built twice: with the emulator's receiverd (test_daemons_receive_emu, label gpu-emu) and, with KW_TEST_REAL_CUDA,
 * with receiverd itself on a device (tests/gpu, test_gpu_daemons_receive), which exits 77 where none exists.
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
#define GPU_RECEIVERD "receiverd"
#else
#define GPU_RECEIVERD "tests/gpu_emu/receiverd_emu"
#endif

#define PROMPT "Which planet is known as the red planet? Answer in one word."

typedef struct answer {
    char text[512];
    double sections, decoded, blob;
} answer;

/* One request to receiverd (program, with backend) served by a CPU sharerd. */
static void ask(const char *program, const char *backend, const char *mode, const char *policy, answer *out) {
    kwd_proc s, r;
    kwd_start_sharer(0, NULL, &s);
    const char *extra[] = {backend, NULL};
    kwd_start_receiver_program(program, s.port, extra, &r);
    assert_true(kwd_wait_healthy(r.port, kwd_ms(60000)));
    char body[1024];
    snprintf(body, sizeof body,
             "{\"messages\":[{\"role\":\"user\",\"content\":\"" PROMPT "\"}],\"max_tokens\":8,"
             "\"kvwire\":{\"mode\":\"%s\",\"policy\":%s}}",
             mode, policy);
    kwd_response resp;
    kwd_http(r.port, "/v1/chat/completions", body, &resp);
    if (resp.status != 200) fail_msg("%s %s %s: HTTP %ld: %s", program, mode, policy, resp.status, resp.body);
    const cJSON *text =
        kwd_json_get(cJSON_GetArrayItem(cJSON_GetObjectItem(resp.json, "choices"), 0), "message.content");
    assert_true(cJSON_IsString(text));
    snprintf(out->text, sizeof out->text, "%s", text->valuestring);
    out->sections = kwd_json_num(resp.json, "kvwire.codec.sections");
    out->decoded = kwd_json_num(resp.json, "kvwire.codec.device_decoded_sections");
    out->blob = kwd_json_num(resp.json, "kvwire.bytes.blob");
    kwd_response_free(&resp);
    kwd_stop_pair(&s, &r);
}

static void test_device_receiver_answers_as_cpu(void **state) {
    (void)state;
    static const char *const cases[][2] = {
        {"c2c", "{\"codec\":\"int8\",\"selection\":\"vnorm_topk\",\"proportion\":0.5}"},
        {"c2c", "{\"codec\":\"int4\",\"granularity\":\"group8\",\"selection\":\"knorm_topk\",\"proportion\":0.6,"
                "\"outliers\":0.02}"},
        {"c2c", "{\"codec\":\"int4\",\"selection\":\"full\",\"rotate\":\"kv\"}"},
        {"kv_direct", "{\"codec\":\"int8\",\"selection\":\"knorm_topk\",\"proportion\":0.7}"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
        answer cpu, gpu;
        ask("receiverd", "--compute.backend=cpu", cases[i][0], cases[i][1], &cpu);
        ask(GPU_RECEIVERD, "--compute.backend=cuda", cases[i][0], cases[i][1], &gpu);
        printf("%s %s: \"%s\", %g sections (%g decoded on the device), %g blob bytes\n", cases[i][0], cases[i][1],
               gpu.text, gpu.sections, gpu.decoded, gpu.blob);
        assert_string_equal(gpu.text, cpu.text);
        assert_true(cpu.sections > 0);
        assert_true(gpu.sections == cpu.sections);
        assert_true(cpu.decoded == 0);
        assert_true(gpu.decoded == gpu.sections);
        assert_true(gpu.blob == cpu.blob);
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
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_device_receiver_answers_as_cpu)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
