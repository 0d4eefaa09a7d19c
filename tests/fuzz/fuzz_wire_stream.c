/* fuzz_wire_stream.c: libFuzzer target for the streaming KVWire decoder. The first 8 input bytes choose the chunk
 * sizes (1 to 64 bytes, or a large chunk) and, by their lowest bit, whether the blob's checksums are resealed first;
 * the rest is the blob. Each chunk is fed from its own exact-size copy, so a
 * read past it is caught, and the result (status, sections, decoded values) must equal the one-shot decode of the
 * same blob. */
#include "tests/fuzz/fuzz_wire_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 8) return 0;
    uint64_t seed;
    memcpy(&seed, data, 8);
    size -= 8;
    uint8_t *blob = malloc(size ? size : 1); /* resealed copy: see fuzz_wire_reseal */
    FUZZ_CHECK(blob);
    memcpy(blob, data + 8, size);
    if (seed & 1) fuzz_wire_reseal(blob, size);
    data = blob;
    fuzz_digest one = {0}, str = {0};
    const int rc_one = fuzz_wire_oneshot(data, size, &one);

    kw_wire_decoder_options opt;
    fuzz_wire_options(&opt);
    kw_wire_decoder *d;
    FUZZ_CHECK(kw_wire_decoder_create(&opt, &d) == 0);
    size_t at = 0;
    int rc = 0;
    while (rc >= 0 && at < size) {
        const size_t n = fuzz_next_chunk(&seed, 64, 4096, size - at);
        uint8_t *chunk = malloc(n);
        FUZZ_CHECK(chunk);
        memcpy(chunk, data + at, n);
        size_t off = 0;
        while (rc >= 0 && off < n) {
            size_t used = 0;
            rc = kw_wire_decoder_feed(d, chunk + off, n - off, &used);
            FUZZ_CHECK(used <= n - off);
            off += used;
            if (rc == KW_WIRE_EVENT_SECTION) {
                const int r = fuzz_wire_section(kw_wire_decoder_section(d), &str);
                if (r < 0) rc = r;
            } else if (rc == KW_WIRE_EVENT_NEED_MORE) {
                FUZZ_CHECK(off == n);
            }
        }
        free(chunk);
        at += n;
    }
    if (rc >= 0) rc = kw_wire_decoder_finish(d);
    if (rc == 0) fuzz_check_breakdown(kw_wire_decoder_breakdown(d), size);
    kw_wire_decoder_destroy(d);
    /* same verdict, same sections, same values as the one-shot reader */
    FUZZ_CHECK(rc == rc_one);
    FUZZ_CHECK(str.sections == one.sections && str.h == one.h);
    free(blob);
    return 0;
}
