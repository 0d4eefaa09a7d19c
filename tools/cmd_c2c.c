/* cmd_c2c.c: `kvwire c2c`: one C2C request in one process: the receiver's chat prompt, receiver and sharer prefill,
 * projection into the receiver cache, greedy decoding (c2c/kw_fusion.h), and optionally the selected sharer KV
 * through a KVWire encode -> decode round trip on the way (what a receiver would get over the network).
 *
 * stdout, one "key: value" line each: answer (the completion, specials skipped, newlines escaped as \n), letter (the
 * reference extractor's A-D or null), prompt_tokens, tokens_fused, generated_tokens, layers_fused, layers_skipped,
 * sharer_kv_bytes, with --wire: wire_codec, wire_blobs and wire_bytes (measured blob length) and wire_ratio, then
 * timing_ms with the stages. Option parsing, prompt building and the wire glue only: the pipeline is in c2c/. */
#include "kw_commands.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "c2c/kw_answer.h"
#include "c2c/kw_fuser_load.h"
#include "c2c/kw_fusion.h"
#include "c2c/kw_prompt.h"
#include "common/kw_file.h"
#include "common/kw_json.h"
#include "common/kw_status.h"
#include "kernels/kw_backend.h"
#include "model/kw_chat.h"
#include "model/kw_generate.h"
#include "model/kw_model.h"
#include "model/kw_tokenizer.h"
#include "wire/kw_wire.h"

const char kw_cmd_c2c_summary[] = "run one C2C request: prefill both models, fuse the sharer KV, decode (answer, "
                                  "letter, timings, KV bytes)";

static void kw_c2c_usage(FILE *f) {
    fprintf(
        f,
        "usage: kvwire c2c --receiver DIR --sharer DIR --fuser DIR (--prompt TEXT | --mc-json ITEM)\n"
        "                  [--proportion P --order front|back] [--max-new-tokens N] [--fp32]\n"
        "                  [--wire CODEC [--wire-gran G] [--wire-scale S] [--wire-zstd L]]\n"
        "                  [--mode sequential|parallel] [--dataset NAME] [--raw] [--tokenizer DIR] [--threads N]\n"
        "                  [--date \"23 Nov 2026\"]\n"
        "  --sharer/--fuser  may be repeated in pairs for several sharers (every one is selected)\n"
        "  --prompt TEXT     a user message; it is wrapped in the receiver's chat template (Qwen3: thinking\n"
        "                    disabled), unless --raw\n"
        "  --mc-json ITEM    a multiple-choice item {\"question\": ..., \"choices\": [...]} (or @FILE holding one):\n"
        "                    the reference's non-CoT prompt for --dataset (default mmlu-redux), then the template\n"
        "  --proportion P    fuse the first (front) or last (back) floor((L-1) * P) prompt tokens (default 1)\n"
        "  --max-new-tokens  default 64 (the evaluation recipe); decoding also stops at the receiver's EOS ids\n"
        "  --fp32            f32 caches, fp32 projector and fp32 logits (default: bf16 caches, bf16-emulating\n"
        "                    projector, logits rounded as HF does for the receiver's weight dtype)\n"
        "  --wire CODEC      pass the sharer KV through KVWire: bf16, f16, int8, int6, int4, nf4, e4m3, e5m2\n"
        "                    (--wire-gran layer|head|token|groupN, default token; --wire-scale f16|bf16|f32|e8m0,\n"
        "                    default f32; --wire-zstd LEVEL, default 0 = off); one blob per fused section and\n"
        "                    sharer, wire_bytes is its measured length\n");
}

static int kw_c2c_parse_long(const char *opt, const char *s, long min, long max, long *out) {
    char *end = NULL;
    errno = 0;
    const long v = strtol(s, &end, 10);
    if (errno || !end || *end || end == s || v < min || v > max) {
        fprintf(stderr, "kvwire c2c: %s wants an integer in [%ld, %ld], got '%s'\n", opt, min, max, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * The KVWire round trip, as a fusion transfer hook
 */

typedef struct kw_c2c_wire {
    kw_wire_policy pol;
    kw_wire_header hdr;
    kw_wire_encoder *enc;
    kw_wire_decoder *dec;
    unsigned char *buf;
    size_t cap;
    uint32_t *positions;
    size_t n_positions_cap;
    int64_t blob_bytes; /* all blobs */
    int32_t blobs;
} kw_c2c_wire;

static int kw_c2c_wire_reserve(kw_c2c_wire *w, size_t n) {
    if (n <= w->cap) return 0;
    unsigned char *b = realloc(w->buf, n);
    KW_RETURN_IF(b == NULL, KW_E_NOMEM, "wire: cannot allocate %zu bytes", n);
    w->buf = b;
    w->cap = n;
    return 0;
}

/* Feeds n bytes to the decoder and checks that they end with the expected event. */
static int kw_c2c_wire_feed(kw_c2c_wire *w, size_t n, int want) {
    size_t off = 0;
    int last = KW_WIRE_EVENT_NEED_MORE;
    while (off < n) {
        size_t used = 0;
        const int ev = kw_wire_decoder_feed(w->dec, w->buf + off, n - off, &used);
        if (ev < 0) return ev;
        off += used;
        last = ev;
        if (ev == KW_WIRE_EVENT_NEED_MORE) break;
    }
    KW_RETURN_IF(off != n || last != want, KW_E_INTERNAL, "wire: the decoder did not see the expected part (event %d)",
                 last);
    return 0;
}

static int kw_c2c_wire_hook(void *user, kw_fusion_transfer *t) {
    kw_c2c_wire *w = user;
    size_t written = 0, total = 0;
    KW_RETURN_IF(t->n_tokens > UINT32_MAX || t->pos0 + t->n_tokens > KW_WIRE_MAX_POSITIONS, KW_E_LIMIT,
                 "wire: %lld positions exceed the format", (long long)(t->pos0 + t->n_tokens));
    if (t->layer_index == 0) { /* a new blob for this section and sharer */
        kw_wire_encoder_destroy(w->enc);
        w->enc = NULL;
        w->hdr = (kw_wire_header){.n_layers = (uint16_t)t->n_source_layers,
                                  .n_sections = (uint16_t)t->n_layers_sent,
                                  .n_kv_heads = (uint16_t)t->n_heads,
                                  .head_dim = (uint16_t)t->head_dim,
                                  .n_positions = (uint32_t)(t->pos0 + t->n_tokens),
                                  .src_dtype = KW_WIRE_DTYPE_F32};
        KW_FORWARD(kw_wire_encoder_create(&w->hdr, NULL, &w->enc));
        KW_FORWARD(kw_c2c_wire_reserve(w, KW_WIRE_HEADER_BYTES));
        KW_FORWARD(kw_wire_encoder_write_header(w->enc, w->buf, w->cap, &written));
        kw_wire_decoder_reset(w->dec);
        KW_FORWARD(kw_c2c_wire_feed(w, written, KW_WIRE_EVENT_HEADER));
        total += written;
    }
    KW_RETURN_IF(w->enc == NULL, KW_E_STATE, "wire: section before header");
    if ((size_t)t->n_tokens > w->n_positions_cap) {
        uint32_t *p = realloc(w->positions, (size_t)t->n_tokens * sizeof *p);
        KW_RETURN_IF(p == NULL, KW_E_NOMEM, "wire: out of memory");
        w->positions = p;
        w->n_positions_cap = (size_t)t->n_tokens;
    }
    for (int64_t i = 0; i < t->n_tokens; ++i)
        w->positions[i] = (uint32_t)(t->pos0 + i);
    const size_t hd = (size_t)t->head_dim, row = (size_t)t->n_heads * hd;
    const kw_wire_layer_in in = {.layer = (uint32_t)t->source_layer,
                                 .n_tokens = (uint32_t)t->n_tokens,
                                 .positions = w->positions,
                                 .k = {.data = t->k, .head_stride = hd, .token_stride = row},
                                 .v = {.data = t->v, .head_stride = hd, .token_stride = row}};
    size_t bound = 0;
    KW_FORWARD(kw_wire_section_bound(&w->hdr, &w->pol, (uint32_t)t->n_tokens, &bound));
    KW_FORWARD(kw_c2c_wire_reserve(w, bound > KW_WIRE_TRAILER_BYTES ? bound : KW_WIRE_TRAILER_BYTES));
    KW_FORWARD(kw_wire_encoder_write_section(w->enc, &in, &w->pol, w->buf, w->cap, &written));
    KW_FORWARD(kw_c2c_wire_feed(w, written, KW_WIRE_EVENT_SECTION));
    total += written;
    /* what the receiver decodes replaces the sharer rows */
    const kw_wire_section *sec = kw_wire_decoder_section(w->dec);
    KW_RETURN_IF(sec == NULL || sec->layer != (uint32_t)t->source_layer || sec->n_tokens != (uint32_t)t->n_tokens,
                 KW_E_INTERNAL, "wire: decoded section does not match layer %d", (int)t->source_layer);
    const kw_wire_tensor_out ko = {.data = t->k, .dtype = KW_WIRE_DTYPE_F32, .head_stride = hd, .token_stride = row};
    const kw_wire_tensor_out vo = {.data = t->v, .dtype = KW_WIRE_DTYPE_F32, .head_stride = hd, .token_stride = row};
    KW_FORWARD(kw_wire_section_dequantize(sec, &ko, &vo));
    if (t->layer_index + 1 == t->n_layers_sent) {
        KW_FORWARD(kw_wire_encoder_write_trailer(w->enc, w->buf, w->cap, &written));
        KW_FORWARD(kw_c2c_wire_feed(w, written, KW_WIRE_EVENT_END));
        KW_FORWARD(kw_wire_decoder_finish(w->dec));
        total += written;
        ++w->blobs;
    }
    w->blob_bytes += (int64_t)total;
    t->wire_bytes = (int64_t)total;
    return 0;
}

static void kw_c2c_wire_free(kw_c2c_wire *w) {
    kw_wire_encoder_destroy(w->enc);
    kw_wire_decoder_destroy(w->dec);
    free(w->buf);
    free(w->positions);
}

/* "int8" etc. -> the codec; granularity and scale names. */
static int kw_c2c_wire_policy(const char *codec, const char *gran, const char *scale, long zstd, kw_wire_policy *pol) {
    memset(pol, 0, sizeof *pol);
    kw_wire_codec_spec spec = {0};
    int found = 0;
    for (uint32_t c = 1; c < KW_WIRE_CODEC_COUNT; ++c)
        if (strcmp(codec, kw_wire_codec_name(c)) == 0) spec.codec = (uint8_t)c, found = 1;
    KW_RETURN_IF(!found, KW_E_INVALID_ARG, "unknown --wire codec '%s'", codec);
    if (spec.codec == KW_WIRE_CODEC_BF16 || spec.codec == KW_WIRE_CODEC_F16) {
        spec.granularity = KW_WIRE_GRAN_NONE;
        spec.scale_dtype = KW_WIRE_SCALE_NONE;
    } else {
        if (strncmp(gran, "group", 5) == 0) {
            char *end = NULL;
            const long g = strtol(gran + 5, &end, 10);
            KW_RETURN_IF(!end || *end || g < 4 || g > 1024 || (g & (g - 1)), KW_E_INVALID_ARG,
                         "--wire-gran group wants a power of two >= 4 (groupN), got '%s'", gran);
            spec.granularity = KW_WIRE_GRAN_GROUP;
            while ((1L << spec.group_log2) < g)
                ++spec.group_log2;
        } else {
            found = 0;
            for (uint32_t g = KW_WIRE_GRAN_LAYER; g <= KW_WIRE_GRAN_TOKEN; ++g)
                if (strcmp(gran, kw_wire_gran_name(g)) == 0) spec.granularity = (uint8_t)g, found = 1;
            KW_RETURN_IF(!found, KW_E_INVALID_ARG, "unknown --wire-gran '%s'", gran);
        }
        found = 0;
        for (uint32_t s = KW_WIRE_SCALE_F16; s <= KW_WIRE_SCALE_E8M0; ++s)
            if (strcmp(scale, kw_wire_scale_name(s)) == 0) spec.scale_dtype = (uint8_t)s, found = 1;
        KW_RETURN_IF(!found, KW_E_INVALID_ARG, "unknown --wire-scale '%s'", scale);
    }
    pol->k = spec;
    pol->v = spec;
    pol->index_encoding = KW_WIRE_INDEX_AUTO;
    pol->zstd_level = (int)zstd;
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * The prompt
 */

/* The user message for --mc-json: the reference's prompt for one dataset item. */
static int kw_c2c_mc_prompt(const char *item_arg, const char *dataset, char **out) {
    cJSON *item = NULL;
    int rc = 0;
    if (item_arg[0] == '@')
        rc = kw_json_load_file(item_arg + 1, (size_t)1 << 24, &item);
    else
        rc = kw_json_parse(item_arg, strlen(item_arg), &item);
    if (rc < 0) KW_FAIL(rc, "--mc-json: %s", kw_error_detail());
    rc = kw_prompt_from_item(dataset, item, 0, 1, out);
    cJSON_Delete(item);
    return rc;
}

static void kw_c2c_print_escaped(const char *label, const char *s, size_t n) {
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

#define KW_C2C_MAX_SHARERS KW_FUSION_MAX_SHARERS

int kw_cmd_c2c(int argc, char **argv) {
    const char *recv_dir = NULL, *tok_dir = NULL, *prompt = NULL, *mc = NULL, *dataset = "mmlu-redux", *date = NULL;
    const char *sharer_dirs[KW_C2C_MAX_SHARERS], *fuser_dirs[KW_C2C_MAX_SHARERS];
    int n_sharer_dirs = 0, n_fuser_dirs = 0, fp32 = 0, raw = 0;
    const char *order_name = "front", *mode_name = "sequential", *wire_codec = NULL, *wire_gran = "token",
               *wire_scale = "f32";
    double proportion = 1.0;
    int have_proportion = 0;
    long max_new = 64, threads = 0, wire_zstd = 0;
    for (int i = 1; i < argc; ++i) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            kw_c2c_usage(stdout);
            return 0;
        } else if (strcmp(a, "--fp32") == 0) {
            fp32 = 1;
            continue;
        } else if (strcmp(a, "--raw") == 0) {
            raw = 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "kvwire c2c: unknown option or missing value: %s\n", a);
            kw_c2c_usage(stderr);
            return 2;
        }
        ++i;
        if (strcmp(a, "--receiver") == 0) {
            recv_dir = v;
        } else if (strcmp(a, "--sharer") == 0 || strcmp(a, "--fuser") == 0) {
            const int is_sharer = a[2] == 's';
            int *n = is_sharer ? &n_sharer_dirs : &n_fuser_dirs;
            if (*n == KW_C2C_MAX_SHARERS) {
                fprintf(stderr, "kvwire c2c: at most %d sharers\n", KW_C2C_MAX_SHARERS);
                return 2;
            }
            (is_sharer ? sharer_dirs : fuser_dirs)[(*n)++] = v;
        } else if (strcmp(a, "--prompt") == 0) {
            prompt = v;
        } else if (strcmp(a, "--mc-json") == 0) {
            mc = v;
        } else if (strcmp(a, "--dataset") == 0) {
            dataset = v;
        } else if (strcmp(a, "--tokenizer") == 0) {
            tok_dir = v;
        } else if (strcmp(a, "--date") == 0) {
            date = v;
        } else if (strcmp(a, "--order") == 0) {
            order_name = v;
        } else if (strcmp(a, "--mode") == 0) {
            mode_name = v;
        } else if (strcmp(a, "--proportion") == 0) {
            char *end = NULL;
            proportion = strtod(v, &end);
            if (!end || *end || end == v || !(proportion >= 0.0 && proportion <= 1.0)) {
                fprintf(stderr, "kvwire c2c: --proportion wants a number in [0, 1], got '%s'\n", v);
                return 2;
            }
            have_proportion = 1;
        } else if (strcmp(a, "--max-new-tokens") == 0) {
            if (kw_c2c_parse_long(a, v, 0, 1 << 20, &max_new) < 0) return 2;
        } else if (strcmp(a, "--threads") == 0) {
            if (kw_c2c_parse_long(a, v, 0, 1024, &threads) < 0) return 2;
        } else if (strcmp(a, "--wire") == 0) {
            wire_codec = v;
        } else if (strcmp(a, "--wire-gran") == 0) {
            wire_gran = v;
        } else if (strcmp(a, "--wire-scale") == 0) {
            wire_scale = v;
        } else if (strcmp(a, "--wire-zstd") == 0) {
            if (kw_c2c_parse_long(a, v, -7, 22, &wire_zstd) < 0) return 2;
        } else {
            fprintf(stderr, "kvwire c2c: unknown option %s\n", a);
            kw_c2c_usage(stderr);
            return 2;
        }
    }
    if (!recv_dir || n_sharer_dirs == 0 || n_sharer_dirs != n_fuser_dirs || (!prompt) == (!mc)) {
        fprintf(stderr, "kvwire c2c: --receiver, matching --sharer/--fuser pairs and one of --prompt or --mc-json "
                        "are required\n");
        kw_c2c_usage(stderr);
        return 2;
    }
    enum kw_fusion_order order;
    if (strcmp(order_name, "front") == 0) {
        order = KW_FUSION_FRONT;
    } else if (strcmp(order_name, "back") == 0) {
        order = KW_FUSION_BACK;
    } else {
        fprintf(stderr, "kvwire c2c: --order wants front or back\n");
        return 2;
    }
    enum kw_fusion_mode mode;
    if (strcmp(mode_name, "sequential") == 0) {
        mode = KW_FUSION_SEQUENTIAL;
    } else if (strcmp(mode_name, "parallel") == 0) {
        mode = KW_FUSION_PARALLEL;
    } else {
        fprintf(stderr, "kvwire c2c: --mode wants sequential or parallel\n");
        return 2;
    }

    int rc = 0;
    const char *stage = "options";
    kw_backend *be = NULL;
    kw_model *recv = NULL, *sharers[KW_C2C_MAX_SHARERS] = {0};
    kw_fuser *fusers[KW_C2C_MAX_SHARERS] = {0};
    kw_fusion *fusion = NULL;
    kw_tokenizer *tok = NULL;
    kw_kvcache *cache = NULL;
    char *user_msg = NULL, *text = NULL, *completion = NULL;
    int32_t *ids = NULL;
    size_t n_ids = 0, text_len = 0, completion_len = 0;
    kw_fusion_result res = {0};
    kw_c2c_wire wire = {0};

    if (wire_codec) {
        KW_CHECK(kw_c2c_wire_policy(wire_codec, wire_gran, wire_scale, wire_zstd, &wire.pol));
        KW_CHECK(kw_wire_decoder_create(NULL, &wire.dec));
    }
    stage = "backend";
    KW_CHECK(kw_backend_create_cpu((int)threads, &be));
    stage = "load receiver";
    KW_CHECK(kw_model_load(be, recv_dir, NULL, &recv));
    const kw_model_config *cfg = kw_model_get_config(recv);
    kw_fusion_sharer spec[KW_C2C_MAX_SHARERS];
    for (int i = 0; i < n_sharer_dirs; ++i) {
        stage = "load sharer";
        KW_CHECK(kw_model_load(be, sharer_dirs[i], NULL, &sharers[i]));
        stage = "load fuser";
        KW_CHECK(kw_fuser_load(fuser_dirs[i], 0, &fusers[i]));
        spec[i] = (kw_fusion_sharer){sharers[i], fusers[i]};
    }
    stage = "bind fusers";
    KW_CHECK(kw_fusion_create(recv, spec, n_sharer_dirs, 0, &fusion));
    stage = "load tokenizer";
    KW_CHECK(kw_tokenizer_load(tok_dir ? tok_dir : recv_dir, &tok));
    KW_CHECK_IF(kw_tokenizer_vocab_size(tok) > cfg->vocab, KW_E_TOKENIZER,
                "the tokenizer has %d ids, the receiver's vocabulary only %d", (int)kw_tokenizer_vocab_size(tok),
                (int)cfg->vocab);
    for (int i = 0; i < n_sharer_dirs; ++i)
        KW_CHECK_IF(kw_model_get_config(sharers[i])->vocab < kw_tokenizer_vocab_size(tok), KW_E_UNSUPPORTED,
                    "sharer %d has a smaller vocabulary than the receiver's tokenizer: token alignment is not "
                    "implemented",
                    i);

    stage = "prompt";
    if (mc) KW_CHECK(kw_c2c_mc_prompt(mc, dataset, &user_msg));
    const char *message = mc ? user_msg : prompt;
    const char *input = message;
    if (!raw) {
        KW_CHECK_IF(cfg->arch != KW_ARCH_QWEN3 && cfg->arch != KW_ARCH_QWEN2 && cfg->arch != KW_ARCH_LLAMA,
                    KW_E_UNSUPPORTED, "no chat template for %s", kw_arch_name(cfg->arch));
        const enum kw_chat_family family = cfg->arch == KW_ARCH_QWEN3   ? KW_CHAT_QWEN3
                                           : cfg->arch == KW_ARCH_QWEN2 ? KW_CHAT_QWEN25
                                                                        : KW_CHAT_LLAMA32;
        char today[32];
        if (!date) { /* Llama-3.2's "Today Date", as the template's strftime_now("%d %b %Y") */
            const time_t now = time(NULL);
            struct tm tm;
            localtime_r(&now, &tm);
            strftime(today, sizeof today, "%d %b %Y", &tm);
            date = today;
        }
        const kw_chat_message msg = {.role = "user", .content = message};
        const kw_chat_options co = {.add_generation_prompt = 1, .enable_thinking = 0, .date_string = date};
        KW_CHECK(kw_chat_render(family, &msg, 1, &co, &text, &text_len));
        input = text;
    }
    KW_CHECK(kw_tokenizer_encode(tok, input, strlen(input), &ids, &n_ids));
    KW_CHECK_IF(n_ids == 0, KW_E_INVALID_ARG, "the prompt encodes to no tokens");

    stage = "c2c";
    kw_fusion_section sections[3];
    int32_t n_sections = 0;
    const int32_t mask = (int32_t)((1u << n_sharer_dirs) - 1);
    if (have_proportion)
        KW_CHECK(kw_fusion_sections_proportion((int64_t)n_ids, proportion, order, mask, sections, &n_sections));
    else
        KW_CHECK(kw_fusion_sections_standard((int64_t)n_ids, mask, sections, &n_sections));
    const enum kw_dtype cache_dtype = fp32 ? KW_DTYPE_F32 : KW_DTYPE_BF16;
    KW_CHECK(kw_model_create_cache(recv, (int64_t)n_ids + (max_new > 0 ? max_new : 1), cache_dtype, &cache));
    const kw_fusion_options opt = {
        .sections = sections,
        .n_sections = n_sections,
        .mode = mode,
        .numerics = fp32 ? KW_PROJECTOR_FP32 : KW_PROJECTOR_BF16,
        .sharer_cache_dtype = cache_dtype,
        .gen = {.max_new_tokens = (int32_t)max_new, .round = fp32 ? KW_LOGITS_ROUND_NONE : KW_LOGITS_ROUND_AUTO},
        .hook = wire_codec ? kw_c2c_wire_hook : NULL,
        .hook_user = &wire};
    KW_CHECK(kw_fusion_run(fusion, cache, ids, (int64_t)n_ids, &opt, &res));
    KW_CHECK(kw_tokenizer_decode(tok, res.gen.ids, (size_t)res.gen.n, 1, &completion, &completion_len));
    char letter = 0;
    stage = "answer";
    KW_CHECK(kw_answer_extract(completion, completion_len, &letter));

    const kw_fusion_stats *st = &res.stats;
    kw_c2c_print_escaped("answer", completion, completion_len);
    if (letter)
        printf("letter: %c\n", letter);
    else
        printf("letter: null\n");
    printf("prompt_tokens: %zu\n", n_ids);
    printf("sections:");
    for (int32_t i = 0; i < n_sections; ++i)
        printf(" %lld:%s", (long long)sections[i].length,
               sections[i].index > 0 && i + 1 < n_sections ? "fused" : "receiver");
    printf("\n");
    printf("tokens_fused: %lld\n", (long long)st->tokens_fused);
    printf("generated_tokens: %lld%s\n", (long long)res.gen.n, res.gen.stopped_eos ? " (stopped at EOS)" : "");
    printf("layers_fused: %d\n", (int)st->layers_fused);
    printf("layers_skipped: %d\n", (int)st->layers_skipped);
    printf("sharer_kv_bytes: %lld (%s)\n", (long long)st->sharer_kv_bytes, kw_dtype_name(cache_dtype));
    if (wire_codec) {
        printf("wire_codec: %s gran %s scale %s zstd %ld\n", wire_codec, wire.pol.k.granularity ? wire_gran : "none",
               kw_wire_scale_name(wire.pol.k.scale_dtype), wire_zstd);
        printf("wire_blobs: %d\n", (int)wire.blobs);
        printf("wire_bytes: %lld\n", (long long)wire.blob_bytes);
        printf("wire_ratio: %.4f (blob bytes / sharer KV bytes)\n",
               st->sharer_kv_bytes > 0 ? (double)wire.blob_bytes / (double)st->sharer_kv_bytes : 0.0);
    }
    printf("timing_ms: receiver_prefill %.3f sharer_prefill %.3f transfer %.3f projection %.3f last_prompt %.3f "
           "decode %.3f (%lld steps)\n",
           st->receiver_prefill_ms, st->sharer_prefill_ms, st->transfer_ms, st->projection_ms, st->last_prompt_ms,
           st->decode_ms, (long long)st->n_decode);
out:
    if (rc < 0) fprintf(stderr, "kvwire c2c: %s: %s (%s)\n", stage, kw_strerror(rc), kw_error_detail());
    kw_fusion_result_free(&res);
    free(completion);
    free(ids);
    free(text);
    free(user_msg);
    kw_kvcache_free(cache);
    kw_tokenizer_free(tok);
    kw_fusion_free(fusion);
    for (int i = 0; i < KW_C2C_MAX_SHARERS; ++i) {
        kw_fuser_free(fusers[i]);
        kw_model_free(sharers[i]);
    }
    kw_model_free(recv);
    kw_backend_destroy(be);
    kw_c2c_wire_free(&wire);
    return rc < 0 ? 1 : 0;
}
