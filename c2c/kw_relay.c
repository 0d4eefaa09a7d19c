/* kw_relay.c: the text-relay baseline's string work (see kw_relay.h). */
#include "c2c/kw_relay.h"

#include <stdlib.h>
#include <string.h>

#include "common/kw_status.h"

#define KW_RELAY_PROMPT "Briefly describe the most useful background to solve the problem:\n\n"

int kw_relay_background_prompt(const char *question, char **out) {
    KW_RETURN_IF(question == NULL || out == NULL, KW_E_INVALID_ARG, "relay: NULL argument");
    const size_t a = strlen(KW_RELAY_PROMPT), b = strlen(question);
    char *s = malloc(a + b + 1);
    KW_RETURN_IF(s == NULL, KW_E_NOMEM, "relay: out of memory");
    memcpy(s, KW_RELAY_PROMPT, a);
    memcpy(s + a, question, b + 1);
    *out = s;
    return 0;
}

void kw_relay_cap_utf8(const char *text, size_t n, int64_t cap, size_t *out_len, int *truncated) {
    if (cap < 0 || (uint64_t)cap >= n) {
        *out_len = n;
        *truncated = 0;
        return;
    }
    size_t len = (size_t)cap;
    /* back off over a character cut in the middle: its continuation bytes (10xxxxxx), then its lead byte */
    size_t end = len;
    while (end > 0 && ((unsigned char)text[end] & 0xc0) == 0x80)
        --end;
    *out_len = end < len && end < n ? end : len;
    *truncated = 1;
}

void kw_relay_strip(const char *text, size_t n, size_t *start, size_t *len) {
    size_t a = 0, b = n;
    while (a < b && (text[a] == ' ' || text[a] == '\t' || text[a] == '\n' || text[a] == '\r' || text[a] == '\v' ||
                     text[a] == '\f'))
        ++a;
    while (b > a && (text[b - 1] == ' ' || text[b - 1] == '\t' || text[b - 1] == '\n' || text[b - 1] == '\r' ||
                     text[b - 1] == '\v' || text[b - 1] == '\f'))
        --b;
    *start = a;
    *len = b - a;
}

static const char *const kw__relay_style_names[KW_RELAY_STYLE_COUNT] = {"generated", "raw", "extractive"};

const char *kw_relay_style_name(enum kw_relay_style style) {
    return (unsigned)style < KW_RELAY_STYLE_COUNT ? kw__relay_style_names[style] : NULL;
}

int kw_relay_style_parse(const char *name, enum kw_relay_style *out) {
    for (int i = 0; name && i < KW_RELAY_STYLE_COUNT; ++i)
        if (strcmp(name, kw__relay_style_names[i]) == 0) return *out = (enum kw_relay_style)i, 0;
    KW_FAIL(KW_E_INVALID_ARG, "relay style \"%s\" is not generated, raw or extractive", name ? name : "(null)");
}

static int kw__relay_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* Extractive: whole collapsed sentences in order while they fit. */
static void kw__relay_extract(const char *q, size_t n, int64_t cap, char *out, size_t *out_len, int *truncated) {
    size_t len = 0, i = 0;
    *truncated = 0;
    while (i < n) {
        /* one sentence: up to a line break, or past [.?!] followed by whitespace */
        size_t end = i;
        while (end < n && q[end] != '\n' && q[end] != '\r' &&
               !((q[end] == '.' || q[end] == '?' || q[end] == '!') && end + 1 < n && kw__relay_space(q[end + 1])))
            ++end;
        if (end < n && q[end] != '\n' && q[end] != '\r') ++end; /* keep the punctuation */
        /* its collapsed length */
        size_t need = 0;
        int in_space = 1;
        for (size_t k = i; k < end; ++k) {
            if (kw__relay_space(q[k])) {
                in_space = 1;
                continue;
            }
            need += (in_space && need > 0) + 1;
            in_space = 0;
        }
        if (need > 0) {
            const size_t with_sep = need + (len > 0);
            if (cap >= 0 && (uint64_t)(len + with_sep) > (uint64_t)cap) {
                *truncated = 1;
                break;
            }
            if (len > 0) out[len++] = ' ';
            in_space = 1;
            size_t wrote = 0;
            for (size_t k = i; k < end; ++k) {
                if (kw__relay_space(q[k])) {
                    in_space = 1;
                    continue;
                }
                if (in_space && wrote > 0) out[len++] = ' ', ++wrote;
                out[len++] = q[k], ++wrote;
                in_space = 0;
            }
        }
        i = end;
        while (i < n && (q[i] == '\n' || q[i] == '\r'))
            ++i;
    }
    *out_len = len;
}

int kw_relay_text(enum kw_relay_style style, const char *question, size_t n, int64_t cap, char **out, size_t *out_len,
                  int *truncated) {
    KW_RETURN_IF(!question || !out || !out_len || !truncated, KW_E_INVALID_ARG, "relay: NULL argument");
    KW_RETURN_IF(style != KW_RELAY_RAW && style != KW_RELAY_EXTRACTIVE, KW_E_INVALID_ARG,
                 "relay: style %d needs the sharer model", (int)style);
    char *text = malloc(n + 1);
    KW_RETURN_IF(!text, KW_E_NOMEM, "relay: out of memory");
    if (style == KW_RELAY_RAW) {
        size_t start = 0, kept = 0;
        kw_relay_strip(question, n, &start, &kept);
        kw_relay_cap_utf8(question + start, kept, cap, out_len, truncated);
        memcpy(text, question + start, *out_len);
    } else {
        kw__relay_extract(question, n, cap, text, out_len, truncated);
    }
    text[*out_len] = '\0';
    *out = text;
    return 0;
}
