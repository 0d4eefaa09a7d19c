/* kw_receiverd.h: receiverd, the receiver daemon: it loads its model, tokenizer and fusers, keeps a connection to
 * each configured sharerd (reconnecting after failures) and serves the HTTP API of docs/HTTP_API.md (OpenAI
 * completions and chat completions with a `kvwire` request object and response block, server-sent events, /health,
 * /metrics). One request runs the receiver half of the pipeline (receiver/kw_receive.h) against the sharer half on
 * the other end of the connection: the receiver prefills its own sections while the sharer works, applies each KVWire
 * section as soon as it is verified, then generates.
 *
 * Threads (DESIGN.md): one libuv loop thread for the HTTP front, the sharer connections, timers and signals; one
 * compute thread with its own queue (bounded by queue.max: beyond it HTTP 503 with Retry-After) runs tokenization,
 * the receiver's prefill, decoding and fusion, and generation; the two exchange work through the completion queue
 * (kw_net_async) and a per-request inbox of blob bytes, bounded (the connection stops reading while the compute thread
 * is behind).
 *
 * Not here: the sharer (sharer/), the HTTP request reader (net/kw_http.h).
 */
#ifndef KW_RECEIVERD_H
#define KW_RECEIVERD_H

#include <stdint.h>

#include "common/kw_cfg.h"

#define KW_RECEIVERD_MAX_SHARERS 8
#define KW_RECEIVERD_MAX_FUSERS  16

typedef struct kw_receiverd_sharer_cfg {
    char *name;
    char *host;
    int64_t port;
    int tls;
    char *tls_ca, *tls_cert, *tls_key; /* trust anchors; a client identity for mutual TLS */
    char *server_name;                 /* the name the certificate must carry; NULL: host */
} kw_receiverd_sharer_cfg;

typedef struct kw_receiverd_fuser_cfg {
    char *name;
    char *path;
    char *sharer;       /* the sharer (by name) whose model it takes; NULL: the first sharer */
    char *sharer_model; /* that sharer's model (by name); NULL: any of its models that fits */
} kw_receiverd_fuser_cfg;

/* Every field is a key of kw_receiverd_config_table (owned strings: kw_cfg_free). */
typedef struct kw_receiverd_config {
    char *http_host;
    int64_t http_port;
    int64_t http_max_body, http_header_timeout_ms, http_read_timeout_ms, http_idle_timeout_ms, http_max_connections;
    char *model_name, *model_path, *model_tokenizer;
    int numerics;              /* 0 bf16, 1 fp32 */
    int rmsnorm_rounding;      /* 0 twice, 1 once */
    int cache_dtype;           /* cache.dtype: 0 auto, 1 bf16, 2 f32, 3 int8, 4 int4, 5 int6 */
    int64_t cache_page_tokens; /* cache.page_tokens */
    char *cache_layers; /* cache.layers: per-layer codecs "L:codec,..." (kw_kvcache_parse_layer_codecs), or NULL */
    int backend;        /* compute.backend: 0 cpu, 1 cuda (enum kw_backend_kind) */
    int64_t threads, device, memory_limit_mb, max_batch, queue_max;
    int weights;     /* compute.weights: an index of kw_model_weight_modes (model/kw_model.h) */
    int64_t workers; /* compute.workers: compute threads, each a stream context and a model fork beyond the first */
    kw_receiverd_sharer_cfg sharers[KW_RECEIVERD_MAX_SHARERS];
    int32_t n_sharers;
    kw_receiverd_fuser_cfg fusers[KW_RECEIVERD_MAX_FUSERS];
    int32_t n_fusers;
    int64_t sharer_request_timeout_ms, sharer_connect_timeout_ms, sharer_reconnect_ms, sharer_inbox_bytes;
    /* defaults of the kvwire request object (docs/HTTP_API.md §5.1) */
    int def_mode, def_selection, def_order, def_fusion, def_rans;
    double def_proportion, def_cache_proportion;
    int64_t def_min_tokens, def_seed, def_zstd;
    char *def_codec, *def_granularity, *def_scale;
    int64_t max_tokens;
    int64_t relay_max_tokens, relay_max_bytes;
    int64_t shutdown_ms;
    char *ready_file;
    int log_level;
} kw_receiverd_config;

extern const kw_cfg_table kw_receiverd_config_table;

/* The modes in the order of the config's choices and the API's names. */
enum kw_rd_mode {
    KW_RD_MODE_C2C = 0,
    KW_RD_MODE_KV_DIRECT = 1,
    KW_RD_MODE_RECEIVER_ONLY = 2,
    KW_RD_MODE_TEXT_RELAY = 3
};

typedef struct kw_receiverd kw_receiverd;

/* Loads the model, tokenizer and fusers, creates the TLS contexts and binds the HTTP listener; nothing runs (and no
 * sharer is contacted) until kw_receiverd_run. cfg is borrowed until kw_receiverd_free. */
int kw_receiverd_create(const kw_receiverd_config *cfg, kw_receiverd **out);

/* The command line a SIGHUP reads again (kw_cfg_reload), borrowed until kw_receiverd_free. Without it a SIGHUP only
 * logs that there is nothing to reload. A reload applies log.level and defaults.* (to requests that arrive from then
 * on; open connections stay open); other changed keys need a restart, are logged and keep their running values. */
void kw_receiverd_set_reload_args(kw_receiverd *d, int argc, char **argv);

/* The bound HTTP port. */
uint16_t kw_receiverd_port(const kw_receiverd *d);

/* Connects to the sharers and serves until SIGTERM or SIGINT, then shuts down gracefully. Under systemd
 * (net/kw_net_service.h): READY=1 once the HTTP port listens with the models loaded, WATCHDOG=1 pings when asked,
 * RELOADING=1 and READY=1 around a SIGHUP reload, STOPPING=1 at the signal. */
int kw_receiverd_run(kw_receiverd *d);

/* Frees everything; NULL is a no-op. */
void kw_receiverd_free(kw_receiverd *d);

/* The program: config, command line, run; returns the exit code. */
int kw_receiverd_main(int argc, char **argv);

#endif /* KW_RECEIVERD_H */
