/* test_wire_rotate.c: the v1.1 Hadamard rotation of K and V (docs/FORMAT.md §5.12): the transform against its
 * definition (a matrix product in double), its sign formula and exact inverse on representable inputs, then blobs: a
 * rotated section decodes to exactly what the oracle gives (the same codec on inputs rotated by hand, decoded without
 * the flag, rotated back), the bf16 output is the f32 one rounded, the rotation composes with outliers and token
 * groups, lowers the error on an outlier channel, and the encoder refuses what the format forbids. The decoder's
 * rejections are must-reject golden blobs (tests/golden/wire-errors/v11r_*, section_flags_rotated). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>

#include "common/kw_half.h"
#include "tests/wire/wire_mutate.h"
#include "tests/wire/wire_test_util.h"
#include "wire/kw_wire.h"

/* y = 2^-floor(m/2) H diag(s) x in double, H[i][j] = (-1)^popcount(i & j): the definition the butterflies compute. */
static void rotate_reference(const float *x, uint32_t D, double *y) {
    const int m = kw_wire_rotate_log2(D);
    for (uint32_t i = 0; i < D; ++i) {
        double acc = 0.0;
        for (uint32_t j = 0; j < D; ++j)
            acc += (__builtin_popcount(i & j) & 1 ? -1.0 : 1.0) * kw_wire_rotate_sign(j) * (double)x[j];
        y[i] = ldexp(acc, -(m / 2));
    }
}

static void test_transform(void **state) {
    (void)state;
    /* s_i = -1 where bit 31 of i * 0x9E3779B1 (mod 2^32) is set */
    static const int signs[8] = {1, -1, 1, -1, 1, 1, -1, 1};
    for (uint32_t i = 0; i < 8; ++i)
        assert_int_equal(kw_wire_rotate_sign(i), signs[i]);
    assert_int_equal(kw_wire_rotate_log2(64), 6);
    assert_int_equal(kw_wire_rotate_log2(256), 8);
    assert_int_equal(kw_wire_rotate_log2(24), -1);
    assert_int_equal(kw_wire_rotate_log2(1), -1);
    wt_rng r = {0x407a7e};
    static const uint32_t dims[] = {8, 16, 64, 128, 256};
    for (size_t k = 0; k < sizeof dims / sizeof dims[0]; ++k) {
        const uint32_t D = dims[k];
        float x[256] = {0}, y[256], z[256];
        double ref[256];
        for (uint32_t d = 0; d < D; ++d) /* small integers: every sum is exact in f32, so y equals ref exactly */
            x[d] = (float)((int)wt_below(&r, 64) - 32);
        memcpy(y, x, sizeof x);
        assert_int_equal(kw_wire_rotate_rows(y, 1, D, D, 0), 0);
        rotate_reference(x, D, ref);
        for (uint32_t d = 0; d < D; ++d)
            assert_true((double)y[d] == ref[d]);
        memcpy(z, y, sizeof y); /* and the inverse gives x back exactly (a zero may come back as -0) */
        assert_int_equal(kw_wire_rotate_rows(z, 1, D, D, 1), 0);
        for (uint32_t d = 0; d < D; ++d)
            assert_true(z[d] == x[d]);
        for (uint32_t d = 0; d < D; ++d) /* general values: within f32 rounding of the definition */
            x[d] = wt_bell(&r) * 3.0f;
        memcpy(y, x, sizeof x);
        assert_int_equal(kw_wire_rotate_rows(y, 1, D, D, 0), 0);
        rotate_reference(x, D, ref);
        for (uint32_t d = 0; d < D; ++d)
            assert_true(fabs((double)y[d] - ref[d]) <= 1e-5 * (1.0 + fabs(ref[d])));
        assert_int_equal(kw_wire_rotate_rows(y, 1, D, D, 1), 0);
        for (uint32_t d = 0; d < D; ++d)
            assert_true(fabsf(y[d] - x[d]) <= 1e-5f * (1.0f + fabsf(x[d])));
    }
    float row[24] = {0};
    assert_int_equal(kw_wire_rotate_rows(row, 1, 24, 24, 0), KW_E_INVALID_ARG);
    assert_int_equal(kw_wire_rotate_rows(row, 2, 4, 8, 0), KW_E_INVALID_ARG);
}

enum { H = 2, T = 12, D = 32, N = H * T * D };

static kw_wire_header header(uint16_t src_dtype) {
    return (kw_wire_header){.n_layers = 2,
                            .n_sections = 1,
                            .n_kv_heads = H,
                            .head_dim = D,
                            .n_positions = T,
                            .src_dtype = src_dtype,
                            .version = KW_WIRE_VERSION_1_1};
}

/* K and V (H, T, D) f32 with an outlier channel in each: channel 5 of K 20x, channel 11 of V 8x. */
static void fill(float *k, float *v, uint64_t seed) {
    wt_rng r = {seed};
    for (size_t e = 0; e < N; ++e) {
        k[e] = wt_bell(&r) * (e % D == 5 ? 20.0f : 1.0f);
        v[e] = wt_bell(&r) * (e % D == 11 ? 8.0f : 1.0f);
    }
}

/* Encodes one section of (H, T, D) f32 K and V and decodes it (f32 and bf16 outputs); returns the status. */
static int roundtrip(const kw_wire_header *hdr, const void *k, const void *v, const kw_wire_policy *pol,
                     wt_blob_out *o) {
    kw_wire_layer_in in = {.layer = 1, .n_tokens = T};
    in.k = (kw_wire_tensor_in){k, (size_t)T * D, D, NULL};
    in.v = (kw_wire_tensor_in){v, (size_t)T * D, D, NULL};
    uint8_t *blob = NULL;
    size_t size = 0;
    int rc = wt_encode_blob(hdr, &in, pol, 1, 0, &blob, &size);
    if (rc == 0) rc = wt_decode_oneshot(blob, size, NULL, o);
    free(blob);
    return rc;
}

/* The oracle: rotates the tensors pol->rotate names by hand, sends them without the flag, rotates the f32 output
 * back. A rotated blob must decode to exactly these bits. */
static void check_oracle(const kw_wire_policy *pol, uint64_t seed) {
    static float k[N], v[N], kr[N], vr[N];
    fill(k, v, seed);
    memcpy(kr, k, sizeof k);
    memcpy(vr, v, sizeof v);
    if (pol->rotate & 1) assert_int_equal(kw_wire_rotate_rows(kr, (size_t)H * T, D, D, 0), 0);
    if (pol->rotate & 2) assert_int_equal(kw_wire_rotate_rows(vr, (size_t)H * T, D, D, 0), 0);
    const kw_wire_header hdr = header(KW_WIRE_DTYPE_F32);
    kw_wire_policy plain = *pol;
    plain.rotate = 0;
    wt_blob_out got, want;
    assert_int_equal(roundtrip(&hdr, k, v, pol, &got), 0);
    assert_int_equal(roundtrip(&hdr, kr, vr, &plain, &want), 0);
    float *w[2] = {want.layers[0].k, want.layers[0].v}, *g[2] = {got.layers[0].k, got.layers[0].v};
    uint16_t *gb[2] = {got.layers[0].kb, got.layers[0].vb};
    for (int kv = 0; kv < 2; ++kv) {
        if (pol->rotate & (1 << kv)) assert_int_equal(kw_wire_rotate_rows(w[kv], (size_t)H * T, D, D, 1), 0);
        assert_memory_equal(g[kv], w[kv], sizeof k);
        for (size_t e = 0; e < N; ++e) /* bf16 output: the f32 output rounded */
            assert_int_equal(gb[kv][e], kw_f32_to_bf16(w[kv][e]));
    }
    wt_blob_out_free(&got);
    wt_blob_out_free(&want);
}

static void test_oracle(void **state) {
    (void)state;
    const kw_wire_codec_spec i4 = {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0};
    const kw_wire_codec_spec i2a = {KW_WIRE_CODEC_INT2, KW_WIRE_GRAN_GROUP,
                                    KW_WIRE_SCALE_F16 | KW_WIRE_SCALE_ZERO_POINTS, 3};
    const kw_wire_codec_spec i3c = {KW_WIRE_CODEC_INT3, KW_WIRE_GRAN_CHANNEL,
                                    KW_WIRE_SCALE_BF16 | KW_WIRE_SCALE_ZERO_POINTS, 2};
    const kw_wire_codec_spec bf = {KW_WIRE_CODEC_BF16, 0, 0, 0};
    const kw_wire_token_group groups[2] = {{5, i3c, i4}, {7, i4, i2a}};
    const kw_wire_policy pols[] = {
        {.k = i4, .v = i4, .rotate = 3},
        {.k = i4, .v = i2a, .rotate = 1},
        {.k = i3c, .v = i4, .rotate = 2, .pre_rope = 1},
        {.k = i4, .v = bf, .rotate = 1}, /* V passthrough, not rotated */
        {.k = i4, .v = i2a, .rotate = 3, .outliers = 9, .outlier_dtype = KW_WIRE_DTYPE_F32},
        {.n_groups = 2, .groups = groups, .rotate = 3, .zstd_level = 3},
    };
    for (size_t i = 0; i < sizeof pols / sizeof pols[0]; ++i)
        check_oracle(&pols[i], 0x0a0 + i);
}

/* The oracle at a larger shape, f32 or bf16 source: (h, t, d) K and V rotated by hand (a bf16 source widened, rotated
 * in f32 and rounded back, as the encoder does), sent without the flag, decoded and rotated back. With d = 256 the
 * encoder's blocks of rows rotated on the fly hold 16 (f32) or 32 (bf16) rows and the decoder's row at a time path
 * runs without a scratch copy, so t = 45 takes several blocks and a short last one. */
static void check_oracle_at(const kw_wire_policy *pol, uint32_t h, uint32_t t, uint32_t d, uint8_t dtype,
                            uint64_t seed) {
    const size_t n = (size_t)h * t * d, es = dtype == KW_WIRE_DTYPE_F32 ? 4 : 2;
    float *x[2], *xr[2];
    uint8_t *in[2], *inr[2];
    wt_rng r = {seed};
    for (int kv = 0; kv < 2; ++kv) {
        x[kv] = wt_xmalloc(n * 4), xr[kv] = wt_xmalloc(n * 4);
        in[kv] = wt_xmalloc(n * es), inr[kv] = wt_xmalloc(n * es);
        for (size_t e = 0; e < n; ++e) { /* an outlier channel, as in fill() */
            x[kv][e] = wt_bell(&r) * (e % d == (kv ? 11u : 5u) ? 16.0f : 1.0f);
            if (dtype == KW_WIRE_DTYPE_BF16) x[kv][e] = kw_bf16_to_f32(kw_f32_to_bf16(x[kv][e]));
        }
        memcpy(xr[kv], x[kv], n * 4);
        if ((pol->rotate >> kv) & 1) assert_int_equal(kw_wire_rotate_rows(xr[kv], (size_t)h * t, d, d, 0), 0);
        for (size_t e = 0; e < n; ++e) {
            if (dtype == KW_WIRE_DTYPE_F32) {
                memcpy(in[kv] + 4 * e, &x[kv][e], 4);
                memcpy(inr[kv] + 4 * e, &xr[kv][e], 4);
            } else {
                const uint16_t a = kw_f32_to_bf16(x[kv][e]), b = kw_f32_to_bf16(xr[kv][e]);
                memcpy(in[kv] + 2 * e, &a, 2);
                memcpy(inr[kv] + 2 * e, &b, 2);
            }
        }
    }
    kw_wire_header hdr = header(dtype);
    hdr.n_kv_heads = (uint16_t)h, hdr.head_dim = (uint16_t)d, hdr.n_positions = t;
    kw_wire_policy plain = *pol;
    plain.rotate = 0;
    wt_blob_out got, want;
    for (int side = 0; side < 2; ++side) {
        kw_wire_layer_in li = {.layer = 1, .n_tokens = t};
        li.k = (kw_wire_tensor_in){side ? inr[0] : in[0], (size_t)t * d, d, NULL};
        li.v = (kw_wire_tensor_in){side ? inr[1] : in[1], (size_t)t * d, d, NULL};
        uint8_t *blob = NULL;
        size_t size = 0;
        assert_int_equal(wt_encode_blob(&hdr, &li, side ? &plain : pol, 1, 0, &blob, &size), 0);
        assert_int_equal(wt_decode_oneshot(blob, size, NULL, side ? &want : &got), 0);
        free(blob);
    }
    float *w[2] = {want.layers[0].k, want.layers[0].v}, *g[2] = {got.layers[0].k, got.layers[0].v};
    uint16_t *gb[2] = {got.layers[0].kb, got.layers[0].vb};
    for (int kv = 0; kv < 2; ++kv) {
        if ((pol->rotate >> kv) & 1) assert_int_equal(kw_wire_rotate_rows(w[kv], (size_t)h * t, d, d, 1), 0);
        for (size_t e = 0; e < n; ++e)
            if (kw_f32_bits(g[kv][e]) != kw_f32_bits(w[kv][e]) || gb[kv][e] != kw_f32_to_bf16(w[kv][e]))
                fail_msg("%s %s/%s rotate %u dtype %u: %c element %zu: %a (bf16 0x%04x), oracle %a",
                         kw_wire_codec_name((kv ? pol->v : pol->k).codec), kw_wire_gran_name(pol->k.granularity),
                         kw_wire_gran_name(pol->v.granularity), pol->rotate, dtype, kv ? 'V' : 'K', e, (double)g[kv][e],
                         gb[kv][e], (double)w[kv][e]);
        free(x[kv]), free(xr[kv]), free(in[kv]), free(inr[kv]);
    }
    wt_blob_out_free(&got);
    wt_blob_out_free(&want);
}

static void test_oracle_blocks(void **state) {
    (void)state;
#define S(c, g, s, l)                                                                                                  \
    (kw_wire_codec_spec) {                                                                                             \
        KW_WIRE_CODEC_##c, KW_WIRE_GRAN_##g, KW_WIRE_SCALE_##s, l                                                      \
    }
    const kw_wire_codec_spec i8 = S(INT8, TOKEN, F16, 0), i4g = S(INT4, GROUP, F16, 5), nf4 = S(NF4, GROUP, F16, 6);
    const kw_wire_codec_spec e4 = S(E4M3, TOKEN, F16, 0), i6 = S(INT6, TOKEN, BF16, 0), i4l = S(INT4, TOKEN, LOG8, 0);
    const kw_wire_codec_spec i3 = S(INT3, TOKEN, F16, 0), i8h = S(INT8, HEAD, F32, 0), e5g = S(E5M2, GROUP, F16, 4);
#undef S
    const kw_wire_token_group groups[3] = {{7, i8, i4g}, {33, i4l, nf4}, {5, e4, i6}};
    const kw_wire_policy pols[] = {
        {.k = i8, .v = i4g, .rotate = 3},
        {.k = nf4, .v = e4, .rotate = 3},
        {.k = i6, .v = i4l, .rotate = 3},
        {.k = i3, .v = e5g, .rotate = 3},
        {.k = i8h, .v = i8, .rotate = 3},            /* K per head: the rotated copy; V on the fly */
        {.k = i4g, .v = i8, .rotate = 3, .clip = 2}, /* V clipped: the copy */
        {.k = i8, .v = i4g, .rotate = 1},
        {.n_groups = 3, .groups = groups, .rotate = 3},
    };
    for (size_t i = 0; i < sizeof pols / sizeof pols[0]; ++i)
        for (uint8_t dtype = KW_WIRE_DTYPE_BF16; dtype <= KW_WIRE_DTYPE_F32; dtype += 2)
            check_oracle_at(&pols[i], 3, 45, 256, dtype, 0x0b0 + i);
    check_oracle_at(&pols[0], 2, 70, 64, KW_WIRE_DTYPE_BF16, 0x0c0); /* blocks of 64 rows and a tail of 6 */
}

/* A bf16 source: the encoder rounds the rotated values to bf16 (RNE) before quantizing them. */
static void test_bf16_source(void **state) {
    (void)state;
    static float k[N], v[N], kr[N], vr[N];
    static uint16_t kb[N], vb[N], krb[N], vrb[N];
    fill(k, v, 0xb16);
    for (size_t e = 0; e < N; ++e) {
        kb[e] = kw_f32_to_bf16(k[e]), vb[e] = kw_f32_to_bf16(v[e]);
        kr[e] = kw_bf16_to_f32(kb[e]), vr[e] = kw_bf16_to_f32(vb[e]);
    }
    assert_int_equal(kw_wire_rotate_rows(kr, (size_t)H * T, D, D, 0), 0);
    assert_int_equal(kw_wire_rotate_rows(vr, (size_t)H * T, D, D, 0), 0);
    for (size_t e = 0; e < N; ++e)
        krb[e] = kw_f32_to_bf16(kr[e]), vrb[e] = kw_f32_to_bf16(vr[e]);
    const kw_wire_header hdr = header(KW_WIRE_DTYPE_BF16);
    const kw_wire_codec_spec i8 = {KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F32, 0};
    const kw_wire_policy rot = {.k = i8, .v = i8, .rotate = 3}, plain = {.k = i8, .v = i8};
    wt_blob_out got, want;
    assert_int_equal(roundtrip(&hdr, kb, vb, &rot, &got), 0);
    assert_int_equal(roundtrip(&hdr, krb, vrb, &plain, &want), 0);
    assert_int_equal(kw_wire_rotate_rows(want.layers[0].k, (size_t)H * T, D, D, 1), 0);
    assert_int_equal(kw_wire_rotate_rows(want.layers[0].v, (size_t)H * T, D, D, 1), 0);
    assert_memory_equal(got.layers[0].k, want.layers[0].k, sizeof k);
    assert_memory_equal(got.layers[0].v, want.layers[0].v, sizeof v);
    wt_blob_out_free(&got);
    wt_blob_out_free(&want);
}

/* What the rotation is for: int4 per token on an outlier channel loses much less, at the same size. */
static void test_error_drops(void **state) {
    (void)state;
    static float k[N], v[N];
    fill(k, v, 0xe77);
    const kw_wire_header hdr = header(KW_WIRE_DTYPE_F32);
    const kw_wire_codec_spec i4 = {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0};
    double err[2] = {0, 0}, norm = 0;
    for (int rot = 0; rot < 2; ++rot) {
        const kw_wire_policy pol = {.k = i4, .v = i4, .rotate = (uint8_t)(rot ? 3 : 0)};
        wt_blob_out o;
        assert_int_equal(roundtrip(&hdr, k, v, &pol, &o), 0);
        for (size_t e = 0; e < N; ++e) {
            const double d = (double)o.layers[0].k[e] - k[e];
            err[rot] += d * d;
            if (!rot) norm += (double)k[e] * k[e];
        }
        wt_blob_out_free(&o);
    }
    assert_true(err[1] < 0.5 * err[0]);
    assert_true(err[1] < 1e-2 * norm);
}

static void test_refusals(void **state) {
    (void)state;
    static float k[N], v[N];
    fill(k, v, 0x4ef);
    kw_wire_header hdr = header(KW_WIRE_DTYPE_F32);
    const kw_wire_codec_spec i4 = {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0};
    const kw_wire_codec_spec bf = {KW_WIRE_CODEC_BF16, 0, 0, 0};
    wt_blob_out o;
    kw_wire_policy pol = {.k = i4, .v = i4, .rotate = 4};
    assert_int_equal(roundtrip(&hdr, k, v, &pol, &o), KW_E_INVALID_ARG); /* no bit 2 */
    pol = (kw_wire_policy){.k = i4, .v = bf, .rotate = 2};
    assert_int_equal(roundtrip(&hdr, k, v, &pol, &o), KW_E_INVALID_ARG); /* passthrough V rotated */
    pol = (kw_wire_policy){.k = i4, .v = i4, .rotate = 1};
    hdr.version = KW_WIRE_VERSION;
    assert_int_equal(roundtrip(&hdr, k, v, &pol, &o), KW_E_INVALID_ARG); /* v1 */
    assert_true(kw_wire_policy_needs_v11(&pol));
    /* head_dim 24: no power of two */
    hdr = header(KW_WIRE_DTYPE_F32);
    hdr.head_dim = 24;
    kw_wire_encoder *e = NULL;
    assert_int_equal(kw_wire_encoder_create(&hdr, NULL, &e), 0);
    uint8_t buf[8192];
    size_t n = 0;
    assert_int_equal(kw_wire_encoder_write_header(e, buf, sizeof buf, &n), 0);
    kw_wire_layer_in in = {.layer = 0, .n_tokens = 2};
    in.k = (kw_wire_tensor_in){k, 24, 24, NULL};
    in.v = (kw_wire_tensor_in){v, 24, 24, NULL};
    size_t w = 0;
    assert_int_equal(kw_wire_encoder_write_section(e, &in, &pol, buf + n, sizeof buf - n, &w), KW_E_INVALID_ARG);
    /* nor a section whose tensors someone else writes (the GPU encoder) */
    size_t off = 0;
    assert_int_equal(kw_wire_encoder_begin_section(e, 0, 2, NULL, &pol, buf + n, sizeof buf - n, &off),
                     KW_E_INVALID_ARG);
    kw_wire_encoder_destroy(e);
}

/* Valid codes and scales can still decode past the largest bf16 once rotated back (the inverse adds up D values):
 * K's int8 codes all 127 under scales of M / 127 decode to y = M in every channel, whose butterflies sum to 16 M at
 * D = 16 before the factor 2^-2. M = 1e38 overflows f32 there (FORMAT.md §5.12's arithmetic: the result is not finite)
 * and is refused with KW_E_WIRE_VALUE for f32 output and for bf16 output on its own, on the row path and the general
 * path (an outlier table), on every ISA; M = 2e37 (x_0 = 8e37, 7.5e37 with the outlier) decodes. Found by the fuzzer
 * (2026-12-07). */
static void test_rotated_past_bf16(void **state) {
    (void)state;
    enum { OH = 1, OD = 16, OT = 2 };
    float x[OH * OT * OD];
    wt_rng r = {0x0ff};
    for (size_t i = 0; i < sizeof x / sizeof x[0]; ++i)
        x[i] = wt_bell(&r);
    const kw_wire_header hdr = wt_one_section_header(OH, OD, OT, KW_WIRE_VERSION_1_1);
    const kw_wire_codec_spec q8 = {KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F32, 0};
    for (int outliers = 0; outliers < 2; ++outliers)
        for (int big = 0; big < 2; ++big) {
            const kw_wire_policy pol = {.k = q8, .v = q8, .rotate = 3, .outliers = (uint32_t)outliers};
            uint8_t *blob = NULL;
            size_t size = 0;
            assert_int_equal(wt_encode_same_kv(&hdr, x, &pol, 0, &blob, &size, NULL), 0);
            wm_blob b = {.data = blob, .size = size, .n = 1, .sec = {KW_WIRE_HEADER_BYTES}};
            b.body[0] = KW_WIRE_HEADER_BYTES + KW_WIRE_SECTION_HEAD_BYTES + KW_WIRE_GROUP_DESC_BYTES;
            b.trailer = size - KW_WIRE_TRAILER_BYTES;
            kw_wire_reader *rd = NULL;
            const kw_wire_header *h = NULL;
            const kw_wire_section *sec = NULL;
            assert_int_equal(kw_wire_reader_open(blob, size, NULL, &rd, &h), 0);
            assert_true(kw_wire_reader_next(rd, &sec) > 0);
            const size_t scales = (size_t)(sec->groups[0].k.scales - blob),
                         codes = (size_t)(sec->groups[0].k.codes - blob);
            kw_wire_reader_close(rd);
            const float s = (big ? 1e38f : 2e37f) / 127.0f;
            for (uint32_t t = 0; t < OH * OT; ++t)
                memcpy(blob + scales + 4 * t, &s, 4);
            memset(blob + codes, 127, (size_t)OH * OT * OD);
            wm_seal_all(&b, blob, size);
            static const uint8_t isas[] = {KW_WIRE_ISA_SCALAR, KW_WIRE_ISA_AVX2, KW_WIRE_ISA_AVX512};
            for (size_t j = 0; j < sizeof isas; ++j) {
                const kw_wire_decoder_options opt = {.isa = isas[j]};
                wt_blob_out o = {0};
                const int rc = wt_decode_oneshot(blob, size, &opt, &o);
                if (rc != (big ? KW_E_WIRE_VALUE : 0))
                    fail_msg("outliers %d, M %s, isa %u: %s (%s)", outliers, big ? "1e38" : "2e37", isas[j],
                             kw_status_name(rc), kw_error_detail());
                if (!big) assert_true(fabsf(o.layers[0].k[0]) > 7e37f && fabsf(o.layers[0].k[0]) < 8.1e37f);
                wt_blob_out_free(&o);
                /* bf16 output on its own (the decode above stops at the f32 output's refusal) */
                kw_wire_reader *rb = NULL;
                const kw_wire_header *hb = NULL;
                const kw_wire_section *sb = NULL;
                assert_int_equal(kw_wire_reader_open(blob, size, &opt, &rb, &hb), 0);
                assert_true(kw_wire_reader_next(rb, &sb) > 0);
                uint16_t kb[OT * OH * OD];
                const kw_wire_tensor_out ko = {kb, KW_WIRE_DTYPE_BF16, OD, (size_t)OH * OD};
                const int rcb = kw_wire_section_dequantize(sb, &ko, NULL);
                kw_wire_reader_close(rb);
                if (rcb != (big ? KW_E_WIRE_VALUE : 0))
                    fail_msg("bf16 output, outliers %d, M %s, isa %u: %s", outliers, big ? "1e38" : "2e37", isas[j],
                             kw_status_name(rcb));
            }
            free(blob);
        }
}

/* The encoder's side of the same limit: in a rotated tensor no scale unit (and no outlier) may hold a value past
 * kw_wire_rotated_max(D) = BF16_MAX / (4 D) (FORMAT.md §5.12), which keeps every blob it writes decodable. Rows are
 * made in the rotated domain (every channel of one row A, whose inverse adds them all up: a row (4 A, 0, ...) the
 * encoder's forward rotation turns back into A everywhere; the other rows small): A = 2^123 (past 0x1.FEp121 at D = 16)
 * is KW_E_WIRE_RANGE on every path (token and group rows rotated block by block; head and layer scales; zero points;
 * channel runs; clipped scales, also per layer; an outlier) and every ISA; A at the limit itself and A just above 2^121
 * (where an e8m0 scale rounds up almost 2x: int2 decodes 2^122) encode and decode. A NaN in an earlier row than the
 * large one is still KW_E_WIRE_NONFINITE; in a later row the large one is reported first. Outliers past the limit are
 * refused by the table's own check (the scale unit keeping only small values); a finite row whose rotation overflows
 * f32 is KW_E_WIRE_NONFINITE with the tensor named rotated. */
enum { RD = 16, RT = 4 }; /* the rows of test_encoder_rotated_range */

static void rotated_rows(float A, int big_row, int nan_row, float *x) {
    wt_rng r = {0x5ca1e};
    for (int t = 0; t < RT; ++t) {
        for (int d = 0; d < RD; ++d)
            x[t * RD + d] = t == big_row ? A : wt_bell(&r);
    }
    assert_int_equal(kw_wire_rotate_rows(x, RT, RD, RD, 1), 0);
    if (nan_row >= 0) x[nan_row * RD + 3] = NAN;
}

static void test_encoder_rotated_range(void **state) {
    (void)state;
    const kw_wire_header hdr = wt_one_section_header(1, RD, RT, KW_WIRE_VERSION_1_1);
    const float rmax = kw_wire_rotated_max(RD);
    assert_true(rmax == 0x1.FEp121f);
    const uint8_t F32 = KW_WIRE_SCALE_F32, ZP = KW_WIRE_SCALE_ZERO_POINTS;
    const struct {
        kw_wire_codec_spec spec;
        uint32_t clip, outliers;
        const char *name;
    } paths[] = {
        {{KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, F32, 0}, 0, 0, "int8 per token"},
        {{KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_GROUP, F32, 3}, 0, 0, "int4 groups of 8"},
        {{KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_HEAD, F32, 0}, 0, 0, "int8 per head"},
        {{KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_LAYER, F32, 0}, 0, 0, "int8 per layer"},
        {{KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_TOKEN, F32 | ZP, 0}, 0, 0, "int4 with zero points"},
        {{KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_CHANNEL, F32, 1}, 0, 0, "int4 channel runs of 2"},
        {{KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, F32, 0}, 3, 0, "int8 clipped"},
        {{KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, F32, 0}, 0, 1, "int8 with an outlier"},
        {{KW_WIRE_CODEC_NF4, KW_WIRE_GRAN_TOKEN, F32, 0}, 0, 0, "nf4 per token"},
        {{KW_WIRE_CODEC_INT2, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_E8M0, 0}, 0, 0, "int2 e8m0"},
        {{KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_E8M0, 0}, 0, 0, "int8 e8m0"},
        {{KW_WIRE_CODEC_INT2, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_E8M0, 2}, 0, 0, "int2 e8m0 groups of 4"},
        {{KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_LAYER, F32 | ZP, 0}, 0, 0, "int4 per layer with zero points"},
        {{KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_LAYER, F32, 0}, 3, 0, "int8 per layer clipped"},
    };
    /* at the limit; just above 2^121, where an e8m0 scale rounds up almost 2x (int2 decodes 2^122); past it */
    const float As[3] = {rmax, 0x1.000002p121f, 0x1p123f};
    static const uint8_t isas[] = {KW_WIRE_ISA_SCALAR, KW_WIRE_ISA_AVX2, KW_WIRE_ISA_AVX512};
    float x[RT * RD];
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; ++i)
        for (size_t j = 0; j < sizeof isas; ++j)
            for (int a = 0; a < 3; ++a) {
                const int past = a == 2;
                const kw_wire_policy pol = {.k = paths[i].spec,
                                            .v = paths[i].spec,
                                            .rotate = 3,
                                            .clip = paths[i].clip,
                                            .outliers = paths[i].outliers};
                rotated_rows(As[a], 2, -1, x);
                uint8_t *blob = NULL;
                size_t size = 0;
                const int rc = wt_encode_same_kv(&hdr, x, &pol, isas[j], &blob, &size, NULL);
                if (past) {
                    if (rc != KW_E_WIRE_RANGE || !strstr(kw_error_detail(), "rotated"))
                        fail_msg("%s, isa %u: A = 2^123 gave %s (%s)", paths[i].name, isas[j], kw_status_name(rc),
                                 kw_error_detail());
                } else {
                    if (rc != 0)
                        fail_msg("%s, isa %u: A = %a within the limit gave %s (%s)", paths[i].name, isas[j],
                                 (double)As[a], kw_status_name(rc), kw_error_detail());
                    const kw_wire_decoder_options opt = {.isa = isas[j]};
                    wt_blob_out o = {0};
                    const int rd = wt_decode_oneshot(blob, size, &opt, &o);
                    if (rd != 0)
                        fail_msg("%s, isa %u: the blob of A = %a does not decode: %s (%s)", paths[i].name, isas[j],
                                 (double)As[a], kw_status_name(rd), kw_error_detail());
                    for (size_t e = 0; e < (size_t)RT * RD; ++e)
                        assert_true(fabsf(o.layers[0].k[e]) <= KW_WIRE_BF16_MAX);
                    wt_blob_out_free(&o);
                }
                free(blob);
            }
    /* a NaN before the large row is reported as NaN; after it, the large row first (the scale units' order) */
    const kw_wire_policy tok = {.k = paths[0].spec, .v = paths[0].spec, .rotate = 3};
    for (size_t j = 0; j < sizeof isas; ++j)
        for (int nan_first = 0; nan_first < 2; ++nan_first) {
            rotated_rows(0x1p123f, 2, nan_first ? 1 : 3, x);
            uint8_t *blob = NULL;
            size_t size = 0;
            assert_int_equal(wt_encode_same_kv(&hdr, x, &tok, isas[j], &blob, &size, NULL),
                             nan_first ? KW_E_WIRE_NONFINITE : KW_E_WIRE_RANGE);
            free(blob);
        }
    /* the outliers' own check: with per-layer scales and 32 outliers the large row's 2 x 16 values all go to the
     * outlier table, the scale unit keeps only small ones, and the table refuses them (past) or sends them (at it) */
    const kw_wire_policy lay = {.k = paths[3].spec, .v = paths[3].spec, .rotate = 3, .outliers = 2 * RD};
    for (int past = 0; past < 2; ++past) {
        rotated_rows(past ? 0x1p123f : rmax, 2, -1, x);
        uint8_t *blob = NULL;
        size_t size = 0;
        const int rc = wt_encode_same_kv(&hdr, x, &lay, 0, &blob, &size, NULL);
        if (past && (rc != KW_E_WIRE_RANGE || !strstr(kw_error_detail(), "outlier")))
            fail_msg("32 outliers past the limit: %s (%s)", kw_status_name(rc), kw_error_detail());
        if (!past) {
            assert_int_equal(rc, 0);
            wt_blob_out o = {0};
            assert_int_equal(wt_decode_oneshot(blob, size, NULL, &o), 0);
            wt_blob_out_free(&o);
        }
        free(blob);
    }
    /* a finite row whose rotation overflows f32 (x_d = 2^126 s_d: y_0 = 2^128) is NaN or Inf, named as rotated */
    for (size_t i = 0; i < 7; i += 6) { /* per token (rows rotated block by block), clipped (the rotated copy) */
        const kw_wire_policy pol = {.k = paths[i].spec, .v = paths[i].spec, .rotate = 3, .clip = paths[i].clip};
        rotated_rows(1.0f, -1, -1, x);
        for (uint32_t d = 0; d < RD; ++d)
            x[2 * RD + d] = ldexpf((float)kw_wire_rotate_sign(d), 126);
        uint8_t *blob = NULL;
        size_t size = 0;
        const int rc = wt_encode_same_kv(&hdr, x, &pol, 0, &blob, &size, NULL);
        if (rc != KW_E_WIRE_NONFINITE || !strstr(kw_error_detail(), "(rotated)"))
            fail_msg("%s: a rotation past f32 gave %s (%s)", paths[i].name, kw_status_name(rc), kw_error_detail());
        free(blob);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_transform),         cmocka_unit_test(test_oracle),
        cmocka_unit_test(test_oracle_blocks),     cmocka_unit_test(test_bf16_source),
        cmocka_unit_test(test_error_drops),       cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_rotated_past_bf16), cmocka_unit_test(test_encoder_rotated_range),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
