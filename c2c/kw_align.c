/* kw_align.c: token alignment between two tokenizers (see kw_align.h; c2c_spec.md §4 for the reference).
 *
 * Positions and spans are byte offsets into the rendered UTF-8 texts. The reference works in Python characters, but
 * every position it compares lies on a character boundary, where the byte and character orders agree, so the
 * comparisons (and so the results) are the same; only the reference's "10 / 20 characters around a match" windows are
 * counted in code points.
 */
#include "c2c/kw_align.h"

#include <stdlib.h>
#include <string.h>

#include "common/kw_size.h"
#include "common/kw_status.h"

struct kw_aligner {
    kw_align_side recv, sharer;
    enum kw_align_strategy strategy;
    int32_t recv_vocab;
    int32_t *cache; /* (recv_vocab) sharer id per receiver id, KW_ALIGN_UNSET until computed */
};

#define KW_ALIGN_UNSET INT32_MIN

/* ------------------------------------------------------------------------------------------------------------
 * Sides
 */

int kw_align_side_init(const kw_tokenizer *tok, enum kw_chat_family family, kw_align_side *out) {
    KW_RETURN_IF(tok == NULL || out == NULL, KW_E_INVALID_ARG, "kw_align_side_init: NULL argument");
    memset(out, 0, sizeof *out);
    out->tok = tok;
    out->family = family;
    out->pad = out->eos = out->bos = out->unk = -1;
    const char *pad = NULL, *eos = NULL, *bos = NULL;
    switch (family) {
    case KW_CHAT_QWEN3:
    case KW_CHAT_QWEN25:
        pad = "<|endoftext|>";
        eos = "<|im_end|>";
        out->specials_from_tokenizer = 1;
        break;
    case KW_CHAT_LLAMA32:
        bos = "<|begin_of_text|>";
        eos = "<|eot_id|>";
        break;
    case KW_CHAT_GEMMA3: /* alignment needs token offsets, which the SentencePiece-style tokenizer does not give */
        KW_FAIL(KW_E_UNSUPPORTED, "kw_align_side_init: token alignment with a Gemma 3 side is not implemented");
    default:
        KW_FAIL(KW_E_INVALID_ARG, "kw_align_side_init: unknown chat family %d", (int)family);
    }
    const char *names[3] = {pad, eos, bos};
    int32_t *ids[3] = {&out->pad, &out->eos, &out->bos};
    for (int i = 0; i < 3; ++i) {
        if (names[i] == NULL) continue;
        *ids[i] = kw_tokenizer_token_id(tok, names[i]);
        KW_RETURN_IF(*ids[i] < 0, KW_E_NOT_FOUND, "kw_align_side_init: %s is not a token of the %s tokenizer", names[i],
                     kw_chat_family_name(family));
    }
    if (family == KW_CHAT_LLAMA32) {
        out->pad = out->eos; /* no pad token: TokenAligner uses eos */
        out->specials[0] = out->bos;
        out->specials[1] = out->eos;
        out->n_specials = 2;
    }
    return 0;
}

static int kw_align_side_check(const kw_align_side *s, const char *what, kw_align_side *out) {
    KW_RETURN_IF(s->tok == NULL, KW_E_INVALID_ARG, "kw_aligner_create: the %s side has no tokenizer", what);
    *out = *s;
    const int32_t vocab = kw_tokenizer_vocab_size(s->tok);
    if (out->pad < 0) out->pad = out->eos;
    KW_RETURN_IF(out->pad < 0, KW_E_INVALID_ARG, "kw_aligner_create: the %s side has neither pad nor eos", what);
    const int32_t ids[4] = {out->pad, out->eos, out->bos, out->unk};
    for (int i = 0; i < 4; ++i)
        KW_RETURN_IF(ids[i] < -1 || ids[i] >= vocab, KW_E_INVALID_ARG,
                     "kw_aligner_create: %s special id %d is outside the vocabulary of %d", what, (int)ids[i],
                     (int)vocab);
    KW_RETURN_IF(out->n_specials < 0 || out->n_specials > KW_ALIGN_MAX_SPECIALS, KW_E_INVALID_ARG,
                 "kw_aligner_create: %s side has %d special ids", what, (int)out->n_specials);
    for (int32_t i = 0; i < out->n_specials; ++i)
        KW_RETURN_IF(out->specials[i] < 0 || out->specials[i] >= vocab, KW_E_INVALID_ARG,
                     "kw_aligner_create: %s special id %d is outside the vocabulary", what, (int)out->specials[i]);
    return 0;
}

int kw_aligner_create(const kw_align_side *receiver, const kw_align_side *sharer, enum kw_align_strategy strategy,
                      kw_aligner **out) {
    KW_RETURN_IF(receiver == NULL || sharer == NULL || out == NULL, KW_E_INVALID_ARG,
                 "kw_aligner_create: NULL argument");
    *out = NULL;
    KW_RETURN_IF(strategy != KW_ALIGN_FIRST && strategy != KW_ALIGN_LONGEST, KW_E_INVALID_ARG,
                 "kw_aligner_create: unknown strategy %d", (int)strategy);
    kw_aligner *al = calloc(1, sizeof *al);
    KW_RETURN_IF(al == NULL, KW_E_NOMEM, "kw_aligner_create: out of memory");
    int rc;
    KW_CHECK(kw_align_side_check(receiver, "receiver", &al->recv));
    KW_CHECK(kw_align_side_check(sharer, "sharer", &al->sharer));
    al->strategy = strategy;
    al->recv_vocab = kw_tokenizer_vocab_size(al->recv.tok);
    KW_CHECK_IF(al->recv_vocab <= 0, KW_E_INVALID_ARG, "kw_aligner_create: empty receiver vocabulary");
    al->cache = malloc((size_t)al->recv_vocab * sizeof *al->cache);
    KW_CHECK_IF(al->cache == NULL, KW_E_NOMEM, "kw_aligner_create: out of memory");
    for (int32_t i = 0; i < al->recv_vocab; ++i)
        al->cache[i] = KW_ALIGN_UNSET;
    *out = al;
    return 0;
out:
    kw_aligner_free(al);
    return rc;
}

void kw_aligner_free(kw_aligner *al) {
    if (al == NULL) return;
    free(al->cache);
    free(al);
}

int32_t kw_aligner_receiver_pad(const kw_aligner *al) {
    return al ? al->recv.pad : -1;
}

int32_t kw_aligner_sharer_pad(const kw_aligner *al) {
    return al ? al->sharer.pad : -1;
}

/* ------------------------------------------------------------------------------------------------------------
 * align_tokens
 */

static int kw_align_is_special(const kw_align_side *s, int32_t id) {
    if (s->specials_from_tokenizer) return kw_tokenizer_is_special(s->tok, id);
    for (int32_t i = 0; i < s->n_specials; ++i)
        if (s->specials[i] == id) return 1;
    return 0;
}

/* `unk_token_id or 0` */
static int32_t kw_align_unk_or_zero(const kw_align_side *s) {
    return s->unk > 0 ? s->unk : 0;
}

/* Number of code points of UTF-8 text[0..len). */
static size_t kw_align_code_points(const char *text, size_t len) {
    size_t n = 0;
    for (size_t i = 0; i < len; ++i)
        n += ((unsigned char)text[i] & 0xC0) != 0x80;
    return n;
}

/* _map_special_token: the pad/eos/bos/unk pairs as a Python dict (later keys overwrite), then the token's text in the
 * sharer vocabulary, then unk or 0. */
static int32_t kw_align_special(const kw_aligner *al, int32_t id, const char *text) {
    const int32_t keys[4] = {al->recv.pad, al->recv.eos, al->recv.bos, al->recv.unk};
    const int32_t vals[4] = {al->sharer.pad, al->sharer.eos, al->sharer.bos, al->sharer.unk};
    int matched = 0;
    int32_t val = -1;
    for (int i = 0; i < 4; ++i)
        if (keys[i] >= 0 && keys[i] == id) {
            matched = 1;
            val = vals[i];
        }
    if (matched && val >= 0) return val;
    const int32_t found = kw_tokenizer_token_id(al->sharer.tok, text);
    return found >= 0 ? found : kw_align_unk_or_zero(&al->sharer);
}

static int kw_align_one(kw_aligner *al, int32_t id, int32_t *out) {
    KW_RETURN_IF(id < 0 || id >= al->recv_vocab, KW_E_TOKEN_ID, "align_tokens: receiver id %d outside the vocabulary",
                 (int)id);
    if (al->cache[id] != KW_ALIGN_UNSET) {
        *out = al->cache[id];
        return 0;
    }
    char *text = NULL;
    size_t len = 0;
    int32_t *cand = NULL;
    size_t n_cand = 0;
    int32_t result = 0;
    int rc;
    KW_CHECK(kw_tokenizer_decode(al->recv.tok, &id, 1, 0, &text, &len));
    if (kw_align_is_special(&al->recv, id)) {
        result = kw_align_special(al, id, text);
    } else {
        KW_CHECK(kw_tokenizer_encode(al->sharer.tok, text, len, &cand, &n_cand));
        if (n_cand == 0) {
            result = kw_align_unk_or_zero(&al->sharer);
        } else if (n_cand == 1 || al->strategy == KW_ALIGN_FIRST) {
            result = cand[0];
        } else {
            size_t longest = 0;
            result = cand[0];
            for (size_t i = 0; i < n_cand; ++i) {
                char *piece = NULL;
                size_t piece_len = 0;
                KW_CHECK(kw_tokenizer_decode(al->sharer.tok, &cand[i], 1, 0, &piece, &piece_len));
                const size_t cps = kw_align_code_points(piece, piece_len);
                free(piece);
                if (cps > longest) {
                    longest = cps;
                    result = cand[i];
                }
            }
        }
    }
    al->cache[id] = result;
    *out = result;
out:
    free(text);
    free(cand);
    return rc;
}

int kw_aligner_align_tokens(kw_aligner *al, const int32_t *ids, size_t n, int32_t *out) {
    KW_RETURN_IF(al == NULL || ((ids == NULL || out == NULL) && n > 0), KW_E_INVALID_ARG,
                 "kw_aligner_align_tokens: NULL argument");
    for (size_t i = 0; i < n; ++i)
        KW_FORWARD(kw_align_one(al, ids[i], &out[i]));
    return 0;
}

/* ------------------------------------------------------------------------------------------------------------
 * align_chat_messages
 */

/* One side's rendered text, its tokens and their byte offsets, the content spans and the sections. */
typedef struct kw_align_text {
    char *text;
    size_t len;
    int32_t *ids;
    size_t *off; /* 2 per token */
    size_t n;
    size_t *spans; /* 2 per found content */
    size_t n_spans;
    kw_align_section *sec; /* (type, start, end) in this side's own token stream */
    size_t n_sec;
} kw_align_text;

static void kw_align_text_free(kw_align_text *t) {
    free(t->text);
    free(t->ids);
    free(t->off);
    free(t->spans);
    free(t->sec);
    memset(t, 0, sizeof *t);
}

static int kw_align_render(const kw_align_side *side, const kw_chat_message *m, size_t n,
                           const kw_align_chat_options *opt, kw_align_text *t) {
    kw_chat_options co = {.add_generation_prompt = opt->add_generation_prompt,
                          .enable_thinking = opt->enable_thinking,
                          .date_string = opt->date_string};
    if (!opt->remove_last_suffix) return kw_chat_render(side->family, m, n, &co, &t->text, &t->len);
    co.add_generation_prompt = 1;
    char *head = NULL;
    size_t head_len = 0, total;
    KW_FORWARD(kw_chat_render(side->family, m, n - 1, &co, &head, &head_len));
    const char *tail = m[n - 1].content;
    const size_t tail_len = strlen(tail);
    if (kw_size_add(head_len, tail_len, &total) < 0 || total == SIZE_MAX) {
        free(head);
        KW_FAIL(KW_E_OVERFLOW, "align: text too long");
    }
    char *text = realloc(head, total + 1);
    if (text == NULL) {
        free(head);
        KW_FAIL(KW_E_NOMEM, "align: out of memory");
    }
    memcpy(text + head_len, tail, tail_len + 1);
    t->text = text;
    t->len = total;
    return 0;
}

/* Python text.find(sub, from): the byte position of the first match at or after from, or SIZE_MAX. */
static size_t kw_align_find(const char *text, size_t len, const char *sub, size_t sub_len, size_t from) {
    if (from > len || sub_len > len - from) return SIZE_MAX;
    const void *p = memmem(text + from, len - from, sub, sub_len);
    return p ? (size_t)((const char *)p - text) : SIZE_MAX;
}

/* The byte position k code points before (k < 0) or after (k > 0) position pos, clamped to the text. */
static size_t kw_align_step(const char *text, size_t len, size_t pos, long k) {
    for (; k < 0 && pos > 0; ++k) {
        --pos;
        while (pos > 0 && ((unsigned char)text[pos] & 0xC0) == 0x80)
            --pos;
    }
    for (; k > 0 && pos < len; --k) {
        ++pos;
        while (pos < len && ((unsigned char)text[pos] & 0xC0) == 0x80)
            ++pos;
    }
    return pos;
}

/* 1 if needle occurs in text[a, b). */
static int kw_align_contains(const char *text, size_t a, size_t b, const char *needle) {
    const size_t n = strlen(needle);
    return b > a && b - a >= n && memmem(text + a, b - a, needle, n) != NULL;
}

/* _compute_content_spans */
static int kw_align_spans(const kw_chat_message *m, size_t n_messages, kw_align_text *t) {
    t->spans = malloc((2 * n_messages + 2) * sizeof *t->spans);
    KW_RETURN_IF(t->spans == NULL, KW_E_NOMEM, "align: out of memory");
    const char *text = t->text;
    const size_t len = t->len;
    size_t search_from = 0;
    for (size_t i = 0; i < n_messages; ++i) {
        const char *content = m[i].content;
        const size_t clen = strlen(content);
        if (clen == 0) continue;
        size_t idx = search_from;
        int found = 0;
        while (idx < len) {
            idx = kw_align_find(text, len, content, clen, idx);
            if (idx == SIZE_MAX) break;
            const size_t end = idx + clen;
            if ((end < len && text[end] == '<') || end == len) {
                t->spans[2 * t->n_spans] = idx;
                t->spans[2 * t->n_spans + 1] = end;
                ++t->n_spans;
                search_from = end;
                found = 1;
                break;
            }
            ++idx; /* the next match starts at a character boundary after idx */
        }
        if (found) continue;
        idx = kw_align_find(text, len, content, clen, search_from);
        if (idx == SIZE_MAX) idx = kw_align_find(text, len, content, clen, 0);
        if (idx == SIZE_MAX) continue;
        const size_t end = idx + clen;
        /* "inside a special token": '<' and no '>' in the 10 characters before, "begin_of_text" within 20 around */
        const size_t c10 = kw_align_step(text, len, idx, -10);
        const size_t c20 = kw_align_step(text, len, idx, -20), a20 = kw_align_step(text, len, idx, 20);
        if (memchr(text + c10, '<', idx - c10) != NULL && memchr(text + c10, '>', idx - c10) == NULL &&
            kw_align_contains(text, c20, a20, "begin_of_text"))
            continue;
        t->spans[2 * t->n_spans] = idx;
        t->spans[2 * t->n_spans + 1] = end;
        ++t->n_spans;
        search_from = end;
    }
    return 0;
}

/* _spans_to_token_ranges, then build_sections */
static int kw_align_sections(kw_align_text *t) {
    t->sec = malloc((2 * t->n_spans + 2) * sizeof *t->sec);
    KW_RETURN_IF(t->sec == NULL, KW_E_NOMEM, "align: out of memory");
    size_t prev = 0;
    for (size_t k = 0; k < t->n_spans; ++k) {
        const size_t s = t->spans[2 * k], e = t->spans[2 * k + 1];
        size_t start = 0;
        while (start < t->n && t->off[2 * start + 1] <= s)
            ++start;
        size_t end = start;
        while (end < t->n && t->off[2 * end] < e)
            ++end;
        if (prev < start) t->sec[t->n_sec++] = (kw_align_section){KW_ALIGN_TEMPLATE, (int64_t)prev, (int64_t)start};
        t->sec[t->n_sec++] = (kw_align_section){KW_ALIGN_MESSAGE, (int64_t)start, (int64_t)end};
        prev = end;
    }
    if (prev < t->n) t->sec[t->n_sec++] = (kw_align_section){KW_ALIGN_TEMPLATE, (int64_t)prev, (int64_t)t->n};
    return 0;
}

static int kw_align_prepare(const kw_align_side *side, const kw_chat_message *m, size_t n,
                            const kw_align_chat_options *opt, kw_align_text *t) {
    KW_FORWARD(kw_align_render(side, m, n, opt, t));
    KW_FORWARD(kw_tokenizer_encode_offsets(side->tok, t->text, t->len, 0, &t->ids, &t->off, &t->n));
    KW_FORWARD(kw_align_spans(m, n, t));
    return kw_align_sections(t);
}

/* Python slice bounds [a:b] of a list of n items: clamped, and empty when b < a. */
static void kw_align_slice(int64_t a, int64_t b, size_t n, size_t *lo, size_t *hi) {
    *lo = a < 0 ? 0 : ((size_t)a > n ? n : (size_t)a);
    *hi = b < 0 ? 0 : ((size_t)b > n ? n : (size_t)b);
    if (*hi < *lo) *hi = *lo;
}

static int kw_align_merge(kw_aligner *al, const kw_align_text *rt, const kw_align_text *st, kw_align_result *out) {
    /* the merged length: template sections take the longer side, message sections the receiver's */
    size_t total = 0;
    for (size_t k = 0; k < rt->n_sec; ++k) {
        size_t rlo, rhi, slo, shi;
        kw_align_slice(rt->sec[k].start, rt->sec[k].end, rt->n, &rlo, &rhi);
        kw_align_slice(st->sec[k].start, st->sec[k].end, st->n, &slo, &shi);
        const size_t len = rt->sec[k].type == KW_ALIGN_TEMPLATE && shi - slo > rhi - rlo ? shi - slo : rhi - rlo;
        KW_RETURN_IF(kw_size_add(total, len, &total) < 0, KW_E_OVERFLOW, "align: too many tokens");
    }
    const size_t cap = total ? total : 1;
    out->recv_ids = malloc(cap * sizeof(int32_t));
    out->sharer_ids = malloc(cap * sizeof(int32_t));
    out->message_mask = malloc(cap);
    out->recv_pad = malloc(cap);
    out->sharer_pad = malloc(cap);
    out->sections = malloc((rt->n_sec ? rt->n_sec : 1) * sizeof *out->sections);
    KW_RETURN_IF(!out->recv_ids || !out->sharer_ids || !out->message_mask || !out->recv_pad || !out->sharer_pad ||
                     !out->sections,
                 KW_E_NOMEM, "align: out of memory");
    size_t at = 0;
    for (size_t k = 0; k < rt->n_sec; ++k) {
        size_t rlo, rhi, slo, shi;
        kw_align_slice(rt->sec[k].start, rt->sec[k].end, rt->n, &rlo, &rhi);
        kw_align_slice(st->sec[k].start, st->sec[k].end, st->n, &slo, &shi);
        const size_t rlen = rhi - rlo, slen = shi - slo, start = at;
        if (rt->sec[k].type == KW_ALIGN_TEMPLATE) {
            const size_t target = slen > rlen ? slen : rlen;
            for (size_t i = 0; i < target; ++i) {
                out->recv_ids[at + i] = i < rlen ? rt->ids[rlo + i] : al->recv.pad;
                out->recv_pad[at + i] = i >= rlen;
                out->sharer_ids[at + i] = i < slen ? st->ids[slo + i] : al->sharer.pad;
                out->sharer_pad[at + i] = i >= slen;
                out->message_mask[at + i] = 0;
            }
            at += target;
        } else {
            memcpy(out->recv_ids + at, rt->ids + rlo, rlen * sizeof(int32_t));
            KW_FORWARD(kw_aligner_align_tokens(al, rt->ids + rlo, rlen, out->sharer_ids + at));
            memset(out->message_mask + at, 1, rlen);
            memset(out->recv_pad + at, 0, rlen);
            memset(out->sharer_pad + at, 0, rlen);
            at += rlen;
        }
        out->sections[k] = (kw_align_section){rt->sec[k].type, (int64_t)start, (int64_t)at};
    }
    out->n = (int64_t)at;
    out->n_sections = (int32_t)rt->n_sec;
    return 0;
}

int kw_aligner_align_chat(kw_aligner *al, const kw_chat_message *messages, size_t n_messages,
                          const kw_align_chat_options *opt, kw_align_result *out) {
    KW_RETURN_IF(out == NULL, KW_E_INVALID_ARG, "kw_aligner_align_chat: NULL result");
    memset(out, 0, sizeof *out);
    KW_RETURN_IF(al == NULL || opt == NULL || (messages == NULL && n_messages > 0), KW_E_INVALID_ARG,
                 "kw_aligner_align_chat: NULL argument");
    KW_RETURN_IF(opt->add_generation_prompt && opt->remove_last_suffix, KW_E_INVALID_ARG,
                 "align: add_generation_prompt and remove_last_suffix cannot both be set");
    for (size_t i = 0; i < n_messages; ++i)
        KW_RETURN_IF(messages[i].role == NULL || messages[i].content == NULL, KW_E_INVALID_ARG,
                     "align: message %zu has no role or content", i);
    KW_RETURN_IF(opt->remove_last_suffix && (n_messages == 0 || strcmp(messages[n_messages - 1].role, "assistant")),
                 KW_E_INVALID_ARG, "align: remove_last_suffix needs a final assistant message");
    KW_RETURN_IF(n_messages > SIZE_MAX / 4, KW_E_OVERFLOW, "align: too many messages");
    kw_align_text rt = {0}, st = {0};
    int rc;
    KW_CHECK(kw_align_prepare(&al->recv, messages, n_messages, opt, &rt));
    KW_CHECK(kw_align_prepare(&al->sharer, messages, n_messages, opt, &st));
    KW_CHECK_IF(rt.n_sec != st.n_sec, KW_E_ALIGN,
                "align: section count mismatch (%zu receiver sections, %zu sharer sections; %zu and %zu of %zu "
                "message contents found in the two templated texts)",
                rt.n_sec, st.n_sec, rt.n_spans, st.n_spans, n_messages);
    for (size_t k = 0; k < rt.n_sec; ++k)
        KW_CHECK_IF(rt.sec[k].type != st.sec[k].type, KW_E_ALIGN, "align: section %zu type mismatch", k);
    KW_CHECK(kw_align_merge(al, &rt, &st, out));
    out->recv_text = rt.text;
    out->sharer_text = st.text;
    rt.text = st.text = NULL;
out:
    kw_align_text_free(&rt);
    kw_align_text_free(&st);
    if (rc < 0) kw_align_result_free(out);
    return rc;
}

void kw_align_result_free(kw_align_result *r) {
    if (r == NULL) return;
    free(r->recv_ids);
    free(r->sharer_ids);
    free(r->message_mask);
    free(r->recv_pad);
    free(r->sharer_pad);
    free(r->sections);
    free(r->recv_text);
    free(r->sharer_text);
    memset(r, 0, sizeof *r);
}

/* ------------------------------------------------------------------------------------------------------------
 * Fusion
 */

int kw_align_fusion_sections(const kw_align_result *r, int32_t mask, kw_fusion_section **out, int32_t *n_out) {
    KW_RETURN_IF(r == NULL || out == NULL || n_out == NULL, KW_E_INVALID_ARG, "kw_align_fusion_sections: NULL");
    KW_RETURN_IF(r->n < 1 || r->message_mask == NULL || mask <= 0, KW_E_INVALID_ARG,
                 "kw_align_fusion_sections: empty alignment or mask %d", (int)mask);
    KW_RETURN_IF(r->n > INT32_MAX, KW_E_LIMIT, "kw_align_fusion_sections: %lld tokens", (long long)r->n);
    int32_t n = 1;
    for (int64_t i = 1; i < r->n; ++i)
        n += r->message_mask[i] != r->message_mask[i - 1];
    kw_fusion_section *s = malloc((size_t)n * sizeof *s);
    KW_RETURN_IF(s == NULL, KW_E_NOMEM, "kw_align_fusion_sections: out of memory");
    int32_t k = 0;
    int64_t start = 0;
    for (int64_t i = 1; i <= r->n; ++i) {
        if (i < r->n && r->message_mask[i] == r->message_mask[i - 1]) continue;
        s[k++] = (kw_fusion_section){i - start, r->message_mask[i - 1] ? mask : -1};
        start = i;
    }
    *out = s;
    *n_out = k;
    return 0;
}

/* The decode-pads quirk: unmask every row before the first decode step, then chain to the caller's callback. */
static int kw_align_on_token(void *user, int32_t id) {
    kw_align_pads_hook *h = user;
    if (!h->done) {
        KW_FORWARD(kw_kvcache_set_valid(h->cache, 0, kw_kvcache_capacity(h->cache), 1));
        h->done = 1;
    }
    return h->user_fn ? h->user_fn(h->user, id) : 0;
}

void kw_align_pads_gen(kw_align_pads_hook *hook, kw_kvcache *cache, enum kw_align_decode_pads pads,
                       const kw_generate_options *base, kw_generate_options *gen) {
    *gen = *base;
    if (pads != KW_ALIGN_PADS_REFERENCE) return;
    *hook = (kw_align_pads_hook){.cache = cache, .user_fn = base->on_token, .user = base->user};
    gen->on_token = kw_align_on_token;
    gen->user = hook;
}

int kw_align_run(kw_fusion *f, kw_kvcache *cache, const kw_align_result *r, const kw_fusion_options *base,
                 enum kw_align_decode_pads pads, kw_fusion_result *out) {
    KW_RETURN_IF(out == NULL, KW_E_INVALID_ARG, "kw_align_run: NULL result");
    memset(out, 0, sizeof *out);
    KW_RETURN_IF(f == NULL || cache == NULL || r == NULL || base == NULL || r->n < 1 || r->recv_pad == NULL ||
                     r->sharer_ids == NULL || r->sharer_pad == NULL,
                 KW_E_INVALID_ARG, "kw_align_run: NULL argument or empty alignment");
    KW_RETURN_IF(base->sections != NULL || base->n_sections != 0 || base->sharer_ids != NULL ||
                     base->sharer_pad != NULL,
                 KW_E_INVALID_ARG, "kw_align_run: sections and sharer streams come from the alignment");
    KW_RETURN_IF(pads != KW_ALIGN_PADS_REFERENCE && pads != KW_ALIGN_PADS_MASKED, KW_E_INVALID_ARG,
                 "kw_align_run: unknown pads mode %d", (int)pads);
    KW_RETURN_IF(kw_kvcache_length(cache) != 0 || kw_kvcache_capacity(cache) < r->n, KW_E_INVALID_ARG,
                 "kw_align_run: the receiver cache must be empty and hold the %lld prompt tokens", (long long)r->n);
    kw_fusion_section *sections = NULL;
    int32_t n_sections = 0;
    KW_FORWARD(kw_align_fusion_sections(r, 1, &sections, &n_sections));
    int rc;
    KW_CHECK(kw_kvcache_reset(cache));
    for (int64_t p = 0; p < r->n; ++p)
        if (r->recv_pad[p]) KW_CHECK(kw_kvcache_set_valid(cache, p, 1, 0));
    const int32_t *sharer_ids[KW_FUSION_MAX_SHARERS] = {r->sharer_ids};
    const uint8_t *sharer_pad[KW_FUSION_MAX_SHARERS] = {r->sharer_pad};
    kw_align_pads_hook hook;
    kw_fusion_options opt = *base;
    opt.sections = sections;
    opt.n_sections = n_sections;
    opt.sharer_ids = sharer_ids;
    opt.sharer_pad = sharer_pad;
    kw_align_pads_gen(&hook, cache, pads, &base->gen, &opt.gen);
    KW_CHECK(kw_fusion_run(f, cache, r->recv_ids, r->n, &opt, out));
out:
    free(sections);
    return rc;
}
