/* test_torchzip.c: the torch zip/pickle reader on archives written by torch.save (tests/data/c2c/pt, made by
 * tools/make_torchzip_fixtures.py): accepted files give the names, dtypes, shapes and bytes torch.load gives;
 * must-reject files fail with their expected status; truncations and byte flips never crash. The writer's output
 * reads back identically and is deterministic. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "c2c/kw_torchzip.h"
#include "common/kw_file.h"
#include "common/kw_half.h"
#include "common/kw_json.h"
#include "common/kw_status.h"

#define PT_DIR KW_TEST_DATA_DIR "/c2c/pt/"

static cJSON *load_manifest(void) {
    cJSON *m = NULL;
    assert_int_equal(kw_json_load_file(PT_DIR "manifest.json", 1 << 22, &m), 0);
    return m;
}

static float element(const kw_torchzip_tensor *t, size_t i) {
    const unsigned char *p = (const unsigned char *)t->data;
    if (t->dtype == KW_DTYPE_F32) {
        float f;
        memcpy(&f, p + 4 * i, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, p + 2 * i, 2);
    return t->dtype == KW_DTYPE_BF16 ? kw_bf16_to_f32(h) : kw_f16_to_f32(h);
}

static void test_accept(void **state) {
    (void)state;
    cJSON *m = load_manifest();
    const cJSON *file = NULL;
    size_t files = 0;
    cJSON_ArrayForEach(file, cJSON_GetObjectItemCaseSensitive(m, "accept")) {
        const char *name = cJSON_GetObjectItemCaseSensitive(file, "file")->valuestring;
        char path[512];
        snprintf(path, sizeof path, "%s%s", PT_DIR, name);
        kw_torchzip *tz = NULL;
        const int rc = kw_torchzip_open(path, 0, &tz);
        if (rc < 0) fprintf(stderr, "%s: %s\n", name, kw_error_detail());
        assert_int_equal(rc, 0);
        const cJSON *tensors = cJSON_GetObjectItemCaseSensitive(file, "tensors");
        assert_int_equal(kw_torchzip_count(tz), (size_t)cJSON_GetArraySize(tensors));
        size_t i = 0;
        const cJSON *want = NULL;
        cJSON_ArrayForEach(want, tensors) {
            const kw_torchzip_tensor *t = kw_torchzip_at(tz, i++);
            assert_string_equal(t->name, cJSON_GetObjectItemCaseSensitive(want, "name")->valuestring);
            assert_ptr_equal(kw_torchzip_find(tz, t->name) != NULL, 1);
            const char *dt = cJSON_GetObjectItemCaseSensitive(want, "dtype")->valuestring;
            assert_int_equal(t->dtype, strcmp(dt, "bf16") == 0  ? KW_DTYPE_BF16
                                       : strcmp(dt, "f32") == 0 ? KW_DTYPE_F32
                                                                : KW_DTYPE_F16);
            const cJSON *shape = cJSON_GetObjectItemCaseSensitive(want, "shape");
            assert_int_equal(t->ndim, cJSON_GetArraySize(shape));
            size_t numel = 1;
            for (int32_t d = 0; d < t->ndim; ++d) {
                assert_true(t->shape[d] == (int64_t)cJSON_GetArrayItem(shape, d)->valuedouble);
                numel *= (size_t)t->shape[d];
            }
            assert_int_equal(t->nbytes, numel * (t->dtype == KW_DTYPE_F32 ? 4 : 2));
            if (t->nbytes) assert_int_equal((uintptr_t)t->data % (t->dtype == KW_DTYPE_F32 ? 4 : 2), 0);
            const double crc = cJSON_GetObjectItemCaseSensitive(want, "crc32")->valuedouble;
            assert_true((double)kw_torchzip_crc32(0, t->data, t->nbytes) == crc);
            const cJSON *first = NULL;
            size_t k = 0;
            cJSON_ArrayForEach(first, cJSON_GetObjectItemCaseSensitive(want, "first")) {
                const float expect = strtof(first->valuestring, NULL);
                const float got = element(t, k++);
                assert_true(memcmp(&expect, &got, 4) == 0 || (isnan(expect) && isnan(got)));
            }
        }
        kw_torchzip_close(tz);
        ++files;
    }
    assert_true(files >= 6);
    cJSON_Delete(m);
}

static void test_reject(void **state) {
    (void)state;
    cJSON *m = load_manifest();
    const cJSON *file = NULL;
    size_t files = 0;
    cJSON_ArrayForEach(file, cJSON_GetObjectItemCaseSensitive(m, "reject")) {
        const char *name = cJSON_GetObjectItemCaseSensitive(file, "file")->valuestring;
        const char *want = cJSON_GetObjectItemCaseSensitive(file, "error")->valuestring;
        char path[512];
        snprintf(path, sizeof path, "%s%s", PT_DIR, name);
        kw_torchzip *tz = (kw_torchzip *)&files; /* must be reset to NULL */
        const int rc = kw_torchzip_open(path, 0, &tz);
        if (strcmp(kw_status_name(rc), want) != 0)
            fprintf(stderr, "%s: got %s (%s), want %s\n", name, kw_status_name(rc), kw_error_detail(), want);
        assert_string_equal(kw_status_name(rc), want);
        assert_null(tz);
        assert_true(strlen(kw_error_detail()) > 0);
        ++files;
    }
    assert_true(files >= 25);
    cJSON_Delete(m);
}

/* Every prefix of an archive, and every single-byte flip (with and without CRC checks, so that damaged pickles and
 * headers reach the parsers), must give a clean status; flips with CRC checks on are always caught except in bytes
 * no reader looks at. */
static void sweep(const char *name) {
    kw_file_map map = {0};
    char path[512];
    snprintf(path, sizeof path, "%s%s", PT_DIR, name);
    assert_int_equal(kw_file_map_open(path, &map), 0);
    unsigned char *copy = malloc(map.size);
    assert_non_null(copy);
    for (size_t cut = 0; cut < map.size; ++cut) {
        memcpy(copy, map.data, cut);
        kw_torchzip *tz = NULL;
        assert_true(kw_torchzip_open_buffer(copy, cut, 0, &tz) < 0);
        assert_null(tz);
    }
    size_t accepted_flips = 0;
    for (size_t i = 0; i < map.size; ++i) {
        for (unsigned flags = 0; flags <= KW_TORCHZIP_NO_CRC; flags += KW_TORCHZIP_NO_CRC) {
            memcpy(copy, map.data, map.size);
            copy[i] ^= 0xff;
            kw_torchzip *tz = NULL;
            const int rc = kw_torchzip_open_buffer(copy, map.size, flags, &tz);
            assert_true(rc <= 0);
            if (rc == 0) {
                accepted_flips += flags == 0;
                /* Reading every tensor must stay inside memory the reader vouches for (ASan checks this). */
                for (size_t t = 0; t < kw_torchzip_count(tz); ++t) {
                    const kw_torchzip_tensor *x = kw_torchzip_at(tz, t);
                    (void)kw_torchzip_crc32(0, x->data, x->nbytes);
                }
                kw_torchzip_close(tz);
            }
        }
    }
    /* With CRCs on, only bytes no reader looks at may flip unnoticed: local extra fields (torch's 64-byte alignment
     * padding), data descriptors, version, time and attribute fields. In f32.pt these are 814 of 2229 bytes. */
    fprintf(stderr, "%s: %zu of %zu single-byte flips accepted with CRC checks\n", name, accepted_flips, map.size);
    assert_true(accepted_flips < map.size / 2);
    free(copy);
    kw_file_unmap(&map);
}

static void test_damage_sweep(void **state) {
    (void)state;
    sweep("f32.pt");
    sweep("module.pt");
    sweep("rezipped.pt");
    sweep("zip64.pt");
}

static void test_write_roundtrip(void **state) {
    (void)state;
    uint16_t bf[6] = {0x3f80, 0xbf80, 0x0000, 0x8000, 0x7f80, 0x4049};
    float f32[3] = {1.5f, -2.25f, 3e-39f};
    uint16_t h[2] = {0x3c00, 0xc000};
    kw_torchzip_write_tensor in[] = {
        {.name = "key_gate_logit", .dtype = KW_DTYPE_BF16, .ndim = 0, .data = bf},
        {.name = "w", .dtype = KW_DTYPE_BF16, .ndim = 2, .shape = {2, 3}, .data = bf},
        {.name = "f", .dtype = KW_DTYPE_F32, .ndim = 1, .shape = {3}, .data = f32},
        {.name = "half", .dtype = KW_DTYPE_F16, .ndim = 3, .shape = {1, 2, 1}, .data = h},
        {.name = "empty", .dtype = KW_DTYPE_BF16, .ndim = 2, .shape = {0, 70000}, .data = NULL},
        {.name = "huge_empty", .dtype = KW_DTYPE_F32, .ndim = 2, .shape = {3000000000LL, 0}, .data = NULL},
    };
    const size_t n = sizeof in / sizeof in[0];
    unsigned char *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    assert_int_equal(kw_torchzip_write_buffer("projector_0", in, n, &a, &na), 0);
    assert_int_equal(kw_torchzip_write_buffer("projector_0", in, n, &b, &nb), 0);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, na); /* deterministic */
    kw_torchzip *tz = NULL;
    assert_int_equal(kw_torchzip_open_buffer(a, na, 0, &tz), 0);
    assert_int_equal(kw_torchzip_count(tz), n);
    for (size_t i = 0; i < n; ++i) {
        const kw_torchzip_tensor *t = kw_torchzip_at(tz, i);
        assert_string_equal(t->name, in[i].name);
        assert_int_equal(t->dtype, in[i].dtype);
        assert_int_equal(t->ndim, in[i].ndim);
        for (int32_t d = 0; d < t->ndim; ++d)
            assert_true(t->shape[d] == in[i].shape[d]);
        if (t->nbytes) assert_memory_equal(t->data, in[i].data, t->nbytes);
        if (t->nbytes) assert_int_equal(((const unsigned char *)t->data - a) % 64, 0); /* aligned like torch */
    }
    kw_torchzip_close(tz);
    free(a);
    free(b);

    /* Bad arguments. */
    unsigned char *out = NULL;
    size_t size = 0;
    kw_torchzip_write_tensor dup[2] = {in[1], in[1]};
    assert_int_equal(kw_torchzip_write_buffer("p", dup, 2, &out, &size), KW_E_INVALID_ARG);
    assert_int_equal(kw_torchzip_write_buffer("a/b", in, 1, &out, &size), KW_E_INVALID_ARG);
    assert_int_equal(kw_torchzip_write_buffer("", in, 1, &out, &size), KW_E_INVALID_ARG);
    kw_torchzip_write_tensor bad = in[1];
    bad.dtype = KW_DTYPE_I32;
    assert_int_equal(kw_torchzip_write_buffer("p", &bad, 1, &out, &size), KW_E_INVALID_ARG);
    bad = in[1];
    bad.shape[0] = -1;
    assert_int_equal(kw_torchzip_write_buffer("p", &bad, 1, &out, &size), KW_E_INVALID_ARG);
    assert_null(out);
}

static void test_crc32(void **state) {
    (void)state;
    assert_int_equal(kw_torchzip_crc32(0, "123456789", 9), 0xcbf43926u);
    assert_int_equal(kw_torchzip_crc32(0, "", 0), 0);
    const uint32_t part = kw_torchzip_crc32(0, "12345", 5);
    assert_int_equal(kw_torchzip_crc32(part, "6789", 4), 0xcbf43926u);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32),           cmocka_unit_test(test_accept),       cmocka_unit_test(test_reject),
        cmocka_unit_test(test_write_roundtrip), cmocka_unit_test(test_damage_sweep),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
