/* test_gguf_writer.c: model/kw_gguf_writer.c. A file holding every metadata type and tensors of several types and
 * sizes is read back by kvwire's reader (kw_gguf.c) with every value, shape, type, offset and byte intact; offsets
 * and the data section are aligned (default 32 and an explicit 64, written as general.alignment); the file on disk
 * equals the in-memory one; copying every entry of a read file into a new writer reproduces it byte for byte; bad
 * arguments are refused. */
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
#include "model/kw_gguf_writer.h"

/* A malloc'd buffer of n bytes, byte i = seed + 7i. */
static void *pattern(size_t n, unsigned seed) {
    uint8_t *p = malloc(n);
    assert_non_null(p);
    for (size_t i = 0; i < n; ++i)
        p[i] = (uint8_t)(seed + 7 * i);
    return p;
}

/* Tensors of the test file: name, type, dims, extents; their data is pattern(bytes, index). */
typedef struct tensor_spec {
    const char *name;
    uint32_t type;
    int32_t n_dims;
    int64_t ne[4];
} tensor_spec;

static const tensor_spec kTensors[] = {
    {"a.norm", KW_GGML_F32, 1, {3, 1, 1, 1}},   /* 12 bytes: the next offset must be padded */
    {"b.q8", KW_GGML_Q8_0, 2, {64, 3, 1, 1}},   /* 3 rows of 2 blocks: 204 bytes */
    {"c.bf16", KW_GGML_BF16, 3, {5, 2, 3, 1}},  /* 60 bytes */
    {"d.q4k", KW_GGML_Q4_K, 2, {256, 2, 1, 1}}, /* 288 bytes */
    {"e.f16", KW_GGML_F16, 4, {2, 1, 1, 3}},    /* 12 bytes */
};
#define N_TENSORS (sizeof kTensors / sizeof kTensors[0])

static size_t spec_bytes(const tensor_spec *t) {
    size_t row = 0;
    assert_int_equal(kw_ggml_row_bytes(t->type, t->ne[0], &row), 0);
    return row * (size_t)(t->ne[1] * t->ne[2] * t->ne[3]);
}

static const char *const kStrs[] = {"alpha", "", "gamma \xc3\xa9"};

static kw_gguf_writer *build(size_t alignment) {
    kw_gguf_writer *w = NULL;
    assert_int_equal(kw_gguf_writer_new(alignment, &w), 0);
    assert_int_equal(kw_gguf_writer_set_str(w, "general.architecture", "llama", 5), 0);
    assert_int_equal(kw_gguf_writer_set_u32(w, "k.u32", 4000000000u), 0);
    assert_int_equal(kw_gguf_writer_set_i32(w, "k.i32", -123456), 0);
    assert_int_equal(kw_gguf_writer_set_u64(w, "k.u64", 0x123456789abcdefULL), 0);
    assert_int_equal(kw_gguf_writer_set_f32(w, "k.f32", 1e-6f), 0);
    assert_int_equal(kw_gguf_writer_set_bool(w, "k.bool", 1), 0);
    const int32_t ints[] = {-1, 0, 7, INT32_MAX};
    assert_int_equal(kw_gguf_writer_set_array(w, "k.arr_i32", KW_GGUF_INT32, ints, 4), 0);
    const float floats[] = {0.5f, -2.25f};
    assert_int_equal(kw_gguf_writer_set_array(w, "k.arr_f32", KW_GGUF_FLOAT32, floats, 2), 0);
    const uint8_t bytes[] = {1, 2, 255};
    assert_int_equal(kw_gguf_writer_set_array(w, "k.arr_u8", KW_GGUF_UINT8, bytes, 3), 0);
    const uint16_t shorts[] = {65535, 2};
    assert_int_equal(kw_gguf_writer_set_array(w, "k.arr_u16", KW_GGUF_UINT16, shorts, 2), 0);
    const double dbl[] = {3.5};
    assert_int_equal(kw_gguf_writer_set_array(w, "k.arr_f64", KW_GGUF_FLOAT64, dbl, 1), 0);
    const size_t lens[] = {5, 0, strlen(kStrs[2])};
    assert_int_equal(kw_gguf_writer_set_str_array(w, "k.arr_str", kStrs, lens, 3), 0);
    assert_int_equal(kw_gguf_writer_set_array(w, "k.empty", KW_GGUF_INT32, NULL, 0), 0);
    for (size_t i = 0; i < N_TENSORS; ++i) {
        const tensor_spec *t = &kTensors[i];
        const size_t n = spec_bytes(t);
        assert_int_equal(kw_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, pattern(n, (unsigned)i), n),
                         0);
    }
    return w;
}

static void check_read(const void *mem, size_t size, size_t alignment) {
    kw_gguf *g = NULL;
    const int rc = kw_gguf_open_memory(mem, size, &g);
    if (rc < 0) fail_msg("reader refused the written file: %s", kw_error_detail());
    assert_int_equal(kw_gguf_version(g), 3);
    assert_int_equal(kw_gguf_alignment(g), alignment);
    assert_int_equal(kw_gguf_data_offset(g) % alignment, 0);
    assert_int_equal(size % alignment, 0);
    assert_int_equal(kw_gguf_kv_count(g), 13 + (alignment != 32 ? 1 : 0));
    if (alignment != 32) assert_string_equal(kw_gguf_kv_at(g, 0)->key, "general.alignment");

    const char *s = NULL;
    size_t n = 0;
    assert_int_equal(kw_gguf_get_str(g, "general.architecture", &s, &n), 0);
    assert_true(n == 5 && memcmp(s, "llama", 5) == 0);
    int64_t v = 0;
    assert_int_equal(kw_gguf_get_int(g, "k.u32", 0, INT64_MAX, &v), 0);
    assert_int_equal(v, 4000000000LL);
    assert_int_equal(kw_gguf_find_kv(g, "k.u32")->type, KW_GGUF_UINT32);
    assert_int_equal(kw_gguf_get_int(g, "k.i32", INT64_MIN, INT64_MAX, &v), 0);
    assert_int_equal(v, -123456);
    assert_int_equal(kw_gguf_find_kv(g, "k.i32")->type, KW_GGUF_INT32);
    assert_int_equal(kw_gguf_get_int(g, "k.u64", 0, INT64_MAX, &v), 0);
    assert_int_equal(v, 0x123456789abcdefLL);
    assert_int_equal(kw_gguf_find_kv(g, "k.u64")->type, KW_GGUF_UINT64);
    double f = 0;
    assert_int_equal(kw_gguf_get_float(g, "k.f32", &f), 0);
    assert_true((float)f == 1e-6f);
    int b = 0;
    assert_int_equal(kw_gguf_get_bool(g, "k.bool", &b), 0);
    assert_int_equal(b, 1);

    const kw_gguf_kv *kv = NULL;
    assert_int_equal(kw_gguf_get_array(g, "k.arr_i32", KW_GGUF_INT32, &kv), 0);
    assert_int_equal(kv->count, 4);
    const int64_t want_ints[] = {-1, 0, 7, INT32_MAX};
    for (uint64_t i = 0; i < 4; ++i) {
        assert_int_equal(kw_gguf_array_int(kv, i, &v), 0);
        assert_int_equal(v, want_ints[i]);
    }
    assert_int_equal(kw_gguf_get_array(g, "k.arr_f32", KW_GGUF_FLOAT32, &kv), 0);
    assert_int_equal(kw_gguf_array_float(kv, 1, &f), 0);
    assert_true(f == -2.25);
    assert_int_equal(kw_gguf_get_array(g, "k.arr_u8", KW_GGUF_UINT8, &kv), 0);
    assert_int_equal(kw_gguf_array_int(kv, 2, &v), 0);
    assert_int_equal(v, 255);
    assert_int_equal(kw_gguf_get_array(g, "k.arr_u16", KW_GGUF_UINT16, &kv), 0);
    assert_int_equal(kw_gguf_array_int(kv, 0, &v), 0);
    assert_int_equal(v, 65535);
    assert_int_equal(kw_gguf_get_array(g, "k.arr_f64", KW_GGUF_FLOAT64, &kv), 0);
    assert_int_equal(kw_gguf_array_float(kv, 0, &f), 0);
    assert_true(f == 3.5);
    assert_int_equal(kw_gguf_get_array(g, "k.arr_str", KW_GGUF_STRING, &kv), 0);
    assert_int_equal(kv->count, 3);
    for (uint64_t i = 0; i < 3; ++i) {
        assert_int_equal(kw_gguf_array_str(g, kv, i, &s, &n), 0);
        assert_true(n == strlen(kStrs[i]) && memcmp(s, kStrs[i], n) == 0);
    }
    assert_int_equal(kw_gguf_get_array(g, "k.empty", KW_GGUF_INT32, &kv), 0);
    assert_int_equal(kv->count, 0);

    assert_int_equal(kw_gguf_tensor_count(g), N_TENSORS);
    uint64_t offset = 0;
    for (size_t i = 0; i < N_TENSORS; ++i) {
        const tensor_spec *t = &kTensors[i];
        const kw_gguf_tensor *r = kw_gguf_tensor_at(g, i);
        assert_string_equal(r->name, t->name);
        assert_int_equal(r->type, t->type);
        assert_int_equal(r->n_dims, t->n_dims);
        for (int d = 0; d < 4; ++d)
            assert_int_equal(r->ne[d], t->ne[d]);
        const size_t nb = spec_bytes(t);
        /* each tensor starts at the previous one's end rounded up to the alignment */
        assert_int_equal(r->offset, offset);
        assert_int_equal(r->offset % alignment, 0);
        assert_int_equal(r->nbytes, nb);
        void *want = pattern(nb, (unsigned)i);
        assert_memory_equal(r->data, want, nb);
        free(want);
        offset = (offset + nb + alignment - 1) / alignment * alignment;
    }
    assert_int_equal(kw_gguf_data_offset(g) + offset, size);
    kw_gguf_close(g);
}

static void test_round_trip(void **state) {
    (void)state;
    static const size_t aligns[] = {32, 64};
    for (size_t a = 0; a < 2; ++a) {
        kw_gguf_writer *w = build(aligns[a] == 32 ? 0 : aligns[a]);
        void *mem = NULL;
        size_t size = 0;
        assert_int_equal(kw_gguf_writer_to_memory(w, &mem, &size), 0);
        check_read(mem, size, aligns[a]);

        /* the file on disk is the same bytes, and the reader opens it from the path */
        char path[] = "/tmp/kw_gguf_writer_XXXXXX";
        const int fd = mkstemp(path);
        assert_true(fd >= 0);
        close(fd);
        assert_int_equal(kw_gguf_writer_write(w, path), 0);
        char *disk = NULL;
        size_t disk_size = 0;
        assert_int_equal(kw_file_read_all(path, 1 << 20, &disk, &disk_size), 0);
        assert_int_equal(disk_size, size);
        assert_memory_equal(disk, mem, size);
        kw_gguf *g = NULL;
        assert_int_equal(kw_gguf_open(path, &g), 0);
        kw_gguf_close(g);
        unlink(path);
        free(disk);

        /* a second writer with every entry copied from the read file and the same tensors: the same bytes */
        assert_int_equal(kw_gguf_open_memory(mem, size, &g), 0);
        kw_gguf_writer *w2 = NULL;
        assert_int_equal(kw_gguf_writer_new(aligns[a], &w2), 0);
        for (size_t i = 0; i < kw_gguf_kv_count(g); ++i) {
            const kw_gguf_kv *kv = kw_gguf_kv_at(g, i);
            if (strcmp(kv->key, "general.alignment") == 0) continue;
            assert_int_equal(kw_gguf_writer_copy_kv(w2, g, kv), 0);
        }
        for (size_t i = 0; i < kw_gguf_tensor_count(g); ++i) {
            const kw_gguf_tensor *t = kw_gguf_tensor_at(g, i);
            void *copy = malloc(t->nbytes);
            assert_non_null(copy);
            memcpy(copy, t->data, t->nbytes);
            assert_int_equal(kw_gguf_writer_add_tensor(w2, t->name, t->type, t->n_dims, t->ne, copy, t->nbytes), 0);
        }
        void *mem2 = NULL;
        size_t size2 = 0;
        assert_int_equal(kw_gguf_writer_to_memory(w2, &mem2, &size2), 0);
        assert_int_equal(size2, size);
        assert_memory_equal(mem2, mem, size);
        free(mem2);
        kw_gguf_writer_free(w2);
        kw_gguf_close(g);
        free(mem);
        kw_gguf_writer_free(w);
    }
}

static void test_refusals(void **state) {
    (void)state;
    kw_gguf_writer *w = NULL;
    assert_int_equal(kw_gguf_writer_new(3, &w), KW_E_INVALID_ARG);
    assert_int_equal(kw_gguf_writer_new(48, &w), KW_E_INVALID_ARG);
    assert_int_equal(kw_gguf_writer_new(0, &w), 0);
    assert_int_equal(kw_gguf_writer_set_u32(w, "a", 1), 0);
    assert_int_equal(kw_gguf_writer_set_u32(w, "a", 2), KW_E_INVALID_ARG);         /* duplicate key */
    assert_int_equal(kw_gguf_writer_set_str(w, "", "x", 1), KW_E_INVALID_ARG);     /* empty key */
    assert_int_equal(kw_gguf_writer_set_str(w, "s", "a\0b", 3), KW_E_INVALID_ARG); /* NUL in a string */
    assert_int_equal(kw_gguf_writer_set_u32(w, "general.alignment", 64), KW_E_INVALID_ARG);
    assert_int_equal(kw_gguf_writer_set_array(w, "arr", KW_GGUF_STRING, "x", 1), KW_E_INVALID_ARG);
    const uint8_t bad_bool = 2;
    assert_int_equal(kw_gguf_writer_set_array(w, "bools", KW_GGUF_BOOL, &bad_bool, 1), KW_E_INVALID_ARG);
    const int64_t ne[2] = {32, 2};
    assert_int_equal(kw_gguf_writer_add_tensor(w, "t", KW_GGML_Q8_0, 2, ne, malloc(68), 68), 0);
    assert_int_equal(kw_gguf_writer_add_tensor(w, "t", KW_GGML_Q8_0, 2, ne, malloc(68), 68), KW_E_INVALID_ARG);
    assert_int_equal(kw_gguf_writer_add_tensor(w, "u", KW_GGML_Q8_0, 2, ne, malloc(67), 67), KW_E_INVALID_ARG);
    const int64_t odd[2] = {33, 1};
    assert_int_equal(kw_gguf_writer_add_tensor(w, "v", KW_GGML_Q8_0, 2, odd, malloc(34), 34), KW_E_MODEL_SHAPE);
    assert_int_equal(kw_gguf_writer_add_tensor(w, "x", 4, 2, ne, malloc(68), 68), KW_E_MODEL_DTYPE);
    assert_int_equal(kw_gguf_writer_add_tensor(w, "y", KW_GGML_F32, 0, ne, malloc(4), 4), KW_E_MODEL_SHAPE);
    /* what was accepted still makes a valid file */
    void *mem = NULL;
    size_t size = 0;
    assert_int_equal(kw_gguf_writer_to_memory(w, &mem, &size), 0);
    kw_gguf *g = NULL;
    assert_int_equal(kw_gguf_open_memory(mem, size, &g), 0);
    assert_int_equal(kw_gguf_tensor_count(g), 1);
    assert_int_equal(kw_gguf_kv_count(g), 1);
    kw_gguf_close(g);
    free(mem);
    assert_int_equal(kw_gguf_writer_write(w, "/nonexistent-dir/x.gguf"), KW_E_IO);
    kw_gguf_writer_free(w);
    kw_gguf_writer_free(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
