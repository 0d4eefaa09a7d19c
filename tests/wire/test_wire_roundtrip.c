/* test_wire_roundtrip.c: encode -> decode round trips of whole blobs for every codec x granularity x scale dtype x
 * index encoding x input dtype x input layout, on random and adversarial data. Every decoded element is checked
 * against the error bound derived from its quantization step (wt_element_bound, FORMAT.md §5.4); every stored scale
 * against the scale rule recomputed from the input (so granularity semantics are checked); passthrough values and bf16
 * outputs exactly. Also: sizes and bounds, index choice, token groups, zstd, determinism, the breakdown, the NaN/Inf
 * policy, and encoder misuse. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>

#include "common/kw_bytes.h"
#include "tests/wire/wire_test_util.h"
#include "wire/kw_wire.h"

// ---------------------------------------------------------------------------------------------------------------
// A layer's input: canonical values (H, T, D) f32 plus storage in the encoder's dtype and layout

enum { LAYOUT_HTD, LAYOUT_THD, LAYOUT_GATHER, LAYOUT_COUNT };

typedef struct layer {
    uint32_t H, T, D;
    uint8_t dtype;
    int layout;
    float *val[2]; /* K, V values (H, T, D), exactly representable in dtype */
    void *buf[2];
    uint32_t *rows;
    uint32_t *positions;
    kw_wire_layer_in in;
} layer;

static size_t idx(const layer *l, uint32_t h, uint32_t t, uint32_t d) {
    return ((size_t)h * l->T + t) * l->D + d;
}

static size_t dtype_size(uint8_t dtype) {
    return dtype == KW_WIRE_DTYPE_F32 ? 4 : 2;
}

/* Rounds v to the input dtype so the canonical value is what the encoder sees. */
static float to_dtype(uint8_t dtype, float v) {
    return dtype == KW_WIRE_DTYPE_BF16 ? kw_round_bf16(v) : dtype == KW_WIRE_DTYPE_F16 ? kw_round_f16(v) : v;
}

/* Allocates the layer and stores val into the layout; val must be filled first through layer_alloc + gen. */
static void layer_alloc(layer *l, uint32_t H, uint32_t T, uint32_t D, uint8_t dtype, int layout) {
    memset(l, 0, sizeof *l);
    l->H = H;
    l->T = T;
    l->D = D;
    l->dtype = dtype;
    l->layout = layout;
    for (int kv = 0; kv < 2; ++kv)
        l->val[kv] = wt_xmalloc((size_t)H * T * D * 4);
    l->positions = wt_xmalloc((size_t)T * 4);
    for (uint32_t t = 0; t < T; ++t)
        l->positions[t] = t;
}

static void layer_store(layer *l, uint32_t layer_id) {
    const size_t es = dtype_size(l->dtype);
    const uint32_t R = l->layout == LAYOUT_GATHER ? 2 * l->T + 1 : l->T; /* rows in storage */
    for (int kv = 0; kv < 2; ++kv) {
        free(l->buf[kv]);
        l->buf[kv] = wt_xmalloc((size_t)R * l->H * l->D * es);
    }
    free(l->rows);
    l->rows = NULL;
    size_t hs, ts;
    if (l->layout == LAYOUT_HTD) {
        hs = (size_t)l->T * l->D;
        ts = l->D;
    } else {
        hs = l->D;
        ts = (size_t)l->H * l->D;
    }
    if (l->layout == LAYOUT_GATHER) {
        l->rows = wt_xmalloc((size_t)l->T * 4);
        for (uint32_t t = 0; t < l->T; ++t)
            l->rows[t] = 2 * (l->T - 1 - t) + 1; /* reversed, odd rows */
    }
    for (int kv = 0; kv < 2; ++kv)
        for (uint32_t h = 0; h < l->H; ++h)
            for (uint32_t t = 0; t < l->T; ++t)
                for (uint32_t d = 0; d < l->D; ++d) {
                    const size_t r = l->rows ? l->rows[t] : t;
                    const size_t e = r * ts + h * hs + d;
                    const float v = l->val[kv][idx(l, h, t, d)];
                    if (l->dtype == KW_WIRE_DTYPE_F32)
                        ((float *)l->buf[kv])[e] = v;
                    else if (l->dtype == KW_WIRE_DTYPE_BF16)
                        ((uint16_t *)l->buf[kv])[e] = kw_f32_to_bf16(v);
                    else
                        ((uint16_t *)l->buf[kv])[e] = kw_f32_to_f16(v);
                }
    l->in.layer = layer_id;
    l->in.n_tokens = l->T;
    l->in.positions = l->positions;
    for (int kv = 0; kv < 2; ++kv) {
        kw_wire_tensor_in *ti = kv ? &l->in.v : &l->in.k;
        ti->data = l->buf[kv];
        ti->head_stride = hs;
        ti->token_stride = ts;
        ti->rows = l->rows;
    }
}

static void layer_free(layer *l) {
    for (int kv = 0; kv < 2; ++kv) {
        free(l->val[kv]);
        free(l->buf[kv]);
    }
    free(l->rows);
    free(l->positions);
}

/* Random values: per head a magnitude 2^e, bell-shaped, with occasional outliers. */
static void gen_random(layer *l, wt_rng *r) {
    for (int kv = 0; kv < 2; ++kv)
        for (uint32_t h = 0; h < l->H; ++h) {
            const int e = (int)wt_below(r, 12) - 6;
            for (uint32_t t = 0; t < l->T; ++t)
                for (uint32_t d = 0; d < l->D; ++d) {
                    float v = ldexpf(wt_bell(r), e);
                    if (wt_below(r, 200) == 0) v *= 40.0f;
                    l->val[kv][idx(l, h, t, d)] = to_dtype(l->dtype, v);
                }
        }
}

// ---------------------------------------------------------------------------------------------------------------
// Checking a decoded section against its input

/* The index of the scale covering element (h, t, d) of a group of tg tokens starting at t0 (FORMAT.md §5.4, §5.8). */
static size_t scale_index(const kw_wire_codec_spec *sp, uint32_t D, uint32_t tg, uint32_t h, uint32_t t, uint32_t d) {
    switch (sp->granularity) {
    case KW_WIRE_GRAN_LAYER:
        return 0;
    case KW_WIRE_GRAN_HEAD:
        return h;
    case KW_WIRE_GRAN_TOKEN:
        return (size_t)h * tg + t;
    case KW_WIRE_GRAN_CHANNEL: { /* runs of L tokens, the last one shorter */
        const uint32_t L = 1u << sp->group_log2, runs = (tg + L - 1) / L;
        return ((size_t)h * runs + t / L) * D + d;
    }
    default:
        return ((size_t)h * tg + t) * (D >> sp->group_log2) + (d >> sp->group_log2);
    }
}

/* A value rounded to a zero point's dtype (f16, bf16 or f32), RNE. */
static float to_scale_dtype(uint32_t sd, float v) {
    return sd == KW_WIRE_SCALE_F16 ? kw_round_f16(v) : sd == KW_WIRE_SCALE_BF16 ? kw_round_bf16(v) : v;
}

/* Zero points (FORMAT.md §5.9): the stored scale and zero point recomputed from the min and max of each set, and the
 * error bound s/2 + |z - mn| + clip + rounding. */
static void check_tensor_asym(const layer *l, const kw_wire_group_view *gv, const kw_wire_tensor_view *tv,
                              const float *in, const float *out) {
    const kw_wire_codec_spec *sp = &tv->spec;
    const uint32_t H = l->H, D = l->D, tg = gv->n_tokens, t0 = gv->first_token, sd = kw_wire_spec_scale(sp);
    const size_t ss = kw_wire_scale_size(sd);
    float *mn = wt_xmalloc(tv->scale_count * sizeof(float)), *mx = wt_xmalloc(tv->scale_count * sizeof(float));
    uint8_t *seen = wt_xmalloc(tv->scale_count);
    memset(seen, 0, tv->scale_count);
    /* the minimum and maximum in the set's value order (head, token, channel), each the first value that attains it:
     * a zero minimum is the first zero, with its sign */
    for (uint32_t h = 0; h < H; ++h)
        for (uint32_t t = 0; t < tg; ++t)
            for (uint32_t d = 0; d < D; ++d) {
                const size_t si = scale_index(sp, D, tg, h, t, d);
                const float x = in[idx(l, h, t0 + t, d)];
                if (!seen[si]) {
                    mn[si] = mx[si] = x;
                    seen[si] = 1;
                }
                mn[si] = x < mn[si] ? x : mn[si];
                mx[si] = x > mx[si] ? x : mx[si];
            }
    free(seen);
    const float qmax = (float)((1u << kw_wire_codec_bits(sp->codec)) - 1u);
    for (uint32_t h = 0; h < H; ++h)
        for (uint32_t t = 0; t < tg; ++t)
            for (uint32_t d = 0; d < D; ++d) {
                const size_t si = scale_index(sp, D, tg, h, t, d), e = idx(l, h, t0 + t, d);
                const float s = kw_wire_scale_load(sd, tv->scales + si * ss);
                const float z = kw_wire_scale_load(sd, tv->zeros + si * ss);
                const float x = in[e], xh = out[e];
                assert_true(isfinite(xh));
                if (kw_f32_bits(z) != kw_f32_bits(to_scale_dtype(sd, mn[si])))
                    fail_msg("%s-asym: zero point %a, expected %a", kw_wire_codec_name(sp->codec), z,
                             to_scale_dtype(sd, mn[si]));
                float want_s = 0.0f;
                if (mx[si] != mn[si]) assert_int_equal(wt_expected_scale(mx[si] - mn[si], qmax, sd, &want_s), 0);
                if (s != want_s)
                    fail_msg("%s-asym/%s/%s: scale %a, expected %a for [%a, %a]", kw_wire_codec_name(sp->codec),
                             kw_wire_gran_name(sp->granularity), kw_wire_scale_name(sd), s, want_s, mn[si], mx[si]);
                if (s == 0.0f) { /* a constant set decodes to its zero point */
                    assert_true(xh == z);
                    continue;
                }
                const double clip = fmax(0.0, (double)mx[si] - z - (double)qmax * s);
                const double bound = s / 2.0 + fabs((double)z - mn[si]) + clip +
                                     (fabs(x) + fabs(z) + (double)qmax * s + fabs(xh)) * 0x1p-22;
                if (fabs((double)x - xh) > bound)
                    fail_msg("%s-asym/%s/%s h%u t%u d%u: x=%a xh=%a s=%a z=%a err=%g > bound %g",
                             kw_wire_codec_name(sp->codec), kw_wire_gran_name(sp->granularity), kw_wire_scale_name(sd),
                             h, t, d, x, xh, s, z, fabs((double)x - xh), bound);
            }
    free(mn);
    free(mx);
}

static void check_tensor(const layer *l, const kw_wire_group_view *gv, const kw_wire_tensor_view *tv, const float *in,
                         const float *out, const uint16_t *outb) {
    const kw_wire_codec_spec *sp = &tv->spec;
    const uint32_t H = l->H, D = l->D, tg = gv->n_tokens, t0 = gv->first_token;
    const int pass = kw_wire_codec_is_passthrough(sp->codec);
    for (uint32_t h = 0; h < H; ++h) /* bf16 output = RNE of the f32 output */
        for (uint32_t t = t0; t < t0 + tg; ++t)
            for (uint32_t d = 0; d < D; ++d)
                assert_int_equal(outb[idx(l, h, t, d)], kw_f32_to_bf16(out[idx(l, h, t, d)]));
    if (kw_wire_spec_asym(sp)) {
        check_tensor_asym(l, gv, tv, in, out);
        return;
    }
    /* amax over the input values each scale covers, from the layout rule alone */
    float *amax = wt_xmalloc((pass ? 1 : tv->scale_count) * sizeof(float));
    if (!pass) {
        memset(amax, 0, tv->scale_count * sizeof(float));
        for (uint32_t h = 0; h < H; ++h)
            for (uint32_t t = 0; t < tg; ++t)
                for (uint32_t d = 0; d < D; ++d) {
                    const size_t si = scale_index(sp, D, tg, h, t, d);
                    amax[si] = fmaxf(amax[si], fabsf(in[idx(l, h, t0 + t, d)]));
                }
    }
    const float qmax = kw_wire_codec_qmax(sp->codec);
    for (uint32_t h = 0; h < H; ++h)
        for (uint32_t t = t0; t < t0 + tg; ++t)
            for (uint32_t d = 0; d < D; ++d) {
                const size_t e = idx(l, h, t, d);
                const float x = in[e], xh = out[e];
                assert_true(isfinite(xh));
                if (pass) {
                    const float want = sp->codec == KW_WIRE_CODEC_BF16 ? kw_round_bf16(x) : kw_round_f16(x);
                    if (xh != want) fail_msg("passthrough %s: x=%a got %a", kw_wire_codec_name(sp->codec), x, xh);
                    continue;
                }
                const size_t si = scale_index(sp, D, tg, h, t - t0, d);
                const float s =
                    kw_wire_scale_load(sp->scale_dtype, tv->scales + si * kw_wire_scale_size(sp->scale_dtype));
                float want_s = 0;
                assert_int_equal(wt_expected_scale(amax[si], qmax, sp->scale_dtype, &want_s), 0);
                if (sp->scale_dtype == KW_WIRE_SCALE_E8M0 && amax[si] == 0.0f) want_s = 0x1p-127f; /* byte 0 */
                if (s != want_s)
                    fail_msg("%s/%s/%s: scale %a, expected %a for amax %a", kw_wire_codec_name(sp->codec),
                             kw_wire_gran_name(sp->granularity), kw_wire_scale_name(sp->scale_dtype), s, want_s,
                             amax[si]);
                if (amax[si] == 0.0f) {
                    assert_true(xh == 0.0f);
                    continue;
                }
                const double bound = wt_element_bound(sp->codec, x, xh, s, qmax);
                if (fabs((double)x - xh) > bound)
                    fail_msg("%s/%s/%s h%u t%u d%u: x=%a xh=%a s=%a err=%g > bound %g", kw_wire_codec_name(sp->codec),
                             kw_wire_gran_name(sp->granularity), kw_wire_scale_name(sp->scale_dtype), h, t, d, x, xh, s,
                             fabs((double)x - xh), bound);
            }
    free(amax);
}

/* Decodes sec and checks it against layer l. */
static void check_section(const layer *l, const kw_wire_section *sec) {
    assert_int_equal(sec->layer, l->in.layer);
    assert_int_equal(sec->n_tokens, l->T);
    uint32_t *pos = wt_xmalloc((size_t)l->T * 4);
    assert_int_equal(kw_wire_section_positions(sec, pos, l->T), 0);
    assert_memory_equal(pos, l->positions, (size_t)l->T * 4);
    free(pos);
    const size_t n = (size_t)l->H * l->T * l->D;
    float *out[2] = {wt_xmalloc(n * 4), wt_xmalloc(n * 4)};
    uint16_t *outb[2] = {wt_xmalloc(n * 2), wt_xmalloc(n * 2)};
    const kw_wire_tensor_out k = {out[0], KW_WIRE_DTYPE_F32, (size_t)l->T * l->D, l->D};
    const kw_wire_tensor_out v = {out[1], KW_WIRE_DTYPE_F32, (size_t)l->T * l->D, l->D};
    const int drc = kw_wire_section_dequantize(sec, &k, &v);
    if (drc != 0)
        fail_msg("dequantize: %s %s (K %s/%s/0x%02x)", kw_status_name(drc), kw_error_detail(),
                 kw_wire_codec_name(sec->groups[0].k.spec.codec), kw_wire_gran_name(sec->groups[0].k.spec.granularity),
                 sec->groups[0].k.spec.scale_dtype);
    /* bf16 output through the (T, H, D) layout, read back as (H, T, D) */
    uint16_t *thd[2] = {wt_xmalloc(n * 2), wt_xmalloc(n * 2)};
    const kw_wire_tensor_out kb = {thd[0], KW_WIRE_DTYPE_BF16, l->D, (size_t)l->H * l->D};
    const kw_wire_tensor_out vb = {thd[1], KW_WIRE_DTYPE_BF16, l->D, (size_t)l->H * l->D};
    assert_int_equal(kw_wire_section_dequantize(sec, &kb, &vb), 0);
    for (int kv = 0; kv < 2; ++kv)
        for (uint32_t h = 0; h < l->H; ++h)
            for (uint32_t t = 0; t < l->T; ++t)
                memcpy(outb[kv] + idx(l, h, t, 0), thd[kv] + ((size_t)t * l->H + h) * l->D, (size_t)l->D * 2);
    for (uint32_t g = 0; g < sec->n_groups; ++g) {
        check_tensor(l, &sec->groups[g], &sec->groups[g].k, l->val[0], out[0], outb[0]);
        check_tensor(l, &sec->groups[g], &sec->groups[g].v, l->val[1], out[1], outb[1]);
    }
    for (int kv = 0; kv < 2; ++kv) {
        free(out[kv]);
        free(outb[kv]);
        free(thd[kv]);
    }
}

/* Encodes the layers with the policies, checks sizes and the breakdown, decodes one-shot and streaming (1 byte at a
 * time and in varying chunks), checks every section and that all decodes agree. */
static void roundtrip(const kw_wire_header *hdr, layer *ls, const kw_wire_policy *pols, uint32_t n) {
    kw_wire_layer_in *ins = wt_xmalloc(n * sizeof *ins);
    size_t expect = KW_WIRE_HEADER_BYTES + KW_WIRE_TRAILER_BYTES;
    int compressed = 0;
    for (uint32_t i = 0; i < n; ++i) {
        ins[i] = ls[i].in;
        size_t sz, bound;
        assert_int_equal(kw_wire_section_size(hdr, &pols[i], ls[i].T, ls[i].positions, &sz), 0);
        assert_int_equal(kw_wire_section_bound(hdr, &pols[i], ls[i].T, &bound), 0);
        assert_true(bound >= sz);
        expect += sz;
        compressed |= pols[i].zstd_level != 0;
    }
    uint8_t *blob = NULL;
    size_t size = 0;
    const int rc = wt_encode_blob(hdr, ins, pols, n, KW_WIRE_ISA_AUTO, &blob, &size);
    if (rc < 0) fail_msg("encode failed: %s: %s", kw_status_name(rc), kw_error_detail());
    if (compressed)
        assert_true(size <= expect);
    else
        assert_int_equal(size, expect);

    kw_wire_reader *r;
    const kw_wire_header *h;
    assert_int_equal(kw_wire_reader_open(blob, size, NULL, &r, &h), 0);
    assert_true(wt_header_equal(h, hdr));
    const kw_wire_section *sec;
    for (uint32_t i = 0; i < n; ++i) {
        const int got = kw_wire_reader_next(r, &sec);
        if (got != 1) fail_msg("section %u: %s %s", i, kw_status_name(got), kw_error_detail());
        check_section(&ls[i], sec);
    }
    assert_int_equal(kw_wire_reader_next(r, &sec), 0);
    const kw_wire_breakdown *bd = kw_wire_reader_breakdown(r);
    assert_int_equal(bd->total, size);
    assert_int_equal(bd->header + bd->indices + bd->scales + bd->payload + bd->outliers + bd->checksums -
                         bd->compression_saved,
                     size);
    assert_int_equal(bd->sections, n);
    kw_wire_reader_close(r);

    wt_blob_out a, b, c;
    assert_int_equal(wt_decode_oneshot(blob, size, NULL, &a), 0);
    assert_int_equal(wt_decode_stream(blob, size, NULL, 1, &b), 0);
    assert_int_equal(wt_decode_stream(blob, size, NULL, 97, &c), 0);
    assert_true(wt_blob_out_equal(&a, &b));
    assert_true(wt_blob_out_equal(&a, &c));
    wt_blob_out_free(&a);
    wt_blob_out_free(&b);
    wt_blob_out_free(&c);
    free(blob);
    free(ins);
}

// ---------------------------------------------------------------------------------------------------------------

static kw_wire_header make_header(uint16_t H, uint16_t D, uint32_t P, uint8_t dtype, uint16_t n_sections) {
    kw_wire_header h = {.n_layers = 8,
                        .n_sections = n_sections,
                        .n_kv_heads = H,
                        .head_dim = D,
                        .n_positions = P,
                        .src_dtype = dtype,
                        .model_id = 0x0123456789abcdefull,
                        .policy_id = 42};
    return h;
}

/* Positions suitable for a forced index encoding. */
static void positions_for(wt_rng *r, uint32_t enc, uint32_t P, uint32_t T, uint32_t *out) {
    if (enc == KW_WIRE_INDEX_FULL) {
        for (uint32_t t = 0; t < T; ++t)
            out[t] = t;
    } else if (enc == KW_WIRE_INDEX_RANGE) {
        const uint32_t start = wt_below(r, P - T + 1);
        for (uint32_t t = 0; t < T; ++t)
            out[t] = start + t;
    } else {
        wt_sample_positions(r, P, T, out);
    }
}

static void test_matrix(void **state) {
    (void)state;
    wt_rng r = {2024};
    static const uint8_t dtypes[] = {KW_WIRE_DTYPE_BF16, KW_WIRE_DTYPE_F32, KW_WIRE_DTYPE_F16};
    unsigned blobs = 0;
    /* v1 codecs as in v1; v1.1: int3, int2, channel scales (gran 6 here), zero points (asym), log8 scales (sd 5) */
    for (uint32_t codec = 1; codec < KW_WIRE_CODEC_COUNT_V11; ++codec) {
        const int pass = kw_wire_codec_is_passthrough(codec);
        for (uint32_t gran = pass ? 0 : 1; gran <= (pass ? 0u : 6u); ++gran) {
            for (uint32_t sd = pass ? 0 : 1; sd <= (pass ? 0u : 5u); ++sd) {
                if (sd == KW_WIRE_SCALE_LOG8 && !kw_wire_codec_is_int(codec)) continue;
                for (uint32_t enc = 1; enc < KW_WIRE_INDEX_COUNT; ++enc) {
                    for (uint32_t asym = 0; asym < 2; ++asym) {
                        if (asym && (!kw_wire_codec_is_int(codec) || sd >= KW_WIRE_SCALE_E8M0)) continue;
                        const uint8_t dtype = dtypes[(codec + gran + sd + enc + asym) % 3];
                        const uint32_t H = 1 + wt_below(&r, 3), D = 8 * (1 + wt_below(&r, 4)),
                                       P = 70 + wt_below(&r, 60);
                        const uint32_t T = enc == KW_WIRE_INDEX_FULL ? P : 1 + wt_below(&r, 40);
                        kw_wire_codec_spec spec = {(uint8_t)codec, (uint8_t)(gran > 4 ? 4 : gran),
                                                   (uint8_t)(sd | (asym ? KW_WIRE_SCALE_ZERO_POINTS : 0)), 0};
                        if (gran == 4 || gran == 5) spec.group_log2 = gran == 4 ? 2 : 3; /* G = 4 or 8 */
                        if (gran == 6) {
                            spec.granularity = KW_WIRE_GRAN_CHANNEL;
                            spec.group_log2 = (uint8_t)wt_below(&r, 6); /* L = 1..32: one or several runs */
                        }
                        kw_wire_header hdr = make_header((uint16_t)H, (uint16_t)D, P, dtype, 2);
                        if (kw_wire_spec_needs_v11(&spec)) hdr.version = KW_WIRE_VERSION_1_1;
                        layer ls[2];
                        kw_wire_policy pols[2];
                        for (int i = 0; i < 2; ++i) {
                            layer_alloc(&ls[i], H, T, D, dtype, (int)wt_below(&r, LAYOUT_COUNT));
                            positions_for(&r, enc, P, T, ls[i].positions);
                            gen_random(&ls[i], &r);
                            layer_store(&ls[i], 2 + 3 * (uint32_t)i);
                            memset(&pols[i], 0, sizeof pols[i]);
                            pols[i].k = spec;
                            pols[i].v = spec;
                            pols[i].index_encoding = (uint8_t)enc;
                        }
                        roundtrip(&hdr, ls, pols, 2);
                        ++blobs;
                        for (int i = 0; i < 2; ++i)
                            layer_free(&ls[i]);
                    }
                }
            }
        }
    }
    print_message("%u blobs round-tripped\n", blobs);
}

/* Per-token int8 and int4 on rows long enough that the encoder's blocks of rows (kw__enc_tensor: at most 8 KB of
 * input rows, at most 64 rows) hold fewer than 64 rows, and short rows whose blocks stop at 64 rows, with token counts
 * that leave a partial last block: every scale and value checked as test_matrix checks its smaller rows. */
static void test_token_blocks(void **state) {
    (void)state;
    wt_rng r = {77};
    static const uint8_t dtypes[] = {KW_WIRE_DTYPE_BF16, KW_WIRE_DTYPE_F32, KW_WIRE_DTYPE_F16};
    static const uint16_t dims[] = {8, 32, 64, 128, 256, 1024}; /* 8 and 32: 64-row blocks */
    static const uint32_t tokens[] = {1, 15, 31, 33, 100};
    static const uint8_t codecs[] = {KW_WIRE_CODEC_INT8, KW_WIRE_CODEC_INT4};
    for (size_t di = 0; di < sizeof dims / sizeof dims[0]; ++di)
        for (size_t ti = 0; ti < sizeof tokens / sizeof tokens[0]; ++ti)
            for (size_t k = 0; k < 3; ++k) {
                const uint32_t T = tokens[ti], H = 2;
                const uint8_t dtype = dtypes[k];
                const kw_wire_codec_spec spec = {codecs[(di + ti + k) % 2], KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0};
                kw_wire_header hdr = make_header((uint16_t)H, dims[di], 128, dtype, 1);
                layer l;
                layer_alloc(&l, H, T, dims[di], dtype, (int)wt_below(&r, LAYOUT_COUNT));
                positions_for(&r, KW_WIRE_INDEX_RANGE, 128, T, l.positions);
                gen_random(&l, &r);
                layer_store(&l, 3);
                kw_wire_policy pol;
                memset(&pol, 0, sizeof pol);
                pol.k = spec;
                pol.v = spec;
                roundtrip(&hdr, &l, &pol, 1);
                layer_free(&l);
            }
}

/* Adversarial values for every quantizing codec and scale dtype. */
static void test_adversarial(void **state) {
    (void)state;
    enum { ZEROS, ZERO_HEAD, DENORMAL, OUTLIER, TIES, TINY_MIXED, SIGNED_ZEROS, N_CASES };
    wt_rng r = {77};
    for (int c = 0; c < N_CASES; ++c)
        for (uint32_t codec = KW_WIRE_CODEC_INT8; codec < KW_WIRE_CODEC_COUNT_V11; ++codec)
            for (uint32_t sd = 1; sd <= 4 + 3; ++sd) /* 5..7: f16, bf16, f32 with zero points (integer codecs) */
                for (uint32_t gran = 1; gran <= 5; ++gran) {
                    if (sd > 4 && !kw_wire_codec_is_int(codec)) continue;
                    const uint32_t H = 2, T = 6, D = 16;
                    layer l;
                    layer_alloc(&l, H, T, D, KW_WIRE_DTYPE_F32, LAYOUT_HTD);
                    for (int kv = 0; kv < 2; ++kv)
                        for (uint32_t h = 0; h < H; ++h)
                            for (uint32_t t = 0; t < T; ++t)
                                for (uint32_t d = 0; d < D; ++d) {
                                    float v = 0;
                                    switch (c) {
                                    case ZEROS:
                                        v = (d & 1) ? -0.0f : 0.0f;
                                        break;
                                    case ZERO_HEAD:
                                        v = h == 1 ? 0.0f : wt_bell(&r);
                                        break;
                                    case DENORMAL:
                                        v = wt_bell(&r) * 0x1p-140f;
                                        break; /* f32 subnormals */
                                    case OUTLIER:
                                        v = (t == 2 && d == 3) ? 3.0e30f : wt_bell(&r) * 1e-3f;
                                        break;
                                    case TIES:
                                        v = (float)((int)(t * D + d) % 15 - 7) + 0.5f;
                                        break;
                                    case SIGNED_ZEROS: /* zero minima: the zero point is the first zero's sign */
                                        v = wt_below(&r, 3) ? (wt_below(&r, 2) ? -0.0f : 0.0f) : fabsf(wt_bell(&r));
                                        break;
                                    default:
                                        v = (d == 0) ? 1e4f : wt_bell(&r) * 1e-6f;
                                        break;
                                    }
                                    l.val[kv][idx(&l, h, t, d)] = v;
                                }
                    layer_store(&l, 0);
                    kw_wire_header hdr = make_header(H, D, T, KW_WIRE_DTYPE_F32, 1);
                    kw_wire_policy pol = {0};
                    const uint8_t sdb = (uint8_t)(sd > 4 ? (sd - 4) | KW_WIRE_SCALE_ZERO_POINTS : sd);
                    pol.k = (kw_wire_codec_spec){(uint8_t)codec, (uint8_t)gran, sdb, gran == 4 ? 3 : gran == 5 ? 2 : 0};
                    pol.v = pol.k;
                    pol.index_encoding = KW_WIRE_INDEX_AUTO;
                    if (kw_wire_spec_needs_v11(&pol.k)) hdr.version = KW_WIRE_VERSION_1_1;
                    /* does the rule allow a scale for every scale set? (f16 cannot hold 3e30/qmax) */
                    float s;
                    const float qm = sd > 4 ? kw_wire_codec_qmax_asym(codec) : kw_wire_codec_qmax(codec);
                    const int can = wt_expected_scale(3.0e30f, qm, kw_wire_spec_scale(&pol.k), &s) == 0 || c != OUTLIER;
                    if (can) {
                        roundtrip(&hdr, &l, &pol, 1);
                    } else {
                        uint8_t *blob = NULL;
                        size_t size = 0;
                        assert_int_equal(wt_encode_blob(&hdr, &l.in, &pol, 1, 0, &blob, &size), KW_E_WIRE_RANGE);
                    }
                    layer_free(&l);
                }
}

/* NaN and Inf are refused with KW_E_WIRE_NONFINITE; the encoder is unchanged and can continue. Zero points per token
 * and group (the check by the minmax kernel's absmax) with the value in the first or the second group of 8. */
static void test_nonfinite(void **state) {
    (void)state;
    const float bad[] = {NAN, INFINITY, -INFINITY};
    const uint8_t zp = KW_WIRE_SCALE_ZERO_POINTS;
    static const kw_wire_codec_spec specs[] = {{KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0},
                                               {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_LAYER, KW_WIRE_SCALE_BF16, 0},
                                               {KW_WIRE_CODEC_E4M3, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_E8M0, 3},
                                               {KW_WIRE_CODEC_BF16, 0, 0, 0},
                                               {KW_WIRE_CODEC_F16, 0, 0, 0},
                                               {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16 | zp, 0},
                                               {KW_WIRE_CODEC_INT3, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_F16 | zp, 3},
                                               {KW_WIRE_CODEC_INT2, KW_WIRE_GRAN_CHANNEL, KW_WIRE_SCALE_BF16 | zp, 1}};
    wt_rng r = {5};
    for (size_t b = 0; b < 6; ++b)
        for (size_t si = 0; si < sizeof specs / sizeof specs[0]; ++si)
            for (int dt = 0; dt < 2; ++dt) {
                const uint8_t dtype = dt ? KW_WIRE_DTYPE_BF16 : KW_WIRE_DTYPE_F32;
                const uint32_t d = b < 3 ? 7 : 12;
                layer l;
                layer_alloc(&l, 2, 4, 16, dtype, LAYOUT_THD);
                gen_random(&l, &r);
                kw_wire_header hdr = make_header(2, 16, 4, dtype, 1);
                if (kw_wire_spec_needs_v11(&specs[si])) hdr.version = KW_WIRE_VERSION_1_1;
                kw_wire_policy pol = {.k = specs[si], .v = specs[si], .index_encoding = KW_WIRE_INDEX_AUTO};
                const float keep = l.val[1][idx(&l, 1, 3, d)];
                l.val[1][idx(&l, 1, 3, d)] = bad[b % 3]; /* in V, last head, last token */
                layer_store(&l, 1);
                kw_wire_encoder *enc;
                assert_int_equal(kw_wire_encoder_create(&hdr, NULL, &enc), 0);
                uint8_t buf[4096];
                size_t at = 0, w;
                assert_int_equal(kw_wire_encoder_write_header(enc, buf, sizeof buf, &w), 0);
                at += w;
                assert_int_equal(kw_wire_encoder_write_section(enc, &l.in, &pol, buf + at, sizeof buf - at, &w),
                                 KW_E_WIRE_NONFINITE);
                l.val[1][idx(&l, 1, 3, d)] = keep;
                layer_store(&l, 1);
                assert_int_equal(kw_wire_encoder_write_section(enc, &l.in, &pol, buf + at, sizeof buf - at, &w), 0);
                at += w;
                assert_int_equal(kw_wire_encoder_write_trailer(enc, buf + at, sizeof buf - at, &w), 0);
                at += w;
                kw_wire_encoder_destroy(enc);
                wt_blob_out o;
                assert_int_equal(wt_decode_oneshot(buf, at, NULL, &o), 0);
                assert_int_equal(o.n, 1);
                wt_blob_out_free(&o);
                layer_free(&l);
            }
}

/* Finite values a codec cannot represent: KW_E_WIRE_RANGE. */
static void test_range(void **state) {
    (void)state;
    struct {
        float v;
        kw_wire_codec_spec spec;
    } cases[] = {
        {70000.0f, {KW_WIRE_CODEC_F16, 0, 0, 0}},                                    /* f16 overflow */
        {3.4e38f, {KW_WIRE_CODEC_BF16, 0, 0, 0}},                                    /* rounds past bf16 max */
        {1e10f, {KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0}},     /* scale > 65504 */
        {3.38e38f, {KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_E8M0, 0}}, /* 127 * 2^122 > bf16 max */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
        layer l;
        layer_alloc(&l, 1, 2, 8, KW_WIRE_DTYPE_F32, LAYOUT_HTD);
        l.val[0][3] = cases[i].v;
        layer_store(&l, 0);
        const kw_wire_header hdr = make_header(1, 8, 2, KW_WIRE_DTYPE_F32, 1);
        const kw_wire_policy pol = {.k = cases[i].spec, .v = cases[i].spec};
        uint8_t *blob = NULL;
        size_t size = 0;
        assert_int_equal(wt_encode_blob(&hdr, &l.in, &pol, 1, 0, &blob, &size), KW_E_WIRE_RANGE);
        layer_free(&l);
    }
}

/* Several token groups with different codecs for K and V in one section. */
static void test_token_groups(void **state) {
    (void)state;
    wt_rng r = {9};
    const uint32_t H = 3, T = 23, D = 32, P = 300;
    layer l;
    layer_alloc(&l, H, T, D, KW_WIRE_DTYPE_BF16, LAYOUT_GATHER);
    wt_sample_positions(&r, P, T, l.positions);
    gen_random(&l, &r);
    layer_store(&l, 4);
    const kw_wire_token_group groups[] = {
        {5, {KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_HEAD, KW_WIRE_SCALE_F32, 0}, {KW_WIRE_CODEC_BF16, 0, 0, 0}},
        {1,
         {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0},
         {KW_WIRE_CODEC_NF4, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_E8M0, 4}},
        {12,
         {KW_WIRE_CODEC_E5M2, KW_WIRE_GRAN_LAYER, KW_WIRE_SCALE_BF16, 0},
         {KW_WIRE_CODEC_INT6, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_F16, 3}},
        {5, {KW_WIRE_CODEC_F16, 0, 0, 0}, {KW_WIRE_CODEC_E4M3, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F32, 0}},
    };
    const kw_wire_header hdr = make_header(H, D, P, KW_WIRE_DTYPE_BF16, 1);
    kw_wire_policy pol = {.n_groups = 4, .groups = groups, .index_encoding = KW_WIRE_INDEX_AUTO};
    roundtrip(&hdr, &l, &pol, 1);
    pol.zstd_level = 3;
    roundtrip(&hdr, &l, &pol, 1);
    /* groups that do not cover the tokens exactly are refused */
    kw_wire_token_group bad[4];
    memcpy(bad, groups, sizeof bad);
    bad[3].n_tokens = 4;
    pol.groups = bad;
    size_t sz;
    assert_int_equal(kw_wire_section_size(&hdr, &pol, T, l.positions, &sz), KW_E_INVALID_ARG);
    layer_free(&l);
}

static void test_index_choice(void **state) {
    (void)state;
    uint32_t pos[600];
    uint8_t enc;
    size_t bytes;
    for (uint32_t i = 0; i < 512; ++i)
        pos[i] = i;
    assert_int_equal(kw_wire_index_choose(512, pos, 512, KW_WIRE_INDEX_AUTO, &enc, &bytes), 0);
    assert_int_equal(enc, KW_WIRE_INDEX_FULL);
    assert_int_equal(bytes, 0);
    assert_int_equal(kw_wire_index_choose(512, pos + 100, 50, KW_WIRE_INDEX_AUTO, &enc, &bytes), 0);
    assert_int_equal(enc, KW_WIRE_INDEX_RANGE);
    assert_int_equal(bytes, 4);
    /* 100 of 512 scattered: bitmap (64) beats varint (>= 100) and u16 (200) */
    for (uint32_t i = 0; i < 100; ++i)
        pos[i] = i * 5 + 1;
    assert_int_equal(kw_wire_index_choose(512, pos, 100, KW_WIRE_INDEX_AUTO, &enc, &bytes), 0);
    assert_int_equal(enc, KW_WIRE_INDEX_BITMAP);
    assert_int_equal(bytes, 64);
    /* 20 of 512 with gaps < 128: varint, one byte each */
    for (uint32_t i = 0; i < 20; ++i)
        pos[i] = i * 20 + 3;
    assert_int_equal(kw_wire_index_choose(512, pos, 20, KW_WIRE_INDEX_AUTO, &enc, &bytes), 0);
    assert_int_equal(enc, KW_WIRE_INDEX_VARINT);
    assert_int_equal(bytes, 20);
    /* a tie: 2 tokens far apart of 32 positions: u16 = 4, bitmap = 4, varint = 2 -> varint; of 16 positions:
     * bitmap 2 = varint 2 -> bitmap (lower id) */
    pos[0] = 1;
    pos[1] = 14;
    assert_int_equal(kw_wire_index_choose(16, pos, 2, KW_WIRE_INDEX_AUTO, &enc, &bytes), 0);
    assert_int_equal(enc, KW_WIRE_INDEX_BITMAP);
    /* positions beyond 65535: no u16, u32 may win over varint when gaps are large */
    pos[0] = 70000;
    pos[1] = 9000000;
    assert_int_equal(kw_wire_index_choose(10000000, pos, 2, KW_WIRE_INDEX_U16, &enc, &bytes), KW_E_INVALID_ARG);
    assert_int_equal(kw_wire_index_choose(10000000, pos, 2, KW_WIRE_INDEX_AUTO, &enc, &bytes), 0);
    assert_int_equal(enc, KW_WIRE_INDEX_VARINT); /* 3 + 4 bytes < 8 */
    assert_int_equal(bytes, 7);
    /* invalid positions */
    pos[1] = 70000;
    assert_int_equal(kw_wire_index_choose(10000000, pos, 2, KW_WIRE_INDEX_AUTO, &enc, &bytes), KW_E_INVALID_ARG);
    pos[1] = 10000000;
    assert_int_equal(kw_wire_index_choose(10000000, pos, 2, KW_WIRE_INDEX_AUTO, &enc, &bytes), KW_E_INVALID_ARG);
    assert_int_equal(kw_wire_index_choose(100, pos, 2, KW_WIRE_INDEX_RANGE, &enc, &bytes), KW_E_INVALID_ARG);
}

/* The worked example of FORMAT.md §7.3, and that the encoder produces exactly the predicted size. */
static void test_sizes(void **state) {
    (void)state;
    const kw_wire_header hdr = {.n_layers = 28,
                                .n_sections = 28,
                                .n_kv_heads = 8,
                                .head_dim = 128,
                                .n_positions = 512,
                                .src_dtype = KW_WIRE_DTYPE_BF16};
    const kw_wire_policy pol = {.k = {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0},
                                .v = {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0},
                                .index_encoding = KW_WIRE_INDEX_AUTO};
    size_t sz, bound;
    assert_int_equal(kw_wire_section_size(&hdr, &pol, 512, NULL, &sz), 0);
    assert_int_equal(sz, 540724);
    assert_int_equal(KW_WIRE_HEADER_BYTES + 28 * sz + KW_WIRE_TRAILER_BYTES, 15140360);
    assert_int_equal(kw_wire_section_bound(&hdr, &pol, 512, &bound), 0);
    assert_int_equal(bound, sz + 64); /* bitmap worst case */
    /* all 28 layers encoded for real */
    wt_rng r = {1};
    layer l;
    layer_alloc(&l, 8, 512, 128, KW_WIRE_DTYPE_BF16, LAYOUT_HTD);
    gen_random(&l, &r);
    kw_wire_layer_in ins[28];
    kw_wire_policy pols[28];
    layer_store(&l, 0);
    for (uint32_t i = 0; i < 28; ++i) {
        ins[i] = l.in;
        ins[i].layer = i;
        pols[i] = pol;
    }
    uint8_t *blob = NULL;
    size_t size = 0;
    assert_int_equal(wt_encode_blob(&hdr, ins, pols, 28, 0, &blob, &size), 0);
    assert_int_equal(size, 15140360);
    wt_blob_out o;
    assert_int_equal(wt_decode_oneshot(blob, size, NULL, &o), 0);
    /* header, group tables, index blocks, markers and checksums: 1544 bytes (0.010%) */
    assert_int_equal(o.bd.header + o.bd.indices + o.bd.checksums, 1544);
    assert_int_equal(o.bd.payload, 28u * 2 * 262144);
    assert_int_equal(o.bd.scales, 28u * 2 * 8192);
    wt_blob_out_free(&o);
    free(blob);
    layer_free(&l);
}

static void test_compression(void **state) {
    (void)state;
    wt_rng r = {31};
    const uint32_t H = 2, T = 64, D = 64;
    const kw_wire_header hdr = make_header(H, D, T, KW_WIRE_DTYPE_BF16, 1);
    for (int compressible = 0; compressible < 2; ++compressible) {
        layer l;
        layer_alloc(&l, H, T, D, KW_WIRE_DTYPE_BF16, LAYOUT_HTD);
        for (int kv = 0; kv < 2; ++kv) /* uniform values: near-uniform int8 codes, which zstd cannot shrink */
            for (size_t i = 0; i < (size_t)H * T * D; ++i)
                l.val[kv][i] = kw_round_bf16(wt_uniform(&r));
        if (compressible) /* the same row everywhere */
            for (int kv = 0; kv < 2; ++kv)
                for (size_t i = 0; i < (size_t)H * T * D; ++i)
                    l.val[kv][i] = l.val[kv][i % D];
        layer_store(&l, 0);
        kw_wire_policy pol = {.k = {KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0},
                              .v = {KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0}};
        uint8_t *plain = NULL, *packed = NULL;
        size_t plain_size = 0, packed_size = 0;
        assert_int_equal(wt_encode_blob(&hdr, &l.in, &pol, 1, 0, &plain, &plain_size), 0);
        pol.zstd_level = 5;
        assert_int_equal(wt_encode_blob(&hdr, &l.in, &pol, 1, 0, &packed, &packed_size), 0);
        wt_blob_out a, b;
        assert_int_equal(wt_decode_oneshot(plain, plain_size, NULL, &a), 0);
        assert_int_equal(wt_decode_stream(packed, packed_size, NULL, 3, &b), 0);
        assert_int_equal(b.layers[0].compressed, compressible);
        assert_int_equal(b.bd.compressed_sections, compressible);
        if (compressible) {
            assert_true(packed_size < plain_size / 4);
            assert_int_equal(b.bd.compression_saved, plain_size - packed_size);
        } else {
            assert_int_equal(packed_size, plain_size); /* random int8 codes do not compress: stored raw */
            assert_memory_equal(packed, plain, plain_size);
        }
        /* same values either way */
        assert_memory_equal(a.layers[0].k, b.layers[0].k, (size_t)H * T * D * 4);
        assert_memory_equal(a.layers[0].v, b.layers[0].v, (size_t)H * T * D * 4);
        wt_blob_out_free(&a);
        wt_blob_out_free(&b);
        free(plain);
        free(packed);
        layer_free(&l);
    }
}

/* Same values, any layout or ISA: the same bytes. */
static void test_determinism(void **state) {
    (void)state;
    wt_rng r = {17};
    const uint32_t H = 4, T = 33, D = 128, P = 1000;
    const kw_wire_header hdr = make_header(H, D, P, KW_WIRE_DTYPE_BF16, 1);
    layer l;
    layer_alloc(&l, H, T, D, KW_WIRE_DTYPE_BF16, LAYOUT_HTD);
    wt_sample_positions(&r, P, T, l.positions);
    gen_random(&l, &r);
    const kw_wire_policy pol = {.k = {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_BF16, 5},
                                .v = {KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0},
                                .zstd_level = 3};
    uint8_t *first = NULL;
    size_t first_size = 0;
    for (int layout = 0; layout < LAYOUT_COUNT; ++layout)
        for (uint8_t isa = KW_WIRE_ISA_AUTO; isa <= KW_WIRE_ISA_AVX512; ++isa) {
            l.layout = layout;
            layer_store(&l, 0);
            uint8_t *blob = NULL;
            size_t size = 0;
            const int rc = wt_encode_blob(&hdr, &l.in, &pol, 1, isa, &blob, &size);
            if (rc < 0) fail_msg("%s: %s", kw_status_name(rc), kw_error_detail());
            if (!first) {
                first = blob;
                first_size = size;
                continue;
            }
            assert_int_equal(size, first_size);
            assert_memory_equal(blob, first, size);
            free(blob);
        }
    free(first);
    layer_free(&l);
}

static void test_empty_blob(void **state) {
    (void)state;
    const kw_wire_header hdr = make_header(2, 8, 5, KW_WIRE_DTYPE_BF16, 0);
    uint8_t *blob = NULL;
    size_t size = 0;
    assert_int_equal(wt_encode_blob(&hdr, NULL, NULL, 0, 0, &blob, &size), 0);
    assert_int_equal(size, KW_WIRE_HEADER_BYTES + KW_WIRE_TRAILER_BYTES);
    wt_blob_out o;
    assert_int_equal(wt_decode_stream(blob, size, NULL, 1, &o), 0);
    assert_int_equal(o.n, 0);
    assert_int_equal(o.bd.total, size);
    wt_blob_out_free(&o);
    free(blob);
}

static void test_encoder_misuse(void **state) {
    (void)state;
    wt_rng r = {3};
    const kw_wire_header hdr = make_header(1, 8, 10, KW_WIRE_DTYPE_F32, 2);
    layer l;
    layer_alloc(&l, 1, 3, 8, KW_WIRE_DTYPE_F32, LAYOUT_HTD);
    gen_random(&l, &r);
    layer_store(&l, 3);
    kw_wire_policy pol = {.k = {KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0},
                          .v = {KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0}};
    uint8_t buf[2048];
    size_t w;
    kw_wire_encoder *e;
    assert_int_equal(kw_wire_encoder_create(&hdr, NULL, &e), 0);
    assert_int_equal(kw_wire_encoder_write_section(e, &l.in, &pol, buf, sizeof buf, &w), KW_E_STATE);
    assert_int_equal(kw_wire_encoder_write_trailer(e, buf, sizeof buf, &w), KW_E_STATE);
    assert_int_equal(kw_wire_encoder_write_header(e, buf, 63, &w), KW_E_BUFFER_TOO_SMALL);
    assert_int_equal(kw_wire_encoder_write_header(e, buf, sizeof buf, &w), 0);
    assert_int_equal(kw_wire_encoder_write_header(e, buf, sizeof buf, &w), KW_E_STATE);
    size_t need;
    assert_int_equal(kw_wire_section_size(&hdr, &pol, 3, l.positions, &need), 0);
    assert_int_equal(kw_wire_encoder_write_section(e, &l.in, &pol, buf, need - 1, &w), KW_E_BUFFER_TOO_SMALL);
    kw_wire_policy badpol = pol;
    badpol.k.scale_dtype = 9;
    assert_int_equal(kw_wire_encoder_write_section(e, &l.in, &badpol, buf, sizeof buf, &w), KW_E_INVALID_ARG);
    badpol = pol;
    badpol.k = (kw_wire_codec_spec){KW_WIRE_CODEC_BF16, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0};
    assert_int_equal(kw_wire_encoder_write_section(e, &l.in, &badpol, buf, sizeof buf, &w), KW_E_INVALID_ARG);
    badpol = pol;
    badpol.v = (kw_wire_codec_spec){KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_F16, 4}; /* G=16 > D=8 */
    assert_int_equal(kw_wire_encoder_write_section(e, &l.in, &badpol, buf, sizeof buf, &w), KW_E_INVALID_ARG);
    badpol = pol;
    badpol.zstd_level = 1000;
    assert_int_equal(kw_wire_encoder_write_section(e, &l.in, &badpol, buf, sizeof buf, &w), KW_E_INVALID_ARG);
    l.positions[1] = l.positions[0];
    assert_int_equal(kw_wire_encoder_write_section(e, &l.in, &pol, buf, sizeof buf, &w), KW_E_INVALID_ARG);
    l.positions[1] = 1;
    l.in.layer = 8;
    assert_int_equal(kw_wire_encoder_write_section(e, &l.in, &pol, buf, sizeof buf, &w), KW_E_INVALID_ARG);
    l.in.layer = 3;
    assert_int_equal(kw_wire_encoder_write_section(e, &l.in, &pol, buf, sizeof buf, &w), 0);
    assert_int_equal(kw_wire_encoder_write_section(e, &l.in, &pol, buf, sizeof buf, &w), KW_E_INVALID_ARG); /* again */
    assert_int_equal(kw_wire_encoder_write_trailer(e, buf, sizeof buf, &w), KW_E_STATE); /* 1 of 2 sections */
    l.in.layer = 5;
    assert_int_equal(kw_wire_encoder_write_section(e, &l.in, &pol, buf, sizeof buf, &w), 0);
    l.in.layer = 6;
    assert_int_equal(kw_wire_encoder_write_section(e, &l.in, &pol, buf, sizeof buf, &w), KW_E_STATE); /* 3 of 2 */
    assert_int_equal(kw_wire_encoder_write_trailer(e, buf, sizeof buf, &w), 0);
    kw_wire_encoder_destroy(e);
    kw_wire_encoder_destroy(NULL);
    kw_wire_header bad = hdr;
    bad.head_dim = 12;
    assert_int_equal(kw_wire_encoder_create(&bad, NULL, &e), KW_E_INVALID_ARG);
    bad = hdr;
    bad.n_sections = 9;
    assert_int_equal(kw_wire_encoder_create(&bad, NULL, &e), KW_E_INVALID_ARG);
    layer_free(&l);
}

/* v1.1: exact reconstruction where the values are representable (s = 1 and z = min), and the version rules of the
 * encoder (v1.1 features need a v1.1 header; invalid v1.1 specs are refused). */
static void test_v11(void **state) {
    (void)state;
    wt_rng r = {1111};
    const uint8_t zp = KW_WIRE_SCALE_ZERO_POINTS;
    static const struct {
        kw_wire_codec_spec spec;
        int lo, hi; /* integer values in [lo, hi], both present in every scale's set */
    } exact[] = {
        {{KW_WIRE_CODEC_INT2, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F32 | zp, 0}, -1, 2},
        {{KW_WIRE_CODEC_INT2, KW_WIRE_GRAN_CHANNEL, KW_WIRE_SCALE_F16 | zp, 2}, 5, 8},
        {{KW_WIRE_CODEC_INT3, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F32, 0}, -3, 3},
        {{KW_WIRE_CODEC_INT3, KW_WIRE_GRAN_CHANNEL, KW_WIRE_SCALE_BF16 | zp, 3}, -100, -93},
        {{KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F32 | zp, 0}, 0, 255},
        {{KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_F16 | zp, 3}, -8, 7},
    };
    for (size_t c = 0; c < sizeof exact / sizeof exact[0]; ++c) {
        const uint32_t H = 2, T = 8, D = 16;
        layer l;
        layer_alloc(&l, H, T, D, KW_WIRE_DTYPE_F32, LAYOUT_THD);
        const int chan = exact[c].spec.granularity == KW_WIRE_GRAN_CHANNEL;
        for (int kv = 0; kv < 2; ++kv)
            for (uint32_t h = 0; h < H; ++h)
                for (uint32_t t = 0; t < T; ++t)
                    for (uint32_t d = 0; d < D; ++d) {
                        /* the extremes at d 0 and 1 of every row (token and group scales) or at tokens 0 and 1 of
                         * every run (channel scales); the rest random in between */
                        const uint32_t k = chan ? t % (1u << exact[c].spec.group_log2) : d % 8;
                        const int v = k == 0 ? exact[c].lo
                                      : k == 1
                                          ? exact[c].hi
                                          : exact[c].lo + (int)wt_below(&r, (uint32_t)(exact[c].hi - exact[c].lo + 1));
                        l.val[kv][idx(&l, h, t, d)] = (float)v;
                    }
        layer_store(&l, 1);
        kw_wire_header hdr = make_header(H, D, T, KW_WIRE_DTYPE_F32, 1);
        hdr.version = KW_WIRE_VERSION_1_1;
        const kw_wire_policy pol = {.k = exact[c].spec, .v = exact[c].spec};
        assert_true(kw_wire_policy_needs_v11(&pol));
        roundtrip(&hdr, &l, &pol, 1);
        wt_blob_out o;
        uint8_t *blob = NULL;
        size_t size = 0;
        assert_int_equal(wt_encode_blob(&hdr, &l.in, &pol, 1, 0, &blob, &size), 0);
        assert_int_equal(wt_decode_oneshot(blob, size, NULL, &o), 0);
        for (size_t e = 0; e < (size_t)H * T * D; ++e)
            if (o.layers[0].k[e] != l.val[0][e] || o.layers[0].v[e] != l.val[1][e])
                fail_msg("case %zu element %zu: %a %a, expected %a %a", c, e, o.layers[0].k[e], o.layers[0].v[e],
                         l.val[0][e], l.val[1][e]);
        wt_blob_out_free(&o);
        free(blob);
        layer_free(&l);
    }
    /* version rules */
    layer l;
    layer_alloc(&l, 1, 3, 8, KW_WIRE_DTYPE_F32, LAYOUT_HTD);
    gen_random(&l, &r);
    layer_store(&l, 0);
    const kw_wire_codec_spec ok = {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0};
    const kw_wire_codec_spec needs[] = {
        {KW_WIRE_CODEC_INT3, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0},
        {KW_WIRE_CODEC_INT2, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0},
        {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_CHANNEL, KW_WIRE_SCALE_F16, 1},
        {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16 | zp, 0},
    };
    const kw_wire_codec_spec invalid[] = {
        {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_E8M0 | zp, 0},  /* e8m0 zero points */
        {KW_WIRE_CODEC_NF4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16 | zp, 0},    /* not an integer codec */
        {KW_WIRE_CODEC_BF16, 0, zp, 0},                                        /* passthrough */
        {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_CHANNEL, KW_WIRE_SCALE_F16, 25},     /* L > 2^24 */
        {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16 | 0x10, 0}, /* reserved bit */
        {KW_WIRE_CODEC_COUNT_V11, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0},   /* unknown codec */
    };
    kw_wire_header v1 = make_header(1, 8, 3, KW_WIRE_DTYPE_F32, 1), v11 = v1;
    v11.version = KW_WIRE_VERSION_1_1;
    uint8_t *blob = NULL;
    size_t size = 0, sz;
    for (size_t i = 0; i < sizeof needs / sizeof needs[0]; ++i) {
        const kw_wire_policy pol = {.k = ok, .v = needs[i]};
        assert_true(kw_wire_spec_needs_v11(&needs[i]));
        assert_int_equal(kw_wire_section_size(&v1, &pol, 3, NULL, &sz), KW_E_INVALID_ARG);
        assert_int_equal(wt_encode_blob(&v1, &l.in, &pol, 1, 0, &blob, &size), KW_E_INVALID_ARG);
        assert_non_null(strstr(kw_error_detail(), "v1.1"));
        assert_int_equal(wt_encode_blob(&v11, &l.in, &pol, 1, 0, &blob, &size), 0);
        assert_int_equal(kw_load_le16(blob + 8), KW_WIRE_VERSION_1_1);
        free(blob);
    }
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; ++i) {
        const kw_wire_policy pol = {.k = invalid[i], .v = ok};
        assert_int_equal(kw_wire_section_size(&v11, &pol, 3, NULL, &sz), KW_E_INVALID_ARG);
    }
    /* a v1.1 header with v1 codecs only is still a valid v1.1 blob; a v1 one writes version 1 */
    const kw_wire_policy plain = {.k = ok, .v = ok};
    assert_false(kw_wire_policy_needs_v11(&plain));
    assert_int_equal(wt_encode_blob(&v11, &l.in, &plain, 1, 0, &blob, &size), 0);
    assert_int_equal(kw_load_le16(blob + 8), KW_WIRE_VERSION_1_1);
    free(blob);
    assert_int_equal(wt_encode_blob(&v1, &l.in, &plain, 1, 0, &blob, &size), 0);
    assert_int_equal(kw_load_le16(blob + 8), KW_WIRE_VERSION);
    free(blob);
    kw_wire_header two = v1;
    two.version = 2;
    kw_wire_encoder *e;
    assert_int_equal(kw_wire_encoder_create(&two, NULL, &e), KW_E_INVALID_ARG);
    layer_free(&l);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matrix),       cmocka_unit_test(test_adversarial),    cmocka_unit_test(test_nonfinite),
        cmocka_unit_test(test_range),        cmocka_unit_test(test_token_groups),   cmocka_unit_test(test_index_choice),
        cmocka_unit_test(test_sizes),        cmocka_unit_test(test_compression),    cmocka_unit_test(test_determinism),
        cmocka_unit_test(test_empty_blob),   cmocka_unit_test(test_encoder_misuse), cmocka_unit_test(test_v11),
        cmocka_unit_test(test_token_blocks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
