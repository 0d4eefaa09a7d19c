/* kw_load_dataset.h: the datasets kvload replays, read from the JSONL that exporting the Hugging Face datasets gives
 * (tools/export_dataset.py), with the C2C evaluator's prompts, gold answers and skip rules (c2c_spec.md §5.2-5.7):
 *
 *   name         rows (HF export)                                  gold                           skipped when
 *   mmlu-redux   question, choices[4], answer (int), error_type,   chr(65 + answer), or the       error_type is
 *                correct_answer                                    correct_answer of a            no_correct_answer
 *                                                                  wrong_groundtruth row          or expert
 *   openbookqa   question_stem, choices {text, label}, answerKey   answerKey                      answerKey not A-D
 *   ai2-arc      question, choices {text, label}, answerKey        answerKey                      answerKey not A-D
 *                                                                                                 (1-4, E)
 *   ceval        question, A, B, C, D, answer                      answer                         answer not A-D
 *                                                                                                 (the test split
 *                                                                                                 has no labels)
 *   gsm8k        question, answer ("...#### 72")                   the first number after the     no "####"
 *                                                                  last "####"
 *   prompts      a JSON string, or {"prompt": ..., "id": ...}      none (quality without labels)  never
 *
 * An optional "subject" string on a row (the export adds the MMLU-Redux and C-Eval config name) prefixes the item id,
 * and an "id" string or integer names the item; without one, the item is named by its 0-based row index within its
 * subject (the reference's question_id). Ids must be unique in a file. A row the reference would fail on (a gold
 * answer that cannot be parsed: it counts those in skip_count) is skipped with that reason; a row whose prompt cannot
 * be built (a field of the wrong type) is an error naming the line, since it means the file is not what it claims.
 *
 * Prompts come from c2c/kw_prompt.h (kw_prompt_from_item) and letters from c2c/kw_answer.h, the project's exact ports
 * of the reference's functions. GSM8K grading is an approximation: the reference uses math_verify (LaTeX and
 * expression parsing); kvload compares numbers (kw_load_answer_extract says which).
 */
#ifndef KW_LOAD_DATASET_H
#define KW_LOAD_DATASET_H

#include <stddef.h>

enum kw_load_dataset_kind {
    KW_LOAD_DATASET_PROMPTS = 0,
    KW_LOAD_DATASET_MMLU_REDUX = 1,
    KW_LOAD_DATASET_OPENBOOKQA = 2,
    KW_LOAD_DATASET_ARC = 3,
    KW_LOAD_DATASET_CEVAL = 4,
    KW_LOAD_DATASET_GSM8K = 5,
    KW_LOAD_DATASET_COUNT
};

/* The reference's dataset key ("mmlu-redux", "ai2-arc", ...; "prompts" for a plain prompt list). */
const char *kw_load_dataset_name(enum kw_load_dataset_kind kind);

/* The kind for a name. @return 0 or KW_E_NOT_FOUND (with the accepted names in the detail). */
int kw_load_dataset_parse_name(const char *name, enum kw_load_dataset_kind *out);

typedef struct kw_load_dataset_options {
    int use_cot;      /* the reference's use_cot (default 0) */
    int use_template; /* the reference's use_template (default 1) */
    size_t limit;     /* read only the first `limit` rows (the reference's eval.limit); 0: all */
    size_t max_bytes; /* files larger than this are refused; 0: 1 GiB */
} kw_load_dataset_options;

/* use_cot 0, use_template 1, no limit. */
void kw_load_dataset_options_default(kw_load_dataset_options *opt);

typedef struct kw_load_item {
    char *id;         /* unique in the dataset (owned) */
    char *subject;    /* owned; NULL when the row has none */
    size_t line;      /* 1-based line of the file */
    char *prompt;     /* the user message (owned); NULL when skipped */
    char *gold;       /* "A".."D" (or another letter), a GSM8K number; owned; NULL when unlabelled or skipped */
    const char *skip; /* why the reference skips the row (static text), or NULL */
} kw_load_item;

typedef struct kw_load_dataset {
    enum kw_load_dataset_kind kind;
    kw_load_item *items; /* owned, n_items in file order, skipped rows included */
    size_t n_items;
    size_t n_eval;   /* rows not skipped */
    char sha256[65]; /* of the file's bytes, lowercase hex */
    size_t bytes;    /* file size */
} kw_load_dataset;

/* Reads a JSONL file of the given kind. Blank lines are ignored. Every line must be one JSON object (a JSON string is
 * also accepted for prompts). @return 0; KW_E_NOT_FOUND (no such file), KW_E_IO, KW_E_LIMIT (file too large),
 * KW_E_PARSE (a line that is not JSON, a field of the wrong type, a duplicate id: the detail names the line),
 * KW_E_NOMEM. *out is untouched on failure and owned by the caller on success (kw_load_dataset_free). */
int kw_load_dataset_read(const char *path, enum kw_load_dataset_kind kind, const kw_load_dataset_options *opt,
                         kw_load_dataset *out);

/* As kw_load_dataset_read, from text[0..len) in memory; what names it in messages. */
int kw_load_dataset_parse(const char *text, size_t len, const char *what, enum kw_load_dataset_kind kind,
                          const kw_load_dataset_options *opt, kw_load_dataset *out);

/* Frees the items; NULL and a zeroed dataset are no-ops. */
void kw_load_dataset_free(kw_load_dataset *ds);

/* What kind of answer a dataset is graded on. */
enum kw_load_answer_kind {
    KW_LOAD_ANSWER_TEXT = 0, /* no answer extraction: agreement compares whole outputs */
    KW_LOAD_ANSWER_LETTER,   /* multiple choice: kw_answer_extract */
    KW_LOAD_ANSWER_NUMBER,   /* GSM8K: a number */
};

enum kw_load_answer_kind kw_load_dataset_answer_kind(enum kw_load_dataset_kind kind);

/* The answer the grader takes from a model's output text[0..len):
 *  - LETTER: text with leading and trailing '\n' removed (the reference's .strip("\n") of the decoded output), then
 *    kw_answer_extract: "A".."D", or NULL for the reference's None;
 *  - NUMBER (an approximation of math_verify, which the reference uses): the first number inside the last
 *    "\boxed{...}"; else the first number on the line after the last "answer:" (any case); else the last number in
 *    the text; a number is [-+]?digits with optional ",ddd" groups and an optional ".digits" fraction, written back
 *    without group commas; NULL when there is none;
 *  - TEXT: NULL (nothing to extract).
 * *out is a new string (free()) or NULL. @return 0, KW_E_UTF8 (LETTER: the text is not UTF-8), KW_E_NOMEM. */
int kw_load_answer_extract(enum kw_load_answer_kind kind, const char *text, size_t len, char **out);

/* 1 when answer (may be NULL) is graded correct against gold (not NULL): LETTER, equal strings (the reference's
 * `pred == gold if pred else False`); NUMBER, equal values when both parse as numbers, else equal strings. */
int kw_load_answer_correct(enum kw_load_answer_kind kind, const char *answer, const char *gold);

/* 1 when two runs' answers agree: both NULL, or both present and equal as kw_load_answer_correct compares them. */
int kw_load_answer_agree(enum kw_load_answer_kind kind, const char *a, const char *b);

#endif /* KW_LOAD_DATASET_H */
