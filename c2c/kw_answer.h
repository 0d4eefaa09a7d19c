/* kw_answer.h: the reference's answer-letter extractor for multiple-choice outputs (c2c_spec.md §5.6).
 *
 * A port of `extract_answer_from_content` (rosetta/utils/evaluate.py) that gives the same letter as the Python
 * function under CPython 3 `re`: Unicode \s (str.isspace), \w (letters, numbers and '_') and \b, IGNORECASE with
 * CPython's case equivalences (e.g. U+017F LONG S matches 's', U+212A KELVIN SIGN matches 'k'), `.` not matching
 * '\n', `$` at the end or before a final '\n', and str.strip()/str.lower() semantics. The regexes are simple enough
 * that each is matched by hand (see kw_answer.c for the equivalence argument); no regex engine is involved.
 *
 * Character classes come from utf8proc's Unicode tables. Results can differ from a given Python build only on code
 * points whose general category changed between the two Unicode versions (e.g. characters first assigned in a newer
 * version than that Python's unicodedata).
 */
#ifndef KW_ANSWER_H
#define KW_ANSWER_H

#include <stddef.h>

/* Extracts the answer letter from len bytes of UTF-8 model output (NUL bytes allowed; no terminator needed).
 * On success *letter is 'A', 'B', 'C' or 'D', or 0 when the reference returns None.
 * Errors: KW_E_UTF8 (text is not valid UTF-8: overlong forms, surrogates and values above U+10FFFF are refused),
 * KW_E_NOMEM, KW_E_INVALID_ARG. */
int kw_answer_extract(const char *text, size_t len, char *letter);

#endif /* KW_ANSWER_H */
