/* kw_net_service.h: the daemons' side of the service manager (systemd's notify protocol, through libsystemd's
 * sd_notify): READY=1 once a daemon serves, STATUS= lines saying what it loaded and serves, WATCHDOG=1 pings from
 * the event loop while the manager asks for them (WatchdogSec=), RELOADING=1 around a reload that SIGHUP asks for,
 * STOPPING=1 when it begins to shut down. Everything is a no-op without NOTIFY_SOCKET (a daemon started by hand, by
 * SLURM or by a test that does not listen), except the SIGHUP watcher, which always runs.
 *
 * Threads: everything here runs on the loop thread. The watchdog is a libuv timer on that loop at half the interval
 * the manager gave (WATCHDOG_USEC, for this process when WATCHDOG_PID is set), so a loop that stops turning stops
 * the pings and the manager restarts the daemon: the pings say the loop is alive, not that the compute thread is.
 *
 * Not here: SIGTERM and SIGINT (kw_net_signals_watch in kw_net.h), what a reload changes (the daemons).
 */
#ifndef KW_NET_SERVICE_H
#define KW_NET_SERVICE_H

#include <stdint.h>

#include <uv.h>

typedef struct kw_net_service kw_net_service;

/* Starts the watchdog timer (when the manager enabled the watchdog for this process) and watches SIGHUP, calling
 * on_reload(user) on the loop thread for each one (NULL: SIGHUP is ignored instead of killing the process). program
 * names the daemon in log lines (borrowed, must outlive the service). Owned by the caller: kw_net_service_close.
 * @return 0, KW_E_NOMEM or KW_E_IO (libuv refused the timer or the signal handle). */
int kw_net_service_start(uv_loop_t *loop, const char *program, void (*on_reload)(void *user), void *user,
                         kw_net_service **out);

/* The watchdog interval the manager asked for, in microseconds, or 0 when it is off. */
uint64_t kw_net_service_watchdog_usec(const kw_net_service *s);

/* Sends STATUS=<printf text> (a line for `systemctl status`). */
void kw_net_service_status(kw_net_service *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Sends READY=1 with STATUS=<printf text>: the daemon serves (models loaded, port listening), or serves again after a
 * reload. */
void kw_net_service_ready(kw_net_service *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Sends RELOADING=1 (with the monotonic time systemd 253+ expects in MONOTONIC_USEC): a reload begins; READY=1 ends
 * it. */
void kw_net_service_reloading(kw_net_service *s);

/* Sends STOPPING=1 with STATUS=<printf text>, and stops the watchdog pings (a shutdown may take longer than the
 * interval; systemd's stop timeout covers it). */
void kw_net_service_stopping(kw_net_service *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Closes the timer and the SIGHUP handle; the service frees itself once they are closed (run the loop). NULL is a
 * no-op. */
void kw_net_service_close(kw_net_service *s);

#endif /* KW_NET_SERVICE_H */
