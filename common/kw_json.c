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
    if (!(v == floor(v)) || fabs(v) > 9007199254740992.0) return KW_E_PARSE;
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
