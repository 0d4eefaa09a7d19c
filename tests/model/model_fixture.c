/* model_fixture.c: ref.kwfx reader and comparison helpers for the model tests (see model_fixture.h). */
#include "model_fixture.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_file.h"
#include "common/kw_status.h"
#include "c2c/kw_share.h"

static int rd_u32(const kwfx *fx, size_t *off, uint32_t *v) {
    if (fx->size - *off < 4) return KW_E_TRUNCATED;
    memcpy(v, fx->bytes + *off, 4);
    *off += 4;
    return 0;
}

int kwfx_load(const char *path, kwfx *fx) {
    memset(fx, 0, sizeof *fx);
    int rc = kw_file_read_all(path, (size_t)64 << 20, &fx->bytes, &fx->size);
    if (rc < 0) return rc;
    size_t off = 0;
    uint32_t version, reserved;
    if (fx->size < 16 || memcmp(fx->bytes, "KWFX", 4) != 0) goto bad;
    off = 4;
    if (rd_u32(fx, &off, &version) || rd_u32(fx, &off, &fx->n) || rd_u32(fx, &off, &reserved)) goto bad;
    if (version != 1 || reserved != 0 || fx->n > 4096) goto bad;
    fx->arrays = calloc(fx->n ? fx->n : 1, sizeof *fx->arrays);
    if (!fx->arrays) goto bad;
    for (uint32_t i = 0; i < fx->n; ++i) {
        kwfx_array *a = &fx->arrays[i];
        uint32_t len;
        if (rd_u32(fx, &off, &len) || len >= sizeof a->name || fx->size - off < len) goto bad;
        memcpy(a->name, fx->bytes + off, len);
        off += len;
        if (rd_u32(fx, &off, &a->dtype) || rd_u32(fx, &off, &a->ndim)) goto bad;
        if ((a->dtype != 0 && a->dtype != 3) || a->ndim < 1 || a->ndim > 4) goto bad;
        a->count = 1;
        for (uint32_t d = 0; d < a->ndim; ++d) {
            if (fx->size - off < 8) goto bad;
            memcpy(&a->shape[d], fx->bytes + off, 8);
            off += 8;
            if (a->shape[d] < 0 || a->shape[d] > (1 << 24)) goto bad;
            a->count *= a->shape[d];
        }
        if (a->count > (int64_t)((fx->size - off) / 4)) goto bad;
        /* names have any length, so array data in the file is not aligned: each array gets its own copy */
        void *copy = malloc(a->count ? (size_t)a->count * 4 : 1);
        if (!copy) goto bad;
        memcpy(copy, fx->bytes + off, (size_t)a->count * 4);
        a->data = copy;
        off += (size_t)a->count * 4;
    }
    if (off != fx->size) goto bad;
    return 0;
bad:
    kwfx_free(fx);
    return kw_error_set(KW_E_PARSE, "%s: not a valid KWFX file", path);
}

void kwfx_free(kwfx *fx) {
    for (uint32_t i = 0; fx->arrays && i < fx->n; ++i)
        free((void *)fx->arrays[i].data);
    free(fx->bytes);
    free(fx->arrays);
    memset(fx, 0, sizeof *fx);
}

const kwfx_array *kwfx_get(const kwfx *fx, const char *name, uint32_t dtype) {
    for (uint32_t i = 0; i < fx->n; ++i)
        if (strcmp(fx->arrays[i].name, name) == 0 && fx->arrays[i].dtype == dtype) return &fx->arrays[i];
    return NULL;
}

const float *kwfx_f32(const kwfx *fx, const char *name, int64_t *count) {
    const kwfx_array *a = kwfx_get(fx, name, 0);
    if (!a) return NULL;
    if (count) *count = a->count;
    return (const float *)a->data;
}

const float *kwfx_f32_expect(const kwfx *fx, const char *name, int64_t expect) {
    int64_t n = 0;
    const float *p = kwfx_f32(fx, name, &n);
    if (!p) fail_msg("fixture has no %s", name);
    assert_int_equal(n, expect);
    return p;
}

const int32_t *kwfx_i32(const kwfx *fx, const char *name, int64_t *count) {
    const kwfx_array *a = kwfx_get(fx, name, 3);
    if (!a) return NULL;
    if (count) *count = a->count;
    return (const int32_t *)a->data;
}

double kwfx_rel_diff(const float *a, const float *b, int64_t n) {
    double md = 0, mr = 0;
    for (int64_t i = 0; i < n; ++i) {
        const double d = fabs((double)a[i] - (double)b[i]);
        if (d > md || isnan(d)) md = isnan(d) ? INFINITY : d;
        if (fabs((double)b[i]) > mr) mr = fabs((double)b[i]);
    }
    return mr > 0 ? md / mr : md;
}

double kwfx_rel_diff_rows(const float *a, const float *b, int64_t rows, int64_t cols) {
    double worst = 0;
    for (int64_t r = 0; r < rows; ++r) {
        const double d = kwfx_rel_diff(a + r * cols, b + r * cols, cols);
        if (d > worst || isnan(d)) worst = isnan(d) ? INFINITY : d;
    }
    return worst;
}

void kwfx_expect_same_file(const char *a, const char *b) {
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    assert_int_equal(kw_file_read_all(a, (size_t)1 << 30, &x, &nx), 0);
    assert_int_equal(kw_file_read_all(b, (size_t)1 << 30, &y, &ny), 0);
    assert_int_equal(nx, ny);
    assert_memory_equal(x, y, nx);
    free(x);
    free(y);
}

void kwfx_copy_share_layer(const struct kw_share_layer *l, float **k, float **v, int64_t **pos) {
    const size_t vals = (size_t)(l->n_rows * l->n_heads * l->head_dim);
    *k = malloc(vals * sizeof(float));
    *v = malloc(vals * sizeof(float));
    assert_true(*k && *v);
    memcpy(*k, l->k, vals * sizeof(float));
    memcpy(*v, l->v, vals * sizeof(float));
    if (pos) {
        *pos = malloc((size_t)l->n_rows * sizeof **pos);
        assert_non_null(*pos);
        memcpy(*pos, l->positions, (size_t)l->n_rows * sizeof **pos);
    }
}

float *kwfx_prompt_logits(kw_model *m, const int32_t *ids, int64_t n) {
    const int64_t V = kw_model_get_config(m)->vocab;
    kw_kvcache *cache = NULL;
    assert_int_equal(kw_model_create_cache(m, n + 32, KW_DTYPE_F32, &cache), 0);
    float *logits = malloc((size_t)(n * V) * sizeof *logits);
    assert_non_null(logits);
    const kw_forward_args a = {.ids = ids, .n = n, .mode = KW_LOGITS_ALL, .logits = logits};
    const int rc = kw_model_forward(m, cache, &a);
    if (rc < 0) fail_msg("forward: %s", kw_error_detail());
    kw_kvcache_free(cache);
    return logits;
}

float *kwfx_model_logits(kw_backend *be, const char *path, const kw_model_options *opts, const int32_t *ids, int64_t n,
                         int64_t *vocab, size_t *bytes_per_token) {
    kw_model *m = NULL;
    const int rc = kw_model_load(be, path, opts, &m);
    if (rc < 0) fail_msg("load %s: %s", path, kw_error_detail());
    float *logits = kwfx_prompt_logits(m, ids, n);
    *vocab = kw_model_get_config(m)->vocab;
    if (bytes_per_token) *bytes_per_token = kw_model_weight_bytes_per_token(m);
    kw_model_free(m);
    return logits;
}
