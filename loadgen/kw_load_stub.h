/* kw_load_stub.h: a stand-in for receiverd that speaks its HTTP API (docs/HTTP_API.md) with FAKE outputs: a
 * deterministic toy "model" over a 64-token vocabulary, fake byte counts and stage timings computed from the request,
 * and real delays (optional) between streamed tokens. It exists to test kvload and to measure kvload's own ceiling
 * (`kvwire bench loadgen`) with no model in the way; nothing it returns says anything about a real transfer.
 *
 * What it honours like receiverd: both generation endpoints, streaming (SSE, [DONE]), logprobs in both formats with
 * return_tokens_as_token_ids, echo refused on chat, temperature other than 0 refused, unknown fields refused (400),
 * the kvwire object's field names, force_tokens (max_tokens must match) with teacher_forcing and scored_logprobs,
 * /health, /v1/models, /metrics; errors in the OpenAI shape. The toy model: a prompt hash picks an answer ("The
 * correct answer is B" for multiple-choice prompts, "Answer: 417" for math prompts), each token's logits are hash
 * noise plus a margin for the intended token, and a policy adds noise scaled by its codec and proportion (bf16 none,
 * int8 some, int4 more, receiver_only most), so lossy policies flip tokens and answers, deterministically.
 * Failure injection: every fail_every-th generation request gets fail_status.
 *
 * Runs on the libuv loop it is started on.
 */
#ifndef KW_LOAD_STUB_H
#define KW_LOAD_STUB_H

#include <stdint.h>

#include <uv.h>

typedef struct kw_load_stub kw_load_stub;

typedef struct kw_load_stub_config {
    const char *host;       /* "127.0.0.1" */
    uint16_t port;          /* 0: ephemeral */
    double prefill_ms;      /* wait before the first token (real time) */
    double token_ms;        /* wait between tokens (real time) */
    uint32_t fail_every;    /* 0: never */
    int fail_status;        /* 429, 502, 503, 504 or 500 */
    const char *model_name; /* "stub-receiver" */
    int refuse_token_ids;   /* answer return_tokens_as_token_ids with 400, as a server without it would */
} kw_load_stub_config;

void kw_load_stub_config_default(kw_load_stub_config *cfg);

/* Starts serving on loop. @return 0, KW_E_NET_ADDRESS (port in use), KW_E_NOMEM. */
int kw_load_stub_start(uv_loop_t *loop, const kw_load_stub_config *cfg, kw_load_stub **out);

uint16_t kw_load_stub_port(const kw_load_stub *s);

/* Generation requests answered so far. */
uint64_t kw_load_stub_requests(const kw_load_stub *s);

/* Graceful shutdown (requests in flight finish); done runs once on the loop when everything is closed, after which
 * kw_load_stub_free may be called. */
void kw_load_stub_shutdown(kw_load_stub *s, void (*done)(void *user), void *user);

/* Frees a stub whose shutdown is done; NULL is a no-op. */
void kw_load_stub_free(kw_load_stub *s);

/* A stub on a thread of its own (its own libuv loop), for in-process tests and benchmarks. */
typedef struct kw_load_stub_thread kw_load_stub_thread;

/* Starts it; the port is bound when this returns. Owned by the caller: kw_load_stub_thread_stop.
 * @return 0, or as kw_load_stub_start, or KW_E_INTERNAL (no thread). */
int kw_load_stub_spawn(const kw_load_stub_config *cfg, kw_load_stub_thread **out);

uint16_t kw_load_stub_thread_port(const kw_load_stub_thread *t);

/* Shuts the stub down gracefully, joins the thread and frees everything. NULL is a no-op. */
void kw_load_stub_thread_stop(kw_load_stub_thread *t);

#endif /* KW_LOAD_STUB_H */
