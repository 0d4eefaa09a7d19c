/* kw_wire_spec.c: codec specs from and to their names (the command line, the HTTP API, configs), one parser for all
 * of them. Pure string work over the name tables of kw_wire_common.c. */
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

/* 1 if rule r covers position p of a prompt of n_positions. */
static int kw__wire_rule_covers(const kw_wire_token_rule *r, uint32_t p, uint32_t n_positions) {
    if (r->from_end) return (uint64_t)p + r->first >= n_positions;
    return p >= r->first && p <= r->last;
}

int kw_wire_token_split(const kw_wire_token_rule *rules, uint32_t n_rules, int strict, const uint32_t *positions,
                        uint32_t p0, uint32_t n, uint32_t n_positions, const kw_wire_codec_spec *k,
                        const kw_wire_codec_spec *v, kw_wire_token_group *groups, uint32_t *n_groups) {
    KW_RETURN_IF((n_rules && !rules) || !k || !v || !n_groups || (n && !groups), KW_E_INVALID_ARG,
                 "token split: NULL argument");
    uint32_t g = 0, any = 0;
    int64_t prev = -2;
    for (uint32_t i = 0; i < n; ++i) {
        const uint32_t p = positions ? positions[i] : p0 + i;
        int64_t rule = -1;
        for (uint32_t r = 0; r < n_rules; ++r) {
            if (!kw__wire_rule_covers(&rules[r], p, n_positions)) continue;
            KW_RETURN_IF(strict && rule >= 0, KW_E_INVALID_ARG,
                         "token schedule: entries %lld and %u both cover position %u (of %u)", (long long)rule, r, p,
                         n_positions);
            if (rule < 0) rule = r;
            if (!strict) break;
        }
        if (rule != prev) {
            groups[g++] = (kw_wire_token_group){.k = rule < 0 ? *k : rules[rule].k, .v = rule < 0 ? *v : rules[rule].v};
            prev = rule;
        }
        any |= rule >= 0;
        groups[g - 1].n_tokens++;
    }
    *n_groups = any ? g : 0;
    return 0;
}
