/* kw_net_tcp.c: the plain TCP transport: application bytes are socket bytes, in both directions, without copies
 * (the write's borrowed buffers go to uv_write as they are). */
#include "net/kw_net_internal.h"

static int kw__net_tcp_attach(kw_net_conn *c, kw_net_tls *tls, bool server, const char *server_name) {
    (void)c, (void)tls, (void)server, (void)server_name;
    return 0;
}

static void kw__net_tcp_detach(kw_net_conn *c) {
    (void)c;
}

static int kw__net_tcp_start(kw_net_conn *c) {
    kw__net_opened(c);
    return 0;
}

static int kw__net_tcp_on_socket_bytes(kw_net_conn *c, const uint8_t *data, size_t len) {
    c->stats.app_bytes_in += len;
    return kw__net_deliver(c, data, len);
}

static int kw__net_tcp_write(kw_net_conn *c, kw__net_write *w) {
    return kw__net_socket_write(c, w, NULL, 0, 0);
}

static int kw__net_tcp_pump(kw_net_conn *c) {
    (void)c;
    return 0;
}

static void kw__net_tcp_close_notify(kw_net_conn *c) {
    (void)c;
}

const kw__net_transport kw__net_transport_tcp = {
    .name = "tcp",
    .attach = kw__net_tcp_attach,
    .detach = kw__net_tcp_detach,
    .start = kw__net_tcp_start,
    .on_socket_bytes = kw__net_tcp_on_socket_bytes,
    .write = kw__net_tcp_write,
    .pump = kw__net_tcp_pump,
    .close_notify = kw__net_tcp_close_notify,
};
