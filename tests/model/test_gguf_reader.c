/* test_gguf_reader.c: kw_gguf on a generated file holding every metadata type and three tensors (gguf_build.h):
 * every value read back; then a generator of broken files (one defect each: bad magic and versions, counts, lengths
 * and extents too large for the file, nested arrays, bad types and bools, empty, NUL-holding and duplicate names,
 * dimension counts and extents, unknown ggml types, rows that are not whole blocks, misaligned, overlapping and
 * out-of-file tensor data, bad alignments), each refused with the expected status; every truncation of the valid
 * file refused; every single-byte corruption either parsed or refused, never a crash (run under ASan/UBSan by
 * scripts/test.sh). `test_model_gguf_reader --write-corpus DIR` writes the valid and broken files (the fuzz seeds). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/kw_file.h"
#include "common/kw_status.h"
#include "model/kw_dequant.h"
#include "model/kw_gguf.h"
#include "tests/model/gguf_build.h"

static void test_valid(void **state) {
    (void)state;
    kw_buf b;
    gguf_build(GGUF_OK, &b);
    kw_gguf *g = NULL;
    const int rc = kw_gguf_open_memory(b.data, b.len, &g);
    if (rc) print_error("%s\n", kw_error_detail());
    assert_int_equal(rc, 0);
    assert_int_equal(kw_gguf_version(g), 3);
    assert_int_equal(kw_gguf_alignment(g), 64);
    assert_int_equal(kw_gguf_kv_count(g), 15);
    assert_int_equal(kw_gguf_tensor_count(g), 3);
    assert_int_equal(kw_gguf_data_offset(g) % 64, 0);
    int64_t v = 0;
    double f = 0;
    int bo = 0;
    const char *s = NULL;
    size_t n = 0;
    assert_int_equal(kw_gguf_get_int(g, "t.u8", 0, 255, &v), 0);
    assert_int_equal(v, 7);
    assert_int_equal(kw_gguf_get_int(g, "t.i8", -128, 127, &v), 0);
    assert_int_equal(v, -7);
    assert_int_equal(kw_gguf_get_int(g, "t.u16", 0, 65535, &v), 0);
    assert_int_equal(v, 0x1234);
    assert_int_equal(kw_gguf_get_int(g, "t.i16", -10, 10, &v), 0);
    assert_int_equal(v, -2);
    assert_int_equal(kw_gguf_get_int(g, "t.u32", 0, 200000, &v), 0);
    assert_int_equal(v, 100000);
    assert_int_equal(kw_gguf_get_int(g, "t.u32", 0, 99999, &v), KW_E_MODEL_FORMAT); /* out of range */
    assert_int_equal(kw_gguf_get_int(g, "t.i32", -10, 10, &v), 0);
    assert_int_equal(v, -5);
    assert_int_equal(kw_gguf_get_int(g, "t.u64", 0, INT64_MAX, &v), 0);
    assert_int_equal(v, 1ll << 40);
    assert_int_equal(kw_gguf_get_int(g, "t.i64", -10, 10, &v), 0);
    assert_int_equal(v, -7);
    assert_int_equal(kw_gguf_get_int(g, "t.str", 0, 10, &v), KW_E_MODEL_FORMAT); /* not an integer */
    assert_int_equal(kw_gguf_get_int(g, "absent", 0, 10, &v), KW_E_NOT_FOUND);
    assert_int_equal(kw_gguf_get_float(g, "t.f32", &f), 0);
    assert_true(f == (double)3.14159274f);
    assert_int_equal(kw_gguf_get_float(g, "t.f64", &f), 0);
    assert_true(f == 1.5);
    assert_int_equal(kw_gguf_get_float(g, "t.bool", &f), KW_E_MODEL_FORMAT);
    assert_int_equal(kw_gguf_get_bool(g, "t.bool", &bo), 0);
    assert_int_equal(bo, 1);
    assert_int_equal(kw_gguf_get_bool(g, "t.u8", &bo), KW_E_MODEL_FORMAT);
    assert_int_equal(kw_gguf_get_str(g, "t.str", &s, &n), 0);
    assert_int_equal(n, 5);
    assert_memory_equal(s, "hello", 5);
    const kw_gguf_kv *arr = NULL;
    assert_int_equal(kw_gguf_get_array(g, "t.arr_i32", KW_GGUF_INT32, &arr), 0);
    assert_int_equal(arr->count, 3);
    assert_int_equal(kw_gguf_array_int(arr, 2, &v), 0);
    assert_int_equal(v, 3);
    assert_int_equal(kw_gguf_array_int(arr, 3, &v), KW_E_INVALID_ARG);
    assert_int_equal(kw_gguf_array_float(arr, 0, &f), KW_E_MODEL_FORMAT);
    assert_int_equal(kw_gguf_get_array(g, "t.arr_i32", KW_GGUF_STRING, &arr), KW_E_MODEL_FORMAT);
    assert_int_equal(kw_gguf_get_array(g, "t.arr_str", KW_GGUF_STRING, &arr), 0);
    assert_int_equal(kw_gguf_array_str(g, arr, 1, &s, &n), 0);
    assert_int_equal(n, 3);
    assert_memory_equal(s, "cde", 3);
    assert_int_equal(kw_gguf_array_str(g, arr, 2, &s, &n), KW_E_INVALID_ARG);
    assert_string_equal(kw_gguf_kv_at(g, 0)->key, "t.u8");
    assert_null(kw_gguf_kv_at(g, 15));

    const kw_gguf_tensor *a = kw_gguf_find_tensor(g, "a.f32"), *q = kw_gguf_find_tensor(g, "b.q8_0");
    const kw_gguf_tensor *k = kw_gguf_find_tensor(g, "c.q4_k");
    assert_true(a && q && k);
    assert_null(kw_gguf_find_tensor(g, "zzz"));
    assert_true(a->n_dims == 2 && a->ne[0] == 4 && a->ne[1] == 2 && a->ne[2] == 1 && a->nbytes == 32);
    assert_true(q->nbytes == 68 && q->offset == 64 && k->nbytes == 144 && k->offset == 192);
    assert_ptr_equal(a->data, b.data + kw_gguf_data_offset(g));
    assert_ptr_equal(k->data, b.data + kw_gguf_data_offset(g) + 192);
    float out[256];
    assert_int_equal(kw_dequant_row(a->type, a->data, 8, KW_DTYPE_F32, out), 0);
    for (int i = 0; i < 8; ++i)
        assert_true(out[i] == (float)i - 3.5f);
    assert_int_equal(kw_dequant_row(k->type, k->data, 256, KW_DTYPE_F32, out), 0);
    kw_gguf_close(g);
    kw_buf_free(&b);
}

static int expected_status(enum gguf_defect d) {
    return d == GGUF_UNKNOWN_TYPE ? KW_E_MODEL_DTYPE : KW_E_MODEL_FORMAT;
}

static void test_broken_files(void **state) {
    (void)state;
    for (int d = 1; d < GGUF_DEFECT_COUNT; ++d) {
        kw_buf b;
        gguf_build((enum gguf_defect)d, &b);
        kw_gguf *g = NULL;
        const int rc = kw_gguf_open_memory(b.data, b.len, &g);
        if (rc != expected_status((enum gguf_defect)d))
            fail_msg("defect %d: status %d (%s), expected %d", d, rc, kw_error_detail(),
                     expected_status((enum gguf_defect)d));
        assert_null(g);
        assert_true(strlen(kw_error_detail()) > 0);
        kw_buf_free(&b);
    }
}

static void test_truncations(void **state) {
    (void)state;
    kw_buf b;
    gguf_build(GGUF_OK, &b);
    for (size_t n = 0; n < b.len; ++n) {
        char *copy = malloc(n ? n : 1); /* exact size, so ASan sees any read past the end */
        memcpy(copy, b.data, n);
        kw_gguf *g = NULL;
        const int rc = kw_gguf_open_memory(copy, n, &g);
        if (rc != KW_E_MODEL_FORMAT) fail_msg("prefix of %zu bytes: status %d", n, rc);
        free(copy);
    }
    kw_buf_free(&b);
}

static void test_corruptions(void **state) {
    (void)state;
    kw_buf b;
    gguf_build(GGUF_OK, &b);
    size_t refused = 0;
    for (size_t i = 0; i < b.len; ++i) {
        for (int bit = 0; bit < 8; bit += 3) {
            char *copy = malloc(b.len);
            memcpy(copy, b.data, b.len);
            copy[i] ^= (char)(1 << bit);
            kw_gguf *g = NULL;
            const int rc = kw_gguf_open_memory(copy, b.len, &g);
            assert_true(rc == 0 || rc == KW_E_MODEL_FORMAT || rc == KW_E_MODEL_DTYPE);
            if (rc == 0) {
                /* whatever parses is consistent: every tensor inside the buffer */
                for (size_t t = 0; t < kw_gguf_tensor_count(g); ++t) {
                    const kw_gguf_tensor *x = kw_gguf_tensor_at(g, t);
                    assert_true((const char *)x->data >= copy && (const char *)x->data + x->nbytes <= copy + b.len);
                }
                kw_gguf_close(g);
            } else {
                ++refused;
            }
            free(copy);
        }
    }
    assert_true(refused > 0);
    kw_buf_free(&b);
}

static void test_files(void **state) {
    (void)state;
    kw_gguf *g = NULL;
    assert_int_equal(kw_gguf_open("/nonexistent/x.gguf", &g), KW_E_NOT_FOUND);
    assert_false(kw_gguf_is_gguf("/nonexistent/x.gguf"));
    char dir[] = "/tmp/kw_gguf_test_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof path, "%s/ok.gguf", dir);
    kw_buf b;
    gguf_build(GGUF_OK, &b);
    assert_int_equal(kw_file_write_all(path, b.data, b.len), 0);
    assert_true(kw_gguf_is_gguf(path));
    assert_int_equal(kw_gguf_open(path, &g), 0);
    assert_int_equal(kw_gguf_file_size(g), b.len);
    kw_gguf_close(g);
    assert_int_equal(kw_file_write_all(path, "", 0), 0); /* an empty file */
    assert_int_equal(kw_gguf_open(path, &g), KW_E_MODEL_FORMAT);
    assert_true(strstr(kw_error_detail(), path) != NULL);
    remove(path);
    rmdir(dir);
    kw_buf_free(&b);
    kw_gguf_close(NULL);
}

static int write_corpus(const char *dir) {
    for (int d = 0; d < GGUF_DEFECT_COUNT; ++d) {
        kw_buf b;
        gguf_build((enum gguf_defect)d, &b);
        char name[64];
        snprintf(name, sizeof name, "built_%02d.gguf", d);
        char *path = kw_path_join(dir, name);
        const int rc = path ? kw_file_write_all(path, b.data, b.len) : KW_E_NOMEM;
        free(path);
        kw_buf_free(&b);
        if (rc < 0) return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--write-corpus") == 0) return write_corpus(argv[2]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),       cmocka_unit_test(test_broken_files), cmocka_unit_test(test_truncations),
        cmocka_unit_test(test_corruptions), cmocka_unit_test(test_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
