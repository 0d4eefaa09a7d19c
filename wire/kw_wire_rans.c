/* kw_wire_rans.c: the static order-0 byte coder of section bodies (docs/FORMAT.md §5.15). The encoder counts the
 * body's bytes, picks how many of the most central signed values get a table entry (the rest are escaped to 8 raw
 * bits), writes the table (each frequency in a 4-bit exponent and up to 3 mantissa bits, the most frequent entry
 * implied so the frequencies sum to exactly 4096) and codes the bytes last to first with two interleaved 32-bit rANS
 * states (byte i by state i % 2, one shared byte stream, so the decoder's two dependency chains overlap); the decoder
 * reads them first to last. Decoding checks everything it reads: the table, each escape, and that the stream
 * ends exactly at the stored size in the encoder's initial state.
 */
#include "wire/kw_wire_rans.h"

#include <string.h>

#include "common/kw_bytes.h"
#include "common/kw_status.h"

#define KW__RANS_PROB_BITS 12u
#define KW__RANS_TOTAL     (1u << KW__RANS_PROB_BITS)
#define KW__RANS_LOW       (1u << 23)              /* the state lives in [LOW, LOW << 8) between symbols */
#define KW__RANS_RAW_FREQ  (KW__RANS_TOTAL / 256u) /* an escaped byte: 8 bits, uniform */
#define KW__RANS_FREQ_MAX  3840u /* the largest frequency the table's 4 + 3 bit code holds (15 << 8) */

/* ---------------------------------------------------------------------------------------------------------------
 * The table's frequency code: a 4-bit length e (0 for a zero frequency), then for e <= 4 the e - 1 bits below the
 * leading one (exact), for e > 4 the 3 bits below it (the value (8 | m) << (e - 4)). */

/* The bits v needs (0 for 0). */
static unsigned kw__rans_bit_length(uint64_t v) {
    unsigned e = 0;
    while (v) {
        ++e;
        v >>= 1;
    }
    return e;
}

/* The nearest frequency the code holds, at least 1 (v >= 1). */
static uint32_t kw__rans_representable(uint32_t v) {
    if (v < 16u) return v;
    unsigned shift = kw__rans_bit_length(v) - 4u;
    uint32_t top = (v + (1u << (shift - 1u))) >> shift;
    if (top == 16u) {
        top = 8u;
        ++shift;
    }
    const uint32_t r = top << shift;
    return r > KW__RANS_FREQ_MAX ? KW__RANS_FREQ_MAX : r;
}

typedef struct {
    uint8_t *p; /* borrowed: the next byte to write */
    uint8_t *end;
    uint64_t acc;
    unsigned n_acc;
} kw__rans_bit_writer;

static int kw__rans_put_bits(kw__rans_bit_writer *w, uint32_t v, unsigned bits) {
    w->acc |= (uint64_t)v << w->n_acc;
    w->n_acc += bits;
    while (w->n_acc >= 8u) {
        if (w->p == w->end) return KW_E_BUFFER_TOO_SMALL;
        *w->p++ = (uint8_t)w->acc;
        w->acc >>= 8;
        w->n_acc -= 8u;
    }
    return 0;
}

static int kw__rans_put_freq(kw__rans_bit_writer *w, uint32_t f) {
    const unsigned e = kw__rans_bit_length(f);
    int rc = kw__rans_put_bits(w, e, 4);
    if (rc == 0 && e >= 2u)
        rc = e <= 4u ? kw__rans_put_bits(w, f & ((1u << (e - 1u)) - 1u), e - 1u)
                     : kw__rans_put_bits(w, (f >> (e - 4u)) & 7u, 3);
    return rc;
}

typedef struct {
    const uint8_t *p; /* borrowed */
    const uint8_t *end;
    uint64_t acc;
    unsigned n_acc;
} kw__rans_bit_reader;

static int kw__rans_get_bits(kw__rans_bit_reader *r, unsigned bits, uint32_t *v) {
    while (r->n_acc < bits) {
        KW_RETURN_IF(r->p == r->end, KW_E_WIRE_COMPRESSION, "rANS body: the table runs past the stored bytes");
        r->acc |= (uint64_t)*r->p++ << r->n_acc;
        r->n_acc += 8u;
    }
    *v = (uint32_t)(r->acc & ((1u << bits) - 1u));
    r->acc >>= bits;
    r->n_acc -= bits;
    return 0;
}

static int kw__rans_get_freq(kw__rans_bit_reader *r, uint32_t *f) {
    uint32_t e = 0, m = 0;
    KW_FORWARD(kw__rans_get_bits(r, 4, &e));
    KW_RETURN_IF(e > 12u, KW_E_WIRE_COMPRESSION, "rANS body: frequency length %u > 12", e);
    if (e <= 1u) {
        *f = e;
    } else if (e <= 4u) {
        KW_FORWARD(kw__rans_get_bits(r, e - 1u, &m));
        *f = (1u << (e - 1u)) | m;
    } else {
        KW_FORWARD(kw__rans_get_bits(r, 3, &m));
        *f = (8u | m) << (e - 4u);
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Encoder */

/* log2(v) for v >= 1 in units of 2^-16, by integer arithmetic only (the same on every build and libm): the integer
 * part from the bit length, 16 fraction bits by repeated squaring of the mantissa in [1, 2) held as Q31. */
static uint64_t kw__rans_log2_q16(uint64_t v) {
    const unsigned e = kw__rans_bit_length(v) - 1u;
    uint64_t m = e >= 31u ? v >> (e - 31u) : v << (31u - e); /* [2^31, 2^32) */
    uint64_t r = (uint64_t)e << 16;
    for (unsigned bit = 16; bit-- > 0;) {
        m = (m * m) >> 31; /* [2^31, 2^33) */
        if (m >= (1ull << 32)) {
            m >>= 1;
            r |= 1ull << bit;
        }
    }
    return r;
}

/* The table size (entries in rank order) of least estimated total size, in 2^-16 bits: each present byte's count c
 * at log2(n / c) bits, the escaped bytes at log2(n / escapes) + 8, the table at 7 bits an entry (4 for an absent one)
 * and 20 more. */
static unsigned kw__rans_choose_entries(const uint32_t cnt[256], size_t n) {
    const uint64_t log_n = kw__rans_log2_q16(n);
    uint64_t sym_bits = 0, covered = 0, best = UINT64_MAX;
    uint64_t table_bits = (uint64_t)(16u + 4u) << 16;
    unsigned best_z = 256u;
    for (unsigned z = 1; z <= 256u; ++z) {
        const uint32_t c = cnt[z - 1u];
        table_bits += (uint64_t)(c ? 7u : 4u) << 16;
        if (c) {
            sym_bits += (uint64_t)c * (log_n - kw__rans_log2_q16(c));
            covered += c;
        }
        if (c == 0 && z < 256u) continue;
        const uint64_t esc = (uint64_t)n - covered;
        const uint64_t esc_bits = esc ? esc * (log_n - kw__rans_log2_q16(esc) + (8ull << 16)) : 0;
        const uint64_t total = sym_bits + esc_bits + table_bits;
        if (total < best) {
            best = total;
            best_z = z;
        }
    }
    return best_z;
}

/* Frequencies of the n_entries table entries and the escape (f[256]) summing to KW__RANS_TOTAL, every present byte's
 * at least 1; *mode the entry whose frequency the table leaves implied. */
static void kw__rans_normalize(const uint32_t cnt[256], size_t n, unsigned n_entries, uint32_t f[257], unsigned *mode) {
    uint64_t esc = n;
    unsigned m = 0;
    for (unsigned z = 0; z < n_entries; ++z) {
        esc -= cnt[z];
        if (cnt[z] > cnt[m]) m = z;
    }
    *mode = m;
    for (uint32_t target = KW__RANS_TOTAL;; target -= target / 8u) {
        uint64_t others = 0;
        for (unsigned z = 0; z <= 256u; ++z) {
            const uint64_t c = z < n_entries ? cnt[z] : z == 256u ? esc : 0u;
            if (c == 0 || z == m) {
                f[z] = 0;
                continue;
            }
            const uint64_t scaled = (c * target + n / 2u) / n;
            f[z] = kw__rans_representable(scaled ? (uint32_t)scaled : 1u);
            others += f[z];
        }
        if (others < KW__RANS_TOTAL) {
            f[m] = KW__RANS_TOTAL - (uint32_t)others;
            return;
        }
    }
}

typedef struct {
    uint8_t *p;    /* borrowed: the last byte written (the stream grows down) */
    uint8_t *lim;  /* where the table ends */
    uint32_t x[2]; /* byte i is coded by state i % 2 */
} kw__rans_state;

static int kw__rans_put(kw__rans_state *s, unsigned which, uint32_t start, uint32_t freq) {
    const uint32_t x_max = ((KW__RANS_LOW >> KW__RANS_PROB_BITS) << 8) * freq;
    uint32_t x = s->x[which];
    while (x >= x_max) {
        if (s->p == s->lim) return KW_E_BUFFER_TOO_SMALL;
        *--s->p = (uint8_t)x;
        x >>= 8;
    }
    s->x[which] = ((x / freq) << KW__RANS_PROB_BITS) + (x % freq) + start;
    return 0;
}

int kw__wire_rans_encode(const uint8_t *src, size_t n, uint8_t *dst, size_t cap, size_t *out) {
    KW_RETURN_IF((!src && n) || !dst || !out, KW_E_INVALID_ARG, "null argument");
    uint32_t cnt[256] = {0};
    for (size_t i = 0; i < n; ++i)
        cnt[kw__wire_rans_rank(src[i])]++;
    const unsigned n_entries = n ? kw__rans_choose_entries(cnt, n) : 1u;
    uint32_t f[257], start[257];
    unsigned mode = 0;
    if (n) {
        kw__rans_normalize(cnt, n, n_entries, f, &mode);
    } else {
        memset(f, 0, sizeof f);
        f[0] = KW__RANS_TOTAL;
    }

    kw__rans_bit_writer w = {.p = dst, .end = dst + cap};
    int rc = kw__rans_put_bits(&w, n_entries - 1u, 8);
    if (rc == 0) rc = kw__rans_put_bits(&w, mode, 8);
    if (rc == 0) rc = kw__rans_put_freq(&w, f[256]);
    for (unsigned z = 0; rc == 0 && z < n_entries; ++z)
        if (z != mode) rc = kw__rans_put_freq(&w, f[z]);
    if (rc == 0 && w.n_acc) rc = kw__rans_put_bits(&w, 0, 8u - w.n_acc);
    KW_RETURN_IF(rc != 0, KW_E_BUFFER_TOO_SMALL, "rANS body: the table needs more than %zu bytes", cap);

    uint32_t cum = 0;
    for (unsigned z = 0; z < n_entries; ++z) {
        start[z] = cum;
        cum += f[z];
    }
    start[256] = cum;
    kw__rans_state s = {.p = dst + cap, .lim = w.p, .x = {KW__RANS_LOW, KW__RANS_LOW}};
    for (size_t i = n; rc == 0 && i-- > 0;) {
        const unsigned z = kw__wire_rans_rank(src[i]), which = (unsigned)(i & 1u);
        if (z < n_entries) {
            rc = kw__rans_put(&s, which, start[z], f[z]);
        } else {
            rc = kw__rans_put(&s, which, (uint32_t)src[i] * KW__RANS_RAW_FREQ, KW__RANS_RAW_FREQ);
            if (rc == 0) rc = kw__rans_put(&s, which, start[256], f[256]);
        }
    }
    KW_RETURN_IF(rc != 0 || (size_t)(s.p - s.lim) < 8u, KW_E_BUFFER_TOO_SMALL,
                 "rANS body: %zu bytes code to more than %zu", n, cap);
    s.p -= 8;
    kw_store_le32(s.p, s.x[0]); /* the decoder reads state 0, state 1, then the bytes in the order it needs them */
    kw_store_le32(s.p + 4, s.x[1]);
    const size_t coded = (size_t)(dst + cap - s.p);
    memmove(w.p, s.p, coded);
    *out = (size_t)(w.p - dst) + coded;
    return 0;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Decoder */

int kw__wire_rans_decode(const uint8_t *src, size_t stored, uint8_t *dst, size_t n) {
    KW_RETURN_IF((!src && stored) || (!dst && n), KW_E_INVALID_ARG, "null argument");
    kw__rans_bit_reader r = {.p = src, .end = src + stored};
    uint32_t n_entries = 0, mode = 0, f[257] = {0};
    KW_FORWARD(kw__rans_get_bits(&r, 8, &n_entries));
    ++n_entries;
    KW_FORWARD(kw__rans_get_bits(&r, 8, &mode));
    KW_RETURN_IF(mode >= n_entries, KW_E_WIRE_COMPRESSION, "rANS body: implied entry %u of %u", mode, n_entries);
    KW_FORWARD(kw__rans_get_freq(&r, &f[256]));
    uint32_t sum = f[256];
    for (uint32_t z = 0; z < n_entries; ++z)
        if (z != mode) {
            KW_FORWARD(kw__rans_get_freq(&r, &f[z]));
            sum += f[z];
        }
    KW_RETURN_IF(sum >= KW__RANS_TOTAL, KW_E_WIRE_COMPRESSION,
                 "rANS body: the table's frequencies sum to %u, leaving none for the implied entry", sum);
    KW_RETURN_IF(n_entries == 256u && f[256] != 0, KW_E_WIRE_COMPRESSION,
                 "rANS body: an escape with every byte in the table");
    KW_RETURN_IF(r.acc != 0, KW_E_WIRE_COMPRESSION, "rANS body: the table's padding bits are not zero");
    f[mode] = KW__RANS_TOTAL - sum;

    /* per slot: the frequency (bits 0..12), the slot's offset in its entry (bits 13..24), bit 25 for the escape; and
     * the entry's byte */
    uint32_t slot_info[KW__RANS_TOTAL];
    uint8_t slot_byte[KW__RANS_TOTAL];
    uint32_t cum = 0;
    for (uint32_t z = 0; z < n_entries; ++z) {
        for (uint32_t k = 0; k < f[z]; ++k) {
            slot_info[cum + k] = f[z] | k << 13;
            slot_byte[cum + k] = kw__wire_rans_byte(z);
        }
        cum += f[z];
    }
    for (uint32_t k = 0; cum + k < KW__RANS_TOTAL; ++k) {
        slot_info[cum + k] = f[256] | k << 13 | 1u << 25;
        slot_byte[cum + k] = 0;
    }

    const uint8_t *p = r.p, *end = src + stored;
    KW_RETURN_IF(end - p < 8, KW_E_WIRE_COMPRESSION, "rANS body: no room for the coder's two states");
    uint32_t x[2] = {kw_load_le32(p), kw_load_le32(p + 4)};
    p += 8;
    KW_RETURN_IF(x[0] < KW__RANS_LOW || x[0] >= KW__RANS_LOW << 8 || x[1] < KW__RANS_LOW || x[1] >= KW__RANS_LOW << 8,
                 KW_E_WIRE_COMPRESSION, "rANS body: initial states %08x %08x out of range", x[0], x[1]);
    for (size_t i = 0; i < n; ++i) {
        uint32_t *xs = &x[i & 1u], v = *xs;
        uint32_t slot = v & (KW__RANS_TOTAL - 1u);
        const uint32_t info = slot_info[slot];
        v = (info & 0x1fffu) * (v >> KW__RANS_PROB_BITS) + ((info >> 13) & 0xfffu);
        while (v < KW__RANS_LOW) {
            KW_RETURN_IF(p == end, KW_E_WIRE_COMPRESSION, "rANS body: the stream ends after %zu of %zu bytes", i, n);
            v = (v << 8) | *p++;
        }
        if (!(info >> 25)) {
            *xs = v;
            dst[i] = slot_byte[slot];
            continue;
        }
        slot = v & (KW__RANS_TOTAL - 1u);
        const uint32_t b = slot / KW__RANS_RAW_FREQ;
        KW_RETURN_IF(kw__wire_rans_rank((uint8_t)b) < n_entries, KW_E_WIRE_COMPRESSION,
                     "rANS body: byte %zu escapes %02x, which has a table entry", i, b);
        v = KW__RANS_RAW_FREQ * (v >> KW__RANS_PROB_BITS) + slot - b * KW__RANS_RAW_FREQ;
        while (v < KW__RANS_LOW) {
            KW_RETURN_IF(p == end, KW_E_WIRE_COMPRESSION, "rANS body: the stream ends after %zu of %zu bytes", i, n);
            v = (v << 8) | *p++;
        }
        *xs = v;
        dst[i] = (uint8_t)b;
    }
    KW_RETURN_IF(p != end, KW_E_WIRE_COMPRESSION, "rANS body: %zu stored bytes left after %zu bytes", (size_t)(end - p),
                 n);
    KW_RETURN_IF(x[0] != KW__RANS_LOW || x[1] != KW__RANS_LOW, KW_E_WIRE_COMPRESSION,
                 "rANS body: the coder ends in states %08x %08x, not %08x", x[0], x[1], KW__RANS_LOW);
    return 0;
}
