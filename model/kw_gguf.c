/* kw_gguf.c: the GGUF container: header, metadata, tensor infos, data section, all validated at open.
 *
 * Parsing walks a bounds-checked cursor over the mapping. Every count read from the file is first compared with the
 * number of bytes left divided by the smallest encoding of one element, so nothing is allocated for entries the file
 * cannot hold. Keys and tensor names are copied into one pool and indexed by two hash tables (which also find
 * duplicates); string array elements get a (pointer, length) index. The semantics of the keys (architectures,
 * tokenizers) are not here.
 */
#include "model/kw_gguf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_buf.h"
#include "common/kw_bytes.h"
#include "common/kw_file.h"
#include "common/kw_size.h"
#include "common/kw_status.h"
#include "model/kw_dequant.h"

#define KW_GGUF_MAGIC 0x46554747u /* "GGUF" read as a little-endian u32 */

/* Smallest encodings, used to cap counts before allocating: a key (u64 length + >= 1 byte) with a type and a
 * one-byte value; a tensor info (name of >= 1 byte, n_dims, one dim, type, offset); a string (its u64 length). */
#define KW_GGUF_MIN_KV     (8 + 1 + 4 + 1)
#define KW_GGUF_MIN_TENSOR (8 + 1 + 4 + 8 + 4 + 8)
#define KW_GGUF_MIN_STRING 8

typedef struct kw_gguf_strref {
    const uint8_t *p;
    uint64_t n;
} kw_gguf_strref;

/* A hash index over names: slots hold entry index + 1, 0 = empty. */
typedef struct kw_gguf_index {
    uint32_t *slots;
    size_t mask;
} kw_gguf_index;

struct kw_gguf {
    kw_file_map map; /* owned when opened from a path */
    const uint8_t *data;
    size_t size;
    uint32_t version;
    size_t alignment;
    size_t data_offset;

    kw_gguf_kv *kvs; /* (n_kv) */
    size_t n_kv;
    kw_gguf_strref **kv_strings; /* (kv_cap) per string array: the element index; NULL otherwise */
    size_t kv_cap;               /* entries allocated in kvs and kv_strings (the header's count) */
    kw_gguf_tensor *tensors;     /* (n_tensors) */
    size_t n_tensors;
    char *names; /* the pool of keys and tensor names */
    kw_gguf_index kv_index, tensor_index;
};

static const char *const kw_gguf_type_names[KW_GGUF_TYPE_COUNT] = {
    "UINT8", "INT8",   "UINT16", "INT16",  "UINT32", "INT32",   "FLOAT32",
    "BOOL",  "STRING", "ARRAY",  "UINT64", "INT64",  "FLOAT64",
};

const char *kw_gguf_type_name(enum kw_gguf_type type) {
    return (unsigned)type < KW_GGUF_TYPE_COUNT ? kw_gguf_type_names[type] : "?";
}

size_t kw_gguf_scalar_size(uint32_t t) {
    switch (t) {
    case KW_GGUF_UINT8:
    case KW_GGUF_INT8:
    case KW_GGUF_BOOL:
        return 1;
    case KW_GGUF_UINT16:
    case KW_GGUF_INT16:
        return 2;
    case KW_GGUF_UINT32:
    case KW_GGUF_INT32:
    case KW_GGUF_FLOAT32:
        return 4;
    case KW_GGUF_UINT64:
    case KW_GGUF_INT64:
    case KW_GGUF_FLOAT64:
        return 8;
    default:
        return 0;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Cursor

typedef struct kw_gguf_cursor {
    const uint8_t *p;
    size_t size, pos;
} kw_gguf_cursor;

static size_t kw_gguf_left(const kw_gguf_cursor *c) {
    return c->size - c->pos;
}

static int kw_gguf_need(const kw_gguf_cursor *c, size_t n, const char *what) {
    KW_RETURN_IF(n > kw_gguf_left(c), KW_E_MODEL_FORMAT,
                 "truncated: %s needs %zu bytes at offset %zu, the file has %zu left", what, n, c->pos,
                 kw_gguf_left(c));
    return 0;
}

static int kw_gguf_u32(kw_gguf_cursor *c, uint32_t *v, const char *what) {
    KW_FORWARD(kw_gguf_need(c, 4, what));
    *v = kw_load_le32(c->p + c->pos);
    c->pos += 4;
    return 0;
}

static int kw_gguf_u64(kw_gguf_cursor *c, uint64_t *v, const char *what) {
    KW_FORWARD(kw_gguf_need(c, 8, what));
    *v = kw_load_le64(c->p + c->pos);
    c->pos += 8;
    return 0;
}

/* A string: u64 length, bytes. *s points into the mapping. */
static int kw_gguf_string(kw_gguf_cursor *c, uint64_t max, const uint8_t **s, uint64_t *n, const char *what) {
    const size_t at = c->pos;
    uint64_t len = 0;
    KW_FORWARD(kw_gguf_u64(c, &len, what));
    KW_RETURN_IF(len > max, KW_E_MODEL_FORMAT, "%s at offset %zu is %llu bytes long (at most %llu)", what, at,
                 (unsigned long long)len, (unsigned long long)max);
    KW_FORWARD(kw_gguf_need(c, (size_t)len, what));
    *s = c->p + c->pos;
    *n = len;
    c->pos += (size_t)len;
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Name pool and hash indexes

static uint64_t kw_gguf_hash(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (; *s; ++s)
        h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
    return h ^ (h >> 29);
}

/* A name read from the file: 1..KW_GGUF_MAX_NAME bytes, no NUL. Appended to the pool with its terminator; *off is
 * where it starts. */
static int kw_gguf_name(kw_gguf_cursor *c, kw_buf *pool, size_t *off, const char *what) {
    const size_t at = c->pos;
    const uint8_t *s = NULL;
    uint64_t n = 0;
    KW_FORWARD(kw_gguf_string(c, KW_GGUF_MAX_NAME, &s, &n, what));
    KW_RETURN_IF(n == 0, KW_E_MODEL_FORMAT, "%s at offset %zu is empty", what, at);
    KW_RETURN_IF(memchr(s, 0, (size_t)n) != NULL, KW_E_MODEL_FORMAT, "%s at offset %zu contains a NUL byte", what, at);
    *off = pool->len;
    KW_FORWARD(kw_buf_append(pool, s, (size_t)n));
    return kw_buf_append(pool, "", 1);
}

typedef const char *(*kw_gguf_name_fn)(const kw_gguf *g, size_t i);

static const char *kw_gguf_kv_name(const kw_gguf *g, size_t i) {
    return g->kvs[i].key;
}

static const char *kw_gguf_tensor_name(const kw_gguf *g, size_t i) {
    return g->tensors[i].name;
}

/* The slot of name in idx: its entry's slot, or the empty slot where it would go. */
static size_t kw_gguf_slot(const kw_gguf *g, const kw_gguf_index *idx, kw_gguf_name_fn name_at, const char *name) {
    size_t i = (size_t)kw_gguf_hash(name) & idx->mask;
    while (idx->slots[i] != 0 && strcmp(name_at(g, idx->slots[i] - 1), name) != 0)
        i = (i + 1) & idx->mask;
    return i;
}

/* Indexes n entries; a repeated name is KW_E_MODEL_FORMAT. */
static int kw_gguf_build_index(const kw_gguf *g, kw_gguf_index *idx, size_t n, kw_gguf_name_fn name_at,
                               const char *what) {
    size_t size = 16;
    while (size < 2 * n)
        size *= 2; /* n is capped by the file size, so this cannot overflow */
    idx->slots = calloc(size, sizeof *idx->slots);
    KW_RETURN_IF(!idx->slots, KW_E_NOMEM, "out of memory indexing %zu %ss", n, what);
    idx->mask = size - 1;
    for (size_t i = 0; i < n; ++i) {
        const size_t s = kw_gguf_slot(g, idx, name_at, name_at(g, i));
        KW_RETURN_IF(idx->slots[s] != 0, KW_E_MODEL_FORMAT, "%s \"%.200s\" appears twice", what, name_at(g, i));
        idx->slots[s] = (uint32_t)(i + 1);
    }
    return 0;
}

static size_t kw_gguf_lookup(const kw_gguf *g, const kw_gguf_index *idx, kw_gguf_name_fn name_at, const char *name) {
    if (!idx->slots || !name) return SIZE_MAX;
    const uint32_t s = idx->slots[kw_gguf_slot(g, idx, name_at, name)];
    return s ? (size_t)s - 1 : SIZE_MAX;
}

// ---------------------------------------------------------------------------------------------------------------
// Metadata

/* Reads one value of type t (not ARRAY) at the cursor; records where it is. bools must be 0 or 1. */
static int kw_gguf_skip_scalar(kw_gguf_cursor *c, uint32_t t, const char *key) {
    const size_t sz = kw_gguf_scalar_size(t);
    KW_RETURN_IF(sz == 0, KW_E_INTERNAL, "kw_gguf_skip_scalar: type %u", (unsigned)t);
    KW_FORWARD(kw_gguf_need(c, sz, key));
    KW_RETURN_IF(t == KW_GGUF_BOOL && c->p[c->pos] > 1, KW_E_MODEL_FORMAT,
                 "metadata %s: bool at offset %zu holds %u (0 or 1)", key, c->pos, (unsigned)c->p[c->pos]);
    c->pos += sz;
    return 0;
}

static int kw_gguf_read_array(kw_gguf *g, kw_gguf_cursor *c, size_t i, const char *key) {
    kw_gguf_kv *kv = &g->kvs[i];
    uint32_t et = 0;
    uint64_t count = 0;
    const size_t at = c->pos;
    KW_FORWARD(kw_gguf_u32(c, &et, "an array element type"));
    KW_RETURN_IF(et == KW_GGUF_ARRAY, KW_E_MODEL_FORMAT, "metadata %s: arrays of arrays are not supported (offset %zu)",
                 key, at);
    KW_RETURN_IF(et >= KW_GGUF_TYPE_COUNT, KW_E_MODEL_FORMAT, "metadata %s: array element type %u is invalid", key,
                 (unsigned)et);
    KW_FORWARD(kw_gguf_u64(c, &count, "an array length"));
    kv->elem_type = (enum kw_gguf_type)et;
    kv->count = count;
    kv->value = c->p + c->pos;
    if (et != KW_GGUF_STRING) {
        const size_t sz = kw_gguf_scalar_size(et);
        KW_RETURN_IF(count > kw_gguf_left(c) / sz, KW_E_MODEL_FORMAT,
                     "metadata %s: an array of %llu %s values does not fit in the %zu bytes left", key,
                     (unsigned long long)count, kw_gguf_type_name(kv->elem_type), kw_gguf_left(c));
        if (et == KW_GGUF_BOOL)
            for (uint64_t k = 0; k < count; ++k)
                KW_FORWARD(kw_gguf_skip_scalar(c, et, key));
        else
            c->pos += (size_t)count * sz;
        return 0;
    }
    KW_RETURN_IF(count > kw_gguf_left(c) / KW_GGUF_MIN_STRING, KW_E_MODEL_FORMAT,
                 "metadata %s: an array of %llu strings does not fit in the %zu bytes left", key,
                 (unsigned long long)count, kw_gguf_left(c));
    kw_gguf_strref *refs = malloc((count ? (size_t)count : 1) * sizeof *refs);
    KW_RETURN_IF(!refs, KW_E_NOMEM, "out of memory for %llu strings of %s", (unsigned long long)count, key);
    g->kv_strings[i] = refs;
    for (uint64_t k = 0; k < count; ++k)
        KW_FORWARD(kw_gguf_string(c, KW_GGUF_MAX_STRING, &refs[k].p, &refs[k].n, key));
    return 0;
}

static int kw_gguf_read_kvs(kw_gguf *g, kw_gguf_cursor *c, uint64_t n_kv, kw_buf *pool, size_t *key_off) {
    for (size_t i = 0; i < (size_t)n_kv; ++i) {
        kw_gguf_kv *kv = &g->kvs[i];
        kv->offset = c->pos;
        KW_FORWARD(kw_gguf_name(c, pool, &key_off[i], "a metadata key"));
        const char *key = pool->data + key_off[i]; /* valid until the next append */
        char key_copy[KW_GGUF_MAX_NAME + 1];
        snprintf(key_copy, sizeof key_copy, "%s", key);
        uint32_t t = 0;
        KW_FORWARD(kw_gguf_u32(c, &t, "a metadata value type"));
        KW_RETURN_IF(t >= KW_GGUF_TYPE_COUNT, KW_E_MODEL_FORMAT, "metadata %s: value type %u is invalid", key_copy,
                     (unsigned)t);
        kv->type = (enum kw_gguf_type)t;
        kv->count = 1;
        kv->value = c->p + c->pos;
        if (t == KW_GGUF_ARRAY) {
            KW_FORWARD(kw_gguf_read_array(g, c, i, key_copy));
        } else if (t == KW_GGUF_STRING) {
            const uint8_t *s;
            uint64_t len;
            KW_FORWARD(kw_gguf_string(c, KW_GGUF_MAX_STRING, &s, &len, key_copy));
        } else {
            KW_FORWARD(kw_gguf_skip_scalar(c, t, key_copy));
        }
        g->n_kv = i + 1;
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Tensor infos

static int kw_gguf_read_tensor(kw_gguf_cursor *c, kw_gguf_tensor *t, kw_buf *pool, size_t *name_off) {
    const size_t at = c->pos;
    KW_FORWARD(kw_gguf_name(c, pool, name_off, "a tensor name"));
    char name[KW_GGUF_MAX_NAME + 1];
    snprintf(name, sizeof name, "%s", pool->data + *name_off);
    uint32_t n_dims = 0, type = 0;
    KW_FORWARD(kw_gguf_u32(c, &n_dims, "a tensor's dimension count"));
    KW_RETURN_IF(n_dims < 1 || n_dims > KW_GGUF_MAX_DIMS, KW_E_MODEL_FORMAT,
                 "tensor %s (offset %zu): %u dimensions (1..%d)", name, at, (unsigned)n_dims, KW_GGUF_MAX_DIMS);
    t->n_dims = (int32_t)n_dims;
    uint64_t nelem = 1;
    for (int d = 0; d < KW_GGUF_MAX_DIMS; ++d)
        t->ne[d] = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
        uint64_t ne = 0;
        KW_FORWARD(kw_gguf_u64(c, &ne, "a tensor dimension"));
        KW_RETURN_IF(ne < 1 || ne > (uint64_t)INT64_MAX, KW_E_MODEL_FORMAT, "tensor %s: dimension %u is %llu", name,
                     (unsigned)d, (unsigned long long)ne);
        KW_RETURN_IF(__builtin_mul_overflow(nelem, ne, &nelem) || nelem > (uint64_t)INT64_MAX, KW_E_MODEL_FORMAT,
                     "tensor %s: the element count overflows", name);
        t->ne[d] = (int64_t)ne;
    }
    KW_FORWARD(kw_gguf_u32(c, &type, "a tensor type"));
    kw_ggml_type_info info;
    if (kw_ggml_type_info_get(type, &info) < 0)
        KW_FAIL(KW_E_MODEL_DTYPE, "tensor %s: unknown ggml type %u", name, type);
    t->type = type;
    size_t row = 0;
    const int rc = kw_ggml_row_bytes(type, t->ne[0], &row);
    KW_RETURN_IF(rc < 0, KW_E_MODEL_FORMAT, "tensor %s: rows of %lld %s values: %s", name, (long long)t->ne[0],
                 info.name, kw_error_detail());
    KW_RETURN_IF(kw_size_mul(row, (size_t)(nelem / (uint64_t)t->ne[0]), &t->nbytes) < 0, KW_E_MODEL_FORMAT,
                 "tensor %s: its byte size overflows", name);
    KW_FORWARD(kw_gguf_u64(c, &t->offset, "a tensor offset"));
    return 0;
}

static int kw_gguf_cmp_offset(const void *a, const void *b) {
    const kw_gguf_tensor *x = *(const kw_gguf_tensor *const *)a, *y = *(const kw_gguf_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Places every tensor in the data section: aligned, inside the file, no two overlapping. */
static int kw_gguf_place_tensors(kw_gguf *g) {
    const size_t data_size = g->size - g->data_offset;
    for (size_t i = 0; i < g->n_tensors; ++i) {
        kw_gguf_tensor *t = &g->tensors[i];
        KW_RETURN_IF(t->offset % g->alignment != 0, KW_E_MODEL_FORMAT,
                     "tensor %s: data offset %llu is not a multiple of the alignment %zu", t->name,
                     (unsigned long long)t->offset, g->alignment);
        KW_RETURN_IF(t->offset > data_size || t->nbytes > data_size - t->offset, KW_E_MODEL_FORMAT,
                     "tensor %s: %zu bytes at data offset %llu run past the end of the file (%zu data bytes)", t->name,
                     t->nbytes, (unsigned long long)t->offset, data_size);
        t->data = g->data + g->data_offset + t->offset;
    }
    if (g->n_tensors < 2) return 0;
    const kw_gguf_tensor **order = malloc(g->n_tensors * sizeof *order);
    KW_RETURN_IF(!order, KW_E_NOMEM, "out of memory");
    for (size_t i = 0; i < g->n_tensors; ++i)
        order[i] = &g->tensors[i];
    qsort(order, g->n_tensors, sizeof *order, kw_gguf_cmp_offset);
    int rc = 0;
    for (size_t i = 0; i + 1 < g->n_tensors; ++i) {
        if (order[i]->offset + order[i]->nbytes > order[i + 1]->offset) {
            rc = kw_error_set(KW_E_MODEL_FORMAT, "tensors %s and %s overlap in the data section", order[i]->name,
                              order[i + 1]->name);
            break;
        }
    }
    free(order);
    return rc;
}

// ---------------------------------------------------------------------------------------------------------------
// Open

static int kw_gguf_alignment_from_kv(kw_gguf *g) {
    g->alignment = KW_GGUF_DEFAULT_ALIGNMENT;
    const kw_gguf_kv *kv = kw_gguf_find_kv(g, "general.alignment");
    if (!kv) return 0;
    KW_RETURN_IF(kv->type != KW_GGUF_UINT32, KW_E_MODEL_FORMAT, "general.alignment is %s (UINT32 expected)",
                 kw_gguf_type_name(kv->type));
    const uint32_t a = kw_load_le32(kv->value);
    KW_RETURN_IF(a == 0 || (a & (a - 1)) != 0 || a > KW_GGUF_MAX_ALIGN, KW_E_MODEL_FORMAT,
                 "general.alignment %u is not a power of two in [1, %u]", (unsigned)a, (unsigned)KW_GGUF_MAX_ALIGN);
    g->alignment = a;
    return 0;
}

static int kw_gguf_parse(kw_gguf *g) {
    kw_gguf_cursor c = {g->data, g->size, 0};
    uint32_t magic = 0;
    uint64_t n_tensors = 0, n_kv = 0;
    KW_RETURN_IF(g->size < 4 || kw_load_le32(g->data) != KW_GGUF_MAGIC, KW_E_MODEL_FORMAT,
                 "not a GGUF file (no \"GGUF\" magic)");
    KW_FORWARD(kw_gguf_u32(&c, &magic, "the magic"));
    KW_FORWARD(kw_gguf_u32(&c, &g->version, "the version"));
    KW_RETURN_IF(g->version == 1, KW_E_MODEL_FORMAT, "GGUF version 1 (32-bit counts) is not supported; re-convert");
    KW_RETURN_IF((g->version & 0xFFFFu) == 0 && g->version != 0, KW_E_MODEL_FORMAT,
                 "GGUF version 0x%08x: a big-endian file, which kvwire does not read", (unsigned)g->version);
    KW_RETURN_IF(g->version != 2 && g->version != 3, KW_E_MODEL_FORMAT, "GGUF version %u is not supported (2 or 3)",
                 (unsigned)g->version);
    KW_FORWARD(kw_gguf_u64(&c, &n_tensors, "the tensor count"));
    KW_FORWARD(kw_gguf_u64(&c, &n_kv, "the metadata count"));
    KW_RETURN_IF(n_kv > kw_gguf_left(&c) / KW_GGUF_MIN_KV, KW_E_MODEL_FORMAT,
                 "%llu metadata entries cannot fit in a %zu-byte file", (unsigned long long)n_kv, g->size);
    KW_RETURN_IF(n_tensors > kw_gguf_left(&c) / KW_GGUF_MIN_TENSOR, KW_E_MODEL_FORMAT,
                 "%llu tensors cannot fit in a %zu-byte file", (unsigned long long)n_tensors, g->size);

    int rc = 0;
    kw_buf pool = KW_BUF_INIT;
    size_t *key_off = calloc((size_t)n_kv + 1, sizeof *key_off);
    size_t *name_off = calloc((size_t)n_tensors + 1, sizeof *name_off);
    g->kvs = calloc((size_t)n_kv + 1, sizeof *g->kvs);
    g->kv_strings = calloc((size_t)n_kv + 1, sizeof *g->kv_strings);
    g->kv_cap = g->kv_strings ? (size_t)n_kv : 0;
    g->tensors = calloc((size_t)n_tensors + 1, sizeof *g->tensors);
    KW_CHECK_IF(!key_off || !name_off || !g->kvs || !g->kv_strings || !g->tensors, KW_E_NOMEM, "out of memory");

    KW_CHECK(kw_gguf_read_kvs(g, &c, n_kv, &pool, key_off));
    for (size_t i = 0; i < (size_t)n_tensors; ++i) {
        KW_CHECK(kw_gguf_read_tensor(&c, &g->tensors[i], &pool, &name_off[i]));
        g->n_tensors = i + 1;
    }
    /* The pool no longer moves: point the names into it. */
    KW_CHECK(kw_buf_take(&pool, &g->names, NULL));
    for (size_t i = 0; i < g->n_kv; ++i)
        g->kvs[i].key = g->names + key_off[i];
    for (size_t i = 0; i < g->n_tensors; ++i)
        g->tensors[i].name = g->names + name_off[i];
    KW_CHECK(kw_gguf_build_index(g, &g->kv_index, g->n_kv, kw_gguf_kv_name, "metadata key"));
    KW_CHECK(kw_gguf_build_index(g, &g->tensor_index, g->n_tensors, kw_gguf_tensor_name, "tensor"));
    KW_CHECK(kw_gguf_alignment_from_kv(g));
    /* A file without tensors may end before the padding. */
    KW_CHECK_IF(kw_size_align_up(c.pos, g->alignment, &g->data_offset) < 0, KW_E_MODEL_FORMAT, "size overflow");
    if (g->n_tensors == 0 && g->data_offset > g->size) g->data_offset = g->size;
    KW_CHECK_IF(g->data_offset > g->size, KW_E_MODEL_FORMAT,
                "truncated: the data section starts at %zu, past the end of the file (%zu bytes)", g->data_offset,
                g->size);
    KW_CHECK(kw_gguf_place_tensors(g));
out:
    kw_buf_free(&pool);
    free(key_off);
    free(name_off);
    return rc;
}

static int kw_gguf_init(kw_gguf *g, const char *what, kw_gguf **out) {
    const int rc = kw_gguf_parse(g);
    if (rc < 0) {
        const int r = kw_error_set(rc, "%s: %s", what, kw_error_detail());
        kw_gguf_close(g);
        return r;
    }
    *out = g;
    return 0;
}

int kw_gguf_open_memory(const void *data, size_t size, kw_gguf **out) {
    KW_RETURN_IF(!out || (!data && size), KW_E_INVALID_ARG, "kw_gguf_open_memory: NULL argument");
    *out = NULL;
    kw_gguf *g = calloc(1, sizeof *g);
    KW_RETURN_IF(!g, KW_E_NOMEM, "out of memory");
    static const uint8_t empty[1] = {0};
    g->data = data ? data : empty;
    g->size = size;
    return kw_gguf_init(g, "GGUF", out);
}

int kw_gguf_open(const char *path, kw_gguf **out) {
    KW_RETURN_IF(!path || !out, KW_E_INVALID_ARG, "kw_gguf_open: NULL argument");
    *out = NULL;
    kw_gguf *g = calloc(1, sizeof *g);
    KW_RETURN_IF(!g, KW_E_NOMEM, "out of memory");
    const int rc = kw_file_map_open(path, &g->map);
    if (rc < 0) {
        free(g);
        return rc;
    }
    static const uint8_t empty[1] = {0};
    g->data = g->map.data ? g->map.data : empty;
    g->size = g->map.size;
    return kw_gguf_init(g, path, out);
}

void kw_gguf_close(kw_gguf *g) {
    if (!g) return;
    if (g->kv_strings) /* an entry that failed half-way may hold an index too */
        for (size_t i = 0; i < g->kv_cap; ++i)
            free(g->kv_strings[i]);
    free(g->kv_strings);
    free(g->kvs);
    free(g->tensors);
    free(g->names);
    free(g->kv_index.slots);
    free(g->tensor_index.slots);
    kw_file_unmap(&g->map);
    free(g);
}

int kw_gguf_is_gguf(const char *path) {
    FILE *f = path ? fopen(path, "rb") : NULL;
    if (!f) return 0;
    uint8_t b[4];
    const size_t n = fread(b, 1, 4, f);
    fclose(f);
    return n == 4 && kw_load_le32(b) == KW_GGUF_MAGIC;
}

// ---------------------------------------------------------------------------------------------------------------
// Accessors

uint32_t kw_gguf_version(const kw_gguf *g) {
    return g->version;
}
size_t kw_gguf_alignment(const kw_gguf *g) {
    return g->alignment;
}
size_t kw_gguf_file_size(const kw_gguf *g) {
    return g->size;
}
size_t kw_gguf_data_offset(const kw_gguf *g) {
    return g->data_offset;
}
size_t kw_gguf_kv_count(const kw_gguf *g) {
    return g->n_kv;
}
const kw_gguf_kv *kw_gguf_kv_at(const kw_gguf *g, size_t i) {
    return i < g->n_kv ? &g->kvs[i] : NULL;
}
const kw_gguf_kv *kw_gguf_find_kv(const kw_gguf *g, const char *key) {
    const size_t i = kw_gguf_lookup(g, &g->kv_index, kw_gguf_kv_name, key);
    return i == SIZE_MAX ? NULL : &g->kvs[i];
}
size_t kw_gguf_tensor_count(const kw_gguf *g) {
    return g->n_tensors;
}
const kw_gguf_tensor *kw_gguf_tensor_at(const kw_gguf *g, size_t i) {
    return i < g->n_tensors ? &g->tensors[i] : NULL;
}
const kw_gguf_tensor *kw_gguf_find_tensor(const kw_gguf *g, const char *name) {
    const size_t i = kw_gguf_lookup(g, &g->tensor_index, kw_gguf_tensor_name, name);
    return i == SIZE_MAX ? NULL : &g->tensors[i];
}

/* Reads one integer-typed value at p as int64 (UINT64 above INT64_MAX is reported through *big). */
static int kw_gguf_load_int(enum kw_gguf_type t, const uint8_t *p, int64_t *v, int *big) {
    *big = 0;
    switch (t) {
    case KW_GGUF_UINT8:
    case KW_GGUF_BOOL:
        *v = p[0];
        return 0;
    case KW_GGUF_INT8:
        *v = (int8_t)p[0];
        return 0;
    case KW_GGUF_UINT16:
        *v = kw_load_le16(p);
        return 0;
    case KW_GGUF_INT16:
        *v = (int16_t)kw_load_le16(p);
        return 0;
    case KW_GGUF_UINT32:
        *v = kw_load_le32(p);
        return 0;
    case KW_GGUF_INT32:
        *v = (int32_t)kw_load_le32(p);
        return 0;
    case KW_GGUF_UINT64: {
        const uint64_t u = kw_load_le64(p);
        *big = u > (uint64_t)INT64_MAX;
        *v = (int64_t)(u & (uint64_t)INT64_MAX);
        return 0;
    }
    case KW_GGUF_INT64:
        *v = (int64_t)kw_load_le64(p);
        return 0;
    default:
        return -1;
    }
}

static int kw_gguf_find(const kw_gguf *g, const char *key, const kw_gguf_kv **kv) {
    KW_RETURN_IF(!g || !key, KW_E_INVALID_ARG, "kw_gguf: NULL argument");
    *kv = kw_gguf_find_kv(g, key);
    KW_RETURN_IF(!*kv, KW_E_NOT_FOUND, "GGUF metadata %s is absent", key);
    return 0;
}

int kw_gguf_get_int(const kw_gguf *g, const char *key, int64_t min, int64_t max, int64_t *out) {
    const kw_gguf_kv *kv;
    KW_FORWARD(kw_gguf_find(g, key, &kv));
    int64_t v = 0;
    int big = 0;
    KW_RETURN_IF(kw_gguf_load_int(kv->type, kv->value, &v, &big) < 0, KW_E_MODEL_FORMAT,
                 "GGUF metadata %s is %s, an integer was expected", key, kw_gguf_type_name(kv->type));
    KW_RETURN_IF(big || v < min || v > max, KW_E_MODEL_FORMAT, "GGUF metadata %s = %s%lld is outside [%lld, %lld]", key,
                 big ? "(huge) " : "", (long long)v, (long long)min, (long long)max);
    *out = v;
    return 0;
}

int kw_gguf_get_float(const kw_gguf *g, const char *key, double *out) {
    const kw_gguf_kv *kv;
    KW_FORWARD(kw_gguf_find(g, key, &kv));
    if (kv->type == KW_GGUF_FLOAT32) {
        *out = (double)kw_load_lef32(kv->value);
        return 0;
    }
    if (kv->type == KW_GGUF_FLOAT64) {
        const uint64_t u = kw_load_le64(kv->value);
        memcpy(out, &u, sizeof *out);
        return 0;
    }
    int64_t v = 0;
    int big = 0;
    KW_RETURN_IF(kv->type == KW_GGUF_BOOL || kw_gguf_load_int(kv->type, kv->value, &v, &big) < 0 || big,
                 KW_E_MODEL_FORMAT, "GGUF metadata %s is %s, a number was expected", key, kw_gguf_type_name(kv->type));
    *out = (double)v;
    return 0;
}

int kw_gguf_get_bool(const kw_gguf *g, const char *key, int *out) {
    const kw_gguf_kv *kv;
    KW_FORWARD(kw_gguf_find(g, key, &kv));
    KW_RETURN_IF(kv->type != KW_GGUF_BOOL, KW_E_MODEL_FORMAT, "GGUF metadata %s is %s, BOOL was expected", key,
                 kw_gguf_type_name(kv->type));
    *out = kv->value[0] != 0;
    return 0;
}

int kw_gguf_get_str(const kw_gguf *g, const char *key, const char **s, size_t *n) {
    const kw_gguf_kv *kv;
    KW_FORWARD(kw_gguf_find(g, key, &kv));
    KW_RETURN_IF(kv->type != KW_GGUF_STRING, KW_E_MODEL_FORMAT, "GGUF metadata %s is %s, STRING was expected", key,
                 kw_gguf_type_name(kv->type));
    *n = (size_t)kw_load_le64(kv->value);
    *s = (const char *)kv->value + 8;
    return 0;
}

int kw_gguf_get_array(const kw_gguf *g, const char *key, enum kw_gguf_type elem_type, const kw_gguf_kv **out) {
    const kw_gguf_kv *kv;
    KW_FORWARD(kw_gguf_find(g, key, &kv));
    KW_RETURN_IF(kv->type != KW_GGUF_ARRAY, KW_E_MODEL_FORMAT, "GGUF metadata %s is %s, an array was expected", key,
                 kw_gguf_type_name(kv->type));
    KW_RETURN_IF(kv->elem_type != elem_type, KW_E_MODEL_FORMAT,
                 "GGUF metadata %s is an array of %s, an array of %s was expected", key,
                 kw_gguf_type_name(kv->elem_type), kw_gguf_type_name(elem_type));
    *out = kv;
    return 0;
}

int kw_gguf_array_str(const kw_gguf *g, const kw_gguf_kv *kv, uint64_t i, const char **s, size_t *n) {
    KW_RETURN_IF(!g || !kv || kv->type != KW_GGUF_ARRAY || kv->elem_type != KW_GGUF_STRING || i >= kv->count,
                 KW_E_INVALID_ARG, "kw_gguf_array_str: not a string array or index out of range");
    const size_t k = (size_t)(kv - g->kvs);
    KW_RETURN_IF(k >= g->n_kv || !g->kv_strings[k], KW_E_INVALID_ARG, "kw_gguf_array_str: foreign entry");
    *s = (const char *)g->kv_strings[k][i].p;
    *n = (size_t)g->kv_strings[k][i].n;
    return 0;
}

int kw_gguf_array_int(const kw_gguf_kv *kv, uint64_t i, int64_t *out) {
    KW_RETURN_IF(!kv || kv->type != KW_GGUF_ARRAY || i >= kv->count, KW_E_INVALID_ARG,
                 "kw_gguf_array_int: not an array or index out of range");
    const size_t sz = kw_gguf_scalar_size(kv->elem_type);
    int big = 0;
    KW_RETURN_IF(sz == 0 || kv->elem_type == KW_GGUF_FLOAT32 || kv->elem_type == KW_GGUF_FLOAT64 ||
                     kw_gguf_load_int(kv->elem_type, kv->value + (size_t)i * sz, out, &big) < 0 || big,
                 KW_E_MODEL_FORMAT, "GGUF metadata %s: element %llu is not an integer in range", kv->key,
                 (unsigned long long)i);
    return 0;
}

int kw_gguf_array_float(const kw_gguf_kv *kv, uint64_t i, double *out) {
    KW_RETURN_IF(!kv || kv->type != KW_GGUF_ARRAY || i >= kv->count, KW_E_INVALID_ARG,
                 "kw_gguf_array_float: not an array or index out of range");
    if (kv->elem_type == KW_GGUF_FLOAT32) {
        *out = (double)kw_load_lef32(kv->value + (size_t)i * 4);
        return 0;
    }
    KW_RETURN_IF(kv->elem_type != KW_GGUF_FLOAT64, KW_E_MODEL_FORMAT, "GGUF metadata %s is an array of %s, not floats",
                 kv->key, kw_gguf_type_name(kv->elem_type));
    const uint64_t u = kw_load_le64(kv->value + (size_t)i * 8);
    memcpy(out, &u, sizeof *out);
    return 0;
}
