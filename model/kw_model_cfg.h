/* kw_model_cfg.h: the compute.* config keys that choose how a daemon loads and runs its models (compute.weights,
 * compute.max_batch), as entries of a kw_cfg table, so sharerd and receiverd declare them identically (as
 * kernels/kw_backend_cfg.h does for the backend keys). Not a config reader: common/kw_cfg.h is. */
#ifndef KW_MODEL_CFG_H
#define KW_MODEL_CFG_H

#include <stddef.h>
#include <stdint.h>

#include "common/kw_cfg.h"
#include "model/kw_model.h"

/* Two kw_cfg_key initializers for the fields weights (int: an index of kw_model_weight_modes) and max_batch (int64_t)
 * of config_type. */
#define KW_MODEL_CFG_KEYS(config_type)                                                                                 \
    {.name = "compute.weights",                                                                                        \
     .type = KW_CFG_ENUM,                                                                                              \
     .offset = offsetof(config_type, weights),                                                                         \
     .def = "quantized",                                                                                               \
     .choices = kw_model_weight_modes,                                                                                 \
     .help = "the matmul weights' mode (kvwire generate --weights): quantized (GGUF types kept quantized, the f32 "    \
             "weights' logits), quantized-int8 (Q4_K/Q4_1/Q6_K/Q8_0/Q5_0 with int8 activations, llama.cpp's way: "     \
             "faster on the CPU, not the same bits), bf16-act (bf16 weights with bf16 activations), f32 or bf16 "      \
             "(GGUF weights dequantized at load)"},                                                                    \
    {                                                                                                                  \
        .name = "compute.max_batch", .type = KW_CFG_INT, .offset = offsetof(config_type, max_batch), .def = "0",       \
        .min = 0, .max = 1 << 16, .help = "tokens per forward chunk; 0: the model's default (256)"                     \
    }

#endif
