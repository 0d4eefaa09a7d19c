/* kw_wire_spec.c: codec specs from and to their names (the command line, the HTTP API, configs), one parser for all
 * of them. Pure string work over the name tables of kw_wire_common.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_status.h"
#include "wire/kw_wire.h"

int kw_wire_spec_parse(const char *codec, const char *gran, const char *scale, kw_wire_codec_spec *out) {
    KW_RETURN_IF(codec == NULL || out == NULL, KW_E_INVALID_ARG, "codec spec: NULL argument");
    memset(out, 0, sizeof *out);
    for (uint32_t c = 1; c < KW_WIRE_CODEC_COUNT; ++c)
        if (strcmp(codec, kw_wire_codec_name(c)) == 0) out->codec = (uint8_t)c;
    KW_RETURN_IF(out->codec == 0, KW_E_INVALID_ARG, "unknown codec '%s'", codec);
    if (out->codec == KW_WIRE_CODEC_BF16 || out->codec == KW_WIRE_CODEC_F16) {
        out->granularity = KW_WIRE_GRAN_NONE;
        out->scale_dtype = KW_WIRE_SCALE_NONE;
        return 0;
    }
    KW_RETURN_IF(gran == NULL || scale == NULL, KW_E_INVALID_ARG, "codec %s needs a granularity and a scale", codec);
    if (strncmp(gran, "group", 5) == 0) {
        char *end = NULL;
        const long g = strtol(gran + 5, &end, 10);
        KW_RETURN_IF(gran[5] < '0' || gran[5] > '9' || !end || *end || g < 4 || g > 1024 || (g & (g - 1)),
                     KW_E_INVALID_ARG, "granularity group wants a power of two in 4..1024 (groupN), got '%s'", gran);
        out->granularity = KW_WIRE_GRAN_GROUP;
        while ((1L << out->group_log2) < g)
            ++out->group_log2;
    } else {
        for (uint32_t g = KW_WIRE_GRAN_LAYER; g <= KW_WIRE_GRAN_TOKEN; ++g)
            if (strcmp(gran, kw_wire_gran_name(g)) == 0) out->granularity = (uint8_t)g;
        KW_RETURN_IF(out->granularity == 0, KW_E_INVALID_ARG, "unknown granularity '%s'", gran);
    }
    for (uint32_t s = KW_WIRE_SCALE_F16; s <= KW_WIRE_SCALE_E8M0; ++s)
        if (strcmp(scale, kw_wire_scale_name(s)) == 0) out->scale_dtype = (uint8_t)s;
    KW_RETURN_IF(out->scale_dtype == 0, KW_E_INVALID_ARG, "unknown scale dtype '%s'", scale);
    return 0;
}

void kw_wire_spec_gran_format(const kw_wire_codec_spec *spec, char *buf, size_t cap) {
    if (spec->granularity == KW_WIRE_GRAN_GROUP)
        snprintf(buf, cap, "group%u", 1u << spec->group_log2);
    else
        snprintf(buf, cap, "%s", spec->granularity ? kw_wire_gran_name(spec->granularity) : "none");
}
