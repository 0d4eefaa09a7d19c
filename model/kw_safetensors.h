/* kw_safetensors.h: reading and writing HF safetensors files.
 *
 * Reading maps each file read-only and validates every header field before exposing a tensor: the 8-byte header
 * length against the file size, the JSON, each dtype, shape, and data_offsets (in bounds, ordered, non-overlapping,
 * covering the data area exactly, nbytes == product(shape) * dtype size, overflow-checked). A sharded checkpoint is
 * opened through model.safetensors.index.json (its weight_map is validated the same way: every shard exists, every
 * listed tensor is present in its shard, no tensor appears twice). Tensor data stays in the mapping: pointers are
 * valid until kw_safetensors_close.
 */
#ifndef KW_SAFETENSORS_H
#define KW_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kw_backend.h"

#define KW_SAFETENSORS_MAX_DIMS 8

typedef struct kw_st_tensor {
    const char *name;                      /* owned by the kw_safetensors */
    enum kw_dtype dtype;                   /* F32, BF16 or F16 (other dtypes are rejected: KW_E_MODEL_DTYPE) */
    int32_t ndim;                          /* 0 (scalar) .. KW_SAFETENSORS_MAX_DIMS */
    int64_t shape[KW_SAFETENSORS_MAX_DIMS];
    const void *data;                      /* little-endian elements inside the mapping */
    size_t nbytes;
} kw_st_tensor;

typedef struct kw_safetensors kw_safetensors; /* opaque: the mappings and the tensor table */

/* Opens path: a .safetensors file, or a directory holding model.safetensors.index.json (sharded) or
 * model.safetensors. *out is owned by the caller (kw_safetensors_close). Errors: KW_E_NOT_FOUND, KW_E_IO,
 * KW_E_MODEL_FORMAT (with the offending field in kw_error_detail()), KW_E_MODEL_DTYPE, KW_E_LIMIT. */
int kw_safetensors_open(const char *path, kw_safetensors **out);

/* Unmaps everything. NULL is a no-op. */
void kw_safetensors_close(kw_safetensors *st);

/* The tensor called name, or NULL. The pointer is owned by st. */
const kw_st_tensor *kw_safetensors_find(const kw_safetensors *st, const char *name);

/* Number of tensors and access by index (in file order, shards in index order). */
size_t kw_safetensors_count(const kw_safetensors *st);
const kw_st_tensor *kw_safetensors_at(const kw_safetensors *st, size_t i);

/* One tensor to write; data holds nbytes = product(shape) * dtype size little-endian bytes, borrowed. */
typedef struct kw_st_write_tensor {
    const char *name;
    enum kw_dtype dtype;
    int32_t ndim;
    int64_t shape[KW_SAFETENSORS_MAX_DIMS];
    const void *data;
} kw_st_write_tensor;

/* Writes a single-file safetensors with the tensors in the given order (header keys sorted as the HF writer does,
 * data in the given order, header padded with spaces to a multiple of 8). metadata_json is NULL or a JSON object
 * text of string->string stored as "__metadata__". Written atomically. */
int kw_safetensors_write(const char *path, const kw_st_write_tensor *tensors, size_t count, const char *metadata_json);

#endif /* KW_SAFETENSORS_H */
