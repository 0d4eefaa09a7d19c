/* kw_status.h: the one error idiom of kvwire.
 *
 * Every fallible function returns int: 0 on success, a negative kw_status on failure. The numbers are stable
 * (they travel in control-plane error replies and appear in golden test files), grouped by module with gaps for
 * growth, and are never renumbered: a retired code keeps its number reserved.
 *
 * Modules report a human-readable reason for a failure with KW_FAIL / KW_RETURN_IF, which store it in a
 * thread-local buffer readable through kw_error_detail(). The status code is the contract; the detail is for people.
 */
#ifndef KW_STATUS_H
#define KW_STATUS_H

#include <stddef.h>

/* KW_STATUS_LIST(X): every status code as X(NAME, number, description). Add new codes here, in their module's
 * range; the enum and the string tables are generated from this list so they cannot drift apart. */
#define KW_STATUS_LIST(X)                                                                                              \
    X(KW_OK, 0, "success")                                                                                             \
    /* generic: -1 .. -49 */                                                                                           \
    X(KW_E_NOMEM, -1, "an allocation failed")                                                                          \
    X(KW_E_INVALID_ARG, -2, "a caller passed an argument outside the documented contract")                             \
    X(KW_E_IO, -3, "a read, write, open, stat or mmap failed (errno is in the detail)")                                \
    X(KW_E_NOT_FOUND, -4, "a named file, key, tensor or token does not exist")                                         \
    X(KW_E_OVERFLOW, -5, "a size computation would overflow")                                                          \
    X(KW_E_UNSUPPORTED, -6, "a valid request this build or device cannot serve")                                       \
    X(KW_E_PARSE, -7, "malformed text input (JSON, config, command line)")                                             \
    X(KW_E_LIMIT, -8, "a declared size or count exceeds a configured limit")                                           \
    X(KW_E_TRUNCATED, -9, "input ended before a complete structure")                                                   \
    X(KW_E_INTERNAL, -10, "a broken invariant inside kvwire (a bug)")                                                  \
    X(KW_E_BUFFER_TOO_SMALL, -11, "caller-provided output capacity is insufficient")                                   \
    X(KW_E_STATE, -12, "call not valid in the object's current state")                                                 \
    X(KW_E_CANCELLED, -13, "the operation was cancelled")                                                              \
    X(KW_E_TIMEOUT, -14, "the operation did not finish in time")                                                       \
    X(KW_E_SHAPE, -15, "tensor shapes or dtypes do not match what the operation needs")                                \
    /* wire/ (KVWire format): -100 .. -199 */                                                                          \
    X(KW_E_WIRE_MAGIC, -100, "not a KVWire blob")                                                                      \
    X(KW_E_WIRE_VERSION, -101, "unsupported format version")                                                           \
    X(KW_E_WIRE_RESERVED, -102, "a reserved field or bit is not zero")                                                 \
    X(KW_E_WIRE_CHECKSUM, -103, "a checksum does not match")                                                           \
    X(KW_E_WIRE_CORRUPT, -104, "inconsistent field values")                                                            \
    X(KW_E_WIRE_CODEC, -105, "unknown codec, scale dtype, granularity or index encoding")                              \
    X(KW_E_WIRE_LIMIT, -106, "a declared count or size exceeds a decoder limit")                                       \
    X(KW_E_WIRE_TRUNCATED, -107, "the blob ended early")                                                               \
    X(KW_E_WIRE_TRAILING, -108, "bytes follow the end of the blob")                                                    \
    X(KW_E_WIRE_ORDER, -109, "sections out of order or duplicated")                                                    \
    X(KW_E_WIRE_INDICES, -110, "token indices not strictly increasing or out of range")                                \
    X(KW_E_WIRE_COMPRESSION, -111, "a compressed section does not decompress to its declared size")                    \
    X(KW_E_WIRE_NONFINITE, -112, "NaN or Inf in input that the policy refuses")                                        \
    X(KW_E_WIRE_RANGE, -113, "a value or scale cannot be represented by the chosen codec or scale dtype")              \
    X(KW_E_WIRE_VALUE, -114, "a scale or code in a blob has a reserved or invalid value")                              \
    /* model/ (safetensors, HF configs, tokenizer, forward): -200 .. -299 */                                           \
    X(KW_E_MODEL_FORMAT, -200, "a safetensors, index or GGUF file is malformed")                                       \
    X(KW_E_MODEL_DTYPE, -201, "a tensor has a dtype the loader does not accept")                                       \
    X(KW_E_MODEL_SHAPE, -202, "a tensor's shape does not match the config")                                            \
    X(KW_E_MODEL_MISSING, -203, "a required tensor is absent")                                                         \
    X(KW_E_MODEL_CONFIG, -204, "config.json is missing a field or has an invalid value")                               \
    X(KW_E_MODEL_ARCH, -205, "unsupported architecture")                                                               \
    X(KW_E_MODEL_CONTEXT, -206, "the KV cache or context length is exhausted")                                         \
    X(KW_E_TOKENIZER, -220, "tokenizer.json is malformed or unsupported")                                              \
    X(KW_E_TOKEN_ID, -221, "a token id outside the vocabulary")                                                        \
    X(KW_E_UTF8, -222, "invalid UTF-8 in text input")                                                                  \
    X(KW_E_TEMPLATE, -223, "chat template input is invalid (roles, order)")                                            \
    /* c2c/ (fuser checkpoints, projection, alignment): -300 .. -399 */                                                \
    X(KW_E_PT_FORMAT, -300, "a torch zip archive is malformed")                                                        \
    X(KW_E_PT_PICKLE, -301, "unsupported pickle opcode or global")                                                     \
    X(KW_E_FUSER_CONFIG, -302, "fuser config or layer mapping invalid")                                                \
    X(KW_E_FUSER_TENSOR, -303, "a fuser tensor missing or with the wrong shape/dtype")                                 \
    X(KW_E_ALIGN, -304, "token alignment failed")                                                                      \
    /* kernels/ (backends): -400 .. -449 */                                                                            \
    X(KW_E_BACKEND, -400, "a backend reported a failure")                                                              \
    X(KW_E_CUDA, -401, "a CUDA runtime call failed")                                                                   \
    X(KW_E_CUBLAS, -402, "a cuBLAS call failed")                                                                       \
    X(KW_E_NO_DEVICE, -403, "no GPU device is available")                                                              \
    X(KW_E_OP_UNSUPPORTED, -404, "the backend does not support this op/dtype combination")                             \
    /* proto/ (control messages and framing, docs/PROTOCOL.md): -500 .. -549 */                                        \
    X(KW_E_PROTO_FRAME_TYPE, -500, "unknown frame type, or a frame type not allowed here")                             \
    X(KW_E_PROTO_FRAME_SIZE, -501, "a frame length exceeds the configured maximum")                                    \
    X(KW_E_PROTO_MESSAGE, -502, "a control message is not valid protobuf for its frame type")                          \
    X(KW_E_PROTO_TRUNCATED, -503, "the stream ended inside a frame")                                                   \
    X(KW_E_PROTO_TRAILING, -504, "bytes follow the last frame")                                                        \
    X(KW_E_PROTO_VERSION, -505, "the peer speaks an unsupported protocol version")                                     \
    X(KW_E_PROTO_FIELD, -506, "a control message field is missing, unknown or out of range")                           \
    X(KW_E_PROTO_SEQUENCE, -507, "a frame arrived where the protocol does not allow it")                               \
    X(KW_E_PROTO_REFUSED, -508, "the peer refused the hello (version, role, model pair)")                              \
    X(KW_E_PROTO_CHECKSUM, -509, "a control message's checksum does not match its bytes")                              \
    /* net/ (transport, TLS, HTTP front): -550 .. -599 */                                                              \
    X(KW_E_NET_ADDRESS, -550, "an address or port that cannot be resolved or bound")                                   \
    X(KW_E_NET_CONNECT, -551, "connecting failed (refused, unreachable)")                                              \
    X(KW_E_NET_CONNECT_TIMEOUT, -552, "connecting (TCP and TLS handshake) did not finish in time")                     \
    X(KW_E_NET_IDLE_TIMEOUT, -553, "nothing was read or written for longer than the idle timeout")                     \
    X(KW_E_NET_REQUEST_TIMEOUT, -554, "a request did not finish before its deadline")                                  \
    X(KW_E_NET_CLOSED, -555, "the peer closed the connection")                                                         \
    X(KW_E_NET_IO, -556, "a socket operation failed (reset, broken pipe; the libuv error is in the detail)")           \
    X(KW_E_NET_BACKPRESSURE, -557, "the write queue is over its hard limit")                                           \
    X(KW_E_NET_TLS, -558, "TLS handshake or record failure")                                                           \
    X(KW_E_NET_TLS_VERIFY, -559, "the peer's certificate is not trusted or does not match")                            \
    X(KW_E_NET_NOT_TLS, -560, "the peer does not speak TLS")                                                           \
    X(KW_E_NET_SHUTDOWN, -561, "the server is shutting down")                                                          \
    X(KW_E_NET_HTTP, -562, "a malformed HTTP request")                                                                 \
    X(KW_E_NET_HTTP_LIMIT, -563, "an HTTP request line, header block or body over its configured limit")               \
    /* the sharer/receiver pipeline: -600 .. -649 */                                                                   \
    X(KW_E_SHARE_MISMATCH, -600, "a sharer's blob does not fit the request (cache shape, prompt length, layer count)") \
    X(KW_E_SHARE_LAYER, -601, "a sharer sent a layer the request did not ask for")                                     \
    X(KW_E_SHARE_POSITIONS, -602, "a sharer sent positions outside the section, or other positions per layer")         \
    X(KW_E_SHARE_INCOMPLETE, -603, "a section ended before the sharer's blob did")                                     \
    X(KW_E_SHARE_MODE, -604, "the request's mode cannot be served by this pair of models")                             \
    X(KW_E_SHARE_BUSY, -605, "the request queue is full; retry later")

enum kw_status {
#define KW_STATUS_ENUM_ENTRY_(name, value, text) name = value,
    KW_STATUS_LIST(KW_STATUS_ENUM_ENTRY_)
#undef KW_STATUS_ENUM_ENTRY_
};

/* kw_strerror: a short, static description of a status code. Never NULL; unknown codes get a generic text. */
const char *kw_strerror(int status);

/* kw_status_name: the enum name of a status code ("KW_E_WIRE_MAGIC"), or "KW_E_UNKNOWN". Never NULL. */
const char *kw_status_name(int status);

/* kw_error_set: records a human-readable reason for the failure about to be returned, in a thread-local buffer.
 * Returns status unchanged, so callers can write `return kw_error_set(KW_E_IO, "open %s: %s", p, strerror(e));`. */
int kw_error_set(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* kw_error_detail: the last reason recorded on this thread ("" if none). Valid until the next kw_error_set. */
const char *kw_error_detail(void);

/* kw_error_clear: forgets the last reason on this thread. */
void kw_error_clear(void);

/* KW_FAIL(code, fmt, ...): record a reason and return code from the current function. */
#define KW_FAIL(code, ...) return kw_error_set((code), __VA_ARGS__)

/* KW_RETURN_IF(cond, code, fmt, ...): if cond holds, record a reason and return code. */
#define KW_RETURN_IF(cond, code, ...)                                                                                  \
    do {                                                                                                               \
        if (cond) return kw_error_set((code), __VA_ARGS__);                                                            \
    } while (0)

/* KW_FORWARD(expr): evaluate expr; if it returned a negative status, return that status (its detail is kept). */
#define KW_FORWARD(expr)                                                                                               \
    do {                                                                                                               \
        const int kw_forward_rc_ = (expr);                                                                             \
        if (kw_forward_rc_ < 0) return kw_forward_rc_;                                                                 \
    } while (0)

/* KW_CHECK(expr): inside a function with an `int rc` and an `out:` cleanup label, evaluate expr and jump to out on
 * failure. */
#define KW_CHECK(expr)                                                                                                 \
    do {                                                                                                               \
        rc = (expr);                                                                                                   \
        if (rc < 0) goto out;                                                                                          \
    } while (0)

/* KW_CHECK_IF(cond, code, fmt, ...): with `int rc` and `out:`, record a reason and jump to out if cond holds. */
#define KW_CHECK_IF(cond, code, ...)                                                                                   \
    do {                                                                                                               \
        if (cond) {                                                                                                    \
            rc = kw_error_set((code), __VA_ARGS__);                                                                    \
            goto out;                                                                                                  \
        }                                                                                                              \
    } while (0)

#endif /* KW_STATUS_H */
