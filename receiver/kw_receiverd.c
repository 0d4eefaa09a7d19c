/* kw_receiverd.c: receiverd (see kw_receiverd.h): start-up (model, tokenizer, fusers and their identities), the HTTP
 * front (routing, the checks that need the sharers' state, the bounded compute queue), the answers (JSON, server-sent
 * events, errors), /health and /metrics, and shutdown. The request's pipeline runs in kw_receiverd_compute.c, the
 * sharer connections in kw_receiverd_link.c, the request parsing in kw_receiverd_api.c.
 */
#include "receiver/kw_receiverd.h"

#include <math.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "c2c/kw_fuser_load.h"
#include "c2c/kw_request.h"
#include "common/kw_file.h"
#include "common/kw_json.h"
#include "common/kw_log.h"
#include "common/kw_status.h"
#include "common/kw_time.h"
#include "kernels/kw_backend.h"
#include "net/kw_net_service.h"
#include "receiver/kw_receiverd_internal.h"

// ---------------------------------------------------------------------------------------------------------------
// Jobs and posts

void kw_rd_job_ref(kw_rd_job *j) {
    atomic_fetch_add(&j->refs, 1);
}

void kw_rd_chunk_free(kw_rd_chunk *c) {
    if (!c) return;
    kw_proto_message_free(c->targets ? &c->targets->base : NULL);
    free(c);
}

void kw_rd_job_unref(kw_rd_job *j) {
    if (atomic_fetch_sub(&j->refs, 1) != 1) return;
    kw_rd_spec_free(&j->spec);
    free(j->request_frame);
    while (j->inbox_head) {
        kw_rd_chunk *c = j->inbox_head;
        j->inbox_head = c->next;
        kw_rd_chunk_free(c);
    }
    kw_proto_message_free(j->share.end ? &j->share.end->base : NULL);
    kw_proto_message_free(j->share2.end ? &j->share2.end->base : NULL);
    free(j->share.text), free(j->share2.text);
    free(j->prompt_ids), free(j->prompt_text), free(j->ids), free(j->text), free(j->lp), free(j->scored);
    free(j->layers_sent);
    uv_mutex_destroy(&j->mu);
    uv_cond_destroy(&j->cond);
    free(j);
}

void kw_rd_job_cancel(kw_rd_job *j, int status) {
    int expected = 0;
    atomic_compare_exchange_strong(&j->cancel, &expected, status);
    uv_mutex_lock(&j->mu);
    uv_cond_broadcast(&j->cond);
    uv_mutex_unlock(&j->mu);
}

int kw_rd_post_send(kw_receiverd *d, enum kw_rd_post_kind kind, kw_rd_job *job, char *text, size_t len) {
    kw_rd_post *p = calloc(1, sizeof *p);
    if (!p) {
        free(text);
        return KW_E_NOMEM;
    }
    *p = (kw_rd_post){.kind = kind, .job = job, .text = text, .len = len};
    const int rc = kw_net_async_post(d->async, &p->item);
    if (rc < 0) {
        free(p->text);
        free(p);
    }
    return rc;
}

// ---------------------------------------------------------------------------------------------------------------
// Metrics

static const double kw__rd_hist_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
#define KW__RD_HIST_N (sizeof kw__rd_hist_bounds / sizeof kw__rd_hist_bounds[0])
/* kvwire_kv_store_total's labels, kw_receive_kv_store's answers. */
static const char *const kw__rd_kv_stores[4] = {"direct", "requantized", "dense", "none"};
static const char *const kw__rd_outcome_names[KW_RD_OUTCOMES] = {"ok",      "client_error", "sharer_error",
                                                                 "timeout", "busy",         "internal"};
static const char *const kw__rd_stage_names[KW_RD_STAGES] = {
    "queue",   "tokenize", "sharer_prefill",   "select",      "encode", "transfer", "decode_from_wire",
    "project", "fuse",     "receiver_prefill", "first_token", "decode", "total"};

static void kw__rd_hist_add(kw_rd_hist *h, double seconds) {
    size_t b = 0;
    while (b < KW__RD_HIST_N && seconds > kw__rd_hist_bounds[b])
        ++b;
    ++h->counts[b];
    h->sum += seconds;
    ++h->n;
}

/* A request's outcome for the metrics, from its HTTP status and its kw_status (busy is a 503 like others). */
static enum kw_rd_outcome kw__rd_outcome(int http, int status) {
    if (http == 200) return KW_RD_OK;
    if (status == KW_E_SHARE_BUSY) return KW_RD_BUSY;
    if (http == 504) return KW_RD_TIMEOUT;
    if (http == 502 || http == 503) return KW_RD_SHARER_ERROR;
    if (http >= 400 && http < 500) return KW_RD_CLIENT_ERROR;
    return KW_RD_INTERNAL;
}

/* The text of /metrics into a growing buffer. */
typedef struct kw__rd_text {
    char *buf;
    size_t len, cap;
    bool failed;
} kw__rd_text;

static void kw__rd_printf(kw__rd_text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void kw__rd_printf(kw__rd_text *t, const char *fmt, ...) {
    for (int attempt = 0; attempt < 2 && !t->failed; ++attempt) {
        va_list ap;
        va_start(ap, fmt);
        const int n = vsnprintf(t->buf ? t->buf + t->len : NULL, t->buf ? t->cap - t->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->failed = true;
            return;
        }
        if (t->buf && (size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        const size_t cap = (t->cap + (size_t)n + 1) * 2;
        char *b = realloc(t->buf, cap);
        if (!b) {
            t->failed = true;
            return;
        }
        t->buf = b, t->cap = cap;
    }
}

static void kw__rd_hist_print(kw__rd_text *t, const char *name, const char *label, const kw_rd_hist *h) {
    uint64_t cum = 0;
    for (size_t b = 0; b < KW__RD_HIST_N; ++b) {
        cum += h->counts[b];
        kw__rd_printf(t, "%s_bucket{%s,le=\"%g\"} %llu\n", name, label, kw__rd_hist_bounds[b], (unsigned long long)cum);
    }
    cum += h->counts[KW__RD_HIST_N];
    kw__rd_printf(t, "%s_bucket{%s,le=\"+Inf\"} %llu\n", name, label, (unsigned long long)cum);
    kw__rd_printf(t, "%s_sum{%s} %.6f\n%s_count{%s} %llu\n", name, label, h->sum, name, label,
                  (unsigned long long)h->n);
}

static void kw__rd_metrics(kw_receiverd *d, kw_http_request *req) {
    kw__rd_text t = {0};
    kw__rd_printf(&t, "# HELP kvwire_requests_total Generation requests by mode and outcome.\n"
                      "# TYPE kvwire_requests_total counter\n");
    for (int m = 0; m < 4; ++m)
        for (int o = 0; o < KW_RD_OUTCOMES; ++o)
            kw__rd_printf(&t, "kvwire_requests_total{mode=\"%s\",outcome=\"%s\"} %llu\n",
                          kw_rd_mode_name((enum kw_rd_mode)m), kw__rd_outcome_names[o],
                          (unsigned long long)d->requests[m][o]);
    kw__rd_printf(&t,
                  "# HELP kvwire_bytes_total Measured bytes: KVWire blobs, the sharer connection's frames each way, "
                  "relay text.\n# TYPE kvwire_bytes_total counter\n"
                  "kvwire_bytes_total{kind=\"blob\"} %llu\nkvwire_bytes_total{kind=\"socket_in\"} %llu\n"
                  "kvwire_bytes_total{kind=\"socket_out\"} %llu\nkvwire_bytes_total{kind=\"text\"} %llu\n",
                  (unsigned long long)d->bytes_blob, (unsigned long long)d->bytes_socket_in,
                  (unsigned long long)d->bytes_socket_out, (unsigned long long)d->bytes_text);
    kw__rd_printf(&t, "# HELP kvwire_request_seconds Request latency by mode.\n"
                      "# TYPE kvwire_request_seconds histogram\n");
    for (int m = 0; m < 4; ++m) {
        char label[64];
        snprintf(label, sizeof label, "mode=\"%s\"", kw_rd_mode_name((enum kw_rd_mode)m));
        kw__rd_hist_print(&t, "kvwire_request_seconds", label, &d->request_hist[m]);
    }
    kw__rd_printf(&t, "# HELP kvwire_stage_seconds Time per pipeline stage.\n# TYPE kvwire_stage_seconds histogram\n");
    for (int s = 0; s < KW_RD_STAGES; ++s) {
        char label[64];
        snprintf(label, sizeof label, "stage=\"%s\"", kw__rd_stage_names[s]);
        kw__rd_hist_print(&t, "kvwire_stage_seconds", label, &d->stage_hist[s]);
    }
    kw__rd_printf(&t,
                  "# HELP kvwire_queue_depth Requests waiting for or on a compute thread.\n"
                  "# TYPE kvwire_queue_depth gauge\nkvwire_queue_depth %d\n"
                  "# HELP kvwire_compute_in_flight Requests running on a compute thread now.\n"
                  "# TYPE kvwire_compute_in_flight gauge\nkvwire_compute_in_flight %d\n"
                  "# HELP kvwire_compute_workers Compute threads (compute.workers).\n"
                  "# TYPE kvwire_compute_workers gauge\nkvwire_compute_workers %d\n",
                  (int)d->queued, atomic_load(&d->in_flight), (int)d->n_workers);
    kw__rd_printf(&t, "# HELP kvwire_sharer_connected 1 when the sharer's connection is ready.\n"
                      "# TYPE kvwire_sharer_connected gauge\n");
    for (int32_t i = 0; i < d->n_links; ++i)
        kw__rd_printf(&t, "kvwire_sharer_connected{sharer=\"%s\"} %d\n", kw_rd_link_name(d->links[i]),
                      kw_rd_link_ready(d->links[i]) ? 1 : 0);
    kw__rd_printf(&t,
                  "# HELP kvwire_generated_tokens_total Tokens generated.\n"
                  "# TYPE kvwire_generated_tokens_total counter\nkvwire_generated_tokens_total %llu\n",
                  (unsigned long long)d->generated_tokens);
    kw__rd_printf(&t,
                  "# HELP kvwire_refine_total Requests with kvwire.refine that ended well, by what round one's metric "
                  "led to.\n# TYPE kvwire_refine_total counter\n"
                  "kvwire_refine_total{outcome=\"not_triggered\"} %llu\nkvwire_refine_total{outcome=\"applied\"} %llu\n"
                  "kvwire_refine_total{outcome=\"skipped\"} %llu\n",
                  (unsigned long long)d->refine[0], (unsigned long long)d->refine[1], (unsigned long long)d->refine[2]);
    kw__rd_printf(&t, "# HELP kvwire_kv_store_total kv_direct requests that ended well, by how the rows went into the "
                      "cache (direct: as the sent codes).\n# TYPE kvwire_kv_store_total counter\n");
    for (int i = 0; i < 4; ++i)
        kw__rd_printf(&t, "kvwire_kv_store_total{store=\"%s\"} %llu\n", kw__rd_kv_stores[i],
                      (unsigned long long)d->kv_store[i]);
    if (t.failed)
        kw_http_respond(req, 500, "text/plain", NULL, 0, "out of memory\n", 14);
    else
        kw_http_respond(req, 200, "text/plain; version=0.0.4", NULL, 0, t.buf, t.len);
    free(t.buf);
}

// ---------------------------------------------------------------------------------------------------------------
// Answers

/* Sends root (consumed) as the JSON answer; retry_after_s > 0 adds a Retry-After header with it (seconds). */
static void kw__rd_respond_json_retry(kw_http_request *req, int status, cJSON *root, int retry_after_s) {
    char *body = root ? cJSON_PrintUnformatted(root) : NULL;
    char seconds[16];
    snprintf(seconds, sizeof seconds, "%d", retry_after_s);
    const kw_http_header retry = {.name = "Retry-After", .value = seconds};
    if (!body)
        kw_http_respond(req, 500, "application/json", NULL, 0, "{\"error\":{\"message\":\"out of memory\"}}", 37);
    else
        kw_http_respond(req, status, "application/json", retry_after_s > 0 ? &retry : NULL, retry_after_s > 0, body,
                        strlen(body));
    free(body);
    cJSON_Delete(root);
}

static void kw__rd_respond_json(kw_http_request *req, int status, cJSON *root) {
    kw__rd_respond_json_retry(req, status, root, 0);
}

static cJSON *kw__rd_error_json(int status, const char *message, const char *type) {
    cJSON *root = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(e, "message", message);
    cJSON_AddStringToObject(e, "type", type);
    cJSON_AddStringToObject(e, "code", kw_status_name(status));
    cJSON_AddNumberToObject(e, "status", status);
    return root;
}

/* When a client turned away with a 503 may come back, in whole seconds (1 to 60): a full queue drains at the mean
 * time of the requests served so far (the total stage's histogram; 1 s before any), a sharer that is down is tried
 * again every sharer.reconnect_ms, a daemon that is stopping is gone for longer. */
static int kw__rd_retry_after_s(const kw_receiverd *d, int status) {
    double seconds = 1;
    if (status == KW_E_SHARE_BUSY) {
        const kw_rd_hist *served = &d->stage_hist[KW_RD_STAGE_TOTAL];
        seconds = served->n > 0 ? served->sum / (double)served->n * (double)d->queued : 1;
    } else if (status == KW_E_NET_SHUTDOWN) {
        seconds = 10;
    } else {
        seconds = (double)d->cfg->sharer_reconnect_ms * 1e-3;
    }
    return seconds < 1 ? 1 : seconds > 60 ? 60 : (int)ceil(seconds);
}

/* An error answer; a 503 says when to retry. */
static void kw__rd_respond_error(const kw_receiverd *d, kw_http_request *req, int http, int status, const char *message,
                                 const char *type) {
    kw__rd_respond_json_retry(req, http, kw__rd_error_json(status, message, type),
                              http == 503 ? kw__rd_retry_after_s(d, status) : 0);
}

static int kw__rd_http_of(int status) {
    switch (status) {
    case KW_E_NET_REQUEST_TIMEOUT:
    case KW_E_TIMEOUT:
        return 504;
    case KW_E_SHARE_BUSY:
    case KW_E_NET_SHUTDOWN:
        return 503;
    case KW_E_INVALID_ARG:
    case KW_E_PARSE:
    case KW_E_TOKEN_ID:
    case KW_E_SHARE_MODE:
    case KW_E_UNSUPPORTED:
    case KW_E_MODEL_CONTEXT:
    case KW_E_TEMPLATE:
        return 400;
    default:
        if (status <= -100 && status > -200) return 502; /* KVWire verification */
        if (status <= -500 && status > -650) return 502; /* protocol, transport, share checks */
        return 500;
    }
}

static cJSON *kw__rd_ids_json(const int32_t *ids, int64_t n) {
    cJSON *a = cJSON_CreateArray();
    for (int64_t i = 0; i < n; ++i)
        cJSON_AddItemToArray(a, cJSON_CreateNumber(ids[i]));
    return a;
}

static void kw__rd_add_policy(cJSON *k, const kw_rd_job *j) {
    const kw_rd_spec *s = &j->spec;
    cJSON *p = cJSON_AddObjectToObject(k, "policy");
    cJSON_AddStringToObject(p, "selection", kw_select_mode_name(s->select.mode));
    if (kw_select_mode_receiver_aware(s->select.mode))
        cJSON_AddStringToObject(p, "scoring", s->scoring ? "receiver" : "local");
    cJSON_AddNumberToObject(p, "proportion", s->select.proportion);
    cJSON_AddNumberToObject(p, "min_tokens", (double)s->select.min_tokens);
    cJSON_AddNumberToObject(p, "seed", (double)s->select.seed);
    cJSON_AddStringToObject(p, "codec", s->codec);
    char gran[32];
    kw_wire_spec_gran_format(&s->spec, gran, sizeof gran);
    cJSON_AddStringToObject(p, "granularity", gran);
    cJSON_AddStringToObject(p, "scale",
                            s->spec.scale_dtype ? kw_wire_scale_name(kw_wire_spec_scale(&s->spec)) : "none");
    if (memcmp(&s->spec_v, &s->spec, sizeof s->spec) != 0) { /* V's codec apart (the value_* fields) */
        char vcodec[32], vgran[32];
        kw_wire_spec_codec_format(&s->spec_v, vcodec, sizeof vcodec);
        kw_wire_spec_gran_format(&s->spec_v, vgran, sizeof vgran);
        cJSON_AddStringToObject(p, "value_codec", vcodec);
        cJSON_AddStringToObject(p, "value_granularity", vgran);
    }
    if (s->outliers > 0) cJSON_AddNumberToObject(p, "outliers", s->outliers);
    if (s->pre_rope_keys) cJSON_AddBoolToObject(p, "pre_rope_keys", 1);
    if (s->rotate) cJSON_AddStringToObject(p, "rotate", s->rotate == 3 ? "kv" : s->rotate == 1 ? "k" : "v");
    if (s->clip) cJSON_AddStringToObject(p, "clip", s->clip == 3 ? "kv" : s->clip == 1 ? "k" : "v");
    if (s->qmax_k) cJSON_AddNumberToObject(p, "qmax_k", s->qmax_k);
    if (s->qmax_v) cJSON_AddNumberToObject(p, "qmax_v", s->qmax_v);
    cJSON_AddNumberToObject(p, "zstd", s->zstd_level);
    if (s->rans) cJSON_AddBoolToObject(p, "rans", 1);
    if (j->layers_sent)
        cJSON_AddItemToObject(p, "layers", kw__rd_ids_json(j->layers_sent, j->n_layers_sent));
    else
        cJSON_AddItemToObject(p, "layers", cJSON_CreateArray());
    cJSON *sch = cJSON_AddArrayToObject(p, "schedule");
    for (int i = 0; i < s->n_schedule; ++i) {
        cJSON *e = cJSON_CreateObject();
        const int32_t range[2] = {s->schedule[i].first, s->schedule[i].last};
        cJSON_AddItemToObject(e, "layers", kw__rd_ids_json(range, 2));
        cJSON_AddStringToObject(e, "codec", s->schedule[i].codec);
        kw_wire_spec_gran_format(&s->schedule[i].spec, gran, sizeof gran);
        cJSON_AddStringToObject(e, "granularity", gran);
        cJSON_AddStringToObject(
            e, "scale", s->schedule[i].spec.scale_dtype ? kw_wire_scale_name(s->schedule[i].spec.scale_dtype) : "none");
        if (memcmp(&s->schedule[i].spec_v, &s->schedule[i].spec, sizeof s->schedule[i].spec) != 0) {
            const kw_wire_codec_spec *sv = &s->schedule[i].spec_v;
            char vcodec[32];
            kw_wire_spec_codec_format(sv, vcodec, sizeof vcodec);
            cJSON_AddStringToObject(e, "value_codec", vcodec);
            kw_wire_spec_gran_format(sv, gran, sizeof gran);
            cJSON_AddStringToObject(e, "value_granularity", gran);
            cJSON_AddStringToObject(e, "value_scale", sv->scale_dtype ? kw_wire_scale_name(sv->scale_dtype) : "none");
        }
        if (s->schedule[i].own_options) {
            static const char *const bits[] = {"none", "k", "v", "kv"};
            cJSON_AddStringToObject(e, "rotate", bits[s->schedule[i].rotate & 3]);
            cJSON_AddStringToObject(e, "clip", bits[s->schedule[i].clip & 3]);
            cJSON_AddNumberToObject(e, "qmax_k", s->schedule[i].qmax_k);
            cJSON_AddNumberToObject(e, "qmax_v", s->schedule[i].qmax_v);
        }
        cJSON_AddItemToArray(sch, e);
    }
    if (s->n_token_schedule) {
        cJSON *ts = cJSON_AddArrayToObject(p, "token_schedule");
        for (int i = 0; i < s->n_token_schedule; ++i) {
            const kw_rd_token_schedule *t = &s->token_schedule[i];
            cJSON *e = cJSON_CreateObject();
            if (t->first) cJSON_AddNumberToObject(e, "first", t->first);
            if (t->last) cJSON_AddNumberToObject(e, "last", t->last);
            if (t->n_positions) {
                cJSON *a = cJSON_AddArrayToObject(e, "positions");
                for (int q = 0; q < t->n_positions; ++q)
                    cJSON_AddItemToArray(a, cJSON_CreateNumber(t->positions[q]));
            }
            char codec[32];
            kw_wire_spec_codec_format(&t->spec, codec, sizeof codec);
            cJSON_AddStringToObject(e, "codec", codec);
            kw_wire_spec_gran_format(&t->spec, gran, sizeof gran);
            cJSON_AddStringToObject(e, "granularity", gran);
            cJSON_AddStringToObject(e, "scale", t->spec.scale_dtype ? kw_wire_scale_name(t->spec.scale_dtype) : "none");
            if (memcmp(&t->spec_v, &t->spec, sizeof t->spec) != 0) { /* V's codec apart (the value_* fields) */
                kw_wire_spec_codec_format(&t->spec_v, codec, sizeof codec);
                cJSON_AddStringToObject(e, "value_codec", codec);
                kw_wire_spec_gran_format(&t->spec_v, gran, sizeof gran);
                cJSON_AddStringToObject(e, "value_granularity", gran);
                cJSON_AddStringToObject(e, "value_scale",
                                        t->spec_v.scale_dtype ? kw_wire_scale_name(t->spec_v.scale_dtype) : "none");
            }
            cJSON_AddItemToArray(ts, e);
        }
    }
    if (s->recompute_prefix) cJSON_AddNumberToObject(p, "recompute_prefix", (double)s->recompute_prefix);
    cJSON_AddNumberToObject(p, "cache_proportion", s->cache_proportion);
    cJSON_AddStringToObject(p, "order", s->order == KW_FUSION_BACK ? "back" : "front");
    if (s->budget_bytes)
        cJSON_AddNumberToObject(p, "budget_bytes", (double)s->budget_bytes);
    else
        cJSON_AddNullToObject(p, "budget_bytes");
    cJSON *bc = cJSON_AddArrayToObject(p, "budget_codecs");
    for (int i = 0; i < s->n_budget_codecs; ++i)
        cJSON_AddItemToArray(bc, cJSON_CreateString(kw_wire_codec_name(s->budget_codecs[i].codec)));
    cJSON_AddStringToObject(p, "budget_mode", kw_wire_budget_mode_name((enum kw_wire_budget_mode)s->budget_mode));
}

/* The budget block of a capped request (HTTP_API.md §5.2): cap, bytes used and slack, the smallest cap the request
 * takes, and the allocation histogram as the sharer counted it (ShareEnd.budget). */
static void kw__rd_add_budget(cJSON *k, const kw_rd_job *j) {
    const kw_rd_spec *s = &j->spec;
    const Kwctl__BudgetReport *r = j->share.end ? j->share.end->budget : NULL;
    if (!s->budget_bytes) return;
    cJSON *b = cJSON_AddObjectToObject(k, "budget");
    cJSON_AddStringToObject(b, "mode", kw_wire_budget_mode_name((enum kw_wire_budget_mode)s->budget_mode));
    cJSON_AddNumberToObject(b, "cap", (double)s->budget_bytes);
    cJSON_AddNumberToObject(b, "used", (double)j->blob_bytes);
    cJSON_AddNumberToObject(b, "slack", (double)s->budget_bytes - (double)j->blob_bytes);
    cJSON_AddNumberToObject(b, "min", r ? (double)r->min_bytes : 0);
    cJSON_AddNumberToObject(b, "distortion", r ? r->distortion : 0);
    cJSON *t = cJSON_AddObjectToObject(b, "tokens");
    cJSON_AddNumberToObject(t, "candidates", r ? (double)r->tokens_candidate : 0);
    cJSON_AddNumberToObject(t, "dropped", r ? (double)r->tokens_dropped : 0);
    cJSON_AddNumberToObject(b, "layers_unsent", j->layers_unsent); /* kvcomm_like's candidates left out */
    for (int i = 0; i < s->n_budget_codecs; ++i)
        cJSON_AddNumberToObject(t, kw_wire_codec_name(s->budget_codecs[i].codec),
                                r && (size_t)i < r->n_tokens_per_codec ? (double)r->tokens_per_codec[i] : 0);
}

/* The refine block of a request with kvwire.refine (HTTP_API.md §5.2): what was measured after round one and, when
 * round two ran, its bytes, rows and sharer time (the top-level bytes count both rounds). */
static void kw__rd_add_refine(cJSON *k, const kw_rd_job *j) {
    const kw_rd_spec *s = &j->spec;
    if (!s->refine) return;
    const Kwctl__ShareEnd *e = j->share2.end;
    cJSON *r = cJSON_AddObjectToObject(k, "refine");
    cJSON_AddBoolToObject(r, "requested", true);
    cJSON_AddStringToObject(r, "metric", kw_refine_metric_name(s->refine_metric));
    cJSON_AddNumberToObject(r, "threshold", s->refine_threshold);
    cJSON_AddNumberToObject(r, "proportion", s->refine_proportion);
    if (j->refine_measured && isfinite(j->refine_value))
        cJSON_AddNumberToObject(r, "value", j->refine_value);
    else
        cJSON_AddNullToObject(r, "value");
    cJSON_AddBoolToObject(
        r, "triggered", j->refine_measured && kw_refine_wanted(s->refine_metric, j->refine_value, s->refine_threshold));
    cJSON_AddBoolToObject(r, "applied", j->refine_round2);
    if (j->refine_skipped)
        cJSON_AddStringToObject(r, "skipped", j->refine_skipped);
    else
        cJSON_AddNullToObject(r, "skipped");
    cJSON_AddNumberToObject(r, "probe_ms", j->ms_probe);
    cJSON *one = cJSON_AddObjectToObject(r, "round_one");
    cJSON_AddNumberToObject(one, "blob", (double)(j->refine_measured ? j->blob_bytes1 : j->blob_bytes));
    cJSON_AddNumberToObject(one, "rows", (double)j->rows1);
    cJSON *two = cJSON_AddObjectToObject(r, "round_two");
    cJSON_AddNumberToObject(two, "blob", (double)(j->refine_round2 ? j->blob_bytes - j->blob_bytes1 : 0));
    cJSON_AddNumberToObject(two, "socket_in", (double)j->share2.socket_in);
    cJSON_AddNumberToObject(two, "socket_out", (double)j->share2.socket_out);
    cJSON_AddNumberToObject(two, "wire_frames", (double)j->share2.wire_frames);
    cJSON_AddNumberToObject(two, "frames_bytes", (double)j->share2.frames_in);
    cJSON_AddNumberToObject(two, "rows", (double)j->rows2);
    cJSON_AddNumberToObject(two, "tokens_sent", e ? (double)e->rows_sent : 0);
    cJSON_AddNumberToObject(two, "sharer_total_ms", e ? (double)e->total_ns * 1e-6 : 0);
    cJSON_AddNumberToObject(two, "sharer_prefill_ms", e ? (double)e->prefill_ns * 1e-6 : 0);
}

/* The kvwire response block (docs/HTTP_API.md §5.2). */
/* kv_direct: how the rows went into the cache (HTTP_API.md §5.2), null for the other modes. */
static void kw__rd_add_kv_store(cJSON *k, const kw_rd_job *j) {
    if (!j->kv_store) {
        cJSON_AddNullToObject(k, "kv_store");
        return;
    }
    cJSON *o = cJSON_AddObjectToObject(k, "kv_store");
    cJSON_AddStringToObject(o, "store", j->kv_store);
    if (j->kv_store_why)
        cJSON_AddStringToObject(o, "reason", j->kv_store_why);
    else
        cJSON_AddNullToObject(o, "reason");
    cJSON_AddNumberToObject(o, "rows_direct", (double)j->kv_rows_direct);
    cJSON_AddNumberToObject(o, "rows_tail", (double)j->kv_rows_tail);
    cJSON_AddNumberToObject(o, "rows_requantized", (double)j->kv_rows_requantized);
}

static cJSON *kw__rd_kvwire_block(const kw_rd_job *j, double total_ms) {
    const kw_rd_spec *s = &j->spec;
    const Kwctl__ShareEnd *e = j->share.end;
    cJSON *k = cJSON_CreateObject();
    cJSON_AddNumberToObject(k, "request_id", (double)j->id);
    cJSON_AddStringToObject(k, "mode", kw_rd_mode_name(s->mode));
    if (j->link) {
        cJSON_AddStringToObject(k, "sharer", j->sharer_name);
        cJSON_AddStringToObject(k, "sharer_model", j->sharer_model);
    } else {
        cJSON_AddNullToObject(k, "sharer");
        cJSON_AddNullToObject(k, "sharer_model");
    }
    kw__rd_add_policy(k, j);
    cJSON_AddNumberToObject(k, "prompt_tokens", (double)j->n_prompt);
    cJSON_AddNumberToObject(k, "shared_tokens", (double)j->shared_tokens);
    cJSON *secs = cJSON_AddArrayToObject(k, "sections");
    for (int32_t i = 0; i < j->n_sections; ++i) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "length", (double)j->sections[i].length);
        cJSON_AddBoolToObject(o, "sent", j->sections[i].index > 0 && i + 1 < j->n_sections && e != NULL);
        cJSON_AddItemToArray(secs, o);
    }
    cJSON *sel = cJSON_AddObjectToObject(k, "selection");
    cJSON_AddNumberToObject(sel, "tokens_total", e ? (double)e->rows_total : 0);
    const Kwctl__ShareEnd *e2 = j->share2.end; /* a refinement's round two */
    cJSON_AddNumberToObject(sel, "tokens_sent", (e ? (double)e->rows_sent : 0) + (e2 ? (double)e2->rows_sent : 0));
    cJSON_AddNumberToObject(sel, "layers_sent", e ? (double)e->layers_sent : 0);
    if (kw_select_mode_receiver_aware(s->select.mode)) { /* the SHARE_TARGETS frames (in bytes.frames_in.control) */
        cJSON *ts = cJSON_AddObjectToObject(sel, "target_subsets");
        cJSON_AddNumberToObject(ts, "frames", (double)j->share.target_frames);
        cJSON_AddNumberToObject(ts, "bytes", (double)j->share.targets_in);
    }
    cJSON *b = cJSON_AddObjectToObject(k, "bytes");
    cJSON_AddNumberToObject(b, "blob", (double)j->blob_bytes);
    cJSON_AddNumberToObject(b, "socket_in", (double)j->share.socket_in);
    cJSON_AddNumberToObject(b, "socket_out", (double)j->share.socket_out);
    cJSON_AddNumberToObject(b, "text", (double)j->share.text_len);
    cJSON_AddNumberToObject(b, "transport_in", (double)j->share.transport_in);
    cJSON_AddNumberToObject(b, "transport_out", (double)j->share.transport_out);
    cJSON *fr = cJSON_AddObjectToObject(b, "frames_in");
    cJSON_AddNumberToObject(fr, "wire", (double)j->share.wire_frames);
    cJSON_AddNumberToObject(fr, "wire_header_bytes", (double)(j->share.wire_frames * KW_PROTO_FRAME_HEADER_BYTES));
    cJSON_AddNumberToObject(fr, "control_bytes", (double)j->share.control_in);
    cJSON_AddNumberToObject(fr, "total_bytes", (double)j->share.frames_in);
    cJSON *c = cJSON_AddObjectToObject(k, "codec");
    cJSON_AddNumberToObject(c, "blobs", j->blobs);
    cJSON_AddNumberToObject(c, "sections", e ? e->sections : 0);
    cJSON_AddNumberToObject(c, "compressed_sections", e ? e->compressed_sections : 0);
    cJSON_AddNumberToObject(c, "device_sections", e ? e->device_sections : 0);
    cJSON_AddNumberToObject(c, "device_decoded_sections", j->device_decoded);
    cJSON *bd = cJSON_AddObjectToObject(c, "breakdown");
    const Kwctl__WireBreakdown *w = e ? e->breakdown : NULL;
    cJSON_AddNumberToObject(bd, "header", w ? (double)w->header : 0);
    cJSON_AddNumberToObject(bd, "indices", w ? (double)w->indices : 0);
    cJSON_AddNumberToObject(bd, "scales", w ? (double)w->scales : 0);
    cJSON_AddNumberToObject(bd, "payload", w ? (double)w->payload : 0);
    cJSON_AddNumberToObject(bd, "outliers", w ? (double)w->outliers : 0);
    cJSON_AddNumberToObject(bd, "checksums", w ? (double)w->checksums : 0);
    cJSON_AddNumberToObject(bd, "compression_saved", w ? (double)w->compression_saved : 0);
    cJSON_AddNumberToObject(c, "kv_bytes", e ? (double)e->kv_bytes : 0);
    kw__rd_add_budget(k, j);
    kw__rd_add_refine(k, j);
    kw__rd_add_kv_store(k, j);
    if (j->receiver_scored) { /* scoring receiver: the round trip (bytes.blob counts the preview blobs too) */
        cJSON *sc = cJSON_AddObjectToObject(k, "scoring");
        cJSON_AddStringToObject(sc, "placement", "receiver");
        cJSON_AddNumberToObject(sc, "preview_bytes", (double)j->preview_bytes);
        cJSON_AddNumberToObject(sc, "selection_bytes", (double)j->selection_bytes);
        cJSON_AddNumberToObject(sc, "final_bytes", (double)(j->blob_bytes - j->preview_bytes));
        cJSON_AddNumberToObject(sc, "receiver_scoring_ms", j->ms_scoring);
        cJSON_AddNumberToObject(sc, "sharer_wait_ms", e && e->scoring ? (double)e->scoring->wait_ns / 1e6 : 0.0);
    } else if (e && e->scoring) { /* the sharer's cost of a receiver-aware selection (scoring: local) */
        cJSON *sc = cJSON_AddObjectToObject(k, "scoring");
        cJSON_AddStringToObject(sc, "placement", "local");
        cJSON_AddNumberToObject(sc, "receiver_prefill_ms", (double)e->scoring->receiver_prefill_ns / 1e6);
        cJSON_AddNumberToObject(sc, "projection_ms", (double)e->scoring->projection_ns / 1e6);
        cJSON_AddNumberToObject(sc, "projections", e->scoring->projections);
    }
    cJSON *f = cJSON_AddObjectToObject(k, "fusion");
    cJSON_AddNumberToObject(f, "tokens_fused", (double)j->tokens_fused);
    cJSON_AddNumberToObject(f, "layers_fused", j->layers_fused);
    cJSON_AddNumberToObject(f, "layers_skipped", j->layers_skipped);
    cJSON *r = cJSON_AddObjectToObject(k, "relay");
    cJSON_AddStringToObject(r, "style", kw_relay_style_name(s->relay_style));
    cJSON_AddNumberToObject(r, "tokens", j->share.text_tokens);
    cJSON_AddNumberToObject(r, "bytes", (double)j->share.text_len);
    cJSON_AddBoolToObject(r, "truncated", j->share.text_truncated);
    cJSON_AddStringToObject(r, "text", j->share.text ? j->share.text : "");
    cJSON *t = cJSON_AddObjectToObject(k, "timings_ms");
    const double transfer = j->share.t_sent && j->share.t_last_wire > j->share.t_sent
                                ? kw_time_ms(j->share.t_sent, j->share.t_last_wire)
                                : 0;
    cJSON_AddNumberToObject(t, "queue", j->ms_queue);
    cJSON_AddNumberToObject(t, "tokenize", j->ms_tokenize);
    cJSON_AddNumberToObject(t, "sharer_queue", e ? (double)e->queue_ns * 1e-6 : 0);
    cJSON_AddNumberToObject(t, "sharer_total", e ? (double)e->total_ns * 1e-6 : 0);
    cJSON_AddNumberToObject(t, "sharer_prefill", e ? (double)e->prefill_ns * 1e-6 : 0);
    cJSON_AddNumberToObject(t, "select", e ? (double)e->select_ns * 1e-6 : 0);
    cJSON_AddNumberToObject(t, "encode", e ? (double)e->encode_ns * 1e-6 : 0);
    cJSON_AddNumberToObject(t, "relay", s->mode == KW_RD_MODE_TEXT_RELAY ? j->ms_relay_wait : 0);
    cJSON_AddNumberToObject(t, "transfer", transfer);
    cJSON_AddNumberToObject(t, "decode_from_wire", j->ms_decode_wire);
    cJSON_AddNumberToObject(t, "project", j->ms_project);
    cJSON_AddNumberToObject(t, "fuse", j->ms_fuse);
    cJSON_AddNumberToObject(t, "receiver_prefill", j->ms_receiver_prefill);
    cJSON_AddNumberToObject(t, "first_token", j->ms_first_token);
    cJSON_AddNumberToObject(t, "decode", j->ms_decode);
    cJSON_AddNumberToObject(t, "total", total_ms);
    cJSON_AddItemToObject(k, "completion_ids", kw__rd_ids_json(j->ids, j->n_ids));
    if (s->force_ids) {
        cJSON *tf = cJSON_AddObjectToObject(k, "teacher_forcing");
        cJSON_AddNumberToObject(tf, "positions", s->n_force);
        cJSON_AddNumberToObject(tf, "top1_agree", (double)j->top1_agree);
        if (s->score_ids) {
            cJSON *rows = cJSON_AddArrayToObject(k, "scored_logprobs");
            int64_t off = 0;
            for (int32_t i = 0; i < s->n_force; ++i) {
                cJSON *row = cJSON_CreateArray();
                for (int32_t q = 0; q < s->n_score[i]; ++q)
                    cJSON_AddItemToArray(row, cJSON_CreateNumber(j->scored[off + q]));
                off += s->n_score[i];
                cJSON_AddItemToArray(rows, row);
            }
        }
    }
    return k;
}

/* The decoded text of one token (for logprobs). */
static char *kw__rd_token_text(const kw_receiverd *d, int32_t id) {
    char *t = NULL;
    size_t n = 0;
    if (kw_tokenizer_decode(d->tok, &id, 1, 0, &t, &n) < 0) return strdup("");
    return t;
}

/* How one token is written in logprobs (owned by the caller; NULL when out of memory): its text, or "token_id:<id>"
 * when the request asked for return_tokens_as_token_ids (vLLM's form). */
static char *kw__rd_token_name(const kw_receiverd *d, const kw_rd_spec *s, int32_t id) {
    if (!s->token_ids) return kw__rd_token_text(d, id);
    char buf[32];
    snprintf(buf, sizeof buf, "token_id:%d", (int)id);
    return strdup(buf);
}

static cJSON *kw__rd_logprobs_json(const kw_receiverd *d, const kw_rd_job *j) {
    cJSON *lp = cJSON_CreateObject();
    if (j->spec.chat) {
        cJSON *content = cJSON_AddArrayToObject(lp, "content");
        for (int64_t i = 0; i < j->n_lp; ++i) {
            const kw_rd_token_stats *t = &j->lp[i];
            char *tok = kw__rd_token_name(d, &j->spec, t->id);
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "token", tok ? tok : "");
            cJSON_AddNumberToObject(o, "logprob", t->logprob);
            cJSON *bytes = cJSON_AddArrayToObject(o, "bytes");
            for (const unsigned char *p = (const unsigned char *)(tok ? tok : ""); *p; ++p)
                cJSON_AddItemToArray(bytes, cJSON_CreateNumber(*p));
            free(tok);
            cJSON *top = cJSON_AddArrayToObject(o, "top_logprobs");
            for (int k = 0; k < t->n_top; ++k) {
                char *tt = kw__rd_token_name(d, &j->spec, t->top_ids[k]);
                cJSON *e = cJSON_CreateObject();
                cJSON_AddStringToObject(e, "token", tt ? tt : "");
                cJSON_AddNumberToObject(e, "logprob", t->top_lp[k]);
                free(tt);
                cJSON_AddItemToArray(top, e);
            }
            cJSON_AddItemToArray(content, o);
        }
        return lp;
    }
    cJSON *toks = cJSON_AddArrayToObject(lp, "tokens"), *lps = cJSON_AddArrayToObject(lp, "token_logprobs");
    cJSON *tops = cJSON_AddArrayToObject(lp, "top_logprobs"), *offs = cJSON_AddArrayToObject(lp, "text_offset");
    size_t offset = j->prompt_text ? strlen(j->prompt_text) : 0;
    for (int64_t i = 0; i < j->n_lp; ++i) {
        const kw_rd_token_stats *t = &j->lp[i];
        char *tok = kw__rd_token_text(d, t->id), *name = kw__rd_token_name(d, &j->spec, t->id);
        cJSON_AddItemToArray(toks, cJSON_CreateString(name ? name : ""));
        cJSON_AddItemToArray(lps, cJSON_CreateNumber(t->logprob));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)offset)); /* offsets count text, whatever names say */
        offset += tok ? strlen(tok) : 0;
        free(tok);
        free(name);
        cJSON *top = cJSON_CreateObject();
        for (int k = 0; k < t->n_top; ++k) {
            char *tt = kw__rd_token_name(d, &j->spec, t->top_ids[k]);
            if (!cJSON_GetObjectItemCaseSensitive(top, tt ? tt : "")) /* tokens that decode alike: the likelier */
                cJSON_AddNumberToObject(top, tt ? tt : "", t->top_lp[k]);
            free(tt);
        }
        cJSON_AddItemToArray(tops, top);
    }
    return lp;
}

/* The response object (or one streaming event: delta text only, and the last one with usage and kvwire). */
static cJSON *kw__rd_response(const kw_receiverd *d, const kw_rd_job *j, const char *delta, bool final,
                              double total_ms) {
    const kw_rd_spec *s = &j->spec;
    cJSON *root = cJSON_CreateObject();
    char id[48];
    snprintf(id, sizeof id, "%s-%llu", s->chat ? "chatcmpl" : "cmpl", (unsigned long long)j->id);
    cJSON_AddStringToObject(root, "id", id);
    cJSON_AddStringToObject(root, "object",
                            s->chat ? (s->stream ? "chat.completion.chunk" : "chat.completion") : "text_completion");
    cJSON_AddNumberToObject(root, "created", (double)time(NULL));
    cJSON_AddStringToObject(root, "model", d->cfg->model_name);
    cJSON *choices = cJSON_AddArrayToObject(root, "choices"), *c = cJSON_CreateObject();
    cJSON_AddItemToArray(choices, c);
    cJSON_AddNumberToObject(c, "index", 0);
    const char *finish = final ? (j->finish_stop ? "stop" : "length") : NULL;
    if (s->chat) {
        cJSON *m = cJSON_AddObjectToObject(c, s->stream ? "delta" : "message");
        if (!s->stream || delta) cJSON_AddStringToObject(m, "role", "assistant");
        cJSON_AddStringToObject(m, "content", s->stream ? (delta ? delta : "") : j->text);
    } else if (s->stream) {
        cJSON_AddStringToObject(c, "text", delta ? delta : "");
    } else {
        char *text = NULL;
        if (j->prompt_text) {
            const size_t a = strlen(j->prompt_text);
            text = malloc(a + j->text_len + 1);
            if (text) memcpy(text, j->prompt_text, a), memcpy(text + a, j->text, j->text_len + 1);
        }
        cJSON_AddStringToObject(c, "text", text ? text : j->text);
        free(text);
    }
    if (final && j->lp)
        cJSON_AddItemToObject(c, "logprobs", kw__rd_logprobs_json(d, j));
    else
        cJSON_AddNullToObject(c, "logprobs");
    if (finish)
        cJSON_AddStringToObject(c, "finish_reason", finish);
    else
        cJSON_AddNullToObject(c, "finish_reason");
    if (final) {
        cJSON *u = cJSON_AddObjectToObject(root, "usage");
        cJSON_AddNumberToObject(u, "prompt_tokens", (double)j->n_prompt);
        cJSON_AddNumberToObject(u, "completion_tokens", (double)j->n_ids);
        cJSON_AddNumberToObject(u, "total_tokens", (double)(j->n_prompt + j->n_ids));
        cJSON_AddItemToObject(root, "kvwire", kw__rd_kvwire_block(j, total_ms));
    }
    return root;
}

static void kw__rd_sse(kw_rd_job *j, cJSON *event) {
    char *data = event ? cJSON_PrintUnformatted(event) : NULL;
    cJSON_Delete(event);
    if (!data) return;
    if (kw_http_sse_send(j->http, NULL, data) == KW_E_NET_CLOSED) kw_rd_job_cancel(j, KW_E_CANCELLED);
    free(data);
}

static void kw__rd_stream_start(kw_rd_job *j) {
    if (j->stream_started || !j->http) return;
    static const kw_http_header h[] = {{"Cache-Control", "no-cache"}};
    if (kw_http_response_start(j->http, 200, "text/event-stream", h, 1) == KW_E_NET_CLOSED)
        kw_rd_job_cancel(j, KW_E_CANCELLED);
    j->stream_started = true;
}

/* The request's log line: its words on stderr; in the journal also the fields of kw_log_request (the sharer
 * connection's bytes each way), the blob, the relay text and the generated tokens. */
static void kw__rd_log_request(const kw_rd_job *j, int http, double total_ms) {
    const bool ok = j->status == 0;
    const kw_log_request r = {.id = j->id,
                              .mode = kw_rd_mode_name(j->spec.mode),
                              .status = j->status,
                              .bytes_sent = ok ? (int64_t)j->share.socket_out : -1,
                              .bytes_received = ok ? (int64_t)j->share.socket_in : -1,
                              .duration_ms = ok ? total_ms : -1,
                              .http_status = http};
    kw_log_fields f = {0};
    kw_log_fields_request(&f, &r);
    if (!ok) {
        KW_LOG_WITH(KW_LOG_LEVEL_INFO, &f, "receiverd: request %llu failed (%d): %s (%s)", (unsigned long long)r.id,
                    http, j->error, kw_status_name(j->status));
        return;
    }
    kw_log_fields_add(&f, "KW_BLOB_BYTES", "%llu", (unsigned long long)j->blob_bytes);
    kw_log_fields_add(&f, "KW_TEXT_BYTES", "%llu", (unsigned long long)j->share.text_len);
    kw_log_fields_add(&f, "KW_TOKENS", "%lld", (long long)j->n_ids);
    if (j->kv_store) { /* kv_direct: how the rows went into the cache, and why not as the sent codes */
        kw_log_fields_add(&f, "KW_KV_STORE", "%s", j->kv_store);
        if (j->kv_store_why) kw_log_fields_add(&f, "KW_KV_STORE_REASON", "%s", j->kv_store_why);
    }
    KW_LOG_WITH(KW_LOG_LEVEL_INFO, &f,
                "receiverd: request %llu ok: %s, blob %llu B, socket in %llu B out %llu B, text %llu B, %lld tokens, "
                "%.1f ms",
                (unsigned long long)r.id, r.mode, (unsigned long long)j->blob_bytes,
                (unsigned long long)j->share.socket_in, (unsigned long long)j->share.socket_out,
                (unsigned long long)j->share.text_len, (long long)j->n_ids, total_ms);
}

/* The request's answer after its DONE, and the metrics. */
static void kw__rd_finish(kw_receiverd *d, kw_rd_job *j) {
    --d->queued;
    if (j->link) kw_rd_link_release(j->link, j);
    const double total_ms = kw_time_ms(j->t_arrival, kw_time_now_ns());
    int http = 200;
    if (j->status < 0) http = j->http_status ? j->http_status : kw__rd_http_of(j->status);
    if (j->status == KW_E_CANCELLED) http = 499; /* the client went away: nobody reads the answer */
    ++d->requests[j->spec.mode][kw__rd_outcome(http == 499 ? 400 : http, j->status)];
    d->bytes_blob += j->blob_bytes;
    d->bytes_socket_in += j->share.socket_in;
    d->bytes_socket_out += j->share.socket_out;
    d->bytes_text += j->share.text_len;
    d->generated_tokens += (uint64_t)j->n_ids;
    if (j->status == 0 && j->refine_measured) ++d->refine[j->refine_round2 ? 1 : j->refine_skipped ? 2 : 0];
    for (int i = 0; j->status == 0 && j->kv_store && i < 4; ++i)
        if (strcmp(j->kv_store, kw__rd_kv_stores[i]) == 0) ++d->kv_store[i];
    if (j->status == 0) {
        kw__rd_hist_add(&d->request_hist[j->spec.mode], total_ms * 1e-3);
        const Kwctl__ShareEnd *e = j->share.end;
        const double stages[KW_RD_STAGES] = {j->ms_queue,
                                             j->ms_tokenize,
                                             e ? (double)e->prefill_ns * 1e-6 : 0,
                                             e ? (double)e->select_ns * 1e-6 : 0,
                                             e ? (double)e->encode_ns * 1e-6 : 0,
                                             j->share.t_last_wire > j->share.t_sent && j->share.t_sent
                                                 ? kw_time_ms(j->share.t_sent, j->share.t_last_wire)
                                                 : 0,
                                             j->ms_decode_wire,
                                             j->ms_project,
                                             j->ms_fuse,
                                             j->ms_receiver_prefill,
                                             j->ms_first_token,
                                             j->ms_decode,
                                             total_ms};
        for (int s = 0; s < KW_RD_STAGES; ++s)
            kw__rd_hist_add(&d->stage_hist[s], stages[s] * 1e-3);
    }
    if (j->status != KW_E_CANCELLED) kw__rd_log_request(j, http, total_ms);
    if (j->http) {
        if (j->spec.stream && j->stream_started) {
            if (j->status == 0) {
                kw__rd_sse(j, kw__rd_response(d, j, NULL, true, total_ms));
            } else {
                kw__rd_sse(j, kw__rd_error_json(j->status, j->error, "server_error"));
            }
            kw_http_sse_send(j->http, NULL, "[DONE]");
            kw_http_response_end(j->http);
        } else if (j->status == 0 && j->spec.stream) {
            kw__rd_stream_start(j);
            kw__rd_sse(j, kw__rd_response(d, j, NULL, true, total_ms));
            kw_http_sse_send(j->http, NULL, "[DONE]");
            kw_http_response_end(j->http);
        } else if (j->status == 0) {
            kw__rd_respond_json(j->http, 200, kw__rd_response(d, j, NULL, true, total_ms));
        } else {
            kw__rd_respond_error(d, j->http, http == 499 ? 400 : http, j->status, j->error,
                                 http >= 500 ? "server_error" : "invalid_request_error");
        }
        j->http = NULL;
    }
    kw_rd_job_unref(j);
}

static void kw__rd_on_post(kw_net_async_item *item, void *user) {
    kw_receiverd *d = user;
    kw_rd_post *p = (kw_rd_post *)item;
    kw_rd_job *j = p->job;
    switch (p->kind) {
    case KW_RD_POST_SEND:
        if (j->link)
            kw_rd_link_submit(j->link, j);
        else
            kw_rd_job_cancel(j, KW_E_INTERNAL);
        break;
    case KW_RD_POST_SELECTION: /* the frame is the post's text, handed over */
        if (j->link)
            kw_rd_link_send_frame(j->link, j, (uint8_t *)p->text, p->len);
        else
            free(p->text);
        p->text = NULL;
        break;
    case KW_RD_POST_RESUME:
        if (j->link) kw_rd_link_resume(j->link);
        break;
    case KW_RD_POST_TOKEN:
        if (j->http && !atomic_load(&j->cancel)) {
            kw__rd_stream_start(j);
            if (j->http) kw__rd_sse(j, kw__rd_response(d, j, p->text, false, 0));
        }
        break;
    case KW_RD_POST_DONE:
        kw__rd_finish(d, j);
        break;
    case KW_RD_POST_EXIT:
        kw_net_async_close(d->async);
        d->async = NULL;
        /* SIGTERM and SIGINT are ignored from here on (kw_net_signals_close): a repeated one (scancel and a job
         * script both send one) must not kill the process while it frees its models; it is stopping already */
        kw_net_signals_close(d->signals);
        d->signals = NULL;
        kw_net_service_close(d->service);
        d->service = NULL;
        break;
    }
    free(p->text);
    free(p);
}

// ---------------------------------------------------------------------------------------------------------------
// Requests

static kw_rd_link *kw__rd_find_link(kw_receiverd *d, const char *name, int32_t *index) {
    for (int32_t i = 0; i < d->n_links; ++i)
        if (!name || strcmp(kw_rd_link_name(d->links[i]), name) == 0) {
            *index = i;
            return d->links[i];
        }
    return NULL;
}

/* The sharer checks of a request (HTTP_API §5.1): which sharer and model, and whether the pair serves the mode. */
static int kw__rd_resolve(kw_receiverd *d, kw_rd_job *j, int *http, char *err, size_t cap) {
    kw_rd_spec *s = &j->spec;
    int32_t index = -1;
    *http = 400;
    if (s->cache_layout) { /* codec "cache": the layout this server's cache stores as pages (kw_kv_pages.h) */
        const enum kw_kvq_codec codec = d->cfg->cache_dtype == 3   ? KW_KVQ_INT8
                                        : d->cfg->cache_dtype == 5 ? KW_KVQ_INT6
                                                                   : KW_KVQ_INT4;
        if (d->cfg->cache_dtype < 3 || kw_kv_pages_specs(codec, (int32_t)d->cfg->cache_page_tokens,
                                                         (int32_t)d->id_kv.head_dim, &s->spec, &s->spec_v) < 0) {
            snprintf(err, cap, "kvwire.policy.codec: \"cache\": this server's cache has no KVWire layout: %s",
                     d->cfg->cache_dtype < 3 ? "it is not quantized" : kw_error_detail());
            return KW_E_INVALID_ARG;
        }
    }
    if (s->mode == KW_RD_MODE_RECEIVER_ONLY) return 0;
    kw_rd_link *l = kw__rd_find_link(d, s->sharer, &index);
    if (!l) {
        snprintf(err, cap,
                 s->sharer ? "kvwire.sharer: no sharer named \"%s\" is configured" : "no sharer is configured",
                 s->sharer);
        return s->sharer ? KW_E_NOT_FOUND : KW_E_UNSUPPORTED;
    }
    if (!kw_rd_link_ready(l)) {
        *http = 503;
        snprintf(err, cap, "sharer %s is not connected: %s", kw_rd_link_name(l), kw_rd_link_reason(l));
        return KW_E_NET_CONNECT;
    }
    size_t n = 0;
    Kwctl__ModelIdentity *const *models = kw_rd_link_models(l, &n);
    const Kwctl__ModelIdentity *m = NULL;
    char why[512];
    for (size_t i = 0; i < n && !m; ++i) {
        if (s->sharer_model) {
            if (strcmp(models[i]->name, s->sharer_model) == 0) m = models[i];
        } else if (s->mode == KW_RD_MODE_KV_DIRECT) { /* by default the model that is the receiver's own */
            if (kw_proto_same_model(&d->id_digest, models[i]->digest)) m = models[i];
        } else if (s->mode == KW_RD_MODE_C2C) { /* by default the first one a fuser takes */
            if (kw_rd_find_fuser(d, index, models[i], why, sizeof why) >= 0) m = models[i];
        } else {
            m = models[i];
        }
    }
    if (!m && !s->sharer_model && n > 0) m = models[0]; /* the checks below say why it cannot serve */
    if (!m) {
        snprintf(err, cap, "kvwire.sharer_model: sharer %s serves no model named \"%s\"", kw_rd_link_name(l),
                 s->sharer_model ? s->sharer_model : "");
        return KW_E_NOT_FOUND;
    }
    if (s->mode == KW_RD_MODE_KV_DIRECT && !kw_proto_same_model(&d->id_digest, m->digest)) {
        snprintf(err, cap, "kv_direct needs the receiver's own model: sharer model %s is other files (digests differ)",
                 m->name);
        return KW_E_SHARE_MODE;
    }
    if (s->mode == KW_RD_MODE_C2C) {
        j->fuser_index = kw_rd_find_fuser(d, index, m, why, sizeof why);
        if (j->fuser_index < 0) {
            snprintf(err, cap, "c2c from sharer model %s: %s", m->name, why);
            return KW_E_SHARE_MODE;
        }
        if (d->fusers[j->fuser_index].fuser->recipe.is_do_alignment) {
            snprintf(err, cap,
                     "fuser %s asks for token alignment, which the daemons do not serve yet (kvwire c2c "
                     "does)",
                     d->fusers[j->fuser_index].cfg->name);
            return KW_E_UNSUPPORTED;
        }
    }
    j->link = l;
    snprintf(j->sharer_name, sizeof j->sharer_name, "%s", kw_rd_link_name(l));
    snprintf(j->sharer_model, sizeof j->sharer_model, "%s", m->name);
    j->sharer_layers = (int32_t)m->kv->n_layers;
    j->sharer_heads = (int32_t)m->kv->n_kv_heads;
    j->sharer_dim = (int32_t)m->kv->head_dim;
    return 0;
}

static void kw__rd_on_abort(kw_http_request *req, void *user) {
    (void)req;
    kw_rd_job_cancel(user, KW_E_CANCELLED);
}

static void kw__rd_generate(kw_receiverd *d, kw_http_request *req, bool chat) {
    char err[1024];
    const char *type = "invalid_request_error";
    int http = 400;
    kw_rd_job *j = calloc(1, sizeof *j);
    if (!j) {
        kw__rd_respond_error(d, req, 500, KW_E_NOMEM, "out of memory", "server_error");
        return;
    }
    uv_mutex_init(&j->mu);
    uv_cond_init(&j->cond);
    atomic_init(&j->refs, 1);
    atomic_init(&j->cancel, 0);
    j->d = d;
    j->t_arrival = kw_time_now_ns();
    j->fuser_index = -1;
    int rc = kw_rd_spec_parse((const char *)req->body, req->body_len, chat, d->live ? d->live : d->cfg, d->vocab,
                              d->cfg->model_name, &j->spec, err, sizeof err, &type, &http);
    if (rc == 0) rc = kw__rd_resolve(d, j, &http, err, sizeof err);
    if (rc == 0 && d->shutting_down) {
        rc = KW_E_NET_SHUTDOWN, http = 503;
        snprintf(err, sizeof err, "the server is shutting down");
    }
    if (rc == 0 && d->queued >= d->cfg->queue_max) {
        rc = KW_E_SHARE_BUSY, http = 503;
        snprintf(err, sizeof err, "%d requests are queued, the limit is %lld: retry later", (int)d->queued,
                 (long long)d->cfg->queue_max);
    }
    if (rc < 0) {
        ++d->requests[j->spec.mode][kw__rd_outcome(http, rc)];
        kw__rd_respond_error(d, req, http, rc, err, http >= 500 ? "server_error" : type);
        kw_rd_job_unref(j);
        return;
    }
    j->id = ++d->next_job_id;
    j->share_id = j->id;
    j->http = req;
    kw_http_request_watch(req, kw__rd_on_abort, NULL, j);
    ++d->queued;
    if (!kw_queue_push(&d->queue, &j->item)) { /* stopping: it never runs */
        j->status = KW_E_NET_SHUTDOWN;
        j->http_status = 503;
        snprintf(j->error, sizeof j->error, "the server is shutting down");
        kw__rd_finish(d, j);
    }
}

static void kw__rd_health(kw_receiverd *d, kw_http_request *req) {
    cJSON *root = cJSON_CreateObject();
    bool ok = d->model != NULL;
    cJSON *arr = cJSON_CreateArray();
    for (int32_t i = 0; i < d->n_links; ++i) {
        const bool ready = kw_rd_link_ready(d->links[i]);
        ok = ok && ready;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", kw_rd_link_name(d->links[i]));
        cJSON_AddBoolToObject(o, "connected", ready);
        if (!ready) cJSON_AddStringToObject(o, "reason", kw_rd_link_reason(d->links[i]));
        cJSON_AddItemToArray(arr, o);
    }
    cJSON_AddStringToObject(root, "status", ok ? "ok" : "degraded");
    cJSON_AddStringToObject(root, "model", d->cfg->model_name);
    cJSON_AddItemToObject(root, "sharers", arr);
    cJSON_AddNumberToObject(root, "queue_depth", d->queued);
    cJSON_AddNumberToObject(root, "in_flight", atomic_load(&d->in_flight));
    cJSON_AddNumberToObject(root, "workers", d->n_workers);
    cJSON_AddNumberToObject(root, "cpu_threads", kw_backend_cpu_threads(d->be)); /* each worker's; 0: not the CPU */
    cJSON_AddStringToObject(root, "cpu_wait", kw_backend_cpu_wait());
    kw__rd_respond_json(req, ok ? 200 : 503, root);
}

static void kw__rd_models(kw_receiverd *d, kw_http_request *req) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "object", "list");
    cJSON *data = cJSON_AddArrayToObject(root, "data"), *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", d->cfg->model_name);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddStringToObject(m, "owned_by", "kvwire");
    cJSON_AddItemToArray(data, m);
    kw__rd_respond_json(req, 200, root);
}

static void kw__rd_handler(kw_http_request *req, void *user) {
    kw_receiverd *d = user;
    static const struct {
        const char *path, *method;
    } routes[] = {{"/v1/completions", "POST"},
                  {"/v1/chat/completions", "POST"},
                  {"/v1/models", "GET"},
                  {"/health", "GET"},
                  {"/metrics", "GET"}};
    int found = -1;
    for (int i = 0; i < 5 && found < 0; ++i)
        if (strcmp(req->path, routes[i].path) == 0) found = i;
    if (found < 0) {
        kw__rd_respond_error(d, req, 404, KW_E_NOT_FOUND, "no such path", "invalid_request_error");
        return;
    }
    if (strcmp(req->method, routes[found].method) != 0) {
        char msg[96];
        snprintf(msg, sizeof msg, "%s wants %s", routes[found].path, routes[found].method);
        kw__rd_respond_error(d, req, 405, KW_E_INVALID_ARG, msg, "invalid_request_error");
        return;
    }
    switch (found) {
    case 0:
    case 1:
        kw__rd_generate(d, req, found == 1);
        break;
    case 2:
        kw__rd_models(d, req);
        break;
    case 3:
        kw__rd_health(d, req);
        break;
    default:
        kw__rd_metrics(d, req);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Start, run, stop

static void kw__rd_http_done(kw_http_server *s, void *user) {
    kw_receiverd *d = user;
    (void)s;
    for (int32_t i = 0; i < d->n_links; ++i)
        kw_rd_link_stop(d->links[i]);
    kw_queue_close(&d->queue); /* the compute threads drain it and exit */
}

static void kw__rd_on_signal(int signum, void *user) {
    kw_receiverd *d = user;
    if (d->shutting_down) return;
    d->shutting_down = true;
    KW_LOG_INFO("receiverd: signal %d: shutting down (requests in flight get %lld ms)", signum,
                (long long)d->cfg->shutdown_ms);
    kw_net_service_stopping(d->service, "stopping (signal %d): %d request(s) to finish", signum, (int)d->queued);
    kw_http_server_shutdown(d->http, (uint32_t)d->cfg->shutdown_ms, kw__rd_http_done, d);
}

/* "serving tiny-qwen3 on http://127.0.0.1:8080; sharers local; fusers tiny-fuser": the STATUS line. */
static void kw__rd_describe(const kw_receiverd *d, char *out, size_t cap) {
    size_t used = (size_t)snprintf(out, cap, "serving %s on http://%s:%u; sharers", d->cfg->model_name,
                                   d->cfg->http_host, (unsigned)d->port);
    for (int32_t i = 0; i < d->cfg->n_sharers && used < cap; ++i)
        used += (size_t)snprintf(out + used, cap - used, "%s%s", i ? ", " : " ", d->cfg->sharers[i].name);
    if (used < cap) used += (size_t)snprintf(out + used, cap - used, "; fusers");
    for (int32_t i = 0; i < d->n_fusers && used < cap; ++i)
        used += (size_t)snprintf(out + used, cap - used, "%s%s", i ? ", " : " ", d->cfg->fusers[i].name);
    if (d->n_fusers == 0 && used < cap) snprintf(out + used, cap - used, " none");
}

/* SIGHUP: reads the config again; applies log.level and defaults.* (requests parsed from now on), refuses the rest.
 * A request in flight keeps the spec it was parsed with. */
static void kw__rd_on_reload(void *user) {
    kw_receiverd *d = user;
    if (d->shutting_down) return;
    kw_net_service_reloading(d->service);
    KW_LOG_INFO("receiverd: SIGHUP: reloading the configuration");
    kw_receiverd_config *next = calloc(1, sizeof *next);
    char refused[512];
    int n_refused = 0;
    int rc = !next            ? kw_error_set(KW_E_NOMEM, "out of memory")
             : d->reload_argv ? kw_cfg_reload(&kw_receiverd_config_table, d->cfg, next, sizeof *next, d->reload_argc,
                                              d->reload_argv, refused, sizeof refused, &n_refused)
                              : kw_error_set(KW_E_STATE, "no command line to read again");
    if (rc < 0) {
        KW_LOG_WARN("receiverd: reload failed, the configuration in force is unchanged: %s", kw_error_detail());
        if (next) kw_cfg_free(&kw_receiverd_config_table, next);
        free(next);
    } else {
        if (n_refused)
            KW_LOG_WARN("receiverd: reload: %d changed key(s) need a restart and keep their running values: %s",
                        n_refused, refused);
        const kw_receiverd_config *was = d->live ? d->live : d->cfg;
        if (next->log_level != was->log_level) {
            KW_LOG_INFO("receiverd: reload: log level %s -> %s", kw_log_level_name((enum kw_log_level)was->log_level),
                        kw_log_level_name((enum kw_log_level)next->log_level));
            kw_log_set_level((enum kw_log_level)next->log_level);
        }
        static const char *const modes[] = {"c2c", "kv_direct", "receiver_only", "text_relay"};
        KW_LOG_INFO("receiverd: reload: defaults now mode %s, codec %s, selection %d, proportion %g",
                    modes[next->def_mode & 3], next->def_codec ? next->def_codec : "bf16", next->def_selection,
                    next->def_proportion);
        if (d->live) kw_cfg_free(&kw_receiverd_config_table, d->live);
        free(d->live);
        d->live = next; /* only its LIVE keys are read */
    }
    char what[512];
    kw__rd_describe(d, what, sizeof what);
    kw_net_service_ready(d->service, "%s (reloaded%s)", what, rc < 0 ? ": failed, see the log" : "");
}

static int kw__rd_load_fuser(kw_receiverd *d, int32_t i) {
    const kw_receiverd_fuser_cfg *fc = &d->cfg->fusers[i];
    kw_rd_fuser *f = &d->fusers[i];
    f->cfg = fc;
    KW_RETURN_IF(!fc->name || !fc->path || strlen(fc->name) > 128 || !fc->name[0], KW_E_INVALID_ARG,
                 "receiverd: fuser %d needs a name (1..128 bytes) and a path", (int)i);
    f->sharer_index = 0;
    if (fc->sharer) {
        f->sharer_index = -1;
        for (int32_t s = 0; s < d->cfg->n_sharers; ++s)
            if (d->cfg->sharers[s].name && strcmp(d->cfg->sharers[s].name, fc->sharer) == 0) f->sharer_index = s;
        KW_RETURN_IF(f->sharer_index < 0, KW_E_INVALID_ARG, "receiverd: fuser %s: no sharer named %s", fc->name,
                     fc->sharer);
    }
    KW_LOG_INFO("receiverd: loading fuser %s from %s", fc->name, fc->path);
    kw_net_service_status(d->service, "loading fuser %s from %s", fc->name, fc->path);
    KW_FORWARD(kw_fuser_load(fc->path, 0, &f->fuser));
    KW_FORWARD(kw_identity_fuser(fc->path, f->digest));
    const kw_model_config *rc = kw_model_get_config(d->model);
    KW_RETURN_IF(f->fuser->dims.target_heads != rc->n_kv_heads || f->fuser->dims.target_dim != rc->head_dim ||
                     f->fuser->n_target_layers > rc->n_layers,
                 KW_E_FUSER_CONFIG, "receiverd: fuser %s does not fit the receiver model (%d heads x %d, %d layers)",
                 fc->name, (int)rc->n_kv_heads, (int)rc->head_dim, (int)rc->n_layers);
    int32_t top = -1;
    for (int32_t t = 0; t < f->fuser->n_target_layers; ++t)
        if (f->fuser->map_source[t] > top) top = f->fuser->map_source[t];
    kwctl__fuser_identity__init(&f->id);
    kwctl__model_digest__init(&f->id_sharer);
    kwctl__model_digest__init(&f->id_receiver);
    kwctl__kv_shape__init(&f->id_kv);
    f->id.name = fc->name;
    f->id.weights_sha256 = (ProtobufCBinaryData){32, f->digest};
    f->id.sharer = &f->id_sharer;
    f->id_receiver = d->id_digest;
    f->id.receiver = &f->id_receiver;
    f->id_kv.n_layers = (uint32_t)(top + 1 > 0 ? top + 1 : 1);
    f->id_kv.n_kv_heads = (uint32_t)f->fuser->dims.source_heads;
    f->id_kv.head_dim = (uint32_t)f->fuser->dims.source_dim;
    f->id.sharer_kv = &f->id_kv;
    return 0;
}

int kw_receiverd_create(const kw_receiverd_config *cfg, kw_receiverd **out) {
    KW_RETURN_IF(cfg == NULL || out == NULL, KW_E_INVALID_ARG, "receiverd: NULL argument");
    KW_RETURN_IF(!cfg->model_path, KW_E_INVALID_ARG, "receiverd: model.path is required");
    KW_RETURN_IF(!cfg->model_name || !cfg->model_name[0], KW_E_INVALID_ARG, "receiverd: model.name is empty");
    *out = NULL;
    kw_receiverd *d = calloc(1, sizeof *d);
    KW_RETURN_IF(d == NULL, KW_E_NOMEM, "receiverd: out of memory");
    int rc = 0;
    d->cfg = cfg;
    KW_CHECK(kw_queue_init(&d->queue));
    d->queue_init = true;
    KW_CHECK_IF(uv_loop_init(&d->loop) != 0, KW_E_IO, "receiverd: cannot create the event loop");
    d->loop_init = true;
    /* first: STATUS lines while the models load, and a SIGHUP meanwhile must not kill the process */
    KW_CHECK(kw_net_service_start(&d->loop, "receiverd", kw__rd_on_reload, d, &d->service));
    const kw_backend_options bo = {.kind = (enum kw_backend_kind)cfg->backend,
                                   .n_threads = (int)cfg->threads,
                                   .n_workers = (int)cfg->workers,
                                   .device = (int)cfg->device,
                                   .memory_limit = (uint64_t)cfg->memory_limit_mb << 20};
    KW_CHECK(kw_backend_create_with(&bo, &d->be));
    KW_LOG_INFO("receiverd: loading model %s from %s (weights %s)", cfg->model_name, cfg->model_path,
                kw_model_weight_modes[cfg->weights]);
    kw_net_service_status(d->service, "loading model %s from %s", cfg->model_name, cfg->model_path);
    kw_model_options mo = {.max_batch = (int32_t)cfg->max_batch};
    kw_model_options_set_weight_mode(&mo, cfg->weights);
    KW_CHECK(kw_model_load(d->be, cfg->model_path, &mo, &d->model));
    const kw_model_config *mc = kw_model_get_config(d->model);
    KW_CHECK(kw_rd_workers_create(d, (int32_t)cfg->workers));
    KW_CHECK(kw_tokenizer_load(cfg->model_tokenizer ? cfg->model_tokenizer : cfg->model_path, &d->tok));
    KW_CHECK_IF(kw_tokenizer_vocab_size(d->tok) > mc->vocab, KW_E_TOKENIZER,
                "receiverd: the tokenizer has %d ids, the model's vocabulary only %d",
                (int)kw_tokenizer_vocab_size(d->tok), (int)mc->vocab);
    d->vocab = mc->vocab;
    KW_CHECK(kw_chat_family_for_model(cfg->model_path, mc->arch, &d->family));
    d->logits_bf16 = cfg->numerics == 0 && kw_model_logits_weight_dtype(d->model) == KW_DTYPE_BF16;
    if (cfg->cache_dtype >= 3 || cfg->cache_layers) { /* refuse at start what every request would be refused */
        static const char *const names[] = {"auto", "bf16", "f32", "int8", "int4", "int6"};
        kw_kvcache *probe = NULL;
        const int prc = kw_rd_create_cache(cfg, d->model, 16, KW_DTYPE_BF16, &probe);
        kw_kvcache_free(probe);
        KW_CHECK_IF(prc < 0, prc, "receiverd: cache.dtype %s, cache.page_tokens %lld, cache.layers \"%s\": %s",
                    cfg->cache_dtype >= 0 && cfg->cache_dtype < 6 ? names[cfg->cache_dtype] : "?",
                    (long long)cfg->cache_page_tokens, cfg->cache_layers ? cfg->cache_layers : "", kw_error_detail());
    }
    KW_CHECK(kw_identity_model(cfg->model_path, &d->digest));
    kwctl__model_identity__init(&d->id);
    kwctl__model_digest__init(&d->id_digest);
    kwctl__kv_shape__init(&d->id_kv);
    d->id_digest.config_sha256 = (ProtobufCBinaryData){32, d->digest.config_sha256};
    d->id_digest.weights_sha256 = (ProtobufCBinaryData){32, d->digest.weights_sha256};
    d->id_kv.n_layers = (uint32_t)mc->n_layers, d->id_kv.n_kv_heads = (uint32_t)mc->n_kv_heads;
    d->id_kv.head_dim = (uint32_t)mc->head_dim;
    d->id.name = cfg->model_name;
    d->id.architecture = (char *)kw_arch_name(mc->arch);
    d->id.digest = &d->id_digest;
    d->id.kv = &d->id_kv;
    for (int32_t i = 0; i < cfg->n_sharers; ++i) {
        KW_CHECK_IF(!cfg->sharers[i].name || !cfg->sharers[i].name[0] || strlen(cfg->sharers[i].name) > 128,
                    KW_E_INVALID_ARG, "receiverd: sharer %d needs a name of 1..128 bytes", (int)i);
        for (int32_t k = 0; k < i; ++k)
            KW_CHECK_IF(strcmp(cfg->sharers[k].name, cfg->sharers[i].name) == 0, KW_E_INVALID_ARG,
                        "receiverd: two sharers are named %s", cfg->sharers[i].name);
    }
    for (int32_t i = 0; i < cfg->n_fusers; ++i) {
        d->n_fusers = i + 1;
        KW_CHECK(kw__rd_load_fuser(d, i));
    }
    KW_CHECK_IF(cfg->n_fusers > 0 && cfg->n_sharers == 0, KW_E_INVALID_ARG, "receiverd: fusers without a sharer");
    d->codecs = malloc((KW_WIRE_CODEC_COUNT_V11 - 1) * sizeof *d->codecs);
    KW_CHECK_IF(!d->codecs, KW_E_NOMEM, "receiverd: out of memory");
    for (uint32_t c = 1; c < KW_WIRE_CODEC_COUNT_V11; ++c)
        d->codecs[c - 1] = c;
    for (int32_t i = 0; i < cfg->n_sharers; ++i) {
        KW_CHECK(kw_rd_link_create(d, i, &d->links[i]));
        d->n_links = i + 1;
    }
    kw_http_server_config hc;
    kw_http_server_config_default(&hc);
    hc.net.host = cfg->http_host;
    hc.net.port = (uint16_t)cfg->http_port;
    hc.net.max_connections = (uint32_t)cfg->http_max_connections;
    hc.net.conn.idle_timeout_ms = (uint32_t)cfg->http_idle_timeout_ms;
    hc.max_body_bytes = (size_t)cfg->http_max_body;
    hc.header_timeout_ms = (uint32_t)cfg->http_header_timeout_ms;
    hc.body_timeout_ms = (uint32_t)cfg->http_read_timeout_ms;
    KW_CHECK(kw_http_server_start(&d->loop, &hc, kw__rd_handler, d, &d->http));
    d->port = kw_http_server_port(d->http);
    KW_CHECK(kw_net_async_create(&d->loop, kw__rd_on_post, d, &d->async));
    KW_CHECK(kw_net_signals_watch(&d->loop, kw__rd_on_signal, d, &d->signals));
    *out = d;
    return 0;
out:
    kw_receiverd_free(d);
    return rc;
}

void kw_receiverd_set_reload_args(kw_receiverd *d, int argc, char **argv) {
    d->reload_argc = argc;
    d->reload_argv = argv;
}

uint16_t kw_receiverd_port(const kw_receiverd *d) {
    return d->port;
}

int kw_receiverd_run(kw_receiverd *d) {
    KW_RETURN_IF(d == NULL || d->threads_started || d->n_workers < 1, KW_E_INVALID_ARG, "receiverd: not runnable");
    atomic_store(&d->running, d->n_workers);
    for (int32_t i = 0; i < d->n_workers; ++i) {
        kw_rd_worker *w = &d->workers[i];
        if (uv_thread_create(&w->thread, kw_rd_compute_thread, w) == 0) {
            w->started = true;
            continue;
        }
        /* the ones started drain the queue and exit; this one and the rest never run */
        atomic_fetch_sub(&d->running, d->n_workers - i);
        kw_queue_close(&d->queue);
        for (int32_t k = 0; k < i; ++k)
            uv_thread_join(&d->workers[k].thread);
        KW_FAIL(KW_E_IO, "receiverd: cannot start compute thread %d", (int)i);
    }
    d->threads_started = true;
    /* The loop's clock was last read at uv_loop_init, before the model loaded (seconds for a real model): the links'
     * connect deadlines must start from now, not from then, or they expire on the loop's first turn. */
    uv_update_time(&d->loop);
    for (int32_t i = 0; i < d->n_links; ++i)
        kw_rd_link_start(d->links[i]);
    KW_LOG_INFO("receiverd: serving %s on http://%s:%u with %d sharer(s), %d fuser(s), %d compute thread(s) of %d CPU "
                "thread(s) each, CPU threads wait %s",
                d->cfg->model_name, d->cfg->http_host, (unsigned)d->port, (int)d->n_links, (int)d->n_fusers,
                (int)d->n_workers, kw_backend_cpu_threads(d->be), kw_backend_cpu_wait());
    int rc = 0;
    if (d->cfg->ready_file) {
        char text[64];
        const int n = snprintf(text, sizeof text, "port=%u\n", (unsigned)d->port);
        rc = kw_file_write_all(d->cfg->ready_file, text, (size_t)n);
        if (rc < 0) kw__rd_on_signal(0, d);
    }
    if (rc == 0) {
        char what[512];
        kw__rd_describe(d, what, sizeof what);
        kw_net_service_ready(d->service, "%s", what);
    }
    uv_run(&d->loop, UV_RUN_DEFAULT);
    for (int32_t i = 0; i < d->n_workers; ++i)
        if (d->workers[i].started) uv_thread_join(&d->workers[i].thread), d->workers[i].started = false;
    d->threads_started = false;
    KW_LOG_INFO("receiverd: stopped");
    return rc;
}

void kw_receiverd_free(kw_receiverd *d) {
    if (d == NULL) return;
    if (d->loop_init) {
        if (d->http && !d->shutting_down) {
            d->shutting_down = true;
            kw_http_server_shutdown(d->http, 0, kw__rd_http_done, d);
        }
        for (int32_t i = 0; i < d->n_links; ++i) /* a failed create: the links never started */
            kw_rd_link_stop(d->links[i]);
        kw_net_async_close(d->async);
        kw_net_signals_close(d->signals);
        kw_net_service_close(d->service);
        uv_run(&d->loop, UV_RUN_DEFAULT);
        kw_http_server_free(d->http);
        for (int32_t i = 0; i < d->n_links; ++i)
            kw_rd_link_free(d->links[i]);
        if (uv_loop_close(&d->loop) != 0) KW_LOG_WARN("receiverd: the event loop still had handles at exit");
    }
    kw_rd_workers_free(d); /* their fusions and model forks first: they borrow the fusers and the model */
    for (int32_t i = 0; i < d->n_fusers; ++i)
        kw_fuser_free(d->fusers[i].fuser);
    free(d->codecs);
    if (d->live) kw_cfg_free(&kw_receiverd_config_table, d->live);
    free(d->live);
    kw_tokenizer_free(d->tok);
    kw_model_free(d->model);
    kw_backend_destroy(d->be);
    if (d->queue_init) kw_queue_destroy(&d->queue);
    free(d);
}

/* kw_cfg_main's run: the daemon's life. */
static int kw__receiverd_run_config(void *obj, int argc, char **argv) {
    const kw_receiverd_config *cfg = obj;
    kw_log_set_level((enum kw_log_level)cfg->log_level);
    kw_log_journal_auto("receiverd");
    kw_receiverd *d = NULL;
    int rc = kw_receiverd_create(cfg, &d);
    if (rc == 0) kw_receiverd_set_reload_args(d, argc, argv);
    if (rc == 0) rc = kw_receiverd_run(d);
    char detail[1024]; /* freeing may record reasons of its own */
    snprintf(detail, sizeof detail, "%s", kw_error_detail());
    kw_receiverd_free(d);
    if (rc < 0) kw_error_set(rc, "%s", detail);
    return rc;
}

int kw_receiverd_main(int argc, char **argv) {
    kw_receiverd_config cfg;
    return kw_cfg_main(&kw_receiverd_config_table, &cfg, sizeof cfg, argc, argv, kw__receiverd_run_config);
}
