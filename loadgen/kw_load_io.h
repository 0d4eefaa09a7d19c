/* kw_load_io.h: the files of a kvload run folder: JSONL read line by line, JSON documents written atomically, folder
 * creation, the UTC time stamp records carry. Failures name the file (and line). */
#ifndef KW_LOAD_IO_H
#define KW_LOAD_IO_H

#include <stddef.h>

#include <cjson/cJSON.h>

/* Called for each non-blank line of a JSONL file with the parsed value (borrowed for the call) and its 1-based line
 * number. Returns 0 to go on, > 0 to stop early (not an error), or a negative kw_status. */
typedef int (*kw_load_jsonl_fn)(const cJSON *row, size_t line, void *user);

/* Reads path (at most max_bytes; 0: 4 GiB) and calls fn on every line. A line that is not JSON is KW_E_PARSE naming
 * path and line, unless it is the file's last line and not terminated by '\n' (a record cut by a crash), which is
 * skipped and counted in *torn (may be NULL). @return 0, the callback's negative status, KW_E_IO, KW_E_PARSE. */
int kw_load_jsonl_each(const char *path, size_t max_bytes, kw_load_jsonl_fn fn, void *user, size_t *torn);

/* Writes doc as indented JSON to path atomically (temporary file and rename), with a final newline. */
int kw_load_json_write(const char *path, const cJSON *doc);

/* mkdir -p. @return 0 or KW_E_IO. */
int kw_load_mkdirs(const char *path);

/* The current UTC time as "2025-12-03T11:37:36Z" into buf (at least 21 bytes). */
void kw_load_utc_now(char *buf, size_t cap);

#endif /* KW_LOAD_IO_H */
