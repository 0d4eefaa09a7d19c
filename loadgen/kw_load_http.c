/* kw_load_http.c: the libcurl multi engine of kw_load_http.h. One easy handle per exchange in flight, kept on a free
 * list for the next exchange (the multi handle's connection cache keeps the TCP connections alive between them);
 * "Expect: 100-continue" is turned off (it would cost a round trip per POST above 1 KiB); TCP_NODELAY on.
 */
#include "loadgen/kw_load_http.h"

#include "loadgen/kw_load_sse.h"

#include "common/kw_buf.h"
#include "common/kw_status.h"
#include "common/kw_time.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

typedef struct kw_load_xfer {
    kw_load_http *h;
    CURL *easy; /* owned, reused */
    void *tag;
    char *req_body;  /* owned while in flight */
    kw_buf body;     /* a plain body */
    kw_load_sse sse; /* an event-stream body */
    int type_checked, event_stream, too_large;
    uint64_t t_send_ns;
    char errbuf[CURL_ERROR_SIZE];
    struct kw_load_xfer *next;                      /* free list */
    struct kw_load_xfer *prev_active, *next_active; /* in-flight list */
} kw_load_xfer;

struct kw_load_http {
    CURLM *multi;
    char *base_url;
    kw_load_http_options opt;
    struct curl_slist *post_headers;
    kw_load_http_event_fn on_event;
    kw_load_http_done_fn on_done;
    void *user;
    kw_load_xfer *free_list;
    kw_load_xfer *active; /* exchanges in flight (doubly linked) */
    size_t in_flight;
};

static pthread_once_t kw_load_curl_once = PTHREAD_ONCE_INIT;
static CURLcode kw_load_curl_init_rc = CURLE_OK;

static void kw_load_curl_init(void) {
    kw_load_curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

// ---------------------------------------------------------------------------------------------------------------
// Bodies and events

static void kw_load_on_sse(const char *data, size_t len, void *user) {
    kw_load_xfer *x = user;
    if (x->h->on_event) x->h->on_event(x->tag, data, len, kw_time_now_ns(), x->h->user);
}

static size_t kw_load_write_cb(char *ptr, size_t size, size_t nmemb, void *userdata) {
    kw_load_xfer *x = userdata;
    const size_t n = size * nmemb;
    if (!x->type_checked) {
        char *ct = NULL;
        x->type_checked = 1;
        if (curl_easy_getinfo(x->easy, CURLINFO_CONTENT_TYPE, &ct) == CURLE_OK && ct &&
            strncmp(ct, "text/event-stream", 17) == 0)
            x->event_stream = 1;
    }
    if (x->event_stream) {
        const int rc = kw_load_sse_feed(&x->sse, ptr, n, kw_load_on_sse, x);
        if (rc == KW_E_LIMIT) x->too_large = 1;
        return rc < 0 ? 0 : n; /* 0: CURLE_WRITE_ERROR ends the exchange */
    }
    if (x->body.len + n > x->h->opt.max_body_bytes) {
        x->too_large = 1;
        return 0;
    }
    return kw_buf_append(&x->body, ptr, n) < 0 ? 0 : n;
}

// ---------------------------------------------------------------------------------------------------------------
// Engine

int kw_load_http_create(const kw_load_http_options *opt, kw_load_http_event_fn on_event, kw_load_http_done_fn on_done,
                        void *user, kw_load_http **out) {
    KW_RETURN_IF(!opt || !opt->base_url || !on_done || !out, KW_E_INVALID_ARG, "kw_load_http_create: bad arguments");
    pthread_once(&kw_load_curl_once, kw_load_curl_init);
    KW_RETURN_IF(kw_load_curl_init_rc != CURLE_OK, KW_E_INTERNAL, "curl_global_init failed: %s",
                 curl_easy_strerror(kw_load_curl_init_rc));
    kw_load_http *h = calloc(1, sizeof(*h));
    KW_RETURN_IF(!h, KW_E_NOMEM, "out of memory");
    h->opt = *opt;
    if (!h->opt.connect_timeout_ms) h->opt.connect_timeout_ms = 10000;
    if (!h->opt.max_body_bytes) h->opt.max_body_bytes = (size_t)64 << 20;
    if (!h->opt.max_connections) h->opt.max_connections = 256;
    size_t n = strlen(opt->base_url);
    while (n > 0 && opt->base_url[n - 1] == '/')
        --n;
    h->base_url = malloc(n + 1);
    h->multi = curl_multi_init();
    h->post_headers = curl_slist_append(NULL, "Content-Type: application/json");
    if (h->post_headers) {
        struct curl_slist *l = curl_slist_append(h->post_headers, "Expect:");
        if (l) h->post_headers = l;
    }
    if (!h->base_url || !h->multi || !h->post_headers) {
        kw_load_http_destroy(h);
        KW_FAIL(KW_E_NOMEM, "out of memory creating the HTTP client");
    }
    memcpy(h->base_url, opt->base_url, n);
    h->base_url[n] = '\0';
    h->opt.base_url = h->base_url;
    curl_multi_setopt(h->multi, CURLMOPT_MAX_HOST_CONNECTIONS, 0L);
    curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, (long)h->opt.max_connections);
    curl_multi_setopt(h->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_NOTHING);
    h->on_event = on_event;
    h->on_done = on_done;
    h->user = user;
    *out = h;
    return 0;
}

static void kw_load_xfer_destroy(kw_load_xfer *x) {
    if (!x) return;
    if (x->easy) curl_easy_cleanup(x->easy);
    free(x->req_body);
    kw_buf_free(&x->body);
    kw_load_sse_free(&x->sse);
    free(x);
}

/* A transfer with an easy handle, from the free list or new, with the options every exchange shares. */
static int kw_load_xfer_get(kw_load_http *h, const char *path, void *tag, kw_load_xfer **out) {
    kw_load_xfer *x = h->free_list;
    if (x) {
        h->free_list = x->next;
    } else {
        x = calloc(1, sizeof(*x));
        KW_RETURN_IF(!x, KW_E_NOMEM, "out of memory");
        x->easy = curl_easy_init();
        if (!x->easy) {
            free(x);
            KW_FAIL(KW_E_INTERNAL, "curl_easy_init failed");
        }
        x->h = h;
        curl_easy_setopt(x->easy, CURLOPT_PRIVATE, x);
        curl_easy_setopt(x->easy, CURLOPT_WRITEFUNCTION, kw_load_write_cb);
        curl_easy_setopt(x->easy, CURLOPT_WRITEDATA, x);
        curl_easy_setopt(x->easy, CURLOPT_ERRORBUFFER, x->errbuf);
        curl_easy_setopt(x->easy, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(x->easy, CURLOPT_TCP_NODELAY, 1L);
        curl_easy_setopt(x->easy, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
        curl_easy_setopt(x->easy, CURLOPT_TIMEOUT_MS, (long)h->opt.timeout_ms);
        curl_easy_setopt(x->easy, CURLOPT_CONNECTTIMEOUT_MS, (long)h->opt.connect_timeout_ms);
    }
    x->next = NULL;
    x->tag = tag;
    x->body.len = 0;
    if (x->body.data) x->body.data[0] = '\0';
    kw_load_sse_reset(&x->sse);
    x->sse.max_bytes = h->opt.max_body_bytes;
    x->type_checked = x->event_stream = x->too_large = 0;
    x->errbuf[0] = '\0';
    kw_buf url = KW_BUF_INIT;
    kw_buf_append_str(&url, h->base_url);
    kw_buf_append_str(&url, path);
    char *u = NULL;
    const int rc = kw_buf_take(&url, &u, NULL);
    if (rc < 0) {
        x->next = h->free_list;
        h->free_list = x;
        return rc;
    }
    curl_easy_setopt(x->easy, CURLOPT_URL, u); /* libcurl copies the string */
    free(u);
    *out = x;
    return 0;
}

static int kw_load_xfer_start(kw_load_http *h, kw_load_xfer *x) {
    x->t_send_ns = kw_time_now_ns();
    const CURLMcode mc = curl_multi_add_handle(h->multi, x->easy);
    if (mc != CURLM_OK) {
        free(x->req_body);
        x->req_body = NULL;
        x->next = h->free_list;
        h->free_list = x;
        KW_FAIL(KW_E_INTERNAL, "curl_multi_add_handle: %s", curl_multi_strerror(mc));
    }
    x->prev_active = NULL;
    x->next_active = h->active;
    if (h->active) h->active->prev_active = x;
    h->active = x;
    h->in_flight++;
    return 0;
}

int kw_load_http_post(kw_load_http *h, const char *path, char *body, size_t len, void *tag) {
    kw_load_xfer *x = NULL;
    const int rc = kw_load_xfer_get(h, path, tag, &x);
    if (rc < 0) {
        free(body);
        return rc;
    }
    x->req_body = body;
    curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, h->post_headers);
    curl_easy_setopt(x->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    curl_easy_setopt(x->easy, CURLOPT_POSTFIELDS, body);
    return kw_load_xfer_start(h, x);
}

int kw_load_http_get(kw_load_http *h, const char *path, void *tag) {
    kw_load_xfer *x = NULL;
    KW_FORWARD(kw_load_xfer_get(h, path, tag, &x));
    curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, (struct curl_slist *)NULL);
    curl_easy_setopt(x->easy, CURLOPT_HTTPGET, 1L);
    return kw_load_xfer_start(h, x);
}

static void kw_load_xfer_finish(kw_load_http *h, kw_load_xfer *x, CURLcode code) {
    kw_load_http_result r;
    memset(&r, 0, sizeof(r));
    r.tag = x->tag;
    r.t_send_ns = x->t_send_ns;
    r.t_end_ns = kw_time_now_ns();
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &r.status);
    r.too_large = x->too_large;
    r.transport_error = code == CURLE_OK ? 0 : (int)code;
    r.transport_name = code == CURLE_OK ? "" : curl_easy_strerror(code);
    r.error_text = x->errbuf;
    r.event_stream = x->event_stream;
    r.body = x->body.data ? x->body.data : "";
    r.body_len = x->body.len;
    if (x->event_stream) {
        r.body = x->sse.line.data ? x->sse.line.data : ""; /* an unterminated last line */
        r.body_len = x->sse.line.len;
    }
    curl_multi_remove_handle(h->multi, x->easy);
    if (x->prev_active)
        x->prev_active->next_active = x->next_active;
    else
        h->active = x->next_active;
    if (x->next_active) x->next_active->prev_active = x->prev_active;
    h->in_flight--;
    free(x->req_body);
    x->req_body = NULL;
    h->on_done(&r, h->user);
    x->next = h->free_list;
    h->free_list = x;
}

int kw_load_http_poll(kw_load_http *h, int timeout_ms) {
    int running = 0;
    CURLMcode mc = curl_multi_perform(h->multi, &running);
    KW_RETURN_IF(mc != CURLM_OK, KW_E_INTERNAL, "curl_multi_perform: %s", curl_multi_strerror(mc));
    int done_any = 0;
    CURLMsg *msg;
    int left = 0;
    while ((msg = curl_multi_info_read(h->multi, &left))) {
        if (msg->msg != CURLMSG_DONE) continue;
        kw_load_xfer *x = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
        const CURLcode code = msg->data.result;
        kw_load_xfer_finish(h, x, code);
        done_any = 1;
    }
    if (done_any) return 0;
    mc = curl_multi_poll(h->multi, NULL, 0, timeout_ms, NULL);
    KW_RETURN_IF(mc != CURLM_OK, KW_E_INTERNAL, "curl_multi_poll: %s", curl_multi_strerror(mc));
    mc = curl_multi_perform(h->multi, &running);
    KW_RETURN_IF(mc != CURLM_OK, KW_E_INTERNAL, "curl_multi_perform: %s", curl_multi_strerror(mc));
    while ((msg = curl_multi_info_read(h->multi, &left))) {
        if (msg->msg != CURLMSG_DONE) continue;
        kw_load_xfer *x = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
        kw_load_xfer_finish(h, x, msg->data.result);
    }
    return 0;
}

size_t kw_load_http_in_flight(const kw_load_http *h) {
    return h->in_flight;
}

void kw_load_http_destroy(kw_load_http *h) {
    if (!h) return;
    while (h->active)
        kw_load_xfer_finish(h, h->active, CURLE_ABORTED_BY_CALLBACK);
    while (h->free_list) {
        kw_load_xfer *x = h->free_list;
        h->free_list = x->next;
        kw_load_xfer_destroy(x);
    }
    if (h->multi) curl_multi_cleanup(h->multi);
    curl_slist_free_all(h->post_headers);
    free(h->base_url);
    free(h);
}

// ---------------------------------------------------------------------------------------------------------------
// One blocking GET

typedef struct kw_load_once {
    int done;
    long status;
    int transport_error;
    char reason[CURL_ERROR_SIZE + 64];
    char *body;
    size_t body_len;
} kw_load_once;

static void kw_load_once_done(const kw_load_http_result *r, void *user) {
    kw_load_once *o = user;
    o->done = 1;
    o->status = r->status;
    o->transport_error = r->transport_error;
    snprintf(o->reason, sizeof(o->reason), "%s%s%s", r->transport_name, r->error_text[0] ? ": " : "", r->error_text);
    o->body = malloc(r->body_len + 1);
    if (o->body) {
        memcpy(o->body, r->body, r->body_len);
        o->body[r->body_len] = '\0';
        o->body_len = r->body_len;
    }
}

int kw_load_http_once(const char *base_url, const char *path, char *post_body, size_t post_len, uint32_t timeout_ms,
                      long *status, char **body, size_t *body_len) {
    kw_load_http_options opt = {.base_url = base_url, .timeout_ms = timeout_ms, .connect_timeout_ms = timeout_ms};
    kw_load_once o;
    memset(&o, 0, sizeof(o));
    kw_load_http *h = NULL;
    const int crc = kw_load_http_create(&opt, NULL, kw_load_once_done, &o, &h);
    if (crc < 0) {
        free(post_body);
        return crc;
    }
    int rc = post_body ? kw_load_http_post(h, path, post_body, post_len, NULL) : kw_load_http_get(h, path, NULL);
    while (rc == 0 && !o.done)
        rc = kw_load_http_poll(h, 100);
    kw_load_http_destroy(h);
    if (rc < 0) {
        free(o.body);
        return rc;
    }
    if (o.transport_error) {
        free(o.body);
        KW_FAIL(KW_E_IO, "%s %s%s: %s", post_body ? "POST" : "GET", base_url, path, o.reason);
    }
    KW_RETURN_IF(!o.body, KW_E_NOMEM, "out of memory");
    *status = o.status;
    *body = o.body;
    if (body_len) *body_len = o.body_len;
    return 0;
}
