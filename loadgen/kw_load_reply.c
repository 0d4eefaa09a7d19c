/* kw_load_reply.c: OpenAI-shaped responses (completions and chat, whole or streamed) into kw_load_reply. */
#include "loadgen/kw_load_reply.h"

#include "common/kw_json.h"
#include "common/kw_status.h"
#include "common/kw_time.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void kw_load_tokens_free(kw_load_tokens *t) {
    if (!t) return;
    free(t->ids);
    free(t->lps);
    free(t->top_off);
    free(t->top_ids);
    free(t->top_lps);
    memset(t, 0, sizeof(*t));
}

int kw_load_token_id_parse(const char *s, int32_t *id) {
    if (!s || strncmp(s, "token_id:", 9) != 0) return -1;
    const char *p = s + 9;
    if (*p < '0' || *p > '9') return -1;
    int64_t v = 0;
    for (; *p; ++p) {
        if (*p < '0' || *p > '9') return -1;
        v = v * 10 + (*p - '0');
        if (v > INT32_MAX) return -1;
    }
    *id = (int32_t)v;
    return 0;
}

static int kw_load_tokens_push(kw_load_tokens *t, int32_t id, double lp) {
    if (t->n + 1 >= t->cap) {
        const size_t cap = t->cap ? t->cap * 2 : 64;
        int32_t *ids = realloc(t->ids, cap * sizeof(*ids));
        if (ids) t->ids = ids;
        double *lps = realloc(t->lps, cap * sizeof(*lps));
        if (lps) t->lps = lps;
        size_t *off = realloc(t->top_off, (cap + 1) * sizeof(*off));
        if (off) t->top_off = off;
        KW_RETURN_IF(!ids || !lps || !off, KW_E_NOMEM, "out of memory for %zu tokens", cap);
        if (t->cap == 0) t->top_off[0] = 0;
        t->cap = cap;
    }
    t->ids[t->n] = id;
    t->lps[t->n] = lp;
    t->n++;
    t->top_off[t->n] = t->n_top;
    return 0;
}

/* Adds an alternative to the last pushed position. */
static int kw_load_tokens_push_top(kw_load_tokens *t, int32_t id, double lp) {
    if (t->n_top == t->top_cap) {
        const size_t cap = t->top_cap ? t->top_cap * 2 : 256;
        int32_t *ids = realloc(t->top_ids, cap * sizeof(*ids));
        if (ids) t->top_ids = ids;
        double *lps = realloc(t->top_lps, cap * sizeof(*lps));
        if (lps) t->top_lps = lps;
        KW_RETURN_IF(!ids || !lps, KW_E_NOMEM, "out of memory for %zu alternatives", cap);
        t->top_cap = cap;
    }
    t->top_ids[t->n_top] = id;
    t->top_lps[t->n_top] = lp;
    t->n_top++;
    t->top_off[t->n] = t->n_top;
    return 0;
}

void kw_load_reply_init(kw_load_reply *r, enum kw_load_api api) {
    memset(r, 0, sizeof(*r));
    r->api = api;
    r->prompt_tokens = -1;
    r->completion_tokens = -1;
    r->ids_ok = 1;
}

void kw_load_reply_free(kw_load_reply *r) {
    if (!r) return;
    kw_buf_free(&r->text);
    cJSON_Delete(r->kvwire);
    cJSON_Delete(r->error);
    kw_load_tokens_free(&r->tokens);
    kw_load_samples_free(&r->itl_ms);
    memset(r, 0, sizeof(*r));
}

static void kw_load_malformed(kw_load_reply *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void kw_load_malformed(kw_load_reply *r, const char *fmt, ...) {
    if (r->malformed) return; /* keep the first reason */
    r->malformed = 1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->why, sizeof(r->why), fmt, ap);
    va_end(ap);
}

static double kw_load_lp(const cJSON *v) {
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

/* A token string to an id; a token that is not "token_id:N" clears ids_ok and gives -1. */
static int32_t kw_load_tok_id(kw_load_reply *r, const cJSON *tok) {
    int32_t id = -1;
    if (!cJSON_IsString(tok) || kw_load_token_id_parse(tok->valuestring, &id) < 0) {
        r->ids_ok = 0;
        return -1;
    }
    return id;
}

/* Completions logprobs: {"tokens": [...], "token_logprobs": [...], "top_logprobs": [{tok: lp} | null, ...]}. */
static int kw_load_logprobs_completions(kw_load_reply *r, const cJSON *lp) {
    const cJSON *tokens = cJSON_GetObjectItemCaseSensitive(lp, "tokens");
    const cJSON *lps = cJSON_GetObjectItemCaseSensitive(lp, "token_logprobs");
    const cJSON *tops = cJSON_GetObjectItemCaseSensitive(lp, "top_logprobs");
    if (!cJSON_IsArray(tokens)) {
        kw_load_malformed(r, "logprobs.tokens is not an array");
        return 0;
    }
    const int n = cJSON_GetArraySize(tokens);
    if ((lps && !cJSON_IsNull(lps) && (!cJSON_IsArray(lps) || cJSON_GetArraySize(lps) != n)) ||
        (tops && !cJSON_IsNull(tops) && (!cJSON_IsArray(tops) || cJSON_GetArraySize(tops) != n))) {
        kw_load_malformed(r, "logprobs arrays of different lengths");
        return 0;
    }
    r->has_logprobs = 1;
    const cJSON *tok = tokens->child;
    const cJSON *l = cJSON_IsArray(lps) ? lps->child : NULL;
    const cJSON *top = cJSON_IsArray(tops) ? tops->child : NULL;
    for (; tok; tok = tok->next) {
        KW_FORWARD(kw_load_tokens_push(&r->tokens, kw_load_tok_id(r, tok), kw_load_lp(l)));
        if (top && cJSON_IsObject(top)) {
            for (const cJSON *alt = top->child; alt; alt = alt->next) {
                int32_t id = -1;
                if (kw_load_token_id_parse(alt->string, &id) < 0) r->ids_ok = 0;
                KW_FORWARD(kw_load_tokens_push_top(&r->tokens, id, kw_load_lp(alt)));
            }
        } else if (top && !cJSON_IsNull(top)) {
            kw_load_malformed(r, "a top_logprobs entry is not an object");
        }
        if (l) l = l->next;
        if (top) top = top->next;
    }
    return 0;
}

/* Chat logprobs: {"content": [{"token": ..., "logprob": ..., "top_logprobs": [{"token": ..., "logprob": ...}]}]}. */
static int kw_load_logprobs_chat(kw_load_reply *r, const cJSON *lp) {
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(lp, "content");
    if (cJSON_IsNull(content) || !content) return 0;
    if (!cJSON_IsArray(content)) {
        kw_load_malformed(r, "logprobs.content is not an array");
        return 0;
    }
    r->has_logprobs = 1;
    for (const cJSON *e = content->child; e; e = e->next) {
        if (!cJSON_IsObject(e)) {
            kw_load_malformed(r, "a logprobs.content entry is not an object");
            return 0;
        }
        KW_FORWARD(kw_load_tokens_push(&r->tokens, kw_load_tok_id(r, cJSON_GetObjectItemCaseSensitive(e, "token")),
                                       kw_load_lp(cJSON_GetObjectItemCaseSensitive(e, "logprob"))));
        const cJSON *tops = cJSON_GetObjectItemCaseSensitive(e, "top_logprobs");
        if (!cJSON_IsArray(tops)) continue;
        for (const cJSON *alt = tops->child; alt; alt = alt->next) {
            KW_FORWARD(kw_load_tokens_push_top(&r->tokens,
                                               kw_load_tok_id(r, cJSON_GetObjectItemCaseSensitive(alt, "token")),
                                               kw_load_lp(cJSON_GetObjectItemCaseSensitive(alt, "logprob"))));
        }
    }
    return 0;
}

/* choices[0], usage and kvwire of one response object (whole, or one stream chunk). *text_len gets the length of
 * the text this object added. */
static int kw_load_reply_object(kw_load_reply *r, cJSON *obj, int streamed, size_t *text_len) {
    *text_len = 0;
    if (!cJSON_IsObject(obj)) {
        kw_load_malformed(r, "the response is not a JSON object");
        return 0;
    }
    cJSON *err = cJSON_GetObjectItemCaseSensitive(obj, "error");
    if (err) {
        cJSON_Delete(r->error);
        r->error = cJSON_DetachItemViaPointer(obj, err);
        if (!cJSON_IsObject(r->error)) kw_load_malformed(r, "\"error\" is not an object");
        return 0;
    }
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(obj, "choices");
    const cJSON *c0 = cJSON_IsArray(choices) ? choices->child : NULL;
    if (!cJSON_IsObject(c0)) {
        kw_load_malformed(r, "no choices[0] object");
        return 0;
    }
    const cJSON *text = NULL;
    if (r->api == KW_LOAD_API_CHAT) {
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(c0, streamed ? "delta" : "message");
        if (m && !cJSON_IsObject(m))
            kw_load_malformed(r, "choices[0].%s is not an object", streamed ? "delta" : "message");
        text = cJSON_IsObject(m) ? cJSON_GetObjectItemCaseSensitive(m, "content") : NULL;
        if (!m && !streamed) kw_load_malformed(r, "choices[0].message is missing");
    } else {
        text = cJSON_GetObjectItemCaseSensitive(c0, "text");
        if (!text) kw_load_malformed(r, "choices[0].text is missing");
    }
    if (text && !cJSON_IsNull(text)) {
        if (!cJSON_IsString(text)) {
            kw_load_malformed(r, "the choice's text is not a string");
        } else {
            const size_t n = strlen(text->valuestring);
            KW_FORWARD(kw_buf_append(&r->text, text->valuestring, n));
            *text_len = n;
        }
    }
    const cJSON *fr = cJSON_GetObjectItemCaseSensitive(c0, "finish_reason");
    if (cJSON_IsString(fr))
        snprintf(r->finish_reason, sizeof(r->finish_reason), "%s", fr->valuestring);
    else if (fr && !cJSON_IsNull(fr))
        kw_load_malformed(r, "finish_reason is not a string");
    const cJSON *lp = cJSON_GetObjectItemCaseSensitive(c0, "logprobs");
    if (cJSON_IsObject(lp)) {
        KW_FORWARD(r->api == KW_LOAD_API_CHAT ? kw_load_logprobs_chat(r, lp) : kw_load_logprobs_completions(r, lp));
    } else if (lp && !cJSON_IsNull(lp)) {
        kw_load_malformed(r, "logprobs is not an object");
    }
    const cJSON *usage = cJSON_GetObjectItemCaseSensitive(obj, "usage");
    if (cJSON_IsObject(usage)) {
        int64_t v;
        if (kw_json_to_i64(cJSON_GetObjectItemCaseSensitive(usage, "prompt_tokens"), 0, INT64_MAX, &v) == 0)
            r->prompt_tokens = v;
        if (kw_json_to_i64(cJSON_GetObjectItemCaseSensitive(usage, "completion_tokens"), 0, INT64_MAX, &v) == 0)
            r->completion_tokens = v;
    }
    cJSON *kv = cJSON_GetObjectItemCaseSensitive(obj, "kvwire");
    if (kv) {
        if (!cJSON_IsObject(kv)) {
            kw_load_malformed(r, "\"kvwire\" is not an object");
        } else {
            cJSON_Delete(r->kvwire);
            r->kvwire = cJSON_DetachItemViaPointer(obj, kv);
        }
    }
    return 0;
}

int kw_load_reply_body(kw_load_reply *r, const char *body, size_t len) {
    cJSON *obj = NULL;
    if (kw_json_parse(body, len, &obj) < 0) {
        kw_load_malformed(r, "the body is not JSON (%s)", kw_error_detail());
        return 0;
    }
    size_t n = 0;
    const int rc = kw_load_reply_object(r, obj, 0, &n);
    cJSON_Delete(obj);
    return rc;
}

int kw_load_reply_event(kw_load_reply *r, const char *data, size_t len, uint64_t t_ns) {
    if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        r->done_seen = 1;
        return 0;
    }
    if (r->done_seen) {
        kw_load_malformed(r, "an event after [DONE]");
        return 0;
    }
    cJSON *obj = NULL;
    if (kw_json_parse(data, len, &obj) < 0) {
        kw_load_malformed(r, "an event is not JSON (%s)", kw_error_detail());
        return 0;
    }
    size_t n = 0;
    const int rc = kw_load_reply_object(r, obj, 1, &n);
    cJSON_Delete(obj);
    if (rc < 0 || n == 0) return rc;
    if (r->text_events > 0)
        KW_FORWARD(kw_load_samples_push(&r->itl_ms, kw_time_ms(r->t_last_ns, t_ns)));
    else
        r->t_first_ns = t_ns;
    r->t_last_ns = t_ns;
    r->text_events++;
    return 0;
}
