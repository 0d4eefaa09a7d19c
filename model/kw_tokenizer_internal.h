/* kw_tokenizer_internal.h: the entry point other model/ files use to build a kw_tokenizer from a tokenizer.json tree
 * they assembled themselves (kw_tokenizer_gguf.c turns GGUF metadata into one). Not a public API. */
#ifndef KW_TOKENIZER_INTERNAL_H
#define KW_TOKENIZER_INTERNAL_H

#include "common/kw_json.h"
#include "model/kw_tokenizer.h"

/* Builds a tokenizer from a parsed tokenizer.json document (borrowed; only read during the call), with the checks and
 * errors of kw_tokenizer_load. *out is owned by the caller (kw_tokenizer_free). */
int kw_tokenizer_from_json(const cJSON *root, kw_tokenizer **out);

#endif /* KW_TOKENIZER_INTERNAL_H */
