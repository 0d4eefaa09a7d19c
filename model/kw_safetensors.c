/* kw_safetensors.c: the safetensors reader (read-only mmap, every header field validated, single file or sharded
 * through model.safetensors.index.json) and the streaming writer (byte-for-byte the layout of the HF writer).
 *
 * It is not a tensor library: tensor data stays raw little-endian bytes inside the mapping, and nothing here
 * converts dtypes. Validation order per file: size >= 8, header length within limits and the file, header is
 * UTF-8 JSON starting with '{' without NUL escapes, no duplicate keys, then each entry, then the coverage of the
 * data area (sorted by offset: no gap, no overlap, nothing after the last tensor).
 */
#include "model/kw_safetensors.h"

#include "common/kw_buf.h"
#include "common/kw_file.h"
#include "common/kw_json.h"
#include "common/kw_size.h"
#include "common/kw_status.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------------------------------------------------------
 * Limits and dtypes
 */

#define KW_ST_MAX_HEADER  ((uint64_t)100 << 20) /* bytes of JSON header per file (HF's reader uses 100 MB too) */
#define KW_ST_MAX_TENSORS ((size_t)1 << 20)     /* tensors per checkpoint, all shards together */
#define KW_ST_MAX_SHARDS  4096
#define KW_ST_MAX_INDEX   ((size_t)64 << 20)    /* bytes of model.safetensors.index.json */
#define KW_ST_MAX_DIM     KW_JSON_MAX_EXACT_INT /* 2^53 - 1: read exactly from a JSON number */

static const char kw_st_index_name[] = "model.safetensors.index.json";
static const char kw_st_single_name[] = "model.safetensors";

/* Safetensors dtype names we accept, and the ones we know but refuse (KW_E_MODEL_DTYPE either way). */
static const struct {
    const char *name;
    enum kw_dtype dtype;
    int rank; /* the HF writer's order: safetensors' Dtype enum, ... U8 < I8 < ... < F16 < BF16 < ... < F32 */
} kw_st_dtypes[] = {
    {"F32", KW_DTYPE_F32, 4}, {"BF16", KW_DTYPE_BF16, 3}, {"F16", KW_DTYPE_F16, 2},
    {"I8", KW_DTYPE_I8, 1},   {"U8", KW_DTYPE_U8, 0},
};
#define KW_ST_N_DTYPES (sizeof kw_st_dtypes / sizeof kw_st_dtypes[0])

/* Safetensors dtype names we accept (any other is KW_E_MODEL_DTYPE). */
static int kw_st_dtype_from_name(const char *s, enum kw_dtype *out) {
    for (size_t i = 0; i < KW_ST_N_DTYPES; ++i)
        if (strcmp(s, kw_st_dtypes[i].name) == 0) {
            *out = kw_st_dtypes[i].dtype;
            return 0;
        }
    return -1;
}

static const char *kw_st_dtype_name(enum kw_dtype d) {
    for (size_t i = 0; i < KW_ST_N_DTYPES; ++i)
        if (kw_st_dtypes[i].dtype == d) return kw_st_dtypes[i].name;
    return NULL;
}

/* Re-records the current detail under another status, with a prefix (copied first: it lives in the buffer
 * kw_error_set writes to). */
static int kw_st_wrap(int status, const char *prefix) {
    char detail[512];
    snprintf(detail, sizeof detail, "%s", kw_error_detail());
    return kw_error_set(status, "%s%s", prefix, detail);
}

static size_t kw_st_dtype_bytes(enum kw_dtype d) {
    return kw_dtype_size(d);
}

/* The HF writer orders tensors by dtype, largest enum value first (safetensors' Dtype enum), then by name. */
static int kw_st_dtype_rank(enum kw_dtype d) {
    for (size_t i = 0; i < KW_ST_N_DTYPES; ++i)
        if (kw_st_dtypes[i].dtype == d) return kw_st_dtypes[i].rank;
    return -1;
}

/* ------------------------------------------------------------------------------------------------------------
 * The opened checkpoint
 */

struct kw_safetensors {
    kw_file_map *maps; /* one per file */
    size_t n_maps;
    int borrowed;          /* 1: the single map is the caller's buffer (kw_safetensors_open_memory), never unmapped */
    kw_st_tensor *tensors; /* file order, shards in index order; names malloc'ed */
    uint32_t *file_of;     /* tensors[i] lives in maps[file_of[i]] */
    size_t count, cap;
    struct kw_st_name *by_name; /* every tensor, sorted by name */
    char **meta;                /* the __metadata__ entries of every file, key and value in turn; malloc'ed */
    size_t n_meta;              /* entries (2 * n_meta strings) */
};

void kw_safetensors_release(const kw_safetensors *st, const kw_st_tensor *t) {
    if (!st || st->borrowed || !t || t < st->tensors || t >= st->tensors + st->count) return;
    const kw_file_map *map = &st->maps[st->file_of[t - st->tensors]];
    kw_file_map_release(map, (size_t)((const unsigned char *)t->data - map->data), t->nbytes);
}

void kw_safetensors_close(kw_safetensors *st) {
    if (!st) return;
    for (size_t i = 0; i < st->count; ++i)
        free((char *)st->tensors[i].name);
    for (size_t i = 0; i < st->n_maps && !st->borrowed; ++i)
        kw_file_unmap(&st->maps[i]);
    free(st->maps);
    free(st->tensors);
    free(st->file_of);
    free(st->by_name);
    for (size_t i = 0; i < 2 * st->n_meta; ++i)
        free(st->meta[i]);
    free(st->meta);
    free(st);
}

size_t kw_safetensors_metadata_count(const kw_safetensors *st) {
    return st ? st->n_meta : 0;
}

int kw_safetensors_metadata_at(const kw_safetensors *st, size_t i, const char **key, const char **value) {
    if (!st || i >= st->n_meta) return 0;
    *key = st->meta[2 * i];
    *value = st->meta[2 * i + 1];
    return 1;
}

const char *kw_safetensors_metadata(const kw_safetensors *st, const char *key) {
    for (size_t i = 0; st && key && i < st->n_meta; ++i)
        if (strcmp(st->meta[2 * i], key) == 0) return st->meta[2 * i + 1];
    return NULL;
}

/* Keeps a copy of one __metadata__ entry. */
static int kw_st_add_meta(kw_safetensors *st, const char *key, const char *value) {
    char **m = realloc(st->meta, 2 * (st->n_meta + 1) * sizeof *m);
    KW_RETURN_IF(!m, KW_E_NOMEM, "out of memory");
    st->meta = m;
    char *k = strdup(key), *v = strdup(value);
    if (!k || !v) {
        free(k);
        free(v);
        KW_FAIL(KW_E_NOMEM, "out of memory");
    }
    m[2 * st->n_meta] = k;
    m[2 * st->n_meta + 1] = v;
    ++st->n_meta;
    return 0;
}

size_t kw_safetensors_count(const kw_safetensors *st) {
    return st ? st->count : 0;
}

const kw_st_tensor *kw_safetensors_at(const kw_safetensors *st, size_t i) {
    return st && i < st->count ? &st->tensors[i] : NULL;
}

/* A name with the index of its tensor (also used by the writer, where rank orders dtypes first). */
struct kw_st_name {
    const char *name;
    size_t idx;
    int rank;
};

static int kw_st_cmp_name(const void *a, const void *b) {
    const struct kw_st_name *x = a, *y = b;
    if (x->rank != y->rank) return y->rank - x->rank;
    const int c = strcmp(x->name, y->name);
    return c ? c : (x->idx > y->idx) - (x->idx < y->idx);
}

/* Lower bound of name in by_name, or count. */
static size_t kw_st_lookup(const kw_safetensors *st, const char *name) {
    size_t lo = 0, hi = st->count;
    while (lo < hi) {
        const size_t mid = lo + (hi - lo) / 2;
        if (strcmp(st->by_name[mid].name, name) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < st->count && strcmp(st->by_name[lo].name, name) == 0 ? lo : st->count;
}

const kw_st_tensor *kw_safetensors_find(const kw_safetensors *st, const char *name) {
    if (!st || !name || !st->by_name) return NULL;
    const size_t k = kw_st_lookup(st, name);
    return k < st->count ? &st->tensors[st->by_name[k].idx] : NULL;
}

/* ------------------------------------------------------------------------------------------------------------
 * Header checks
 */

/* Strict UTF-8: no overlongs, no surrogates, nothing above U+10FFFF; NUL bytes refused too. */
static int kw_st_utf8_ok(const unsigned char *s, size_t n, size_t *bad_at) {
    size_t i = 0;
    while (i < n) {
        const unsigned c = s[i];
        size_t len;
        unsigned cp;
        if (c == 0) goto bad;
        if (c < 0x80) {
            ++i;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf)
            len = 2, cp = c & 0x1f;
        else if (c >= 0xe0 && c <= 0xef)
            len = 3, cp = c & 0x0f;
        else if (c >= 0xf0 && c <= 0xf4)
            len = 4, cp = c & 0x07;
        else
            goto bad;
        if (n - i < len) goto bad;
        for (size_t k = 1; k < len; ++k) {
            if ((s[i + k] & 0xc0) != 0x80) goto bad;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
            (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
            goto bad;
        i += len;
    }
    return 1;
bad:
    *bad_at = i;
    return 0;
}

/* cJSON cuts strings at an escaped NUL ("\u0000"), which could silently rename a tensor: refuse the escape. */
static int kw_st_has_nul_escape(const char *s, size_t n) {
    for (size_t i = 0; i + 1 < n; ++i) {
        if (s[i] != '\\') continue;
        if (s[i + 1] == 'u' && i + 5 < n && s[i + 2] == '0' && s[i + 3] == '0' && s[i + 4] == '0' && s[i + 5] == '0')
            return 1;
        ++i; /* skip the escaped character (so "\\u0000" is a backslash followed by text) */
    }
    return 0;
}

static int kw_st_cmp_str_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* cJSON keeps duplicate object keys; JSON headers with them are ambiguous, so refuse them. */
static int kw_st_check_unique_keys(const cJSON *obj, const char *what) {
    size_t n = 0;
    for (const cJSON *c = obj->child; c; c = c->next)
        ++n;
    if (n < 2) return 0;
    const char **keys = malloc(n * sizeof *keys);
    KW_RETURN_IF(!keys, KW_E_NOMEM, "out of memory checking %zu keys of %s", n, what);
    size_t k = 0;
    for (const cJSON *c = obj->child; c; c = c->next)
        keys[k++] = c->string ? c->string : "";
    qsort(keys, n, sizeof *keys, kw_st_cmp_str_ptr);
    int rc = 0;
    for (size_t i = 1; i < n; ++i) {
        if (strcmp(keys[i - 1], keys[i]) == 0) {
            rc = kw_error_set(KW_E_MODEL_FORMAT, "%s: duplicate key \"%s\"", what, keys[i]);
            break;
        }
    }
    free(keys);
    return rc;
}

static int kw_st_grow(kw_safetensors *st) {
    if (st->count < st->cap) return 0;
    const size_t cap = st->cap ? st->cap * 2 : 64;
    kw_st_tensor *t = realloc(st->tensors, cap * sizeof *t);
    KW_RETURN_IF(!t, KW_E_NOMEM, "out of memory for %zu tensors", cap);
    st->tensors = t;
    uint32_t *f = realloc(st->file_of, cap * sizeof *f);
    KW_RETURN_IF(!f, KW_E_NOMEM, "out of memory for %zu tensors", cap);
    st->file_of = f;
    st->cap = cap;
    return 0;
}

/* Parses one tensor entry of a header into *t (name not set). data_size is the size of the data area. */
static int kw_st_parse_entry(const cJSON *entry, const char *path, const char *name, const unsigned char *data,
                             size_t data_size, kw_st_tensor *t) {
    KW_RETURN_IF(!cJSON_IsObject(entry), KW_E_MODEL_FORMAT, "%s: tensor \"%s\" is not a JSON object", path, name);
    const cJSON *dtype = NULL, *shape = NULL, *offsets = NULL;
    for (const cJSON *c = entry->child; c; c = c->next) {
        const cJSON **slot = strcmp(c->string, "dtype") == 0          ? &dtype
                             : strcmp(c->string, "shape") == 0        ? &shape
                             : strcmp(c->string, "data_offsets") == 0 ? &offsets
                                                                      : NULL;
        KW_RETURN_IF(!slot, KW_E_MODEL_FORMAT, "%s: tensor \"%s\" has an unknown field \"%s\"", path, name, c->string);
        KW_RETURN_IF(*slot, KW_E_MODEL_FORMAT, "%s: tensor \"%s\" repeats the field \"%s\"", path, name, c->string);
        *slot = c;
    }
    KW_RETURN_IF(!dtype || !shape || !offsets, KW_E_MODEL_FORMAT, "%s: tensor \"%s\" lacks \"%s\"", path, name,
                 !dtype   ? "dtype"
                 : !shape ? "shape"
                          : "data_offsets");

    KW_RETURN_IF(!cJSON_IsString(dtype), KW_E_MODEL_FORMAT, "%s: tensor \"%s\": dtype is not a string", path, name);
    KW_RETURN_IF(kw_st_dtype_from_name(dtype->valuestring, &t->dtype) < 0, KW_E_MODEL_DTYPE,
                 "%s: tensor \"%s\" has dtype %s; only F32, BF16, F16, I8 and U8 are supported", path, name,
                 dtype->valuestring);
    const size_t esize = kw_st_dtype_bytes(t->dtype);

    KW_RETURN_IF(!cJSON_IsArray(shape), KW_E_MODEL_FORMAT, "%s: tensor \"%s\": shape is not an array", path, name);
    const int ndim = cJSON_GetArraySize(shape);
    KW_RETURN_IF(ndim > KW_SAFETENSORS_MAX_DIMS, KW_E_LIMIT, "%s: tensor \"%s\" has %d dimensions (at most %d)", path,
                 name, ndim, KW_SAFETENSORS_MAX_DIMS);
    t->ndim = ndim;
    size_t nbytes = esize;
    int k = 0;
    for (const cJSON *d = shape->child; d; d = d->next, ++k) {
        int64_t v = 0;
        KW_RETURN_IF(kw_json_to_i64(d, 0, KW_ST_MAX_DIM, &v) < 0, KW_E_MODEL_FORMAT,
                     "%s: tensor \"%s\": shape[%d] is not an integer in [0, 2^53 - 1]", path, name, k);
        t->shape[k] = v;
        KW_RETURN_IF(kw_size_mul(nbytes, (size_t)v, &nbytes) < 0, KW_E_MODEL_FORMAT,
                     "%s: tensor \"%s\": shape overflows the address space", path, name);
    }
    for (; k < KW_SAFETENSORS_MAX_DIMS; ++k)
        t->shape[k] = 0;

    KW_RETURN_IF(!cJSON_IsArray(offsets) || cJSON_GetArraySize(offsets) != 2, KW_E_MODEL_FORMAT,
                 "%s: tensor \"%s\": data_offsets is not an array of two integers", path, name);
    int64_t begin = 0, end = 0;
    KW_RETURN_IF(kw_json_to_i64(offsets->child, 0, KW_ST_MAX_DIM, &begin) < 0 ||
                     kw_json_to_i64(offsets->child->next, 0, KW_ST_MAX_DIM, &end) < 0,
                 KW_E_MODEL_FORMAT, "%s: tensor \"%s\": data_offsets must be integers in [0, 2^53 - 1]", path, name);
    KW_RETURN_IF(end < begin, KW_E_MODEL_FORMAT, "%s: tensor \"%s\": data_offsets end %lld < start %lld", path, name,
                 (long long)end, (long long)begin);
    KW_RETURN_IF((uint64_t)end > (uint64_t)data_size, KW_E_MODEL_FORMAT,
                 "%s: tensor \"%s\": data_offsets end %lld is past the data area (%zu bytes)", path, name,
                 (long long)end, data_size);
    KW_RETURN_IF((uint64_t)(end - begin) != (uint64_t)nbytes, KW_E_MODEL_FORMAT,
                 "%s: tensor \"%s\": data_offsets span %lld bytes but shape x %s needs %zu", path, name,
                 (long long)(end - begin), dtype->valuestring, nbytes);
    t->data = data + begin;
    t->nbytes = nbytes;
    /* Consumers alias the mapping as arrays of elements: refuse data that is not aligned to its element size (the
     * HF writer always aligns it: an 8-byte padded header and tensors sorted by decreasing dtype size). */
    KW_RETURN_IF(((uintptr_t)t->data % esize) != 0, KW_E_MODEL_FORMAT,
                 "%s: tensor \"%s\": data at offset %lld is not aligned to its %zu-byte elements", path, name,
                 (long long)begin, esize);
    return 0;
}

static int kw_st_cmp_offset(const void *a, const void *b) {
    const kw_st_tensor *x = a, *y = b;
    if (x->data != y->data) return x->data < y->data ? -1 : 1;
    if (x->nbytes != y->nbytes) return x->nbytes < y->nbytes ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* Validates the header of maps[file] and appends its tensors to st in offset order. */
static int kw_st_parse_file(kw_safetensors *st, uint32_t file, const char *path) {
    const kw_file_map *map = &st->maps[file];
    KW_RETURN_IF(map->size < 8, KW_E_MODEL_FORMAT, "%s: %zu bytes, too short for the 8-byte header length", path,
                 map->size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; --i)
        hlen = hlen << 8 | map->data[i];
    KW_RETURN_IF(hlen > KW_ST_MAX_HEADER, KW_E_LIMIT, "%s: header length %llu exceeds the limit of %llu bytes", path,
                 (unsigned long long)hlen, (unsigned long long)KW_ST_MAX_HEADER);
    KW_RETURN_IF(hlen > map->size - 8, KW_E_MODEL_FORMAT,
                 "%s: header length %llu is past the end of the file (%zu bytes)", path, (unsigned long long)hlen,
                 map->size);
    const char *header = (const char *)map->data + 8;
    KW_RETURN_IF(hlen < 2 || header[0] != '{', KW_E_MODEL_FORMAT, "%s: header does not start with '{'", path);
    size_t bad = 0;
    KW_RETURN_IF(!kw_st_utf8_ok((const unsigned char *)header, (size_t)hlen, &bad), KW_E_MODEL_FORMAT,
                 "%s: header is not valid UTF-8 text (byte %zu)", path, bad);
    KW_RETURN_IF(kw_st_has_nul_escape(header, (size_t)hlen), KW_E_MODEL_FORMAT, "%s: header contains a \\u0000 escape",
                 path);
    const unsigned char *data = map->data + 8 + hlen;
    const size_t data_size = map->size - 8 - (size_t)hlen;

    int rc = 0;
    cJSON *root = NULL;
    const size_t first = st->count;
    rc = kw_json_parse(header, (size_t)hlen, &root);
    if (rc < 0) {
        char prefix[512];
        snprintf(prefix, sizeof prefix, "%s: header is not JSON: ", path);
        rc = kw_st_wrap(KW_E_MODEL_FORMAT, prefix);
        goto out;
    }
    KW_CHECK_IF(!cJSON_IsObject(root), KW_E_MODEL_FORMAT, "%s: header is not a JSON object", path);
    KW_CHECK(kw_st_check_unique_keys(root, path));

    for (const cJSON *e = root->child; e; e = e->next) {
        if (strcmp(e->string, "__metadata__") == 0) {
            if (cJSON_IsNull(e)) continue; /* HF's reader treats a null __metadata__ as absent */
            KW_CHECK_IF(!cJSON_IsObject(e), KW_E_MODEL_FORMAT, "%s: \"__metadata__\" is not an object", path);
            for (const cJSON *m = e->child; m; m = m->next) {
                KW_CHECK_IF(!cJSON_IsString(m), KW_E_MODEL_FORMAT,
                            "%s: \"__metadata__\" value of \"%s\" is not a string", path, m->string);
                KW_CHECK(kw_st_add_meta(st, m->string, m->valuestring));
            }
            continue;
        }
        KW_CHECK_IF(e->string[0] == '\0', KW_E_MODEL_FORMAT, "%s: a tensor has an empty name", path);
        KW_CHECK_IF(st->count >= KW_ST_MAX_TENSORS, KW_E_LIMIT, "%s: more than %zu tensors", path, KW_ST_MAX_TENSORS);
        KW_CHECK(kw_st_grow(st));
        kw_st_tensor *t = &st->tensors[st->count];
        memset(t, 0, sizeof *t);
        KW_CHECK(kw_st_parse_entry(e, path, e->string, data, data_size, t));
        t->name = strdup(e->string);
        KW_CHECK_IF(!t->name, KW_E_NOMEM, "out of memory");
        st->file_of[st->count++] = file;
    }

    /* Coverage: sorted by offset, the tensors must tile the data area exactly. */
    if (st->count > first) qsort(st->tensors + first, st->count - first, sizeof *st->tensors, kw_st_cmp_offset);
    size_t pos = 0;
    for (size_t i = first; i < st->count; ++i) {
        const kw_st_tensor *t = &st->tensors[i];
        const size_t begin = (size_t)((const unsigned char *)t->data - data);
        KW_CHECK_IF(begin < pos, KW_E_MODEL_FORMAT, "%s: tensors \"%s\" and \"%s\" overlap", path,
                    st->tensors[i - 1].name, t->name);
        KW_CHECK_IF(begin > pos, KW_E_MODEL_FORMAT, "%s: %zu unused bytes before tensor \"%s\"", path, begin - pos,
                    t->name);
        pos = begin + t->nbytes;
    }
    KW_CHECK_IF(pos != data_size, KW_E_MODEL_FORMAT, "%s: %zu bytes after the last tensor are not described", path,
                data_size - pos);
out:
    cJSON_Delete(root);
    return rc;
}

static int kw_st_add_map(kw_safetensors *st, const char *path) {
    kw_file_map *m = realloc(st->maps, (st->n_maps + 1) * sizeof *m);
    KW_RETURN_IF(!m, KW_E_NOMEM, "out of memory");
    st->maps = m;
    KW_FORWARD(kw_file_map_open(path, &st->maps[st->n_maps]));
    ++st->n_maps;
    return kw_st_parse_file(st, (uint32_t)(st->n_maps - 1), path);
}

static int kw_st_build_name_index(kw_safetensors *st, char *const *shard_names) {
    if (st->count == 0) return 0;
    st->by_name = malloc(st->count * sizeof *st->by_name);
    KW_RETURN_IF(!st->by_name, KW_E_NOMEM, "out of memory");
    for (size_t i = 0; i < st->count; ++i)
        st->by_name[i] = (struct kw_st_name){st->tensors[i].name, i, 0};
    qsort(st->by_name, st->count, sizeof *st->by_name, kw_st_cmp_name);
    for (size_t i = 1; i < st->count; ++i) {
        const size_t a = st->by_name[i - 1].idx, b = st->by_name[i].idx;
        if (strcmp(st->tensors[a].name, st->tensors[b].name) != 0) continue;
        if (shard_names)
            KW_FAIL(KW_E_MODEL_FORMAT, "tensor \"%s\" appears twice (in shards %s and %s)", st->tensors[a].name,
                    shard_names[st->file_of[a]], shard_names[st->file_of[b]]);
        KW_FAIL(KW_E_MODEL_FORMAT, "tensor \"%s\" appears twice", st->tensors[a].name);
    }
    return 0;
}

/* A shard name from an index must be a plain file name in the checkpoint's folder. */
static int kw_st_shard_name_ok(const char *s) {
    return s[0] != '\0' && strchr(s, '/') == NULL && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

static int kw_st_open_sharded(kw_safetensors *st, const char *dir, const char *index_path) {
    int rc = 0;
    cJSON *root = NULL;
    char **shards = NULL;
    size_t n_shards = 0;
    char *shard_path = NULL, *text = NULL;
    size_t text_len = 0;
    KW_CHECK(kw_file_read_all(index_path, KW_ST_MAX_INDEX, &text, &text_len));
    rc = kw_json_parse(text, text_len, &root);
    if (rc < 0) {
        char prefix[512];
        snprintf(prefix, sizeof prefix, "%s: ", index_path);
        rc = kw_st_wrap(KW_E_MODEL_FORMAT, prefix);
        goto out;
    }
    KW_CHECK_IF(!cJSON_IsObject(root), KW_E_MODEL_FORMAT, "%s: not a JSON object", index_path);
    KW_CHECK(kw_st_check_unique_keys(root, index_path));
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(root, "metadata");
    if (meta && !cJSON_IsNull(meta)) {
        KW_CHECK_IF(!cJSON_IsObject(meta), KW_E_MODEL_FORMAT, "%s: \"metadata\" is not an object", index_path);
        const cJSON *total = cJSON_GetObjectItemCaseSensitive(meta, "total_size");
        int64_t v = 0;
        KW_CHECK_IF(total && !cJSON_IsNull(total) && kw_json_to_i64(total, 0, INT64_MAX, &v) < 0, KW_E_MODEL_FORMAT,
                    "%s: metadata.total_size is not a non-negative integer", index_path);
    }
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    KW_CHECK_IF(!cJSON_IsObject(map), KW_E_MODEL_FORMAT, "%s: \"weight_map\" is missing or not an object", index_path);
    KW_CHECK(kw_st_check_unique_keys(map, index_path));

    /* Distinct shard names in order of first appearance. */
    size_t n_entries = 0;
    for (const cJSON *e = map->child; e; e = e->next, ++n_entries) {
        KW_CHECK_IF(!cJSON_IsString(e), KW_E_MODEL_FORMAT, "%s: weight_map[\"%s\"] is not a string", index_path,
                    e->string);
        KW_CHECK_IF(!kw_st_shard_name_ok(e->valuestring), KW_E_MODEL_FORMAT,
                    "%s: weight_map[\"%s\"] = \"%s\" is not a file name in the model folder", index_path, e->string,
                    e->valuestring);
        size_t k = 0;
        while (k < n_shards && strcmp(shards[k], e->valuestring) != 0)
            ++k;
        if (k < n_shards) continue;
        KW_CHECK_IF(n_shards >= KW_ST_MAX_SHARDS, KW_E_LIMIT, "%s: more than %d shards", index_path, KW_ST_MAX_SHARDS);
        char **grown = realloc(shards, (n_shards + 1) * sizeof *shards);
        KW_CHECK_IF(!grown, KW_E_NOMEM, "out of memory");
        shards = grown;
        shards[n_shards] = e->valuestring;
        ++n_shards;
    }
    KW_CHECK_IF(n_shards == 0, KW_E_MODEL_FORMAT, "%s: weight_map is empty", index_path);

    for (size_t k = 0; k < n_shards; ++k) {
        free(shard_path);
        shard_path = kw_path_join(dir, shards[k]);
        KW_CHECK_IF(!shard_path, KW_E_NOMEM, "out of memory");
        KW_CHECK_IF(!kw_path_is_file(shard_path), KW_E_NOT_FOUND, "%s references shard %s, which does not exist",
                    index_path, shard_path);
        KW_CHECK(kw_st_add_map(st, shard_path));
    }
    KW_CHECK(kw_st_build_name_index(st, shards));

    /* Every listed tensor is in the shard the index names; nothing in a shard is unlisted. */
    for (const cJSON *e = map->child; e; e = e->next) {
        const size_t k = kw_st_lookup(st, e->string);
        KW_CHECK_IF(k == st->count, KW_E_MODEL_FORMAT, "%s lists tensor \"%s\" in %s, which does not hold it",
                    index_path, e->string, e->valuestring);
        const uint32_t f = st->file_of[st->by_name[k].idx];
        KW_CHECK_IF(strcmp(shards[f], e->valuestring) != 0, KW_E_MODEL_FORMAT,
                    "%s lists tensor \"%s\" in %s, but it is in %s", index_path, e->string, e->valuestring, shards[f]);
    }
    /* The weight_map keys are unique and each matched a distinct tensor, so equal counts mean no extra tensors. */
    if (st->count != n_entries) {
        for (size_t i = 0; i < st->count; ++i) {
            KW_CHECK_IF(!cJSON_GetObjectItemCaseSensitive(map, st->tensors[i].name), KW_E_MODEL_FORMAT,
                        "shard %s holds tensor \"%s\", which %s does not list", shards[st->file_of[i]],
                        st->tensors[i].name, index_path);
        }
        KW_CHECK_IF(1, KW_E_INTERNAL, "tensor count mismatch in %s", index_path);
    }
out:
    free(text);
    free(shard_path);
    free(shards);
    cJSON_Delete(root);
    return rc;
}

/* A path naming an index file directly ("....safetensors.index.json"). */
static int kw_st_is_index_path(const char *path) {
    static const char suffix[] = ".safetensors.index.json";
    const size_t n = strlen(path), k = sizeof suffix - 1;
    return n >= k && strcmp(path + n - k, suffix) == 0;
}

int kw_safetensors_open(const char *path, kw_safetensors **out) {
    KW_RETURN_IF(!path || !out, KW_E_INVALID_ARG, "kw_safetensors_open: NULL argument");
    *out = NULL;
    int rc = 0;
    char *index = NULL, *single = NULL;
    kw_safetensors *st = calloc(1, sizeof *st);
    KW_RETURN_IF(!st, KW_E_NOMEM, "out of memory");
    if (kw_path_is_dir(path)) {
        index = kw_path_join(path, kw_st_index_name);
        single = kw_path_join(path, kw_st_single_name);
        KW_CHECK_IF(!index || !single, KW_E_NOMEM, "out of memory");
        if (kw_path_is_file(index)) {
            KW_CHECK(kw_st_open_sharded(st, path, index));
        } else {
            KW_CHECK_IF(!kw_path_is_file(single), KW_E_NOT_FOUND, "%s holds neither %s nor %s", path, kw_st_index_name,
                        kw_st_single_name);
            KW_CHECK(kw_st_add_map(st, single));
            KW_CHECK(kw_st_build_name_index(st, NULL));
        }
    } else if (kw_st_is_index_path(path)) {
        const char *slash = strrchr(path, '/');
        index = slash ? strndup(path, (size_t)(slash - path) + 1) : strdup("./");
        KW_CHECK_IF(!index, KW_E_NOMEM, "out of memory");
        KW_CHECK(kw_st_open_sharded(st, index, path));
    } else {
        KW_CHECK(kw_st_add_map(st, path));
        KW_CHECK(kw_st_build_name_index(st, NULL));
    }
    *out = st;
    st = NULL;
out:
    kw_safetensors_close(st);
    free(index);
    free(single);
    return rc;
}

int kw_safetensors_open_memory(const void *data, size_t size, kw_safetensors **out) {
    KW_RETURN_IF(!out || (!data && size > 0), KW_E_INVALID_ARG, "kw_safetensors_open_memory: NULL argument");
    *out = NULL;
    int rc = 0;
    kw_safetensors *st = calloc(1, sizeof *st);
    KW_RETURN_IF(!st, KW_E_NOMEM, "out of memory");
    st->borrowed = 1;
    st->maps = calloc(1, sizeof *st->maps);
    KW_CHECK_IF(!st->maps, KW_E_NOMEM, "out of memory");
    st->maps[0].data = data;
    st->maps[0].size = size;
    st->n_maps = 1;
    KW_CHECK(kw_st_parse_file(st, 0, "(memory)"));
    KW_CHECK(kw_st_build_name_index(st, NULL));
    *out = st;
    st = NULL;
out:
    kw_safetensors_close(st);
    return rc;
}

/* ------------------------------------------------------------------------------------------------------------
 * Writer
 */

struct kw_st_writer {
    FILE *fp;
    char *path, *tmp_path;
    size_t *order; /* order[i]: caller's index of the i-th tensor in the file */
    size_t count;
    uint64_t data_total; /* bytes the data area must hold */
    uint64_t data_written;
    int finished;
};

/* s as a JSON string literal: kw_json_append_string grows the buffer's own (data, len, cap) triple, with the same
 * malloc ownership and terminator. */
static int kw_st_append_str(kw_buf *b, const char *s) {
    KW_RETURN_IF(kw_json_append_string(&b->data, &b->len, &b->cap, s, strlen(s)) < 0, KW_E_NOMEM, "out of memory");
    return 0;
}

/* The metadata object, re-emitted compactly with keys sorted (string->string only). */
static int kw_st_append_metadata(kw_buf *b, const char *metadata_json) {
    int rc = 0;
    cJSON *root = NULL;
    const char **keys = NULL;
    rc = kw_json_parse(metadata_json, strlen(metadata_json), &root);
    if (rc < 0) {
        rc = kw_st_wrap(KW_E_INVALID_ARG, "safetensors metadata is not JSON: ");
        goto out;
    }
    KW_CHECK_IF(!cJSON_IsObject(root), KW_E_INVALID_ARG, "safetensors metadata is not a JSON object");
    rc = kw_st_check_unique_keys(root, "safetensors metadata");
    if (rc < 0) {
        rc = kw_st_wrap(KW_E_INVALID_ARG, "");
        goto out;
    }
    size_t n = 0;
    for (const cJSON *c = root->child; c; c = c->next, ++n)
        KW_CHECK_IF(!cJSON_IsString(c), KW_E_INVALID_ARG, "safetensors metadata value of \"%s\" is not a string",
                    c->string);
    keys = malloc((n ? n : 1) * sizeof *keys);
    KW_CHECK_IF(!keys, KW_E_NOMEM, "out of memory");
    n = 0;
    for (const cJSON *c = root->child; c; c = c->next)
        keys[n++] = c->string;
    qsort(keys, n, sizeof *keys, kw_st_cmp_str_ptr);
    KW_CHECK(kw_buf_append_str(b, "\"__metadata__\":{"));
    for (size_t i = 0; i < n; ++i) {
        if (i) KW_CHECK(kw_buf_append_str(b, ","));
        KW_CHECK(kw_st_append_str(b, keys[i]));
        KW_CHECK(kw_buf_append_str(b, ":"));
        KW_CHECK(kw_st_append_str(b, cJSON_GetObjectItemCaseSensitive(root, keys[i])->valuestring));
    }
    KW_CHECK(kw_buf_append_str(b, "}"));
out:
    free(keys);
    cJSON_Delete(root);
    return rc;
}

static int kw_st_tensor_bytes(const kw_st_write_tensor *t, size_t *out) {
    KW_RETURN_IF(!t->name || !t->name[0] || strcmp(t->name, "__metadata__") == 0, KW_E_INVALID_ARG,
                 "safetensors writer: invalid tensor name \"%s\"", t->name ? t->name : "(null)");
    KW_RETURN_IF(!kw_st_dtype_name(t->dtype), KW_E_INVALID_ARG, "safetensors writer: tensor \"%s\" has dtype %d",
                 t->name, (int)t->dtype);
    KW_RETURN_IF(t->ndim < 0 || t->ndim > KW_SAFETENSORS_MAX_DIMS, KW_E_INVALID_ARG,
                 "safetensors writer: tensor \"%s\" has %d dimensions", t->name, (int)t->ndim);
    size_t n = kw_st_dtype_bytes(t->dtype);
    for (int32_t k = 0; k < t->ndim; ++k) {
        KW_RETURN_IF(t->shape[k] < 0 || t->shape[k] > KW_ST_MAX_DIM, KW_E_INVALID_ARG,
                     "safetensors writer: tensor \"%s\" has dimension %lld", t->name, (long long)t->shape[k]);
        KW_RETURN_IF(kw_size_mul(n, (size_t)t->shape[k], &n) < 0, KW_E_OVERFLOW,
                     "safetensors writer: tensor \"%s\" is too large", t->name);
    }
    *out = n;
    return 0;
}

void kw_st_writer_close(kw_st_writer *w) {
    if (!w) return;
    if (w->fp) fclose(w->fp);
    if (!w->finished && w->tmp_path) unlink(w->tmp_path);
    free(w->path);
    free(w->tmp_path);
    free(w->order);
    free(w);
}

int kw_st_writer_open(const char *path, const kw_st_write_tensor *tensors, size_t count, const char *metadata_json,
                      kw_st_writer **out) {
    KW_RETURN_IF(!path || !out || (count && !tensors), KW_E_INVALID_ARG, "kw_st_writer_open: NULL argument");
    *out = NULL;
    KW_RETURN_IF(count > KW_ST_MAX_TENSORS, KW_E_LIMIT, "safetensors writer: %zu tensors (at most %zu)", count,
                 KW_ST_MAX_TENSORS);
    int rc = 0;
    kw_buf hdr = KW_BUF_INIT;
    struct kw_st_name *sorted = NULL;
    kw_st_writer *w = calloc(1, sizeof *w);
    KW_RETURN_IF(!w, KW_E_NOMEM, "out of memory");
    w->count = count;
    w->order = malloc((count ? count : 1) * sizeof *w->order);
    sorted = malloc((count ? count : 1) * sizeof *sorted);
    KW_CHECK_IF(!w->order || !sorted, KW_E_NOMEM, "out of memory");
    for (size_t i = 0; i < count; ++i) {
        size_t nbytes = 0;
        KW_CHECK(kw_st_tensor_bytes(&tensors[i], &nbytes));
        sorted[i] = (struct kw_st_name){tensors[i].name, i, 0};
    }
    /* Names must be unique whatever their dtypes. */
    qsort(sorted, count, sizeof *sorted, kw_st_cmp_name);
    for (size_t i = 1; i < count; ++i)
        KW_CHECK_IF(strcmp(sorted[i - 1].name, sorted[i].name) == 0, KW_E_INVALID_ARG,
                    "safetensors writer: tensor \"%s\" given twice", sorted[i].name);
    /* The HF order: dtype rank (F32, BF16, F16), then name. */
    for (size_t i = 0; i < count; ++i)
        sorted[i].rank = kw_st_dtype_rank(tensors[sorted[i].idx].dtype);
    qsort(sorted, count, sizeof *sorted, kw_st_cmp_name);
    for (size_t i = 0; i < count; ++i)
        w->order[i] = sorted[i].idx;

    KW_CHECK(kw_buf_append_str(&hdr, "{"));
    if (metadata_json) KW_CHECK(kw_st_append_metadata(&hdr, metadata_json));
    uint64_t offset = 0;
    for (size_t i = 0; i < count; ++i) {
        const kw_st_write_tensor *t = &tensors[w->order[i]];
        size_t nbytes = 0;
        KW_CHECK(kw_st_tensor_bytes(t, &nbytes));
        if (i || metadata_json) KW_CHECK(kw_buf_append_str(&hdr, ","));
        KW_CHECK(kw_st_append_str(&hdr, t->name));
        KW_CHECK(kw_buf_printf(&hdr, ":{\"dtype\":\"%s\",\"shape\":[", kw_st_dtype_name(t->dtype)));
        for (int32_t k = 0; k < t->ndim; ++k)
            KW_CHECK(kw_buf_printf(&hdr, "%s%lld", k ? "," : "", (long long)t->shape[k]));
        KW_CHECK(kw_buf_printf(&hdr, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)offset,
                               (unsigned long long)(offset + nbytes)));
        offset += nbytes;
    }
    KW_CHECK(kw_buf_append_str(&hdr, "}"));
    while (hdr.len % 8)
        KW_CHECK(kw_buf_append_str(&hdr, " "));
    const size_t len = hdr.len;
    KW_CHECK_IF(len > KW_ST_MAX_HEADER, KW_E_LIMIT, "safetensors writer: header of %zu bytes is too large", len);
    w->data_total = offset;

    w->path = strdup(path);
    const size_t plen = strlen(path) + 32;
    w->tmp_path = malloc(plen);
    KW_CHECK_IF(!w->path || !w->tmp_path, KW_E_NOMEM, "out of memory");
    snprintf(w->tmp_path, plen, "%s.tmp%ld", path, (long)getpid());
    w->fp = fopen(w->tmp_path, "wb");
    KW_CHECK_IF(!w->fp, KW_E_IO, "create %s: %s", w->tmp_path, strerror(errno));
    unsigned char lenbuf[8];
    for (int i = 0; i < 8; ++i)
        lenbuf[i] = (unsigned char)((uint64_t)len >> (8 * i));
    KW_CHECK_IF(fwrite(lenbuf, 1, 8, w->fp) != 8 || fwrite(hdr.data, 1, len, w->fp) != len, KW_E_IO, "write %s: %s",
                w->tmp_path, strerror(errno));
    *out = w;
    w = NULL;
out:
    kw_buf_free(&hdr);
    free(sorted);
    kw_st_writer_close(w);
    return rc;
}

size_t kw_st_writer_order(const kw_st_writer *w, size_t i) {
    return w && i < w->count ? w->order[i] : (size_t)-1;
}

int kw_st_writer_write(kw_st_writer *w, const void *data, size_t size) {
    KW_RETURN_IF(!w || !w->fp || (size && !data), KW_E_INVALID_ARG, "kw_st_writer_write: bad argument");
    KW_RETURN_IF(size > w->data_total - w->data_written, KW_E_INVALID_ARG,
                 "safetensors writer: %zu bytes more than the tensors declare", size);
    if (size == 0) return 0;
    KW_RETURN_IF(fwrite(data, 1, size, w->fp) != size, KW_E_IO, "write %s: %s", w->tmp_path, strerror(errno));
    w->data_written += size;
    return 0;
}

int kw_st_writer_finish(kw_st_writer *w) {
    KW_RETURN_IF(!w || !w->fp, KW_E_INVALID_ARG, "kw_st_writer_finish: bad argument");
    KW_RETURN_IF(w->data_written != w->data_total, KW_E_STATE, "safetensors writer: %llu of %llu data bytes written",
                 (unsigned long long)w->data_written, (unsigned long long)w->data_total);
    FILE *fp = w->fp;
    w->fp = NULL;
    int bad = fflush(fp) != 0 || fsync(fileno(fp)) != 0;
    const int e = errno;
    bad |= fclose(fp) != 0;
    KW_RETURN_IF(bad, KW_E_IO, "write %s: %s", w->tmp_path, strerror(e ? e : errno));
    KW_RETURN_IF(rename(w->tmp_path, w->path) != 0, KW_E_IO, "rename %s -> %s: %s", w->tmp_path, w->path,
                 strerror(errno));
    w->finished = 1;
    return 0;
}

int kw_safetensors_write(const char *path, const kw_st_write_tensor *tensors, size_t count, const char *metadata_json) {
    int rc = 0;
    kw_st_writer *w = NULL;
    KW_CHECK(kw_st_writer_open(path, tensors, count, metadata_json, &w));
    for (size_t i = 0; i < count; ++i) {
        const kw_st_write_tensor *t = &tensors[kw_st_writer_order(w, i)];
        size_t nbytes = 0;
        KW_CHECK(kw_st_tensor_bytes(t, &nbytes));
        KW_CHECK_IF(nbytes && !t->data, KW_E_INVALID_ARG, "safetensors writer: tensor \"%s\" has no data", t->name);
        KW_CHECK(kw_st_writer_write(w, t->data, nbytes));
    }
    KW_CHECK(kw_st_writer_finish(w));
out:
    kw_st_writer_close(w);
    return rc;
}
