/* kw_quantize_st.h: the safetensors side of kw_quantize_file (internal to model/): tensors collected in memory as
 * kvwire quantize converts them, written as one safetensors file in the layout of kw_st_quant.h, and the files an HF
 * folder needs beside it copied from the source folder.
 *
 * Not here: the type rule and the block quantizers (kw_quantize.h), the layout itself (kw_st_quant.h).
 */
#ifndef KW_QUANTIZE_ST_H
#define KW_QUANTIZE_ST_H

#include <stddef.h>
#include <stdint.h>

#include "model/kw_config.h"

typedef struct kw_q_st_sink kw_q_st_sink; /* opaque */

/* A new, empty sink for a file quantized under the scheme called scheme_name ("q8_0", ...: recorded in the metadata).
 * *out is owned by the caller (kw_q_st_sink_free). Errors: KW_E_NOMEM. */
int kw_q_st_sink_new(const char *scheme_name, kw_q_st_sink **out);

/* Frees the sink and every buffer it holds. NULL is a no-op. */
void kw_q_st_sink_free(kw_q_st_sink *s);

/* Adds tensor name (HF name, copied) of ggml type `type`, shape[0..ndim) in HF order (outermost first), whose values
 * are data: nbytes bytes of the type's blocks along the last dimension, malloc'ed; the sink takes ownership of data
 * even when it fails. F32, F16 and BF16 become tensors of that dtype; the types with a quantized layout (2-D only)
 * become codes, scales and minimums (kw_st_quant.h). Errors: KW_E_MODEL_DTYPE, KW_E_MODEL_SHAPE, KW_E_NOMEM. */
int kw_q_st_sink_add(kw_q_st_sink *s, const char *name, uint32_t type, int32_t ndim, const int64_t *shape, void *data,
                     size_t nbytes);

/* Writes the file at path (atomically). The same additions give the same bytes. Errors: those of
 * kw_safetensors_write. */
int kw_q_st_sink_write(const kw_q_st_sink *s, const char *path);

/* Copies the non-weight files of the HF folder in_dir (config.json, generation_config.json, the tokenizer files, the
 * chat template) that exist into the folder of out_path, the safetensors file just written. Errors: KW_E_IO,
 * KW_E_LIMIT, KW_E_NOMEM. */
int kw_q_st_copy_sidecars(const char *in_dir, const char *out_path);

/* Writes config.json and generation_config.json for cfg (kw_genmodel_config_json: the HF form of the configuration;
 * torch_dtype float32) into the folder of out_path. Errors: those of kw_genmodel_config_json (KW_E_INVALID_ARG: a
 * configuration with no HF form it writes), KW_E_IO, KW_E_NOMEM. */
int kw_q_st_write_config(const kw_model_config *cfg, const char *out_path);

#endif /* KW_QUANTIZE_ST_H */
