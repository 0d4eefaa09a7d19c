/* net_test_util.c: loop helpers, a collecting client and a throwaway PKI for the net tests (net_test_util.h). */
#include "tests/net/net_test_util.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/kw_status.h"

// ---------------------------------------------------------------------------------------------------------------
// Loops

static void nt_watchdog_cb(uv_timer_t *t) {
    *(bool *)t->data = true;
}

void nt_run_until_fn(uv_loop_t *loop, bool (*cond)(void *arg), void *arg, uint32_t timeout_ms) {
    bool expired = false;
    uv_timer_t watchdog;
    uv_timer_init(loop, &watchdog);
    watchdog.data = &expired;
    uv_timer_start(&watchdog, nt_watchdog_cb, timeout_ms, 0);
    while (!cond(arg) && !expired)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&watchdog, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    if (!cond(arg)) fail_msg("the condition did not hold within %u ms of loop time", timeout_ms);
}

static bool nt_flag(void *arg) {
    return *(const bool *)arg;
}

void nt_run_until(uv_loop_t *loop, const bool *flag, uint32_t timeout_ms) {
    nt_run_until_fn(loop, nt_flag, (void *)flag, timeout_ms);
}

void nt_run_for(uv_loop_t *loop, uint32_t ms) {
    bool expired = false;
    uv_timer_t t;
    uv_timer_init(loop, &t);
    t.data = &expired;
    uv_timer_start(&t, nt_watchdog_cb, ms, 0);
    while (!expired)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
}

static void nt_count_open(uv_handle_t *h, void *arg) {
    if (!uv_is_closing(h)) {
        fprintf(stderr, "leaked handle: %s\n", uv_handle_type_name(uv_handle_get_type(h)));
        ++*(int *)arg;
    }
}

void nt_loop_finish(uv_loop_t *loop) {
    for (int i = 0; i < 8; ++i)
        uv_run(loop, UV_RUN_NOWAIT);
    int open = 0;
    uv_walk(loop, nt_count_open, &open);
    assert_int_equal(open, 0);
    uv_run(loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(loop), 0);
}

void nt_conn_options(kw_net_conn_options *opt) {
    kw_net_conn_options_default(opt);
    opt->connect_timeout_ms = 5000;
    opt->idle_timeout_ms = 20000;
}

// ---------------------------------------------------------------------------------------------------------------
// Collecting client

static void nt_client_open(kw_net_conn *c) {
    ((nt_client *)kw_net_conn_user(c))->opened = true;
}

static int nt_client_read(kw_net_conn *c, const uint8_t *data, size_t len, size_t *used) {
    nt_client *cl = kw_net_conn_user(c);
    cl->data = realloc(cl->data, cl->len + len + 1);
    assert_non_null(cl->data);
    memcpy(cl->data + cl->len, data, len);
    cl->len += len;
    cl->data[cl->len] = 0;
    *used = len;
    if (cl->pause_at && cl->len >= (size_t)cl->pause_at) kw_net_conn_pause_reading(c);
    return 0;
}

static void nt_client_close(kw_net_conn *c, int status) {
    nt_client *cl = kw_net_conn_user(c);
    cl->closed = true;
    cl->close_status = status;
    cl->conn = NULL;
}

void nt_client_connect(uv_loop_t *loop, nt_client *c, const char *host, uint16_t port, kw_net_tls *tls,
                       const char *server_name, const kw_net_conn_options *opt) {
    static const kw_net_conn_callbacks cb = {
        .on_open = nt_client_open, .on_read = nt_client_read, .on_close = nt_client_close};
    kw_net_client_config cfg = {.host = host, .port = port, .tls = tls, .server_name = server_name};
    if (opt)
        cfg.conn = *opt;
    else
        nt_conn_options(&cfg.conn);
    assert_int_equal(kw_net_connect(loop, &cfg, &cb, c, &c->conn), 0);
}

void nt_client_free(nt_client *c) {
    free(c->data);
    c->data = NULL;
    c->len = 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Certificates (net/kw_net_pki.c makes them)

const char *nt_path(const char *dir, const char *name) {
    static char buf[512];
    snprintf(buf, sizeof buf, "%s/%s", dir, name);
    return buf;
}

char *nt_tempdir(void) {
    char tmpl[] = "/tmp/kw_net_test_XXXXXX";
    assert_non_null(mkdtemp(tmpl));
    return strdup(tmpl);
}

void nt_certs_make(const char *dir) {
    assert_int_equal(kw_net_pki_generate(dir, NULL), 0);
    char rogue[512];
    snprintf(rogue, sizeof rogue, "%s/rogue", dir);
    assert_int_equal(mkdir(rogue, 0700), 0);
    const kw_net_pki_options opt = {.ca_name = "rogue CA"};
    assert_int_equal(kw_net_pki_generate(rogue, &opt), 0);
}
