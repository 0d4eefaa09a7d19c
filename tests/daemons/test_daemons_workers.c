/* test_daemons_workers.c: daemons with compute.workers 2 (two compute threads, the second on a stream context of the
 * backend with forks of the models) answer requests sent all at once exactly as daemons with one worker answer them
 * one by one: the same completion ids and text for receiver_only, c2c and kv_direct requests of several prompts. Two
 * receiverd (2 workers each) share one sharerd with 2 workers, so that sharerd too runs two shares at once (one share
 * per connection at a time). /metrics and /health report the workers and, once all answers are in, no request in
 * flight and an empty queue; with compute.threads 0 each worker gets the cores / 2 (/health cpu_threads, sharerd's
 * start-up line); every daemon exits cleanly on SIGTERM (the workers drained). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/kw_file.h"
#include "kwd_harness.h"

#define BODY(prompt, kv)                                                                                               \
    "{\"messages\":[{\"role\":\"user\",\"content\":\"" prompt "\"}],\"max_tokens\":8,\"kvwire\":" kv "}"

/* c2c and kv_direct prompts long enough (a few hundred tokens) that the sharer's prefills of two receivers overlap */
#define LONG(q)                                                                                                        \
    "Here is some background. The planets of the solar system are Mercury, Venus, Earth, Mars, Jupiter, Saturn, "      \
    "Uranus and Neptune. Mars looks red because of iron oxide on its surface. Jupiter is the largest planet and "      \
    "Saturn has bright rings. Venus is the hottest planet because of its thick atmosphere. Earth has one moon, Mars "  \
    "has two small moons called Phobos and Deimos, and Jupiter has dozens. Mercury is closest to the sun and has a "   \
    "very thin atmosphere. Uranus rotates on its side. Neptune has the strongest winds. " BACKGROUND BACKGROUND        \
        BACKGROUND q
#define BACKGROUND                                                                                                     \
    "Astronomers measure distances in astronomical units, the mean distance from the Earth to the sun. Light takes "   \
    "about eight minutes to cross one unit and more than four hours to reach Neptune. The asteroid belt lies between " \
    "Mars and Jupiter, and the Kuiper belt lies beyond Neptune, where Pluto and many other small icy bodies orbit. "

static const char *const bodies[] = {
    BODY("Which planet is known as the red planet?", "{\"mode\":\"receiver_only\"}"),
    BODY("Name a primary colour.", "{\"mode\":\"receiver_only\"}"),
    BODY(LONG("Which planet is known as the red planet?"), "{}"),
    BODY(LONG("What is two plus two?"), "{\"policy\":{\"codec\":\"int4\"}}"),
    BODY(LONG("Count from one to five."), "{\"mode\":\"kv_direct\"}"),
    BODY(LONG("Which planet is the largest?"), "{\"policy\":{\"codec\":\"int8\"}}"),
    BODY(LONG("Which planet has rings?"), "{\"mode\":\"kv_direct\",\"policy\":{\"codec\":\"int4\"}}"),
    BODY(LONG("Which planet is hottest?"), "{}"),
    BODY(LONG("Which planet has the strongest winds?"), "{\"policy\":{\"codec\":\"int4\"}}"),
    BODY(LONG("What lies beyond Neptune?"), "{\"mode\":\"kv_direct\"}"),
    BODY(LONG("How long does light take to reach Neptune?"), "{}"),
    BODY("Write a word that rhymes with cat.", "{\"mode\":\"receiver_only\"}"),
};
#define N_REQ ((int)(sizeof bodies / sizeof bodies[0]))

typedef struct answer {
    uint16_t port;
    int index;
    kwd_response r;
} answer;

static void *send_one(void *arg) {
    answer *a = arg;
    kwd_http(a->port, "/v1/chat/completions", bodies[a->index], &a->r);
    return NULL;
}

/* The ids and the text of an answer, checked to be a 200. */
static int ids_of(const answer *a, int32_t *ids, const char **text) {
    if (a->r.status != 200) fail_msg("request %d: HTTP %ld: %s", a->index, a->r.status, a->r.body);
    const cJSON *choices = kwd_json_get(a->r.json, "choices");
    const cJSON *msg = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(choices, 0), "message");
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(msg, "content");
    assert_true(cJSON_IsString(content));
    *text = content->valuestring;
    return kwd_json_ids(kwd_json_get(a->r.json, "kvwire.completion_ids"), ids, 64);
}

static void test_workers_answer_as_one(void **state) {
    (void)state;
    kwd_proc sharer, one, sharer2, two, two_b;
    kwd_start_sharer(0, NULL, &sharer);
    kwd_start_receiver(sharer.port, NULL, &one);
    const char *const extra[] = {"--compute.workers=2", NULL};
    const char *const all_cores[] = {"--compute.workers=2", "--compute.threads=0", NULL}; /* cores / 2 each */
    kwd_start_sharer(0, all_cores, &sharer2);
    kwd_start_receiver(sharer2.port, extra, &two);
    kwd_start_receiver(sharer2.port, all_cores, &two_b);
    if (!kwd_wait_healthy(one.port, kwd_ms(30000)) || !kwd_wait_healthy(two.port, kwd_ms(30000)) ||
        !kwd_wait_healthy(two_b.port, kwd_ms(30000)))
        fail_msg("receiverd never connected to sharerd");

    static answer seq[N_REQ], par[2 * N_REQ];
    for (int i = 0; i < N_REQ; ++i) { /* one worker, one request at a time */
        seq[i] = (answer){.port = one.port, .index = i};
        send_one(&seq[i]);
    }
    /* two workers, all at once, through both receivers; twice, for more overlap of the sharer's shares */
    for (int round = 0; round < 2; ++round) {
        pthread_t t[2 * N_REQ];
        for (int i = 0; i < 2 * N_REQ; ++i) {
            par[i] = (answer){.port = i < N_REQ ? two.port : two_b.port, .index = i % N_REQ};
            assert_int_equal(pthread_create(&t[i], NULL, send_one, &par[i]), 0);
        }
        for (int i = 0; i < 2 * N_REQ; ++i)
            pthread_join(t[i], NULL);
        for (int i = 0; i < 2 * N_REQ; ++i) {
            int32_t want[64], got[64];
            const char *want_text = NULL, *got_text = NULL;
            const int n_want = ids_of(&seq[i % N_REQ], want, &want_text), n_got = ids_of(&par[i], got, &got_text);
            assert_true(n_want > 0);
            if (n_want != n_got || memcmp(want, got, (size_t)n_want * sizeof *want) != 0 ||
                strcmp(want_text, got_text) != 0) {
                fprintf(stderr, "one worker:\n%s\ntwo workers:\n%s\n", seq[i % N_REQ].r.body, par[i].r.body);
                fail_msg("request %d: two workers answered otherwise than one", i);
            }
        }
        for (int i = 0; i < 2 * N_REQ; ++i)
            kwd_response_free(&par[i].r);
    }
    for (int i = 0; i < N_REQ; ++i)
        kwd_response_free(&seq[i].r);

    kwd_response m;
    kwd_http(two.port, "/metrics", NULL, &m);
    assert_int_equal(m.status, 200);
    assert_non_null(strstr(m.body, "\nkvwire_compute_workers 2\n"));
    assert_non_null(strstr(m.body, "\nkvwire_compute_in_flight 0\n"));
    assert_non_null(strstr(m.body, "\nkvwire_queue_depth 0\n"));
    kwd_response_free(&m);
    kwd_http(two.port, "/health", NULL, &m);
    assert_int_equal((int)kwd_json_num(m.json, "workers"), 2);
    assert_int_equal((int)kwd_json_num(m.json, "in_flight"), 0);
    kwd_response_free(&m);
    kwd_http(one.port, "/health", NULL, &m);
    assert_int_equal((int)kwd_json_num(m.json, "workers"), 1);
    assert_int_equal((int)kwd_json_num(m.json, "cpu_threads"), 1); /* compute.threads 1 */
    kwd_response_free(&m);
    kwd_http(two_b.port, "/health", NULL, &m);
    const long cores = sysconf(_SC_NPROCESSORS_ONLN);
    const int per_worker = cores / 2 > 1 ? (int)(cores / 2) : 1;
    assert_int_equal((int)kwd_json_num(m.json, "cpu_threads"), per_worker);
    kwd_response_free(&m);
    /* sharerd has no HTTP port: its start-up line says the same */
    char *log = NULL;
    size_t log_len = 0;
    assert_int_equal(kw_file_read_all(sharer2.log, 1 << 24, &log, &log_len), 0);
    char want[96];
    snprintf(want, sizeof want, "2 compute thread(s) of %d CPU thread(s) each", per_worker);
    if (!strstr(log, want)) fail_msg("sharerd's log has no \"%s\"", want);
    free(log);
    kwd_stop(&two_b);
    kwd_stop(&two);
    kwd_stop(&sharer2);
    kwd_stop(&one);
    kwd_stop(&sharer);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_workers_answer_as_one)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
