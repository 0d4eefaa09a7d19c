/* test_alloc.c: the rate-distortion allocator of one KVWire section (wire/kw_wire_alloc.h):
 *  - the reduction: with only {drop, int8}, rows int8 represents exactly (so every kept token costs the same and
 *    loses nothing), the kept set is kw_select_positions' vnorm top-k for the k the budget buys, ties included;
 *  - the cap: over budgets from the smallest section to everything, the exact size is at most the budget, equals
 *    kw_wire_section_size and the bytes the encoder writes, and the blob decodes to the allocator's choice;
 *  - keep_all (kv_direct's later layers): nothing dropped, int4 for all at the floor, upgrades within the budget;
 *  - the whole-layer baselines' plans (kvcomm_like middle-first, qkvcomm_like deepest-first upgrades);
 *  - determinism (two runs, two encoder ISAs give the same choice and bytes), refused options and budgets, and the
 *    token-group limit of a section.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "c2c/kw_select.h"
#include "common/kw_half.h"
#include "common/kw_status.h"
#include "wire/kw_wire.h"
#include "wire/kw_wire_alloc.h"

enum { T = 64, H = 2, D = 16, P = 256 };

typedef struct fixture {
    kw_wire_header hdr;
    uint32_t positions[T];
    float k[T * H * D], v[T * H * D];
    float score[T];
} fixture;

static uint64_t rng_next(uint64_t *s) {
    *s += 0x9e3779b97f4a7c15ull;
    uint64_t z = *s;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* exact: every row holds integers in [-127, 127] times 2^-4 with one of magnitude 127 (int8 with a per-row f32
 * scale is then lossless); else values of varied magnitude. Some tokens repeat another's V rows (equal scores). */
static void fixture_make(fixture *f, int exact, uint64_t seed) {
    memset(f, 0, sizeof *f);
    f->hdr = (kw_wire_header){.n_layers = 4,
                              .n_sections = 1,
                              .n_kv_heads = H,
                              .head_dim = D,
                              .n_positions = P,
                              .src_dtype = KW_WIRE_DTYPE_F32};
    uint32_t p = 0;
    for (int t = 0; t < T; ++t) {
        p += 1 + (uint32_t)(rng_next(&seed) % 3);
        f->positions[t] = p;
    }
    for (int i = 0; i < T * H * D; ++i) {
        const uint64_t r = rng_next(&seed);
        if (exact) {
            f->k[i] = (float)((int)(r % 255) - 127) * 0.0625f;
            f->v[i] = (float)((int)((r >> 16) % 255) - 127) * 0.0625f;
        } else {
            const double scale = ldexp(1.0, (int)((r >> 40) % 7) - 3);
            /* bf16 values, as a bf16 sharer cache holds: the bf16 codec is lossless on them */
            f->k[i] = kw_bf16_to_f32(kw_f32_to_bf16((float)(((double)(r % 20001) / 10000.0 - 1.0) * scale)));
            f->v[i] = kw_bf16_to_f32(kw_f32_to_bf16((float)(((double)((r >> 16) % 20001) / 10000.0 - 1.0) * scale)));
        }
    }
    if (exact)
        for (int row = 0; row < T * H; ++row) {
            f->k[row * D + (row % D)] = 127 * 0.0625f;
            f->v[row * D + ((row * 7) % D)] = -127 * 0.0625f;
        }
    for (int t = 5; t < T; t += 9) /* ties: token t gets token t-3's V rows */
        memcpy(f->v + t * H * D, f->v + (t - 3) * H * D, H * D * sizeof(float));
    kw_select_scores(KW_SELECT_VNORM, T, H, D, f->k, f->v, f->score);
}

static kw_wire_codec_spec spec(const char *codec) {
    kw_wire_codec_spec s;
    assert_int_equal(kw_wire_spec_parse(codec, "token", "f32", &s), 0);
    return s;
}

/* The exact size of one int8 group of the candidates rows[0..n). */
static uint64_t size_of(const fixture *f, const int64_t *rows, int64_t n, const kw_wire_codec_spec *c) {
    uint32_t pos[T];
    for (int64_t i = 0; i < n; ++i)
        pos[i] = f->positions[rows[i]];
    const kw_wire_policy pol = {.k = *c, .v = *c};
    size_t size = 0;
    assert_int_equal(kw_wire_section_size(&f->hdr, &pol, (uint32_t)n, pos, &size), 0);
    return size;
}

static const kw_wire_alloc_result *run(kw_wire_alloc *a, const kw_wire_alloc_options *o, const fixture *f,
                                       uint64_t budget) {
    const kw_wire_alloc_input in = {.hdr = &f->hdr,
                                    .n_tokens = T,
                                    .positions = f->positions,
                                    .k = f->k,
                                    .v = f->v,
                                    .weight = f->score,
                                    .budget = budget};
    const kw_wire_alloc_result *r = NULL;
    assert_int_equal(kw_wire_alloc_run(a, o, &in, &r), 0);
    return r;
}

static void test_reduction_to_topk(void **state) {
    (void)state;
    static fixture f;
    fixture_make(&f, 1, 7);
    int ties = 0;
    for (int t = 1; t < T; ++t)
        for (int u = 0; u < t; ++u)
            ties += f.score[t] == f.score[u];
    assert_true(ties >= 6);
    const kw_wire_codec_spec int8 = spec("int8");
    const kw_wire_alloc_options o = {.codecs = &int8, .n_codecs = 1};
    kw_wire_alloc *a = NULL;
    assert_int_equal(kw_wire_alloc_create(&a), 0);
    float scratch[T];
    int64_t top[T + 1][T];
    int64_t n_top[T + 1];
    for (int64_t k = 1; k <= T; ++k) {
        const kw_select_policy sel = {.mode = KW_SELECT_VNORM, .proportion = 0.0, .min_tokens = k};
        assert_int_equal(kw_select_positions(&sel, T, H, D, f.k, f.v, 0, 0, scratch, top[k], &n_top[k]), 0);
        assert_int_equal(n_top[k], k);
    }
    for (int64_t k = 1; k <= T; ++k) {
        /* the budget that buys exactly k: the top-k section's size, and one byte less than the top-(k+1)'s */
        uint64_t budgets[2] = {size_of(&f, top[k], k, &int8), k < T ? size_of(&f, top[k + 1], k + 1, &int8) - 1 : 0};
        for (int b = 0; b < 2; ++b) {
            if (budgets[b] == 0) continue;
            const kw_wire_alloc_result *r = run(a, &o, &f, budgets[b]);
            assert_int_equal(r->n_kept, k);
            for (int64_t i = 0; i < k; ++i)
                assert_int_equal(r->rows[i], top[k][i]);
            assert_true(r->bytes <= budgets[b]);
            assert_int_equal(r->per_codec[0], k);
            double dropped = 0.0; /* lossless int8: the distortion is the weight left out */
            for (int t = 0; t < T; ++t)
                dropped += r->choice[t] ? 0.0 : (double)f.score[t];
            assert_true(fabs(r->distortion - dropped) <= 1e-9 * (dropped + 1.0));
        }
    }
    kw_wire_alloc_free(a);
}

/* Encodes the choice and decodes it again: the section's bytes and the decoded positions match the result. */
static void check_encoded(const fixture *f, const kw_wire_alloc_options *o, const kw_wire_alloc_result *r, uint8_t isa,
                          unsigned char *out, size_t *out_len) {
    kw_wire_header hdr = f->hdr;
    kw_wire_encoder *enc = NULL;
    const kw_wire_encoder_options eo = {.isa = isa};
    assert_int_equal(kw_wire_encoder_create(&hdr, &eo, &enc), 0);
    static unsigned char buf[1 << 16];
    size_t n = 0, w = 0;
    assert_int_equal(kw_wire_encoder_write_header(enc, buf, sizeof buf, &w), 0);
    n += w;
    kw_wire_policy pol;
    kw_wire_alloc_policy(r, o, 0, &pol);
    const kw_wire_layer_in in = {.layer = 0,
                                 .n_tokens = r->n_kept,
                                 .positions = r->positions,
                                 .k = {.data = f->k, .head_stride = D, .token_stride = H * D, .rows = r->rows},
                                 .v = {.data = f->v, .head_stride = D, .token_stride = H * D, .rows = r->rows}};
    assert_int_equal(kw_wire_encoder_write_section(enc, &in, &pol, buf + n, sizeof buf - n, &w), 0);
    assert_int_equal(w, r->bytes);
    n += w;
    assert_int_equal(kw_wire_encoder_write_trailer(enc, buf + n, sizeof buf - n, &w), 0);
    n += w;
    kw_wire_encoder_destroy(enc);
    kw_wire_reader *rd = NULL;
    const kw_wire_header *h = NULL;
    assert_int_equal(kw_wire_reader_open(buf, n, NULL, &rd, &h), 0);
    const kw_wire_section *sec = NULL;
    assert_int_equal(kw_wire_reader_next(rd, &sec), 1);
    assert_int_equal(sec->n_tokens, r->n_kept);
    assert_int_equal(sec->n_groups, r->n_groups);
    uint32_t pos[T];
    assert_int_equal(kw_wire_section_positions(sec, pos, T), 0);
    assert_memory_equal(pos, r->positions, r->n_kept * sizeof *pos);
    assert_int_equal(kw_wire_reader_next(rd, &sec), 0);
    kw_wire_reader_close(rd);
    memcpy(out, buf, n);
    *out_len = n;
}

static void test_cap_sweep(void **state) {
    (void)state;
    static fixture f;
    fixture_make(&f, 0, 11);
    const kw_wire_codec_spec codecs[4] = {spec("int4"), spec("int6"), spec("int8"), spec("bf16")};
    const kw_wire_alloc_options o = {.codecs = codecs, .n_codecs = 4};
    kw_wire_alloc *a = NULL;
    assert_int_equal(kw_wire_alloc_create(&a), 0);
    uint64_t min_bytes = 0;
    assert_int_equal(kw_wire_alloc_min_bytes(&f.hdr, &o, &min_bytes), 0);
    double prev = INFINITY;
    int saw_mixed = 0;
    static unsigned char blob_a[1 << 16], blob_b[1 << 16];
    for (uint64_t budget = min_bytes; budget < 6000; budget += budget / 8 + 1) {
        const kw_wire_alloc_result *r = run(a, &o, &f, budget);
        assert_true(r->n_kept >= 1);
        assert_true(r->bytes <= budget);
        kw_wire_policy pol;
        kw_wire_alloc_policy(r, &o, 0, &pol);
        size_t exact = 0;
        assert_int_equal(kw_wire_section_size(&f.hdr, &pol, r->n_kept, r->positions, &exact), 0);
        assert_int_equal(exact, r->bytes);
        assert_true(r->distortion <= prev * (1 + 1e-12)); /* more bytes never hurt */
        prev = r->distortion;
        int kinds = 0;
        for (int c = 0; c < 4; ++c)
            kinds += r->per_codec[c] > 0;
        saw_mixed |= kinds >= 2;
        size_t la = 0, lb = 0;
        check_encoded(&f, &o, r, KW_WIRE_ISA_SCALAR, blob_a, &la);
        check_encoded(&f, &o, r, KW_WIRE_ISA_AUTO, blob_b, &lb);
        assert_int_equal(la, lb);
        assert_memory_equal(blob_a, blob_b, la);
    }
    assert_true(saw_mixed);
    /* everything affordable: every token at the lossless codec */
    const kw_wire_alloc_result *r = run(a, &o, &f, 1u << 20);
    assert_int_equal(r->per_codec[3], T);
    assert_true(r->distortion == 0.0);
    kw_wire_alloc_free(a);
}

/* keep_all (kv_direct's fixed positions): every token is kept at every budget from "all at int4" up, the size is
 * exact and within the budget, the codecs only improve on int4 as the budget grows, and a budget below "all at
 * int4" is KW_E_LIMIT. */
static void test_keep_all(void **state) {
    (void)state;
    static fixture f;
    fixture_make(&f, 0, 17);
    const kw_wire_codec_spec codecs[3] = {spec("int8"), spec("int4"), spec("bf16")};
    const kw_wire_alloc_options o = {.codecs = codecs, .n_codecs = 3};
    int64_t rows[T];
    for (int t = 0; t < T; ++t)
        rows[t] = t;
    const uint64_t floor = size_of(&f, rows, T, &codecs[1]);
    kw_wire_alloc *a = NULL;
    assert_int_equal(kw_wire_alloc_create(&a), 0);
    kw_wire_alloc_input in = {
        .hdr = &f.hdr, .n_tokens = T, .positions = f.positions, .k = f.k, .v = f.v, .weight = f.score, .keep_all = 1};
    const kw_wire_alloc_result *r = NULL;
    in.budget = floor - 1;
    assert_int_equal(kw_wire_alloc_run(a, &o, &in, &r), KW_E_LIMIT);
    double prev = INFINITY;
    for (in.budget = floor; in.budget < floor * 5; in.budget += in.budget / 7 + 1) {
        assert_int_equal(kw_wire_alloc_run(a, &o, &in, &r), 0);
        assert_int_equal(r->n_kept, T);
        assert_true(r->bytes <= in.budget);
        kw_wire_policy pol;
        kw_wire_alloc_policy(r, &o, 0, &pol);
        size_t exact = 0;
        assert_int_equal(kw_wire_section_size(&f.hdr, &pol, r->n_kept, r->positions, &exact), 0);
        assert_int_equal(exact, r->bytes);
        assert_true(r->distortion <= prev * (1 + 1e-12));
        prev = r->distortion;
        if (in.budget == floor) assert_int_equal(r->per_codec[1], T); /* exactly the floor: all int4 */
    }
    in.budget = 1u << 20;
    assert_int_equal(kw_wire_alloc_run(a, &o, &in, &r), 0);
    assert_int_equal(r->per_codec[2], T); /* everything affordable: all lossless */
    kw_wire_alloc_free(a);
}

/* The whole-layer baselines' plans on a hand-checkable case: 5 candidate layers, 2 blobs. kvcomm_like takes whole
 * layers middle-first (2, then 1 and 3, then 0 and 4); qkvcomm_like charges int4 for all and upgrades the deepest
 * first; both refuse a cap below their minimum, naming it. */
static void test_plan_layers(void **state) {
    (void)state;
    const kw_wire_header hdr = {.n_kv_heads = H, .head_dim = D, .n_positions = P, .src_dtype = KW_WIRE_DTYPE_F32};
    const uint32_t rows[2] = {10, 3};
    const kw_wire_codec_spec codecs[2] = {spec("int4"), spec("int8")};
    uint64_t low = 0, high = 0;
    for (int b = 0; b < 2; ++b) {
        size_t s4 = 0, s8 = 0;
        const kw_wire_policy p4 = {.k = codecs[0], .v = codecs[0]}, p8 = {.k = codecs[1], .v = codecs[1]};
        kw_wire_header h = hdr;
        h.n_layers = h.n_sections = 5;
        assert_int_equal(kw_wire_section_bound(&h, &p4, rows[b], &s4), 0);
        assert_int_equal(kw_wire_section_bound(&h, &p8, rows[b], &s8), 0);
        low += s4, high += s8;
    }
    const uint64_t fixed = 2 * (KW_WIRE_HEADER_BYTES + KW_WIRE_TRAILER_BYTES);
    kw_wire_layer_plan_input in = {
        .hdr = &hdr, .n_layers = 5, .blob_rows = rows, .n_blobs = 2, .codecs = &codecs[1], .n_codecs = 1};
    uint8_t choice[5];
    uint64_t bytes = 0, min_bytes = 0;
    static const uint8_t kv3[5] = {0, 1, 1, 1, 0}, kv2[5] = {0, 1, 1, 0, 0}, kv5[5] = {1, 1, 1, 1, 1};
    const struct {
        uint64_t cap;
        const uint8_t *want;
    } kv[] = {{fixed + 3 * high, kv3}, {fixed + 3 * high - 1, kv2}, {fixed + 9 * high, kv5}};
    for (size_t i = 0; i < sizeof kv / sizeof kv[0]; ++i) {
        in.cap = kv[i].cap;
        assert_int_equal(kw_wire_plan_layers(KW_WIRE_BUDGET_KVCOMM_LIKE, &in, choice, &bytes, &min_bytes), 0);
        assert_memory_equal(choice, kv[i].want, 5);
        assert_true(bytes <= in.cap);
        assert_int_equal(min_bytes, fixed + high);
    }
    in.cap = fixed + high - 1;
    assert_int_equal(kw_wire_plan_layers(KW_WIRE_BUDGET_KVCOMM_LIKE, &in, choice, &bytes, &min_bytes),
                     KW_E_INVALID_ARG);
    char want[64];
    snprintf(want, sizeof want, "need at least %llu bytes", (unsigned long long)(fixed + high));
    assert_non_null(strstr(kw_error_detail(), want));

    in.codecs = codecs, in.n_codecs = 2;
    static const uint8_t q0[5] = {1, 1, 1, 1, 1}, q2[5] = {1, 1, 1, 2, 2}, q5[5] = {2, 2, 2, 2, 2};
    const struct {
        uint64_t cap;
        const uint8_t *want;
    } q[] = {{fixed + 5 * low, q0}, {fixed + 5 * low + 3 * (high - low) - 1, q2}, {fixed + 5 * high, q5}};
    for (size_t i = 0; i < sizeof q / sizeof q[0]; ++i) {
        in.cap = q[i].cap;
        assert_int_equal(kw_wire_plan_layers(KW_WIRE_BUDGET_QKVCOMM_LIKE, &in, choice, &bytes, &min_bytes), 0);
        assert_memory_equal(choice, q[i].want, 5);
        assert_true(bytes <= in.cap);
        assert_int_equal(min_bytes, fixed + 5 * low);
    }
    in.cap = fixed + 5 * low - 1;
    assert_int_equal(kw_wire_plan_layers(KW_WIRE_BUDGET_QKVCOMM_LIKE, &in, choice, &bytes, &min_bytes),
                     KW_E_INVALID_ARG);
    in.n_codecs = 1; /* qkvcomm_like needs its two codecs */
    in.cap = 1u << 20;
    assert_int_equal(kw_wire_plan_layers(KW_WIRE_BUDGET_QKVCOMM_LIKE, &in, choice, &bytes, &min_bytes),
                     KW_E_INVALID_ARG);
}

static void test_deterministic(void **state) {
    (void)state;
    static fixture f;
    fixture_make(&f, 0, 23);
    const kw_wire_codec_spec codecs[3] = {spec("int4"), spec("int8"), spec("int6")};
    const kw_wire_alloc_options o = {.codecs = codecs, .n_codecs = 3};
    kw_wire_alloc *a = NULL, *b = NULL;
    assert_int_equal(kw_wire_alloc_create(&a), 0);
    assert_int_equal(kw_wire_alloc_create(&b), 0);
    for (uint64_t budget = 300; budget < 5000; budget += 977) {
        const kw_wire_alloc_result *x = run(a, &o, &f, budget);
        const kw_wire_alloc_result *y = run(b, &o, &f, budget);
        assert_int_equal(x->n_kept, y->n_kept);
        assert_memory_equal(x->choice, y->choice, T);
        assert_int_equal(x->bytes, y->bytes);
        assert_true(x->distortion == y->distortion);
    }
    kw_wire_alloc_free(a);
    kw_wire_alloc_free(b);
}

static void test_refusals(void **state) {
    (void)state;
    static fixture f;
    fixture_make(&f, 0, 3);
    kw_wire_codec_spec layer;
    assert_int_equal(kw_wire_spec_parse("int8", "layer", "f32", &layer), 0);
    kw_wire_alloc_options o = {.codecs = &layer, .n_codecs = 1};
    kw_wire_alloc *a = NULL;
    assert_int_equal(kw_wire_alloc_create(&a), 0);
    const kw_wire_alloc_input in = {
        .hdr = &f.hdr, .n_tokens = T, .positions = f.positions, .k = f.k, .v = f.v, .weight = f.score, .budget = 1000};
    const kw_wire_alloc_result *r = NULL;
    assert_int_equal(kw_wire_alloc_run(a, &o, &in, &r), KW_E_INVALID_ARG); /* not token-local */
    const kw_wire_codec_spec twice[2] = {spec("int8"), spec("int8")};
    o = (kw_wire_alloc_options){.codecs = twice, .n_codecs = 2};
    assert_int_equal(kw_wire_alloc_run(a, &o, &in, &r), KW_E_INVALID_ARG);
    o.n_codecs = 1;
    uint64_t min_bytes = 0;
    assert_int_equal(kw_wire_alloc_min_bytes(&f.hdr, &o, &min_bytes), 0);
    kw_wire_alloc_input small = in; /* below a section head and checksum: nothing fits */
    small.budget = KW_WIRE_SECTION_HEAD_BYTES + KW_WIRE_CHECKSUM_BYTES;
    assert_int_equal(kw_wire_alloc_run(a, &o, &small, &r), KW_E_LIMIT);
    small.budget = min_bytes; /* the bound for one token always keeps one */
    assert_int_equal(kw_wire_alloc_run(a, &o, &small, &r), 0);
    assert_int_equal(r->n_kept, 1);
    kw_wire_alloc_free(a);
    kw_wire_alloc_free(NULL);
}

/* Many tokens whose codecs alternate: a section never gets more than KW_WIRE_MAX_GROUPS token groups. */
static void test_group_limit(void **state) {
    (void)state;
    enum { N = 3 * KW_WIRE_MAX_GROUPS, HD = 64 };
    float *k = malloc(N * HD * sizeof(float)), *v = malloc(N * HD * sizeof(float));
    uint32_t *pos = malloc(N * sizeof(uint32_t));
    assert_true(k && v && pos);
    uint64_t seed = 5;
    for (int i = 0; i < N * HD; ++i) {
        k[i] = (float)(rng_next(&seed) % 2001) / 1000.0f - 1.0f;
        v[i] = (float)(rng_next(&seed) % 2001) / 1000.0f - 1.0f;
    }
    for (int t = 0; t < N; ++t)
        pos[t] = (uint32_t)t;
    const kw_wire_header hdr = {.n_layers = 1,
                                .n_sections = 1,
                                .n_kv_heads = 1,
                                .head_dim = HD,
                                .n_positions = N,
                                .src_dtype = KW_WIRE_DTYPE_F32};
    const kw_wire_codec_spec codecs[2] = {spec("int4"), spec("int8")};
    const kw_wire_alloc_options o = {.codecs = codecs, .n_codecs = 2};
    kw_wire_alloc *a = NULL;
    assert_int_equal(kw_wire_alloc_create(&a), 0);
    const kw_wire_alloc_input in = {.hdr = &hdr, .n_tokens = N, .positions = pos, .k = k, .v = v, .budget = N * 104};
    const kw_wire_alloc_result *r = NULL;
    assert_int_equal(kw_wire_alloc_run(a, &o, &in, &r), 0);
    assert_true(r->n_groups <= KW_WIRE_MAX_GROUPS);
    assert_true(r->n_groups + 2 >= KW_WIRE_MAX_GROUPS); /* the limit is what stopped the alternation */
    assert_true(r->bytes <= in.budget);
    kw_wire_alloc_free(a);
    free(k), free(v), free(pos);
}

/* KVWire v1.1's token-local codecs as candidates (zero points, int3, int2, groups of 4 int3 values that are not whole
 * bytes): the allocator's distortion with everything kept equals the error the real encoder and decoder make (so its
 * error model is theirs), the sizes are exact, and the blob is v1.1. */
static void test_v11_codecs(void **state) {
    (void)state;
    static fixture f;
    fixture_make(&f, 0, 21);
    kw_wire_codec_spec codecs[4];
    assert_int_equal(kw_wire_spec_parse_v("int2-asym", "token", "f16", KW_WIRE_VERSION_1_1, &codecs[0]), 0);
    assert_int_equal(kw_wire_spec_parse_v("int3", "group4", "f32", KW_WIRE_VERSION_1_1, &codecs[1]), 0);
    assert_int_equal(kw_wire_spec_parse_v("int4-asym", "group8", "bf16", KW_WIRE_VERSION_1_1, &codecs[2]), 0);
    assert_int_equal(kw_wire_spec_parse_v("int8-asym", "token", "f32", KW_WIRE_VERSION_1_1, &codecs[3]), 0);
    kw_wire_alloc *a = NULL;
    assert_int_equal(kw_wire_alloc_create(&a), 0);
    for (uint32_t c = 0; c < 4; ++c) {
        const kw_wire_alloc_options o = {.codecs = &codecs[c], .n_codecs = 1};
        const kw_wire_alloc_result *r = run(a, &o, &f, 1u << 20);
        assert_int_equal(r->n_kept, T);
        kw_wire_policy pol;
        kw_wire_alloc_policy(r, &o, 0, &pol);
        assert_true(kw_wire_policy_needs_v11(&pol));
        kw_wire_header hdr = f.hdr;
        hdr.version = KW_WIRE_VERSION_1_1;
        size_t exact = 0;
        assert_int_equal(kw_wire_section_size(&hdr, &pol, r->n_kept, r->positions, &exact), 0);
        assert_int_equal(exact, r->bytes);
        /* the decoded rows' error, token by token, weighted as the allocator weighs it */
        float kq[T * H * D], vq[T * H * D];
        memcpy(kq, f.k, sizeof kq);
        memcpy(vq, f.v, sizeof vq);
        assert_int_equal(kw_wire_roundtrip_rows(&codecs[c], &codecs[c], 0, T, H, D, kq, vq), 0);
        double want = 0.0;
        for (int t = 0; t < T; ++t) {
            double err = 0.0, energy = 0.0;
            for (int i = t * H * D; i < (t + 1) * H * D; ++i) {
                err += ((double)f.k[i] - kq[i]) * ((double)f.k[i] - kq[i]) +
                       ((double)f.v[i] - vq[i]) * ((double)f.v[i] - vq[i]);
                energy += (double)f.k[i] * f.k[i] + (double)f.v[i] * f.v[i];
            }
            want += energy > 0.0 ? (double)f.score[t] * (err / energy) : 0.0;
        }
        if (fabs(r->distortion - want) > 1e-9 * want)
            fail_msg("codec %u: the allocator's distortion %.12g, the round trip's %.12g", c, r->distortion, want);
    }
    /* mixed with v1 codecs under a cap: within it, exact */
    const kw_wire_codec_spec mixed[3] = {codecs[0], spec("int4"), codecs[3]};
    const kw_wire_alloc_options o = {.codecs = mixed, .n_codecs = 3};
    const kw_wire_alloc_result *r = run(a, &o, &f, 2500);
    assert_true(r->bytes <= 2500 && r->n_kept >= 1);
    kw_wire_alloc_free(a);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v11_codecs), cmocka_unit_test(test_reduction_to_topk),
        cmocka_unit_test(test_cap_sweep),  cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_refusals),   cmocka_unit_test(test_group_limit),
        cmocka_unit_test(test_keep_all),   cmocka_unit_test(test_plan_layers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
