/* fuzz_proto_frames.c: libFuzzer target for the control-protocol decoders (docs/PROTOCOL.md): the streaming frame
 * decoder and the message unpacker. The first input byte chooses the decoder mode (bit 0: raw frames streamed as
 * chunks) and seeds the chunk sizes; the rest is the byte stream. Invariants:
 *  - the stream decoded in one piece and in random chunks (1 to 64 bytes or 4 KiB, each from its own exact-size
 *    copy, so a read past a chunk is caught) gives the same frames (type, length, payload digest) and the same
 *    verdict;
 *  - every message frame's payload, read as protobuf bytes (kw_proto_message_unpack_body: random input rarely ends
 *    with a matching checksum), either fails to unpack with a proto status, or unpacks into a message that passes
 *    kw_proto_message_check, packs back into a frame whose checksum verifies, and unpacks again into a message that
 *    packs to the same bytes; read as a whole frame payload (kw_proto_message_unpack) it fails with a proto status
 *    (a checksum that does not match among them) or unpacks. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_status.h"
#include "proto/kw_proto.h"
#include "tests/fuzz/fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Small limits keep each input cheap; the code paths are those of the defaults. */
static const kw_proto_limits fuzz_limits = {
    .max_message_bytes = 1u << 16, .max_raw_bytes = 1u << 20, .max_unpacked_bytes = 1u << 22, .max_tokens = 4096};

typedef struct fuzz_frames {
    uint64_t h; /* digest of every completed frame: type, length, payload */
    uint64_t frames;
    uint64_t raw_h; /* payload digest of the raw frame being streamed */
    int rc;         /* the verdict: 0 or a negative status */
} fuzz_frames;

static void fuzz_message(const kw_proto_frame *f) {
    ProtobufCMessage *m = NULL;
    const int framed = kw_proto_message_unpack(&fuzz_limits, f->type, f->data, f->data_len, &m);
    FUZZ_CHECK(framed == 0 || framed == KW_E_PROTO_CHECKSUM || framed == KW_E_PROTO_MESSAGE ||
               framed == KW_E_PROTO_FIELD || framed == KW_E_LIMIT);
    kw_proto_message_free(m);
    m = NULL;
    const int rc = kw_proto_message_unpack_body(&fuzz_limits, f->type, f->data, f->data_len, &m);
    if (rc < 0) {
        FUZZ_CHECK(rc == KW_E_PROTO_MESSAGE || rc == KW_E_PROTO_FIELD || rc == KW_E_LIMIT);
        return;
    }
    FUZZ_CHECK(kw_proto_message_check(&fuzz_limits, m) == 0);
    uint8_t *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    FUZZ_CHECK(kw_proto_message_frame_pack(f->type, m, &a, &na) == 0);
    ProtobufCMessage *m2 = NULL;
    FUZZ_CHECK(kw_proto_message_unpack(NULL, f->type, a + KW_PROTO_FRAME_HEADER_BYTES, na - KW_PROTO_FRAME_HEADER_BYTES,
                                       &m2) == 0);
    FUZZ_CHECK(kw_proto_message_frame_pack(f->type, m2, &b, &nb) == 0);
    FUZZ_CHECK(na == nb && memcmp(a, b, na) == 0);
    free(a);
    free(b);
    kw_proto_message_free(m2);
    kw_proto_message_free(m);
}

static int fuzz_on_frame(void *user, const kw_proto_frame *f) {
    fuzz_frames *st = user;
    FUZZ_CHECK(f->type >= 1 && f->type < KW_PROTO_FRAME_TYPE_COUNT);
    FUZZ_CHECK((uint64_t)f->offset + f->data_len <= f->length);
    FUZZ_CHECK(f->data_len == 0 || f->data != NULL);
    if (f->offset == 0) st->raw_h = 0xcbf29ce484222325ull;
    st->raw_h = fuzz_hash(st->raw_h, f->data, f->data_len);
    if (!kw_proto_frame_complete(f)) {
        FUZZ_CHECK(kw_proto_frame_type_is_raw(f->type)); /* only raw frames come in pieces */
        return 0;
    }
    const uint32_t head[2] = {f->type, f->length};
    st->h = fuzz_hash(st->h, head, sizeof head);
    st->h = fuzz_hash(st->h, &st->raw_h, sizeof st->raw_h);
    ++st->frames;
    if (!kw_proto_frame_type_is_raw(f->type)) fuzz_message(f);
    return 0;
}

static void fuzz_decode(const uint8_t *data, size_t size, bool stream_raw, uint64_t seed, bool chunked,
                        fuzz_frames *st) {
    kw_proto_decoder_options opt = {.limits = fuzz_limits, .stream_raw = stream_raw};
    kw_proto_decoder *d = NULL;
    FUZZ_CHECK(kw_proto_decoder_create(&opt, &d) == 0);
    st->h = 0xcbf29ce484222325ull;
    st->frames = 0;
    st->rc = 0;
    size_t at = 0;
    while (st->rc == 0 && at < size) {
        size_t n = size - at;
        if (chunked) n = fuzz_next_chunk(&seed, 64, 4096, size - at);
        uint8_t *chunk = malloc(n);
        FUZZ_CHECK(chunk);
        memcpy(chunk, data + at, n);
        size_t used = 0;
        const int rc = kw_proto_decoder_feed_all(d, chunk, n, &used, fuzz_on_frame, st);
        FUZZ_CHECK(rc <= 0);
        FUZZ_CHECK(rc < 0 || used == n);
        st->rc = rc;
        free(chunk);
        at += n;
    }
    if (st->rc == 0) st->rc = kw_proto_decoder_finish(d);
    FUZZ_CHECK(kw_proto_decoder_frames(d) == st->frames);
    FUZZ_CHECK(st->rc == 0 || st->rc == KW_E_PROTO_FRAME_TYPE || st->rc == KW_E_PROTO_FRAME_SIZE ||
               st->rc == KW_E_PROTO_TRUNCATED);
    kw_proto_decoder_destroy(d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const bool stream_raw = data[0] & 1;
    const uint64_t seed = data[0] >> 1;
    fuzz_frames one, chunked;
    fuzz_decode(data + 1, size - 1, stream_raw, seed, false, &one);
    fuzz_decode(data + 1, size - 1, stream_raw, seed, true, &chunked);
    FUZZ_CHECK(one.rc == chunked.rc);
    FUZZ_CHECK(one.frames == chunked.frames);
    FUZZ_CHECK(one.h == chunked.h);
    return 0;
}
