/* kw_request.h: the driving logic of one request that `kvwire c2c` and the daemons share, so that the three ways of
 * joining the two halves (in memory, over TCP, over TLS) build the same plan from the same request: the prompt's
 * sections for a mode, what each sharer is asked to prefill and send (its view of the sections, the layers), and the
 * two stages of the text relay (c2c_spec.md §5.5): the sharer's background message and the receiver's conversation
 * around it.
 *
 * Not here: the halves themselves (c2c/kw_share.h, c2c/kw_fusion.h, receiver/), codecs (sharer/), transports.
 */
#ifndef KW_REQUEST_H
#define KW_REQUEST_H

#include <stddef.h>
#include <stdint.h>

#include "c2c/kw_fusion.h"
#include "c2c/kw_relay.h"
#include "model/kw_chat.h"
#include "model/kw_config.h"
#include "model/kw_model.h"
#include "model/kw_tokenizer.h"

/* Most sections a request may have (token alignment makes one per template or message span). */
#define KW_REQUEST_MAX_SECTIONS 1024

/* The receiver's sections of an n-token prompt: with proportion < 0 the standard split (c2c_spec §1.2: n - 1 tokens
 * with index mask, then the last token), else the cache-length setting (kw_fusion_sections_proportion: the front or
 * back floor((n - 1) * proportion) tokens with mask). out needs 3 entries. */
int kw_request_sections(int64_t n, int32_t mask, double proportion, enum kw_fusion_order order, kw_fusion_section *out,
                        int32_t *n_out);

/* What sharer i sees of the receiver's sections: the same lengths with index 1 where it sends (index > 0 and, in c2c,
 * bit i of the mask; kv_direct: every index > 0) and -1 elsewhere, the last section included. *prefix is the token
 * count it prefills (every section but the last). out holds n entries. *n_sent (may be NULL): the sent sections. */
int kw_request_sharer_sections(const kw_fusion_section *sections, int32_t n, int32_t sharer, int kv_direct,
                               kw_fusion_section *out, int64_t *prefix, int32_t *n_sent);

/* kv_direct's recompute_prefix (docs/HTTP_API.md; issue 15): the prompt's first `prefix` positions leave the sent
 * sections (index -1): the sharer still prefills them but sends no rows for them, and the receiver, which runs the
 * same model and has the ids, prefills them itself (kw_receive_prefill of an unsent section: exact rows, no bytes).
 * A sent section the prefix cuts is split; neighbouring unsent sections before the last are merged. sections (*n
 * entries, room for cap; the last one the final token's) is rewritten in place; prefix 0 changes nothing. Errors:
 * KW_E_INVALID_ARG when the prefix leaves no sent position (naming the prompt's shared length) or cap is too small. */
int kw_request_recompute_prefix(kw_fusion_section *sections, int32_t *n, int32_t cap, int64_t prefix);

/* The sharer layers a request sends. c2c (f not NULL): the layers sharer i's fuser uses (kw_fusion_needed_layers),
 * kept only where they appear in subset[0..n_subset) when subset is not NULL; kv_direct (f NULL): every one of the
 * n_model_layers layers (a subset is refused: the receiver needs every layer of its own cache). Writes at most cap
 * entries. Errors: KW_E_INVALID_ARG (a subset layer that is not a layer, not ascending, or with kv_direct),
 * KW_E_LIMIT (cap). */
int kw_request_sharer_layers(const kw_fusion *f, int32_t sharer, int32_t n_model_layers, const int32_t *subset,
                             int32_t n_subset, int32_t *out, int32_t cap, int32_t *n_out);

/* Stage 1 of the text relay, on the sharer: its greedy reply (max_tokens tokens at most, cache of cache_dtype) to the
 * background prompt of question (kw_relay_background_prompt) rendered with its own chat template, family (from
 * kw_chat_family_for_model, so a GGUF file's own template counts; date: Llama-3.2's
 * "Today Date", may be NULL for the others), stripped of surrounding ASCII whitespace and capped to cap UTF-8 bytes at
 * a character boundary (cap < 0: no cap). *out is owned by the caller (kw_request_relay_free). on_token (may be NULL)
 * is kw_generate_options.on_token, e.g. to cancel between tokens. */
typedef struct kw_request_relay {
    char *text; /* NUL-terminated, len bytes */
    size_t len;
    int64_t n_tokens; /* generated */
    int truncated;    /* the cap cut the reply */
    double ms;        /* prompt building, generation and decoding */
} kw_request_relay;

int kw_request_relay_message(kw_model *sharer, const kw_tokenizer *tok, enum kw_chat_family family,
                             const char *question, const char *date, int64_t max_tokens, int64_t cap,
                             enum kw_dtype cache_dtype, int (*on_token)(void *user, int32_t id), void *user,
                             kw_request_relay *out);

void kw_request_relay_free(kw_request_relay *r);

/* The message of any relay style (c2c/kw_relay.h): KW_RELAY_GENERATED is kw_request_relay_message with these
 * arguments; raw and extractive come from the question alone (kw_relay_text: sharer, tok and the generation
 * arguments are not used, n_tokens is 0). */
int kw_request_relay_styled(enum kw_relay_style style, kw_model *sharer, const kw_tokenizer *tok,
                            enum kw_chat_family family, const char *question, const char *date, int64_t max_tokens,
                            int64_t cap, enum kw_dtype cache_dtype, int (*on_token)(void *user, int32_t id), void *user,
                            kw_request_relay *out);

/* Stage 2 of the text relay, on the receiver: the conversation msgs[0..n) with [user: background(question),
 * assistant: relay] inserted before its last message. *background is allocated here (the caller frees it; the
 * returned messages borrow it, relay and msgs). out needs n + 2 entries. */
int kw_request_relay_conversation(const kw_chat_message *msgs, size_t n, const char *question, const char *relay,
                                  char **background, kw_chat_message *out, size_t *n_out);

#endif /* KW_REQUEST_H */
