/* test_wire_clip.c: the encoder's clipped-scale search (kw_wire_policy.clip, docs/FORMAT.md §5.13). The blobs go
 * through the unchanged decoder; per scale unit the clipped encoding's squared error is at most the absmax one's
 * (the unclipped range is candidate 0), strictly less overall at 2-4 bits on Gaussian and heavy-tailed data; the
 * symmetric choice equals a brute-force oracle written here from the definition; every ISA writes the same bytes;
 * codecs without integer codes are unchanged; and the encoder refuses what it cannot do. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>

#include "tests/wire/wire_test_util.h"
#include "wire/kw_wire.h"

enum { H = 2, T = 16, D = 64, N = H * T * D };

static kw_wire_header header(void) {
    return wt_one_section_header(H, D, T, KW_WIRE_VERSION_1_1);
}

/* kind 0: bell-shaped (wt_bell); 1: heavy-tailed (that over the square root of a uniform in [0.02, 1.02), a
 * Student-t-like tail); 2: bell-shaped with a 30x channel and a mean offset on another (what keys look like). */
static void fill(float *x, int kind, uint64_t seed) {
    wt_rng r = {seed};
    for (size_t e = 0; e < N; ++e) {
        const float g = wt_bell(&r);
        if (kind == 0)
            x[e] = g;
        else if (kind == 1)
            x[e] = g / sqrtf((wt_uniform(&r) + 1.0f) * 0.5f + 0.02f);
        else
            x[e] = g * (e % D == 7 ? 30.0f : 1.0f) + (e % D == 9 ? 4.0f : 0.0f);
    }
}

/* Encodes K = V = x with the policy (ISA isa) and returns the blob; *o gets its decoding. */
static uint8_t *encode(const float *x, const kw_wire_policy *pol, uint8_t isa, size_t *size, wt_blob_out *o) {
    const kw_wire_header hdr = header();
    uint8_t *blob = NULL;
    if (wt_encode_same_kv(&hdr, x, pol, isa, &blob, size, o) < 0) fail_msg("encode: %s", kw_error_detail());
    return blob;
}

/* The squared error of every scale unit of decoded y against x, summed in (h, t, d) order (the encoder's). */
static void unit_errors(const kw_wire_codec_spec *sp, const float *x, const float *y, double *err, uint64_t units) {
    for (uint64_t u = 0; u < units; ++u)
        err[u] = 0.0;
    for (uint32_t h = 0; h < H; ++h)
        for (uint32_t t = 0; t < T; ++t)
            for (uint32_t d = 0; d < D; ++d) {
                const size_t e = ((size_t)h * T + t) * D + d;
                const double r = (double)x[e] - (double)y[e];
                err[kw_wire_scale_index(sp->granularity, sp->group_log2, T, D, h, t, d)] += r * r;
            }
}

/* The symmetric rule from its definition: per unit, the candidate amax * (20 - k) / 20 (k = 0: amax itself) whose
 * scale (wt_expected_scale) gives the least squared error, ties to the smaller k; the decoded values into y. Elements
 * whose bit is set in out (K's bits of an outlier mask, NULL: none) are left out and decode exactly. */
#define OUT(e) (out && ((out[(e) / 8] >> ((e) % 8)) & 1))
static void oracle_sym(const kw_wire_codec_spec *sp, const float *x, const uint8_t *out, float *y) {
    const float qmax = kw_wire_codec_qmax(sp->codec);
    const uint64_t units = kw_wire_scale_units(sp->granularity, sp->group_log2, H, T, D);
    float *amax = wt_xmalloc(units * sizeof *amax), *best_s = wt_xmalloc(units * sizeof *best_s);
    double *err = wt_xmalloc(units * sizeof *err), *best = wt_xmalloc(units * sizeof *best);
    for (uint64_t u = 0; u < units; ++u)
        amax[u] = 0.0f, best[u] = INFINITY, best_s[u] = 0.0f;
    for (uint32_t h = 0; h < H; ++h)
        for (uint32_t t = 0; t < T; ++t)
            for (uint32_t d = 0; d < D; ++d) {
                const uint64_t u = kw_wire_scale_index(sp->granularity, sp->group_log2, T, D, h, t, d);
                const size_t e = ((size_t)h * T + t) * D + d;
                amax[u] = OUT(e) ? amax[u] : fmaxf(amax[u], fabsf(x[e]));
            }
    float *s = wt_xmalloc(units * sizeof *s);
    for (int k = 0; k <= 10; ++k) {
        for (uint64_t u = 0; u < units; ++u) {
            const float m = k == 0 ? amax[u] : amax[u] * ((float)(20 - k) / 20.0f);
            if (wt_expected_scale(m, qmax, kw_wire_spec_scale(sp), &s[u]) < 0) s[u] = -1.0f;
            err[u] = 0.0;
        }
        for (uint32_t h = 0; h < H; ++h)
            for (uint32_t t = 0; t < T; ++t)
                for (uint32_t d = 0; d < D; ++d) {
                    const uint64_t u = kw_wire_scale_index(sp->granularity, sp->group_log2, T, D, h, t, d);
                    const float xv = x[((size_t)h * T + t) * D + d];
                    if (OUT(((size_t)h * T + t) * D + d)) continue;
                    const float q = s[u] > 0.0f ? nearbyintf(fminf(fmaxf(xv * (1.0f / s[u]), -qmax), qmax)) : 0.0f;
                    const double r = (double)xv - (double)(q * s[u]);
                    err[u] += r * r;
                }
        for (uint64_t u = 0; u < units; ++u)
            if (s[u] >= 0.0f && err[u] < best[u]) best[u] = err[u], best_s[u] = s[u];
    }
    for (uint32_t h = 0; h < H; ++h)
        for (uint32_t t = 0; t < T; ++t)
            for (uint32_t d = 0; d < D; ++d) {
                const size_t e = ((size_t)h * T + t) * D + d;
                const float sv = best_s[kw_wire_scale_index(sp->granularity, sp->group_log2, T, D, h, t, d)];
                y[e] = sv > 0.0f ? nearbyintf(fminf(fmaxf(x[e] * (1.0f / sv), -qmax), qmax)) * sv : 0.0f;
                y[e] = OUT(e) ? x[e] : y[e];
            }
    free(amax), free(best_s), free(err), free(best), free(s);
}
#undef OUT

typedef struct clip_case {
    uint8_t codec, gran, scale, group_log2;
    int asym;
} clip_case;

static const clip_case cases[] = {
    {KW_WIRE_CODEC_INT2, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0, 0},
    {KW_WIRE_CODEC_INT3, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_LOG8, 0, 0},
    {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_E8M0, 0, 0},
    {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_F16, 4, 0},
    {KW_WIRE_CODEC_INT3, KW_WIRE_GRAN_CHANNEL, KW_WIRE_SCALE_LOG8, 3, 0},
    {KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_HEAD, KW_WIRE_SCALE_BF16, 0, 0},
    {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_LAYER, KW_WIRE_SCALE_F32, 0, 0},
    {KW_WIRE_CODEC_INT2, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0, 1},
    {KW_WIRE_CODEC_INT3, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_BF16, 5, 1},
    {KW_WIRE_CODEC_INT2, KW_WIRE_GRAN_CHANNEL, KW_WIRE_SCALE_F16, 4, 1},
    {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_HEAD, KW_WIRE_SCALE_F32, 0, 1},
    {KW_WIRE_CODEC_INT3, KW_WIRE_GRAN_LAYER, KW_WIRE_SCALE_F16, 0, 1},
};

static kw_wire_codec_spec spec_of(const clip_case *c) {
    return (kw_wire_codec_spec){c->codec, c->gran, (uint8_t)(c->scale | (c->asym ? KW_WIRE_SCALE_ZERO_POINTS : 0)),
                                c->group_log2};
}

/* Per unit the clipped error is at most the absmax one, overall strictly less at <= 4 bits without an outlier
 * channel; the symmetric codes are
 * the oracle's; scalar, AVX2 and AVX-512 write the same bytes, twice. */
static void test_never_worse(void **state) {
    (void)state;
    static float x[N], want[N];
    for (int kind = 0; kind < 3; ++kind) {
        fill(x, kind, 0xc11 + (uint64_t)kind);
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
            const kw_wire_codec_spec sp = spec_of(&cases[i]);
            const uint64_t units = kw_wire_scale_units(sp.granularity, sp.group_log2, H, T, D);
            double *e0 = wt_xmalloc(units * sizeof *e0), *e1 = wt_xmalloc(units * sizeof *e1);
            const kw_wire_policy plain = {.k = sp, .v = sp}, clipped = {.k = sp, .v = sp, .clip = 1};
            wt_blob_out o0, o1;
            size_t n0, n1;
            uint8_t *b0 = encode(x, &plain, KW_WIRE_ISA_SCALAR, &n0, &o0);
            uint8_t *b1 = encode(x, &clipped, KW_WIRE_ISA_SCALAR, &n1, &o1);
            assert_int_equal(n0, n1); /* the same format: only scales and codes differ */
            unit_errors(&sp, x, o0.layers[0].k, e0, units);
            unit_errors(&sp, x, o1.layers[0].k, e1, units);
            double s0 = 0.0, s1 = 0.0;
            for (uint64_t u = 0; u < units; ++u) {
                if (!(e1[u] <= e0[u]))
                    fail_msg("case %zu kind %d unit %llu: %g > %g", i, kind, (unsigned long long)u, e1[u], e0[u]);
                s0 += e0[u], s1 += e1[u];
            }
            /* (with a 30x channel in the unit, kind 2, at layer or head granularity the absmax range may be best) */
            if (kind < 2 && kw_wire_codec_bits(sp.codec) <= 4 && !(s1 < s0))
                fail_msg("case %zu kind %d: clipping gained nothing (%g vs %g)", i, kind, s1, s0);
            /* V was not clipped: it must be the absmax encoding */
            assert_memory_equal(o1.layers[0].v, o0.layers[0].v, sizeof x);
            if (!cases[i].asym) {
                oracle_sym(&sp, x, NULL, want);
                for (size_t e = 0; e < N; ++e)
                    if (o1.layers[0].k[e] != want[e])
                        fail_msg("case %zu kind %d element %zu: %a, oracle %a", i, kind, e, o1.layers[0].k[e], want[e]);
            }
            const kw_wire_header hdr = header();
            assert_true(wt_same_on_every_isa(&hdr, x, &clipped, b1, n1));
            wt_blob_out_free(&o0), wt_blob_out_free(&o1);
            free(b0), free(b1), free(e0), free(e1);
        }
    }
}

/* With outliers (left out of the search and sent exact) and with the Hadamard rotation (the search runs on the
 * rotated rows) the clipped blob decodes, and at 2-3 bits on Gaussian data it loses less than the absmax one. */
static void test_with_outliers_and_rotation(void **state) {
    (void)state;
    static float x[N];
    fill(x, 2, 0x0c1);
    const kw_wire_codec_spec i3 = {KW_WIRE_CODEC_INT3, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0};
    const kw_wire_codec_spec i2a = {KW_WIRE_CODEC_INT2, KW_WIRE_GRAN_TOKEN,
                                    KW_WIRE_SCALE_F16 | KW_WIRE_SCALE_ZERO_POINTS, 0};
    const kw_wire_policy pols[] = {
        {.k = i3, .v = i2a, .outliers = 40, .outlier_dtype = KW_WIRE_DTYPE_F32},
        {.k = i3, .v = i2a, .rotate = 3},
        {.k = i3, .v = i2a, .rotate = 3, .outliers = 40, .outlier_dtype = KW_WIRE_DTYPE_F32},
    };
    for (size_t i = 0; i < sizeof pols / sizeof pols[0]; ++i) {
        kw_wire_policy clipped = pols[i];
        clipped.clip = 3;
        wt_blob_out o0, o1;
        size_t n0, n1;
        uint8_t *b0 = encode(x, &pols[i], 0, &n0, &o0), *b1 = encode(x, &clipped, 0, &n1, &o1);
        assert_int_equal(n0, n1);
        double e0[2] = {0, 0}, e1[2] = {0, 0};
        for (size_t e = 0; e < N; ++e) {
            const double a = (double)o0.layers[0].k[e] - x[e], b = (double)o1.layers[0].k[e] - x[e];
            const double c = (double)o0.layers[0].v[e] - x[e], d = (double)o1.layers[0].v[e] - x[e];
            e0[0] += a * a, e1[0] += b * b, e0[1] += c * c, e1[1] += d * d;
        }
        for (int kv = 0; kv < 2; ++kv)
            if (!(e1[kv] < e0[kv])) fail_msg("policy %zu %s: %g vs %g", i, kv ? "V" : "K", e1[kv], e0[kv]);
        wt_blob_out_free(&o0), wt_blob_out_free(&o1);
        free(b0), free(b1);
    }
}

/* The search leaves the outliers out (they are sent exact): the clipped symmetric codes with outliers are the oracle's
 * on the remaining values, for every granularity of the symmetric cases. */
static void test_outliers_left_out(void **state) {
    (void)state;
    static float x[N], want[N];
    static uint8_t mask[2 * N / 8];
    fill(x, 1, 0x0d7);
    const kw_wire_header hdr = header();
    kw_wire_layer_in in = {.layer = 0, .n_tokens = T};
    in.k = (kw_wire_tensor_in){x, (size_t)T * D, D, NULL};
    in.v = in.k;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
        if (cases[i].asym) continue;
        const kw_wire_codec_spec sp = spec_of(&cases[i]);
        const kw_wire_policy pol = {.k = sp, .v = sp, .outliers = 60, .outlier_dtype = KW_WIRE_DTYPE_F32, .clip = 1};
        uint32_t n = 0;
        assert_int_equal(kw_wire_outlier_select(&hdr, &in, &pol, pol.outliers, mask, &n), 0);
        assert_int_equal(n, 60);
        wt_blob_out o;
        size_t size;
        uint8_t *blob = encode(x, &pol, 0, &size, &o);
        oracle_sym(&sp, x, mask, want); /* K's bits are the mask's first N */
        for (size_t e = 0; e < N; ++e)
            if (o.layers[0].k[e] != want[e])
                fail_msg("case %zu element %zu: %a, oracle %a", i, e, o.layers[0].k[e], want[e]);
        wt_blob_out_free(&o);
        free(blob);
    }
}

/* Codecs without integer codes (nf4, fp8) and passthrough ignore the option: the same bytes. */
static void test_other_codecs_unchanged(void **state) {
    (void)state;
    static float x[N];
    fill(x, 0, 0xfe);
    const kw_wire_codec_spec specs[] = {
        {KW_WIRE_CODEC_NF4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0},
        {KW_WIRE_CODEC_E4M3, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_E8M0, 5},
        {KW_WIRE_CODEC_BF16, KW_WIRE_GRAN_NONE, KW_WIRE_SCALE_NONE, 0},
    };
    for (size_t i = 0; i < sizeof specs / sizeof specs[0]; ++i) {
        const kw_wire_policy plain = {.k = specs[i], .v = specs[i]},
                             clipped = {.k = specs[i], .v = specs[i], .clip = 3};
        const kw_wire_header hdr = header();
        assert_true(wt_same_blob(&hdr, x, &plain, &clipped));
    }
}

/* clip takes bits 0 and 1 only; a section whose tensors someone else writes (the GPU encoder's, which clips them
 * itself) takes the flag, which changes no framing byte. */
static void test_refusals(void **state) {
    (void)state;
    static float x[N];
    fill(x, 0, 1);
    const kw_wire_header hdr = header();
    const kw_wire_codec_spec i4 = {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0};
    kw_wire_policy pol = {.k = i4, .v = i4, .clip = 4};
    kw_wire_layer_in in = {.layer = 0, .n_tokens = T};
    in.k = (kw_wire_tensor_in){x, (size_t)T * D, D, NULL};
    in.v = in.k;
    uint8_t *blob = NULL;
    size_t size = 0;
    assert_int_equal(wt_encode_blob(&hdr, &in, &pol, 1, 0, &blob, &size), KW_E_INVALID_ARG);
    pol.clip = 2;
    kw_wire_encoder *e = NULL;
    static uint8_t buf[1 << 16];
    size_t n = 0, off = 0;
    assert_int_equal(kw_wire_encoder_create(&hdr, NULL, &e), 0);
    assert_int_equal(kw_wire_encoder_write_header(e, buf, sizeof buf, &n), 0);
    assert_int_equal(kw_wire_encoder_begin_section(e, 0, T, NULL, &pol, buf + n, sizeof buf - n, &off), 0);
    kw_wire_encoder_destroy(e);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_never_worse),       cmocka_unit_test(test_with_outliers_and_rotation),
        cmocka_unit_test(test_outliers_left_out), cmocka_unit_test(test_other_codecs_unchanged),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
