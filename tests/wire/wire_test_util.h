/* wire_test_util.h: helpers shared by the KVWire tests, the golden-blob generator and the fuzz drivers: a seeded
 * RNG, whole-blob encoding into a new buffer, and whole-blob decoding (one-shot or in chunks of a given pattern) into
 * plain arrays that tests compare. Header-only, static functions; test code, not library code (it aborts on
 * allocation failure). */
#ifndef KW_WIRE_TEST_UTIL_H
#define KW_WIRE_TEST_UTIL_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wire/kw_wire.h"

// ---------------------------------------------------------------------------------------------------------------
// RNG (splitmix64): the same numbers on every platform

typedef struct wt_rng {
    uint64_t s;
} wt_rng;

static inline uint64_t wt_next(wt_rng *r) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [0, n). */
static inline uint32_t wt_below(wt_rng *r, uint32_t n) {
    return (uint32_t)(wt_next(r) % n);
}

/* Uniform in [-1, 1), a multiple of 2^-23: exact and platform independent. */
static inline float wt_uniform(wt_rng *r) {
    return (float)((int32_t)(wt_next(r) >> 40) - (1 << 23)) * 0x1p-23f;
}

/* A bell-shaped value (sum of four uniforms, variance 4/3), exact arithmetic on dyadic values. */
static inline float wt_bell(wt_rng *r) {
    return wt_uniform(r) + wt_uniform(r) + wt_uniform(r) + wt_uniform(r);
}

static inline void *wt_xmalloc(size_t n) {
    void *p = calloc(1, n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory (%zu bytes)\n", n);
        abort();
    }
    return p;
}

/* Strictly increasing random sample of T positions out of P (T <= P). */
static inline void wt_sample_positions(wt_rng *r, uint32_t P, uint32_t T, uint32_t *out) {
    uint32_t need = T;
    for (uint32_t p = 0, i = 0; p < P && need; ++p)
        if (wt_below(r, P - p) < need) {
            out[i++] = p;
            --need;
        }
}

// ---------------------------------------------------------------------------------------------------------------
// Encoding a whole blob

/* Encodes the header and n layers (layer i with policy pols[i]) into a new buffer (*blob, free()). */
static inline int wt_encode_blob(const kw_wire_header *hdr, const kw_wire_layer_in *layers, const kw_wire_policy *pols,
                                 uint32_t n, uint8_t isa, uint8_t **blob, size_t *size) {
    size_t cap = KW_WIRE_HEADER_BYTES + KW_WIRE_TRAILER_BYTES;
    for (uint32_t i = 0; i < n; ++i) {
        size_t s;
        const int rc = kw_wire_section_size(hdr, &pols[i], layers[i].n_tokens, layers[i].positions, &s);
        if (rc < 0) return rc;
        cap += s;
    }
    kw_wire_encoder_options opt = {.isa = isa};
    kw_wire_encoder *enc;
    int rc = kw_wire_encoder_create(hdr, &opt, &enc);
    if (rc < 0) return rc;
    uint8_t *buf = wt_xmalloc(cap);
    size_t at = 0, w;
    rc = kw_wire_encoder_write_header(enc, buf, cap, &w);
    at += w;
    for (uint32_t i = 0; rc == 0 && i < n; ++i) {
        rc = kw_wire_encoder_write_section(enc, &layers[i], &pols[i], buf + at, cap - at, &w);
        if (rc == 0) at += w;
    }
    if (rc == 0) rc = kw_wire_encoder_write_trailer(enc, buf + at, cap - at, &w);
    if (rc == 0) at += w;
    kw_wire_encoder_destroy(enc);
    if (rc < 0) {
        free(buf);
        return rc;
    }
    *blob = buf;
    *size = at;
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Decoding a whole blob

typedef struct wt_layer_out {
    uint32_t layer, n_tokens;
    uint32_t *positions; /* (T) */
    float *k, *v;        /* (H, T, D) f32 */
    uint16_t *kb, *vb;   /* (H, T, D) bf16 output of the same section */
    uint8_t compressed, index_encoding;
} wt_layer_out;

typedef struct wt_blob_out {
    kw_wire_header hdr;
    uint32_t n;
    wt_layer_out *layers;
    kw_wire_breakdown bd;
} wt_blob_out;

static inline void wt_blob_out_free(wt_blob_out *o) {
    for (uint32_t i = 0; i < o->n; ++i) {
        free(o->layers[i].positions);
        free(o->layers[i].k);
        free(o->layers[i].v);
        free(o->layers[i].kb);
        free(o->layers[i].vb);
    }
    free(o->layers);
    memset(o, 0, sizeof *o);
}

/* Copies a verified section into o (positions, K/V as f32 and as bf16). Returns a status. */
static inline int wt_take_section(const kw_wire_header *hdr, const kw_wire_section *s, wt_blob_out *o) {
    o->layers = realloc(o->layers, (o->n + 1) * sizeof *o->layers);
    if (!o->layers) abort();
    wt_layer_out *l = &o->layers[o->n++];
    memset(l, 0, sizeof *l);
    const size_t H = hdr->n_kv_heads, D = hdr->head_dim, T = s->n_tokens;
    l->layer = s->layer;
    l->n_tokens = s->n_tokens;
    l->compressed = s->compressed;
    l->index_encoding = s->index_encoding;
    l->positions = wt_xmalloc(T * 4);
    l->k = wt_xmalloc(H * T * D * 4);
    l->v = wt_xmalloc(H * T * D * 4);
    l->kb = wt_xmalloc(H * T * D * 2);
    l->vb = wt_xmalloc(H * T * D * 2);
    int rc = kw_wire_section_positions(s, l->positions, T);
    if (rc < 0) return rc;
    const kw_wire_tensor_out k = {l->k, KW_WIRE_DTYPE_F32, T * D, D}, v = {l->v, KW_WIRE_DTYPE_F32, T * D, D};
    rc = kw_wire_section_dequantize(s, &k, &v);
    if (rc < 0) return rc;
    const kw_wire_tensor_out kb = {l->kb, KW_WIRE_DTYPE_BF16, T * D, D}, vb = {l->vb, KW_WIRE_DTYPE_BF16, T * D, D};
    return kw_wire_section_dequantize(s, &kb, &vb);
}

/* Decodes a blob with the streaming decoder, feeding it in chunks: chunk 0 means all at once, otherwise chunk sizes
 * cycle through 1..chunk (chunk 1: one byte at a time). Returns 0 or the first error. o is filled with what was
 * decoded before any error. */
static inline int wt_decode_stream(const uint8_t *blob, size_t size, const kw_wire_decoder_options *opt, size_t chunk,
                                   wt_blob_out *o) {
    memset(o, 0, sizeof *o);
    kw_wire_decoder *d;
    int rc = kw_wire_decoder_create(opt, &d);
    if (rc < 0) return rc;
    size_t at = 0, step = 0;
    while (rc >= 0) {
        size_t n = size - at;
        if (chunk) {
            const size_t c = 1 + step++ % chunk;
            n = n < c ? n : c;
        }
        size_t off = 0;
        do {
            size_t used = 0;
            rc = kw_wire_decoder_feed(d, blob + at + off, n - off, &used);
            off += used;
            if (rc == KW_WIRE_EVENT_HEADER) o->hdr = *kw_wire_decoder_header(d);
            if (rc == KW_WIRE_EVENT_SECTION) {
                const int r = wt_take_section(&o->hdr, kw_wire_decoder_section(d), o);
                if (r < 0) rc = r;
            }
        } while (rc > 0 && off < n);
        at += off;
        if (rc < 0) break;
        if (at == size) {
            rc = kw_wire_decoder_finish(d);
            break;
        }
    }
    o->bd = *kw_wire_decoder_breakdown(d);
    kw_wire_decoder_destroy(d);
    return rc;
}

/* Decodes a blob with the one-shot reader. */
static inline int wt_decode_oneshot(const uint8_t *blob, size_t size, const kw_wire_decoder_options *opt,
                                    wt_blob_out *o) {
    memset(o, 0, sizeof *o);
    kw_wire_reader *r;
    const kw_wire_header *hdr;
    int rc = kw_wire_reader_open(blob, size, opt, &r, &hdr);
    if (rc < 0) return rc;
    o->hdr = *hdr;
    const kw_wire_section *s;
    while ((rc = kw_wire_reader_next(r, &s)) == 1) {
        rc = wt_take_section(&o->hdr, s, o);
        if (rc < 0) break;
    }
    o->bd = *kw_wire_reader_breakdown(r);
    kw_wire_reader_close(r);
    return rc;
}

/* The header of a one-layer, one-section blob of f32 rows: heads x head_dim, positions rows, the given version. */
static inline kw_wire_header wt_one_section_header(uint32_t heads, uint32_t head_dim, uint32_t positions,
                                                   uint16_t version) {
    return (kw_wire_header){.n_layers = 1,
                            .n_sections = 1,
                            .n_kv_heads = (uint16_t)heads,
                            .head_dim = (uint16_t)head_dim,
                            .n_positions = positions,
                            .src_dtype = KW_WIRE_DTYPE_F32,
                            .version = version};
}

/* Encodes a one-section blob whose K and V are both x (f32 [h][t][d], every one of hdr's n_positions rows of each
 * head) under pol with ISA isa: wt_encode_blob's result; on success *o, if not NULL, gets the blob's one-shot decoding
 * (a failure there is returned). */
static inline int wt_encode_same_kv(const kw_wire_header *hdr, const float *x, const kw_wire_policy *pol, uint8_t isa,
                                    uint8_t **blob, size_t *size, wt_blob_out *o) {
    kw_wire_layer_in in = {.layer = 0, .n_tokens = hdr->n_positions};
    in.k = (kw_wire_tensor_in){x, (size_t)hdr->n_positions * hdr->head_dim, hdr->head_dim, NULL};
    in.v = in.k;
    const int rc = wt_encode_blob(hdr, &in, pol, 1, isa, blob, size);
    return rc < 0 || !o ? rc : wt_decode_oneshot(*blob, *size, NULL, o);
}

/* 1 if policies a and b encode x (as wt_encode_same_kv, default ISA) into the same bytes, 0 if not or if either
 * fails. */
static inline int wt_same_blob(const kw_wire_header *hdr, const float *x, const kw_wire_policy *a,
                               const kw_wire_policy *b) {
    uint8_t *ba = NULL, *bb = NULL;
    size_t na = 0, nb = 0;
    const int ok = wt_encode_same_kv(hdr, x, a, 0, &ba, &na, NULL) == 0 &&
                   wt_encode_same_kv(hdr, x, b, 0, &bb, &nb, NULL) == 0 && na == nb && memcmp(ba, bb, na) == 0;
    free(ba);
    free(bb);
    return ok;
}

/* 1 if x under pol (as wt_encode_same_kv) encodes into want (n bytes) with the scalar, AVX2 and AVX-512 kernels
 * alike (an ISA the CPU lacks runs as the best it has), 0 if not or on a failure. */
static inline int wt_same_on_every_isa(const kw_wire_header *hdr, const float *x, const kw_wire_policy *pol,
                                       const uint8_t *want, size_t n) {
    static const uint8_t isas[] = {KW_WIRE_ISA_SCALAR, KW_WIRE_ISA_AVX2, KW_WIRE_ISA_AVX512};
    int ok = 1;
    for (size_t j = 0; j < sizeof isas && ok; ++j) {
        uint8_t *b = NULL;
        size_t size = 0;
        ok = wt_encode_same_kv(hdr, x, pol, isas[j], &b, &size, NULL) == 0 && size == n && memcmp(b, want, n) == 0;
        free(b);
    }
    return ok;
}

static inline int wt_header_equal(const kw_wire_header *a, const kw_wire_header *b) {
    return a->n_layers == b->n_layers && a->n_sections == b->n_sections && a->n_kv_heads == b->n_kv_heads &&
           a->head_dim == b->head_dim && a->n_positions == b->n_positions && a->src_dtype == b->src_dtype &&
           a->model_id == b->model_id && a->policy_id == b->policy_id &&
           (a->version == KW_WIRE_VERSION_1_1) == (b->version == KW_WIRE_VERSION_1_1);
}

/* 1 if two decodes are identical (bitwise values). */
static inline int wt_blob_out_equal(const wt_blob_out *a, const wt_blob_out *b) {
    if (a->n != b->n || memcmp(&a->bd, &b->bd, sizeof a->bd) != 0) return 0;
    if (!wt_header_equal(&a->hdr, &b->hdr)) return 0;
    const size_t HD = (size_t)a->hdr.n_kv_heads * a->hdr.head_dim;
    for (uint32_t i = 0; i < a->n; ++i) {
        const wt_layer_out *x = &a->layers[i], *y = &b->layers[i];
        if (x->layer != y->layer || x->n_tokens != y->n_tokens) return 0;
        const size_t n = HD * x->n_tokens;
        if (memcmp(x->positions, y->positions, x->n_tokens * 4) || memcmp(x->k, y->k, n * 4) ||
            memcmp(x->v, y->v, n * 4) || memcmp(x->kb, y->kb, n * 2) || memcmp(x->vb, y->vb, n * 2))
            return 0;
    }
    return 1;
}

// ---------------------------------------------------------------------------------------------------------------
// Independent statements of the scale rule and the error bound (FORMAT.md §5.4)

/* The stored scale for amax, recomputed in double from the rule's definition: 0 and *s, or KW_E_WIRE_RANGE. */
static inline int wt_expected_scale(float amax, float qmax, uint32_t sd, float *s) {
    if (amax == 0.0f) {
        *s = 0.0f;
        return 0;
    }
    if (sd == KW_WIRE_SCALE_LOG8) { /* the smallest byte b >= 1 with fl32(2^((b-128)/8)) * qmax >= amax, by scan */
        for (int b = 1; b < 256; ++b) {
            const float v = (float)exp2(((double)b - 128.0) / 8.0);
            if (v * qmax >= amax) {
                *s = v;
                return 0;
            }
        }
        return KW_E_WIRE_RANGE;
    }
    const float rr = (float)((double)amax / qmax); /* = fl32(amax / qmax): double rounding is exact for division */
    float e;
    switch (sd) {
    case KW_WIRE_SCALE_F16:
        e = kw_round_f16(rr);
        break;
    case KW_WIRE_SCALE_BF16:
        e = kw_round_bf16(rr);
        break;
    case KW_WIRE_SCALE_F32:
        e = rr;
        break;
    default:
        e = rr > 0x1p127f ? INFINITY : kw_e8m0_to_f32(kw_e8m0_ceil(rr));
        break;
    }
    if (isfinite(e) && e < kw_wire_scale_min(sd)) e = kw_wire_scale_min(sd);
    if (!isfinite(e) || (double)qmax * e > KW_WIRE_BF16_MAX) return KW_E_WIRE_RANGE;
    *s = e;
    return 0;
}

/* The per-element error bound for a quantizing codec: x input, xh decoded (f32), s the stored scale. */
static inline double wt_element_bound(uint32_t codec, double x, double xh, double s, double qmax) {
    const double y = fmin(fmax(x / s, -qmax), qmax);            /* the clamped scaled value */
    const double clip = fabs(x) - qmax * s;                     /* > 0 only when the stored scale was rounded down */
    const double mul = s * qmax * 0x1p-22 + fabs(xh) * 0x1p-24; /* fl32(x*inv) and fl32(q*s) rounding */
    double step_half;                                           /* half the distance between neighbouring codes */
    switch (codec) {
    case KW_WIRE_CODEC_NF4: {
        uint32_t i = 0;
        while (i < 14 && kw_wire_nf4_value(i + 1) < y)
            ++i;
        step_half = (kw_wire_nf4_value(i + 1) - kw_wire_nf4_value(i)) / 2;
        break;
    }
    case KW_WIRE_CODEC_E4M3:
        step_half = fmax(fabs(y) * 0x1p-4, 0x1p-10);
        break;
    case KW_WIRE_CODEC_E5M2:
        step_half = fmax(fabs(y) * 0x1p-3, 0x1p-17);
        break;
    default:
        step_half = 0.5;
        break; /* integer codecs: half a step of s */
    }
    return fmax(s * step_half, clip) + mul;
}

#endif /* KW_WIRE_TEST_UTIL_H */
