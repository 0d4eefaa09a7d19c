/* kw_load_report.c: summaries to report.csv, two SVG plots and index.html (kw_load_report.h). */
#include "loadgen/kw_load_report.h"

#include "common/kw_buf.h"
#include "common/kw_file.h"
#include "common/kw_json.h"
#include "common/kw_status.h"
#include "loadgen/kw_load_io.h"
#include "loadgen/kw_load_regime.h"
#include "loadgen/kw_load_svg.h"

#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct kw_load_rrun {
    char *dir; /* owned */
    cJSON *s;  /* owned: summary.json */
    const char *name, *family, *mode;
} kw_load_rrun;

typedef struct kw_load_runs {
    kw_load_rrun *v;
    size_t n, cap;
} kw_load_runs;

static void kw_load_runs_free(kw_load_runs *r) {
    for (size_t i = 0; i < r->n; ++i) {
        free(r->v[i].dir);
        cJSON_Delete(r->v[i].s);
    }
    free(r->v);
}

static const char *kw_load_jstr(const cJSON *o, const char *key, const char *def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : def;
}

static double kw_load_jnum(const cJSON *o, const char *key, double def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : def;
}

static int kw_load_runs_add(kw_load_runs *r, const char *dir, const char *summary_path) {
    cJSON *s = NULL;
    KW_FORWARD(kw_json_load_file(summary_path, (size_t)64 << 20, &s));
    if (!cJSON_IsObject(s) || !cJSON_GetObjectItemCaseSensitive(s, "completed")) {
        cJSON_Delete(s);
        KW_FAIL(KW_E_PARSE, "%s is not a kvload summary", summary_path);
    }
    if (r->n == r->cap) {
        const size_t cap = r->cap ? r->cap * 2 : 16;
        kw_load_rrun *v = realloc(r->v, cap * sizeof(*v));
        if (!v) {
            cJSON_Delete(s);
            KW_FAIL(KW_E_NOMEM, "out of memory");
        }
        r->v = v;
        r->cap = cap;
    }
    kw_load_rrun *x = &r->v[r->n];
    x->dir = strdup(dir);
    if (!x->dir) {
        cJSON_Delete(s);
        KW_FAIL(KW_E_NOMEM, "out of memory");
    }
    x->s = s;
    x->name = kw_load_jstr(s, "name", dir);
    x->family = kw_load_jstr(s, "family", "?");
    x->mode = kw_load_jstr(s, "mode", "c2c");
    r->n++;
    return 0;
}

static int kw_load_cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A run folder, or a folder of run folders (in name order). */
static int kw_load_collect(kw_load_runs *r, const char *dir) {
    char *summary = kw_path_join(dir, "summary.json");
    KW_RETURN_IF(!summary, KW_E_NOMEM, "out of memory");
    if (kw_path_is_file(summary)) {
        const int rc = kw_load_runs_add(r, dir, summary);
        free(summary);
        return rc;
    }
    free(summary);
    DIR *d = opendir(dir);
    KW_RETURN_IF(!d, KW_E_IO, "cannot open %s", dir);
    char **names = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 32;
            char **nn = realloc(names, cap * sizeof(*nn));
            if (!nn) {
                rc = kw_error_set(KW_E_NOMEM, "out of memory");
                break;
            }
            names = nn;
        }
        names[n] = strdup(e->d_name);
        if (!names[n]) {
            rc = kw_error_set(KW_E_NOMEM, "out of memory");
            break;
        }
        n++;
    }
    closedir(d);
    if (rc == 0 && n > 1) qsort(names, n, sizeof(*names), kw_load_cmp_str);
    for (size_t i = 0; rc == 0 && i < n; ++i) {
        char *sub = kw_path_join(dir, names[i]);
        char *sp = sub ? kw_path_join(sub, "summary.json") : NULL;
        if (!sp)
            rc = kw_error_set(KW_E_NOMEM, "out of memory");
        else if (kw_path_is_file(sp))
            rc = kw_load_runs_add(r, sub, sp);
        free(sub);
        free(sp);
    }
    for (size_t i = 0; i < n; ++i)
        free(names[i]);
    free(names);
    return rc;
}

// ---------------------------------------------------------------------------------------------------------------
// Values

/* The metric's {value, ci95_low, ci95_high} object of a run, or NULL. */
static const cJSON *kw_load_metric(const cJSON *s, const char *metric) {
    const cJSON *m = strcmp(metric, "accuracy") == 0
                         ? cJSON_GetObjectItemCaseSensitive(s, "accuracy")
                         : cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(s, "quality"), metric);
    return cJSON_IsObject(m) ? m : NULL;
}

static double kw_load_bytes(const cJSON *s, const char *kind) {
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(s, "bytes"), kind);
    return kw_load_jnum(b, "mean", NAN);
}

static const cJSON *kw_load_policy(const cJSON *s) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(s, "policy_effective");
    if (cJSON_IsObject(p)) return p;
    return cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(s, "policy"), "policy");
}

static const char *const kw_load_metric_labels[][2] = {
    {"accuracy", "accuracy"},
    {"answer_agreement", "answer agreement with the reference"},
    {"token_agreement", "free-running token agreement"},
    {"tf_top1_agreement", "teacher-forced top-1 agreement"},
    {"mean_kl", "mean KL to the reference, top-k + rest (nats)"},
};

static const char *kw_load_metric_label(const char *metric) {
    for (size_t i = 0; i < 5; ++i)
        if (strcmp(kw_load_metric_labels[i][0], metric) == 0) return kw_load_metric_labels[i][1];
    return NULL;
}

/* Writes a built buffer to path atomically (the buffer is emptied). */
static int kw_load_buf_write(kw_buf *b, const char *path) {
    char *text = NULL;
    size_t len = 0;
    KW_FORWARD(kw_buf_take(b, &text, &len));
    const int rc = kw_file_write_all(path, text, len);
    free(text);
    return rc;
}

// ---------------------------------------------------------------------------------------------------------------
// CSV

static void kw_load_csv_field(kw_buf *b, const char *s) {
    if (!strpbrk(s, ",\"\n\r")) {
        kw_buf_append_str(b, s);
        return;
    }
    kw_buf_append_str(b, "\"");
    for (const char *p = s; *p; ++p) {
        if (*p == '"') kw_buf_append(b, "\"", 1); /* a quote is doubled */
        kw_buf_append(b, p, 1);
    }
    kw_buf_append_str(b, "\"");
}

static void kw_load_csv_num(kw_buf *b, double v) {
    if (isnan(v)) return; /* empty field */
    kw_buf_printf(b, "%.10g", v);
}

static const char *const kw_load_csv_cols[] = {"name",
                                               "family",
                                               "mode",
                                               "dir",
                                               "complete",
                                               "dataset",
                                               "codec",
                                               "selection",
                                               "proportion",
                                               "granularity",
                                               "zstd",
                                               "cache_proportion",
                                               "completed",
                                               "failed",
                                               "accuracy",
                                               "accuracy_ci95_low",
                                               "accuracy_ci95_high",
                                               "answer_agreement",
                                               "answer_agreement_ci95_low",
                                               "answer_agreement_ci95_high",
                                               "token_agreement",
                                               "tf_top1_agreement",
                                               "tf_top1_agreement_ci95_low",
                                               "tf_top1_agreement_ci95_high",
                                               "mean_kl",
                                               "mean_kl_ci95_low",
                                               "mean_kl_ci95_high",
                                               "bytes_payload_mean",
                                               "bytes_blob_mean",
                                               "bytes_blob_p99",
                                               "bytes_socket_in_mean",
                                               "bytes_socket_out_mean",
                                               "bytes_text_mean",
                                               "bytes_blob_total",
                                               "request_throughput",
                                               "output_throughput",
                                               "mean_ttft_ms",
                                               "median_ttft_ms",
                                               "p99_ttft_ms",
                                               "mean_tpot_ms",
                                               "mean_itl_ms",
                                               "mean_e2el_ms",
                                               "median_e2el_ms",
                                               "p99_e2el_ms"};

static void kw_load_csv_ratio(kw_buf *b, const cJSON *s, const char *metric, int with_ci) {
    const cJSON *m = kw_load_metric(s, metric);
    kw_load_csv_num(b, kw_load_jnum(m, "value", NAN));
    if (!with_ci) return;
    kw_buf_append_str(b, ",");
    kw_load_csv_num(b, kw_load_jnum(m, "ci95_low", NAN));
    kw_buf_append_str(b, ",");
    kw_load_csv_num(b, kw_load_jnum(m, "ci95_high", NAN));
}

static int kw_load_write_csv(const kw_load_runs *r, const char *path) {
    kw_buf b = KW_BUF_INIT;
    for (size_t i = 0; i < sizeof(kw_load_csv_cols) / sizeof(kw_load_csv_cols[0]); ++i)
        kw_buf_printf(&b, "%s%s", i ? "," : "", kw_load_csv_cols[i]);
    kw_buf_append_str(&b, "\n");
    for (size_t i = 0; i < r->n; ++i) {
        const cJSON *s = r->v[i].s;
        const cJSON *pol = kw_load_policy(s);
        char num[64];
        kw_load_csv_field(&b, r->v[i].name);
        kw_buf_append_str(&b, ",");
        kw_load_csv_field(&b, r->v[i].family);
        kw_buf_append_str(&b, ",");
        kw_load_csv_field(&b, r->v[i].mode);
        kw_buf_append_str(&b, ",");
        kw_load_csv_field(&b, r->v[i].dir);
        kw_buf_printf(&b, ",%s,", cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(s, "complete")) ? "true" : "false");
        kw_load_csv_field(&b, kw_load_jstr(cJSON_GetObjectItemCaseSensitive(s, "dataset"), "name", ""));
        kw_buf_append_str(&b, ",");
        kw_load_csv_field(&b, kw_load_jstr(pol, "codec", ""));
        kw_buf_append_str(&b, ",");
        kw_load_csv_field(&b, kw_load_jstr(pol, "selection", ""));
        kw_buf_append_str(&b, ",");
        kw_load_csv_num(&b, kw_load_jnum(pol, "proportion", NAN));
        kw_buf_append_str(&b, ",");
        kw_load_csv_field(&b, kw_load_jstr(pol, "granularity", ""));
        kw_buf_append_str(&b, ",");
        const cJSON *z = cJSON_GetObjectItemCaseSensitive(pol, "zstd");
        snprintf(num, sizeof(num), "%g", cJSON_IsNumber(z) ? z->valuedouble : cJSON_IsTrue(z) ? 3.0 : 0.0);
        kw_buf_append_str(&b, pol ? num : "");
        kw_buf_append_str(&b, ",");
        kw_load_csv_num(&b, kw_load_jnum(pol, "cache_proportion", NAN));
        kw_buf_printf(&b, ",%.0f,%.0f,", kw_load_jnum(s, "completed", 0), kw_load_jnum(s, "failed", 0));
        kw_load_csv_ratio(&b, s, "accuracy", 1);
        kw_buf_append_str(&b, ",");
        kw_load_csv_ratio(&b, s, "answer_agreement", 1);
        kw_buf_append_str(&b, ",");
        kw_load_csv_ratio(&b, s, "token_agreement", 0);
        kw_buf_append_str(&b, ",");
        kw_load_csv_ratio(&b, s, "tf_top1_agreement", 1);
        kw_buf_append_str(&b, ",");
        kw_load_csv_ratio(&b, s, "mean_kl", 1);
        static const char *const bk[] = {"payload", "blob"};
        for (int k = 0; k < 2; ++k) {
            kw_buf_append_str(&b, ",");
            kw_load_csv_num(&b, kw_load_bytes(s, bk[k]));
        }
        const cJSON *blob = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(s, "bytes"), "blob");
        kw_buf_append_str(&b, ",");
        kw_load_csv_num(&b, kw_load_jnum(blob, "p99", NAN));
        static const char *const bk2[] = {"socket_in", "socket_out", "text"};
        for (int k = 0; k < 3; ++k) {
            kw_buf_append_str(&b, ",");
            kw_load_csv_num(&b, kw_load_bytes(s, bk2[k]));
        }
        kw_buf_append_str(&b, ",");
        kw_load_csv_num(&b, kw_load_jnum(blob, "total", NAN));
        static const char *const nums[] = {"request_throughput", "output_throughput", "mean_ttft_ms", "median_ttft_ms",
                                           "p99_ttft_ms",        "mean_tpot_ms",      "mean_itl_ms",  "mean_e2el_ms",
                                           "median_e2el_ms",     "p99_e2el_ms"};
        for (size_t k = 0; k < sizeof(nums) / sizeof(nums[0]); ++k) {
            kw_buf_append_str(&b, ",");
            kw_load_csv_num(&b, kw_load_jnum(s, nums[k], NAN));
        }
        kw_buf_append_str(&b, "\n");
    }
    return kw_load_buf_write(&b, path);
}

// ---------------------------------------------------------------------------------------------------------------
// Plot 1: the metric against bytes per request

typedef struct kw_load_pt {
    double x, y, lo, hi;
    size_t run;
} kw_load_pt;

static int kw_load_cmp_pt(const void *a, const void *b) {
    const kw_load_pt *p = a, *q = b;
    return (p->x > q->x) - (p->x < q->x);
}

static void kw_load_pt_group(kw_buf *b, int open) {
    kw_buf_append_str(b, open ? "<g class=\"pt\">\n" : "</g>\n");
}

static int kw_load_plot_quality(const kw_load_runs *r, const char *metric, const char *xkind, char **out,
                                size_t *points_drawn) {
    const double W = 920, H = 560, L = 86, R = 250, T = 56, B = 72;
    kw_load_pt *pts = calloc(r->n ? r->n : 1, sizeof(*pts));
    KW_RETURN_IF(!pts, KW_E_NOMEM, "out of memory");
    size_t n = 0;
    double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
    for (size_t i = 0; i < r->n; ++i) {
        const cJSON *m = kw_load_metric(r->v[i].s, metric);
        if (!m) continue;
        kw_load_pt p = {.x = kw_load_bytes(r->v[i].s, xkind),
                        .y = kw_load_jnum(m, "value", NAN),
                        .lo = kw_load_jnum(m, "ci95_low", NAN),
                        .hi = kw_load_jnum(m, "ci95_high", NAN),
                        .run = i};
        if (isnan(p.y)) continue;
        if (isnan(p.x)) p.x = 0;
        if (isnan(p.lo)) p.lo = p.y;
        if (isnan(p.hi)) p.hi = p.y;
        pts[n++] = p;
        ymin = fmin(ymin, p.lo);
        ymax = fmax(ymax, p.hi);
        if (strcmp(r->v[i].mode, "receiver_only") != 0) {
            if (p.x > 0) xmin = fmin(xmin, p.x);
            xmax = fmax(xmax, p.x);
        }
    }
    const int ratio = strcmp(metric, "mean_kl") != 0;
    if (n == 0) ymin = 0, ymax = 1;
    if (ratio) {
        ymin = fmax(0.0, ymin - 0.05);
        ymax = fmin(1.0, ymax + 0.05);
    }
    kw_load_axis ax = {.p0 = L, .p1 = W - R}, ay = {.lo = ymin, .hi = ymax, .p0 = H - B, .p1 = T};
    if (!(xmax >= 0) || !isfinite(xmax)) xmin = 1, xmax = 10;
    if (!isfinite(xmin)) xmin = xmax > 0 ? xmax : 1;
    ax.log10 = xmin > 0 && xmax / xmin > 20;
    ax.lo = ax.log10 ? xmin : 0;
    ax.hi = xmax > ax.lo ? xmax : ax.lo + 1;
    double xt[32], yt[32];
    const size_t nxt = kw_load_axis_ticks(&ax, xt, 32), nyt = kw_load_axis_ticks(&ay, yt, 32);
    if (ratio) {
        if (ay.lo < 0) ay.lo = 0;
        if (ay.hi > 1) ay.hi = 1;
    }

    kw_load_svg s;
    char title[160], label[64];
    snprintf(title, sizeof(title), "%s against bytes per request", kw_load_metric_label(metric));
    kw_load_svg_begin(&s, W, H, title);
    kw_load_svg_text(&s, L, 30, "start", 16, "#222", 0, title);
    for (size_t i = 0; i < nyt; ++i) {
        if (yt[i] < ay.lo - 1e-12 || yt[i] > ay.hi + 1e-12) continue;
        const double y = kw_load_axis_map(&ay, yt[i]);
        kw_load_svg_line(&s, L, y, W - R, y, "#e5e5e5", 1, 0);
        if (ratio)
            snprintf(label, sizeof(label), "%.0f%%", 100 * yt[i]);
        else
            kw_load_svg_format(yt[i], 0, label, sizeof(label));
        kw_load_svg_text(&s, L - 8, y + 4, "end", 12, "#444", 0, label);
    }
    for (size_t i = 0; i < nxt; ++i) {
        const double x = kw_load_axis_map(&ax, xt[i]);
        kw_load_svg_line(&s, x, T, x, H - B, "#eeeeee", 1, 0);
        kw_load_svg_format(xt[i], 1, label, sizeof(label));
        kw_load_svg_text(&s, x, H - B + 18, "middle", 12, "#444", 0, label);
    }
    kw_load_svg_line(&s, L, H - B, W - R, H - B, "#333", 1.2, 0);
    kw_load_svg_line(&s, L, T, L, H - B, "#333", 1.2, 0);
    char xlabel[128];
    snprintf(xlabel, sizeof(xlabel), "measured bytes per request (%s, mean%s)", xkind, ax.log10 ? ", log scale" : "");
    kw_load_svg_text(&s, (L + W - R) / 2, H - 24, "middle", 13, "#222", 0, xlabel);
    kw_load_svg_text(&s, 22, (T + H - B) / 2, "middle", 13, "#222", -90, kw_load_metric_label(metric));

    /* Families in order of first appearance; receiver_only as levels. */
    const char *fams[64];
    size_t nf = 0, legend_row = 0, drawn = 0;
    for (size_t i = 0; i < n; ++i) {
        const kw_load_rrun *run = &r->v[pts[i].run];
        if (strcmp(run->mode, "receiver_only") == 0) {
            const double y = kw_load_axis_map(&ay, pts[i].y);
            const double ylo = kw_load_axis_map(&ay, pts[i].lo), yhi = kw_load_axis_map(&ay, pts[i].hi);
            kw_load_pt_group(&s.b, 1);
            kw_load_svg_rect(&s, L, yhi, W - R - L, ylo - yhi, "#888888", 0.12);
            kw_load_svg_line(&s, L, y, W - R, y, "#555555", 1.5, 1);
            kw_load_pt_group(&s.b, 0);
            drawn++;
            kw_load_svg_text(&s, W - R - 4, y - 5, "end", 11, "#555", 0, run->name);
            continue;
        }
        size_t f = 0;
        while (f < nf && strcmp(fams[f], run->family) != 0)
            ++f;
        if (f == nf && nf < 64) fams[nf++] = run->family;
    }
    for (size_t f = 0; f < nf; ++f) {
        kw_load_pt fp[256];
        size_t k = 0;
        for (size_t i = 0; i < n && k < 256; ++i) {
            const kw_load_rrun *run = &r->v[pts[i].run];
            if (strcmp(run->mode, "receiver_only") == 0 || strcmp(run->family, fams[f]) != 0) continue;
            if (ax.log10 && pts[i].x <= 0) continue; /* no place on a log axis */
            fp[k++] = pts[i];
        }
        qsort(fp, k, sizeof(*fp), kw_load_cmp_pt);
        const char *color = kw_load_svg_color(f);
        const int shape = strcmp(fams[f], "text_relay") == 0 ? 2 : (int)(f % 4 == 2 ? 3 : f % 4);
        double xs[256], ys[256];
        for (size_t i = 0; i < k; ++i) {
            xs[i] = kw_load_axis_map(&ax, fp[i].x);
            ys[i] = kw_load_axis_map(&ay, fp[i].y);
        }
        if (strcmp(fams[f], "text_relay") != 0) kw_load_svg_polyline(&s, xs, ys, k, color, 2);
        for (size_t i = 0; i < k; ++i) {
            const double ylo = kw_load_axis_map(&ay, fp[i].lo), yhi = kw_load_axis_map(&ay, fp[i].hi);
            kw_load_pt_group(&s.b, 1);
            kw_load_svg_line(&s, xs[i], ylo, xs[i], yhi, color, 1.2, 0);
            kw_load_svg_line(&s, xs[i] - 4, ylo, xs[i] + 4, ylo, color, 1.2, 0);
            kw_load_svg_line(&s, xs[i] - 4, yhi, xs[i] + 4, yhi, color, 1.2, 0);
            kw_load_svg_marker(&s, xs[i], ys[i], shape, color);
            kw_load_pt_group(&s.b, 0);
            drawn++;
        }
        const double ly = T + 14 + 22.0 * (double)legend_row++;
        kw_load_svg_marker(&s, W - R + 24, ly - 4, shape, color);
        kw_load_svg_line(&s, W - R + 12, ly - 4, W - R + 36, ly - 4, color, 2, 0);
        kw_load_svg_text(&s, W - R + 44, ly, "start", 12, "#222", 0, fams[f]);
    }
    const double note_y = T + 14 + 22.0 * (double)legend_row + 8;
    kw_load_svg_line(&s, W - R + 12, note_y - 4, W - R + 36, note_y - 4, "#555555", 1.5, 1);
    kw_load_svg_text(&s, W - R + 44, note_y, "start", 12, "#222", 0, "receiver only (band: 95% CI)");
    kw_load_svg_text(&s, W - R + 12, note_y + 22, "start", 11, "#666", 0, "error bars: 95% bootstrap intervals");
    free(pts);
    *points_drawn = drawn;
    return kw_load_svg_end(&s, out, NULL);
}

// ---------------------------------------------------------------------------------------------------------------
// Plot 2: latency by stage

/* Row k of the stage plot for one run: a stage's mean ms, or (the last two rows) the client's mean TTFT and E2EL. */
static double kw_load_stage_value(const cJSON *s, const char *const *stages, size_t ns, size_t k) {
    if (k + 2 >= ns) return kw_load_jnum(s, k + 2 == ns ? "mean_ttft_ms" : "mean_e2el_ms", NAN);
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(s, "stages_ms"), stages[k]);
    return kw_load_jnum(st, "mean", NAN);
}

static int kw_load_plot_stages(const kw_load_runs *r, char **out, size_t *points_drawn) {
    const char *stages[48];
    size_t ns = 0;
    for (size_t i = 0; i < r->n; ++i) {
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(r->v[i].s, "stages_ms");
        for (const cJSON *m = st ? st->child : NULL; m; m = m->next) {
            size_t k = 0;
            while (k < ns && strcmp(stages[k], m->string) != 0)
                ++k;
            if (k == ns && ns < 46) stages[ns++] = m->string;
        }
    }
    stages[ns++] = "client: ttft";
    stages[ns++] = "client: e2el";
    const double L = 170, R = 230, T = 56, B = 60, rowh = 26;
    const double W = 920, H = T + B + rowh * (double)ns;
    double vmin = INFINITY, vmax = 0;
    for (size_t i = 0; i < r->n; ++i) {
        for (size_t k = 0; k < ns; ++k) {
            const double v = kw_load_stage_value(r->v[i].s, stages, ns, k);
            if (v > 0) {
                vmin = fmin(vmin, v);
                vmax = fmax(vmax, v);
            }
        }
    }
    if (!(vmax > 0)) vmin = 0.1, vmax = 1;
    kw_load_axis ax = {.lo = vmin, .hi = vmax, .p0 = L, .p1 = W - R};
    ax.log10 = vmax / vmin > 50;
    if (!ax.log10) ax.lo = 0;
    double xt[32];
    const size_t nxt = kw_load_axis_ticks(&ax, xt, 32);
    kw_load_svg s;
    const char *title = "Latency by stage: mean ms per run (receiverd's timings_ms, then the client's)";
    kw_load_svg_begin(&s, W, H, title);
    kw_load_svg_text(&s, 20, 30, "start", 15, "#222", 0, title);
    char label[64];
    for (size_t i = 0; i < nxt; ++i) {
        const double x = kw_load_axis_map(&ax, xt[i]);
        kw_load_svg_line(&s, x, T, x, H - B, "#eeeeee", 1, 0);
        kw_load_svg_format(xt[i], xt[i] >= 1000, label, sizeof(label));
        kw_load_svg_text(&s, x, H - B + 18, "middle", 12, "#444", 0, label);
    }
    kw_load_svg_text(&s, (L + W - R) / 2, H - 20, "middle", 13, "#222", 0,
                     ax.log10 ? "milliseconds (log scale; stages overlap in time, they do not add up)"
                              : "milliseconds (stages overlap in time, they do not add up)");
    size_t drawn = 0;
    for (size_t k = 0; k < ns; ++k) {
        const double y = T + rowh * ((double)k + 0.5);
        if (k % 2 == 0) kw_load_svg_rect(&s, L, y - rowh / 2, W - R - L, rowh, "#f4f4f4", 1);
        kw_load_svg_text(&s, L - 8, y + 4, "end", 12, "#222", 0, stages[k]);
        for (size_t i = 0; i < r->n; ++i) {
            const double v = kw_load_stage_value(r->v[i].s, stages, ns, k);
            if (!(v > 0) || (ax.log10 && v < ax.lo)) continue;
            kw_load_pt_group(&s.b, 1);
            kw_load_svg_marker(&s, kw_load_axis_map(&ax, v), y, 0, kw_load_svg_color(i));
            kw_load_pt_group(&s.b, 0);
            drawn++;
        }
    }
    kw_load_svg_line(&s, L, H - B, W - R, H - B, "#333", 1.2, 0);
    for (size_t i = 0; i < r->n; ++i) {
        const double ly = T + 14 + 20.0 * (double)i;
        if (ly > H - B) break;
        kw_load_svg_marker(&s, W - R + 20, ly - 4, 0, kw_load_svg_color(i));
        kw_load_svg_text(&s, W - R + 32, ly, "start", 12, "#222", 0, r->v[i].name);
    }
    *points_drawn = drawn;
    return kw_load_svg_end(&s, out, NULL);
}

// ---------------------------------------------------------------------------------------------------------------
// HTML

static void kw_load_html_cell(kw_buf *b, const char *text) {
    kw_buf_append_str(b, "<td>");
    kw_load_svg_escape(b, text);
    kw_buf_append_str(b, "</td>");
}

static void kw_load_html_num(kw_buf *b, double v, const char *fmt) {
    char t[64];
    if (isnan(v))
        snprintf(t, sizeof(t), "-");
    else
        snprintf(t, sizeof(t), fmt, v);
    kw_load_html_cell(b, t);
}

// ---------------------------------------------------------------------------------------------------------------
// Budgets and the regime map (kw_load_regime.h)

static const double kw_load_levels[] = {0.95, 0.99};

typedef struct kw_load_regime {
    int higher_better;
    kw_load_regime_threshold *thr; /* owned */
    size_t n_thr;
    kw_load_regime_segment *seg; /* owned */
    size_t n_seg;
} kw_load_regime;

static int kw_load_regime_compute(const kw_load_runs *r, const char *metric, const char *xkind, kw_load_regime *g) {
    memset(g, 0, sizeof *g);
    g->higher_better = strcmp(metric, "mean_kl") != 0;
    kw_load_regime_run *v = calloc(r->n ? r->n : 1, sizeof *v);
    KW_RETURN_IF(!v, KW_E_NOMEM, "out of memory");
    for (size_t i = 0; i < r->n; ++i)
        v[i] = (kw_load_regime_run){.name = r->v[i].name,
                                    .family = r->v[i].family,
                                    .bytes = kw_load_bytes(r->v[i].s, xkind),
                                    .value = kw_load_jnum(kw_load_metric(r->v[i].s, metric), "value", NAN)};
    int rc = 0;
    if (g->higher_better) KW_CHECK(kw_load_regime_thresholds(v, r->n, kw_load_levels, 2, &g->thr, &g->n_thr));
    KW_CHECK(kw_load_regime_map(v, r->n, g->higher_better, &g->seg, &g->n_seg));
out:
    free(v);
    return rc;
}

static void kw_load_regime_free(kw_load_regime *g) {
    free(g->thr);
    free(g->seg);
}

/* budgets.csv (the levels per family) and regime.csv (the winner per budget segment). */
static int kw_load_write_regime(const kw_load_regime *g, const char *metric, const char *dir, FILE *console) {
    kw_buf b = KW_BUF_INIT;
    int rc = 0;
    char *path = NULL;
    if (g->higher_better) {
        kw_buf_append_str(&b, "family,metric,level,reached,bytes_per_request,run,value\n");
        for (size_t i = 0; i < g->n_thr; ++i) {
            const kw_load_regime_threshold *t = &g->thr[i];
            kw_load_csv_field(&b, t->family);
            kw_buf_printf(&b, ",%s,%.2f,%s,", metric, t->level, t->reached ? "yes" : "no");
            if (t->reached) {
                kw_load_csv_num(&b, t->bytes);
                kw_buf_append_str(&b, ",");
                kw_load_csv_field(&b, t->run);
                kw_buf_append_str(&b, ",");
                kw_load_csv_num(&b, t->value);
            } else {
                kw_buf_append_str(&b, ",,");
            }
            kw_buf_append_str(&b, "\n");
        }
        path = kw_path_join(dir, "budgets.csv");
        KW_CHECK_IF(!path, KW_E_NOMEM, "out of memory");
        KW_CHECK(kw_load_buf_write(&b, path));
        if (console) fprintf(console, "wrote %s\n", path);
        free(path);
        path = NULL;
    }
    kw_buf_free(&b);
    b = (kw_buf)KW_BUF_INIT;
    kw_buf_append_str(&b, "from_bytes,to_bytes,family,run,metric,value\n");
    for (size_t i = 0; i < g->n_seg; ++i) {
        const kw_load_regime_segment *s = &g->seg[i];
        kw_load_csv_num(&b, s->from_bytes);
        kw_buf_append_str(&b, ",");
        if (isfinite(s->to_bytes))
            kw_load_csv_num(&b, s->to_bytes);
        else
            kw_buf_append_str(&b, "inf");
        kw_buf_append_str(&b, ",");
        kw_load_csv_field(&b, s->family);
        kw_buf_append_str(&b, ",");
        kw_load_csv_field(&b, s->run);
        kw_buf_printf(&b, ",%s,", metric);
        kw_load_csv_num(&b, s->value);
        kw_buf_append_str(&b, "\n");
    }
    path = kw_path_join(dir, "regime.csv");
    KW_CHECK_IF(!path, KW_E_NOMEM, "out of memory");
    KW_CHECK(kw_load_buf_write(&b, path));
    if (console) fprintf(console, "wrote %s\n", path);
out:
    kw_buf_free(&b);
    free(path);
    return rc;
}

/* The two tables on the page. */
static void kw_load_html_regime(kw_buf *b, const kw_load_regime *g, const char *metric, const char *xkind) {
    if (g->higher_better) {
        kw_buf_printf(b,
                      "<h2>Bytes per request (%s) each family needs</h2>\n<table id=\"budgets\">\n<thead><tr>"
                      "<th>family</th><th>level of ",
                      xkind);
        kw_load_svg_escape(b, metric);
        kw_buf_append_str(b, "</th><th>fewest bytes/req</th><th>run</th><th>value</th></tr></thead>\n<tbody>\n");
        for (size_t i = 0; i < g->n_thr; ++i) {
            const kw_load_regime_threshold *t = &g->thr[i];
            char level[32];
            snprintf(level, sizeof level, "%.2f", t->level);
            kw_buf_append_str(b, "<tr>");
            kw_load_html_cell(b, t->family);
            kw_load_html_cell(b, level);
            if (t->reached) {
                kw_load_html_num(b, t->bytes, "%.0f");
                kw_load_html_cell(b, t->run);
                kw_load_html_num(b, t->value, "%.4f");
            } else {
                kw_buf_append_str(b, "<td>not reached</td><td></td><td></td>");
            }
            kw_buf_append_str(b, "</tr>\n");
        }
        kw_buf_append_str(b, "</tbody>\n</table>\n");
    }
    kw_buf_printf(b,
                  "<h2>Regime map: the best run within each byte budget (%s)</h2>\n<table id=\"regime\">\n"
                  "<thead><tr><th>from bytes/req</th><th>to</th><th>family</th><th>run</th><th>",
                  xkind);
    kw_load_svg_escape(b, metric);
    kw_buf_append_str(b, "</th></tr></thead>\n<tbody>\n");
    for (size_t i = 0; i < g->n_seg; ++i) {
        const kw_load_regime_segment *s = &g->seg[i];
        kw_buf_append_str(b, "<tr>");
        kw_load_html_num(b, s->from_bytes, "%.0f");
        if (isfinite(s->to_bytes))
            kw_load_html_num(b, s->to_bytes, "%.0f");
        else
            kw_load_html_cell(b, "and above");
        kw_load_html_cell(b, s->family);
        kw_load_html_cell(b, s->run);
        kw_load_html_num(b, s->value, "%.4f");
        kw_buf_append_str(b, "</tr>\n");
    }
    kw_buf_append_str(b, "</tbody>\n</table>\n");
}

static int kw_load_write_html(const kw_load_runs *r, const kw_load_report_options *o, const char *metric,
                              const char *xkind, const char *svg1, size_t pts1, const char *svg2, size_t pts2,
                              const kw_load_regime *g, const char *path) {
    kw_buf b = KW_BUF_INIT;
    char when[32];
    kw_load_utc_now(when, sizeof(when));
    kw_buf_append_str(&b, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>");
    kw_load_svg_escape(&b, o->title);
    kw_buf_append_str(&b, "</title>\n<style>\n"
                          "body{font-family:sans-serif;margin:24px;color:#222;max-width:1200px}\n"
                          "table{border-collapse:collapse;font-size:13px}\n"
                          "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}\n"
                          "th{background:#f0f0f0}td:first-child,td:nth-child(2),td:nth-child(3){text-align:left}\n"
                          "figure{margin:12px 0}svg{max-width:100%;height:auto}\n"
                          ".note{color:#555;font-size:13px}\n</style>\n</head>\n<body data-check=\"pending\">\n<h1>");
    kw_load_svg_escape(&b, o->title);
    kw_buf_printf(&b,
                  "</h1>\n<p class=\"note\">%zu runs; written %s by kvload report. Every byte count is measured by "
                  "receiverd (lengths of buffers on the socket), every timing around the real work; intervals are "
                  "95%% percentile-bootstrap intervals over items.</p>\n",
                  r->n, when);
    kw_buf_append_str(&b, "<h2>");
    kw_load_svg_escape(&b, kw_load_metric_label(metric));
    kw_buf_printf(&b,
                  " against bytes per request (%s)</h2>\n<figure id=\"quality\" data-points=\"%zu\">\n%s</figure>\n",
                  xkind, pts1, svg1);
    kw_buf_printf(&b, "<h2>Latency by stage</h2>\n<figure id=\"stages\" data-points=\"%zu\">\n%s</figure>\n", pts2,
                  svg2);
    kw_buf_append_str(&b, "<h2>Runs</h2>\n<table id=\"runs\">\n<thead><tr><th>run</th><th>family</th><th>mode</th>"
                          "<th>");
    kw_load_svg_escape(&b, metric);
    kw_buf_append_str(&b, "</th><th>95% CI</th><th>bytes/req</th><th>blob/req</th><th>socket in/req</th>"
                          "<th>req/s</th><th>mean TTFT ms</th><th>mean E2EL ms</th><th>p99 E2EL ms</th>"
                          "<th>failed</th><th>complete</th></tr></thead>\n<tbody>\n");
    for (size_t i = 0; i < r->n; ++i) {
        const cJSON *s = r->v[i].s;
        const cJSON *m = kw_load_metric(s, metric);
        kw_buf_append_str(&b, "<tr>");
        kw_load_html_cell(&b, r->v[i].name);
        kw_load_html_cell(&b, r->v[i].family);
        kw_load_html_cell(&b, r->v[i].mode);
        kw_load_html_num(&b, kw_load_jnum(m, "value", NAN), "%.4f");
        char ci[64] = "-";
        if (m)
            snprintf(ci, sizeof(ci), "[%.4f, %.4f]", kw_load_jnum(m, "ci95_low", 0), kw_load_jnum(m, "ci95_high", 0));
        kw_load_html_cell(&b, ci);
        kw_load_html_num(&b, kw_load_bytes(s, xkind), "%.0f");
        kw_load_html_num(&b, kw_load_bytes(s, "blob"), "%.0f");
        kw_load_html_num(&b, kw_load_bytes(s, "socket_in"), "%.0f");
        kw_load_html_num(&b, kw_load_jnum(s, "request_throughput", NAN), "%.2f");
        kw_load_html_num(&b, kw_load_jnum(s, "mean_ttft_ms", NAN), "%.2f");
        kw_load_html_num(&b, kw_load_jnum(s, "mean_e2el_ms", NAN), "%.2f");
        kw_load_html_num(&b, kw_load_jnum(s, "p99_e2el_ms", NAN), "%.2f");
        kw_load_html_num(&b, kw_load_jnum(s, "failed", NAN), "%.0f");
        kw_load_html_cell(&b, cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(s, "complete")) ? "yes" : "NO");
        kw_buf_append_str(&b, "</tr>\n");
    }
    kw_buf_append_str(&b, "</tbody>\n</table>\n");
    kw_load_html_regime(&b, g, metric, xkind);
    kw_buf_append_str(
        &b,
        "<h2>What is measured</h2>\n<ul class=\"note\">\n"
        "<li><b>accuracy</b>: correct graded records / graded records, answers extracted with the C2C reference "
        "extractor (GSM8K: a numeric approximation of math_verify).</li>\n"
        "<li><b>answer agreement</b>: the extracted answer equals the reference run's on the same item.</li>\n"
        "<li><b>token agreement</b>: positions where both greedy outputs hold the same token, over the longer "
        "output's length.</li>\n"
        "<li><b>teacher-forced top-1 agreement</b>: the reference's tokens are fed to the policy; positions where the "
        "policy's most likely next token is the reference's.</li>\n"
        "<li><b>mean KL</b>: KL(P_ref || P_policy) in nats over the reference's top-k tokens plus one bucket for the "
        "rest (a lower bound of the full KL), averaged over forced positions.</li>\n"
        "<li><b>bytes</b>: payload = KVWire blob + relay text; blob = KVWire bytes received; socket in/out = frame "
        "bytes read from / written to the sharer connection.</li>\n</ul>\n");
    kw_buf_printf(&b,
                  "<script>\n(function () {\n  var why = [];\n  document.querySelectorAll('figure').forEach(function "
                  "(f) {\n    var svg = f.querySelector('svg');\n    var r = svg ? svg.getBoundingClientRect() : "
                  "null;\n    if (!r || !(r.width > 0 && r.height > 0)) why.push(f.id + ': no plot');\n    var want "
                  "= parseInt(f.getAttribute('data-points'), 10);\n    var got = f.querySelectorAll('g.pt').length;\n"
                  "    if (got !== want) why.push(f.id + ': ' + got + ' points drawn, ' + want + ' expected');\n  "
                  "});\n  var rows = document.querySelectorAll('#runs tbody tr').length;\n  if (rows !== %zu) "
                  "why.push(rows + ' table rows for %zu runs');\n  document.body.setAttribute('data-check', "
                  "why.length ? 'bad: ' + why.join('; ') : 'ok');\n})();\n</script>\n</body>\n</html>\n",
                  r->n, r->n);
    return kw_load_buf_write(&b, path);
}

// ---------------------------------------------------------------------------------------------------------------

void kw_load_report_options_default(kw_load_report_options *o) {
    memset(o, 0, sizeof(*o));
    o->x_bytes = "payload";
    o->metric = "auto";
    o->title = "kvload report";
}

static int kw_load_write_text(const char *dir, const char *name, const char *text, FILE *console) {
    char *path = kw_path_join(dir, name);
    KW_RETURN_IF(!path, KW_E_NOMEM, "out of memory");
    const int rc = kw_file_write_all(path, text, strlen(text));
    if (rc == 0 && console) fprintf(console, "wrote %s\n", path);
    free(path);
    return rc;
}

int kw_load_report_write(const char *const *dirs, size_t n_dirs, const kw_load_report_options *o, FILE *console) {
    static const char *const xkinds[] = {"payload", "blob", "socket_in", "socket_out", NULL};
    kw_load_runs runs = {0};
    kw_load_regime regime = {0};
    char *svg1 = NULL, *svg2 = NULL, *csv_path = NULL, *html_path = NULL;
    int rc = 0;
    int xok = 0;
    for (size_t i = 0; xkinds[i]; ++i)
        xok |= strcmp(o->x_bytes, xkinds[i]) == 0;
    KW_CHECK_IF(!xok, KW_E_INVALID_ARG, "--x must be payload, blob, socket_in or socket_out");
    for (size_t i = 0; i < n_dirs; ++i)
        KW_CHECK(kw_load_collect(&runs, dirs[i]));
    KW_CHECK_IF(runs.n == 0, KW_E_NOT_FOUND, "no run folder (with a summary.json) found");
    const char *metric = o->metric;
    if (strcmp(metric, "auto") == 0) {
        metric = "accuracy";
        int acc = 0, tf = 0, ans = 0;
        for (size_t i = 0; i < runs.n; ++i) {
            acc |= kw_load_metric(runs.v[i].s, "accuracy") != NULL;
            tf |= kw_load_metric(runs.v[i].s, "tf_top1_agreement") != NULL;
            ans |= kw_load_metric(runs.v[i].s, "answer_agreement") != NULL;
        }
        if (!acc) metric = tf ? "tf_top1_agreement" : ans ? "answer_agreement" : "accuracy";
    }
    KW_CHECK_IF(!kw_load_metric_label(metric), KW_E_INVALID_ARG, "unknown metric \"%s\"", metric);
    KW_CHECK(kw_load_mkdirs(o->out));
    csv_path = kw_path_join(o->out, "report.csv");
    html_path = kw_path_join(o->out, "index.html");
    KW_CHECK_IF(!csv_path || !html_path, KW_E_NOMEM, "out of memory");
    KW_CHECK(kw_load_write_csv(&runs, csv_path));
    if (console) fprintf(console, "wrote %s\n", csv_path);
    size_t pts1 = 0, pts2 = 0;
    KW_CHECK(kw_load_plot_quality(&runs, metric, o->x_bytes, &svg1, &pts1));
    KW_CHECK(kw_load_write_text(o->out, "quality_vs_bytes.svg", svg1, console));
    KW_CHECK(kw_load_plot_stages(&runs, &svg2, &pts2));
    KW_CHECK(kw_load_write_text(o->out, "latency_stages.svg", svg2, console));
    KW_CHECK(kw_load_regime_compute(&runs, metric, o->x_bytes, &regime));
    KW_CHECK(kw_load_write_regime(&regime, metric, o->out, console));
    KW_CHECK(kw_load_write_html(&runs, o, metric, o->x_bytes, svg1, pts1, svg2, pts2, &regime, html_path));
    if (console) fprintf(console, "wrote %s\n", html_path);
out:
    kw_load_runs_free(&runs);
    kw_load_regime_free(&regime);
    free(svg1);
    free(svg2);
    free(csv_path);
    free(html_path);
    return rc;
}
