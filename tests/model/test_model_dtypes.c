/* test_model_dtypes.c: the f16 and bf16 weight paths of every architecture. Each fp32 fixture model is rewritten
 * twice: once with every tensor stored as f16 (or bf16), once as f32 holding exactly the same values (rounded through
 * f16/bf16 and widened back). The two must give the same logits: the only difference is how the kernels read the
 * weights, so the tolerance is the same-backend one (summation order of differently blocked kernels, ~1e-6). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/kw_file.h"
#include "common/kw_half.h"
#include "common/kw_status.h"
#include "kernels/kw_backend.h"
#include "model/kw_model.h"
#include "model/kw_safetensors.h"
#include "model_fixture.h"
#include "tests/kw_test_util.h"

#define SAME_BACKEND_TOL 1e-5

static void copy_file(const char *src_dir, const char *dst_dir, const char *name) {
    char *src = kw_path_join(src_dir, name), *dst = kw_path_join(dst_dir, name);
    char *data = NULL;
    size_t len = 0;
    assert_int_equal(kw_file_read_all(src, 1 << 20, &data, &len), 0);
    assert_int_equal(kw_file_write_all(dst, data, len), 0);
    free(data);
    free(src);
    free(dst);
}

/* Writes dst/model.safetensors with every f32 tensor of src converted to dtype (narrow = 1) or rounded through dtype
 * and kept f32 (narrow = 0); copies the configs. */
static void write_model(const char *src, const char *dst, enum kw_dtype dtype, int narrow) {
    kw_safetensors *st = NULL;
    assert_int_equal(kw_safetensors_open(src, &st), 0);
    const size_t n = kw_safetensors_count(st);
    kw_st_write_tensor *w = calloc(n, sizeof *w);
    void **bufs = calloc(n, sizeof *bufs);
    assert_true(w && bufs);
    for (size_t i = 0; i < n; ++i) {
        const kw_st_tensor *t = kw_safetensors_at(st, i);
        assert_int_equal(t->dtype, KW_DTYPE_F32);
        const size_t count = t->nbytes / 4;
        bufs[i] = malloc(count * (narrow ? 2 : 4) + 1);
        assert_non_null(bufs[i]);
        for (size_t j = 0; j < count; ++j) {
            float x;
            memcpy(&x, (const char *)t->data + 4 * j, 4);
            const uint16_t h = dtype == KW_DTYPE_F16 ? kw_f32_to_f16(x) : kw_f32_to_bf16(x);
            if (narrow) {
                memcpy((char *)bufs[i] + 2 * j, &h, 2);
            } else {
                const float r = dtype == KW_DTYPE_F16 ? kw_f16_to_f32(h) : kw_bf16_to_f32(h);
                memcpy((char *)bufs[i] + 4 * j, &r, 4);
            }
        }
        w[i].name = t->name;
        w[i].dtype = narrow ? dtype : KW_DTYPE_F32;
        w[i].ndim = t->ndim;
        memcpy(w[i].shape, t->shape, sizeof w[i].shape);
        w[i].data = bufs[i];
    }
    char *path = kw_path_join(dst, "model.safetensors");
    assert_int_equal(kw_safetensors_write(path, w, n, NULL), 0);
    free(path);
    copy_file(src, dst, "config.json");
    copy_file(src, dst, "generation_config.json");
    for (size_t i = 0; i < n; ++i)
        free(bufs[i]);
    free(bufs);
    free(w);
    kw_safetensors_close(st);
}

static float *prompt_logits(kw_backend *be, const char *dir, const int32_t *ids, int64_t n, int64_t *vocab,
                            enum kw_dtype *lm_dtype) {
    kw_model *m = NULL;
    kw_kvcache *c = NULL;
    const int rc = kw_model_load(be, dir, NULL, &m);
    if (rc < 0) fail_msg("load %s: %s", dir, kw_error_detail());
    *vocab = kw_model_get_config(m)->vocab;
    *lm_dtype = kw_model_logits_weight_dtype(m);
    float *logits = malloc((size_t)(n * *vocab) * sizeof *logits);
    assert_non_null(logits);
    assert_int_equal(kw_model_create_cache(m, n, KW_DTYPE_F32, &c), 0);
    const kw_forward_args a = {.ids = ids, .n = n, .mode = KW_LOGITS_ALL, .logits = logits};
    assert_int_equal(kw_model_forward(m, c, &a), 0);
    kw_kvcache_free(c);
    kw_model_free(m);
    return logits;
}

static void check(const char *name, enum kw_dtype dtype) {
    char src[512];
    snprintf(src, sizeof src, "%s/model/hf/%s", KW_TEST_DATA_DIR, name);
    char narrow[] = "/tmp/kw_dtype_n_XXXXXX", wide[] = "/tmp/kw_dtype_w_XXXXXX";
    assert_non_null(mkdtemp(narrow));
    assert_non_null(mkdtemp(wide));
    write_model(src, narrow, dtype, 1);
    write_model(src, wide, dtype, 0);
    kw_backend *be = NULL;
    assert_int_equal(kw_backend_create_cpu(2, &be), 0);
    const int32_t ids[20] = {3, 500, 17, 17, 42, 9, 311, 128, 0, 77, 1, 2, 255, 256, 400, 33, 33, 33, 90, 511};
    int64_t V = 0, V2 = 0;
    enum kw_dtype dn, dw;
    float *ln = prompt_logits(be, narrow, ids, 20, &V, &dn), *lw = prompt_logits(be, wide, ids, 20, &V2, &dw);
    assert_int_equal(V, V2);
    assert_int_equal(dn, dtype);
    assert_int_equal(dw, KW_DTYPE_F32);
    const double d = kwfx_rel_diff_rows(ln, lw, 20, V);
    print_message("  %s %s weights vs the same values in f32: %.3g\n", name, kw_dtype_name(dtype), d);
    assert_true(d <= SAME_BACKEND_TOL);
    free(ln);
    free(lw);
    kw_backend_destroy(be);
    kw_test_remove_tree(narrow);
    kw_test_remove_tree(wide);
}

static void test_f16_weights(void **state) {
    (void)state;
    check("qwen2_gqa2", KW_DTYPE_F16);
    check("qwen3_gqa3", KW_DTYPE_F16);
    check("llama_gqa4", KW_DTYPE_F16);
}

static void test_bf16_weights(void **state) {
    (void)state;
    check("qwen2_gqa2", KW_DTYPE_BF16);
    check("qwen3_gqa3", KW_DTYPE_BF16);
    check("llama_gqa4", KW_DTYPE_BF16);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f16_weights),
        cmocka_unit_test(test_bf16_weights),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
