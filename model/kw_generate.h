/* kw_generate.h: greedy decoding with a kw_model, as HF generate(do_sample=False) does it.
 *
 * The prompt tokens still to run are appended to the cache (which may already hold a prefix: C2C prefills positions
 * 0..L-2, fuses the cache, then generates from the last prompt token), the last one's logits give the first new
 * token, and each new token is fed back until an EOS id is produced (it is kept in the output, as HF does) or
 * max_new_tokens tokens exist. Argmax ties go to the lowest id. Not here: sampling, penalties, batches.
 */
#ifndef KW_GENERATE_H
#define KW_GENERATE_H

#include <stdint.h>

#include "model/kw_kvcache.h"
#include "model/kw_model.h"

enum kw_logits_round {
    KW_LOGITS_ROUND_AUTO = 0, /* round to bf16 when the model's lm_head is bf16 (HF computes bf16 logits then) */
    KW_LOGITS_ROUND_NONE = 1, /* argmax over the f32 logits */
    KW_LOGITS_ROUND_BF16 = 2, /* argmax over the logits rounded to bf16 (ties -> lowest id) */
};

typedef struct kw_generate_options {
    int32_t max_new_tokens;     /* >= 0 */
    enum kw_logits_round round; /* see above */
    const int32_t *eos_ids;     /* NULL: the model's generation_config EOS list; borrowed */
    int32_t n_eos;              /* entries of eos_ids (0 with eos_ids non-NULL: never stop early) */
    /* Called after each new token (NULL: none); a negative return stops generation with that status, a positive one
     * (KW_GENERATE_STOP) stops it cleanly after this token (e.g. a stop string was completed). */
    int (*on_token)(void *user, int32_t id);
    void *user;
    /* Teacher forcing (NULL: none): the new tokens are force_ids[0..n_force) instead of the model's choices, fed back
     * one after the other; max_new_tokens must equal n_force and an EOS id does not stop early. Borrowed. */
    const int32_t *force_ids;
    int32_t n_force;
    /* Called for each new token before on_token with the logits that chose it (NULL: none; the logits then never
     * leave the backend): step counts from 0 (the last prompt token's logits), logits are vocab f32 values as
     * computed (before any bf16 rounding of the argmax), argmax is the model's choice (which forcing may override).
     * Borrowed for the call. A negative return stops generation with that status. */
    int (*on_logits)(void *user, int64_t step, const float *logits, int32_t vocab, int32_t argmax);
} kw_generate_options;

#define KW_GENERATE_STOP 1 /* on_token: stop after this token */

typedef struct kw_generate_result {
    int32_t *ids; /* the new tokens, EOS included if hit; owned by the caller (free()), may be NULL if n == 0 */
    int64_t n;
    int stopped_eos;   /* 1 if the last token is an EOS id */
    double prefill_ms; /* the prompt tokens, up to and including the first new token's logits */
    double decode_ms;  /* the decode steps after the first token */
    int64_t n_decode;  /* number of decode steps timed in decode_ms */
} kw_generate_result;

/* Runs prompt[0..n_prompt) (n_prompt >= 1) after whatever cache already holds, then decodes greedily (or feeds the
 * forced tokens). The cache
 * keeps every token but the last generated one (HF semantics: the final token is produced, never fed back).
 * On failure *out is zeroed and nothing is owned. */
int kw_generate_greedy(kw_model *model, kw_kvcache *cache, const int32_t *prompt, int64_t n_prompt,
                       const kw_generate_options *opts, kw_generate_result *out);

/* Releases out->ids and zeroes *out. NULL is a no-op. */
void kw_generate_result_free(kw_generate_result *out);

#endif /* KW_GENERATE_H */
