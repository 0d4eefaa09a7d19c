/* kw_load_sensitivity.c: `kvload sensitivity` (see kw_load_sensitivity.h): a generated sweep of one-layer codec
 * points, the per-layer table, the schedule for a byte target, and its verification run. */
#include "loadgen/kw_load_sensitivity.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_file.h"
#include "common/kw_json.h"
#include "common/kw_status.h"
#include "loadgen/kw_load_io.h"

// ---------------------------------------------------------------------------------------------------------------
// The allocation

int kw_load_sens_allocate(int32_t n_layers, int32_t n_options, const double *delta_bytes, const double *loss,
                          double budget, int32_t *choice, double *predicted_delta, double *predicted_loss) {
    KW_RETURN_IF(n_layers < 1 || n_options < 1 || !delta_bytes || !loss || !choice || !predicted_delta ||
                     !predicted_loss,
                 KW_E_INVALID_ARG, "sensitivity: bad allocation arguments");
    for (int32_t i = 0; i < n_layers * n_options; ++i)
        KW_RETURN_IF(!isfinite(delta_bytes[i]) || !isfinite(loss[i]), KW_E_INVALID_ARG,
                     "sensitivity: a non-finite measurement (layer %d, option %d)", (int)(i / n_options),
                     (int)(i % n_options));
    double total = 0, total_loss = 0;
    for (int32_t l = 0; l < n_layers; ++l)
        choice[l] = 0;
        /* the totals are always summed afresh in layer order, so they equal any other sum of the same choices */
#define KW__SENS_TOTALS()                                                                                              \
    do {                                                                                                               \
        total = 0, total_loss = 0;                                                                                     \
        for (int32_t l = 0; l < n_layers; ++l)                                                                         \
            if (choice[l])                                                                                             \
                total += delta_bytes[l * n_options + choice[l]], total_loss += loss[l * n_options + choice[l]];        \
    } while (0)
    /* Each round: from every layer's current option, its next step along the lower convex hull of (bytes, loss)
     * towards fewer bytes is the option with the least loss added per byte saved (ties: the smaller saving, then
     * the lower option); of those the cheapest step is taken (ties: the lower layer). Steps that add no loss are
     * always taken; the others while the total is over the budget. */
    for (;;) {
        int32_t best_layer = -1, best_option = -1;
        double best_slope = 0;
        for (int32_t l = 0; l < n_layers; ++l) {
            const int32_t cur = choice[l];
            const double d_cur = cur ? delta_bytes[l * n_options + cur] : 0,
                         l_cur = cur ? loss[l * n_options + cur] : 0;
            int32_t next = -1;
            double slope = 0, saving = 0;
            for (int32_t k = 1; k < n_options; ++k) {
                const double s = d_cur - delta_bytes[l * n_options + k];
                if (!(s > 0)) continue;
                const double sl = (loss[l * n_options + k] - l_cur) / s;
                if (next < 0 || sl < slope || (sl == slope && s < saving)) next = k, slope = sl, saving = s;
            }
            if (next < 0) continue;
            if (best_layer < 0 || slope < best_slope) best_layer = l, best_option = next, best_slope = slope;
        }
        if (best_layer < 0) break;
        if (total <= budget && best_slope > 0) break;
        choice[best_layer] = best_option;
        KW__SENS_TOTALS();
    }
#undef KW__SENS_TOTALS
    *predicted_delta = total;
    *predicted_loss = total_loss;
    KW_RETURN_IF(total > budget, KW_E_INVALID_ARG,
                 "sensitivity: the smallest schedule saves %.0f bytes per request, the target needs %.0f", -total,
                 -budget);
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// The sweep file and the run folders

#define KW__SENS_REFERENCE "reference"

/* The kvwire object of a point: the mode and a policy at the base codec, with layer `layer` (>= 0) at codec, or
 * the schedule of choice (non-NULL: one entry per run of layers sharing a non-base codec). */
static cJSON *kw__sens_kvwire(const kw_load_sensitivity_options *o, int32_t layer, const char *codec,
                              const int32_t *layers, int32_t n_layers, const int32_t *choice) {
    cJSON *kv = cJSON_CreateObject(), *policy = cJSON_CreateObject(), *schedule = cJSON_CreateArray();
    if (!kv || !policy || !schedule) {
        cJSON_Delete(kv), cJSON_Delete(policy), cJSON_Delete(schedule);
        return NULL;
    }
    cJSON_AddItemToObject(kv, "mode", cJSON_CreateString(o->mode));
    cJSON_AddItemToObject(kv, "policy", policy);
    cJSON_AddItemToObject(policy, "codec", cJSON_CreateString(o->base_codec ? o->base_codec : "bf16"));
    int32_t n_runs = 0;
    for (int32_t i = 0; i < (choice ? n_layers : (layer >= 0)); ++i) {
        const char *c = choice ? (choice[i] ? o->codecs[choice[i] - 1] : NULL) : codec;
        const int32_t first = choice ? layers[i] : layer;
        if (!c) continue;
        int32_t j = i; /* consecutive sent layers with the same codec make one entry */
        while (choice && j + 1 < n_layers && choice[j + 1] == choice[i] && layers[j + 1] == layers[j] + 1)
            ++j;
        cJSON *e = cJSON_CreateObject();
        const double range[2] = {first, choice ? layers[j] : layer};
        cJSON_AddItemToObject(e, "layers", cJSON_CreateDoubleArray(range, 2));
        cJSON_AddItemToObject(e, "codec", cJSON_CreateString(c));
        if (o->granularity) cJSON_AddItemToObject(e, "granularity", cJSON_CreateString(o->granularity));
        if (o->scale) cJSON_AddItemToObject(e, "scale", cJSON_CreateString(o->scale));
        cJSON_AddItemToArray(schedule, e);
        ++n_runs;
        i = j;
    }
    if (n_runs)
        cJSON_AddItemToObject(policy, "schedule", schedule);
    else
        cJSON_Delete(schedule);
    return kv;
}

static cJSON *kw__sens_point(const char *name, cJSON *kvwire) {
    cJSON *p = cJSON_CreateObject();
    if (!p || !kvwire) {
        cJSON_Delete(p), cJSON_Delete(kvwire);
        return NULL;
    }
    cJSON_AddItemToObject(p, "name", cJSON_CreateString(name));
    cJSON_AddItemToObject(p, "family", cJSON_CreateString("sensitivity"));
    cJSON_AddItemToObject(p, "kvwire", kvwire);
    return p;
}

/* Writes OUT/sensitivity_sweep.json with the reference, the one-layer points of layers (if any) and the schedule
 * point called schedule_name (if choice), and runs it (done points are not run again). */
static int kw__sens_sweep(const kw_load_sensitivity_options *o, const kw_load_run_info *info, FILE *console,
                          const int32_t *layers, int32_t n_layers, const int32_t *choice, const char *schedule_name) {
    int rc = 0;
    char *path = kw_path_join(o->out, "sensitivity_sweep.json");
    cJSON *doc = cJSON_CreateObject(), *points = cJSON_CreateArray();
    KW_CHECK_IF(!path || !doc || !points, KW_E_NOMEM, "out of memory");
    cJSON_AddItemToObject(doc, "description",
                          cJSON_CreateString("kvload sensitivity: one-layer codec points against the reference"));
    cJSON_AddItemToObject(doc, "run", cJSON_CreateObject());
    cJSON_AddItemToObject(doc, "reference", cJSON_CreateString(KW__SENS_REFERENCE));
    cJSON_AddItemToObject(doc, "points", points);
    cJSON *p = kw__sens_point(KW__SENS_REFERENCE, kw__sens_kvwire(o, -1, NULL, NULL, 0, NULL));
    KW_CHECK_IF(!p, KW_E_NOMEM, "out of memory");
    cJSON_AddItemToArray(points, p);
    for (int32_t i = 0; i < n_layers; ++i) { /* with the schedule they stay, so the sweep sees them done */
        for (int k = 0; k < o->n_codecs; ++k) {
            char name[128];
            snprintf(name, sizeof name, "layer-%d_%s", (int)layers[i], o->codecs[k]);
            p = kw__sens_point(name, kw__sens_kvwire(o, layers[i], o->codecs[k], NULL, 0, NULL));
            KW_CHECK_IF(!p, KW_E_NOMEM, "out of memory");
            cJSON_AddItemToArray(points, p);
        }
    }
    if (choice) {
        p = kw__sens_point(schedule_name, kw__sens_kvwire(o, -1, NULL, layers, n_layers, choice));
        KW_CHECK_IF(!p, KW_E_NOMEM, "out of memory");
        cJSON_AddItemToArray(points, p);
    }
    KW_CHECK(kw_load_json_write(path, doc));
    const kw_load_sweep_options so = {.out = o->out, .overrides = o->overrides};
    KW_CHECK(kw_load_sweep_run(path, &so, info, console));
out:
    cJSON_Delete(doc);
    free(path);
    return rc;
}

/* A point's summary.json. *out owned by the caller. */
static int kw__sens_summary(const char *out_dir, const char *point, cJSON **out) {
    char path[4096];
    const int n = snprintf(path, sizeof path, "%s/%s/summary.json", out_dir, point);
    KW_RETURN_IF(n < 0 || (size_t)n >= sizeof path, KW_E_INVALID_ARG, "sensitivity: path too long");
    return kw_json_load_file(path, 64u << 20, out);
}

typedef struct kw__sens_measure {
    double bytes; /* mean KVWire bytes per request */
    double kl, agreement;
} kw__sens_measure;

static int kw__sens_read(const char *out_dir, const char *point, int reference, kw__sens_measure *m) {
    cJSON *s = NULL;
    KW_FORWARD(kw__sens_summary(out_dir, point, &s));
    int rc = 0;
    const cJSON *bytes = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(s, "bytes"), "blob");
    const cJSON *mean = cJSON_GetObjectItemCaseSensitive(bytes, "mean");
    KW_CHECK_IF(!cJSON_IsNumber(mean), KW_E_PARSE, "%s/%s/summary.json: no bytes.blob.mean", out_dir, point);
    m->bytes = mean->valuedouble;
    m->kl = 0, m->agreement = 1;
    if (!reference) {
        const cJSON *q = cJSON_GetObjectItemCaseSensitive(s, "quality");
        const cJSON *kl = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(q, "mean_kl"), "value");
        const cJSON *ag =
            cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(q, "tf_top1_agreement"), "value");
        KW_CHECK_IF(!cJSON_IsNumber(kl) || !cJSON_IsNumber(ag), KW_E_PARSE,
                    "%s/%s/summary.json: no quality.mean_kl / tf_top1_agreement (was the reference run with top "
                    "log-probabilities?)",
                    out_dir, point);
        m->kl = kl->valuedouble, m->agreement = ag->valuedouble;
    }
out:
    cJSON_Delete(s);
    return rc;
}

typedef struct kw__sens_layers {
    int32_t *layers;
    int32_t n;
} kw__sens_layers;

/* The first successful record's kvwire.policy.layers: the layers the reference sent. */
static int kw__sens_layers_row(const cJSON *row, size_t line, void *user) {
    (void)line;
    kw__sens_layers *L = user;
    if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(row, "success"))) return 0;
    const cJSON *policy = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(row, "kvwire"), "policy");
    const cJSON *layers = cJSON_GetObjectItemCaseSensitive(policy, "layers");
    KW_RETURN_IF(!cJSON_IsArray(layers), KW_E_PARSE, "a reference record has no kvwire.policy.layers");
    const int n = cJSON_GetArraySize(layers);
    KW_RETURN_IF(n < 1 || n > KW_LOAD_SENS_MAX_LAYERS, KW_E_PARSE, "the reference sent %d layers", n);
    L->layers = malloc((size_t)n * sizeof *L->layers);
    KW_RETURN_IF(!L->layers, KW_E_NOMEM, "out of memory");
    const cJSON *it;
    cJSON_ArrayForEach(it, layers) {
        int64_t v = 0;
        KW_RETURN_IF(kw_json_to_i64(it, 0, KW_LOAD_SENS_MAX_LAYERS - 1, &v) < 0 ||
                         (L->n > 0 && v <= L->layers[L->n - 1]),
                     KW_E_PARSE, "the reference's kvwire.policy.layers are not ascending layer numbers");
        L->layers[L->n++] = (int32_t)v;
    }
    return 1;
}

// ---------------------------------------------------------------------------------------------------------------
// The command

static int kw__sens_check(const kw_load_sensitivity_options *o) {
    KW_RETURN_IF(!o || !o->out, KW_E_INVALID_ARG, "sensitivity: --out DIR is required");
    KW_RETURN_IF(!o->mode || (strcmp(o->mode, "kv_direct") != 0 && strcmp(o->mode, "c2c") != 0), KW_E_INVALID_ARG,
                 "sensitivity: the mode is kv_direct or c2c");
    KW_RETURN_IF(o->n_codecs < 1 || o->n_codecs > KW_LOAD_SENS_MAX_CODECS, KW_E_INVALID_ARG,
                 "sensitivity: 1 to %d candidate codecs", KW_LOAD_SENS_MAX_CODECS);
    for (int k = 0; k < o->n_codecs; ++k)
        KW_RETURN_IF(!o->codecs[k] || !o->codecs[k][0] ||
                         strspn(o->codecs[k], "abcdefghijklmnopqrstuvwxyz0123456789") != strlen(o->codecs[k]),
                     KW_E_INVALID_ARG, "sensitivity: codec names are lower-case letters and digits");
    KW_RETURN_IF(o->target_bytes < 0 || (o->target_bytes == 0 && !(o->target_fraction > 0 && o->target_fraction <= 1)),
                 KW_E_INVALID_ARG, "sensitivity: a target: --target-bytes N > 0, or --target-fraction F in (0, 1]");
    return 0;
}

static void kw__sens_print(FILE *c, const int32_t *layers, int32_t n_layers, const kw_load_sensitivity_options *o,
                           const kw__sens_measure *m, const kw__sens_measure *ref) {
    if (!c) return;
    fprintf(c, "\n%-7s %-6s %14s %14s %12s %12s\n", "layer", "codec", "bytes/request", "delta", "mean KL", "tf top-1");
    for (int32_t i = 0; i < n_layers; ++i)
        for (int k = 0; k < o->n_codecs; ++k) {
            const kw__sens_measure *x = &m[i * o->n_codecs + k];
            fprintf(c, "%-7d %-6s %14.1f %14.1f %12.3g %12.4f\n", (int)layers[i], o->codecs[k], x->bytes,
                    x->bytes - ref->bytes, x->kl, x->agreement);
        }
}

int kw_load_sensitivity_run(const kw_load_sensitivity_options *o, const kw_load_run_info *info, FILE *console) {
    KW_FORWARD(kw__sens_check(o));
    int rc = 0;
    kw__sens_layers L = {0};
    kw__sens_measure ref = {0}, done = {0}, *m = NULL;
    double *delta = NULL, *loss = NULL;
    int32_t *choice = NULL;
    cJSON *report = NULL, *schedule_policy = NULL;
    char *path = NULL;
    KW_CHECK(kw_load_mkdirs(o->out));

    /* 1. the reference, and the layers it sent */
    KW_CHECK(kw__sens_sweep(o, info, console, NULL, 0, NULL, NULL));
    path = kw_path_join(o->out, KW__SENS_REFERENCE "/records.jsonl");
    KW_CHECK_IF(!path, KW_E_NOMEM, "out of memory");
    KW_CHECK(kw_load_jsonl_each(path, 0, kw__sens_layers_row, &L, NULL));
    KW_CHECK_IF(L.n == 0, KW_E_PARSE, "%s: no successful request (nothing to measure against)", path);
    KW_CHECK(kw__sens_read(o->out, KW__SENS_REFERENCE, 1, &ref));

    /* 2. one point per (layer, codec) */
    KW_CHECK(kw__sens_sweep(o, info, console, L.layers, L.n, NULL, NULL));
    const int32_t n_opt = o->n_codecs + 1;
    m = calloc((size_t)L.n * (size_t)o->n_codecs, sizeof *m);
    delta = calloc((size_t)L.n * (size_t)n_opt, sizeof *delta);
    loss = calloc((size_t)L.n * (size_t)n_opt, sizeof *loss);
    choice = calloc((size_t)L.n, sizeof *choice);
    KW_CHECK_IF(!m || !delta || !loss || !choice, KW_E_NOMEM, "out of memory");
    for (int32_t i = 0; i < L.n; ++i)
        for (int k = 0; k < o->n_codecs; ++k) {
            char name[128];
            snprintf(name, sizeof name, "layer-%d_%s", (int)L.layers[i], o->codecs[k]);
            kw__sens_measure *x = &m[i * o->n_codecs + k];
            KW_CHECK(kw__sens_read(o->out, name, 0, x));
            delta[i * n_opt + k + 1] = x->bytes - ref.bytes;
            loss[i * n_opt + k + 1] = o->metric == KW_LOAD_SENS_KL ? x->kl : 1.0 - x->agreement;
        }
    kw__sens_print(console, L.layers, L.n, o, m, &ref);

    /* 3. the schedule, then its measured run */
    const double target = o->target_bytes > 0 ? (double)o->target_bytes : floor(ref.bytes * o->target_fraction);
    double pred_delta = 0, pred_loss = 0;
    KW_CHECK(kw_load_sens_allocate(L.n, n_opt, delta, loss, target - ref.bytes, choice, &pred_delta, &pred_loss));
    char schedule_name[64]; /* one point per target, so another target in the same folder adds a point */
    snprintf(schedule_name, sizeof schedule_name, "schedule-%.0f", target);
    KW_CHECK(kw__sens_sweep(o, info, console, L.layers, L.n, choice, schedule_name));
    KW_CHECK(kw__sens_read(o->out, schedule_name, 0, &done));

    /* 4. the files */
    report = cJSON_CreateObject();
    cJSON *table = cJSON_CreateArray(), *pred = cJSON_CreateObject(), *meas = cJSON_CreateObject();
    cJSON *per_layer = cJSON_CreateArray();
    schedule_policy = kw__sens_kvwire(o, -1, NULL, L.layers, L.n, choice);
    KW_CHECK_IF(!report || !table || !pred || !meas || !per_layer || !schedule_policy, KW_E_NOMEM, "out of memory");
    cJSON_AddItemToObject(report, "mode", cJSON_CreateString(o->mode));
    cJSON_AddItemToObject(report, "metric",
                          cJSON_CreateString(o->metric == KW_LOAD_SENS_KL ? "mean_kl" : "1 - tf_top1"));
    cJSON_AddNumberToObject(report, "reference_bytes_per_request", ref.bytes);
    cJSON_AddNumberToObject(report, "target_bytes_per_request", target);
    cJSON_AddItemToObject(report, "table", table);
    for (int32_t i = 0; i < L.n; ++i)
        for (int k = 0; k < o->n_codecs; ++k) {
            const kw__sens_measure *x = &m[i * o->n_codecs + k];
            cJSON *row = cJSON_CreateObject();
            cJSON_AddNumberToObject(row, "layer", L.layers[i]);
            cJSON_AddItemToObject(row, "codec", cJSON_CreateString(o->codecs[k]));
            cJSON_AddNumberToObject(row, "bytes_per_request", x->bytes);
            cJSON_AddNumberToObject(row, "delta_bytes", x->bytes - ref.bytes);
            cJSON_AddNumberToObject(row, "mean_kl", x->kl);
            cJSON_AddNumberToObject(row, "tf_top1_agreement", x->agreement);
            cJSON_AddItemToArray(table, row);
        }
    for (int32_t i = 0; i < L.n; ++i) {
        cJSON *row = cJSON_CreateObject();
        cJSON_AddNumberToObject(row, "layer", L.layers[i]);
        cJSON_AddItemToObject(
            row, "codec",
            cJSON_CreateString(choice[i] ? o->codecs[choice[i] - 1] : (o->base_codec ? o->base_codec : "bf16")));
        cJSON_AddItemToArray(per_layer, row);
    }
    cJSON_AddItemToObject(report, "schedule", per_layer);
    cJSON_AddNumberToObject(pred, "bytes_per_request", ref.bytes + pred_delta);
    cJSON_AddNumberToObject(pred, "loss", pred_loss);
    cJSON_AddItemToObject(report, "predicted", pred);
    cJSON_AddItemToObject(meas, "point", cJSON_CreateString(schedule_name));
    cJSON_AddNumberToObject(meas, "bytes_per_request", done.bytes);
    cJSON_AddNumberToObject(meas, "mean_kl", done.kl);
    cJSON_AddNumberToObject(meas, "tf_top1_agreement", done.agreement);
    cJSON_AddItemToObject(report, "measured", meas);
    cJSON_AddItemToObject(report, "policy",
                          cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(schedule_policy, "policy"), 1));
    free(path);
    path = kw_path_join(o->out, "sensitivity.json");
    KW_CHECK_IF(!path, KW_E_NOMEM, "out of memory");
    KW_CHECK(kw_load_json_write(path, report));
    free(path);
    path = kw_path_join(o->out, "schedule.json");
    KW_CHECK_IF(!path, KW_E_NOMEM, "out of memory");
    KW_CHECK(kw_load_json_write(path, cJSON_GetObjectItemCaseSensitive(schedule_policy, "policy")));
    if (console) {
        fprintf(console, "\nschedule for %.0f bytes per request (reference %.1f):", target, ref.bytes);
        for (int32_t i = 0; i < L.n; ++i)
            fprintf(console, " %d:%s", (int)L.layers[i],
                    choice[i] ? o->codecs[choice[i] - 1] : (o->base_codec ? o->base_codec : "bf16"));
        fprintf(console, "\npredicted: %.1f bytes per request, loss %.4g\n", ref.bytes + pred_delta, pred_loss);
        fprintf(console, "measured:  %.1f bytes per request, mean KL %.4g, tf top-1 agreement %.4f\n", done.bytes,
                done.kl, done.agreement);
        fprintf(console, "policy: %s/schedule.json; table: %s/sensitivity.json\n", o->out, o->out);
    }
out:
    free(path);
    free(L.layers);
    free(m), free(delta), free(loss), free(choice);
    cJSON_Delete(report);
    cJSON_Delete(schedule_policy);
    return rc;
}
