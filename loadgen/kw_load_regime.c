/* kw_load_regime.c: thresholds per family and the regime map over byte budgets (kw_load_regime.h). */
#include "loadgen/kw_load_regime.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_status.h"

static int kw__regime_usable(const kw_load_regime_run *r) {
    return r->name && r->family && isfinite(r->bytes) && isfinite(r->value) && r->bytes >= 0;
}

int kw_load_regime_thresholds(const kw_load_regime_run *runs, size_t n, const double *levels, size_t n_levels,
                              kw_load_regime_threshold **out, size_t *n_out) {
    *out = NULL, *n_out = 0;
    if (n == 0 || n_levels == 0) return 0;
    kw_load_regime_threshold *rows = calloc(n * n_levels, sizeof *rows);
    KW_RETURN_IF(!rows, KW_E_NOMEM, "out of memory");
    size_t count = 0;
    for (size_t i = 0; i < n; ++i) {
        if (!kw__regime_usable(&runs[i])) continue;
        int seen = 0; /* families in order of first appearance */
        for (size_t j = 0; j < i && !seen; ++j)
            seen = kw__regime_usable(&runs[j]) && strcmp(runs[j].family, runs[i].family) == 0;
        if (seen) continue;
        for (size_t k = 0; k < n_levels; ++k) {
            kw_load_regime_threshold *t = &rows[count++];
            t->family = runs[i].family;
            t->level = levels[k];
            for (size_t j = i; j < n; ++j) {
                const kw_load_regime_run *r = &runs[j];
                if (!kw__regime_usable(r) || strcmp(r->family, t->family) != 0 || !(r->value >= t->level)) continue;
                if (!t->reached || r->bytes < t->bytes || (r->bytes == t->bytes && strcmp(r->name, t->run) < 0)) {
                    t->reached = 1, t->bytes = r->bytes, t->run = r->name, t->value = r->value;
                }
            }
        }
    }
    *out = rows, *n_out = count;
    return 0;
}

/* 1 if run a beats run b for the same budget. */
static int kw__regime_beats(const kw_load_regime_run *a, const kw_load_regime_run *b, int higher_better) {
    if (a->value != b->value) return higher_better ? a->value > b->value : a->value < b->value;
    if (a->bytes != b->bytes) return a->bytes < b->bytes;
    return strcmp(a->name, b->name) < 0;
}

static int kw__regime_cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int kw_load_regime_map(const kw_load_regime_run *runs, size_t n, int higher_better, kw_load_regime_segment **out,
                       size_t *n_out) {
    *out = NULL, *n_out = 0;
    if (n == 0) return 0;
    double *cuts = malloc(n * sizeof *cuts);
    kw_load_regime_segment *seg = calloc(n, sizeof *seg);
    if (!cuts || !seg) {
        free(cuts), free(seg);
        KW_FAIL(KW_E_NOMEM, "out of memory");
    }
    size_t n_cuts = 0, n_seg = 0;
    for (size_t i = 0; i < n; ++i)
        if (kw__regime_usable(&runs[i])) cuts[n_cuts++] = runs[i].bytes;
    qsort(cuts, n_cuts, sizeof *cuts, kw__regime_cmp_double);
    for (size_t c = 0; c < n_cuts; ++c) {
        if (c > 0 && cuts[c] == cuts[c - 1]) continue;
        const kw_load_regime_run *best = NULL;
        for (size_t i = 0; i < n; ++i) {
            const kw_load_regime_run *r = &runs[i];
            if (kw__regime_usable(r) && r->bytes <= cuts[c] && (!best || kw__regime_beats(r, best, higher_better)))
                best = r;
        }
        if (n_seg > 0 && seg[n_seg - 1].run == best->name) continue; /* the same winner: the segment goes on */
        if (n_seg > 0) seg[n_seg - 1].to_bytes = cuts[c];
        seg[n_seg++] = (kw_load_regime_segment){.from_bytes = cuts[c],
                                                .to_bytes = INFINITY,
                                                .run = best->name,
                                                .family = best->family,
                                                .value = best->value};
    }
    free(cuts);
    *out = seg, *n_out = n_seg;
    return 0;
}
