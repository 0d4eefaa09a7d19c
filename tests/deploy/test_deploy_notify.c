/* test_deploy_notify.c: sharerd and receiverd speak systemd's notify protocol (net/kw_net_service.h) to a
 * NOTIFY_SOCKET this test owns, and reload on SIGHUP. For each daemon, started from a copy of its
 * deploy/config/<daemon>.tiny.yaml on ephemeral ports with the watchdog asked for (WATCHDOG_USEC, WATCHDOG_PID = the
 * daemon): READY=1 arrives only once the port accepts connections, with a STATUS= naming what is served; WATCHDOG=1
 * pings follow; a SIGHUP after the config file changed gives RELOADING=1 then READY=1, applies the live keys (log
 * level; receiverd's default mode, checked by a request over a connection opened before the reload, which survives
 * it) and refuses a key that needs a restart with a warning while the daemon keeps serving; SIGTERM gives STOPPING=1
 * and a clean exit (status 0). Uses the daemon tests' harness and tiny models (tests/daemons).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../daemons/kwd_harness.h"

#define WATCHDOG_USEC "400000" /* pings every 200 ms */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// ---------------------------------------------------------------------------------------------------------------
// The notify socket

typedef struct notify_sock {
    int fd;
    char path[108];
    char dir[64];
} notify_sock;

static char open_socket_dir[64]; /* removed by the teardown when a failing test could not */

static void notify_open(notify_sock *n) {
    snprintf(n->dir, sizeof n->dir, "/tmp/kw-notify-XXXXXX"); /* sun_path is short: not under the build tree */
    assert_non_null(mkdtemp(n->dir));
    snprintf(n->path, sizeof n->path, "%s/notify", n->dir);
    snprintf(open_socket_dir, sizeof open_socket_dir, "%s", n->dir);
    n->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(n->fd >= 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", n->path);
    assert_int_equal(bind(n->fd, (const struct sockaddr *)&a, sizeof a), 0);
}

static void notify_close(notify_sock *n) {
    close(n->fd);
    unlink(n->path);
    rmdir(n->dir);
}

/* The next message (NUL-terminated in buf), or 0 when none arrived within ms. */
static int notify_recv(notify_sock *n, char *buf, size_t cap, int ms) {
    struct pollfd p = {.fd = n->fd, .events = POLLIN};
    if (poll(&p, 1, ms) <= 0) return 0;
    const ssize_t got = recv(n->fd, buf, cap - 1, 0);
    assert_true(got >= 0);
    buf[got] = '\0';
    return 1;
}

/* 1 if the message has the line field ("READY=1"), or a line starting with field when it ends with '='. */
static int has_line(const char *msg, const char *field) {
    const size_t len = strlen(field);
    for (const char *p = msg; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        const size_t line = strcspn(p, "\n");
        if (field[len - 1] == '=' ? strncmp(p, field, len) == 0 : (line == len && strncmp(p, field, len) == 0))
            return 1;
    }
    return 0;
}

/* Waits for a message with field, up to ms; WATCHDOG=1 pings met on the way are counted in *pings (may be NULL).
 * The message is left in buf. */
static int notify_wait(notify_sock *n, const char *field, char *buf, size_t cap, int ms, int *pings) {
    const double deadline = now_s() + ms / 1000.0;
    while (now_s() < deadline) {
        if (!notify_recv(n, buf, cap, 100)) continue;
        if (has_line(buf, field)) return 1;
        if (pings && has_line(buf, "WATCHDOG=1")) ++*pings;
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Daemons under a fake service manager

/* The text of a file (malloc'ed), or NULL. */
static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *text = calloc(1, 1 << 20);
    const size_t n = text ? fread(text, 1, (1 << 20) - 1, f) : 0;
    fclose(f);
    if (text) text[n] = '\0';
    return text;
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

/* text with its first occurrence of from replaced by to (malloc'ed); fails the test if from is absent. */
static char *replaced(const char *text, const char *from, const char *to) {
    const char *at = strstr(text, from);
    if (!at) fail_msg("the example config has no \"%s\"", from);
    char *out = malloc(strlen(text) + strlen(to) + 1);
    assert_non_null(out);
    sprintf(out, "%.*s%s%s", (int)(at - text), text, to, at + strlen(from));
    return out;
}

static int file_has(const char *path, const char *needle) {
    char *text = read_text(path);
    const int found = text && strstr(text, needle) != NULL;
    free(text);
    return found;
}

/* Every daemon a test starts, so a failing test (cmocka jumps out of it) leaves none running: the teardown kills
 * those that are still this process's unreaped children. */
static pid_t started[16];
static int n_started;

static void remember(pid_t pid) {
    if (n_started < 16) started[n_started++] = pid;
}

static int kill_leftovers(void **state) {
    (void)state;
    for (int i = 0; i < n_started; ++i) {
        int status;
        if (waitpid(started[i], &status, WNOHANG) == 0) { /* still running, still ours */
            kill(started[i], SIGKILL);
            waitpid(started[i], &status, 0);
        }
    }
    n_started = 0;
    if (open_socket_dir[0]) {
        char path[128];
        snprintf(path, sizeof path, "%s/notify", open_socket_dir);
        unlink(path);
        rmdir(open_socket_dir);
        open_socket_dir[0] = '\0';
    }
    return 0;
}

typedef struct managed {
    kwd_proc proc;
    char ready[512];
    char config[512];
} managed;

/* Starts build/<dir>/<program> --config config args... under NOTIFY_SOCKET=n with the watchdog asked for, the way
 * systemd does it (WATCHDOG_PID is the daemon's own pid, set in the child). Does not wait. */
static void managed_start(const char *program, const char *config, const char *const *args, notify_sock *n,
                          managed *m) {
    static int counter;
    memset(m, 0, sizeof *m);
    const int k = ++counter;
    snprintf(m->ready, sizeof m->ready, "%s/%s-managed-%d.ready", kwd_scratch_dir(), program, k);
    snprintf(m->proc.log, sizeof m->proc.log, "%s/%s-managed-%d.log", kwd_scratch_dir(), program, k);
    snprintf(m->config, sizeof m->config, "%s", config);
    unlink(m->ready);
    char path[512], ready_arg[600], config_arg[600];
    snprintf(path, sizeof path, KW_BINARY_DIR "/%s/%s", strcmp(program, "sharerd") == 0 ? "sharer" : "receiver",
             program);
    snprintf(ready_arg, sizeof ready_arg, "--runtime.ready_file=%s", m->ready);
    snprintf(config_arg, sizeof config_arg, "--config=%s", config);
    const char *argv[64];
    int c = 0;
    argv[c++] = path;
    argv[c++] = config_arg;
    for (int i = 0; args[i] && c < 60; ++i)
        argv[c++] = args[i];
    argv[c++] = ready_arg;
    argv[c] = NULL;
    fflush(NULL);
    const pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        const int fd = open(m->proc.log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) dup2(fd, 2), dup2(fd, 1), close(fd);
        char pid_text[32];
        snprintf(pid_text, sizeof pid_text, "%d", (int)getpid());
        setenv("NOTIFY_SOCKET", n->path, 1);
        setenv("WATCHDOG_USEC", WATCHDOG_USEC, 1);
        setenv("WATCHDOG_PID", pid_text, 1);
        execv(path, (char *const *)argv);
        _exit(127);
    }
    m->proc.pid = pid;
    remember(pid);
}

/* Waits for a STATUS= line saying a model loads, then READY=1 (the daemon may take a while to load its models), and
 * checks, the moment it arrives, that the port is written and accepts a connection; its STATUS= line must contain
 * status_has. */
static void managed_wait_ready(managed *m, notify_sock *n, const char *status_has) {
    char msg[1024];
    /* the models load first, each announced in a STATUS= line */
    if (!notify_wait(n, "STATUS=", msg, sizeof msg, kwd_ms(120000), NULL) || !strstr(msg, "STATUS=loading model"))
        fail_msg("no STATUS=loading model... before READY=1: \"%s\" (log %s)", msg, m->proc.log);
    if (!notify_wait(n, "READY=1", msg, sizeof msg, kwd_ms(120000), NULL)) {
        int status = 0;
        const int exited = waitpid(m->proc.pid, &status, WNOHANG) == m->proc.pid;
        if (exited) m->proc.pid = 0;
        fail_msg("no READY=1 from the daemon (%s; log %s)", exited ? "it exited" : "still running", m->proc.log);
    }
    FILE *f = fopen(m->ready, "r");
    unsigned port = 0;
    if (!f || fscanf(f, "port=%u", &port) != 1 || port == 0) fail_msg("READY=1 came before the port was written");
    fclose(f);
    m->proc.port = (uint16_t)port;
    const int fd = kwd_connect(m->proc.port);
    if (fd < 0) fail_msg("READY=1 came, but port %u refuses connections", port);
    close(fd);
    if (!has_line(msg, "STATUS=") || !strstr(msg, status_has))
        fail_msg("READY=1 without a STATUS= naming %s: \"%s\"", status_has, msg);
}

/* Counts WATCHDOG=1 pings until there are three (timing-free: only that they keep coming). */
static void expect_pings(notify_sock *n) {
    char msg[1024];
    int pings = 0;
    const double deadline = now_s() + kwd_ms(30000) / 1000.0;
    while (pings < 3 && now_s() < deadline)
        if (notify_recv(n, msg, sizeof msg, 100) && has_line(msg, "WATCHDOG=1")) ++pings;
    if (pings < 3) fail_msg("only %d WATCHDOG=1 ping(s) with WATCHDOG_USEC=" WATCHDOG_USEC, pings);
}

/* SIGHUP, then RELOADING=1 (with MONOTONIC_USEC) followed by READY=1. */
static void expect_reload(managed *m, notify_sock *n) {
    char msg[1024];
    assert_int_equal(kill(m->proc.pid, SIGHUP), 0);
    if (!notify_wait(n, "RELOADING=1", msg, sizeof msg, kwd_ms(30000), NULL)) fail_msg("no RELOADING=1 after SIGHUP");
    assert_true(has_line(msg, "MONOTONIC_USEC="));
    if (!notify_wait(n, "READY=1", msg, sizeof msg, kwd_ms(30000), NULL)) fail_msg("no READY=1 after the reload");
}

/* SIGTERM: STOPPING=1, then a clean exit. */
static void expect_stop(managed *m, notify_sock *n) {
    char msg[1024];
    assert_int_equal(kill(m->proc.pid, SIGTERM), 0);
    if (!notify_wait(n, "STOPPING=1", msg, sizeof msg, kwd_ms(30000), NULL)) fail_msg("no STOPPING=1 after SIGTERM");
    kwd_stop(&m->proc); /* signals again (a daemon already stopping ignores it), checks exit status 0 */
}

// ---------------------------------------------------------------------------------------------------------------
// HTTP on one kept-alive connection

/* Sends a request on fd and reads the whole response (Content-Length framed) into out; returns the status. */
static int http_on(int fd, const char *method, const char *path, const char *body, char *out, size_t cap) {
    char req[4096];
    const size_t body_len = body ? strlen(body) : 0;
    const int n = snprintf(req, sizeof req,
                           "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                           "Content-Length: %zu\r\n\r\n%s",
                           method, path, body_len, body ? body : "");
    assert_int_equal(write(fd, req, (size_t)n), n);
    size_t got = 0;
    const double deadline = now_s() + kwd_ms(60000) / 1000.0;
    while (now_s() < deadline && got + 1 < cap) {
        out[got] = '\0';
        const char *end = strstr(out, "\r\n\r\n");
        if (end) {
            const char *cl = strcasestr(out, "content-length:");
            const size_t want = (size_t)(end + 4 - out) + (cl ? strtoull(cl + 15, NULL, 10) : 0);
            if (got >= want) break;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 100) <= 0) continue;
        const ssize_t r = read(fd, out + got, cap - 1 - got);
        if (r <= 0) fail_msg("the connection closed while reading the response to %s %s", method, path);
        got += (size_t)r;
    }
    out[got] = '\0';
    int status = 0;
    if (sscanf(out, "HTTP/1.1 %d", &status) != 1) fail_msg("no HTTP response to %s %s: \"%.200s\"", method, path, out);
    return status;
}

// ---------------------------------------------------------------------------------------------------------------
// Tests

static char *example_config(const char *name) {
    char path[512];
    snprintf(path, sizeof path, KW_SOURCE_DIR "/deploy/config/%s", name);
    char *text = read_text(path);
    if (!text) fail_msg("cannot read %s", path);
    return text;
}

static void test_sharerd_notify(void **state) {
    (void)state;
    notify_sock n;
    notify_open(&n);
    char *v1 = example_config("sharerd.tiny.yaml");
    char config[600], m0[600], m1[600];
    snprintf(config, sizeof config, "%s/sharerd-notify.yaml", kwd_scratch_dir());
    write_text(config, v1);
    snprintf(m0, sizeof m0, "--models.0.path=%s/tiny-qwen2", kwd_models_dir());
    snprintf(m1, sizeof m1, "--models.1.path=%s/tiny-qwen3", kwd_models_dir());
    const char *args[] = {"--listen.port=0", m0, m1, NULL};
    managed m;
    managed_start("sharerd", config, args, &n, &m);
    managed_wait_ready(&m, &n, "tiny-qwen2, tiny-qwen3");
    expect_pings(&n);

    /* a client connected across the reload */
    const int fd = kwd_connect(m.proc.port);
    assert_true(fd >= 0);
    /* the new file: a live key (log.level) and one that needs a restart (queue.max) */
    char *v2a = replaced(v1, "level: info", "level: debug");
    char *v2 = replaced(v2a, "max: 16", "max: 4");
    write_text(config, v2);
    expect_reload(&m, &n);
    if (!file_has(m.proc.log, "log level info -> debug")) fail_msg("the reload did not apply log.level");
    if (!file_has(m.proc.log, "need a restart") || !file_has(m.proc.log, "queue.max"))
        fail_msg("the reload did not refuse queue.max with a warning (log %s)", m.proc.log);
    assert_int_equal(kwd_closed_within(fd, 200), 0);
    close(fd);
    const int again = kwd_connect(m.proc.port); /* still serving */
    assert_true(again >= 0);
    close(again);

    /* a config that no longer parses: the reload fails, the daemon keeps serving */
    write_text(config, "listen: [unclosed\n");
    expect_reload(&m, &n);
    if (!file_has(m.proc.log, "reload failed")) fail_msg("a broken config file was not reported (log %s)", m.proc.log);
    expect_pings(&n);
    expect_stop(&m, &n);
    free(v1), free(v2a), free(v2);
    notify_close(&n);
}

#define CHAT "{\"messages\":[{\"role\":\"user\",\"content\":\"Hello there\"}],\"max_tokens\":4}"

static void test_receiverd_notify_reload(void **state) {
    (void)state;
    kwd_proc sharer;
    kwd_start_sharer(0, NULL, &sharer);
    remember(sharer.pid);
    notify_sock n;
    notify_open(&n);
    char *v1 = example_config("receiverd.tiny.yaml");
    char config[600], model[600], fuser[600], sport[64];
    snprintf(config, sizeof config, "%s/receiverd-notify.yaml", kwd_scratch_dir());
    write_text(config, v1);
    snprintf(model, sizeof model, "--model.path=%s/tiny-qwen3", kwd_models_dir());
    snprintf(fuser, sizeof fuser, "--fusers.0.path=%s/tiny-fuser", kwd_models_dir());
    snprintf(sport, sizeof sport, "--sharers.0.port=%u", (unsigned)sharer.port);
    const char *args[] = {"--http.port=0", model, fuser, sport, "--sharer.reconnect_ms=100", NULL};
    managed m;
    managed_start("receiverd", config, args, &n, &m);
    managed_wait_ready(&m, &n, "tiny-qwen3");
    expect_pings(&n);
    assert_true(kwd_wait_healthy(m.proc.port, kwd_ms(60000)));

    /* one connection, kept alive across the reload: before it the default mode is c2c */
    const int fd = kwd_connect(m.proc.port);
    assert_true(fd >= 0);
    static char resp[1 << 16];
    assert_int_equal(http_on(fd, "POST", "/v1/chat/completions", CHAT, resp, sizeof resp), 200);
    if (!strstr(resp, "\"mode\":\"c2c\"")) fail_msg("the default mode is not c2c before the reload: %.300s", resp);

    char *v2a = replaced(v1, "mode: c2c", "mode: receiver_only");
    char *v2b = replaced(v2a, "level: info", "level: debug");
    char *v2 = replaced(v2b, "max_tokens: 64", "max_tokens: 32"); /* generation.max_tokens needs a restart */
    write_text(config, v2);
    expect_reload(&m, &n);
    if (!file_has(m.proc.log, "log level info -> debug")) fail_msg("the reload did not apply log.level");
    if (!file_has(m.proc.log, "need a restart") || !file_has(m.proc.log, "generation.max_tokens"))
        fail_msg("the reload did not refuse generation.max_tokens with a warning (log %s)", m.proc.log);

    /* the same connection: still open, and the request gets the new default */
    assert_int_equal(http_on(fd, "POST", "/v1/chat/completions", CHAT, resp, sizeof resp), 200);
    if (!strstr(resp, "\"mode\":\"receiver_only\""))
        fail_msg("a request after the reload does not get the new default mode: %.300s", resp);
    /* a request naming its mode still gets it */
    assert_int_equal(http_on(fd, "POST", "/v1/chat/completions",
                             "{\"messages\":[{\"role\":\"user\",\"content\":\"Hello there\"}],\"max_tokens\":4,"
                             "\"kvwire\":{\"mode\":\"c2c\"}}",
                             resp, sizeof resp),
                     200);
    assert_non_null(strstr(resp, "\"mode\":\"c2c\""));
    close(fd);
    expect_stop(&m, &n);
    kwd_stop(&sharer);
    free(v1), free(v2a), free(v2b), free(v2);
    notify_close(&n);
}

/* Without NOTIFY_SOCKET nothing is sent and the daemon runs as before (a SIGHUP still reloads, not kills). */
static void test_without_notify_socket(void **state) {
    (void)state;
    unsetenv("NOTIFY_SOCKET");
    kwd_proc p;
    kwd_start_sharer(0, NULL, &p);
    remember(p.pid);
    assert_int_equal(kill(p.pid, SIGHUP), 0);
    const double deadline = now_s() + kwd_ms(30000) / 1000.0;
    while (!file_has(p.log, "SIGHUP: reloading") && now_s() < deadline)
        usleep(20000);
    assert_true(file_has(p.log, "SIGHUP: reloading"));
    assert_false(file_has(p.log, "watchdog every"));
    kwd_stop(&p);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_sharerd_notify, kill_leftovers),
        cmocka_unit_test_teardown(test_receiverd_notify_reload, kill_leftovers),
        cmocka_unit_test_teardown(test_without_notify_socket, kill_leftovers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
