/* test_daemons_parity.c: the daemons give `kvwire c2c`'s tokens. sharerd and receiverd run as separate processes on
 * ephemeral loopback ports; for every mode and several selection and codec policies the completion ids of a request
 * equal those of `kvwire c2c` for the same prompt and policy (the in-memory join of the same two halves), the blob
 * bytes equal the KVWire length kvwire measured, and the bytes the receiver read from the sharer's socket equal the
 * blobs plus exactly the framing docs/PROTOCOL.md specifies (5 bytes per WIRE frame, one frame per KVWire section plus
 * the header and trailer of each blob, and the ShareHeader and ShareEnd frames). Both daemons must then exit cleanly
 * on SIGTERM (no leak under the sanitizer build). */
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

typedef struct parity_case {
    const char *name;
    bool chat;
    const char *request; /* the JSON body */
    const char *cli;     /* kvwire c2c arguments after the models and the prompt */
    bool sends_kv;
    bool cli_wire; /* the CLI ran KVWire (its wire_bytes are comparable) */
} parity_case;

#define PROMPT "Which planet is known as the red planet? Answer in one word."

/* Runs the request through the daemons and the CLI and compares. */
static void check_case(const parity_case *c, uint16_t port, const char *cli_extra) {
    kwd_response r;
    kwd_http(port, c->chat ? "/v1/chat/completions" : "/v1/completions", c->request, &r);
    if (r.status != 200) fail_msg("%s: HTTP %ld: %s", c->name, r.status, r.body);
    char args[4096];
    const char *m = kwd_models_dir();
    const bool relay = strstr(c->cli, "text_relay") != NULL;
    const bool c2c = !strstr(c->cli, "--mode") || strstr(c->cli, "--mode c2c");
    snprintf(args, sizeof args, "c2c --receiver %s/tiny-qwen3 %s%s%s%s%s%s --prompt '%s' --max-new-tokens 10 %s %s", m,
             c2c || relay ? "--sharer " : "", c2c || relay ? m : "", c2c || relay ? "/tiny-qwen2" : "",
             c2c ? " --fuser " : "", c2c ? m : "", c2c ? "/tiny-fuser" : "", PROMPT, c->cli, cli_extra);
    char *out = kwd_kvwire(args);
    int32_t want[64], got[64];
    const int n_want = kwd_parse_ids(out, "generated_ids", want, 64);
    const int n_got = kwd_json_ids(kwd_json_get(r.json, "kvwire.completion_ids"), got, 64);
    if (n_want < 0) fail_msg("%s: kvwire c2c printed no generated_ids:\n%s", c->name, out);
    if (n_want != n_got || memcmp(want, got, (size_t)n_want * sizeof *want) != 0) {
        fprintf(stderr, "%s: daemons:\n%s\nkvwire c2c:\n%s\n", c->name, r.body, out);
        fail_msg("%s: the daemons generated other tokens than kvwire c2c", c->name);
    }
    assert_int_equal((int)kwd_json_num(r.json, "usage.completion_tokens"), n_want);
    const double blob = kwd_json_num(r.json, "kvwire.bytes.blob");
    if (c->sends_kv) {
        assert_true(blob > 0);
        if (c->cli_wire) {
            const long long wire = kwd_parse_int(out, "wire_bytes");
            if ((double)wire != blob) fail_msg("%s: blob %.0f bytes, kvwire c2c measured %lld", c->name, blob, wire);
        }
        /* the bytes read from the sharer's socket: the blobs and exactly the protocol's framing */
        const double socket_in = kwd_json_num(r.json, "kvwire.bytes.socket_in");
        const double wire_frames = kwd_json_num(r.json, "kvwire.bytes.frames_in.wire");
        const double control = kwd_json_num(r.json, "kvwire.bytes.frames_in.control_bytes");
        const double sections = kwd_json_num(r.json, "kvwire.codec.sections");
        const double blobs = kwd_json_num(r.json, "kvwire.codec.blobs");
        assert_true(blobs >= 1);
        if (wire_frames != sections + 2 * blobs)
            fail_msg("%s: %.0f WIRE frames for %.0f sections in %.0f blobs", c->name, wire_frames, sections, blobs);
        if (socket_in != blob + 5 * wire_frames + control)
            fail_msg("%s: %.0f socket bytes in, the blob (%.0f) and its framing make %.0f", c->name, socket_in, blob,
                     blob + 5 * wire_frames + control);
        assert_true(control > 10 && control < 400); /* one ShareHeader and one ShareEnd */
        assert_true(kwd_json_num(r.json, "kvwire.bytes.socket_out") > 5);
        /* the byte breakdown adds up to the blob */
        const double parts = kwd_json_num(r.json, "kvwire.codec.breakdown.header") +
                             kwd_json_num(r.json, "kvwire.codec.breakdown.indices") +
                             kwd_json_num(r.json, "kvwire.codec.breakdown.scales") +
                             kwd_json_num(r.json, "kvwire.codec.breakdown.payload") +
                             kwd_json_num(r.json, "kvwire.codec.breakdown.outliers") +
                             kwd_json_num(r.json, "kvwire.codec.breakdown.checksums");
        assert_true(parts == blob + kwd_json_num(r.json, "kvwire.codec.breakdown.compression_saved"));
        const long long sent = kwd_parse_int(out, "tokens_sent");
        assert_true(sent == (long long)kwd_json_num(r.json, "kvwire.selection.tokens_sent"));
    } else {
        assert_true(blob == 0);
    }
    if (relay) {
        const long long bytes = kwd_parse_int(out, "relay_bytes");
        assert_true(bytes == (long long)kwd_json_num(r.json, "kvwire.relay.bytes"));
        assert_true(kwd_json_num(r.json, "kvwire.bytes.text") == bytes);
        const cJSON *style = kwd_json_get(r.json, "kvwire.relay.style");
        assert_true(cJSON_IsString(style));
        char line[64];
        snprintf(line, sizeof line, "relay_style: %s\n", style->valuestring);
        assert_non_null(strstr(out, line));
    }
    free(out);
    kwd_response_free(&r);
}

#define CHAT_BODY(kv)                                                                                                  \
    "{\"messages\":[{\"role\":\"user\",\"content\":\"" PROMPT "\"}],\"max_tokens\":10,\"kvwire\":" kv "}"

static const parity_case cases[] = {
    {"c2c bf16", true, CHAT_BODY("{}"), "--wire bf16", true, true},
    {"c2c int4 per head", true, CHAT_BODY("{\"policy\":{\"codec\":\"int4\",\"granularity\":\"head\"}}"),
     "--wire int4 --wire-gran head", true, true},
    {"c2c int8 f16 scales zstd", true, CHAT_BODY("{\"policy\":{\"codec\":\"int8\",\"scale\":\"f16\",\"zstd\":3}}"),
     "--wire int8 --wire-scale f16 --wire-zstd 3", true, true},
    {"c2c knorm_topk nf4 group8", true,
     CHAT_BODY("{\"policy\":{\"selection\":\"knorm_topk\",\"proportion\":0.5,\"codec\":\"nf4\",\"granularity\":"
               "\"group8\"}}"),
     "--select knorm_topk --select-proportion 0.5 --wire nf4 --wire-gran group8", true, true},
    {"c2c random e4m3", true,
     CHAT_BODY("{\"policy\":{\"selection\":\"random\",\"proportion\":0.3,\"seed\":7,\"min_tokens\":2,\"codec\":"
               "\"e4m3\"}}"),
     "--select random --select-proportion 0.3 --seed 7 --min-tokens 2 --wire e4m3", true, true},
    {"c2c back half, front selection", true,
     CHAT_BODY("{\"policy\":{\"cache_proportion\":0.5,\"order\":\"back\",\"selection\":\"front\",\"proportion\":0.5,"
               "\"codec\":\"int8\"}}"),
     "--proportion 0.5 --order back --select front --select-proportion 0.5 --wire int8", true, true},
    {"c2c vnorm budget 3000 bytes", true,
     CHAT_BODY("{\"policy\":{\"selection\":\"vnorm_topk\",\"budget_bytes\":3000}}"),
     "--select vnorm_topk --budget-bytes 3000", true, true},
    {"c2c v1.1: int4 zero points per channel keys, int3 values, 2% outliers", true,
     CHAT_BODY("{\"policy\":{\"codec\":\"int4-asym\",\"granularity\":\"channel8\",\"value_codec\":\"int3-asym\","
               "\"value_granularity\":\"token\",\"outliers\":0.02}}"),
     "--wire int4-asym --wire-gran channel8 --wire-value int3-asym:token --wire-outliers 0.02", true, true},
    {"c2c budget 3000 bytes over v1.1 codecs", true,
     CHAT_BODY("{\"policy\":{\"selection\":\"vnorm_topk\",\"budget_bytes\":3000,\"budget_codecs\":[\"int2-asym\","
               "\"int4\",\"int8-asym\"]}}"),
     "--select vnorm_topk --budget-bytes 3000 --budget-codecs int2-asym,int4,int8-asym", true, true},
    {"kv_direct bf16", true, CHAT_BODY("{\"mode\":\"kv_direct\"}"), "--mode kv_direct --wire bf16", true, true},
    {"kv_direct v1.1: pre-RoPE keys per channel, int4 values per 8, 1% outliers", true,
     CHAT_BODY("{\"mode\":\"kv_direct\",\"policy\":{\"codec\":\"int4-asym\",\"granularity\":\"channel4\","
               "\"value_codec\":\"int4\",\"value_granularity\":\"group8\",\"outliers\":0.01,\"pre_rope_keys\":true}}"),
     "--mode kv_direct --wire int4-asym --wire-gran channel4 --wire-value int4:group8 --wire-outliers 0.01 "
     "--wire-pre-rope",
     true, true},
    {"kv_direct v1.1: K and V Hadamard-rotated, int4 per token, pre-RoPE keys", true,
     CHAT_BODY("{\"mode\":\"kv_direct\",\"policy\":{\"codec\":\"int4\",\"granularity\":\"token\","
               "\"rotate\":\"kv\",\"pre_rope_keys\":true}}"),
     "--mode kv_direct --wire int4 --wire-gran token --wire-rotate kv --wire-pre-rope", true, true},
    {"c2c v1.1: V Hadamard-rotated, int2 zero points per 8", true,
     CHAT_BODY("{\"policy\":{\"codec\":\"int2-asym\",\"granularity\":\"group8\",\"rotate\":\"v\"}}"),
     "--wire int2-asym --wire-gran group8 --wire-rotate v", true, true},
    {"kv_direct: clipped scales, int3 K and V rotated per token", true,
     CHAT_BODY("{\"mode\":\"kv_direct\",\"policy\":{\"codec\":\"int3\",\"granularity\":\"token\","
               "\"rotate\":\"kv\",\"clip\":\"kv\"}}"),
     "--mode kv_direct --wire int3 --wire-gran token --wire-rotate kv --wire-clip kv", true, true},
    {"kv_direct: code limits under zstd, int8 K within +-10, V within +-3", true,
     CHAT_BODY("{\"mode\":\"kv_direct\",\"policy\":{\"codec\":\"int8\",\"granularity\":\"token\",\"zstd\":19,"
               "\"qmax_k\":10,\"qmax_v\":3}}"),
     "--mode kv_direct --wire int8 --wire-gran token --wire-zstd 19 --wire-qmax-k 10 --wire-qmax-v 3", true, true},
    {"c2c: a code limit on clipped rotated int8 V under zstd", true,
     CHAT_BODY("{\"policy\":{\"codec\":\"int8\",\"rotate\":\"v\",\"clip\":\"v\",\"qmax_v\":4,\"zstd\":3}}"),
     "--wire int8 --wire-rotate v --wire-clip v --wire-qmax-v 4 --wire-zstd 3", true, true},
    {"c2c v1.1: rANS-coded int8 bodies within +-12 / +-4", true,
     CHAT_BODY("{\"policy\":{\"codec\":\"int8\",\"qmax_k\":12,\"qmax_v\":4,\"rans\":true}}"),
     "--wire int8 --wire-qmax-k 12 --wire-qmax-v 4 --wire-rans", true, true},
    {"kv_direct: rANS or zstd 3, whichever is smaller, over int8 code limits", true,
     CHAT_BODY("{\"mode\":\"kv_direct\",\"policy\":{\"codec\":\"int8\",\"granularity\":\"token\",\"zstd\":3,"
               "\"rans\":true,\"qmax_k\":12,\"qmax_v\":4}}"),
     "--mode kv_direct --wire int8 --wire-gran token --wire-zstd 3 --wire-rans --wire-qmax-k 12 --wire-qmax-v 4", true,
     true},
    {"c2c vnorm budget 3000 bytes, rans on (v1.1 blobs; the cap takes it)", true,
     CHAT_BODY("{\"policy\":{\"selection\":\"vnorm_topk\",\"budget_bytes\":3000,\"rans\":true}}"),
     "--select vnorm_topk --budget-bytes 3000 --wire-rans", true, true},
    {"kv_direct int4 vnorm_topk", true,
     CHAT_BODY("{\"mode\":\"kv_direct\",\"policy\":{\"selection\":\"vnorm_topk\",\"proportion\":0.5,\"codec\":"
               "\"int4\"}}"),
     "--mode kv_direct --select vnorm_topk --select-proportion 0.5 --wire int4", true, true},
    {"kv_direct front half int6", true,
     CHAT_BODY("{\"mode\":\"kv_direct\",\"policy\":{\"cache_proportion\":0.5,\"codec\":\"int6\"}}"),
     "--mode kv_direct --proportion 0.5 --wire int6", true, true},
    {"kv_direct vnorm budget 4000 bytes", true,
     CHAT_BODY("{\"mode\":\"kv_direct\",\"policy\":{\"selection\":\"vnorm_topk\",\"budget_bytes\":4000}}"),
     "--mode kv_direct --select vnorm_topk --budget-bytes 4000", true, true},
    {"receiver_only", true, CHAT_BODY("{\"mode\":\"receiver_only\"}"), "--mode receiver_only", false, false},
    {"text_relay capped", true, CHAT_BODY("{\"mode\":\"text_relay\",\"relay\":{\"max_tokens\":12,\"max_bytes\":30}}"),
     "--mode text_relay --relay-max-tokens 12 --relay-bytes 30", false, false},
    {"text_relay raw capped", true,
     CHAT_BODY("{\"mode\":\"text_relay\",\"relay\":{\"style\":\"raw\",\"max_bytes\":20}}"),
     "--mode text_relay --relay-style raw --relay-bytes 20", false, false},
    {"text_relay extractive", true,
     CHAT_BODY("{\"mode\":\"text_relay\",\"relay\":{\"style\":\"extractive\",\"max_bytes\":40}}"),
     "--mode text_relay --relay-style extractive --relay-bytes 40", false, false},
    {"completions raw c2c int4", false,
     "{\"prompt\":\"" PROMPT "\",\"max_tokens\":10,\"kvwire\":{\"policy\":{\"codec\":\"int4\"}}}", "--raw --wire int4",
     true, true},
};

static void test_parity(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i)
        check_case(&cases[i], kwd_receiver.port, "");
}

/* fp32 numerics (kvwire c2c --fp32) on a second receiverd of the same sharer. */
static void test_parity_fp32(void **state) {
    (void)state;
    const char *extra[] = {"--numerics.mode=fp32", NULL};
    kwd_proc r2;
    kwd_start_receiver(kwd_sharer.port, extra, &r2);
    assert_true(kwd_wait_healthy(r2.port, kwd_ms(30000)));
    check_case(&cases[1], r2.port, "--fp32");
    check_case(&cases[7], r2.port, "--fp32");
    kwd_stop(&r2);
}

/* A layer subset sends those layers only (kvwire c2c has no such option: the counts are checked). */
static void test_layers(void **state) {
    (void)state;
    kwd_response r;
    kwd_http(kwd_receiver.port, "/v1/chat/completions", CHAT_BODY("{\"policy\":{\"layers\":[1],\"codec\":\"int8\"}}"),
             &r);
    assert_int_equal(r.status, 200);
    assert_true(kwd_json_num(r.json, "kvwire.codec.sections") == 1);
    assert_true(kwd_json_num(r.json, "kvwire.selection.layers_sent") == 1);
    assert_true(kwd_json_num(r.json, "kvwire.fusion.layers_fused") >= 1);
    kwd_response_free(&r);
}

/* A code limit (FORMAT.md §5.14) is applied, not only passed along: under zstd the blob is smaller than without it,
 * and the response's policy names it, in a schedule entry too. */
static void test_code_limit(void **state) {
    (void)state;
    kwd_response plain, limited;
    kwd_http(kwd_receiver.port, "/v1/chat/completions",
             CHAT_BODY("{\"mode\":\"kv_direct\",\"policy\":{\"codec\":\"int8\",\"zstd\":19}}"), &plain);
    kwd_http(kwd_receiver.port, "/v1/chat/completions",
             CHAT_BODY("{\"mode\":\"kv_direct\",\"policy\":{\"codec\":\"int8\",\"zstd\":19,\"qmax_k\":6,"
                       "\"schedule\":[{\"layers\":[0,0],\"qmax_k\":40,\"qmax_v\":2}]}}"),
             &limited);
    assert_int_equal(plain.status, 200);
    if (limited.status != 200) fail_msg("HTTP %ld: %s", limited.status, limited.body);
    const double b0 = kwd_json_num(plain.json, "kvwire.bytes.blob"),
                 b1 = kwd_json_num(limited.json, "kvwire.bytes.blob");
    if (!(b1 > 0 && b1 < b0)) fail_msg("blob of %.0f bytes with code limits, %.0f without", b1, b0);
    assert_true(kwd_json_num(limited.json, "kvwire.policy.qmax_k") == 6);
    const cJSON *e = cJSON_GetArrayItem(kwd_json_get(limited.json, "kvwire.policy.schedule"), 0);
    assert_true(kwd_json_num(e, "qmax_k") == 40 && kwd_json_num(e, "qmax_v") == 2);
    /* layer 0's own limits are applied: without them (the policy's +-6 on K, none on V) the blob differs */
    kwd_response own;
    kwd_http(kwd_receiver.port, "/v1/chat/completions",
             CHAT_BODY("{\"mode\":\"kv_direct\",\"policy\":{\"codec\":\"int8\",\"zstd\":19,\"qmax_k\":6,"
                       "\"schedule\":[{\"layers\":[0,0],\"codec\":\"int8\"}]}}"),
             &own);
    assert_int_equal(own.status, 200);
    const double b2 = kwd_json_num(own.json, "kvwire.bytes.blob");
    if (!(b2 > b1)) fail_msg("layer 0 at +-40 / +-2: %.0f bytes, at the policy's +-6 / none: %.0f", b1, b2);
    kwd_response_free(&own);
    kwd_response_free(&plain);
    kwd_response_free(&limited);
}

/* The rANS body coder (FORMAT.md §5.15) is applied, not only passed along: the blob of an int8 request with code
 * limits is smaller with it, its sections count as coded, and the tokens are those of the request without it (the
 * coder is lossless). With zstd too each section keeps the smaller coding: the blob is at most either coder's alone.
 * (The limits make the codes worth coding: on the tiny models' full-range int8 codes the coder's table does not pay
 * for itself and every section is stored as it is.) */
static void test_rans(void **state) {
    (void)state;
#define RANS_BODY(extra)                                                                                               \
    CHAT_BODY("{\"mode\":\"kv_direct\",\"policy\":{\"codec\":\"int8\",\"qmax_k\":12,\"qmax_v\":4" extra "}}")
    static const char *const bodies[4] = {RANS_BODY(""), RANS_BODY(",\"rans\":true"), RANS_BODY(",\"zstd\":19"),
                                          RANS_BODY(",\"zstd\":19,\"rans\":true")};
#undef RANS_BODY
    kwd_response r[4];
    double blob[4];
    int32_t ids[4][64];
    int n_ids[4];
    for (int i = 0; i < 4; ++i) {
        kwd_http(kwd_receiver.port, "/v1/chat/completions", bodies[i], &r[i]);
        if (r[i].status != 200) fail_msg("request %d: HTTP %ld: %s", i, r[i].status, r[i].body);
        blob[i] = kwd_json_num(r[i].json, "kvwire.bytes.blob");
        n_ids[i] = kwd_json_ids(kwd_json_get(r[i].json, "kvwire.completion_ids"), ids[i], 64);
        assert_true(n_ids[i] > 0);
        if (n_ids[i] != n_ids[0] || memcmp(ids[i], ids[0], (size_t)n_ids[0] * sizeof ids[0][0]) != 0)
            fail_msg("request %d generated other tokens than the one without an entropy coder:\n%s\n%s", i, r[i].body,
                     r[0].body);
    }
    const double sections = kwd_json_num(r[1].json, "kvwire.codec.sections");
    assert_true(sections >= 1);
    assert_true(kwd_json_num(r[0].json, "kvwire.codec.compressed_sections") == 0);
    if (!(blob[1] > 0 && blob[1] < blob[0])) fail_msg("blob of %.0f bytes with rANS, %.0f without", blob[1], blob[0]);
    if (!(kwd_json_num(r[1].json, "kvwire.codec.compressed_sections") == sections))
        fail_msg("%.0f of %.0f sections rANS-coded", kwd_json_num(r[1].json, "kvwire.codec.compressed_sections"),
                 sections);
    if (!(blob[3] <= blob[1] && blob[3] <= blob[2]))
        fail_msg("rANS and zstd 19: %.0f bytes; rANS alone %.0f, zstd alone %.0f", blob[3], blob[1], blob[2]);
    assert_true(cJSON_IsTrue(kwd_json_get(r[1].json, "kvwire.policy.rans")));
    assert_true(cJSON_IsTrue(kwd_json_get(r[3].json, "kvwire.policy.rans")));
    assert_null(kwd_json_get(r[0].json, "kvwire.policy.rans"));
    for (int i = 0; i < 4; ++i)
        kwd_response_free(&r[i]);
}

/* max_tokens 0 with echo: the prompt comes back, nothing is generated. */
static void test_echo_only(void **state) {
    (void)state;
    kwd_response r;
    kwd_http(kwd_receiver.port, "/v1/completions", "{\"prompt\":\"" PROMPT "\",\"max_tokens\":0,\"echo\":true}", &r);
    assert_int_equal(r.status, 200);
    const cJSON *text = kwd_json_get(cJSON_GetArrayItem(cJSON_GetObjectItem(r.json, "choices"), 0), "text");
    assert_true(cJSON_IsString(text));
    assert_string_equal(text->valuestring, PROMPT);
    assert_true(kwd_json_num(r.json, "usage.completion_tokens") == 0);
    kwd_response_free(&r);
}

/* Streaming gives the same text, as events, with the kvwire block in the last one. */
static void test_stream(void **state) {
    (void)state;
    kwd_response plain, sse;
    kwd_http(kwd_receiver.port, "/v1/chat/completions", CHAT_BODY("{\"policy\":{\"codec\":\"int4\"}}"), &plain);
    assert_int_equal(plain.status, 200);
    const char *body = "{\"messages\":[{\"role\":\"user\",\"content\":\"" PROMPT
                       "\"}],\"max_tokens\":10,\"stream\":true,\"kvwire\":{\"policy\":{\"codec\":\"int4\"}}}";
    kwd_http(kwd_receiver.port, "/v1/chat/completions", body, &sse);
    assert_int_equal(sse.status, 200);
    char text[4096] = "";
    bool done = false, had_kvwire = false;
    for (char *line = strtok(sse.body, "\n"); line; line = strtok(NULL, "\n")) {
        if (strncmp(line, "data: ", 6) != 0) continue;
        if (strcmp(line + 6, "[DONE]") == 0) {
            done = true;
            continue;
        }
        cJSON *ev = cJSON_Parse(line + 6);
        assert_non_null(ev);
        const cJSON *delta = kwd_json_get(cJSON_GetArrayItem(cJSON_GetObjectItem(ev, "choices"), 0), "delta.content");
        if (cJSON_IsString(delta)) strncat(text, delta->valuestring, sizeof text - strlen(text) - 1);
        if (cJSON_GetObjectItem(ev, "kvwire")) had_kvwire = true;
        cJSON_Delete(ev);
    }
    assert_true(done && had_kvwire);
    const cJSON *want =
        kwd_json_get(cJSON_GetArrayItem(cJSON_GetObjectItem(plain.json, "choices"), 0), "message.content");
    assert_string_equal(text, want->valuestring);
    kwd_response_free(&plain);
    kwd_response_free(&sse);
}

/* logprobs and teacher forcing agree: forcing the greedy tokens agrees at every position, scores them with the
 * logprobs the free run reported, and gives the same ids. */
static void test_logprobs_and_forcing(void **state) {
    (void)state;
    kwd_response free_run, forced;
    kwd_http(kwd_receiver.port, "/v1/completions",
             "{\"prompt\":\"" PROMPT "\",\"max_tokens\":6,\"logprobs\":3,\"kvwire\":{\"policy\":{\"codec\":"
             "\"int8\"}}}",
             &free_run);
    assert_int_equal(free_run.status, 200);
    int32_t ids[16];
    const int n = kwd_json_ids(kwd_json_get(free_run.json, "kvwire.completion_ids"), ids, 16);
    assert_true(n >= 1 && n <= 6);
    const cJSON *lp = kwd_json_get(cJSON_GetArrayItem(cJSON_GetObjectItem(free_run.json, "choices"), 0), "logprobs");
    const cJSON *token_lp = cJSON_GetObjectItem(lp, "token_logprobs"), *tops = cJSON_GetObjectItem(lp, "top_logprobs");
    assert_int_equal(cJSON_GetArraySize(token_lp), n);
    assert_int_equal(cJSON_GetArraySize(tops), n);
    double chosen[16];
    for (int i = 0; i < n; ++i) {
        chosen[i] = cJSON_GetArrayItem(token_lp, i)->valuedouble;
        assert_true(chosen[i] <= 0);
        const cJSON *top = cJSON_GetArrayItem(tops, i), *alt;
        assert_true(cJSON_GetArraySize(top) >= 1 && cJSON_GetArraySize(top) <= 3);
        cJSON_ArrayForEach(alt, top) assert_true(alt->valuedouble <= chosen[i]); /* greedy: the chosen is the top */
    }
    char body[2048], force[512] = "", score[512] = "";
    for (int i = 0; i < n; ++i) {
        char one[64];
        snprintf(one, sizeof one, "%s%d", i ? "," : "", (int)ids[i]);
        strcat(force, one);
        snprintf(one, sizeof one, "%s[%d,%d]", i ? "," : "", (int)ids[i], 0);
        strcat(score, one);
    }
    snprintf(body, sizeof body,
             "{\"prompt\":\"" PROMPT "\",\"kvwire\":{\"policy\":{\"codec\":\"int8\"},\"force_tokens\":[%s],"
             "\"score_ids\":[%s]}}",
             force, score);
    kwd_http(kwd_receiver.port, "/v1/completions", body, &forced);
    assert_int_equal(forced.status, 200);
    int32_t again[16];
    assert_int_equal(kwd_json_ids(kwd_json_get(forced.json, "kvwire.completion_ids"), again, 16), n);
    assert_memory_equal(again, ids, (size_t)n * sizeof *ids);
    assert_true(kwd_json_num(forced.json, "kvwire.teacher_forcing.positions") == n);
    assert_true(kwd_json_num(forced.json, "kvwire.teacher_forcing.top1_agree") == n);
    const cJSON *scored = kwd_json_get(forced.json, "kvwire.scored_logprobs");
    assert_int_equal(cJSON_GetArraySize(scored), n);
    for (int i = 0; i < n; ++i) {
        const double s0 = cJSON_GetArrayItem(cJSON_GetArrayItem(scored, i), 0)->valuedouble;
        if (fabs(s0 - chosen[i]) > 1e-9) fail_msg("position %d: forced %.12g, free run %.12g", i, s0, chosen[i]);
    }
    kwd_response_free(&free_run);
    kwd_response_free(&forced);
}

/* return_tokens_as_token_ids (HTTP_API.md §8): every logprobs token, chosen and alternative, is "token_id:<id>"; the
 * chosen ones are the completion ids, the top alternative of each greedy step is the chosen one, and the logprobs equal
 * those of the same request without the field. Both endpoints. */
static void test_logprobs_token_ids(void **state) {
    (void)state;
    kwd_response named, plain, chat;
    kwd_http(kwd_receiver.port, "/v1/completions",
             "{\"prompt\":\"" PROMPT "\",\"max_tokens\":5,\"logprobs\":4,\"return_tokens_as_token_ids\":true}", &named);
    kwd_http(kwd_receiver.port, "/v1/completions", "{\"prompt\":\"" PROMPT "\",\"max_tokens\":5,\"logprobs\":4}",
             &plain);
    assert_int_equal(named.status, 200);
    assert_int_equal(plain.status, 200);
    int32_t ids[16];
    const int n = kwd_json_ids(kwd_json_get(named.json, "kvwire.completion_ids"), ids, 16);
    assert_true(n >= 1 && n <= 5);
    const cJSON *lp = kwd_json_get(cJSON_GetArrayItem(cJSON_GetObjectItem(named.json, "choices"), 0), "logprobs");
    const cJSON *lp0 = kwd_json_get(cJSON_GetArrayItem(cJSON_GetObjectItem(plain.json, "choices"), 0), "logprobs");
    const cJSON *toks = cJSON_GetObjectItem(lp, "tokens"), *tops = cJSON_GetObjectItem(lp, "top_logprobs");
    assert_int_equal(cJSON_GetArraySize(toks), n);
    for (int i = 0; i < n; ++i) {
        char want[32];
        snprintf(want, sizeof want, "token_id:%d", (int)ids[i]);
        assert_string_equal(cJSON_GetArrayItem(toks, i)->valuestring, want);
        const double a = cJSON_GetArrayItem(cJSON_GetObjectItem(lp, "token_logprobs"), i)->valuedouble;
        const double b = cJSON_GetArrayItem(cJSON_GetObjectItem(lp0, "token_logprobs"), i)->valuedouble;
        assert_true(a == b);
        const cJSON *top = cJSON_GetArrayItem(tops, i);
        assert_int_equal(cJSON_GetArraySize(top), 4); /* ids never collide, unlike texts */
        const cJSON *alt;
        cJSON_ArrayForEach(alt, top) assert_true(strncmp(alt->string, "token_id:", 9) == 0);
        assert_non_null(cJSON_GetObjectItemCaseSensitive(top, want));
        assert_true(cJSON_GetObjectItemCaseSensitive(top, want)->valuedouble == a);
    }
    kwd_http(kwd_receiver.port, "/v1/chat/completions",
             "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":3,\"logprobs\":true,"
             "\"top_logprobs\":2,\"return_tokens_as_token_ids\":true}",
             &chat);
    assert_int_equal(chat.status, 200);
    const int nc = kwd_json_ids(kwd_json_get(chat.json, "kvwire.completion_ids"), ids, 16);
    const cJSON *content = kwd_json_get(
        kwd_json_get(cJSON_GetArrayItem(cJSON_GetObjectItem(chat.json, "choices"), 0), "logprobs"), "content");
    assert_int_equal(cJSON_GetArraySize(content), nc);
    for (int i = 0; i < nc; ++i) {
        char want[32];
        snprintf(want, sizeof want, "token_id:%d", (int)ids[i]);
        const cJSON *o = cJSON_GetArrayItem(content, i);
        assert_string_equal(cJSON_GetObjectItem(o, "token")->valuestring, want);
        const cJSON *top0 = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "top_logprobs"), 0);
        assert_string_equal(cJSON_GetObjectItem(top0, "token")->valuestring, want);
    }
    kwd_response_free(&named);
    kwd_response_free(&plain);
    kwd_response_free(&chat);
}

/* A small inbox makes receiverd stop reading the sharer's socket while its compute thread is behind (and resume):
 * the tokens do not change. A long prompt makes a blob of several inboxes. */
static void test_small_inbox(void **state) {
    (void)state;
    char body[16384] = "{\"messages\":[{\"role\":\"user\",\"content\":\"";
    for (int i = 0; i < 100; ++i)
        strcat(body, "The quick brown fox jumps over the lazy dog again and again. ");
    strcat(body, "\"}],\"max_tokens\":4,\"kvwire\":{\"policy\":{\"codec\":\"f16\"}}}");
    const char *extra[] = {"--sharer.inbox_bytes=65536", NULL};
    kwd_proc small;
    kwd_start_receiver(kwd_sharer.port, extra, &small);
    assert_true(kwd_wait_healthy(small.port, kwd_ms(30000)));
    kwd_response a, b;
    kwd_http(kwd_receiver.port, "/v1/chat/completions", body, &a);
    kwd_http(small.port, "/v1/chat/completions", body, &b);
    assert_int_equal(a.status, 200);
    assert_int_equal(b.status, 200);
    assert_true(kwd_json_num(b.json, "kvwire.bytes.blob") > 4 * 65536);
    int32_t x[8], y[8];
    const int nx = kwd_json_ids(kwd_json_get(a.json, "kvwire.completion_ids"), x, 8);
    assert_int_equal(kwd_json_ids(kwd_json_get(b.json, "kvwire.completion_ids"), y, 8), nx);
    assert_memory_equal(x, y, (size_t)nx * sizeof *x);
    kwd_response_free(&a);
    kwd_response_free(&b);
    kwd_stop(&small);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parity),      cmocka_unit_test(test_parity_fp32),
        cmocka_unit_test(test_layers),      cmocka_unit_test(test_code_limit),
        cmocka_unit_test(test_rans),        cmocka_unit_test(test_echo_only),
        cmocka_unit_test(test_stream),      cmocka_unit_test(test_logprobs_and_forcing),
        cmocka_unit_test(test_small_inbox), cmocka_unit_test(test_logprobs_token_ids),
    };
    return cmocka_run_group_tests(tests, kwd_pair_setup, kwd_pair_teardown);
}
