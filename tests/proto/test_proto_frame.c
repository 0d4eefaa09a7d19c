/* test_proto_frame.c: the frame codec of docs/PROTOCOL.md §3: headers byte for byte, round trips of message and
 * raw frames through the streaming decoder in every chunking (1 byte included), raw payloads streamed without a
 * copy, pausing, and the rejections: unknown types, oversized lengths (before any allocation), truncation and
 * trailing bytes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_bytes.h"
#include "common/kw_status.h"
#include "proto/kw_proto.h"

/* A stream of frames: a Hello, a raw frame of raw_len bytes, an empty raw frame, a Ping, an empty StatsRequest. */
typedef struct stream {
    uint8_t *bytes;
    size_t len;
    size_t raw_len;
} stream;

static uint8_t pattern(size_t i) {
    return (uint8_t)(i * 131 + (i >> 8) * 7 + 3);
}

static void append(stream *s, const void *p, size_t n) {
    s->bytes = realloc(s->bytes, s->len + n);
    assert_non_null(s->bytes);
    memcpy(s->bytes + s->len, p, n);
    s->len += n;
}

static void append_message(stream *s, uint32_t type, const ProtobufCMessage *m) {
    uint8_t *frame = NULL;
    size_t n = 0;
    assert_int_equal(kw_proto_message_frame_pack(type, m, &frame, &n), 0);
    append(s, frame, n);
    free(frame);
}

static void append_raw(stream *s, size_t n) {
    uint8_t hdr[KW_PROTO_FRAME_HEADER_BYTES];
    assert_int_equal(kw_proto_frame_header_write(KW_PROTO_FRAME_WIRE, n, hdr), 0);
    append(s, hdr, sizeof hdr);
    uint8_t *p = malloc(n ? n : 1);
    for (size_t i = 0; i < n; ++i)
        p[i] = pattern(i);
    append(s, p, n);
    free(p);
}

static stream make_stream(size_t raw_len) {
    stream s = {NULL, 0, raw_len};
    Kwctl__Hello hello = KWCTL__HELLO__INIT;
    hello.protocol_version = KW_PROTO_VERSION;
    hello.role = KWCTL__ROLE__ROLE_RECEIVER;
    hello.software = "kvwire test";
    uint32_t codecs[] = {1, 2, 5};
    hello.codecs = codecs;
    hello.n_codecs = 3;
    append_message(&s, KW_PROTO_FRAME_HELLO, &hello.base);
    append_raw(&s, raw_len);
    append_raw(&s, 0);
    Kwctl__Ping ping = KWCTL__PING__INIT;
    ping.nonce = 0x1122334455667788ull;
    append_message(&s, KW_PROTO_FRAME_PING, &ping.base);
    Kwctl__StatsRequest sr = KWCTL__STATS_REQUEST__INIT;
    append_message(&s, KW_PROTO_FRAME_STATS_REQUEST, &sr.base);
    return s;
}

/* What a consumer saw. */
typedef struct seen {
    int frames;
    uint32_t types[8];
    size_t raw_bytes; /* raw payload bytes seen, checked against the pattern */
    int raw_chunks;
    uint64_t ping_nonce;
    uint32_t hello_version;
    int pause_after; /* pause after this many frames (0: never) */
} seen;

static void check_frame(seen *sn, const kw_proto_frame *f, bool streamed) {
    if (f->type == KW_PROTO_FRAME_WIRE) {
        for (uint32_t i = 0; i < f->data_len; ++i)
            assert_int_equal(f->data[i], pattern(f->offset + i));
        sn->raw_bytes += f->data_len;
        ++sn->raw_chunks;
        if (!kw_proto_frame_complete(f)) return;
        assert_true(streamed || (f->offset == 0 && f->data_len == f->length));
    } else {
        assert_int_equal(f->offset, 0);
        assert_int_equal(f->data_len, f->length);
        ProtobufCMessage *m = NULL;
        assert_int_equal(kw_proto_message_unpack(NULL, f->type, f->data, f->data_len, &m), 0);
        if (f->type == KW_PROTO_FRAME_PING) sn->ping_nonce = ((Kwctl__Ping *)m)->nonce;
        if (f->type == KW_PROTO_FRAME_HELLO) sn->hello_version = ((Kwctl__Hello *)m)->protocol_version;
        kw_proto_message_free(m);
    }
    assert_true(sn->frames < 8);
    sn->types[sn->frames++] = f->type;
}

static int on_frame(void *user, const kw_proto_frame *f) {
    seen *sn = user;
    const int before = sn->frames;
    check_frame(sn, f, true);
    if (sn->pause_after && sn->frames == sn->pause_after && sn->frames != before) return KW_PROTO_PAUSE;
    return 0;
}

static void check_seen(const seen *sn, const stream *s) {
    static const uint32_t want[] = {KW_PROTO_FRAME_HELLO, KW_PROTO_FRAME_WIRE, KW_PROTO_FRAME_WIRE, KW_PROTO_FRAME_PING,
                                    KW_PROTO_FRAME_STATS_REQUEST};
    assert_int_equal(sn->frames, 5);
    for (int i = 0; i < 5; ++i)
        assert_int_equal(sn->types[i], want[i]);
    assert_int_equal(sn->raw_bytes, s->raw_len);
    assert_int_equal(sn->ping_nonce, 0x1122334455667788ull);
    assert_int_equal(sn->hello_version, KW_PROTO_VERSION);
}

/* Feeds s in chunks of `chunk` bytes (each from its own exact-size copy, so reads past a chunk are caught by
 * ASan) through kw_proto_decoder_feed. */
static void decode_chunked(const stream *s, size_t chunk, bool stream_raw) {
    kw_proto_decoder_options opt = {.stream_raw = stream_raw};
    kw_proto_decoder *d;
    assert_int_equal(kw_proto_decoder_create(&opt, &d), 0);
    seen sn = {0};
    for (size_t at = 0; at < s->len; at += chunk) {
        const size_t n = chunk < s->len - at ? chunk : s->len - at;
        uint8_t *copy = malloc(n);
        memcpy(copy, s->bytes + at, n);
        size_t off = 0;
        for (;;) {
            size_t used = 0;
            kw_proto_frame f;
            const int ev = kw_proto_decoder_feed(d, copy + off, n - off, &used, &f);
            assert_true(ev >= 0);
            off += used;
            if (ev == KW_PROTO_EVENT_NEED_MORE) break;
            assert_int_equal(ev,
                             stream_raw && f.type == KW_PROTO_FRAME_WIRE ? KW_PROTO_EVENT_CHUNK : KW_PROTO_EVENT_FRAME);
            check_frame(&sn, &f, stream_raw);
        }
        assert_int_equal(off, n);
        free(copy);
    }
    assert_int_equal(kw_proto_decoder_finish(d), 0);
    assert_int_equal(kw_proto_decoder_frames(d), 5);
    check_seen(&sn, s);
    kw_proto_decoder_destroy(d);
}

static void test_header_bytes(void **state) {
    (void)state;
    uint8_t h[KW_PROTO_FRAME_HEADER_BYTES];
    assert_int_equal(kw_proto_frame_header_write(KW_PROTO_FRAME_WIRE, 0x01020304u, h), 0);
    const uint8_t want[] = {0x04, 0x03, 0x02, 0x01, 0x05};
    assert_memory_equal(h, want, sizeof want);
    assert_int_equal(kw_proto_frame_header_write(0, 1, h), KW_E_PROTO_FRAME_TYPE);
    assert_int_equal(kw_proto_frame_header_write(KW_PROTO_FRAME_TYPE_COUNT, 1, h), KW_E_PROTO_FRAME_TYPE);
    assert_int_equal(kw_proto_frame_header_write(KW_PROTO_FRAME_WIRE, (uint64_t)UINT32_MAX + 1, h),
                     KW_E_PROTO_FRAME_SIZE);
    /* the frame type table */
    assert_string_equal(kw_proto_frame_type_name(KW_PROTO_FRAME_SHARE_END), "SHARE_END");
    assert_string_equal(kw_proto_frame_type_name(200), "?");
    assert_true(kw_proto_frame_type_is_raw(KW_PROTO_FRAME_WIRE));
    assert_false(kw_proto_frame_type_is_raw(KW_PROTO_FRAME_HELLO));
    assert_null(kw_proto_frame_descriptor(KW_PROTO_FRAME_WIRE));
    for (uint32_t t = 1; t < KW_PROTO_FRAME_TYPE_COUNT; ++t)
        assert_true(kw_proto_frame_type_is_raw(t) || kw_proto_frame_descriptor(t) != NULL);
}

static void test_roundtrip_any_chunking(void **state) {
    (void)state;
    stream s = make_stream(70000);
    const size_t chunks[] = {1, 2, 3, 4, 5, 6, 7, 13, 64, 1000, 4096, 65536, 1 << 20};
    for (size_t i = 0; i < sizeof chunks / sizeof chunks[0]; ++i) {
        decode_chunked(&s, chunks[i], false);
        decode_chunked(&s, chunks[i], true);
    }
    free(s.bytes);
}

static void test_raw_zero_copy(void **state) {
    (void)state;
    /* With the whole stream in one buffer, a message payload and a streamed raw payload point into the input. */
    stream s = make_stream(5000);
    kw_proto_decoder_options opt = {.stream_raw = true};
    kw_proto_decoder *d;
    assert_int_equal(kw_proto_decoder_create(&opt, &d), 0);
    size_t at = 0;
    for (int i = 0; i < 5; ++i) {
        size_t used;
        kw_proto_frame f;
        const int ev = kw_proto_decoder_feed(d, s.bytes + at, s.len - at, &used, &f);
        assert_true(ev == KW_PROTO_EVENT_FRAME || ev == KW_PROTO_EVENT_CHUNK);
        assert_ptr_equal(f.data, s.bytes + at + used - f.data_len);
        at += used;
    }
    assert_int_equal(at, s.len);
    kw_proto_decoder_destroy(d);
    free(s.bytes);
}

static void test_feed_all_pause(void **state) {
    (void)state;
    stream s = make_stream(3000);
    kw_proto_decoder_options opt = {.stream_raw = true};
    kw_proto_decoder *d;
    assert_int_equal(kw_proto_decoder_create(&opt, &d), 0);
    seen sn = {.pause_after = 2};
    size_t used = 0;
    assert_int_equal(kw_proto_decoder_feed_all(d, s.bytes, s.len, &used, on_frame, &sn), KW_PROTO_PAUSE);
    assert_int_equal(sn.frames, 2);
    assert_true(used < s.len);
    sn.pause_after = 0;
    size_t used2 = 0;
    assert_int_equal(kw_proto_decoder_feed_all(d, s.bytes + used, s.len - used, &used2, on_frame, &sn), 0);
    assert_int_equal(used + used2, s.len);
    check_seen(&sn, &s);
    assert_int_equal(kw_proto_decoder_finish(d), 0);
    kw_proto_decoder_destroy(d);
    free(s.bytes);
}

static int fail_on_ping(void *user, const kw_proto_frame *f) {
    (void)user;
    return f->type == KW_PROTO_FRAME_PING ? kw_error_set(KW_E_PROTO_SEQUENCE, "no pings here") : 0;
}

static void test_feed_all_callback_error(void **state) {
    (void)state;
    stream s = make_stream(10);
    kw_proto_decoder *d;
    assert_int_equal(kw_proto_decoder_create(NULL, &d), 0);
    size_t used;
    assert_int_equal(kw_proto_decoder_feed_all(d, s.bytes, s.len, &used, fail_on_ping, NULL), KW_E_PROTO_SEQUENCE);
    kw_proto_decoder_destroy(d);
    free(s.bytes);
}

/* Feeds bytes one at a time and returns the first error (or the finish status). */
static int decode_bytewise(const kw_proto_limits *lim, const uint8_t *p, size_t n, uint64_t *frames) {
    kw_proto_decoder_options opt = {.stream_raw = false};
    if (lim) opt.limits = *lim;
    kw_proto_decoder *d;
    assert_int_equal(kw_proto_decoder_create(&opt, &d), 0);
    int rc = 0;
    for (size_t i = 0; i < n && rc >= 0; ++i) {
        size_t used;
        kw_proto_frame f;
        rc = kw_proto_decoder_feed(d, p + i, 1, &used, &f);
        if (rc >= 0) assert_int_equal(used, 1);
    }
    if (rc >= 0) rc = kw_proto_decoder_finish(d);
    if (frames) *frames = kw_proto_decoder_frames(d);
    /* errors are sticky */
    if (rc < 0 && rc != KW_E_PROTO_TRUNCATED) {
        size_t used;
        kw_proto_frame f;
        assert_int_equal(kw_proto_decoder_feed(d, "x", 1, &used, &f), rc);
        assert_int_equal(used, 0);
    }
    kw_proto_decoder_destroy(d);
    return rc;
}

static void test_rejections(void **state) {
    (void)state;
    /* unknown frame types: 0, the first unused, 255 */
    const uint8_t types[] = {0, KW_PROTO_FRAME_TYPE_COUNT, 255};
    for (size_t i = 0; i < sizeof types; ++i) {
        const uint8_t bad[] = {1, 0, 0, 0, types[i], 0x08};
        assert_int_equal(decode_bytewise(NULL, bad, sizeof bad, NULL), KW_E_PROTO_FRAME_TYPE);
    }
    /* oversized lengths, refused on the header: 4 GiB - 1 claimed with 5 bytes given (no allocation happens; ASan
     * would report a 4 GiB request) */
    const uint8_t huge_msg[] = {0xff, 0xff, 0xff, 0xff, KW_PROTO_FRAME_SHARE_REQUEST};
    assert_int_equal(decode_bytewise(NULL, huge_msg, sizeof huge_msg, NULL), KW_E_PROTO_FRAME_SIZE);
    const uint8_t huge_raw[] = {0xff, 0xff, 0xff, 0xff, KW_PROTO_FRAME_WIRE};
    assert_int_equal(decode_bytewise(NULL, huge_raw, sizeof huge_raw, NULL), KW_E_PROTO_FRAME_SIZE);
    /* a configured maximum: 16-byte messages, 32-byte raw frames */
    const kw_proto_limits lim = {.max_message_bytes = 16, .max_raw_bytes = 32};
    uint8_t msg17[5 + 17] = {17, 0, 0, 0, KW_PROTO_FRAME_PING};
    assert_int_equal(decode_bytewise(&lim, msg17, sizeof msg17, NULL), KW_E_PROTO_FRAME_SIZE);
    uint8_t raw32[5 + 32] = {32, 0, 0, 0, KW_PROTO_FRAME_WIRE};
    uint64_t frames = 0;
    assert_int_equal(decode_bytewise(&lim, raw32, sizeof raw32, &frames), 0);
    assert_int_equal(frames, 1);
    raw32[0] = 33;
    assert_int_equal(decode_bytewise(&lim, raw32, sizeof raw32, NULL), KW_E_PROTO_FRAME_SIZE);
    /* truncation: inside a header, inside a payload */
    stream s = make_stream(100);
    for (size_t cut = 1; cut < s.len; ++cut) {
        const int rc = decode_bytewise(NULL, s.bytes, cut, NULL);
        assert_true(rc == 0 || rc == KW_E_PROTO_TRUNCATED);
    }
    assert_int_equal(decode_bytewise(NULL, s.bytes, 3, NULL), KW_E_PROTO_TRUNCATED);
    assert_int_equal(decode_bytewise(NULL, s.bytes, s.len - 1, NULL), KW_E_PROTO_TRUNCATED);
    free(s.bytes);
}

static void test_parse_one(void **state) {
    (void)state;
    Kwctl__Cancel cancel = KWCTL__CANCEL__INIT;
    cancel.request_id = 42;
    uint8_t buf[64];
    size_t n;
    assert_int_equal(kw_proto_message_frame_write(KW_PROTO_FRAME_CANCEL, &cancel.base, buf, sizeof buf, &n), 0);
    size_t size;
    assert_int_equal(kw_proto_message_frame_size(KW_PROTO_FRAME_CANCEL, &cancel.base, &size), 0);
    assert_int_equal(size, n);
    assert_int_equal(kw_load_le32(buf), n - KW_PROTO_FRAME_HEADER_BYTES);
    assert_int_equal(buf[4], KW_PROTO_FRAME_CANCEL);
    kw_proto_frame f;
    assert_int_equal(kw_proto_frame_parse(NULL, buf, n, &f), 0);
    assert_int_equal(f.type, KW_PROTO_FRAME_CANCEL);
    assert_ptr_equal(f.data, buf + KW_PROTO_FRAME_HEADER_BYTES);
    assert_int_equal(kw_proto_frame_parse(NULL, buf, n - 1, &f), KW_E_PROTO_TRUNCATED);
    assert_int_equal(kw_proto_frame_parse(NULL, buf, 2, &f), KW_E_PROTO_TRUNCATED);
    buf[n] = 0;
    assert_int_equal(kw_proto_frame_parse(NULL, buf, n + 1, &f), KW_E_PROTO_TRAILING);
    /* writing: the message must be the one the frame type carries, and fit */
    assert_int_equal(kw_proto_message_frame_write(KW_PROTO_FRAME_PING, &cancel.base, buf, sizeof buf, &n),
                     KW_E_INVALID_ARG);
    assert_int_equal(kw_proto_message_frame_write(KW_PROTO_FRAME_WIRE, &cancel.base, buf, sizeof buf, &n),
                     KW_E_INVALID_ARG);
    assert_int_equal(kw_proto_message_frame_write(KW_PROTO_FRAME_CANCEL, &cancel.base, buf, 3, &n),
                     KW_E_BUFFER_TOO_SMALL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header_bytes),
        cmocka_unit_test(test_roundtrip_any_chunking),
        cmocka_unit_test(test_raw_zero_copy),
        cmocka_unit_test(test_feed_all_pause),
        cmocka_unit_test(test_feed_all_callback_error),
        cmocka_unit_test(test_rejections),
        cmocka_unit_test(test_parse_one),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
