/* test_tokenizer_gguf.c: the GGUF tokenizer path for the "qwen2" and "llama-bpe" pre-tokenizers. The real Qwen3 and
 * Llama-3 tokenizer.json files (models/tokenizers) are written out as GGUF metadata the way llama.cpp's converter
 * writes it (tokens by id, CONTROL for special added tokens, USER_DEFINED for the others, merges, tokenizer.ggml.pre),
 * then kw_tokenizer_load_gguf must give the same tokenizer as kw_tokenizer_load on the tokenizer.json (which
 * test_tokenizer_fixtures checks against HF): every id the same token, and the same ids and decodes on every text of
 * the HF fixtures (tests/data/tokenizer/hf_*.jsonl). SmolLM2's "smollm" pre-tokenizer is checked against HF directly
 * (test_tokenizer_fixtures, test_hf_smollm2_gguf). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/kw_file.h"
#include "common/kw_json.h"
#include "common/kw_status.h"
#include "model/kw_tokenizer.h"
#include "tests/kw_test_util.h"
#include "tests/model/gguf_build.h"

/* Writes the GGUF metadata of tokenizer.json at json_path (pre names the pre-tokenizer) to gguf_path. */
static void write_tokenizer_gguf(const char *json_path, const char *pre, const char *gguf_path) {
    cJSON *root = NULL;
    assert_int_equal(kw_json_load_file(json_path, 64u << 20, &root), 0);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    int64_t n = 0;
    for (const cJSON *it = vocab->child; it; it = it->next)
        if ((int64_t)it->valuedouble + 1 > n) n = (int64_t)it->valuedouble + 1;
    for (const cJSON *it = added->child; it; it = it->next) {
        const int64_t id = (int64_t)cJSON_GetObjectItemCaseSensitive(it, "id")->valuedouble;
        if (id + 1 > n) n = id + 1;
    }
    const char **tokens = calloc((size_t)n, sizeof *tokens);
    int32_t *types = calloc((size_t)n, sizeof *types);
    assert_true(tokens && types);
    for (const cJSON *it = vocab->child; it; it = it->next) {
        tokens[(int64_t)it->valuedouble] = it->string;
        types[(int64_t)it->valuedouble] = 1;
    }
    for (const cJSON *it = added->child; it; it = it->next) {
        const int64_t id = (int64_t)cJSON_GetObjectItemCaseSensitive(it, "id")->valuedouble;
        tokens[id] = cJSON_GetObjectItemCaseSensitive(it, "content")->valuestring;
        types[id] = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(it, "special")) ? 3 : 4;
    }
    kw_buf b = KW_BUF_INIT;
    gb_u32(&b, 0x46554747u);
    gb_u32(&b, 3);
    gb_u64(&b, 0); /* tensors */
    gb_u64(&b, 6); /* metadata entries */
    gb_key(&b, "general.architecture", 8);
    gb_str(&b, "qwen3", 5);
    gb_key(&b, "tokenizer.ggml.model", 8);
    gb_str(&b, "gpt2", 4);
    gb_key(&b, "tokenizer.ggml.pre", 8);
    gb_str(&b, pre, strlen(pre));
    gb_key(&b, "tokenizer.ggml.tokens", 9);
    gb_u32(&b, 8);
    gb_u64(&b, (uint64_t)n);
    for (int64_t i = 0; i < n; ++i) {
        char pad[32];
        const char *t = tokens[i];
        if (!t) { /* a hole in the id space: llama.cpp writes a placeholder */
            snprintf(pad, sizeof pad, "[PAD%lld]", (long long)i);
            t = pad;
            types[i] = 5;
        }
        gb_str(&b, t, strlen(t));
    }
    gb_key(&b, "tokenizer.ggml.token_type", 9);
    gb_u32(&b, 5);
    gb_u64(&b, (uint64_t)n);
    for (int64_t i = 0; i < n; ++i)
        gb_u32(&b, (uint32_t)types[i]);
    gb_key(&b, "tokenizer.ggml.merges", 9);
    gb_u32(&b, 8);
    gb_u64(&b, (uint64_t)cJSON_GetArraySize(merges));
    for (const cJSON *it = merges->child; it; it = it->next) {
        char buf[1024];
        if (cJSON_IsString(it))
            snprintf(buf, sizeof buf, "%s", it->valuestring);
        else
            snprintf(buf, sizeof buf, "%s %s", it->child->valuestring, it->child->next->valuestring);
        gb_str(&b, buf, strlen(buf));
    }
    assert_int_equal(b.status, 0);
    assert_int_equal(kw_file_write_all(gguf_path, b.data, b.len), 0);
    kw_buf_free(&b);
    free(tokens);
    free(types);
    cJSON_Delete(root);
}

static void compare(const char *name, const char *pre) {
    char json[1024], fixture[1024], gguf[] = "/tmp/kw_tok_gguf_XXXXXX";
    snprintf(json, sizeof json, "%s/models/tokenizers/%s/tokenizer.json", KW_SOURCE_DIR, name);
    snprintf(fixture, sizeof fixture, "%s/tokenizer/hf_%s.jsonl", KW_TEST_DATA_DIR, name);
    const int fd = mkstemp(gguf);
    assert_true(fd >= 0);
    close(fd);
    write_tokenizer_gguf(json, pre, gguf);
    kw_tokenizer *a = NULL, *g = NULL;
    assert_int_equal(kw_tokenizer_load(json, &a), 0);
    const int rc = kw_tokenizer_load(gguf, &g);
    if (rc) print_error("%s\n", kw_error_detail());
    assert_int_equal(rc, 0);
    unlink(gguf);
    assert_int_equal(kw_tokenizer_vocab_size(a), kw_tokenizer_vocab_size(g));
    assert_true(kw_tokenizer_same_ids(a, g));
    kw_test_jsonl rows;
    kw_test_jsonl_open(&rows, fixture);
    size_t texts = 0;
    for (const cJSON *row; (row = kw_test_jsonl_next(&rows)) != NULL;) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(row, "text");
        if (!cJSON_IsString(t)) continue;
        int32_t *ia = NULL, *ig = NULL;
        size_t na = 0, ng = 0;
        const size_t len = strlen(t->valuestring);
        assert_int_equal(kw_tokenizer_encode(a, t->valuestring, len, &ia, &na), 0);
        assert_int_equal(kw_tokenizer_encode(g, t->valuestring, len, &ig, &ng), 0);
        if (na != ng || memcmp(ia, ig, na * sizeof *ia) != 0)
            fail_msg("%s line %zu: the GGUF tokenizer encodes differently", name, rows.lineno);
        for (int skip = 0; skip < 2; ++skip) {
            char *da = NULL, *dg = NULL;
            size_t la = 0, lg = 0;
            assert_int_equal(kw_tokenizer_decode(a, ia, na, skip, &da, &la), 0);
            assert_int_equal(kw_tokenizer_decode(g, ig, ng, skip, &dg, &lg), 0);
            assert_int_equal(la, lg);
            assert_memory_equal(da, dg, la);
            free(da);
            free(dg);
        }
        free(ia);
        free(ig);
        ++texts;
    }
    kw_test_jsonl_close(&rows);
    print_message("%s as GGUF (pre %s): %zu texts encoded and decoded alike\n", name, pre, texts);
    assert_true(texts > 100);
    kw_tokenizer_free(a);
    kw_tokenizer_free(g);
}

static void test_qwen2_pre(void **state) {
    (void)state;
    compare("qwen3", "qwen2");
}

static void test_llama_bpe_pre(void **state) {
    (void)state;
    compare("llama3", "llama-bpe");
}

/* Gemma 3 from its GGUF's tokenizer keys (tests/data/tokenizer/gemma3_tokenizer.gguf) and from its tokenizer.json:
 * the same piece and the same special flag for every id the GGUF holds (tokenizer.json adds <image_soft_token>,
 * 262144, which the GGUF vocabulary lacks); the ids and decodes against HF are test_tokenizer_fixtures'. */
static void test_gemma3_spm(void **state) {
    (void)state;
    kw_tokenizer *json = NULL, *g = NULL;
    assert_int_equal(kw_tokenizer_load(KW_SOURCE_DIR "/models/tokenizers/gemma3", &json), 0);
    const int rc = kw_tokenizer_load(KW_TEST_DATA_DIR "/tokenizer/gemma3_tokenizer.gguf", &g);
    if (rc) print_error("%s\n", kw_error_detail());
    assert_int_equal(rc, 0);
    assert_int_equal(kw_tokenizer_vocab_size(g), 262144);
    assert_int_equal(kw_tokenizer_vocab_size(json), 262145);
    assert_true(kw_tokenizer_same_ids(json, g));
    int32_t n_special = 0;
    for (int32_t id = 0; id < 262144; ++id) {
        if (kw_tokenizer_is_special(g, id) != kw_tokenizer_is_special(json, id))
            fail_msg("id %d: special %d from the GGUF, %d from tokenizer.json", (int)id, kw_tokenizer_is_special(g, id),
                     kw_tokenizer_is_special(json, id));
        n_special += kw_tokenizer_is_special(g, id);
    }
    assert_int_equal(n_special, 8); /* <pad> <eos> <bos> <unk>, the turn and image marks */
    assert_int_equal(kw_tokenizer_token_id(g, "<start_of_turn>"), 105);
    assert_int_equal(kw_tokenizer_token_id(g, "<end_of_turn>"), 106);
    kw_tokenizer_free(json);
    kw_tokenizer_free(g);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_qwen2_pre),
        cmocka_unit_test(test_llama_bpe_pre),
        cmocka_unit_test(test_gemma3_spm),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
