/* kvload_main.c: the `kvload` command line: run, sweep, sensitivity, report, summarize, stub, version. Options are
 * parsed here and handed to the library (loadgen/kw_load_*.h); the run options come from the one table of
 * kw_load_config.h, so the command line, sweep files and run.json use the same names. Exit statuses: 0 success, 1
 * failure, 2 usage error, 130 interrupted.
 */
#include "common/kw_file.h"
#include "common/kw_json.h"
#include "common/kw_log.h"
#include "common/kw_status.h"
#include "loadgen/kw_load_config.h"
#include "loadgen/kw_load_io.h"
#include "loadgen/kw_load_report.h"
#include "loadgen/kw_load_run.h"
#include "loadgen/kw_load_stub.h"
#include "loadgen/kw_load_summary.h"
#include "loadgen/kw_load_sensitivity.h"
#include "loadgen/kw_load_sweep.h"
#include "net/kw_net.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef KW_VERSION
#define KW_VERSION "unknown"
#endif

// ---------------------------------------------------------------------------------------------------------------
// Signals: the first SIGINT/SIGTERM stops sending (what is in flight finishes and the summary is written); the
// second one kills the process (the default action is restored).

static void kw_kvload_on_signal(int sig) {
    kw_load_run_interrupt();
    signal(sig, SIG_DFL);
}

static void kw_kvload_watch_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = kw_kvload_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

static int kw_kvload_fail(const char *what, int rc) {
    fprintf(stderr, "kvload %s: %s (%s)\n", what, kw_error_detail()[0] ? kw_error_detail() : kw_strerror(rc),
            kw_status_name(rc));
    return rc == KW_E_CANCELLED ? 130 : 1;
}

/* Parses "--key value" pairs into c (booleans may go without a value, or as --no-key). Other options are handed to
 * extra (return 1 if taken, consuming *i, 0 if unknown). @return 0, or 2 after a usage error (printed). */
static int kw_kvload_parse_config(const char *cmd, int argc, char **argv, kw_load_config *c,
                                  int (*extra)(int argc, char **argv, int *i, void *user), void *user) {
    for (int i = 1; i < argc; ++i) {
        const char *a = argv[i];
        if (extra) {
            const int taken = extra(argc, argv, &i, user);
            if (taken < 0) return 2;
            if (taken) continue;
        }
        if (strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "kvload %s: unexpected argument \"%s\" (see --help)\n", cmd, a);
            return 2;
        }
        const char *key = a + 2;
        const char *value = NULL;
        if (strncmp(key, "no-", 3) == 0 && kw_load_config_is_flag(key + 3)) {
            key += 3;
            value = "false";
        } else if (kw_load_config_is_flag(key)) {
            value = "true";
            static const char *const words[] = {"true", "false", "yes", "no", "on", "off", "1", "0"};
            for (size_t w = 0; i + 1 < argc && w < 8; ++w)
                if (strcmp(argv[i + 1], words[w]) == 0) value = argv[++i];
        } else {
            if (i + 1 >= argc) {
                fprintf(stderr, "kvload %s: %s needs a value\n", cmd, a);
                return 2;
            }
            value = argv[++i];
        }
        const int rc = kw_load_config_set(c, key, value);
        if (rc < 0) {
            fprintf(stderr, "kvload %s: %s\n", cmd, kw_error_detail());
            return 2;
        }
    }
    return 0;
}

static int kw_kvload_help_wanted(int argc, char **argv) {
    for (int i = 1; i < argc; ++i)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) return 1;
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// run

static int kw_kvload_run(int argc, char **argv, int main_argc, char **main_argv) {
    if (kw_kvload_help_wanted(argc, argv)) {
        printf("usage: kvload run --dataset-path FILE --out DIR [options]\n"
               "Replays a dataset against receiverd (docs/HTTP_API.md) with one policy and one load shape and writes\n"
               "a run folder: run.json, records.jsonl (one line per request), forced.jsonl (teacher forcing),\n"
               "summary.json. Closed loop by default (--max-concurrency N requests in flight); --request-rate R sends\n"
               "open loop with gamma gaps (--burstiness 1: Poisson). Options:\n");
        kw_load_config_help(stdout);
        return 0;
    }
    kw_load_config c;
    kw_load_config_default(&c);
    int status = kw_kvload_parse_config("run", argc, argv, &c, NULL, NULL);
    if (status == 0) {
        kw_kvload_watch_signals();
        kw_load_run_info info = {.version = KW_VERSION, .argc = main_argc, .argv = main_argv};
        const int rc = kw_load_run(&c, &info, stdout);
        if (rc < 0) status = kw_kvload_fail("run", rc);
    }
    kw_load_config_free(&c);
    return status;
}

// ---------------------------------------------------------------------------------------------------------------
// sweep

/* The command's own options (1: taken, 0: not one of them, -1: a usage error, printed). */
typedef int (*kw_kvload_extra_fn)(int argc, char **argv, int *i, void *user);

/* Splits a sweep-like command line: the command's own options go to extra, every other "--key value" pair is a run
 * option kept as text in *ov (applied after a file's options). ov's arrays are allocated here (argc entries) and
 * owned by the caller (kw_kvload_overrides_free). @return 0, 2 after a usage error (printed), or kw_kvload_fail's
 * status when out of memory. */
static int kw_kvload_collect_overrides(const char *cmd, int argc, char **argv, kw_kvload_extra_fn extra, void *user,
                                       kw_load_sweep_overrides *ov) {
    const char **keys = calloc((size_t)argc, sizeof(*keys)), **values = calloc((size_t)argc, sizeof(*values));
    *ov = (kw_load_sweep_overrides){.keys = keys, .values = values};
    if (!keys || !values) return kw_kvload_fail(cmd, KW_E_NOMEM);
    for (int i = 1; i < argc; ++i) {
        const int taken = extra(argc, argv, &i, user);
        if (taken < 0) return 2;
        if (taken) continue;
        if (strncmp(argv[i], "--", 2) != 0 || i + 1 >= argc) {
            fprintf(stderr, "kvload %s: unexpected argument \"%s\" (see --help)\n", cmd, argv[i]);
            return 2;
        }
        keys[ov->n] = argv[i] + 2;
        values[ov->n++] = argv[++i];
    }
    return 0;
}

static void kw_kvload_overrides_free(kw_load_sweep_overrides *ov) {
    free((void *)ov->keys);
    free((void *)ov->values);
    *ov = (kw_load_sweep_overrides){0};
}

typedef struct kw_kvload_sweep_args {
    const char *file, *out;
    int max_points;
    int dry_run;
} kw_kvload_sweep_args;

static int kw_kvload_sweep_extra(int argc, char **argv, int *i, void *user) {
    kw_kvload_sweep_args *a = user;
    const char *arg = argv[*i];
    if (arg[0] != '-') {
        if (a->file) return 0;
        a->file = arg;
        return 1;
    }
    if (strcmp(arg, "--max-points") == 0 && *i + 1 < argc) {
        char *end = NULL;
        const long v = strtol(argv[++*i], &end, 10);
        if (!end || *end || v < 0 || v > INT32_MAX) {
            fprintf(stderr, "kvload sweep: --max-points wants an integer >= 0, got \"%s\"\n", argv[*i]);
            return -1;
        }
        a->max_points = (int)v;
        return 1;
    }
    if (strcmp(arg, "--dry-run") == 0) {
        a->dry_run = 1;
        return 1;
    }
    if (strcmp(arg, "--out") == 0 && *i + 1 < argc) {
        a->out = argv[++*i];
        return 1;
    }
    return 0;
}

static int kw_kvload_sweep(int argc, char **argv, int main_argc, char **main_argv) {
    if (kw_kvload_help_wanted(argc, argv)) {
        printf("usage: kvload sweep FILE.yaml --out DIR [--dry-run] [--max-points N] [run options...]\n"
               "Runs every point of a sweep file (kw_load_sweep.h: base run options, a reference point, explicit\n"
               "points and grids of policies) into DIR/<point>/, the reference first. A point whose folder holds a\n"
               "complete summary.json for the same options is not run again, so an interrupted sweep resumes where it\n"
               "stopped. Run options given here override the file's. --dry-run lists the points; --max-points N stops\n"
               "after N points have run (for tests of resumption).\n");
        return 0;
    }
    kw_kvload_sweep_args a = {0};
    kw_load_sweep_overrides ov;
    int status = kw_kvload_collect_overrides("sweep", argc, argv, kw_kvload_sweep_extra, &a, &ov);
    if (status == 0 && (!a.file || !a.out)) {
        fprintf(stderr, "kvload sweep: a sweep file and --out DIR are required (see --help)\n");
        status = 2;
    }
    if (status == 0) {
        kw_kvload_watch_signals();
        kw_load_run_info info = {.version = KW_VERSION, .argc = main_argc, .argv = main_argv};
        kw_load_sweep_options so = {.out = a.out, .max_points = a.max_points, .dry_run = a.dry_run, .overrides = &ov};
        const int rc = kw_load_sweep_run(a.file, &so, &info, stdout);
        if (rc < 0) status = kw_kvload_fail("sweep", rc);
    }
    kw_kvload_overrides_free(&ov);
    return status;
}

// ---------------------------------------------------------------------------------------------------------------
// sensitivity

/* Takes the sensitivity options (the rest are run options); 1 if taken, -1 after a usage error (printed). */
typedef struct kw_kvload_sens_args {
    kw_load_sensitivity_options o;
    char *codecs_text; /* owned: the --codecs value, cut in place into o.codecs */
} kw_kvload_sens_args;

static int kw_kvload_sens_extra(int argc, char **argv, int *i, void *user) {
    kw_kvload_sens_args *args = user;
    kw_load_sensitivity_options *o = &args->o;
    char **codecs_text = &args->codecs_text;
    const char *arg = argv[*i];
    static const char *const keys[] = {"--out",         "--mode",  "--codecs",       "--base-codec",
                                       "--granularity", "--scale", "--target-bytes", "--target-fraction",
                                       "--metric",      NULL};
    int which = -1;
    for (int k = 0; keys[k]; ++k)
        if (strcmp(arg, keys[k]) == 0) which = k;
    if (which < 0) return 0;
    if (*i + 1 >= argc) {
        fprintf(stderr, "kvload sensitivity: %s needs a value\n", arg);
        return -1;
    }
    const char *v = argv[++*i];
    char *end = NULL;
    switch (which) {
    case 0:
        o->out = v;
        break;
    case 1:
        o->mode = v;
        break;
    case 2: {
        free(*codecs_text);
        *codecs_text = strdup(v);
        if (!*codecs_text) return -1;
        o->n_codecs = 0;
        for (char *save = NULL, *t = strtok_r(*codecs_text, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            if (o->n_codecs == KW_LOAD_SENS_MAX_CODECS) {
                fprintf(stderr, "kvload sensitivity: at most %d codecs\n", KW_LOAD_SENS_MAX_CODECS);
                return -1;
            }
            o->codecs[o->n_codecs++] = t;
        }
        break;
    }
    case 3:
        o->base_codec = v;
        break;
    case 4:
        o->granularity = v;
        break;
    case 5:
        o->scale = v;
        break;
    case 6:
        o->target_bytes = strtoll(v, &end, 10);
        if (!end || *end || o->target_bytes <= 0) {
            fprintf(stderr, "kvload sensitivity: --target-bytes wants a positive integer, got \"%s\"\n", v);
            return -1;
        }
        break;
    case 7:
        o->target_fraction = strtod(v, &end);
        if (!end || *end || !(o->target_fraction > 0 && o->target_fraction <= 1)) {
            fprintf(stderr, "kvload sensitivity: --target-fraction wants a number in (0, 1], got \"%s\"\n", v);
            return -1;
        }
        break;
    default:
        if (strcmp(v, "kl") == 0) {
            o->metric = KW_LOAD_SENS_KL;
        } else if (strcmp(v, "agreement") == 0) {
            o->metric = KW_LOAD_SENS_AGREEMENT;
        } else {
            fprintf(stderr, "kvload sensitivity: --metric is kl or agreement, got \"%s\"\n", v);
            return -1;
        }
    }
    return 1;
}

static int kw_kvload_sensitivity(int argc, char **argv, int main_argc, char **main_argv) {
    if (kw_kvload_help_wanted(argc, argv)) {
        printf("usage: kvload sensitivity --out DIR --mode kv_direct|c2c --codecs C1,C2,...\n"
               "                          (--target-bytes N | --target-fraction F) [--metric kl|agreement]\n"
               "                          [--base-codec bf16] [--granularity G] [--scale S] [run options...]\n"
               "Measures, for every sharer layer the transfer sends, the quality loss when only that layer travels\n"
               "at each candidate codec (mean KL and teacher-forced top-1 agreement against the reference, every\n"
               "layer at --base-codec) and the KVWire bytes per request, as one resumable sweep in DIR; then chooses\n"
               "the codec per layer that meets the target (mean KVWire bytes per request, or F times the\n"
               "reference's) with the least predicted loss (--metric, default kl), runs that schedule and reports\n"
               "measured against predicted. DIR/schedule.json is the kvwire.policy object to send; DIR/\n"
               "sensitivity.json holds the table. Run options are kvload run's (--url, --dataset-path, --max-tokens,\n"
               "...).\n");
        return 0;
    }
    kw_kvload_sens_args args = {.o = {.mode = "kv_direct"}};
    kw_load_sensitivity_options *o = &args.o;
    kw_load_sweep_overrides ov;
    int status = kw_kvload_collect_overrides("sensitivity", argc, argv, kw_kvload_sens_extra, &args, &ov);
    if (status == 0 && (!o->out || o->n_codecs == 0 || (o->target_bytes == 0 && o->target_fraction == 0))) {
        fprintf(stderr, "kvload sensitivity: --out, --codecs and a target are required (see --help)\n");
        status = 2;
    }
    if (status == 0) {
        kw_kvload_watch_signals();
        o->overrides = &ov;
        kw_load_run_info info = {.version = KW_VERSION, .argc = main_argc, .argv = main_argv};
        const int rc = kw_load_sensitivity_run(o, &info, stdout);
        if (rc < 0) status = kw_kvload_fail("sensitivity", rc);
    }
    free(args.codecs_text);
    kw_kvload_overrides_free(&ov);
    return status;
}

// ---------------------------------------------------------------------------------------------------------------
// report, summarize

static int kw_kvload_report(int argc, char **argv) {
    if (kw_kvload_help_wanted(argc, argv) || argc < 2) {
        printf("usage: kvload report RUN_OR_SWEEP_DIR... --out DIR [--x payload|blob|socket_in] "
               "[--metric auto|accuracy|answer_agreement|token_agreement|tf_top1_agreement|mean_kl] [--title TEXT]\n"
               "Writes DIR/report.csv (one row per run), DIR/quality_vs_bytes.svg (the metric against measured bytes\n"
               "per request, a line per policy family, receiver-only and text relay as reference points, 95%%\n"
               "bootstrap error bars), DIR/latency_stages.svg, DIR/budgets.csv (per family, the fewest bytes per\n"
               "request reaching 0.95 and 0.99 of the metric), DIR/regime.csv (the best run within each byte\n"
               "budget) and DIR/index.html (everything on one self-contained\n"
               "page). A folder holding run folders (a sweep) stands for all of them.\n");
        return argc < 2 ? 2 : 0;
    }
    kw_load_report_options o;
    kw_load_report_options_default(&o);
    const char **dirs = calloc((size_t)argc, sizeof(*dirs));
    if (!dirs) return kw_kvload_fail("report", KW_E_NOMEM);
    size_t n = 0;
    int status = 0;
    for (int i = 1; i < argc && status == 0; ++i) {
        const char *a = argv[i];
        if (a[0] != '-') {
            dirs[n++] = a;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "kvload report: %s needs a value\n", a);
            status = 2;
        } else if (strcmp(a, "--out") == 0) {
            o.out = argv[++i];
        } else if (strcmp(a, "--x") == 0) {
            o.x_bytes = argv[++i];
        } else if (strcmp(a, "--metric") == 0) {
            o.metric = argv[++i];
        } else if (strcmp(a, "--title") == 0) {
            o.title = argv[++i];
        } else {
            fprintf(stderr, "kvload report: unknown option %s\n", a);
            status = 2;
        }
    }
    if (status == 0 && (!o.out || n == 0)) {
        fprintf(stderr, "kvload report: run folders and --out DIR are required\n");
        status = 2;
    }
    if (status == 0) {
        const int rc = kw_load_report_write(dirs, n, &o, stdout);
        if (rc < 0) status = kw_kvload_fail("report", rc);
    }
    free(dirs);
    return status;
}

static int kw_kvload_summarize(int argc, char **argv) {
    if (argc != 2 || kw_kvload_help_wanted(argc, argv)) {
        printf("usage: kvload summarize RUN_DIR\n"
               "Recomputes RUN_DIR/summary.json from run.json, records.jsonl and forced.jsonl, and prints it.\n");
        return argc == 2 ? 0 : 2;
    }
    /* Keep the completeness the run recorded. */
    int complete = 1;
    char *path = kw_path_join(argv[1], "summary.json");
    cJSON *old = NULL;
    if (path && kw_path_is_file(path) && kw_json_load_file(path, (size_t)64 << 20, &old) == 0)
        complete = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(old, "complete"));
    cJSON_Delete(old);
    free(path);
    const int rc = kw_load_summary_write(argv[1], complete, stdout);
    return rc < 0 ? kw_kvload_fail("summarize", rc) : 0;
}

// ---------------------------------------------------------------------------------------------------------------
// stub

typedef struct kw_kvload_stub_state {
    kw_load_stub *stub;
    kw_net_signals *signals;
    int stopping;
} kw_kvload_stub_state;

static void kw_kvload_stub_done(void *user) {
    kw_kvload_stub_state *st = user;
    kw_net_signals_close(st->signals);
    st->signals = NULL;
}

static void kw_kvload_stub_signal(int signum, void *user) {
    (void)signum;
    kw_kvload_stub_state *st = user;
    if (st->stopping) return;
    st->stopping = 1;
    kw_load_stub_shutdown(st->stub, kw_kvload_stub_done, st);
}

static int kw_kvload_stub(int argc, char **argv) {
    if (kw_kvload_help_wanted(argc, argv)) {
        printf("usage: kvload stub [--host H] [--port N] [--port-file F] [--prefill-ms X] [--token-ms X]\n"
               "                   [--fail-every N] [--fail-status S] [--model-name NAME] [--refuse-token-ids 0|1]\n"
               "Serves receiverd's HTTP API with FAKE outputs, byte counts and timings (kw_load_stub.h), for kvload's\n"
               "tests, dry runs of sweep files and `kvwire bench loadgen`. --port-file gets the bound port once it\n"
               "listens. Stops on SIGINT/SIGTERM.\n");
        return 0;
    }
    kw_load_stub_config cfg;
    kw_load_stub_config_default(&cfg);
    const char *port_file = NULL;
    for (int i = 1; i < argc; ++i) {
        const char *a = argv[i];
        if (i + 1 >= argc) {
            fprintf(stderr, "kvload stub: %s needs a value\n", a);
            return 2;
        }
        const char *v = argv[++i];
        if (strcmp(a, "--host") == 0)
            cfg.host = v;
        else if (strcmp(a, "--port") == 0)
            cfg.port = (uint16_t)atoi(v);
        else if (strcmp(a, "--port-file") == 0)
            port_file = v;
        else if (strcmp(a, "--prefill-ms") == 0)
            cfg.prefill_ms = atof(v);
        else if (strcmp(a, "--token-ms") == 0)
            cfg.token_ms = atof(v);
        else if (strcmp(a, "--fail-every") == 0)
            cfg.fail_every = (uint32_t)atoi(v);
        else if (strcmp(a, "--fail-status") == 0)
            cfg.fail_status = atoi(v);
        else if (strcmp(a, "--model-name") == 0)
            cfg.model_name = v;
        else {
            fprintf(stderr, "kvload stub: unknown option %s\n", a);
            return 2;
        }
    }
    uv_loop_t loop;
    uv_loop_init(&loop);
    kw_kvload_stub_state st = {0};
    int rc = kw_load_stub_start(&loop, &cfg, &st.stub);
    if (rc == 0) rc = kw_net_signals_watch(&loop, kw_kvload_stub_signal, &st, &st.signals);
    if (rc == 0 && port_file) {
        char text[16];
        const int n = snprintf(text, sizeof(text), "%u\n", (unsigned)kw_load_stub_port(st.stub));
        rc = kw_file_write_all(port_file, text, (size_t)n);
    }
    if (rc == 0) {
        fprintf(stderr, "kvload stub: fake receiverd on %s:%u (outputs are not from any model)\n", cfg.host,
                (unsigned)kw_load_stub_port(st.stub));
        uv_run(&loop, UV_RUN_DEFAULT);
    } else if (st.stub) {
        kw_kvload_stub_signal(SIGTERM, &st);
        uv_run(&loop, UV_RUN_DEFAULT);
    }
    kw_load_stub_free(st.stub);
    uv_loop_close(&loop);
    return rc < 0 ? kw_kvload_fail("stub", rc) : 0;
}

// ---------------------------------------------------------------------------------------------------------------

static void kw_kvload_usage(FILE *out) {
    fprintf(out, "usage: kvload <command> [options]   (kvload <command> --help)\n"
                 "  run        replay a dataset against receiverd with one policy and load shape\n"
                 "  sweep      run a YAML grid of policies, one run folder per point, resumable\n"
                 "  sensitivity  per-layer codec sensitivity and the layer schedule for a byte target\n"
                 "  report     CSV, SVG plots and one HTML page from run folders\n"
                 "  summarize  recompute a run folder's summary.json from its records\n"
                 "  stub       a fake receiverd (fake outputs) for tests and dry runs\n"
                 "  version    print the version\n");
}

int main(int argc, char **argv) {
    kw_log_init_from_env();
    if (argc < 2) {
        kw_kvload_usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "run") == 0) return kw_kvload_run(argc - 1, argv + 1, argc, argv);
    if (strcmp(cmd, "sweep") == 0) return kw_kvload_sweep(argc - 1, argv + 1, argc, argv);
    if (strcmp(cmd, "sensitivity") == 0) return kw_kvload_sensitivity(argc - 1, argv + 1, argc, argv);
    if (strcmp(cmd, "report") == 0) return kw_kvload_report(argc - 1, argv + 1);
    if (strcmp(cmd, "summarize") == 0) return kw_kvload_summarize(argc - 1, argv + 1);
    if (strcmp(cmd, "stub") == 0) return kw_kvload_stub(argc - 1, argv + 1);
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("kvload %s\n", KW_VERSION);
        return 0;
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        kw_kvload_usage(stdout);
        return 0;
    }
    fprintf(stderr, "kvload: unknown command \"%s\"\n", cmd);
    kw_kvload_usage(stderr);
    return 2;
}
