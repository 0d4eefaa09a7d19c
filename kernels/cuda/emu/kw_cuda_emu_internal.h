/* kw_cuda_emu_internal.h: what the CUDA emulator's sources share (internal to kernels/cuda/emu): the configuration,
 * the process-wide lock, the work queue entry points and the allocation registry. Not part of what kernels see.
 *
 * Locking: one recursive mutex (emu_lock) guards all emulator state. Every API call takes it, and queued work runs
 * while it is held, so kernels execute one at a time and their blocks one after another (which is what makes static
 * __shared__ storage per-block).
 */
#ifndef KW_CUDA_EMU_INTERNAL_H
#define KW_CUDA_EMU_INTERNAL_H

#include <stdarg.h>
#include <stdint.h>

#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "kernels/cuda/emu/kw_cuda_emu.h"

namespace kwemu {

struct emu_config {
    uint64_t seed;         /* 0: in-order schedule */
    int devices;           /* emulated devices */
    uint64_t memory_bytes; /* capacity of each */
    int use_ucontext;      /* switch fibers with ucontext */
    size_t stack_bytes;    /* per fiber */
};

/* The configuration in force (from the environment at first use, or kw_cuda_emu_configure). */
const emu_config &config(void);

std::recursive_mutex &emu_lock(void);

/* The schedule's random stream (only used when config().seed != 0). */
uint64_t rng_next(void);

/* printf-style std::string. */
std::string strf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

// ---------------------------------------------------------------------------------------------------------------
// Work queues (kw_cuda_emu_runtime.cpp)

/* A kernel as queued: what kw_cuda_emu_sched.cpp runs. */
struct kernel_launch {
    std::string name;
    dim3 grid, block;
    size_t shmem;
    int device;
    std::vector<const void *> ptr_args; /* pointer arguments, re-checked when the kernel runs */
    std::vector<int> ptr_index;         /* their parameter positions */
    std::function<void()> body;
};

/* Runs every block of a kernel (kw_cuda_emu_sched.cpp). On a fault it records it with set_fault and returns. */
void run_grid(const kernel_launch &k);

/* Records a sticky fault on a device: every later call on it returns code until cudaDeviceReset. msg is kept for
 * cudaGetErrorString and kw_cuda_emu_last_fault, and printed to stderr. */
void set_fault(int device, cudaError_t code, const std::string &msg);

/* Records why a call failed as the calling thread's last error detail (kw_cuda_emu_last_error_detail), printed to
 * stderr under KW_CUDA_EMU_VERBOSE=1. The runtime's calls also set the thread's last cudaError_t; cuBLAS's do not. */
void note_failure(const char *api, const std::string &why);

/* The calling thread's current device (cudaSetDevice). */
int current_device(void);

/* Queues op on stream (0 and cudaStreamLegacy: the device's legacy stream), or records it into the stream's capture.
 * name describes it in diagnostics. Returns cudaSuccess or the error to return to the caller. */
cudaError_t enqueue(cudaStream_t stream, const char *name, std::function<void()> run);

/* 1 if [p, p + size) lies inside one live device allocation (device >= 0: of that device); size 0 means p is
 * inside or one past the end. */
int device_range_ok(const void *p, size_t size, int device);
/* 1 if p is inside (or one past the end of) device memory, pinned host memory or a registered host range. */
int device_accessible(const void *p);
/* A description of p for diagnostics ("device allocation 0x.. of 256 bytes, offset 12", "not device memory"). */
std::string describe_pointer(const void *p);

/* Checks the guard bytes around every live device allocation after a kernel; a damaged guard is a sticky
 * cudaErrorIllegalAddress naming the kernel. */
void check_guards(int device, const char *kernel_name);

/* Counters for kw_cuda_emu_get_stats. */
struct emu_counters {
    uint64_t kernels, blocks, threads, switches, faults;
};
emu_counters &counters(void);

} // namespace kwemu

#endif /* KW_CUDA_EMU_INTERNAL_H */
