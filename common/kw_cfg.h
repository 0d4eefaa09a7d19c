/* kw_cfg.h: the daemons' configuration engine: one static table of keys per daemon drives the YAML config file
 * (libyaml), the `--key=value` command-line overrides, `--help` (every key with its type, default and meaning) and
 * `--print-config` (the effective values as YAML). Lists of records (a daemon's models, sharers, fusers) are keys
 * of type LIST whose elements have their own table; on the command line an element's key is `list.N.key`.
 *
 * Values live in a caller-defined struct: each key writes the field at its offset. Strings and paths are malloc'ed
 * and owned by that struct until kw_cfg_free. A PATH read from a config file is taken relative to the file's folder
 * (an absolute path is kept); from the command line, as given (relative to the working directory).
 *
 * Not here: what the keys mean (sharer/kw_sharerd_config.c, receiver/kw_receiverd_config.c). Input is never trusted:
 * files are capped, YAML aliases and nesting are bounded, every value is parsed and range-checked, and errors name
 * the key (or the file and line) in kw_error_detail().
 */
#ifndef KW_CFG_H
#define KW_CFG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common/kw_log.h"

enum kw_cfg_type {
    KW_CFG_STRING = 1, /* char * (malloc'ed; NULL when unset) */
    KW_CFG_PATH = 2,   /* char *, resolved against the config file's folder */
    KW_CFG_INT = 3,    /* int64_t, within [min, max] */
    KW_CFG_DOUBLE = 4, /* double, within [dmin, dmax] */
    KW_CFG_BOOL = 5,   /* int: true/false, yes/no, on/off, 1/0 */
    KW_CFG_ENUM = 6,   /* int: the index of the value in choices */
    KW_CFG_LIST = 7,   /* an array of records: items (fixed array of max_items elements of elem_size bytes) at
                          offset, their count (int32_t) at count_offset */
};

enum kw_cfg_flags {
    KW_CFG_SECRET = 1, /* --print-config masks the value */
    KW_CFG_LIVE = 2,   /* a reload (kw_cfg_reload, a daemon's SIGHUP) may change it while the daemon runs */
};

typedef struct kw_cfg_key {
    const char *name; /* "http.port"; inside a list's table, relative to the element ("host") */
    enum kw_cfg_type type;
    size_t offset;
    const char *def;              /* the default as text; NULL: unset (strings NULL, numbers 0) */
    const char *help;             /* one line */
    int64_t min, max;             /* INT */
    double dmin, dmax;            /* DOUBLE */
    const char *const *choices;   /* ENUM: NULL-terminated */
    const struct kw_cfg_key *sub; /* LIST: the element's keys */
    size_t n_sub, elem_size, max_items, count_offset;
    unsigned flags;
} kw_cfg_key;

typedef struct kw_cfg_table {
    const char *program; /* "sharerd" */
    const char *summary; /* one paragraph for --help */
    const kw_cfg_key *keys;
    size_t n_keys;
} kw_cfg_table;

/* Sets every key of obj to its default (lists empty). obj must be zeroed or freed before. */
int kw_cfg_defaults(const kw_cfg_table *t, void *obj);

/* Sets one key from text: "http.port", or "sharers.0.host" for an element of a list (elements up to that index are
 * created with their defaults). base_dir: the folder PATH values are relative to (NULL: kept as given).
 * Errors: KW_E_NOT_FOUND (no such key), KW_E_PARSE (a value that does not parse), KW_E_LIMIT (out of range, too
 * many list elements), KW_E_NOMEM. */
int kw_cfg_set(const kw_cfg_table *t, void *obj, const char *name, const char *value, const char *base_dir);

/* Reads a YAML config (at most 1 MiB): a mapping whose nested mappings give dotted keys and whose sequences of
 * mappings fill LIST keys. data[0..len) may hold any bytes. Errors: KW_E_PARSE (YAML syntax or structure, with the
 * line), those of kw_cfg_set. */
int kw_cfg_load_string(const kw_cfg_table *t, void *obj, const char *data, size_t len, const char *base_dir);

/* kw_cfg_load_string on the file at path, PATH values relative to its folder. */
int kw_cfg_load_file(const kw_cfg_table *t, void *obj, const char *path);

/* What kw_cfg_parse_args found to do. */
enum kw_cfg_action { KW_CFG_RUN = 0, KW_CFG_HELP = 1, KW_CFG_PRINT = 2 };

/* Applies the defaults, then --config FILE (if given, wherever it is), then every --key=value or --key value in
 * order; --help and --print-config are reported in *action. argv[0] is the program. Errors as kw_cfg_set and
 * kw_cfg_load_file, or KW_E_PARSE for an argument that is not an option. */
int kw_cfg_parse_args(const kw_cfg_table *t, void *obj, int argc, char **argv, enum kw_cfg_action *action);

/* Writes the help: usage, summary and every key (list elements as list.N.key) with its type, default and help. */
void kw_cfg_print_help(const kw_cfg_table *t, FILE *out);

/* Writes the effective values as YAML (secrets masked). */
void kw_cfg_print(const kw_cfg_table *t, const void *obj, FILE *out);

/* A daemon's main() over its table: reads the command line into obj (zeroed here; a bad one: the reason on stderr and
 * exit status 2), answers --help and --print-config on stdout, or else calls run(obj, argc, argv) (the command line
 * is for kw_cfg_reload) and reports its failure on stderr as "program: reason (status)" (exit status 1). obj's
 * strings are freed before returning. */
int kw_cfg_main(const kw_cfg_table *t, void *obj, size_t obj_size, int argc, char **argv,
                int (*run)(void *obj, int argc, char **argv));

/* A reload: reads the same command line again into next (obj_size bytes, zeroed here; owned by the caller,
 * kw_cfg_free, also on failure), so the config file is read again and the same overrides win, then compares next
 * with running. Every key without KW_CFG_LIVE whose value differs (a LIST: its count or any key of any element) is
 * named in refused (comma-separated, cut to cap bytes, always terminated) and counted in *n_refused: the caller
 * keeps running with the old values of those keys and may apply the LIVE ones. @return 0, or the error of parsing
 * (the file is gone or no longer parses: the reason is in kw_error_detail()). */
int kw_cfg_reload(const kw_cfg_table *t, const void *running, void *next, size_t obj_size, int argc, char **argv,
                  char *refused, size_t cap, int *n_refused);

/* Frees the strings of obj (list elements included) and zeroes the counts. NULL obj is a no-op. */
void kw_cfg_free(const kw_cfg_table *t, void *obj);

/* The kw_cfg_key initializer of log.level (live: a reload applies it) for the int field log_level of config_type: an
 * index of kw_log_level_names, "info" by default. Both daemons declare it with this. */
#define KW_CFG_LOG_LEVEL_KEY(config_type)                                                                              \
    {                                                                                                                  \
        .name = "log.level", .type = KW_CFG_ENUM, .offset = offsetof(config_type, log_level), .def = "info",           \
        .choices = kw_log_level_names, .help = "the least severe level logged to stderr", .flags = KW_CFG_LIVE         \
    }

#endif /* KW_CFG_H */
