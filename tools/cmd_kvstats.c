/* cmd_kvstats.c: `kvwire kvstats`: what a model's real KV cache looks like on a file of prompts, and what every KVWire
 * codec and granularity does to it when the model decodes from the quantized prompt cache (tools/kw_kvstats.h has
 * the method). Option parsing, prompt reading and printing only. */
#include "kw_commands.h"

#include <ctype.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_file.h"
#include "common/kw_status.h"
#include "kernels/kw_backend.h"
#include "model/kw_chat.h"
#include "model/kw_model.h"
#include "model/kw_tokenizer.h"
#include "tools/kw_cli.h"
#include "tools/kw_kvstats.h"

const char kw_cmd_kvstats_summary[] =
    "K/V magnitudes and outlier channels of a model on prompts, and each codec's error and decoding agreement";

#define KW_KVSTATS_MAX_CODECS 32

/* The default codecs: the control row, then every quantizing codec per token, and the 4- and 8-bit ones with a scale
 * per 32 values and per head. */
static const char *const kw_kvstats_default_codecs[] = {
    "none",       "bf16",       "int8:token",   "int8:group32", "int8:head", "e4m3:token",
    "int6:token", "int4:token", "int4:group32", "int4:head",    "nf4:token", "nf4:group32",
};

static void kw_kvstats_usage(FILE *f) {
    fprintf(
        f,
        "usage: kvwire kvstats --model DIR|FILE.gguf --prompts FILE [--chat] [--max-new-tokens N]\n"
        "                      [--max-prompts N] [--codec CODEC:GRAN]... [--scale f32|f16|bf16|e8m0|log8]\n"
        "                      [--threads N]\n"
        "                      [--tokenizer DIR|FILE] [--no-heads] [--layer-sensitivity CODEC] [--qk-gain]\n"
        "  --prompts         one prompt per line (empty lines skipped)\n"
        "  --chat            render each prompt as one user turn of the model's chat template\n"
        "  --max-new-tokens  tokens decoded per prompt and codec (default 64)\n"
        "  --codec           a codec and granularity (int4:group32, int8:token, nf4:head, bf16, none = the cache\n"
        "                    as it is), for K and V both, or K's and V's apart: int2-asym:channel32,int2-asym:token;\n"
        "                    KVWire v1.1 names too (int3, int2, -asym zero points, channel<L>: a scale per channel\n"
        "                    over L tokens), a third part sets that codec's scale dtype (int4:token:log8);\n"
        "                    a suffix @P%% sends P%% of every layer's K and V elements exact in a\n"
        "                    v1.1 outlier table (bf16 values), e.g. int3-asym:channel32,int3-asym:token@1%%, and\n"
        "                    @prerope sends K before RoPE (the receiver rotates the decoded keys);\n"
        "                    @rot rotates K and V (@rotk, @rotv: one) by the randomized Hadamard transform\n"
        "                    before encoding (undone after decoding); @clip (@clipk, @clipv) lets the encoder\n"
        "                    clip the integer codecs' scales to the least squared error (FORMAT.md §5.13);\n"
        "                    @zstd (@zstdN, level N, default 3) sends every section body zstd-compressed\n"
        "                    (stored raw where that is not smaller; bits/elem counts what is stored); @rans\n"
        "                    codes every section body with the static rANS byte coder (FORMAT.md §5.15) where\n"
        "                    smaller, with @zstd the smaller of the two;\n"
        "                    @qmaxN (@qmaxkN, @qmaxvN) holds the layer codec's integer codes to +-N (zero\n"
        "                    points: 0..N) with the scale for that range, a coarser step in the same container\n"
        "                    for @zstd to store in fewer bits (FORMAT.md §5.14; N in 1..255);\n"
        "                    @center sends K - R(p) mu, mu the mean of the layer's pre-RoPE keys per head and\n"
        "                    channel (f16, counted; simulated, not a wire field), the receiver adding R(p) mu back;\n"
        "                    @center8: mu as int8 with an f16 scale per head; @centerpost: mu the mean of the\n"
        "                    post-RoPE keys, sent K - mu (not with @prerope);\n"
        "                    @qscale scales K per head and channel pair by a power of two from the prompt's\n"
        "                    queries and keys ((E q^2 / E k^2)^(1/4), a byte per channel, counted; simulated)\n"
        "                    before encoding, undone after decoding (not with @prerope); @qscalech: per channel\n"
        "                    repeatable; default: none bf16 int8/e4m3/int6/int4/nf4 per token, int8\n"
        "                    int4 nf4 per 32 values, int8 int4 per head (with --scale log8 without e4m3\n"
        "                    and nf4)\n"
        "                    per-layer schedule: BASE;L3,7=CODEC;L0-2=CODEC gives the layers listed (numbers\n"
        "                    and ranges, each named once, at most 4 overrides) their own codec, options and all\n"
        "                    (nothing inherited from BASE; none = that layer's rows as they are, counted at f32),\n"
        "                    e.g. 'int4:token@rot@clip;L0,5=int8:token' (quote the ;)\n"
        "                    per-token schedule: ;T0-3,7=CODEC:GRAN (prompt positions) and ;Tlast4=CODEC:GRAN (the\n"
        "                    last 4 rows of each prompt) put those rows of every quantized layer in token groups\n"
        "                    of their own with that codec (no options: the section's are its layer's; the first\n"
        "                    rule covering a row wins; at most 8 ranges), e.g. 'int2-asym:token@rot;T0=int8:token';\n"
        "                    T0-N=recompute: that prefix is not sent (a kv_direct receiver can prefill it itself:\n"
        "                    row 0 depends on token 0 only), kept exact at 0 bytes;\n"
        "                    ;Tattn10%%=CODEC:GRAN: in each prompt and quantized layer, the 10%% of the rows sent\n"
        "                    (rounded, at least 1) that received the most attention in the unquantized prefill\n"
        "                    (per query and head normalised, summed over the layer's heads and the prompt's\n"
        "                    queries; Tattn10%%:last8: the last 8 queries' only), among the rows no positional\n"
        "                    rule takes, ties to the lower position; controls: Tleast10%% (the least attended),\n"
        "                    Trand10%% (at random, a fixed seed); one such rule per row\n"
        "  --layer-sensitivity  a row per layer with only that layer through CODEC (none;L<l>=CODEC), after\n"
        "                    the --codec rows (default: none), then the layers ranked by mean KL, most\n"
        "                    sensitive first, for a schedule\n"
        "  --qk-gain         print the predicted gain of query-weighted key scaling per (layer, KV head) from\n"
        "                    the prefill's queries and keys (min, p10, median, p90, max; issue 15)\n"
        "  --scale           scale dtype of the quantizing codecs (default f32, as receiverd); log8 (KVWire\n"
        "                    v1.1) carries the integer codecs only: an e4m3/e5m2/nf4 --codec is an error\n"
        "  --tokenizer       folder with tokenizer.json, or a GGUF file (default: the model)\n"
        "  --no-heads        leave out the per-(layer, head) table\n"
        "Each prompt's tokens but the last are prefilled into an f32 cache; those rows go through a KVWire blob per\n"
        "codec and back; the model then runs the last token and decodes from them. stdout: the K/V magnitudes per\n"
        "layer and KV head, the mean K and V head-vector L2 norm per layer at positions 0-3 and over the rest\n"
        "(attention sinks), the magnitudes' summary, and per codec: bytes per prompt token (all layers, K and V), the\n"
        "relative reconstruction error of K and V, teacher-forced top-1 agreement with the unquantized run, mean\n"
        "KL(unquantized || codec) of the next-token distribution (nats), free-running greedy agreement.\n");
}

/* "int4:group32" (a KVWire v1 or v1.1 codec and granularity) -> *spec, its printable name into name (cap bytes). */
static int kw_kvstats_parse_spec(const char *arg, size_t len, const char *scale, kw_wire_codec_spec *spec, char *name,
                                 size_t cap) {
    char text[64], codec[16], gran[16];
    KW_RETURN_IF(len == 0 || len >= sizeof text, KW_E_INVALID_ARG, "--codec %.*s: CODEC or CODEC:GRANULARITY", (int)len,
                 arg);
    memcpy(text, arg, len);
    text[len] = '\0';
    char *colon = strchr(text, ':');
    if (colon) *colon = '\0';
    char *own_scale = colon ? strchr(colon + 1, ':') : NULL; /* "int4:token:log8": this codec's scale dtype */
    if (own_scale) *own_scale++ = '\0';
    KW_FORWARD(kw_wire_spec_parse_v(text, colon ? colon + 1 : "token", own_scale ? own_scale : scale,
                                    KW_WIRE_VERSION_1_1, spec));
    kw_wire_spec_codec_format(spec, codec, sizeof codec);
    kw_wire_spec_gran_format(spec, gran, sizeof gran);
    snprintf(name, cap, "%s%s%s%s%s", codec, spec->granularity ? "/" : "", spec->granularity ? gran : "",
             own_scale ? "/" : "", own_scale ? own_scale : "");
    return 0;
}

/* A rotated tensor needs a quantizing codec (FORMAT.md §5.12). */
static int kw_kvstats_check_rotate(const char *arg, const kw_kvstats_codec *c) {
    KW_RETURN_IF(((c->rotate & 1) && kw_wire_codec_is_passthrough(c->spec.codec)) ||
                     ((c->rotate & 2) && kw_wire_codec_is_passthrough(c->spec_v.codec)),
                 KW_E_INVALID_ARG, "--codec %s: a rotated tensor needs a quantizing codec, not bf16 or f16", arg);
    return 0;
}

/* "int4:group32" (K and V), "int2-asym:channel32,int2-asym:token" (K, then V) -> the codec and a printable name;
 * "none" -> the lossless control row. */
static int kw_kvstats_parse_codec(const char *arg, const char *scale, kw_kvstats_codec *out) {
    memset(out, 0, sizeof *out);
    if (strcmp(arg, "none") == 0) {
        out->lossless = 1;
        snprintf(out->name, sizeof out->name, "none (f32 rows)");
        return 0;
    }
    const char *at = strchr(arg, '@');
    const size_t len = at ? (size_t)(at - arg) : strlen(arg);
    char opts[96] = "";
    for (const char *o = at; o; o = strchr(o + 1, '@')) { /* "@1%": outliers; "@prerope": K before RoPE */
        const char *end_opt = strchr(o + 1, '@');
        const size_t olen = end_opt ? (size_t)(end_opt - o - 1) : strlen(o + 1);
        if (olen == 7 && strncmp(o + 1, "prerope", 7) == 0) {
            out->pre_rope = 1;
            continue;
        }
        if ((olen == 6 || olen == 8) && strncmp(o + 1, "qscale", 6) == 0) { /* "@qscale" pairs, "@qscalech" */
            KW_RETURN_IF(olen == 8 && strncmp(o + 7, "ch", 2) != 0, KW_E_INVALID_ARG,
                         "--codec %s: the query-weighted options are @qscale and @qscalech", arg);
            KW_RETURN_IF(out->qscale, KW_E_INVALID_ARG, "--codec %s: @qscale named twice", arg);
            out->qscale = olen == 8 ? KW_KVSTATS_QSCALE_CHANNELS : KW_KVSTATS_QSCALE_PAIRS;
            continue;
        }
        if (olen >= 6 && strncmp(o + 1, "center", 6) == 0) { /* "@center" ("@centerk"), "@centerpost", "@center8" */
            const int post = olen == 10 && strncmp(o + 7, "post", 4) == 0, i8 = olen == 7 && o[7] == '8';
            KW_RETURN_IF(olen == 7 && o[7] == 'v', KW_E_INVALID_ARG,
                         "--codec %s: @center centres keys only (their channel offsets); values have no @centerv", arg);
            KW_RETURN_IF(!post && !i8 && olen != 6 && !(olen == 7 && o[7] == 'k'), KW_E_INVALID_ARG,
                         "--codec %s: the centring options are @center (@centerk), @center8 and @centerpost", arg);
            KW_RETURN_IF(out->center, KW_E_INVALID_ARG, "--codec %s: centred keys named twice", arg);
            out->center = post ? KW_KVSTATS_CENTER_POST : i8 ? KW_KVSTATS_CENTER_PRE8 : KW_KVSTATS_CENTER_PRE;
            continue;
        }
        if (olen >= 3 && olen <= 4 && strncmp(o + 1, "rot", 3) == 0) { /* "@rot" K and V, "@rotk", "@rotv" */
            const char which = olen == 4 ? o[4] : 0;
            KW_RETURN_IF(which && which != 'k' && which != 'v', KW_E_INVALID_ARG,
                         "--codec %s: the rotation options are @rot, @rotk and @rotv", arg);
            out->rotate |= which == 'k' ? 1 : which == 'v' ? 2 : 3;
            continue;
        }
        if (olen == 4 && strncmp(o + 1, "rans", 4) == 0) { /* "@rans": the rANS body coder */
            KW_RETURN_IF(out->rans, KW_E_INVALID_ARG, "--codec %s: @rans named twice", arg);
            out->rans = 1;
            continue;
        }
        if (olen >= 4 && strncmp(o + 1, "zstd", 4) == 0) { /* "@zstd" (level 3), "@zstd19"; zstd's levels 1..22 */
            char *zend = NULL;
            const long level = olen == 4 ? 3 : strtol(o + 5, &zend, 10);
            KW_RETURN_IF((olen > 4 && (zend != o + 1 + olen || !isdigit((unsigned char)o[5]))) || level < 1 ||
                             level > 22 || out->zstd,
                         KW_E_INVALID_ARG, "--codec %s: @zstd or @zstdN, N in 1..22, once", arg);
            out->zstd = (int)level;
            continue;
        }
        if (olen >= 5 && strncmp(o + 1, "qmax", 4) == 0) { /* "@qmax10" K and V, "@qmaxk10", "@qmaxv10" */
            const char which = o[5] == 'k' || o[5] == 'v' ? o[5] : 0;
            const char *num = o + 5 + (which != 0);
            char *qend = NULL;
            const long q = isdigit((unsigned char)*num) ? strtol(num, &qend, 10) : 0;
            KW_RETURN_IF(qend != o + 1 + olen || q < 1 || q > 255 || ((which != 'v') && out->qmax_k) ||
                             ((which != 'k') && out->qmax_v),
                         KW_E_INVALID_ARG, "--codec %s: @qmaxN, @qmaxkN or @qmaxvN, N in 1..255, once per tensor", arg);
            if (which != 'v') out->qmax_k = (int)q;
            if (which != 'k') out->qmax_v = (int)q;
            continue;
        }
        if (olen >= 4 && olen <= 5 && strncmp(o + 1, "clip", 4) == 0) { /* "@clip" K and V, "@clipk", "@clipv" */
            const char which = olen == 5 ? o[5] : 0;
            KW_RETURN_IF(which && which != 'k' && which != 'v', KW_E_INVALID_ARG,
                         "--codec %s: the clipped-scale options are @clip, @clipk and @clipv", arg);
            out->clip |= which == 'k' ? 1 : which == 'v' ? 2 : 3;
            continue;
        }
        char *end = NULL;
        const double pct = strtod(o + 1, &end);
        KW_RETURN_IF(
            end == o + 1 || end != o + olen || *end != '%' || !(pct > 0.0 && pct <= 100.0) ||
                out->outlier_fraction > 0.0,
            KW_E_INVALID_ARG,
            "--codec %s: options are @P%% (outliers, P in (0, 100]), @prerope, @rot[k|v], @clip[k|v], @qmax[k|v]N "
            "@zstd[N] and @rans",
            arg);
        out->outlier_fraction = pct / 100.0;
    }
    if (out->outlier_fraction > 0.0) snprintf(opts, sizeof opts, "@%g%%", out->outlier_fraction * 100.0);
    if (out->pre_rope) snprintf(opts + strlen(opts), sizeof opts - strlen(opts), "@prerope");
    KW_RETURN_IF(out->center && out->pre_rope, KW_E_INVALID_ARG,
                 "--codec %s: @center rebuilds R(p) mu on post-RoPE keys; with @prerope the keys are sent before "
                 "RoPE (a zero point per channel is the asym codecs')",
                 arg);
    KW_RETURN_IF(out->qscale && out->pre_rope, KW_E_INVALID_ARG,
                 "--codec %s: @qscale scales post-RoPE keys by RoPE's channel pairs; not with @prerope", arg);
    if (out->center)
        snprintf(opts + strlen(opts), sizeof opts - strlen(opts), "%s",
                 out->center == KW_KVSTATS_CENTER_POST   ? "@centerpost"
                 : out->center == KW_KVSTATS_CENTER_PRE8 ? "@center8"
                                                         : "@center");
    if (out->qscale)
        snprintf(opts + strlen(opts), sizeof opts - strlen(opts), "%s",
                 out->qscale == KW_KVSTATS_QSCALE_CHANNELS ? "@qscalech" : "@qscale");
    if (out->rotate) {
        static const char *const rot_names[] = {"", "@rotk", "@rotv", "@rot"};
        snprintf(opts + strlen(opts), sizeof opts - strlen(opts), "%s", rot_names[out->rotate]);
    }
    if (out->clip) {
        static const char *const clip_names[] = {"", "@clipk", "@clipv", "@clip"};
        snprintf(opts + strlen(opts), sizeof opts - strlen(opts), "%s", clip_names[out->clip]);
    }
    if (out->qmax_k && out->qmax_k == out->qmax_v)
        snprintf(opts + strlen(opts), sizeof opts - strlen(opts), "@qmax%d", out->qmax_k);
    else {
        if (out->qmax_k) snprintf(opts + strlen(opts), sizeof opts - strlen(opts), "@qmaxk%d", out->qmax_k);
        if (out->qmax_v) snprintf(opts + strlen(opts), sizeof opts - strlen(opts), "@qmaxv%d", out->qmax_v);
    }
    if (out->zstd) snprintf(opts + strlen(opts), sizeof opts - strlen(opts), "@zstd%d", out->zstd);
    if (out->rans) snprintf(opts + strlen(opts), sizeof opts - strlen(opts), "@rans");
    const char *outl = opts;
    const char *comma = memchr(arg, ',', len);
    const size_t k_len = comma ? (size_t)(comma - arg) : len;
    char k_name[40], v_name[40];
    KW_FORWARD(kw_kvstats_parse_spec(arg, k_len, scale, &out->spec, k_name, sizeof k_name));
    if (!comma) {
        out->spec_v = out->spec;
        snprintf(out->name, sizeof out->name, "%s%s", k_name, outl);
        return kw_kvstats_check_rotate(arg, out);
    }
    KW_FORWARD(kw_kvstats_parse_spec(comma + 1, len - k_len - 1, scale, &out->spec_v, v_name, sizeof v_name));
    KW_FORWARD(kw_kvstats_check_rotate(arg, out));
    snprintf(out->name, sizeof out->name, "%s+%s%s", k_name, v_name, outl);
    return 0;
}

/* The item at *p of a list of numbers and ranges a-b by commas that ends at end ("3,7,0-2"; with ranges 0 a number
 * only): *lo and *hi (equal for a number), *p moved past it and its comma. 1 for an item inside [0, limit), else 0. */
static int kw_kvstats_list_item(const char **p, const char *end, int ranges, long limit, long *lo, long *hi) {
    char *stop = NULL;
    *lo = strtol(*p, &stop, 10);
    *hi = *lo;
    if (ranges && stop < end && *stop == '-') *hi = strtol(stop + 1, &stop, 10);
    const int ok = stop != *p && stop <= end && (stop == end || *stop == ',') && *lo >= 0 && *hi >= *lo &&
                   *hi < limit && !(*stop == ',' && stop + 1 == end);
    *p = stop < end ? stop + 1 : end;
    return ok;
}

static const char *const kw_kvstats_pick_names[] = {"", "attn", "least", "rand"}; /* by enum kw_kvstats_pick */

/* The enum kw_kvstats_pick a token rule segment seg (up to its '=' at eq) names: "Tattn10%..." PICK_ATTN, "Tleast"
 * PICK_LEAST, "Trand" PICK_RAND, else 0 (positions). */
static int kw_kvstats_pick_kind(const char *seg, const char *eq) {
    for (int k = KW_KVSTATS_PICK_ATTN; k <= KW_KVSTATS_PICK_RAND; ++k) {
        const size_t n = strlen(kw_kvstats_pick_names[k]);
        if ((size_t)(eq - seg) > n + 1 && strncmp(seg + 1, kw_kvstats_pick_names[k], n) == 0) return k;
    }
    return 0;
}

/* A picking rule's segment up to eq, "Tattn10%", "Tattn10%:last8", "Tleast10%[:last<M>]" or "Trand10%" (pick: its
 * kind), appended to out's token rules without its codecs. One per row. */
static int kw_kvstats_parse_pick(const char *arg, const char *seg, const char *eq, int pick, kw_kvstats_codec *out) {
    const char *p = seg + 1 + strlen(kw_kvstats_pick_names[pick]);
    char *end = NULL;
    const double pct = strtod(p, &end);
    KW_RETURN_IF(end == p || end >= eq || *end != '%' || !(pct > 0.0 && pct <= 100.0), KW_E_INVALID_ARG,
                 "--codec %s: T%s takes a percentage of the rows sent in (0, 100], e.g. T%s10%%=int8:token", arg,
                 kw_kvstats_pick_names[pick], kw_kvstats_pick_names[pick]);
    long queries = 0;
    if (end + 1 < eq) { /* ":last<M>": the attention of the prompt's last M queries only */
        const char *m = end + 1;
        KW_RETURN_IF(pick == KW_KVSTATS_PICK_RAND || (size_t)(eq - m) < 6 || strncmp(m, ":last", 5) != 0,
                     KW_E_INVALID_ARG, "--codec %s: after T%s<P>%% only :last<M> (Tattn, Tleast: the last M queries)",
                     arg, kw_kvstats_pick_names[pick]);
        queries = strtol(m + 5, &end, 10);
        KW_RETURN_IF(end != eq || queries < 1 || queries >= (long)KW_WIRE_MAX_POSITIONS, KW_E_INVALID_ARG,
                     "--codec %s: :last<M> takes M in 1..%u", arg, KW_WIRE_MAX_POSITIONS - 1);
    }
    for (int32_t i = 0; i < out->n_token_rules; ++i)
        KW_RETURN_IF(out->token_rules[i].pick, KW_E_INVALID_ARG,
                     "--codec %s: one Tattn, Tleast or Trand rule per row (the rows it picks are given once)", arg);
    KW_RETURN_IF(out->n_token_rules == KW_KVSTATS_MAX_TOKEN_RULES, KW_E_INVALID_ARG,
                 "--codec %s: at most %d token ranges", arg, KW_KVSTATS_MAX_TOKEN_RULES);
    out->token_rules[out->n_token_rules++] =
        (kw_kvstats_token_rule){.pick = pick, .fraction = pct / 100.0, .queries = (uint32_t)queries};
    return 0;
}

/* One token rule segment of a schedule, "T0-3,7=CODEC" (prompt positions and ranges) or "Tlast4=CODEC" (the last 4
 * rows of each prompt), eq at its '=', end past its codec: rules appended to out, ";T0-3,7=int8/token" to its name
 * (*name_len long). The codec is a wire codec without options (the section's options are its layer's); a position
 * may be named once, Tlast given once. */
static int kw_kvstats_parse_token_rule(const char *arg, const char *seg, const char *eq, const char *end,
                                       const char *scale, kw_kvstats_codec *out, size_t *name_len) {
    char part[256];
    const size_t codec_len = (size_t)(end - eq - 1);
    KW_RETURN_IF(eq == seg + 1 || codec_len == 0 || codec_len >= sizeof part, KW_E_INVALID_ARG,
                 "--codec %s: a token rule is T<positions>=CODEC or Tlast<N>=CODEC (T0=int8:token, T0-3,7=..., "
                 "Tlast4=...)",
                 arg);
    memcpy(part, eq + 1, codec_len);
    part[codec_len] = '\0';
    kw_kvstats_codec one = {.name = "recompute"};
    const int omit = strcmp(part, "recompute") == 0; /* a prefix the kv_direct receiver prefills itself */
    if (!omit) KW_FORWARD(kw_kvstats_parse_codec(part, scale, &one));
    KW_RETURN_IF(one.lossless, KW_E_INVALID_ARG,
                 "--codec %s: a token rule needs a wire codec (bf16 for tokens kept at 16 bits), not none", arg);
    KW_RETURN_IF(
        one.outlier_fraction > 0.0 || one.pre_rope || one.rotate || one.clip || one.center || one.qscale || one.zstd ||
            one.rans || one.qmax_k || one.qmax_v,
        KW_E_INVALID_ARG,
        "--codec %s: a token rule takes CODEC:GRAN only; outliers, @prerope, @rot, @clip, @qmax, @center, @zstd and "
        "@rans are its layer's",
        arg);
    const kw_kvstats_token_rule base = {.spec = one.spec, .spec_v = one.spec_v, .omit = omit};
    const int pick = kw_kvstats_pick_kind(seg, eq);
    if (pick) {
        KW_RETURN_IF(omit, KW_E_INVALID_ARG, "--codec %s: recompute takes a prefix of the prompt, T0 or T0-N", arg);
        KW_FORWARD(kw_kvstats_parse_pick(arg, seg, eq, pick, out));
        out->token_rules[out->n_token_rules - 1].spec = one.spec;
        out->token_rules[out->n_token_rules - 1].spec_v = one.spec_v;
    }
    const int last = !pick && (size_t)(eq - seg) > 5 && strncmp(seg + 1, "last", 4) == 0;
    for (const char *p = seg + (last ? 5 : 1); !pick && p < eq;) {
        long lo = 0, hi = 0;
        const int ok = kw_kvstats_list_item(&p, eq, !last, (long)KW_WIRE_MAX_POSITIONS, &lo, &hi);
        KW_RETURN_IF(!ok || (last && (lo == 0 || p != eq)), KW_E_INVALID_ARG,
                     "--codec %s: token positions are numbers 0..%u and ranges a-b, by commas; Tlast<N> takes N >= 1",
                     arg, KW_WIRE_MAX_POSITIONS - 1);
        KW_RETURN_IF(omit && (last || lo != 0), KW_E_INVALID_ARG,
                     "--codec %s: recompute takes a prefix of the prompt, T0 or T0-N", arg);
        KW_RETURN_IF(out->n_token_rules == KW_KVSTATS_MAX_TOKEN_RULES, KW_E_INVALID_ARG,
                     "--codec %s: at most %d token ranges", arg, KW_KVSTATS_MAX_TOKEN_RULES);
        for (int32_t i = 0; i < out->n_token_rules; ++i) {
            const kw_kvstats_token_rule *o = &out->token_rules[i];
            KW_RETURN_IF(last && o->from_end, KW_E_INVALID_ARG, "--codec %s: Tlast is given twice", arg);
            KW_RETURN_IF(!last && !o->from_end && !o->pick && lo <= (long)o->last && hi >= (long)o->first,
                         KW_E_INVALID_ARG, "--codec %s: a token position is named twice", arg);
        }
        kw_kvstats_token_rule *tr = &out->token_rules[out->n_token_rules++];
        *tr = base;
        tr->first = (uint32_t)lo;
        tr->last = (uint32_t)hi;
        tr->from_end = last;
    }
    const int w =
        snprintf(out->name + *name_len, sizeof out->name - *name_len, ";%.*s=%s", (int)(eq - seg), seg, one.name);
    KW_RETURN_IF(w < 0 || (size_t)w >= sizeof out->name - *name_len, KW_E_INVALID_ARG,
                 "--codec %s: the schedule is too long", arg);
    *name_len += (size_t)w;
    return 0;
}

/* "BASE;L3,7=CODEC;L0-2=CODEC;T0=CODEC": the row's codec for every layer (parse_codec's syntax, "none" for the rows
 * as they are), then per-layer overrides, each a list of layers and ranges, '=', and a codec of the same syntax with
 * its own options (nothing is inherited from BASE), and per-token rules (kw_kvstats_parse_token_rule). A layer may be
 * named once; at most KW_KVSTATS_MAX_OVERRIDES overrides. */
static int kw_kvstats_parse_schedule(const char *arg, const char *scale, kw_kvstats_codec *out) {
    const char *semi = strchr(arg, ';');
    char part[256];
    if (!semi) return kw_kvstats_parse_codec(arg, scale, out);
    KW_RETURN_IF((size_t)(semi - arg) >= sizeof part, KW_E_INVALID_ARG, "--codec %s: the base codec is too long", arg);
    memcpy(part, arg, (size_t)(semi - arg));
    part[semi - arg] = '\0';
    KW_FORWARD(kw_kvstats_parse_codec(part, scale, out));
    size_t name_len = strlen(out->name);
    while (semi) {
        const char *seg = semi + 1, *next = strchr(seg, ';');
        const size_t seg_len = next ? (size_t)(next - seg) : strlen(seg);
        const char *eq = memchr(seg, '=', seg_len);
        if (seg_len > 0 && seg[0] == 'T' && eq) {
            KW_FORWARD(kw_kvstats_parse_token_rule(arg, seg, eq, seg + seg_len, scale, out, &name_len));
            semi = next;
            continue;
        }
        KW_RETURN_IF(seg_len == 0 || seg[0] != 'L' || !eq || eq == seg + 1 || (size_t)(seg + seg_len - eq) < 2 ||
                         (size_t)(seg + seg_len - eq) > sizeof part,
                     KW_E_INVALID_ARG,
                     "--codec %s: a layer override is L<layers>=CODEC (L3,7=int8:token, L0-2=...), a token rule "
                     "T<positions>=CODEC",
                     arg);
        KW_RETURN_IF(out->n_overrides == KW_KVSTATS_MAX_OVERRIDES, KW_E_INVALID_ARG,
                     "--codec %s: at most %d layer overrides", arg, KW_KVSTATS_MAX_OVERRIDES);
        const uint8_t slot = (uint8_t)(out->n_overrides + 1);
        for (const char *p = seg + 1; p < eq;) { /* "3,7", "0-2,5" */
            long lo = 0, hi = 0;
            KW_RETURN_IF(!kw_kvstats_list_item(&p, eq, 1, KW_KVSTATS_MAX_LAYERS, &lo, &hi), KW_E_INVALID_ARG,
                         "--codec %s: layers are numbers 0..%d and ranges a-b, by commas", arg,
                         KW_KVSTATS_MAX_LAYERS - 1);
            for (long l = lo; l <= hi; ++l) {
                KW_RETURN_IF(out->layer_codec[l], KW_E_INVALID_ARG, "--codec %s: layer %ld is named twice", arg, l);
                out->layer_codec[l] = slot;
            }
        }
        const size_t codec_len = (size_t)(seg + seg_len - eq - 1);
        memcpy(part, eq + 1, codec_len);
        part[codec_len] = '\0';
        kw_kvstats_codec one;
        KW_FORWARD(kw_kvstats_parse_codec(part, scale, &one));
        out->overrides[out->n_overrides++] = kw_kvstats_base_layer(&one);
        const int w = snprintf(out->name + name_len, sizeof out->name - name_len, ";%.*s=%s", (int)(eq - seg), seg,
                               one.lossless ? "none" : one.name);
        KW_RETURN_IF(w < 0 || (size_t)w >= sizeof out->name - name_len, KW_E_INVALID_ARG,
                     "--codec %s: the schedule is too long", arg);
        name_len += (size_t)w;
        semi = next;
    }
    return 0;
}

/* Whether log8 scales can carry a codec: K's and V's each an integer codec or one without scales (none, bf16, f16). */
static int kw_kvstats_log8_carries_spec(int lossless, const kw_wire_codec_spec *k, const kw_wire_codec_spec *v) {
    return lossless || ((k->scale_dtype == KW_WIRE_SCALE_NONE || kw_wire_codec_is_int(k->codec)) &&
                        (v->scale_dtype == KW_WIRE_SCALE_NONE || kw_wire_codec_is_int(v->codec)));
}

static int kw_kvstats_log8_carries(const kw_kvstats_codec *c) {
    int ok = kw_kvstats_log8_carries_spec(c->lossless, &c->spec, &c->spec_v);
    for (int32_t i = 0; i < c->n_overrides; ++i)
        ok &= kw_kvstats_log8_carries_spec(c->overrides[i].lossless, &c->overrides[i].spec, &c->overrides[i].spec_v);
    return ok;
}

static void kw_kvstats_print_heads(const kw_kvstats *s, const kw_model_config *cfg, int per_head) {
    if (per_head) {
        printf("\n== K and V magnitudes per layer and KV head (every prompt row) ==\n");
        printf("%-2s %5s %4s %9s %9s %8s %7s %11s %13s\n", "", "layer", "head", "mean|x|", "max|x|", "outlier",
               "channel", "token_range", "channel_range");
        for (int kind = 0; kind < 2; ++kind)
            for (int32_t l = 0; l < cfg->n_layers; ++l)
                for (int32_t h = 0; h < cfg->n_kv_heads; ++h) {
                    kw_kvstats_head st;
                    if (kw_kvstats_head_get(s, kind, l, h, &st) == 0)
                        printf("%-2s %5d %4d %9.4f %9.3f %7.1fx %7d %11.3f %13.3f\n", kind ? "V" : "K", (int)l, (int)h,
                               st.mean_abs, st.max_abs, st.outlier_ratio, (int)st.outlier_channel, st.token_range,
                               st.channel_range);
                }
    }
    printf("\n== mean L2 norm of a head vector at the first positions (the sink?) and over the rest ==\n");
    printf("%5s", "layer");
    for (int kind = 0; kind < 2; ++kind) {
        for (int32_t p = 0; p < KW_KVSTATS_POSITIONS; ++p)
            printf(" %6s%d", kind ? "V@" : "K@", (int)p);
        printf(" %8s", kind ? "V rest" : "K rest");
    }
    printf("\n");
    for (int32_t l = 0; l < cfg->n_layers; ++l) {
        printf("%5d", (int)l);
        for (int kind = 0; kind < 2; ++kind)
            for (int32_t p = 0; p <= KW_KVSTATS_POSITIONS; ++p) {
                double norm = 0.0;
                int64_t count = 0;
                kw_kvstats_position_get(s, kind, l, p, &norm, &count);
                printf(p < KW_KVSTATS_POSITIONS ? " %7.2f" : " %8.2f", norm);
            }
        printf("\n");
    }
    printf("\n== summary: outlier ratio = the largest channel mean |x| over the median channel's ==\n");
    for (int kind = 0; kind < 2; ++kind) {
        double worst = 0.0, sum_ratio = 0.0, max_abs = 0.0;
        int32_t worst_l = 0, worst_h = 0, worst_c = 0, n = 0, over10 = 0;
        for (int32_t l = 0; l < cfg->n_layers; ++l) {
            for (int32_t h = 0; h < cfg->n_kv_heads; ++h) {
                kw_kvstats_head st;
                if (kw_kvstats_head_get(s, kind, l, h, &st) < 0) continue;
                if (st.outlier_ratio > worst) {
                    worst = st.outlier_ratio;
                    worst_l = l, worst_h = h, worst_c = st.outlier_channel;
                }
                if (st.max_abs > max_abs) max_abs = st.max_abs;
                sum_ratio += st.outlier_ratio;
                over10 += st.outlier_ratio > 10.0;
                ++n;
            }
        }
        printf("%s: outlier ratio mean %.1fx over %d heads, largest %.1fx (layer %d head %d channel %d), %d heads "
               "above 10x; largest |x| %.2f\n",
               kind ? "V" : "K", n ? sum_ratio / n : 0.0, (int)n, worst, (int)worst_l, (int)worst_h, (int)worst_c,
               (int)over10, max_abs);
    }
}

/* The --layer-sensitivity rows first..first+n (row first+l quantizes layer l only), most sensitive first: by mean KL,
 * the smoother measure (agreement moves in steps of one token), then the layer list a schedule can take. */
static int kw_kvstats_print_sensitivity(const kw_kvstats *s, int32_t first, int32_t n, const char *name) {
    int32_t *order = malloc((size_t)n * sizeof *order);
    KW_RETURN_IF(!order, KW_E_NOMEM, "out of memory");
    int32_t m = 0;
    for (int32_t l = 0; l < n; ++l)
        if (kw_kvstats_result_get(s, first + l)->status == 0) order[m++] = l;
    for (int32_t i = 1; i < m; ++i) /* insertion sort by mean KL, largest first; ties by layer */
        for (int32_t j = i; j > 0; --j) {
            const double a = kw_kvstats_result_get(s, first + order[j - 1])->kl_sum,
                         b = kw_kvstats_result_get(s, first + order[j])->kl_sum;
            if (b <= a) break;
            const int32_t t = order[j];
            order[j] = order[j - 1], order[j - 1] = t;
        }
    printf("\n== layer sensitivity: %s on one layer, the others as they are; most sensitive (mean KL) first ==\n",
           name);
    printf("%5s %9s %10s %10s\n", "layer", "TF loss", "mean KL", "free loss");
    for (int32_t i = 0; i < m; ++i) {
        const kw_kvstats_result *r = kw_kvstats_result_get(s, first + order[i]);
        printf("%5d %9.4f %10.2e %10.4f\n", (int)order[i], 1.0 - (double)r->tf_agree / (double)r->tf_steps,
               r->kl_sum / (double)r->tf_steps, 1.0 - (double)r->free_agree / (double)r->free_steps);
    }
    printf("by sensitivity: L");
    for (int32_t i = 0; i < m; ++i)
        printf("%s%d", i ? "," : "", (int)order[i]);
    printf("\n");
    free(order);
    return 0;
}

static int kw_kvstats_cmp_gain(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* --qk-gain: the distribution over (layer, KV head) of the query-weighted key-scaling gain (kw_kvstats_qk_gain_get),
 * keys as they are and centred, per channel and pair-symmetric. */
static int kw_kvstats_print_qk_gain(const kw_kvstats *s, const kw_model_config *cfg) {
    const int32_t n = cfg->n_layers * cfg->n_kv_heads;
    double *g = malloc((size_t)n * sizeof *g);
    KW_RETURN_IF(!g, KW_E_NOMEM, "out of memory");
    int rc = 0;
    printf("\n== query-weighted key scaling: predicted gain G over %d (layer, KV head) ==\n", (int)n);
    printf("%-8s %-10s %8s %8s %8s %8s %8s\n", "keys", "scaling", "min", "p10", "median", "p90", "max");
    for (int centred = 0; centred < 2; ++centred)
        for (int pairs = 0; pairs < 2; ++pairs) {
            for (int32_t i = 0; i < n; ++i)
                KW_CHECK(kw_kvstats_qk_gain_get(s, i / cfg->n_kv_heads, i % cfg->n_kv_heads, centred, pairs, &g[i]));
            qsort(g, (size_t)n, sizeof *g, kw_kvstats_cmp_gain);
            printf("%-8s %-10s %8.3f %8.3f %8.3f %8.3f %8.3f\n", centred ? "centred" : "raw",
                   pairs ? "RoPE pairs" : "channel", g[0], g[n / 10], g[n / 2], g[(n * 9) / 10], g[n - 1]);
        }
out:
    free(g);
    return rc;
}

int kw_cmd_kvstats(int argc, char **argv) {
    const char *model_path = NULL, *prompts_path = NULL, *scale = "f32", *tok_path = NULL, *sens_arg = NULL;
    const char *codec_args[KW_KVSTATS_MAX_CODECS];
    int n_codec_args = 0, chat_on = 0, no_heads = 0, qk_gain = 0;
    int64_t max_new = 64, max_prompts = 1 << 20, threads = 0;
    const kw_cli_option opts[] = {
        KW_CLI_STR_REQUIRED("--model", &model_path),
        KW_CLI_STR_REQUIRED("--prompts", &prompts_path),
        KW_CLI_FLAG("--chat", &chat_on),
        KW_CLI_INT("--max-new-tokens", &max_new, 1, 4096),
        KW_CLI_INT("--max-prompts", &max_prompts, 1, 1 << 20),
        KW_CLI_LIST("--codec", codec_args, &n_codec_args, KW_KVSTATS_MAX_CODECS),
        KW_CLI_STR("--scale", &scale),
        KW_CLI_STR("--tokenizer", &tok_path),
        KW_CLI_INT("--threads", &threads, 0, 1024),
        KW_CLI_FLAG("--no-heads", &no_heads),
        KW_CLI_STR("--layer-sensitivity", &sens_arg),
        KW_CLI_FLAG("--qk-gain", &qk_gain),
    };
    const int st = KW_CLI_PARSE("kvwire kvstats", argc, argv, opts, kw_kvstats_usage);
    if (st != KW_CLI_RUN) return st;

    int rc = 0;
    kw_backend *be = NULL;
    kw_model *model = NULL;
    kw_tokenizer *tok = NULL;
    kw_kvstats *s = NULL;
    char *file = NULL;
    size_t file_len = 0;
    int32_t *ids = NULL, *ref_ids = NULL;
    kw_kvstats_codec sens; /* --layer-sensitivity's codec */
    const char *stage = "codecs";
    int32_t n_codecs = 0, n_sens = 0;
    /* owned: the --codec rows, then with --layer-sensitivity one row per layer */
    kw_kvstats_codec *codecs = calloc(KW_KVSTATS_MAX_CODECS + KW_KVSTATS_MAX_LAYERS, sizeof *codecs);
    KW_CHECK_IF(!codecs, KW_E_NOMEM, "out of memory");
    if (sens_arg) {
        KW_CHECK(kw_kvstats_parse_codec(sens_arg, scale, &sens));
        KW_CHECK_IF(sens.lossless, KW_E_INVALID_ARG, "--layer-sensitivity needs a quantizing codec, not none");
        if (n_codec_args == 0) codec_args[n_codec_args++] = "none";
    }
    const int defaults = n_codec_args == 0;
    if (defaults) {
        n_codec_args = (int)(sizeof kw_kvstats_default_codecs / sizeof kw_kvstats_default_codecs[0]);
        memcpy(codec_args, kw_kvstats_default_codecs, sizeof kw_kvstats_default_codecs);
    }
    const int log8 = strcmp(scale, "log8") == 0;
    for (int i = 0; i < n_codec_args; ++i) {
        if (log8) { /* parsed with f32 scales first, to tell the codecs log8 cannot carry */
            KW_CHECK(kw_kvstats_parse_schedule(codec_args[i], "f32", &codecs[n_codecs]));
            if (!kw_kvstats_log8_carries(&codecs[n_codecs])) {
                KW_CHECK_IF(!defaults, KW_E_INVALID_ARG,
                            "--codec %s: --scale log8 carries the integer codecs only (int2, int3, int4, int6, int8; "
                            "bf16 needs no scale): leave it out or choose --scale f32, f16, bf16 or e8m0",
                            codec_args[i]);
                fprintf(stderr, "kvstats: --scale log8 leaves %s out of the default codecs\n", codec_args[i]);
                continue;
            }
        }
        KW_CHECK(kw_kvstats_parse_schedule(codec_args[i], scale, &codecs[n_codecs++]));
    }
    stage = "prompts";
    KW_CHECK(kw_file_read_all(prompts_path, (size_t)64 << 20, &file, &file_len));
    stage = "load model";
    KW_CHECK(kw_backend_create_cpu((int)threads, &be));
    KW_CHECK(kw_model_load(be, model_path, NULL, &model));
    const kw_model_config *cfg = kw_model_get_config(model);
    KW_CHECK(kw_tokenizer_load(tok_path ? tok_path : model_path, &tok));
    enum kw_chat_family family = KW_CHAT_QWEN3;
    if (chat_on) KW_CHECK(kw_chat_family_for_model(model_path, cfg->arch, &family));
    if (sens_arg) { /* "none;L<l>=CODEC": layer l through the codec, every other layer as it is */
        KW_CHECK_IF(cfg->n_layers > KW_KVSTATS_MAX_LAYERS, KW_E_INVALID_ARG,
                    "--layer-sensitivity: %d layers, at most %d", (int)cfg->n_layers, KW_KVSTATS_MAX_LAYERS);
        for (int32_t l = 0; l < cfg->n_layers; ++l) {
            kw_kvstats_codec *c = &codecs[n_codecs + l];
            c->lossless = 1;
            c->n_overrides = 1;
            c->overrides[0] = kw_kvstats_base_layer(&sens);
            c->layer_codec[l] = 1;
            snprintf(c->name, sizeof c->name, "none;L%d=%.200s", (int)l, sens.name);
        }
        n_sens = cfg->n_layers;
    }
    KW_CHECK(kw_kvstats_create(model, codecs, n_codecs + n_sens, (int32_t)max_new, &s));
    if (qk_gain) KW_CHECK(kw_kvstats_qk_gain_enable(s));
    ref_ids = malloc((size_t)max_new * sizeof *ref_ids);
    KW_CHECK_IF(!ref_ids, KW_E_NOMEM, "out of memory");
    printf("kvstats: %s (%s, %d layers, %d KV heads x %d), prompts %s%s, %lld new tokens per prompt and codec, f32 "
           "cache, scales %s\n",
           model_path, kw_arch_name(cfg->arch), (int)cfg->n_layers, (int)cfg->n_kv_heads, (int)cfg->head_dim,
           prompts_path, chat_on ? " (chat template)" : "", (long long)max_new, scale);
    int64_t n_prompts = 0;
    stage = "prompt";
    for (char *line = file; line && line < file + file_len && n_prompts < max_prompts;) {
        char *nl = memchr(line, '\n', (size_t)(file + file_len - line));
        char *next = nl ? nl + 1 : NULL;
        if (nl) *nl = '\0';
        if (nl && nl > line && nl[-1] == '\r') nl[-1] = '\0';
        if (line[0]) {
            int64_t n = 0;
            size_t n_ids = 0;
            KW_CHECK(kw_kvstats_prompt_ids(cfg, tok, chat_on, family, line, strlen(line), &ids, &n_ids));
            n = (int64_t)n_ids;
            KW_CHECK_IF(n < 2, KW_E_INVALID_ARG, "prompt %lld encodes to %lld token(s); 2 or more are needed",
                        (long long)n_prompts + 1, (long long)n);
            KW_CHECK(kw_kvstats_add_prompt(s, ids, n, ref_ids));
            free(ids);
            ids = NULL;
            ++n_prompts;
            fprintf(stderr, "kvstats: prompt %lld (%lld tokens) done\n", (long long)n_prompts, (long long)n);
        }
        line = next;
    }
    KW_CHECK_IF(n_prompts == 0, KW_E_INVALID_ARG, "%s holds no prompt", prompts_path);

    printf("%lld prompts, %lld prompt rows\n", (long long)n_prompts, (long long)kw_kvstats_rows(s));
    kw_kvstats_print_heads(s, cfg, !no_heads);
    if (qk_gain) KW_CHECK(kw_kvstats_print_qk_gain(s, cfg));
    printf("\n== codecs: the prompt cache through a KVWire blob, then decoding (%lld prompts x %lld tokens) ==\n",
           (long long)n_prompts, (long long)max_new);
    /* bits per element: the whole blob (headers, indices, scales, zero points, checksums) over every K and V value */
    const double elems_per_row = 2.0 * cfg->n_layers * cfg->n_kv_heads * cfg->head_dim;
    int width = 34; /* the codec column: as wide as the longest name (schedules are long) */
    for (int32_t c = 0; c < n_codecs + n_sens; ++c)
        if ((int)strlen(codecs[c].name) > width) width = (int)strlen(codecs[c].name);
    printf("%-*s %11s %9s %10s %10s %9s %10s %10s\n", width, "codec", "bytes/token", "bits/elem", "K rel.err",
           "V rel.err", "TF agree", "mean KL", "free agree");
    for (int32_t c = 0; c < n_codecs + n_sens; ++c) {
        const kw_kvstats_result *r = kw_kvstats_result_get(s, c);
        if (r->status < 0) {
            printf("%-*s refused: %s (%s)\n", width, codecs[c].name, kw_strerror(r->status), r->why);
            continue;
        }
        const double per_row = (double)r->blob_bytes / (double)kw_kvstats_rows(s);
        printf("%-*s %11.1f %9.3f %10.2e %10.2e %9.4f %10.2e %10.4f\n", width, codecs[c].name, per_row,
               per_row * 8.0 / elems_per_row, r->k_norm2 > 0 ? sqrt(r->k_err2 / r->k_norm2) : 0.0,
               r->v_norm2 > 0 ? sqrt(r->v_err2 / r->v_norm2) : 0.0, (double)r->tf_agree / (double)r->tf_steps,
               r->kl_sum / (double)r->tf_steps, (double)r->free_agree / (double)r->free_steps);
    }
    if (n_sens) KW_CHECK(kw_kvstats_print_sensitivity(s, n_codecs, n_sens, sens.name));
out:
    if (rc < 0) fprintf(stderr, "kvwire kvstats: %s: %s (%s)\n", stage, kw_strerror(rc), kw_error_detail());
    free(codecs);
    free(ids);
    free(ref_ids);
    free(file);
    kw_kvstats_free(s);
    kw_tokenizer_free(tok);
    kw_model_free(model);
    kw_backend_destroy(be);
    return rc < 0 ? 1 : 0;
}
