/* fuzz_http_request.c: libFuzzer target for the HTTP front's request reader (net/kw_http_reader.c, the glue between
 * http-parser and the server): the input is what a client sends on one connection. The first byte seeds the chunk
 * sizes; the rest is fed in one piece and in random chunks (each from its own exact-size copy). Invariants: both
 * give the same requests (method, target, headers, body) and both reject or both accept (which rejection can depend
 * on the chunking: http-parser reports a URL or header to the glue only at its end or at the end of the input, so a
 * cap may trip before a syntax error further on is seen, or after); every request respects the caps
 * (header count and bytes, body bytes) and its path and query are the target split at the first '?'; a rejection
 * always names an HTTP status of 400, 413, 431 or 501. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_status.h"
#include "net/kw_http_internal.h"
#include "tests/fuzz/fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const kw__http_limits fuzz_http_limits = {.max_header_bytes = 2048, .max_headers = 16, .max_body_bytes = 4096};

typedef struct fuzz_http_result {
    uint64_t h;
    int requests;
    int rc;     /* 0 or the failure status */
    int reject; /* the HTTP status of a rejection */
} fuzz_http_result;

static void fuzz_http_check(const kw_http_request *r, fuzz_http_result *res) {
    FUZZ_CHECK(r->method && r->target && r->path && r->query && r->body);
    FUZZ_CHECK(r->n_headers <= fuzz_http_limits.max_headers);
    FUZZ_CHECK(r->body_len <= fuzz_http_limits.max_body_bytes);
    FUZZ_CHECK(r->body[r->body_len] == 0);
    const size_t tl = strlen(r->target), pl = strlen(r->path);
    FUZZ_CHECK(pl <= tl && memcmp(r->path, r->target, pl) == 0);
    FUZZ_CHECK(pl == tl ? r->query[0] == 0 : (r->target[pl] == '?' && strcmp(r->query, r->target + pl + 1) == 0));
    size_t header_bytes = tl;
    res->h = fuzz_hash(res->h, r->method, strlen(r->method) + 1);
    res->h = fuzz_hash(res->h, r->target, tl + 1);
    for (size_t i = 0; i < r->n_headers; ++i) {
        const size_t nl = strlen(r->headers[i].name), vl = strlen(r->headers[i].value);
        header_bytes += nl + vl;
        res->h = fuzz_hash(res->h, r->headers[i].name, nl + 1);
        res->h = fuzz_hash(res->h, r->headers[i].value, vl + 1);
    }
    FUZZ_CHECK(header_bytes <= fuzz_http_limits.max_header_bytes);
    res->h = fuzz_hash(res->h, r->body, r->body_len);
    const uint8_t flags[2] = {(uint8_t)r->keep_alive, (uint8_t)r->version_minor};
    res->h = fuzz_hash(res->h, flags, sizeof flags);
    ++res->requests;
}

/* Feeds buf[0..n) to the reader, taking every request it completes. Returns 0 or the failure status. */
static int fuzz_http_feed(kw__http_reader *rd, const uint8_t *buf, size_t n, fuzz_http_result *res) {
    size_t at = 0;
    while (at < n) {
        size_t used = 0;
        const int rc = kw__http_reader_feed(rd, buf + at, n - at, &used);
        FUZZ_CHECK(used <= n - at);
        at += used;
        if (rc < 0) return rc;
        if (rc == 0) {
            FUZZ_CHECK(at == n);
            break;
        }
        kw__http_req *q = NULL;
        FUZZ_CHECK(kw__http_reader_take(rd, &q) == 0);
        fuzz_http_check(&q->pub, res);
        kw__http_req_free(q);
    }
    return 0;
}

static void fuzz_http_run(const uint8_t *data, size_t size, uint64_t seed, bool chunked, fuzz_http_result *res) {
    kw__http_reader rd;
    FUZZ_CHECK(kw__http_reader_init(&rd, &fuzz_http_limits, NULL, NULL) == 0);
    memset(res, 0, sizeof *res);
    res->h = 0xcbf29ce484222325ull;
    size_t at = 0;
    while (res->rc == 0 && at < size) {
        size_t n = size - at;
        if (chunked) n = fuzz_next_chunk(&seed, 16, 512, size - at);
        uint8_t *chunk = malloc(n);
        FUZZ_CHECK(chunk);
        memcpy(chunk, data + at, n);
        res->rc = fuzz_http_feed(&rd, chunk, n, res);
        free(chunk);
        at += n;
    }
    if (res->rc < 0) {
        res->reject = rd.reject;
        FUZZ_CHECK(res->rc == KW_E_NET_HTTP || res->rc == KW_E_NET_HTTP_LIMIT);
        FUZZ_CHECK(rd.reject == 400 || rd.reject == 413 || rd.reject == 431 || rd.reject == 501);
    }
    kw__http_reader_free(&rd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    fuzz_http_result one, chunked;
    fuzz_http_run(data + 1, size - 1, data[0], false, &one);
    fuzz_http_run(data + 1, size - 1, data[0], true, &chunked);
    FUZZ_CHECK(one.requests == chunked.requests);
    FUZZ_CHECK(one.h == chunked.h);
    FUZZ_CHECK((one.rc == 0) == (chunked.rc == 0));
    return 0;
}
