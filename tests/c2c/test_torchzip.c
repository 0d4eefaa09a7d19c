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

// ---------------------------------------------------------------------------------------------------------------
// Hand-built archives around crafted pickles (limits and pickle semantics the fixtures do not reach)

typedef struct buf {
    unsigned char *p;
    size_t n, cap;
} buf;

static void put(buf *b, const void *data, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    memcpy(b->p + b->n, data, n);
    b->n += n;
}

static void put16(buf *b, uint16_t v) {
    put(b, (unsigned char[2]){(unsigned char)v, (unsigned char)(v >> 8)}, 2);
}

static void put32(buf *b, uint32_t v) {
    put16(b, (uint16_t)v);
    put16(b, (uint16_t)(v >> 16));
}

/* A stored zip of "a/data.pkl" = pickle and "a/data/0" = 8 bytes of f32 storage (two elements). */
static buf archive(const buf *pickle) {
    static const float storage[2] = {1.0f, 2.0f};
    const char *names[2] = {"a/data.pkl", "a/data/0"};
    const void *datas[2] = {pickle->p, storage};
    const size_t sizes[2] = {pickle->n, sizeof storage};
    uint32_t offs[2];
    buf z = {0};
    for (int i = 0; i < 2; ++i) {
        offs[i] = (uint32_t)z.n;
        put32(&z, 0x04034b50u);
        put16(&z, 20), put16(&z, 0), put16(&z, 0), put32(&z, 0);
        put32(&z, kw_torchzip_crc32(0, datas[i], sizes[i]));
        put32(&z, (uint32_t)sizes[i]), put32(&z, (uint32_t)sizes[i]);
        put16(&z, (uint16_t)strlen(names[i])), put16(&z, 0);
        put(&z, names[i], strlen(names[i]));
        put(&z, datas[i], sizes[i]);
    }
    const uint32_t cd = (uint32_t)z.n;
    for (int i = 0; i < 2; ++i) {
        put32(&z, 0x02014b50u);
        put16(&z, 20), put16(&z, 20), put16(&z, 0), put16(&z, 0), put32(&z, 0);
        put32(&z, kw_torchzip_crc32(0, datas[i], sizes[i]));
        put32(&z, (uint32_t)sizes[i]), put32(&z, (uint32_t)sizes[i]);
        put16(&z, (uint16_t)strlen(names[i])), put16(&z, 0), put16(&z, 0), put16(&z, 0), put16(&z, 0);
        put32(&z, 0), put32(&z, offs[i]);
        put(&z, names[i], strlen(names[i]));
    }
    const uint32_t cd_size = (uint32_t)z.n - cd;
    put32(&z, 0x06054b50u);
    put32(&z, 0), put16(&z, 2), put16(&z, 2), put32(&z, cd_size), put32(&z, cd), put16(&z, 0);
    return z;
}

static int open_pickle(const buf *pickle, kw_torchzip **tz) {
    buf z = archive(pickle);
    const int rc = kw_torchzip_open_buffer(z.p, z.n, 0, tz);
    if (rc == 0) {
        /* keep z alive as long as tz: the test closes tz right away */
        kw_torchzip_close(*tz);
        *tz = NULL;
    }
    free(z.p);
    return rc;
}

#define PK(b, lit) put((b), (lit), sizeof(lit) - 1)
#define PL(lit)    (lit), sizeof(lit) - 1

/* The tensor "t" = _rebuild_tensor_v2(storage 0 of `numel` floats, offset, (size,), (1,), False, OrderedDict()). */
static void pk_tensor(buf *b, const char *name, uint8_t numel, uint8_t offset, uint8_t size) {
    PK(b, "X");
    put32(b, (uint32_t)strlen(name));
    put(b, name, strlen(name));
    PK(b, "ctorch._utils\n_rebuild_tensor_v2\n((");
    PK(b, "X\x07\x00\x00\x00"
          "storage");
    PK(b, "ctorch\nFloatStorage\n");
    PK(b, "X\x01\x00\x00\x00"
          "0");
    PK(b, "X\x03\x00\x00\x00"
          "cpu");
    PK(b, "K");
    put(b, &numel, 1);
    PK(b, "tQK");
    put(b, &offset, 1);
    PK(b, "K");
    put(b, &size, 1);
    PK(b, "\x85K\x01\x85\x89");
    PK(b, "ccollections\nOrderedDict\n)RtR");
}

static void test_crafted_pickles(void **state) {
    (void)state;
    kw_torchzip *tz = NULL;
    /* A plain dict, one tensor, a view with offset 1; then the same key again (Python keeps the first position
     * and the last value). */
    buf p = {0};
    PK(&p, "\x80\x02}(");
    pk_tensor(&p, "t", 2, 0, 2);
    pk_tensor(&p, "u", 2, 1, 1);
    pk_tensor(&p, "t", 2, 1, 1);
    PK(&p, "u.");
    buf z = archive(&p);
    assert_int_equal(kw_torchzip_open_buffer(z.p, z.n, 0, &tz), 0);
    assert_int_equal(kw_torchzip_count(tz), 2);
    assert_string_equal(kw_torchzip_at(tz, 0)->name, "t");
    assert_true(kw_torchzip_at(tz, 0)->shape[0] == 1 && element(kw_torchzip_at(tz, 0), 0) == 2.0f);
    assert_string_equal(kw_torchzip_at(tz, 1)->name, "u");
    kw_torchzip_close(tz);
    free(z.p);
    free(p.p);

    /* Offset + size beyond the storage; numel disagreeing with the record; a second storage class for one key. */
    p = (buf){0};
    PK(&p, "\x80\x02}(");
    pk_tensor(&p, "t", 2, 1, 2);
    PK(&p, "u.");
    assert_int_equal(open_pickle(&p, &tz), KW_E_PT_FORMAT);
    free(p.p);
    p = (buf){0};
    PK(&p, "\x80\x02}(");
    pk_tensor(&p, "t", 3, 0, 2);
    PK(&p, "u.");
    assert_int_equal(open_pickle(&p, &tz), KW_E_PT_FORMAT);
    free(p.p);

    /* Structural errors. */
    static const struct {
        const char *pickle;
        size_t len;
        int rc;
    } bad[] = {
        {PL("\x80\x02}."), 0},                     /* an empty dict is a valid (empty) state dict */
        {PL("\x80\x02N."), KW_E_PT_PICKLE},        /* not a dict */
        {PL("\x80\x02}K\x01s."), KW_E_PT_PICKLE},  /* stack underflow under SETITEM */
        {PL("\x80\x02}(K\x01u."), KW_E_PT_PICKLE}, /* odd SETITEMS */
        {PL("\x80\x02}(."), KW_E_PT_PICKLE},       /* STOP with an open MARK */
        {PL("\x80\x02}}."), KW_E_PT_PICKLE},       /* two values at STOP */
        {PL("\x80\x02h\x05."), KW_E_PT_PICKLE},    /* GET of an unset memo slot */
        {PL("\x80\x02}X\x01\x00\x00\x00"
            "a\x8a\x09"
            "123456789s."),
         KW_E_PT_PICKLE},                           /* LONG1 of 9 bytes */
        {PL("\x80\x02}t."), KW_E_PT_PICKLE},        /* TUPLE without MARK */
        {PL("\x80\x02\x80\x02}."), KW_E_PT_PICKLE}, /* PROTO twice */
        {PL("\x80\x09}."), KW_E_PT_PICKLE},         /* protocol 9 */
        {PL("\x80\x02"
            "ccollections\nOrderedDict\nK\x01\x85R."),
         KW_E_PT_PICKLE}, /* OrderedDict(1) */
        {PL("\x80\x02"
            "ctorch\nFloatStorage\n)R."),
         KW_E_PT_PICKLE}, /* calling a storage class */
        {PL("\x80\x02}X\x02\x00\x00\x00"
            "a"
            "\x00K\x01s."),
         KW_E_PT_PICKLE},                      /* NUL in a string */
        {PL("\x80\x02}N]b."), KW_E_PT_PICKLE}, /* BUILD on a list */
        {PL("\x80\x02}}b."), 0},               /* BUILD of an OrderedDict's __dict__ */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; ++i) {
        p = (buf){0};
        put(&p, bad[i].pickle, bad[i].len);
        const int rc = open_pickle(&p, &tz);
        if (rc != bad[i].rc) fprintf(stderr, "case %zu: %s (%s)\n", i, kw_status_name(rc), kw_error_detail());
        assert_int_equal(rc, bad[i].rc);
        free(p.p);
    }

    /* Limits: a dict past KW_TORCHZIP_MAX_ITEMS entries, a pickle creating too many values, a too deep stack. */
    p = (buf){0};
    PK(&p, "\x80\x02}(");
    for (uint32_t i = 0; i <= KW_TORCHZIP_MAX_ITEMS; ++i) {
        PK(&p, "M");
        put16(&p, (uint16_t)i);
        PK(&p, "N");
    }
    PK(&p, "u.");
    assert_int_equal(open_pickle(&p, &tz), KW_E_PT_PICKLE);
    assert_non_null(strstr(kw_error_detail(), "more than"));
    free(p.p);
    p = (buf){0};
    PK(&p, "\x80\x02}");
    for (uint32_t i = 0; i <= KW_TORCHZIP_MAX_VALUES / 2; ++i)
        PK(&p, "K\x01K\x01s");
    PK(&p, ".");
    assert_int_equal(open_pickle(&p, &tz), KW_E_LIMIT);
    free(p.p);
    p = (buf){0};
    PK(&p, "\x80\x02");
    for (uint32_t i = 0; i <= (1u << 20); ++i)
        PK(&p, "N");
    PK(&p, ".");
    assert_int_equal(open_pickle(&p, &tz), KW_E_LIMIT);
    free(p.p);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32),        cmocka_unit_test(test_accept),
        cmocka_unit_test(test_reject),       cmocka_unit_test(test_write_roundtrip),
        cmocka_unit_test(test_damage_sweep), cmocka_unit_test(test_crafted_pickles),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
