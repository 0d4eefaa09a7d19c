/* kw_genfuser.h: deterministic random C2C fuser folders in the released layout, for tests, demos and benchmarks.
 *
 * Writes OUT/config.json (a training recipe like recipe/train_recipe/C2C_0.6+0.5.json), OUT/final/projector_config.json
 * (the last_aligned mapping of c2c_spec.md §1.7, one projector per receiver layer, as SFT_train.py builds it),
 * OUT/final/projector_{i}.json (the C2CProjector init_args, as the reference registry writes them) and
 * OUT/final/projector_{i}.pt (torch.save archives of the state_dict, written by kw_torchzip_write, in the reference's
 * key order with gate_temperature third) or projector_{i}.safetensors. Not trained: random weights of the right
 * shapes, and gates chosen so that every kind of layer occurs.
 *
 * Values: element k of tensor "key_in.weight" of projector i is kw_genmodel_value(seed, "projector_<i>.key_in.weight",
 * is_norm, k) (norm weights around 1, everything else with sd 2^-6), rounded to the dtype; so a tensor depends only on
 * the seed and its name. Gate logits are set by the layer's kind:
 *   open     both logits in [2^-4, 1] (from the seed)
 *   closed   key logit exactly 0.0 (closed: the test is logit > 0), value logit in [-1, -2^-4]
 *   k_only   key as open, value as closed          v_only   the reverse
 * gate_temperature is 0.001 (the end of the reference's anneal; unused at inference).
 */
#ifndef KW_GENFUSER_H
#define KW_GENFUSER_H

#include <stddef.h>
#include <stdint.h>

#include "c2c/kw_fuser_load.h"
#include "kernels/kw_backend.h"

enum kw_genfuser_gate {
    KW_GENFUSER_GATE_OPEN = 0,
    KW_GENFUSER_GATE_CLOSED = 1,
    KW_GENFUSER_GATE_K_ONLY = 2,
    KW_GENFUSER_GATE_V_ONLY = 3,
};

#define KW_GENFUSER_MAX_LAYERS 1024

typedef struct kw_genfuser_options {
    int32_t recv_layers;   /* receiver num_hidden_layers = number of projectors */
    int32_t sharer_layers; /* sharer num_hidden_layers (for the mapping) */
    kw_fuser_dims dims;    /* source = sharer (head_dim, kv heads), target = receiver; hidden etc. */
    enum kw_dtype dtype;   /* KW_DTYPE_BF16 or KW_DTYPE_F32 for the weight files */
    uint64_t seed;
    const uint8_t *gates;      /* recv_layers entries of enum kw_genfuser_gate, or NULL for the default below */
    const char *base_model;    /* recipe model.base_model (e.g. the receiver folder); borrowed */
    const char *teacher_model; /* recipe model.teacher_model; borrowed */
    int32_t is_do_alignment;   /* recipe flag: 1 when the two models have different tokenizers */
    int32_t safetensors;       /* 1: write projector_{i}.safetensors instead of .pt */
} kw_genfuser_options;

/* The default gate kinds for n receiver layers: the last layer (n >= 2) is k_only, every layer t with t % 3 == 2
 * (other than the last) is closed, the rest are open. With n = 2: layer 0 open, layer 1 k_only. */
void kw_genfuser_default_gates(int32_t n, uint8_t *gates);

/* last_aligned_sources(T, S, k=1) of the reference: target t reads sharer layer clamp(S - T + t, 0, S - 1). */
int32_t kw_genfuser_last_aligned(int32_t recv_layers, int32_t sharer_layers, int32_t t);

/* Writes the folder out_dir (created if missing, with final/ inside; existing files are replaced). The folder is
 * reloaded with kw_fuser_load as a final check. Errors: KW_E_INVALID_ARG (options), KW_E_IO, KW_E_NOMEM, and any
 * error of the reload (which would be a bug). */
int kw_genfuser_write(const kw_genfuser_options *opt, const char *out_dir);

#endif /* KW_GENFUSER_H */
