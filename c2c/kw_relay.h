/* kw_relay.h: the text-relay baseline (c2c_spec.md §5.5, the reference's two-stage "T2T" model): instead of its KV
 * cache, the sharer sends text. Stage 1: the sharer answers [user: background prompt(question)] greedily; its reply,
 * optionally capped to a UTF-8 byte budget, is the message. Stage 2: the receiver answers
 * [user: background prompt(question), assistant: message, user: the full prompt]. Bytes on the wire are the message's
 * UTF-8 bytes. Pure string work: the models and chat templates are the caller's. */
#ifndef KW_RELAY_H
#define KW_RELAY_H

#include <stddef.h>
#include <stdint.h>

/* What the sharer's message is. Numbers are the protocol's (ShareRequest.relay_style). */
enum kw_relay_style {
    KW_RELAY_GENERATED = 0,  /* the sharer model's greedy reply to the background prompt (the reference's T2T) */
    KW_RELAY_RAW = 1,        /* the question itself, capped: LatentWire's text_raw, a byte-matched control */
    KW_RELAY_EXTRACTIVE = 2, /* the question's sentences in order, whitespace collapsed, as many whole ones as fit */
    KW_RELAY_STYLE_COUNT = 3,
};

/* "generated", "raw", "extractive"; NULL for another value. */
const char *kw_relay_style_name(enum kw_relay_style style);

/* The style called name, or KW_E_INVALID_ARG. */
int kw_relay_style_parse(const char *name, enum kw_relay_style *out);

/* The message of a style that needs no model (raw or extractive) for question (UTF-8, n bytes), within cap UTF-8
 * bytes (cap < 0: no cap).
 *   raw         the question stripped of surrounding ASCII whitespace, cut at a character boundary at the cap;
 *   extractive  the question split into sentences (after '.', '?' or '!' followed by whitespace, and at line
 *               breaks), each with its runs of ASCII whitespace collapsed to one space, empty ones dropped; then the
 *               sentences in order, joined by one space, as long as the next whole sentence fits (never cut inside a
 *               sentence: the message may be empty).
 * *out (malloc'ed, NUL-terminated, caller frees) gets *out_len bytes; *truncated says whether anything was left out.
 * @return 0, KW_E_INVALID_ARG (a style that needs the model), KW_E_NOMEM. */
int kw_relay_text(enum kw_relay_style style, const char *question, size_t n, int64_t cap, char **out, size_t *out_len,
                  int *truncated);

/* The reference's default background prompt, "Briefly describe the most useful background to solve the
 * problem:\n\n{question}", with the question spliced in. *out is owned by the caller (free). */
int kw_relay_background_prompt(const char *question, char **out);

/* Python's msg.encode()[:cap].decode("utf-8", errors="ignore") on a valid UTF-8 text of n bytes: the longest prefix
 * of at most cap bytes that ends on a character boundary (cap < 0: no cap; cap == 0: empty). *out_len receives its
 * length, *truncated whether anything was cut. */
void kw_relay_cap_utf8(const char *text, size_t n, int64_t cap, size_t *out_len, int *truncated);

/* Drops leading and trailing ASCII whitespace (Python's str.strip() for ASCII): the kept part is text[*start ..
 * *start + *len). */
void kw_relay_strip(const char *text, size_t n, size_t *start, size_t *len);

#endif /* KW_RELAY_H */
