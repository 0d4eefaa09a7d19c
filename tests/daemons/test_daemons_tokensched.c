/* test_daemons_tokensched.c: a per-token schedule through the daemons (HTTP_API.md §5.1 token_schedule, PROTOCOL.md
 * SharePolicy.token_schedule), kv_direct on the tiny models:
 *  - a rule covering every row gives the blob and tokens of the plain policy with its codec (one token group);
 *  - a rule on the first row, or on two positions, changes the blob by exactly those rows' codec bytes and one or two
 *    12-byte group descriptors per layer; the response echoes the schedule;
 *  - refusals: overlapping entries, two selectors, unknown fields, with budget_bytes (400), and first/last entries
 *    that meet on a short prompt (the sharer's refusal naming the position).
 * recompute_prefix (kv_direct): the tokens and logprobs of the same rows sent exact, N rows fewer on the wire; and the
 * layer schedule's own options (rotate, clip, a V codec apart); a token rule's own V codec (value_*).
 * Both daemons must then exit cleanly on SIGTERM. */
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

/* A kv_direct completion with full selection, no zstd, the base codec and the policy's extra fields, and the
 * logprobs (top 1) of every generated token. */
static void request(const char *codec, const char *extra_policy, kwd_response *r) {
    char body[2048];
    snprintf(body, sizeof body,
             "{\"prompt\":\"" PROMPT "\",\"max_tokens\":6,\"logprobs\":1,"
             "\"kvwire\":{\"mode\":\"kv_direct\",\"policy\":{\"selection\":\"full\",\"zstd\":0,%s%s}}}",
             codec, extra_policy);
    kwd_http(kwd_receiver.port, "/v1/completions", body, r);
    if (r->status != 200) fail_msg("%s%s: HTTP %ld: %s", codec, extra_policy, r->status, r->body);
}

/* K/V heads times head_dim of tiny-qwen3 (its config.json). */
static int row_elems(void) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tiny-qwen3/config.json", kwd_models_dir());
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char buf[8192];
    const size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    cJSON *c = cJSON_Parse(buf);
    assert_non_null(c);
    const int heads = cJSON_GetObjectItem(c, "num_key_value_heads")->valueint;
    const cJSON *hd = cJSON_GetObjectItem(c, "head_dim");
    const int dim =
        hd ? hd->valueint
           : cJSON_GetObjectItem(c, "hidden_size")->valueint / cJSON_GetObjectItem(c, "num_attention_heads")->valueint;
    cJSON_Delete(c);
    assert_true(heads > 0 && dim > 0);
    return heads * dim;
}

static void same_logprobs(const kwd_response *a, const kwd_response *b);

/* A string field of an echoed entry equal to want (a missing field fails the test). */
static void echoed(const cJSON *entry, const char *key, const char *want) {
    const cJSON *v = cJSON_GetObjectItem(entry, key);
    if (!cJSON_IsString(v) || strcmp(v->valuestring, want) != 0)
        fail_msg("echoed %s: %s, \"%s\" expected", key, cJSON_IsString(v) ? v->valuestring : "(none)", want);
}

static void same_ids(const kwd_response *a, const kwd_response *b) {
    int32_t x[16], y[16];
    const int n = kwd_json_ids(kwd_json_get(a->json, "kvwire.completion_ids"), x, 16);
    assert_true(n > 0);
    assert_int_equal(kwd_json_ids(kwd_json_get(b->json, "kvwire.completion_ids"), y, 16), n);
    assert_memory_equal(x, y, (size_t)n * sizeof *x);
}

/* Every row under one rule: the plain policy's section (one group), so the same blob size and tokens. */
static void test_rule_covering_all(void **state) {
    (void)state;
    kwd_response plain, ruled;
    request("\"codec\":\"bf16\"", "", &plain);
    request("\"codec\":\"int4\",\"granularity\":\"token\",\"scale\":\"f16\"",
            ",\"token_schedule\":[{\"first\":100000,\"codec\":\"bf16\"}]", &ruled);
    assert_true(kwd_json_num(plain.json, "kvwire.bytes.blob") == kwd_json_num(ruled.json, "kvwire.bytes.blob"));
    same_ids(&plain, &ruled);
    kwd_response_free(&plain);
    kwd_response_free(&ruled);
}

/* The first row, then positions 2 and 3, at int4 in an int8 section: per layer, each such row saves half a byte a
 * value of its K and of its V (the f16 scales per head are the same), and each rule's run adds a group (a 12-byte
 * descriptor): one more group for a prefix, two for a run in the middle. */
static void test_rule_bytes(void **state) {
    (void)state;
    const char *base = "\"codec\":\"int8\",\"granularity\":\"token\",\"scale\":\"f16\"";
    kwd_response plain, first, mid;
    request(base, "", &plain);
    request(base, ",\"token_schedule\":[{\"first\":1,\"codec\":\"int4\"}]", &first);
    request(base, ",\"token_schedule\":[{\"positions\":[2,3],\"codec\":\"int4\"}]", &mid);
    const double layers = cJSON_GetArraySize(kwd_json_get(plain.json, "kvwire.policy.layers"));
    const double row = row_elems(), b = kwd_json_num(plain.json, "kvwire.bytes.blob");
    assert_true(layers > 0);
    const double got_first = kwd_json_num(first.json, "kvwire.bytes.blob"),
                 got_mid = kwd_json_num(mid.json, "kvwire.bytes.blob");
    if (got_first != b - layers * (row - 12) || got_mid != b - layers * (2 * row - 24))
        fail_msg("blob %.0f; first row at int4 %.0f (want %.0f), positions 2-3 %.0f (want %.0f)", b, got_first,
                 b - layers * (row - 12), got_mid, b - layers * (2 * row - 24));
    const cJSON *echo = kwd_json_get(mid.json, "kvwire.policy.token_schedule");
    assert_int_equal(cJSON_GetArraySize(echo), 1);
    int32_t pos[4];
    assert_int_equal(kwd_json_ids(cJSON_GetObjectItem(cJSON_GetArrayItem(echo, 0), "positions"), pos, 4), 2);
    assert_int_equal(pos[0], 2);
    assert_int_equal(pos[1], 3);
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(echo, 0), "codec")->valuestring, "int4");
    echo = kwd_json_get(first.json, "kvwire.policy.token_schedule");
    assert_true(cJSON_GetObjectItem(cJSON_GetArrayItem(echo, 0), "first")->valuedouble == 1);
    kwd_response_free(&plain);
    kwd_response_free(&first);
    kwd_response_free(&mid);
}

#define P64A                                                                                                           \
    "0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,"   \
    "40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63"
#define P64B                                                                                                           \
    "64,65,66,67,68,69,70,71,72,73,74,75,76,77,78,79,80,81,82,83,84,85,86,87,88,89,90,91,92,93,94,95,96,97,98,99,100," \
    "101,102,103,104,105,106,107,108,109,110,111,112,113,114,115,116,117,118,119,120,121,122,123,124,125,126,127"

static void test_refusals(void **state) {
    (void)state;
    static const char *const bodies[] = {
#define KV(policy) "{\"mode\":\"kv_direct\",\"policy\":{\"codec\":\"int8\"," policy "}}"
        KV("\"token_schedule\":[{\"first\":2,\"codec\":\"int8\"},{\"positions\":[1],\"codec\":\"int4\"}]"),
        KV("\"token_schedule\":[{\"positions\":[0,1],\"codec\":\"int8\"},{\"first\":1,\"codec\":\"int4\"}]"),
        KV("\"token_schedule\":[{\"first\":2,\"last\":1,\"codec\":\"int8\"}]"),
        KV("\"token_schedule\":[{\"codec\":\"int8\"}]"),
        KV("\"token_schedule\":[{\"first\":1,\"codec\":\"int8\",\"layers\":[0,1]}]"),
        KV("\"token_schedule\":[{\"positions\":[3,2],\"codec\":\"int8\"}]"),
        KV("\"token_schedule\":[{\"first\":1,\"codec\":\"int9\"}]"),
        KV("\"token_schedule\":{\"first\":1}"),
        KV("\"budget_bytes\":50000,\"token_schedule\":[{\"first\":1,\"codec\":\"int8\"}]"),
        /* "positions" twice, 64 each (the JSON parser keeps both keys): refused, never appended past 64 */
        KV("\"token_schedule\":[{\"positions\":[" P64A "],\"positions\":[" P64B "],\"codec\":\"int8\"}]"),
#undef KV
    };
    kwd_expect_400(kwd_receiver.port, bodies, sizeof bodies / sizeof bodies[0]);
    /* first and last meet only on a prompt shorter than both: the sharer refuses, naming a position (a quantized
     * base codec: a layer sent bf16 is exact and takes no token rules) */
    kwd_response r;
    kwd_http(kwd_receiver.port, "/v1/chat/completions",
             "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":2,\"kvwire\":{\"mode\":"
             "\"kv_direct\",\"policy\":{\"codec\":\"int8\",\"token_schedule\":[{\"first\":60,\"codec\":\"int8\"},{"
             "\"last\":60,"
             "\"codec\":\"int4\"}]}}}",
             &r);
    if (r.status == 200 || !strstr(r.body, "both cover position")) fail_msg("HTTP %ld: %s", r.status, r.body);
    kwd_response_free(&r);
}

/* A K/V pair in a token rule (value_codec, value_granularity, value_scale; V's missing fields the entry's K fields):
 *  - a rule covering every row with K int8 and V int4 gives the blob, tokens and logprobs of the request-wide pair
 *    (K int8, V int4) bit for bit, and logprobs other than the swapped pair's (K int4, V int8): V took value_codec;
 *  - on the first row of an int8 section, K int8 and V int4 save half a byte per V value and add a group descriptor
 *    per layer; the echo names V's codec, granularity and scale (defaulted from the entry's), -asym kept;
 *  - refusals name the field. */
static void test_rule_kv_pair(void **state) {
    (void)state;
    const char *tok = "\"granularity\":\"token\",\"scale\":\"f16\"";
    char base[256];
    snprintf(base, sizeof base, "\"codec\":\"int4\",%s", tok);
    kwd_response ruled, pair, swapped;
    request(base, ",\"token_schedule\":[{\"first\":100000,\"codec\":\"int8\",\"value_codec\":\"int4\"}]", &ruled);
    snprintf(base, sizeof base, "\"codec\":\"int8\",\"value_codec\":\"int4\",%s", tok);
    request(base, "", &pair);
    snprintf(base, sizeof base, "\"codec\":\"int4\",\"value_codec\":\"int8\",%s", tok);
    request(base, "", &swapped);
    assert_true(kwd_json_num(ruled.json, "kvwire.bytes.blob") == kwd_json_num(pair.json, "kvwire.bytes.blob"));
    same_ids(&ruled, &pair);
    same_logprobs(&ruled, &pair);
    const cJSON *lr =
                    kwd_json_get(cJSON_GetArrayItem(kwd_json_get(ruled.json, "choices"), 0), "logprobs.token_logprobs"),
                *ls = kwd_json_get(cJSON_GetArrayItem(kwd_json_get(swapped.json, "choices"), 0),
                                   "logprobs.token_logprobs");
    bool differ = false;
    for (int i = 0; i < cJSON_GetArraySize(lr) && i < cJSON_GetArraySize(ls); ++i)
        differ |= cJSON_GetArrayItem(lr, i)->valuedouble != cJSON_GetArrayItem(ls, i)->valuedouble;
    assert_true(differ);
    kwd_response_free(&ruled);
    kwd_response_free(&pair);
    kwd_response_free(&swapped);

    snprintf(base, sizeof base, "\"codec\":\"int8\",%s", tok);
    kwd_response plain, first, asym;
    request(base, "", &plain);
    request(base, ",\"token_schedule\":[{\"first\":1,\"codec\":\"int8\",\"value_codec\":\"int4\"}]", &first);
    request(base,
            ",\"token_schedule\":[{\"last\":2,\"codec\":\"int2-asym\",\"value_codec\":\"int2\",\"value_scale\":"
            "\"bf16\"}]",
            &asym);
    const double layers = cJSON_GetArraySize(kwd_json_get(plain.json, "kvwire.policy.layers")), row = row_elems(),
                 b = kwd_json_num(plain.json, "kvwire.bytes.blob"), got = kwd_json_num(first.json, "kvwire.bytes.blob");
    if (got != b - layers * (row / 2 - 12))
        fail_msg("blob %.0f; first row K int8 V int4 %.0f (want %.0f)", b, got, b - layers * (row / 2 - 12));
    const cJSON *echo = cJSON_GetArrayItem(kwd_json_get(first.json, "kvwire.policy.token_schedule"), 0);
    echoed(echo, "codec", "int8");
    echoed(echo, "value_codec", "int4");
    echoed(echo, "value_granularity", "token");
    echoed(echo, "value_scale", "f16");
    echo = cJSON_GetArrayItem(kwd_json_get(asym.json, "kvwire.policy.token_schedule"), 0);
    echoed(echo, "codec", "int2-asym");
    echoed(echo, "value_codec", "int2");
    echoed(echo, "value_scale", "bf16");
    echo = cJSON_GetArrayItem(kwd_json_get(plain.json, "kvwire.policy.token_schedule"), 0);
    assert_null(echo);
    kwd_response_free(&plain);
    kwd_response_free(&first);
    kwd_response_free(&asym);

    static const char *const bad[][2] = {
        {"\"value_codec\":\"int9\"", "token_schedule.value_codec"},
        {"\"value_codec\":4", "token_schedule.value_codec: a string"},
        {"\"value_granularity\":\"rows\"", "token_schedule.value_codec"},
        {"\"value_scale\":\"f64\"", "token_schedule.value_codec"},
        {"\"value_codec\":\"int4\",\"value_granularity\":7", "token_schedule.value_granularity: a string"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; ++i) {
        char body[512];
        snprintf(body, sizeof body,
                 "{\"prompt\":\"Hi\",\"max_tokens\":1,\"kvwire\":{\"mode\":\"kv_direct\",\"policy\":{\"codec\":"
                 "\"int8\",\"token_schedule\":[{\"first\":1,\"codec\":\"int8\",%s}]}}}",
                 bad[i][0]);
        kwd_response r;
        kwd_http(kwd_receiver.port, "/v1/completions", body, &r);
        if (r.status != 400 || !strstr(r.body, bad[i][1])) fail_msg("%s: HTTP %ld: %s", bad[i][0], r.status, r.body);
        kwd_response_free(&r);
    }
}

/* The logprobs of every generated token (top 1), bit for bit. */
static void same_logprobs(const kwd_response *a, const kwd_response *b) {
    const cJSON *x = kwd_json_get(cJSON_GetArrayItem(kwd_json_get(a->json, "choices"), 0), "logprobs.token_logprobs"),
                *y = kwd_json_get(cJSON_GetArrayItem(kwd_json_get(b->json, "choices"), 0), "logprobs.token_logprobs");
    assert_non_null(x);
    assert_non_null(y);
    assert_true(cJSON_GetArraySize(x) > 0);
    assert_int_equal(cJSON_GetArraySize(x), cJSON_GetArraySize(y));
    for (int i = 0; i < cJSON_GetArraySize(x); ++i) {
        const double p = cJSON_GetArrayItem(x, i)->valuedouble, q = cJSON_GetArrayItem(y, i)->valuedouble;
        if (p != q) fail_msg("token %d: logprob %.17g vs %.17g", i, p, q);
    }
}

/* recompute_prefix N (kv_direct): the receiver prefills the first N positions itself, exact, and the sharer sends
 * none of their rows. Against the same int8 policy with those rows sent exact (a token_schedule entry at bf16, the
 * sharer's bf16 cache values): the same tokens and logprobs bit for bit; against the plain int8 policy: N rows fewer
 * per layer on the wire. The sections show the prefix unsent. */
static void recompute(int n) {
    char ts[256], rp[64];
    snprintf(ts, sizeof ts, ",\"token_schedule\":[{\"first\":%d,\"codec\":\"bf16\"}]", n);
    snprintf(rp, sizeof rp, ",\"recompute_prefix\":%d", n);
    const char *base = "\"codec\":\"int8\",\"granularity\":\"token\",\"scale\":\"f16\"";
    kwd_response exact, recomputed, plain;
    request(base, ts, &exact);
    request(base, rp, &recomputed);
    request(base, "", &plain);
    same_ids(&exact, &recomputed);
    same_logprobs(&exact, &recomputed);
    const cJSON *sec = kwd_json_get(recomputed.json, "kvwire.sections");
    assert_int_equal(cJSON_GetArraySize(sec), 3);
    assert_true(cJSON_GetObjectItem(cJSON_GetArrayItem(sec, 0), "length")->valuedouble == n);
    assert_true(cJSON_IsFalse(cJSON_GetObjectItem(cJSON_GetArrayItem(sec, 0), "sent")));
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(cJSON_GetArrayItem(sec, 1), "sent")));
    assert_true(kwd_json_num(recomputed.json, "kvwire.policy.recompute_prefix") == n);
    const double layers = cJSON_GetArraySize(kwd_json_get(plain.json, "kvwire.policy.layers"));
    const double row = row_elems(), heads = row / 32; /* tiny-qwen3: head_dim 32 */
    const double saved =
        kwd_json_num(plain.json, "kvwire.bytes.blob") - kwd_json_num(recomputed.json, "kvwire.bytes.blob");
    /* an int8 row of K and of V: a byte a value and an f16 scale per head; positions N.. are no longer the full index
     * (0 bytes) but a bitmap (ceil(shared / 8) bytes) or a range (4 bytes), FORMAT.md §6 */
    const double shared = kwd_json_num(plain.json, "kvwire.shared_tokens"), bitmap = ceil(shared / 8);
    const double want = layers * (n * 2 * (row + 2 * heads) - (bitmap < 4 ? bitmap : 4));
    if (saved != want) fail_msg("recompute_prefix %d saved %.0f bytes, %.0f expected", n, saved, want);
    kwd_response_free(&exact);
    kwd_response_free(&recomputed);
    kwd_response_free(&plain);
}

static void test_recompute_prefix(void **state) {
    (void)state;
    recompute(1);
    recompute(3);
    static const char *const bodies[] = {
        "{\"mode\":\"c2c\",\"policy\":{\"recompute_prefix\":1}}",
        "{\"mode\":\"receiver_only\",\"policy\":{\"recompute_prefix\":1}}",
        "{\"mode\":\"kv_direct\",\"policy\":{\"recompute_prefix\":-1}}",
        "{\"mode\":\"kv_direct\",\"policy\":{\"recompute_prefix\":40}}", /* "Hi" shares fewer tokens */
    };
    kwd_expect_400(kwd_receiver.port, bodies, sizeof bodies / sizeof bodies[0]);
}

/* Per-layer options in the layer schedule: a layer's own rotation (here layer 0 rotated, layer 1 not, given from
 * either side) gives the same blob and logprobs either way, and differs from no rotation; a layer's own V codec
 * (value_codec int8 in an int4 schedule) adds half a byte per V value of every row. */
static void test_layer_options(void **state) {
    (void)state;
    const char *base = "\"codec\":\"int4\",\"granularity\":\"token\",\"scale\":\"f16\"";
    kwd_response a, b, none, vals;
    request(base, ",\"schedule\":[{\"layers\":[0,0],\"codec\":\"int4\",\"rotate\":\"kv\"}]", &a);
    request(base, ",\"rotate\":\"kv\",\"schedule\":[{\"layers\":[1,1],\"codec\":\"int4\",\"rotate\":\"none\"}]", &b);
    request(base, "", &none);
    request(base, ",\"schedule\":[{\"layers\":[0,1],\"codec\":\"int4\",\"value_codec\":\"int8\"}]", &vals);
    /* an entry that gives only clip keeps the policy's rotation: the same as the policy's rotation everywhere */
    kwd_response clip_only, all_rotated;
    request(base, ",\"rotate\":\"kv\",\"schedule\":[{\"layers\":[1,1],\"codec\":\"int4\",\"clip\":\"none\"}]",
            &clip_only);
    request(base, ",\"rotate\":\"kv\"", &all_rotated);
    same_ids(&clip_only, &all_rotated);
    same_logprobs(&clip_only, &all_rotated);
    kwd_response_free(&clip_only);
    kwd_response_free(&all_rotated);
    same_ids(&a, &b);
    same_logprobs(&a, &b);
    assert_true(kwd_json_num(a.json, "kvwire.bytes.blob") == kwd_json_num(b.json, "kvwire.bytes.blob"));
    const cJSON *la = kwd_json_get(cJSON_GetArrayItem(kwd_json_get(a.json, "choices"), 0), "logprobs.token_logprobs"),
                *ln =
                    kwd_json_get(cJSON_GetArrayItem(kwd_json_get(none.json, "choices"), 0), "logprobs.token_logprobs");
    bool differ = false;
    for (int i = 0; i < cJSON_GetArraySize(la) && i < cJSON_GetArraySize(ln); ++i)
        differ |= cJSON_GetArrayItem(la, i)->valuedouble != cJSON_GetArrayItem(ln, i)->valuedouble;
    assert_true(differ);
    const double rows = kwd_json_num(none.json, "kvwire.shared_tokens"), layers = 2;
    assert_true(kwd_json_num(vals.json, "kvwire.bytes.blob") - kwd_json_num(none.json, "kvwire.bytes.blob") ==
                layers * rows * row_elems() / 2);
    const cJSON *echo = cJSON_GetArrayItem(kwd_json_get(a.json, "kvwire.policy.schedule"), 0);
    assert_string_equal(cJSON_GetObjectItem(echo, "rotate")->valuestring, "kv");
    echo = cJSON_GetArrayItem(kwd_json_get(vals.json, "kvwire.policy.schedule"), 0);
    assert_string_equal(cJSON_GetObjectItem(echo, "value_codec")->valuestring, "int8");
    kwd_response_free(&a);
    kwd_response_free(&b);
    kwd_response_free(&none);
    kwd_response_free(&vals);
    static const char *const bodies[] = {
        "{\"mode\":\"kv_direct\",\"policy\":{\"schedule\":[{\"layers\":[0,0],\"codec\":\"int4\",\"rotate\":\"q\"}]}}",
        "{\"mode\":\"kv_direct\",\"policy\":{\"schedule\":[{\"layers\":[0,0],\"codec\":\"int4\",\"value_codec\":"
        "\"int9\"}]}}",
    };
    kwd_expect_400(kwd_receiver.port, bodies, sizeof bodies / sizeof bodies[0]);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rule_covering_all), cmocka_unit_test(test_rule_bytes),
        cmocka_unit_test(test_refusals),          cmocka_unit_test(test_recompute_prefix),
        cmocka_unit_test(test_layer_options),     cmocka_unit_test(test_rule_kv_pair),
    };
    return cmocka_run_group_tests(tests, kwd_pair_setup, kwd_pair_teardown);
}
