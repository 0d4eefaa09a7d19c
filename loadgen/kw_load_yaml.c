/* kw_load_yaml.c: libyaml's document API, node by node, into cJSON with core-schema scalar typing. */
#include "loadgen/kw_load_yaml.h"

#include "common/kw_file.h"
#include "common/kw_status.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <yaml.h>

static int kw_load_yaml_match_int(const char *s, double *out) {
    const char *p = s;
    int neg = 0;
    if (*p == '+' || *p == '-') neg = *p++ == '-';
    int base = 10;
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'o') && !neg && p == s) {
        base = p[1] == 'x' ? 16 : 8;
        p += 2;
    }
    if (!*p) return 0;
    for (const char *q = p; *q; ++q) {
        const int ok = base == 16  ? isxdigit((unsigned char)*q)
                       : base == 8 ? (*q >= '0' && *q <= '7')
                                   : isdigit((unsigned char)*q);
        if (!ok) return 0;
    }
    errno = 0;
    const double v = (double)strtoull(p, NULL, base);
    if (errno) return 0;
    *out = neg ? -v : v;
    return 1;
}

static int kw_load_yaml_match_float(const char *s, double *out) {
    const char *p = s;
    if (*p == '+' || *p == '-') ++p;
    if (!strcmp(p, ".inf") || !strcmp(p, ".Inf") || !strcmp(p, ".INF")) {
        *out = s[0] == '-' ? -INFINITY : INFINITY;
        return 1;
    }
    if (!strcmp(s, ".nan") || !strcmp(s, ".NaN") || !strcmp(s, ".NAN")) {
        *out = NAN;
        return 1;
    }
    /* [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)? */
    int digits = 0;
    while (isdigit((unsigned char)*p))
        ++p, ++digits;
    if (*p == '.') {
        ++p;
        while (isdigit((unsigned char)*p))
            ++p, ++digits;
    }
    if (!digits) return 0;
    if (*p == 'e' || *p == 'E') {
        ++p;
        if (*p == '+' || *p == '-') ++p;
        if (!isdigit((unsigned char)*p)) return 0;
        while (isdigit((unsigned char)*p))
            ++p;
    }
    if (*p) return 0;
    *out = strtod(s, NULL);
    return 1;
}

static cJSON *kw_load_yaml_scalar(const yaml_node_t *n) {
    const char *s = (const char *)n->data.scalar.value;
    if (n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return cJSON_CreateString(s);
    if (!*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL"))
        return cJSON_CreateNull();
    if (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "TRUE")) return cJSON_CreateTrue();
    if (!strcmp(s, "false") || !strcmp(s, "False") || !strcmp(s, "FALSE")) return cJSON_CreateFalse();
    double v = 0;
    if (kw_load_yaml_match_int(s, &v) || kw_load_yaml_match_float(s, &v)) {
        if (!isfinite(v)) return cJSON_CreateString(isnan(v) ? "nan" : v > 0 ? "inf" : "-inf");
        return cJSON_CreateNumber(v);
    }
    return cJSON_CreateString(s);
}

static int kw_load_yaml_node(yaml_document_t *doc, const yaml_node_t *n, int depth, cJSON **out) {
    KW_RETURN_IF(depth > 64, KW_E_PARSE, "YAML nested deeper than 64 levels (line %zu)", n->start_mark.line + 1);
    cJSON *v = NULL;
    switch (n->type) {
    case YAML_SCALAR_NODE:
        v = kw_load_yaml_scalar(n);
        KW_RETURN_IF(!v, KW_E_NOMEM, "out of memory");
        break;
    case YAML_SEQUENCE_NODE:
        v = cJSON_CreateArray();
        KW_RETURN_IF(!v, KW_E_NOMEM, "out of memory");
        for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top; ++it) {
            cJSON *c = NULL;
            const int rc = kw_load_yaml_node(doc, yaml_document_get_node(doc, *it), depth + 1, &c);
            if (rc < 0 || !cJSON_AddItemToArray(v, c)) {
                cJSON_Delete(c);
                cJSON_Delete(v);
                return rc < 0 ? rc : kw_error_set(KW_E_NOMEM, "out of memory");
            }
        }
        break;
    case YAML_MAPPING_NODE:
        v = cJSON_CreateObject();
        KW_RETURN_IF(!v, KW_E_NOMEM, "out of memory");
        for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; ++p) {
            const yaml_node_t *k = yaml_document_get_node(doc, p->key);
            if (!k || k->type != YAML_SCALAR_NODE) {
                cJSON_Delete(v);
                KW_FAIL(KW_E_PARSE, "a mapping key that is not a scalar (line %zu)", n->start_mark.line + 1);
            }
            const char *key = (const char *)k->data.scalar.value;
            if (cJSON_GetObjectItemCaseSensitive(v, key)) {
                cJSON_Delete(v);
                KW_FAIL(KW_E_PARSE, "duplicate key \"%s\" (line %zu)", key, k->start_mark.line + 1);
            }
            cJSON *c = NULL;
            const int rc = kw_load_yaml_node(doc, yaml_document_get_node(doc, p->value), depth + 1, &c);
            if (rc < 0 || !cJSON_AddItemToObject(v, key, c)) {
                cJSON_Delete(c);
                cJSON_Delete(v);
                return rc < 0 ? rc : kw_error_set(KW_E_NOMEM, "out of memory");
            }
        }
        break;
    default:
        KW_FAIL(KW_E_PARSE, "an empty YAML node");
    }
    *out = v;
    return 0;
}

int kw_load_yaml_parse(const char *text, size_t len, cJSON **out) {
    yaml_parser_t parser;
    yaml_document_t doc;
    KW_RETURN_IF(!yaml_parser_initialize(&parser), KW_E_NOMEM, "out of memory");
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, &doc)) {
        const int rc = kw_error_set(KW_E_PARSE, "YAML: %s at line %zu, column %zu",
                                    parser.problem ? parser.problem : "syntax error", parser.problem_mark.line + 1,
                                    parser.problem_mark.column + 1);
        yaml_parser_delete(&parser);
        return rc;
    }
    int rc = 0;
    const yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root)
        rc = kw_error_set(KW_E_PARSE, "YAML: the document is empty");
    else
        rc = kw_load_yaml_node(&doc, root, 0, out);
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    return rc;
}

int kw_load_yaml_load_file(const char *path, cJSON **out) {
    char *text = NULL;
    size_t size = 0;
    KW_FORWARD(kw_file_read_all(path, (size_t)16 << 20, &text, &size));
    const int rc = kw_load_yaml_parse(text, size, out);
    free(text);
    if (rc < 0) return kw_error_set(rc, "%s: %s", path, kw_error_detail());
    return 0;
}
