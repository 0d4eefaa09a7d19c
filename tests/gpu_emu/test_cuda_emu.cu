/* test_cuda_emu.cu: the CUDA emulator's own tests (label gpu-emu), compiled as host C++ with kernels/cuda/emu/
 * kw_cuda_emu.h force-included. The kernels and the portable checks are plain CUDA (KW_CUDA_LAUNCH, runtime API,
 * cuBLAS), so the same file states what the emulator claims a GPU does; checks of emulator-only behaviour (deferred
 * queues, poison values, fault diagnostics, the randomized schedule) are under #ifdef KW_CUDA_EMU.
 *
 * Covered: thread/block indexing in three dimensions; the block barrier and per-block shared memory (static and
 * dynamic); every warp collective against a reference written from the CUDA programming guide's wording (not from the
 * emulator's PTX-based code), including widths, partial masks and 8-byte values; atomics; kernel parameters being
 * per-thread copies; a race (a missing barrier) that the in-order schedule hides and the randomized schedule must
 * expose, and a race between blocks; the backend's block reductions (kw_cuda_reduce.cuh) twice in one kernel; each kind
 * of kernel fault (divergent barrier, exit before a barrier, deadlock, bad masks, mismatched collectives, a bad shuffle
 * width, a write past an allocation, a host pointer argument, __trap) reported as a sticky error with a diagnosis;
 * launch configuration errors; the copy, free and pool checks; streams, events, the legacy stream, host functions and
 * graphs; cuBLAS GemmEx against a double-precision reference
 * with its documented rounding modes; the ucontext fiber switch; concurrent host threads.
 *
 * tests/gpu builds this file with nvcc too (test_gpu_emu_semantics, label gpu): the portable checks then run on a real
 * device, which is how the emulator's semantics (shuffle widths and masks, votes, stream ordering, cuBLAS argument
 * rules) are checked against hardware. Without a device that build exits 77.
 */
extern "C" {
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
}
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

#include "kernels/cuda/kw_cuda_launch.cuh"
#include "kernels/cuda/kw_cuda_reduce.cuh"
#ifdef KW_CUDA_EMU
#include "kernels/cuda/emu/kw_cuda_emu_api.h"
#else
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_ASAN 1
#endif
#endif

#define FULL 0xffffffffu

#define CK(expr)                                                                                                       \
    do {                                                                                                               \
        const cudaError_t ck_err_ = (expr);                                                                            \
        if (ck_err_ != cudaSuccess) fail_msg("%s: %s", #expr, cudaGetErrorString(ck_err_));                            \
    } while (0)

/* A device array with a host mirror. */
template <typename T> struct dbuf {
    T *d = nullptr;
    std::vector<T> h;
    explicit dbuf(size_t n, T fill = T()) : h(n, fill) {
        CK(cudaMalloc((void **)&d, n * sizeof(T)));
        CK(cudaMemcpy(d, h.data(), n * sizeof(T), cudaMemcpyHostToDevice));
    }
    ~dbuf() { (void)cudaFree(d); }
    dbuf(const dbuf &) = delete;
    dbuf &operator=(const dbuf &) = delete;
    void up() { CK(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice)); }
    std::vector<T> &down() {
        CK(cudaMemcpy(h.data(), d, h.size() * sizeof(T), cudaMemcpyDeviceToHost));
        return h;
    }
};

/* A clean device between tests (faults are sticky), with the schedule given (emulator) . */
static void reset(uint64_t seed = 0, int ucontext = 0) {
#ifdef KW_CUDA_EMU
    kw_cuda_emu_config c;
    kw_cuda_emu_config_from_env(&c);
    c.seed = seed;
    c.use_ucontext = ucontext;
    assert_int_equal(kw_cuda_emu_configure(&c), 0);
#else
    (void)seed, (void)ucontext;
    CK(cudaDeviceReset());
#endif
}

// ---------------------------------------------------------------------------------------------------------------
// Indexing, barriers, shared memory

__global__ void k_ids(uint4 *out) {
    const unsigned int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const unsigned int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    out[b * blockDim.x * blockDim.y * blockDim.z + t] =
        make_uint4(threadIdx.x | threadIdx.y << 10 | threadIdx.z << 20, blockIdx.x, blockIdx.y, blockIdx.z);
}

static void test_indexing(void **state) {
    (void)state;
    reset();
    const dim3 grid(3, 2, 2), block(5, 4, 3);
    const size_t n = 12 * 60;
    dbuf<uint4> out(n);
    KW_CUDA_LAUNCH(k_ids, grid, block, 0, 0, out.d);
    CK(cudaGetLastError());
    out.down();
    for (unsigned int bz = 0; bz < 2; ++bz)
        for (unsigned int by = 0; by < 2; ++by)
            for (unsigned int bx = 0; bx < 3; ++bx)
                for (unsigned int tz = 0; tz < 3; ++tz)
                    for (unsigned int ty = 0; ty < 4; ++ty)
                        for (unsigned int tx = 0; tx < 5; ++tx) {
                            const size_t i = (bx + 3 * (by + 2 * bz)) * 60 + tx + 5 * (ty + 4 * tz);
                            const uint4 v = out.h[i];
                            assert_int_equal(v.x, tx | ty << 10 | tz << 20);
                            assert_int_equal(v.y, bx);
                            assert_int_equal(v.z, by);
                            assert_int_equal(v.w, bz);
                        }
}

/* Sum of x over each block: warp shuffles, then one value per warp in shared memory and a barrier. The last warp may
 * be partial (blockDim.x = 100): its lanes use a mask of the lanes that exist. */
__global__ void k_block_sum(const int *x, int *out) {
    __shared__ int part[32];
    const unsigned int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const unsigned int in_warp = blockDim.x - warp * 32 < 32 ? blockDim.x - warp * 32 : 32;
    const unsigned int mask = in_warp == 32 ? FULL : (1u << in_warp) - 1u;
    int v = x[blockIdx.x * blockDim.x + threadIdx.x];
    for (int o = 16; o > 0; o >>= 1) {
        const int other = __shfl_down_sync(mask, v, o);
        if (lane + o < in_warp) v += other;
    }
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        int s = 0;
        for (unsigned int w = 0; w < (blockDim.x + 31) / 32; ++w)
            s += part[w];
        out[blockIdx.x] = s;
    }
}

static void block_sums(unsigned int threads, unsigned int blocks) {
    dbuf<int> x(threads * blocks), out(blocks);
    for (size_t i = 0; i < x.h.size(); ++i)
        x.h[i] = (int)((i * 2654435761u) % 1000) - 500;
    x.up();
    KW_CUDA_LAUNCH(k_block_sum, blocks, threads, 0, 0, x.d, out.d);
    CK(cudaGetLastError());
    out.down();
    for (unsigned int b = 0; b < blocks; ++b) {
        int s = 0;
        for (unsigned int t = 0; t < threads; ++t)
            s += x.h[b * threads + t];
        if (out.h[b] != s) fail_msg("block %u of %u threads: sum %d, expected %d", b, threads, out.h[b], s);
    }
}

static void test_barrier_block_sum(void **state) {
    (void)state;
    reset();
    block_sums(256, 7);
    block_sums(100, 5);
    block_sums(1024, 2);
    block_sums(32, 3);
}

/* Every block writes its own numbers into shared memory and reads them back reversed after the barrier. */
__global__ void k_shared_reverse(int *out) {
    __shared__ int s[256];
    s[threadIdx.x] = (int)(blockIdx.x * 1000 + threadIdx.x);
    __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = s[blockDim.x - 1 - threadIdx.x];
}

/* Dynamic shared memory: before[] records what a thread finds before anyone writes (the emulator fills it with 0xff
 * bytes; a GPU gives no value), then the same reversal. */
__global__ void k_dynamic_reverse(int *out, int *before) {
    KW_DYNAMIC_SHARED(int, s);
    before[blockIdx.x * blockDim.x + threadIdx.x] = s[threadIdx.x];
    __syncthreads();
    s[threadIdx.x] = (int)(blockIdx.x * 1000 + threadIdx.x);
    __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = s[blockDim.x - 1 - threadIdx.x];
}

static void test_shared_memory(void **state) {
    (void)state;
    reset();
    dbuf<int> out(4 * 256), before(4 * 96);
    KW_CUDA_LAUNCH(k_shared_reverse, 4, 256, 0, 0, out.d);
    CK(cudaGetLastError());
    out.down();
    for (int b = 0; b < 4; ++b)
        for (int t = 0; t < 256; ++t)
            assert_int_equal(out.h[b * 256 + t], b * 1000 + 255 - t);
    KW_CUDA_LAUNCH(k_dynamic_reverse, 4, 96, 96 * sizeof(int), 0, out.d, before.d);
    CK(cudaGetLastError());
    out.down();
    for (int b = 0; b < 4; ++b)
        for (int t = 0; t < 96; ++t)
            assert_int_equal(out.h[b * 96 + t], b * 1000 + 95 - t);
#ifdef KW_CUDA_EMU
    for (int v : before.down())
        assert_int_equal(v, -1); /* poisoned at every block start */
#endif
}

/* Kernel parameters are per-thread copies: changing one changes nothing for the other threads. */
__global__ void k_params(int n, int *out) {
    n += (int)threadIdx.x;
    out[threadIdx.x] = n;
}

static void test_parameters_by_value(void **state) {
    (void)state;
    reset();
    dbuf<int> out(64);
    KW_CUDA_LAUNCH(k_params, 1, 64, 0, 0, 1000, out.d);
    out.down();
    for (int t = 0; t < 64; ++t)
        assert_int_equal(out.h[t], 1000 + t);
}

// ---------------------------------------------------------------------------------------------------------------
// Warp collectives

enum { OP_IDX, OP_UP, OP_DOWN, OP_XOR };

/* One warp; lanes outside mask do not take part and write -2. */
__global__ void k_shfl(const int *in, int *out, int op, int arg, int width, unsigned int mask) {
    const unsigned int lane = threadIdx.x;
    if (!(mask >> lane & 1u)) {
        out[lane] = -2;
        return;
    }
    const int v = in[lane];
    int r = 0;
    if (op == OP_IDX) r = __shfl_sync(mask, v, arg, width);
    if (op == OP_UP) r = __shfl_up_sync(mask, v, (unsigned int)arg, width);
    if (op == OP_DOWN) r = __shfl_down_sync(mask, v, (unsigned int)arg, width);
    if (op == OP_XOR) r = __shfl_xor_sync(mask, v, arg, width);
    out[lane] = r;
}

/* The source lane, as the programming guide words it (see the file comment). */
static int guide_source(int op, int lane, int arg, int width) {
    const int group = lane / width, pos = lane % width;
    switch (op) {
    case OP_IDX:
        return group * width + arg % width;
    case OP_UP:
        return pos >= arg ? lane - arg : lane; /* the lower delta lanes keep their value */
    case OP_DOWN:
        return pos + arg < width ? lane + arg : lane;
    default: { /* xor: earlier groups may be read, later ones give the own value */
        const int src = lane ^ arg;
        return src / width > group ? lane : src;
    }
    }
}

static void shuffle_matrix(void) {
    dbuf<int> in(32), out(32);
    for (int l = 0; l < 32; ++l)
        in.h[l] = l * 7 + 3;
    in.up();
    const int widths[] = {32, 16, 8, 4, 2, 1}, args[] = {0, 1, 3, 5, 16, 31};
    const unsigned int masks[] = {FULL, 0x0000ffffu, 0xf0f0f0f0u};
    for (unsigned int mask : masks)
        for (int op = OP_IDX; op <= OP_XOR; ++op)
            for (int width : widths)
                for (int arg : args) {
                    KW_CUDA_LAUNCH(k_shfl, 1, 32, 0, 0, in.d, out.d, op, arg, width, mask);
                    CK(cudaGetLastError());
                    out.down();
                    for (int l = 0; l < 32; ++l) {
                        if (!(mask >> l & 1u)) {
                            assert_int_equal(out.h[l], -2);
                            continue;
                        }
                        const int src = guide_source(op, l, arg, width);
                        if (!(mask >> src & 1u)) { /* an inactive source: undefined on a GPU */
#ifdef KW_CUDA_EMU
                            assert_int_equal(out.h[l], -1);
#endif
                            continue;
                        }
                        if (out.h[l] != in.h[src])
                            fail_msg("op %d width %d arg %d mask %08x lane %d: got %d, lane %d holds %d", op, width,
                                     arg, mask, l, out.h[l], src, in.h[src]);
                    }
                }
}

/* 8-byte and floating-point values through the butterfly (a warp sum, as the kernels do it). */
__global__ void k_shfl_types(const double *d, const long long *q, const float *f, double *od, long long *oq,
                             float *of) {
    double a = d[threadIdx.x];
    long long b = q[threadIdx.x];
    float c = f[threadIdx.x];
    for (int o = 16; o > 0; o >>= 1) {
        a += __shfl_xor_sync(FULL, a, o);
        b += __shfl_xor_sync(FULL, b, o);
        c += __shfl_xor_sync(FULL, c, o);
    }
    od[threadIdx.x] = a;
    oq[threadIdx.x] = b;
    of[threadIdx.x] = c;
}

static void test_shuffles(void **state) {
    (void)state;
    reset();
    shuffle_matrix();
    dbuf<double> d(32), od(32);
    dbuf<long long> q(32), oq(32);
    dbuf<float> f(32), of(32);
    double sd = 0;
    long long sq = 0;
    for (int l = 0; l < 32; ++l) {
        d.h[l] = 0.5 * l, q.h[l] = ((long long)l << 40) + l, f.h[l] = (float)l;
        sd += d.h[l], sq += q.h[l];
    }
    d.up(), q.up(), f.up();
    KW_CUDA_LAUNCH(k_shfl_types, 1, 32, 0, 0, d.d, q.d, f.d, od.d, oq.d, of.d);
    od.down(), oq.down(), of.down();
    for (int l = 0; l < 32; ++l) {
        assert_true(od.h[l] == sd);
        assert_true(oq.h[l] == sq);
        assert_true(of.h[l] == 496.0f);
    }
}

/* out[lane * 12 + k]: ballot, any, all, uni, reduce add/min/max (signed and unsigned), match_any, match_all and its
 * predicate, activemask. */
__global__ void k_votes(const int *pred, const int *val, unsigned int mask, unsigned int *out) {
    const unsigned int lane = threadIdx.x;
    if (!(mask >> lane & 1u)) return;
    unsigned int *o = out + lane * 12;
    const int p = pred[lane], v = val[lane];
    o[0] = __ballot_sync(mask, p);
    o[1] = (unsigned int)__any_sync(mask, p);
    o[2] = (unsigned int)__all_sync(mask, p);
    o[3] = (unsigned int)__uni_sync(mask, p);
    o[4] = __reduce_add_sync(mask, (unsigned int)v);
    o[5] = (unsigned int)__reduce_min_sync(mask, v);
    o[6] = (unsigned int)__reduce_max_sync(mask, v);
    o[7] = __reduce_max_sync(mask, (unsigned int)v);
    o[8] = __match_any_sync(mask, v % 3);
    int all = 0;
    o[9] = __match_all_sync(mask, p, &all);
    o[10] = (unsigned int)all;
    __syncwarp(mask);
    o[11] = 1;
}

static void test_votes(void **state) {
    (void)state;
    reset();
    const unsigned int masks[] = {FULL, 0x00ff00ffu};
    for (unsigned int mask : masks)
        for (int pattern = 0; pattern < 3; ++pattern) {
            dbuf<int> pred(32), val(32);
            dbuf<unsigned int> out(32 * 12, 0xdeadu);
            for (int l = 0; l < 32; ++l) {
                pred.h[l] = pattern == 0 ? (l % 3 == 0) : pattern == 1 ? 1 : 0;
                val.h[l] = (l * 37) % 23 - 11;
            }
            pred.up(), val.up();
            KW_CUDA_LAUNCH(k_votes, 1, 32, 0, 0, pred.d, val.d, mask, out.d);
            CK(cudaGetLastError());
            out.down();
            unsigned int ballot = 0, sum = 0, umax = 0;
            int smin = INT32_MAX, smax = INT32_MIN;
            for (int l = 0; l < 32; ++l) {
                if (!(mask >> l & 1u)) continue;
                if (pred.h[l]) ballot |= 1u << l;
                sum += (unsigned int)val.h[l];
                smin = val.h[l] < smin ? val.h[l] : smin;
                smax = val.h[l] > smax ? val.h[l] : smax;
                umax = (unsigned int)val.h[l] > umax ? (unsigned int)val.h[l] : umax;
            }
            for (int l = 0; l < 32; ++l) {
                const unsigned int *o = &out.h[(size_t)l * 12];
                if (!(mask >> l & 1u)) {
                    assert_int_equal(o[0], 0xdeadu);
                    continue;
                }
                unsigned int same = 0;
                for (int m = 0; m < 32; ++m)
                    if ((mask >> m & 1u) && val.h[m] % 3 == val.h[l] % 3) same |= 1u << m;
                assert_int_equal(o[0], ballot);
                assert_int_equal(o[1], ballot != 0);
                assert_int_equal(o[2], ballot == mask);
                assert_int_equal(o[3], ballot == 0 || ballot == mask);
                assert_int_equal(o[4], sum);
                assert_int_equal((int)o[5], smin);
                assert_int_equal((int)o[6], smax);
                assert_int_equal(o[7], umax);
                assert_int_equal(o[8], same);
                const int uniform = ballot == 0 || ballot == mask;
                assert_int_equal(o[9], uniform ? mask : 0u);
                assert_int_equal(o[10], uniform);
                assert_int_equal(o[11], 1);
            }
        }
}

/* Lanes exchange through shared memory with __syncwarp between writing and reading. */
__global__ void k_syncwarp(int *out) {
    __shared__ int s[64];
    const unsigned int lane = threadIdx.x & 31, base = threadIdx.x & ~31u;
    s[threadIdx.x] = (int)threadIdx.x * 3;
    __syncwarp();
    out[threadIdx.x] = s[base + ((lane + 1) & 31)];
}

static void test_syncwarp(void **state) {
    (void)state;
    reset();
    dbuf<int> out(64);
    KW_CUDA_LAUNCH(k_syncwarp, 1, 64, 0, 0, out.d);
    out.down();
    for (int t = 0; t < 64; ++t)
        assert_int_equal(out.h[t], ((t & ~31) + ((t + 1) & 31)) * 3);
}

// ---------------------------------------------------------------------------------------------------------------
// Atomics

__global__ void k_atomics(int *count, unsigned long long *key, float *fsum, unsigned int *wrap) {
    const unsigned int g = blockIdx.x * blockDim.x + threadIdx.x;
    atomicAdd(count, 1);
    atomicMax(key, (unsigned long long)((g * 7919u) % 10007u) << 32 | g);
    /* a float add built from atomicCAS, the classic loop */
    unsigned int *addr = (unsigned int *)fsum, old = *addr, assumed;
    do {
        assumed = old;
        old = atomicCAS(addr, assumed, __float_as_uint(__uint_as_float(assumed) + 0.5f));
    } while (old != assumed);
    atomicInc(wrap, 9u);
}

static void test_atomics(void **state) {
    (void)state;
    for (uint64_t seed = 0; seed < 3; ++seed) {
        reset(seed);
        dbuf<int> count(1);
        dbuf<unsigned long long> key(1);
        dbuf<float> fsum(1);
        dbuf<unsigned int> wrap(1);
        KW_CUDA_LAUNCH(k_atomics, 6, 128, 0, 0, count.d, key.d, fsum.d, wrap.d);
        CK(cudaGetLastError());
        assert_int_equal(count.down()[0], 768);
        unsigned long long best = 0;
        for (unsigned int g = 0; g < 768; ++g) {
            const unsigned long long k = (unsigned long long)((g * 7919u) % 10007u) << 32 | g;
            best = k > best ? k : best;
        }
        assert_true(key.down()[0] == best);
        assert_true(fsum.down()[0] == 384.0f);
        assert_int_equal(wrap.down()[0], 768 % 10);
    }
}

#ifdef KW_CUDA_EMU
// ---------------------------------------------------------------------------------------------------------------
// Races the randomized schedule must expose

/* Sums the block like k_block_sum but the last thread reads the per-warp partial sums, with or without the barrier
 * that makes their writes visible. */
__global__ void k_racy_sum(const int *x, int *out, int barrier) {
    __shared__ int part[32];
    const unsigned int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int v = x[blockIdx.x * blockDim.x + threadIdx.x];
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(FULL, v, o);
    if (lane == 0) part[warp] = v;
    if (barrier) __syncthreads();
    if (threadIdx.x == blockDim.x - 1) {
        int s = 0;
        for (unsigned int w = 0; w < blockDim.x / 32; ++w)
            s += part[w];
        out[blockIdx.x] = s;
    }
}

/* Two block-wide sums in a row through the same shared array: without the barrier before the second write, a fast
 * warp overwrites its slot while a slow warp still reads the first sum's slots. */
__global__ void k_two_sums(const int *x, int *sums, int barrier) {
    __shared__ int part[32];
    const unsigned int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = blockIdx.x * blockDim.x + threadIdx.x;
    int v = x[g];
    for (int pass = 0; pass < 2; ++pass) {
        for (int o = 16; o > 0; o >>= 1)
            v += __shfl_xor_sync(FULL, v, o);
        if (pass == 1 && barrier) __syncthreads();
        if (lane == 0) part[warp] = v;
        __syncthreads();
        int s = 0;
        for (unsigned int w = 0; w < blockDim.x / 32; ++w)
            s += part[w];
        sums[2 * g + pass] = s; /* every thread's view of both sums */
        v = (int)threadIdx.x;
    }
}

/* Block 1 reads what block 0 writes, with nothing ordering the blocks: a race between blocks. */
__global__ void k_block_race(int *cell, int *seen) {
    if (threadIdx.x != 0) return;
    if (blockIdx.x == 0) *cell = 77;
    if (blockIdx.x == 1) *seen = *cell;
}

/* 1 if some thread saw a wrong first or second sum. */
static int two_sums_run(int barrier, dbuf<int> &x) {
    dbuf<int> sums(2 * x.h.size());
    KW_CUDA_LAUNCH(k_two_sums, 8, 256, 0, 0, x.d, sums.d, barrier);
    CK(cudaGetLastError());
    sums.down();
    for (int b = 0; b < 8; ++b) {
        int s = 0;
        for (int t = 0; t < 256; ++t)
            s += x.h[b * 256 + t];
        for (int t = 0; t < 256; ++t)
            if (sums.h[2 * (b * 256 + t)] != s || sums.h[2 * (b * 256 + t) + 1] != 255 * 256 / 2) return 1;
    }
    return 0;
}

/* 1 if the kernel gave a wrong sum for some block. */
static int racy_run(int barrier, dbuf<int> &x, dbuf<int> &out) {
    KW_CUDA_LAUNCH(k_racy_sum, 8, 256, 0, 0, x.d, out.d, barrier);
    CK(cudaGetLastError());
    out.down();
    for (int b = 0; b < 8; ++b) {
        int s = 0;
        for (int t = 0; t < 256; ++t)
            s += x.h[b * 256 + t];
        if (out.h[b] != s) return 1;
    }
    return 0;
}

static void test_race_exposed_by_random_schedule(void **state) {
    (void)state;
    int wrong_inorder = 0, wrong_random = 0, wrong_with_barrier = 0, block_race = 0, two_inorder = 0, two_random = 0;
    const int seeds = 16;
    for (int seed = 0; seed <= seeds; ++seed) {
        reset((uint64_t)seed);
        dbuf<int> x(8 * 256), out(8);
        for (size_t i = 0; i < x.h.size(); ++i)
            x.h[i] = (int)(i % 97) + 1;
        x.up();
        const int wrong = racy_run(0, x, out);
        if (seed == 0)
            wrong_inorder = wrong;
        else
            wrong_random += wrong;
        wrong_with_barrier += racy_run(1, x, out) + two_sums_run(1, x);
        if (seed == 0)
            two_inorder = two_sums_run(0, x);
        else
            two_random += two_sums_run(0, x);
        dbuf<int> cell(1, 0), seen(1, 0);
        KW_CUDA_LAUNCH(k_block_race, 2, 32, 0, 0, cell.d, seen.d);
        block_race += seed > 0 && seen.down()[0] != 77;
    }
    print_message("  missing barrier before a read: wrong in order: %d; wrong under %d of %d random schedules\n"
                  "  missing barrier between two sums: wrong in order: %d; wrong under %d of %d random schedules\n"
                  "  with the barriers: wrong %d times; block race seen by %d random schedules\n",
                  wrong_inorder, wrong_random, seeds, two_inorder, two_random, seeds, wrong_with_barrier, block_race);
    assert_int_equal(wrong_with_barrier, 0);
    assert_true(wrong_random > 0);
    assert_true(two_random > 0);
    /* in order, both show: one in the odd blocks (warps advance together), one in the even ones (warp 0 runs on) */
    assert_int_equal(wrong_inorder, 1);
    assert_int_equal(two_inorder, 1);
    assert_true(block_race > 0);
}

/* The backend's block reductions (kernels/cuda/kw_cuda_reduce.cuh), each called twice in one kernel as no backend
 * kernel does: the second call reuses the first's part[], and its values differ from the first's (1000 per thread, x +
 * 100), so a warp that reads a slot the second call has already overwritten gets a wrong first result. */
__global__ void k_reduce_twice(const float *x, float *out) {
    const unsigned int g = blockIdx.x * blockDim.x + threadIdx.x;
    const float s1 = kw_block_sum(x[g]);
    const float s2 = kw_block_sum(1000.0f);
    const float m1 = kw_block_max(x[g]);
    const float m2 = kw_block_max(x[g] + 100.0f);
    out[4 * g] = s1, out[4 * g + 1] = s2, out[4 * g + 2] = m1, out[4 * g + 3] = m2;
}

/* The number of threads (of 8 blocks of 256) that saw a wrong result from k_reduce_twice. */
static int reduce_twice_wrong(dbuf<float> &x) {
    dbuf<float> out(4 * x.h.size());
    KW_CUDA_LAUNCH(k_reduce_twice, 8, 256, 0, 0, x.d, out.d);
    CK(cudaGetLastError());
    out.down();
    int wrong = 0;
    for (int b = 0; b < 8; ++b) {
        float s = 0.0f, m = -INFINITY; /* small integers: every summation order gives the same sum */
        for (int t = 0; t < 256; ++t)
            s += x.h[b * 256 + t], m = fmaxf(m, x.h[b * 256 + t]);
        for (int t = 0; t < 256; ++t) {
            const float *o = &out.h[4 * (b * 256 + t)];
            wrong += o[0] != s || o[1] != 256000.0f || o[2] != m || o[3] != m + 100.0f;
        }
    }
    return wrong;
}

static void test_block_reduce_twice(void **state) {
    (void)state;
    const int seeds = 16; /* the randomized schedule draws the per-warp priority policy for about 1 block in 3 */
    int wrong = 0;
    for (int seed = 0; seed <= seeds; ++seed) {
        reset((uint64_t)seed);
        dbuf<float> x(8 * 256);
        for (size_t i = 0; i < x.h.size(); ++i)
            x.h[i] = (float)((i * 37) % 11); /* each block's maximum in several warps, not in all lanes */
        x.up();
        const int w = reduce_twice_wrong(x);
        if (w > 0) print_message("  seed %d: %d threads saw a wrong block sum or max\n", seed, w);
        wrong += w;
    }
    assert_int_equal(wrong, 0);
}

// ---------------------------------------------------------------------------------------------------------------
// Kernel faults: each is sticky and diagnosed

__global__ void k_divergent_barrier(int *out) {
    if (threadIdx.x < 32)
        __syncthreads();
    else
        __syncthreads();
    out[threadIdx.x] = 1;
}

__global__ void k_exit_before_barrier(int *out) {
    if (threadIdx.x == 0) return;
    __syncthreads();
    out[threadIdx.x] = 1;
}

__global__ void k_deadlock(int *out) {
    int v = (int)threadIdx.x;
    if (threadIdx.x == 0) v = __shfl_sync(FULL, v, 1);
    __syncthreads();
    out[threadIdx.x] = v;
}

__global__ void k_mask_omits_self(int *out) {
    out[threadIdx.x] = __shfl_sync(0x1u, (int)threadIdx.x, 0);
}

__global__ void k_mismatched(int *out) {
    out[threadIdx.x] = threadIdx.x < 16 ? (int)__ballot_sync(FULL, 1) : __any_sync(FULL, 1);
}

__global__ void k_exited_lane(int *out) {
    if (threadIdx.x == 31) return;
    out[threadIdx.x] = __shfl_sync(FULL, (int)threadIdx.x, 0);
}

__global__ void k_bad_width(int *out) {
    out[threadIdx.x] = __shfl_sync(FULL, (int)threadIdx.x, 0, 3);
}

__global__ void k_partial_warp_full_mask(int *out) {
    out[threadIdx.x] = __shfl_sync(FULL, (int)threadIdx.x, 0);
}

__global__ void k_off_by_one(int *out, int n) {
    for (int i = (int)threadIdx.x; i <= n; i += (int)blockDim.x) /* <= : one element too many */
        out[i] = i;
}

__global__ void k_trap(int *out) {
    if (threadIdx.x == 5) __trap();
    out[threadIdx.x] = 1;
}

/* Launches kernel(out) with `threads` threads; the fault must be sticky with code, and its diagnosis contain what. */
static void expect_fault(void (*kernel)(int *), unsigned int threads, cudaError_t code, const char *what) {
    reset();
    int *out = nullptr;
    CK(cudaMalloc((void **)&out, 1024 * sizeof(int)));
    KW_CUDA_LAUNCH(kernel, 1, threads, 0, 0, out);
    assert_int_equal(cudaGetLastError(), cudaSuccess); /* the launch itself is fine; the fault comes when it runs */
    const cudaError_t e = cudaDeviceSynchronize();
    const char *fault = kw_cuda_emu_last_fault();
    if (e != code || fault == nullptr || strstr(fault, what) == nullptr)
        fail_msg("expected %s with \"%s\", got %s: %s", cudaGetErrorName(code), what, cudaGetErrorName(e),
                 fault ? fault : "(no fault)");
    print_message("  %s\n", fault);
    /* sticky: later calls fail with the same code, and the error string carries the diagnosis */
    void *p = nullptr;
    assert_int_equal(cudaMalloc(&p, 16), code);
    assert_int_equal(cudaGetLastError(), code);
    assert_non_null(strstr(cudaGetErrorString(code), what));
    reset();
    assert_int_equal(cudaMalloc(&p, 16), cudaSuccess);
    CK(cudaFree(p));
}

static void test_faults(void **state) {
    (void)state;
    expect_fault(k_divergent_barrier, 64, cudaErrorLaunchFailure, "divergent barrier");
    expect_fault(k_exit_before_barrier, 64, cudaErrorLaunchFailure, "exited");
    expect_fault(k_deadlock, 64, cudaErrorLaunchFailure, "deadlock");
    expect_fault(k_mask_omits_self, 32, cudaErrorLaunchFailure, "omits the calling lane");
    expect_fault(k_mismatched, 32, cudaErrorLaunchFailure, "different intrinsics");
    expect_fault(k_exited_lane, 32, cudaErrorLaunchFailure, "exited");
    expect_fault(k_bad_width, 32, cudaErrorLaunchFailure, "power of two");
    expect_fault(k_partial_warp_full_mask, 40, cudaErrorLaunchFailure, "do not exist");
    expect_fault(k_trap, 32, cudaErrorLaunchFailure, "__trap()");
}

static void test_guard_bytes(void **state) {
    (void)state;
#ifdef TEST_ASAN
    print_message("  skipped under AddressSanitizer: the guards are poisoned and ASan reports the write itself\n");
#else
    reset();
    int *out = nullptr;
    CK(cudaMalloc((void **)&out, 100 * sizeof(int)));
    KW_CUDA_LAUNCH(k_off_by_one, 1, 64, 0, 0, out, 100);
    assert_int_equal(cudaDeviceSynchronize(), cudaErrorIllegalAddress);
    assert_non_null(strstr(kw_cuda_emu_last_fault(), "past the end"));
    assert_non_null(strstr(kw_cuda_emu_last_fault(), "k_off_by_one"));
    reset();
#endif
}

static void test_host_pointer_argument(void **state) {
    (void)state;
    reset();
    std::vector<int> host(64);
    KW_CUDA_LAUNCH(k_params, 1, 64, 0, 0, 1, host.data());
    assert_int_equal(cudaGetLastError(), cudaErrorIllegalAddress);
    assert_non_null(strstr(kw_cuda_emu_last_fault(), "not device memory"));
    reset();
}
#endif /* KW_CUDA_EMU */

// ---------------------------------------------------------------------------------------------------------------
// Launch configuration, memory API

static void test_launch_configuration(void **state) {
    (void)state;
    reset();
    dbuf<int> out(2048);
    KW_CUDA_LAUNCH(k_params, 1, 1025, 0, 0, 0, out.d);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidConfiguration);
    assert_int_equal(cudaGetLastError(), cudaSuccess); /* not sticky: cleared by the read */
    KW_CUDA_LAUNCH(k_params, dim3(1, 70000), 32, 0, 0, 0, out.d);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidConfiguration);
    KW_CUDA_LAUNCH(k_params, 0, 32, 0, 0, 0, out.d);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidConfiguration);
    KW_CUDA_LAUNCH(k_params, 1, 64, 0, 0, 7, out.d); /* still usable */
    CK(cudaGetLastError());
    assert_int_equal(out.down()[63], 7 + 63);
}

static void test_memory_api(void **state) {
    (void)state;
    reset();
    size_t free0 = 0, total = 0;
    CK(cudaMemGetInfo(&free0, &total));
    void *p = nullptr;
    CK(cudaMalloc(&p, 1000));
    size_t free1 = 0;
    CK(cudaMemGetInfo(&free1, &total));
    assert_true(free1 < free0 && free0 - free1 >= 1000);
    assert_int_equal((uintptr_t)p % 256, 0);
    CK(cudaMemset(p, 0x5a, 1000));
    std::vector<unsigned char> h(1000);
    CK(cudaMemcpy(h.data(), p, 1000, cudaMemcpyDeviceToHost));
    for (unsigned char c : h)
        assert_int_equal(c, 0x5a);
    CK(cudaMemcpy(h.data(), p, 1000, cudaMemcpyDefault)); /* the direction inferred */
    int x = 0;
    assert_int_equal(cudaFree(&x), cudaErrorInvalidValue);
    (void)cudaGetLastError();
#ifdef KW_CUDA_EMU
    /* the emulator checks ranges and directions a GPU leaves undefined */
    assert_int_equal(cudaMemcpy(h.data(), p, 1001, cudaMemcpyDeviceToHost), cudaErrorInvalidValue);
    assert_non_null(strstr(kw_cuda_emu_last_error_detail(), "1001 bytes"));
    assert_int_equal(cudaMemcpy(h.data(), (char *)p + 1, 1000, cudaMemcpyDeviceToHost), cudaErrorInvalidValue);
    assert_int_equal(cudaMemcpy(p, h.data(), 10, cudaMemcpyDeviceToHost), cudaErrorInvalidValue);
    assert_int_equal(cudaMemset(h.data(), 0, 10), cudaErrorInvalidValue);
    assert_int_equal(cudaMemcpy((char *)p + 10, p, 100, cudaMemcpyDeviceToDevice), cudaErrorInvalidValue);
    (void)cudaGetLastError();
    /* a too large request fails cleanly and leaves the device usable */
    void *huge = nullptr;
    assert_int_equal(cudaMalloc(&huge, (size_t)1 << 50), cudaErrorMemoryAllocation);
    assert_null(huge);
    (void)cudaGetLastError();
    kw_cuda_emu_stats st;
    kw_cuda_emu_get_stats(&st);
    assert_int_equal(st.live_allocations, 1);
#endif
    CK(cudaFree(p));
    assert_int_equal(cudaFree(p), cudaErrorInvalidValue); /* double free */
    (void)cudaGetLastError();
    void *pin = nullptr;
    CK(cudaMallocHost(&pin, 64));
    CK(cudaFreeHost(pin));
}

static void test_pools(void **state) {
    (void)state;
    reset();
    cudaMemPoolProps props;
    memset(&props, 0, sizeof props);
    props.allocType = cudaMemAllocationTypePinned;
    props.handleTypes = cudaMemHandleTypeNone;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = 0;
    cudaMemPool_t pool;
    CK(cudaMemPoolCreate(&pool, &props));
    uint64_t keep = UINT64_MAX, used = 0;
    CK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    void *a = nullptr, *b = nullptr;
    CK(cudaMallocFromPoolAsync(&a, 4096, pool, s));
    CK(cudaMallocFromPoolAsync(&b, 100, pool, s));
    CK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &used));
    assert_true(used >= 4196);
    CK(cudaMemsetAsync(a, 0, 4096, s));
    CK(cudaFreeAsync(a, s));
#ifdef KW_CUDA_EMU
    assert_int_equal(cudaFreeAsync(a, s), cudaErrorInvalidValue); /* already queued for freeing */
    (void)cudaGetLastError();
#endif
    CK(cudaStreamSynchronize(s));
    CK(cudaMemPoolDestroy(pool)); /* b is still allocated: the pool lives until it is freed */
    CK(cudaFreeAsync(b, s));
    CK(cudaStreamSynchronize(s));
    CK(cudaStreamDestroy(s));
}

// ---------------------------------------------------------------------------------------------------------------
// Streams, events, graphs

__global__ void k_fill(int *x, int n, int v) {
    for (int i = (int)(blockIdx.x * blockDim.x + threadIdx.x); i < n; i += (int)(gridDim.x * blockDim.x))
        x[i] = v;
}

__global__ void k_copy_add(int *dst, const int *src, int n, int add) {
    for (int i = (int)(blockIdx.x * blockDim.x + threadIdx.x); i < n; i += (int)(gridDim.x * blockDim.x))
        dst[i] = src[i] + add;
}

static void host_mark(void *user) {
    int *flag = (int *)user;
    *flag = *flag * 10 + 1;
}

static void test_streams_and_events(void **state) {
    (void)state;
    reset();
    const int n = 1000;
    dbuf<int> x(n, 0), y(n, 0);
    cudaStream_t s1, s2;
    CK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
    CK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
    cudaEvent_t e, t0, t1;
    CK(cudaEventCreate(&e));
    CK(cudaEventCreate(&t0));
    CK(cudaEventCreate(&t1));

    /* s2 reads what s1 wrote, ordered by an event */
    CK(cudaEventRecord(t0, s1));
    KW_CUDA_LAUNCH(k_fill, 4, 128, 0, s1, x.d, n, 42);
    CK(cudaEventRecord(e, s1));
    CK(cudaStreamWaitEvent(s2, e, 0));
    KW_CUDA_LAUNCH(k_copy_add, 4, 128, 0, s2, y.d, x.d, n, 1);
    CK(cudaEventRecord(t1, s2));
    std::vector<int> host(n, -5);
    CK(cudaMemcpyAsync(host.data(), y.d, n * sizeof(int), cudaMemcpyDeviceToHost, s2));
#ifdef KW_CUDA_EMU
    assert_int_equal(host[0], -5); /* nothing runs before the host waits */
#endif
    int flag = 0;
    CK(cudaLaunchHostFunc(s2, host_mark, &flag));
    CK(cudaStreamSynchronize(s2));
    for (int v : host)
        assert_int_equal(v, 43);
    assert_int_equal(flag, 1);
    float ms = -1;
    CK(cudaEventSynchronize(t1));
    CK(cudaEventElapsedTime(&ms, t0, t1));
    assert_true(ms >= 0.0f);
    CK(cudaEventQuery(e));
    CK(cudaStreamQuery(s1));

#ifdef KW_CUDA_EMU
    /* without the event, s2 does not wait for s1: the emulator runs s2 alone and y sees the old x */
    KW_CUDA_LAUNCH(k_fill, 4, 128, 0, s1, x.d, n, 7);
    KW_CUDA_LAUNCH(k_copy_add, 4, 128, 0, s2, y.d, x.d, n, 1);
    CK(cudaStreamSynchronize(s2));
    assert_int_equal(y.down()[0], 43);
    CK(cudaStreamSynchronize(s1));

    /* the legacy stream waits for blocking streams, not for non-blocking ones */
    cudaStream_t blocking;
    CK(cudaStreamCreate(&blocking));
    KW_CUDA_LAUNCH(k_fill, 4, 128, 0, blocking, x.d, n, 9);
    assert_int_equal(x.down()[0], 9);
    KW_CUDA_LAUNCH(k_fill, 4, 128, 0, s1, x.d, n, 11);
    assert_int_equal(x.down()[0], 9);
    CK(cudaStreamSynchronize(s1));
    assert_int_equal(x.down()[0], 11);
    CK(cudaStreamDestroy(blocking));
#endif
    CK(cudaEventDestroy(e));
    CK(cudaEventDestroy(t0));
    CK(cudaEventDestroy(t1));
    CK(cudaStreamDestroy(s1));
    CK(cudaStreamDestroy(s2));
}

static void test_graphs(void **state) {
    (void)state;
    reset();
    const int n = 300;
    dbuf<int> x(n, 5), y(n, 0);
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    KW_CUDA_LAUNCH(k_copy_add, 2, 64, 0, s, y.d, x.d, n, 1);
    KW_CUDA_LAUNCH(k_copy_add, 2, 64, 0, s, x.d, y.d, n, 1);
    cudaGraph_t g;
    CK(cudaStreamEndCapture(s, &g));
    cudaGraphExec_t ge;
    CK(cudaGraphInstantiate(&ge, g, 0));
    assert_int_equal(x.down()[0], 5); /* captured, not run */
    for (int i = 0; i < 3; ++i)
        CK(cudaGraphLaunch(ge, s));
    CK(cudaStreamSynchronize(s));
    assert_int_equal(x.down()[0], 11);
    assert_int_equal(y.down()[n - 1], 10);
    CK(cudaGraphExecDestroy(ge));
    CK(cudaGraphDestroy(g));

    /* a synchronous call during capture invalidates it */
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    KW_CUDA_LAUNCH(k_copy_add, 2, 64, 0, s, y.d, x.d, n, 1);
    assert_int_equal(cudaStreamSynchronize(s), cudaErrorStreamCaptureUnsupported);
    assert_int_equal(cudaStreamEndCapture(s, &g), cudaErrorStreamCaptureInvalidated);
    (void)cudaGetLastError();
    CK(cudaStreamDestroy(s));
}

__global__ void k_add_param(int *y, const int *param, int n) {
    for (int i = (int)(blockIdx.x * blockDim.x + threadIdx.x); i < n; i += (int)(gridDim.x * blockDim.x))
        y[i] += *param;
}

/* What the CUDA backend's step graphs rely on (kernels/cuda/kw_cuda_backend.cu): a replay reads device memory, and the
 * host side of a captured copy, as they are when it runs, not as they were at capture; a call that may synchronize
 * (cudaMalloc) is refused during a capture and invalidates it. */
static void test_graph_replay_values(void **state) {
    (void)state;
    reset();
    const int n = 200;
    dbuf<int> y(n, 0), p(1, 0), q(1, 0);
    int *h_q = nullptr;
    CK(cudaMallocHost((void **)&h_q, sizeof *h_q));
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    KW_CUDA_LAUNCH(k_add_param, 2, 64, 0, s, y.d, p.d, n);                 /* y += p (device, set outside) */
    CK(cudaMemcpyAsync(q.d, h_q, sizeof *h_q, cudaMemcpyHostToDevice, s)); /* q = *h_q at replay */
    KW_CUDA_LAUNCH(k_add_param, 2, 64, 0, s, y.d, q.d, n);                 /* y += q */
    cudaGraph_t g;
    CK(cudaStreamEndCapture(s, &g));
    cudaGraphExec_t ge;
    CK(cudaGraphInstantiate(&ge, g, 0));
    int expect = 0;
    for (int step = 1; step <= 4; ++step) {
        const int pv = 10 * step, qv = 1000 * step;
        p.h[0] = pv;
        CK(cudaMemcpyAsync(p.d, p.h.data(), sizeof(int), cudaMemcpyHostToDevice, s));
        *h_q = qv;
        CK(cudaGraphLaunch(ge, s));
        CK(cudaStreamSynchronize(s));
        expect += pv + qv;
        const std::vector<int> &got = y.down();
        for (int i = 0; i < n; ++i)
            assert_int_equal(got[i], expect);
    }
    CK(cudaGraphExecDestroy(ge));
    CK(cudaGraphDestroy(g));

    /* cudaMalloc during a capture: refused, and the capture is lost */
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    KW_CUDA_LAUNCH(k_add_param, 2, 64, 0, s, y.d, p.d, n);
    void *extra = nullptr;
    assert_int_equal(cudaMalloc(&extra, 64), cudaErrorStreamCaptureUnsupported);
    assert_int_equal(cudaStreamEndCapture(s, &g), cudaErrorStreamCaptureInvalidated);
    (void)cudaGetLastError();
    assert_int_equal(y.down()[0], expect); /* nothing of the lost capture ran */
    CK(cudaStreamDestroy(s));
    CK(cudaFreeHost(h_q));
}

// ---------------------------------------------------------------------------------------------------------------
// cuBLAS

static double tf32_round(double v) {
    float f = (float)v;
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0xfffu + ((u >> 13) & 1u);
    u &= ~0x1fffu;
    memcpy(&f, &u, 4);
    return f;
}

static uint16_t to16(float v, cudaDataType_t t) {
    return t == CUDA_R_16F ? __half_as_ushort(__float2half_rn(v)) : __bfloat16_as_ushort(__float2bfloat16_rn(v));
}

static float from16(uint16_t u, cudaDataType_t t) {
    return t == CUDA_R_16F ? __half2float(__ushort_as_half(u)) : __bfloat162float(__ushort_as_bfloat16(u));
}

/* Element i of a matrix of type t held in bytes. */
static float element(const std::vector<unsigned char> &bytes, size_t i, cudaDataType_t t) {
    if (t != CUDA_R_32F) {
        uint16_t u;
        memcpy(&u, &bytes[i * 2], 2);
        return from16(u, t);
    }
    float f;
    memcpy(&f, &bytes[i * 4], 4);
    return f;
}

/* One GemmEx against a double reference of the same (rounded) inputs: |got - ref| <= (g(k + 2) + u) sum|terms| plus
 * the output type's half ulp. */
static void gemm_case(cublasHandle_t h, int ta, int tb, int m, int n, int k, cudaDataType_t ab, cudaDataType_t ct,
                      cublasComputeType_t compute, int tf32_expected) {
    const int lda = (ta ? k : m) + 3, ldb = (tb ? n : k) + 2, ldc = m + 1;
    const int a_cols = ta ? m : k, b_cols = tb ? k : n;
    const size_t es = ab == CUDA_R_32F ? 4 : 2, cs = ct == CUDA_R_32F ? 4 : 2;
    std::vector<unsigned char> A((size_t)lda * a_cols * es), B((size_t)ldb * b_cols * es), C((size_t)ldc * n * cs);
    std::vector<double> av((size_t)lda * a_cols), bv((size_t)ldb * b_cols), cv((size_t)ldc * n);
    uint64_t r = 12345;
    auto rnd = [&r]() {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        return (double)(int64_t)(r >> 40) / (double)(1ll << 23) - 1.0 + 1e-3 / 3;
    };
    auto put = [](std::vector<unsigned char> &buf, std::vector<double> &val, size_t i, double v, cudaDataType_t t) {
        if (t == CUDA_R_32F) {
            const float f = (float)v;
            memcpy(&buf[i * 4], &f, 4);
            val[i] = f;
        } else {
            const uint16_t u = to16((float)v, t);
            memcpy(&buf[i * 2], &u, 2);
            val[i] = from16(u, t);
        }
    };
    for (size_t i = 0; i < av.size(); ++i)
        put(A, av, i, rnd(), ab);
    for (size_t i = 0; i < bv.size(); ++i)
        put(B, bv, i, rnd(), ab);
    for (size_t i = 0; i < cv.size(); ++i)
        put(C, cv, i, rnd(), ct);
    void *dA, *dB, *dC;
    CK(cudaMalloc(&dA, A.size()));
    CK(cudaMalloc(&dB, B.size()));
    CK(cudaMalloc(&dC, C.size()));
    CK(cudaMemcpy(dA, A.data(), A.size(), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dB, B.data(), B.size(), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dC, C.data(), C.size(), cudaMemcpyHostToDevice));
    const float alpha = 1.5f, beta = 0.5f;
    const cublasStatus_t st =
        cublasGemmEx(h, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k, &alpha, dA, ab, lda,
                     dB, ab, ldb, &beta, dC, ct, ldc, compute, CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS) fail_msg("cublasGemmEx: %s", cublasGetStatusString(st));
    /* the GEMM runs on the handle's non-blocking stream: the legacy-stream copy below would not wait for it */
    cudaStream_t s;
    assert_int_equal(cublasGetStream(h, &s), CUBLAS_STATUS_SUCCESS);
    CK(cudaStreamSynchronize(s));
    std::vector<unsigned char> got(C.size());
    CK(cudaMemcpy(got.data(), dC, C.size(), cudaMemcpyDeviceToHost));
    const double u = 1.0 / 16777216.0, g = (k + 2) * u / (1 - (k + 2) * u);
    double worst_tf32_effect = 0;
    for (int j = 0; j < n; ++j)
        for (int i = 0; i < m; ++i) {
            double ref = 0, mag = 0, ref32 = 0;
            for (int p = 0; p < k; ++p) {
                const double a = av[ta ? (size_t)i * lda + p : (size_t)p * lda + i];
                const double b = bv[tb ? (size_t)p * ldb + j : (size_t)j * ldb + p];
                const double aa = tf32_expected ? tf32_round(a) : a, bb = tf32_expected ? tf32_round(b) : b;
                ref += aa * bb;
                ref32 += a * b;
                mag += fabs(aa * bb);
            }
            const double c0 = cv[(size_t)j * ldc + i];
            ref = alpha * ref + beta * c0;
            ref32 = alpha * ref32 + beta * c0;
            mag = alpha * mag + beta * fabs(c0);
            const double v = element(got, (size_t)j * ldc + i, ct);
            const double out_half_ulp = ct == CUDA_R_32F ? 0 : fabs(ref) * (ct == CUDA_R_16BF ? 1.0 / 256 : 1.0 / 2048);
            const double tol = (g + u) * mag * 1.0001 + out_half_ulp + 1e-30;
            if (!(fabs(v - ref) <= tol))
                fail_msg("gemm ta %d tb %d m %d n %d k %d types %d/%d: C[%d,%d] = %.9g, reference %.9g (tol %.3g)", ta,
                         tb, m, n, k, (int)ab, (int)ct, i, j, v, ref, tol);
            worst_tf32_effect = fmax(worst_tf32_effect, fabs(ref - ref32) / mag);
        }
    if (tf32_expected) assert_true(worst_tf32_effect > 1e-5); /* TF32 rounding visibly changed the result */
    /* beta = 0: C is not read, NaN in it must not leak */
    CK(cudaMemset(dC, 0xff, C.size()));
    const float zero = 0.0f;
    assert_int_equal(cublasGemmEx(h, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k, &alpha,
                                  dA, ab, lda, dB, ab, ldb, &zero, dC, ct, ldc, compute, CUBLAS_GEMM_DEFAULT),
                     CUBLAS_STATUS_SUCCESS);
    CK(cudaStreamSynchronize(s));
    CK(cudaMemcpy(got.data(), dC, C.size(), cudaMemcpyDeviceToHost));
    for (int j = 0; j < n; ++j)
        for (int i = 0; i < m; ++i) {
            assert_false(isnan(element(got, (size_t)j * ldc + i, ct)));
        }
    CK(cudaFree(dA));
    CK(cudaFree(dB));
    CK(cudaFree(dC));
}

static void test_cublas(void **state) {
    (void)state;
    reset();
    cublasHandle_t h;
    assert_int_equal(cublasCreate(&h), CUBLAS_STATUS_SUCCESS);
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    assert_int_equal(cublasSetStream(h, s), CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasSetMathMode(h, CUBLAS_PEDANTIC_MATH), CUBLAS_STATUS_SUCCESS);
    for (int ta = 0; ta < 2; ++ta)
        for (int tb = 0; tb < 2; ++tb) {
            gemm_case(h, ta, tb, 5, 7, 33, CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F, 0);
            gemm_case(h, ta, tb, 6, 3, 20, CUDA_R_16BF, CUDA_R_32F, CUBLAS_COMPUTE_32F, 0);
            gemm_case(h, ta, tb, 4, 9, 17, CUDA_R_16F, CUDA_R_32F, CUBLAS_COMPUTE_32F, 0);
            gemm_case(h, ta, tb, 8, 4, 12, CUDA_R_16BF, CUDA_R_16BF, CUBLAS_COMPUTE_32F, 0);
        }
    assert_int_equal(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH), CUBLAS_STATUS_SUCCESS);
    gemm_case(h, 0, 0, 16, 16, 64, CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F_FAST_TF32, 1);
    /* argument checks */
    const float one = 1.0f;
    void *d = nullptr;
    CK(cudaMalloc(&d, 4096));
    assert_int_equal(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 8, 8, 8, &one, d, CUDA_R_32F, 4, d, CUDA_R_32F, 8, &one,
                                  d, CUDA_R_32F, 8, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                     CUBLAS_STATUS_INVALID_VALUE); /* lda < m */
#ifdef KW_CUDA_EMU
    assert_non_null(strstr(kw_cuda_emu_last_error_detail(), "lda=4"));
#endif
    assert_int_equal(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 8, 8, 8, &one, d, CUDA_R_16BF, 8, d, CUDA_R_32F, 8, &one,
                                  d, CUDA_R_32F, 8, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                     CUBLAS_STATUS_NOT_SUPPORTED); /* A and B of different types */
#ifdef KW_CUDA_EMU
    /* a matrix that does not fit its allocation: an illegal address when the GEMM runs */
    assert_int_equal(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 64, 64, 64, &one, d, CUDA_R_32F, 64, d, CUDA_R_32F, 64,
                                  &one, d, CUDA_R_32F, 64, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                     CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cudaStreamSynchronize(s), cudaErrorIllegalAddress);
    assert_non_null(strstr(kw_cuda_emu_last_fault(), "cublasGemmEx"));
    reset();
#else
    CK(cudaFree(d));
    CK(cudaStreamDestroy(s));
    assert_int_equal(cublasDestroy(h), CUBLAS_STATUS_SUCCESS);
#endif
}

// ---------------------------------------------------------------------------------------------------------------
// Schedules, fiber switch, host threads

static void test_random_schedules_agree(void **state) {
    (void)state;
    for (uint64_t seed = 1; seed <= 6; ++seed) {
        reset(seed);
        block_sums(256, 5);
        block_sums(100, 3);
        dbuf<int> out(64);
        KW_CUDA_LAUNCH(k_syncwarp, 1, 64, 0, 0, out.d);
        out.down();
        for (int t = 0; t < 64; ++t)
            assert_int_equal(out.h[t], ((t & ~31) + ((t + 1) & 31)) * 3);
    }
}

static void test_ucontext_switch(void **state) {
    (void)state;
    reset(0, 1);
    block_sums(256, 3);
    shuffle_matrix();
    reset(5, 1);
    block_sums(100, 3);
    reset();
}

static void *host_thread(void *arg) {
    const int id = (int)(intptr_t)arg;
    cudaStream_t s;
    if (cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess) return (void *)1;
    const int n = 5000;
    int *d = nullptr;
    if (cudaMalloc((void **)&d, n * sizeof(int)) != cudaSuccess) return (void *)1;
    intptr_t bad = 0;
    std::vector<int> h(n);
    for (int rep = 0; rep < 20; ++rep) {
        KW_CUDA_LAUNCH(k_fill, 8, 64, 0, s, d, n, id * 1000 + rep);
        if (cudaMemcpyAsync(h.data(), d, n * sizeof(int), cudaMemcpyDeviceToHost, s) != cudaSuccess ||
            cudaStreamSynchronize(s) != cudaSuccess)
            return (void *)1;
        for (int v : h)
            bad += v != id * 1000 + rep;
    }
    (void)cudaFree(d);
    (void)cudaStreamDestroy(s);
    return (void *)bad;
}

static void test_host_threads(void **state) {
    (void)state;
    reset();
    pthread_t th[4];
    for (intptr_t i = 0; i < 4; ++i)
        assert_int_equal(pthread_create(&th[i], nullptr, host_thread, (void *)i), 0);
    for (int i = 0; i < 4; ++i) {
        void *res = nullptr;
        assert_int_equal(pthread_join(th[i], &res), 0);
        assert_null(res);
    }
}

int main(void) {
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
        printf("skipped: no CUDA device\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_indexing),
        cmocka_unit_test(test_barrier_block_sum),
        cmocka_unit_test(test_shared_memory),
        cmocka_unit_test(test_parameters_by_value),
        cmocka_unit_test(test_shuffles),
        cmocka_unit_test(test_votes),
        cmocka_unit_test(test_syncwarp),
        cmocka_unit_test(test_atomics),
#ifdef KW_CUDA_EMU
        cmocka_unit_test(test_race_exposed_by_random_schedule),
        cmocka_unit_test(test_block_reduce_twice),
        cmocka_unit_test(test_faults),
        cmocka_unit_test(test_guard_bytes),
        cmocka_unit_test(test_host_pointer_argument),
#endif
        cmocka_unit_test(test_launch_configuration),
        cmocka_unit_test(test_memory_api),
        cmocka_unit_test(test_pools),
        cmocka_unit_test(test_streams_and_events),
        cmocka_unit_test(test_graphs),
        cmocka_unit_test(test_graph_replay_values),
        cmocka_unit_test(test_cublas),
        cmocka_unit_test(test_random_schedules_agree),
        cmocka_unit_test(test_ucontext_switch),
        cmocka_unit_test(test_host_threads),
    };
    return cmocka_run_group_tests(tests, nullptr, nullptr);
}
