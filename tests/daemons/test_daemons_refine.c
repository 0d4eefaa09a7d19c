/* test_daemons_refine.c: two-round refinement through the daemons (HTTP_API.md §5.1 kvwire.refine, PROTOCOL.md §5.1
 * SharePolicy.skip_ranked). Round one is deliberately small (proportion 0.1) and the threshold so high that any
 * margin asks for round two: the record shows round two requested and applied, both rounds' bytes with the
 * top-level bytes their sum, and the answer (tokens and log-probabilities, bit for bit) equal to one request at the
 * refine proportion, since the two rounds send exactly that request's tokens; for kv_direct and c2c and every
 * selection that ranks. A threshold that never triggers gives the round-one answer and no second ShareRequest. A
 * refinement where it cannot work is a 400. Both daemons must then exit cleanly on SIGTERM. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kwd_harness.h"

#define PROMPT "Which planet is known as the red planet? Answer in one word, then explain why in a sentence."

/* A request of mode and selection at proportion, with refine (a JSON object, or NULL). Logprobs make the answer's
 * comparison bit-exact on the distributions, not only the tokens. */
static void request(const char *mode, const char *selection, double proportion, const char *refine, kwd_response *r) {
    char body[1024];
    snprintf(body, sizeof body,
             "{\"messages\":[{\"role\":\"user\",\"content\":\"" PROMPT "\"}],\"max_tokens\":4,\"logprobs\":true,"
             "\"top_logprobs\":5,\"kvwire\":{\"mode\":\"%s\",\"policy\":{\"selection\":\"%s\",\"proportion\":%g,"
             "\"seed\":7}%s%s}}",
             mode, selection, proportion, refine ? ",\"refine\":" : "", refine ? refine : "");
    kwd_http(kwd_receiver.port, "/v1/chat/completions", body, r);
    if (r->status != 200)
        fail_msg("%s %s %g %s: HTTP %ld: %s", mode, selection, proportion, refine ? refine : "", r->status, r->body);
}

/* The answer of a response: its completion ids and logprobs, printed (owned by the caller). */
static char *answer(const kwd_response *r) {
    cJSON *a = cJSON_CreateObject();
    cJSON_AddItemToObject(a, "ids", cJSON_Duplicate(kwd_json_get(r->json, "kvwire.completion_ids"), 1));
    const cJSON *choice = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(r->json, "choices"), 0);
    assert_non_null(choice);
    cJSON_AddItemToObject(a, "logprobs", cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(choice, "logprobs"), 1));
    char *s = cJSON_PrintUnformatted(a);
    cJSON_Delete(a);
    return s;
}

static void assert_same_answer(const kwd_response *a, const kwd_response *b, const char *what) {
    char *x = answer(a), *y = answer(b);
    if (strcmp(x, y) != 0) fail_msg("%s: the answers differ:\n%s\n%s", what, x, y);
    free(x), free(y);
}

/* Cases where round one alone answered differently from the refined request: the refinement is seen. */
static int differs;

static bool flag(const kwd_response *r, const char *path) {
    const cJSON *v = kwd_json_get(r->json, path);
    assert_non_null(v);
    return cJSON_IsTrue(v);
}

/* Round two requested and fused; the answer equal to one request at the refine proportion. */
static void refined_equals_single(const char *mode, const char *selection) {
    kwd_response two, one, plain;
    request(mode, selection, 0.1, "{\"metric\":\"margin\",\"threshold\":1000000,\"proportion\":0.6}", &two);
    request(mode, selection, 0.6, NULL, &one);
    request(mode, selection, 0.1, NULL, &plain);
    char what[128];
    snprintf(what, sizeof what, "%s %s refined to 0.6", mode, selection);
    assert_true(flag(&two, "kvwire.refine.requested"));
    assert_true(flag(&two, "kvwire.refine.triggered"));
    if (!flag(&two, "kvwire.refine.applied")) fail_msg("%s: round two not applied: %s", what, two.body);
    assert_true(kwd_json_num(two.json, "kvwire.refine.value") < 1000000);
    /* both rounds' bytes, the top level their sum; round one's alone are the plain request's */
    const double b1 = kwd_json_num(two.json, "kvwire.refine.round_one.blob");
    const double b2 = kwd_json_num(two.json, "kvwire.refine.round_two.blob");
    assert_true(b1 > 0 && b2 > 0);
    assert_true(kwd_json_num(two.json, "kvwire.bytes.blob") == b1 + b2);
    assert_true(b1 == kwd_json_num(plain.json, "kvwire.bytes.blob"));
    assert_true(kwd_json_num(two.json, "kvwire.refine.round_two.wire_frames") > 0);
    assert_true(kwd_json_num(two.json, "kvwire.bytes.frames_in.wire") ==
                kwd_json_num(plain.json, "kvwire.bytes.frames_in.wire") +
                    kwd_json_num(two.json, "kvwire.refine.round_two.wire_frames"));
    /* the socket's bytes are the frames' (ShareEnd's varint timings make round one's differ from plain's by a few) */
    assert_true(kwd_json_num(two.json, "kvwire.bytes.socket_in") ==
                kwd_json_num(two.json, "kvwire.bytes.frames_in.total_bytes"));
    assert_true(kwd_json_num(two.json, "kvwire.refine.round_two.socket_in") ==
                kwd_json_num(two.json, "kvwire.refine.round_two.frames_bytes"));
    assert_true(kwd_json_num(two.json, "kvwire.refine.round_two.socket_out") > 0); /* the second ShareRequest */
    assert_true(kwd_json_num(two.json, "kvwire.refine.round_two.sharer_total_ms") > 0);
    /* the rows: round two sends exactly what the larger proportion adds */
    assert_true(kwd_json_num(two.json, "kvwire.selection.tokens_sent") ==
                kwd_json_num(one.json, "kvwire.selection.tokens_sent"));
    assert_true(kwd_json_num(two.json, "kvwire.refine.round_two.tokens_sent") ==
                kwd_json_num(one.json, "kvwire.selection.tokens_sent") -
                    kwd_json_num(plain.json, "kvwire.selection.tokens_sent"));
    assert_true(kwd_json_num(two.json, "kvwire.refine.round_one.rows") +
                    kwd_json_num(two.json, "kvwire.refine.round_two.rows") >
                kwd_json_num(two.json, "kvwire.refine.round_one.rows"));
    if (strcmp(mode, "c2c") == 0)
        assert_true(kwd_json_num(two.json, "kvwire.fusion.tokens_fused") ==
                    kwd_json_num(one.json, "kvwire.fusion.tokens_fused"));
    assert_same_answer(&two, &one, what);
    char *x = answer(&two), *y = answer(&plain);
    differs += strcmp(x, y) != 0;
    free(x), free(y);
    kwd_response_free(&two), kwd_response_free(&one), kwd_response_free(&plain);
}

static void test_kv_direct(void **state) {
    (void)state;
    const char *const selections[] = {"vnorm_topk", "knorm_topk", "front", "back", "random"};
    differs = 0;
    for (size_t i = 0; i < sizeof selections / sizeof selections[0]; ++i)
        refined_equals_single("kv_direct", selections[i]);
    assert_true(differs > 0);
}

static void test_c2c(void **state) {
    (void)state;
    const char *const selections[] = {"vnorm_topk", "knorm_topk", "front", "back", "random"};
    differs = 0;
    for (size_t i = 0; i < sizeof selections / sizeof selections[0]; ++i)
        refined_equals_single("c2c", selections[i]);
    assert_true(differs > 0);
}

/* `kvwire c2c --refine-threshold` runs the same two rounds in process: the same tokens, both rounds' blob bytes and
 * round two's alone, the same tokens sent. */
static void same_as_cli(const char *mode, const char *selection) {
    kwd_response r;
    request(mode, selection, 0.1, "{\"threshold\":1000000,\"proportion\":0.6}", &r);
    const char *m = kwd_models_dir();
    const bool kv_direct = strcmp(mode, "kv_direct") == 0;
    char args[2048];
    snprintf(args, sizeof args,
             "c2c --receiver %s/tiny-qwen3 %s%s%s%s%s --prompt '" PROMPT
             "' --max-new-tokens 4 --select %s --select-proportion 0.1 --seed 7 --wire bf16 --refine-threshold 1000000 "
             "--refine-proportion 0.6",
             m, kv_direct ? "--mode kv_direct" : "--sharer ", kv_direct ? "" : m,
             kv_direct ? "" : "/tiny-qwen2 --fuser ", kv_direct ? "" : m, kv_direct ? "" : "/tiny-fuser", selection);
    char *out = kwd_kvwire(args);
    int32_t want[16], got[16];
    const int n_want = kwd_parse_ids(out, "generated_ids", want, 16);
    assert_int_equal(kwd_json_ids(kwd_json_get(r.json, "kvwire.completion_ids"), got, 16), n_want);
    assert_memory_equal(want, got, (size_t)n_want * sizeof *want);
    assert_true((double)kwd_parse_int(out, "wire_bytes") == kwd_json_num(r.json, "kvwire.bytes.blob"));
    assert_true((double)kwd_parse_int(out, "tokens_sent") == kwd_json_num(r.json, "kvwire.selection.tokens_sent"));
    char line[128];
    snprintf(line, sizeof line, "refine_round_two: wire_bytes %.0f tokens_sent %.0f rows %.0f ",
             kwd_json_num(r.json, "kvwire.refine.round_two.blob"),
             kwd_json_num(r.json, "kvwire.refine.round_two.tokens_sent"),
             kwd_json_num(r.json, "kvwire.refine.round_two.rows"));
    if (!strstr(out, line)) fail_msg("kvwire c2c's round two differs from the daemons' (%s):\n%s", line, out);
    assert_non_null(strstr(out, "triggered 1 applied 1\n"));
    free(out);
    kwd_response_free(&r);
}

static void test_same_as_cli(void **state) {
    (void)state;
    same_as_cli("c2c", "vnorm_topk");
    same_as_cli("kv_direct", "random");
}

/* A threshold that never triggers (margin < 0): round one's answer, no second ShareRequest. */
static void test_never_triggers(void **state) {
    (void)state;
    const char *const modes[] = {"c2c", "kv_direct"};
    for (size_t i = 0; i < 2; ++i) {
        kwd_response refined, plain;
        request(modes[i], "vnorm_topk", 0.1, "{\"threshold\":0,\"proportion\":1}", &refined);
        request(modes[i], "vnorm_topk", 0.1, NULL, &plain);
        assert_true(flag(&refined, "kvwire.refine.requested"));
        assert_false(flag(&refined, "kvwire.refine.triggered"));
        assert_false(flag(&refined, "kvwire.refine.applied"));
        assert_true(kwd_json_num(refined.json, "kvwire.refine.value") >= 0);
        assert_true(kwd_json_num(refined.json, "kvwire.refine.round_two.blob") == 0);
        assert_true(kwd_json_num(refined.json, "kvwire.refine.round_two.socket_out") == 0);
        assert_true(kwd_json_num(refined.json, "kvwire.bytes.blob") == kwd_json_num(plain.json, "kvwire.bytes.blob"));
        /* one ShareRequest of the same size: the same bytes out */
        assert_true(kwd_json_num(refined.json, "kvwire.bytes.socket_out") ==
                    kwd_json_num(plain.json, "kvwire.bytes.socket_out"));
        assert_null(kwd_json_get(plain.json, "kvwire.refine"));
        assert_same_answer(&refined, &plain, modes[i]);
        kwd_response_free(&refined), kwd_response_free(&plain);
    }
}

/* The entropy of a softmax is positive: a threshold of 0 always asks for round two. */
static void test_entropy(void **state) {
    (void)state;
    kwd_response refined, one;
    request("c2c", "front", 0.2, "{\"metric\":\"entropy\",\"threshold\":0,\"proportion\":0.7}", &refined);
    request("c2c", "front", 0.7, NULL, &one);
    assert_string_equal(cJSON_GetStringValue(kwd_json_get(refined.json, "kvwire.refine.metric")), "entropy");
    assert_true(kwd_json_num(refined.json, "kvwire.refine.value") > 0);
    assert_true(flag(&refined, "kvwire.refine.applied"));
    assert_same_answer(&refined, &one, "c2c front entropy");
    kwd_response_free(&refined), kwd_response_free(&one);
}

static void test_refusals(void **state) {
    (void)state;
    const char *const bodies[] = {
        "{\"mode\":\"receiver_only\",\"refine\":{\"threshold\":1,\"proportion\":1}}",
        "{\"mode\":\"c2c\",\"policy\":{\"selection\":\"full\"},\"refine\":{\"threshold\":1,\"proportion\":1}}",
        "{\"mode\":\"c2c\",\"policy\":{\"selection\":\"front\",\"proportion\":0.5},"
        "\"refine\":{\"threshold\":1,\"proportion\":0.5}}",
        "{\"mode\":\"c2c\",\"policy\":{\"selection\":\"front\",\"proportion\":0.5,\"budget_bytes\":100000},"
        "\"refine\":{\"threshold\":1,\"proportion\":1}}",
        "{\"mode\":\"c2c\",\"policy\":{\"selection\":\"front\",\"proportion\":0.5,\"cache_proportion\":0.5},"
        "\"refine\":{\"threshold\":1,\"proportion\":1}}",
    };
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; ++i) {
        char body[1024];
        snprintf(body, sizeof body,
                 "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":2,\"kvwire\":%s}", bodies[i]);
        kwd_response r;
        kwd_http(kwd_receiver.port, "/v1/chat/completions", body, &r);
        if (r.status != 400 || !strstr(r.body, "refine")) fail_msg("%s: HTTP %ld: %s", bodies[i], r.status, r.body);
        kwd_response_free(&r);
    }
}

/* /metrics counts what refinement led to (after the tests above: some of each but skipped). */
static void test_metrics(void **state) {
    (void)state;
    kwd_response r;
    kwd_http(kwd_receiver.port, "/metrics", NULL, &r);
    assert_int_equal(r.status, 200);
    long long applied = -1, not_triggered = -1, skipped = -1;
    const char *a = strstr(r.body, "kvwire_refine_total{outcome=\"applied\"} ");
    const char *n = strstr(r.body, "kvwire_refine_total{outcome=\"not_triggered\"} ");
    const char *k = strstr(r.body, "kvwire_refine_total{outcome=\"skipped\"} ");
    assert_true(a && n && k);
    sscanf(strchr(a, ' ') + 1, "%lld", &applied);
    sscanf(strchr(n, ' ') + 1, "%lld", &not_triggered);
    sscanf(strchr(k, ' ') + 1, "%lld", &skipped);
    assert_true(applied >= 10 && not_triggered >= 2 && skipped == 0);
    kwd_response_free(&r);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kv_direct), cmocka_unit_test(test_c2c),      cmocka_unit_test(test_never_triggers),
        cmocka_unit_test(test_entropy),   cmocka_unit_test(test_refusals), cmocka_unit_test(test_same_as_cli),
        cmocka_unit_test(test_metrics),
    };
    return cmocka_run_group_tests(tests, kwd_pair_setup, kwd_pair_teardown);
}
