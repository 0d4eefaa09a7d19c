/* kw_net.h: the transport of the kvwire daemons on libuv: TCP servers and clients with connect, idle and per-request
 * timeouts, bounded write queues with backpressure, graceful shutdown, TLS (OpenSSL as a byte layer under the
 * application bytes, through memory BIOs), a signal watcher and a cross-thread completion queue. The HTTP/1.1 front
 * is in kw_http.h.
 *
 * net/ depends on common/ only (plus libuv, OpenSSL, http-parser). It carries bytes, not frames: the daemons give a
 * connection a read callback that feeds proto/'s frame decoder (kw_proto_decoder_feed_all) and write frames as a
 * small copied head (the frame header) plus borrowed payload buffers; that pair is the "framed connection".
 *
 * Threads. Everything here runs on the thread of the libuv loop it was created on, except kw_net_async_post, which
 * any thread may call. Callbacks run on the loop thread.
 *
 * libuv ownership rules, which this module follows and its users inherit:
 *  - A handle (uv_tcp_t, uv_timer_t, uv_async_t, uv_signal_t) is freed only in its close callback or later. A
 *    kw_net_conn owns its handles and frees itself after on_close returns; a server, async queue or signal watcher
 *    frees itself (or is freed) after its close completes. Never free one of them from a callback it is running.
 *  - uv_write borrows the buffers until its write callback: kw_net_conn_write copies only the small head, and the
 *    caller's payload buffers must stay alive and unchanged until the write's done callback (which runs exactly once
 *    for every accepted write, also when the connection closes first).
 *  - The read buffer handed to libuv belongs to the connection; bytes given to on_read are borrowed for the duration
 *    of the call only.
 *  - A libuv callback is never invoked from inside the call that scheduled it: done callbacks, on_close and on_drain
 *    run from the loop, so a caller may hold locks or iterate its own state while calling into this module.
 */
#ifndef KW_NET_H
#define KW_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

typedef struct kw_net_conn kw_net_conn;
typedef struct kw_net_server kw_net_server;
typedef struct kw_net_tls kw_net_tls;

// ---------------------------------------------------------------------------------------------------------------
// TLS contexts

typedef struct kw_net_tls_config {
    const char *cert_file; /* PEM certificate (chain): required for a server; for a client, its mutual-TLS identity */
    const char *key_file;  /* PEM private key of cert_file */
    const char *ca_file;   /* PEM trust anchors for verifying the peer; NULL: the system store (client only) */
    bool verify_peer;      /* client: verify the server's certificate and name (should be true outside tests);
                              server: require a client certificate signed by ca_file (mutual TLS) */
} kw_net_tls_config;

/* Creates a TLS context (TLS 1.2 or 1.3; no session tickets) for servers (server = true) or clients. Files are read
 * now. Owned by the caller: kw_net_tls_free, after every server and connection using it is closed.
 * @return 0, KW_E_INVALID_ARG (missing server certificate, or verify without trust anchors on a server), KW_E_IO
 * (a file cannot be read), KW_E_NET_TLS (OpenSSL refused a file; its reason is in the detail) or KW_E_NOMEM. */
int kw_net_tls_create(const kw_net_tls_config *cfg, bool server, kw_net_tls **out);

/* Frees the context; NULL is a no-op. */
void kw_net_tls_free(kw_net_tls *tls);

/* Reads cfg's files again into a new context that replaces the one inside tls (same role): connections accepted or
 * made from now on use it, open ones keep theirs (certificate rotation, a SIGHUP reload). On failure tls is unchanged.
 * @return as kw_net_tls_create. */
int kw_net_tls_reload(kw_net_tls *tls, const kw_net_tls_config *cfg);

/* A private PKI for deployments, tests and benchmarks (kvwire gen-certs): one CA, a server certificate, a client
 * certificate for mutual TLS; EC P-256, SHA-256. */
typedef struct kw_net_pki_options {
    const char *server_san; /* subjectAltName of the server certificate; NULL: "DNS:localhost,IP:127.0.0.1" */
    const char *ca_name;    /* the CA's common name; NULL: "kvwire CA" */
    uint32_t days;          /* validity; 0: 365 */
} kw_net_pki_options;

/* Writes dir/ca.pem, ca.key, server.pem, server.key, client.pem, client.key (keys mode 0600) into the existing
 * folder dir, replacing files of those names. opt may be NULL. @return 0, KW_E_IO, KW_E_NET_TLS (OpenSSL refused a
 * step, e.g. a malformed server_san), KW_E_INVALID_ARG or KW_E_NOMEM. */
int kw_net_pki_generate(const char *dir, const kw_net_pki_options *opt);

// ---------------------------------------------------------------------------------------------------------------
// Connections

typedef struct kw_net_conn_options {
    uint32_t connect_timeout_ms; /* client: resolve + TCP connect + TLS handshake; server: TLS handshake. 0: none */
    uint32_t idle_timeout_ms;    /* abort after this long with nothing read or written, while no request is in
                                    flight (kw_net_conn_deadline_start); 0: never */
    size_t write_high_water;     /* a write that leaves more bytes queued returns KW_NET_WRITE_FULL */
    size_t write_low_water;      /* after a FULL, on_drain runs once the queue is down to this */
    size_t write_max_bytes;      /* while this many bytes are queued, writes are refused (KW_E_NET_BACKPRESSURE) */
    size_t read_buffer_bytes;    /* socket read buffer */
    bool no_delay;               /* TCP_NODELAY (small control frames go out at once) */
} kw_net_conn_options;

/* Defaults: connect 10 s, idle 60 s, high water 4 MiB, low water 1 MiB, max 64 MiB, 256 KiB reads, no_delay. */
void kw_net_conn_options_default(kw_net_conn_options *opt);

typedef struct kw_net_conn_callbacks {
    /* The connection is usable: connected, and TLS established when TLS is on. Writes are allowed from now on.
     * Optional. */
    void (*on_open)(kw_net_conn *c);
    /* Application bytes arrived (plaintext under TLS), borrowed for this call. Set *used to the bytes consumed;
     * consuming less than len pauses reading and keeps the rest, which kw_net_conn_resume_reading delivers again
     * (that is how a slow consumer pushes back on its peer). Return 0, or a negative kw_status to abort the
     * connection with it. Required. */
    int (*on_read)(kw_net_conn *c, const uint8_t *data, size_t len, size_t *used);
    /* After a write returned KW_NET_WRITE_FULL, the queue has drained to the low water mark. Optional. */
    void (*on_drain)(kw_net_conn *c);
    /* The server holding this connection began a graceful shutdown while a request was in flight on it: finish it
     * (the connection closes itself when kw_net_conn_deadline_stop ends the request). Optional. */
    void (*on_shutdown)(kw_net_conn *c);
    /* The last callback: status 0 after a clean close by this side, KW_E_NET_CLOSED when the peer closed, or why
     * it failed (timeouts, TLS, I/O, shutdown, an on_read failure). The connection is freed when it returns. A
     * connection that never opened (connect failure) gets only this. Required. */
    void (*on_close)(kw_net_conn *c, int status);
} kw_net_conn_callbacks;

/* Sets the callbacks and user pointer (a server's accept callback must call it). */
void kw_net_conn_set_callbacks(kw_net_conn *c, const kw_net_conn_callbacks *cb, void *user);
void *kw_net_conn_user(const kw_net_conn *c);
uv_loop_t *kw_net_conn_loop(const kw_net_conn *c);
/* The transport's name: "tcp" or "tls". */
const char *kw_net_conn_transport(const kw_net_conn *c);
/* "127.0.0.1:4321" or "[::1]:4321" of the peer into buf (cap bytes, truncated, always terminated). */
void kw_net_conn_peer_name(const kw_net_conn *c, char *buf, size_t cap);

/* A borrowed buffer of a write. */
typedef struct kw_net_buf {
    const void *base;
    size_t len;
} kw_net_buf;

#define KW_NET_WRITE_HEAD_MAX 64 /* bytes of head a write copies */
#define KW_NET_WRITE_MAX_BUFS 8  /* borrowed buffers per write */
#define KW_NET_WRITE_FULL     1  /* kw_net_conn_write: queued, but the queue is over the high water mark */

/* Runs once per accepted write, from the loop: status 0 when every byte went to the kernel, or the negative status
 * the connection closed with first. The borrowed buffers may be freed or reused from here on. */
typedef void (*kw_net_write_fn)(kw_net_conn *c, int status, void *user);

/* Queues head[0..head_len) (copied, at most KW_NET_WRITE_HEAD_MAX bytes; may be NULL/0) followed by the bytes of
 * bufs[0..n_bufs) (borrowed until done runs; at most KW_NET_WRITE_MAX_BUFS). Bytes go out in call order. Under TLS
 * the bytes are encrypted at once, as full 16 KiB records across the head and buffers (only the write's last record
 * is short: put a frame's head and body in one write), and done still runs only when the encrypted bytes are
 * written.
 * @return 0 (queued), KW_NET_WRITE_FULL (queued; stop producing until on_drain), or, with nothing queued and done
 * never called: KW_E_NET_BACKPRESSURE (the queue holds write_max_bytes or more), KW_E_STATE (not open yet, or
 * closing), KW_E_INVALID_ARG, KW_E_NET_TLS, KW_E_NET_IO, KW_E_NOMEM. done may be NULL. */
int kw_net_conn_write(kw_net_conn *c, const void *head, size_t head_len, const kw_net_buf *bufs, size_t n_bufs,
                      kw_net_write_fn done, void *user);

/* Queues buf[0..len) (malloc'ed; the connection owns it from this call on, whatever the outcome, and frees it once
 * it is written or the connection closes): for a buffer made only to be sent, such as a packed control frame.
 * @return as kw_net_conn_write. */
int kw_net_conn_write_owned(kw_net_conn *c, void *buf, size_t len);

/* Bytes queued for the socket and not yet written. */
size_t kw_net_conn_write_queued(const kw_net_conn *c);

/* Stops delivering bytes to on_read until kw_net_conn_resume_reading (the socket is not read meanwhile). */
void kw_net_conn_pause_reading(kw_net_conn *c);

/* Delivers the bytes kept by a pause (from the loop, not from inside this call) and reads the socket again. */
void kw_net_conn_resume_reading(kw_net_conn *c);

/* Marks a request in flight: the idle timeout is suspended, a graceful server shutdown waits for it, and when
 * timeout_ms (0: no limit) passes before kw_net_conn_deadline_stop, the connection is aborted with
 * KW_E_NET_REQUEST_TIMEOUT. Starting again replaces the deadline. */
void kw_net_conn_deadline_start(kw_net_conn *c, uint32_t timeout_ms);

/* Ends the request in flight. If its server is shutting down, the connection then closes (KW_E_NET_SHUTDOWN). */
void kw_net_conn_deadline_stop(kw_net_conn *c);

/* Closes gracefully: stops reading, lets the queued writes finish (TLS: sends close_notify), shuts the socket down,
 * then closes; on_close gets status. Idempotent; a later abort still cuts it short. */
void kw_net_conn_close(kw_net_conn *c, int status);

/* Closes now: queued writes fail (their done callbacks get status), on_close gets status. Idempotent. */
void kw_net_conn_abort(kw_net_conn *c, int status);

typedef struct kw_net_conn_stats {
    uint64_t socket_bytes_in, socket_bytes_out; /* bytes on the socket (TLS records included) */
    uint64_t app_bytes_in, app_bytes_out;       /* application bytes (the plaintext under TLS) */
} kw_net_conn_stats;

void kw_net_conn_get_stats(const kw_net_conn *c, kw_net_conn_stats *out);

// ---------------------------------------------------------------------------------------------------------------
// Clients

typedef struct kw_net_client_config {
    const char *host; /* a numeric address or a name (resolved on libuv's thread pool) */
    uint16_t port;
    kw_net_tls *tls;         /* NULL: plaintext; else a client context, borrowed, must outlive the connection */
    const char *server_name; /* TLS: the name (or IP address) the server's certificate must match; NULL: host */
    kw_net_conn_options conn;
} kw_net_client_config;

/* Starts connecting and returns the connection at once (owned by the module: it is freed after on_close). Then
 * on_open runs when it is usable, or on_close with KW_E_NET_CONNECT, KW_E_NET_CONNECT_TIMEOUT, KW_E_NET_ADDRESS,
 * KW_E_NET_TLS, KW_E_NET_TLS_VERIFY... cfg and its strings are copied.
 * @return 0, KW_E_INVALID_ARG or KW_E_NOMEM (then no callback runs). */
int kw_net_connect(uv_loop_t *loop, const kw_net_client_config *cfg, const kw_net_conn_callbacks *cb, void *user,
                   kw_net_conn **out);

// ---------------------------------------------------------------------------------------------------------------
// Servers

typedef struct kw_net_server_config {
    const char *host;         /* numeric address to bind: "127.0.0.1", "0.0.0.0", "::" */
    uint16_t port;            /* 0: an ephemeral port (kw_net_server_port) */
    int backlog;              /* listen backlog; 0: 128 */
    uint32_t max_connections; /* accepted connections beyond it are closed at once; 0: no limit */
    kw_net_tls *tls;          /* NULL: plaintext; else a server context, borrowed, must outlive the server */
    kw_net_conn_options conn;
} kw_net_server_config;

/* Called for every accepted connection; it must call kw_net_conn_set_callbacks (else the connection is closed).
 * Under TLS, on_open follows when the handshake is done. */
typedef void (*kw_net_accept_fn)(kw_net_server *s, kw_net_conn *c, void *user);

/* Binds and listens. Owned by the caller: kw_net_server_shutdown, then kw_net_server_free after its done callback.
 * @return 0, KW_E_NET_ADDRESS (bad host, port in use), KW_E_INVALID_ARG or KW_E_NOMEM. */
int kw_net_server_start(uv_loop_t *loop, const kw_net_server_config *cfg, kw_net_accept_fn on_accept, void *user,
                        kw_net_server **out);

/* The bound port. */
uint16_t kw_net_server_port(const kw_net_server *s);

/* Open connections. */
size_t kw_net_server_connections(const kw_net_server *s);

/* Graceful shutdown: takes the connections the kernel has already accepted, then stops listening; lets the
 * connections with a request in flight finish (on_shutdown tells them) and close when their request ends; gives the
 * others 500 ms (at most deadline_ms) to start one more request, which is handled likewise (so a client that
 * connected or sent its request just before the shutdown gets a response, not a closed connection), then closes
 * them; after deadline_ms aborts whatever is left with KW_E_NET_SHUTDOWN. done runs once, from the loop, when every
 * connection and handle is closed. Calling it again does nothing. */
void kw_net_server_shutdown(kw_net_server *s, uint32_t deadline_ms, void (*done)(kw_net_server *s, void *user),
                            void *user);

/* Frees a server whose shutdown is done; NULL is a no-op. */
void kw_net_server_free(kw_net_server *s);

// ---------------------------------------------------------------------------------------------------------------
// Signals

typedef struct kw_net_signals kw_net_signals;

/* Calls on_signal(signum, user) on the loop thread when SIGTERM or SIGINT arrives (the process's own sigaction handler
 * only marks the signal and wakes the loop). One watcher per process at a time. Also sets SIGPIPE to be ignored,
 * process-wide: a write to a peer that went away must fail with EPIPE instead of killing the daemon (a program that
 * does not call this must do it). Owned by the caller: kw_net_signals_close. @return 0, KW_E_STATE while another
 * watcher is open (or its handle not yet closed: run the loop), or KW_E_IO. */
int kw_net_signals_watch(uv_loop_t *loop, void (*on_signal)(int signum, void *user), void *user, kw_net_signals **out);

/* Stops watching: SIGTERM and SIGINT are ignored from then on (never the default action: a stopping daemon must not be
 * killed by a repeated signal; a caller that wants the default back sets it). The handle closes with the loop's next
 * turn. NULL, or a watcher already closed, is a no-op. */
void kw_net_signals_close(kw_net_signals *s);

// ---------------------------------------------------------------------------------------------------------------
// Cross-thread completion queue

/* Embed this in the item a worker thread hands back to the loop (intrusive: posting allocates nothing). */
typedef struct kw_net_async_item {
    struct kw_net_async_item *next;
} kw_net_async_item;

typedef void (*kw_net_async_fn)(kw_net_async_item *item, void *user);

typedef struct kw_net_async kw_net_async;

/* A queue that delivers items posted from any thread to fn on the loop thread, in posting order. uv_async_send
 * coalesces wake-ups, so the callback drains the whole locked list each time rather than expecting one call per
 * post. Owned by the caller: kw_net_async_close. @return 0, KW_E_NOMEM or KW_E_IO. */
int kw_net_async_create(uv_loop_t *loop, kw_net_async_fn fn, void *user, kw_net_async **out);

/* Any thread: queues item (owned by the queue until fn receives it) and wakes the loop.
 * @return 0, or KW_E_STATE once the queue is closing (the caller keeps the item). */
int kw_net_async_post(kw_net_async *q, kw_net_async_item *item);

/* Loop thread: delivers the items still queued (from inside this call), refuses later posts, and frees the queue
 * once its handle is closed. NULL is a no-op. */
void kw_net_async_close(kw_net_async *q);

#endif /* KW_NET_H */
