/* fuzz_wire_decode.c: libFuzzer target for the one-shot KVWire reader. Any input, as given and with its checksums
 * resealed (so mutations reach past them): no crash, no leak, no read out of bounds, and the invariants of
 * fuzz_wire_common.h on whatever decodes. */
#include "tests/fuzz/fuzz_wire_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_digest dg = {0};
    FUZZ_CHECK(fuzz_wire_oneshot(data, size, &dg) <= 0);
    uint8_t *copy = malloc(size ? size : 1);
    FUZZ_CHECK(copy);
    memcpy(copy, data, size);
    fuzz_wire_reseal(copy, size);
    FUZZ_CHECK(fuzz_wire_oneshot(copy, size, &dg) <= 0);
    free(copy);
    return 0;
}
