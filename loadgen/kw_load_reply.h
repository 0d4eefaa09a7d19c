/* kw_load_reply.h: receiverd's responses (docs/HTTP_API.md §2-§6) read into one shape, whether they came as one JSON
 * body or as server-sent events, from /v1/completions or /v1/chat/completions: the text, finish reason, usage, the
 * `kvwire` block, an error object, the token ids and top-k log-probabilities of `logprobs` (with
 * `return_tokens_as_token_ids`, tokens are "token_id:<id>"), and for streams the client-side arrival times of the
 * events that carried text.
 *
 * Peer input: every field is type-checked; a response that is not the API's shape is marked malformed with a reason
 * (it never aborts). Not here: HTTP (kw_load_http.h), records (kw_load_run.c).
 */
#ifndef KW_LOAD_REPLY_H
#define KW_LOAD_REPLY_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "common/kw_buf.h"
#include "loadgen/kw_load_stats.h"

enum kw_load_api {
    KW_LOAD_API_CHAT = 0,        /* /v1/chat/completions */
    KW_LOAD_API_COMPLETIONS = 1, /* /v1/completions */
};

/* Token ids with their log-probabilities and top-k alternatives, position by position. */
typedef struct kw_load_tokens {
    int32_t *ids; /* owned, n: the returned tokens' ids */
    double *lps;  /* owned, n: their log-probabilities (NAN when null) */
    size_t n, cap;
    size_t *top_off;  /* owned, n + 1: position i's alternatives are top_*[top_off[i] .. top_off[i + 1]) */
    int32_t *top_ids; /* owned */
    double *top_lps;  /* owned */
    size_t n_top, top_cap;
} kw_load_tokens;

void kw_load_tokens_free(kw_load_tokens *t);

/* Parses "token_id:<decimal>" (vLLM's return_tokens_as_token_ids form). @return 0 or -1. */
int kw_load_token_id_parse(const char *s, int32_t *id);

typedef struct kw_load_reply {
    enum kw_load_api api;
    kw_buf text;               /* the generated text (streams: concatenated) */
    char finish_reason[16];    /* "" when none was given */
    int64_t prompt_tokens;     /* usage, -1 when absent */
    int64_t completion_tokens; /* usage, -1 when absent */
    cJSON *kvwire;             /* owned: the response's kvwire block, or NULL */
    cJSON *error;              /* owned: the error object of an error body or event, or NULL */
    int malformed;             /* the response is not the API's shape */
    char why[200];             /* what was wrong (malformed) */
    int has_logprobs;          /* logprobs were present */
    int ids_ok;                /* every returned token (and alternative) was "token_id:<id>" */
    kw_load_tokens tokens;
    /* Streams: */
    int done_seen;          /* "data: [DONE]" arrived */
    size_t text_events;     /* events whose text was not empty */
    uint64_t t_first_ns;    /* arrival of the first of them (0: none) */
    uint64_t t_last_ns;     /* arrival of the last of them */
    kw_load_samples itl_ms; /* gaps between consecutive text events, ms */
} kw_load_reply;

void kw_load_reply_init(kw_load_reply *r, enum kw_load_api api);

/* Reads one complete (non-streaming) response body. A body that is not JSON, or a JSON object of the wrong shape,
 * marks the reply malformed; an {"error": {...}} body fills r->error. @return 0 or KW_E_NOMEM (malformed input is
 * not an error of this call). */
int kw_load_reply_body(kw_load_reply *r, const char *body, size_t len);

/* Reads one server-sent event's data (t_ns: its arrival). "[DONE]" ends the stream; an event with "error" fills
 * r->error; otherwise the chunk's text is appended and finish_reason, usage and kvwire taken when present.
 * @return 0 or KW_E_NOMEM. */
int kw_load_reply_event(kw_load_reply *r, const char *data, size_t len, uint64_t t_ns);

/* Frees everything; the reply is left zeroed. NULL is a no-op. */
void kw_load_reply_free(kw_load_reply *r);

#endif /* KW_LOAD_REPLY_H */
