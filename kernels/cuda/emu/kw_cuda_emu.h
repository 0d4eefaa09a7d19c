/* kw_cuda_emu.h: the CUDA emulation layer's entry header. It is force-included (g++ -x c++ -include this file) when a
 * .cu file is compiled as host C++, and gives that file what nvcc would: the qualifiers, threadIdx / blockIdx /
 * blockDim / gridDim, __shared__, block barriers, the warp collectives, atomics, the math intrinsics, __half and
 * __nv_bfloat16, the runtime API (kw_cuda_emu_runtime.h) and cuBLAS (kw_cuda_emu_cublas.h). Kernels are launched with
 * KW_CUDA_LAUNCH (kernels/cuda/kw_cuda_launch.cuh), which is <<<>>> under nvcc and kwemu::launch here.
 *
 * Execution model (kw_cuda_emu_sched.cpp): a launch is queued on its stream; when the stream runs, the blocks of the
 * grid run one after another on the host thread that waits for them, and every thread of a block is a fiber with its
 * own stack. A fiber runs until it reaches a rendezvous: __syncthreads (the block's barrier) or a warp collective
 * (__shfl*_sync, __ballot_sync, __any/__all_sync, __syncwarp, __reduce_*_sync, __match_*_sync: a rendezvous of the
 * lanes named in the mask, distinct from the block's barrier), or it exits. The scheduler then resumes another
 * runnable fiber: in thread order (FIFO) by default (in the even blocks of a grid a warp runs on after each of its
 * collectives, to the next block barrier), or in a seeded random order (KW_CUDA_EMU_SEED, kw_cuda_emu_api.h)
 * that also shuffles the block order and yields at atomics and fences, so that code which is only correct for one
 * order shows it. Memory is sequentially consistent; interleavings between rendezvous points (a plain
 * read-modify-write race between two threads with no barrier in between) are not explored.
 *
 * Checked, and reported as a sticky kernel fault naming the kernel, block, thread and source line:
 *  - a deadlock (no fiber can run: e.g. a __syncthreads some threads never reach);
 *  - threads of a block at different __syncthreads call sites (divergent barrier), or a __syncthreads while another
 *    thread of the block has exited (undefined in CUDA; reported rather than guessed);
 *  - a warp collective whose mask omits the caller, names lanes that do not exist or have exited, or whose lanes call
 *    different collectives; a shuffle width that is not a power of two up to 32;
 *  - __trap(), builtins used outside a kernel.
 * A shuffle that reads an inactive lane returns all-ones bytes (NaN for floats), as the value is undefined on a GPU.
 *
 * __shared__ variables are static storage: blocks run one at a time (a process-wide lock serializes kernel execution)
 * so each block has the storage to itself, starting with whatever the previous block left (a GPU gives no initial
 * value either). Dynamic shared memory (KW_DYNAMIC_SHARED) is a per-block buffer filled with 0xff bytes.
 * __launch_bounds__ is accepted and not enforced (the launch still checks the 1024-thread limit).
 * Not emulated: inline PTX, tensor-core MMA, cooperative groups, grid-wide sync, textures.
 */
#ifndef KW_CUDA_EMU_H
#define KW_CUDA_EMU_H

#ifndef __cplusplus
#error "kw_cuda_emu.h is C++: compile .cu files with g++ -x c++ -include kernels/cuda/emu/kw_cuda_emu.h"
#endif
#if defined(__CUDACC__)
#error "kw_cuda_emu.h is for host compilers; nvcc compiles the real CUDA"
#endif

#ifndef KW_CUDA_EMU
#define KW_CUDA_EMU 1
#endif

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <functional>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>

#include "common/kw_half.h"
#include "kernels/cuda/emu/kw_cuda_emu_cublas.h"
#include "kernels/cuda/emu/kw_cuda_emu_runtime.h"

// ---------------------------------------------------------------------------------------------------------------
// Qualifiers

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__    __attribute__((noinline))
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ static
#define __constant__
#define __align__(n) __attribute__((aligned(n)))

/* a variable, as in CUDA (cudaDeviceProp has a field of that name) */
constexpr int warpSize = 32;

namespace kwemu {

// ---------------------------------------------------------------------------------------------------------------
// The running thread (set by the scheduler before a fiber resumes)

struct emu_block;

struct thread_ctx {
    uint3 thread_idx;
    unsigned int linear; /* x + y * bx + z * bx * by */
    unsigned int lane;   /* linear % 32 */
    unsigned int warp;   /* linear / 32 */
    uint3 block_idx;
    dim3 block_dim;
    dim3 grid_dim;
    emu_block *block;
};

/* The thread whose fiber runs on this host thread, NULL outside a kernel. */
extern __thread thread_ctx *tl_thread;

[[noreturn]] void outside_kernel(const char *what);

inline const thread_ctx &cur_thread(const char *what) {
    if (tl_thread == nullptr) outside_kernel(what);
    return *tl_thread;
}

/* The rendezvous points (kw_cuda_emu_sched.cpp). */
enum barrier_kind { BAR_SYNC = 0, BAR_COUNT = 1, BAR_AND = 2, BAR_OR = 3 };
int block_barrier(barrier_kind kind, int pred, const char *file, int line);

enum warp_op {
    WARP_SHFL_IDX = 0,
    WARP_SHFL_UP,
    WARP_SHFL_DOWN,
    WARP_SHFL_XOR,
    WARP_BALLOT,
    WARP_ANY,
    WARP_ALL,
    WARP_UNI,
    WARP_SYNC,
    WARP_REDUCE_ADD,
    WARP_REDUCE_MIN,
    WARP_REDUCE_MAX,
    WARP_REDUCE_AND,
    WARP_REDUCE_OR,
    WARP_REDUCE_XOR,
    WARP_MATCH_ANY,
    WARP_MATCH_ALL,
    WARP_OP_COUNT
};

/* One lane's part in a warp collective: payload holds size bytes of its value (sign-extended for the signed
 * reductions, flagged by is_signed); arg is the shuffle's lane, delta or xor mask. Returns the lane's result bytes
 * (for WARP_MATCH_ALL, bit 32 of the result is the predicate). */
uint64_t warp_collective(warp_op op, unsigned int mask, uint64_t payload, unsigned int size, int is_signed, int arg,
                         int width, const char *file, int line);

/* A point where a randomized schedule may switch to another runnable thread (atomics, fences, __nanosleep). */
void yield_point(void);

[[noreturn]] void device_trap(const char *file, int line);

/* The block's dynamic shared memory (the launch's shmem bytes, filled with 0xff at block start). */
void *dynamic_shared(void);

/* clock64(): a monotonic nanosecond count. */
long long device_clock(void);

template <typename T> inline uint64_t to_payload(const T &v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "warp collectives move values of 8 bytes");
    uint64_t u = 0;
    memcpy(&u, &v, sizeof(T));
    return u;
}

template <typename T> inline T from_payload(uint64_t u) {
    T v;
    memcpy(&v, &u, sizeof(T));
    return v;
}

} // namespace kwemu

#define threadIdx (::kwemu::cur_thread("threadIdx").thread_idx)
#define blockIdx  (::kwemu::cur_thread("blockIdx").block_idx)
#define blockDim  (::kwemu::cur_thread("blockDim").block_dim)
#define gridDim   (::kwemu::cur_thread("gridDim").grid_dim)

// ---------------------------------------------------------------------------------------------------------------
// Block barrier

inline void __syncthreads(const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    ::kwemu::block_barrier(::kwemu::BAR_SYNC, 1, file, line);
}
inline int __syncthreads_count(int pred, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return ::kwemu::block_barrier(::kwemu::BAR_COUNT, pred, file, line);
}
inline int __syncthreads_and(int pred, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return ::kwemu::block_barrier(::kwemu::BAR_AND, pred, file, line);
}
inline int __syncthreads_or(int pred, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return ::kwemu::block_barrier(::kwemu::BAR_OR, pred, file, line);
}

// ---------------------------------------------------------------------------------------------------------------
// Warp collectives

template <typename T>
inline T __shfl_sync(unsigned int mask, T var, int src_lane, int width = 32, const char *file = __builtin_FILE(),
                     int line = __builtin_LINE()) {
    return ::kwemu::from_payload<T>(::kwemu::warp_collective(::kwemu::WARP_SHFL_IDX, mask, ::kwemu::to_payload(var),
                                                             sizeof(T), 0, src_lane, width, file, line));
}
template <typename T>
inline T __shfl_up_sync(unsigned int mask, T var, unsigned int delta, int width = 32,
                        const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return ::kwemu::from_payload<T>(::kwemu::warp_collective(::kwemu::WARP_SHFL_UP, mask, ::kwemu::to_payload(var),
                                                             sizeof(T), 0, (int)delta, width, file, line));
}
template <typename T>
inline T __shfl_down_sync(unsigned int mask, T var, unsigned int delta, int width = 32,
                          const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return ::kwemu::from_payload<T>(::kwemu::warp_collective(::kwemu::WARP_SHFL_DOWN, mask, ::kwemu::to_payload(var),
                                                             sizeof(T), 0, (int)delta, width, file, line));
}
template <typename T>
inline T __shfl_xor_sync(unsigned int mask, T var, int lane_mask, int width = 32, const char *file = __builtin_FILE(),
                         int line = __builtin_LINE()) {
    return ::kwemu::from_payload<T>(::kwemu::warp_collective(::kwemu::WARP_SHFL_XOR, mask, ::kwemu::to_payload(var),
                                                             sizeof(T), 0, lane_mask, width, file, line));
}
inline unsigned int __ballot_sync(unsigned int mask, int pred, const char *file = __builtin_FILE(),
                                  int line = __builtin_LINE()) {
    return (unsigned int)::kwemu::warp_collective(::kwemu::WARP_BALLOT, mask, pred != 0, 4, 0, 0, 32, file, line);
}
inline int __any_sync(unsigned int mask, int pred, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return (int)::kwemu::warp_collective(::kwemu::WARP_ANY, mask, pred != 0, 4, 0, 0, 32, file, line);
}
inline int __all_sync(unsigned int mask, int pred, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return (int)::kwemu::warp_collective(::kwemu::WARP_ALL, mask, pred != 0, 4, 0, 0, 32, file, line);
}
inline int __uni_sync(unsigned int mask, int pred, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return (int)::kwemu::warp_collective(::kwemu::WARP_UNI, mask, pred != 0, 4, 0, 0, 32, file, line);
}
inline void __syncwarp(unsigned int mask = 0xffffffffu, const char *file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
    (void)::kwemu::warp_collective(::kwemu::WARP_SYNC, mask, 0, 0, 0, 0, 32, file, line);
}
/* The lanes of the caller's warp that have not exited (a GPU's notion of "converged" has no equivalent here). */
unsigned int __activemask(void);

#define KWEMU_WARP_REDUCE(fn, op, type, is_signed)                                                                     \
    inline type fn(unsigned int mask, type value, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {  \
        return (type)::kwemu::warp_collective(op, mask, (uint64_t)(int64_t)value, 4, is_signed, 0, 32, file, line);    \
    }
KWEMU_WARP_REDUCE(__reduce_add_sync, ::kwemu::WARP_REDUCE_ADD, unsigned int, 0)
KWEMU_WARP_REDUCE(__reduce_add_sync, ::kwemu::WARP_REDUCE_ADD, int, 1)
KWEMU_WARP_REDUCE(__reduce_min_sync, ::kwemu::WARP_REDUCE_MIN, unsigned int, 0)
KWEMU_WARP_REDUCE(__reduce_min_sync, ::kwemu::WARP_REDUCE_MIN, int, 1)
KWEMU_WARP_REDUCE(__reduce_max_sync, ::kwemu::WARP_REDUCE_MAX, unsigned int, 0)
KWEMU_WARP_REDUCE(__reduce_max_sync, ::kwemu::WARP_REDUCE_MAX, int, 1)
KWEMU_WARP_REDUCE(__reduce_and_sync, ::kwemu::WARP_REDUCE_AND, unsigned int, 0)
KWEMU_WARP_REDUCE(__reduce_or_sync, ::kwemu::WARP_REDUCE_OR, unsigned int, 0)
KWEMU_WARP_REDUCE(__reduce_xor_sync, ::kwemu::WARP_REDUCE_XOR, unsigned int, 0)
#undef KWEMU_WARP_REDUCE

template <typename T>
inline unsigned int __match_any_sync(unsigned int mask, T value, const char *file = __builtin_FILE(),
                                     int line = __builtin_LINE()) {
    return (unsigned int)::kwemu::warp_collective(::kwemu::WARP_MATCH_ANY, mask, ::kwemu::to_payload(value), sizeof(T),
                                                  0, 0, 32, file, line);
}
template <typename T>
inline unsigned int __match_all_sync(unsigned int mask, T value, int *pred, const char *file = __builtin_FILE(),
                                     int line = __builtin_LINE()) {
    const uint64_t r = ::kwemu::warp_collective(::kwemu::WARP_MATCH_ALL, mask, ::kwemu::to_payload(value), sizeof(T), 0,
                                                0, 32, file, line);
    *pred = (int)(r >> 32);
    return (unsigned int)r;
}

// ---------------------------------------------------------------------------------------------------------------
// Atomics and fences: sequentially consistent, each one a point where a randomized schedule may switch threads.

namespace kwemu {
template <typename T, typename F> inline T atomic_update(T *p, F f) {
    yield_point();
    const T old = *p;
    *p = f(old);
    return old;
}
} // namespace kwemu

#define KWEMU_ATOMIC(name, type, expr)                                                                                 \
    inline type name(type *address, type val) {                                                                        \
        return ::kwemu::atomic_update(address, [val](type old) -> type { return expr; });                              \
    }
KWEMU_ATOMIC(atomicAdd, int, old + val)
KWEMU_ATOMIC(atomicAdd, unsigned int, old + val)
KWEMU_ATOMIC(atomicAdd, unsigned long long, old + val)
KWEMU_ATOMIC(atomicAdd, float, old + val)
KWEMU_ATOMIC(atomicAdd, double, old + val)
KWEMU_ATOMIC(atomicSub, int, old - val)
KWEMU_ATOMIC(atomicSub, unsigned int, old - val)
KWEMU_ATOMIC(atomicExch, int, ((void)old, val))
KWEMU_ATOMIC(atomicExch, unsigned int, ((void)old, val))
KWEMU_ATOMIC(atomicExch, unsigned long long, ((void)old, val))
KWEMU_ATOMIC(atomicExch, float, ((void)old, val))
KWEMU_ATOMIC(atomicMin, int, old < val ? old : val)
KWEMU_ATOMIC(atomicMin, unsigned int, old < val ? old : val)
KWEMU_ATOMIC(atomicMin, long long, old < val ? old : val)
KWEMU_ATOMIC(atomicMin, unsigned long long, old < val ? old : val)
KWEMU_ATOMIC(atomicMax, int, old > val ? old : val)
KWEMU_ATOMIC(atomicMax, unsigned int, old > val ? old : val)
KWEMU_ATOMIC(atomicMax, long long, old > val ? old : val)
KWEMU_ATOMIC(atomicMax, unsigned long long, old > val ? old : val)
KWEMU_ATOMIC(atomicAnd, int, old &val)
KWEMU_ATOMIC(atomicAnd, unsigned int, old &val)
KWEMU_ATOMIC(atomicAnd, unsigned long long, old &val)
KWEMU_ATOMIC(atomicOr, int, old | val)
KWEMU_ATOMIC(atomicOr, unsigned int, old | val)
KWEMU_ATOMIC(atomicOr, unsigned long long, old | val)
KWEMU_ATOMIC(atomicXor, int, old ^ val)
KWEMU_ATOMIC(atomicXor, unsigned int, old ^ val)
KWEMU_ATOMIC(atomicXor, unsigned long long, old ^ val)
KWEMU_ATOMIC(atomicInc, unsigned int, old >= val ? 0u : old + 1u)
KWEMU_ATOMIC(atomicDec, unsigned int, (old == 0u || old > val) ? val : old - 1u)
#undef KWEMU_ATOMIC

#define KWEMU_ATOMIC_CAS(type)                                                                                         \
    inline type atomicCAS(type *address, type compare, type val) {                                                     \
        return ::kwemu::atomic_update(address,                                                                         \
                                      [compare, val](type old) -> type { return old == compare ? val : old; });        \
    }
KWEMU_ATOMIC_CAS(int)
KWEMU_ATOMIC_CAS(unsigned int)
KWEMU_ATOMIC_CAS(unsigned long long)
KWEMU_ATOMIC_CAS(unsigned short)
#undef KWEMU_ATOMIC_CAS

inline void __threadfence(void) {
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    ::kwemu::yield_point();
}
inline void __threadfence_block(void) {
    __threadfence();
}
inline void __threadfence_system(void) {
    __threadfence();
}
inline void __nanosleep(unsigned int ns) {
    (void)ns;
    ::kwemu::yield_point();
}
inline long long clock64(void) {
    return ::kwemu::device_clock();
}
inline void __trap(const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    ::kwemu::device_trap(file, line);
}

// ---------------------------------------------------------------------------------------------------------------
// Math intrinsics. The correctly rounded ones (_rn) are exact here as on the GPU (the emulator is built with
// -ffp-contract=off so nothing is fused behind their back). The fast approximations reproduce the GPU's structure
// (e.g. __expf is exp2 of the fp32 product x * log2(e), whose rounding is the dominant extra error on the GPU) with
// libm's accuracy for the final step, which is tighter than the GPU's.

inline float __fadd_rn(float a, float b) {
    return a + b;
}
inline float __fsub_rn(float a, float b) {
    return a - b;
}
inline float __fmul_rn(float a, float b) {
    return a * b;
}
inline float __fdiv_rn(float a, float b) {
    return a / b;
}
inline float __fmaf_rn(float a, float b, float c) {
    return fmaf(a, b, c);
}
inline float __frcp_rn(float a) {
    return 1.0f / a;
}
inline float __fsqrt_rn(float a) {
    return sqrtf(a);
}
inline double __dadd_rn(double a, double b) {
    return a + b;
}
inline double __dmul_rn(double a, double b) {
    return a * b;
}
inline float rsqrtf(float a) {
    return 1.0f / sqrtf(a);
}
inline float __expf(float x) {
    return exp2f(x * 1.44269504088896340736f);
}
inline float __logf(float x) {
    return log2f(x) * 0.69314718055994530942f;
}
inline float __sinf(float x) {
    return sinf(x);
}
inline float __cosf(float x) {
    return cosf(x);
}
inline void __sincosf(float x, float *s, float *c) {
    sincosf(x, s, c);
}
inline float __fdividef(float a, float b) {
    return a * (1.0f / b);
}
inline float __saturatef(float x) {
    return x != x ? 0.0f : x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x;
}
inline int __float2int_rn(float x) {
    return (int)nearbyintf(x);
}
inline int __float2int_rz(float x) {
    return (int)x;
}
inline unsigned int __float2uint_rn(float x) {
    return (unsigned int)nearbyintf(x);
}
inline float __int2float_rn(int x) {
    return (float)x;
}
namespace kwemu {
/* The bits of one type reinterpreted as another of the same size. */
template <typename To, typename From> inline To bit_cast(From v) {
    static_assert(sizeof(To) == sizeof(From), "bit_cast between types of different sizes");
    To r;
    memcpy(&r, &v, sizeof r);
    return r;
}
} // namespace kwemu
inline int __float_as_int(float x) {
    return ::kwemu::bit_cast<int>(x);
}
inline unsigned int __float_as_uint(float x) {
    return ::kwemu::bit_cast<unsigned int>(x);
}
inline float __int_as_float(int i) {
    return ::kwemu::bit_cast<float>(i);
}
inline float __uint_as_float(unsigned int i) {
    return ::kwemu::bit_cast<float>(i);
}
inline long long __double_as_longlong(double x) {
    return ::kwemu::bit_cast<long long>(x);
}
inline double __longlong_as_double(long long i) {
    return ::kwemu::bit_cast<double>(i);
}
inline int __popc(unsigned int x) {
    return __builtin_popcount(x);
}
inline int __popcll(unsigned long long x) {
    return __builtin_popcountll(x);
}
inline int __clz(int x) {
    return x == 0 ? 32 : __builtin_clz((unsigned int)x);
}
inline int __clzll(long long x) {
    return x == 0 ? 64 : __builtin_clzll((unsigned long long)x);
}
inline int __ffs(int x) {
    return __builtin_ffs(x);
}
inline int __ffsll(long long x) {
    return __builtin_ffsll(x);
}
inline unsigned int __brev(unsigned int x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    x = ((x >> 8) & 0x00ff00ffu) | ((x & 0x00ff00ffu) << 8);
    return (x >> 16) | (x << 16);
}
inline unsigned int __umulhi(unsigned int a, unsigned int b) {
    return (unsigned int)(((unsigned long long)a * b) >> 32);
}
inline int __mulhi(int a, int b) {
    return (int)(((long long)a * b) >> 32);
}
template <typename T> inline T __ldg(const T *p) {
    return *p;
}

#define KWEMU_MINMAX(type)                                                                                             \
    inline type min(type a, type b) {                                                                                  \
        return a < b ? a : b;                                                                                          \
    }                                                                                                                  \
    inline type max(type a, type b) {                                                                                  \
        return a > b ? a : b;                                                                                          \
    }
KWEMU_MINMAX(int)
KWEMU_MINMAX(unsigned int)
KWEMU_MINMAX(long long)
KWEMU_MINMAX(unsigned long long)
KWEMU_MINMAX(long)
KWEMU_MINMAX(unsigned long)
#undef KWEMU_MINMAX
inline float min(float a, float b) {
    return fminf(a, b);
}
inline float max(float a, float b) {
    return fmaxf(a, b);
}
inline double min(double a, double b) {
    return fmin(a, b);
}
inline double max(double a, double b) {
    return fmax(a, b);
}

// ---------------------------------------------------------------------------------------------------------------
// __half and __nv_bfloat16: 16-bit storage, conversions with round-to-nearest-even (common/kw_half.h, the rounding
// the whole project uses), arithmetic through fp32 rounded once to the 16-bit type. fp32 has more than 2p + 2 bits
// for both formats (p = 11 and 8), so + - * / computed in fp32 and rounded again equal the correctly rounded 16-bit
// results, as the GPU's native instructions give.

struct __half {
    unsigned short __x;
    __half() = default;
    __half(float f) : __x(kw_f32_to_f16(f)) {}
    __half(double f) : __x(kw_f32_to_f16((float)f)) {}
    __half(int i) : __x(kw_f32_to_f16((float)i)) {}
    operator float() const { return kw_f16_to_f32(__x); }
};
struct __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    __nv_bfloat16(float f) : __x(kw_f32_to_bf16(f)) {}
    __nv_bfloat16(double f) : __x(kw_f32_to_bf16((float)f)) {}
    __nv_bfloat16(int i) : __x(kw_f32_to_bf16((float)i)) {}
    operator float() const { return kw_bf16_to_f32(__x); }
};
struct alignas(4) __half2 {
    __half x, y;
};
struct alignas(4) __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
typedef __half half;
typedef __nv_bfloat16 nv_bfloat16;

inline __half __float2half(float f) {
    return __half(f);
}
inline __half __float2half_rn(float f) {
    return __half(f);
}
inline float __half2float(__half h) {
    return (float)h;
}
inline __nv_bfloat16 __float2bfloat16(float f) {
    return __nv_bfloat16(f);
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    return __nv_bfloat16(f);
}
inline float __bfloat162float(__nv_bfloat16 h) {
    return (float)h;
}
inline __half2 __floats2half2_rn(float a, float b) {
    return __half2{__half(a), __half(b)};
}
inline float2 __half22float2(__half2 h) {
    return float2{(float)h.x, (float)h.y};
}
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
    return __nv_bfloat162{__nv_bfloat16(a), __nv_bfloat16(b)};
}
inline float2 __bfloat1622float2(__nv_bfloat162 h) {
    return float2{(float)h.x, (float)h.y};
}
inline unsigned short __half_as_ushort(__half h) {
    return h.__x;
}
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) {
    return h.__x;
}
inline __half __ushort_as_half(unsigned short u) {
    __half h;
    h.__x = u;
    return h;
}
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) {
    __nv_bfloat16 h;
    h.__x = u;
    return h;
}

#define KWEMU_HALF_OPS(T)                                                                                              \
    inline T __hadd(T a, T b) {                                                                                        \
        return T((float)a + (float)b);                                                                                 \
    }                                                                                                                  \
    inline T __hsub(T a, T b) {                                                                                        \
        return T((float)a - (float)b);                                                                                 \
    }                                                                                                                  \
    inline T __hmul(T a, T b) {                                                                                        \
        return T((float)a * (float)b);                                                                                 \
    }                                                                                                                  \
    inline T __hdiv(T a, T b) {                                                                                        \
        return T((float)a / (float)b);                                                                                 \
    }                                                                                                                  \
    inline T __hneg(T a) {                                                                                             \
        return T(-(float)a);                                                                                           \
    }                                                                                                                  \
    inline T __habs(T a) {                                                                                             \
        return T(fabsf((float)a));                                                                                     \
    }                                                                                                                  \
    /* the exact product of two 16-bit values fits a double, and so does its sum with a third one to within one        \
     * rounding, which double's 53 bits make innocuous before the final rounding */                                    \
    inline T __hfma(T a, T b, T c) {                                                                                   \
        return T((float)((double)(float)a * (double)(float)b + (double)(float)c));                                     \
    }                                                                                                                  \
    inline bool __heq(T a, T b) {                                                                                      \
        return (float)a == (float)b;                                                                                   \
    }                                                                                                                  \
    inline bool __hlt(T a, T b) {                                                                                      \
        return (float)a < (float)b;                                                                                    \
    }                                                                                                                  \
    inline bool __hgt(T a, T b) {                                                                                      \
        return (float)a > (float)b;                                                                                    \
    }                                                                                                                  \
    inline bool __hisnan(T a) {                                                                                        \
        return (float)a != (float)a;                                                                                   \
    }                                                                                                                  \
    inline T operator+(T a, T b) {                                                                                     \
        return __hadd(a, b);                                                                                           \
    }                                                                                                                  \
    inline T operator-(T a, T b) {                                                                                     \
        return __hsub(a, b);                                                                                           \
    }                                                                                                                  \
    inline T operator*(T a, T b) {                                                                                     \
        return __hmul(a, b);                                                                                           \
    }                                                                                                                  \
    inline T operator/(T a, T b) {                                                                                     \
        return __hdiv(a, b);                                                                                           \
    }
KWEMU_HALF_OPS(__half)
KWEMU_HALF_OPS(__nv_bfloat16)
#undef KWEMU_HALF_OPS

// ---------------------------------------------------------------------------------------------------------------
// Launch

namespace kwemu {

/* Queues a kernel on a stream (kw_cuda_emu_sched.cpp): checks the configuration (as the runtime does, setting the
 * calling thread's last error), that every pointer argument (ptr_args[i] for parameter ptr_index[i]) is
 * device-accessible or NULL, and queues body, which each thread of the grid runs once. */
void launch_kernel(const char *name, dim3 grid, dim3 block, size_t shmem, cudaStream_t stream,
                   const void *const *ptr_args, const int *ptr_index, int n_ptr, std::function<void()> body);

template <typename T> inline void note_pointer(const T &v, int index, const void **ptrs, int *idx, int *n) {
    if constexpr (std::is_pointer<T>::value) {
        ptrs[*n] = (const void *)v;
        idx[*n] = index;
        ++*n;
    } else {
        (void)v, (void)index, (void)ptrs, (void)idx, (void)n;
    }
}

template <typename Tuple, size_t... I>
inline int note_pointers(const Tuple &t, const void **ptrs, int *idx, std::index_sequence<I...>) {
    int n = 0;
    (note_pointer(std::get<I>(t), (int)I, ptrs, idx, &n), ...);
    (void)ptrs, (void)idx;
    return n;
}

/* What KW_CUDA_LAUNCH expands to. The arguments are converted to the kernel's parameter types once, as a launch
 * does; every thread then gets its own copy (std::apply passes them by value). */
template <typename... P, typename... A>
inline void launch(const char *name, void (*kernel)(P...), dim3 grid, dim3 block, size_t shmem, cudaStream_t stream,
                   A &&...args) {
    static_assert(sizeof...(P) == sizeof...(A), "KW_CUDA_LAUNCH: the kernel takes another number of arguments");
    using params_t = std::tuple<typename std::decay<P>::type...>;
    auto params = std::make_shared<params_t>(std::forward<A>(args)...);
    const void *ptrs[sizeof...(P) + 1];
    int idx[sizeof...(P) + 1];
    const int n = note_pointers(*params, ptrs, idx, std::index_sequence_for<P...>{});
    launch_kernel(name, grid, block, shmem, stream, ptrs, idx, n, [kernel, params]() { std::apply(kernel, *params); });
}

} // namespace kwemu

#endif /* KW_CUDA_EMU_H */
