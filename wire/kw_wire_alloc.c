/* kw_wire_alloc.c: the rate-distortion allocator of one section (see kw_wire_alloc.h for the model and the rules).
 * Not here: how a request's byte cap is split over its sections (sharer/kw_share_budget.h).
 */
#include "wire/kw_wire_alloc.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_status.h"
#include "wire/kw_wire_internal.h"

#define KW__ALLOC_OPTIONS (KW_WIRE_ALLOC_MAX_CODECS + 1) /* drop + codecs */

/* The parts of a section's size that depend on the choice. */
typedef struct kw__alloc_size {
    uint64_t tensor_bytes; /* codes and scales of K and V */
    uint32_t n_kept, boundaries;
    uint32_t first, last; /* kept positions */
    uint64_t varint;      /* the VARINT index size */
} kw__alloc_size;

struct kw_wire_alloc {
    uint32_t cap;           /* candidates the buffers hold */
    double *dist;           /* (cap, KW__ALLOC_OPTIONS): D(t, option), option 0 = drop; < 0: unavailable */
    uint8_t *hull;          /* (cap, KW__ALLOC_OPTIONS): the token's hull, option ids from drop */
    uint8_t *hull_n, *step; /* hull points, and the hull point the token is at */
    uint8_t *choice;        /* the option each token has */
    uint32_t *heap;         /* candidates with a pending move */
    double *eff;            /* the pending move's efficiency */
    uint32_t *rows, *positions;
    kw_wire_token_group *groups;
    kw_wire_alloc_result res;
    /* the current choice's exact size, kept up to date move by move (a move looks at its kept neighbours only):
     * codes and scales, token groups (1 + codec changes between kept neighbours), and the index block's summary
     * (first and last kept position, the VARINT size) for kw__wire_index_pick */
    kw__alloc_size size;
};

int kw_wire_alloc_create(kw_wire_alloc **out) {
    KW_RETURN_IF(out == NULL, KW_E_INVALID_ARG, "alloc: NULL argument");
    *out = calloc(1, sizeof **out);
    KW_RETURN_IF(*out == NULL, KW_E_NOMEM, "alloc: out of memory");
    return 0;
}

static void kw__alloc_release(kw_wire_alloc *a) {
    free(a->dist), free(a->hull), free(a->hull_n), free(a->step), free(a->choice);
    free(a->heap), free(a->eff), free(a->rows), free(a->positions), free(a->groups);
}

void kw_wire_alloc_free(kw_wire_alloc *a) {
    if (a == NULL) return;
    kw__alloc_release(a);
    free(a);
}

static int kw__alloc_reserve(kw_wire_alloc *a, uint32_t n) {
    if (n <= a->cap) return 0;
    kw__alloc_release(a);
    memset(a, 0, sizeof *a);
    const size_t o = KW__ALLOC_OPTIONS;
    a->dist = malloc(n * o * sizeof *a->dist);
    a->hull = malloc(n * o);
    a->hull_n = malloc(n);
    a->step = malloc(n);
    a->choice = malloc(n);
    a->heap = malloc(n * sizeof *a->heap);
    a->eff = malloc(n * sizeof *a->eff);
    a->rows = malloc(n * sizeof *a->rows);
    a->positions = malloc(n * sizeof *a->positions);
    a->groups = malloc(n * sizeof *a->groups);
    KW_RETURN_IF(!a->dist || !a->hull || !a->hull_n || !a->step || !a->choice || !a->heap || !a->eff || !a->rows ||
                     !a->positions || !a->groups,
                 KW_E_NOMEM, "alloc: out of memory for %u candidates", n);
    a->cap = n;
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * Options: validity, bytes per token, measured error
 */

/* The header sizes are computed with: a v1.1 one (the v1.1 codecs' sizes; the same numbers for v1 codecs). */
static kw_wire_header kw__alloc_sizing_header(const kw_wire_header *hdr) {
    kw_wire_header h = *hdr;
    h.version = KW_WIRE_VERSION_1_1;
    return h;
}

static int kw__alloc_token_local(const kw_wire_codec_spec *sp) {
    return kw_wire_codec_is_passthrough(sp->codec) || sp->granularity == KW_WIRE_GRAN_TOKEN ||
           sp->granularity == KW_WIRE_GRAN_GROUP;
}

int kw_wire_alloc_check(const kw_wire_header *hdr, const kw_wire_alloc_options *opt) {
    KW_RETURN_IF(hdr == NULL || opt == NULL || (opt->n_codecs > 0 && opt->codecs == NULL), KW_E_INVALID_ARG,
                 "alloc: NULL argument");
    KW_RETURN_IF(opt->n_codecs < 1 || opt->n_codecs > KW_WIRE_ALLOC_MAX_CODECS, KW_E_INVALID_ARG,
                 "alloc: %u codecs (1..%d)", opt->n_codecs, KW_WIRE_ALLOC_MAX_CODECS);
    for (uint32_t i = 0; i < opt->n_codecs; ++i) {
        const kw_wire_codec_spec *sp = &opt->codecs[i];
        /* the token-local v1.1 codecs too (int3, int2, zero points): their blobs are then v1.1 */
        KW_RETURN_IF(kw__wire_spec_check(sp, hdr->head_dim, 1) < 0, KW_E_INVALID_ARG,
                     "alloc: codec %u (%s%s/%s/%s) is invalid for head_dim %u", i, kw_wire_codec_name(sp->codec),
                     kw_wire_spec_asym(sp) ? "-asym" : "", kw_wire_gran_name(sp->granularity),
                     kw_wire_scale_name(kw_wire_spec_scale(sp)), hdr->head_dim);
        KW_RETURN_IF(!kw__alloc_token_local(sp), KW_E_INVALID_ARG,
                     "alloc: codec %s with %s scales: a budget needs token or group scales (a token's error must "
                     "not depend on the other tokens)",
                     kw_wire_codec_name(sp->codec), kw_wire_gran_name(sp->granularity));
        for (uint32_t j = 0; j < i; ++j)
            KW_RETURN_IF(memcmp(sp, &opt->codecs[j], sizeof *sp) == 0, KW_E_INVALID_ARG,
                         "alloc: codec %s is listed twice", kw_wire_codec_name(sp->codec));
    }
    return 0;
}

/* Bytes one token takes with this codec for K and V: codes and scales. */
static uint64_t kw__alloc_token_bytes(const kw_wire_header *hdr, const kw_wire_codec_spec *sp) {
    return 2 * kw__wire_tensor_bytes(sp, hdr->n_kv_heads, 1, hdr->head_dim);
}

/* The squared error of the D values x through the codec, in fp64, or -1 if the codec cannot represent them. The
 * same scale rule, rounding and clamping as the encoder (kw_wire_quant.h). */
static double kw__alloc_row_error(const kw_wire_codec_spec *sp, const float *x, uint32_t D) {
    double err = 0.0;
    if (kw_wire_codec_is_passthrough(sp->codec)) {
        for (uint32_t d = 0; d < D; ++d) {
            const float y = sp->codec == KW_WIRE_CODEC_BF16 ? kw_bf16_to_f32(kw_f32_to_bf16(x[d]))
                                                            : kw_f16_to_f32(kw_f32_to_f16(x[d]));
            if (!isfinite(y)) return -1.0;
            const double e = (double)x[d] - (double)y;
            err += e * e;
        }
        return err;
    }
    const uint32_t G = sp->granularity == KW_WIRE_GRAN_GROUP ? 1u << sp->group_log2 : D;
    if (kw_wire_spec_asym(sp)) { /* zero points (v1.1, FORMAT.md §5.9): min and max of each scale's values */
        const float qmax = kw_wire_codec_qmax_asym(sp->codec);
        for (uint32_t g = 0; g < D; g += G) {
            float mn = x[g], mx = x[g];
            for (uint32_t d = g; d < g + G; ++d) {
                mn = x[d] < mn ? x[d] : mn;
                mx = x[d] > mx ? x[d] : mx;
            }
            uint32_t scode, zcode;
            float s, z;
            if (kw_wire_asym_choose(mn, mx, qmax, kw_wire_spec_scale(sp), &scode, &s, &zcode, &z) < 0) return -1.0;
            const float inv = s != 0.0f ? 1.0f / s : 0.0f;
            for (uint32_t d = g; d < g + G; ++d) {
                const uint32_t q = s != 0.0f ? kw_wire_quantize_asym(x[d], z, inv, qmax) : 0u;
                const float y = (float)q * s + z; /* two roundings: no contraction in wire/ */
                const double e = (double)x[d] - (double)y;
                err += e * e;
            }
        }
        return err;
    }
    const float qmax = kw_wire_codec_qmax(sp->codec);
    for (uint32_t g = 0; g < D; g += G) {
        float amax = 0.0f;
        for (uint32_t d = g; d < g + G; ++d)
            amax = fabsf(x[d]) > amax ? fabsf(x[d]) : amax;
        uint32_t code;
        float s;
        if (kw_wire_scale_choose(amax, qmax, sp->scale_dtype, &code, &s) < 0) return -1.0;
        const float inv = s != 0.0f ? 1.0f / s : 0.0f;
        for (uint32_t d = g; d < g + G; ++d) {
            int ok = 1;
            const float y =
                s == 0.0f ? 0.0f : kw_wire_code_value(sp->codec, kw_wire_quantize_value(sp->codec, x[d], inv), &ok) * s;
            const double e = (double)x[d] - (double)y;
            err += e * e;
        }
    }
    return err;
}

/* Fills dist[t][*] for one candidate: D(drop) = w, D(c) = w * relative error; -1 for unavailable options (all of
 * them when the weight or a value is not finite). */
static void kw__alloc_measure(const kw_wire_alloc_options *opt, const kw_wire_alloc_input *in, uint32_t t,
                              double *dist) {
    const uint32_t H = in->hdr->n_kv_heads, D = in->hdr->head_dim;
    const float w = in->weight ? in->weight[t] : 1.0f;
    for (uint32_t o = 0; o < KW__ALLOC_OPTIONS; ++o)
        dist[o] = -1.0;
    if (!isfinite(w) || w < 0.0f) return;
    const float *rows[2] = {in->k + (size_t)t * H * D, in->v + (size_t)t * H * D};
    double energy = 0.0;
    for (int kv = 0; kv < 2; ++kv)
        for (uint32_t i = 0; i < H * D; ++i) {
            if (!isfinite(rows[kv][i])) return;
            energy += (double)rows[kv][i] * (double)rows[kv][i];
        }
    dist[0] = w;
    for (uint32_t c = 0; c < opt->n_codecs; ++c) {
        double err = 0.0;
        for (int kv = 0; kv < 2 && err >= 0.0; ++kv)
            for (uint32_t h = 0; h < H && err >= 0.0; ++h) {
                const double e = kw__alloc_row_error(&opt->codecs[c], rows[kv] + (size_t)h * D, D);
                err = e < 0.0 ? -1.0 : err + e;
            }
        if (err >= 0.0) dist[1 + c] = energy > 0.0 ? (double)w * (err / energy) : 0.0;
    }
}

/* ------------------------------------------------------------------------------------------------------------
 * Hulls and the move queue
 */

/* The lower convex hull of the token's options from origin (drop, or with keep_all the cheapest codec), in
 * increasing bytes (ties: lower distortion, then the lower codec). From drop, a token with nothing to gain gets its
 * cheapest option as a step of efficiency 0. */
static void kw__alloc_hull(const double *dist, const uint64_t *bytes, uint32_t n_codecs, uint8_t origin, uint8_t *hull,
                           uint8_t *hull_n) {
    uint8_t order[KW__ALLOC_OPTIONS];
    uint32_t n = 0;
    for (uint32_t c = 1; c <= n_codecs; ++c)
        if (dist[c] >= 0.0 && c != origin && bytes[c] >= bytes[origin]) order[n++] = (uint8_t)c;
    for (uint32_t i = 1; i < n; ++i) /* insertion sort: a handful of options */
        for (uint32_t j = i; j > 0; --j) {
            const uint8_t a = order[j - 1], b = order[j];
            const int swap = bytes[b] < bytes[a] || (bytes[b] == bytes[a] && dist[b] < dist[a]);
            if (!swap) break;
            order[j - 1] = b, order[j] = a;
        }
    uint32_t m = 0;
    hull[m++] = origin;
    if (dist[origin] < 0.0) {
        *hull_n = 1;
        return;
    }
    for (uint32_t i = 0; i < n; ++i) {
        const uint8_t c = order[i];
        if (dist[c] >= dist[hull[m - 1]]) continue; /* no better than a cheaper point */
        /* pop points that lie on or above the segment from their predecessor to c */
        while (m >= 2) {
            const uint8_t p = hull[m - 2], q = hull[m - 1];
            const double e_pq = (dist[p] - dist[q]) / (double)(bytes[q] - bytes[p]);
            const double e_pc = (dist[p] - dist[c]) / (double)(bytes[c] - bytes[p]);
            if (e_pc < e_pq) break;
            --m;
        }
        hull[m++] = c;
    }
    if (origin == 0 && m == 1 && n > 0 && dist[order[0]] <= dist[0]) /* nothing to gain, nothing lost */
        hull[m++] = order[0];
    *hull_n = (uint8_t)m;
}

static double kw__alloc_step_eff(const kw_wire_alloc *a, const uint64_t *bytes, uint32_t t, uint32_t from,
                                 uint32_t to) {
    const double *dist = a->dist + (size_t)t * KW__ALLOC_OPTIONS;
    return (dist[from] - dist[to]) / (double)(bytes[to] - bytes[from]);
}

/* Heap order: higher efficiency first, then the lower candidate. */
static int kw__alloc_before(const kw_wire_alloc *a, uint32_t x, uint32_t y) {
    if (a->eff[x] != a->eff[y]) return a->eff[x] > a->eff[y];
    return x < y;
}

static void kw__alloc_push(kw_wire_alloc *a, uint32_t *n, uint32_t t) {
    uint32_t i = (*n)++;
    a->heap[i] = t;
    while (i > 0) {
        const uint32_t p = (i - 1) / 2;
        if (!kw__alloc_before(a, a->heap[i], a->heap[p])) break;
        const uint32_t tmp = a->heap[i];
        a->heap[i] = a->heap[p], a->heap[p] = tmp;
        i = p;
    }
}

static uint32_t kw__alloc_pop(kw_wire_alloc *a, uint32_t *n) {
    const uint32_t top = a->heap[0];
    a->heap[0] = a->heap[--*n];
    for (uint32_t i = 0;;) {
        const uint32_t l = 2 * i + 1, r = l + 1;
        uint32_t best = i;
        if (l < *n && kw__alloc_before(a, a->heap[l], a->heap[best])) best = l;
        if (r < *n && kw__alloc_before(a, a->heap[r], a->heap[best])) best = r;
        if (best == i) break;
        const uint32_t tmp = a->heap[i];
        a->heap[i] = a->heap[best], a->heap[best] = tmp;
        i = best;
    }
    return top;
}

/* ------------------------------------------------------------------------------------------------------------
 * Exact size of the current choice
 */

/* Builds rows, positions and groups from the choices and sets res.bytes to the section's exact size (0 when no
 * token is kept). */
static int kw__alloc_layout(kw_wire_alloc *a, const kw_wire_alloc_options *opt, const kw_wire_alloc_input *in) {
    kw_wire_alloc_result *r = &a->res;
    r->n_kept = r->n_groups = 0;
    for (uint32_t t = 0; t < in->n_tokens; ++t) {
        const uint8_t c = a->choice[t];
        if (c == 0) continue;
        a->rows[r->n_kept] = t;
        a->positions[r->n_kept++] = in->positions[t];
        if (r->n_groups > 0 &&
            memcmp(&a->groups[r->n_groups - 1].k, &opt->codecs[c - 1], sizeof(kw_wire_codec_spec)) == 0)
            ++a->groups[r->n_groups - 1].n_tokens;
        else
            a->groups[r->n_groups++] =
                (kw_wire_token_group){.n_tokens = 1, .k = opt->codecs[c - 1], .v = opt->codecs[c - 1]};
    }
    r->bytes = 0;
    if (r->n_kept == 0) return 0;
    kw_wire_policy pol;
    kw_wire_alloc_policy(r, opt, 0, &pol);
    size_t size = 0;
    const kw_wire_header sizing = kw__alloc_sizing_header(in->hdr);
    KW_FORWARD(kw_wire_section_size(&sizing, &pol, r->n_kept, a->positions, &size));
    r->bytes = size;
    return 0;
}

/* The kept neighbours of candidate t: their indices, or -1. */
static void kw__alloc_neighbours(const kw_wire_alloc *a, uint32_t n_tokens, uint32_t t, int64_t *pred, int64_t *succ) {
    *pred = *succ = -1;
    for (int64_t i = (int64_t)t - 1; i >= 0 && *pred < 0; --i)
        if (a->choice[i]) *pred = i;
    for (uint32_t i = t + 1; i < n_tokens && *succ < 0; ++i)
        if (a->choice[i]) *succ = i;
}

/* The exact section size of a state (0 with nothing kept). */
static int kw__alloc_size_bytes(const kw__alloc_size *z, const kw_wire_alloc_options *opt,
                                const kw_wire_alloc_input *in, uint64_t *out) {
    *out = 0;
    if (z->n_kept == 0) return 0;
    uint8_t enc;
    size_t index = 0;
    KW_FORWARD(kw__wire_index_pick(in->hdr->n_positions, z->n_kept, z->first, z->last, z->varint, opt->index_encoding,
                                   &enc, &index));
    *out = KW_WIRE_SECTION_HEAD_BYTES + (uint64_t)KW_WIRE_GROUP_DESC_BYTES * (1 + z->boundaries) + index +
           z->tensor_bytes + KW_WIRE_CHECKSUM_BYTES;
    return 0;
}

/* Sets token t to option c (never drop) if the section still fits: *fits 1 if it did, 0 if not (nothing changes
 * then). The size is exact: the state is updated from t's kept neighbours, as kw_wire_section_size would count. */
static int kw__alloc_try(kw_wire_alloc *a, const kw_wire_alloc_options *opt, const kw_wire_alloc_input *in,
                         const uint64_t *bytes, uint32_t t, uint8_t c, int *fits) {
    const uint8_t old = a->choice[t];
    int64_t pred, succ;
    kw__alloc_neighbours(a, in->n_tokens, t, &pred, &succ);
    const uint8_t cp = pred >= 0 ? a->choice[pred] : 0, cs = succ >= 0 ? a->choice[succ] : 0;
    const uint32_t p = in->positions[t];
    kw__alloc_size z = a->size;
    z.tensor_bytes = z.tensor_bytes - bytes[old] + bytes[c];
    /* codec changes between kept neighbours: pred|t|succ replaces pred|succ (a new token) or pred|old|succ */
    const uint32_t before = old ? (cp && cp != old) + (cs && old != cs) : (cp && cs && cp != cs);
    z.boundaries = z.boundaries - before + (cp && cp != c) + (cs && c != cs);
    if (!old) { /* the index gains position p */
        const uint32_t a_pos = pred >= 0 ? in->positions[pred] : 0, b_pos = succ >= 0 ? in->positions[succ] : 0;
        if (succ >= 0) z.varint -= kw__wire_varint_len(pred >= 0 ? b_pos - a_pos - 1 : b_pos);
        z.varint += kw__wire_varint_len(pred >= 0 ? p - a_pos - 1 : p);
        if (succ >= 0) z.varint += kw__wire_varint_len(b_pos - p - 1);
        z.first = z.n_kept == 0 || p < z.first ? p : z.first;
        z.last = z.n_kept == 0 || p > z.last ? p : z.last;
        ++z.n_kept;
    }
    uint64_t size = 0;
    KW_FORWARD(kw__alloc_size_bytes(&z, opt, in, &size));
    *fits = size <= in->budget && z.boundaries < KW_WIRE_MAX_GROUPS; /* a section holds at most that many groups */
    if (*fits) {
        a->choice[t] = c;
        a->size = z;
    }
    return 0;
}

/* After a hull step of t to `failed` did not fit: its options between the current one and `failed` that lower its
 * distortion, best efficiency first (ties: fewer bytes, then the lower codec), the first that fits. */
static int kw__alloc_fallback(kw_wire_alloc *a, const kw_wire_alloc_options *opt, const kw_wire_alloc_input *in,
                              const uint64_t *bytes, uint32_t t, uint8_t failed) {
    const double *dist = a->dist + (size_t)t * KW__ALLOC_OPTIONS;
    const uint8_t cur = a->choice[t];
    uint8_t tried[KW__ALLOC_OPTIONS] = {0};
    for (;;) {
        int best = -1;
        double best_eff = 0.0;
        for (uint8_t c = 1; c <= opt->n_codecs; ++c) {
            if (tried[c] || dist[c] < 0.0 || dist[c] >= dist[cur] || bytes[c] <= bytes[cur] ||
                bytes[c] >= bytes[failed])
                continue;
            const double e = kw__alloc_step_eff(a, bytes, t, cur, c);
            if (best < 0 || e > best_eff || (e == best_eff && bytes[c] < bytes[best])) best = c, best_eff = e;
        }
        if (best < 0) break;
        tried[best] = 1;
        int fits = 0;
        KW_FORWARD(kw__alloc_try(a, opt, in, bytes, t, (uint8_t)best, &fits));
        if (fits) break;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * The public entry points
 */

int kw_wire_alloc_cheapest(const kw_wire_header *hdr, const kw_wire_alloc_options *opt, uint32_t *out) {
    KW_FORWARD(kw_wire_alloc_check(hdr, opt));
    *out = 0;
    for (uint32_t c = 1; c < opt->n_codecs; ++c)
        if (kw__alloc_token_bytes(hdr, &opt->codecs[c]) < kw__alloc_token_bytes(hdr, &opt->codecs[*out])) *out = c;
    return 0;
}

int kw_wire_alloc_min_bytes(const kw_wire_header *hdr, const kw_wire_alloc_options *opt, uint64_t *out) {
    uint32_t c = 0;
    KW_FORWARD(kw_wire_alloc_cheapest(hdr, opt, &c));
    const kw_wire_policy pol = {.k = opt->codecs[c], .v = opt->codecs[c], .index_encoding = opt->index_encoding};
    size_t size = 0;
    const kw_wire_header sizing = kw__alloc_sizing_header(hdr);
    KW_FORWARD(kw_wire_section_bound(&sizing, &pol, 1, &size));
    *out = size;
    return 0;
}

int kw_wire_alloc_min_blob_bytes(const kw_wire_header *hdr, const kw_wire_alloc_options *opt, uint32_t n_blobs,
                                 uint64_t *out) {
    uint64_t section = 0;
    KW_FORWARD(kw_wire_alloc_min_bytes(hdr, opt, &section));
    *out = (uint64_t)n_blobs * (KW_WIRE_HEADER_BYTES + KW_WIRE_TRAILER_BYTES + (uint64_t)hdr->n_sections * section);
    return 0;
}

int kw_wire_alloc_check_cap(const kw_wire_header *hdr, const kw_wire_alloc_options *opt, uint32_t n_blobs,
                            uint64_t cap) {
    uint64_t min_bytes = 0;
    KW_FORWARD(kw_wire_alloc_min_blob_bytes(hdr, opt, n_blobs, &min_bytes));
    KW_RETURN_IF(cap < min_bytes, KW_E_INVALID_ARG,
                 "a cap of %llu bytes cannot carry this request: its %u blob(s) of %u layer(s) need at least %llu "
                 "bytes (headers, trailers and one token per layer)",
                 (unsigned long long)cap, n_blobs, (unsigned)hdr->n_sections, (unsigned long long)min_bytes);
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * Whole-layer baselines (kvcomm_like, qkvcomm_like)
 */

const char *kw_wire_budget_mode_name(enum kw_wire_budget_mode mode) {
    switch (mode) {
    case KW_WIRE_BUDGET_TOKENS:
        return "tokens";
    case KW_WIRE_BUDGET_KVCOMM_LIKE:
        return "kvcomm_like";
    case KW_WIRE_BUDGET_QKVCOMM_LIKE:
        return "qkvcomm_like";
    }
    return NULL;
}

/* One layer's bound over every blob with codec c. */
static int kw__plan_layer_bytes(const kw_wire_layer_plan_input *in, uint32_t c, uint64_t *out) {
    const kw_wire_policy pol = {.k = in->codecs[c], .v = in->codecs[c], .index_encoding = in->index_encoding};
    kw_wire_header hdr = kw__alloc_sizing_header(in->hdr); /* the layer counts do not change a section's size */
    hdr.n_layers = hdr.n_sections = (uint16_t)in->n_layers;
    *out = 0;
    for (uint32_t b = 0; b < in->n_blobs; ++b) {
        size_t size = 0;
        KW_FORWARD(kw_wire_section_bound(&hdr, &pol, in->blob_rows[b], &size));
        *out += size;
    }
    return 0;
}

int kw_wire_plan_layers(enum kw_wire_budget_mode mode, const kw_wire_layer_plan_input *in, uint8_t *choice,
                        uint64_t *bytes, uint64_t *min_bytes) {
    KW_RETURN_IF(in == NULL || choice == NULL || bytes == NULL || min_bytes == NULL || in->hdr == NULL ||
                     in->n_layers < 1 || in->n_layers > KW_WIRE_MAX_LAYERS || in->n_blobs < 1 ||
                     in->blob_rows == NULL || in->codecs == NULL,
                 KW_E_INVALID_ARG, "plan: NULL argument or no layer");
    const uint32_t want_codecs = mode == KW_WIRE_BUDGET_KVCOMM_LIKE ? 1 : 2;
    KW_RETURN_IF(mode != KW_WIRE_BUDGET_KVCOMM_LIKE && mode != KW_WIRE_BUDGET_QKVCOMM_LIKE, KW_E_INVALID_ARG,
                 "plan: budget mode %d is not a whole-layer one", (int)mode);
    KW_RETURN_IF(in->n_codecs != want_codecs, KW_E_INVALID_ARG, "plan: %s takes %u codec(s), not %u",
                 kw_wire_budget_mode_name(mode), want_codecs, in->n_codecs);
    uint64_t low = 0, high = 0;
    KW_FORWARD(kw__plan_layer_bytes(in, 0, &low));
    if (want_codecs == 2) KW_FORWARD(kw__plan_layer_bytes(in, 1, &high));
    const uint64_t fixed = (uint64_t)in->n_blobs * (KW_WIRE_HEADER_BYTES + KW_WIRE_TRAILER_BYTES);
    const uint32_t n = in->n_layers;
    *min_bytes = fixed + low * (mode == KW_WIRE_BUDGET_KVCOMM_LIKE ? 1 : n);
    KW_RETURN_IF(in->cap < *min_bytes, KW_E_INVALID_ARG,
                 "a cap of %llu bytes cannot carry this request: with %s its blobs need at least %llu bytes (%s at "
                 "%s)",
                 (unsigned long long)in->cap, kw_wire_budget_mode_name(mode), (unsigned long long)*min_bytes,
                 mode == KW_WIRE_BUDGET_KVCOMM_LIKE ? "one whole layer" : "every layer",
                 kw_wire_codec_name(in->codecs[0].codec));
    memset(choice, 0, n);
    *bytes = fixed;
    if (mode == KW_WIRE_BUDGET_KVCOMM_LIKE) {
        /* middle-first: distance |2i - (n - 1)| from the middle of the list, ties to the lower i */
        for (uint32_t dist = (n + 1) % 2, taken = 0; taken < n && *bytes + low <= in->cap; ++dist)
            for (uint32_t i = 0; i < n && *bytes + low <= in->cap; ++i)
                if ((uint32_t)abs((int)(2 * i) - (int)(n - 1)) == dist) {
                    choice[i] = 1, *bytes += low, ++taken;
                }
        return 0;
    }
    *bytes += (uint64_t)n * low;
    for (uint32_t i = n; i-- > 0;) { /* deepest first; every upgrade costs the same, so the first miss ends it */
        if (high < low || *bytes + (high - low) > in->cap) {
            choice[i] = 1;
            continue;
        }
        choice[i] = 2;
        *bytes += high - low;
    }
    return 0;
}

void kw_wire_alloc_policy(const kw_wire_alloc_result *res, const kw_wire_alloc_options *opt, int zstd_level,
                          kw_wire_policy *out) {
    *out = (kw_wire_policy){.n_groups = res->n_groups,
                            .groups = res->groups,
                            .index_encoding = opt->index_encoding,
                            .zstd_level = zstd_level};
}

int kw_wire_alloc_run(kw_wire_alloc *a, const kw_wire_alloc_options *opt, const kw_wire_alloc_input *in,
                      const kw_wire_alloc_result **out) {
    KW_RETURN_IF(a == NULL || in == NULL || out == NULL, KW_E_INVALID_ARG, "alloc: NULL argument");
    KW_FORWARD(kw_wire_alloc_check(in->hdr, opt));
    KW_RETURN_IF(in->n_tokens < 1 || in->positions == NULL || in->k == NULL || in->v == NULL, KW_E_INVALID_ARG,
                 "alloc: no candidates");
    KW_FORWARD(kw__alloc_reserve(a, in->n_tokens));
    uint64_t bytes[KW__ALLOC_OPTIONS] = {0};
    for (uint32_t c = 0; c < opt->n_codecs; ++c)
        bytes[1 + c] = kw__alloc_token_bytes(in->hdr, &opt->codecs[c]);
    a->res.groups = a->groups; /* the layout's policy points at them */
    memset(&a->size, 0, sizeof a->size);
    memset(a->choice, 0, in->n_tokens);
    uint32_t cheapest = 0; /* keep_all: every token starts there, so the start is one token group */
    KW_FORWARD(kw_wire_alloc_cheapest(in->hdr, opt, &cheapest));
    uint32_t n_heap = 0;
    for (uint32_t t = 0; t < in->n_tokens; ++t) {
        double *dist = a->dist + (size_t)t * KW__ALLOC_OPTIONS;
        kw__alloc_measure(opt, in, t, dist);
        uint8_t origin = 0;
        if (in->keep_all) { /* the token starts kept, at its cheapest codec */
            origin = (uint8_t)(1 + cheapest);
            KW_RETURN_IF(dist[origin] < 0.0, KW_E_LIMIT,
                         "alloc: token %u (position %u) must be kept but the cheapest codec %s does not represent it "
                         "(or its weight is not finite)",
                         t, in->positions[t], kw_wire_codec_name(opt->codecs[cheapest].codec));
            int fits = 0;
            KW_FORWARD(kw__alloc_try(a, opt, in, bytes, t, origin, &fits));
            KW_RETURN_IF(!fits, KW_E_LIMIT,
                         "alloc: the %u tokens to keep do not fit %llu bytes even at their cheapest codecs",
                         in->n_tokens, (unsigned long long)in->budget);
        }
        kw__alloc_hull(dist, bytes, opt->n_codecs, origin, a->hull + (size_t)t * KW__ALLOC_OPTIONS, &a->hull_n[t]);
        a->step[t] = 0;
        if (a->hull_n[t] > 1) {
            const uint8_t *hull = a->hull + (size_t)t * KW__ALLOC_OPTIONS;
            a->eff[t] = kw__alloc_step_eff(a, bytes, t, hull[0], hull[1]);
            kw__alloc_push(a, &n_heap, t);
        }
    }
    while (n_heap > 0) {
        const uint32_t t = kw__alloc_pop(a, &n_heap);
        const uint8_t *hull = a->hull + (size_t)t * KW__ALLOC_OPTIONS;
        const uint8_t next = hull[a->step[t] + 1];
        int fits = 0;
        KW_FORWARD(kw__alloc_try(a, opt, in, bytes, t, next, &fits));
        if (!fits) {
            KW_FORWARD(kw__alloc_fallback(a, opt, in, bytes, t, next));
            continue;
        }
        if (++a->step[t] + 1 < a->hull_n[t]) {
            a->eff[t] = kw__alloc_step_eff(a, bytes, t, next, hull[a->step[t] + 1]);
            kw__alloc_push(a, &n_heap, t);
        }
    }
    KW_FORWARD(kw__alloc_layout(a, opt, in));
    uint64_t tracked = 0;
    KW_FORWARD(kw__alloc_size_bytes(&a->size, opt, in, &tracked));
    KW_RETURN_IF(tracked != a->res.bytes || a->res.bytes > in->budget, KW_E_INTERNAL,
                 "alloc: the tracked size %llu is not the section's %llu (budget %llu)", (unsigned long long)tracked,
                 (unsigned long long)a->res.bytes, (unsigned long long)in->budget);
    uint64_t min_bytes = 0;
    KW_FORWARD(kw_wire_alloc_min_bytes(in->hdr, opt, &min_bytes));
    KW_RETURN_IF(a->res.n_kept == 0, KW_E_LIMIT,
                 "alloc: no token fits: the budget is %llu bytes, a section of one token needs up to %llu (or no "
                 "candidate is finite)",
                 (unsigned long long)in->budget, (unsigned long long)min_bytes);
    kw_wire_alloc_result *r = &a->res;
    r->rows = a->rows;
    r->positions = a->positions;
    r->choice = a->choice;
    r->distortion = 0.0;
    memset(r->per_codec, 0, sizeof r->per_codec);
    for (uint32_t t = 0; t < in->n_tokens; ++t) {
        const double *dist = a->dist + (size_t)t * KW__ALLOC_OPTIONS;
        if (dist[0] >= 0.0) r->distortion += dist[a->choice[t]];
        if (a->choice[t]) ++r->per_codec[a->choice[t] - 1];
    }
    *out = r;
    return 0;
}
