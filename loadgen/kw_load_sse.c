/* kw_load_sse.c: line splitting and data-field joining of text/event-stream bodies. */
#include "loadgen/kw_load_sse.h"

#include "common/kw_status.h"

#include <string.h>

static int kw_load_sse_line(kw_load_sse *s, const char *line, size_t n, kw_load_sse_fn fn, void *user) {
    if (n > 0 && line[n - 1] == '\r') --n;
    if (n == 0) {
        if (s->has_data) {
            if (s->event.len > 0) s->event.data[--s->event.len] = '\0'; /* the '\n' after the last data line */
            fn(s->event.data ? s->event.data : "", s->event.len, user);
        }
        s->event.len = 0;
        if (s->event.data) s->event.data[0] = '\0';
        s->has_data = 0;
        return 0;
    }
    if (n >= 5 && memcmp(line, "data:", 5) == 0) {
        const char *v = line + 5;
        size_t vlen = n - 5;
        if (vlen > 0 && v[0] == ' ') ++v, --vlen;
        const size_t max = s->max_bytes ? s->max_bytes : ((size_t)64 << 20);
        KW_RETURN_IF(s->event.len + vlen + 1 > max, KW_E_LIMIT, "a server-sent event passed %zu bytes", max);
        KW_FORWARD(kw_buf_append(&s->event, v, vlen));
        KW_FORWARD(kw_buf_append(&s->event, "\n", 1));
        s->has_data = 1;
    }
    return 0;
}

int kw_load_sse_feed(kw_load_sse *s, const char *data, size_t len, kw_load_sse_fn fn, void *user) {
    const size_t max = s->max_bytes ? s->max_bytes : ((size_t)64 << 20);
    while (len > 0) {
        const char *nl = memchr(data, '\n', len);
        const size_t take = nl ? (size_t)(nl - data) : len;
        if (!nl) {
            KW_RETURN_IF(s->line.len + take > max, KW_E_LIMIT, "a server-sent event line passed %zu bytes", max);
            return kw_buf_append(&s->line, data, take);
        }
        if (s->line.len > 0) {
            KW_RETURN_IF(s->line.len + take > max, KW_E_LIMIT, "a server-sent event line passed %zu bytes", max);
            KW_FORWARD(kw_buf_append(&s->line, data, take));
            KW_FORWARD(kw_load_sse_line(s, s->line.data, s->line.len, fn, user));
            s->line.len = 0;
        } else {
            KW_FORWARD(kw_load_sse_line(s, data, take, fn, user));
        }
        data += take + 1;
        len -= take + 1;
    }
    return 0;
}

size_t kw_load_sse_pending(const kw_load_sse *s) {
    return s->line.len;
}

void kw_load_sse_reset(kw_load_sse *s) {
    s->line.len = 0;
    s->event.len = 0;
    s->has_data = 0;
}

void kw_load_sse_free(kw_load_sse *s) {
    if (!s) return;
    kw_buf_free(&s->line);
    kw_buf_free(&s->event);
    s->has_data = 0;
}
