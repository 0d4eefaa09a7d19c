/* test_e2e.c: kvload end to end against the stub receiverd over loopback HTTP: every summary figure checked against
 * the records it came from (accuracy = correct / graded, byte totals = sums, latency means, counts), a reference run
 * and a judged run with teacher forcing (receiverd's top-1 count = the client's, a policy judged against itself
 * agrees fully with KL 0), the open loop's send times equal to the seeded schedule, errors counted by kind, an
 * interrupted run marked incomplete, and a sweep stopped after two points resumed without redoing them (and redoing a
 * point left half-written). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/kw_file.h"
#include "common/kw_json.h"
#include "common/kw_status.h"
#include "loadgen/kw_load_io.h"
#include "loadgen/kw_load_rng.h"
#include "loadgen/kw_load_run.h"
#include "loadgen/kw_load_sweep.h"
#include "loadgen/kw_load_stub.h"
#include "run_check.h"
#include "tests/kw_test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define SAMPLES KW_SOURCE_DIR "/loadgen/samples"

/* A stub on its own thread and its URL. */
typedef struct stub_thread {
    kw_load_stub_thread *t;
    char url[64];
} stub_thread;

static void stub_thread_start(stub_thread *s, const kw_load_stub_config *cfg) {
    kw_load_stub_config def;
    if (!cfg) {
        kw_load_stub_config_default(&def);
        cfg = &def;
    }
    assert_int_equal(kw_load_stub_spawn(cfg, &s->t), 0);
    snprintf(s->url, sizeof(s->url), "http://127.0.0.1:%u", (unsigned)kw_load_stub_thread_port(s->t));
}

/* A stub with failure injection or without token ids in logprobs. */
static void stub_thread_custom(stub_thread *s, uint32_t fail_every, int fail_status, int refuse_token_ids) {
    kw_load_stub_config cfg;
    kw_load_stub_config_default(&cfg);
    cfg.fail_every = fail_every;
    cfg.fail_status = fail_status;
    cfg.refuse_token_ids = refuse_token_ids;
    stub_thread_start(s, &cfg);
}

static void stub_thread_stop(stub_thread *s) {
    kw_load_stub_thread_stop(s->t);
}

typedef struct fixture {
    stub_thread stub;
    char dir[64];
} fixture;

static int setup(void **state) {
    fixture *f = calloc(1, sizeof(*f));
    stub_thread_start(&f->stub, NULL);
    snprintf(f->dir, sizeof(f->dir), "/tmp/kw_e2e_XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    stub_thread_stop(&f->stub);
    kw_test_remove_tree(f->dir);
    free(f);
    return 0;
}

static void config(kw_load_config *c, const fixture *f, const char *url, const char *dataset, const char *path,
                   const char *out) {
    kw_load_config_default(c);
    char buf[256];
    assert_int_equal(kw_load_config_set(c, "url", url ? url : f->stub.url), 0);
    assert_int_equal(kw_load_config_set(c, "dataset_name", dataset), 0);
    snprintf(buf, sizeof(buf), "%s/%s", SAMPLES, path);
    assert_int_equal(kw_load_config_set(c, "dataset_path", buf), 0);
    snprintf(buf, sizeof(buf), "%s/%s", f->dir, out);
    assert_int_equal(kw_load_config_set(c, "out", buf), 0);
    assert_int_equal(kw_load_config_set(c, "progress", "never"), 0);
    assert_int_equal(kw_load_config_set(c, "max_tokens", "16"), 0);
    assert_int_equal(kw_load_config_set(c, "bootstrap_resamples", "500"), 0);
}

static void run_ok(const kw_load_config *c) {
    const int rc = kw_load_run(c, NULL, NULL);
    if (rc != 0) fail_msg("run failed: %s (%s)", kw_error_detail(), kw_status_name(rc));
}

static cJSON *load_json(const char *dir, const char *name) {
    char *p = kw_path_join(dir, name);
    cJSON *v = NULL;
    assert_int_equal(kw_json_load_file(p, (size_t)64 << 20, &v), 0);
    free(p);
    return v;
}

static double num(const cJSON *o, const char *path) {
    char buf[128];
    snprintf(buf, sizeof(buf), "%s", path);
    const cJSON *cur = o;
    char *save = NULL;
    for (char *seg = strtok_r(buf, ".", &save); seg; seg = strtok_r(NULL, ".", &save))
        cur = cJSON_GetObjectItemCaseSensitive(cur, seg);
    if (!cJSON_IsNumber(cur)) fail_msg("%s is not a number", path);
    return cur->valuedouble;
}

/* What the records say, added up independently of kw_load_summary.c (run_check.h). */
typedef run_tally tally;

static tally tally_records(const char *dir, const double *want_sched) {
    tally t;
    memset(&t, 0, sizeof(t));
    t.want_sched = want_sched;
    if (run_tally_records(dir, &t) < 0) fail_msg("%s: %s", dir, t.why);
    return t;
}

static void check_summary(const char *dir, const tally *t) {
    char why[256];
    if (run_check_summary(dir, t, why, sizeof(why)) < 0) fail_msg("%s: %s", dir, why);
    cJSON *s = load_json(dir, "summary.json");
    assert_true(num(s, "request_throughput") > 0);
    cJSON_Delete(s);
}

static void test_reference_and_judged(void **state) {
    fixture *f = *state;
    kw_load_config c;
    /* The reference: full bf16 transfer, top-5 log-probabilities recorded, streamed. */
    config(&c, f, NULL, "ai2-arc", "ai2_arc.jsonl", "ref");
    assert_int_equal(kw_load_config_set(&c, "record_logprobs", "5"), 0);
    assert_int_equal(kw_load_config_set(&c, "max_concurrency", "3"), 0);
    assert_int_equal(kw_load_config_set(&c, "num_warmups", "2"), 0);
    assert_int_equal(kw_load_config_set(&c, "kvwire", "{\"mode\":\"c2c\",\"policy\":{\"codec\":\"bf16\"}}"), 0);
    run_ok(&c);
    char ref[128];
    snprintf(ref, sizeof(ref), "%s/ref", f->dir);
    tally t = tally_records(ref, NULL);
    assert_int_equal(t.n, 10); /* 12 rows, 2 skipped by the reference's rules */
    assert_int_equal(t.failed, 0);
    assert_int_equal(t.with_ttft, 10);
    check_summary(ref, &t);
    cJSON *run = load_json(ref, "run.json");
    assert_int_equal((int)num(run, "dataset.skipped"), 2);
    assert_int_equal((int)num(run, "phases.warmup.sent"), 2);
    assert_true(cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(run, "server")));
    cJSON_Delete(run);
    cJSON *s = load_json(ref, "summary.json");
    assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(s, "quality")));
    assert_string_equal(
        cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(s, "models"), "receiver"), "name")
            ->valuestring,
        "stub-receiver");
    cJSON_Delete(s);
    kw_load_config_free(&c);

    /* The same policy judged against it: full agreement, KL 0 (the stub is deterministic). */
    config(&c, f, NULL, "ai2-arc", "ai2_arc.jsonl", "self");
    assert_int_equal(kw_load_config_set(&c, "kvwire", "{\"mode\":\"c2c\",\"policy\":{\"codec\":\"bf16\"}}"), 0);
    assert_int_equal(kw_load_config_set(&c, "reference", ref), 0);
    assert_int_equal(kw_load_config_set(&c, "endpoint", "completions"), 0); /* other endpoint, same stub model */
    run_ok(&c);
    char self[128];
    snprintf(self, sizeof(self), "%s/self", f->dir);
    s = load_json(self, "summary.json");
    assert_true(fabs(num(s, "quality.answer_agreement.value") - 1) < 1e-12);
    assert_true(fabs(num(s, "quality.token_agreement.value") - 1) < 1e-12);
    assert_true(fabs(num(s, "quality.tf_top1_agreement.value") - 1) < 1e-12);
    assert_true(fabs(num(s, "quality.mean_kl.value")) < 1e-9);
    assert_int_equal((int)num(s, "quality.forced_items"), 10);
    assert_int_equal((int)num(s, "quality.tf_client_server_mismatches"), 0);
    cJSON_Delete(s);
    kw_load_config_free(&c);

    /* A lossy policy: less than full agreement, KL > 0, and the pooled rate is the forced records' sums. */
    config(&c, f, NULL, "ai2-arc", "ai2_arc.jsonl", "lossy");
    assert_int_equal(kw_load_config_set(&c, "kvwire", "{\"mode\":\"receiver_only\"}"), 0);
    assert_int_equal(kw_load_config_set(&c, "reference", ref), 0);
    assert_int_equal(kw_load_config_set(&c, "max_concurrency", "4"), 0);
    run_ok(&c);
    char judged[128];
    snprintf(judged, sizeof(judged), "%s/lossy", f->dir);
    t = tally_records(judged, NULL);
    check_summary(judged, &t);
    s = load_json(judged, "summary.json");
    const double tf = num(s, "quality.tf_top1_agreement.value");
    assert_true(tf < 1.0 && tf > 0.0);
    assert_true(num(s, "quality.mean_kl.value") > 0);
    assert_int_equal((int)num(s, "quality.tf_client_server_mismatches"), 0);
    /* Pooled: sum of top1_agree over sum of positions in forced.jsonl. */
    char *fp = kw_path_join(judged, "forced.jsonl");
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(kw_file_read_all(fp, (size_t)64 << 20, &text, &len), 0);
    double agree = 0, pos = 0;
    size_t lines = 0;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        cJSON *row = NULL;
        assert_int_equal(kw_json_parse(line, strlen(line), &row), 0);
        agree += num(row, "top1_agree");
        pos += num(row, "positions");
        assert_int_equal((int)num(row, "top1_agree"), (int)num(row, "top1_agree_client"));
        cJSON_Delete(row);
        lines++;
    }
    assert_int_equal(lines, 10);
    assert_true(fabs(tf - agree / pos) < 1e-12);
    free(text);
    free(fp);
    assert_true(num(s, "bytes.blob.total") == 0); /* receiver_only sends no cache */
    cJSON_Delete(s);
    kw_load_config_free(&c);
}

/* A server without token ids in logprobs: the reference still records completion_ids, teacher forcing still gets
 * receiverd's top-1 count, and KL is reported unavailable (null), never guessed. */
static void test_without_token_ids(void **state) {
    fixture *f = *state;
    stub_thread plain;
    stub_thread_custom(&plain, 0, 503, 1);
    kw_load_config c;
    config(&c, f, plain.url, "openbookqa", "openbookqa.jsonl", "ref_noids");
    assert_int_equal(kw_load_config_set(&c, "record_logprobs", "5"), 0);
    run_ok(&c);
    char ref[128];
    snprintf(ref, sizeof(ref), "%s/ref_noids", f->dir);
    cJSON *run = load_json(ref, "run.json");
    const cJSON *caps =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(run, "server"), "capabilities");
    assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(caps, "token_ids_in_logprobs")));
    assert_int_equal((int)num(caps, "probe_status"), 400);
    cJSON_Delete(run);
    kw_load_config_free(&c);
    config(&c, f, plain.url, "openbookqa", "openbookqa.jsonl", "judged_noids");
    assert_int_equal(kw_load_config_set(&c, "kvwire", "{\"mode\":\"receiver_only\"}"), 0);
    assert_int_equal(kw_load_config_set(&c, "reference", ref), 0);
    run_ok(&c);
    char dir[128];
    snprintf(dir, sizeof(dir), "%s/judged_noids", f->dir);
    cJSON *s = load_json(dir, "summary.json");
    const double tf = num(s, "quality.tf_top1_agreement.value");
    assert_true(tf > 0 && tf < 1);
    assert_true(num(s, "quality.token_agreement.value") < 1);
    assert_true(
        cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(s, "quality"), "mean_kl")));
    cJSON_Delete(s);
    kw_load_config_free(&c);
    stub_thread_stop(&plain);
}

static void test_open_loop_schedule(void **state) {
    fixture *f = *state;
    kw_load_config c;
    config(&c, f, NULL, "prompts", "prompts.jsonl", "open");
    assert_int_equal(kw_load_config_set(&c, "request_rate", "400"), 0);
    assert_int_equal(kw_load_config_set(&c, "burstiness", "0.5"), 0);
    assert_int_equal(kw_load_config_set(&c, "num_prompts", "40"), 0);
    assert_int_equal(kw_load_config_set(&c, "max_concurrency", "0"), 0);
    assert_int_equal(kw_load_config_set(&c, "seed", "3"), 0);
    assert_int_equal(kw_load_config_set(&c, "stream", "false"), 0);
    run_ok(&c);
    double want[40];
    assert_int_equal(kw_load_arrivals_make(40, 400, 0.5, kw_load_rng_derive(3, "arrivals"), want), 0);
    for (int i = 0; i < 40; ++i)
        want[i] *= 1000.0;
    char dir[128];
    snprintf(dir, sizeof(dir), "%s/open", f->dir);
    tally t = tally_records(dir, want);
    assert_int_equal(t.n, 40);        /* 8 prompts, cycled */
    assert_int_equal(t.with_ttft, 0); /* not streamed: no TTFT */
    check_summary(dir, &t);
    cJSON *s = load_json(dir, "summary.json");
    assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(s, "accuracy")));
    cJSON_Delete(s);
    kw_load_config_free(&c);
}

static void test_errors_by_kind(void **state) {
    fixture *f = *state;
    stub_thread failing;
    stub_thread_custom(&failing, 4, 429, 0);
    kw_load_config c;
    config(&c, f, failing.url, "openbookqa", "openbookqa.jsonl", "errors");
    assert_int_equal(kw_load_config_set(&c, "max_concurrency", "2"), 0);
    run_ok(&c);
    char dir[128];
    snprintf(dir, sizeof(dir), "%s/errors", f->dir);
    tally t = tally_records(dir, NULL);
    assert_int_equal(t.n, 12);
    assert_int_equal(t.failed, 3); /* requests 4, 8 and 12 */
    assert_string_equal(t.first_error, "http_429:KW_E_SHARE_BUSY");
    check_summary(dir, &t);
    cJSON *s = load_json(dir, "summary.json");
    assert_int_equal((int)num(s, "errors.http_429:KW_E_SHARE_BUSY"), 3);
    assert_int_equal((int)num(s, "accuracy.n"), 9);
    cJSON_Delete(s);
    kw_load_config_free(&c);
    stub_thread_stop(&failing);
    /* Nobody listening: the run refuses to start. */
    config(&c, f, "http://127.0.0.1:1", "openbookqa", "openbookqa.jsonl", "nobody");
    assert_int_equal(kw_load_run(&c, NULL, NULL), KW_E_IO);
    assert_non_null(strstr(kw_error_detail(), "cannot reach receiverd"));
    kw_load_config_free(&c);
}

static void test_interrupted_run(void **state) {
    fixture *f = *state;
    kw_load_config c;
    config(&c, f, NULL, "gsm8k", "gsm8k.jsonl", "stopped");
    kw_load_run_interrupt(); /* as a SIGINT before the first request */
    assert_int_equal(kw_load_run(&c, NULL, NULL), KW_E_CANCELLED);
    kw_load_run_clear_interrupt();
    char dir[128];
    snprintf(dir, sizeof(dir), "%s/stopped", f->dir);
    cJSON *s = load_json(dir, "summary.json");
    assert_false(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(s, "complete")));
    cJSON_Delete(s);
    kw_load_config_free(&c);
    /* The same run completes; GSM8K is graded (approximately) on numbers. */
    config(&c, f, NULL, "gsm8k", "gsm8k.jsonl", "stopped");
    run_ok(&c);
    tally t = tally_records(dir, NULL);
    assert_int_equal(t.n, 10);
    assert_int_equal(t.graded, 10);
    check_summary(dir, &t);
    kw_load_config_free(&c);
}

/* mtime (ns) and inode of a file, to tell whether it was rewritten. */
static void stamp(const char *dir, const char *name, long long out[2]) {
    char *p = kw_path_join(dir, name);
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    out[0] = (long long)st.st_mtim.tv_sec * 1000000000ll + st.st_mtim.tv_nsec;
    out[1] = (long long)st.st_ino;
    free(p);
}

static void test_sweep_resume(void **state) {
    fixture *f = *state;
    char file[128], out[128], yaml[1024];
    snprintf(file, sizeof(file), "%s/sweep.yaml", f->dir);
    snprintf(out, sizeof(out), "%s/sweep", f->dir);
    snprintf(yaml, sizeof(yaml),
             "run:\n  url: %s\n  dataset_name: openbookqa\n  dataset_path: %s/openbookqa.jsonl\n  max_tokens: 8\n"
             "  progress: never\n  bootstrap_resamples: 200\n"
             "reference: full\n"
             "points:\n  - name: full\n    kvwire: {mode: c2c}\n  - name: alone\n    kvwire: {mode: receiver_only}\n"
             "grids:\n  - name: q\n    kvwire: {mode: c2c}\n    axes:\n      policy.codec: [int8, int4]\n",
             f->stub.url, SAMPLES);
    assert_int_equal(kw_file_write_all(file, yaml, strlen(yaml)), 0);
    kw_load_sweep_options o = {.out = out, .max_points = 2};
    /* Interrupted after two points. */
    assert_int_equal(kw_load_sweep_run(file, &o, NULL, NULL), KW_E_CANCELLED);
    char full[160], alone[160], int8[160], int4[160];
    snprintf(full, sizeof(full), "%s/full", out);
    snprintf(alone, sizeof(alone), "%s/alone", out);
    snprintf(int8, sizeof(int8), "%s/q_codec-int8", out);
    snprintf(int4, sizeof(int4), "%s/q_codec-int4", out);
    long long s_full[2], s_alone[2], r_full[2];
    stamp(full, "summary.json", s_full);
    stamp(full, "records.jsonl", r_full);
    stamp(alone, "summary.json", s_alone);
    assert_false(kw_path_is_dir(int8));
    /* A point cut short: records written, no summary (as after a crash). */
    assert_int_equal(kw_load_mkdirs(int8), 0);
    char *half = kw_path_join(int8, "records.jsonl");
    assert_int_equal(kw_file_write_all(half, "{\"index\": 0, \"item_id\": \"x\", \"succ", 33), 0);
    free(half);
    /* Resumed: the finished points are kept as they are, the rest run. */
    o.max_points = 0;
    const int rc = kw_load_sweep_run(file, &o, NULL, NULL);
    if (rc != 0) fail_msg("resume failed: %s", kw_error_detail());
    long long now[2];
    stamp(full, "summary.json", now);
    assert_true(now[0] == s_full[0] && now[1] == s_full[1]);
    stamp(full, "records.jsonl", now);
    assert_true(now[0] == r_full[0] && now[1] == r_full[1]);
    stamp(alone, "summary.json", now);
    assert_true(now[0] == s_alone[0] && now[1] == s_alone[1]);
    tally t = tally_records(int8, NULL);
    assert_int_equal(t.n, 12); /* rerun from the start, the half-written record gone */
    check_summary(int8, &t);
    t = tally_records(int4, NULL);
    check_summary(int4, &t);
    cJSON *sw = load_json(out, "sweep.json");
    const cJSON *pts = cJSON_GetObjectItemCaseSensitive(sw, "points");
    assert_int_equal(cJSON_GetArraySize(pts), 4);
    for (const cJSON *p = pts->child; p; p = p->next)
        assert_string_equal(cJSON_GetObjectItemCaseSensitive(p, "state")->valuestring, "done");
    cJSON_Delete(sw);
    /* A third pass runs nothing. */
    assert_int_equal(kw_load_sweep_run(file, &o, NULL, NULL), 0);
    stamp(int4, "summary.json", now);
    long long again[2];
    stamp(int4, "summary.json", again);
    assert_true(now[0] == again[0]);
    /* Another sweep asking other options of the same folder is refused, nothing overwritten. */
    snprintf(yaml, sizeof(yaml),
             "run: {url: %s, dataset_name: openbookqa, dataset_path: %s/openbookqa.jsonl, max_tokens: 9}\n"
             "points:\n  - name: full\n    kvwire: {mode: c2c}\n",
             f->stub.url, SAMPLES);
    assert_int_equal(kw_file_write_all(file, yaml, strlen(yaml)), 0);
    assert_int_equal(kw_load_sweep_run(file, &o, NULL, NULL), KW_E_STATE);
    stamp(full, "summary.json", now);
    assert_true(now[0] == s_full[0]);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_reference_and_judged, setup, teardown),
        cmocka_unit_test_setup_teardown(test_without_token_ids, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_loop_schedule, setup, teardown),
        cmocka_unit_test_setup_teardown(test_errors_by_kind, setup, teardown),
        cmocka_unit_test_setup_teardown(test_interrupted_run, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sweep_resume, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
