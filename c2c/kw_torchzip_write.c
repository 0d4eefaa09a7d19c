/* kw_torchzip_write.c: writes state_dicts as torch.save zip archives (the format kw_torchzip.c reads).
 *
 * The layout follows torch.save (format version 1, storage alignment 64): `<arch>/data.pkl`, `.format_version`,
 * `.storage_alignment`, `byteorder`, `data/<i>` (one storage per tensor, keys "0", "1", ... in order) and `version`.
 * Each local header carries a "FB" padding extra field so the data starts at a multiple of 64, as torch's writer
 * does. The pickle is protocol 2 and uses only the opcodes the reader accepts. No time stamps, no serialization id:
 * the bytes depend only on the input. Not written: zip64 records (archives must stay below 4 GiB), memoisation,
 * _metadata (torch.load and load_state_dict do not need them).
 */
#include "c2c/kw_torchzip.h"

#include "common/kw_buf.h"
#include "common/kw_bytes.h"
#include "common/kw_file.h"
#include "common/kw_size.h"
#include "common/kw_status.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Fixed-width fields (little-endian) appended to a kw_buf. */
static int kw_tzw_u8(kw_buf *b, uint8_t v) {
    return kw_buf_append(b, &v, 1);
}

static int kw_tzw_le16(kw_buf *b, uint16_t v) {
    unsigned char t[2];
    kw_store_le16(t, v);
    return kw_buf_append(b, t, 2);
}

static int kw_tzw_le32(kw_buf *b, uint32_t v) {
    unsigned char t[4];
    kw_store_le32(t, v);
    return kw_buf_append(b, t, 4);
}

// ---------------------------------------------------------------------------------------------------------------
// Pickle

static int kw_pkw_str(kw_buf *b, const char *s) {
    const size_t n = strlen(s);
    KW_FORWARD(kw_tzw_u8(b, 'X'));
    KW_FORWARD(kw_tzw_le32(b, (uint32_t)n));
    return kw_buf_append(b, s, n);
}

static int kw_pkw_global(kw_buf *b, const char *module, const char *name) {
    KW_FORWARD(kw_tzw_u8(b, 'c'));
    KW_FORWARD(kw_buf_append(b, module, strlen(module)));
    KW_FORWARD(kw_tzw_u8(b, '\n'));
    KW_FORWARD(kw_buf_append(b, name, strlen(name)));
    return kw_tzw_u8(b, '\n');
}

/* A non-negative int the way pickle protocol 2 writes it. */
static int kw_pkw_int(kw_buf *b, uint64_t v) {
    if (v < 0x100) {
        KW_FORWARD(kw_tzw_u8(b, 'K'));
        return kw_tzw_u8(b, (uint8_t)v);
    }
    if (v < 0x10000) {
        KW_FORWARD(kw_tzw_u8(b, 'M'));
        return kw_tzw_le16(b, (uint16_t)v);
    }
    if (v < 0x80000000u) {
        KW_FORWARD(kw_tzw_u8(b, 'J'));
        return kw_tzw_le32(b, (uint32_t)v);
    }
    /* LONG1: minimal little-endian two's complement, so a set top bit needs one more zero byte. */
    unsigned char bytes[9];
    size_t n = 0;
    for (uint64_t r = v; r; r >>= 8)
        bytes[n++] = (unsigned char)r;
    if (bytes[n - 1] & 0x80) bytes[n++] = 0;
    KW_FORWARD(kw_tzw_u8(b, 0x8a));
    KW_FORWARD(kw_tzw_u8(b, (uint8_t)n));
    return kw_buf_append(b, bytes, n);
}

static int kw_pkw_int_tuple(kw_buf *b, const uint64_t *v, int32_t n) {
    if (n == 0) return kw_tzw_u8(b, ')');
    if (n > 3) KW_FORWARD(kw_tzw_u8(b, '('));
    for (int32_t i = 0; i < n; ++i)
        KW_FORWARD(kw_pkw_int(b, v[i]));
    return kw_tzw_u8(b, n > 3 ? 't' : (uint8_t)(0x84 + n)); /* TUPLE1..3 are 0x85..0x87 */
}

static const char *kw_pkw_storage_class(enum kw_dtype dtype) {
    switch (dtype) {
    case KW_DTYPE_F32:
        return "FloatStorage";
    case KW_DTYPE_BF16:
        return "BFloat16Storage";
    case KW_DTYPE_F16:
        return "HalfStorage";
    default:
        return NULL;
    }
}

static int kw_pkw_tensor(kw_buf *b, const kw_torchzip_write_tensor *t, size_t key, uint64_t numel) {
    char key_text[24];
    snprintf(key_text, sizeof key_text, "%zu", key);
    uint64_t size[KW_TORCHZIP_MAX_DIMS], stride[KW_TORCHZIP_MAX_DIMS];
    uint64_t s = 1;
    for (int32_t d = t->ndim; d-- > 0;) {
        size[d] = (uint64_t)t->shape[d];
        stride[d] = s;
        s *= size[d] ? size[d] : 1;
    }
    KW_FORWARD(kw_pkw_str(b, t->name));
    KW_FORWARD(kw_pkw_global(b, "torch._utils", "_rebuild_tensor_v2"));
    KW_FORWARD(kw_tzw_u8(b, '('));
    KW_FORWARD(kw_tzw_u8(b, '('));
    KW_FORWARD(kw_pkw_str(b, "storage"));
    KW_FORWARD(kw_pkw_global(b, "torch", kw_pkw_storage_class(t->dtype)));
    KW_FORWARD(kw_pkw_str(b, key_text));
    KW_FORWARD(kw_pkw_str(b, "cpu"));
    KW_FORWARD(kw_pkw_int(b, numel));
    KW_FORWARD(kw_tzw_u8(b, 't'));
    KW_FORWARD(kw_tzw_u8(b, 'Q'));
    KW_FORWARD(kw_pkw_int(b, 0)); /* storage offset */
    KW_FORWARD(kw_pkw_int_tuple(b, size, t->ndim));
    KW_FORWARD(kw_pkw_int_tuple(b, stride, t->ndim));
    KW_FORWARD(kw_tzw_u8(b, 0x89)); /* requires_grad = False */
    KW_FORWARD(kw_pkw_global(b, "collections", "OrderedDict"));
    KW_FORWARD(kw_tzw_u8(b, ')'));
    KW_FORWARD(kw_tzw_u8(b, 'R')); /* backward_hooks = OrderedDict() */
    KW_FORWARD(kw_tzw_u8(b, 't'));
    return kw_tzw_u8(b, 'R');
}

// ---------------------------------------------------------------------------------------------------------------
// Zip

typedef struct kw_zrec {
    char name[320]; /* "<arch>/data/<i>": the archive name is at most 255 bytes */
    const void *data;
    size_t size;
    uint32_t crc;
    size_t offset; /* of the local header */
} kw_zrec;

static int kw_zip_put_local(kw_buf *b, kw_zrec *r) {
    const size_t nlen = strlen(r->name);
    r->offset = b->len;
    r->crc = kw_torchzip_crc32(0, r->data, r->size);
    /* Data at a multiple of 64: 30-byte header, the name, then a "FB" extra field of 4 + pad bytes. */
    const size_t pad = (64 - (b->len + 30 + nlen + 4) % 64) % 64;
    KW_RETURN_IF(r->size > 0xfffffffeu || b->len > 0xfffffffeu, KW_E_LIMIT,
                 "archive reaches 4 GiB (zip64 output is not implemented)");
    KW_FORWARD(kw_tzw_le32(b, 0x04034b50u));
    KW_FORWARD(kw_tzw_le16(b, 20));     /* version needed */
    KW_FORWARD(kw_tzw_le16(b, 0x0800)); /* UTF-8 names */
    KW_FORWARD(kw_tzw_le16(b, 0));      /* stored */
    KW_FORWARD(kw_tzw_le32(b, 0));      /* time, date */
    KW_FORWARD(kw_tzw_le32(b, r->crc));
    KW_FORWARD(kw_tzw_le32(b, (uint32_t)r->size));
    KW_FORWARD(kw_tzw_le32(b, (uint32_t)r->size));
    KW_FORWARD(kw_tzw_le16(b, (uint16_t)nlen));
    KW_FORWARD(kw_tzw_le16(b, (uint16_t)(4 + pad)));
    KW_FORWARD(kw_buf_append(b, r->name, nlen));
    KW_FORWARD(kw_tzw_le16(b, 0x4246)); /* "FB" */
    KW_FORWARD(kw_tzw_le16(b, (uint16_t)pad));
    char z[64];
    memset(z, 'Z', pad);
    KW_FORWARD(kw_buf_append(b, z, pad));
    return kw_buf_append(b, r->data, r->size);
}

static int kw_zip_put_central(kw_buf *b, const kw_zrec *r) {
    const size_t nlen = strlen(r->name);
    KW_FORWARD(kw_tzw_le32(b, 0x02014b50u));
    KW_FORWARD(kw_tzw_le16(b, 0x031e)); /* made by: unix, 3.0 */
    KW_FORWARD(kw_tzw_le16(b, 20));
    KW_FORWARD(kw_tzw_le16(b, 0x0800));
    KW_FORWARD(kw_tzw_le16(b, 0));
    KW_FORWARD(kw_tzw_le32(b, 0));
    KW_FORWARD(kw_tzw_le32(b, r->crc));
    KW_FORWARD(kw_tzw_le32(b, (uint32_t)r->size));
    KW_FORWARD(kw_tzw_le32(b, (uint32_t)r->size));
    KW_FORWARD(kw_tzw_le16(b, (uint16_t)nlen));
    KW_FORWARD(kw_tzw_le16(b, 0)); /* extra */
    KW_FORWARD(kw_tzw_le16(b, 0)); /* comment */
    KW_FORWARD(kw_tzw_le16(b, 0)); /* disk */
    KW_FORWARD(kw_tzw_le16(b, 0)); /* internal attributes */
    KW_FORWARD(kw_tzw_le32(b, 0)); /* external attributes */
    KW_FORWARD(kw_tzw_le32(b, (uint32_t)r->offset));
    return kw_buf_append(b, r->name, nlen);
}

// ---------------------------------------------------------------------------------------------------------------
// Public

static int kw_tzw_check(const char *archive_name, const kw_torchzip_write_tensor *tensors, size_t count,
                        uint64_t *numels) {
    KW_RETURN_IF(!archive_name || !archive_name[0] || strchr(archive_name, '/') || strlen(archive_name) > 255,
                 KW_E_INVALID_ARG, "archive name must be 1..255 bytes without '/'");
    KW_RETURN_IF(count && !tensors, KW_E_INVALID_ARG, "kw_torchzip_write: NULL tensors");
    KW_RETURN_IF(count >= 0xfff0, KW_E_LIMIT, "%zu tensors (zip without zip64 holds fewer than 65520)", count);
    for (size_t i = 0; i < count; ++i) {
        const kw_torchzip_write_tensor *t = &tensors[i];
        KW_RETURN_IF(!t->name || !t->name[0] || strlen(t->name) > KW_TORCHZIP_MAX_NAME, KW_E_INVALID_ARG,
                     "tensor %zu: name must be 1..%d bytes", i, KW_TORCHZIP_MAX_NAME);
        for (size_t j = 0; j < i; ++j)
            KW_RETURN_IF(strcmp(tensors[j].name, t->name) == 0, KW_E_INVALID_ARG, "duplicate tensor name %s", t->name);
        KW_RETURN_IF(!kw_pkw_storage_class(t->dtype), KW_E_INVALID_ARG, "tensor %s: dtype must be f32, bf16 or f16",
                     t->name);
        KW_RETURN_IF(t->ndim < 0 || t->ndim > KW_TORCHZIP_MAX_DIMS, KW_E_INVALID_ARG, "tensor %s: %d dimensions",
                     t->name, t->ndim);
        size_t numel = 1;
        for (int32_t d = 0; d < t->ndim; ++d)
            KW_RETURN_IF(t->shape[d] < 0 || kw_size_mul(numel, (size_t)t->shape[d], &numel) < 0, KW_E_INVALID_ARG,
                         "tensor %s: bad shape", t->name);
        size_t nbytes = 0;
        KW_RETURN_IF(kw_size_mul(numel, t->dtype == KW_DTYPE_F32 ? 4 : 2, &nbytes) < 0 || nbytes > 0xfffffffeu,
                     KW_E_LIMIT, "tensor %s: too large for a zip entry without zip64", t->name);
        KW_RETURN_IF(nbytes && !t->data, KW_E_INVALID_ARG, "tensor %s: NULL data", t->name);
        numels[i] = numel;
    }
    return 0;
}

int kw_torchzip_write_buffer(const char *archive_name, const kw_torchzip_write_tensor *tensors, size_t count,
                             unsigned char **out, size_t *out_size) {
    KW_RETURN_IF(!out || !out_size, KW_E_INVALID_ARG, "kw_torchzip_write_buffer: NULL output");
    uint64_t *numels = calloc(count ? count : 1, sizeof *numels);
    kw_zrec *recs = calloc(count + 6, sizeof *recs);
    kw_buf pk = KW_BUF_INIT, zip = KW_BUF_INIT;
    int rc = 0;
    KW_CHECK_IF(!numels || !recs, KW_E_NOMEM, "archive tables");
    KW_CHECK(kw_tzw_check(archive_name, tensors, count, numels));

    KW_CHECK(kw_tzw_u8(&pk, 0x80));
    KW_CHECK(kw_tzw_u8(&pk, 2));
    KW_CHECK(kw_pkw_global(&pk, "collections", "OrderedDict"));
    KW_CHECK(kw_tzw_u8(&pk, ')'));
    KW_CHECK(kw_tzw_u8(&pk, 'R'));
    for (size_t i = 0; i < count; i += 1000) { /* pickle batches SETITEMS by 1000 */
        KW_CHECK(kw_tzw_u8(&pk, '('));
        for (size_t j = i; j < count && j < i + 1000; ++j)
            KW_CHECK(kw_pkw_tensor(&pk, &tensors[j], j, numels[j]));
        KW_CHECK(kw_tzw_u8(&pk, 'u'));
    }
    KW_CHECK(kw_tzw_u8(&pk, '.'));

    size_t n = 0;
    snprintf(recs[n].name, sizeof recs[n].name, "%s/data.pkl", archive_name);
    recs[n].data = pk.data, recs[n++].size = pk.len;
    snprintf(recs[n].name, sizeof recs[n].name, "%s/.format_version", archive_name);
    recs[n].data = "1", recs[n++].size = 1;
    snprintf(recs[n].name, sizeof recs[n].name, "%s/.storage_alignment", archive_name);
    recs[n].data = "64", recs[n++].size = 2;
    snprintf(recs[n].name, sizeof recs[n].name, "%s/byteorder", archive_name);
    recs[n].data = "little", recs[n++].size = 6;
    for (size_t i = 0; i < count; ++i) {
        snprintf(recs[n].name, sizeof recs[n].name, "%s/data/%zu", archive_name, i);
        recs[n].data = tensors[i].data;
        recs[n++].size = (size_t)numels[i] * (tensors[i].dtype == KW_DTYPE_F32 ? 4 : 2);
    }
    snprintf(recs[n].name, sizeof recs[n].name, "%s/version", archive_name);
    recs[n].data = "3\n", recs[n++].size = 2;

    for (size_t i = 0; i < n; ++i)
        KW_CHECK(kw_zip_put_local(&zip, &recs[i]));
    const size_t cd_offset = zip.len;
    for (size_t i = 0; i < n; ++i)
        KW_CHECK(kw_zip_put_central(&zip, &recs[i]));
    const size_t cd_size = zip.len - cd_offset;
    KW_CHECK_IF(zip.len > 0xfffffff0u, KW_E_LIMIT, "archive reaches 4 GiB (zip64 output is not implemented)");
    KW_CHECK(kw_tzw_le32(&zip, 0x06054b50u));
    KW_CHECK(kw_tzw_le32(&zip, 0)); /* disk numbers */
    KW_CHECK(kw_tzw_le16(&zip, (uint16_t)n));
    KW_CHECK(kw_tzw_le16(&zip, (uint16_t)n));
    KW_CHECK(kw_tzw_le32(&zip, (uint32_t)cd_size));
    KW_CHECK(kw_tzw_le32(&zip, (uint32_t)cd_offset));
    KW_CHECK(kw_tzw_le16(&zip, 0)); /* comment */
    char *bytes = NULL;
    KW_CHECK(kw_buf_take(&zip, &bytes, out_size));
    *out = (unsigned char *)bytes;
out:
    kw_buf_free(&zip);
    kw_buf_free(&pk);
    free(recs);
    free(numels);
    return rc;
}

int kw_torchzip_write(const char *path, const char *archive_name, const kw_torchzip_write_tensor *tensors,
                      size_t count) {
    KW_RETURN_IF(!path, KW_E_INVALID_ARG, "kw_torchzip_write: NULL path");
    unsigned char *buf = NULL;
    size_t size = 0;
    KW_FORWARD(kw_torchzip_write_buffer(archive_name, tensors, count, &buf, &size));
    const int rc = kw_file_write_all(path, buf, size);
    free(buf);
    return rc;
}
