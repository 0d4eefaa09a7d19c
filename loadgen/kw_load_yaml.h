/* kw_load_yaml.h: a YAML document (libyaml) read into a cJSON tree, so that sweep files and JSON options share one
 * code path. Plain scalars are typed with the YAML 1.2 core schema: null (~, null, empty), booleans (true, false in
 * their three spellings), integers (decimal, 0x, 0o), floats (with .inf and .nan); anything else, and every quoted
 * scalar, is a string. "yes"/"no" stay strings. Mapping keys must be scalars and unique. Aliases are expanded;
 * nesting deeper than 64 levels is refused. Only the first document of a stream is read.
 */
#ifndef KW_LOAD_YAML_H
#define KW_LOAD_YAML_H

#include <stddef.h>

#include <cjson/cJSON.h>

/* Parses text[0..len). @return 0 and *out (caller owns), or KW_E_PARSE with line and column in the detail, or
 * KW_E_NOMEM. */
int kw_load_yaml_parse(const char *text, size_t len, cJSON **out);

/* Reads and parses a file (at most 16 MiB). */
int kw_load_yaml_load_file(const char *path, cJSON **out);

#endif /* KW_LOAD_YAML_H */
