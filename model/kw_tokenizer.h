/* kw_tokenizer.h: exact byte-level BPE tokenization from an HF tokenizer.json (Qwen2/Qwen2.5/Qwen3, Llama-3), giving
 * the same ids as HF `tokenizers`: NFC normalizer, Split regex pre-tokenizer (PCRE2, UTF + UCP), ByteLevel mapping,
 * merges by rank, added/special tokens matched in the text first, and decoding with optional skip of special tokens.
 * A loaded tokenizer is immutable and may be shared by threads. */
#ifndef KW_TOKENIZER_H
#define KW_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct kw_tokenizer kw_tokenizer; /* opaque */

/* Loads path: a tokenizer.json file, a folder containing one, or a GGUF file (kw_tokenizer_load_gguf). *out is owned
 * by the caller (kw_tokenizer_free). Unsupported models/normalizers/pre-tokenizers are refused with KW_E_TOKENIZER
 * and the reason. */
int kw_tokenizer_load(const char *path, kw_tokenizer **out);

/* Builds the tokenizer a GGUF file's metadata describes (model/kw_tokenizer_gguf.c): tokenizer.ggml.model "gpt2"
 * (byte-level BPE: tokens, merges, token types; control tokens become special added tokens, user-defined ones plain
 * added tokens) with the pre-tokenizer tokenizer.ggml.pre names (gpt2, smollm, qwen2, llama-bpe), giving the ids the
 * model's own HF tokenizer.json gives. Other tokenizer models are refused with KW_E_TOKENIZER. *out is owned by the
 * caller. */
int kw_tokenizer_load_gguf(const char *path, kw_tokenizer **out);

/* NULL is a no-op. */
void kw_tokenizer_free(kw_tokenizer *tok);

/* Encodes len bytes of UTF-8 text with no BOS/EOS added (HF add_special_tokens=False); added and special tokens
 * written in the text are recognised. *ids is a new array owned by the caller (free()), *n_ids its length.
 * Invalid UTF-8 gives KW_E_UTF8. */
int kw_tokenizer_encode(const kw_tokenizer *tok, const char *text, size_t len, int32_t **ids, size_t *n_ids);

/* kw_tokenizer_encode plus the offsets HF gives with return_offsets_mapping=True: token i covers
 * [(*offsets)[2i], (*offsets)[2i+1]) of the ORIGINAL text, in bytes (chars == 0) or in code points (chars != 0, the
 * character offsets Python shows). As in HF, a token holding part of a multi-byte character gets the whole
 * character's range, and NFC maps a composed character to the first original character it came from. *ids and
 * *offsets (2 * *n_ids entries) are new arrays owned by the caller (free()). Invalid UTF-8 gives KW_E_UTF8. */
int kw_tokenizer_encode_offsets(const kw_tokenizer *tok, const char *text, size_t len, int chars, int32_t **ids,
                                size_t **offsets, size_t *n_ids);

/* Decodes ids to UTF-8 (byte sequences that are not valid UTF-8 become U+FFFD, as HF does). skip_special drops the
 * special added tokens. *text is NUL-terminated, owned by the caller (free()); *len excludes the NUL.
 * Ids outside the vocabulary give KW_E_TOKEN_ID. */
int kw_tokenizer_decode(const kw_tokenizer *tok, const int32_t *ids, size_t n_ids, int skip_special, char **text,
                        size_t *len);

/* Pre-tokenization only, for tests and tools: the text cut the way HF cuts it before BPE (added tokens first, then
 * the normalizer and the Split regex on the text between them). *norm (NUL-terminated, owned by the caller, free())
 * is the concatenation of all pieces, i.e. the normalized text with the added tokens kept; piece i is bytes
 * [(*bounds)[2i], (*bounds)[2i+1]) of it. *bounds is owned by the caller (free()). Invalid UTF-8 gives KW_E_UTF8. */
int kw_tokenizer_pre_tokenize(const kw_tokenizer *tok, const char *text, size_t len, char **norm, size_t *norm_len,
                              size_t **bounds, size_t *n_pieces);

/* The id of a token string (vocabulary or added token, exact match of its surface form), or -1. */
int32_t kw_tokenizer_token_id(const kw_tokenizer *tok, const char *token);

/* Number of ids (base vocabulary plus added tokens; the largest id + 1). */
int32_t kw_tokenizer_vocab_size(const kw_tokenizer *tok);

/* 1 if id is a special added token (skipped by decode with skip_special). */
int kw_tokenizer_is_special(const kw_tokenizer *tok, int32_t id);

/* 1 if every id below both vocabulary sizes stands for the same token in a and b (the same surface form, or
 * unassigned in both), else 0 (also for NULL). Ids of one tokenizer then mean the same to a model of the other, as
 * the C2C reference assumes when it feeds Qwen3 ids to Qwen2.5: a tokenizer that only adds tokens above the other's
 * ids agrees with it. Whether special flags or merges agree is not looked at. */
int kw_tokenizer_same_ids(const kw_tokenizer *a, const kw_tokenizer *b);

#endif /* KW_TOKENIZER_H */
