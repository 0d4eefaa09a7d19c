/* kwd_harness.c: the daemon integration tests' scaffolding (see kwd_harness.h). Test-only code. */
#include "kwd_harness.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef KWD_TIMEOUT_MULTIPLIER
#define KWD_TIMEOUT_MULTIPLIER 1
#endif

const char *kwd_models_dir(void) {
    return KW_BINARY_DIR "/tests/daemons/models";
}

const char *kwd_scratch_dir(void) {
    static char dir[512];
    if (!dir[0]) {
        snprintf(dir, sizeof dir, KW_BINARY_DIR "/tests/daemons/scratch-%d", (int)getpid());
        mkdir(KW_BINARY_DIR "/tests/daemons", 0755);
        if (mkdir(dir, 0755) != 0 && errno != EEXIST) fail_msg("cannot create %s", dir);
    }
    return dir;
}

int kwd_ms(int ms) {
    return ms * KWD_TIMEOUT_MULTIPLIER;
}

static double kwd_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// ---------------------------------------------------------------------------------------------------------------
// Processes

/* Daemons started and not yet stopped: a test that fails half-way (cmocka longjmps out of it) leaves its daemons
 * running, so they are killed when the test program exits instead of outliving it. */
static pid_t kwd_live[64];

static void kwd_live_set(pid_t old, pid_t now) {
    for (size_t i = 0; i < sizeof kwd_live / sizeof kwd_live[0]; ++i)
        if (kwd_live[i] == old) {
            kwd_live[i] = now;
            return;
        }
}

static void kwd_kill_leftovers(void) {
    for (size_t i = 0; i < sizeof kwd_live / sizeof kwd_live[0]; ++i)
        if (kwd_live[i] > 0) {
            kill(kwd_live[i], SIGKILL);
            waitpid(kwd_live[i], NULL, 0);
            kwd_live[i] = 0;
        }
}

void kwd_start(const char *program, const char *const *args, kwd_proc *out) {
    static int counter;
    if (counter == 0) atexit(kwd_kill_leftovers);
    memset(out, 0, sizeof *out);
    char ready[512], path[512], ready_arg[600];
    const int k = ++counter;
    const char *name = strrchr(program, '/') ? strrchr(program, '/') + 1 : program;
    snprintf(ready, sizeof ready, "%s/%s-%d.ready", kwd_scratch_dir(), name, k);
    snprintf(out->log, sizeof out->log, "%s/%s-%d.log", kwd_scratch_dir(), name, k);
    if (strchr(program, '/')) /* a test's own program: its path in the build tree */
        snprintf(path, sizeof path, KW_BINARY_DIR "/%s", program);
    else
        snprintf(path, sizeof path, KW_BINARY_DIR "/%s/%s", strcmp(program, "sharerd") == 0 ? "sharer" : "receiver",
                 program);
    snprintf(ready_arg, sizeof ready_arg, "--runtime.ready_file=%s", ready);
    unlink(ready);
    const char *argv[64];
    int n = 0;
    argv[n++] = path;
    for (int i = 0; args && args[i] && n < 60; ++i)
        argv[n++] = args[i];
    argv[n++] = ready_arg;
    argv[n] = NULL;
    fflush(NULL);
    const pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        const int fd = open(out->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) dup2(fd, 2), dup2(fd, 1), close(fd);
        for (int other = 3; other < 1024; ++other) /* sockets of this test (a fake sharer's port) stay here */
            close(other);
        execv(path, (char *const *)argv);
        _exit(127);
    }
    out->pid = pid;
    kwd_live_set(0, pid);
    const double deadline = kwd_now() + kwd_ms(120000) / 1000.0;
    while (kwd_now() < deadline) {
        FILE *f = fopen(ready, "r");
        unsigned port = 0;
        if (f) {
            const int got = fscanf(f, "port=%u", &port);
            fclose(f);
            if (got == 1 && port) {
                out->port = (uint16_t)port;
                return;
            }
        }
        int status = 0;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            out->pid = 0;
            kwd_live_set(pid, 0);
            fail_msg("%s exited before listening (status %d); log %s", program, status, out->log);
        }
        usleep(20000);
    }
    fail_msg("%s did not start listening; log %s", program, out->log);
}

void kwd_start_sharer(uint16_t port, const char *const *extra, kwd_proc *out) {
    char m0[600], m1[600], portarg[64];
    snprintf(m0, sizeof m0, "--models.0.path=%s/tiny-qwen2", kwd_models_dir());
    snprintf(m1, sizeof m1, "--models.1.path=%s/tiny-qwen3", kwd_models_dir());
    snprintf(portarg, sizeof portarg, "--listen.port=%u", (unsigned)port);
    const char *args[48] = {
        "--models.0.name=tiny-qwen2", m0, "--models.1.name=tiny-qwen3", m1, portarg, "--compute.threads=1",
        "--log.level=debug"};
    int n = 7;
    for (int i = 0; extra && extra[i] && n < 46; ++i)
        args[n++] = extra[i];
    args[n] = NULL;
    kwd_start("sharerd", args, out);
}

void kwd_start_receiver(uint16_t sharer_port, const char *const *extra, kwd_proc *out) {
    kwd_start_receiver_program("receiverd", sharer_port, extra, out);
}

void kwd_start_receiver_program(const char *program, uint16_t sharer_port, const char *const *extra, kwd_proc *out) {
    char model[600], fuser[600], sport[64];
    snprintf(model, sizeof model, "--model.path=%s/tiny-qwen3", kwd_models_dir());
    snprintf(fuser, sizeof fuser, "--fusers.0.path=%s/tiny-fuser", kwd_models_dir());
    snprintf(sport, sizeof sport, "--sharers.0.port=%u", (unsigned)sharer_port);
    const char *args[48] = {"--http.port=0",
                            "--model.name=tiny-qwen3",
                            model,
                            "--sharers.0.name=local",
                            sport,
                            "--fusers.0.name=tiny-fuser",
                            fuser,
                            "--fusers.0.sharer_model=tiny-qwen2",
                            "--compute.threads=1",
                            "--sharer.reconnect_ms=100",
                            "--log.level=debug"};
    int n = 11;
    for (int i = 0; extra && extra[i] && n < 46; ++i)
        args[n++] = extra[i];
    args[n] = NULL;
    kwd_start(program, args, out);
}

static int kwd_wait(pid_t pid, int ms, int *status) {
    const double deadline = kwd_now() + ms / 1000.0;
    while (kwd_now() < deadline) {
        if (waitpid(pid, status, WNOHANG) == pid) return 1;
        usleep(10000);
    }
    return 0;
}

static void kwd_dump_log(const kwd_proc *p) {
    FILE *f = fopen(p->log, "r");
    if (!f) return;
    char line[1024];
    fprintf(stderr, "---- %s\n", p->log);
    while (fgets(line, sizeof line, f))
        fputs(line, stderr);
    fclose(f);
}

void kwd_start_pair(kwd_proc *sharer, kwd_proc *receiver) {
    kwd_start_sharer(0, NULL, sharer);
    kwd_start_receiver(sharer->port, NULL, receiver);
    if (!kwd_wait_healthy(receiver->port, kwd_ms(30000))) fail_msg("receiverd never connected to sharerd");
}

void kwd_stop_pair(kwd_proc *sharer, kwd_proc *receiver) {
    kwd_stop(receiver);
    kwd_stop(sharer);
}

kwd_proc kwd_sharer, kwd_receiver;

int kwd_pair_setup(void **state) {
    (void)state;
    kwd_start_pair(&kwd_sharer, &kwd_receiver);
    return 0;
}

int kwd_pair_teardown(void **state) {
    (void)state;
    kwd_stop_pair(&kwd_sharer, &kwd_receiver);
    return 0;
}

void kwd_stop(kwd_proc *p) {
    if (!p->pid) return;
    kwd_live_set(p->pid, 0);
    kill(p->pid, SIGTERM);
    int status = 0;
    if (!kwd_wait(p->pid, kwd_ms(60000), &status)) {
        kill(p->pid, SIGKILL);
        waitpid(p->pid, &status, 0);
        p->pid = 0;
        kwd_dump_log(p);
        fail_msg("a daemon did not stop within 60 s of SIGTERM (log %s)", p->log);
    }
    p->pid = 0;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        kwd_dump_log(p);
        fail_msg("a daemon did not exit cleanly (status 0x%x; log %s)", status, p->log);
    }
}

void kwd_kill(kwd_proc *p) {
    if (!p->pid) return;
    kwd_live_set(p->pid, 0);
    kill(p->pid, SIGKILL);
    int status;
    waitpid(p->pid, &status, 0);
    p->pid = 0;
}

int kwd_wait_healthy(uint16_t port, int ms) {
    const double deadline = kwd_now() + ms / 1000.0;
    while (kwd_now() < deadline) {
        kwd_response r;
        kwd_http(port, "/health", NULL, &r);
        const int ok = r.status == 200;
        kwd_response_free(&r);
        if (ok) return 1;
        usleep(50000);
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// HTTP and JSON

static size_t kwd_write_cb(char *data, size_t size, size_t n, void *user) {
    kwd_response *r = user;
    const size_t add = size * n;
    char *b = realloc(r->body, r->len + add + 1);
    if (!b) return 0;
    memcpy(b + r->len, data, add);
    r->body = b;
    r->len += add;
    r->body[r->len] = '\0';
    return add;
}

void kwd_http(uint16_t port, const char *path, const char *body, kwd_response *out) {
    memset(out, 0, sizeof *out);
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%u%s", (unsigned)port, path);
    CURL *c = curl_easy_init();
    assert_non_null(c);
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, kwd_write_cb);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)kwd_ms(120000));
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    if (body) curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    const double t0 = kwd_now();
    const CURLcode rc = curl_easy_perform(c);
    out->seconds = kwd_now() - t0;
    if (rc == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    if (!out->body) out->body = strdup("");
    out->json = cJSON_Parse(out->body);
}

void kwd_response_free(kwd_response *r) {
    free(r->body);
    cJSON_Delete(r->json);
    memset(r, 0, sizeof *r);
}

const cJSON *kwd_json_get(const cJSON *root, const char *path) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    const cJSON *cur = root;
    for (char *save = NULL, *tok = strtok_r(buf, ".", &save); tok && cur; tok = strtok_r(NULL, ".", &save))
        cur = cJSON_GetObjectItemCaseSensitive(cur, tok);
    return cur;
}

double kwd_json_num(const cJSON *root, const char *path) {
    const cJSON *v = kwd_json_get(root, path);
    if (!cJSON_IsNumber(v)) fail_msg("no number at %s", path);
    return v->valuedouble;
}

int kwd_json_ids(const cJSON *arr, int32_t *out, int cap) {
    int n = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) {
        if (n < cap) out[n] = (int32_t)it->valuedouble;
        ++n;
    }
    return n;
}

void kwd_expect_400(uint16_t port, const char *const *kvwire_objects, size_t n) {
    for (size_t i = 0; i < n; ++i) {
        char body[2048];
        snprintf(body, sizeof body,
                 "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":2,\"kvwire\":%s}",
                 kvwire_objects[i]);
        kwd_response r;
        kwd_http(port, "/v1/chat/completions", body, &r);
        if (r.status != 400) fail_msg("%s: HTTP %ld: %s", kvwire_objects[i], r.status, r.body);
        kwd_response_free(&r);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// kvwire

char *kwd_kvwire(const char *args) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, KW_BINARY_DIR "/tools/kvwire %s 2>&1", args);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char *out = NULL;
    size_t len = 0;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) {
        char *o = realloc(out, len + n + 1);
        assert_non_null(o);
        memcpy(o + len, buf, n);
        out = o;
        len += n;
        out[len] = '\0';
    }
    const int status = pclose(p);
    if (status != 0) fail_msg("kvwire %s failed:\n%s", args, out ? out : "");
    return out ? out : strdup("");
}

static const char *kwd_line(const char *text, const char *key) {
    const size_t k = strlen(key);
    for (const char *p = text; p && *p;) {
        if (strncmp(p, key, k) == 0 && p[k] == ':' && p[k + 1] == ' ') return p + k + 2;
        p = strchr(p, '\n');
        if (p) ++p;
    }
    return NULL;
}

int kwd_parse_ids(const char *text, const char *key, int32_t *out, int cap) {
    const char *p = kwd_line(text, key);
    if (!p || *p != '[') return -1;
    int n = 0;
    ++p;
    while (*p && *p != ']') {
        char *end = NULL;
        const long v = strtol(p, &end, 10);
        if (end == p) break;
        if (n < cap) out[n] = (int32_t)v;
        ++n;
        p = *end == ',' ? end + 1 : end;
    }
    return n;
}

long long kwd_parse_int(const char *text, const char *key) {
    const char *p = kwd_line(text, key);
    return p ? strtoll(p, NULL, 10) : -1;
}

// ---------------------------------------------------------------------------------------------------------------
// Sockets

int kwd_listen(uint16_t *port) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(*port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(fd, 8), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

int kwd_connect(uint16_t port) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int kwd_closed_within(int fd, int ms) {
    const double deadline = kwd_now() + ms / 1000.0;
    char buf[4096];
    while (kwd_now() < deadline) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        const int left = (int)((deadline - kwd_now()) * 1000) + 1;
        if (poll(&p, 1, left) <= 0) continue;
        const ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n <= 0) return 1;
    }
    return 0;
}
