/* kw_prompt.h: the evaluation prompts of the C2C reference harness, byte for byte (c2c_spec.md §5.3).
 *
 * The reference builds a multiple-choice prompt from a question and a "choices" block (`build_prompt` in
 * rosetta/utils/evaluate.py) and a math prompt for GSM8K / MATH-500 (`_format_math_problem_example` in
 * script/evaluation/unified_evaluator.py). These functions reproduce the exact strings, including the reference's
 * string-replacement quirks (a question that itself contains "{{choices}}" gets the choices spliced in there too).
 * The chat template and tokenization are not done here (model/kw_chat.h).
 *
 * All strings are NUL-terminated UTF-8 (not validated: bytes are copied as they are). Every *out is a new
 * NUL-terminated string owned by the caller (free()).
 */
#ifndef KW_PROMPT_H
#define KW_PROMPT_H

#include <stddef.h>

#include <cjson/cJSON.h>

/* Most options a choices block may have: labels are 'A' + i, and the reference's chr(65 + i) leaves the letters
 * after 26 options. */
#define KW_PROMPT_MAX_OPTIONS 26

/* The choices block "A. <opt0>\nB. <opt1>\n...": every line, the last included, ends with '\n'. With skip_empty,
 * empty options are left out but the others keep the letter of their position (C-Eval's "A. x\nC. y\n").
 * n_options == 0 gives "". More than KW_PROMPT_MAX_OPTIONS: KW_E_LIMIT. */
int kw_prompt_choices(const char *const *options, size_t n_options, int skip_empty, char **out);

/* build_prompt(question, choices, use_cot, use_template): the instruction template (non-CoT or CoT) with
 * "{{question}}" replaced by question, then every "{{choices}}" replaced by choices; with use_template == 0,
 * question + "\n\nChoices:\n" + choices. choices is a block from kw_prompt_choices (or any text). */
int kw_prompt_mc(const char *question, const char *choices, int use_cot, int use_template, char **out);

/* The GSM8K / MATH-500 prompt with its "{question}" placeholder replaced by question (once, as str.replace on a
 * template holding it once). */
int kw_prompt_math(const char *question, char **out);

/* The prompt for one dataset item as the reference evaluator formats it (its _format_<dataset>_example):
 *   "mmlu-redux"  question (required), choices (list of strings)
 *   "openbookqa"  question_stem, choices ({"text": [...]} or a list of strings or of {"text": ...})
 *   "ai2-arc"     question, choices (as openbookqa)
 *   "ceval"       question, A, B, C, D (missing or empty options are left out)
 *   "mmmlu"       Question (required), A, B, C, D (present keys kept, even when empty)
 *   "mmlu-pro"    question, options (list of strings, at most the first 10 used)
 *   "gsm8k"       question          "math-500"  problem      (math prompt; use_cot/use_template ignored)
 * Fields the reference reads with .get() default to "". Non-string values (the reference would str() them) are
 * refused with KW_E_PARSE; an unknown dataset name gives KW_E_INVALID_ARG. */
int kw_prompt_from_item(const char *dataset, const cJSON *item, int use_cot, int use_template, char **out);

#endif /* KW_PROMPT_H */
