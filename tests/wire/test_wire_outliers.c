/* test_wire_outliers.c: the v1.1 outlier side table and pre-RoPE flag (docs/FORMAT.md §5.10, §5.11): which elements
 * the encoder picks, that they come back exact, that the rest is encoded exactly as if the outliers were not there
 * (symmetric codecs: the same blob with the outliers set to zero decodes to the same bits elsewhere; zero points: the
 * error bound of the scale of the remaining values), sizes and the breakdown, streaming, compression, token groups,
 * and the encoder's refusals. The decoder's rejections of damaged tables are must-reject golden blobs
 * (tests/golden/wire-errors/v11o_*). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>

#include "common/kw_bytes.h"
#include "tests/wire/wire_test_util.h"
#include "wire/kw_wire.h"
#include "wire/kw_wire_internal.h"

enum { H = 2, T = 12, D = 16, N = H * T * D };

/* One layer's K and V as (H, T, D) bf16, with their f32 values. */
typedef struct kv {
    float val[2][N];
    uint16_t buf[2][N];
    kw_wire_layer_in in;
} kv;

static void kv_store(kv *x) {
    for (int k = 0; k < 2; ++k)
        for (size_t e = 0; e < N; ++e) {
            x->buf[k][e] = kw_f32_to_bf16(x->val[k][e]);
            x->val[k][e] = kw_bf16_to_f32(x->buf[k][e]);
        }
    x->in = (kw_wire_layer_in){.layer = 1, .n_tokens = T};
    x->in.k = (kw_wire_tensor_in){x->buf[0], (size_t)T * D, D, NULL};
    x->in.v = (kw_wire_tensor_in){x->buf[1], (size_t)T * D, D, NULL};
}

/* Bell-shaped values with a few planted spikes (their element numbers in spikes[0..3)). */
static const uint64_t spikes[3] = {3 * D + 5, N + (H - 1) * T *D + 7 * D + 2, (T + 0) * D + 15};

static void kv_fill(kv *x, wt_rng *r) {
    for (int k = 0; k < 2; ++k)
        for (size_t e = 0; e < N; ++e)
            x->val[k][e] = wt_bell(r);
    x->val[0][spikes[0]] = 50.0f;
    x->val[1][spikes[1] - N] = -40.0f;
    x->val[0][spikes[2]] = 30.0f;
    kv_store(x);
}

static kw_wire_header header11(void) {
    return (kw_wire_header){.n_layers = 4,
                            .n_sections = 1,
                            .n_kv_heads = H,
                            .head_dim = D,
                            .n_positions = T,
                            .src_dtype = KW_WIRE_DTYPE_BF16,
                            .version = KW_WIRE_VERSION_1_1};
}

static int bit(const uint8_t *mask, uint64_t e) {
    return (mask[e / 8] >> (e % 8)) & 1;
}

static void test_select(void **state) {
    (void)state;
    wt_rng r = {71};
    kv x;
    kv_fill(&x, &r);
    const kw_wire_header hdr = header11();
    const kw_wire_policy pol = {.k = {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0},
                                .v = {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0}};
    uint8_t mask[2 * N / 8];
    uint32_t n = 99;
    assert_int_equal(kw_wire_outlier_select(&hdr, &x.in, &pol, 3, mask, &n), 0);
    assert_int_equal(n, 3);
    for (uint64_t e = 0; e < 2 * N; ++e)
        assert_int_equal(bit(mask, e), e == spikes[0] || e == spikes[1] || e == spikes[2]);
    assert_int_equal(kw_wire_outlier_select(&hdr, &x.in, &pol, 0, mask, &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(kw_wire_outlier_select(&hdr, &x.in, &pol, 5 * N, mask, &n), 0);
    assert_int_equal(n, 2 * N);
    for (uint64_t e = 0; e < 2 * N; ++e)
        assert_int_equal(bit(mask, e), 1);
    /* all scores equal (constant rows): ties go to the lower element numbers */
    for (int k = 0; k < 2; ++k)
        for (size_t e = 0; e < N; ++e)
            x.val[k][e] = 1.5f;
    kv_store(&x);
    assert_int_equal(kw_wire_outlier_select(&hdr, &x.in, &pol, 5, mask, &n), 0);
    assert_int_equal(n, 5);
    for (uint64_t e = 0; e < 2 * N; ++e)
        assert_int_equal(bit(mask, e), e < 5);
    /* a NaN is refused */
    x.buf[1][7] = 0x7fc0;
    assert_int_equal(kw_wire_outlier_select(&hdr, &x.in, &pol, 5, mask, &n), KW_E_WIRE_NONFINITE);
}

/* The selection by its definition (kw_wire_outliers.c): each scale's count, centre and sum of squared deviations in
 * element order ([h][t][d]), in double; each element's score kw__wire_outlier_score (0 for passthrough tensors and
 * scales of one value); then a sort: the count highest scores, ties to the lower element numbers. */
typedef struct scored {
    float score;
    uint32_t e;
} scored;

static int scored_cmp(const void *a, const void *b) {
    const scored *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    return x->e < y->e ? -1 : 1;
}

static void oracle_scores(uint32_t nh, uint32_t nt, uint32_t nd, const float *x, const kw_wire_codec_spec *sp,
                          scored *out) {
    const uint32_t n = nh * nt * nd;
    if (kw_wire_codec_is_passthrough(sp->codec)) {
        for (uint32_t e = 0; e < n; ++e)
            out[e].score = 0.0f;
        return;
    }
    const int asym = kw_wire_spec_asym(sp);
    const uint64_t units = kw_wire_scale_units(sp->granularity, sp->group_log2, nh, nt, nd);
    double *cnt = wt_xmalloc(units * sizeof(double)), *c = wt_xmalloc(units * sizeof(double));
    double *S = wt_xmalloc(units * sizeof(double));
    for (int pass = 0; pass < 3; ++pass)
        for (uint32_t e = 0; e < n; ++e) {
            const uint32_t h = e / (nt * nd), t = e / nd % nt, d = e % nd;
            const uint64_t u = kw_wire_scale_index(sp->granularity, sp->group_log2, nt, nd, h, t, d);
            if (pass == 0) {
                cnt[u] += 1.0;
                c[u] += asym ? (double)x[e] : 0.0;
            } else if (pass == 1) {
                const double dv = (double)x[e] - c[u] / cnt[u];
                S[u] += dv * dv;
            } else {
                out[e].score = cnt[u] > 1.0 ? kw__wire_outlier_score(asym, x[e], cnt[u], c[u] / cnt[u], S[u]) : 0.0f;
            }
        }
    free(cnt);
    free(c);
    free(S);
}

/* kw_wire_outlier_select against the oracle on (H, T, D) f32 tensors k and v with one spec each. */
static void check_select(uint32_t nh, uint32_t nt, uint32_t nd, const float *k, const float *v,
                         const kw_wire_codec_spec *sk, const kw_wire_codec_spec *sv, uint32_t count, const char *what) {
    const uint32_t half = nh * nt * nd, elems = 2 * half;
    scored *sc = wt_xmalloc(elems * sizeof(scored));
    oracle_scores(nh, nt, nd, k, sk, sc);
    oracle_scores(nh, nt, nd, v, sv, sc + half);
    for (uint32_t e = 0; e < elems; ++e)
        sc[e].e = e;
    qsort(sc, elems, sizeof(scored), scored_cmp);
    uint8_t *want = wt_xmalloc(elems / 8 + 1), *got = wt_xmalloc(elems / 8 + 1);
    for (uint32_t i = 0; i < count && i < elems; ++i)
        want[sc[i].e / 8] |= (uint8_t)(1u << (sc[i].e % 8));
    const kw_wire_header hdr = {.n_layers = 1,
                                .n_sections = 1,
                                .n_kv_heads = (uint16_t)nh,
                                .head_dim = (uint16_t)nd,
                                .n_positions = nt,
                                .src_dtype = KW_WIRE_DTYPE_F32,
                                .version = KW_WIRE_VERSION_1_1};
    kw_wire_layer_in in = {.layer = 0, .n_tokens = nt};
    in.k = (kw_wire_tensor_in){k, (size_t)nt * nd, nd, NULL};
    in.v = (kw_wire_tensor_in){v, (size_t)nt * nd, nd, NULL};
    const kw_wire_policy pol = {.k = *sk, .v = *sv};
    uint32_t n = 0;
    assert_int_equal(kw_wire_outlier_select(&hdr, &in, &pol, count, got, &n), 0);
    assert_int_equal(n, count < elems ? count : elems);
    for (uint32_t e = 0; e < elems; ++e)
        if (bit(got, e) != bit(want, e))
            fail_msg("%s, count %u: element %u is %s", what, count, e,
                     bit(got, e) ? "chosen, the oracle does not choose it" : "not chosen, the oracle chooses it");
    free(sc);
    free(want);
    free(got);
}

/* The selection element for element against the oracle, on sections large enough that the candidates' list does not
 * hold every element: each granularity with and without zero points over bell-shaped values with spikes; equal
 * values (every score tied: the tie rule, and more tied candidates than the list holds); and values that put the
 * scores the selection samples (one in each run of 16, at kw__out_count's hashed offset) far above the rest, so the
 * sample's pivot leaves fewer than count candidates and the full counts decide; and small sections. */
static void test_select_oracle(void **state) {
    (void)state;
    enum { NH = 2, NT = 64, ND = 128, HALF = NH * NT * ND };
    static const kw_wire_codec_spec specs[] = {
        {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0},
        {KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_F16, 3},
        {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_F16 | KW_WIRE_SCALE_ZERO_POINTS, 5},
        {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16 | KW_WIRE_SCALE_ZERO_POINTS, 0},
        {KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_HEAD, KW_WIRE_SCALE_F32, 0},
        {KW_WIRE_CODEC_INT2, KW_WIRE_GRAN_CHANNEL, KW_WIRE_SCALE_F16 | KW_WIRE_SCALE_ZERO_POINTS, 2},
        {KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_LAYER, KW_WIRE_SCALE_F32 | KW_WIRE_SCALE_ZERO_POINTS, 0},
        {KW_WIRE_CODEC_BF16, 0, 0, 0},
    };
    const size_t n_specs = sizeof specs / sizeof specs[0];
    float *k = wt_xmalloc(HALF * sizeof(float)), *v = wt_xmalloc(HALF * sizeof(float));
    wt_rng r = {74};
    for (size_t c = 0; c < n_specs; ++c) {
        for (uint32_t e = 0; e < HALF; ++e) {
            k[e] = wt_bell(&r) * (e % 37 == 5 ? 8.0f : 1.0f);
            v[e] = wt_bell(&r) + (wt_below(&r, 300) == 0 ? 40.0f : 0.0f);
        }
        const uint32_t counts[] = {1, 7, 2 * HALF / 100, 2 * HALF / 3};
        for (size_t i = 0; i < sizeof counts / sizeof counts[0]; ++i)
            check_select(NH, NT, ND, k, v, &specs[c], &specs[(c + 3) % n_specs], counts[i], "bell with spikes");
    }
    for (uint32_t e = 0; e < HALF; ++e)
        k[e] = v[e] = 1.5f;
    for (size_t c = 0; c < n_specs; ++c)
        check_select(NH, NT, ND, k, v, &specs[c], &specs[c], 5, "equal values");
    for (uint32_t e = 0; e < HALF; ++e) {
        k[e] = wt_bell(&r);
        v[e] = wt_bell(&r);
    }
    for (uint32_t b = 0; b < 2 * HALF / 16; ++b) { /* the sampled elements, made spikes */
        const uint32_t e = 16 * b + ((uint32_t)b * 0x9e3779b1u >> 28);
        (e < HALF ? k : v)[e % HALF] = 30.0f + (float)(b % 7);
    }
    check_select(NH, NT, ND, k, v, &specs[0], &specs[0], 2 * HALF / 10, "sampled spikes");
    check_select(NH, NT, ND, k, v, &specs[1], &specs[3], 2 * HALF / 10, "sampled spikes");
    /* small sections whose element count is not a multiple of 64: the masks' last words are partial */
    static const uint32_t shapes[][3] = {{1, 3, 8}, {3, 5, 24}, {2, 7, 40}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; ++i) {
        const uint32_t nh = shapes[i][0], nt = shapes[i][1], nd = shapes[i][2], elems = 2 * nh * nt * nd;
        for (uint32_t e = 0; e < elems / 2; ++e) {
            k[e] = wt_bell(&r);
            v[e] = wt_bell(&r);
        }
        check_select(nh, nt, nd, k, v, &specs[0], &specs[3], 1, "small");
        check_select(nh, nt, nd, k, v, &specs[0], &specs[3], elems / 2, "small");
        check_select(nh, nt, nd, k, v, &specs[1], &specs[0], elems - 1, "small");
    }
    free(k);
    free(v);
}

/* Encodes x with pol, decodes it; *out gets the decoded K and V. */
static void encode_decode(const kw_wire_header *hdr, const kv *x, const kw_wire_policy *pol, wt_blob_out *out,
                          size_t *size_out) {
    uint8_t *blob = NULL;
    size_t size = 0, bound = 0;
    const int rc = wt_encode_blob(hdr, &x->in, pol, 1, 0, &blob, &size);
    if (rc < 0) fail_msg("encode: %s %s", kw_status_name(rc), kw_error_detail());
    assert_int_equal(kw_wire_section_size(hdr, pol, T, NULL, &bound), 0);
    assert_true(size <= KW_WIRE_HEADER_BYTES + bound + KW_WIRE_TRAILER_BYTES);
    assert_int_equal(wt_decode_oneshot(blob, size, NULL, out), 0);
    const kw_wire_breakdown *bd = &out->bd;
    assert_int_equal(bd->header + bd->indices + bd->scales + bd->payload + bd->outliers + bd->checksums -
                         bd->compression_saved,
                     size);
    wt_blob_out chunked; /* the streaming decoder, a byte at a time, agrees */
    assert_int_equal(wt_decode_stream(blob, size, NULL, 1, &chunked), 0);
    assert_true(wt_blob_out_equal(out, &chunked));
    wt_blob_out_free(&chunked);
    kw_wire_reader *rd;
    const kw_wire_header *h;
    const kw_wire_section *sec;
    assert_int_equal(kw_wire_reader_open(blob, size, NULL, &rd, &h), 0);
    assert_int_equal(kw_wire_reader_next(rd, &sec), 1);
    assert_int_equal(sec->pre_rope, pol->pre_rope);
    const uint32_t expect_n = pol->outliers < 2 * N ? pol->outliers : 2 * N;
    assert_int_equal(sec->n_outliers, expect_n);
    assert_int_equal(sec->outlier_table != NULL, expect_n > 0);
    assert_int_equal(out->bd.outliers, sec->outlier_bytes);
    kw_wire_reader_close(rd);
    if (size_out) *size_out = size;
    free(blob);
}

/* Symmetric codecs: the outliers come back exact, every other element exactly as the blob without outliers of the
 * same values with the outliers set to zero decodes it (zero neither widens a symmetric scale nor has another code
 * than +0, the code the encoder gives an outlier). */
static void test_symmetric_oracle(void **state) {
    (void)state;
    static const kw_wire_codec_spec specs[] = {
        {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0},
        {KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_HEAD, KW_WIRE_SCALE_BF16, 0},
        {KW_WIRE_CODEC_INT3, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_F32, 3},
        {KW_WIRE_CODEC_NF4, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_E8M0, 2},
        {KW_WIRE_CODEC_E4M3, KW_WIRE_GRAN_LAYER, KW_WIRE_SCALE_F32, 0},
        {KW_WIRE_CODEC_INT2, KW_WIRE_GRAN_CHANNEL, KW_WIRE_SCALE_F16, 2},
        {KW_WIRE_CODEC_INT6, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F32, 0},
    };
    const kw_wire_header hdr = header11();
    wt_rng r = {72};
    for (size_t c = 0; c < sizeof specs / sizeof specs[0]; ++c)
        for (uint32_t count = 1; count <= 40; count += 13) {
            kv x, zeroed;
            kv_fill(&x, &r);
            const kw_wire_policy pol = {.k = specs[c], .v = specs[(c + 1) % 7], .outliers = count};
            const kw_wire_policy plain = {.k = specs[c], .v = specs[(c + 1) % 7]};
            uint8_t mask[2 * N / 8];
            uint32_t n = 0;
            assert_int_equal(kw_wire_outlier_select(&hdr, &x.in, &pol, count, mask, &n), 0);
            assert_int_equal(n, count);
            zeroed = x;
            for (uint64_t e = 0; e < 2 * N; ++e)
                if (bit(mask, e)) zeroed.val[e / N][e % N] = 0.0f;
            kv_store(&zeroed);
            wt_blob_out a, b;
            encode_decode(&hdr, &x, &pol, &a, NULL);
            encode_decode(&hdr, &zeroed, &plain, &b, NULL);
            for (uint64_t e = 0; e < 2 * N; ++e) {
                const float got = (e < N ? a.layers[0].k : a.layers[0].v)[e % N];
                const float want = bit(mask, e) ? x.val[e / N][e % N] : (e < N ? b.layers[0].k : b.layers[0].v)[e % N];
                if (kw_f32_bits(got) != kw_f32_bits(want))
                    fail_msg("spec %zu count %u element %llu (outlier %d): %a, expected %a", c, count,
                             (unsigned long long)e, bit(mask, e), got, want);
            }
            wt_blob_out_free(&a);
            wt_blob_out_free(&b);
        }
}

/* Zero points, in two token groups: outliers exact, the rest within the step of the scale of the remaining values
 * (f32 scales and zero points: no rounding of the minimum). */
static void test_asymmetric_bound(void **state) {
    (void)state;
    const kw_wire_header hdr = header11();
    const uint8_t zp = KW_WIRE_SCALE_ZERO_POINTS;
    const kw_wire_token_group groups[2] = {
        {5,
         {KW_WIRE_CODEC_INT2, KW_WIRE_GRAN_CHANNEL, KW_WIRE_SCALE_F32 | zp, 2},
         {KW_WIRE_CODEC_INT2, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F32 | zp, 0}},
        {T - 5,
         {KW_WIRE_CODEC_INT3, KW_WIRE_GRAN_CHANNEL, KW_WIRE_SCALE_F32 | zp, 3},
         {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_F32 | zp, 3}},
    };
    wt_rng r = {73};
    kv x;
    kv_fill(&x, &r);
    const kw_wire_policy pol = {.n_groups = 2, .groups = groups, .outliers = 20, .pre_rope = 1, .zstd_level = 3};
    uint8_t mask[2 * N / 8];
    uint32_t n = 0;
    assert_int_equal(kw_wire_outlier_select(&hdr, &x.in, &pol, 20, mask, &n), 0);
    for (int s = 0; s < 3; ++s)
        assert_true(bit(mask, spikes[s]));
    wt_blob_out a;
    encode_decode(&hdr, &x, &pol, &a, NULL);
    for (int kvi = 0; kvi < 2; ++kvi)
        for (int g = 0; g < 2; ++g) {
            const kw_wire_codec_spec *sp = kvi ? &groups[g].v : &groups[g].k;
            const uint32_t t0 = g ? 5 : 0, tg = groups[g].n_tokens;
            const double qmax = (double)((1u << kw_wire_codec_bits(sp->codec)) - 1u);
            const uint64_t units = kw_wire_scale_units(sp->granularity, sp->group_log2, H, tg, D);
            double *lo = wt_xmalloc(units * sizeof(double)), *hi = wt_xmalloc(units * sizeof(double));
            for (uint64_t u = 0; u < units; ++u) {
                lo[u] = INFINITY;
                hi[u] = -INFINITY;
            }
            for (int pass = 0; pass < 2; ++pass)
                for (uint32_t h = 0; h < H; ++h)
                    for (uint32_t t = 0; t < tg; ++t)
                        for (uint32_t d = 0; d < D; ++d) {
                            const size_t e = ((size_t)h * T + t0 + t) * D + d;
                            const double xv = x.val[kvi][e];
                            const double got = (kvi ? a.layers[0].v : a.layers[0].k)[e];
                            const uint64_t u = kw_wire_scale_index(sp->granularity, sp->group_log2, tg, D, h, t, d);
                            if (bit(mask, (uint64_t)kvi * N + e)) {
                                if (pass == 1 && got != xv) fail_msg("outlier %zu: %g, expected %g", e, got, xv);
                                continue;
                            }
                            if (pass == 0) {
                                lo[u] = xv < lo[u] ? xv : lo[u];
                                hi[u] = xv > hi[u] ? xv : hi[u];
                                continue;
                            }
                            const double bound = 0.5 * (hi[u] - lo[u]) / qmax * (1 + 0x1p-10) +
                                                 0x1p-20 * (fabs(xv) + fabs(lo[u]) + (hi[u] - lo[u]));
                            if (fabs(got - xv) > bound)
                                fail_msg("%c group %d element %zu: %g for %g, bound %g", kvi ? 'V' : 'K', g, e, got, xv,
                                         bound);
                        }
            free(lo);
            free(hi);
        }
    wt_blob_out_free(&a);
}

static void test_value_dtypes_and_refusals(void **state) {
    (void)state;
    wt_rng r = {74};
    kv x;
    kv_fill(&x, &r);
    kw_wire_header hdr = header11();
    const kw_wire_codec_spec i4 = {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0};
    wt_blob_out a;
    size_t size_bf16 = 0, size_f32 = 0;
    kw_wire_policy pol = {.k = i4, .v = i4, .outliers = 6};
    encode_decode(&hdr, &x, &pol, &a, &size_bf16);
    wt_blob_out_free(&a);
    pol.outlier_dtype = KW_WIRE_DTYPE_F32; /* bf16 inputs are exact in f32 too; the values take twice the bytes */
    encode_decode(&hdr, &x, &pol, &a, &size_f32);
    assert_int_equal(size_f32, size_bf16 + 6 * 2);
    assert_true(a.layers[0].k[spikes[0]] == 50.0f);
    wt_blob_out_free(&a);
    pol.outlier_dtype = KW_WIRE_DTYPE_F16;
    encode_decode(&hdr, &x, &pol, &a, NULL);
    wt_blob_out_free(&a);
    /* a value f16 cannot hold */
    x.val[0][spikes[0]] = 70000.0f;
    kv_store(&x);
    uint8_t *blob = NULL;
    size_t size = 0;
    assert_int_equal(wt_encode_blob(&hdr, &x.in, &pol, 1, 0, &blob, &size), KW_E_WIRE_RANGE);
    /* bad policies */
    pol.outlier_dtype = 9;
    assert_int_equal(wt_encode_blob(&hdr, &x.in, &pol, 1, 0, &blob, &size), KW_E_INVALID_ARG);
    pol.outlier_dtype = 0;
    pol.pre_rope = 2;
    assert_int_equal(wt_encode_blob(&hdr, &x.in, &pol, 1, 0, &blob, &size), KW_E_INVALID_ARG);
    /* v1 headers have neither outliers nor the pre-RoPE flag */
    hdr.version = KW_WIRE_VERSION;
    const kw_wire_policy outl = {.k = i4, .v = i4, .outliers = 1}, rope = {.k = i4, .v = i4, .pre_rope = 1};
    assert_true(kw_wire_policy_needs_v11(&outl));
    assert_true(kw_wire_policy_needs_v11(&rope));
    assert_int_equal(wt_encode_blob(&hdr, &x.in, &outl, 1, 0, &blob, &size), KW_E_INVALID_ARG);
    assert_int_equal(wt_encode_blob(&hdr, &x.in, &rope, 1, 0, &blob, &size), KW_E_INVALID_ARG);
    /* a section someone else writes cannot have outliers; the pre-RoPE flag it can */
    hdr.version = KW_WIRE_VERSION_1_1;
    kw_wire_encoder *enc;
    uint8_t buf[4096];
    size_t w, off;
    assert_int_equal(kw_wire_encoder_create(&hdr, NULL, &enc), 0);
    assert_int_equal(kw_wire_encoder_write_header(enc, buf, sizeof buf, &w), 0);
    assert_int_equal(kw_wire_encoder_begin_section(enc, 1, T, NULL, &outl, buf + w, sizeof buf - w, &off),
                     KW_E_INVALID_ARG);
    assert_int_equal(kw_wire_encoder_begin_section(enc, 1, T, NULL, &rope, buf + w, sizeof buf - w, &off), 0);
    assert_true((buf[w + 7] & 0x02) != 0);
    kw_wire_encoder_destroy(enc);
}

/* Tables the golden must-reject blobs cannot reach in place: long varints and f32 values. */
static void test_table_check(void **state) {
    (void)state;
    uint32_t n = 0;
    uint8_t dt = 0;
    /* one entry: element 3, an f32 value */
    uint8_t ok[8 + 1 + 4] = {1, 0, 0, 0, KW_WIRE_DTYPE_F32, 0, 0, 0, 3};
    kw_store_le32(ok + 9, kw_f32_bits(-2.5f));
    assert_int_equal(kw__wire_outlier_table_check(ok, sizeof ok, 10, &n, &dt), 0);
    assert_int_equal(n, 1);
    assert_int_equal(dt, KW_WIRE_DTYPE_F32);
    assert_int_equal(kw__wire_outlier_table_check(ok, sizeof ok, 3, &n, &dt), KW_E_WIRE_INDICES);
    kw_store_le32(ok + 9, kw_f32_bits(0x1p127f * 1.9990234375f)); /* past the largest bf16 */
    assert_int_equal(kw__wire_outlier_table_check(ok, sizeof ok, 10, &n, &dt), KW_E_WIRE_VALUE);
    kw_store_le32(ok + 9, 0x7f800000u);
    assert_int_equal(kw__wire_outlier_table_check(ok, sizeof ok, 10, &n, &dt), KW_E_WIRE_VALUE);
    /* an 11-byte varint, a 10-byte one past 64 bits, a varint running into the values, too many entries */
    uint8_t longv[8 + 11 + 2] = {1, 0, 0, 0, KW_WIRE_DTYPE_BF16, 0, 0, 0};
    memset(longv + 8, 0x80, 10);
    longv[18] = 0x01;
    assert_int_equal(kw__wire_outlier_table_check(longv, sizeof longv, UINT64_MAX, &n, &dt), KW_E_WIRE_CORRUPT);
    uint8_t wide[8 + 10 + 2] = {1, 0, 0, 0, KW_WIRE_DTYPE_BF16, 0, 0, 0};
    memset(wide + 8, 0xff, 9);
    wide[17] = 0x02;
    assert_int_equal(kw__wire_outlier_table_check(wide, sizeof wide, UINT64_MAX, &n, &dt), KW_E_WIRE_CORRUPT);
    wide[17] = 0x01; /* 2^64 - 1: the largest, valid if the section had that many elements */
    assert_int_equal(kw__wire_outlier_table_check(wide, sizeof wide, UINT64_MAX, &n, &dt), KW_E_WIRE_INDICES);
    uint8_t cut[8 + 1 + 2] = {1, 0, 0, 0, KW_WIRE_DTYPE_BF16, 0, 0, 0, 0x85};
    assert_int_equal(kw__wire_outlier_table_check(cut, sizeof cut, 1000, &n, &dt), KW_E_WIRE_CORRUPT);
    uint8_t many[8 + 2 * 3] = {2, 0, 0, 0, KW_WIRE_DTYPE_BF16, 0, 0, 0, 0, 0};
    assert_int_equal(kw__wire_outlier_table_check(many, sizeof many, 1, &n, &dt), KW_E_WIRE_CORRUPT);
    assert_int_equal(kw__wire_outlier_table_check(many, 7, 100, &n, &dt), KW_E_WIRE_CORRUPT);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_select),
        cmocka_unit_test(test_select_oracle),
        cmocka_unit_test(test_symmetric_oracle),
        cmocka_unit_test(test_asymmetric_bound),
        cmocka_unit_test(test_value_dtypes_and_refusals),
        cmocka_unit_test(test_table_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
