/* test_wire_code_limit.c: the encoder's code limit (kw_wire_policy.code_limit_k/v, docs/FORMAT.md §5.14). The blobs go
 * through the unchanged decoder; the symmetric codes are an oracle's written here from the definition (the scale of
 * the unit's absmax for codes up to L, codes clamped at +-L); zero-point codes stay in 0..L; every ISA writes the same
 * bytes; a limit at or above the codec's qmax, codecs without integer codes and token groups of another codec are
 * unchanged; with zstd the limited codes take fewer bytes; clipping, rotation and outliers compose with it; a step
 * the codec's own codes could not use is refused, and so is a limit in a section someone else writes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>

#include "tests/wire/wire_test_util.h"
#include "wire/kw_wire.h"

enum { H = 2, T = 16, D = 64, N = H * T * D };

static kw_wire_header header(uint16_t version) {
    return wt_one_section_header(H, D, T, version);
}

/* Bell-shaped values with a 20x channel (what unrotated keys look like). */
static void fill(float *x, uint64_t seed) {
    wt_rng r = {seed};
    for (size_t e = 0; e < N; ++e)
        x[e] = wt_bell(&r) * (e % D == 5 ? 20.0f : 1.0f);
}

/* Encodes K = V = x with the policy (ISA isa, header version) into a blob; *o (if not NULL) gets its decoding. */
static uint8_t *encode_v(const float *x, const kw_wire_policy *pol, uint8_t isa, uint16_t version, size_t *size,
                         wt_blob_out *o) {
    const kw_wire_header hdr = header(version);
    uint8_t *blob = NULL;
    if (wt_encode_same_kv(&hdr, x, pol, isa, &blob, size, o) < 0) fail_msg("encode: %s", kw_error_detail());
    return blob;
}

static uint8_t *encode(const float *x, const kw_wire_policy *pol, uint8_t isa, size_t *size, wt_blob_out *o) {
    return encode_v(x, pol, isa, KW_WIRE_VERSION_1_1, size, o);
}

/* The symmetric rule with codes up to L, from its definition: per scale unit the scale of wt_expected_scale for the
 * unit's absmax and qmax L, each value's code RNE(clamp(fl32(x * fl32(1/s)), -L, L)), decoded as code * s. */
static void oracle(const kw_wire_codec_spec *sp, float L, const float *x, float *y) {
    const uint64_t units = kw_wire_scale_units(sp->granularity, sp->group_log2, H, T, D);
    float *amax = wt_xmalloc(units * sizeof *amax), *s = wt_xmalloc(units * sizeof *s);
    for (uint64_t u = 0; u < units; ++u)
        amax[u] = 0.0f;
    for (uint32_t h = 0; h < H; ++h)
        for (uint32_t t = 0; t < T; ++t)
            for (uint32_t d = 0; d < D; ++d) {
                const uint64_t u = kw_wire_scale_index(sp->granularity, sp->group_log2, T, D, h, t, d);
                amax[u] = fmaxf(amax[u], fabsf(x[((size_t)h * T + t) * D + d]));
            }
    for (uint64_t u = 0; u < units; ++u)
        assert_int_equal(wt_expected_scale(amax[u], L, kw_wire_spec_scale(sp), &s[u]), 0);
    for (uint32_t h = 0; h < H; ++h)
        for (uint32_t t = 0; t < T; ++t)
            for (uint32_t d = 0; d < D; ++d) {
                const size_t e = ((size_t)h * T + t) * D + d;
                const float sv = s[kw_wire_scale_index(sp->granularity, sp->group_log2, T, D, h, t, d)];
                y[e] = sv > 0.0f ? nearbyintf(fminf(fmaxf(x[e] * (1.0f / sv), -L), L)) * sv : 0.0f;
            }
    free(amax), free(s);
}

typedef struct limit_case {
    kw_wire_codec_spec spec;
    uint8_t limit;
} limit_case;

static const limit_case sym_cases[] = {
    {{KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0}, 10},
    {{KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_LOG8, 4}, 12},
    {{KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_HEAD, KW_WIRE_SCALE_BF16, 0}, 1},
    {{KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_LAYER, KW_WIRE_SCALE_F32, 0}, 100},
    {{KW_WIRE_CODEC_INT6, KW_WIRE_GRAN_CHANNEL, KW_WIRE_SCALE_F16, 3}, 9},
    {{KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_E8M0, 0}, 3},
    {{KW_WIRE_CODEC_INT3, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_F16, 5}, 2},
};

/* K's decoded values are the oracle's at every granularity and scale dtype; V (no limit) is the plain encoding; the
 * blob has the plain one's size (only scales and codes differ); scalar, AVX2 and AVX-512 write the same bytes. */
static void test_symmetric_oracle(void **state) {
    (void)state;
    static float x[N], want[N];
    fill(x, 0x11);
    for (size_t i = 0; i < sizeof sym_cases / sizeof sym_cases[0]; ++i) {
        const kw_wire_codec_spec sp = sym_cases[i].spec;
        const kw_wire_policy plain = {.k = sp, .v = sp},
                             limited = {.k = sp, .v = sp, .code_limit_k = sym_cases[i].limit};
        wt_blob_out o0, o1;
        size_t n0, n1;
        uint8_t *b0 = encode(x, &plain, KW_WIRE_ISA_SCALAR, &n0, &o0);
        uint8_t *b1 = encode(x, &limited, KW_WIRE_ISA_SCALAR, &n1, &o1);
        assert_int_equal(n0, n1);
        oracle(&sp, (float)sym_cases[i].limit, x, want);
        for (size_t e = 0; e < N; ++e)
            if (o1.layers[0].k[e] != want[e])
                fail_msg("case %zu element %zu: %a, oracle %a", i, e, o1.layers[0].k[e], want[e]);
        assert_memory_equal(o1.layers[0].v, o0.layers[0].v, sizeof x);
        const kw_wire_header hdr = header(KW_WIRE_VERSION_1_1);
        assert_true(wt_same_on_every_isa(&hdr, x, &limited, b1, n1));
        wt_blob_out_free(&o0), wt_blob_out_free(&o1);
        free(b0), free(b1);
    }
}

/* Zero points: each row (one scale unit) decodes to at most L + 1 distinct values (codes 0..L), where the plain
 * encoding has more; the limit needs no v1.1 of its own (a v1 blob with a v1 codec decodes). */
static uint32_t distinct(const float *y, uint32_t n) {
    uint32_t count = 0;
    for (uint32_t i = 0; i < n; ++i) {
        uint32_t j = 0;
        while (j < i && y[j] != y[i])
            ++j;
        count += j == i;
    }
    return count;
}

static void test_zero_points_and_v1(void **state) {
    (void)state;
    static float x[N];
    fill(x, 0x12);
    const kw_wire_codec_spec a8 = {KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN,
                                   KW_WIRE_SCALE_F16 | KW_WIRE_SCALE_ZERO_POINTS, 0};
    const kw_wire_policy plain = {.k = a8, .v = a8}, pol = {.k = a8, .v = a8, .code_limit_k = 6, .code_limit_v = 6};
    wt_blob_out o, p;
    size_t n;
    uint8_t *b = encode(x, &pol, 0, &n, &o), *c = encode(x, &plain, 0, &n, &p);
    uint32_t most = 0;
    for (uint32_t r = 0; r < H * T; ++r) {
        const uint32_t k = distinct(o.layers[0].k + (size_t)r * D, D), v = distinct(o.layers[0].v + (size_t)r * D, D);
        if (k > 7 || v > 7) fail_msg("row %u: %u and %u distinct values, codes 0..6 allow 7", r, k, v);
        const uint32_t plain_k = distinct(p.layers[0].k + (size_t)r * D, D);
        most = plain_k > most ? plain_k : most;
    }
    assert_true(most > 7);
    /* and each value is the §5.9 rule's with qmax 6: z and s from the row's min and max, code RNE(clamp(fl32(x - z) *
     * fl32(1/s), 0, 6)) */
    for (uint32_t r = 0; r < H * T; ++r) {
        const float *row = x + (size_t)r * D;
        float mn = row[0], mx = row[0];
        for (uint32_t d = 1; d < D; ++d)
            mn = fminf(mn, row[d]), mx = fmaxf(mx, row[d]);
        uint32_t sc = 0, zc = 0;
        float s = 0.0f, z = 0.0f;
        assert_int_equal(kw_wire_asym_choose(mn, mx, 6.0f, KW_WIRE_SCALE_F16, &sc, &s, &zc, &z), 0);
        for (uint32_t d = 0; d < D; ++d) {
            const float want = kw_wire_dequantize_asym(kw_wire_quantize_asym(row[d], z, 1.0f / s, 6.0f), s, z);
            if (o.layers[0].k[(size_t)r * D + d] != want)
                fail_msg("row %u channel %u: %a, the rule gives %a", r, d, o.layers[0].k[(size_t)r * D + d], want);
        }
    }
    wt_blob_out_free(&p);
    free(c);
    wt_blob_out_free(&o);
    free(b);
    const kw_wire_codec_spec i8 = {KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0};
    const kw_wire_policy v1 = {.k = i8, .v = i8, .code_limit_k = 10, .code_limit_v = 20};
    b = encode_v(x, &v1, 0, KW_WIRE_VERSION, &n, &o);
    assert_int_equal(o.hdr.version, KW_WIRE_VERSION);
    wt_blob_out_free(&o);
    free(b);
}

/* A limit at or above the codec's qmax, nf4, fp8 and passthrough: the same bytes as without one. */
static void test_unchanged(void **state) {
    (void)state;
    static float x[N];
    fill(x, 0x13);
    const limit_case cases[] = {
        {{KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0}, 127},
        {{KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0}, 255},
        {{KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_F16, 4}, 7},
        {{KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16 | KW_WIRE_SCALE_ZERO_POINTS, 0}, 255},
        {{KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_LAYER, KW_WIRE_SCALE_F32, 0}, 127},
        {{KW_WIRE_CODEC_INT3, KW_WIRE_GRAN_CHANNEL, KW_WIRE_SCALE_F16, 3}, 3},
        {{KW_WIRE_CODEC_NF4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0}, 3},
        {{KW_WIRE_CODEC_E4M3, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_E8M0, 5}, 3},
        {{KW_WIRE_CODEC_BF16, KW_WIRE_GRAN_NONE, KW_WIRE_SCALE_NONE, 0}, 3},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
        const kw_wire_codec_spec sp = cases[i].spec;
        const kw_wire_policy plain = {.k = sp, .v = sp},
                             limited = {
                                 .k = sp, .v = sp, .code_limit_k = cases[i].limit, .code_limit_v = cases[i].limit};
        const kw_wire_header hdr = header(KW_WIRE_VERSION_1_1);
        if (!wt_same_blob(&hdr, x, &plain, &limited)) fail_msg("case %zu: the limit changed the blob", i);
        kw_wire_policy clipped = plain, clipped_limited = limited; /* the clipped-scale search alike */
        clipped.clip = clipped_limited.clip = 3;
        if (!wt_same_blob(&hdr, x, &clipped, &clipped_limited)) fail_msg("case %zu: the limit changed the clip", i);
        assert_false(kw_wire_policy_code_limited(&limited));
    }
}

/* Token groups: the limit takes the layer's own codec (pol.k) only; a group of another codec (rows 8..11 at int8
 * with bf16 scales) decodes as without the limit, the others are limited. */
static void test_other_groups_unchanged(void **state) {
    (void)state;
    static float x[N], want[N];
    fill(x, 0x14);
    const kw_wire_codec_spec own = {KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0};
    const kw_wire_codec_spec other = {KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_BF16, 0};
    const kw_wire_token_group groups[3] = {{8, own, own}, {4, other, other}, {4, own, own}};
    const kw_wire_policy plain = {.k = own, .v = own, .n_groups = 3, .groups = groups};
    kw_wire_policy limited = plain;
    limited.code_limit_k = 5;
    wt_blob_out o0, o1;
    size_t n0, n1;
    uint8_t *b0 = encode(x, &plain, 0, &n0, &o0), *b1 = encode(x, &limited, 0, &n1, &o1);
    oracle(&own, 5.0f, x, want); /* per token: each row's values are the oracle's wherever the limit applies */
    for (uint32_t h = 0; h < H; ++h)
        for (uint32_t t = 0; t < T; ++t) {
            const size_t r = ((size_t)h * T + t) * D;
            const float *expect = t >= 8 && t < 12 ? o0.layers[0].k + r : want + r;
            for (uint32_t d = 0; d < D; ++d)
                if (o1.layers[0].k[r + d] != expect[d])
                    fail_msg("head %u token %u channel %u: %a, expected %a", h, t, d, o1.layers[0].k[r + d], expect[d]);
        }
    wt_blob_out_free(&o0), wt_blob_out_free(&o1);
    free(b0), free(b1);
}

/* zstd stores limited int8 codes in fewer bytes; clipping under a limit is never worse per row than the limit alone
 * (candidate 0 is the limited absmax encoding); rotated and outlier sections with a limit decode, near the input. */
static void test_composes(void **state) {
    (void)state;
    static float x[N];
    fill(x, 0x15);
    const kw_wire_codec_spec i8 = {KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0};
    const kw_wire_policy z = {.k = i8, .v = i8, .zstd_level = 19};
    kw_wire_policy zl = z;
    zl.code_limit_k = zl.code_limit_v = 8;
    size_t n0, n1;
    uint8_t *b0 = encode(x, &z, 0, &n0, NULL), *b1 = encode(x, &zl, 0, &n1, NULL);
    if (!(n1 * 10 < n0 * 6)) fail_msg("zstd: %zu bytes limited to +-8, %zu without", n1, n0);
    free(b0), free(b1);

    kw_wire_policy lim = {.k = i8, .v = i8, .code_limit_k = 4};
    kw_wire_policy clipped = lim;
    clipped.clip = 1;
    wt_blob_out o0, o1;
    b0 = encode(x, &lim, 0, &n0, &o0), b1 = encode(x, &clipped, 0, &n1, &o1);
    for (uint32_t r = 0; r < H * T; ++r) {
        double e0 = 0.0, e1 = 0.0;
        for (uint32_t d = 0; d < D; ++d) {
            const double a = (double)o0.layers[0].k[r * D + d] - x[r * D + d];
            const double b = (double)o1.layers[0].k[r * D + d] - x[r * D + d];
            e0 += a * a, e1 += b * b;
        }
        if (!(e1 <= e0)) fail_msg("row %u: clipped %g > %g", r, e1, e0);
    }
    wt_blob_out_free(&o0), wt_blob_out_free(&o1);
    free(b0), free(b1);

    const kw_wire_policy others[] = {
        {.k = i8, .v = i8, .code_limit_k = 6, .code_limit_v = 6, .rotate = 3},
        {.k = i8, .v = i8, .code_limit_k = 6, .code_limit_v = 6, .outliers = 30, .outlier_dtype = KW_WIRE_DTYPE_F32},
        {.k = i8, .v = i8, .code_limit_k = 6, .code_limit_v = 6, .rotate = 3, .clip = 3, .zstd_level = 3},
    };
    for (size_t i = 0; i < sizeof others / sizeof others[0]; ++i) {
        wt_blob_out o;
        size_t n;
        uint8_t *b = encode(x, &others[i], 0, &n, &o);
        double err = 0.0, ref = 0.0;
        for (size_t e = 0; e < N; ++e) {
            const double r = (double)o.layers[0].k[e] - x[e];
            err += r * r, ref += (double)x[e] * x[e];
        }
        if (!(err < ref * 0.05)) fail_msg("policy %zu: relative squared error %g", i, err / ref);
        wt_blob_out_free(&o);
        free(b);
    }
}

/* A row whose limited step is past what the codec's own codes allow (127 * s above bf16's largest) is refused with
 * KW_E_WIRE_RANGE; without the limit the same row encodes. */
static void test_step_out_of_range(void **state) {
    (void)state;
    static float x[N];
    fill(x, 0x16);
    x[3] = 1e38f;
    const kw_wire_header hdr = header(KW_WIRE_VERSION_1_1);
    const kw_wire_codec_spec i8 = {KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F32, 0};
    kw_wire_policy pol = {.k = i8, .v = i8};
    uint8_t *blob = NULL;
    size_t size = 0;
    assert_int_equal(wt_encode_same_kv(&hdr, x, &pol, 0, &blob, &size, NULL), 0);
    free(blob);
    blob = NULL;
    pol.code_limit_v = 2;
    assert_int_equal(wt_encode_same_kv(&hdr, x, &pol, 0, &blob, &size, NULL), KW_E_WIRE_RANGE);
    assert_null(blob);
}

/* A section whose tensors someone else writes (kw_wire_encoder_begin_section, the GPU encoder's) cannot have a code
 * limit that changes a tensor: refused; one at or above the codec's qmax changes nothing and is taken. */
static void test_begin_section(void **state) {
    (void)state;
    const kw_wire_header hdr = header(KW_WIRE_VERSION_1_1);
    const kw_wire_codec_spec i4 = {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0};
    kw_wire_policy pol = {.k = i4, .v = i4, .code_limit_v = 7};
    static uint8_t buf[1 << 16];
    size_t n = 0, off = 0;
    kw_wire_encoder *e = NULL;
    assert_int_equal(kw_wire_encoder_create(&hdr, NULL, &e), 0);
    assert_int_equal(kw_wire_encoder_write_header(e, buf, sizeof buf, &n), 0);
    assert_false(kw_wire_policy_code_limited(&pol));
    assert_int_equal(kw_wire_encoder_begin_section(e, 0, T, NULL, &pol, buf + n, sizeof buf - n, &off), 0);
    kw_wire_encoder_destroy(e);
    pol.code_limit_v = 6;
    assert_true(kw_wire_policy_code_limited(&pol));
    assert_int_equal(kw_wire_encoder_create(&hdr, NULL, &e), 0);
    assert_int_equal(kw_wire_encoder_write_header(e, buf, sizeof buf, &n), 0);
    assert_int_equal(kw_wire_encoder_begin_section(e, 0, T, NULL, &pol, buf + n, sizeof buf - n, &off),
                     KW_E_INVALID_ARG);
    kw_wire_encoder_destroy(e);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_symmetric_oracle), cmocka_unit_test(test_zero_points_and_v1),
        cmocka_unit_test(test_unchanged),        cmocka_unit_test(test_other_groups_unchanged),
        cmocka_unit_test(test_composes),         cmocka_unit_test(test_step_out_of_range),
        cmocka_unit_test(test_begin_section),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
