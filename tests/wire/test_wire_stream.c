/* test_wire_stream.c: the streaming decoder against the one-shot reader. Blobs (several shapes, codecs, compressed
 * and not) are fed in every chunk size from 1 to 64 bytes and in random chunkings, each chunk copied into a buffer of
 * exactly its size so that AddressSanitizer catches any read past what the decoder was given; the results (events,
 * positions, values, breakdown) must equal the one-shot decode. Also: event order, memory bound, reuse after reset. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "tests/wire/wire_mutate.h"

/* Streams blob in chunks of `fixed` bytes (0: random sizes), each chunk in its own exact-size allocation. Checks the
 * event order and returns the decode. */
static int stream_exact(const uint8_t *blob, size_t size, wt_rng *r, size_t fixed, wt_blob_out *o, size_t *peak) {
    memset(o, 0, sizeof *o);
    kw_wire_decoder *d;
    int rc = kw_wire_decoder_create(NULL, &d);
    if (rc < 0) return rc;
    size_t at = 0;
    int headers = 0, ended = 0;
    while (at < size && rc >= 0) {
        size_t n = fixed ? fixed : 1 + wt_below(r, wt_below(r, 4) == 0 ? 4096 : 40);
        n = n < size - at ? n : size - at;
        uint8_t *chunk = wt_xmalloc(n);
        memcpy(chunk, blob + at, n);
        size_t off = 0;
        while (off < n) {
            size_t used;
            rc = kw_wire_decoder_feed(d, chunk + off, n - off, &used);
            off += used;
            if (rc < 0) break;
            if (rc == KW_WIRE_EVENT_HEADER) {
                assert_int_equal(headers++, 0);
                o->hdr = *kw_wire_decoder_header(d);
            } else if (rc == KW_WIRE_EVENT_SECTION) {
                assert_int_equal(headers, 1);
                assert_int_equal(ended, 0);
                const int t = wt_take_section(&o->hdr, kw_wire_decoder_section(d), o); /* while chunk is alive */
                if (t < 0) rc = t;
            } else if (rc == KW_WIRE_EVENT_END) {
                ended = 1;
            } else {
                assert_int_equal(off, n); /* NEED_MORE consumes everything */
            }
        }
        free(chunk);
        at += n;
    }
    if (rc >= 0) rc = kw_wire_decoder_finish(d);
    if (rc == 0) assert_int_equal(ended, 1);
    o->bd = *kw_wire_decoder_breakdown(d);
    *peak = kw_wire_decoder_peak_bytes(d);
    kw_wire_decoder_destroy(d);
    return rc;
}

static void make_blob(wt_rng *r, int variant, uint8_t **blob, size_t *size, size_t *largest_section) {
    const uint32_t H = 1 + wt_below(r, 4), D = 8 * (1 + wt_below(r, 8)), P = 1 + wt_below(r, 300);
    const uint32_t n = 1 + wt_below(r, 4);
    const kw_wire_header hdr = {.n_layers = 16,
                                .n_sections = (uint16_t)n,
                                .n_kv_heads = (uint16_t)H,
                                .head_dim = (uint16_t)D,
                                .n_positions = P,
                                .src_dtype = KW_WIRE_DTYPE_BF16};
    kw_wire_layer_in in[4];
    kw_wire_policy pol[4];
    uint16_t *data[4];
    uint32_t *pos[4];
    *largest_section = 0;
    for (uint32_t i = 0; i < n; ++i) {
        const uint32_t T = 1 + wt_below(r, P);
        pos[i] = wt_xmalloc(T * 4);
        wt_sample_positions(r, P, T, pos[i]);
        const size_t cnt = (size_t)H * T * D;
        data[i] = wt_xmalloc(cnt * 2);
        for (size_t k = 0; k < cnt; ++k)
            data[i][k] = kw_f32_to_bf16(variant == 1 ? (float)(k % 7) : wt_bell(r)); /* variant 1 compresses */
        in[i] = (kw_wire_layer_in){.layer = 3 * i + 1, .n_tokens = T, .positions = pos[i]};
        in[i].k = (kw_wire_tensor_in){data[i], (size_t)T * D, D, NULL};
        in[i].v = in[i].k;
        const uint8_t codec = (uint8_t)(KW_WIRE_CODEC_INT8 + wt_below(r, 6));
        memset(&pol[i], 0, sizeof pol[i]);
        pol[i].k = (kw_wire_codec_spec){codec, (uint8_t)(1 + wt_below(r, 3)), (uint8_t)(1 + wt_below(r, 4)), 0};
        pol[i].v = (kw_wire_codec_spec){KW_WIRE_CODEC_BF16, 0, 0, 0};
        pol[i].zstd_level = variant == 1 ? 3 : 0;
        size_t s;
        assert_int_equal(kw_wire_section_size(&hdr, &pol[i], T, pos[i], &s), 0);
        *largest_section = s > *largest_section ? s : *largest_section;
    }
    assert_int_equal(wt_encode_blob(&hdr, in, pol, n, 0, blob, size), 0);
    for (uint32_t i = 0; i < n; ++i) {
        free(data[i]);
        free(pos[i]);
    }
}

static void test_chunkings_match_oneshot(void **state) {
    (void)state;
    wt_rng r = {99};
    for (int b = 0; b < 24; ++b) {
        uint8_t *blob = NULL;
        size_t size = 0, largest = 0;
        make_blob(&r, b % 2, &blob, &size, &largest);
        wt_blob_out ref;
        assert_int_equal(wt_decode_oneshot(blob, size, NULL, &ref), 0);
        assert_int_equal(ref.bd.total, size);
        for (size_t chunk = 0; chunk <= 64; ++chunk) {
            if (chunk > 8 && b % 4 != 0 && chunk % 9 != 0) continue; /* all sizes on some blobs */
            for (int rep = 0; rep < (chunk == 0 ? 4 : 1); ++rep) {
                wt_blob_out o;
                size_t peak;
                assert_int_equal(stream_exact(blob, size, &r, chunk, &o, &peak), 0);
                assert_true(wt_blob_out_equal(&ref, &o));
                /* bounded memory: about one section (x2 for geometric growth) plus the struct and the groups */
                assert_true(peak <= 2 * largest + 65536);
                wt_blob_out_free(&o);
            }
        }
        wt_blob_out_free(&ref);
        free(blob);
    }
}

static void test_reset_reuse(void **state) {
    (void)state;
    wm_blob b;
    wm_base(&b);
    kw_wire_decoder *d;
    assert_int_equal(kw_wire_decoder_create(NULL, &d), 0);
    for (int round = 0; round < 3; ++round) {
        size_t at = 0, used;
        int ev, sections = 0;
        while ((ev = kw_wire_decoder_feed(d, b.data + at, b.size - at, &used)) != KW_WIRE_EVENT_END) {
            assert_true(ev > 0);
            sections += ev == KW_WIRE_EVENT_SECTION;
            at += used;
        }
        assert_int_equal(sections, 3);
        assert_int_equal(kw_wire_decoder_offset(d), b.size);
        kw_wire_decoder_reset(d);
        /* stop half-way through a section, then reset */
        assert_int_equal(kw_wire_decoder_feed(d, b.data, b.sec[1] + 40, &used), KW_WIRE_EVENT_HEADER);
        assert_int_equal(kw_wire_decoder_feed(d, b.data + used, b.sec[1] + 40 - used, &used), KW_WIRE_EVENT_SECTION);
        kw_wire_decoder_reset(d);
    }
    kw_wire_decoder_destroy(d);
    free(b.data);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chunkings_match_oneshot),
        cmocka_unit_test(test_reset_reuse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
