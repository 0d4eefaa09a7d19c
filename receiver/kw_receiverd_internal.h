/* kw_receiverd_internal.h: what the files of receiverd share: the parsed API request (kw_rd_spec, from
 * kw_receiverd_api.c), a request in flight (kw_rd_job), the sharer links (kw_receiverd_link.c), the compute thread
 * (kw_receiverd_compute.c) and the daemon (kw_receiverd.c). Not a public interface.
 *
 * Thread rules: fields marked (loop) are touched by the loop thread only, (compute) by the compute thread that runs
 * the job (or owns the worker) only, (mu) under the job's mutex; a job is reference-counted (the loop, the compute
 * queue, the link while its share is in flight each hold one).
 */
#ifndef KW_RECEIVERD_INTERNAL_H
#define KW_RECEIVERD_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "c2c/kw_fusion.h"
#include "c2c/kw_relay.h"
#include "c2c/kw_request.h"
#include "common/kw_queue.h"
#include "model/kw_chat.h"
#include "c2c/kw_select.h"
#include "model/kw_identity.h"
#include "model/kw_model.h"
#include "model/kw_tokenizer.h"
#include "net/kw_http.h"
#include "net/kw_net.h"
#include "net/kw_net_service.h"
#include "proto/kw_proto.h"
#include "receiver/kw_receive.h"
#include "receiver/kw_receiverd.h"
#include "wire/kw_wire.h"
#include "wire/kw_wire_alloc.h"

#define KW_RD_MAX_STOP       4
#define KW_RD_MAX_TOP        20
#define KW_RD_MAX_SCHEDULE   64
#define KW_RD_MAX_SECTIONS   4 /* the standard or cache-length split (3), one more cut by recompute_prefix */
#define KW_RD_MAX_MAX_TOKENS (1 << 20)

// ---------------------------------------------------------------------------------------------------------------
// The API request (kw_receiverd_api.c)

typedef struct kw_rd_message {
    char *role, *content; /* owned */
} kw_rd_message;

typedef struct kw_rd_schedule {
    int32_t first, last;
    kw_wire_codec_spec spec;           /* K's, and V's unless a value_* field is given */
    kw_wire_codec_spec spec_v;         /* V's */
    char *codec, *granularity, *scale; /* as given (owned), for the response's policy */
    bool own_options;                  /* "rotate", "clip", "qmax_k" or "qmax_v" given: these layers take the four
                                          below (those not given: the policy's) */
    uint8_t rotate, clip;              /* bit 0 K, bit 1 V */
    uint8_t qmax_k, qmax_v;            /* code limits (FORMAT.md §5.14), 0: none */
} kw_rd_schedule;

/* A token schedule entry (HTTP_API.md §5.1 token_schedule, SharePolicy.token_schedule): one of first (a count),
 * last (a count) and positions, with K's codec and V's (the same unless a value_* field is given). */
#define KW_RD_MAX_TOKEN_POSITIONS 64
typedef struct kw_rd_token_schedule {
    uint32_t first, last;
    uint32_t positions[KW_RD_MAX_TOKEN_POSITIONS]; /* strictly increasing */
    int n_positions;
    kw_wire_codec_spec spec;   /* K's, and V's unless a value_* field is given */
    kw_wire_codec_spec spec_v; /* V's */
} kw_rd_token_schedule;

/* A request with every default filled in. Owned strings and arrays: kw_rd_spec_free. */
typedef struct kw_rd_spec {
    bool chat;
    char *prompt;        /* completions: the text, or NULL with prompt_ids */
    int32_t *prompt_ids; /* completions: token ids given instead of text */
    int64_t n_prompt_ids;
    kw_rd_message *messages; /* chat */
    size_t n_messages;
    int64_t max_tokens;
    bool max_tokens_given; /* false: the server's default, clamped to the context the prompt leaves */
    char *stop[KW_RD_MAX_STOP];
    int n_stop;
    bool stream, echo;
    bool ignore_eos; /* decode past an EOS id: exactly max_tokens tokens unless a stop string ends it */
    int logprobs;    /* -1: none; else the top-k (0..20) */
    bool token_ids;  /* return_tokens_as_token_ids: logprobs tokens written "token_id:<id>" (HTTP_API.md §8) */
    /* kvwire */
    enum kw_rd_mode mode;
    char *sharer, *sharer_model; /* NULL: the defaults (first sharer, its first model) */
    kw_select_policy select;
    char *codec, *granularity, *scale;     /* as given or defaulted (owned) */
    kw_wire_codec_spec spec;               /* K's codec, and V's unless value_codec or value_granularity is given */
    char *value_codec, *value_granularity; /* V's apart (owned), NULL: K's */
    kw_wire_codec_spec spec_v;
    bool cache_layout;      /* codec "cache" (kv_direct): spec and spec_v are this server's cache layout
                               (receiver/kw_kv_pages.h kw_kv_pages_specs), filled when the request is resolved */
    double outliers;        /* KVWire v1.1: this share of each section's K and V elements sent exact (0: none) */
    bool pre_rope_keys;     /* KVWire v1.1, kv_direct: keys sent before RoPE */
    uint8_t rotate;         /* KVWire v1.1: bit 0 K, bit 1 V sent Hadamard-rotated ("rotate": "k", "v", "kv", "none") */
    uint8_t clip;           /* bit 0 K, bit 1 V: clipped scales, an encoder choice ("clip": "k", "v", "kv", "none") */
    uint8_t qmax_k, qmax_v; /* code limits of K and V, an encoder choice ("qmax_k", "qmax_v": 1..255; 0: none) */
    int zstd_level;
    bool rans; /* KVWire v1.1: section bodies coded by the static rANS byte coder where smaller (FORMAT.md §5.15) */
    int64_t budget_bytes; /* a cap on the request's blobs (HTTP_API.md §5.1 budget_bytes); 0: none */
    kw_wire_codec_spec budget_codecs[KW_WIRE_ALLOC_MAX_CODECS]; /* with a cap: the allocator's choices */
    int n_budget_codecs;
    int budget_mode; /* enum kw_wire_budget_mode: tokens (the allocator), kvcomm_like, qkvcomm_like */
    int scoring;     /* receiver-aware selections: 0 local (the sharer scores), 1 receiver (PROTOCOL.md §5.2) */
    kw_wire_codec_spec preview; /* scoring receiver: the preview blobs' codec (K and V) */
    int32_t *layers;            /* NULL: the default set */
    int32_t n_layers;
    kw_rd_schedule schedule[KW_RD_MAX_SCHEDULE];
    int n_schedule;
    kw_rd_token_schedule token_schedule[KW_PROTO_MAX_TOKEN_POLICIES];
    int n_token_schedule;
    int64_t recompute_prefix; /* kv_direct: the prompt's first positions the receiver prefills itself (0: none) */
    double cache_proportion;
    enum kw_fusion_order order;
    enum kw_fusion_mode fusion;
    int64_t relay_max_tokens, relay_max_bytes; /* max_bytes -1: no cap */
    char *relay_question;                      /* NULL: the last user message or the prompt */
    enum kw_relay_style relay_style;           /* what the sharer's message is (c2c/kw_relay.h) */
    /* two-round refinement (HTTP_API.md §5.1 kvwire.refine): round two at refine_proportion when the first answer
     * token's metric asks for it (receiver/kw_receive.h) */
    bool refine;
    enum kw_refine_metric refine_metric;
    double refine_threshold, refine_proportion;
    int32_t *force_ids;
    int32_t n_force;
    int32_t (*score_ids)[KW_RD_MAX_TOP]; /* n_force rows */
    int32_t *n_score;                    /* per row */
} kw_rd_spec;

/* Parses and validates a request body of the completions (chat false) or chat completions endpoint against the
 * server defaults in cfg and a vocabulary of vocab ids. On failure: the negative status, a message in err and the
 * OpenAI error type in *err_type ("invalid_request_error" or "unsupported_parameter"), and *http_status (400 or 404).
 * *out is owned by the caller (kw_rd_spec_free) on success. */
int kw_rd_spec_parse(const char *body, size_t len, bool chat, const kw_receiverd_config *cfg, int32_t vocab,
                     const char *model_name, kw_rd_spec *out, char *err, size_t errcap, const char **err_type,
                     int *http_status);

void kw_rd_spec_free(kw_rd_spec *s);

/* The prompt (n_prompt tokens) and the tokens to generate must fit a model context of `context` positions: a prompt
 * that leaves no room for a default max_tokens > 0, or a max_tokens given by the client (given) past the room left,
 * is KW_E_LIMIT naming the three numbers; a default max_tokens is cut to the room left. */
int kw_rd_fit_context(int64_t context, int64_t n_prompt, bool given, int64_t *max_tokens);

/* The API's names. */
const char *kw_rd_mode_name(enum kw_rd_mode m);

// ---------------------------------------------------------------------------------------------------------------
// The daemon's pieces

typedef struct kw_rd_link kw_rd_link;
typedef struct kw_rd_job kw_rd_job;

/* One fuser (c2c): its weights, read by every compute thread; each binds its own kw_fusion (kw_rd_worker). */
typedef struct kw_rd_fuser {
    const kw_receiverd_fuser_cfg *cfg;
    kw_fuser *fuser;
    uint8_t digest[KW_IDENTITY_DIGEST_BYTES];
    int32_t src_heads, src_dim, src_layers_needed;
    /* identity sent in the hello */
    Kwctl__FuserIdentity id;
    Kwctl__ModelDigest id_sharer, id_receiver;
    Kwctl__KvShape id_kv;
    int32_t sharer_index; /* the link it belongs to */
} kw_rd_fuser;

/* One compute thread of compute.workers. Worker 0 drives the daemon's backend and model; the others each a stream
 * context of that backend (kw_backend_create_stream: its own stream and scratch, the same weights and memory budget)
 * and a fork of the model on it (kw_model_fork), so that they run requests side by side. All pop the one queue. */
typedef struct kw_rd_worker {
    kw_receiverd *d;
    int32_t index;
    kw_backend *be;  /* worker 0: d->be (borrowed); else a stream context of it (owned) */
    kw_model *model; /* worker 0: d->model (borrowed); else a fork of it on be (owned) */
    /* (compute) per fuser of d->fusers: its fusion on this worker's model, bound on first use for the sharer geometry
     * it met (and again if that changes); owned */
    kw_fusion *fusion[KW_RECEIVERD_MAX_FUSERS];
    int32_t fusion_layers[KW_RECEIVERD_MAX_FUSERS], fusion_heads[KW_RECEIVERD_MAX_FUSERS],
        fusion_dim[KW_RECEIVERD_MAX_FUSERS];
    uv_thread_t thread;
    bool started;
} kw_rd_worker;

/* The sharer's answer to one request, filled by the link (loop) and read by the compute thread (under job->mu). */
typedef struct kw_rd_share {
    bool header, ended;   /* ShareHeader arrived; the share ended (ShareEnd, or failure) */
    int status;           /* < 0: the share failed */
    int http_status;      /* with status: 502, 503, 504, 429, 400 */
    char error[512];      /* with status */
    Kwctl__ShareEnd *end; /* owned */
    char *text;           /* text relay (owned) */
    size_t text_len;
    uint32_t text_tokens;
    bool text_truncated;
    uint64_t frames_in;                   /* bytes of this share's frames read, headers included (frame by frame) */
    uint64_t control_in;                  /* of which the control frames (ShareHeader, ShareTargets, ShareText,
                                             ShareEnd, Error) */
    uint64_t targets_in, target_frames;   /* of which the ShareTargets frames (bytes, count) */
    uint64_t wire_frames;                 /* WIRE frames read */
    uint64_t socket_in, socket_out;       /* the connection's application bytes during the share, each way (measured by
                                             the transport: equal to the frames, under TLS the plaintext) */
    uint64_t transport_in, transport_out; /* bytes on the socket during the share (TLS records included) */
    kw_net_conn_stats at_start;           /* the connection's counters when the request was queued */
    uint64_t t_sent, t_last_wire;         /* ShareRequest queued; last WIRE byte read */
} kw_rd_share;

typedef struct kw_rd_chunk {
    struct kw_rd_chunk *next;
    Kwctl__ShareTargets *targets; /* owned: a sharer layer's per-target subsets, in stream order (len 0) */
    int32_t preview;              /* SHARE_PREVIEW (len 0): 1 + the ordinal of the preview blob that follows; else 0 */
    size_t len, off;
    uint8_t data[];
} kw_rd_chunk;

/* Frees one inbox chunk and the message it may carry (SHARE_TARGETS). NULL is a no-op. */
void kw_rd_chunk_free(kw_rd_chunk *c);

/* logprobs of one generated (or forced) token */
typedef struct kw_rd_token_stats {
    int32_t id;
    double logprob;
    int n_top;
    int32_t top_ids[KW_RD_MAX_TOP];
    double top_lp[KW_RD_MAX_TOP];
} kw_rd_token_stats;

struct kw_rd_job {
    kw_queue_item item; /* the compute queue (first: the item is the job) */
    kw_receiverd *d;
    atomic_int refs;   /* the request's (released after its answer) and the link's while its share is in flight */
    atomic_int cancel; /* 0, or the status to stop with (client gone, shutdown) */
    uint64_t id;
    kw_rd_spec spec;
    uint64_t t_arrival;
    /* (loop) */
    kw_http_request *http; /* NULL once answered */
    bool stream_started;
    kw_rd_job *wait_next;                            /* its link's queue of shares waiting for the connection */
    kw_rd_link *link;                                /* the sharer of the request (NULL for receiver_only) */
    int32_t fuser_index;                             /* c2c */
    int32_t sharer_layers, sharer_heads, sharer_dim; /* the sharer model's cache (its hello) */
    char sharer_name[129], sharer_model[129];
    uint64_t share_id;      /* the ShareRequest's request_id: the job's id, round two's with bit 63 set (set by the
                               compute thread before it posts the SEND) */
    uint8_t *request_frame; /* the packed ShareRequest until it is written (owned) */
    size_t request_len;
    bool share_active; /* the link's share in flight */
    /* (mu): between the link and the compute thread */
    uv_mutex_t mu;
    uv_cond_t cond;
    kw_rd_chunk *inbox_head, *inbox_tail;
    size_t inbox_bytes;
    bool paused;  /* the link stopped reading for this inbox */
    bool discard; /* the compute thread is done: incoming bytes are dropped */
    kw_rd_share share;
    kw_rd_share share2; /* refinement: round two's share once it ended; share is then round one's with the byte
                           counters of both rounds (compute thread, then the loop after DONE) */
    /* (compute) results, read by the loop after the DONE post */
    int status, http_status;
    char error[512];
    int32_t *prompt_ids; /* what the receiver ran (owned) */
    int64_t n_prompt;
    char *prompt_text; /* echo (owned) */
    int32_t *ids;      /* generated (owned) */
    int64_t n_ids;
    char *text; /* the completion, cut before a stop string (owned) */
    size_t text_len;
    bool finish_stop;      /* EOS or a stop string ended it */
    size_t stream_sent;    /* bytes of text already posted as events */
    kw_rd_token_stats *lp; /* logprobs: one per token (owned) */
    int64_t n_lp;
    double *scored; /* score_ids: per forced token, its n_score values (owned) */
    int64_t scored_len, top1_agree;
    kw_fusion_section sections[KW_RD_MAX_SECTIONS];
    int32_t n_sections;
    int64_t shared_tokens;
    int32_t *layers_sent; /* the sharer layers asked for (owned) */
    int32_t n_layers_sent;
    uint64_t blob_bytes;
    /* scoring receiver: the preview blobs (counted in blob_bytes too), the selection sent back, the scoring's time */
    uint64_t preview_bytes, selection_bytes;
    double ms_scoring; /* the scorer's prefill, decoding and scoring the previews (waits excluded) */
    bool receiver_scored;
    int32_t blobs;
    int64_t tokens_fused;
    int32_t layers_fused, layers_skipped;
    int32_t layers_unsent; /* kvcomm_like: candidate sharer layers the cap left out */
    /* refinement (HTTP_API.md §5.2 "refine") */
    bool refine_measured, refine_round2; /* the metric was measured; round two was asked for and applied */
    double refine_value, ms_probe;
    const char *refine_skipped; /* why round two was wanted but not asked for (static), or NULL */
    uint64_t blob_bytes1;       /* round one's share of blob_bytes */
    int64_t rows1, rows2;       /* rows applied per round, over all layers */
    /* kv_direct: how the rows went into the cache (HTTP_API.md §5.2 "kv_store"; receiver/kw_receive.h) */
    const char *kv_store;     /* kw_receive_kv_store (static), NULL for the other modes */
    const char *kv_store_why; /* kw_kv_store_reason_name of the first section not stored as pages, or NULL */
    int64_t kv_rows_direct, kv_rows_tail, kv_rows_requantized;
    int32_t device_decoded; /* sections this receiver decoded on its device (kw_receive_stats.device_sections) */
    double ms_queue, ms_tokenize, ms_receiver_prefill, ms_decode_wire, ms_project, ms_fuse, ms_first_token, ms_decode,
        ms_relay_wait;
};

// ---------------------------------------------------------------------------------------------------------------
// The daemon (kw_receiverd.c)

typedef struct kw_rd_hist {
    uint64_t counts[16]; /* per bucket of kw_rd_hist_bounds, then +Inf */
    double sum;
    uint64_t n;
} kw_rd_hist;

enum kw_rd_outcome {
    KW_RD_OK,
    KW_RD_CLIENT_ERROR,
    KW_RD_SHARER_ERROR,
    KW_RD_TIMEOUT,
    KW_RD_BUSY,
    KW_RD_INTERNAL,
    KW_RD_OUTCOMES
};

enum kw_rd_stage {
    KW_RD_STAGE_QUEUE,
    KW_RD_STAGE_TOKENIZE,
    KW_RD_STAGE_SHARER_PREFILL,
    KW_RD_STAGE_SELECT,
    KW_RD_STAGE_ENCODE,
    KW_RD_STAGE_TRANSFER,
    KW_RD_STAGE_DECODE_WIRE,
    KW_RD_STAGE_PROJECT,
    KW_RD_STAGE_FUSE,
    KW_RD_STAGE_RECEIVER_PREFILL,
    KW_RD_STAGE_FIRST_TOKEN,
    KW_RD_STAGE_DECODE,
    KW_RD_STAGE_TOTAL,
    KW_RD_STAGES
};

struct kw_receiverd {
    const kw_receiverd_config *cfg;
    uv_loop_t loop;
    bool loop_init;
    kw_backend *be;
    kw_model *model;
    kw_tokenizer *tok;
    enum kw_chat_family family;
    int32_t vocab;
    bool logits_bf16; /* the argmax (and logprobs) use bf16-rounded logits */
    kw_model_digest digest;
    Kwctl__ModelIdentity id;
    Kwctl__ModelDigest id_digest;
    Kwctl__KvShape id_kv;
    kw_rd_fuser fusers[KW_RECEIVERD_MAX_FUSERS];
    int32_t n_fusers;
    kw_rd_link *links[KW_RECEIVERD_MAX_SHARERS];
    int32_t n_links;
    uint32_t *codecs;
    kw_http_server *http;
    kw_net_signals *signals;
    kw_net_service *service; /* systemd's notify protocol and SIGHUP */
    kw_net_async *async;
    uint16_t port;
    /* reload (loop thread): the command line SIGHUP reads again (borrowed); the last reloaded config (owned, NULL
     * before a reload), of which only the KW_CFG_LIVE keys (log.level, defaults.*) are in force */
    int reload_argc;
    char **reload_argv;
    kw_receiverd_config *live;
    /* compute threads (compute.workers) */
    kw_rd_worker *workers; /* n_workers (owned) */
    int32_t n_workers;
    bool threads_started;
    atomic_int running;   /* workers that have not exited: the last one posts EXIT */
    atomic_int in_flight; /* requests on a worker now (read by /metrics and /health) */
    kw_queue queue;
    bool queue_init;
    /* (loop) */
    int32_t queued;
    uint64_t next_job_id;
    bool shutting_down;
    uint64_t requests[4][KW_RD_OUTCOMES]; /* by mode */
    uint64_t bytes_blob, bytes_socket_in, bytes_socket_out, bytes_text, generated_tokens;
    uint64_t refine[3]; /* refined requests that ended well: round two not triggered, applied, skipped */
    uint64_t
        kv_store[4]; /* kv_direct requests that ended well by kw_receive_kv_store: direct, requantized, dense, none */
    kw_rd_hist request_hist[4];
    kw_rd_hist stage_hist[KW_RD_STAGES];
};

/* Posts from the compute thread to the loop. */
enum kw_rd_post_kind {
    KW_RD_POST_SEND,
    KW_RD_POST_SELECTION,
    KW_RD_POST_RESUME,
    KW_RD_POST_TOKEN,
    KW_RD_POST_DONE,
    KW_RD_POST_EXIT
};

typedef struct kw_rd_post {
    kw_net_async_item item;
    enum kw_rd_post_kind kind;
    kw_rd_job *job;
    char *text; /* TOKEN: the new text (owned) */
    size_t len;
} kw_rd_post;

/* Any thread: posts to the loop (the post is freed by the loop). @return 0, or KW_E_NOMEM / KW_E_STATE (closing; the
 * post is freed here). */
int kw_rd_post_send(kw_receiverd *d, enum kw_rd_post_kind kind, kw_rd_job *job, char *text, size_t len);

void kw_rd_job_ref(kw_rd_job *j);
void kw_rd_job_unref(kw_rd_job *j);
/* Any thread: asks the job to stop with status (first reason wins); wakes its compute wait. */
void kw_rd_job_cancel(kw_rd_job *j, int status);

// ---------------------------------------------------------------------------------------------------------------
// Sharer links (kw_receiverd_link.c), loop thread

int kw_rd_link_create(kw_receiverd *d, int32_t index, kw_rd_link **out);
void kw_rd_link_start(kw_rd_link *l);
/* Stops reconnecting and closes the connection (shutdown); requests given to it later fail (503). */
void kw_rd_link_stop(kw_rd_link *l);
/* Frees a stopped link once the loop has closed its handles (after uv_run returns); NULL is a no-op. */
void kw_rd_link_free(kw_rd_link *l);
bool kw_rd_link_ready(const kw_rd_link *l);
const char *kw_rd_link_name(const kw_rd_link *l);
const char *kw_rd_link_reason(const kw_rd_link *l);
/* The sharer's models from its hello (NULL, 0 when not connected). */
Kwctl__ModelIdentity *const *kw_rd_link_models(const kw_rd_link *l, size_t *n);
/* Sends the job's ShareRequest now, or after the share in flight; fails its share (503) if not connected. */
void kw_rd_link_submit(kw_rd_link *l, kw_rd_job *j);
/* The compute thread is done with the job: a share still in flight is cancelled. */
void kw_rd_link_release(kw_rd_link *l, kw_rd_job *j);
/* The compute thread drained the inbox below its low mark: read again. */
void kw_rd_link_resume(kw_rd_link *l);

/* Loop thread: writes a packed frame of job j's share (frame, len: owned, taken over) while j's share is the one in
 * flight on l; otherwise drops it. */
void kw_rd_link_send_frame(kw_rd_link *l, kw_rd_job *j, uint8_t *frame, size_t len);

// ---------------------------------------------------------------------------------------------------------------
// The compute thread (kw_receiverd_compute.c)

/* arg: the kw_rd_worker. */
void kw_rd_compute_thread(void *arg);

/* Creates workers 1.. (stream contexts and model forks) and frees every worker's state; worker 0's are borrowed. */
int kw_rd_workers_create(kw_receiverd *d, int32_t n);
void kw_rd_workers_free(kw_receiverd *d);

/* A request's KV cache, as configured (cache.dtype, cache.page_tokens, cache.layers; auto_dtype when cache.dtype is
 * auto) for model, of capacity rows. *out is owned by the caller (kw_kvcache_free). KW_E_INVALID_ARG with the key at
 * fault for a configuration no cache can have. */
int kw_rd_create_cache(const kw_receiverd_config *cfg, const kw_model *model, int64_t capacity,
                       enum kw_dtype auto_dtype, kw_kvcache **out);
/* The fuser that serves c2c from the sharer model m of link index sharer: its index, or -1 with why. */
int32_t kw_rd_find_fuser(const kw_receiverd *d, int32_t sharer, const Kwctl__ModelIdentity *m, char *why, size_t cap);

#endif /* KW_RECEIVERD_INTERNAL_H */
