/* bench_model.c: `kvwire bench model`: prefill and decode speed of a model on the CPU backend.
 *
 * The model is --model (an HF folder or a GGUF file, e.g. the SmolLM2 or Gemma 3 ones `kvwire fetch-model` caches;
 * GGUF matmul weights of Q4_0..Q6_K types kept quantized, or every weight dequantized at load with --weights f32|bf16),
 * or else a real-shaped random model (Qwen3-0.6B shape
 * by default: 28 layers, hidden 1024, bf16, 151936 vocab; or Qwen2.5-0.5B, Llama-3.2-1B, Gemma 3 270M) written by the
 * gen-model library into a temporary folder (or --model-dir, reused when it already holds a model) and loaded like
 * any HF folder (norms zero-copy from the mmap, matmul weights packed once for the CPU kernels). Reported: prefill
 * tok/s, decode tok/s, peak RSS of the model phase, and the baseline from the same run: streaming-read memory
 * bandwidth with the same thread count (every pattern of bench_bandwidth.c over a buffer and over the model's own
 * weights, read before the load, after it and around every rep), which bounds decode at bandwidth / (bytes read per
 * token: the weights' packed bytes and the KV cache a step attends): reported against the best read of the run, and
 * per rep against the reads just before and after it. --profile adds a per-op time
 * breakdown (ops synchronized one by one). Not a correctness check: tests/model does that. */
#include "kw_benches.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/kw_file.h"
#include "common/kw_hugepage.h"
#include "common/kw_status.h"
#include "bench/bench_bandwidth.h"
#include "bench/bench_median.h"
#include "common/kw_time.h"
#include "kernels/kw_backend.h"
#include "model/kw_genmodel.h"
#include "model/kw_gguf.h"
#include "model/kw_model.h"
#include "tools/kw_cli.h"

const char kw_bench_model_summary[] = "prefill/decode tok/s of a model (a GGUF file, an HF folder or a real-shaped "
                                      "random one) vs the memory-bandwidth bound";

/* The CPU time this process has used (all its threads), in seconds. */
static double kw_process_cpu_seconds(void) {
    struct timespec ts;
    if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) != 0) return 0.0;
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void kw_bench_model_usage(FILE *f) {
    fprintf(
        f, "usage: kvwire bench model [--threads N] [--prompt-len N] [--decode N] [--arch qwen3|qwen2|llama|gemma3]\n"
           "                          [--model-dir DIR | --model PATH [--weights "
           "f32|bf16|quantized|quantized-int8|bf16-act]]\n"
           "                          [--reps N] [--bw-mib N]\n"
           "                          [--profile] [--interleave-shared] [--interleave-hugepages]\n"
           "  --model      an existing model: HF folder or GGUF file (GGUF --weights: quantized, the default,\n"
           "               keeps matmul weights of Q4_0..Q6_K types quantized, the same logits as f32; f32 or bf16\n"
           "               dequantize every weight at load; quantized-int8 also runs Q4_K, Q4_1, Q6_K, Q8_0 and Q5_0\n"
           "               weights with int8 activations, llama.cpp's way (Q8_0 and Q5_0 in 1.0625 bytes per weight\n"
           "               with their f16 scales, not 1.125), not the f32 logits; bf16-act: bf16 weights (also an HF\n"
           "               folder's) with bf16 activations, llama.cpp's AVX-512 BF16 way, not the exact logits);\n"
           "               otherwise a random model of the --arch shape\n"
           "               is generated\n"
           "  --arch       qwen3: Qwen3-0.6B shape (default); qwen2: Qwen2.5-0.5B; llama: Llama-3.2-1B;\n"
           "               gemma3: Gemma 3 270M (window 512, every sixth layer global)\n"
           "  --threads    CPU threads (default 2)\n"
           "  --prompt-len prefill tokens (default 128); --decode: decode steps (default 64)\n"
           "  --model-dir  where to write the model (kept, and reused if it exists); default: a temp dir\n"
           "  --reps       measured repetitions, best is reported (default 3); each is bracketed by bandwidth reads\n"
           "  --bw-mib     the bandwidth reads' buffer in MiB (default 512: make it far larger than the last-level "
           "cache)\n"
           "  --profile    also print per-op times of one prefill and one decode run\n"
           "  --interleave-shared  also time 2 x --decode steps alternating (A B B A) a layer's q/k/v and gate/up\n"
           "               as one shared matmul each (the default) and as separate matmuls\n"
           "  --interleave-hugepages  also load the model a second time with the other KW_HUGEPAGES setting (0: 4 KiB\n"
           "               pages for its weights and cache) and time 2 x --decode steps alternating (A B B A) the two\n"
           "               instances, checking that they pick the same tokens\n");
}

/* --interleave-hugepages: a second instance of the model at dir loaded with the other KW_HUGEPAGES setting than
 * `model` (loaded with the environment as it is), their steps alternated (A B B A), each from its own prefilled cache
 * of `capacity`. The backend's scratch is shared (it is sized by the first model). */
static int kw_bench_interleave_hugepages(kw_backend *be, const char *dir, const kw_model_options *mo, kw_model *model,
                                         kw_kvcache *cache, const int32_t *ids, int64_t prompt_len, int64_t n_decode,
                                         int64_t capacity) {
    int rc = 0;
    kw_model *m2 = NULL;   /* owned */
    kw_kvcache *c2 = NULL; /* owned */
    double *steps = NULL;  /* owned: 2 x n_decode step times, ms: [0, n) huge pages, [n, 2n) 4 KiB */
    double *ratios = NULL; /* owned: n_decode per-pair ratios 4 KiB / huge */
    const char *old = getenv("KW_HUGEPAGES");
    char *saved = old ? strdup(old) : NULL; /* owned */
    const long huge_kb0 = kw_hugepage_smaps_kb(KW_SMAPS_ANON_HUGE, NULL, 0),
               advised_kb0 = kw_hugepage_smaps_kb(KW_SMAPS_ADVISED, NULL, 0);
    const int first_huge = kw_hugepages_enabled(); /* the second instance gets the other setting */
    setenv("KW_HUGEPAGES", first_huge ? "0" : "1", 1);
    uint64_t t0 = kw_time_now_ns();
    rc = kw_model_load(be, dir, mo, &m2);
    const double load_ms = kw_time_ms(t0, kw_time_now_ns());
    if (rc == 0) rc = kw_model_create_cache(m2, capacity, KW_DTYPE_BF16, &c2);
    if (saved)
        setenv("KW_HUGEPAGES", saved, 1);
    else
        unsetenv("KW_HUGEPAGES");
    KW_CHECK(rc);
    const long huge_kb1 = kw_hugepage_smaps_kb(KW_SMAPS_ANON_HUGE, NULL, 0),
               advised_kb1 = kw_hugepage_smaps_kb(KW_SMAPS_ADVISED, NULL, 0);
    steps = calloc((size_t)n_decode * 2, sizeof *steps);
    ratios = calloc((size_t)n_decode, sizeof *ratios);
    KW_CHECK_IF(!steps || !ratios || (!saved && old), KW_E_NOMEM, "out of memory");
    kw_model *const ms[2] = {first_huge ? model : m2, first_huge ? m2 : model}; /* [0] huge pages, [1] 4 KiB */
    kw_kvcache *const cs[2] = {first_huge ? cache : c2, first_huge ? c2 : cache};
    int32_t next[2] = {0, 0};
    enum { PREFILLS = 4 };                                       /* each */
    double pre_ms[2] = {0, 0}, pre_pair[2], pre_ratio[PREFILLS]; /* pre_pair: this pair's two times */
    for (int i = 0; i < 2 * PREFILLS; ++i) { /* A B B A ...; the last two leave the caches ready for the steps */
        const int s = (i + i / 2) % 2;
        KW_CHECK(kw_kvcache_reset(cs[s]));
        const kw_forward_args a = {
            .ids = ids, .n = prompt_len, .mode = KW_LOGITS_LAST, .argmax = &next[s], .argmax_flags = 1};
        t0 = kw_time_now_ns();
        KW_CHECK(kw_model_forward(ms[s], cs[s], &a));
        pre_pair[s] = kw_time_ms(t0, kw_time_now_ns());
        pre_ms[s] += pre_pair[s];
        if (i % 2 == 1) pre_ratio[i / 2] = pre_pair[1] / pre_pair[0];
    }
    int64_t differ = next[0] != next[1];
    for (int64_t i = 0; i < 2 * n_decode; ++i) {
        const int s = (int)((i + i / 2) % 2);
        t0 = kw_time_now_ns();
        KW_CHECK(kw_model_decode_step(ms[s], cs[s], next[s], NULL, &next[s], KW_ARGMAX_ROUND_BF16));
        steps[s * n_decode + i / 2] = kw_time_ms(t0, kw_time_now_ns());
        if (i % 2 == 1) differ += next[0] != next[1]; /* both have taken i / 2 + 1 steps */
    }
    double sum[2] = {0, 0};
    for (int64_t i = 0; i < n_decode; ++i) {
        sum[0] += steps[i];
        sum[1] += steps[n_decode + i];
        ratios[i] = steps[n_decode + i] / steps[i];
    }
    const double med_ratio = kw_bench_median(ratios, (size_t)n_decode);
    const double med_huge = kw_bench_median(steps, (size_t)n_decode);
    const double med_4k = kw_bench_median(steps + n_decode, (size_t)n_decode);
    printf("huge pages: AnonHugePages %ld kB with the first instance (huge pages %s), %ld kB with both (the second, "
           "KW_HUGEPAGES=%d, loaded in %.1f ms)\n",
           huge_kb0, first_huge ? "on" : "off", huge_kb1, !first_huge, load_ms);
    printf("huge pages: advised %ld kB with the first instance, %ld kB with both\n", advised_kb0, advised_kb1);
    printf("prefill, interleaved: huge pages %.1f ms, 4 KiB pages %.1f ms (%d each), speed-up %.4f (total), %.4f "
           "(median of pairs)\n",
           pre_ms[0] / PREFILLS, pre_ms[1] / PREFILLS, PREFILLS, pre_ms[1] / pre_ms[0],
           kw_bench_median(pre_ratio, PREFILLS));
    printf(
        "decode, steps interleaved: huge pages %.3f ms/token (median %.3f), 4 KiB pages %.3f ms/token (median %.3f), "
        "speed-up %.4f (total), %.4f (median of step pairs) over %ld steps each; tokens %s\n",
        sum[0] / (double)n_decode, med_huge, sum[1] / (double)n_decode, med_4k, sum[1] / sum[0], med_ratio,
        (long)n_decode, differ ? "DIFFER" : "identical");
    KW_CHECK_IF(differ, KW_E_INTERNAL, "the two instances picked different tokens");
out:
    free(saved);
    free(steps);
    free(ratios);
    kw_kvcache_free(c2);
    kw_model_free(m2);
    return rc;
}

/* Resets the process's peak RSS (VmHWM) to its current RSS, so the bandwidth buffer freed before the model loads does
 * not count as the model's. 0, or -1 where /proc/self/clear_refs cannot be written (then the peak includes it). */
static int kw_bench_reset_peak_rss(void) {
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (!f) return -1;
    const int ok = fputs("5", f) >= 0;
    return fclose(f) == 0 && ok ? 0 : -1;
}

/* The mean bytes of KV cache one decode step reads, over n steps at positions first, first + 1, ...: every layer's
 * bf16 K and V rows of the positions the step attends (its own included; a sliding layer's window at most). With the
 * weights' bytes, what a decode step streams from memory. */
static double kw_bench_kv_bytes_per_token(const kw_model_config *cfg, int64_t first, int64_t n) {
    const double row = 2.0 * (double)cfg->n_kv_heads * (double)cfg->head_dim * 2.0; /* K and V, bf16 */
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i)
        for (int32_t l = 0; l < cfg->n_layers; ++l) {
            const int64_t window = kw_config_layer_window(cfg, l), seen = first + i + 1;
            sum += row * (double)(window > 0 && window < seen ? window : seen);
        }
    return sum / (double)n;
}

/* The bytes of last-level cache the threads may hold between them: cpu0's L3 as sysfs gives it, once per thread (two
 * virtual CPUs may sit on two dies of the host, each with its own L3), or 0 where that is not known. Not sysconf's
 * figure: in a KVM guest on an AMD EPYC it gives the host's whole L3 (384 MiB) where sysfs says 32 MiB. */
static double kw_bench_llc_bytes(int64_t threads) {
    FILE *f = fopen("/sys/devices/system/cpu/cpu0/cache/index3/size", "r");
    if (!f) return 0.0;
    long kib = 0;
    char unit = 0;
    const int got = fscanf(f, "%ld%c", &kib, &unit);
    fclose(f);
    return got == 2 && unit == 'K' && kib > 0 ? (double)kib * 1024.0 * (double)threads : 0.0;
}

/* One read around a rep: every pattern once over the buffer and over the weights, the best; bytes/s. */
static double kw_bench_bracket(kw_bench_bw *buffer, kw_bench_bw *weights) {
    const double a = kw_bench_bw_measure(buffer, 1, NULL), b = kw_bench_bw_measure(weights, 1, NULL);
    return (a > b ? a : b) * 1e9;
}

static void kw_bench_print_profile(const char *what, const double *ms, const int64_t *calls) {
    double total = 0;
    for (int op = 0; op < KW_OP_COUNT; ++op)
        total += ms[op];
    printf("  per-op time, %s (ops synchronized one by one; total %.1f ms):\n", what, total);
    for (int op = 0; op < KW_OP_COUNT; ++op) {
        if (!calls[op]) continue;
        printf("    %-10s %9.2f ms %5.1f%%  (%lld calls)\n", kw_op_name((enum kw_op)op), ms[op],
               total > 0 ? 100.0 * ms[op] / total : 0.0, (long long)calls[op]);
    }
}

int kw_bench_model(int argc, char **argv) {
    int64_t threads = 2, prompt_len = 128, n_decode = 64, reps = 3, bw_mib = 512;
    static const char *const archs[] = {"qwen3", "qwen2", "llama", "gemma3", NULL};
    static const char *const presets[] = {"qwen3-0.6b", "qwen2.5-0.5b", "llama-3.2-1b", "gemma-3-270m"};
    const char *model_dir = NULL, *model_path = NULL;
    int arch = 0, profile = 0, interleave = 0, interleave_hp = 0,
        weights = KW_MODEL_WEIGHT_MODE_QUANTIZED; /* weights: GGUF kept quantized by default */
    const kw_cli_option opts[] = {
        KW_CLI_INT("--threads", &threads, 1, 256),
        KW_CLI_INT("--prompt-len", &prompt_len, 1, 8192),
        KW_CLI_INT("--decode", &n_decode, 1, 8192),
        KW_CLI_INT("--reps", &reps, 1, 100),
        KW_CLI_INT("--bw-mib", &bw_mib, 1, 1 << 20),
        KW_CLI_CHOICE("--arch", &arch, archs),
        KW_CLI_STR("--model-dir", &model_dir),
        KW_CLI_FLAG("--profile", &profile),
        KW_CLI_FLAG("--interleave-shared", &interleave),
        KW_CLI_FLAG("--interleave-hugepages", &interleave_hp),
        KW_CLI_STR("--model", &model_path),
        KW_CLI_CHOICE("--weights", &weights, kw_model_weight_modes),
    };
    const int st = KW_CLI_PARSE("kvwire bench model", argc, argv, opts, kw_bench_model_usage);
    if (st != KW_CLI_RUN) return st;
    const char *preset = presets[arch];

    int rc = 0;
    kw_backend *be = NULL;
    kw_model *model = NULL;
    kw_kvcache *cache = NULL;
    int32_t *ids = NULL;
    kw_bench_bw *bracket = NULL; /* owned: the bandwidth reads around each rep */
    kw_bench_bw *wread = NULL;   /* owned: the same patterns over the model's own weights */
    double *brackets = NULL;     /* owned: reps + 1 reads, bytes/s */
    double *rep_ratios = NULL;   /* owned: each rep's decode against the better read around it */
    char tmpl[] = "/tmp/kw_bench_model_XXXXXX";
    const char *dir = model_dir;
    int temp = 0;
    const char *stage = "generate model";

    if (model_path) {
        KW_CHECK_IF(model_dir, KW_E_INVALID_ARG, "--model and --model-dir exclude each other");
        dir = model_path;
    } else if (!dir) {
        KW_CHECK_IF(!mkdtemp(tmpl), KW_E_IO, "mkdtemp: %s", strerror(errno));
        dir = tmpl;
        temp = 1;
    }
    char *cfg_path = kw_path_join(dir, "model.safetensors");
    KW_CHECK_IF(!cfg_path, KW_E_NOMEM, "out of memory");
    const int exists = model_path || kw_path_is_file(cfg_path);
    free(cfg_path);
    if (!exists) {
        kw_genmodel_options go = {.dtype = KW_DTYPE_BF16, .seed = 1};
        KW_CHECK(kw_genmodel_preset(preset, NULL, &go.cfg));
        const uint64_t t0 = kw_time_now_ns();
        KW_CHECK(kw_genmodel_write(&go, dir));
        fprintf(stderr, "wrote %s model to %s in %.1f s\n", preset, dir, kw_time_seconds(t0, kw_time_now_ns()));
    }

    stage = "bandwidth";
    printf("read patterns (the bound is the best of them):\n");
    double bw = kw_bench_read_bandwidth((int)threads, (size_t)bw_mib << 20, 3, stdout) * 1e9;
    KW_CHECK_IF(bw <= 0, KW_E_NOMEM, "no memory for the %lld MiB bandwidth buffer", (long long)bw_mib);
    const int rss_reset = kw_bench_reset_peak_rss();

    stage = "load";
    KW_CHECK(kw_backend_create_cpu((int)threads, &be));
    kw_model_options mo = {.max_batch = (int32_t)(prompt_len < 512 ? prompt_len : 512)};
    kw_model_options_set_weight_mode(&mo, weights);
    uint64_t t0 = kw_time_now_ns();
    KW_CHECK(kw_model_load(be, dir, &mo, &model));
    const double load_ms = kw_time_ms(t0, kw_time_now_ns());
    const kw_model_config *cfg = kw_model_get_config(model);
    ids = malloc((size_t)(prompt_len + n_decode) * sizeof *ids);
    KW_CHECK_IF(!ids, KW_E_NOMEM, "out of memory");
    for (int64_t i = 0; i < prompt_len; ++i)
        ids[i] = (int32_t)(((uint64_t)i * 2654435761u) % (uint64_t)cfg->vocab);
    const int64_t warm_steps = 4; /* the cache holds the warm-up's steps too when --decode is shorter */
    KW_CHECK(kw_model_create_cache(model, prompt_len + (n_decode > warm_steps ? n_decode : warm_steps) * 2 + 1,
                                   KW_DTYPE_BF16, &cache));

    /* warm-up: faults the mapped weights in and sizes the CPU backend's scratch */
    stage = "warm-up";
    int32_t next = 0;
    KW_CHECK(kw_model_prefill(model, cache, ids, prompt_len));
    for (int64_t i = 0; i < warm_steps; ++i)
        KW_CHECK(kw_model_decode_step(model, cache, next, NULL, &next, KW_ARGMAX_ROUND_BF16));

    /* the model phase's peak RSS, before the bracket buffer below exists */
    const double rss = (double)kw_time_peak_rss_bytes();

    /* the same read patterns over the weights themselves: the pages decode streams, mapped as they are (huge pages
     * or not, wherever the host backs them), so that no difference between the buffer's memory and the weights'
     * can put decode above its bound */
    stage = "weights' bandwidth";
    size_t n_spans = 0;
    const kw_model_span *spans = kw_model_weight_spans(model, &n_spans);
    KW_CHECK(kw_bench_bw_create_spans((int)threads, spans, n_spans, &wread));
    printf("read patterns over the model's weights (%zu tensors, %.1f MB read):\n", n_spans,
           (double)kw_bench_bw_bytes(wread) * 1e-6);
    const double bw_weights = kw_bench_bw_measure(wread, 3, stdout) * 1e9;
    const double bw_buffer = bw;
    if (bw_weights > bw) bw = bw_weights;

    /* The machine may be shared and its bandwidth may change from one second to the next: every rep is bracketed by
     * a bandwidth read just before and just after it (every pattern, one pass each, over the buffer and over the
     * weights), and its decode is also set against the better of those two. */
    stage = "measure";
    KW_CHECK(kw_bench_bw_create((int)threads, (size_t)bw_mib << 20, &bracket));
    brackets = calloc((size_t)reps + 1, sizeof *brackets);
    rep_ratios = calloc((size_t)reps, sizeof *rep_ratios);
    KW_CHECK_IF(!brackets || !rep_ratios, KW_E_NOMEM, "out of memory");
    const size_t weight_bytes = kw_model_weight_bytes_per_token(model);
    const double kv_bytes = kw_bench_kv_bytes_per_token(kw_model_get_config(model), prompt_len, n_decode);
    const double wbytes = (double)weight_bytes + kv_bytes; /* what a decode step streams */
    double best_prefill = 1e30, best_decode = 1e30, best_decode_cpu = 1e30;
    brackets[0] = kw_bench_bracket(bracket, wread);
    for (int64_t r = 0; r < reps; ++r) {
        KW_CHECK(kw_kvcache_reset(cache));
        const kw_forward_args a = {
            .ids = ids, .n = prompt_len, .mode = KW_LOGITS_LAST, .argmax = &next, .argmax_flags = 1};
        t0 = kw_time_now_ns();
        KW_CHECK(kw_model_forward(model, cache, &a));
        const double pre = kw_time_seconds(t0, kw_time_now_ns());
        t0 = kw_time_now_ns();
        const double cpu0 = kw_process_cpu_seconds();
        for (int64_t i = 0; i < n_decode; ++i)
            KW_CHECK(kw_model_decode_step(model, cache, next, NULL, &next, KW_ARGMAX_ROUND_BF16));
        const double dec = kw_time_seconds(t0, kw_time_now_ns()), dec_cpu = kw_process_cpu_seconds() - cpu0;
        if (dec_cpu < best_decode_cpu) best_decode_cpu = dec_cpu;
        brackets[r + 1] = kw_bench_bracket(bracket, wread);
        const double around = brackets[r] > brackets[r + 1] ? brackets[r] : brackets[r + 1];
        rep_ratios[r] = (double)n_decode / dec / (around / wbytes);
        if (pre < best_prefill) best_prefill = pre;
        if (dec < best_decode) best_decode = dec;
    }
    double bw_lo = brackets[0], bw_hi = brackets[0];
    for (int64_t r = 0; r <= reps; ++r) {
        bw_lo = brackets[r] < bw_lo ? brackets[r] : bw_lo;
        bw_hi = brackets[r] > bw_hi ? brackets[r] : bw_hi;
    }
    if (bw_hi > bw) bw = bw_hi;
    const double ratio_median = kw_bench_median(rep_ratios, (size_t)reps); /* sorted: [0] min, [reps - 1] max */
    const double decode_tps = (double)n_decode / best_decode, bound_tps = bw / wbytes;
    const int gguf = model_path && kw_gguf_is_gguf(model_path);
    printf("model: %s %s (%d layers, hidden %d, %d/%d heads x %d, intermediate %d, vocab %d), %s weights, "
           "bf16 KV cache, %ld threads\n",
           model_path ? model_path : preset, model_path ? kw_arch_name(cfg->arch) : "shape", (int)cfg->n_layers,
           (int)cfg->hidden, (int)cfg->n_heads, (int)cfg->n_kv_heads, (int)cfg->head_dim, (int)cfg->intermediate,
           (int)cfg->vocab, kw_dtype_name(kw_model_logits_weight_dtype(model)), (long)threads);
    printf("load (%s, matmul weights packed, %s kernels%s): %.1f ms\n",
           !gguf ? "mmap"
           : weights == KW_MODEL_WEIGHT_MODE_QUANTIZED_INT8
               ? "GGUF, matmul weights kept quantized (Q4_K/Q4_1/Q6_K/Q8_0/Q5_0 with int8 activations), the "
                 "rest dequantized"
           : weights == KW_MODEL_WEIGHT_MODE_QUANTIZED ? "GGUF, matmul weights kept quantized, the rest dequantized"
                                                       : "GGUF, dequantized into model-owned tensors",
           kw_backend_cpu_isa(be),
           weights == KW_MODEL_WEIGHT_MODE_BF16_ACT ? ", bf16 weights with bf16 activations" : "", load_ms);
    printf("prefill: %ld tokens in %.1f ms = %.1f tok/s (best of %ld)\n", (long)prompt_len, best_prefill * 1e3,
           (double)prompt_len / best_prefill, (long)reps);
    printf("decode:  %ld steps after the prompt in %.1f ms = %.2f tok/s (%.2f ms/token, best of %ld)\n", (long)n_decode,
           best_decode * 1e3, decode_tps, best_decode * 1e3 / (double)n_decode, (long)reps);
    /* CPU time counts only the time the threads ran (spinning included), so it is steadier than wall time on a
     * shared machine: both threads busy the whole step would give threads x the wall time */
    printf("decode CPU time: %.2f ms/token (the process's, all threads, the least of %ld reps)\n",
           best_decode_cpu * 1e3 / (double)n_decode, (long)reps);
    printf("baseline: read %.2f GB/s (the best read pattern of 1..%ld threads over a %lld MiB buffer or the model's "
           "weights, the best of the reads before the load, after it and around every rep: the buffer %.2f GB/s "
           "and the weights %.2f GB/s at first); read per decode token %.1f MB: weights %.1f MB (this weight "
           "format's packed tensors: codes, scales, super-block fields, norms, lm_head) + KV cache %.1f MB (the mean "
           "over the steps)\n",
           bw * 1e-9, (long)threads, (long long)bw_mib, bw_buffer * 1e-9, bw_weights * 1e-9, wbytes * 1e-6,
           (double)weight_bytes * 1e-6, kv_bytes * 1e-6);
    const double llc = kw_bench_llc_bytes(threads);
    if (wbytes < 2.0 * llc)
        printf("note: %.1f MB per token is less than twice the last-level cache of %ld core%s (%.0f MiB): the caches "
               "hold much of it, and decode may beat the memory bound\n",
               wbytes * 1e-6, (long)threads, threads > 1 ? "s" : "", llc / 1048576.0);
    printf("decode bound = bandwidth / bytes per token = %.2f tok/s; achieved/bound = %.2f\n", bound_tps,
           decode_tps / bound_tps);
    printf("decode against the reads around each rep (the better of just before and just after): achieved/bound "
           "median %.2f, min %.2f, max %.2f over %ld rep%s; those reads %.2f-%.2f GB/s\n",
           ratio_median, rep_ratios[0], rep_ratios[reps - 1], (long)reps, reps > 1 ? "s" : "", bw_lo * 1e-9,
           bw_hi * 1e-9);
    printf("peak RSS: %.1f MB (model phase%s)\n", rss * 1e-6,
           rss_reset == 0 ? "" : "; /proc/self/clear_refs not writable: includes the bandwidth buffer");

    if (interleave) { /* steps alternating A B B A ..., so that both see the same machine and contexts */
        stage = "interleave";
        double ms[2] = {0, 0};
        KW_CHECK(kw_kvcache_reset(cache));
        const kw_forward_args a = {
            .ids = ids, .n = prompt_len, .mode = KW_LOGITS_LAST, .argmax = &next, .argmax_flags = 1};
        KW_CHECK(kw_model_forward(model, cache, &a));
        for (int64_t i = 0; i < 2 * n_decode; ++i) {
            const int separate = (int)((i + i / 2) % 2);
            kw_model_set_shared_matmuls(model, !separate);
            t0 = kw_time_now_ns();
            KW_CHECK(kw_model_decode_step(model, cache, next, NULL, &next, KW_ARGMAX_ROUND_BF16));
            ms[separate] += kw_time_ms(t0, kw_time_now_ns());
        }
        kw_model_set_shared_matmuls(model, 1);
        printf("decode, steps interleaved: shared matmuls %.3f ms/token, separate %.3f ms/token, speed-up %.4f "
               "(%ld steps each)\n",
               ms[0] / (double)n_decode, ms[1] / (double)n_decode, ms[1] / ms[0], (long)n_decode);
    }

    if (interleave_hp) {
        stage = "interleave huge pages";
        KW_CHECK(kw_bench_interleave_hugepages(be, dir, &mo, model, cache, ids, prompt_len, n_decode,
                                               prompt_len + (n_decode > warm_steps ? n_decode : warm_steps) * 2 + 1));
    }

    if (profile) {
        stage = "profile";
        double ms[KW_OP_COUNT];
        int64_t calls[KW_OP_COUNT];
        kw_model_set_profiling(model, 1);
        kw_model_profile(model, NULL, NULL, 1);
        KW_CHECK(kw_kvcache_reset(cache));
        const kw_forward_args a = {
            .ids = ids, .n = prompt_len, .mode = KW_LOGITS_LAST, .argmax = &next, .argmax_flags = 1};
        KW_CHECK(kw_model_forward(model, cache, &a));
        kw_model_profile(model, ms, calls, 1);
        kw_bench_print_profile("prefill", ms, calls);
        for (int64_t i = 0; i < n_decode; ++i)
            KW_CHECK(kw_model_decode_step(model, cache, next, NULL, &next, KW_ARGMAX_ROUND_BF16));
        kw_model_profile(model, ms, calls, 1);
        kw_bench_print_profile("decode", ms, calls);
        kw_model_set_profiling(model, 0);
    }
out:
    if (rc < 0) fprintf(stderr, "kvwire bench model: %s: %s (%s)\n", stage, kw_strerror(rc), kw_error_detail());
    free(ids);
    free(brackets);
    free(rep_ratios);
    kw_bench_bw_free(bracket);
    kw_bench_bw_free(wread);
    kw_kvcache_free(cache);
    kw_model_free(model);
    kw_backend_destroy(be);
    if (temp) kw_cli_remove_generated_model(dir);
    return rc < 0 ? 1 : 0;
}
