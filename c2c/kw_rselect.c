/* kw_rselect.c: a receiver's selection, its encoding and its replay on the sharer (see kw_rselect.h). */
#include "c2c/kw_rselect.h"

#include <stdlib.h>
#include <string.h>

#include "common/kw_status.h"

static void kw_rselect_entry_free(kw_rselect_entry *e) {
    free(e->rows), free(e->masks);
}

void kw_rselect_free(kw_rselect *s) {
    if (s == NULL) return;
    for (int32_t i = 0; i < s->n; ++i)
        kw_rselect_entry_free(&s->entries[i]);
    free(s->entries);
    memset(s, 0, sizeof *s);
}

/* Room for one more entry. */
static int kw_rselect_grow(kw_rselect *s) {
    if (s->n < s->cap) return 0;
    KW_RETURN_IF(s->n >= KW_RSELECT_MAX_ENTRIES, KW_E_LIMIT, "rselect: more than %d entries", KW_RSELECT_MAX_ENTRIES);
    const int32_t cap = s->cap ? 2 * s->cap : 16;
    kw_rselect_entry *e = realloc(s->entries, (size_t)cap * sizeof *e);
    KW_RETURN_IF(e == NULL, KW_E_NOMEM, "rselect: out of memory");
    s->entries = e;
    s->cap = cap;
    return 0;
}

int kw_rselect_add(kw_rselect *s, int64_t pos0, int64_t length, int32_t layer, const int64_t *rows, int64_t n_rows,
                   const kw_share_targets *t) {
    KW_RETURN_IF(s == NULL || pos0 < 0 || length < 1 || layer < 0 || n_rows < 0 || n_rows > length ||
                     (n_rows > 0 && rows == NULL),
                 KW_E_INVALID_ARG, "rselect: bad entry");
    const int32_t n_targets = t ? t->n : 0;
    const size_t mask_bytes = (size_t)((length + 7) / 8);
    KW_RETURN_IF(n_targets < 0 || n_targets > KW_SHARE_MAX_TARGETS ||
                     (n_targets > 0 && t->mask_bytes != (int64_t)mask_bytes),
                 KW_E_INVALID_ARG, "rselect: bad target subsets");
    if (s->n > 0) {
        const kw_rselect_entry *last = &s->entries[s->n - 1];
        KW_RETURN_IF(pos0 < last->pos0 || (pos0 == last->pos0 && layer <= last->layer), KW_E_INVALID_ARG,
                     "rselect: entries out of order");
    }
    KW_FORWARD(kw_rselect_grow(s));
    kw_rselect_entry *e = &s->entries[s->n];
    memset(e, 0, sizeof *e);
    e->rows = malloc((size_t)(n_rows > 0 ? n_rows : 1) * sizeof *e->rows);
    e->masks = n_targets > 0 ? malloc((size_t)n_targets * mask_bytes) : NULL;
    if (e->rows == NULL || (n_targets > 0 && e->masks == NULL)) {
        kw_rselect_entry_free(e);
        KW_FAIL(KW_E_NOMEM, "rselect: out of memory");
    }
    e->pos0 = pos0, e->length = length, e->layer = layer, e->n_rows = n_rows, e->n_targets = n_targets;
    if (n_rows > 0) memcpy(e->rows, rows, (size_t)n_rows * sizeof *rows);
    for (int32_t j = 0; j < n_targets; ++j) {
        e->targets[j] = t->layers[j];
        memcpy(e->masks + (size_t)j * mask_bytes, t->masks[j], mask_bytes);
        e->mask_ptrs[j] = e->masks + (size_t)j * mask_bytes;
    }
    ++s->n;
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * Encoding
 */

typedef struct kw_rselect_buf {
    uint8_t *data;
    size_t len, cap;
} kw_rselect_buf;

static int kw_rselect_put(kw_rselect_buf *b, const void *p, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        uint8_t *d = realloc(b->data, cap);
        KW_RETURN_IF(d == NULL, KW_E_NOMEM, "rselect: out of memory for %zu bytes", cap);
        b->data = d, b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

static int kw_rselect_put_varint(kw_rselect_buf *b, uint64_t v) {
    uint8_t tmp[10];
    size_t n = 0;
    do {
        tmp[n++] = (uint8_t)((v & 0x7f) | (v >= 0x80 ? 0x80 : 0));
        v >>= 7;
    } while (v);
    return kw_rselect_put(b, tmp, n);
}

int kw_rselect_encode(const kw_rselect *s, uint8_t **out, size_t *len) {
    KW_RETURN_IF(s == NULL || out == NULL || len == NULL, KW_E_INVALID_ARG, "rselect: NULL argument");
    *out = NULL, *len = 0;
    kw_rselect_buf b = {0};
    uint8_t *bits = NULL;
    int rc;
    KW_CHECK(kw_rselect_put_varint(&b, (uint64_t)s->n));
    for (int32_t i = 0; i < s->n; ++i) {
        const kw_rselect_entry *e = &s->entries[i];
        const size_t mask_bytes = (size_t)((e->length + 7) / 8);
        free(bits);
        bits = calloc(1, mask_bytes);
        KW_CHECK_IF(bits == NULL, KW_E_NOMEM, "rselect: out of memory");
        for (int64_t r = 0; r < e->n_rows; ++r)
            bits[e->rows[r] >> 3] |= (uint8_t)(1u << (e->rows[r] & 7));
        KW_CHECK(kw_rselect_put_varint(&b, (uint64_t)e->pos0));
        KW_CHECK(kw_rselect_put_varint(&b, (uint64_t)e->layer));
        KW_CHECK(kw_rselect_put_varint(&b, (uint64_t)e->length));
        KW_CHECK(kw_rselect_put(&b, bits, mask_bytes));
        KW_CHECK(kw_rselect_put_varint(&b, (uint64_t)e->n_targets));
        for (int32_t j = 0; j < e->n_targets; ++j) {
            KW_CHECK(kw_rselect_put_varint(&b, (uint64_t)e->targets[j]));
            KW_CHECK(kw_rselect_put(&b, e->mask_ptrs[j], mask_bytes));
        }
    }
    *out = b.data, *len = b.len;
    b.data = NULL;
    rc = 0;
out:
    free(bits);
    free(b.data);
    return rc;
}

/* ------------------------------------------------------------------------------------------------------------
 * Decoding (the bytes come from a peer: every count and length is checked before use)
 */

typedef struct kw_rselect_in {
    const uint8_t *p;
    size_t left;
} kw_rselect_in;

static int kw_rselect_get_varint(kw_rselect_in *in, uint64_t max, const char *what, uint64_t *out) {
    uint64_t v = 0;
    for (int shift = 0;; shift += 7) {
        KW_RETURN_IF(in->left == 0, KW_E_TRUNCATED, "rselect: the selection ends inside %s", what);
        KW_RETURN_IF(shift > 56, KW_E_PARSE, "rselect: %s is not a varint of at most 9 bytes", what);
        const uint8_t byte = *in->p++;
        --in->left;
        v |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) break;
    }
    KW_RETURN_IF(v > max, KW_E_LIMIT, "rselect: %s %llu is above %llu", what, (unsigned long long)v,
                 (unsigned long long)max);
    *out = v;
    return 0;
}

/* A bitmap of `length` bits: its bytes (borrowed from the input), the bits past length zero. */
static int kw_rselect_get_bitmap(kw_rselect_in *in, int64_t length, const uint8_t **out) {
    const size_t mask_bytes = (size_t)((length + 7) / 8);
    KW_RETURN_IF(in->left < mask_bytes, KW_E_TRUNCATED, "rselect: the selection ends inside a bitmap");
    const uint8_t *m = in->p;
    KW_RETURN_IF((length & 7) && (m[mask_bytes - 1] >> (length & 7)), KW_E_PARSE,
                 "rselect: a bitmap has bits past its section's %lld positions", (long long)length);
    in->p += mask_bytes, in->left -= mask_bytes;
    *out = m;
    return 0;
}

/* One entry's fields after its header, checked, appended to out. */
static int kw_rselect_get_entry(kw_rselect_in *in, int64_t pos0, int64_t length, int32_t layer, int64_t *rows,
                                kw_rselect *out) {
    const size_t mask_bytes = (size_t)((length + 7) / 8);
    const uint8_t *all = NULL, *masks[KW_SHARE_MAX_TARGETS];
    int32_t layers[KW_SHARE_MAX_TARGETS];
    uint64_t n_targets = 0;
    KW_FORWARD(kw_rselect_get_bitmap(in, length, &all));
    KW_FORWARD(kw_rselect_get_varint(in, KW_SHARE_MAX_TARGETS, "a target count", &n_targets));
    KW_RETURN_IF(n_targets == 1, KW_E_PARSE, "rselect: one target subset (a single target fuses every row sent)");
    for (uint64_t j = 0; j < n_targets; ++j) {
        uint64_t t = 0;
        KW_FORWARD(kw_rselect_get_varint(in, KW_RSELECT_MAX_LAYER, "a target layer", &t));
        KW_RETURN_IF(j > 0 && (int32_t)t <= layers[j - 1], KW_E_PARSE,
                     "rselect: target layers are not strictly increasing");
        layers[j] = (int32_t)t;
        KW_FORWARD(kw_rselect_get_bitmap(in, length, &masks[j]));
    }
    int64_t n_rows = 0;
    for (size_t byte = 0; byte < mask_bytes; ++byte) {
        uint8_t any = 0;
        for (uint64_t j = 0; j < n_targets; ++j) {
            KW_RETURN_IF(masks[j][byte] & ~all[byte], KW_E_PARSE,
                         "rselect: a target subset is not within the rows sent");
            any |= masks[j][byte];
        }
        KW_RETURN_IF(n_targets > 0 && any != all[byte], KW_E_PARSE, "rselect: rows sent that no target fuses");
        for (int b = 0; b < 8; ++b)
            if (all[byte] & (1u << b)) rows[n_rows++] = (int64_t)(byte * 8 + (size_t)b);
    }
    KW_RETURN_IF(n_rows == 0, KW_E_PARSE, "rselect: layer %d of the section at %lld selects no row", (int)layer,
                 (long long)pos0);
    const kw_share_targets t = {
        .n = (int32_t)n_targets, .layers = layers, .masks = masks, .mask_bytes = (int64_t)mask_bytes};
    return kw_rselect_add(out, pos0, length, layer, rows, n_rows, &t);
}

int kw_rselect_decode(const uint8_t *buf, size_t len, int64_t max_positions, kw_rselect *out) {
    KW_RETURN_IF(buf == NULL || out == NULL || max_positions < 1, KW_E_INVALID_ARG, "rselect: bad arguments");
    memset(out, 0, sizeof *out);
    kw_rselect_in in = {buf, len};
    uint64_t n = 0;
    int64_t *rows = NULL;
    int rc;
    KW_CHECK(kw_rselect_get_varint(&in, KW_RSELECT_MAX_ENTRIES, "the entry count", &n));
    rows = malloc((size_t)max_positions * sizeof *rows);
    KW_CHECK_IF(rows == NULL, KW_E_NOMEM, "rselect: out of memory");
    for (uint64_t i = 0; i < n; ++i) {
        uint64_t pos0 = 0, layer = 0, length = 0;
        KW_CHECK(kw_rselect_get_varint(&in, (uint64_t)max_positions - 1, "a section start", &pos0));
        KW_CHECK(kw_rselect_get_varint(&in, KW_RSELECT_MAX_LAYER, "a sharer layer", &layer));
        KW_CHECK(kw_rselect_get_varint(&in, (uint64_t)max_positions - pos0, "a section length", &length));
        KW_CHECK_IF(length == 0, KW_E_PARSE, "rselect: an empty section");
        if (out->n > 0) {
            const kw_rselect_entry *last = &out->entries[out->n - 1];
            KW_CHECK_IF((int64_t)pos0 < last->pos0 || ((int64_t)pos0 == last->pos0 && (int32_t)layer <= last->layer),
                        KW_E_PARSE, "rselect: entries are not strictly increasing in (section, layer)");
        }
        KW_CHECK(kw_rselect_get_entry(&in, (int64_t)pos0, (int64_t)length, (int32_t)layer, rows, out));
    }
    KW_CHECK_IF(in.left != 0, KW_E_PARSE, "rselect: %zu bytes follow the selection", in.left);
    rc = 0;
out:
    free(rows);
    return rc;
}

const kw_rselect_entry *kw_rselect_find(const kw_rselect *s, int64_t pos0, int32_t layer) {
    for (int32_t i = 0; s && i < s->n; ++i)
        if (s->entries[i].pos0 == pos0 && s->entries[i].layer == layer) return &s->entries[i];
    return NULL;
}

int kw_rselect_share_select(void *user, const kw_select_policy *pol, int32_t layer, int64_t pos0, int64_t T,
                            const float *k, const float *v, int64_t *out, int64_t *n_out, kw_share_targets *targets) {
    (void)pol, (void)k, (void)v;
    KW_RETURN_IF(out == NULL || n_out == NULL || targets == NULL, KW_E_INVALID_ARG, "rselect: NULL argument");
    const kw_rselect_entry *e = kw_rselect_find(user, pos0, layer);
    KW_RETURN_IF(e == NULL || e->length != T, KW_E_STATE,
                 "rselect: the receiver's selection has no entry for layer %d of the %lld-token section at %lld",
                 (int)layer, (long long)T, (long long)pos0);
    memcpy(out, e->rows, (size_t)e->n_rows * sizeof *out);
    *n_out = e->n_rows;
    memset(targets, 0, sizeof *targets);
    if (e->n_targets > 0) {
        targets->n = e->n_targets;
        targets->layers = e->targets;
        targets->masks = e->mask_ptrs;
        targets->mask_bytes = (T + 7) / 8;
    }
    return 0;
}
