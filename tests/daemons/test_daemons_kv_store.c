/* test_daemons_kv_store.c: kv_direct into receiverd's quantized cache (HTTP_API.md §5.2 "kv_store",
 * receiver/kw_kv_pages.h). With `cache: {dtype: int8, page_tokens: 16}` a request whose policy codec is "cache" gets
 * the receiver's cache layout from the sharer (log8 scales; the policy echo names it) and its rows are stored as the
 * sent codes (the same layout spelled out with log8 or e8m0 scales too): kv_store "direct", no reason, every shared row
 * of every layer direct; a request with another layout is "requantized" with its reason (a selection with gaps too: the
 * positions not sent are stored as hidden zero rows, which a quantized cache needs to hold the rows after them; a
 * refinement's round two, written into pages already stored); c2c has no kv_store; codec "cache" outside kv_direct is a
 * 400; /metrics counts both. Both daemons must then exit cleanly on SIGTERM. */
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

static kwd_proc sd, rd;

static int setup(void **state) {
    (void)state;
    kwd_start_sharer(0, NULL, &sd);
    const char *extra[] = {"--cache.dtype=int8", "--cache.page_tokens=16", NULL};
    kwd_start_receiver(sd.port, extra, &rd);
    if (!kwd_wait_healthy(rd.port, kwd_ms(30000))) fail_msg("receiverd never connected to sharerd");
    return 0;
}

static int teardown(void **state) {
    (void)state;
    kwd_stop_pair(&sd, &rd);
    return 0;
}

static void post(const char *kvwire, long want, kwd_response *r) {
    char body[1024];
    snprintf(body, sizeof body,
             "{\"messages\":[{\"role\":\"user\",\"content\":\"" PROMPT "\"}],\"max_tokens\":4,\"kvwire\":%s}", kvwire);
    kwd_http(rd.port, "/v1/chat/completions", body, r);
    if (r->status != want) fail_msg("%s: HTTP %ld, want %ld: %s", kvwire, r->status, want, r->body);
}

static const char *str(const cJSON *root, const char *path) {
    const cJSON *s = kwd_json_get(root, path);
    return cJSON_IsString(s) ? s->valuestring : NULL;
}

/* Posts kvwire (HTTP 200) and checks its kv_store: store, and reason (NULL: none, JSON null). */
static void store_is(const char *kvwire, const char *store, const char *reason) {
    kwd_response r;
    post(kvwire, 200, &r);
    assert_string_equal(str(r.json, "kvwire.kv_store.store"), store);
    if (reason)
        assert_string_equal(str(r.json, "kvwire.kv_store.reason"), reason);
    else
        assert_true(cJSON_IsNull(kwd_json_get(r.json, "kvwire.kv_store.reason")));
    kwd_response_free(&r);
}

static void test_kv_store(void **state) {
    (void)state;
    kwd_response r;
    post("{\"mode\":\"kv_direct\",\"policy\":{\"codec\":\"cache\"}}", 200, &r);
    assert_string_equal(str(r.json, "kvwire.kv_store.store"), "direct");
    assert_true(cJSON_IsNull(kwd_json_get(r.json, "kvwire.kv_store.reason")));
    const double shared = kwd_json_num(r.json, "kvwire.shared_tokens");
    assert_true(shared > 16); /* a full page at least */
    const double rows = kwd_json_num(r.json, "kvwire.kv_store.rows_direct");
    assert_true(rows >= shared && (long long)rows % (long long)shared == 0); /* every shared row of every layer */
    assert_int_equal((long long)kwd_json_num(r.json, "kvwire.kv_store.rows_tail"),
                     (long long)(rows / shared) * ((long long)shared % 16));
    assert_int_equal((long long)kwd_json_num(r.json, "kvwire.kv_store.rows_requantized"), 0);
    assert_string_equal(str(r.json, "kvwire.policy.codec"), "cache");
    assert_string_equal(str(r.json, "kvwire.policy.granularity"), "channel16");
    assert_string_equal(str(r.json, "kvwire.policy.scale"), "log8");
    assert_string_equal(str(r.json, "kvwire.policy.value_codec"), "int8");
    assert_true(kwd_json_num(r.json, "kvwire.bytes.blob") > 0);
    kwd_response_free(&r);
    /* another layout: requantized, and why */
    post("{\"mode\":\"kv_direct\",\"policy\":{\"codec\":\"int8\"}}", 200, &r);
    assert_string_equal(str(r.json, "kvwire.kv_store.store"), "requantized");
    assert_string_equal(str(r.json, "kvwire.kv_store.reason"), "scale_dtype");
    assert_int_equal((long long)kwd_json_num(r.json, "kvwire.kv_store.rows_direct"), 0);
    kwd_response_free(&r);
    store_is(
        "{\"mode\":\"kv_direct\",\"policy\":{\"codec\":\"int8\",\"granularity\":\"channel16\",\"scale\":\"e8m0\"}}",
        "requantized", "value_layout");
    /* the cache layout spelled out: log8 (what "cache" asks for) and e8m0 scales both store directly */
    post("{\"mode\":\"kv_direct\",\"policy\":{\"codec\":\"int8\",\"granularity\":\"channel16\","
         "\"value_granularity\":\"group32\",\"scale\":\"log8\"}}",
         200, &r);
    assert_string_equal(str(r.json, "kvwire.kv_store.store"), "direct");
    assert_string_equal(str(r.json, "kvwire.policy.scale"), "log8");
    kwd_response_free(&r);
    store_is("{\"mode\":\"kv_direct\",\"policy\":{\"codec\":\"int8\",\"granularity\":\"channel16\","
             "\"value_granularity\":\"group32\",\"scale\":\"e8m0\"}}",
             "direct", NULL);
    post("{\"mode\":\"kv_direct\",\"policy\":{\"codec\":\"nf4\",\"scale\":\"log8\"}}", 400, &r); /* ints only */
    kwd_response_free(&r);
    /* the front half: rows 0.. in order */
    store_is("{\"mode\":\"kv_direct\",\"policy\":{\"codec\":\"cache\",\"selection\":\"front\",\"proportion\":0.5}}",
             "direct", NULL);
    /* a random half: gaps between the positions, stored as hidden zero rows, the rows requantized */
    store_is("{\"mode\":\"kv_direct\",\"policy\":{\"codec\":\"cache\",\"selection\":\"random\",\"proportion\":0.5,"
             "\"seed\":3}}",
             "requantized", "positions");
    /* two rounds: round one's front fifth goes in as pages, round two's rows (after them, inside pages already
     * stored) through the quantizer, which rebuilds those pages */
    post("{\"mode\":\"kv_direct\",\"policy\":{\"codec\":\"cache\",\"selection\":\"front\",\"proportion\":0.2},"
         "\"refine\":{\"threshold\":1e6,\"proportion\":0.7}}",
         200, &r);
    assert_true(cJSON_IsTrue(kwd_json_get(r.json, "kvwire.refine.applied")));
    assert_string_equal(str(r.json, "kvwire.kv_store.store"), "requantized");
    assert_string_equal(str(r.json, "kvwire.kv_store.reason"), "positions");
    assert_true(kwd_json_num(r.json, "kvwire.kv_store.rows_direct") > 0);
    assert_true(kwd_json_num(r.json, "kvwire.kv_store.rows_requantized") > 0);
    kwd_response_free(&r);
    /* c2c: no kv_store; "cache" is a kv_direct layout */
    post("{}", 200, &r);
    assert_true(cJSON_IsNull(kwd_json_get(r.json, "kvwire.kv_store")));
    kwd_response_free(&r);
    post("{\"policy\":{\"codec\":\"cache\"}}", 400, &r);
    kwd_response_free(&r);
    post("{\"mode\":\"kv_direct\",\"policy\":{\"codec\":\"cache\",\"value_codec\":\"int4\"}}", 400, &r);
    kwd_response_free(&r);
    kwd_http(rd.port, "/metrics", NULL, &r);
    assert_non_null(strstr(r.body, "kvwire_kv_store_total{store=\"direct\"} 4"));
    assert_non_null(strstr(r.body, "kvwire_kv_store_total{store=\"requantized\"} 4"));
    kwd_response_free(&r);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_kv_store)};
    return cmocka_run_group_tests(tests, setup, teardown);
}
