/* test_sweep.c: YAML to JSON (core-schema scalars, duplicate keys, errors with lines), the run option table (text,
 * JSON, ranges, validation, identity), and sweep files expanded into points (grids in order with their names, the
 * reference first with log-probabilities recorded, overrides, refused files), and the "done" test of a point folder. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/kw_file.h"
#include "common/kw_status.h"
#include "loadgen/kw_load_config.h"
#include "loadgen/kw_load_io.h"
#include "loadgen/kw_load_sweep.h"
#include "loadgen/kw_load_yaml.h"
#include "tests/kw_test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static cJSON *yaml(const char *text) {
    cJSON *v = NULL;
    const int rc = kw_load_yaml_parse(text, strlen(text), &v);
    if (rc != 0) fail_msg("YAML refused: %s", kw_error_detail());
    return v;
}

static void test_yaml_scalars(void **state) {
    (void)state;
    cJSON *v = yaml("a: 1\nb: -2.5e1\nc: true\nd: ~\ne: yes\nf: '3'\ng: 0x1f\nh: .inf\ni: inf\nj: [1, x, null]\n"
                    "k: {x: {y: False}}\nl:\n  - p: 1\n  - q: 2\nm: \"true\"\nn: 1.\n");
    char *text = cJSON_PrintUnformatted(v);
    assert_string_equal(text,
                        "{\"a\":1,\"b\":-25,\"c\":true,\"d\":null,\"e\":\"yes\",\"f\":\"3\",\"g\":31,\"h\":\"inf\","
                        "\"i\":\"inf\",\"j\":[1,\"x\",null],\"k\":{\"x\":{\"y\":false}},\"l\":[{\"p\":1},{\"q\":2}],"
                        "\"m\":\"true\",\"n\":1}");
    free(text);
    cJSON_Delete(v);
    v = yaml("base: &b {codec: int4}\nuse: *b\n");
    assert_true(cJSON_IsObject(cJSON_GetObjectItem(v, "use")));
    cJSON_Delete(v);
    cJSON *bad = NULL;
    assert_int_equal(kw_load_yaml_parse("a: 1\na: 2\n", 10, &bad), KW_E_PARSE);
    assert_non_null(strstr(kw_error_detail(), "duplicate key \"a\""));
    assert_int_equal(kw_load_yaml_parse("a: [1, 2\n", 9, &bad), KW_E_PARSE);
    assert_non_null(strstr(kw_error_detail(), "line"));
    assert_int_equal(kw_load_yaml_parse("", 0, &bad), KW_E_PARSE);
    assert_int_equal(kw_load_yaml_parse("? [a]\n: 1\n", 10, &bad), KW_E_PARSE);
}

static void test_config(void **state) {
    (void)state;
    kw_load_config c;
    kw_load_config_default(&c);
    assert_true(isinf(c.request_rate));
    assert_int_equal(c.max_concurrency, 1);
    assert_int_equal(kw_load_config_set(&c, "max-concurrency", "8"), 0);
    assert_int_equal(c.max_concurrency, 8);
    assert_int_equal(kw_load_config_set(&c, "request_rate", "12.5"), 0);
    assert_true(c.request_rate == 12.5);
    assert_int_equal(kw_load_config_set(&c, "request-rate", "inf"), 0);
    assert_true(isinf(c.request_rate));
    assert_int_equal(kw_load_config_set(&c, "request_rate", "0"), KW_E_PARSE);
    assert_int_equal(kw_load_config_set(&c, "burstiness", "-1"), KW_E_PARSE);
    assert_int_equal(kw_load_config_set(&c, "max_concurrency", "8x"), KW_E_PARSE);
    assert_int_equal(kw_load_config_set(&c, "record_logprobs", "21"), KW_E_PARSE);
    assert_int_equal(kw_load_config_set(&c, "stream", "off"), 0);
    assert_false(c.stream);
    assert_int_equal(kw_load_config_set(&c, "stream", "maybe"), KW_E_PARSE);
    assert_int_equal(kw_load_config_set(&c, "endpoint", "completions"), 0);
    assert_int_equal(c.endpoint, KW_LOAD_API_COMPLETIONS);
    assert_int_equal(kw_load_config_set(&c, "endpoint", "embeddings"), KW_E_PARSE);
    assert_int_equal(kw_load_config_set(&c, "kvwire", "{\"mode\": \"c2c\"}"), 0);
    assert_non_null(c.kvwire);
    assert_int_equal(kw_load_config_set(&c, "kvwire", "[1]"), KW_E_PARSE);
    assert_int_equal(kw_load_config_set(&c, "no_such_option", "1"), KW_E_NOT_FOUND);
    assert_true(kw_load_config_is_flag("use-cot"));
    assert_false(kw_load_config_is_flag("seed"));
    /* Validation. */
    kw_load_config_set(&c, "url", "http://127.0.0.1:1");
    assert_int_equal(kw_load_config_validate(&c), KW_E_INVALID_ARG); /* no dataset_path */
    kw_load_config_set(&c, "dataset_path", "x.jsonl");
    kw_load_config_set(&c, "dataset_name", "squad");
    assert_int_equal(kw_load_config_validate(&c), KW_E_INVALID_ARG);
    kw_load_config_set(&c, "dataset_name", "gsm8k");
    assert_int_equal(kw_load_config_validate(&c), 0);
    kw_load_config_set(&c, "max_concurrency", "0");
    assert_int_equal(kw_load_config_validate(&c), KW_E_INVALID_ARG); /* closed loop without N */
    kw_load_config_set(&c, "request_rate", "5");
    assert_int_equal(kw_load_config_validate(&c), 0);
    /* Copy, JSON round trip, identity. */
    kw_load_config d;
    assert_int_equal(kw_load_config_copy(&c, &d), 0);
    cJSON *a = kw_load_config_to_json(&c, 0), *b = kw_load_config_to_json(&d, 0);
    char *ta = cJSON_PrintUnformatted(a), *tb = cJSON_PrintUnformatted(b);
    assert_string_equal(ta, tb);
    kw_load_config e;
    kw_load_config_default(&e);
    assert_int_equal(kw_load_config_apply_json(&e, a, "test"), 0);
    cJSON *ej = kw_load_config_to_json(&e, 0);
    char *te = cJSON_PrintUnformatted(ej);
    assert_string_equal(ta, te);
    cJSON *id1 = kw_load_config_to_json(&c, 1);
    kw_load_config_set(&d, "url", "http://elsewhere:9");
    kw_load_config_set(&d, "out", "/tmp/other");
    cJSON *id2 = kw_load_config_to_json(&d, 1);
    char *t1 = cJSON_PrintUnformatted(id1), *t2 = cJSON_PrintUnformatted(id2);
    assert_string_equal(t1, t2); /* url and out are not part of what is measured */
    assert_null(cJSON_GetObjectItem(id1, "url"));
    kw_load_config_set(&d, "seed", "5");
    cJSON *id3 = kw_load_config_to_json(&d, 1);
    char *t3 = cJSON_PrintUnformatted(id3);
    assert_string_not_equal(t1, t3);
    free(ta), free(tb), free(te), free(t1), free(t2), free(t3);
    cJSON_Delete(a), cJSON_Delete(b), cJSON_Delete(ej), cJSON_Delete(id1), cJSON_Delete(id2), cJSON_Delete(id3);
    kw_load_config_free(&c);
    kw_load_config_free(&d);
    kw_load_config_free(&e);
    kw_load_config_free(NULL);
}

static const char kw_sweep[] = "run:\n"
                               "  dataset_name: openbookqa\n"
                               "  dataset_path: d.jsonl\n"
                               "  max_tokens: 8\n"
                               "reference: full\n"
                               "points:\n"
                               "  - name: receiver-only\n"
                               "    kvwire: {mode: receiver_only}\n"
                               "  - name: full\n"
                               "    kvwire: {mode: c2c}\n"
                               "    run: {max_concurrency: 3}\n"
                               "grids:\n"
                               "  - name: q\n"
                               "    family: c2c quant\n"
                               "    kvwire: {mode: c2c, policy: {selection: knorm_topk}}\n"
                               "    axes:\n"
                               "      policy.codec: [int8, int4]\n"
                               "      policy.proportion: [0.25, 1]\n"
                               "  - name: cap\n"
                               "    kvwire: {mode: c2c}\n"
                               "    axes:\n"
                               "      policy.budget_bytes: [1800000, 1e20, 2.5e-7]\n";

static void test_expand(void **state) {
    (void)state;
    cJSON *doc = yaml(kw_sweep);
    const char *keys[] = {"max_tokens", "url"}, *values[] = {"16", "http://127.0.0.1:5"};
    kw_load_sweep_overrides ov = {.keys = keys, .values = values, .n = 2};
    kw_load_sweep_plan plan;
    const int rc = kw_load_sweep_expand(doc, "/tmp/sw", &ov, &plan);
    if (rc != 0) fail_msg("%s", kw_error_detail());
    assert_int_equal(plan.n, 9);
    /* numbers in names: integers in full, no exponent '+' (which would read as '-') */
    const char *names[] = {"full",
                           "receiver-only",
                           "q_codec-int8_proportion-0.25",
                           "q_codec-int8_proportion-1",
                           "q_codec-int4_proportion-0.25",
                           "q_codec-int4_proportion-1",
                           "cap_budget_bytes-1800000",
                           "cap_budget_bytes-1e20",
                           "cap_budget_bytes-2.5e-07"};
    for (size_t i = 0; i < 9; ++i)
        assert_string_equal(plan.points[i].name, names[i]);
    assert_string_equal(plan.reference, "full");
    const kw_load_config *ref = &plan.points[0].cfg;
    assert_int_equal(ref->record_logprobs, 20);
    assert_null(ref->reference);
    assert_int_equal(ref->max_concurrency, 3);
    assert_int_equal(ref->max_tokens, 16); /* the command line wins */
    assert_string_equal(ref->out, "/tmp/sw/full");
    const kw_load_config *g = &plan.points[4].cfg;
    assert_string_equal(g->reference, "/tmp/sw/full");
    assert_string_equal(g->family, "c2c quant");
    assert_string_equal(g->url, "http://127.0.0.1:5");
    assert_int_equal(g->max_concurrency, 1);
    char *kv = cJSON_PrintUnformatted(g->kvwire);
    assert_string_equal(kv, "{\"mode\":\"c2c\",\"policy\":{\"selection\":\"knorm_topk\",\"codec\":\"int4\","
                            "\"proportion\":0.25}}");
    free(kv);
    kw_load_sweep_plan_free(&plan);
    kw_load_sweep_plan_free(NULL);
    cJSON_Delete(doc);
}

static void expect_refused(const char *text, const char *needle) {
    cJSON *doc = yaml(text);
    kw_load_sweep_plan plan;
    const int rc = kw_load_sweep_expand(doc, "/tmp/sw", NULL, &plan);
    cJSON_Delete(doc);
    if (rc != KW_E_PARSE) fail_msg("accepted (%d): %s", rc, text);
    if (!strstr(kw_error_detail(), needle)) fail_msg("detail \"%s\" lacks \"%s\"", kw_error_detail(), needle);
}

static void test_expand_refused(void **state) {
    (void)state;
    const char *run = "run: {dataset_path: d.jsonl}\n";
    char buf[512];
#define R(body, needle)                                                                                                \
    do {                                                                                                               \
        snprintf(buf, sizeof(buf), "%s%s", run, body);                                                                 \
        expect_refused(buf, needle);                                                                                   \
    } while (0)
    R("points: [{name: a}, {name: a}]\n", "used twice");
    R("points: [{name: 'a b'}]\n", "point names");
    R("points: [{name: a, colour: red}]\n", "unknown key \"colour\"");
    R("points: [{name: a}]\nreference: b\n", "names no point");
    R("points: [{name: a, run: {max_concurency: 2}}]\n", "unknown option");
    R("grids: [{axes: {policy.codec: []}}]\n", "non-empty list");
    R("grids: [{axes: {mode.x: [1]}, kvwire: {mode: c2c}}]\n", "non-object");
    R("colour: red\npoints: [{name: a}]\n", "unknown key");
    R("points: []\n", "no points");
#undef R
}

static void test_point_done(void **state) {
    (void)state;
    char dir[] = "/tmp/kw_point_XXXXXX";
    assert_non_null(mkdtemp(dir));
    kw_load_config c;
    kw_load_config_default(&c);
    kw_load_config_set(&c, "dataset_path", "d.jsonl");
    assert_int_equal(kw_load_sweep_point_done(dir, &c), 0); /* no summary */
    cJSON *id = kw_load_config_to_json(&c, 1);
    char *idt = cJSON_PrintUnformatted(id);
    cJSON *s = cJSON_CreateObject();
    cJSON_AddBoolToObject(s, "complete", 0);
    cJSON_AddStringToObject(s, "config_identity", idt);
    char *path = kw_path_join(dir, "summary.json");
    assert_int_equal(kw_load_json_write(path, s), 0);
    assert_int_equal(kw_load_sweep_point_done(dir, &c), 0); /* interrupted: run again */
    cJSON_ReplaceItemInObject(s, "complete", cJSON_CreateTrue());
    assert_int_equal(kw_load_json_write(path, s), 0);
    assert_int_equal(kw_load_sweep_point_done(dir, &c), 1);
    kw_load_config_set(&c, "seed", "9");
    assert_int_equal(kw_load_sweep_point_done(dir, &c), KW_E_STATE); /* someone else's point */
    assert_int_equal(kw_file_write_all(path, "not json", 8), 0);
    assert_int_equal(kw_load_sweep_point_done(dir, &c), 0);
    free(path);
    free(idt);
    cJSON_Delete(id);
    cJSON_Delete(s);
    kw_load_config_free(&c);
    kw_test_remove_tree(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_yaml_scalars),   cmocka_unit_test(test_config),     cmocka_unit_test(test_expand),
        cmocka_unit_test(test_expand_refused), cmocka_unit_test(test_point_done),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
