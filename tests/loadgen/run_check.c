/* run_check.c: records added up and compared with the summary (run_check.h). */
#include "run_check.h"

#include "common/kw_file.h"
#include "common/kw_json.h"
#include "loadgen/kw_load_io.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const cJSON *at(const cJSON *o, const char *path) {
    char buf[128], *save = NULL;
    snprintf(buf, sizeof(buf), "%s", path);
    for (char *seg = strtok_r(buf, ".", &save); seg && o; seg = strtok_r(NULL, ".", &save))
        o = cJSON_GetObjectItemCaseSensitive(o, seg);
    return o;
}

static double num_or(const cJSON *o, const char *path, double def) {
    const cJSON *v = at(o, path);
    return cJSON_IsNumber(v) ? v->valuedouble : def;
}

static int fail(char *why, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *why, size_t cap, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, cap, fmt, ap);
    va_end(ap);
    return -1;
}

static int tally_row(const cJSON *row, size_t line, void *user) {
    run_tally *t = user;
    t->n++;
    if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(row, "success"))) {
        t->failed++;
        const cJSON *k = at(row, "error.kind");
        if (cJSON_IsString(k) && !t->first_error[0])
            snprintf(t->first_error, sizeof(t->first_error), "%s", k->valuestring);
        return 0;
    }
    t->ok++;
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(row, "correct");
    if (cJSON_IsBool(c)) {
        t->graded++;
        t->correct += cJSON_IsTrue(c);
    }
    t->blob += num_or(row, "kvwire.bytes.blob", 0);
    t->socket_in += num_or(row, "kvwire.bytes.socket_in", 0);
    t->socket_out += num_or(row, "kvwire.bytes.socket_out", 0);
    t->text += num_or(row, "kvwire.bytes.text", 0);
    t->e2el += num_or(row, "e2el_ms", NAN);
    t->out_tokens += num_or(row, "output_tokens", 0);
    if (cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(row, "ttft_ms"))) t->with_ttft++;
    if (cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(row, "output_ids"))) t->with_ids++;
    if (t->want_sched) {
        const double s = num_or(row, "scheduled_ms", NAN), idx = num_or(row, "index", -1);
        if (idx < 0 || !(fabs(s - t->want_sched[(size_t)idx]) < 1e-6)) {
            snprintf(t->why, sizeof(t->why), "line %zu: scheduled_ms %g is not the seeded schedule", line, s);
            return -1;
        }
    }
    return 0;
}

int run_tally_records(const char *dir, run_tally *t) {
    const double *sched = t->want_sched;
    memset(t, 0, sizeof(*t));
    t->want_sched = sched;
    char *p = kw_path_join(dir, "records.jsonl");
    const int rc = p ? kw_load_jsonl_each(p, 0, tally_row, t, NULL) : -1;
    free(p);
    if (rc < 0 && !t->why[0]) snprintf(t->why, sizeof(t->why), "%s/records.jsonl unreadable", dir);
    return rc < 0 ? -1 : 0;
}

static int near(double a, double b, double rel) {
    return fabs(a - b) <= rel * fmax(1.0, fmax(fabs(a), fabs(b)));
}

typedef struct forced_sum {
    double agree, positions;
    size_t n;
} forced_sum;

static int forced_row(const cJSON *row, size_t line, void *user) {
    (void)line;
    forced_sum *f = user;
    if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(row, "success"))) return 0;
    const double pos = num_or(row, "positions", 0);
    if (pos > 0) {
        f->agree += num_or(row, "top1_agree", 0);
        f->positions += pos;
        f->n++;
    }
    return 0;
}

int run_check_summary(const char *dir, const run_tally *t, char *why, size_t cap) {
    char *p = kw_path_join(dir, "summary.json");
    cJSON *s = NULL;
    const int lrc = p ? kw_json_load_file(p, (size_t)64 << 20, &s) : -1;
    free(p);
    if (lrc < 0) return fail(why, cap, "%s/summary.json unreadable", dir);
    int rc = -1;
    if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(s, "complete"))) {
        fail(why, cap, "not complete");
    } else if (num_or(s, "completed", -1) != (double)t->ok || num_or(s, "failed", -1) != (double)t->failed) {
        fail(why, cap, "completed/failed %g/%g, records say %zu/%zu", num_or(s, "completed", -1),
             num_or(s, "failed", -1), t->ok, t->failed);
    } else if (t->graded && !near(num_or(s, "accuracy.value", -1), (double)t->correct / (double)t->graded, 1e-12)) {
        fail(why, cap, "accuracy %g, records say %zu/%zu", num_or(s, "accuracy.value", -1), t->correct, t->graded);
    } else if (t->graded && num_or(s, "accuracy.n", -1) != (double)t->graded) {
        fail(why, cap, "accuracy.n %g, %zu graded records", num_or(s, "accuracy.n", -1), t->graded);
    } else if (t->graded && !(num_or(s, "accuracy.ci95_low", 2) <= num_or(s, "accuracy.value", -1) &&
                              num_or(s, "accuracy.value", -1) <= num_or(s, "accuracy.ci95_high", -1))) {
        fail(why, cap, "the accuracy is outside its interval");
    } else if (t->ok && cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(s, "bytes")) &&
               (!near(num_or(s, "bytes.blob.total", -1), t->blob, 1e-12) ||
                !near(num_or(s, "bytes.socket_in.total", -1), t->socket_in, 1e-12) ||
                !near(num_or(s, "bytes.socket_out.total", -1), t->socket_out, 1e-12) ||
                !near(num_or(s, "bytes.text.total", -1), t->text, 1e-12) ||
                !near(num_or(s, "bytes.blob.mean", -1), t->blob / (double)t->ok, 1e-12))) {
        fail(why, cap, "byte totals differ from the records' sums (blob %g vs %g)", num_or(s, "bytes.blob.total", -1),
             t->blob);
    } else if (t->ok && !near(num_or(s, "mean_e2el_ms", -1), t->e2el / (double)t->ok, 1e-9)) {
        fail(why, cap, "mean_e2el_ms %g, records say %g", num_or(s, "mean_e2el_ms", -1), t->e2el / (double)t->ok);
    } else if (!near(num_or(s, "total_output_tokens", -1), t->out_tokens, 1e-12)) {
        fail(why, cap, "total_output_tokens differs from the records' sum");
    } else if (t->ok && !(num_or(s, "p99_e2el_ms", -1) >= num_or(s, "median_e2el_ms", 0))) {
        fail(why, cap, "p99 below the median");
    } else {
        rc = 0;
        const cJSON *tf = at(s, "quality.tf_top1_agreement");
        if (cJSON_IsObject(tf)) {
            forced_sum f = {0};
            char *fp = kw_path_join(dir, "forced.jsonl");
            if (!fp || kw_load_jsonl_each(fp, 0, forced_row, &f, NULL) < 0) {
                rc = fail(why, cap, "forced.jsonl unreadable");
            } else if (f.positions <= 0 || !near(num_or(tf, "value", -1), f.agree / f.positions, 1e-12)) {
                rc = fail(why, cap, "tf_top1_agreement %g, forced.jsonl says %g / %g", num_or(tf, "value", -1), f.agree,
                          f.positions);
            }
            free(fp);
        }
    }
    cJSON_Delete(s);
    return rc;
}
