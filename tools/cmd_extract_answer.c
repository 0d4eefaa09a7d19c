/* cmd_extract_answer.c: `kvwire extract-answer` reads one JSON string per line on stdin (a model's output text) and
 * prints the answer letter the C2C reference extractor would give, or `null`, one line per input line.
 *
 * The JSON string literal is decoded here (RFC 8259: escapes, \u with surrogate pairs, \u0000 kept as a byte), not
 * with cJSON, whose C strings would stop at an embedded NUL. A line that is not exactly one JSON string (surrounding
 * blanks allowed), or that decodes to a lone surrogate or invalid UTF-8, stops the command with exit status 1 and the
 * line number on stderr; nothing is guessed. */
#include "c2c/kw_answer.h"
#include "common/kw_status.h"
#include "kw_commands.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char kw_cmd_extract_answer_summary[] =
    "print the reference answer letter (or null) for each JSON string line on stdin";

static int hex4(const char *p, uint32_t *out) {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
        const char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (uint32_t)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

static size_t put_utf8(char *o, uint32_t c) {
    if (c < 0x80) {
        o[0] = (char)c;
        return 1;
    }
    if (c < 0x800) {
        o[0] = (char)(0xc0 | c >> 6);
        o[1] = (char)(0x80 | (c & 0x3f));
        return 2;
    }
    if (c < 0x10000) {
        o[0] = (char)(0xe0 | c >> 12);
        o[1] = (char)(0x80 | (c >> 6 & 0x3f));
        o[2] = (char)(0x80 | (c & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | c >> 18);
    o[1] = (char)(0x80 | (c >> 12 & 0x3f));
    o[2] = (char)(0x80 | (c >> 6 & 0x3f));
    o[3] = (char)(0x80 | (c & 0x3f));
    return 4;
}

static int is_blank(char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Decodes the JSON string literal in line[0..len) into out (room for len bytes: decoding never grows the text),
 * *out_len bytes. */
static int json_string_decode(const char *line, size_t len, char *out, size_t *out_len) {
    size_t i = 0, o = 0;
    while (i < len && is_blank(line[i]))
        ++i;
    KW_RETURN_IF(i == len || line[i] != '"', KW_E_PARSE, "expected a JSON string");
    ++i;
    for (;;) {
        KW_RETURN_IF(i >= len, KW_E_PARSE, "unterminated JSON string");
        const unsigned char c = (unsigned char)line[i];
        if (c == '"') {
            ++i;
            break;
        }
        KW_RETURN_IF(c < 0x20, KW_E_PARSE, "raw control character 0x%02x in a JSON string", c);
        if (c != '\\') {
            out[o++] = (char)c;
            ++i;
            continue;
        }
        KW_RETURN_IF(i + 1 >= len, KW_E_PARSE, "unterminated escape");
        const char e = line[i + 1];
        i += 2;
        switch (e) {
        case '"':
            out[o++] = '"';
            break;
        case '\\':
            out[o++] = '\\';
            break;
        case '/':
            out[o++] = '/';
            break;
        case 'b':
            out[o++] = '\b';
            break;
        case 'f':
            out[o++] = '\f';
            break;
        case 'n':
            out[o++] = '\n';
            break;
        case 'r':
            out[o++] = '\r';
            break;
        case 't':
            out[o++] = '\t';
            break;
        case 'u': {
            uint32_t cp = 0;
            KW_RETURN_IF(len - i < 4 || hex4(line + i, &cp) < 0, KW_E_PARSE, "bad \\u escape");
            i += 4;
            if (cp >= 0xdc00 && cp <= 0xdfff) KW_FAIL(KW_E_UTF8, "lone low surrogate \\u%04x", cp);
            if (cp >= 0xd800 && cp <= 0xdbff) {
                uint32_t lo = 0;
                KW_RETURN_IF(len - i < 6 || line[i] != '\\' || line[i + 1] != 'u' || hex4(line + i + 2, &lo) < 0 ||
                                 lo < 0xdc00 || lo > 0xdfff,
                             KW_E_UTF8, "lone high surrogate \\u%04x", cp);
                i += 6;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            }
            o += put_utf8(out + o, cp); /* at most 4 bytes for 6 or 12 input bytes */
            break;
        }
        default:
            KW_FAIL(KW_E_PARSE, "unknown escape \\%c", e);
        }
    }
    while (i < len && is_blank(line[i]))
        ++i;
    KW_RETURN_IF(i != len, KW_E_PARSE, "trailing characters after the JSON string");
    *out_len = o;
    return 0;
}

int kw_cmd_extract_answer(int argc, char **argv) {
    if (argc > 1) {
        fprintf(stderr,
                "usage: kvwire extract-answer < lines\n"
                "  each stdin line is one JSON string (a model's output); prints A, B, C, D or null per line\n");
        return 2;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t got = 0;
    size_t lineno = 0;
    int status = 0;
    while ((got = getline(&line, &cap, stdin)) >= 0) {
        ++lineno;
        char *text = malloc((size_t)got + 1);
        if (!text) {
            fprintf(stderr, "kvwire extract-answer: out of memory\n");
            status = 1;
            break;
        }
        size_t len = 0;
        char letter = 0;
        int rc = json_string_decode(line, (size_t)got, text, &len);
        if (rc == 0) rc = kw_answer_extract(text, len, &letter);
        free(text);
        if (rc < 0) {
            fprintf(stderr, "kvwire extract-answer: line %zu: %s (%s)\n", lineno, kw_error_detail(),
                    kw_status_name(rc));
            status = 1;
            break;
        }
        if (letter)
            printf("%c\n", letter);
        else
            printf("null\n");
    }
    free(line);
    if (fflush(stdout) != 0) status = 1;
    return status;
}
