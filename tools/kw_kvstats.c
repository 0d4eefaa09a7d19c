/* kw_kvstats.c: KV cache magnitudes and per-codec decoding quality on real prompts (see kw_kvstats.h). */
#include "tools/kw_kvstats.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_half.h"
#include "common/kw_status.h"
#include "model/kw_generate.h"
#include "model/kw_kvcache.h"

/* Per (kind, layer, head, channel) and per (kind, layer, head) sums over every prompt row. */
typedef struct kw_kvstats_acc {
    double *ch_abs;          /* [head_index * D + d] sum |x| */
    float *ch_min, *ch_max;  /* [head_index * D + d] */
    double *sum_abs;         /* [head_index] */
    double *max_abs;         /* [head_index] */
    double *sum_token_range; /* [head_index] */
    double *pos_norm;        /* [layer * (KW_KVSTATS_POSITIONS + 1) + p] sum of head vectors' L2 norms at position p
                                (the last slot: every later position) */
} kw_kvstats_acc;

struct kw_kvstats {
    kw_model *model; /* borrowed */
    int32_t n_layers, n_heads, head_dim, vocab, n_new;
    kw_kvstats_codec *codecs;   /* owned, n_codecs */
    kw_kvstats_result *results; /* owned, n_codecs */
    int32_t n_codecs;
    kw_kvstats_acc acc[2];                       /* K, V */
    int64_t rows;                                /* prompt rows so far */
    int64_t n_prompts;                           /* prompts so far (PICK_RAND's seed) */
    int need_queries;                            /* some codec ranks rows by attention: keep the prefill's queries */
    int64_t pos_count[KW_KVSTATS_POSITIONS + 1]; /* head vectors summed into each pos_norm slot of one layer */
    float *ref_logits;                           /* owned (n_new, vocab): the reference's logits at each step */
    double *ref_lse;                             /* owned (n_new): their log-sum-exp */
    int32_t *ref_ids, *argmax, *free_ids;        /* owned, n_new each */
    double *qk_a, *qk_b, *qk_bc; /* owned with kw_kvstats_qk_gain_enable, [(layer * H + head) * D + d]: sums of q^2
                                    over the head's query heads, of k^2, of the centred k^2 */
};

static void kw_kvstats_acc_free(kw_kvstats_acc *a) {
    free(a->ch_abs);
    free(a->ch_min);
    free(a->ch_max);
    free(a->sum_abs);
    free(a->max_abs);
    free(a->sum_token_range);
    free(a->pos_norm);
}

void kw_kvstats_free(kw_kvstats *s) {
    if (!s) return;
    for (int k = 0; k < 2; ++k)
        kw_kvstats_acc_free(&s->acc[k]);
    free(s->codecs);
    free(s->results);
    free(s->ref_logits);
    free(s->ref_lse);
    free(s->ref_ids);
    free(s->argmax);
    free(s->free_ids);
    free(s->qk_a);
    free(s->qk_b);
    free(s->qk_bc);
    free(s);
}

int kw_kvstats_create(kw_model *model, const kw_kvstats_codec *codecs, int32_t n_codecs, int32_t n_new,
                      kw_kvstats **out) {
    KW_RETURN_IF(!model || !out || (n_codecs > 0 && !codecs) || n_codecs < 0 || n_new < 1, KW_E_INVALID_ARG,
                 "kw_kvstats_create: bad argument");
    *out = NULL;
    const kw_model_config *cfg = kw_model_get_config(model);
    for (int32_t c = 0; c < n_codecs; ++c) {
        const kw_kvstats_codec *co = &codecs[c];
        KW_RETURN_IF(co->n_overrides < 0 || co->n_overrides > KW_KVSTATS_MAX_OVERRIDES, KW_E_INVALID_ARG,
                     "codec %s: %d per-layer overrides", co->name, (int)co->n_overrides);
        for (int32_t l = 0; l < KW_KVSTATS_MAX_LAYERS; ++l) {
            KW_RETURN_IF(co->layer_codec[l] > co->n_overrides, KW_E_INVALID_ARG,
                         "codec %s: layer %d takes override %d of %d", co->name, (int)l, (int)co->layer_codec[l],
                         (int)co->n_overrides);
            KW_RETURN_IF(co->layer_codec[l] && l >= cfg->n_layers, KW_E_INVALID_ARG,
                         "codec %s: the schedule names layer %d, the model has %d layers", co->name, (int)l,
                         (int)cfg->n_layers);
        }
        KW_RETURN_IF(co->n_token_rules < 0 || co->n_token_rules > KW_KVSTATS_MAX_TOKEN_RULES, KW_E_INVALID_ARG,
                     "codec %s: %d token rules", co->name, (int)co->n_token_rules);
        KW_RETURN_IF(co->n_token_rules && co->lossless && co->n_overrides == 0, KW_E_INVALID_ARG,
                     "codec %s: token rules on a row that quantizes no layer", co->name);
        for (int32_t o = -1; o < co->n_overrides; ++o) {
            const int lossless = o < 0 ? co->lossless : co->overrides[o].lossless;
            const int center = o < 0 ? co->center : co->overrides[o].center;
            const int pre_rope = o < 0 ? co->pre_rope : co->overrides[o].pre_rope;
            const int qscale = o < 0 ? co->qscale : co->overrides[o].qscale;
            KW_RETURN_IF(qscale < 0 || qscale > KW_KVSTATS_QSCALE_CHANNELS || (qscale && (lossless || pre_rope)),
                         KW_E_INVALID_ARG,
                         "codec %s: query-weighted keys need a quantized layer whose keys are sent after RoPE",
                         co->name);
            KW_RETURN_IF(center < KW_KVSTATS_CENTER_NONE || center > KW_KVSTATS_CENTER_PRE8 ||
                             (center && (lossless || pre_rope)),
                         KW_E_INVALID_ARG,
                         "codec %s: centred keys (%d) need a quantized layer whose keys are sent after RoPE", co->name,
                         center);
        }
        int32_t n_pick = 0;
        for (int32_t i = 0; i < co->n_token_rules; ++i) {
            const kw_kvstats_token_rule *tr = &co->token_rules[i];
            KW_RETURN_IF(tr->pick < KW_KVSTATS_PICK_POSITIONS || tr->pick > KW_KVSTATS_PICK_RAND, KW_E_INVALID_ARG,
                         "codec %s: token rule %d picks rows by %d", co->name, (int)i, tr->pick);
            n_pick += tr->pick != KW_KVSTATS_PICK_POSITIONS;
            KW_RETURN_IF(
                tr->pick && (!(tr->fraction > 0.0 && tr->fraction <= 1.0) || tr->omit || n_pick > 1), KW_E_INVALID_ARG,
                "codec %s: token rule %d: a picking rule takes a fraction in (0, 1], sends its rows (no omit), "
                "one per row",
                co->name, (int)i);
            KW_RETURN_IF(!tr->pick && (tr->from_end ? tr->first == 0 : tr->first > tr->last), KW_E_INVALID_ARG,
                         "codec %s: token rule %d covers no position", co->name, (int)i);
            KW_RETURN_IF(tr->omit && (tr->from_end || tr->first != 0), KW_E_INVALID_ARG,
                         "codec %s: token rule %d omits rows that are not a prefix", co->name, (int)i);
            for (int32_t o = -1; o < co->n_overrides && !tr->omit; ++o) { /* FORMAT.md §5.12 */
                const int rot =
                    o < 0 ? (co->lossless ? 0 : co->rotate) : (co->overrides[o].lossless ? 0 : co->overrides[o].rotate);
                KW_RETURN_IF(((rot & 1) && kw_wire_codec_is_passthrough(tr->spec.codec)) ||
                                 ((rot & 2) && kw_wire_codec_is_passthrough(tr->spec_v.codec)),
                             KW_E_INVALID_ARG,
                             "codec %s: token rule %d puts a passthrough codec in a rotated layer, which needs a "
                             "quantizing codec",
                             co->name, (int)i);
            }
        }
    }
    int rc = 0;
    kw_kvstats *s = calloc(1, sizeof *s);
    KW_RETURN_IF(!s, KW_E_NOMEM, "out of memory");
    s->model = model;
    s->n_layers = cfg->n_layers;
    s->n_heads = cfg->n_kv_heads;
    s->head_dim = cfg->head_dim;
    s->vocab = cfg->vocab;
    s->n_new = n_new;
    s->n_codecs = n_codecs;
    for (int32_t c = 0; c < n_codecs; ++c) {
        s->need_queries |= codecs[c].qscale && !codecs[c].lossless;
        for (int32_t o = 0; o < codecs[c].n_overrides; ++o)
            s->need_queries |= codecs[c].overrides[o].qscale && !codecs[c].overrides[o].lossless;
    }
    for (int32_t c = 0; c < n_codecs; ++c)
        for (int32_t i = 0; i < codecs[c].n_token_rules; ++i)
            s->need_queries |= codecs[c].token_rules[i].pick == KW_KVSTATS_PICK_ATTN ||
                               codecs[c].token_rules[i].pick == KW_KVSTATS_PICK_LEAST;
    const size_t heads = (size_t)s->n_layers * (size_t)s->n_heads, chans = heads * (size_t)s->head_dim;
    s->codecs = calloc((size_t)n_codecs + 1, sizeof *s->codecs);
    s->results = calloc((size_t)n_codecs + 1, sizeof *s->results);
    s->ref_logits = malloc((size_t)n_new * (size_t)s->vocab * sizeof *s->ref_logits);
    s->ref_lse = malloc((size_t)n_new * sizeof *s->ref_lse);
    s->ref_ids = malloc((size_t)n_new * sizeof *s->ref_ids);
    s->argmax = malloc((size_t)n_new * sizeof *s->argmax);
    s->free_ids = malloc((size_t)n_new * sizeof *s->free_ids);
    KW_CHECK_IF(!s->codecs || !s->results || !s->ref_logits || !s->ref_lse || !s->ref_ids || !s->argmax || !s->free_ids,
                KW_E_NOMEM, "out of memory");
    if (n_codecs) memcpy(s->codecs, codecs, (size_t)n_codecs * sizeof *codecs);
    for (int k = 0; k < 2; ++k) {
        kw_kvstats_acc *a = &s->acc[k];
        a->ch_abs = calloc(chans, sizeof *a->ch_abs);
        a->ch_min = malloc(chans * sizeof *a->ch_min);
        a->ch_max = malloc(chans * sizeof *a->ch_max);
        a->sum_abs = calloc(heads, sizeof *a->sum_abs);
        a->max_abs = calloc(heads, sizeof *a->max_abs);
        a->sum_token_range = calloc(heads, sizeof *a->sum_token_range);
        a->pos_norm = calloc((size_t)s->n_layers * (KW_KVSTATS_POSITIONS + 1), sizeof *a->pos_norm);
        KW_CHECK_IF(!a->ch_abs || !a->ch_min || !a->ch_max || !a->sum_abs || !a->max_abs || !a->sum_token_range ||
                        !a->pos_norm,
                    KW_E_NOMEM, "out of memory");
        for (size_t i = 0; i < chans; ++i) {
            a->ch_min[i] = INFINITY;
            a->ch_max[i] = -INFINITY;
        }
    }
    *out = s;
    s = NULL;
out:
    kw_kvstats_free(s);
    return rc;
}

/* Adds rows x (T, H, D) of one layer to the accumulators of kind. */
static void kw_kvstats_accumulate(kw_kvstats *s, int kind, int32_t layer, const float *x, int64_t T) {
    kw_kvstats_acc *a = &s->acc[kind];
    const int32_t H = s->n_heads, D = s->head_dim;
    for (int64_t t = 0; t < T; ++t) {
        const int64_t slot = t < KW_KVSTATS_POSITIONS ? t : KW_KVSTATS_POSITIONS;
        for (int32_t h = 0; h < H; ++h) {
            const size_t hi = (size_t)layer * (size_t)H + (size_t)h;
            const float *row = x + ((size_t)t * (size_t)H + (size_t)h) * (size_t)D;
            float lo = row[0], hi_v = row[0];
            double sq = 0.0;
            for (int32_t d = 0; d < D; ++d) {
                const float v = row[d];
                sq += (double)v * (double)v;
                const size_t c = hi * (size_t)D + (size_t)d;
                a->ch_abs[c] += fabs((double)v);
                a->sum_abs[hi] += fabs((double)v);
                if (fabs((double)v) > a->max_abs[hi]) a->max_abs[hi] = fabs((double)v);
                if (v < a->ch_min[c]) a->ch_min[c] = v;
                if (v > a->ch_max[c]) a->ch_max[c] = v;
                if (v < lo) lo = v;
                if (v > hi_v) hi_v = v;
            }
            a->sum_token_range[hi] += (double)hi_v - (double)lo;
            a->pos_norm[(size_t)layer * (KW_KVSTATS_POSITIONS + 1) + (size_t)slot] += sqrt(sq);
        }
    }
}

int kw_kvstats_position_get(const kw_kvstats *s, int kind, int32_t layer, int32_t p, double *norm, int64_t *count) {
    KW_RETURN_IF(!s || !norm || !count || kind < 0 || kind > 1 || layer < 0 || layer >= s->n_layers || p < 0 ||
                     p > KW_KVSTATS_POSITIONS,
                 KW_E_INVALID_ARG, "kw_kvstats_position_get: bad argument");
    *count = s->pos_count[p];
    *norm =
        *count ? s->acc[kind].pos_norm[(size_t)layer * (KW_KVSTATS_POSITIONS + 1) + (size_t)p] / (double)*count : 0.0;
    return 0;
}

static int kw_kvstats_cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int kw_kvstats_head_get(const kw_kvstats *s, int kind, int32_t layer, int32_t head, kw_kvstats_head *out) {
    KW_RETURN_IF(!s || !out || kind < 0 || kind > 1 || layer < 0 || layer >= s->n_layers || head < 0 ||
                     head >= s->n_heads,
                 KW_E_INVALID_ARG, "kw_kvstats_head_get: bad argument");
    KW_RETURN_IF(s->rows == 0, KW_E_INVALID_ARG, "kw_kvstats_head_get: no prompt measured yet");
    const kw_kvstats_acc *a = &s->acc[kind];
    const int32_t D = s->head_dim;
    const size_t hi = (size_t)layer * (size_t)s->n_heads + (size_t)head;
    double *means = malloc((size_t)D * sizeof *means);
    KW_RETURN_IF(!means, KW_E_NOMEM, "out of memory");
    memset(out, 0, sizeof *out);
    double range = 0.0, best = -1.0;
    for (int32_t d = 0; d < D; ++d) {
        const size_t c = hi * (size_t)D + (size_t)d;
        means[d] = a->ch_abs[c] / (double)s->rows;
        range += (double)a->ch_max[c] - (double)a->ch_min[c];
        if (means[d] > best) {
            best = means[d];
            out->outlier_channel = d;
        }
    }
    qsort(means, (size_t)D, sizeof *means, kw_kvstats_cmp_double);
    const double median = D % 2 ? means[D / 2] : 0.5 * (means[D / 2 - 1] + means[D / 2]);
    free(means);
    out->outlier_ratio = median > 0.0 ? best / median : 0.0;
    out->mean_abs = a->sum_abs[hi] / ((double)s->rows * (double)D);
    out->max_abs = a->max_abs[hi];
    out->token_range = a->sum_token_range[hi] / (double)s->rows;
    out->channel_range = range / (double)D;
    return 0;
}

const kw_kvstats_result *kw_kvstats_result_get(const kw_kvstats *s, int32_t c) {
    return s && c >= 0 && c < s->n_codecs ? &s->results[c] : NULL;
}

int64_t kw_kvstats_rows(const kw_kvstats *s) {
    return s ? s->rows : 0;
}

/* log(sum(exp(logits[0..n)))), in double. */
static double kw_kvstats_lse(const float *logits, int32_t n) {
    double mx = logits[0], sum = 0.0;
    for (int32_t i = 1; i < n; ++i)
        if (logits[i] > mx) mx = logits[i];
    for (int32_t i = 0; i < n; ++i)
        sum += exp((double)logits[i] - mx);
    return mx + log(sum);
}

/* KL(p || q) of the distributions of two logit vectors (p given with its log-sum-exp). Identical logits give 0
 * exactly: both sides take the same arithmetic. */
static double kw_kvstats_kl(const float *p, double p_lse, const float *q, int32_t n) {
    const double q_lse = kw_kvstats_lse(q, n);
    double kl = 0.0;
    for (int32_t i = 0; i < n; ++i) {
        const double lp = (double)p[i] - p_lse, lq = (double)q[i] - q_lse;
        kl += exp(lp) * (lp - lq);
    }
    return kl > 0.0 ? kl : 0.0;
}

/* on_logits of the reference run: its logits and tokens. */
static int kw_kvstats_on_ref(void *user, int64_t step, const float *logits, int32_t vocab, int32_t argmax) {
    kw_kvstats *s = user;
    memcpy(s->ref_logits + (size_t)step * (size_t)vocab, logits, (size_t)vocab * sizeof *logits);
    s->ref_lse[step] = kw_kvstats_lse(logits, vocab);
    s->ref_ids[step] = argmax;
    return 0;
}

typedef struct kw_kvstats_tf {
    kw_kvstats *s;
    kw_kvstats_result *r;
} kw_kvstats_tf;

/* on_logits of a teacher-forced run: agreement and KL against the reference at each step. */
static int kw_kvstats_on_forced(void *user, int64_t step, const float *logits, int32_t vocab, int32_t argmax) {
    kw_kvstats_tf *tf = user;
    kw_kvstats *s = tf->s;
    s->argmax[step] = argmax;
    tf->r->tf_agree += argmax == s->ref_ids[step];
    tf->r->tf_steps += 1;
    tf->r->kl_sum += kw_kvstats_kl(s->ref_logits + (size_t)step * (size_t)vocab, s->ref_lse[step], logits, vocab);
    return 0;
}

int kw_kvstats_attention_received(const float *q, const float *k, int64_t T, int32_t n_heads, int32_t n_kv_heads,
                                  int32_t D, float scale, int64_t window, int64_t from, double *mass) {
    KW_RETURN_IF(!q || !k || !mass || T < 0 || n_kv_heads < 1 || n_heads % n_kv_heads != 0 || D < 1, KW_E_INVALID_ARG,
                 "kw_kvstats_attention_received: bad argument");
    for (int64_t t = 0; t < T; ++t)
        mass[t] = 0.0;
    double *p = malloc((size_t)(T > 0 ? T : 1) * sizeof *p); /* one query's scores, then probabilities */
    KW_RETURN_IF(!p, KW_E_NOMEM, "out of memory for %lld attention scores", (long long)T);
    const int32_t group = n_heads / n_kv_heads;
    for (int64_t i = from < 0 ? 0 : from; i < T; ++i) {
        const int64_t j0 = window > 0 && i - window + 1 > 0 ? i - window + 1 : 0;
        for (int32_t h = 0; h < n_heads; ++h) {
            const float *qi = q + ((size_t)i * (size_t)n_heads + (size_t)h) * (size_t)D;
            double mx = -INFINITY, sum = 0.0;
            for (int64_t j = j0; j <= i; ++j) {
                const float *kj = k + ((size_t)j * (size_t)n_kv_heads + (size_t)(h / group)) * (size_t)D;
                double dot = 0.0;
                for (int32_t d = 0; d < D; ++d)
                    dot += (double)qi[d] * (double)kj[d];
                p[j] = dot * (double)scale;
                if (p[j] > mx) mx = p[j];
            }
            for (int64_t j = j0; j <= i; ++j) {
                p[j] = exp(p[j] - mx);
                sum += p[j];
            }
            for (int64_t j = j0; j <= i; ++j)
                mass[j] += p[j] / sum;
        }
    }
    free(p);
    return 0;
}

typedef struct kw_kvstats_ranked {
    double score;
    int64_t t;
} kw_kvstats_ranked;

/* Highest score first, then the lower position. */
static int kw_kvstats_cmp_ranked(const void *a, const void *b) {
    const kw_kvstats_ranked *x = a, *y = b;
    const int xn = isnan(x->score), yn = isnan(y->score); /* NaN scores last, so the order is total */
    if (xn != yn) return xn - yn;
    if (!xn && x->score != y->score) return x->score > y->score ? -1 : 1;
    return (x->t > y->t) - (x->t < y->t);
}

int kw_kvstats_pick_rows(const double *score, int64_t t0, int64_t T, const uint8_t *taken, double fraction,
                         uint8_t *chosen, int64_t *n_chosen) {
    KW_RETURN_IF(!score || !chosen || t0 < 0 || T < t0 || !(fraction > 0.0 && fraction <= 1.0), KW_E_INVALID_ARG,
                 "kw_kvstats_pick_rows: bad argument");
    kw_kvstats_ranked *r = malloc((size_t)(T > 0 ? T : 1) * sizeof *r); /* the rows no positional rule takes */
    KW_RETURN_IF(!r, KW_E_NOMEM, "out of memory for %lld rows' ranks", (long long)T);
    int64_t m = 0;
    for (int64_t t = 0; t < T; ++t) {
        chosen[t] = 0;
        if (t >= t0 && !(taken && taken[t])) r[m++] = (kw_kvstats_ranked){score[t], t};
    }
    int64_t n = (int64_t)floor(fraction * (double)(T - t0) + 0.5);
    if (n < 1) n = 1;
    if (n > m) n = m;
    qsort(r, (size_t)m, sizeof *r, kw_kvstats_cmp_ranked);
    for (int64_t i = 0; i < n; ++i)
        chosen[r[i].t] = 1;
    free(r);
    if (n_chosen) *n_chosen = n;
    return 0;
}

kw_kvstats_layer_codec kw_kvstats_base_layer(const kw_kvstats_codec *c) {
    return (kw_kvstats_layer_codec){.lossless = c->lossless,
                                    .spec = c->spec,
                                    .spec_v = c->spec_v,
                                    .outlier_fraction = c->outlier_fraction,
                                    .pre_rope = c->pre_rope,
                                    .rotate = c->rotate,
                                    .clip = c->clip,
                                    .center = c->center,
                                    .qscale = c->qscale,
                                    .zstd = c->zstd,
                                    .rans = c->rans,
                                    .qmax_k = c->qmax_k,
                                    .qmax_v = c->qmax_v};
}

/* Layer l's codec in row c: the base's fields, or the override the schedule gives it. */
static kw_kvstats_layer_codec kw_kvstats_layer(const kw_kvstats_codec *c, int32_t l) {
    if (l < KW_KVSTATS_MAX_LAYERS && c->layer_codec[l]) return c->overrides[c->layer_codec[l] - 1];
    return kw_kvstats_base_layer(c);
}

/* The rows at the start of every prompt of T rows that row c does not send (its omit rules), at most T. */
static int64_t kw_kvstats_omitted(const kw_kvstats_codec *c, int64_t T) {
    int64_t n = 0;
    for (int32_t i = 0; i < c->n_token_rules; ++i)
        if (c->token_rules[i].omit && !c->token_rules[i].pick && (int64_t)c->token_rules[i].last + 1 > n)
            n = (int64_t)c->token_rules[i].last + 1;
    return n < T ? n : T;
}

int kw_kvstats_center_offsets(const kw_model_config *cfg, int32_t layer, int mode, const float *mu, int64_t p0,
                              int64_t n, float *out) {
    KW_RETURN_IF(!cfg || !mu || !out || n < 0 || p0 < 0 || mode < KW_KVSTATS_CENTER_PRE ||
                     mode > KW_KVSTATS_CENTER_PRE8,
                 KW_E_INVALID_ARG, "kw_kvstats_center_offsets: bad argument");
    const size_t row = (size_t)cfg->n_kv_heads * (size_t)cfg->head_dim;
    for (int64_t t = 0; t < n; ++t)
        memcpy(out + (size_t)t * row, mu, row * sizeof *out);
    if (mode == KW_KVSTATS_CENTER_POST || n == 0) return 0;
    int64_t *pos = malloc((size_t)n * sizeof *pos);
    KW_RETURN_IF(!pos, KW_E_NOMEM, "out of memory for %lld positions", (long long)n);
    for (int64_t t = 0; t < n; ++t)
        pos[t] = p0 + t;
    const int rc = kw_config_rope_rows(cfg, layer, pos, n, 0, out);
    free(pos);
    return rc;
}

int64_t kw_kvstats_center_bytes(int mode, int32_t n_kv_heads, int32_t head_dim) {
    return mode == KW_KVSTATS_CENTER_PRE8 ? (int64_t)n_kv_heads * (head_dim + 2) : (int64_t)n_kv_heads * head_dim * 2;
}

/* mu (H, D) of a centred layer: the mean of the keys k (T, H, D) over rows [t0, T), before RoPE with
 * KW_KVSTATS_CENTER_PRE (tmp: (T - t0) rows of scratch), rounded to f16 as it would be sent. */
static int kw_kvstats_center_mu(const kw_model_config *cfg, int32_t layer, int mode, const float *k, int64_t t0,
                                int64_t T, float *tmp, float *mu) {
    const size_t row = (size_t)cfg->n_kv_heads * (size_t)cfg->head_dim;
    const int64_t n = T - t0;
    const float *src = k + (size_t)t0 * row;
    if (mode != KW_KVSTATS_CENTER_POST && n > 0) {
        int64_t *pos = malloc((size_t)n * sizeof *pos);
        KW_RETURN_IF(!pos, KW_E_NOMEM, "out of memory for %lld positions", (long long)n);
        for (int64_t t = 0; t < n; ++t)
            pos[t] = t0 + t;
        memcpy(tmp, src, (size_t)n * row * sizeof *tmp);
        const int rc = kw_config_rope_rows(cfg, layer, pos, n, 1, tmp);
        free(pos);
        KW_FORWARD(rc);
        src = tmp;
    }
    for (size_t i = 0; i < row; ++i) {
        double sum = 0.0;
        for (int64_t t = 0; t < n; ++t)
            sum += (double)src[(size_t)t * row + i];
        mu[i] = kw_round_f16(n > 0 ? (float)(sum / (double)n) : 0.0f);
    }
    if (mode != KW_KVSTATS_CENTER_PRE8) return 0;
    for (int32_t h = 0; h < cfg->n_kv_heads; ++h) { /* int8 codes times an f16 scale, absmax / 127 */
        float *m = mu + (size_t)h * (size_t)cfg->head_dim, amax = 0.0f;
        for (int32_t d = 0; d < cfg->head_dim; ++d)
            amax = fabsf(m[d]) > amax ? fabsf(m[d]) : amax;
        const float scale = kw_round_f16(amax / 127.0f);
        for (int32_t d = 0; d < cfg->head_dim; ++d) {
            const float c = scale > 0.0f ? nearbyintf(m[d] / scale) : 0.0f;
            m[d] = (c > 127.0f ? 127.0f : c < -127.0f ? -127.0f : c) * scale;
        }
    }
    return 0;
}

/* The exponents e (H x D) of a query-weighted layer (kw_kvstats_codec.qscale): q (T, Hq, D) the prefill's queries,
 * k (T, H, D) the keys as they will be encoded, rows [t0, T) sent. */
static void kw_kvstats_qscale_exps(const kw_model_config *cfg, int32_t layer, int mode, const float *q, const float *k,
                                   int64_t t0, int64_t T, int8_t *e) {
    const int32_t H = cfg->n_kv_heads, D = cfg->head_dim, Hq = cfg->n_heads, group = Hq / H;
    const int32_t half = mode == KW_KVSTATS_QSCALE_PAIRS ? kw_config_rope_half(cfg, layer) : 0;
    for (int32_t h = 0; h < H; ++h) {
        int le[1024];
        double sum_e = 0.0;
        for (int32_t d = 0; d < D && d < 1024; ++d) {
            if (d >= half && d < 2 * half) continue; /* a pair's second channel takes its first's */
            double A = 0.0, B = 0.0;
            for (int32_t j = 0; j < (d < half ? 2 : 1); ++j) {
                const int32_t c = d + j * half;
                for (int64_t t = 0; t < T; ++t)
                    for (int32_t g = 0; g < group; ++g) {
                        const double x = (double)q[((size_t)t * (size_t)Hq + (size_t)(h * group + g)) * (size_t)D + c];
                        A += x * x;
                    }
                for (int64_t t = t0; t < T; ++t) {
                    const double x = (double)k[((size_t)t * (size_t)H + (size_t)h) * (size_t)D + c];
                    B += x * x;
                }
            }
            le[d] = A > 0.0 && B > 0.0 ? (int)lround(0.25 * log2(A / B)) : 0;
            if (d < half) le[d + half] = le[d];
        }
        for (int32_t d = 0; d < D; ++d)
            sum_e += le[d];
        const int mean = (int)lround(sum_e / (double)D);
        for (int32_t d = 0; d < D; ++d) {
            const int x = le[d] - mean;
            e[(size_t)h * (size_t)D + (size_t)d] = (int8_t)(x < -24 ? -24 : x > 24 ? 24 : x);
        }
    }
}

/* The section policy of one layer codec of row c for sections of rows [t0, T). With token rules, groups (T entries,
 * owned by the caller, valid while the policy is used) gets one token group per run of rows taking the same rule;
 * chosen (T entries, or NULL): the rows c's picking rule takes in this layer, each run of them one more wire rule in
 * rules (n_token_rules + T entries, caller-owned scratch). More groups than a section holds (FORMAT.md §4.2) is
 * KW_E_LIMIT, never a blob. */
static int kw_kvstats_policy(const kw_kvstats *s, const kw_kvstats_codec *c, const kw_kvstats_layer_codec *lc,
                             int32_t l, int64_t t0, int64_t T, const uint8_t *chosen, kw_wire_token_rule *rules,
                             kw_wire_token_group *groups, kw_wire_policy *out) {
    const double elems = 2.0 * (double)s->n_heads * (double)(T - t0) * (double)s->head_dim;
    kw_wire_policy pol = {.k = lc->spec,
                          .v = lc->spec_v,
                          .outliers = (uint32_t)floor(lc->outlier_fraction * elems + 0.5),
                          .outlier_dtype = KW_WIRE_DTYPE_BF16,
                          .pre_rope = (uint8_t)(lc->pre_rope != 0),
                          .rotate = (uint8_t)lc->rotate,
                          .clip = (uint8_t)lc->clip,
                          .zstd_level = lc->zstd,
                          .rans = (uint8_t)(lc->rans != 0),
                          .code_limit_k = (uint8_t)lc->qmax_k,
                          .code_limit_v = (uint8_t)lc->qmax_v};
    *out = pol;
    if (c->n_token_rules == 0) return 0;
    uint32_t n_rules = 0;
    const kw_kvstats_token_rule *picker = NULL;
    for (int32_t i = 0; i < c->n_token_rules; ++i) { /* omitted prefixes end before t0: never taken */
        const kw_kvstats_token_rule *tr = &c->token_rules[i];
        if (tr->pick)
            picker = tr;
        else
            rules[n_rules++] = (kw_wire_token_rule){tr->first, tr->last, tr->from_end, tr->spec, tr->spec_v};
    }
    for (int64_t t = t0; picker && chosen && t < T; ++t) { /* the chosen rows, a rule per run (none are taken above) */
        if (!chosen[t]) continue;
        int64_t e = t;
        while (e + 1 < T && chosen[e + 1])
            ++e;
        rules[n_rules++] = (kw_wire_token_rule){(uint32_t)t, (uint32_t)e, 0, picker->spec, picker->spec_v};
        t = e;
    }
    /* not strict (the first rule wins), groups has room for every row */
    KW_FORWARD(kw_wire_token_split(rules, n_rules, 0, NULL, (uint32_t)t0, (uint32_t)(T - t0), (uint32_t)T, &lc->spec,
                                   &lc->spec_v, groups, &pol.n_groups));
    KW_RETURN_IF(pol.n_groups > KW_WIRE_MAX_GROUPS, KW_E_LIMIT,
                 "kvstats: %s: layer %d's token rules make %u token groups, a section holds at most %u (FORMAT.md "
                 "§4.2); choose fewer rows",
                 c->name, (int)l, pol.n_groups, KW_WIRE_MAX_GROUPS);
    pol.groups = groups;
    *out = pol;
    return 0;
}

/* Layer l's T flags of chosen (L x T), or NULL without. */
static const uint8_t *kw_kvstats_layer_rows(const uint8_t *chosen, int32_t l, int64_t T) {
    return chosen ? chosen + (size_t)l * (size_t)T : NULL;
}

/* The picking rule of row c (its only one), or NULL. */
static const kw_kvstats_token_rule *kw_kvstats_picker(const kw_kvstats_codec *c) {
    for (int32_t i = 0; i < c->n_token_rules; ++i)
        if (c->token_rules[i].pick) return &c->token_rules[i];
    return NULL;
}

/* A hash of (prompt, layer, position) in [0, 1): PICK_RAND's score, the same in every run (splitmix64's finalizer). */
static double kw_kvstats_rand_score(int64_t prompt, int32_t layer, int64_t t) {
    uint64_t x = (uint64_t)prompt * 0x9e3779b97f4a7c15u + (uint64_t)layer * 0xbf58476d1ce4e5b9u + (uint64_t)t + 1u;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9u;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebu;
    x ^= x >> 31;
    return (double)(x >> 11) * 0x1.0p-53;
}

/* The rows the picking rule pr of row c takes in layer l of a prompt of T rows whose rows before t0 are not sent:
 * chosen (T entries). k: the layer's (T, H, D) keys; q: its (T, Hq, D) prefill queries (PICK_ATTN, PICK_LEAST);
 * score (T) and taken (T): scratch. */
static int kw_kvstats_choose(const kw_kvstats *s, const kw_kvstats_codec *c, const kw_kvstats_token_rule *pr, int32_t l,
                             int64_t t0, int64_t T, const float *k, const float *q, double *score, uint8_t *taken,
                             uint8_t *chosen) {
    for (int64_t t = 0; t < T; ++t) { /* the positional rules' rows are theirs */
        taken[t] = 0;
        for (int32_t i = 0; i < c->n_token_rules && !taken[t]; ++i) {
            const kw_kvstats_token_rule *tr = &c->token_rules[i];
            if (tr->pick || tr->omit) continue;
            taken[t] = tr->from_end ? t >= T - (int64_t)tr->first : t >= (int64_t)tr->first && t <= (int64_t)tr->last;
        }
    }
    if (pr->pick == KW_KVSTATS_PICK_RAND) {
        for (int64_t t = 0; t < T; ++t)
            score[t] = kw_kvstats_rand_score(s->n_prompts, l, t);
    } else {
        const kw_model_config *cfg = kw_model_get_config(s->model);
        const double scalar = cfg->query_pre_attn_scalar > 0 ? cfg->query_pre_attn_scalar : (double)cfg->head_dim;
        const int64_t from = pr->queries && (int64_t)pr->queries < T ? T - (int64_t)pr->queries : 0;
        KW_FORWARD(kw_kvstats_attention_received(q, k, T, cfg->n_heads, s->n_heads, s->head_dim,
                                                 (float)(1.0 / sqrt(scalar)), kw_config_layer_window(cfg, l), from,
                                                 score));
        if (pr->pick == KW_KVSTATS_PICK_LEAST)
            for (int64_t t = 0; t < T; ++t)
                score[t] = -score[t];
    }
    return kw_kvstats_pick_rows(score, t0, T, taken, pr->fraction, chosen, NULL);
}

/* Sends k and v (each (T, H, D) f32) through one KVWire blob, every layer with its codec's K and V specs (a v1.1 blob
 * when any layer needs it), and writes the decoded values to kq, vq. Lossless layers get no section: their rows are
 * copied and counted at f32. Omitted rows (a prefix, kw_kvstats_token_rule.omit) are copied and counted at 0 bytes;
 * the sections carry the rows after them. A picking rule chooses its rows per layer (q: the prefill's queries per
 * layer, (T, Hq, D) each, when it ranks by attention). *bytes gets the blob's size plus the f32 rows (no blob when
 * every row is omitted). */
static int kw_kvstats_roundtrip(const kw_kvstats *s, const kw_kvstats_codec *codec, float *const *k, float *const *v,
                                float *const *q, int64_t T, float *const *kq, float *const *vq, int64_t *bytes) {
    const int32_t H = s->n_heads, D = s->head_dim;
    const size_t rows = (size_t)T * (size_t)H * (size_t)D;
    const int64_t t0 = kw_kvstats_omitted(codec, T), Tk = T - t0; /* rows [t0, T) are sent */
    const size_t skip = (size_t)t0 * (size_t)H * (size_t)D;
    const kw_kvstats_token_rule *picker = kw_kvstats_picker(codec);
    kw_kvstats_layer_codec lc;
    kw_wire_policy pol;
    int v11 = 0, any_pre_rope = 0, any_center = 0, any_qscale = 0;
    uint16_t n_sections = 0;
    int64_t exact_bytes = 0;
    kw_wire_encoder *enc = NULL;
    kw_wire_reader *reader = NULL;
    uint8_t *blob = NULL;
    float *unrotated = NULL;
    int64_t *pos = NULL;
    uint32_t *sent = NULL; /* the positions the sections carry when a prefix is omitted */
    /* owned with centred layers: the residual keys (T rows), the offsets (T rows), pre-RoPE scratch (T rows), and
     * each layer's mu (L x H x D), what the receiver would get */
    float *resid = NULL, *offs = NULL, *ctmp = NULL, *mus = NULL;
    float *scaled = NULL; /* owned with query-weighted layers: the scaled keys (T rows), and each layer's exponents */
    int8_t *qexp = NULL;
    const size_t hd = (size_t)H * (size_t)D;
    int rc = 0;
    /* owned: token groups (T), wire rules (n_token_rules + T), and with a picking rule the rows it takes per layer
     * (L x T), a score and a taken flag per row */
    kw_wire_token_group *groups = NULL;
    kw_wire_token_rule *wrules = NULL;
    uint8_t *chosen = NULL, *taken = NULL;
    double *score = NULL;
    if (codec->n_token_rules) {
        groups = malloc((size_t)T * sizeof *groups);
        wrules = malloc(((size_t)codec->n_token_rules + (size_t)T) * sizeof *wrules);
        KW_CHECK_IF(!groups || !wrules, KW_E_NOMEM, "out of memory for %lld token groups", (long long)T);
    }
    if (picker) {
        chosen = calloc((size_t)s->n_layers * (size_t)T, 1);
        taken = malloc((size_t)T);
        score = malloc((size_t)T * sizeof *score);
        KW_CHECK_IF(!chosen || !taken || !score, KW_E_NOMEM, "out of memory for %lld rows' scores", (long long)T);
        KW_CHECK_IF(picker->pick != KW_KVSTATS_PICK_RAND && !q, KW_E_INTERNAL, "kvstats: %s: no queries", codec->name);
        for (int32_t l = 0; l < s->n_layers && Tk > 0; ++l)
            if (!kw_kvstats_layer(codec, l).lossless)
                KW_CHECK(kw_kvstats_choose(s, codec, picker, l, t0, T, k[l], q ? q[l] : NULL, score, taken,
                                           chosen + (size_t)l * (size_t)T));
    }
    for (int32_t l = 0; l < s->n_layers; ++l) {
        lc = kw_kvstats_layer(codec, l);
        if (lc.lossless) {
            memcpy(kq[l], k[l], rows * sizeof **kq);
            memcpy(vq[l], v[l], rows * sizeof **vq);
            exact_bytes += (int64_t)(2 * rows * sizeof(float));
            continue;
        }
        memcpy(kq[l], k[l], skip * sizeof **kq); /* the omitted prefix: the receiver's own rows */
        memcpy(vq[l], v[l], skip * sizeof **vq);
        if (Tk == 0) continue;
        KW_CHECK(kw_kvstats_policy(s, codec, &lc, l, t0, T, kw_kvstats_layer_rows(chosen, l, T), wrules, groups, &pol));
        v11 |= kw_wire_policy_needs_v11(&pol);
        any_pre_rope |= lc.pre_rope;
        any_center |= lc.center != 0;
        any_qscale |= lc.qscale != 0;
        ++n_sections;
    }
    const kw_wire_header hdr = {.version = v11 ? KW_WIRE_VERSION_1_1 : KW_WIRE_VERSION,
                                .n_layers = (uint16_t)s->n_layers,
                                .n_sections = n_sections,
                                .n_kv_heads = (uint16_t)H,
                                .head_dim = (uint16_t)D,
                                .n_positions = (uint32_t)T,
                                .src_dtype = KW_WIRE_DTYPE_F32};
    const kw_model_config *cfg = kw_model_get_config(s->model);
    size_t cap = KW_WIRE_HEADER_BYTES + KW_WIRE_TRAILER_BYTES + KW_WIRE_CHECKSUM_BYTES, used = 0, n = 0;
    if (n_sections == 0 && t0 > 0) { /* every quantized layer's rows omitted: nothing is sent */
        *bytes = exact_bytes;
        goto out;
    }
    if (t0 > 0) {
        sent = malloc((size_t)Tk * sizeof *sent);
        KW_CHECK_IF(!sent, KW_E_NOMEM, "out of memory for %lld positions", (long long)Tk);
        for (int64_t t = 0; t < Tk; ++t)
            sent[t] = (uint32_t)(t0 + t);
    }
    if (any_pre_rope) { /* the keys before RoPE: each row rotated back by its position */
        unrotated = malloc(rows * sizeof *unrotated);
        pos = malloc((size_t)T * sizeof *pos);
        KW_CHECK_IF(!unrotated || !pos, KW_E_NOMEM, "out of memory for %zu pre-RoPE key values", rows);
        for (int64_t t = 0; t < T; ++t) /* the prompt cache's rows are its positions */
            pos[t] = t;
    }
    if (any_center) {
        resid = malloc(rows * sizeof *resid);
        offs = malloc(rows * sizeof *offs);
        ctmp = malloc(rows * sizeof *ctmp);
        mus = malloc((size_t)s->n_layers * hd * sizeof *mus);
        KW_CHECK_IF(!resid || !offs || !ctmp || !mus, KW_E_NOMEM, "out of memory for %zu centred key values", rows);
    }
    if (any_qscale) {
        KW_CHECK_IF(!q, KW_E_INTERNAL, "kvstats: %s: no queries", codec->name);
        KW_CHECK_IF(D > 1024, KW_E_LIMIT, "kvstats: query-weighted keys of %d values per head", (int)D);
        scaled = malloc(rows * sizeof *scaled);
        qexp = malloc((size_t)s->n_layers * hd);
        KW_CHECK_IF(!scaled || !qexp, KW_E_NOMEM, "out of memory for %zu scaled key values", rows);
    }
    KW_CHECK_IF(T > KW_WIRE_MAX_POSITIONS, KW_E_INVALID_ARG, "a prompt of %lld rows is too long for one blob",
                (long long)T);
    for (int32_t l = 0; l < s->n_layers; ++l) {
        lc = kw_kvstats_layer(codec, l);
        if (lc.lossless) continue;
        KW_CHECK(kw_kvstats_policy(s, codec, &lc, l, t0, T, kw_kvstats_layer_rows(chosen, l, T), wrules, groups, &pol));
        KW_CHECK(kw_wire_section_bound(&hdr, &pol, (uint32_t)Tk, &n));
        cap += n;
    }
    blob = malloc(cap);
    KW_CHECK_IF(!blob, KW_E_NOMEM, "out of memory for a %zu-byte blob", cap);
    KW_CHECK(kw_wire_encoder_create(&hdr, NULL, &enc));
    KW_CHECK(kw_wire_encoder_write_header(enc, blob, cap, &n));
    used += n;
    for (int32_t l = 0; l < s->n_layers; ++l) {
        lc = kw_kvstats_layer(codec, l);
        if (lc.lossless) continue;
        KW_CHECK(kw_kvstats_policy(s, codec, &lc, l, t0, T, kw_kvstats_layer_rows(chosen, l, T), wrules, groups, &pol));
        const float *k_in = k[l];
        if (lc.pre_rope) {
            memcpy(unrotated, k[l], rows * sizeof *unrotated);
            KW_CHECK(kw_config_rope_rows(cfg, l, pos, T, 1, unrotated));
            k_in = unrotated;
        }
        if (lc.center) { /* the residual k - offset; mu (f16) counted as a field of its own */
            float *mu = mus + (size_t)l * hd;
            KW_CHECK(kw_kvstats_center_mu(cfg, l, lc.center, k[l], t0, T, ctmp, mu));
            KW_CHECK(kw_kvstats_center_offsets(cfg, l, lc.center, mu, t0, Tk, offs));
            for (size_t i = 0; i < (size_t)Tk * hd; ++i)
                resid[skip + i] = k[l][skip + i] - offs[i];
            k_in = resid;
            exact_bytes += kw_kvstats_center_bytes(lc.center, H, D);
        }
        if (lc.qscale) { /* each channel times 2^e: exact, the codec sees the query-weighted keys */
            int8_t *e = qexp + (size_t)l * hd;
            kw_kvstats_qscale_exps(cfg, l, lc.qscale, q[l], k_in, t0, T, e);
            for (size_t i = skip; i < rows; ++i)
                scaled[i] = ldexpf(k_in[i], e[i % hd]);
            k_in = scaled;
            exact_bytes += (int64_t)hd;
        }
        const kw_wire_layer_in in = {
            .layer = (uint32_t)l,
            .n_tokens = (uint32_t)Tk,
            .positions = sent,
            .k = {.data = k_in + skip, .head_stride = (size_t)D, .token_stride = (size_t)H * D},
            .v = {.data = v[l] + skip, .head_stride = (size_t)D, .token_stride = (size_t)H * D}};
        KW_CHECK(kw_wire_encoder_write_section(enc, &in, &pol, blob + used, cap - used, &n));
        used += n;
    }
    KW_CHECK(kw_wire_encoder_write_trailer(enc, blob + used, cap - used, &n));
    used += n;
    *bytes = (int64_t)used + exact_bytes;
    const kw_wire_header *got = NULL;
    KW_CHECK(kw_wire_reader_open(blob, used, NULL, &reader, &got));
    const kw_wire_section *sec = NULL;
    int32_t seen = 0;
    while ((rc = kw_wire_reader_next(reader, &sec)) == 1) {
        KW_CHECK_IF(sec->layer >= (uint32_t)s->n_layers || sec->n_tokens != (uint32_t)Tk ||
                        kw_kvstats_layer(codec, (int32_t)sec->layer).lossless,
                    KW_E_WIRE_CORRUPT, "kvstats: section for layer %u of %u tokens", sec->layer, sec->n_tokens);
        const kw_wire_tensor_out ko = {.data = kq[sec->layer] + skip,
                                       .dtype = KW_WIRE_DTYPE_F32,
                                       .head_stride = (size_t)D,
                                       .token_stride = (size_t)H * D};
        kw_wire_tensor_out vo = ko;
        vo.data = vq[sec->layer] + skip;
        KW_CHECK(kw_wire_section_dequantize(sec, &ko, &vo));
        if (sec->pre_rope) { /* what a kv_direct receiver does: rotate the decoded keys by their positions */
            KW_CHECK_IF(!pos, KW_E_WIRE_CORRUPT, "kvstats: a pre-RoPE section for layer %u", sec->layer);
            KW_CHECK(kw_config_rope_rows(cfg, (int32_t)sec->layer, pos + t0, Tk, 0, kq[sec->layer] + skip));
        }
        const kw_kvstats_layer_codec dec = kw_kvstats_layer(codec, (int32_t)sec->layer);
        if (dec.qscale) {
            const int8_t *e = qexp + (size_t)sec->layer * hd;
            float *out_k = kq[sec->layer] + skip;
            for (size_t i = 0; i < (size_t)Tk * hd; ++i)
                out_k[i] = ldexpf(out_k[i], -e[i % hd]);
        }
        const int center = dec.center;
        if (center) { /* the receiver adds the offset back, rebuilt from mu and the rows' positions */
            KW_CHECK(kw_kvstats_center_offsets(cfg, (int32_t)sec->layer, center, mus + (size_t)sec->layer * hd, t0, Tk,
                                               offs));
            float *out_k = kq[sec->layer] + skip;
            for (size_t i = 0; i < (size_t)Tk * hd; ++i)
                out_k[i] += offs[i];
        }
        ++seen;
    }
    KW_CHECK(rc);
    KW_CHECK_IF(seen != n_sections, KW_E_WIRE_CORRUPT, "kvstats: %d sections decoded, %d sent", (int)seen,
                (int)n_sections);
out:
    kw_wire_reader_close(reader);
    kw_wire_encoder_destroy(enc);
    free(blob);
    free(unrotated);
    free(pos);
    free(groups);
    free(wrules);
    free(chosen);
    free(taken);
    free(score);
    free(sent);
    free(resid);
    free(offs);
    free(ctmp);
    free(mus);
    free(scaled);
    free(qexp);
    return rc;
}

/* Sum of squares of x[0..n) and of its difference to y. */
static void kw_kvstats_err(const float *x, const float *y, size_t n, double *err2, double *norm2) {
    for (size_t i = 0; i < n; ++i) {
        const double d = (double)y[i] - (double)x[i];
        *err2 += d * d;
        *norm2 += (double)x[i] * (double)x[i];
    }
}

/* One codec on one prompt: the cache holds nothing useful on entry; rows [0, T) are written from kq/vq. */
static int kw_kvstats_codec_run(kw_kvstats *s, kw_kvcache *cache, kw_kvstats_result *r, float *const *kq,
                                float *const *vq, int64_t T, int32_t last) {
    const int32_t n_new = s->n_new;
    int rc = 0;
    kw_generate_result res = {0};
    KW_CHECK(kw_kvcache_truncate(cache, 0));
    for (int32_t l = 0; l < s->n_layers; ++l)
        KW_CHECK(kw_kvcache_write_rows(cache, l, 0, T, kq[l], vq[l]));
    static const int32_t no_eos = -1;
    kw_kvstats_tf tf = {.s = s, .r = r};
    const kw_generate_options forced = {.max_new_tokens = n_new,
                                        .round = KW_LOGITS_ROUND_NONE,
                                        .eos_ids = &no_eos,
                                        .n_eos = 0,
                                        .force_ids = s->ref_ids,
                                        .n_force = n_new,
                                        .on_logits = kw_kvstats_on_forced,
                                        .user = &tf};
    KW_CHECK(kw_generate_greedy(s->model, cache, &last, 1, &forced, &res));
    kw_generate_result_free(&res);
    /* Free-running: the same tokens as the forced run up to its first disagreement f; from there the model goes on
     * from its own token, on the cache that holds the prompt and the reference's first f tokens. */
    int32_t f = 0;
    while (f < n_new && s->argmax[f] == s->ref_ids[f])
        ++f;
    memcpy(s->free_ids, s->ref_ids, (size_t)f * sizeof *s->free_ids);
    if (f < n_new) {
        s->free_ids[f] = s->argmax[f];
        if (f + 1 < n_new) {
            KW_CHECK(kw_kvcache_truncate(cache, T + 1 + f));
            const kw_generate_options go = {
                .max_new_tokens = n_new - f - 1, .round = KW_LOGITS_ROUND_NONE, .eos_ids = &no_eos, .n_eos = 0};
            KW_CHECK(kw_generate_greedy(s->model, cache, &s->free_ids[f], 1, &go, &res));
            KW_CHECK_IF(res.n != n_new - f - 1, KW_E_INTERNAL, "kvstats: %lld free-running tokens, %d expected",
                        (long long)res.n, (int)(n_new - f - 1));
            memcpy(s->free_ids + f + 1, res.ids, (size_t)res.n * sizeof *res.ids);
        }
    }
    for (int32_t t = 0; t < n_new; ++t)
        r->free_agree += s->free_ids[t] == s->ref_ids[t];
    r->free_steps += n_new;
out:
    kw_generate_result_free(&res);
    return rc;
}

int kw_kvstats_qk_gain_enable(kw_kvstats *s) {
    KW_RETURN_IF(!s || s->n_prompts > 0, KW_E_INVALID_ARG, "kw_kvstats_qk_gain_enable: before the first prompt");
    if (s->qk_a) return 0;
    const size_t n = (size_t)s->n_layers * (size_t)s->n_heads * (size_t)s->head_dim;
    s->qk_a = calloc(n, sizeof *s->qk_a);
    s->qk_b = calloc(n, sizeof *s->qk_b);
    s->qk_bc = calloc(n, sizeof *s->qk_bc);
    KW_RETURN_IF(!s->qk_a || !s->qk_b || !s->qk_bc, KW_E_NOMEM, "out of memory");
    s->need_queries = 1;
    return 0;
}

/* Adds one prompt's layer l to the query-weighted gain's sums: q (T, Hq, D) prefill queries, k (T, H, D) keys;
 * scratch, offs: T rows of keys each. */
static int kw_kvstats_qk_accumulate(kw_kvstats *s, int32_t l, const float *q, const float *k, int64_t T, float *scratch,
                                    float *offs) {
    const kw_model_config *cfg = kw_model_get_config(s->model);
    const int32_t H = s->n_heads, D = s->head_dim, Hq = cfg->n_heads, group = Hq / H;
    const size_t hd = (size_t)H * (size_t)D, base = (size_t)l * hd;
    float mu[KW_KVSTATS_MAX_HEAD_VALUES];
    KW_RETURN_IF(hd > KW_KVSTATS_MAX_HEAD_VALUES, KW_E_LIMIT, "kvstats: %zu key values per row", hd);
    KW_FORWARD(kw_kvstats_center_mu(cfg, l, KW_KVSTATS_CENTER_PRE, k, 0, T, scratch, mu));
    KW_FORWARD(kw_kvstats_center_offsets(cfg, l, KW_KVSTATS_CENTER_PRE, mu, 0, T, offs));
    for (int64_t t = 0; t < T; ++t)
        for (size_t i = 0; i < hd; ++i) {
            const double x = (double)k[(size_t)t * hd + i], c = x - (double)offs[(size_t)t * hd + i];
            s->qk_b[base + i] += x * x;
            s->qk_bc[base + i] += c * c;
        }
    for (int64_t t = 0; t < T; ++t)
        for (int32_t hq = 0; hq < Hq; ++hq) {
            const float *row = q + ((size_t)t * (size_t)Hq + (size_t)hq) * (size_t)D;
            double *a = s->qk_a + base + (size_t)(hq / group) * (size_t)D;
            for (int32_t d = 0; d < D; ++d)
                a[d] += (double)row[d] * (double)row[d];
        }
    return 0;
}

int kw_kvstats_qk_gain_get(const kw_kvstats *s, int32_t layer, int32_t head, int centred, int pairs, double *g) {
    KW_RETURN_IF(!s || !g || !s->qk_a || layer < 0 || layer >= s->n_layers || head < 0 || head >= s->n_heads ||
                     s->n_prompts == 0,
                 KW_E_INVALID_ARG, "kw_kvstats_qk_gain_get: bad argument (enabled, a prompt added?)");
    const int32_t D = s->head_dim;
    const int32_t half = pairs ? kw_config_rope_half(kw_model_get_config(s->model), layer) : 0;
    const size_t base = ((size_t)layer * (size_t)s->n_heads + (size_t)head) * (size_t)D;
    const double *a = s->qk_a + base, *b = (centred ? s->qk_bc : s->qk_b) + base;
    double sa = 0.0, sb = 0.0, sab = 0.0;
    for (int32_t d = 0; d < D; ++d) {
        if (d >= half && d < 2 * half) continue; /* a pair's second channel: counted with its first */
        const double ad = a[d] + (d < half ? a[d + half] : 0.0), bd = b[d] + (d < half ? b[d + half] : 0.0);
        sa += ad;
        sb += bd;
        sab += sqrt(ad * bd);
    }
    *g = sab > 0.0 ? sa * sb / (sab * sab) : 1.0;
    return 0;
}

/* on_queries of the prefill: layer's query rows into q[layer] (T, Hq, D) at their rows. */
typedef struct kw_kvstats_queries {
    float *const *q;
    int64_t T;
    size_t row; /* floats per query row */
} kw_kvstats_queries;

static int kw_kvstats_on_queries(void *user, int32_t layer, int64_t row0, int64_t n, const float *q) {
    const kw_kvstats_queries *qs = user;
    KW_RETURN_IF(row0 < 0 || n < 0 || row0 + n > qs->T, KW_E_INTERNAL, "kvstats: query rows %lld+%lld of %lld",
                 (long long)row0, (long long)n, (long long)qs->T);
    memcpy(qs->q[layer] + (size_t)row0 * qs->row, q, (size_t)n * qs->row * sizeof *q);
    return 0;
}

int kw_kvstats_add_prompt(kw_kvstats *s, const int32_t *ids, int64_t n, int32_t *ref_ids) {
    KW_RETURN_IF(!s || !ids || n < 2, KW_E_INVALID_ARG, "kw_kvstats_add_prompt: a prompt of at least 2 tokens");
    const int64_t T = n - 1;
    const int32_t L = s->n_layers, n_new = s->n_new;
    const size_t per_layer = (size_t)T * (size_t)s->n_heads * (size_t)s->head_dim;
    int rc = 0;
    kw_kvcache *cache = NULL;
    kw_generate_result res = {0};
    const int32_t n_bufs = s->need_queries ? 5 * L : 4 * L;
    float **bufs = calloc((size_t)n_bufs, sizeof *bufs); /* k, v, kq, vq per layer, and the prefill's queries */
    KW_RETURN_IF(!bufs, KW_E_NOMEM, "out of memory");
    float **k = bufs, **v = bufs + L, **kq = bufs + 2 * L, **vq = bufs + 3 * L;
    float **q = s->need_queries ? bufs + 4 * L : NULL;
    const kw_model_config *cfg = kw_model_get_config(s->model);
    const size_t q_row = (size_t)cfg->n_heads * (size_t)s->head_dim;
    for (int32_t i = 0; i < n_bufs; ++i) {
        bufs[i] = malloc((i < 4 * L ? per_layer : (size_t)T * q_row) * sizeof **bufs);
        KW_CHECK_IF(!bufs[i], KW_E_NOMEM, "out of memory for the prompt cache (%lld rows)", (long long)T);
    }
    KW_CHECK(kw_model_create_cache(s->model, n + n_new, KW_DTYPE_F32, &cache));
    kw_kvstats_queries qs = {.q = q, .T = T, .row = q_row};
    const kw_forward_args prefill = {
        .ids = ids, .n = T, .mode = KW_LOGITS_NONE, .on_queries = q ? kw_kvstats_on_queries : NULL, .user = &qs};
    KW_CHECK(kw_model_forward(s->model, cache, &prefill));
    for (int32_t l = 0; l < L; ++l) {
        KW_CHECK(kw_kvcache_read_rows(cache, l, 0, T, k[l], v[l]));
        kw_kvstats_accumulate(s, 0, l, k[l], T);
        kw_kvstats_accumulate(s, 1, l, v[l], T);
    }
    s->rows += T;
    for (int32_t l = 0; l < L && s->qk_a; ++l) /* kq, vq are free until the codecs run */
        KW_CHECK(kw_kvstats_qk_accumulate(s, l, q[l], k[l], T, kq[l], vq[l]));
    for (int64_t t = 0; t < T; ++t)
        s->pos_count[t < KW_KVSTATS_POSITIONS ? t : KW_KVSTATS_POSITIONS] += s->n_heads;
    static const int32_t no_eos = -1;
    const kw_generate_options ref = {.max_new_tokens = n_new,
                                     .round = KW_LOGITS_ROUND_NONE,
                                     .eos_ids = &no_eos,
                                     .n_eos = 0,
                                     .on_logits = kw_kvstats_on_ref,
                                     .user = s};
    KW_CHECK(kw_generate_greedy(s->model, cache, &ids[T], 1, &ref, &res));
    KW_CHECK_IF(res.n != n_new || memcmp(res.ids, s->ref_ids, (size_t)n_new * sizeof *res.ids) != 0, KW_E_INTERNAL,
                "kvstats: the reference run's tokens are not its logits' argmax");
    if (ref_ids) memcpy(ref_ids, s->ref_ids, (size_t)n_new * sizeof *ref_ids);
    for (int32_t c = 0; c < s->n_codecs; ++c) {
        kw_kvstats_result *r = &s->results[c];
        if (r->status < 0) continue;
        int64_t bytes = (int64_t)(2 * per_layer * sizeof(float)) * L;
        if (s->codecs[c].lossless && s->codecs[c].n_overrides == 0) { /* create refused token rules here */
            for (int32_t l = 0; l < L; ++l) {
                memcpy(kq[l], k[l], per_layer * sizeof **kq);
                memcpy(vq[l], v[l], per_layer * sizeof **vq);
            }
        } else {
            const int qrc = kw_kvstats_roundtrip(s, &s->codecs[c], k, v, q, T, kq, vq, &bytes);
            /* this codec cannot carry this cache, or its token rules make more groups than a section holds: the row
             * is refused, the others go on */
            if (qrc == KW_E_WIRE_RANGE || qrc == KW_E_WIRE_NONFINITE || qrc == KW_E_LIMIT) {
                r->status = qrc;
                snprintf(r->why, sizeof r->why, "%s",
                         qrc == KW_E_LIMIT ? kw_error_detail() : "the codec cannot carry this cache");
                continue;
            }
            KW_CHECK(qrc);
        }
        r->blob_bytes += bytes;
        for (int32_t l = 0; l < L; ++l) {
            kw_kvstats_err(k[l], kq[l], per_layer, &r->k_err2, &r->k_norm2);
            kw_kvstats_err(v[l], vq[l], per_layer, &r->v_err2, &r->v_norm2);
        }
        KW_CHECK(kw_kvstats_codec_run(s, cache, r, kq, vq, T, ids[T]));
    }
    s->n_prompts += 1;
out:
    kw_generate_result_free(&res);
    kw_kvcache_free(cache);
    for (int32_t i = 0; i < n_bufs; ++i)
        free(bufs[i]);
    free(bufs);
    return rc;
}

int kw_kvstats_prompt_ids(const kw_model_config *cfg, const kw_tokenizer *tok, int chat, enum kw_chat_family family,
                          const char *text, size_t len, int32_t **ids, size_t *n) {
    *ids = NULL;
    *n = 0;
    if (!chat) {
        KW_FORWARD(kw_tokenizer_encode(tok, text, len, ids, n));
        return cfg ? kw_config_prepend_bos(cfg, ids, n) : 0;
    }
    KW_RETURN_IF(strlen(text) != len, KW_E_INVALID_ARG, "chat prompt: the string holds U+0000");
    const kw_chat_message msg = {.role = "user", .content = text};
    const kw_chat_options co = {.add_generation_prompt = 1, .enable_thinking = 0, .date_string = "03 Dec 2026"};
    char *rendered = NULL; /* owned */
    size_t rendered_len = 0;
    KW_FORWARD(kw_chat_render(family, &msg, 1, &co, &rendered, &rendered_len));
    const int rc = kw_tokenizer_encode(tok, rendered, rendered_len, ids, n);
    free(rendered);
    return rc;
}
