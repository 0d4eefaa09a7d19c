/* kw_kvstats.h: what a model's KV cache looks like on real prompts, and what each KVWire codec does to it
 * (`kvwire kvstats`, tools/cmd_kvstats.c).
 *
 * For every prompt of n tokens, the model prefills tokens 0..n-2 into an f32 cache; those rows (the prompt cache, what
 * a kv_direct transfer carries) are measured and, for each codec, sent through a real KVWire blob (encoder, reader,
 * dequantizer) and written back. The model then runs the last prompt token and decodes from the reconstructed cache,
 * computing the rows of that token and the new ones itself. Against the unquantized run (the reference, greedy,
 * never stopping at EOS) each codec gets:
 *  - the reconstruction error ||x' - x|| / ||x|| of K and of V over every prompt row of every layer;
 *  - teacher-forced agreement: at each of the n_new steps, fed the reference's tokens so far, does the model pick the
 *    reference's next token; and the KL divergence KL(reference || codec) of the next-token distribution there;
 *  - free-running agreement: the fraction of the n_new greedy tokens equal to the reference's at the same position.
 * One flip at a near-tie changes every later free-running token, which is why the teacher-forced numbers are there.
 * The magnitudes are per (layer, KV head) over every prompt row: mean and largest |x|, the outlier ratio (the largest
 * per-channel mean |x| over the median channel's) and its channel, the mean per-token range (max - min over a row's
 * channels) and the mean per-channel range (max - min of a channel over the rows).
 * A codec row may give layers their own codec (a per-layer schedule, kw_kvstats_codec.overrides): each layer is one
 * section of the row's blob with its own policy, or, lossless, its rows as they are, counted at f32.
 * A codec row may also give tokens their own codec (a per-token schedule, kw_kvstats_codec.token_rules: the first
 * positions, attention sinks, or the last ones): in every quantized layer's section those rows form token groups of
 * their own (FORMAT.md §4.2) with the rule's K and V specs; the section's options (outliers, rotation, pre-RoPE keys,
 * clipping) stay the layer's. The bytes counted are the blob's, group tables included. A rule may also pick its rows
 * per prompt and layer by the attention they received in the unquantized prefill (the model's queries through
 * kw_forward_args.on_queries, asked for only when a row has such a rule), or at random as a control.
 * A layer's keys may also be centred (mu per KV head, kw_kvstats_codec.center) or scaled per channel from the prompt's
 * queries (qscale) before encoding, undone after decoding, their side data counted (issue 15; simulated, no wire
 * field). Besides the per-head table, the mean L2 norm of a head vector of K and of V per layer at each of the first
 * KW_KVSTATS_POSITIONS positions and over the rest (kw_kvstats_position_get): whether position 0 stands out.
 * Not here: the wire transport, selection of tokens, C2C.
 */
#ifndef KW_KVSTATS_H
#define KW_KVSTATS_H

#include <stdint.h>

#include "model/kw_chat.h"
#include "model/kw_config.h"
#include "model/kw_model.h"
#include "model/kw_tokenizer.h"
#include "wire/kw_wire.h"

#define KW_KVSTATS_MAX_LAYERS      256  /* layers a schedule can name */
#define KW_KVSTATS_MAX_OVERRIDES   4    /* distinct per-layer codecs in one schedule besides the base */
#define KW_KVSTATS_MAX_TOKEN_RULES 8    /* token ranges of one row with their own codec */
#define KW_KVSTATS_POSITIONS       4    /* leading positions whose norms are kept apart */
#define KW_KVSTATS_MAX_HEAD_VALUES 4096 /* n_kv_heads x head_dim of a model whose key gain is measured */

/* The codec of one layer in a schedule: what kw_kvstats_codec's fields of the same names mean, for that layer only
 * (nothing is inherited from the base). lossless: the layer's rows go as they are (f32, counted at 4 bytes per
 * element, outside the blob). */
typedef struct kw_kvstats_layer_codec {
    int lossless;
    kw_wire_codec_spec spec, spec_v;
    double outlier_fraction;
    int pre_rope, rotate, clip;
    int center; /* enum kw_kvstats_center */
    int qscale;
    int zstd; /* the section body's zstd level, 0 for none */
    int rans; /* 1: the section body rANS-coded where smaller (with zstd: the smaller of the two) */
    int qmax_k, qmax_v;
} kw_kvstats_layer_codec;

/* Query-weighted keys (kw_kvstats_codec.qscale). */
enum kw_kvstats_qscale {
    KW_KVSTATS_QSCALE_NONE = 0,
    KW_KVSTATS_QSCALE_PAIRS = 1,    /* A and B summed over RoPE's channel pairs: a scaling that commutes with RoPE */
    KW_KVSTATS_QSCALE_CHANNELS = 2, /* per channel of the post-RoPE keys as sent */
};

/* Centred keys (issue 15, simulated: not a wire field yet). Per (layer, KV head) the sharer takes mu, the mean over
 * the rows it sends of the key, rounded to f16, and encodes the residual; the receiver adds the offset back after
 * decoding. bits/elem counts mu as n_kv_heads x head_dim f16 per centred layer per prompt. */
enum kw_kvstats_center {
    KW_KVSTATS_CENTER_NONE = 0,
    KW_KVSTATS_CENTER_PRE = 1,  /* mu of the pre-RoPE keys; the residual k(p) - R(p) mu = R(p)(k_pre(p) - mu), the
                                   offset R(p) mu rebuilt at each row's position p (kv_direct) */
    KW_KVSTATS_CENTER_POST = 2, /* mu of the post-RoPE keys as they are; the residual k(p) - mu */
    KW_KVSTATS_CENTER_PRE8 = 3, /* as PRE, mu sent as int8 per (layer, KV head) with an f16 absmax scale: D + 2 bytes
                                   per head instead of 2 D */
};

/* The offsets a centred layer's keys carry: out (n, H, D) gets mu (H, D) at every row, rotated by RoPE at positions
 * p0 .. p0 + n - 1 with KW_KVSTATS_CENTER_PRE (layer l's RoPE). Errors: KW_E_INVALID_ARG, KW_E_NOMEM. */
/* The bytes of one centred layer's mu: H x D f16, or H x (D int8 + an f16 scale) with KW_KVSTATS_CENTER_PRE8. */
int64_t kw_kvstats_center_bytes(int mode, int32_t n_kv_heads, int32_t head_dim);

int kw_kvstats_center_offsets(const kw_model_config *cfg, int32_t layer, int mode, const float *mu, int64_t p0,
                              int64_t n, float *out);

/* How a token rule picks its rows (kw_kvstats_token_rule.pick). The data-dependent ones choose, in each prompt and
 * quantized layer apart, round(fraction x the rows sent) rows (at least 1) among the sent rows no positional rule
 * takes, by a score per row, highest first, ties to the lower position (kw_kvstats_pick_rows). */
enum kw_kvstats_pick {
    KW_KVSTATS_PICK_POSITIONS = 0, /* the positions first..last, or the last `first` rows (from_end) */
    KW_KVSTATS_PICK_ATTN = 1,      /* the rows that received the most attention in the unquantized prefill: the
                                      layer's kw_kvstats_attention_received over its query heads, from every prompt
                                      query, or from the last `queries` ones */
    KW_KVSTATS_PICK_LEAST = 2,     /* the rows that received the least attention (a control), the same score negated */
    KW_KVSTATS_PICK_RAND = 3,      /* rows at random (a control): a fixed hash of (prompt, layer, position) */
};

/* Prompt rows with their own K and V codecs in every quantized layer: positions first..last (inclusive), or with
 * from_end the last `first` rows of each prompt (last unused), or with pick a data-dependent choice (enum
 * kw_kvstats_pick; at most one such rule per row: its rows never overlap the positional rules'). A row takes the
 * first rule that covers it. omit: a prefix (first 0, not from_end, no pick) that is not sent at all, kept exact at 0
 * bytes: in kv_direct the receiver runs the sharer's model and has the prompt's ids, so it can prefill a prefix
 * itself (position 0 depends on token 0 only); the sections then carry positions last+1.. . Omitted rows win over
 * every other rule. */
typedef struct kw_kvstats_token_rule {
    uint32_t first, last;
    int from_end, omit;
    int pick;                        /* enum kw_kvstats_pick; not POSITIONS: first, last, from_end and omit unused */
    double fraction;                 /* pick: the fraction of the sent rows chosen, in (0, 1] */
    uint32_t queries;                /* PICK_ATTN, PICK_LEAST: 0 every prompt query's attention, else the last N's */
    kw_wire_codec_spec spec, spec_v; /* unused with omit */
} kw_kvstats_token_rule;

/* One codec configuration: the fields below for every layer, unless a per-layer schedule gives a layer one of the
 * overrides; the token rules split every quantized layer's rows into token groups. */
typedef struct kw_kvstats_codec {
    int lossless;              /* 1: the cache as it is, no blob (the control row: agreement 1, KL 0, error 0) */
    kw_wire_codec_spec spec;   /* K's codec */
    kw_wire_codec_spec spec_v; /* V's codec (the same as K's unless the configuration names two) */
    double outlier_fraction;   /* v1.1: this fraction of each section's K and V elements sent exact in its outlier
                                  table (bf16 values, what a bf16 cache holds), 0 for none */
    int pre_rope;              /* v1.1: K sent before RoPE (the rotation undone before encoding, redone after decoding,
                                  as a kv_direct receiver would), with the section flag set */
    int rotate;                /* v1.1: bit 0 K, bit 1 V sent rotated by the randomized Hadamard transform (the
                                  section flags of FORMAT.md §5.12: the encoder rotates, the dequantizer rotates back) */
    int clip;                  /* bit 0 K, bit 1 V: the encoder's clipped-scale search (FORMAT.md §5.13) */
    int center;                /* enum kw_kvstats_center: K centred by its mean before encoding (not with pre_rope,
                                  nor on a lossless row) */
    int qscale;                /* enum kw_kvstats_qscale: K scaled per (KV head, channel) by 2^e before encoding,
                                  e = round(log2 of (A / B)^(1/4)) minus the head's mean, A and B the sums of q^2
                                  over the prompt's queries of the head's query heads and of k^2 over the rows sent
                                  (after centring); decoded keys scaled back. e counted as one byte per channel
                                  (simulated, issue 15) */
    int zstd;                  /* zstd level of every section body (the wire's flag bit 0: stored raw where zstd
                                  does not shrink it), 0 for none; bits/elem counts the stored bytes */
    int rans;                  /* 1: every section body coded by the static rANS byte coder (the wire's flag bit 5,
                                  FORMAT.md §5.15) where that makes it smaller; with zstd the smaller of the two */
    int qmax_k, qmax_v;        /* the encoder's code limit of K and V (kw_wire_policy.code_limit_k/v, FORMAT.md
                                  §5.14): 0, or integer codes held to +-qmax (zero points: 0..qmax) in the codec's
                                  container, for zstd to store in fewer bits; the layer's codec only, 1..255 */
    int32_t n_overrides;       /* per-layer schedule: overrides[0 .. n_overrides) */
    kw_kvstats_layer_codec overrides[KW_KVSTATS_MAX_OVERRIDES];
    uint8_t layer_codec[KW_KVSTATS_MAX_LAYERS]; /* 0: layer l takes the fields above; i: overrides[i - 1]. A layer
                                                   at or past the model's layer count must be 0 */
    int32_t n_token_rules; /* per-token schedule: token_rules[0 .. n_token_rules), lossless layers excepted */
    kw_kvstats_token_rule token_rules[KW_KVSTATS_MAX_TOKEN_RULES];
    char name[256]; /* "int4/group32", or "int2-asym/channel32+int2-asym/token" for K+V, "...;L3,7=int8/token" with a
                       schedule, for printing */
} kw_kvstats_codec;

/* The fields of row c that a layer codec also has: what a layer without an override takes, and what a per-layer
 * override parsed as a whole row contributes. */
kw_kvstats_layer_codec kw_kvstats_base_layer(const kw_kvstats_codec *c);

/* The magnitudes of one (layer, KV head) of K or V. */
typedef struct kw_kvstats_head {
    double mean_abs, max_abs;
    double outlier_ratio; /* largest channel mean |x| / median channel mean |x| (0 if the median is 0) */
    int32_t outlier_channel;
    double token_range;   /* mean over rows of (max - min over the channels) */
    double channel_range; /* mean over channels of (max - min over the rows) */
} kw_kvstats_head;

/* What one codec did, summed over the prompts. */
typedef struct kw_kvstats_result {
    int status;             /* 0, or the negative kw_status the codec failed with (KW_E_WIRE_RANGE ...) */
    char why[160];          /* with status < 0: why the row was refused (kw_error_detail at the time) */
    double k_err2, k_norm2; /* sums of (x' - x)^2 and x^2 over K */
    double v_err2, v_norm2;
    int64_t blob_bytes;         /* the blobs' sizes, plus the rows of lossless layers at f32 */
    int64_t tf_agree, tf_steps; /* teacher-forced steps whose argmax is the reference's token */
    double kl_sum;              /* KL(reference || codec) summed over those steps, nats */
    int64_t free_agree, free_steps;
} kw_kvstats_result;

typedef struct kw_kvstats kw_kvstats; /* opaque */

/* The query-weighted key-scaling gain of issue 15 on one (layer, KV head): with a_i = the sum of q_i^2 over the
 * prompt queries of the head's query heads and b_i = the sum of k_i^2 over the keys, G = (sum a)(sum b) /
 * (sum sqrt(a_i b_i))^2 >= 1, the factor by which a diagonal scaling before the rotation (d_i^2 = sqrt(a_i / b_i))
 * lowers the expected logit error q . dk (Cauchy-Schwarz). centred: the keys centred by their pre-RoPE mean per
 * prompt (KW_KVSTATS_CENTER_PRE); pairs: d equal on RoPE's channel pairs (i, i + rotary_dim / 2), as a scaling that
 * commutes with RoPE must be. Needs kw_kvstats_qk_gain_enable before the first prompt. */
int kw_kvstats_qk_gain_enable(kw_kvstats *s);
int kw_kvstats_qk_gain_get(const kw_kvstats *s, int32_t layer, int32_t head, int centred, int pairs, double *g);

/* Creates the accumulators for model (borrowed; it must outlive *out) and the codecs (copied), n_new >= 1 tokens per
 * prompt. A schedule that names a layer the model lacks or an override that does not exist, a token rule with
 * first > last (or from_end with first 0, or omit on anything but a prefix), or token rules on a row with no quantized
 * layer is KW_E_INVALID_ARG. *out is owned by the caller (kw_kvstats_free). */
/* The token ids of one prompt as kvstats runs it (`kvwire tokenize --bos|--chat` prints the same): with chat, text as
 * one user turn of family's chat template with the generation prompt appended (the template writes BOS itself; its
 * date fixed, so runs repeat); else text's ids, BOS first where cfg's raw-text prompts have it (kw_config_prepend_bos;
 * cfg NULL: the ids alone). text: len bytes, NUL-terminated after them; with chat it may hold no U+0000 before len
 * (the renderer stops there: KW_E_INVALID_ARG). *ids (*n of them) owned by the caller. */
int kw_kvstats_prompt_ids(const kw_model_config *cfg, const kw_tokenizer *tok, int chat, enum kw_chat_family family,
                          const char *text, size_t len, int32_t **ids, size_t *n);

int kw_kvstats_create(kw_model *model, const kw_kvstats_codec *codecs, int32_t n_codecs, int32_t n_new,
                      kw_kvstats **out);
/* Releases everything. NULL is a no-op. */
void kw_kvstats_free(kw_kvstats *s);

/* Runs one prompt of n >= 2 token ids through the reference and every codec (see the top). The reference's greedy
 * tokens are written to ref_ids (n_new entries) when it is not NULL. */
int kw_kvstats_add_prompt(kw_kvstats *s, const int32_t *ids, int64_t n, int32_t *ref_ids);

/* The magnitudes so far: head (kind 0 = K, 1 = V) of layer. Computed on each call. */
int kw_kvstats_head_get(const kw_kvstats *s, int kind, int32_t layer, int32_t head, kw_kvstats_head *out);

/* The results so far of codec c (borrowed, valid until the next add_prompt or free), or NULL if c is out of range. */
const kw_kvstats_result *kw_kvstats_result_get(const kw_kvstats *s, int32_t c);

/* The mean L2 norm of one head vector of layer's K (kind 0) or V (kind 1) at position p < KW_KVSTATS_POSITIONS, or
 * over every later position (p == KW_KVSTATS_POSITIONS), over the heads and prompts so far; *count: the head vectors
 * averaged (0: no prompt reached that position, *norm 0). */
int kw_kvstats_position_get(const kw_kvstats *s, int kind, int32_t layer, int32_t p, double *norm, int64_t *count);

/* Prompt rows measured so far (sum of n - 1). */
int64_t kw_kvstats_rows(const kw_kvstats *s);

/* The attention each key row of one layer received from the queries [from, T) of a prefill: mass[t] (T entries,
 * caller-owned) = the sum over those queries i >= t and the n_heads query heads of softmax_j(scale q_i . k_j)[t], j
 * over the rows query i sees (j <= i, and j > i - window when window > 0), in double. q (T, n_heads, D) and k (T,
 * n_kv_heads, D) f32 rows; query head h reads KV head h / (n_heads / n_kv_heads), as kw_op_attention. Errors:
 * KW_E_INVALID_ARG, KW_E_NOMEM. */
int kw_kvstats_attention_received(const float *q, const float *k, int64_t T, int32_t n_heads, int32_t n_kv_heads,
                                  int32_t D, float scale, int64_t window, int64_t from, double *mass);

/* The rows a data-dependent token rule takes among rows [t0, T): n = round(fraction (T - t0)) (halves up), at least
 * 1, at most the rows not taken (taken[t] != 0: a positional rule's, T entries, or NULL), those of highest score[t]
 * (T entries), ties to the lower position. chosen (T entries, caller-owned) gets 1 at the chosen rows and 0
 * elsewhere; *n_chosen (may be NULL) the count. fraction outside (0, 1] is KW_E_INVALID_ARG; KW_E_NOMEM. */
int kw_kvstats_pick_rows(const double *score, int64_t t0, int64_t T, const uint8_t *taken, double fraction,
                         uint8_t *chosen, int64_t *n_chosen);

#endif /* KW_KVSTATS_H */
