/* kw_receive_preview.c: scoring a preview blob at the receiver (see kw_receive_preview.h). */
#include "receiver/kw_receive_preview.h"

#include <stdlib.h>
#include <string.h>

#include "common/kw_status.h"
#include "common/kw_time.h"
#include "wire/kw_wire.h"

/* The decoded rows of one preview section: positions and K, V as (T, heads, head_dim) f32. */
typedef struct kw_preview_rows {
    uint32_t *positions;
    float *k, *v;
    int64_t cap;
} kw_preview_rows;

static int kw_preview_rows_decode(const kw_wire_section *sec, kw_preview_rows *b) {
    const int64_t T = sec->n_tokens, row = (int64_t)sec->n_kv_heads * (int64_t)sec->head_dim;
    if (T * row > b->cap) {
        free(b->k), free(b->v), free(b->positions);
        b->k = malloc((size_t)(T * row) * sizeof(float));
        b->v = malloc((size_t)(T * row) * sizeof(float));
        b->positions = malloc((size_t)T * sizeof *b->positions);
        b->cap = b->k && b->v && b->positions ? T * row : 0;
        KW_RETURN_IF(b->cap == 0, KW_E_NOMEM, "preview: out of memory for %lld rows", (long long)T);
    }
    KW_FORWARD(kw_wire_section_positions(sec, b->positions, (size_t)T));
    const kw_wire_tensor_out ko = {
        .data = b->k, .dtype = KW_WIRE_DTYPE_F32, .head_stride = sec->head_dim, .token_stride = (size_t)row};
    const kw_wire_tensor_out vo = {
        .data = b->v, .dtype = KW_WIRE_DTYPE_F32, .head_stride = sec->head_dim, .token_stride = (size_t)row};
    return kw_wire_section_dequantize(sec, &ko, &vo);
}

int kw_receive_preview_score(kw_rscore *r, kw_fusion *f, int32_t sharer, const kw_select_policy *pol, const void *blob,
                             size_t len, kw_rselect *sel, kw_receive_preview_stats *stats) {
    KW_RETURN_IF(r == NULL || f == NULL || pol == NULL || blob == NULL || sel == NULL, KW_E_INVALID_ARG,
                 "preview: NULL argument");
    int32_t heads = 0, dim = 0;
    KW_FORWARD(kw_fusion_sharer_geometry(f, sharer, NULL, &heads, &dim));
    kw_wire_reader *reader = NULL;
    const kw_wire_header *hdr = NULL;
    kw_preview_rows b = {0};
    int64_t *out = NULL;
    kw_receive_preview_stats st = {0};
    int rc;
    uint64_t t0 = kw_time_now_ns();
    KW_CHECK(kw_wire_reader_open(blob, len, NULL, &reader, &hdr));
    KW_CHECK_IF(hdr->n_kv_heads != (uint32_t)heads || hdr->head_dim != (uint32_t)dim, KW_E_SHAPE,
                "preview: a blob of %u heads of %u, the sharer has %d of %d", (unsigned)hdr->n_kv_heads,
                (unsigned)hdr->head_dim, (int)heads, (int)dim);
    for (;;) {
        const kw_wire_section *sec = NULL;
        KW_CHECK(kw_wire_reader_next(reader, &sec));
        if (rc == 0) break;
        KW_CHECK_IF(sec->n_tokens < 1, KW_E_PARSE, "preview: layer %u carries no row", (unsigned)sec->layer);
        KW_CHECK(kw_preview_rows_decode(sec, &b));
        const int64_t T = sec->n_tokens, pos0 = b.positions[0];
        KW_CHECK_IF((int64_t)b.positions[T - 1] != pos0 + T - 1, KW_E_PARSE,
                    "preview: layer %u carries %lld rows that are not one whole section", (unsigned)sec->layer,
                    (long long)T);
        st.decode_ms += kw_time_ms(t0, kw_time_now_ns());
        const uint64_t t1 = kw_time_now_ns();
        free(out);
        out = malloc((size_t)T * sizeof *out);
        KW_CHECK_IF(out == NULL, KW_E_NOMEM, "preview: out of memory");
        int64_t n_out = 0;
        kw_share_targets targets;
        KW_CHECK(kw_rscore_select(r, pol, (int32_t)sec->layer, pos0, T, b.k, b.v, out, &n_out, &targets));
        KW_CHECK(kw_rselect_add(sel, pos0, T, (int32_t)sec->layer, out, n_out, &targets));
        st.score_ms += kw_time_ms(t1, kw_time_now_ns());
        ++st.layers;
        st.rows += T;
        t0 = kw_time_now_ns();
    }
    rc = 0;
out:
    if (stats) {
        stats->decode_ms += st.decode_ms, stats->score_ms += st.score_ms;
        stats->layers += st.layers, stats->rows += st.rows;
    }
    free(out);
    free(b.k), free(b.v), free(b.positions);
    kw_wire_reader_close(reader);
    return rc;
}
