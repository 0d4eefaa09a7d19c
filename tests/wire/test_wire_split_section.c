/* test_wire_split_section.c: kw_wire_encoder_begin_section / finish_section, the encoder path for tensor bytes made
 * elsewhere (the GPU encoder). Filled with the tensor bytes of an ordinary write_section of the same inputs, the split
 * path gives the same blob byte for byte (compressed sections too); finish without begin, a failed begin and an
 * abandoned section leave the encoder as it was. The GPU side is tests/gpu_emu/test_cuda_wire.cu. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/kw_status.h"
#include "tests/wire/wire_test_util.h"

enum { H = 2, D = 16, T = 6, CAP = 1 << 14 };

static const kw_wire_header hdr = {
    .n_layers = 4, .n_sections = 2, .n_kv_heads = H, .head_dim = D, .n_positions = 32, .src_dtype = KW_WIRE_DTYPE_F32};

static void test_split_equals_write(void **state) {
    (void)state;
    wt_rng r = {5};
    float k[T * H * D], v[T * H * D];
    for (int i = 0; i < T * H * D; ++i) {
        k[i] = wt_bell(&r);
        v[i] = (float)(i % 7) * 0.25f; /* repetitive: zstd makes it smaller */
    }
    const uint32_t pos[T] = {1, 3, 4, 9, 10, 20};
    kw_wire_policy pol[2] = {
        {.k = {KW_WIRE_CODEC_INT4, KW_WIRE_GRAN_GROUP, KW_WIRE_SCALE_F16, 3},
         .v = {KW_WIRE_CODEC_INT8, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_BF16, 0}},
        {.k = {KW_WIRE_CODEC_NF4, KW_WIRE_GRAN_HEAD, KW_WIRE_SCALE_E8M0, 0},
         .v = {KW_WIRE_CODEC_BF16, 0, 0, 0},
         .zstd_level = 3},
    };
    kw_wire_layer_in in = {.n_tokens = T, .positions = pos, .k = {k, D, H * D, NULL}, .v = {v, D, H * D, NULL}};
    kw_wire_encoder *a = NULL, *b = NULL;
    assert_int_equal(kw_wire_encoder_create(&hdr, NULL, &a), 0);
    assert_int_equal(kw_wire_encoder_create(&hdr, NULL, &b), 0);
    uint8_t *blob_a = wt_xmalloc(CAP), *blob_b = wt_xmalloc(CAP), *plain = wt_xmalloc(CAP);
    size_t la = 0, lb = 0, w = 0, at = 0;
    /* finish before anything was begun */
    assert_int_equal(kw_wire_encoder_finish_section(b, &w), KW_E_STATE);
    assert_int_equal(kw_wire_encoder_write_header(a, blob_a, CAP, &w), 0);
    la += w;
    assert_int_equal(kw_wire_encoder_write_header(b, blob_b, CAP, &w), 0);
    lb += w;
    for (uint32_t s = 0; s < 2; ++s) {
        in.layer = 1 + s;
        assert_int_equal(kw_wire_encoder_write_section(a, &in, &pol[s], blob_a + la, CAP - la, &w), 0);
        la += w;
        /* the same section uncompressed from a third encoder: its tensor bytes are what the split path is given */
        kw_wire_policy raw = pol[s];
        raw.zstd_level = 0;
        kw_wire_encoder *c = NULL;
        kw_wire_header h1 = hdr;
        h1.n_sections = 1;
        size_t lc = 0;
        assert_int_equal(kw_wire_encoder_create(&h1, NULL, &c), 0);
        assert_int_equal(kw_wire_encoder_write_header(c, plain, CAP, &lc), 0);
        assert_int_equal(kw_wire_encoder_write_section(c, &in, &raw, plain + lc, CAP - lc, &w), 0);
        kw_wire_encoder_destroy(c);
        /* a begin that fails (layer out of range, then a short buffer) changes nothing */
        assert_int_equal(kw_wire_encoder_begin_section(b, 9, T, pos, &pol[s], blob_b + lb, CAP - lb, &at),
                         KW_E_INVALID_ARG);
        assert_int_equal(kw_wire_encoder_finish_section(b, &w), KW_E_STATE);
        assert_int_equal(kw_wire_encoder_begin_section(b, in.layer, T, pos, &pol[s], blob_b + lb, 40, &at),
                         KW_E_BUFFER_TOO_SMALL);
        /* an abandoned section: begun and never finished */
        assert_int_equal(kw_wire_encoder_begin_section(b, in.layer, T, pos, &pol[s], blob_b + lb, CAP - lb, &at), 0);
        assert_int_equal(kw_wire_encoder_begin_section(b, in.layer, T, pos, &pol[s], blob_b + lb, CAP - lb, &at), 0);
        const size_t tensors = w - at - KW_WIRE_CHECKSUM_BYTES; /* the plain section: head, table, index, tensors */
        memcpy(blob_b + lb + at, plain + lc + at, tensors);
        assert_int_equal(kw_wire_encoder_finish_section(b, &w), 0);
        lb += w;
        assert_int_equal(kw_wire_encoder_finish_section(b, &w), KW_E_STATE); /* finished once only */
    }
    assert_int_equal(kw_wire_encoder_write_trailer(a, blob_a + la, CAP - la, &w), 0);
    la += w;
    assert_int_equal(kw_wire_encoder_write_trailer(b, blob_b + lb, CAP - lb, &w), 0);
    lb += w;
    assert_int_equal(la, lb);
    assert_memory_equal(blob_a, blob_b, la);
    assert_int_equal(kw_wire_encoder_breakdown(b)->compressed_sections, 1);
    assert_memory_equal(kw_wire_encoder_breakdown(a), kw_wire_encoder_breakdown(b), sizeof(kw_wire_breakdown));
    kw_wire_encoder_destroy(a);
    kw_wire_encoder_destroy(b);
    free(blob_a);
    free(blob_b);
    free(plain);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_split_equals_write)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
