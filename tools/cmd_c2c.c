/* cmd_c2c.c: `kvwire c2c`: one C2C request in one process: the chat prompt, receiver and sharer prefill, projection
 * into the receiver cache, greedy decoding (c2c/kw_fusion.h). A sharer with another tokenizer goes through token
 * alignment (c2c/kw_align.h: both chat templates, padded id streams, sections cut at the message boundaries), which is
 * on when the fuser's config.json says is_do_alignment (with its alignment_strategy) or when the sharer's tokenizer
 * gives other tokens to the receiver's ids (kw_tokenizer_same_ids); --align overrides. Optionally the selected sharer
 * KV goes through a KVWire encode -> decode round trip on the way (what a receiver would get over the network).
 *
 * stdout, one "key: value" line each: answer (the completion, specials skipped, newlines escaped as \n), letter (the
 * reference extractor's A-D or null), prompt_tokens (with alignment: the padded length), alignment (off or the
 * strategy, and why), with alignment: align_sections (the merged template/message sections with their pads),
 * recv_pads, sharer_pads and decode_pads; then sections (length:fused|receiver), projector_numerics (fp32, bf16 or
 * bf16-fused-norm, c2c/kw_projector.h), tokens_fused, generated_tokens,
 * generated_ids, layers_fused, layers_skipped, sharer_kv_bytes, with --wire: wire_codec, wire_blobs and wire_bytes
 * (measured blob length) and wire_ratio, with --print-alignment and alignment: recv_ids, sharer_ids, message_mask,
 * recv_pad, sharer_pad (JSON arrays), then timing_ms with the stages. Option parsing, prompt building, the wire glue
 * and printing only: the pipeline is in c2c/. */
#include "kw_commands.h"

#include <stdint.h>
#include <errno.h>
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
#include "model/kw_generate.h"
#include "model/kw_model.h"
#include "model/kw_tokenizer.h"
#include "tools/kw_cli.h"
#include "wire/kw_wire.h"

const char kw_cmd_c2c_summary[] = "run one C2C request: prefill both models (token alignment for a sharer of another "
                                  "tokenizer), fuse the sharer KV, decode (answer, letter, timings, KV bytes)";

static void kw_c2c_usage(FILE *f) {
    fprintf(
        f,
        "usage: kvwire c2c --receiver DIR --sharer DIR --fuser DIR (--prompt TEXT | --mc-json ITEM)\n"
        "                  [--proportion P --order front|back] [--max-new-tokens N] [--fp32 | --rmsnorm-rounding R]\n"
        "                  [--wire CODEC [--wire-gran G] [--wire-scale S] [--wire-zstd L] [--wire-dump PREFIX]]\n"
        "                  [--mode sequential|parallel] [--dataset NAME] [--raw] [--tokenizer DIR] [--threads N]\n"
        "                  [--date \"23 Nov 2026\"] [--system TEXT]\n"
        "                  [--align first|longest|off] [--sharer-tokenizer DIR] [--decode-pads reference|masked]\n"
        "                  [--print-alignment]\n"
        "  --sharer/--fuser  may be repeated in pairs for several sharers (every one is selected)\n"
        "  --prompt TEXT     a user message; it is wrapped in the receiver's chat template (Qwen3: thinking\n"
        "                    disabled), unless --raw\n"
        "  --mc-json ITEM    a multiple-choice item {\"question\": ..., \"choices\": [...]} (or @FILE holding one):\n"
        "                    the reference's non-CoT prompt for --dataset (default mmlu-redux), then the template\n"
        "  --system TEXT     a system message before the user message\n"
        "  --proportion P    fuse the first (front) or last (back) floor((L-1) * P) prompt tokens (default 1)\n"
        "  --max-new-tokens  default 64 (the evaluation recipe); decoding also stops at the receiver's EOS ids\n"
        "  --fp32            f32 caches, fp32 projector and fp32 logits (default: bf16 caches, bf16-emulating\n"
        "                    projector, logits rounded as HF does for the receiver's weight dtype)\n"
        "  --rmsnorm-rounding  twice or once: the bf16 projector's RMSNorm rounds the normalized row to bf16 and\n"
        "                    then the weight product (twice, the default: torch <= 2.6, which the C2C reference\n"
        "                    used) or only the weighted row (once: torch >= 2.7)\n"
        "  --wire CODEC      pass the sharer KV through KVWire: bf16, f16, int8, int6, int4, nf4, e4m3, e5m2\n"
        "                    (--wire-gran layer|head|token|groupN, default token; --wire-scale f16|bf16|f32|e8m0,\n"
        "                    default f32; --wire-zstd LEVEL, default 0 = off); one blob per fused section and\n"
        "                    sharer, wire_bytes is its measured length; --wire-dump PREFIX also writes each blob\n"
        "                    to PREFIX.<n>.kvw (kvwire inspect reads them)\n"
        "  --date            Llama-3.2's \"Today Date\" in its chat template (default: today)\n"
        "  Token alignment (a sharer with another tokenizer, one sharer): both prompts are rendered with each model's\n"
        "  chat template and aligned as the C2C reference's TokenAligner does: template sections padded to the\n"
        "  longer side, message tokens mapped 1:1 from the receiver's; message sections are fused, the generation\n"
        "  prompt runs on the receiver only (so not with --raw, --proportion or --order). It is on when the\n"
        "  fuser's config.json says is_do_alignment (its alignment_strategy), or with strategy longest when the\n"
        "  sharer's tokenizer gives other tokens to the receiver's ids.\n"
        "  --align           first or longest: align with that strategy; off: never align\n"
        "  --sharer-tokenizer  the sharer's tokenizer folder (default: the sharer folder; a sharer folder without\n"
        "                    one is taken to share the receiver's ids unless the fuser asks for alignment)\n"
        "  --decode-pads     reference (default): the receiver's pads become visible after the first generated\n"
        "                    token, as RosettaModel.generate does; masked: they stay hidden\n"
        "  --print-alignment with alignment, also print the aligned streams (recv_ids, sharer_ids, message_mask,\n"
        "                    recv_pad, sharer_pad)\n");
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
    const char *dump_prefix; /* --wire-dump: each blob is also written to <prefix>.<n>.kvw (borrowed; NULL: off) */
    FILE *dump;              /* the blob being written, owned */
} kw_c2c_wire;

/* With --wire-dump, appends n bytes of the current blob to its file; the file opens with the header. */
static int kw_c2c_wire_dump(kw_c2c_wire *w, size_t n, int opens, int closes) {
    if (!w->dump_prefix) return 0;
    if (opens) {
        char path[4096];
        const int len = snprintf(path, sizeof path, "%s.%d.kvw", w->dump_prefix, (int)w->blobs);
        KW_RETURN_IF(len < 0 || (size_t)len >= sizeof path, KW_E_INVALID_ARG, "--wire-dump: path too long");
        if (w->dump) fclose(w->dump);
        w->dump = fopen(path, "wb");
        KW_RETURN_IF(!w->dump, KW_E_IO, "--wire-dump: cannot create %s: %s", path, strerror(errno));
    }
    KW_RETURN_IF(!w->dump, KW_E_STATE, "--wire-dump: blob part before its header");
    KW_RETURN_IF(fwrite(w->buf, 1, n, w->dump) != n, KW_E_IO, "--wire-dump: write failed: %s", strerror(errno));
    if (closes) {
        const int bad = fclose(w->dump) != 0;
        w->dump = NULL;
        KW_RETURN_IF(bad, KW_E_IO, "--wire-dump: close failed: %s", strerror(errno));
    }
    return 0;
}

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
        KW_FORWARD(kw_c2c_wire_dump(w, written, 1, 0));
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
    KW_FORWARD(kw_c2c_wire_dump(w, written, 0, 0));
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
        KW_FORWARD(kw_c2c_wire_dump(w, written, 0, 1));
        total += written;
        ++w->blobs;
    }
    w->blob_bytes += (int64_t)total;
    t->wire_bytes = (int64_t)total;
    return 0;
}

static void kw_c2c_wire_free(kw_c2c_wire *w) {
    if (w->dump) fclose(w->dump);
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

/* ------------------------------------------------------------------------------------------------------------
 * Token alignment: on or off, and why
 */

enum { KW_C2C_ALIGN_AUTO, KW_C2C_ALIGN_OFF, KW_C2C_ALIGN_FIRST, KW_C2C_ALIGN_LONGEST };

typedef struct kw_c2c_align_plan {
    int on;                          /* sharer 0 is aligned */
    enum kw_align_strategy strategy; /* when on */
    char reason[160];                /* why on or off */
} kw_c2c_align_plan;

/* Decides for sharer i whether it needs alignment. choice: KW_C2C_ALIGN_*; stok: its tokenizer or NULL (none found).
 */
static int kw_c2c_plan_sharer(int choice, int i, const kw_fuser *fuser, const kw_tokenizer *rtok,
                              const kw_tokenizer *stok, kw_c2c_align_plan *plan) {
    memset(plan, 0, sizeof *plan);
    if (choice == KW_C2C_ALIGN_OFF) {
        snprintf(plan->reason, sizeof plan->reason, "--align off");
        return 0;
    }
    if (choice == KW_C2C_ALIGN_FIRST || choice == KW_C2C_ALIGN_LONGEST) {
        plan->on = 1;
        plan->strategy = choice == KW_C2C_ALIGN_FIRST ? KW_ALIGN_FIRST : KW_ALIGN_LONGEST;
        snprintf(plan->reason, sizeof plan->reason, "--align");
        return 0;
    }
    const kw_fuser_recipe *r = &fuser->recipe;
    if (r->present && r->is_do_alignment) {
        const char *s = r->alignment_strategy ? r->alignment_strategy : "first";
        KW_RETURN_IF(strcmp(s, "first") != 0 && strcmp(s, "longest") != 0, KW_E_FUSER_CONFIG,
                     "fuser %d: config.json alignment_strategy \"%s\" is neither first nor longest", i, s);
        plan->on = 1;
        plan->strategy = s[0] == 'f' ? KW_ALIGN_FIRST : KW_ALIGN_LONGEST;
        snprintf(plan->reason, sizeof plan->reason, "fuser config.json: is_do_alignment, alignment_strategy %s", s);
        KW_RETURN_IF(stok == NULL, KW_E_NOT_FOUND,
                     "fuser %d asks for token alignment, but sharer %d has no tokenizer.json (--sharer-tokenizer DIR)",
                     i, i);
        return 0;
    }
    if (stok && !kw_tokenizer_same_ids(rtok, stok)) {
        plan->on = 1;
        plan->strategy = KW_ALIGN_LONGEST;
        snprintf(plan->reason, sizeof plan->reason, "the tokenizers differ%s",
                 r->present ? " (fuser config.json: is_do_alignment false)" : "");
        return 0;
    }
    snprintf(plan->reason, sizeof plan->reason, "%s",
             stok ? "the tokenizers give the same ids" : "no sharer tokenizer: it takes the receiver's ids");
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * Printing
 */

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

static void kw_c2c_print_ids(const char *label, const int32_t *v, int64_t n) {
    printf("%s: [", label);
    for (int64_t i = 0; i < n; ++i)
        printf(i ? ",%d" : "%d", (int)v[i]);
    printf("]\n");
}

static void kw_c2c_print_flags(const char *label, const uint8_t *v, int64_t n) {
    printf("%s: [", label);
    for (int64_t i = 0; i < n; ++i)
        printf(i ? ",%d" : "%d", (int)v[i]);
    printf("]\n");
}

/* align_sections, recv_pads, sharer_pads. */
static void kw_c2c_print_aligned(const kw_align_result *ar) {
    int64_t rp = 0, sp = 0;
    printf("align_sections:");
    for (int32_t s = 0; s < ar->n_sections; ++s) {
        const kw_align_section *sec = &ar->sections[s];
        int64_t r = 0, p = 0;
        for (int64_t i = sec->start; i < sec->end; ++i)
            r += ar->recv_pad[i], p += ar->sharer_pad[i];
        printf(" %lld:%s", (long long)(sec->end - sec->start), sec->type == KW_ALIGN_MESSAGE ? "message" : "template");
        if (r || p) printf("(recv_pads=%lld,sharer_pads=%lld)", (long long)r, (long long)p);
        rp += r, sp += p;
    }
    printf("\nrecv_pads: %lld\nsharer_pads: %lld\n", (long long)rp, (long long)sp);
}

/* ------------------------------------------------------------------------------------------------------------
 * The command
 */

/* Options that cannot go together, or NULL. forced_align: --align first|longest; cut: --proportion or --order. */
static const char *kw_c2c_conflict(int raw, int system, int forced_align, int n_sharers, int cut, int sharer_tok) {
    if (raw && system) return "--system needs the chat template (not with --raw)";
    if (sharer_tok && n_sharers > 1) return "--sharer-tokenizer takes one sharer";
    if (!forced_align) return NULL;
    if (n_sharers > 1) return "token alignment takes one sharer";
    if (raw) return "token alignment renders the chat templates: not with --raw";
    if (cut) return "token alignment fuses the message sections: not with --proportion or --order";
    return NULL;
}

#define KW_C2C_MAX_SHARERS KW_FUSION_MAX_SHARERS

int kw_cmd_c2c(int argc, char **argv) {
    static const char *const orders[] = {"front", "back", NULL};
    static const char *const modes[] = {"sequential", "parallel", NULL};
    static const char *const aligns[] = {"auto", "off", "first", "longest", NULL};
    static const char *const pads_names[] = {"reference", "masked", NULL};
    static const char *const norm_roundings[] = {"twice", "once", NULL};
    const char *recv_dir = NULL, *tok_dir = NULL, *sharer_tok_dir = NULL, *prompt = NULL, *mc = NULL;
    const char *dataset = "mmlu-redux", *date = NULL, *system_msg = NULL;
    const char *sharer_dirs[KW_C2C_MAX_SHARERS], *fuser_dirs[KW_C2C_MAX_SHARERS];
    int n_sharer_dirs = 0, n_fuser_dirs = 0, fp32 = 0, raw = 0, print_alignment = 0;
    int order_i = -1, mode_i = 0, align_choice = KW_C2C_ALIGN_AUTO, pads_i = 0, norm_i = -1;
    const char *wire_codec = NULL, *wire_gran = "token", *wire_scale = "f32", *wire_dump = NULL;
    double proportion = -1.0; /* < 0: not given */
    int64_t max_new = 64, threads = 0, wire_zstd = 0;
    const kw_cli_option opts[] = {
        KW_CLI_STR("--receiver", &recv_dir),
        KW_CLI_LIST("--sharer", sharer_dirs, &n_sharer_dirs, KW_C2C_MAX_SHARERS),
        KW_CLI_LIST("--fuser", fuser_dirs, &n_fuser_dirs, KW_C2C_MAX_SHARERS),
        KW_CLI_STR("--prompt", &prompt),
        KW_CLI_STR("--mc-json", &mc),
        KW_CLI_STR("--system", &system_msg),
        KW_CLI_STR("--dataset", &dataset),
        KW_CLI_STR("--tokenizer", &tok_dir),
        KW_CLI_STR("--sharer-tokenizer", &sharer_tok_dir),
        KW_CLI_STR("--date", &date),
        KW_CLI_CHOICE("--order", &order_i, orders),
        KW_CLI_CHOICE("--mode", &mode_i, modes),
        KW_CLI_CHOICE("--align", &align_choice, aligns),
        KW_CLI_CHOICE("--decode-pads", &pads_i, pads_names),
        KW_CLI_CHOICE("--rmsnorm-rounding", &norm_i, norm_roundings),
        KW_CLI_REAL("--proportion", &proportion, 0.0, 1.0),
        KW_CLI_INT("--max-new-tokens", &max_new, 0, 1 << 20),
        KW_CLI_INT("--threads", &threads, 0, 1024),
        KW_CLI_STR("--wire", &wire_codec),
        KW_CLI_STR("--wire-gran", &wire_gran),
        KW_CLI_STR("--wire-scale", &wire_scale),
        KW_CLI_INT("--wire-zstd", &wire_zstd, -7, 22),
        KW_CLI_STR("--wire-dump", &wire_dump),
        KW_CLI_FLAG("--fp32", &fp32),
        KW_CLI_FLAG("--raw", &raw),
        KW_CLI_FLAG("--print-alignment", &print_alignment),
    };
    const int st = KW_CLI_PARSE("kvwire c2c", argc, argv, opts, kw_c2c_usage);
    if (st != KW_CLI_RUN) return st;
    if (!recv_dir || n_sharer_dirs == 0 || n_sharer_dirs != n_fuser_dirs || (!prompt) == (!mc)) {
        fprintf(stderr, "kvwire c2c: --receiver, matching --sharer/--fuser pairs and one of --prompt or --mc-json "
                        "are required\n");
        kw_c2c_usage(stderr);
        return 2;
    }
    const int have_proportion = proportion >= 0.0, forced_align = align_choice >= KW_C2C_ALIGN_FIRST;
    const char *usage_error = kw_c2c_conflict(raw, system_msg != NULL, forced_align, n_sharer_dirs,
                                              have_proportion || order_i >= 0, sharer_tok_dir != NULL);
    if (usage_error) {
        fprintf(stderr, "kvwire c2c: %s\n", usage_error);
        return 2;
    }
    if (fp32 && norm_i >= 0) {
        fprintf(stderr, "kvwire c2c: --rmsnorm-rounding sets the bf16 projector's rule: not with --fp32\n");
        return 2;
    }
    const enum kw_fusion_order order = order_i == 1 ? KW_FUSION_BACK : KW_FUSION_FRONT;
    const enum kw_fusion_mode mode = mode_i == 1 ? KW_FUSION_PARALLEL : KW_FUSION_SEQUENTIAL;

    int rc = 0;
    const char *stage = "options";
    kw_backend *be = NULL;
    kw_model *recv = NULL, *sharers[KW_C2C_MAX_SHARERS] = {0};
    kw_fuser *fusers[KW_C2C_MAX_SHARERS] = {0};
    kw_fusion *fusion = NULL;
    kw_tokenizer *tok = NULL, *stoks[KW_C2C_MAX_SHARERS] = {0};
    kw_aligner *aligner = NULL;
    kw_kvcache *cache = NULL;
    char *user_msg = NULL, *text = NULL, *completion = NULL;
    int32_t *ids = NULL;
    size_t n_ids = 0, text_len = 0, completion_len = 0;
    kw_align_result ar = {0};
    kw_fusion_section *aligned_sections = NULL;
    kw_fusion_result res = {0};
    kw_c2c_wire wire = {0};
    kw_c2c_align_plan plan = {0};

    if (wire_codec) {
        KW_CHECK(kw_c2c_wire_policy(wire_codec, wire_gran, wire_scale, (long)wire_zstd, &wire.pol));
        KW_CHECK(kw_wire_decoder_create(NULL, &wire.dec));
        wire.dump_prefix = wire_dump;
    } else if (wire_dump) {
        fprintf(stderr, "kvwire c2c: --wire-dump needs --wire CODEC\n");
        return 2;
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

    /* alignment: the sharers' tokenizers (a sharer folder without one shares the receiver's ids, unless the fuser or
     * --align says otherwise) */
    stage = "load sharer tokenizer";
    for (int i = 0; i < n_sharer_dirs && align_choice != KW_C2C_ALIGN_OFF; ++i) {
        rc = kw_tokenizer_load(sharer_tok_dir ? sharer_tok_dir : sharer_dirs[i], &stoks[i]);
        if (rc == KW_E_NOT_FOUND && !sharer_tok_dir && !forced_align) rc = 0; /* no tokenizer.json there */
        if (rc < 0 && !forced_align)                                          /* needed only to compare the ids */
            rc = kw_error_set(rc, "%s (--align off gives sharer %d the receiver's ids)", kw_error_detail(), i);
        KW_CHECK(rc);
        KW_CHECK_IF(stoks[i] && kw_tokenizer_vocab_size(stoks[i]) > kw_model_get_config(sharers[i])->vocab,
                    KW_E_TOKENIZER, "sharer %d's tokenizer has %d ids, its vocabulary only %d", i,
                    (int)kw_tokenizer_vocab_size(stoks[i]), (int)kw_model_get_config(sharers[i])->vocab);
    }
    stage = "alignment";
    for (int i = 0; i < n_sharer_dirs; ++i) {
        kw_c2c_align_plan p;
        KW_CHECK(kw_c2c_plan_sharer(align_choice, i, fusers[i], tok, stoks[i], &p));
        if (i == 0) plan = p;
        KW_CHECK_IF(p.on && n_sharer_dirs > 1, KW_E_UNSUPPORTED,
                    "sharer %d needs token alignment (%s), which takes one sharer", i, p.reason);
        KW_CHECK_IF(p.on && stoks[i] == NULL, KW_E_NOT_FOUND, "sharer %d has no tokenizer (--sharer-tokenizer DIR)", i);
        KW_CHECK_IF(!p.on && kw_model_get_config(sharers[i])->vocab < kw_tokenizer_vocab_size(tok), KW_E_UNSUPPORTED,
                    "sharer %d has a smaller vocabulary than the receiver's tokenizer, so it cannot take the "
                    "receiver's ids: token alignment is off (%s)",
                    i, p.reason);
    }
    KW_CHECK_IF(plan.on && raw, KW_E_INVALID_ARG,
                "token alignment (%s) renders the chat templates: --raw cannot be used", plan.reason);
    KW_CHECK_IF(plan.on && (have_proportion || order_i >= 0), KW_E_INVALID_ARG,
                "token alignment (%s) fuses the message sections: --proportion and --order cannot be used",
                plan.reason);

    stage = "prompt";
    if (mc) KW_CHECK(kw_c2c_mc_prompt(mc, dataset, &user_msg));
    kw_chat_message msgs[2];
    size_t n_msgs = 0;
    if (system_msg) msgs[n_msgs++] = (kw_chat_message){.role = "system", .content = system_msg};
    msgs[n_msgs++] = (kw_chat_message){.role = "user", .content = mc ? user_msg : prompt};
    char today[32];
    if (!date) { /* Llama-3.2's "Today Date", as the template's strftime_now("%d %b %Y") */
        const time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        strftime(today, sizeof today, "%d %b %Y", &tm);
        date = today;
    }
    enum kw_chat_family family = KW_CHAT_QWEN3;
    if (!raw) KW_CHECK(kw_chat_family_for_model(recv_dir, cfg->arch, &family));
    if (plan.on) {
        enum kw_chat_family sharer_family = KW_CHAT_QWEN3;
        KW_CHECK(kw_chat_family_for_model(sharer_dirs[0], kw_model_get_config(sharers[0])->arch, &sharer_family));
        kw_align_side rs, ss;
        KW_CHECK(kw_align_side_init(tok, family, &rs));
        KW_CHECK(kw_align_side_init(stoks[0], sharer_family, &ss));
        KW_CHECK(kw_aligner_create(&rs, &ss, plan.strategy, &aligner));
        const kw_align_chat_options co = {.add_generation_prompt = 1, .enable_thinking = 0, .date_string = date};
        KW_CHECK(kw_aligner_align_chat(aligner, msgs, n_msgs, &co, &ar));
        n_ids = (size_t)ar.n;
    } else {
        const char *input = msgs[n_msgs - 1].content;
        if (!raw) {
            const kw_chat_options co = {.add_generation_prompt = 1, .enable_thinking = 0, .date_string = date};
            KW_CHECK(kw_chat_render(family, msgs, n_msgs, &co, &text, &text_len));
            input = text;
        }
        KW_CHECK(kw_tokenizer_encode(tok, input, strlen(input), &ids, &n_ids));
        KW_CHECK_IF(n_ids == 0, KW_E_INVALID_ARG, "the prompt encodes to no tokens");
    }

    stage = "c2c";
    const enum kw_dtype cache_dtype = fp32 ? KW_DTYPE_F32 : KW_DTYPE_BF16;
    KW_CHECK(kw_model_create_cache(recv, (int64_t)n_ids + (max_new > 0 ? max_new : 1), cache_dtype, &cache));
    kw_fusion_options opt = {
        .mode = mode,
        .numerics = fp32          ? KW_PROJECTOR_FP32
                    : norm_i == 1 ? KW_PROJECTOR_BF16_FUSED_NORM
                                  : KW_PROJECTOR_BF16,
        .sharer_cache_dtype = cache_dtype,
        .gen = {.max_new_tokens = (int32_t)max_new, .round = fp32 ? KW_LOGITS_ROUND_NONE : KW_LOGITS_ROUND_AUTO},
        .hook = wire_codec ? kw_c2c_wire_hook : NULL,
        .hook_user = &wire};
    kw_fusion_section sections[3];
    const kw_fusion_section *secs = sections;
    int32_t n_sections = 0;
    if (plan.on) {
        KW_CHECK(
            kw_align_run(fusion, cache, &ar, &opt, pads_i == 1 ? KW_ALIGN_PADS_MASKED : KW_ALIGN_PADS_REFERENCE, &res));
        KW_CHECK(kw_align_fusion_sections(&ar, 1, &aligned_sections, &n_sections));
        secs = aligned_sections;
    } else {
        const int32_t mask = (int32_t)((1u << n_sharer_dirs) - 1);
        if (have_proportion)
            KW_CHECK(kw_fusion_sections_proportion((int64_t)n_ids, proportion, order, mask, sections, &n_sections));
        else
            KW_CHECK(kw_fusion_sections_standard((int64_t)n_ids, mask, sections, &n_sections));
        opt.sections = sections;
        opt.n_sections = n_sections;
        KW_CHECK(kw_fusion_run(fusion, cache, ids, (int64_t)n_ids, &opt, &res));
    }
    KW_CHECK(kw_tokenizer_decode(tok, res.gen.ids, (size_t)res.gen.n, 1, &completion, &completion_len));
    char letter = 0;
    stage = "answer";
    KW_CHECK(kw_answer_extract(completion, completion_len, &letter));

    const kw_fusion_stats *stats = &res.stats;
    kw_c2c_print_escaped("answer", completion, completion_len);
    if (letter)
        printf("letter: %c\n", letter);
    else
        printf("letter: null\n");
    printf("prompt_tokens: %zu\n", n_ids);
    printf("alignment: %s (%s)\n", plan.on ? (plan.strategy == KW_ALIGN_FIRST ? "first" : "longest") : "off",
           plan.reason);
    if (plan.on) {
        kw_c2c_print_aligned(&ar);
        printf("decode_pads: %s\n", pads_names[pads_i]);
    }
    printf("sections:");
    for (int32_t i = 0; i < n_sections; ++i)
        printf(" %lld:%s", (long long)secs[i].length, secs[i].index > 0 && i + 1 < n_sections ? "fused" : "receiver");
    printf("\n");
    printf("projector_numerics: %s\n", kw_projector_numerics_name(opt.numerics));
    printf("tokens_fused: %lld\n", (long long)stats->tokens_fused);
    printf("generated_tokens: %lld%s\n", (long long)res.gen.n, res.gen.stopped_eos ? " (stopped at EOS)" : "");
    kw_c2c_print_ids("generated_ids", res.gen.ids, res.gen.n);
    printf("layers_fused: %d\n", (int)stats->layers_fused);
    printf("layers_skipped: %d\n", (int)stats->layers_skipped);
    printf("sharer_kv_bytes: %lld (%s)\n", (long long)stats->sharer_kv_bytes, kw_dtype_name(cache_dtype));
    if (wire_codec) {
        printf("wire_codec: %s gran %s scale %s zstd %lld\n", wire_codec, wire.pol.k.granularity ? wire_gran : "none",
               kw_wire_scale_name(wire.pol.k.scale_dtype), (long long)wire_zstd);
        printf("wire_blobs: %d\n", (int)wire.blobs);
        printf("wire_bytes: %lld\n", (long long)wire.blob_bytes);
        printf("wire_ratio: %.4f (blob bytes / sharer KV bytes)\n",
               stats->sharer_kv_bytes > 0 ? (double)wire.blob_bytes / (double)stats->sharer_kv_bytes : 0.0);
    }
    if (print_alignment && plan.on) {
        kw_c2c_print_ids("recv_ids", ar.recv_ids, ar.n);
        kw_c2c_print_ids("sharer_ids", ar.sharer_ids, ar.n);
        kw_c2c_print_flags("message_mask", ar.message_mask, ar.n);
        kw_c2c_print_flags("recv_pad", ar.recv_pad, ar.n);
        kw_c2c_print_flags("sharer_pad", ar.sharer_pad, ar.n);
    }
    printf("timing_ms: receiver_prefill %.3f sharer_prefill %.3f transfer %.3f projection %.3f last_prompt %.3f "
           "decode %.3f (%lld steps)\n",
           stats->receiver_prefill_ms, stats->sharer_prefill_ms, stats->transfer_ms, stats->projection_ms,
           stats->last_prompt_ms, stats->decode_ms, (long long)stats->n_decode);
out:
    if (rc < 0) fprintf(stderr, "kvwire c2c: %s: %s (%s)\n", stage, kw_strerror(rc), kw_error_detail());
    kw_fusion_result_free(&res);
    kw_align_result_free(&ar);
    free(aligned_sections);
    free(completion);
    free(ids);
    free(text);
    free(user_msg);
    kw_kvcache_free(cache);
    kw_aligner_free(aligner);
    kw_tokenizer_free(tok);
    kw_fusion_free(fusion);
    for (int i = 0; i < KW_C2C_MAX_SHARERS; ++i) {
        kw_tokenizer_free(stoks[i]);
        kw_fuser_free(fusers[i]);
        kw_model_free(sharers[i]);
    }
    kw_model_free(recv);
    kw_backend_destroy(be);
    kw_c2c_wire_free(&wire);
    return rc < 0 ? 1 : 0;
}
