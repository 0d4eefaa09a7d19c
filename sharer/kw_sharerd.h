/* kw_sharerd.h: sharerd, the sharer daemon: it loads one or more models under names and serves share requests from
 * many receivers over the control protocol (docs/PROTOCOL.md) on TCP or TLS: the sharer half of the pipeline
 * (sharer/kw_share_request.h: layer-by-layer prefill, selection, KVWire encoding, each section streamed as soon as it
 * exists) and the text relay's first stage (c2c/kw_request.h).
 *
 * Threads (DESIGN.md): one libuv loop thread does all I/O (connections, frames, timers, signals); the model work runs
 * on one compute thread with its own queue, bounded by queue.max (beyond it a request is answered KW_E_SHARE_BUSY at
 * once); blob bytes and results come back to the loop through the completion queue (kw_net_async). The compute thread
 * never buffers without bound: while more than write.high_water bytes of a share wait for its socket it waits too, and
 * a cancelled request (Cancel frame, connection closed, its deadline, shutdown) stops between layers.
 *
 * Not here: the config table's meaning beyond the struct (kw_sharerd_config.c documents every key).
 */
#ifndef KW_SHAREDD_H
#define KW_SHAREDD_H

#include <stdint.h>

#include "common/kw_cfg.h"

#define KW_SHARERD_MAX_MODELS 16

typedef struct kw_sharerd_model_cfg {
    char *name;      /* what ShareRequest.sharer_model names */
    char *path;      /* HF model folder */
    char *tokenizer; /* tokenizer folder (text relay); NULL: path */
} kw_sharerd_model_cfg;

/* Every field is a key of kw_sharerd_config_table (owned strings: kw_cfg_free). */
typedef struct kw_sharerd_config {
    char *listen_host;
    int64_t listen_port;
    int tls_enabled;
    char *tls_cert, *tls_key, *tls_ca;
    int tls_verify_client;
    kw_sharerd_model_cfg models[KW_SHARERD_MAX_MODELS];
    int32_t n_models;
    char *scoring_model, *scoring_fuser; /* scoring_receiver.model / .fuser: receiver-aware selections scored here */
    int backend;                         /* compute.backend: 0 cpu, 1 cuda (enum kw_backend_kind) */
    int64_t threads, device, memory_limit_mb;
    int64_t workers; /* compute.workers: compute threads, each a stream context with model forks beyond the first */
    int64_t max_batch;
    int weights; /* compute.weights: an index of kw_model_weight_modes (model/kw_model.h) */
    int64_t queue_max;
    int64_t max_connections;
    int64_t hello_timeout_ms, idle_timeout_ms, handshake_timeout_ms;
    int64_t write_high_water;
    int64_t max_message_bytes, max_tokens;
    int64_t relay_max_tokens;
    int64_t zstd_level;
    int64_t shutdown_ms;
    char *ready_file;
    int log_level;
} kw_sharerd_config;

extern const kw_cfg_table kw_sharerd_config_table;

typedef struct kw_sharerd kw_sharerd;

/* Loads the models (and their tokenizers and identities), creates the TLS context and binds the listener on a loop of
 * its own; nothing runs until kw_sharerd_run. cfg is borrowed until kw_sharerd_free. *out is owned by the caller. */
int kw_sharerd_create(const kw_sharerd_config *cfg, kw_sharerd **out);

/* The command line a SIGHUP reads again (kw_cfg_reload: the config file and the same overrides), borrowed until
 * kw_sharerd_free. Without it a SIGHUP only logs that there is nothing to reload. A reload applies log.level and the
 * TLS files (tls.cert, tls.key, tls.ca: new connections use them, open ones keep theirs); other changed keys need a
 * restart, are logged and keep their running values. */
void kw_sharerd_set_reload_args(kw_sharerd *d, int argc, char **argv);

/* The bound port (the configured one, or the ephemeral one with listen.port 0). */
uint16_t kw_sharerd_port(const kw_sharerd *d);

/* Runs the loop and the compute thread until SIGTERM or SIGINT, then shuts down gracefully (requests in flight
 * finish, up to shutdown.deadline_ms). Under systemd (net/kw_net_service.h) it sends READY=1 once listening with its
 * models loaded, WATCHDOG=1 pings when asked, RELOADING=1 and READY=1 around a SIGHUP reload, STOPPING=1 at the
 * signal. @return 0 or the status that stopped it. */
int kw_sharerd_run(kw_sharerd *d);

/* Frees everything; NULL is a no-op. */
void kw_sharerd_free(kw_sharerd *d);

/* The program: parses the config and the command line, runs, returns the exit code. */
int kw_sharerd_main(int argc, char **argv);

#endif /* KW_SHAREDD_H */
