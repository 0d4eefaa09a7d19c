/* kw_proto_frame.c: the frame layer of the control protocol (docs/PROTOCOL.md §3): the frame type table, frame
 * headers, the streaming decoder and the one-frame parser.
 *
 * Not here: protobuf packing, unpacking and validation (kw_proto_message.c). The decoder never looks inside a
 * payload; it checks the type and the length of every frame on its 5-byte header, before it allocates anything.
 * Invariant: a message payload is buffered in full (it is unpacked as one piece); a raw payload is buffered only
 * when stream_raw is off, and is otherwise handed on in the pieces it arrived in.
 */
#include "proto/kw_proto.h"

#include <stdlib.h>
#include <string.h>

#include "common/kw_bytes.h"
#include "common/kw_status.h"

// ---------------------------------------------------------------------------------------------------------------
// Frame types

typedef struct kw__proto_type_info {
    const char *name;
    const ProtobufCMessageDescriptor *desc; /* NULL: raw payload */
} kw__proto_type_info;

static const kw__proto_type_info kw__proto_types[KW_PROTO_FRAME_TYPE_COUNT] = {
    [KW_PROTO_FRAME_HELLO] = {"HELLO", &kwctl__hello__descriptor},
    [KW_PROTO_FRAME_HELLO_REPLY] = {"HELLO_REPLY", &kwctl__hello_reply__descriptor},
    [KW_PROTO_FRAME_SHARE_REQUEST] = {"SHARE_REQUEST", &kwctl__share_request__descriptor},
    [KW_PROTO_FRAME_SHARE_HEADER] = {"SHARE_HEADER", &kwctl__share_header__descriptor},
    [KW_PROTO_FRAME_WIRE] = {"WIRE", NULL},
    [KW_PROTO_FRAME_SHARE_TEXT] = {"SHARE_TEXT", &kwctl__share_text__descriptor},
    [KW_PROTO_FRAME_SHARE_END] = {"SHARE_END", &kwctl__share_end__descriptor},
    [KW_PROTO_FRAME_ERROR] = {"ERROR", &kwctl__error__descriptor},
    [KW_PROTO_FRAME_CANCEL] = {"CANCEL", &kwctl__cancel__descriptor},
    [KW_PROTO_FRAME_STATS_REQUEST] = {"STATS_REQUEST", &kwctl__stats_request__descriptor},
    [KW_PROTO_FRAME_STATS] = {"STATS", &kwctl__stats__descriptor},
    [KW_PROTO_FRAME_PING] = {"PING", &kwctl__ping__descriptor},
    [KW_PROTO_FRAME_PONG] = {"PONG", &kwctl__pong__descriptor},
    [KW_PROTO_FRAME_SHARE_TARGETS] = {"SHARE_TARGETS", &kwctl__share_targets__descriptor},
    [KW_PROTO_FRAME_SHARE_PREVIEW] = {"SHARE_PREVIEW", &kwctl__share_preview__descriptor},
    [KW_PROTO_FRAME_SHARE_SELECTION] = {"SHARE_SELECTION", &kwctl__share_selection__descriptor},
};

static bool kw__proto_type_valid(uint32_t type) {
    return type >= 1 && type < KW_PROTO_FRAME_TYPE_COUNT;
}

const char *kw_proto_frame_type_name(uint32_t type) {
    return kw__proto_type_valid(type) ? kw__proto_types[type].name : "?";
}

bool kw_proto_frame_type_is_raw(uint32_t type) {
    return kw__proto_type_valid(type) && kw__proto_types[type].desc == NULL;
}

const ProtobufCMessageDescriptor *kw_proto_frame_descriptor(uint32_t type) {
    return kw__proto_type_valid(type) ? kw__proto_types[type].desc : NULL;
}

void kw_proto_limits_default(kw_proto_limits *lim) {
    lim->max_message_bytes = KW_PROTO_DEFAULT_MAX_MESSAGE_BYTES;
    lim->max_raw_bytes = KW_PROTO_DEFAULT_MAX_RAW_BYTES;
    lim->max_unpacked_bytes = KW_PROTO_DEFAULT_MAX_UNPACKED_BYTES;
    lim->max_tokens = KW_PROTO_DEFAULT_MAX_TOKENS;
}

int kw_proto_frame_header_write(uint32_t type, uint64_t payload_len, uint8_t out[KW_PROTO_FRAME_HEADER_BYTES]) {
    KW_RETURN_IF(!kw__proto_type_valid(type), KW_E_PROTO_FRAME_TYPE, "frame type %u is not defined", type);
    KW_RETURN_IF(payload_len > UINT32_MAX, KW_E_PROTO_FRAME_SIZE, "a %llu-byte payload does not fit a frame",
                 (unsigned long long)payload_len);
    kw_store_le32(out, (uint32_t)payload_len);
    out[4] = (uint8_t)type;
    return 0;
}

/* Checks a received header against the limits: the type, then the length against its kind's maximum. */
static int kw__proto_header_check(const kw_proto_limits *lim, const uint8_t *hdr, uint32_t *type, uint32_t *length) {
    *length = kw_load_le32(hdr);
    *type = hdr[4];
    KW_RETURN_IF(!kw__proto_type_valid(*type), KW_E_PROTO_FRAME_TYPE, "frame type %u is not defined", *type);
    const bool raw = kw__proto_types[*type].desc == NULL;
    const uint32_t max = raw ? lim->max_raw_bytes : lim->max_message_bytes;
    KW_RETURN_IF(*length > max, KW_E_PROTO_FRAME_SIZE, "%s frame of %u bytes exceeds the %u-byte limit",
                 kw__proto_types[*type].name, *length, max);
    return 0;
}

static void kw__proto_limits_fill(kw_proto_limits *dst, const kw_proto_limits *src) {
    kw_proto_limits_default(dst);
    if (!src) return;
    if (src->max_message_bytes) dst->max_message_bytes = src->max_message_bytes;
    if (src->max_raw_bytes) dst->max_raw_bytes = src->max_raw_bytes;
    if (src->max_unpacked_bytes) dst->max_unpacked_bytes = src->max_unpacked_bytes;
    if (src->max_tokens) dst->max_tokens = src->max_tokens;
}

int kw_proto_frame_parse(const kw_proto_limits *lim_in, const void *buf, size_t len, kw_proto_frame *frame) {
    kw_proto_limits lim;
    kw__proto_limits_fill(&lim, lim_in);
    KW_RETURN_IF(len < KW_PROTO_FRAME_HEADER_BYTES, KW_E_PROTO_TRUNCATED, "%zu bytes are shorter than a frame header",
                 len);
    uint32_t type, length;
    KW_FORWARD(kw__proto_header_check(&lim, buf, &type, &length));
    const size_t need = (size_t)KW_PROTO_FRAME_HEADER_BYTES + length;
    KW_RETURN_IF(len < need, KW_E_PROTO_TRUNCATED, "%s frame needs %zu bytes, %zu given", kw__proto_types[type].name,
                 need, len);
    KW_RETURN_IF(len > need, KW_E_PROTO_TRAILING, "%zu bytes follow a %zu-byte %s frame", len - need, need,
                 kw__proto_types[type].name);
    *frame = (kw_proto_frame){.type = type,
                              .length = length,
                              .offset = 0,
                              .data_len = length,
                              .data = (const uint8_t *)buf + KW_PROTO_FRAME_HEADER_BYTES};
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Streaming decoder

struct kw_proto_decoder {
    kw_proto_limits lim;
    bool stream_raw;
    uint8_t hdr[KW_PROTO_FRAME_HEADER_BYTES];
    uint32_t hdr_have; /* header bytes collected while between frames */
    bool in_payload;   /* a header was accepted, its payload is being read */
    bool payload_raw;  /* the current frame is raw and streamed */
    uint32_t type;     /* the current frame */
    uint32_t length;   /* its payload bytes */
    uint32_t have;     /* payload bytes consumed so far */
    uint8_t *buf;      /* owned; holds a buffered payload */
    size_t cap;        /* bytes allocated at buf */
    int error;         /* sticky failure, or 0 */
    uint64_t frames;   /* frames completed */
};

int kw_proto_decoder_create(const kw_proto_decoder_options *opt, kw_proto_decoder **out) {
    kw_proto_decoder *d = calloc(1, sizeof *d);
    KW_RETURN_IF(!d, KW_E_NOMEM, "proto decoder: out of memory");
    kw__proto_limits_fill(&d->lim, opt ? &opt->limits : NULL);
    d->stream_raw = opt && opt->stream_raw;
    *out = d;
    return 0;
}

void kw_proto_decoder_destroy(kw_proto_decoder *d) {
    if (!d) return;
    free(d->buf);
    free(d);
}

void kw_proto_decoder_reset(kw_proto_decoder *d) {
    d->hdr_have = 0;
    d->in_payload = false;
    d->error = 0;
    d->frames = 0;
}

uint64_t kw_proto_decoder_frames(const kw_proto_decoder *d) {
    return d->frames;
}

int kw_proto_decoder_finish(const kw_proto_decoder *d) {
    if (d->error) return d->error;
    if (d->in_payload)
        KW_FAIL(KW_E_PROTO_TRUNCATED, "the stream ended %u bytes into a %u-byte %s payload", d->have, d->length,
                kw_proto_frame_type_name(d->type));
    KW_RETURN_IF(d->hdr_have, KW_E_PROTO_TRUNCATED, "the stream ended %u bytes into a frame header", d->hdr_have);
    return 0;
}

/* Makes room for a payload of n bytes (n is within limit, the maximum of its frame kind). */
static int kw__proto_decoder_reserve(kw_proto_decoder *d, size_t n, size_t limit) {
    if (n <= d->cap) return 0;
    /* Grow geometrically so a stream of growing messages does not realloc every time, never past the limit. */
    size_t want = d->cap * 2 > n ? d->cap * 2 : n;
    if (want > limit) want = n;
    uint8_t *nb = realloc(d->buf, want);
    KW_RETURN_IF(!nb, KW_E_NOMEM, "proto decoder: cannot buffer a %zu-byte payload", n);
    d->buf = nb;
    d->cap = want;
    return 0;
}

static int kw__proto_decoder_fail(kw_proto_decoder *d, int rc) {
    d->error = rc;
    return rc;
}

/* Ends the current frame and reports it. */
static int kw__proto_decoder_emit(kw_proto_decoder *d, int event, uint32_t offset, const uint8_t *data, uint32_t n,
                                  kw_proto_frame *frame) {
    *frame = (kw_proto_frame){.type = d->type, .length = d->length, .offset = offset, .data_len = n, .data = data};
    if (offset + n == d->length) {
        d->in_payload = false;
        ++d->frames;
    }
    return event;
}

int kw_proto_decoder_feed(kw_proto_decoder *d, const void *data, size_t len, size_t *used, kw_proto_frame *frame) {
    const uint8_t *in = data;
    size_t at = 0;
    *used = 0;
    if (d->error) return d->error;
    while (at < len) {
        if (!d->in_payload) {
            const size_t take = KW_PROTO_FRAME_HEADER_BYTES - d->hdr_have < len - at
                                    ? KW_PROTO_FRAME_HEADER_BYTES - d->hdr_have
                                    : len - at;
            memcpy(d->hdr + d->hdr_have, in + at, take);
            d->hdr_have += (uint32_t)take;
            at += take;
            if (d->hdr_have < KW_PROTO_FRAME_HEADER_BYTES) break;
            d->hdr_have = 0;
            int rc = kw__proto_header_check(&d->lim, d->hdr, &d->type, &d->length);
            if (rc < 0) {
                *used = at;
                return kw__proto_decoder_fail(d, rc);
            }
            d->in_payload = true;
            d->have = 0;
            d->payload_raw = d->stream_raw && kw__proto_types[d->type].desc == NULL;
            if (d->length == 0) {
                *used = at;
                return kw__proto_decoder_emit(d, d->payload_raw ? KW_PROTO_EVENT_CHUNK : KW_PROTO_EVENT_FRAME, 0,
                                              in + at, 0, frame);
            }
            continue;
        }
        const size_t avail = len - at;
        const uint32_t need = d->length - d->have;
        const uint32_t n = avail < need ? (uint32_t)avail : need;
        if (d->payload_raw) {
            const uint32_t offset = d->have;
            d->have += n;
            *used = at + n;
            return kw__proto_decoder_emit(d, KW_PROTO_EVENT_CHUNK, offset, in + at, n, frame);
        }
        if (d->have == 0 && n == need) {
            /* the whole payload is in this input: hand it on without copying */
            d->have = need;
            *used = at + n;
            return kw__proto_decoder_emit(d, KW_PROTO_EVENT_FRAME, 0, in + at, n, frame);
        }
        if (d->have == 0) {
            const bool raw = kw__proto_types[d->type].desc == NULL;
            const int rc =
                kw__proto_decoder_reserve(d, d->length, raw ? d->lim.max_raw_bytes : d->lim.max_message_bytes);
            if (rc < 0) {
                *used = at;
                return kw__proto_decoder_fail(d, rc);
            }
        }
        memcpy(d->buf + d->have, in + at, n);
        d->have += n;
        at += n;
        if (d->have == d->length) {
            *used = at;
            return kw__proto_decoder_emit(d, KW_PROTO_EVENT_FRAME, 0, d->buf, d->length, frame);
        }
    }
    *used = at;
    return KW_PROTO_EVENT_NEED_MORE;
}

int kw_proto_decoder_feed_all(kw_proto_decoder *d, const void *data, size_t len, size_t *used, kw_proto_frame_fn fn,
                              void *user) {
    const uint8_t *in = data;
    size_t at = 0;
    *used = 0;
    for (;;) {
        size_t n = 0;
        kw_proto_frame frame;
        const int ev = kw_proto_decoder_feed(d, in + at, len - at, &n, &frame);
        at += n;
        *used = at;
        if (ev < 0) return ev;
        if (ev == KW_PROTO_EVENT_NEED_MORE) return 0;
        const int rc = fn(user, &frame);
        if (rc < 0) return rc;
        if (rc == KW_PROTO_PAUSE) return KW_PROTO_PAUSE;
    }
}
