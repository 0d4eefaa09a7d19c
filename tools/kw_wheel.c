/* kw_wheel.c: one member out of a ZIP archive (see kw_wheel.h). Record layouts follow PKWARE's APPNOTE: the
 * end-of-central-directory record (22 bytes + comment) at the end, central directory headers (46 bytes + name + extra
 * + comment), local headers (30 bytes + name + extra) before each member's data. */
#include "tools/kw_wheel.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "common/kw_buf.h"
#include "common/kw_bytes.h"
#include "common/kw_file.h"
#include "common/kw_status.h"

#define KW_ZIP_EOCD_SIG  0x06054b50u
#define KW_ZIP_CDIR_SIG  0x02014b50u
#define KW_ZIP_LOCAL_SIG 0x04034b50u
#define KW_ZIP_CHUNK     (1u << 20)

typedef struct kw_zip_entry {
    uint16_t method, flags;
    uint32_t crc;
    uint64_t csize, usize, local_off;
} kw_zip_entry;

/* Finds member in the central directory of the mapped archive m. */
static int kw_zip_find(const kw_file_map *m, const char *path, const char *member, kw_zip_entry *e) {
    const uint8_t *p = m->data;
    const size_t n = m->size;
    KW_RETURN_IF(n < 22, KW_E_PARSE, "%s: too short for a ZIP archive", path);
    size_t eocd = SIZE_MAX;
    const size_t lowest = n > 22 + 65535 ? n - 22 - 65535 : 0;
    for (size_t i = n - 22 + 1; i-- > lowest;) {
        if (kw_load_le32(p + i) == KW_ZIP_EOCD_SIG && i + 22 + kw_load_le16(p + i + 20) == n) {
            eocd = i;
            break;
        }
    }
    KW_RETURN_IF(eocd == SIZE_MAX, KW_E_PARSE, "%s: no ZIP end-of-central-directory record", path);
    const uint64_t count = kw_load_le16(p + eocd + 10), size = kw_load_le32(p + eocd + 12),
                   off = kw_load_le32(p + eocd + 16);
    KW_RETURN_IF(count == 0xFFFF || off == 0xFFFFFFFFu, KW_E_PARSE, "%s: ZIP64 archives are not supported", path);
    KW_RETURN_IF(off > eocd || size > eocd - off, KW_E_PARSE, "%s: the central directory lies outside the file", path);
    const size_t want = strlen(member);
    size_t at = (size_t)off;
    const size_t end = (size_t)(off + size);
    for (uint64_t i = 0; i < count; ++i) {
        KW_RETURN_IF(end - at < 46 || kw_load_le32(p + at) != KW_ZIP_CDIR_SIG, KW_E_PARSE,
                     "%s: central directory entry %llu is malformed", path, (unsigned long long)i);
        const size_t name_len = kw_load_le16(p + at + 28), extra = kw_load_le16(p + at + 30),
                     comment = kw_load_le16(p + at + 32);
        KW_RETURN_IF(end - at - 46 < name_len + extra + comment, KW_E_PARSE,
                     "%s: central directory entry %llu runs past the directory", path, (unsigned long long)i);
        if (name_len == want && memcmp(p + at + 46, member, want) == 0) {
            e->flags = kw_load_le16(p + at + 8);
            e->method = kw_load_le16(p + at + 10);
            e->crc = kw_load_le32(p + at + 16);
            e->csize = kw_load_le32(p + at + 20);
            e->usize = kw_load_le32(p + at + 24);
            e->local_off = kw_load_le32(p + at + 42);
            KW_RETURN_IF(e->csize == 0xFFFFFFFFu || e->usize == 0xFFFFFFFFu || e->local_off == 0xFFFFFFFFu, KW_E_PARSE,
                         "%s: %s is a ZIP64 entry (not supported)", path, member);
            return 0;
        }
        at += 46 + name_len + extra + comment;
    }
    KW_FAIL(KW_E_NOT_FOUND, "%s has no member %s", path, member);
}

static int kw_zip_stream(const uint8_t *data, const kw_zip_entry *e, const char *what, kw_wheel_sink sink, void *user) {
    uint32_t crc = (uint32_t)crc32(0L, Z_NULL, 0);
    uint64_t total = 0;
    int rc = 0;
    if (e->method == 0) {
        KW_RETURN_IF(e->csize != e->usize, KW_E_PARSE, "%s: stored member with differing sizes", what);
        for (uint64_t done = 0; done < e->csize;) {
            const size_t k = (size_t)(e->csize - done < KW_ZIP_CHUNK ? e->csize - done : KW_ZIP_CHUNK);
            crc = (uint32_t)crc32(crc, data + done, (uInt)k);
            KW_FORWARD(sink(user, data + done, k));
            done += k;
        }
        total = e->csize;
    } else {
        z_stream z;
        memset(&z, 0, sizeof z);
        KW_RETURN_IF(inflateInit2(&z, -MAX_WBITS) != Z_OK, KW_E_NOMEM, "%s: inflateInit2 failed", what);
        unsigned char *chunk = malloc(KW_ZIP_CHUNK);
        KW_CHECK_IF(!chunk, KW_E_NOMEM, "out of memory");
        uint64_t in_left = e->csize;
        const uint8_t *in = data;
        int zr = Z_OK;
        while (zr != Z_STREAM_END) {
            if (z.avail_in == 0 && in_left > 0) {
                const uInt k = (uInt)(in_left < (1u << 30) ? in_left : (1u << 30));
                z.next_in = (Bytef *)in;
                z.avail_in = k;
                in += k;
                in_left -= k;
            }
            z.next_out = chunk;
            z.avail_out = KW_ZIP_CHUNK;
            zr = inflate(&z, Z_NO_FLUSH);
            KW_CHECK_IF(zr != Z_OK && zr != Z_STREAM_END, KW_E_PARSE, "%s: deflate data is corrupt (zlib %d)", what,
                        zr);
            const size_t got = KW_ZIP_CHUNK - z.avail_out;
            KW_CHECK_IF(got == 0 && zr != Z_STREAM_END && z.avail_in == 0 && in_left == 0, KW_E_PARSE,
                        "%s: deflate data ends early", what);
            total += got;
            KW_CHECK_IF(total > e->usize, KW_E_PARSE, "%s: inflates past its declared %llu bytes", what,
                        (unsigned long long)e->usize);
            crc = (uint32_t)crc32(crc, chunk, (uInt)got);
            if (got) KW_CHECK(sink(user, chunk, got));
        }
    out:
        inflateEnd(&z);
        free(chunk);
        KW_FORWARD(rc);
    }
    KW_RETURN_IF(total != e->usize, KW_E_PARSE, "%s: %llu bytes instead of %llu", what, (unsigned long long)total,
                 (unsigned long long)e->usize);
    KW_RETURN_IF(crc != e->crc, KW_E_PARSE, "%s: CRC-32 mismatch (the archive is damaged)", what);
    return 0;
}

int kw_wheel_extract(const char *path, const char *member, kw_wheel_sink sink, void *user) {
    KW_RETURN_IF(!path || !member || !sink, KW_E_INVALID_ARG, "kw_wheel_extract: NULL argument");
    kw_file_map m;
    KW_FORWARD(kw_file_map_open(path, &m));
    kw_zip_entry e = {0};
    int rc = 0;
    KW_CHECK(kw_zip_find(&m, path, member, &e));
    KW_CHECK_IF(e.flags & 1u, KW_E_PARSE, "%s: %s is encrypted", path, member);
    KW_CHECK_IF(e.method != 0 && e.method != 8, KW_E_PARSE, "%s: %s uses compression method %u (stored or deflate)",
                path, member, (unsigned)e.method);
    KW_CHECK_IF(e.local_off > m.size || m.size - e.local_off < 30 ||
                    kw_load_le32(m.data + e.local_off) != KW_ZIP_LOCAL_SIG,
                KW_E_PARSE, "%s: the local header of %s is malformed", path, member);
    const size_t data_off =
        (size_t)e.local_off + 30 + kw_load_le16(m.data + e.local_off + 26) + kw_load_le16(m.data + e.local_off + 28);
    KW_CHECK_IF(data_off > m.size || m.size - data_off < e.csize, KW_E_PARSE, "%s: %s runs past the end of the file",
                path, member);
    KW_CHECK(kw_zip_stream(m.data + data_off, &e, member, sink, user));
out:
    kw_file_unmap(&m);
    return rc;
}

typedef struct kw_wheel_small {
    kw_buf buf;
    size_t max;
} kw_wheel_small;

static int kw_wheel_small_sink(void *user, const void *data, size_t n) {
    kw_wheel_small *s = user;
    KW_RETURN_IF(s->buf.len + n > s->max, KW_E_LIMIT, "member larger than %zu bytes", s->max);
    return kw_buf_append(&s->buf, data, n);
}

int kw_wheel_read_small(const char *path, const char *member, size_t max, char **out, size_t *len) {
    kw_wheel_small s = {KW_BUF_INIT, max};
    const int rc = kw_wheel_extract(path, member, kw_wheel_small_sink, &s);
    if (rc < 0) {
        kw_buf_free(&s.buf);
        return rc;
    }
    return kw_buf_take(&s.buf, out, len);
}
