/* test_chat.c: kw_chat_render against transformers' apply_chat_template renderings (tests/data/tokenizer/chat_*.jsonl:
 * Qwen3, Qwen2.5-Instruct, Llama-3.2-Instruct, Gemma 3;
 * written by tools/make_chat_fixtures.py), byte for byte; the rendered text is also encoded with kw_tokenizer and
 * compared with the ids HF gave for it. Plus the refusals the C templates add (tool roles, missing date). */
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
#include "model/kw_chat.h"
#include "model/kw_tokenizer.h"
#include "tests/kw_test_util.h"

static void run_chat_fixture(enum kw_chat_family family, const char *fixture, const char *tokenizer_dir) {
    char path[1024];
    kw_tokenizer *tok = NULL;
    snprintf(path, sizeof path, "%s/%s", KW_SOURCE_DIR, tokenizer_dir);
    assert_int_equal(kw_tokenizer_load(path, &tok), 0);
    snprintf(path, sizeof path, "%s/tokenizer/%s", KW_TEST_DATA_DIR, fixture);
    kw_test_jsonl rows;
    kw_test_jsonl_open(&rows, path);
    size_t failures = 0, n_errors = 0;
    for (const cJSON *row; (row = kw_test_jsonl_next(&rows)) != NULL;) {
        const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(row, "messages");
        assert_true(cJSON_IsArray(msgs));
        const size_t n = (size_t)cJSON_GetArraySize(msgs);
        kw_chat_message *m = calloc(n + 1, sizeof *m);
        assert_non_null(m);
        size_t i = 0;
        for (const cJSON *it = msgs->child; it; it = it->next, ++i) {
            assert_int_equal(kw_json_get_str(it, "role", &m[i].role, "msg"), 0);
            assert_int_equal(kw_json_get_str(it, "content", &m[i].content, "msg"), 0);
        }
        int gen = 0, thinking = 1;
        const char *date = NULL;
        assert_int_equal(kw_json_get_bool(row, "add_generation_prompt", &gen, "row"), 0);
        assert_int_equal(kw_json_opt_bool(row, "enable_thinking", 1, &thinking, "row"), 0);
        assert_int_equal(kw_json_opt_str(row, "date_string", NULL, &date, "row"), 0);
        const kw_chat_options opt = {.add_generation_prompt = gen, .enable_thinking = thinking, .date_string = date};
        char *text = NULL;
        size_t len = 0;
        const int rc = kw_chat_render(family, m, n, &opt, &text, &len);
        const cJSON *want = cJSON_GetObjectItemCaseSensitive(row, "text");
        if (cJSON_IsString(want)) {
            if (rc != 0 || len != strlen(want->valuestring) || memcmp(text, want->valuestring, len) != 0) {
                print_error("%s line %zu: rendering differs (rc %d: %s)\n  want: %s\n  got:  %s\n", fixture,
                            rows.lineno, rc, kw_error_detail(), want->valuestring, text ? text : "(null)");
                ++failures;
            } else {
                size_t n_want = 0, n_ids = 0;
                const cJSON *ids_json = cJSON_GetObjectItemCaseSensitive(row, "ids");
                n_want = (size_t)cJSON_GetArraySize(ids_json);
                int32_t *ids = NULL;
                assert_int_equal(kw_tokenizer_encode(tok, text, len, &ids, &n_ids), 0);
                size_t k = 0;
                int same = n_ids == n_want;
                for (const cJSON *it = ids_json->child; it && same; it = it->next, ++k)
                    same = it->valuedouble == (double)ids[k];
                if (!same) {
                    print_error("%s line %zu: ids of the rendered text differ\n", fixture, rows.lineno);
                    ++failures;
                }
                free(ids);
            }
        } else {
            /* The template raised in Python: the C renderer must refuse too. */
            assert_non_null(cJSON_GetObjectItemCaseSensitive(row, "error"));
            if (rc != KW_E_TEMPLATE) {
                print_error("%s line %zu: expected KW_E_TEMPLATE, got %d\n", fixture, rows.lineno, rc);
                ++failures;
            }
            ++n_errors;
        }
        free(text);
        free(m);
    }
    const size_t n_rows = rows.lineno;
    kw_test_jsonl_close(&rows);
    kw_tokenizer_free(tok);
    assert_true(n_rows > 50);
    assert_true(n_errors > 0);
    assert_int_equal(failures, 0);
}

static void test_qwen3(void **state) {
    (void)state;
    run_chat_fixture(KW_CHAT_QWEN3, "chat_qwen3.jsonl", "models/tokenizers/qwen3");
}

static void test_qwen25(void **state) {
    (void)state;
    run_chat_fixture(KW_CHAT_QWEN25, "chat_qwen25.jsonl", "models/tokenizers/qwen3");
}

static void test_llama32(void **state) {
    (void)state;
    run_chat_fixture(KW_CHAT_LLAMA32, "chat_llama32.jsonl", "models/tokenizers/llama3");
}

/* SmolLM2-Instruct: the template its GGUF file carries, the tokenizer from that file's metadata. */
static void test_smollm2(void **state) {
    (void)state;
    run_chat_fixture(KW_CHAT_SMOLLM2, "chat_smollm2.jsonl", "tests/data/tokenizer/smollm2_tokenizer.gguf");
}

static void test_gemma3(void **state) {
    (void)state;
    run_chat_fixture(KW_CHAT_GEMMA3, "chat_gemma3.jsonl", "models/tokenizers/gemma3");
}

/* The template each architecture gets (what kvwire generate --chat and kvwire c2c pick). */
static void test_family_for_arch(void **state) {
    (void)state;
    enum kw_chat_family f;
    assert_int_equal(kw_chat_family_for_arch(KW_ARCH_GEMMA3, &f), 0);
    assert_int_equal(f, KW_CHAT_GEMMA3);
    assert_int_equal(kw_chat_family_for_arch(KW_ARCH_QWEN3, &f), 0);
    assert_int_equal(f, KW_CHAT_QWEN3);
    assert_int_equal(kw_chat_family_for_arch(KW_ARCH_QWEN2, &f), 0);
    assert_int_equal(f, KW_CHAT_QWEN25);
    assert_int_equal(kw_chat_family_for_arch(KW_ARCH_LLAMA, &f), 0);
    assert_int_equal(f, KW_CHAT_LLAMA32);
    assert_int_equal(kw_chat_family_for_arch((enum kw_arch)9, &f), KW_E_UNSUPPORTED);
    assert_int_equal(kw_chat_family_for_arch(KW_ARCH_QWEN3, NULL), KW_E_INVALID_ARG);
    /* Gemma 3 with a system message and a generation prompt, as kvwire generate --chat --system renders it */
    const kw_chat_message m[] = {{"system", "Be brief."}, {"user", " Hi "}};
    const kw_chat_options o = {.add_generation_prompt = 1};
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(kw_chat_render(KW_CHAT_GEMMA3, m, 2, &o, &text, &len), 0);
    assert_string_equal(text, "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n");
    free(text);
}

static void test_c2c_prompt_qwen3(void **state) {
    (void)state;
    /* c2c_spec.md 5.4: the exact string and its last ids. */
    const kw_chat_message m[] = {{"user", "Q?"}};
    const kw_chat_options o = {.add_generation_prompt = 1, .enable_thinking = 0};
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(kw_chat_render(KW_CHAT_QWEN3, m, 1, &o, &text, &len), 0);
    assert_string_equal(text, "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
    assert_int_equal(len, strlen(text));
    free(text);
}

static void test_null_options(void **state) {
    (void)state;
    /* NULL options: transformers' defaults (no generation prompt, enable_thinking not passed). */
    const kw_chat_message m[] = {{"user", "hi"}, {"assistant", "<think>t</think>a"}};
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(kw_chat_render(KW_CHAT_QWEN3, m, 2, NULL, &text, &len), 0);
    assert_string_equal(text,
                        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\nt\n</think>\n\na<|im_end|>\n");
    free(text);
    assert_int_equal(kw_chat_render(KW_CHAT_QWEN25, m, 1, NULL, &text, &len), 0);
    assert_string_equal(text, "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
                              "assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n");
    free(text);
}

static void test_refusals(void **state) {
    (void)state;
    char *text = NULL;
    size_t len = 0;
    const kw_chat_options o = {.add_generation_prompt = 1, .enable_thinking = 1, .date_string = "1 Jan 2025"};
    const kw_chat_message tool[] = {{"user", "q"}, {"tool", "result"}};
    for (int fam = KW_CHAT_QWEN3; fam <= KW_CHAT_SMOLLM2; ++fam) {
        assert_int_equal(kw_chat_render((enum kw_chat_family)fam, tool, 2, &o, &text, &len), KW_E_TEMPLATE);
        assert_int_equal(kw_chat_render((enum kw_chat_family)fam, tool, 0, &o, &text, &len), KW_E_TEMPLATE);
    }
    const kw_chat_message null_content[] = {{"user", NULL}};
    assert_int_equal(kw_chat_render(KW_CHAT_QWEN3, null_content, 1, &o, &text, &len), KW_E_INVALID_ARG);
    const kw_chat_options no_date = {.add_generation_prompt = 1};
    assert_int_equal(kw_chat_render(KW_CHAT_LLAMA32, tool, 1, &no_date, &text, &len), KW_E_INVALID_ARG);
    assert_int_equal(kw_chat_render((enum kw_chat_family)7, tool, 1, &o, &text, &len), KW_E_INVALID_ARG);
    assert_null(text);
}

static void test_family_names(void **state) {
    (void)state;
    enum kw_chat_family f;
    for (int fam = KW_CHAT_QWEN3; fam <= KW_CHAT_SMOLLM2; ++fam) {
        assert_int_equal(kw_chat_family_parse(kw_chat_family_name((enum kw_chat_family)fam), &f), 0);
        assert_int_equal(f, fam);
    }
    assert_int_equal(kw_chat_family_parse("gemma2", &f), KW_E_INVALID_ARG);
    assert_int_equal(kw_chat_family_parse(NULL, &f), KW_E_INVALID_ARG);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_qwen3),
        cmocka_unit_test(test_qwen25),
        cmocka_unit_test(test_llama32),
        cmocka_unit_test(test_gemma3),
        cmocka_unit_test(test_smollm2),
        cmocka_unit_test(test_family_for_arch),
        cmocka_unit_test(test_c2c_prompt_qwen3),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_null_options),
        cmocka_unit_test(test_family_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
