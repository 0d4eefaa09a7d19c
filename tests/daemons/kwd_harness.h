/* kwd_harness.h: what the daemon integration tests share: starting sharerd and receiverd as separate processes on
 * ephemeral loopback ports (each writes its port to a ready file once listening), stopping them with SIGTERM and
 * checking a clean exit (status 0: under the sanitizer build a leak or error makes it non-zero), HTTP requests with
 * libcurl, JSON with cJSON, `kvwire c2c` runs for the reference tokens, and the tiny models made once per build by
 * the fixture test (tests/daemons/CMakeLists.txt). Test scaffolding: failures abort the test through cmocka.
 */
#ifndef KWD_HARNESS_H
#define KWD_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <cjson/cJSON.h>

/* The folder of the tiny models (tiny-qwen3, tiny-qwen2, tiny-fuser, tiny-llama, fuser-llama), made by the
 * test_daemons_models fixture. */
const char *kwd_models_dir(void);

/* A scratch folder for this test process (created on first use, under the build tree). */
const char *kwd_scratch_dir(void);

/* Timeouts scale with KW_TEST_TIMEOUT_MULTIPLIER (sanitizer builds are slower). */
int kwd_ms(int ms);

typedef struct kwd_proc {
    pid_t pid;
    uint16_t port;
    char log[512];
} kwd_proc;

/* Starts build/<dir>/<program> with args (NULL-terminated) plus --runtime.ready_file and waits for its port.
 * Its stderr goes to a log file in the scratch folder. */
void kwd_start(const char *program, const char *const *args, kwd_proc *out);

/* sharerd serving tiny-qwen2 and tiny-qwen3 with extra args (may be NULL). port 0: ephemeral. */
void kwd_start_sharer(uint16_t port, const char *const *extra, kwd_proc *out);

/* receiverd of tiny-qwen3 with the tiny fuser for a sharer named "local" at sharer_port, plus extra args. */
void kwd_start_receiver(uint16_t sharer_port, const char *const *extra, kwd_proc *out);
/* The same with another program (a receiverd built otherwise, e.g. tests/gpu_emu/receiverd_emu). */
void kwd_start_receiver_program(const char *program, uint16_t sharer_port, const char *const *extra, kwd_proc *out);

/* The usual pair: sharerd, then receiverd connected to it (both with default args), waiting until it is healthy. */
void kwd_start_pair(kwd_proc *sharer, kwd_proc *receiver);

/* Stops the receiver, then the sharer (kwd_stop each). */
void kwd_stop_pair(kwd_proc *sharer, kwd_proc *receiver);

/* The pair most daemon tests run against, and its cmocka group fixtures: kwd_pair_setup starts it (kwd_start_pair),
 * kwd_pair_teardown stops it (kwd_stop_pair; a test whose setup starts a pair of its own in these two still uses it).
 */
extern kwd_proc kwd_sharer, kwd_receiver;
int kwd_pair_setup(void **state);
int kwd_pair_teardown(void **state);

/* SIGTERM, then waits (up to 60 s scaled) and asserts a clean exit with status 0. */
void kwd_stop(kwd_proc *p);

/* Kills at once (SIGKILL) and reaps. */
void kwd_kill(kwd_proc *p);

/* Waits until GET /health of the receiver says status ok (every sharer connected), up to ms. @return 1 if so. */
int kwd_wait_healthy(uint16_t port, int ms);

typedef struct kwd_response {
    long status;
    char *body; /* malloc'ed, NUL-terminated */
    size_t len;
    cJSON *json; /* parsed body or NULL */
    double seconds;
} kwd_response;

/* POST (body not NULL) or GET to http://127.0.0.1:port/path. */
void kwd_http(uint16_t port, const char *path, const char *body, kwd_response *out);
void kwd_response_free(kwd_response *r);

/* Runs build/tools/kvwire with args (a shell-quoted command line after "kvwire"), returns its stdout (malloc'ed). */
char *kwd_kvwire(const char *args);

/* The ids of a "key: [1,2,3]" line of kvwire's output into out (cap), count returned; -1 if absent. */
int kwd_parse_ids(const char *text, const char *key, int32_t *out, int cap);

/* The integer of a "key: N" line, or -1. */
long long kwd_parse_int(const char *text, const char *key);

/* A JSON number by path ("kvwire.bytes.blob"), asserting it exists. */
double kwd_json_num(const cJSON *root, const char *path);
const cJSON *kwd_json_get(const cJSON *root, const char *path);

/* The ids of a JSON array into out, count returned. */
int kwd_json_ids(const cJSON *arr, int32_t *out, int cap);

/* Posts a short chat completion ("Hi", 2 tokens) with each of the n kvwire objects to the receiver on port and fails
 * the test unless every answer is a 400. */
void kwd_expect_400(uint16_t port, const char *const *kvwire_objects, size_t n);

/* A listening TCP socket on 127.0.0.1 (port 0: ephemeral); *port receives the port. */
int kwd_listen(uint16_t *port);

/* A TCP connection to 127.0.0.1:port (blocking), or -1. */
int kwd_connect(uint16_t port);

/* 1 if the peer closed the connection (read returns 0 or an error) within ms, 0 if it is still open. Reads and
 * discards whatever arrives meanwhile. */
int kwd_closed_within(int fd, int ms);

#endif /* KWD_HARNESS_H */
