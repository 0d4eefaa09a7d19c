/* cmd_tokenize.c: `kvwire tokenize --tokenizer DIR [--decode] [--skip-special]`.
 *
 * Encode mode reads one JSON string per line on stdin and writes one JSON array of ids per line (no BOS/EOS); with
 * --pieces it writes the pre-tokenized pieces instead (a debugging aid, compared with HF by the fixture script).
 * Decode mode reads one JSON array of ids per line and writes one JSON string per line. The first bad line stops the
 * run with an error naming its number and a non-zero exit status; lines before it have been written.
 * The JSON string reader is local so that texts holding U+0000 survive (cJSON strings end at the first NUL). */
#include "kw_commands.h"

#include "common/kw_json.h"
#include "common/kw_status.h"
#include "model/kw_tokenizer.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char kw_cmd_tokenize_summary[] = "encode JSON strings to token ids (or --decode ids) with a tokenizer.json";

static void kw_tokenize_usage(FILE *f) {
    fprintf(f, "usage: kvwire tokenize --tokenizer DIR|FILE [--decode] [--skip-special]\n"
               "  encode: stdin has one JSON string per line; stdout gets one JSON array of ids per line (no BOS)\n"
               "  --decode: stdin has one JSON array of ids per line; stdout gets one JSON string per line\n"
               "  --skip-special: with --decode, drop special added tokens\n"
               "  --pieces: instead of ids, write the pre-tokenized pieces (normalized text) as a JSON array\n");
}

static int kw_tokenize_hex4(const char *p, uint32_t *v) {
    *v = 0;
    for (int i = 0; i < 4; ++i) {
        const char c = p[i];
        uint32_t d;
        if (c >= '0' && c <= '9')
            d = (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            d = (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            d = (uint32_t)(c - 'A' + 10);
        else
            KW_FAIL(KW_E_PARSE, "bad \\u escape");
        *v = *v << 4 | d;
    }
    return 0;
}

/* Parses a line holding one JSON string (surrounding whitespace allowed) into out[0..*out_len) (out has room for
 * len bytes: the decoded string is never longer than its literal). Lone surrogates are refused. */
static int kw_tokenize_parse_string(const char *line, size_t len, char *out, size_t *out_len) {
    size_t i = 0, o = 0;
    while (i < len && (line[i] == ' ' || line[i] == '\t'))
        ++i;
    KW_RETURN_IF(i >= len || line[i] != '"', KW_E_PARSE, "expected a JSON string");
    ++i;
    for (;;) {
        KW_RETURN_IF(i >= len, KW_E_PARSE, "unterminated JSON string");
        const unsigned char c = (unsigned char)line[i];
        if (c == '"') break;
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
            continue;
        case '\\':
            out[o++] = '\\';
            continue;
        case '/':
            out[o++] = '/';
            continue;
        case 'b':
            out[o++] = '\b';
            continue;
        case 'f':
            out[o++] = '\f';
            continue;
        case 'n':
            out[o++] = '\n';
            continue;
        case 'r':
            out[o++] = '\r';
            continue;
        case 't':
            out[o++] = '\t';
            continue;
        case 'u':
            break;
        default:
            KW_FAIL(KW_E_PARSE, "unknown escape \\%c", e);
        }
        uint32_t cp;
        KW_RETURN_IF(i + 4 > len, KW_E_PARSE, "short \\u escape");
        KW_FORWARD(kw_tokenize_hex4(line + i, &cp));
        i += 4;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            uint32_t lo;
            KW_RETURN_IF(i + 6 > len || line[i] != '\\' || line[i + 1] != 'u', KW_E_PARSE,
                         "lone high surrogate \\u%04X", cp);
            KW_FORWARD(kw_tokenize_hex4(line + i + 2, &lo));
            KW_RETURN_IF(lo < 0xDC00 || lo > 0xDFFF, KW_E_PARSE, "high surrogate \\u%04X without a low one", cp);
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            i += 6;
        } else {
            KW_RETURN_IF(cp >= 0xDC00 && cp <= 0xDFFF, KW_E_PARSE, "lone low surrogate \\u%04X", cp);
        }
        /* A \u escape is 6 or 12 bytes of input and gives at most 4 bytes. */
        if (cp < 0x80) {
            out[o++] = (char)cp;
        } else if (cp < 0x800) {
            out[o++] = (char)(0xC0 | (cp >> 6));
            out[o++] = (char)(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            out[o++] = (char)(0xE0 | (cp >> 12));
            out[o++] = (char)(0x80 | ((cp >> 6) & 0x3F));
            out[o++] = (char)(0x80 | (cp & 0x3F));
        } else {
            out[o++] = (char)(0xF0 | (cp >> 18));
            out[o++] = (char)(0x80 | ((cp >> 12) & 0x3F));
            out[o++] = (char)(0x80 | ((cp >> 6) & 0x3F));
            out[o++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    ++i;
    while (i < len && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r'))
        ++i;
    KW_RETURN_IF(i != len, KW_E_PARSE, "trailing data after the JSON string");
    *out_len = o;
    return 0;
}

static int kw_tokenize_encode_line(const kw_tokenizer *tok, const char *line, size_t len, FILE *out) {
    int rc = 0;
    int32_t *ids = NULL;
    size_t n = 0, text_len = 0;
    char *text = malloc(len + 1);
    KW_CHECK_IF(!text, KW_E_NOMEM, "out of memory");
    KW_CHECK(kw_tokenize_parse_string(line, len, text, &text_len));
    KW_CHECK(kw_tokenizer_encode(tok, text, text_len, &ids, &n));
    fputc('[', out);
    for (size_t i = 0; i < n; ++i)
        fprintf(out, i ? ",%d" : "%d", ids[i]);
    fputs("]\n", out);
out:
    free(ids);
    free(text);
    return rc;
}

/* --pieces: the pre-tokenized pieces (normalized text) as a JSON array of strings. */
static int kw_tokenize_pieces_line(const kw_tokenizer *tok, const char *line, size_t len, FILE *out) {
    int rc = 0;
    size_t text_len = 0, norm_len = 0, n = 0, json_len = 0, json_cap = 0;
    char *norm = NULL, *json = NULL;
    size_t *bounds = NULL;
    char *text = malloc(len + 1);
    KW_CHECK_IF(!text, KW_E_NOMEM, "out of memory");
    KW_CHECK(kw_tokenize_parse_string(line, len, text, &text_len));
    KW_CHECK(kw_tokenizer_pre_tokenize(tok, text, text_len, &norm, &norm_len, &bounds, &n));
    fputc('[', out);
    for (size_t i = 0; i < n; ++i) {
        json_len = 0;
        KW_CHECK(kw_json_append_string(&json, &json_len, &json_cap, norm + bounds[2 * i],
                                       bounds[2 * i + 1] - bounds[2 * i]));
        if (i) fputc(',', out);
        fwrite(json, 1, json_len, out);
    }
    fputs("]\n", out);
out:
    free(json);
    free(bounds);
    free(norm);
    free(text);
    return rc;
}

static int kw_tokenize_decode_line(const kw_tokenizer *tok, const char *line, size_t len, int skip_special, FILE *out) {
    int rc = 0;
    cJSON *root = NULL;
    int32_t *ids = NULL;
    char *text = NULL, *json = NULL;
    size_t text_len = 0, json_len = 0, json_cap = 0;
    KW_CHECK(kw_json_parse(line, len, &root));
    KW_CHECK_IF(!cJSON_IsArray(root), KW_E_PARSE, "expected a JSON array of token ids");
    const int n = cJSON_GetArraySize(root);
    ids = malloc(((size_t)n + 1) * sizeof *ids);
    KW_CHECK_IF(!ids, KW_E_NOMEM, "out of memory");
    int k = 0;
    for (const cJSON *it = root->child; it; it = it->next, ++k) {
        int64_t v;
        KW_CHECK_IF(kw_json_to_i64(it, INT32_MIN, INT32_MAX, &v) < 0, KW_E_PARSE,
                    "element %d of the array is not a 32-bit integer", k);
        ids[k] = (int32_t)v;
    }
    KW_CHECK(kw_tokenizer_decode(tok, ids, (size_t)n, skip_special, &text, &text_len));
    KW_CHECK(kw_json_append_string(&json, &json_len, &json_cap, text, text_len));
    fwrite(json, 1, json_len, out);
    fputc('\n', out);
out:
    free(json);
    free(text);
    free(ids);
    cJSON_Delete(root);
    return rc;
}

int kw_cmd_tokenize(int argc, char **argv) {
    const char *dir = NULL;
    int decode = 0, skip_special = 0, pieces = 0;
    for (int i = 1; i < argc; ++i) {
        if (strcmp(argv[i], "--tokenizer") == 0 && i + 1 < argc) {
            dir = argv[++i];
        } else if (strcmp(argv[i], "--decode") == 0) {
            decode = 1;
        } else if (strcmp(argv[i], "--pieces") == 0) {
            pieces = 1;
        } else if (strcmp(argv[i], "--skip-special") == 0) {
            skip_special = 1;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            kw_tokenize_usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "kvwire tokenize: unknown or incomplete option '%s'\n", argv[i]);
            kw_tokenize_usage(stderr);
            return 2;
        }
    }
    if (!dir) {
        fprintf(stderr, "kvwire tokenize: --tokenizer is required\n");
        kw_tokenize_usage(stderr);
        return 2;
    }
    if (pieces && decode) {
        fprintf(stderr, "kvwire tokenize: --pieces and --decode exclude each other\n");
        return 2;
    }
    if (skip_special && !decode) {
        fprintf(stderr, "kvwire tokenize: --skip-special only applies to --decode\n");
        return 2;
    }
    kw_tokenizer *tok = NULL;
    int rc = kw_tokenizer_load(dir, &tok);
    if (rc < 0) {
        fprintf(stderr, "kvwire tokenize: %s: %s\n", kw_status_name(rc), kw_error_detail());
        return 1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    size_t lineno = 0;
    while ((got = getline(&line, &cap, stdin)) >= 0) {
        ++lineno;
        size_t len = (size_t)got;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            --len;
        if (decode)
            rc = kw_tokenize_decode_line(tok, line, len, skip_special, stdout);
        else if (pieces)
            rc = kw_tokenize_pieces_line(tok, line, len, stdout);
        else
            rc = kw_tokenize_encode_line(tok, line, len, stdout);
        if (rc < 0) {
            fflush(stdout);
            fprintf(stderr, "kvwire tokenize: stdin line %zu: %s: %s\n", lineno, kw_status_name(rc), kw_error_detail());
            break;
        }
    }
    free(line);
    kw_tokenizer_free(tok);
    if (rc == 0 && fflush(stdout) != 0) {
        fprintf(stderr, "kvwire tokenize: writing stdout failed\n");
        return 1;
    }
    return rc < 0 ? 1 : 0;
}
