/* kw_net_internal.h: what the files of net/ share and nothing outside net/ may use: the connection struct, the
 * transport vtable and the hooks between connections and their server.
 *
 * The transport vtable follows redis' ConnectionType: a connection holds a pointer to the ops of its transport
 * (kw__net_transport_tcp or kw__net_transport_tls) and the core calls through it, so plain TCP and TLS share the
 * socket handling, timeouts, write accounting and shutdown, and TLS is only a byte layer between the socket and
 * the application: ciphertext in from the socket -> plaintext to on_read; plaintext writes -> ciphertext out.
 */
#ifndef KW_NET_INTERNAL_H
#define KW_NET_INTERNAL_H

#include <openssl/ssl.h>

#include "net/kw_net.h"

typedef struct kw__net_write kw__net_write;

#define KW__NET_SPARES 4 /* ciphertext buffers a connection keeps: enough for the writes in flight at high water */

typedef struct kw__net_transport {
    const char *name;
    /* Per-connection state (TLS: the SSL object and its memory BIOs). tls is the context the connection uses. */
    int (*attach)(kw_net_conn *c, kw_net_tls *tls, bool server, const char *server_name);
    void (*detach)(kw_net_conn *c);
    /* The socket is connected: TCP opens the connection at once, TLS starts its handshake. */
    int (*start)(kw_net_conn *c);
    /* Bytes read from the socket. */
    int (*on_socket_bytes)(kw_net_conn *c, const uint8_t *data, size_t len);
    /* Sends the plaintext of w (its head and buffers) to the socket; w completes when its bytes are written. */
    int (*write)(kw_net_conn *c, kw__net_write *w);
    /* Delivers plaintext buffered inside the transport (after a pause ends). */
    int (*pump)(kw_net_conn *c);
    /* Queues the graceful end of the byte stream (TLS close_notify); TCP has nothing to add. */
    void (*close_notify)(kw_net_conn *c);
} kw__net_transport;

extern const kw__net_transport kw__net_transport_tcp;
extern const kw__net_transport kw__net_transport_tls;

enum kw__net_state {
    KW__NET_CONNECTING, /* client: resolving or connecting */
    KW__NET_HANDSHAKE,  /* connected, TLS handshake under way */
    KW__NET_OPEN,       /* usable */
    KW__NET_CLOSING,    /* graceful close: writes finishing */
    KW__NET_CLOSED,     /* handles closing; only close callbacks remain */
};

/* One write: the copied head, the borrowed buffers, and (TLS) the ciphertext it owns. Freed after its done
 * callback. */
struct kw__net_write {
    uv_write_t req; /* req.data is the connection */
    kw_net_conn *conn;
    kw_net_write_fn done;
    void *user;
    size_t socket_bytes; /* bytes this write puts on the socket (counted in the queue until it completes) */
    size_t app_bytes;
    uint8_t *cipher; /* TLS: owned ciphertext (from kw__net_buffer_get) */
    size_t cipher_cap;
    size_t n_bufs;
    uv_buf_t bufs[1 + KW_NET_WRITE_MAX_BUFS];
    uint8_t head[KW_NET_WRITE_HEAD_MAX];
};

struct kw_net_conn {
    uv_tcp_t tcp;        /* the socket; tcp.data is the connection */
    uv_timer_t timer;    /* connect timeout, then idle timeout */
    uv_timer_t deadline; /* per-request deadline */
    uv_idle_t resume;    /* delivers kept bytes after a pause, from the loop */
    uv_connect_t connect_req;
    uv_getaddrinfo_t resolve_req;
    uv_shutdown_t shutdown_req;
    uv_loop_t *loop;
    enum kw__net_state state;
    int handles_open; /* handles not yet closed, plus a pending resolve: freed at 0 once closed */
    bool resolving;
    int close_status;

    const kw__net_transport *tr;
    SSL *ssl;         /* TLS transport state (NULL for TCP) */
    BIO *bio;         /* owned by ssl: the byte layer under it, in both directions (kw_net_tls.c) */
    uint8_t *tls_out; /* ciphertext OpenSSL wrote and nobody has sent yet (owned), tls_out_len of tls_out_cap */
    size_t tls_out_len, tls_out_cap;
    const uint8_t *tls_in; /* ciphertext not yet read by OpenSSL: borrowed from rbuf during a read callback, or
                              tls_in_held after it */
    size_t tls_in_len;
    uint8_t *tls_in_held;           /* owned copy of ciphertext kept across a pause */
    uint8_t *tls_stage;             /* one record of plaintext gathered across a write's buffers (owned) */
    uint8_t *spare[KW__NET_SPARES]; /* ciphertext buffers kept for reuse (large ones would be mmap'ed each time) */
    size_t spare_cap[KW__NET_SPARES];

    kw_net_conn_options opt;
    kw_net_conn_callbacks cb;
    void *user;

    kw_net_server *server; /* the server that accepted it, or NULL */
    kw_net_conn *prev, *next;

    uint8_t *rbuf;  /* socket read buffer (owned), opt.read_buffer_bytes */
    uint8_t *plain; /* TLS plaintext buffer (owned) */
    size_t plain_cap;
    uint8_t *held; /* bytes kept by a pause (owned) */
    size_t held_len, held_off;
    bool paused;  /* the application paused reading */
    bool reading; /* uv_read_start is active */

    size_t write_queued; /* socket bytes queued and not yet written */
    bool write_full;     /* a write returned FULL; on_drain is due */
    bool shutdown_started;
    bool lingering; /* our FIN is out; reading and discarding until the peer's FIN or the linger time */
    bool busy;      /* a request is in flight (deadline started) */
    uint32_t deadline_ms;
    char close_detail[256]; /* kw_error_detail() when the close began, restored for on_close */
    uint64_t last_activity; /* uv_now of the last read or write */
    kw_net_conn_stats stats;
    char *server_name; /* client TLS: the name to verify (owned) */
    char *host;        /* client: the host to connect to (owned) */
    uint16_t port;
};

/* Core services for the transports and the server. */
/* A new connection in state CONNECTING with its handles initialised (not yet attached to a transport). */
kw_net_conn *kw__net_conn_new(uv_loop_t *loop, const kw_net_conn_options *opt, const kw__net_transport *tr);
/* The server accepted c->tcp: attach the transport (tls NULL for TCP) and start it. */
int kw__net_conn_accepted(kw_net_conn *c, kw_net_tls *tls);
/* Hands application bytes to on_read, keeping what it leaves (a pause). Returns 0 or a negative status. */
int kw__net_deliver(kw_net_conn *c, const uint8_t *data, size_t len);
/* Starts reading the socket (idempotent). */
int kw__net_read_start(kw_net_conn *c);
/* The connection became usable. */
void kw__net_opened(kw_net_conn *c);
/* Puts bytes the transport owns on the socket: buf (len bytes of a cap-byte buffer from kw__net_buffer_get) is taken
 * over and released when the write completes. w is the user write they belong to, or NULL for internal bytes (TLS
 * handshake, alerts). buf NULL: w's own buffers go out as they are (TCP). */
int kw__net_socket_write(kw_net_conn *c, kw__net_write *w, uint8_t *buf, size_t len, size_t cap);
/* A buffer of at least want bytes (a kept one when it is large enough), its capacity in *cap; NULL when out of
 * memory. */
uint8_t *kw__net_buffer_get(kw_net_conn *c, size_t want, size_t *cap);
/* Keeps buf for reuse or frees it; NULL is a no-op. */
void kw__net_buffer_put(kw_net_conn *c, uint8_t *buf, size_t cap);
/* Whether on_read may be called now (open or closing, not paused). */
bool kw__net_can_deliver(const kw_net_conn *c);

/* Server hooks. */
void kw__net_server_conn_closed(kw_net_server *s, kw_net_conn *c);
bool kw__net_server_shutting_down(const kw_net_server *s);

#endif /* KW_NET_INTERNAL_H */
