/* kw_gguf_writer.h: writing GGUF files (version 3, little-endian), the layout kw_gguf.h reads: "GGUF", u32 version,
 * u64 tensor count, u64 metadata count, the metadata entries, the tensor infos, zero padding to the alignment, then
 * the tensor data, each tensor at an aligned offset from the start of the data section (zero padding between them
 * and after the last one, so the file size is a multiple of the alignment as ggml writes it).
 *
 * A writer collects metadata and tensors in memory in the order they are added (that order is the file's order: the
 * same calls give the same bytes), then kw_gguf_writer_write puts the file down atomically (a temporary file beside
 * it, renamed at the end). Keys and tensor names must be unique (KW_E_INVALID_ARG otherwise). An alignment other than
 * the default 32 is written as general.alignment (u32) before every other key.
 *
 * Not here: what the keys mean (kw_gguf_model.h), quantization (kw_quantize.h).
 */
#ifndef KW_GGUF_WRITER_H
#define KW_GGUF_WRITER_H

#include <stddef.h>
#include <stdint.h>

#include "model/kw_gguf.h"

typedef struct kw_gguf_writer kw_gguf_writer; /* opaque */

/* A new, empty writer with the given alignment (a power of two, 1..KW_GGUF_MAX_ALIGN; 0 means the default 32).
 * *out is owned by the caller (kw_gguf_writer_free). Errors: KW_E_INVALID_ARG, KW_E_NOMEM. */
int kw_gguf_writer_new(size_t alignment, kw_gguf_writer **out);

/* Frees the writer and every buffer it owns. NULL is a no-op. */
void kw_gguf_writer_free(kw_gguf_writer *w);

/* Scalar metadata. key is copied. Errors: KW_E_INVALID_ARG (empty, over-long or duplicate key, a NUL in a string),
 * KW_E_NOMEM. */
int kw_gguf_writer_set_u32(kw_gguf_writer *w, const char *key, uint32_t v);
int kw_gguf_writer_set_i32(kw_gguf_writer *w, const char *key, int32_t v);
int kw_gguf_writer_set_u64(kw_gguf_writer *w, const char *key, uint64_t v);
int kw_gguf_writer_set_f32(kw_gguf_writer *w, const char *key, float v);
int kw_gguf_writer_set_bool(kw_gguf_writer *w, const char *key, int v);
int kw_gguf_writer_set_str(kw_gguf_writer *w, const char *key, const char *s, size_t n);

/* Arrays of fixed-size elements (any scalar type but STRING and ARRAY): count values of elem_type, given as native
 * values (uint8_t, int32_t, float, ... as the type says), copied. Arrays of strings: count (pointer, length) pairs. */
int kw_gguf_writer_set_array(kw_gguf_writer *w, const char *key, enum kw_gguf_type elem_type, const void *values,
                             uint64_t count);
int kw_gguf_writer_set_str_array(kw_gguf_writer *w, const char *key, const char *const *strs, const size_t *lens,
                                 uint64_t count);

/* Copies metadata entry kv of the open file g (its key, type and value) as it is. */
int kw_gguf_writer_copy_kv(kw_gguf_writer *w, const kw_gguf *g, const kw_gguf_kv *kv);

/* Adds a tensor: name (copied), ggml type, n_dims 1..4 extents in ggml order (ne[0] innermost; each >= 1, ne[0] a
 * whole number of the type's blocks), and data holding exactly kw_ggml_row_bytes(type, ne[0]) * rows bytes. The
 * writer takes ownership of data (a malloc'd buffer, freed by kw_gguf_writer_free) even when it fails.
 * Errors: KW_E_INVALID_ARG (duplicate or bad name, a wrong byte count), KW_E_MODEL_DTYPE, KW_E_MODEL_SHAPE,
 * KW_E_OVERFLOW, KW_E_NOMEM. */
int kw_gguf_writer_add_tensor(kw_gguf_writer *w, const char *name, uint32_t type, int32_t n_dims, const int64_t *ne,
                              void *data, size_t nbytes);

/* Writes the file at path (replaced atomically). The writer may be written again or freed afterwards.
 * Errors: KW_E_IO (with the path and errno), KW_E_OVERFLOW. */
int kw_gguf_writer_write(const kw_gguf_writer *w, const char *path);

/* The whole file in memory: *out (malloc'd, owned by the caller) of *size bytes. For tests. */
int kw_gguf_writer_to_memory(const kw_gguf_writer *w, void **out, size_t *size);

#endif /* KW_GGUF_WRITER_H */
