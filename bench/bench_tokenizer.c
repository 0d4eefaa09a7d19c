/* bench_tokenizer.c: `kvwire bench tokenizer`: tokenizer.json load time and encode/decode throughput.
 *
 * The text is a deterministic mix built in-process (English prose, code, Chinese, digits, emoji and chat markup,
 * about 4 MiB) or a file given with --file. The baseline, measured in the same run on the same text, is
 * kw_tokenizer_pre_tokenize: added-token matching, NFC and the Split regex without BPE, so the ratio says what BPE
 * merging and id lookup cost on top of the unavoidable regex pass.
 *
 * Options: --tokenizer DIR (repeatable; default models/tokenizers/qwen3 and llama3 under the current directory),
 * --file PATH, --reps N (default 3; the best rep is reported).
 */
#include "kw_benches.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_file.h"
#include "common/kw_status.h"
#include "common/kw_time.h"
#include "model/kw_tokenizer.h"
#include "tools/kw_cli.h"

const char kw_bench_tokenizer_summary[] = "tokenizer load time and encode/decode MB/s vs the pre-tokenizer alone";

static const char *const kw_bench_tok_parts[] = {
    "The quick brown fox jumps over the lazy dog. It's 12:45 and they'll be here by 2026-11-23, won't they? ",
    "Cache-to-Cache fusion lets one model hand its KV cache to another over the network.\n\n",
    "def f(x):\n    return [i ** 2 for i in range(x) if i % 3 == 0]  # squares\n\n",
    "int main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n",
    "今天天气很好，我们去公园散步吧。机器学习模型需要大量的数据。",
    "Les élèves ont étudié l'été dernier à Montréal. Größe, Straße, naïve café. ",
    "Numbers: 3.14159 -42 1e-9 1234567890 0x1F $19.99 €5,00 ",
    "Emoji 😀👍🏽 👩‍👩‍👧‍👦 🇫🇷 ",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "   indented   text\twith\ttabs   and trailing spaces   \r\n",
};

static char *kw_bench_tok_corpus(size_t target, size_t *len) {
    char *buf = malloc(target + 1024);
    if (!buf) return NULL;
    size_t n = 0;
    uint32_t seed = 12345;
    const size_t parts = sizeof kw_bench_tok_parts / sizeof kw_bench_tok_parts[0];
    while (n < target) {
        seed = seed * 1103515245u + 12345u;
        const char *p = kw_bench_tok_parts[(seed >> 16) % parts];
        const size_t k = strlen(p);
        memcpy(buf + n, p, k);
        n += k;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

static int kw_bench_tok_one(const char *dir, const char *text, size_t len, int reps) {
    kw_tokenizer *tok = NULL;
    const uint64_t t0 = kw_time_now_ns();
    int rc = kw_tokenizer_load(dir, &tok);
    const uint64_t t1 = kw_time_now_ns();
    if (rc < 0) {
        fprintf(stderr, "bench tokenizer: %s: %s\n", kw_status_name(rc), kw_error_detail());
        return 1;
    }
    double best_pre = 1e30, best_enc = 1e30, best_dec = 1e30;
    size_t n_ids = 0;
    for (int r = 0; r < reps && rc == 0; ++r) {
        char *norm = NULL;
        size_t norm_len = 0, *bounds = NULL, n_pieces = 0;
        uint64_t a = kw_time_now_ns();
        rc = kw_tokenizer_pre_tokenize(tok, text, len, &norm, &norm_len, &bounds, &n_pieces);
        uint64_t b = kw_time_now_ns();
        free(norm);
        free(bounds);
        if (rc < 0) break;
        if (kw_time_seconds(a, b) < best_pre) best_pre = kw_time_seconds(a, b);
        int32_t *ids = NULL;
        a = kw_time_now_ns();
        rc = kw_tokenizer_encode(tok, text, len, &ids, &n_ids);
        b = kw_time_now_ns();
        if (rc < 0) break;
        if (kw_time_seconds(a, b) < best_enc) best_enc = kw_time_seconds(a, b);
        char *back = NULL;
        size_t back_len = 0;
        a = kw_time_now_ns();
        rc = kw_tokenizer_decode(tok, ids, n_ids, 0, &back, &back_len);
        b = kw_time_now_ns();
        free(ids);
        free(back);
        if (rc < 0) break;
        if (kw_time_seconds(a, b) < best_dec) best_dec = kw_time_seconds(a, b);
    }
    kw_tokenizer_free(tok);
    if (rc < 0) {
        fprintf(stderr, "bench tokenizer: %s: %s\n", kw_status_name(rc), kw_error_detail());
        return 1;
    }
    const double mb = (double)len / 1e6;
    printf("%s\n  load %.0f ms | %zu bytes -> %zu ids (%.2f bytes/id)\n", dir, kw_time_ms(t0, t1), len, n_ids,
           (double)len / (double)(n_ids ? n_ids : 1));
    printf("  pre-tokenize (baseline) %7.1f MB/s\n  encode                  %7.1f MB/s  (%.2fx the baseline's time)\n"
           "  decode                  %7.1f MB/s of text\n",
           mb / best_pre, mb / best_enc, best_enc / best_pre, mb / best_dec);
    return 0;
}

static void kw_bench_tok_usage(FILE *f) {
    fprintf(f, "usage: kvwire bench tokenizer [--tokenizer DIR]... [--file PATH] [--reps N]\n");
}

int kw_bench_tokenizer(int argc, char **argv) {
    const char *dirs[8];
    int n_dirs = 0;
    int64_t reps_opt = 3;
    const char *file = NULL;
    const kw_cli_option opts[] = {
        KW_CLI_LIST("--tokenizer", dirs, &n_dirs, 8),
        KW_CLI_STR("--file", &file),
        KW_CLI_INT("--reps", &reps_opt, 0, 1000),
    };
    const int st = KW_CLI_PARSE("kvwire bench tokenizer", argc, argv, opts, kw_bench_tok_usage);
    if (st != KW_CLI_RUN) return st;
    const int reps = reps_opt < 1 ? 1 : (int)reps_opt;
    if (n_dirs == 0) {
        dirs[n_dirs++] = "models/tokenizers/qwen3";
        dirs[n_dirs++] = "models/tokenizers/llama3";
    }
    char *text = NULL;
    size_t len = 0;
    if (file) {
        const int rc = kw_file_read_all(file, (size_t)1 << 30, &text, &len);
        if (rc < 0) {
            fprintf(stderr, "bench tokenizer: %s\n", kw_error_detail());
            return 1;
        }
    } else {
        text = kw_bench_tok_corpus((size_t)4 << 20, &len);
        if (!text) return 1;
    }
    printf("text: %s, %zu bytes, best of %d\n", file ? file : "built-in mix", len, reps);
    int status = 0;
    for (int d = 0; d < n_dirs; ++d)
        status |= kw_bench_tok_one(dirs[d], text, len, reps);
    free(text);
    return status;
}
