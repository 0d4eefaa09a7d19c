/* kw_torchzip.c: a strict reader for torch.save zip archives of state_dicts (see kw_torchzip.h for the contract).
 *
 * Three stages, each validating everything it reads before the next uses it:
 *   1. zip: locate the end-of-central-directory record (and the zip64 records when present), walk the central
 *      directory into an entry table, check each local header against it, check that entries do not overlap and,
 *      optionally, their CRC-32.
 *   2. pickle: a small stack machine over `<arch>/data.pkl` that knows only the opcodes and globals torch uses for a
 *      state_dict. Values live in an arena; the memo holds pointers, so memoised containers are shared as in Python.
 *   3. tensors: the resulting dict is turned into the name -> tensor table, each storage resolved to its
 *      `<arch>/data/<key>` entry and each tensor's offset, shape and strides checked against it.
 * It is not a general pickle or zip reader: no compression, no other globals, no Python objects beyond the above.
 */
#include "c2c/kw_torchzip.h"

#include "common/kw_arena.h"
#include "common/kw_bytes.h"
#include "common/kw_file.h"
#include "common/kw_size.h"
#include "common/kw_status.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---------------------------------------------------------------------------------------------------------------
// CRC-32 (slice-by-8; tables built once)

static uint32_t kw_crc_table[8][256];
static pthread_once_t kw_crc_once = PTHREAD_ONCE_INIT;

static void kw_crc_init(void) {
    for (uint32_t i = 0; i < 256; ++i) {
        uint32_t c = i;
        for (int k = 0; k < 8; ++k)
            c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
        kw_crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i)
        for (int t = 1; t < 8; ++t)
            kw_crc_table[t][i] = (kw_crc_table[t - 1][i] >> 8) ^ kw_crc_table[0][kw_crc_table[t - 1][i] & 0xff];
}

uint32_t kw_torchzip_crc32(uint32_t crc, const void *data, size_t n) {
    pthread_once(&kw_crc_once, kw_crc_init);
    const unsigned char *p = data;
    uint32_t c = ~crc;
    while (n >= 8) {
        const uint32_t lo = c ^ kw_load_le32(p), hi = kw_load_le32(p + 4);
        c = kw_crc_table[7][lo & 0xff] ^ kw_crc_table[6][(lo >> 8) & 0xff] ^ kw_crc_table[5][(lo >> 16) & 0xff] ^
            kw_crc_table[4][lo >> 24] ^ kw_crc_table[3][hi & 0xff] ^ kw_crc_table[2][(hi >> 8) & 0xff] ^
            kw_crc_table[1][(hi >> 16) & 0xff] ^ kw_crc_table[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--)
        c = kw_crc_table[0][(c ^ *p++) & 0xff] ^ (c >> 8);
    return ~c;
}

// ---------------------------------------------------------------------------------------------------------------
// Types

typedef struct kw_zip_entry {
    const char *name; /* NUL-terminated copy (arena) */
    size_t name_len;
    uint64_t local_offset;
    uint64_t data_offset;
    uint64_t size;
    uint32_t crc;
} kw_zip_entry;

enum kw_pk_kind {
    KW_PK_NONE,
    KW_PK_BOOL,
    KW_PK_INT,
    KW_PK_STR,
    KW_PK_TUPLE,
    KW_PK_LIST,
    KW_PK_DICT,
    KW_PK_GLOBAL,
    KW_PK_STORAGE,
    KW_PK_TENSOR,
};

enum kw_pk_global {
    KW_PK_G_ORDERED_DICT,
    KW_PK_G_REBUILD_TENSOR_V2,
    KW_PK_G_BF16_STORAGE,
    KW_PK_G_F32_STORAGE,
    KW_PK_G_F16_STORAGE,
};

typedef struct kw_pk_value kw_pk_value;
struct kw_pk_value {
    enum kw_pk_kind kind;
    int64_t i;           /* INT, BOOL; GLOBAL: enum kw_pk_global; STORAGE/TENSOR: table index */
    const char *s;       /* STR: NUL-terminated (arena) */
    size_t n;            /* STR: bytes; TUPLE/LIST: items; DICT: pairs */
    size_t cap;          /* LIST/DICT: capacity of items */
    kw_pk_value **items; /* TUPLE/LIST: n values; DICT: 2n (key, value) */
};

typedef struct kw_pt_storage {
    const char *key;
    enum kw_dtype dtype;
    uint64_t numel;
    const kw_zip_entry *entry;
    const unsigned char *data; /* the record in the mapping, or an aligned copy */
} kw_pt_storage;

struct kw_torchzip {
    kw_file_map map; /* zeroed when opened over a caller's buffer */
    const unsigned char *base;
    size_t size;
    kw_arena arena;
    kw_zip_entry *entries; /* central directory order */
    kw_zip_entry *by_name; /* the same entries sorted by name */
    size_t n_entries;
    const char *prefix; /* "<arch>/": the first prefix_len bytes (not NUL-terminated there) */
    size_t prefix_len;
    kw_pt_storage *storages;
    size_t n_storages, cap_storages;
    kw_torchzip_tensor *tensors;
    size_t n_tensors, cap_tensors;
    const char *what; /* file name for messages */
};

static size_t kw_tz_elem_size(enum kw_dtype dtype) {
    switch (dtype) {
    case KW_DTYPE_F32:
        return 4;
    case KW_DTYPE_BF16:
    case KW_DTYPE_F16:
        return 2;
    default:
        return 0;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 1. zip

#define KW_ZIP_EOCD_SIG   0x06054b50u
#define KW_ZIP_EOCD64_SIG 0x06064b50u
#define KW_ZIP_LOC64_SIG  0x07064b50u
#define KW_ZIP_CDH_SIG    0x02014b50u
#define KW_ZIP_LFH_SIG    0x04034b50u

/* True if [off, off + len) lies inside [0, limit). */
static int kw_zip_in(uint64_t off, uint64_t len, uint64_t limit) {
    return off <= limit && len <= limit - off;
}

static int kw_zip_find_eocd(const kw_torchzip *tz, size_t *eocd) {
    const unsigned char *b = tz->base;
    const size_t size = tz->size;
    if (size >= 2 && b[0] == 0x80 && b[1] <= 5)
        KW_FAIL(KW_E_PT_FORMAT, "%s: a bare pickle, not a zip archive (legacy torch.save format is not supported)",
                tz->what);
    KW_RETURN_IF(size < 22, KW_E_PT_FORMAT, "%s: %zu bytes is too short for a zip archive", tz->what, size);
    const size_t lowest = size - 22 > 0xffff ? size - 22 - 0xffff : 0;
    for (size_t p = size - 22 + 1; p-- > lowest;) {
        if (kw_load_le32(b + p) == KW_ZIP_EOCD_SIG && kw_load_le16(b + p + 20) == size - p - 22) {
            *eocd = p;
            return 0;
        }
    }
    KW_FAIL(KW_E_PT_FORMAT, "%s: no zip end-of-central-directory record (truncated or not a zip archive)", tz->what);
}

/* Reads the zip64 extended values of a central header: each saturated field is replaced, in order. */
static int kw_zip_extra64(const kw_torchzip *tz, const unsigned char *extra, size_t len, uint64_t *usize,
                          uint64_t *csize, uint64_t *offset, uint32_t disk_saturated, const char *name) {
    size_t p = 0;
    while (p < len) {
        KW_RETURN_IF(len - p < 4, KW_E_PT_FORMAT, "%s: entry %s: truncated extra field", tz->what, name);
        const uint16_t tag = kw_load_le16(extra + p), n = kw_load_le16(extra + p + 2);
        KW_RETURN_IF(len - p - 4 < n, KW_E_PT_FORMAT, "%s: entry %s: extra field overruns its header", tz->what, name);
        if (tag == 0x0001) {
            const unsigned char *d = extra + p + 4;
            size_t q = 0;
            uint64_t *const fields[3] = {usize, csize, offset};
            for (int f = 0; f < 3; ++f) {
                if (*fields[f] != 0xffffffffu) continue;
                KW_RETURN_IF(n - q < 8, KW_E_PT_FORMAT, "%s: entry %s: zip64 extra field too short", tz->what, name);
                *fields[f] = kw_load_le64(d + q);
                q += 8;
            }
            KW_RETURN_IF(disk_saturated && n - q < 4, KW_E_PT_FORMAT, "%s: entry %s: zip64 extra field too short",
                         tz->what, name);
        }
        p += 4 + (size_t)n;
    }
    KW_RETURN_IF(*usize == 0xffffffffu || *csize == 0xffffffffu || *offset == 0xffffffffu, KW_E_PT_FORMAT,
                 "%s: entry %s: 32-bit field saturated without a zip64 extra field", tz->what, name);
    return 0;
}

static int kw_zip_cmp_offset(const void *a, const void *b) {
    const kw_zip_entry *x = a, *y = b;
    return x->local_offset < y->local_offset ? -1 : x->local_offset > y->local_offset;
}

static int kw_zip_cmp_name(const void *a, const void *b) {
    const kw_zip_entry *x = a, *y = b;
    const int c = memcmp(x->name, y->name, x->name_len < y->name_len ? x->name_len : y->name_len);
    return c ? c : (x->name_len > y->name_len) - (x->name_len < y->name_len);
}

static int kw_zip_read_directory(kw_torchzip *tz, unsigned flags) {
    const unsigned char *b = tz->base;
    size_t eocd = 0;
    KW_FORWARD(kw_zip_find_eocd(tz, &eocd));
    uint64_t n_entries = kw_load_le16(b + eocd + 10);
    uint64_t cd_size = kw_load_le32(b + eocd + 12);
    uint64_t cd_offset = kw_load_le32(b + eocd + 16);
    KW_RETURN_IF(kw_load_le16(b + eocd + 4) != 0 || kw_load_le16(b + eocd + 6) != 0 ||
                     kw_load_le16(b + eocd + 8) != kw_load_le16(b + eocd + 10),
                 KW_E_PT_FORMAT, "%s: multi-disk zip archives are not supported", tz->what);
    uint64_t cd_end_limit = eocd; /* the central directory ends before the next record */

    /* zip64: a locator right before the EOCD points at the zip64 EOCD record. torch always writes them. */
    if (eocd >= 20 && kw_load_le32(b + eocd - 20) == KW_ZIP_LOC64_SIG) {
        const uint64_t rec = kw_load_le64(b + eocd - 20 + 8);
        KW_RETURN_IF(kw_load_le32(b + eocd - 20 + 4) != 0 || kw_load_le32(b + eocd - 20 + 16) > 1, KW_E_PT_FORMAT,
                     "%s: multi-disk zip64 archives are not supported", tz->what);
        KW_RETURN_IF(!kw_zip_in(rec, 56, eocd - 20), KW_E_PT_FORMAT, "%s: zip64 end record offset %llu out of range",
                     tz->what, (unsigned long long)rec);
        const unsigned char *r = b + rec;
        const uint64_t rec_size = kw_load_le64(r + 4);
        KW_RETURN_IF(kw_load_le32(r) != KW_ZIP_EOCD64_SIG || rec_size < 44 || rec_size != eocd - 20 - rec - 12,
                     KW_E_PT_FORMAT, "%s: corrupt zip64 end-of-central-directory record", tz->what);
        KW_RETURN_IF(kw_load_le32(r + 16) != 0 || kw_load_le32(r + 20) != 0 ||
                         kw_load_le64(r + 24) != kw_load_le64(r + 32),
                     KW_E_PT_FORMAT, "%s: multi-disk zip64 archives are not supported", tz->what);
        const uint64_t n64 = kw_load_le64(r + 32), size64 = kw_load_le64(r + 40), off64 = kw_load_le64(r + 48);
        /* Saturated 32-bit fields take the zip64 value; others must agree with it. */
        KW_RETURN_IF((n_entries != 0xffff && n_entries != n64) || (cd_size != 0xffffffffu && cd_size != size64) ||
                         (cd_offset != 0xffffffffu && cd_offset != off64),
                     KW_E_PT_FORMAT, "%s: zip64 and zip end records disagree", tz->what);
        n_entries = n64, cd_size = size64, cd_offset = off64;
        cd_end_limit = rec;
    }
    KW_RETURN_IF(n_entries == 0, KW_E_PT_FORMAT, "%s: empty zip archive", tz->what);
    KW_RETURN_IF(n_entries > KW_TORCHZIP_MAX_ENTRIES, KW_E_LIMIT, "%s: %llu zip entries (limit %u)", tz->what,
                 (unsigned long long)n_entries, KW_TORCHZIP_MAX_ENTRIES);
    KW_RETURN_IF(!kw_zip_in(cd_offset, cd_size, cd_end_limit) || cd_offset + cd_size != cd_end_limit, KW_E_PT_FORMAT,
                 "%s: central directory [%llu, +%llu) does not end at the end record", tz->what,
                 (unsigned long long)cd_offset, (unsigned long long)cd_size);
    KW_RETURN_IF(cd_size / 46 < n_entries, KW_E_PT_FORMAT, "%s: central directory too small for %llu entries", tz->what,
                 (unsigned long long)n_entries);

    tz->entries = kw_arena_calloc(&tz->arena, (size_t)n_entries, sizeof *tz->entries);
    KW_RETURN_IF(!tz->entries, KW_E_NOMEM, "%s: entry table", tz->what);
    uint64_t p = cd_offset;
    const uint64_t cd_end = cd_offset + cd_size;
    for (size_t i = 0; i < n_entries; ++i) {
        KW_RETURN_IF(!kw_zip_in(p, 46, cd_end), KW_E_PT_FORMAT, "%s: central directory entry %zu truncated", tz->what,
                     i);
        const unsigned char *h = b + p;
        KW_RETURN_IF(kw_load_le32(h) != KW_ZIP_CDH_SIG, KW_E_PT_FORMAT,
                     "%s: bad central directory signature at entry %zu", tz->what, i);
        const uint16_t gp_flags = kw_load_le16(h + 8), method = kw_load_le16(h + 10);
        const uint32_t crc = kw_load_le32(h + 16);
        uint64_t csize = kw_load_le32(h + 20), usize = kw_load_le32(h + 24), local = kw_load_le32(h + 42);
        const size_t nlen = kw_load_le16(h + 28), xlen = kw_load_le16(h + 30), clen = kw_load_le16(h + 32);
        const uint32_t disk = kw_load_le16(h + 34);
        KW_RETURN_IF(!kw_zip_in(p + 46, (uint64_t)nlen + xlen + clen, cd_end), KW_E_PT_FORMAT,
                     "%s: central directory entry %zu overruns the directory", tz->what, i);
        KW_RETURN_IF(nlen == 0 || nlen > KW_TORCHZIP_MAX_NAME, KW_E_PT_FORMAT, "%s: entry %zu: name length %zu",
                     tz->what, i, nlen);
        KW_RETURN_IF(memchr(h + 46, 0, nlen) != NULL, KW_E_PT_FORMAT, "%s: entry %zu: NUL in name", tz->what, i);
        char *name = kw_arena_alloc(&tz->arena, nlen + 1);
        KW_RETURN_IF(!name, KW_E_NOMEM, "%s: entry name", tz->what);
        memcpy(name, h + 46, nlen);
        name[nlen] = '\0';
        KW_FORWARD(kw_zip_extra64(tz, h + 46 + nlen, xlen, &usize, &csize, &local, disk == 0xffff, name));
        KW_RETURN_IF(disk != 0 && disk != 0xffff, KW_E_PT_FORMAT, "%s: entry %s on disk %u", tz->what, name, disk);
        KW_RETURN_IF(gp_flags & 0x0001, KW_E_PT_FORMAT, "%s: entry %s is encrypted", tz->what, name);
        KW_RETURN_IF(method != 0, KW_E_PT_FORMAT,
                     "%s: entry %s is compressed (method %u); torch writes stored entries, re-save with torch.save",
                     tz->what, name, method);
        KW_RETURN_IF(csize != usize, KW_E_PT_FORMAT, "%s: stored entry %s has compressed size %llu != size %llu",
                     tz->what, name, (unsigned long long)csize, (unsigned long long)usize);

        /* The local header must agree on the name; its sizes may be zero (data-descriptor flag), so the central
         * directory's are used. The data must lie before the central directory. */
        KW_RETURN_IF(!kw_zip_in(local, 30, cd_offset), KW_E_PT_FORMAT, "%s: entry %s: local header offset %llu",
                     tz->what, name, (unsigned long long)local);
        const unsigned char *l = b + local;
        KW_RETURN_IF(kw_load_le32(l) != KW_ZIP_LFH_SIG, KW_E_PT_FORMAT, "%s: entry %s: bad local header signature",
                     tz->what, name);
        const size_t lnlen = kw_load_le16(l + 26), lxlen = kw_load_le16(l + 28);
        KW_RETURN_IF(kw_load_le16(l + 8) != method || kw_load_le16(l + 6) != gp_flags, KW_E_PT_FORMAT,
                     "%s: entry %s: local header method or flags differ from the central directory", tz->what, name);
        /* Without a data descriptor (flag bit 3) the local CRC and sizes must be the central ones; with one they
         * may also be zero (torch writes zeros there). Saturated sizes (zip64) are not compared. */
        {
            const uint32_t lcrc = kw_load_le32(l + 14), lcs = kw_load_le32(l + 18), lus = kw_load_le32(l + 22);
            const int zero_ok = (gp_flags & 0x0008) != 0;
            KW_RETURN_IF(!(lcrc == crc || (zero_ok && lcrc == 0)) ||
                             !(lcs == 0xffffffffu || lcs == csize || (zero_ok && lcs == 0)) ||
                             !(lus == 0xffffffffu || lus == usize || (zero_ok && lus == 0)),
                         KW_E_PT_FORMAT, "%s: entry %s: local header CRC or sizes differ from the central directory",
                         tz->what, name);
        }
        KW_RETURN_IF(lnlen != nlen || !kw_zip_in(local + 30, (uint64_t)lnlen + lxlen, cd_offset) ||
                         memcmp(l + 30, name, nlen) != 0,
                     KW_E_PT_FORMAT, "%s: entry %s: local header name differs from the central directory", tz->what,
                     name);
        const uint64_t data = local + 30 + lnlen + lxlen;
        KW_RETURN_IF(!kw_zip_in(data, usize, cd_offset), KW_E_PT_FORMAT,
                     "%s: entry %s: data [%llu, +%llu) outside the archive", tz->what, name, (unsigned long long)data,
                     (unsigned long long)usize);
        tz->entries[i] = (kw_zip_entry){name, nlen, local, data, usize, crc};
        p += 46 + (uint64_t)nlen + xlen + clen;
    }
    KW_RETURN_IF(p != cd_end, KW_E_PT_FORMAT, "%s: %llu unused bytes in the central directory", tz->what,
                 (unsigned long long)(cd_end - p));
    tz->n_entries = (size_t)n_entries;

    /* Entries must not overlap (each one's header and data end before the next header) and names must be unique. */
    kw_zip_entry *sorted = kw_arena_alloc(&tz->arena, tz->n_entries * sizeof *sorted);
    KW_RETURN_IF(!sorted, KW_E_NOMEM, "%s: entry sort", tz->what);
    memcpy(sorted, tz->entries, tz->n_entries * sizeof *sorted);
    qsort(sorted, tz->n_entries, sizeof *sorted, kw_zip_cmp_offset);
    int rc = 0;
    for (size_t i = 0; rc == 0 && i + 1 < tz->n_entries; ++i) {
        if (sorted[i].data_offset + sorted[i].size > sorted[i + 1].local_offset)
            rc = kw_error_set(KW_E_PT_FORMAT, "%s: entries %s and %s overlap", tz->what, sorted[i].name,
                              sorted[i + 1].name);
    }
    if (rc == 0) {
        qsort(sorted, tz->n_entries, sizeof *sorted, kw_zip_cmp_name);
        for (size_t i = 0; rc == 0 && i + 1 < tz->n_entries; ++i)
            if (kw_zip_cmp_name(&sorted[i], &sorted[i + 1]) == 0)
                rc = kw_error_set(KW_E_PT_FORMAT, "%s: duplicate entry %s", tz->what, sorted[i].name);
    }
    KW_FORWARD(rc);
    tz->by_name = sorted; /* kept for the binary searches of kw_zip_lookup */

    if (!(flags & KW_TORCHZIP_NO_CRC)) {
        for (size_t i = 0; i < tz->n_entries; ++i) {
            const kw_zip_entry *e = &tz->entries[i];
            const uint32_t crc = kw_torchzip_crc32(0, b + e->data_offset, (size_t)e->size);
            KW_RETURN_IF(crc != e->crc, KW_E_PT_FORMAT, "%s: entry %s: CRC-32 %08x, directory says %08x", tz->what,
                         e->name, crc, e->crc);
        }
    }
    return 0;
}

/* The entry named <arch>/<suffix>, by binary search over the name-sorted table, or NULL. */
static const kw_zip_entry *kw_zip_lookup(const kw_torchzip *tz, const char *suffix) {
    char name[2 * KW_TORCHZIP_MAX_NAME + 16];
    const size_t n = strlen(suffix);
    if (tz->prefix_len + n >= sizeof name) return NULL;
    memcpy(name, tz->prefix, tz->prefix_len);
    memcpy(name + tz->prefix_len, suffix, n);
    const kw_zip_entry key = {.name = name, .name_len = tz->prefix_len + n};
    return bsearch(&key, tz->by_name, tz->n_entries, sizeof *tz->by_name, kw_zip_cmp_name);
}

/* Finds the single "<arch>/data.pkl" and sets the prefix; checks the byteorder record. */
static int kw_zip_find_pickle(kw_torchzip *tz, const kw_zip_entry **pkl) {
    static const char tail[] = "/data.pkl";
    const size_t tl = sizeof tail - 1;
    *pkl = NULL;
    for (size_t i = 0; i < tz->n_entries; ++i) {
        const kw_zip_entry *e = &tz->entries[i];
        if (e->name_len <= tl || memcmp(e->name + e->name_len - tl, tail, tl) != 0) continue;
        if (memchr(e->name, '/', e->name_len - tl) != NULL) continue; /* only <arch>/data.pkl, one level */
        KW_RETURN_IF(*pkl != NULL, KW_E_PT_FORMAT, "%s: two pickles (%s, %s)", tz->what, (*pkl)->name, e->name);
        *pkl = e;
    }
    KW_RETURN_IF(!*pkl, KW_E_PT_FORMAT, "%s: no <archive>/data.pkl entry (not a torch.save archive)", tz->what);
    tz->prefix = (*pkl)->name;
    tz->prefix_len = (*pkl)->name_len - tl + 1; /* keeps the '/' */
    const kw_zip_entry *bo = kw_zip_lookup(tz, "byteorder");
    if (bo) {
        const char *v = (const char *)tz->base + bo->data_offset;
        KW_RETURN_IF(bo->size == 3 && memcmp(v, "big", 3) == 0, KW_E_UNSUPPORTED,
                     "%s: big-endian checkpoint (byteorder record) is not supported", tz->what);
        KW_RETURN_IF(bo->size != 6 || memcmp(v, "little", 6) != 0, KW_E_PT_FORMAT, "%s: bad byteorder record",
                     tz->what);
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// 2. pickle

typedef struct kw_pk_vm {
    kw_torchzip *tz;
    const unsigned char *p; /* data.pkl */
    size_t n;
    size_t pos;
    size_t op_at; /* offset of the current opcode */
    kw_pk_value **stack;
    size_t sp, stack_cap;
    size_t *marks;
    size_t n_marks, marks_cap;
    kw_pk_value **memo;
    size_t memo_cap;
    size_t n_values; /* values created so far */
} kw_pk_vm;

#define KW_PK_FAIL(vm, ...) return kw_pk_fail_at((vm), __VA_ARGS__)

__attribute__((format(printf, 2, 3))) static int kw_pk_fail_at(const kw_pk_vm *vm, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return kw_error_set(KW_E_PT_PICKLE, "%s: data.pkl offset %zu: %s", vm->tz->what, vm->op_at, msg);
}

/* A new value, or NULL (reported as KW_E_NOMEM by the caller) when out of memory or past KW_TORCHZIP_MAX_VALUES:
 * the count bounds the arena whatever the pickle does (values replaced in a dict are not reclaimed). */
static kw_pk_value *kw_pk_new(kw_pk_vm *vm, enum kw_pk_kind kind) {
    if (++vm->n_values > KW_TORCHZIP_MAX_VALUES) return NULL;
    kw_pk_value *v = kw_arena_calloc(&vm->tz->arena, 1, sizeof *v);
    if (v) v->kind = kind;
    return v;
}

/* The status for a kw_pk_new that returned NULL. */
static int kw_pk_no_value(const kw_pk_vm *vm) {
    if (vm->n_values > KW_TORCHZIP_MAX_VALUES)
        return kw_error_set(KW_E_LIMIT, "%s: pickle creates more than %u values", vm->tz->what, KW_TORCHZIP_MAX_VALUES);
    return kw_error_set(KW_E_NOMEM, "%s: pickle value", vm->tz->what);
}

static int kw_pk_push(kw_pk_vm *vm, kw_pk_value *v) {
    if (!v) return kw_pk_no_value(vm);
    if (vm->sp == vm->stack_cap) {
        const size_t cap = vm->stack_cap ? vm->stack_cap * 2 : 64;
        KW_RETURN_IF(cap > (1u << 20), KW_E_LIMIT, "%s: pickle stack deeper than %u", vm->tz->what, 1u << 20);
        kw_pk_value **s = realloc(vm->stack, cap * sizeof *s);
        KW_RETURN_IF(!s, KW_E_NOMEM, "pickle stack");
        vm->stack = s;
        vm->stack_cap = cap;
    }
    vm->stack[vm->sp++] = v;
    return 0;
}

/* The stack floor: values below the innermost mark are not poppable by plain opcodes. */
static size_t kw_pk_floor(const kw_pk_vm *vm) {
    return vm->n_marks ? vm->marks[vm->n_marks - 1] : 0;
}

static int kw_pk_pop(kw_pk_vm *vm, kw_pk_value **out) {
    if (vm->sp <= kw_pk_floor(vm)) KW_PK_FAIL(vm, "stack underflow");
    *out = vm->stack[--vm->sp];
    return 0;
}

/* Pops everything above the innermost mark: *items points into the stack (valid until the next push), *n items. */
static int kw_pk_pop_mark(kw_pk_vm *vm, kw_pk_value ***items, size_t *n) {
    if (vm->n_marks == 0) KW_PK_FAIL(vm, "no MARK on the stack");
    const size_t m = vm->marks[--vm->n_marks];
    *items = vm->stack + m;
    *n = vm->sp - m;
    vm->sp = m;
    return 0;
}

static int kw_pk_need(kw_pk_vm *vm, size_t k, const char *op) {
    if (vm->n - vm->pos < k) KW_PK_FAIL(vm, "pickle ends inside %s", op);
    return 0;
}

static int kw_pk_tuple(kw_pk_vm *vm, kw_pk_value **items, size_t n) {
    kw_pk_value *t = kw_pk_new(vm, KW_PK_TUPLE);
    if (!t) return kw_pk_no_value(vm);
    if (n) {
        t->items = kw_arena_alloc(&vm->tz->arena, n * sizeof *t->items);
        KW_RETURN_IF(!t->items, KW_E_NOMEM, "pickle tuple");
        memcpy(t->items, items, n * sizeof *items);
    }
    t->n = n;
    return kw_pk_push(vm, t);
}

/* Grows a list or dict's item array to hold `need` slots (arena copies; the old block is simply abandoned). */
static int kw_pk_reserve(kw_pk_vm *vm, kw_pk_value *c, size_t need) {
    if (need <= c->cap) return 0;
    size_t cap = c->cap ? c->cap * 2 : 16;
    while (cap < need)
        cap *= 2;
    kw_pk_value **items = kw_arena_alloc(&vm->tz->arena, cap * sizeof *items);
    KW_RETURN_IF(!items, KW_E_NOMEM, "pickle container");
    if (c->n) memcpy(items, c->items, (c->kind == KW_PK_DICT ? 2 * c->n : c->n) * sizeof *items);
    c->items = items;
    c->cap = cap;
    return 0;
}

static int kw_pk_key_eq(const kw_pk_value *a, const kw_pk_value *b) {
    if (a->kind != b->kind) return 0;
    if (a->kind == KW_PK_STR) return a->n == b->n && memcmp(a->s, b->s, a->n) == 0;
    return a->i == b->i; /* INT or BOOL */
}

/* d[key] = value with Python semantics: an existing key keeps its position and gets the new value. */
static int kw_pk_dict_set(kw_pk_vm *vm, kw_pk_value *d, kw_pk_value *key, kw_pk_value *value) {
    if (key->kind != KW_PK_STR && key->kind != KW_PK_INT)
        KW_PK_FAIL(vm, "dict key of unsupported type (only str and int keys are accepted)");
    for (size_t i = 0; i < d->n; ++i) {
        if (kw_pk_key_eq(d->items[2 * i], key)) {
            d->items[2 * i + 1] = value;
            return 0;
        }
    }
    if (d->n >= KW_TORCHZIP_MAX_ITEMS) KW_PK_FAIL(vm, "dict with more than %u entries", KW_TORCHZIP_MAX_ITEMS);
    KW_FORWARD(kw_pk_reserve(vm, d, 2 * (d->n + 1)));
    d->items[2 * d->n] = key;
    d->items[2 * d->n + 1] = value;
    d->n++;
    return 0;
}

static int kw_pk_global(kw_pk_vm *vm) {
    /* GLOBAL: "module\nname\n" */
    const unsigned char *s = vm->p + vm->pos;
    const size_t avail = vm->n - vm->pos;
    const unsigned char *nl1 = memchr(s, '\n', avail);
    if (!nl1) KW_PK_FAIL(vm, "pickle ends inside GLOBAL");
    const unsigned char *nl2 = memchr(nl1 + 1, '\n', avail - (size_t)(nl1 + 1 - s));
    if (!nl2) KW_PK_FAIL(vm, "pickle ends inside GLOBAL");
    const size_t mlen = (size_t)(nl1 - s), nlen = (size_t)(nl2 - nl1 - 1);
    vm->pos += (size_t)(nl2 + 1 - s);
    static const struct {
        const char *module, *name;
        enum kw_pk_global g;
    } allowed[] = {
        {"collections", "OrderedDict", KW_PK_G_ORDERED_DICT},
        {"torch._utils", "_rebuild_tensor_v2", KW_PK_G_REBUILD_TENSOR_V2},
        {"torch", "BFloat16Storage", KW_PK_G_BF16_STORAGE},
        {"torch", "FloatStorage", KW_PK_G_F32_STORAGE},
        {"torch", "HalfStorage", KW_PK_G_F16_STORAGE},
    };
    for (size_t i = 0; i < sizeof allowed / sizeof allowed[0]; ++i) {
        if (strlen(allowed[i].module) == mlen && memcmp(allowed[i].module, s, mlen) == 0 &&
            strlen(allowed[i].name) == nlen && memcmp(allowed[i].name, nl1 + 1, nlen) == 0) {
            kw_pk_value *v = kw_pk_new(vm, KW_PK_GLOBAL);
            if (!v) return kw_pk_no_value(vm);
            v->i = allowed[i].g;
            return kw_pk_push(vm, v);
        }
    }
    const int ml = mlen > 100 ? 100 : (int)mlen, nl = nlen > 100 ? 100 : (int)nlen;
    KW_PK_FAIL(vm, "unsupported global %.*s.%.*s", ml, (const char *)s, nl, (const char *)(nl1 + 1));
}

static int kw_pk_int(kw_pk_vm *vm, int64_t value) {
    kw_pk_value *v = kw_pk_new(vm, KW_PK_INT);
    if (!v) return kw_pk_no_value(vm);
    v->i = value;
    return kw_pk_push(vm, v);
}

static int kw_pk_memo_put(kw_pk_vm *vm, uint64_t idx) {
    if (vm->sp <= kw_pk_floor(vm)) KW_PK_FAIL(vm, "PUT with nothing to memoise");
    if (idx >= KW_TORCHZIP_MAX_MEMO) KW_PK_FAIL(vm, "memo index %llu beyond the limit", (unsigned long long)idx);
    if (idx >= vm->memo_cap) {
        size_t cap = vm->memo_cap ? vm->memo_cap : 256;
        while (cap <= idx)
            cap *= 2;
        kw_pk_value **m = realloc(vm->memo, cap * sizeof *m);
        KW_RETURN_IF(!m, KW_E_NOMEM, "pickle memo");
        memset(m + vm->memo_cap, 0, (cap - vm->memo_cap) * sizeof *m);
        vm->memo = m;
        vm->memo_cap = cap;
    }
    vm->memo[idx] = vm->stack[vm->sp - 1];
    return 0;
}

static int kw_pk_memo_get(kw_pk_vm *vm, uint64_t idx) {
    if (idx >= vm->memo_cap || !vm->memo[idx]) KW_PK_FAIL(vm, "GET of unset memo slot %llu", (unsigned long long)idx);
    return kw_pk_push(vm, vm->memo[idx]);
}

/* BINPERSID: ('storage', <storage class>, key, location, numel) -> a storage of the table. */
static int kw_pk_persistent(kw_pk_vm *vm) {
    kw_pk_value *pid = NULL;
    KW_FORWARD(kw_pk_pop(vm, &pid));
    if (pid->kind != KW_PK_TUPLE || pid->n != 5) KW_PK_FAIL(vm, "persistent id is not a 5-tuple");
    kw_pk_value **f = pid->items;
    if (f[0]->kind != KW_PK_STR || strcmp(f[0]->s, "storage") != 0) KW_PK_FAIL(vm, "persistent id is not a storage");
    if (f[1]->kind != KW_PK_GLOBAL || f[1]->i < KW_PK_G_BF16_STORAGE)
        KW_PK_FAIL(vm, "storage type is not a storage class");
    if (f[2]->kind != KW_PK_STR || f[3]->kind != KW_PK_STR || f[4]->kind != KW_PK_INT || f[4]->i < 0)
        KW_PK_FAIL(vm, "malformed storage persistent id");
    const enum kw_dtype dtype = f[1]->i == KW_PK_G_BF16_STORAGE  ? KW_DTYPE_BF16
                                : f[1]->i == KW_PK_G_F32_STORAGE ? KW_DTYPE_F32
                                                                 : KW_DTYPE_F16;
    kw_torchzip *tz = vm->tz;
    size_t idx = tz->n_storages;
    for (size_t i = 0; i < tz->n_storages; ++i) {
        if (strcmp(tz->storages[i].key, f[2]->s) == 0) {
            if (tz->storages[i].dtype != dtype || tz->storages[i].numel != (uint64_t)f[4]->i)
                KW_PK_FAIL(vm, "storage %s is referenced with two dtypes or sizes", f[2]->s);
            idx = i;
            break;
        }
    }
    if (idx == tz->n_storages) {
        /* A new storage: its record must exist and hold exactly numel elements. */
        char suffix[KW_TORCHZIP_MAX_NAME + 8];
        KW_RETURN_IF(f[2]->n > KW_TORCHZIP_MAX_NAME, KW_E_PT_FORMAT, "%s: storage key too long", tz->what);
        memcpy(suffix, "data/", 5);
        memcpy(suffix + 5, f[2]->s, f[2]->n + 1);
        const kw_zip_entry *e = kw_zip_lookup(tz, suffix);
        KW_RETURN_IF(!e, KW_E_PT_FORMAT, "%s: storage record %.*s%s is missing", tz->what, (int)tz->prefix_len,
                     tz->prefix, suffix);
        size_t nbytes = 0;
        KW_RETURN_IF(kw_size_mul((size_t)f[4]->i, kw_tz_elem_size(dtype), &nbytes) < 0 || nbytes != e->size,
                     KW_E_PT_FORMAT, "%s: storage %s: %lld elements of %zu bytes, but the record has %llu bytes",
                     tz->what, f[2]->s, (long long)f[4]->i, kw_tz_elem_size(dtype), (unsigned long long)e->size);
        /* torch aligns storages to 64 bytes; an archive written by another zip tool may not, and such a storage
         * is copied so that every tensor pointer is aligned to its element size. */
        const unsigned char *data = tz->base + e->data_offset;
        if ((uintptr_t)data % kw_tz_elem_size(dtype) != 0) {
            unsigned char *copy = kw_arena_alloc(&tz->arena, nbytes);
            KW_RETURN_IF(!copy, KW_E_NOMEM, "%s: copy of unaligned storage %s", tz->what, f[2]->s);
            memcpy(copy, data, nbytes);
            data = copy;
        }
        KW_RETURN_IF(tz->n_storages >= KW_TORCHZIP_MAX_ITEMS, KW_E_LIMIT, "%s: more than %u storages", tz->what,
                     KW_TORCHZIP_MAX_ITEMS);
        if (tz->n_storages == tz->cap_storages) {
            const size_t cap = tz->cap_storages ? tz->cap_storages * 2 : 64;
            kw_pt_storage *s = kw_arena_alloc(&tz->arena, cap * sizeof *s);
            KW_RETURN_IF(!s, KW_E_NOMEM, "storage table");
            if (tz->n_storages) memcpy(s, tz->storages, tz->n_storages * sizeof *s);
            tz->storages = s;
            tz->cap_storages = cap;
        }
        tz->storages[idx] = (kw_pt_storage){f[2]->s, dtype, (uint64_t)f[4]->i, e, data};
        tz->n_storages++;
    }
    kw_pk_value *v = kw_pk_new(vm, KW_PK_STORAGE);
    if (!v) return kw_pk_no_value(vm);
    v->i = (int64_t)idx;
    return kw_pk_push(vm, v);
}

/* _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks) -> a tensor. */
static int kw_pk_rebuild_tensor(kw_pk_vm *vm, const kw_pk_value *args) {
    if (args->n != 6) KW_PK_FAIL(vm, "_rebuild_tensor_v2 with %zu arguments (6 expected)", args->n);
    kw_pk_value **a = args->items;
    if (a[0]->kind != KW_PK_STORAGE) KW_PK_FAIL(vm, "_rebuild_tensor_v2: first argument is not a storage");
    if (a[1]->kind != KW_PK_INT || a[1]->i < 0) KW_PK_FAIL(vm, "_rebuild_tensor_v2: bad storage offset");
    if (a[2]->kind != KW_PK_TUPLE || a[3]->kind != KW_PK_TUPLE || a[2]->n != a[3]->n)
        KW_PK_FAIL(vm, "_rebuild_tensor_v2: size and stride are not tuples of one length");
    if (a[2]->n > KW_TORCHZIP_MAX_DIMS) KW_PK_FAIL(vm, "tensor with %zu dimensions", a[2]->n);
    if (a[4]->kind != KW_PK_BOOL) KW_PK_FAIL(vm, "_rebuild_tensor_v2: requires_grad is not a bool");
    if (a[5]->kind != KW_PK_DICT || a[5]->n != 0) KW_PK_FAIL(vm, "_rebuild_tensor_v2: backward hooks are not empty");
    kw_torchzip *tz = vm->tz;
    const kw_pt_storage *st = &tz->storages[a[0]->i];
    kw_torchzip_tensor t = {.dtype = st->dtype, .ndim = (int32_t)a[2]->n};
    size_t numel = 1;
    for (size_t d = 0; d < a[2]->n; ++d) {
        const kw_pk_value *s = a[2]->items[d], *r = a[3]->items[d];
        if (s->kind != KW_PK_INT || r->kind != KW_PK_INT || s->i < 0 || r->i < 0)
            KW_PK_FAIL(vm, "_rebuild_tensor_v2: size and stride must be non-negative ints");
        t.shape[d] = s->i;
        KW_RETURN_IF(kw_size_mul(numel, (size_t)s->i, &numel) < 0, KW_E_PT_FORMAT, "%s: tensor size overflows",
                     tz->what);
    }
    if (numel > 0) {
        /* Contiguous row-major; a size-1 dimension may carry any stride (torch's is_contiguous rule). */
        int64_t expect = 1;
        for (size_t d = a[2]->n; d-- > 0;) {
            if (t.shape[d] != 1 && a[3]->items[d]->i != expect)
                KW_FAIL(KW_E_PT_FORMAT,
                        "%s: a tensor on storage %s is not contiguous (dim %zu stride %lld, expected %lld)", tz->what,
                        st->key, d, (long long)a[3]->items[d]->i, (long long)expect);
            expect *= t.shape[d];
        }
    }
    size_t end = 0;
    KW_RETURN_IF(kw_size_add((size_t)a[1]->i, numel, &end) < 0 || end > st->numel, KW_E_PT_FORMAT,
                 "%s: tensor [offset %lld, %zu elements] exceeds storage %s of %llu elements", tz->what,
                 (long long)a[1]->i, numel, st->key, (unsigned long long)st->numel);
    const size_t es = kw_tz_elem_size(st->dtype);
    t.nbytes = numel * es;
    t.data = numel ? st->data + (size_t)a[1]->i * es : NULL;

    KW_RETURN_IF(tz->n_tensors >= KW_TORCHZIP_MAX_ITEMS, KW_E_LIMIT, "%s: more than %u tensors", tz->what,
                 KW_TORCHZIP_MAX_ITEMS);
    if (tz->n_tensors == tz->cap_tensors) {
        const size_t cap = tz->cap_tensors ? tz->cap_tensors * 2 : 64;
        kw_torchzip_tensor *ts = kw_arena_alloc(&tz->arena, cap * sizeof *ts);
        KW_RETURN_IF(!ts, KW_E_NOMEM, "tensor table");
        if (tz->n_tensors) memcpy(ts, tz->tensors, tz->n_tensors * sizeof *ts);
        tz->tensors = ts;
        tz->cap_tensors = cap;
    }
    tz->tensors[tz->n_tensors] = t;
    kw_pk_value *v = kw_pk_new(vm, KW_PK_TENSOR);
    if (!v) return kw_pk_no_value(vm);
    v->i = (int64_t)tz->n_tensors++;
    return kw_pk_push(vm, v);
}

static int kw_pk_reduce(kw_pk_vm *vm) {
    kw_pk_value *args = NULL, *fn = NULL;
    KW_FORWARD(kw_pk_pop(vm, &args));
    KW_FORWARD(kw_pk_pop(vm, &fn));
    if (fn->kind != KW_PK_GLOBAL) KW_PK_FAIL(vm, "REDUCE of a value that is not a global");
    if (args->kind != KW_PK_TUPLE) KW_PK_FAIL(vm, "REDUCE arguments are not a tuple");
    if (fn->i == KW_PK_G_ORDERED_DICT) {
        if (args->n != 0) KW_PK_FAIL(vm, "OrderedDict called with arguments");
        return kw_pk_push(vm, kw_pk_new(vm, KW_PK_DICT));
    }
    if (fn->i == KW_PK_G_REBUILD_TENSOR_V2) return kw_pk_rebuild_tensor(vm, args);
    KW_PK_FAIL(vm, "REDUCE of a storage class");
}

/* Opcode names for messages. */
static const char *kw_pk_opname(unsigned char op) {
    switch (op) {
    case 0x80:
        return "PROTO";
    case 0x8c:
        return "SHORT_BINUNICODE";
    case 0x95:
        return "FRAME";
    case 0x94:
        return "MEMOIZE";
    case 0x93:
        return "STACK_GLOBAL";
    case 0x81:
        return "NEWOBJ";
    case 'a':
        return "APPEND";
    case 'G':
        return "BINFLOAT";
    case 'T':
        return "BINSTRING";
    case 'U':
        return "SHORT_BINSTRING";
    case 'V':
        return "UNICODE";
    case 'I':
        return "INT";
    case 'L':
        return "LONG";
    case 'p':
        return "PUT";
    case 'g':
        return "GET";
    case 'P':
        return "PERSID";
    case 'i':
        return "INST";
    case 'o':
        return "OBJ";
    case '0':
        return "POP";
    case '1':
        return "POP_MARK";
    case '2':
        return "DUP";
    case 0x8b:
        return "LONG4";
    case 'B':
        return "BINBYTES";
    case 'C':
        return "SHORT_BINBYTES";
    default:
        return "unknown";
    }
}

static int kw_pk_run(kw_pk_vm *vm, kw_pk_value **result) {
    int saw_proto = 0;
    for (;;) {
        vm->op_at = vm->pos;
        if (vm->pos >= vm->n) KW_PK_FAIL(vm, "pickle ends without STOP");
        const unsigned char op = vm->p[vm->pos++];
        kw_pk_value *v = NULL, *k = NULL, **items = NULL;
        size_t n = 0;
        switch (op) {
        case 0x80: /* PROTO */
            KW_FORWARD(kw_pk_need(vm, 1, "PROTO"));
            if (saw_proto || vm->op_at != 0) KW_PK_FAIL(vm, "PROTO not at the start");
            if (vm->p[vm->pos] < 2 || vm->p[vm->pos] > 5) KW_PK_FAIL(vm, "pickle protocol %u", vm->p[vm->pos]);
            saw_proto = 1;
            vm->pos += 1;
            break;
        case 'c':
            KW_FORWARD(kw_pk_global(vm));
            break;
        case '(':
            if (vm->n_marks == vm->marks_cap) {
                const size_t cap = vm->marks_cap ? vm->marks_cap * 2 : 32;
                KW_RETURN_IF(cap > (1u << 20), KW_E_LIMIT, "%s: too many nested MARKs", vm->tz->what);
                size_t *m = realloc(vm->marks, cap * sizeof *m);
                KW_RETURN_IF(!m, KW_E_NOMEM, "pickle marks");
                vm->marks = m;
                vm->marks_cap = cap;
            }
            vm->marks[vm->n_marks++] = vm->sp;
            break;
        case ')':
            KW_FORWARD(kw_pk_tuple(vm, NULL, 0));
            break;
        case 't':
            KW_FORWARD(kw_pk_pop_mark(vm, &items, &n));
            KW_FORWARD(kw_pk_tuple(vm, items, n));
            break;
        case 0x85:
        case 0x86:
        case 0x87: /* TUPLE1..3 */
            n = (size_t)(op - 0x84);
            if (vm->sp - kw_pk_floor(vm) < n) KW_PK_FAIL(vm, "stack underflow in TUPLE%zu", n);
            vm->sp -= n;
            KW_FORWARD(kw_pk_tuple(vm, vm->stack + vm->sp, n));
            break;
        case '}':
            KW_FORWARD(kw_pk_push(vm, kw_pk_new(vm, KW_PK_DICT)));
            break;
        case ']':
            KW_FORWARD(kw_pk_push(vm, kw_pk_new(vm, KW_PK_LIST)));
            break;
        case 's': /* SETITEM */
            KW_FORWARD(kw_pk_pop(vm, &v));
            KW_FORWARD(kw_pk_pop(vm, &k));
            if (vm->sp <= kw_pk_floor(vm) || vm->stack[vm->sp - 1]->kind != KW_PK_DICT)
                KW_PK_FAIL(vm, "SETITEM target is not a dict");
            KW_FORWARD(kw_pk_dict_set(vm, vm->stack[vm->sp - 1], k, v));
            break;
        case 'u': /* SETITEMS */
            KW_FORWARD(kw_pk_pop_mark(vm, &items, &n));
            if (n % 2) KW_PK_FAIL(vm, "SETITEMS with an odd number of items");
            if (vm->sp <= kw_pk_floor(vm) || vm->stack[vm->sp - 1]->kind != KW_PK_DICT)
                KW_PK_FAIL(vm, "SETITEMS target is not a dict");
            for (size_t i = 0; i < n; i += 2)
                KW_FORWARD(kw_pk_dict_set(vm, vm->stack[vm->sp - 1], items[i], items[i + 1]));
            break;
        case 'e': /* APPENDS */
            KW_FORWARD(kw_pk_pop_mark(vm, &items, &n));
            if (vm->sp <= kw_pk_floor(vm) || vm->stack[vm->sp - 1]->kind != KW_PK_LIST)
                KW_PK_FAIL(vm, "APPENDS target is not a list");
            v = vm->stack[vm->sp - 1];
            if (v->n + n > KW_TORCHZIP_MAX_ITEMS) KW_PK_FAIL(vm, "list with more than %u items", KW_TORCHZIP_MAX_ITEMS);
            KW_FORWARD(kw_pk_reserve(vm, v, v->n + n));
            memcpy(v->items + v->n, items, n * sizeof *items);
            v->n += n;
            break;
        case 'X': { /* BINUNICODE */
            KW_FORWARD(kw_pk_need(vm, 4, "BINUNICODE"));
            const uint32_t len = kw_load_le32(vm->p + vm->pos);
            vm->pos += 4;
            if (len > KW_TORCHZIP_MAX_NAME) KW_PK_FAIL(vm, "string of %u bytes (limit %d)", len, KW_TORCHZIP_MAX_NAME);
            KW_FORWARD(kw_pk_need(vm, len, "BINUNICODE"));
            if (memchr(vm->p + vm->pos, 0, len)) KW_PK_FAIL(vm, "NUL inside a string");
            v = kw_pk_new(vm, KW_PK_STR);
            char *s = kw_arena_alloc(&vm->tz->arena, (size_t)len + 1);
            if (!v) return kw_pk_no_value(vm);
            KW_RETURN_IF(!s, KW_E_NOMEM, "pickle string");
            memcpy(s, vm->p + vm->pos, len);
            s[len] = '\0';
            v->s = s;
            v->n = len;
            vm->pos += len;
            KW_FORWARD(kw_pk_push(vm, v));
            break;
        }
        case 'J': /* BININT: signed 32 */
            KW_FORWARD(kw_pk_need(vm, 4, "BININT"));
            KW_FORWARD(kw_pk_int(vm, (int32_t)kw_load_le32(vm->p + vm->pos)));
            vm->pos += 4;
            break;
        case 'K': /* BININT1 */
            KW_FORWARD(kw_pk_need(vm, 1, "BININT1"));
            KW_FORWARD(kw_pk_int(vm, vm->p[vm->pos]));
            vm->pos += 1;
            break;
        case 'M': /* BININT2 */
            KW_FORWARD(kw_pk_need(vm, 2, "BININT2"));
            KW_FORWARD(kw_pk_int(vm, kw_load_le16(vm->p + vm->pos)));
            vm->pos += 2;
            break;
        case 0x8a: { /* LONG1: n bytes of little-endian two's complement */
            KW_FORWARD(kw_pk_need(vm, 1, "LONG1"));
            const size_t len = vm->p[vm->pos++];
            KW_FORWARD(kw_pk_need(vm, len, "LONG1"));
            if (len > 8) KW_PK_FAIL(vm, "LONG1 integer of %zu bytes does not fit 64 bits", len);
            uint64_t u = 0;
            for (size_t i = 0; i < len; ++i)
                u |= (uint64_t)vm->p[vm->pos + i] << (8 * i);
            if (len > 0 && len < 8 && (vm->p[vm->pos + len - 1] & 0x80)) u |= ~0ull << (8 * len); /* sign-extend */
            vm->pos += len;
            int64_t sv = 0;
            memcpy(&sv, &u, sizeof sv);
            KW_FORWARD(kw_pk_int(vm, sv));
            break;
        }
        case 0x88:
        case 0x89: /* NEWTRUE, NEWFALSE */
            v = kw_pk_new(vm, KW_PK_BOOL);
            if (!v) return kw_pk_no_value(vm);
            v->i = op == 0x88;
            KW_FORWARD(kw_pk_push(vm, v));
            break;
        case 'N':
            KW_FORWARD(kw_pk_push(vm, kw_pk_new(vm, KW_PK_NONE)));
            break;
        case 'q':
            KW_FORWARD(kw_pk_need(vm, 1, "BINPUT"));
            KW_FORWARD(kw_pk_memo_put(vm, vm->p[vm->pos]));
            vm->pos += 1;
            break;
        case 'r':
            KW_FORWARD(kw_pk_need(vm, 4, "LONG_BINPUT"));
            KW_FORWARD(kw_pk_memo_put(vm, kw_load_le32(vm->p + vm->pos)));
            vm->pos += 4;
            break;
        case 'h':
            KW_FORWARD(kw_pk_need(vm, 1, "BINGET"));
            KW_FORWARD(kw_pk_memo_get(vm, vm->p[vm->pos]));
            vm->pos += 1;
            break;
        case 'j':
            KW_FORWARD(kw_pk_need(vm, 4, "LONG_BINGET"));
            KW_FORWARD(kw_pk_memo_get(vm, kw_load_le32(vm->p + vm->pos)));
            vm->pos += 4;
            break;
        case 'R':
            KW_FORWARD(kw_pk_reduce(vm));
            break;
        case 'b': /* BUILD: only the OrderedDict's __dict__ (torch's _metadata), which is accepted and dropped */
            KW_FORWARD(kw_pk_pop(vm, &v));
            if (vm->sp <= kw_pk_floor(vm) || vm->stack[vm->sp - 1]->kind != KW_PK_DICT)
                KW_PK_FAIL(vm, "BUILD on an object that is not an OrderedDict");
            if (v->kind != KW_PK_DICT) KW_PK_FAIL(vm, "BUILD state is not a dict");
            break;
        case 'Q':
            KW_FORWARD(kw_pk_persistent(vm));
            break;
        case '.': /* STOP */
            if (vm->n_marks) KW_PK_FAIL(vm, "STOP with an open MARK");
            if (vm->sp != 1) KW_PK_FAIL(vm, "STOP with %zu values on the stack (1 expected)", vm->sp);
            if (vm->pos != vm->n) KW_PK_FAIL(vm, "%zu bytes after STOP", vm->n - vm->pos);
            *result = vm->stack[0];
            return 0;
        default:
            KW_PK_FAIL(vm, "unsupported opcode 0x%02x (%s)", op, kw_pk_opname(op));
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 3. the state dict

static int kw_tz_load(kw_torchzip *tz, unsigned flags) {
    KW_FORWARD(kw_zip_read_directory(tz, flags));
    const kw_zip_entry *pkl = NULL;
    KW_FORWARD(kw_zip_find_pickle(tz, &pkl));
    KW_RETURN_IF(pkl->size > KW_TORCHZIP_MAX_PICKLE, KW_E_LIMIT, "%s: data.pkl of %llu bytes (limit %u)", tz->what,
                 (unsigned long long)pkl->size, KW_TORCHZIP_MAX_PICKLE);
    kw_pk_vm vm = {.tz = tz, .p = tz->base + pkl->data_offset, .n = (size_t)pkl->size};
    kw_pk_value *root = NULL;
    int rc = kw_pk_run(&vm, &root);
    free(vm.stack);
    free(vm.marks);
    free(vm.memo);
    KW_FORWARD(rc);
    KW_RETURN_IF(root->kind != KW_PK_DICT, KW_E_PT_PICKLE, "%s: the pickle is not a dict of tensors", tz->what);

    /* Reorder the tensor table to dict order and name it; every value must be a tensor, each used once. */
    kw_torchzip_tensor *ordered = kw_arena_calloc(&tz->arena, root->n ? root->n : 1, sizeof *ordered);
    KW_RETURN_IF(!ordered, KW_E_NOMEM, "tensor table");
    for (size_t i = 0; i < root->n; ++i) {
        const kw_pk_value *key = root->items[2 * i], *val = root->items[2 * i + 1];
        KW_RETURN_IF(key->kind != KW_PK_STR, KW_E_PT_PICKLE, "%s: state-dict key %zu is not a string", tz->what, i);
        KW_RETURN_IF(val->kind != KW_PK_TENSOR, KW_E_PT_PICKLE, "%s: state-dict value %s is not a tensor", tz->what,
                     key->s);
        ordered[i] = tz->tensors[val->i];
        ordered[i].name = key->s;
    }
    tz->tensors = ordered;
    tz->n_tensors = root->n;
    return 0;
}

static int kw_tz_open_common(kw_torchzip *tz, unsigned flags, kw_torchzip **out) {
    const int rc = kw_tz_load(tz, flags);
    if (rc < 0) {
        kw_torchzip_close(tz);
        return rc;
    }
    *out = tz;
    return 0;
}

int kw_torchzip_open_buffer(const void *data, size_t size, unsigned flags, kw_torchzip **out) {
    KW_RETURN_IF(!out || (!data && size), KW_E_INVALID_ARG, "kw_torchzip_open_buffer: NULL argument");
    *out = NULL;
    kw_torchzip *tz = calloc(1, sizeof *tz);
    KW_RETURN_IF(!tz, KW_E_NOMEM, "kw_torchzip");
    kw_arena_init(&tz->arena, 0);
    tz->base = data;
    tz->size = size;
    tz->what = "<buffer>";
    return kw_tz_open_common(tz, flags, out);
}

int kw_torchzip_open(const char *path, unsigned flags, kw_torchzip **out) {
    KW_RETURN_IF(!path || !out, KW_E_INVALID_ARG, "kw_torchzip_open: NULL argument");
    *out = NULL;
    kw_torchzip *tz = calloc(1, sizeof *tz);
    KW_RETURN_IF(!tz, KW_E_NOMEM, "kw_torchzip");
    kw_arena_init(&tz->arena, 0);
    const int rc = kw_file_map_open(path, &tz->map);
    if (rc < 0) {
        kw_torchzip_close(tz);
        return rc;
    }
    tz->base = tz->map.data;
    tz->size = tz->map.size;
    char *what = kw_arena_alloc(&tz->arena, strlen(path) + 1);
    if (!what) {
        kw_torchzip_close(tz);
        KW_FAIL(KW_E_NOMEM, "kw_torchzip");
    }
    strcpy(what, path);
    tz->what = what;
    return kw_tz_open_common(tz, flags, out);
}

void kw_torchzip_close(kw_torchzip *tz) {
    if (!tz) return;
    kw_file_unmap(&tz->map);
    kw_arena_free(&tz->arena);
    free(tz);
}

size_t kw_torchzip_count(const kw_torchzip *tz) {
    return tz ? tz->n_tensors : 0;
}

const kw_torchzip_tensor *kw_torchzip_at(const kw_torchzip *tz, size_t i) {
    return (tz && i < tz->n_tensors) ? &tz->tensors[i] : NULL;
}

const kw_torchzip_tensor *kw_torchzip_find(const kw_torchzip *tz, const char *name) {
    if (!tz || !name) return NULL;
    for (size_t i = 0; i < tz->n_tensors; ++i)
        if (strcmp(tz->tensors[i].name, name) == 0) return &tz->tensors[i];
    return NULL;
}
