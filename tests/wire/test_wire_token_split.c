/* test_wire_token_split.c: kw_wire_token_split, the per-token schedule's split of a section's rows into token groups
 * (kvwire kvstats' T rules and SharePolicy.token_schedule): groups by position (given or consecutive), first/last
 * rules, the first covering rule winning when not strict and a refusal naming both entries when strict, no groups
 * when no row takes a rule; and the section bound of its groups grows by exactly their codecs' bytes and descriptors.
 * The split works on the rules' sorted intervals; oracle_split below is the old row-by-rule algorithm it replaced, and
 * test_split_differential holds the two to the same groups, bytes written and refusals on random and edge cases.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdint.h>
#include <stdio.h>
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

/* The test oracle: the split as it was, every rule tested for every row (O(rows x rules)). *detail receives the
 * refusal's text. */
static int oracle_split(const kw_wire_token_rule *rules, uint32_t n_rules, int strict, const uint32_t *positions,
                        uint32_t p0, uint32_t n, uint32_t n_positions, const kw_wire_codec_spec *k,
                        const kw_wire_codec_spec *v, kw_wire_token_group *groups, uint32_t *n_groups, char *detail,
                        size_t cap) {
    uint32_t g = 0, any = 0;
    int64_t prev = -2;
    for (uint32_t i = 0; i < n; ++i) {
        const uint32_t p = positions ? positions[i] : p0 + i;
        int64_t rule = -1;
        for (uint32_t r = 0; r < n_rules; ++r) {
            const kw_wire_token_rule *x = &rules[r];
            if (!(x->from_end ? (uint64_t)p + x->first >= n_positions : p >= x->first && p <= x->last)) continue;
            if (strict && rule >= 0) {
                snprintf(detail, cap, "token schedule: entries %lld and %u both cover position %u (of %u)",
                         (long long)rule, r, p, n_positions);
                return KW_E_INVALID_ARG;
            }
            if (rule < 0) rule = r;
            if (!strict) break;
        }
        if (rule != prev) {
            groups[g++] = (kw_wire_token_group){.k = rule < 0 ? *k : rules[rule].k, .v = rule < 0 ? *v : rules[rule].v};
            prev = rule;
        }
        any |= rule >= 0;
        groups[g - 1].n_tokens++;
    }
    *n_groups = any ? g : 0;
    return 0;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(uint32_t n) { /* uniform enough in 0 .. n-1 (n >= 1) */
    rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
    return (uint32_t)((rng_state >> 16) % n);
}

/* A value near one of the interesting places: 0, the prompt's end, UINT32_MAX, or anywhere below span. */
static uint32_t pick(uint32_t n_positions, uint32_t span, int extreme) {
    const uint32_t d = rnd(3);
    switch (extreme ? rnd(4) : 3) {
    case 0:
        return d;
    case 1:
        return n_positions - 1 + d;
    case 2:
        return UINT32_MAX - d;
    default:
        return rnd(span);
    }
}

enum { MAX_RULES = 200, MAX_ROWS = 96 };

/* One case both ways: the same status, the same *n_groups, the same bytes written to groups (rows before a refusal
 * included) and the same refusal text. @return the status, *n_groups in *groups_out. */
static int check_case_n(const kw_wire_token_rule *rules, uint32_t n_rules, int strict, const uint32_t *positions,
                        uint32_t p0, uint32_t n, uint32_t n_positions, uint32_t *groups_out) {
    static const kw_wire_codec_spec K = {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0};
    static const kw_wire_codec_spec V = {KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0};
    kw_wire_token_group got[MAX_ROWS], want[MAX_ROWS];
    memset(got, 0xa5, sizeof got);
    memset(want, 0xa5, sizeof want);
    uint32_t ng = 12345, nw = 12345;
    char detail[256] = "";
    kw_error_clear();
    const int rc = kw_wire_token_split(rules, n_rules, strict, positions, p0, n, n_positions, &K, &V, got, &ng);
    const int rw =
        oracle_split(rules, n_rules, strict, positions, p0, n, n_positions, &K, &V, want, &nw, detail, sizeof detail);
    if (rc != rw || ng != nw || memcmp(got, want, sizeof got) != 0 || (rc < 0 && strcmp(detail, kw_error_detail()))) {
        fprintf(stderr,
                "differs: %u rules, strict %d, %s, p0 %u, %u rows, %u positions: rc %d/%d, groups %u/%u, %s/%s\n",
                n_rules, strict, positions ? "positions" : "consecutive", p0, n, n_positions, rc, rw, ng, nw,
                kw_error_detail(), detail);
        fail();
    }
    *groups_out = ng;
    return rc;
}

static void check_case(const kw_wire_token_rule *rules, uint32_t n_rules, int strict, const uint32_t *positions,
                       uint32_t p0, uint32_t n, uint32_t n_positions) {
    uint32_t ng = 0;
    (void)check_case_n(rules, n_rules, strict, positions, p0, n, n_positions, &ng);
}

/* Random rules and rows against the oracle: small prompts so that rules meet, rule counts past 64 (more than one
 * word of active rules), given positions unsorted or with duplicates, values at 0, at the prompt's end and at
 * UINT32_MAX, first entries longer than the prompt. */
static void test_split_differential(void **state) {
    (void)state;
    static kw_wire_token_rule rules[MAX_RULES];
    uint32_t pos[MAX_ROWS];
    int refused = 0, split[2] = {0, 0};
    for (int iter = 0; iter < 20000; ++iter) {
        const int extreme = rnd(4) == 0;
        const uint32_t n_positions = extreme && rnd(2) ? UINT32_MAX - rnd(3) : rnd(40);
        const uint32_t span = n_positions < 1000 ? n_positions + 4 : 44;
        const uint32_t n_rules = rnd(8) == 0 ? 64 + rnd(MAX_RULES - 63) : rnd(10);
        for (uint32_t r = 0; r < n_rules; ++r) {
            kw_wire_token_rule *x = &rules[r];
            memset(x, 0, sizeof *x);
            x->from_end = rnd(3) == 0;
            x->first = x->from_end && !extreme ? rnd(span) : pick(n_positions, span, extreme); /* from_end 0: none */
            const uint32_t len = rnd(6), kind = rnd(10);
            if (x->from_end)
                x->last = rnd(span); /* unused */
            else if (kind == 0)
                x->last = pick(n_positions, span, extreme); /* maybe below first: no position */
            else if (kind == 1 || x->first > UINT32_MAX - len)
                x->last = UINT32_MAX;
            else
                x->last = x->first + len;
            x->k = (kw_wire_codec_spec){KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_F16, (uint8_t)(r % 7)};
            x->v = (kw_wire_codec_spec){KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_F16, (uint8_t)(r / 7)};
        }
        const uint32_t n = rnd(MAX_ROWS + 1);
        const int given = rnd(2);
        const int sorted = rnd(2);
        for (uint32_t i = 0; i < n; ++i) {
            pos[i] = pick(n_positions, span, extreme);
            if (sorted && i > 0 && pos[i] < pos[i - 1]) pos[i] = pos[i - 1] + (rnd(3) != 0); /* ascending, repeats */
            if (rnd(6) == 0 && i > 0) pos[i] = pos[i - 1];                                   /* a duplicate */
        }
        const uint32_t p0 = extreme ? UINT32_MAX - n + 1 - rnd(2) : rnd(span);
        for (int strict = 0; strict < 2; ++strict) {
            uint32_t ng = 0;
            const int rc = check_case_n(rules, n_rules, strict, given ? pos : NULL, p0, n, n_positions, &ng);
            refused += rc < 0;
            split[strict] += rc == 0 && ng > 1;
        }
    }
    /* every outcome well represented: refusals, and splits into several groups with and without strict */
    assert_true(refused > 1000 && split[0] > 1000 && split[1] > 1000);
}

/* Hand-picked edges: adjacent runs (one group each, no overlap), runs touching the prompt's end, first and last that
 * meet only when the prompt is shorter than their sum, a rule to UINT32_MAX, positions with duplicates, a from_end
 * rule of 0 (positions past the prompt) and the sharer's most rules (8 entries x 64 runs). */
static void test_split_edges(void **state) {
    (void)state;
    const kw_wire_codec_spec A = INT8, B = BF16;
    const kw_wire_token_rule adjacent[] = {{2, 4, 0, A, A}, {5, 5, 0, B, B}, {6, 9, 0, A, B}};
    check_case(adjacent, 3, 1, NULL, 0, 12, 12);
    const uint32_t dup[] = {4, 4, 5, 5, 5, 6, 2, 2, 9, 9};
    check_case(adjacent, 3, 1, dup, 0, 10, 12);
    const kw_wire_token_rule end[] = {{3, 11, 0, A, A}, {0, 0, 1, B, B}}; /* to the end of 12; from_end 0: past it */
    check_case(end, 2, 1, NULL, 0, 14, 12);
    const kw_wire_token_rule fl[] = {{0, 3, 0, A, A}, {4, 0, 1, B, B}}; /* first 4 and last 4 */
    for (uint32_t np = 0; np <= 10; ++np)
        for (int strict = 0; strict < 2; ++strict)
            check_case(fl, 2, strict, NULL, 0, np, np);
    const kw_wire_token_rule top[] = {{UINT32_MAX - 2, UINT32_MAX, 0, A, A}, {UINT32_MAX, 0, 1, B, B}};
    const uint32_t high[] = {UINT32_MAX - 3, UINT32_MAX - 2, UINT32_MAX, UINT32_MAX, 0};
    for (int strict = 0; strict < 2; ++strict) {
        check_case(top, 2, strict, high, 0, 5, UINT32_MAX);
        check_case(top, 1, strict, NULL, UINT32_MAX - 4, 5, UINT32_MAX);
    }
    static kw_wire_token_rule many[8 * 64];
    for (uint32_t r = 0; r < 8 * 64; ++r) /* runs of 1 apart by 2, then the last entry over all of them */
        many[r] = (kw_wire_token_rule){2 * r, 2 * r, 0, A, (kw_wire_codec_spec){.group_log2 = (uint8_t)(r % 9)}};
    many[8 * 64 - 1] = (kw_wire_token_rule){64, 0, 1, B, B};
    uint32_t rows[MAX_ROWS];
    for (uint32_t i = 0; i < MAX_ROWS; ++i)
        rows[i] = 11 * i;
    for (int strict = 0; strict < 2; ++strict) {
        check_case(many, 8 * 64, strict, rows, 0, MAX_ROWS, 11 * MAX_ROWS);
        check_case(many, 8 * 64, strict, NULL, 1000, MAX_ROWS, 1050);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split_positions), cmocka_unit_test(test_split_overlap),
        cmocka_unit_test(test_split_section),   cmocka_unit_test(test_split_differential),
        cmocka_unit_test(test_split_edges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
