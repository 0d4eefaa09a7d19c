/* kw_wire_roundtrip.c: what a receiver decodes from some rows: one layer's rows through a one-section KVWire blob and
 * back, in memory (the receiver-aware selections score the quantized rows with it, c2c/kw_rscore.h). */
#include <stdlib.h>

#include "common/kw_status.h"
#include "wire/kw_wire.h"

int kw_wire_roundtrip_rows(const kw_wire_codec_spec *k_spec, const kw_wire_codec_spec *v_spec, int32_t layer, int64_t n,
                           int32_t heads, int32_t head_dim, float *k, float *v) {
    KW_RETURN_IF(!k_spec || !v_spec || !k || !v || layer < 0 || layer >= KW_WIRE_MAX_LAYERS || n < 1 ||
                     n > KW_WIRE_MAX_POSITIONS || heads < 1 || head_dim < 1,
                 KW_E_INVALID_ARG, "wire round trip: bad arguments");
    const kw_wire_policy pol = {.k = *k_spec, .v = *v_spec, .index_encoding = KW_WIRE_INDEX_AUTO};
    const kw_wire_header hdr = {.n_layers = (uint16_t)(layer + 1),
                                .n_sections = 1,
                                .n_kv_heads = (uint16_t)heads,
                                .head_dim = (uint16_t)head_dim,
                                .n_positions = (uint32_t)n,
                                .src_dtype = KW_WIRE_DTYPE_F32,
                                .version = kw_wire_policy_needs_v11(&pol) ? KW_WIRE_VERSION_1_1 : KW_WIRE_VERSION};
    const size_t row = (size_t)heads * (size_t)head_dim;
    const kw_wire_layer_in in = {.layer = (uint32_t)layer,
                                 .n_tokens = (uint32_t)n,
                                 .k = {.data = k, .head_stride = (size_t)head_dim, .token_stride = row},
                                 .v = {.data = v, .head_stride = (size_t)head_dim, .token_stride = row}};
    kw_wire_encoder *enc = NULL;
    kw_wire_reader *reader = NULL;
    unsigned char *blob = NULL;
    size_t cap = 0, used = 0, part = 0;
    int rc;
    KW_CHECK(kw_wire_section_bound(&hdr, &pol, (uint32_t)n, &cap));
    cap += KW_WIRE_HEADER_BYTES + KW_WIRE_TRAILER_BYTES + KW_WIRE_CHECKSUM_BYTES;
    blob = malloc(cap);
    KW_CHECK_IF(blob == NULL, KW_E_NOMEM, "wire round trip: out of memory for %zu bytes", cap);
    KW_CHECK(kw_wire_encoder_create(&hdr, NULL, &enc));
    KW_CHECK(kw_wire_encoder_write_header(enc, blob, cap, &part));
    used += part;
    KW_CHECK(kw_wire_encoder_write_section(enc, &in, &pol, blob + used, cap - used, &part));
    used += part;
    KW_CHECK(kw_wire_encoder_write_trailer(enc, blob + used, cap - used, &part));
    used += part;
    const kw_wire_header *got = NULL;
    const kw_wire_section *sec = NULL;
    KW_CHECK(kw_wire_reader_open(blob, used, NULL, &reader, &got));
    KW_CHECK(kw_wire_reader_next(reader, &sec));
    KW_CHECK_IF(rc != 1 || sec->n_tokens != (uint32_t)n, KW_E_STATE, "wire round trip: the section did not come back");
    const kw_wire_tensor_out ko = {
        .data = k, .dtype = KW_WIRE_DTYPE_F32, .head_stride = (size_t)head_dim, .token_stride = row};
    const kw_wire_tensor_out vo = {
        .data = v, .dtype = KW_WIRE_DTYPE_F32, .head_stride = (size_t)head_dim, .token_stride = row};
    KW_CHECK(kw_wire_section_dequantize(sec, &ko, &vo));
    rc = 0;
out:
    kw_wire_reader_close(reader);
    kw_wire_encoder_destroy(enc);
    free(blob);
    return rc;
}

int kw_wire_roundtrip_rows_hook(void *user, int32_t layer, int64_t n, int32_t heads, int32_t head_dim, float *k,
                                float *v) {
    const kw_wire_policy *pol = user;
    return kw_wire_roundtrip_rows(&pol->k, &pol->v, layer, n, heads, head_dim, k, v);
}
