/* bench_cache.c: `kvwire bench cache`: what the int8/int4 KV caches (model/kw_kvcache.h, kw_kvcache_create_quantized)
 * cost and keep, against the bf16 cache, on a real model (--model: a GGUF file or HF folder, e.g. the SmolLM2 and
 * Gemma 3 files `kvwire fetch-model` caches) on the CPU backend.
 *
 * Four reports, each optional:
 *  - bytes: the cache's backend bytes per token at --capacity rows (codes, scales, the bf16 key tail; the page table
 *    is implicit), and the ratio to bf16. Always printed.
 *  - quality (--text FILE): --prompts windows of the file's tokens, evenly spread, each --prefix tokens prefilled then
 *    --positions tokens forwarded at once with every row's logits (teacher forcing: every cache is given the same
 *    tokens so far). With --forcing greedy (the default) those tokens are the bf16 cache's own greedy continuation of
 *    the prefix (the "given the bf16 run's tokens so far"), so the bf16 cache's argmax at each row is its
 *    next greedy token; with --forcing text they are the text's own tokens. Per codec: the share of positions whose
 * argmax equals the bf16 cache's; flips where the bf16 top-2 margin exceeds 0.5, and the largest margin that flipped;
 * non-finite logits; and the relative K and V error ||q(x) - x|| / ||x|| of the codec on the bf16 cache's rows of every
 * layer. The forward gives a row the same logits as decode steps would (tests/model/test_model_kvcache.c), so this is
 * the decode-time agreement.
 *    --free N adds free-running agreement: N greedy tokens after each window's prefix per codec, the share equal to
 *    the bf16 cache's tokens up to the first difference and in all.
 *  - speed (--contexts 512,2048,8192): decode tok/s with the cache already holding C rows (random K/V written
 *    directly: the values do not change the work), per codec and relative to bf16: --reps rounds of --steps steps on
 *    every cache in turn, the best round of each.
 *  - rss (--rss-tokens N --codec C): peak RSS of a process that prefills N - 32 tokens of --text and decodes 32 with
 *    one codec; run once per codec, each in its own process.
 * Not a correctness check (tests/model and tests/kernels are); every number in docs/BENCHMARKS.md comes from here. */
#include "kw_benches.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_file.h"
#include "common/kw_status.h"
#include "common/kw_time.h"
#include "kernels/kw_backend.h"
#include "model/kw_kvcache.h"
#include "model/kw_model.h"
#include "model/kw_tokenizer.h"
#include "tools/kw_cli.h"

const char kw_bench_cache_summary[] = "int8/int4 KV cache vs bf16: bytes per token, agreement and K/V error, decode "
                                      "tok/s at long contexts, peak RSS";

static void kw_bench_cache_usage(FILE *f) {
    fprintf(
        f,
        "usage: kvwire bench cache --model PATH [--codecs int8,int4,f32] [--page-tokens N] [--threads N]\n"
        "                          [--capacity N] [--text FILE [--prompts N] [--prefix N] [--positions N]\n"
        "                          [--free N] [--forcing greedy|text]] [--contexts C,C,... [--steps N] [--reps N]]\n"
        "                          [--rss-tokens N --codec bf16|int8|int4 --text FILE]\n"
        "  --codecs     the caches compared with bf16: int8, int6, int4, f32 (default int8,int4); @L:codec after one\n"
        "               gives layer L (-1: the last) another codec or bf16: int6@0:int8@-1:int8\n"
        "  --page-tokens  rows per page (default 64)\n"
        "  --capacity   rows of the caches whose bytes are reported (default 4096)\n"
        "  --text       a text file: quality windows (--prompts 20, --prefix 32, --positions 100) and RSS input\n"
        "  --free       greedy tokens per window for free-running agreement (default 0: none)\n"
        "  --forcing    the tokens given to every cache: greedy (the bf16 cache's own continuation of the prefix,\n"
        "               the default) or text (the text's tokens)\n"
        "  --contexts   decode speed with this many rows cached (--steps 16, best of --reps 3)\n"
        "  --rss-tokens peak RSS of one generation of this many tokens with --codec (one process per codec)\n");
}

typedef struct kw_bc_codec {
    char name[96];           /* as given, layers included */
    enum kw_kvq_codec codec; /* 0: a dense cache of dtype */
    enum kw_dtype dtype;
    char layers[96]; /* per-layer codecs over codec ("0:int8,-1:int8", kw_kvcache_parse_layer_codecs), or "" */
} kw_bc_codec;

/* A codec name, optionally followed by per-layer codecs "@L:codec@L:codec..." (int6@0:int8@-1:int8). */
static int kw_bc_parse_codec(const char *s, size_t n, kw_bc_codec *out) {
    const char *at = memchr(s, '@', n);
    if (at) {
        const size_t base = (size_t)(at - s), rest = n - base - 1;
        KW_RETURN_IF(n >= sizeof out->name || rest == 0, KW_E_INVALID_ARG, "bad codec '%.*s'", (int)n, s);
        KW_FORWARD(kw_bc_parse_codec(s, base, out));
        KW_RETURN_IF(out->dtype == KW_DTYPE_F32, KW_E_INVALID_ARG, "'%.*s': per-layer codecs over f32", (int)n, s);
        memcpy(out->name, s, n);
        out->name[n] = '\0';
        for (size_t i = 0; i < rest; ++i)
            out->layers[i] = at[1 + i] == '@' ? ',' : at[1 + i];
        out->layers[rest] = '\0';
        return 0;
    }
    if (n == 4 && strncmp(s, "bf16", 4) == 0)
        *out = (kw_bc_codec){"bf16", 0, KW_DTYPE_BF16, ""};
    else if (n == 3 && strncmp(s, "f32", 3) == 0)
        *out = (kw_bc_codec){"f32", 0, KW_DTYPE_F32, ""};
    else if (n == 4 && strncmp(s, "int8", 4) == 0)
        *out = (kw_bc_codec){"int8", KW_KVQ_INT8, KW_DTYPE_U8, ""};
    else if (n == 4 && strncmp(s, "int4", 4) == 0)
        *out = (kw_bc_codec){"int4", KW_KVQ_INT4, KW_DTYPE_U8, ""};
    else if (n == 4 && strncmp(s, "int6", 4) == 0)
        *out = (kw_bc_codec){"int6", KW_KVQ_INT6, KW_DTYPE_U8, ""};
    else
        KW_FAIL(KW_E_INVALID_ARG, "unknown codec '%.*s' (bf16, f32, int8, int6, int4)", (int)n, s);
    return 0;
}

static int kw_bc_cache(kw_model *m, int64_t cap, const kw_bc_codec *c, int64_t page, kw_kvcache **out) {
    if (c->layers[0]) return kw_model_create_cache_layers(m, cap, c->codec, c->layers, (int32_t)page, out);
    if (!c->codec) return kw_model_create_cache(m, cap, c->dtype, out);
    return kw_model_create_cache_quantized(m, cap, c->codec, (int32_t)page, out);
}

/* Splits "a,b,c" into at most max numbers. */
static int kw_bc_numbers(const char *s, int64_t *out, int max, int *n) {
    *n = 0;
    while (s && *s) {
        char *end;
        const long long v = strtoll(s, &end, 10);
        KW_RETURN_IF(end == s || v <= 0 || *n >= max, KW_E_INVALID_ARG, "bad number list '%s'", s);
        out[(*n)++] = v;
        s = *end == ',' ? end + 1 : end;
        KW_RETURN_IF(*end != ',' && *end != '\0', KW_E_INVALID_ARG, "bad number list");
    }
    return 0;
}

/* Relative error of a codec on the rows of every layer of the bf16 cache src (length n): sums into *ek, *nk, ... */
static int kw_bc_kv_error(kw_model *m, kw_kvcache *src, int64_t n, const kw_bc_codec *c, int64_t page, double *ek,
                          double *nk, double *ev, double *nv) {
    const kw_model_config *cfg = kw_model_get_config(m);
    const size_t cells = (size_t)(n * cfg->n_kv_heads * cfg->head_dim);
    float *k = malloc(cells * sizeof *k), *v = malloc(cells * sizeof *v);
    float *qk = malloc(cells * sizeof *qk), *qv = malloc(cells * sizeof *qv);
    kw_kvcache *q = NULL;
    int rc = 0;
    KW_CHECK_IF(!k || !v || !qk || !qv, KW_E_NOMEM, "out of memory");
    KW_CHECK(kw_bc_cache(m, n, c, page, &q));
    for (int32_t l = 0; l < cfg->n_layers; ++l) {
        KW_CHECK(kw_kvcache_read_rows(src, l, 0, n, k, v));
        KW_CHECK(kw_kvcache_write_rows(q, l, 0, n, k, v));
        KW_CHECK(kw_kvcache_read_rows(q, l, 0, n, qk, qv));
        for (size_t i = 0; i < cells; ++i) {
            *ek += ((double)qk[i] - k[i]) * ((double)qk[i] - k[i]), *nk += (double)k[i] * k[i];
            *ev += ((double)qv[i] - v[i]) * ((double)qv[i] - v[i]), *nv += (double)v[i] * v[i];
        }
    }
out:
    kw_kvcache_free(q);
    free(k), free(v), free(qk), free(qv);
    return rc;
}

/* Forwards window ids (prefix + positions) into a fresh cache: logits (positions, vocab) of the last positions rows. */
static int kw_bc_window(kw_model *m, const kw_bc_codec *c, int64_t page, const int32_t *ids, int64_t prefix,
                        int64_t positions, float *logits, kw_kvcache **keep) {
    kw_kvcache *cache = NULL;
    int rc = 0;
    KW_CHECK(kw_bc_cache(m, prefix + positions, c, page, &cache));
    KW_CHECK(kw_model_prefill(m, cache, ids, prefix));
    const kw_forward_args fa = {.ids = ids + prefix, .n = positions, .mode = KW_LOGITS_ALL, .logits = logits};
    KW_CHECK(kw_model_forward(m, cache, &fa));
    if (keep) {
        *keep = cache;
        cache = NULL;
    }
out:
    kw_kvcache_free(cache);
    return rc;
}

/* Argmax (lowest id on ties) and the top-2 margin of a row. */
static int32_t kw_bc_top(const float *row, int64_t V, float *margin) {
    int32_t best = 0;
    for (int64_t i = 1; i < V; ++i)
        if (row[i] > row[best]) best = (int32_t)i;
    float second = -INFINITY;
    for (int64_t i = 0; i < V; ++i)
        if (i != best && row[i] > second) second = row[i];
    if (margin) *margin = row[best] - second;
    return best;
}

/* Greedy tokens after a prefix with one codec. */
static int kw_bc_greedy(kw_model *m, const kw_bc_codec *c, int64_t page, const int32_t *ids, int64_t prefix, int64_t n,
                        int32_t *out) {
    kw_kvcache *cache = NULL;
    int rc = 0;
    KW_CHECK(kw_bc_cache(m, prefix + n + 1, c, page, &cache));
    const kw_forward_args fa = {.ids = ids, .n = prefix, .mode = KW_LOGITS_LAST, .argmax = &out[0]};
    KW_CHECK(kw_model_forward(m, cache, &fa));
    for (int64_t i = 1; i < n; ++i)
        KW_CHECK(kw_model_decode_step(m, cache, out[i - 1], NULL, &out[i], 0));
out:
    kw_kvcache_free(cache);
    return rc;
}

static int kw_bc_quality(kw_model *m, const kw_bc_codec *codecs, int n_codecs, int64_t page, const int32_t *toks,
                         int64_t n_toks, int64_t prompts, int64_t prefix, int64_t positions, int64_t n_free,
                         int forcing_greedy) {
    const kw_model_config *cfg = kw_model_get_config(m);
    const int64_t V = cfg->vocab, W = prefix + positions + 1;
    KW_RETURN_IF(forcing_greedy && prefix < 2, KW_E_INVALID_ARG, "--forcing greedy needs --prefix >= 2");
    KW_RETURN_IF(n_toks < W, KW_E_INVALID_ARG, "the text has %lld tokens, a window needs %lld", (long long)n_toks,
                 (long long)W);
    const int add_bos = cfg->bos_id >= 0 && cfg->add_bos > 0;
    int rc = 0;
    float *ref = malloc((size_t)(positions * V) * sizeof *ref), *got = malloc((size_t)(positions * V) * sizeof *got);
    int32_t *ids = malloc((size_t)(W + 1) * sizeof *ids), *ref_top = malloc((size_t)positions * sizeof *ref_top);
    float *ref_margin = malloc((size_t)positions * sizeof *ref_margin);
    int32_t *gref = malloc((size_t)(n_free + 1) * sizeof *gref), *ggot = malloc((size_t)(n_free + 1) * sizeof *ggot);
    int32_t *forced = malloc((size_t)(positions + 1) * sizeof *forced);
    kw_kvcache *bf = NULL;
    typedef struct {
        int64_t agree, total, flips_big, nonfinite, free_prefix, free_same, free_total;
        float worst_flip;
        double ek, nk, ev, nv;
    } acc_t;
    acc_t *acc = calloc((size_t)n_codecs, sizeof *acc);
    KW_CHECK_IF(!ref || !got || !ids || !ref_top || !ref_margin || !gref || !ggot || !forced || !acc, KW_E_NOMEM,
                "out of memory");
    int64_t self_same = 0; /* --forcing greedy: rows where the bf16 window's argmax is its own greedy token */
    const int64_t stride = prompts > 1 ? (n_toks - W) / (prompts - 1) : 0;
    for (int64_t p = 0; p < prompts; ++p) {
        const int32_t *src = toks + p * stride;
        int64_t n = 0;
        if (add_bos) ids[n++] = cfg->bos_id;
        memcpy(ids + n, src, (size_t)(prefix + positions - n) * sizeof *ids);
        if (forcing_greedy) { /* the window becomes prefix[..-1], then prefix[-1] and the bf16 greedy tokens */
            KW_CHECK(
                kw_bc_greedy(m, &(kw_bc_codec){"bf16", 0, KW_DTYPE_BF16, ""}, page, ids, prefix, positions, forced));
            memcpy(ids + prefix, forced, (size_t)(positions - 1) * sizeof *ids); /* row i then predicts forced[i] */
        }
        const int64_t win_prefix = forcing_greedy ? prefix - 1 : prefix;
        KW_CHECK(
            kw_bc_window(m, &(kw_bc_codec){"bf16", 0, KW_DTYPE_BF16, ""}, page, ids, win_prefix, positions, ref, &bf));
        for (int64_t i = 0; i < positions; ++i) {
            ref_top[i] = kw_bc_top(ref + i * V, V, &ref_margin[i]);
            self_same += forcing_greedy && ref_top[i] == forced[i];
        }
        if (n_free)
            KW_CHECK(kw_bc_greedy(m, &(kw_bc_codec){"bf16", 0, KW_DTYPE_BF16, ""}, page, ids, prefix, n_free, gref));
        for (int c = 0; c < n_codecs; ++c) {
            acc_t *a = &acc[c];
            KW_CHECK(kw_bc_window(m, &codecs[c], page, ids, win_prefix, positions, got, NULL));
            for (int64_t i = 0; i < positions; ++i) {
                for (int64_t j = 0; j < V; ++j)
                    a->nonfinite += !isfinite(got[i * V + j]);
                const int32_t t = kw_bc_top(got + i * V, V, NULL);
                a->agree += t == ref_top[i];
                a->total += 1;
                if (t != ref_top[i]) {
                    if (ref_margin[i] > 0.5f) a->flips_big += 1;
                    if (ref_margin[i] > a->worst_flip) a->worst_flip = ref_margin[i];
                }
            }
            KW_CHECK(kw_bc_kv_error(m, bf, win_prefix + positions, &codecs[c], page, &a->ek, &a->nk, &a->ev, &a->nv));
            if (n_free) {
                KW_CHECK(kw_bc_greedy(m, &codecs[c], page, ids, prefix, n_free, ggot));
                int64_t same_prefix = 0;
                while (same_prefix < n_free && ggot[same_prefix] == gref[same_prefix])
                    ++same_prefix;
                for (int64_t i = 0; i < n_free; ++i)
                    a->free_same += ggot[i] == gref[i];
                a->free_prefix += same_prefix;
                a->free_total += n_free;
            }
        }
        kw_kvcache_free(bf);
        bf = NULL;
    }
    if (forcing_greedy) /* the forward of a window gives the decode steps' logits, so this is every row */
        printf("forcing: the bf16 cache's greedy tokens; its window argmax equals them at %lld of %lld rows\n",
               (long long)self_same, (long long)(prompts * positions));
    else
        printf("forcing: the text's tokens\n");
    for (int c = 0; c < n_codecs; ++c) {
        const acc_t *a = &acc[c];
        printf("quality %s: teacher-forced agreement %.2f%% (%lld/%lld), flips where the bf16 margin > 0.5: %lld "
               "(largest flipped margin %.3f), relative error K %.3f%% V %.3f%%, non-finite logits %lld\n",
               codecs[c].name, 100.0 * (double)a->agree / (double)a->total, (long long)a->agree, (long long)a->total,
               (long long)a->flips_big, (double)a->worst_flip, 100.0 * sqrt(a->ek / a->nk), 100.0 * sqrt(a->ev / a->nv),
               (long long)a->nonfinite);
        if (n_free)
            printf("free-running %s: %.2f%% of %lld greedy tokens equal to bf16's (%.2f%% before the first "
                   "difference)\n",
                   codecs[c].name, 100.0 * (double)a->free_same / (double)a->free_total, (long long)a->free_total,
                   100.0 * (double)a->free_prefix / (double)a->free_total);
    }
out:
    kw_kvcache_free(bf);
    free(ref), free(got), free(ids), free(ref_top), free(ref_margin), free(gref), free(ggot), free(forced), free(acc);
    return rc;
}

/* Decode tok/s with each cache (bf16 first, then codecs) holding ctx rows of random K/V: reps rounds, each timing steps
 * steps on every cache in turn (so a change of the machine's load hits every cache alike), best round per cache. */
static int kw_bc_speed(kw_model *m, const kw_bc_codec *codecs, int n_codecs, int64_t page, int64_t ctx, int64_t steps,
                       int64_t reps, double *tok_s) {
    const kw_model_config *cfg = kw_model_get_config(m);
    const int64_t chunk = 256, cells = chunk * cfg->n_kv_heads * cfg->head_dim;
    float *k = malloc((size_t)cells * sizeof *k), *v = malloc((size_t)cells * sizeof *v);
    kw_kvcache *caches[9] = {0};
    const kw_bc_codec bf16 = {"bf16", 0, KW_DTYPE_BF16, ""};
    int rc = 0;
    KW_CHECK_IF(!k || !v || n_codecs > 8, KW_E_NOMEM, "out of memory");
    uint64_t s = 0x9e3779b97f4a7c15ull;
    for (int64_t i = 0; i < cells; ++i) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        k[i] = (float)((double)(s >> 11) / 9007199254740992.0 * 4.0 - 2.0);
        v[i] = k[i] * 0.5f;
    }
    for (int c = 0; c <= n_codecs; ++c) {
        KW_CHECK(kw_bc_cache(m, ctx + steps, c ? &codecs[c - 1] : &bf16, page, &caches[c]));
        for (int64_t r = 0; r < ctx; r += chunk) {
            const int64_t n = ctx - r < chunk ? ctx - r : chunk;
            for (int32_t l = 0; l < cfg->n_layers; ++l)
                KW_CHECK(kw_kvcache_write_rows(caches[c], l, r, n, k, v));
        }
        tok_s[c] = 0;
    }
    for (int64_t rep = 0; rep < reps; ++rep)
        for (int c = 0; c <= n_codecs; ++c) {
            KW_CHECK(kw_kvcache_truncate(caches[c], ctx));
            int32_t id = 1;
            const uint64_t t0 = kw_time_now_ns();
            for (int64_t i = 0; i < steps; ++i)
                KW_CHECK(kw_model_decode_step(m, caches[c], id, NULL, &id, 0));
            const double rate = (double)steps / (kw_time_ms(t0, kw_time_now_ns()) * 1e-3);
            if (rate > tok_s[c]) tok_s[c] = rate;
        }
out:
    for (int c = 0; c <= n_codecs; ++c)
        kw_kvcache_free(caches[c]);
    free(k), free(v);
    return rc;
}

int kw_bench_cache(int argc, char **argv) {
    const char *model_path = NULL, *text_path = NULL, *codec_list = "int8,int4", *contexts = NULL, *rss_codec = NULL;
    const char *forcing = "greedy";
    int64_t page = KW_KVCACHE_PAGE_TOKENS, threads = 2, capacity = 4096, prompts = 20, prefix = 32, positions = 100;
    int64_t n_free = 0, steps = 16, reps = 3, rss_tokens = 0;
    const kw_cli_option opts[] = {
        KW_CLI_STR_REQUIRED("--model", &model_path),
        KW_CLI_STR("--text", &text_path),
        KW_CLI_STR("--codecs", &codec_list),
        KW_CLI_STR("--contexts", &contexts),
        KW_CLI_STR("--codec", &rss_codec),
        KW_CLI_STR("--forcing", &forcing),
        KW_CLI_INT("--page-tokens", &page, 16, 4096),
        KW_CLI_INT("--threads", &threads, 1, 256),
        KW_CLI_INT("--capacity", &capacity, 1, 1 << 24),
        KW_CLI_INT("--prompts", &prompts, 1, 1000),
        KW_CLI_INT("--prefix", &prefix, 1, 1 << 16),
        KW_CLI_INT("--positions", &positions, 1, 1 << 16),
        KW_CLI_INT("--free", &n_free, 0, 1 << 16),
        KW_CLI_INT("--steps", &steps, 1, 1 << 16),
        KW_CLI_INT("--reps", &reps, 1, 100),
        KW_CLI_INT("--rss-tokens", &rss_tokens, 0, 1 << 24),
    };
    const int st = KW_CLI_PARSE("kvwire bench cache", argc, argv, opts, kw_bench_cache_usage);
    if (st != KW_CLI_RUN) return st;

    int rc = 0;
    kw_backend *be = NULL;
    kw_model *m = NULL;
    kw_tokenizer *tok = NULL;
    kw_kvcache *cache = NULL;
    char *text = NULL;
    size_t text_len = 0, n_toks = 0;
    int32_t *toks = NULL;
    kw_bc_codec codecs[8];
    int n_codecs = 0;
    const int forcing_greedy = strcmp(forcing, "greedy") == 0;
    KW_CHECK_IF(!forcing_greedy && strcmp(forcing, "text") != 0, KW_E_INVALID_ARG,
                "--forcing is greedy or text, not '%s'", forcing);
    for (const char *s = codec_list; *s;) {
        const char *e = strchr(s, ',');
        const size_t n = e ? (size_t)(e - s) : strlen(s);
        KW_CHECK_IF(n_codecs == 8, KW_E_INVALID_ARG, "too many codecs");
        KW_CHECK(kw_bc_parse_codec(s, n, &codecs[n_codecs++]));
        s += n + (e ? 1 : 0);
    }
    KW_CHECK(kw_backend_create_cpu((int)threads, &be));
    KW_CHECK(kw_model_load(be, model_path, NULL, &m));
    const kw_model_config *cfg = kw_model_get_config(m);
    if (text_path) {
        KW_CHECK(kw_file_read_all(text_path, (size_t)64 << 20, &text, &text_len));
        KW_CHECK(kw_tokenizer_load(model_path, &tok));
        KW_CHECK(kw_tokenizer_encode(tok, text, text_len, &toks, &n_toks));
    }

    if (rss_tokens > 0) { /* one generation, one codec: this process's peak RSS */
        kw_bc_codec c;
        KW_CHECK_IF(!rss_codec || !toks, KW_E_INVALID_ARG, "--rss-tokens needs --codec and --text");
        KW_CHECK(kw_bc_parse_codec(rss_codec, strlen(rss_codec), &c));
        const int64_t decode = 32, pre = rss_tokens - decode;
        KW_CHECK_IF(pre < 1 || (int64_t)n_toks < pre, KW_E_INVALID_ARG, "the text has %zu tokens, need %lld", n_toks,
                    (long long)pre);
        KW_CHECK(kw_bc_cache(m, rss_tokens, &c, page, &cache));
        int32_t id = 0;
        const kw_forward_args fa = {.ids = toks, .n = pre, .mode = KW_LOGITS_LAST, .argmax = &id};
        const uint64_t t0 = kw_time_now_ns();
        KW_CHECK(kw_model_forward(m, cache, &fa));
        for (int64_t i = 0; i < decode; ++i)
            KW_CHECK(kw_model_decode_step(m, cache, id, NULL, &id, 0));
        printf("rss %s: %lld-token generation (%lld prefilled, %lld decoded) in %.1f s, cache %.2f MB, peak RSS "
               "%.1f MB\n",
               c.name, (long long)rss_tokens, (long long)pre, (long long)decode,
               kw_time_ms(t0, kw_time_now_ns()) * 1e-3, (double)kw_kvcache_bytes(cache) * 1e-6,
               (double)kw_time_peak_rss_bytes() * 1e-6);
        goto out;
    }

    printf("model %s: %d layers, %d kv heads of %d; page %lld rows; %lld threads (%s)\n", model_path,
           (int)cfg->n_layers, (int)cfg->n_kv_heads, (int)cfg->head_dim, (long long)page, (long long)threads,
           kw_backend_cpu_isa(be));
    uint64_t bf16_bytes = 0;
    KW_CHECK(kw_model_create_cache(m, capacity, KW_DTYPE_BF16, &cache));
    bf16_bytes = kw_kvcache_bytes(cache);
    kw_kvcache_free(cache);
    cache = NULL;
    printf("bytes bf16: %.1f per token (%lld-row cache %.2f MB)\n", (double)bf16_bytes / (double)capacity,
           (long long)capacity, (double)bf16_bytes * 1e-6);
    for (int c = 0; c < n_codecs; ++c) {
        KW_CHECK(kw_bc_cache(m, capacity, &codecs[c], page, &cache));
        const uint64_t b = kw_kvcache_bytes(cache);
        kw_kvcache_free(cache);
        cache = NULL;
        printf("bytes %s: %.1f per token, %.2f%% of bf16 (everything counted: codes, scales, bf16 key tail)\n",
               codecs[c].name, (double)b / (double)capacity, 100.0 * (double)b / (double)bf16_bytes);
    }
    if (toks)
        KW_CHECK(kw_bc_quality(m, codecs, n_codecs, page, toks, (int64_t)n_toks, prompts, prefix, positions, n_free,
                               forcing_greedy));
    if (contexts) {
        int64_t ctx[16];
        int n_ctx = 0;
        KW_CHECK(kw_bc_numbers(contexts, ctx, 16, &n_ctx));
        for (int i = 0; i < n_ctx; ++i) {
            double rate[9];
            KW_CHECK(kw_bc_speed(m, codecs, n_codecs, page, ctx[i], steps, reps, rate));
            printf("speed context %lld: bf16 %.2f tok/s", (long long)ctx[i], rate[0]);
            for (int c = 0; c < n_codecs; ++c)
                printf(", %s %.2f tok/s (%.3fx)", codecs[c].name, rate[c + 1], rate[c + 1] / rate[0]);
            printf("\n");
            fflush(stdout);
        }
    }
out:
    if (rc < 0) fprintf(stderr, "kvwire bench cache: %s (%s)\n", kw_strerror(rc), kw_error_detail());
    kw_kvcache_free(cache);
    free(toks);
    free(text);
    kw_tokenizer_free(tok);
    kw_model_free(m);
    kw_backend_destroy(be);
    return rc < 0 ? 1 : 0;
}
