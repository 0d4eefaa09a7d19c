/* kw_load_stub.c: the fake receiverd of kw_load_stub.h: request validation as docs/HTTP_API.md states it, a toy
 * greedy "model" (hash-noise logits over 64 tokens), fake byte counts and stage timings, and responses in the OpenAI
 * shapes, whole or streamed with real delays. Every number in its kvwire block is made up; kvload's tests check that
 * kvload carries them through faithfully, not what they are.
 */
#include "loadgen/kw_load_stub.h"

#include "common/kw_buf.h"
#include "common/kw_json.h"
#include "common/kw_status.h"
#include "net/kw_http.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define KW_STUB_VOCAB   64
#define KW_STUB_EOS     0
#define KW_STUB_LAYERS  4
#define KW_STUB_HEADS   2
#define KW_STUB_DIM     16
#define KW_STUB_MAX_GEN 4096

struct kw_load_stub {
    kw_load_stub_config cfg;
    char model_name[128];
    uv_loop_t *loop;
    kw_http_server *http;
    uint64_t requests;   /* generation requests seen */
    uint64_t ok, failed; /* answered 200 / not */
    void (*done)(void *user);
    void *done_user;
};

// ---------------------------------------------------------------------------------------------------------------
// The toy model

static uint64_t kw_stub_mix(uint64_t a, uint64_t b) {
    uint64_t z = a ^ (b + 0x9e3779b97f4a7c15ull + (a << 6) + (a >> 2));
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t kw_stub_hash(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (const unsigned char *p = (const unsigned char *)s; *p; ++p)
        h = (h ^ *p) * 0x100000001b3ull;
    return h;
}

/* Uniform in [-1, 1). */
static double kw_stub_u11(uint64_t h) {
    return (double)(h >> 11) * 0x1.0p-52 - 1.0;
}

static const char *kw_stub_token_text(int id, char *buf) {
    static const char *const words[] = {"", "The", " correct", " answer", " is", " A", " B", " C", " D"};
    if (id >= 0 && id <= 8) return words[id];
    if (id >= 9 && id <= 18) {
        buf[0] = (char)('0' + id - 9);
        buf[1] = '\0';
        return buf;
    }
    if (id == 19) return "Answer:";
    if (id == 20) return " ";
    snprintf(buf, 8, " t%d", id);
    return buf;
}

typedef struct kw_stub_model {
    uint64_t h;    /* state: a hash of the prompt and the tokens so far */
    int phrase[8]; /* the intended answer, EOS-terminated */
    size_t phrase_len;
    size_t t;      /* position */
    int on_phrase; /* every token so far followed the phrase */
    double noise;  /* the policy's noise scale (0: the reference) */
    uint64_t policy_h;
} kw_stub_model;

static void kw_stub_model_init(kw_stub_model *m, const char *prompt, double noise, uint64_t policy_h) {
    memset(m, 0, sizeof(*m));
    m->h = kw_stub_hash(prompt);
    m->noise = noise;
    m->policy_h = policy_h;
    m->on_phrase = 1;
    if (strstr(prompt, "Solve the following math problem")) {
        const unsigned n = (unsigned)((m->h >> 16) % 900) + 100;
        const int p[] = {19, 20, 9 + (int)(n / 100), 9 + (int)(n / 10 % 10), 9 + (int)(n % 10), KW_STUB_EOS};
        memcpy(m->phrase, p, sizeof(p));
        m->phrase_len = 6;
    } else {
        const int p[] = {1, 2, 3, 4, 5 + (int)((m->h >> 8) % 4), KW_STUB_EOS};
        memcpy(m->phrase, p, sizeof(p));
        m->phrase_len = 6;
    }
}

/* Log-probabilities of the next token. */
static void kw_stub_model_logprobs(const kw_stub_model *m, double *lp) {
    for (int v = 0; v < KW_STUB_VOCAB; ++v)
        lp[v] = 2.0 * kw_stub_u11(kw_stub_mix(m->h, (uint64_t)v));
    if (m->on_phrase && m->t < m->phrase_len) {
        const int pref = m->phrase[m->t];
        if (pref >= 5 && pref <= 8) {
            for (int v = 5; v <= 8; ++v)
                lp[v] += 6.0;
            lp[pref] += 3.0;
        } else {
            lp[pref] += 8.0;
        }
    } else {
        lp[21 + (int)(m->h % 43)] += 8.0;
        if (m->t >= 12) lp[KW_STUB_EOS] += 12.0;
    }
    if (m->noise > 0)
        for (int v = 0; v < KW_STUB_VOCAB; ++v)
            lp[v] += 6.0 * m->noise * kw_stub_u11(kw_stub_mix(kw_stub_mix(m->h, m->policy_h), (uint64_t)v));
    double mx = lp[0];
    for (int v = 1; v < KW_STUB_VOCAB; ++v)
        if (lp[v] > mx) mx = lp[v];
    double sum = 0;
    for (int v = 0; v < KW_STUB_VOCAB; ++v)
        sum += exp(lp[v] - mx);
    const double lse = mx + log(sum);
    for (int v = 0; v < KW_STUB_VOCAB; ++v)
        lp[v] -= lse;
}

static int kw_stub_argmax(const double *lp) {
    int best = 0;
    for (int v = 1; v < KW_STUB_VOCAB; ++v)
        if (lp[v] > lp[best]) best = v;
    return best;
}

static void kw_stub_model_step(kw_stub_model *m, int tok) {
    m->on_phrase = m->on_phrase && m->t < m->phrase_len && m->phrase[m->t] == tok;
    m->h = kw_stub_mix(m->h, (uint64_t)tok);
    m->t++;
}

// ---------------------------------------------------------------------------------------------------------------
// Requests

typedef struct kw_stub_req {
    int chat;
    char *prompt;       /* owned: the prompt text (chat: the messages' contents joined) */
    int64_t max_tokens; /* -1: absent */
    int stream, echo;
    int64_t logprobs;    /* -1: none; completions: k; chat: top_logprobs (0 with logprobs true) */
    int token_ids;       /* return_tokens_as_token_ids */
    const cJSON *kvwire; /* borrowed from the parsed body, then from kv_owned */
    cJSON *kv_owned;     /* owned: a copy of the kvwire object that outlives the body */
    const char *mode;    /* static, or borrowed from kvwire */
    double noise;
    uint64_t policy_h;
    int32_t *force; /* owned */
    size_t n_force;
    const cJSON *score_ids;
} kw_stub_req;

static const char *const kw_stub_unsupported[] = {"frequency_penalty",
                                                  "presence_penalty",
                                                  "logit_bias",
                                                  "user",
                                                  "suffix",
                                                  "best_of",
                                                  "stream_options",
                                                  "tools",
                                                  "tool_choice",
                                                  "response_format",
                                                  "functions",
                                                  "function_call",
                                                  "parallel_tool_calls",
                                                  "max_completion_tokens",
                                                  NULL};

static int kw_stub_in(const char *s, const char *const *list) {
    for (size_t i = 0; list[i]; ++i)
        if (strcmp(s, list[i]) == 0) return 1;
    return 0;
}

/* Checks that every member of obj is in allowed; *bad gets the first that is not. */
static int kw_stub_fields_ok(const cJSON *obj, const char *const *allowed, const char **bad) {
    for (const cJSON *m = obj->child; m; m = m->next) {
        if (!kw_stub_in(m->string, allowed)) {
            *bad = m->string;
            return 0;
        }
    }
    return 1;
}

static double kw_stub_codec_noise(const char *codec) {
    static const struct {
        const char *name;
        double noise;
    } t[] = {{"bf16", 0.0},  {"f16", 0.02}, {"int8", 0.08}, {"int6", 0.12},
             {"e4m3", 0.15}, {"e5m2", 0.2}, {"nf4", 0.3},   {"int4", 0.35}};
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); ++i)
        if (strcmp(codec, t[i].name) == 0) return t[i].noise;
    return -1;
}

static const char *kw_stub_str(const cJSON *o, const char *key, const char *def);

static void kw_stub_req_free(kw_stub_req *q) {
    free(q->prompt);
    free(q->force);
    cJSON_Delete(q->kv_owned);
}

/* Validates and reads the body; on failure *status and a message in err. */
static int kw_stub_parse(const cJSON *body, int chat, int refuse_token_ids, kw_stub_req *q, int *status, char *err,
                         size_t cap, const char **code) {
    static const char *const completion_fields[] = {"model",
                                                    "prompt",
                                                    "max_tokens",
                                                    "temperature",
                                                    "top_p",
                                                    "n",
                                                    "stop",
                                                    "stream",
                                                    "echo",
                                                    "logprobs",
                                                    "seed",
                                                    "kvwire",
                                                    "return_tokens_as_token_ids",
                                                    NULL};
    static const char *const chat_fields[] = {"model",
                                              "messages",
                                              "max_tokens",
                                              "temperature",
                                              "top_p",
                                              "n",
                                              "stop",
                                              "stream",
                                              "logprobs",
                                              "top_logprobs",
                                              "seed",
                                              "kvwire",
                                              "return_tokens_as_token_ids",
                                              NULL};
    static const char *const kv_fields[] = {"mode",   "sharer",       "sharer_model", "policy", "relay",
                                            "fusion", "force_tokens", "score_ids",    NULL};
    static const char *const policy_fields[] = {"selection",        "proportion", "min_tokens", "seed",   "codec",
                                                "granularity",      "scale",      "zstd",       "layers", "schedule",
                                                "cache_proportion", "order",      NULL};
    static const char *const modes[] = {"c2c", "kv_direct", "receiver_only", "text_relay", NULL};
    memset(q, 0, sizeof(*q));
    q->chat = chat;
    q->max_tokens = -1;
    q->logprobs = -1;
    *status = 400;
    *code = "KW_E_PARSE";
#define KW_STUB_BAD(...)                                                                                               \
    do {                                                                                                               \
        snprintf(err, cap, __VA_ARGS__);                                                                               \
        return -1;                                                                                                     \
    } while (0)
    if (!cJSON_IsObject(body)) KW_STUB_BAD("the body is not a JSON object");
    for (const cJSON *m = body->child; m; m = m->next) {
        if (kw_stub_in(m->string, kw_stub_unsupported)) {
            *code = "unsupported_parameter";
            KW_STUB_BAD("unsupported parameter \"%s\"", m->string);
        }
    }
    const char *bad = NULL;
    if (!kw_stub_fields_ok(body, chat ? chat_fields : completion_fields, &bad))
        KW_STUB_BAD("unknown field \"%s\"", bad);
    if (refuse_token_ids && cJSON_GetObjectItemCaseSensitive(body, "return_tokens_as_token_ids"))
        KW_STUB_BAD("unknown field \"return_tokens_as_token_ids\"");
    const cJSON *temp = cJSON_GetObjectItemCaseSensitive(body, "temperature");
    if (temp && (!cJSON_IsNumber(temp) || temp->valuedouble != 0)) KW_STUB_BAD("only temperature 0 is served");
    kw_buf b = KW_BUF_INIT;
    if (chat) {
        const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(body, "messages");
        if (!cJSON_IsArray(msgs) || !msgs->child) KW_STUB_BAD("\"messages\" must be a non-empty array");
        for (const cJSON *m = msgs->child; m; m = m->next) {
            const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
            const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
            if (!cJSON_IsString(role) || !cJSON_IsString(content)) {
                kw_buf_free(&b);
                KW_STUB_BAD("every message needs a string role and content");
            }
            kw_buf_append_str(&b, content->valuestring);
        }
        const cJSON *lp = cJSON_GetObjectItemCaseSensitive(body, "logprobs");
        const cJSON *top = cJSON_GetObjectItemCaseSensitive(body, "top_logprobs");
        int64_t k = 0;
        if (top && kw_json_to_i64(top, 0, 20, &k) < 0) {
            kw_buf_free(&b);
            KW_STUB_BAD("top_logprobs must be an integer 0..20");
        }
        if (cJSON_IsTrue(lp)) q->logprobs = k;
    } else {
        const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(body, "prompt");
        if (!cJSON_IsString(prompt)) KW_STUB_BAD("\"prompt\" must be a string (token ids are not served by the stub)");
        kw_buf_append_str(&b, prompt->valuestring);
        const cJSON *lp = cJSON_GetObjectItemCaseSensitive(body, "logprobs");
        if (lp && !cJSON_IsNull(lp) && kw_json_to_i64(lp, 0, 20, &q->logprobs) < 0) {
            kw_buf_free(&b);
            KW_STUB_BAD("logprobs must be an integer 0..20 or null");
        }
        q->echo = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(body, "echo"));
    }
    if (kw_buf_take(&b, &q->prompt, NULL) < 0) KW_STUB_BAD("out of memory");
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(body, "max_tokens");
    if (mt && kw_json_to_i64(mt, 0, KW_STUB_MAX_GEN, &q->max_tokens) < 0)
        KW_STUB_BAD("max_tokens must be an integer 0..%d", KW_STUB_MAX_GEN);
    q->stream = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(body, "stream"));
    q->token_ids = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(body, "return_tokens_as_token_ids"));

    /* kvwire */
    q->mode = "c2c";
    double proportion = 1, cache_proportion = 1;
    const char *codec = "bf16";
    const cJSON *kv = cJSON_GetObjectItemCaseSensitive(body, "kvwire");
    q->kvwire = kv;
    kw_buf pk = KW_BUF_INIT;
    if (kv) {
        if (!cJSON_IsObject(kv)) KW_STUB_BAD("\"kvwire\" must be an object");
        if (!kw_stub_fields_ok(kv, kv_fields, &bad)) KW_STUB_BAD("unknown kvwire field \"%s\"", bad);
        const cJSON *mode = cJSON_GetObjectItemCaseSensitive(kv, "mode");
        if (mode && (!cJSON_IsString(mode) || !kw_stub_in(mode->valuestring, modes)))
            KW_STUB_BAD("kvwire.mode must be c2c, kv_direct, receiver_only or text_relay");
        if (mode) q->mode = mode->valuestring;
        const cJSON *policy = cJSON_GetObjectItemCaseSensitive(kv, "policy");
        if (policy) {
            if (!cJSON_IsObject(policy)) KW_STUB_BAD("kvwire.policy must be an object");
            if (!kw_stub_fields_ok(policy, policy_fields, &bad)) KW_STUB_BAD("unknown policy field \"%s\"", bad);
            const cJSON *c = cJSON_GetObjectItemCaseSensitive(policy, "codec");
            if (c && (!cJSON_IsString(c) || kw_stub_codec_noise(c->valuestring) < 0)) KW_STUB_BAD("unknown codec");
            if (c) codec = c->valuestring;
            const cJSON *p = cJSON_GetObjectItemCaseSensitive(policy, "proportion");
            if (p && (!cJSON_IsNumber(p) || p->valuedouble < 0 || p->valuedouble > 1))
                KW_STUB_BAD("policy.proportion must be in [0, 1]");
            if (p) proportion = p->valuedouble;
            p = cJSON_GetObjectItemCaseSensitive(policy, "cache_proportion");
            if (p && (!cJSON_IsNumber(p) || p->valuedouble < 0 || p->valuedouble > 1))
                KW_STUB_BAD("policy.cache_proportion must be in [0, 1]");
            if (p) cache_proportion = p->valuedouble;
            char *pt = cJSON_PrintUnformatted(policy);
            if (pt) kw_buf_append_str(&pk, pt);
            free(pt);
        }
        const cJSON *force = cJSON_GetObjectItemCaseSensitive(kv, "force_tokens");
        if (force) {
            if (!cJSON_IsArray(force) || cJSON_GetArraySize(force) > KW_STUB_MAX_GEN)
                KW_STUB_BAD("kvwire.force_tokens must be an array of token ids");
            q->n_force = (size_t)cJSON_GetArraySize(force);
            q->force = malloc((q->n_force + 1) * sizeof(*q->force));
            if (!q->force) KW_STUB_BAD("out of memory");
            size_t i = 0;
            for (const cJSON *t = force->child; t; t = t->next) {
                int64_t id = 0;
                if (kw_json_to_i64(t, 0, KW_STUB_VOCAB - 1, &id) < 0)
                    KW_STUB_BAD("force_tokens[%zu] is not a token id of this model", i);
                q->force[i++] = (int32_t)id;
            }
            if (q->max_tokens >= 0 && (size_t)q->max_tokens != q->n_force)
                KW_STUB_BAD("max_tokens must be absent or equal the number of force_tokens");
        }
        const cJSON *score = cJSON_GetObjectItemCaseSensitive(kv, "score_ids");
        if (score) {
            if (!force) KW_STUB_BAD("kvwire.score_ids needs force_tokens");
            if (!cJSON_IsArray(score) || (size_t)cJSON_GetArraySize(score) != q->n_force)
                KW_STUB_BAD("kvwire.score_ids must hold one array per forced token");
            for (const cJSON *pos = score->child; pos; pos = pos->next) {
                if (!cJSON_IsArray(pos) || cJSON_GetArraySize(pos) > 20)
                    KW_STUB_BAD("each score_ids entry must be an array of at most 20 ids");
                for (const cJSON *id = pos->child; id; id = id->next) {
                    int64_t v = 0;
                    if (kw_json_to_i64(id, 0, KW_STUB_VOCAB - 1, &v) < 0)
                        KW_STUB_BAD("score_ids holds something other than token ids of this model");
                }
            }
            q->score_ids = score;
        }
    }
    double noise = kw_stub_codec_noise(codec) + 0.5 * (1.0 - proportion) + 0.5 * (1.0 - cache_proportion);
    if (strcmp(q->mode, "receiver_only") == 0) noise = 1.0;
    if (strcmp(q->mode, "text_relay") == 0) noise = 0.6;
    q->noise = noise;
    kw_buf_append_str(&pk, q->mode);
    char *ptext = NULL;
    kw_buf_take(&pk, &ptext, NULL);
    q->policy_h = kw_stub_hash(ptext ? ptext : "");
    free(ptext);
    *status = 200;
    return 0;
#undef KW_STUB_BAD
}

// ---------------------------------------------------------------------------------------------------------------
// Responses

typedef struct kw_stub_gen {
    int *tokens;                 /* owned, cap */
    double (*lp)[KW_STUB_VOCAB]; /* owned, cap: the distribution that chose (or was forced) each token */
    size_t n, cap;
    int finish_stop;
    size_t positions, top1_agree;
} kw_stub_gen;

static void kw_stub_gen_free(kw_stub_gen *g) {
    if (!g) return;
    free(g->tokens);
    free(g->lp);
    free(g);
}

static kw_stub_gen *kw_stub_gen_new(const kw_stub_req *q) {
    kw_stub_gen *g = calloc(1, sizeof(*g));
    if (!g) return NULL;
    g->cap = q->force ? q->n_force : q->max_tokens >= 0 ? (size_t)q->max_tokens : 64;
    g->tokens = malloc((g->cap + 1) * sizeof(*g->tokens));
    g->lp = malloc((g->cap + 1) * sizeof(*g->lp));
    if (!g->tokens || !g->lp) {
        kw_stub_gen_free(g);
        return NULL;
    }
    return g;
}

static void kw_stub_generate(const kw_stub_req *q, kw_stub_gen *g) {
    kw_stub_model m;
    kw_stub_model_init(&m, q->prompt, q->noise, q->policy_h);
    g->n = 0;
    g->finish_stop = 0;
    g->positions = g->top1_agree = 0;
    if (q->force) {
        for (size_t i = 0; i < q->n_force; ++i) {
            kw_stub_model_logprobs(&m, g->lp[i]);
            g->tokens[i] = q->force[i];
            g->top1_agree += kw_stub_argmax(g->lp[i]) == q->force[i];
            kw_stub_model_step(&m, q->force[i]);
        }
        g->n = g->positions = q->n_force;
        g->finish_stop = 0;
        return;
    }
    while (g->n < g->cap) {
        kw_stub_model_logprobs(&m, g->lp[g->n]);
        const int tok = kw_stub_argmax(g->lp[g->n]);
        g->tokens[g->n++] = tok;
        if (tok == KW_STUB_EOS) {
            g->finish_stop = 1;
            break;
        }
        kw_stub_model_step(&m, tok);
    }
}

static void kw_stub_tok_name(const kw_stub_req *q, int id, char *buf, size_t cap) {
    char tb[8];
    if (q->token_ids)
        snprintf(buf, cap, "token_id:%d", id);
    else
        snprintf(buf, cap, "%s", kw_stub_token_text(id, tb));
}

/* The top-k ids of a distribution, most likely first (ties: lower id). */
static void kw_stub_topk(const double *lp, int k, int *ids) {
    int used[KW_STUB_VOCAB] = {0};
    for (int j = 0; j < k; ++j) {
        int best = -1;
        for (int v = 0; v < KW_STUB_VOCAB; ++v)
            if (!used[v] && (best < 0 || lp[v] > lp[best])) best = v;
        used[best] = 1;
        ids[j] = best;
    }
}

/* The logprobs object for tokens [from, to). */
static cJSON *kw_stub_logprobs(const kw_stub_req *q, const kw_stub_gen *g, size_t from, size_t to) {
    char name[32];
    const int k = (int)q->logprobs;
    int ids[20];
    if (q->chat) {
        cJSON *o = cJSON_CreateObject(), *content = cJSON_AddArrayToObject(o, "content");
        for (size_t i = from; i < to; ++i) {
            cJSON *e = cJSON_CreateObject();
            cJSON_AddItemToArray(content, e);
            kw_stub_tok_name(q, g->tokens[i], name, sizeof(name));
            cJSON_AddStringToObject(e, "token", name);
            cJSON_AddNumberToObject(e, "logprob", g->lp[i][g->tokens[i]]);
            cJSON *tops = cJSON_AddArrayToObject(e, "top_logprobs");
            kw_stub_topk(g->lp[i], k, ids);
            for (int j = 0; j < k; ++j) {
                cJSON *t = cJSON_CreateObject();
                cJSON_AddItemToArray(tops, t);
                kw_stub_tok_name(q, ids[j], name, sizeof(name));
                cJSON_AddStringToObject(t, "token", name);
                cJSON_AddNumberToObject(t, "logprob", g->lp[i][ids[j]]);
            }
        }
        return o;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON *toks = cJSON_AddArrayToObject(o, "tokens"), *lps = cJSON_AddArrayToObject(o, "token_logprobs");
    cJSON *tops = cJSON_AddArrayToObject(o, "top_logprobs"), *offs = cJSON_AddArrayToObject(o, "text_offset");
    size_t off = 0;
    char tb[8];
    for (size_t i = from; i < to; ++i) {
        kw_stub_tok_name(q, g->tokens[i], name, sizeof(name));
        cJSON_AddItemToArray(toks, cJSON_CreateString(name));
        cJSON_AddItemToArray(lps, cJSON_CreateNumber(g->lp[i][g->tokens[i]]));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        off += strlen(kw_stub_token_text(g->tokens[i], tb));
        if (k == 0) {
            cJSON_AddItemToArray(tops, cJSON_CreateNull());
            continue;
        }
        cJSON *t = cJSON_CreateObject();
        cJSON_AddItemToArray(tops, t);
        kw_stub_topk(g->lp[i], k, ids);
        for (int j = 0; j < k; ++j) {
            kw_stub_tok_name(q, ids[j], name, sizeof(name));
            cJSON_AddNumberToObject(t, name, g->lp[i][ids[j]]);
        }
    }
    return o;
}

static size_t kw_stub_prompt_tokens(const kw_stub_req *q) {
    return 1 + strlen(q->prompt) / 4 + (q->chat ? 8 : 0);
}

static int kw_stub_codec_bits(const char *codec) {
    if (!strcmp(codec, "bf16") || !strcmp(codec, "f16")) return 16;
    if (!strcmp(codec, "int6")) return 6;
    if (!strcmp(codec, "int4") || !strcmp(codec, "nf4")) return 4;
    return 8;
}

static double kw_stub_num(const cJSON *o, const char *key, double def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : cJSON_IsBool(v) ? (double)cJSON_IsTrue(v) : def;
}

static const char *kw_stub_str(const cJSON *o, const char *key, const char *def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : def;
}

/* The response's kvwire block (fake numbers, consistent with each other). */
static cJSON *kw_stub_block(kw_load_stub *s, const kw_stub_req *q, const kw_stub_gen *g, uint64_t id) {
    const cJSON *req_policy = cJSON_GetObjectItemCaseSensitive(q->kvwire, "policy");
    const cJSON *relay = cJSON_GetObjectItemCaseSensitive(q->kvwire, "relay");
    const int receiver_only = !strcmp(q->mode, "receiver_only"), relay_mode = !strcmp(q->mode, "text_relay");
    const size_t P = kw_stub_prompt_tokens(q);
    const double cache_p = kw_stub_num(req_policy, "cache_proportion", 1);
    const size_t shared = (receiver_only || relay_mode) ? 0 : (size_t)floor((double)(P - 1) * cache_p);
    const double prop = kw_stub_num(req_policy, "proportion", 1);
    size_t sent = (size_t)nearbyint((double)shared * prop);
    const size_t min_tokens = (size_t)kw_stub_num(req_policy, "min_tokens", 1);
    if (shared > 0 && sent < min_tokens) sent = min_tokens < shared ? min_tokens : shared;
    const char *codec = kw_stub_str(req_policy, "codec", "bf16");
    const int bits = kw_stub_codec_bits(codec);
    const int quantized = bits < 16;
    const size_t L = shared ? KW_STUB_LAYERS : 0;
    const double payload = (double)L * 2 * KW_STUB_HEADS * KW_STUB_DIM * (double)sent * bits / 8.0;
    const double scales = quantized ? (double)L * 2 * KW_STUB_HEADS * (double)sent * 4 : 0;
    const double indices = prop < 1 ? (double)L * (double)sent * 2 : 0;
    const double header = L ? 64 + 32.0 * (double)L : 0, checksums = 8.0 * (double)L;
    const double zstd = kw_stub_num(req_policy, "zstd", 0);
    const double saved = zstd > 0 ? floor(payload / 10) : 0;
    const double blob = L ? header + indices + scales + payload + checksums - saved : 0;
    double text_bytes = 0;
    if (relay_mode) {
        const double cap = kw_stub_num(relay, "max_bytes", 256);
        text_bytes = fmin(cap, 40 + (double)P / 2);
    }
    cJSON *b = cJSON_CreateObject();
    cJSON_AddNumberToObject(b, "request_id", (double)id);
    cJSON_AddStringToObject(b, "mode", q->mode);
    cJSON_AddStringToObject(b, "sharer", kw_stub_str(q->kvwire, "sharer", "stub"));
    cJSON_AddStringToObject(b, "sharer_model", kw_stub_str(q->kvwire, "sharer_model", "stub-sharer"));
    cJSON *dg = cJSON_AddObjectToObject(b, "sharer_model_digest");
    cJSON_AddStringToObject(dg, "config_sha256", "");
    cJSON_AddStringToObject(dg, "weights_sha256", "");
    cJSON *pol = cJSON_AddObjectToObject(b, "policy");
    cJSON_AddStringToObject(pol, "selection", kw_stub_str(req_policy, "selection", "full"));
    cJSON_AddNumberToObject(pol, "proportion", prop);
    cJSON_AddNumberToObject(pol, "min_tokens", (double)min_tokens);
    cJSON_AddNumberToObject(pol, "seed", kw_stub_num(req_policy, "seed", 0));
    cJSON_AddStringToObject(pol, "codec", codec);
    cJSON_AddStringToObject(pol, "granularity", kw_stub_str(req_policy, "granularity", "token"));
    cJSON_AddStringToObject(pol, "scale", kw_stub_str(req_policy, "scale", "f32"));
    cJSON_AddNumberToObject(pol, "zstd", zstd);
    cJSON_AddNumberToObject(pol, "cache_proportion", cache_p);
    cJSON_AddStringToObject(pol, "order", kw_stub_str(req_policy, "order", "front"));
    cJSON_AddNumberToObject(b, "prompt_tokens", (double)P);
    cJSON_AddNumberToObject(b, "shared_tokens", (double)shared);
    cJSON *sections = cJSON_AddArrayToObject(b, "sections");
    cJSON *s0 = cJSON_CreateObject();
    cJSON_AddNumberToObject(s0, "length", (double)(P - 1));
    cJSON_AddBoolToObject(s0, "sent", shared > 0);
    cJSON_AddItemToArray(sections, s0);
    cJSON *sel = cJSON_AddObjectToObject(b, "selection");
    cJSON_AddNumberToObject(sel, "tokens_total", (double)(shared * L));
    cJSON_AddNumberToObject(sel, "tokens_sent", (double)(sent * L));
    cJSON_AddNumberToObject(sel, "layers_sent", (double)L);
    cJSON *bytes = cJSON_AddObjectToObject(b, "bytes");
    cJSON_AddNumberToObject(bytes, "blob", blob);
    cJSON_AddNumberToObject(bytes, "socket_in", receiver_only ? 0 : blob + 5.0 * (double)(L + 2) + 48 + text_bytes);
    cJSON_AddNumberToObject(bytes, "socket_out", receiver_only ? 0 : 40 + 4.0 * (double)P);
    cJSON_AddNumberToObject(bytes, "text", text_bytes);
    cJSON *c = cJSON_AddObjectToObject(b, "codec");
    cJSON_AddNumberToObject(c, "sections", (double)L);
    cJSON_AddNumberToObject(c, "compressed_sections", saved > 0 ? (double)L : 0);
    cJSON *br = cJSON_AddObjectToObject(c, "breakdown");
    cJSON_AddNumberToObject(br, "header", header);
    cJSON_AddNumberToObject(br, "indices", indices);
    cJSON_AddNumberToObject(br, "scales", scales);
    cJSON_AddNumberToObject(br, "payload", payload - saved);
    cJSON_AddNumberToObject(br, "checksums", checksums);
    cJSON_AddNumberToObject(br, "compression_saved", saved);
    cJSON *fu = cJSON_AddObjectToObject(b, "fusion");
    cJSON_AddNumberToObject(fu, "tokens_fused", (double)sent);
    cJSON_AddNumberToObject(fu, "layers_fused", (double)L);
    cJSON_AddNumberToObject(fu, "layers_skipped", 0);
    cJSON *rl = cJSON_AddObjectToObject(b, "relay");
    cJSON_AddNumberToObject(rl, "tokens", relay_mode ? text_bytes / 4 : 0);
    cJSON_AddNumberToObject(rl, "bytes", text_bytes);
    cJSON_AddBoolToObject(rl, "truncated", 0);
    cJSON_AddStringToObject(rl, "text", "");
    const double pre = (double)P * 0.05;
    cJSON *t = cJSON_AddObjectToObject(b, "timings_ms");
    cJSON_AddNumberToObject(t, "queue", 0.01);
    cJSON_AddNumberToObject(t, "tokenize", 0.02);
    cJSON_AddNumberToObject(t, "sharer_prefill", shared ? pre : 0);
    cJSON_AddNumberToObject(t, "select", shared ? 0.01 : 0);
    cJSON_AddNumberToObject(t, "encode", blob / 1e5);
    cJSON_AddNumberToObject(t, "transfer", blob / 1e6 + (shared ? 0.05 : 0));
    cJSON_AddNumberToObject(t, "decode_from_wire", blob / 2e5);
    cJSON_AddNumberToObject(t, "project", shared ? 0.02 * (double)sent : 0);
    cJSON_AddNumberToObject(t, "fuse", shared ? 0.005 * (double)sent : 0);
    cJSON_AddNumberToObject(t, "receiver_prefill", pre * 0.8);
    cJSON_AddNumberToObject(t, "first_token", s->cfg.prefill_ms + pre + 0.1);
    cJSON_AddNumberToObject(t, "decode", s->cfg.token_ms * (double)(g->n ? g->n - 1 : 0));
    cJSON_AddNumberToObject(t, "total", s->cfg.prefill_ms + pre + 0.1 + s->cfg.token_ms * (double)g->n);
    cJSON *ids = cJSON_AddArrayToObject(b, "completion_ids");
    for (size_t i = 0; i < g->n; ++i)
        cJSON_AddItemToArray(ids, cJSON_CreateNumber(g->tokens[i]));
    if (q->force) {
        cJSON *tf = cJSON_AddObjectToObject(b, "teacher_forcing");
        cJSON_AddNumberToObject(tf, "positions", (double)g->positions);
        cJSON_AddNumberToObject(tf, "top1_agree", (double)g->top1_agree);
        if (q->score_ids) {
            cJSON *sc = cJSON_AddArrayToObject(b, "scored_logprobs");
            size_t i = 0;
            for (const cJSON *pos = q->score_ids->child; pos; pos = pos->next, ++i) {
                cJSON *a = cJSON_CreateArray();
                cJSON_AddItemToArray(sc, a);
                for (const cJSON *idv = pos->child; idv; idv = idv->next)
                    cJSON_AddItemToArray(a, cJSON_CreateNumber(g->lp[i][(int)idv->valuedouble]));
            }
        }
    }
    return b;
}

/* The text of tokens [from, to). */
static void kw_stub_text(const kw_stub_gen *g, size_t from, size_t to, kw_buf *out) {
    char tb[8];
    for (size_t i = from; i < to; ++i)
        if (g->tokens[i] != KW_STUB_EOS) kw_buf_append_str(out, kw_stub_token_text(g->tokens[i], tb));
}

/* One response object: the whole response (whole = 1) or a stream chunk of tokens [from, to) (last = the final
 * chunk with finish_reason, usage and kvwire). */
static char *kw_stub_response(kw_load_stub *s, const kw_stub_req *q, const kw_stub_gen *g, uint64_t id, size_t from,
                              size_t to, int streamed, int last) {
    cJSON *o = cJSON_CreateObject();
    char rid[48];
    snprintf(rid, sizeof(rid), "%s-%llu", q->chat ? "chatcmpl" : "cmpl", (unsigned long long)id);
    cJSON_AddStringToObject(o, "id", rid);
    cJSON_AddStringToObject(o, "object",
                            q->chat ? (streamed ? "chat.completion.chunk" : "chat.completion") : "text_completion");
    cJSON_AddNumberToObject(o, "created", (double)time(NULL));
    cJSON_AddStringToObject(o, "model", s->model_name);
    cJSON *choices = cJSON_AddArrayToObject(o, "choices");
    cJSON *c0 = cJSON_CreateObject();
    cJSON_AddItemToArray(choices, c0);
    cJSON_AddNumberToObject(c0, "index", 0);
    kw_buf text = KW_BUF_INIT;
    if (!streamed && q->echo) kw_buf_append_str(&text, q->prompt);
    kw_stub_text(g, from, to, &text);
    char *t = NULL;
    kw_buf_take(&text, &t, NULL);
    if (q->chat) {
        cJSON *m = cJSON_AddObjectToObject(c0, streamed ? "delta" : "message");
        if (!streamed || from == 0) cJSON_AddStringToObject(m, "role", "assistant");
        cJSON_AddStringToObject(m, "content", t ? t : "");
    } else {
        cJSON_AddStringToObject(c0, "text", t ? t : "");
    }
    free(t);
    if (q->logprobs >= 0 && to > from)
        cJSON_AddItemToObject(c0, "logprobs", kw_stub_logprobs(q, g, from, to));
    else
        cJSON_AddNullToObject(c0, "logprobs");
    if (last)
        cJSON_AddStringToObject(c0, "finish_reason", g->finish_stop ? "stop" : "length");
    else
        cJSON_AddNullToObject(c0, "finish_reason");
    if (last) {
        const size_t P = kw_stub_prompt_tokens(q);
        cJSON *u = cJSON_AddObjectToObject(o, "usage");
        cJSON_AddNumberToObject(u, "prompt_tokens", (double)P);
        cJSON_AddNumberToObject(u, "completion_tokens", (double)g->n);
        cJSON_AddNumberToObject(u, "total_tokens", (double)(P + g->n));
        cJSON_AddItemToObject(o, "kvwire", kw_stub_block(s, q, g, id));
    }
    char *out = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return out;
}

static void kw_stub_error(kw_http_request *req, int status, const char *code, const char *message) {
    cJSON *o = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(o, "error");
    cJSON_AddStringToObject(e, "message", message);
    cJSON_AddStringToObject(e, "type", status >= 500 ? "server_error" : "invalid_request_error");
    cJSON_AddStringToObject(e, "code", code);
    cJSON_AddNumberToObject(e, "status", status == 429 ? -605 : status >= 500 ? -10 : -7);
    char *text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    kw_http_respond(req, status, "application/json", NULL, 0, text, text ? strlen(text) : 0);
    free(text);
}

// ---------------------------------------------------------------------------------------------------------------
// Delivery: at once, or token by token on a timer

typedef struct kw_stub_job {
    kw_load_stub *s;
    kw_http_request *req;
    uv_timer_t timer;
    kw_stub_req q;
    kw_stub_gen *g; /* owned */
    uint64_t id;
    size_t next; /* the next token to stream; g->n + 1 when the final chunk is out */
    int started;
} kw_stub_job;

static void kw_stub_job_close_cb(uv_handle_t *h) {
    kw_stub_job *j = h->data;
    kw_stub_req_free(&j->q);
    kw_stub_gen_free(j->g);
    free(j);
}

static void kw_stub_job_end(kw_stub_job *j) {
    uv_close((uv_handle_t *)&j->timer, kw_stub_job_close_cb);
}

static void kw_stub_whole(kw_stub_job *j) {
    char *body = kw_stub_response(j->s, &j->q, j->g, j->id, 0, j->g->n, 0, 1);
    if (!body) {
        kw_stub_error(j->req, 500, "KW_E_NOMEM", "out of memory");
        return;
    }
    kw_http_respond(j->req, 200, "application/json", NULL, 0, body, strlen(body));
    free(body);
}

/* Sends the next streamed token (or everything at once without delays); returns 1 when the response is complete. */
static int kw_stub_stream_step(kw_stub_job *j, int all) {
    if (!j->started) {
        if (kw_http_response_start(j->req, 200, "text/event-stream", NULL, 0) < 0) {
            kw_http_response_end(j->req);
            return 1;
        }
        j->started = 1;
    }
    while (j->next <= j->g->n) {
        const int last = j->next == j->g->n;
        char *ev = last ? kw_stub_response(j->s, &j->q, j->g, j->id, j->g->n, j->g->n, 1, 1)
                        : kw_stub_response(j->s, &j->q, j->g, j->id, j->next, j->next + 1, 1, 0);
        const int rc = ev ? kw_http_sse_send(j->req, NULL, ev) : KW_E_NOMEM;
        free(ev);
        j->next++;
        if (rc < 0 && rc != KW_NET_WRITE_FULL) {
            kw_http_response_end(j->req);
            return 1;
        }
        if (!all) break;
    }
    if (j->next > j->g->n) {
        kw_http_sse_send(j->req, NULL, "[DONE]");
        kw_http_response_end(j->req);
        return 1;
    }
    return 0;
}

static void kw_stub_timer_cb(uv_timer_t *t) {
    kw_stub_job *j = t->data;
    if (!j->q.stream) {
        kw_stub_whole(j);
        kw_stub_job_end(j);
        return;
    }
    if (kw_stub_stream_step(j, 0)) {
        kw_stub_job_end(j);
        return;
    }
    uv_timer_start(&j->timer, kw_stub_timer_cb, (uint64_t)llround(j->s->cfg.token_ms), 0);
}

static void kw_stub_generation(kw_load_stub *s, kw_http_request *req, int chat) {
    s->requests++;
    if (s->cfg.fail_every && s->requests % s->cfg.fail_every == 0) {
        s->failed++;
        const int st = s->cfg.fail_status;
        kw_stub_error(req, st, st == 429 ? "KW_E_SHARE_BUSY" : "KW_E_INTERNAL", "injected failure (stub)");
        return;
    }
    cJSON *body = NULL;
    if (kw_json_parse((const char *)req->body, req->body_len, &body) < 0) {
        s->failed++;
        kw_stub_error(req, 400, "KW_E_PARSE", "malformed JSON");
        return;
    }
    kw_stub_job *j = calloc(1, sizeof(*j));
    if (!j) {
        cJSON_Delete(body);
        kw_stub_error(req, 500, "KW_E_NOMEM", "out of memory");
        return;
    }
    j->s = s;
    j->req = req;
    j->id = s->requests;
    int status = 0;
    char err[256];
    const char *code = NULL;
    const int bad = kw_stub_parse(body, chat, s->cfg.refuse_token_ids, &j->q, &status, err, sizeof(err), &code) < 0;
    /* The response's kvwire block reads the request's kvwire object: keep a copy that outlives body. */
    if (!bad && j->q.kvwire) {
        j->q.kv_owned = cJSON_Duplicate(j->q.kvwire, 1);
        j->q.kvwire = j->q.kv_owned;
        j->q.score_ids = j->q.kv_owned ? cJSON_GetObjectItemCaseSensitive(j->q.kv_owned, "score_ids") : NULL;
        j->q.mode = kw_stub_str(j->q.kv_owned, "mode", "c2c"); /* the parsed body's string is about to go */
    }
    cJSON_Delete(body);
    if (!bad) j->g = kw_stub_gen_new(&j->q);
    if (bad || !j->g || (j->q.kvwire && !j->q.kv_owned)) {
        s->failed++;
        if (bad)
            kw_stub_error(req, status, code, err);
        else
            kw_stub_error(req, 500, "KW_E_NOMEM", "out of memory");
        kw_stub_req_free(&j->q);
        kw_stub_gen_free(j->g);
        free(j);
        return;
    }
    kw_stub_generate(&j->q, j->g);
    s->ok++;
    uv_timer_init(s->loop, &j->timer);
    j->timer.data = j;
    if (s->cfg.prefill_ms <= 0 && s->cfg.token_ms <= 0) {
        if (j->q.stream)
            kw_stub_stream_step(j, 1);
        else
            kw_stub_whole(j);
        kw_stub_job_end(j);
        return;
    }
    uv_timer_start(&j->timer, kw_stub_timer_cb, (uint64_t)llround(s->cfg.prefill_ms), 0);
}

// ---------------------------------------------------------------------------------------------------------------
// Routing

static void kw_stub_handle(kw_http_request *req, void *user) {
    kw_load_stub *s = user;
    const int post = strcmp(req->method, "POST") == 0, get = strcmp(req->method, "GET") == 0;
    if (strcmp(req->path, "/v1/completions") == 0 || strcmp(req->path, "/v1/chat/completions") == 0) {
        if (post)
            kw_stub_generation(s, req, req->path[4] == 'c' && req->path[5] == 'h');
        else
            kw_stub_error(req, 405, "KW_E_INVALID_ARG", "use POST");
        return;
    }
    char buf[1024];
    const char *ctype = "application/json";
    if (strcmp(req->path, "/health") == 0 && get) {
        snprintf(buf, sizeof(buf),
                 "{\"status\": \"ok\", \"version\": \"stub\", \"model\": \"%s\", \"model_digest\": "
                 "{\"config_sha256\": \"\", \"weights_sha256\": \"\"}, \"sharers\": [{\"name\": \"stub\", "
                 "\"connected\": true, \"models\": [{\"name\": \"stub-sharer\", \"digest\": {\"config_sha256\": \"\", "
                 "\"weights_sha256\": \"\"}}]}], \"queue_depth\": 0, \"stub\": true}",
                 s->model_name);
    } else if (strcmp(req->path, "/v1/models") == 0 && get) {
        snprintf(buf, sizeof(buf),
                 "{\"object\": \"list\", \"data\": [{\"id\": \"%s\", \"object\": \"model\", \"owned_by\": "
                 "\"kvwire\", \"digest\": {\"config_sha256\": \"\", \"weights_sha256\": \"\"}}]}",
                 s->model_name);
    } else if (strcmp(req->path, "/metrics") == 0 && get) {
        ctype = "text/plain; version=0.0.4";
        snprintf(buf, sizeof(buf),
                 "# TYPE kvwire_requests_total counter\nkvwire_requests_total{mode=\"any\",outcome=\"ok\"} %llu\n"
                 "kvwire_requests_total{mode=\"any\",outcome=\"client_error\"} %llu\n",
                 (unsigned long long)s->ok, (unsigned long long)s->failed);
    } else {
        kw_stub_error(req, 404, "KW_E_NOT_FOUND", "no such endpoint");
        return;
    }
    kw_http_respond(req, 200, ctype, NULL, 0, buf, strlen(buf));
}

// ---------------------------------------------------------------------------------------------------------------
// Lifetime

void kw_load_stub_config_default(kw_load_stub_config *cfg) {
    memset(cfg, 0, sizeof(*cfg));
    cfg->host = "127.0.0.1";
    cfg->fail_status = 503;
    cfg->model_name = "stub-receiver";
}

int kw_load_stub_start(uv_loop_t *loop, const kw_load_stub_config *cfg, kw_load_stub **out) {
    kw_load_stub *s = calloc(1, sizeof(*s));
    KW_RETURN_IF(!s, KW_E_NOMEM, "out of memory");
    s->cfg = *cfg;
    s->loop = loop;
    snprintf(s->model_name, sizeof(s->model_name), "%s", cfg->model_name ? cfg->model_name : "stub-receiver");
    kw_http_server_config hc;
    kw_http_server_config_default(&hc);
    hc.net.host = cfg->host ? cfg->host : "127.0.0.1";
    hc.net.port = cfg->port;
    hc.net.backlog = 1024;
    hc.max_body_bytes = (size_t)4 << 20;
    const int rc = kw_http_server_start(loop, &hc, kw_stub_handle, s, &s->http);
    if (rc < 0) {
        free(s);
        return rc;
    }
    *out = s;
    return 0;
}

uint16_t kw_load_stub_port(const kw_load_stub *s) {
    return kw_http_server_port(s->http);
}

uint64_t kw_load_stub_requests(const kw_load_stub *s) {
    return s->requests;
}

static void kw_stub_shutdown_done(kw_http_server *h, void *user) {
    (void)h;
    kw_load_stub *s = user;
    if (s->done) s->done(s->done_user);
}

void kw_load_stub_shutdown(kw_load_stub *s, void (*done)(void *user), void *user) {
    s->done = done;
    s->done_user = user;
    kw_http_server_shutdown(s->http, 5000, kw_stub_shutdown_done, s);
}

void kw_load_stub_free(kw_load_stub *s) {
    if (!s) return;
    kw_http_server_free(s->http);
    free(s);
}

// ---------------------------------------------------------------------------------------------------------------
// On a thread

struct kw_load_stub_thread {
    uv_loop_t loop;
    uv_async_t stop;
    kw_load_stub *stub;
    pthread_t thread;
};

static void *kw_stub_thread_main(void *arg) {
    kw_load_stub_thread *t = arg;
    uv_run(&t->loop, UV_RUN_DEFAULT);
    return NULL;
}

static void kw_stub_thread_closed(uv_handle_t *h) {
    (void)h;
}

static void kw_stub_thread_done(void *user) {
    kw_load_stub_thread *t = user;
    uv_close((uv_handle_t *)&t->stop, kw_stub_thread_closed);
}

static void kw_stub_thread_stop_cb(uv_async_t *a) {
    kw_load_stub_thread *t = a->data;
    kw_load_stub_shutdown(t->stub, kw_stub_thread_done, t);
}

int kw_load_stub_spawn(const kw_load_stub_config *cfg, kw_load_stub_thread **out) {
    kw_load_stub_thread *t = calloc(1, sizeof(*t));
    KW_RETURN_IF(!t, KW_E_NOMEM, "out of memory");
    int rc = uv_loop_init(&t->loop);
    if (rc != 0) {
        free(t);
        KW_FAIL(KW_E_INTERNAL, "uv_loop_init: %s", uv_strerror(rc));
    }
    rc = kw_load_stub_start(&t->loop, cfg, &t->stub);
    if (rc == 0 && uv_async_init(&t->loop, &t->stop, kw_stub_thread_stop_cb) != 0)
        rc = kw_error_set(KW_E_INTERNAL, "uv_async_init failed");
    if (rc == 0) {
        t->stop.data = t;
        if (pthread_create(&t->thread, NULL, kw_stub_thread_main, t) != 0) {
            uv_close((uv_handle_t *)&t->stop, NULL);
            rc = kw_error_set(KW_E_INTERNAL, "pthread_create failed");
        }
    }
    if (rc < 0) {
        if (t->stub) {
            kw_load_stub_shutdown(t->stub, NULL, NULL);
            uv_run(&t->loop, UV_RUN_DEFAULT);
            kw_load_stub_free(t->stub);
        }
        uv_loop_close(&t->loop);
        free(t);
        return rc;
    }
    *out = t;
    return 0;
}

uint16_t kw_load_stub_thread_port(const kw_load_stub_thread *t) {
    return kw_load_stub_port(t->stub);
}

void kw_load_stub_thread_stop(kw_load_stub_thread *t) {
    if (!t) return;
    uv_async_send(&t->stop);
    pthread_join(t->thread, NULL);
    kw_load_stub_free(t->stub);
    uv_loop_close(&t->loop);
    free(t);
}
