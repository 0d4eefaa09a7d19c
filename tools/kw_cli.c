/* kw_cli.c: the option parser, the stdin line loop, mkdir -p and the benchmarks' model clean-up of kw_cli.h. */
#include "tools/kw_cli.h"

#include "common/kw_file.h"
#include "common/kw_status.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

static const kw_cli_option *kw_cli_find(const kw_cli_option *opts, size_t n_opts, const char *name) {
    for (size_t k = 0; k < n_opts; ++k)
        if (opts[k].kind != KW_CLI_ARG && strcmp(opts[k].name, name) == 0) return &opts[k];
    return NULL;
}

/* The n-th (from 0) positional entry of the table, or NULL. */
static const kw_cli_option *kw_cli_positional(const kw_cli_option *opts, size_t n_opts, size_t n) {
    for (size_t k = 0; k < n_opts; ++k)
        if (opts[k].kind == KW_CLI_ARG && n-- == 0) return &opts[k];
    return NULL;
}

/* "a, b or c" */
static void kw_cli_print_choices(FILE *f, const char *const *choices) {
    for (size_t k = 0; choices[k]; ++k)
        fprintf(f, "%s%s", k == 0 ? "" : choices[k + 1] ? ", " : " or ", choices[k]);
}

/* Stores the value v of option o. Returns 0, or -1 after saying what is wrong with v. */
static int kw_cli_store(const char *prog, const kw_cli_option *o, const char *v) {
    switch (o->kind) {
    case KW_CLI_STRING:
        *(const char **)o->out = v;
        return 0;
    case KW_CLI_INT: {
        char *end = NULL;
        errno = 0;
        const long long x = strtoll(v, &end, 10);
        if (errno || !end || *end || end == v || x < o->min || x > o->max) {
            fprintf(stderr, "%s: %s wants an integer in [%lld, %lld], got '%s'\n", prog, o->name, (long long)o->min,
                    (long long)o->max, v);
            return -1;
        }
        *(int64_t *)o->out = (int64_t)x;
        return 0;
    }
    case KW_CLI_CHOICE:
        for (int k = 0; o->choices[k]; ++k)
            if (strcmp(v, o->choices[k]) == 0) {
                *(int *)o->out = k;
                return 0;
            }
        fprintf(stderr, "%s: %s must be ", prog, o->name);
        kw_cli_print_choices(stderr, o->choices);
        fprintf(stderr, ", got '%s'\n", v);
        return -1;
    case KW_CLI_REAL: {
        char *end = NULL;
        errno = 0;
        const double x = strtod(v, &end);
        if (errno || !end || *end || end == v || !isfinite(x) || !(x >= o->real_min && x <= o->real_max)) {
            fprintf(stderr, "%s: %s wants a number in [%g, %g], got '%s'\n", prog, o->name, o->real_min, o->real_max,
                    v);
            return -1;
        }
        *(double *)o->out = x;
        return 0;
    }
    case KW_CLI_LIST:
        ((const char **)o->out)[(*o->count)++] = v; /* room checked by the caller */
        return 0;
    case KW_CLI_ARG:
    case KW_CLI_FLAG:
        break;
    }
    return -1; /* flags and positionals take no value: not reached */
}

int kw_cli_parse(const char *prog, int argc, char **argv, const kw_cli_option *opts, size_t n_opts,
                 void (*usage)(FILE *out)) {
    size_t n_positional = 0;
    for (int i = 1; i < argc; ++i) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        }
        const kw_cli_option *o = kw_cli_find(opts, n_opts, a);
        if (!o && a[0] != '-') {
            const kw_cli_option *p = kw_cli_positional(opts, n_opts, n_positional++);
            if (!p) {
                fprintf(stderr, "%s: unexpected argument %s\n\n", prog, a);
                usage(stderr);
                return 2;
            }
            *(const char **)p->out = a;
            continue;
        }
        if (!o) {
            fprintf(stderr, "%s: unknown option %s\n\n", prog, a);
            usage(stderr);
            return 2;
        }
        if (o->kind == KW_CLI_FLAG) {
            *(int *)o->out = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "%s: %s needs a value\n\n", prog, a);
            usage(stderr);
            return 2;
        }
        if (o->kind == KW_CLI_LIST && *o->count >= o->max) {
            fprintf(stderr, "%s: %s may be given at most %lld times\n\n", prog, a, (long long)o->max);
            usage(stderr);
            return 2;
        }
        if (kw_cli_store(prog, o, argv[++i]) < 0) return 2;
    }
    int missing = 0;
    for (size_t k = 0; k < n_opts; ++k)
        if (opts[k].required &&
            (opts[k].kind == KW_CLI_LIST ? *opts[k].count == 0 : *(const char *const *)opts[k].out == NULL)) {
            fprintf(stderr, "%s: %s is required\n", prog, opts[k].name);
            missing = 1;
        }
    if (missing) {
        fprintf(stderr, "\n");
        usage(stderr);
        return 2;
    }
    return KW_CLI_RUN;
}

int kw_cli_each_line(const char *prog, FILE *in, kw_cli_line_fn fn, void *user) {
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    ssize_t got;
    int status = 0;
    while ((got = getline(&line, &cap, in)) >= 0) {
        ++lineno;
        size_t len = (size_t)got;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            --len;
        const int rc = fn(user, line, len);
        if (rc < 0) {
            fflush(stdout);
            fprintf(stderr, "%s: stdin line %zu: %s (%s)\n", prog, lineno, kw_error_detail(), kw_status_name(rc));
            status = 1;
            break;
        }
    }
    if (status == 0 && ferror(in)) {
        fprintf(stderr, "%s: reading stdin failed after line %zu: %s\n", prog, lineno, strerror(errno));
        status = 1;
    }
    free(line);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        if (status == 0) fprintf(stderr, "%s: writing stdout failed\n", prog);
        status = 1;
    }
    return status;
}

int kw_cli_cache_layers(const char *const *args, int n, char *buf, size_t cap) {
    KW_RETURN_IF(cap == 0, KW_E_INVALID_ARG, "--cache-layer: no room");
    buf[0] = '\0';
    size_t used = 0;
    for (int i = 0; i < n; ++i) {
        const size_t len = strlen(args[i]);
        KW_RETURN_IF(len + 2 > cap - used, KW_E_INVALID_ARG, "--cache-layer \"%s\" is too long", args[i]);
        snprintf(buf + used, cap - used, "%s%s", i ? "," : "", args[i]);
        used += len + (i ? 1 : 0);
    }
    return 0;
}

void kw_cli_make_parents(const char *path) {
    char *p = strdup(path);
    if (!p) return;
    for (char *s = p + 1; *s; ++s) {
        if (*s != '/') continue;
        *s = '\0';
        mkdir(p, 0755);
        *s = '/';
    }
    free(p);
}

void kw_cli_remove_generated_model(const char *dir) {
    const char *files[] = {"config.json", "generation_config.json", "model.safetensors"};
    for (size_t i = 0; i < 3; ++i) {
        char *p = kw_path_join(dir, files[i]);
        if (p) remove(p);
        free(p);
    }
    rmdir(dir);
}
