/* test_align_offsets.c: kw_tokenizer_encode_offsets against HF's return_offsets_mapping, which the token aligner
 * needs to find message contents in a templated text. Fixtures: tests/data/tokenizer/offsets_{qwen3,llama3}.jsonl
 * (tools/make_offsets_fixtures.py), rows {"text", "ids", "offsets": [s0, e0, ...]} with character offsets; every row
 * must match exactly (ids and offsets), and the byte offsets must be the same positions. Also: the empty text, bad
 * UTF-8, NULL arguments. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_status.h"
#include "model/kw_tokenizer.h"
#include "tests/kw_test_util.h"

static kw_tokenizer *load_tok(const char *name) {
    char path[1024];
    snprintf(path, sizeof path, "%s/models/tokenizers/%s", KW_SOURCE_DIR, name);
    kw_tokenizer *tok = NULL;
    assert_int_equal(kw_tokenizer_load(path, &tok), 0);
    return tok;
}

/* Index of the code point that starts at byte b of s (b at a character boundary). */
static size_t char_index(const char *s, size_t b) {
    size_t c = 0;
    for (size_t i = 0; i < b; ++i)
        c += ((unsigned char)s[i] & 0xC0) != 0x80;
    return c;
}

static void check_file(const char *tok_name, const char *file) {
    kw_tokenizer *tok = load_tok(tok_name);
    char path[1024];
    snprintf(path, sizeof path, "%s/tokenizer/%s", KW_TEST_DATA_DIR, file);
    kw_test_jsonl rows_in;
    kw_test_jsonl_open(&rows_in, path);
    int rows = 0, failures = 0;
    for (const cJSON *row; (row = kw_test_jsonl_next(&rows_in)) != NULL;) {
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(row, "text");
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(row, "ids");
        const cJSON *offs = cJSON_GetObjectItemCaseSensitive(row, "offsets");
        assert_true(cJSON_IsString(text) && cJSON_IsArray(ids) && cJSON_IsArray(offs));
        const size_t len = strlen(text->valuestring);
        int32_t *got = NULL;
        size_t *off = NULL, *boff = NULL, n_ids = 0, n_b = 0;
        int32_t *gotb = NULL;
        assert_int_equal(kw_tokenizer_encode_offsets(tok, text->valuestring, len, 1, &got, &off, &n_ids), 0);
        assert_int_equal(kw_tokenizer_encode_offsets(tok, text->valuestring, len, 0, &gotb, &boff, &n_b), 0);
        /* the ids are those of kw_tokenizer_encode */
        int32_t *plain = NULL;
        size_t n_plain = 0;
        assert_int_equal(kw_tokenizer_encode(tok, text->valuestring, len, &plain, &n_plain), 0);
        int bad = n_ids != (size_t)cJSON_GetArraySize(ids) || 2 * n_ids != (size_t)cJSON_GetArraySize(offs) ||
                  n_plain != n_ids || n_b != n_ids;
        size_t i = 0;
        for (const cJSON *it = ids->child; it && !bad; it = it->next, ++i)
            bad = got[i] != (int32_t)it->valuedouble || plain[i] != got[i] || gotb[i] != got[i];
        i = 0;
        for (const cJSON *it = offs->child; it && !bad; it = it->next, ++i)
            bad =
                off[i] != (size_t)it->valuedouble || boff[i] > len || char_index(text->valuestring, boff[i]) != off[i];
        if (bad) {
            ++failures;
            if (failures <= 5) {
                fprintf(stderr, "%s: offsets differ for %s\n  got:", file, cJSON_PrintUnformatted(text));
                for (size_t k = 0; k < n_ids; ++k)
                    fprintf(stderr, " %d[%zu,%zu)", got[k], off[2 * k], off[2 * k + 1]);
                fprintf(stderr, "\n  want: %s %s\n", cJSON_PrintUnformatted(ids), cJSON_PrintUnformatted(offs));
            }
        }
        free(got);
        free(off);
        free(gotb);
        free(boff);
        free(plain);
        ++rows;
    }
    kw_test_jsonl_close(&rows_in);
    printf("%s: %d rows, %d failures\n", file, rows, failures);
    assert_true(rows > 900);
    assert_int_equal(failures, 0);
    kw_tokenizer_free(tok);
}

static void test_qwen3(void **state) {
    (void)state;
    check_file("qwen3", "offsets_qwen3.jsonl");
}

static void test_llama3(void **state) {
    (void)state;
    check_file("llama3", "offsets_llama3.jsonl");
}

static void test_edges(void **state) {
    (void)state;
    kw_tokenizer *tok = load_tok("qwen3");
    int32_t *ids = NULL;
    size_t *off = NULL, n = 7;
    assert_int_equal(kw_tokenizer_encode_offsets(tok, "", 0, 1, &ids, &off, &n), 0);
    assert_int_equal(n, 0);
    free(ids);
    free(off);
    assert_int_equal(kw_tokenizer_encode_offsets(tok, "a\xC3", 2, 1, &ids, &off, &n), KW_E_UTF8);
    assert_int_equal(kw_tokenizer_encode_offsets(tok, "a\xED\xA0\x80", 4, 0, &ids, &off, &n), KW_E_UTF8);
    assert_int_equal(kw_tokenizer_encode_offsets(NULL, "a", 1, 1, &ids, &off, &n), KW_E_INVALID_ARG);
    assert_int_equal(kw_tokenizer_encode_offsets(tok, NULL, 1, 1, &ids, &off, &n), KW_E_INVALID_ARG);
    assert_int_equal(kw_tokenizer_encode_offsets(tok, "a", 1, 1, NULL, &off, &n), KW_E_INVALID_ARG);
    assert_int_equal(kw_tokenizer_encode_offsets(tok, "a", 1, 1, &ids, NULL, &n), KW_E_INVALID_ARG);
    /* a 4-byte character split into two tokens: both get its whole range, in bytes and in characters */
    const char *emoji = "x\xF0\x9F\x98\x80y";
    assert_int_equal(kw_tokenizer_encode_offsets(tok, emoji, strlen(emoji), 0, &ids, &off, &n), 0);
    assert_int_equal(n, 3);
    assert_int_equal(off[2], 1);
    assert_int_equal(off[3], 5);
    free(ids);
    free(off);
    /* a composed character keeps the range of its first original character */
    const char *composed = "e\xCC\x81"
                           "a";
    assert_int_equal(kw_tokenizer_encode_offsets(tok, composed, strlen(composed), 0, &ids, &off, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(off[0], 0);
    assert_int_equal(off[1], 1);
    assert_int_equal(off[2], 3);
    assert_int_equal(off[3], 4);
    free(ids);
    free(off);
    kw_tokenizer_free(tok);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_edges),
        cmocka_unit_test(test_qwen3),
        cmocka_unit_test(test_llama3),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
