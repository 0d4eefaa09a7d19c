/* kw_sharerd.c: sharerd (see kw_sharerd.h): the loop thread's side (connections, hello, requests, frames out) and
 * the compute threads' (compute.workers of them, each one job at a time through the sharer half; worker 0 on the
 * daemon's backend and models, the others on a stream context of it with forks of every model, kw__sd_worker).
 *
 * Ownership and lifetime. A connection (kw__sd_conn) belongs to the loop thread and is freed in its on_close. A job
 * (kw__sd_job, one ShareRequest) is reference-counted: the loop holds one reference while the job is accepted and
 * unfinished, the compute queue one until its DONE post has been handled, and every WIRE write in flight one until its
 * done callback. job->conn is the loop's link back to the connection, cleared when the connection closes (the job is
 * then cancelled and its posts are dropped). Posts from the compute thread arrive in order, so a job's DONE always
 * comes after its bytes. The compute thread touches only the job's request, its model, its atomic cancel status and
 * its pending-bytes counter (under job->mu).
 */
#include "sharer/kw_sharerd.h"

#include <stdatomic.h>
#include <signal.h>
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "c2c/kw_fuser_load.h"
#include "c2c/kw_fusion.h"
#include "c2c/kw_request.h"
#include "c2c/kw_rscore.h"
#include "c2c/kw_rselect.h"
#include "common/kw_file.h"
#include "common/kw_log.h"
#include "common/kw_queue.h"
#include "common/kw_status.h"
#include "common/kw_time.h"
#include "kernels/kw_backend.h"
#include "model/kw_identity.h"
#include "model/kw_model.h"
#include "model/kw_tokenizer.h"
#include "net/kw_net.h"
#include "net/kw_net_service.h"
#include "proto/kw_proto.h"
#include "sharer/kw_share_request.h"
#include "wire/kw_wire.h"
#include "wire/kw_wire_alloc.h"

#define KW__SD_SOFTWARE "kvwire sharerd " KW_SHARERD_VERSION
#ifndef KW_SHARERD_VERSION
#define KW_SHARERD_VERSION "0.1.0"
#endif

// ---------------------------------------------------------------------------------------------------------------
// State

typedef struct kw__sd_model {
    const char *name;
    kw_model *model;
    kw_tokenizer *tok;          /* NULL: no tokenizer (the text relay is refused) */
    enum kw_chat_family family; /* the template the text relay renders with (a GGUF file's own, else the arch's) */
    kw_model_digest digest;
    int32_t n_layers, n_kv_heads, head_dim, vocab;
    /* the identity as sent in HelloReply */
    Kwctl__ModelIdentity id;
    Kwctl__ModelDigest id_digest;
    Kwctl__KvShape id_kv;
} kw__sd_model;

typedef struct kw__sd_conn kw__sd_conn;

typedef struct kw__sd_job {
    kw_queue_item item; /* the compute queue (first: the item is the job) */
    kw_sharerd *d;
    kw__sd_conn *conn; /* loop thread only; NULL once the connection closed */
    Kwctl__ShareRequest *req;
    const kw__sd_model *model;
    atomic_int refs;
    atomic_int cancel; /* 0, or the status to stop with */
    uv_mutex_t mu;
    uv_cond_t cond;
    size_t pending; /* under mu: bytes posted to the loop and not yet written */
    uint64_t t_received, t_started, frames;
    /* the compute thread's results, read by the loop after DONE */
    int status;
    char error[512];
    kw_share_request_stats stats;
    kw_rscore_stats rscore; /* a receiver-aware selection's scoring cost */
    bool scored;
    kw_request_relay relay;
    uint64_t generate_ns;
    /* scoring: receiver (docs/PROTOCOL.md §5.2): the receiver's selection, set once by the loop thread under mu
     * (owned), and the round trip's figures for ShareEnd (compute thread) */
    uint8_t *selection;
    size_t selection_len;
    bool selection_in, receiver_scored;
    uint64_t preview_bytes, wait_ns;
    double preview_prefill_ms, preview_select_ms, preview_encode_ms;
} kw__sd_job;

struct kw__sd_conn {
    kw_sharerd *d;
    kw_net_conn *conn;
    kw_proto_decoder *dec;
    bool hello_done, refused;
    Kwctl__Hello *hello; /* the peer's, owned */
    kw__sd_job *job;     /* the share in flight */
    char peer[64];
};

enum kw__sd_post_kind { KW__SD_POST_WIRE, KW__SD_POST_FRAME, KW__SD_POST_DONE, KW__SD_POST_EXIT };

typedef struct kw__sd_post {
    kw_net_async_item item;
    enum kw__sd_post_kind kind;
    kw__sd_job *job;
    uint8_t *data;
    size_t len;
} kw__sd_post;

/* One compute thread: worker 0 borrows the daemon's backend, models, scoring model and fusions; the others own a stream
 * context of the backend (kw_backend_create_stream) and forks of those models on it (kw_model_fork) with fusions of
 * their own, so jobs of different connections run side by side over the same weights and memory budget. */
typedef struct kw__sd_worker {
    kw_sharerd *d;
    int32_t index;
    kw_backend *be;
    kw_model *models[KW_SHARERD_MAX_MODELS]; /* d->models[i].model's fork (worker 0: the model itself) */
    kw_model *score_model;                   /* NULL without scoring_receiver */
    kw_fusion *score_fusion[KW_SHARERD_MAX_MODELS];
    uv_thread_t thread;
    bool started;
} kw__sd_worker;

struct kw_sharerd {
    const kw_sharerd_config *cfg;
    uv_loop_t loop;
    bool loop_init;
    kw_backend *be;
    kw__sd_model models[KW_SHARERD_MAX_MODELS];
    int32_t n_models;
    /* scoring_receiver: the receiver model and fuser the receiver-aware selections score with, and per served model
     * the fusion (NULL where the fuser does not fit it); compute thread only once created */
    kw_model *score_model;
    kw_fuser *score_fuser;
    kw__sd_model score_id; /* the receiver model's identity (digest), to match the requesting receiver's */
    kw_fusion *score_fusion[KW_SHARERD_MAX_MODELS];
    uint32_t *codecs;
    kw_net_tls *tls;
    kw_net_server *server;
    kw_net_signals *signals;
    kw_net_service *service; /* systemd's notify protocol and SIGHUP */
    kw_net_async *async;
    uint16_t port;
    /* reload (loop thread): the command line SIGHUP reads again (borrowed), the log level in force */
    int reload_argc;
    char **reload_argv;
    int log_level;
    /* compute threads */
    kw__sd_worker *workers; /* n_workers (owned) */
    int32_t n_workers;
    bool threads_started;
    atomic_int running; /* workers not yet exited: the last one posts EXIT */
    kw_queue queue;
    bool queue_init;
    /* loop thread */
    int32_t queued; /* accepted jobs not yet DONE */
    bool shutting_down;
    int exit_status;
    uint64_t t_start;
    uint64_t requests_ok, requests_failed, requests_cancelled, requests_busy;
    uint64_t bytes_in, bytes_out; /* of closed connections; open ones are added when Stats is asked */
};

static void kw__sd_job_unref(kw__sd_job *j) {
    if (atomic_fetch_sub(&j->refs, 1) != 1) return;
    kw_proto_message_free(&j->req->base);
    kw_request_relay_free(&j->relay);
    free(j->selection);
    uv_mutex_destroy(&j->mu);
    uv_cond_destroy(&j->cond);
    free(j);
}

/* Any thread: asks the job to stop with status (the first reason wins) and wakes a compute thread waiting on it. */
static void kw__sd_job_cancel(kw__sd_job *j, int status) {
    int expected = 0;
    atomic_compare_exchange_strong(&j->cancel, &expected, status);
    uv_mutex_lock(&j->mu);
    uv_cond_broadcast(&j->cond);
    uv_mutex_unlock(&j->mu);
}

// ---------------------------------------------------------------------------------------------------------------
// Sending frames (loop thread)

static int kw__sd_send(kw__sd_conn *c, uint32_t type, const ProtobufCMessage *m) {
    uint8_t *frame = NULL;
    size_t n = 0;
    KW_FORWARD(kw_proto_message_frame_pack(type, m, &frame, &n));
    const int rc = kw_net_conn_write_owned(c->conn, frame, n);
    return rc < 0 ? rc : 0;
}

static void kw__sd_send_error(kw__sd_conn *c, uint64_t request_id, int status, const char *message) {
    Kwctl__Error e = KWCTL__ERROR__INIT;
    e.request_id = request_id;
    e.status = status < 0 ? status : KW_E_INTERNAL;
    char msg[4096];
    snprintf(msg, sizeof msg, "%s", message ? message : kw_strerror(e.status));
    e.message = msg;
    if (kw__sd_send(c, KW_PROTO_FRAME_ERROR, &e.base) < 0)
        KW_LOG_WARN("sharerd: %s: cannot send an error: %s", c->peer, kw_error_detail());
}

/* A connection-level failure: Error with request 0 (when the transport still works), then close. */
static void kw__sd_fail_conn(kw__sd_conn *c, int status, const char *why) {
    KW_LOG_INFO("sharerd: %s: closing: %s (%s)", c->peer, why, kw_status_name(status));
    kw__sd_send_error(c, 0, status, why);
    kw_net_conn_close(c->conn, status);
}

// ---------------------------------------------------------------------------------------------------------------
// The compute thread

typedef struct kw__sd_run {
    kw__sd_job *job;
    kw_sharerd *d;
    kw__sd_worker *w; /* the worker running it: the models to use */
    uint32_t timeout_ms;
} kw__sd_run;

/* The compute thread's check between layers and tokens: cancelled, or past the receiver's deadline. */
static int kw__sd_check(kw__sd_run *r) {
    const int c = atomic_load(&r->job->cancel);
    if (c) KW_FAIL(c, "the share was stopped (%s)", kw_status_name(c));
    if (r->timeout_ms && kw_time_now_ns() - r->job->t_received > (uint64_t)r->timeout_ms * 1000000u) {
        kw__sd_job_cancel(r->job, KW_E_TIMEOUT);
        KW_FAIL(KW_E_TIMEOUT, "the share passed the receiver's %u ms deadline", r->timeout_ms);
    }
    return 0;
}

/* Hands blob bytes to the loop (copied: the encoder reuses its buffer), after waiting while too many of this share's
 * bytes are still queued for the socket. */
/* Posts bytes of the share to the loop, in order: blob bytes (WIRE: the loop frames them) or a packed frame (FRAME:
 * written as is; owned is then the caller's malloc'ed frame, taken over). */
static int kw__sd_post_bytes(kw__sd_run *r, enum kw__sd_post_kind kind, const void *data, size_t n, uint8_t *owned) {
    kw__sd_job *j = r->job;
    int rc = kw__sd_check(r);
    if (rc < 0) {
        free(owned);
        return rc;
    }
    uv_mutex_lock(&j->mu);
    while (j->pending > (size_t)r->d->cfg->write_high_water && !atomic_load(&j->cancel))
        uv_cond_wait(&j->cond, &j->mu);
    uv_mutex_unlock(&j->mu);
    rc = kw__sd_check(r);
    if (rc < 0) {
        free(owned);
        return rc;
    }
    kw__sd_post *p = calloc(1, sizeof *p);
    uint8_t *copy = owned ? owned : malloc(n ? n : 1);
    if (!p || !copy) {
        free(p), free(copy);
        KW_FAIL(KW_E_NOMEM, "sharerd: cannot hold %zu blob bytes", n);
    }
    if (!owned) memcpy(copy, data, n);
    *p = (kw__sd_post){.kind = kind, .job = j, .data = copy, .len = n};
    uv_mutex_lock(&j->mu);
    j->pending += n;
    uv_mutex_unlock(&j->mu);
    if (kw_net_async_post(r->d->async, &p->item) < 0) { /* the loop is closing */
        free(copy), free(p);
        KW_FAIL(KW_E_NET_SHUTDOWN, "sharerd: shutting down");
    }
    return 0;
}

static int kw__sd_write(void *user, int32_t blob, const void *data, size_t n) {
    (void)blob;
    return kw__sd_post_bytes(user, KW__SD_POST_WIRE, data, n, NULL);
}

/* A sent layer's per-target subsets: its SHARE_TARGETS frame, before the layer's KVWire section. */
static int kw__sd_targets(void *user, const kw_share_layer *layer) {
    kw__sd_run *r = user;
    uint8_t *frame = NULL;
    size_t n = 0;
    KW_FORWARD(kw_share_targets_frame(r->job->req->request_id, layer, &frame, &n));
    return kw__sd_post_bytes(r, KW__SD_POST_FRAME, NULL, n, frame);
}

static int kw__sd_token(void *user, int32_t id) {
    (void)id;
    return kw__sd_check(user);
}

static enum kw_dtype kw__sd_cache_dtype(Kwctl__CacheDtype d) {
    return d == KWCTL__CACHE_DTYPE__CACHE_DTYPE_F32 ? KW_DTYPE_F32 : KW_DTYPE_BF16;
}

static kw_wire_codec_spec kw__sd_spec(const Kwctl__CodecSpec *c) {
    kw_wire_codec_spec s = {(uint8_t)c->codec, (uint8_t)c->granularity,
                            (uint8_t)(c->scale_dtype | (c->zero_points ? KW_WIRE_SCALE_ZERO_POINTS : 0u)), 0};
    while (c->group_size && (1u << s.group_log2) < c->group_size)
        ++s.group_log2;
    return s;
}

/* The budget codecs of a policy (budget_codecs: KW_WIRE_ALLOC_MAX_CODECS entries; the protocol checked the count). */
static uint32_t kw__sd_budget_codecs(const Kwctl__SharePolicy *p, kw_wire_codec_spec *budget_codecs) {
    uint32_t n = 0;
    for (size_t i = 0; i < p->n_budget_codecs && i < KW_WIRE_ALLOC_MAX_CODECS; ++i)
        budget_codecs[n++] = kw__sd_spec(p->budget_codecs[i]);
    return n;
}

/* The token schedule of a policy as the share wire's rules (KW__SD_MAX_TOKEN_RULES entries, the caller's): one rule
 * per first or last entry, one per run of consecutive positions (the protocol checked the counts). */
#define KW__SD_MAX_TOKEN_RULES (KW_PROTO_MAX_TOKEN_POLICIES * KW_PROTO_MAX_TOKEN_RUNS)
static uint32_t kw__sd_token_rules(const Kwctl__SharePolicy *p, kw_wire_token_rule *rules) {
    uint32_t n = 0;
    for (size_t i = 0; i < p->n_token_schedule && i < KW_PROTO_MAX_TOKEN_POLICIES; ++i) {
        const Kwctl__TokenPolicy *t = p->token_schedule[i];
        const kw_wire_codec_spec k = kw__sd_spec(t->k), v = kw__sd_spec(t->v);
        if (t->first || t->last) {
            rules[n++] = (kw_wire_token_rule){t->first ? 0 : t->last, t->first ? t->first - 1 : 0, t->last != 0, k, v};
            continue;
        }
        for (size_t a = 0; a < t->n_positions && n < KW__SD_MAX_TOKEN_RULES; ++a) {
            if (a > 0 && t->positions[a] == t->positions[a - 1] + 1) {
                rules[n - 1].last = t->positions[a];
                continue;
            }
            rules[n++] = (kw_wire_token_rule){t->positions[a], t->positions[a], 0, k, v};
        }
    }
    return n;
}

/* A section bound (*bound, raised) that holds whatever token groups the rules make: every row at the largest of
 * the layer's and the rules' codec pairs, plus, per group, the bound of a one-row section of that pair (a group's
 * partial scale runs and descriptor). The groups: at most two per rule and one more. */
static int kw__sd_token_bound(const kw_wire_header *hdr, const kw_wire_policy *layer, const kw_wire_token_rule *rules,
                              uint32_t n_rules, uint32_t rows, size_t *bound) {
    if (n_rules == 0) return 0;
    size_t all = 0, one = 0;
    for (uint32_t r = 0; r <= n_rules; ++r) {
        kw_wire_policy pol = *layer;
        if (r < n_rules) pol.k = rules[r].k, pol.v = rules[r].v;
        size_t b = 0, b1 = 0;
        int rc = kw_wire_section_bound(hdr, &pol, rows, &b);
        if (rc >= 0) rc = kw_wire_section_bound(hdr, &pol, 1, &b1);
        if (rc < 0) KW_FAIL(rc, "SharePolicy.token_schedule's codecs: %s", kw_error_detail());
        all = b > all ? b : all;
        one = b1 > one ? b1 : one;
    }
    const size_t total = all + (2u * n_rules + 1u) * one;
    *bound = total > *bound ? total : *bound;
    return 0;
}

/* The request as the sharer half's options. layers, mine (n_sections + 1), overrides, budget_codecs
 * (KW_WIRE_ALLOC_MAX_CODECS) and token_rules (KW__SD_MAX_TOKEN_RULES) are the caller's buffers. */
static void kw__sd_options(const kw_sharerd *d, const Kwctl__ShareRequest *req, const kw__sd_model *m, int32_t *layers,
                           int32_t *n_layers, kw_fusion_section *mine, kw_wire_policy *wire,
                           kw_share_layer_codec *overrides, kw_wire_codec_spec *budget_codecs,
                           kw_wire_token_rule *token_rules, kw_share_request_options *o) {
    const Kwctl__SharePolicy *p = req->policy;
    *n_layers = 0;
    if (p->n_layers == 0)
        for (int32_t l = 0; l < m->n_layers; ++l)
            layers[(*n_layers)++] = l;
    else
        for (size_t i = 0; i < p->n_layers; ++i)
            layers[(*n_layers)++] = (int32_t)p->layers[i];
    for (size_t s = 0; s < req->n_sections; ++s)
        mine[s] = (kw_fusion_section){(int64_t)req->sections[s]->length, req->sections[s]->sent ? 1 : -1};
    mine[req->n_sections] = (kw_fusion_section){1, -1}; /* the receiver's last section, never seen here */
    memset(wire, 0, sizeof *wire);
    wire->k = kw__sd_spec(p->k);
    wire->v = kw__sd_spec(p->v);
    wire->index_encoding = KW_WIRE_INDEX_AUTO;
    wire->zstd_level = p->zstd ? (p->zstd_level ? p->zstd_level : (int)d->cfg->zstd_level) : 0;
    wire->rotate = (uint8_t)p->hadamard_rotate;    /* checked: 0..3 */
    wire->clip = (uint8_t)p->clip_scales;          /* checked: 0..3 */
    wire->code_limit_k = (uint8_t)p->code_limit_k; /* checked: 0..255 */
    wire->code_limit_v = (uint8_t)p->code_limit_v;
    wire->rans = p->rans ? 1 : 0; /* the rANS body coder (FORMAT.md §5.15): v1.1 blobs, the preview's too */
    for (size_t i = 0; i < p->n_schedule; ++i) { /* the protocol checked the bits (0..3) and limits (0..255) */
        const Kwctl__LayerPolicy *l = p->schedule[i];
        overrides[i] = (kw_share_layer_codec){.layer = l->layer,
                                              .k = kw__sd_spec(l->k),
                                              .v = kw__sd_spec(l->v),
                                              .own_options = l->own_options,
                                              .rotate = (uint8_t)l->hadamard_rotate,
                                              .clip = (uint8_t)l->clip_scales,
                                              .code_limit_k = (uint8_t)l->code_limit_k,
                                              .code_limit_v = (uint8_t)l->code_limit_v};
    }
    *o = (kw_share_request_options){
        .sections = mine,
        .n_sections = (int32_t)req->n_sections + 1,
        .layers = layers,
        .n_layers = *n_layers,
        .select = {.mode = (enum kw_select_mode)(p->selection - 1),
                   .proportion = p->selection == KWCTL__SELECTION__SELECTION_FULL ? 1.0 : p->proportion,
                   .min_tokens = p->min_tokens ? p->min_tokens : 1,
                   .seed = p->seed},
        .same_positions = req->mode == KWCTL__MODE__MODE_KV_DIRECT,
        .cache_dtype = kw__sd_cache_dtype(req->cache_dtype),
        .pad = req->pad.len ? req->pad.data : NULL,
        .wire = wire,
        .overrides = overrides,
        .n_overrides = p->budget_bytes ? 0 : (int32_t)p->n_schedule, /* a cap: the allocator chooses the codecs */
        .token_rules = token_rules,
        .n_token_rules = kw__sd_token_rules(p, token_rules), /* the protocol refused them with a cap */
        .budget_bytes = p->budget_bytes,
        .budget_codecs = budget_codecs,
        .n_budget_codecs = kw__sd_budget_codecs(p, budget_codecs),
        .budget_mode = (enum kw_wire_budget_mode)p->budget_mode, /* the same numbers */
        .outlier_fraction = p->outlier_ppm / 1e6,
        .pre_rope_keys = p->pre_rope_keys,
    };
}

/* scoring: receiver, the preview run: the blob bytes, each blob after its SHARE_PREVIEW frame. */
typedef struct kw__sd_preview {
    kw__sd_run *run;
    int32_t blob; /* the last blob announced, -1: none yet */
} kw__sd_preview;

static int kw__sd_preview_write(void *user, int32_t blob, const void *data, size_t n) {
    kw__sd_preview *pv = user;
    if (blob != pv->blob) {
        Kwctl__SharePreview m = KWCTL__SHARE_PREVIEW__INIT;
        m.request_id = pv->run->job->req->request_id;
        m.blob = (uint32_t)blob;
        uint8_t *frame = NULL;
        size_t len = 0;
        KW_FORWARD(kw_proto_message_frame_pack(KW_PROTO_FRAME_SHARE_PREVIEW, &m.base, &frame, &len));
        KW_FORWARD(kw__sd_post_bytes(pv->run, KW__SD_POST_FRAME, NULL, len, frame));
        pv->blob = blob;
    }
    return kw__sd_post_bytes(pv->run, KW__SD_POST_WIRE, data, n, NULL);
}

/* SharePolicy.preview when absent: int4 per token, f32 scales. */
static const Kwctl__CodecSpec kw__sd_preview_default = {PROTOBUF_C_MESSAGE_INIT(&kwctl__codec_spec__descriptor),
                                                        KW_WIRE_CODEC_INT4,
                                                        KW_WIRE_GRAN_TOKEN,
                                                        KW_WIRE_SCALE_F32,
                                                        0,
                                                        0};

/* Without a deadline in the request the sharer still stops waiting for a selection after this long. */
#define KW__SD_SELECTION_WAIT_MS 60000u

/* Waits for the receiver's SHARE_SELECTION (the loop hands it over under mu): the share's deadline (or
 * KW__SD_SELECTION_WAIT_MS without one), a CANCEL or the connection closing end the wait with an error. */
static int kw__sd_wait_selection(kw__sd_run *r) {
    kw__sd_job *j = r->job;
    const uint64_t t0 = kw_time_now_ns();
    const uint64_t end = r->timeout_ms ? j->t_received + (uint64_t)r->timeout_ms * 1000000u
                                       : t0 + (uint64_t)KW__SD_SELECTION_WAIT_MS * 1000000u;
    bool in = false;
    uv_mutex_lock(&j->mu);
    for (;;) {
        in = j->selection_in;
        if (in || atomic_load(&j->cancel)) break;
        const uint64_t now = kw_time_now_ns();
        if (now >= end) break;
        (void)uv_cond_timedwait(&j->cond, &j->mu, end - now);
    }
    uv_mutex_unlock(&j->mu);
    j->wait_ns = kw_time_now_ns() - t0;
    KW_FORWARD(kw__sd_check(r));
    if (!in) {
        kw__sd_job_cancel(j, KW_E_TIMEOUT);
        KW_FAIL(KW_E_TIMEOUT, "no SHARE_SELECTION within the share's %u ms",
                r->timeout_ms ? r->timeout_ms : KW__SD_SELECTION_WAIT_MS);
    }
    return 0;
}

/* The received selection against this share: every entry one of its sent (section, layer) pairs (kw_rselect_decode
 * checked the encoding; a pair without an entry fails the final run with KW_E_STATE). */
static int kw__sd_check_selection(const kw_rselect *sel, const kw_share_request_options *o) {
    for (int32_t e = 0; e < sel->n; ++e) {
        const kw_rselect_entry *x = &sel->entries[e];
        bool section = false, layer = false;
        int64_t pos0 = 0;
        for (int32_t s = 0; s < o->n_sections && !section; ++s) {
            section = o->sections[s].index > 0 && pos0 == x->pos0 && o->sections[s].length == x->length;
            pos0 += o->sections[s].length;
        }
        for (int32_t l = 0; l < o->n_layers && !layer; ++l)
            layer = o->layers[l] == x->layer;
        KW_RETURN_IF(!section || !layer, KW_E_PROTO_FIELD,
                     "ShareSelection: entry %d (positions %lld + %lld, layer %d) is not a sent section and layer", e,
                     (long long)x->pos0, (long long)x->length, (int)x->layer);
    }
    return 0;
}

/* scoring: receiver: the preview run (every row of the sent layers at the preview codec, each blob after its
 * SHARE_PREVIEW), the wait for the receiver's selection, then the final run replaying it (o: the final run's options,
 * its select_rows set here). The sharer prefills twice: kw_share_request_run does not keep its cache. */
static int kw__sd_share_receiver_scored(kw__sd_run *r, const kw__sd_model *m, const int32_t *ids,
                                        kw_share_request_options *o) {
    kw__sd_job *j = r->job;
    kw_model *model = r->w->models[m - r->d->models];
    const Kwctl__SharePolicy *p = j->req->policy;
    kw_wire_policy pw = *o->wire;
    pw.k = pw.v = kw__sd_spec(p->preview ? p->preview : &kw__sd_preview_default);
    pw.code_limit_k = pw.code_limit_v = 0; /* the preview's codec is its own: the request's limits are not for it */
    kw__sd_preview pv = {.run = r, .blob = -1};
    kw_share_request_options po = *o;
    po.select = (kw_select_policy){.mode = KW_SELECT_FULL, .proportion = 1.0, .min_tokens = 1};
    po.select_rows = NULL, po.select_user = NULL, po.on_targets = NULL;
    po.wire = &pw;
    po.overrides = NULL, po.n_overrides = 0;
    po.token_rules = NULL, po.n_token_rules = 0; /* every row at the preview codec, the token schedule's too */
    po.write = kw__sd_preview_write;
    po.user = &pv;
    kw_share_request_stats st;
    memset(&st, 0, sizeof st);
    KW_FORWARD(kw_share_request_run(model, ids, (int64_t)j->req->n_token_ids, &po, &st));
    j->receiver_scored = true;
    j->preview_bytes = st.wire.blob_bytes;
    j->preview_prefill_ms = st.share.prefill_ms;
    j->preview_select_ms = st.share.select_ms;
    j->preview_encode_ms = st.wire.encode_ms;
    KW_FORWARD(kw__sd_wait_selection(r));
    kw_rselect chosen = {0};
    int rc = kw_rselect_decode(j->selection, j->selection_len, (int64_t)j->req->n_token_ids, &chosen);
    if (rc < 0 && rc != KW_E_NOMEM) {
        kw_rselect_free(&chosen);
        KW_FAIL(KW_E_PROTO_FIELD, "ShareSelection: %s", kw_error_detail());
    }
    if (rc == 0) rc = kw__sd_check_selection(&chosen, o);
    if (rc == 0) {
        o->select_rows = kw_rselect_share_select;
        o->select_user = &chosen;
        o->on_targets = NULL; /* the receiver made the subsets */
        rc = kw_share_request_run(model, ids, (int64_t)j->req->n_token_ids, o, &j->stats);
        if (rc == KW_E_STATE) rc = kw_error_set(KW_E_PROTO_FIELD, "ShareSelection: %s", kw_error_detail());
    }
    kw_rselect_free(&chosen);
    return rc;
}

static int kw__sd_share(kw__sd_run *r) {
    kw__sd_job *j = r->job;
    const Kwctl__ShareRequest *req = j->req;
    const kw__sd_model *m = j->model;
    int32_t *layers = malloc((size_t)m->n_layers * sizeof *layers);
    kw_fusion_section *mine = malloc((req->n_sections + 1) * sizeof *mine);
    kw_share_layer_codec *overrides = malloc((req->policy->n_schedule + 1) * sizeof *overrides);
    int32_t *ids = malloc((req->n_token_ids + 1) * sizeof *ids);
    int64_t *skip = malloc((req->policy->n_skip_ranked + 1) * sizeof *skip);
    int rc = 0;
    kw_rscore *scorer = NULL;
    KW_CHECK_IF(!layers || !mine || !overrides || !ids || !skip, KW_E_NOMEM, "sharerd: out of memory");
    for (size_t i = 0; i < req->n_token_ids; ++i)
        ids[i] = req->token_ids[i] > INT32_MAX ? -1 : (int32_t)req->token_ids[i];
    int32_t n_layers = 0;
    kw_wire_policy wire;
    kw_share_request_options o;
    kw_wire_codec_spec budget_codecs[KW_WIRE_ALLOC_MAX_CODECS];
    kw_wire_token_rule token_rules[KW__SD_MAX_TOKEN_RULES];
    kw__sd_options(r->d, req, m, layers, &n_layers, mine, &wire, overrides, budget_codecs, token_rules, &o);
    o.write = kw__sd_write;
    o.user = r;
    for (size_t i = 0; i < req->policy->n_skip_ranked; ++i) /* validated: one per sent section, below its count */
        skip[i] = req->policy->skip_ranked[i];
    o.skip_ranked = req->policy->n_skip_ranked ? skip : NULL;
    kw_wire_policy qpol = wire; /* the delta's round trip: the policy's codecs, a cap's first one (as kvwire c2c) */
    if (o.budget_bytes) qpol.k = qpol.v = budget_codecs[0];
    if (req->policy->scoring == KWCTL__SCORING__SCORING_RECEIVER) { /* validated: a receiver-aware selection */
        rc = kw__sd_share_receiver_scored(r, m, ids, &o);
        goto out;
    }
    if (kw_select_mode_receiver_aware(o.select.mode)) { /* scoring: local (validated) */
        for (size_t i = 0; i < req->n_receiver_token_ids; ++i)
            ids[i] = (int32_t)req->receiver_token_ids[i];
        const kw_rscore_options ro = {.mode = o.select.mode,
                                      .numerics = o.cache_dtype == KW_DTYPE_F32 ? KW_PROJECTOR_FP32 : KW_PROJECTOR_BF16,
                                      .cache_dtype = o.cache_dtype,
                                      .quantize = kw_wire_roundtrip_rows_hook,
                                      .quantize_user = &qpol};
        rc = kw_rscore_create(r->w->score_model, r->w->score_fusion[m - r->d->models], 0, ids,
                              (int64_t)req->n_receiver_token_ids, &ro, &scorer);
        for (size_t i = 0; i < req->n_token_ids; ++i) /* the sharer's own ids again */
            ids[i] = req->token_ids[i] > INT32_MAX ? -1 : (int32_t)req->token_ids[i];
        KW_CHECK(rc);
        o.select_rows = kw_rscore_share_select;
        o.select_user = scorer;
        o.on_targets = kw__sd_targets;
    }
    rc = kw_share_request_run(r->w->models[m - r->d->models], ids, (int64_t)req->n_token_ids, &o, &j->stats);
    if (scorer) j->rscore = *kw_rscore_get_stats(scorer), j->scored = true;
out:
    kw_rscore_free(scorer);
    free(layers), free(mine), free(overrides), free(ids), free(skip);
    return rc;
}

static int kw__sd_relay(kw__sd_run *r) {
    kw__sd_job *j = r->job;
    const Kwctl__ShareRequest *req = j->req;
    const uint64_t t0 = kw_time_now_ns();
    const int64_t max_tokens = req->text_relay_max_tokens ? req->text_relay_max_tokens : r->d->cfg->relay_max_tokens;
    const int64_t cap = req->text_relay_capped ? (int64_t)req->text_relay_max_bytes : -1;
    char date[32];
    const char *chat_date = req->chat_date;
    if (!chat_date[0]) { /* Llama-3.2's "Today Date" as its template's strftime_now("%d %b %Y") */
        const time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        strftime(date, sizeof date, "%d %b %Y", &tm);
        chat_date = date;
    }
    KW_FORWARD(kw_request_relay_styled((enum kw_relay_style)req->relay_style, r->w->models[j->model - r->d->models],
                                       j->model->tok, j->model->family, req->relay_question, chat_date, max_tokens, cap,
                                       kw__sd_cache_dtype(req->cache_dtype), kw__sd_token, r, &j->relay));
    j->generate_ns = kw_time_now_ns() - t0;
    return 0;
}

static void kw__sd_run_job(kw__sd_worker *w, kw__sd_job *j) {
    kw__sd_run r = {.job = j, .d = w->d, .w = w, .timeout_ms = j->req->timeout_ms};
    j->t_started = kw_time_now_ns();
    kw_error_clear();
    int rc = kw__sd_check(&r);
    if (rc == 0) {
        if (j->req->mode == KWCTL__MODE__MODE_TEXT_RELAY)
            rc = kw__sd_relay(&r);
        else if (j->req->mode != KWCTL__MODE__MODE_RECEIVER_ONLY)
            rc = kw__sd_share(&r);
    }
    /* a stop asked for from outside is reported as such, not as whatever the run failed with */
    const int c = atomic_load(&j->cancel);
    if (rc < 0 && c) rc = c;
    j->status = rc;
    if (rc < 0) snprintf(j->error, sizeof j->error, "%s", kw_error_detail()[0] ? kw_error_detail() : kw_strerror(rc));
}

static void kw__sd_compute_thread(void *arg) {
    kw__sd_worker *w = arg;
    kw_sharerd *d = w->d;
    for (kw_queue_item *it; (it = kw_queue_pop(&d->queue)) != NULL;) {
        kw__sd_job *j = (kw__sd_job *)it;
        KW_LOG_DEBUG("sharerd: compute thread %d starts a share of %zu tokens", (int)w->index, j->req->n_token_ids);
        kw__sd_run_job(w, j);
        KW_LOG_DEBUG("sharerd: compute thread %d ends its share", (int)w->index);
        kw__sd_post *p = NULL;
        while (!(p = calloc(1, sizeof *p))) /* the DONE must reach the loop: it holds the queue's reference */
            uv_sleep(10);
        *p = (kw__sd_post){.kind = KW__SD_POST_DONE, .job = j};
        if (kw_net_async_post(d->async, &p->item) < 0) {
            free(p);
            kw__sd_job_unref(j);
        }
    }
    if (atomic_fetch_sub(&d->running, 1) != 1) return; /* the last worker out: the others' DONEs came first */
    kw__sd_post *p = calloc(1, sizeof *p);
    if (p) {
        p->kind = KW__SD_POST_EXIT;
        if (kw_net_async_post(d->async, &p->item) < 0) free(p);
    }
}

/* The workers: 0 on the daemon's own state, 1.. each on a stream context with forks (after every model loaded). */
static int kw__sd_workers_create(kw_sharerd *d, int32_t n) {
    d->workers = calloc((size_t)n, sizeof *d->workers);
    KW_RETURN_IF(!d->workers, KW_E_NOMEM, "sharerd: out of memory");
    d->n_workers = n;
    for (int32_t k = 0; k < n; ++k) {
        kw__sd_worker *w = &d->workers[k];
        w->d = d, w->index = k;
        if (k == 0) {
            w->be = d->be, w->score_model = d->score_model;
            for (int32_t i = 0; i < d->n_models; ++i)
                w->models[i] = d->models[i].model, w->score_fusion[i] = d->score_fusion[i];
            continue;
        }
        KW_FORWARD(kw_backend_create_stream(d->be, &w->be));
        for (int32_t i = 0; i < d->n_models; ++i)
            KW_FORWARD(kw_model_fork(d->models[i].model, w->be, &w->models[i]));
        if (!d->score_model) continue;
        KW_FORWARD(kw_model_fork(d->score_model, w->be, &w->score_model));
        for (int32_t i = 0; i < d->n_models; ++i) {
            if (!d->score_fusion[i]) continue; /* the fuser does not fit that model */
            const kw_fusion_sharer sh = {.model = w->models[i], .fuser = d->score_fuser};
            KW_FORWARD(kw_fusion_create(w->score_model, &sh, 1, 0, &w->score_fusion[i]));
        }
    }
    return 0;
}

static void kw__sd_workers_free(kw_sharerd *d) {
    for (int32_t k = 1; d->workers && k < d->n_workers; ++k) { /* worker 0 borrows the daemon's */
        kw__sd_worker *w = &d->workers[k];
        for (int32_t i = 0; i < KW_SHARERD_MAX_MODELS; ++i)
            kw_fusion_free(w->score_fusion[i]);
        kw_model_free(w->score_model);
        for (int32_t i = 0; i < KW_SHARERD_MAX_MODELS; ++i)
            kw_model_free(w->models[i]);
        kw_backend_destroy(w->be);
    }
    free(d->workers);
    d->workers = NULL;
    d->n_workers = 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Posts from the compute thread (loop thread)

static void kw__sd_wire_done(kw_net_conn *conn, int status, void *user) {
    kw__sd_post *p = user;
    (void)conn, (void)status;
    uv_mutex_lock(&p->job->mu);
    p->job->pending -= p->len;
    uv_cond_broadcast(&p->job->cond);
    uv_mutex_unlock(&p->job->mu);
    kw__sd_job_unref(p->job);
    free(p->data);
    free(p);
}

/* ShareEnd's fields; b and budget (with budget_counts, KW_WIRE_ALLOC_MAX_CODECS entries) are the caller's. */
static void kw__sd_fill_end(const kw__sd_job *j, Kwctl__ShareEnd *e, Kwctl__WireBreakdown *b,
                            Kwctl__BudgetReport *budget, uint64_t *budget_counts, Kwctl__ScoringReport *scoring) {
    const kw_share_stats *s = &j->stats.share;
    const kw_share_wire_stats *w = &j->stats.wire;
    e->request_id = j->req->request_id;
    e->blob_bytes = w->blob_bytes;
    e->sections = (uint32_t)w->sections;
    e->compressed_sections = (uint32_t)w->compressed_sections;
    e->device_sections = (uint32_t)w->device_sections;
    e->tokens_prefilled = (uint32_t)j->req->n_token_ids;
    e->tokens_kept = 0;
    e->queue_ns = j->t_started - j->t_received;
    e->prefill_ns = (uint64_t)(s->prefill_ms * 1e6);
    e->select_ns = (uint64_t)(s->select_ms * 1e6);
    e->encode_ns = (uint64_t)(w->encode_ms * 1e6);
    e->generate_ns = j->generate_ns;
    e->total_ns = kw_time_now_ns() - j->t_received;
    e->frames_sent = j->frames + 1;
    e->rows_total = (uint64_t)s->tokens_total;
    e->rows_sent = (uint64_t)s->tokens_sent - w->tokens_dropped; /* a cap's allocator drops some of the selected */
    e->layers_sent = (uint32_t)s->layers_sent;
    e->kv_bytes = (uint64_t)s->kv_bytes;
    if (s->layers_sent > 0) {
        /* tokens kept per layer: the rows of one layer of every sent section */
        e->tokens_kept =
            (uint32_t)(e->rows_sent / (uint64_t)(s->layers_sent / (s->sections_sent ? s->sections_sent : 1)));
        if (e->tokens_kept > e->tokens_prefilled) e->tokens_kept = e->tokens_prefilled;
    }
    const kw_wire_breakdown *bd = &w->breakdown;
    *b = (Kwctl__WireBreakdown)KWCTL__WIRE_BREAKDOWN__INIT;
    b->header = bd->header, b->indices = bd->indices, b->scales = bd->scales, b->payload = bd->payload;
    b->checksums = bd->checksums, b->compression_saved = bd->compression_saved, b->outliers = bd->outliers;
    e->breakdown = b;
    const Kwctl__SharePolicy *p = j->req->policy;
    if (p && p->budget_bytes) {
        *budget = (Kwctl__BudgetReport)KWCTL__BUDGET_REPORT__INIT;
        budget->cap_bytes = p->budget_bytes;
        budget->min_bytes = w->budget_min_bytes;
        budget->tokens_candidate = w->tokens_candidate;
        budget->tokens_dropped = w->tokens_dropped;
        budget->distortion = w->distortion;
        budget->n_tokens_per_codec = p->n_budget_codecs;
        for (size_t i = 0; i < p->n_budget_codecs && i < KW_WIRE_ALLOC_MAX_CODECS; ++i)
            budget_counts[i] = w->tokens_per_codec[i];
        budget->tokens_per_codec = budget_counts;
        e->budget = budget;
    }
    if (j->scored) {
        *scoring = (Kwctl__ScoringReport)KWCTL__SCORING_REPORT__INIT;
        scoring->receiver_prefill_ns = (uint64_t)(j->rscore.prefill_ms * 1e6);
        scoring->projection_ns = (uint64_t)(j->rscore.projection_ms * 1e6);
        scoring->projections = (uint32_t)j->rscore.projections;
        e->scoring = scoring;
    }
    if (j->receiver_scored) { /* the preview run's time counts in the share's stages */
        *scoring = (Kwctl__ScoringReport)KWCTL__SCORING_REPORT__INIT;
        scoring->placement = KWCTL__SCORING__SCORING_RECEIVER;
        scoring->preview_bytes = j->preview_bytes;
        scoring->selection_bytes = j->selection_len;
        scoring->wait_ns = j->wait_ns;
        e->scoring = scoring;
        e->prefill_ns += (uint64_t)(j->preview_prefill_ms * 1e6);
        e->select_ns += (uint64_t)(j->preview_select_ms * 1e6);
        e->encode_ns += (uint64_t)(j->preview_encode_ms * 1e6);
    }
}

static void kw__sd_answer(kw__sd_conn *c, kw__sd_job *j);

/* The job is DONE: its answer (ShareText for the relay and ShareEnd, or Error) if its connection is still there. */
static void kw__sd_finish(kw__sd_job *j) {
    kw_sharerd *d = j->d;
    kw__sd_conn *c = j->conn;
    --d->queued;
    if (j->status == 0)
        ++d->requests_ok;
    else if (j->status == KW_E_CANCELLED)
        ++d->requests_cancelled;
    else
        ++d->requests_failed;
    if (c) kw__sd_answer(c, j);
    kw__sd_job_unref(j); /* the loop's reference */
}

/* The request's mode as receiverd names it (kw_rd_mode_name), for the journal's KW_MODE. */
static const char *kw__sd_mode_name(Kwctl__Mode mode) {
    switch (mode) {
    case KWCTL__MODE__MODE_RECEIVER_ONLY:
        return "receiver_only";
    case KWCTL__MODE__MODE_C2C:
        return "c2c";
    case KWCTL__MODE__MODE_KV_DIRECT:
        return "kv_direct";
    case KWCTL__MODE__MODE_TEXT_RELAY:
        return "text_relay";
    default:
        return "unspecified";
    }
}

/* The request's log line: its words on stderr; in the journal also the fields of kw_log_request, the model, the
 * frames and the peer. */
static void kw__sd_log_request(const kw__sd_conn *c, const kw__sd_job *j) {
    const double ms = kw_time_ms(j->t_received, kw_time_now_ns());
    const bool ok = j->status == 0;
    const kw_log_request r = {.id = j->req->request_id,
                              .mode = kw__sd_mode_name(j->req->mode),
                              .status = j->status,
                              .bytes_sent = ok ? (int64_t)j->stats.wire.blob_bytes : -1,
                              .bytes_received = -1,
                              .duration_ms = ok ? ms : -1};
    kw_log_fields f = {0};
    kw_log_fields_request(&f, &r);
    kw_log_fields_add(&f, "KW_PEER", "%s", c->peer);
    if (!ok) {
        KW_LOG_WITH(KW_LOG_LEVEL_INFO, &f, "sharerd: %s: request %llu failed: %s (%s)", c->peer,
                    (unsigned long long)r.id, j->error, kw_status_name(j->status));
        return;
    }
    kw_log_fields_add(&f, "KW_MODEL", "%s", j->model->name);
    kw_log_fields_add(&f, "KW_FRAMES", "%llu", (unsigned long long)j->frames);
    KW_LOG_WITH(KW_LOG_LEVEL_INFO, &f, "sharerd: %s: request %llu ok: model %s, %llu frames, blob %llu B, %.1f ms",
                c->peer, (unsigned long long)r.id, j->model->name, (unsigned long long)j->frames,
                (unsigned long long)r.bytes_sent, ms);
}

/* Sends the job's answer on c and ends the request there. */
static void kw__sd_answer(kw__sd_conn *c, kw__sd_job *j) {
    int rc = 0;
    kw__sd_log_request(c, j);
    if (j->status < 0) {
        kw__sd_send_error(c, j->req->request_id, j->status, j->error);
    } else {
        if (j->req->mode == KWCTL__MODE__MODE_TEXT_RELAY) {
            Kwctl__ShareText t = KWCTL__SHARE_TEXT__INIT;
            t.request_id = j->req->request_id;
            t.text = (ProtobufCBinaryData){j->relay.len, (uint8_t *)j->relay.text};
            t.n_tokens = (uint32_t)j->relay.n_tokens;
            t.truncated = j->relay.truncated != 0;
            rc = kw__sd_send(c, KW_PROTO_FRAME_SHARE_TEXT, &t.base);
            ++j->frames;
        }
        Kwctl__ShareEnd e = KWCTL__SHARE_END__INIT;
        Kwctl__WireBreakdown b;
        Kwctl__BudgetReport budget;
        uint64_t budget_counts[KW_WIRE_ALLOC_MAX_CODECS];
        Kwctl__ScoringReport scoring;
        kw__sd_fill_end(j, &e, &b, &budget, budget_counts, &scoring);
        if (rc == 0) rc = kw__sd_send(c, KW_PROTO_FRAME_SHARE_END, &e.base);
        if (rc < 0) kw_net_conn_abort(c->conn, rc);
        KW_LOG_DEBUG("sharerd: %s: request %llu done: %llu blob bytes in %llu frames", c->peer,
                     (unsigned long long)j->req->request_id, (unsigned long long)e.blob_bytes,
                     (unsigned long long)e.frames_sent);
    }
    c->job = NULL;
    j->conn = NULL;
    kw_net_conn_deadline_stop(c->conn);
}

static void kw__sd_on_post(kw_net_async_item *item, void *user) {
    kw_sharerd *d = user;
    kw__sd_post *p = (kw__sd_post *)item;
    if (p->kind == KW__SD_POST_EXIT) {
        free(p);
        kw_net_async_close(d->async);
        d->async = NULL;
        /* SIGTERM and SIGINT are ignored from here on (kw_net_signals_close): a repeated one (scancel and a job
         * script both send one) must not kill the process while it frees its models; it is stopping already */
        kw_net_signals_close(d->signals);
        d->signals = NULL;
        kw_net_service_close(d->service);
        d->service = NULL;
        return;
    }
    kw__sd_job *j = p->job;
    if (p->kind == KW__SD_POST_DONE) {
        free(p);
        kw__sd_finish(j);
        kw__sd_job_unref(j); /* the queue's reference */
        return;
    }
    /* WIRE: header copied, bytes borrowed until the write is done (which releases them and the pending count) */
    kw__sd_conn *c = j->conn;
    atomic_fetch_add(&j->refs, 1);
    int rc = KW_E_NET_CLOSED;
    if (c && p->kind == KW__SD_POST_FRAME) { /* a packed frame: its header copied, the rest borrowed */
        const kw_net_buf b = {p->data + KW_PROTO_FRAME_HEADER_BYTES, p->len - KW_PROTO_FRAME_HEADER_BYTES};
        rc = kw_net_conn_write(c->conn, p->data, KW_PROTO_FRAME_HEADER_BYTES, &b, 1, kw__sd_wire_done, p);
        if (rc >= 0) ++j->frames;
    } else if (c) {
        uint8_t head[KW_PROTO_FRAME_HEADER_BYTES];
        kw_proto_frame_header_write(KW_PROTO_FRAME_WIRE, p->len, head);
        const kw_net_buf b = {p->data, p->len};
        rc = kw_net_conn_write(c->conn, head, sizeof head, &b, 1, kw__sd_wire_done, p);
        if (rc >= 0) ++j->frames;
    }
    if (rc < 0) {
        if (c) kw_net_conn_abort(c->conn, rc);
        kw__sd_wire_done(NULL, rc, p);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Requests (loop thread)

static const kw__sd_model *kw__sd_find_model(const kw_sharerd *d, const char *name) {
    for (int32_t i = 0; i < d->n_models; ++i)
        if (strcmp(d->models[i].name, name) == 0) return &d->models[i];
    return NULL;
}

/* A capped request (SharePolicy.budget_bytes): a cap that holds the request's mandatory bytes; for a whole-layer
 * baseline, its plan over the layers asked for (kvcomm_like: every one of them, c2c only). */
static int kw__sd_validate_budget(const Kwctl__ShareRequest *req, const kw_wire_header *hdr,
                                  const kw_select_policy *sel, const kw_wire_codec_spec *codecs, uint32_t n_codecs) {
    const enum kw_wire_budget_mode mode = (enum kw_wire_budget_mode)req->policy->budget_mode;
    KW_RETURN_IF(mode == KW_WIRE_BUDGET_KVCOMM_LIKE && req->mode != KWCTL__MODE__MODE_C2C, KW_E_UNSUPPORTED,
                 "budget_mode kvcomm_like leaves layers out: kv_direct needs every layer");
    uint32_t n_blobs = 0, blob_rows[KW_REQUEST_MAX_SECTIONS];
    for (size_t s = 0; s < req->n_sections; ++s)
        if (req->sections[s]->sent) blob_rows[n_blobs++] = (uint32_t)kw_select_count(sel, req->sections[s]->length);
    if (hdr->n_sections == 0 || n_blobs == 0) return 0; /* nothing is sent */
    int rc;
    if (mode == KW_WIRE_BUDGET_TOKENS) {
        const kw_wire_alloc_options ao = {.codecs = codecs, .n_codecs = n_codecs};
        rc = kw_wire_alloc_check_cap(hdr, &ao, n_blobs, req->policy->budget_bytes);
    } else {
        const kw_wire_layer_plan_input in = {.hdr = hdr,
                                             .n_layers = hdr->n_sections,
                                             .blob_rows = blob_rows,
                                             .n_blobs = n_blobs,
                                             .codecs = codecs,
                                             .n_codecs = n_codecs,
                                             .index_encoding = KW_WIRE_INDEX_AUTO,
                                             .cap = req->policy->budget_bytes};
        uint8_t choice[KW_WIRE_MAX_LAYERS];
        uint64_t bytes = 0, min_bytes = 0;
        rc = kw_wire_plan_layers(mode, &in, choice, &bytes, &min_bytes);
        for (uint32_t i = 0; rc == 0 && i < hdr->n_sections; ++i)
            if (!choice[i])
                rc = kw_error_set(KW_E_INVALID_ARG,
                                  "kvcomm_like: a cap of %llu bytes holds only some of the %u layers "
                                  "asked for",
                                  (unsigned long long)req->policy->budget_bytes, hdr->n_sections);
    }
    if (rc < 0) KW_FAIL(rc, "budget_bytes: %s", kw_error_detail());
    return 0;
}

/* A receiver-aware selection (scoring: local): this sharer holds the receiver model and a fuser that fits the
 * request's model, the receiver is that model, its ids fit it. */
static int kw__sd_validate_scoring(const kw__sd_conn *c, const Kwctl__ShareRequest *req, const kw__sd_model *m) {
    const kw_sharerd *d = c->d;
    const char *sel = kw_select_mode_name((enum kw_select_mode)(req->policy->selection - 1));
    if (req->policy->scoring == KWCTL__SCORING__SCORING_RECEIVER) { /* the receiver scores: no model needed here */
        KW_RETURN_IF(req->policy->budget_bytes > 0, KW_E_SHARE_MODE, "%s with scoring: receiver takes no budget_bytes",
                     sel);
        return 0;
    }
    KW_RETURN_IF(d->score_model == NULL, KW_E_SHARE_MODE,
                 "%s is scored at the sharer (scoring: local), and this sharer has no receiver model "
                 "(scoring_receiver.model and scoring_receiver.fuser)",
                 sel);
    KW_RETURN_IF(d->score_fusion[m - d->models] == NULL, KW_E_SHARE_MODE,
                 "%s: this sharer's scoring fuser does not fit model %s", sel, m->name);
    const Kwctl__ModelDigest *peer = c->hello->n_models ? c->hello->models[0]->digest : NULL;
    KW_RETURN_IF(c->hello->role == KWCTL__ROLE__ROLE_RECEIVER && !kw_proto_same_model(&d->score_id.id_digest, peer),
                 KW_E_SHARE_MODE, "%s: the receiver's model is not this sharer's scoring model (digests differ)", sel);
    for (size_t i = 0; i < req->n_receiver_token_ids; ++i)
        KW_RETURN_IF(req->receiver_token_ids[i] >= (uint32_t)d->score_id.vocab, KW_E_TOKEN_ID,
                     "receiver token id %u is outside the scoring model's %d-id vocabulary", req->receiver_token_ids[i],
                     (int)d->score_id.vocab);
    return 0;
}

/* Checks a request against the model and the peer; fills the ShareHeader's claims. */
static int kw__sd_validate(kw__sd_conn *c, const Kwctl__ShareRequest *req, const kw__sd_model **model,
                           Kwctl__ShareHeader *h, uint32_t *layers, Kwctl__KvShape *kv) {
    const kw_sharerd *d = c->d;
    const bool kv_mode = req->mode == KWCTL__MODE__MODE_C2C || req->mode == KWCTL__MODE__MODE_KV_DIRECT;
    *model = NULL;
    if (req->mode == KWCTL__MODE__MODE_RECEIVER_ONLY) return 0;
    const kw__sd_model *m = kw__sd_find_model(d, req->sharer_model);
    KW_RETURN_IF(m == NULL, KW_E_NOT_FOUND, "no model named \"%s\" here", req->sharer_model);
    *model = m;
    if (req->mode == KWCTL__MODE__MODE_TEXT_RELAY) {
        KW_RETURN_IF(m->tok == NULL && req->relay_style == KWCTL__RELAY_STYLE__RELAY_STYLE_GENERATED, KW_E_UNSUPPORTED,
                     "model %s has no tokenizer for the text relay", m->name);
        return 0;
    }
    if (!kv_mode) return 0;
    const Kwctl__Hello *hello = c->hello;
    if (req->mode == KWCTL__MODE__MODE_KV_DIRECT) {
        const Kwctl__ModelDigest *peer = hello->n_models ? hello->models[0]->digest : NULL;
        KW_RETURN_IF(!kw_proto_same_model(&m->id_digest, peer), KW_E_SHARE_MODE,
                     "kv_direct needs the receiver's own model: %s is other files (digests differ)", m->name);
    } else if (hello->role == KWCTL__ROLE__ROLE_RECEIVER) {
        bool fits = false;
        char why[256] = "the receiver lists no fuser";
        for (size_t i = 0; i < hello->n_fusers && !fits; ++i)
            fits = kw_proto_fuser_fits(hello->fusers[i], &m->id, why, sizeof why);
        KW_RETURN_IF(!fits, KW_E_SHARE_MODE, "c2c from %s: %s", m->name, why);
    }
    KW_RETURN_IF(req->n_token_ids > (size_t)d->cfg->max_tokens, KW_E_LIMIT, "%zu token ids, the limit is %lld",
                 req->n_token_ids, (long long)d->cfg->max_tokens);
    const int64_t context = kw_model_get_config(m->model)->max_positions;
    KW_RETURN_IF(req->n_token_ids > (size_t)context, KW_E_LIMIT,
                 "%zu token ids exceed model %s's context of %lld positions (max_position_embeddings)",
                 req->n_token_ids, m->name, (long long)context);
    const Kwctl__SharePolicy *p = req->policy;
    for (size_t i = 0; i < p->n_layers; ++i)
        KW_RETURN_IF(p->layers[i] >= (uint32_t)m->n_layers, KW_E_INVALID_ARG, "layer %u: model %s has %d layers",
                     p->layers[i], m->name, (int)m->n_layers);
    for (size_t i = 0; i < req->n_token_ids; ++i)
        KW_RETURN_IF(req->token_ids[i] >= (uint32_t)m->vocab, KW_E_TOKEN_ID,
                     "token id %u is outside model %s's %d-id vocabulary", req->token_ids[i], m->name, (int)m->vocab);
    const kw_select_policy sel = {.mode = (enum kw_select_mode)(p->selection - 1),
                                  .proportion = p->selection == KWCTL__SELECTION__SELECTION_FULL ? 1.0 : p->proportion,
                                  .min_tokens = p->min_tokens ? p->min_tokens : 1,
                                  .seed = p->seed};
    KW_FORWARD(kw_select_policy_check(&sel));
    if (kw_select_mode_receiver_aware(sel.mode)) KW_FORWARD(kw__sd_validate_scoring(c, req, m));
    /* the header's claims: the layers, the kept tokens, and bounds of the blobs from the codecs */
    size_t n_layers = 0;
    if (p->n_layers == 0)
        for (int32_t l = 0; l < m->n_layers; ++l)
            layers[n_layers++] = (uint32_t)l;
    else
        for (size_t i = 0; i < p->n_layers; ++i)
            layers[n_layers++] = p->layers[i];
    uint64_t kept = 0, blob_max = 0, section_max = 0;
    kw_wire_codec_spec budget_codecs[KW_WIRE_ALLOC_MAX_CODECS];
    const uint32_t n_budget = kw__sd_budget_codecs(p, budget_codecs);
    kw_wire_token_rule token_rules[KW__SD_MAX_TOKEN_RULES];
    const uint32_t n_token_rules = kw__sd_token_rules(p, token_rules);
    const kw_wire_header hdr = {.n_layers = (uint16_t)m->n_layers,
                                .n_sections = (uint16_t)n_layers,
                                .n_kv_heads = (uint16_t)m->n_kv_heads,
                                .head_dim = (uint16_t)m->head_dim,
                                .n_positions = (uint32_t)req->n_token_ids,
                                .src_dtype = KW_WIRE_DTYPE_F32,
                                .version = KW_WIRE_VERSION_1_1}; /* bounds only: v1.1's hold for v1 blobs */
    if (p->budget_bytes) KW_FORWARD(kw__sd_validate_budget(req, &hdr, &sel, budget_codecs, n_budget));
    size_t blob = 0;
    for (size_t s = 0; s < req->n_sections; ++s) {
        if (!req->sections[s]->sent) continue;
        /* round two of a refinement: the ranks [skip, count) only, and at least one of them */
        kw_select_policy ranked = sel;
        ranked.skip = p->n_skip_ranked ? p->skip_ranked[blob] : 0;
        ++blob;
        const int skip_rc = kw_select_check_skip(&ranked, req->sections[s]->length);
        if (skip_rc < 0) KW_FAIL(skip_rc, "SharePolicy.skip_ranked: %s", kw_error_detail());
        const int64_t rows = kw_select_count(&ranked, req->sections[s]->length) - ranked.skip;
        kept += (uint64_t)rows;
        blob_max += KW_WIRE_HEADER_BYTES + KW_WIRE_TRAILER_BYTES;
        for (size_t i = 0; i < n_layers; ++i) {
            /* a receiver-aware selection sends the union of its receiver layers' rows: up to k per receiver layer */
            int64_t layer_rows = rows;
            const bool receiver_scores = p->scoring == KWCTL__SCORING__SCORING_RECEIVER;
            if (receiver_scores) { /* the receiver's targets are not known here: every row, and the preview's */
                layer_rows = (int64_t)req->sections[s]->length;
                kw_wire_policy pw = {.k = kw__sd_spec(p->preview ? p->preview : &kw__sd_preview_default),
                                     .v = kw__sd_spec(p->preview ? p->preview : &kw__sd_preview_default)};
                size_t b = 0;
                const int rc = kw_wire_section_bound(&hdr, &pw, (uint32_t)layer_rows, &b);
                if (rc < 0) KW_FAIL(rc, "SharePolicy.preview: %s", kw_error_detail());
                if (b > section_max) section_max = b;
            } else if (kw_select_mode_receiver_aware(sel.mode)) {
                int32_t targets[KW_SHARE_MAX_TARGETS], n_targets = 0;
                KW_FORWARD(kw_fusion_layer_targets(d->score_fusion[m - d->models], 0, (int32_t)layers[i], targets,
                                                   KW_SHARE_MAX_TARGETS, &n_targets));
                layer_rows = rows * (n_targets > 1 ? n_targets : 1);
                if (layer_rows > (int64_t)req->sections[s]->length) layer_rows = (int64_t)req->sections[s]->length;
            }
            kw_wire_policy pol = {
                .k = kw__sd_spec(p->k),
                .v = kw__sd_spec(p->v),
                .outliers = (uint32_t)floor(
                    p->outlier_ppm / 1e6 * 2.0 * (double)layer_rows * (double)(m->n_kv_heads * m->head_dim) + 0.5),
                .pre_rope = (uint8_t)p->pre_rope_keys,
                .rotate = (uint8_t)p->hadamard_rotate,
                .clip = (uint8_t)p->clip_scales};
            for (size_t k = 0; k < p->n_schedule; ++k)
                if (p->schedule[k]->layer == layers[i]) {
                    pol.k = kw__sd_spec(p->schedule[k]->k);
                    pol.v = kw__sd_spec(p->schedule[k]->v);
                    if (p->schedule[k]->own_options)
                        pol.rotate = (uint8_t)p->schedule[k]->hadamard_rotate,
                        pol.clip = (uint8_t)p->schedule[k]->clip_scales;
                }
            size_t bound = 0;
            for (uint32_t bc = 0; bc < (n_budget ? n_budget : 1); ++bc) { /* a cap: the largest of its codecs */
                if (n_budget) pol.k = pol.v = budget_codecs[bc];
                size_t b = 0;
                const int rc = kw_wire_section_bound(&hdr, &pol, (uint32_t)layer_rows, &b);
                if (rc < 0) KW_FAIL(rc, "layer %u's codecs: %s", layers[i], kw_error_detail());
                bound = b > bound ? b : bound;
            }
            KW_FORWARD(kw__sd_token_bound(&hdr, &pol, token_rules, n_token_rules, (uint32_t)layer_rows, &bound));
            blob_max += bound;
            if (bound > section_max) section_max = bound;
        }
    }
    if (p->budget_bytes && blob_max > p->budget_bytes) blob_max = p->budget_bytes;
    *kv = (Kwctl__KvShape)KWCTL__KV_SHAPE__INIT;
    kv->n_layers = (uint32_t)m->n_layers, kv->n_kv_heads = (uint32_t)m->n_kv_heads,
    kv->head_dim = (uint32_t)m->head_dim;
    h->layers = layers;
    h->n_layers = n_layers;
    h->tokens_kept = kept > req->n_token_ids ? (uint32_t)req->n_token_ids : (uint32_t)kept;
    h->blob_bytes_max = blob_max;
    h->section_bytes_max = section_max > UINT32_MAX ? UINT32_MAX : (uint32_t)section_max;
    h->kv = kv;
    return 0;
}

static int kw__sd_on_request(kw__sd_conn *c, Kwctl__ShareRequest *req) {
    kw_sharerd *d = c->d;
    if (c->job) {
        kw__sd_send_error(c, req->request_id, KW_E_PROTO_SEQUENCE,
                          "one share in flight per connection: wait for the previous SHARE_END or ERROR");
        kw_proto_message_free(&req->base);
        return 0;
    }
    if (d->shutting_down) {
        kw__sd_send_error(c, req->request_id, KW_E_NET_SHUTDOWN, "the sharer is shutting down");
        kw_proto_message_free(&req->base);
        return 0;
    }
    if (d->queued >= d->cfg->queue_max) {
        ++d->requests_busy;
        char msg[128];
        snprintf(msg, sizeof msg, "%d requests are queued, the limit is %lld: retry later", (int)d->queued,
                 (long long)d->cfg->queue_max);
        kw__sd_send_error(c, req->request_id, KW_E_SHARE_BUSY, msg);
        kw_proto_message_free(&req->base);
        return 0;
    }
    const kw__sd_model *m = NULL;
    Kwctl__ShareHeader h = KWCTL__SHARE_HEADER__INIT;
    Kwctl__KvShape kv;
    uint32_t layers[KW_WIRE_MAX_LAYERS];
    kw_error_clear();
    int rc = kw__sd_validate(c, req, &m, &h, layers, &kv);
    if (rc < 0) {
        ++d->requests_failed;
        kw__sd_send_error(c, req->request_id, rc, kw_error_detail());
        kw_proto_message_free(&req->base);
        return 0;
    }
    kw__sd_job *j = calloc(1, sizeof *j);
    if (!j) {
        kw__sd_send_error(c, req->request_id, KW_E_NOMEM, "out of memory");
        kw_proto_message_free(&req->base);
        return 0;
    }
    uv_mutex_init(&j->mu);
    uv_cond_init(&j->cond);
    atomic_init(&j->refs, 2); /* the loop's and the compute queue's */
    atomic_init(&j->cancel, 0);
    j->d = d;
    j->conn = c;
    j->req = req;
    j->model = m;
    j->t_received = kw_time_now_ns();
    h.request_id = req->request_id;
    h.mode = req->mode;
    h.tokens_prefilled = (uint32_t)req->n_token_ids;
    rc = kw__sd_send(c, KW_PROTO_FRAME_SHARE_HEADER, &h.base);
    if (rc < 0) {
        kw__sd_job_unref(j);
        kw__sd_job_unref(j);
        return rc;
    }
    j->frames = 1;
    c->job = j;
    ++d->queued;
    kw_net_conn_deadline_start(c->conn, 0);    /* a request in flight: no idle timeout, shutdown waits for it */
    if (!kw_queue_push(&d->queue, &j->item)) { /* stopping: it never runs */
        j->status = KW_E_NET_SHUTDOWN;
        snprintf(j->error, sizeof j->error, "the sharer is shutting down");
        kw__sd_finish(j);
        kw__sd_job_unref(j);
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Hello (loop thread)

/* Whether this peer can use any model here; *why says what is missing when not. */
static bool kw__sd_pair_possible(const kw_sharerd *d, const Kwctl__Hello *h, char *why, size_t cap) {
    if (h->role != KWCTL__ROLE__ROLE_RECEIVER || h->n_fusers == 0) return true; /* text relay, tools */
    const Kwctl__ModelDigest *own = h->n_models ? h->models[0]->digest : NULL;
    size_t at = (size_t)snprintf(why, cap, "no model here fits the receiver:");
    for (int32_t i = 0; i < d->n_models; ++i) {
        const kw__sd_model *m = &d->models[i];
        if (kw_proto_same_model(&m->id_digest, own)) return true;
        for (size_t f = 0; f < h->n_fusers; ++f) {
            char one[256];
            if (kw_proto_fuser_fits(h->fusers[f], &m->id, one, sizeof one)) return true;
            if (at < cap) at += (size_t)snprintf(why + at, cap - at, " %s;", one);
        }
    }
    return false;
}

static int kw__sd_on_hello(kw__sd_conn *c, Kwctl__Hello *h) {
    kw_sharerd *d = c->d;
    c->hello = h;
    c->hello_done = true;
    kw_net_conn_deadline_stop(c->conn);
    Kwctl__HelloReply r = KWCTL__HELLO_REPLY__INIT;
    r.protocol_version = h->protocol_version < KW_PROTO_VERSION ? h->protocol_version : KW_PROTO_VERSION;
    r.software = KW__SD_SOFTWARE;
    char reason[2048] = "";
    if (h->role == KWCTL__ROLE__ROLE_SHARER) {
        r.status = KW_E_PROTO_REFUSED;
        snprintf(reason, sizeof reason, "a sharer does not connect to a sharer");
    } else if (!kw__sd_pair_possible(d, h, reason, sizeof reason)) {
        r.status = KW_E_PROTO_REFUSED;
    }
    if (r.status < 0) {
        r.accepted = 0;
        r.reason = reason;
        c->refused = true;
        KW_LOG_INFO("sharerd: %s: hello refused: %s", c->peer, reason);
        KW_FORWARD(kw__sd_send(c, KW_PROTO_FRAME_HELLO_REPLY, &r.base));
        kw_net_conn_close(c->conn, KW_E_PROTO_REFUSED);
        return 0;
    }
    Kwctl__ModelIdentity *ids[KW_SHARERD_MAX_MODELS];
    for (int32_t i = 0; i < d->n_models; ++i)
        ids[i] = &d->models[i].id;
    r.accepted = 1;
    r.role = KWCTL__ROLE__ROLE_SHARER;
    r.models = ids;
    r.n_models = (size_t)d->n_models;
    r.codecs = d->codecs;
    r.n_codecs = KW_WIRE_CODEC_COUNT_V11 - 1;
    r.max_frame_bytes = (uint32_t)d->cfg->max_message_bytes;
    r.max_queued_requests = (uint32_t)d->cfg->queue_max;
    KW_LOG_DEBUG("sharerd: %s: hello from %s", c->peer, h->software);
    return kw__sd_send(c, KW_PROTO_FRAME_HELLO_REPLY, &r.base);
}

static void kw__sd_fill_stats(kw_sharerd *d, Kwctl__Stats *s) {
    s->uptime_ms = (kw_time_now_ns() - d->t_start) / 1000000u;
    s->requests_ok = d->requests_ok;
    s->requests_failed = d->requests_failed;
    s->requests_cancelled = d->requests_cancelled;
    s->requests_busy = d->requests_busy;
    s->bytes_in = d->bytes_in;
    s->bytes_out = d->bytes_out;
    s->queue_depth = (uint32_t)d->queued;
    s->connections = d->server ? (uint32_t)kw_net_server_connections(d->server) : 0;
}

/* One frame from the peer. */
/* SHARE_SELECTION (scoring: receiver): handed to the share's compute job waiting for it. A frame for another request
 * (a share that already ended) is dropped; one the share does not wait for (another placement, a second selection)
 * stops the share with KW_E_PROTO_SEQUENCE. */
static void kw__sd_on_selection(kw__sd_conn *c, const Kwctl__ShareSelection *m) {
    kw__sd_job *j = c->job;
    if (!j || j->req->request_id != m->request_id) {
        KW_LOG_INFO("sharerd: %s: a SHARE_SELECTION for request %llu, not in flight: dropped", c->peer,
                    (unsigned long long)m->request_id);
        return;
    }
    if (!j->req->policy || j->req->policy->scoring != KWCTL__SCORING__SCORING_RECEIVER) {
        kw__sd_job_cancel(j, KW_E_PROTO_SEQUENCE);
        return;
    }
    uint8_t *copy = malloc(m->selection.len ? m->selection.len : 1);
    if (!copy) {
        kw__sd_job_cancel(j, KW_E_NOMEM);
        return;
    }
    memcpy(copy, m->selection.data, m->selection.len);
    uv_mutex_lock(&j->mu);
    const bool second = j->selection_in;
    if (!second) j->selection = copy, j->selection_len = m->selection.len, j->selection_in = true;
    uv_cond_broadcast(&j->cond);
    uv_mutex_unlock(&j->mu);
    if (second) {
        free(copy);
        kw__sd_job_cancel(j, KW_E_PROTO_SEQUENCE);
    }
}

static int kw__sd_on_frame(void *user, const kw_proto_frame *f) {
    kw__sd_conn *c = user;
    kw_sharerd *d = c->d;
    if (c->refused) return 0; /* closing: ignore whatever follows */
    if (f->type == KW_PROTO_FRAME_WIRE) {
        kw__sd_fail_conn(c, KW_E_PROTO_SEQUENCE, "a WIRE frame from a receiver");
        return KW_PROTO_PAUSE;
    }
    const kw_proto_limits lim = {.max_message_bytes = (uint32_t)d->cfg->max_message_bytes,
                                 .max_tokens = (uint32_t)d->cfg->max_tokens};
    ProtobufCMessage *m = NULL;
    kw_error_clear();
    int rc = kw_proto_message_unpack(&lim, f->type, f->data, f->data_len, &m);
    if (rc < 0) {
        /* a bad hello or a frame the protocol never sends this way closes the connection; a bad request fails */
        if (f->type == KW_PROTO_FRAME_SHARE_REQUEST && c->hello_done) {
            ++d->requests_failed;
            kw__sd_send_error(c, 0, rc, kw_error_detail());
            kw_net_conn_close(c->conn, rc);
        } else {
            kw__sd_fail_conn(c, rc, kw_error_detail());
        }
        return KW_PROTO_PAUSE;
    }
    if (!c->hello_done) {
        if (f->type != KW_PROTO_FRAME_HELLO) {
            kw_proto_message_free(m);
            kw__sd_fail_conn(c, KW_E_PROTO_SEQUENCE, "the first frame must be HELLO");
            return KW_PROTO_PAUSE;
        }
        rc = kw__sd_on_hello(c, (Kwctl__Hello *)m);
        return rc < 0 ? rc : (c->refused ? KW_PROTO_PAUSE : 0);
    }
    switch (f->type) {
    case KW_PROTO_FRAME_SHARE_REQUEST:
        return kw__sd_on_request(c, (Kwctl__ShareRequest *)m);
    case KW_PROTO_FRAME_CANCEL: {
        const uint64_t id = ((Kwctl__Cancel *)m)->request_id;
        if (c->job && c->job->req->request_id == id) kw__sd_job_cancel(c->job, KW_E_CANCELLED);
        break;
    }
    case KW_PROTO_FRAME_SHARE_SELECTION:
        kw__sd_on_selection(c, (const Kwctl__ShareSelection *)m);
        break;
    case KW_PROTO_FRAME_PING: {
        Kwctl__Pong p = KWCTL__PONG__INIT;
        p.nonce = ((Kwctl__Ping *)m)->nonce;
        rc = kw__sd_send(c, KW_PROTO_FRAME_PONG, &p.base);
        break;
    }
    case KW_PROTO_FRAME_STATS_REQUEST: {
        Kwctl__Stats s = KWCTL__STATS__INIT;
        kw__sd_fill_stats(d, &s);
        rc = kw__sd_send(c, KW_PROTO_FRAME_STATS, &s.base);
        break;
    }
    case KW_PROTO_FRAME_PONG:
    case KW_PROTO_FRAME_STATS:
        break;
    case KW_PROTO_FRAME_ERROR:
        KW_LOG_INFO("sharerd: %s: peer error %d: %s", c->peer, ((Kwctl__Error *)m)->status,
                    ((Kwctl__Error *)m)->message);
        if (((Kwctl__Error *)m)->request_id == 0) kw_net_conn_close(c->conn, KW_E_NET_CLOSED);
        break;
    default:
        kw_proto_message_free(m);
        kw__sd_fail_conn(c, KW_E_PROTO_SEQUENCE, "a frame a receiver does not send");
        return KW_PROTO_PAUSE;
    }
    kw_proto_message_free(m);
    return rc < 0 ? rc : 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Connections (loop thread)

static int kw__sd_conn_read(kw_net_conn *conn, const uint8_t *data, size_t len, size_t *used) {
    kw__sd_conn *c = kw_net_conn_user(conn);
    const int rc = kw_proto_decoder_feed_all(c->dec, data, len, used, kw__sd_on_frame, c);
    if (rc == KW_PROTO_PAUSE) { /* closing after a failure: drop the rest */
        *used = len;
        return 0;
    }
    if (rc < 0) { /* frame-level garbage: the stream is unreadable */
        kw__sd_fail_conn(c, rc, kw_error_detail());
        *used = len;
        return 0;
    }
    return 0;
}

static void kw__sd_conn_close(kw_net_conn *conn, int status) {
    kw__sd_conn *c = kw_net_conn_user(conn);
    kw_sharerd *d = c->d;
    kw_net_conn_stats st;
    kw_net_conn_get_stats(conn, &st);
    d->bytes_in += st.socket_bytes_in;
    d->bytes_out += st.socket_bytes_out;
    if (status < 0 && status != KW_E_NET_CLOSED)
        KW_LOG_INFO("sharerd: %s: connection closed: %s (%s)", c->peer, kw_status_name(status), kw_error_detail());
    if (c->job) {
        c->job->conn = NULL;
        kw__sd_job_cancel(c->job, KW_E_NET_CLOSED);
        /* the loop's reference goes with the DONE post (kw__sd_finish runs with conn NULL) */
    }
    kw_proto_decoder_destroy(c->dec);
    kw_proto_message_free(c->hello ? &c->hello->base : NULL);
    free(c);
}

static void kw__sd_accept(kw_net_server *s, kw_net_conn *conn, void *user) {
    kw_sharerd *d = user;
    (void)s;
    static const kw_net_conn_callbacks cb = {.on_read = kw__sd_conn_read, .on_close = kw__sd_conn_close};
    kw__sd_conn *c = calloc(1, sizeof *c);
    const kw_proto_decoder_options dopt = {.limits = {.max_message_bytes = (uint32_t)d->cfg->max_message_bytes,
                                                      .max_raw_bytes = 1, /* a receiver never sends WIRE frames */
                                                      .max_tokens = (uint32_t)d->cfg->max_tokens}};
    if (!c || kw_proto_decoder_create(&dopt, &c->dec) < 0) {
        free(c);
        kw_net_conn_set_callbacks(conn, &(kw_net_conn_callbacks){0}, NULL);
        return; /* without callbacks the server closes it */
    }
    c->d = d;
    c->conn = conn;
    kw_net_conn_peer_name(conn, c->peer, sizeof c->peer);
    kw_net_conn_set_callbacks(conn, &cb, c);
    kw_net_conn_deadline_start(conn, (uint32_t)d->cfg->hello_timeout_ms); /* slow or silent peers are dropped */
}

// ---------------------------------------------------------------------------------------------------------------
// Start, run, stop

static void kw__sd_server_done(kw_net_server *s, void *user) {
    kw_sharerd *d = user;
    (void)s;
    kw_queue_close(&d->queue); /* the compute threads drain it (every job is cancelled by now) and exit */
}

static void kw__sd_on_signal(int signum, void *user) {
    kw_sharerd *d = user;
    if (d->shutting_down) return;
    d->shutting_down = true;
    KW_LOG_INFO("sharerd: signal %d: shutting down (requests in flight get %lld ms)", signum,
                (long long)d->cfg->shutdown_ms);
    kw_net_service_stopping(d->service, "stopping (signal %d): %d request(s) to finish", signum, (int)d->queued);
    kw_net_server_shutdown(d->server, (uint32_t)d->cfg->shutdown_ms, kw__sd_server_done, d);
}

/* "serving tiny-qwen2, tiny-qwen3 on 127.0.0.1:7070 (tls)": the service manager's STATUS line. */
static void kw__sd_describe(const kw_sharerd *d, char *out, size_t cap) {
    size_t used = (size_t)snprintf(out, cap, "serving");
    for (int32_t i = 0; i < d->n_models && used < cap; ++i)
        used += (size_t)snprintf(out + used, cap - used, "%s%s", i ? ", " : " ", d->models[i].name);
    if (used < cap)
        snprintf(out + used, cap - used, " on %s:%u (%s)", d->cfg->listen_host, (unsigned)d->port,
                 d->tls ? "tls" : "tcp");
}

/* SIGHUP: reads the config again; applies log.level and the TLS files (for new connections), refuses the rest. */
static void kw__sd_on_reload(void *user) {
    kw_sharerd *d = user;
    if (d->shutting_down) return;
    kw_net_service_reloading(d->service);
    KW_LOG_INFO("sharerd: SIGHUP: reloading the configuration");
    kw_sharerd_config next;
    memset(&next, 0, sizeof next); /* freed below whatever happens */
    char refused[512];
    int n_refused = 0;
    int rc = d->reload_argv ? kw_cfg_reload(&kw_sharerd_config_table, d->cfg, &next, sizeof next, d->reload_argc,
                                            d->reload_argv, refused, sizeof refused, &n_refused)
                            : kw_error_set(KW_E_STATE, "no command line to read again");
    if (rc < 0) {
        KW_LOG_WARN("sharerd: reload failed, the configuration in force is unchanged: %s", kw_error_detail());
    } else {
        if (n_refused)
            KW_LOG_WARN("sharerd: reload: %d changed key(s) need a restart and keep their running values: %s",
                        n_refused, refused);
        if (next.log_level != d->log_level) {
            KW_LOG_INFO("sharerd: reload: log level %s -> %s", kw_log_level_name((enum kw_log_level)d->log_level),
                        kw_log_level_name((enum kw_log_level)next.log_level));
            d->log_level = next.log_level;
            kw_log_set_level((enum kw_log_level)next.log_level);
        }
        if (d->tls) {
            const kw_net_tls_config tc = {.cert_file = next.tls_cert,
                                          .key_file = next.tls_key,
                                          .ca_file = next.tls_ca,
                                          .verify_peer = d->cfg->tls_verify_client != 0};
            if (kw_net_tls_reload(d->tls, &tc) < 0)
                KW_LOG_WARN("sharerd: reload: TLS files refused, new connections keep the old ones: %s",
                            kw_error_detail());
            else
                KW_LOG_INFO("sharerd: reload: TLS certificate %s for new connections", next.tls_cert);
        }
    }
    kw_cfg_free(&kw_sharerd_config_table, &next);
    char what[512];
    kw__sd_describe(d, what, sizeof what);
    kw_net_service_ready(d->service, "%s (reloaded%s)", what, rc < 0 ? ": failed, see the log" : "");
}

static int kw__sd_load_model(kw_sharerd *d, const kw_sharerd_model_cfg *mc, kw__sd_model *m) {
    KW_RETURN_IF(!mc->name || !mc->name[0] || strlen(mc->name) > 128, KW_E_INVALID_ARG,
                 "sharerd: every model needs a name of 1..128 bytes");
    KW_RETURN_IF(!mc->path, KW_E_INVALID_ARG, "sharerd: model %s has no path", mc->name);
    m->name = mc->name;
    KW_LOG_INFO("sharerd: loading model %s from %s (weights %s)", mc->name, mc->path,
                kw_model_weight_modes[d->cfg->weights]);
    kw_net_service_status(d->service, "loading model %s from %s", mc->name, mc->path);
    kw_model_options mo = {.max_batch = (int32_t)d->cfg->max_batch};
    kw_model_options_set_weight_mode(&mo, d->cfg->weights);
    KW_FORWARD(kw_model_load(d->be, mc->path, &mo, &m->model));
    const kw_model_config *cfg = kw_model_get_config(m->model);
    m->n_layers = cfg->n_layers, m->n_kv_heads = cfg->n_kv_heads, m->head_dim = cfg->head_dim, m->vocab = cfg->vocab;
    KW_FORWARD(kw_identity_model(mc->path, &m->digest));
    KW_FORWARD(kw_chat_family_for_model(mc->path, cfg->arch, &m->family));
    const char *tok_dir = mc->tokenizer ? mc->tokenizer : mc->path;
    const int rc = kw_tokenizer_load(tok_dir, &m->tok);
    if (rc == KW_E_NOT_FOUND && !mc->tokenizer) {
        KW_LOG_WARN("sharerd: model %s has no tokenizer: it cannot serve the text relay", mc->name);
    } else if (rc < 0) {
        return rc;
    }
    kwctl__model_identity__init(&m->id);
    kwctl__model_digest__init(&m->id_digest);
    kwctl__kv_shape__init(&m->id_kv);
    m->id_digest.config_sha256 = (ProtobufCBinaryData){32, m->digest.config_sha256};
    m->id_digest.weights_sha256 = (ProtobufCBinaryData){32, m->digest.weights_sha256};
    m->id_kv.n_layers = (uint32_t)m->n_layers, m->id_kv.n_kv_heads = (uint32_t)m->n_kv_heads;
    m->id_kv.head_dim = (uint32_t)m->head_dim;
    m->id.name = (char *)m->name;
    m->id.architecture = (char *)kw_arch_name(cfg->arch);
    m->id.digest = &m->id_digest;
    m->id.kv = &m->id_kv;
    char hex[65];
    kw_identity_hex(m->digest.weights_sha256, hex);
    KW_LOG_INFO("sharerd: model %s: %s, %d layers, %d kv heads x %d, weights sha256 %s", m->name,
                kw_arch_name(cfg->arch), (int)m->n_layers, (int)m->n_kv_heads, (int)m->head_dim, hex);
    return 0;
}

/* scoring_receiver: the receiver model, the fuser, and a fusion for every served model the fuser fits. */
static int kw__sd_load_scoring(kw_sharerd *d) {
    const kw_sharerd_config *cfg = d->cfg;
    if (!cfg->scoring_model && !cfg->scoring_fuser) return 0;
    KW_RETURN_IF(!cfg->scoring_model || !cfg->scoring_fuser, KW_E_INVALID_ARG,
                 "sharerd: scoring_receiver needs both model and fuser");
    KW_LOG_INFO("sharerd: loading the scoring receiver %s and fuser %s", cfg->scoring_model, cfg->scoring_fuser);
    kw_model_options mo = {.max_batch = (int32_t)cfg->max_batch};
    kw_model_options_set_weight_mode(&mo, cfg->weights);
    KW_FORWARD(kw_model_load(d->be, cfg->scoring_model, &mo, &d->score_model));
    KW_FORWARD(kw_identity_model(cfg->scoring_model, &d->score_id.digest));
    d->score_id.id_digest = (Kwctl__ModelDigest)KWCTL__MODEL_DIGEST__INIT;
    d->score_id.id_digest.config_sha256 = (ProtobufCBinaryData){32, d->score_id.digest.config_sha256};
    d->score_id.id_digest.weights_sha256 = (ProtobufCBinaryData){32, d->score_id.digest.weights_sha256};
    d->score_id.vocab = kw_model_get_config(d->score_model)->vocab;
    KW_FORWARD(kw_fuser_load(cfg->scoring_fuser, 0, &d->score_fuser));
    int32_t fits = 0;
    for (int32_t i = 0; i < d->n_models; ++i) {
        const kw_fusion_sharer sh = {.model = d->models[i].model, .fuser = d->score_fuser};
        if (kw_fusion_create(d->score_model, &sh, 1, 0, &d->score_fusion[i]) < 0) {
            KW_LOG_INFO("sharerd: the scoring fuser does not fit model %s: %s", d->models[i].name, kw_error_detail());
            continue;
        }
        ++fits;
    }
    KW_RETURN_IF(fits == 0, KW_E_FUSER_CONFIG, "sharerd: scoring_receiver.fuser fits none of the models served");
    return 0;
}

int kw_sharerd_create(const kw_sharerd_config *cfg, kw_sharerd **out) {
    KW_RETURN_IF(cfg == NULL || out == NULL, KW_E_INVALID_ARG, "sharerd: NULL argument");
    KW_RETURN_IF(cfg->n_models < 1, KW_E_INVALID_ARG, "sharerd: no model configured (models: [{name, path}])");
    *out = NULL;
    kw_sharerd *d = calloc(1, sizeof *d);
    KW_RETURN_IF(d == NULL, KW_E_NOMEM, "sharerd: out of memory");
    int rc = 0;
    d->cfg = cfg;
    KW_CHECK(kw_queue_init(&d->queue));
    d->queue_init = true;
    d->t_start = kw_time_now_ns();
    KW_CHECK_IF(uv_loop_init(&d->loop) != 0, KW_E_IO, "sharerd: cannot create the event loop");
    d->loop_init = true;
    /* first: STATUS lines while the models load, and a SIGHUP meanwhile must not kill the process */
    KW_CHECK(kw_net_service_start(&d->loop, "sharerd", kw__sd_on_reload, d, &d->service));
    const kw_backend_options bo = {.kind = (enum kw_backend_kind)cfg->backend,
                                   .n_threads = (int)cfg->threads,
                                   .n_workers = (int)cfg->workers,
                                   .device = (int)cfg->device,
                                   .memory_limit = (uint64_t)cfg->memory_limit_mb << 20};
    KW_CHECK(kw_backend_create_with(&bo, &d->be));
    for (int32_t i = 0; i < cfg->n_models; ++i) {
        for (int32_t k = 0; k < i; ++k)
            KW_CHECK_IF(cfg->models[i].name && cfg->models[k].name &&
                            strcmp(cfg->models[i].name, cfg->models[k].name) == 0,
                        KW_E_INVALID_ARG, "sharerd: two models are named %s", cfg->models[i].name);
        KW_CHECK(kw__sd_load_model(d, &cfg->models[i], &d->models[i]));
        d->n_models = i + 1;
    }
    KW_CHECK(kw__sd_load_scoring(d));
    KW_CHECK(kw__sd_workers_create(d, (int32_t)cfg->workers));
    d->codecs = malloc((KW_WIRE_CODEC_COUNT_V11 - 1) * sizeof *d->codecs);
    KW_CHECK_IF(d->codecs == NULL, KW_E_NOMEM, "sharerd: out of memory");
    for (uint32_t c = 1; c < KW_WIRE_CODEC_COUNT_V11; ++c)
        d->codecs[c - 1] = c;
    if (cfg->tls_enabled) {
        const kw_net_tls_config tc = {.cert_file = cfg->tls_cert,
                                      .key_file = cfg->tls_key,
                                      .ca_file = cfg->tls_ca,
                                      .verify_peer = cfg->tls_verify_client != 0};
        KW_CHECK(kw_net_tls_create(&tc, true, &d->tls));
    }
    kw_net_server_config sc = {.host = cfg->listen_host,
                               .port = (uint16_t)cfg->listen_port,
                               .max_connections = (uint32_t)cfg->max_connections,
                               .tls = d->tls};
    kw_net_conn_options_default(&sc.conn);
    sc.conn.connect_timeout_ms = (uint32_t)cfg->handshake_timeout_ms;
    sc.conn.idle_timeout_ms = (uint32_t)cfg->idle_timeout_ms;
    /* one section (plus the share's queued bytes) must fit: the hard limit is far above the compute thread's wait */
    sc.conn.write_max_bytes = (size_t)cfg->write_high_water * 4 + ((size_t)1 << 30);
    KW_CHECK(kw_net_server_start(&d->loop, &sc, kw__sd_accept, d, &d->server));
    d->port = kw_net_server_port(d->server);
    KW_CHECK(kw_net_async_create(&d->loop, kw__sd_on_post, d, &d->async));
    KW_CHECK(kw_net_signals_watch(&d->loop, kw__sd_on_signal, d, &d->signals));
    d->log_level = cfg->log_level;
    *out = d;
    return 0;
out:
    kw_sharerd_free(d);
    return rc;
}

void kw_sharerd_set_reload_args(kw_sharerd *d, int argc, char **argv) {
    d->reload_argc = argc;
    d->reload_argv = argv;
}

uint16_t kw_sharerd_port(const kw_sharerd *d) {
    return d->port;
}

static int kw__sd_write_ready(const kw_sharerd *d) {
    if (!d->cfg->ready_file) return 0;
    char text[64];
    const int n = snprintf(text, sizeof text, "port=%u\n", (unsigned)d->port);
    return kw_file_write_all(d->cfg->ready_file, text, (size_t)n);
}

int kw_sharerd_run(kw_sharerd *d) {
    KW_RETURN_IF(d == NULL || d->threads_started || d->n_workers < 1, KW_E_INVALID_ARG, "sharerd: not runnable");
    atomic_store(&d->running, d->n_workers);
    for (int32_t i = 0; i < d->n_workers; ++i) {
        kw__sd_worker *w = &d->workers[i];
        if (uv_thread_create(&w->thread, kw__sd_compute_thread, w) == 0) {
            w->started = true;
            continue;
        }
        atomic_fetch_sub(&d->running, d->n_workers - i); /* the ones started drain the queue and exit */
        kw_queue_close(&d->queue);
        for (int32_t k = 0; k < i; ++k)
            uv_thread_join(&d->workers[k].thread);
        KW_FAIL(KW_E_IO, "sharerd: cannot start compute thread %d", (int)i);
    }
    d->threads_started = true;
    KW_LOG_INFO("sharerd: listening on %s:%u (%s), %d model(s), queue %lld, %d compute thread(s) of %d CPU thread(s) "
                "each, CPU threads wait %s",
                d->cfg->listen_host, (unsigned)d->port, d->tls ? "tls" : "tcp", (int)d->n_models,
                (long long)d->cfg->queue_max, (int)d->n_workers, kw_backend_cpu_threads(d->be), kw_backend_cpu_wait());
    int rc = kw__sd_write_ready(d);
    if (rc < 0) {
        kw__sd_on_signal(0, d); /* cannot tell anyone we are up: stop */
    } else {
        char what[512];
        kw__sd_describe(d, what, sizeof what);
        kw_net_service_ready(d->service, "%s", what);
    }
    uv_run(&d->loop, UV_RUN_DEFAULT);
    for (int32_t i = 0; i < d->n_workers; ++i)
        if (d->workers[i].started) uv_thread_join(&d->workers[i].thread), d->workers[i].started = false;
    d->threads_started = false;
    KW_LOG_INFO("sharerd: stopped (%llu ok, %llu failed, %llu cancelled, %llu busy)",
                (unsigned long long)d->requests_ok, (unsigned long long)d->requests_failed,
                (unsigned long long)d->requests_cancelled, (unsigned long long)d->requests_busy);
    return rc < 0 ? rc : d->exit_status;
}

void kw_sharerd_free(kw_sharerd *d) {
    if (d == NULL) return;
    if (d->loop_init) {
        /* handles still open (a failed create): close them and let the loop run their callbacks */
        if (d->server && !d->shutting_down) kw_net_server_shutdown(d->server, 0, NULL, NULL);
        kw_net_async_close(d->async);
        kw_net_signals_close(d->signals);
        kw_net_service_close(d->service);
        uv_run(&d->loop, UV_RUN_DEFAULT);
        kw_net_server_free(d->server);
        if (uv_loop_close(&d->loop) != 0) KW_LOG_WARN("sharerd: the event loop still had handles at exit");
    }
    kw_net_tls_free(d->tls);
    kw__sd_workers_free(d); /* the forks, fusions and contexts borrow the models and the backend */
    for (int32_t i = 0; i < d->n_models; ++i) {
        kw_model_free(d->models[i].model);
        kw_tokenizer_free(d->models[i].tok);
    }
    if (d->n_models < KW_SHARERD_MAX_MODELS) { /* a model whose load failed half way */
        kw_model_free(d->models[d->n_models].model);
        kw_tokenizer_free(d->models[d->n_models].tok);
    }
    for (int32_t i = 0; i < KW_SHARERD_MAX_MODELS; ++i)
        kw_fusion_free(d->score_fusion[i]);
    kw_fuser_free(d->score_fuser);
    kw_model_free(d->score_model);
    free(d->codecs);
    kw_backend_destroy(d->be);
    if (d->queue_init) kw_queue_destroy(&d->queue);
    free(d);
}

/* kw_cfg_main's run: the daemon's life. */
static int kw__sharerd_run_config(void *obj, int argc, char **argv) {
    const kw_sharerd_config *cfg = obj;
    kw_log_set_level((enum kw_log_level)cfg->log_level);
    kw_log_journal_auto("sharerd");
    kw_sharerd *d = NULL;
    int rc = kw_sharerd_create(cfg, &d);
    if (rc == 0) kw_sharerd_set_reload_args(d, argc, argv);
    if (rc == 0) rc = kw_sharerd_run(d);
    char detail[1024]; /* freeing may record reasons of its own */
    snprintf(detail, sizeof detail, "%s", kw_error_detail());
    kw_sharerd_free(d);
    if (rc < 0) kw_error_set(rc, "%s", detail);
    return rc;
}

int kw_sharerd_main(int argc, char **argv) {
    kw_sharerd_config cfg;
    return kw_cfg_main(&kw_sharerd_config_table, &cfg, sizeof cfg, argc, argv, kw__sharerd_run_config);
}
