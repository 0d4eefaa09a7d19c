/* stub_thread.c: a libuv loop with the stub on a pthread, stopped through a uv_async_t. */
#include "stub_thread.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <stdio.h>
#include <string.h>

static void *stub_main(void *arg) {
    stub_thread *t = arg;
    uv_run(&t->loop, UV_RUN_DEFAULT);
    return NULL;
}

static void stub_closed(uv_handle_t *h) {
    (void)h;
}

static void stub_done(void *user) {
    stub_thread *t = user;
    uv_close((uv_handle_t *)&t->stop, stub_closed);
}

static void stub_stop_cb(uv_async_t *a) {
    stub_thread *t = a->data;
    kw_load_stub_shutdown(t->stub, stub_done, t);
}

void stub_thread_start(stub_thread *t, const kw_load_stub_config *cfg) {
    memset(t, 0, sizeof(*t));
    kw_load_stub_config def;
    if (!cfg) {
        kw_load_stub_config_default(&def);
        cfg = &def;
    }
    assert_int_equal(uv_loop_init(&t->loop), 0);
    assert_int_equal(kw_load_stub_start(&t->loop, cfg, &t->stub), 0);
    assert_int_equal(uv_async_init(&t->loop, &t->stop, stub_stop_cb), 0);
    t->stop.data = t;
    snprintf(t->url, sizeof(t->url), "http://127.0.0.1:%u", (unsigned)kw_load_stub_port(t->stub));
    assert_int_equal(pthread_create(&t->thread, NULL, stub_main, t), 0);
}

void stub_thread_stop(stub_thread *t) {
    uv_async_send(&t->stop);
    pthread_join(t->thread, NULL);
    kw_load_stub_free(t->stub);
    assert_int_equal(uv_loop_close(&t->loop), 0);
}
