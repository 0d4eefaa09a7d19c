/* test_daemons_budget.c: a byte cap through the daemons (HTTP_API.md §5.1 budget_bytes, PROTOCOL.md SharePolicy): over
 * caps from generous down to the request's minimum the KVWire bytes that crossed the socket never exceed the cap, the
 * response's budget block reports the cap, the bytes used, the slack and an allocation histogram that adds up; the
 * daemons choose the same allocation as `kvwire c2c --budget-bytes` (same tokens, blob length, histogram and
 * distortion);
 * a cap below the minimum is a 400 naming it, and a cap with a schedule or layer scales is a 400. The same for
 * kv_direct, whose blobs the receiver only accepts with the same positions in every layer. Both daemons must then
 * exit cleanly on SIGTERM. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kwd_harness.h"

#define PROMPT "Which planet is known as the red planet? Answer in one word."

/* mode: "c2c" or "kv_direct" */
static void request(const char *mode, long long cap, const char *extra_policy, kwd_response *r) {
    char body[1024];
    snprintf(body, sizeof body,
             "{\"messages\":[{\"role\":\"user\",\"content\":\"" PROMPT "\"}],\"max_tokens\":4,"
             "\"kvwire\":{\"mode\":\"%s\",\"policy\":{\"selection\":\"vnorm_topk\",\"budget_bytes\":%lld%s}}}",
             mode, cap, extra_policy);
    kwd_http(kwd_receiver.port, "/v1/chat/completions", body, r);
}

/* The budget block is consistent with the measured bytes; returns the minimum it reports. */
static double check_budget(const kwd_response *r, long long cap) {
    if (r->status != 200) fail_msg("cap %lld: HTTP %ld: %s", cap, r->status, r->body);
    const double blob = kwd_json_num(r->json, "kvwire.bytes.blob");
    if (blob > (double)cap) fail_msg("cap %lld: %.0f blob bytes", cap, blob);
    assert_true(blob > 0);
    assert_true(kwd_json_num(r->json, "kvwire.budget.cap") == (double)cap);
    assert_true(kwd_json_num(r->json, "kvwire.budget.used") == blob);
    assert_true(kwd_json_num(r->json, "kvwire.budget.slack") == (double)cap - blob);
    assert_true(kwd_json_num(r->json, "kvwire.policy.budget_bytes") == (double)cap);
    assert_true(kwd_json_num(r->json, "kvwire.budget.distortion") >= 0);
    const double candidates = kwd_json_num(r->json, "kvwire.budget.tokens.candidates");
    double kept = 0; /* every codec's count */
    const cJSON *it;
    cJSON_ArrayForEach(it, kwd_json_get(r->json, "kvwire.budget.tokens")) {
        if (strcmp(it->string, "candidates") != 0 && strcmp(it->string, "dropped") != 0) kept += it->valuedouble;
    }
    assert_true(candidates > 0);
    assert_true(kept >= 1);
    assert_true(kept + kwd_json_num(r->json, "kvwire.budget.tokens.dropped") == candidates);
    assert_true(kept == kwd_json_num(r->json, "kvwire.selection.tokens_sent"));
    return kwd_json_num(r->json, "kvwire.budget.min");
}

static void cap_sweep(const char *mode, double min_below) {
    const long long caps[] = {1000000, 6000, 1500, 500};
    double min = 0;
    for (size_t i = 0; i < sizeof caps / sizeof caps[0] && caps[i] >= min_below; ++i) {
        kwd_response r;
        request(mode, caps[i], "", &r);
        min = check_budget(&r, caps[i]);
        kwd_response_free(&r);
    }
    assert_true(min > 100 && min < min_below);
    kwd_response r;
    request(mode, (long long)min, "", &r);
    check_budget(&r, (long long)min);
    kwd_response_free(&r);
    request(mode, (long long)min - 1, "", &r);
    assert_int_equal(r.status, 400);
    char want[64];
    snprintf(want, sizeof want, "need at least %.0f bytes", min);
    if (!strstr(r.body, want)) fail_msg("no minimum in the refusal: %s", r.body);
    kwd_response_free(&r);
}

static void test_cap_sweep(void **state) {
    (void)state;
    cap_sweep("c2c", 500);
}

/* kv_direct: every layer of the receiver's model, so a larger minimum (one token per layer). */
static void test_cap_sweep_kv_direct(void **state) {
    (void)state;
    cap_sweep("kv_direct", 1500);
}

/* The daemons and kvwire c2c allocate alike: the same tokens, blob length and histogram. budget_mode: tokens,
 * kvcomm_like (one codec: int8) or qkvcomm_like (int4, int8). */
static void same_as_cli(const char *mode, const char *budget_mode, long long cap) {
    const int one_codec = strcmp(budget_mode, "kvcomm_like") == 0;
    char extra[256];
    snprintf(extra, sizeof extra,
             ",\"budget_mode\":\"%s\",\"budget_codecs\":[%s],\"granularity\":\"group16\",\"zstd\":3", budget_mode,
             one_codec ? "\"int8\"" : "\"int4\",\"int8\"");
    kwd_response r;
    request(mode, cap, extra, &r);
    check_budget(&r, cap);
    char args[2048];
    const char *m = kwd_models_dir();
    const int kv_direct = strcmp(mode, "kv_direct") == 0;
    snprintf(args, sizeof args,
             "c2c --receiver %s/tiny-qwen3 %s%s%s%s%s --prompt '" PROMPT
             "' --max-new-tokens 4 --select vnorm_topk --budget-bytes %lld --budget-codecs %s --budget-mode %s "
             "--wire-gran group16 --wire-zstd 3",
             m, kv_direct ? "--mode kv_direct" : "--sharer ", kv_direct ? "" : m,
             kv_direct ? "" : "/tiny-qwen2 --fuser ", kv_direct ? "" : m, kv_direct ? "" : "/tiny-fuser", cap,
             one_codec ? "int8" : "int4,int8", budget_mode);
    char *out = kwd_kvwire(args);
    int32_t want[16], got[16];
    const int n_want = kwd_parse_ids(out, "generated_ids", want, 16);
    assert_int_equal(kwd_json_ids(kwd_json_get(r.json, "kvwire.completion_ids"), got, 16), n_want);
    assert_memory_equal(want, got, (size_t)n_want * sizeof *want);
    assert_true((double)kwd_parse_int(out, "wire_bytes") == kwd_json_num(r.json, "kvwire.bytes.blob"));
    char hist[256] = "budget_tokens:";
    const cJSON *it;
    cJSON_ArrayForEach(it, kwd_json_get(r.json, "kvwire.budget.tokens")) {
        snprintf(hist + strlen(hist), sizeof hist - strlen(hist), " %s %.0f", it->string, it->valuedouble);
    }
    strcat(hist, "\n");
    if (!strstr(out, hist)) fail_msg("kvwire c2c's histogram differs from the daemons' (%s):\n%s", hist, out);
    const char *d = strstr(out, " distortion ");
    assert_non_null(d);
    const double cli = strtod(d + strlen(" distortion "), NULL),
                 daemons = kwd_json_num(r.json, "kvwire.budget.distortion");
    if (!(fabs(cli - daemons) <= 1e-8 * (fabs(cli) + 1e-30)))
        fail_msg("distortion %.17g (kvwire c2c) vs %.17g (daemons)", cli, daemons);
    free(out);
    kwd_response_free(&r);
}

static void test_same_as_cli(void **state) {
    (void)state;
    same_as_cli("c2c", "tokens", 2500);
}

static void test_same_as_cli_kv_direct(void **state) {
    (void)state;
    same_as_cli("kv_direct", "tokens", 5000);
}

/* The whole-layer baselines over caps from everything down to their minimum: never over the cap, the budget block
 * names the mode and adds up; kvcomm_like sends whole layers middle-first (one at its minimum, the middle candidate)
 * and counts the rest as unsent; qkvcomm_like sends every layer, all int4 at its minimum, all int8 when the cap holds
 * it; one byte below the minimum is a 400 naming it; the daemons equal kvwire c2c. */
static void baseline_sweep(const char *mode, const char *budget_mode) {
    char extra[128];
    snprintf(extra, sizeof extra, ",\"budget_mode\":\"%s\"", budget_mode);
    const int kvcomm = strcmp(budget_mode, "kvcomm_like") == 0;
    kwd_response r;
    request(mode, 1000000, extra, &r);
    const double min = check_budget(&r, 1000000), full = kwd_json_num(r.json, "kvwire.bytes.blob");
    assert_string_equal(kwd_json_get(r.json, "kvwire.budget.mode")->valuestring, budget_mode);
    const int n_candidates = cJSON_GetArraySize(kwd_json_get(r.json, "kvwire.policy.layers"));
    int32_t candidates[64];
    assert_int_equal(kwd_json_ids(kwd_json_get(r.json, "kvwire.policy.layers"), candidates, 64), n_candidates);
    assert_true(kwd_json_num(r.json, "kvwire.budget.layers_unsent") == 0);
    if (!kvcomm) assert_true(kwd_json_num(r.json, "kvwire.budget.tokens.int4") == 0);
    kwd_response_free(&r);
    const long long caps[] = {(long long)full, (long long)((full + min) / 2), (long long)min};
    for (size_t i = 0; i < sizeof caps / sizeof caps[0]; ++i) {
        request(mode, caps[i], extra, &r);
        check_budget(&r, caps[i]);
        const int n_sent = cJSON_GetArraySize(kwd_json_get(r.json, "kvwire.policy.layers"));
        if (kvcomm) {
            assert_true(kwd_json_num(r.json, "kvwire.budget.layers_unsent") == n_candidates - n_sent);
            assert_true(kwd_json_num(r.json, "kvwire.budget.tokens.dropped") == 0);
        } else {
            assert_int_equal(n_sent, n_candidates);
        }
        if (i == 2 && kvcomm) { /* the minimum: one whole layer, the middle candidate (ties to the lower) */
            int32_t sent[1];
            assert_int_equal(kwd_json_ids(kwd_json_get(r.json, "kvwire.policy.layers"), sent, 1), 1);
            assert_int_equal(sent[0], candidates[(n_candidates - 1) / 2]);
        }
        if (i == 2 && !kvcomm) assert_true(kwd_json_num(r.json, "kvwire.budget.tokens.int8") == 0);
        kwd_response_free(&r);
    }
    request(mode, (long long)min - 1, extra, &r);
    assert_int_equal(r.status, 400);
    char want[64];
    snprintf(want, sizeof want, "need at least %.0f bytes", min);
    if (!strstr(r.body, want)) fail_msg("no minimum in the refusal: %s", r.body);
    kwd_response_free(&r);
    same_as_cli(mode, budget_mode, (long long)((full + min) / 2));
}

static void test_kvcomm_like(void **state) {
    (void)state;
    baseline_sweep("c2c", "kvcomm_like");
}

static void test_qkvcomm_like(void **state) {
    (void)state;
    baseline_sweep("c2c", "qkvcomm_like");
    baseline_sweep("kv_direct", "qkvcomm_like");
}

static void test_refusals(void **state) {
    (void)state;
    static const char *const bodies[] = {
        "{\"mode\":\"kv_direct\",\"policy\":{\"budget_bytes\":5000,\"granularity\":\"layer\"}}",
        "{\"mode\":\"receiver_only\",\"policy\":{\"budget_bytes\":5000}}",
        "{\"policy\":{\"budget_bytes\":5000,\"schedule\":[{\"layers\":[0,0],\"codec\":\"int8\"}]}}",
        "{\"policy\":{\"budget_bytes\":5000,\"granularity\":\"head\"}}",
        "{\"policy\":{\"budget_codecs\":[\"int8\"]}}",
        "{\"policy\":{\"budget_bytes\":5000,\"budget_codecs\":[\"int9\"]}}",
        "{\"policy\":{\"budget_bytes\":0}}",
        "{\"mode\":\"kv_direct\",\"policy\":{\"budget_bytes\":50000,\"budget_mode\":\"kvcomm_like\"}}",
        "{\"policy\":{\"budget_mode\":\"qkvcomm_like\"}}",
        "{\"policy\":{\"budget_bytes\":50000,\"budget_mode\":\"qkvcomm_like\",\"budget_codecs\":[\"int8\"]}}",
        "{\"policy\":{\"budget_bytes\":50000,\"budget_mode\":\"whole\"}}",
    };
    kwd_expect_400(kwd_receiver.port, bodies, sizeof bodies / sizeof bodies[0]);
    /* no cap: no budget block, budget_bytes null */
    kwd_response r;
    kwd_http(kwd_receiver.port, "/v1/chat/completions",
             "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":2}", &r);
    assert_int_equal(r.status, 200);
    assert_null(kwd_json_get(r.json, "kvwire.budget"));
    assert_true(cJSON_IsNull(kwd_json_get(r.json, "kvwire.policy.budget_bytes")));
    kwd_response_free(&r);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cap_sweep),
        cmocka_unit_test(test_same_as_cli),
        cmocka_unit_test(test_cap_sweep_kv_direct),
        cmocka_unit_test(test_same_as_cli_kv_direct),
        cmocka_unit_test(test_kvcomm_like),
        cmocka_unit_test(test_qkvcomm_like),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, kwd_pair_setup, kwd_pair_teardown);
}
