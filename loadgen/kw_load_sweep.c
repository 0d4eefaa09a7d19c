/* kw_load_sweep.c: sweep files expanded into points (explicit and grid), and run point by point with resumption. */
#include "loadgen/kw_load_sweep.h"

#include "common/kw_buf.h"
#include "common/kw_file.h"
#include "common/kw_json.h"
#include "common/kw_status.h"
#include "loadgen/kw_load_io.h"
#include "loadgen/kw_load_yaml.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void kw_load_sweep_plan_free(kw_load_sweep_plan *plan) {
    if (!plan) return;
    for (size_t i = 0; i < plan->n; ++i) {
        free(plan->points[i].name);
        kw_load_config_free(&plan->points[i].cfg);
    }
    free(plan->points);
    free(plan->reference);
    memset(plan, 0, sizeof(*plan));
}

static int kw_load_check_keys(const cJSON *obj, const char *const *allowed, const char *what) {
    KW_RETURN_IF(!cJSON_IsObject(obj), KW_E_PARSE, "%s must be a mapping", what);
    for (const cJSON *m = obj->child; m; m = m->next) {
        int ok = 0;
        for (size_t i = 0; allowed[i]; ++i)
            ok |= strcmp(m->string, allowed[i]) == 0;
        KW_RETURN_IF(!ok, KW_E_PARSE, "%s: unknown key \"%s\"", what, m->string);
    }
    return 0;
}

/* Sets a dotted path ("policy.codec") in obj to a copy of v, creating objects on the way. */
static int kw_load_set_path(cJSON *obj, const char *path, const cJSON *v) {
    char buf[256];
    KW_RETURN_IF(strlen(path) >= sizeof(buf), KW_E_PARSE, "axis path too long: %s", path);
    strcpy(buf, path);
    cJSON *cur = obj;
    char *seg = buf;
    for (;;) {
        char *dot = strchr(seg, '.');
        KW_RETURN_IF(!*seg || (dot && dot == seg), KW_E_PARSE, "bad axis path \"%s\"", path);
        if (!dot) break;
        *dot = '\0';
        cJSON *next = cJSON_GetObjectItemCaseSensitive(cur, seg);
        if (!next) {
            next = cJSON_AddObjectToObject(cur, seg);
            KW_RETURN_IF(!next, KW_E_NOMEM, "out of memory");
        }
        KW_RETURN_IF(!cJSON_IsObject(next), KW_E_PARSE, "axis path \"%s\" goes through a non-object", path);
        cur = next;
        seg = dot + 1;
    }
    cJSON *copy = cJSON_Duplicate(v, 1);
    KW_RETURN_IF(!copy, KW_E_NOMEM, "out of memory");
    cJSON_DeleteItemFromObjectCaseSensitive(cur, seg);
    KW_RETURN_IF(!cJSON_AddItemToObject(cur, seg, copy), KW_E_NOMEM, "out of memory");
    return 0;
}

/* Appends a value to a point name, keeping [A-Za-z0-9._-]. */
static void kw_load_name_append(kw_buf *b, const char *s) {
    for (const char *p = s; *p; ++p) {
        const char c = *p;
        const int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                       c == '-' || c == '_';
        kw_buf_append(b, ok ? &c : "-", 1);
    }
}

static void kw_load_name_value(kw_buf *b, const cJSON *v) {
    char tmp[64];
    if (cJSON_IsString(v)) {
        kw_load_name_append(b, v->valuestring);
    } else if (cJSON_IsNumber(v)) {
        /* integers in full (a byte cap of 1800000 is not "1.8e+06"), others as %g without the exponent's '+',
         * which the name would turn into '-' and so into another number */
        const double x = v->valuedouble;
        if (x == floor(x) && fabs(x) < 1e15)
            snprintf(tmp, sizeof(tmp), "%.0f", x);
        else
            snprintf(tmp, sizeof(tmp), "%g", x);
        char *w = tmp;
        for (const char *r = tmp; *r; ++r)
            if (*r != '+') *w++ = *r;
        *w = '\0';
        kw_load_name_append(b, tmp);
    } else if (cJSON_IsBool(v)) {
        kw_load_name_append(b, cJSON_IsTrue(v) ? "true" : "false");
    } else {
        char *t = cJSON_PrintUnformatted(v);
        kw_load_name_append(b, t ? t : "x");
        free(t);
    }
}

typedef struct kw_load_expander {
    kw_load_sweep_plan *plan;
    size_t cap;
    const kw_load_config *base;
    const char *out;
    const kw_load_sweep_overrides *ov;
} kw_load_expander;

/* Adds one point: base options, the point's run overrides, the command line's, its kvwire object. */
static int kw_load_add_point(kw_load_expander *e, const char *name, const char *family, const cJSON *kvwire,
                             const cJSON *run, const char *where) {
    kw_load_sweep_plan *plan = e->plan;
    KW_RETURN_IF(!*name, KW_E_PARSE, "%s: empty point name", where);
    for (size_t i = 0; i < plan->n; ++i)
        KW_RETURN_IF(strcmp(plan->points[i].name, name) == 0, KW_E_PARSE, "%s: point name \"%s\" used twice", where,
                     name);
    if (plan->n == e->cap) {
        const size_t cap = e->cap ? e->cap * 2 : 16;
        kw_load_sweep_point *p = realloc(plan->points, cap * sizeof(*p));
        KW_RETURN_IF(!p, KW_E_NOMEM, "out of memory");
        plan->points = p;
        e->cap = cap;
    }
    kw_load_sweep_point *p = &plan->points[plan->n];
    memset(p, 0, sizeof(*p));
    KW_FORWARD(kw_load_config_copy(e->base, &p->cfg));
    p->name = strdup(name);
    plan->n++;
    KW_RETURN_IF(!p->name, KW_E_NOMEM, "out of memory");
    if (run) KW_FORWARD(kw_load_config_apply_json(&p->cfg, run, where));
    for (size_t i = 0; e->ov && i < e->ov->n; ++i) {
        const int rc = kw_load_config_set(&p->cfg, e->ov->keys[i], e->ov->values[i]);
        if (rc < 0) return kw_error_set(rc, "command line: %s", kw_error_detail());
    }
    if (kvwire) KW_FORWARD(kw_load_config_set_json(&p->cfg, "kvwire", kvwire));
    char *dir = kw_path_join(e->out, name);
    KW_RETURN_IF(!dir, KW_E_NOMEM, "out of memory");
    int rc = kw_load_config_set(&p->cfg, "out", dir);
    free(dir);
    KW_FORWARD(rc);
    KW_FORWARD(kw_load_config_set(&p->cfg, "name", name));
    if (family) KW_FORWARD(kw_load_config_set(&p->cfg, "family", family));
    return 0;
}

static int kw_load_expand_grid(kw_load_expander *e, const cJSON *g, size_t gi) {
    static const char *const keys[] = {"name", "family", "kvwire", "axes", "run", NULL};
    char where[64];
    snprintf(where, sizeof(where), "grids[%zu]", gi);
    KW_FORWARD(kw_load_check_keys(g, keys, where));
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(g, "name");
    const cJSON *family = cJSON_GetObjectItemCaseSensitive(g, "family");
    const cJSON *kv = cJSON_GetObjectItemCaseSensitive(g, "kvwire");
    const cJSON *axes = cJSON_GetObjectItemCaseSensitive(g, "axes");
    const cJSON *run = cJSON_GetObjectItemCaseSensitive(g, "run");
    KW_RETURN_IF(name && !cJSON_IsString(name), KW_E_PARSE, "%s: name must be a string", where);
    KW_RETURN_IF(family && !cJSON_IsString(family), KW_E_PARSE, "%s: family must be a string", where);
    KW_RETURN_IF(kv && !cJSON_IsObject(kv), KW_E_PARSE, "%s: kvwire must be a mapping", where);
    KW_RETURN_IF(!cJSON_IsObject(axes) || !axes->child, KW_E_PARSE, "%s: axes must be a non-empty mapping", where);
    size_t n_axes = 0, total = 1;
    for (const cJSON *a = axes->child; a; a = a->next) {
        KW_RETURN_IF(!cJSON_IsArray(a) || !a->child, KW_E_PARSE, "%s: axis %s must be a non-empty list", where,
                     a->string);
        total *= (size_t)cJSON_GetArraySize(a);
        KW_RETURN_IF(total > 100000, KW_E_PARSE, "%s: more than 100000 points", where);
        n_axes++;
    }
    size_t idx[32] = {0};
    KW_RETURN_IF(n_axes > 32, KW_E_PARSE, "%s: more than 32 axes", where);
    char prefix[32];
    snprintf(prefix, sizeof(prefix), "g%zu", gi);
    for (size_t p = 0; p < total; ++p) {
        cJSON *k = kv ? cJSON_Duplicate(kv, 1) : cJSON_CreateObject();
        KW_RETURN_IF(!k, KW_E_NOMEM, "out of memory");
        kw_buf b = KW_BUF_INIT;
        kw_load_name_append(&b, name ? name->valuestring : prefix);
        size_t ai = 0;
        int rc = 0;
        for (const cJSON *a = axes->child; a && rc == 0; a = a->next, ++ai) {
            const cJSON *v = cJSON_GetArrayItem(a, (int)idx[ai]);
            rc = kw_load_set_path(k, a->string, v);
            const char *leaf = strrchr(a->string, '.');
            kw_buf_append_str(&b, "_");
            kw_load_name_append(&b, leaf ? leaf + 1 : a->string);
            kw_buf_append_str(&b, "-");
            kw_load_name_value(&b, v);
        }
        char *pname = NULL;
        if (rc == 0) rc = kw_buf_take(&b, &pname, NULL);
        kw_buf_free(&b);
        char pwhere[96];
        snprintf(pwhere, sizeof(pwhere), "%s point %zu", where, p);
        if (rc == 0) rc = kw_load_add_point(e, pname, family ? family->valuestring : NULL, k, run, pwhere);
        free(pname);
        cJSON_Delete(k);
        KW_FORWARD(rc);
        /* Next combination: the last axis varies fastest. */
        for (size_t d = n_axes; d-- > 0;) {
            if (++idx[d] < (size_t)cJSON_GetArraySize(cJSON_GetArrayItem(axes, (int)d))) break;
            idx[d] = 0;
        }
    }
    return 0;
}

int kw_load_sweep_expand(const cJSON *doc, const char *out, const kw_load_sweep_overrides *ov,
                         kw_load_sweep_plan *plan_out) {
    static const char *const top[] = {"run", "reference", "points", "grids", "description", NULL};
    static const char *const point_keys[] = {"name", "family", "kvwire", "run", NULL};
    KW_FORWARD(kw_load_check_keys(doc, top, "the sweep file"));
    kw_load_sweep_plan plan;
    memset(&plan, 0, sizeof(plan));
    kw_load_config base;
    kw_load_config_default(&base);
    kw_load_expander e = {.plan = &plan, .base = &base, .out = out, .ov = ov};
    int rc = 0;
    const cJSON *run = cJSON_GetObjectItemCaseSensitive(doc, "run");
    if (run) KW_CHECK(kw_load_config_apply_json(&base, run, "run"));
    const cJSON *points = cJSON_GetObjectItemCaseSensitive(doc, "points");
    const cJSON *grids = cJSON_GetObjectItemCaseSensitive(doc, "grids");
    KW_CHECK_IF(points && !cJSON_IsArray(points), KW_E_PARSE, "points must be a list");
    KW_CHECK_IF(grids && !cJSON_IsArray(grids), KW_E_PARSE, "grids must be a list");
    size_t i = 0;
    for (const cJSON *p = points ? points->child : NULL; p; p = p->next, ++i) {
        char where[64];
        snprintf(where, sizeof(where), "points[%zu]", i);
        KW_CHECK(kw_load_check_keys(p, point_keys, where));
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(p, "name");
        const cJSON *family = cJSON_GetObjectItemCaseSensitive(p, "family");
        const cJSON *kv = cJSON_GetObjectItemCaseSensitive(p, "kvwire");
        KW_CHECK_IF(!cJSON_IsString(name), KW_E_PARSE, "%s: a name is required", where);
        KW_CHECK_IF(family && !cJSON_IsString(family), KW_E_PARSE, "%s: family must be a string", where);
        kw_buf b = KW_BUF_INIT;
        kw_load_name_append(&b, name->valuestring);
        char *clean = NULL;
        KW_CHECK(kw_buf_take(&b, &clean, NULL));
        const int differs = strcmp(clean, name->valuestring) != 0;
        if (differs) {
            free(clean);
            KW_CHECK_IF(1, KW_E_PARSE, "%s: point names may hold only letters, digits, '.', '-' and '_'", where);
        }
        rc = kw_load_add_point(&e, clean, family ? family->valuestring : NULL, kv,
                               cJSON_GetObjectItemCaseSensitive(p, "run"), where);
        free(clean);
        KW_CHECK(rc);
    }
    i = 0;
    for (const cJSON *g = grids ? grids->child : NULL; g; g = g->next, ++i)
        KW_CHECK(kw_load_expand_grid(&e, g, i));
    KW_CHECK_IF(plan.n == 0, KW_E_PARSE, "the sweep file has no points");

    const cJSON *ref = cJSON_GetObjectItemCaseSensitive(doc, "reference");
    if (ref && !cJSON_IsNull(ref)) {
        KW_CHECK_IF(!cJSON_IsString(ref), KW_E_PARSE, "reference must be a point name");
        size_t r = plan.n;
        for (size_t j = 0; j < plan.n; ++j)
            if (strcmp(plan.points[j].name, ref->valuestring) == 0) r = j;
        KW_CHECK_IF(r == plan.n, KW_E_PARSE, "reference \"%s\" names no point", ref->valuestring);
        /* The reference first. */
        const kw_load_sweep_point rp = plan.points[r];
        memmove(plan.points + 1, plan.points, r * sizeof(*plan.points));
        plan.points[0] = rp;
        plan.reference = strdup(ref->valuestring);
        KW_CHECK_IF(!plan.reference, KW_E_NOMEM, "out of memory");
        if (plan.points[0].cfg.record_logprobs == 0) plan.points[0].cfg.record_logprobs = 20;
        KW_CHECK(kw_load_config_set(&plan.points[0].cfg, "reference", NULL));
        for (size_t j = 1; j < plan.n; ++j)
            KW_CHECK(kw_load_config_set(&plan.points[j].cfg, "reference", plan.points[0].cfg.out));
    }
    for (size_t j = 0; j < plan.n; ++j) {
        rc = kw_load_config_validate(&plan.points[j].cfg);
        if (rc < 0) {
            rc = kw_error_set(rc, "point %s: %s", plan.points[j].name, kw_error_detail());
            goto out;
        }
    }
    *plan_out = plan;
    memset(&plan, 0, sizeof(plan));
out:
    kw_load_sweep_plan_free(&plan);
    kw_load_config_free(&base);
    return rc;
}

int kw_load_sweep_point_done(const char *dir, const kw_load_config *cfg) {
    char *path = kw_path_join(dir, "summary.json");
    KW_RETURN_IF(!path, KW_E_NOMEM, "out of memory");
    cJSON *s = NULL;
    int rc = 0;
    if (!kw_path_is_file(path) || kw_json_load_file(path, (size_t)64 << 20, &s) < 0) goto out;
    if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(s, "complete"))) goto out;
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(s, "config_identity");
    cJSON *mine = kw_load_config_to_json(cfg, 1);
    char *text = mine ? cJSON_PrintUnformatted(mine) : NULL;
    cJSON_Delete(mine);
    KW_CHECK_IF(!text, KW_E_NOMEM, "out of memory");
    const int same = cJSON_IsString(id) && strcmp(id->valuestring, text) == 0;
    free(text);
    KW_CHECK_IF(!same, KW_E_STATE,
                "%s holds a finished run with other options; remove it or rename the point to run this one", dir);
    rc = 1;
out:
    cJSON_Delete(s);
    free(path);
    return rc;
}

static int kw_load_sweep_state(const kw_load_sweep_plan *plan, const char *out, const char *file, const int *state) {
    static const char *const names[] = {"to_run", "done", "failed", "interrupted"};
    cJSON *doc = cJSON_CreateObject();
    KW_RETURN_IF(!doc, KW_E_NOMEM, "out of memory");
    cJSON_AddStringToObject(doc, "sweep_file", file);
    if (plan->reference) cJSON_AddStringToObject(doc, "reference", plan->reference);
    cJSON *pts = cJSON_AddArrayToObject(doc, "points");
    for (size_t i = 0; pts && i < plan->n; ++i) {
        cJSON *p = cJSON_CreateObject();
        cJSON_AddItemToArray(pts, p);
        cJSON_AddStringToObject(p, "name", plan->points[i].name);
        cJSON_AddStringToObject(p, "dir", plan->points[i].cfg.out);
        cJSON_AddStringToObject(p, "state", names[state[i]]);
    }
    char *path = kw_path_join(out, "sweep.json");
    const int rc = path ? kw_load_json_write(path, doc) : kw_error_set(KW_E_NOMEM, "out of memory");
    free(path);
    cJSON_Delete(doc);
    return rc;
}

int kw_load_sweep_run(const char *file, const kw_load_sweep_options *o, const kw_load_run_info *info, FILE *console) {
    cJSON *doc = NULL;
    kw_load_sweep_plan plan;
    memset(&plan, 0, sizeof(plan));
    int *state = NULL;
    int rc = 0;
    const size_t flen = strlen(file);
    if (flen > 5 && strcmp(file + flen - 5, ".json") == 0)
        KW_CHECK(kw_json_load_file(file, (size_t)16 << 20, &doc));
    else
        KW_CHECK(kw_load_yaml_load_file(file, &doc));
    rc = kw_load_sweep_expand(doc, o->out, o->overrides, &plan);
    if (rc < 0) {
        rc = kw_error_set(rc, "%s: %s", file, kw_error_detail());
        goto out;
    }
    state = calloc(plan.n, sizeof(*state));
    KW_CHECK_IF(!state, KW_E_NOMEM, "out of memory");
    for (size_t i = 0; i < plan.n; ++i) {
        const int done = kw_load_sweep_point_done(plan.points[i].cfg.out, &plan.points[i].cfg);
        KW_CHECK(done);
        state[i] = done;
    }
    if (o->dry_run) {
        for (size_t i = 0; console && i < plan.n; ++i)
            fprintf(console, "%-8s %s%s\n", state[i] ? "done" : "to run", plan.points[i].name,
                    plan.reference && i == 0 ? "  (reference)" : "");
        goto out;
    }
    KW_CHECK(kw_load_mkdirs(o->out));
    KW_CHECK(kw_load_sweep_state(&plan, o->out, file, state));
    int ran = 0;
    for (size_t i = 0; i < plan.n; ++i) {
        if (state[i] == 1) {
            if (console) fprintf(console, "== point %zu/%zu %s: done, skipped\n", i + 1, plan.n, plan.points[i].name);
            continue;
        }
        if (o->max_points > 0 && ran >= o->max_points) {
            rc = kw_error_set(KW_E_CANCELLED, "stopped after %d points (--max-points); run again to resume", ran);
            goto out;
        }
        if (kw_load_run_interrupted()) {
            rc = kw_error_set(KW_E_CANCELLED, "interrupted; run again to resume");
            goto out;
        }
        if (console) {
            fprintf(console, "== point %zu/%zu %s\n", i + 1, plan.n, plan.points[i].name);
            fflush(console);
        }
        rc = kw_load_run(&plan.points[i].cfg, info, console);
        ran++;
        state[i] = rc == 0 ? 1 : rc == KW_E_CANCELLED ? 3 : 2;
        const int rc2 = kw_load_sweep_state(&plan, o->out, file, state);
        if (rc < 0) {
            rc = kw_error_set(rc, "point %s: %s", plan.points[i].name, kw_error_detail());
            goto out;
        }
        KW_CHECK(rc2);
    }
    if (console) fprintf(console, "sweep %s: all %zu points done in %s\n", file, plan.n, o->out);
out:
    cJSON_Delete(doc);
    kw_load_sweep_plan_free(&plan);
    free(state);
    return rc;
}
