/* kw_wire_outliers.c: the outlier side table of KVWire v1.1 (docs/FORMAT.md §5.10): which elements of a layer's K
 * and V an encoder sends exact (kw_wire_outlier_select), the table's size, writer and validator, and its application
 * to decoded rows. A table lists elements by number in one ascending sequence over K then V, as LEB128 gaps, then
 * their values in one dtype.
 *
 * Not here: leaving the chosen elements out of the scales (the encoder's general path, kw_wire_encode.c).
 */
#include "wire/kw_wire_internal.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_bytes.h"
#include "common/kw_fp8.h"

// ---------------------------------------------------------------------------------------------------------------
// Element numbers and varints

/* Elements of one layer's K and V together: 2*H*T*D. */
static uint64_t kw__out_elems(const kw_wire_header *hdr, uint32_t n_tokens) {
    return 2ull * hdr->n_kv_heads * n_tokens * hdr->head_dim;
}

static uint32_t kw__out_varint_len64(uint64_t v) {
    uint32_t n = 1;
    while (v >= 0x80u) {
        v >>= 7;
        ++n;
    }
    return n;
}

static uint8_t *kw__out_varint_put64(uint8_t *p, uint64_t v) {
    while (v >= 0x80u) {
        *p++ = (uint8_t)(v | 0x80u);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

/* Reads one minimal LEB128 varint of at most 10 bytes from [p, end): the bytes read, or 0 if it runs past end, is
 * longer than needed (a last byte of 0 after the first) or does not fit 64 bits. */
static uint32_t kw__out_varint_get64(const uint8_t *p, const uint8_t *end, uint64_t *v) {
    uint64_t x = 0;
    for (uint32_t i = 0; i < 10 && p + i < end; ++i) {
        const uint64_t b = p[i];
        if (i == 9 && b > 1u) return 0;
        x |= (b & 0x7fu) << (7 * i);
        if (!(b & 0x80u)) {
            if (i > 0 && b == 0) return 0;
            *v = x;
            return i + 1;
        }
    }
    return 0;
}

size_t kw__wire_outlier_value_size(uint32_t dtype) {
    return kw__wire_dtype_size(dtype);
}

uint64_t kw__wire_outlier_table_bound(const kw_wire_header *hdr, uint32_t n_tokens, uint32_t count, uint32_t dtype) {
    const uint64_t elems = kw__out_elems(hdr, n_tokens), n = count < elems ? count : elems;
    const size_t vs = kw__wire_outlier_value_size(dtype ? dtype : hdr->src_dtype);
    return n == 0 ? 0 : KW__OUTLIER_HEAD_BYTES + n * (kw__out_varint_len64(elems - 1) + vs);
}

// ---------------------------------------------------------------------------------------------------------------
// Selection

/* The first value of row (h, t) of a view. */
static const void *kw__out_row(const kw_wire_tensor_in *in, uint32_t dtype, uint32_t h, uint32_t t) {
    const size_t row = in->rows ? in->rows[t] : t;
    return (const uint8_t *)in->data +
           (row * in->token_stride + (size_t)h * in->head_stride) * kw__wire_dtype_size(dtype);
}

/* The f32 value of element (h, t, d) of a view. */
static float kw__out_value(const kw_wire_tensor_in *in, uint32_t dtype, uint32_t h, uint32_t t, uint32_t d) {
    const size_t row = in->rows ? in->rows[t] : t;
    const size_t at = row * in->token_stride + (size_t)h * in->head_stride + d;
    float x;
    kw__wire_load_f32((const uint8_t *)in->data + at * kw__wire_dtype_size(dtype), dtype, 1, &x);
    return x;
}

/* A float's bits as an unsigned key in the float's order (-0 just below +0; no NaN here). */
static inline uint32_t kw__out_key(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return u & 0x80000000u ? ~u : u | 0x80000000u;
}

/* kw__out_scores for scales that each lie inside one row (token and group granularities): a batch of rows of one
 * head at a time, and the sums of the batch's scales as independent chains (element k of every scale, then k + 1),
 * each chain in its scale's element order, so the sums are the bits of the element-by-element passes while the
 * additions overlap instead of waiting on each other. */
static int kw__out_scores_rows(const kw__wire_kernels *kr, const kw_wire_header *hdr, const kw_wire_tensor_in *in,
                               const kw_wire_codec_spec *sp, uint32_t n_tokens, uint32_t t0, uint32_t tg,
                               float *scores) {
    const uint32_t H = hdr->n_kv_heads, D = hdr->head_dim, dt = hdr->src_dtype;
    const int asym = kw_wire_spec_asym(sp);
    const uint32_t run = sp->granularity == KW_WIRE_GRAN_GROUP ? 1u << sp->group_log2 : D, upr = D / run;
    /* rows per batch: up to 8, at most 2048 values and, unless a row alone has more, 64 scales */
    uint32_t R = 2048u / D < 8u ? 2048u / D : 8u;
    R = R * upr > 64u ? (upr >= 64u ? 1u : 64u / upr) : R;
    R = R ? R : 1u;
    float x[2048 > KW_WIRE_MAX_HEAD_DIM ? 2048 : KW_WIRE_MAX_HEAD_DIM];
    double c[KW_WIRE_MAX_HEAD_DIM], S[KW_WIRE_MAX_HEAD_DIM]; /* per scale of the batch: at most max(64, upr) */
    const double n = (double)run;
    for (uint32_t h = 0; h < H; ++h)
        for (uint32_t tb = 0; tb < tg; tb += R) {
            const uint32_t nb = tg - tb < R ? tg - tb : R, nu = nb * upr;
            for (uint32_t i = 0; i < nb; ++i) {
                float *xr = x + (size_t)i * D;
                kw__wire_load_f32(kw__out_row(in, dt, h, t0 + tb + i), dt, D, xr);
                uint32_t bad = 0;
                for (uint32_t d = 0; d < D; ++d)
                    bad |= !(xr[d] - xr[d] == 0.0f);
                KW_RETURN_IF(bad, KW_E_WIRE_NONFINITE, "head %u token %u holds NaN or Inf", h, t0 + tb + i);
            }
            /* the scales' rows are consecutive in scores (row (h, t) at (h*T + t)*D), as in x */
            float *sc = scores + ((size_t)h * n_tokens + t0 + tb) * D;
            if (run < 2) { /* scales of one value */
                memset(sc, 0, (size_t)nb * D * sizeof(float));
            } else {
                for (uint32_t j = 0; j < nu; ++j) /* the centres: the means with zero points, else 0 / n = 0 */
                    c[j] = S[j] = 0.0;
                if (asym) {
                    for (uint32_t k = 0; k < run; ++k)
                        for (uint32_t j = 0; j < nu; ++j)
                            c[j] += (double)x[(size_t)j * run + k];
                    for (uint32_t j = 0; j < nu; ++j)
                        c[j] /= n;
                }
                for (uint32_t k = 0; k < run; ++k)
                    for (uint32_t j = 0; j < nu; ++j) {
                        const double v = (double)x[(size_t)j * run + k] - c[j];
                        S[j] += v * v;
                    }
                for (uint32_t j = 0; j < nu; ++j)
                    kr->outlier_scores(x + (size_t)j * run, run, asym, n, c[j], S[j], sc + (size_t)j * run);
            }
        }
    return 0;
}

/* Writes the squared scores (same order as the scores) of one tensor of one token group (tokens [t0, t0 + tg) of
 * the section) at scores + (h*T + t)*D + d, t the section's token index. An element's score compares it with the other
 * values of its scale: (x - c')^2 / m', c' their centre (the mean with zero points, else 0), m' their mean square
 * deviation from c'. Leaving x out is what makes a spike stand out whatever the number of values a scale covers (with x
 * in, a lone spike among n values scores at most n - 1). Three passes: centres, sums of squared deviations, scores;
 * each sum in the scale's element order ([h][t][d]), in double; a spike among equal values scores FLT_MAX, a scale of
 * one value 0. */
static int kw__out_scores(const kw__wire_kernels *kr, const kw_wire_header *hdr, const kw_wire_tensor_in *in,
                          const kw_wire_codec_spec *sp, uint32_t n_tokens, uint32_t t0, uint32_t tg, float *scores) {
    const uint32_t H = hdr->n_kv_heads, D = hdr->head_dim, dt = hdr->src_dtype;
    if (kw_wire_codec_is_passthrough(sp->codec)) {
        for (uint32_t h = 0; h < H; ++h)
            for (uint32_t t = 0; t < tg; ++t)
                memset(scores + ((size_t)h * n_tokens + t0 + t) * D, 0, (size_t)D * sizeof(float));
        return 0;
    }
    if (sp->granularity == KW_WIRE_GRAN_TOKEN || sp->granularity == KW_WIRE_GRAN_GROUP)
        return kw__out_scores_rows(kr, hdr, in, sp, n_tokens, t0, tg, scores);
    /* head, layer and channel scales span rows: element by element, each scale's sums kept in acc */
    const int asym = kw_wire_spec_asym(sp);
    const uint64_t units = kw__wire_scale_count(sp, H, tg, D);
    double *acc = calloc((size_t)units * 3, sizeof(double)); /* count, centre, mean square deviation per scale */
    KW_RETURN_IF(!acc, KW_E_NOMEM, "outlier scores of %llu scales", (unsigned long long)units);
    /* an element's scale is base(h, t) + (d >> shift): the row's first, plus its channel */
    const uint32_t shift = sp->granularity == KW_WIRE_GRAN_CHANNEL ? 0u : 31u;
    float row[KW_WIRE_MAX_HEAD_DIM];
    /* a row's elements come in runs that share a scale (the whole row for head and layer scales): each run's sums are
     * carried in registers, added in the same order as element by element */
    const uint32_t run = shift >= 31u ? D : 1u;
    for (int pass = 0; pass < 3; ++pass)
        for (uint32_t h = 0; h < H; ++h)
            for (uint32_t t = 0; t < tg; ++t) {
                kw__wire_load_f32(kw__out_row(in, dt, h, t0 + t), dt, D, row);
                const uint64_t base = kw_wire_scale_index(sp->granularity, sp->group_log2, tg, D, h, t, 0);
                float *sc = scores + ((size_t)h * n_tokens + t0 + t) * D;
                for (uint32_t d0 = 0; d0 < D; d0 += run) {
                    double *a = acc + 3 * (base + (d0 >> shift));
                    if (pass == 0) { /* the centre: the mean with zero points (their scale spans min..max), else 0 */
                        double cnt = a[0], sum = a[1];
                        for (uint32_t d = d0; d < d0 + run; ++d) {
                            const float xf = row[d];
                            if (!(xf - xf == 0.0f)) {
                                free(acc);
                                KW_FAIL(KW_E_WIRE_NONFINITE, "head %u token %u holds NaN or Inf", h, t0 + t);
                            }
                            cnt += 1.0;
                            sum += asym ? (double)xf : 0.0;
                        }
                        a[0] = cnt;
                        a[1] = sum;
                    } else if (pass == 1) {
                        const double c = a[1] / a[0];
                        double ss = a[2];
                        for (uint32_t d = d0; d < d0 + run; ++d) {
                            const double x = row[d];
                            ss += (x - c) * (x - c);
                        }
                        a[2] = ss;
                    } else if (!(a[0] > 1.0)) { /* a scale of one value */
                        for (uint32_t d = d0; d < d0 + run; ++d)
                            sc[d] = 0.0f;
                    } else {
                        kr->outlier_scores(row + d0, run, asym, a[0], a[1] / a[0], a[2], sc + d0);
                    }
                }
            }
    free(acc);
    return 0;
}

/* The set bits of a mask of elems bits (bit e of byte e / 8), in ascending order, a 64-bit word at a time. */
typedef struct kw__out_bits {
    const uint8_t *mask;        /* borrowed */
    uint64_t elems, word, bits; /* the word being walked and its bits not yet returned */
} kw__out_bits;

static kw__out_bits kw__out_bits_of(const uint8_t *mask, uint64_t elems) {
    return (kw__out_bits){mask, elems, UINT64_MAX, 0};
}

/* The next set bit's element number into *e: 1, or 0 when there are no more. */
static int kw__out_bits_next(kw__out_bits *it, uint64_t *e) {
    while (!it->bits) {
        if (++it->word >= (it->elems + 63) / 64) return 0;
        const uint64_t left = (it->elems + 7) / 8 - it->word * 8;
        const uint8_t *p = it->mask + it->word * 8;
        if (left >= 8) {
            it->bits = kw_load_le64(p);
        } else {
            for (uint64_t b = 0; b < left; ++b)
                it->bits |= (uint64_t)p[b] << (8 * b);
        }
    }
    *e = it->word * 64 + (uint64_t)__builtin_ctzll(it->bits);
    it->bits &= it->bits - 1;
    return 1;
}

/* The walk of a radix selection over counters count[0..top]: the largest index i with *above + the counts from i up
 * to top >= k (0 if there is none); *above grows by the counts above i. */
static uint32_t kw__out_walk(const uint32_t *count, uint32_t top, uint64_t k, uint64_t *above) {
    uint32_t i = top;
    while (i > 0 && *above + count[i] < k)
        *above += count[i--];
    return i;
}

/* Every score's key's high half is counted in the 65536 counters of hist, or (sample) those of one score in each
 * run of 16, at an offset that a hash of the run's number picks (a fixed stride would see the same channels of every
 * row, and outlier channels are what the selection is after). */
static void kw__out_count(const float *sc, uint64_t n, int sample, uint32_t *hist) {
    memset(hist, 0, 65536 * sizeof(uint32_t));
    if (!sample) {
        for (uint64_t i = 0; i < n; ++i)
            ++hist[kw__out_key(sc[i]) >> 16];
        return;
    }
    for (uint64_t b = 0; b < n / 16; ++b)
        ++hist[kw__out_key(sc[16 * b + ((uint32_t)b * 0x9e3779b1u >> 28)]) >> 16];
}

/* The candidates of a selection: the elements whose bit is set in in (elems bits), in element order, into list (at
 * most cap of them); the count, or cap + 1 if there are more. */
static uint64_t kw__out_list(const uint8_t *in, uint64_t elems, uint64_t *list, uint64_t cap) {
    kw__out_bits it = kw__out_bits_of(in, elems);
    uint64_t nl = 0, e;
    while (kw__out_bits_next(&it, &e)) {
        if (nl == cap) return cap + 1;
        list[nl++] = e;
    }
    return nl;
}

/* Sets in mask the elements of the list (nl element numbers in ascending order) that complete a selection of n: above
 * elements outside the list are chosen already, every other element scores below the list's n - above highest; the
 * list's scores above the threshold (the (n - above)-th highest of them) and, in element order, as many at it as
 * make n. The threshold's key by four 8-bit levels of counts over the list. */
static void kw__out_pick(const float *scores, const uint64_t *list, uint64_t nl, uint64_t above, uint64_t n,
                         uint8_t *mask) {
    uint32_t thr = 0, c8[256];
    for (int level = 3; level >= 0; --level) {
        const uint32_t shift = 8u * (uint32_t)level, hi_shift = shift + 8u; /* the key's bits above: thr's so far */
        memset(c8, 0, sizeof c8);
        for (uint64_t i = 0; i < nl; ++i) {
            const uint32_t key = kw__out_key(scores[list[i]]);
            if (level == 3 || key >> hi_shift == thr >> hi_shift) ++c8[(key >> shift) & 0xffu];
        }
        thr |= kw__out_walk(c8, 255u, n, &above) << shift;
    }
    uint64_t ties = n - above; /* above: the elements chosen above the threshold */
    for (uint64_t i = 0; i < nl; ++i) {
        const uint32_t key = kw__out_key(scores[list[i]]);
        if (key < thr || (key == thr && ties == 0)) continue;
        ties -= key == thr;
        mask[list[i] / 8] |= (uint8_t)(1u << (list[i] % 8));
    }
}

/* Sets in mask (cleared) the n (1 <= n <= elems) elements of the highest scores, ties at the threshold (the n-th
 * highest score) to the lower element numbers. A sample of one score in 16 gives a pivot below which about a fifth
 * more than n of them lie; one pass (kr->outlier_bits) marks the candidates at or above it, and if there are at least
 * n of them and they fit the list, the threshold is found among them. Otherwise the counts of every score's key's
 * high half give the threshold's bin: the elements above it are set in that pass, the bin's members listed (or, if
 * they do not fit, found through the counts of their low halves and one more pass). hist: 65536 counters, list: cap
 * element numbers, in: elems bits, all scratch. */
static void kw__out_choose(const kw__wire_kernels *kr, const float *scores, uint64_t elems, uint64_t n, uint32_t *hist,
                           uint64_t *list, uint64_t cap, uint8_t *in, uint8_t *mask) {
    uint64_t above = 0;
    kw__out_count(scores, elems, 1, hist);
    const uint32_t pivot = kw__out_walk(hist, 65535u, (n + 15) / 16 * 5 / 4 + 8, &above);
    kr->outlier_bits(scores, elems, (int32_t)((pivot << 16) ^ 0x80000000u), INT32_MAX, mask, in);
    uint64_t nl = kw__out_list(in, elems, list, cap);
    if (nl >= n && nl <= cap) {
        kw__out_pick(scores, list, nl, 0, n, mask);
        return;
    }
    above = 0;
    kw__out_count(scores, elems, 0, hist);
    const uint32_t bin = kw__out_walk(hist, 65535u, n, &above);
    kr->outlier_bits(scores, elems, (int32_t)((bin << 16) ^ 0x80000000u),
                     (int32_t)((bin << 16 | 0xffffu) ^ 0x80000000u), mask, in);
    nl = kw__out_list(in, elems, list, cap);
    if (nl <= cap) {
        kw__out_pick(scores, list, nl, above, n, mask);
        return;
    }
    memset(hist, 0, 65536 * sizeof(uint32_t)); /* the bin's low halves */
    kw__out_bits it = kw__out_bits_of(in, elems);
    uint64_t e;
    while (kw__out_bits_next(&it, &e))
        ++hist[kw__out_key(scores[e]) & 0xffffu];
    const uint32_t thr = bin << 16 | kw__out_walk(hist, 65535u, n, &above);
    uint64_t ties = n - above;
    for (it = kw__out_bits_of(in, elems); kw__out_bits_next(&it, &e);) {
        const uint32_t key = kw__out_key(scores[e]);
        if (key < thr || (key == thr && ties == 0)) continue;
        ties -= key == thr;
        mask[e / 8] |= (uint8_t)(1u << (e % 8));
    }
}

int kw__wire_outlier_select_scratch(const kw__wire_kernels *kr, const kw_wire_header *hdr, const kw_wire_layer_in *in,
                                    const kw_wire_policy *pol, uint32_t count, uint8_t *mask, uint32_t *n_chosen,
                                    void **scratch, size_t *cap) {
    KW_RETURN_IF(!hdr || !in || !pol || !mask || !n_chosen || !in->k.data || !in->v.data || in->n_tokens < 1,
                 KW_E_INVALID_ARG, "outlier selection: bad arguments");
    KW_RETURN_IF(kw__wire_dtype_size(hdr->src_dtype) == 0, KW_E_INVALID_ARG, "unknown src_dtype %u", hdr->src_dtype);
    const uint64_t elems = kw__out_elems(hdr, in->n_tokens), half = elems / 2;
    /* the scratch below: 4 + 8 + 1/8 bytes per element at most, plus the 256 KiB histogram */
    KW_RETURN_IF(elems > (SIZE_MAX - 65536 * sizeof(uint32_t) - 8) / 13, KW_E_OVERFLOW,
                 "outlier selection over %llu elements", (unsigned long long)elems);
    memset(mask, 0, (size_t)((elems + 7) / 8));
    *n_chosen = 0;
    const uint64_t n = count < elems ? count : elems;
    if (n == 0) return 0;
    kw_wire_token_group single = {in->n_tokens, pol->k, pol->v};
    const kw_wire_token_group *groups = pol->n_groups ? pol->groups : &single;
    const uint32_t n_groups = pol->n_groups ? pol->n_groups : 1;
    KW_RETURN_IF(!groups, KW_E_INVALID_ARG, "n_groups %u without groups", n_groups);
    /* scores, hist, the list of candidates (room for a few more than n), their bits */
    const uint64_t room = 2 * n + 16384 < elems ? 2 * n + 16384 : elems;
    const size_t need = (size_t)elems * sizeof(float) + 65536 * sizeof(uint32_t) + (size_t)room * sizeof(uint64_t) +
                        (size_t)(elems + 7) / 8;
    if (*cap < need) {
        void *p = realloc(*scratch, need);
        KW_RETURN_IF(!p, KW_E_NOMEM, "outlier scores of %llu elements", (unsigned long long)elems);
        *scratch = p;
        *cap = need;
    }
    float *scores = *scratch;
    uint32_t *hist = (uint32_t *)(scores + elems);
    uint64_t *list = (uint64_t *)(hist + 65536);
    int rc = 0;
    uint32_t t0 = 0;
    for (uint32_t g = 0; g < n_groups && rc == 0; ++g) {
        KW_CHECK_IF(groups[g].n_tokens < 1 || (uint64_t)t0 + groups[g].n_tokens > in->n_tokens, KW_E_INVALID_ARG,
                    "token group %u does not fit the section's %u tokens", g, in->n_tokens);
        KW_CHECK(kw__out_scores(kr, hdr, &in->k, &groups[g].k, in->n_tokens, t0, groups[g].n_tokens, scores));
        KW_CHECK(kw__out_scores(kr, hdr, &in->v, &groups[g].v, in->n_tokens, t0, groups[g].n_tokens, scores + half));
        t0 += groups[g].n_tokens;
    }
    KW_CHECK_IF(t0 != in->n_tokens, KW_E_INVALID_ARG, "token groups cover %u of %u tokens", t0, in->n_tokens);
    kw__out_choose(kr, scores, elems, n, hist, list, room, (uint8_t *)(list + room), mask);
    *n_chosen = (uint32_t)n;
    rc = 0;
out:
    return rc;
}

int kw_wire_outlier_select(const kw_wire_header *hdr, const kw_wire_layer_in *in, const kw_wire_policy *pol,
                           uint32_t count, uint8_t *mask, uint32_t *n_chosen) {
    void *scratch = NULL;
    size_t cap = 0;
    const int rc = kw__wire_outlier_select_scratch(kw__wire_kernels_get(KW_WIRE_ISA_AUTO), hdr, in, pol, count, mask,
                                                   n_chosen, &scratch, &cap);
    free(scratch);
    return rc;
}

// ---------------------------------------------------------------------------------------------------------------
// The table

uint64_t kw__wire_outlier_table_bytes(const uint8_t *mask, uint64_t elems, uint32_t n, uint32_t dtype) {
    uint64_t bytes = KW__OUTLIER_HEAD_BYTES + (uint64_t)n * kw__wire_outlier_value_size(dtype), prev = 0;
    int first = 1;
    kw__out_bits it = kw__out_bits_of(mask, elems);
    for (uint64_t e; kw__out_bits_next(&it, &e);) {
        bytes += kw__out_varint_len64(first ? e : e - prev - 1);
        prev = e;
        first = 0;
    }
    return bytes;
}

/* Stores x in dtype; KW_E_WIRE_RANGE if it has no finite value there within the bf16 range, or if it is past rmax
 * (non-zero: the element is in a rotated tensor, kw_wire_rotated_max). */
static int kw__out_store(float x, uint32_t dtype, float rmax, uint8_t *dst, uint64_t e) {
    const float bf16_max = 0x1.FEp127f;
    KW_RETURN_IF(rmax > 0.0f && fabsf(x) > rmax, KW_E_WIRE_RANGE,
                 "outlier %llu (%g) is past %g, the most a rotated value may be (FORMAT.md §5.12)",
                 (unsigned long long)e, (double)x, (double)rmax);
    switch (dtype) {
    case KW_WIRE_DTYPE_BF16: {
        const uint16_t b = kw_f32_to_bf16(x);
        KW_RETURN_IF((b & 0x7f80u) == 0x7f80u, KW_E_WIRE_RANGE, "outlier %llu (%g) overflows bf16",
                     (unsigned long long)e, (double)x);
        kw_store_le16(dst, b);
        return 0;
    }
    case KW_WIRE_DTYPE_F16:
        KW_RETURN_IF(fabsf(x) >= 65520.0f, KW_E_WIRE_RANGE, "outlier %llu (%g) overflows f16", (unsigned long long)e,
                     (double)x);
        kw_store_le16(dst, kw_f32_to_f16(x));
        return 0;
    default:
        KW_RETURN_IF(fabsf(x) > bf16_max, KW_E_WIRE_RANGE, "outlier %llu (%g) is past the largest bf16",
                     (unsigned long long)e, (double)x);
        kw_store_le32(dst, kw_f32_bits(x));
        return 0;
    }
}

int kw__wire_outlier_table_write(const kw_wire_header *hdr, const kw_wire_layer_in *in, const uint8_t *mask, uint32_t n,
                                 uint32_t dtype, const float rmax[2], uint8_t *dst, uint64_t bytes) {
    const uint64_t elems = kw__out_elems(hdr, in->n_tokens), half = elems / 2;
    const uint32_t D = hdr->head_dim, T = in->n_tokens;
    const size_t vs = kw__wire_outlier_value_size(dtype);
    kw_store_le32(dst, n);
    dst[4] = (uint8_t)dtype;
    dst[5] = dst[6] = dst[7] = 0;
    uint8_t *p = dst + KW__OUTLIER_HEAD_BYTES, *values = dst + bytes - (uint64_t)n * vs;
    uint64_t prev = 0;
    int first = 1;
    kw__out_bits it = kw__out_bits_of(mask, elems);
    for (uint64_t e; kw__out_bits_next(&it, &e);) {
        p = kw__out_varint_put64(p, first ? e : e - prev - 1);
        prev = e;
        first = 0;
        const uint64_t r = e % half;
        const uint32_t d = (uint32_t)(r % D), t = (uint32_t)(r / D % T), h = (uint32_t)(r / D / T);
        const float x = kw__out_value(e < half ? &in->k : &in->v, hdr->src_dtype, h, t, d);
        KW_FORWARD(kw__out_store(x, dtype, rmax[e >= half], values, e));
        values += vs;
    }
    KW_RETURN_IF(p != dst + bytes - (uint64_t)n * vs, KW_E_INTERNAL, "outlier table size mismatch");
    return 0;
}

uint64_t kw__wire_outlier_list_bytes(const uint32_t *elems, uint32_t n, uint32_t dtype) {
    uint64_t bytes = KW__OUTLIER_HEAD_BYTES + (uint64_t)n * kw__wire_outlier_value_size(dtype);
    for (uint32_t i = 0; i < n; ++i)
        bytes += kw__out_varint_len64(i == 0 ? elems[0] : (uint64_t)elems[i] - elems[i - 1] - 1);
    return bytes;
}

int kw__wire_outlier_list_write(const uint32_t *elems, const float *values, uint32_t n, uint32_t dtype, uint64_t half,
                                const float rmax[2], uint8_t *dst, uint64_t bytes) {
    const size_t vs = kw__wire_outlier_value_size(dtype);
    kw_store_le32(dst, n);
    dst[4] = (uint8_t)dtype;
    dst[5] = dst[6] = dst[7] = 0;
    uint8_t *p = dst + KW__OUTLIER_HEAD_BYTES, *v = dst + bytes - (uint64_t)n * vs;
    for (uint32_t i = 0; i < n; ++i) {
        p = kw__out_varint_put64(p, i == 0 ? elems[0] : (uint64_t)elems[i] - elems[i - 1] - 1);
        KW_FORWARD(kw__out_store(values[i], dtype, rmax[elems[i] >= half], v + (size_t)i * vs, elems[i]));
    }
    KW_RETURN_IF(p != dst + bytes - (uint64_t)n * vs, KW_E_INTERNAL, "outlier table size mismatch");
    return 0;
}

int kw__wire_outlier_table_check(const uint8_t *tab, uint32_t bytes, uint64_t elems, uint32_t *n_out,
                                 uint8_t *dtype_out) {
    KW_RETURN_IF(bytes < KW__OUTLIER_HEAD_BYTES, KW_E_WIRE_CORRUPT, "outlier table of %u bytes", bytes);
    const uint32_t n = kw_load_le32(tab), dtype = tab[4];
    KW_RETURN_IF(tab[5] || tab[6] || tab[7], KW_E_WIRE_RESERVED, "reserved outlier table bytes are not zero");
    KW_RETURN_IF(dtype != KW_WIRE_DTYPE_BF16 && dtype != KW_WIRE_DTYPE_F16 && dtype != KW_WIRE_DTYPE_F32,
                 KW_E_WIRE_CODEC, "unknown outlier value dtype %u", dtype);
    const size_t vs = kw__wire_outlier_value_size(dtype);
    KW_RETURN_IF(n == 0 || n > elems || (uint64_t)n * (1 + vs) > bytes - KW__OUTLIER_HEAD_BYTES, KW_E_WIRE_CORRUPT,
                 "%u outliers in a table of %u bytes over %llu elements", n, bytes, (unsigned long long)elems);
    const uint8_t *p = tab + KW__OUTLIER_HEAD_BYTES, *values = tab + bytes - (uint64_t)n * vs;
    uint64_t e = 0;
    for (uint32_t i = 0; i < n; ++i) {
        uint64_t gap = 0;
        const uint32_t len = kw__out_varint_get64(p, values, &gap);
        KW_RETURN_IF(len == 0, KW_E_WIRE_CORRUPT, "outlier %u: its index varint is cut, too long or not minimal", i);
        p += len;
        KW_RETURN_IF(gap >= elems || (i > 0 && e + 1 + gap >= elems), KW_E_WIRE_INDICES,
                     "outlier %u: element past the %llu of the section", i, (unsigned long long)elems);
        e = i == 0 ? gap : e + 1 + gap;
    }
    KW_RETURN_IF(p != values, KW_E_WIRE_CORRUPT, "outlier table: %u bytes between the indices and the values",
                 (uint32_t)(values - p));
    const float bf16_max = 0x1.FEp127f;
    for (uint32_t i = 0; i < n; ++i) {
        const uint8_t *v = values + (size_t)i * vs;
        float x;
        if (dtype == KW_WIRE_DTYPE_F32)
            x = kw_f32_from_bits(kw_load_le32(v));
        else
            x = dtype == KW_WIRE_DTYPE_BF16 ? kw_bf16_to_f32(kw_load_le16(v)) : kw_f16_to_f32(kw_load_le16(v));
        KW_RETURN_IF(!(x - x == 0.0f) || fabsf(x) > bf16_max, KW_E_WIRE_VALUE,
                     "outlier %u is not finite or past the largest bf16", i);
    }
    *n_out = n;
    *dtype_out = (uint8_t)dtype;
    return 0;
}

/* Entry i of the verified table: its element number from the previous one's (e, the running gap sum; *p walks the
 * varints) and its value widened to f32. */
static float kw__out_entry(const kw_wire_section *sec, uint32_t i, const uint8_t **p, const uint8_t *values,
                           uint64_t *e) {
    uint64_t gap = 0;
    *p += kw__out_varint_get64(*p, values, &gap); /* validated when the section was verified */
    *e = i == 0 ? gap : *e + 1 + gap;
    const uint8_t *src = values + (size_t)i * kw__wire_outlier_value_size(sec->outlier_dtype);
    if (sec->outlier_dtype == KW_WIRE_DTYPE_F32) return kw_f32_from_bits(kw_load_le32(src));
    return sec->outlier_dtype == KW_WIRE_DTYPE_BF16 ? kw_bf16_to_f32(kw_load_le16(src))
                                                    : kw_f16_to_f32(kw_load_le16(src));
}

int kw_wire_section_outliers(const kw_wire_section *sec, uint64_t *elems, float *values) {
    KW_RETURN_IF(!sec || (sec->n_outliers > 0 && (!elems || !values)), KW_E_INVALID_ARG, "null argument");
    if (!sec->outlier_table) return 0;
    const uint32_t n = sec->n_outliers;
    const uint8_t *p = sec->outlier_table + KW__OUTLIER_HEAD_BYTES;
    const uint8_t *vals =
        sec->outlier_table + sec->outlier_bytes - (uint64_t)n * kw__wire_outlier_value_size(sec->outlier_dtype);
    uint64_t e = 0;
    for (uint32_t i = 0; i < n; ++i) {
        values[i] = kw__out_entry(sec, i, &p, vals, &e);
        elems[i] = e;
    }
    return 0;
}

int kw__wire_outlier_table_apply(const kw_wire_section *sec, const kw_wire_tensor_out *k, const kw_wire_tensor_out *v) {
    if (!sec->outlier_table) return 0;
    const uint32_t H = sec->n_kv_heads, T = sec->n_tokens, D = sec->head_dim, n = sec->n_outliers;
    const uint64_t half = (uint64_t)H * T * D;
    const size_t vs = kw__wire_outlier_value_size(sec->outlier_dtype);
    const uint8_t *p = sec->outlier_table + KW__OUTLIER_HEAD_BYTES;
    const uint8_t *values = sec->outlier_table + sec->outlier_bytes - (uint64_t)n * vs;
    uint64_t e = 0;
    for (uint32_t i = 0; i < n; ++i) {
        const float x = kw__out_entry(sec, i, &p, values, &e);
        const kw_wire_tensor_out *o = e < half ? k : v;
        if (!o) continue;
        const uint64_t r = e % half;
        const uint32_t d = (uint32_t)(r % D), t = (uint32_t)(r / D % T), h = (uint32_t)(r / D / T);
        const size_t at = (size_t)t * o->token_stride + (size_t)h * o->head_stride + d;
        if (o->dtype == KW_WIRE_DTYPE_F32)
            ((float *)o->data)[at] = x;
        else
            ((uint16_t *)o->data)[at] = kw_f32_to_bf16(x);
    }
    return 0;
}
