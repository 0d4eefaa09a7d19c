/* kw_status.c: status-code names and descriptions, and the thread-local failure detail. */
#include "kw_status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *kw_strerror(int status) {
    switch (status) {
#define KW_STATUS_TEXT_CASE_(name, value, text)                                                                        \
    case value:                                                                                                        \
        return text;
        KW_STATUS_LIST(KW_STATUS_TEXT_CASE_)
#undef KW_STATUS_TEXT_CASE_
    default:
        return status < 0 ? "unknown error" : "success (positive value)";
    }
}

const char *kw_status_name(int status) {
    switch (status) {
#define KW_STATUS_NAME_CASE_(name, value, text)                                                                        \
    case value:                                                                                                        \
        return #name;
        KW_STATUS_LIST(KW_STATUS_NAME_CASE_)
#undef KW_STATUS_NAME_CASE_
    default:
        return "KW_E_UNKNOWN";
    }
}

/* One detail buffer per thread: daemons run model work and I/O on different threads. */
static _Thread_local char kw_error_detail_buf[512];

int kw_error_set(int status, const char *fmt, ...) {
    /* Format into a scratch buffer first: callers may pass kw_error_detail() itself as an argument to add context. */
    char formatted[sizeof kw_error_detail_buf];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(formatted, sizeof formatted, fmt, ap);
    va_end(ap);
    memcpy(kw_error_detail_buf, formatted, sizeof formatted);
    return status;
}

const char *kw_error_detail(void) {
    return kw_error_detail_buf;
}

void kw_error_clear(void) {
    kw_error_detail_buf[0] = '\0';
}
