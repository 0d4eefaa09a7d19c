/* bench_loadgen.c: `kvwire bench loadgen` measures how many requests per second kvload itself can drive, so that it
 * never limits what it measures. The server is kvload's stub receiverd (loadgen/kw_load_stub.h) on a thread of this
 * process, over loopback HTTP; the stub does almost nothing per request, so the rates are those of the client (and of
 * the stub and the kernel sharing the machine with it: a lower bound of kvload's ceiling). Variants, each the median of
 * --rounds rounds of --requests requests:
 *   - baseline: bare libcurl multi, --concurrency requests in flight, the same request body, responses discarded
 *     (no parsing, no records): the transport ceiling of this machine measured by the same harness;
 *   - kvload closed loop (kw_load_run, the full path: request bodies, response parsing, one JSONL record per request
 *     written and flushed, the summary with bootstrap intervals), whole responses and streamed (SSE) ones;
 *   - kvload open loop at --rate requests/s (Poisson): the throughput achieved and the p99 lateness of sends.
 * For each: requests/s as kvload's summary measures it (request_throughput over the measured phase), requests/s over
 * the wall clock of the whole run (files and summary included), and the client thread's CPU time per request.
 */
#include "kw_benches.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <curl/curl.h>

#include "bench/bench_median.h"
#include "common/kw_file.h"
#include "common/kw_json.h"
#include "common/kw_status.h"
#include "common/kw_time.h"
#include "loadgen/kw_load_run.h"
#include "loadgen/kw_load_stub.h"
#include "tools/kw_cli.h"

const char kw_bench_loadgen_summary[] =
    "kvload's own request rate against a stub receiverd on loopback, vs bare libcurl";

static void kw__bench_loadgen_usage(FILE *out) {
    fprintf(out,
            "usage: kvwire bench loadgen [--requests N] [--concurrency C] [--rounds R] [--rate X] [--out DIR]\n"
            "Drives the stub receiverd (in this process, loopback) with kvload's closed loop (whole and streamed\n"
            "responses) and open loop (--rate req/s, Poisson), against bare libcurl multi with the same requests;\n"
            "N requests per variant (20000), C in flight (16), medians of R rounds (3), open loop at 1000 req/s.\n"
            "Run folders go to a temporary folder (or --out DIR, kept).\n");
}

/* CPU time of the calling thread, seconds. */
static double kw__bl_thread_cpu(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_THREAD, &ru) != 0) return 0;
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
           1e-6 * (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

static size_t kw__bl_discard(char *p, size_t s, size_t n, void *u) {
    (void)p;
    (void)u;
    return s * n;
}

/* The baseline: bare libcurl multi, c in flight, n POSTs of body, responses discarded. */
static int kw__bl_curl(const char *url, const char *body, size_t n, size_t c, double *rate, double *cpu_us) {
    CURLM *m = curl_multi_init();
    CURL **e = calloc(c, sizeof(*e));
    struct curl_slist *hdr = curl_slist_append(NULL, "Content-Type: application/json");
    hdr = curl_slist_append(hdr, "Expect:");
    int rc = 0;
    if (!m || !e || !hdr) rc = KW_E_NOMEM;
    size_t started = 0, done = 0, failed = 0;
    const double cpu0 = kw__bl_thread_cpu();
    const uint64_t t0 = kw_time_now_ns();
    for (size_t i = 0; rc == 0 && i < c && started < n; ++i, ++started) {
        e[i] = curl_easy_init();
        curl_easy_setopt(e[i], CURLOPT_URL, url);
        curl_easy_setopt(e[i], CURLOPT_HTTPHEADER, hdr);
        curl_easy_setopt(e[i], CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(e[i], CURLOPT_WRITEFUNCTION, kw__bl_discard);
        curl_easy_setopt(e[i], CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e[i], CURLOPT_TCP_NODELAY, 1L);
        curl_multi_add_handle(m, e[i]);
    }
    while (rc == 0 && done < n) {
        int running = 0, left = 0;
        curl_multi_perform(m, &running);
        CURLMsg *msg;
        int any = 0;
        while ((msg = curl_multi_info_read(m, &left))) {
            if (msg->msg != CURLMSG_DONE) continue;
            any = 1;
            long status = 0;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &status);
            failed += msg->data.result != CURLE_OK || status != 200;
            done++;
            CURL *h = msg->easy_handle;
            curl_multi_remove_handle(m, h);
            if (started < n) {
                started++;
                curl_multi_add_handle(m, h); /* the same request again, on the kept connection */
            }
        }
        if (!any) curl_multi_poll(m, NULL, 0, 100, NULL);
    }
    const double secs = kw_time_seconds(t0, kw_time_now_ns());
    *cpu_us = 1e6 * (kw__bl_thread_cpu() - cpu0) / (double)n;
    *rate = (double)n / secs;
    for (size_t i = 0; e && i < c; ++i)
        if (e[i]) {
            curl_multi_remove_handle(m, e[i]);
            curl_easy_cleanup(e[i]);
        }
    free(e);
    curl_slist_free_all(hdr);
    if (m) curl_multi_cleanup(m);
    if (rc == 0 && failed) rc = kw_error_set(KW_E_INTERNAL, "%zu baseline requests failed", failed);
    return rc;
}

typedef struct kw__bl_result {
    double rate;      /* kvload's request_throughput */
    double wall_rate; /* requests / wall time of kw_load_run */
    double cpu_us;    /* client thread CPU per request */
    double lag_p99;   /* open loop: p99 send lateness, ms */
} kw__bl_result;

static int kw__bl_run(const char *url, const char *dataset, const char *out, size_t n, size_t c, int stream,
                      double rate, kw__bl_result *res) {
    kw_load_config cfg;
    kw_load_config_default(&cfg);
    char num[32];
    int rc = 0;
    KW_CHECK(kw_load_config_set(&cfg, "url", url));
    KW_CHECK(kw_load_config_set(&cfg, "dataset_path", dataset));
    KW_CHECK(kw_load_config_set(&cfg, "out", out));
    KW_CHECK(kw_load_config_set(&cfg, "progress", "never"));
    KW_CHECK(kw_load_config_set(&cfg, "max_tokens", "8"));
    KW_CHECK(kw_load_config_set(&cfg, "bootstrap_resamples", "200"));
    KW_CHECK(kw_load_config_set(&cfg, "stream", stream ? "true" : "false"));
    snprintf(num, sizeof(num), "%zu", n);
    KW_CHECK(kw_load_config_set(&cfg, "num_prompts", num));
    snprintf(num, sizeof(num), "%zu", c);
    KW_CHECK(kw_load_config_set(&cfg, "max_concurrency", isinf(rate) ? num : "0"));
    if (!isinf(rate)) {
        snprintf(num, sizeof(num), "%g", rate);
        KW_CHECK(kw_load_config_set(&cfg, "request_rate", num));
    }
    const double cpu0 = kw__bl_thread_cpu();
    const uint64_t t0 = kw_time_now_ns();
    KW_CHECK(kw_load_run(&cfg, NULL, NULL));
    const double secs = kw_time_seconds(t0, kw_time_now_ns());
    res->cpu_us = 1e6 * (kw__bl_thread_cpu() - cpu0) / (double)n;
    res->wall_rate = (double)n / secs;
    char *path = kw_path_join(out, "summary.json");
    cJSON *s = NULL;
    KW_CHECK_IF(!path, KW_E_NOMEM, "out of memory");
    rc = kw_json_load_file(path, (size_t)64 << 20, &s);
    free(path);
    KW_CHECK(rc);
    const cJSON *failed = cJSON_GetObjectItemCaseSensitive(s, "failed");
    const cJSON *tp = cJSON_GetObjectItemCaseSensitive(s, "request_throughput");
    const cJSON *lag = cJSON_GetObjectItemCaseSensitive(s, "p99_send_lag_ms");
    if (!cJSON_IsNumber(failed) || failed->valuedouble != 0 || !cJSON_IsNumber(tp)) {
        cJSON_Delete(s);
        KW_CHECK_IF(1, KW_E_INTERNAL, "the run in %s had failures", out);
    }
    res->rate = tp->valuedouble;
    res->lag_p99 = cJSON_IsNumber(lag) ? lag->valuedouble : NAN;
    cJSON_Delete(s);
out:
    kw_load_config_free(&cfg);
    return rc;
}

int kw_bench_loadgen(int argc, char **argv) {
    int64_t requests = 20000, concurrency = 16, rounds = 3;
    double rate = 1000;
    const char *out_dir = NULL;
    const kw_cli_option opts[] = {
        KW_CLI_INT("--requests", &requests, 100, 10000000),
        KW_CLI_INT("--concurrency", &concurrency, 1, 1024),
        KW_CLI_INT("--rounds", &rounds, 1, 100),
        KW_CLI_REAL("--rate", &rate, 1, 1e6),
        KW_CLI_STR("--out", &out_dir),
    };
    const int st = KW_CLI_PARSE("kvwire bench loadgen", argc, argv, opts, kw__bench_loadgen_usage);
    if (st != KW_CLI_RUN) return st;
    signal(SIGPIPE, SIG_IGN);
    char tmp[] = "/tmp/kvwire_bench_loadgen_XXXXXX";
    const char *dir = out_dir;
    if (!dir) {
        if (!mkdtemp(tmp)) {
            fprintf(stderr, "kvwire bench loadgen: cannot make a temporary folder\n");
            return 1;
        }
        dir = tmp;
    } else {
        kw_cli_make_parents(out_dir);
        kw_path_mkdir(out_dir);
    }
    int rc = 0;
    kw_load_stub_thread *stub = NULL;
    const size_t R = (size_t)rounds, N = (size_t)requests, C = (size_t)concurrency;
    double *v = calloc(R * 11, sizeof(*v)); /* per round: base rate, base cpu, then 3 x (rate, wall, cpu), lag */
    char url[64], dataset[512], run_dir[512], chat_url[96];
    KW_CHECK_IF(!v, KW_E_NOMEM, "out of memory");
    /* 64 distinct prompts, cycled. */
    snprintf(dataset, sizeof(dataset), "%s/prompts.jsonl", dir);
    {
        char text[64 * 96];
        size_t len = 0;
        for (int i = 0; i < 64; ++i)
            len += (size_t)snprintf(text + len, sizeof(text) - len,
                                    "{\"id\": \"p%d\", \"prompt\": \"Benchmark prompt number %d: say something.\"}\n",
                                    i, i);
        KW_CHECK(kw_file_write_all(dataset, text, len));
    }
    kw_load_stub_config sc;
    kw_load_stub_config_default(&sc);
    KW_CHECK(kw_load_stub_spawn(&sc, &stub));
    snprintf(url, sizeof(url), "http://127.0.0.1:%u", (unsigned)kw_load_stub_thread_port(stub));
    snprintf(chat_url, sizeof(chat_url), "%s/v1/chat/completions", url);
    const char *body = "{\"messages\":[{\"role\":\"user\",\"content\":\"Benchmark prompt number 7: say something.\"}],"
                       "\"max_tokens\":8,\"stream\":false}";
    printf("kvwire bench loadgen: %zu requests per variant, %zu in flight (closed loop), %zu rounds; stub receiverd on "
           "a thread of this process, loopback HTTP, %ld CPUs online\n",
           N, C, R, sysconf(_SC_NPROCESSORS_ONLN));
    for (size_t r = 0; r < R; ++r) {
        double *x = v + r * 11;
        KW_CHECK(kw__bl_curl(chat_url, body, N, C, &x[0], &x[1]));
        kw__bl_result res;
        snprintf(run_dir, sizeof(run_dir), "%s/closed_whole", dir);
        KW_CHECK(kw__bl_run(url, dataset, run_dir, N, C, 0, INFINITY, &res));
        x[2] = res.rate, x[3] = res.wall_rate, x[4] = res.cpu_us;
        snprintf(run_dir, sizeof(run_dir), "%s/closed_stream", dir);
        KW_CHECK(kw__bl_run(url, dataset, run_dir, N, C, 1, INFINITY, &res));
        x[5] = res.rate, x[6] = res.wall_rate, x[7] = res.cpu_us;
        snprintf(run_dir, sizeof(run_dir), "%s/open", dir);
        KW_CHECK(kw__bl_run(url, dataset, run_dir, N, C, 0, rate, &res));
        x[8] = res.rate, x[9] = res.cpu_us, x[10] = res.lag_p99;
        printf("round %zu: baseline %.0f req/s; kvload whole %.0f, streamed %.0f, open loop %.0f of %.0f req/s\n",
               r + 1, x[0], x[2], x[5], x[8], rate);
        fflush(stdout);
    }
    double col[100];
    double med[11];
    for (int k = 0; k < 11; ++k) {
        for (size_t r = 0; r < R; ++r)
            col[r] = v[r * 11 + (size_t)k];
        med[k] = kw_bench_median(col, R);
    }
    printf("\nmedians over %zu rounds          req/s (kvload's summary)  req/s (wall, with files)  client CPU us/req\n",
           R);
    printf("bare libcurl multi (baseline)    %24.0f  %24s  %17.1f\n", med[0], "-", med[1]);
    printf("kvload closed, whole responses   %24.0f  %24.0f  %17.1f\n", med[2], med[3], med[4]);
    printf("kvload closed, streamed (SSE)    %24.0f  %24.0f  %17.1f\n", med[5], med[6], med[7]);
    char label[64];
    snprintf(label, sizeof(label), "kvload open loop at %.0f req/s", rate);
    printf("%-32s %24.0f  %24s  %17.1f   (send lag p99 %.2f ms)\n", label, med[8], "-", med[9], med[10]);
    printf("kvload whole responses reach %.0f%% of the bare libcurl rate\n", 100.0 * med[2] / med[0]);
out:
    kw_load_stub_thread_stop(stub);
    free(v);
    if (rc < 0) fprintf(stderr, "kvwire bench loadgen: %s (%s)\n", kw_error_detail(), kw_status_name(rc));
    if (!out_dir) {
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp);
        if (system(cmd) != 0) fprintf(stderr, "kvwire bench loadgen: could not remove %s\n", tmp);
    }
    return rc < 0 ? 1 : 0;
}
