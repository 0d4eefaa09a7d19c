/* kw_load_sse.h: a server-sent events splitter (the WHATWG event-stream rules kvload needs): bytes in any chunking,
 * lines ended by LF or CRLF, "data:" fields (one optional space after the colon dropped) joined by '\n', an empty line
 * dispatching the event; other fields and comments are ignored, and an event without data is not reported. Peer
 * input: the pending line and the event are capped. Not here: JSON (kw_load_reply.h), HTTP (kw_load_http.h).
 */
#ifndef KW_LOAD_SSE_H
#define KW_LOAD_SSE_H

#include <stddef.h>

#include "common/kw_buf.h"

typedef struct kw_load_sse {
    kw_buf line;  /* bytes of the line being read */
    kw_buf event; /* data of the event being read */
    int has_data;
    size_t max_bytes; /* cap of a line and of an event; 0: 64 MiB */
} kw_load_sse;

/* Called for each complete event: data[0..len) NUL-terminated, borrowed for the call. */
typedef void (*kw_load_sse_fn)(const char *data, size_t len, void *user);

/* Feeds len bytes. @return 0, KW_E_LIMIT (a line or event passed max_bytes; the splitter must not be fed again), or
 * KW_E_NOMEM. */
int kw_load_sse_feed(kw_load_sse *s, const char *data, size_t len, kw_load_sse_fn fn, void *user);

/* Bytes received after the last complete line (a stream that ended mid-line). */
size_t kw_load_sse_pending(const kw_load_sse *s);

/* Forgets everything (keeps the buffers for reuse). */
void kw_load_sse_reset(kw_load_sse *s);

void kw_load_sse_free(kw_load_sse *s);

#endif /* KW_LOAD_SSE_H */
