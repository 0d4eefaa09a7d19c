/* kw_cuda_emu_api.h: the CUDA emulator as C code sees it: the emulated CUDA backend, the emulator's configuration
 * (schedule seed, devices, memory), its last fault and its counters. For tests (label gpu-emu); the product never
 * links the emulator.
 *
 * kw_backend_create_cuda_emu is the CUDA backend of kernels/cuda (the same sources nvcc compiles) compiled as host
 * C++ against kernels/cuda/emu/kw_cuda_emu.h: a kw_backend of kind KW_BACKEND_CUDA whose kernels run on the host
 * through the emulator. It coexists with the real CUDA backend in one binary (different symbols).
 *
 * Environment, read at the first call unless kw_cuda_emu_configure came first:
 *   KW_CUDA_EMU_SEED=N       0 (default): threads in order; N: the randomized schedule seeded with N
 *   KW_CUDA_EMU_DEVICES=N    emulated devices (default 1; 0: none, cudaGetDeviceCount says cudaErrorNoDevice)
 *   KW_CUDA_EMU_MEMORY_MB=N  memory of each device (default 4096)
 *   KW_CUDA_EMU_UCONTEXT=1   switch fibers with ucontext instead of the hand-written x86-64 switch
 *   KW_CUDA_EMU_STACK_KB=N   stack of each emulated thread (default 64, 256 under AddressSanitizer)
 *   KW_CUDA_EMU_VERBOSE=1    print the reason of every failed call to stderr (faults are always printed)
 */
#ifndef KW_CUDA_EMU_API_H
#define KW_CUDA_EMU_API_H

#include <stdint.h>

#include "kernels/kw_backend.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kw_cuda_emu_config {
    uint64_t seed;         /* 0: in-order schedule; else the randomized schedule from this seed */
    int32_t devices;       /* emulated devices, 0..8 */
    uint64_t memory_bytes; /* memory of each device, > 0 */
    int32_t use_ucontext;  /* 1: ucontext fibers */
    uint32_t stack_kib;    /* per emulated thread, 16..65536 */
} kw_cuda_emu_config;

/* The configuration the environment asks for (the defaults above where a variable is unset or invalid). */
void kw_cuda_emu_config_from_env(kw_cuda_emu_config *cfg);

/* Resets the emulator (as cudaDeviceReset on every device: all memory, streams, events, pools, graphs and sticky
 * faults are gone; cuBLAS handles and backends created before are invalid) and applies cfg. Returns 0, or
 * KW_E_INVALID_ARG for a value out of range (nothing changed then). */
int kw_cuda_emu_configure(const kw_cuda_emu_config *cfg);

/* The last kernel fault's diagnosis since the last reset, or NULL; owned by the emulator, valid until the next
 * reset. */
const char *kw_cuda_emu_last_fault(void);

/* The reason of the calling thread's last failed emulator call (a bad copy range, a bad launch configuration), or
 * "" ; owned by the emulator (thread-local), valid until the thread's next call. */
const char *kw_cuda_emu_last_error_detail(void);

typedef struct kw_cuda_emu_stats {
    uint64_t kernels;          /* kernels run */
    uint64_t blocks;           /* blocks run */
    uint64_t threads;          /* emulated threads run */
    uint64_t switches;         /* fiber switches */
    uint64_t faults;           /* sticky faults raised */
    uint64_t live_allocations; /* device and pinned allocations not freed */
    uint64_t live_bytes;       /* their bytes */
} kw_cuda_emu_stats;

void kw_cuda_emu_get_stats(kw_cuda_emu_stats *out);

/* The CUDA backend on emulated device `device` (see the header comment). Errors as kw_backend_create_cuda. */
int kw_backend_create_cuda_emu(int device, kw_backend **out);

#ifdef __cplusplus
}
#endif

#endif /* KW_CUDA_EMU_API_H */
