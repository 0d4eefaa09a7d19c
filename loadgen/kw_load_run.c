/* kw_load_run.c: one run: the dataset loaded, the server probed, warm-up, measured and teacher-forced phases driven
 * over the HTTP engine on this thread, each answer turned into a record line as it arrives, and the summary computed
 * from the files at the end.
 *
 * A measured record (records.jsonl) holds:
 *   index, item_id, subject, prompt, output, answer (extracted, or null), gold (or null), correct (or null),
 *   success, error {kind, status, code, message} (failures only), start_ms (send time from the phase's start),
 *   scheduled_ms and send_lag_ms (open loop: the planned send time and how late it went out), e2el_ms, ttft_ms,
 *   tpot_ms, itl_ms (streams only), prompt_tokens, output_tokens, finish_reason, output_ids / output_logprobs /
 *   top_logprobs (when log-probabilities were asked for: [[id, logprob], ...] per output token), kvwire (the
 *   response's block, verbatim).
 * A teacher-forced record (forced.jsonl) holds: item_id, success, error, positions and top1_agree (receiverd's
 * count), top1_agree_client (the same counted from the returned log-probabilities), kl_positions, kl_sum and kl (per
 * position, kw_load_quality.h), e2el_ms, kvwire.
 * Error kinds: connect, timeout, transport, response_too_large, http_<status>[:<code>], stream_error[:<code>],
 * incomplete_stream, bad_response.
 */
#include "loadgen/kw_load_run.h"

#include "common/kw_file.h"
#include "common/kw_json.h"
#include "common/kw_status.h"
#include "common/kw_time.h"
#include "loadgen/kw_load_http.h"
#include "loadgen/kw_load_io.h"
#include "loadgen/kw_load_quality.h"
#include "loadgen/kw_load_rng.h"
#include "loadgen/kw_load_summary.h"

#include <curl/curl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

static volatile sig_atomic_t kw_load_stop_flag;

void kw_load_run_interrupt(void) {
    kw_load_stop_flag = 1;
}

int kw_load_run_interrupted(void) {
    return kw_load_stop_flag != 0;
}

void kw_load_run_clear_interrupt(void) {
    kw_load_stop_flag = 0;
}

enum kw_load_phase { KW_LOAD_PHASE_WARMUP, KW_LOAD_PHASE_MEASURED, KW_LOAD_PHASE_FORCED };

static const char *const kw_load_phase_names[] = {"warm-up", "measured", "teacher-forced"};

typedef struct kw_load_runner {
    const kw_load_config *c;
    kw_load_dataset ds;
    enum kw_load_answer_kind akind;
    kw_load_refset ref;
    int have_ref;
    kw_load_http *http;
    const char *path;       /* the endpoint's path */
    FILE *records, *forced; /* owned */
    size_t *order;          /* owned: evaluated item indices in sending order */
    size_t n_order;
    uint64_t t0_ns; /* the current phase's start */
    int rc;         /* first fatal error (a write failure) */
    int aborting;   /* the run failed: answers still arriving are dropped */
    int token_ids;  /* the server writes logprobs tokens as "token_id:<id>" (return_tokens_as_token_ids) */
    int probing;    /* building the capability probe's request */
    /* Per phase: */
    enum kw_load_phase phase;
    size_t done, failed;
    kw_load_map errors; /* warm-up error kinds are only counted */
    /* Progress */
    FILE *console;
    int bar; /* 1: redraw one line; 0: plain lines; -1: none */
    uint64_t last_progress_ns;
    size_t total; /* requests of this phase, SIZE_MAX when bounded by duration */
    double duration_s;
} kw_load_runner;

typedef struct kw_load_req {
    kw_load_runner *r;
    enum kw_load_phase phase;
    size_t seq;                  /* index among the phase's requests */
    size_t item;                 /* dataset item */
    const kw_load_ref_item *ref; /* teacher forcing */
    double scheduled_ms;         /* open loop: planned send time from the phase's start; NAN otherwise */
    kw_load_reply reply;
} kw_load_req;

// ---------------------------------------------------------------------------------------------------------------
// Request bodies

static int kw_load_add(cJSON *o, const char *key, cJSON *v) {
    if (!v) return KW_E_NOMEM;
    if (!cJSON_AddItemToObject(o, key, v)) {
        cJSON_Delete(v);
        return KW_E_NOMEM;
    }
    return 0;
}

static cJSON *kw_load_ids_json(const int32_t *ids, size_t n) {
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; a && i < n; ++i) {
        cJSON *v = cJSON_CreateNumber(ids[i]);
        if (!v || !cJSON_AddItemToArray(a, v)) {
            cJSON_Delete(v);
            cJSON_Delete(a);
            return NULL;
        }
    }
    return a;
}

/* The JSON request for one item: the prompt as a user message (chat) or as is (completions), max_tokens, stream,
 * logprobs, and the kvwire object (with force_tokens and score_ids for teacher forcing). *out is malloc'ed. */
static int kw_load_body(kw_load_runner *r, const kw_load_req *q, char **out, size_t *len) {
    const kw_load_config *c = r->c;
    const kw_load_item *it = &r->ds.items[q->item];
    const int chat = c->endpoint == KW_LOAD_API_CHAT;
    const int forced = q->phase == KW_LOAD_PHASE_FORCED;
    int rc = 0;
    cJSON *o = cJSON_CreateObject();
    KW_RETURN_IF(!o, KW_E_NOMEM, "out of memory");
    if (chat) {
        cJSON *msgs = cJSON_CreateArray(), *m = cJSON_CreateObject();
        if (msgs && m && cJSON_AddItemToArray(msgs, m)) {
            m = NULL;
            cJSON *last = cJSON_GetArrayItem(msgs, 0);
            if (!cJSON_AddStringToObject(last, "role", "user") || !cJSON_AddStringToObject(last, "content", it->prompt))
                rc = KW_E_NOMEM;
        } else {
            rc = KW_E_NOMEM;
        }
        cJSON_Delete(m);
        if (rc == 0)
            rc = kw_load_add(o, "messages", msgs);
        else
            cJSON_Delete(msgs);
    } else {
        rc = kw_load_add(o, "prompt", cJSON_CreateString(it->prompt));
    }
    KW_CHECK_IF(rc < 0, KW_E_NOMEM, "out of memory");
    const int64_t max_tokens = forced ? (int64_t)q->ref->tok.n : r->probing ? 1 : c->max_tokens;
    if (max_tokens >= 0)
        KW_CHECK_IF(kw_load_add(o, "max_tokens", cJSON_CreateNumber((double)max_tokens)), KW_E_NOMEM, "out of memory");
    const int stream = forced || r->probing ? 0 : c->stream;
    KW_CHECK_IF(kw_load_add(o, "stream", cJSON_CreateBool(stream)), KW_E_NOMEM, "out of memory");
    /* Log-probabilities: the top-k of a reference recording (with ids, for KL), and top-1 when forced (the client's
     * check of receiverd's count), both only as ids; token agreement uses the response block's completion_ids. */
    int64_t k = -1;
    if (r->probing)
        k = 1;
    else if (forced && r->token_ids)
        k = 1;
    else if (!forced && c->record_logprobs > 0 && r->token_ids) /* without ids the alternatives are of no use */
        k = c->record_logprobs;
    if (k >= 0) {
        if (chat) {
            KW_CHECK_IF(kw_load_add(o, "logprobs", cJSON_CreateTrue()) ||
                            kw_load_add(o, "top_logprobs", cJSON_CreateNumber((double)k)),
                        KW_E_NOMEM, "out of memory");
        } else {
            KW_CHECK_IF(kw_load_add(o, "logprobs", cJSON_CreateNumber((double)k)), KW_E_NOMEM, "out of memory");
        }
        if (r->token_ids || r->probing)
            KW_CHECK_IF(kw_load_add(o, "return_tokens_as_token_ids", cJSON_CreateTrue()), KW_E_NOMEM, "out of memory");
    }
    if (c->kvwire || forced) {
        cJSON *kv = c->kvwire ? cJSON_Duplicate(c->kvwire, 1) : cJSON_CreateObject();
        KW_CHECK_IF(!kv, KW_E_NOMEM, "out of memory");
        KW_CHECK_IF(kw_load_add(o, "kvwire", kv), KW_E_NOMEM, "out of memory");
        if (forced) {
            const kw_load_tokens *t = &q->ref->tok;
            KW_CHECK_IF(kw_load_add(kv, "force_tokens", kw_load_ids_json(t->ids, t->n)), KW_E_NOMEM, "out of memory");
            if (q->ref->has_top) {
                cJSON *score = cJSON_CreateArray();
                KW_CHECK_IF(kw_load_add(kv, "score_ids", score), KW_E_NOMEM, "out of memory");
                for (size_t i = 0; i < t->n; ++i) {
                    size_t n = t->top_off[i + 1] - t->top_off[i];
                    if (n > 20) n = 20;
                    cJSON *ids = kw_load_ids_json(t->top_ids + t->top_off[i], n);
                    KW_CHECK_IF(!ids || !cJSON_AddItemToArray(score, ids), KW_E_NOMEM, "out of memory");
                }
            }
        }
    }
    char *text = cJSON_PrintUnformatted(o);
    KW_CHECK_IF(!text, KW_E_NOMEM, "out of memory");
    *out = text;
    *len = strlen(text);
out:
    cJSON_Delete(o);
    return rc;
}

// ---------------------------------------------------------------------------------------------------------------
// Outcomes

/* The error kind of a finished exchange, or NULL for a success; *code gets the server's error code when there is
 * one, *message a description. */
static const char *kw_load_error_kind(const kw_load_http_result *res, const kw_load_reply *rep, int stream, char *buf,
                                      size_t cap, const char **code, const char **message) {
    *code = NULL;
    *message = "";
    const cJSON *err = rep->error;
    if (err) {
        const cJSON *cc = cJSON_GetObjectItemCaseSensitive(err, "code");
        const cJSON *mm = cJSON_GetObjectItemCaseSensitive(err, "message");
        if (cJSON_IsString(cc)) *code = cc->valuestring;
        if (cJSON_IsString(mm)) *message = mm->valuestring;
    }
    if (res->too_large) {
        *message = "the response passed the size limit";
        return "response_too_large";
    }
    if (res->transport_error) {
        *message = res->error_text[0] ? res->error_text : res->transport_name;
        if (res->transport_error == CURLE_OPERATION_TIMEDOUT) return "timeout";
        if (res->transport_error == CURLE_COULDNT_CONNECT || res->transport_error == CURLE_COULDNT_RESOLVE_HOST)
            return "connect";
        return "transport";
    }
    if (res->status != 200) {
        if (*code)
            snprintf(buf, cap, "http_%ld:%s", res->status, *code);
        else
            snprintf(buf, cap, "http_%ld", res->status);
        return buf;
    }
    if (err) {
        if (*code)
            snprintf(buf, cap, "stream_error:%s", *code);
        else
            snprintf(buf, cap, "stream_error");
        return buf;
    }
    if (rep->malformed) {
        *message = rep->why;
        return "bad_response";
    }
    if (stream && (!rep->done_seen || !rep->finish_reason[0])) {
        *message = "the event stream ended without a finish_reason and [DONE]";
        return "incomplete_stream";
    }
    if (!rep->finish_reason[0]) {
        *message = "no finish_reason";
        return "bad_response";
    }
    return NULL;
}

static int kw_load_write_line(kw_load_runner *r, FILE *f, cJSON *rec) {
    char *line = cJSON_PrintUnformatted(rec);
    KW_RETURN_IF(!line, KW_E_NOMEM, "out of memory");
    const int bad = fputs(line, f) < 0 || fputc('\n', f) == EOF || fflush(f) != 0;
    free(line);
    KW_RETURN_IF(bad, KW_E_IO, "writing a record in %s failed", r->c->out);
    return 0;
}

static cJSON *kw_load_str_or_null(const char *s) {
    return s ? cJSON_CreateString(s) : cJSON_CreateNull();
}

static cJSON *kw_load_num_or_null(double v) {
    return isfinite(v) ? cJSON_CreateNumber(v) : cJSON_CreateNull();
}

/* output_ids, output_logprobs and (with alternatives) top_logprobs of a reply. */
static int kw_load_add_tokens(cJSON *rec, const kw_load_tokens *t, int with_top) {
    KW_FORWARD(kw_load_add(rec, "output_ids", kw_load_ids_json(t->ids, t->n)));
    cJSON *lps = cJSON_CreateArray();
    KW_FORWARD(kw_load_add(rec, "output_logprobs", lps));
    for (size_t i = 0; i < t->n; ++i)
        if (!cJSON_AddItemToArray(lps, kw_load_num_or_null(t->lps[i]))) return KW_E_NOMEM;
    if (!with_top) return 0;
    cJSON *tops = cJSON_CreateArray();
    KW_FORWARD(kw_load_add(rec, "top_logprobs", tops));
    for (size_t i = 0; i < t->n; ++i) {
        cJSON *pos = cJSON_CreateArray();
        if (!pos || !cJSON_AddItemToArray(tops, pos)) return KW_E_NOMEM;
        for (size_t j = t->top_off[i]; j < t->top_off[i + 1]; ++j) {
            cJSON *pair = cJSON_CreateArray();
            if (!pair || !cJSON_AddItemToArray(pos, pair)) return KW_E_NOMEM;
            if (!cJSON_AddItemToArray(pair, cJSON_CreateNumber(t->top_ids[j])) ||
                !cJSON_AddItemToArray(pair, kw_load_num_or_null(t->top_lps[j])))
                return KW_E_NOMEM;
        }
    }
    return 0;
}

static int kw_load_add_error(cJSON *rec, const char *kind, long status, const char *code, const char *message) {
    cJSON *e = cJSON_CreateObject();
    KW_FORWARD(kw_load_add(rec, "error", e));
    if (!cJSON_AddStringToObject(e, "kind", kind) || !cJSON_AddNumberToObject(e, "status", (double)status) ||
        !cJSON_AddItemToObject(e, "code", kw_load_str_or_null(code)) || !cJSON_AddStringToObject(e, "message", message))
        return KW_E_NOMEM;
    return 0;
}

static int kw_load_record_measured(kw_load_runner *r, kw_load_req *q, const kw_load_http_result *res, const char *kind,
                                   const char *code, const char *message) {
    const kw_load_item *it = &r->ds.items[q->item];
    kw_load_reply *rep = &q->reply;
    const int ok = kind == NULL;
    int rc = 0;
    char *answer = NULL;
    cJSON *rec = cJSON_CreateObject();
    KW_RETURN_IF(!rec, KW_E_NOMEM, "out of memory");
    const char *text = rep->text.data ? rep->text.data : "";
    if (ok) {
        rc = kw_load_answer_extract(r->akind, text, rep->text.len, &answer);
        if (rc == KW_E_UTF8) rc = 0; /* not UTF-8: no answer (the reference could not have decoded it either) */
        KW_CHECK(rc);
    }
    const double start_ms = kw_time_ms(r->t0_ns, res->t_send_ns);
    const double e2el = kw_time_ms(res->t_send_ns, res->t_end_ns);
    double ttft = NAN, tpot = NAN;
    if (ok && r->c->stream && rep->text_events > 0) {
        ttft = kw_time_ms(res->t_send_ns, rep->t_first_ns);
        const int64_t n_out = rep->completion_tokens >= 0 ? rep->completion_tokens : (int64_t)rep->text_events;
        tpot = n_out > 1 ? (e2el - ttft) / (double)(n_out - 1) : 0.0;
    }
    rc = kw_load_add(rec, "index", cJSON_CreateNumber((double)q->seq));
    if (!rc) rc = kw_load_add(rec, "item_id", cJSON_CreateString(it->id));
    if (!rc && it->subject) rc = kw_load_add(rec, "subject", cJSON_CreateString(it->subject));
    if (!rc) rc = kw_load_add(rec, "prompt", cJSON_CreateString(it->prompt));
    if (!rc) rc = kw_load_add(rec, "output", cJSON_CreateString(text));
    if (!rc) rc = kw_load_add(rec, "answer", kw_load_str_or_null(answer));
    if (!rc) rc = kw_load_add(rec, "gold", kw_load_str_or_null(it->gold));
    if (!rc)
        rc = kw_load_add(rec, "correct",
                         ok && it->gold ? cJSON_CreateBool(kw_load_answer_correct(r->akind, answer, it->gold))
                                        : cJSON_CreateNull());
    if (!rc) rc = kw_load_add(rec, "success", cJSON_CreateBool(ok));
    if (!rc && !ok) rc = kw_load_add_error(rec, kind, res->status, code, message);
    if (!rc) rc = kw_load_add(rec, "start_ms", cJSON_CreateNumber(start_ms));
    if (!rc && !isnan(q->scheduled_ms)) {
        rc = kw_load_add(rec, "scheduled_ms", cJSON_CreateNumber(q->scheduled_ms));
        if (!rc) rc = kw_load_add(rec, "send_lag_ms", cJSON_CreateNumber(start_ms - q->scheduled_ms));
    }
    if (!rc) rc = kw_load_add(rec, "e2el_ms", cJSON_CreateNumber(e2el));
    if (!rc) rc = kw_load_add(rec, "ttft_ms", kw_load_num_or_null(ttft));
    if (!rc) rc = kw_load_add(rec, "tpot_ms", kw_load_num_or_null(tpot));
    if (!rc && ok && r->c->stream) {
        cJSON *itl = cJSON_CreateArray();
        rc = kw_load_add(rec, "itl_ms", itl);
        for (size_t i = 0; !rc && i < rep->itl_ms.n; ++i)
            if (!cJSON_AddItemToArray(itl, cJSON_CreateNumber(rep->itl_ms.v[i]))) rc = KW_E_NOMEM;
    }
    if (!rc)
        rc = kw_load_add(rec, "prompt_tokens",
                         rep->prompt_tokens >= 0 ? cJSON_CreateNumber((double)rep->prompt_tokens) : cJSON_CreateNull());
    if (!rc)
        rc = kw_load_add(rec, "output_tokens",
                         rep->completion_tokens >= 0 ? cJSON_CreateNumber((double)rep->completion_tokens)
                                                     : cJSON_CreateNull());
    if (!rc)
        rc = kw_load_add(rec, "finish_reason", kw_load_str_or_null(rep->finish_reason[0] ? rep->finish_reason : NULL));
    /* Token ids: with recorded top-k, those of logprobs (aligned with them); else the block's completion_ids. */
    const cJSON *cids = rep->kvwire ? cJSON_GetObjectItemCaseSensitive(rep->kvwire, "completion_ids") : NULL;
    if (!rc && ok && rep->has_logprobs && rep->ids_ok && (r->c->record_logprobs > 0 || !cJSON_IsArray(cids)))
        rc = kw_load_add_tokens(rec, &rep->tokens, r->c->record_logprobs > 0);
    else if (!rc && ok && cJSON_IsArray(cids))
        rc = kw_load_add(rec, "output_ids", cJSON_Duplicate(cids, 1));
    if (!rc && rep->kvwire) {
        cJSON *kv = rep->kvwire;
        rep->kvwire = NULL;
        rc = kw_load_add(rec, "kvwire", kv);
    }
    KW_CHECK_IF(rc < 0, KW_E_NOMEM, "out of memory building a record");
    rc = kw_load_write_line(r, r->records, rec);
out:
    free(answer);
    cJSON_Delete(rec);
    return rc;
}

static int kw_load_record_forced(kw_load_runner *r, kw_load_req *q, const kw_load_http_result *res, const char *kind,
                                 const char *code, const char *message) {
    const kw_load_ref_item *ref = q->ref;
    kw_load_reply *rep = &q->reply;
    int ok = kind == NULL;
    int rc = 0;
    int64_t positions = -1, agree = -1;
    const cJSON *tf = rep->kvwire ? cJSON_GetObjectItemCaseSensitive(rep->kvwire, "teacher_forcing") : NULL;
    if (ok && (kw_json_get_i64(tf, "positions", 0, INT32_MAX, &positions, "teacher_forcing") < 0 ||
               kw_json_get_i64(tf, "top1_agree", 0, positions, &agree, "teacher_forcing") < 0)) {
        ok = 0;
        kind = "bad_response";
        message = "kvwire.teacher_forcing is missing or malformed";
    }
    /* The client's own top-1 count from the returned alternatives (ties may count either way). */
    int64_t agree_client = -1;
    if (ok && rep->has_logprobs && rep->ids_ok && rep->tokens.n == ref->tok.n) {
        agree_client = 0;
        for (size_t i = 0; i < rep->tokens.n; ++i) {
            const kw_load_tokens *t = &rep->tokens;
            size_t best = SIZE_MAX;
            for (size_t j = t->top_off[i]; j < t->top_off[i + 1]; ++j)
                if (best == SIZE_MAX || t->top_lps[j] > t->top_lps[best]) best = j;
            if (best != SIZE_MAX && t->top_ids[best] == ref->tok.ids[i]) agree_client++;
        }
    }
    /* KL over the reference's top-k and the rest, from scored_logprobs. */
    cJSON *kl = cJSON_CreateArray();
    KW_RETURN_IF(!kl, KW_E_NOMEM, "out of memory");
    double kl_sum = 0.0;
    size_t kl_n = 0;
    const cJSON *scored = rep->kvwire ? cJSON_GetObjectItemCaseSensitive(rep->kvwire, "scored_logprobs") : NULL;
    if (ok && ref->has_top) {
        if (!cJSON_IsArray(scored) || (size_t)cJSON_GetArraySize(scored) != ref->tok.n) {
            ok = 0;
            kind = "bad_response";
            message = "kvwire.scored_logprobs is missing or has the wrong length";
        }
    }
    if (ok && ref->has_top) {
        const cJSON *pos = scored->child;
        double q_lps[20];
        for (size_t i = 0; ok && i < ref->tok.n; ++i, pos = pos->next) {
            const size_t o = ref->tok.top_off[i];
            size_t k = ref->tok.top_off[i + 1] - o;
            if (k > 20) k = 20;
            if (!cJSON_IsArray(pos) || (size_t)cJSON_GetArraySize(pos) != k) {
                ok = 0;
                kind = "bad_response";
                message = "a scored_logprobs entry does not match its score_ids";
                break;
            }
            size_t j = 0;
            for (const cJSON *v = pos->child; v; v = v->next, ++j)
                q_lps[j] = cJSON_IsNumber(v) ? v->valuedouble : NAN;
            const double d = kw_load_kl_topk(ref->tok.top_lps + o, q_lps, k);
            if (!cJSON_AddItemToArray(kl, kw_load_num_or_null(d))) rc = KW_E_NOMEM;
            if (isfinite(d)) {
                kl_sum += d;
                kl_n++;
            }
        }
    }
    cJSON *rec = cJSON_CreateObject();
    if (!rec) rc = KW_E_NOMEM;
    if (!rc) rc = kw_load_add(rec, "item_id", cJSON_CreateString(ref->item_id));
    if (!rc) rc = kw_load_add(rec, "success", cJSON_CreateBool(ok));
    if (!rc && !ok) rc = kw_load_add_error(rec, kind, res->status, code, message);
    if (!rc) rc = kw_load_add(rec, "positions", ok ? cJSON_CreateNumber((double)positions) : cJSON_CreateNull());
    if (!rc) rc = kw_load_add(rec, "top1_agree", ok ? cJSON_CreateNumber((double)agree) : cJSON_CreateNull());
    if (!rc)
        rc = kw_load_add(rec, "top1_agree_client",
                         agree_client >= 0 ? cJSON_CreateNumber((double)agree_client) : cJSON_CreateNull());
    if (!rc) rc = kw_load_add(rec, "kl_positions", cJSON_CreateNumber(ok ? (double)kl_n : 0));
    if (!rc) rc = kw_load_add(rec, "kl_sum", cJSON_CreateNumber(ok ? kl_sum : 0));
    if (!rc) {
        rc = kw_load_add(rec, "kl", kl);
        kl = NULL;
    }
    if (!rc) rc = kw_load_add(rec, "e2el_ms", cJSON_CreateNumber(kw_time_ms(res->t_send_ns, res->t_end_ns)));
    if (!rc && rep->kvwire) {
        cJSON *kv = rep->kvwire;
        rep->kvwire = NULL;
        cJSON_DeleteItemFromObjectCaseSensitive(kv, "scored_logprobs"); /* kept as kl above */
        rc = kw_load_add(rec, "kvwire", kv);
    }
    if (rc < 0) rc = kw_error_set(KW_E_NOMEM, "out of memory building a record");
    if (!rc) rc = kw_load_write_line(r, r->forced, rec);
    cJSON_Delete(kl);
    cJSON_Delete(rec);
    return rc;
}

// ---------------------------------------------------------------------------------------------------------------
// Engine callbacks

static void kw_load_on_event(void *tag, const char *data, size_t len, uint64_t t_ns, void *user) {
    kw_load_req *q = tag;
    (void)user;
    if (kw_load_reply_event(&q->reply, data, len, t_ns) < 0 && q->r->rc == 0) q->r->rc = KW_E_NOMEM;
}

static void kw_load_on_done(const kw_load_http_result *res, void *user) {
    kw_load_runner *r = user;
    kw_load_req *q = res->tag;
    int rc = 0;
    if (r->aborting) {
        kw_load_reply_free(&q->reply);
        free(q);
        return;
    }
    if (!res->event_stream && !res->transport_error && !res->too_large)
        rc = kw_load_reply_body(&q->reply, res->body, res->body_len);
    char buf[160];
    const char *code = NULL, *message = NULL;
    const int stream = q->phase != KW_LOAD_PHASE_FORCED && r->c->stream && res->event_stream;
    const char *kind = kw_load_error_kind(res, &q->reply, stream, buf, sizeof(buf), &code, &message);
    if (!rc && q->phase == KW_LOAD_PHASE_MEASURED) rc = kw_load_record_measured(r, q, res, kind, code, message);
    if (!rc && q->phase == KW_LOAD_PHASE_FORCED) rc = kw_load_record_forced(r, q, res, kind, code, message);
    if (rc < 0 && r->rc == 0) r->rc = rc;
    r->done++;
    if (kind) r->failed++;
    kw_load_reply_free(&q->reply);
    free(q);
}

// ---------------------------------------------------------------------------------------------------------------
// Progress

static void kw_load_progress(kw_load_runner *r, int final) {
    if (r->bar < 0 || !r->console) return;
    const uint64_t now = kw_time_now_ns();
    if (!final && now - r->last_progress_ns < (r->bar ? 100000000ull : 5000000000ull)) return;
    r->last_progress_ns = now;
    const double el = kw_time_seconds(r->t0_ns, now);
    const double rate = el > 0 ? (double)r->done / el : 0.0;
    double frac = 0.0;
    char count[64];
    if (r->total != SIZE_MAX) {
        frac = r->total ? (double)r->done / (double)r->total : 1.0;
        snprintf(count, sizeof(count), "%zu/%zu", r->done, r->total);
    } else {
        frac = r->duration_s > 0 ? el / r->duration_s : 0.0;
        snprintf(count, sizeof(count), "%zu done", r->done);
    }
    if (frac > 1.0) frac = 1.0;
    if (r->bar) {
        char bar[31];
        const int filled = (int)(frac * 30.0);
        for (int i = 0; i < 30; ++i)
            bar[i] = i < filled ? '#' : '.';
        bar[30] = '\0';
        fprintf(r->console, "\r%-14s [%s] %3.0f%% %s  %.1f req/s  errors %zu  %.0fs ", kw_load_phase_names[r->phase],
                bar, 100.0 * frac, count, rate, r->failed, el);
        if (final) fputc('\n', r->console);
    } else {
        fprintf(r->console, "%s: %s (%.0f%%), %.1f req/s, %zu errors, %.0f s\n", kw_load_phase_names[r->phase], count,
                100.0 * frac, rate, r->failed, el);
    }
    fflush(r->console);
}

// ---------------------------------------------------------------------------------------------------------------
// Phases

/* Sends `total` requests of a phase (SIZE_MAX: until duration_s), at most `cap` in flight (0: no cap), at the open
 * loop's times when rate is finite. item_of(seq) picks the item (and reference) of each. */
static int kw_load_phase_run(kw_load_runner *r, enum kw_load_phase phase, size_t total, size_t cap, double rate,
                             double burstiness, double duration_s, uint64_t arrival_seed, const size_t *items,
                             const kw_load_ref_item *const *refs, size_t n_items) {
    r->phase = phase;
    r->done = r->failed = 0;
    r->total = total;
    r->duration_s = duration_s;
    r->last_progress_ns = 0;
    const int open = isfinite(rate);
    double *offsets = NULL;
    kw_load_rng arr;
    kw_load_rng_seed(&arr, arrival_seed);
    double next_due_s = 0.0; /* incremental arrivals (a duration-bounded open loop): the next send time */
    if (open && total != SIZE_MAX && total <= ((size_t)1 << 24)) {
        offsets = malloc((total ? total : 1) * sizeof(*offsets));
        KW_RETURN_IF(!offsets, KW_E_NOMEM, "out of memory for %zu arrival times", total);
        const int rc = kw_load_arrivals_make(total, rate, burstiness, arrival_seed, offsets);
        if (rc < 0) {
            free(offsets);
            return rc;
        }
    }
    if (open && !offsets) next_due_s = kw_load_arrival_gap(&arr, rate, burstiness);
    r->t0_ns = kw_time_now_ns();
    size_t next = 0;
    int rc = 0;
    for (;;) {
        const uint64_t now = kw_time_now_ns();
        const double el = kw_time_seconds(r->t0_ns, now);
        if (kw_load_stop_flag || (duration_s > 0 && el >= duration_s)) total = next; /* stop sending */
        double wait_ms = 100.0;
        while (next < total && (cap == 0 || kw_load_http_in_flight(r->http) < cap)) {
            double due_s = 0.0;
            if (open) {
                due_s = offsets ? offsets[next] : next_due_s;
                if (due_s > el) {
                    wait_ms = fmin(wait_ms, (due_s - el) * 1000.0);
                    break;
                }
            }
            kw_load_req *q = calloc(1, sizeof(*q));
            KW_CHECK_IF(!q, KW_E_NOMEM, "out of memory");
            q->r = r;
            q->phase = phase;
            q->seq = next;
            q->item = items[next % n_items];
            q->ref = refs ? refs[next % n_items] : NULL;
            q->scheduled_ms = open ? due_s * 1000.0 : NAN;
            kw_load_reply_init(&q->reply, (enum kw_load_api)r->c->endpoint);
            char *body = NULL;
            size_t len = 0;
            rc = kw_load_body(r, q, &body, &len);
            if (rc < 0) {
                free(q);
                goto out;
            }
            rc = kw_load_http_post(r->http, r->path, body, len, q);
            if (rc < 0) {
                kw_load_reply_free(&q->reply);
                free(q);
                goto out;
            }
            ++next;
            if (open && !offsets) next_due_s += kw_load_arrival_gap(&arr, rate, burstiness);
        }
        if (next >= total && kw_load_http_in_flight(r->http) == 0) break;
        KW_CHECK(kw_load_http_poll(r->http, wait_ms < 1.0 ? 1 : (int)ceil(wait_ms)));
        KW_CHECK(r->rc);
        kw_load_progress(r, 0);
    }
    kw_load_progress(r, 1);
out:
    free(offsets);
    return rc;
}

// ---------------------------------------------------------------------------------------------------------------
// The run

static cJSON *kw_load_parse_or_text(const char *body, size_t len) {
    cJSON *v = NULL;
    if (kw_json_parse(body, len, &v) == 0) return v;
    return cJSON_CreateString(body);
}

/* GET path once; the answer as {"status": n, "body": ...}. Transport failures are errors. */
static int kw_load_probe(const char *url, const char *path, cJSON **out) {
    long status = 0;
    char *body = NULL;
    size_t len = 0;
    KW_FORWARD(kw_load_http_once(url, path, NULL, 0, 10000, &status, &body, &len));
    cJSON *o = cJSON_CreateObject();
    cJSON *b = kw_load_parse_or_text(body, len);
    free(body);
    if (!o || !b || !cJSON_AddNumberToObject(o, "status", (double)status) || !cJSON_AddItemToObject(o, "body", b)) {
        cJSON_Delete(o);
        cJSON_Delete(b);
        KW_FAIL(KW_E_NOMEM, "out of memory");
    }
    *out = o;
    return 0;
}

/* Whether the server writes logprobs tokens as ids (return_tokens_as_token_ids, docs/HTTP_API.md §8): one uncounted
 * request for the first item, recorded in server.capabilities. A refusal is not an error: the run goes on without
 * ids in logprobs (and says what that costs). */
static int kw_load_probe_token_ids(kw_load_runner *r, cJSON *server, FILE *console) {
    kw_load_req q;
    memset(&q, 0, sizeof(q));
    q.r = r;
    q.phase = KW_LOAD_PHASE_MEASURED;
    q.item = r->order[0];
    q.scheduled_ms = NAN;
    char *body = NULL, *resp = NULL;
    size_t len = 0, rlen = 0;
    r->probing = 1;
    const int brc = kw_load_body(r, &q, &body, &len);
    r->probing = 0;
    KW_FORWARD(brc);
    long status = 0;
    KW_FORWARD(kw_load_http_once(kw_load_config_url(r->c), r->path, body, len, (uint32_t)r->c->timeout_ms, &status,
                                 &resp, &rlen));
    kw_load_reply rep;
    kw_load_reply_init(&rep, (enum kw_load_api)r->c->endpoint);
    int rc = status == 200 ? kw_load_reply_body(&rep, resp, rlen) : 0;
    r->token_ids = status == 200 && rep.has_logprobs && rep.ids_ok && rep.tokens.n > 0;
    kw_load_reply_free(&rep);
    free(resp);
    KW_FORWARD(rc);
    cJSON *caps = cJSON_AddObjectToObject(server, "capabilities");
    KW_RETURN_IF(!caps || !cJSON_AddBoolToObject(caps, "token_ids_in_logprobs", r->token_ids) ||
                     !cJSON_AddNumberToObject(caps, "probe_status", (double)status),
                 KW_E_NOMEM, "out of memory");
    if (console && !r->token_ids && r->c->record_logprobs > 0)
        fprintf(console,
                "kvload: warning: the server does not write token ids in logprobs (return_tokens_as_token_ids; probe "
                "answered %ld): runs judged against this one get no KL divergence\n",
                status);
    return 0;
}

static int kw_load_write_run_json(kw_load_runner *r, const kw_load_run_info *info, cJSON *server, cJSON *phases) {
    const kw_load_config *c = r->c;
    int rc = 0;
    cJSON *run = cJSON_CreateObject(), *ds = NULL, *skips = NULL, *cmd = NULL, *host = NULL;
    KW_RETURN_IF(!run, KW_E_NOMEM, "out of memory");
    char when[32];
    kw_load_utc_now(when, sizeof(when));
    cJSON_AddStringToObject(run, "kvload_version", info && info->version ? info->version : "unknown");
    cJSON_AddStringToObject(run, "written_at", when);
    cmd = cJSON_AddArrayToObject(run, "command");
    for (int i = 0; info && cmd && i < info->argc; ++i)
        cJSON_AddItemToArray(cmd, cJSON_CreateString(info->argv[i]));
    host = cJSON_AddObjectToObject(run, "client");
    struct utsname u;
    char hostname[256] = "";
    gethostname(hostname, sizeof(hostname) - 1);
    if (host && uname(&u) == 0) {
        cJSON_AddStringToObject(host, "hostname", hostname);
        cJSON_AddStringToObject(host, "system", u.sysname);
        cJSON_AddStringToObject(host, "release", u.release);
        cJSON_AddStringToObject(host, "machine", u.machine);
        cJSON_AddNumberToObject(host, "cpus", (double)sysconf(_SC_NPROCESSORS_ONLN));
        cJSON_AddStringToObject(host, "libcurl", curl_version_info(CURLVERSION_NOW)->version);
    }
    cJSON *cfg = kw_load_config_to_json(c, 0);
    KW_CHECK_IF(!cfg, KW_E_NOMEM, "out of memory");
    cJSON_AddItemToObject(run, "config", cfg);
    cJSON *identity = kw_load_config_to_json(c, 1);
    char *identity_text = identity ? cJSON_PrintUnformatted(identity) : NULL;
    cJSON_Delete(identity);
    KW_CHECK_IF(!identity_text, KW_E_NOMEM, "out of memory");
    cJSON_AddStringToObject(run, "config_identity", identity_text);
    free(identity_text);
    ds = cJSON_AddObjectToObject(run, "dataset");
    KW_CHECK_IF(!ds, KW_E_NOMEM, "out of memory");
    cJSON_AddStringToObject(ds, "name", kw_load_dataset_name(r->ds.kind));
    cJSON_AddStringToObject(ds, "path", c->dataset_path);
    cJSON_AddStringToObject(ds, "sha256", r->ds.sha256);
    cJSON_AddNumberToObject(ds, "bytes", (double)r->ds.bytes);
    cJSON_AddNumberToObject(ds, "rows", (double)r->ds.n_items);
    cJSON_AddNumberToObject(ds, "evaluated", (double)r->ds.n_eval);
    cJSON_AddNumberToObject(ds, "skipped", (double)(r->ds.n_items - r->ds.n_eval));
    skips = cJSON_AddObjectToObject(ds, "skipped_by_reason");
    for (size_t i = 0; skips && i < r->ds.n_items; ++i) {
        const char *why = r->ds.items[i].skip;
        if (!why) continue;
        cJSON *n = cJSON_GetObjectItemCaseSensitive(skips, why);
        if (n)
            cJSON_SetNumberValue(n, n->valuedouble + 1);
        else
            cJSON_AddNumberToObject(skips, why, 1);
    }
    cJSON *seeds = cJSON_AddObjectToObject(run, "seeds");
    if (seeds) {
        const uint64_t s = (uint64_t)c->seed;
        cJSON_AddNumberToObject(seeds, "seed", (double)c->seed);
        char hex[24];
        snprintf(hex, sizeof(hex), "%016llx", (unsigned long long)kw_load_rng_derive(s, "order"));
        cJSON_AddStringToObject(seeds, "order", hex);
        snprintf(hex, sizeof(hex), "%016llx", (unsigned long long)kw_load_rng_derive(s, "arrivals"));
        cJSON_AddStringToObject(seeds, "arrivals", hex);
        snprintf(hex, sizeof(hex), "%016llx", (unsigned long long)kw_load_rng_derive(s, "bootstrap"));
        cJSON_AddStringToObject(seeds, "bootstrap", hex);
    }
    if (c->reference) {
        cJSON *ref = cJSON_AddObjectToObject(run, "reference");
        char abs[PATH_MAX];
        if (ref) {
            cJSON_AddStringToObject(ref, "dir", c->reference);
            if (realpath(c->reference, abs)) cJSON_AddStringToObject(ref, "dir_abs", abs);
        }
    }
    if (server) cJSON_AddItemReferenceToObject(run, "server", server);
    if (phases) cJSON_AddItemReferenceToObject(run, "phases", phases);
    char *path = kw_path_join(c->out, "run.json");
    KW_CHECK_IF(!path, KW_E_NOMEM, "out of memory");
    rc = kw_load_json_write(path, run);
    free(path);
out:
    cJSON_Delete(run);
    return rc;
}

static FILE *kw_load_open(const char *dir, const char *name) {
    char *path = kw_path_join(dir, name);
    FILE *f = path ? fopen(path, "w") : NULL;
    if (!f) kw_error_set(KW_E_IO, "cannot write %s/%s", dir, name);
    free(path);
    return f;
}

static cJSON *kw_load_phase_json(kw_load_runner *r, size_t sent) {
    cJSON *p = cJSON_CreateObject();
    if (!p) return NULL;
    cJSON_AddNumberToObject(p, "sent", (double)sent);
    cJSON_AddNumberToObject(p, "answered", (double)r->done);
    cJSON_AddNumberToObject(p, "failed", (double)r->failed);
    return p;
}

int kw_load_run(const kw_load_config *c, const kw_load_run_info *info, FILE *console) {
    kw_load_runner r;
    memset(&r, 0, sizeof(r));
    r.c = c;
    r.console = console;
    r.bar = -1;
    if (console && c->progress != 2) r.bar = (c->progress == 1 || isatty(fileno(console))) ? 1 : 0;
    cJSON *server = NULL, *phases = NULL, *health = NULL, *models = NULL;
    const kw_load_ref_item **refs = NULL;
    size_t *forced_items = NULL;
    int rc = 0, complete = 0;

    KW_CHECK(kw_load_config_validate(c));
    KW_CHECK_IF(!c->out || !*c->out, KW_E_INVALID_ARG, "no output folder (out) given");
    enum kw_load_dataset_kind kind;
    KW_CHECK(kw_load_dataset_parse_name(c->dataset_name ? c->dataset_name : "prompts", &kind));
    kw_load_dataset_options dopt;
    kw_load_dataset_options_default(&dopt);
    dopt.use_cot = c->use_cot;
    dopt.use_template = c->use_template;
    dopt.limit = (size_t)c->limit;
    KW_CHECK(kw_load_dataset_read(c->dataset_path, kind, &dopt, &r.ds));
    KW_CHECK_IF(r.ds.n_eval == 0, KW_E_INVALID_ARG, "%s: no item left to evaluate (%zu rows, all skipped)",
                c->dataset_path, r.ds.n_items);
    r.akind = kw_load_dataset_answer_kind(kind);
    r.path = c->endpoint == KW_LOAD_API_CHAT ? "/v1/chat/completions" : "/v1/completions";
    if (c->reference) {
        KW_CHECK(kw_load_refset_read(c->reference, &r.ref));
        r.have_ref = 1;
        KW_CHECK_IF(r.ref.dataset_sha256 && strcmp(r.ref.dataset_sha256, r.ds.sha256) != 0, KW_E_INVALID_ARG,
                    "the reference run %s used another dataset file (sha256 %.12s..., this one %.12s...)", c->reference,
                    r.ref.dataset_sha256, r.ds.sha256);
    }

    /* Item order: the file's (the reference harness's), or a seeded shuffle. */
    r.order = malloc(r.ds.n_eval * sizeof(*r.order));
    KW_CHECK_IF(!r.order, KW_E_NOMEM, "out of memory");
    for (size_t i = 0; i < r.ds.n_items; ++i)
        if (!r.ds.items[i].skip) r.order[r.n_order++] = i;
    if (c->shuffle) {
        kw_load_rng rng;
        kw_load_rng_seed(&rng, kw_load_rng_derive((uint64_t)c->seed, "order"));
        kw_load_rng_shuffle(&rng, r.order, r.n_order);
    }

    /* The server, before anything is sent. */
    rc = kw_load_probe(kw_load_config_url(c), "/health", &health);
    KW_CHECK_IF(rc < 0, KW_E_IO, "cannot reach receiverd at %s: %s", kw_load_config_url(c), kw_error_detail());
    KW_CHECK(kw_load_probe(kw_load_config_url(c), "/v1/models", &models));
    server = cJSON_CreateObject();
    KW_CHECK_IF(!server, KW_E_NOMEM, "out of memory");
    cJSON_AddItemToObject(server, "health", health);
    health = NULL;
    cJSON_AddItemToObject(server, "models", models);
    models = NULL;
    const cJSON *hs = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(server, "health"), "status");
    if (console && cJSON_IsNumber(hs) && hs->valuedouble != 200)
        fprintf(console, "kvload: warning: %s/health answered %.0f (the server is degraded)\n", kw_load_config_url(c),
                hs->valuedouble);

    if (c->record_logprobs > 0 || (r.have_ref && c->teacher_forcing))
        KW_CHECK(kw_load_probe_token_ids(&r, server, console));
    KW_CHECK(kw_load_mkdirs(c->out));
    phases = cJSON_CreateObject();
    KW_CHECK_IF(!phases, KW_E_NOMEM, "out of memory");
    KW_CHECK(kw_load_write_run_json(&r, info, server, phases));
    r.records = kw_load_open(c->out, "records.jsonl");
    KW_CHECK_IF(!r.records, KW_E_IO, "%s", kw_error_detail());
    {
        char *old = kw_path_join(c->out, "summary.json");
        if (old) unlink(old);
        free(old);
        old = kw_path_join(c->out, "forced.jsonl");
        if (old) unlink(old);
        free(old);
    }

    kw_load_http_options hopt = {.base_url = kw_load_config_url(c),
                                 .timeout_ms = (uint32_t)c->timeout_ms,
                                 .max_connections = (size_t)(c->max_concurrency > 0 ? c->max_concurrency : 256) + 4};
    KW_CHECK(kw_load_http_create(&hopt, kw_load_on_event, kw_load_on_done, &r, &r.http));

    const uint64_t arrivals = kw_load_rng_derive((uint64_t)c->seed, "arrivals");
    if (c->num_warmups > 0) {
        const size_t cap = (size_t)(c->max_concurrency > 0 ? c->max_concurrency : 1);
        KW_CHECK(kw_load_phase_run(&r, KW_LOAD_PHASE_WARMUP, (size_t)c->num_warmups, cap, INFINITY, 1.0, 0.0, 0,
                                   r.order, NULL, r.n_order));
        cJSON_AddItemToObject(phases, "warmup", kw_load_phase_json(&r, (size_t)c->num_warmups));
    }
    if (!kw_load_stop_flag) {
        size_t total = r.n_order;
        if (c->num_prompts > 0)
            total = (size_t)c->num_prompts;
        else if (c->duration_s > 0)
            total = SIZE_MAX;
        KW_CHECK(kw_load_phase_run(&r, KW_LOAD_PHASE_MEASURED, total, (size_t)c->max_concurrency, c->request_rate,
                                   c->burstiness, c->duration_s, arrivals, r.order, NULL, r.n_order));
        cJSON_AddItemToObject(phases, "measured", kw_load_phase_json(&r, r.done));
        complete = !kw_load_stop_flag;
    }
    fclose(r.records);
    r.records = NULL;

    /* Teacher forcing: every evaluated item the reference answered with token ids. */
    if (complete && r.have_ref && c->teacher_forcing) {
        forced_items = malloc(r.n_order * sizeof(*forced_items));
        refs = malloc(r.n_order * sizeof(*refs));
        KW_CHECK_IF(!forced_items || !refs, KW_E_NOMEM, "out of memory");
        size_t n = 0;
        for (size_t i = 0; i < r.n_order; ++i) {
            const kw_load_ref_item *ref = kw_load_refset_find(&r.ref, r.ds.items[r.order[i]].id);
            if (!ref || !ref->has_ids || ref->tok.n == 0) continue;
            forced_items[n] = r.order[i];
            refs[n++] = ref;
        }
        r.forced = kw_load_open(c->out, "forced.jsonl");
        KW_CHECK_IF(!r.forced, KW_E_IO, "%s", kw_error_detail());
        if (n > 0) {
            const size_t cap = (size_t)(c->max_concurrency > 0 ? c->max_concurrency : 1);
            KW_CHECK(kw_load_phase_run(&r, KW_LOAD_PHASE_FORCED, n, cap, INFINITY, 1.0, 0.0, 0, forced_items, refs, n));
        }
        cJSON_AddItemToObject(phases, "teacher_forced", kw_load_phase_json(&r, n));
        complete = !kw_load_stop_flag;
        fclose(r.forced);
        r.forced = NULL;
    }
    KW_CHECK(kw_load_write_run_json(&r, info, server, phases));
    KW_CHECK(kw_load_summary_write(c->out, complete, console));
    if (!complete) rc = kw_error_set(KW_E_CANCELLED, "interrupted: the run in %s is incomplete", c->out);
out:
    r.aborting = 1;
    kw_load_http_destroy(r.http); /* exchanges still in flight come back through on_done, dropped */
    if (r.records) fclose(r.records);
    if (r.forced) fclose(r.forced);
    kw_load_dataset_free(&r.ds);
    kw_load_refset_free(&r.ref);
    kw_load_map_free(&r.errors);
    free(r.order);
    free(forced_items);
    free(refs);
    cJSON_Delete(health);
    cJSON_Delete(models);
    cJSON_Delete(server);
    cJSON_Delete(phases);
    return rc;
}
