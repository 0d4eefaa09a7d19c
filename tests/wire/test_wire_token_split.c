/* test_wire_token_split.c: kw_wire_token_split, the per-token schedule's split of a section's rows into token groups
 * (kvwire kvstats' T rules and SharePolicy.token_schedule): groups by position (given or consecutive), first/last
 * rules, the first covering rule winning when not strict and a refusal naming both entries when strict, no groups
 * when no row takes a rule; and the section bound of its groups grows by exactly their codecs' bytes and descriptors.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_status.h"
#include "wire/kw_wire.h"

static const kw_wire_codec_spec INT4 = {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0};
static const kw_wire_codec_spec INT8 = {KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0};
static const kw_wire_codec_spec BF16 = {KW_WIRE_CODEC_BF16, KW_WIRE_GRAN_NONE, KW_WIRE_SCALE_NONE, 0};

static int same_spec(const kw_wire_codec_spec *a, const kw_wire_codec_spec *b) {
    return memcmp(a, b, sizeof *a) == 0;
}

/* Rows at positions 3, 4, 5, 9, 10 of a 12-position prompt: rule 0 (first 5: 0..4, int8), rule 1 (last 2: 10, 11,
 * bf16). Groups: {3,4} int8, {5,9} int4, {10} bf16. */
static void test_split_positions(void **state) {
    (void)state;
    const kw_wire_token_rule rules[] = {{0, 4, 0, INT8, INT8}, {2, 0, 1, BF16, BF16}};
    const uint32_t pos[] = {3, 4, 5, 9, 10};
    kw_wire_token_group g[5];
    uint32_t n = 99;
    assert_int_equal(kw_wire_token_split(rules, 2, 1, pos, 0, 5, 12, &INT4, &INT4, g, &n), 0);
    assert_int_equal(n, 3);
    assert_int_equal(g[0].n_tokens, 2);
    assert_true(same_spec(&g[0].k, &INT8) && same_spec(&g[0].v, &INT8));
    assert_int_equal(g[1].n_tokens, 2);
    assert_true(same_spec(&g[1].k, &INT4) && same_spec(&g[1].v, &INT4));
    assert_int_equal(g[2].n_tokens, 1);
    assert_true(same_spec(&g[2].k, &BF16));
    /* consecutive positions from p0 (kvstats' form): positions 1..6 of 8 -> {1..4} int8, {5, 6} int4; with the last
     * rule too, position 6 is not covered (8 - 2 = 6 is): {1..4} int8, {5} int4, {6} bf16 */
    assert_int_equal(kw_wire_token_split(rules, 1, 1, NULL, 1, 6, 8, &INT4, &INT4, g, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(g[0].n_tokens, 4);
    assert_int_equal(g[1].n_tokens, 2);
    assert_int_equal(kw_wire_token_split(rules, 2, 1, NULL, 1, 6, 8, &INT4, &INT4, g, &n), 0);
    assert_int_equal(n, 3);
    assert_int_equal(g[1].n_tokens, 1);
    assert_int_equal(g[2].n_tokens, 1);
    assert_true(same_spec(&g[2].v, &BF16));
    /* no row covered: no groups (a plain section) */
    assert_int_equal(kw_wire_token_split(rules, 1, 1, NULL, 6, 3, 20, &INT4, &INT8, g, &n), 0);
    assert_int_equal(n, 0);
}

/* Two rules covering one row: the first wins unless strict, which refuses naming both. */
static void test_split_overlap(void **state) {
    (void)state;
    const kw_wire_token_rule rules[] = {{0, 2, 0, INT8, INT8}, {3, 0, 1, BF16, BF16}};
    kw_wire_token_group g[4];
    uint32_t n = 0;
    assert_int_equal(kw_wire_token_split(rules, 2, 0, NULL, 0, 4, 4, &INT4, &INT4, g, &n), 0); /* 1, 2 both */
    assert_int_equal(n, 2);
    assert_int_equal(g[0].n_tokens, 3);
    assert_true(same_spec(&g[0].k, &INT8));
    assert_int_equal(kw_wire_token_split(rules, 2, 1, NULL, 0, 4, 4, &INT4, &INT4, g, &n), KW_E_INVALID_ARG);
    assert_non_null(strstr(kw_error_detail(), "entries 0 and 1 both cover position 1"));
    kw_error_clear();
    /* on a longer prompt they do not meet */
    assert_int_equal(kw_wire_token_split(rules, 2, 1, NULL, 0, 4, 8, &INT4, &INT4, g, &n), 0);
    assert_int_equal(n, 2);
}

/* The split's section: its bound is the plain section's plus the covered row's codecs and one group descriptor. */
static void test_split_section(void **state) {
    (void)state;
    enum { H = 2, D = 16, T = 6 };
    const kw_wire_header hdr = {.n_layers = 1,
                                .n_sections = 1,
                                .n_kv_heads = H,
                                .head_dim = D,
                                .n_positions = T,
                                .src_dtype = KW_WIRE_DTYPE_F32,
                                .version = KW_WIRE_VERSION};
    const kw_wire_token_rule rules[] = {{0, 0, 0, BF16, INT8}}; /* position 0 */
    kw_wire_token_group g[T];
    kw_wire_policy pol = {.k = INT4, .v = INT4};
    assert_int_equal(kw_wire_token_split(rules, 1, 1, NULL, 0, T, T, &INT4, &INT4, g, &pol.n_groups), 0);
    pol.groups = g;
    assert_int_equal(pol.n_groups, 2);
    size_t with = 0, plain = 0;
    const kw_wire_policy pol0 = {.k = INT4, .v = INT4};
    assert_int_equal(kw_wire_section_bound(&hdr, &pol, T, &with), 0);
    assert_int_equal(kw_wire_section_bound(&hdr, &pol0, T, &plain), 0);
    /* row 0's K at bf16 (2 bytes a value) and V at int8 (1 byte + an f16 scale per head) instead of int4 (half a
     * byte + a scale), and one more 12-byte group descriptor */
    assert_int_equal(with - plain, (size_t)(H * D * 2 - H * D / 2 - H * 2) + (size_t)(H * D / 2) + 12);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split_positions),
        cmocka_unit_test(test_split_overlap),
        cmocka_unit_test(test_split_section),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
