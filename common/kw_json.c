/* kw_json.c: parsing and typed access over cJSON trees. */
#include "kw_json.h"
#include "kw_file.h"
#include "kw_status.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int kw_json_parse(const char *text, size_t len, cJSON **out) {
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) {
        const size_t at = end ? (size_t)(end - text) : 0;
        KW_FAIL(KW_E_PARSE, "invalid JSON near byte %zu", at);
    }
    /* Only whitespace may follow the value. */
    for (const char *p = end; p && p < text + len; ++p) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r' && *p != '\0') {
            cJSON_Delete(root);
            KW_FAIL(KW_E_PARSE, "trailing data after JSON value at byte %zu", (size_t)(p - text));
        }
    }
    *out = root;
    return 0;
}

int kw_json_load_file(const char *path, size_t max_size, cJSON **out) {
    char *text = NULL;
    size_t size = 0;
    KW_FORWARD(kw_file_read_all(path, max_size, &text, &size));
    const int rc = kw_json_parse(text, size, out);
    free(text);
    if (rc < 0) return kw_error_set(rc, "%s: %s", path, kw_error_detail());
    return 0;
}

int kw_json_to_i64(const cJSON *item, int64_t min, int64_t max, int64_t *out) {
    if (!cJSON_IsNumber(item)) return KW_E_PARSE;
    const double v = item->valuedouble;
    if (!(v == floor(v)) || fabs(v) > (double)KW_JSON_MAX_EXACT_INT) return KW_E_PARSE;
    const int64_t i = (int64_t)v;
    if (i < min || i > max) return KW_E_PARSE;
    *out = i;
    return 0;
}

static const cJSON *kw_json_field(const cJSON *obj, const char *key) {
    const cJSON *item = cJSON_IsObject(obj) ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
    return cJSON_IsNull(item) ? NULL : item;
}

int kw_json_get_i64(const cJSON *obj, const char *key, int64_t min, int64_t max, int64_t *out, const char *what) {
    const cJSON *item = kw_json_field(obj, key);
    KW_RETURN_IF(!item, KW_E_NOT_FOUND, "%s: missing field \"%s\"", what, key);
    KW_RETURN_IF(kw_json_to_i64(item, min, max, out) < 0, KW_E_PARSE,
                 "%s: field \"%s\" must be an integer in [%lld, %lld]", what, key, (long long)min, (long long)max);
    return 0;
}

int kw_json_get_f64(const cJSON *obj, const char *key, double *out, const char *what) {
    const cJSON *item = kw_json_field(obj, key);
    KW_RETURN_IF(!item, KW_E_NOT_FOUND, "%s: missing field \"%s\"", what, key);
    KW_RETURN_IF(!cJSON_IsNumber(item), KW_E_PARSE, "%s: field \"%s\" must be a number", what, key);
    *out = item->valuedouble;
    return 0;
}

int kw_json_get_bool(const cJSON *obj, const char *key, int *out, const char *what) {
    const cJSON *item = kw_json_field(obj, key);
    KW_RETURN_IF(!item, KW_E_NOT_FOUND, "%s: missing field \"%s\"", what, key);
    KW_RETURN_IF(!cJSON_IsBool(item), KW_E_PARSE, "%s: field \"%s\" must be true or false", what, key);
    *out = cJSON_IsTrue(item);
    return 0;
}

int kw_json_get_str(const cJSON *obj, const char *key, const char **out, const char *what) {
    const cJSON *item = kw_json_field(obj, key);
    KW_RETURN_IF(!item, KW_E_NOT_FOUND, "%s: missing field \"%s\"", what, key);
    KW_RETURN_IF(!cJSON_IsString(item), KW_E_PARSE, "%s: field \"%s\" must be a string", what, key);
    *out = item->valuestring;
    return 0;
}

int kw_json_opt_i64(const cJSON *obj, const char *key, int64_t min, int64_t max, int64_t def, int64_t *out,
                    const char *what) {
    if (!kw_json_field(obj, key)) {
        *out = def;
        return 0;
    }
    return kw_json_get_i64(obj, key, min, max, out, what);
}

int kw_json_opt_f64(const cJSON *obj, const char *key, double def, double *out, const char *what) {
    if (!kw_json_field(obj, key)) {
        *out = def;
        return 0;
    }
    return kw_json_get_f64(obj, key, out, what);
}

int kw_json_opt_bool(const cJSON *obj, const char *key, int def, int *out, const char *what) {
    if (!kw_json_field(obj, key)) {
        *out = def;
        return 0;
    }
    return kw_json_get_bool(obj, key, out, what);
}

int kw_json_opt_str(const cJSON *obj, const char *key, const char *def, const char **out, const char *what) {
    if (!kw_json_field(obj, key)) {
        *out = def;
        return 0;
    }
    return kw_json_get_str(obj, key, out, what);
}

static int kw_json_reserve(char **buf, size_t *len, size_t *cap, size_t extra) {
    if (*cap - *len >= extra) return 0;
    size_t want = *cap ? *cap : 64;
    while (want - *len < extra) {
        if (want > (size_t)-1 / 2) return KW_E_NOMEM;
        want *= 2;
    }
    char *p = realloc(*buf, want);
    if (!p) return KW_E_NOMEM;
    *buf = p;
    *cap = want;
    return 0;
}

int kw_json_append_string(char **buf, size_t *len, size_t *cap, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    if (n > ((size_t)-1 - 3) / 6) return KW_E_NOMEM;
    if (kw_json_reserve(buf, len, cap, n * 6 + 3) < 0) return KW_E_NOMEM;
    char *o = *buf + *len;
    *o++ = '"';
    for (size_t i = 0; i < n; ++i) {
        const unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = (char)c;
        } else if (c == '\n') {
            *o++ = '\\';
            *o++ = 'n';
        } else if (c == '\r') {
            *o++ = '\\';
            *o++ = 'r';
        } else if (c == '\t') {
            *o++ = '\\';
            *o++ = 't';
        } else if (c < 0x20) {
            *o++ = '\\';
            *o++ = 'u';
            *o++ = '0';
            *o++ = '0';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
        } else {
            *o++ = (char)c;
        }
    }
    *o++ = '"';
    *o = '\0';
    *len = (size_t)(o - *buf);
    return 0;
}

/* The 4 hex digits at p (the caller checked that they are there). */
static int kw_json_hex4(const char *p, uint32_t *out) {
    uint32_t v = 0;
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
            return KW_E_PARSE;
        v = v << 4 | d;
    }
    *out = v;
    return 0;
}

static int kw_json_is_space(char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* The escape sequence at text[*i] (just after the backslash) appended at out + *o. An escape is at least 2 input
 * bytes and gives at most 4 output bytes for its 6 (or 12, a surrogate pair), so out never outgrows the input. */
static int kw_json_decode_escape(const char *text, size_t len, size_t *i, char *out, size_t *o) {
    KW_RETURN_IF(*i >= len, KW_E_PARSE, "unterminated escape");
    const char e = text[(*i)++];
    static const char plain[] = "\"\\/bfnrt", value[] = "\"\\/\b\f\n\r\t";
    const char *hit = e ? strchr(plain, e) : NULL;
    if (hit) {
        out[(*o)++] = value[hit - plain];
        return 0;
    }
    KW_RETURN_IF(e != 'u', KW_E_PARSE, "unknown escape \\%c", e);
    uint32_t cp = 0;
    KW_RETURN_IF(len - *i < 4 || kw_json_hex4(text + *i, &cp) < 0, KW_E_PARSE, "bad \\u escape");
    *i += 4;
    KW_RETURN_IF(cp >= 0xDC00 && cp <= 0xDFFF, KW_E_UTF8, "lone low surrogate \\u%04X", cp);
    if (cp >= 0xD800 && cp <= 0xDBFF) {
        uint32_t lo = 0;
        KW_RETURN_IF(len - *i < 6 || text[*i] != '\\' || text[*i + 1] != 'u' || kw_json_hex4(text + *i + 2, &lo) < 0 ||
                         lo < 0xDC00 || lo > 0xDFFF,
                     KW_E_UTF8, "lone high surrogate \\u%04X", cp);
        *i += 6;
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
    }
    char *p = out + *o;
    if (cp < 0x80) {
        *p++ = (char)cp;
    } else if (cp < 0x800) {
        *p++ = (char)(0xC0 | cp >> 6);
        *p++ = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *p++ = (char)(0xE0 | cp >> 12);
        *p++ = (char)(0x80 | (cp >> 6 & 0x3F));
        *p++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *p++ = (char)(0xF0 | cp >> 18);
        *p++ = (char)(0x80 | (cp >> 12 & 0x3F));
        *p++ = (char)(0x80 | (cp >> 6 & 0x3F));
        *p++ = (char)(0x80 | (cp & 0x3F));
    }
    *o = (size_t)(p - out);
    return 0;
}

int kw_json_decode_string(const char *text, size_t len, char **out, size_t *out_len) {
    KW_RETURN_IF(!out || !out_len || (len && !text), KW_E_INVALID_ARG, "kw_json_decode_string: NULL argument");
    size_t i = 0, o = 0;
    while (i < len && kw_json_is_space(text[i]))
        ++i;
    KW_RETURN_IF(i == len || text[i] != '"', KW_E_PARSE, "expected a JSON string");
    ++i;
    char *s = malloc(len + 1); /* decoding never makes the text longer */
    KW_RETURN_IF(!s, KW_E_NOMEM, "out of memory decoding a %zu-byte JSON string", len);
    int rc = 0;
    for (;;) {
        KW_CHECK_IF(i >= len, KW_E_PARSE, "unterminated JSON string");
        const unsigned char c = (unsigned char)text[i++];
        if (c == '"') break;
        KW_CHECK_IF(c < 0x20, KW_E_PARSE, "raw control character 0x%02x in a JSON string", c);
        if (c == '\\')
            KW_CHECK(kw_json_decode_escape(text, len, &i, s, &o));
        else
            s[o++] = (char)c;
    }
    while (i < len && kw_json_is_space(text[i]))
        ++i;
    KW_CHECK_IF(i != len, KW_E_PARSE, "trailing characters after the JSON string");
    s[o] = '\0';
    *out = s;
    *out_len = o;
    s = NULL;
out:
    free(s);
    return rc;
}
