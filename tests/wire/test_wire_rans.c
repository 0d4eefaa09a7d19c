/* test_wire_rans.c: the static rANS byte coder of section bodies (wire/kw_wire_rans.c, FORMAT.md §5.15) on its own
 * and in blobs. Round trips of byte streams of many shapes (empty, one value, signed codes, escapes, all 256 values,
 * uniform noise) with coded sizes near the order-0 entropy; streams built here from the format's definition by an
 * encoder of this file's own decode as written; every malformed table and stream a decoder must refuse; blobs whose
 * policy asks for the coder carry flag bit 5, decode to the values of the plain blob, and keep the smaller of zstd
 * and rANS. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <string.h>

#include "common/kw_bytes.h"
#include "common/kw_status.h"
#include "tests/wire/wire_test_util.h"
#include "wire/kw_wire_internal.h"
#include "wire/kw_wire_rans.h"

enum { TOTAL = 4096, LOW = 1 << 16 };

static double order0_bits(const uint8_t *b, size_t n) {
    size_t cnt[256] = {0};
    for (size_t i = 0; i < n; ++i)
        ++cnt[b[i]];
    double h = 0.0;
    for (int s = 0; s < 256; ++s)
        if (cnt[s]) h -= (double)cnt[s] * log2((double)cnt[s] / (double)n);
    return h;
}

/* Codes src, decodes it back and checks the refusals every coded stream must give: one byte short or long, one
 * stored byte missing or extra (the first two only for streams of more than one value). Returns the coded size. */
static size_t round_trip(const uint8_t *src, size_t n, const char *what) {
    int distinct = 0; /* one value (of probability 1) costs no bits: only the section's raw size says how many */
    for (size_t i = 1; i < n && !distinct; ++i)
        distinct = src[i] != src[0];
    const size_t cap = 3 * n + 1024;
    uint8_t *coded = wt_xmalloc(cap + 1), *back = wt_xmalloc(n + 2);
    size_t c = 0;
    if (kw__wire_rans_encode(src, n, NULL, 0, coded, cap, &c) != 0) fail_msg("%s: encode: %s", what, kw_error_detail());
    if (kw__wire_rans_decode(coded, c, back, n) != 0) fail_msg("%s: decode: %s", what, kw_error_detail());
    if (n && memcmp(back, src, n) != 0) fail_msg("%s: decoded bytes differ", what);
    if (distinct) assert_int_equal(kw__wire_rans_decode(coded, c, back, n + 1), KW_E_WIRE_COMPRESSION);
    if (distinct) assert_int_equal(kw__wire_rans_decode(coded, c, back, n - 1), KW_E_WIRE_COMPRESSION);
    assert_int_equal(kw__wire_rans_decode(coded, c - 1, back, n), KW_E_WIRE_COMPRESSION);
    coded[c] = 0;
    assert_int_equal(kw__wire_rans_decode(coded, c + 1, back, n), KW_E_WIRE_COMPRESSION);
    /* the same bytes again, and a capacity one short of them is refused */
    size_t c2 = 0;
    uint8_t *again = wt_xmalloc(cap);
    assert_int_equal(kw__wire_rans_encode(src, n, NULL, 0, again, cap, &c2), 0);
    assert_int_equal(c2, c);
    assert_memory_equal(again, coded, c);
    assert_int_equal(kw__wire_rans_encode(src, n, NULL, 0, again, c - 1, &c2), KW_E_BUFFER_TOO_SMALL);
    free(again);
    free(coded);
    free(back);
    return c;
}

static void test_round_trips(void **state) {
    (void)state;
    enum { N = 20000 };
    uint8_t *b = wt_xmalloc(N);
    wt_rng r = {0x7a05};
    assert_true(round_trip(b, 0, "empty") <= 24);
    b[0] = 0x80;
    round_trip(b, 1, "one byte, -128");
    memset(b, 0x05, N);
    assert_true(round_trip(b, N, "one value") <= 32); /* probability 1: no bits per byte */
    for (size_t i = 0; i < N; ++i)                    /* signed codes, bell-shaped, as int8 codes of a limited range */
        b[i] = (uint8_t)(int8_t)lrintf(3.0f * wt_bell(&r));
    size_t c = round_trip(b, N, "bell codes");
    if ((double)c > order0_bits(b, N) / 8.0 * 1.01 + 64.0)
        fail_msg("bell codes: %zu bytes against an order-0 entropy of %.0f", c, order0_bits(b, N) / 8.0);
    for (size_t i = 0; i < N; i += 97) /* rare far values: escaped */
        b[i] = (uint8_t)(100 + wt_below(&r, 28));
    c = round_trip(b, N, "codes with escapes");
    if ((double)c > order0_bits(b, N) / 8.0 * 1.02 + 96.0)
        fail_msg("codes with escapes: %zu bytes against an order-0 entropy of %.0f", c, order0_bits(b, N) / 8.0);
    for (size_t i = 0; i < N; ++i) /* all 256 values, skewed */
        b[i] = (uint8_t)(wt_below(&r, 4) ? wt_below(&r, 8) : wt_below(&r, 256));
    round_trip(b, N, "every value, skewed");
    for (size_t i = 0; i < N; ++i)
        b[i] = (uint8_t)wt_below(&r, 256);
    assert_true(round_trip(b, N, "uniform") > N); /* noise does not shrink; a caller then stores it raw */
    for (size_t n = 1; n < 300; n += 7) {         /* short streams of every kind */
        for (size_t i = 0; i < n; ++i)
            b[i] = (uint8_t)(n % 3 == 0 ? wt_below(&r, 256) : (uint8_t)(int8_t)lrintf(2.0f * wt_bell(&r)));
        round_trip(b, n, "short");
    }
    free(b);
}

/* The encoder's integer log2 is within 2 units of 2^-16 of libm's, and never decreases (its estimates subtract). */
static void test_log2(void **state) {
    (void)state;
    wt_rng r = {0x1062};
    uint32_t prev = 0;
    for (uint64_t v = 1; v < 70000; ++v) {
        const uint32_t got = kw__wire_rans_log2_q16(v);
        if (fabs((double)got - log2((double)v) * 65536.0) > 2.0 || got < prev)
            fail_msg("log2(%llu): %u, libm %.2f", (unsigned long long)v, got, log2((double)v) * 65536.0);
        prev = got;
    }
    for (int k = 0; k < 100000; ++k) {
        const uint64_t v = ((uint64_t)wt_below(&r, 1u << 30) << 30 | wt_below(&r, 1u << 30)) >> wt_below(&r, 58);
        if (v && fabs((double)kw__wire_rans_log2_q16(v) - log2((double)v) * 65536.0) > 2.0)
            fail_msg("log2(%llu): %u", (unsigned long long)v, kw__wire_rans_log2_q16(v));
    }
    assert_int_equal(kw__wire_rans_log2_q16(0), 0);
}

// ---------------------------------------------------------------------------------------------------------------
// Streams written here from the definition (FORMAT.md §5.15)

typedef struct {
    uint8_t b[4096];
    size_t n;
    uint64_t acc;
    unsigned n_acc;
} bits_out;

static void put_bits(bits_out *w, uint32_t v, unsigned bits) {
    w->acc |= (uint64_t)v << w->n_acc;
    w->n_acc += bits;
    while (w->n_acc >= 8) {
        w->b[w->n++] = (uint8_t)w->acc;
        w->acc >>= 8;
        w->n_acc -= 8;
    }
}

/* A frequency as the table codes it: 4-bit length, then the bits below the leading one (at most 3). */
static void put_freq(bits_out *w, uint32_t f) {
    unsigned e = 0;
    while (f >> e)
        ++e;
    put_bits(w, e, 4);
    if (e >= 2 && e <= 4) put_bits(w, f & ((1u << (e - 1)) - 1), e - 1);
    if (e > 4) put_bits(w, (f >> (e - 4)) & 7u, 3);
}

static void pad(bits_out *w) {
    if (w->n_acc) put_bits(w, 0, 8 - w->n_acc);
}

/* A LEB128 number of the run list. */
static void put_varint(bits_out *w, uint64_t v) {
    do {
        w->b[w->n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v);
}

/* The run list: the table count, then n_runs runs of (bytes, table). */
static void put_runs(bits_out *w, unsigned n_tables, size_t n_runs, const uint32_t (*runs)[2]) {
    w->b[w->n++] = (uint8_t)(n_tables - 1);
    put_varint(w, n_runs);
    for (size_t r = 0; r < n_runs; ++r)
        put_varint(w, (uint64_t)(runs[r][0] - 1) << 2 | runs[r][1]);
}

/* One run of n bytes by the one table. */
static void put_one_run(bits_out *w, uint32_t n) {
    const uint32_t run[1][2] = {{n, 0}};
    put_runs(w, 1, n ? 1 : 0, run);
}

/* A table of n_entries (frequencies f[0..n_entries), f[mode] left implied) and escape frequency esc; the last table
 * of a body is followed by pad(). */
static void put_table_bits(bits_out *w, unsigned n_entries, unsigned mode, uint32_t esc, const uint32_t *f) {
    put_bits(w, n_entries - 1, 8);
    put_bits(w, mode, 8);
    put_freq(w, esc);
    for (unsigned z = 0; z < n_entries; ++z)
        if (z != mode) put_freq(w, f[z]);
}

/* A body's only table, its run list (one run of n bytes) before it. */
static void put_table(bits_out *w, uint32_t n, unsigned n_entries, unsigned mode, uint32_t esc, const uint32_t *f) {
    put_one_run(w, n);
    put_table_bits(w, n_entries, mode, esc, f);
    pad(w);
}

/* rANS symbols (start, freq, state) coded last to first by four states, appended to w after the tables: the states
 * (0 to 3) and the 16-bit words a decoder reads, in its order. */
static void put_symbols(bits_out *w, const uint32_t (*sym)[3], size_t n) {
    uint16_t rev[2048];
    size_t k = 0;
    uint32_t x[4] = {LOW, LOW, LOW, LOW};
    for (size_t i = n; i-- > 0;) {
        const uint32_t start = sym[i][0], freq = sym[i][1];
        uint32_t *xs = &x[sym[i][2]];
        if ((uint64_t)*xs >= (uint64_t)((LOW >> 12) << 16) * freq) {
            rev[k++] = (uint16_t)*xs;
            *xs >>= 16;
        }
        *xs = ((*xs / freq) << 12) + *xs % freq + start;
    }
    for (int j = 0; j < 4; ++j)
        kw_store_le32(w->b + w->n + 4 * j, x[j]);
    w->n += 16;
    while (k) {
        kw_store_le16(w->b + w->n, rev[--k]);
        w->n += 2;
    }
}

static void test_definition(void **state) {
    (void)state;
    /* table: byte 0 (rank 0) at 2048 (implied), -1 (rank 1) at 1024, 1 (rank 2) at 768, escape 256 */
    const uint32_t f[3] = {0, 1024, 768};
    const uint32_t start[3] = {0, 2048, 3072}, esc_start = 3840, esc = 256;
    wt_rng r = {0xdef};
    enum { N = 600 };
    uint8_t want[N], got[N];
    uint32_t sym[2 * N][3];
    size_t n_sym = 0;
    for (size_t i = 0; i < N; ++i) {
        const uint32_t u = wt_below(&r, 16);
        const unsigned z = u < 8 ? 0 : u < 12 ? 1 : u < 15 ? 2 : 3;
        if (z < 3) {
            want[i] = kw__wire_rans_byte(z);
            sym[n_sym][0] = start[z];
            sym[n_sym][1] = z ? f[z] : 2048;
            sym[n_sym++][2] = i & 3; /* byte i: state i % 4 */
        } else {                     /* an escape: any byte of rank >= 3, 8 raw bits */
            want[i] = (uint8_t)(2 + wt_below(&r, 250));
            sym[n_sym][0] = esc_start;
            sym[n_sym][1] = esc;
            sym[n_sym++][2] = i & 3;
            sym[n_sym][0] = want[i] * 16u;
            sym[n_sym][1] = 16;
            sym[n_sym++][2] = i & 3;
        }
    }
    bits_out w = {0};
    put_table(&w, N, 3, 0, esc, f);
    put_symbols(&w, (const uint32_t(*)[3])sym, n_sym);
    assert_int_equal(kw__wire_rans_decode(w.b, w.n, got, N), 0);
    assert_memory_equal(got, want, N);

    /* an escape of a byte that has a table entry (1, rank 2) */
    bits_out e = {0};
    const uint32_t bad[2][3] = {{esc_start, esc, 0}, {1u * 16u, 16, 0}};
    put_table(&e, 1, 3, 0, esc, f);
    put_symbols(&e, bad, 2);
    assert_int_equal(kw__wire_rans_decode(e.b, e.n, got, 1), KW_E_WIRE_COMPRESSION);
    /* the same escape of byte 3 (rank 6) decodes */
    bits_out g = {0};
    const uint32_t good[2][3] = {{esc_start, esc, 0}, {3u * 16u, 16, 0}};
    put_table(&g, 1, 3, 0, esc, f);
    put_symbols(&g, good, 2);
    assert_int_equal(kw__wire_rans_decode(g.b, g.n, got, 1), 0);
    assert_int_equal(got[0], 3);
}

static void expect_refused(const bits_out *w, size_t n, const char *what) {
    uint8_t out[64];
    const int rc = kw__wire_rans_decode(w->b, w->n, out, n);
    if (rc != KW_E_WIRE_COMPRESSION) fail_msg("%s: got %s, expected KW_E_WIRE_COMPRESSION", what, kw_status_name(rc));
}

/* Two tables, runs switching between them: each byte is coded by its run's table. */
static void test_definition_runs(void **state) {
    (void)state;
    /* table 0: bytes 0 (implied, 3072) and -1 (1024); table 1: bytes 0 (1024), -1 (1024), 1 (implied, 2048) */
    const uint32_t f0[2] = {0, 1024}, f1[3] = {1024, 1024, 0};
    const uint32_t start0[2] = {0, 3072}, freq0[2] = {3072, 1024};
    const uint32_t start1[3] = {0, 1024, 2048}, freq1[3] = {1024, 1024, 2048};
    const uint32_t runs[4][2] = {{5, 0}, {7, 1}, {1, 0}, {11, 1}}; /* 24 bytes */
    enum { N = 24 };
    wt_rng r = {0x2ab1e};
    uint8_t want[N], got[N];
    uint32_t sym[N][3];
    size_t i = 0;
    for (size_t k = 0; k < 4; ++k)
        for (uint32_t j = 0; j < runs[k][0]; ++j, ++i) {
            const unsigned z = wt_below(&r, runs[k][1] ? 3 : 2);
            want[i] = kw__wire_rans_byte(z);
            sym[i][0] = runs[k][1] ? start1[z] : start0[z];
            sym[i][1] = runs[k][1] ? freq1[z] : freq0[z];
            sym[i][2] = i & 3;
        }
    bits_out w = {0};
    put_runs(&w, 2, 4, runs);
    put_table_bits(&w, 2, 0, 0, f0);
    put_table_bits(&w, 3, 2, 0, f1);
    pad(&w);
    put_symbols(&w, (const uint32_t(*)[3])sym, N);
    assert_int_equal(kw__wire_rans_decode(w.b, w.n, got, N), 0);
    assert_memory_equal(got, want, N);

    /* the encoder splits by the caller's classes where two tables cost less than one, and no further */
    enum { M = 8000 };
    uint8_t *src = wt_xmalloc(M), *coded = wt_xmalloc(2 * M), *back = wt_xmalloc(M);
    for (size_t k = 0; k < M; ++k) /* narrow codes, then wide ones */
        src[k] = (uint8_t)(int8_t)lrintf((k < M / 2 ? 1.0f : 12.0f) * wt_bell(&r));
    const kw__wire_rans_run halves[2] = {{M / 2, 3}, {M / 2, 6}}, same[2] = {{M / 2, 3}, {M / 2, 3}};
    size_t c_split = 0, c_one = 0, c_same = 0;
    assert_int_equal(kw__wire_rans_encode(src, M, halves, 2, coded, 2 * M, &c_split), 0);
    assert_int_equal(coded[0], 1); /* two tables */
    assert_int_equal(kw__wire_rans_decode(coded, c_split, back, M), 0);
    assert_memory_equal(back, src, M);
    assert_int_equal(kw__wire_rans_encode(src, M, NULL, 0, coded, 2 * M, &c_one), 0);
    assert_int_equal(coded[0], 0);
    assert_int_equal(kw__wire_rans_encode(src, M, same, 2, coded, 2 * M, &c_same), 0);
    assert_int_equal(c_same, c_one); /* one class in two runs: one table, one run */
    if ((double)c_split > (order0_bits(src, M / 2) + order0_bits(src + M / 2, M / 2)) / 8.0 * 1.01 + 96.0)
        fail_msg("two tables: %zu bytes against order-0 entropies of %.0f", c_split,
                 (order0_bits(src, M / 2) + order0_bits(src + M / 2, M / 2)) / 8.0);
    assert_true(c_split + 200 < c_one);
    /* alike halves: one table */
    for (size_t k = 0; k < M; ++k)
        src[k] = (uint8_t)(int8_t)lrintf(3.0f * wt_bell(&r));
    assert_int_equal(kw__wire_rans_encode(src, M, halves, 2, coded, 2 * M, &c_split), 0);
    assert_int_equal(coded[0], 0);
    /* eight classes of eight different spreads: merged down to four tables */
    kw__wire_rans_run eight[8];
    for (size_t k = 0; k < M; ++k)
        src[k] = (uint8_t)(int8_t)lrintf((float)(1u << (k / (M / 8))) * 0.5f * wt_bell(&r));
    for (unsigned k = 0; k < 8; ++k)
        eight[k] = (kw__wire_rans_run){.bytes = M / 8, .cls = (uint8_t)k};
    assert_int_equal(kw__wire_rans_encode(src, M, eight, 8, coded, 2 * M, &c_split), 0);
    assert_int_equal(coded[0], 3);
    assert_int_equal(kw__wire_rans_decode(coded, c_split, back, M), 0);
    assert_memory_equal(back, src, M);
    /* runs that do not cover the body, or a class out of range */
    const kw__wire_rans_run shorter[1] = {{M - 1, 0}}, bad_cls[1] = {{M, KW__WIRE_RANS_MAX_CLASSES}};
    assert_int_equal(kw__wire_rans_encode(src, M, shorter, 1, coded, 2 * M, &c_split), KW_E_INVALID_ARG);
    assert_int_equal(kw__wire_rans_encode(src, M, bad_cls, 1, coded, 2 * M, &c_split), KW_E_INVALID_ARG);
    free(src);
    free(coded);
    free(back);
}

static void test_malformed(void **state) {
    (void)state;
    const uint32_t f[4] = {0, 1024, 768, 0};
    const uint32_t ok_sym[1][3] = {{0, 2048, 0}};
    bits_out w;

    w = (bits_out){0}; /* the implied entry past the table */
    put_one_run(&w, 1);
    put_bits(&w, 2, 8);
    put_bits(&w, 3, 8);
    put_freq(&w, 0);
    put_freq(&w, 1024);
    put_freq(&w, 768);
    pad(&w);
    put_symbols(&w, ok_sym, 1);
    expect_refused(&w, 1, "implied entry 3 of 3");

    w = (bits_out){0}; /* a frequency length of 13 */
    put_one_run(&w, 1);
    put_bits(&w, 0, 8);
    put_bits(&w, 0, 8);
    put_bits(&w, 13, 4);
    pad(&w);
    put_symbols(&w, ok_sym, 1);
    expect_refused(&w, 1, "frequency length 13");

    w = (bits_out){0}; /* frequencies that leave nothing for the implied entry */
    const uint32_t full[3] = {0, 3840, 256};
    put_table(&w, 1, 3, 0, 0, full);
    put_symbols(&w, (const uint32_t[1][3]){{3840, 256, 0}}, 1);
    expect_refused(&w, 1, "sum 4096 without the implied entry");

    w = (bits_out){0}; /* an escape with all 256 values in the table */
    uint32_t all[256] = {0};
    all[1] = 16;
    put_table(&w, 1, 256, 0, 16, all);
    put_symbols(&w, (const uint32_t[1][3]){{0, 4064, 0}}, 1);
    expect_refused(&w, 1, "escape beside a full table");

    w = (bits_out){0}; /* padding bits set */
    put_one_run(&w, 1);
    put_bits(&w, 0, 8);
    put_bits(&w, 0, 8);
    put_freq(&w, 0);
    put_bits(&w, 1, 4);
    put_symbols(&w, (const uint32_t[1][3]){{0, 4096, 0}}, 1);
    expect_refused(&w, 1, "padding bits");

    w = (bits_out){0}; /* an initial state below the coder's range; any state from 2^16 up is valid */
    put_table(&w, 0, 3, 0, 256, f);
    for (int j = 0; j < 4; ++j)
        kw_store_le32(w.b + w.n + 4 * j, j == 2 ? LOW - 1 : LOW);
    w.n += 16;
    expect_refused(&w, 0, "state below 2^16");
    uint8_t none[1];
    kw_store_le32(w.b + w.n - 8, 0xffffffffu);
    expect_refused(&w, 0, "a state other than the initial one at the end");
    kw_store_le32(w.b + w.n - 8, LOW); /* all four at 2^16: an empty body */
    assert_int_equal(kw__wire_rans_decode(w.b, w.n, none, 0), 0);
    w.b[0] = 1; /* an empty body with two tables */
    expect_refused(&w, 0, "an empty body with two tables");
    w.b[0] = 0;
    w.b[w.n++] = 0; /* a byte left over (half a word) */
    expect_refused(&w, 0, "a byte left over");

    w = (bits_out){0}; /* three states only */
    put_table(&w, 0, 3, 0, 256, f);
    for (int j = 0; j < 3; ++j)
        kw_store_le32(w.b + w.n + 4 * j, LOW);
    w.n += 12;
    expect_refused(&w, 0, "three states");

    w = (bits_out){0}; /* the table cut short */
    put_table(&w, 0, 3, 0, 256, f);
    w.n = 3;
    expect_refused(&w, 0, "table cut short");

    w = (bits_out){0}; /* no state */
    put_table(&w, 0, 3, 0, 256, f);
    expect_refused(&w, 0, "no state");

    /* the run list: every kind of bad one, each beside a valid table and stream */
    const uint32_t two_runs[2][2] = {{1, 0}, {1, 1}};
    const struct {
        const char *what;
        uint8_t head[8];
        size_t n_head, n;
    } lists[] = {
        {"five tables", {4, 1, 0}, 3, 1},
        {"a run of table 1 of 1", {0, 1, 1}, 3, 1},
        {"runs covering 2 of 3 bytes", {0, 1, 4}, 3, 3},
        {"runs covering 3 of 2 bytes", {0, 1, 8}, 3, 2},
        {"two runs for one byte", {0, 2, 0, 0}, 4, 1},
        {"no run for one byte", {0, 0}, 2, 1},
        {"a run count with a needless byte", {0, 0x81, 0x00, 0}, 4, 1},
        {"a run length of 6 bytes", {0, 1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01}, 8, 1},
    };
    for (size_t k = 0; k < sizeof lists / sizeof lists[0]; ++k) {
        w = (bits_out){0};
        memcpy(w.b, lists[k].head, lists[k].n_head);
        w.n = lists[k].n_head;
        put_table_bits(&w, 3, 0, 256, f);
        pad(&w);
        put_symbols(&w, ok_sym, 1);
        expect_refused(&w, lists[k].n, lists[k].what);
        if (k == 7 && !strstr(kw_error_detail(), "longer than 5 bytes")) /* any 6-byte number also overflows the body */
            fail_msg("%s: refused for another reason: %s", lists[k].what, kw_error_detail());
    }
    w = (bits_out){0}; /* the run list cut short: nothing after it */
    put_runs(&w, 1, 2, two_runs);
    w.n -= 1;
    expect_refused(&w, 2, "the run list cut short");
    w = (bits_out){0}; /* two tables, only one used */
    put_runs(&w, 2, 1, two_runs);
    put_table_bits(&w, 3, 0, 256, f);
    put_table_bits(&w, 3, 0, 256, f);
    pad(&w);
    put_symbols(&w, ok_sym, 1);
    expect_refused(&w, 1, "a table no run uses");
    w = (bits_out){0}; /* the same with both used: decodes */
    put_runs(&w, 2, 2, two_runs);
    put_table_bits(&w, 3, 0, 256, f);
    put_table_bits(&w, 3, 0, 256, f);
    pad(&w);
    put_symbols(&w, (const uint32_t[2][3]){{0, 2048, 0}, {2048, 1024, 1}}, 2);
    uint8_t two[2];
    assert_int_equal(kw__wire_rans_decode(w.b, w.n, two, 2), 0);
    assert_int_equal(two[0], 0);
    assert_int_equal(two[1], 0xff);

    /* a valid stream of 200 bytes: every single-bit flip is refused or decodes to 200 bytes, never more (ASan) */
    uint8_t src[200], coded[1024], out[200];
    wt_rng r = {0xf11b};
    for (size_t i = 0; i < sizeof src; ++i)
        src[i] = (uint8_t)(int8_t)lrintf(2.0f * wt_bell(&r));
    size_t c = 0;
    assert_int_equal(kw__wire_rans_encode(src, sizeof src, NULL, 0, coded, sizeof coded, &c), 0);
    size_t refused = 0;
    for (size_t bit = 0; bit < 8 * c; ++bit) {
        coded[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        refused += kw__wire_rans_decode(coded, c, out, sizeof src) == KW_E_WIRE_COMPRESSION;
        coded[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    }
    if (refused < 8 * c * 9 / 10) fail_msg("only %zu of %zu bit flips refused", refused, 8 * c);
}

// ---------------------------------------------------------------------------------------------------------------
// In blobs

/* Rows whose int8 codes crowd near 0: bell values with one channel 16x larger. */
static float *spiky_rows(uint32_t heads, uint32_t T, uint32_t D, uint64_t seed) {
    wt_rng r = {seed};
    float *x = wt_xmalloc((size_t)heads * T * D * sizeof *x);
    for (size_t i = 0; i < (size_t)heads * T * D; ++i)
        x[i] = wt_bell(&r) * (i % D == 5 ? 16.0f : 1.0f);
    return x;
}

static uint8_t section_flags(const uint8_t *blob) {
    return blob[KW_WIRE_HEADER_BYTES + KW__SEC_FLAGS];
}

static void test_blobs(void **state) {
    (void)state;
    enum { H = 2, T = 40, D = 64 };
    const kw_wire_header hdr = wt_one_section_header(H, D, T, KW_WIRE_VERSION_1_1);
    float *x = spiky_rows(H, T, D, 0xb10b);
    const kw_wire_codec_spec q8 = {KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0};
    kw_wire_policy plain = {.k = q8, .v = q8};
    kw_wire_policy rans = plain, zstd = plain, both = plain;
    rans.rans = 1;
    zstd.zstd_level = 19;
    both.rans = 1;
    both.zstd_level = 19;
    uint8_t *bp = NULL, *br = NULL, *bz = NULL, *bb = NULL;
    size_t np = 0, nr = 0, nz = 0, nb = 0;
    wt_blob_out op = {0}, orr = {0}, ob = {0};
    assert_int_equal(wt_encode_same_kv(&hdr, x, &plain, 0, &bp, &np, &op), 0);
    assert_int_equal(wt_encode_same_kv(&hdr, x, &rans, 0, &br, &nr, &orr), 0);
    assert_int_equal(wt_encode_same_kv(&hdr, x, &zstd, 0, &bz, &nz, NULL), 0);
    assert_int_equal(wt_encode_same_kv(&hdr, x, &both, 0, &bb, &nb, &ob), 0);
    assert_int_equal(section_flags(bp), 0);
    assert_int_equal(section_flags(br), KW__SEC_FLAG_RANS);
    assert_true(nr < np);
    assert_int_equal(orr.bd.compressed_sections, 1);
    assert_int_equal(orr.bd.compression_saved, np - nr);
    orr.bd = op.bd; /* the breakdowns differ in the bytes stored, and nothing else may */
    ob.bd = op.bd;
    assert_true(wt_blob_out_equal(&op, &orr)); /* lossless: the same values as the plain blob */
    assert_true(wt_blob_out_equal(&op, &ob));
    assert_int_equal(nb, nr < nz ? nr : nz); /* both asked: the smaller is stored */
    assert_int_equal(section_flags(bb), nr < nz ? KW__SEC_FLAG_RANS : KW__SEC_FLAG_ZSTD);
    assert_true(wt_same_on_every_isa(&hdr, x, &rans, br, nr));

    /* the reader says how the body was stored */
    kw_wire_reader *rd = NULL;
    const kw_wire_header *h = NULL;
    const kw_wire_section *s = NULL;
    assert_int_equal(kw_wire_reader_open(br, nr, NULL, &rd, &h), 0);
    assert_true(kw_wire_reader_next(rd, &s) > 0);
    assert_true(s->compressed && s->rans_coded);
    assert_true(s->stored_body_bytes < s->raw_body_bytes);
    kw_wire_reader_close(rd);

    /* v1 cannot carry it */
    const kw_wire_header v1 = wt_one_section_header(H, D, T, KW_WIRE_VERSION);
    uint8_t *b1 = NULL;
    size_t n1 = 0;
    assert_int_equal(wt_encode_same_kv(&v1, x, &rans, 0, &b1, &n1, NULL), KW_E_INVALID_ARG);
    free(b1);
    kw_wire_policy two = rans;
    two.rans = 2;
    assert_int_equal(wt_encode_same_kv(&hdr, x, &two, 0, &b1, &n1, NULL), KW_E_INVALID_ARG);
    free(b1);

    /* noise (int8 codes of uniform values, every code about equally likely) does not shrink: stored raw, flag clear */
    kw_wire_policy raw = {.k = q8, .v = q8, .rans = 1};
    wt_rng r = {0x4015e};
    for (size_t i = 0; i < (size_t)H * T * D; ++i)
        x[i] = wt_uniform(&r);
    uint8_t *bn = NULL;
    size_t nn = 0;
    assert_int_equal(wt_encode_same_kv(&hdr, x, &raw, 0, &bn, &nn, NULL), 0);
    assert_int_equal(section_flags(bn), 0);
    free(bn);

    wt_blob_out_free(&op);
    wt_blob_out_free(&orr);
    wt_blob_out_free(&ob);
    free(bp);
    free(br);
    free(bz);
    free(bb);
    free(x);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trips),     cmocka_unit_test(test_log2),      cmocka_unit_test(test_definition),
        cmocka_unit_test(test_definition_runs), cmocka_unit_test(test_malformed), cmocka_unit_test(test_blobs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
