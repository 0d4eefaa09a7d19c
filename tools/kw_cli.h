/* kw_cli.h: what the kvwire commands (tools/cmd_*.c, bench/bench_*.c) share: a table-driven option parser (strings,
 * range-checked integers and numbers, fixed choices, flags, repeatable options, positional arguments) with one wording
 * for every usage error, a loop over stdin lines for
 * the commands that read one JSON value per line, and mkdir -p for output folders.
 *
 * For the command-line program only: these functions print to stdout/stderr and return exit statuses (0 success,
 * 1 failure, 2 usage error), not kw_status codes. Nothing here belongs in a daemon.
 */
#ifndef KW_CLI_H
#define KW_CLI_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum kw_cli_kind {
    KW_CLI_STRING, /* --name VALUE; out is const char ** (pointing into argv) */
    KW_CLI_INT,    /* --name N; out is int64_t *, N decimal (strtoll) in [min, max] */
    KW_CLI_CHOICE, /* --name WORD; out is int *, the index of WORD in choices */
    KW_CLI_FLAG,   /* --name; out is int *, set to 1 */
    KW_CLI_REAL,   /* --name X; out is double *, X a finite number (strtod) in [real_min, real_max] */
    KW_CLI_LIST,   /* --name VALUE, repeatable; out is const char ** (an array of max entries), *count the values */
    KW_CLI_ARG,    /* a positional argument; out is const char **; name says what it is in messages ("BLOB") */
};

/* One option. out is written only when the option is given, so it holds the default beforehand (NULL for a required
 * string). */
typedef struct kw_cli_option {
    const char *name; /* "--out" */
    enum kw_cli_kind kind;
    void *out;
    int required;               /* STRING, ARG: *out must not be NULL after parsing; LIST: at least one value */
    int64_t min, max;           /* KW_CLI_INT: the accepted range, inclusive; KW_CLI_LIST: max = most values */
    const char *const *choices; /* KW_CLI_CHOICE: the accepted words, NULL-terminated */
    double real_min, real_max;  /* KW_CLI_REAL: the accepted range, inclusive */
    int *count;                 /* KW_CLI_LIST: values stored in out[0..*count) (start it at 0) */
} kw_cli_option;

/* Table entries. The conditional expressions make the compiler check the type of out. */
#define KW_CLI_STR(name_, out_)                                                                                        \
    { .name = (name_), .kind = KW_CLI_STRING, .out = (1 ? (out_) : (const char **)NULL) }
#define KW_CLI_STR_REQUIRED(name_, out_)                                                                               \
    { .name = (name_), .kind = KW_CLI_STRING, .out = (1 ? (out_) : (const char **)NULL), .required = 1 }
#define KW_CLI_INT(name_, out_, min_, max_)                                                                            \
    { .name = (name_), .kind = KW_CLI_INT, .out = (1 ? (out_) : (int64_t *)NULL), .min = (min_), .max = (max_) }
#define KW_CLI_CHOICE(name_, out_, choices_)                                                                           \
    { .name = (name_), .kind = KW_CLI_CHOICE, .out = (1 ? (out_) : (int *)NULL), .choices = (choices_) }
#define KW_CLI_FLAG(name_, out_)                                                                                       \
    { .name = (name_), .kind = KW_CLI_FLAG, .out = (1 ? (out_) : (int *)NULL) }
#define KW_CLI_REAL(name_, out_, min_, max_)                                                                           \
    {                                                                                                                  \
        .name = (name_), .kind = KW_CLI_REAL, .out = (1 ? (out_) : (double *)NULL), .real_min = (min_),                \
        .real_max = (max_)                                                                                             \
    }
/* array: const char *array[N]; count: int *, N values at most */
#define KW_CLI_LIST(name_, array_, count_, n_)                                                                         \
    {                                                                                                                  \
        .name = (name_), .kind = KW_CLI_LIST, .out = (1 ? (array_) : (const char **)NULL), .max = (n_),                \
        .count = (1 ? (count_) : (int *)NULL)                                                                          \
    }
#define KW_CLI_ARG(name_, out_)                                                                                        \
    { .name = (name_), .kind = KW_CLI_ARG, .out = (1 ? (out_) : (const char **)NULL) }
#define KW_CLI_ARG_REQUIRED(name_, out_)                                                                               \
    { .name = (name_), .kind = KW_CLI_ARG, .out = (1 ? (out_) : (const char **)NULL), .required = 1 }

/* kw_cli_parse's "go on" result (any other result is an exit status). */
#define KW_CLI_RUN (-1)

/* Parses argv[1..argc) (argv[0] is the command's name) against opts[0..n_opts). Options come in any order, a later one
 * overrides an earlier one (a KW_CLI_LIST one adds a value), and an option's value is the next argument whatever it
 * looks like. An argument that is no option name and does not start with '-' fills the next KW_CLI_ARG entry, in table
 * order. "--help" or "-h" prints usage(stdout). Errors go to stderr as "<prog>: <reason>": an unknown option, a
 * missing value, a missing required option or argument, a surplus argument and a list given too often are followed by
 * usage(stderr); a bad value (number out of range, word not among the choices) says what is wanted instead. prog is
 * how messages name the command ("kvwire gen-model").
 * @return KW_CLI_RUN when the command should run; otherwise the exit status to return at once: 0 after --help, 2 after
 * a usage error. */
int kw_cli_parse(const char *prog, int argc, char **argv, const kw_cli_option *opts, size_t n_opts,
                 void (*usage)(FILE *out));

/* kw_cli_parse over a table that is an array in scope (its length taken with sizeof). */
#define KW_CLI_PARSE(prog, argc, argv, opts, usage)                                                                    \
    kw_cli_parse((prog), (argc), (argv), (opts), sizeof(opts) / sizeof((opts)[0]), (usage))

/* Called for one line; line[0..len) has no line terminator and is not NUL-terminated. Returns 0 or a negative
 * kw_status with its reason in kw_error_detail(). */
typedef int (*kw_cli_line_fn)(void *user, const char *line, size_t len);

/* Calls fn on every line of in, in order, with the trailing CR and LF bytes cut off. The first failing line stops the
 * loop: stdout is flushed (what the lines before it wrote stays written) and "<prog>: stdin line N: <reason> (<status
 * name>)" goes to stderr. A read error on in and a failed write to stdout are reported as well.
 * @return the exit status: 0 when every line was handled and stdout flushed, 1 otherwise. */
int kw_cli_each_line(const char *prog, FILE *in, kw_cli_line_fn fn, void *user);

/* Most --cache-layer values of one command (kvwire generate, kvwire c2c). */
#define KW_CLI_MAX_CACHE_LAYERS 256

/* Joins the values of a repeatable --cache-layer ("0=int8", "-1:int4") into the one list kw_model_create_cache_layers
 * reads, "0=int8,-1:int4", in buf (cap bytes; a layer named twice is then refused there). KW_E_INVALID_ARG, naming the
 * value, when they do not fit. */
int kw_cli_cache_layers(const char *const *args, int n, char *buf, size_t cap);

/* Creates the missing parent folders of path (mkdir -p of its dirname, mode 0755). Failures are ignored: whatever then
 * writes path reports them with the path in its message. */
void kw_cli_make_parents(const char *path);

/* Removes a model folder the gen-model library wrote for a benchmark (config.json, generation_config.json,
 * model.safetensors, then the folder if that left it empty). Failures are ignored. */
void kw_cli_remove_generated_model(const char *dir);

#endif /* KW_CLI_H */
