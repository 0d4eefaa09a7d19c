/* kw_align.h: token alignment between a receiver and a sharer that use different tokenizers (c2c_spec.md §4), as the
 * C2C reference's TokenAligner (rosetta/model/aligner.py) and its evaluator (unified_evaluator.py) do it, so that a
 * Qwen3 receiver can take a Llama-3.2 sharer.
 *
 * align_tokens maps every receiver token to ONE sharer token: the receiver token is decoded on its own (a token that
 * holds part of a UTF-8 character decodes to U+FFFD); a special token goes through the pad/eos/bos/unk pairs (Python
 * dict semantics: later pairs overwrite earlier ones with the same receiver id, a pair whose sharer id is None does
 * not count), else its text looked up in the sharer vocabulary, else `unk or 0`; any other token's text is encoded
 * by the sharer tokenizer: no token gives `unk or 0`, one token is taken, several are resolved by the strategy
 * (FIRST: the first; LONGEST: the one whose own decode has the most code points, the first on a tie).
 *
 * align_chat renders the messages with each side's chat template (model/kw_chat.h), encodes both texts with offsets,
 * finds each message's content in each text (sequential search from the end of the previous match; a match counts if
 * a '<' follows it or it ends the text; else the first occurrence from there, or from 0, unless that looks like the
 * inside of <|begin_of_text|>), turns the character spans into token ranges (start: the first token ending after the
 * span start; end: the first token from there starting at or after the span end), cuts both token streams into
 * alternating template / message sections (their counts and types must agree, else KW_E_ALIGN) and merges them:
 * template sections keep each side's own tokens and pad the shorter at its end with its pad id (padding flag 1);
 * message sections keep the receiver's tokens and give the sharer align_tokens of them. The two streams then have
 * the same length, share positions 0..n-1 (pads take positions) and message_mask says which tokens are messages.
 *
 * The fusion sections (kv_cache_index) are cut where message_mask changes: message runs are fused, template runs
 * are not; the last run (the generation prompt) is the last section, run by the receiver alone.
 *
 * kw_align_run hands the aligned streams to c2c/kw_fusion.h, which runs the models. Not here: Gemma's template, tool
 * calls, several aligned sharers at once.
 * A kw_aligner caches align_tokens per receiver id, so it is used by one thread at a time; the tokenizers it borrows
 * are read-only and may be shared.
 */
#ifndef KW_ALIGN_H
#define KW_ALIGN_H

#include <stddef.h>
#include <stdint.h>

#include "c2c/kw_fusion.h"
#include "model/kw_chat.h"
#include "model/kw_tokenizer.h"

enum kw_align_strategy {
    KW_ALIGN_FIRST = 0,   /* the first sharer token of a multi-token encoding */
    KW_ALIGN_LONGEST = 1, /* the sharer token whose decode is longest (code points); the evaluation recipe's choice */
};

#define KW_ALIGN_MAX_SPECIALS 32

/* One side of the alignment: a tokenizer, its chat template and the special tokens of its tokenizer_config. Ids are
 * -1 for None. */
typedef struct kw_align_side {
    const kw_tokenizer *tok;     /* borrowed; must outlive the aligner */
    enum kw_chat_family family;  /* the chat template that renders this side's text */
    int32_t pad, eos, bos, unk;  /* a side without pad gets pad = eos (as TokenAligner does) */
    int specials_from_tokenizer; /* 1: all_special_ids = the tokenizer's special added tokens; 0: specials[] */
    int32_t specials[KW_ALIGN_MAX_SPECIALS]; /* all_special_ids when specials_from_tokenizer == 0 */
    int32_t n_specials;
} kw_align_side;

/* Fills *out for tok with the tokenizer_config of family's released models, looking the tokens up in tok:
 *   Qwen3, Qwen2.5-Instruct  pad <|endoftext|>, eos <|im_end|>, no bos, no unk; specials = the tokenizer's special
 *                            added tokens (additional_special_tokens + eos + pad)
 *   Llama-3.2-Instruct       bos <|begin_of_text|>, eos <|eot_id|>, pad = eos, no unk; specials = {bos, eos}
 * KW_E_NOT_FOUND when a token is not in tok, KW_E_INVALID_ARG for an unknown family. */
int kw_align_side_init(const kw_tokenizer *tok, enum kw_chat_family family, kw_align_side *out);

typedef struct kw_aligner kw_aligner; /* opaque: the two sides (copied) and the per-id cache (owned) */

/* *out is owned by the caller (kw_aligner_free). The sides are copied; their tokenizers are borrowed. Errors:
 * KW_E_INVALID_ARG (NULL, unknown strategy, special ids outside the vocabularies, no pad and no eos). */
int kw_aligner_create(const kw_align_side *receiver, const kw_align_side *sharer, enum kw_align_strategy strategy,
                      kw_aligner **out);

/* NULL is a no-op. */
void kw_aligner_free(kw_aligner *al);

/* The sides' pad ids (after the pad = eos rule). */
int32_t kw_aligner_receiver_pad(const kw_aligner *al);
int32_t kw_aligner_sharer_pad(const kw_aligner *al);

/* align_tokens: out[i] is the sharer token for receiver token ids[i] (out is caller-owned, n entries; it may not
 * alias ids). Results are cached per receiver id. KW_E_TOKEN_ID for an id outside the receiver vocabulary. */
int kw_aligner_align_tokens(kw_aligner *al, const int32_t *ids, size_t n, int32_t *out);

typedef struct kw_align_chat_options {
    int add_generation_prompt; /* the assistant header at the end (the evaluator's generate path: 1) */
    int enable_thinking;       /* Qwen3's template; 0 renders the empty think block (the evaluator passes 0) */
    int remove_last_suffix;    /* the reference's remove_last_surfix: the last message must be the assistant's; the
                                * text is messages[:-1] with a generation prompt, then its raw content. Not with
                                * add_generation_prompt */
    const char *date_string;   /* Llama-3.2's "Today Date" (required when a side is Llama-3.2), e.g. "23 Nov 2026" */
} kw_align_chat_options;

enum kw_align_section_type {
    KW_ALIGN_TEMPLATE = 0,
    KW_ALIGN_MESSAGE = 1,
};

/* One merged section: its type and its token range [start, end) in the padded streams (equal for both sides). */
typedef struct kw_align_section {
    int32_t type; /* enum kw_align_section_type */
    int64_t start, end;
} kw_align_section;

/* The merged streams. Everything is owned by the result (kw_align_result_free). */
typedef struct kw_align_result {
    int64_t n;                  /* tokens in each stream */
    int32_t *recv_ids;          /* (n) receiver ids, pads included */
    int32_t *sharer_ids;        /* (n) sharer ids, pads included */
    uint8_t *message_mask;      /* (n) 1 = a message token (fused), 0 = a template token */
    uint8_t *recv_pad;          /* (n) 1 = a pad inserted into the receiver stream */
    uint8_t *sharer_pad;        /* (n) 1 = a pad inserted into the sharer stream */
    kw_align_section *sections; /* (n_sections) the merged template/message sections */
    int32_t n_sections;
    char *recv_text, *sharer_text; /* the rendered templates (NUL-terminated) */
} kw_align_result;

/* align_chat_messages (see the header comment). *out is zeroed on failure. Errors: KW_E_INVALID_ARG (options, NULL
 * messages, remove_last_suffix without a final assistant message), kw_chat_render's (KW_E_TEMPLATE ...), KW_E_ALIGN
 * when the two texts do not cut into the same sections (the reference's "Section count mismatch" /
 * "Section type mismatch" assertions: e.g. Llama-3.2 trims message content, so content with leading or trailing
 * whitespace is not found in its text). */
int kw_aligner_align_chat(kw_aligner *al, const kw_chat_message *messages, size_t n_messages,
                          const kw_align_chat_options *opt, kw_align_result *out);

/* Releases everything in r and zeroes it. NULL is a no-op. */
void kw_align_result_free(kw_align_result *r);

/* The evaluator's kv_cache_index for an aligned prompt: one section per run of equal message_mask, index `mask` (a
 * sharer bitmask, 1 for one sharer) for message runs and -1 for template runs. *out is a new array owned by the
 * caller (free()), *n_out its length. KW_E_INVALID_ARG for an empty result or mask <= 0. */
int kw_align_fusion_sections(const kw_align_result *r, int32_t mask, kw_fusion_section **out, int32_t *n_out);

/* What the receiver attends to after the first generated token. The reference's generate() passes the whole
 * attention mask to each decode step, but RosettaModel.forward slices it to [:, :1] there (its section loop runs the
 * single new token as a last section of length 1), so HF sees an all-ones mask and the decode steps attend to the
 * receiver's pad rows. The prompt itself (all sections and the first token) always masks the pads. */
enum kw_align_decode_pads {
    KW_ALIGN_PADS_REFERENCE = 0, /* as the reference: pads visible from the first decode step on */
    KW_ALIGN_PADS_MASKED = 1,    /* pads stay masked for the whole generation */
};

/* The decode-pads quirk for a caller that runs the pipeline itself (the receiver half): with KW_ALIGN_PADS_REFERENCE,
 * *gen becomes base with on_token chained through hook (caller-owned, must outlive the generation), which unmasks
 * every cache row before the first decode step; with KW_ALIGN_PADS_MASKED, *gen is base. */
typedef struct kw_align_pads_hook {
    kw_kvcache *cache;
    int done;
    int (*user_fn)(void *user, int32_t id);
    void *user;
} kw_align_pads_hook;

void kw_align_pads_gen(kw_align_pads_hook *hook, kw_kvcache *cache, enum kw_align_decode_pads pads,
                       const kw_generate_options *base, kw_generate_options *gen);

/* Runs C2C on an aligned prompt. The fusion's sharer 0 is the aligned sharer (a fusion of one sharer, as the
 * reference evaluator builds; further sharers would get the receiver's ids and are not selected): sections from
 * kw_align_fusion_sections(r, 1), the receiver's pads masked in cache (empty, capacity >= r->n + max_new_tokens), the
 * sharer's ids and pads through the fusion options, positions = cache rows for both models, then greedy decoding
 * with pads as `pads` says (chained before base->gen.on_token). base supplies mode, numerics, sharer_cache_dtype,
 * gen, hook (its sections, n_sections, sharer_ids and sharer_pad must be unset). Results and errors as kw_fusion_run.
 */
int kw_align_run(kw_fusion *f, kw_kvcache *cache, const kw_align_result *r, const kw_fusion_options *base,
                 enum kw_align_decode_pads pads, kw_fusion_result *out);

#endif /* KW_ALIGN_H */
