/* cmd_generate.c: `kvwire generate`: greedy completion of one prompt with a HF model folder on the CPU backend.
 *
 * stdout: the completion text (special tokens skipped), then the labelled lines "prompt_ids: [...]" and
 * "generated_ids: [...]" (JSON arrays); with --force-ids (teacher forcing) also "argmax_ids: [...]" and
 * "forced_logits: [...]". stderr: the timings (prefill ms and tok/s, decode tok/s). Option parsing and printing only;
 * the model, the cache and the generation loop are in model/. */
#include "kw_commands.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/kw_status.h"
#include "kernels/kw_backend.h"
#include "model/kw_chat.h"
#include "model/kw_generate.h"
#include "model/kw_model.h"
#include "model/kw_tokenizer.h"
#include "tools/kw_cli.h"

const char kw_cmd_generate_summary[] =
    "greedy completion of a prompt with an HF model folder or a GGUF file (prints text and ids)";

static void kw_generate_usage(FILE *f) {
    fprintf(
        f,
        "usage: kvwire generate --model DIR|FILE.gguf --prompt TEXT [--chat] [--system TEXT] [--max-new-tokens N]\n"
        "                       [--threads N] [--tokenizer DIR] [--date \"23 Nov 2026\"] [--cache "
        "bf16|f32|int8|int6|int4]\n"
        "                       [--cache-page-tokens N] [--cache-layer L=int8|int6|int4|bf16 ...]\n"
        "                       [--round auto|none|bf16]\n"
        "                       [--weights f32|bf16|quantized|quantized-int8|bf16-act] [--ignore-eos]\n"
        "                       [--force-ids \"ID,ID,...\"]\n"
        "  --chat            wrap the prompt in the chat template a GGUF file carries (SmolLM2, Gemma 3), else\n"
        "                    the model family's (qwen3: Qwen3 with thinking disabled; qwen2: Qwen2.5-Instruct;\n"
        "                    llama: Llama-3.2-Instruct, --date sets its \"Today Date\", default today; gemma3:\n"
        "                    Gemma 3, --system opens the user turn)\n"
        "  --max-new-tokens  default 32; generation also stops at the model's EOS ids (generation_config.json)\n"
        "  --ignore-eos      do not stop at EOS ids: exactly --max-new-tokens new tokens\n"
        "  --force-ids       teacher forcing: the new tokens are these ids (comma-separated), fed back one after the\n"
        "                    other whatever the model picks, EOS ids included; prints argmax_ids (the model's argmax\n"
        "                    at each step, from the prompt and the forced ids before it) and forced_logits (each\n"
        "                    forced id's f32 logit at its step); --max-new-tokens, if given, must equal their count\n"
        "  --threads         CPU threads (default: one per core)\n"
        "  --tokenizer       folder with tokenizer.json, or a GGUF file (default: the model)\n"
        "  --cache           KV cache dtype (default: bf16 for bf16 models, else f32); int8, int6 and int4 keep it\n"
        "                    quantized in pages (keys per channel per page, values per token; CPU only)\n"
        "  --cache-page-tokens  rows per page of a quantized cache (default 64; 16..4096, a multiple of 16)\n"
        "  --cache-layer     layer L's cache codec instead of --cache's (repeatable; L from 0, or -1 for the last\n"
        "                    layer); needs --cache int8, int6, int4 or bf16\n"
        "  --round           bf16-round the logits before the argmax, as HF does for bf16 models (default auto)\n"
        "  --weights         GGUF files: keep the matmul weights of Q4_0..Q6_K types quantized (default: the same\n"
        "                    logits as f32, fewer bytes read), or dequantize every weight at load to f32 or bf16;\n"
        "                    quantized-int8: Q4_K, Q4_1, Q6_K, Q8_0 and Q5_0 weights with int8 activations, as\n"
        "                    llama.cpp runs them (faster on the CPU, not the f32 logits); bf16-act: bf16 weights (an\n"
        "                    HF folder's too) with bf16 activations, as llama.cpp on AVX-512 BF16\n"
        "Without --chat, Llama and Gemma prompts get their BOS prepended (HF add_special_tokens); Qwen has none;\n"
        "a GGUF file's tokenizer.ggml.add_bos_token decides for it.\n"
        "stdout: the completion, then prompt_ids: [...] and generated_ids: [...]; timings go to stderr.\n");
}

/* Parses --force-ids' "ID,ID,..." (spaces allowed around each id) into *ids (malloc'ed, owned by the caller) and *n. */
static int kw_generate_parse_ids(const char *s, int32_t **ids, int32_t *n) {
    *ids = NULL;
    *n = 0;
    size_t cap = 1;
    for (const char *p = s; *p; ++p)
        cap += *p == ',';
    int32_t *v = malloc(cap * sizeof *v);
    KW_RETURN_IF(!v, KW_E_NOMEM, "--force-ids: out of memory");
    int32_t k = 0;
    for (const char *p = s;;) {
        char *end = NULL;
        errno = 0;
        const long x = strtol(p, &end, 10);
        while (end && (*end == ' ' || *end == '\t'))
            ++end;
        if (errno || end == p || x < 0 || x > INT32_MAX || (*end != ',' && *end != '\0')) {
            free(v);
            KW_RETURN_IF(1, KW_E_INVALID_ARG, "--force-ids wants comma-separated ids >= 0, got '%s'", s);
        }
        v[k++] = (int32_t)x;
        if (*end == '\0') break;
        p = end + 1;
    }
    *ids = v;
    *n = k;
    return 0;
}

typedef struct kw_generate_forced {
    int32_t *argmax;       /* the model's argmax at each step; borrowed */
    float *forced_logit;   /* the forced id's logit at each step; borrowed */
    const int32_t *forced; /* the forced ids; borrowed */
} kw_generate_forced;

static int kw_generate_on_logits(void *user, int64_t step, const float *logits, int32_t vocab, int32_t argmax) {
    kw_generate_forced *f = user;
    (void)vocab; /* the forced ids were checked against it by kw_generate_greedy */
    f->argmax[step] = argmax;
    f->forced_logit[step] = logits[f->forced[step]];
    return 0;
}

static void kw_generate_print_ids(const char *label, const int32_t *ids, int64_t n) {
    printf("%s: [", label);
    for (int64_t i = 0; i < n; ++i)
        printf("%s%d", i ? ", " : "", (int)ids[i]);
    printf("]\n");
}

int kw_cmd_generate(int argc, char **argv) {
    const char *model_dir = NULL, *prompt = NULL, *tok_dir = NULL, *date = NULL, *system = NULL, *force_arg = NULL;
    int64_t max_new = -1, threads = 0; /* max_new -1: not given (32, or the forced ids' count) */
    int chat = 0, ignore_eos = 0;
    static const char *const rounds[] = {"auto", "none", "bf16", NULL};
    static const char *const caches[] = {"bf16", "f32", "int8", "int4", "int6", NULL};
    static const enum kw_logits_round round_values[] = {KW_LOGITS_ROUND_AUTO, KW_LOGITS_ROUND_NONE,
                                                        KW_LOGITS_ROUND_BF16};
    static const enum kw_dtype cache_values[] = {KW_DTYPE_BF16, KW_DTYPE_F32};
    static const enum kw_kvq_codec cache_codecs[] = {0, 0, KW_KVQ_INT8, KW_KVQ_INT4, KW_KVQ_INT6};
    int64_t page_tokens = KW_KVCACHE_PAGE_TOKENS;
    int round_i = 0, cache_i = -1; /* cache -1: by the model's logits weight dtype */
    int weights_i = KW_MODEL_WEIGHT_MODE_QUANTIZED;
    const char *layer_args[KW_CLI_MAX_CACHE_LAYERS];
    int n_layer_args = 0;
    char layers[KW_CLI_MAX_CACHE_LAYERS * 24] = "";
    const kw_cli_option opts[] = {
        KW_CLI_STR_REQUIRED("--model", &model_dir),
        KW_CLI_STR_REQUIRED("--prompt", &prompt),
        KW_CLI_FLAG("--chat", &chat),
        KW_CLI_FLAG("--ignore-eos", &ignore_eos),
        KW_CLI_STR("--tokenizer", &tok_dir),
        KW_CLI_STR("--date", &date),
        KW_CLI_STR("--system", &system),
        KW_CLI_STR("--force-ids", &force_arg),
        KW_CLI_CHOICE("--cache", &cache_i, caches),
        KW_CLI_CHOICE("--round", &round_i, rounds),
        KW_CLI_CHOICE("--weights", &weights_i, kw_model_weight_modes),
        KW_CLI_INT("--max-new-tokens", &max_new, 0, 1 << 20),
        KW_CLI_INT("--threads", &threads, 0, 1024),
        KW_CLI_INT("--cache-page-tokens", &page_tokens, 16, 4096),
        KW_CLI_LIST("--cache-layer", layer_args, &n_layer_args, KW_CLI_MAX_CACHE_LAYERS),
    };
    const int st = KW_CLI_PARSE("kvwire generate", argc, argv, opts, kw_generate_usage);
    if (st != KW_CLI_RUN) return st;
    const enum kw_logits_round round = round_values[round_i];

    int rc = 0;
    kw_backend *be = NULL;
    kw_model *model = NULL;
    kw_tokenizer *tok = NULL;
    kw_kvcache *cache = NULL;
    char *text = NULL, *completion = NULL;
    int32_t *ids = NULL;                                /* the prompt's ids, BOS first for a raw-text prompt */
    int32_t *force = NULL, *argmax = NULL, n_force = 0; /* --force-ids, and the model's argmax at each forced step */
    float *forced_logit = NULL;
    size_t n_ids = 0, text_len = 0, completion_len = 0;
    kw_generate_result res = {0};
    const char *stage = "force-ids";
    if (force_arg) {
        KW_CHECK(kw_generate_parse_ids(force_arg, &force, &n_force));
        KW_CHECK_IF(max_new >= 0 && max_new != n_force, KW_E_INVALID_ARG, "--max-new-tokens %lld with %d forced ids",
                    (long long)max_new, (int)n_force);
        max_new = n_force;
        argmax = malloc((size_t)n_force * sizeof *argmax);
        forced_logit = malloc((size_t)n_force * sizeof *forced_logit);
        KW_CHECK_IF(!argmax || !forced_logit, KW_E_NOMEM, "out of memory");
    } else if (max_new < 0) {
        max_new = 32;
    }

    stage = "backend";
    KW_CHECK(kw_backend_create_cpu((int)threads, &be));
    stage = "load model";
    kw_model_options mo = {0};
    kw_model_options_set_weight_mode(&mo, weights_i);
    KW_CHECK(kw_model_load(be, model_dir, &mo, &model));
    const kw_model_config *cfg = kw_model_get_config(model);
    stage = "load tokenizer";
    KW_CHECK(kw_tokenizer_load(tok_dir ? tok_dir : model_dir, &tok));
    /* ids past the model's vocabulary are tolerated only as special tokens (Gemma 3's tokenizer adds
     * <image_soft_token> at 262144, past the 262144 rows of its text models); any other would be a mismatch */
    for (int32_t id = cfg->vocab; id < kw_tokenizer_vocab_size(tok); ++id)
        KW_CHECK_IF(!kw_tokenizer_is_special(tok, id), KW_E_TOKENIZER,
                    "the tokenizer has %d ids, the model's vocabulary only %d", (int)kw_tokenizer_vocab_size(tok),
                    (int)cfg->vocab);

    stage = "prompt";
    const char *input = prompt;
    if (chat) {
        enum kw_chat_family family = KW_CHAT_QWEN3;
        KW_CHECK(kw_chat_family_for_model(model_dir, cfg->arch, &family));
        char today[32];
        if (!date) {
            const time_t now = time(NULL);
            struct tm tm;
            localtime_r(&now, &tm);
            strftime(today, sizeof today, "%d %b %Y", &tm); /* the template's strftime_now("%d %b %Y") */
            date = today;
        }
        kw_chat_message msgs[2];
        size_t n_msgs = 0;
        if (system) msgs[n_msgs++] = (kw_chat_message){.role = "system", .content = system};
        msgs[n_msgs++] = (kw_chat_message){.role = "user", .content = prompt};
        const kw_chat_options co = {.add_generation_prompt = 1, .enable_thinking = 0, .date_string = date};
        KW_CHECK(kw_chat_render(family, msgs, n_msgs, &co, &text, &text_len));
        input = text;
    } else if (system) {
        KW_CHECK_IF(1, KW_E_INVALID_ARG, "--system needs --chat");
    }
    KW_CHECK(kw_tokenizer_encode(tok, input, strlen(input), &ids, &n_ids));
    if (!chat) KW_CHECK(kw_config_prepend_bos(cfg, &ids, &n_ids)); /* the chat templates write BOS themselves */
    const int64_t n_prompt = (int64_t)n_ids;
    KW_CHECK_IF(n_prompt == 0, KW_E_INVALID_ARG, "the prompt encodes to no tokens");

    stage = "generate";
    const int64_t capacity = n_prompt + (max_new > 0 ? max_new : 1);
    if (n_layer_args > 0) {
        stage = "cache";
        KW_CHECK_IF(cache_i < 0 || (cache_i < 2 && cache_values[cache_i] == KW_DTYPE_F32), KW_E_INVALID_ARG,
                    "--cache-layer needs --cache int8, int6, int4 or bf16 (the other layers' codec)");
        KW_CHECK(kw_cli_cache_layers(layer_args, n_layer_args, layers, sizeof layers));
        KW_CHECK(
            kw_model_create_cache_layers(model, capacity, cache_codecs[cache_i], layers, (int32_t)page_tokens, &cache));
        stage = "generate";
    } else if (cache_i >= 0 && cache_codecs[cache_i]) {
        KW_CHECK(kw_model_create_cache_quantized(model, capacity, cache_codecs[cache_i], (int32_t)page_tokens, &cache));
    } else {
        const enum kw_dtype cache_dtype =
            cache_i >= 0 ? cache_values[cache_i]
                         : (kw_model_logits_weight_dtype(model) == KW_DTYPE_BF16 ? KW_DTYPE_BF16 : KW_DTYPE_F32);
        KW_CHECK(kw_model_create_cache(model, capacity, cache_dtype, &cache));
    }
    static const int32_t no_eos = -1;
    kw_generate_forced forced = {.argmax = argmax, .forced_logit = forced_logit, .forced = force};
    const kw_generate_options go = {.max_new_tokens = (int32_t)max_new,
                                    .round = round,
                                    .eos_ids = ignore_eos ? &no_eos : NULL, /* with n_eos 0: never stop early */
                                    .force_ids = force,
                                    .n_force = n_force,
                                    .on_logits = force ? kw_generate_on_logits : NULL,
                                    .user = &forced};
    KW_CHECK(kw_generate_greedy(model, cache, ids, n_prompt, &go, &res));
    KW_CHECK(kw_tokenizer_decode(tok, res.ids, (size_t)res.n, 1, &completion, &completion_len));

    fwrite(completion, 1, completion_len, stdout);
    printf("\n");
    kw_generate_print_ids("prompt_ids", ids, n_prompt);
    kw_generate_print_ids("generated_ids", res.ids, res.n);
    if (force) {
        kw_generate_print_ids("argmax_ids", argmax, res.n);
        printf("forced_logits: [");
        for (int64_t i = 0; i < res.n; ++i)
            printf("%s%.6f", i ? ", " : "", (double)forced_logit[i]);
        printf("]\n");
    }
    fprintf(stderr, "prefill: %lld tokens in %.2f ms (%.1f tok/s)\n", (long long)n_prompt, res.prefill_ms,
            res.prefill_ms > 0 ? (double)n_prompt / (res.prefill_ms * 1e-3) : 0.0);
    fprintf(stderr, "decode: %lld steps in %.2f ms (%.1f tok/s)%s\n", (long long)res.n_decode, res.decode_ms,
            res.decode_ms > 0 ? (double)res.n_decode / (res.decode_ms * 1e-3) : 0.0,
            res.stopped_eos ? ", stopped at EOS" : "");
out:
    if (rc < 0) fprintf(stderr, "kvwire generate: %s: %s (%s)\n", stage, kw_strerror(rc), kw_error_detail());
    kw_generate_result_free(&res);
    free(completion);
    free(ids);
    free(force);
    free(argmax);
    free(forced_logit);
    free(text);
    kw_kvcache_free(cache);
    kw_tokenizer_free(tok);
    kw_model_free(model);
    kw_backend_destroy(be);
    return rc < 0 ? 1 : 0;
}
