/* kw_load_config.c: the run option table and its three readers (text, JSON) and one writer (JSON). */
#include "loadgen/kw_load_config.h"

#include "common/kw_json.h"
#include "common/kw_status.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

enum kw_load_opt_type {
    KW_LOAD_OPT_STR,
    KW_LOAD_OPT_INT,
    KW_LOAD_OPT_REAL,
    KW_LOAD_OPT_BOOL,
    KW_LOAD_OPT_CHOICE,
    KW_LOAD_OPT_JSON
};

typedef struct kw_load_opt {
    const char *name;
    enum kw_load_opt_type type;
    size_t offset;
    int64_t min, max;  /* INT */
    double rmin, rmax; /* REAL, inclusive; rmin excluded when min_open */
    int min_open;
    const char *const *choices; /* CHOICE, NULL-terminated */
    int identity;               /* changes what is measured (part of a sweep point's identity) */
    const char *help;
} kw_load_opt;

static const char *const kw_load_endpoints[] = {"chat", "completions", NULL};
static const char *const kw_load_progress_modes[] = {"auto", "always", "never", NULL};

#define KW_O(field) offsetof(kw_load_config, field)
static const kw_load_opt kw_load_opts[] = {
    {"url", KW_LOAD_OPT_STR, KW_O(url), .help = "receiverd's base URL (http://127.0.0.1:8080)"},
    {"endpoint", KW_LOAD_OPT_CHOICE, KW_O(endpoint), .choices = kw_load_endpoints, .identity = 1,
     .help = "chat: /v1/chat/completions, the receiver's chat template applied by the server, as the C2C harness "
             "does (default); completions: /v1/completions, the prompt as given"},
    {"timeout_ms", KW_LOAD_OPT_INT, KW_O(timeout_ms), 0, 86400000,
     .help = "per-request timeout in ms, 0 none (600000)"},
    {"dataset_name", KW_LOAD_OPT_STR, KW_O(dataset_name), .identity = 1,
     .help = "prompts, mmlu-redux, openbookqa, ai2-arc, ceval or gsm8k (prompts)"},
    {"dataset_path", KW_LOAD_OPT_STR, KW_O(dataset_path), .identity = 1, .help = "the dataset's JSONL file"},
    {"use_cot", KW_LOAD_OPT_BOOL, KW_O(use_cot), .identity = 1, .help = "the reference's CoT prompt (false)"},
    {"use_template", KW_LOAD_OPT_BOOL, KW_O(use_template), .identity = 1,
     .help = "the reference's instruction template (true)"},
    {"limit", KW_LOAD_OPT_INT, KW_O(limit), 0, INT64_MAX, .identity = 1,
     .help = "read only the first N rows of the file, 0 all (0)"},
    {"shuffle", KW_LOAD_OPT_BOOL, KW_O(shuffle), .identity = 1,
     .help = "send the items in a seeded random order instead of the file's (false)"},
    {"num_prompts", KW_LOAD_OPT_INT, KW_O(num_prompts), 0, 1000000000, .identity = 1,
     .help = "measured requests, cycling through the items; 0: each evaluated item once (0)"},
    {"duration_s", KW_LOAD_OPT_REAL, KW_O(duration_s), .rmin = 0, .rmax = 1e7, .identity = 1,
     .help = "stop sending after this many seconds, 0 no limit (0)"},
    {"max_concurrency", KW_LOAD_OPT_INT, KW_O(max_concurrency), 0, 100000, .identity = 1,
     .help = "requests in flight at most; with request_rate inf this is the closed loop's N; 0 no limit (1)"},
    {"request_rate", KW_LOAD_OPT_REAL, KW_O(request_rate), .rmin = 0, .rmax = INFINITY, .min_open = 1, .identity = 1,
     .help = "open loop: requests/s with gamma gaps; inf: closed loop (inf)"},
    {"burstiness", KW_LOAD_OPT_REAL, KW_O(burstiness), .rmin = 0, .rmax = 1e6, .min_open = 1, .identity = 1,
     .help = "gamma shape of the open-loop gaps: 1 Poisson, < 1 burstier (1)"},
    {"num_warmups", KW_LOAD_OPT_INT, KW_O(num_warmups), 0, 1000000, .identity = 1,
     .help = "requests sent before the measured ones and not counted (0)"},
    {"seed", KW_LOAD_OPT_INT, KW_O(seed), 0, INT64_MAX, .identity = 1,
     .help = "seed of every random choice: order, arrivals, bootstrap (0)"},
    {"max_tokens", KW_LOAD_OPT_INT, KW_O(max_tokens), -1, 1000000, .identity = 1,
     .help = "tokens to generate; -1: the server's default (-1)"},
    {"stream", KW_LOAD_OPT_BOOL, KW_O(stream), .identity = 1,
     .help = "server-sent events; TTFT, TPOT and ITL need them (true)"},
    {"kvwire", KW_LOAD_OPT_JSON, KW_O(kvwire), .identity = 1,
     .help = "the request's kvwire object as JSON, e.g. '{\"mode\":\"c2c\",\"policy\":{\"codec\":\"int4\"}}'"},
    {"record_logprobs", KW_LOAD_OPT_INT, KW_O(record_logprobs), 0, 20, .identity = 1,
     .help = "record each output's token ids and top-K log-probabilities (a reference run: 20), 0 off (0)"},
    {"reference", KW_LOAD_OPT_STR, KW_O(reference), .identity = 1,
     .help = "run folder of a reference run (full transfer, no quantization) to judge this policy against"},
    {"teacher_forcing", KW_LOAD_OPT_BOOL, KW_O(teacher_forcing), .identity = 1,
     .help = "with --reference: replay the reference's tokens under this policy, for top-1 agreement and KL (true)"},
    {"bootstrap_resamples", KW_LOAD_OPT_INT, KW_O(bootstrap_resamples), 1, 10000000, .identity = 1,
     .help = "resamples of the 95% bootstrap intervals (10000)"},
    {"out", KW_LOAD_OPT_STR, KW_O(out), .help = "the run folder to write (records.jsonl, summary.json, ...)"},
    {"name", KW_LOAD_OPT_STR, KW_O(name), .help = "the run's label in reports (the folder's name)"},
    {"family", KW_LOAD_OPT_STR, KW_O(family), .help = "the policy family in reports (from the kvwire object)"},
    {"progress", KW_LOAD_OPT_CHOICE, KW_O(progress), .choices = kw_load_progress_modes,
     .help = "auto: a bar on a terminal, plain lines otherwise; always; never (auto)"},
};
#undef KW_O
#define KW_LOAD_N_OPTS (sizeof(kw_load_opts) / sizeof(kw_load_opts[0]))

void kw_load_config_default(kw_load_config *c) {
    memset(c, 0, sizeof(*c));
    c->endpoint = KW_LOAD_API_CHAT;
    c->timeout_ms = 600000;
    c->use_template = 1;
    c->max_concurrency = 1;
    c->request_rate = INFINITY;
    c->burstiness = 1.0;
    c->max_tokens = -1;
    c->stream = 1;
    c->teacher_forcing = 1;
    c->bootstrap_resamples = 10000;
}

static char **kw_load_str_field(kw_load_config *c, const kw_load_opt *o) {
    return (char **)((char *)c + o->offset);
}

void kw_load_config_free(kw_load_config *c) {
    if (!c) return;
    for (size_t i = 0; i < KW_LOAD_N_OPTS; ++i)
        if (kw_load_opts[i].type == KW_LOAD_OPT_STR) free(*kw_load_str_field(c, &kw_load_opts[i]));
    cJSON_Delete(c->kvwire);
    kw_load_config_default(c);
}

int kw_load_config_copy(const kw_load_config *src, kw_load_config *dst) {
    kw_load_config c = *src;
    for (size_t i = 0; i < KW_LOAD_N_OPTS; ++i)
        if (kw_load_opts[i].type == KW_LOAD_OPT_STR) *kw_load_str_field(&c, &kw_load_opts[i]) = NULL;
    c.kvwire = NULL;
    int rc = 0;
    for (size_t i = 0; i < KW_LOAD_N_OPTS; ++i) {
        if (kw_load_opts[i].type != KW_LOAD_OPT_STR) continue;
        const char *s = *kw_load_str_field((kw_load_config *)src, &kw_load_opts[i]);
        if (!s) continue;
        char *d = strdup(s);
        KW_CHECK_IF(!d, KW_E_NOMEM, "out of memory");
        *kw_load_str_field(&c, &kw_load_opts[i]) = d;
    }
    if (src->kvwire) {
        c.kvwire = cJSON_Duplicate(src->kvwire, 1);
        KW_CHECK_IF(!c.kvwire, KW_E_NOMEM, "out of memory");
    }
    *dst = c;
    return 0;
out:
    kw_load_config_free(&c);
    return rc;
}

/* The table entry for key; '-' and '_' are the same. */
static const kw_load_opt *kw_load_opt_find(const char *key) {
    char norm[64];
    size_t n = strlen(key);
    if (n >= sizeof(norm)) return NULL;
    for (size_t i = 0; i <= n; ++i)
        norm[i] = key[i] == '-' ? '_' : key[i];
    for (size_t i = 0; i < KW_LOAD_N_OPTS; ++i)
        if (strcmp(kw_load_opts[i].name, norm) == 0) return &kw_load_opts[i];
    return NULL;
}

int kw_load_config_is_flag(const char *key) {
    const kw_load_opt *o = kw_load_opt_find(key);
    return o && o->type == KW_LOAD_OPT_BOOL;
}

static int kw_load_set_str(kw_load_config *c, const kw_load_opt *o, const char *value) {
    char **field = kw_load_str_field(c, o);
    char *d = NULL;
    if (value) {
        d = strdup(value);
        KW_RETURN_IF(!d, KW_E_NOMEM, "out of memory");
    }
    free(*field);
    *field = d;
    return 0;
}

static int kw_load_set_int(kw_load_config *c, const kw_load_opt *o, int64_t v) {
    KW_RETURN_IF(v < o->min || v > o->max, KW_E_PARSE, "%s must be an integer in [%lld, %lld] (got %lld)", o->name,
                 (long long)o->min, (long long)o->max, (long long)v);
    *(int64_t *)((char *)c + o->offset) = v;
    return 0;
}

static int kw_load_set_real(kw_load_config *c, const kw_load_opt *o, double v) {
    const int below = o->min_open ? !(v > o->rmin) : !(v >= o->rmin);
    KW_RETURN_IF(isnan(v) || below || v > o->rmax, KW_E_PARSE, "%s must be a number %s %g%s (got %g)", o->name,
                 o->min_open ? ">" : ">=", o->rmin, isinf(o->rmax) ? " or inf" : "", v);
    *(double *)((char *)c + o->offset) = v;
    return 0;
}

static int kw_load_set_choice(kw_load_config *c, const kw_load_opt *o, const char *value) {
    for (int i = 0; o->choices[i]; ++i) {
        if (strcmp(o->choices[i], value) == 0) {
            *(int *)((char *)c + o->offset) = i;
            return 0;
        }
    }
    KW_FAIL(KW_E_PARSE, "%s: \"%s\" is not one of the accepted values", o->name, value);
}

static int kw_load_set_kvwire(kw_load_config *c, const cJSON *v) {
    KW_RETURN_IF(v && !cJSON_IsNull(v) && !cJSON_IsObject(v), KW_E_PARSE, "kvwire must be a JSON object");
    cJSON *d = NULL;
    if (v && cJSON_IsObject(v)) {
        d = cJSON_Duplicate(v, 1);
        KW_RETURN_IF(!d, KW_E_NOMEM, "out of memory");
    }
    cJSON_Delete(c->kvwire);
    c->kvwire = d;
    return 0;
}

static int kw_load_parse_bool(const char *s, int *out) {
    static const char *const yes[] = {"true", "yes", "on", "1"}, *const no[] = {"false", "no", "off", "0"};
    for (int i = 0; i < 4; ++i) {
        if (strcasecmp(s, yes[i]) == 0) return *out = 1, 0;
        if (strcasecmp(s, no[i]) == 0) return *out = 0, 0;
    }
    return -1;
}

int kw_load_config_set(kw_load_config *c, const char *key, const char *value) {
    const kw_load_opt *o = kw_load_opt_find(key);
    KW_RETURN_IF(!o, KW_E_NOT_FOUND, "unknown option \"%s\"", key);
    switch (o->type) {
    case KW_LOAD_OPT_STR:
        return kw_load_set_str(c, o, value);
    case KW_LOAD_OPT_INT: {
        errno = 0;
        char *end = NULL;
        const long long v = strtoll(value, &end, 10);
        KW_RETURN_IF(errno || end == value || *end, KW_E_PARSE, "%s: \"%s\" is not an integer", o->name, value);
        return kw_load_set_int(c, o, (int64_t)v);
    }
    case KW_LOAD_OPT_REAL: {
        if (strcasecmp(value, "inf") == 0) return kw_load_set_real(c, o, INFINITY);
        char *end = NULL;
        const double v = strtod(value, &end);
        KW_RETURN_IF(end == value || *end || isinf(v), KW_E_PARSE, "%s: \"%s\" is not a number", o->name, value);
        return kw_load_set_real(c, o, v);
    }
    case KW_LOAD_OPT_BOOL: {
        int b = 0;
        KW_RETURN_IF(kw_load_parse_bool(value, &b) < 0, KW_E_PARSE, "%s: \"%s\" is not true or false", o->name, value);
        *(int *)((char *)c + o->offset) = b;
        return 0;
    }
    case KW_LOAD_OPT_CHOICE:
        return kw_load_set_choice(c, o, value);
    case KW_LOAD_OPT_JSON: {
        cJSON *v = NULL;
        const int rc = kw_json_parse(value, strlen(value), &v);
        KW_RETURN_IF(rc < 0, KW_E_PARSE, "%s: not JSON (%s)", o->name, kw_error_detail());
        const int rc2 = kw_load_set_kvwire(c, v);
        cJSON_Delete(v);
        return rc2;
    }
    }
    KW_FAIL(KW_E_INTERNAL, "option type %d", (int)o->type);
}

int kw_load_config_set_json(kw_load_config *c, const char *key, const cJSON *v) {
    const kw_load_opt *o = kw_load_opt_find(key);
    KW_RETURN_IF(!o, KW_E_NOT_FOUND, "unknown option \"%s\"", key);
    switch (o->type) {
    case KW_LOAD_OPT_STR:
        KW_RETURN_IF(!cJSON_IsString(v) && !cJSON_IsNull(v), KW_E_PARSE, "%s must be a string", o->name);
        return kw_load_set_str(c, o, cJSON_IsString(v) ? v->valuestring : NULL);
    case KW_LOAD_OPT_INT: {
        int64_t i = 0;
        KW_RETURN_IF(kw_json_to_i64(v, INT64_MIN, INT64_MAX, &i) < 0, KW_E_PARSE, "%s must be an integer", o->name);
        return kw_load_set_int(c, o, i);
    }
    case KW_LOAD_OPT_REAL:
        if (cJSON_IsString(v) && strcasecmp(v->valuestring, "inf") == 0) return kw_load_set_real(c, o, INFINITY);
        KW_RETURN_IF(!cJSON_IsNumber(v), KW_E_PARSE, "%s must be a number (or \"inf\")", o->name);
        return kw_load_set_real(c, o, v->valuedouble);
    case KW_LOAD_OPT_BOOL:
        KW_RETURN_IF(!cJSON_IsBool(v), KW_E_PARSE, "%s must be true or false", o->name);
        *(int *)((char *)c + o->offset) = cJSON_IsTrue(v);
        return 0;
    case KW_LOAD_OPT_CHOICE:
        KW_RETURN_IF(!cJSON_IsString(v), KW_E_PARSE, "%s must be a string", o->name);
        return kw_load_set_choice(c, o, v->valuestring);
    case KW_LOAD_OPT_JSON:
        return kw_load_set_kvwire(c, v);
    }
    KW_FAIL(KW_E_INTERNAL, "option type %d", (int)o->type);
}

int kw_load_config_apply_json(kw_load_config *c, const cJSON *obj, const char *what) {
    KW_RETURN_IF(!cJSON_IsObject(obj), KW_E_PARSE, "%s: run options must be a mapping", what);
    for (const cJSON *m = obj->child; m; m = m->next) {
        const int rc = kw_load_config_set_json(c, m->string, m);
        /* In a file, an unknown key is a malformed file. */
        if (rc < 0) return kw_error_set(rc == KW_E_NOT_FOUND ? KW_E_PARSE : rc, "%s: %s", what, kw_error_detail());
    }
    return 0;
}

int kw_load_config_validate(const kw_load_config *c) {
    enum kw_load_dataset_kind kind;
    KW_RETURN_IF(c->url && !*c->url, KW_E_INVALID_ARG, "an empty url");
    KW_RETURN_IF(!c->dataset_path || !*c->dataset_path, KW_E_INVALID_ARG, "no dataset_path given");
    KW_RETURN_IF(kw_load_dataset_parse_name(c->dataset_name ? c->dataset_name : "prompts", &kind) < 0, KW_E_INVALID_ARG,
                 "%s", kw_error_detail());
    KW_RETURN_IF(isinf(c->request_rate) && c->max_concurrency == 0, KW_E_INVALID_ARG,
                 "a closed loop (request_rate inf) needs max_concurrency >= 1");
    KW_RETURN_IF(c->teacher_forcing && c->reference && c->max_tokens == 0, KW_E_INVALID_ARG,
                 "teacher forcing replays generated tokens: max_tokens 0 generates none");
    return 0;
}

cJSON *kw_load_config_to_json(const kw_load_config *c, int identity_only) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    for (size_t i = 0; i < KW_LOAD_N_OPTS; ++i) {
        const kw_load_opt *opt = &kw_load_opts[i];
        if (identity_only && !opt->identity) continue;
        const char *base = (const char *)c + opt->offset;
        cJSON *v = NULL;
        switch (opt->type) {
        case KW_LOAD_OPT_STR: {
            const char *s = *(char *const *)base;
            v = s ? cJSON_CreateString(s) : cJSON_CreateNull();
            break;
        }
        case KW_LOAD_OPT_INT:
            v = cJSON_CreateNumber((double)*(const int64_t *)base);
            break;
        case KW_LOAD_OPT_REAL: {
            const double d = *(const double *)base;
            v = isinf(d) ? cJSON_CreateString("inf") : cJSON_CreateNumber(d);
            break;
        }
        case KW_LOAD_OPT_BOOL:
            v = cJSON_CreateBool(*(const int *)base);
            break;
        case KW_LOAD_OPT_CHOICE:
            v = cJSON_CreateString(opt->choices[*(const int *)base]);
            break;
        case KW_LOAD_OPT_JSON:
            v = c->kvwire ? cJSON_Duplicate(c->kvwire, 1) : cJSON_CreateNull();
            break;
        }
        if (!v || !cJSON_AddItemToObject(o, opt->name, v)) {
            cJSON_Delete(v);
            cJSON_Delete(o);
            return NULL;
        }
    }
    return o;
}

void kw_load_config_help(FILE *out) {
    for (size_t i = 0; i < KW_LOAD_N_OPTS; ++i) {
        const kw_load_opt *o = &kw_load_opts[i];
        char flag[64];
        size_t n = 0;
        for (const char *p = o->name; *p && n + 1 < sizeof(flag); ++p)
            flag[n++] = *p == '_' ? '-' : *p;
        flag[n] = '\0';
        const char *arg = o->type == KW_LOAD_OPT_BOOL   ? "[BOOL]"
                          : o->type == KW_LOAD_OPT_JSON ? "JSON"
                          : o->type == KW_LOAD_OPT_INT  ? "N"
                          : o->type == KW_LOAD_OPT_REAL ? "X"
                                                        : "TEXT";
        fprintf(out, "  --%s %s\n      %s\n", flag, arg, o->help);
    }
}

const char *kw_load_config_url(const kw_load_config *c) {
    return c->url ? c->url : "http://127.0.0.1:8080";
}
