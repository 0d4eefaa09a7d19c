/* kw_prompt.c: the reference evaluation prompts (multiple choice and math), reproduced byte for byte.
 *
 * The template texts below are the reference's literals; tests/data/c2c/prompts.jsonl (made by running the reference
 * functions, tools/make_prompt_fixtures.py) pins them. Not here: chat templates, tokenization, dataset loading.
 */
#include "c2c/kw_prompt.h"

#include "common/kw_buf.h"
#include "common/kw_status.h"

#include <stdlib.h>
#include <string.h>

// ---------------------------------------------------------------------------------------------------------------
// Templates (rosetta/utils/evaluate.py build_prompt; script/evaluation/unified_evaluator.py math prompt)

static const char kw_prompt_template_plain[] =
    "Accurately answer the following question:\n"
    "\n"
    "{{question}}\n"
    "\n"
    "Choices:\n"
    "{{choices}}\n"
    "\n"
    "Instructions:\n"
    "- Carefully read the question and all options.\n"
    "- Select the single most correct answer.\n"
    "- Respond ONLY in the following format: \"The correct answer is A/B/C/D\".\n"
    "- Do not include any explanations, additional text, or punctuation besides the answer.\n"
    "\n"
    "The correct answer is";

/* The CoT template's second line is 19 spaces in the reference source. */
static const char kw_prompt_template_cot[] = "Accurately answer the following question:\n"
                                             "                   \n"
                                             "{{question}}\n"
                                             "\n"
                                             "Choices:\n"
                                             "{{choices}}\n"
                                             "\n"
                                             "Instructions:\n"
                                             "- Carefully read the question and all options.\n"
                                             "- Let's think step by step and explain your reasoning briefly.\n"
                                             "- Then give the final answer starting with The correct answer is";

static const char kw_prompt_template_math[] =
    "Solve the following math problem step by step. The last line of your response should be of the form Answer: "
    "$ANSWER (without quotes) where $ANSWER is the answer to the problem.\n\n"
    "{question}\n\n"
    "Please think step by step and explain your reasoning. Remember to put your answer on its own line after "
    "\"Answer:\", and you do not need to use a \\boxed command.";

// ---------------------------------------------------------------------------------------------------------------
// String building

/* Appends text with every occurrence of needle replaced by repl, scanning left to right without overlaps (Python
 * str.replace). */
static int kw_prompt_buf_replace(kw_buf *b, const char *text, const char *needle, const char *repl) {
    const size_t nlen = strlen(needle);
    const char *p = text;
    for (const char *hit; (hit = strstr(p, needle)) != NULL; p = hit + nlen) {
        KW_FORWARD(kw_buf_append(b, p, (size_t)(hit - p)));
        KW_FORWARD(kw_buf_append_str(b, repl));
    }
    return kw_buf_append_str(b, p);
}

// ---------------------------------------------------------------------------------------------------------------
// Public builders

int kw_prompt_choices(const char *const *options, size_t n_options, int skip_empty, char **out) {
    KW_RETURN_IF(!out || (n_options && !options), KW_E_INVALID_ARG, "kw_prompt_choices: NULL argument");
    KW_RETURN_IF(n_options > KW_PROMPT_MAX_OPTIONS, KW_E_LIMIT, "%zu options (at most %d)", n_options,
                 KW_PROMPT_MAX_OPTIONS);
    kw_buf b = KW_BUF_INIT;
    int rc = 0;
    for (size_t i = 0; i < n_options; ++i) {
        KW_CHECK_IF(!options[i], KW_E_INVALID_ARG, "option %zu is NULL", i);
        if (skip_empty && options[i][0] == '\0') continue;
        const char label[4] = {(char)('A' + i), '.', ' ', '\0'};
        KW_CHECK(kw_buf_append_str(&b, label));
        KW_CHECK(kw_buf_append_str(&b, options[i]));
        KW_CHECK(kw_buf_append_str(&b, "\n"));
    }
    KW_CHECK(kw_buf_take(&b, out, NULL));
out:
    kw_buf_free(&b);
    return rc;
}

int kw_prompt_mc(const char *question, const char *choices, int use_cot, int use_template, char **out) {
    KW_RETURN_IF(!question || !choices || !out, KW_E_INVALID_ARG, "kw_prompt_mc: NULL argument");
    kw_buf b = KW_BUF_INIT;
    int rc = 0;
    if (!use_template) {
        KW_CHECK(kw_buf_append_str(&b, question));
        KW_CHECK(kw_buf_append_str(&b, "\n\nChoices:\n"));
        KW_CHECK(kw_buf_append_str(&b, choices));
    } else {
        /* Two passes, as the reference: the question goes in first, then every "{{choices}}" of the result is
         * replaced, including any the question brought in. */
        kw_buf step = KW_BUF_INIT;
        rc = kw_prompt_buf_replace(&step, use_cot ? kw_prompt_template_cot : kw_prompt_template_plain, "{{question}}",
                                   question);
        if (rc == 0) rc = kw_prompt_buf_replace(&b, step.data, "{{choices}}", choices);
        kw_buf_free(&step);
        if (rc < 0) goto out;
    }
    KW_CHECK(kw_buf_take(&b, out, NULL));
out:
    kw_buf_free(&b);
    return rc;
}

int kw_prompt_math(const char *question, char **out) {
    KW_RETURN_IF(!question || !out, KW_E_INVALID_ARG, "kw_prompt_math: NULL argument");
    kw_buf b = KW_BUF_INIT;
    int rc = 0;
    KW_CHECK(kw_prompt_buf_replace(&b, kw_prompt_template_math, "{question}", question));
    KW_CHECK(kw_buf_take(&b, out, NULL));
out:
    kw_buf_free(&b);
    return rc;
}

// ---------------------------------------------------------------------------------------------------------------
// Dataset items

/* item[key] as a string: absent or null gives def (NULL when the reference indexes with [] and would raise). */
static int kw_prompt_field(const cJSON *item, const char *key, const char *def, const char **out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(item, key);
    if (!v || cJSON_IsNull(v)) {
        KW_RETURN_IF(!def, KW_E_PARSE, "dataset item has no \"%s\"", key);
        *out = def;
        return 0;
    }
    KW_RETURN_IF(!cJSON_IsString(v), KW_E_PARSE, "dataset item field \"%s\" is not a string", key);
    *out = v->valuestring;
    return 0;
}

/* Collects the option texts of a "choices" value: a list of strings, a list of {"text": str} objects, or an object
 * {"text": [str...]}; anything else is no options (the reference's isinstance chain). */
static int kw_prompt_option_texts(const cJSON *choices, int allow_dict_forms, const char **texts, size_t *n) {
    *n = 0;
    const cJSON *list = choices;
    if (allow_dict_forms && cJSON_IsObject(choices)) {
        list = cJSON_GetObjectItemCaseSensitive(choices, "text");
        if (!list) return 0;
        KW_RETURN_IF(!cJSON_IsArray(list), KW_E_PARSE, "\"choices\".\"text\" is not a list");
    }
    if (!cJSON_IsArray(list)) return 0;
    const cJSON *it = NULL;
    cJSON_ArrayForEach(it, list) {
        KW_RETURN_IF(*n >= KW_PROMPT_MAX_OPTIONS, KW_E_LIMIT, "more than %d options", KW_PROMPT_MAX_OPTIONS);
        const cJSON *text = it;
        if (allow_dict_forms && cJSON_IsObject(it) && list == choices) {
            text = cJSON_GetObjectItemCaseSensitive(it, "text");
            if (!text) {
                texts[(*n)++] = "";
                continue;
            }
        }
        KW_RETURN_IF(!cJSON_IsString(text), KW_E_PARSE, "option %zu is not a string", *n);
        texts[(*n)++] = text->valuestring;
    }
    return 0;
}

/* C-Eval and MMMLU items: the options are fields "A".."D" and each keeps its key as the letter. C-Eval drops missing
 * and empty options (`if choice_text:`); MMMLU keeps every present key, even an empty one. */
static int kw_prompt_lettered_item(const cJSON *item, int ceval, int use_cot, int use_template, char **out) {
    static const char *const keys[4] = {"A", "B", "C", "D"};
    const char *question = NULL;
    KW_FORWARD(kw_prompt_field(item, ceval ? "question" : "Question", ceval ? "" : NULL, &question));
    kw_buf b = KW_BUF_INIT;
    char *block = NULL;
    int rc = 0;
    for (size_t i = 0; i < 4; ++i) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(item, keys[i]);
        if (!v || (ceval && cJSON_IsNull(v))) continue;
        KW_CHECK_IF(!cJSON_IsString(v), KW_E_PARSE, "option \"%s\" is not a string", keys[i]);
        if (ceval && v->valuestring[0] == '\0') continue;
        KW_CHECK(kw_buf_append_str(&b, keys[i]));
        KW_CHECK(kw_buf_append_str(&b, ". "));
        KW_CHECK(kw_buf_append_str(&b, v->valuestring));
        KW_CHECK(kw_buf_append_str(&b, "\n"));
    }
    KW_CHECK(kw_buf_take(&b, &block, NULL));
    rc = kw_prompt_mc(question, block, use_cot, use_template, out);
out:
    kw_buf_free(&b);
    free(block);
    return rc;
}

int kw_prompt_from_item(const char *dataset, const cJSON *item, int use_cot, int use_template, char **out) {
    KW_RETURN_IF(!dataset || !out, KW_E_INVALID_ARG, "kw_prompt_from_item: NULL argument");
    KW_RETURN_IF(!cJSON_IsObject(item), KW_E_PARSE, "dataset item is not a JSON object");
    const char *texts[KW_PROMPT_MAX_OPTIONS];
    size_t n = 0;
    const char *question = NULL;

    if (strcmp(dataset, "gsm8k") == 0 || strcmp(dataset, "math-500") == 0) {
        KW_FORWARD(kw_prompt_field(item, dataset[0] == 'g' ? "question" : "problem", "", &question));
        return kw_prompt_math(question, out);
    }
    if (strcmp(dataset, "mmlu-redux") == 0) {
        KW_FORWARD(kw_prompt_field(item, "question", NULL, &question));
        const cJSON *choices = cJSON_GetObjectItemCaseSensitive(item, "choices");
        KW_RETURN_IF(!cJSON_IsArray(choices), KW_E_PARSE, "mmlu-redux item: \"choices\" is not a list");
        KW_FORWARD(kw_prompt_option_texts(choices, 0, texts, &n));
    } else if (strcmp(dataset, "openbookqa") == 0 || strcmp(dataset, "ai2-arc") == 0) {
        KW_FORWARD(kw_prompt_field(item, dataset[0] == 'o' ? "question_stem" : "question", "", &question));
        KW_FORWARD(kw_prompt_option_texts(cJSON_GetObjectItemCaseSensitive(item, "choices"), 1, texts, &n));
    } else if (strcmp(dataset, "mmlu-pro") == 0) {
        KW_FORWARD(kw_prompt_field(item, "question", "", &question));
        const cJSON *options = cJSON_GetObjectItemCaseSensitive(item, "options");
        size_t i = 0;
        const cJSON *it = NULL;
        if (cJSON_IsArray(options)) {
            cJSON_ArrayForEach(it, options) {
                if (i >= 10) break; /* the reference formats at most 10 options (A-J) */
                KW_RETURN_IF(!cJSON_IsString(it), KW_E_PARSE, "mmlu-pro option %zu is not a string", i);
                texts[i++] = it->valuestring;
            }
        }
        n = i;
    } else if (strcmp(dataset, "ceval") == 0 || strcmp(dataset, "mmmlu") == 0) {
        return kw_prompt_lettered_item(item, dataset[0] == 'c', use_cot, use_template, out);
    } else {
        KW_FAIL(KW_E_INVALID_ARG, "unknown dataset \"%s\"", dataset);
    }

    char *block = NULL;
    KW_FORWARD(kw_prompt_choices(texts, n, 0, &block));
    const int rc = kw_prompt_mc(question, block, use_cot, use_template, out);
    free(block);
    return rc;
}
