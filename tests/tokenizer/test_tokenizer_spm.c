/* test_tokenizer_spm.c: the SentencePiece-array constructor (kw_tokenizer_from_spm), which the GGUF "llama"
 * tokenizer model will use, against the tokenizer.json path and HF.
 *
 * The arrays come from tokenizer.json itself, as a GGUF would carry them: the pieces by id, the types (added tokens
 * are control pieces, <unk> the unknown one, <0xXX> bytes, the rest normal) and scores that order the normal pieces by
 * id (SentencePiece's BPE scores do; tools/make_tokenizer_fixtures.py --check-gguf showed that both these and the
 * real GGUF scores give Gemma 3's merges exactly). White-box: the merge table derived from the scores must hold every
 * merge of tokenizer.json with the same rank, and nothing else; then the thousands of HF cases of hf_gemma3.jsonl
 * must encode and decode the same. add_space_prefix is checked against HF on the meta_first_nosplit variant (what
 * LlamaConverter writes), and the constructor's rules (spaces read as U+2581, control/user-defined pieces at score
 * 0, refusals) on hand-made vocabularies. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_json.h"
#include "common/kw_status.h"
#include "model/kw_tokenizer.h"
#include "model/kw_tokenizer_impl.h"
#include "tests/kw_test_util.h"

/* A vocabulary as arrays, derived from a tokenizer.json. */
typedef struct arrays {
    int32_t n;
    char **tokens;
    float *scores;
    int32_t *types;
    uint8_t *special;
} arrays;

static void arrays_free(arrays *a) {
    for (int32_t i = 0; a->tokens && i < a->n; ++i)
        free(a->tokens[i]);
    free(a->tokens);
    free(a->scores);
    free(a->types);
    free(a->special);
}

static int is_byte_piece(const char *p) {
    return strlen(p) == 6 && strncmp(p, "<0x", 3) == 0 && p[5] == '>';
}

/* Pieces by id (the model vocabulary; added tokens outside it are left out), types and scores as described at the
 * top. */
static void arrays_from_json(const cJSON *root, arrays *a) {
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    const cJSON *unk = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    a->n = cJSON_GetArraySize(vocab);
    a->tokens = calloc((size_t)a->n, sizeof *a->tokens);
    a->scores = calloc((size_t)a->n, sizeof *a->scores);
    a->types = calloc((size_t)a->n, sizeof *a->types);
    a->special = calloc((size_t)a->n, 1);
    assert_true(a->tokens && a->scores && a->types && a->special);
    for (const cJSON *it = vocab->child; it; it = it->next) {
        const int id = it->valueint;
        assert_true(id >= 0 && id < a->n && !a->tokens[id]);
        a->tokens[id] = strdup(it->string);
        a->types[id] = is_byte_piece(it->string) ? KW_SPM_TOKEN_BYTE : KW_SPM_TOKEN_NORMAL;
    }
    for (const cJSON *it = added->child; it; it = it->next) {
        const int id = cJSON_GetObjectItemCaseSensitive(it, "id")->valueint;
        if (id >= a->n) continue; /* <image_soft_token>: an added token outside the SentencePiece vocabulary */
        a->types[id] = KW_SPM_TOKEN_CONTROL;
        a->special[id] = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(it, "special"));
        if (cJSON_IsString(unk) && strcmp(a->tokens[id], unk->valuestring) == 0) a->types[id] = KW_SPM_TOKEN_UNKNOWN;
    }
    int32_t rank = 0;
    for (int32_t id = 0; id < a->n; ++id)
        a->scores[id] = a->types[id] == KW_SPM_TOKEN_NORMAL ? -(float)rank++ : 0.0f;
}

static kw_tokenizer *from_arrays(const arrays *a, int add_space_prefix) {
    const kw_tokenizer_spm_vocab v = {.n_tokens = a->n,
                                      .tokens = (const char *const *)a->tokens,
                                      .scores = a->scores,
                                      .types = a->types,
                                      .special = a->special,
                                      .add_space_prefix = add_space_prefix};
    kw_tokenizer *tok = NULL;
    const int rc = kw_tokenizer_from_spm(&v, &tok);
    if (rc != 0) fail_msg("kw_tokenizer_from_spm: %s", kw_error_detail());
    return tok;
}

static cJSON *load_json(const char *path) {
    cJSON *root = NULL;
    const int rc = kw_json_load_file(path, (size_t)256 << 20, &root);
    if (rc != 0) fail_msg("%s: %s", path, kw_error_detail());
    return root;
}

static size_t count_merges(const kw_tokenizer *tok) {
    size_t n = 0;
    for (size_t i = 0; i <= tok->merge_mask; ++i)
        n += tok->merges[i].key != UINT64_MAX;
    return n;
}

/* Every merge of the tokenizer.json is in the derived table with its rank and result, and there are no others. */
static void check_merges(const cJSON *root, const kw_tokenizer *json_tok, const kw_tokenizer *arr_tok) {
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "model"), "merges");
    int32_t rank = 0;
    for (const cJSON *m = merges->child; m; m = m->next, ++rank) {
        const char *l = m->child->valuestring, *r = m->child->next->valuestring;
        const int32_t li = kw__tok_vocab_find(arr_tok, l, strlen(l)), ri = kw__tok_vocab_find(arr_tok, r, strlen(r));
        const kw_tok_merge *want = kw__tok_merge_find(json_tok, li, ri), *got = kw__tok_merge_find(arr_tok, li, ri);
        if (!want || !got || got->rank != rank || got->new_id != want->new_id)
            fail_msg("merge %d (%s, %s): derived rank %d", (int)rank, l, r, got ? (int)got->rank : -1);
    }
    assert_int_equal(count_merges(arr_tok), (size_t)rank);
    assert_int_equal(count_merges(json_tok), (size_t)rank);
    print_message("    %d merges derived from the scores, all with tokenizer.json's ranks\n", (int)rank);
}

/* The cases of an hf_*.jsonl fixture through tok: ids and both decodes. Rows naming a token the arrays leave out
 * (skip_text / ids >= max_id) are skipped. Returns the number of rows compared. */
static size_t check_cases(const kw_tokenizer *tok, const char *fixture, const char *skip_text, int32_t max_id) {
    char path[512];
    snprintf(path, sizeof path, "%s/tokenizer/%s", KW_TEST_DATA_DIR, fixture);
    kw_test_jsonl rows;
    kw_test_jsonl_open(&rows, path);
    size_t checked = 0, failures = 0;
    for (const cJSON *row; (row = kw_test_jsonl_next(&rows)) != NULL;) {
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(row, "ids"), *text = NULL;
        if (!cJSON_IsArray(ids)) continue;
        const size_t n = (size_t)cJSON_GetArraySize(ids);
        int32_t *want = malloc((n + 1) * sizeof *want);
        assert_non_null(want);
        size_t k = 0;
        int skip = 0;
        for (const cJSON *it = ids->child; it; it = it->next) {
            want[k] = (int32_t)it->valuedouble;
            skip |= want[k++] >= max_id;
        }
        char *hex = NULL, *t = NULL;
        size_t t_len = 0;
        const cJSON *text_hex = cJSON_GetObjectItemCaseSensitive(row, "text_hex");
        text = cJSON_GetObjectItemCaseSensitive(row, "text");
        if (cJSON_IsString(text_hex)) {
            t = hex = kw_test_hex_decode(text_hex->valuestring, &t_len);
        } else if (cJSON_IsString(text)) {
            t = text->valuestring;
            t_len = strlen(t);
        }
        if (t && skip_text && strstr(t, skip_text)) skip = 1;
        if (!skip && t) {
            int32_t *got = NULL;
            size_t m = 0;
            const int rc = kw_tokenizer_encode(tok, t, t_len, &got, &m);
            if (rc != 0 || m != n || memcmp(got, want, n * sizeof *got) != 0) {
                print_error("line %zu: ids differ for %.120s\n", rows.lineno, t);
                ++failures;
            }
            free(got);
        }
        if (!skip) { /* decode, skip_special off and on */
            for (int sk = 0; sk < 2; ++sk) {
                const char *keys[3] = {sk ? "decoded_skip" : "decoded", sk ? "decoded" : "text", "text"};
                const char *w = NULL;
                for (int i = 0; i < 3 && !w; ++i) {
                    const cJSON *f = cJSON_GetObjectItemCaseSensitive(row, keys[i]);
                    if (cJSON_IsString(f)) w = f->valuestring;
                    if (cJSON_GetObjectItemCaseSensitive(row, "text_hex") ||
                        cJSON_GetObjectItemCaseSensitive(row, sk ? "decoded_skip_hex" : "decoded_hex"))
                        w = NULL, i = 3; /* NUL-holding rows: covered by test_tokenizer_fixtures */
                }
                if (!w) continue;
                char *d = NULL;
                size_t d_len = 0;
                assert_int_equal(kw_tokenizer_decode(tok, want, n, sk, &d, &d_len), 0);
                if (d_len != strlen(w) || memcmp(d, w, d_len) != 0) {
                    print_error("line %zu: decode (skip %d) differs: %.80s vs %.80s\n", rows.lineno, sk, d, w);
                    ++failures;
                }
                free(d);
            }
            ++checked;
        }
        free(hex);
        free(want);
    }
    kw_test_jsonl_close(&rows);
    assert_int_equal(failures, 0);
    return checked;
}

/* Gemma 3's 262144 pieces as arrays: the same merges, ids and decodes as its tokenizer.json. */
static void test_gemma3_arrays(void **state) {
    (void)state;
    cJSON *root = load_json(KW_SOURCE_DIR "/models/tokenizers/gemma3/tokenizer.json");
    arrays a = {0};
    arrays_from_json(root, &a);
    assert_int_equal(a.n, 262144);
    kw_tokenizer *json_tok = NULL, *arr_tok = from_arrays(&a, 0);
    assert_int_equal(kw_tokenizer_load(KW_SOURCE_DIR "/models/tokenizers/gemma3", &json_tok), 0);
    assert_int_equal(kw_tokenizer_vocab_size(arr_tok), 262144);
    assert_int_equal(kw_tokenizer_vocab_size(json_tok), 262145);
    assert_true(kw_tokenizer_same_ids(json_tok, arr_tok));
    check_merges(root, json_tok, arr_tok);
    for (int32_t id = 0; id < a.n; ++id)
        assert_int_equal(kw_tokenizer_is_special(arr_tok, id), kw_tokenizer_is_special(json_tok, id));
    const size_t n = check_cases(arr_tok, "hf_gemma3.jsonl", "<image_soft_token>", a.n);
    print_message("    %zu hf_gemma3.jsonl cases identical\n", n);
    assert_true(n > 3000);
    kw_tokenizer_free(arr_tok);
    kw_tokenizer_free(json_tok);
    arrays_free(&a);
    cJSON_Delete(root);
}

/* add_space_prefix is LlamaConverter's tokenizer.json: Metaspace(prepend_scheme first, no split) and a decoder that
 * strips one leading space. */
static void test_add_space_prefix(void **state) {
    (void)state;
    cJSON *root = load_json(KW_TEST_DATA_DIR "/tokenizer/spm_variants/meta_first_nosplit/tokenizer.json");
    arrays a = {0};
    arrays_from_json(root, &a);
    kw_tokenizer *tok = from_arrays(&a, 1);
    const size_t n = check_cases(tok, "hf_spm_meta_first_nosplit.jsonl", NULL, a.n);
    print_message("    %zu hf_spm_meta_first_nosplit.jsonl cases identical\n", n);
    assert_true(n > 500);
    kw_tokenizer_free(tok);
    arrays_free(&a);
    cJSON_Delete(root);
}

/* Appends the UTF-8 of cp at out, adding its length to *n. */
static void kw_spm_str_put(char *out, size_t *n, uint32_t cp) {
    uint8_t *o = (uint8_t *)out;
    size_t k;
    if (cp < 0x80) {
        o[0] = (uint8_t)cp;
        k = 1;
    } else if (cp < 0x800) {
        o[0] = (uint8_t)(0xC0 | (cp >> 6));
        o[1] = (uint8_t)(0x80 | (cp & 0x3F));
        k = 2;
    } else if (cp < 0x10000) {
        o[0] = (uint8_t)(0xE0 | (cp >> 12));
        o[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (uint8_t)(0x80 | (cp & 0x3F));
        k = 3;
    } else {
        o[0] = (uint8_t)(0xF0 | (cp >> 18));
        o[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
        o[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        o[3] = (uint8_t)(0x80 | (cp & 0x3F));
        k = 4;
    }
    *n += k;
}

/* A hand-made vocabulary: 256 byte pieces, then the listed pieces. */
typedef struct small {
    const char *tokens[300];
    float scores[300];
    int32_t types[300];
    int32_t n;
    char bytes[256][8];
} small;

static void small_init(small *s) {
    memset(s, 0, sizeof *s);
    s->tokens[0] = "<unk>";
    s->types[0] = KW_SPM_TOKEN_UNKNOWN;
    for (int b = 0; b < 256; ++b) {
        snprintf(s->bytes[b], sizeof s->bytes[b], "<0x%02X>", b);
        s->tokens[1 + b] = s->bytes[b];
        s->types[1 + b] = KW_SPM_TOKEN_BYTE;
    }
    s->n = 257;
}

static int32_t small_add(small *s, const char *piece, float score, int32_t type) {
    s->tokens[s->n] = piece;
    s->scores[s->n] = score;
    s->types[s->n] = type;
    return s->n++;
}

static kw_tokenizer *small_build(const small *s) {
    const kw_tokenizer_spm_vocab v = {.n_tokens = s->n, .tokens = s->tokens, .scores = s->scores, .types = s->types};
    kw_tokenizer *tok = NULL;
    const int rc = kw_tokenizer_from_spm(&v, &tok);
    if (rc != 0) fail_msg("kw_tokenizer_from_spm: %s", kw_error_detail());
    return tok;
}

static void expect(const kw_tokenizer *tok, const char *text, const int32_t *want, size_t n_want) {
    int32_t *ids = NULL;
    size_t n = 0;
    assert_int_equal(kw_tokenizer_encode(tok, text, strlen(text), &ids, &n), 0);
    if (n != n_want || memcmp(ids, want, n * sizeof *ids) != 0) {
        print_error("ids of \"%s\":", text);
        for (size_t i = 0; i < n; ++i)
            print_error(" %d", ids[i]);
        print_error("\n");
        fail();
    }
    free(ids);
}

#define IDS(...) ((const int32_t[]){__VA_ARGS__}), sizeof((const int32_t[]){__VA_ARGS__}) / sizeof(int32_t)

static void test_rules(void **state) {
    (void)state;
    small s;
    small_init(&s);
    const int32_t a = small_add(&s, "a", -1, KW_SPM_TOKEN_NORMAL), b = small_add(&s, "b", -2, KW_SPM_TOKEN_NORMAL);
    const int32_t c = small_add(&s, "c", -3, KW_SPM_TOKEN_NORMAL), sp = small_add(&s, "\xE2\x96\x81", -4, 1);
    const int32_t ab = small_add(&s, "ab", -5, KW_SPM_TOKEN_NORMAL), bc = small_add(&s, "bc", -6, KW_SPM_TOKEN_NORMAL);
    kw_tokenizer *tok = small_build(&s);
    expect(tok, "abc", IDS(ab, c)); /* ab outranks bc */
    expect(tok, "bb", IDS(b, b));
    expect(tok, "a c", IDS(a, sp, c));
    /* "é" is not a piece: its two UTF-8 bytes, as <0xC3> <0xA9> */
    expect(tok, "aé", IDS(a, 1 + 0xC3, 1 + 0xA9));
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(kw_tokenizer_decode(tok, IDS(a, sp, 1 + 0xC3, 1 + 0xA9, sp), 0, &text, &len), 0);
    assert_string_equal(text, "a é "); /* Replace, ByteFallback, Fuse; no space stripped */
    free(text);
    kw_tokenizer_free(tok);

    /* a user-defined "bc" with llama.cpp's -1000: ranked at 0, so bc now merges first; and it is an added token */
    s.types[bc] = KW_SPM_TOKEN_USER_DEFINED;
    s.scores[bc] = -1000;
    tok = small_build(&s);
    expect(tok, "abc", IDS(a, bc));
    expect(tok, "bcbc", IDS(bc, bc));
    assert_false(kw_tokenizer_is_special(tok, bc)); /* user-defined: not special unless told */
    assert_true(kw_tokenizer_is_special(tok, 0));   /* unknown: special */
    kw_tokenizer_free(tok);

    /* a user-defined piece written with spaces (llama.cpp's spelling of Gemma's whitespace runs) is "▁▁" */
    small_init(&s);
    const int32_t sp2 = small_add(&s, "  ", 0, KW_SPM_TOKEN_USER_DEFINED);
    const int32_t sp1 = small_add(&s, " ", 0, KW_SPM_TOKEN_USER_DEFINED), x = small_add(&s, "x", -1, 1);
    tok = small_build(&s);
    expect(tok, "x  x", IDS(x, sp2, x));
    expect(tok, "x x", IDS(x, sp1, x));
    assert_int_equal(kw_tokenizer_token_id(tok, "\xE2\x96\x81\xE2\x96\x81"), sp2);
    kw_tokenizer_free(tok);

    /* no byte pieces and an unknown character: the unk, consecutive ones fused */
    const char *tokens[] = {"<unk>", "a"};
    const float scores[] = {0, -1};
    const int32_t types[] = {KW_SPM_TOKEN_UNKNOWN, KW_SPM_TOKEN_NORMAL};
    const kw_tokenizer_spm_vocab v = {.n_tokens = 2, .tokens = tokens, .scores = scores, .types = types};
    assert_int_equal(kw_tokenizer_from_spm(&v, &tok), 0);
    expect(tok, "aéé a", IDS(1, 0, 1)); /* "éé▁" is one fused unk */
    kw_tokenizer_free(tok);
}

/* Gemma 3's tokenizer loses nothing but the spelling of "▁" (encoded as a space): decode(encode(text)) == text for
 * random UTF-8 over all planes (byte fallback covers what the vocabulary lacks), added tokens and whitespace runs
 * included. A property check beyond the fixtures, with a fixed seed. */
static void test_round_trip(void **state) {
    (void)state;
    kw_tokenizer *tok = NULL;
    assert_int_equal(kw_tokenizer_load(KW_SOURCE_DIR "/models/tokenizers/gemma3", &tok), 0);
    static const char *const pieces[] = {" ", "  ", "\n", "\t\t", "<start_of_turn>", "<bos>", "<unused7>", "a", "Z"};
    uint64_t x = 0x9E3779B97F4A7C15ull;
    char text[512];
    for (int iter = 0; iter < 3000; ++iter) {
        size_t n = 0;
        const int parts = 1 + (int)(x % 24);
        for (int p = 0; p < parts && n + 32 < sizeof text; ++p) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17; /* xorshift64 */
            if (x % 4 == 0) {
                const char *q = pieces[(x >> 8) % (sizeof pieces / sizeof pieces[0])];
                memcpy(text + n, q, strlen(q));
                n += strlen(q);
                continue;
            }
            uint32_t cp = (uint32_t)((x >> 11) % ((x >> 40) % 3 == 0 ? 0x110000u : 0x3000u));
            if (cp == 0 || (cp >= 0xD800 && cp <= 0xDFFF) || cp == 0x2581) cp = 'x';
            kw_spm_str_put(text + n, &n, cp);
        }
        int32_t *ids = NULL;
        size_t m = 0, len = 0;
        char *back = NULL;
        assert_int_equal(kw_tokenizer_encode(tok, text, n, &ids, &m), 0);
        assert_int_equal(kw_tokenizer_decode(tok, ids, m, 0, &back, &len), 0);
        if (len != n || memcmp(back, text, n) != 0) fail_msg("round trip of %.*s gave %s", (int)n, text, back);
        free(ids);
        free(back);
    }
    kw_tokenizer_free(tok);
}

static void test_refusals(void **state) {
    (void)state;
    const char *tokens[] = {"<unk>", "a", "b"};
    float scores[] = {0, -1, -2};
    int32_t types[] = {KW_SPM_TOKEN_UNKNOWN, KW_SPM_TOKEN_NORMAL, KW_SPM_TOKEN_NORMAL};
    kw_tokenizer_spm_vocab v = {.n_tokens = 3, .tokens = tokens, .scores = scores, .types = types};
    kw_tokenizer *tok = (kw_tokenizer *)1;
    assert_int_equal(kw_tokenizer_from_spm(NULL, &tok), KW_E_INVALID_ARG);
    assert_int_equal(kw_tokenizer_from_spm(&v, NULL), KW_E_INVALID_ARG);
    v.n_tokens = 0;
    assert_int_equal(kw_tokenizer_from_spm(&v, &tok), KW_E_LIMIT);
    assert_null(tok);
    v.n_tokens = 3;
    v.types = NULL;
    assert_int_equal(kw_tokenizer_from_spm(&v, &tok), KW_E_INVALID_ARG);
    v.types = types;
    scores[2] = NAN;
    assert_int_equal(kw_tokenizer_from_spm(&v, &tok), KW_E_TOKENIZER);
    scores[2] = -2;
    types[2] = 7;
    assert_int_equal(kw_tokenizer_from_spm(&v, &tok), KW_E_TOKENIZER);
    types[2] = KW_SPM_TOKEN_UNKNOWN; /* two unknown pieces */
    assert_int_equal(kw_tokenizer_from_spm(&v, &tok), KW_E_TOKENIZER);
    types[2] = KW_SPM_TOKEN_NORMAL;
    tokens[2] = "";
    assert_int_equal(kw_tokenizer_from_spm(&v, &tok), KW_E_TOKENIZER);
    tokens[2] = "\xC3";
    assert_int_equal(kw_tokenizer_from_spm(&v, &tok), KW_E_TOKENIZER);
    assert_non_null(strstr(kw_error_detail(), "UTF-8"));
    tokens[2] = "b\0c";
    const size_t lens[] = {5, 1, 3};
    v.token_lens = lens;
    assert_int_equal(kw_tokenizer_from_spm(&v, &tok), KW_E_TOKENIZER);
    assert_non_null(strstr(kw_error_detail(), "NUL"));
    tokens[2] = "bc";
    const size_t lens2[] = {5, 1, 1}; /* lengths win over the terminator: "b" */
    v.token_lens = lens2;
    assert_int_equal(kw_tokenizer_from_spm(&v, &tok), 0);
    assert_int_equal(kw_tokenizer_token_id(tok, "b"), 2);
    kw_tokenizer_free(tok);
    /* SentencePiece-style tokenizers have no offsets */
    v.token_lens = NULL;
    assert_int_equal(kw_tokenizer_from_spm(&v, &tok), 0);
    int32_t *ids = NULL;
    size_t *off = NULL, n = 0;
    assert_int_equal(kw_tokenizer_encode_offsets(tok, "ab", 2, 0, &ids, &off, &n), KW_E_UNSUPPORTED);
    kw_tokenizer_free(tok);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gemma3_arrays), cmocka_unit_test(test_add_space_prefix), cmocka_unit_test(test_rules),
        cmocka_unit_test(test_round_trip),    cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
