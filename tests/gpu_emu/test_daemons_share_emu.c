/* test_daemons_share_emu.c: the daemons on a CUDA backend (the emulator: tests/gpu_emu/sharerd_emu and
 * receiverd_emu) answer as on the CPU backend.
 *
 * The sharer: sharerd on the device serves receiverd (CPU) through the device path of the sharer (selection and KVWire
 * tensors on the device, docs/ARCHITECTURE.md "The sharer on a CUDA backend"), and the answer is the CPU sharerd's:
 * the same text, rows, sections and blob bytes, with every section counted as encoded on the device
 * (ShareEnd.device_sections, the record's codec.device_sections) where the CPU sharer counts none. The sharer's
 * prefill rounds differently on the GPU (test_gpu_emu_e2e.c bounds that), so the blob bytes are compared by count, not
 * content (test_share_device.c compares contents on one backend); the tiny models' greedy text does not move under
 * that difference.
 *
 * The receiver: receiverd on the device decodes the CPU sharerd's sections there ("The receiver on a CUDA backend"),
 * c2c and kv_direct, an outlier table, rotated K and V and pre-RoPE keys (rotated on the device) among the policies,
 * and answers as the CPU receiverd: the same text, sections and bytes, every section counted in the record's
 * codec.device_decoded_sections. The text is a weak check in c2c: the tiny fuser's answers barely depend on the fused
 * rows (V fused as K left them unchanged when tried), so there this checks the path and the counters, and
 * test_receive_device.c the rows bit for bit; in kv_direct the rows are the receiver's cache and a wrong row changes
 * the text (tried: V stored as K).
 *
 * Built twice: with the emulator's daemons (test_daemons_share_emu, label gpu-emu) and, with KW_TEST_REAL_CUDA, with
 * sharerd and receiverd themselves on a device (tests/gpu, test_gpu_daemons_share), which exits 77 where none exists.
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
#define GPU_SHARERD   "sharerd"
#define GPU_RECEIVERD "receiverd"
#else
#define GPU_SHARERD   "tests/gpu_emu/sharerd_emu"
#define GPU_RECEIVERD "tests/gpu_emu/receiverd_emu"
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
    double sections, device_sections, decoded, blob, rows;
} answer;

/* The daemons that answer: each a program and its --compute.backend argument. */
typedef struct pair {
    const char *sharer, *sharer_backend, *receiver, *receiver_backend;
} pair;

static void ask(const pair *d, const char *mode, const char *policy, answer *out) {
    kwd_proc s, r;
    start_sharer(d->sharer, d->sharer_backend, &s);
    const char *extra[] = {d->receiver_backend, NULL};
    kwd_start_receiver_program(d->receiver, s.port, extra, &r);
    assert_true(kwd_wait_healthy(r.port, kwd_ms(60000)));
    char body[1024];
    snprintf(body, sizeof body,
             "{\"messages\":[{\"role\":\"user\",\"content\":\"" PROMPT "\"}],\"max_tokens\":8,"
             "\"kvwire\":{\"mode\":\"%s\",\"policy\":%s}}",
             mode, policy);
    kwd_response resp;
    kwd_http(r.port, "/v1/chat/completions", body, &resp);
    if (resp.status != 200)
        fail_msg("%s, %s %s %s: HTTP %ld: %s", d->sharer, d->receiver, mode, policy, resp.status, resp.body);
    const cJSON *text =
        kwd_json_get(cJSON_GetArrayItem(cJSON_GetObjectItem(resp.json, "choices"), 0), "message.content");
    assert_true(cJSON_IsString(text));
    snprintf(out->text, sizeof out->text, "%s", text->valuestring);
    out->sections = kwd_json_num(resp.json, "kvwire.codec.sections");
    out->device_sections = kwd_json_num(resp.json, "kvwire.codec.device_sections");
    out->decoded = kwd_json_num(resp.json, "kvwire.codec.device_decoded_sections");
    out->blob = kwd_json_num(resp.json, "kvwire.bytes.blob");
    out->rows = kwd_json_num(resp.json, "kvwire.selection.tokens_sent");
    kwd_response_free(&resp);
    kwd_stop_pair(&s, &r);
}

static void test_device_sharer_answers_as_cpu(void **state) {
    (void)state;
    static const char *const cases[][2] = {
        {"c2c", "{\"codec\":\"int8\",\"selection\":\"vnorm_topk\",\"proportion\":0.5}"},
        {"c2c", "{\"codec\":\"int4\",\"granularity\":\"group8\",\"selection\":\"knorm_topk\",\"proportion\":0.6}"},
        {"c2c", "{\"codec\":\"int4\",\"selection\":\"vnorm_topk\",\"proportion\":0.5,\"outliers\":0.02}"},
        /* clipped scales, a per-token byte cap, pre-RoPE keys: encoded on the device too */
        {"c2c", "{\"codec\":\"int3\",\"selection\":\"knorm_topk\",\"proportion\":0.6,\"clip\":\"kv\"}"},
        {"c2c", "{\"codec\":\"int8\",\"selection\":\"vnorm_topk\",\"proportion\":0.5,\"budget_bytes\":1600}"},
        {"kv_direct", "{\"codec\":\"int8\",\"selection\":\"knorm_topk\",\"proportion\":0.7,\"pre_rope_keys\":true}"},
    };
    const pair cpu_pair = {"sharerd", "--compute.backend=cpu", "receiverd", "--compute.backend=cpu"};
    const pair gpu_pair = {GPU_SHARERD, "--compute.backend=cuda", "receiverd", "--compute.backend=cpu"};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
        answer cpu, gpu;
        ask(&cpu_pair, cases[i][0], cases[i][1], &cpu);
        ask(&gpu_pair, cases[i][0], cases[i][1], &gpu);
        printf("%s %s: \"%s\", %g sections (%g on the device), %g blob bytes, %g rows\n", cases[i][0], cases[i][1],
               gpu.text, gpu.sections, gpu.device_sections, gpu.blob, gpu.rows);
        assert_string_equal(gpu.text, cpu.text);
        assert_true(cpu.sections > 0);
        assert_true(gpu.sections == cpu.sections);
        assert_true(cpu.device_sections == 0);
        assert_true(gpu.device_sections == gpu.sections);
        assert_true(gpu.blob == cpu.blob);
        assert_true(gpu.rows == cpu.rows);
    }
}

static void test_device_receiver_answers_as_cpu(void **state) {
    (void)state;
    static const char *const cases[][2] = {
        {"c2c", "{\"codec\":\"int8\",\"selection\":\"vnorm_topk\",\"proportion\":0.5}"},
        {"c2c", "{\"codec\":\"int4\",\"granularity\":\"group8\",\"selection\":\"knorm_topk\",\"proportion\":0.6,"
                "\"outliers\":0.02}"},
        {"c2c", "{\"codec\":\"int4\",\"selection\":\"full\",\"rotate\":\"kv\"}"},
        {"kv_direct", "{\"codec\":\"int8\",\"selection\":\"knorm_topk\",\"proportion\":0.7}"},
        {"kv_direct", "{\"codec\":\"int8\",\"selection\":\"knorm_topk\",\"proportion\":0.7,\"pre_rope_keys\":true}"},
    };
    const pair cpu_pair = {"sharerd", "--compute.backend=cpu", "receiverd", "--compute.backend=cpu"};
    const pair gpu_pair = {"sharerd", "--compute.backend=cpu", GPU_RECEIVERD, "--compute.backend=cuda"};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
        answer cpu, gpu;
        ask(&cpu_pair, cases[i][0], cases[i][1], &cpu);
        ask(&gpu_pair, cases[i][0], cases[i][1], &gpu);
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
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_device_sharer_answers_as_cpu),
                                       cmocka_unit_test(test_device_receiver_answers_as_cpu)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
