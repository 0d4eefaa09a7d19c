/* test_tokenizer_api.c: kw_tokenizer behaviour that the HF fixtures do not reach: a small synthetic tokenizer.json
 * (both merge forms, ignore_merges, overlapping added tokens, holes in the id space), every refusal of the loader,
 * invalid UTF-8 and bad ids, lookups, pre-tokenization pieces, very long inputs, and whether two tokenizers' ids
 * agree. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/kw_status.h"
#include "model/kw_tokenizer.h"

/* The Qwen pre-tokenizer regex, as written in tokenizer.json (JSON-escaped). */
#define QWEN_REGEX                                                                                                     \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}| "                                  \
    "?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+"

typedef struct synth {
    const char *normalizer;    /* JSON value */
    const char *pre_tokenizer; /* JSON value */
    const char *decoder;       /* JSON value */
    const char *model_extra;   /* extra members of "model", each ending in a comma */
    const char *merges;        /* JSON array */
    const char *added;         /* JSON array */
    const char *vocab_extra;   /* extra vocab members, each starting with a comma */
} synth;

static const char *default_pre =
    "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": {\"Regex\": \"" QWEN_REGEX
    "\"}, \"behavior\": \"Isolated\", \"invert\": false}, {\"type\": \"ByteLevel\", \"add_prefix_space\": false, "
    "\"trim_offsets\": false, \"use_regex\": false}]}";

static const char *default_added =
    "[{\"id\": 260, \"content\": \"<x>\", \"special\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": "
    "false, \"single_word\": false}, {\"id\": 261, \"content\": \"<x>y\", \"special\": false}, {\"id\": 262, "
    "\"content\": \"x>y\", \"special\": false}, {\"id\": 263, \"content\": \"<s>\", \"special\": true}]";

/* Appends the UTF-8 of the ByteLevel code point standing for byte b (GPT-2's table, written out here). */
static size_t byte_char(int b, char *out) {
    int cp = b, n = 0;
    const int self = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    if (!self) {
        cp = 256;
        for (int k = 0; k < b; ++k)
            if (!((k >= 0x21 && k <= 0x7E) || (k >= 0xA1 && k <= 0xAC) || (k >= 0xAE && k <= 0xFF))) ++cp;
    }
    if (cp < 0x80) {
        out[n++] = (char)cp;
    } else {
        out[n++] = (char)(0xC0 | (cp >> 6));
        out[n++] = (char)(0x80 | (cp & 0x3F));
    }
    return (size_t)n;
}

/* Writes the synthetic tokenizer.json to a temporary file; returns its path (static buffer). Vocabulary: ids 0-255
 * are the 256 byte symbols (id = byte value), 256 "ab", 257 "abc", 258 "bc", 259 "Ġa"; added 260-263. */
static const char *write_synth(const synth *s) {
    static char path[256];
    char *json = malloc(1 << 16);
    assert_non_null(json);
    size_t n = 0;
    n += (size_t)sprintf(json + n,
                         "{\"version\": \"1.0\", \"added_tokens\": %s, \"normalizer\": %s, "
                         "\"pre_tokenizer\": %s, \"post_processor\": null, \"decoder\": %s, "
                         "\"model\": {\"type\": \"BPE\", %s \"vocab\": {",
                         s->added ? s->added : default_added, s->normalizer ? s->normalizer : "null",
                         s->pre_tokenizer ? s->pre_tokenizer : default_pre,
                         s->decoder ? s->decoder : "{\"type\": \"ByteLevel\"}", s->model_extra ? s->model_extra : "");
    for (int b = 0; b < 256; ++b) {
        char c[3] = {0};
        const size_t k = byte_char(b, c);
        json[n++] = '"';
        if (c[0] == '"' || c[0] == '\\') json[n++] = '\\';
        memcpy(json + n, c, k);
        n += k;
        n += (size_t)sprintf(json + n, "\": %d, ", b);
    }
    n += (size_t)sprintf(json + n,
                         "\"ab\": 256, \"abc\": 257, \"bc\": 258, \"\xC4\xA0"
                         "a\": 259%s}, \"merges\": %s}}",
                         s->vocab_extra ? s->vocab_extra : "", s->merges ? s->merges : "[\"a b\", \"ab c\"]");
    snprintf(path, sizeof path, "%s/kw_test_tok_%d.json", P_tmpdir, (int)getpid());
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(json, 1, n, f), n);
    fclose(f);
    free(json);
    return path;
}

static kw_tokenizer *load_synth(const synth *s) {
    kw_tokenizer *tok = NULL;
    const int rc = kw_tokenizer_load(write_synth(s), &tok);
    if (rc != 0) print_error("load: %s\n", kw_error_detail());
    assert_int_equal(rc, 0);
    return tok;
}

static void expect_refused(const synth *s, int code, const char *needle) {
    kw_tokenizer *tok = (kw_tokenizer *)1;
    const int rc = kw_tokenizer_load(write_synth(s), &tok);
    if (rc != code || !strstr(kw_error_detail(), needle))
        print_error("expected %s mentioning \"%s\", got %s: %s\n", kw_status_name(code), needle, kw_status_name(rc),
                    kw_error_detail());
    assert_int_equal(rc, code);
    assert_non_null(strstr(kw_error_detail(), needle));
    assert_null(tok);
}

static void expect_ids(const kw_tokenizer *tok, const char *text, const int32_t *want, size_t n_want) {
    int32_t *ids = NULL;
    size_t n = 0;
    assert_int_equal(kw_tokenizer_encode(tok, text, strlen(text), &ids, &n), 0);
    if (n != n_want || memcmp(ids, want, n * sizeof *ids) != 0) {
        print_error("ids of \"%s\":", text);
        for (size_t i = 0; i < n; ++i)
            print_error(" %d", ids[i]);
        print_error("\n");
    }
    assert_int_equal(n, n_want);
    assert_memory_equal(ids, want, n * sizeof *ids);
    free(ids);
}

#define IDS(...) ((const int32_t[]){__VA_ARGS__}), sizeof((const int32_t[]){__VA_ARGS__}) / sizeof(int32_t)

static void test_synth_merges(void **state) {
    (void)state;
    const synth string_form = {0};
    const synth list_form = {.merges = "[[\"a\", \"b\"], [\"ab\", \"c\"]]"};
    const synth ignore = {.model_extra = "\"ignore_merges\": true,"};
    kw_tokenizer *a = load_synth(&string_form), *b = load_synth(&list_form), *c = load_synth(&ignore);
    expect_ids(a, "abc", IDS(257));
    expect_ids(b, "abc", IDS(257));
    expect_ids(a, "abcab cab", IDS(257, 256, 32, 99, 256)); /* " cab": no merge with the space */
    expect_ids(a, "bc", IDS(98, 99));                       /* no b+c merge */
    expect_ids(c, "bc", IDS(258));                          /* ignore_merges: the word is in the vocab */
    expect_ids(c, " a", IDS(259));
    expect_ids(a, " a", IDS(32, 97));
    assert_int_equal(kw_tokenizer_vocab_size(a), 264);
    kw_tokenizer_free(a);
    kw_tokenizer_free(b);
    kw_tokenizer_free(c);
}

static void test_synth_added(void **state) {
    (void)state;
    kw_tokenizer *tok = load_synth(&(synth){0});
    /* Leftmost, then longest, as HF's added-vocabulary matcher (checked with tokenizers 0.21). */
    expect_ids(tok, "<x>y", IDS(261));
    expect_ids(tok, "a<x>yb", IDS(97, 261, 98));
    expect_ids(tok, "<x>", IDS(260));
    expect_ids(tok, "<<x>y", IDS(60, 261));
    expect_ids(tok, "<x>>y", IDS(260, 62, 121));
    expect_ids(tok, "x>y<x>", IDS(262, 260));
    expect_ids(tok, "<x><x>y", IDS(260, 261));
    expect_ids(tok, "<s>abc<s>", IDS(263, 257, 263));
    expect_ids(tok, "<x", IDS(60, 120));
    assert_int_equal(kw_tokenizer_token_id(tok, "<x>y"), 261);
    assert_int_equal(kw_tokenizer_token_id(tok, "abc"), 257);
    assert_int_equal(kw_tokenizer_token_id(tok, "\xC4\xA0"
                                                "a"),
                     259);
    assert_int_equal(kw_tokenizer_token_id(tok, "zzz"), -1);
    assert_int_equal(kw_tokenizer_token_id(NULL, "a"), -1);
    assert_true(kw_tokenizer_is_special(tok, 263));
    assert_false(kw_tokenizer_is_special(tok, 261));
    assert_false(kw_tokenizer_is_special(tok, 97));
    assert_false(kw_tokenizer_is_special(tok, 264));
    assert_false(kw_tokenizer_is_special(tok, -5));

    char *text = NULL;
    size_t len = 0;
    const int32_t seq[] = {263, 257, 261, 263, 0xE4, 0xB8, 97};
    assert_int_equal(kw_tokenizer_decode(tok, seq, 7, 0, &text, &len), 0);
    assert_string_equal(text, "<s>abc<x>y<s>\xEF\xBF\xBD"
                              "a"); /* E4 B8 is one truncated character: one U+FFFD */
    assert_int_equal(len, strlen(text));
    free(text);
    assert_int_equal(kw_tokenizer_decode(tok, seq, 7, 1, &text, &len), 0);
    assert_string_equal(text, "abc<x>y\xEF\xBF\xBD"
                              "a");
    free(text);
    /* F0 80: F0 needs 90..BF next, so F0 and 80 are two separate errors (Rust's from_utf8_lossy). */
    const int32_t two[] = {0xF0, 0x80, 0xE4, 0xB8, 0xAD};
    assert_int_equal(kw_tokenizer_decode(tok, two, 5, 0, &text, &len), 0);
    assert_string_equal(text, "\xEF\xBF\xBD\xEF\xBF\xBD\xE4\xB8\xAD");
    free(text);
    assert_int_equal(kw_tokenizer_decode(tok, NULL, 0, 0, &text, &len), 0);
    assert_string_equal(text, "");
    assert_int_equal(len, 0);
    free(text);
    text = NULL;
    const int32_t bad[] = {97, 264};
    assert_int_equal(kw_tokenizer_decode(tok, bad, 2, 0, &text, &len), KW_E_TOKEN_ID);
    const int32_t neg[] = {-1};
    assert_int_equal(kw_tokenizer_decode(tok, neg, 1, 1, &text, &len), KW_E_TOKEN_ID);
    assert_null(text);
    kw_tokenizer_free(tok);
}

static void test_synth_holes(void **state) {
    (void)state;
    /* An added token far above the vocabulary leaves ids 264..299 unassigned. */
    const synth s = {.added = "[{\"id\": 300, \"content\": \"<far>\", \"special\": true}]"};
    kw_tokenizer *tok = load_synth(&s);
    assert_int_equal(kw_tokenizer_vocab_size(tok), 301);
    expect_ids(tok, "a<far>", IDS(97, 300));
    char *text = NULL;
    size_t len = 0;
    const int32_t hole[] = {280};
    assert_int_equal(kw_tokenizer_decode(tok, hole, 1, 0, &text, &len), KW_E_TOKEN_ID);
    kw_tokenizer_free(tok);
}

static void test_synth_refusals(void **state) {
    (void)state;
    expect_refused(&(synth){.normalizer = "{\"type\": \"NFKC\"}"}, KW_E_TOKENIZER, "NFKC");
    expect_refused(&(synth){.normalizer = "{\"x\": 1}"}, KW_E_TOKENIZER, "normalizer");
    expect_refused(&(synth){.pre_tokenizer = "{\"type\": \"Metaspace\"}"}, KW_E_TOKENIZER, "Metaspace");
    expect_refused(&(synth){.pre_tokenizer = "null"}, KW_E_TOKENIZER, "pre_tokenizer");
    expect_refused(
        &(synth){.pre_tokenizer = "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"ByteLevel\"}]}"},
        KW_E_TOKENIZER, "Sequence");
    expect_refused(&(synth){.pre_tokenizer = "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", "
                                             "\"pattern\": {\"Regex\": \"a\"}, \"behavior\": \"Removed\", \"invert\": "
                                             "false}, {\"type\": \"ByteLevel\"}]}"},
                   KW_E_TOKENIZER, "behavior");
    expect_refused(&(synth){.pre_tokenizer = "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", "
                                             "\"pattern\": {\"Regex\": \"a\"}, \"behavior\": \"Isolated\", \"invert\": "
                                             "true}, {\"type\": \"ByteLevel\"}]}"},
                   KW_E_TOKENIZER, "invert");
    expect_refused(&(synth){.pre_tokenizer = "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", "
                                             "\"pattern\": {\"String\": \" \"}, \"behavior\": \"Isolated\"}, "
                                             "{\"type\": \"ByteLevel\"}]}"},
                   KW_E_TOKENIZER, "Regex");
    expect_refused(&(synth){.pre_tokenizer = "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", "
                                             "\"pattern\": {\"Regex\": \"(\"}, \"behavior\": \"Isolated\"}, "
                                             "{\"type\": \"ByteLevel\"}]}"},
                   KW_E_TOKENIZER, "does not compile");
    expect_refused(&(synth){.pre_tokenizer = "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", "
                                             "\"pattern\": {\"Regex\": \"a\"}, \"behavior\": \"Isolated\"}, "
                                             "{\"type\": \"ByteLevel\", \"add_prefix_space\": true}]}"},
                   KW_E_TOKENIZER, "add_prefix_space");
    expect_refused(&(synth){.pre_tokenizer = "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", "
                                             "\"pattern\": {\"Regex\": \"a\"}, \"behavior\": \"Isolated\"}, "
                                             "{\"type\": \"ByteLevel\", \"use_regex\": true}]}"},
                   KW_E_TOKENIZER, "use_regex");
    expect_refused(&(synth){.pre_tokenizer = "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", "
                                             "\"pattern\": {\"Regex\": \"[^\\\\S]\"}, \"behavior\": \"Isolated\"}, "
                                             "{\"type\": \"ByteLevel\"}]}"},
                   KW_E_TOKENIZER, "\\S inside");
    expect_refused(&(synth){.decoder = "{\"type\": \"WordPiece\"}"}, KW_E_TOKENIZER, "decoder");
    expect_refused(&(synth){.model_extra = "\"unk_token\": \"<unk>\","}, KW_E_TOKENIZER, "unk_token");
    expect_refused(&(synth){.model_extra = "\"byte_fallback\": true,"}, KW_E_TOKENIZER, "byte_fallback");
    expect_refused(&(synth){.model_extra = "\"dropout\": 0.1,"}, KW_E_TOKENIZER, "dropout");
    expect_refused(&(synth){.model_extra = "\"continuing_subword_prefix\": \"##\","}, KW_E_TOKENIZER,
                   "continuing_subword_prefix");
    expect_refused(&(synth){.model_extra = "\"ignore_merges\": 3,"}, KW_E_PARSE, "ignore_merges");
    expect_refused(&(synth){.added = "[{\"id\": 270, \"content\": \"<y>\", \"lstrip\": true}]"}, KW_E_TOKENIZER,
                   "lstrip");
    expect_refused(&(synth){.added = "[{\"id\": 270, \"content\": \"<y>\", \"normalized\": true}]"}, KW_E_TOKENIZER,
                   "normalized");
    expect_refused(&(synth){.added = "[{\"id\": 270, \"content\": \"<y>\", \"single_word\": true}]"}, KW_E_TOKENIZER,
                   "single_word");
    expect_refused(&(synth){.added = "[{\"id\": 270, \"content\": \"\"}]"}, KW_E_TOKENIZER, "empty");
    expect_refused(&(synth){.added = "[{\"id\": 97, \"content\": \"<y>\"}]"}, KW_E_TOKENIZER, "reuses vocab id");
    expect_refused(&(synth){.added = "[{\"id\": 270, \"content\": \"<y>\"}, {\"id\": 270, \"content\": \"<z>\"}]"},
                   KW_E_TOKENIZER, "used twice");
    expect_refused(&(synth){.added = "[{\"id\": -3, \"content\": \"<y>\"}]"}, KW_E_TOKENIZER, "valid id");
    expect_refused(&(synth){.added = "{}"}, KW_E_TOKENIZER, "added_tokens");
    expect_refused(&(synth){.merges = "[\"a c\"]"}, KW_E_TOKENIZER, "not in the vocab");
    expect_refused(&(synth){.merges = "[\"a zz\"]"}, KW_E_TOKENIZER, "missing from the vocab");
    expect_refused(&(synth){.merges = "[\"ab\"]"}, KW_E_TOKENIZER, "no space");
    expect_refused(&(synth){.merges = "[[\"a\"]]"}, KW_E_TOKENIZER, "neither");
    expect_refused(&(synth){.merges = "{}"}, KW_E_TOKENIZER, "merges");
    expect_refused(&(synth){.vocab_extra = ", \"dup\": 97"}, KW_E_TOKENIZER, "used twice");
    expect_refused(&(synth){.vocab_extra = ", \"big\": 99999999"}, KW_E_TOKENIZER, "vocab id");
    expect_refused(&(synth){.vocab_extra = ", \"neg\": -1"}, KW_E_TOKENIZER, "vocab id");
    expect_refused(&(synth){.vocab_extra = ", \"frac\": 1.5"}, KW_E_TOKENIZER, "vocab id");
}

static void test_load_errors(void **state) {
    (void)state;
    kw_tokenizer *tok = NULL;
    char path[256];
    snprintf(path, sizeof path, "%s/kw_test_tok_bad_%d.json", P_tmpdir, (int)getpid());
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs("{\"model\": {\"type\": \"BPE\", \"vocab\": {", f);
    fclose(f);
    assert_int_equal(kw_tokenizer_load(path, &tok), KW_E_PARSE);
    f = fopen(path, "wb");
    assert_non_null(f);
    fputs("[1, 2]", f);
    fclose(f);
    assert_int_equal(kw_tokenizer_load(path, &tok), KW_E_TOKENIZER);
    remove(path);
    assert_int_equal(kw_tokenizer_load("/nonexistent/tokenizer.json", &tok), KW_E_NOT_FOUND);
    char dir[] = P_tmpdir "/kw_test_tok_dir_XXXXXX";
    assert_non_null(mkdtemp(dir));
    assert_int_equal(kw_tokenizer_load(dir, &tok), KW_E_NOT_FOUND); /* a folder without tokenizer.json */
    rmdir(dir);
    assert_int_equal(kw_tokenizer_load(NULL, &tok), KW_E_INVALID_ARG);
    assert_null(tok);
    kw_tokenizer_free(NULL);
}

static kw_tokenizer *load_real(const char *name) {
    char path[512];
    snprintf(path, sizeof path, "%s/models/tokenizers/%s", KW_SOURCE_DIR, name);
    kw_tokenizer *tok = NULL;
    assert_int_equal(kw_tokenizer_load(path, &tok), 0);
    return tok;
}

static void test_real_lookups(void **state) {
    (void)state;
    kw_tokenizer *q = load_real("qwen3"), *l = load_real("llama3");
    assert_int_equal(kw_tokenizer_vocab_size(q), 151669);
    assert_int_equal(kw_tokenizer_vocab_size(l), 128256);
    assert_int_equal(kw_tokenizer_token_id(q, "<|im_start|>"), 151644);
    assert_int_equal(kw_tokenizer_token_id(q, "<|endoftext|>"), 151643);
    assert_int_equal(kw_tokenizer_token_id(q, "<think>"), 151667);
    assert_int_equal(kw_tokenizer_token_id(q, "\xC4\xA0the"), 279);
    assert_int_equal(kw_tokenizer_token_id(q, "<|eot_id|>"), -1);
    assert_int_equal(kw_tokenizer_token_id(l, "<|eot_id|>"), 128009);
    assert_int_equal(kw_tokenizer_token_id(l, "<|begin_of_text|>"), 128000);
    assert_true(kw_tokenizer_is_special(q, 151643));
    assert_true(kw_tokenizer_is_special(q, 151656));
    assert_false(kw_tokenizer_is_special(q, 151657));
    assert_false(kw_tokenizer_is_special(q, 151667));
    assert_true(kw_tokenizer_is_special(l, 128009));
    assert_false(kw_tokenizer_is_special(l, 100));

    /* Invalid UTF-8 is refused, with the offset. */
    static const char *const bad[] = {"a\xC0\x80", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\xFF", "ok\xE4\xB8", "\x80"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; ++i) {
        int32_t *ids = NULL;
        size_t n = 0;
        assert_int_equal(kw_tokenizer_encode(q, bad[i], strlen(bad[i]), &ids, &n), KW_E_UTF8);
        assert_null(ids);
    }
    int32_t *ids = NULL;
    size_t n = 7;
    assert_int_equal(kw_tokenizer_encode(q, "", 0, &ids, &n), 0);
    assert_non_null(ids);
    assert_int_equal(n, 0);
    free(ids);
    assert_int_equal(kw_tokenizer_encode(q, NULL, 0, &ids, &n), 0);
    free(ids);
    assert_int_equal(kw_tokenizer_encode(NULL, "a", 1, &ids, &n), KW_E_INVALID_ARG);
    /* Text with an embedded NUL is encoded whole (length-delimited, not C-string). */
    expect_ids(q, "a", IDS(64));
    ids = NULL;
    assert_int_equal(kw_tokenizer_encode(q, "a\0b", 3, &ids, &n), 0);
    assert_int_equal(n, 3);
    assert_int_equal(ids[1], 188);
    free(ids);
    kw_tokenizer_free(q);
    kw_tokenizer_free(l);
}

/* kw_tokenizer_same_ids: ids agree when every shared id has the same token; added tokens above the other's ids (as
 * Qwen3's over Qwen2.5's) do not matter, a changed token or a hole where the other has a token does. */
static void test_same_ids(void **state) {
    (void)state;
    kw_tokenizer *base = load_synth(&(synth){0});
    kw_tokenizer *fewer = load_synth(&(synth){.added = "[{\"id\": 260, \"content\": \"<x>\", \"special\": false}]"});
    kw_tokenizer *renamed = load_synth(&(synth){
        .added = "[{\"id\": 260, \"content\": \"<x>\", \"special\": false}, {\"id\": 261, \"content\": \"<x>y\", "
                 "\"special\": false}, {\"id\": 262, \"content\": \"x>y\", \"special\": false}, {\"id\": 263, "
                 "\"content\": \"<t>\", \"special\": true}]"});
    kw_tokenizer *holes = load_synth(&(synth){.added = "[{\"id\": 300, \"content\": \"<far>\", \"special\": true}]"});
    assert_int_equal(kw_tokenizer_vocab_size(fewer), 261);
    assert_int_equal(kw_tokenizer_same_ids(base, base), 1);
    assert_int_equal(kw_tokenizer_same_ids(base, fewer), 1);
    assert_int_equal(kw_tokenizer_same_ids(fewer, base), 1);
    assert_int_equal(kw_tokenizer_same_ids(base, renamed), 0);
    assert_int_equal(kw_tokenizer_same_ids(renamed, fewer), 1);
    assert_int_equal(kw_tokenizer_same_ids(base, holes), 0); /* 260-263 are tokens in one, unassigned in the other */
    assert_int_equal(kw_tokenizer_same_ids(holes, fewer), 0);
    assert_int_equal(kw_tokenizer_same_ids(NULL, base), 0);
    assert_int_equal(kw_tokenizer_same_ids(base, NULL), 0);
    kw_tokenizer *q = load_real("qwen3"), *q2 = load_real("qwen3"), *l = load_real("llama3");
    assert_int_equal(kw_tokenizer_same_ids(q, q2), 1);
    assert_int_equal(kw_tokenizer_same_ids(q, l), 0);
    assert_int_equal(kw_tokenizer_same_ids(l, q), 0);
    assert_int_equal(kw_tokenizer_same_ids(q, base), 0);
    kw_tokenizer_free(base);
    kw_tokenizer_free(fewer);
    kw_tokenizer_free(renamed);
    kw_tokenizer_free(holes);
    kw_tokenizer_free(q);
    kw_tokenizer_free(q2);
    kw_tokenizer_free(l);
}

static void test_pre_tokenize(void **state) {
    (void)state;
    kw_tokenizer *q = load_real("qwen3");
    const char *text = "Hello  world<|im_end|>e\xCC\x81 12\n\n";
    char *norm = NULL;
    size_t norm_len = 0, *bounds = NULL, n = 0;
    assert_int_equal(kw_tokenizer_pre_tokenize(q, text, strlen(text), &norm, &norm_len, &bounds, &n), 0);
    static const char *const want[] = {"Hello", " ", " world", "<|im_end|>", "\xC3\xA9", " ", "1", "2", "\n\n"};
    assert_int_equal(n, sizeof want / sizeof want[0]);
    for (size_t i = 0; i < n; ++i) {
        assert_int_equal(bounds[2 * i + 1] - bounds[2 * i], strlen(want[i]));
        assert_memory_equal(norm + bounds[2 * i], want[i], strlen(want[i]));
    }
    assert_int_equal(norm_len, bounds[2 * n - 1]);
    free(norm);
    free(bounds);
    kw_tokenizer_free(q);
}

/* Long runs: one pre-token of 200k letters, 200k spaces (\s+(?!\S) backtracks), punctuation, digits. The ids must
 * decode back to the text. */
static void test_long_inputs(void **state) {
    (void)state;
    kw_tokenizer *toks[2] = {load_real("qwen3"), load_real("llama3")};
    const size_t len = 200000;
    char *text = malloc(len + 2);
    assert_non_null(text);
    static const char fill[] = {'a', ' ', '!', '7', '\n'};
    for (size_t t = 0; t < 2; ++t) {
        for (size_t k = 0; k < sizeof fill; ++k) {
            memset(text, fill[k], len);
            text[len] = 'x';
            int32_t *ids = NULL;
            size_t n = 0;
            assert_int_equal(kw_tokenizer_encode(toks[t], text, len + 1, &ids, &n), 0);
            assert_true(n > 0 && n <= len + 1);
            char *back = NULL;
            size_t back_len = 0;
            assert_int_equal(kw_tokenizer_decode(toks[t], ids, n, 0, &back, &back_len), 0);
            assert_int_equal(back_len, len + 1);
            assert_memory_equal(back, text, len + 1);
            free(back);
            free(ids);
        }
        kw_tokenizer_free(toks[t]);
    }
    free(text);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_synth_merges),   cmocka_unit_test(test_synth_added), cmocka_unit_test(test_synth_holes),
        cmocka_unit_test(test_synth_refusals), cmocka_unit_test(test_load_errors), cmocka_unit_test(test_real_lookups),
        cmocka_unit_test(test_pre_tokenize),   cmocka_unit_test(test_long_inputs), cmocka_unit_test(test_same_ids),
    };
    const int rc = cmocka_run_group_tests(tests, NULL, NULL);
    char path[256];
    snprintf(path, sizeof path, "%s/kw_test_tok_%d.json", P_tmpdir, (int)getpid());
    remove(path);
    return rc;
}
