/* kw_tokenizer_impl.h: the tokenizer's insides, shared by kw_tokenizer.c (tokenizer.json loading, byte-level BPE,
 * the encode walk, offsets), kw_tokenizer_spm.c (SentencePiece-style BPE) and kw_tokenizer_gguf.c (tokenizers from
 * GGUF metadata). Not a public header: only the files of the tokenizer include it; everyone else uses
 * kw_tokenizer.h.
 *
 * One kw_tokenizer holds either model: byte-level BPE (spm == NULL: the ByteLevel alphabet, the NFC normalizer and
 * the Split regex) or SentencePiece-style BPE (spm != NULL: its normalizer, pre-tokenizer, byte fallback and
 * decoder live in *spm). The vocabulary, the added tokens and the merge table are the same structures for both. */
#ifndef KW_TOKENIZER_IMPL_H
#define KW_TOKENIZER_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <cjson/cJSON.h>
#include <pcre2.h>

#include "common/kw_buf.h"
#include "model/kw_tokenizer.h"

/* Limits on what a tokenizer.json (or a vocabulary given as arrays) may declare before anything is allocated from
 * it. */
#define KW_TOK_MAX_FILE   (256u << 20) /* bytes of tokenizer.json */
#define KW_TOK_MAX_ID     (1 << 22)    /* ids must be below this (4M; real vocabularies are < 300k) */
#define KW_TOK_MAX_ADDED  (1 << 16)    /* added tokens (Gemma 3 has 6415) */
#define KW_TOK_MAX_PIECES (1u << 24)   /* bytes of one pre-token: far beyond any real word */

enum {
    KW_TOK_IN_VOCAB = 1, /* the id is in model.vocab */
    KW_TOK_ADDED = 2,    /* the id is an added token (its text is matched before pre-tokenization) */
    KW_TOK_SPECIAL = 4,  /* added token with "special": true (dropped by decode with skip_special) */
};

typedef struct kw_tok_entry {
    uint32_t off, len;         /* surface form (as written in tokenizer.json) in tok->pool */
    uint32_t dec_off, dec_len; /* bytes it decodes to (ByteLevel decoder) in tok->pool; unused by SentencePiece */
    uint32_t flags;            /* KW_TOK_* */
} kw_tok_entry;

typedef struct kw_tok_merge {
    uint64_t key; /* (left id << 32) | right id; UINT64_MAX = empty slot */
    int32_t rank;
    int32_t new_id;
} kw_tok_merge;

typedef struct kw_tok_spm kw_tok_spm; /* kw_tokenizer_spm.c */

struct kw_tokenizer {
    int32_t n_ids;         /* largest id + 1 */
    kw_tok_entry *entries; /* (n_ids); entries with flags == 0 are holes in the id space */
    kw_buf pool;           /* all surface forms and decoded forms */

    int32_t *vocab_slots; /* open addressing over model.vocab: id + 1, 0 = empty */
    size_t vocab_mask;
    kw_tok_merge *merges; /* open addressing over merges */
    size_t merge_mask;

    int32_t *added; /* (n_added) ids of added tokens, in file order */
    size_t n_added;
    uint8_t added_first[256]; /* 1 if some added token starts with this byte */
    int32_t *added_slots;     /* open addressing over the added tokens' text: id + 1, 0 = empty (first one kept) */
    size_t added_mask;
    uint32_t *added_lens; /* the distinct byte lengths of added tokens, longest first */
    size_t n_added_lens;

    int32_t byte_id[256];       /* id of the one-symbol token for each byte, -1 if absent */
    char byte_char[256][3];     /* ByteLevel alphabet: UTF-8 of the code point standing for each byte */
    uint8_t byte_char_len[256]; /* 1 or 2 */
    int16_t char_byte[0x144];   /* inverse map: code point -> byte, -1 if not in the alphabet */
    bool nfc;                   /* normalizer NFC */
    bool ignore_merges;         /* a pre-token found whole in the vocab maps to that id */
    pcre2_code *split_re;       /* the Split pre-tokenizer regex */
    bool split_jit;             /* split_re was JIT-compiled */

    kw_tok_spm *spm; /* owned; NULL for byte-level BPE */
};

/* A growable id array (also used for per-token lengths). */
typedef struct kw_tok_ids {
    int32_t *v;
    size_t n, cap;
} kw_tok_ids;

/* One symbol of a word being merged. */
typedef struct kw_tok_symbol {
    int32_t id;
    int32_t prev, next; /* -1 at the ends */
    int32_t alive;
    int32_t len; /* bytes of the normalized text it covers */
} kw_tok_symbol;

typedef struct kw_tok_qitem {
    int32_t rank, pos, new_id;
} kw_tok_qitem;

/* Per-call scratch memory. */
typedef struct kw_tok_scratch {
    kw_tok_symbol *sym;
    kw_tok_qitem *heap;
    size_t sym_cap, heap_cap, heap_n;
    char *str;
    size_t str_cap;
} kw_tok_scratch;

/* Receives the pieces of a text in order: an added token (added_id >= 0) or one pre-token of bytes s[0..n) of the
 * normalized text (added_id = -1). */
typedef struct kw_tok_sink kw_tok_sink;
struct kw_tok_sink {
    int (*piece)(kw_tok_sink *sink, const uint8_t *s, size_t n, int32_t added_id);
    /* Optional (NULL): called before the pieces of each stretch between added tokens with the original bytes and
     * the normalized ones the pieces point into (norm == orig when normalization changed nothing). */
    int (*segment)(kw_tok_sink *sink, const uint8_t *orig, size_t orig_len, const uint8_t *norm, size_t norm_len);
};

// ---------------------------------------------------------------------------------------------------------------
// kw_tokenizer.c

/* UTF-8: the length of the valid sequence at s[0..n) or 0 (then *bad = the maximal invalid prefix); the offset of the
 * first invalid byte (n if none); one code point of valid UTF-8 and its length. */
size_t kw__tok_utf8_seq(const uint8_t *s, size_t n, size_t *bad);
size_t kw__tok_utf8_check(const uint8_t *s, size_t n);
size_t kw__tok_utf8_decode(const uint8_t *s, uint32_t *cp);

int kw__tok_ids_push(kw_tok_ids *a, int32_t id);
/* Appends n bytes to tok's string pool; *off receives where they start. */
int kw__tok_pool_add(kw_tokenizer *tok, const void *s, size_t n, uint32_t *off);
/* The power-of-two size of an open-addressing table for n keys (at most half full). */
int kw__tok_table_size(size_t n, size_t *out);
/* The model.vocab id of the string s[0..n), or -1. */
int32_t kw__tok_vocab_find(const kw_tokenizer *tok, const char *s, size_t n);
/* Inserts id, whose surface form is in the pool (a repeated string keeps the later id). */
void kw__tok_vocab_insert(kw_tokenizer *tok, int32_t id);
const kw_tok_merge *kw__tok_merge_find(const kw_tokenizer *tok, int32_t left, int32_t right);
/* A repeated pair keeps the later rank. */
void kw__tok_merge_insert(kw_tokenizer *tok, int32_t left, int32_t right, int32_t rank, int32_t new_id);

/* tokenizer.json helpers: a field absent/null or one of allowed (NULL-terminated); a boolean absent/null or want; an
 * object's "type" string or NULL. */
int kw__tok_expect_str(const cJSON *obj, const char *key, const char *const *allowed, const char *where);
int kw__tok_expect_bool(const cJSON *obj, const char *key, int want, const char *where);
const char *kw__tok_type(const cJSON *obj);
/* model.vocab and added_tokens into tok (entries, pool, vocab table, added list); model.merges into the merge
 * table. */
int kw__tok_load_vocab(kw_tokenizer *tok, const cJSON *vocab, const cJSON *added);
int kw__tok_load_merges(kw_tokenizer *tok, const cJSON *merges);

/* Builds a tokenizer from a parsed tokenizer.json document (borrowed; only read during the call), with the checks and
 * errors of kw_tokenizer_load: kw_tokenizer_gguf.c assembles one from GGUF metadata. *out is owned by the caller
 * (kw_tokenizer_free). */
int kw__tok_from_json(const cJSON *root, kw_tokenizer **out);

/* Indexes the added tokens (tok->added) for matching: the hash of their text and their lengths. Call once they are
 * all in. */
int kw__tok_index_added(kw_tokenizer *tok);

void kw__tok_scratch_free(kw_tok_scratch *s);
/* Merges the m symbols s->sym[0..m) (linked in order, alive) by rank with HF's priority-queue order (lowest rank,
 * then leftmost) and appends the resulting ids to out and, if lens is not NULL, their byte lengths to lens. */
int kw__tok_merge_symbols(const kw_tokenizer *tok, kw_tok_scratch *s, int32_t m, kw_tok_ids *out, kw_tok_ids *lens);

// ---------------------------------------------------------------------------------------------------------------
// kw_tokenizer_spm.c

/* 1 if root (a tokenizer.json) describes a SentencePiece-style BPE: its decoder is not ByteLevel. */
int kw__tok_spm_is_json(const cJSON *root);
/* Loads a SentencePiece-style tokenizer.json into tok (which is zeroed). */
int kw__tok_spm_load_json(kw_tokenizer *tok, const cJSON *root);
void kw__tok_spm_free(kw_tok_spm *spm);
/* Normalizes and pre-tokenizes one stretch of text (no added token in it) starting at byte at_start of the whole
 * text, and hands its pieces to sink. */
int kw__tok_spm_segment(const kw_tokenizer *tok, const uint8_t *text, size_t len, size_t at_start, kw_tok_sink *sink);
/* BPE of one pre-token (normalized bytes w[0..n)): ids appended to out, byte lengths to lens (NULL: not wanted). */
int kw__tok_spm_bpe(const kw_tokenizer *tok, kw_tok_scratch *s, const uint8_t *w, size_t n, kw_tok_ids *out,
                    kw_tok_ids *lens);
/* kw_tokenizer_decode for a SentencePiece-style tokenizer (ids already checked). */
int kw__tok_spm_decode(const kw_tokenizer *tok, const int32_t *ids, size_t n_ids, int skip_special, char **text,
                       size_t *len);

#endif /* KW_TOKENIZER_IMPL_H */
