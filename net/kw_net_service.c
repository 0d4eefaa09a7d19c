/* kw_net_service.c: systemd's notify protocol for the daemons (see kw_net_service.h): sd_notify messages, the
 * watchdog timer and the SIGHUP watcher on the daemon's loop. sd_notify returns 0 without NOTIFY_SOCKET, so a
 * daemon outside systemd pays one getenv per message. A message that cannot be sent is logged once at debug level
 * and otherwise ignored: the manager not listening must never stop a daemon from serving.
 */
#include "net/kw_net_service.h"

#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <systemd/sd-daemon.h>

#include "common/kw_log.h"
#include "common/kw_status.h"
#include "common/kw_time.h"

#define KW__NET_SERVICE_MESSAGE_MAX 1024 /* bytes of one notify message (STATUS text is cut to fit) */

struct kw_net_service {
    uv_timer_t watchdog;
    uv_signal_t hup;
    int handles_open; /* the service frees itself when the last one is closed */
    bool watchdog_running;
    uint64_t watchdog_usec;
    const char *program; /* borrowed */
    void (*on_reload)(void *user);
    void *user;
    bool send_failed; /* logged once */
};

static void kw__net_service_send(kw_net_service *s, const char *message) {
    if (!s) return;
    const int rc = sd_notify(0, message);
    if (rc < 0 && !s->send_failed) {
        s->send_failed = true;
        KW_LOG_DEBUG("%s: cannot notify the service manager (%s)", s->program, strerror(-rc));
    }
}

/* head followed by STATUS=<fmt, ap> (text only up to the first newline: a newline would start another field). */
static void kw__net_service_send_status(kw_net_service *s, const char *head, const char *fmt, va_list ap) {
    char text[KW__NET_SERVICE_MESSAGE_MAX - 64];
    vsnprintf(text, sizeof text, fmt, ap);
    text[strcspn(text, "\n")] = '\0';
    char message[KW__NET_SERVICE_MESSAGE_MAX];
    snprintf(message, sizeof message, "%sSTATUS=%s", head, text);
    kw__net_service_send(s, message);
}

static void kw__net_service_ping(uv_timer_t *h) {
    kw__net_service_send(h->data, "WATCHDOG=1");
}

static void kw__net_service_hup(uv_signal_t *h, int signum) {
    kw_net_service *s = h->data;
    (void)signum;
    if (s->on_reload) s->on_reload(s->user);
}

static void kw__net_service_closed(uv_handle_t *h) {
    kw_net_service *s = h->data;
    if (--s->handles_open == 0) free(s);
}

int kw_net_service_start(uv_loop_t *loop, const char *program, void (*on_reload)(void *user), void *user,
                         kw_net_service **out) {
    KW_RETURN_IF(!loop || !program || !out, KW_E_INVALID_ARG, "service: NULL argument");
    *out = NULL;
    kw_net_service *s = calloc(1, sizeof *s);
    KW_RETURN_IF(!s, KW_E_NOMEM, "service: out of memory");
    s->program = program;
    s->on_reload = on_reload;
    s->user = user;
    uv_timer_init(loop, &s->watchdog);
    uv_signal_init(loop, &s->hup);
    s->watchdog.data = s->hup.data = s;
    s->handles_open = 2;
    int rc = uv_signal_start(&s->hup, kw__net_service_hup, SIGHUP);
    uint64_t usec = 0;
    /* > 0: the manager wants pings from this process (WATCHDOG_USEC set, WATCHDOG_PID absent or ours) */
    if (rc == 0 && sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
        s->watchdog_usec = usec;
        uint64_t every_ms = usec / 2000;
        if (every_ms == 0) every_ms = 1;
        rc = uv_timer_start(&s->watchdog, kw__net_service_ping, every_ms, every_ms);
        s->watchdog_running = rc == 0;
        if (rc == 0)
            KW_LOG_INFO("%s: watchdog every %llu ms (the manager's interval is %llu ms)", program,
                        (unsigned long long)every_ms, (unsigned long long)(usec / 1000));
    }
    if (rc < 0) {
        kw_net_service_close(s);
        KW_FAIL(KW_E_IO, "service: %s", uv_strerror(rc));
    }
    *out = s;
    return 0;
}

uint64_t kw_net_service_watchdog_usec(const kw_net_service *s) {
    return s ? s->watchdog_usec : 0;
}

void kw_net_service_status(kw_net_service *s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    kw__net_service_send_status(s, "", fmt, ap);
    va_end(ap);
}

void kw_net_service_ready(kw_net_service *s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    kw__net_service_send_status(s, "READY=1\n", fmt, ap);
    va_end(ap);
}

void kw_net_service_reloading(kw_net_service *s) {
    char message[96];
    snprintf(message, sizeof message, "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)(kw_time_now_ns() / 1000));
    kw__net_service_send(s, message);
}

void kw_net_service_stopping(kw_net_service *s, const char *fmt, ...) {
    if (s && s->watchdog_running) {
        uv_timer_stop(&s->watchdog);
        s->watchdog_running = false;
    }
    va_list ap;
    va_start(ap, fmt);
    kw__net_service_send_status(s, "STOPPING=1\n", fmt, ap);
    va_end(ap);
}

void kw_net_service_close(kw_net_service *s) {
    if (!s) return;
    uv_close((uv_handle_t *)&s->watchdog, kw__net_service_closed);
    uv_close((uv_handle_t *)&s->hup, kw__net_service_closed);
}
