/* kw_buf.h: a growable byte buffer for building text (or binary data) in memory: append bytes, strings and printf
 * output, then take the result as one malloc'ed block.
 *
 * Not a stream, a string library or an arena: one owner, one contiguous allocation grown by doubling. Once anything
 * has been appended the contents are NUL-terminated (data[len] == '\0', not counted in len), so text can be used as a
 * C string; binary contents may hold NUL bytes of their own.
 *
 * Errors are sticky: the first failed append (size overflow, out of memory, bad format) is kept in status and every
 * later append returns it without doing anything, so a builder may check each call (KW_FORWARD) or only the final
 * kw_buf_take. Not thread-safe.
 */
#ifndef KW_BUF_H
#define KW_BUF_H

#include <stddef.h>

typedef struct kw_buf {
    char *data; /* owned by the buffer; NULL until the first append or reserve */
    size_t len; /* bytes in use, the terminator excluded */
    size_t cap; /* bytes allocated */
    int status; /* 0, or the first failure (a negative kw_status): later appends return it */
} kw_buf;

/* An empty buffer (a zero-initialised kw_buf is the same). Allocates nothing. */
#define KW_BUF_INIT                                                                                                    \
    { NULL, 0, 0, 0 }

/* Makes room for extra more bytes plus the terminator. @return 0, KW_E_OVERFLOW or KW_E_NOMEM (or the sticky
 * status). */
int kw_buf_reserve(kw_buf *b, size_t extra);

/* Appends n bytes of data (data may be NULL when n == 0). @return 0 or the failure, as kw_buf_reserve. */
int kw_buf_append(kw_buf *b, const void *data, size_t n);

/* Appends the NUL-terminated string s (without its terminator). */
int kw_buf_append_str(kw_buf *b, const char *s);

/* Appends printf-formatted text. @return 0, KW_E_INVALID_ARG if vsnprintf fails, or as kw_buf_reserve. */
int kw_buf_printf(kw_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Hands the contents to the caller: *out becomes a NUL-terminated block of *out_len bytes (out_len may be NULL)
 * owned by the caller (free()); an empty buffer gives "". The buffer is left empty and reusable.
 * @return 0, or the sticky status of an earlier failed append (the contents are then freed, *out is untouched and the
 * buffer is left empty with its status cleared). */
int kw_buf_take(kw_buf *b, char **out, size_t *out_len);

/* Frees the contents and leaves the buffer empty with its status cleared. NULL is a no-op. */
void kw_buf_free(kw_buf *b);

#endif /* KW_BUF_H */
