/* net_test_util.h: what the net tests share: running a libuv loop until a condition holds (with a watchdog that
 * fails the test instead of hanging), closing a loop with a check that no handle leaked, a byte-collecting client,
 * and test certificates made with the OpenSSL C API in a temporary folder. Test-only code. */
#ifndef NET_TEST_UTIL_H
#define NET_TEST_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "net/kw_net.h"

/* Runs the loop until *flag is true; fails the test after timeout_ms of loop time. */
void nt_run_until(uv_loop_t *loop, const bool *flag, uint32_t timeout_ms);

/* Runs the loop until cond(arg) is true; fails the test after timeout_ms of loop time. */
void nt_run_until_fn(uv_loop_t *loop, bool (*cond)(void *arg), void *arg, uint32_t timeout_ms);

/* Runs the loop for ms of loop time. */
void nt_run_for(uv_loop_t *loop, uint32_t ms);

/* Closes every handle still open (there should be none: a leak fails the test), runs the loop dry and closes it. */
void nt_loop_finish(uv_loop_t *loop);

/* Connection options for tests: short timeouts where a test needs them, otherwise generous. */
void nt_conn_options(kw_net_conn_options *opt);

/* A client that collects everything it reads and records how it ended. */
typedef struct nt_client {
    kw_net_conn *conn;
    bool opened, closed;
    int close_status;
    uint8_t *data; /* everything read (owned) */
    size_t len;
    int pause_at; /* pause reading once len >= pause_at (0: never) */
} nt_client;

/* Connects c to host:port (tls may be NULL) with opt (NULL: nt_conn_options). Fails the test if it cannot start. */
void nt_client_connect(uv_loop_t *loop, nt_client *c, const char *host, uint16_t port, kw_net_tls *tls,
                       const char *server_name, const kw_net_conn_options *opt);

/* Frees what the client collected (after it closed). */
void nt_client_free(nt_client *c);

/* Test PKI written into dir by kw_net_pki_generate: ca.pem, server.pem/server.key (SAN localhost and 127.0.0.1),
 * client.pem/client.key; and a second, unrelated one in dir/rogue/ (rogue/ca.pem, rogue/client.pem, ...). */
void nt_certs_make(const char *dir);

/* dir/name in a static buffer (one call at a time). */
const char *nt_path(const char *dir, const char *name);

/* A new temporary folder (mkdtemp); remove it with kw_test_remove_tree. */
char *nt_tempdir(void);

#endif /* NET_TEST_UTIL_H */
