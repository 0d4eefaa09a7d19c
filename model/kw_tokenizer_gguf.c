/* kw_tokenizer_gguf.c: tokenizers from GGUF metadata, for the two tokenizer.ggml.model values kvwire reads.
 *
 * "gpt2" (byte-level BPE). The metadata is turned into the tokenizer.json the model's HF repository holds, and that
 * tree goes through the same loader as a file would (kw__tok_from_json), so both paths share every rule:
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
 *
 * "llama" (SentencePiece, e.g. Gemma 3). tokenizer.ggml.tokens, .scores and .token_type go as they are to
 * kw_tokenizer_from_spm, which derives the merges HF's converter derives and reads llama.cpp's spellings (spaces in
 * whitespace pieces, -1000 scores of control pieces); tokenizer.ggml.add_space_prefix (llama.cpp's default: true)
 * chooses the space handling. Which added tokens decode's skip_special drops is not in the file: for gemma3 files it
 * is what HF's Gemma 3 tokenizer marks special (the bos, eos, unknown and padding tokens the file names, and
 * <start_of_turn>, <end_of_turn>, <start_of_image>, <end_of_image>; HF's ninth, <image_soft_token>, id 262144, is not
 * in the GGUF vocabulary), for other files every control and unknown piece, as HF's Llama converter marks them.
 */
#include "model/kw_tokenizer.h"

#include <stdint.h>
#include <stdio.h>
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

// ---------------------------------------------------------------------------------------------------------------
// SentencePiece ("llama")

/* 1 if the GGUF string s[0..n) is the NUL-terminated word. */
static int kw_tok_gguf_is(const char *s, size_t n, const char *word) {
    return strlen(word) == n && memcmp(s, word, n) == 0;
}

/* Marks the pieces HF's Gemma 3 tokenizer calls special (see the top of this file). */
static int kw_tok_gguf_gemma3_special(const kw_gguf *g, const char *const *tokens, const size_t *lens, int32_t n,
                                      uint8_t *special) {
    static const char *const ids[] = {"bos", "eos", "unknown", "padding"};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; ++i) {
        char key[64];
        snprintf(key, sizeof key, "tokenizer.ggml.%s_token_id", ids[i]);
        int64_t id = -1;
        const int rc = kw_gguf_get_int(g, key, 0, INT32_MAX, &id);
        KW_RETURN_IF(rc < 0 && rc != KW_E_NOT_FOUND, KW_E_TOKENIZER, "%s", kw_error_detail());
        KW_RETURN_IF(rc == 0 && id >= n, KW_E_TOKENIZER, "%s = %lld is not a token id (%d tokens)", key, (long long)id,
                     (int)n);
        if (rc == 0) special[id] = 1;
    }
    static const char *const named[] = {"<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>"};
    for (int32_t id = 0; id < n; ++id)
        for (size_t i = 0; i < sizeof named / sizeof named[0]; ++i)
            if (kw_tok_gguf_is(tokens[id], lens[id], named[i])) special[id] = 1;
    return 0;
}

static int kw_tok_gguf_spm(const kw_gguf *g, kw_tokenizer **out) {
    const kw_gguf_kv *tokens = NULL, *scores = NULL, *types = NULL;
    KW_RETURN_IF(kw_gguf_get_array(g, "tokenizer.ggml.tokens", KW_GGUF_STRING, &tokens) < 0, KW_E_TOKENIZER,
                 "tokenizer.ggml.tokens: %s", kw_error_detail());
    KW_RETURN_IF(tokens->count < 1 || tokens->count > KW_TOK_GGUF_MAX_TOKENS, KW_E_TOKENIZER,
                 "tokenizer.ggml.tokens holds %llu tokens (1 .. %d)", (unsigned long long)tokens->count,
                 KW_TOK_GGUF_MAX_TOKENS);
    KW_RETURN_IF(kw_gguf_get_array(g, "tokenizer.ggml.scores", KW_GGUF_FLOAT32, &scores) < 0, KW_E_TOKENIZER,
                 "tokenizer.ggml.scores: %s", kw_error_detail());
    KW_RETURN_IF(kw_gguf_get_array(g, "tokenizer.ggml.token_type", KW_GGUF_INT32, &types) < 0, KW_E_TOKENIZER,
                 "tokenizer.ggml.token_type: %s", kw_error_detail());
    KW_RETURN_IF(scores->count != tokens->count || types->count != tokens->count, KW_E_TOKENIZER,
                 "tokenizer.ggml.scores (%llu) and .token_type (%llu) do not match the %llu tokens",
                 (unsigned long long)scores->count, (unsigned long long)types->count,
                 (unsigned long long)tokens->count);
    int add_space_prefix = 1;
    int rc = kw_gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &add_space_prefix);
    KW_RETURN_IF(rc < 0 && rc != KW_E_NOT_FOUND, KW_E_TOKENIZER, "%s", kw_error_detail());
    if (rc == KW_E_NOT_FOUND) add_space_prefix = 1;
    const char *arch = NULL;
    size_t arch_len = 0;
    const int gemma3 =
        kw_gguf_get_str(g, "general.architecture", &arch, &arch_len) == 0 && kw_tok_gguf_is(arch, arch_len, "gemma3");

    rc = 0;
    const int32_t n = (int32_t)tokens->count;
    const char **pieces = calloc((size_t)n, sizeof *pieces);
    size_t *lens = calloc((size_t)n, sizeof *lens);
    float *sc = calloc((size_t)n, sizeof *sc);
    int32_t *ty = calloc((size_t)n, sizeof *ty);
    uint8_t *special = gemma3 ? calloc((size_t)n, 1) : NULL;
    KW_CHECK_IF(!pieces || !lens || !sc || !ty || (gemma3 && !special), KW_E_NOMEM, "out of memory for %d tokens",
                (int)n);
    for (int32_t id = 0; id < n; ++id) {
        double score = 0.0;
        int64_t type = 0;
        KW_CHECK(kw_gguf_array_str(g, tokens, (uint64_t)id, &pieces[id], &lens[id]));
        KW_CHECK(kw_gguf_array_float(scores, (uint64_t)id, &score));
        KW_CHECK(kw_gguf_array_int(types, (uint64_t)id, &type));
        KW_CHECK_IF(type < INT32_MIN || type > INT32_MAX, KW_E_TOKENIZER, "tokenizer.ggml.token_type[%d] = %lld",
                    (int)id, (long long)type);
        sc[id] = (float)score;
        ty[id] = (int32_t)type;
    }
    if (gemma3) KW_CHECK(kw_tok_gguf_gemma3_special(g, pieces, lens, n, special));
    const kw_tokenizer_spm_vocab v = {.n_tokens = n,
                                      .tokens = pieces,
                                      .token_lens = lens,
                                      .scores = sc,
                                      .types = ty,
                                      .special = special,
                                      .add_space_prefix = add_space_prefix};
    rc = kw_tokenizer_from_spm(&v, out);
out:
    free(pieces);
    free(lens);
    free(sc);
    free(ty);
    free(special);
    return rc;
}

int kw_tokenizer_load_gguf(const char *path, kw_tokenizer **out) {
    KW_RETURN_IF(!path || !out, KW_E_INVALID_ARG, "kw_tokenizer_load_gguf: NULL argument");
    *out = NULL;
    kw_gguf *g = NULL;
    cJSON *tree = NULL;
    const char *model = NULL;
    size_t n = 0;
    int rc = kw_gguf_open(path, &g);
    if (rc == 0 && kw_gguf_get_str(g, "tokenizer.ggml.model", &model, &n) < 0)
        rc = kw_error_set(KW_E_TOKENIZER, "tokenizer.ggml.model is missing: the file carries no tokenizer");
    if (rc == 0 && kw_tok_gguf_is(model, n, "gpt2")) {
        rc = kw_tok_gguf_tree(g, &tree);
        if (rc == 0) rc = kw__tok_from_json(tree, out);
    } else if (rc == 0 && kw_tok_gguf_is(model, n, "llama")) {
        rc = kw_tok_gguf_spm(g, out);
    } else if (rc == 0) {
        rc = kw_error_set(KW_E_TOKENIZER, "tokenizer.ggml.model \"%.*s\" is not supported (gpt2, llama)",
                          (int)(n < 32 ? n : 32), model);
    }
    if (rc < 0) rc = kw_error_set(rc, "%s: %s", path, kw_error_detail());
    cJSON_Delete(tree);
    kw_gguf_close(g);
    return rc;
}
