/* test_proto_token_schedule.c: kw_proto_token_schedule_check, the protocol's check of SharePolicy.token_schedule,
 * works on each entry's runs of consecutive positions; oracle_check below is the old check that walked positions one
 * by one (a binary search per position per pair), kept as the oracle: the two must accept and refuse the same
 * schedules with the same text, on random schedules (small universes so that entries meet, some near the 2^20
 * position bound, some with more than 64 runs or not increasing) and on hand-picked edges. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_status.h"
#include "proto/kw_proto.h"

/* 1 if the strictly increasing v[0 .. n) holds x. */
static bool oracle_has(const uint32_t *v, size_t n, uint32_t x) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        const size_t mid = lo + (hi - lo) / 2;
        if (v[mid] == x) return true;
        if (v[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

static size_t oracle_runs(const Kwctl__TokenPolicy *t) {
    if (t->n_positions == 0) return 1;
    size_t runs = 1;
    for (size_t i = 1; i < t->n_positions; ++i)
        runs += t->positions[i] != t->positions[i - 1] + 1;
    return runs;
}

/* The old check: 0, or KW_E_PROTO_FIELD with its text in detail. */
static int oracle_check(Kwctl__TokenPolicy *const *entries, size_t n, char *detail, size_t cap) {
    const uint32_t bound = KW_PROTO_DEFAULT_MAX_TOKENS;
#define ORACLE_FAIL_IF(cond, ...)                                                                                      \
    do {                                                                                                               \
        if (cond) {                                                                                                    \
            snprintf(detail, cap, __VA_ARGS__);                                                                        \
            return KW_E_PROTO_FIELD;                                                                                   \
        }                                                                                                              \
    } while (0)
    ORACLE_FAIL_IF(n > KW_PROTO_MAX_TOKEN_POLICIES, "SharePolicy.token_schedule: %zu entries, at most %d", n,
                   KW_PROTO_MAX_TOKEN_POLICIES);
    for (size_t i = 0; i < n; ++i) {
        const Kwctl__TokenPolicy *t = entries[i];
        ORACLE_FAIL_IF((t->first > 0) + (t->last > 0) + (t->n_positions > 0) != 1,
                       "SharePolicy.token_schedule[%zu]: exactly one of first, last and positions is expected", i);
        for (size_t a = 0; a < t->n_positions; ++a) {
            ORACLE_FAIL_IF(t->positions[a] >= bound, "SharePolicy.token_schedule.positions[%zu]: %u is not below %u", a,
                           t->positions[a], bound);
            ORACLE_FAIL_IF(a > 0 && t->positions[a] <= t->positions[a - 1],
                           "SharePolicy.token_schedule.positions[%zu]: %u does not follow %u in increasing order", a,
                           t->positions[a], t->positions[a - 1]);
        }
        ORACLE_FAIL_IF(t->first > bound || t->last > bound, "SharePolicy.token_schedule[%zu]: more than %u positions",
                       i, bound);
        ORACLE_FAIL_IF(oracle_runs(t) > KW_PROTO_MAX_TOKEN_RUNS,
                       "SharePolicy.token_schedule[%zu].positions: %zu runs of consecutive positions, at most %d", i,
                       oracle_runs(t), KW_PROTO_MAX_TOKEN_RUNS);
        for (size_t j = 0; j < i; ++j) {
            const Kwctl__TokenPolicy *u = entries[j];
            bool overlap = (t->first && u->first) || (t->last && u->last);
            for (size_t a = 0; a < t->n_positions && !overlap; ++a)
                overlap = t->positions[a] < u->first || oracle_has(u->positions, u->n_positions, t->positions[a]);
            for (size_t a = 0; a < u->n_positions && !overlap; ++a)
                overlap = u->positions[a] < t->first;
            ORACLE_FAIL_IF(overlap, "SharePolicy.token_schedule[%zu]: overlaps entry %zu", i, j);
        }
    }
    return 0;
#undef ORACLE_FAIL_IF
}

/* Both checks on entries[0 .. n): the same status and text; @return the status. */
static int check_both(Kwctl__TokenPolicy *const *entries, size_t n) {
    char want[256] = "";
    kw_error_clear();
    const int rc = kw_proto_token_schedule_check(entries, n);
    const int rw = oracle_check(entries, n, want, sizeof want);
    if (rc != rw || (rc < 0 && strcmp(want, kw_error_detail()) != 0)) {
        fprintf(stderr, "differs on %zu entries: %d \"%s\", the oracle %d \"%s\"\n", n, rc, kw_error_detail(), rw,
                want);
        fail();
    }
    for (size_t i = 0; i < n; ++i)
        assert_int_equal(kw_proto_token_runs(entries[i]), oracle_runs(entries[i]));
    return rc;
}

static uint64_t rng_state = 0x2545f4914f6cdd1dull;
static uint32_t rnd(uint32_t n) { /* in 0 .. n-1 (n >= 1) */
    rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
    return (uint32_t)((rng_state >> 16) % n);
}

enum { MAX_ENTRIES = KW_PROTO_MAX_TOKEN_POLICIES + 1, MAX_POSITIONS = 200 };

/* Random schedules of 0..9 entries against the oracle. */
static void test_schedule_differential(void **state) {
    (void)state;
    static uint32_t pos[MAX_ENTRIES][MAX_POSITIONS];
    Kwctl__TokenPolicy t[MAX_ENTRIES], *ptrs[MAX_ENTRIES];
    int accepted = 0, overlaps = 0;
    for (int iter = 0; iter < 30000; ++iter) {
        const size_t n = rnd(10) == 0 ? MAX_ENTRIES : rnd(KW_PROTO_MAX_TOKEN_POLICIES + 1);
        const int high = rnd(4) == 0; /* near the 2^20 bound */
        const uint32_t base = high ? KW_PROTO_DEFAULT_MAX_TOKENS - 80 : 0, span = high ? 82 : 60;
        for (size_t i = 0; i < n; ++i) {
            kwctl__token_policy__init(&t[i]);
            ptrs[i] = &t[i];
            const uint32_t kind = rnd(16);
            if (kind < 3 || kind == 15) /* 15: with positions too, two selectors */
                t[i].first = rnd(20) == 0 ? 0 : base + rnd(span);
            else if (kind < 6)
                t[i].last = rnd(20) == 0 ? 0 : base + rnd(span);
            if (kind >= 6) {
                const uint32_t gap = 1 + rnd(8), n_pos = 1 + rnd(rnd(5) == 0 ? MAX_POSITIONS : 12);
                uint32_t p = base + rnd(span / 2);
                for (uint32_t a = 0; a < n_pos; ++a) {
                    pos[i][a] = p;
                    p += rnd(gap) == 0 ? 2 + rnd(4) : 1; /* a new run, or the same one */
                    if (rnd(300) == 0) p -= 1 + rnd(2);  /* not increasing */
                }
                t[i].positions = pos[i];
                t[i].n_positions = n_pos;
            }
        }
        const int rc = check_both(ptrs, n);
        accepted += rc == 0;
        overlaps += rc < 0 && strstr(kw_error_detail(), "overlaps") != NULL;
    }
    /* both outcomes well represented */
    assert_true(accepted > 3000);
    assert_true(overlaps > 3000);
}

/* Hand-picked edges: runs of two entries adjacent or sharing one end, a first entry ending just before or at an
 * entry's least position, first and last that would meet only on a short prompt, a last entry over positions,
 * exactly 64 and 65 runs, the largest position, and the largest schedule (8 entries of 64 runs interleaved, 2^20
 * positions): accepted, then one entry's single position inside another entry's first run, or its last run's tail. */
static void test_schedule_edges(void **state) {
    (void)state;
    Kwctl__TokenPolicy a = KWCTL__TOKEN_POLICY__INIT, b = KWCTL__TOKEN_POLICY__INIT;
    Kwctl__TokenPolicy *ab[] = {&a, &b};
    uint32_t pa[] = {3, 4, 9, 10}, pb[] = {5, 6, 7, 8, 11};
    a.positions = pa, a.n_positions = 4, b.positions = pb, b.n_positions = 5;
    assert_int_equal(check_both(ab, 2), 0); /* adjacent runs */
    pb[4] = 10;                             /* one shared end */
    assert_int_equal(check_both(ab, 2), KW_E_PROTO_FIELD);
    pb[4] = 11;
    b.positions = NULL, b.n_positions = 0, b.first = 3; /* first 3: 0..2, below 3 */
    assert_int_equal(check_both(ab, 2), 0);
    b.first = 4;
    assert_int_equal(check_both(ab, 2), KW_E_PROTO_FIELD);
    b.first = 0, b.last = 1000; /* a last entry over positions: only on a short prompt, so accepted */
    assert_int_equal(check_both(ab, 2), 0);
    a.positions = NULL, a.n_positions = 0, a.first = 600; /* first 600 and last 1000: on a prompt under 1600 */
    assert_int_equal(check_both(ab, 2), 0);
    a.first = KW_PROTO_DEFAULT_MAX_TOKENS, b.last = KW_PROTO_DEFAULT_MAX_TOKENS;
    assert_int_equal(check_both(ab, 2), 0);
    b.last = KW_PROTO_DEFAULT_MAX_TOKENS + 1;
    assert_int_equal(check_both(ab, 2), KW_E_PROTO_FIELD);

    static uint32_t big[KW_PROTO_MAX_TOKEN_POLICIES][KW_PROTO_DEFAULT_MAX_TOKENS / KW_PROTO_MAX_TOKEN_POLICIES];
    Kwctl__TokenPolicy e[KW_PROTO_MAX_TOKEN_POLICIES], *ep[KW_PROTO_MAX_TOKEN_POLICIES];
    const uint32_t run = KW_PROTO_DEFAULT_MAX_TOKENS / KW_PROTO_MAX_TOKEN_POLICIES / KW_PROTO_MAX_TOKEN_RUNS;
    for (uint32_t i = 0; i < KW_PROTO_MAX_TOKEN_POLICIES; ++i) { /* entry i: run r at (r * 8 + i) * run */
        kwctl__token_policy__init(&e[i]);
        ep[i] = &e[i];
        for (uint32_t r = 0; r < KW_PROTO_MAX_TOKEN_RUNS; ++r)
            for (uint32_t x = 0; x < run; ++x)
                big[i][r * run + x] = (r * KW_PROTO_MAX_TOKEN_POLICIES + i) * run + x;
        e[i].positions = big[i];
        e[i].n_positions = KW_PROTO_MAX_TOKEN_RUNS * run;
    }
    assert_int_equal(big[7][KW_PROTO_MAX_TOKEN_RUNS * run - 1], KW_PROTO_DEFAULT_MAX_TOKENS - 1);
    assert_int_equal(check_both(ep, KW_PROTO_MAX_TOKEN_POLICIES), 0);
    big[7][KW_PROTO_MAX_TOKEN_RUNS * run - 1] = KW_PROTO_DEFAULT_MAX_TOKENS; /* not below 2^20 */
    assert_int_equal(check_both(ep, KW_PROTO_MAX_TOKEN_POLICIES), KW_E_PROTO_FIELD);
    big[7][KW_PROTO_MAX_TOKEN_RUNS * run - 1] = KW_PROTO_DEFAULT_MAX_TOKENS - 1;
    e[5].n_positions = 1; /* entry 5: position 5 * run alone, in entry 6's first run... */
    big[5][0] = 6 * run + 3;
    assert_int_equal(check_both(ep, KW_PROTO_MAX_TOKEN_POLICIES), KW_E_PROTO_FIELD);
    assert_non_null(strstr(kw_error_detail(), "token_schedule[6]: overlaps entry 5"));
    big[5][0] = KW_PROTO_DEFAULT_MAX_TOKENS - 2; /* ... in the tail of entry 7's 64th run */
    assert_int_equal(check_both(ep, KW_PROTO_MAX_TOKEN_POLICIES), KW_E_PROTO_FIELD);
    assert_non_null(strstr(kw_error_detail(), "token_schedule[7]: overlaps entry 5"));
    big[5][0] = 5 * run;
    e[5].n_positions = KW_PROTO_MAX_TOKEN_RUNS * run;
    big[2][1] = big[2][0] + 2; /* entry 2: 65 runs */
    for (uint32_t x = 2; x < run; ++x)
        big[2][x] = big[2][x - 1] + 1;
    assert_int_equal(check_both(ep, KW_PROTO_MAX_TOKEN_POLICIES), KW_E_PROTO_FIELD);
    assert_non_null(strstr(kw_error_detail(), "65 runs"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_schedule_differential),
        cmocka_unit_test(test_schedule_edges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
