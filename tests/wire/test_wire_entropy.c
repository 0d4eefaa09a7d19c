/* test_wire_entropy.c: kw_wire_tensor_code_entropy, the order-0 entropy of a tensor's codes (`kvwire inspect` prints
 * it). Code streams of known symbol counts are packed at every width (int2, int3, int4, int6, int8): the result is
 * -sum n_c log2(n_c / n) computed here from the counts, exactly 0 for one symbol, exactly k bits per code for 2^k
 * equally frequent ones; passthrough tensors give 0 codes; bad arguments are refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <string.h>

#include "wire/kw_wire.h"

enum { N_CODES = 256 };

/* A view of n codes of `codec` packed from sym[] (each below 2^bits) into buf. */
static kw_wire_tensor_view pack(uint8_t codec, const uint32_t *sym, uint32_t n, uint8_t *buf) {
    const uint32_t b = kw_wire_codec_bits(codec);
    memset(buf, 0, (size_t)n * b / 8);
    for (uint32_t i = 0; i < n; ++i)
        kw_wire_field_put(b, buf, i, sym[i]);
    return (kw_wire_tensor_view){
        .spec = {codec, KW_WIRE_GRAN_TOKEN, KW_WIRE_SCALE_F16, 0}, .codes = buf, .code_bytes = (uint64_t)n * b / 8};
}

static void test_known_streams(void **state) {
    (void)state;
    static const uint8_t codecs[] = {KW_WIRE_CODEC_INT2, KW_WIRE_CODEC_INT3, KW_WIRE_CODEC_INT4, KW_WIRE_CODEC_INT6,
                                     KW_WIRE_CODEC_INT8, KW_WIRE_CODEC_NF4,  KW_WIRE_CODEC_E4M3};
    uint32_t sym[N_CODES];
    uint8_t buf[N_CODES];
    for (size_t c = 0; c < sizeof codecs; ++c) {
        const uint32_t b = kw_wire_codec_bits(codecs[c]), top = 1u << b;
        double bits = -1.0;
        uint64_t n = 0;
        for (uint32_t i = 0; i < N_CODES; ++i) /* one symbol, the largest field value: 0 bits */
            sym[i] = top - 1;
        kw_wire_tensor_view t = pack(codecs[c], sym, N_CODES, buf);
        assert_int_equal(kw_wire_tensor_code_entropy(&t, &bits, &n), 0);
        assert_int_equal(n, N_CODES);
        assert_true(bits == 0.0);
        for (uint32_t k = 1; k <= b; ++k) { /* 2^k symbols equally often, spread over the field: k bits a code */
            for (uint32_t i = 0; i < N_CODES; ++i)
                sym[i] = (i % (1u << k)) * (top >> k);
            t = pack(codecs[c], sym, N_CODES, buf);
            assert_int_equal(kw_wire_tensor_code_entropy(&t, &bits, &n), 0);
            if (fabs(bits - (double)k * N_CODES) > 1e-9)
                fail_msg("%s, %u symbols: %g bits, expected %u", kw_wire_codec_name(codecs[c]), 1u << k, bits,
                         k * N_CODES);
        }
        uint32_t counts[4] = {0};
        for (uint32_t i = 0; i < N_CODES; ++i) { /* skewed: 3 symbols at 1/2, 1/4 and 1/4, written as the formula */
            sym[i] = i % 4 == 0 ? 1 : i % 4 == 1 ? 2 : 0;
            ++counts[sym[i]];
        }
        double want = 0.0;
        for (int s = 0; s < 4; ++s)
            if (counts[s]) want -= counts[s] * log2((double)counts[s] / N_CODES);
        t = pack(codecs[c], sym, N_CODES, buf);
        assert_int_equal(kw_wire_tensor_code_entropy(&t, &bits, &n), 0);
        assert_true(fabs(bits - want) < 1e-9 && fabs(bits - 1.5 * N_CODES) < 1e-9);
    }
}

static void test_passthrough_and_refusals(void **state) {
    (void)state;
    uint8_t buf[64] = {0};
    kw_wire_tensor_view t = {
        .spec = {KW_WIRE_CODEC_BF16, KW_WIRE_GRAN_NONE, KW_WIRE_SCALE_NONE, 0}, .codes = buf, .code_bytes = sizeof buf};
    double bits = -1.0;
    uint64_t n = 7;
    assert_int_equal(kw_wire_tensor_code_entropy(&t, &bits, &n), 0);
    assert_true(bits == 0.0 && n == 0);
    assert_int_equal(kw_wire_tensor_code_entropy(NULL, &bits, &n), KW_E_INVALID_ARG);
    assert_int_equal(kw_wire_tensor_code_entropy(&t, NULL, &n), KW_E_INVALID_ARG);
    t.spec.codec = 200;
    assert_int_equal(kw_wire_tensor_code_entropy(&t, &bits, &n), KW_E_INVALID_ARG);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_streams),
        cmocka_unit_test(test_passthrough_and_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
