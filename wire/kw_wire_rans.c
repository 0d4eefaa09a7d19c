/* kw_wire_rans.c: the static order-0 byte coder of section bodies (docs/FORMAT.md §5.15). The caller names the kind
 * of each stretch of the body (scales, K codes, V codes, ...); the encoder counts each kind's bytes, merges kinds
 * while one table costs less than two (and until at most four remain), and for each table picks how many of the
 * most central signed values get an entry (the rest are escaped to 8 raw bits) and writes it (each frequency in a
 * 4-bit exponent and up to 3 mantissa bits, the most frequent entry implied so the frequencies sum to exactly 4096).
 * It codes the bytes last to first with four interleaved 32-bit rANS states (byte i by state i % 4) renormalizing
 * by 16-bit words into one stream, so the decoder's four dependency chains overlap and each symbol reads at most
 * one word; the decoder reads them first to last. Decoding checks everything it reads: the run list, the tables,
 * each escape, and that the stream ends exactly at the stored size in the encoder's initial states.
 */
#include "wire/kw_wire_rans.h"

#include <stdlib.h>
#include <string.h>

#include "common/kw_bytes.h"
#include "common/kw_status.h"

#define KW__RANS_PROB_BITS 12u
#define KW__RANS_TOTAL     (1u << KW__RANS_PROB_BITS)
#define KW__RANS_LOW       (1u << 16)              /* the state lives in [LOW, 2^32) between symbols */
#define KW__RANS_RAW_FREQ  (KW__RANS_TOTAL / 256u) /* an escaped byte: 8 bits, uniform */
#define KW__RANS_FREQ_MAX  3840u /* the largest frequency the table's 4 + 3 bit code holds (15 << 8) */

/* ---------------------------------------------------------------------------------------------------------------
 * The table's frequency code: a 4-bit length e (0 for a zero frequency), then for e <= 4 the e - 1 bits below the
 * leading one (exact), for e > 4 the 3 bits below it (the value (8 | m) << (e - 4)). */

/* The bits v needs (0 for 0). */
static unsigned kw__rans_bit_length(uint64_t v) {
    return v ? 64u - (unsigned)__builtin_clzll(v) : 0u;
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

/* log2(1 + i/256) in units of 2^-16, rounded, i = 0..256 (a table, so the estimates below cost a lookup: the encoder
 * asks for dozens of logarithms per table it sizes, and sizes dozens of candidate tables per section). */
static const uint32_t kw__rans_log2_table[257] = {
    0,     369,   736,   1102,  1466,  1829,  2190,  2551,  2909,  3267,  3623,  3978,  4331,  4683,  5034,  5384,
    5732,  6079,  6425,  6769,  7112,  7454,  7795,  8134,  8473,  8810,  9146,  9480,  9814,  10146, 10477, 10807,
    11136, 11464, 11791, 12116, 12440, 12764, 13086, 13407, 13727, 14046, 14363, 14680, 14996, 15310, 15624, 15937,
    16248, 16559, 16868, 17177, 17484, 17791, 18096, 18401, 18704, 19007, 19308, 19609, 19909, 20207, 20505, 20802,
    21098, 21393, 21687, 21980, 22272, 22564, 22854, 23144, 23433, 23720, 24007, 24293, 24579, 24863, 25146, 25429,
    25711, 25992, 26272, 26551, 26830, 27108, 27384, 27660, 27936, 28210, 28484, 28757, 29029, 29300, 29571, 29840,
    30109, 30378, 30645, 30912, 31178, 31443, 31707, 31971, 32234, 32496, 32758, 33019, 33279, 33538, 33797, 34055,
    34312, 34569, 34825, 35080, 35334, 35588, 35841, 36094, 36346, 36597, 36847, 37097, 37346, 37595, 37842, 38090,
    38336, 38582, 38827, 39072, 39316, 39559, 39802, 40044, 40286, 40527, 40767, 41006, 41246, 41484, 41722, 41959,
    42196, 42432, 42667, 42902, 43137, 43370, 43603, 43836, 44068, 44300, 44530, 44761, 44990, 45220, 45448, 45676,
    45904, 46131, 46357, 46583, 46809, 47034, 47258, 47482, 47705, 47928, 48150, 48372, 48593, 48813, 49034, 49253,
    49472, 49691, 49909, 50127, 50344, 50560, 50776, 50992, 51207, 51422, 51636, 51850, 52063, 52276, 52488, 52700,
    52911, 53122, 53332, 53542, 53751, 53960, 54169, 54377, 54584, 54791, 54998, 55204, 55410, 55615, 55820, 56025,
    56229, 56432, 56635, 56838, 57040, 57242, 57443, 57644, 57845, 58045, 58245, 58444, 58643, 58841, 59039, 59237,
    59434, 59631, 59827, 60023, 60219, 60414, 60609, 60803, 60997, 61190, 61384, 61576, 61769, 61961, 62152, 62343,
    62534, 62725, 62915, 63104, 63294, 63483, 63671, 63859, 64047, 64234, 64421, 64608, 64794, 64980, 65166, 65351,
    65536,
};

uint32_t kw__wire_rans_log2_q16(uint64_t v) {
    if (v == 0) return 0;
    const unsigned e = kw__rans_bit_length(v) - 1u;
    const uint64_t frac = e ? v << (64u - e) : 0u; /* the bits below the leading one, at the top of 64 */
    const uint32_t i = (uint32_t)(frac >> 56), lo = (uint32_t)(frac >> 40) & 0xffffu;
    const uint32_t a = kw__rans_log2_table[i], step = kw__rans_log2_table[i + 1u] - a;
    return (e << 16) + a + ((step * lo + 0x8000u) >> 16); /* linear between the table's points: within 2 units */
}

/* The table size (entries in rank order) of least estimated total size, in 2^-16 bits: each present byte's count c
 * at log2(n / c) bits, the escaped bytes at log2(n / escapes) + 8, the table at 7 bits an entry (4 for an absent one)
 * and 20 more. *cost gets that size. */
static unsigned kw__rans_choose_entries(const uint32_t cnt[256], size_t n, uint64_t *cost) {
    const uint64_t log_n = kw__wire_rans_log2_q16(n);
    uint64_t sym_bits = 0, covered = 0, best = UINT64_MAX;
    uint64_t table_bits = (uint64_t)(16u + 4u) << 16;
    unsigned best_z = 256u, top = 255u;
    while (top > 0 && cnt[top] == 0) /* entries past the last present rank only add table bits: never the best */
        --top;
    for (unsigned z = 1; z <= top + 1u; ++z) {
        const uint32_t c = cnt[z - 1u];
        table_bits += (uint64_t)(c ? 7u : 4u) << 16;
        if (c) {
            sym_bits += (uint64_t)c * (log_n - kw__wire_rans_log2_q16(c));
            covered += c;
        }
        if (c == 0) continue; /* rank top + 1 has a count (unless none has): all entries are always tried */
        const uint64_t esc = (uint64_t)n - covered;
        const uint64_t esc_bits = esc ? esc * (log_n - kw__wire_rans_log2_q16(esc) + (8ull << 16)) : 0;
        const uint64_t total = sym_bits + esc_bits + table_bits;
        if (total < best) {
            best = total;
            best_z = z;
        }
    }
    *cost = best;
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

/* ---------------------------------------------------------------------------------------------------------------
 * The run list: LEB128 varints, at most 5 bytes, no needless continuation byte. */

static int kw__rans_put_varint(uint8_t **p, const uint8_t *end, uint64_t v) {
    do {
        if (*p == end) return KW_E_BUFFER_TOO_SMALL;
        *(*p)++ = (uint8_t)((v & 0x7fu) | (v > 0x7fu ? 0x80u : 0u));
        v >>= 7;
    } while (v);
    return 0;
}

static int kw__rans_get_varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
    uint64_t r = 0;
    for (unsigned k = 0;; ++k) {
        KW_RETURN_IF(*p == end, KW_E_WIRE_COMPRESSION, "rANS body: the run list runs past the stored bytes");
        KW_RETURN_IF(k == 5u, KW_E_WIRE_COMPRESSION, "rANS body: a run-list number longer than 5 bytes");
        const uint8_t b = *(*p)++;
        r |= (uint64_t)(b & 0x7fu) << (7u * k);
        if (!(b & 0x80u)) {
            KW_RETURN_IF(k > 0 && b == 0, KW_E_WIRE_COMPRESSION, "rANS body: a run-list number with a needless byte");
            *v = r;
            return 0;
        }
    }
}

/* ---------------------------------------------------------------------------------------------------------------
 * Encoder */

typedef struct {
    uint32_t cnt[256]; /* by rank */
    uint64_t n;
    uint64_t cost; /* estimated coded size in 2^-16 bits */
    unsigned n_entries;
} kw__rans_hist;

static void kw__rans_hist_cost(kw__rans_hist *h) {
    h->n_entries = h->n ? kw__rans_choose_entries(h->cnt, (size_t)h->n, &h->cost) : 1u;
    if (!h->n) h->cost = 0;
}

/* Merges the classes' histograms into at most KW__WIRE_RANS_MAX_TABLES tables: while more than one is left, the pair
 * whose merged table is estimated smallest against the two apart is merged if that saves anything (or if there are
 * still too many tables). table_of[c] gets each class's table, numbered in order of first use by the runs. */
static unsigned kw__rans_merge(kw__rans_hist *h, unsigned n_cls, const kw__wire_rans_run *runs, size_t n_runs,
                               unsigned table_of[KW__WIRE_RANS_MAX_CLASSES]) {
    unsigned owner[KW__WIRE_RANS_MAX_CLASSES]; /* the class whose histogram holds this class's bytes */
    unsigned alive = 0;
    for (unsigned c = 0; c < n_cls; ++c) {
        owner[c] = c;
        if (h[c].n) {
            kw__rans_hist_cost(&h[c]);
            ++alive;
        }
    }
    /* the saving of merging a and b (a < b), kept between rounds: a merge changes only the pairs of the class that
     * absorbed the other */
    int64_t gain[KW__WIRE_RANS_MAX_CLASSES][KW__WIRE_RANS_MAX_CLASSES];
    kw__rans_hist both;
    unsigned merged = UINT32_MAX; /* the class that absorbed another in the last round (none yet: every pair) */
    while (alive > 1u) {
        for (unsigned x = 0; x < n_cls; ++x)
            for (unsigned y = x + 1u; y < n_cls; ++y) {
                if (!h[x].n || !h[y].n || (merged != UINT32_MAX && x != merged && y != merged)) continue;
                for (unsigned z = 0; z < 256u; ++z)
                    both.cnt[z] = h[x].cnt[z] + h[y].cnt[z];
                both.n = h[x].n + h[y].n;
                kw__rans_hist_cost(&both);
                gain[x][y] = (int64_t)(h[x].cost + h[y].cost) - (int64_t)both.cost;
            }
        int64_t best_gain = INT64_MIN;
        unsigned ba = 0, bb = 0;
        for (unsigned x = 0; x < n_cls; ++x)
            for (unsigned y = x + 1u; y < n_cls; ++y)
                if (h[x].n && h[y].n && gain[x][y] > best_gain) {
                    best_gain = gain[x][y];
                    ba = x;
                    bb = y;
                }
        if (best_gain <= 0 && alive <= KW__WIRE_RANS_MAX_TABLES) break;
        for (unsigned z = 0; z < 256u; ++z)
            h[ba].cnt[z] += h[bb].cnt[z];
        h[ba].n += h[bb].n;
        kw__rans_hist_cost(&h[ba]);
        h[bb].n = 0;
        merged = ba;
        for (unsigned c = 0; c < n_cls; ++c)
            if (owner[c] == bb) owner[c] = ba;
        --alive;
    }
    unsigned n_tables = 0, table_of_owner[KW__WIRE_RANS_MAX_CLASSES];
    for (unsigned c = 0; c < n_cls; ++c)
        table_of_owner[c] = UINT32_MAX;
    for (size_t r = 0; r < n_runs; ++r) {
        const unsigned o = owner[runs[r].cls];
        if (runs[r].bytes && table_of_owner[o] == UINT32_MAX) table_of_owner[o] = n_tables++;
    }
    for (unsigned c = 0; c < n_cls; ++c)
        table_of[c] = table_of_owner[owner[c]];
    return n_tables;
}

typedef struct {
    uint32_t f[257]; /* by rank; f[256] the escape */
    uint32_t start[257];
    uint64_t esc_rcp;                         /* kw__rans_rcp(f[256]) */
    uint32_t byte_start[256], byte_freq[256]; /* by byte value; frequency 0: escaped */
    uint64_t byte_rcp[256];
    unsigned n_entries;
    unsigned mode;
} kw__rans_table;

/* The multiplier that divides by f (>= 1) exactly for any 32-bit dividend: floor(x / f) = (x * m) >> 64 with m =
 * floor((2^64 - 1) / f) + 1 (m overshoots 2^64 / f by less than 1, which moves x / f by less than 2^-32 and never
 * past the next integer, since its fraction is at most 1 - 1/f); 0 for f = 1, which needs no division. */
static uint64_t kw__rans_rcp(uint32_t f) {
    return f > 1u ? UINT64_MAX / f + 1u : 0u;
}

static void kw__rans_table_build(const kw__rans_hist *h, kw__rans_table *t) {
    t->n_entries = h->n_entries;
    kw__rans_normalize(h->cnt, (size_t)h->n, t->n_entries, t->f, &t->mode);
    uint32_t cum = 0;
    for (unsigned z = 0; z < t->n_entries; ++z) {
        t->start[z] = cum;
        cum += t->f[z];
    }
    t->start[256] = cum;
    t->esc_rcp = kw__rans_rcp(t->f[256]);
    for (unsigned b = 0; b < 256u; ++b) {
        const unsigned z = kw__wire_rans_rank((uint8_t)b);
        t->byte_start[b] = z < t->n_entries ? t->start[z] : 0u;
        t->byte_freq[b] = z < t->n_entries ? t->f[z] : 0u;
        t->byte_rcp[b] = z < t->n_entries ? kw__rans_rcp(t->f[z]) : 0u;
    }
}

typedef struct {
    uint8_t *p;    /* borrowed: the last byte written (the stream grows down) */
    uint8_t *lim;  /* where the tables end */
    uint32_t x[4]; /* byte i is coded by state i % 4 */
} kw__rans_state;

static inline __attribute__((always_inline)) int kw__rans_put(kw__rans_state *s, unsigned which, uint32_t start,
                                                              uint32_t freq, uint64_t rcp) {
    const uint64_t x_max = (uint64_t)((KW__RANS_LOW >> KW__RANS_PROB_BITS) << 16) * freq;
    uint32_t x = s->x[which];
    if (x >= x_max) { /* one word always brings x below x_max: x < 2^32 and x_max >= 2^20 */
        if (s->p - s->lim < 2) return KW_E_BUFFER_TOO_SMALL;
        s->p -= 2;
        kw_store_le16(s->p, (uint16_t)x);
        x >>= 16;
    }
    /* x / freq: the high 64 bits of x * rcp from two 32x32 products (the dropped low part moves the sum by less than
     * one unit, which never carries into the result's integer part) */
    const uint64_t mid = (uint64_t)x * (uint32_t)rcp >> 32, hi = (uint64_t)x * (uint32_t)(rcp >> 32) + mid;
    const uint32_t q = freq > 1u ? (uint32_t)(hi >> 32) : x;
    s->x[which] = (q << KW__RANS_PROB_BITS) + (x - q * freq) + start;
    return 0;
}

int kw__wire_rans_encode(const uint8_t *src, size_t n, const kw__wire_rans_run *runs, size_t n_runs, uint8_t *dst,
                         size_t cap, size_t *out) {
    KW_RETURN_IF((!src && n) || !dst || !out || (!runs && n_runs), KW_E_INVALID_ARG, "null argument");
    /* a section's raw body is a u32 (FORMAT.md §4.1): longer, counts and run lengths would outgrow their fields */
    KW_RETURN_IF(n > UINT32_MAX, KW_E_INVALID_ARG, "a body of %zu bytes", n);
    const kw__wire_rans_run whole = {.bytes = (uint32_t)n, .cls = 0};
    if (!runs) {
        runs = &whole;
        n_runs = 1;
    }
    kw__rans_hist *h = calloc(KW__WIRE_RANS_MAX_CLASSES, sizeof *h);
    kw__rans_table *tables = calloc(KW__WIRE_RANS_MAX_TABLES, sizeof *tables);
    int rc = !h || !tables ? KW_E_NOMEM : 0;
    size_t covered = 0;
    for (size_t r = 0; rc == 0 && r < n_runs; ++r) {
        if (runs[r].cls >= KW__WIRE_RANS_MAX_CLASSES || runs[r].bytes > n - covered) {
            rc = KW_E_INVALID_ARG;
            break;
        }
        kw__rans_hist *hc = &h[runs[r].cls];
        uint32_t by_byte[256] = {0};
        for (size_t i = covered; i < covered + runs[r].bytes; ++i)
            by_byte[src[i]]++;
        for (unsigned b = 0; b < 256u; ++b)
            hc->cnt[kw__wire_rans_rank((uint8_t)b)] += by_byte[b];
        hc->n += runs[r].bytes;
        covered += runs[r].bytes;
    }
    if (rc == 0 && covered != n) rc = KW_E_INVALID_ARG;
    if (rc != 0) {
        free(h);
        free(tables);
        KW_RETURN_IF(rc == KW_E_NOMEM, rc, "rANS coder: out of memory");
        KW_FAIL(KW_E_INVALID_ARG, "rANS coder: runs that do not cover the %zu bytes, or a class >= %d", n,
                KW__WIRE_RANS_MAX_CLASSES);
    }
    unsigned table_of[KW__WIRE_RANS_MAX_CLASSES];
    const unsigned n_tables = kw__rans_merge(h, KW__WIRE_RANS_MAX_CLASSES, runs, n_runs, table_of);
    for (unsigned c = 0; c < KW__WIRE_RANS_MAX_CLASSES; ++c)
        if (h[c].n) kw__rans_table_build(&h[c], &tables[table_of[c]]);

    /* the run list: runs of one table merged, empty runs dropped */
    uint8_t *p = dst, *const end = dst + cap;
    size_t n_out = 0;
    unsigned last = UINT32_MAX;
    for (size_t r = 0; r < n_runs; ++r)
        if (runs[r].bytes && table_of[runs[r].cls] != last) {
            last = table_of[runs[r].cls];
            ++n_out;
        }
    if (p == end) rc = KW_E_BUFFER_TOO_SMALL;
    if (rc == 0) *p++ = (uint8_t)(n_tables ? n_tables - 1u : 0u);
    if (rc == 0) rc = kw__rans_put_varint(&p, end, n_out);
    for (size_t r = 0; rc == 0 && r < n_runs;) {
        if (!runs[r].bytes) {
            ++r;
            continue;
        }
        const unsigned t = table_of[runs[r].cls];
        uint64_t len = 0;
        for (; r < n_runs && (!runs[r].bytes || table_of[runs[r].cls] == t); ++r)
            len += runs[r].bytes;
        rc = kw__rans_put_varint(&p, end, ((len - 1u) << 2) | t);
    }
    kw__rans_bit_writer w = {.p = p, .end = end};
    for (unsigned t = 0; rc == 0 && t < (n_tables ? n_tables : 1u); ++t) {
        kw__rans_table *tb = &tables[t];
        if (!n_tables) tb->f[0] = KW__RANS_TOTAL, tb->n_entries = 1; /* an empty body: one table of byte 0 */
        rc = kw__rans_put_bits(&w, tb->n_entries - 1u, 8);
        if (rc == 0) rc = kw__rans_put_bits(&w, tb->mode, 8);
        if (rc == 0) rc = kw__rans_put_freq(&w, tb->f[256]);
        for (unsigned z = 0; rc == 0 && z < tb->n_entries; ++z)
            if (z != tb->mode) rc = kw__rans_put_freq(&w, tb->f[z]);
    }
    if (rc == 0 && w.n_acc) rc = kw__rans_put_bits(&w, 0, 8u - w.n_acc);
    if (rc != 0) {
        free(h);
        free(tables);
        KW_FAIL(KW_E_BUFFER_TOO_SMALL, "rANS body: the run list and tables need more than %zu bytes", cap);
    }

    kw__rans_state s = {.p = end, .lim = w.p, .x = {KW__RANS_LOW, KW__RANS_LOW, KW__RANS_LOW, KW__RANS_LOW}};
    size_t i = n;
    for (size_t r = n_runs; rc == 0 && r-- > 0;) {
        if (!runs[r].bytes) continue;
        const kw__rans_table *tb = &tables[table_of[runs[r].cls]];
        for (size_t k = runs[r].bytes; rc == 0 && k-- > 0;) {
            const uint8_t b = src[--i];
            const unsigned which = (unsigned)(i & 3u);
            if (tb->byte_freq[b]) {
                rc = kw__rans_put(&s, which, tb->byte_start[b], tb->byte_freq[b], tb->byte_rcp[b]);
            } else {
                rc = kw__rans_put(&s, which, (uint32_t)src[i] * KW__RANS_RAW_FREQ, KW__RANS_RAW_FREQ,
                                  UINT64_MAX / KW__RANS_RAW_FREQ + 1u);
                if (rc == 0) rc = kw__rans_put(&s, which, tb->start[256], tb->f[256], tb->esc_rcp);
            }
        }
    }
    free(h);
    free(tables);
    KW_RETURN_IF(rc != 0 || (size_t)(s.p - s.lim) < 16u, KW_E_BUFFER_TOO_SMALL,
                 "rANS body: %zu bytes code to more than %zu", n, cap);
    s.p -= 16;
    for (unsigned k = 0; k < 4u; ++k) /* the decoder reads states 0..3, then the words in the order it needs them */
        kw_store_le32(s.p + 4u * k, s.x[k]);
    const size_t coded = (size_t)(end - s.p);
    memmove(w.p, s.p, coded);
    *out = (size_t)(w.p - dst) + coded;
    return 0;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Decoder */

/* One table as the decoder uses it: per slot, bits 0..11 the frequency minus one, 12..23 the slot's offset in its
 * entry, 24..31 the entry's byte; slots from esc_start up are the escape's. */
typedef struct {
    uint32_t slot[KW__RANS_TOTAL];
    uint32_t esc_start;
    uint32_t n_entries;
} kw__rans_dec_table;

static int kw__rans_read_table(kw__rans_bit_reader *r, kw__rans_dec_table *t) {
    uint32_t n_entries = 0, mode = 0, f[257] = {0};
    KW_FORWARD(kw__rans_get_bits(r, 8, &n_entries));
    ++n_entries;
    KW_FORWARD(kw__rans_get_bits(r, 8, &mode));
    KW_RETURN_IF(mode >= n_entries, KW_E_WIRE_COMPRESSION, "rANS body: implied entry %u of %u", mode, n_entries);
    KW_FORWARD(kw__rans_get_freq(r, &f[256]));
    uint32_t sum = f[256];
    for (uint32_t z = 0; z < n_entries; ++z)
        if (z != mode) {
            KW_FORWARD(kw__rans_get_freq(r, &f[z]));
            sum += f[z];
        }
    KW_RETURN_IF(sum >= KW__RANS_TOTAL, KW_E_WIRE_COMPRESSION,
                 "rANS body: a table's frequencies sum to %u, leaving none for the implied entry", sum);
    KW_RETURN_IF(n_entries == 256u && f[256] != 0, KW_E_WIRE_COMPRESSION,
                 "rANS body: an escape with every byte in the table");
    f[mode] = KW__RANS_TOTAL - sum;
    uint32_t cum = 0;
    for (uint32_t z = 0; z < n_entries; ++z) {
        for (uint32_t k = 0; k < f[z]; ++k)
            t->slot[cum + k] = (f[z] - 1u) | k << 12 | (uint32_t)kw__wire_rans_byte(z) << 24;
        cum += f[z];
    }
    t->esc_start = cum;
    t->n_entries = n_entries;
    return 0;
}

/* Renormalizes v from the stream: 0, or -1 when the stream has ended. */
static inline int kw__rans_refill(uint32_t *v, const uint8_t **p, const uint8_t *end) {
    if (*v >= KW__RANS_LOW) return 0;
    if (end - *p < 2) return -1;
    *v = *v << 16 | kw_load_le16(*p);
    *p += 2;
    return 0;
}

/* One byte from state *x into *out, every case checked (an escape's two symbols, the stream's end): 0, or -1 for a
 * stream that ends or an escaped byte that has a table entry. The careful path: a run's edges, escapes and the
 * stream's last words. */
static __attribute__((noinline)) int kw__rans_dec_checked(uint32_t *x, const kw__rans_dec_table *t, const uint8_t **p,
                                                          const uint8_t *end, uint8_t *out) {
    uint32_t v = *x;
    const uint32_t slot = v & (KW__RANS_TOTAL - 1u);
    if (slot < t->esc_start) {
        const uint32_t e = t->slot[slot];
        v = ((e & 0xfffu) + 1u) * (v >> KW__RANS_PROB_BITS) + ((e >> 12) & 0xfffu);
        if (kw__rans_refill(&v, p, end) != 0) return -1;
        *x = v;
        *out = (uint8_t)(e >> 24);
        return 0;
    }
    v = (KW__RANS_TOTAL - t->esc_start) * (v >> KW__RANS_PROB_BITS) + slot - t->esc_start;
    if (kw__rans_refill(&v, p, end) != 0) return -1;
    const uint32_t s = v & (KW__RANS_TOTAL - 1u), b = s / KW__RANS_RAW_FREQ;
    if (kw__wire_rans_rank((uint8_t)b) < t->n_entries) return -1;
    v = KW__RANS_RAW_FREQ * (v >> KW__RANS_PROB_BITS) + s - b * KW__RANS_RAW_FREQ;
    if (kw__rans_refill(&v, p, end) != 0) return -1;
    *x = v;
    *out = (uint8_t)b;
    return 0;
}

/* One byte of a table entry from state x (the caller made sure the slot is no escape's and that a word is left: the
 * word is read whether or not it is used). */
static inline uint32_t kw__rans_dec_fast(uint32_t x, const uint32_t *slots, const uint8_t **p, uint8_t *out) {
    const uint32_t e = slots[x & (KW__RANS_TOTAL - 1u)];
    x = ((e & 0xfffu) + 1u) * (x >> KW__RANS_PROB_BITS) + ((e >> 12) & 0xfffu);
    /* branch-free: whether a word is read is a coin toss the branch predictor would lose */
    const uint32_t refill = x < KW__RANS_LOW, word = kw_load_le16(*p);
    const uint32_t keep = refill - 1u; /* all ones when no word is read: a select no compiler turns into a branch */
    x = (x & keep) | ((x << 16 | word) & ~keep);
    *p += 2u * refill;
    *out = (uint8_t)(e >> 24);
    return x;
}

int kw__wire_rans_decode(const uint8_t *src, size_t stored, uint8_t *dst, size_t n) {
    KW_RETURN_IF((!src && stored) || (!dst && n), KW_E_INVALID_ARG, "null argument");
    KW_RETURN_IF(stored == 0, KW_E_WIRE_COMPRESSION, "rANS body: empty");
    const uint8_t *p = src, *const end = src + stored;
    const uint8_t head = *p++;
    KW_RETURN_IF(head >= KW__WIRE_RANS_MAX_TABLES, KW_E_WIRE_COMPRESSION, "rANS body: %u tables (at most %d)",
                 head + 1u, KW__WIRE_RANS_MAX_TABLES);
    const unsigned n_tables = head + 1u;
    KW_RETURN_IF(n == 0 && n_tables != 1u, KW_E_WIRE_COMPRESSION, "rANS body: an empty body with %u tables", n_tables);
    uint64_t n_runs = 0;
    KW_FORWARD(kw__rans_get_varint(&p, end, &n_runs));
    KW_RETURN_IF(n_runs > n || (n && !n_runs), KW_E_WIRE_COMPRESSION, "rANS body: %llu runs for %zu bytes",
                 (unsigned long long)n_runs, n);
    const uint8_t *run_list = p;
    uint64_t covered = 0;
    unsigned used = 0;
    for (uint64_t r = 0; r < n_runs; ++r) {
        uint64_t v = 0;
        KW_FORWARD(kw__rans_get_varint(&p, end, &v));
        const uint64_t len = (v >> 2) + 1u;
        KW_RETURN_IF((v & 3u) >= n_tables, KW_E_WIRE_COMPRESSION, "rANS body: run %llu uses table %u of %u",
                     (unsigned long long)r, (unsigned)(v & 3u), n_tables);
        KW_RETURN_IF(len > n - covered, KW_E_WIRE_COMPRESSION, "rANS body: the runs cover more than %zu bytes", n);
        covered += len;
        used |= 1u << (v & 3u);
    }
    KW_RETURN_IF(covered != n, KW_E_WIRE_COMPRESSION, "rANS body: the runs cover %llu of %zu bytes",
                 (unsigned long long)covered, n);
    KW_RETURN_IF(n && used != (1u << n_tables) - 1u, KW_E_WIRE_COMPRESSION, "rANS body: a table no run uses");

    kw__rans_dec_table tables[KW__WIRE_RANS_MAX_TABLES];
    kw__rans_bit_reader br = {.p = p, .end = end};
    for (unsigned t = 0; t < n_tables; ++t)
        KW_FORWARD(kw__rans_read_table(&br, &tables[t]));
    KW_RETURN_IF(br.acc != 0, KW_E_WIRE_COMPRESSION, "rANS body: the tables' padding bits are not zero");
    p = br.p;
    KW_RETURN_IF(end - p < 16, KW_E_WIRE_COMPRESSION, "rANS body: no room for the coder's four states");
    uint32_t x[4];
    for (unsigned k = 0; k < 4u; ++k) {
        x[k] = kw_load_le32(p + 4u * k);
        KW_RETURN_IF(x[k] < KW__RANS_LOW, KW_E_WIRE_COMPRESSION, "rANS body: initial state %u is %08x, below 2^16", k,
                     x[k]);
    }
    p += 16;

    const uint8_t *rl = run_list;
    size_t i = 0;
    int bad = 0;
    for (uint64_t r = 0; r < n_runs; ++r) {
        uint64_t v = 0;
        (void)kw__rans_get_varint(&rl, end, &v); /* checked above */
        const kw__rans_dec_table *t = &tables[v & 3u];
        const size_t run_end = i + (size_t)(v >> 2) + 1u;
        const uint32_t *slots = t->slot, esc = t->esc_start;
        while (i < run_end && !bad) {
            /* four bytes, one per state, where none is an escape and the stream holds the four words they may read:
             * the four chains overlap and nothing is checked per byte */
            if ((i & 3u) == 0 && run_end - i >= 4u && end - p >= 8) {
                uint32_t x0 = x[0], x1 = x[1], x2 = x[2], x3 = x[3];
                const uint8_t *q = p;
                while (run_end - i >= 4u && end - q >= 8 &&
                       ((x0 & 4095u) < esc) & ((x1 & 4095u) < esc) & ((x2 & 4095u) < esc) & ((x3 & 4095u) < esc)) {
                    x0 = kw__rans_dec_fast(x0, slots, &q, &dst[i]);
                    x1 = kw__rans_dec_fast(x1, slots, &q, &dst[i + 1u]);
                    x2 = kw__rans_dec_fast(x2, slots, &q, &dst[i + 2u]);
                    x3 = kw__rans_dec_fast(x3, slots, &q, &dst[i + 3u]);
                    i += 4u;
                }
                x[0] = x0, x[1] = x1, x[2] = x2, x[3] = x3;
                p = q;
                if (i == run_end) break;
            }
            bad = kw__rans_dec_checked(&x[i & 3u], t, &p, end, &dst[i]) != 0;
            ++i;
        }
        KW_RETURN_IF(bad, KW_E_WIRE_COMPRESSION,
                     "rANS body: near byte %zu of %zu, the stream ends or an escape names a byte with a table entry", i,
                     n);
    }
    KW_RETURN_IF(p != end, KW_E_WIRE_COMPRESSION, "rANS body: %zu stored bytes left after %zu bytes", (size_t)(end - p),
                 n);
    KW_RETURN_IF(x[0] != KW__RANS_LOW || x[1] != KW__RANS_LOW || x[2] != KW__RANS_LOW || x[3] != KW__RANS_LOW,
                 KW_E_WIRE_COMPRESSION, "rANS body: the coder ends in states %08x %08x %08x %08x, not %08x", x[0], x[1],
                 x[2], x[3], KW__RANS_LOW);
    return 0;
}
