/* kw_cuda_emu_runtime.h: the CUDA runtime API as the emulator provides it (host side): devices, errors, device
 * memory as host memory, pinned host memory, stream-ordered pools, streams and events as ordered host queues, host
 * callbacks and stream capture into graphs. Part of the CUDA emulation layer (kernels/cuda/emu/kw_cuda_emu.h).
 *
 * The names, argument lists and error codes are those of the CUDA runtime (cuda_runtime_api.h), for the subset this
 * project calls; numeric values of enums follow CUDA 12/13 so that logs read the same. Everything lives in namespace
 * kwemu with C++ linkage and is brought into the global namespace by using-declarations: a binary may link the real
 * libcudart (the real CUDA backend) beside the emulator without a symbol clash.
 *
 * Semantics that differ from a GPU on purpose, to make host-side misuse visible:
 *  - queued work runs only when the host waits for it (cudaStreamSynchronize, cudaEventSynchronize,
 *    cudaDeviceSynchronize, a synchronous copy, cudaStreamQuery/cudaEventQuery), so results read before the wait are
 *    stale and a host buffer freed before the wait is read after free (ASan reports it);
 *  - copies are checked against the allocation registry: a device range must lie inside one live allocation, the
 *    host side of a copy must not be device memory, and a pointer kernel argument must be device-accessible;
 *  - fresh device memory is filled with 0xff bytes (NaN as f32) and every allocation has guard bytes checked after
 *    each kernel (a write past either end is a sticky cudaErrorIllegalAddress naming the kernel);
 *  - a fault in a kernel (deadlock, divergent barrier, mismatched warp collective, guard bytes) is sticky, as a GPU
 *    fault is: every later call returns it until cudaDeviceReset.
 * Not emulated: unified/managed memory, peer access, texture/surface objects, IPC, graph memory nodes.
 */
#ifndef KW_CUDA_EMU_RUNTIME_H
#define KW_CUDA_EMU_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

namespace kwemu {

/* The emulator's handles behind the runtime's opaque types (kw_cuda_emu_internal.h). */
struct emu_stream;
struct emu_event;
struct emu_pool;
struct emu_graph;
struct emu_graph_exec;

/* The CUDA names, exported to the global namespace below; the emulator's own names stay in kwemu. */
inline namespace api {

// ---------------------------------------------------------------------------------------------------------------
// Vector and index types

struct uint3 {
    unsigned int x, y, z;
};

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

struct alignas(8) float2 {
    float x, y;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) int2 {
    int x, y;
};
struct alignas(16) int4 {
    int x, y, z, w;
};
struct alignas(8) uint2 {
    unsigned int x, y;
};
struct alignas(16) uint4 {
    unsigned int x, y, z, w;
};
inline float2 make_float2(float x, float y) {
    return float2{x, y};
}
inline float4 make_float4(float x, float y, float z, float w) {
    return float4{x, y, z, w};
}
inline int2 make_int2(int x, int y) {
    return int2{x, y};
}
inline int4 make_int4(int x, int y, int z, int w) {
    return int4{x, y, z, w};
}
inline uint2 make_uint2(unsigned int x, unsigned int y) {
    return uint2{x, y};
}
inline uint4 make_uint4(unsigned int x, unsigned int y, unsigned int z, unsigned int w) {
    return uint4{x, y, z, w};
}

// ---------------------------------------------------------------------------------------------------------------
// Errors (values of driver_types.h)

enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInitializationError = 3,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevicePointer = 17,
    cudaErrorInvalidMemcpyDirection = 21,
    cudaErrorInsufficientDriver = 35,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorNotReady = 600,
    cudaErrorIllegalAddress = 700,
    cudaErrorLaunchOutOfResources = 701,
    cudaErrorLaunchTimeout = 702,
    cudaErrorHostMemoryAlreadyRegistered = 712,
    cudaErrorHostMemoryNotRegistered = 713,
    cudaErrorIllegalInstruction = 715,
    cudaErrorLaunchFailure = 719,
    cudaErrorNotSupported = 801,
    cudaErrorStreamCaptureUnsupported = 900,
    cudaErrorStreamCaptureInvalidated = 901,
    cudaErrorStreamCaptureUnmatched = 903,
    cudaErrorStreamCaptureImplicit = 906,
    cudaErrorCapturedEvent = 907,
    cudaErrorUnknown = 999,
};
typedef enum cudaError cudaError_t;

/* The name of the code ("cudaErrorInvalidValue"). */
const char *cudaGetErrorName(cudaError_t err);
/* The runtime's description; for the sticky fault of a kernel, the description followed by the emulator's diagnosis
 * (kernel, block, thread, what went wrong), so that KW_CUDA_TRY's detail says what happened. */
const char *cudaGetErrorString(cudaError_t err);
/* The calling thread's last error (a failed launch configuration, a failed call), then cleared; a sticky fault is
 * returned and never cleared. */
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);

// ---------------------------------------------------------------------------------------------------------------
// Devices

enum cudaDeviceAttr {
    cudaDevAttrMaxThreadsPerBlock = 1,
    cudaDevAttrMaxSharedMemoryPerBlock = 8,
    cudaDevAttrWarpSize = 10,
    cudaDevAttrClockRate = 13,
    cudaDevAttrMultiProcessorCount = 16,
    cudaDevAttrMemoryClockRate = 36,
    cudaDevAttrGlobalMemoryBusWidth = 37,
    cudaDevAttrL2CacheSize = 38,
    cudaDevAttrComputeCapabilityMajor = 75,
    cudaDevAttrComputeCapabilityMinor = 76,
    cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
    cudaDevAttrMemoryPoolsSupported = 115,
};

/* The fields of cudaDeviceProp this project reads, with the real names. */
struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    size_t sharedMemPerBlock;
    int regsPerBlock;
    int warpSize;
    int maxThreadsPerBlock;
    int maxThreadsDim[3];
    int maxGridSize[3];
    int multiProcessorCount;
    int major;
    int minor;
    int l2CacheSize;
    int memoryBusWidth;
    size_t sharedMemPerBlockOptin;
};

cudaError_t cudaGetDeviceCount(int *count);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int *device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device);
cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device);
/* Waits for every stream of the current device. */
cudaError_t cudaDeviceSynchronize(void);
/* Frees everything of the current device (memory, streams, events, pools, graphs) and clears the sticky fault. */
cudaError_t cudaDeviceReset(void);
/* Free and total bytes of the emulated device memory (KW_CUDA_EMU_MEMORY_MB). */
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);

// ---------------------------------------------------------------------------------------------------------------
// Streams and events

typedef emu_stream *cudaStream_t;
typedef emu_event *cudaEvent_t;
typedef emu_pool *cudaMemPool_t;
typedef emu_graph *cudaGraph_t;
typedef emu_graph_exec *cudaGraphExec_t;
typedef void (*cudaHostFn_t)(void *user_data);

/* The legacy default stream is 0 (cudaStreamLegacy): its work waits for earlier work of every blocking stream of the
 * device and blocking streams wait for its earlier work. cudaStreamNonBlocking streams are independent of it. */
#define cudaStreamLegacy       ((::kwemu::cudaStream_t)0x1)
#define cudaStreamPerThread    ((::kwemu::cudaStream_t)0x2)
#define cudaStreamDefault      0x0u
#define cudaStreamNonBlocking  0x1u
#define cudaEventDefault       0x0u
#define cudaEventBlockingSync  0x1u
#define cudaEventDisableTiming 0x2u
#define cudaEventWaitDefault   0x0u

cudaError_t cudaStreamCreate(cudaStream_t *stream);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned int flags);
/* Runs the stream's pending work, then releases it. */
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
/* Runs whatever the stream has queued (work may complete at any time), then answers cudaSuccess. */
cudaError_t cudaStreamQuery(cudaStream_t stream);
/* Work queued on stream after this waits for the event's most recent record (at the time of this call). */
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags = 0);
cudaError_t cudaLaunchHostFunc(cudaStream_t stream, cudaHostFn_t fn, void *user_data);

cudaError_t cudaEventCreate(cudaEvent_t *event);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned int flags);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = 0);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventQuery(cudaEvent_t event);
/* Host wall time between the executions of the two records (the emulator's time, not a GPU's). */
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end);

// ---------------------------------------------------------------------------------------------------------------
// Memory

enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};

#define cudaHostAllocDefault       0x0u
#define cudaHostAllocPortable      0x1u
#define cudaHostAllocMapped        0x2u
#define cudaHostAllocWriteCombined 0x4u
#define cudaHostRegisterDefault    0x0u
#define cudaHostRegisterPortable   0x1u
#define cudaHostRegisterMapped     0x2u

cudaError_t cudaMalloc(void **ptr, size_t size);
/* Waits for the device (as the runtime's cudaFree does), then frees. */
cudaError_t cudaFree(void *ptr);
cudaError_t cudaMallocHost(void **ptr, size_t size);
cudaError_t cudaHostAlloc(void **ptr, size_t size, unsigned int flags);
cudaError_t cudaFreeHost(void *ptr);
cudaError_t cudaHostRegister(void *ptr, size_t size, unsigned int flags);
cudaError_t cudaHostUnregister(void *ptr);
cudaError_t cudaHostGetDevicePointer(void **device_ptr, void *host_ptr, unsigned int flags);

cudaError_t cudaMemcpy(void *dst, const void *src, size_t size, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t size, cudaMemcpyKind kind, cudaStream_t stream = 0);
cudaError_t cudaMemset(void *dst, int value, size_t size);
cudaError_t cudaMemsetAsync(void *dst, int value, size_t size, cudaStream_t stream = 0);

// Stream-ordered allocation

enum cudaMemAllocationType { cudaMemAllocationTypeInvalid = 0, cudaMemAllocationTypePinned = 1 };
enum cudaMemAllocationHandleType { cudaMemHandleTypeNone = 0 };
enum cudaMemLocationType { cudaMemLocationTypeInvalid = 0, cudaMemLocationTypeDevice = 1 };
struct cudaMemLocation {
    cudaMemLocationType type;
    int id;
};
struct cudaMemPoolProps {
    cudaMemAllocationType allocType;
    cudaMemAllocationHandleType handleTypes;
    cudaMemLocation location;
    void *win32SecurityAttributes;
    size_t maxSize;
    unsigned short usage;
    unsigned char reserved[54];
};
enum cudaMemPoolAttr {
    cudaMemPoolReuseFollowEventDependencies = 1,
    cudaMemPoolReuseAllowOpportunistic = 2,
    cudaMemPoolReuseAllowInternalDependencies = 3,
    cudaMemPoolAttrReleaseThreshold = 4,
    cudaMemPoolAttrReservedMemCurrent = 5,
    cudaMemPoolAttrReservedMemHigh = 6,
    cudaMemPoolAttrUsedMemCurrent = 7,
    cudaMemPoolAttrUsedMemHigh = 8,
};

cudaError_t cudaMemPoolCreate(cudaMemPool_t *pool, const cudaMemPoolProps *props);
/* Returns at once; a pool with live allocations is released when the last one is freed (as the runtime does). */
cudaError_t cudaMemPoolDestroy(cudaMemPool_t pool);
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void *value);
cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void *value);
cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t *pool, int device);
/* The allocation exists at once (usable by work queued after this call on any stream); the free is queued. */
cudaError_t cudaMallocAsync(void **ptr, size_t size, cudaStream_t stream);
cudaError_t cudaMallocFromPoolAsync(void **ptr, size_t size, cudaMemPool_t pool, cudaStream_t stream);
cudaError_t cudaFreeAsync(void *ptr, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------------------------
// Stream capture and graphs: captured work is recorded (kernels with their argument values) instead of run, and a
// graph launch replays it in order on the launch stream.

enum cudaStreamCaptureMode {
    cudaStreamCaptureModeGlobal = 0,
    cudaStreamCaptureModeThreadLocal = 1,
    cudaStreamCaptureModeRelaxed = 2,
};
enum cudaStreamCaptureStatus {
    cudaStreamCaptureStatusNone = 0,
    cudaStreamCaptureStatusActive = 1,
    cudaStreamCaptureStatusInvalidated = 2,
};

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t *graph);
cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus *status);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long flags = 0);
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);
cudaError_t cudaGraphDestroy(cudaGraph_t graph);

} // namespace api
} // namespace kwemu

using namespace kwemu::api;

#endif /* KW_CUDA_EMU_RUNTIME_H */
