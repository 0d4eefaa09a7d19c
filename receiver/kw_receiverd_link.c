/* kw_receiverd_link.c: receiverd's connection to one sharerd (loop thread): connect (TCP or TLS), hello with the
 * receiver's model and fusers, check the sharer's models against the configured fusers (refusing a pair that cannot
 * work, with the reason), one share in flight with the next requests waiting, the share's frames into its request's
 * inbox (stopping the socket while the compute thread is behind), and reconnection after any failure. The share's
 * deadline (sharer.request_timeout_ms) aborts the connection: a sharer that stalls is not trusted with the next
 * request either.
 *
 * Not here: what the bytes mean (the compute thread decodes them), HTTP.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_log.h"
#include "common/kw_status.h"
#include "common/kw_time.h"
#include "receiver/kw_receiverd_internal.h"

#define KW__RD_SOFTWARE "kvwire receiverd 0.1.0"

enum kw__rd_link_state { KW__LINK_DOWN, KW__LINK_CONNECTING, KW__LINK_READY };

struct kw_rd_link {
    kw_receiverd *d;
    int32_t index;
    const kw_receiverd_sharer_cfg *cfg;
    kw_net_tls *tls;
    kw_net_conn *conn;
    kw_proto_decoder *dec;
    enum kw__rd_link_state state;
    char reason[1024]; /* why it is not ready */
    Kwctl__HelloReply *reply;
    uv_timer_t timer;
    bool stopping, timer_closed;
    kw_rd_job *active;
    kw_rd_job *wait_head, *wait_tail;
    bool read_paused;
    bool reason_set; /* this connection attempt recorded its own reason (a refusal) */
};

/* Copies src into dst (cap bytes), cut if longer, always terminated. */
static void kw__rd_copy(char *dst, size_t cap, const char *src) {
    const size_t n = strnlen(src, cap - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

bool kw_rd_link_ready(const kw_rd_link *l) {
    return l->state == KW__LINK_READY;
}

const char *kw_rd_link_name(const kw_rd_link *l) {
    return l->cfg->name;
}

const char *kw_rd_link_reason(const kw_rd_link *l) {
    return l->reason;
}

Kwctl__ModelIdentity *const *kw_rd_link_models(const kw_rd_link *l, size_t *n) {
    *n = l->reply && l->state == KW__LINK_READY ? l->reply->n_models : 0;
    return *n ? l->reply->models : NULL;
}

static int kw__rd_link_send(kw_rd_link *l, uint32_t type, const ProtobufCMessage *m) {
    uint8_t *frame = NULL;
    size_t n = 0;
    KW_FORWARD(kw_proto_message_frame_pack(type, m, &frame, &n));
    const int rc = kw_net_conn_write_owned(l->conn, frame, n);
    return rc < 0 ? rc : 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Shares

/* Ends the share of j (ok, or failed with status and the HTTP status to answer) and wakes its compute thread. */
static void kw__rd_share_finish(kw_rd_job *j, int status, int http, const char *msg) {
    uv_mutex_lock(&j->mu);
    if (!j->share.ended) {
        j->share.ended = true;
        j->share.status = status;
        j->share.http_status = http;
        kw__rd_copy(j->share.error, sizeof j->share.error, msg ? msg : "");
    }
    uv_cond_broadcast(&j->cond);
    uv_mutex_unlock(&j->mu);
}

static void kw__rd_link_pump(kw_rd_link *l);

/* The connection's byte counters since the share's request was queued, measured by the transport. */
static void kw__rd_link_count(kw_net_conn *c, kw_rd_job *j) {
    kw_net_conn_stats st;
    kw_net_conn_get_stats(c, &st);
    uv_mutex_lock(&j->mu);
    j->share.socket_in = st.app_bytes_in - j->share.at_start.app_bytes_in;
    j->share.socket_out = st.app_bytes_out - j->share.at_start.app_bytes_out;
    j->share.transport_in = st.socket_bytes_in - j->share.at_start.socket_bytes_in;
    j->share.transport_out = st.socket_bytes_out - j->share.at_start.socket_bytes_out;
    uv_mutex_unlock(&j->mu);
}

/* The share in flight is over: the next waiting request may go. */
static void kw__rd_link_done(kw_rd_link *l) {
    kw_rd_job *j = l->active;
    if (!j) return;
    l->active = NULL;
    j->share_active = false;
    if (l->conn) kw_net_conn_deadline_stop(l->conn);
    if (l->read_paused && l->conn) {
        l->read_paused = false;
        kw_net_conn_resume_reading(l->conn);
    }
    kw_rd_job_unref(j);
    kw__rd_link_pump(l);
}

/* Sends the waiting requests' frames while the connection is free. */
static void kw__rd_link_pump(kw_rd_link *l) {
    while (!l->active && l->wait_head && l->state == KW__LINK_READY) {
        kw_rd_job *j = l->wait_head;
        l->wait_head = j->wait_next;
        if (!l->wait_head) l->wait_tail = NULL;
        j->wait_next = NULL;
        uint8_t *frame = j->request_frame;
        const size_t len = j->request_len;
        j->request_frame = NULL;
        kw_net_conn_stats at_start;
        kw_net_conn_get_stats(l->conn, &at_start);
        const int rc = kw_net_conn_write_owned(l->conn, frame, len);
        if (rc < 0) {
            char msg[256];
            snprintf(msg, sizeof msg, "sharer %s: the request could not be sent (%s)", l->cfg->name,
                     kw_status_name(rc));
            kw__rd_share_finish(j, rc, 502, msg);
            kw_rd_job_unref(j);
            continue;
        }
        uv_mutex_lock(&j->mu);
        j->share.t_sent = kw_time_now_ns();
        j->share.at_start = at_start;
        uv_mutex_unlock(&j->mu);
        j->share_active = true;
        l->active = j; /* the waiting list's reference becomes the active one's */
        kw_net_conn_deadline_start(l->conn, (uint32_t)l->d->cfg->sharer_request_timeout_ms);
    }
}

void kw_rd_link_submit(kw_rd_link *l, kw_rd_job *j) {
    if (l->stopping) {
        kw__rd_share_finish(j, KW_E_NET_SHUTDOWN, 503, "the server is shutting down");
        return;
    }
    if (l->state != KW__LINK_READY) {
        char msg[1200];
        snprintf(msg, sizeof msg, "sharer %s is not connected: %s", l->cfg->name, l->reason);
        kw__rd_share_finish(j, KW_E_NET_CONNECT, 503, msg);
        return;
    }
    kw_rd_job_ref(j);
    if (l->wait_tail)
        l->wait_tail->wait_next = j;
    else
        l->wait_head = j;
    l->wait_tail = j;
    kw__rd_link_pump(l);
}

void kw_rd_link_release(kw_rd_link *l, kw_rd_job *j) {
    /* still waiting: it never goes out */
    for (kw_rd_job **p = &l->wait_head, *prev = NULL; *p; prev = *p, p = &(*p)->wait_next) {
        if (*p != j) continue;
        *p = j->wait_next;
        if (l->wait_tail == j) l->wait_tail = prev;
        j->wait_next = NULL;
        kw_rd_job_unref(j);
        return;
    }
    if (l->active == j && l->conn) { /* in flight: ask the sharer to stop; its end frees the connection */
        Kwctl__Cancel c = KWCTL__CANCEL__INIT;
        c.request_id = j->share_id;
        if (kw__rd_link_send(l, KW_PROTO_FRAME_CANCEL, &c.base) < 0) kw_net_conn_abort(l->conn, KW_E_NET_IO);
    }
}

void kw_rd_link_resume(kw_rd_link *l) {
    if (l->read_paused && l->conn) {
        l->read_paused = false;
        kw_net_conn_resume_reading(l->conn);
    }
}

void kw_rd_link_send_frame(kw_rd_link *l, kw_rd_job *j, uint8_t *frame, size_t len) {
    if (l->active != j || !l->conn || kw_net_conn_write_owned(l->conn, frame, len) < 0) {
        if (l->active == j) kw_rd_job_cancel(j, KW_E_NET_CLOSED);
        free(frame);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Frames

/* Closes the connection for a protocol failure (after an Error with request 0 when possible). */
static void kw__rd_link_fail(kw_rd_link *l, int status, const char *why) {
    KW_LOG_WARN("receiverd: sharer %s: %s (%s)", l->cfg->name, why, kw_status_name(status));
    kw__rd_copy(l->reason, sizeof l->reason, why);
    l->reason_set = true;
    Kwctl__Error e = KWCTL__ERROR__INIT;
    e.status = status;
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", why);
    e.message = msg;
    kw__rd_link_send(l, KW_PROTO_FRAME_ERROR, &e.base);
    kw_net_conn_close(l->conn, status);
}

/* Whether the configured fusers for this sharer fit its models; why otherwise. */
static bool kw__rd_link_pair_ok(kw_rd_link *l, char *why, size_t cap) {
    const kw_receiverd *d = l->d;
    for (int32_t i = 0; i < d->n_fusers; ++i) {
        const kw_rd_fuser *f = &d->fusers[i];
        if (f->sharer_index != l->index) continue;
        bool fits = false;
        char one[512];
        snprintf(one, sizeof one, "the sharer serves no model %s", f->cfg->sharer_model ? f->cfg->sharer_model : "");
        for (size_t m = 0; m < l->reply->n_models && !fits; ++m) {
            const Kwctl__ModelIdentity *id = l->reply->models[m];
            if (f->cfg->sharer_model && strcmp(f->cfg->sharer_model, id->name) != 0) continue;
            fits = kw_proto_fuser_fits(&f->id, id, one, sizeof one);
        }
        if (!fits) {
            snprintf(why, cap, "fuser %s fits no model of sharer %s: %s", f->cfg->name, l->cfg->name, one);
            return false;
        }
    }
    return true;
}

static int kw__rd_link_hello_reply(kw_rd_link *l, Kwctl__HelloReply *r) {
    kw_net_conn_deadline_stop(l->conn);
    kw_proto_message_free(l->reply ? &l->reply->base : NULL);
    l->reply = r;
    if (!r->accepted) {
        snprintf(l->reason, sizeof l->reason, "the sharer refused the hello: %s (%s)", r->reason,
                 kw_status_name(r->status));
        l->reason_set = true;
        KW_LOG_WARN("receiverd: sharer %s: %s", l->cfg->name, l->reason);
        kw_net_conn_close(l->conn, KW_E_PROTO_REFUSED);
        return KW_PROTO_PAUSE;
    }
    char why[1024];
    if (!kw__rd_link_pair_ok(l, why, sizeof why)) {
        kw__rd_link_fail(l, KW_E_PROTO_REFUSED, why);
        return KW_PROTO_PAUSE;
    }
    l->state = KW__LINK_READY;
    l->reason[0] = '\0';
    KW_LOG_INFO("receiverd: sharer %s ready (%s, %zu model(s))", l->cfg->name, r->software, r->n_models);
    kw__rd_link_pump(l);
    return 0;
}

/* The share's frames: bytes counted, WIRE payloads copied into the inbox. */
static int kw__rd_link_wire(kw_rd_link *l, const kw_proto_frame *f) {
    kw_rd_job *j = l->active;
    if (!j || !j->share.header) {
        kw__rd_link_fail(l, KW_E_PROTO_SEQUENCE, "a WIRE frame outside a share");
        return KW_PROTO_PAUSE;
    }
    bool pause = false;
    uv_mutex_lock(&j->mu);
    if (f->offset == 0) {
        j->share.frames_in += KW_PROTO_FRAME_HEADER_BYTES;
        ++j->share.wire_frames;
    }
    j->share.frames_in += f->data_len;
    j->share.t_last_wire = kw_time_now_ns();
    if (!j->discard && f->data_len) {
        kw_rd_chunk *c = malloc(sizeof *c + f->data_len);
        if (!c) {
            uv_mutex_unlock(&j->mu);
            kw__rd_link_fail(l, KW_E_NOMEM, "out of memory for received bytes");
            return KW_PROTO_PAUSE;
        }
        c->next = NULL, c->targets = NULL, c->preview = 0, c->len = f->data_len, c->off = 0;
        memcpy(c->data, f->data, f->data_len);
        if (j->inbox_tail)
            j->inbox_tail->next = c;
        else
            j->inbox_head = c;
        j->inbox_tail = c;
        j->inbox_bytes += f->data_len;
        if (j->inbox_bytes > (size_t)l->d->cfg->sharer_inbox_bytes) pause = j->paused = true;
        uv_cond_broadcast(&j->cond);
    }
    uv_mutex_unlock(&j->mu);
    if (pause) { /* the compute thread is behind: stop reading until it catches up (kw_rd_link_resume) */
        l->read_paused = true;
        kw_net_conn_pause_reading(l->conn);
        return KW_PROTO_PAUSE;
    }
    return 0;
}

static int kw__rd_link_frame(void *user, const kw_proto_frame *f) {
    kw_rd_link *l = user;
    if (f->type == KW_PROTO_FRAME_WIRE) return kw__rd_link_wire(l, f);
    ProtobufCMessage *m = NULL;
    kw_error_clear();
    const int rc = kw_proto_message_unpack(NULL, f->type, f->data, f->data_len, &m);
    if (rc < 0) {
        kw__rd_link_fail(l, rc, kw_error_detail());
        return KW_PROTO_PAUSE;
    }
    if (l->state == KW__LINK_CONNECTING) {
        if (f->type == KW_PROTO_FRAME_HELLO_REPLY) return kw__rd_link_hello_reply(l, (Kwctl__HelloReply *)m);
        kw_proto_message_free(m);
        kw__rd_link_fail(l, KW_E_PROTO_SEQUENCE, "the sharer's first frame is not HELLO_REPLY");
        return KW_PROTO_PAUSE;
    }
    kw_rd_job *j = l->active;
    const uint64_t frame_bytes = KW_PROTO_FRAME_HEADER_BYTES + (uint64_t)f->data_len;
    uint64_t id = 0;
    switch (f->type) {
    case KW_PROTO_FRAME_SHARE_HEADER:
        id = ((Kwctl__ShareHeader *)m)->request_id;
        break;
    case KW_PROTO_FRAME_SHARE_TEXT:
        id = ((Kwctl__ShareText *)m)->request_id;
        break;
    case KW_PROTO_FRAME_SHARE_END:
        id = ((Kwctl__ShareEnd *)m)->request_id;
        break;
    case KW_PROTO_FRAME_ERROR:
        id = ((Kwctl__Error *)m)->request_id;
        if (id == 0) {
            char why[1100];
            snprintf(why, sizeof why, "the sharer closed the connection: %s", ((Kwctl__Error *)m)->message);
            kw__rd_copy(l->reason, sizeof l->reason, why);
            l->reason_set = true;
            kw_proto_message_free(m);
            kw_net_conn_close(l->conn, KW_E_NET_CLOSED);
            return KW_PROTO_PAUSE;
        }
        break;
    case KW_PROTO_FRAME_SHARE_TARGETS:
        id = ((Kwctl__ShareTargets *)m)->request_id;
        break;
    case KW_PROTO_FRAME_SHARE_PREVIEW:
        id = ((Kwctl__SharePreview *)m)->request_id;
        break;
    case KW_PROTO_FRAME_PONG:
    case KW_PROTO_FRAME_STATS:
        kw_proto_message_free(m);
        return 0;
    default:
        kw_proto_message_free(m);
        kw__rd_link_fail(l, KW_E_PROTO_SEQUENCE, "a frame a sharer does not send");
        return KW_PROTO_PAUSE;
    }
    if (!j || id != j->share_id) {
        kw_proto_message_free(m);
        kw__rd_link_fail(l, KW_E_PROTO_SEQUENCE, "an answer for no request in flight");
        return KW_PROTO_PAUSE;
    }
    if ((f->type == KW_PROTO_FRAME_SHARE_TARGETS || f->type == KW_PROTO_FRAME_SHARE_PREVIEW) && !j->share.header) {
        kw_proto_message_free(m);
        kw__rd_link_fail(l, KW_E_PROTO_SEQUENCE, "a SHARE_TARGETS or SHARE_PREVIEW frame before the ShareHeader");
        return KW_PROTO_PAUSE;
    }
    uv_mutex_lock(&j->mu);
    j->share.frames_in += frame_bytes;
    j->share.control_in += frame_bytes;
    if (f->type == KW_PROTO_FRAME_SHARE_HEADER) {
        j->share.header = true;
    } else if (f->type == KW_PROTO_FRAME_SHARE_TARGETS || f->type == KW_PROTO_FRAME_SHARE_PREVIEW) {
        /* into the inbox, in order with the blob bytes: the subsets, or the marker before a preview blob */
        const bool targets = f->type == KW_PROTO_FRAME_SHARE_TARGETS;
        if (targets) j->share.targets_in += frame_bytes, ++j->share.target_frames;
        kw_rd_chunk *c = j->discard ? NULL : calloc(1, sizeof *c);
        if (c) {
            if (targets)
                c->targets = (Kwctl__ShareTargets *)m, m = NULL;
            else /* below 1024 (the protocol's check) */
                c->preview = 1 + (int32_t)((const Kwctl__SharePreview *)m)->blob;
            if (j->inbox_tail)
                j->inbox_tail->next = c;
            else
                j->inbox_head = c;
            j->inbox_tail = c;
            uv_cond_broadcast(&j->cond);
        } else if (!j->discard) {
            uv_mutex_unlock(&j->mu);
            kw_proto_message_free(m);
            kw__rd_link_fail(l, KW_E_NOMEM,
                             targets ? "out of memory for a SHARE_TARGETS frame"
                                     : "out of memory for a SHARE_PREVIEW frame");
            return KW_PROTO_PAUSE;
        }
    } else if (f->type == KW_PROTO_FRAME_SHARE_TEXT) {
        const Kwctl__ShareText *t = (const Kwctl__ShareText *)m;
        free(j->share.text);
        j->share.text = malloc(t->text.len + 1);
        if (j->share.text) {
            memcpy(j->share.text, t->text.data, t->text.len);
            j->share.text[t->text.len] = '\0';
            j->share.text_len = t->text.len;
            j->share.text_tokens = t->n_tokens;
            j->share.text_truncated = t->truncated;
        }
    } else if (f->type == KW_PROTO_FRAME_SHARE_END) {
        kw_proto_message_free(j->share.end ? &j->share.end->base : NULL);
        j->share.end = (Kwctl__ShareEnd *)m;
        m = NULL;
    }
    uv_mutex_unlock(&j->mu);
    if (f->type == KW_PROTO_FRAME_SHARE_END) {
        kw__rd_link_count(l->conn, j);
        kw__rd_share_finish(j, 0, 0, NULL);
        kw__rd_link_done(l);
    } else if (f->type == KW_PROTO_FRAME_ERROR) {
        const Kwctl__Error *e = (const Kwctl__Error *)m;
        char msg[1100];
        snprintf(msg, sizeof msg, "sharer %s: %s", l->cfg->name, e->message);
        const int http = e->status == KW_E_SHARE_BUSY                              ? 503
                         : e->status == KW_E_SHARE_MODE || e->status == KW_E_LIMIT ? 400
                                                                                   : 502;
        kw__rd_link_count(l->conn, j);
        kw__rd_share_finish(j, e->status, http, msg);
        kw__rd_link_done(l);
    }
    kw_proto_message_free(m);
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// The connection

static void kw__rd_link_schedule(kw_rd_link *l);

/* Frees a link whose connection and timer are closed (or were never opened). */
static void kw__rd_link_destroy(kw_rd_link *l) {
    kw_proto_decoder_destroy(l->dec);
    kw_net_tls_free(l->tls);
    free(l);
}

void kw_rd_link_free(kw_rd_link *l) {
    if (l) kw__rd_link_destroy(l);
}

static int kw__rd_link_read(kw_net_conn *c, const uint8_t *data, size_t len, size_t *used) {
    kw_rd_link *l = kw_net_conn_user(c);
    const int rc = kw_proto_decoder_feed_all(l->dec, data, len, used, kw__rd_link_frame, l);
    if (rc == KW_PROTO_PAUSE) {
        if (!l->read_paused) *used = len; /* closing: drop the rest */
        return 0;
    }
    if (rc < 0) {
        kw__rd_link_fail(l, rc, kw_error_detail());
        *used = len;
    }
    return 0;
}

static void kw__rd_link_open(kw_net_conn *c) {
    kw_rd_link *l = kw_net_conn_user(c);
    kw_receiverd *d = l->d;
    Kwctl__ModelIdentity *models[] = {&d->id};
    Kwctl__FuserIdentity *fusers[KW_RECEIVERD_MAX_FUSERS];
    size_t n_fusers = 0;
    for (int32_t i = 0; i < d->n_fusers; ++i)
        if (d->fusers[i].sharer_index == l->index) fusers[n_fusers++] = &d->fusers[i].id;
    Kwctl__Hello h = KWCTL__HELLO__INIT;
    h.protocol_version = KW_PROTO_VERSION;
    h.role = KWCTL__ROLE__ROLE_RECEIVER;
    h.software = KW__RD_SOFTWARE;
    h.models = models;
    h.n_models = 1;
    h.codecs = d->codecs;
    h.n_codecs = KW_WIRE_CODEC_COUNT_V11 - 1;
    h.fusers = fusers;
    h.n_fusers = n_fusers;
    const int rc = kw__rd_link_send(l, KW_PROTO_FRAME_HELLO, &h.base);
    if (rc < 0) {
        kw_net_conn_abort(c, rc);
        return;
    }
    kw_net_conn_deadline_start(c, (uint32_t)d->cfg->sharer_connect_timeout_ms);
}

static void kw__rd_link_close(kw_net_conn *c, int status) {
    kw_rd_link *l = kw_net_conn_user(c);
    const bool was_ready = l->state == KW__LINK_READY;
    l->state = KW__LINK_DOWN;
    l->conn = NULL;
    l->read_paused = false;
    if (!l->reason_set)
        snprintf(l->reason, sizeof l->reason, "%s (%s)", kw_error_detail()[0] ? kw_error_detail() : kw_strerror(status),
                 kw_status_name(status));
    if (was_ready || status != KW_E_NET_CONNECT)
        KW_LOG_INFO("receiverd: sharer %s: disconnected: %s", l->cfg->name, l->reason);
    /* the share in flight and the waiting ones fail */
    if (l->active) kw__rd_link_count(c, l->active);
    if (l->active) {
        char msg[1200];
        const bool timeout = status == KW_E_NET_REQUEST_TIMEOUT;
        snprintf(msg, sizeof msg, "sharer %s: %s", l->cfg->name,
                 timeout ? "the share did not end before sharer.request_timeout_ms" : l->reason);
        kw__rd_share_finish(l->active, timeout ? KW_E_NET_REQUEST_TIMEOUT : (status < 0 ? status : KW_E_NET_CLOSED),
                            timeout ? 504 : 502, msg);
        kw__rd_link_done(l);
    }
    while (l->wait_head) {
        kw_rd_job *j = l->wait_head;
        l->wait_head = j->wait_next;
        j->wait_next = NULL;
        char msg[1200];
        snprintf(msg, sizeof msg, "sharer %s is not connected: %s", l->cfg->name, l->reason);
        kw__rd_share_finish(j, KW_E_NET_CONNECT, 503, msg);
        kw_rd_job_unref(j);
    }
    l->wait_tail = NULL;
    kw_proto_message_free(l->reply ? &l->reply->base : NULL);
    l->reply = NULL;
    if (l->stopping) return; /* kw_rd_link_free releases it once the loop is done */
    kw__rd_link_schedule(l);
}

static void kw__rd_link_connect(kw_rd_link *l) {
    if (l->stopping || l->conn) return;
    kw_proto_decoder_reset(l->dec);
    kw_net_client_config cc = {
        .host = l->cfg->host, .port = (uint16_t)l->cfg->port, .tls = l->tls, .server_name = l->cfg->server_name};
    kw_net_conn_options_default(&cc.conn);
    cc.conn.connect_timeout_ms = (uint32_t)l->d->cfg->sharer_connect_timeout_ms;
    cc.conn.idle_timeout_ms = 0; /* idle between requests is normal */
    static const kw_net_conn_callbacks cb = {
        .on_open = kw__rd_link_open, .on_read = kw__rd_link_read, .on_close = kw__rd_link_close};
    l->state = KW__LINK_CONNECTING;
    l->reason_set = false;
    const int rc = kw_net_connect(&l->d->loop, &cc, &cb, l, &l->conn);
    if (rc < 0) {
        l->conn = NULL;
        l->state = KW__LINK_DOWN;
        snprintf(l->reason, sizeof l->reason, "cannot connect: %s", kw_error_detail());
        kw__rd_link_schedule(l);
    }
}

static void kw__rd_link_timer(uv_timer_t *t) {
    kw__rd_link_connect(t->data);
}

static void kw__rd_link_schedule(kw_rd_link *l) {
    if (!l->stopping) uv_timer_start(&l->timer, kw__rd_link_timer, (uint64_t)l->d->cfg->sharer_reconnect_ms, 0);
}

int kw_rd_link_create(kw_receiverd *d, int32_t index, kw_rd_link **out) {
    kw_rd_link *l = calloc(1, sizeof *l);
    KW_RETURN_IF(!l, KW_E_NOMEM, "receiverd: out of memory");
    l->d = d;
    l->index = index;
    l->cfg = &d->cfg->sharers[index];
    snprintf(l->reason, sizeof l->reason, "not connected yet");
    const kw_proto_decoder_options dopt = {.stream_raw = true};
    int rc = kw_proto_decoder_create(&dopt, &l->dec);
    if (rc == 0 && l->cfg->tls) {
        const kw_net_tls_config tc = {
            .cert_file = l->cfg->tls_cert, .key_file = l->cfg->tls_key, .ca_file = l->cfg->tls_ca, .verify_peer = true};
        rc = kw_net_tls_create(&tc, false, &l->tls);
    }
    if (rc < 0) {
        kw__rd_link_destroy(l);
        return rc;
    }
    uv_timer_init(&d->loop, &l->timer);
    l->timer.data = l;
    *out = l;
    return 0;
}

void kw_rd_link_start(kw_rd_link *l) {
    kw__rd_link_connect(l);
}

static void kw__rd_link_timer_closed(uv_handle_t *h) {
    kw_rd_link *l = h->data;
    l->timer_closed = true;
}

void kw_rd_link_stop(kw_rd_link *l) {
    if (l->stopping) return;
    l->stopping = true;
    uv_timer_stop(&l->timer);
    if (l->conn) kw_net_conn_close(l->conn, KW_E_NET_SHUTDOWN);
    uv_close((uv_handle_t *)&l->timer, kw__rd_link_timer_closed);
}
