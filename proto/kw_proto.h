/* kw_proto.h: the kvwire control protocol (docs/PROTOCOL.md): frame types, the frame codec
 * `[u32 LE payload length][u8 type][payload]`, a streaming frame decoder that accepts its input in any chunking, and
 * packing/unpacking/validation of the protobuf-c control messages of proto/kw_control.proto.
 *
 * proto/ is pure: no I/O, no global state, no threads; it depends on common/, the protobuf-c runtime and xxHash only.
 * Every function returns 0 (or a documented non-negative value) or a negative kw_status with a reason in
 * kw_error_detail(). Nothing a peer sends makes it abort: every length is checked against kw_proto_limits before
 * anything is allocated for it, and unpacking a message draws from a memory budget.
 *
 * KVWire bytes travel as raw frames (KW_PROTO_FRAME_WIRE): the sender writes the 5-byte header from
 * kw_proto_frame_header_write followed by its own payload buffer (no copy into protobuf), and a decoder in
 * stream_raw mode hands the payload on in the pieces it arrived in, borrowed from the caller's input (no copy at all).
 *
 * The "framed connection" of the daemons is a net/ connection (byte stream, iovec writes) whose read callback calls
 * kw_proto_decoder_feed_all; net/ knows nothing of frames and proto/ nothing of sockets (DESIGN.md layering).
 */
#ifndef KW_PROTO_H
#define KW_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/kw_control.pb-c.h"

/* ------------------------------------------------------------------------------------------------------------- */
/* Constants (PROTOCOL.md §2, §3) */

#define KW_PROTO_VERSION            1
#define KW_PROTO_FRAME_HEADER_BYTES 5
/* A message frame's payload ends with the XXH32 of its protobuf bytes, seeded with the frame type (PROTOCOL.md §3.1):
 * a request, a header or a relayed text corrupted in flight is refused, never acted on. */
#define KW_PROTO_MESSAGE_CHECKSUM_BYTES 4

/* Default limits: a message frame (protobuf) may be 4 MiB (a 128k-token prompt needs about 0.7 MiB), a raw frame
 * 1 GiB (KVWire's default section limit, FORMAT.md §9.1), and unpacking one message may allocate 64 MiB. */
#define KW_PROTO_DEFAULT_MAX_MESSAGE_BYTES  (4u << 20)
#define KW_PROTO_DEFAULT_MAX_RAW_BYTES      (1u << 30)
#define KW_PROTO_DEFAULT_MAX_UNPACKED_BYTES ((uint64_t)64 << 20)
#define KW_PROTO_DEFAULT_MAX_TOKENS         (1u << 20)

/* SharePolicy.token_schedule: at most this many entries, and an entry's positions at most this many runs of
 * consecutive positions (each run is one rule of the sharer's token split, wire/kw_wire.h kw_wire_token_rule). */
#define KW_PROTO_MAX_TOKEN_POLICIES 8
#define KW_PROTO_MAX_TOKEN_RUNS     64

/* Frame types. Numbers are on the wire and never change; 0 and 17..255 are invalid (KW_E_PROTO_FRAME_TYPE). */
enum kw_proto_frame_type {
    KW_PROTO_FRAME_HELLO = 1,            /* Hello */
    KW_PROTO_FRAME_HELLO_REPLY = 2,      /* HelloReply */
    KW_PROTO_FRAME_SHARE_REQUEST = 3,    /* ShareRequest */
    KW_PROTO_FRAME_SHARE_HEADER = 4,     /* ShareHeader */
    KW_PROTO_FRAME_WIRE = 5,             /* raw: a piece of the KVWire blob of the current share */
    KW_PROTO_FRAME_SHARE_TEXT = 6,       /* ShareText */
    KW_PROTO_FRAME_SHARE_END = 7,        /* ShareEnd */
    KW_PROTO_FRAME_ERROR = 8,            /* Error */
    KW_PROTO_FRAME_CANCEL = 9,           /* Cancel */
    KW_PROTO_FRAME_STATS_REQUEST = 10,   /* StatsRequest */
    KW_PROTO_FRAME_STATS = 11,           /* Stats */
    KW_PROTO_FRAME_PING = 12,            /* Ping */
    KW_PROTO_FRAME_PONG = 13,            /* Pong */
    KW_PROTO_FRAME_SHARE_TARGETS = 14,   /* ShareTargets */
    KW_PROTO_FRAME_SHARE_PREVIEW = 15,   /* SharePreview (SCORING_RECEIVER: the next blob is a preview) */
    KW_PROTO_FRAME_SHARE_SELECTION = 16, /* ShareSelection (receiver to sharer, SCORING_RECEIVER) */
};
#define KW_PROTO_FRAME_TYPE_COUNT 17 /* valid types are 1..KW_PROTO_FRAME_TYPE_COUNT-1 */

/* "HELLO", "WIRE", ...; "?" for an invalid type. Static strings. */
const char *kw_proto_frame_type_name(uint32_t type);

/* True for the frame types whose payload is raw bytes rather than a protobuf message (WIRE). */
bool kw_proto_frame_type_is_raw(uint32_t type);

/* The protobuf-c descriptor of the message a frame type carries; NULL for raw and invalid types. */
const ProtobufCMessageDescriptor *kw_proto_frame_descriptor(uint32_t type);

/* ------------------------------------------------------------------------------------------------------------- */
/* Limits */

typedef struct kw_proto_limits {
    uint32_t max_message_bytes;  /* payload of a message frame */
    uint32_t max_raw_bytes;      /* payload of a raw frame */
    uint64_t max_unpacked_bytes; /* memory protobuf-c may allocate while unpacking one message */
    uint32_t max_tokens;         /* ShareRequest.token_ids */
} kw_proto_limits;

/* Fills the KW_PROTO_DEFAULT_* values. */
void kw_proto_limits_default(kw_proto_limits *lim);

/* ------------------------------------------------------------------------------------------------------------- */
/* Encoding */

/* Writes the 5-byte header of a frame of this type carrying payload_len bytes.
 * @return 0, KW_E_PROTO_FRAME_TYPE (invalid type) or KW_E_PROTO_FRAME_SIZE (payload_len over UINT32_MAX). */
int kw_proto_frame_header_write(uint32_t type, uint64_t payload_len, uint8_t out[KW_PROTO_FRAME_HEADER_BYTES]);

/* The bytes of the frame (header included) carrying msg as a frame of this type.
 * @return 0, KW_E_INVALID_ARG (msg is not the message type carries) or KW_E_PROTO_FRAME_SIZE. */
int kw_proto_message_frame_size(uint32_t type, const ProtobufCMessage *msg, size_t *out);

/* Writes the frame carrying msg into dst (cap bytes); *written is its size.
 * @return 0, as kw_proto_message_frame_size, or KW_E_BUFFER_TOO_SMALL. */
int kw_proto_message_frame_write(uint32_t type, const ProtobufCMessage *msg, void *dst, size_t cap, size_t *written);

/* Packs the frame carrying msg into a new malloc'ed buffer *out of *out_len bytes, owned by the caller (free()).
 * This is the shape a write queue wants: the buffer lives until the write completes, then is freed.
 * @return 0, as kw_proto_message_frame_size, or KW_E_NOMEM. */
int kw_proto_message_frame_pack(uint32_t type, const ProtobufCMessage *msg, uint8_t **out, size_t *out_len);

/* ------------------------------------------------------------------------------------------------------------- */
/* Decoding messages */

/* The checksum that ends a message frame of this type whose protobuf bytes are body[0..len). */
uint32_t kw_proto_message_checksum(uint32_t type, const uint8_t *body, size_t len);

/* Unpacks the payload of a message frame of this type and validates it (PROTOCOL.md §4): the checksum that ends it
 * (KW_E_PROTO_CHECKSUM when it is missing or does not match), then as kw_proto_message_unpack_body on the bytes
 * before it. */
int kw_proto_message_unpack(const kw_proto_limits *lim, uint32_t type, const uint8_t *payload, size_t len,
                            ProtobufCMessage **out);

/* Unpacks the protobuf bytes of a message of this type (a message frame's payload without its checksum) and
 * validates them (PROTOCOL.md §4): len within
 * max_message_bytes, protobuf-c decoding within max_unpacked_bytes of memory, no unknown fields (Hello and
 * HelloReply tolerate them and drop them), enum values known, strings valid UTF-8, and the per-message rules (lengths,
 * ranges, ordering). lim NULL means the defaults. On success *out is a new message of type's descriptor, owned by the
 * caller (kw_proto_message_free); cast it to the generated type (Kwctl__Hello *, ...).
 * @return 0, KW_E_PROTO_FRAME_TYPE (raw or invalid type), KW_E_PROTO_FRAME_SIZE, KW_E_PROTO_MESSAGE (not
 * protobuf), KW_E_LIMIT (over the memory budget) or KW_E_PROTO_FIELD (a rule is broken; the detail names the
 * field). */
int kw_proto_message_unpack_body(const kw_proto_limits *lim, uint32_t type, const uint8_t *body, size_t len,
                                 ProtobufCMessage **out);

/* Runs the validation of kw_proto_message_unpack on a message built in memory (a sender checks what it is about to
 * send with the same rules its peer applies). @return 0 or KW_E_PROTO_FIELD. */
int kw_proto_message_check(const kw_proto_limits *lim, const ProtobufCMessage *msg);

/* The runs of consecutive positions of a token schedule entry (1 for first or last). */
size_t kw_proto_token_runs(const Kwctl__TokenPolicy *t);

/* SharePolicy.token_schedule's entries without their codecs (kw_proto_message_check checks those): exactly one of
 * first, last and positions each, positions strictly increasing in at most KW_PROTO_MAX_TOKEN_RUNS runs, at most
 * KW_PROTO_MAX_TOKEN_POLICIES entries, and no two entries that overlap on every prompt (two first entries, two last
 * entries, a position under a first entry or in another entry's positions; a first N and a last M entry meet only on
 * a prompt shorter than N + M, and positions inside a last M only on a short prompt: the sharer refuses such a
 * request). KW_E_PROTO_FIELD naming the entries. The overlaps are checked on the entries' runs: one pass over the
 * positions, then O(runs) per pair of entries, whatever the positions' values. */
int kw_proto_token_schedule_check(Kwctl__TokenPolicy *const *entries, size_t n);

/* Frees a message returned by kw_proto_message_unpack; NULL is a no-op. */
void kw_proto_message_free(ProtobufCMessage *msg);

/* ------------------------------------------------------------------------------------------------------------- */
/* Streaming frame decoder */

/* Results of kw_proto_decoder_feed (non-negative). */
enum kw_proto_event {
    KW_PROTO_EVENT_NEED_MORE = 0, /* every input byte was consumed and no frame is complete */
    KW_PROTO_EVENT_FRAME = 1,     /* a complete frame; its whole payload is in frame->data */
    KW_PROTO_EVENT_CHUNK = 2,     /* stream_raw: a piece of a raw frame's payload */
};

/* A frame (FRAME) or a piece of a raw frame (CHUNK). data borrows either from the decoder's buffer or from the
 * input passed to the feed call that produced it: valid until the next feed, reset or destroy, and only while that
 * input is unchanged. */
typedef struct kw_proto_frame {
    uint32_t type;     /* enum kw_proto_frame_type */
    uint32_t length;   /* payload bytes of the whole frame */
    uint32_t offset;   /* CHUNK: offset of data within the payload; FRAME: 0 */
    uint32_t data_len; /* FRAME: length; CHUNK: the piece's length (0 only for an empty raw frame) */
    const uint8_t *data;
} kw_proto_frame;

/* A CHUNK is the last of its frame when offset + data_len == length (an empty raw frame gives one empty CHUNK). */
static inline bool kw_proto_frame_complete(const kw_proto_frame *f) {
    return f->offset + f->data_len == f->length;
}

typedef struct kw_proto_decoder_options {
    kw_proto_limits limits; /* all zero: the defaults */
    bool stream_raw;        /* raw frames as CHUNK events borrowed from the input (never buffered); else as FRAME
                               events, buffered up to max_raw_bytes */
} kw_proto_decoder_options;

typedef struct kw_proto_decoder kw_proto_decoder;

/* Creates a decoder (opt NULL: defaults, stream_raw off). Owned by the caller: kw_proto_decoder_destroy.
 * @return 0 or KW_E_NOMEM. */
int kw_proto_decoder_create(const kw_proto_decoder_options *opt, kw_proto_decoder **out);

/* Frees the decoder; NULL is a no-op. */
void kw_proto_decoder_destroy(kw_proto_decoder *d);

/* Consumes a prefix of data[0..len) and sets *used to its length. Returns at the first event:
 * KW_PROTO_EVENT_FRAME or KW_PROTO_EVENT_CHUNK with *frame filled (call again with the rest of the input), or
 * KW_PROTO_EVENT_NEED_MORE when all of it was consumed. Errors, which are sticky (every later call returns the same
 * one until a reset): KW_E_PROTO_FRAME_TYPE, KW_E_PROTO_FRAME_SIZE (checked on the header, before any allocation),
 * KW_E_NOMEM. The payload of a message frame is not unpacked here: kw_proto_message_unpack does that. */
int kw_proto_decoder_feed(kw_proto_decoder *d, const void *data, size_t len, size_t *used, kw_proto_frame *frame);

/* Called by kw_proto_decoder_feed_all for each event. Return 0 to go on, KW_PROTO_PAUSE to stop right after this
 * frame (e.g. the consumer paused its socket), or a negative kw_status to fail. */
typedef int (*kw_proto_frame_fn)(void *user, const kw_proto_frame *frame);
#define KW_PROTO_PAUSE 1

/* Feeds data and calls fn for every FRAME and CHUNK event until the input is consumed, fn pauses, or an error.
 * *used is the number of bytes consumed (less than len only after a pause).
 * @return 0 (all consumed), KW_PROTO_PAUSE (paused; feed the rest data[*used..len) later), or the negative status
 * of the decoder or of fn. */
int kw_proto_decoder_feed_all(kw_proto_decoder *d, const void *data, size_t len, size_t *used, kw_proto_frame_fn fn,
                              void *user);

/* Declares the end of the input. @return 0 at a frame boundary, KW_E_PROTO_TRUNCATED inside a frame, or the
 * sticky error. */
int kw_proto_decoder_finish(const kw_proto_decoder *d);

/* Forgets any partial frame and a sticky error; the decoder can read a new stream. */
void kw_proto_decoder_reset(kw_proto_decoder *d);

/* Frames completed so far (since create or reset). */
uint64_t kw_proto_decoder_frames(const kw_proto_decoder *d);

/* Parses exactly one whole frame from buf[0..len) (no copy: frame->data points into buf).
 * @return 0, KW_E_PROTO_TRUNCATED (len short of the frame), KW_E_PROTO_TRAILING (bytes after it), or as the
 * header checks of kw_proto_decoder_feed. */
int kw_proto_frame_parse(const kw_proto_limits *lim, const void *buf, size_t len, kw_proto_frame *frame);

/* ------------------------------------------------------------------------------------------------------------- */
/* Model identities (PROTOCOL.md §4.1) */

/* True when both digests of a and b are set and equal: the same model files (what kv_direct needs). */
bool kw_proto_same_model(const Kwctl__ModelDigest *a, const Kwctl__ModelDigest *b);

/* True when fuser f fits sharer model m: its sharer_kv heads and head_dim equal m's, m has at least its n_layers, and
 * its pinned sharer digests (where set) equal m's. Otherwise why (cap bytes, may be NULL) says which part fails. */
bool kw_proto_fuser_fits(const Kwctl__FuserIdentity *f, const Kwctl__ModelIdentity *m, char *why, size_t cap);

#endif /* KW_PROTO_H */
