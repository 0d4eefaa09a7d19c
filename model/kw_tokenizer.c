/* kw_tokenizer.c: byte-level BPE tokenizer loaded from an HF tokenizer.json, giving the ids HF `tokenizers` gives, and
 * the parts every tokenizer shares (vocabulary, added tokens, merge table, the encode walk, offsets). A
 * SentencePiece-style tokenizer.json is handed to kw_tokenizer_spm.c, which plugs into the same walk.
 *
 * Pipeline of encode (the order HF uses): added tokens are found in the raw text first (leftmost, then longest); each
 * stretch of text between them is normalized (NFC or nothing), cut into pre-tokens by the Split regex (PCRE2 with UTF
 * and UCP; every match and every gap between matches is a piece), and each piece is mapped byte by byte to the
 * ByteLevel alphabet and merged by rank, with HF's priority-queue order (lowest rank, then leftmost position).
 *
 * What it is not: a general tokenizer.json interpreter. Only the components that Qwen2/2.5/3 and Llama-3 declare are
 * implemented; anything else is refused at load with KW_E_TOKENIZER and a reason naming the field. No truncation or
 * padding, no post-processor (ids are returned without BOS/EOS, as with add_special_tokens=False). Offsets into the
 * original text (HF's return_offsets_mapping) come from kw_tokenizer_encode_offsets, at the end of this file.
 *
 * Invariant: a loaded tokenizer is never written again, so encode/decode may run on many threads at once; all scratch
 * memory is per call. */
#include "model/kw_tokenizer.h"
#include "model/kw_tokenizer_impl.h"

#include "model/kw_gguf.h"

#include "common/kw_buf.h"
#include "common/kw_file.h"
#include "common/kw_json.h"
#include "common/kw_size.h"
#include "common/kw_status.h"

#include <utf8proc.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---------------------------------------------------------------------------------------------------------------
// UTF-8 helpers

/* Length of the valid UTF-8 sequence at s[0..n), or 0 if the bytes there are not one (the Rust/Unicode rules:
 * no overlongs, no surrogates, nothing above U+10FFFF). When 0, *bad is the number of bytes that form the maximal
 * invalid prefix (at least 1), which is what String::from_utf8_lossy replaces by one U+FFFD. */
size_t kw__tok_utf8_seq(const uint8_t *s, size_t n, size_t *bad) {
    const uint8_t b = s[0];
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF;
    if (b < 0x80) return 1;
    if (b >= 0xC2 && b <= 0xDF) {
        need = 1;
    } else if (b >= 0xE0 && b <= 0xEF) {
        need = 2;
        if (b == 0xE0) lo = 0xA0;
        if (b == 0xED) hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
        need = 3;
        if (b == 0xF0) lo = 0x90;
        if (b == 0xF4) hi = 0x8F;
    } else {
        *bad = 1;
        return 0;
    }
    size_t i = 1;
    for (; i <= need; ++i) {
        if (i >= n) break;
        const uint8_t c = s[i];
        if (c < lo || c > hi) break;
        lo = 0x80;
        hi = 0xBF;
    }
    if (i == need + 1) return i;
    *bad = i;
    return 0;
}

/* Offset of the first invalid UTF-8 byte in s, or n if all of it is valid. */
size_t kw__tok_utf8_check(const uint8_t *s, size_t n) {
    size_t i = 0, bad = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            ++i;
            continue;
        }
        const size_t k = kw__tok_utf8_seq(s + i, n - i, &bad);
        if (k == 0) return i;
        i += k;
    }
    return n;
}

/* Decodes one code point from valid UTF-8; returns its length. */
size_t kw__tok_utf8_decode(const uint8_t *s, uint32_t *cp) {
    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    }
    if (s[0] < 0xE0) {
        *cp = ((uint32_t)(s[0] & 0x1F) << 6) | (s[1] & 0x3F);
        return 2;
    }
    if (s[0] < 0xF0) {
        *cp = ((uint32_t)(s[0] & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        return 3;
    }
    *cp = ((uint32_t)(s[0] & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) | ((uint32_t)(s[2] & 0x3F) << 6) |
          (s[3] & 0x3F);
    return 4;
}

// ---------------------------------------------------------------------------------------------------------------
// Growable buffers

int kw__tok_ids_push(kw_tok_ids *a, int32_t id) {
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64, bytes;
        KW_RETURN_IF(kw_size_mul(cap, sizeof(int32_t), &bytes) < 0, KW_E_OVERFLOW, "token array too large");
        int32_t *v = realloc(a->v, bytes);
        KW_RETURN_IF(!v, KW_E_NOMEM, "out of memory growing the token array to %zu ids", cap);
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = id;
    return 0;
}

/* Appends n bytes to the string pool; *off receives where they start. */
int kw__tok_pool_add(kw_tokenizer *tok, const void *s, size_t n, uint32_t *off) {
    size_t need;
    KW_RETURN_IF(kw_size_add(tok->pool.len, n, &need) < 0 || need > UINT32_MAX, KW_E_LIMIT,
                 "tokenizer strings exceed 4 GiB");
    if (tok->pool.cap == 0) KW_FORWARD(kw_buf_reserve(&tok->pool, (size_t)1 << 20)); /* real vocabularies: MBs */
    *off = (uint32_t)tok->pool.len;
    return kw_buf_append(&tok->pool, s, n);
}

// ---------------------------------------------------------------------------------------------------------------
// Hash tables (open addressing, linear probing; sizes are powers of two at most half full)

static uint64_t kw_tok_hash_bytes(const void *p, size_t n) {
    const uint8_t *s = p;
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a, then a final mix */
    for (size_t i = 0; i < n; ++i)
        h = (h ^ s[i]) * 0x100000001b3ull;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    return h ^ (h >> 32);
}

static uint64_t kw_tok_hash_u64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

int kw__tok_table_size(size_t n, size_t *out) {
    size_t size = 16;
    while (size < 2 * n) {
        KW_RETURN_IF(size > (SIZE_MAX >> 2), KW_E_OVERFLOW, "hash table too large");
        size *= 2;
    }
    *out = size;
    return 0;
}

/* The model.vocab id of the string s[0..n), or -1. */
int32_t kw__tok_vocab_find(const kw_tokenizer *tok, const char *s, size_t n) {
    size_t i = (size_t)kw_tok_hash_bytes(s, n) & tok->vocab_mask;
    for (;; i = (i + 1) & tok->vocab_mask) {
        const int32_t slot = tok->vocab_slots[i];
        if (slot == 0) return -1;
        const kw_tok_entry *e = &tok->entries[slot - 1];
        if (e->len == n && memcmp(tok->pool.data + e->off, s, n) == 0) return slot - 1;
    }
}

/* Inserts id (whose surface form is already in the pool); a repeated string keeps the later id, as a JSON object
 * read into a map does. */
void kw__tok_vocab_insert(kw_tokenizer *tok, int32_t id) {
    const kw_tok_entry *e = &tok->entries[id];
    const char *s = tok->pool.data + e->off;
    size_t i = (size_t)kw_tok_hash_bytes(s, e->len) & tok->vocab_mask;
    for (;; i = (i + 1) & tok->vocab_mask) {
        const int32_t slot = tok->vocab_slots[i];
        if (slot == 0) break;
        const kw_tok_entry *o = &tok->entries[slot - 1];
        if (o->len == e->len && memcmp(tok->pool.data + o->off, s, e->len) == 0) break;
    }
    tok->vocab_slots[i] = id + 1;
}

const kw_tok_merge *kw__tok_merge_find(const kw_tokenizer *tok, int32_t left, int32_t right) {
    const uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
    size_t i = (size_t)kw_tok_hash_u64(key) & tok->merge_mask;
    for (;; i = (i + 1) & tok->merge_mask) {
        const kw_tok_merge *m = &tok->merges[i];
        if (m->key == key) return m;
        if (m->key == UINT64_MAX) return NULL;
    }
}

/* A repeated pair keeps the later rank, as HF's merge map does. */
void kw__tok_merge_insert(kw_tokenizer *tok, int32_t left, int32_t right, int32_t rank, int32_t new_id) {
    const uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
    size_t i = (size_t)kw_tok_hash_u64(key) & tok->merge_mask;
    while (tok->merges[i].key != UINT64_MAX && tok->merges[i].key != key)
        i = (i + 1) & tok->merge_mask;
    tok->merges[i] = (kw_tok_merge){key, rank, new_id};
}

// ---------------------------------------------------------------------------------------------------------------
// Unicode version differences with HF
//
// HF `tokenizers` (0.21) runs the Split regex on Oniguruma with Unicode 16 tables and normalizes NFC with tables of
// about Unicode 10; Debian 12's PCRE2 10.42 has Unicode 14 and utf8proc 2.8 has Unicode 15. The tables below close
// those gaps. They were measured against HF on every code point by tools/make_tokenizer_fixtures.py
// (--unicode-tables prints them, --exhaustive re-checks the whole code space against a kvwire binary), and the
// committed fixtures hold every code point they name.

/* Letters and numbers that HF's Oniguruma knows (assigned in Unicode 15.0-16.0) and PCRE2 10.42 does not: the
 * Split regex's \p{L} and \p{N} are widened with them (a no-op with a newer PCRE2). */
static const uint32_t kw_tok_extra_letters[][2] = {
    {0x1C89, 0x1C8A},   {0xA7CB, 0xA7CD},   {0xA7DA, 0xA7DC},   {0x105C0, 0x105F3}, {0x10D4A, 0x10D65},
    {0x10D6F, 0x10D85}, {0x10EC2, 0x10EC4}, {0x1123F, 0x11240}, {0x11380, 0x11389}, {0x1138B, 0x1138B},
    {0x1138E, 0x1138E}, {0x11390, 0x113B5}, {0x113B7, 0x113B7}, {0x113D1, 0x113D1}, {0x113D3, 0x113D3},
    {0x11BC0, 0x11BE0}, {0x11F02, 0x11F02}, {0x11F04, 0x11F10}, {0x11F12, 0x11F33}, {0x1342F, 0x1342F},
    {0x13441, 0x13446}, {0x13460, 0x143FA}, {0x16100, 0x1611D}, {0x16D40, 0x16D6C}, {0x18CFF, 0x18CFF},
    {0x1B132, 0x1B132}, {0x1B155, 0x1B155}, {0x1DF25, 0x1DF2A}, {0x1E030, 0x1E06D}, {0x1E4D0, 0x1E4EB},
    {0x1E5D0, 0x1E5ED}, {0x1E5F0, 0x1E5F0}, {0x2B739, 0x2B739}, {0x2EBF0, 0x2EE5D}, {0x31350, 0x323AF},
};
static const uint32_t kw_tok_extra_numbers[][2] = {
    {0x10D40, 0x10D49}, {0x116D0, 0x116E3}, {0x11BF0, 0x11BF9}, {0x11F50, 0x11F59}, {0x16130, 0x16139},
    {0x16D70, 0x16D79}, {0x1CCF0, 0x1CCF9}, {0x1D2C0, 0x1D2D3}, {0x1E4F0, 0x1E4F9}, {0x1E5F1, 0x1E5FA},
};

/* Oniguruma's \s: the White_Space property exactly. PCRE2's UCP \s adds U+180E, which HF does not treat as space, so
 * \s and \S are replaced by this explicit class. */
static const char kw_tok_space_class[] =
    "\\t\\n\\x0B\\f\\r\\x20\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}";

/* Code points whose NFC behaviour utf8proc knows (combining class, composition) and HF's normalizer does not: to HF
 * they are plain starters that never compose, so the text is normalized in pieces between them and they are kept. */
static const uint32_t kw_tok_nfc_unknown[][2] = {
    {0x7FD, 0x7FD},     {0x898, 0x89F},     {0x8CA, 0x8D3},     {0x9FE, 0x9FE},     {0xC3C, 0xC3C},
    {0xD3B, 0xD3C},     {0xEBA, 0xEBA},     {0x1715, 0x1715},   {0x1ABF, 0x1ACE},   {0x1DF6, 0x1DFA},
    {0xA82C, 0xA82C},   {0x10D24, 0x10D27}, {0x10EAB, 0x10EAC}, {0x10EFD, 0x10EFF}, {0x10F46, 0x10F50},
    {0x10F82, 0x10F85}, {0x11070, 0x11070}, {0x1133B, 0x1133B}, {0x1145E, 0x1145E}, {0x11839, 0x1183A},
    {0x11938, 0x11938}, {0x1193D, 0x1193E}, {0x11943, 0x11943}, {0x119E0, 0x119E0}, {0x11A34, 0x11A34},
    {0x11A47, 0x11A47}, {0x11A99, 0x11A99}, {0x11D42, 0x11D42}, {0x11D44, 0x11D45}, {0x11D97, 0x11D97},
    {0x11F41, 0x11F42}, {0x16FF0, 0x16FF1}, {0x1E08F, 0x1E08F}, {0x1E130, 0x1E136}, {0x1E2AE, 0x1E2AE},
    {0x1E2EC, 0x1E2EF}, {0x1E4EC, 0x1E4EF},
};

static bool kw_tok_nfc_is_unknown(uint32_t cp) {
    size_t lo = 0, hi = sizeof kw_tok_nfc_unknown / sizeof kw_tok_nfc_unknown[0];
    if (cp < kw_tok_nfc_unknown[0][0]) return false;
    while (lo < hi) {
        const size_t mid = (lo + hi) / 2;
        if (cp < kw_tok_nfc_unknown[mid][0])
            hi = mid;
        else if (cp > kw_tok_nfc_unknown[mid][1])
            lo = mid + 1;
        else
            return true;
    }
    return false;
}

static int kw_tok_put_ranges(kw_buf *b, const uint32_t (*r)[2], size_t n) {
    char tmp[40];
    for (size_t i = 0; i < n; ++i) {
        const int k = snprintf(tmp, sizeof tmp, "\\x{%X}-\\x{%X}", (unsigned)r[i][0], (unsigned)r[i][1]);
        KW_FORWARD(kw_buf_append(b, tmp, (size_t)k));
    }
    return 0;
}

/* Rewrites an HF Split pattern for PCRE2: \p{L} and \p{N} gain the extra ranges, \s and \S become the explicit
 * White_Space class. Character classes are tracked so that the additions go inside an enclosing [...] or get
 * brackets of their own. */
static int kw_tok_rewrite_regex(const char *re, kw_buf *out) {
    bool in_class = false;
    for (size_t i = 0; re[i];) {
        const char c = re[i];
        if (c == '\\') {
            KW_RETURN_IF(!re[i + 1], KW_E_TOKENIZER, "Split regex ends with a backslash");
            const bool is_l = strncmp(re + i, "\\p{L}", 5) == 0, is_n = strncmp(re + i, "\\p{N}", 5) == 0;
            if (is_l || is_n) {
                if (!in_class) KW_FORWARD(kw_buf_append(out, "[", 1));
                KW_FORWARD(kw_buf_append(out, re + i, 5));
                if (is_l)
                    KW_FORWARD(kw_tok_put_ranges(out, kw_tok_extra_letters,
                                                 sizeof kw_tok_extra_letters / sizeof kw_tok_extra_letters[0]));
                else
                    KW_FORWARD(kw_tok_put_ranges(out, kw_tok_extra_numbers,
                                                 sizeof kw_tok_extra_numbers / sizeof kw_tok_extra_numbers[0]));
                if (!in_class) KW_FORWARD(kw_buf_append(out, "]", 1));
                i += 5;
            } else if (re[i + 1] == 's' || re[i + 1] == 'S') {
                const bool neg = re[i + 1] == 'S';
                KW_RETURN_IF(in_class && neg, KW_E_TOKENIZER,
                             "Split regex: \\S inside a character class is not supported");
                if (!in_class) KW_FORWARD(kw_buf_append(out, neg ? "[^" : "[", neg ? 2 : 1));
                KW_FORWARD(kw_buf_append(out, kw_tok_space_class, strlen(kw_tok_space_class)));
                if (!in_class) KW_FORWARD(kw_buf_append(out, "]", 1));
                i += 2;
            } else {
                KW_RETURN_IF(re[i + 1] == 'Q', KW_E_TOKENIZER, "Split regex: \\Q...\\E quoting is not supported");
                KW_FORWARD(kw_buf_append(out, re + i, 2));
                i += 2;
            }
            continue;
        }
        if (!in_class && c == '[') {
            in_class = true;
            size_t k = 1;
            if (re[i + k] == '^') ++k;
            if (re[i + k] == ']') ++k; /* a leading ] is a literal */
            KW_FORWARD(kw_buf_append(out, re + i, k));
            i += k;
            continue;
        }
        if (in_class && c == '[' && re[i + 1] == ':') {
            const char *end = strstr(re + i, ":]");
            KW_RETURN_IF(!end, KW_E_TOKENIZER, "Split regex: unterminated POSIX class");
            KW_FORWARD(kw_buf_append(out, re + i, (size_t)(end + 2 - (re + i))));
            i = (size_t)(end + 2 - re);
            continue;
        }
        if (in_class && c == ']') in_class = false;
        KW_FORWARD(kw_buf_append(out, re + i, 1));
        ++i;
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Loading

/* The GPT-2 ByteLevel alphabet: printable Latin-1 bytes stand for themselves, the other 68 bytes take the code points
 * 256, 257, ... in byte order. */
static void kw_tok_init_byte_level(kw_tokenizer *tok) {
    uint32_t next = 256;
    for (size_t i = 0; i < sizeof tok->char_byte / sizeof tok->char_byte[0]; ++i)
        tok->char_byte[i] = -1;
    for (int b = 0; b < 256; ++b) {
        const bool self = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        const uint32_t cp = self ? (uint32_t)b : next++;
        tok->char_byte[cp] = (int16_t)b;
        if (cp < 0x80) {
            tok->byte_char[b][0] = (char)cp;
            tok->byte_char_len[b] = 1;
        } else {
            tok->byte_char[b][0] = (char)(0xC0 | (cp >> 6));
            tok->byte_char[b][1] = (char)(0x80 | (cp & 0x3F));
            tok->byte_char_len[b] = 2;
        }
    }
}

/* Requires a JSON field to be absent/null or to equal one of the given strings (NULL-terminated list). */
int kw__tok_expect_str(const cJSON *obj, const char *key, const char *const *allowed, const char *where) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) return 0;
    if (cJSON_IsString(v))
        for (const char *const *a = allowed; *a; ++a)
            if (strcmp(v->valuestring, *a) == 0) return 0;
    KW_FAIL(KW_E_TOKENIZER, "tokenizer.json: %s.%s has a value this tokenizer does not implement", where, key);
}

/* Requires a boolean field to be absent/null or equal to want. */
int kw__tok_expect_bool(const cJSON *obj, const char *key, int want, const char *where) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) return 0;
    KW_RETURN_IF(!cJSON_IsBool(v), KW_E_TOKENIZER, "tokenizer.json: %s.%s must be a boolean", where, key);
    KW_RETURN_IF(cJSON_IsTrue(v) != want, KW_E_TOKENIZER, "tokenizer.json: %s.%s = %s is not supported", where, key,
                 want ? "false" : "true");
    return 0;
}

const char *kw__tok_type(const cJSON *obj) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(obj, "type");
    return cJSON_IsString(t) ? t->valuestring : NULL;
}

static int kw_tok_load_normalizer(kw_tokenizer *tok, const cJSON *norm) {
    if (!norm || cJSON_IsNull(norm)) return 0;
    const char *type = kw__tok_type(norm);
    KW_RETURN_IF(!type, KW_E_TOKENIZER, "tokenizer.json: normalizer has no type");
    if (strcmp(type, "NFC") == 0) {
        tok->nfc = true;
        return 0;
    }
    KW_FAIL(KW_E_TOKENIZER, "tokenizer.json: normalizer type \"%s\" is not supported (only NFC or none)", type);
}

static int kw_tok_load_split(kw_tokenizer *tok, const cJSON *split) {
    static const char *const isolated[] = {"Isolated", NULL};
    KW_FORWARD(kw__tok_expect_str(split, "behavior", isolated, "pre_tokenizer Split"));
    const cJSON *behavior = cJSON_GetObjectItemCaseSensitive(split, "behavior");
    KW_RETURN_IF(!cJSON_IsString(behavior), KW_E_TOKENIZER, "tokenizer.json: Split.behavior is missing");
    KW_FORWARD(kw__tok_expect_bool(split, "invert", 0, "pre_tokenizer Split"));
    const cJSON *pattern_obj = cJSON_GetObjectItemCaseSensitive(split, "pattern");
    const cJSON *re = cJSON_GetObjectItemCaseSensitive(pattern_obj, "Regex");
    KW_RETURN_IF(!cJSON_IsString(re), KW_E_TOKENIZER,
                 "tokenizer.json: Split.pattern must be {\"Regex\": ...} (String patterns are not supported)");
    kw_buf pattern = KW_BUF_INIT;
    int rc = kw_tok_rewrite_regex(re->valuestring, &pattern);
    if (rc < 0) {
        kw_buf_free(&pattern);
        return kw_error_set(rc, "tokenizer.json: %s", kw_error_detail());
    }
    int err = 0;
    PCRE2_SIZE at = 0;
    tok->split_re = pcre2_compile((PCRE2_SPTR)pattern.data, pattern.len, PCRE2_UTF | PCRE2_UCP, &err, &at, NULL);
    kw_buf_free(&pattern);
    if (!tok->split_re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(err, msg, sizeof msg);
        KW_FAIL(KW_E_TOKENIZER,
                "tokenizer.json: Split regex does not compile (offset %zu of the rewritten pattern): %s", (size_t)at,
                (const char *)msg);
    }
    tok->split_jit = pcre2_jit_compile(tok->split_re, PCRE2_JIT_COMPLETE) == 0;
    return 0;
}

static int kw_tok_load_byte_level_pre(const cJSON *bl) {
    KW_FORWARD(kw__tok_expect_bool(bl, "add_prefix_space", 0, "pre_tokenizer ByteLevel"));
    KW_FORWARD(kw__tok_expect_bool(bl, "use_regex", 0, "pre_tokenizer ByteLevel"));
    return 0;
}

/* Accepts Sequence[Split(regex, Isolated), ByteLevel(add_prefix_space=false, use_regex=false)]. */
static int kw_tok_load_pre_tokenizer(kw_tokenizer *tok, const cJSON *pre) {
    const char *type = kw__tok_type(pre);
    KW_RETURN_IF(!type, KW_E_TOKENIZER, "tokenizer.json: pre_tokenizer is missing or has no type");
    KW_RETURN_IF(strcmp(type, "Sequence") != 0, KW_E_TOKENIZER,
                 "tokenizer.json: pre_tokenizer type \"%s\" is not supported (expected Sequence[Split, ByteLevel])",
                 type);
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(pre, "pretokenizers");
    KW_RETURN_IF(!cJSON_IsArray(list) || cJSON_GetArraySize(list) != 2, KW_E_TOKENIZER,
                 "tokenizer.json: pre_tokenizer Sequence must hold exactly [Split, ByteLevel]");
    const cJSON *split = cJSON_GetArrayItem(list, 0), *bl = cJSON_GetArrayItem(list, 1);
    const char *t0 = kw__tok_type(split), *t1 = kw__tok_type(bl);
    KW_RETURN_IF(!t0 || !t1 || strcmp(t0, "Split") != 0 || strcmp(t1, "ByteLevel") != 0, KW_E_TOKENIZER,
                 "tokenizer.json: pre_tokenizer Sequence [%s, %s] is not supported (expected [Split, ByteLevel])",
                 t0 ? t0 : "?", t1 ? t1 : "?");
    KW_FORWARD(kw_tok_load_split(tok, split));
    return kw_tok_load_byte_level_pre(bl);
}

static int kw_tok_load_decoder(const cJSON *dec) {
    const char *type = kw__tok_type(dec);
    KW_RETURN_IF(!type || strcmp(type, "ByteLevel") != 0, KW_E_TOKENIZER,
                 "tokenizer.json: decoder \"%s\" is not supported (only ByteLevel)", type ? type : "(none)");
    return 0;
}

/* Checks the BPE options; the byte-level vocabularies need none of unk/dropout/prefixes. */
static int kw_tok_load_model_options(kw_tokenizer *tok, const cJSON *model) {
    static const char *const bpe[] = {"BPE", NULL};
    static const char *const empty[] = {"", NULL};
    const char *type = kw__tok_type(model);
    KW_RETURN_IF(!type, KW_E_TOKENIZER, "tokenizer.json: model has no type");
    KW_FORWARD(kw__tok_expect_str(model, "type", bpe, "model"));
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    KW_RETURN_IF(dropout && !cJSON_IsNull(dropout) && !(cJSON_IsNumber(dropout) && dropout->valuedouble == 0.0),
                 KW_E_TOKENIZER, "tokenizer.json: model.dropout is not supported");
    const cJSON *unk = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    KW_RETURN_IF(unk && !cJSON_IsNull(unk), KW_E_TOKENIZER,
                 "tokenizer.json: model.unk_token is set; only byte-level BPE without unk is supported");
    KW_FORWARD(kw__tok_expect_str(model, "continuing_subword_prefix", empty, "model"));
    KW_FORWARD(kw__tok_expect_str(model, "end_of_word_suffix", empty, "model"));
    KW_FORWARD(kw__tok_expect_bool(model, "byte_fallback", 0, "model"));
    int ignore = 0;
    KW_FORWARD(kw_json_opt_bool(model, "ignore_merges", 0, &ignore, "tokenizer.json model"));
    tok->ignore_merges = ignore != 0;
    return 0;
}

int kw__tok_load_vocab(kw_tokenizer *tok, const cJSON *vocab, const cJSON *added) {
    KW_RETURN_IF(!cJSON_IsObject(vocab), KW_E_TOKENIZER, "tokenizer.json: model.vocab must be an object");
    KW_RETURN_IF(added && !cJSON_IsNull(added) && !cJSON_IsArray(added), KW_E_TOKENIZER,
                 "tokenizer.json: added_tokens must be an array");
    /* First pass: the id range, so the entry table is allocated once. */
    int64_t max_id = -1;
    size_t n_vocab = 0;
    for (const cJSON *it = vocab->child; it; it = it->next) {
        int64_t id;
        KW_RETURN_IF(kw_json_to_i64(it, 0, KW_TOK_MAX_ID - 1, &id) < 0, KW_E_TOKENIZER,
                     "tokenizer.json: vocab id of \"%.40s\" is not an integer in [0, %d)", it->string ? it->string : "",
                     KW_TOK_MAX_ID);
        KW_RETURN_IF(!it->string, KW_E_TOKENIZER, "tokenizer.json: vocab entry without a key");
        if (id > max_id) max_id = id;
        ++n_vocab;
    }
    const int n_added = cJSON_IsArray(added) ? cJSON_GetArraySize(added) : 0;
    KW_RETURN_IF(n_added > KW_TOK_MAX_ADDED, KW_E_LIMIT, "tokenizer.json: %d added tokens, over the limit of %d",
                 n_added, KW_TOK_MAX_ADDED);
    for (const cJSON *it = cJSON_IsArray(added) ? added->child : NULL; it; it = it->next) {
        int64_t id;
        KW_RETURN_IF(kw_json_get_i64(it, "id", 0, KW_TOK_MAX_ID - 1, &id, "tokenizer.json added_tokens") < 0,
                     KW_E_TOKENIZER, "tokenizer.json: added token without a valid id: %s", kw_error_detail());
        if (id > max_id) max_id = id;
    }
    KW_RETURN_IF(max_id < 255, KW_E_TOKENIZER, "tokenizer.json: vocabulary too small for a byte-level BPE");
    tok->n_ids = (int32_t)(max_id + 1);
    tok->entries = calloc((size_t)tok->n_ids, sizeof(kw_tok_entry));
    KW_RETURN_IF(!tok->entries, KW_E_NOMEM, "out of memory for %d token entries", tok->n_ids);
    size_t slots = 0;
    KW_FORWARD(kw__tok_table_size(n_vocab, &slots));
    tok->vocab_slots = calloc(slots, sizeof(int32_t));
    KW_RETURN_IF(!tok->vocab_slots, KW_E_NOMEM, "out of memory for the vocabulary table");
    tok->vocab_mask = slots - 1;

    for (const cJSON *it = vocab->child; it; it = it->next) {
        const int32_t id = (int32_t)it->valuedouble;
        kw_tok_entry *e = &tok->entries[id];
        KW_RETURN_IF(e->flags != 0, KW_E_TOKENIZER, "tokenizer.json: vocab id %d is used twice", id);
        const size_t n = strlen(it->string);
        KW_FORWARD(kw__tok_pool_add(tok, it->string, n, &e->off));
        e->len = (uint32_t)n;
        e->flags = KW_TOK_IN_VOCAB;
        kw__tok_vocab_insert(tok, id);
    }

    tok->added = calloc(n_added ? (size_t)n_added : 1, sizeof(int32_t));
    KW_RETURN_IF(!tok->added, KW_E_NOMEM, "out of memory for added tokens");
    for (const cJSON *it = cJSON_IsArray(added) ? added->child : NULL; it; it = it->next) {
        int64_t id = 0;
        const char *content = NULL;
        int special = 0;
        KW_FORWARD(kw_json_get_i64(it, "id", 0, KW_TOK_MAX_ID - 1, &id, "tokenizer.json added_tokens"));
        KW_FORWARD(kw_json_get_str(it, "content", &content, "tokenizer.json added_tokens"));
        KW_FORWARD(kw_json_opt_bool(it, "special", 0, &special, "tokenizer.json added_tokens"));
        KW_RETURN_IF(content[0] == '\0', KW_E_TOKENIZER, "tokenizer.json: added token %lld is empty", (long long)id);
        /* HF's flags change where the token may match; these files set them all false, and nothing else is done. */
        static const char *const flags[] = {"single_word", "lstrip", "rstrip", "normalized"};
        for (size_t f = 0; f < sizeof flags / sizeof flags[0]; ++f) {
            int v = 0;
            KW_FORWARD(kw_json_opt_bool(it, flags[f], 0, &v, "tokenizer.json added_tokens"));
            KW_RETURN_IF(v, KW_E_TOKENIZER,
                         "tokenizer.json: added token \"%.40s\" sets %s=true, which is not supported", content,
                         flags[f]);
        }
        kw_tok_entry *e = &tok->entries[id];
        const size_t n = strlen(content);
        if (e->flags & KW_TOK_IN_VOCAB) {
            KW_RETURN_IF(e->len != n || memcmp(tok->pool.data + e->off, content, n) != 0, KW_E_TOKENIZER,
                         "tokenizer.json: added token \"%.40s\" reuses vocab id %lld of another token", content,
                         (long long)id);
        } else {
            KW_RETURN_IF(e->flags & KW_TOK_ADDED, KW_E_TOKENIZER, "tokenizer.json: added token id %lld is used twice",
                         (long long)id);
            KW_FORWARD(kw__tok_pool_add(tok, content, n, &e->off));
            e->len = (uint32_t)n;
        }
        e->flags |= KW_TOK_ADDED | (special ? KW_TOK_SPECIAL : 0);
        tok->added[tok->n_added++] = (int32_t)id;
        tok->added_first[(uint8_t)content[0]] = 1;
    }
    return kw__tok_index_added(tok);
}

/* Reads one merge, either "a b" or ["a", "b"], into the two vocab ids. */
static int kw_tok_merge_parts(const kw_tokenizer *tok, const cJSON *m, size_t rank, int32_t *a, int32_t *b) {
    const char *s1, *s2;
    size_t n1, n2;
    if (cJSON_IsString(m)) {
        const char *sp = strchr(m->valuestring, ' ');
        KW_RETURN_IF(!sp, KW_E_TOKENIZER, "tokenizer.json: merge %zu \"%.40s\" has no space", rank, m->valuestring);
        s1 = m->valuestring;
        n1 = (size_t)(sp - s1);
        s2 = sp + 1;
        n2 = strlen(s2);
    } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 && cJSON_IsString(m->child) &&
               cJSON_IsString(m->child->next)) {
        s1 = m->child->valuestring;
        n1 = strlen(s1);
        s2 = m->child->next->valuestring;
        n2 = strlen(s2);
    } else {
        KW_FAIL(KW_E_TOKENIZER, "tokenizer.json: merge %zu is neither \"a b\" nor [\"a\", \"b\"]", rank);
    }
    *a = kw__tok_vocab_find(tok, s1, n1);
    *b = kw__tok_vocab_find(tok, s2, n2);
    KW_RETURN_IF(*a < 0 || *b < 0, KW_E_TOKENIZER, "tokenizer.json: merge %zu names a token missing from the vocab",
                 rank);
    return 0;
}

int kw__tok_load_merges(kw_tokenizer *tok, const cJSON *merges) {
    KW_RETURN_IF(!cJSON_IsArray(merges), KW_E_TOKENIZER, "tokenizer.json: model.merges must be an array");
    size_t n = 0;
    for (const cJSON *it = merges->child; it; it = it->next)
        ++n;
    KW_RETURN_IF(n >= (size_t)INT32_MAX, KW_E_LIMIT, "tokenizer.json: too many merges");
    size_t slots = 0;
    KW_FORWARD(kw__tok_table_size(n, &slots));
    tok->merges = malloc(slots * sizeof(kw_tok_merge));
    KW_RETURN_IF(!tok->merges, KW_E_NOMEM, "out of memory for %zu merges", n);
    for (size_t i = 0; i < slots; ++i)
        tok->merges[i].key = UINT64_MAX;
    tok->merge_mask = slots - 1;

    char *buf = NULL;
    size_t cap = 0;
    int rc = 0;
    size_t rank = 0;
    for (const cJSON *it = merges->child; it; it = it->next, ++rank) {
        int32_t a = -1, b = -1;
        KW_CHECK(kw_tok_merge_parts(tok, it, rank, &a, &b));
        const kw_tok_entry *ea = &tok->entries[a], *eb = &tok->entries[b];
        const size_t len = (size_t)ea->len + eb->len;
        if (len > cap) {
            cap = len * 2;
            char *p = realloc(buf, cap);
            KW_CHECK_IF(!p, KW_E_NOMEM, "out of memory reading merges");
            buf = p;
        }
        memcpy(buf, tok->pool.data + ea->off, ea->len);
        memcpy(buf + ea->len, tok->pool.data + eb->off, eb->len);
        const int32_t merged = kw__tok_vocab_find(tok, buf, len);
        KW_CHECK_IF(merged < 0, KW_E_TOKENIZER, "tokenizer.json: merge %zu gives \"%.*s\", which is not in the vocab",
                    rank, (int)(len < 60 ? len : 60), buf);
        kw__tok_merge_insert(tok, a, b, (int32_t)rank, merged);
    }
out:
    free(buf);
    return rc;
}

/* The bytes each token decodes to, as HF's ByteLevel decoder gives them: a token whose characters are all in the
 * ByteLevel alphabet maps character by character; any other token (e.g. an added token with other characters)
 * contributes its own UTF-8 bytes. */
static int kw_tok_build_decoded(kw_tokenizer *tok) {
    uint8_t *tmp = NULL;
    size_t cap = 0;
    int rc = 0;
    for (int32_t id = 0; id < tok->n_ids; ++id) {
        kw_tok_entry *e = &tok->entries[id];
        if (!e->flags) continue;
        if (e->len > cap) {
            cap = (size_t)e->len * 2;
            uint8_t *p = realloc(tmp, cap);
            KW_CHECK_IF(!p, KW_E_NOMEM, "out of memory decoding the vocabulary");
            tmp = p;
        }
        const uint8_t *s = (const uint8_t *)tok->pool.data + e->off;
        size_t n = 0, i = 0;
        bool mapped = kw__tok_utf8_check(s, e->len) == e->len;
        while (mapped && i < e->len) {
            uint32_t cp;
            i += kw__tok_utf8_decode(s + i, &cp);
            if (cp >= sizeof tok->char_byte / sizeof tok->char_byte[0] || tok->char_byte[cp] < 0) {
                mapped = false;
                break;
            }
            tmp[n++] = (uint8_t)tok->char_byte[cp];
        }
        if (mapped) {
            KW_CHECK(kw__tok_pool_add(tok, tmp, n, &e->dec_off));
            e->dec_len = (uint32_t)n;
        } else {
            e->dec_off = e->off; /* the surface form itself */
            e->dec_len = e->len;
        }
    }
out:
    free(tmp);
    return rc;
}

static int kw_tok_load_json(kw_tokenizer *tok, const cJSON *root) {
    KW_RETURN_IF(!cJSON_IsObject(root), KW_E_TOKENIZER, "tokenizer.json: top level is not an object");
    if (kw__tok_spm_is_json(root)) return kw__tok_spm_load_json(tok, root);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    KW_RETURN_IF(!cJSON_IsObject(model), KW_E_TOKENIZER, "tokenizer.json: no model object");
    KW_FORWARD(kw_tok_load_model_options(tok, model));
    KW_FORWARD(kw_tok_load_normalizer(tok, cJSON_GetObjectItemCaseSensitive(root, "normalizer")));
    KW_FORWARD(kw_tok_load_pre_tokenizer(tok, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer")));
    KW_FORWARD(kw_tok_load_decoder(cJSON_GetObjectItemCaseSensitive(root, "decoder")));
    KW_FORWARD(kw__tok_load_vocab(tok, cJSON_GetObjectItemCaseSensitive(model, "vocab"),
                                  cJSON_GetObjectItemCaseSensitive(root, "added_tokens")));
    KW_FORWARD(kw__tok_load_merges(tok, cJSON_GetObjectItemCaseSensitive(model, "merges")));
    kw_tok_init_byte_level(tok);
    for (int b = 0; b < 256; ++b)
        tok->byte_id[b] = kw__tok_vocab_find(tok, tok->byte_char[b], tok->byte_char_len[b]);
    return kw_tok_build_decoded(tok);
}

int kw__tok_from_json(const cJSON *root, kw_tokenizer **out) {
    KW_RETURN_IF(!root || !out, KW_E_INVALID_ARG, "kw__tok_from_json: NULL argument");
    *out = NULL;
    kw_tokenizer *tok = calloc(1, sizeof *tok);
    KW_RETURN_IF(!tok, KW_E_NOMEM, "out of memory");
    const int rc = kw_tok_load_json(tok, root);
    if (rc < 0) {
        kw_tokenizer_free(tok);
        return rc;
    }
    *out = tok;
    return 0;
}

int kw_tokenizer_load(const char *path, kw_tokenizer **out) {
    KW_RETURN_IF(!path || !out, KW_E_INVALID_ARG, "kw_tokenizer_load: NULL argument");
    *out = NULL;
    if (kw_path_is_file(path) && kw_gguf_is_gguf(path)) return kw_tokenizer_load_gguf(path, out);
    int rc = 0;
    char *file = NULL;
    cJSON *root = NULL;
    kw_tokenizer *tok = NULL;
    if (kw_path_is_dir(path)) {
        file = kw_path_join(path, "tokenizer.json");
        KW_CHECK_IF(!file, KW_E_NOMEM, "out of memory");
    }
    const char *json_path = file ? file : path;
    KW_CHECK(kw_json_load_file(json_path, KW_TOK_MAX_FILE, &root));
    tok = calloc(1, sizeof *tok);
    KW_CHECK_IF(!tok, KW_E_NOMEM, "out of memory");
    rc = kw_tok_load_json(tok, root);
    if (rc < 0) {
        rc = kw_error_set(rc, "%s: %s", json_path, kw_error_detail());
        goto out;
    }
    *out = tok;
    tok = NULL;
out:
    kw_tokenizer_free(tok);
    cJSON_Delete(root);
    free(file);
    return rc;
}

void kw_tokenizer_free(kw_tokenizer *tok) {
    if (!tok) return;
    free(tok->entries);
    kw_buf_free(&tok->pool);
    free(tok->vocab_slots);
    free(tok->merges);
    free(tok->added);
    free(tok->added_slots);
    free(tok->added_lens);
    pcre2_code_free(tok->split_re);
    kw__tok_spm_free(tok->spm);
    free(tok);
}

// ---------------------------------------------------------------------------------------------------------------
// BPE on one pre-token

void kw__tok_scratch_free(kw_tok_scratch *s) {
    free(s->sym);
    free(s->heap);
    free(s->str);
}

/* a comes out of the queue before b: lower rank first, then lower position (HF's Merge ordering). */
static bool kw_tok_q_before(const kw_tok_qitem *a, const kw_tok_qitem *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static int kw_tok_q_push(kw_tok_scratch *s, kw_tok_qitem item) {
    if (s->heap_n == s->heap_cap) {
        const size_t cap = s->heap_cap ? s->heap_cap * 2 : 64;
        kw_tok_qitem *h = realloc(s->heap, cap * sizeof *h);
        KW_RETURN_IF(!h, KW_E_NOMEM, "out of memory in BPE");
        s->heap = h;
        s->heap_cap = cap;
    }
    size_t i = s->heap_n++;
    while (i > 0) {
        const size_t parent = (i - 1) / 2;
        if (!kw_tok_q_before(&item, &s->heap[parent])) break;
        s->heap[i] = s->heap[parent];
        i = parent;
    }
    s->heap[i] = item;
    return 0;
}

static kw_tok_qitem kw_tok_q_pop(kw_tok_scratch *s) {
    const kw_tok_qitem top = s->heap[0];
    const kw_tok_qitem last = s->heap[--s->heap_n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= s->heap_n) break;
        if (c + 1 < s->heap_n && kw_tok_q_before(&s->heap[c + 1], &s->heap[c])) ++c;
        if (!kw_tok_q_before(&s->heap[c], &last)) break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (s->heap_n > 0) s->heap[i] = last;
    return top;
}

static int kw_tok_q_pair(const kw_tokenizer *tok, kw_tok_scratch *s, int32_t pos) {
    const kw_tok_symbol *a = &s->sym[pos];
    if (a->next < 0) return 0;
    const kw_tok_merge *m = kw__tok_merge_find(tok, a->id, s->sym[a->next].id);
    if (!m) return 0;
    return kw_tok_q_push(s, (kw_tok_qitem){m->rank, pos, m->new_id});
}

/* Appends the ids of one pre-token (raw bytes w[0..n)) to out. */
static int kw_tok_bpe(const kw_tokenizer *tok, kw_tok_scratch *s, const uint8_t *w, size_t n, kw_tok_ids *out) {
    KW_RETURN_IF(n > KW_TOK_MAX_PIECES, KW_E_LIMIT, "a pre-token of %zu bytes is over the limit", n);
    if (n == 1 && tok->byte_id[w[0]] >= 0) return kw__tok_ids_push(out, tok->byte_id[w[0]]);
    if (tok->ignore_merges) {
        const size_t need = 2 * n;
        if (need > s->str_cap) {
            char *p = realloc(s->str, need);
            KW_RETURN_IF(!p, KW_E_NOMEM, "out of memory in BPE");
            s->str = p;
            s->str_cap = need;
        }
        size_t len = 0;
        for (size_t i = 0; i < n; ++i) {
            memcpy(s->str + len, tok->byte_char[w[i]], tok->byte_char_len[w[i]]);
            len += tok->byte_char_len[w[i]];
        }
        const int32_t id = kw__tok_vocab_find(tok, s->str, len);
        if (id >= 0) return kw__tok_ids_push(out, id);
    }
    if (n > s->sym_cap) {
        kw_tok_symbol *p = realloc(s->sym, n * sizeof *p);
        KW_RETURN_IF(!p, KW_E_NOMEM, "out of memory in BPE");
        s->sym = p;
        s->sym_cap = n;
    }
    /* Bytes whose one-symbol token is absent are dropped, as HF does when there is no unk token. */
    int32_t m = 0;
    for (size_t i = 0; i < n; ++i) {
        if (tok->byte_id[w[i]] < 0) continue;
        s->sym[m] = (kw_tok_symbol){tok->byte_id[w[i]], m - 1, m + 1, 1, 1};
        ++m;
    }
    return kw__tok_merge_symbols(tok, s, m, out, NULL);
}

int kw__tok_merge_symbols(const kw_tokenizer *tok, kw_tok_scratch *s, int32_t m, kw_tok_ids *out, kw_tok_ids *lens) {
    if (m == 0) return 0;
    s->sym[m - 1].next = -1;
    s->heap_n = 0;
    for (int32_t i = 0; i + 1 < m; ++i)
        KW_FORWARD(kw_tok_q_pair(tok, s, i));
    while (s->heap_n > 0) {
        const kw_tok_qitem top = kw_tok_q_pop(s);
        kw_tok_symbol *a = &s->sym[top.pos];
        if (!a->alive || a->next < 0) continue;
        kw_tok_symbol *b = &s->sym[a->next];
        const kw_tok_merge *cur = kw__tok_merge_find(tok, a->id, b->id);
        if (!cur || cur->new_id != top.new_id) continue; /* a stale entry */
        a->id = top.new_id;
        a->len += b->len;
        b->alive = 0;
        a->next = b->next;
        if (b->next >= 0) s->sym[b->next].prev = top.pos;
        if (a->prev >= 0) KW_FORWARD(kw_tok_q_pair(tok, s, a->prev));
        KW_FORWARD(kw_tok_q_pair(tok, s, top.pos));
    }
    for (int32_t i = 0; i >= 0; i = s->sym[i].next) {
        KW_FORWARD(kw__tok_ids_push(out, s->sym[i].id));
        if (lens) KW_FORWARD(kw__tok_ids_push(lens, s->sym[i].len));
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Encode

/* Appends utf8proc's NFC of s[0..n) to b. */
static int kw_tok_nfc_piece(kw_buf *b, const uint8_t *s, size_t n) {
    if (n == 0) return 0;
    utf8proc_uint8_t *norm = NULL;
    const utf8proc_ssize_t r = utf8proc_map(s, (utf8proc_ssize_t)n, &norm, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    KW_RETURN_IF(r < 0, r == UTF8PROC_ERROR_NOMEM ? KW_E_NOMEM : KW_E_UTF8, "NFC normalization failed: %s",
                 utf8proc_errmsg(r));
    const int rc = kw_buf_append(b, (const char *)norm, (size_t)r);
    free(norm);
    return rc;
}

/* NFC as HF's normalizer computes it: utf8proc NFC on the stretches between the code points HF's tables do not know
 * (kw_tok_nfc_unknown), which are kept as they are. *out is malloc'd, NUL-terminated. */
static int kw_tok_nfc(const uint8_t *text, size_t len, uint8_t **out, size_t *out_len) {
    kw_buf b = KW_BUF_INIT;
    int rc = 0;
    size_t start = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        const size_t k = kw__tok_utf8_decode(text + i, &cp);
        if (kw_tok_nfc_is_unknown(cp)) {
            KW_CHECK(kw_tok_nfc_piece(&b, text + start, i - start));
            KW_CHECK(kw_buf_append(&b, (const char *)text + i, k));
            start = i + k;
        }
        i += k;
    }
    KW_CHECK(kw_tok_nfc_piece(&b, text + start, len - start));
    char *norm = NULL;
    KW_CHECK(kw_buf_take(&b, &norm, out_len));
    *out = (uint8_t *)norm;
out:
    kw_buf_free(&b);
    return rc;
}

/* Normalizes and pre-tokenizes one stretch of text that holds no added token. */
static int kw_tok_walk_segment(const kw_tokenizer *tok, pcre2_match_data *md, const uint8_t *text, size_t len,
                               kw_tok_sink *sink) {
    if (len == 0) return 0;
    const uint8_t *orig = text;
    const size_t orig_len = len;
    uint8_t *norm = NULL;
    if (tok->nfc) {
        bool ascii = true;
        for (size_t i = 0; i < len && ascii; ++i)
            ascii = text[i] < 0x80;
        if (!ascii) {
            size_t norm_len = 0;
            KW_FORWARD(kw_tok_nfc(text, len, &norm, &norm_len));
            text = norm;
            len = norm_len;
        }
    }
    int rc = 0;
    if (sink->segment) KW_CHECK(sink->segment(sink, orig, orig_len, text, len));
    size_t pos = 0;
    while (pos < len) {
        int r = pcre2_match(tok->split_re, text, len, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        if (r == PCRE2_ERROR_JIT_STACKLIMIT)
            r = pcre2_match(tok->split_re, text, len, pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, NULL);
        if (r == PCRE2_ERROR_NOMATCH) {
            KW_CHECK(sink->piece(sink, text + pos, len - pos, -1));
            break;
        }
        KW_CHECK_IF(r < 0, KW_E_LIMIT, "pre-tokenizer regex failed with PCRE2 error %d", r);
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        const size_t start = ov[0], end = ov[1];
        /* Isolated: the gap before a match and the match are pieces of their own. */
        if (start > pos) KW_CHECK(sink->piece(sink, text + pos, start - pos, -1));
        if (end > start) {
            KW_CHECK(sink->piece(sink, text + start, end - start, -1));
            pos = end;
        } else {
            /* An empty match (impossible with the known patterns) contributes nothing; step over one character. */
            size_t bad = 0, k = kw__tok_utf8_seq(text + start, len - start, &bad);
            pos = start + (k ? k : 1);
            if (pos > len) pos = len;
        }
    }
out:
    free(norm);
    return rc;
}

/* The added token whose text is s[0..n), or -1. */
static int32_t kw_tok_added_find(const kw_tokenizer *tok, const uint8_t *s, size_t n) {
    size_t i = (size_t)kw_tok_hash_bytes(s, n) & tok->added_mask;
    for (;; i = (i + 1) & tok->added_mask) {
        const int32_t slot = tok->added_slots[i];
        if (slot == 0) return -1;
        const kw_tok_entry *e = &tok->entries[slot - 1];
        if (e->len == n && memcmp(tok->pool.data + e->off, s, n) == 0) return slot - 1;
    }
}

int kw__tok_index_added(kw_tokenizer *tok) {
    size_t slots = 0;
    KW_FORWARD(kw__tok_table_size(tok->n_added, &slots));
    free(tok->added_slots);
    free(tok->added_lens);
    tok->added_slots = calloc(slots, sizeof *tok->added_slots);
    tok->added_lens = malloc((tok->n_added ? tok->n_added : 1) * sizeof *tok->added_lens);
    KW_RETURN_IF(!tok->added_slots || !tok->added_lens, KW_E_NOMEM, "out of memory indexing added tokens");
    tok->added_mask = slots - 1;
    tok->n_added_lens = 0;
    for (size_t k = 0; k < tok->n_added; ++k) {
        const int32_t id = tok->added[k];
        const kw_tok_entry *e = &tok->entries[id];
        const uint8_t *s = (const uint8_t *)tok->pool.data + e->off;
        if (kw_tok_added_find(tok, s, e->len) >= 0) continue; /* the same text twice: the first one matches */
        size_t i = (size_t)kw_tok_hash_bytes(s, e->len) & tok->added_mask;
        while (tok->added_slots[i] != 0)
            i = (i + 1) & tok->added_mask;
        tok->added_slots[i] = id + 1;
        size_t j = 0; /* insert the length, keeping the list distinct and descending */
        while (j < tok->n_added_lens && tok->added_lens[j] > e->len)
            ++j;
        if (j < tok->n_added_lens && tok->added_lens[j] == e->len) continue;
        memmove(tok->added_lens + j + 1, tok->added_lens + j, (tok->n_added_lens - j) * sizeof *tok->added_lens);
        tok->added_lens[j] = e->len;
        ++tok->n_added_lens;
    }
    return 0;
}

/* Length of the longest added token at text[0..len), 0 if none; *id receives it. One hash lookup per distinct added
 * token length, longest first. */
static size_t kw_tok_added_at(const kw_tokenizer *tok, const uint8_t *text, size_t len, int32_t *id) {
    for (size_t k = 0; k < tok->n_added_lens; ++k) {
        const size_t n = tok->added_lens[k];
        if (n > len) continue;
        const int32_t found = kw_tok_added_find(tok, text, n);
        if (found >= 0) {
            *id = found;
            return n;
        }
    }
    return 0;
}

/* The stretch text[at, at + len) between added tokens, through the tokenizer's normalizer and pre-tokenizer. */
static int kw_tok_segment(const kw_tokenizer *tok, pcre2_match_data *md, const uint8_t *text, size_t at, size_t len,
                          kw_tok_sink *sink) {
    if (tok->spm) return kw__tok_spm_segment(tok, text + at, len, at, sink);
    return kw_tok_walk_segment(tok, md, text + at, len, sink);
}

/* Splits text into added tokens (leftmost, then longest, in the raw text) and pre-tokens, in order. */
static int kw_tok_walk(const kw_tokenizer *tok, const char *text, size_t len, kw_tok_sink *sink) {
    const uint8_t *t = (const uint8_t *)text;
    const size_t bad = kw__tok_utf8_check(t, len);
    KW_RETURN_IF(bad != len, KW_E_UTF8, "invalid UTF-8 at byte %zu of the text", bad);
    int rc = 0;
    pcre2_match_data *md = NULL;
    if (!tok->spm) {
        md = pcre2_match_data_create_from_pattern(tok->split_re, NULL);
        KW_RETURN_IF(!md, KW_E_NOMEM, "out of memory for regex match data");
    }
    size_t seg = 0;
    for (size_t i = 0; i < len;) {
        int32_t id = -1;
        const size_t k = tok->added_first[t[i]] ? kw_tok_added_at(tok, t + i, len - i, &id) : 0;
        if (k == 0) {
            ++i;
            continue;
        }
        KW_CHECK(kw_tok_segment(tok, md, t, seg, i - seg, sink));
        KW_CHECK(sink->piece(sink, t + i, k, id));
        i += k;
        seg = i;
    }
    if (seg < len) KW_CHECK(kw_tok_segment(tok, md, t, seg, len - seg, sink));
out:
    pcre2_match_data_free(md);
    return rc;
}

typedef struct kw_tok_encode_sink {
    kw_tok_sink base;
    const kw_tokenizer *tok;
    kw_tok_scratch scratch;
    kw_tok_ids ids;
} kw_tok_encode_sink;

static int kw_tok_encode_piece(kw_tok_sink *sink, const uint8_t *s, size_t n, int32_t added_id) {
    kw_tok_encode_sink *e = (kw_tok_encode_sink *)sink;
    if (added_id >= 0) return kw__tok_ids_push(&e->ids, added_id);
    if (e->tok->spm) return kw__tok_spm_bpe(e->tok, &e->scratch, s, n, &e->ids, NULL);
    return kw_tok_bpe(e->tok, &e->scratch, s, n, &e->ids);
}

int kw_tokenizer_encode(const kw_tokenizer *tok, const char *text, size_t len, int32_t **ids, size_t *n_ids) {
    KW_RETURN_IF(!tok || (!text && len) || !ids || !n_ids, KW_E_INVALID_ARG, "kw_tokenizer_encode: NULL argument");
    kw_tok_encode_sink e = {.base = {.piece = kw_tok_encode_piece}, .tok = tok};
    int rc = 0;
    KW_CHECK(kw_tok_walk(tok, text, len, &e.base));
    if (!e.ids.v) {
        e.ids.v = malloc(sizeof(int32_t));
        KW_CHECK_IF(!e.ids.v, KW_E_NOMEM, "out of memory");
    }
    *ids = e.ids.v;
    *n_ids = e.ids.n;
    e.ids.v = NULL;
out:
    free(e.ids.v);
    kw__tok_scratch_free(&e.scratch);
    return rc;
}

typedef struct kw_tok_piece_sink {
    kw_tok_sink base;
    kw_buf text;
    size_t *bounds;
    size_t n, cap;
} kw_tok_piece_sink;

static int kw_tok_record_piece(kw_tok_sink *sink, const uint8_t *s, size_t n, int32_t added_id) {
    (void)added_id;
    kw_tok_piece_sink *p = (kw_tok_piece_sink *)sink;
    if (p->n == p->cap) {
        const size_t cap = p->cap ? p->cap * 2 : 64;
        KW_RETURN_IF(cap > SIZE_MAX / (2 * sizeof(size_t)), KW_E_OVERFLOW, "too many pieces");
        size_t *b = realloc(p->bounds, cap * 2 * sizeof(size_t));
        KW_RETURN_IF(!b, KW_E_NOMEM, "out of memory");
        p->bounds = b;
        p->cap = cap;
    }
    p->bounds[2 * p->n] = p->text.len;
    KW_FORWARD(kw_buf_append(&p->text, (const char *)s, n));
    p->bounds[2 * p->n + 1] = p->text.len;
    ++p->n;
    return 0;
}

int kw_tokenizer_pre_tokenize(const kw_tokenizer *tok, const char *text, size_t len, char **norm, size_t *norm_len,
                              size_t **bounds, size_t *n_pieces) {
    KW_RETURN_IF(!tok || (!text && len) || !norm || !norm_len || !bounds || !n_pieces, KW_E_INVALID_ARG,
                 "kw_tokenizer_pre_tokenize: NULL argument");
    kw_tok_piece_sink p = {.base = {.piece = kw_tok_record_piece}};
    int rc = 0;
    KW_CHECK(kw_tok_walk(tok, text, len, &p.base));
    if (!p.bounds) {
        p.bounds = malloc(2 * sizeof(size_t));
        KW_CHECK_IF(!p.bounds, KW_E_NOMEM, "out of memory");
    }
    KW_CHECK(kw_buf_take(&p.text, norm, norm_len));
    *bounds = p.bounds;
    *n_pieces = p.n;
    p.bounds = NULL;
out:
    kw_buf_free(&p.text);
    free(p.bounds);
    return rc;
}

// ---------------------------------------------------------------------------------------------------------------
// Decode and lookups

int kw_tokenizer_decode(const kw_tokenizer *tok, const int32_t *ids, size_t n_ids, int skip_special, char **text,
                        size_t *len) {
    KW_RETURN_IF(!tok || (!ids && n_ids) || !text || !len, KW_E_INVALID_ARG, "kw_tokenizer_decode: NULL argument");
    size_t raw_len = 0;
    for (size_t i = 0; i < n_ids; ++i) {
        const int32_t id = ids[i];
        KW_RETURN_IF(id < 0 || id >= tok->n_ids || !tok->entries[id].flags, KW_E_TOKEN_ID,
                     "token id %d (position %zu) is not in the vocabulary of %d ids", id, i, tok->n_ids);
        if (skip_special && (tok->entries[id].flags & KW_TOK_SPECIAL)) continue;
        KW_RETURN_IF(kw_size_add(raw_len, tok->entries[id].dec_len, &raw_len) < 0, KW_E_OVERFLOW, "decode too long");
    }
    if (tok->spm) return kw__tok_spm_decode(tok, ids, n_ids, skip_special, text, len);
    /* Every invalid byte may become the 3 bytes of U+FFFD. */
    size_t cap;
    KW_RETURN_IF(kw_size_muladd(raw_len, 3, 1, &cap) < 0, KW_E_OVERFLOW, "decode too long");
    uint8_t *raw = malloc(raw_len ? raw_len : 1);
    char *res = malloc(cap);
    if (!raw || !res) {
        free(raw);
        free(res);
        KW_FAIL(KW_E_NOMEM, "out of memory decoding %zu ids", n_ids);
    }
    size_t r = 0;
    for (size_t i = 0; i < n_ids; ++i) {
        const kw_tok_entry *e = &tok->entries[ids[i]];
        if (skip_special && (e->flags & KW_TOK_SPECIAL)) continue;
        memcpy(raw + r, tok->pool.data + e->dec_off, e->dec_len);
        r += e->dec_len;
    }
    /* String::from_utf8_lossy: each maximal invalid prefix becomes one U+FFFD. */
    size_t o = 0;
    for (size_t i = 0; i < raw_len;) {
        size_t bad = 0;
        const size_t k = raw[i] < 0x80 ? 1 : kw__tok_utf8_seq(raw + i, raw_len - i, &bad);
        if (k) {
            memcpy(res + o, raw + i, k);
            o += k;
            i += k;
        } else {
            memcpy(res + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i += bad;
        }
    }
    res[o] = '\0';
    free(raw);
    *text = res;
    *len = o;
    return 0;
}

int32_t kw_tokenizer_token_id(const kw_tokenizer *tok, const char *token) {
    if (!tok || !token) return -1;
    const size_t n = strlen(token);
    const int32_t added = kw_tok_added_find(tok, (const uint8_t *)token, n);
    return added >= 0 ? added : kw__tok_vocab_find(tok, token, n);
}

int32_t kw_tokenizer_vocab_size(const kw_tokenizer *tok) {
    return tok ? tok->n_ids : 0;
}

int kw_tokenizer_is_special(const kw_tokenizer *tok, int32_t id) {
    if (!tok || id < 0 || id >= tok->n_ids) return 0;
    return (tok->entries[id].flags & KW_TOK_SPECIAL) != 0;
}

int kw_tokenizer_same_ids(const kw_tokenizer *a, const kw_tokenizer *b) {
    if (!a || !b) return 0;
    const int32_t n = a->n_ids < b->n_ids ? a->n_ids : b->n_ids;
    for (int32_t id = 0; id < n; ++id) {
        const kw_tok_entry *ea = &a->entries[id], *eb = &b->entries[id];
        if ((ea->flags == 0) != (eb->flags == 0) || ea->len != eb->len ||
            (ea->len && memcmp(a->pool.data + ea->off, b->pool.data + eb->off, ea->len) != 0))
            return 0;
    }
    return 1;
}

// ---------------------------------------------------------------------------------------------------------------
// Offsets (HF return_offsets_mapping)
//
// HF keeps, for every byte of the normalized text, the range of the original character it came from, and maps a
// token's normalized bytes [a, b) to [align[a].start, align[b-1].end). Byte-level BPE tokens that hold part of a
// multi-byte character therefore get the whole character's range. NFC (tokenizers' NormalizedString::nfc over
// unicode-normalization-alignments) yields each normalized character with a change count, and the alignment follows
// from the counts alone: a character with change c <= 0 takes the range of the next original character and skips -c
// more; a character with c > 0 was inserted and takes the range of the last original character consumed. The counts
// come from the normalization steps: every original character decomposes into pieces (the first with change 0, the
// others +1), non-starter runs are sorted by combining class (counts travel with the characters), and composing a
// starter with a later piece adds that piece's count minus one to the starter's. kw_tok_nfc_trace replays those
// steps with utf8proc's data; if its result is not the normalized text the tokenizer used (which never happened on
// the fixtures), the first normalized character absorbs the difference in length and the rest map one to one.

typedef struct kw_tok_nfc_item {
    uint32_t cp;
    int32_t change;
    int16_t ccc;
} kw_tok_nfc_item;

/* The primary composite of a (a starter, maybe composed) and b, or 0. */
static uint32_t kw_tok_compose_pair(uint32_t a, uint32_t b) {
    if (a >= 0x1100 && a <= 0x1112 && b >= 0x1161 && b <= 0x1175)
        return 0xAC00 + ((a - 0x1100) * 21 + (b - 0x1161)) * 28;
    if (a >= 0xAC00 && a <= 0xD7A3 && (a - 0xAC00) % 28 == 0 && b >= 0x11A8 && b <= 0x11C2) return a + (b - 0x11A7);
    if (kw_tok_nfc_is_unknown(a) || kw_tok_nfc_is_unknown(b)) return 0;
    const utf8proc_property_t *pb = utf8proc_get_property((utf8proc_int32_t)b);
    if (pb->comb_index == UINT16_MAX || pb->comb_index < 0x8000) return 0; /* b is never the second of a pair */
    utf8proc_int32_t in[2] = {(utf8proc_int32_t)a, (utf8proc_int32_t)b};
    const utf8proc_ssize_t n = utf8proc_normalize_utf32(in, 2, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    return n == 1 ? (uint32_t)in[0] : 0;
}

/* Replays NFC on the n original characters cps[0..n) into items (capacity cap), *m receiving the count. Returns 0,
 * or -1 when cap is too small. */
static int kw_tok_nfc_trace(const uint32_t *cps, size_t n, kw_tok_nfc_item *items, size_t cap, size_t *m) {
    size_t k = 0;
    for (size_t i = 0; i < n; ++i) {
        utf8proc_int32_t d[32];
        int last = 0;
        utf8proc_ssize_t nd = 1;
        d[0] = (utf8proc_int32_t)cps[i];
        if (!kw_tok_nfc_is_unknown(cps[i])) {
            nd = utf8proc_decompose_char((utf8proc_int32_t)cps[i], d, 32, UTF8PROC_DECOMPOSE, &last);
            if (nd < 1 || nd > 32) {
                nd = 1;
                d[0] = (utf8proc_int32_t)cps[i];
            }
        }
        for (utf8proc_ssize_t j = 0; j < nd; ++j) {
            if (k == cap) return -1;
            const uint32_t c = (uint32_t)d[j];
            items[k++] = (kw_tok_nfc_item){
                c, j > 0 ? 1 : 0,
                kw_tok_nfc_is_unknown(c) ? 0 : utf8proc_get_property((utf8proc_int32_t)c)->combining_class};
        }
    }
    /* canonical ordering: stable sort of each run of non-starters by class */
    for (size_t i = 1; i < k; ++i) {
        const kw_tok_nfc_item x = items[i];
        if (x.ccc == 0) continue;
        size_t j = i;
        while (j > 0 && items[j - 1].ccc > x.ccc)
            items[j] = items[j - 1], --j;
        items[j] = x;
    }
    /* canonical composition */
    size_t out = 0, starter = SIZE_MAX;
    int last_ccc = -1;
    for (size_t i = 0; i < k; ++i) {
        const kw_tok_nfc_item x = items[i];
        if (starter != SIZE_MAX && (last_ccc == 0 ? out == starter + 1 : last_ccc < x.ccc)) {
            const uint32_t c = kw_tok_compose_pair(items[starter].cp, x.cp);
            if (c != 0) {
                items[starter].cp = c;
                items[starter].change += x.change - 1;
                continue;
            }
        }
        if (x.ccc == 0) starter = out;
        last_ccc = x.ccc;
        items[out++] = x;
    }
    *m = out;
    return 0;
}

typedef struct kw_tok_offsets_sink {
    kw_tok_sink base;
    const kw_tokenizer *tok;
    kw_tok_scratch scratch;
    kw_tok_ids ids;
    size_t *off; /* 2 per id: original byte range */
    size_t off_cap;
    const uint8_t *text; /* the original text */
    size_t len;
    const uint8_t *norm; /* the current stretch's normalized bytes */
    size_t *al;          /* 2 per normalized byte: original byte range (unused when identity) */
    size_t al_cap;
    bool identity;  /* the stretch is its own normalization */
    size_t *ranges; /* scratch: original character ranges of a stretch, then the byte -> character map */
    size_t ranges_cap;
    uint32_t *cps;        /* scratch: original code points of a stretch */
    kw_tok_nfc_item *nfc; /* scratch: the replayed normalization */
    size_t cps_cap, nfc_cap;
} kw_tok_offsets_sink;

static int kw_tok_grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t n = *cap ? *cap : 64, bytes;
    while (n < need)
        KW_RETURN_IF(kw_size_mul(n, 2, &n) < 0, KW_E_OVERFLOW, "offsets: too large");
    KW_RETURN_IF(kw_size_mul(n, elem, &bytes) < 0, KW_E_OVERFLOW, "offsets: too large");
    void *q = realloc(*p, bytes);
    KW_RETURN_IF(!q, KW_E_NOMEM, "offsets: out of memory");
    *p = q;
    *cap = n;
    return 0;
}

static int kw_tok_offsets_segment(kw_tok_sink *sink, const uint8_t *orig, size_t orig_len, const uint8_t *norm,
                                  size_t norm_len) {
    kw_tok_offsets_sink *o = (kw_tok_offsets_sink *)sink;
    o->norm = norm;
    o->identity = norm == orig;
    if (o->identity) return 0;
    const size_t base = (size_t)(orig - o->text);
    size_t k = 0, m = 0, nfc_need;
    KW_FORWARD(kw_tok_grow((void **)&o->ranges, &o->ranges_cap, 2 * orig_len, sizeof(size_t)));
    KW_FORWARD(kw_tok_grow((void **)&o->cps, &o->cps_cap, orig_len, sizeof(uint32_t)));
    KW_FORWARD(kw_tok_grow((void **)&o->al, &o->al_cap, 2 * norm_len + 2, sizeof(size_t)));
    for (size_t i = 0; i < orig_len; ++k) {
        const size_t n = kw__tok_utf8_decode(orig + i, &o->cps[k]);
        o->ranges[2 * k] = base + i;
        o->ranges[2 * k + 1] = base + i + n;
        i += n;
    }
    KW_RETURN_IF(kw_size_mul(k, 18, &nfc_need) < 0, KW_E_OVERFLOW, "offsets: too large"); /* <= 18 pieces each */
    KW_FORWARD(kw_tok_grow((void **)&o->nfc, &o->nfc_cap, nfc_need, sizeof(kw_tok_nfc_item)));
    bool traced = kw_tok_nfc_trace(o->cps, k, o->nfc, o->nfc_cap, &m) == 0;
    /* the replay must give the normalized text */
    size_t b = 0;
    for (size_t j = 0; traced && j < m; ++j) {
        uint32_t cp = 0;
        traced = b < norm_len;
        if (traced) b += kw__tok_utf8_decode(norm + b, &cp);
        traced = traced && cp == o->nfc[j].cp && b <= norm_len;
    }
    traced = traced && b == norm_len;
    size_t cur = 0, start = o->ranges[0], end = o->ranges[1];
    b = 0;
    for (size_t j = 0; b < norm_len; ++j) {
        uint32_t cp;
        const size_t n = kw__tok_utf8_decode(norm + b, &cp);
        if (traced) {
            const int32_t c = o->nfc[j].change;
            if (c <= 0 && cur < k) {
                start = o->ranges[2 * cur];
                end = o->ranges[2 * cur + 1];
                cur += (size_t)1 + (size_t)(-(int64_t)c);
            } else if (c > 0 && cur > 0) { /* inserted: the last consumed original character's range */
                start = o->ranges[2 * (cur < k ? cur : k) - 2];
                end = o->ranges[2 * (cur < k ? cur : k) - 1];
            }
        } else if (cur < k) { /* fallback: the first character absorbs the difference */
            start = o->ranges[2 * cur];
            end = o->ranges[2 * cur + 1];
            cur += 1;
            if (j == 0) {
                size_t mm = 0;
                for (size_t i = 0; i < norm_len; ++i)
                    mm += (norm[i] & 0xC0) != 0x80;
                cur += mm < k ? k - mm : 0;
            }
        }
        for (size_t i = 0; i < n; ++i) {
            o->al[2 * (b + i)] = start;
            o->al[2 * (b + i) + 1] = end;
        }
        b += n;
    }
    return 0;
}

/* The original range of normalized bytes [a, a + n) of the current stretch (n >= 1). */
static void kw_tok_offsets_map(const kw_tok_offsets_sink *o, size_t a, size_t n, size_t *start, size_t *end) {
    if (!o->identity) {
        *start = o->al[2 * a];
        *end = o->al[2 * (a + n - 1) + 1];
        return;
    }
    /* identity: widen to whole characters */
    size_t s = (size_t)(o->norm - o->text) + a, e = s + n;
    while (s > 0 && (o->text[s] & 0xC0) == 0x80)
        --s;
    while (e < o->len && (o->text[e] & 0xC0) == 0x80)
        ++e;
    *start = s;
    *end = e;
}

static int kw_tok_offsets_piece(kw_tok_sink *sink, const uint8_t *s, size_t n, int32_t added_id) {
    kw_tok_offsets_sink *o = (kw_tok_offsets_sink *)sink;
    const size_t first = o->ids.n;
    if (added_id >= 0)
        KW_FORWARD(kw__tok_ids_push(&o->ids, added_id));
    else
        KW_FORWARD(kw_tok_bpe(o->tok, &o->scratch, s, n, &o->ids));
    KW_FORWARD(kw_tok_grow((void **)&o->off, &o->off_cap, 2 * o->ids.n, sizeof(size_t)));
    if (added_id >= 0) {
        o->off[2 * first] = (size_t)(s - o->text);
        o->off[2 * first + 1] = (size_t)(s - o->text) + n;
        return 0;
    }
    size_t pos = (size_t)(s - o->norm);
    const size_t stop = pos + n;
    for (size_t i = first; i < o->ids.n; ++i) {
        const size_t k = o->tok->entries[o->ids.v[i]].dec_len;
        KW_RETURN_IF(k == 0 || k > stop - pos, KW_E_INTERNAL, "offsets: token %d does not cover its piece's bytes",
                     o->ids.v[i]);
        kw_tok_offsets_map(o, pos, k, &o->off[2 * i], &o->off[2 * i + 1]);
        pos += k;
    }
    KW_RETURN_IF(pos != stop, KW_E_INTERNAL, "offsets: the tokens of a piece do not cover its %zu bytes", n);
    return 0;
}

int kw_tokenizer_encode_offsets(const kw_tokenizer *tok, const char *text, size_t len, int chars, int32_t **ids,
                                size_t **offsets, size_t *n_ids) {
    KW_RETURN_IF(!tok || (!text && len) || !ids || !offsets || !n_ids, KW_E_INVALID_ARG,
                 "kw_tokenizer_encode_offsets: NULL argument");
    KW_RETURN_IF(tok->spm, KW_E_UNSUPPORTED, "offsets are not implemented for SentencePiece-style tokenizers");
    kw_tok_offsets_sink o = {
        .base = {kw_tok_offsets_piece, kw_tok_offsets_segment}, .tok = tok, .text = (const uint8_t *)text, .len = len};
    int rc = 0;
    KW_CHECK(kw_tok_walk(tok, text, len, &o.base));
    KW_CHECK(kw_tok_grow((void **)&o.off, &o.off_cap, 2 * o.ids.n + 2, sizeof(size_t)));
    if (!o.ids.v) {
        o.ids.v = malloc(sizeof(int32_t));
        KW_CHECK_IF(!o.ids.v, KW_E_NOMEM, "out of memory");
    }
    if (chars) {
        /* byte offsets (always at character boundaries) -> code point indices */
        KW_CHECK(kw_tok_grow((void **)&o.ranges, &o.ranges_cap, len + 1, sizeof(size_t)));
        size_t c = 0;
        for (size_t i = 0; i < len; ++i) {
            o.ranges[i] = c;
            c += (o.text[i] & 0xC0) != 0x80;
        }
        o.ranges[len] = c;
        for (size_t i = 0; i < 2 * o.ids.n; ++i)
            o.off[i] = o.ranges[o.off[i]];
    }
    *ids = o.ids.v;
    *offsets = o.off;
    *n_ids = o.ids.n;
    o.ids.v = NULL;
    o.off = NULL;
out:
    free(o.ids.v);
    free(o.off);
    free(o.al);
    free(o.ranges);
    free(o.cps);
    free(o.nfc);
    kw__tok_scratch_free(&o.scratch);
    return rc;
}
