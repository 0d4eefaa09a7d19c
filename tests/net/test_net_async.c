/* test_net_async.c: the cross-thread completion queue: items posted by several threads all reach the loop thread,
 * each thread's in its posting order (wake-ups coalesce, so the callback drains a list), items still queued at
 * close are delivered by the close, and posts after it are refused with the item left to the caller. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>

#include "common/kw_status.h"
#include "net/kw_net.h"
#include "tests/net/net_test_util.h"

enum { THREADS = 4, PER_THREAD = 20000 };

typedef struct item {
    kw_net_async_item link; /* first member */
    int thread, seq;
} item;

typedef struct state {
    kw_net_async *q;
    int next[THREADS]; /* the sequence number expected next from each thread */
    int received;
    uv_thread_t threads[THREADS];
    int ids[THREADS];
} state;

static state g;

static void on_item(kw_net_async_item *it, void *user) {
    state *s = user;
    item *x = (item *)it;
    assert_int_equal(x->seq, s->next[x->thread]);
    ++s->next[x->thread];
    ++s->received;
    free(x);
}

static void producer(void *arg) {
    const int id = *(int *)arg;
    for (int i = 0; i < PER_THREAD; ++i) {
        item *x = malloc(sizeof *x);
        x->thread = id;
        x->seq = i;
        if (kw_net_async_post(g.q, &x->link) != 0) abort();
    }
}

static bool all_received(void *arg) {
    return ((state *)arg)->received == THREADS * PER_THREAD;
}

static void test_threads(void **unused) {
    (void)unused;
    uv_loop_t loop;
    uv_loop_init(&loop);
    assert_int_equal(kw_net_async_create(&loop, on_item, &g, &g.q), 0);
    for (int t = 0; t < THREADS; ++t) {
        g.ids[t] = t;
        assert_int_equal(uv_thread_create(&g.threads[t], producer, &g.ids[t]), 0);
    }
    nt_run_until_fn(&loop, all_received, &g, 60000);
    for (int t = 0; t < THREADS; ++t) {
        uv_thread_join(&g.threads[t]);
        assert_int_equal(g.next[t], PER_THREAD);
    }
    /* items posted but not yet delivered when the queue closes: close delivers them */
    for (int i = 0; i < 3; ++i) {
        item *x = malloc(sizeof *x);
        x->thread = 0;
        x->seq = PER_THREAD + i;
        assert_int_equal(kw_net_async_post(g.q, &x->link), 0);
    }
    kw_net_async_close(g.q);
    assert_int_equal(g.received, THREADS * PER_THREAD + 3);
    item late = {.thread = 0};
    assert_int_equal(kw_net_async_post(g.q, &late.link), KW_E_STATE);
    uv_run(&loop, UV_RUN_NOWAIT); /* the close callback frees the queue */
    kw_net_async_close(NULL);
    nt_loop_finish(&loop);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_threads)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
