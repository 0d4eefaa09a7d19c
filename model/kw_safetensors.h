/* kw_safetensors.h: reading and writing HF safetensors files.
 *
 * Reading maps each file read-only and validates every header field before exposing a tensor: the 8-byte header
 * length against the file size, the JSON, each dtype, shape, and data_offsets (in bounds, ordered, non-overlapping,
 * covering the data area exactly, nbytes == product(shape) * dtype size, overflow-checked). A sharded checkpoint is
 * opened through model.safetensors.index.json (its weight_map is validated the same way: every shard exists, every
 * listed tensor is present in its shard, no tensor appears twice). Tensor data stays in the mapping: pointers are
 * valid until kw_safetensors_close. Tensor data is aligned to its element size (a file where it is not is refused:
 * the HF writer always aligns it). Limits: a 100 MB header per file, 2^20 tensors, 4096 shards. Dtypes: F32, BF16, F16,
 * and I8 / U8 (the codes of quantized checkpoints: model/kw_st_quant.h; no op takes them). The __metadata__ entries
 * are kept (kw_safetensors_metadata).
 */
#ifndef KW_SAFETENSORS_H
#define KW_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kw_backend.h"

#define KW_SAFETENSORS_MAX_DIMS 8

typedef struct kw_st_tensor {
    const char *name;    /* owned by the kw_safetensors */
    enum kw_dtype dtype; /* F32, BF16, F16, I8 or U8 (other dtypes are rejected: KW_E_MODEL_DTYPE) */
    int32_t ndim;        /* 0 (scalar) .. KW_SAFETENSORS_MAX_DIMS */
    int64_t shape[KW_SAFETENSORS_MAX_DIMS];
    const void *data; /* little-endian elements inside the mapping */
    size_t nbytes;
} kw_st_tensor;

typedef struct kw_safetensors kw_safetensors; /* opaque: the mappings and the tensor table */

/* Opens path: a .safetensors file, an index file (*.safetensors.index.json, shards beside it), or a directory holding
 * model.safetensors.index.json (sharded) or model.safetensors. *out is owned by the caller (kw_safetensors_close).
 * Errors: KW_E_NOT_FOUND, KW_E_IO, KW_E_MODEL_FORMAT (with the offending field in kw_error_detail()), KW_E_MODEL_DTYPE,
 * KW_E_LIMIT. */
int kw_safetensors_open(const char *path, kw_safetensors **out);

/* Reads one safetensors file held in memory (size bytes at data, borrowed: it must outlive the result, and tensor
 * data points into it), with the same checks as a file. *out is owned by the caller (kw_safetensors_close).
 * Errors: KW_E_INVALID_ARG, KW_E_NOMEM, KW_E_MODEL_FORMAT, KW_E_MODEL_DTYPE, KW_E_LIMIT. */
int kw_safetensors_open_memory(const void *data, size_t size, kw_safetensors **out);

/* Unmaps everything. NULL is a no-op. */
void kw_safetensors_close(kw_safetensors *st);

/* The tensor called name, or NULL. The pointer is owned by st. */
const kw_st_tensor *kw_safetensors_find(const kw_safetensors *st, const char *name);

/* Drops the resident pages behind t (a tensor of st) after its data has been copied elsewhere, e.g. packed for the
 * CPU matmul: the mapping stays valid and reads back from the file if touched again (kw_file_map_release). */
void kw_safetensors_release(const kw_safetensors *st, const kw_st_tensor *t);

/* Number of tensors and access by index (in file order, i.e. by data offset, shards in order of first appearance
 * in the index's weight_map). */
size_t kw_safetensors_count(const kw_safetensors *st);
const kw_st_tensor *kw_safetensors_at(const kw_safetensors *st, size_t i);

/* The __metadata__ entries of every file (string -> string), in file order: their number, entry i (1 and *key,
 * *value owned by st; 0 if i is out of range), and the value of the first entry called key (NULL if none). */
size_t kw_safetensors_metadata_count(const kw_safetensors *st);
int kw_safetensors_metadata_at(const kw_safetensors *st, size_t i, const char **key, const char **value);
const char *kw_safetensors_metadata(const kw_safetensors *st, const char *key);

/* One tensor to write; data holds nbytes = product(shape) * dtype size little-endian bytes, borrowed. */
typedef struct kw_st_write_tensor {
    const char *name;
    enum kw_dtype dtype;
    int32_t ndim;
    int64_t shape[KW_SAFETENSORS_MAX_DIMS];
    const void *data;
} kw_st_write_tensor;

/* Writes a single-file safetensors laid out exactly as the HF writer (safetensors.torch.save_file) lays it out, so
 * the same tensors and metadata give the same bytes: tensors ordered by dtype (F32, BF16, F16, I8, U8) and then by
 * name, header keys and data in that order, "__metadata__" first (keys sorted, compact JSON), the header padded with
 * spaces to a multiple of 8 bytes. metadata_json is NULL or a JSON object text of string->string. Names must be
 * unique. Written atomically (temporary file, fsync, rename). */
int kw_safetensors_write(const char *path, const kw_st_write_tensor *tensors, size_t count, const char *metadata_json);

/* Streaming writer, for files too large to hold twice in memory: open with the tensor descriptions (data ignored),
 * then write the data area in file order (kw_st_writer_order(w, i) is the caller's index of the i-th tensor in the
 * file) in chunks of any size, then finish. The file appears at path only when kw_st_writer_finish succeeds. */
typedef struct kw_st_writer kw_st_writer; /* opaque */

/* *out is owned by the caller (kw_st_writer_close). tensors and metadata_json are only read during the call. */
int kw_st_writer_open(const char *path, const kw_st_write_tensor *tensors, size_t count, const char *metadata_json,
                      kw_st_writer **out);
/* The caller's index of the i-th tensor in file order ((size_t)-1 if i is out of range). */
size_t kw_st_writer_order(const kw_st_writer *w, size_t i);
/* Appends the next size bytes of the data area; more than the tensors declare is KW_E_INVALID_ARG. */
int kw_st_writer_write(kw_st_writer *w, const void *data, size_t size);
/* Checks every declared byte was written, flushes, fsyncs and renames into place (KW_E_STATE if bytes are missing). */
int kw_st_writer_finish(kw_st_writer *w);
/* Releases w; if it was not finished, the temporary file is removed. NULL is a no-op. */
void kw_st_writer_close(kw_st_writer *w);

#endif /* KW_SAFETENSORS_H */
