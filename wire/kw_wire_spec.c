/* kw_wire_spec.c: codec specs from and to their names (the command line, the HTTP API, configs), one parser for all
 * of them, pure string work over the name tables of kw_wire_common.c; and the per-token schedule's split of a
 * section's rows into token groups (kw_wire_token_split), on the rules' sorted intervals. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_status.h"
#include "wire/kw_wire_internal.h"

static int kw__wire_spec_parse_names(const char *codec, const char *gran, const char *scale, kw_wire_codec_spec *out);

int kw_wire_spec_parse(const char *codec, const char *gran, const char *scale, kw_wire_codec_spec *out) {
    return kw_wire_spec_parse_v(codec, gran, scale, KW_WIRE_VERSION, out);
}

int kw_wire_spec_parse_v(const char *codec, const char *gran, const char *scale, uint16_t version,
                         kw_wire_codec_spec *out) {
    KW_FORWARD(kw__wire_spec_parse_names(codec, gran, scale, out));
    KW_RETURN_IF(!kw__wire_is_v11(version) && kw_wire_spec_needs_v11(out), KW_E_INVALID_ARG,
                 "codec %s/%s/%s needs KVWire v1.1 (int3, int2, -asym, channel<L> and log8 are not accepted here yet)",
                 codec, gran ? gran : "-", scale ? scale : "-");
    return 0;
}

/* Reads the names of every version into *out. */
static int kw__wire_spec_parse_names(const char *codec, const char *gran, const char *scale, kw_wire_codec_spec *out) {
    KW_RETURN_IF(codec == NULL || out == NULL, KW_E_INVALID_ARG, "codec spec: NULL argument");
    memset(out, 0, sizeof *out);
    /* "<codec>-asym": an integer codec with zero points (KVWire v1.1) */
    static const char asym[] = "-asym";
    size_t len = strlen(codec);
    if (len > sizeof asym - 1 && strcmp(codec + len - (sizeof asym - 1), asym) == 0) {
        out->scale_dtype = KW_WIRE_SCALE_ZERO_POINTS; /* the dtype is ORed in below */
        len -= sizeof asym - 1;
    }
    for (uint32_t c = 1; c < KW_WIRE_CODEC_COUNT_V11; ++c)
        if (strlen(kw_wire_codec_name(c)) == len && strncmp(codec, kw_wire_codec_name(c), len) == 0)
            out->codec = (uint8_t)c;
    KW_RETURN_IF(out->codec == 0, KW_E_INVALID_ARG, "unknown codec '%s'", codec);
    const int zp = out->scale_dtype != 0;
    KW_RETURN_IF(zp && !kw_wire_codec_is_int(out->codec), KW_E_INVALID_ARG,
                 "codec '%s': only the integer codecs (int2, int3, int4, int6, int8) take -asym", codec);
    if (out->codec == KW_WIRE_CODEC_BF16 || out->codec == KW_WIRE_CODEC_F16) {
        out->granularity = KW_WIRE_GRAN_NONE;
        out->scale_dtype = KW_WIRE_SCALE_NONE;
        return 0;
    }
    KW_RETURN_IF(gran == NULL || scale == NULL, KW_E_INVALID_ARG, "codec %s needs a granularity and a scale", codec);
    if (strncmp(gran, "group", 5) == 0 || strncmp(gran, "channel", 7) == 0) {
        /* group<G>: G channels per scale; channel<L>: one scale per channel over runs of L tokens */
        const int channel = gran[0] == 'c';
        const char *num = gran + (channel ? 7 : 5);
        const long lo = channel ? 1 : 4, hi = channel ? 1L << KW_WIRE_MAX_RUN_LOG2 : 1024;
        char *end = NULL;
        const long g = strtol(num, &end, 10);
        KW_RETURN_IF(*num < '0' || *num > '9' || !end || *end || g < lo || g > hi || (g & (g - 1)), KW_E_INVALID_ARG,
                     "granularity %s wants a power of two in %ld..%ld (%sN), got '%s'", channel ? "channel" : "group",
                     lo, hi, channel ? "channel" : "group", gran);
        out->granularity = channel ? KW_WIRE_GRAN_CHANNEL : KW_WIRE_GRAN_GROUP;
        while ((1L << out->group_log2) < g)
            ++out->group_log2;
    } else {
        for (uint32_t g = KW_WIRE_GRAN_LAYER; g <= KW_WIRE_GRAN_TOKEN; ++g)
            if (strcmp(gran, kw_wire_gran_name(g)) == 0) out->granularity = (uint8_t)g;
        KW_RETURN_IF(out->granularity == 0, KW_E_INVALID_ARG, "unknown granularity '%s'", gran);
    }
    uint32_t sdt = 0;
    for (uint32_t s = KW_WIRE_SCALE_F16; s <= KW_WIRE_SCALE_LOG8; ++s)
        if (strcmp(scale, kw_wire_scale_name(s)) == 0) sdt = s;
    KW_RETURN_IF(sdt == 0, KW_E_INVALID_ARG, "unknown scale dtype '%s'", scale);
    out->scale_dtype = (uint8_t)(out->scale_dtype | sdt);
    KW_RETURN_IF(zp && (sdt == KW_WIRE_SCALE_E8M0 || sdt == KW_WIRE_SCALE_LOG8), KW_E_INVALID_ARG,
                 "codec '%s': zero points need an f16, bf16 or f32 scale dtype, not %s", codec, scale);
    KW_RETURN_IF(sdt == KW_WIRE_SCALE_LOG8 && !kw_wire_codec_is_int(out->codec), KW_E_INVALID_ARG,
                 "codec '%s': log8 scales (KVWire v1.1) are for the integer codecs (int2, int3, int4, int6, int8)",
                 codec);
    return 0;
}

void kw_wire_spec_codec_format(const kw_wire_codec_spec *spec, char *buf, size_t cap) {
    snprintf(buf, cap, "%s%s", kw_wire_codec_name(spec->codec), kw_wire_spec_asym(spec) ? "-asym" : "");
}

void kw_wire_spec_gran_format(const kw_wire_codec_spec *spec, char *buf, size_t cap) {
    if (spec->granularity == KW_WIRE_GRAN_GROUP || spec->granularity == KW_WIRE_GRAN_CHANNEL)
        snprintf(buf, cap, "%s%u", kw_wire_gran_name(spec->granularity), 1u << spec->group_log2);
    else
        snprintf(buf, cap, "%s", spec->granularity ? kw_wire_gran_name(spec->granularity) : "none");
}

/* The rules as the sorted segments of positions they cover. A rule covers the half-open interval [lo, hi) of
 * positions (hi up to 2^32, so 64-bit): first..last, or with from_end every position from n_positions - first on
 * (the old test (uint64_t)p + first >= n_positions). An edge is where a rule's interval starts or ends. */
typedef struct kw__wire_edge {
    uint64_t at;
    uint32_t rule;
} kw__wire_edge;

/* A segment [at, the next segment's at) of positions and the two lowest rules covering it (-1: none). */
typedef struct kw__wire_segment {
    uint64_t at;
    int64_t first, second;
} kw__wire_segment;

static int kw__wire_edge_cmp(const void *a, const void *b) {
    const uint64_t x = ((const kw__wire_edge *)a)->at, y = ((const kw__wire_edge *)b)->at;
    return (x > y) - (x < y);
}

/* The segments of rules[0 .. n_rules) on a prompt of n_positions into seg (2 * n_rules entries, the caller's): a
 * sweep over the sorted edges toggling each rule's bit in active (one bit per rule, the caller's zeroed words),
 * O(R log R + R^2 / 64) for R rules, whatever the positions' values. @return the number of segments. */
static uint32_t kw__wire_segments(const kw_wire_token_rule *rules, uint32_t n_rules, uint32_t n_positions,
                                  kw__wire_edge *edges, uint64_t *active, kw__wire_segment *seg) {
    uint32_t n_edges = 0, m = 0;
    for (uint32_t r = 0; r < n_rules; ++r) {
        const kw_wire_token_rule *x = &rules[r];
        const uint64_t lo = !x->from_end ? x->first : x->first >= n_positions ? 0 : n_positions - x->first;
        const uint64_t hi = x->from_end ? (uint64_t)UINT32_MAX + 1 : (uint64_t)x->last + 1;
        if (lo >= hi) continue; /* first > last: no position */
        edges[n_edges++] = (kw__wire_edge){lo, r};
        edges[n_edges++] = (kw__wire_edge){hi, r};
    }
    qsort(edges, n_edges, sizeof *edges, kw__wire_edge_cmp);
    const uint32_t words = (n_rules + 63) / 64;
    for (uint32_t e = 0; e < n_edges;) {
        const uint64_t at = edges[e].at;
        for (; e < n_edges && edges[e].at == at; ++e) /* a rule starts and ends at different edges */
            active[edges[e].rule / 64] ^= (uint64_t)1 << (edges[e].rule % 64);
        kw__wire_segment s = {at, -1, -1};
        for (uint32_t w = 0; w < words && s.second < 0; ++w)
            for (uint64_t bits = active[w]; bits && s.second < 0; bits &= bits - 1) {
                const int64_t r = (int64_t)w * 64 + __builtin_ctzll(bits);
                *(s.first < 0 ? &s.first : &s.second) = r;
            }
        seg[m++] = s;
    }
    return m;
}

/* The segment holding position p among seg[0 .. m) (sorted by at), starting from the guess *hint (rows mostly
 * ascend); NULL before the first. */
static const kw__wire_segment *kw__wire_segment_of(const kw__wire_segment *seg, uint32_t m, uint32_t *hint,
                                                   uint32_t p) {
    uint32_t j = *hint;
    if (!(j < m && seg[j].at <= p && (j + 1 == m || p < seg[j + 1].at))) {
        uint32_t lo = 0, hi = m; /* the first segment starting after p */
        while (lo < hi) {
            const uint32_t mid = lo + (hi - lo) / 2;
            if (seg[mid].at <= p)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo == 0) return NULL;
        j = lo - 1;
    }
    *hint = j;
    return &seg[j];
}

int kw_wire_token_split(const kw_wire_token_rule *rules, uint32_t n_rules, int strict, const uint32_t *positions,
                        uint32_t p0, uint32_t n, uint32_t n_positions, const kw_wire_codec_spec *k,
                        const kw_wire_codec_spec *v, kw_wire_token_group *groups, uint32_t *n_groups) {
    KW_RETURN_IF((n_rules && !rules) || !k || !v || !n_groups || (n && !groups), KW_E_INVALID_ARG,
                 "token split: NULL argument");
    /* the sweep counts 2 edges per rule in 32 bits (peers send at most 512 rules) */
    KW_RETURN_IF(n_rules > UINT32_MAX / 2, KW_E_INVALID_ARG, "token split: %u rules, at most %u", n_rules,
                 UINT32_MAX / 2);
    const size_t words = ((size_t)n_rules + 63) / 64;
    void *mem = NULL; /* owned: the edges, segments and active bits of the rules */
    kw__wire_edge *edges = NULL;
    kw__wire_segment *seg = NULL;
    uint32_t m = 0, hint = 0;
    if (n_rules > 0) {
        mem = calloc(1, 2 * (size_t)n_rules * (sizeof *edges + sizeof *seg) + words * sizeof(uint64_t));
        KW_RETURN_IF(mem == NULL, KW_E_NOMEM, "token split: out of memory for %u rules", n_rules);
        seg = mem;
        edges = (kw__wire_edge *)(seg + 2 * (size_t)n_rules);
        m = kw__wire_segments(rules, n_rules, n_positions, edges, (uint64_t *)(edges + 2 * (size_t)n_rules), seg);
    }
    uint32_t g = 0, any = 0;
    int64_t prev = -2;
    int rc = 0;
    for (uint32_t i = 0; i < n; ++i) {
        const uint32_t p = positions ? positions[i] : p0 + i;
        const kw__wire_segment *s = kw__wire_segment_of(seg, m, &hint, p);
        const int64_t rule = s ? s->first : -1;
        KW_CHECK_IF(strict && s && s->second >= 0, KW_E_INVALID_ARG,
                    "token schedule: entries %lld and %lld both cover position %u (of %u)", (long long)rule,
                    (long long)s->second, p, n_positions);
        if (rule != prev) {
            groups[g++] = (kw_wire_token_group){.k = rule < 0 ? *k : rules[rule].k, .v = rule < 0 ? *v : rules[rule].v};
            prev = rule;
        }
        any |= rule >= 0;
        groups[g - 1].n_tokens++;
    }
    *n_groups = any ? g : 0;
out:
    free(mem);
    return rc;
}
