/* test_daemons_rscore.c: the receiver-aware selections through the daemons (HTTP_API.md §5.1 selection and scoring,
 * PROTOCOL.md SharePolicy.scoring, ShareRequest.receiver_token_ids, ShareEnd.scoring): sharerd holding the receiver
 * model and the fuser (scoring_receiver) scores proj_vnorm_topk and delta_proj_vnorm_topk itself ("scoring": "local",
 * the default) and the answer is what `kvwire c2c --select` gives in one process (the same tokens, rows sent, blob
 * bytes and SHARE_TARGETS frames: each receiver layer fuses its own top-k), with the scoring cost in the response;
 * "scoring": "receiver" (the round trip of PROTOCOL.md §5.2) is what `kvwire c2c --scoring receiver` gives (tokens,
 * preview, selection and final bytes) and needs no receiver model at the sharer; "scoring" with another selection and
 * the receiver-aware selections in kv_direct are 400s; a sharer without the receiver model refuses, which the receiver
 * answers with a 400 naming the reason. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kwd_harness.h"

/* sharerd scoring with tiny-qwen3-l3 and its fuser, and receiverd serving that model: a pair where the sharer's layer
 * 0 feeds two receiver layers. */
static int setup(void **state) {
    (void)state;
    const char *m = kwd_models_dir();
    char model[600], fuser[600], rmodel[600], rfuser[600], sport[64];
    snprintf(model, sizeof model, "--scoring_receiver.model=%s/tiny-qwen3-l3", m);
    snprintf(fuser, sizeof fuser, "--scoring_receiver.fuser=%s/tiny-fuser-l3", m);
    const char *extra[] = {model, fuser, NULL};
    kwd_start_sharer(0, extra, &kwd_sharer);
    snprintf(rmodel, sizeof rmodel, "--model.path=%s/tiny-qwen3-l3", m);
    snprintf(rfuser, sizeof rfuser, "--fusers.0.path=%s/tiny-fuser-l3", m);
    snprintf(sport, sizeof sport, "--sharers.0.port=%u", (unsigned)kwd_sharer.port);
    const char *args[] = {"--http.port=0",
                          "--model.name=tiny-qwen3-l3",
                          rmodel,
                          "--sharers.0.name=local",
                          sport,
                          "--fusers.0.name=tiny-fuser-l3",
                          rfuser,
                          "--fusers.0.sharer_model=tiny-qwen2",
                          "--compute.threads=1",
                          "--sharer.reconnect_ms=100",
                          "--log.level=debug",
                          NULL};
    kwd_start("receiverd", args, &kwd_receiver);
    if (!kwd_wait_healthy(kwd_receiver.port, kwd_ms(30000))) fail_msg("receiverd never connected to sharerd");
    return 0;
}

#define PROMPT "Which planet is known as the red planet? Answer in one word."

static void request(uint16_t port, const char *mode, const char *policy, kwd_response *r) {
    char body[1024];
    snprintf(body, sizeof body,
             "{\"messages\":[{\"role\":\"user\",\"content\":\"" PROMPT "\"}],\"max_tokens\":6,"
             "\"kvwire\":{\"mode\":\"%s\",\"policy\":{%s}}}",
             mode, policy);
    kwd_http(port, "/v1/chat/completions", body, r);
}

/* The daemons and kvwire c2c select and answer alike. */
/* cap: 0, or a byte cap (budget_bytes, --budget-bytes: the allocator's default codecs, the delta scored with int4) */
static void same_as_cli(const char *selection, long long cap) {
    char policy[256];
    if (cap)
        snprintf(policy, sizeof policy, "\"selection\":\"%s\",\"proportion\":0.4,\"budget_bytes\":%lld", selection,
                 cap);
    else
        snprintf(policy, sizeof policy, "\"selection\":\"%s\",\"proportion\":0.4,\"codec\":\"int8\"", selection);
    kwd_response r;
    request(kwd_receiver.port, "c2c", policy, &r);
    if (r.status != 200) fail_msg("%s: HTTP %ld: %s", selection, r.status, r.body);
    assert_string_equal(kwd_json_get(r.json, "kvwire.policy.selection")->valuestring, selection);
    assert_string_equal(kwd_json_get(r.json, "kvwire.policy.scoring")->valuestring, "local");
    assert_string_equal(kwd_json_get(r.json, "kvwire.scoring.placement")->valuestring, "local");
    assert_true(kwd_json_num(r.json, "kvwire.scoring.receiver_prefill_ms") > 0);
    assert_true(kwd_json_num(r.json, "kvwire.scoring.projection_ms") > 0);
    assert_true(kwd_json_num(r.json, "kvwire.scoring.projections") >= 1);
    char args[2048], transfer[64] = "--wire int8";
    if (cap) snprintf(transfer, sizeof transfer, "--budget-bytes %lld", cap);
    const char *m = kwd_models_dir();
    snprintf(args, sizeof args,
             "c2c --receiver %s/tiny-qwen3-l3 --sharer %s/tiny-qwen2 --fuser %s/tiny-fuser-l3 --prompt '" PROMPT
             "' --max-new-tokens 6 --select %s --select-proportion 0.4 %s",
             m, m, m, selection, transfer);
    char *out = kwd_kvwire(args);
    int32_t want[16], got[16];
    const int n_want = kwd_parse_ids(out, "generated_ids", want, 16);
    assert_true(n_want > 0);
    assert_int_equal(kwd_json_ids(kwd_json_get(r.json, "kvwire.completion_ids"), got, 16), n_want);
    assert_memory_equal(want, got, (size_t)n_want * sizeof *want);
    assert_true((double)kwd_parse_int(out, "tokens_sent") == kwd_json_num(r.json, "kvwire.selection.tokens_sent"));
    assert_true((double)kwd_parse_int(out, "wire_bytes") == kwd_json_num(r.json, "kvwire.bytes.blob"));
    assert_true(kwd_json_num(r.json, "kvwire.selection.tokens_sent") <
                kwd_json_num(r.json, "kvwire.selection.tokens_total"));
    /* the per-target subsets: one SHARE_TARGETS frame (tiny-qwen2's layer 0 feeds two receiver layers), as many
     * bytes as kvwire c2c counts, inside the control bytes of the frames read */
    const char *ts = strstr(out, "target_subsets: ");
    assert_non_null(ts);
    long frames = 0, bytes = 0;
    assert_int_equal(sscanf(ts, "target_subsets: %ld frames %ld bytes", &frames, &bytes), 2);
    assert_true(frames >= 1 && (double)frames == kwd_json_num(r.json, "kvwire.selection.target_subsets.frames"));
    assert_true((double)bytes == kwd_json_num(r.json, "kvwire.selection.target_subsets.bytes"));
    assert_true(kwd_json_num(r.json, "kvwire.bytes.socket_in") ==
                kwd_json_num(r.json, "kvwire.bytes.blob") +
                    kwd_json_num(r.json, "kvwire.bytes.frames_in.wire_header_bytes") +
                    kwd_json_num(r.json, "kvwire.bytes.frames_in.control_bytes"));
    free(out);
    kwd_response_free(&r);
}

static void test_proj_same_as_cli(void **state) {
    (void)state;
    same_as_cli("proj_vnorm_topk", 0);
}

static void test_delta_same_as_cli(void **state) {
    (void)state;
    same_as_cli("delta_proj_vnorm_topk", 0);
}

static void test_delta_capped_same_as_cli(void **state) {
    (void)state;
    same_as_cli("delta_proj_vnorm_topk", 1500);
}

/* "scoring": "receiver" (PROTOCOL.md §5.2): the sharer previews every row at the preview codec, receiverd scores with
 * its own model and fuser, sends SHARE_SELECTION, fuses the final rows: the same tokens, rows and bytes (preview,
 * selection, final) as `kvwire c2c --scoring receiver --preview-codec`; a bf16 preview of proj_vnorm_topk selects
 * exactly what scoring local does (the rows are lossless). rotated: the final policy rotates and clips K and V, which
 * the preview keeps too (its own codec, the rest of the policy). *ids_out (16) gets the completion ids, *final_out
 * the final blob bytes. */
static void receiver_same_as_cli(const char *selection, const char *preview, int rotated, int32_t *ids_out, int *n_ids,
                                 double *final_out) {
    char policy[320];
    snprintf(policy, sizeof policy,
             "\"selection\":\"%s\",\"proportion\":0.4,\"codec\":\"int8\",\"scoring\":\"receiver\","
             "\"preview\":\"%s\"%s",
             selection, preview, rotated ? ",\"rotate\":\"kv\",\"clip\":\"kv\"" : "");
    kwd_response r;
    request(kwd_receiver.port, "c2c", policy, &r);
    if (r.status != 200) fail_msg("%s: HTTP %ld: %s", selection, r.status, r.body);
    assert_string_equal(kwd_json_get(r.json, "kvwire.policy.scoring")->valuestring, "receiver");
    assert_string_equal(kwd_json_get(r.json, "kvwire.scoring.placement")->valuestring, "receiver");
    assert_true(kwd_json_num(r.json, "kvwire.scoring.receiver_scoring_ms") > 0);
    char args[2048];
    const char *m = kwd_models_dir();
    snprintf(args, sizeof args,
             "c2c --receiver %s/tiny-qwen3-l3 --sharer %s/tiny-qwen2 --fuser %s/tiny-fuser-l3 --prompt '" PROMPT
             "' --max-new-tokens 6 --select %s --select-proportion 0.4 --wire int8 --scoring receiver "
             "--preview-codec %s%s",
             m, m, m, selection, preview, rotated ? " --wire-rotate kv --wire-clip kv" : "");
    char *out = kwd_kvwire(args);
    int32_t want[16];
    const int n_want = kwd_parse_ids(out, "generated_ids", want, 16);
    assert_true(n_want > 0);
    *n_ids = kwd_json_ids(kwd_json_get(r.json, "kvwire.completion_ids"), ids_out, 16);
    assert_int_equal(*n_ids, n_want);
    assert_memory_equal(want, ids_out, (size_t)n_want * sizeof *want);
    assert_true((double)kwd_parse_int(out, "tokens_sent") == kwd_json_num(r.json, "kvwire.selection.tokens_sent"));
    const char *sb = strstr(out, "scoring_bytes: ");
    assert_non_null(sb);
    unsigned long long pv = 0, sel = 0, fin = 0, total = 0;
    assert_int_equal(
        sscanf(sb, "scoring_bytes: preview %llu selection %llu final %llu total %llu", &pv, &sel, &fin, &total), 4);
    assert_true((double)pv == kwd_json_num(r.json, "kvwire.scoring.preview_bytes"));
    assert_true((double)sel == kwd_json_num(r.json, "kvwire.scoring.selection_bytes"));
    assert_true((double)fin == kwd_json_num(r.json, "kvwire.scoring.final_bytes"));
    /* bytes.blob counts every KVWire byte received, the preview's too */
    assert_true((double)(pv + fin) == kwd_json_num(r.json, "kvwire.bytes.blob"));
    assert_true(kwd_json_num(r.json, "kvwire.bytes.socket_in") ==
                kwd_json_num(r.json, "kvwire.bytes.blob") +
                    kwd_json_num(r.json, "kvwire.bytes.frames_in.wire_header_bytes") +
                    kwd_json_num(r.json, "kvwire.bytes.frames_in.control_bytes"));
    assert_true(kwd_json_num(r.json, "kvwire.bytes.socket_out") > (double)sel); /* the request and the selection */
    *final_out = (double)fin;
    free(out);
    kwd_response_free(&r);
}

static void test_receiver_scoring(void **state) {
    (void)state;
    int32_t ids[16], local_ids[16];
    int n = 0;
    double fin = 0;
    receiver_same_as_cli("proj_vnorm_topk", "bf16", 0, ids, &n, &fin);
    kwd_response r; /* scoring local on the same request */
    request(kwd_receiver.port, "c2c", "\"selection\":\"proj_vnorm_topk\",\"proportion\":0.4,\"codec\":\"int8\"", &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(kwd_json_ids(kwd_json_get(r.json, "kvwire.completion_ids"), local_ids, 16), n);
    assert_memory_equal(ids, local_ids, (size_t)n * sizeof *ids);
    assert_true(fin == kwd_json_num(r.json, "kvwire.bytes.blob"));
    kwd_response_free(&r);
    receiver_same_as_cli("delta_proj_vnorm_topk", "int4", 0, ids, &n, &fin);
    receiver_same_as_cli("proj_vnorm_topk", "int4", 0, ids, &n, &fin);
    /* rotated and clipped: an nf4 or int2 (v1.1) preview selects other rows rotated than not (16 rows against 15
     * here), so a preview that dropped the rotation on one side would not match the other */
    receiver_same_as_cli("delta_proj_vnorm_topk", "nf4", 1, ids, &n, &fin);
    receiver_same_as_cli("delta_proj_vnorm_topk", "int2", 1, ids, &n, &fin);
    receiver_same_as_cli("proj_vnorm_topk", "int2", 0, ids, &n, &fin);
}

static void expect_400(uint16_t port, const char *mode, const char *policy, const char *needle) {
    kwd_response r;
    request(port, mode, policy, &r);
    if (r.status != 400 || !strstr(r.body, needle))
        fail_msg("%s %s: HTTP %ld (want 400 with \"%s\"): %s", mode, policy, r.status, needle, r.body);
    kwd_response_free(&r);
}

static void test_refusals(void **state) {
    (void)state;
    expect_400(kwd_receiver.port, "c2c", "\"selection\":\"vnorm_topk\",\"proportion\":0.5,\"scoring\":\"receiver\"",
               "kvwire.policy.scoring");
    expect_400(kwd_receiver.port, "c2c",
               "\"selection\":\"proj_vnorm_topk\",\"proportion\":0.5,\"scoring\":\"local\",\"preview\":\"bf16\"",
               "kvwire.policy.preview");
    expect_400(kwd_receiver.port, "c2c",
               "\"selection\":\"proj_vnorm_topk\",\"proportion\":0.5,\"scoring\":\"receiver\",\"preview\":\"nope\"",
               "kvwire.policy.preview");
    expect_400(kwd_receiver.port, "kv_direct",
               "\"selection\":\"proj_vnorm_topk\",\"proportion\":0.5,\"scoring\":\"receiver\"", "only for mode c2c");
    expect_400(kwd_receiver.port, "c2c", "\"selection\":\"vnorm_topk\",\"proportion\":0.5,\"scoring\":\"local\"",
               "kvwire.policy.scoring");
    expect_400(kwd_receiver.port, "kv_direct", "\"selection\":\"delta_proj_vnorm_topk\",\"proportion\":0.5",
               "only for mode c2c");
    kwd_response r; /* parallel fusion */
    kwd_http(kwd_receiver.port, "/v1/completions",
             "{\"prompt\":\"x\",\"max_tokens\":1,\"kvwire\":{\"mode\":\"c2c\",\"fusion\":\"parallel\","
             "\"policy\":{\"selection\":\"proj_vnorm_topk\",\"proportion\":0.5}}}",
             &r);
    if (r.status != 400 || !strstr(r.body, "not with fusion parallel")) fail_msg("parallel: %ld %s", r.status, r.body);
    kwd_response_free(&r);
}

/* A sharer without the receiver model cannot score locally: a 4xx naming why. */
static void test_sharer_without_receiver_model(void **state) {
    (void)state;
    kwd_proc plain_sharer, plain_receiver;
    kwd_start_pair(&plain_sharer, &plain_receiver);
    expect_400(plain_receiver.port, "c2c", "\"selection\":\"proj_vnorm_topk\",\"proportion\":0.5", "no receiver model");
    kwd_response r; /* scoring receiver needs nothing of the receiver's model at the sharer */
    request(plain_receiver.port, "c2c", "\"selection\":\"proj_vnorm_topk\",\"proportion\":0.5,\"scoring\":\"receiver\"",
            &r);
    if (r.status != 200) fail_msg("scoring receiver: HTTP %ld: %s", r.status, r.body);
    kwd_response_free(&r);
    /* the other selections still work there */
    request(plain_receiver.port, "c2c", "\"selection\":\"vnorm_topk\",\"proportion\":0.5", &r);
    assert_int_equal(r.status, 200);
    kwd_response_free(&r);
    kwd_stop_pair(&plain_sharer, &plain_receiver);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_proj_same_as_cli),
        cmocka_unit_test(test_delta_same_as_cli),
        cmocka_unit_test(test_delta_capped_same_as_cli),
        cmocka_unit_test(test_receiver_scoring),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_sharer_without_receiver_model),
    };
    return cmocka_run_group_tests(tests, setup, kwd_pair_teardown);
}
