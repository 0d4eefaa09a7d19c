/* kw_fuser_load.h: a C2C fuser (one C2CProjector per receiver layer plus the layer mapping), loaded from a released
 * fuser folder (c2c_spec.md §3). This is the description of the fuser and its host weights; the projector forward
 * and the fusion pipeline are built on top of it elsewhere.
 *
 * Accepted layouts: a pair folder `DIR/config.json` + `DIR/final/{projector_config.json, projector_{i}.json,
 * projector_{i}.pt}` (as on HF nics-efc/C2C_Fuser), or a checkpoint folder holding those files directly (config.json
 * optional there). The weights may also be `projector_{i}.safetensors` (as written by `kvwire convert-fuser`), with
 * the same tensor names; a folder holding both kinds is refused as ambiguous.
 *
 * What is checked, beyond what the reference checks:
 *  - like the reference, the number of projectors is the number of directory entries whose name starts with
 *    `projector_<digits>.pt` (re.match of projector_\d+\.pt, with ASCII digits); projector_{i}.json and the weight
 *    file must then exist for every i below that count;
 *  - `projector_{i}.json` must name the class C2CProjector (case-insensitively, as the registry) and its init_args
 *    may only hold the constructor's parameters (absent ones take the constructor defaults: source/target_num_heads
 *    1, hidden_dim 1024, intermediate_dim 1024, num_layers 3); every projector must have the same dimensions;
 *  - all learned tensors must be present with the shapes the init_args imply (the reference loads with strict=False
 *    and would silently keep random weights); an unexpected tensor is refused too; `gate_temperature` (a training
 *    buffer) is ignored;
 *  - `projector_config.json` must map target model 0 from exactly one sharer, every target layer to a non-empty list
 *    of [source layer, projector index] pairs with a valid projector index; only the first pair is used (as the
 *    reference's forward does), the others are counted;
 *  - `config.json` (the training recipe), when present, must agree with the projector files on the projector type
 *    and, where given, hidden_dim, intermediate_dim and num_layers.
 * Tensors are bf16 or f32 (or f16) in the files; everything is exposed as bf16: f32 and f16 values are rounded to
 * bf16 (round to nearest even, as torch's .to(torch.bfloat16)) when loaded, which is what the reference does when it
 * casts the projectors to the receiver's bf16. The gates are decided on the bf16 logits: open iff logit > 0.
 */
#ifndef KW_FUSER_LOAD_H
#define KW_FUSER_LOAD_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kw_backend.h"

/* One weight on the host. */
typedef struct kw_fuser_tensor {
    const char *name;    /* state-dict key, e.g. "key_in.weight"; owned by the fuser */
    enum kw_dtype dtype; /* always KW_DTYPE_BF16 */
    int32_t ndim;        /* 0 (gate logits), 1 (biases, norms) or 2 (Linear weights, [out, in]) */
    int64_t shape[2];
    const void *data; /* bf16 elements, 2-byte aligned, owned by the fuser (a file mapping or a converted copy) */
    size_t nbytes;
} kw_fuser_tensor;

/* C2CProjector constructor arguments (projector_{i}.json init_args). in = source_dim * source_heads + target_dim *
 * target_heads; out = target_dim * target_heads. */
typedef struct kw_fuser_dims {
    int32_t source_dim;       /* sharer head_dim */
    int32_t source_heads;     /* sharer num_key_value_heads */
    int32_t target_dim;       /* receiver head_dim */
    int32_t target_heads;     /* receiver num_key_value_heads */
    int32_t hidden_dim;       /* width of the residual blocks */
    int32_t intermediate_dim; /* FFN width of mlp1 and proj_mlp2 (scalar_mlp2 uses hidden_dim) */
    int32_t num_layers;       /* >= 3; proj_mlp2 has num_layers - 2 blocks */
} kw_fuser_dims;

/* StandardFFNLayer: y = x + w2(GELU(w1(RMSNorm(x)))), RMSNorm eps 1e-6, no biases. */
typedef struct kw_fuser_ffn {
    const kw_fuser_tensor *norm; /* (hidden) */
    const kw_fuser_tensor *w1;   /* (inter, hidden) */
    const kw_fuser_tensor *w2;   /* (hidden, inter) */
} kw_fuser_ffn;

/* One branch (key or value) of a projector; the two branches share nothing. Pointers are owned by the fuser. */
typedef struct kw_fuser_branch {
    const kw_fuser_tensor *in_w;          /* *_in.weight (hidden, in): columns [0, source) multiply the sharer */
    const kw_fuser_tensor *in_b;          /* *_in.bias (hidden) */
    kw_fuser_ffn mlp1;                    /* *_mlp1.blocks.0, intermediate_dim */
    kw_fuser_ffn scalar_mlp2;             /* *_scalar_mlp2.blocks.0, intermediate width = hidden_dim */
    const kw_fuser_tensor *scalar_head_w; /* *_scalar_head.weight (target_heads, hidden) */
    const kw_fuser_tensor *scalar_head_b; /* *_scalar_head.bias (target_heads) */
    const kw_fuser_ffn *proj_mlp2;        /* *_proj_mlp2.blocks.{0..n_proj_blocks-1}, intermediate_dim */
    int32_t n_proj_blocks;                /* num_layers - 2 */
    const kw_fuser_tensor *proj_out_w;    /* *_proj_out.weight (out, hidden) */
    const kw_fuser_tensor *proj_out_b;    /* *_proj_out.bias (out) */
    const kw_fuser_tensor *gate_logit;    /* *_gate_logit, 0-dim */
    float gate_value;                     /* the bf16 gate logit as a float */
    int32_t gate_open;                    /* gate_value > 0: the branch changes the cache */
} kw_fuser_branch;

typedef struct kw_fuser_projector {
    kw_fuser_branch key;
    kw_fuser_branch value;
    size_t n_tensors;
    const kw_fuser_tensor *tensors; /* every learned tensor, in the canonical state-dict order (c2c_spec.md §2.6) */
} kw_fuser_projector;

/* The training recipe (config.json), when the folder has one. Strings are owned by the fuser. */
typedef struct kw_fuser_recipe {
    int32_t present;                      /* 0: no config.json; every other field is then empty */
    const char *base_model;               /* receiver, e.g. "Qwen/Qwen3-0.6B" */
    const char *teacher_model;            /* sharer */
    int32_t include_response;             /* default 0 */
    int32_t is_do_alignment;              /* default 0 */
    const char *alignment_strategy;       /* default "first" (as SFT_train) */
    const char *projector_type;           /* e.g. "C2CProjector" */
    const char *mapping;                  /* "last_aligned" or "k_nearest"; NULL if absent */
    const char *multi_source_fusion_mode; /* default "sequential" */
} kw_fuser_recipe;

typedef struct kw_fuser {
    kw_fuser_recipe recipe;
    kw_fuser_dims dims;
    int32_t weights_safetensors; /* 1 if the weights came from projector_{i}.safetensors */
    int32_t n_projectors;
    const kw_fuser_projector *projectors; /* n_projectors */
    int32_t source_model;                 /* the sharer's model index in projector_config.json (normally 1) */
    int32_t n_target_layers;              /* 1 + the highest target layer in the mapping */
    const int32_t *map_source;            /* per target layer: sharer layer, or -1 when the layer is not fused */
    const int32_t *map_projector;         /* per target layer: projector index, or -1 */
    int32_t n_extra_pairs;              /* mapping pairs after the first of a layer (never used, as in the reference) */
    struct kw_fuser_internal *internal; /* owned: files, mappings, converted buffers */
} kw_fuser;

enum kw_fuser_load_flags {
    KW_FUSER_LOAD_NO_CRC = 1, /* skip the CRC-32 check of the .pt archives */
};

/* Loads the fuser in dir (pair folder or checkpoint folder). *out is owned by the caller (kw_fuser_free).
 * Errors: KW_E_NOT_FOUND (no projector_config.json / no projector files), KW_E_FUSER_CONFIG (JSON files, mapping,
 * counts, class, recipe disagreement), KW_E_FUSER_TENSOR (missing, unexpected or misshaped tensor, bad dtype), and
 * the errors of kw_torchzip_open / kw_safetensors_open / the JSON reader (KW_E_PT_FORMAT, KW_E_PT_PICKLE,
 * KW_E_MODEL_FORMAT, KW_E_PARSE, KW_E_IO, ...). The detail names the file and the field or tensor. */
int kw_fuser_load(const char *dir, unsigned flags, kw_fuser **out);

/* Releases everything. NULL is a no-op. */
void kw_fuser_free(kw_fuser *fuser);

/* The mapping for receiver layer target_layer: 0 with *source_layer and *projector set (either may be NULL), or
 * KW_E_NOT_FOUND when that layer is not fused (absent from the mapping or beyond n_target_layers). */
int kw_fuser_layer(const kw_fuser *fuser, int32_t target_layer, int32_t *source_layer,
                   const kw_fuser_projector **projector);

/* 1 if receiver layer target_layer is mapped and at least one of its gates is open, else 0: a layer whose projector
 * has both gates closed leaves the cache unchanged and can be skipped (c2c_spec.md §2.4). */
int kw_fuser_layer_active(const kw_fuser *fuser, int32_t target_layer);

/* Checks the fuser against the two models: every mapped target layer below recv_layers, every source layer below
 * sharer_layers, and the projector dims equal to (sharer kv heads, head_dim) and (receiver kv heads, head_dim).
 * KW_E_FUSER_CONFIG with the mismatch in the detail. */
int kw_fuser_check_models(const kw_fuser *fuser, int32_t recv_layers, int32_t recv_kv_heads, int32_t recv_head_dim,
                          int32_t sharer_layers, int32_t sharer_kv_heads, int32_t sharer_head_dim);

/* The canonical learned tensors of a C2CProjector with these dims, in state-dict order (c2c_spec.md §2.6): the two
 * gate logits, then key_in.weight, key_in.bias, value_in.weight, ... value_proj_out.bias. gate_temperature (a buffer
 * that torch saves third) is not part of the list. The loader, gen-fuser and convert-fuser all use this one list.
 * kw_fuser_tensor_count: 26 + 6 * (num_layers - 2), i.e. 32 for num_layers 3. */
size_t kw_fuser_tensor_count(const kw_fuser_dims *dims);

/* Entry i of that list: its name (into name, NUL-terminated, name_cap >= 64 is always enough), ndim and shape.
 * KW_E_INVALID_ARG if i >= the count or the dims are invalid (see kw_fuser_dims_check). */
int kw_fuser_tensor_spec(const kw_fuser_dims *dims, size_t i, char *name, size_t name_cap, int32_t *ndim,
                         int64_t shape[2]);

/* Range checks of dims: every field >= 1 (num_layers >= 3), each at most 65536 (num_layers at most 64), and the
 * projector input width in a 32-bit range. KW_E_FUSER_CONFIG otherwise. */
int kw_fuser_dims_check(const kw_fuser_dims *dims);

/* Converts the fuser in in_dir (any layout kw_fuser_load accepts) to out_dir in the pair layout: out_dir/config.json
 * (copied, if in_dir has one) and out_dir/final/ with projector_config.json and projector_{i}.json copied byte for byte
 * and projector_{i}.safetensors (safetensors != 0) or projector_{i}.pt holding the learned tensors as loaded: bf16, in
 * the canonical order, names as in the reference state_dict (gate_temperature, unused at inference, is dropped). The
 * result is reloaded as a check. out_dir must not be the input folder. Errors: those of kw_fuser_load, KW_E_IO,
 * KW_E_INVALID_ARG. */
int kw_fuser_convert(const char *in_dir, const char *out_dir, int safetensors);

#endif /* KW_FUSER_LOAD_H */
