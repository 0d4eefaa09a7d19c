/* test_daemons_eos.c: the request field ignore_eos (HTTP_API.md §2). The tiny model never picks its real EOS ids, so
 * the test makes one it does: a copy of tiny-qwen3 (the same files, linked) whose generation_config.json names as EOS
 * a token the model's greedy run emits at step k. A receiverd on that copy then stops after k + 1 tokens
 * (finish_reason "stop") without ignore_eos, and with it decodes every max_tokens token of the plain model's run
 * (finish_reason "length"), in receiver_only and in kv_direct; a non-boolean ignore_eos is a 400. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kwd_harness.h"

#define N_TOKENS 8

/* The completion ids (at most N_TOKENS) and finish_reason of a completion on port. */
static int complete(uint16_t port, const char *mode, const char *ignore_eos, int32_t *ids, char *finish, size_t cap) {
    char body[512];
    snprintf(body, sizeof body,
             "{\"prompt\":\"The quick brown fox\",\"max_tokens\":%d%s,\"kvwire\":{\"mode\":\"%s\",\"policy\":{"
             "\"selection\":\"full\",\"codec\":\"int8\"}}}",
             N_TOKENS, ignore_eos, mode);
    if (strcmp(mode, "receiver_only") == 0) /* receiver_only takes no policy */
        snprintf(body, sizeof body,
                 "{\"prompt\":\"The quick brown fox\",\"max_tokens\":%d%s,\"kvwire\":{\"mode\":\"receiver_only\"}}",
                 N_TOKENS, ignore_eos);
    kwd_response r;
    kwd_http(port, "/v1/completions", body, &r);
    if (r.status != 200) fail_msg("%s: HTTP %ld: %s", body, r.status, r.body);
    const int n = kwd_json_ids(kwd_json_get(r.json, "kvwire.completion_ids"), ids, N_TOKENS);
    const cJSON *fr = kwd_json_get(cJSON_GetArrayItem(kwd_json_get(r.json, "choices"), 0), "finish_reason");
    assert_true(cJSON_IsString(fr));
    snprintf(finish, cap, "%s", fr->valuestring);
    kwd_response_free(&r);
    return n;
}

/* snprintf that fails the test when the path does not fit. */
#define PATH(buf, ...) assert_true(snprintf((buf), sizeof(buf), __VA_ARGS__) < (int)sizeof(buf))

/* A folder of links to tiny-qwen3's files but generation_config.json, which names eos as the only EOS id. */
static void model_with_eos(const char *dir, int32_t eos) {
    char src[1024], dst[1024];
    PATH(src, "%s/tiny-qwen3", kwd_models_dir());
    assert_int_equal(mkdir(dir, 0755), 0);
    DIR *d = opendir(src);
    assert_non_null(d);
    const struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' || strcmp(e->d_name, "generation_config.json") == 0) continue;
        PATH(src, "%s/tiny-qwen3/%s", kwd_models_dir(), e->d_name);
        PATH(dst, "%s/%s", dir, e->d_name);
        assert_int_equal(symlink(src, dst), 0);
    }
    closedir(d);
    PATH(dst, "%s/generation_config.json", dir);
    FILE *f = fopen(dst, "w");
    assert_non_null(f);
    fprintf(f, "{\"eos_token_id\": [%d], \"do_sample\": false}\n", (int)eos);
    fclose(f);
}

static void test_ignore_eos(void **state) {
    (void)state;
    int32_t plain[N_TOKENS], got[N_TOKENS];
    char finish[32];
    assert_int_equal(complete(kwd_receiver.port, "receiver_only", "", plain, finish, sizeof finish), N_TOKENS);
    assert_string_equal(finish, "length");
    int k = 1; /* the first step whose token is new: EOS there stops the run after k + 1 tokens */
    while (k < N_TOKENS - 1) {
        bool seen = false;
        for (int i = 0; i < k; ++i)
            seen |= plain[i] == plain[k];
        if (!seen) break;
        ++k;
    }
    if (k >= N_TOKENS - 1) skip(); /* a run of one repeated token: no step to stop at */
    char dir[1024], path[1100];
    PATH(dir, "%s/eos-model", kwd_scratch_dir());
    model_with_eos(dir, plain[k]);
    PATH(path, "--model.path=%s", dir);
    const char *const extra[] = {path, NULL};
    kwd_proc r;
    kwd_start_receiver(kwd_sharer.port, extra, &r);
    if (!kwd_wait_healthy(r.port, kwd_ms(30000))) fail_msg("the EOS receiverd never connected to sharerd");
    static const char *const modes[] = {"receiver_only", "kv_direct"};
    int32_t direct[N_TOKENS];
    assert_int_equal(complete(kwd_receiver.port, "kv_direct", "", direct, finish, sizeof finish), N_TOKENS);
    for (int m = 0; m < 2; ++m) {
        const int32_t *want = m ? direct : plain;
        int n = complete(r.port, modes[m], "", got, finish, sizeof finish);
        if (n != k + 1 || strcmp(finish, "stop") != 0) /* the EOS id is honoured without ignore_eos */
            fail_msg("%s: %d tokens, finish %s; %d and stop expected", modes[m], n, finish, k + 1);
        assert_memory_equal(got, want, (size_t)n * sizeof *got);
        n = complete(r.port, modes[m], ",\"ignore_eos\":false", got, finish, sizeof finish);
        assert_int_equal(n, k + 1);
        n = complete(r.port, modes[m], ",\"ignore_eos\":true", got, finish, sizeof finish);
        if (n != N_TOKENS || strcmp(finish, "length") != 0)
            fail_msg("%s, ignore_eos: %d tokens, finish %s; %d and length expected", modes[m], n, finish, N_TOKENS);
        assert_memory_equal(got, want, (size_t)N_TOKENS * sizeof *got);
    }
    kwd_response bad;
    kwd_http(r.port, "/v1/completions", "{\"prompt\":\"Hi\",\"max_tokens\":1,\"ignore_eos\":1}", &bad);
    if (bad.status != 400 || !strstr(bad.body, "ignore_eos")) fail_msg("HTTP %ld: %s", bad.status, bad.body);
    kwd_response_free(&bad);
    kwd_stop(&r);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_ignore_eos)};
    return cmocka_run_group_tests(tests, kwd_pair_setup, kwd_pair_teardown);
}
