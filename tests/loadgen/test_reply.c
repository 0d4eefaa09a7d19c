/* test_reply.c: the event-stream splitter fed in every chunking (whole, byte by byte, every split point), with CRLF,
 * comments, multi-line data and caps; and the response reader on completions and chat bodies and streams, logprobs
 * with token ids, error bodies and malformed input (marked, never fatal). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/kw_status.h"
#include "loadgen/kw_load_reply.h"
#include "loadgen/kw_load_sse.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct events {
    char text[2048];
    int n;
} events;

static void on_event(const char *data, size_t len, void *user) {
    events *e = user;
    assert_int_equal(strlen(data), len);
    char line[600];
    snprintf(line, sizeof(line), "[%s]", data);
    strncat(e->text, line, sizeof(e->text) - strlen(e->text) - 1);
    e->n++;
}

static const char kw_stream[] = ": a comment\r\n"
                                "data: {\"a\":1}\r\n\r\n"
                                "event: x\n"
                                "data:no space\n"
                                "data:  two spaces\n\n"
                                "id: 7\n\n"
                                "data: [DONE]\n\n";
static const char kw_expected[] = "[{\"a\":1}][no space\n two spaces][[DONE]]";

static void test_sse_chunkings(void **state) {
    (void)state;
    const size_t n = strlen(kw_stream);
    for (size_t cut = 0; cut <= n; ++cut) { /* two pieces, split at every point */
        kw_load_sse s = {0};
        events e = {0};
        assert_int_equal(kw_load_sse_feed(&s, kw_stream, cut, on_event, &e), 0);
        assert_int_equal(kw_load_sse_feed(&s, kw_stream + cut, n - cut, on_event, &e), 0);
        assert_string_equal(e.text, kw_expected);
        assert_int_equal(e.n, 3);
        assert_int_equal(kw_load_sse_pending(&s), 0);
        kw_load_sse_free(&s);
    }
    kw_load_sse s = {0};
    events e = {0};
    for (size_t i = 0; i < n; ++i) /* byte by byte */
        assert_int_equal(kw_load_sse_feed(&s, kw_stream + i, 1, on_event, &e), 0);
    assert_string_equal(e.text, kw_expected);
    /* A stream cut mid-line leaves bytes pending and reports nothing more. */
    assert_int_equal(kw_load_sse_feed(&s, "data: {\"cut", 11, on_event, &e), 0);
    assert_int_equal(e.n, 3);
    assert_int_equal(kw_load_sse_pending(&s), 11);
    kw_load_sse_reset(&s);
    assert_int_equal(kw_load_sse_pending(&s), 0);
    kw_load_sse_free(&s);
    kw_load_sse_free(NULL);
}

static void test_sse_caps(void **state) {
    (void)state;
    kw_load_sse s = {.max_bytes = 16};
    events e = {0};
    assert_int_equal(kw_load_sse_feed(&s, "data: 0123456789abcdefXYZ", 25, on_event, &e), KW_E_LIMIT);
    kw_load_sse_free(&s);
    kw_load_sse s2 = {.max_bytes = 16};
    assert_int_equal(kw_load_sse_feed(&s2, "data: 0123456789\ndata: 0123456789\n", 34, on_event, &e), KW_E_LIMIT);
    kw_load_sse_free(&s2);
}

static void test_completions_body(void **state) {
    (void)state;
    const char *body = "{\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"choices\":[{\"index\":0,\"text\":\"The "
                       "correct answer is B\",\"finish_reason\":\"stop\",\"logprobs\":{\"tokens\":[\"token_id:5\","
                       "\"token_id:0\"],\"token_logprobs\":[-0.5,-0.1],\"top_logprobs\":[{\"token_id:5\":-0.5,"
                       "\"token_id:6\":-1.5},null],\"text_offset\":[0,3]}}],\"usage\":{\"prompt_tokens\":80,"
                       "\"completion_tokens\":2,\"total_tokens\":82},\"kvwire\":{\"bytes\":{\"blob\":5120}}}";
    kw_load_reply r;
    kw_load_reply_init(&r, KW_LOAD_API_COMPLETIONS);
    assert_int_equal(kw_load_reply_body(&r, body, strlen(body)), 0);
    assert_false(r.malformed);
    assert_string_equal(r.text.data, "The correct answer is B");
    assert_string_equal(r.finish_reason, "stop");
    assert_int_equal(r.prompt_tokens, 80);
    assert_int_equal(r.completion_tokens, 2);
    assert_non_null(r.kvwire);
    assert_true(r.has_logprobs && r.ids_ok);
    assert_int_equal(r.tokens.n, 2);
    assert_int_equal(r.tokens.ids[0], 5);
    assert_int_equal(r.tokens.ids[1], 0);
    assert_true(fabs(r.tokens.lps[0] + 0.5) < 1e-12);
    assert_int_equal(r.tokens.top_off[1] - r.tokens.top_off[0], 2);
    assert_int_equal(r.tokens.top_off[2] - r.tokens.top_off[1], 0);
    assert_int_equal(r.tokens.top_ids[1], 6);
    kw_load_reply_free(&r);
    /* Tokens as text: no ids. */
    const char *body2 =
        "{\"choices\":[{\"text\":\"x\",\"finish_reason\":\"length\",\"logprobs\":{\"tokens\":[\"x\"]}}]}";
    kw_load_reply_init(&r, KW_LOAD_API_COMPLETIONS);
    assert_int_equal(kw_load_reply_body(&r, body2, strlen(body2)), 0);
    assert_false(r.malformed);
    assert_false(r.ids_ok);
    kw_load_reply_free(&r);
}

static void test_chat_stream(void **state) {
    (void)state;
    kw_load_reply r;
    kw_load_reply_init(&r, KW_LOAD_API_CHAT);
    const char *ev[] = {
        "{\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"The\"},\"finish_reason\":null,"
        "\"logprobs\":{\"content\":[{\"token\":\"token_id:1\",\"logprob\":-0.2,\"top_logprobs\":[{\"token\":"
        "\"token_id:1\",\"logprob\":-0.2}]}]}}]}",
        "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"},\"finish_reason\":null}]}",
        "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\" end\"},\"finish_reason\":null,"
        "\"logprobs\":{\"content\":[{\"token\":\"token_id:9\",\"logprob\":-1,\"top_logprobs\":[]}]}}]}",
        "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"},\"finish_reason\":\"stop\"}],\"usage\":"
        "{\"prompt_tokens\":5,\"completion_tokens\":2},\"kvwire\":{\"mode\":\"c2c\"}}",
        "[DONE]"};
    for (int i = 0; i < 5; ++i)
        assert_int_equal(kw_load_reply_event(&r, ev[i], strlen(ev[i]), 1000000ull * (uint64_t)(i + 1)), 0);
    assert_false(r.malformed);
    assert_true(r.done_seen);
    assert_string_equal(r.text.data, "The end");
    assert_int_equal(r.text_events, 2);
    assert_int_equal(r.t_first_ns, 1000000);
    assert_int_equal(r.itl_ms.n, 1);
    assert_true(fabs(r.itl_ms.v[0] - 2.0) < 1e-9); /* events 1 and 3, 2 ms apart */
    assert_string_equal(r.finish_reason, "stop");
    assert_int_equal(r.completion_tokens, 2);
    assert_int_equal(r.tokens.n, 2);
    assert_int_equal(r.tokens.ids[1], 9);
    assert_true(r.ids_ok);
    assert_non_null(r.kvwire);
    kw_load_reply_free(&r);
}

static void test_errors_and_garbage(void **state) {
    (void)state;
    kw_load_reply r;
    const char *err = "{\"error\":{\"message\":\"queue full\",\"type\":\"server_error\",\"code\":\"KW_E_SHARE_BUSY\","
                      "\"status\":-605}}";
    kw_load_reply_init(&r, KW_LOAD_API_CHAT);
    assert_int_equal(kw_load_reply_body(&r, err, strlen(err)), 0);
    assert_non_null(r.error);
    kw_load_reply_free(&r);
    kw_load_reply_init(&r, KW_LOAD_API_CHAT);
    assert_int_equal(kw_load_reply_event(&r, err, strlen(err), 1), 0);
    assert_non_null(r.error);
    kw_load_reply_free(&r);
    const char *bad[] = {"",
                         "nope",
                         "[]",
                         "{}",
                         "{\"choices\":[]}",
                         "{\"choices\":[1]}",
                         "{\"choices\":[{\"text\":5,\"finish_reason\":\"stop\"}]}",
                         "{\"choices\":[{\"text\":\"a\",\"finish_reason\":3}]}",
                         "{\"choices\":[{\"text\":\"a\",\"logprobs\":{\"tokens\":[\"a\"],\"token_logprobs\":[]}}]}",
                         "{\"choices\":[{\"text\":\"a\",\"logprobs\":7}]}",
                         "{\"choices\":[{\"text\":\"a\"}],\"kvwire\":[]}",
                         "{\"error\":\"string\"}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
        kw_load_reply_init(&r, KW_LOAD_API_COMPLETIONS);
        assert_int_equal(kw_load_reply_body(&r, bad[i], strlen(bad[i])), 0);
        if (!r.malformed) fail_msg("accepted: %s", bad[i]);
        assert_true(r.why[0] != '\0');
        kw_load_reply_free(&r);
    }
    kw_load_reply_init(&r, KW_LOAD_API_COMPLETIONS);
    assert_int_equal(kw_load_reply_event(&r, "[DONE]", 6, 1), 0);
    assert_int_equal(kw_load_reply_event(&r, "{}", 2, 2), 0);
    assert_true(r.malformed); /* an event after [DONE] */
    kw_load_reply_free(&r);
    int32_t id;
    assert_int_equal(kw_load_token_id_parse("token_id:151645", &id), 0);
    assert_int_equal(id, 151645);
    assert_int_equal(kw_load_token_id_parse("token_id:", &id), -1);
    assert_int_equal(kw_load_token_id_parse("token_id:12a", &id), -1);
    assert_int_equal(kw_load_token_id_parse("token_id:99999999999", &id), -1);
    assert_int_equal(kw_load_token_id_parse("tok:1", &id), -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sse_chunkings),      cmocka_unit_test(test_sse_caps),
        cmocka_unit_test(test_completions_body),   cmocka_unit_test(test_chat_stream),
        cmocka_unit_test(test_errors_and_garbage),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
