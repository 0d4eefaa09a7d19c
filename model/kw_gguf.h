/* kw_gguf.h: reading GGUF files (the llama.cpp / ggml model format, versions 2 and 3, little-endian).
 *
 * Layout: "GGUF", u32 version, u64 tensor_count, u64 kv_count; kv_count metadata entries (key string, u32 value
 * type, value; a string is a u64 length and bytes; an array is a u32 element type, a u64 count and the elements);
 * tensor_count tensor infos (name, u32 n_dims, u64 dims innermost first, u32 ggml type, u64 offset); padding to the
 * alignment (general.alignment, default 32); the tensor data, each tensor at data start + offset.
 *
 * kw_gguf_open maps the file read-only and validates everything before exposing it: every count, length and offset
 * is checked against the bytes that remain before it is used (and before anything is allocated from it), strings
 * hold no NUL, keys and tensor names are unique, arrays of arrays are refused, the alignment is a power of two, every
 * tensor has 1..4 dimensions of at least one element, a known ggml type whose block size divides its rows, an
 * aligned offset, and data inside the file that overlaps no other tensor. Malformed files give KW_E_MODEL_FORMAT
 * (KW_E_MODEL_DTYPE for an unknown type) with the offending field and its byte offset in kw_error_detail().
 * Metadata and tensor data stay in the mapping; names and keys are copied (NUL-terminated). A kw_gguf is immutable
 * after open and may be read by many threads.
 *
 * Not here: what the keys mean (kw_gguf_model.h), dequantization (kw_dequant.h), writing GGUF files.
 */
#ifndef KW_GGUF_H
#define KW_GGUF_H

#include <stddef.h>
#include <stdint.h>

/* GGUF metadata value types (gguf_type), as stored in the file. */
enum kw_gguf_type {
    KW_GGUF_UINT8 = 0,
    KW_GGUF_INT8 = 1,
    KW_GGUF_UINT16 = 2,
    KW_GGUF_INT16 = 3,
    KW_GGUF_UINT32 = 4,
    KW_GGUF_INT32 = 5,
    KW_GGUF_FLOAT32 = 6,
    KW_GGUF_BOOL = 7,
    KW_GGUF_STRING = 8,
    KW_GGUF_ARRAY = 9,
    KW_GGUF_UINT64 = 10,
    KW_GGUF_INT64 = 11,
    KW_GGUF_FLOAT64 = 12,
    KW_GGUF_TYPE_COUNT = 13,
};

/* Bytes of one scalar of type t (a KW_GGUF_* value type); 0 for STRING and ARRAY (variable) and invalid types. */
size_t kw_gguf_scalar_size(uint32_t t);

#define KW_GGUF_MAX_DIMS          4
#define KW_GGUF_DEFAULT_ALIGNMENT 32

/* Limits checked before allocating (real files are far below them). */
#define KW_GGUF_MAX_STRING ((uint64_t)1 << 30) /* bytes of one string (a chat template, a merge) */
#define KW_GGUF_MAX_NAME   1024                /* bytes of a key or a tensor name */
#define KW_GGUF_MAX_ALIGN  ((uint32_t)1 << 20) /* general.alignment */

typedef struct kw_gguf kw_gguf; /* opaque */

/* One metadata entry. For arrays, type is KW_GGUF_ARRAY and elem_type / count describe the elements. */
typedef struct kw_gguf_kv {
    const char *key; /* NUL-terminated, owned by the kw_gguf */
    enum kw_gguf_type type;
    enum kw_gguf_type elem_type; /* arrays only */
    uint64_t count;              /* arrays: number of elements; otherwise 1 */
    const uint8_t *value;        /* the value (for arrays: the first element) inside the mapping */
    size_t offset;               /* file offset of the key, for messages */
} kw_gguf_kv;

typedef struct kw_gguf_tensor {
    const char *name;             /* NUL-terminated, owned by the kw_gguf */
    uint32_t type;                /* enum kw_ggml_type */
    int32_t n_dims;               /* 1..KW_GGUF_MAX_DIMS */
    int64_t ne[KW_GGUF_MAX_DIMS]; /* ggml order: ne[0] is the contiguous (innermost) dimension; unused entries 1 */
    uint64_t offset;              /* from the start of the data section */
    const void *data;             /* inside the mapping */
    size_t nbytes;
} kw_gguf_tensor;

/* Maps and validates the file at path. *out is owned by the caller (kw_gguf_close). Errors: KW_E_NOT_FOUND,
 * KW_E_IO, KW_E_MODEL_FORMAT, KW_E_MODEL_DTYPE, KW_E_NOMEM; the detail names the path and the problem. */
int kw_gguf_open(const char *path, kw_gguf **out);

/* The same over size bytes at data (borrowed: they must outlive the kw_gguf). For tests and fuzzing. */
int kw_gguf_open_memory(const void *data, size_t size, kw_gguf **out);

/* Unmaps and frees. NULL is a no-op. */
void kw_gguf_close(kw_gguf *g);

/* 1 if the file at path starts with the GGUF magic, else 0 (also when it cannot be read). */
int kw_gguf_is_gguf(const char *path);

uint32_t kw_gguf_version(const kw_gguf *g);
size_t kw_gguf_alignment(const kw_gguf *g);
/* The file size and the offset of the data section. */
size_t kw_gguf_file_size(const kw_gguf *g);
size_t kw_gguf_data_offset(const kw_gguf *g);

/* Metadata entries, in file order, and lookup by key (NULL if absent). Pointers are owned by g. */
size_t kw_gguf_kv_count(const kw_gguf *g);
const kw_gguf_kv *kw_gguf_kv_at(const kw_gguf *g, size_t i);
const kw_gguf_kv *kw_gguf_find_kv(const kw_gguf *g, const char *key);

/* Typed reads of a metadata value. Each returns 0 and fills *out; KW_E_NOT_FOUND when the key is absent; and
 * KW_E_MODEL_FORMAT when its type does not fit (naming the key and both types).
 *  - kw_gguf_get_int: any integer type (and bool), range-checked against [min, max];
 *  - kw_gguf_get_float: FLOAT32 or FLOAT64 (an integer value is accepted too);
 *  - kw_gguf_get_bool: BOOL (a byte that must be 0 or 1);
 *  - kw_gguf_get_str: STRING; *s points into the mapping (not NUL-terminated), *n its length. */
int kw_gguf_get_int(const kw_gguf *g, const char *key, int64_t min, int64_t max, int64_t *out);
int kw_gguf_get_float(const kw_gguf *g, const char *key, double *out);
int kw_gguf_get_bool(const kw_gguf *g, const char *key, int *out);
int kw_gguf_get_str(const kw_gguf *g, const char *key, const char **s, size_t *n);

/* Arrays: kw_gguf_get_array finds key (KW_E_NOT_FOUND) and checks it is an array of elem_type (KW_E_MODEL_FORMAT);
 * the element readers take an index below kv->count. String elements are indexed once at open, so access is O(1).
 * kw_gguf_array_int reads any integer element type; kw_gguf_array_float FLOAT32/FLOAT64. */
int kw_gguf_get_array(const kw_gguf *g, const char *key, enum kw_gguf_type elem_type, const kw_gguf_kv **kv);
int kw_gguf_array_str(const kw_gguf *g, const kw_gguf_kv *kv, uint64_t i, const char **s, size_t *n);
int kw_gguf_array_int(const kw_gguf_kv *kv, uint64_t i, int64_t *out);
int kw_gguf_array_float(const kw_gguf_kv *kv, uint64_t i, double *out);

/* Tensors, in file order, and lookup by name (NULL if absent). */
size_t kw_gguf_tensor_count(const kw_gguf *g);
const kw_gguf_tensor *kw_gguf_tensor_at(const kw_gguf *g, size_t i);
const kw_gguf_tensor *kw_gguf_find_tensor(const kw_gguf *g, const char *name);

/* "UINT8", "STRING", ... ("?" for an invalid value). */
const char *kw_gguf_type_name(enum kw_gguf_type type);

#endif /* KW_GGUF_H */
