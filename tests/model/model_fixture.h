/* model_fixture.h: reader for the ref.kwfx reference files written by tools/make_model_fixtures.py (layout described
 * at the top of that script), plus the comparison helpers the model tests share. Test-only code. */
#ifndef KW_TEST_MODEL_FIXTURE_H
#define KW_TEST_MODEL_FIXTURE_H

#include <stddef.h>
#include <stdint.h>

#include "model/kw_model.h"

typedef struct kwfx_array {
    char name[64];
    uint32_t dtype; /* 0 = f32, 3 = i32 */
    uint32_t ndim;
    int64_t shape[4];
    int64_t count;    /* product of shape */
    const void *data; /* owned copy, aligned */
} kwfx_array;

typedef struct kwfx {
    char *bytes; /* the whole file, owned */
    size_t size;
    kwfx_array *arrays; /* owned */
    uint32_t n;
} kwfx;

/* Reads and validates path (every length checked against the file size). 0 or a negative kw_status. */
int kwfx_load(const char *path, kwfx *fx);
void kwfx_free(kwfx *fx);

/* The array called name with the given dtype, or NULL. */
const kwfx_array *kwfx_get(const kwfx *fx, const char *name, uint32_t dtype);
const float *kwfx_f32(const kwfx *fx, const char *name, int64_t *count);
const int32_t *kwfx_i32(const kwfx *fx, const char *name, int64_t *count);

/* For cmocka tests: the f32 array called name, failing the test if it is absent or does not hold expect values. */
const float *kwfx_f32_expect(const kwfx *fx, const char *name, int64_t expect);

/* max |a - b| / max |ref| over n values (ref = b). */
double kwfx_rel_diff(const float *a, const float *b, int64_t n);

/* max over rows of (max |a - b| / max |b|) for rows of width cols. */
double kwfx_rel_diff_rows(const float *a, const float *b, int64_t rows, int64_t cols);

/* For cmocka tests: fails unless the files at a and b hold the same bytes. */
void kwfx_expect_same_file(const char *a, const char *b);

/* For cmocka tests: the logits of every position of ids[0..n) run by m from an empty f32 cache (malloc'ed, n x vocab
 * values, freed by the caller). Fails the test on any error. */
float *kwfx_prompt_logits(kw_model *m, const int32_t *ids, int64_t n);

/* For cmocka tests: loads the model at path on be (kw_model_load; opts may be NULL) and returns the logits of every
 * position of ids[0..n) run from an empty f32 cache (malloc'ed, n * *vocab values, freed by the caller), and in
 * *bytes_per_token (may be NULL) the model's weight bytes per token. Fails the test on any error. */
float *kwfx_model_logits(kw_backend *be, const char *path, const kw_model_options *opts, const int32_t *ids, int64_t n,
                         int64_t *vocab, size_t *bytes_per_token);

/* For cmocka tests: copies of the K and V rows of one layer kw_share_run hands over (c2c/kw_share.h kw_share_layer:
 * n_rows * heads * head_dim f32 each) into new arrays *k, *v (malloc'ed, freed by the caller), and of its positions
 * into *pos (n_rows, malloc'ed) when pos is not NULL. Fails the test when out of memory. */
struct kw_share_layer;
void kwfx_copy_share_layer(const struct kw_share_layer *l, float **k, float **v, int64_t **pos);

#endif
