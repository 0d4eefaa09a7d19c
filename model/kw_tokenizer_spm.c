/* kw_tokenizer_spm.c: SentencePiece-style BPE, giving the ids HF `tokenizers` gives for Gemma 3's tokenizer.json (and
 * Llama-2-style ones), and the same tokenizer built from a SentencePiece vocabulary given as arrays (the pieces,
 * scores and token types that GGUF's "llama" tokenizer model stores).
 *
 * Encode, in HF's order: added tokens are matched in the raw text first (the walk in kw_tokenizer.c); each stretch
 * between them is normalized (Replace " " -> "▁", Prepend "▁"), pre-tokenized (nothing, a Split on a literal string,
 * or Metaspace), and each piece is BPE-merged starting from its characters: a character missing from the vocabulary
 * becomes its <0xXX> byte tokens (byte_fallback), else the unk token (fused with neighbouring unknown characters).
 * Decode runs the tokenizer.json decoder steps (Replace, ByteFallback, Fuse, Strip, Metaspace) over the token strings,
 * exactly as HF's decode_chain does, and joins them.
 *
 * From arrays, the merges are the ones HF's converter (transformers' generate_merges) derives from the scores: every
 * split of every piece into two pieces of the vocabulary, ordered by the piece's score (descending), then the left
 * part's length and the right part's length in characters (descending), then the piece's id. Control and
 * user-defined pieces rank with score 0, the value SentencePiece gives them (llama.cpp's GGUF converter writes -1000
 * for them, which would move the whitespace merges that Gemma 3's tokenizer.json ranks first).
 *
 * What it is not: Unigram SentencePiece (T5, ALBERT), BPE dropout, NFKC normalization, or offsets
 * (kw_tokenizer_encode_offsets refuses a SentencePiece-style tokenizer). Anything else a tokenizer.json declares is
 * refused at load with KW_E_TOKENIZER and the field named. */
#include "model/kw_tokenizer.h"
#include "model/kw_tokenizer_impl.h"

#include "common/kw_buf.h"
#include "common/kw_json.h"
#include "common/kw_size.h"
#include "common/kw_status.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KW_SPM_MAX_STEPS 8  /* normalizer and decoder steps */
#define KW_SPM_MAX_STR   16 /* bytes of a pattern or replacement string (real files use one character) */

#define KW_SPM_SPACE "\xE2\x96\x81" /* U+2581, SentencePiece's space */

enum kw_spm_scheme { KW_SPM_NEVER = 0, KW_SPM_FIRST = 1, KW_SPM_ALWAYS = 2 };
enum kw_spm_pre { KW_SPM_PRE_NONE = 0, KW_SPM_PRE_SPLIT = 1, KW_SPM_PRE_METASPACE = 2 };
enum kw_spm_norm_kind { KW_SPM_NORM_REPLACE, KW_SPM_NORM_PREPEND };
enum kw_spm_dec_kind {
    KW_SPM_DEC_REPLACE,
    KW_SPM_DEC_BYTE_FALLBACK,
    KW_SPM_DEC_FUSE,
    KW_SPM_DEC_STRIP,
    KW_SPM_DEC_METASPACE,
};

/* A short string (a pattern, a replacement). */
typedef struct kw_spm_str {
    char s[KW_SPM_MAX_STR];
    uint8_t n;
} kw_spm_str;

typedef struct kw_spm_norm {
    enum kw_spm_norm_kind kind;
    kw_spm_str from, to; /* Replace from -> to; Prepend to */
} kw_spm_norm;

typedef struct kw_spm_dec {
    enum kw_spm_dec_kind kind;
    kw_spm_str from, to;       /* Replace */
    uint32_t ch;               /* Strip: the character; Metaspace: the replacement */
    int32_t start, stop;       /* Strip */
    enum kw_spm_scheme scheme; /* Metaspace */
} kw_spm_dec;

struct kw_tok_spm {
    kw_spm_norm norm[KW_SPM_MAX_STEPS];
    int n_norm;
    enum kw_spm_pre pre;
    kw_spm_str split;               /* Split: the literal pattern (behavior MergedWithPrevious) */
    kw_spm_str meta;                /* Metaspace: the replacement character */
    enum kw_spm_scheme meta_scheme; /* Metaspace: when to prepend it */
    bool meta_split;                /* Metaspace: split before each replacement character */
    int32_t unk_id;                 /* -1: characters neither in the vocabulary nor byte-fallback are dropped */
    bool fuse_unk;                  /* consecutive unknown characters become one unk */
    bool byte_fallback;
    int32_t byte_fb[256]; /* id of <0xXX> for each byte, -1 if absent */
    kw_spm_dec dec[KW_SPM_MAX_STEPS];
    int n_dec;
};

void kw__tok_spm_free(kw_tok_spm *spm) {
    free(spm);
}

// ---------------------------------------------------------------------------------------------------------------
// Small helpers

static int kw_spm_str_set(kw_spm_str *d, const char *s, const char *what) {
    const size_t n = strlen(s);
    KW_RETURN_IF(n == 0 || n >= KW_SPM_MAX_STR, KW_E_TOKENIZER, "tokenizer.json: %s must be 1 to %d bytes", what,
                 KW_SPM_MAX_STR - 1);
    KW_RETURN_IF(kw__tok_utf8_check((const uint8_t *)s, n) != n, KW_E_TOKENIZER, "tokenizer.json: %s is not UTF-8",
                 what);
    memcpy(d->s, s, n);
    d->n = (uint8_t)n;
    return 0;
}

/* The one code point of a one-character string, or -1. */
static int64_t kw_spm_single_char(const char *s) {
    const size_t n = strlen(s);
    if (n == 0 || kw__tok_utf8_check((const uint8_t *)s, n) != n) return -1;
    uint32_t cp = 0;
    return kw__tok_utf8_decode((const uint8_t *)s, &cp) == n ? (int64_t)cp : -1;
}

static void kw_spm_put_cp(kw_spm_str *d, uint32_t cp) {
    uint8_t *o = (uint8_t *)d->s;
    if (cp < 0x80) {
        o[0] = (uint8_t)cp;
        d->n = 1;
    } else if (cp < 0x800) {
        o[0] = (uint8_t)(0xC0 | (cp >> 6));
        o[1] = (uint8_t)(0x80 | (cp & 0x3F));
        d->n = 2;
    } else if (cp < 0x10000) {
        o[0] = (uint8_t)(0xE0 | (cp >> 12));
        o[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (uint8_t)(0x80 | (cp & 0x3F));
        d->n = 3;
    } else {
        o[0] = (uint8_t)(0xF0 | (cp >> 18));
        o[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
        o[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        o[3] = (uint8_t)(0x80 | (cp & 0x3F));
        d->n = 4;
    }
}

/* Appends s[0..n) to b with every occurrence of from replaced by to (leftmost, non-overlapping, as HF's String
 * patterns match). */
static int kw_spm_replace_into(kw_buf *b, const uint8_t *s, size_t n, const kw_spm_str *from, const kw_spm_str *to) {
    size_t i = 0, last = 0;
    while (i + from->n <= n) {
        if (memcmp(s + i, from->s, from->n) == 0) {
            KW_FORWARD(kw_buf_append(b, (const char *)s + last, i - last));
            KW_FORWARD(kw_buf_append(b, to->s, to->n));
            i += from->n;
            last = i;
        } else {
            ++i;
        }
    }
    return kw_buf_append(b, (const char *)s + last, n - last);
}

// ---------------------------------------------------------------------------------------------------------------
// tokenizer.json components

static int kw_spm_string_pattern(const cJSON *obj, kw_spm_str *d, const char *where) {
    const cJSON *pattern = cJSON_GetObjectItemCaseSensitive(obj, "pattern");
    const cJSON *str = cJSON_GetObjectItemCaseSensitive(pattern, "String");
    KW_RETURN_IF(!cJSON_IsString(str), KW_E_TOKENIZER,
                 "tokenizer.json: %s.pattern must be {\"String\": ...} (Regex patterns are not supported)", where);
    return kw_spm_str_set(d, str->valuestring, where);
}

static int kw_spm_load_normalizer_one(kw_tok_spm *spm, const cJSON *n) {
    const char *type = kw__tok_type(n);
    KW_RETURN_IF(!type, KW_E_TOKENIZER, "tokenizer.json: normalizer without a type");
    KW_RETURN_IF(spm->n_norm >= KW_SPM_MAX_STEPS, KW_E_TOKENIZER, "tokenizer.json: too many normalizer steps");
    kw_spm_norm *s = &spm->norm[spm->n_norm];
    memset(s, 0, sizeof *s);
    if (strcmp(type, "Replace") == 0) {
        s->kind = KW_SPM_NORM_REPLACE;
        KW_FORWARD(kw_spm_string_pattern(n, &s->from, "normalizer Replace"));
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(n, "content");
        KW_RETURN_IF(!cJSON_IsString(content), KW_E_TOKENIZER, "tokenizer.json: normalizer Replace has no content");
        if (content->valuestring[0]) KW_FORWARD(kw_spm_str_set(&s->to, content->valuestring, "Replace.content"));
    } else if (strcmp(type, "Prepend") == 0) {
        s->kind = KW_SPM_NORM_PREPEND;
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(n, "prepend");
        KW_RETURN_IF(!cJSON_IsString(p), KW_E_TOKENIZER, "tokenizer.json: normalizer Prepend has no prepend string");
        KW_FORWARD(kw_spm_str_set(&s->to, p->valuestring, "Prepend.prepend"));
    } else {
        KW_FAIL(KW_E_TOKENIZER,
                "tokenizer.json: normalizer \"%s\" is not supported by the SentencePiece-style tokenizer (Replace, "
                "Prepend, Sequence of them)",
                type);
    }
    ++spm->n_norm;
    return 0;
}

static int kw_spm_load_normalizer(kw_tok_spm *spm, const cJSON *n) {
    if (!n || cJSON_IsNull(n)) return 0;
    const char *type = kw__tok_type(n);
    if (type && strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "normalizers");
        KW_RETURN_IF(!cJSON_IsArray(list), KW_E_TOKENIZER, "tokenizer.json: normalizer Sequence without a list");
        for (const cJSON *it = list->child; it; it = it->next)
            KW_FORWARD(kw_spm_load_normalizer_one(spm, it));
        return 0;
    }
    return kw_spm_load_normalizer_one(spm, n);
}

/* prepend_scheme (or the older add_prefix_space) of a Metaspace pre-tokenizer or decoder. */
static int kw_spm_scheme(const cJSON *obj, enum kw_spm_scheme *out, const char *where) {
    const cJSON *scheme = cJSON_GetObjectItemCaseSensitive(obj, "prepend_scheme");
    if (scheme && !cJSON_IsNull(scheme)) {
        KW_RETURN_IF(!cJSON_IsString(scheme), KW_E_TOKENIZER, "tokenizer.json: %s.prepend_scheme is not a string",
                     where);
        const char *s = scheme->valuestring;
        if (strcmp(s, "always") == 0)
            *out = KW_SPM_ALWAYS;
        else if (strcmp(s, "first") == 0)
            *out = KW_SPM_FIRST;
        else if (strcmp(s, "never") == 0)
            *out = KW_SPM_NEVER;
        else
            KW_FAIL(KW_E_TOKENIZER, "tokenizer.json: %s.prepend_scheme \"%s\" is unknown", where, s);
        return 0;
    }
    int add = 1;
    KW_FORWARD(kw_json_opt_bool(obj, "add_prefix_space", 1, &add, "tokenizer.json Metaspace"));
    *out = add ? KW_SPM_ALWAYS : KW_SPM_NEVER;
    return 0;
}

/* The replacement character of a Metaspace pre-tokenizer or decoder. */
static int kw_spm_meta_char(const cJSON *obj, uint32_t *cp, const char *where) {
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(obj, "replacement");
    const int64_t c = cJSON_IsString(r) ? kw_spm_single_char(r->valuestring) : -1;
    KW_RETURN_IF(c < 0, KW_E_TOKENIZER, "tokenizer.json: %s.replacement must be one character", where);
    *cp = (uint32_t)c;
    return 0;
}

static int kw_spm_load_pre_tokenizer(kw_tok_spm *spm, const cJSON *pre) {
    if (!pre || cJSON_IsNull(pre)) return 0;
    const char *type = kw__tok_type(pre);
    KW_RETURN_IF(!type, KW_E_TOKENIZER, "tokenizer.json: pre_tokenizer without a type");
    if (strcmp(type, "Split") == 0) {
        static const char *const merged[] = {"MergedWithPrevious", NULL};
        const cJSON *behavior = cJSON_GetObjectItemCaseSensitive(pre, "behavior");
        KW_RETURN_IF(!cJSON_IsString(behavior), KW_E_TOKENIZER, "tokenizer.json: Split.behavior is missing");
        KW_FORWARD(kw__tok_expect_str(pre, "behavior", merged, "pre_tokenizer Split"));
        KW_FORWARD(kw__tok_expect_bool(pre, "invert", 0, "pre_tokenizer Split"));
        KW_FORWARD(kw_spm_string_pattern(pre, &spm->split, "pre_tokenizer Split"));
        spm->pre = KW_SPM_PRE_SPLIT;
        return 0;
    }
    if (strcmp(type, "Metaspace") == 0) {
        uint32_t cp = 0;
        KW_FORWARD(kw_spm_meta_char(pre, &cp, "pre_tokenizer Metaspace"));
        kw_spm_put_cp(&spm->meta, cp);
        KW_FORWARD(kw_spm_scheme(pre, &spm->meta_scheme, "pre_tokenizer Metaspace"));
        int split = 1;
        KW_FORWARD(kw_json_opt_bool(pre, "split", 1, &split, "tokenizer.json Metaspace"));
        spm->meta_split = split != 0;
        spm->pre = KW_SPM_PRE_METASPACE;
        return 0;
    }
    KW_FAIL(KW_E_TOKENIZER,
            "tokenizer.json: pre_tokenizer \"%s\" is not supported by the SentencePiece-style tokenizer (none, Split "
            "on a string with MergedWithPrevious, Metaspace)",
            type);
}

static int kw_spm_load_decoder_one(kw_tok_spm *spm, const cJSON *d) {
    const char *type = kw__tok_type(d);
    KW_RETURN_IF(!type, KW_E_TOKENIZER, "tokenizer.json: decoder without a type");
    KW_RETURN_IF(spm->n_dec >= KW_SPM_MAX_STEPS, KW_E_TOKENIZER, "tokenizer.json: too many decoder steps");
    kw_spm_dec *s = &spm->dec[spm->n_dec];
    memset(s, 0, sizeof *s);
    if (strcmp(type, "Replace") == 0) {
        s->kind = KW_SPM_DEC_REPLACE;
        KW_FORWARD(kw_spm_string_pattern(d, &s->from, "decoder Replace"));
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(d, "content");
        KW_RETURN_IF(!cJSON_IsString(content), KW_E_TOKENIZER, "tokenizer.json: decoder Replace has no content");
        if (content->valuestring[0]) KW_FORWARD(kw_spm_str_set(&s->to, content->valuestring, "Replace.content"));
    } else if (strcmp(type, "ByteFallback") == 0) {
        s->kind = KW_SPM_DEC_BYTE_FALLBACK;
    } else if (strcmp(type, "Fuse") == 0) {
        s->kind = KW_SPM_DEC_FUSE;
    } else if (strcmp(type, "Strip") == 0) {
        s->kind = KW_SPM_DEC_STRIP;
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(d, "content");
        const int64_t c = cJSON_IsString(content) ? kw_spm_single_char(content->valuestring) : -1;
        KW_RETURN_IF(c < 0, KW_E_TOKENIZER, "tokenizer.json: decoder Strip.content must be one character");
        s->ch = (uint32_t)c;
        int64_t start = 0, stop = 0;
        KW_FORWARD(kw_json_get_i64(d, "start", 0, 1 << 20, &start, "tokenizer.json decoder Strip"));
        KW_FORWARD(kw_json_get_i64(d, "stop", 0, 1 << 20, &stop, "tokenizer.json decoder Strip"));
        s->start = (int32_t)start;
        s->stop = (int32_t)stop;
    } else if (strcmp(type, "Metaspace") == 0) {
        s->kind = KW_SPM_DEC_METASPACE;
        KW_FORWARD(kw_spm_meta_char(d, &s->ch, "decoder Metaspace"));
        KW_FORWARD(kw_spm_scheme(d, &s->scheme, "decoder Metaspace"));
    } else {
        KW_FAIL(KW_E_TOKENIZER,
                "tokenizer.json: decoder \"%s\" is not supported by the SentencePiece-style tokenizer (Replace, "
                "ByteFallback, Fuse, Strip, Metaspace, Sequence of them)",
                type);
    }
    ++spm->n_dec;
    return 0;
}

static int kw_spm_load_decoder(kw_tok_spm *spm, const cJSON *d) {
    KW_RETURN_IF(!d || cJSON_IsNull(d), KW_E_TOKENIZER,
                 "tokenizer.json: a SentencePiece-style tokenizer needs a decoder (HF would join tokens with spaces)");
    const char *type = kw__tok_type(d);
    if (type && strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(d, "decoders");
        KW_RETURN_IF(!cJSON_IsArray(list), KW_E_TOKENIZER, "tokenizer.json: decoder Sequence without a list");
        for (const cJSON *it = list->child; it; it = it->next)
            KW_FORWARD(kw_spm_load_decoder_one(spm, it));
        return 0;
    }
    return kw_spm_load_decoder_one(spm, d);
}

/* The BPE options: byte_fallback, unk_token, fuse_unk, ignore_merges; no dropout, prefixes or suffixes. */
static int kw_spm_load_model(kw_tokenizer *tok, kw_tok_spm *spm, const cJSON *model, const char **unk) {
    static const char *const bpe[] = {"BPE", NULL};
    static const char *const empty[] = {"", NULL};
    KW_RETURN_IF(!kw__tok_type(model), KW_E_TOKENIZER, "tokenizer.json: model has no type");
    KW_FORWARD(kw__tok_expect_str(model, "type", bpe, "model"));
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    KW_RETURN_IF(dropout && !cJSON_IsNull(dropout) && !(cJSON_IsNumber(dropout) && dropout->valuedouble == 0.0),
                 KW_E_TOKENIZER, "tokenizer.json: model.dropout is not supported");
    KW_FORWARD(kw__tok_expect_str(model, "continuing_subword_prefix", empty, "model"));
    KW_FORWARD(kw__tok_expect_str(model, "end_of_word_suffix", empty, "model"));
    int byte_fallback = 0, fuse_unk = 0, ignore = 0;
    KW_FORWARD(kw_json_opt_bool(model, "byte_fallback", 0, &byte_fallback, "tokenizer.json model"));
    KW_FORWARD(kw_json_opt_bool(model, "fuse_unk", 0, &fuse_unk, "tokenizer.json model"));
    KW_FORWARD(kw_json_opt_bool(model, "ignore_merges", 0, &ignore, "tokenizer.json model"));
    spm->byte_fallback = byte_fallback != 0;
    spm->fuse_unk = fuse_unk != 0;
    tok->ignore_merges = ignore != 0;
    KW_FORWARD(kw_json_opt_str(model, "unk_token", NULL, unk, "tokenizer.json model"));
    return 0;
}

int kw__tok_spm_is_json(const cJSON *root) {
    const char *type = kw__tok_type(cJSON_GetObjectItemCaseSensitive(root, "decoder"));
    return !type || strcmp(type, "ByteLevel") != 0;
}

/* The byte-fallback tokens <0x00> .. <0xFF> (-1 where absent). */
static void kw_spm_byte_tokens(const kw_tokenizer *tok, kw_tok_spm *spm) {
    for (int b = 0; b < 256; ++b) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        spm->byte_fb[b] = kw__tok_vocab_find(tok, name, 6);
    }
}

int kw__tok_spm_load_json(kw_tokenizer *tok, const cJSON *root) {
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    KW_RETURN_IF(!cJSON_IsObject(model), KW_E_TOKENIZER, "tokenizer.json: no model object");
    kw_tok_spm *spm = calloc(1, sizeof *spm);
    KW_RETURN_IF(!spm, KW_E_NOMEM, "out of memory");
    tok->spm = spm; /* freed with tok */
    const char *unk = NULL;
    KW_FORWARD(kw_spm_load_model(tok, spm, model, &unk));
    /* the decoder first: it is what sent the file here, so an unknown one is named before anything else */
    KW_FORWARD(kw_spm_load_decoder(spm, cJSON_GetObjectItemCaseSensitive(root, "decoder")));
    KW_FORWARD(kw_spm_load_normalizer(spm, cJSON_GetObjectItemCaseSensitive(root, "normalizer")));
    KW_FORWARD(kw_spm_load_pre_tokenizer(spm, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer")));
    KW_FORWARD(kw__tok_load_vocab(tok, cJSON_GetObjectItemCaseSensitive(model, "vocab"),
                                  cJSON_GetObjectItemCaseSensitive(root, "added_tokens")));
    KW_FORWARD(kw__tok_load_merges(tok, cJSON_GetObjectItemCaseSensitive(model, "merges")));
    spm->unk_id = -1;
    if (unk) {
        spm->unk_id = kw__tok_vocab_find(tok, unk, strlen(unk));
        KW_RETURN_IF(spm->unk_id < 0, KW_E_TOKENIZER,
                     "tokenizer.json: the unk token \"%.40s\" is not in the vocabulary", unk);
    }
    kw_spm_byte_tokens(tok, spm);
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Encode: normalizer and pre-tokenizer of one stretch

/* Applies the normalizer steps to text[0..len) into *out (malloc'd). */
static int kw_spm_normalize(const kw_tok_spm *spm, const uint8_t *text, size_t len, kw_buf *out) {
    kw_buf a = KW_BUF_INIT, b = KW_BUF_INIT;
    int rc = 0;
    KW_CHECK(kw_buf_append(&a, (const char *)text, len));
    for (int i = 0; i < spm->n_norm; ++i) {
        const kw_spm_norm *s = &spm->norm[i];
        b.len = 0;
        if (s->kind == KW_SPM_NORM_REPLACE) {
            KW_CHECK(kw_spm_replace_into(&b, (const uint8_t *)a.data, a.len, &s->from, &s->to));
        } else { /* Prepend: only to a non-empty string */
            if (a.len > 0) KW_CHECK(kw_buf_append(&b, s->to.s, s->to.n));
            KW_CHECK(kw_buf_append(&b, a.data, a.len));
        }
        const kw_buf t = a;
        a = b;
        b = t;
    }
    *out = a;
    a = (kw_buf)KW_BUF_INIT;
out:
    kw_buf_free(&a);
    kw_buf_free(&b);
    return rc;
}

/* Hands the pieces of s[0..n) split at each occurrence of pat to the sink, as HF's Split does. The text is cut into
 * matches and the gaps between them; then merged_with_next (MergedWithNext) joins a match to the gap after it, else
 * (MergedWithPrevious) a match to the piece before it, except that a match right after another match (before it,
 * for MergedWithNext) stays a piece of its own. Empty pieces never arise. */
static int kw_spm_split(const uint8_t *s, size_t n, const kw_spm_str *pat, int merged_with_next, kw_tok_sink *sink) {
    typedef struct {
        size_t a, b;
        int match;
    } kw_seg;
    kw_seg *seg = NULL;
    size_t n_seg = 0, cap = 0, gap = 0;
    int rc = 0;
    for (size_t i = 0; i <= n;) {
        const int match = i < n && i + pat->n <= n && memcmp(s + i, pat->s, pat->n) == 0;
        if (!match && i < n) {
            ++i;
            continue;
        }
        if (n_seg + 2 > cap) { /* the gap before i and the match at i */
            size_t bytes;
            cap = cap ? 2 * cap : 64;
            KW_CHECK_IF(kw_size_mul(cap, sizeof *seg, &bytes) < 0, KW_E_OVERFLOW, "too many pieces");
            kw_seg *q = realloc(seg, bytes);
            KW_CHECK_IF(!q, KW_E_NOMEM, "out of memory splitting");
            seg = q;
        }
        if (i > gap) seg[n_seg++] = (kw_seg){gap, i, 0};
        if (!match) break; /* i == n */
        seg[n_seg++] = (kw_seg){i, i + pat->n, 1};
        i += pat->n;
        gap = i;
    }
    for (size_t k = 0; k < n_seg;) {
        size_t a = seg[k].a, b = seg[k].b, next = k + 1;
        /* the segment that absorbs its neighbour: a match (with the gap after it) or a gap (with the match after) */
        const int absorbs = merged_with_next ? seg[k].match : !seg[k].match;
        if (absorbs && next < n_seg && seg[next].match != seg[k].match) b = seg[next++].b;
        KW_CHECK(sink->piece(sink, s + a, b - a, -1));
        k = next;
    }
out:
    free(seg);
    return rc;
}

int kw__tok_spm_segment(const kw_tokenizer *tok, const uint8_t *text, size_t len, size_t at_start, kw_tok_sink *sink) {
    if (len == 0) return 0;
    const kw_tok_spm *spm = tok->spm;
    kw_buf norm = KW_BUF_INIT, meta = KW_BUF_INIT;
    int rc = 0;
    KW_CHECK(kw_spm_normalize(spm, text, len, &norm));
    const uint8_t *s = (const uint8_t *)norm.data;
    size_t n = norm.len;
    if (spm->pre == KW_SPM_PRE_METASPACE) {
        /* HF's order: ' ' becomes the replacement, then the replacement is prepended per the scheme unless the
         * piece already starts with it (the first stretch of the text only, for "first"), then the split */
        const kw_spm_str sp = {" ", 1};
        const int want = spm->meta_scheme == KW_SPM_ALWAYS || (spm->meta_scheme == KW_SPM_FIRST && at_start == 0);
        if (want && n > 0) KW_CHECK(kw_buf_append(&meta, spm->meta.s, spm->meta.n));
        const size_t at = meta.len;
        KW_CHECK(kw_spm_replace_into(&meta, s, n, &sp, &spm->meta));
        if (at > 0 && meta.len - at >= spm->meta.n && memcmp(meta.data + at, spm->meta.s, spm->meta.n) == 0) {
            memmove(meta.data, meta.data + at, meta.len - at); /* it already starts with the replacement */
            meta.len -= at;
        }
        s = (const uint8_t *)meta.data;
        n = meta.len;
    }
    if (sink->segment) KW_CHECK(sink->segment(sink, text, len, s, n));
    if (spm->pre == KW_SPM_PRE_SPLIT)
        KW_CHECK(kw_spm_split(s, n, &spm->split, 0, sink));
    else if (spm->pre == KW_SPM_PRE_METASPACE && spm->meta_split)
        KW_CHECK(kw_spm_split(s, n, &spm->meta, 1, sink));
    else if (n > 0)
        KW_CHECK(sink->piece(sink, s, n, -1));
out:
    kw_buf_free(&norm);
    kw_buf_free(&meta);
    return rc;
}

// ---------------------------------------------------------------------------------------------------------------
// Encode: BPE of one piece

int kw__tok_spm_bpe(const kw_tokenizer *tok, kw_tok_scratch *s, const uint8_t *w, size_t n, kw_tok_ids *out,
                    kw_tok_ids *lens) {
    const kw_tok_spm *spm = tok->spm;
    KW_RETURN_IF(n > KW_TOK_MAX_PIECES, KW_E_LIMIT, "a pre-token of %zu bytes is over the limit", n);
    if (tok->ignore_merges) {
        const int32_t id = kw__tok_vocab_find(tok, (const char *)w, n);
        if (id >= 0) {
            KW_FORWARD(kw__tok_ids_push(out, id));
            return lens ? kw__tok_ids_push(lens, (int32_t)n) : 0;
        }
    }
    if (n > s->sym_cap) {
        kw_tok_symbol *p = realloc(s->sym, n * sizeof *p);
        KW_RETURN_IF(!p, KW_E_NOMEM, "out of memory in BPE");
        s->sym = p;
        s->sym_cap = n;
    }
    /* HF's BPE::merge_word: characters in the vocabulary are symbols; others become their byte tokens, or else the
     * unk token (consecutive ones fused), which is added when the next known character comes or at the end (a
     * byte-fallback character in between does not flush it, as in HF). */
    int32_t m = 0, unk_len = 0;
    int unk_pending = 0;
    for (size_t i = 0; i < n;) {
        size_t bad = 0, k = kw__tok_utf8_seq(w + i, n - i, &bad);
        if (k == 0) k = 1; /* not reachable: the text was checked */
        const int32_t id = kw__tok_vocab_find(tok, (const char *)w + i, k);
        if (id >= 0) {
            if (unk_pending) {
                s->sym[m] = (kw_tok_symbol){spm->unk_id, m - 1, m + 1, 1, unk_len};
                ++m;
                unk_pending = 0;
            }
            s->sym[m] = (kw_tok_symbol){id, m - 1, m + 1, 1, (int32_t)k};
            ++m;
            i += k;
            continue;
        }
        int all_bytes = spm->byte_fallback;
        for (size_t j = 0; all_bytes && j < k; ++j)
            all_bytes = spm->byte_fb[w[i + j]] >= 0;
        if (all_bytes) {
            for (size_t j = 0; j < k; ++j) {
                s->sym[m] = (kw_tok_symbol){spm->byte_fb[w[i + j]], m - 1, m + 1, 1, 1};
                ++m;
            }
        } else if (spm->unk_id >= 0) {
            if (unk_pending && spm->fuse_unk) {
                unk_len += (int32_t)k;
            } else {
                if (unk_pending) {
                    s->sym[m] = (kw_tok_symbol){spm->unk_id, m - 1, m + 1, 1, unk_len};
                    ++m;
                }
                unk_pending = 1;
                unk_len = (int32_t)k;
            }
        } /* no unk token: the character is dropped, as in HF */
        i += k;
    }
    if (unk_pending) {
        s->sym[m] = (kw_tok_symbol){spm->unk_id, m - 1, m + 1, 1, unk_len};
        ++m;
    }
    return kw__tok_merge_symbols(tok, s, m, out, lens);
}

// ---------------------------------------------------------------------------------------------------------------
// Decode: the decoder steps over a list of token strings

/* Token i is text[off[i], off[i + 1]); off[0] == 0. */
typedef struct kw_spm_list {
    kw_buf text;
    size_t *off;
    size_t n, cap;
} kw_spm_list;

static void kw_spm_list_free(kw_spm_list *l) {
    kw_buf_free(&l->text);
    free(l->off);
}

static void kw_spm_list_clear(kw_spm_list *l) {
    l->text.len = 0;
    l->n = 0;
}

/* Room for one more token end. Call before appending a token's bytes. */
static int kw_spm_list_reserve(kw_spm_list *l) {
    if (l->n + 2 > l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64, bytes;
        KW_RETURN_IF(kw_size_mul(cap, sizeof *l->off, &bytes) < 0, KW_E_OVERFLOW, "decode too long");
        size_t *o = realloc(l->off, bytes);
        KW_RETURN_IF(!o, KW_E_NOMEM, "out of memory decoding");
        l->off = o;
        l->cap = cap;
    }
    l->off[0] = 0;
    return 0;
}

/* Ends the token whose bytes were appended since the previous end. */
static void kw_spm_list_end(kw_spm_list *l) {
    l->off[++l->n] = l->text.len;
}

static int kw_spm_list_push(kw_spm_list *l, const void *s, size_t n) {
    KW_FORWARD(kw_spm_list_reserve(l));
    KW_FORWARD(kw_buf_append(&l->text, s, n));
    kw_spm_list_end(l);
    return 0;
}

/* HF's ByteFallback test: "<0x" two characters ">" where the two parse as a u8 in base 16 (Rust's from_str_radix,
 * which takes a leading '+'). Returns the byte or -1. */
static int kw_spm_byte_token(const uint8_t *t, size_t n) {
    if (n != 6 || t[0] != '<' || t[1] != '0' || t[2] != 'x' || t[5] != '>') return -1;
    int v = 0;
    for (size_t i = 3; i < 5; ++i) {
        const uint8_t c = t[i];
        int d;
        if (i == 3 && c == '+') continue;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Flushes the pending byte tokens: one token of their bytes if they are UTF-8, else one U+FFFD per byte. */
static int kw_spm_flush_bytes(kw_spm_list *dst, kw_buf *bytes) {
    if (bytes->len == 0) return 0;
    int rc = 0;
    if (kw__tok_utf8_check((const uint8_t *)bytes->data, bytes->len) == bytes->len) {
        rc = kw_spm_list_push(dst, bytes->data, bytes->len);
    } else {
        for (size_t i = 0; i < bytes->len && rc == 0; ++i)
            rc = kw_spm_list_push(dst, "\xEF\xBF\xBD", 3);
    }
    bytes->len = 0;
    return rc;
}

/* One decoder step from src to dst. */
static int kw_spm_dec_step(const kw_spm_dec *d, const kw_spm_list *src, kw_spm_list *dst, kw_buf *tmp) {
    kw_spm_list_clear(dst);
    tmp->len = 0;
    if (d->kind == KW_SPM_DEC_FUSE) {
        if (src->n == 0) return 0;
        return kw_spm_list_push(dst, src->text.data, src->text.len);
    }
    for (size_t i = 0; i < src->n; ++i) {
        const uint8_t *t = (const uint8_t *)src->text.data + src->off[i];
        const size_t n = src->off[i + 1] - src->off[i];
        switch (d->kind) {
        case KW_SPM_DEC_REPLACE:
            KW_FORWARD(kw_spm_list_reserve(dst));
            KW_FORWARD(kw_spm_replace_into(&dst->text, t, n, &d->from, &d->to));
            kw_spm_list_end(dst);
            break;
        case KW_SPM_DEC_BYTE_FALLBACK: {
            const int b = kw_spm_byte_token(t, n);
            if (b >= 0) {
                const char c = (char)b;
                KW_FORWARD(kw_buf_append(tmp, &c, 1));
            } else {
                KW_FORWARD(kw_spm_flush_bytes(dst, tmp));
                KW_FORWARD(kw_spm_list_push(dst, t, n));
            }
            break;
        }
        case KW_SPM_DEC_STRIP: {
            /* up to start leading and stop trailing characters equal to ch */
            size_t a = 0, e = n;
            for (int32_t k = 0; k < d->start && a < e; ++k) {
                uint32_t cp;
                const size_t l = kw__tok_utf8_decode(t + a, &cp);
                if (cp != d->ch) break;
                a += l;
            }
            for (int32_t k = 0; k < d->stop && e > a; ++k) {
                size_t j = e - 1;
                while (j > a && (t[j] & 0xC0) == 0x80)
                    --j;
                uint32_t cp;
                kw__tok_utf8_decode(t + j, &cp);
                if (cp != d->ch) break;
                e = j;
            }
            KW_FORWARD(kw_spm_list_push(dst, t + a, e - a));
            break;
        }
        case KW_SPM_DEC_METASPACE: {
            /* every replacement becomes ' ', except in the first token when a prefix was prepended: dropped */
            KW_FORWARD(kw_spm_list_reserve(dst));
            for (size_t j = 0; j < n;) {
                uint32_t cp;
                const size_t l = kw__tok_utf8_decode(t + j, &cp);
                if (cp != d->ch)
                    KW_FORWARD(kw_buf_append(&dst->text, (const char *)t + j, l));
                else if (i != 0 || d->scheme == KW_SPM_NEVER)
                    KW_FORWARD(kw_buf_append(&dst->text, " ", 1));
                j += l;
            }
            kw_spm_list_end(dst);
            break;
        }
        case KW_SPM_DEC_FUSE:
            break;
        }
    }
    if (d->kind == KW_SPM_DEC_BYTE_FALLBACK) KW_FORWARD(kw_spm_flush_bytes(dst, tmp));
    return 0;
}

int kw__tok_spm_decode(const kw_tokenizer *tok, const int32_t *ids, size_t n_ids, int skip_special, char **text,
                       size_t *len) {
    kw_spm_list a = {.text = KW_BUF_INIT}, b = {.text = KW_BUF_INIT};
    kw_buf tmp = KW_BUF_INIT;
    int rc = 0;
    for (size_t i = 0; i < n_ids; ++i) {
        const kw_tok_entry *e = &tok->entries[ids[i]];
        if (skip_special && (e->flags & KW_TOK_SPECIAL)) continue;
        KW_CHECK(kw_spm_list_push(&a, tok->pool.data + e->off, e->len));
    }
    for (int s = 0; s < tok->spm->n_dec; ++s) {
        KW_CHECK(kw_spm_dec_step(&tok->spm->dec[s], &a, &b, &tmp));
        const kw_spm_list t = a;
        a = b;
        b = t;
    }
    /* the tokens joined: a.text holds exactly them, in order */
    KW_CHECK(kw_buf_take(&a.text, text, len));
out:
    kw_spm_list_free(&a);
    kw_spm_list_free(&b);
    kw_buf_free(&tmp);
    return rc;
}

// ---------------------------------------------------------------------------------------------------------------
// A SentencePiece vocabulary given as arrays

/* One candidate merge of generate_merges. */
typedef struct kw_spm_cand {
    float score;
    int32_t len_l, len_r; /* characters */
    int32_t piece, left, right;
} kw_spm_cand;

/* score descending (-0 == 0, as Python compares them), len_l descending, len_r descending, piece id, left, right. */
static int kw_spm_cand_cmp(const void *pa, const void *pb) {
    const kw_spm_cand *a = pa, *b = pb;
    if (a->score != b->score) return a->score > b->score ? -1 : 1;
    if (a->len_l != b->len_l) return a->len_l > b->len_l ? -1 : 1;
    if (a->len_r != b->len_r) return a->len_r > b->len_r ? -1 : 1;
    if (a->piece != b->piece) return a->piece < b->piece ? -1 : 1;
    if (a->left != b->left) return a->left < b->left ? -1 : 1;
    return (a->right > b->right) - (a->right < b->right);
}

/* The merges HF's converter derives from the scores (see the top of this file). */
static int kw_spm_generate_merges(kw_tokenizer *tok, const kw_tokenizer_spm_vocab *v) {
    kw_spm_cand *c = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    for (int32_t id = 0; id < tok->n_ids; ++id) {
        const kw_tok_entry *e = &tok->entries[id];
        const char *p = tok->pool.data + e->off;
        if (kw__tok_vocab_find(tok, p, e->len) != id) continue; /* a repeated piece: the later id stands */
        const float score =
            (v->types[id] == KW_SPM_TOKEN_CONTROL || v->types[id] == KW_SPM_TOKEN_USER_DEFINED) ? 0.0f : v->scores[id];
        int32_t chars = 0;
        for (uint32_t i = 0; i < e->len; ++i)
            chars += ((uint8_t)p[i] & 0xC0) != 0x80;
        int32_t k = 0;
        for (uint32_t b = 0; b < e->len;) {
            uint32_t cp;
            b += (uint32_t)kw__tok_utf8_decode((const uint8_t *)p + b, &cp);
            ++k;
            if (b >= e->len) break;
            const int32_t l = kw__tok_vocab_find(tok, p, b), r = kw__tok_vocab_find(tok, p + b, e->len - b);
            if (l < 0 || r < 0) continue;
            if (n == cap) {
                size_t bytes;
                cap = cap ? 2 * cap : 1024;
                KW_CHECK_IF(kw_size_mul(cap, sizeof *c, &bytes) < 0, KW_E_OVERFLOW, "too many merges");
                kw_spm_cand *q = realloc(c, bytes);
                KW_CHECK_IF(!q, KW_E_NOMEM, "out of memory deriving merges");
                c = q;
            }
            c[n++] = (kw_spm_cand){score, k, chars - k, id, l, r};
        }
    }
    KW_CHECK_IF(n >= (size_t)INT32_MAX, KW_E_LIMIT, "too many merges");
    if (n) qsort(c, n, sizeof *c, kw_spm_cand_cmp);
    size_t slots = 0;
    KW_CHECK(kw__tok_table_size(n, &slots));
    tok->merges = malloc(slots * sizeof *tok->merges);
    KW_CHECK_IF(!tok->merges, KW_E_NOMEM, "out of memory for %zu merges", n);
    for (size_t i = 0; i < slots; ++i)
        tok->merges[i].key = UINT64_MAX;
    tok->merge_mask = slots - 1;
    for (size_t i = 0; i < n; ++i)
        kw__tok_merge_insert(tok, c[i].left, c[i].right, (int32_t)i, c[i].piece);
out:
    free(c);
    return rc;
}

/* Entries, pool, vocabulary and added tokens from the arrays. Spaces in a piece are stored as "▁" (SentencePiece's
 * own spelling; llama.cpp writes Gemma's user-defined whitespace pieces with spaces). */
static int kw_spm_vocab_from_arrays(kw_tokenizer *tok, const kw_tokenizer_spm_vocab *v) {
    tok->n_ids = v->n_tokens;
    tok->entries = calloc((size_t)v->n_tokens, sizeof *tok->entries);
    KW_RETURN_IF(!tok->entries, KW_E_NOMEM, "out of memory for %d token entries", (int)v->n_tokens);
    size_t slots = 0, n_added = 0;
    KW_FORWARD(kw__tok_table_size((size_t)v->n_tokens, &slots));
    tok->vocab_slots = calloc(slots, sizeof(int32_t));
    KW_RETURN_IF(!tok->vocab_slots, KW_E_NOMEM, "out of memory for the vocabulary table");
    tok->vocab_mask = slots - 1;
    for (int32_t id = 0; id < v->n_tokens; ++id)
        n_added += v->types[id] == KW_SPM_TOKEN_UNKNOWN || v->types[id] == KW_SPM_TOKEN_CONTROL ||
                   v->types[id] == KW_SPM_TOKEN_USER_DEFINED;
    KW_RETURN_IF(n_added > KW_TOK_MAX_ADDED, KW_E_LIMIT, "%zu control and user-defined tokens, over the limit of %d",
                 n_added, KW_TOK_MAX_ADDED);
    tok->added = calloc(n_added ? n_added : 1, sizeof(int32_t));
    KW_RETURN_IF(!tok->added, KW_E_NOMEM, "out of memory for added tokens");
    kw_buf piece = KW_BUF_INIT;
    int rc = 0;
    for (int32_t id = 0; id < v->n_tokens; ++id) {
        const char *t = v->tokens[id];
        const size_t n = v->token_lens ? v->token_lens[id] : strlen(t);
        piece.len = 0;
        const kw_spm_str sp = {" ", 1}, rep = {KW_SPM_SPACE, 3};
        KW_CHECK(kw_spm_replace_into(&piece, (const uint8_t *)t, n, &sp, &rep));
        kw_tok_entry *e = &tok->entries[id];
        KW_CHECK(kw__tok_pool_add(tok, piece.data, piece.len, &e->off));
        e->len = (uint32_t)piece.len;
        e->flags = KW_TOK_IN_VOCAB;
        kw__tok_vocab_insert(tok, id);
        const int32_t type = v->types[id];
        if (type == KW_SPM_TOKEN_UNKNOWN || type == KW_SPM_TOKEN_CONTROL || type == KW_SPM_TOKEN_USER_DEFINED) {
            const int special = v->special ? v->special[id] != 0 : type != KW_SPM_TOKEN_USER_DEFINED;
            e->flags |= KW_TOK_ADDED | (special ? KW_TOK_SPECIAL : 0);
            tok->added[tok->n_added++] = id;
            tok->added_first[(uint8_t)piece.data[0]] = 1;
        }
    }
    KW_CHECK(kw__tok_index_added(tok));
out:
    kw_buf_free(&piece);
    return rc;
}

static int kw_spm_check_arrays(const kw_tokenizer_spm_vocab *v) {
    KW_RETURN_IF(!v->tokens || !v->scores || !v->types, KW_E_INVALID_ARG, "SentencePiece vocabulary: NULL array");
    KW_RETURN_IF(v->n_tokens < 1 || v->n_tokens > KW_TOK_MAX_ID, KW_E_LIMIT,
                 "SentencePiece vocabulary: %d tokens is outside [1, %d]", (int)v->n_tokens, KW_TOK_MAX_ID);
    size_t total = 0;
    int32_t n_unk = 0;
    for (int32_t id = 0; id < v->n_tokens; ++id) {
        const char *t = v->tokens[id];
        KW_RETURN_IF(!t, KW_E_INVALID_ARG, "SentencePiece vocabulary: token %d is NULL", (int)id);
        const size_t n = v->token_lens ? v->token_lens[id] : strlen(t);
        KW_RETURN_IF(n == 0 || n > 4096, KW_E_TOKENIZER, "SentencePiece vocabulary: token %d has %zu bytes (1..4096)",
                     (int)id, n);
        KW_RETURN_IF(memchr(t, 0, n) != NULL, KW_E_TOKENIZER, "SentencePiece vocabulary: token %d holds a NUL byte",
                     (int)id);
        KW_RETURN_IF(kw__tok_utf8_check((const uint8_t *)t, n) != n, KW_E_TOKENIZER,
                     "SentencePiece vocabulary: token %d is not UTF-8", (int)id);
        KW_RETURN_IF(kw_size_add(total, n, &total) < 0 || total > KW_TOK_MAX_FILE, KW_E_LIMIT,
                     "SentencePiece vocabulary: the tokens exceed %u bytes", KW_TOK_MAX_FILE);
        KW_RETURN_IF(!isfinite(v->scores[id]), KW_E_TOKENIZER, "SentencePiece vocabulary: score of token %d is %g",
                     (int)id, (double)v->scores[id]);
        KW_RETURN_IF(v->types[id] < KW_SPM_TOKEN_NORMAL || v->types[id] > KW_SPM_TOKEN_BYTE, KW_E_TOKENIZER,
                     "SentencePiece vocabulary: token %d has type %d (1..6)", (int)id, (int)v->types[id]);
        n_unk += v->types[id] == KW_SPM_TOKEN_UNKNOWN;
    }
    KW_RETURN_IF(n_unk > 1, KW_E_TOKENIZER, "SentencePiece vocabulary: %d unknown tokens (at most 1)", (int)n_unk);
    return 0;
}

int kw_tokenizer_from_spm(const kw_tokenizer_spm_vocab *v, kw_tokenizer **out) {
    KW_RETURN_IF(!v || !out, KW_E_INVALID_ARG, "kw_tokenizer_from_spm: NULL argument");
    *out = NULL;
    KW_FORWARD(kw_spm_check_arrays(v));
    int rc = 0;
    kw_tokenizer *tok = calloc(1, sizeof *tok);
    KW_CHECK_IF(!tok, KW_E_NOMEM, "out of memory");
    tok->spm = calloc(1, sizeof *tok->spm);
    KW_CHECK_IF(!tok->spm, KW_E_NOMEM, "out of memory");
    kw_tok_spm *spm = tok->spm;
    KW_CHECK(kw_spm_vocab_from_arrays(tok, v));
    KW_CHECK(kw_spm_generate_merges(tok, v));

    /* What HF's converters write for such a vocabulary: spaces as "▁" (GemmaConverter's Replace normalizer, or
     * LlamaConverter's Metaspace with prepend_scheme "first" when a space prefix is added), byte fallback, unk fused,
     * and a decoder that undoes it. */
    if (v->add_space_prefix) {
        spm->pre = KW_SPM_PRE_METASPACE;
        kw_spm_put_cp(&spm->meta, 0x2581);
        spm->meta_scheme = KW_SPM_FIRST;
        spm->meta_split = false;
    } else {
        spm->norm[0].kind = KW_SPM_NORM_REPLACE;
        spm->norm[0].from = (kw_spm_str){" ", 1};
        spm->norm[0].to = (kw_spm_str){KW_SPM_SPACE, 3};
        spm->n_norm = 1;
    }
    spm->dec[0].kind = KW_SPM_DEC_REPLACE;
    spm->dec[0].from = (kw_spm_str){KW_SPM_SPACE, 3};
    spm->dec[0].to = (kw_spm_str){" ", 1};
    spm->dec[1].kind = KW_SPM_DEC_BYTE_FALLBACK;
    spm->dec[2].kind = KW_SPM_DEC_FUSE;
    spm->n_dec = 3;
    if (v->add_space_prefix) {
        spm->dec[3].kind = KW_SPM_DEC_STRIP;
        spm->dec[3].ch = ' ';
        spm->dec[3].start = 1;
        spm->n_dec = 4;
    }
    spm->fuse_unk = true;
    spm->unk_id = -1;
    for (int32_t id = 0; id < v->n_tokens; ++id)
        if (v->types[id] == KW_SPM_TOKEN_UNKNOWN) spm->unk_id = id;
    kw_spm_byte_tokens(tok, spm);
    for (int b = 0; b < 256; ++b)
        spm->byte_fallback |= spm->byte_fb[b] >= 0;
    *out = tok;
    tok = NULL;
out:
    kw_tokenizer_free(tok);
    return rc;
}
