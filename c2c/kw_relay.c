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
