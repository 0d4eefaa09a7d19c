/* kw_backend_cfg.h: the compute.* config keys that choose a daemon's backend (compute.backend, compute.device,
 * compute.memory_limit_mb) and its compute threads (compute.workers), as entries of a kw_cfg table, so sharerd and
 * receiverd declare them identically. Not a config reader: common/kw_cfg.h is. */
#ifndef KW_BACKEND_CFG_H
#define KW_BACKEND_CFG_H

#include <stddef.h>
#include <stdint.h>

#include "common/kw_cfg.h"
#include "kernels/kw_backend.h"

/* Four kw_cfg_key initializers for the fields backend (int), device, memory_limit_mb and workers (int64_t) of
 * config_type. */
#define KW_BACKEND_CFG_KEYS(config_type)                                                                               \
    {.name = "compute.backend",                                                                                        \
     .type = KW_CFG_ENUM,                                                                                              \
     .offset = offsetof(config_type, backend),                                                                         \
     .def = "cpu",                                                                                                     \
     .choices = kw_backend_kind_names,                                                                                 \
     .help = "where the models run: cpu, or cuda (compute.device; a build with the CUDA backend and a GPU)"},          \
        {.name = "compute.device",                                                                                     \
         .type = KW_CFG_INT,                                                                                           \
         .offset = offsetof(config_type, device),                                                                      \
         .def = "0",                                                                                                   \
         .min = 0,                                                                                                     \
         .max = 1023,                                                                                                  \
         .help = "the CUDA device index (compute.backend cuda)"},                                                      \
        {.name = "compute.memory_limit_mb",                                                                            \
         .type = KW_CFG_INT,                                                                                           \
         .offset = offsetof(config_type, memory_limit_mb),                                                             \
         .def = "0",                                                                                                   \
         .min = 0,                                                                                                     \
         .max = (int64_t)1 << 30,                                                                                      \
         .help = "MiB the backend may allocate (weights, caches, scratch); beyond it a load or request fails with "    \
                 "KW_E_NOMEM naming the budget; 0: no limit"},                                                         \
    {                                                                                                                  \
        .name = "compute.workers", .type = KW_CFG_INT, .offset = offsetof(config_type, workers), .def = "1", .min = 1, \
        .max = 64,                                                                                                     \
        .help = "compute threads serving requests side by side, each beyond the first on a backend stream context "    \
                "(CUDA: its own stream) with model forks of its own scratch over the shared weights and memory "       \
                "budget; 1: one request at a time"                                                                     \
    }

#endif
