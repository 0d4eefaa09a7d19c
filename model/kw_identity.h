/* kw_identity.h: what identifies a model (or a fuser) across machines: SHA-256 digests of its files as stored.
 *
 * A model folder's identity is two digests: config_sha256, of config.json byte for byte, and weights_sha256, of its
 * weight files (every *.safetensors file of the folder) concatenated in the byte order of their names. Two daemons
 * that hold folders with equal digests run the same model (kv_direct needs that; docs/PROTOCOL.md §4.1). A fuser
 * folder's digest is over its projector files (projector_config.json, projector_{i}.json and the weights) found the
 * way kw_fuser_load finds them (the folder's final/ subfolder if it has one), again concatenated in name order.
 * Files are streamed through the digest, never held whole in memory. Not here: what a peer does with the digests.
 */
#ifndef KW_IDENTITY_H
#define KW_IDENTITY_H

#include <stddef.h>
#include <stdint.h>

#define KW_IDENTITY_DIGEST_BYTES 32

typedef struct kw_model_digest {
    uint8_t config_sha256[KW_IDENTITY_DIGEST_BYTES];
    uint8_t weights_sha256[KW_IDENTITY_DIGEST_BYTES];
} kw_model_digest;

/* The digests of the model at dir: an HF folder (config.json; the *.safetensors files in name order) or a GGUF file
 * (its header, metadata and tensor infos, i.e. the bytes before the tensor data; the tensor data). Errors: KW_E_IO (a
 * file cannot be read), KW_E_NOT_FOUND (no config.json, or no *.safetensors file), KW_E_FORMAT or another status of
 * kw_gguf_open (a malformed GGUF file), KW_E_NOMEM. */
int kw_identity_model(const char *dir, kw_model_digest *out);

/* The digest of a fuser folder's projector files (see above). Errors: KW_E_IO, KW_E_NOT_FOUND (no projector file),
 * KW_E_NOMEM. */
int kw_identity_fuser(const char *dir, uint8_t out[KW_IDENTITY_DIGEST_BYTES]);

/* SHA-256 of one file's bytes. Errors: KW_E_IO. */
int kw_identity_file(const char *path, uint8_t out[KW_IDENTITY_DIGEST_BYTES]);

/* The lower-case hex of a digest into out (65 bytes with the terminator). */
void kw_identity_hex(const uint8_t digest[KW_IDENTITY_DIGEST_BYTES], char out[2 * KW_IDENTITY_DIGEST_BYTES + 1]);

#endif /* KW_IDENTITY_H */
