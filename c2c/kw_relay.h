/* kw_relay.h: the text-relay baseline (c2c_spec.md §5.5, the reference's two-stage "T2T" model): instead of its KV
 * cache, the sharer sends text. Stage 1: the sharer answers [user: background prompt(question)] greedily; its reply,
 * optionally capped to a UTF-8 byte budget, is the message. Stage 2: the receiver answers
 * [user: background prompt(question), assistant: message, user: the full prompt]. Bytes on the wire are the message's
 * UTF-8 bytes. Pure string work: the models and chat templates are the caller's. */
#ifndef KW_RELAY_H
#define KW_RELAY_H

#include <stddef.h>
#include <stdint.h>

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
