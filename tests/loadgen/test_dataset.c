/* test_dataset.c: every loader on its shipped sample (loadgen/samples) with the reference's skip rules, the gold
 * answer rules on edge rows (tests/data/loadgen), malformed files refused with the line named, and answer grading
 * (letters through the reference extractor, GSM8K numbers). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/kw_status.h"
#include "loadgen/kw_load_dataset.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static kw_load_dataset load(const char *path, enum kw_load_dataset_kind kind) {
    kw_load_dataset ds;
    const int rc = kw_load_dataset_read(path, kind, NULL, &ds);
    if (rc != 0) fail_msg("%s: %s", path, kw_error_detail());
    return ds;
}

static const kw_load_item *find(const kw_load_dataset *ds, const char *id) {
    for (size_t i = 0; i < ds->n_items; ++i)
        if (strcmp(ds->items[i].id, id) == 0) return &ds->items[i];
    fail_msg("no item %s", id);
    return NULL;
}

static void expect_gold(const kw_load_dataset *ds, const char *id, const char *gold) {
    const kw_load_item *it = find(ds, id);
    if (!gold) {
        assert_non_null(it->skip);
        assert_null(it->gold);
        assert_null(it->prompt);
        return;
    }
    if (it->skip) fail_msg("%s skipped: %s", id, it->skip);
    assert_string_equal(it->gold, gold);
    assert_non_null(it->prompt);
}

static void test_openbookqa(void **state) {
    (void)state;
    kw_load_dataset ds = load(KW_SOURCE_DIR "/loadgen/samples/openbookqa.jsonl", KW_LOAD_DATASET_OPENBOOKQA);
    assert_int_equal(ds.n_items, 12);
    assert_int_equal(ds.n_eval, 12);
    assert_string_equal(ds.items[0].id, "kw-obqa-01");
    assert_int_equal(ds.items[0].line, 1);
    assert_string_equal(ds.items[0].gold, "A");
    assert_null(ds.items[0].subject);
    /* The reference prompt, byte for byte (c2c_spec.md §5.3). */
    assert_string_equal(ds.items[0].prompt,
                        "Accurately answer the following question:\n\nA copper pot is left on a hot stove. Heat moves "
                        "through the handle mainly by\n\nChoices:\nA. conduction\nB. evaporation\nC. "
                        "photosynthesis\nD. condensation\n\n\nInstructions:\n- Carefully read the question and all "
                        "options.\n- Select the single most correct answer.\n- Respond ONLY in the following format: "
                        "\"The correct answer is A/B/C/D\".\n- Do not include any explanations, additional text, or "
                        "punctuation besides the answer.\n\nThe correct answer is");
    expect_gold(&ds, "kw-obqa-12", "D");
    assert_int_equal(strlen(ds.sha256), 64);
    kw_load_dataset_free(&ds);
    kw_load_dataset_free(&ds); /* a freed dataset is zeroed */
    kw_load_dataset_free(NULL);
}

static void test_arc(void **state) {
    (void)state;
    kw_load_dataset ds = load(KW_SOURCE_DIR "/loadgen/samples/ai2_arc.jsonl", KW_LOAD_DATASET_ARC);
    assert_int_equal(ds.n_items, 12);
    assert_int_equal(ds.n_eval, 10);
    expect_gold(&ds, "KW_ARC_0001", "B");
    expect_gold(&ds, "KW_ARC_0009", NULL); /* numeric key "1" */
    expect_gold(&ds, "KW_ARC_0010", NULL); /* key "E" */
    assert_string_equal(find(&ds, "KW_ARC_0010")->skip, "answer key missing or not one of A, B, C, D");
    /* 3- and 5-choice items keep all options. */
    assert_non_null(strstr(find(&ds, "KW_ARC_0007")->prompt, "D. inner core\nE. atmosphere\n\n\nInstructions"));
    assert_non_null(strstr(find(&ds, "KW_ARC_0006")->prompt, "C. a scar from a fall\n\n\nInstructions"));
    kw_load_dataset_free(&ds);
}

static void test_mmlu_redux_sample(void **state) {
    (void)state;
    kw_load_dataset ds = load(KW_SOURCE_DIR "/loadgen/samples/mmlu_redux.jsonl", KW_LOAD_DATASET_MMLU_REDUX);
    assert_int_equal(ds.n_items, 14);
    assert_int_equal(ds.n_eval, 12);
    expect_gold(&ds, "high_school_physics/0", "B");
    expect_gold(&ds, "high_school_physics/3", "D"); /* wrong_groundtruth, correct_answer "3" */
    expect_gold(&ds, "high_school_physics/4", NULL);
    assert_string_equal(find(&ds, "high_school_physics/4")->skip, "mmlu-redux error_type no_correct_answer");
    expect_gold(&ds, "world_religions/2", "A"); /* wrong_groundtruth, correct_answer "A" */
    expect_gold(&ds, "world_religions/3", NULL);
    assert_string_equal(find(&ds, "world_religions/3")->skip, "mmlu-redux error_type expert");
    expect_gold(&ds, "college_computer_science/2", "C"); /* another error type keeps the stored answer */
    assert_string_equal(find(&ds, "world_religions/0")->subject, "world_religions");
    kw_load_dataset_free(&ds);
}

static void test_mmlu_redux_edges(void **state) {
    (void)state;
    kw_load_dataset ds = load(KW_TEST_DATA_DIR "/loadgen/mmlu_redux_edge.jsonl", KW_LOAD_DATASET_MMLU_REDUX);
    assert_int_equal(ds.n_items, 16);
    const char *want[] = {"C", NULL, NULL, "B", "D", "D", "K", NULL, NULL, "C", NULL, "B", "A", "C", "@", NULL};
    for (size_t i = 0; i < 16; ++i) {
        char id[8];
        snprintf(id, sizeof(id), "%zu", i);
        expect_gold(&ds, id, want[i]);
    }
    assert_non_null(strstr(find(&ds, "7")->skip, "unparseable"));
    assert_non_null(strstr(find(&ds, "15")->skip, "unparseable"));
    kw_load_dataset_free(&ds);
}

static void test_ceval(void **state) {
    (void)state;
    kw_load_dataset ds = load(KW_SOURCE_DIR "/loadgen/samples/ceval_val.jsonl", KW_LOAD_DATASET_CEVAL);
    assert_int_equal(ds.n_items, 10);
    assert_int_equal(ds.n_eval, 9);
    expect_gold(&ds, "middle_school_physics/1", "C");
    expect_gold(&ds, "high_school_chinese/4", NULL); /* no label, as the test split */
    /* An empty option is left out; the others keep their letters. */
    const char *p = find(&ds, "middle_school_physics/2")->prompt;
    assert_non_null(strstr(p, "C. 两倍焦距处\n\n\nInstructions"));
    assert_null(strstr(p, "D. "));
    kw_load_dataset_free(&ds);
}

static void test_gsm8k(void **state) {
    (void)state;
    kw_load_dataset ds = load(KW_SOURCE_DIR "/loadgen/samples/gsm8k.jsonl", KW_LOAD_DATASET_GSM8K);
    assert_int_equal(ds.n_items, 10);
    assert_int_equal(ds.n_eval, 10);
    expect_gold(&ds, "0", "14");
    expect_gold(&ds, "8", "1000");
    expect_gold(&ds, "9", "15");
    assert_non_null(strstr(ds.items[0].prompt, "Solve the following math problem step by step."));
    kw_load_dataset_free(&ds);
    ds = load(KW_TEST_DATA_DIR "/loadgen/gsm8k_edge.jsonl", KW_LOAD_DATASET_GSM8K);
    expect_gold(&ds, "0", "1"); /* the reference's regex stops at the comma */
    expect_gold(&ds, "1", "-5");
    expect_gold(&ds, "2", "x"); /* no number: the tail itself */
    expect_gold(&ds, "3", NULL);
    assert_string_equal(find(&ds, "3")->skip, "gsm8k answer has no ####");
    expect_gold(&ds, "4", NULL);
    expect_gold(&ds, "5", "7");
    expect_gold(&ds, "6", "3"); /* "#####3".split("####")[-1] == "#3" */
    kw_load_dataset_free(&ds);
}

static void test_prompts(void **state) {
    (void)state;
    kw_load_dataset ds = load(KW_SOURCE_DIR "/loadgen/samples/prompts.jsonl", KW_LOAD_DATASET_PROMPTS);
    assert_int_equal(ds.n_items, 8);
    assert_int_equal(ds.n_eval, 8);
    assert_string_equal(ds.items[0].id, "explain-kv");
    assert_null(ds.items[0].gold);
    assert_string_equal(find(&ds, "7")->prompt, "Name a planet with rings.");
    kw_load_dataset_free(&ds);
}

static void expect_parse_error(const char *text, enum kw_load_dataset_kind kind, const char *needle) {
    kw_load_dataset ds;
    memset(&ds, 0x5a, sizeof(ds));
    const int rc = kw_load_dataset_parse(text, strlen(text), "t.jsonl", kind, NULL, &ds);
    assert_int_equal(rc, KW_E_PARSE);
    if (!strstr(kw_error_detail(), needle)) fail_msg("detail \"%s\" lacks \"%s\"", kw_error_detail(), needle);
}

static void test_bad_files(void **state) {
    (void)state;
    expect_parse_error("{\"prompt\": \"a\"}\nnot json\n", KW_LOAD_DATASET_PROMPTS, "t.jsonl line 2");
    expect_parse_error("{\"id\": \"x\", \"prompt\": \"a\"}\n\n{\"id\": \"x\", \"prompt\": \"b\"}\n",
                       KW_LOAD_DATASET_PROMPTS, "already used on line 1");
    expect_parse_error("{\"question\": 5, \"choices\": [], \"answer\": 0}\n", KW_LOAD_DATASET_MMLU_REDUX, "line 1");
    expect_parse_error("17\n", KW_LOAD_DATASET_PROMPTS, "line 1");
    expect_parse_error("[1]\n", KW_LOAD_DATASET_OPENBOOKQA, "JSON object");
    expect_parse_error("{\"subject\": 3, \"prompt\": \"a\"}\n", KW_LOAD_DATASET_PROMPTS, "subject");
    kw_load_dataset ds;
    assert_int_equal(kw_load_dataset_read("/nonexistent/x.jsonl", KW_LOAD_DATASET_PROMPTS, NULL, &ds), KW_E_NOT_FOUND);
    /* Blank lines and CRLF are fine; limit reads the first rows. */
    const char *ok = "\"a\"\r\n\n   \n\"b\"\r\n\"c\"\n";
    assert_int_equal(kw_load_dataset_parse(ok, strlen(ok), "t", KW_LOAD_DATASET_PROMPTS, NULL, &ds), 0);
    assert_int_equal(ds.n_items, 3);
    assert_int_equal(ds.items[2].line, 5);
    kw_load_dataset_free(&ds);
    kw_load_dataset_options opt;
    kw_load_dataset_options_default(&opt);
    opt.limit = 2;
    assert_int_equal(kw_load_dataset_parse(ok, strlen(ok), "t", KW_LOAD_DATASET_PROMPTS, &opt, &ds), 0);
    assert_int_equal(ds.n_items, 2);
    kw_load_dataset_free(&ds);
    enum kw_load_dataset_kind k;
    assert_int_equal(kw_load_dataset_parse_name("ai2-arc", &k), 0);
    assert_int_equal(k, KW_LOAD_DATASET_ARC);
    assert_int_equal(kw_load_dataset_parse_name("arc", &k), KW_E_NOT_FOUND);
}

static void expect_answer(enum kw_load_answer_kind kind, const char *text, const char *want) {
    char *a = NULL;
    assert_int_equal(kw_load_answer_extract(kind, text, strlen(text), &a), 0);
    if (!want) {
        if (a) fail_msg("\"%s\" gave \"%s\", expected none", text, a);
    } else {
        if (!a || strcmp(a, want) != 0) fail_msg("\"%s\" gave \"%s\", expected \"%s\"", text, a ? a : "none", want);
    }
    free(a);
}

static void test_answers(void **state) {
    (void)state;
    expect_answer(KW_LOAD_ANSWER_LETTER, "The correct answer is B", "B");
    expect_answer(KW_LOAD_ANSWER_LETTER, "\n\nThe correct answer is C\n", "C");
    expect_answer(KW_LOAD_ANSWER_LETTER, "2+2=4 so the result is d", NULL);
    expect_answer(KW_LOAD_ANSWER_LETTER, "", NULL);
    expect_answer(KW_LOAD_ANSWER_TEXT, "The correct answer is B", NULL);
    char *a = NULL;
    assert_int_equal(kw_load_answer_extract(KW_LOAD_ANSWER_LETTER, "\xff\xfe", 2, &a), KW_E_UTF8);
    expect_answer(KW_LOAD_ANSWER_NUMBER, "The answer is 42.", "42");
    expect_answer(KW_LOAD_ANSWER_NUMBER, "Answer: 1,234 apples", "1234");
    expect_answer(KW_LOAD_ANSWER_NUMBER, "Step 1: 3+4=7\nAnswer: 7\n", "7");
    expect_answer(KW_LOAD_ANSWER_NUMBER, "so \\boxed{15}. Answer: 16", "15");
    expect_answer(KW_LOAD_ANSWER_NUMBER, "answer: -3.5", "-3.5");
    expect_answer(KW_LOAD_ANSWER_NUMBER, "ANSWER:  $2,500.00", "2500.00");
    expect_answer(KW_LOAD_ANSWER_NUMBER, "12,34", "34");
    expect_answer(KW_LOAD_ANSWER_NUMBER, "no numbers at all", NULL);
    expect_answer(KW_LOAD_ANSWER_NUMBER, "Answer: none\nwe had 3 then 9", "9");
    assert_true(kw_load_answer_correct(KW_LOAD_ANSWER_NUMBER, "2500.00", "2500"));
    assert_true(kw_load_answer_correct(KW_LOAD_ANSWER_NUMBER, "1000", "1000"));
    assert_false(kw_load_answer_correct(KW_LOAD_ANSWER_NUMBER, "7", "8"));
    assert_false(kw_load_answer_correct(KW_LOAD_ANSWER_NUMBER, NULL, "8"));
    assert_true(kw_load_answer_correct(KW_LOAD_ANSWER_NUMBER, "x", "x"));
    assert_true(kw_load_answer_correct(KW_LOAD_ANSWER_LETTER, "B", "B"));
    assert_false(kw_load_answer_correct(KW_LOAD_ANSWER_LETTER, "B", "C"));
    assert_false(kw_load_answer_correct(KW_LOAD_ANSWER_LETTER, "", "C"));
    assert_true(kw_load_answer_agree(KW_LOAD_ANSWER_LETTER, NULL, NULL));
    assert_false(kw_load_answer_agree(KW_LOAD_ANSWER_LETTER, "A", NULL));
    assert_true(kw_load_answer_agree(KW_LOAD_ANSWER_NUMBER, "3", "3.0"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_openbookqa),
        cmocka_unit_test(test_arc),
        cmocka_unit_test(test_mmlu_redux_sample),
        cmocka_unit_test(test_mmlu_redux_edges),
        cmocka_unit_test(test_ceval),
        cmocka_unit_test(test_gsm8k),
        cmocka_unit_test(test_prompts),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_answers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
