/* cmd_c2c_align.c: `kvwire c2c-align`: one C2C request with a sharer that has another tokenizer (token alignment,
 * c2c/kw_align.h): both chat templates, the aligned and padded id streams, the fusion sections cut at the message
 * boundaries, prefill of both models, projection, greedy decoding with the receiver.
 *
 * stdout, one "key: value" line each: answer (specials skipped, newlines escaped as \n), letter (A-D or null),
 * prompt_tokens (the padded length), recv_pads, sharer_pads, sections (length:fused|receiver each), tokens_fused,
 * generated_tokens, generated_ids, layers_fused, layers_skipped, sharer_kv_bytes, timing_ms; with --print-alignment
 * also recv_ids, sharer_ids, message_mask, recv_pad, sharer_pad (JSON arrays). Option parsing and printing only.
 * Not here: several sharers, the KVWire round trip and cache proportions (`kvwire c2c`, same tokenizer). */
#include "kw_commands.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "c2c/kw_align.h"
#include "c2c/kw_answer.h"
#include "c2c/kw_fuser_load.h"
#include "c2c/kw_fusion.h"
#include "c2c/kw_prompt.h"
#include "common/kw_json.h"
#include "common/kw_status.h"
#include "kernels/kw_backend.h"
#include "model/kw_chat.h"
#include "model/kw_model.h"
#include "model/kw_tokenizer.h"

const char kw_cmd_c2c_align_summary[] = "run one C2C request with a sharer of another tokenizer (token alignment: "
                                        "padded streams, message sections, answer, timings)";

static void kw_c2c_align_usage(FILE *f) {
    fprintf(f,
            "usage: kvwire c2c-align --receiver DIR --sharer DIR --fuser DIR (--prompt TEXT | --mc-json ITEM)\n"
            "                        [--strategy longest|first] [--decode-pads reference|masked] [--date \"23 Nov "
            "2026\"]\n"
            "                        [--tokenizer DIR] [--sharer-tokenizer DIR] [--system TEXT] [--dataset NAME]\n"
            "                        [--max-new-tokens N] [--fp32] [--mode sequential|parallel] [--threads N]\n"
            "                        [--print-alignment]\n"
            "  The user message (--prompt, or the reference's multiple-choice prompt for --mc-json, a JSON item or\n"
            "  @FILE) is rendered with each model's chat template (Qwen3 thinking off, Qwen2.5, Llama-3.2 with\n"
            "  --date, default today) and aligned as the C2C reference's TokenAligner does: template sections padded\n"
            "  to the longer side, message tokens mapped 1:1 from the receiver's (--strategy, default longest, the\n"
            "  evaluation recipe's). Message sections are fused; the generation prompt runs on the receiver only.\n"
            "  --decode-pads    reference (default): the receiver's pads become visible after the first generated\n"
            "                   token, as RosettaModel.generate does; masked: they stay hidden\n"
            "  --tokenizer      the receiver's tokenizer folder (default: the receiver folder); --sharer-tokenizer\n"
            "                   likewise (default: the sharer folder)\n"
            "  --fp32           f32 caches, fp32 projector, fp32 logits (default bf16 caches and projector)\n");
}

static int kw_c2c_align_long(const char *opt, const char *s, long min, long max, long *out) {
    char *end = NULL;
    errno = 0;
    const long v = strtol(s, &end, 10);
    if (errno || !end || *end || end == s || v < min || v > max) {
        fprintf(stderr, "kvwire c2c-align: %s wants an integer in [%ld, %ld], got '%s'\n", opt, min, max, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* The chat template of a model family. */
static int kw_c2c_align_family(const kw_model_config *c, enum kw_chat_family *out) {
    switch (c->arch) {
    case KW_ARCH_QWEN3:
        *out = KW_CHAT_QWEN3;
        return 0;
    case KW_ARCH_QWEN2:
        *out = KW_CHAT_QWEN25;
        return 0;
    case KW_ARCH_LLAMA:
        *out = KW_CHAT_LLAMA32;
        return 0;
    default:
        KW_FAIL(KW_E_UNSUPPORTED, "no chat template for %s", kw_arch_name(c->arch));
    }
}

static void kw_c2c_align_escaped(const char *label, const char *s, size_t n) {
    printf("%s: ", label);
    for (size_t i = 0; i < n; ++i) {
        if (s[i] == '\n')
            fputs("\\n", stdout);
        else if (s[i] == '\\')
            fputs("\\\\", stdout);
        else
            putchar(s[i]);
    }
    putchar('\n');
}

static void kw_c2c_align_ids(const char *label, const int32_t *v, int64_t n) {
    printf("%s: [", label);
    for (int64_t i = 0; i < n; ++i)
        printf(i ? ",%d" : "%d", (int)v[i]);
    printf("]\n");
}

static void kw_c2c_align_flags(const char *label, const uint8_t *v, int64_t n) {
    printf("%s: [", label);
    for (int64_t i = 0; i < n; ++i)
        printf(i ? ",%d" : "%d", (int)v[i]);
    printf("]\n");
}

int kw_cmd_c2c_align(int argc, char **argv) {
    const char *recv_dir = NULL, *sharer_dir = NULL, *fuser_dir = NULL, *prompt = NULL, *mc = NULL, *date = NULL;
    const char *tok_dir = NULL, *sharer_tok_dir = NULL, *system_msg = NULL, *dataset = "mmlu-redux";
    const char *strategy_name = "longest", *pads_name = "reference", *mode_name = "sequential";
    int fp32 = 0, print_alignment = 0;
    long max_new = 64, threads = 0;
    for (int i = 1; i < argc; ++i) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            kw_c2c_align_usage(stdout);
            return 0;
        }
        if (strcmp(a, "--fp32") == 0 || strcmp(a, "--print-alignment") == 0) {
            *(a[2] == 'f' ? &fp32 : &print_alignment) = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "kvwire c2c-align: unknown option or missing value: %s\n", a);
            kw_c2c_align_usage(stderr);
            return 2;
        }
        const char *v = argv[++i];
        const char **str = strcmp(a, "--receiver") == 0           ? &recv_dir
                           : strcmp(a, "--sharer") == 0           ? &sharer_dir
                           : strcmp(a, "--fuser") == 0            ? &fuser_dir
                           : strcmp(a, "--prompt") == 0           ? &prompt
                           : strcmp(a, "--mc-json") == 0          ? &mc
                           : strcmp(a, "--date") == 0             ? &date
                           : strcmp(a, "--tokenizer") == 0        ? &tok_dir
                           : strcmp(a, "--sharer-tokenizer") == 0 ? &sharer_tok_dir
                           : strcmp(a, "--system") == 0           ? &system_msg
                           : strcmp(a, "--dataset") == 0          ? &dataset
                           : strcmp(a, "--strategy") == 0         ? &strategy_name
                           : strcmp(a, "--decode-pads") == 0      ? &pads_name
                           : strcmp(a, "--mode") == 0             ? &mode_name
                                                                  : NULL;
        if (str) {
            *str = v;
        } else if (strcmp(a, "--max-new-tokens") == 0) {
            if (kw_c2c_align_long(a, v, 0, 1 << 20, &max_new) < 0) return 2;
        } else if (strcmp(a, "--threads") == 0) {
            if (kw_c2c_align_long(a, v, 0, 1024, &threads) < 0) return 2;
        } else {
            fprintf(stderr, "kvwire c2c-align: unknown option %s\n", a);
            kw_c2c_align_usage(stderr);
            return 2;
        }
    }
    if (!recv_dir || !sharer_dir || !fuser_dir || (!prompt) == (!mc)) {
        fprintf(stderr, "kvwire c2c-align: --receiver, --sharer, --fuser and one of --prompt or --mc-json are "
                        "required\n");
        kw_c2c_align_usage(stderr);
        return 2;
    }
    const int longest = strcmp(strategy_name, "longest") == 0, masked = strcmp(pads_name, "masked") == 0;
    const int parallel = strcmp(mode_name, "parallel") == 0;
    if ((!longest && strcmp(strategy_name, "first") != 0) || (!masked && strcmp(pads_name, "reference") != 0) ||
        (!parallel && strcmp(mode_name, "sequential") != 0)) {
        fprintf(stderr, "kvwire c2c-align: --strategy wants longest or first, --decode-pads reference or masked, "
                        "--mode sequential or parallel\n");
        return 2;
    }

    int rc = 0;
    const char *stage = "backend";
    kw_backend *be = NULL;
    kw_model *recv = NULL, *sharer = NULL;
    kw_fuser *fuser = NULL;
    kw_fusion *fusion = NULL;
    kw_tokenizer *rtok = NULL, *stok = NULL;
    kw_aligner *al = NULL;
    kw_kvcache *cache = NULL;
    char *user_msg = NULL, *completion = NULL;
    size_t completion_len = 0;
    kw_align_result ar = {0};
    kw_fusion_result res = {0};
    cJSON *item = NULL;
    kw_fusion_section *secs = NULL;
    int32_t n_secs = 0;

    KW_CHECK(kw_backend_create_cpu((int)threads, &be));
    stage = "load models";
    KW_CHECK(kw_model_load(be, recv_dir, NULL, &recv));
    KW_CHECK(kw_model_load(be, sharer_dir, NULL, &sharer));
    stage = "load fuser";
    KW_CHECK(kw_fuser_load(fuser_dir, 0, &fuser));
    const kw_fusion_sharer spec = {sharer, fuser};
    stage = "bind fuser";
    KW_CHECK(kw_fusion_create(recv, &spec, 1, 0, &fusion));
    stage = "load tokenizers";
    KW_CHECK(kw_tokenizer_load(tok_dir ? tok_dir : recv_dir, &rtok));
    KW_CHECK(kw_tokenizer_load(sharer_tok_dir ? sharer_tok_dir : sharer_dir, &stok));
    KW_CHECK_IF(kw_tokenizer_vocab_size(rtok) > kw_model_get_config(recv)->vocab ||
                    kw_tokenizer_vocab_size(stok) > kw_model_get_config(sharer)->vocab,
                KW_E_TOKENIZER, "a tokenizer has more ids than its model's vocabulary");

    stage = "align";
    enum kw_chat_family rf = KW_CHAT_QWEN3, sf = KW_CHAT_QWEN3;
    KW_CHECK(kw_c2c_align_family(kw_model_get_config(recv), &rf));
    KW_CHECK(kw_c2c_align_family(kw_model_get_config(sharer), &sf));
    kw_align_side rs, ss;
    KW_CHECK(kw_align_side_init(rtok, rf, &rs));
    KW_CHECK(kw_align_side_init(stok, sf, &ss));
    KW_CHECK(kw_aligner_create(&rs, &ss, longest ? KW_ALIGN_LONGEST : KW_ALIGN_FIRST, &al));
    if (mc) {
        if (mc[0] == '@')
            KW_CHECK(kw_json_load_file(mc + 1, (size_t)1 << 24, &item));
        else
            KW_CHECK(kw_json_parse(mc, strlen(mc), &item));
        KW_CHECK(kw_prompt_from_item(dataset, item, 0, 1, &user_msg));
    }
    char today[32];
    if (!date) { /* Llama-3.2's "Today Date", as the template's strftime_now("%d %b %Y") */
        const time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        strftime(today, sizeof today, "%d %b %Y", &tm);
        date = today;
    }
    kw_chat_message msgs[2];
    size_t n_msgs = 0;
    if (system_msg) msgs[n_msgs++] = (kw_chat_message){"system", system_msg};
    msgs[n_msgs++] = (kw_chat_message){"user", mc ? user_msg : prompt};
    const kw_align_chat_options co = {.add_generation_prompt = 1, .enable_thinking = 0, .date_string = date};
    KW_CHECK(kw_aligner_align_chat(al, msgs, n_msgs, &co, &ar));

    stage = "c2c";
    const enum kw_dtype cache_dtype = fp32 ? KW_DTYPE_F32 : KW_DTYPE_BF16;
    KW_CHECK(kw_model_create_cache(recv, ar.n + (max_new > 0 ? max_new : 1), cache_dtype, &cache));
    const kw_fusion_options base = {
        .mode = parallel ? KW_FUSION_PARALLEL : KW_FUSION_SEQUENTIAL,
        .numerics = fp32 ? KW_PROJECTOR_FP32 : KW_PROJECTOR_BF16,
        .sharer_cache_dtype = cache_dtype,
        .gen = {.max_new_tokens = (int32_t)max_new, .round = fp32 ? KW_LOGITS_ROUND_NONE : KW_LOGITS_ROUND_AUTO}};
    KW_CHECK(kw_align_run(fusion, cache, &ar, &base, masked ? KW_ALIGN_PADS_MASKED : KW_ALIGN_PADS_REFERENCE, &res));
    KW_CHECK(kw_tokenizer_decode(rtok, res.gen.ids, (size_t)res.gen.n, 1, &completion, &completion_len));
    char letter = 0;
    stage = "answer";
    KW_CHECK(kw_answer_extract(completion, completion_len, &letter));

    int64_t rp = 0, sp = 0;
    for (int64_t i = 0; i < ar.n; ++i)
        rp += ar.recv_pad[i], sp += ar.sharer_pad[i];
    const kw_fusion_stats *st = &res.stats;
    kw_c2c_align_escaped("answer", completion, completion_len);
    if (letter)
        printf("letter: %c\n", letter);
    else
        printf("letter: null\n");
    printf("prompt_tokens: %lld\n", (long long)ar.n);
    printf("recv_pads: %lld\n", (long long)rp);
    printf("sharer_pads: %lld\n", (long long)sp);
    KW_CHECK(kw_align_fusion_sections(&ar, 1, &secs, &n_secs));
    printf("sections:");
    for (int32_t i = 0; i < n_secs; ++i)
        printf(" %lld:%s", (long long)secs[i].length, secs[i].index > 0 && i + 1 < n_secs ? "fused" : "receiver");
    printf("\n");
    printf("tokens_fused: %lld\n", (long long)st->tokens_fused);
    printf("generated_tokens: %lld%s\n", (long long)res.gen.n, res.gen.stopped_eos ? " (stopped at EOS)" : "");
    kw_c2c_align_ids("generated_ids", res.gen.ids, res.gen.n);
    printf("layers_fused: %d\n", (int)st->layers_fused);
    printf("layers_skipped: %d\n", (int)st->layers_skipped);
    printf("sharer_kv_bytes: %lld (%s)\n", (long long)st->sharer_kv_bytes, kw_dtype_name(cache_dtype));
    if (print_alignment) {
        kw_c2c_align_ids("recv_ids", ar.recv_ids, ar.n);
        kw_c2c_align_ids("sharer_ids", ar.sharer_ids, ar.n);
        kw_c2c_align_flags("message_mask", ar.message_mask, ar.n);
        kw_c2c_align_flags("recv_pad", ar.recv_pad, ar.n);
        kw_c2c_align_flags("sharer_pad", ar.sharer_pad, ar.n);
    }
    printf("timing_ms: receiver_prefill %.3f sharer_prefill %.3f projection %.3f last_prompt %.3f decode %.3f "
           "(%lld steps)\n",
           st->receiver_prefill_ms, st->sharer_prefill_ms, st->projection_ms, st->last_prompt_ms, st->decode_ms,
           (long long)st->n_decode);
out:
    if (rc < 0) fprintf(stderr, "kvwire c2c-align: %s: %s (%s)\n", stage, kw_strerror(rc), kw_error_detail());
    kw_fusion_result_free(&res);
    kw_align_result_free(&ar);
    free(secs);
    free(completion);
    free(user_msg);
    cJSON_Delete(item);
    kw_kvcache_free(cache);
    kw_aligner_free(al);
    kw_tokenizer_free(rtok);
    kw_tokenizer_free(stok);
    kw_fusion_free(fusion);
    kw_fuser_free(fuser);
    kw_model_free(sharer);
    kw_model_free(recv);
    kw_backend_destroy(be);
    return rc < 0 ? 1 : 0;
}
