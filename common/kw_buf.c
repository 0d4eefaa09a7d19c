/* kw_buf.c: the growable byte buffer of kw_buf.h. Capacity starts at 256 bytes and doubles; every size is
 * overflow-checked before it is allocated, and the first failure sticks. */
#include "common/kw_buf.h"

#include "common/kw_size.h"
#include "common/kw_status.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int kw_buf_reserve(kw_buf *b, size_t extra) {
    if (b->status) return b->status;
    size_t need = 0;
    if (kw_size_add(b->len, extra, &need) < 0 || kw_size_add(need, 1, &need) < 0)
        return b->status = kw_error_set(KW_E_OVERFLOW, "a %zu-byte buffer cannot grow by %zu bytes", b->len, extra);
    if (need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    char *p = realloc(b->data, cap);
    if (!p) return b->status = kw_error_set(KW_E_NOMEM, "out of memory growing a buffer to %zu bytes", cap);
    b->data = p;
    b->cap = cap;
    return 0;
}

int kw_buf_append(kw_buf *b, const void *data, size_t n) {
    KW_FORWARD(kw_buf_reserve(b, n));
    if (n) memcpy(b->data + b->len, data, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int kw_buf_append_str(kw_buf *b, const char *s) {
    return kw_buf_append(b, s, strlen(s));
}

int kw_buf_printf(kw_buf *b, const char *fmt, ...) {
    if (b->status) return b->status;
    /* First try in the room there is; vsnprintf reports the full length when it does not fit. */
    va_list ap;
    va_start(ap, fmt);
    const int n = vsnprintf(b->data ? b->data + b->len : NULL, b->data ? b->cap - b->len : 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        if (b->data) b->data[b->len] = '\0';
        return b->status = kw_error_set(KW_E_INVALID_ARG, "formatting \"%.60s\" failed", fmt);
    }
    if (b->data && (size_t)n < b->cap - b->len) {
        b->len += (size_t)n;
        return 0;
    }
    const int rc = kw_buf_reserve(b, (size_t)n);
    if (rc < 0) {
        if (b->data) b->data[b->len] = '\0'; /* the truncated attempt wrote past len */
        return rc;
    }
    va_start(ap, fmt);
    const int m = vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (m != n) {
        b->data[b->len] = '\0';
        return b->status = kw_error_set(KW_E_INTERNAL, "formatting \"%.60s\" gave %d bytes, then %d", fmt, n, m);
    }
    b->len += (size_t)n;
    return 0;
}

int kw_buf_take(kw_buf *b, char **out, size_t *out_len) {
    const int rc = kw_buf_reserve(b, 0); /* an empty buffer still gives "" */
    if (rc < 0) {
        kw_buf_free(b);
        return rc;
    }
    b->data[b->len] = '\0';
    *out = b->data;
    if (out_len) *out_len = b->len;
    *b = (kw_buf)KW_BUF_INIT;
    return 0;
}

void kw_buf_free(kw_buf *b) {
    if (!b) return;
    free(b->data);
    *b = (kw_buf)KW_BUF_INIT;
}
