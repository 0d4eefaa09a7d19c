/* kw_load_quality.c: reference runs read back, token agreement, top-k KL with a rest bucket. */
#include "loadgen/kw_load_quality.h"

#include "common/kw_file.h"
#include "common/kw_json.h"
#include "common/kw_status.h"
#include "loadgen/kw_load_io.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void kw_load_token_agreement(const int32_t *a, size_t na, const int32_t *b, size_t nb, size_t *match, size_t *total) {
    const size_t n = na < nb ? na : nb;
    size_t m = 0;
    for (size_t i = 0; i < n; ++i)
        m += a[i] == b[i];
    *match = m;
    *total = na > nb ? na : nb;
}

double kw_load_kl_topk(const double *ref_lps, const double *pol_lps, size_t k) {
    double kl = 0.0, p_sum = 0.0, q_sum = 0.0;
    for (size_t i = 0; i < k; ++i) {
        if (!isfinite(ref_lps[i]) && ref_lps[i] != -INFINITY) return NAN;
        if (isnan(pol_lps[i]) || pol_lps[i] == INFINITY) return NAN;
        const double p = exp(ref_lps[i]);
        const double q = exp(pol_lps[i]);
        p_sum += p;
        q_sum += q;
        if (p > 0.0) kl += p * (ref_lps[i] - pol_lps[i]); /* q = 0 with p > 0 gives +inf, as it should */
    }
    const double p_rest = 1.0 - p_sum;
    double q_rest = 1.0 - q_sum;
    if (q_rest < 1e-12) q_rest = 1e-12;
    if (p_rest > 1e-12) kl += p_rest * (log(p_rest) - log(q_rest));
    return kl;
}

// ---------------------------------------------------------------------------------------------------------------
// Reference runs

typedef struct kw_load_ref_reader {
    kw_load_refset *s;
    size_t cap;
} kw_load_ref_reader;

static char *kw_load_dup_or_null(const cJSON *v) {
    return cJSON_IsString(v) ? strdup(v->valuestring) : NULL;
}

/* "output_ids": [..] and "top_logprobs": [[[id, lp], ...], ...] (one list per output token). */
static int kw_load_ref_tokens(const cJSON *row, kw_load_ref_item *it, size_t line) {
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(row, "output_ids");
    if (!cJSON_IsArray(ids)) return 0;
    const cJSON *lps = cJSON_GetObjectItemCaseSensitive(row, "output_logprobs");
    const cJSON *tops = cJSON_GetObjectItemCaseSensitive(row, "top_logprobs");
    const int n = cJSON_GetArraySize(ids);
    const int have_top = cJSON_IsArray(tops) && cJSON_GetArraySize(tops) == n;
    kw_load_tokens *t = &it->tok;
    t->ids = calloc((size_t)n + 1, sizeof(*t->ids));
    t->lps = calloc((size_t)n + 1, sizeof(*t->lps));
    t->top_off = calloc((size_t)n + 2, sizeof(*t->top_off));
    KW_RETURN_IF(!t->ids || !t->lps || !t->top_off, KW_E_NOMEM, "out of memory");
    t->cap = (size_t)n + 1;
    size_t n_top = 0;
    if (have_top)
        for (const cJSON *pos = tops->child; pos; pos = pos->next)
            n_top += cJSON_IsArray(pos) ? (size_t)cJSON_GetArraySize(pos) : 0;
    if (n_top) {
        t->top_ids = malloc(n_top * sizeof(*t->top_ids));
        t->top_lps = malloc(n_top * sizeof(*t->top_lps));
        KW_RETURN_IF(!t->top_ids || !t->top_lps, KW_E_NOMEM, "out of memory");
        t->top_cap = n_top;
    }
    const cJSON *id = ids->child;
    const cJSON *lp = cJSON_IsArray(lps) ? lps->child : NULL;
    const cJSON *pos = have_top ? tops->child : NULL;
    int all_top = have_top;
    for (int i = 0; i < n; ++i, id = id->next) {
        int64_t v = 0;
        KW_RETURN_IF(kw_json_to_i64(id, 0, INT32_MAX, &v) < 0, KW_E_PARSE, "line %zu: output_ids[%d] is not a token id",
                     line, i);
        t->ids[i] = (int32_t)v;
        t->lps[i] = lp && cJSON_IsNumber(lp) ? lp->valuedouble : NAN;
        if (lp) lp = lp->next;
        if (pos) {
            if (!cJSON_IsArray(pos) || cJSON_GetArraySize(pos) == 0) all_top = 0;
            for (const cJSON *pair = cJSON_IsArray(pos) ? pos->child : NULL; pair; pair = pair->next) {
                const cJSON *pid = cJSON_GetArrayItem(pair, 0), *plp = cJSON_GetArrayItem(pair, 1);
                KW_RETURN_IF(!cJSON_IsArray(pair) || cJSON_GetArraySize(pair) != 2 ||
                                 kw_json_to_i64(pid, 0, INT32_MAX, &v) < 0 || !cJSON_IsNumber(plp),
                             KW_E_PARSE, "line %zu: top_logprobs[%d] holds something other than [id, logprob] pairs",
                             line, i);
                t->top_ids[t->n_top] = (int32_t)v;
                t->top_lps[t->n_top] = plp->valuedouble;
                t->n_top++;
            }
            pos = pos->next;
        }
        t->n = (size_t)i + 1;
        t->top_off[t->n] = t->n_top;
    }
    it->has_ids = 1;
    it->has_top = all_top && n > 0;
    return 0;
}

static int kw_load_ref_row(const cJSON *row, size_t line, void *user) {
    kw_load_ref_reader *r = user;
    kw_load_refset *s = r->s;
    const cJSON *ok = cJSON_GetObjectItemCaseSensitive(row, "success");
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(row, "item_id");
    KW_RETURN_IF(!cJSON_IsString(id), KW_E_PARSE, "line %zu: no item_id", line);
    if (!cJSON_IsTrue(ok)) return 0;
    size_t existing = 0;
    if (kw_load_map_get(&s->by_id, id->valuestring, &existing)) return 0; /* a repeat: the first is kept */
    if (s->n == r->cap) {
        const size_t cap = r->cap ? r->cap * 2 : 256;
        kw_load_ref_item *items = realloc(s->items, cap * sizeof(*items));
        KW_RETURN_IF(!items, KW_E_NOMEM, "out of memory");
        /* The map borrows item_id strings, which do not move when the array does. */
        s->items = items;
        r->cap = cap;
    }
    kw_load_ref_item *it = &s->items[s->n];
    memset(it, 0, sizeof(*it));
    it->item_id = strdup(id->valuestring);
    it->answer = kw_load_dup_or_null(cJSON_GetObjectItemCaseSensitive(row, "answer"));
    it->output = kw_load_dup_or_null(cJSON_GetObjectItemCaseSensitive(row, "output"));
    s->n++;
    KW_RETURN_IF(!it->item_id || !it->output, KW_E_NOMEM, "line %zu: out of memory (or no output)", line);
    KW_FORWARD(kw_load_ref_tokens(row, it, line));
    const int rc = kw_load_map_put(&s->by_id, it->item_id, s->n - 1, NULL);
    return rc < 0 ? rc : 0;
}

int kw_load_refset_read(const char *run_dir, kw_load_refset *out) {
    kw_load_refset s;
    memset(&s, 0, sizeof(s));
    kw_load_ref_reader r = {.s = &s};
    cJSON *run = NULL;
    char *run_path = kw_path_join(run_dir, "run.json");
    char *rec_path = kw_path_join(run_dir, "records.jsonl");
    int rc = 0;
    KW_CHECK_IF(!run_path || !rec_path, KW_E_NOMEM, "out of memory");
    KW_CHECK(kw_json_load_file(run_path, (size_t)64 << 20, &run));
    const cJSON *ds = cJSON_GetObjectItemCaseSensitive(run, "dataset");
    s.dataset_sha256 = kw_load_dup_or_null(cJSON_GetObjectItemCaseSensitive(ds, "sha256"));
    s.dataset_name = kw_load_dup_or_null(cJSON_GetObjectItemCaseSensitive(ds, "name"));
    rc = kw_load_jsonl_each(rec_path, 0, kw_load_ref_row, &r, NULL);
    if (rc < 0) {
        rc = kw_error_set(rc, "reference %s: %s", run_dir, kw_error_detail());
        goto out;
    }
    *out = s;
    memset(&s, 0, sizeof(s));
out:
    cJSON_Delete(run);
    free(run_path);
    free(rec_path);
    kw_load_refset_free(&s);
    return rc;
}

const kw_load_ref_item *kw_load_refset_find(const kw_load_refset *s, const char *item_id) {
    size_t i = 0;
    return kw_load_map_get(&s->by_id, item_id, &i) ? &s->items[i] : NULL;
}

void kw_load_refset_free(kw_load_refset *s) {
    if (!s) return;
    for (size_t i = 0; i < s->n; ++i) {
        free(s->items[i].item_id);
        free(s->items[i].answer);
        free(s->items[i].output);
        kw_load_tokens_free(&s->items[i].tok);
    }
    free(s->items);
    kw_load_map_free(&s->by_id);
    free(s->dataset_sha256);
    free(s->dataset_name);
    memset(s, 0, sizeof(s[0]));
}
