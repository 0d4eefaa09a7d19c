/* kw_tokenizer_gguf.c: a byte-level BPE tokenizer from GGUF metadata (tokenizer.ggml.model = "gpt2").
 *
 * The metadata is turned into the tokenizer.json the model's HF repository holds, and that tree goes through the
 * same loader as a file would (kw__tok_from_json), so both paths share every rule:
 *  - model.vocab: tokenizer.ggml.tokens by id (NORMAL, UNKNOWN, UNUSED tokens). A token written outside the ByteLevel
 *    alphabet is re-spelled from its UTF-8 bytes, as transformers' GGUF converter does;
 *  - added_tokens: CONTROL tokens (type 3) as special, USER_DEFINED ones (type 4) as plain added tokens, matched in
 *    the raw text before pre-tokenization;
 *  - model.merges: tokenizer.ggml.merges, in rank order;
 *  - pre_tokenizer: Split(regex, Isolated) + ByteLevel(use_regex=false), the regex chosen by tokenizer.ggml.pre.
 *    "smollm" is SmolLM's Sequence[Digits(individual_digits), ByteLevel(use_regex)]: every digit a piece of its own,
 *    then the GPT-2 regex on the text between digits. One regex does the same: \p{N} first, " ?\p{N}+" dropped, and
 *    the whitespace lookahead (?!\S) widened to (?![^\s\p{N}]) because a digit ends the stretch the GPT-2 regex sees
 *    (llama.cpp runs the two regexes in sequence for "smollm"). "qwen2" adds the NFC normalizer and "llama-bpe"
 *    ignore_merges, as their tokenizer.json files do.
 * Not here: SentencePiece-style GGUF vocabularies (tokenizer.ggml.model = "llama"), refused with KW_E_TOKENIZER.
 */
#include "model/kw_tokenizer.h"

#include <stdlib.h>
#include <string.h>

#include "common/kw_json.h"
#include "common/kw_status.h"
#include "model/kw_gguf.h"
#include "model/kw_tokenizer_impl.h"

#define KW_TOK_GGUF_MAX_TOKENS (1 << 22)

enum { KW_TOK_GGUF_CONTROL = 3, KW_TOK_GGUF_USER_DEFINED = 4 };

typedef struct kw_tok_gguf_pre {
    const char *name;
    const char *regex;
    int nfc, ignore_merges;
} kw_tok_gguf_pre;

static const kw_tok_gguf_pre kw_tok_gguf_pres[] = {
    {"gpt2", "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+", 0, 0},
    {"smollm", "\\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?![^\\s\\p{N}])|\\s+", 0, 0},
    {"qwen2",
     "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
     "\\s+(?!\\S)|\\s+",
     1, 0},
    {"llama-bpe",
     "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
     "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
     0, 1},
};

/* The GPT-2 ByteLevel alphabet: the code point each byte is written as. */
static uint32_t kw_tok_gguf_byte_cp(int b) {
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) return (uint32_t)b;
    uint32_t next = 256;
    for (int i = 0; i < b; ++i)
        if (!((i >= 0x21 && i <= 0x7E) || (i >= 0xA1 && i <= 0xAC) || (i >= 0xAE && i <= 0xFF))) ++next;
    return next;
}

/* 1 if every code point of the UTF-8 string s[0..n) is in the ByteLevel alphabet. Invalid UTF-8: 0. */
static int kw_tok_gguf_in_alphabet(const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        if (s[i] < 0x80) {
            cp = s[i++];
        } else if ((s[i] & 0xE0) == 0xC0 && i + 1 < n) {
            cp = ((uint32_t)(s[i] & 0x1F) << 6) | (s[i + 1] & 0x3F);
            i += 2;
        } else {
            return 0;
        }
        if (cp > 0x143 || (cp < 0x100 && kw_tok_gguf_byte_cp((int)cp) != cp)) return 0;
    }
    return 1;
}

/* A NUL-terminated copy of token s[0..n), re-spelled byte by byte into the alphabet when it is not written in it. */
static char *kw_tok_gguf_spell(const char *s, size_t n, int respell) {
    char *out = malloc(respell ? 2 * n + 1 : n + 1);
    if (!out) return NULL;
    if (!respell) {
        memcpy(out, s, n);
        out[n] = '\0';
        return out;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; ++i) {
        const uint32_t cp = kw_tok_gguf_byte_cp((unsigned char)s[i]);
        if (cp < 0x80) {
            out[k++] = (char)cp;
        } else {
            out[k++] = (char)(0xC0 | (cp >> 6));
            out[k++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    out[k] = '\0';
    return out;
}

static cJSON *kw_tok_gguf_pretokenizer(const kw_tok_gguf_pre *pre) {
    cJSON *seq = cJSON_CreateObject(), *list = cJSON_CreateArray(), *split = cJSON_CreateObject();
    cJSON *pattern = cJSON_CreateObject(), *bl = cJSON_CreateObject();
    if (!seq || !list || !split || !pattern || !bl) {
        cJSON_Delete(seq);
        cJSON_Delete(list);
        cJSON_Delete(split);
        cJSON_Delete(pattern);
        cJSON_Delete(bl);
        return NULL;
    }
    cJSON_AddStringToObject(seq, "type", "Sequence");
    cJSON_AddItemToObject(seq, "pretokenizers", list);
    cJSON_AddStringToObject(split, "type", "Split");
    cJSON_AddStringToObject(pattern, "Regex", pre->regex);
    cJSON_AddItemToObject(split, "pattern", pattern);
    cJSON_AddStringToObject(split, "behavior", "Isolated");
    cJSON_AddFalseToObject(split, "invert");
    cJSON_AddItemToArray(list, split);
    cJSON_AddStringToObject(bl, "type", "ByteLevel");
    cJSON_AddFalseToObject(bl, "add_prefix_space");
    cJSON_AddFalseToObject(bl, "use_regex");
    cJSON_AddItemToArray(list, bl);
    return seq;
}

/* Adds the vocabulary and the added tokens. */
static int kw_tok_gguf_vocab(const kw_gguf *g, cJSON *vocab, cJSON *added) {
    const kw_gguf_kv *tokens = NULL, *types = NULL;
    KW_RETURN_IF(kw_gguf_get_array(g, "tokenizer.ggml.tokens", KW_GGUF_STRING, &tokens) < 0, KW_E_TOKENIZER,
                 "tokenizer.ggml.tokens: %s", kw_error_detail());
    KW_RETURN_IF(tokens->count < 256 || tokens->count > KW_TOK_GGUF_MAX_TOKENS, KW_E_TOKENIZER,
                 "tokenizer.ggml.tokens holds %llu tokens (256 .. %d)", (unsigned long long)tokens->count,
                 KW_TOK_GGUF_MAX_TOKENS);
    const int rc = kw_gguf_get_array(g, "tokenizer.ggml.token_type", KW_GGUF_INT32, &types);
    KW_RETURN_IF(rc < 0 && rc != KW_E_NOT_FOUND, KW_E_TOKENIZER, "tokenizer.ggml.token_type: %s", kw_error_detail());
    KW_RETURN_IF(types && types->count != tokens->count, KW_E_TOKENIZER,
                 "tokenizer.ggml.token_type has %llu entries for %llu tokens", (unsigned long long)types->count,
                 (unsigned long long)tokens->count);
    for (uint64_t id = 0; id < tokens->count; ++id) {
        const char *s = NULL;
        size_t n = 0;
        KW_FORWARD(kw_gguf_array_str(g, tokens, id, &s, &n));
        KW_RETURN_IF(n == 0 || memchr(s, 0, n), KW_E_TOKENIZER, "tokenizer.ggml.tokens[%llu] is empty or holds NUL",
                     (unsigned long long)id);
        int64_t type = 1;
        if (types) KW_FORWARD(kw_gguf_array_int(types, id, &type));
        const int is_added = type == KW_TOK_GGUF_CONTROL || type == KW_TOK_GGUF_USER_DEFINED;
        char *text = kw_tok_gguf_spell(s, n, !is_added && !kw_tok_gguf_in_alphabet((const unsigned char *)s, n));
        KW_RETURN_IF(!text, KW_E_NOMEM, "out of memory");
        cJSON *item = NULL;
        if (is_added) {
            item = cJSON_CreateObject();
            if (item &&
                (!cJSON_AddNumberToObject(item, "id", (double)id) || !cJSON_AddStringToObject(item, "content", text) ||
                 !cJSON_AddBoolToObject(item, "special", type == KW_TOK_GGUF_CONTROL))) {
                cJSON_Delete(item);
                item = NULL;
            }
            if (item) cJSON_AddItemToArray(added, item);
        } else {
            item = cJSON_CreateNumber((double)id);
            if (item) cJSON_AddItemToObject(vocab, text, item);
        }
        free(text);
        KW_RETURN_IF(!item, KW_E_NOMEM, "out of memory");
    }
    return 0;
}

static int kw_tok_gguf_merges(const kw_gguf *g, cJSON *merges) {
    const kw_gguf_kv *kv = NULL;
    KW_RETURN_IF(kw_gguf_get_array(g, "tokenizer.ggml.merges", KW_GGUF_STRING, &kv) < 0, KW_E_TOKENIZER,
                 "tokenizer.ggml.merges: %s", kw_error_detail());
    for (uint64_t i = 0; i < kv->count; ++i) {
        const char *s = NULL;
        size_t n = 0;
        KW_FORWARD(kw_gguf_array_str(g, kv, i, &s, &n));
        KW_RETURN_IF(memchr(s, 0, n), KW_E_TOKENIZER, "tokenizer.ggml.merges[%llu] holds NUL", (unsigned long long)i);
        char *text = kw_tok_gguf_spell(s, n, 0);
        KW_RETURN_IF(!text, KW_E_NOMEM, "out of memory");
        cJSON *item = cJSON_CreateString(text);
        free(text);
        KW_RETURN_IF(!item, KW_E_NOMEM, "out of memory");
        cJSON_AddItemToArray(merges, item);
    }
    return 0;
}

/* The tokenizer.json tree for g's gpt2-style vocabulary. */
static int kw_tok_gguf_tree(const kw_gguf *g, cJSON **out) {
    const char *s = NULL;
    size_t n = 0;
    KW_RETURN_IF(kw_gguf_get_str(g, "tokenizer.ggml.model", &s, &n) < 0, KW_E_TOKENIZER,
                 "tokenizer.ggml.model is missing: the file carries no tokenizer");
    KW_RETURN_IF(n != 4 || memcmp(s, "gpt2", 4) != 0, KW_E_TOKENIZER,
                 "tokenizer.ggml.model \"%.*s\" is not supported (gpt2)", (int)(n < 32 ? n : 32), s);
    const kw_tok_gguf_pre *pre = NULL;
    const char *pre_name = "gpt2";
    size_t pre_len = 4;
    const int prc = kw_gguf_get_str(g, "tokenizer.ggml.pre", &pre_name, &pre_len);
    KW_RETURN_IF(prc < 0 && prc != KW_E_NOT_FOUND, KW_E_TOKENIZER, "tokenizer.ggml.pre: %s", kw_error_detail());
    if (prc == KW_E_NOT_FOUND) {
        pre_name = "gpt2";
        pre_len = 4;
    }
    for (size_t i = 0; i < sizeof kw_tok_gguf_pres / sizeof kw_tok_gguf_pres[0]; ++i)
        if (strlen(kw_tok_gguf_pres[i].name) == pre_len && memcmp(kw_tok_gguf_pres[i].name, pre_name, pre_len) == 0)
            pre = &kw_tok_gguf_pres[i];
    KW_RETURN_IF(!pre, KW_E_TOKENIZER, "tokenizer.ggml.pre \"%.*s\" is not supported (gpt2, smollm, qwen2, llama-bpe)",
                 (int)(pre_len < 32 ? pre_len : 32), pre_name);

    int rc = 0;
    cJSON *root = cJSON_CreateObject(), *model = cJSON_CreateObject(), *vocab = cJSON_CreateObject();
    cJSON *merges = cJSON_CreateArray(), *added = cJSON_CreateArray(), *decoder = cJSON_CreateObject();
    cJSON *pretok = kw_tok_gguf_pretokenizer(pre), *norm = pre->nfc ? cJSON_CreateObject() : cJSON_CreateNull();
    if (!root || !model || !vocab || !merges || !added || !decoder || !pretok || !norm) {
        cJSON_Delete(model);
        cJSON_Delete(vocab);
        cJSON_Delete(merges);
        cJSON_Delete(added);
        cJSON_Delete(decoder);
        cJSON_Delete(pretok);
        cJSON_Delete(norm);
        KW_CHECK_IF(1, KW_E_NOMEM, "out of memory");
    }
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddBoolToObject(model, "ignore_merges", pre->ignore_merges);
    cJSON_AddItemToObject(model, "vocab", vocab);
    cJSON_AddItemToObject(model, "merges", merges);
    cJSON_AddItemToObject(root, "model", model);
    cJSON_AddItemToObject(root, "added_tokens", added);
    cJSON_AddStringToObject(decoder, "type", "ByteLevel");
    cJSON_AddItemToObject(root, "decoder", decoder);
    cJSON_AddItemToObject(root, "pre_tokenizer", pretok);
    if (pre->nfc) cJSON_AddStringToObject(norm, "type", "NFC");
    cJSON_AddItemToObject(root, "normalizer", norm);
    KW_CHECK(kw_tok_gguf_vocab(g, vocab, added));
    KW_CHECK(kw_tok_gguf_merges(g, merges));
    *out = root;
    root = NULL;
out:
    cJSON_Delete(root);
    return rc;
}

int kw_tokenizer_load_gguf(const char *path, kw_tokenizer **out) {
    KW_RETURN_IF(!path || !out, KW_E_INVALID_ARG, "kw_tokenizer_load_gguf: NULL argument");
    *out = NULL;
    kw_gguf *g = NULL;
    cJSON *tree = NULL;
    int rc = kw_gguf_open(path, &g);
    if (rc == 0) rc = kw_tok_gguf_tree(g, &tree);
    if (rc == 0) rc = kw__tok_from_json(tree, out);
    if (rc < 0) rc = kw_error_set(rc, "%s: %s", path, kw_error_detail());
    cJSON_Delete(tree);
    kw_gguf_close(g);
    return rc;
}
