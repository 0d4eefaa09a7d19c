/* kw_json.h: JSON reading on top of cJSON (Debian's libcjson), with typed, range-checked getters.
 *
 * Documents are cJSON trees owned by the caller (cJSON_Delete). Getters never allocate; strings they return point
 * into the tree. Numbers are doubles in cJSON: integer getters accept only integral values exactly representable
 * (|v| <= 2^53) and inside the caller's [min, max].
 */
#ifndef KW_JSON_H
#define KW_JSON_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

/* Parses len bytes of text (need not be NUL-terminated). *out is owned by the caller. */
int kw_json_parse(const char *text, size_t len, cJSON **out);

/* Reads and parses a file of at most max_size bytes. */
int kw_json_load_file(const char *path, size_t max_size, cJSON **out);

/* The largest integer a JSON number is read exactly as (2^53 - 1, JavaScript's MAX_SAFE_INTEGER): cJSON holds numbers
 * as doubles, so a larger one in the text may already have been rounded. */
#define KW_JSON_MAX_EXACT_INT 9007199254740991LL

/* Converts a JSON number to an exact int64 in [min, max]; a number of magnitude above KW_JSON_MAX_EXACT_INT is refused
 * whatever the range (its text may name another integer than the one read). */
int kw_json_to_i64(const cJSON *item, int64_t min, int64_t max, int64_t *out);

/* Field getters: KW_E_NOT_FOUND if key is absent (or JSON null), KW_E_PARSE if it has the wrong type or range.
 * `what` names the document in error messages (e.g. "config.json"). */
int kw_json_get_i64(const cJSON *obj, const char *key, int64_t min, int64_t max, int64_t *out, const char *what);
int kw_json_get_f64(const cJSON *obj, const char *key, double *out, const char *what);
int kw_json_get_bool(const cJSON *obj, const char *key, int *out, const char *what);
int kw_json_get_str(const cJSON *obj, const char *key, const char **out, const char *what);

/* Optional variants: an absent key (or null) leaves *out at the default and returns 0; a wrong type is an error. */
int kw_json_opt_i64(const cJSON *obj, const char *key, int64_t min, int64_t max, int64_t def, int64_t *out,
                    const char *what);
int kw_json_opt_f64(const cJSON *obj, const char *key, double def, double *out, const char *what);
int kw_json_opt_bool(const cJSON *obj, const char *key, int def, int *out, const char *what);
int kw_json_opt_str(const cJSON *obj, const char *key, const char *def, const char **out, const char *what);

/* Appends s as a JSON string literal (with quotes and escapes) to a growing buffer. *buf is realloc'ed; *len and *cap
 * track it. Returns 0 or KW_E_NOMEM. */
int kw_json_append_string(char **buf, size_t *len, size_t *cap, const char *s, size_t n);

/* Decodes text[0..len), which must hold exactly one JSON string literal with optional JSON whitespace (space, tab,
 * CR, LF) around it, into a new NUL-terminated buffer *out of *out_len bytes (owned by the caller, free()). Unlike a
 * cJSON string, the result keeps an escaped U+0000 as a NUL byte (counted in *out_len). Escapes follow RFC 8259 and a
 * \u surrogate pair becomes one 4-byte UTF-8 sequence; other bytes are copied as they are (not checked to be UTF-8).
 * @return 0; KW_E_PARSE for text that is not one well-formed literal (raw control character, unknown escape, bad
 * \u digits, trailing text); KW_E_UTF8 for a lone surrogate escape; KW_E_NOMEM. *out is untouched on failure. */
int kw_json_decode_string(const char *text, size_t len, char **out, size_t *out_len);

#endif /* KW_JSON_H */
