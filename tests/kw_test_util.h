/* kw_test_util.h: scaffolding the cmocka tests share: jsonl fixtures read row by row, hex fields decoded, temporary
 * folders removed. Failures fail the running test (cmocka assertions) instead of returning a status. Test-only code;
 * every test executable links it (tests/CMakeLists.txt). */
#ifndef KW_TEST_UTIL_H
#define KW_TEST_UTIL_H

#include <stddef.h>

#include <cjson/cJSON.h>

/* A jsonl file being read: one JSON value per line. */
typedef struct kw_test_jsonl {
    const char *path; /* borrowed from the caller of kw_test_jsonl_open */
    char *text;       /* the whole file (owned) */
    size_t size, pos;
    size_t lineno; /* 1-based line number of the row last returned (0 before the first) */
    cJSON *row;    /* the row last returned (owned; freed by the next call and by close) */
} kw_test_jsonl;

/* Reads the whole file at path (which must outlive it); a missing or unreadable file fails the test. */
void kw_test_jsonl_open(kw_test_jsonl *it, const char *path);

/* The next row, parsed; NULL after the last line. A line that is not one JSON value fails the test (naming the path
 * and line). The row stays valid until the next call or kw_test_jsonl_close. */
const cJSON *kw_test_jsonl_next(kw_test_jsonl *it);

/* Frees the text and the current row. */
void kw_test_jsonl_close(kw_test_jsonl *it);

/* Decodes a string of lowercase hex digit pairs into a new buffer (caller frees) of *len bytes plus a NUL; a bad
 * string (odd length, another character) fails the test. */
char *kw_test_hex_decode(const char *hex, size_t *len);

/* Removes path and, when it is a folder, everything below it (symbolic links are removed, not followed).
 * Returns 0, or -1 when something could not be removed. */
int kw_test_remove_tree(const char *path);

#endif /* KW_TEST_UTIL_H */
