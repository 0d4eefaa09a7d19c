/* test_api_limits.c: every bounded field of receiverd's request body (docs/HTTP_API.md §2-§5), exactly at its limit
 * (accepted, the value kept) and one step beyond it on each side that has a bound (a 400 naming the field). The
 * parser is receiver/kw_receiverd_api.c's kw_rd_spec_parse with the server's default configuration; the limits on
 * the HTTP framing (header bytes, header count, body bytes) are tests/net/test_net_http.c's, the context length is
 * tests/daemons/test_daemons_failures.c's (it needs a model). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/kw_buf.h"
#include "common/kw_json.h"
#include "common/kw_status.h"
#include "receiver/kw_receiverd_internal.h"

#define VOCAB 1000

static kw_receiverd_config server_config;

/* Parses body on the completions (chat false) or chat endpoint. Owns nothing; *spec is freed by the caller when the
 * return is 0. err receives the message of a refusal. */
static int parse(const char *body, bool chat, kw_rd_spec *spec, char *err, size_t errcap, int *http) {
    const char *type = NULL;
    *http = 0;
    err[0] = '\0';
    return kw_rd_spec_parse(body, strlen(body), chat, &server_config, VOCAB, "receiver", spec, err, errcap, &type,
                            http);
}

/* The completions body {"prompt": "x", <fields>} must be accepted. */
static void accept_fields(const char *fields, bool chat, kw_rd_spec *spec) {
    char *body = NULL;
    const int n = chat ? asprintf(&body, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]%s%s}",
                                  fields[0] ? ", " : "", fields)
                       : asprintf(&body, "{\"prompt\": \"x\"%s%s}", fields[0] ? ", " : "", fields);
    assert_true(n > 0);
    char err[512];
    int http = 0;
    const int rc = parse(body, chat, spec, err, sizeof err, &http);
    if (rc != 0) fail_msg("refused %.200s: %s", body, err);
    free(body);
}

/* The same body must be a 400 whose message names `names`. */
static void refuse_fields(const char *fields, bool chat, const char *names) {
    char *body = NULL;
    const int n = chat ? asprintf(&body, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]%s%s}",
                                  fields[0] ? ", " : "", fields)
                       : asprintf(&body, "{\"prompt\": \"x\"%s%s}", fields[0] ? ", " : "", fields);
    assert_true(n > 0);
    kw_rd_spec spec;
    char err[512];
    int http = 0;
    const int rc = parse(body, chat, &spec, err, sizeof err, &http);
    if (rc == 0) {
        kw_rd_spec_free(&spec);
        fail_msg("accepted %.200s", body);
    }
    assert_int_equal(http, 400);
    if (!strstr(err, names)) fail_msg("the refusal of %.200s does not name %s: %s", body, names, err);
    free(body);
}

/* A JSON array of n token ids, every one `id`. Caller frees. */
static char *id_array(int64_t n, int id) {
    kw_buf b = {0};
    assert_int_equal(kw_buf_printf(&b, "["), 0);
    for (int64_t i = 0; i < n; ++i)
        assert_int_equal(kw_buf_printf(&b, i ? ",%d" : "%d", id), 0);
    assert_int_equal(kw_buf_printf(&b, "]"), 0);
    return (char *)b.data;
}

static void test_max_tokens(void **state) {
    (void)state;
    kw_rd_spec s;
    char f[128];
    snprintf(f, sizeof f, "\"max_tokens\": %d", KW_RD_MAX_MAX_TOKENS);
    accept_fields(f, false, &s);
    assert_int_equal(s.max_tokens, KW_RD_MAX_MAX_TOKENS);
    assert_true(s.max_tokens_given);
    kw_rd_spec_free(&s);
    accept_fields("\"max_tokens\": 0", true, &s);
    assert_int_equal(s.max_tokens, 0);
    kw_rd_spec_free(&s);
    accept_fields("", false, &s);
    assert_false(s.max_tokens_given);
    kw_rd_spec_free(&s);
    snprintf(f, sizeof f, "\"max_tokens\": %d", KW_RD_MAX_MAX_TOKENS + 1);
    refuse_fields(f, false, "max_tokens");
    refuse_fields("\"max_tokens\": -1", true, "max_tokens");
    refuse_fields("\"max_tokens\": 1.5", false, "max_tokens");
}

static void test_context(void **state) {
    (void)state;
    int64_t max_tokens = 10;
    assert_int_equal(kw_rd_fit_context(100, 90, true, &max_tokens), 0); /* exactly fills the context */
    assert_int_equal(max_tokens, 10);
    max_tokens = 11;
    assert_int_equal(kw_rd_fit_context(100, 90, true, &max_tokens), KW_E_LIMIT);
    assert_non_null(strstr(kw_error_detail(), "context of 100 tokens"));
    max_tokens = 256; /* the server's default is cut to the room left */
    assert_int_equal(kw_rd_fit_context(100, 90, false, &max_tokens), 0);
    assert_int_equal(max_tokens, 10);
    max_tokens = 0;
    assert_int_equal(kw_rd_fit_context(100, 100, true, &max_tokens), 0); /* a full prompt, nothing generated */
    max_tokens = 1;
    assert_int_equal(kw_rd_fit_context(100, 100, false, &max_tokens), KW_E_LIMIT);
    max_tokens = 0;
    assert_int_equal(kw_rd_fit_context(100, 101, true, &max_tokens), KW_E_LIMIT);
}

static void test_prompt_ids(void **state) {
    (void)state;
    char *ids = id_array((int64_t)1 << 20, VOCAB - 1);
    char *body = NULL;
    assert_true(asprintf(&body, "{\"prompt\": %s}", ids) > 0);
    kw_rd_spec s;
    char err[512];
    int http = 0;
    assert_int_equal(parse(body, false, &s, err, sizeof err, &http), 0);
    assert_int_equal(s.n_prompt_ids, (int64_t)1 << 20);
    assert_int_equal(s.prompt_ids[0], VOCAB - 1);
    kw_rd_spec_free(&s);
    free(body), free(ids);
    ids = id_array(((int64_t)1 << 20) + 1, 0);
    assert_true(asprintf(&body, "{\"prompt\": %s}", ids) > 0);
    assert_true(parse(body, false, &s, err, sizeof err, &http) < 0);
    assert_int_equal(http, 400);
    assert_non_null(strstr(err, "prompt"));
    free(body), free(ids);
    refuse_fields("\"prompt\": [1000]", false, "prompt");
    refuse_fields("\"prompt\": [-1]", false, "prompt");
    refuse_fields("\"prompt\": []", false, "prompt");
}

static void test_messages(void **state) {
    (void)state;
    kw_buf b = {0};
    for (int n = 4096; n <= 4097; ++n) {
        b.len = 0;
        assert_int_equal(kw_buf_printf(&b, "{\"messages\": ["), 0);
        for (int i = 0; i < n; ++i)
            assert_int_equal(kw_buf_printf(&b, "%s{\"role\": \"user\", \"content\": \"m\"}", i ? "," : ""), 0);
        assert_int_equal(kw_buf_printf(&b, "]}"), 0);
        kw_rd_spec s;
        char err[512];
        int http = 0;
        const int rc = parse((const char *)b.data, true, &s, err, sizeof err, &http);
        if (n == 4096) {
            assert_int_equal(rc, 0);
            assert_int_equal(s.n_messages, 4096);
            kw_rd_spec_free(&s);
        } else {
            assert_true(rc < 0);
            assert_int_equal(http, 400);
            assert_non_null(strstr(err, "messages"));
        }
    }
    kw_buf_free(&b);
    kw_rd_spec s;
    char err[512];
    int http = 0;
    assert_true(parse("{\"messages\": [{\"role\": \"tool\", \"content\": \"m\"}]}", true, &s, err, sizeof err, &http) <
                0);
    assert_int_equal(http, 400);
    assert_non_null(strstr(err, "role"));
}

static void test_stop_and_logprobs(void **state) {
    (void)state;
    kw_rd_spec s;
    accept_fields("\"stop\": [\"a\", \"b\", \"c\", \"d\"]", false, &s);
    assert_int_equal(s.n_stop, KW_RD_MAX_STOP);
    kw_rd_spec_free(&s);
    refuse_fields("\"stop\": [\"a\", \"b\", \"c\", \"d\", \"e\"]", false, "stop");
    refuse_fields("\"stop\": [\"\"]", false, "stop");
    accept_fields("\"logprobs\": 20", false, &s);
    assert_int_equal(s.logprobs, KW_RD_MAX_TOP);
    kw_rd_spec_free(&s);
    refuse_fields("\"logprobs\": 21", false, "logprobs");
    refuse_fields("\"logprobs\": -1", false, "logprobs");
    accept_fields("\"logprobs\": true, \"top_logprobs\": 20", true, &s);
    assert_int_equal(s.logprobs, KW_RD_MAX_TOP);
    kw_rd_spec_free(&s);
    refuse_fields("\"logprobs\": true, \"top_logprobs\": 21", true, "top_logprobs");
    accept_fields("\"temperature\": 0, \"top_p\": 1, \"n\": 1", false, &s);
    kw_rd_spec_free(&s);
    refuse_fields("\"temperature\": 2.5", false, "temperature");
    refuse_fields("\"n\": 129", false, "n:");
}

static void test_policy(void **state) {
    (void)state;
    kw_rd_spec s;
    accept_fields(
        "\"kvwire\": {\"policy\": {\"selection\": \"vnorm_topk\", \"proportion\": 1, \"min_tokens\": 1048576, "
        "\"seed\": 9007199254740991, \"zstd\": 22, \"cache_proportion\": 0}}",
        false, &s);
    assert_int_equal(s.select.min_tokens, 1 << 20);
    assert_true(s.select.seed == (uint64_t)KW_JSON_MAX_EXACT_INT);
    assert_int_equal(s.zstd_level, 22);
    kw_rd_spec_free(&s);
    accept_fields("\"kvwire\": {\"policy\": {\"selection\": \"front\", \"proportion\": 0.001, \"zstd\": -7, "
                  "\"cache_proportion\": 1}}",
                  false, &s);
    assert_int_equal(s.zstd_level, -7);
    kw_rd_spec_free(&s);
    refuse_fields("\"kvwire\": {\"policy\": {\"proportion\": 1.0001}}", false, "proportion");
    refuse_fields("\"kvwire\": {\"policy\": {\"proportion\": -0.1}}", false, "proportion");
    refuse_fields("\"kvwire\": {\"policy\": {\"selection\": \"front\", \"proportion\": 0}}", false, "proportion");
    refuse_fields("\"kvwire\": {\"policy\": {\"min_tokens\": 0}}", false, "min_tokens");
    refuse_fields("\"kvwire\": {\"policy\": {\"min_tokens\": 1048577}}", false, "min_tokens");
    refuse_fields("\"kvwire\": {\"policy\": {\"seed\": -1}}", false, "seed");
    /* 2^53 + 1 reads as the double 2^53: refused rather than served with another seed than the one written */
    refuse_fields("\"kvwire\": {\"policy\": {\"seed\": 9007199254740993}}", false, "seed");
    refuse_fields("\"kvwire\": {\"policy\": {\"seed\": 9007199254740992}}", false, "seed");
    refuse_fields("\"kvwire\": {\"policy\": {\"zstd\": 23}}", false, "zstd");
    refuse_fields("\"kvwire\": {\"policy\": {\"zstd\": -8}}", false, "zstd");
    refuse_fields("\"kvwire\": {\"policy\": {\"cache_proportion\": 1.5}}", false, "cache_proportion");
    refuse_fields("\"kvwire\": {\"policy\": {\"codec\": \"int5\"}}", false, "kvwire.policy");
    /* KVWire v1.1: int3/int2, zero points, channel scales, V apart, outliers, pre-RoPE keys (kv_direct only) */
    accept_fields("\"kvwire\": {\"mode\": \"kv_direct\", \"policy\": {\"codec\": \"int2-asym\", \"granularity\": "
                  "\"channel32\", \"value_codec\": \"int3\", \"value_granularity\": \"group32\", \"outliers\": 0.01, "
                  "\"pre_rope_keys\": true}}",
                  false, &s);
    assert_int_equal(s.spec.codec, KW_WIRE_CODEC_INT2);
    assert_int_equal(s.spec.granularity, KW_WIRE_GRAN_CHANNEL);
    assert_true(kw_wire_spec_asym(&s.spec));
    assert_int_equal(s.spec_v.codec, KW_WIRE_CODEC_INT3);
    assert_int_equal(s.spec_v.granularity, KW_WIRE_GRAN_GROUP);
    assert_false(kw_wire_spec_asym(&s.spec_v));
    assert_true(s.outliers == 0.01 && s.pre_rope_keys);
    kw_rd_spec_free(&s);
    accept_fields("\"kvwire\": {\"policy\": {\"codec\": \"int4\", \"value_granularity\": \"group8\"}}", false, &s);
    assert_int_equal(s.spec_v.codec, KW_WIRE_CODEC_INT4);
    assert_int_equal(s.spec_v.granularity, KW_WIRE_GRAN_GROUP);
    assert_int_equal(s.spec.granularity, KW_WIRE_GRAN_TOKEN);
    kw_rd_spec_free(&s);
    /* codec "cache": the server's quantized cache layout, kv_direct only, with nothing else that sets a codec */
    refuse_fields("\"kvwire\": {\"mode\": \"kv_direct\", \"policy\": {\"codec\": \"cache\"}}", false,
                  "quantized cache"); /* this server's cache is dense */
    server_config.cache_dtype = 3;
    accept_fields("\"kvwire\": {\"mode\": \"kv_direct\", \"policy\": {\"codec\": \"cache\"}}", false, &s);
    assert_true(s.cache_layout);
    kw_rd_spec_free(&s);
    /* the entropy coders change no codec: zstd and rANS with the cache layout */
    accept_fields("\"kvwire\": {\"mode\": \"kv_direct\", \"policy\": {\"codec\": \"cache\", \"zstd\": 3, \"rans\": "
                  "true}}",
                  false, &s);
    assert_true(s.cache_layout && s.rans && s.zstd_level == 3);
    kw_rd_spec_free(&s);
    refuse_fields("\"kvwire\": {\"policy\": {\"codec\": \"cache\"}}", false, "kv_direct");
    refuse_fields("\"kvwire\": {\"mode\": \"kv_direct\", \"policy\": {\"codec\": \"cache\", \"value_codec\": "
                  "\"int4\"}}",
                  false, "value_codec");
    refuse_fields("\"kvwire\": {\"mode\": \"kv_direct\", \"policy\": {\"codec\": \"cache\", \"budget_bytes\": "
                  "9000}}",
                  false, "budget_bytes");
    server_config.cache_dtype = 0;
    refuse_fields("\"kvwire\": {\"policy\": {\"pre_rope_keys\": true}}", false, "pre_rope_keys");
    refuse_fields("\"kvwire\": {\"mode\": \"kv_direct\", \"policy\": {\"pre_rope_keys\": 1}}", false, "pre_rope_keys");
    refuse_fields("\"kvwire\": {\"policy\": {\"outliers\": 1.5}}", false, "outliers");
    accept_fields("\"kvwire\": {\"policy\": {\"codec\": \"int4\", \"rotate\": \"v\"}}", false, &s);
    assert_int_equal(s.rotate, 2);
    kw_rd_spec_free(&s);
    refuse_fields("\"kvwire\": {\"policy\": {\"rotate\": \"q\"}}", false, "rotate");
    refuse_fields("\"kvwire\": {\"policy\": {\"rotate\": \"kv\", \"budget_bytes\": 5000}}", false, "rotate");
    accept_fields("\"kvwire\": {\"policy\": {\"codec\": \"int3\", \"clip\": \"kv\"}}", false, &s);
    assert_int_equal(s.clip, 3);
    assert_int_equal(s.rotate, 0);
    kw_rd_spec_free(&s);
    refuse_fields("\"kvwire\": {\"policy\": {\"clip\": \"x\"}}", false, "clip");
    refuse_fields("\"kvwire\": {\"policy\": {\"clip\": \"k\", \"budget_bytes\": 5000}}", false, "clip");
    refuse_fields("\"kvwire\": {\"policy\": {\"outliers\": 0.01, \"budget_bytes\": 5000}}", false, "outliers");
    /* code limits (FORMAT.md §5.14): integers 0..255 per tensor, not with a byte cap; a schedule entry naming one
     * takes its own options, the others the policy's */
    accept_fields("\"kvwire\": {\"policy\": {\"codec\": \"int8\", \"clip\": \"v\", \"qmax_k\": 10, \"qmax_v\": 255, "
                  "\"schedule\": [{\"layers\": [1, 2], \"qmax_k\": 16}]}}",
                  false, &s);
    assert_int_equal(s.qmax_k, 10);
    assert_int_equal(s.qmax_v, 255);
    assert_true(s.schedule[0].own_options);
    assert_int_equal(s.schedule[0].qmax_k, 16);
    assert_int_equal(s.schedule[0].qmax_v, 255);
    assert_int_equal(s.schedule[0].clip, 2);
    kw_rd_spec_free(&s);
    refuse_fields("\"kvwire\": {\"policy\": {\"qmax_k\": 256}}", false, "qmax_k");
    refuse_fields("\"kvwire\": {\"policy\": {\"qmax_v\": -1}}", false, "qmax_v");
    refuse_fields("\"kvwire\": {\"policy\": {\"qmax_v\": \"4\"}}", false, "qmax_v");
    refuse_fields("\"kvwire\": {\"policy\": {\"qmax_k\": 4, \"budget_bytes\": 5000}}", false, "qmax");
    refuse_fields("\"kvwire\": {\"policy\": {\"schedule\": [{\"layers\": [0, 1], \"qmax_v\": 300}]}}", false,
                  "schedule.qmax_v");
    /* the rANS body coder (FORMAT.md §5.15): a boolean, beside zstd, with a byte cap too; the server's default
     * (defaults.rans) until a request says otherwise */
    accept_fields("\"kvwire\": {\"policy\": {\"codec\": \"int8\", \"zstd\": 19, \"rans\": true}}", false, &s);
    assert_true(s.rans);
    assert_int_equal(s.zstd_level, 19);
    kw_rd_spec_free(&s);
    accept_fields("\"kvwire\": {\"policy\": {\"rans\": true, \"budget_bytes\": 5000}}", false, &s);
    assert_true(s.rans && s.budget_bytes == 5000);
    kw_rd_spec_free(&s);
    accept_fields("", false, &s);
    assert_false(s.rans);
    kw_rd_spec_free(&s);
    server_config.def_rans = 1;
    accept_fields("", false, &s);
    assert_true(s.rans);
    kw_rd_spec_free(&s);
    accept_fields("\"kvwire\": {\"policy\": {\"rans\": false}}", false, &s);
    assert_false(s.rans);
    kw_rd_spec_free(&s);
    server_config.def_rans = 0;
    refuse_fields("\"kvwire\": {\"policy\": {\"rans\": 1}}", false, "kvwire.policy.rans: a boolean");
    refuse_fields("\"kvwire\": {\"policy\": {\"rans\": \"true\"}}", false, "kvwire.policy.rans: a boolean");
    refuse_fields("\"kvwire\": {\"policy\": {\"rans\": null}}", false, "kvwire.policy.rans: a boolean");
    refuse_fields("\"kvwire\": {\"policy\": {\"value_codec\": \"int2-asym\", \"value_granularity\": \"channel3\"}}",
                  false, "value_codec");
    refuse_fields("\"kvwire\": {\"policy\": {\"codec\": \"int4\", \"granularity\": \"group2\"}}", false,
                  "kvwire.policy");
}

static void test_layers_and_schedule(void **state) {
    (void)state;
    kw_buf b = {0};
    assert_int_equal(kw_buf_printf(&b, "\"kvwire\": {\"policy\": {\"layers\": ["), 0);
    for (int i = 0; i < 1024; ++i)
        assert_int_equal(kw_buf_printf(&b, i ? ",%d" : "%d", i), 0);
    assert_int_equal(kw_buf_printf(&b, "]}}"), 0);
    kw_rd_spec s;
    accept_fields((const char *)b.data, false, &s);
    assert_int_equal(s.n_layers, 1024);
    kw_rd_spec_free(&s);
    refuse_fields("\"kvwire\": {\"policy\": {\"layers\": [1024]}}", false, "layers");
    refuse_fields("\"kvwire\": {\"policy\": {\"layers\": [2, 2]}}", false, "layers");
    refuse_fields("\"kvwire\": {\"policy\": {\"layers\": []}}", false, "layers");
    refuse_fields("\"kvwire\": {\"mode\": \"kv_direct\", \"policy\": {\"layers\": [0]}}", false, "layers");

    for (int n = KW_RD_MAX_SCHEDULE; n <= KW_RD_MAX_SCHEDULE + 1; ++n) {
        b.len = 0;
        assert_int_equal(kw_buf_printf(&b, "\"kvwire\": {\"policy\": {\"schedule\": ["), 0);
        for (int i = 0; i < n; ++i)
            assert_int_equal(kw_buf_printf(&b, "%s{\"layers\": [0, 1023], \"codec\": \"int8\"}", i ? "," : ""), 0);
        assert_int_equal(kw_buf_printf(&b, "]}}"), 0);
        if (n == KW_RD_MAX_SCHEDULE) {
            accept_fields((const char *)b.data, false, &s);
            assert_int_equal(s.n_schedule, KW_RD_MAX_SCHEDULE);
            assert_int_equal(s.schedule[n - 1].last, 1023);
            kw_rd_spec_free(&s);
        } else {
            refuse_fields((const char *)b.data, false, "schedule");
        }
    }
    kw_buf_free(&b);
    refuse_fields("\"kvwire\": {\"policy\": {\"schedule\": [{\"layers\": [0, 1024]}]}}", false, "schedule");
    refuse_fields("\"kvwire\": {\"policy\": {\"schedule\": [{\"layers\": [3, 2]}]}}", false, "schedule");
}

static void test_relay(void **state) {
    (void)state;
    kw_rd_spec s;
    accept_fields(
        "\"kvwire\": {\"mode\": \"text_relay\", \"relay\": {\"max_tokens\": 1048576, \"max_bytes\": 1048576}}", true,
        &s);
    assert_int_equal(s.relay_max_tokens, 1 << 20);
    assert_int_equal(s.relay_max_bytes, 1 << 20);
    kw_rd_spec_free(&s);
    accept_fields("\"kvwire\": {\"mode\": \"text_relay\", \"relay\": {\"max_tokens\": 1, \"max_bytes\": 0}}", true, &s);
    assert_int_equal(s.relay_max_bytes, 0);
    kw_rd_spec_free(&s);
    refuse_fields("\"kvwire\": {\"relay\": {\"max_tokens\": 0}}", true, "relay.max_tokens");
    refuse_fields("\"kvwire\": {\"relay\": {\"max_tokens\": 1048577}}", true, "relay.max_tokens");
    refuse_fields("\"kvwire\": {\"relay\": {\"max_bytes\": 1048577}}", true, "relay.max_bytes");
    refuse_fields("\"kvwire\": {\"relay\": {\"max_bytes\": -1}}", true, "relay.max_bytes");
    refuse_fields("\"kvwire\": {\"relay\": {\"question\": \"\"}}", true, "relay.question");
    refuse_fields("\"kvwire\": {\"relay\": {\"style\": \"summary\"}}", true, "relay.style");
    accept_fields("\"kvwire\": {\"mode\": \"text_relay\", \"relay\": {\"style\": \"extractive\"}}", true, &s);
    assert_int_equal(s.relay_style, KW_RELAY_EXTRACTIVE);
    kw_rd_spec_free(&s);
}

/* kvwire.refine (two-round refinement): threshold in [0, 1e6], proportion in (the policy's proportion, 1]. */
static void test_refine(void **state) {
    (void)state;
    kw_rd_spec s;
#define KW_T_REFINE(mode, policy, refine)                                                                              \
    "\"kvwire\": {\"mode\": \"" mode "\", \"policy\": {" policy "}, \"refine\": {" refine "}}"
    accept_fields(KW_T_REFINE("c2c", "\"selection\": \"front\", \"proportion\": 0.001",
                              "\"metric\": \"entropy\", \"threshold\": 1000000, \"proportion\": 1"),
                  false, &s);
    assert_true(s.refine);
    assert_int_equal(s.refine_metric, KW_REFINE_ENTROPY);
    assert_true(s.refine_threshold == 1e6 && s.refine_proportion == 1);
    kw_rd_spec_free(&s);
    accept_fields(KW_T_REFINE("kv_direct", "\"selection\": \"random\", \"proportion\": 0.5",
                              "\"threshold\": 0, \"proportion\": 0.5000001"),
                  true, &s);
    assert_int_equal(s.refine_metric, KW_REFINE_MARGIN); /* the default */
    assert_true(s.refine_threshold == 0);
    kw_rd_spec_free(&s);
    const char *const P = "\"selection\": \"vnorm_topk\", \"proportion\": 0.25";
    char f[512];
    const char *const refused[][2] = {
        {"\"threshold\": 1000000.1, \"proportion\": 1", "refine.threshold"},
        {"\"threshold\": -0.001, \"proportion\": 1", "refine.threshold"},
        {"\"threshold\": 1, \"proportion\": 1.0001", "refine.proportion"},
        {"\"threshold\": 1, \"proportion\": 0.25", "refine.proportion"}, /* not above round one's */
        {"\"threshold\": 1, \"proportion\": 0.1", "refine.proportion"},
        {"\"threshold\": 1, \"proportion\": 1, \"metric\": \"ratio\"", "refine.metric"},
        {"\"threshold\": 1, \"proportion\": 1, \"budget_bytes\": 100", "kvwire.refine"},
        {"\"proportion\": 1", "refine.threshold"},
        {"\"threshold\": 1", "refine.proportion"},
        {"\"threshold\": \"1\", \"proportion\": 1", "refine.threshold"},
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; ++i) {
        snprintf(f, sizeof f, "\"kvwire\": {\"mode\": \"c2c\", \"policy\": {%s}, \"refine\": {%s}}", P, refused[i][0]);
        refuse_fields(f, false, refused[i][1]);
    }
    refuse_fields(KW_T_REFINE("receiver_only", "\"selection\": \"front\", \"proportion\": 0.5",
                              "\"threshold\": 1, \"proportion\": 1"),
                  false, "kvwire.refine");
    refuse_fields(KW_T_REFINE("c2c", "\"selection\": \"full\"", "\"threshold\": 1, \"proportion\": 1"), false,
                  "kvwire.refine");
    refuse_fields(KW_T_REFINE("c2c", "\"selection\": \"delta_proj_vnorm_topk\", \"proportion\": 0.5",
                              "\"threshold\": 1, \"proportion\": 1"),
                  false, "receiver-aware");
    refuse_fields(KW_T_REFINE("c2c", "\"selection\": \"front\", \"proportion\": 0.5, \"budget_bytes\": 100000",
                              "\"threshold\": 1, \"proportion\": 1"),
                  false, "kvwire.refine");
    refuse_fields(KW_T_REFINE("c2c", "\"selection\": \"front\", \"proportion\": 0.5, \"cache_proportion\": 0.5",
                              "\"threshold\": 1, \"proportion\": 1"),
                  false, "kvwire.refine");
    refuse_fields("\"kvwire\": {\"refine\": 1}", false, "kvwire.refine");
#undef KW_T_REFINE
}

static void test_forcing(void **state) {
    (void)state;
    kw_rd_spec s;
    /* a row of score_ids at its 20-id limit, and one beyond */
    char *row = id_array(KW_RD_MAX_TOP, 5), *long_row = id_array(KW_RD_MAX_TOP + 1, 5);
    char *fields = NULL;
    assert_true(asprintf(&fields, "\"kvwire\": {\"force_tokens\": [7, 8], \"score_ids\": [%s, []]}", row) > 0);
    accept_fields(fields, false, &s);
    assert_int_equal(s.n_force, 2);
    assert_int_equal(s.max_tokens, 2);
    assert_int_equal(s.n_score[0], KW_RD_MAX_TOP);
    assert_int_equal(s.n_score[1], 0);
    kw_rd_spec_free(&s);
    free(fields);
    assert_true(asprintf(&fields, "\"kvwire\": {\"force_tokens\": [7], \"score_ids\": [%s]}", long_row) > 0);
    refuse_fields(fields, false, "score_ids");
    free(fields), free(row), free(long_row);
    /* force_tokens at 2^20 entries, and one more */
    char *ids = id_array((int64_t)1 << 20, 1);
    assert_true(asprintf(&fields, "\"kvwire\": {\"force_tokens\": %s}", ids) > 0);
    accept_fields(fields, false, &s);
    assert_int_equal(s.n_force, 1 << 20);
    kw_rd_spec_free(&s);
    free(fields), free(ids);
    ids = id_array(((int64_t)1 << 20) + 1, 1);
    assert_true(asprintf(&fields, "\"kvwire\": {\"force_tokens\": %s}", ids) > 0);
    refuse_fields(fields, false, "force_tokens");
    free(fields), free(ids);
    refuse_fields("\"kvwire\": {\"force_tokens\": [1000]}", false, "force_tokens");
    refuse_fields("\"kvwire\": {\"force_tokens\": []}", false, "force_tokens");
    refuse_fields("\"max_tokens\": 3, \"kvwire\": {\"force_tokens\": [1, 2]}", false, "force_tokens");
    refuse_fields("\"kvwire\": {\"force_tokens\": [1], \"score_ids\": [[1], [2]]}", false, "score_ids");
    refuse_fields("\"kvwire\": {\"score_ids\": [[1]]}", false, "score_ids");
}

static void test_unknown_and_types(void **state) {
    (void)state;
    refuse_fields("\"kvwire\": {\"policy\": {\"budget\": 5}}", false, "budget");
    refuse_fields("\"kvwire\": {\"colour\": 1}", false, "colour");
    refuse_fields("\"colour\": 1", false, "colour");
    refuse_fields("\"stream\": 1", false, "stream");
    refuse_fields("\"kvwire\": {\"mode\": \"telepathy\"}", false, "kvwire.mode");
}

static int setup(void **state) {
    (void)state;
    return kw_cfg_defaults(&kw_receiverd_config_table, &server_config);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_max_tokens),
        cmocka_unit_test(test_context),
        cmocka_unit_test(test_prompt_ids),
        cmocka_unit_test(test_messages),
        cmocka_unit_test(test_stop_and_logprobs),
        cmocka_unit_test(test_policy),
        cmocka_unit_test(test_layers_and_schedule),
        cmocka_unit_test(test_relay),
        cmocka_unit_test(test_forcing),
        cmocka_unit_test(test_refine),
        cmocka_unit_test(test_unknown_and_types),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
