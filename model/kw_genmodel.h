/* kw_genmodel.h: deterministic random HF model folders (config.json, generation_config.json, model.safetensors and,
 * optionally, copied tokenizer files) for Qwen2, Qwen3, Llama and Gemma3. They are the embedded demo models, the test
 * models and the real-shaped benchmark models. Not trained, not meaningful: only the shapes, names and files are real.
 *
 * Weights are a pure function of (seed, tensor name, element index), so a tensor does not depend on the others and
 * the same seed gives the same bytes on every machine:
 *   key    = mix(fnv1a64(name) ^ mix(seed + G))                     (mix = the splitmix64 finaliser, G its increment)
 *   r_d    = mix(key + (3*i + d + 1) * G), d = 0, 1, 2               (splitmix64, random-access)
 *   N      = sum of the twelve 16-bit chunks of r_0..r_2 - 393210    (an Irwin-Hall(12) integer: mean 0, sd 65536)
 *   matrix = N * 2^-22       (sd 2^-6 = 0.0156; embeddings, projections and biases)
 *   norm   = (N + 2^20) * 2^-20   (1 + noise of sd 2^-4; RMSNorm and q/k norm weights)
 *   offset = N * 2^-20            (noise of sd 2^-4; Gemma3's norm weights, which scale by 1 + w)
 * Every step is integer arithmetic or an exact float scaling by a power of two (|N| < 2^24), and the dtype
 * conversion is the integer round-to-nearest-even of common/kw_half.h: no libm call, no rounding that could differ
 * between compilers or CPUs. A sum of uniforms instead of Box-Muller avoids log/sin/cos, whose last-bit results vary
 * between libms; Irwin-Hall(12) is bounded at 6 sd, which is irrelevant for random weights.
 */
#ifndef KW_GENMODEL_H
#define KW_GENMODEL_H

#include <stdint.h>

#include "kernels/kw_backend.h"
#include "model/kw_config.h"

typedef struct kw_genmodel_options {
    kw_model_config cfg; /* the model to generate: kw_genmodel_preset fills it, callers may then edit it */
    enum kw_dtype dtype; /* F32, BF16 or F16, used for every tensor (and written as torch_dtype) */
    uint64_t seed;       /* weights are a function of seed and tensor name */
    const char
        *tokenizer_dir; /* NULL, or a folder whose tokenizer.json and tokenizer_config.json are copied; borrowed */
} kw_genmodel_options;

/* Fills cfg with a preset: "tiny" (2 layers, hidden 64, 4/2 heads, intermediate 128, the family's real vocabulary
 * and special ids; needs *arch; Gemma3's tiny model has one sliding layer with a window of 16 and one global layer)
 * or a real shape, "qwen3-0.6b", "qwen2.5-0.5b", "llama-3.2-1b", "gemma-3-270m" (arch NULL, or equal to the
 * preset's). KW_E_INVALID_ARG for an unknown preset or a mismatched arch. */
int kw_genmodel_preset(const char *preset, const enum kw_arch *arch, kw_model_config *cfg);

/* Moves special ids that do not fit a cut-down vocabulary inside it (eos -> vocab-1, bos/pad -> vocab-2, or 0).
 * Returns 1 if anything moved, else 0. */
int kw_genmodel_fit_special_ids(kw_model_config *cfg);

/* The config.json / generation_config.json texts for cfg (HF field names, keys sorted, 2-space indent, loadable by
 * transformers 4.52). *out is owned by the caller (free). */
int kw_genmodel_config_json(const kw_model_config *cfg, enum kw_dtype dtype, char **out);
int kw_genmodel_generation_json(const kw_model_config *cfg, char **out);

/* The value formulas of kw_genmodel_value. */
enum kw_genmodel_kind {
    KW_GENMODEL_MATRIX = 0, /* N * 2^-22 */
    KW_GENMODEL_NORM = 1,   /* (N + 2^20) * 2^-20 */
    KW_GENMODEL_OFFSET = 2, /* N * 2^-20 (Gemma3 norms) */
};

/* Element index of the named tensor, before dtype rounding (see the header comment). is_norm is a kw_genmodel_kind
 * (0 and 1 as before the Gemma3 kind existed). Exposed for tests. */
float kw_genmodel_value(uint64_t seed, const char *name, int is_norm, uint64_t index);

/* Writes the model folder out_dir (created if missing, one level; existing files are replaced atomically).
 * model.safetensors is streamed: memory use is a small chunk buffer, whatever the model size. Each file is written
 * atomically, config.json last (a first run that fails leaves no config.json). The written folder is
 * reloaded with kw_config_load and kw_safetensors_open as a final check. */
int kw_genmodel_write(const kw_genmodel_options *opt, const char *out_dir);

#endif /* KW_GENMODEL_H */
