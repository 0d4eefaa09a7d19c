/* kw_torchzip.h: reading and writing the torch.save zip archives that hold the C2C fuser weights (c2c_spec.md §3.3).
 *
 * A torch zip archive is a ZIP file of stored (uncompressed) entries under one top-level folder: `<arch>/data.pkl`
 * (a pickle), `<arch>/data/<key>` (raw little-endian storages), and small records (`byteorder`, `version`,
 * `.format_version`, `.storage_alignment`, `.data/serialization_id`) that are ignored except `byteorder`, which must
 * say "little" when present.
 *
 * The reader accepts exactly what torch.save writes for a state_dict of dense tensors and nothing more:
 *  - zip: end-of-central-directory (zip64 records when present), stored entries only (a compressed or encrypted
 *    entry is refused), every offset, size and name checked against the file before use, local headers checked
 *    against the central directory, entries not overlapping, CRC-32 of every entry verified (unless
 *    KW_TORCHZIP_NO_CRC);
 *  - pickle: the opcodes PROTO GLOBAL MARK EMPTY_TUPLE TUPLE TUPLE1-3 EMPTY_DICT EMPTY_LIST SETITEM SETITEMS APPENDS
 *    BINUNICODE BININT BININT1 BININT2 LONG1 NEWTRUE NEWFALSE NONE BINPUT LONG_BINPUT BINGET LONG_BINGET REDUCE BUILD
 *    BINPERSID STOP, and the globals collections.OrderedDict, torch._utils._rebuild_tensor_v2 and the storage
 *    classes torch.BFloat16Storage, torch.FloatStorage, torch.HalfStorage. Anything else is KW_E_PT_PICKLE naming
 *    the opcode or global;
 *  - the unpickled object must be a dict or OrderedDict of str -> tensor; each tensor must be contiguous (strides of
 *    size-1 dimensions are free, as in torch's is_contiguous), with offset and extent inside its storage, and each
 *    storage record must be exactly numel * element size bytes.
 * The result is an ordered name -> tensor table whose data pointers point into the file mapping (or into an aligned
 * copy for a storage a non-torch zip writer left unaligned).
 *
 * The writer produces the same container (torch.load reads it: tools/check_gen_fuser.py loads `kvwire gen-fuser` output
 * with torch) from host tensors.
 */
#ifndef KW_TORCHZIP_H
#define KW_TORCHZIP_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kw_backend.h"

#define KW_TORCHZIP_MAX_DIMS 8

/* Limits checked before anything is allocated. */
#define KW_TORCHZIP_MAX_ENTRIES (1u << 16)  /* zip entries */
#define KW_TORCHZIP_MAX_NAME    4096        /* bytes in an entry name or a pickled string */
#define KW_TORCHZIP_MAX_PICKLE  (16u << 20) /* bytes of data.pkl */
#define KW_TORCHZIP_MAX_MEMO    (1u << 20)  /* pickle memo slots */
#define KW_TORCHZIP_MAX_ITEMS   (1u << 14)  /* entries of a pickled dict or list; tensors; storages */
#define KW_TORCHZIP_MAX_VALUES  (1u << 21)  /* pickle values in all (bounds the memory a pickle can claim) */

typedef struct kw_torchzip_tensor {
    const char *name;    /* state-dict key; owned by the kw_torchzip */
    enum kw_dtype dtype; /* KW_DTYPE_F32, KW_DTYPE_BF16 or KW_DTYPE_F16 */
    int32_t ndim;        /* 0 (scalar) .. KW_TORCHZIP_MAX_DIMS */
    int64_t shape[KW_TORCHZIP_MAX_DIMS];
    const void *data; /* little-endian elements, aligned to the element size: in the mapping (torch aligns storages to
                         64 bytes) or, for an unaligned record, in a copy owned by the kw_torchzip; NULL if nbytes 0 */
    size_t nbytes;    /* product(shape) * element size */
} kw_torchzip_tensor;

typedef struct kw_torchzip kw_torchzip; /* opaque: the mapping and the tensor table */

enum kw_torchzip_flags {
    KW_TORCHZIP_NO_CRC = 1, /* skip CRC-32 verification of the entries */
};

/* Opens and validates the archive at path (mapped read-only). *out is owned by the caller (kw_torchzip_close).
 * Errors: KW_E_IO / KW_E_NOT_FOUND (the file), KW_E_PT_FORMAT (zip structure, sizes, offsets, CRC, missing storage
 * record, tensor outside its storage, non-contiguous tensor), KW_E_PT_PICKLE (opcode, global or object the reader
 * does not accept), KW_E_UNSUPPORTED (big-endian byteorder record), KW_E_LIMIT, KW_E_NOMEM. The detail names the
 * file and the offending entry, opcode (with its offset) or tensor. */
int kw_torchzip_open(const char *path, unsigned flags, kw_torchzip **out);

/* The same over a caller's buffer, which is borrowed and must outlive *out. */
int kw_torchzip_open_buffer(const void *data, size_t size, unsigned flags, kw_torchzip **out);

/* Releases the table and the mapping. NULL is a no-op. */
void kw_torchzip_close(kw_torchzip *tz);

/* Number of tensors and access in pickle (state_dict) order; pointers are owned by tz. */
size_t kw_torchzip_count(const kw_torchzip *tz);
const kw_torchzip_tensor *kw_torchzip_at(const kw_torchzip *tz, size_t i);

/* The tensor called name, or NULL. */
const kw_torchzip_tensor *kw_torchzip_find(const kw_torchzip *tz, const char *name);

/* One tensor to write: data holds product(shape) * element size little-endian bytes, borrowed. */
typedef struct kw_torchzip_write_tensor {
    const char *name;
    enum kw_dtype dtype; /* F32, BF16 or F16 */
    int32_t ndim;
    int64_t shape[KW_TORCHZIP_MAX_DIMS];
    const void *data;
} kw_torchzip_write_tensor;

/* Writes a torch.save-compatible archive of an OrderedDict name -> tensor (contiguous, storage offset 0, one storage
 * per tensor, requires_grad False) to path, atomically. The archive folder is archive_name (torch uses the file name
 * without its extension); it must be a non-empty name without '/'. Entries are stored, 64-byte aligned, with CRC-32.
 * The output depends only on the arguments (no time stamps or random ids). Errors: KW_E_INVALID_ARG, KW_E_LIMIT
 * (an archive of 4 GiB or more: zip64 output is not implemented), KW_E_IO, KW_E_NOMEM. */
int kw_torchzip_write(const char *path, const char *archive_name, const kw_torchzip_write_tensor *tensors,
                      size_t count);

/* The same into a new buffer (*out owned by the caller, free()). */
int kw_torchzip_write_buffer(const char *archive_name, const kw_torchzip_write_tensor *tensors, size_t count,
                             unsigned char **out, size_t *out_size);

/* CRC-32 (ISO-HDLC, as zip) of n bytes, continuing from crc (start with 0). */
uint32_t kw_torchzip_crc32(uint32_t crc, const void *data, size_t n);

#endif /* KW_TORCHZIP_H */
