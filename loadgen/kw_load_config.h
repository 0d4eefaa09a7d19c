/* kw_load_config.h: the options of one kvload run, as one table that drives the command line (--max-concurrency 4),
 * sweep files (YAML keys max_concurrency: 4), the run's record (run.json) and --help. Names follow vLLM's
 * `bench serve` where it has the option (num_prompts, request_rate, burstiness, max_concurrency, num_warmups, seed).
 *
 * Not here: running (kw_load_run.h), sweeps (kw_load_sweep.h).
 */
#ifndef KW_LOAD_CONFIG_H
#define KW_LOAD_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "loadgen/kw_load_dataset.h"
#include "loadgen/kw_load_reply.h"

typedef struct kw_load_config {
    /* server */
    char *url;          /* base URL of receiverd's HTTP listener */
    int endpoint;       /* enum kw_load_api */
    int64_t timeout_ms; /* per request, 0: none */
    /* dataset */
    char *dataset_name; /* kw_load_dataset_name */
    char *dataset_path; /* JSONL file */
    int use_cot, use_template;
    int64_t limit; /* first rows of the file only; 0: all */
    int shuffle;   /* shuffle the item order (seeded) */
    /* load shape */
    int64_t num_prompts;     /* measured requests; 0: one per evaluated item */
    double duration_s;       /* stop sending after this long; 0: no limit */
    int64_t max_concurrency; /* requests in flight at most; 0: no limit (open loop only) */
    double request_rate;     /* requests/s (INFINITY: closed loop) */
    double burstiness;       /* gamma shape of the gaps; 1: Poisson */
    int64_t num_warmups;     /* requests sent first and not counted */
    int64_t seed;            /* every random choice follows from it */
    /* generation */
    int64_t max_tokens; /* -1: the server's default */
    int stream;         /* server-sent events (needed for TTFT, TPOT, ITL) */
    cJSON *kvwire;      /* owned: the request's kvwire object (docs/HTTP_API.md §5.1), or NULL */
    /* quality */
    int64_t record_logprobs; /* record the top-k log-probabilities and token ids of every output (a reference run);
                                0: off */
    char *reference;         /* run folder of a reference run to judge against, or NULL */
    int teacher_forcing;     /* with a reference: replay its tokens under this policy */
    int64_t bootstrap_resamples;
    /* output */
    char *out;    /* the run folder */
    char *name;   /* label in reports (default: the folder's name) */
    char *family; /* policy family in reports (default: derived from kvwire) */
    int progress; /* 0 auto (a bar on a terminal), 1 always, 2 never */
} kw_load_config;

/* Defaults: url http://127.0.0.1:8080, chat endpoint, timeout 600 s, dataset prompts, use_template 1, closed loop with
 * max_concurrency 1 (the reference harness runs batch 1), request_rate inf, burstiness 1, stream on, no reference,
 * teacher forcing on, 10000 bootstrap resamples, progress auto. */
void kw_load_config_default(kw_load_config *c);

/* Frees the strings and the kvwire object. NULL is a no-op. */
void kw_load_config_free(kw_load_config *c);

/* Deep copy. @return 0 or KW_E_NOMEM. */
int kw_load_config_copy(const kw_load_config *src, kw_load_config *dst);

/* Sets one option from text (command line): key is the option name with '_' or '-' ("max-concurrency"); booleans
 * take true/false/yes/no/on/off/1/0, numbers are range-checked, request_rate takes "inf", kvwire takes a JSON
 * object. @return 0, KW_E_NOT_FOUND (unknown key), KW_E_PARSE (bad value); the detail says which. */
int kw_load_config_set(kw_load_config *c, const char *key, const char *value);

/* 1 if key names a boolean option (so the command line may give it without a value). */
int kw_load_config_is_flag(const char *key);

/* Sets one option from a JSON value (sweep files). @return as kw_load_config_set. */
int kw_load_config_set_json(kw_load_config *c, const char *key, const cJSON *value);

/* Every member of obj through kw_load_config_set_json; an unknown key is KW_E_PARSE here (a malformed file). */
int kw_load_config_apply_json(kw_load_config *c, const cJSON *obj, const char *what);

/* Checks the combination (a dataset path, a positive rate, max_concurrency 0 only in open loop, ...).
 * @return 0 or KW_E_INVALID_ARG with the reason. */
int kw_load_config_validate(const kw_load_config *c);

/* Every option as a JSON object (the run's record). With identity_only, the options that do not change what is
 * asked (url, timeout_ms, out, name, family, progress: where the server listens and where the files go) are left
 * out: that object is what a sweep compares to decide whether a finished point is the point asked for (the server a
 * point ran against is recorded in its run.json either way). @return the object (caller owns) or NULL when out of
 * memory. */
cJSON *kw_load_config_to_json(const kw_load_config *c, int identity_only);

/* The base URL to use: c->url, or http://127.0.0.1:8080 when none was given. */
const char *kw_load_config_url(const kw_load_config *c);

/* The option table as help text ("  --name VALUE   what (default)"). */
void kw_load_config_help(FILE *out);

#endif /* KW_LOAD_CONFIG_H */
