/* kw_http_internal.h: the parts of the HTTP front that net/ and its white-box tests share: the request reader (the
 * http-parser glue: collecting one request under the caps, with no socket involved, so it can be fuzzed) and the
 * request struct behind kw_http_request. Nothing outside net/ and tests/ may include it. */
#ifndef KW_HTTP_INTERNAL_H
#define KW_HTTP_INTERNAL_H

#include <http_parser.h>

#include "common/kw_buf.h"
#include "net/kw_http.h"

typedef struct kw__http_limits {
    size_t max_header_bytes, max_headers, max_body_bytes;
} kw__http_limits;

/* What the reader tells its connection about the request being read (for the timeouts and 100-continue). */
enum kw__http_phase {
    KW__HTTP_PHASE_HEADERS,       /* a request's first byte arrived */
    KW__HTTP_PHASE_BODY,          /* its headers are complete */
    KW__HTTP_PHASE_BODY_CONTINUE, /* ... and it asked for 100-continue */
};

struct kw__http_conn;

/* A request and its response state. pub is first: a kw_http_request * is a kw__http_req *. */
typedef struct kw__http_req {
    kw_http_request pub;
    struct kw__http_conn *hc; /* the connection (kw_http.c), NULL once it is gone */
    char *text;               /* owned: target, header names and values, NUL-separated */
    uint8_t *body;            /* owned */
    kw_http_header *headers;  /* owned array; strings point into text */
    char *path;               /* owned copy of the target before '?' */
    bool head_only;           /* HEAD: no body in the response */
    bool started, chunked, close_after;
    void (*on_abort)(kw_http_request *req, void *user);
    void (*on_drain)(kw_http_request *req, void *user);
    void *watch_user;
} kw__http_req;

/* Frees a request and everything it owns; NULL is a no-op. */
void kw__http_req_free(kw__http_req *r);

typedef struct kw__http_reader {
    http_parser parser; /* parser.data is the reader */
    kw__http_limits lim;
    kw_buf text, body;            /* the request being read */
    size_t *name_off, *value_off; /* lim.max_headers entries each (offsets into text; value 0: empty) */
    size_t n_headers;
    int last;          /* which callback came last: url, field or value */
    bool complete;     /* a request is complete and waits for kw__http_reader_take */
    int reject;        /* the HTTP status to answer instead of handling the request (0: none) */
    int reject_status; /* the kw_status the connection then closes with */
    void (*on_phase)(void *user, enum kw__http_phase phase); /* optional */
    void *user;
} kw__http_reader;

/* Prepares a reader of requests under lim (max_headers > 0). @return 0 or KW_E_NOMEM. */
int kw__http_reader_init(kw__http_reader *r, const kw__http_limits *lim,
                         void (*on_phase)(void *user, enum kw__http_phase phase), void *user);

/* Frees what the reader holds (not r itself). */
void kw__http_reader_free(kw__http_reader *r);

#define KW__HTTP_REQUEST 1

/* Parses a prefix of data[0..len) and sets *used. @return 0 (all consumed, no request complete yet),
 * KW__HTTP_REQUEST (a request is complete and *used ends right after it: take it before feeding more), or a
 * negative status (KW_E_NET_HTTP, KW_E_NET_HTTP_LIMIT, KW_E_NOMEM) with r->reject the HTTP status to answer; the
 * reader is then unusable. */
int kw__http_reader_feed(kw__http_reader *r, const uint8_t *data, size_t len, size_t *used);

/* Hands the complete request over (*out owned by the caller: kw__http_req_free) and readies the reader for the
 * next one. @return 0, KW_E_STATE (no request is complete) or KW_E_NOMEM. */
int kw__http_reader_take(kw__http_reader *r, kw__http_req **out);

#endif /* KW_HTTP_INTERNAL_H */
