/* test_rselect.c: a receiver's selection (c2c/kw_rselect.h, scoring: receiver): the encoding's exact bytes on a
 * hand-made selection, the round trip, the replay as kw_share_run's select hook (rows and per-target subsets, a
 * missing entry refused), and every malformed input refused without a crash: each truncation, trailing bytes, entries
 * out of order, a bitmap with bits past its section, one target, target layers out of order, a target row not sent, a
 * row sent that no target fuses, an empty union, counts and positions beyond the limits. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "c2c/kw_rselect.h"
#include "common/kw_status.h"

/* Two entries: (pos0 2, layer 0, 10 rows) rows {1, 3, 9} with targets 0 {1, 9} and 2 {3, 9}; (pos0 2, layer 1) rows
 * {0, 5}, no targets. */
static void make(kw_rselect *s) {
    memset(s, 0, sizeof *s);
    const int64_t r0[] = {1, 3, 9}, r1[] = {0, 5};
    const uint8_t m0[] = {0x02, 0x02}, m1[] = {0x08, 0x02};
    const uint8_t *masks[] = {m0, m1};
    const int32_t layers[] = {0, 2};
    const kw_share_targets t = {.n = 2, .layers = layers, .masks = masks, .mask_bytes = 2};
    assert_int_equal(kw_rselect_add(s, 2, 10, 0, r0, 3, &t), 0);
    assert_int_equal(kw_rselect_add(s, 2, 10, 1, r1, 2, NULL), 0);
}

static const uint8_t golden[] = {2, 2, 0,  10,   0x0a, 0x02, 2, 0, 0x02, 0x02, 2, 0x08, 0x02, /* entry 0 */
                                 2, 1, 10, 0x21, 0x00, 0};                                    /* entry 1 */

static void test_encoding(void **state) {
    (void)state;
    kw_rselect s;
    make(&s);
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(kw_rselect_encode(&s, &buf, &len), 0);
    assert_int_equal(len, sizeof golden);
    assert_memory_equal(buf, golden, sizeof golden);
    kw_rselect d;
    assert_int_equal(kw_rselect_decode(buf, len, 12, &d), 0);
    assert_int_equal(d.n, 2);
    assert_int_equal(d.entries[0].n_rows, 3);
    assert_int_equal(d.entries[0].rows[2], 9);
    assert_int_equal(d.entries[0].n_targets, 2);
    assert_int_equal(d.entries[0].targets[1], 2);
    assert_int_equal(d.entries[1].n_targets, 0);
    assert_int_equal(d.entries[1].rows[1], 5);
    /* replay */
    int64_t out[10], n = 0;
    kw_share_targets t;
    assert_int_equal(kw_rselect_share_select(&d, NULL, 0, 2, 10, NULL, NULL, out, &n, &t), 0);
    assert_int_equal(n, 3);
    assert_int_equal(out[1], 3);
    assert_int_equal(t.n, 2);
    assert_int_equal(t.mask_bytes, 2);
    assert_int_equal(t.masks[1][0], 0x08);
    assert_int_equal(kw_rselect_share_select(&d, NULL, 1, 2, 10, NULL, NULL, out, &n, &t), 0);
    assert_int_equal(n, 2);
    assert_int_equal(t.n, 0);
    assert_int_equal(kw_rselect_share_select(&d, NULL, 2, 2, 10, NULL, NULL, out, &n, &t), KW_E_STATE);
    assert_int_equal(kw_rselect_share_select(&d, NULL, 0, 2, 11, NULL, NULL, out, &n, &t), KW_E_STATE);
    kw_rselect_free(&d);
    /* a position limit the sections do not fit */
    assert_int_equal(kw_rselect_decode(buf, len, 11, &d), KW_E_LIMIT);
    kw_rselect_free(&d);
    free(buf);
    kw_rselect_free(&s);
    /* add refuses entries out of order */
    make(&s);
    assert_int_equal(kw_rselect_add(&s, 2, 10, 1, (const int64_t[]){0}, 1, NULL), KW_E_INVALID_ARG);
    assert_int_equal(kw_rselect_add(&s, 1, 10, 5, (const int64_t[]){0}, 1, NULL), KW_E_INVALID_ARG);
    kw_rselect_free(&s);
}

/* Decodes golden with byte at set to value: the status. */
static int decode_mutated(size_t at, uint8_t value) {
    uint8_t b[sizeof golden];
    memcpy(b, golden, sizeof b);
    b[at] = value;
    kw_rselect d;
    const int rc = kw_rselect_decode(b, sizeof b, 12, &d);
    kw_rselect_free(&d);
    return rc;
}

static void test_malformed(void **state) {
    (void)state;
    kw_rselect d;
    for (size_t n = 0; n < sizeof golden; ++n) { /* every truncation */
        assert_int_equal(kw_rselect_decode(golden, n, 12, &d), KW_E_TRUNCATED);
        kw_rselect_free(&d);
    }
    uint8_t longer[sizeof golden + 1];
    memcpy(longer, golden, sizeof golden);
    longer[sizeof golden] = 0;
    assert_int_equal(kw_rselect_decode(longer, sizeof longer, 12, &d), KW_E_PARSE); /* trailing */
    kw_rselect_free(&d);
    assert_int_equal(decode_mutated(14, 0), KW_E_PARSE);    /* entry 1's layer 0: not increasing */
    assert_int_equal(decode_mutated(5, 0x06), KW_E_PARSE);  /* a union bit past 10 positions */
    assert_int_equal(decode_mutated(6, 1), KW_E_PARSE);     /* one target */
    assert_int_equal(decode_mutated(10, 0), KW_E_PARSE);    /* target layers 0, 0 */
    assert_int_equal(decode_mutated(8, 0x03), KW_E_PARSE);  /* target 0 takes row 0, not sent */
    assert_int_equal(decode_mutated(11, 0x00), KW_E_PARSE); /* row 3 sent, no target fuses it */
    assert_int_equal(decode_mutated(16, 0x00), KW_E_PARSE); /* entry 1 selects no row */
    assert_int_equal(decode_mutated(6, 65), KW_E_LIMIT);    /* more targets than a layer may name */
    assert_int_equal(decode_mutated(3, 11), KW_E_LIMIT);    /* 2 + 11 positions of 12 */
    assert_int_equal(decode_mutated(3, 0), KW_E_PARSE);     /* an empty section */
    assert_int_equal(decode_mutated(1, 12), KW_E_LIMIT);    /* a section starting past the prefix */
    const uint8_t many[] = {0xff, 0xff, 0xff, 0x7f};        /* an entry count beyond the limit */
    assert_int_equal(kw_rselect_decode(many, sizeof many, 12, &d), KW_E_LIMIT);
    kw_rselect_free(&d);
    const uint8_t endless[] = {0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01};
    assert_int_equal(kw_rselect_decode(endless, sizeof endless, 12, &d), KW_E_PARSE); /* an overlong varint */
    kw_rselect_free(&d);
    const uint8_t none[] = {0};
    assert_int_equal(kw_rselect_decode(none, 1, 12, &d), 0); /* no entries: valid, and replays nothing */
    int64_t out[4], n = 0;
    kw_share_targets t;
    assert_int_equal(kw_rselect_share_select(&d, NULL, 0, 0, 4, NULL, NULL, out, &n, &t), KW_E_STATE);
    kw_rselect_free(&d);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_encoding), cmocka_unit_test(test_malformed)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
