/* kw_cfg.c: the configuration engine (see kw_cfg.h): YAML through libyaml's document loader, values through one
 * setter per type, help and dump from the same table. */
#include "common/kw_cfg.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "common/kw_file.h"
#include "common/kw_status.h"

#define KW__CFG_MAX_FILE_BYTES (1u << 20)
#define KW__CFG_MAX_DEPTH      16
#define KW__CFG_MAX_NODES      100000 /* nodes visited while walking a document (aliases count each time) */
#define KW__CFG_MAX_NAME       256

// ---------------------------------------------------------------------------------------------------------------
// Keys and values

static char **kw__cfg_str(void *obj, const kw_cfg_key *k) {
    return (char **)((char *)obj + k->offset);
}

static int32_t *kw__cfg_count(void *obj, const kw_cfg_key *k) {
    return (int32_t *)((char *)obj + k->count_offset);
}

static void *kw__cfg_item(void *obj, const kw_cfg_key *k, size_t i) {
    return (char *)obj + k->offset + i * k->elem_size;
}

static const kw_cfg_key *kw__cfg_find(const kw_cfg_key *keys, size_t n, const char *name, size_t len) {
    for (size_t i = 0; i < n; ++i)
        if (strlen(keys[i].name) == len && strncmp(keys[i].name, name, len) == 0) return &keys[i];
    return NULL;
}

static int kw__cfg_parse_bool(const char *v, int *out) {
    static const char *const yes[] = {"true", "yes", "on", "1"}, *const no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < 4; ++i) {
        if (strcasecmp(v, yes[i]) == 0) return *out = 1, 0;
        if (strcasecmp(v, no[i]) == 0) return *out = 0, 0;
    }
    return -1;
}

/* The value of a path read from a file in base_dir. *out is malloc'ed. */
static int kw__cfg_resolve(const char *value, const char *base_dir, char **out) {
    if (value[0] == '\0' || value[0] == '/' || base_dir == NULL || base_dir[0] == '\0')
        *out = strdup(value);
    else
        *out = kw_path_join(base_dir, value);
    KW_RETURN_IF(*out == NULL, KW_E_NOMEM, "config: out of memory");
    return 0;
}

static int kw__cfg_defaults_keys(const kw_cfg_key *keys, size_t n, void *obj);

/* Sets one scalar key of a record. */
static int kw__cfg_set_value(const kw_cfg_key *k, void *obj, const char *full, const char *value,
                             const char *base_dir) {
    switch (k->type) {
    case KW_CFG_STRING:
    case KW_CFG_PATH: {
        char *v = NULL;
        if (k->type == KW_CFG_PATH)
            KW_FORWARD(kw__cfg_resolve(value, base_dir, &v));
        else
            v = strdup(value);
        KW_RETURN_IF(v == NULL, KW_E_NOMEM, "config: out of memory");
        free(*kw__cfg_str(obj, k));
        *kw__cfg_str(obj, k) = v;
        return 0;
    }
    case KW_CFG_INT: {
        char *end = NULL;
        errno = 0;
        const long long x = strtoll(value, &end, 0);
        KW_RETURN_IF(value[0] == '\0' || *end != '\0' || errno, KW_E_PARSE, "config: %s: '%s' is not an integer", full,
                     value);
        KW_RETURN_IF(x < k->min || x > k->max, KW_E_LIMIT, "config: %s: %lld is outside [%lld, %lld]", full, x,
                     (long long)k->min, (long long)k->max);
        *(int64_t *)((char *)obj + k->offset) = x;
        return 0;
    }
    case KW_CFG_DOUBLE: {
        char *end = NULL;
        errno = 0;
        const double x = strtod(value, &end);
        KW_RETURN_IF(value[0] == '\0' || *end != '\0' || errno || !isfinite(x), KW_E_PARSE,
                     "config: %s: '%s' is not a number", full, value);
        KW_RETURN_IF(x < k->dmin || x > k->dmax, KW_E_LIMIT, "config: %s: %g is outside [%g, %g]", full, x, k->dmin,
                     k->dmax);
        *(double *)((char *)obj + k->offset) = x;
        return 0;
    }
    case KW_CFG_BOOL: {
        int b = 0;
        KW_RETURN_IF(kw__cfg_parse_bool(value, &b) < 0, KW_E_PARSE, "config: %s: '%s' is not true or false", full,
                     value);
        *(int *)((char *)obj + k->offset) = b;
        return 0;
    }
    case KW_CFG_ENUM:
        for (int i = 0; k->choices[i]; ++i)
            if (strcmp(value, k->choices[i]) == 0) {
                *(int *)((char *)obj + k->offset) = i;
                return 0;
            }
        KW_FAIL(KW_E_PARSE, "config: %s: '%s' is not one of the choices (--help lists them)", full, value);
    case KW_CFG_LIST:
        KW_FAIL(KW_E_PARSE, "config: %s is a list: set its elements as %s.N.key", full, full);
    }
    KW_FAIL(KW_E_INTERNAL, "config: %s has an unknown type", full);
}

/* Element i of list k, created (with its defaults, and those before it) if it does not exist yet. */
static int kw__cfg_element(const kw_cfg_key *k, void *obj, size_t i, const char *full, void **out) {
    int32_t *count = kw__cfg_count(obj, k);
    KW_RETURN_IF(i >= k->max_items, KW_E_LIMIT, "config: %s: at most %zu elements", full, k->max_items);
    while ((size_t)*count <= i) {
        KW_FORWARD(kw__cfg_defaults_keys(k->sub, k->n_sub, kw__cfg_item(obj, k, (size_t)*count)));
        ++*count;
    }
    *out = kw__cfg_item(obj, k, i);
    return 0;
}

static int kw__cfg_defaults_keys(const kw_cfg_key *keys, size_t n, void *obj) {
    for (size_t i = 0; i < n; ++i) {
        const kw_cfg_key *k = &keys[i];
        if (k->type == KW_CFG_LIST) {
            *kw__cfg_count(obj, k) = 0;
        } else if (k->def) {
            KW_FORWARD(kw__cfg_set_value(k, obj, k->name, k->def, NULL));
        } else if (k->type == KW_CFG_STRING || k->type == KW_CFG_PATH) {
            *kw__cfg_str(obj, k) = NULL;
        }
    }
    return 0;
}

int kw_cfg_defaults(const kw_cfg_table *t, void *obj) {
    KW_RETURN_IF(t == NULL || obj == NULL, KW_E_INVALID_ARG, "config: NULL argument");
    return kw__cfg_defaults_keys(t->keys, t->n_keys, obj);
}

int kw_cfg_set(const kw_cfg_table *t, void *obj, const char *name, const char *value, const char *base_dir) {
    KW_RETURN_IF(t == NULL || obj == NULL || name == NULL || value == NULL, KW_E_INVALID_ARG, "config: NULL argument");
    /* a list element: LIST.N.key */
    for (size_t i = 0; i < t->n_keys; ++i) {
        const kw_cfg_key *k = &t->keys[i];
        const size_t len = strlen(k->name);
        if (k->type != KW_CFG_LIST || strncmp(name, k->name, len) != 0 || name[len] != '.') continue;
        const char *p = name + len + 1;
        char *end = NULL;
        errno = 0;
        const unsigned long idx = strtoul(p, &end, 10);
        KW_RETURN_IF(p[0] < '0' || p[0] > '9' || errno || *end != '.', KW_E_NOT_FOUND,
                     "config: %s: a list element is %s.N.key", name, k->name);
        const kw_cfg_key *sub = kw__cfg_find(k->sub, k->n_sub, end + 1, strlen(end + 1));
        KW_RETURN_IF(sub == NULL, KW_E_NOT_FOUND, "config: unknown key %s (--help lists the keys)", name);
        void *elem = NULL;
        KW_FORWARD(kw__cfg_element(k, obj, idx, name, &elem));
        return kw__cfg_set_value(sub, elem, name, value, base_dir);
    }
    const kw_cfg_key *k = kw__cfg_find(t->keys, t->n_keys, name, strlen(name));
    KW_RETURN_IF(k == NULL, KW_E_NOT_FOUND, "config: unknown key %s (--help lists the keys)", name);
    return kw__cfg_set_value(k, obj, name, value, base_dir);
}

// ---------------------------------------------------------------------------------------------------------------
// YAML

typedef struct kw__cfg_walk {
    const kw_cfg_table *t;
    void *obj;
    yaml_document_t *doc;
    const char *base_dir;
    size_t visited;
} kw__cfg_walk;

static int kw__cfg_walk_node(kw__cfg_walk *w, yaml_node_t *node, char *name, size_t name_len, int depth);

/* A plain null, ~ or empty scalar: the key goes back to its default (unset for strings), as --print-config writes an
 * unset key. */
static bool kw__cfg_is_null(const yaml_node_t *n) {
    const char *v = (const char *)n->data.scalar.value;
    return n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
           (v[0] == '\0' || strcmp(v, "~") == 0 || strcmp(v, "null") == 0 || strcmp(v, "Null") == 0 ||
            strcmp(v, "NULL") == 0);
}

/* Values are C strings: a NUL inside one would silently cut it. */
static int kw__cfg_scalar_check(const yaml_node_t *n, const char *name) {
    KW_RETURN_IF(memchr(n->data.scalar.value, '\0', n->data.scalar.length) != NULL, KW_E_PARSE,
                 "config: line %zu: %s holds a NUL character", (size_t)n->start_mark.line + 1, name);
    return 0;
}

/* Resets a scalar key (or a list element's key, with elem) to its default. */
static int kw__cfg_unset_key(const kw_cfg_key *k, void *obj) {
    if (k->type == KW_CFG_STRING || k->type == KW_CFG_PATH) {
        free(*kw__cfg_str(obj, k));
        *kw__cfg_str(obj, k) = NULL;
    }
    if (k->def) return kw__cfg_set_value(k, obj, k->name, k->def, NULL);
    if (k->type == KW_CFG_INT) *(int64_t *)((char *)obj + k->offset) = 0;
    if (k->type == KW_CFG_DOUBLE) *(double *)((char *)obj + k->offset) = 0;
    if (k->type == KW_CFG_BOOL || k->type == KW_CFG_ENUM) *(int *)((char *)obj + k->offset) = 0;
    return 0;
}

static int kw__cfg_unset(const kw_cfg_table *t, void *obj, const char *name) {
    const kw_cfg_key *k = kw__cfg_find(t->keys, t->n_keys, name, strlen(name));
    KW_RETURN_IF(k == NULL, KW_E_NOT_FOUND, "config: unknown key %s (--help lists the keys)", name);
    KW_RETURN_IF(k->type == KW_CFG_LIST, KW_E_PARSE, "config: %s is a list", name);
    return kw__cfg_unset_key(k, obj);
}

static int kw__cfg_budget(kw__cfg_walk *w, int depth, const yaml_node_t *node) {
    KW_RETURN_IF(++w->visited > KW__CFG_MAX_NODES || depth > KW__CFG_MAX_DEPTH, KW_E_LIMIT,
                 "config: line %zu: the document nests too deep or holds too many nodes",
                 (size_t)node->start_mark.line + 1);
    return 0;
}

/* A sequence: the elements of a LIST key, each a mapping of the element's keys. */
static int kw__cfg_walk_list(kw__cfg_walk *w, yaml_node_t *node, char *name, size_t name_len, int depth) {
    const kw_cfg_key *k = kw__cfg_find(w->t->keys, w->t->n_keys, name, name_len);
    KW_RETURN_IF(k == NULL || k->type != KW_CFG_LIST, KW_E_PARSE, "config: line %zu: %s is not a list key",
                 (size_t)node->start_mark.line + 1, name);
    size_t i = 0;
    for (yaml_node_item_t *it = node->data.sequence.items.start; it < node->data.sequence.items.top; ++it, ++i) {
        yaml_node_t *item = yaml_document_get_node(w->doc, *it);
        KW_RETURN_IF(item == NULL, KW_E_PARSE, "config: %s: a broken element", name);
        KW_FORWARD(kw__cfg_budget(w, depth + 1, item));
        KW_RETURN_IF(item->type != YAML_MAPPING_NODE, KW_E_PARSE, "config: line %zu: %s[%zu] must be a mapping",
                     (size_t)item->start_mark.line + 1, name, i);
        void *elem = NULL;
        KW_FORWARD(kw__cfg_element(k, w->obj, i, name, &elem));
        for (yaml_node_pair_t *p = item->data.mapping.pairs.start; p < item->data.mapping.pairs.top; ++p) {
            yaml_node_t *key = yaml_document_get_node(w->doc, p->key);
            yaml_node_t *val = yaml_document_get_node(w->doc, p->value);
            KW_RETURN_IF(key == NULL || val == NULL || key->type != YAML_SCALAR_NODE || val->type != YAML_SCALAR_NODE,
                         KW_E_PARSE, "config: line %zu: the elements of %s hold plain key: value pairs",
                         (size_t)item->start_mark.line + 1, name);
            const char *kname = (const char *)key->data.scalar.value;
            const kw_cfg_key *sub = kw__cfg_find(k->sub, k->n_sub, kname, strlen(kname));
            KW_RETURN_IF(sub == NULL, KW_E_NOT_FOUND, "config: line %zu: unknown key %s.%zu.%s",
                         (size_t)key->start_mark.line + 1, name, i, kname);
            char full[KW__CFG_MAX_NAME];
            snprintf(full, sizeof full, "%s.%zu.%s", name, i, kname);
            KW_FORWARD(kw__cfg_scalar_check(val, full));
            if (kw__cfg_is_null(val))
                KW_FORWARD(kw__cfg_unset_key(sub, elem));
            else
                KW_FORWARD(kw__cfg_set_value(sub, elem, full, (const char *)val->data.scalar.value, w->base_dir));
        }
    }
    return 0;
}

static int kw__cfg_walk_node(kw__cfg_walk *w, yaml_node_t *node, char *name, size_t name_len, int depth) {
    KW_FORWARD(kw__cfg_budget(w, depth, node));
    switch (node->type) {
    case YAML_SCALAR_NODE:
        KW_RETURN_IF(name_len == 0, KW_E_PARSE, "config: the document is a scalar, not a mapping of keys");
        KW_FORWARD(kw__cfg_scalar_check(node, name));
        if (kw__cfg_is_null(node)) return kw__cfg_unset(w->t, w->obj, name);
        return kw_cfg_set(w->t, w->obj, name, (const char *)node->data.scalar.value, w->base_dir);
    case YAML_SEQUENCE_NODE:
        return kw__cfg_walk_list(w, node, name, name_len, depth);
    case YAML_MAPPING_NODE:
        for (yaml_node_pair_t *p = node->data.mapping.pairs.start; p < node->data.mapping.pairs.top; ++p) {
            yaml_node_t *key = yaml_document_get_node(w->doc, p->key);
            yaml_node_t *val = yaml_document_get_node(w->doc, p->value);
            KW_RETURN_IF(key == NULL || val == NULL || key->type != YAML_SCALAR_NODE, KW_E_PARSE,
                         "config: line %zu: keys must be plain scalars", (size_t)node->start_mark.line + 1);
            const size_t klen = key->data.scalar.length;
            KW_RETURN_IF(name_len + 1 + klen >= KW__CFG_MAX_NAME || memchr(key->data.scalar.value, '\0', klen),
                         KW_E_PARSE, "config: line %zu: a key that is too long or holds a NUL",
                         (size_t)key->start_mark.line + 1);
            size_t n = name_len;
            if (n) name[n++] = '.';
            memcpy(name + n, key->data.scalar.value, klen);
            name[n + klen] = '\0';
            const int rc = kw__cfg_walk_node(w, val, name, n + klen, depth + 1);
            name[name_len] = '\0';
            if (rc < 0) return rc;
        }
        return 0;
    default:
        KW_FAIL(KW_E_PARSE, "config: an empty node");
    }
}

int kw_cfg_load_string(const kw_cfg_table *t, void *obj, const char *data, size_t len, const char *base_dir) {
    KW_RETURN_IF(t == NULL || obj == NULL || (len > 0 && data == NULL), KW_E_INVALID_ARG, "config: NULL argument");
    KW_RETURN_IF(len > KW__CFG_MAX_FILE_BYTES, KW_E_LIMIT, "config: %zu bytes, at most %u", len,
                 KW__CFG_MAX_FILE_BYTES);
    yaml_parser_t parser;
    yaml_document_t doc;
    KW_RETURN_IF(!yaml_parser_initialize(&parser), KW_E_NOMEM, "config: out of memory");
    yaml_parser_set_input_string(&parser, (const unsigned char *)(len ? data : ""), len);
    int rc = 0;
    if (!yaml_parser_load(&parser, &doc)) {
        rc = kw_error_set(KW_E_PARSE, "config: YAML error at line %zu: %s", (size_t)parser.problem_mark.line + 1,
                          parser.problem ? parser.problem : "unknown");
        yaml_parser_delete(&parser);
        return rc;
    }
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (root != NULL) { /* an empty document sets nothing */
        char name[KW__CFG_MAX_NAME] = "";
        kw__cfg_walk w = {t, obj, &doc, base_dir, 0};
        rc = root->type == YAML_MAPPING_NODE
                 ? kw__cfg_walk_node(&w, root, name, 0, 0)
                 : kw_error_set(KW_E_PARSE, "config: the document must be a mapping of keys");
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    return rc;
}

int kw_cfg_load_file(const kw_cfg_table *t, void *obj, const char *path) {
    char *data = NULL, *dir = NULL;
    size_t len = 0;
    int rc;
    KW_CHECK(kw_file_read_all(path, KW__CFG_MAX_FILE_BYTES, &data, &len));
    dir = strdup(path);
    KW_CHECK_IF(dir == NULL, KW_E_NOMEM, "config: out of memory");
    char *slash = strrchr(dir, '/');
    if (slash == dir)
        slash[1] = '\0';
    else if (slash)
        *slash = '\0';
    else
        strcpy(dir, ".");
    rc = kw_cfg_load_string(t, obj, data, len, dir);
    if (rc < 0) rc = kw_error_set(rc, "%s: %s", path, kw_error_detail());
out:
    free(data);
    free(dir);
    return rc;
}

// ---------------------------------------------------------------------------------------------------------------
// Command line, help, dump

int kw_cfg_parse_args(const kw_cfg_table *t, void *obj, int argc, char **argv, enum kw_cfg_action *action) {
    KW_RETURN_IF(t == NULL || obj == NULL || action == NULL, KW_E_INVALID_ARG, "config: NULL argument");
    *action = KW_CFG_RUN;
    KW_FORWARD(kw_cfg_defaults(t, obj));
    for (int i = 1; i < argc; ++i) { /* the file first, wherever it is on the line */
        if (strcmp(argv[i], "--config") == 0) {
            KW_RETURN_IF(i + 1 >= argc, KW_E_PARSE, "--config needs a file");
            KW_FORWARD(kw_cfg_load_file(t, obj, argv[++i]));
        } else if (strncmp(argv[i], "--config=", 9) == 0) {
            KW_FORWARD(kw_cfg_load_file(t, obj, argv[i] + 9));
        }
    }
    for (int i = 1; i < argc; ++i) {
        const char *a = argv[i];
        if (strcmp(a, "--config") == 0) {
            ++i;
            continue;
        }
        if (strncmp(a, "--config=", 9) == 0) continue;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            *action = KW_CFG_HELP;
            continue;
        }
        if (strcmp(a, "--print-config") == 0) {
            *action = KW_CFG_PRINT;
            continue;
        }
        KW_RETURN_IF(strncmp(a, "--", 2) != 0 || a[2] == '\0', KW_E_PARSE,
                     "'%s' is not an option (--key=value, --config FILE, --help)", a);
        const char *eq = strchr(a, '=');
        char name[KW__CFG_MAX_NAME];
        const char *value;
        if (eq) {
            KW_RETURN_IF((size_t)(eq - a - 2) >= sizeof name, KW_E_PARSE, "option name too long: %s", a);
            memcpy(name, a + 2, (size_t)(eq - a - 2));
            name[eq - a - 2] = '\0';
            value = eq + 1;
        } else {
            KW_RETURN_IF(strlen(a + 2) >= sizeof name, KW_E_PARSE, "option name too long: %s", a);
            strcpy(name, a + 2);
            KW_RETURN_IF(i + 1 >= argc, KW_E_PARSE, "--%s needs a value", name);
            value = argv[++i];
        }
        KW_FORWARD(kw_cfg_set(t, obj, name, value, NULL));
    }
    return 0;
}

static const char *kw__cfg_type_name(const kw_cfg_key *k) {
    switch (k->type) {
    case KW_CFG_STRING:
        return "string";
    case KW_CFG_PATH:
        return "path";
    case KW_CFG_INT:
        return "integer";
    case KW_CFG_DOUBLE:
        return "number";
    case KW_CFG_BOOL:
        return "bool";
    case KW_CFG_ENUM:
        return "choice";
    case KW_CFG_LIST:
        return "list";
    }
    return "?";
}

static void kw__cfg_help_key(const kw_cfg_key *k, const char *prefix, FILE *out) {
    char name[KW__CFG_MAX_NAME];
    snprintf(name, sizeof name, "%s%s", prefix, k->name);
    fprintf(out, "  --%s (%s", name, kw__cfg_type_name(k));
    if (k->type == KW_CFG_INT) fprintf(out, " %lld..%lld", (long long)k->min, (long long)k->max);
    if (k->type == KW_CFG_DOUBLE) fprintf(out, " %g..%g", k->dmin, k->dmax);
    if (k->type == KW_CFG_ENUM) {
        fprintf(out, ":");
        for (int i = 0; k->choices[i]; ++i)
            fprintf(out, "%s%s", i ? "|" : " ", k->choices[i]);
    }
    fprintf(out, ", default %s)\n      %s%s\n", k->def ? (k->def[0] ? k->def : "\"\"") : "unset", k->help,
            (k->flags & KW_CFG_LIVE) ? " (SIGHUP reloads it)" : "");
}

void kw_cfg_print_help(const kw_cfg_table *t, FILE *out) {
    fprintf(out, "usage: %s [--config FILE] [--KEY=VALUE | --KEY VALUE]... [--print-config] [--help]\n%s\n\n",
            t->program, t->summary);
    fprintf(out, "Keys (YAML: nested mappings give the dotted names; a list is a sequence of mappings; on the command\n"
                 "line a list element's key is LIST.N.KEY; paths in a file are relative to the file's folder):\n");
    for (size_t i = 0; i < t->n_keys; ++i) {
        const kw_cfg_key *k = &t->keys[i];
        if (k->type != KW_CFG_LIST) {
            kw__cfg_help_key(k, "", out);
            continue;
        }
        fprintf(out, "  %s: a list of up to %zu elements (%s), each with:\n", k->name, k->max_items, k->help);
        char prefix[KW__CFG_MAX_NAME];
        snprintf(prefix, sizeof prefix, "%s.N.", k->name);
        for (size_t j = 0; j < k->n_sub; ++j)
            kw__cfg_help_key(&k->sub[j], prefix, out);
    }
}

/* Writes a YAML double-quoted scalar that loads back to the same bytes: quotes, backslashes, control characters and
 * the characters YAML does not take raw or reads as line breaks (DEL, C1 controls, U+0085, U+2028, U+2029, U+FEFF)
 * are escaped; other UTF-8 goes as it is. */
static void kw__cfg_print_string(const char *str, FILE *out) {
    const unsigned char *s = (const unsigned char *)str;
    fputc('"', out);
    while (*s) {
        const unsigned char c = *s;
        if (c == '"' || c == '\\') {
            fprintf(out, "\\%c", c);
            ++s;
        } else if (c < 0x20 || c == 0x7f) {
            fprintf(out, "\\x%02x", c);
            ++s;
        } else if (c < 0x80) {
            fputc(c, out);
            ++s;
        } else {
            /* one UTF-8 sequence (the value came from a YAML file or the command line: valid UTF-8 or raw bytes) */
            const int len = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
            uint32_t cp = len == 4 ? c & 7u : len == 3 ? c & 15u : len == 2 ? c & 31u : c;
            int k = 1;
            for (; k < len && (s[k] & 0xc0) == 0x80; ++k)
                cp = cp << 6 | (s[k] & 0x3fu);
            if (k < len || len == 1) { /* not UTF-8: the byte as a code point (YAML cannot carry raw bytes) */
                fprintf(out, "\\x%02x", c);
                ++s;
                continue;
            }
            if ((cp >= 0x80 && cp <= 0x9f) || cp == 0x2028 || cp == 0x2029 || cp == 0xfeff || cp == 0xfffe ||
                cp == 0xffff)
                fprintf(out, "\\u%04x", (unsigned)cp);
            else
                fwrite(s, 1, (size_t)len, out);
            s += len;
        }
    }
    fputc('"', out);
}

static void kw__cfg_print_value(const kw_cfg_key *k, const void *obj, FILE *out) {
    const char *p = (const char *)obj + k->offset;
    if (k->flags & KW_CFG_SECRET) {
        fprintf(out, "\"***\"");
        return;
    }
    switch (k->type) {
    case KW_CFG_STRING:
    case KW_CFG_PATH:
        if (*(char *const *)p)
            kw__cfg_print_string(*(char *const *)p, out);
        else
            fprintf(out, "null");
        break;
    case KW_CFG_INT:
        fprintf(out, "%lld", (long long)*(const int64_t *)p);
        break;
    case KW_CFG_DOUBLE:
        fprintf(out, "%.17g", *(const double *)p);
        break;
    case KW_CFG_BOOL:
        fprintf(out, "%s", *(const int *)p ? "true" : "false");
        break;
    case KW_CFG_ENUM:
        fprintf(out, "%s", k->choices[*(const int *)p]);
        break;
    case KW_CFG_LIST:
        break;
    }
}

void kw_cfg_print(const kw_cfg_table *t, const void *obj, FILE *out) {
    /* flat dotted keys are valid YAML too, and the loader reads them back (a key "a.b" nests like a: {b: ...}) */
    for (size_t i = 0; i < t->n_keys; ++i) {
        const kw_cfg_key *k = &t->keys[i];
        if (k->type != KW_CFG_LIST) {
            fprintf(out, "%s: ", k->name);
            kw__cfg_print_value(k, obj, out);
            fputc('\n', out);
            continue;
        }
        const int32_t n = *(const int32_t *)((const char *)obj + k->count_offset);
        fprintf(out, "%s:%s\n", k->name, n ? "" : " []");
        for (int32_t e = 0; e < n; ++e) {
            const void *elem = (const char *)obj + k->offset + (size_t)e * k->elem_size;
            for (size_t j = 0; j < k->n_sub; ++j) {
                fprintf(out, "  %s %s: ", j == 0 ? "-" : " ", k->sub[j].name);
                kw__cfg_print_value(&k->sub[j], elem, out);
                fputc('\n', out);
            }
        }
    }
}

static void kw__cfg_free_keys(const kw_cfg_key *keys, size_t n, void *obj) {
    for (size_t i = 0; i < n; ++i) {
        const kw_cfg_key *k = &keys[i];
        if (k->type == KW_CFG_STRING || k->type == KW_CFG_PATH) {
            free(*kw__cfg_str(obj, k));
            *kw__cfg_str(obj, k) = NULL;
        } else if (k->type == KW_CFG_LIST) {
            int32_t *count = kw__cfg_count(obj, k);
            for (int32_t e = 0; e < *count; ++e)
                kw__cfg_free_keys(k->sub, k->n_sub, kw__cfg_item(obj, k, (size_t)e));
            *count = 0;
        }
    }
}

void kw_cfg_free(const kw_cfg_table *t, void *obj) {
    if (t == NULL || obj == NULL) return;
    kw__cfg_free_keys(t->keys, t->n_keys, obj);
}

/* The error line on stderr: "program: detail" (" (status)" when status is not NULL). A daemon's own details already
 * start with "program: " (the same words as its log lines), so that prefix is not written twice. */
static void kw__cfg_print_error(const char *program, const char *status) {
    const char *detail = kw_error_detail();
    const size_t n = strlen(program);
    if (!(strncmp(detail, program, n) == 0 && detail[n] == ':' && detail[n + 1] == ' '))
        fprintf(stderr, "%s: ", program);
    fputs(detail, stderr);
    if (status) fprintf(stderr, " (%s)", status);
    fputc('\n', stderr);
}

int kw_cfg_main(const kw_cfg_table *t, void *obj, size_t obj_size, int argc, char **argv,
                int (*run)(void *obj, int argc, char **argv)) {
    memset(obj, 0, obj_size);
    enum kw_cfg_action action = KW_CFG_RUN;
    int rc = kw_cfg_parse_args(t, obj, argc, argv, &action);
    int exit_code = 0;
    if (rc < 0) {
        kw__cfg_print_error(t->program, NULL);
        exit_code = 2;
    } else if (action == KW_CFG_HELP) {
        kw_cfg_print_help(t, stdout);
    } else if (action == KW_CFG_PRINT) {
        kw_cfg_print(t, obj, stdout);
    } else if ((rc = run(obj, argc, argv)) < 0) {
        kw__cfg_print_error(t->program, kw_status_name(rc));
        exit_code = 1;
    }
    kw_cfg_free(t, obj);
    return exit_code;
}

// ---------------------------------------------------------------------------------------------------------------
// Reload

static bool kw__cfg_same_string(const char *a, const char *b) {
    return (a == NULL && b == NULL) || (a && b && strcmp(a, b) == 0);
}

/* Whether the value of k is the same in records a and b (a LIST: every element, every key). */
static bool kw__cfg_same_value(const kw_cfg_key *k, const void *a, const void *b) {
    const char *pa = (const char *)a + k->offset, *pb = (const char *)b + k->offset;
    switch (k->type) {
    case KW_CFG_STRING:
    case KW_CFG_PATH:
        return kw__cfg_same_string(*(char *const *)pa, *(char *const *)pb);
    case KW_CFG_INT:
        return *(const int64_t *)pa == *(const int64_t *)pb;
    case KW_CFG_DOUBLE:
        return *(const double *)pa == *(const double *)pb;
    case KW_CFG_BOOL:
    case KW_CFG_ENUM:
        return *(const int *)pa == *(const int *)pb;
    case KW_CFG_LIST: {
        const int32_t na = *(const int32_t *)((const char *)a + k->count_offset);
        const int32_t nb = *(const int32_t *)((const char *)b + k->count_offset);
        if (na != nb) return false;
        for (int32_t e = 0; e < na; ++e)
            for (size_t j = 0; j < k->n_sub; ++j)
                if (!kw__cfg_same_value(&k->sub[j], pa + (size_t)e * k->elem_size, pb + (size_t)e * k->elem_size))
                    return false;
        return true;
    }
    }
    return false;
}

int kw_cfg_reload(const kw_cfg_table *t, const void *running, void *next, size_t obj_size, int argc, char **argv,
                  char *refused, size_t cap, int *n_refused) {
    if (next) memset(next, 0, obj_size); /* the caller frees it whatever happens */
    KW_RETURN_IF(!t || !running || !next || !refused || cap == 0 || !n_refused, KW_E_INVALID_ARG,
                 "config reload: NULL argument");
    refused[0] = '\0';
    *n_refused = 0;
    enum kw_cfg_action action = KW_CFG_RUN;
    KW_FORWARD(kw_cfg_parse_args(t, next, argc, argv, &action));
    size_t used = 0;
    for (size_t i = 0; i < t->n_keys; ++i) {
        const kw_cfg_key *k = &t->keys[i];
        if ((k->flags & KW_CFG_LIVE) || kw__cfg_same_value(k, running, next)) continue;
        const int n = snprintf(refused + used, cap - used, "%s%s", *n_refused ? ", " : "", k->name);
        if (n > 0) used += (size_t)n < cap - used ? (size_t)n : cap - used - 1;
        ++*n_refused;
    }
    return 0;
}
