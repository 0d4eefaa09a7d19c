/* kw_load_summary.c: records.jsonl (+ forced.jsonl, + the reference's records) to summary.json, and its printout.
 *
 * Everything is recomputed from the files: throughput over the measured phase (its start to the last answer, as
 * vLLM's benchmark_duration), latency distributions over successful requests (ITL pooled over all of them, as vLLM
 * does), bytes and stage timings from each response's kvwire block, accuracy and agreement with percentile-bootstrap
 * intervals over records.
 */
#include "loadgen/kw_load_summary.h"

#include "common/kw_file.h"
#include "common/kw_json.h"
#include "common/kw_status.h"
#include "loadgen/kw_load_dataset.h"
#include "loadgen/kw_load_io.h"
#include "loadgen/kw_load_quality.h"
#include "loadgen/kw_load_rng.h"
#include "loadgen/kw_load_stats.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define KW_LOAD_MAX_STAGES 32
static const char *const kw_load_byte_kinds[] = {"blob", "socket_in", "socket_out", "text"};
#define KW_LOAD_N_BYTE_KINDS 4

typedef struct kw_load_acc {
    enum kw_load_answer_kind akind;
    const kw_load_refset *ref;
    size_t completed, failed;
    cJSON *errors; /* kind -> count */
    double in_tokens, out_tokens;
    kw_load_samples ttft, tpot, itl, e2el, lag;
    kw_load_samples starts, ends; /* all records, for the duration and the peak concurrency */
    kw_load_samples acc_num, acc_den;
    cJSON *by_subject; /* subject -> {n, correct} */
    kw_load_samples bytes[KW_LOAD_N_BYTE_KINDS], payload;
    int bytes_seen;
    char *stage_names[KW_LOAD_MAX_STAGES];
    kw_load_samples stages[KW_LOAD_MAX_STAGES];
    size_t n_stages;
    cJSON *kv_sums; /* flattened numeric leaves of kvwire blocks -> sum */
    size_t kv_n;
    cJSON *first_kvwire; /* the first successful response's block (its policy, mode, sharer) */
    /* quality */
    kw_load_samples ans_num, ans_den, tok_num, tok_den;
    size_t quality_missing; /* successful records whose item the reference lacks */
} kw_load_acc;

static int kw_load_push(kw_load_samples *s, double v) {
    return kw_load_samples_push(s, v);
}

static double kw_load_num(const cJSON *o, const char *key, double def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : def;
}

static int kw_load_count(cJSON *obj, const char *key, double add) {
    cJSON *n = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (n) {
        cJSON_SetNumberValue(n, n->valuedouble + add);
        return 0;
    }
    return cJSON_AddNumberToObject(obj, key, add) ? 0 : KW_E_NOMEM;
}

/* Adds the numeric leaves of v under prefix to sums (arrays and request ids are left out). */
static int kw_load_flatten(cJSON *sums, const cJSON *v, const char *prefix) {
    for (const cJSON *m = v->child; m; m = m->next) {
        if (!m->string || strcmp(m->string, "request_id") == 0 || strcmp(m->string, "timings_ms") == 0 ||
            strcmp(m->string, "bytes") == 0)
            continue;
        char key[160];
        snprintf(key, sizeof(key), "%s%s%s", prefix, prefix[0] ? "." : "", m->string);
        if (cJSON_IsNumber(m))
            KW_FORWARD(kw_load_count(sums, key, m->valuedouble));
        else if (cJSON_IsObject(m))
            KW_FORWARD(kw_load_flatten(sums, m, key));
    }
    return 0;
}

static int kw_load_stage_index(kw_load_acc *a, const char *name, size_t *out) {
    for (size_t i = 0; i < a->n_stages; ++i)
        if (strcmp(a->stage_names[i], name) == 0) return *out = i, 0;
    if (a->n_stages == KW_LOAD_MAX_STAGES) return -1;
    a->stage_names[a->n_stages] = strdup(name);
    KW_RETURN_IF(!a->stage_names[a->n_stages], KW_E_NOMEM, "out of memory");
    *out = a->n_stages++;
    return 0;
}

static int kw_load_record_row(const cJSON *row, size_t line, void *user) {
    kw_load_acc *a = user;
    const int ok = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(row, "success"));
    const double start = kw_load_num(row, "start_ms", NAN), e2el = kw_load_num(row, "e2el_ms", NAN);
    KW_RETURN_IF(isnan(start) || isnan(e2el), KW_E_PARSE, "line %zu: a record without start_ms and e2el_ms", line);
    KW_FORWARD(kw_load_push(&a->starts, start));
    KW_FORWARD(kw_load_push(&a->ends, start + e2el));
    if (!ok) {
        a->failed++;
        const cJSON *err = cJSON_GetObjectItemCaseSensitive(row, "error");
        const cJSON *kind = cJSON_GetObjectItemCaseSensitive(err, "kind");
        return kw_load_count(a->errors, cJSON_IsString(kind) ? kind->valuestring : "unknown", 1);
    }
    a->completed++;
    a->in_tokens += kw_load_num(row, "prompt_tokens", 0);
    a->out_tokens += kw_load_num(row, "output_tokens", 0);
    KW_FORWARD(kw_load_push(&a->e2el, e2el));
    const double ttft = kw_load_num(row, "ttft_ms", NAN), tpot = kw_load_num(row, "tpot_ms", NAN);
    if (!isnan(ttft)) KW_FORWARD(kw_load_push(&a->ttft, ttft));
    if (!isnan(tpot)) KW_FORWARD(kw_load_push(&a->tpot, tpot));
    const double lag = kw_load_num(row, "send_lag_ms", NAN);
    if (!isnan(lag)) KW_FORWARD(kw_load_push(&a->lag, lag));
    const cJSON *itl = cJSON_GetObjectItemCaseSensitive(row, "itl_ms");
    for (const cJSON *v = cJSON_IsArray(itl) ? itl->child : NULL; v; v = v->next)
        if (cJSON_IsNumber(v)) KW_FORWARD(kw_load_push(&a->itl, v->valuedouble));

    /* Accuracy over graded records. */
    const cJSON *correct = cJSON_GetObjectItemCaseSensitive(row, "correct");
    if (cJSON_IsBool(correct)) {
        KW_FORWARD(kw_load_push(&a->acc_num, cJSON_IsTrue(correct) ? 1.0 : 0.0));
        KW_FORWARD(kw_load_push(&a->acc_den, 1.0));
        const cJSON *subject = cJSON_GetObjectItemCaseSensitive(row, "subject");
        if (cJSON_IsString(subject)) {
            cJSON *s = cJSON_GetObjectItemCaseSensitive(a->by_subject, subject->valuestring);
            if (!s) s = cJSON_AddObjectToObject(a->by_subject, subject->valuestring);
            KW_RETURN_IF(!s, KW_E_NOMEM, "out of memory");
            KW_FORWARD(kw_load_count(s, "n", 1));
            KW_FORWARD(kw_load_count(s, "correct", cJSON_IsTrue(correct) ? 1 : 0));
        }
    }

    /* The kvwire block: bytes, stage timings, every other numeric leaf. */
    const cJSON *kv = cJSON_GetObjectItemCaseSensitive(row, "kvwire");
    if (cJSON_IsObject(kv)) {
        if (!a->first_kvwire) {
            a->first_kvwire = cJSON_Duplicate(kv, 1);
            KW_RETURN_IF(!a->first_kvwire, KW_E_NOMEM, "out of memory");
        }
        const cJSON *bytes = cJSON_GetObjectItemCaseSensitive(kv, "bytes");
        if (cJSON_IsObject(bytes)) {
            a->bytes_seen = 1;
            for (int k = 0; k < KW_LOAD_N_BYTE_KINDS; ++k)
                KW_FORWARD(kw_load_push(&a->bytes[k], kw_load_num(bytes, kw_load_byte_kinds[k], 0)));
            KW_FORWARD(kw_load_push(&a->payload, kw_load_num(bytes, "blob", 0) + kw_load_num(bytes, "text", 0)));
        }
        const cJSON *tm = cJSON_GetObjectItemCaseSensitive(kv, "timings_ms");
        for (const cJSON *m = cJSON_IsObject(tm) ? tm->child : NULL; m; m = m->next) {
            size_t i = 0;
            if (!cJSON_IsNumber(m) || kw_load_stage_index(a, m->string, &i) != 0) continue;
            KW_FORWARD(kw_load_push(&a->stages[i], m->valuedouble));
        }
        KW_FORWARD(kw_load_flatten(a->kv_sums, kv, ""));
        a->kv_n++;
    }

    /* Agreement with the reference. */
    if (a->ref) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(row, "item_id");
        const kw_load_ref_item *ref = cJSON_IsString(id) ? kw_load_refset_find(a->ref, id->valuestring) : NULL;
        if (!ref) {
            a->quality_missing++;
            return 0;
        }
        const cJSON *ans = cJSON_GetObjectItemCaseSensitive(row, "answer");
        const cJSON *out = cJSON_GetObjectItemCaseSensitive(row, "output");
        int agree;
        if (a->akind == KW_LOAD_ANSWER_TEXT)
            agree = cJSON_IsString(out) && ref->output && strcmp(out->valuestring, ref->output) == 0;
        else
            agree = kw_load_answer_agree(a->akind, cJSON_IsString(ans) ? ans->valuestring : NULL, ref->answer);
        KW_FORWARD(kw_load_push(&a->ans_num, agree));
        KW_FORWARD(kw_load_push(&a->ans_den, 1));
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(row, "output_ids");
        if (ref->has_ids && cJSON_IsArray(ids)) {
            const size_t n = (size_t)cJSON_GetArraySize(ids);
            int32_t *mine = malloc((n ? n : 1) * sizeof(*mine));
            KW_RETURN_IF(!mine, KW_E_NOMEM, "out of memory");
            size_t i = 0;
            for (const cJSON *v = ids->child; v; v = v->next)
                mine[i++] = cJSON_IsNumber(v) ? (int32_t)v->valuedouble : -1;
            size_t match = 0, total = 0;
            kw_load_token_agreement(mine, n, ref->tok.ids, ref->tok.n, &match, &total);
            free(mine);
            if (total > 0) {
                KW_FORWARD(kw_load_push(&a->tok_num, (double)match));
                KW_FORWARD(kw_load_push(&a->tok_den, (double)total));
            }
        }
    }
    return 0;
}

typedef struct kw_load_forced_acc {
    kw_load_samples tf_num, tf_den, kl_num, kl_den;
    size_t items, failed, client_mismatch;
    cJSON *errors;
    kw_load_samples blob;
} kw_load_forced_acc;

static int kw_load_forced_row(const cJSON *row, size_t line, void *user) {
    kw_load_forced_acc *f = user;
    (void)line;
    f->items++;
    if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(row, "success"))) {
        f->failed++;
        const cJSON *kind = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(row, "error"), "kind");
        return kw_load_count(f->errors, cJSON_IsString(kind) ? kind->valuestring : "unknown", 1);
    }
    const double pos = kw_load_num(row, "positions", 0), agree = kw_load_num(row, "top1_agree", 0);
    if (pos > 0) {
        KW_FORWARD(kw_load_push(&f->tf_num, agree));
        KW_FORWARD(kw_load_push(&f->tf_den, pos));
    }
    const cJSON *client = cJSON_GetObjectItemCaseSensitive(row, "top1_agree_client");
    if (cJSON_IsNumber(client) && client->valuedouble != agree) f->client_mismatch++;
    const double kn = kw_load_num(row, "kl_positions", 0);
    if (kn > 0) {
        KW_FORWARD(kw_load_push(&f->kl_num, kw_load_num(row, "kl_sum", 0)));
        KW_FORWARD(kw_load_push(&f->kl_den, kn));
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Building the summary

static int kw_load_dist_json(cJSON *o, const char *metric, kw_load_samples *s) {
    kw_load_dist d;
    kw_load_dist_compute(s->v, s->n, &d);
    char key[64];
    const struct {
        const char *stat;
        double v;
    } st[] = {{"mean", d.mean}, {"median", d.median}, {"std", d.std}, {"p90", d.p90}, {"p99", d.p99}};
    for (size_t i = 0; i < sizeof(st) / sizeof(st[0]); ++i) {
        snprintf(key, sizeof(key), "%s_%s_ms", st[i].stat, metric);
        if (!cJSON_AddNumberToObject(o, key, s->n ? st[i].v : 0.0)) return KW_E_NOMEM;
    }
    return 0;
}

/* {"total", "mean", "median", "p90", "p99", "n"} of a sample set. */
static cJSON *kw_load_stat_json(kw_load_samples *s, int with_total) {
    kw_load_dist d;
    double total = 0;
    for (size_t i = 0; i < s->n; ++i)
        total += s->v[i];
    kw_load_dist_compute(s->v, s->n, &d);
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    if (with_total) cJSON_AddNumberToObject(o, "total", total);
    cJSON_AddNumberToObject(o, "mean", d.mean);
    cJSON_AddNumberToObject(o, "median", d.median);
    cJSON_AddNumberToObject(o, "p90", d.p90);
    cJSON_AddNumberToObject(o, "p99", d.p99);
    cJSON_AddNumberToObject(o, "n", (double)s->n);
    return o;
}

/* {"value", "ci95_low", "ci95_high", "n", "numerator", "denominator"}, or null without items. */
static int kw_load_ratio_json(cJSON *parent, const char *key, kw_load_samples *num, kw_load_samples *den,
                              uint32_t resamples, uint64_t seed, cJSON **out) {
    if (out) *out = NULL;
    if (num->n == 0) return cJSON_AddNullToObject(parent, key) ? 0 : KW_E_NOMEM;
    double v = 0, lo = 0, hi = 0;
    KW_FORWARD(kw_load_bootstrap_ratio(num->v, den->v, num->n, resamples, seed, 0.95, &v, &lo, &hi));
    double sn = 0, sd = 0;
    for (size_t i = 0; i < num->n; ++i)
        sn += num->v[i], sd += den->v[i];
    cJSON *o = cJSON_AddObjectToObject(parent, key);
    KW_RETURN_IF(!o, KW_E_NOMEM, "out of memory");
    cJSON_AddNumberToObject(o, "value", v);
    cJSON_AddNumberToObject(o, "ci95_low", lo);
    cJSON_AddNumberToObject(o, "ci95_high", hi);
    cJSON_AddNumberToObject(o, "n", (double)num->n);
    cJSON_AddNumberToObject(o, "numerator", sn);
    cJSON_AddNumberToObject(o, "denominator", sd);
    if (out) *out = o;
    return 0;
}

/* The peak number of requests in flight (a sweep over start and end times; an end at the same time as a start
 * counts first). */
static double kw_load_peak_concurrency(kw_load_samples *starts, kw_load_samples *ends) {
    kw_load_sort_doubles(starts->v, starts->n);
    kw_load_sort_doubles(ends->v, ends->n);
    size_t i = 0, j = 0, cur = 0, peak = 0;
    while (i < starts->n) {
        if (j < ends->n && ends->v[j] <= starts->v[i]) {
            --cur;
            ++j;
        } else {
            if (++cur > peak) peak = cur;
            ++i;
        }
    }
    return (double)peak;
}

static void kw_load_acc_free(kw_load_acc *a) {
    cJSON_Delete(a->errors);
    cJSON_Delete(a->by_subject);
    cJSON_Delete(a->kv_sums);
    cJSON_Delete(a->first_kvwire);
    kw_load_samples *all[] = {&a->ttft,    &a->tpot,    &a->itl,     &a->e2el,    &a->lag,
                              &a->starts,  &a->ends,    &a->acc_num, &a->acc_den, &a->payload,
                              &a->ans_num, &a->ans_den, &a->tok_num, &a->tok_den};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); ++i)
        kw_load_samples_free(all[i]);
    for (int k = 0; k < KW_LOAD_N_BYTE_KINDS; ++k)
        kw_load_samples_free(&a->bytes[k]);
    for (size_t i = 0; i < a->n_stages; ++i) {
        free(a->stage_names[i]);
        kw_load_samples_free(&a->stages[i]);
    }
}

/* A family name from the kvwire request object: mode, selection, codec (e.g. "c2c knorm_topk int4"). */
static void kw_load_family(const cJSON *kv, char *buf, size_t cap) {
    const cJSON *mode = cJSON_GetObjectItemCaseSensitive(kv, "mode");
    const cJSON *policy = cJSON_GetObjectItemCaseSensitive(kv, "policy");
    const cJSON *sel = cJSON_GetObjectItemCaseSensitive(policy, "selection");
    const cJSON *codec = cJSON_GetObjectItemCaseSensitive(policy, "codec");
    const char *m = cJSON_IsString(mode) ? mode->valuestring : "c2c";
    if (strcmp(m, "receiver_only") == 0 || strcmp(m, "text_relay") == 0) {
        snprintf(buf, cap, "%s", m);
        return;
    }
    snprintf(buf, cap, "%s %s %s", m, cJSON_IsString(sel) ? sel->valuestring : "full",
             cJSON_IsString(codec) ? codec->valuestring : "bf16");
}

int kw_load_summary_compute(const char *dir, int complete, cJSON **out) {
    kw_load_acc a;
    kw_load_forced_acc f;
    memset(&a, 0, sizeof(a));
    memset(&f, 0, sizeof(f));
    kw_load_refset ref;
    memset(&ref, 0, sizeof(ref));
    cJSON *run = NULL, *s = NULL;
    char *run_path = kw_path_join(dir, "run.json"), *rec_path = kw_path_join(dir, "records.jsonl");
    char *forced_path = kw_path_join(dir, "forced.jsonl");
    int rc = 0;
    KW_CHECK_IF(!run_path || !rec_path || !forced_path, KW_E_NOMEM, "out of memory");
    KW_CHECK(kw_json_load_file(run_path, (size_t)64 << 20, &run));
    const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(run, "config");
    const cJSON *ds = cJSON_GetObjectItemCaseSensitive(run, "dataset");
    const cJSON *dsname = cJSON_GetObjectItemCaseSensitive(ds, "name");
    enum kw_load_dataset_kind kind = KW_LOAD_DATASET_PROMPTS;
    if (cJSON_IsString(dsname)) kw_load_dataset_parse_name(dsname->valuestring, &kind);
    a.akind = kw_load_dataset_answer_kind(kind);
    a.errors = cJSON_CreateObject();
    a.by_subject = cJSON_CreateObject();
    a.kv_sums = cJSON_CreateObject();
    f.errors = cJSON_CreateObject();
    KW_CHECK_IF(!a.errors || !a.by_subject || !a.kv_sums || !f.errors, KW_E_NOMEM, "out of memory");

    /* The reference, by absolute path first (a summary may be recomputed from another folder). */
    const cJSON *refj = cJSON_GetObjectItemCaseSensitive(run, "reference");
    if (refj) {
        const cJSON *abs = cJSON_GetObjectItemCaseSensitive(refj, "dir_abs");
        const cJSON *rel = cJSON_GetObjectItemCaseSensitive(refj, "dir");
        rc = -1;
        if (cJSON_IsString(abs)) rc = kw_load_refset_read(abs->valuestring, &ref);
        if (rc < 0 && cJSON_IsString(rel)) rc = kw_load_refset_read(rel->valuestring, &ref);
        KW_CHECK(rc);
        a.ref = &ref;
    }
    size_t torn = 0;
    KW_CHECK(kw_load_jsonl_each(rec_path, 0, kw_load_record_row, &a, &torn));
    int have_forced = kw_path_is_file(forced_path);
    if (have_forced) KW_CHECK(kw_load_jsonl_each(forced_path, 0, kw_load_forced_row, &f, NULL));

    const int64_t resamples_i = (int64_t)kw_load_num(cfg, "bootstrap_resamples", 10000);
    const uint32_t resamples = (uint32_t)(resamples_i > 0 ? resamples_i : 10000);
    const uint64_t seed = kw_load_rng_derive((uint64_t)kw_load_num(cfg, "seed", 0), "bootstrap");

    s = cJSON_CreateObject();
    KW_CHECK_IF(!s, KW_E_NOMEM, "out of memory");
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(run, "kvload_version");
    cJSON_AddStringToObject(s, "kvload_version", cJSON_IsString(ver) ? ver->valuestring : "unknown");
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(cfg, "name");
    const char *base = strrchr(dir, '/');
    base = base && base[1] ? base + 1 : dir;
    cJSON_AddStringToObject(s, "name", cJSON_IsString(name) ? name->valuestring : base);
    const cJSON *kvreq = cJSON_GetObjectItemCaseSensitive(cfg, "kvwire");
    const cJSON *fam = cJSON_GetObjectItemCaseSensitive(cfg, "family");
    char family[128];
    kw_load_family(kvreq, family, sizeof(family));
    cJSON_AddStringToObject(s, "family", cJSON_IsString(fam) ? fam->valuestring : family);
    const cJSON *mode = cJSON_GetObjectItemCaseSensitive(kvreq, "mode");
    cJSON_AddStringToObject(s, "mode", cJSON_IsString(mode) ? mode->valuestring : "c2c");
    cJSON_AddBoolToObject(s, "complete", complete);
    cJSON_AddNumberToObject(s, "torn_records", (double)torn);
    const cJSON *identity = cJSON_GetObjectItemCaseSensitive(run, "config_identity");
    if (cJSON_IsString(identity)) cJSON_AddStringToObject(s, "config_identity", identity->valuestring);
    cJSON_AddItemToObject(s, "policy", kvreq ? cJSON_Duplicate(kvreq, 1) : cJSON_CreateNull());
    const cJSON *fk = a.first_kvwire;
    cJSON_AddItemToObject(s, "policy_effective",
                          fk && cJSON_GetObjectItemCaseSensitive(fk, "policy")
                              ? cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(fk, "policy"), 1)
                              : cJSON_CreateNull());

    /* Models: the receiver from /v1/models, the sharer from the responses; digests where the server gives them. */
    cJSON *models = cJSON_AddObjectToObject(s, "models");
    const cJSON *server = cJSON_GetObjectItemCaseSensitive(run, "server");
    const cJSON *mbody = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(server, "models"), "body");
    const cJSON *m0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(mbody, "data"), 0);
    cJSON *recv = cJSON_AddObjectToObject(models, "receiver");
    if (recv) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(m0, "id");
        const cJSON *dg = cJSON_GetObjectItemCaseSensitive(m0, "digest");
        cJSON_AddItemToObject(recv, "name",
                              cJSON_IsString(id) ? cJSON_CreateString(id->valuestring) : cJSON_CreateNull());
        cJSON_AddItemToObject(recv, "digest", dg ? cJSON_Duplicate(dg, 1) : cJSON_CreateNull());
    }
    cJSON *shr = cJSON_AddObjectToObject(models, "sharer");
    if (shr) {
        const cJSON *sh = fk ? cJSON_GetObjectItemCaseSensitive(fk, "sharer") : NULL;
        const cJSON *shm = fk ? cJSON_GetObjectItemCaseSensitive(fk, "sharer_model") : NULL;
        const cJSON *shd = fk ? cJSON_GetObjectItemCaseSensitive(fk, "sharer_model_digest") : NULL;
        cJSON_AddItemToObject(shr, "name",
                              cJSON_IsString(sh) ? cJSON_CreateString(sh->valuestring) : cJSON_CreateNull());
        cJSON_AddItemToObject(shr, "model",
                              cJSON_IsString(shm) ? cJSON_CreateString(shm->valuestring) : cJSON_CreateNull());
        cJSON_AddItemToObject(shr, "digest", shd ? cJSON_Duplicate(shd, 1) : cJSON_CreateNull());
    }
    const cJSON *hbody = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(server, "health"), "body");
    const cJSON *sver = cJSON_GetObjectItemCaseSensitive(hbody, "version");
    cJSON_AddItemToObject(s, "server_version",
                          cJSON_IsString(sver) ? cJSON_CreateString(sver->valuestring) : cJSON_CreateNull());
    if (server) cJSON_AddItemToObject(s, "server", cJSON_Duplicate(server, 1));
    if (ds) cJSON_AddItemToObject(s, "dataset", cJSON_Duplicate(ds, 1));
    const cJSON *seeds = cJSON_GetObjectItemCaseSensitive(run, "seeds");
    if (seeds) cJSON_AddItemToObject(s, "seeds", cJSON_Duplicate(seeds, 1));
    cJSON *load = cJSON_AddObjectToObject(s, "load");
    if (load) {
        static const char *const keys[] = {"endpoint",    "url",        "max_concurrency", "request_rate", "burstiness",
                                           "num_prompts", "duration_s", "num_warmups",     "max_tokens",   "stream",
                                           "seed"};
        for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); ++i) {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, keys[i]);
            if (v) cJSON_AddItemToObject(load, keys[i], cJSON_Duplicate(v, 1));
        }
        const cJSON *rate = cJSON_GetObjectItemCaseSensitive(cfg, "request_rate");
        cJSON_AddBoolToObject(load, "closed_loop", cJSON_IsString(rate));
    }
    const cJSON *phases = cJSON_GetObjectItemCaseSensitive(run, "phases");
    if (phases) cJSON_AddItemToObject(s, "phases", cJSON_Duplicate(phases, 1));

    /* vLLM's block. */
    double duration_s = 0;
    for (size_t i = 0; i < a.ends.n; ++i)
        if (a.ends.v[i] / 1000.0 > duration_s) duration_s = a.ends.v[i] / 1000.0;
    cJSON_AddNumberToObject(s, "duration", duration_s);
    cJSON_AddNumberToObject(s, "completed", (double)a.completed);
    cJSON_AddNumberToObject(s, "failed", (double)a.failed);
    cJSON_AddItemToObject(s, "errors", cJSON_Duplicate(a.errors, 1));
    cJSON_AddNumberToObject(s, "total_input_tokens", a.in_tokens);
    cJSON_AddNumberToObject(s, "total_output_tokens", a.out_tokens);
    cJSON_AddNumberToObject(s, "request_throughput", duration_s > 0 ? (double)a.completed / duration_s : 0);
    cJSON_AddNumberToObject(s, "output_throughput", duration_s > 0 ? a.out_tokens / duration_s : 0);
    cJSON_AddNumberToObject(s, "total_token_throughput",
                            duration_s > 0 ? (a.in_tokens + a.out_tokens) / duration_s : 0);
    cJSON_AddNumberToObject(s, "max_concurrent_requests", kw_load_peak_concurrency(&a.starts, &a.ends));
    KW_CHECK(kw_load_dist_json(s, "ttft", &a.ttft));
    KW_CHECK(kw_load_dist_json(s, "tpot", &a.tpot));
    KW_CHECK(kw_load_dist_json(s, "itl", &a.itl));
    KW_CHECK(kw_load_dist_json(s, "e2el", &a.e2el));
    if (a.lag.n) KW_CHECK(kw_load_dist_json(s, "send_lag", &a.lag));

    /* Accuracy. */
    cJSON *acc = NULL;
    KW_CHECK(kw_load_ratio_json(s, "accuracy", &a.acc_num, &a.acc_den, resamples, seed, &acc));
    if (acc) {
        cJSON_AddNumberToObject(acc, "bootstrap_resamples", resamples);
        cJSON_AddItemToObject(acc, "by_subject", cJSON_Duplicate(a.by_subject, 1));
        for (cJSON *sub = cJSON_GetObjectItemCaseSensitive(acc, "by_subject")->child; sub; sub = sub->next)
            cJSON_AddNumberToObject(sub, "accuracy", kw_load_num(sub, "correct", 0) / kw_load_num(sub, "n", 1));
        cJSON_AddBoolToObject(acc, "approximate_grading", a.akind == KW_LOAD_ANSWER_NUMBER);
    }

    /* Bytes and stages. */
    if (a.bytes_seen) {
        cJSON *bytes = cJSON_AddObjectToObject(s, "bytes");
        for (int k = 0; bytes && k < KW_LOAD_N_BYTE_KINDS; ++k)
            cJSON_AddItemToObject(bytes, kw_load_byte_kinds[k], kw_load_stat_json(&a.bytes[k], 1));
        if (bytes) cJSON_AddItemToObject(bytes, "payload", kw_load_stat_json(&a.payload, 1));
    } else {
        cJSON_AddNullToObject(s, "bytes");
    }
    cJSON *stages = cJSON_AddObjectToObject(s, "stages_ms");
    for (size_t i = 0; stages && i < a.n_stages; ++i)
        cJSON_AddItemToObject(stages, a.stage_names[i], kw_load_stat_json(&a.stages[i], 0));
    cJSON *means = cJSON_AddObjectToObject(s, "kvwire_means");
    for (cJSON *m = a.kv_sums->child; means && m; m = m->next)
        cJSON_AddNumberToObject(means, m->string, a.kv_n ? m->valuedouble / (double)a.kv_n : 0);

    /* Quality. */
    if (a.ref) {
        cJSON *q = cJSON_AddObjectToObject(s, "quality");
        KW_CHECK_IF(!q, KW_E_NOMEM, "out of memory");
        cJSON_AddItemToObject(q, "reference", cJSON_Duplicate(refj, 1));
        cJSON_AddNumberToObject(q, "items_missing_in_reference", (double)a.quality_missing);
        KW_CHECK(kw_load_ratio_json(q, "answer_agreement", &a.ans_num, &a.ans_den, resamples, seed, NULL));
        KW_CHECK(kw_load_ratio_json(q, "token_agreement", &a.tok_num, &a.tok_den, resamples, seed, NULL));
        KW_CHECK(kw_load_ratio_json(q, "tf_top1_agreement", &f.tf_num, &f.tf_den, resamples, seed, NULL));
        cJSON *kl = NULL;
        KW_CHECK(kw_load_ratio_json(q, "mean_kl", &f.kl_num, &f.kl_den, resamples, seed, &kl));
        if (kl)
            cJSON_AddStringToObject(kl, "definition",
                                    "KL(P_ref || P_policy) in nats over the reference's top-k ids plus one bucket for "
                                    "the rest of the vocabulary (a lower bound of the full KL), mean over forced "
                                    "positions");
        cJSON_AddNumberToObject(q, "forced_items", (double)f.items);
        cJSON_AddNumberToObject(q, "forced_failed", (double)f.failed);
        cJSON_AddItemToObject(q, "forced_errors", cJSON_Duplicate(f.errors, 1));
        cJSON_AddNumberToObject(q, "tf_client_server_mismatches", (double)f.client_mismatch);
    } else {
        cJSON_AddNullToObject(s, "quality");
    }
    *out = s;
    s = NULL;
out:
    cJSON_Delete(s);
    cJSON_Delete(run);
    kw_load_acc_free(&a);
    kw_load_samples *fs[] = {&f.tf_num, &f.tf_den, &f.kl_num, &f.kl_den, &f.blob};
    for (size_t i = 0; i < sizeof(fs) / sizeof(fs[0]); ++i)
        kw_load_samples_free(fs[i]);
    cJSON_Delete(f.errors);
    kw_load_refset_free(&ref);
    free(run_path);
    free(rec_path);
    free(forced_path);
    return rc;
}

// ---------------------------------------------------------------------------------------------------------------
// Printout

static void kw_load_line(FILE *out, const char *label, const char *fmt, double v) {
    fprintf(out, "%-40s", label);
    fprintf(out, fmt, v);
    fputc('\n', out);
}

static void kw_load_print_metric(FILE *out, const cJSON *s, const char *metric) {
    char key[64], label[96], upper[16];
    size_t n = 0;
    for (; metric[n] && n + 1 < sizeof(upper); ++n)
        upper[n] = (char)(metric[n] >= 'a' && metric[n] <= 'z' ? metric[n] - 32 : metric[n]);
    upper[n] = '\0';
    static const char *const stats[] = {"mean", "median", "p90", "p99"};
    static const char *const names[] = {"Mean", "Median", "P90", "P99"};
    for (int i = 0; i < 4; ++i) {
        snprintf(key, sizeof(key), "%s_%s_ms", stats[i], metric);
        snprintf(label, sizeof(label), "%s %s (ms):", names[i], upper);
        kw_load_line(out, label, "%10.2f", kw_load_num(s, key, 0));
    }
}

static void kw_load_print_ratio(FILE *out, const char *label, const cJSON *r, double scale, const char *unit) {
    if (!cJSON_IsObject(r)) return;
    fprintf(out, "%-40s%10.4f%s  [%.4f, %.4f] 95%% CI, n=%.0f\n", label, scale * kw_load_num(r, "value", 0), unit,
            scale * kw_load_num(r, "ci95_low", 0), scale * kw_load_num(r, "ci95_high", 0), kw_load_num(r, "n", 0));
}

void kw_load_summary_print(const cJSON *s, FILE *out) {
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(s, "name");
    const cJSON *family = cJSON_GetObjectItemCaseSensitive(s, "family");
    fprintf(out, "============ Serving Benchmark Result ============\n");
    fprintf(out, "%-40s%s\n", "Run:", cJSON_IsString(name) ? name->valuestring : "");
    fprintf(out, "%-40s%s\n", "Policy family:", cJSON_IsString(family) ? family->valuestring : "");
    const cJSON *ds = cJSON_GetObjectItemCaseSensitive(s, "dataset");
    if (cJSON_IsObject(ds)) {
        const cJSON *dn = cJSON_GetObjectItemCaseSensitive(ds, "name");
        fprintf(out, "%-40s%s: %.0f rows, %.0f evaluated, %.0f skipped\n",
                "Dataset:", cJSON_IsString(dn) ? dn->valuestring : "?", kw_load_num(ds, "rows", 0),
                kw_load_num(ds, "evaluated", 0), kw_load_num(ds, "skipped", 0));
        const cJSON *why = cJSON_GetObjectItemCaseSensitive(ds, "skipped_by_reason");
        for (const cJSON *w = why ? why->child : NULL; w; w = w->next)
            fprintf(out, "  skipped, %s: %.0f\n", w->string, w->valuedouble);
    }
    if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(s, "complete")))
        fprintf(out, "%-40s%s\n", "Status:", "INCOMPLETE");
    kw_load_line(out, "Successful requests:", "%10.0f", kw_load_num(s, "completed", 0));
    kw_load_line(out, "Failed requests:", "%10.0f", kw_load_num(s, "failed", 0));
    const cJSON *errors = cJSON_GetObjectItemCaseSensitive(s, "errors");
    for (const cJSON *e = errors ? errors->child : NULL; e; e = e->next) {
        char label[96];
        snprintf(label, sizeof(label), "  %s:", e->string);
        kw_load_line(out, label, "%10.0f", e->valuedouble);
    }
    kw_load_line(out, "Benchmark duration (s):", "%10.2f", kw_load_num(s, "duration", 0));
    kw_load_line(out, "Total input tokens:", "%10.0f", kw_load_num(s, "total_input_tokens", 0));
    kw_load_line(out, "Total generated tokens:", "%10.0f", kw_load_num(s, "total_output_tokens", 0));
    kw_load_line(out, "Request throughput (req/s):", "%10.2f", kw_load_num(s, "request_throughput", 0));
    kw_load_line(out, "Output token throughput (tok/s):", "%10.2f", kw_load_num(s, "output_throughput", 0));
    kw_load_line(out, "Total Token throughput (tok/s):", "%10.2f", kw_load_num(s, "total_token_throughput", 0));
    kw_load_line(out, "Peak concurrent requests:", "%10.0f", kw_load_num(s, "max_concurrent_requests", 0));
    fprintf(out, "---------------Time to First Token----------------\n");
    kw_load_print_metric(out, s, "ttft");
    fprintf(out, "-----Time per Output Token (excl. 1st token)------\n");
    kw_load_print_metric(out, s, "tpot");
    fprintf(out, "---------------Inter-token Latency----------------\n");
    kw_load_print_metric(out, s, "itl");
    fprintf(out, "----------------End-to-end Latency----------------\n");
    kw_load_print_metric(out, s, "e2el");
    const cJSON *acc = cJSON_GetObjectItemCaseSensitive(s, "accuracy");
    const cJSON *bytes = cJSON_GetObjectItemCaseSensitive(s, "bytes");
    if (cJSON_IsObject(acc) || cJSON_IsObject(bytes))
        fprintf(out, "---------------Accuracy and bytes-----------------\n");
    kw_load_print_ratio(out, "Accuracy:", acc, 1.0, "");
    static const char *const kinds[] = {"payload", "blob", "socket_in", "socket_out", "text"};
    static const char *const labels[] = {
        "Bytes/request, payload (blob + text):", "  blob (KVWire):", "  socket_in (from the sharer):",
        "  socket_out (to the sharer):", "  text (relay message):"};
    for (int k = 0; cJSON_IsObject(bytes) && k < 5; ++k) {
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(bytes, kinds[k]);
        if (!b) continue;
        fprintf(out, "%-40s%10.1f  (median %.0f, p99 %.0f, total %.0f)\n", labels[k], kw_load_num(b, "mean", 0),
                kw_load_num(b, "median", 0), kw_load_num(b, "p99", 0), kw_load_num(b, "total", 0));
    }
    const cJSON *stages = cJSON_GetObjectItemCaseSensitive(s, "stages_ms");
    if (cJSON_IsObject(stages) && stages->child) {
        fprintf(out, "---------Server stages, mean ms (receiverd)--------\n");
        for (const cJSON *st = stages->child; st; st = st->next) {
            char label[96];
            snprintf(label, sizeof(label), "  %s:", st->string);
            kw_load_line(out, label, "%10.2f", kw_load_num(st, "mean", 0));
        }
    }
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(s, "quality");
    if (cJSON_IsObject(q)) {
        fprintf(out, "---------------Agreement with reference------------\n");
        kw_load_print_ratio(out, "Answer agreement:", cJSON_GetObjectItemCaseSensitive(q, "answer_agreement"), 1.0, "");
        kw_load_print_ratio(
            out, "Token agreement (free-running):", cJSON_GetObjectItemCaseSensitive(q, "token_agreement"), 1.0, "");
        kw_load_print_ratio(out, "Top-1 agreement (teacher-forced):",
                            cJSON_GetObjectItemCaseSensitive(q, "tf_top1_agreement"), 1.0, "");
        kw_load_print_ratio(out, "Mean KL, top-k + rest (nats):", cJSON_GetObjectItemCaseSensitive(q, "mean_kl"), 1.0,
                            "");
    }
    fprintf(out, "==================================================\n");
}

int kw_load_summary_write(const char *dir, int complete, FILE *console) {
    cJSON *s = NULL;
    KW_FORWARD(kw_load_summary_compute(dir, complete, &s));
    char *path = kw_path_join(dir, "summary.json");
    int rc = path ? kw_load_json_write(path, s) : kw_error_set(KW_E_NOMEM, "out of memory");
    if (rc == 0 && console) kw_load_summary_print(s, console);
    free(path);
    cJSON_Delete(s);
    return rc;
}
