/* test_safetensors.c: the safetensors reader refuses every malformed header field with the expected status (never a
 * crash), reads files written by Python (safetensors save_file, transformers save_pretrained sharding), and the writer
 * round-trips and is byte-identical to the Python writer. Ends with a byte-flipping loop over valid files (run it
 * under ASan). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/kw_file.h"
#include "common/kw_half.h"
#include "common/kw_status.h"
#include "model/kw_safetensors.h"
#include "tests/kw_test_util.h"

#define FIXTURES KW_TEST_DATA_DIR "/model/safetensors"

static char g_dir[256]; /* per-run temporary folder */

static char *tmp_path(const char *name) {
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", g_dir, name);
    return buf[k];
}

static int setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/kw_test_st_XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    kw_test_remove_tree(g_dir);
    return 0;
}

static void write_bytes(const char *path, const void *data, size_t n) {
    unlink(path); /* a fresh inode: truncating a just-written file makes ext4 wait for its writeback */
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (n) assert_int_equal(fwrite(data, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

/* A file made of an explicit header length, header text and data_size bytes of data (value i & 0xff). */
static void write_st_raw(const char *path, uint64_t hlen, const char *header, size_t data_size) {
    const size_t n = strlen(header);
    unsigned char *buf = malloc(8 + n + data_size + 1);
    assert_non_null(buf);
    for (int i = 0; i < 8; ++i)
        buf[i] = (unsigned char)(hlen >> (8 * i));
    memcpy(buf + 8, header, n);
    for (size_t i = 0; i < data_size; ++i)
        buf[8 + n + i] = (unsigned char)i;
    write_bytes(path, buf, 8 + n + data_size);
    free(buf);
}

/* The header padded with spaces to a multiple of 8, as the HF writer pads it (so tensor data is aligned). */
static void write_st(const char *path, const char *header, size_t data_size) {
    char padded[4096];
    const size_t n = strlen(header);
    assert_true(n + 8 < sizeof padded);
    memcpy(padded, header, n);
    size_t m = n;
    while (m % 8)
        padded[m++] = ' ';
    padded[m] = '\0';
    write_st_raw(path, m, padded, data_size);
}

/* Opens a one-off file (header padded unless exact); returns the status and closes on success. */
static int open_status_ex(const char *header, size_t data_size, int exact) {
    const char *p = tmp_path("case.safetensors");
    if (exact)
        write_st_raw(p, strlen(header), header, data_size);
    else
        write_st(p, header, data_size);
    kw_safetensors *st = NULL;
    const int rc = kw_safetensors_open(p, &st);
    if (rc == 0)
        assert_non_null(st);
    else
        assert_null(st);
    kw_safetensors_close(st);
    return rc;
}

static int open_status(const char *header, size_t data_size) {
    return open_status_ex(header, data_size, 0);
}

#define EXPECT(code, header, data_size, detail_part) EXPECT_EX(code, header, data_size, detail_part, 0)
#define EXPECT_EX(code, header, data_size, detail_part, exact)                                                         \
    do {                                                                                                               \
        const int rc_ = open_status_ex((header), (data_size), (exact));                                                \
        if (rc_ != (code) || strstr(kw_error_detail(), (detail_part)) == NULL)                                         \
            fail_msg("header %s: got %s \"%s\", want %s containing \"%s\"", (header), kw_status_name(rc_),             \
                     kw_error_detail(), kw_status_name(code), (detail_part));                                          \
    } while (0)

/* ------------------------------------------------------------------------------------------------------------ */

static void test_valid_minimal(void **state) {
    (void)state;
    const char *p = tmp_path("ok.safetensors");
    /* 54-byte header: data starts at 62, so pad the header to keep F32 data 4-byte aligned (as HF does). */
    const char *h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"s\":{\"dtype\":\"BF16\","
                    "\"shape\":[],\"data_offsets\":[8,10]},\"z\":{\"dtype\":\"F16\",\"shape\":[3,0],"
                    "\"data_offsets\":[10,10]},\"__metadata__\":{\"k\":\"v\"}}";
    write_st(p, h, 10);
    kw_safetensors *st = NULL;
    assert_int_equal(kw_safetensors_open(p, &st), 0);
    assert_int_equal(kw_safetensors_count(st), 3);
    const kw_st_tensor *a = kw_safetensors_find(st, "a");
    assert_non_null(a);
    assert_int_equal(a->dtype, KW_DTYPE_F32);
    assert_int_equal(a->ndim, 1);
    assert_int_equal(a->shape[0], 2);
    assert_int_equal(a->nbytes, 8);
    assert_int_equal(((const unsigned char *)a->data)[0], 0);
    assert_int_equal(((const unsigned char *)a->data)[7], 7);
    const kw_st_tensor *s = kw_safetensors_find(st, "s");
    assert_non_null(s);
    assert_int_equal(s->ndim, 0);
    assert_int_equal(s->nbytes, 2);
    assert_int_equal(((const unsigned char *)s->data)[0], 8);
    const kw_st_tensor *z = kw_safetensors_find(st, "z");
    assert_non_null(z);
    assert_int_equal(z->nbytes, 0);
    assert_int_equal(z->ndim, 2);
    assert_null(kw_safetensors_find(st, "missing"));
    assert_null(kw_safetensors_find(st, "__metadata__"));
    /* file order is data order */
    assert_string_equal(kw_safetensors_at(st, 0)->name, "a");
    assert_string_equal(kw_safetensors_at(st, 1)->name, "s");
    assert_null(kw_safetensors_at(st, 3));
    kw_safetensors_close(st);
    kw_safetensors_close(NULL);

    assert_int_equal(open_status("{}      ", 0), 0);
    assert_int_equal(open_status("{\"__metadata__\":null}   ", 0), 0);
}

static void test_framing(void **state) {
    (void)state;
    kw_safetensors *st = NULL;
    const char *p = tmp_path("frame.safetensors");
    for (size_t n = 0; n < 8; ++n) {
        write_bytes(p, "\x02\0\0\0\0\0\0\0", n);
        assert_int_equal(kw_safetensors_open(p, &st), KW_E_MODEL_FORMAT);
    }
    write_st_raw(p, 1000, "{}", 0); /* header length past EOF */
    assert_int_equal(kw_safetensors_open(p, &st), KW_E_MODEL_FORMAT);
    assert_non_null(strstr(kw_error_detail(), "past the end"));
    write_st_raw(p, UINT64_MAX, "{}", 0);
    assert_int_equal(kw_safetensors_open(p, &st), KW_E_LIMIT);
    write_st_raw(p, (uint64_t)100 << 20 | 1, "{}", 0);
    assert_int_equal(kw_safetensors_open(p, &st), KW_E_LIMIT);
    write_st_raw(p, 0, "", 0);
    assert_int_equal(kw_safetensors_open(p, &st), KW_E_MODEL_FORMAT);
    assert_int_equal(kw_safetensors_open(tmp_path("does-not-exist"), &st), KW_E_NOT_FOUND);
    assert_int_equal(kw_safetensors_open(g_dir, &st), KW_E_NOT_FOUND); /* a folder without model files */
    assert_null(st);
}

static void test_header_text(void **state) {
    (void)state;
    EXPECT(KW_E_MODEL_FORMAT, "{not json}", 0, "not JSON");
    EXPECT(KW_E_MODEL_FORMAT, "[1,2]", 0, "start with '{'");
    EXPECT(KW_E_MODEL_FORMAT, "  {}", 0, "start with '{'");
    EXPECT(KW_E_MODEL_FORMAT, "{\"a\":1", 0, "not JSON");
    EXPECT(KW_E_MODEL_FORMAT, "{} x", 0, "not JSON");
    EXPECT(KW_E_MODEL_FORMAT, "{\"\xff\":1}", 0, "UTF-8");
    EXPECT(KW_E_MODEL_FORMAT, "{\"\xc0\xaf\":1}", 0, "UTF-8");     /* overlong '/' */
    EXPECT(KW_E_MODEL_FORMAT, "{\"\xed\xa0\x80\":1}", 0, "UTF-8"); /* surrogate */
    EXPECT(KW_E_MODEL_FORMAT, "{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}", 0, "\\u0000");
    /* a raw NUL inside the header */
    const char *p = tmp_path("nul.safetensors");
    write_bytes(p, "\x04\0\0\0\0\0\0\0{\0}\0", 12);
    kw_safetensors *st = NULL;
    assert_int_equal(kw_safetensors_open(p, &st), KW_E_MODEL_FORMAT);
    /* "\\u0000" is an escaped backslash followed by text: allowed */
    EXPECT(0, "{\"a\\\\u0000\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}", 0, "");
}

static void test_entries(void **state) {
    (void)state;
    /* duplicates */
    EXPECT(KW_E_MODEL_FORMAT,
           "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
           "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
           8, "duplicate key \"a\"");
    EXPECT(KW_E_MODEL_FORMAT, "{\"__metadata__\":{},\"__metadata__\":{}}", 0, "duplicate");
    EXPECT(KW_E_MODEL_FORMAT, "{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
           "repeats");
    /* __metadata__ */
    EXPECT(KW_E_MODEL_FORMAT, "{\"__metadata__\":[1]}", 0, "__metadata__");
    EXPECT(KW_E_MODEL_FORMAT, "{\"__metadata__\":\"x\"}", 0, "__metadata__");
    EXPECT(KW_E_MODEL_FORMAT, "{\"__metadata__\":{\"k\":1}}", 0, "\"k\" is not a string");
    EXPECT(KW_E_MODEL_FORMAT, "{\"__metadata__\":{\"k\":{\"x\":\"y\"}}}", 0, "not a string");
    /* entry structure */
    EXPECT(KW_E_MODEL_FORMAT, "{\"a\":[1]}", 0, "not a JSON object");
    EXPECT(KW_E_MODEL_FORMAT, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 0, "lacks \"data_offsets\"");
    EXPECT(KW_E_MODEL_FORMAT, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", 4,
           "unknown field \"x\"");
    EXPECT(KW_E_MODEL_FORMAT, "{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "empty name");
    /* dtype */
    const char *refused[] = {"F64",  "I64",     "I32",     "I16", "U16", "U32", "U64",
                             "BOOL", "F8_E4M3", "F8_E5M2", "C64", "f32", "Q4_0"};
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; ++i) {
        char h[256];
        snprintf(h, sizeof h, "{\"my.weight\":{\"dtype\":\"%s\",\"shape\":[1],\"data_offsets\":[0,8]}}", refused[i]);
        EXPECT(KW_E_MODEL_DTYPE, h, 8, "my.weight");
    }
    EXPECT(KW_E_MODEL_FORMAT, "{\"a\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "dtype is not a string");
    /* shape */
    EXPECT(KW_E_MODEL_FORMAT, "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, "shape[0]");
    EXPECT(KW_E_MODEL_FORMAT, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4, "shape[0]");
    EXPECT(KW_E_MODEL_FORMAT, "{\"a\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}", 4, "shape[0]");
    EXPECT(KW_E_MODEL_FORMAT, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1e300],\"data_offsets\":[0,4]}}", 4, "shape[1]");
    EXPECT(KW_E_MODEL_FORMAT, "{\"a\":{\"dtype\":\"F32\",\"shape\":5,\"data_offsets\":[0,4]}}", 4, "not an array");
    EXPECT(KW_E_MODEL_FORMAT, "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,4]}}",
           4, "overflows");
    EXPECT(KW_E_MODEL_FORMAT,
           "{\"a\":{\"dtype\":\"F32\",\"shape\":[4503599627370496,4503599627370496],\"data_offsets\":[0,4]}}", 4,
           "overflows");
    EXPECT(KW_E_LIMIT, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
           "dimensions");
    /* offsets */
    EXPECT(KW_E_MODEL_FORMAT, "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "needs 12");
    EXPECT(KW_E_MODEL_FORMAT, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8, "end 4 < start 8");
    EXPECT(KW_E_MODEL_FORMAT, "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8, "past the data");
    EXPECT(KW_E_MODEL_FORMAT, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 8, "integers");
    EXPECT(KW_E_MODEL_FORMAT, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8, "two integers");
    EXPECT(KW_E_MODEL_FORMAT, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 8, "two integers");
    EXPECT(KW_E_MODEL_FORMAT, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":{\"0\":4}}}", 8,
           "two integers");
    /* coverage */
    EXPECT(KW_E_MODEL_FORMAT,
           "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
           "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}   ",
           12, "overlap");
    EXPECT(KW_E_MODEL_FORMAT,
           "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
           "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}    ",
           8, "overlap");
    EXPECT(KW_E_MODEL_FORMAT,
           "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
           "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}    ",
           12, "unused bytes");
    EXPECT(KW_E_MODEL_FORMAT, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "unused bytes");
    EXPECT(KW_E_MODEL_FORMAT, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8,
           "after the last tensor");
    /* alignment: an unpadded 55-byte header puts the data area at 63, not a multiple of 4 */
    EXPECT_EX(KW_E_MODEL_FORMAT, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}} ", 4, "aligned", 1);
    EXPECT_EX(0, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}      ", 4, "", 1);
    EXPECT(KW_E_MODEL_FORMAT,
           "{\"a\":{\"dtype\":\"BF16\",\"shape\":[1],\"data_offsets\":[0,2]},"
           "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[2,6]}}   ",
           6, "aligned");
}

/* ------------------------------------------------------------------------------------------------------------
 * Python-written files
 */

struct mixed_spec {
    const char *name;
    enum kw_dtype dtype;
    int32_t ndim;
    int64_t shape[4];
};

/* tools/make_safetensors_fixtures.py SPECS, in the same order (k is the index). */
static const struct mixed_spec g_mixed[] = {
    {"t_f32_2d", KW_DTYPE_F32, 2, {3, 5}},      {"t_bf16_1d", KW_DTYPE_BF16, 1, {7}},
    {"t_f16_3d", KW_DTYPE_F16, 3, {2, 3, 4}},   {"t_f32_scalar", KW_DTYPE_F32, 0, {0}},
    {"t_bf16_empty", KW_DTYPE_BF16, 2, {4, 0}}, {"t_f16_4d", KW_DTYPE_F16, 4, {1, 2, 1, 3}},
    {"t_f32_1d", KW_DTYPE_F32, 1, {9}},
};
#define N_MIXED (sizeof g_mixed / sizeof g_mixed[0])

static size_t mixed_count(const struct mixed_spec *s) {
    size_t n = 1;
    for (int32_t i = 0; i < s->ndim; ++i)
        n *= (size_t)s->shape[i];
    return n;
}

static float mixed_value(size_t k, size_t i) {
    return (float)((double)((int)(i % 13) - 6) * 0.25 + (double)k);
}

static float elem_f32(const kw_st_tensor *t, size_t i) {
    const unsigned char *p = (const unsigned char *)t->data;
    if (t->dtype == KW_DTYPE_F32)
        return kw_f32_from_bits((uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 | (uint32_t)p[4 * i + 2] << 16 |
                                (uint32_t)p[4 * i + 3] << 24);
    const uint16_t h = (uint16_t)(p[2 * i] | p[2 * i + 1] << 8);
    return t->dtype == KW_DTYPE_BF16 ? kw_bf16_to_f32(h) : kw_f16_to_f32(h);
}

static void test_python_mixed(void **state) {
    (void)state;
    kw_safetensors *st = NULL;
    assert_int_equal(kw_safetensors_open(FIXTURES "/mixed.safetensors", &st), 0);
    assert_int_equal(kw_safetensors_count(st), N_MIXED);
    for (size_t k = 0; k < N_MIXED; ++k) {
        const kw_st_tensor *t = kw_safetensors_find(st, g_mixed[k].name);
        assert_non_null(t);
        assert_int_equal(t->dtype, g_mixed[k].dtype);
        assert_int_equal(t->ndim, g_mixed[k].ndim);
        for (int32_t d = 0; d < t->ndim; ++d)
            assert_int_equal(t->shape[d], g_mixed[k].shape[d]);
        const size_t n = mixed_count(&g_mixed[k]);
        assert_int_equal(t->nbytes, n * (t->dtype == KW_DTYPE_F32 ? 4 : 2));
        for (size_t i = 0; i < n; ++i)
            assert_true(elem_f32(t, i) == mixed_value(k, i));
    }
    /* HF order: F32 tensors first, then BF16, then F16, each by name */
    const char *order[] = {"t_f32_1d", "t_f32_2d", "t_f32_scalar", "t_bf16_1d", "t_bf16_empty", "t_f16_3d", "t_f16_4d"};
    for (size_t i = 0; i < N_MIXED; ++i)
        assert_string_equal(kw_safetensors_at(st, i)->name, order[i]);
    kw_safetensors_close(st);
}

/* Our writer, given the same tensors and metadata, produces the Python writer's bytes exactly. */
static void test_writer_matches_python(void **state) {
    (void)state;
    kw_st_write_tensor w[N_MIXED];
    void *bufs[N_MIXED];
    for (size_t k = 0; k < N_MIXED; ++k) {
        const size_t n = mixed_count(&g_mixed[k]);
        unsigned char *b = malloc(n * 4 + 1);
        assert_non_null(b);
        for (size_t i = 0; i < n; ++i) {
            const float v = mixed_value(k, i);
            if (g_mixed[k].dtype == KW_DTYPE_F32) {
                const uint32_t u = kw_f32_bits(v);
                for (int j = 0; j < 4; ++j)
                    b[4 * i + (size_t)j] = (unsigned char)(u >> (8 * j));
            } else {
                const uint16_t u = g_mixed[k].dtype == KW_DTYPE_BF16 ? kw_f32_to_bf16(v) : kw_f32_to_f16(v);
                b[2 * i] = (unsigned char)u;
                b[2 * i + 1] = (unsigned char)(u >> 8);
            }
        }
        bufs[k] = b;
        memset(&w[k], 0, sizeof w[k]);
        w[k].name = g_mixed[k].name;
        w[k].dtype = g_mixed[k].dtype;
        w[k].ndim = g_mixed[k].ndim;
        for (int32_t d = 0; d < w[k].ndim; ++d)
            w[k].shape[d] = g_mixed[k].shape[d];
        w[k].data = b;
    }
    const char *out = tmp_path("ours.safetensors");
    assert_int_equal(kw_safetensors_write(out, w, N_MIXED, "{\"writer\": \"python\", \"format\": \"pt\"}"), 0);
    char *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    assert_int_equal(kw_file_read_all(out, 1 << 20, &a, &na), 0);
    assert_int_equal(kw_file_read_all(FIXTURES "/mixed.safetensors", 1 << 20, &b, &nb), 0);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, na);
    free(a);
    free(b);
    for (size_t k = 0; k < N_MIXED; ++k)
        free(bufs[k]);
}

static void test_python_sharded(void **state) {
    (void)state;
    kw_safetensors *sh = NULL, *one = NULL;
    assert_int_equal(kw_safetensors_open(FIXTURES "/sharded", &sh), 0);
    assert_int_equal(kw_safetensors_open(FIXTURES "/sharded_single.safetensors", &one), 0);
    assert_int_equal(kw_safetensors_count(sh), kw_safetensors_count(one));
    assert_true(kw_safetensors_count(sh) > 10);
    for (size_t i = 0; i < kw_safetensors_count(one); ++i) {
        const kw_st_tensor *a = kw_safetensors_at(one, i);
        const kw_st_tensor *b = kw_safetensors_find(sh, a->name);
        assert_non_null(b);
        assert_int_equal(a->dtype, b->dtype);
        assert_int_equal(a->ndim, b->ndim);
        assert_memory_equal(a->shape, b->shape, sizeof a->shape);
        assert_int_equal(a->nbytes, b->nbytes);
        assert_memory_equal(a->data, b->data, a->nbytes);
    }
    assert_non_null(kw_safetensors_find(sh, "model.layers.1.self_attn.k_norm.weight"));
    assert_non_null(kw_safetensors_find(sh, "lm_head.weight"));
    kw_safetensors_close(sh);
    /* the index file named directly */
    assert_int_equal(kw_safetensors_open(FIXTURES "/sharded/model.safetensors.index.json", &sh), 0);
    assert_int_equal(kw_safetensors_count(sh), kw_safetensors_count(one));
    kw_safetensors_close(sh);
    kw_safetensors_close(one);
}

/* ------------------------------------------------------------------------------------------------------------
 * Sharded checkpoints built here
 */

static const char *g_shard1 = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                              "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}  ";
static const char *g_shard2 = "{\"c\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}  ";

static int sharded_status(const char *index_text, int write_second) {
    char dir[512];
    static int n;
    snprintf(dir, sizeof dir, "%s/sharded%d", g_dir, n++);
    assert_int_equal(kw_path_mkdir(dir), 0);
    char p[600];
    snprintf(p, sizeof p, "%s/s1.safetensors", dir);
    write_st(p, g_shard1, 8);
    if (write_second) {
        snprintf(p, sizeof p, "%s/s2.safetensors", dir);
        write_st(p, g_shard2, 8);
    }
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    write_bytes(p, index_text, strlen(index_text));
    kw_safetensors *st = NULL;
    const int rc = kw_safetensors_open(dir, &st);
    if (rc == 0) {
        assert_int_equal(kw_safetensors_count(st), 3);
        assert_string_equal(kw_safetensors_at(st, 0)->name, "a");
        assert_string_equal(kw_safetensors_at(st, 2)->name, "c");
        assert_int_equal(kw_safetensors_find(st, "c")->nbytes, 8);
    }
    kw_safetensors_close(st);
    return rc;
}

#define EXPECT_SHARDED(code, index, second, detail_part)                                                               \
    do {                                                                                                               \
        const int rc_ = sharded_status((index), (second));                                                             \
        if (rc_ != (code) || strstr(kw_error_detail(), (detail_part)) == NULL)                                         \
            fail_msg("index %s: got %s \"%s\", want %s containing \"%s\"", (index), kw_status_name(rc_),               \
                     kw_error_detail(), kw_status_name(code), (detail_part));                                          \
    } while (0)

static void test_sharded(void **state) {
    (void)state;
    const char *ok = "{\"metadata\":{\"total_size\":16},\"weight_map\":{\"a\":\"s1.safetensors\","
                     "\"b\":\"s1.safetensors\",\"c\":\"s2.safetensors\"}}";
    EXPECT_SHARDED(0, ok, 1, "");
    EXPECT_SHARDED(KW_E_NOT_FOUND, ok, 0, "s2.safetensors");
    EXPECT_SHARDED(KW_E_MODEL_FORMAT,
                   "{\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s1.safetensors\",\"c\":\"s2.safetensors\","
                   "\"d\":\"s2.safetensors\"}}",
                   1, "\"d\"");
    EXPECT_SHARDED(KW_E_MODEL_FORMAT,
                   "{\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s2.safetensors\",\"c\":\"s2.safetensors\"}}", 1,
                   "but it is in s1.safetensors");
    EXPECT_SHARDED(KW_E_MODEL_FORMAT, "{\"weight_map\":{\"a\":\"s1.safetensors\",\"c\":\"s2.safetensors\"}}", 1,
                   "does not list");
    EXPECT_SHARDED(KW_E_MODEL_FORMAT,
                   "{\"weight_map\":{\"a\":\"s1.safetensors\",\"a\":\"s1.safetensors\",\"b\":\"s1.safetensors\","
                   "\"c\":\"s2.safetensors\"}}",
                   1, "duplicate key \"a\"");
    EXPECT_SHARDED(KW_E_MODEL_FORMAT,
                   "{\"weight_map\":{\"a\":\"../s1.safetensors\",\"b\":\"s1.safetensors\",\"c\":\"s2.safetensors\"}}",
                   1, "not a file name");
    EXPECT_SHARDED(KW_E_MODEL_FORMAT, "{\"weight_map\":{\"a\":1}}", 1, "not a string");
    EXPECT_SHARDED(KW_E_MODEL_FORMAT, "{\"weight_map\":{}}", 1, "empty");
    EXPECT_SHARDED(KW_E_MODEL_FORMAT, "{\"weights\":{}}", 1, "weight_map");
    EXPECT_SHARDED(KW_E_MODEL_FORMAT, "{\"weight_map\":", 1, "model.safetensors.index.json");
    EXPECT_SHARDED(KW_E_MODEL_FORMAT, "{\"metadata\":{\"total_size\":-1},\"weight_map\":{\"a\":\"s1.safetensors\"}}", 1,
                   "total_size");

    /* the same tensor in two shards */
    char dir[512];
    snprintf(dir, sizeof dir, "%s/twice", g_dir);
    assert_int_equal(kw_path_mkdir(dir), 0);
    char p[600];
    snprintf(p, sizeof p, "%s/s1.safetensors", dir);
    write_st(p, g_shard1, 8);
    snprintf(p, sizeof p, "%s/s2.safetensors", dir);
    write_st(p, g_shard1, 8);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    const char *idx = "{\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s2.safetensors\"}}";
    write_bytes(p, idx, strlen(idx));
    kw_safetensors *st = NULL;
    assert_int_equal(kw_safetensors_open(dir, &st), KW_E_MODEL_FORMAT);
    assert_non_null(strstr(kw_error_detail(), "appears twice"));
    /* a malformed shard is reported as such */
    snprintf(p, sizeof p, "%s/s2.safetensors", dir);
    write_st(p, "{\"c\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8);
    idx = "{\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s1.safetensors\",\"c\":\"s2.safetensors\"}}";
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    write_bytes(p, idx, strlen(idx));
    assert_int_equal(kw_safetensors_open(dir, &st), KW_E_MODEL_DTYPE);
}

/* ------------------------------------------------------------------------------------------------------------
 * Writer
 */

static void test_round_trip(void **state) {
    (void)state;
    float f[6] = {1.5f, -2.0f, 0.0f, 3.25f, -0.125f, 1e-3f};
    uint16_t bf[4] = {0x3f80, 0xbf80, 0x0000, 0x7f80};
    uint16_t hf[3] = {0x3c00, 0xc000, 0x0001};
    kw_st_write_tensor t[5];
    memset(t, 0, sizeof t);
    t[0] = (kw_st_write_tensor){.name = "z.f16", .dtype = KW_DTYPE_F16, .ndim = 1, .shape = {3}, .data = hf};
    t[1] = (kw_st_write_tensor){.name = "m.f32", .dtype = KW_DTYPE_F32, .ndim = 2, .shape = {2, 3}, .data = f};
    t[2] = (kw_st_write_tensor){.name = "a.bf16", .dtype = KW_DTYPE_BF16, .ndim = 3, .shape = {1, 2, 2}, .data = bf};
    t[3] = (kw_st_write_tensor){.name = "scalar", .dtype = KW_DTYPE_F32, .ndim = 0, .data = f};
    t[4] = (kw_st_write_tensor){.name = "empty", .dtype = KW_DTYPE_BF16, .ndim = 2, .shape = {0, 7}, .data = NULL};
    const char *p = tmp_path("rt.safetensors");
    assert_int_equal(kw_safetensors_write(p, t, 5, NULL), 0);
    kw_safetensors *st = NULL;
    assert_int_equal(kw_safetensors_open(p, &st), 0);
    assert_int_equal(kw_safetensors_count(st), 5);
    for (size_t i = 0; i < 5; ++i) {
        const kw_st_tensor *r = kw_safetensors_find(st, t[i].name);
        assert_non_null(r);
        assert_int_equal(r->dtype, t[i].dtype);
        assert_int_equal(r->ndim, t[i].ndim);
        for (int32_t d = 0; d < r->ndim; ++d)
            assert_int_equal(r->shape[d], t[i].shape[d]);
        if (r->nbytes) assert_memory_equal(r->data, t[i].data, r->nbytes);
    }
    const char *order[] = {"m.f32", "scalar", "a.bf16", "empty", "z.f16"};
    for (size_t i = 0; i < 5; ++i)
        assert_string_equal(kw_safetensors_at(st, i)->name, order[i]);
    kw_safetensors_close(st);

    /* the header is padded to 8 bytes with spaces */
    char *bytes = NULL;
    size_t n = 0;
    assert_int_equal(kw_file_read_all(p, 1 << 20, &bytes, &n), 0);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; --i)
        hlen = hlen << 8 | (unsigned char)bytes[i];
    assert_int_equal(hlen % 8, 0);
    assert_int_equal(bytes[8], '{');
    free(bytes);

    /* refusals */
    kw_st_write_tensor dup[2] = {t[1], t[3]};
    dup[1].name = "m.f32";
    assert_int_equal(kw_safetensors_write(tmp_path("bad.safetensors"), dup, 2, NULL), KW_E_INVALID_ARG);
    kw_st_write_tensor bad = t[1];
    bad.dtype = KW_DTYPE_I32;
    assert_int_equal(kw_safetensors_write(tmp_path("bad.safetensors"), &bad, 1, NULL), KW_E_INVALID_ARG);
    bad = t[1];
    bad.name = "__metadata__";
    assert_int_equal(kw_safetensors_write(tmp_path("bad.safetensors"), &bad, 1, NULL), KW_E_INVALID_ARG);
    bad = t[1];
    bad.shape[0] = -1;
    assert_int_equal(kw_safetensors_write(tmp_path("bad.safetensors"), &bad, 1, NULL), KW_E_INVALID_ARG);
    assert_int_equal(kw_safetensors_write(tmp_path("bad.safetensors"), t, 1, "{\"k\": 1}"), KW_E_INVALID_ARG);
    assert_int_equal(kw_safetensors_write(tmp_path("bad.safetensors"), t, 1, "[\"k\"]"), KW_E_INVALID_ARG);
    assert_int_equal(kw_safetensors_write(tmp_path("bad.safetensors"), t, 1, "{\"k\":\"a\",\"k\":\"b\"}"),
                     KW_E_INVALID_ARG);
    assert_false(kw_path_is_file(tmp_path("bad.safetensors")));
}

static void test_streaming_writer(void **state) {
    (void)state;
    kw_st_write_tensor t[2];
    memset(t, 0, sizeof t);
    t[0] = (kw_st_write_tensor){.name = "b", .dtype = KW_DTYPE_BF16, .ndim = 1, .shape = {4}};
    t[1] = (kw_st_write_tensor){.name = "a", .dtype = KW_DTYPE_F32, .ndim = 1, .shape = {2}};
    const char *p = tmp_path("stream.safetensors");
    kw_st_writer *w = NULL;
    /* unfinished: no file appears */
    assert_int_equal(kw_st_writer_open(p, t, 2, "{\"format\":\"pt\"}", &w), 0);
    assert_int_equal(kw_st_writer_order(w, 0), 1); /* F32 first */
    assert_int_equal(kw_st_writer_order(w, 1), 0);
    assert_int_equal(kw_st_writer_order(w, 2), (size_t)-1);
    const unsigned char bytes[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    assert_int_equal(kw_st_writer_write(w, bytes, 5), 0);
    assert_int_equal(kw_st_writer_finish(w), KW_E_STATE);
    kw_st_writer_close(w);
    assert_false(kw_path_is_file(p));
    /* too many bytes */
    assert_int_equal(kw_st_writer_open(p, t, 2, NULL, &w), 0);
    assert_int_equal(kw_st_writer_write(w, bytes, 16), 0);
    assert_int_equal(kw_st_writer_write(w, bytes, 1), KW_E_INVALID_ARG);
    kw_st_writer_close(w);
    assert_false(kw_path_is_file(p));
    /* chunked writes */
    assert_int_equal(kw_st_writer_open(p, t, 2, NULL, &w), 0);
    for (size_t i = 0; i < 16; i += 3)
        assert_int_equal(kw_st_writer_write(w, bytes + i, i + 3 <= 16 ? 3 : 16 - i), 0);
    assert_int_equal(kw_st_writer_finish(w), 0);
    kw_st_writer_close(w);
    kw_st_writer_close(NULL);
    kw_safetensors *st = NULL;
    assert_int_equal(kw_safetensors_open(p, &st), 0);
    assert_memory_equal(kw_safetensors_find(st, "a")->data, bytes, 8);
    assert_memory_equal(kw_safetensors_find(st, "b")->data, bytes + 8, 8);
    kw_safetensors_close(st);
}

/* ------------------------------------------------------------------------------------------------------------
 * Every truncation and random byte flips: a status, never a crash (ASan checks the reads).
 */

static void test_truncations(void **state) {
    (void)state;
    char *bytes = NULL;
    size_t n = 0;
    assert_int_equal(kw_file_read_all(FIXTURES "/mixed.safetensors", 1 << 20, &bytes, &n), 0);
    const char *p = tmp_path("trunc.safetensors");
    for (size_t len = 0; len < n; ++len) {
        write_bytes(p, bytes, len);
        kw_safetensors *st = NULL;
        const int rc = kw_safetensors_open(p, &st);
        if (rc != KW_E_MODEL_FORMAT) fail_msg("truncated to %zu of %zu bytes: %s", len, n, kw_status_name(rc));
        assert_null(st);
    }
    free(bytes);
}

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void fuzz_file(const char *src, int iterations, uint64_t seed) {
    char *orig = NULL;
    size_t n = 0;
    assert_int_equal(kw_file_read_all(src, 1 << 20, &orig, &n), 0);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; --i)
        hlen = hlen << 8 | (unsigned char)orig[i];
    char *buf = malloc(n);
    assert_non_null(buf);
    const char *p = tmp_path("fuzz.safetensors");
    int accepted = 0;
    for (int it = 0; it < iterations; ++it) {
        memcpy(buf, orig, n);
        const int edits = 1 + (int)(rng_next(&seed) % 4);
        for (int e = 0; e < edits; ++e) {
            const uint64_t r = rng_next(&seed);
            if (r % 3 == 0) {
                /* a digit of the header becomes another digit: shapes and offsets change but stay JSON */
                const size_t at = 8 + (size_t)((r >> 8) % hlen);
                if (buf[at] >= '0' && buf[at] <= '9') buf[at] = (char)('0' + (r >> 40) % 10);
            } else if (r % 3 == 1) {
                buf[(r >> 8) % n] ^= (char)(1u << ((r >> 40) % 8));
            } else {
                buf[(r >> 8) % (8 + hlen)] = (char)(r >> 40);
            }
        }
        const size_t len = rng_next(&seed) % 8 == 0 ? (size_t)(rng_next(&seed) % (n + 1)) : n;
        write_bytes(p, buf, len);
        kw_safetensors *st = NULL;
        const int rc = kw_safetensors_open(p, &st);
        if (rc < 0) {
            assert_null(st);
            continue;
        }
        /* accepted: every tensor lies in the data area and the areas tile it */
        ++accepted;
        size_t total = 0;
        unsigned sum = 0;
        for (size_t i = 0; i < kw_safetensors_count(st); ++i) {
            const kw_st_tensor *t = kw_safetensors_at(st, i);
            total += t->nbytes;
            for (size_t b = 0; b < t->nbytes; ++b)
                sum += ((const unsigned char *)t->data)[b];
            assert_ptr_equal(kw_safetensors_find(st, t->name), t);
        }
        (void)sum;
        uint64_t h2 = 0;
        for (int i = 7; i >= 0; --i)
            h2 = h2 << 8 | (unsigned char)buf[i];
        assert_int_equal(total, len - 8 - h2);
        kw_safetensors_close(st);
    }
    print_message("  %s: %d of %d mutants accepted (and checked)\n", src, accepted, iterations);
    free(buf);
    free(orig);
}

static void test_byte_flips(void **state) {
    (void)state;
    fuzz_file(FIXTURES "/mixed.safetensors", 3000, 1);
    fuzz_file(FIXTURES "/sharded/model-00001-of-00005.safetensors", 1500, 2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_minimal),  cmocka_unit_test(test_framing),
        cmocka_unit_test(test_header_text),    cmocka_unit_test(test_entries),
        cmocka_unit_test(test_python_mixed),   cmocka_unit_test(test_writer_matches_python),
        cmocka_unit_test(test_python_sharded), cmocka_unit_test(test_sharded),
        cmocka_unit_test(test_round_trip),     cmocka_unit_test(test_streaming_writer),
        cmocka_unit_test(test_truncations),    cmocka_unit_test(test_byte_flips),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
