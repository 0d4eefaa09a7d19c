/* cmd_c2c.c: `kvwire c2c`: one request in one process, through the same two halves the daemons run, joined in
 * memory: the sharer half (c2c/kw_share.h: layer-by-layer prefill, token selection; sharer/kw_share_wire.h: KVWire
 * encoding with --wire) and the receiver half (receiver/kw_receive.h: decoding, fusion or kv_direct, generation).
 * Modes c2c, kv_direct, receiver_only and text_relay (c2c/kw_relay.h). A sharer with another tokenizer goes through
 * token alignment (c2c/kw_align.h), on when the fuser's config.json says is_do_alignment or the tokenizers differ;
 * --align overrides.
 *
 * stdout, one "key: value" line each: answer (the completion, specials skipped, newlines escaped as \n), letter (the
 * reference extractor's A-D or null), mode, prompt_tokens (with alignment: the padded length), alignment (off or the
 * strategy, and why), with alignment: align_sections, recv_pads, sharer_pads and decode_pads; then sections
 * (length:fused|transferred|receiver), projector_numerics (c2c), selection and tokens_sent (c2c, kv_direct),
 * tokens_fused (c2c), target_subsets (the receiver-aware selections' SHARE_TARGETS frames), generated_tokens,
 * generated_ids, layers_fused and layers_skipped (c2c), kv_store (kv_direct: direct, requantized, dense or none, the
 * rows each way and why not direct), sharer_kv_bytes (the selected K/V at the cache dtype),
 * relay_tokens, relay_bytes, relay_text (text_relay), with --wire: wire_codec, wire_blobs, wire_bytes (measured blob
 * length) and wire_ratio, with --budget-bytes: budget (cap, used, slack, the smallest cap the request takes) and
 * budget_tokens (the allocation histogram), with --print-alignment and alignment: recv_ids, sharer_ids, message_mask,
 * recv_pad, sharer_pad (JSON arrays), with --refine-threshold: refine (the metric measured, whether round two ran)
 * and refine_round_two (its bytes, tokens, rows and sharer time; wire_bytes and tokens_sent above count both rounds),
 * then timing_ms with the stages (and the receiver-aware selections' scoring_prefill and scoring_projection at the
 * sharer). Option parsing, prompt building, the in-memory link and printing only: the pipeline is in c2c/, sharer/
 * and receiver/. */
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
#include "c2c/kw_request.h"
#include "c2c/kw_rscore.h"
#include "c2c/kw_rselect.h"
#include "c2c/kw_share.h"
#include "common/kw_json.h"
#include "common/kw_status.h"
#include "common/kw_time.h"
#include "kernels/kw_backend.h"
#include "model/kw_chat.h"
#include "model/kw_generate.h"
#include "model/kw_model.h"
#include "model/kw_tokenizer.h"
#include "receiver/kw_receive.h"
#include "receiver/kw_receive_preview.h"
#include "sharer/kw_share_request.h"
#include "tools/kw_cli.h"
#include "wire/kw_wire.h"
#include "wire/kw_wire_alloc.h"

const char kw_cmd_c2c_summary[] = "run one C2C request: prefill both models (token alignment for a sharer of another "
                                  "tokenizer), fuse the sharer KV, decode (answer, letter, timings, KV bytes)";

static void kw_c2c_usage(FILE *f) {
    fprintf(
        f,
        "usage: kvwire c2c --receiver DIR [--sharer DIR --fuser DIR]... (--prompt TEXT | --mc-json ITEM)\n"
        "                  [--mode c2c|kv_direct|receiver_only|text_relay] [--fusion sequential|parallel]\n"
        "                  [--select full|front|back|random|knorm_topk|vnorm_topk|proj_vnorm_topk|\n"
        "                   delta_proj_vnorm_topk [--select-proportion P]\n"
        "                   [--min-tokens N] [--seed N] [--scoring local|receiver [--preview-codec C[:G]]]]\n"
        "                  [--proportion P --order front|back]\n"
        "                  [--cache int8|int6|int4 [--cache-page-tokens N] [--requantize]]\n"
        "                  [--cache-layer L=int8|int6|int4|bf16 ...]\n"
        "                  [--wire CODEC [--wire-gran G] [--wire-scale S] [--wire-zstd L] [--wire-rans] [--wire-dump "
        "PREFIX]]\n"
        "                  [--budget-bytes N [--budget-codecs LIST] [--budget-mode tokens|kvcomm_like|qkvcomm_like]]\n"
        "                  [--refine-threshold X --refine-proportion P [--refine-metric margin|entropy]]\n"
        "                  [--max-new-tokens N] [--fp32 | --rmsnorm-rounding R] [--dataset NAME] [--raw]\n"
        "                  [--tokenizer DIR] [--threads N] [--date \"23 Nov 2026\"] [--system TEXT]\n"
        "                  [--align first|longest|off] [--sharer-tokenizer DIR] [--decode-pads reference|masked]\n"
        "                  [--print-alignment] [--relay-max-tokens N] [--relay-bytes N]\n"
        "                  [--relay-style generated|raw|extractive]\n"
        "  The request runs as the two daemons run it: the sharer half prefills layer by layer and hands over each\n"
        "  layer's selected rows (through a real KVWire blob with --wire), the receiver half applies them as they\n"
        "  arrive, joined in memory instead of a socket.\n"
        "  --mode            c2c (default): the sharers' KV through their fusers; kv_direct: the receiver's own model\n"
        "                    prefills the shared sections and its K/V become the receiver's (no --sharer/--fuser);\n"
        "                    receiver_only: no transfer; text_relay: the --sharer writes a background message\n"
        "                    (c2c_spec §5.5) that the receiver reads before the prompt\n"
        "  --sharer/--fuser  may be repeated in pairs for several sharers (every one is selected)\n"
        "  --fusion          sequential (default) or parallel application of several sharers\n"
        "  --select          which tokens of each sent layer travel (default full); --select-proportion P of them\n"
        "                    (default 1), at least --min-tokens (default 1); random draws with --seed; the norm\n"
        "                    modes keep the largest K or V norms (ties to the lower position). kv_direct uses one\n"
        "                    selection for every layer (positions left out are hidden from the receiver).\n"
        "                    proj_vnorm_topk and delta_proj_vnorm_topk (c2c only) score with the receiver:\n"
        "                    the norm of the fused V (or of fused V from the --wire-quantized rows minus the\n"
        "                    receiver's own V) over the receiver's own prefill; each receiver layer fuses its own\n"
        "                    top-k, the sharer sends their union per sharer layer and which rows each receiver\n"
        "                    layer takes (target_subsets: the SHARE_TARGETS frames sharerd would send; "
        "c2c/kw_rscore.h)\n"
        "  --scoring         local (default): the sharer scores with the receiver model and fuser; receiver (with\n"
        "                    --wire CODEC): the sharer sends a preview (every row of each sent layer at\n"
        "                    --preview-codec CODEC[:GRAN], default int4:token, f32 scales), the receiver scores the\n"
        "                    preview rows as the sharer rows (delta: quantized again with --wire), sends back its\n"
        "                    selection (c2c/kw_rselect.h) and the sharer sends those rows at --wire; prints scoring\n"
        "                    and scoring_bytes (preview, selection, final, total)\n"
        "  --prompt TEXT     a user message; it is wrapped in the receiver's chat template (Qwen3: thinking\n"
        "                    disabled), unless --raw\n"
        "  --mc-json ITEM    a multiple-choice item {\"question\": ..., \"choices\": [...]} (or @FILE holding one):\n"
        "                    the reference's non-CoT prompt for --dataset (default mmlu-redux), then the template\n"
        "  --system TEXT     a system message before the user message\n"
        "  --proportion P    share the first (front) or last (back) floor((L-1) * P) prompt tokens (default 1)\n"
        "  --max-new-tokens  default 64 (the evaluation recipe); decoding also stops at the receiver's EOS ids\n"
        "  --cache int8|int6|int4  kv_direct: the receiver's cache quantized in pages of --cache-page-tokens rows\n"
        "                    (default 64); --wire cache then asks the sharer for that layout (keys int per channel\n"
        "                    over a page, values per 32 channels, log8 scales) and the sections are stored as pages\n"
        "                    without requantizing (kv_store: direct); --requantize decodes and quantizes them again\n"
        "  --cache-layer     kv_direct: layer L's cache codec instead of --cache's (bf16 without --cache;\n"
        "                    repeatable; L from 0, or -1 for the last layer; as in kvwire generate); not with\n"
        "                    --fp32 or --wire cache (one layout for every layer)\n"
        "  --fp32            f32 caches, fp32 projector and fp32 logits (default: bf16 caches, bf16-emulating\n"
        "                    projector, logits rounded as HF does for the receiver's weight dtype)\n"
        "  --rmsnorm-rounding  twice or once: the bf16 projector's RMSNorm rounds the normalized row to bf16 and\n"
        "                    then the weight product (twice, the default: torch <= 2.6, which the C2C reference\n"
        "                    used) or only the weighted row (once: torch >= 2.7)\n"
        "  --wire CODEC      send the KV as KVWire: bf16, f16, int8, int6, int4, nf4, e4m3, e5m2 (--wire-gran\n"
        "                    layer|head|token|groupN, default token; --wire-scale f16|bf16|f32|e8m0|log8,\n"
        "                    default f32; --wire-zstd LEVEL, default 0 = off); one blob per sent section and sharer,\n"
        "                    wire_bytes is their measured length; --wire-dump PREFIX also writes each blob to\n"
        "                    PREFIX.<n>.kvw\n"
        "                    (kvwire inspect reads them). KVWire v1.1: the codecs int3, int2 and -asym zero points\n"
        "                    (int4-asym), the granularity channelL (a scale per channel over L tokens), --wire-value\n"
        "                    CODEC[:GRAN] for V apart from K, --wire-outliers F (that share of K and V elements sent\n"
        "                    exact), --wire-pre-rope (kv_direct: keys sent before RoPE, rotated back by the "
        "receiver),\n"
        "                    --wire-rotate k|v|kv (those tensors sent Hadamard-rotated, FORMAT.md 5.12; head_dim a\n"
        "                    power of two), --wire-clip k|v|kv (the encoder clips those tensors' integer scales to\n"
        "                    the least squared error, FORMAT.md 5.13), --wire-qmax-k N, --wire-qmax-v N (the\n"
        "                    encoder holds K's or V's integer codes to +-N with the scale for that range, a coarser\n"
        "                    step for --wire-zstd to store in fewer bits, FORMAT.md 5.14), --wire-rans (each\n"
        "                    section body coded by the static rANS byte coder, FORMAT.md 5.15, where smaller; with\n"
        "                    --wire-zstd the smaller of the two).\n"
        "                    Without --wire the rows go across in memory, exactly\n"
        "  --budget-bytes N  c2c, kv_direct: a hard cap on every blob of the request together (headers, indices,\n"
        "                    scales,\n"
        "                    checksums: the --wire-dump files add up to at most N; several sharers share N equally):\n"
        "                    each token of each sent layer is dropped or sent with one of --budget-codecs (default\n"
        "                    int4,int6,int8,bf16, with --wire-gran token|groupN and --wire-scale; --wire-zstd\n"
        "                    applies) by a rate-distortion allocator on the codecs' measured error, weighted by the\n"
        "                    --select norm score (vnorm_topk, knorm_topk) or uniformly; the --select rows are the\n"
        "                    candidates. Implies KVWire (not with --wire CODEC). A cap below the request's minimum\n"
        "                    (headers and one token per layer) is refused, naming the minimum. kv_direct keeps\n"
        "                    the same positions in every layer (chosen at the first layer so that every layer can\n"
        "                    carry them at the cheapest codec); only the codec of a kept position varies by layer\n"
        "  --budget-mode     tokens (default): the allocator above; kvcomm_like: whole layers, every selected token\n"
        "                    at the one --budget-codecs codec (default int8), as many layers as fit, middle layers\n"
        "                    first, the others not sent nor fused (c2c only); qkvcomm_like: every layer at the first\n"
        "                    of two codecs (default int4,int8), upgraded to the second deepest layer first while the\n"
        "                    cap holds it (docs/HTTP_API.md \"budget_mode\")\n"
        "  --refine-threshold X  c2c (one sharer), kv_direct: two-round refinement. After round one the receiver\n"
        "                    measures the first answer token (--refine-metric margin, the default: top-1 minus top-2\n"
        "                    logit, round two when below X; entropy: of the softmax in nats, round two when above X)\n"
        "                    and may have the sharer prefill again and send the tokens --refine-proportion P (above\n"
        "                    --select-proportion) adds, applied on top (docs/PROTOCOL.md \"Two-round refinement\");\n"
        "                    prints refine and refine_round_two, wire_bytes and tokens_sent count both rounds\n"
        "  --relay-max-tokens  text_relay: the sharer's reply length (default 256); --relay-bytes N caps it in UTF-8\n"
        "                    bytes at a character boundary\n"
        "  --relay-style     text_relay: the message is the sharer's reply (generated, the default), the question\n"
        "                    itself capped at a character boundary (raw), or its whole sentences while they fit the\n"
        "                    cap, whitespace collapsed (extractive); raw and extractive run no sharer model\n"
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
 * The in-memory transport between the halves: the sharer half's output (KVWire blob bytes, or with no --wire the
 * rows themselves) kept per sharer, then fed to the receiver half in order.
 */

typedef struct kw_c2c_blob {
    unsigned char *data;
    size_t len;
} kw_c2c_blob;

typedef struct kw_c2c_rows {
    int32_t section, layer;
    int64_t n;
    int64_t *positions;
    float *k, *v;
} kw_c2c_rows;

typedef struct kw_c2c_targets { /* one sent layer's per-target subsets (the receiver-aware selections) */
    int32_t section, layer, n;
    int32_t layers[KW_RECEIVE_MAX_TARGETS];
    uint8_t *masks; /* n * mask_bytes */
    int64_t mask_bytes;
} kw_c2c_targets;

typedef struct kw_c2c_stream { /* one sharer's output */
    kw_c2c_blob *blobs;        /* per sent section (wire) */
    int32_t n_blobs;
    kw_c2c_rows *rows; /* per sent layer (no wire) */
    int32_t n_rows, cap_rows;
    kw_c2c_targets *targets; /* per sent layer with per-target subsets */
    int32_t n_targets, cap_targets;
} kw_c2c_stream;

typedef struct kw_c2c_link {
    kw_c2c_stream streams[KW_FUSION_MAX_SHARERS];
    int32_t sharer;          /* the sharer being run */
    const char *dump_prefix; /* --wire-dump: every blob also goes to <prefix>.<n>.kvw (borrowed; NULL: off) */
    int32_t dumped;
    /* kvcomm_like: the sharer layers each sharer sends (the receiver fuses only those) and the candidates left out */
    int planned_layers;
    int32_t layers[KW_FUSION_MAX_SHARERS][KW_WIRE_MAX_LAYERS];
    int32_t n_layers[KW_FUSION_MAX_SHARERS];
    int32_t layers_unsent;
    /* the per-target subsets: SHARE_TARGETS frames as sharerd would send them, and their bytes */
    int32_t target_frames;
    int64_t target_bytes;
    int targets_chosen; /* scoring: receiver: the receiver made the subsets, no SHARE_TARGETS frame is sent */
} kw_c2c_link;

static int kw_c2c_link_write(void *user, int32_t blob, const void *data, size_t n) {
    kw_c2c_link *l = user;
    kw_c2c_stream *s = &l->streams[l->sharer];
    if (blob >= s->n_blobs) {
        kw_c2c_blob *b = realloc(s->blobs, (size_t)(blob + 1) * sizeof *b);
        KW_RETURN_IF(b == NULL, KW_E_NOMEM, "c2c: out of memory");
        memset(b + s->n_blobs, 0, (size_t)(blob + 1 - s->n_blobs) * sizeof *b);
        s->blobs = b;
        s->n_blobs = blob + 1;
    }
    kw_c2c_blob *b = &s->blobs[blob];
    unsigned char *d = realloc(b->data, b->len + n);
    KW_RETURN_IF(d == NULL, KW_E_NOMEM, "c2c: cannot hold %zu blob bytes", b->len + n);
    memcpy(d + b->len, data, n);
    b->data = d;
    b->len += n;
    return 0;
}

/* Room for one more entry of size bytes in the array *items of *cap entries holding n (doubling, from first). */
static int kw_c2c_grow(void **items, int32_t *cap, int32_t n, size_t size, int32_t first) {
    if (n < *cap) return 0;
    const int32_t next = *cap ? 2 * *cap : first;
    void *p = realloc(*items, (size_t)next * size);
    KW_RETURN_IF(p == NULL, KW_E_NOMEM, "c2c: out of memory");
    *items = p;
    *cap = next;
    return 0;
}

static int kw_c2c_link_rows(void *user, const kw_share_layer *layer) {
    kw_c2c_link *l = user;
    kw_c2c_stream *s = &l->streams[l->sharer];
    KW_FORWARD(kw_c2c_grow((void **)&s->rows, &s->cap_rows, s->n_rows, sizeof *s->rows, 16));
    kw_c2c_rows *r = &s->rows[s->n_rows];
    memset(r, 0, sizeof *r);
    const size_t floats = (size_t)(layer->n_rows * layer->n_heads * layer->head_dim);
    r->positions = malloc((size_t)layer->n_rows * sizeof *r->positions);
    r->k = malloc(floats * sizeof(float));
    r->v = malloc(floats * sizeof(float));
    if (!r->positions || !r->k || !r->v) {
        free(r->positions), free(r->k), free(r->v);
        KW_FAIL(KW_E_NOMEM, "c2c: out of memory");
    }
    r->section = layer->section;
    r->layer = layer->layer;
    r->n = layer->n_rows;
    memcpy(r->positions, layer->positions, (size_t)layer->n_rows * sizeof *r->positions);
    memcpy(r->k, layer->k, floats * sizeof(float));
    memcpy(r->v, layer->v, floats * sizeof(float));
    ++s->n_rows;
    return 0;
}

/* A sent layer's per-target subsets, kept for the receiver half and counted as the SHARE_TARGETS frame carrying them.
 */
static int kw_c2c_link_targets(void *user, const kw_share_layer *layer) {
    kw_c2c_link *l = user;
    kw_c2c_stream *s = &l->streams[l->sharer];
    KW_RETURN_IF(layer->targets.n > KW_RECEIVE_MAX_TARGETS, KW_E_LIMIT, "c2c: %d target subsets", layer->targets.n);
    KW_FORWARD(kw_c2c_grow((void **)&s->targets, &s->cap_targets, s->n_targets, sizeof *s->targets, 8));
    uint8_t *frame = NULL;
    size_t frame_len = 0;
    KW_FORWARD(kw_share_targets_frame(1, layer, &frame, &frame_len));
    free(frame);
    kw_c2c_targets *t = &s->targets[s->n_targets];
    const size_t mask_bytes = (size_t)layer->targets.mask_bytes;
    t->masks = malloc((size_t)layer->targets.n * mask_bytes);
    KW_RETURN_IF(t->masks == NULL, KW_E_NOMEM, "c2c: out of memory");
    t->section = layer->section, t->layer = layer->layer, t->n = layer->targets.n;
    t->mask_bytes = layer->targets.mask_bytes;
    for (int32_t j = 0; j < t->n; ++j) {
        t->layers[j] = layer->targets.layers[j];
        memcpy(t->masks + (size_t)j * mask_bytes, layer->targets.masks[j], mask_bytes);
    }
    ++s->n_targets;
    if (l->targets_chosen) return 0;
    ++l->target_frames;
    l->target_bytes += (int64_t)frame_len;
    return 0;
}

/* Hands sharer i's per-target subsets of section sec to the receiver half, before the section's rows. */
static int kw_c2c_link_replay_targets(const kw_c2c_stream *s, kw_receive *r, int32_t i, int32_t sec) {
    for (int32_t j = 0; j < s->n_targets; ++j) {
        const kw_c2c_targets *t = &s->targets[j];
        if (t->section != sec) continue;
        const uint8_t *masks[KW_RECEIVE_MAX_TARGETS];
        for (int32_t m = 0; m < t->n; ++m)
            masks[m] = t->masks + (size_t)m * (size_t)t->mask_bytes;
        KW_FORWARD(kw_receive_targets(r, i, t->layer, t->n, t->layers, masks, t->mask_bytes));
    }
    return 0;
}

/* --wire-dump: writes blob b of stream s as <prefix>.<n>.kvw. */
static int kw_c2c_link_dump(kw_c2c_link *l, const kw_c2c_blob *b) {
    if (!l->dump_prefix) return 0;
    char path[4096];
    const int len = snprintf(path, sizeof path, "%s.%d.kvw", l->dump_prefix, (int)l->dumped);
    KW_RETURN_IF(len < 0 || (size_t)len >= sizeof path, KW_E_INVALID_ARG, "--wire-dump: path too long");
    FILE *f = fopen(path, "wb");
    KW_RETURN_IF(!f, KW_E_IO, "--wire-dump: cannot create %s: %s", path, strerror(errno));
    const int bad = fwrite(b->data, 1, b->len, f) != b->len;
    KW_RETURN_IF((fclose(f) != 0) | bad, KW_E_IO, "--wire-dump: cannot write %s", path);
    ++l->dumped;
    return 0;
}

/* Drops what a stream holds (its blobs or rows were applied): a refinement's round two starts it over. */
static void kw_c2c_stream_reset(kw_c2c_stream *s) {
    for (int32_t b = 0; b < s->n_blobs; ++b)
        free(s->blobs[b].data);
    for (int32_t r = 0; r < s->n_rows; ++r)
        free(s->rows[r].positions), free(s->rows[r].k), free(s->rows[r].v);
    for (int32_t t = 0; t < s->n_targets; ++t)
        free(s->targets[t].masks);
    free(s->blobs);
    free(s->rows);
    free(s->targets);
    memset(s, 0, sizeof *s);
}

static void kw_c2c_link_free(kw_c2c_link *l) {
    for (int i = 0; i < KW_FUSION_MAX_SHARERS; ++i)
        kw_c2c_stream_reset(&l->streams[i]);
    memset(l, 0, sizeof *l);
}

/* ------------------------------------------------------------------------------------------------------------
 * One request through the two halves
 */

/* What the request asks of the sharers. */
typedef struct kw_c2c_plan {
    int kv_direct;                     /* the receiver's own model shares (no fuser) */
    const kw_fusion_section *sections; /* the receiver's sections */
    int32_t n_sections;
    const int32_t *sharer_ids[KW_FUSION_MAX_SHARERS]; /* NULL: the receiver's ids */
    const uint8_t *sharer_pad[KW_FUSION_MAX_SHARERS];
    kw_select_policy select;
    enum kw_dtype cache_dtype;
    kw_model *receiver;                  /* the receiver-aware selections score with it (borrowed) */
    const kw_wire_policy *preview;       /* scoring: receiver: the preview's codecs (NULL: scoring local) */
    enum kw_projector_numerics numerics; /* the request's projector numerics */
    const uint8_t *recv_pad;             /* NULL, or the receiver's padding flags (alignment) */
    const kw_wire_policy *wire;          /* NULL: rows in memory, no codec */
    double outlier_fraction;             /* KVWire v1.1 outliers (--wire-outliers) */
    int pre_rope_keys;                   /* KVWire v1.1 pre-RoPE keys (--wire-pre-rope, kv_direct) */
    uint64_t budget_bytes;               /* each sharer's byte cap (0: none) */
    const kw_wire_codec_spec *budget_codecs;
    uint32_t n_budget_codecs;
    enum kw_wire_budget_mode budget_mode;
    /* two-round refinement (--refine-threshold; one sharer): round two at refine_proportion when the metric asks */
    int refine;
    enum kw_refine_metric refine_metric;
    double refine_threshold, refine_proportion;
    const int64_t *skip_ranked; /* round two's, per sent section (NULL: round one) */
    int requantize; /* kv_direct, quantized cache: store every section through the quantizer (--requantize) */
} kw_c2c_plan;

/* What a refinement measured and sent (the totals hold both rounds). */
typedef struct kw_c2c_refine_stats {
    int measured, applied;
    const char *skipped; /* why round two was wanted but not run (static), or NULL */
    double value, sharer_ms;
    uint64_t wire_bytes;
    int64_t tokens_sent, rows;
} kw_c2c_refine_stats;

typedef struct kw_c2c_totals {
    kw_share_stats share; /* summed over the sharers (and both rounds of a refinement) */
    kw_share_wire_stats wire;
    kw_receive_stats recv;
    kw_c2c_refine_stats refine;
    kw_rscore_stats rscore; /* the receiver-aware selections' cost, summed over the sharers */
    /* scoring: receiver: the preview blobs, the selections sent back, and the time on each side */
    uint64_t preview_bytes, selection_bytes;
    double preview_sharer_ms;         /* the preview run: prefill, rows, encoding */
    kw_receive_preview_stats preview; /* decoding and scoring at the receiver */
} kw_c2c_totals;

static void kw_c2c_add_share(kw_share_stats *sum, const kw_share_stats *s) {
    sum->prefill_ms += s->prefill_ms, sum->select_ms += s->select_ms, sum->callback_ms += s->callback_ms;
    sum->score_ms += s->score_ms;
    sum->tokens_total += s->tokens_total, sum->tokens_sent += s->tokens_sent, sum->kv_bytes += s->kv_bytes;
    sum->layers_sent += s->layers_sent, sum->sections_sent += s->sections_sent;
    sum->device_selections += s->device_selections;
}

static void kw_c2c_add_wire(kw_share_wire_stats *sum, const kw_share_wire_stats *s) {
    sum->blob_bytes += s->blob_bytes, sum->blobs += s->blobs, sum->sections += s->sections;
    sum->compressed_sections += s->compressed_sections, sum->encode_ms += s->encode_ms;
    sum->device_sections += s->device_sections;
    sum->budget_bytes += s->budget_bytes, sum->budget_min_bytes += s->budget_min_bytes;
    sum->tokens_candidate += s->tokens_candidate, sum->tokens_dropped += s->tokens_dropped;
    sum->distortion += s->distortion;
    for (int c = 0; c < KW_WIRE_ALLOC_MAX_CODECS; ++c)
        sum->tokens_per_codec[c] += s->tokens_per_codec[c];
}

/* The receiver-aware scorer for sharer i: the receiver's own prefill of the prefix ids[0..prefix). */
static int kw_c2c_rscore(kw_fusion *f, int32_t i, const int32_t *ids, int64_t prefix, const kw_c2c_plan *plan,
                         kw_rscore **out) {
    const kw_rscore_options ro = {.mode = plan->select.mode,
                                  .numerics = plan->numerics,
                                  .cache_dtype = plan->cache_dtype,
                                  .pad = plan->recv_pad,
                                  .quantize = plan->wire ? kw_wire_roundtrip_rows_hook : NULL,
                                  .quantize_user = (void *)plan->wire};
    return kw_rscore_create(plan->receiver, f, i, ids, prefix, &ro, out);
}

static void kw_c2c_add_rscore(kw_rscore_stats *sum, const kw_rscore *r) {
    const kw_rscore_stats *s = kw_rscore_get_stats(r);
    if (s) sum->prefill_ms += s->prefill_ms, sum->projection_ms += s->projection_ms, sum->projections += s->projections;
}

/* scoring: receiver for sharer i: the sharer half sends the preview (every row of its sent layers at the preview
 * codec, blobs kept in a scratch link), the receiver scores it (scorer) and encodes its selection, whose bytes the
 * sharer decodes into *chosen (the caller's, kw_rselect_free). */
static int kw_c2c_preview(kw_model *m, kw_fusion *f, int32_t i, const int32_t *ids, int64_t prefix,
                          const kw_share_request_options *final, kw_rscore *scorer, const kw_c2c_plan *plan,
                          kw_rselect *chosen, kw_c2c_totals *tot) {
    kw_c2c_link pv = {0};
    kw_rselect sel = {0};
    uint8_t *msg = NULL;
    size_t msg_len = 0;
    int rc;
    kw_share_request_options so = *final;
    so.select = (kw_select_policy){.mode = KW_SELECT_FULL, .proportion = 1.0, .min_tokens = 1};
    so.select_rows = NULL, so.select_user = NULL;
    so.wire = plan->preview;
    so.on_rows = NULL, so.on_targets = NULL;
    so.user = &pv;
    kw_share_request_stats st;
    KW_CHECK(kw_share_request_run(m, ids, prefix, &so, &st));
    tot->preview_bytes += st.wire.blob_bytes;
    tot->preview_sharer_ms += st.share.prefill_ms + st.share.select_ms + st.wire.encode_ms;
    for (int32_t b = 0; b < pv.streams[0].n_blobs; ++b)
        KW_CHECK(kw_receive_preview_score(scorer, f, i, &plan->select, pv.streams[0].blobs[b].data,
                                          pv.streams[0].blobs[b].len, &sel, &tot->preview));
    KW_CHECK(kw_rselect_encode(&sel, &msg, &msg_len));
    tot->selection_bytes += msg_len;
    KW_CHECK(kw_rselect_decode(msg, msg_len, prefix, chosen));
    rc = 0;
out:
    free(msg);
    kw_rselect_free(&sel);
    kw_c2c_link_free(&pv);
    return rc;
}

/* The sharer half for sharer i (its model is m, its fuser layers from f; kv_direct: every layer of m). */
static int kw_c2c_share(kw_c2c_link *link, kw_model *m, kw_fusion *f, int32_t i, const int32_t *ids,
                        const kw_c2c_plan *plan, kw_c2c_totals *tot) {
    int32_t *layers = link->layers[i], n_layers = 0;
    const kw_model_config *mc = kw_model_get_config(m);
    KW_FORWARD(kw_request_sharer_layers(plan->kv_direct ? NULL : f, i, mc->n_layers, NULL, 0, layers,
                                        KW_WIRE_MAX_LAYERS, &n_layers));
    kw_fusion_section mine[KW_REQUEST_MAX_SECTIONS];
    int64_t prefix = 0;
    KW_FORWARD(kw_request_sharer_sections(plan->sections, plan->n_sections, i, plan->kv_direct, mine, &prefix, NULL));
    if (plan->budget_bytes && plan->budget_mode != KW_WIRE_BUDGET_TOKENS) { /* kvcomm_like: the layers the cap holds */
        const kw_wire_header shape = {.n_kv_heads = (uint16_t)mc->n_kv_heads,
                                      .head_dim = (uint16_t)mc->head_dim,
                                      .n_positions = (uint32_t)prefix,
                                      .src_dtype = KW_WIRE_DTYPE_F32};
        const int32_t candidates = n_layers;
        uint64_t min_bytes = 0;
        KW_FORWARD(kw_receive_plan_layers(plan->budget_mode, &shape, mine, plan->n_sections, &plan->select,
                                          plan->budget_codecs, plan->n_budget_codecs, plan->budget_bytes, layers,
                                          &n_layers, &min_bytes));
        link->planned_layers = !plan->kv_direct;
        link->layers_unsent += candidates - n_layers;
    }
    link->n_layers[i] = n_layers;
    link->sharer = i;
    kw_rscore *scorer = NULL;
    if (kw_select_mode_receiver_aware(plan->select.mode)) KW_FORWARD(kw_c2c_rscore(f, i, ids, prefix, plan, &scorer));
    kw_share_request_options so = {.sections = mine,
                                   .n_sections = plan->n_sections,
                                   .layers = layers,
                                   .n_layers = n_layers,
                                   .select = plan->select,
                                   .skip_ranked = plan->skip_ranked,
                                   .select_rows = scorer ? kw_rscore_share_select : NULL,
                                   .select_user = scorer,
                                   .same_positions = plan->kv_direct,
                                   .cache_dtype = plan->cache_dtype,
                                   .pad = plan->sharer_pad[i],
                                   .wire = plan->wire,
                                   .outlier_fraction = plan->outlier_fraction,
                                   .pre_rope_keys = plan->pre_rope_keys,
                                   .budget_bytes = plan->budget_bytes,
                                   .budget_codecs = plan->budget_codecs,
                                   .n_budget_codecs = plan->n_budget_codecs,
                                   .budget_mode = plan->budget_mode,
                                   .write = kw_c2c_link_write,
                                   .on_rows = kw_c2c_link_rows,
                                   .on_targets = kw_c2c_link_targets,
                                   .user = link};
    const int32_t *sids = plan->sharer_ids[i] ? plan->sharer_ids[i] : ids;
    kw_rselect chosen = {0};
    int rc = 0;
    if (plan->preview) { /* scoring: receiver: the rows and subsets the receiver chose */
        link->targets_chosen = 1;
        rc = kw_c2c_preview(m, f, i, sids, prefix, &so, scorer, plan, &chosen, tot);
        so.select_rows = kw_rselect_share_select, so.select_user = &chosen;
    }
    kw_share_request_stats st;
    if (rc == 0) rc = kw_share_request_run(m, sids, prefix, &so, &st);
    kw_rselect_free(&chosen);
    kw_c2c_add_rscore(&tot->rscore, scorer);
    kw_rscore_free(scorer);
    KW_FORWARD(rc);
    kw_c2c_add_share(&tot->share, &st.share);
    if (plan->wire) kw_c2c_add_wire(&tot->wire, &st.wire);
    return 0;
}

/* Feeds what sharer i sent for the open section sec: its next blob (*blob counts them) or its rows of sec. */
static int kw_c2c_feed(kw_c2c_link *link, kw_receive *r, int32_t i, int32_t sec, const kw_c2c_plan *plan,
                       int32_t *blob) {
    const kw_c2c_stream *s = &link->streams[i];
    KW_FORWARD(kw_c2c_link_replay_targets(s, r, i, sec));
    if (plan->wire) {
        KW_RETURN_IF(*blob >= s->n_blobs, KW_E_SHARE_INCOMPLETE, "c2c: sharer %d sent no blob for section %d", (int)i,
                     (int)sec);
        const kw_c2c_blob *b = &s->blobs[(*blob)++];
        KW_FORWARD(kw_c2c_link_dump(link, b));
        int done = 0;
        return kw_receive_feed(r, i, b->data, b->len, &done);
    }
    for (int32_t j = 0; j < s->n_rows; ++j)
        if (s->rows[j].section == sec)
            KW_FORWARD(kw_receive_rows(r, i, s->rows[j].layer, s->rows[j].n, s->rows[j].positions, s->rows[j].k,
                                       s->rows[j].v));
    return kw_receive_rows_done(r, i);
}

/* Two-round refinement in process (receiver/kw_receive.h): the metric on round one's cache and, when it asks for it,
 * sharer 0 (model sm) prefills again and sends the tokens the refine proportion adds (skip_ranked), applied on top
 * of round one, as sharerd and receiverd do it. */
static int kw_c2c_refine(kw_c2c_link *link, kw_receive *r, kw_model *sm, kw_fusion *f, const int32_t *ids,
                         const kw_c2c_plan *plan, kw_c2c_totals *tot) {
    kw_c2c_refine_stats *out = &tot->refine;
    KW_FORWARD(kw_receive_probe(r, plan->refine_metric, &out->value));
    out->measured = 1;
    if (!kw_refine_wanted(plan->refine_metric, out->value, plan->refine_threshold)) return 0;
    kw_fusion_section mine[KW_REQUEST_MAX_SECTIONS];
    int64_t prefix = 0;
    KW_FORWARD(kw_request_sharer_sections(plan->sections, plan->n_sections, 0, plan->kv_direct, mine, &prefix, NULL));
    kw_c2c_plan two = *plan;
    two.select.proportion = plan->refine_proportion;
    uint32_t skip[KW_REQUEST_MAX_SECTIONS];
    int32_t n_skip = 0;
    int adds = 0;
    KW_FORWARD(kw_refine_skips(mine, plan->n_sections, &plan->select, &two.select, skip, &n_skip, &adds));
    const int32_t section = plan->n_sections - 2;
    if (section < 0 || n_skip != 1 || !kw_receive_section_sent(r, section)) {
        out->skipped = "round two needs one sent section, right before the last";
        return 0;
    }
    if (!adds) {
        out->skipped = "the refine proportion keeps no more tokens than round one";
        return 0;
    }
    const int64_t skip64 = skip[0];
    two.skip_ranked = &skip64;
    kw_c2c_stream_reset(&link->streams[0]);
    kw_c2c_totals t2;
    memset(&t2, 0, sizeof t2);
    KW_FORWARD(kw_c2c_share(link, sm, f, 0, ids, &two, &t2));
    t2.share.tokens_total = 0; /* the same sections as round one's: counted once */
    kw_c2c_add_share(&tot->share, &t2.share);
    if (plan->wire) kw_c2c_add_wire(&tot->wire, &t2.wire);
    out->wire_bytes = t2.wire.blob_bytes;
    out->tokens_sent = t2.share.tokens_sent;
    out->sharer_ms = t2.share.prefill_ms + t2.share.select_ms + t2.share.callback_ms;
    const int64_t rows0 = kw_receive_get_stats(r)->rows;
    int32_t blob = 0;
    KW_FORWARD(kw_receive_reopen(r, section));
    KW_FORWARD(kw_c2c_feed(link, r, 0, section, &two, &blob));
    KW_FORWARD(kw_receive_end_section(r, section));
    out->rows = kw_receive_get_stats(r)->rows - rows0;
    out->applied = 1;
    return 0;
}

/* The receiver half, fed from the link. sm: sharer 0's model (a refinement's round two). */
static int kw_c2c_receive(kw_c2c_link *link, kw_model *recv, kw_model *sm, kw_fusion *f, kw_kvcache *cache,
                          const int32_t *ids, int64_t n, const kw_c2c_plan *plan, const kw_fusion_options *fo,
                          kw_fusion_result *res, kw_c2c_totals *tot) {
    kw_receive_options ro = {
        .mode = plan->kv_direct ? KW_RECEIVE_KV_DIRECT : KW_RECEIVE_C2C, .fusion = *fo, .requantize = plan->requantize};
    for (int32_t i = 0; link->planned_layers && i < KW_FUSION_MAX_SHARERS; ++i)
        ro.layers[i] = link->layers[i], ro.n_layers[i] = link->n_layers[i];
    kw_receive *r = NULL;
    int rc;
    int32_t blob[KW_FUSION_MAX_SHARERS] = {0};
    KW_CHECK(kw_receive_begin(recv, plan->kv_direct ? NULL : f, cache, ids, n, &ro, &r));
    for (int32_t sec = 0; sec + 1 < plan->n_sections; ++sec) {
        KW_CHECK(kw_receive_prefill(r, sec));
        const int32_t want = kw_receive_section_sharers(r, sec);
        for (int32_t i = 0; i < KW_FUSION_MAX_SHARERS; ++i)
            if (want & (1 << i)) KW_CHECK(kw_c2c_feed(link, r, i, sec, plan, &blob[i]));
        KW_CHECK(kw_receive_end_section(r, sec));
    }
    if (plan->refine) KW_CHECK(kw_c2c_refine(link, r, sm, f, ids, plan, tot));
    KW_CHECK(kw_receive_generate(r, res));
    tot->recv = *kw_receive_get_stats(r);
out:
    kw_receive_free(r);
    return rc;
}

/* --wire CODEC with its granularity, scale and zstd level. */
/* selected_rows (the receiver-aware selections with --wire): the positions each final blob carries, per sharer, blob
 * and sharer layer, read back from the blobs (so that two placements' selections compare). */
static int kw_c2c_print_selected(const kw_c2c_link *l) {
    printf("selected_rows:");
    uint32_t *pos = NULL;
    kw_wire_reader *rd = NULL;
    int rc = 0;
    for (int32_t i = 0; i < KW_FUSION_MAX_SHARERS; ++i)
        for (int32_t b = 0; b < l->streams[i].n_blobs; ++b) {
            const kw_wire_header *hdr = NULL;
            const kw_wire_section *sec = NULL;
            KW_CHECK(kw_wire_reader_open(l->streams[i].blobs[b].data, l->streams[i].blobs[b].len, NULL, &rd, &hdr));
            for (;;) {
                KW_CHECK(kw_wire_reader_next(rd, &sec));
                if (rc == 0) break;
                free(pos);
                pos = malloc((size_t)sec->n_tokens * sizeof *pos);
                KW_CHECK_IF(pos == NULL, KW_E_NOMEM, "c2c: out of memory");
                KW_CHECK(kw_wire_section_positions(sec, pos, sec->n_tokens));
                printf(" %d.%d.%u:", (int)i, (int)b, (unsigned)sec->layer);
                for (uint32_t t = 0; t < sec->n_tokens; ++t)
                    printf("%s%u", t ? "," : "", (unsigned)pos[t]);
            }
            kw_wire_reader_close(rd);
            rd = NULL;
        }
out:
    printf("\n");
    free(pos);
    kw_wire_reader_close(rd);
    return rc;
}

/* "CODEC[:GRAN]" (KVWire v1.1 names too; GRAN defaults to gran) with scale, for the option flag, into *out. */
static int kw_c2c_codec_gran(const char *text, const char *gran, const char *scale, const char *flag,
                             kw_wire_codec_spec *out) {
    char codec[64];
    const char *colon = strchr(text, ':');
    const size_t n = colon ? (size_t)(colon - text) : strlen(text);
    KW_RETURN_IF(n == 0 || n >= sizeof codec, KW_E_INVALID_ARG, "%s: CODEC[:GRAN], not \"%s\"", flag, text);
    memcpy(codec, text, n);
    codec[n] = '\0';
    const int rc = kw_wire_spec_parse_v(codec, colon ? colon + 1 : gran, scale, KW_WIRE_VERSION_1_1, out);
    if (rc < 0) KW_FAIL(rc, "%s: %s", flag, kw_error_detail());
    return 0;
}

/* --wire CODEC (KVWire v1.1 names too) with --wire-gran, --wire-scale and --wire-zstd; value: --wire-value
 * CODEC[:GRAN] for V apart (NULL: K's). */
static int kw_c2c_wire_policy(const char *codec, const char *gran, const char *scale, long zstd, const char *value,
                              kw_wire_policy *pol) {
    memset(pol, 0, sizeof *pol);
    kw_wire_codec_spec spec;
    const int rc = kw_wire_spec_parse_v(codec, gran, scale, KW_WIRE_VERSION_1_1, &spec);
    if (rc < 0) KW_FAIL(rc, "--wire: %s", kw_error_detail());
    pol->k = spec;
    pol->v = spec;
    if (value) KW_FORWARD(kw_c2c_codec_gran(value, gran, scale, "--wire-value", &pol->v));
    pol->index_encoding = KW_WIRE_INDEX_AUTO;
    pol->zstd_level = (int)zstd;
    return 0;
}

/* --budget-codecs LIST: comma-separated codec names, each with --wire-gran and --wire-scale. */
static int kw_c2c_budget_codecs(const char *list, const char *gran, const char *scale, kw_wire_codec_spec *out,
                                uint32_t *n) {
    *n = 0;
    for (const char *p = list; *p;) {
        const size_t len = strcspn(p, ",");
        char name[16];
        KW_RETURN_IF(len == 0 || len >= sizeof name, KW_E_INVALID_ARG, "--budget-codecs: bad list \"%s\"", list);
        KW_RETURN_IF(*n == KW_WIRE_ALLOC_MAX_CODECS, KW_E_INVALID_ARG, "--budget-codecs: at most %d codecs",
                     KW_WIRE_ALLOC_MAX_CODECS);
        memcpy(name, p, len);
        name[len] = '\0';
        const int rc = kw_wire_spec_parse_v(name, gran, scale, KW_WIRE_VERSION_1_1, &out[*n]);
        if (rc < 0) KW_FAIL(rc, "--budget-codecs: %s", kw_error_detail());
        ++*n;
        p += len + (p[len] == ',');
    }
    KW_RETURN_IF(*n == 0, KW_E_INVALID_ARG, "--budget-codecs: no codec");
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

enum { KW_C2C_MODE_C2C, KW_C2C_MODE_KV_DIRECT, KW_C2C_MODE_RECEIVER_ONLY, KW_C2C_MODE_TEXT_RELAY };

/* The question a text relay asks about: an item's question field, or the prompt itself. */
static int kw_c2c_relay_question(const char *mc, const char *prompt, char **out) {
    if (!mc) {
        *out = strdup(prompt);
        KW_RETURN_IF(*out == NULL, KW_E_NOMEM, "out of memory");
        return 0;
    }
    cJSON *item = NULL;
    int rc = mc[0] == '@' ? kw_json_load_file(mc + 1, (size_t)1 << 24, &item) : kw_json_parse(mc, strlen(mc), &item);
    if (rc < 0) return rc;
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(item, "question");
    if (!cJSON_IsString(q)) q = cJSON_GetObjectItemCaseSensitive(item, "question_stem");
    if (!cJSON_IsString(q)) q = cJSON_GetObjectItemCaseSensitive(item, "problem");
    if (cJSON_IsString(q)) {
        *out = strdup(q->valuestring);
        rc = *out ? 0 : kw_error_set(KW_E_NOMEM, "out of memory");
    } else {
        rc = kw_error_set(KW_E_INVALID_ARG, "--mc-json: the item has no question for the relay");
    }
    cJSON_Delete(item);
    return rc;
}

int kw_cmd_c2c(int argc, char **argv) {
    static const char *const orders[] = {"front", "back", NULL};
    static const char *const xfer_modes[] = {"c2c", "kv_direct", "receiver_only", "text_relay", NULL};
    static const char *const fusion_modes[] = {"sequential", "parallel", NULL};
    static const char *const aligns[] = {"auto", "off", "first", "longest", NULL};
    static const char *const pads_names[] = {"reference", "masked", NULL};
    static const char *const norm_roundings[] = {"twice", "once", NULL};
    static const char *const selects[] = {
        "full", "front", "back", "random", "knorm_topk", "vnorm_topk", "proj_vnorm_topk", "delta_proj_vnorm_topk",
        NULL};
    static const char *const relay_styles[] = {"generated", "raw", "extractive", NULL};        /* enum kw_relay_style */
    static const char *const budget_modes[] = {"tokens", "kvcomm_like", "qkvcomm_like", NULL}; /* kw_wire_budget_mode */
    const char *recv_dir = NULL, *tok_dir = NULL, *sharer_tok_dir = NULL, *prompt = NULL, *mc = NULL;
    const char *dataset = "mmlu-redux", *date = NULL, *system_msg = NULL;
    const char *sharer_dirs[KW_C2C_MAX_SHARERS], *fuser_dirs[KW_C2C_MAX_SHARERS];
    int n_sharer_dirs = 0, n_fuser_dirs = 0, fp32 = 0, raw = 0, print_alignment = 0;
    int order_i = -1, xfer_i = 0, fusion_i = 0, align_choice = KW_C2C_ALIGN_AUTO, pads_i = 0, norm_i = -1;
    int select_i = 0, relay_style_i = 0, budget_mode_i = KW_WIRE_BUDGET_TOKENS, scoring_i = 0;
    static const char *const scorings[] = {"local", "receiver", NULL};
    const char *preview_codec = NULL;
    const char *wire_codec = NULL, *wire_gran = "token", *wire_scale = "f32", *wire_dump = NULL;
    const char *budget_codecs = NULL, *wire_value = NULL;
    double wire_outliers = 0.0;
    int wire_pre_rope = 0, wire_rotate_i = 0, wire_clip_i = 0, wire_rans = 0;
    int64_t wire_qmax_k = 0, wire_qmax_v = 0;
    static const char *const wire_rotations[] = {"none", "k", "v", "kv", NULL};
    int64_t budget_bytes = 0;
    double proportion = -1.0, select_p = 1.0;        /* proportion < 0: not given */
    double refine_threshold = -1.0, refine_p = -1.0; /* < 0: no refinement */
    int refine_metric_i = KW_REFINE_MARGIN;
    static const char *const refine_metrics[] = {"margin", "entropy", NULL}; /* enum kw_refine_metric */
    static const char *const qcaches[] = {"int8", "int6", "int4", NULL};
    static const enum kw_kvq_codec qcache_codecs[] = {KW_KVQ_INT8, KW_KVQ_INT6, KW_KVQ_INT4};
    int qcache_i = -1, requantize = 0;
    const char *layer_args[KW_CLI_MAX_CACHE_LAYERS];
    int n_layer_args = 0;
    char cache_layers[KW_CLI_MAX_CACHE_LAYERS * 24] = "";
    int64_t page_tokens = KW_KVCACHE_PAGE_TOKENS;
    int64_t max_new = 64, threads = 0, wire_zstd = 0, min_tokens = 1, seed = 0, relay_tokens = 256, relay_bytes = -1;
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
        KW_CLI_CHOICE("--mode", &xfer_i, xfer_modes),
        KW_CLI_CHOICE("--fusion", &fusion_i, fusion_modes),
        KW_CLI_CHOICE("--align", &align_choice, aligns),
        KW_CLI_CHOICE("--decode-pads", &pads_i, pads_names),
        KW_CLI_CHOICE("--rmsnorm-rounding", &norm_i, norm_roundings),
        KW_CLI_CHOICE("--select", &select_i, selects),
        KW_CLI_REAL("--select-proportion", &select_p, 0.0, 1.0),
        KW_CLI_CHOICE("--scoring", &scoring_i, scorings),
        KW_CLI_STR("--preview-codec", &preview_codec),
        KW_CLI_INT("--min-tokens", &min_tokens, 1, INT32_MAX),
        KW_CLI_INT("--seed", &seed, 0, INT64_MAX),
        KW_CLI_REAL("--proportion", &proportion, 0.0, 1.0),
        KW_CLI_INT("--max-new-tokens", &max_new, 0, 1 << 20),
        KW_CLI_INT("--threads", &threads, 0, 1024),
        KW_CLI_INT("--relay-max-tokens", &relay_tokens, 1, 1 << 20),
        KW_CLI_INT("--relay-bytes", &relay_bytes, 0, INT32_MAX),
        KW_CLI_CHOICE("--relay-style", &relay_style_i, relay_styles),
        KW_CLI_STR("--wire", &wire_codec),
        KW_CLI_STR("--wire-gran", &wire_gran),
        KW_CLI_STR("--wire-scale", &wire_scale),
        KW_CLI_INT("--wire-zstd", &wire_zstd, -7, 22),
        KW_CLI_STR("--wire-dump", &wire_dump),
        KW_CLI_STR("--wire-value", &wire_value),
        KW_CLI_REAL("--wire-outliers", &wire_outliers, 0.0, 1.0),
        KW_CLI_FLAG("--wire-pre-rope", &wire_pre_rope),
        KW_CLI_CHOICE("--wire-rotate", &wire_rotate_i, wire_rotations),
        KW_CLI_CHOICE("--wire-clip", &wire_clip_i, wire_rotations),
        KW_CLI_INT("--wire-qmax-k", &wire_qmax_k, 1, 255),
        KW_CLI_INT("--wire-qmax-v", &wire_qmax_v, 1, 255),
        KW_CLI_FLAG("--wire-rans", &wire_rans),
        KW_CLI_INT("--budget-bytes", &budget_bytes, 1, INT64_MAX / 2),
        KW_CLI_STR("--budget-codecs", &budget_codecs),
        KW_CLI_CHOICE("--budget-mode", &budget_mode_i, budget_modes),
        KW_CLI_REAL("--refine-threshold", &refine_threshold, 0.0, 1e6),
        KW_CLI_REAL("--refine-proportion", &refine_p, 0.0, 1.0),
        KW_CLI_CHOICE("--refine-metric", &refine_metric_i, refine_metrics),
        KW_CLI_CHOICE("--cache", &qcache_i, qcaches),
        KW_CLI_INT("--cache-page-tokens", &page_tokens, 16, 4096),
        KW_CLI_LIST("--cache-layer", layer_args, &n_layer_args, KW_CLI_MAX_CACHE_LAYERS),
        KW_CLI_FLAG("--requantize", &requantize),
        KW_CLI_FLAG("--fp32", &fp32),
        KW_CLI_FLAG("--raw", &raw),
        KW_CLI_FLAG("--print-alignment", &print_alignment),
    };
    const int st = KW_CLI_PARSE("kvwire c2c", argc, argv, opts, kw_c2c_usage);
    if (st != KW_CLI_RUN) return st;
    const int needs_fuser = xfer_i == KW_C2C_MODE_C2C, needs_sharer = needs_fuser || xfer_i == KW_C2C_MODE_TEXT_RELAY;
    if (!recv_dir || (!prompt) == (!mc) || (needs_sharer && n_sharer_dirs == 0) ||
        (needs_fuser && n_sharer_dirs != n_fuser_dirs) || (!needs_fuser && n_fuser_dirs > 0) ||
        (!needs_sharer && n_sharer_dirs > 0)) {
        fprintf(stderr,
                "kvwire c2c: --receiver and one of --prompt or --mc-json are required; --mode c2c needs "
                "matching --sharer/--fuser pairs, text_relay a --sharer, kv_direct and receiver_only neither\n");
        kw_c2c_usage(stderr);
        return 2;
    }
    const int have_proportion = proportion >= 0.0, forced_align = align_choice >= KW_C2C_ALIGN_FIRST;
    const char *usage_error = kw_c2c_conflict(raw, system_msg != NULL, forced_align, n_sharer_dirs,
                                              have_proportion || order_i >= 0, sharer_tok_dir != NULL);
    if (!usage_error && fp32 && norm_i >= 0)
        usage_error = "--rmsnorm-rounding sets the bf16 projector's rule: not with --fp32";
    const int cache_layout = wire_codec && strcmp(wire_codec, "cache") == 0;
    const int wire_qmax = wire_qmax_k || wire_qmax_v;
    if (!usage_error && (qcache_i >= 0 || requantize || n_layer_args) && xfer_i != KW_C2C_MODE_KV_DIRECT)
        usage_error =
            "--cache, --cache-layer and --requantize are for --mode kv_direct (the receiver stores the sent rows)";
    if (!usage_error && n_layer_args && (fp32 || cache_layout))
        usage_error = "--cache-layer: not with --fp32 (an f32 cache) or --wire cache (one layout for every layer)";
    if (!usage_error && (requantize || cache_layout) && qcache_i < 0)
        usage_error = "--requantize and --wire cache need a quantized --cache";
    if (!usage_error && cache_layout &&
        (wire_value || wire_outliers > 0.0 || wire_pre_rope || wire_rotate_i || wire_clip_i || wire_qmax ||
         budget_bytes))
        usage_error = "--wire cache sets both codecs and their layout: not with --wire-value, --wire-outliers, "
                      "--wire-pre-rope, --wire-rotate, --wire-clip, --wire-qmax-k/v or --budget-bytes";
    if (!usage_error && wire_dump && !wire_codec && !budget_bytes)
        usage_error = "--wire-dump needs --wire CODEC or --budget-bytes";
    if (!usage_error && budget_bytes && wire_codec)
        usage_error = "--budget-bytes chooses the codecs itself (--budget-codecs): not with --wire CODEC";
    if (!usage_error && budget_bytes && xfer_i != KW_C2C_MODE_C2C && xfer_i != KW_C2C_MODE_KV_DIRECT)
        usage_error = "--budget-bytes is for --mode c2c and kv_direct";
    if (!usage_error && budget_codecs && !budget_bytes) usage_error = "--budget-codecs needs --budget-bytes";
    if (!usage_error &&
        (wire_value || wire_outliers > 0.0 || wire_pre_rope || wire_rotate_i || wire_clip_i || wire_qmax) &&
        !wire_codec)
        usage_error =
            "--wire-value, --wire-outliers, --wire-pre-rope, --wire-rotate, --wire-clip and --wire-qmax-k/v need "
            "--wire CODEC";
    if (!usage_error && wire_rans && !wire_codec && !budget_bytes)
        usage_error = "--wire-rans needs --wire CODEC or --budget-bytes";
    if (!usage_error && wire_pre_rope && xfer_i != KW_C2C_MODE_KV_DIRECT)
        usage_error = "--wire-pre-rope sends keys before RoPE, which only --mode kv_direct rotates back";
    if (!usage_error && (wire_pre_rope || wire_outliers > 0.0) && scoring_i == 1)
        usage_error = "--wire-outliers and --wire-pre-rope are not for --scoring receiver";
    if (!usage_error && budget_mode_i != KW_WIRE_BUDGET_TOKENS && !budget_bytes)
        usage_error = "--budget-mode needs --budget-bytes";
    if (!usage_error && budget_mode_i == KW_WIRE_BUDGET_KVCOMM_LIKE && xfer_i == KW_C2C_MODE_KV_DIRECT)
        usage_error = "--budget-mode kvcomm_like leaves layers out: kv_direct needs every layer";
    if (!usage_error && (xfer_i == KW_C2C_MODE_RECEIVER_ONLY || xfer_i == KW_C2C_MODE_TEXT_RELAY) &&
        (wire_codec || select_i != 0 || have_proportion || order_i >= 0))
        usage_error =
            "receiver_only and text_relay send no KV: --wire, --select, --proportion and --order do not apply";
    if (!usage_error && kw_select_mode_receiver_aware((enum kw_select_mode)select_i) && xfer_i != KW_C2C_MODE_C2C)
        usage_error = "--select proj_vnorm_topk and delta_proj_vnorm_topk score through the fuser: --mode c2c only";
    if (!usage_error && kw_select_mode_receiver_aware((enum kw_select_mode)select_i) && fusion_i == 1)
        usage_error =
            "--select proj_vnorm_topk and delta_proj_vnorm_topk fuse per-layer subsets: not --fusion parallel";
    if (!usage_error && scoring_i == 1 &&
        (!kw_select_mode_receiver_aware((enum kw_select_mode)select_i) || !wire_codec))
        usage_error = "--scoring receiver is for --select proj_vnorm_topk and delta_proj_vnorm_topk with --wire CODEC";
    if (!usage_error && preview_codec && scoring_i != 1) usage_error = "--preview-codec needs --scoring receiver";
    if (!usage_error && xfer_i == KW_C2C_MODE_TEXT_RELAY && raw)
        usage_error = "text_relay builds chat prompts: not with --raw";
    if (!usage_error && xfer_i != KW_C2C_MODE_TEXT_RELAY && (relay_bytes >= 0 || relay_tokens != 256 || relay_style_i))
        usage_error = "--relay-bytes, --relay-max-tokens and --relay-style are for --mode text_relay";
    const int refine = refine_threshold >= 0.0;
    if (!usage_error && refine != (refine_p >= 0.0))
        usage_error = "--refine-threshold and --refine-proportion go together";
    if (!usage_error && !refine && refine_metric_i != KW_REFINE_MARGIN)
        usage_error = "--refine-metric needs --refine-threshold";
    if (!usage_error && refine &&
        ((xfer_i != KW_C2C_MODE_C2C && xfer_i != KW_C2C_MODE_KV_DIRECT) || n_sharer_dirs > 1 || select_i == 0 ||
         kw_select_mode_receiver_aware((enum kw_select_mode)select_i) || budget_bytes || have_proportion ||
         !(refine_p > select_p)))
        usage_error = "--refine-threshold is for --mode c2c with one sharer or kv_direct, a --select other than full "
                      "and the receiver-aware ones, --refine-proportion above --select-proportion, no --budget-bytes "
                      "and no --proportion";
    if (usage_error) {
        fprintf(stderr, "kvwire c2c: %s\n", usage_error);
        return 2;
    }
    const enum kw_fusion_order order = order_i == 1 ? KW_FUSION_BACK : KW_FUSION_FRONT;
    const enum kw_fusion_mode fusion_mode = fusion_i == 1 ? KW_FUSION_PARALLEL : KW_FUSION_SEQUENTIAL;

    int rc = 0;
    const char *stage = "options";
    kw_backend *be = NULL;
    kw_model *recv = NULL, *sharers[KW_C2C_MAX_SHARERS] = {0};
    kw_fuser *fusers[KW_C2C_MAX_SHARERS] = {0};
    kw_fusion *fusion = NULL;
    kw_tokenizer *tok = NULL, *stoks[KW_C2C_MAX_SHARERS] = {0};
    kw_aligner *aligner = NULL;
    kw_kvcache *cache = NULL;
    char *user_msg = NULL, *text = NULL, *completion = NULL, *question = NULL, *bg = NULL;
    int32_t *ids = NULL;
    size_t n_ids = 0, text_len = 0, completion_len = 0;
    kw_request_relay relay = {0};
    kw_align_result ar = {0};
    kw_fusion_section *aligned_sections = NULL;
    kw_fusion_result res = {0};
    kw_wire_policy wire_pol, preview_pol;
    kw_wire_codec_spec budget_specs[KW_WIRE_ALLOC_MAX_CODECS];
    uint32_t n_budget_specs = 0;
    kw_c2c_link link = {.dump_prefix = wire_dump};
    kw_c2c_totals tot;
    memset(&tot, 0, sizeof tot);
    kw_c2c_align_plan plan = {0};
    kw_align_pads_hook pads_hook;

    if (cache_layout) { /* the receiver's cache layout: its pages take the codes as sent (receiver/kw_kv_pages.h) */
        KW_CHECK(kw_c2c_wire_policy("int8", "token", "f32", (long)wire_zstd, NULL, &wire_pol));
    } else if (wire_codec) {
        KW_CHECK(kw_c2c_wire_policy(wire_codec, wire_gran, wire_scale, (long)wire_zstd, wire_value, &wire_pol));
        wire_pol.rotate = (uint8_t)wire_rotate_i;     /* "none" 0, "k" 1, "v" 2, "kv" 3: the section flag bits */
        wire_pol.clip = (uint8_t)wire_clip_i;         /* the same bits: an encoder choice (FORMAT.md §5.13) */
        wire_pol.code_limit_k = (uint8_t)wire_qmax_k; /* code limits, an encoder choice (§5.14); 0: none */
        wire_pol.code_limit_v = (uint8_t)wire_qmax_v;
    }
    if (budget_bytes) {
        static const char *const default_codecs[] = {"int4,int6,int8,bf16", "int8", "int4,int8"};
        if (!budget_codecs) budget_codecs = default_codecs[budget_mode_i];
        KW_CHECK(kw_c2c_budget_codecs(budget_codecs, wire_gran, wire_scale, budget_specs, &n_budget_specs));
        KW_CHECK(kw_c2c_wire_policy(kw_wire_codec_name(budget_specs[0].codec), wire_gran, wire_scale, (long)wire_zstd,
                                    NULL, &wire_pol));
    }
    wire_pol.rans = (uint8_t)wire_rans; /* the rANS body coder (FORMAT.md §5.15), beside or instead of zstd */
    if (scoring_i == 1) { /* --preview-codec CODEC[:GRAN], f32 scales, K and V alike; the rest of the final policy
                             (rotation, clipping, the body coders) as sharerd's preview has it, but not its code
                             limits: the preview's codec is its own */
        preview_pol = wire_pol;
        KW_CHECK(kw_c2c_codec_gran(preview_codec ? preview_codec : "int4:token", "token", "f32", "--preview-codec",
                                   &preview_pol.k));
        preview_pol.v = preview_pol.k;
        preview_pol.code_limit_k = preview_pol.code_limit_v = 0;
    }
    const int use_wire = wire_codec || budget_bytes;
    stage = "backend";
    KW_CHECK(kw_backend_create_cpu((int)threads, &be));
    stage = "load receiver";
    KW_CHECK(kw_model_load(be, recv_dir, NULL, &recv));
    const kw_model_config *cfg = kw_model_get_config(recv);
    kw_fusion_sharer spec[KW_C2C_MAX_SHARERS];
    for (int i = 0; i < n_sharer_dirs; ++i) {
        stage = "load sharer";
        KW_CHECK(kw_model_load(be, sharer_dirs[i], NULL, &sharers[i]));
        if (!needs_fuser) continue;
        stage = "load fuser";
        KW_CHECK(kw_fuser_load(fuser_dirs[i], 0, &fusers[i]));
        spec[i] = (kw_fusion_sharer){.model = sharers[i], .fuser = fusers[i]};
    }
    if (needs_fuser) {
        stage = "bind fusers";
        KW_CHECK(kw_fusion_create(recv, spec, n_sharer_dirs, 0, &fusion));
    }
    stage = "load tokenizer";
    KW_CHECK(kw_tokenizer_load(tok_dir ? tok_dir : recv_dir, &tok));
    KW_CHECK_IF(kw_tokenizer_vocab_size(tok) > cfg->vocab, KW_E_TOKENIZER,
                "the tokenizer has %d ids, the receiver's vocabulary only %d", (int)kw_tokenizer_vocab_size(tok),
                (int)cfg->vocab);

    /* alignment: the sharers' tokenizers (a sharer folder without one shares the receiver's ids, unless the fuser or
     * --align says otherwise); the text relay needs the sharer's own tokenizer */
    stage = "load sharer tokenizer";
    for (int i = 0; i < n_sharer_dirs && (align_choice != KW_C2C_ALIGN_OFF || !needs_fuser); ++i) {
        rc = kw_tokenizer_load(sharer_tok_dir ? sharer_tok_dir : sharer_dirs[i], &stoks[i]);
        if (rc == KW_E_NOT_FOUND && !sharer_tok_dir && !forced_align && needs_fuser) rc = 0; /* no tokenizer.json */
        if (rc < 0 && !forced_align && needs_fuser) /* needed only to compare the ids */
            rc = kw_error_set(rc, "%s (--align off gives sharer %d the receiver's ids)", kw_error_detail(), i);
        KW_CHECK(rc);
        KW_CHECK_IF(stoks[i] && kw_tokenizer_vocab_size(stoks[i]) > kw_model_get_config(sharers[i])->vocab,
                    KW_E_TOKENIZER, "sharer %d's tokenizer has %d ids, its vocabulary only %d", i,
                    (int)kw_tokenizer_vocab_size(stoks[i]), (int)kw_model_get_config(sharers[i])->vocab);
    }
    stage = "alignment";
    for (int i = 0; i < n_sharer_dirs && needs_fuser; ++i) {
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
    if (!needs_fuser) snprintf(plan.reason, sizeof plan.reason, "no sharer tokens (%s)", xfer_modes[xfer_i]);
    KW_CHECK_IF(plan.on && raw, KW_E_INVALID_ARG,
                "token alignment (%s) renders the chat templates: --raw cannot be used", plan.reason);
    KW_CHECK_IF(plan.on && (have_proportion || order_i >= 0), KW_E_INVALID_ARG,
                "token alignment (%s) fuses the message sections: --proportion and --order cannot be used",
                plan.reason);

    stage = "prompt";
    if (mc) KW_CHECK(kw_c2c_mc_prompt(mc, dataset, &user_msg));
    kw_chat_message msgs[4];
    size_t n_msgs = 0;
    char today[32];
    if (!date) { /* Llama-3.2's "Today Date", as the template's strftime_now("%d %b %Y") */
        const time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        strftime(today, sizeof today, "%d %b %Y", &tm);
        date = today;
    }
    const enum kw_dtype cache_dtype = fp32 ? KW_DTYPE_F32 : KW_DTYPE_BF16;
    if (system_msg) msgs[n_msgs++] = (kw_chat_message){.role = "system", .content = system_msg};
    if (xfer_i == KW_C2C_MODE_TEXT_RELAY) { /* stage 1 on the sharer, then [background, its reply, the prompt] */
        stage = "text relay";
        KW_CHECK_IF(stoks[0] == NULL, KW_E_NOT_FOUND, "text_relay needs the sharer's tokenizer");
        KW_CHECK(kw_c2c_relay_question(mc, prompt, &question));
        enum kw_chat_family relay_family = KW_CHAT_QWEN3;
        KW_CHECK(kw_chat_family_for_model(sharer_dirs[0], kw_model_get_config(sharers[0])->arch, &relay_family));
        KW_CHECK(kw_request_relay_styled((enum kw_relay_style)relay_style_i, sharers[0], stoks[0], relay_family,
                                         question, date, relay_tokens, relay_bytes, cache_dtype, NULL, NULL, &relay));
    }
    msgs[n_msgs++] = (kw_chat_message){.role = "user", .content = mc ? user_msg : prompt};
    if (xfer_i == KW_C2C_MODE_TEXT_RELAY) { /* [..., background, its reply, the prompt] */
        kw_chat_message conv[4];
        size_t n_conv = 0;
        KW_CHECK(kw_request_relay_conversation(msgs, n_msgs, question, relay.text, &bg, conv, &n_conv));
        memcpy(msgs, conv, n_conv * sizeof *conv);
        n_msgs = n_conv;
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
        if (raw) KW_CHECK(kw_config_prepend_bos(kw_model_get_config(recv), &ids, &n_ids)); /* as receiverd, HF */
    }

    stage = xfer_modes[xfer_i];
    if (n_layer_args) { /* the layers not named: --cache's codec, or bf16 (0) */
        KW_CHECK(kw_cli_cache_layers(layer_args, n_layer_args, cache_layers, sizeof cache_layers));
        KW_CHECK(kw_model_create_cache_layers(recv, (int64_t)n_ids + (max_new > 0 ? max_new : 1),
                                              qcache_i >= 0 ? qcache_codecs[qcache_i] : 0, cache_layers,
                                              (int32_t)page_tokens, &cache));
    } else if (qcache_i >= 0) {
        KW_CHECK(kw_model_create_cache_quantized(recv, (int64_t)n_ids + (max_new > 0 ? max_new : 1),
                                                 qcache_codecs[qcache_i], (int32_t)page_tokens, &cache));
        if (cache_layout)
            KW_CHECK(kw_kv_pages_specs(qcache_codecs[qcache_i], (int32_t)page_tokens,
                                       kw_model_get_config(recv)->head_dim, &wire_pol.k, &wire_pol.v));
    } else {
        KW_CHECK(kw_model_create_cache(recv, (int64_t)n_ids + (max_new > 0 ? max_new : 1), cache_dtype, &cache));
    }
    const enum kw_projector_numerics numerics = fp32          ? KW_PROJECTOR_FP32
                                                : norm_i == 1 ? KW_PROJECTOR_BF16_FUSED_NORM
                                                              : KW_PROJECTOR_BF16;
    const kw_generate_options gen0 = {.max_new_tokens = (int32_t)max_new,
                                      .round = fp32 ? KW_LOGITS_ROUND_NONE : KW_LOGITS_ROUND_AUTO};
    kw_fusion_section sections[3];
    const kw_fusion_section *secs = sections;
    int32_t n_sections = 0;
    const int32_t *run_ids = plan.on ? ar.recv_ids : ids;
    if (xfer_i == KW_C2C_MODE_RECEIVER_ONLY || xfer_i == KW_C2C_MODE_TEXT_RELAY) {
        sections[0] = (kw_fusion_section){(int64_t)n_ids, -1};
        n_sections = 1;
        KW_CHECK(kw_generate_greedy(recv, cache, ids, (int64_t)n_ids, &gen0, &res.gen));
        res.stats.last_prompt_ms = res.gen.prefill_ms;
        res.stats.decode_ms = res.gen.decode_ms;
        res.stats.n_decode = res.gen.n_decode;
    } else {
        const int32_t mask = xfer_i == KW_C2C_MODE_KV_DIRECT ? 1 : (int32_t)((1u << n_sharer_dirs) - 1);
        if (plan.on) {
            KW_CHECK(kw_align_fusion_sections(&ar, 1, &aligned_sections, &n_sections));
            secs = aligned_sections;
            for (int64_t p = 0; p < ar.n; ++p)
                if (ar.recv_pad[p]) KW_CHECK(kw_kvcache_set_valid(cache, p, 1, 0));
        } else if (have_proportion) {
            KW_CHECK(kw_request_sections((int64_t)n_ids, mask, proportion, order, sections, &n_sections));
        } else {
            KW_CHECK(kw_request_sections((int64_t)n_ids, mask, -1.0, order, sections, &n_sections));
        }
        kw_c2c_plan cp = {.kv_direct = xfer_i == KW_C2C_MODE_KV_DIRECT,
                          .sections = secs,
                          .n_sections = n_sections,
                          .select = {.mode = (enum kw_select_mode)select_i,
                                     .proportion = select_p,
                                     .min_tokens = min_tokens,
                                     .seed = (uint64_t)seed},
                          .cache_dtype = cache_dtype,
                          .receiver = recv,
                          .preview = scoring_i == 1 ? &preview_pol : NULL,
                          .numerics = numerics,
                          .recv_pad = plan.on ? ar.recv_pad : NULL,
                          .wire = use_wire ? &wire_pol : NULL,
                          .outlier_fraction = wire_outliers,
                          .pre_rope_keys = wire_pre_rope,
                          .budget_codecs = budget_specs,
                          .n_budget_codecs = n_budget_specs,
                          .budget_mode = (enum kw_wire_budget_mode)budget_mode_i,
                          .refine = refine,
                          .refine_metric = (enum kw_refine_metric)refine_metric_i,
                          .refine_threshold = refine_threshold,
                          .refine_proportion = refine_p,
                          .requantize = requantize};
        if (budget_bytes) /* several sharers share the cap equally */
            cp.budget_bytes = (uint64_t)budget_bytes / (uint64_t)(cp.kv_direct ? 1 : n_sharer_dirs);
        if (plan.on) {
            cp.sharer_ids[0] = ar.sharer_ids;
            cp.sharer_pad[0] = ar.sharer_pad;
        }
        kw_fusion_options fo = {.sections = secs, .n_sections = n_sections, .mode = fusion_mode, .numerics = numerics};
        kw_align_pads_gen(&pads_hook, cache, plan.on ? (enum kw_align_decode_pads)pads_i : KW_ALIGN_PADS_MASKED, &gen0,
                          &fo.gen);
        const int n_share = cp.kv_direct ? 1 : n_sharer_dirs;
        for (int i = 0; i < n_share; ++i) {
            stage = "sharer half";
            KW_CHECK(kw_c2c_share(&link, cp.kv_direct ? recv : sharers[i], fusion, i, run_ids, &cp, &tot));
        }
        stage = "receiver half";
        KW_CHECK(kw_c2c_receive(&link, recv, cp.kv_direct ? recv : sharers[0], fusion, cache, run_ids, (int64_t)n_ids,
                                &cp, &fo, &res, &tot));
    }
    KW_CHECK(kw_tokenizer_decode(tok, res.gen.ids, (size_t)res.gen.n, 1, &completion, &completion_len));
    char letter = 0;
    stage = "answer";
    KW_CHECK(kw_answer_extract(completion, completion_len, &letter));

    const kw_fusion_stats *stats = &res.stats;
    const int sends_kv = xfer_i == KW_C2C_MODE_C2C || xfer_i == KW_C2C_MODE_KV_DIRECT;
    kw_c2c_print_escaped("answer", completion, completion_len);
    if (letter)
        printf("letter: %c\n", letter);
    else
        printf("letter: null\n");
    printf("mode: %s\n", xfer_modes[xfer_i]);
    printf("prompt_tokens: %zu\n", n_ids);
    printf("alignment: %s (%s)\n", plan.on ? (plan.strategy == KW_ALIGN_FIRST ? "first" : "longest") : "off",
           plan.reason);
    if (plan.on) {
        kw_c2c_print_aligned(&ar);
        printf("decode_pads: %s\n", pads_names[pads_i]);
    }
    printf("sections:");
    for (int32_t i = 0; i < n_sections; ++i)
        printf(" %lld:%s", (long long)secs[i].length,
               secs[i].index > 0 && i + 1 < n_sections ? (xfer_i == KW_C2C_MODE_KV_DIRECT ? "transferred" : "fused")
                                                       : "receiver");
    printf("\n");
    if (xfer_i == KW_C2C_MODE_C2C) printf("projector_numerics: %s\n", kw_projector_numerics_name(numerics));
    if (sends_kv) {
        printf("selection: %s proportion %g min_tokens %lld seed %lld\n", selects[select_i], select_p,
               (long long)min_tokens, (long long)seed);
        printf("tokens_sent: %lld of %lld (over the sent layers)\n",
               (long long)(tot.share.tokens_sent - (int64_t)tot.wire.tokens_dropped),
               (long long)tot.share.tokens_total);
    }
    if (xfer_i == KW_C2C_MODE_C2C) printf("tokens_fused: %lld\n", (long long)stats->tokens_fused);
    if (kw_select_mode_receiver_aware((enum kw_select_mode)select_i)) {
        printf("target_subsets: %d frames %lld bytes\n", (int)link.target_frames, (long long)link.target_bytes);
        printf("scoring: %s", scorings[scoring_i]);
        if (scoring_i == 1) printf(" preview %s", preview_codec ? preview_codec : "int4:token");
        printf("\n");
        const uint64_t final_bytes = tot.wire.blob_bytes + (uint64_t)link.target_bytes;
        printf("scoring_bytes: preview %llu selection %llu final %llu total %llu\n",
               (unsigned long long)tot.preview_bytes, (unsigned long long)tot.selection_bytes,
               (unsigned long long)final_bytes,
               (unsigned long long)(tot.preview_bytes + tot.selection_bytes + final_bytes));
        if (use_wire) KW_CHECK(kw_c2c_print_selected(&link));
    }
    printf("generated_tokens: %lld%s\n", (long long)res.gen.n, res.gen.stopped_eos ? " (stopped at EOS)" : "");
    kw_c2c_print_ids("generated_ids", res.gen.ids, res.gen.n);
    if (xfer_i == KW_C2C_MODE_C2C) {
        printf("layers_fused: %d\n", (int)stats->layers_fused);
        printf("layers_skipped: %d\n", (int)stats->layers_skipped);
    }
    if (xfer_i == KW_C2C_MODE_KV_DIRECT) { /* how the rows went into the cache (receiver/kw_receive.h) */
        const kw_receive_stats *rs = &tot.recv;
        printf("kv_store: %s rows_direct %lld rows_tail %lld rows_requantized %lld reason %s\n",
               kw_receive_kv_store(rs), (long long)rs->rows_direct, (long long)rs->rows_tail,
               (long long)rs->rows_requantized,
               rs->store_reason ? kw_kv_store_reason_name((enum kw_kv_store_reason)rs->store_reason) : "none");
    }
    if (sends_kv) printf("sharer_kv_bytes: %lld (%s)\n", (long long)tot.share.kv_bytes, kw_dtype_name(cache_dtype));
    if (xfer_i == KW_C2C_MODE_TEXT_RELAY) {
        printf("relay_style: %s\n", kw_relay_style_name((enum kw_relay_style)relay_style_i));
        printf("relay_tokens: %lld\n", (long long)relay.n_tokens);
        printf("relay_bytes: %zu%s\n", relay.len, relay.truncated ? " (truncated)" : "");
        kw_c2c_print_escaped("relay_text", relay.text, relay.len);
    }
    if (use_wire) {
        char kgran[32];
        kw_wire_spec_gran_format(&wire_pol.k, kgran, sizeof kgran);
        printf("wire_codec: %s gran %s scale %s zstd %lld\n", wire_codec ? wire_codec : "budget", kgran,
               kw_wire_scale_name(kw_wire_spec_scale(&wire_pol.k)), (long long)wire_zstd);
        if (wire_value || wire_outliers > 0.0 || wire_pre_rope || wire_rotate_i) { /* the KVWire v1.1 options */
            char vcodec[32], vgran[32];
            kw_wire_spec_codec_format(&wire_pol.v, vcodec, sizeof vcodec);
            kw_wire_spec_gran_format(&wire_pol.v, vgran, sizeof vgran);
            printf("wire_v11: value %s gran %s outliers %g pre_rope %d rotate %s\n", vcodec, vgran, wire_outliers,
                   wire_pre_rope, wire_rotations[wire_rotate_i]);
        }
        if (wire_clip_i) printf("wire_clip: %s (clipped integer scales)\n", wire_rotations[wire_clip_i]);
        if (wire_rans) printf("wire_rans: 1 (the rANS body coder)\n");
        if (wire_qmax) printf("wire_qmax: k %d v %d (code limits, 0: none)\n", (int)wire_qmax_k, (int)wire_qmax_v);
        printf("wire_blobs: %d\n", (int)tot.wire.blobs);
        printf("wire_device_sections: encoded %d decoded %d (of %d)\n", (int)tot.wire.device_sections,
               (int)tot.recv.device_sections, (int)tot.wire.sections);
        printf("wire_bytes: %lld\n", (long long)tot.wire.blob_bytes);
        printf("wire_ratio: %.4f (blob bytes / sharer KV bytes)\n",
               tot.share.kv_bytes > 0 ? (double)tot.wire.blob_bytes / (double)tot.share.kv_bytes : 0.0);
    }
    if (budget_bytes) {
        printf("budget_mode: %s\n", budget_modes[budget_mode_i]);
        if (budget_mode_i == KW_WIRE_BUDGET_KVCOMM_LIKE) printf("budget_layers: unsent %d\n", (int)link.layers_unsent);
        printf("budget: cap %lld used %llu slack %lld min %llu distortion %.9g\n", (long long)budget_bytes,
               (unsigned long long)tot.wire.blob_bytes, (long long)budget_bytes - (long long)tot.wire.blob_bytes,
               (unsigned long long)tot.wire.budget_min_bytes, tot.wire.distortion);
        printf("budget_tokens: candidates %llu dropped %llu", (unsigned long long)tot.wire.tokens_candidate,
               (unsigned long long)tot.wire.tokens_dropped);
        for (uint32_t c = 0; c < n_budget_specs; ++c)
            printf(" %s %llu", kw_wire_codec_name(budget_specs[c].codec),
                   (unsigned long long)tot.wire.tokens_per_codec[c]);
        printf("\n");
    }
    if (refine) {
        const kw_c2c_refine_stats *rf = &tot.refine;
        printf("refine: metric %s threshold %g proportion %g value %.9g triggered %d applied %d%s%s\n",
               refine_metrics[refine_metric_i], refine_threshold, refine_p, rf->value,
               rf->measured && kw_refine_wanted((enum kw_refine_metric)refine_metric_i, rf->value, refine_threshold),
               rf->applied, rf->skipped ? " skipped: " : "", rf->skipped ? rf->skipped : "");
        printf("refine_round_two: wire_bytes %llu tokens_sent %lld rows %lld sharer_ms %.3f\n",
               (unsigned long long)rf->wire_bytes, (long long)rf->tokens_sent, (long long)rf->rows, rf->sharer_ms);
    }
    if (print_alignment && plan.on) {
        kw_c2c_print_ids("recv_ids", ar.recv_ids, ar.n);
        kw_c2c_print_ids("sharer_ids", ar.sharer_ids, ar.n);
        kw_c2c_print_flags("message_mask", ar.message_mask, ar.n);
        kw_c2c_print_flags("recv_pad", ar.recv_pad, ar.n);
        kw_c2c_print_flags("sharer_pad", ar.sharer_pad, ar.n);
    }
    /* transfer: selection and encoding on the sharer side, decoding and staging on the receiver side */
    const double transfer_ms =
        tot.share.select_ms + tot.wire.encode_ms + tot.recv.decode_ms + tot.recv.fusion.transfer_ms;
    printf("timing_ms: receiver_prefill %.3f sharer_prefill %.3f transfer %.3f projection %.3f last_prompt %.3f "
           "decode %.3f (%lld steps)",
           sends_kv ? tot.recv.prefill_ms : 0.0, tot.share.prefill_ms, transfer_ms, tot.recv.fusion.projection_ms,
           stats->last_prompt_ms, stats->decode_ms, (long long)stats->n_decode);
    if (xfer_i == KW_C2C_MODE_TEXT_RELAY) printf(" relay %.3f", relay.ms);
    if (kw_select_mode_receiver_aware((enum kw_select_mode)select_i))
        printf(" scoring_prefill %.3f scoring_projection %.3f (%lld projections)", tot.rscore.prefill_ms,
               tot.rscore.projection_ms, (long long)tot.rscore.projections);
    if (scoring_i == 1)
        printf(" preview_sharer %.3f preview_decode %.3f preview_score %.3f", tot.preview_sharer_ms,
               tot.preview.decode_ms, tot.preview.score_ms);
    printf("\n");
out:
    if (rc < 0) fprintf(stderr, "kvwire c2c: %s: %s (%s)\n", stage, kw_strerror(rc), kw_error_detail());
    kw_fusion_result_free(&res);
    kw_align_result_free(&ar);
    free(aligned_sections);
    free(completion);
    free(ids);
    free(text);
    free(user_msg);
    free(question);
    kw_request_relay_free(&relay);
    free(bg);
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
    kw_c2c_link_free(&link);
    return rc < 0 ? 1 : 0;
}
