/* test_tokenizer_fixtures.c: kw_tokenizer against reference jsonl files, row by row.
 *
 * A row holds "ids" and: "text" (or "text_hex" when the text contains U+0000, which cJSON strings cannot carry), the
 * text those ids encode; "decoded" (skip_special off; absent = the text) and "decoded_skip" (skip_special on; absent =
 * "decoded"), or their _hex forms. A row {"single_decode_fnv1a64", "n_ids"} checks decode([id]) of every id at once.
 * qwen3.jsonl, llama3.jsonl and gemma3.jsonl come from the JS port (shared fixtures, equal to HF, see
 * make_tokenizer_fixtures.py); hf_*.jsonl are written by tools/make_tokenizer_fixtures.py with HF `tokenizers`, the
 * authority: hf_gemma3.jsonl holds thousands of SentencePiece-style cases, hf_spm_<variant>.jsonl the cases of the
 * small variant tokenizers in tests/data/tokenizer/spm_variants (every normalizer, pre-tokenizer, decoder and unk
 * option the SentencePiece-style loader implements). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_json.h"
#include "common/kw_status.h"
#include "model/kw_tokenizer.h"
#include "tests/kw_test_util.h"

/* The bytes of field `key` (a string) or `key`_hex (lowercase hex); returns 0 if neither is present. *out is malloc'd.
 */
static int field_bytes(const cJSON *row, const char *key, char **out, size_t *len) {
    char hex_key[64];
    snprintf(hex_key, sizeof hex_key, "%s_hex", key);
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(row, hex_key);
    if (cJSON_IsString(h)) {
        *out = kw_test_hex_decode(h->valuestring, len);
        return 1;
    }
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(row, key);
    if (!cJSON_IsString(s)) return 0;
    *len = strlen(s->valuestring);
    *out = malloc(*len + 1);
    assert_non_null(*out);
    memcpy(*out, s->valuestring, *len + 1);
    return 1;
}

static int32_t *field_ids(const cJSON *row, const char *key, size_t *n) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(row, key);
    if (!cJSON_IsArray(a)) return NULL;
    *n = (size_t)cJSON_GetArraySize(a);
    int32_t *ids = malloc((*n + 1) * sizeof *ids);
    assert_non_null(ids);
    size_t i = 0;
    for (const cJSON *it = a->child; it; it = it->next) {
        int64_t v;
        assert_int_equal(kw_json_to_i64(it, INT32_MIN, INT32_MAX, &v), 0);
        ids[i++] = (int32_t)v;
    }
    return ids;
}

/* FNV-1a 64 over decode([id]) of every id, each preceded by its length (4 bytes, little-endian). */
static uint64_t single_decode_hash(const kw_tokenizer *tok) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (int32_t id = 0; id < kw_tokenizer_vocab_size(tok); ++id) {
        char *text = NULL;
        size_t len = 0;
        assert_int_equal(kw_tokenizer_decode(tok, &id, 1, 0, &text, &len), 0);
        uint8_t pre[4] = {(uint8_t)len, (uint8_t)(len >> 8), (uint8_t)(len >> 16), (uint8_t)(len >> 24)};
        for (size_t i = 0; i < 4; ++i)
            h = (h ^ pre[i]) * 0x100000001b3ull;
        for (size_t i = 0; i < len; ++i)
            h = (h ^ (uint8_t)text[i]) * 0x100000001b3ull;
        free(text);
    }
    return h;
}

static void check_decode(const kw_tokenizer *tok, const cJSON *row, const int32_t *ids, size_t n, const char *key,
                         const char *fallback1, const char *fallback2, int skip, size_t lineno, size_t *failures) {
    char *want = NULL;
    size_t want_len = 0;
    if (!field_bytes(row, key, &want, &want_len) && !(fallback1 && field_bytes(row, fallback1, &want, &want_len)) &&
        !(fallback2 && field_bytes(row, fallback2, &want, &want_len)))
        return;
    char *got = NULL;
    size_t got_len = 0;
    const int rc = kw_tokenizer_decode(tok, ids, n, skip, &got, &got_len);
    if (rc != 0 || got_len != want_len || memcmp(got, want, want_len) != 0) {
        print_error("line %zu: %s differs (rc %d: %s)\n  want: %.200s\n  got:  %.200s\n", lineno, key, rc,
                    kw_error_detail(), want, got ? got : "(null)");
        ++*failures;
    }
    free(got);
    free(want);
}

/* implicit: absent "decoded"/"decoded_skip" mean the text/"decoded" (hf_*.jsonl); otherwise absent = unchecked. */
static void run_fixture(const char *tokenizer_dir, const char *fixture, int implicit) {
    char path[1024];
    kw_tokenizer *tok = NULL;
    if (tokenizer_dir[0] == '/')
        snprintf(path, sizeof path, "%s", tokenizer_dir);
    else
        snprintf(path, sizeof path, "%s/%s", KW_SOURCE_DIR, tokenizer_dir);
    const int lrc = kw_tokenizer_load(path, &tok);
    if (lrc != 0) print_error("load %s: %s\n", path, kw_error_detail());
    assert_int_equal(lrc, 0);
    snprintf(path, sizeof path, "%s/tokenizer/%s", KW_TEST_DATA_DIR, fixture);
    kw_test_jsonl rows;
    kw_test_jsonl_open(&rows, path);
    size_t failures = 0, checked = 0;
    for (const cJSON *row; (row = kw_test_jsonl_next(&rows)) != NULL;) {
        const size_t lineno = rows.lineno;
        size_t n_want = 0;
        int32_t *want = field_ids(row, "ids", &n_want);
        char *text = NULL;
        size_t text_len = 0;
        if (field_bytes(row, "text", &text, &text_len)) {
            assert_non_null(want);
            int32_t *ids = NULL;
            size_t n = 0;
            const int rc = kw_tokenizer_encode(tok, text, text_len, &ids, &n);
            if (rc != 0 || n != n_want || memcmp(ids, want, n * sizeof *ids) != 0) {
                print_error("line %zu: ids differ (rc %d: %s) for %.200s\n", lineno, rc, kw_error_detail(), text);
                ++failures;
            }
            free(ids);
            free(text);
            ++checked;
        }
        if (want) {
            check_decode(tok, row, want, n_want, "decoded", implicit ? "text" : NULL, NULL, 0, lineno, &failures);
            check_decode(tok, row, want, n_want, "decoded_skip", implicit ? "decoded" : NULL, implicit ? "text" : NULL,
                         1, lineno, &failures);
        }
        const cJSON *hash = cJSON_GetObjectItemCaseSensitive(row, "single_decode_fnv1a64");
        if (cJSON_IsString(hash)) {
            int64_t n_ids = 0;
            assert_int_equal(kw_json_get_i64(row, "n_ids", 0, INT32_MAX, &n_ids, "row"), 0);
            assert_int_equal(kw_tokenizer_vocab_size(tok), n_ids);
            char got_hex[17];
            snprintf(got_hex, sizeof got_hex, "%016llx", (unsigned long long)single_decode_hash(tok));
            if (strcmp(got_hex, hash->valuestring) != 0) {
                print_error("line %zu: decode([id]) over all %lld ids hashes to %s, HF to %s\n", lineno,
                            (long long)n_ids, got_hex, hash->valuestring);
                ++failures;
            }
            ++checked;
        }
        free(want);
    }
    const size_t n_rows = rows.lineno;
    kw_test_jsonl_close(&rows);
    kw_tokenizer_free(tok);
    assert_true(n_rows > 0);
    assert_int_equal(failures, 0);
    assert_true(checked > 0);
}

static void test_js_qwen3(void **state) {
    (void)state;
    run_fixture("models/tokenizers/qwen3", "qwen3.jsonl", 0);
}

static void test_js_llama3(void **state) {
    (void)state;
    run_fixture("models/tokenizers/llama3", "llama3.jsonl", 0);
}

static void test_hf_qwen3(void **state) {
    (void)state;
    run_fixture("models/tokenizers/qwen3", "hf_qwen3.jsonl", 1);
}

static void test_hf_llama3(void **state) {
    (void)state;
    run_fixture("models/tokenizers/llama3", "hf_llama3.jsonl", 1);
}

/* SmolLM2's tokenizer built from GGUF metadata (tests/data/tokenizer/smollm2_tokenizer.gguf, the tokenizer keys of the
 * real file) against HF tokenizers (tools/make_gguf_fixtures.py tokenizer). */
static void test_hf_smollm2_gguf(void **state) {
    (void)state;
    run_fixture("tests/data/tokenizer/smollm2_tokenizer.gguf", "hf_smollm2.jsonl", 1);
}

/* Gemma 3's SentencePiece tokenizer built from GGUF metadata (tests/data/tokenizer/gemma3_tokenizer.gguf, the
 * tokenizer keys of gemma-3-270m-q4_k_m.gguf, 6.5 MB) against HF `tokenizers` on Gemma 3's tokenizer.json: thousands
 * of texts and decodes, and decode([id]) of all 262144 ids (tools/make_gguf_fixtures.py tokenizer --gemma3). */
static void test_hf_gemma3_gguf(void **state) {
    (void)state;
    run_fixture("tests/data/tokenizer/gemma3_tokenizer.gguf", "hf_gemma3_gguf.jsonl", 1);
}

static void test_js_gemma3(void **state) {
    (void)state;
    run_fixture("models/tokenizers/gemma3", "gemma3.jsonl", 0);
}

static void test_hf_gemma3(void **state) {
    (void)state;
    run_fixture("models/tokenizers/gemma3", "hf_gemma3.jsonl", 1);
}

static void test_hf_spm_variants(void **state) {
    (void)state;
    static const char *const variants[] = {
        "meta_first_split", "meta_always_nosplit", "meta_first_nosplit", "meta_never_split", "meta_legacy",
        "prepend_replace",  "unk_fused",           "unk_unfused",        "ignore_merges",
    };
    for (size_t i = 0; i < sizeof variants / sizeof variants[0]; ++i) {
        char dir[512], fixture[128];
        snprintf(dir, sizeof dir, "%s/tokenizer/spm_variants/%s", KW_TEST_DATA_DIR, variants[i]);
        snprintf(fixture, sizeof fixture, "hf_spm_%s.jsonl", variants[i]);
        print_message("  %s\n", variants[i]);
        run_fixture(dir, fixture, 1);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_js_qwen3),        cmocka_unit_test(test_js_llama3),
        cmocka_unit_test(test_js_gemma3),       cmocka_unit_test(test_hf_qwen3),
        cmocka_unit_test(test_hf_llama3),       cmocka_unit_test(test_hf_gemma3),
        cmocka_unit_test(test_hf_spm_variants), cmocka_unit_test(test_hf_smollm2_gguf),
        cmocka_unit_test(test_hf_gemma3_gguf),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
