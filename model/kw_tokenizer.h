/* kw_tokenizer.h: exact BPE tokenization from an HF tokenizer.json, giving the same ids as HF `tokenizers`, for two
 * kinds of model:
 *  - byte-level BPE (Qwen2/Qwen2.5/Qwen3, Llama-3): NFC normalizer, Split regex pre-tokenizer (PCRE2, UTF + UCP),
 *    ByteLevel mapping, merges by rank;
 *  - SentencePiece-style BPE (Gemma 3, Llama-2 style files): spaces as "▁" (Replace / Prepend normalizers, or the
 *    Metaspace pre-tokenizer), merges by rank from the characters, byte fallback to <0xXX> tokens, unk; decoded with
 *    the file's Replace / ByteFallback / Fuse / Strip / Metaspace decoder steps. The same tokenizer can be built from
 *    a SentencePiece vocabulary given as arrays (kw_tokenizer_from_spm: GGUF's "llama" tokenizer model).
 * Added/special tokens are matched in the text first, and decoding can skip special tokens. A loaded tokenizer is
 * immutable and may be shared by threads. */
#ifndef KW_TOKENIZER_H
#define KW_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct kw_tokenizer kw_tokenizer; /* opaque */

/* Loads path: a tokenizer.json file, a folder containing one, or a GGUF file (kw_tokenizer_load_gguf). *out is owned
 * by the caller (kw_tokenizer_free). A tokenizer.json whose decoder is ByteLevel is byte-level BPE, any other
 * SentencePiece-style. Unsupported models/normalizers/pre-tokenizers/decoders are refused with KW_E_TOKENIZER and the
 * reason. */
int kw_tokenizer_load(const char *path, kw_tokenizer **out);

/* Builds the tokenizer a GGUF file's metadata describes (model/kw_tokenizer_gguf.c), giving the ids the model's own HF
 * tokenizer.json gives: tokenizer.ggml.model "gpt2" (byte-level BPE: tokens, merges, token types; control tokens
 * become special added tokens, user-defined ones plain added tokens) with the pre-tokenizer tokenizer.ggml.pre names
 * (gpt2, smollm, qwen2, llama-bpe), or "llama" (SentencePiece: tokens, scores and token types through
 * kw_tokenizer_from_spm). Other tokenizer models are refused with KW_E_TOKENIZER. *out is owned by the caller. */
int kw_tokenizer_load_gguf(const char *path, kw_tokenizer **out);

/* SentencePiece piece types, numbered as GGUF's tokenizer.ggml.token_type (and SentencePiece's ModelProto). */
enum kw_spm_token_type {
    KW_SPM_TOKEN_NORMAL = 1,
    KW_SPM_TOKEN_UNKNOWN = 2,      /* <unk>: an added special token, the unk of the model */
    KW_SPM_TOKEN_CONTROL = 3,      /* <bos>, <start_of_turn>, ...: added tokens, matched in the raw text */
    KW_SPM_TOKEN_USER_DEFINED = 4, /* added tokens too (Gemma 3: its whitespace runs, <start_of_image>, ...) */
    KW_SPM_TOKEN_UNUSED = 5,       /* in the vocabulary, never produced by merges of other types */
    KW_SPM_TOKEN_BYTE = 6,         /* <0x00> .. <0xFF>: byte fallback */
};

/* A SentencePiece vocabulary as arrays (borrowed; only read during kw_tokenizer_from_spm). */
typedef struct kw_tokenizer_spm_vocab {
    int32_t n_tokens;          /* ids are 0 .. n_tokens - 1 */
    const char *const *tokens; /* the pieces, UTF-8, "▁" (U+2581) for a space; a ' ' in a piece is read as "▁" */
    const size_t *token_lens;  /* byte length of each piece, or NULL for NUL-terminated pieces */
    const float *scores;       /* the SentencePiece scores (only their order matters; see kw_tokenizer_from_spm) */
    const int32_t *types;      /* enum kw_spm_token_type per piece */
    const uint8_t *special;    /* per piece: 1 if decode's skip_special drops it; NULL: unknown and control pieces */
    int add_space_prefix;      /* GGUF tokenizer.ggml.add_space_prefix: "▁" before the text (not after an added
                                  token), and one leading space stripped when decoding */
} kw_tokenizer_spm_vocab;

/* Builds the tokenizer HF's converters make from such a vocabulary (the tokenizer.json of Gemma 3 is one): spaces as
 * "▁", merges derived from the scores as transformers' generate_merges does (every split of a piece into two pieces,
 * ranked by the piece's score, then the two parts' lengths), with control and user-defined pieces at score 0 whatever
 * the array says (SentencePiece's own value; llama.cpp writes -1000 for them), byte fallback when <0xXX> pieces
 * exist, the UNKNOWN piece as unk (fused), control/user-defined/unknown pieces as added tokens. *out is owned by the
 * caller (kw_tokenizer_free). KW_E_TOKENIZER for pieces that are empty, over 4096 bytes, hold NUL or invalid UTF-8,
 * non-finite scores, types outside 1..6 or two UNKNOWN pieces; KW_E_LIMIT for too many tokens; KW_E_INVALID_ARG for
 * NULL arrays. */
int kw_tokenizer_from_spm(const kw_tokenizer_spm_vocab *vocab, kw_tokenizer **out);

/* NULL is a no-op. */
void kw_tokenizer_free(kw_tokenizer *tok);

/* Encodes len bytes of UTF-8 text with no BOS/EOS added (HF add_special_tokens=False); added and special tokens
 * written in the text are recognised. *ids is a new array owned by the caller (free()), *n_ids its length.
 * Invalid UTF-8 gives KW_E_UTF8. */
int kw_tokenizer_encode(const kw_tokenizer *tok, const char *text, size_t len, int32_t **ids, size_t *n_ids);

/* kw_tokenizer_encode plus the offsets HF gives with return_offsets_mapping=True (byte-level BPE only:
 * KW_E_UNSUPPORTED for a SentencePiece-style tokenizer): token i covers
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
 * the normalizer and the pre-tokenizer on the text between them: the Split regex for byte-level BPE; for
 * SentencePiece-style the "▁" replacement and its Split or Metaspace, usually one piece per stretch). *norm
 * (NUL-terminated, owned by the caller, free()) is the concatenation of all pieces, i.e. the normalized text with the
 * added tokens kept; piece i is bytes
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
