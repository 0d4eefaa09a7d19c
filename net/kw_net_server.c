/* kw_net_server.c: listening, accepting, and graceful shutdown of a server's connections; the SIGTERM/SIGINT
 * watcher; the cross-thread completion queue.
 *
 * Not here: the connection itself (kw_net_conn.c). Shutdown invariant: once shutting_down is set nothing new is
 * accepted (the connections the kernel had already accepted are taken first, so that they are answered rather than
 * reset); the server's done callback runs exactly once, after the listener, the two timers and every connection are
 * closed.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include <sys/socket.h>
#include <unistd.h>

#include "common/kw_status.h"
#include "net/kw_net_internal.h"

/* How long a shutting-down server keeps a connection with no request in flight open for one more request (answered,
 * then the connection closes). A client that connected or sent its request just before the shutdown would otherwise
 * see its connection close with the request unread and no response; at most the shutdown deadline. */
#define KW__NET_SHUTDOWN_GRACE_MS 500u

struct kw_net_server {
    uv_tcp_t listener; /* listener.data is the server */
    uv_timer_t deadline;
    uv_timer_t grace; /* shutdown: closes the connections still without a request when it fires */
    uv_loop_t *loop;
    kw_net_server_config cfg;
    kw_net_accept_fn on_accept;
    void *user;
    kw_net_conn *conns; /* open connections, a doubly linked list */
    size_t n_conns;
    uint16_t port;
    int handles_open;
    bool shutting_down, timer_closing, done_called;
    bool start_failed; /* start failed: the close callbacks free the server */
    void (*done)(kw_net_server *s, void *user);
    void *done_user;
};

static void kw__net_server_handle_closed(uv_handle_t *h) {
    kw_net_server *s = h->data;
    if (--s->handles_open > 0) return;
    if (s->start_failed) {
        free(s);
        return;
    }
    if (!s->done_called) {
        s->done_called = true;
        if (s->done) s->done(s, s->done_user);
    }
}

static void kw__net_server_maybe_done(kw_net_server *s) {
    if (!s->shutting_down || s->n_conns || s->timer_closing) return;
    s->timer_closing = true;
    uv_close((uv_handle_t *)&s->deadline, kw__net_server_handle_closed);
    uv_close((uv_handle_t *)&s->grace, kw__net_server_handle_closed);
}

void kw__net_server_conn_closed(kw_net_server *s, kw_net_conn *c) {
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    c->prev = c->next = NULL;
    c->server = NULL;
    --s->n_conns;
    kw__net_server_maybe_done(s);
}

bool kw__net_server_shutting_down(const kw_net_server *s) {
    return s->shutting_down;
}

static void kw__net_free_handle(uv_handle_t *h) {
    free(h);
}

/* Takes one accepted socket: uv_accept from the listener when fd < 0, else the socket fd that accept4 returned (the
 * shutdown's backlog drain). */
static void kw__net_server_take(kw_net_server *s, int fd) {
    kw_net_conn *c =
        kw__net_conn_new(s->loop, &s->cfg.conn, s->cfg.tls ? &kw__net_transport_tls : &kw__net_transport_tcp);
    if (!c) {
        if (fd >= 0) {
            close(fd);
            return;
        }
        /* libuv holds the accepted socket until uv_accept and stops listening meanwhile: take it and drop it */
        uv_tcp_t *drop = malloc(sizeof *drop);
        if (!drop || uv_tcp_init(s->loop, drop) != 0) {
            free(drop);
            return;
        }
        uv_accept((uv_stream_t *)&s->listener, (uv_stream_t *)drop);
        uv_close((uv_handle_t *)drop, kw__net_free_handle);
        return;
    }
    const int taken =
        fd >= 0 ? uv_tcp_open(&c->tcp, fd) : uv_accept((uv_stream_t *)&s->listener, (uv_stream_t *)&c->tcp);
    if (taken < 0) {
        if (fd >= 0) close(fd);
        kw_net_conn_abort(c, KW_E_NET_IO);
        return;
    }
    c->server = s;
    c->next = s->conns;
    if (s->conns) s->conns->prev = c;
    s->conns = c;
    ++s->n_conns;
    if (s->cfg.max_connections && s->n_conns > s->cfg.max_connections) {
        kw_error_set(KW_E_LIMIT, "more than %u connections", s->cfg.max_connections);
        kw_net_conn_abort(c, KW_E_LIMIT);
        return;
    }
    s->on_accept(s, c, s->user);
    if (c->state == KW__NET_CLOSED) return;
    int rc = c->cb.on_read && c->cb.on_close
                 ? 0
                 : kw_error_set(KW_E_INVALID_ARG, "the accept callback set no on_read/on_close callbacks");
    if (rc == 0) rc = kw__net_conn_accepted(c, s->cfg.tls);
    if (rc < 0) kw_net_conn_abort(c, rc);
}

static void kw__net_server_on_connection(uv_stream_t *listener, int status) {
    kw_net_server *s = listener->data;
    if (status < 0 || s->shutting_down) return;
    kw__net_server_take(s, -1);
}

/* Shutdown: the connections the kernel completed but the loop has not accepted yet would be reset when the listener
 * closes, after their clients had connected and sent their requests. Takes them (a bounded number) so that they get
 * the grace of the connections already open. */
static void kw__net_server_drain_backlog(kw_net_server *s) {
    uv_os_fd_t listen_fd;
    if (uv_fileno((const uv_handle_t *)&s->listener, &listen_fd) != 0) return;
    for (int taken = 0; taken < 4096;) {
        const int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            return; /* EAGAIN: the queue is empty; anything else: leave the rest to the close */
        }
        kw__net_server_take(s, fd);
        ++taken;
    }
}

int kw_net_server_start(uv_loop_t *loop, const kw_net_server_config *cfg, kw_net_accept_fn on_accept, void *user,
                        kw_net_server **out) {
    KW_RETURN_IF(!cfg || !cfg->host || !on_accept, KW_E_INVALID_ARG, "server: host and accept callback are required");
    struct sockaddr_storage addr;
    const char *host = strcmp(cfg->host, "localhost") == 0 ? "127.0.0.1" : cfg->host;
    if (uv_ip4_addr(host, cfg->port, (struct sockaddr_in *)&addr) != 0 &&
        uv_ip6_addr(host, cfg->port, (struct sockaddr_in6 *)&addr) != 0)
        KW_FAIL(KW_E_NET_ADDRESS, "server: %s is not a numeric address", cfg->host);
    kw_net_server *s = calloc(1, sizeof *s);
    KW_RETURN_IF(!s, KW_E_NOMEM, "server: out of memory");
    s->loop = loop;
    s->cfg = *cfg;
    s->cfg.host = NULL; /* not kept */
    s->on_accept = on_accept;
    s->user = user;
    uv_tcp_init(loop, &s->listener);
    uv_timer_init(loop, &s->deadline);
    uv_timer_init(loop, &s->grace);
    s->listener.data = s->deadline.data = s->grace.data = s;
    s->handles_open = 3;
    int rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)&addr, 0);
    if (rc == 0)
        rc =
            uv_listen((uv_stream_t *)&s->listener, cfg->backlog > 0 ? cfg->backlog : 128, kw__net_server_on_connection);
    if (rc == 0) {
        int len = sizeof addr;
        rc = uv_tcp_getsockname(&s->listener, (struct sockaddr *)&addr, &len);
    }
    if (rc < 0) {
        kw_error_set(KW_E_NET_ADDRESS, "server: listen on %s:%u: %s", cfg->host, cfg->port, uv_strerror(rc));
        s->start_failed = true;
        uv_close((uv_handle_t *)&s->listener, kw__net_server_handle_closed);
        uv_close((uv_handle_t *)&s->deadline, kw__net_server_handle_closed);
        uv_close((uv_handle_t *)&s->grace, kw__net_server_handle_closed);
        return KW_E_NET_ADDRESS;
    }
    s->port = ntohs(addr.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&addr)->sin6_port
                                               : ((struct sockaddr_in *)&addr)->sin_port);
    *out = s;
    return 0;
}

uint16_t kw_net_server_port(const kw_net_server *s) {
    return s->port;
}

size_t kw_net_server_connections(const kw_net_server *s) {
    return s->n_conns;
}

static void kw__net_server_deadline_cb(uv_timer_t *t) {
    kw_net_server *s = t->data;
    for (kw_net_conn *c = s->conns; c; c = c->next) {
        kw_error_set(KW_E_NET_SHUTDOWN, "the server's shutdown deadline passed");
        kw_net_conn_abort(c, KW_E_NET_SHUTDOWN);
    }
}

/* The grace is over: the connections that have no request in flight now close. */
static void kw__net_server_grace_cb(uv_timer_t *t) {
    kw_net_server *s = t->data;
    /* Connections leave the list only in their close callbacks, so the list is stable while we walk it. */
    for (kw_net_conn *c = s->conns; c; c = c->next) {
        if (c->busy) continue;
        kw_error_set(KW_E_NET_SHUTDOWN, "the server is shutting down");
        kw_net_conn_close(c, KW_E_NET_SHUTDOWN);
    }
}

void kw_net_server_shutdown(kw_net_server *s, uint32_t deadline_ms, void (*done)(kw_net_server *s, void *user),
                            void *user) {
    if (s->shutting_down) return;
    kw__net_server_drain_backlog(s);
    s->shutting_down = true;
    s->done = done;
    s->done_user = user;
    uv_close((uv_handle_t *)&s->listener, kw__net_server_handle_closed);
    uv_timer_start(&s->deadline, kw__net_server_deadline_cb, deadline_ms, 0);
    uv_timer_start(&s->grace, kw__net_server_grace_cb,
                   deadline_ms < KW__NET_SHUTDOWN_GRACE_MS ? deadline_ms : KW__NET_SHUTDOWN_GRACE_MS, 0);
    for (kw_net_conn *c = s->conns; c; c = c->next)
        if (c->busy && c->cb.on_shutdown && c->state == KW__NET_OPEN) c->cb.on_shutdown(c);
    kw__net_server_maybe_done(s);
}

void kw_net_server_free(kw_net_server *s) {
    free(s);
}

// ---------------------------------------------------------------------------------------------------------------
// Signals

/* The process's one watcher: a sigaction handler of our own that only marks the signal and wakes the loop
 * (uv_async_send is async-signal-safe), rather than libuv's signal handles, whose close puts back the default action:
 * a second SIGTERM (scancel and a job script both send one) arriving between that close and the caller's SIG_IGN
 * killed a stopping daemon (exit 143). Here the action goes from the handler straight to SIG_IGN. The state is static,
 * so a handler running late on another thread never touches freed memory. */
struct kw_net_signals {
    uv_async_t wake;
    void (*on_signal)(int signum, void *user);
    void *user;
};

static kw_net_signals kw__net_signals;                   /* the watcher (one per process at a time) */
static volatile sig_atomic_t kw__net_signals_on;         /* 1 while watching: the handler may wake the loop */
static volatile sig_atomic_t kw__net_term, kw__net_intr; /* pending signals */
static int kw__net_signals_busy;                         /* watching, or its handle not yet closed */

static void kw__net_signal_handler(int signum) {
    const int saved = errno;
    if (signum == SIGTERM) kw__net_term = 1;
    if (signum == SIGINT) kw__net_intr = 1;
    if (kw__net_signals_on) uv_async_send(&kw__net_signals.wake);
    errno = saved;
}

static void kw__net_signal_cb(uv_async_t *h) {
    kw_net_signals *s = h->data;
    if (kw__net_term) {
        kw__net_term = 0;
        if (kw__net_signals_on) s->on_signal(SIGTERM, s->user);
    }
    if (kw__net_intr) {
        kw__net_intr = 0;
        if (kw__net_signals_on) s->on_signal(SIGINT, s->user);
    }
}

static void kw__net_signals_closed(uv_handle_t *h) {
    (void)h;
    kw__net_signals_busy = 0;
}

static int kw__net_signal_action(void (*handler)(int)) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sa.sa_flags = SA_RESTART;
    sigfillset(&sa.sa_mask);
    return sigaction(SIGTERM, &sa, NULL) == 0 && sigaction(SIGINT, &sa, NULL) == 0 ? 0 : -1;
}

int kw_net_signals_watch(uv_loop_t *loop, void (*on_signal)(int signum, void *user), void *user, kw_net_signals **out) {
    KW_RETURN_IF(!loop || !on_signal || !out, KW_E_INVALID_ARG, "signals: a loop, a callback and out are required");
    KW_RETURN_IF(kw__net_signals_busy, KW_E_STATE, "signals: one watcher per process, and one is open");
    kw_net_signals *s = &kw__net_signals;
    s->on_signal = on_signal;
    s->user = user;
    const int rc = uv_async_init(loop, &s->wake, kw__net_signal_cb);
    KW_RETURN_IF(rc < 0, KW_E_IO, "signals: %s", uv_strerror(rc));
    s->wake.data = s;
    kw__net_signals_busy = 1;
    kw__net_term = kw__net_intr = 0;
    kw__net_signals_on = 1;
    /* libuv writes with write(2): a peer that vanished must give EPIPE, not kill the process */
    signal(SIGPIPE, SIG_IGN);
    struct sigaction old_term, old_intr; /* put back if the watcher cannot be set up */
    const bool saved = sigaction(SIGTERM, NULL, &old_term) == 0 && sigaction(SIGINT, NULL, &old_intr) == 0;
    if (!saved || kw__net_signal_action(kw__net_signal_handler) != 0) {
        const int e = errno;
        if (saved) {
            (void)sigaction(SIGTERM, &old_term, NULL);
            (void)sigaction(SIGINT, &old_intr, NULL);
        }
        kw__net_signals_on = 0;
        uv_close((uv_handle_t *)&s->wake, kw__net_signals_closed);
        KW_FAIL(KW_E_IO, "signals: sigaction: %s", strerror(e));
    }
    *out = s;
    return 0;
}

void kw_net_signals_close(kw_net_signals *s) {
    if (!s || !kw__net_signals_on) return;
    (void)kw__net_signal_action(SIG_IGN); /* from the handler straight to ignoring: no default action in between */
    kw__net_signals_on = 0;
    uv_close((uv_handle_t *)&s->wake, kw__net_signals_closed);
}

// ---------------------------------------------------------------------------------------------------------------
// Cross-thread completion queue

struct kw_net_async {
    uv_async_t async; /* async.data is the queue */
    uv_mutex_t lock;
    kw_net_async_item *head, *tail; /* guarded by lock */
    bool closing;                   /* guarded by lock */
    kw_net_async_fn fn;
    void *user;
};

/* Takes the whole list under the lock and delivers it without holding the lock (fn may post again). */
static void kw__net_async_drain(kw_net_async *q) {
    uv_mutex_lock(&q->lock);
    kw_net_async_item *item = q->head;
    q->head = q->tail = NULL;
    uv_mutex_unlock(&q->lock);
    while (item) {
        kw_net_async_item *next = item->next;
        item->next = NULL;
        q->fn(item, q->user);
        item = next;
    }
}

static void kw__net_async_cb(uv_async_t *h) {
    kw__net_async_drain(h->data);
}

int kw_net_async_create(uv_loop_t *loop, kw_net_async_fn fn, void *user, kw_net_async **out) {
    KW_RETURN_IF(!fn, KW_E_INVALID_ARG, "async queue: a callback is required");
    kw_net_async *q = calloc(1, sizeof *q);
    KW_RETURN_IF(!q, KW_E_NOMEM, "async queue: out of memory");
    if (uv_mutex_init(&q->lock) != 0) {
        free(q);
        KW_FAIL(KW_E_IO, "async queue: mutex init failed");
    }
    const int rc = uv_async_init(loop, &q->async, kw__net_async_cb);
    if (rc < 0) {
        uv_mutex_destroy(&q->lock);
        free(q);
        KW_FAIL(KW_E_IO, "async queue: %s", uv_strerror(rc));
    }
    q->async.data = q;
    q->fn = fn;
    q->user = user;
    *out = q;
    return 0;
}

int kw_net_async_post(kw_net_async *q, kw_net_async_item *item) {
    item->next = NULL;
    uv_mutex_lock(&q->lock);
    if (q->closing) {
        uv_mutex_unlock(&q->lock);
        KW_FAIL(KW_E_STATE, "async queue: closed");
    }
    if (q->tail)
        q->tail->next = item;
    else
        q->head = item;
    q->tail = item;
    /* under the lock: close() cannot slip in between the append and the wake-up and close the handle */
    uv_async_send(&q->async);
    uv_mutex_unlock(&q->lock);
    return 0;
}

static void kw__net_async_closed(uv_handle_t *h) {
    kw_net_async *q = h->data;
    uv_mutex_destroy(&q->lock);
    free(q);
}

void kw_net_async_close(kw_net_async *q) {
    if (!q) return;
    uv_mutex_lock(&q->lock);
    q->closing = true;
    uv_mutex_unlock(&q->lock);
    kw__net_async_drain(q);
    uv_close((uv_handle_t *)&q->async, kw__net_async_closed);
}
