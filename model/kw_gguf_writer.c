/* kw_gguf_writer.c: GGUF v3 files from metadata and tensors collected in memory (kw_gguf_writer.h). The metadata is
 * serialized as it is added (one growing buffer); tensor infos and offsets are laid out at write time, in the order
 * the tensors were added, each offset rounded up to the alignment. */
#include "model/kw_gguf_writer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/kw_buf.h"
#include "common/kw_bytes.h"
#include "common/kw_size.h"
#include "common/kw_status.h"
#include "model/kw_dequant.h"

#define KW_GGUF_VERSION 3

typedef struct kw_gguf_writer_tensor {
    char *name;
    uint32_t type;
    int32_t n_dims;
    int64_t ne[KW_GGUF_MAX_DIMS];
    void *data; /* owned */
    size_t nbytes;
} kw_gguf_writer_tensor;

struct kw_gguf_writer {
    size_t alignment;
    kw_buf kv;         /* the serialized metadata entries */
    uint64_t kv_count; /* entries in kv (general.alignment, written at the front, excluded) */
    char **keys;       /* owned, for the uniqueness check */
    size_t keys_cap;   /* entries allocated in keys (kv_count used) */
    kw_gguf_writer_tensor *tensors;
    size_t n_tensors, tensors_cap;
};

int kw_gguf_writer_new(size_t alignment, kw_gguf_writer **out) {
    KW_RETURN_IF(!out, KW_E_INVALID_ARG, "kw_gguf_writer_new: NULL out");
    if (alignment == 0) alignment = KW_GGUF_DEFAULT_ALIGNMENT;
    KW_RETURN_IF(alignment > KW_GGUF_MAX_ALIGN || (alignment & (alignment - 1)) != 0, KW_E_INVALID_ARG,
                 "GGUF alignment %zu is not a power of two up to %u", alignment, (unsigned)KW_GGUF_MAX_ALIGN);
    kw_gguf_writer *w = calloc(1, sizeof *w);
    KW_RETURN_IF(!w, KW_E_NOMEM, "out of memory");
    w->alignment = alignment;
    *out = w;
    return 0;
}

void kw_gguf_writer_free(kw_gguf_writer *w) {
    if (!w) return;
    kw_buf_free(&w->kv);
    for (uint64_t i = 0; i < w->kv_count; ++i)
        free(w->keys[i]);
    free(w->keys);
    for (size_t i = 0; i < w->n_tensors; ++i) {
        free(w->tensors[i].name);
        free(w->tensors[i].data);
    }
    free(w->tensors);
    free(w);
}

// ---------------------------------------------------------------------------------------------------------------
// Metadata

static void kw_gw_u32(kw_buf *b, uint32_t v) {
    uint8_t x[4];
    kw_store_le32(x, v);
    kw_buf_append(b, x, sizeof x);
}

static void kw_gw_u64(kw_buf *b, uint64_t v) {
    uint8_t x[8];
    kw_store_le64(x, v);
    kw_buf_append(b, x, sizeof x);
}

static void kw_gw_str(kw_buf *b, const char *s, size_t n) {
    kw_gw_u64(b, n);
    kw_buf_append(b, s, n);
}

/* Checks key (non-empty, no longer than a name may be, unique), records it and writes it with its value type. */
static int kw_gw_begin_kv(kw_gguf_writer *w, const char *key, enum kw_gguf_type type) {
    KW_RETURN_IF(!w || !key, KW_E_INVALID_ARG, "GGUF writer: NULL argument");
    const size_t n = strlen(key);
    KW_RETURN_IF(n == 0 || n > KW_GGUF_MAX_NAME, KW_E_INVALID_ARG, "GGUF writer: key of %zu bytes", n);
    KW_RETURN_IF(strcmp(key, "general.alignment") == 0, KW_E_INVALID_ARG,
                 "GGUF writer: general.alignment is set by kw_gguf_writer_new");
    for (uint64_t i = 0; i < w->kv_count; ++i)
        KW_RETURN_IF(strcmp(w->keys[i], key) == 0, KW_E_INVALID_ARG, "GGUF writer: duplicate key %s", key);
    if (w->kv_count == w->keys_cap) {
        const size_t cap = w->keys_cap ? 2 * w->keys_cap : 16;
        char **k = realloc(w->keys, cap * sizeof *k);
        KW_RETURN_IF(!k, KW_E_NOMEM, "out of memory");
        w->keys = k;
        w->keys_cap = cap;
    }
    char *copy = strdup(key);
    KW_RETURN_IF(!copy, KW_E_NOMEM, "out of memory");
    w->keys[w->kv_count++] = copy;
    kw_gw_str(&w->kv, key, n);
    kw_gw_u32(&w->kv, (uint32_t)type);
    return 0;
}

static int kw_gw_end_kv(kw_gguf_writer *w) {
    KW_RETURN_IF(w->kv.status < 0, w->kv.status, "GGUF writer: out of memory for metadata");
    return 0;
}

int kw_gguf_writer_set_u32(kw_gguf_writer *w, const char *key, uint32_t v) {
    KW_FORWARD(kw_gw_begin_kv(w, key, KW_GGUF_UINT32));
    kw_gw_u32(&w->kv, v);
    return kw_gw_end_kv(w);
}

int kw_gguf_writer_set_i32(kw_gguf_writer *w, const char *key, int32_t v) {
    KW_FORWARD(kw_gw_begin_kv(w, key, KW_GGUF_INT32));
    kw_gw_u32(&w->kv, (uint32_t)v);
    return kw_gw_end_kv(w);
}

int kw_gguf_writer_set_u64(kw_gguf_writer *w, const char *key, uint64_t v) {
    KW_FORWARD(kw_gw_begin_kv(w, key, KW_GGUF_UINT64));
    kw_gw_u64(&w->kv, v);
    return kw_gw_end_kv(w);
}

int kw_gguf_writer_set_f32(kw_gguf_writer *w, const char *key, float v) {
    KW_FORWARD(kw_gw_begin_kv(w, key, KW_GGUF_FLOAT32));
    uint8_t x[4];
    kw_store_lef32(x, v);
    kw_buf_append(&w->kv, x, sizeof x);
    return kw_gw_end_kv(w);
}

int kw_gguf_writer_set_bool(kw_gguf_writer *w, const char *key, int v) {
    KW_FORWARD(kw_gw_begin_kv(w, key, KW_GGUF_BOOL));
    const uint8_t b = v ? 1 : 0;
    kw_buf_append(&w->kv, &b, 1);
    return kw_gw_end_kv(w);
}

static int kw_gw_check_str(const char *s, size_t n) {
    KW_RETURN_IF(!s && n > 0, KW_E_INVALID_ARG, "GGUF writer: NULL string");
    KW_RETURN_IF(n > KW_GGUF_MAX_STRING, KW_E_INVALID_ARG, "GGUF writer: string of %zu bytes", n);
    KW_RETURN_IF(n > 0 && memchr(s, 0, n) != NULL, KW_E_INVALID_ARG, "GGUF writer: a string holds a NUL byte");
    return 0;
}

int kw_gguf_writer_set_str(kw_gguf_writer *w, const char *key, const char *s, size_t n) {
    KW_FORWARD(kw_gw_check_str(s, n));
    KW_FORWARD(kw_gw_begin_kv(w, key, KW_GGUF_STRING));
    kw_gw_str(&w->kv, s, n);
    return kw_gw_end_kv(w);
}

/* Appends count native elements of size es as little-endian bytes. */
static void kw_gw_elems(kw_buf *b, const void *values, uint64_t count, size_t es) {
    const uint8_t *p = values;
    for (uint64_t i = 0; i < count; ++i, p += es) {
        uint8_t x[8];
        if (es == 1) {
            x[0] = p[0];
        } else if (es == 2) {
            uint16_t v;
            memcpy(&v, p, 2);
            kw_store_le16(x, v);
        } else if (es == 4) {
            uint32_t v;
            memcpy(&v, p, 4);
            kw_store_le32(x, v);
        } else {
            uint64_t v;
            memcpy(&v, p, 8);
            kw_store_le64(x, v);
        }
        kw_buf_append(b, x, es);
    }
}

int kw_gguf_writer_set_array(kw_gguf_writer *w, const char *key, enum kw_gguf_type elem_type, const void *values,
                             uint64_t count) {
    const size_t es = kw_gguf_scalar_size(elem_type);
    KW_RETURN_IF(es == 0, KW_E_INVALID_ARG,
                 "GGUF writer: an array of %s (fixed-size types only; strings: "
                 "kw_gguf_writer_set_str_array)",
                 kw_gguf_type_name(elem_type));
    KW_RETURN_IF(count > 0 && !values, KW_E_INVALID_ARG, "GGUF writer: NULL array");
    if (elem_type == KW_GGUF_BOOL)
        for (uint64_t i = 0; i < count; ++i)
            KW_RETURN_IF(((const uint8_t *)values)[i] > 1, KW_E_INVALID_ARG, "GGUF writer: bool %u in %s",
                         (unsigned)((const uint8_t *)values)[i], key ? key : "?");
    KW_FORWARD(kw_gw_begin_kv(w, key, KW_GGUF_ARRAY));
    kw_gw_u32(&w->kv, (uint32_t)elem_type);
    kw_gw_u64(&w->kv, count);
    kw_gw_elems(&w->kv, values, count, es);
    return kw_gw_end_kv(w);
}

int kw_gguf_writer_set_str_array(kw_gguf_writer *w, const char *key, const char *const *strs, const size_t *lens,
                                 uint64_t count) {
    KW_RETURN_IF(count > 0 && (!strs || !lens), KW_E_INVALID_ARG, "GGUF writer: NULL string array");
    for (uint64_t i = 0; i < count; ++i)
        KW_FORWARD(kw_gw_check_str(strs[i], lens[i]));
    KW_FORWARD(kw_gw_begin_kv(w, key, KW_GGUF_ARRAY));
    kw_gw_u32(&w->kv, (uint32_t)KW_GGUF_STRING);
    kw_gw_u64(&w->kv, count);
    for (uint64_t i = 0; i < count; ++i)
        kw_gw_str(&w->kv, strs[i], lens[i]);
    return kw_gw_end_kv(w);
}

int kw_gguf_writer_copy_kv(kw_gguf_writer *w, const kw_gguf *g, const kw_gguf_kv *kv) {
    KW_RETURN_IF(!w || !g || !kv, KW_E_INVALID_ARG, "kw_gguf_writer_copy_kv: NULL argument");
    if (kv->type == KW_GGUF_STRING) {
        const char *s = NULL;
        size_t n = 0;
        KW_FORWARD(kw_gguf_get_str(g, kv->key, &s, &n));
        return kw_gguf_writer_set_str(w, kv->key, s, n);
    }
    if (kv->type != KW_GGUF_ARRAY) {
        const size_t es = kw_gguf_scalar_size(kv->type);
        KW_RETURN_IF(es == 0, KW_E_MODEL_FORMAT, "GGUF key %s has type %u", kv->key, (unsigned)kv->type);
        KW_FORWARD(kw_gw_begin_kv(w, kv->key, kv->type));
        kw_buf_append(&w->kv, kv->value, es); /* already little-endian in the file */
        return kw_gw_end_kv(w);
    }
    if (kv->elem_type == KW_GGUF_STRING) {
        KW_FORWARD(kw_gw_begin_kv(w, kv->key, KW_GGUF_ARRAY));
        kw_gw_u32(&w->kv, (uint32_t)KW_GGUF_STRING);
        kw_gw_u64(&w->kv, kv->count);
        for (uint64_t i = 0; i < kv->count; ++i) {
            const char *s = NULL;
            size_t n = 0;
            KW_FORWARD(kw_gguf_array_str(g, kv, i, &s, &n));
            kw_gw_str(&w->kv, s, n);
        }
        return kw_gw_end_kv(w);
    }
    const size_t es = kw_gguf_scalar_size(kv->elem_type);
    KW_RETURN_IF(es == 0, KW_E_MODEL_FORMAT, "GGUF key %s: arrays of %u", kv->key, (unsigned)kv->elem_type);
    KW_FORWARD(kw_gw_begin_kv(w, kv->key, KW_GGUF_ARRAY));
    kw_gw_u32(&w->kv, (uint32_t)kv->elem_type);
    kw_gw_u64(&w->kv, kv->count);
    kw_buf_append(&w->kv, kv->value, (size_t)kv->count * es); /* bounded by the file at open */
    return kw_gw_end_kv(w);
}

// ---------------------------------------------------------------------------------------------------------------
// Tensors

int kw_gguf_writer_add_tensor(kw_gguf_writer *w, const char *name, uint32_t type, int32_t n_dims, const int64_t *ne,
                              void *data, size_t nbytes) {
    int rc = 0;
    KW_CHECK_IF(!w || !name || !ne || !data, KW_E_INVALID_ARG, "kw_gguf_writer_add_tensor: NULL argument");
    const size_t len = strlen(name);
    KW_CHECK_IF(len == 0 || len > KW_GGUF_MAX_NAME, KW_E_INVALID_ARG, "GGUF writer: tensor name of %zu bytes", len);
    for (size_t i = 0; i < w->n_tensors; ++i)
        KW_CHECK_IF(strcmp(w->tensors[i].name, name) == 0, KW_E_INVALID_ARG, "GGUF writer: duplicate tensor %s", name);
    KW_CHECK_IF(n_dims < 1 || n_dims > KW_GGUF_MAX_DIMS, KW_E_MODEL_SHAPE, "GGUF writer: %s has %d dimensions", name,
                (int)n_dims);
    size_t rows = 1;
    for (int32_t d = 0; d < n_dims; ++d) {
        KW_CHECK_IF(ne[d] < 1, KW_E_MODEL_SHAPE, "GGUF writer: %s extent %d is %lld", name, (int)d, (long long)ne[d]);
        if (d > 0) KW_CHECK_IF(kw_size_mul(rows, (size_t)ne[d], &rows) < 0, KW_E_OVERFLOW, "%s too large", name);
    }
    size_t row_bytes = 0, want = 0;
    KW_CHECK(kw_ggml_row_bytes(type, ne[0], &row_bytes));
    KW_CHECK_IF(kw_size_mul(rows, row_bytes, &want) < 0, KW_E_OVERFLOW, "%s too large", name);
    KW_CHECK_IF(want != nbytes, KW_E_INVALID_ARG, "GGUF writer: %s of type %s holds %zu bytes, its shape needs %zu",
                name, kw_ggml_type_name(type), nbytes, want);
    if (w->n_tensors == w->tensors_cap) {
        const size_t cap = w->tensors_cap ? 2 * w->tensors_cap : 64;
        kw_gguf_writer_tensor *t = realloc(w->tensors, cap * sizeof *t);
        KW_CHECK_IF(!t, KW_E_NOMEM, "out of memory");
        w->tensors = t;
        w->tensors_cap = cap;
    }
    kw_gguf_writer_tensor *t = &w->tensors[w->n_tensors];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    KW_CHECK_IF(!t->name, KW_E_NOMEM, "out of memory");
    t->type = type;
    t->n_dims = n_dims;
    for (int32_t d = 0; d < KW_GGUF_MAX_DIMS; ++d)
        t->ne[d] = d < n_dims ? ne[d] : 1;
    t->data = data;
    t->nbytes = nbytes;
    ++w->n_tensors;
    return 0;
out:
    free(data);
    return rc;
}

// ---------------------------------------------------------------------------------------------------------------
// Output

static size_t kw_gw_pad(size_t n, size_t a) {
    return (a - n % a) % a;
}

/* The header (everything before the tensor data, padding included) into *b; *data_bytes the size of the data
 * section. */
static int kw_gw_header(const kw_gguf_writer *w, kw_buf *b, size_t *data_bytes) {
    kw_buf_append(b, "GGUF", 4);
    kw_gw_u32(b, KW_GGUF_VERSION);
    kw_gw_u64(b, w->n_tensors);
    const int explicit_align = w->alignment != KW_GGUF_DEFAULT_ALIGNMENT;
    kw_gw_u64(b, w->kv_count + (explicit_align ? 1 : 0));
    if (explicit_align) {
        static const char key[] = "general.alignment";
        kw_gw_str(b, key, sizeof key - 1);
        kw_gw_u32(b, KW_GGUF_UINT32);
        kw_gw_u32(b, (uint32_t)w->alignment);
    }
    kw_buf_append(b, w->kv.data, w->kv.len);
    size_t offset = 0;
    for (size_t i = 0; i < w->n_tensors; ++i) {
        const kw_gguf_writer_tensor *t = &w->tensors[i];
        kw_gw_str(b, t->name, strlen(t->name));
        kw_gw_u32(b, (uint32_t)t->n_dims);
        for (int32_t d = 0; d < t->n_dims; ++d)
            kw_gw_u64(b, (uint64_t)t->ne[d]);
        kw_gw_u32(b, t->type);
        kw_gw_u64(b, offset);
        KW_RETURN_IF(kw_size_add(offset, t->nbytes, &offset) < 0 ||
                         kw_size_add(offset, kw_gw_pad(offset, w->alignment), &offset) < 0,
                     KW_E_OVERFLOW, "GGUF writer: data section overflows");
    }
    static const uint8_t zeros[64];
    for (size_t pad = kw_gw_pad(b->len, w->alignment); pad > 0;) {
        const size_t n = pad < sizeof zeros ? pad : sizeof zeros;
        kw_buf_append(b, zeros, n);
        pad -= n;
    }
    KW_RETURN_IF(b->status < 0, b->status, "GGUF writer: out of memory for the header");
    *data_bytes = offset;
    return 0;
}

/* A place the file goes: a FILE or a memory buffer. */
typedef struct kw_gw_sink {
    FILE *f;
    uint8_t *mem;
    size_t pos;
} kw_gw_sink;

static int kw_gw_put(kw_gw_sink *s, const void *p, size_t n, const char *path) {
    if (n == 0) return 0;
    if (s->mem) {
        memcpy(s->mem + s->pos, p, n);
    } else {
        KW_RETURN_IF(fwrite(p, 1, n, s->f) != n, KW_E_IO, "write %s: %s", path, strerror(errno));
    }
    s->pos += n;
    return 0;
}

static int kw_gw_emit(const kw_gguf_writer *w, const kw_buf *header, kw_gw_sink *s, const char *path) {
    static const uint8_t zeros[64];
    KW_FORWARD(kw_gw_put(s, header->data, header->len, path));
    size_t offset = 0;
    for (size_t i = 0; i < w->n_tensors; ++i) {
        KW_FORWARD(kw_gw_put(s, w->tensors[i].data, w->tensors[i].nbytes, path));
        offset += w->tensors[i].nbytes;
        for (size_t pad = kw_gw_pad(offset, w->alignment); pad > 0;) {
            const size_t n = pad < sizeof zeros ? pad : sizeof zeros;
            KW_FORWARD(kw_gw_put(s, zeros, n, path));
            offset += n;
            pad -= n;
        }
    }
    return 0;
}

int kw_gguf_writer_to_memory(const kw_gguf_writer *w, void **out, size_t *size) {
    KW_RETURN_IF(!w || !out || !size, KW_E_INVALID_ARG, "kw_gguf_writer_to_memory: NULL argument");
    kw_buf header = KW_BUF_INIT;
    size_t data_bytes = 0, total = 0;
    int rc = kw_gw_header(w, &header, &data_bytes);
    if (rc == 0 && kw_size_add(header.len, data_bytes, &total) < 0)
        rc = kw_error_set(KW_E_OVERFLOW, "GGUF writer: file size overflows");
    uint8_t *mem = rc == 0 ? malloc(total ? total : 1) : NULL;
    if (rc == 0 && !mem) rc = kw_error_set(KW_E_NOMEM, "out of memory for %zu bytes", total);
    if (rc == 0) {
        kw_gw_sink s = {.mem = mem};
        rc = kw_gw_emit(w, &header, &s, "memory");
    }
    kw_buf_free(&header);
    if (rc < 0) {
        free(mem);
        return rc;
    }
    *out = mem;
    *size = total;
    return 0;
}

int kw_gguf_writer_write(const kw_gguf_writer *w, const char *path) {
    KW_RETURN_IF(!w || !path, KW_E_INVALID_ARG, "kw_gguf_writer_write: NULL argument");
    kw_buf header = KW_BUF_INIT;
    size_t data_bytes = 0;
    int rc = kw_gw_header(w, &header, &data_bytes);
    const size_t len = strlen(path);
    char *tmp = rc == 0 ? malloc(len + 32) : NULL;
    FILE *f = NULL;
    if (rc == 0 && !tmp) rc = kw_error_set(KW_E_NOMEM, "out of memory");
    if (rc == 0) {
        snprintf(tmp, len + 32, "%s.tmp%ld", path, (long)getpid());
        f = fopen(tmp, "wb");
        if (!f) rc = kw_error_set(KW_E_IO, "create %s: %s", tmp, strerror(errno));
    }
    if (rc == 0) {
        kw_gw_sink s = {.f = f};
        rc = kw_gw_emit(w, &header, &s, tmp);
    }
    if (f && fclose(f) != 0 && rc == 0) rc = kw_error_set(KW_E_IO, "close %s: %s", tmp, strerror(errno));
    if (rc == 0 && rename(tmp, path) != 0)
        rc = kw_error_set(KW_E_IO, "rename %s -> %s: %s", tmp, path, strerror(errno));
    if (rc < 0 && f) unlink(tmp);
    free(tmp);
    kw_buf_free(&header);
    return rc;
}
