/* kw_sharerd_config.c: sharerd's configuration keys, one table for the YAML file, the command line, --help and
 * --print-config (common/kw_cfg.h); deploy/config/sharerd.tiny.yaml is an example that sets the usual ones. */
#include <stddef.h>
#include <stdint.h>

#include "sharer/kw_sharerd.h"

#define KW__SD_OFF(field) offsetof(kw_sharerd_config, field)

static const char *const kw__sd_log_levels[] = {"debug", "info", "warn", "error", "off", NULL};

static const kw_cfg_key kw__sd_model_keys[] = {
    {.name = "name", .type = KW_CFG_STRING, .offset = offsetof(kw_sharerd_model_cfg, name),
     .help = "the name receivers ask for (ShareRequest.sharer_model), unique"},
    {.name = "path", .type = KW_CFG_PATH, .offset = offsetof(kw_sharerd_model_cfg, path),
     .help = "the HF model folder (config.json, *.safetensors)"},
    {.name = "tokenizer", .type = KW_CFG_PATH, .offset = offsetof(kw_sharerd_model_cfg, tokenizer),
     .help = "the tokenizer folder for the text relay; unset: the model folder"},
};

static const kw_cfg_key kw__sd_keys[] = {
    {.name = "listen.host", .type = KW_CFG_STRING, .offset = KW__SD_OFF(listen_host), .def = "127.0.0.1",
     .help = "numeric address to bind (\"0.0.0.0\" for every interface)"},
    {.name = "listen.port", .type = KW_CFG_INT, .offset = KW__SD_OFF(listen_port), .def = "7070", .min = 0,
     .max = 65535, .help = "TCP port of the control protocol; 0: an ephemeral port (see runtime.ready_file)"},
    {.name = "tls.enabled", .type = KW_CFG_BOOL, .offset = KW__SD_OFF(tls_enabled), .def = "false",
     .help = "serve TLS (plaintext connections are then refused)"},
    {.name = "tls.cert", .type = KW_CFG_PATH, .offset = KW__SD_OFF(tls_cert),
     .help = "PEM certificate chain of this server (kvwire gen-certs writes one)"},
    {.name = "tls.key", .type = KW_CFG_PATH, .offset = KW__SD_OFF(tls_key), .help = "PEM private key of tls.cert"},
    {.name = "tls.ca", .type = KW_CFG_PATH, .offset = KW__SD_OFF(tls_ca),
     .help = "PEM trust anchors for client certificates (with tls.verify_client)"},
    {.name = "tls.verify_client", .type = KW_CFG_BOOL, .offset = KW__SD_OFF(tls_verify_client), .def = "false",
     .help = "mutual TLS: require a client certificate signed by tls.ca"},
    {.name = "models", .type = KW_CFG_LIST, .offset = KW__SD_OFF(models), .sub = kw__sd_model_keys,
     .n_sub = sizeof kw__sd_model_keys / sizeof kw__sd_model_keys[0], .elem_size = sizeof(kw_sharerd_model_cfg),
     .max_items = KW_SHARERD_MAX_MODELS, .count_offset = KW__SD_OFF(n_models), .help = "the models served, at least one"},
    {.name = "compute.threads", .type = KW_CFG_INT, .offset = KW__SD_OFF(threads), .def = "0", .min = 0, .max = 1024,
     .help = "CPU backend worker threads; 0: one per core"},
    {.name = "compute.max_batch", .type = KW_CFG_INT, .offset = KW__SD_OFF(max_batch), .def = "0", .min = 0,
     .max = 1 << 16, .help = "tokens per forward chunk; 0: the model's default (256)"},
    {.name = "queue.max", .type = KW_CFG_INT, .offset = KW__SD_OFF(queue_max), .def = "16", .min = 1, .max = 1 << 16,
     .help = "requests waiting for or on the compute thread; beyond it a request is refused KW_E_SHARE_BUSY"},
    {.name = "limits.max_connections", .type = KW_CFG_INT, .offset = KW__SD_OFF(max_connections), .def = "256",
     .min = 1, .max = 1 << 20, .help = "connections beyond it are closed at once"},
    {.name = "limits.max_message_bytes", .type = KW_CFG_INT, .offset = KW__SD_OFF(max_message_bytes),
     .def = "4194304", .min = 1024, .max = 1 << 30, .help = "largest control frame accepted (PROTOCOL.md §6)"},
    {.name = "limits.max_tokens", .type = KW_CFG_INT, .offset = KW__SD_OFF(max_tokens), .def = "1048576", .min = 1,
     .max = 1 << 24, .help = "most token ids in a ShareRequest"},
    {.name = "timeouts.hello_ms", .type = KW_CFG_INT, .offset = KW__SD_OFF(hello_timeout_ms), .def = "10000",
     .min = 1, .max = 3600000, .help = "a connection must complete its hello within this (slow peers are dropped)"},
    {.name = "timeouts.idle_ms", .type = KW_CFG_INT, .offset = KW__SD_OFF(idle_timeout_ms), .def = "300000",
     .min = 0, .max = 86400000, .help = "close a connection idle this long with no request in flight; 0: never"},
    {.name = "timeouts.handshake_ms", .type = KW_CFG_INT, .offset = KW__SD_OFF(handshake_timeout_ms),
     .def = "10000", .min = 0, .max = 3600000, .help = "TLS handshake limit; 0: none"},
    {.name = "write.high_water", .type = KW_CFG_INT, .offset = KW__SD_OFF(write_high_water), .def = "8388608",
     .min = 4096, .max = (int64_t)1 << 34,
     .help = "bytes of a share queued for its socket beyond which the compute thread waits (backpressure)"},
    {.name = "relay.max_tokens", .type = KW_CFG_INT, .offset = KW__SD_OFF(relay_max_tokens), .def = "256", .min = 1,
     .max = 1 << 20, .help = "the text relay's reply length when the request gives none"},
    {.name = "zstd.level", .type = KW_CFG_INT, .offset = KW__SD_OFF(zstd_level), .def = "3", .min = -7, .max = 22,
     .help = "zstd level when a request asks for zstd without a level"},
    {.name = "shutdown.deadline_ms", .type = KW_CFG_INT, .offset = KW__SD_OFF(shutdown_ms), .def = "10000", .min = 0,
     .max = 3600000, .help = "on SIGTERM/SIGINT, requests in flight get this long to finish"},
    {.name = "runtime.ready_file", .type = KW_CFG_PATH, .offset = KW__SD_OFF(ready_file),
     .help = "once listening, write \"port=N\" here (tests and scripts with listen.port 0)"},
    {.name = "log.level", .type = KW_CFG_ENUM, .offset = KW__SD_OFF(log_level), .def = "info",
     .choices = kw__sd_log_levels, .help = "the least severe level logged to stderr"},
};

const kw_cfg_table kw_sharerd_config_table = {
    .program = "sharerd",
    .summary = "sharerd: the kvwire sharer daemon. It loads its models and serves share requests over the control\n"
               "protocol (docs/PROTOCOL.md): layer-by-layer prefill, token selection, KVWire sections streamed as they\n"
               "are computed, and the text relay's message.",
    .keys = kw__sd_keys,
    .n_keys = sizeof kw__sd_keys / sizeof kw__sd_keys[0],
};
