/* kw_load_io.c: JSONL iteration, atomic JSON documents, mkdir -p, UTC stamps. */
#include "loadgen/kw_load_io.h"

#include "common/kw_file.h"
#include "common/kw_json.h"
#include "common/kw_status.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

int kw_load_jsonl_each(const char *path, size_t max_bytes, kw_load_jsonl_fn fn, void *user, size_t *torn) {
    char *text = NULL;
    size_t size = 0;
    if (torn) *torn = 0;
    KW_FORWARD(kw_file_read_all(path, max_bytes ? max_bytes : ((size_t)4 << 30), &text, &size));
    int rc = 0;
    size_t lineno = 0;
    const char *p = text, *end = text + size;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *line_end = nl ? nl : end;
        const size_t n = (size_t)(line_end - p);
        const char *line = p;
        p = nl ? nl + 1 : end;
        ++lineno;
        size_t i = 0;
        while (i < n && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r'))
            ++i;
        if (i == n) continue;
        cJSON *row = NULL;
        rc = kw_json_parse(line, n, &row);
        if (rc < 0) {
            if (!nl) { /* a last line cut short */
                if (torn) ++*torn;
                rc = 0;
                break;
            }
            rc = kw_error_set(rc, "%s line %zu: %s", path, lineno, kw_error_detail());
            break;
        }
        rc = fn(row, lineno, user);
        cJSON_Delete(row);
        if (rc < 0) break;
        if (rc > 0) {
            rc = 0;
            break;
        }
    }
    free(text);
    return rc;
}

int kw_load_json_write(const char *path, const cJSON *doc) {
    char *text = cJSON_Print(doc);
    KW_RETURN_IF(!text, KW_E_NOMEM, "out of memory printing %s", path);
    const size_t n = strlen(text);
    char *withnl = realloc(text, n + 2);
    if (!withnl) {
        free(text);
        KW_FAIL(KW_E_NOMEM, "out of memory printing %s", path);
    }
    withnl[n] = '\n';
    withnl[n + 1] = '\0';
    const int rc = kw_file_write_all(path, withnl, n + 1);
    free(withnl);
    return rc;
}

int kw_load_mkdirs(const char *path) {
    char buf[4096];
    const size_t n = strlen(path);
    KW_RETURN_IF(n == 0 || n >= sizeof(buf), KW_E_INVALID_ARG, "bad folder path \"%.80s\"", path);
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; ++i) {
        if (buf[i] != '/' && buf[i] != '\0') continue;
        const char c = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) KW_FAIL(KW_E_IO, "mkdir %s: %s", buf, strerror(errno));
        buf[i] = c;
    }
    KW_RETURN_IF(!kw_path_is_dir(path), KW_E_IO, "%s is not a folder", path);
    return 0;
}

void kw_load_utc_now(char *buf, size_t cap) {
    const time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}
