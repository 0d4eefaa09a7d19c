/* kw_net_conn.c: the connection core shared by the TCP and TLS transports: handles and their lifetime, reading with
 * pause/resume, the write queue and its backpressure, connect/idle/request timeouts, graceful and abortive close,
 * and the client side (resolve, connect).
 *
 * Not here: what the bytes mean (the transports in kw_net_tcp.c and kw_net_tls.c move them; the application reads
 * them), listening and server shutdown (kw_net_server.c).
 *
 * Lifetime invariant: a connection owns four handles (socket, timer, deadline timer, resume idle) and possibly a
 * pending resolve request; handles_open counts them, and the connection is freed in the close callback that brings
 * it to zero, after on_close has run. Once the state is CLOSED nothing calls the application except pending write
 * done callbacks (libuv cancels them before closing the socket) and on_close.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_log.h"
#include "common/kw_status.h"
#include "net/kw_net_internal.h"

#define KW__NET_LINGER_MS 1000 /* after our FIN, how long to read and discard what the peer still sends */

void kw_net_conn_options_default(kw_net_conn_options *opt) {
    *opt = (kw_net_conn_options){
        .connect_timeout_ms = 10000,
        .idle_timeout_ms = 60000,
        .write_high_water = (size_t)4 << 20,
        .write_low_water = (size_t)1 << 20,
        .write_max_bytes = (size_t)64 << 20,
        .read_buffer_bytes = (size_t)256 << 10,
        .no_delay = true,
    };
}

// ---------------------------------------------------------------------------------------------------------------
// Creation and teardown

static void kw__net_handle_closed(uv_handle_t *h);
static void kw__net_timer_cb(uv_timer_t *t);

static void kw__net_conn_release(kw_net_conn *c) {
    if (--c->handles_open > 0) return;
    if (c->server) kw__net_server_conn_closed(c->server, c);
    if (c->cb.on_close) {
        /* the detail recorded at close time, for the application's log line */
        kw_error_set(c->close_status, "%s", c->close_detail);
        c->cb.on_close(c, c->close_status);
    }
    c->tr->detach(c);
    for (int i = 0; i < KW__NET_SPARES; ++i)
        free(c->spare[i]);
    free(c->rbuf);
    free(c->held);
    free(c->server_name);
    free(c->host);
    free(c);
}

static void kw__net_handle_closed(uv_handle_t *h) {
    kw__net_conn_release(h->data);
}

kw_net_conn *kw__net_conn_new(uv_loop_t *loop, const kw_net_conn_options *opt, const kw__net_transport *tr) {
    kw_net_conn *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->opt = *opt;
    if (c->opt.read_buffer_bytes < 4096) c->opt.read_buffer_bytes = 4096;
    if (c->opt.write_low_water > c->opt.write_high_water) c->opt.write_low_water = c->opt.write_high_water;
    c->rbuf = malloc(c->opt.read_buffer_bytes);
    if (!c->rbuf) {
        free(c);
        return NULL;
    }
    c->loop = loop;
    c->tr = tr;
    c->state = KW__NET_CONNECTING;
    /* these inits only fill structs (uv_tcp_init creates no socket for AF_UNSPEC) */
    uv_tcp_init(loop, &c->tcp);
    uv_timer_init(loop, &c->timer);
    uv_timer_init(loop, &c->deadline);
    uv_idle_init(loop, &c->resume);
    c->tcp.data = c->timer.data = c->deadline.data = c->resume.data = c;
    c->handles_open = 4;
    c->last_activity = uv_now(loop);
    return c;
}

void kw_net_conn_abort(kw_net_conn *c, int status) {
    if (c->state == KW__NET_CLOSED) return;
    c->state = KW__NET_CLOSED;
    c->close_status = status;
    snprintf(c->close_detail, sizeof c->close_detail, "%s", status < 0 ? kw_error_detail() : "");
    if (c->resolving) uv_cancel((uv_req_t *)&c->resolve_req);
    uv_close((uv_handle_t *)&c->tcp, kw__net_handle_closed);
    uv_close((uv_handle_t *)&c->timer, kw__net_handle_closed);
    uv_close((uv_handle_t *)&c->deadline, kw__net_handle_closed);
    uv_close((uv_handle_t *)&c->resume, kw__net_handle_closed);
}

static void kw__net_read_stop(kw_net_conn *c) {
    if (!c->reading) return;
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = false;
}

static void kw__net_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void kw__net_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

int kw__net_read_start(kw_net_conn *c) {
    if (c->reading) return 0;
    const int rc = uv_read_start((uv_stream_t *)&c->tcp, kw__net_alloc_cb, kw__net_read_cb);
    KW_RETURN_IF(rc < 0, KW_E_NET_IO, "read start: %s", uv_strerror(rc));
    c->reading = true;
    return 0;
}

static void kw__net_shutdown_cb(uv_shutdown_t *req, int status) {
    kw_net_conn *c = req->data;
    if (c->state == KW__NET_CLOSED) return;
    if (status < 0) {
        kw_net_conn_abort(c, c->close_status);
        return;
    }
    /* Our FIN is out. Read and discard what the peer still sends until its FIN or the linger time: closing a
     * socket with unread input makes the kernel send a reset, which can destroy our last bytes at the peer. */
    c->lingering = true;
    if (kw__net_read_start(c) < 0) {
        kw_net_conn_abort(c, c->close_status);
        return;
    }
    uv_timer_start(&c->timer, kw__net_timer_cb, KW__NET_LINGER_MS, 0);
}

static void kw__net_maybe_shutdown(kw_net_conn *c) {
    if (c->state != KW__NET_CLOSING || c->shutdown_started || c->write_queued) return;
    c->shutdown_started = true;
    c->shutdown_req.data = c;
    if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, kw__net_shutdown_cb) < 0)
        kw_net_conn_abort(c, c->close_status);
}

void kw_net_conn_close(kw_net_conn *c, int status) {
    if (c->state == KW__NET_CLOSED || c->state == KW__NET_CLOSING) return;
    if (c->state != KW__NET_OPEN) {
        kw_net_conn_abort(c, status);
        return;
    }
    c->state = KW__NET_CLOSING;
    c->close_status = status;
    snprintf(c->close_detail, sizeof c->close_detail, "%s", status < 0 ? kw_error_detail() : "");
    kw__net_read_stop(c);
    uv_idle_stop(&c->resume);
    c->tr->close_notify(c);
    kw__net_maybe_shutdown(c);
}

// ---------------------------------------------------------------------------------------------------------------
// Timers

static void kw__net_timer_cb(uv_timer_t *t) {
    kw_net_conn *c = t->data;
    switch (c->state) {
    case KW__NET_CONNECTING:
    case KW__NET_HANDSHAKE:
        kw_error_set(KW_E_NET_CONNECT_TIMEOUT, "%s %s not established within %u ms", c->tr->name,
                     c->server ? "connection" : "connect", c->opt.connect_timeout_ms);
        kw_net_conn_abort(c, KW_E_NET_CONNECT_TIMEOUT);
        return;
    case KW__NET_CLOSED:
        return;
    case KW__NET_OPEN:
    case KW__NET_CLOSING:
        break;
    }
    if (c->lingering) {
        kw_net_conn_abort(c, c->close_status);
        return;
    }
    const uint32_t idle = c->opt.idle_timeout_ms;
    if (!idle) return;
    const uint64_t elapsed = uv_now(c->loop) - c->last_activity;
    if (c->busy || elapsed < idle) {
        uv_timer_start(&c->timer, kw__net_timer_cb, c->busy ? idle : idle - elapsed, 0);
        return;
    }
    kw_error_set(KW_E_NET_IDLE_TIMEOUT, "nothing read or written for %llu ms", (unsigned long long)elapsed);
    kw_net_conn_abort(c, KW_E_NET_IDLE_TIMEOUT);
}

static void kw__net_deadline_cb(uv_timer_t *t) {
    kw_net_conn *c = t->data;
    if (c->state == KW__NET_CLOSED) return;
    kw_error_set(KW_E_NET_REQUEST_TIMEOUT, "the request in flight passed its %u ms deadline", c->deadline_ms);
    kw_net_conn_abort(c, KW_E_NET_REQUEST_TIMEOUT);
}

void kw_net_conn_deadline_start(kw_net_conn *c, uint32_t timeout_ms) {
    if (c->state == KW__NET_CLOSED) return;
    c->busy = true;
    c->deadline_ms = timeout_ms;
    uv_timer_stop(&c->deadline);
    if (timeout_ms) uv_timer_start(&c->deadline, kw__net_deadline_cb, timeout_ms, 0);
}

void kw_net_conn_deadline_stop(kw_net_conn *c) {
    if (c->state == KW__NET_CLOSED) return;
    c->busy = false;
    c->last_activity = uv_now(c->loop);
    uv_timer_stop(&c->deadline);
    if (c->server && kw__net_server_shutting_down(c->server)) {
        kw_error_set(KW_E_NET_SHUTDOWN, "the server is shutting down");
        kw_net_conn_close(c, KW_E_NET_SHUTDOWN);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Reading

bool kw__net_can_deliver(const kw_net_conn *c) {
    return c->state == KW__NET_OPEN && !c->paused && !c->held;
}

static void kw__net_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    kw_net_conn *c = h->data;
    (void)suggested;
    buf->base = (char *)c->rbuf;
    buf->len = c->opt.read_buffer_bytes;
}

static void kw__net_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    kw_net_conn *c = s->data;
    (void)buf;
    if (c->state == KW__NET_CLOSED || nread == 0) return;
    if (nread > 0) {
        c->stats.socket_bytes_in += (uint64_t)nread;
        c->last_activity = uv_now(c->loop);
        if (c->state == KW__NET_CLOSING) return; /* lingering: discard */
        const int rc = c->tr->on_socket_bytes(c, c->rbuf, (size_t)nread);
        if (rc < 0) kw_net_conn_abort(c, rc);
        return;
    }
    if (c->state == KW__NET_CLOSING) {
        kw_net_conn_abort(c, c->close_status);
        return;
    }
    if (nread == UV_EOF) {
        kw_error_set(KW_E_NET_CLOSED, "the peer closed the connection");
        /* what is queued still goes out: the peer may only have closed its sending side */
        kw_net_conn_close(c, KW_E_NET_CLOSED);
        return;
    }
    kw_error_set(KW_E_NET_IO, "read: %s", uv_strerror((int)nread));
    kw_net_conn_abort(c, KW_E_NET_IO);
}

int kw__net_deliver(kw_net_conn *c, const uint8_t *data, size_t len) {
    if (!len) return 0;
    if (!kw__net_can_deliver(c)) {
        /* a pause happened earlier in this round (TLS hands over several records per socket read): keep it all */
        if (c->state != KW__NET_OPEN) return 0;
    } else {
        size_t used = 0;
        const int rc = c->cb.on_read(c, data, len, &used);
        if (rc < 0) return rc;
        KW_RETURN_IF(used > len, KW_E_INTERNAL, "on_read consumed %zu of %zu bytes", used, len);
        if (c->state != KW__NET_OPEN || used == len) return 0;
        data += used;
        len -= used;
    }
    /* Keep the rest and stop reading the socket until the application resumes. */
    kw_net_conn_pause_reading(c);
    uint8_t *nh = realloc(c->held, c->held_len - c->held_off + len);
    KW_RETURN_IF(!nh, KW_E_NOMEM, "cannot keep %zu unread bytes", len);
    if (c->held_off) memmove(nh, nh + c->held_off, c->held_len - c->held_off);
    c->held_len -= c->held_off;
    c->held_off = 0;
    memcpy(nh + c->held_len, data, len);
    c->held = nh;
    c->held_len += len;
    return 0;
}

void kw_net_conn_pause_reading(kw_net_conn *c) {
    c->paused = true;
    uv_idle_stop(&c->resume);
    kw__net_read_stop(c);
}

static void kw__net_resume_cb(uv_idle_t *h) {
    kw_net_conn *c = h->data;
    uv_idle_stop(h);
    if (c->state != KW__NET_OPEN || c->paused) return;
    if (c->held) {
        size_t used = 0;
        const size_t len = c->held_len - c->held_off;
        int rc = c->cb.on_read(c, c->held + c->held_off, len, &used);
        if (rc >= 0 && used > len) rc = kw_error_set(KW_E_INTERNAL, "on_read consumed %zu of %zu bytes", used, len);
        if (rc < 0) {
            kw_net_conn_abort(c, rc);
            return;
        }
        if (c->state != KW__NET_OPEN) return;
        c->held_off += used;
        if (c->held_off < c->held_len) {
            kw_net_conn_pause_reading(c);
            return;
        }
        free(c->held);
        c->held = NULL;
        c->held_len = c->held_off = 0;
        if (c->paused) return;
    }
    int rc = c->tr->pump(c);
    if (rc >= 0 && c->state == KW__NET_OPEN && !c->paused) rc = kw__net_read_start(c);
    if (rc < 0) kw_net_conn_abort(c, rc);
}

void kw_net_conn_resume_reading(kw_net_conn *c) {
    if (c->state != KW__NET_OPEN || !c->paused) return;
    c->paused = false;
    uv_idle_start(&c->resume, kw__net_resume_cb);
}

void kw__net_opened(kw_net_conn *c) {
    c->state = KW__NET_OPEN;
    c->last_activity = uv_now(c->loop);
    uv_timer_stop(&c->timer);
    if (c->opt.idle_timeout_ms) uv_timer_start(&c->timer, kw__net_timer_cb, c->opt.idle_timeout_ms, 0);
    const int rc = c->paused ? 0 : kw__net_read_start(c);
    if (rc < 0) {
        kw_net_conn_abort(c, rc);
        return;
    }
    if (c->cb.on_open) c->cb.on_open(c);
}

// ---------------------------------------------------------------------------------------------------------------
// Writing

static void kw__net_write_cb(uv_write_t *req, int status) {
    kw__net_write *w = req->data;
    kw_net_conn *c = w->conn;
    c->write_queued -= w->socket_bytes;
    int result = 0;
    if (status == 0) {
        c->stats.socket_bytes_out += w->socket_bytes;
        c->stats.app_bytes_out += w->app_bytes;
        c->last_activity = uv_now(c->loop);
    } else if (c->state == KW__NET_CLOSED) {
        result = c->close_status < 0 ? c->close_status : KW_E_NET_CLOSED; /* cancelled by the close */
    } else {
        result = KW_E_NET_IO;
    }
    if (w->done) w->done(c, result, w->user);
    kw__net_buffer_put(c, w->cipher, w->cipher_cap);
    free(w);
    if (status < 0) {
        if (c->state != KW__NET_CLOSED) {
            kw_error_set(KW_E_NET_IO, "write: %s", uv_strerror(status));
            kw_net_conn_abort(c, KW_E_NET_IO);
        }
        return;
    }
    if (c->write_full && c->write_queued <= c->opt.write_low_water && c->state == KW__NET_OPEN) {
        c->write_full = false;
        if (c->cb.on_drain) c->cb.on_drain(c);
    }
    if (c->state == KW__NET_CLOSING) kw__net_maybe_shutdown(c);
}

uint8_t *kw__net_buffer_get(kw_net_conn *c, size_t want, size_t *cap) {
    for (int i = 0; i < KW__NET_SPARES; ++i)
        if (c->spare[i] && c->spare_cap[i] >= want) {
            uint8_t *b = c->spare[i];
            *cap = c->spare_cap[i];
            c->spare[i] = NULL;
            return b;
        }
    *cap = want;
    return malloc(want ? want : 1);
}

void kw__net_buffer_put(kw_net_conn *c, uint8_t *buf, size_t cap) {
    if (!buf) return;
    /* an empty slot, else the smallest kept buffer if this one is larger: large buffers are the ones whose
     * allocation costs (mmap, page faults) */
    int slot = 0;
    for (int i = 0; i < KW__NET_SPARES; ++i) {
        if (!c->spare[i]) {
            slot = i;
            break;
        }
        if (c->spare_cap[i] < c->spare_cap[slot]) slot = i;
    }
    if (c->spare[slot] && c->spare_cap[slot] >= cap) {
        free(buf);
        return;
    }
    free(c->spare[slot]);
    c->spare[slot] = buf;
    c->spare_cap[slot] = cap;
}

int kw__net_socket_write(kw_net_conn *c, kw__net_write *w, uint8_t *buf, size_t len, size_t cap) {
    const bool internal = !w;
    if (internal) {
        w = calloc(1, sizeof *w);
        if (!w) {
            kw__net_buffer_put(c, buf, cap);
            KW_FAIL(KW_E_NOMEM, "cannot queue a %zu-byte write", len);
        }
        w->conn = c;
    }
    uv_buf_t one;
    const uv_buf_t *bufs = w->bufs;
    unsigned n = (unsigned)w->n_bufs;
    w->socket_bytes = 0;
    if (buf) {
        w->cipher = buf;
        w->cipher_cap = cap;
        one = uv_buf_init((char *)buf, (unsigned)len);
        bufs = &one;
        n = 1;
        w->socket_bytes = len;
    } else {
        for (unsigned i = 0; i < n; ++i)
            w->socket_bytes += w->bufs[i].len;
    }
    w->req.data = w;
    const int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, bufs, n, kw__net_write_cb);
    if (rc < 0) {
        if (internal) { /* else the caller frees w and w->cipher */
            kw__net_buffer_put(c, w->cipher, w->cipher_cap);
            free(w);
        }
        KW_FAIL(KW_E_NET_IO, "write: %s", uv_strerror(rc));
    }
    c->write_queued += w->socket_bytes;
    return 0;
}

int kw_net_conn_write(kw_net_conn *c, const void *head, size_t head_len, const kw_net_buf *bufs, size_t n_bufs,
                      kw_net_write_fn done, void *user) {
    KW_RETURN_IF(c->state != KW__NET_OPEN, KW_E_STATE, "write on a connection that is not open");
    KW_RETURN_IF(head_len > KW_NET_WRITE_HEAD_MAX || (head_len && !head) || n_bufs > KW_NET_WRITE_MAX_BUFS ||
                     (n_bufs && !bufs),
                 KW_E_INVALID_ARG, "write: a head of %zu bytes (at most %d) and %zu buffers (at most %d)", head_len,
                 KW_NET_WRITE_HEAD_MAX, n_bufs, KW_NET_WRITE_MAX_BUFS);
    KW_RETURN_IF(c->write_queued >= c->opt.write_max_bytes, KW_E_NET_BACKPRESSURE,
                 "%zu bytes are queued, the limit is %zu", c->write_queued, c->opt.write_max_bytes);
    kw__net_write *w = calloc(1, sizeof *w);
    KW_RETURN_IF(!w, KW_E_NOMEM, "cannot queue a write");
    w->conn = c;
    w->done = done;
    w->user = user;
    if (head_len) {
        memcpy(w->head, head, head_len);
        w->bufs[w->n_bufs++] = uv_buf_init((char *)w->head, (unsigned)head_len);
        w->app_bytes += head_len;
    }
    for (size_t i = 0; i < n_bufs; ++i) {
        if (!bufs[i].len) continue;
        if (bufs[i].len > UINT32_MAX) {
            free(w);
            KW_FAIL(KW_E_INVALID_ARG, "write: a %zu-byte buffer (at most 4 GiB - 1)", bufs[i].len);
        }
        w->bufs[w->n_bufs++] = uv_buf_init((char *)bufs[i].base, (unsigned)bufs[i].len);
        w->app_bytes += bufs[i].len;
    }
    if (!w->app_bytes) {
        free(w);
        KW_FAIL(KW_E_INVALID_ARG, "write: nothing to write");
    }
    const int rc = c->tr->write(c, w);
    if (rc < 0) {
        kw__net_buffer_put(c, w->cipher, w->cipher_cap);
        free(w);
        return rc;
    }
    c->last_activity = uv_now(c->loop);
    if (c->write_queued > c->opt.write_high_water) {
        c->write_full = true;
        return KW_NET_WRITE_FULL;
    }
    return 0;
}

size_t kw_net_conn_write_queued(const kw_net_conn *c) {
    return c->write_queued;
}

// ---------------------------------------------------------------------------------------------------------------
// Accessors

void kw_net_conn_set_callbacks(kw_net_conn *c, const kw_net_conn_callbacks *cb, void *user) {
    c->cb = *cb;
    c->user = user;
}

void *kw_net_conn_user(const kw_net_conn *c) {
    return c->user;
}

uv_loop_t *kw_net_conn_loop(const kw_net_conn *c) {
    return c->loop;
}

const char *kw_net_conn_transport(const kw_net_conn *c) {
    return c->tr->name;
}

void kw_net_conn_get_stats(const kw_net_conn *c, kw_net_conn_stats *out) {
    *out = c->stats;
}

void kw_net_conn_peer_name(const kw_net_conn *c, char *buf, size_t cap) {
    struct sockaddr_storage ss;
    int len = sizeof ss;
    char ip[64] = "?";
    int port = 0;
    if (cap == 0) return;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET6) {
            uv_ip6_name((const struct sockaddr_in6 *)&ss, ip, sizeof ip);
            port = ntohs(((const struct sockaddr_in6 *)&ss)->sin6_port);
            snprintf(buf, cap, "[%s]:%d", ip, port);
            return;
        }
        uv_ip4_name((const struct sockaddr_in *)&ss, ip, sizeof ip);
        port = ntohs(((const struct sockaddr_in *)&ss)->sin_port);
    }
    snprintf(buf, cap, "%s:%d", ip, port);
}

// ---------------------------------------------------------------------------------------------------------------
// Clients

static int kw__net_start_transport(kw_net_conn *c) {
    if (c->opt.no_delay) uv_tcp_nodelay(&c->tcp, 1);
    return c->tr->start(c);
}

static void kw__net_connect_cb(uv_connect_t *req, int status) {
    kw_net_conn *c = req->data;
    if (c->state == KW__NET_CLOSED) return;
    if (status < 0) {
        kw_error_set(KW_E_NET_CONNECT, "connect to %s:%u: %s", c->host, c->port, uv_strerror(status));
        kw_net_conn_abort(c, KW_E_NET_CONNECT);
        return;
    }
    const int rc = kw__net_start_transport(c);
    if (rc < 0) kw_net_conn_abort(c, rc);
}

static int kw__net_connect_addr(kw_net_conn *c, const struct sockaddr *addr) {
    c->connect_req.data = c;
    const int rc = uv_tcp_connect(&c->connect_req, &c->tcp, addr, kw__net_connect_cb);
    KW_RETURN_IF(rc < 0, KW_E_NET_CONNECT, "connect to %s:%u: %s", c->host, c->port, uv_strerror(rc));
    return 0;
}

static void kw__net_resolve_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
    kw_net_conn *c = req->data;
    c->resolving = false;
    if (c->state == KW__NET_CLOSED) {
        uv_freeaddrinfo(res);
        kw__net_conn_release(c);
        return;
    }
    --c->handles_open; /* the resolve is over; the handles still hold the connection */
    if (status < 0 || !res) {
        uv_freeaddrinfo(res);
        kw_error_set(KW_E_NET_ADDRESS, "resolve %s: %s", c->host, uv_strerror(status));
        kw_net_conn_abort(c, KW_E_NET_ADDRESS);
        return;
    }
    /* IPv4 first: a name like localhost often lists ::1 first while servers commonly bind 127.0.0.1 */
    const struct addrinfo *pick = res;
    for (const struct addrinfo *a = res; a; a = a->ai_next)
        if (a->ai_family == AF_INET) {
            pick = a;
            break;
        }
    struct sockaddr_storage addr;
    memcpy(&addr, pick->ai_addr, pick->ai_addrlen);
    uv_freeaddrinfo(res);
    if (addr.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&addr)->sin6_port = htons(c->port);
    else
        ((struct sockaddr_in *)&addr)->sin_port = htons(c->port);
    const int rc = kw__net_connect_addr(c, (const struct sockaddr *)&addr);
    if (rc < 0) kw_net_conn_abort(c, rc);
}

int kw_net_connect(uv_loop_t *loop, const kw_net_client_config *cfg, const kw_net_conn_callbacks *cb, void *user,
                   kw_net_conn **out) {
    KW_RETURN_IF(!cfg || !cfg->host || !cb || !cb->on_read || !cb->on_close, KW_E_INVALID_ARG,
                 "connect: host, on_read and on_close are required");
    const kw__net_transport *tr = cfg->tls ? &kw__net_transport_tls : &kw__net_transport_tcp;
    kw_net_conn *c = kw__net_conn_new(loop, &cfg->conn, tr);
    KW_RETURN_IF(!c, KW_E_NOMEM, "connect: out of memory");
    c->cb = *cb;
    c->user = user;
    c->port = cfg->port;
    c->host = strdup(cfg->host);
    c->server_name = strdup(cfg->server_name ? cfg->server_name : cfg->host);
    int rc = (!c->host || !c->server_name) ? kw_error_set(KW_E_NOMEM, "connect: out of memory") : 0;
    if (rc == 0) rc = tr->attach(c, cfg->tls, false, c->server_name);
    if (rc < 0) {
        /* nothing has run yet: close the handles quietly, the connection frees itself */
        c->cb.on_close = NULL;
        kw_net_conn_abort(c, rc);
        return rc;
    }
    if (c->opt.connect_timeout_ms) uv_timer_start(&c->timer, kw__net_timer_cb, c->opt.connect_timeout_ms, 0);
    struct sockaddr_storage addr;
    if (uv_ip4_addr(c->host, c->port, (struct sockaddr_in *)&addr) == 0 ||
        uv_ip6_addr(c->host, c->port, (struct sockaddr_in6 *)&addr) == 0) {
        rc = kw__net_connect_addr(c, (const struct sockaddr *)&addr);
    } else {
        c->resolve_req.data = c;
        const struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
        rc = uv_getaddrinfo(loop, &c->resolve_req, kw__net_resolve_cb, c->host, NULL, &hints);
        if (rc < 0) {
            rc = kw_error_set(KW_E_NET_ADDRESS, "resolve %s: %s", c->host, uv_strerror(rc));
        } else {
            c->resolving = true;
            ++c->handles_open;
        }
    }
    if (rc < 0) {
        c->cb.on_close = NULL;
        kw_net_conn_abort(c, rc);
        return rc;
    }
    if (out) *out = c;
    return 0;
}

/* Server side: a connection accepted on s (c->tcp already accepted). */
int kw__net_conn_accepted(kw_net_conn *c, kw_net_tls *tls) {
    KW_FORWARD(c->tr->attach(c, tls, true, NULL));
    c->state = KW__NET_HANDSHAKE;
    if (c->opt.connect_timeout_ms) uv_timer_start(&c->timer, kw__net_timer_cb, c->opt.connect_timeout_ms, 0);
    return kw__net_start_transport(c);
}
