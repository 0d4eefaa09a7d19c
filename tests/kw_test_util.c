/* kw_test_util.c: the shared test scaffolding of kw_test_util.h. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/kw_file.h"
#include "common/kw_json.h"
#include "common/kw_status.h"
#include "tests/kw_test_util.h"

void kw_test_jsonl_open(kw_test_jsonl *it, const char *path) {
    memset(it, 0, sizeof *it);
    it->path = path;
    const int rc = kw_file_read_all(path, (size_t)1 << 28, &it->text, &it->size);
    if (rc < 0) print_error("cannot read %s: %s\n", path, kw_error_detail());
    assert_int_equal(rc, 0);
}

const cJSON *kw_test_jsonl_next(kw_test_jsonl *it) {
    cJSON_Delete(it->row);
    it->row = NULL;
    if (it->pos >= it->size) return NULL; /* a final newline ends the last line, it does not start one */
    const char *line = it->text + it->pos;
    const char *nl = memchr(line, '\n', it->size - it->pos);
    const size_t len = nl ? (size_t)(nl - line) : it->size - it->pos;
    it->pos += len + (nl != NULL);
    ++it->lineno;
    const int rc = kw_json_parse(line, len, &it->row);
    if (rc < 0) print_error("%s line %zu: %s\n", it->path, it->lineno, kw_error_detail());
    assert_int_equal(rc, 0);
    return it->row;
}

void kw_test_jsonl_close(kw_test_jsonl *it) {
    cJSON_Delete(it->row);
    free(it->text);
    memset(it, 0, sizeof *it);
}

static int kw_test_hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

char *kw_test_hex_decode(const char *hex, size_t *len) {
    const size_t n = strlen(hex);
    assert_int_equal(n % 2, 0);
    char *out = malloc(n / 2 + 1);
    assert_non_null(out);
    for (size_t i = 0; i < n / 2; ++i) {
        const int hi = kw_test_hex_digit(hex[2 * i]), lo = kw_test_hex_digit(hex[2 * i + 1]);
        assert_true(hi >= 0 && lo >= 0);
        out[i] = (char)(hi << 4 | lo);
    }
    out[n / 2] = '\0';
    *len = n / 2;
    return out;
}

static int kw_test_remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

int kw_test_remove_tree(const char *path) {
    return nftw(path, kw_test_remove_entry, 16, FTW_DEPTH | FTW_PHYS) == 0 ? 0 : -1;
}
