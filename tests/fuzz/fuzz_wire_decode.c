/* fuzz_wire_decode.c: libFuzzer target for the one-shot KVWire reader. Any input: no crash, no leak, no read out of
 * bounds, and the invariants of fuzz_wire_common.h on whatever decodes. */
#include "tests/fuzz/fuzz_wire_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_digest dg = {0};
    const int rc = fuzz_wire_oneshot(data, size, &dg);
    FUZZ_CHECK(rc <= 0);
    return 0;
}
