/* kw_receiverd_api.c: the request side of receiverd's HTTP API (docs/HTTP_API.md §2, §3, §5.1): a JSON body becomes a
 * kw_rd_spec with every default filled in, or a 400/404 with a message naming the field. Every field is checked
 * (type, range, unknown names); nothing here trusts the body. Pure: no I/O, no model (the vocabulary size is given).
 * Not here: responses (kw_receiverd.c), the pipeline (kw_receiverd_compute.c).
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_json.h"
#include "common/kw_status.h"
#include "receiver/kw_receiverd_internal.h"

typedef struct kw__rd_err {
    char *msg;
    size_t cap;
    const char **type;
    int *http;
} kw__rd_err;

static int kw__rd_fail(kw__rd_err *e, int status, int http, const char *type, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static int kw__rd_fail(kw__rd_err *e, int status, int http, const char *type, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, e->cap, fmt, ap);
    va_end(ap);
    *e->type = type;
    *e->http = http;
    return kw_error_set(status, "%s", e->msg);
}

#define KW__RD_BAD(e, ...) kw__rd_fail((e), KW_E_INVALID_ARG, 400, "invalid_request_error", __VA_ARGS__)

const char *kw_rd_mode_name(enum kw_rd_mode m) {
    static const char *const names[] = {"c2c", "kv_direct", "receiver_only", "text_relay"};
    return (unsigned)m < 4 ? names[m] : "?";
}

void kw_rd_spec_free(kw_rd_spec *s) {
    if (s == NULL) return;
    free(s->prompt);
    free(s->prompt_ids);
    for (size_t i = 0; i < s->n_messages; ++i)
        free(s->messages[i].role), free(s->messages[i].content);
    free(s->messages);
    for (int i = 0; i < s->n_stop; ++i)
        free(s->stop[i]);
    free(s->sharer), free(s->sharer_model), free(s->codec), free(s->granularity), free(s->scale);
    free(s->value_codec), free(s->value_granularity);
    free(s->layers);
    for (int i = 0; i < s->n_schedule; ++i)
        free(s->schedule[i].codec), free(s->schedule[i].granularity), free(s->schedule[i].scale);
    free(s->relay_question);
    free(s->force_ids);
    free(s->score_ids);
    free(s->n_score);
    memset(s, 0, sizeof *s);
}

// ---------------------------------------------------------------------------------------------------------------
// Field helpers

static int kw__rd_strdup(kw__rd_err *e, const char *s, char **out) {
    free(*out);
    *out = strdup(s);
    if (*out == NULL) return kw__rd_fail(e, KW_E_NOMEM, 500, "server_error", "out of memory");
    return 0;
}

static int kw__rd_int(kw__rd_err *e, const cJSON *v, const char *name, int64_t min, int64_t max, int64_t *out) {
    if (!cJSON_IsNumber(v) || kw_json_to_i64(v, min, max, out) < 0)
        return KW__RD_BAD(e, "%s: an integer in [%lld, %lld] is expected", name, (long long)min, (long long)max);
    return 0;
}

static int kw__rd_number(kw__rd_err *e, const cJSON *v, const char *name, double min, double max, double *out) {
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < min || v->valuedouble > max)
        return KW__RD_BAD(e, "%s: a number in [%g, %g] is expected", name, min, max);
    *out = v->valuedouble;
    return 0;
}

static int kw__rd_bool(kw__rd_err *e, const cJSON *v, const char *name, bool *out) {
    if (!cJSON_IsBool(v)) return KW__RD_BAD(e, "%s: true or false is expected", name);
    *out = cJSON_IsTrue(v);
    return 0;
}

static int kw__rd_string(kw__rd_err *e, const cJSON *v, const char *name, const char **out) {
    if (!cJSON_IsString(v) || v->valuestring == NULL) return KW__RD_BAD(e, "%s: a string is expected", name);
    *out = v->valuestring;
    return 0;
}

/* The index of s in names (NULL-terminated), or a 400 naming the choices. */
static int kw__rd_choice(kw__rd_err *e, const cJSON *v, const char *name, const char *const *names, int *out) {
    const char *s = NULL;
    KW_FORWARD(kw__rd_string(e, v, name, &s));
    for (int i = 0; names[i]; ++i)
        if (strcmp(s, names[i]) == 0) return *out = i, 0;
    char list[256] = "";
    size_t at = 0;
    for (int i = 0; names[i] && at < sizeof list; ++i)
        at += (size_t)snprintf(list + at, sizeof list - at, "%s%s", i ? ", " : "", names[i]);
    return KW__RD_BAD(e, "%s: \"%s\" is not one of %s", name, s, list);
}

/* The index of s in names (NULL-terminated), or -1. */
static int kw__rd_index(const char *s, const char *const *names) {
    for (int i = 0; names[i]; ++i)
        if (strcmp(s, names[i]) == 0) return i;
    return -1;
}

static bool kw__rd_in(const char *s, const char *const *names) {
    return kw__rd_index(s, names) >= 0;
}

/* An array of token ids in [0, vocab) (at most max entries). *out is malloc'ed (NULL for an empty array). */
static int kw__rd_ids(kw__rd_err *e, const cJSON *v, const char *name, int32_t vocab, int64_t max, int32_t **out,
                      int64_t *n) {
    if (!cJSON_IsArray(v)) return KW__RD_BAD(e, "%s: an array of token ids is expected", name);
    const int count = cJSON_GetArraySize(v);
    if (count > max) return KW__RD_BAD(e, "%s: %d entries, at most %lld", name, count, (long long)max);
    int32_t *ids = count ? malloc((size_t)count * sizeof *ids) : NULL;
    if (count && !ids) return kw__rd_fail(e, KW_E_NOMEM, 500, "server_error", "out of memory");
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, v) {
        int64_t x = 0;
        if (kw__rd_int(e, it, name, 0, vocab - 1, &x) < 0) {
            free(ids);
            return kw__rd_fail(e, KW_E_TOKEN_ID, 400, "invalid_request_error",
                               "%s[%d]: a token id in [0, %d) is expected", name, i, (int)vocab);
        }
        ids[i++] = (int32_t)x;
    }
    free(*out);
    *out = ids;
    *n = count;
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// The kvwire object (§5.1)

static const char *const kw__rd_modes[] = {"c2c", "kv_direct", "receiver_only", "text_relay", NULL};
static const char *const kw__rd_selections[] = {
    "full", "front", "back", "random", "knorm_topk", "vnorm_topk", "proj_vnorm_topk", "delta_proj_vnorm_topk", NULL};
static const char *const kw__rd_scorings[] = {"local", "receiver", NULL};
static const char *const kw__rd_orders[] = {"front", "back", NULL};
static const char *const kw__rd_budget_modes[] = {"tokens", "kvcomm_like", "qkvcomm_like",
                                                  NULL}; /* kw_wire_budget_mode */
static const char *const kw__rd_fusions[] = {"sequential", "parallel", NULL};
static const char *const kw__rd_codec_fields[] = {
    "codec", "granularity", "scale", "value_codec", "value_granularity", "value_scale", NULL};
static const char *const kw__rd_relay_styles[] = {"generated", "raw", "extractive", NULL}; /* enum kw_relay_style */

/* codec/granularity/scale as given (or the defaults), into spec; the KVWire v1.1 names too (int3, int2, -asym zero
 * points, channel<L>), which make the sharer send v1.1 blobs. */
static int kw__rd_codec(kw__rd_err *e, const char *where, char **codec, char **gran, char **scale,
                        kw_wire_codec_spec *spec) {
    if (kw_wire_spec_parse_v(*codec, *gran, *scale, KW_WIRE_VERSION_1_1, spec) < 0)
        return KW__RD_BAD(e, "%s: %s", where, kw_error_detail());
    return 0;
}

/* A code limit (FORMAT.md §5.14): an integer in 0..255, 0 for none. */
static int kw__rd_qmax(kw__rd_err *e, const cJSON *f, const char *name, uint8_t *out) {
    int64_t x = 0;
    KW_FORWARD(kw__rd_int(e, f, name, 0, 255, &x));
    *out = (uint8_t)x;
    return 0;
}

/* "k", "v", "kv" or "none" as K/V bits (rotate, clip). */
static int kw__rd_kv_bits(kw__rd_err *e, const cJSON *f, const char *name, uint8_t *out) {
    const char *str = NULL;
    KW_FORWARD(kw__rd_string(e, f, name, &str));
    if (strcmp(str, "none") != 0 && strcmp(str, "k") != 0 && strcmp(str, "v") != 0 && strcmp(str, "kv") != 0)
        return KW__RD_BAD(e, "%s: \"k\", \"v\", \"kv\" or \"none\" is expected", name);
    *out = (uint8_t)((strchr(str, 'k') ? 1 : 0) | (strchr(str, 'v') ? 2 : 0));
    return 0;
}

/* An entry's K spec from k[] = {codec, granularity, scale}, and its V spec: K's unless a V field is given in v[]
 * (NULL: not given), V's missing fields then K's. Errors name where ("kvwire.policy.schedule", ...). */
static int kw__rd_kv_specs(kw__rd_err *e, const char *where, const char *const k[3], const char *const v[3],
                           kw_wire_codec_spec *spec, kw_wire_codec_spec *spec_v) {
    if (kw_wire_spec_parse_v(k[0], k[1], k[2], KW_WIRE_VERSION_1_1, spec) < 0)
        return KW__RD_BAD(e, "%s: %s", where, kw_error_detail());
    *spec_v = *spec;
    if ((v[0] || v[1] || v[2]) && kw_wire_spec_parse_v(v[0] ? v[0] : k[0], v[1] ? v[1] : k[1], v[2] ? v[2] : k[2],
                                                       KW_WIRE_VERSION_1_1, spec_v) < 0)
        return KW__RD_BAD(e, "%s.value_codec: %s", where, kw_error_detail());
    return 0;
}

static int kw__rd_schedule(kw__rd_err *e, const cJSON *v, kw_rd_spec *s) {
    if (!cJSON_IsArray(v)) return KW__RD_BAD(e, "kvwire.policy.schedule: an array is expected");
    if (cJSON_GetArraySize(v) > KW_RD_MAX_SCHEDULE)
        return KW__RD_BAD(e, "kvwire.policy.schedule: at most %d entries", KW_RD_MAX_SCHEDULE);
    const cJSON *it;
    cJSON_ArrayForEach(it, v) {
        if (!cJSON_IsObject(it)) return KW__RD_BAD(e, "kvwire.policy.schedule: objects are expected");
        kw_rd_schedule *r = &s->schedule[s->n_schedule++];
        memset(r, 0, sizeof *r);
        r->first = -1;
        KW_FORWARD(kw__rd_strdup(e, s->codec, &r->codec));
        KW_FORWARD(kw__rd_strdup(e, s->granularity, &r->granularity));
        KW_FORWARD(kw__rd_strdup(e, s->scale, &r->scale));
        const char *vcodec = NULL, *vgran = NULL, *vscale = NULL;
        const cJSON *f;
        cJSON_ArrayForEach(f, it) {
            const char *str = NULL;
            if (strcmp(f->string, "value_codec") == 0) {
                KW_FORWARD(kw__rd_string(e, f, "schedule.value_codec", &vcodec));
            } else if (strcmp(f->string, "value_granularity") == 0) {
                KW_FORWARD(kw__rd_string(e, f, "schedule.value_granularity", &vgran));
            } else if (strcmp(f->string, "value_scale") == 0) {
                KW_FORWARD(kw__rd_string(e, f, "schedule.value_scale", &vscale));
            } else if (strcmp(f->string, "rotate") == 0 || strcmp(f->string, "clip") == 0 ||
                       strcmp(f->string, "qmax_k") == 0 || strcmp(f->string, "qmax_v") == 0) {
                if (!r->own_options) /* those not given stay the policy's (parsed before the schedule) */
                    r->rotate = s->rotate, r->clip = s->clip, r->qmax_k = s->qmax_k, r->qmax_v = s->qmax_v;
                if (f->string[0] == 'q')
                    KW_FORWARD(kw__rd_qmax(e, f, f->string[5] == 'k' ? "schedule.qmax_k" : "schedule.qmax_v",
                                           f->string[5] == 'k' ? &r->qmax_k : &r->qmax_v));
                else
                    KW_FORWARD(kw__rd_kv_bits(e, f, f->string[0] == 'r' ? "schedule.rotate" : "schedule.clip",
                                              f->string[0] == 'r' ? &r->rotate : &r->clip));
                r->own_options = true;
            } else if (strcmp(f->string, "layers") == 0) {
                int64_t a = 0, b = 0;
                if (!cJSON_IsArray(f) || cJSON_GetArraySize(f) != 2 ||
                    kw__rd_int(e, cJSON_GetArrayItem(f, 0), "schedule.layers", 0, 1023, &a) < 0 ||
                    kw__rd_int(e, cJSON_GetArrayItem(f, 1), "schedule.layers", 0, 1023, &b) < 0 || b < a)
                    return KW__RD_BAD(e, "kvwire.policy.schedule.layers: [first, last] with first <= last < 1024");
                r->first = (int32_t)a, r->last = (int32_t)b;
            } else if (strcmp(f->string, "codec") == 0) {
                KW_FORWARD(kw__rd_string(e, f, "schedule.codec", &str));
                KW_FORWARD(kw__rd_strdup(e, str, &r->codec));
            } else if (strcmp(f->string, "granularity") == 0) {
                KW_FORWARD(kw__rd_string(e, f, "schedule.granularity", &str));
                KW_FORWARD(kw__rd_strdup(e, str, &r->granularity));
            } else if (strcmp(f->string, "scale") == 0) {
                KW_FORWARD(kw__rd_string(e, f, "schedule.scale", &str));
                KW_FORWARD(kw__rd_strdup(e, str, &r->scale));
            } else {
                return KW__RD_BAD(e, "kvwire.policy.schedule: unknown field \"%s\"", f->string);
            }
        }
        if (r->first < 0) return KW__RD_BAD(e, "kvwire.policy.schedule: every entry needs layers [first, last]");
        const char *const kf[3] = {r->codec, r->granularity, r->scale}, *const vf[3] = {vcodec, vgran, vscale};
        KW_FORWARD(kw__rd_kv_specs(e, "kvwire.policy.schedule", kf, vf, &r->spec, &r->spec_v));
    }
    return 0;
}

/* token_schedule (HTTP_API.md §5.1): entries {"first": N | "last": N | "positions": [...], "codec", "granularity",
 * "scale", "value_codec", "value_granularity", "value_scale"}, the K fields defaulting to the policy's, V's missing
 * fields to the entry's K fields (as a schedule entry's); overlaps are the protocol's check (SharePolicy). */
static int kw__rd_token_schedule(kw__rd_err *e, const cJSON *v, kw_rd_spec *s) {
    if (!cJSON_IsArray(v)) return KW__RD_BAD(e, "kvwire.policy.token_schedule: an array is expected");
    if (cJSON_GetArraySize(v) > KW_PROTO_MAX_TOKEN_POLICIES)
        return KW__RD_BAD(e, "kvwire.policy.token_schedule: at most %d entries", KW_PROTO_MAX_TOKEN_POLICIES);
    const cJSON *it;
    cJSON_ArrayForEach(it, v) {
        if (!cJSON_IsObject(it)) return KW__RD_BAD(e, "kvwire.policy.token_schedule: objects are expected");
        kw_rd_token_schedule *r = &s->token_schedule[s->n_token_schedule++];
        memset(r, 0, sizeof *r);
        /* codec, granularity, scale (default: the policy's), then V's (NULL: the entry's) */
        const char *cf[6] = {s->codec, s->granularity, s->scale, NULL, NULL, NULL};
        int selectors = 0;
        const cJSON *f;
        cJSON_ArrayForEach(f, it) {
            int64_t x = 0;
            int c = 0;
            if (strcmp(f->string, "first") == 0 || strcmp(f->string, "last") == 0) {
                KW_FORWARD(kw__rd_int(e, f, "kvwire.policy.token_schedule.first/last", 1, KW_RD_MAX_MAX_TOKENS, &x));
                *(f->string[0] == 'f' ? &r->first : &r->last) = (uint32_t)x;
                ++selectors;
            } else if (strcmp(f->string, "positions") == 0) {
                if (r->n_positions > 0) /* a repeated key (the JSON parser keeps both): never append past the array */
                    return KW__RD_BAD(e, "kvwire.policy.token_schedule: \"positions\" given twice in one entry");
                if (!cJSON_IsArray(f) || cJSON_GetArraySize(f) < 1 || cJSON_GetArraySize(f) > KW_RD_MAX_TOKEN_POSITIONS)
                    return KW__RD_BAD(e, "kvwire.policy.token_schedule.positions: 1..%d positions are expected",
                                      KW_RD_MAX_TOKEN_POSITIONS);
                const cJSON *pos;
                cJSON_ArrayForEach(pos, f) {
                    KW_FORWARD(kw__rd_int(e, pos, "kvwire.policy.token_schedule.positions[]", 0,
                                          KW_RD_MAX_MAX_TOKENS - 1, &x));
                    if (r->n_positions > 0 && (uint32_t)x <= r->positions[r->n_positions - 1])
                        return KW__RD_BAD(e, "kvwire.policy.token_schedule.positions: strictly increasing positions "
                                             "are expected");
                    if (r->n_positions >= KW_RD_MAX_TOKEN_POSITIONS)
                        return KW__RD_BAD(e, "kvwire.policy.token_schedule.positions: at most %d positions",
                                          KW_RD_MAX_TOKEN_POSITIONS);
                    r->positions[r->n_positions++] = (uint32_t)x;
                }
                ++selectors;
            } else if ((c = kw__rd_index(f->string, kw__rd_codec_fields)) >= 0) {
                char name[48];
                snprintf(name, sizeof name, "token_schedule.%s", f->string);
                KW_FORWARD(kw__rd_string(e, f, name, &cf[c]));
            } else {
                return KW__RD_BAD(e, "kvwire.policy.token_schedule: unknown field \"%s\"", f->string);
            }
        }
        if (selectors != 1)
            return KW__RD_BAD(e, "kvwire.policy.token_schedule: each entry needs exactly one of first, last and "
                                 "positions");
        KW_FORWARD(kw__rd_kv_specs(e, "kvwire.policy.token_schedule", cf, cf + 3, &r->spec, &r->spec_v));
    }
    Kwctl__TokenPolicy t[KW_PROTO_MAX_TOKEN_POLICIES], *ptrs[KW_PROTO_MAX_TOKEN_POLICIES]; /* the protocol's check */
    for (int i = 0; i < s->n_token_schedule; ++i) {
        kwctl__token_policy__init(&t[i]);
        t[i].first = s->token_schedule[i].first;
        t[i].last = s->token_schedule[i].last;
        t[i].positions = s->token_schedule[i].positions;
        t[i].n_positions = (size_t)s->token_schedule[i].n_positions;
        ptrs[i] = &t[i];
    }
    if (kw_proto_token_schedule_check(ptrs, (size_t)s->n_token_schedule) < 0)
        return KW__RD_BAD(e, "kvwire.policy.token_schedule: %s", kw_error_detail());
    return 0;
}

/* budget_codecs (an array of codec names; NULL: the budget mode's default set) with the policy's granularity and
 * scale. */
static int kw__rd_budget_codecs(kw__rd_err *e, const cJSON *v, kw_rd_spec *s) {
    static const char *const defaults[][4] = {{"int4", "int6", "int8", "bf16"}, {"int8"}, {"int4", "int8"}};
    static const int n_defaults[] = {4, 1, 2}, n_needed[] = {0, 1, 2}; /* by budget mode; 0: 1..8 */
    const char *names[KW_WIRE_ALLOC_MAX_CODECS];
    int n = 0;
    if (v == NULL) {
        for (n = 0; n < n_defaults[s->budget_mode]; ++n)
            names[n] = defaults[s->budget_mode][n];
    } else {
        if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) < 1 || cJSON_GetArraySize(v) > KW_WIRE_ALLOC_MAX_CODECS)
            return KW__RD_BAD(e, "kvwire.policy.budget_codecs: an array of 1..%d codec names is expected",
                              KW_WIRE_ALLOC_MAX_CODECS);
        const cJSON *it;
        cJSON_ArrayForEach(it, v) {
            KW_FORWARD(kw__rd_string(e, it, "kvwire.policy.budget_codecs[]", &names[n]));
            ++n;
        }
    }
    for (int i = 0; i < n; ++i)
        if (kw_wire_spec_parse_v(names[i], s->granularity, s->scale, KW_WIRE_VERSION_1_1, &s->budget_codecs[i]) < 0)
            return KW__RD_BAD(e, "kvwire.policy.budget_codecs: %s", kw_error_detail());
    s->n_budget_codecs = n;
    if (n_needed[s->budget_mode] && n != n_needed[s->budget_mode])
        return KW__RD_BAD(e, "kvwire.policy.budget_codecs: budget_mode %s takes %d codec(s)",
                          kw_wire_budget_mode_name((enum kw_wire_budget_mode)s->budget_mode), n_needed[s->budget_mode]);
    const kw_wire_header shape = {.n_kv_heads = 1, .head_dim = 1024}; /* any head_dim the granularity divides */
    const kw_wire_alloc_options o = {.codecs = s->budget_codecs, .n_codecs = (uint32_t)n};
    if (kw_wire_alloc_check(&shape, &o) < 0) return KW__RD_BAD(e, "kvwire.policy.budget_codecs: %s", kw_error_detail());
    return 0;
}

static int kw__rd_policy(kw__rd_err *e, const cJSON *p, kw_rd_spec *s) {
    if (!cJSON_IsObject(p)) return KW__RD_BAD(e, "kvwire.policy: an object is expected");
    const cJSON *f, *schedule = NULL, *token_schedule = NULL, *budget_codecs = NULL;
    bool scoring_given = false;
    const char *preview = NULL;
    cJSON_ArrayForEach(f, p) {
        const char *k = f->string, *str = NULL;
        int64_t x = 0;
        int c = 0;
        if (strcmp(k, "selection") == 0) {
            KW_FORWARD(kw__rd_choice(e, f, "kvwire.policy.selection", kw__rd_selections, &c));
            s->select.mode = (enum kw_select_mode)c;
        } else if (strcmp(k, "proportion") == 0) {
            KW_FORWARD(kw__rd_number(e, f, "kvwire.policy.proportion", 0, 1, &s->select.proportion));
        } else if (strcmp(k, "min_tokens") == 0) {
            KW_FORWARD(kw__rd_int(e, f, "kvwire.policy.min_tokens", 1, 1 << 20, &s->select.min_tokens));
        } else if (strcmp(k, "seed") == 0) {
            KW_FORWARD(kw__rd_int(e, f, "kvwire.policy.seed", 0, KW_JSON_MAX_EXACT_INT, &x));
            s->select.seed = (uint64_t)x;
        } else if (strcmp(k, "codec") == 0) {
            KW_FORWARD(kw__rd_string(e, f, "kvwire.policy.codec", &str));
            KW_FORWARD(kw__rd_strdup(e, str, &s->codec));
        } else if (strcmp(k, "granularity") == 0) {
            KW_FORWARD(kw__rd_string(e, f, "kvwire.policy.granularity", &str));
            KW_FORWARD(kw__rd_strdup(e, str, &s->granularity));
        } else if (strcmp(k, "scale") == 0) {
            KW_FORWARD(kw__rd_string(e, f, "kvwire.policy.scale", &str));
            KW_FORWARD(kw__rd_strdup(e, str, &s->scale));
        } else if (strcmp(k, "value_codec") == 0) {
            KW_FORWARD(kw__rd_string(e, f, "kvwire.policy.value_codec", &str));
            KW_FORWARD(kw__rd_strdup(e, str, &s->value_codec));
        } else if (strcmp(k, "value_granularity") == 0) {
            KW_FORWARD(kw__rd_string(e, f, "kvwire.policy.value_granularity", &str));
            KW_FORWARD(kw__rd_strdup(e, str, &s->value_granularity));
        } else if (strcmp(k, "outliers") == 0) {
            KW_FORWARD(kw__rd_number(e, f, "kvwire.policy.outliers", 0, 1, &s->outliers));
        } else if (strcmp(k, "rotate") == 0 || strcmp(k, "clip") == 0) {
            const int rot = k[0] == 'r';
            KW_FORWARD(
                kw__rd_kv_bits(e, f, rot ? "kvwire.policy.rotate" : "kvwire.policy.clip", rot ? &s->rotate : &s->clip));
        } else if (strcmp(k, "qmax_k") == 0 || strcmp(k, "qmax_v") == 0) {
            const int key = k[5] == 'k';
            KW_FORWARD(kw__rd_qmax(e, f, key ? "kvwire.policy.qmax_k" : "kvwire.policy.qmax_v",
                                   key ? &s->qmax_k : &s->qmax_v));
        } else if (strcmp(k, "pre_rope_keys") == 0) {
            if (!cJSON_IsBool(f)) return KW__RD_BAD(e, "kvwire.policy.pre_rope_keys: a boolean is expected");
            s->pre_rope_keys = cJSON_IsTrue(f);
        } else if (strcmp(k, "zstd") == 0) {
            if (cJSON_IsBool(f)) {
                s->zstd_level = cJSON_IsTrue(f) ? 3 : 0;
            } else {
                KW_FORWARD(kw__rd_int(e, f, "kvwire.policy.zstd", -7, 22, &x));
                s->zstd_level = (int)x;
            }
        } else if (strcmp(k, "rans") == 0) {
            if (!cJSON_IsBool(f)) return KW__RD_BAD(e, "kvwire.policy.rans: a boolean is expected");
            s->rans = cJSON_IsTrue(f);
        } else if (strcmp(k, "layers") == 0) {
            int64_t n = 0;
            KW_FORWARD(kw__rd_ids(e, f, "kvwire.policy.layers", 1024, 1024, &s->layers, &n));
            s->n_layers = (int32_t)n;
            for (int32_t i = 1; i < s->n_layers; ++i)
                if (s->layers[i] <= s->layers[i - 1])
                    return KW__RD_BAD(e, "kvwire.policy.layers: strictly increasing sharer layers are expected");
            if (s->n_layers == 0) return KW__RD_BAD(e, "kvwire.policy.layers: empty");
        } else if (strcmp(k, "schedule") == 0) {
            schedule = f; /* after the codec fields, whatever their order */
        } else if (strcmp(k, "token_schedule") == 0) {
            token_schedule = f; /* after the codec fields, whatever their order */
        } else if (strcmp(k, "budget_bytes") == 0) {
            if (!cJSON_IsNull(f))
                KW_FORWARD(kw__rd_int(e, f, "kvwire.policy.budget_bytes", 1, INT64_MAX / 2, &s->budget_bytes));
        } else if (strcmp(k, "scoring") == 0) {
            KW_FORWARD(kw__rd_choice(e, f, "kvwire.policy.scoring", kw__rd_scorings, &s->scoring));
            scoring_given = true;
        } else if (strcmp(k, "preview") == 0) {
            KW_FORWARD(kw__rd_string(e, f, "kvwire.policy.preview", &preview));
        } else if (strcmp(k, "budget_mode") == 0) {
            KW_FORWARD(kw__rd_choice(e, f, "kvwire.policy.budget_mode", kw__rd_budget_modes, &s->budget_mode));
        } else if (strcmp(k, "budget_codecs") == 0) {
            budget_codecs = f; /* with the granularity and scale, whatever their order */
        } else if (strcmp(k, "recompute_prefix") == 0) {
            KW_FORWARD(
                kw__rd_int(e, f, "kvwire.policy.recompute_prefix", 0, KW_RD_MAX_MAX_TOKENS, &s->recompute_prefix));
        } else if (strcmp(k, "cache_proportion") == 0) {
            KW_FORWARD(kw__rd_number(e, f, "kvwire.policy.cache_proportion", 0, 1, &s->cache_proportion));
        } else if (strcmp(k, "order") == 0) {
            KW_FORWARD(kw__rd_choice(e, f, "kvwire.policy.order", kw__rd_orders, &c));
            s->order = c ? KW_FUSION_BACK : KW_FUSION_FRONT;
        } else {
            return KW__RD_BAD(e, "kvwire.policy: unknown field \"%s\"", k);
        }
    }
    /* the options of the sharer's encoder: neither the cache layout nor the allocator (budget_bytes) takes them */
    const bool encoder_options = s->outliers > 0 || s->pre_rope_keys || s->rotate || s->clip || s->qmax_k || s->qmax_v;
    s->cache_layout = s->codec && strcmp(s->codec, "cache") == 0;
    if (s->cache_layout) { /* the receiver's cache layout: the specs come with the request's resolution */
        if (s->value_codec || s->value_granularity || schedule || token_schedule || s->budget_bytes || encoder_options)
            return KW__RD_BAD(e, "kvwire.policy.codec: \"cache\" sets both codecs and their layout: not with "
                                 "value_codec, value_granularity, schedule, token_schedule, budget_bytes, outliers, "
                                 "pre_rope_keys, rotate, clip or qmax");
    } else {
        KW_FORWARD(kw__rd_codec(e, "kvwire.policy", &s->codec, &s->granularity, &s->scale, &s->spec));
    }
    s->spec_v = s->spec;
    if (s->value_codec || s->value_granularity) {
        char *vc = s->value_codec ? s->value_codec : s->codec,
             *vg = s->value_granularity ? s->value_granularity : s->granularity;
        KW_FORWARD(kw__rd_codec(e, "kvwire.policy.value_codec", &vc, &vg, &s->scale, &s->spec_v));
    }
    if (encoder_options && s->budget_bytes)
        return KW__RD_BAD(e, "kvwire.policy.outliers, pre_rope_keys, rotate, clip, qmax: not with budget_bytes");
    if ((s->value_codec || s->value_granularity) && (schedule || s->budget_bytes))
        return KW__RD_BAD(e, "kvwire.policy.value_codec: not with a schedule or budget_bytes");
    if (schedule) KW_FORWARD(kw__rd_schedule(e, schedule, s));
    if (budget_codecs && !s->budget_bytes) return KW__RD_BAD(e, "kvwire.policy.budget_codecs: needs budget_bytes");
    if (s->budget_mode && !s->budget_bytes) return KW__RD_BAD(e, "kvwire.policy.budget_mode: needs budget_bytes");
    if (scoring_given && !kw_select_mode_receiver_aware(s->select.mode))
        return KW__RD_BAD(e, "kvwire.policy.scoring: only for selections proj_vnorm_topk and delta_proj_vnorm_topk");
    if (preview && s->scoring != 1) return KW__RD_BAD(e, "kvwire.policy.preview: only with scoring receiver");
    if (s->scoring == 1) { /* the preview's codec: CODEC[:GRANULARITY], f32 scales (kvwire c2c --preview-codec) */
        char codec[32], gran[32] = "token";
        const char *spec = preview ? preview : "int4", *colon = strchr(spec, ':');
        const size_t n = colon ? (size_t)(colon - spec) : strlen(spec);
        if (n == 0 || n >= sizeof codec || (colon && strlen(colon + 1) >= sizeof gran))
            return KW__RD_BAD(e, "kvwire.policy.preview: \"CODEC[:GRANULARITY]\" is expected");
        memcpy(codec, spec, n);
        codec[n] = '\0';
        if (colon) snprintf(gran, sizeof gran, "%s", colon + 1);
        if (kw_wire_spec_parse_v(codec, gran, "f32", KW_WIRE_VERSION_1_1, &s->preview) < 0) /* v1.1 codecs too */
            return KW__RD_BAD(e, "kvwire.policy.preview: %s", kw_error_detail());
        if (s->budget_bytes) return KW__RD_BAD(e, "kvwire.policy.scoring: receiver takes no budget_bytes");
    }
    if (s->budget_bytes && schedule)
        return KW__RD_BAD(e, "kvwire.policy.schedule: not with budget_bytes (the allocator chooses the codecs)");
    if (s->budget_bytes && token_schedule)
        return KW__RD_BAD(e, "kvwire.policy.token_schedule: not with budget_bytes (the allocator chooses the codecs)");
    if (token_schedule) KW_FORWARD(kw__rd_token_schedule(e, token_schedule, s));
    if (s->budget_bytes) KW_FORWARD(kw__rd_budget_codecs(e, budget_codecs, s));
    return 0;
}

static int kw__rd_relay(kw__rd_err *e, const cJSON *r, kw_rd_spec *s) {
    if (!cJSON_IsObject(r)) return KW__RD_BAD(e, "kvwire.relay: an object is expected");
    const cJSON *f;
    cJSON_ArrayForEach(f, r) {
        const char *str = NULL;
        if (strcmp(f->string, "max_tokens") == 0) {
            KW_FORWARD(kw__rd_int(e, f, "kvwire.relay.max_tokens", 1, 1 << 20, &s->relay_max_tokens));
        } else if (strcmp(f->string, "max_bytes") == 0) {
            if (cJSON_IsNull(f))
                s->relay_max_bytes = -1;
            else
                KW_FORWARD(kw__rd_int(e, f, "kvwire.relay.max_bytes", 0, 1 << 20, &s->relay_max_bytes));
        } else if (strcmp(f->string, "question") == 0) {
            KW_FORWARD(kw__rd_string(e, f, "kvwire.relay.question", &str));
            if (!str[0]) return KW__RD_BAD(e, "kvwire.relay.question: empty");
            KW_FORWARD(kw__rd_strdup(e, str, &s->relay_question));
        } else if (strcmp(f->string, "style") == 0) {
            int c = 0;
            KW_FORWARD(kw__rd_choice(e, f, "kvwire.relay.style", kw__rd_relay_styles, &c));
            s->relay_style = (enum kw_relay_style)c;
        } else {
            return KW__RD_BAD(e, "kvwire.relay: unknown field \"%s\"", f->string);
        }
    }
    return 0;
}

/* The largest refine threshold (a margin in logits or an entropy in nats). */
#define KW__RD_MAX_REFINE_THRESHOLD 1e6

static int kw__rd_refine(kw__rd_err *e, const cJSON *r, kw_rd_spec *s) {
    if (!cJSON_IsObject(r)) return KW__RD_BAD(e, "kvwire.refine: an object is expected");
    const cJSON *f;
    bool threshold = false, proportion = false;
    cJSON_ArrayForEach(f, r) {
        const char *str = NULL;
        if (strcmp(f->string, "metric") == 0) {
            KW_FORWARD(kw__rd_string(e, f, "kvwire.refine.metric", &str));
            if (kw_refine_metric_parse(str, &s->refine_metric) < 0)
                return KW__RD_BAD(e, "kvwire.refine.metric: %s", kw_error_detail());
        } else if (strcmp(f->string, "threshold") == 0) {
            KW_FORWARD(
                kw__rd_number(e, f, "kvwire.refine.threshold", 0, KW__RD_MAX_REFINE_THRESHOLD, &s->refine_threshold));
            threshold = true;
        } else if (strcmp(f->string, "proportion") == 0) {
            KW_FORWARD(kw__rd_number(e, f, "kvwire.refine.proportion", 0, 1, &s->refine_proportion));
            proportion = true;
        } else {
            return KW__RD_BAD(e, "kvwire.refine: unknown field \"%s\"", f->string);
        }
    }
    if (!threshold) return KW__RD_BAD(e, "kvwire.refine.threshold: missing");
    if (!proportion) return KW__RD_BAD(e, "kvwire.refine.proportion: missing");
    s->refine = true;
    return 0;
}

static int kw__rd_score_ids(kw__rd_err *e, const cJSON *v, int32_t vocab, kw_rd_spec *s) {
    if (!cJSON_IsArray(v)) return KW__RD_BAD(e, "kvwire.score_ids: an array of arrays is expected");
    const int rows = cJSON_GetArraySize(v);
    if (rows > KW_RD_MAX_MAX_TOKENS) return KW__RD_BAD(e, "kvwire.score_ids: too many rows");
    s->score_ids = rows ? calloc((size_t)rows, sizeof *s->score_ids) : NULL;
    s->n_score = rows ? calloc((size_t)rows, sizeof *s->n_score) : NULL;
    if (rows && (!s->score_ids || !s->n_score)) return kw__rd_fail(e, KW_E_NOMEM, 500, "server_error", "out of memory");
    int r = 0;
    const cJSON *row;
    cJSON_ArrayForEach(row, v) {
        int32_t *ids = NULL;
        int64_t n = 0;
        KW_FORWARD(kw__rd_ids(e, row, "kvwire.score_ids[]", vocab, KW_RD_MAX_TOP, &ids, &n));
        if (n) memcpy(s->score_ids[r], ids, (size_t)n * sizeof *ids);
        free(ids);
        s->n_score[r++] = (int32_t)n;
    }
    return rows;
}

static int kw__rd_kvwire(kw__rd_err *e, const cJSON *k, int32_t vocab, kw_rd_spec *s, bool *max_tokens_given) {
    if (!cJSON_IsObject(k)) return KW__RD_BAD(e, "kvwire: an object is expected");
    const cJSON *f, *policy = NULL, *score = NULL;
    cJSON_ArrayForEach(f, k) {
        const char *str = NULL;
        int c = 0;
        if (strcmp(f->string, "mode") == 0) {
            KW_FORWARD(kw__rd_choice(e, f, "kvwire.mode", kw__rd_modes, &c));
            s->mode = (enum kw_rd_mode)c;
        } else if (strcmp(f->string, "sharer") == 0) {
            KW_FORWARD(kw__rd_string(e, f, "kvwire.sharer", &str));
            KW_FORWARD(kw__rd_strdup(e, str, &s->sharer));
        } else if (strcmp(f->string, "sharer_model") == 0) {
            KW_FORWARD(kw__rd_string(e, f, "kvwire.sharer_model", &str));
            KW_FORWARD(kw__rd_strdup(e, str, &s->sharer_model));
        } else if (strcmp(f->string, "policy") == 0) {
            policy = f;
        } else if (strcmp(f->string, "relay") == 0) {
            KW_FORWARD(kw__rd_relay(e, f, s));
        } else if (strcmp(f->string, "refine") == 0) {
            KW_FORWARD(kw__rd_refine(e, f, s));
        } else if (strcmp(f->string, "fusion") == 0) {
            KW_FORWARD(kw__rd_choice(e, f, "kvwire.fusion", kw__rd_fusions, &c));
            s->fusion = c ? KW_FUSION_PARALLEL : KW_FUSION_SEQUENTIAL;
        } else if (strcmp(f->string, "force_tokens") == 0) {
            int64_t n = 0;
            KW_FORWARD(kw__rd_ids(e, f, "kvwire.force_tokens", vocab, KW_RD_MAX_MAX_TOKENS, &s->force_ids, &n));
            if (n == 0) return KW__RD_BAD(e, "kvwire.force_tokens: empty");
            s->n_force = (int32_t)n;
        } else if (strcmp(f->string, "score_ids") == 0) {
            score = f;
        } else {
            return KW__RD_BAD(e, "kvwire: unknown field \"%s\"", f->string);
        }
    }
    if (policy) KW_FORWARD(kw__rd_policy(e, policy, s));
    if (s->force_ids) {
        if (*max_tokens_given && s->max_tokens != s->n_force)
            return KW__RD_BAD(e, "kvwire.force_tokens: %d tokens, but max_tokens is %lld", (int)s->n_force,
                              (long long)s->max_tokens);
        s->max_tokens = s->n_force;
        *max_tokens_given = true;
    }
    if (score) {
        if (!s->force_ids) return KW__RD_BAD(e, "kvwire.score_ids needs kvwire.force_tokens");
        const int rows = kw__rd_score_ids(e, score, vocab, s);
        if (rows < 0) return rows;
        if (rows != s->n_force)
            return KW__RD_BAD(e, "kvwire.score_ids: %d rows for %d forced tokens", rows, (int)s->n_force);
    }
    return 0;
}

/* A refinement asks for the tokens a larger proportion of the same ranking adds to the one sent section before the
 * last (receiver/kw_receive.h): so a selection that ranks, a larger proportion, no byte cap, the standard split. */
static int kw__rd_check_refine(kw__rd_err *e, const kw_rd_spec *s) {
    if (s->mode != KW_RD_MODE_C2C && s->mode != KW_RD_MODE_KV_DIRECT)
        return KW__RD_BAD(e, "kvwire.refine: only for modes c2c and kv_direct");
    if (s->select.mode == KW_SELECT_FULL) return KW__RD_BAD(e, "kvwire.refine: selection full sends every token");
    if (kw_select_mode_receiver_aware(s->select.mode))
        return KW__RD_BAD(e, "kvwire.refine: not with the receiver-aware selection %s",
                          kw_select_mode_name(s->select.mode));
    if (!(s->refine_proportion > s->select.proportion))
        return KW__RD_BAD(e, "kvwire.refine.proportion: %g must be above the policy's proportion %g",
                          s->refine_proportion, s->select.proportion);
    if (s->budget_bytes) return KW__RD_BAD(e, "kvwire.refine: not with kvwire.policy.budget_bytes");
    if (s->cache_proportion < 1.0)
        return KW__RD_BAD(e, "kvwire.refine: needs the standard sections (kvwire.policy.cache_proportion 1)");
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// The top level (§2, §3)

/* OpenAI fields this server does not implement: refused by name. */
static const char *const kw__rd_unsupported[] = {"best_of",
                                                 "frequency_penalty",
                                                 "presence_penalty",
                                                 "logit_bias",
                                                 "suffix",
                                                 "user",
                                                 "stream_options",
                                                 "response_format",
                                                 "tools",
                                                 "tool_choice",
                                                 "functions",
                                                 "function_call",
                                                 "parallel_tool_calls",
                                                 "max_completion_tokens",
                                                 "service_tier",
                                                 "store",
                                                 "metadata",
                                                 "modalities",
                                                 "audio",
                                                 "prediction",
                                                 "reasoning_effort",
                                                 "web_search_options",
                                                 NULL};

static int kw__rd_messages(kw__rd_err *e, const cJSON *v, kw_rd_spec *s) {
    static const char *const roles[] = {"system", "user", "assistant", NULL};
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) < 1) return KW__RD_BAD(e, "messages: a non-empty array is expected");
    if (s->messages) return KW__RD_BAD(e, "messages: given twice");
    const int n = cJSON_GetArraySize(v);
    if (n > 4096) return KW__RD_BAD(e, "messages: at most 4096");
    s->messages = calloc((size_t)n, sizeof *s->messages);
    if (!s->messages) return kw__rd_fail(e, KW_E_NOMEM, 500, "server_error", "out of memory");
    const cJSON *m;
    cJSON_ArrayForEach(m, v) {
        if (!cJSON_IsObject(m)) return KW__RD_BAD(e, "messages[%zu]: an object is expected", s->n_messages);
        kw_rd_message *out = &s->messages[s->n_messages++];
        const cJSON *f;
        cJSON_ArrayForEach(f, m) {
            const char *str = NULL;
            if (strcmp(f->string, "role") == 0) {
                int c = 0;
                KW_FORWARD(kw__rd_choice(e, f, "messages[].role", roles, &c));
                KW_FORWARD(kw__rd_strdup(e, roles[c], &out->role));
            } else if (strcmp(f->string, "content") == 0) {
                KW_FORWARD(kw__rd_string(e, f, "messages[].content", &str));
                KW_FORWARD(kw__rd_strdup(e, str, &out->content));
            } else {
                return KW__RD_BAD(e, "messages[%zu]: unknown field \"%s\"", s->n_messages - 1, f->string);
            }
        }
        if (!out->role || !out->content)
            return KW__RD_BAD(e, "messages[%zu]: role and content are required", s->n_messages - 1);
    }
    return 0;
}

static int kw__rd_stop(kw__rd_err *e, const cJSON *v, kw_rd_spec *s) {
    for (int i = 0; i < s->n_stop; ++i) /* given twice: the last one counts */
        free(s->stop[i]), s->stop[i] = NULL;
    s->n_stop = 0;
    if (cJSON_IsNull(v)) return 0;
    if (cJSON_IsString(v)) {
        if (!v->valuestring[0]) return KW__RD_BAD(e, "stop: an empty string");
        KW_FORWARD(kw__rd_strdup(e, v->valuestring, &s->stop[0]));
        s->n_stop = 1;
        return 0;
    }
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) > KW_RD_MAX_STOP)
        return KW__RD_BAD(e, "stop: a string or an array of up to %d strings is expected", KW_RD_MAX_STOP);
    const cJSON *it;
    cJSON_ArrayForEach(it, v) {
        if (!cJSON_IsString(it) || !it->valuestring[0]) return KW__RD_BAD(e, "stop: non-empty strings are expected");
        KW_FORWARD(kw__rd_strdup(e, it->valuestring, &s->stop[s->n_stop]));
        ++s->n_stop;
    }
    return 0;
}

static int kw__rd_defaults(kw__rd_err *e, const kw_receiverd_config *cfg, kw_rd_spec *s) {
    s->max_tokens = cfg->max_tokens;
    s->logprobs = -1;
    s->mode = (enum kw_rd_mode)cfg->def_mode;
    s->select = (kw_select_policy){.mode = (enum kw_select_mode)cfg->def_selection,
                                   .proportion = cfg->def_proportion,
                                   .min_tokens = cfg->def_min_tokens,
                                   .seed = (uint64_t)cfg->def_seed};
    KW_FORWARD(kw__rd_strdup(e, cfg->def_codec ? cfg->def_codec : "bf16", &s->codec));
    KW_FORWARD(kw__rd_strdup(e, cfg->def_granularity ? cfg->def_granularity : "token", &s->granularity));
    KW_FORWARD(kw__rd_strdup(e, cfg->def_scale ? cfg->def_scale : "f32", &s->scale));
    s->zstd_level = (int)cfg->def_zstd;
    s->rans = cfg->def_rans != 0;
    s->cache_proportion = cfg->def_cache_proportion;
    s->order = cfg->def_order ? KW_FUSION_BACK : KW_FUSION_FRONT;
    s->fusion = cfg->def_fusion ? KW_FUSION_PARALLEL : KW_FUSION_SEQUENTIAL;
    s->relay_max_tokens = cfg->relay_max_tokens;
    s->relay_max_bytes = cfg->relay_max_bytes;
    return 0;
}

static int kw__rd_parse_top(kw__rd_err *e, const cJSON *root, bool chat, const kw_receiverd_config *cfg, int32_t vocab,
                            const char *model_name, kw_rd_spec *s) {
    if (!cJSON_IsObject(root)) return KW__RD_BAD(e, "the body must be a JSON object");
    KW_FORWARD(kw__rd_defaults(e, cfg, s));
    bool max_tokens_given = false, have_prompt = false;
    int top_logprobs = -1;
    bool chat_logprobs = false;
    const cJSON *f, *kvwire = NULL;
    cJSON_ArrayForEach(f, root) {
        const char *k = f->string, *str = NULL;
        int64_t x = 0;
        double dv = 0;
        if (strcmp(k, "model") == 0) {
            KW_FORWARD(kw__rd_string(e, f, "model", &str));
            if (strcmp(str, model_name) != 0)
                return kw__rd_fail(e, KW_E_NOT_FOUND, 404, "invalid_request_error",
                                   "model \"%s\" is not served here (this is \"%s\")", str, model_name);
        } else if (!chat && strcmp(k, "prompt") == 0) {
            have_prompt = true;
            free(s->prompt), free(s->prompt_ids);
            s->prompt = NULL, s->prompt_ids = NULL, s->n_prompt_ids = 0;
            if (cJSON_IsString(f)) {
                KW_FORWARD(kw__rd_strdup(e, f->valuestring, &s->prompt));
            } else if (cJSON_IsArray(f) && cJSON_GetArraySize(f) > 0 && cJSON_IsNumber(cJSON_GetArrayItem(f, 0))) {
                KW_FORWARD(kw__rd_ids(e, f, "prompt", vocab, 1 << 20, &s->prompt_ids, &s->n_prompt_ids));
            } else {
                return KW__RD_BAD(e, "prompt: a string or a non-empty array of token ids is expected");
            }
        } else if (chat && strcmp(k, "messages") == 0) {
            have_prompt = true;
            KW_FORWARD(kw__rd_messages(e, f, s));
        } else if (strcmp(k, "max_tokens") == 0) {
            if (!cJSON_IsNull(f)) {
                KW_FORWARD(kw__rd_int(e, f, "max_tokens", 0, KW_RD_MAX_MAX_TOKENS, &s->max_tokens));
                max_tokens_given = true;
            }
        } else if (strcmp(k, "temperature") == 0) {
            KW_FORWARD(kw__rd_number(e, f, "temperature", 0, 2, &dv));
            if (dv != 0)
                return kw__rd_fail(e, KW_E_UNSUPPORTED, 400, "unsupported_parameter",
                                   "temperature: only 0 (greedy decoding) is served");
        } else if (strcmp(k, "top_p") == 0) {
            KW_FORWARD(kw__rd_number(e, f, "top_p", 0, 1, &dv));
            if (dv != 1)
                return kw__rd_fail(e, KW_E_UNSUPPORTED, 400, "unsupported_parameter", "top_p: only 1 is served");
        } else if (strcmp(k, "n") == 0) {
            KW_FORWARD(kw__rd_int(e, f, "n", 1, 128, &x));
            if (x != 1) return kw__rd_fail(e, KW_E_UNSUPPORTED, 400, "unsupported_parameter", "n: only 1 is served");
        } else if (strcmp(k, "stop") == 0) {
            KW_FORWARD(kw__rd_stop(e, f, s));
        } else if (strcmp(k, "stream") == 0) {
            KW_FORWARD(kw__rd_bool(e, f, "stream", &s->stream));
        } else if (strcmp(k, "ignore_eos") == 0) {
            if (!cJSON_IsNull(f)) KW_FORWARD(kw__rd_bool(e, f, "ignore_eos", &s->ignore_eos));
        } else if (!chat && strcmp(k, "echo") == 0) {
            KW_FORWARD(kw__rd_bool(e, f, "echo", &s->echo));
        } else if (!chat && strcmp(k, "logprobs") == 0) {
            if (!cJSON_IsNull(f)) {
                KW_FORWARD(kw__rd_int(e, f, "logprobs", 0, KW_RD_MAX_TOP, &x));
                s->logprobs = (int)x;
            }
        } else if (chat && strcmp(k, "logprobs") == 0) {
            if (!cJSON_IsNull(f)) KW_FORWARD(kw__rd_bool(e, f, "logprobs", &chat_logprobs));
        } else if (chat && strcmp(k, "top_logprobs") == 0) {
            if (!cJSON_IsNull(f)) {
                KW_FORWARD(kw__rd_int(e, f, "top_logprobs", 0, KW_RD_MAX_TOP, &x));
                top_logprobs = (int)x;
            }
        } else if (strcmp(k, "return_tokens_as_token_ids") == 0) {
            if (!cJSON_IsNull(f)) KW_FORWARD(kw__rd_bool(e, f, "return_tokens_as_token_ids", &s->token_ids));
        } else if (strcmp(k, "seed") == 0) {
            if (!cJSON_IsNull(f))
                KW_FORWARD(kw__rd_int(e, f, "seed", -KW_JSON_MAX_EXACT_INT, KW_JSON_MAX_EXACT_INT, &x));
        } else if (strcmp(k, "kvwire") == 0) {
            kvwire = f;
        } else if (kw__rd_in(k, kw__rd_unsupported) || (chat && strcmp(k, "echo") == 0) ||
                   (!chat && strcmp(k, "top_logprobs") == 0)) {
            return kw__rd_fail(e, KW_E_UNSUPPORTED, 400, "unsupported_parameter", "%s: not implemented by this server",
                               k);
        } else {
            return KW__RD_BAD(e, "unknown field \"%s\"", k);
        }
    }
    if (!have_prompt) return KW__RD_BAD(e, chat ? "messages: required" : "prompt: required");
    if (chat) {
        if (top_logprobs >= 0 && !chat_logprobs) return KW__RD_BAD(e, "top_logprobs needs logprobs: true");
        if (chat_logprobs) s->logprobs = top_logprobs >= 0 ? top_logprobs : 0;
    }
    if (kvwire) KW_FORWARD(kw__rd_kvwire(e, kvwire, vocab, s, &max_tokens_given));
    s->max_tokens_given = max_tokens_given;
    if (s->cache_layout && (s->mode != KW_RD_MODE_KV_DIRECT || cfg->cache_dtype < 3))
        return KW__RD_BAD(e, "kvwire.policy.codec: \"cache\" (the receiver's cache layout) is for mode kv_direct "
                             "with a quantized cache (cache.dtype int8, int6 or int4)");
    if (s->spec.codec == 0 && !s->cache_layout) { /* no policy object: the server's default codec */
        KW_FORWARD(kw__rd_codec(e, "defaults.codec", &s->codec, &s->granularity, &s->scale, &s->spec));
        s->spec_v = s->spec;
    }
    if (s->pre_rope_keys && s->mode != KW_RD_MODE_KV_DIRECT)
        return KW__RD_BAD(e, "kvwire.policy.pre_rope_keys: only for mode kv_direct (the receiver runs the sharer's "
                             "model, which rotates the keys back)");
    if (s->recompute_prefix && s->mode != KW_RD_MODE_KV_DIRECT)
        return KW__RD_BAD(e, "kvwire.policy.recompute_prefix: only for mode kv_direct (the receiver prefills the "
                             "prefix with the sharer's model, which only kv_direct runs)");
    if (s->echo && s->logprobs >= 0)
        return kw__rd_fail(e, KW_E_UNSUPPORTED, 400, "unsupported_parameter",
                           "echo with logprobs (scoring the prompt) is not implemented by this server");
    if (s->force_ids && s->stream) return KW__RD_BAD(e, "kvwire.force_tokens: teacher forcing does not stream");
    if (s->mode == KW_RD_MODE_TEXT_RELAY && !chat)
        return KW__RD_BAD(e, "kvwire.mode text_relay builds a conversation: use /v1/chat/completions");
    if (s->layers && s->mode != KW_RD_MODE_C2C)
        return KW__RD_BAD(e, "kvwire.policy.layers: only for mode c2c (kv_direct sends every layer)");
    if (s->budget_bytes && s->mode != KW_RD_MODE_C2C && s->mode != KW_RD_MODE_KV_DIRECT)
        return KW__RD_BAD(e, "kvwire.policy.budget_bytes: only for modes c2c and kv_direct");
    if (s->budget_mode == KW_WIRE_BUDGET_KVCOMM_LIKE && s->mode != KW_RD_MODE_C2C)
        return KW__RD_BAD(e, "kvwire.policy.budget_mode: kvcomm_like leaves layers out, only for mode c2c (kv_direct "
                             "needs every layer)");
    if (kw_select_mode_receiver_aware(s->select.mode) && s->mode != KW_RD_MODE_C2C)
        return KW__RD_BAD(e, "kvwire.policy.selection: %s scores through the fuser, only for mode c2c",
                          kw_select_mode_name(s->select.mode));
    if (kw_select_mode_receiver_aware(s->select.mode) && s->fusion == KW_FUSION_PARALLEL)
        return KW__RD_BAD(e, "kvwire.policy.selection: %s fuses per receiver layer subsets, not with fusion parallel",
                          kw_select_mode_name(s->select.mode));
    if (s->select.mode != KW_SELECT_FULL && kw_select_policy_check(&s->select) < 0)
        return KW__RD_BAD(e, "kvwire.policy: %s", kw_error_detail());
    if (s->select.mode != KW_SELECT_FULL && s->select.proportion <= 0)
        return KW__RD_BAD(e, "kvwire.policy.proportion: above 0 for selection %s", kw_select_mode_name(s->select.mode));
    return s->refine ? kw__rd_check_refine(e, s) : 0;
}

int kw_rd_fit_context(int64_t context, int64_t n_prompt, bool given, int64_t *max_tokens) {
    const int64_t room = context - n_prompt;
    if (room < 0 || (room == 0 && *max_tokens > 0 && !given) || (given && *max_tokens > room))
        KW_FAIL(KW_E_LIMIT,
                "the prompt (%lld tokens) and max_tokens (%lld) exceed the model's context of %lld tokens "
                "(max_position_embeddings)",
                (long long)n_prompt, (long long)*max_tokens, (long long)context);
    if (*max_tokens > room) *max_tokens = room;
    return 0;
}

int kw_rd_spec_parse(const char *body, size_t len, bool chat, const kw_receiverd_config *cfg, int32_t vocab,
                     const char *model_name, kw_rd_spec *out, char *err, size_t errcap, const char **err_type,
                     int *http_status) {
    kw__rd_err e = {err, errcap, err_type, http_status};
    memset(out, 0, sizeof *out);
    out->chat = chat;
    cJSON *root = NULL;
    if (kw_json_parse(body, len, &root) < 0)
        return kw__rd_fail(&e, KW_E_PARSE, 400, "invalid_request_error", "the body is not valid JSON: %s",
                           kw_error_detail());
    const int rc = kw__rd_parse_top(&e, root, chat, cfg, vocab, model_name, out);
    cJSON_Delete(root);
    if (rc < 0) kw_rd_spec_free(out);
    return rc;
}
