/* kw_cuda_emu_runtime.cpp: the CUDA runtime API of the emulator (kw_cuda_emu_runtime.h) and its C interface
 * (kw_cuda_emu_api.h): devices, the allocation registry, guard bytes, work queues, streams, events, pools, capture,
 * the per-thread last error and the sticky fault.
 *
 * Work queues: every stream is a FIFO of operations with global, increasing ids; an operation may depend on (stream,
 * id) pairs of other streams (the legacy stream's implicit synchronization, cudaStreamWaitEvent). Nothing runs when
 * it is queued: drain(stream, id) runs the stream's operations up to id, draining their dependencies first (which
 * always have smaller ids, so this terminates). The host waits are the only callers of drain.
 *
 * Memory: device allocations are aligned host blocks of GUARD + round_up(size, 256) + GUARD bytes. The user part is
 * filled with 0xff (NaN as f32), the rest with GUARD_BYTE and checked after every kernel; under AddressSanitizer the
 * guards are poisoned instead, so ASan reports the faulting access itself.
 */
#include "kernels/cuda/emu/kw_cuda_emu_api.h"
#include "kernels/cuda/emu/kw_cuda_emu_fiber.h"
#include "kernels/cuda/emu/kw_cuda_emu_internal.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <map>
#include <set>

extern "C" {
#include "common/kw_status.h"
}

#ifdef KWEMU_ASAN
#include <sanitizer/asan_interface.h>
#endif

namespace kwemu {

struct emu_op {
    uint64_t id;
    std::string name;
    std::vector<std::pair<emu_stream *, uint64_t>> deps;
    std::function<void()> run;
};

struct emu_stream {
    int device;
    unsigned int flags;
    int legacy;
    int valid;
    std::deque<std::unique_ptr<emu_op>> q;
    uint64_t last_enqueued = 0; /* id of the newest operation queued */
    uint64_t done = 0;          /* id of the newest operation run */
    emu_graph *capture = nullptr;
    int capture_invalid = 0;
    cudaStreamCaptureMode capture_mode = cudaStreamCaptureModeGlobal;
};

struct emu_event {
    int device;
    unsigned int flags;
    int valid;
    emu_stream *stream = nullptr;
    uint64_t op = 0;      /* the queued record operation */
    uint64_t gen = 0;     /* records so far; a record operation only writes the time if it is still the latest */
    double time_ms = 0.0; /* host time when the latest record ran */
    int time_valid = 0;
};

struct emu_pool {
    int device;
    int valid;
    int is_default;
    int destroyed;
    uint64_t threshold = 0;
    size_t used = 0, used_high = 0, live = 0;
};

struct emu_graph {
    int device;
    int valid;
    std::vector<std::pair<std::string, std::function<void()>>> ops;
};

struct emu_graph_exec {
    int device;
    int valid;
    std::vector<std::pair<std::string, std::function<void()>>> ops;
};

namespace {

const size_t GUARD = 256;
const unsigned char GUARD_BYTE = 0xcb;

enum alloc_kind { ALLOC_DEVICE = 0, ALLOC_PINNED = 1, ALLOC_REGISTERED = 2 };

struct alloc_rec {
    char *raw;
    size_t raw_size;
    char *user;
    size_t size;
    alloc_kind kind;
    int device;
    emu_pool *pool;
    int free_queued;
};

struct device_state {
    size_t used = 0;
    cudaError_t sticky = cudaSuccess;
    std::string sticky_msg;
    emu_stream *legacy = nullptr;
    emu_pool *default_pool = nullptr;
};

/* Everything, guarded by emu_lock(). Handles are never deleted before a reset (destroyed ones stay as invalid
 * records), so queued operations and dependencies can refer to them safely. */
struct emu_state {
    emu_config cfg;
    int verbose = 0;
    uint64_t rng = 0;
    std::vector<device_state> devs;
    std::map<uintptr_t, alloc_rec> allocs; /* by user address */
    std::vector<std::unique_ptr<emu_stream>> streams;
    std::vector<std::unique_ptr<emu_event>> events;
    std::vector<std::unique_ptr<emu_pool>> pools;
    std::vector<std::unique_ptr<emu_graph>> graphs;
    std::vector<std::unique_ptr<emu_graph_exec>> execs;
    uint64_t next_op = 1;
    std::deque<std::string> fault_texts; /* stable storage for cudaGetErrorString / kw_cuda_emu_last_fault */
    const char *last_fault = nullptr;
    emu_counters counters = {0, 0, 0, 0, 0};
};

thread_local int tl_device = 0;
thread_local cudaError_t tl_last = cudaSuccess;
thread_local std::string tl_detail;

emu_state *g_state = nullptr;

uint64_t parse_env(const char *name, uint64_t fallback, uint64_t lo, uint64_t hi) {
    const char *s = getenv(name);
    if (s == nullptr || *s == '\0') return fallback;
    char *end = nullptr;
    const unsigned long long v = strtoull(s, &end, 10);
    if (*end != '\0' || v < lo || v > hi) {
        fprintf(stderr, "kvwire CUDA emulator: ignoring %s=%s (expected %llu..%llu)\n", name, s, (unsigned long long)lo,
                (unsigned long long)hi);
        return fallback;
    }
    return v;
}

#ifdef KWEMU_ASAN
const uint32_t DEFAULT_STACK_KIB = 256;
#else
const uint32_t DEFAULT_STACK_KIB = 64;
#endif

void apply_config(emu_state *st, const kw_cuda_emu_config &c) {
    st->cfg.seed = c.seed;
    st->cfg.devices = c.devices;
    st->cfg.memory_bytes = c.memory_bytes;
    st->cfg.use_ucontext = c.use_ucontext;
    st->cfg.stack_bytes = (size_t)c.stack_kib * 1024;
    st->rng = c.seed;
    st->devs.assign((size_t)c.devices, device_state());
}

emu_stream *new_stream(emu_state *st, int device, unsigned int flags, int legacy) {
    st->streams.push_back(std::unique_ptr<emu_stream>(new emu_stream()));
    emu_stream *s = st->streams.back().get();
    s->device = device;
    s->flags = flags;
    s->legacy = legacy;
    s->valid = 1;
    return s;
}

emu_pool *new_pool(emu_state *st, int device, int is_default) {
    st->pools.push_back(std::unique_ptr<emu_pool>(new emu_pool()));
    emu_pool *p = st->pools.back().get();
    p->device = device;
    p->valid = 1;
    p->is_default = is_default;
    p->destroyed = 0;
    return p;
}

/* The legacy stream and default pool of a device, made on first use. */
device_state &dev_state(emu_state *st, int device) {
    device_state &d = st->devs[(size_t)device];
    if (d.legacy == nullptr) d.legacy = new_stream(st, device, 0, 1);
    if (d.default_pool == nullptr) d.default_pool = new_pool(st, device, 1);
    return d;
}

emu_state *state(void) {
    if (g_state == nullptr) {
        g_state = new emu_state();
        kw_cuda_emu_config c;
        kw_cuda_emu_config_from_env(&c);
        apply_config(g_state, c);
        g_state->verbose = (int)parse_env("KW_CUDA_EMU_VERBOSE", 0, 0, 1);
    }
    return g_state;
}

double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* Sets the calling thread's last error (and the reason, printed when verbose). */
cudaError_t fail(cudaError_t err, const std::string &why) {
    tl_last = err;
    note_failure(cudaGetErrorName(err), why);
    return err;
}

cudaError_t sticky_of(emu_state *st, int device) {
    if (device < 0 || device >= (int)st->devs.size()) return cudaSuccess;
    return st->devs[(size_t)device].sticky;
}

/* Checks there is a device to talk to; returns the error to report otherwise. */
cudaError_t check_device(emu_state *st, int device) {
    if (st->devs.empty()) return fail(cudaErrorNoDevice, "no emulated device (KW_CUDA_EMU_DEVICES=0)");
    if (device < 0 || device >= (int)st->devs.size())
        return fail(cudaErrorInvalidDevice, strf("device %d of %zu", device, st->devs.size()));
    const cudaError_t s = sticky_of(st, device);
    if (s != cudaSuccess)
        return fail(s, "a kernel fault made the device unusable: " + st->devs[(size_t)device].sticky_msg);
    return cudaSuccess;
}

emu_stream *resolve(emu_state *st, cudaStream_t h) {
    if (h == nullptr || h == cudaStreamLegacy || h == cudaStreamPerThread) {
        if (tl_device < 0 || tl_device >= (int)st->devs.size()) return nullptr;
        return dev_state(st, tl_device).legacy;
    }
    for (const auto &s : st->streams)
        if (s.get() == h) return s->valid ? s.get() : nullptr;
    return nullptr;
}

emu_event *find_event(emu_state *st, cudaEvent_t h) {
    for (const auto &e : st->events)
        if (e.get() == h) return e->valid ? e.get() : nullptr;
    return nullptr;
}

/* The allocation containing p (one past the end counts when include_end), or NULL. */
alloc_rec *find_alloc(emu_state *st, const void *p, int include_end) {
    if (p == nullptr || st->allocs.empty()) return nullptr;
    const uintptr_t a = (uintptr_t)p;
    auto it = st->allocs.upper_bound(a);
    if (it == st->allocs.begin()) return nullptr;
    --it;
    alloc_rec &r = it->second;
    const uintptr_t lo = (uintptr_t)r.user, hi = lo + r.size;
    if (a < hi || (include_end && a == hi)) return &r;
    return nullptr;
}

void discard_queues(emu_state *st, int device) {
    for (const auto &s : st->streams) {
        if (s->device != device) continue;
        s->q.clear();
        s->done = s->last_enqueued;
    }
}

void drain(emu_state *st, emu_stream *s, uint64_t upto) {
    while (!s->q.empty() && s->q.front()->id <= upto) {
        if (st->devs[(size_t)s->device].sticky != cudaSuccess) {
            discard_queues(st, s->device);
            return;
        }
        std::unique_ptr<emu_op> op = std::move(s->q.front());
        s->q.pop_front();
        for (const auto &dep : op->deps)
            drain(st, dep.first, dep.second);
        if (st->devs[(size_t)s->device].sticky == cudaSuccess) op->run();
        s->done = op->id;
    }
}

void drain_device(emu_state *st, int device) {
    /* a stream may gain operations while another drains (host callbacks): loop until all are empty */
    for (int again = 1; again;) {
        again = 0;
        for (size_t i = 0; i < st->streams.size(); ++i) {
            emu_stream *s = st->streams[i].get();
            if (s->device != device || s->q.empty()) continue;
            drain(st, s, UINT64_MAX);
            again = 1;
        }
    }
}

/* Any capture in progress on the device (global or thread-local mode) is invalidated by a synchronous call. */
cudaError_t capture_conflict(emu_state *st, int device, const char *call) {
    cudaError_t err = cudaSuccess;
    for (const auto &s : st->streams) {
        if (s->device != device || s->capture == nullptr || s->capture_mode == cudaStreamCaptureModeRelaxed) continue;
        s->capture_invalid = 1;
        err = fail(cudaErrorStreamCaptureUnsupported, strf("%s while a stream capture is in progress", call));
    }
    return err;
}

void release_alloc(emu_state *st, std::map<uintptr_t, alloc_rec>::iterator it) {
    alloc_rec &r = it->second;
    if (r.kind == ALLOC_DEVICE) {
        device_state &d = st->devs[(size_t)r.device];
        d.used -= (r.size + 255) / 256 * 256;
        if (r.pool != nullptr) {
            r.pool->used -= r.size;
            --r.pool->live;
        }
    }
    if (r.raw != nullptr) {
#ifdef KWEMU_ASAN
        __asan_unpoison_memory_region(r.raw, r.raw_size);
#endif
        free(r.raw);
    }
    st->allocs.erase(it);
}

cudaError_t alloc_block(emu_state *st, void **ptr, size_t size, alloc_kind kind, int device, emu_pool *pool) {
    *ptr = nullptr;
    if (size == 0) return cudaSuccess;
    const size_t cap = st->cfg.memory_bytes;
    if (kind == ALLOC_DEVICE) {
        device_state &d = dev_state(st, device);
        if (size > cap || (size + 255) / 256 * 256 > cap - d.used)
            return fail(cudaErrorMemoryAllocation,
                        strf("%zu bytes requested, %zu of %zu free on device %d", size, cap - d.used, cap, device));
    } else if (size > ((size_t)1 << 40)) {
        return fail(cudaErrorMemoryAllocation, strf("%zu bytes of pinned host memory", size));
    }
    const size_t body = (size + 255) / 256 * 256;
    const size_t raw_size = GUARD + body + GUARD;
    char *raw = (char *)aligned_alloc(256, raw_size);
    if (raw == nullptr) return fail(cudaErrorMemoryAllocation, strf("host allocation of %zu bytes failed", raw_size));
    char *user = raw + GUARD;
    memset(raw, GUARD_BYTE, GUARD);
    memset(user, 0xff, size);
    memset(user + size, GUARD_BYTE, raw_size - GUARD - size);
#ifdef KWEMU_ASAN
    __asan_poison_memory_region(raw, GUARD);
    __asan_poison_memory_region(user + size, raw_size - GUARD - size);
#endif
    alloc_rec r = {raw, raw_size, user, size, kind, device, pool, 0};
    st->allocs[(uintptr_t)user] = r;
    if (kind == ALLOC_DEVICE) {
        st->devs[(size_t)device].used += body;
        if (pool != nullptr) {
            pool->used += size;
            pool->used_high = pool->used > pool->used_high ? pool->used : pool->used_high;
            ++pool->live;
        }
    }
    *ptr = user;
    return cudaSuccess;
}

cudaError_t enqueue_deps(emu_state *st, cudaStream_t h, const char *name, std::function<void()> run,
                         const std::vector<std::pair<emu_stream *, uint64_t>> &extra, emu_stream **out_stream) {
    emu_stream *s = resolve(st, h);
    if (s == nullptr) return fail(cudaErrorInvalidResourceHandle, strf("%s: invalid stream %p", name, (void *)h));
    const cudaError_t err = check_device(st, s->device);
    if (err != cudaSuccess) return err;
    if (out_stream) *out_stream = s;
    if (s->capture != nullptr) {
        if (s->capture_invalid)
            return fail(cudaErrorStreamCaptureInvalidated, strf("%s: the capture is invalid", name));
        if (!extra.empty()) {
            s->capture_invalid = 1;
            return fail(cudaErrorStreamCaptureUnsupported, strf("%s: cross-stream dependencies in a capture", name));
        }
        s->capture->ops.push_back(std::make_pair(std::string(name), std::move(run)));
        return cudaSuccess;
    }
    if (s->legacy) {
        for (const auto &o : st->streams)
            if (o->valid && o->capture != nullptr && o->device == s->device &&
                o->capture_mode != cudaStreamCaptureModeRelaxed) {
                o->capture_invalid = 1;
                return fail(cudaErrorStreamCaptureImplicit,
                            strf("%s on the legacy stream while a capture is in progress", name));
            }
    }
    std::unique_ptr<emu_op> op(new emu_op());
    op->id = st->next_op++;
    op->name = name;
    op->run = std::move(run);
    op->deps = extra;
    if (s->legacy) {
        for (const auto &o : st->streams)
            if (o.get() != s && o->device == s->device && !o->legacy && (o->flags & cudaStreamNonBlocking) == 0 &&
                o->last_enqueued > o->done)
                op->deps.push_back(std::make_pair(o.get(), o->last_enqueued));
    } else if ((s->flags & cudaStreamNonBlocking) == 0) {
        emu_stream *l = dev_state(st, s->device).legacy;
        if (l->last_enqueued > l->done) op->deps.push_back(std::make_pair(l, l->last_enqueued));
    }
    s->last_enqueued = op->id;
    s->q.push_back(std::move(op));
    return cudaSuccess;
}

cudaError_t finish_sync(emu_state *st, int device) {
    const cudaError_t s = sticky_of(st, device);
    return s != cudaSuccess ? fail(s, st->devs[(size_t)device].sticky_msg) : cudaSuccess;
}

/* Frees everything of one device (or of all, device < 0), keeping the configuration. */
void reset_devices(emu_state *st, int device) {
    for (auto it = st->allocs.begin(); it != st->allocs.end();) {
        auto next = std::next(it);
        if (device < 0 || it->second.device == device) {
            if (it->second.kind == ALLOC_REGISTERED)
                st->allocs.erase(it);
            else
                release_alloc(st, it);
        }
        it = next;
    }
    auto keep = [device](int d) { return device >= 0 && d != device; };
    std::vector<std::unique_ptr<emu_stream>> streams;
    for (auto &s : st->streams)
        if (keep(s->device)) streams.push_back(std::move(s));
    st->streams.swap(streams);
    std::vector<std::unique_ptr<emu_event>> events;
    for (auto &e : st->events)
        if (keep(e->device)) events.push_back(std::move(e));
    st->events.swap(events);
    std::vector<std::unique_ptr<emu_pool>> pools;
    for (auto &p : st->pools)
        if (keep(p->device)) pools.push_back(std::move(p));
    st->pools.swap(pools);
    std::vector<std::unique_ptr<emu_graph>> graphs;
    for (auto &g : st->graphs)
        if (keep(g->device)) graphs.push_back(std::move(g));
    st->graphs.swap(graphs);
    std::vector<std::unique_ptr<emu_graph_exec>> execs;
    for (auto &x : st->execs)
        if (keep(x->device)) execs.push_back(std::move(x));
    st->execs.swap(execs);
    for (size_t d = 0; d < st->devs.size(); ++d) {
        if (device >= 0 && (int)d != device) continue;
        st->devs[d] = device_state();
    }
    if (device < 0) {
        st->fault_texts.clear();
        st->last_fault = nullptr;
    }
}

const char *error_text(cudaError_t err) {
    switch (err) {
    case cudaSuccess:
        return "no error";
    case cudaErrorInvalidValue:
        return "invalid argument";
    case cudaErrorMemoryAllocation:
        return "out of memory";
    case cudaErrorInitializationError:
        return "initialization error";
    case cudaErrorInvalidConfiguration:
        return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer:
        return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection:
        return "invalid copy direction for memcpy";
    case cudaErrorInsufficientDriver:
        return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorNoDevice:
        return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice:
        return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle:
        return "invalid resource handle";
    case cudaErrorNotReady:
        return "device not ready";
    case cudaErrorIllegalAddress:
        return "an illegal memory access was encountered";
    case cudaErrorLaunchOutOfResources:
        return "too many resources requested for launch";
    case cudaErrorLaunchTimeout:
        return "the launch timed out and was terminated";
    case cudaErrorHostMemoryAlreadyRegistered:
        return "part or all of the requested memory range is already mapped";
    case cudaErrorHostMemoryNotRegistered:
        return "pointer does not correspond to a registered memory region";
    case cudaErrorIllegalInstruction:
        return "an illegal instruction was encountered";
    case cudaErrorLaunchFailure:
        return "unspecified launch failure";
    case cudaErrorNotSupported:
        return "operation not supported";
    case cudaErrorStreamCaptureUnsupported:
        return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated:
        return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureUnmatched:
        return "capture was not initiated in this stream";
    case cudaErrorStreamCaptureImplicit:
        return "operation would make the legacy stream depend on a capturing blocking stream";
    case cudaErrorCapturedEvent:
        return "operation not permitted on an event last recorded in a capturing stream";
    case cudaErrorUnknown:
        return "unknown error";
    }
    return "unrecognized error code";
}

} // namespace

// ---------------------------------------------------------------------------------------------------------------
// Internal interface (kw_cuda_emu_internal.h)

std::recursive_mutex &emu_lock(void) {
    static std::recursive_mutex m;
    return m;
}

const emu_config &config(void) {
    return state()->cfg;
}

uint64_t rng_next(void) {
    emu_state *st = state();
    uint64_t z = (st->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

std::string strf(const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    const int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < (int)sizeof buf) return std::string(buf, n < 0 ? 0 : (size_t)n);
    std::string s((size_t)n, '\0');
    va_start(ap, fmt);
    vsnprintf(&s[0], (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

emu_counters &counters(void) {
    return state()->counters;
}

void note_failure(const char *api, const std::string &why) {
    tl_detail = why;
    if (g_state != nullptr && g_state->verbose) fprintf(stderr, "kvwire CUDA emulator: %s: %s\n", api, why.c_str());
}

int current_device(void) {
    return tl_device;
}

void set_fault(int device, cudaError_t code, const std::string &msg) {
    emu_state *st = state();
    if (device < 0 || device >= (int)st->devs.size()) device = 0;
    device_state &d = st->devs[(size_t)device];
    ++st->counters.faults;
    fprintf(stderr, "kvwire CUDA emulator: fault on device %d: %s: %s\n", device, cudaGetErrorName(code), msg.c_str());
    if (d.sticky != cudaSuccess) return; /* the first fault is the one that counts */
    d.sticky = code;
    d.sticky_msg = msg;
    st->fault_texts.push_back(strf("%s (kvwire CUDA emulator: %s)", error_text(code), msg.c_str()));
    st->last_fault = st->fault_texts.back().c_str();
    discard_queues(st, device);
}

cudaError_t enqueue(cudaStream_t stream, const char *name, std::function<void()> run) {
    return enqueue_deps(state(), stream, name, std::move(run), {}, nullptr);
}

int device_range_ok(const void *p, size_t size, int device) {
    const alloc_rec *r = find_alloc(state(), p, size == 0);
    if (r == nullptr || r->kind != ALLOC_DEVICE) return 0;
    if (device >= 0 && r->device != device) return 0;
    return (uintptr_t)p + size <= (uintptr_t)r->user + r->size;
}

int device_accessible(const void *p) {
    return find_alloc(state(), p, 1) != nullptr;
}

std::string describe_pointer(const void *p) {
    const alloc_rec *r = find_alloc(state(), p, 1);
    if (r == nullptr) return strf("%p, which is not device memory (host memory or freed)", p);
    static const char *const kinds[] = {"device allocation", "pinned host allocation", "registered host range"};
    return strf("%p: %s %p of %zu bytes (device %d), offset %zu", p, kinds[r->kind], (void *)r->user, r->size,
                r->device, (size_t)((uintptr_t)p - (uintptr_t)r->user));
}

void check_guards(int device, const char *kernel_name) {
#ifdef KWEMU_ASAN
    (void)device, (void)kernel_name; /* the guards are poisoned: ASan reports the access itself */
#else
    emu_state *st = state();
    for (const auto &kv : st->allocs) {
        const alloc_rec &r = kv.second;
        if (r.raw == nullptr) continue;
        for (size_t i = 0; i < GUARD; ++i) {
            const size_t back = GUARD - 1 - i; /* scan from the start of the block outwards */
            if ((unsigned char)r.raw[back] != GUARD_BYTE) {
                set_fault(device, cudaErrorIllegalAddress,
                          strf("kernel %s wrote %zu byte(s) before allocation %p of %zu bytes (guard damaged)",
                               kernel_name, GUARD - back, (void *)r.user, r.size));
                return;
            }
        }
        const char *end = r.user + r.size, *stop = r.raw + r.raw_size;
        for (const char *q = end; q < stop; ++q)
            if ((unsigned char)*q != GUARD_BYTE) {
                set_fault(device, cudaErrorIllegalAddress,
                          strf("kernel %s wrote past the end of allocation %p of %zu bytes (guard damaged at "
                               "byte %zu past the end)",
                               kernel_name, (void *)r.user, r.size, (size_t)(q - end)));
                return;
            }
    }
#endif
}

void launch_kernel(const char *name, dim3 grid, dim3 block, size_t shmem, cudaStream_t stream,
                   const void *const *ptr_args, const int *ptr_index, int n_ptr, std::function<void()> body) {
    std::lock_guard<std::recursive_mutex> lock(emu_lock());
    emu_state *st = state();
    emu_stream *s = resolve(st, stream);
    if (s == nullptr) {
        fail(cudaErrorInvalidResourceHandle, strf("launch of %s on invalid stream %p", name, (void *)stream));
        return;
    }
    if (check_device(st, s->device) != cudaSuccess) return;
    const uint64_t threads = (uint64_t)block.x * block.y * block.z;
    if (threads == 0 || threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64 || grid.x == 0 ||
        grid.y == 0 || grid.z == 0 || grid.x > (unsigned int)INT_MAX || grid.y > 65535 || grid.z > 65535) {
        fail(cudaErrorInvalidConfiguration, strf("launch of %s with grid (%u,%u,%u) and block (%u,%u,%u)", name, grid.x,
                                                 grid.y, grid.z, block.x, block.y, block.z));
        return;
    }
    if (shmem > 49152) {
        fail(cudaErrorInvalidValue,
             strf("launch of %s with %zu bytes of dynamic shared memory (> 48 KiB)", name, shmem));
        return;
    }
    std::shared_ptr<kernel_launch> k(new kernel_launch());
    k->name = name;
    k->grid = grid;
    k->block = block;
    k->shmem = shmem;
    k->device = s->device;
    for (int i = 0; i < n_ptr; ++i) {
        const void *p = ptr_args[i];
        const alloc_rec *r = find_alloc(st, p, 1);
        if (p != nullptr && (r == nullptr || (r->kind == ALLOC_DEVICE && r->device != s->device))) {
            const std::string why = strf("launch of %s: argument %d is %s", name, ptr_index[i] + 1,
                                         r == nullptr ? describe_pointer(p).c_str() : "memory of another device");
            set_fault(s->device, cudaErrorIllegalAddress, why);
            fail(cudaErrorIllegalAddress, why);
            return;
        }
        k->ptr_args.push_back(p);
        k->ptr_index.push_back(ptr_index[i]);
    }
    k->body = std::move(body);
    const int device = s->device;
    const cudaError_t err = enqueue(stream, name, [k, device]() {
        emu_state *s2 = state();
        for (size_t i = 0; i < k->ptr_args.size(); ++i) {
            const void *p = k->ptr_args[i];
            if (p != nullptr && find_alloc(s2, p, 1) == nullptr) {
                set_fault(device, cudaErrorIllegalAddress,
                          strf("kernel %s: argument %d (%p) was freed before the kernel ran", k->name.c_str(),
                               k->ptr_index[i] + 1, p));
                return;
            }
        }
        run_grid(*k);
        if (sticky_of(s2, device) == cudaSuccess) check_guards(device, k->name.c_str());
    });
    (void)err; /* enqueue recorded the error as the thread's last error */
}

// ---------------------------------------------------------------------------------------------------------------
// The runtime API

#define EMU_ENTER()                                                                                                    \
    std::lock_guard<std::recursive_mutex> emu_guard_(emu_lock());                                                      \
    emu_state *const st = state()

inline namespace api {

const char *cudaGetErrorName(cudaError_t err) {
    switch (err) {
#define KWEMU_NAME(e)                                                                                                  \
    case e:                                                                                                            \
        return #e;
        KWEMU_NAME(cudaSuccess)
        KWEMU_NAME(cudaErrorInvalidValue)
        KWEMU_NAME(cudaErrorMemoryAllocation)
        KWEMU_NAME(cudaErrorInitializationError)
        KWEMU_NAME(cudaErrorInvalidConfiguration)
        KWEMU_NAME(cudaErrorInvalidDevicePointer)
        KWEMU_NAME(cudaErrorInvalidMemcpyDirection)
        KWEMU_NAME(cudaErrorInsufficientDriver)
        KWEMU_NAME(cudaErrorNoDevice)
        KWEMU_NAME(cudaErrorInvalidDevice)
        KWEMU_NAME(cudaErrorInvalidResourceHandle)
        KWEMU_NAME(cudaErrorNotReady)
        KWEMU_NAME(cudaErrorIllegalAddress)
        KWEMU_NAME(cudaErrorLaunchOutOfResources)
        KWEMU_NAME(cudaErrorLaunchTimeout)
        KWEMU_NAME(cudaErrorHostMemoryAlreadyRegistered)
        KWEMU_NAME(cudaErrorHostMemoryNotRegistered)
        KWEMU_NAME(cudaErrorIllegalInstruction)
        KWEMU_NAME(cudaErrorLaunchFailure)
        KWEMU_NAME(cudaErrorNotSupported)
        KWEMU_NAME(cudaErrorStreamCaptureUnsupported)
        KWEMU_NAME(cudaErrorStreamCaptureInvalidated)
        KWEMU_NAME(cudaErrorStreamCaptureUnmatched)
        KWEMU_NAME(cudaErrorStreamCaptureImplicit)
        KWEMU_NAME(cudaErrorCapturedEvent)
        KWEMU_NAME(cudaErrorUnknown)
#undef KWEMU_NAME
    }
    return "cudaErrorUnrecognized";
}

const char *cudaGetErrorString(cudaError_t err) {
    std::lock_guard<std::recursive_mutex> lock(emu_lock());
    emu_state *st = state();
    for (size_t d = 0; d < st->devs.size(); ++d)
        if (st->devs[d].sticky == err && err != cudaSuccess && st->last_fault != nullptr) return st->last_fault;
    return error_text(err);
}

cudaError_t cudaGetLastError(void) {
    EMU_ENTER();
    const cudaError_t s = sticky_of(st, tl_device);
    if (s != cudaSuccess) return s;
    const cudaError_t e = tl_last;
    tl_last = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError(void) {
    EMU_ENTER();
    const cudaError_t s = sticky_of(st, tl_device);
    return s != cudaSuccess ? s : tl_last;
}

cudaError_t cudaGetDeviceCount(int *count) {
    EMU_ENTER();
    if (count == nullptr) return fail(cudaErrorInvalidValue, "cudaGetDeviceCount(NULL)");
    *count = (int)st->devs.size();
    return st->devs.empty() ? fail(cudaErrorNoDevice, "no emulated device (KW_CUDA_EMU_DEVICES=0)") : cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
    EMU_ENTER();
    if (st->devs.empty()) return fail(cudaErrorNoDevice, "no emulated device");
    if (device < 0 || device >= (int)st->devs.size())
        return fail(cudaErrorInvalidDevice, strf("cudaSetDevice(%d) with %zu device(s)", device, st->devs.size()));
    tl_device = device;
    return cudaSuccess;
}

cudaError_t cudaGetDevice(int *device) {
    EMU_ENTER();
    if (device == nullptr) return fail(cudaErrorInvalidValue, "cudaGetDevice(NULL)");
    if (st->devs.empty()) return fail(cudaErrorNoDevice, "no emulated device");
    *device = tl_device;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device) {
    EMU_ENTER();
    if (prop == nullptr) return fail(cudaErrorInvalidValue, "cudaGetDeviceProperties(NULL)");
    if (st->devs.empty()) return fail(cudaErrorNoDevice, "no emulated device");
    if (device < 0 || device >= (int)st->devs.size()) return fail(cudaErrorInvalidDevice, strf("device %d", device));
    memset(prop, 0, sizeof *prop);
    snprintf(prop->name, sizeof prop->name, "kvwire CUDA emulator");
    prop->totalGlobalMem = st->cfg.memory_bytes;
    prop->sharedMemPerBlock = 49152;
    prop->regsPerBlock = 65536;
    prop->warpSize = 32;
    prop->maxThreadsPerBlock = 1024;
    prop->maxThreadsDim[0] = 1024;
    prop->maxThreadsDim[1] = 1024;
    prop->maxThreadsDim[2] = 64;
    prop->maxGridSize[0] = INT_MAX;
    prop->maxGridSize[1] = 65535;
    prop->maxGridSize[2] = 65535;
    prop->multiProcessorCount = 1;
    prop->major = 9;
    prop->minor = 0;
    prop->sharedMemPerBlockOptin = 232448;
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device) {
    EMU_ENTER();
    if (value == nullptr) return fail(cudaErrorInvalidValue, "cudaDeviceGetAttribute(NULL)");
    if (st->devs.empty()) return fail(cudaErrorNoDevice, "no emulated device");
    if (device < 0 || device >= (int)st->devs.size()) return fail(cudaErrorInvalidDevice, strf("device %d", device));
    switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock:
        *value = 1024;
        break;
    case cudaDevAttrMaxSharedMemoryPerBlock:
        *value = 49152;
        break;
    case cudaDevAttrWarpSize:
        *value = 32;
        break;
    case cudaDevAttrMultiProcessorCount:
        *value = 1;
        break;
    case cudaDevAttrComputeCapabilityMajor:
        *value = 9;
        break;
    case cudaDevAttrComputeCapabilityMinor:
        *value = 0;
        break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
        *value = 232448;
        break;
    case cudaDevAttrMemoryPoolsSupported:
        *value = 1;
        break;
    case cudaDevAttrClockRate:
    case cudaDevAttrMemoryClockRate:
    case cudaDevAttrGlobalMemoryBusWidth:
    case cudaDevAttrL2CacheSize:
        *value = 0; /* an emulator has no meaningful clock or bus */
        break;
    default:
        return fail(cudaErrorInvalidValue, strf("device attribute %d", (int)attr));
    }
    return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) {
    EMU_ENTER();
    cudaError_t err = check_device(st, tl_device);
    if (err != cudaSuccess) return err;
    err = capture_conflict(st, tl_device, "cudaDeviceSynchronize");
    if (err != cudaSuccess) return err;
    drain_device(st, tl_device);
    return finish_sync(st, tl_device);
}

cudaError_t cudaDeviceReset(void) {
    EMU_ENTER();
    if (st->devs.empty()) return fail(cudaErrorNoDevice, "no emulated device");
    reset_devices(st, tl_device);
    return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
    EMU_ENTER();
    const cudaError_t err = check_device(st, tl_device);
    if (err != cudaSuccess) return err;
    if (free_bytes == nullptr || total_bytes == nullptr) return fail(cudaErrorInvalidValue, "cudaMemGetInfo(NULL)");
    *total_bytes = st->cfg.memory_bytes;
    *free_bytes = st->cfg.memory_bytes - dev_state(st, tl_device).used;
    return cudaSuccess;
}

// Streams and events

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned int flags) {
    EMU_ENTER();
    if (stream == nullptr || (flags & ~cudaStreamNonBlocking) != 0)
        return fail(cudaErrorInvalidValue, strf("cudaStreamCreateWithFlags(%p, 0x%x)", (void *)stream, flags));
    const cudaError_t err = check_device(st, tl_device);
    if (err != cudaSuccess) return err;
    *stream = new_stream(st, tl_device, flags, 0);
    return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t *stream) {
    return cudaStreamCreateWithFlags(stream, cudaStreamDefault);
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    EMU_ENTER();
    emu_stream *s = resolve(st, stream);
    if (s == nullptr || s->legacy) return fail(cudaErrorInvalidResourceHandle, "cudaStreamDestroy: invalid stream");
    drain(st, s, UINT64_MAX);
    s->valid = 0;
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
    EMU_ENTER();
    emu_stream *s = resolve(st, stream);
    if (s == nullptr) return fail(cudaErrorInvalidResourceHandle, "cudaStreamSynchronize: invalid stream");
    cudaError_t err = check_device(st, s->device);
    if (err != cudaSuccess) return err;
    if (s->capture != nullptr) {
        s->capture_invalid = 1;
        return fail(cudaErrorStreamCaptureUnsupported, "cudaStreamSynchronize on a capturing stream");
    }
    if (s->legacy && (err = capture_conflict(st, s->device, "cudaStreamSynchronize(legacy)")) != cudaSuccess)
        return err;
    drain(st, s, s->last_enqueued);
    return finish_sync(st, s->device);
}

cudaError_t cudaStreamQuery(cudaStream_t stream) {
    EMU_ENTER();
    emu_stream *s = resolve(st, stream);
    if (s == nullptr) return fail(cudaErrorInvalidResourceHandle, "cudaStreamQuery: invalid stream");
    const cudaError_t err = check_device(st, s->device);
    if (err != cudaSuccess) return err;
    if (s->capture != nullptr) return fail(cudaErrorStreamCaptureUnsupported, "cudaStreamQuery on a capturing stream");
    drain(st, s, s->last_enqueued);
    return finish_sync(st, s->device);
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags) {
    EMU_ENTER();
    emu_event *e = find_event(st, event);
    if (e == nullptr || flags != 0) return fail(cudaErrorInvalidResourceHandle, "cudaStreamWaitEvent: invalid event");
    if (e->stream == nullptr) return cudaSuccess; /* never recorded: nothing to wait for */
    std::vector<std::pair<emu_stream *, uint64_t>> deps(1, std::make_pair(e->stream, e->op));
    return enqueue_deps(
        st, stream, "cudaStreamWaitEvent", []() {}, deps, nullptr);
}

cudaError_t cudaLaunchHostFunc(cudaStream_t stream, cudaHostFn_t fn, void *user_data) {
    EMU_ENTER();
    if (fn == nullptr) return fail(cudaErrorInvalidValue, "cudaLaunchHostFunc(NULL)");
    return enqueue_deps(
        st, stream, "host function", [fn, user_data]() { fn(user_data); }, {}, nullptr);
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned int flags) {
    EMU_ENTER();
    if (event == nullptr || (flags & ~(cudaEventBlockingSync | cudaEventDisableTiming)) != 0)
        return fail(cudaErrorInvalidValue, "cudaEventCreateWithFlags: bad arguments");
    const cudaError_t err = check_device(st, tl_device);
    if (err != cudaSuccess) return err;
    st->events.push_back(std::unique_ptr<emu_event>(new emu_event()));
    emu_event *e = st->events.back().get();
    e->device = tl_device;
    e->flags = flags;
    e->valid = 1;
    *event = e;
    return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t *event) {
    return cudaEventCreateWithFlags(event, cudaEventDefault);
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
    EMU_ENTER();
    emu_event *e = find_event(st, event);
    if (e == nullptr) return fail(cudaErrorInvalidResourceHandle, "cudaEventDestroy: invalid event");
    e->valid = 0;
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
    EMU_ENTER();
    emu_event *e = find_event(st, event);
    if (e == nullptr) return fail(cudaErrorInvalidResourceHandle, "cudaEventRecord: invalid event");
    emu_stream *s = resolve(st, stream);
    if (s != nullptr && s->capture != nullptr) {
        s->capture_invalid = 1;
        return fail(cudaErrorStreamCaptureUnsupported, "cudaEventRecord in a capture is not emulated");
    }
    const uint64_t gen = ++e->gen;
    e->time_valid = 0;
    emu_stream *into = nullptr;
    const cudaError_t err = enqueue_deps(
        st, stream, "cudaEventRecord",
        [e, gen]() {
            if (e->gen == gen) {
                e->time_ms = now_ms();
                e->time_valid = 1;
            }
        },
        {}, &into);
    if (err != cudaSuccess) return err;
    e->stream = into;
    e->op = into->last_enqueued;
    return cudaSuccess;
}

cudaError_t cudaEventQuery(cudaEvent_t event) {
    EMU_ENTER();
    emu_event *e = find_event(st, event);
    if (e == nullptr) return fail(cudaErrorInvalidResourceHandle, "cudaEventQuery: invalid event");
    if (e->stream == nullptr) return cudaSuccess;
    drain(st, e->stream, e->op);
    return finish_sync(st, e->stream->device);
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
    return cudaEventQuery(event);
}

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end) {
    EMU_ENTER();
    emu_event *a = find_event(st, start), *b = find_event(st, end);
    if (ms == nullptr || a == nullptr || b == nullptr)
        return fail(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: invalid event");
    if ((a->flags | b->flags) & cudaEventDisableTiming)
        return fail(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime on an event without timing");
    if (a->stream == nullptr || b->stream == nullptr || a->stream->done < a->op || b->stream->done < b->op ||
        !a->time_valid || !b->time_valid)
        return fail(cudaErrorNotReady, "cudaEventElapsedTime: an event has not completed");
    *ms = (float)(b->time_ms - a->time_ms);
    return cudaSuccess;
}

// Memory

cudaError_t cudaMalloc(void **ptr, size_t size) {
    EMU_ENTER();
    if (ptr == nullptr) return fail(cudaErrorInvalidValue, "cudaMalloc(NULL)");
    cudaError_t err = check_device(st, tl_device);
    if (err != cudaSuccess) return err;
    /* a potentially synchronizing call: the runtime refuses it while a capture is in progress */
    if ((err = capture_conflict(st, tl_device, "cudaMalloc")) != cudaSuccess) return err;
    return alloc_block(st, ptr, size, ALLOC_DEVICE, tl_device, nullptr);
}

cudaError_t cudaFree(void *ptr) {
    EMU_ENTER();
    if (ptr == nullptr) return cudaSuccess;
    auto it = st->allocs.find((uintptr_t)ptr);
    if (it == st->allocs.end() || it->second.kind != ALLOC_DEVICE || it->second.free_queued)
        return fail(cudaErrorInvalidValue, strf("cudaFree(%p): not a live device allocation", ptr));
    const int device = it->second.device;
    cudaError_t err = check_device(st, device);
    if (err != cudaSuccess) return err;
    if ((err = capture_conflict(st, device, "cudaFree")) != cudaSuccess) return err;
    drain_device(st, device);
    it = st->allocs.find((uintptr_t)ptr);
    if (it != st->allocs.end()) release_alloc(st, it);
    return finish_sync(st, device);
}

cudaError_t cudaHostAlloc(void **ptr, size_t size, unsigned int flags) {
    EMU_ENTER();
    if (ptr == nullptr || (flags & ~0x7u) != 0) return fail(cudaErrorInvalidValue, "cudaHostAlloc: bad arguments");
    cudaError_t err = check_device(st, tl_device);
    if (err != cudaSuccess) return err;
    if ((err = capture_conflict(st, tl_device, "cudaHostAlloc")) != cudaSuccess) return err;
    return alloc_block(st, ptr, size, ALLOC_PINNED, tl_device, nullptr);
}

cudaError_t cudaMallocHost(void **ptr, size_t size) {
    return cudaHostAlloc(ptr, size, cudaHostAllocDefault);
}

cudaError_t cudaFreeHost(void *ptr) {
    EMU_ENTER();
    if (ptr == nullptr) return cudaSuccess;
    auto it = st->allocs.find((uintptr_t)ptr);
    if (it == st->allocs.end() || it->second.kind != ALLOC_PINNED)
        return fail(cudaErrorInvalidValue, strf("cudaFreeHost(%p): not a pinned allocation", ptr));
    drain_device(st, it->second.device);
    it = st->allocs.find((uintptr_t)ptr);
    if (it != st->allocs.end()) release_alloc(st, it);
    return cudaSuccess;
}

cudaError_t cudaHostRegister(void *ptr, size_t size, unsigned int flags) {
    EMU_ENTER();
    if (ptr == nullptr || size == 0 || (flags & ~0x3u) != 0)
        return fail(cudaErrorInvalidValue, "cudaHostRegister: bad arguments");
    const uintptr_t lo = (uintptr_t)ptr, hi = lo + size;
    for (const auto &kv : st->allocs) {
        const uintptr_t a = (uintptr_t)kv.second.user, b = a + kv.second.size;
        if (lo < b && a < hi)
            return fail(kv.second.kind == ALLOC_REGISTERED ? cudaErrorHostMemoryAlreadyRegistered
                                                           : cudaErrorInvalidValue,
                        strf("cudaHostRegister(%p, %zu) overlaps %s", ptr, size, describe_pointer((void *)a).c_str()));
    }
    alloc_rec r = {nullptr, 0, (char *)ptr, size, ALLOC_REGISTERED, tl_device, nullptr, 0};
    st->allocs[lo] = r;
    return cudaSuccess;
}

cudaError_t cudaHostUnregister(void *ptr) {
    EMU_ENTER();
    auto it = st->allocs.find((uintptr_t)ptr);
    if (it == st->allocs.end() || it->second.kind != ALLOC_REGISTERED)
        return fail(cudaErrorHostMemoryNotRegistered, strf("cudaHostUnregister(%p)", ptr));
    drain_device(st, it->second.device);
    st->allocs.erase((uintptr_t)ptr);
    return cudaSuccess;
}

cudaError_t cudaHostGetDevicePointer(void **device_ptr, void *host_ptr, unsigned int flags) {
    EMU_ENTER();
    const alloc_rec *r = find_alloc(st, host_ptr, 0);
    if (device_ptr == nullptr || flags != 0 || r == nullptr || r->kind == ALLOC_DEVICE)
        return fail(cudaErrorInvalidValue, strf("cudaHostGetDevicePointer(%p): not pinned or registered", host_ptr));
    *device_ptr = host_ptr;
    return cudaSuccess;
}

namespace {

/* Checks a copy and returns the (inferred) kind, or an error. */
cudaError_t check_copy(emu_state *st, void *dst, const void *src, size_t size, cudaMemcpyKind kind,
                       cudaMemcpyKind *resolved) {
    const alloc_rec *d = find_alloc(st, dst, 0), *s = find_alloc(st, src, 0);
    const int d_dev = d != nullptr && d->kind == ALLOC_DEVICE, s_dev = s != nullptr && s->kind == ALLOC_DEVICE;
    if (kind == cudaMemcpyDefault)
        kind = d_dev ? (s_dev ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                     : (s_dev ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
    if (kind < cudaMemcpyHostToHost || kind > cudaMemcpyDefault)
        return fail(cudaErrorInvalidMemcpyDirection, strf("copy kind %d", (int)kind));
    const int want_d = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    const int want_s = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if (want_d && !device_range_ok(dst, size, -1))
        return fail(cudaErrorInvalidValue, strf("copy of %zu bytes to %s", size, describe_pointer(dst).c_str()));
    if (want_s && !device_range_ok(src, size, -1))
        return fail(cudaErrorInvalidValue, strf("copy of %zu bytes from %s", size, describe_pointer(src).c_str()));
    if ((want_d && d->free_queued) || (want_s && s->free_queued))
        return fail(cudaErrorInvalidValue,
                    strf("copy of %zu bytes from %p to %p: memory already passed to cudaFreeAsync", size, src, dst));
    if (!want_d && d_dev)
        return fail(cudaErrorInvalidValue,
                    strf("copy kind says host destination but %s", describe_pointer(dst).c_str()));
    if (!want_s && s_dev)
        return fail(cudaErrorInvalidValue, strf("copy kind says host source but %s", describe_pointer(src).c_str()));
    if ((uintptr_t)dst < (uintptr_t)src + size && (uintptr_t)src < (uintptr_t)dst + size)
        return fail(cudaErrorInvalidValue, strf("overlapping copy of %zu bytes from %p to %p", size, src, dst));
    *resolved = kind;
    return cudaSuccess;
}

std::function<void()> copy_op(void *dst, const void *src, size_t size, cudaMemcpyKind kind, int device) {
    return [=]() {
        const int want_d = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
        const int want_s = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
        if ((want_d && !device_range_ok(dst, size, -1)) || (want_s && !device_range_ok(src, size, -1))) {
            set_fault(device, cudaErrorIllegalAddress,
                      strf("queued copy of %zu bytes from %p to %p: device memory freed before the copy ran", size, src,
                           dst));
            return;
        }
        memcpy(dst, src, size);
    };
}

} // namespace

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t size, cudaMemcpyKind kind, cudaStream_t stream) {
    EMU_ENTER();
    if (size == 0) return resolve(st, stream) ? cudaSuccess : fail(cudaErrorInvalidResourceHandle, "invalid stream");
    cudaMemcpyKind k;
    const cudaError_t err = check_copy(st, dst, src, size, kind, &k);
    if (err != cudaSuccess) return err;
    emu_stream *s = resolve(st, stream);
    return enqueue_deps(st, stream, "cudaMemcpyAsync", copy_op(dst, src, size, k, s ? s->device : 0), {}, nullptr);
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t size, cudaMemcpyKind kind) {
    EMU_ENTER();
    cudaError_t err = check_device(st, tl_device);
    if (err != cudaSuccess) return err;
    if ((err = capture_conflict(st, tl_device, "cudaMemcpy")) != cudaSuccess) return err;
    if (size == 0) return cudaSuccess;
    cudaMemcpyKind k;
    if ((err = check_copy(st, dst, src, size, kind, &k)) != cudaSuccess) return err;
    emu_stream *into = nullptr;
    err = enqueue_deps(st, nullptr, "cudaMemcpy", copy_op(dst, src, size, k, tl_device), {}, &into);
    if (err != cudaSuccess) return err;
    drain(st, into, into->last_enqueued);
    return finish_sync(st, tl_device);
}

cudaError_t cudaMemsetAsync(void *dst, int value, size_t size, cudaStream_t stream) {
    EMU_ENTER();
    if (size == 0) return cudaSuccess;
    if (!device_range_ok(dst, size, -1))
        return fail(cudaErrorInvalidValue, strf("memset of %zu bytes at %s", size, describe_pointer(dst).c_str()));
    emu_stream *s = resolve(st, stream);
    const int device = s ? s->device : 0;
    return enqueue_deps(
        st, stream, "cudaMemsetAsync",
        [=]() {
            if (!device_range_ok(dst, size, -1)) {
                set_fault(device, cudaErrorIllegalAddress,
                          strf("queued memset at %p: memory freed before it ran", dst));
                return;
            }
            memset(dst, value, size);
        },
        {}, nullptr);
}

cudaError_t cudaMemset(void *dst, int value, size_t size) {
    EMU_ENTER();
    cudaError_t err = check_device(st, tl_device);
    if (err != cudaSuccess) return err;
    if ((err = capture_conflict(st, tl_device, "cudaMemset")) != cudaSuccess) return err;
    if ((err = cudaMemsetAsync(dst, value, size, nullptr)) != cudaSuccess) return err;
    emu_stream *l = dev_state(st, tl_device).legacy;
    drain(st, l, l->last_enqueued);
    return finish_sync(st, tl_device);
}

// Stream-ordered allocation

cudaError_t cudaMemPoolCreate(cudaMemPool_t *pool, const cudaMemPoolProps *props) {
    EMU_ENTER();
    if (pool == nullptr || props == nullptr || props->allocType != cudaMemAllocationTypePinned ||
        props->location.type != cudaMemLocationTypeDevice)
        return fail(cudaErrorInvalidValue, "cudaMemPoolCreate: unsupported properties");
    const cudaError_t err = check_device(st, props->location.id);
    if (err != cudaSuccess) return err;
    *pool = new_pool(st, props->location.id, 0);
    return cudaSuccess;
}

namespace {
emu_pool *find_pool(emu_state *st, cudaMemPool_t h) {
    for (const auto &p : st->pools)
        if (p.get() == h) return p->valid && !p->destroyed ? p.get() : nullptr;
    return nullptr;
}
} // namespace

cudaError_t cudaMemPoolDestroy(cudaMemPool_t pool) {
    EMU_ENTER();
    emu_pool *p = find_pool(st, pool);
    if (p == nullptr || p->is_default) return fail(cudaErrorInvalidValue, "cudaMemPoolDestroy: invalid pool");
    p->destroyed = 1; /* the record stays for its live allocations; freed with them at reset */
    return cudaSuccess;
}

cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void *value) {
    EMU_ENTER();
    emu_pool *p = find_pool(st, pool);
    if (p == nullptr || value == nullptr) return fail(cudaErrorInvalidValue, "cudaMemPoolSetAttribute: bad arguments");
    switch (attr) {
    case cudaMemPoolAttrReleaseThreshold:
        p->threshold = *(uint64_t *)value;
        return cudaSuccess;
    case cudaMemPoolReuseFollowEventDependencies:
    case cudaMemPoolReuseAllowOpportunistic:
    case cudaMemPoolReuseAllowInternalDependencies:
        return cudaSuccess;
    case cudaMemPoolAttrReservedMemHigh:
    case cudaMemPoolAttrUsedMemHigh:
        if (*(uint64_t *)value != 0) return fail(cudaErrorInvalidValue, "high-water marks can only be reset to 0");
        p->used_high = p->used;
        return cudaSuccess;
    default:
        return fail(cudaErrorInvalidValue, strf("pool attribute %d is read-only", (int)attr));
    }
}

cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void *value) {
    EMU_ENTER();
    emu_pool *p = find_pool(st, pool);
    if (p == nullptr || value == nullptr) return fail(cudaErrorInvalidValue, "cudaMemPoolGetAttribute: bad arguments");
    switch (attr) {
    case cudaMemPoolAttrReleaseThreshold:
        *(uint64_t *)value = p->threshold;
        return cudaSuccess;
    case cudaMemPoolAttrReservedMemCurrent: /* the emulator returns freed memory at once: reserved == used */
    case cudaMemPoolAttrUsedMemCurrent:
        *(uint64_t *)value = p->used;
        return cudaSuccess;
    case cudaMemPoolAttrReservedMemHigh:
    case cudaMemPoolAttrUsedMemHigh:
        *(uint64_t *)value = p->used_high;
        return cudaSuccess;
    default:
        *(int *)value = 1;
        return cudaSuccess;
    }
}

cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t *pool, int device) {
    EMU_ENTER();
    if (pool == nullptr) return fail(cudaErrorInvalidValue, "cudaDeviceGetDefaultMemPool(NULL)");
    const cudaError_t err = check_device(st, device);
    if (err != cudaSuccess) return err;
    *pool = dev_state(st, device).default_pool;
    return cudaSuccess;
}

cudaError_t cudaMallocFromPoolAsync(void **ptr, size_t size, cudaMemPool_t pool, cudaStream_t stream) {
    EMU_ENTER();
    emu_pool *p = find_pool(st, pool);
    emu_stream *s = resolve(st, stream);
    if (ptr == nullptr || p == nullptr) return fail(cudaErrorInvalidValue, "cudaMallocFromPoolAsync: bad arguments");
    if (s == nullptr) return fail(cudaErrorInvalidResourceHandle, "cudaMallocFromPoolAsync: invalid stream");
    const cudaError_t err = check_device(st, s->device);
    if (err != cudaSuccess) return err;
    if (s->capture != nullptr) {
        s->capture_invalid = 1;
        return fail(cudaErrorStreamCaptureUnsupported, "stream-ordered allocation in a capture is not emulated");
    }
    return alloc_block(st, ptr, size, ALLOC_DEVICE, p->device, p);
}

cudaError_t cudaMallocAsync(void **ptr, size_t size, cudaStream_t stream) {
    EMU_ENTER();
    emu_stream *s = resolve(st, stream);
    if (s == nullptr) return fail(cudaErrorInvalidResourceHandle, "cudaMallocAsync: invalid stream");
    return cudaMallocFromPoolAsync(ptr, size, dev_state(st, s->device).default_pool, stream);
}

cudaError_t cudaFreeAsync(void *ptr, cudaStream_t stream) {
    EMU_ENTER();
    emu_stream *s = resolve(st, stream);
    if (s == nullptr) return fail(cudaErrorInvalidResourceHandle, "cudaFreeAsync: invalid stream");
    if (s->capture != nullptr) {
        s->capture_invalid = 1;
        return fail(cudaErrorStreamCaptureUnsupported, "stream-ordered free in a capture is not emulated");
    }
    if (ptr == nullptr) return cudaSuccess;
    auto it = st->allocs.find((uintptr_t)ptr);
    if (it == st->allocs.end() || it->second.kind != ALLOC_DEVICE || it->second.free_queued)
        return fail(cudaErrorInvalidValue, strf("cudaFreeAsync(%p): not a live device allocation", ptr));
    const cudaError_t err = enqueue_deps(
        st, stream, "cudaFreeAsync",
        [ptr]() {
            emu_state *s2 = state();
            auto it2 = s2->allocs.find((uintptr_t)ptr);
            if (it2 != s2->allocs.end()) release_alloc(s2, it2);
        },
        {}, nullptr);
    if (err == cudaSuccess) it->second.free_queued = 1;
    return err;
}

// Capture and graphs

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode) {
    EMU_ENTER();
    emu_stream *s = resolve(st, stream);
    if (s == nullptr) return fail(cudaErrorInvalidResourceHandle, "cudaStreamBeginCapture: invalid stream");
    if (s->legacy) return fail(cudaErrorStreamCaptureUnsupported, "the legacy stream cannot be captured");
    if (s->capture != nullptr) return fail(cudaErrorInvalidValue, "the stream is already capturing");
    const cudaError_t err = check_device(st, s->device);
    if (err != cudaSuccess) return err;
    st->graphs.push_back(std::unique_ptr<emu_graph>(new emu_graph()));
    s->capture = st->graphs.back().get();
    s->capture->device = s->device;
    s->capture->valid = 1;
    s->capture_invalid = 0;
    s->capture_mode = mode;
    return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t *graph) {
    EMU_ENTER();
    emu_stream *s = resolve(st, stream);
    if (s == nullptr || graph == nullptr) return fail(cudaErrorInvalidValue, "cudaStreamEndCapture: bad arguments");
    if (s->capture == nullptr) return fail(cudaErrorStreamCaptureUnmatched, "the stream is not capturing");
    emu_graph *g = s->capture;
    s->capture = nullptr;
    if (s->capture_invalid) {
        g->valid = 0;
        *graph = nullptr;
        return fail(cudaErrorStreamCaptureInvalidated, "the capture was invalidated by an unsupported call");
    }
    *graph = g;
    return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus *status) {
    EMU_ENTER();
    emu_stream *s = resolve(st, stream);
    if (s == nullptr || status == nullptr) return fail(cudaErrorInvalidValue, "cudaStreamIsCapturing: bad arguments");
    *status = s->capture == nullptr ? cudaStreamCaptureStatusNone
              : s->capture_invalid  ? cudaStreamCaptureStatusInvalidated
                                    : cudaStreamCaptureStatusActive;
    return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long flags) {
    EMU_ENTER();
    emu_graph *g = nullptr;
    for (const auto &x : st->graphs)
        if (x.get() == graph && x->valid) g = x.get();
    if (exec == nullptr || g == nullptr || flags != 0)
        return fail(cudaErrorInvalidValue, "cudaGraphInstantiate: bad arguments");
    st->execs.push_back(std::unique_ptr<emu_graph_exec>(new emu_graph_exec()));
    emu_graph_exec *x = st->execs.back().get();
    x->device = g->device;
    x->valid = 1;
    x->ops = g->ops;
    *exec = x;
    return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
    EMU_ENTER();
    emu_graph_exec *x = nullptr;
    for (const auto &e : st->execs)
        if (e.get() == exec && e->valid) x = e.get();
    if (x == nullptr) return fail(cudaErrorInvalidValue, "cudaGraphLaunch: invalid graph");
    const int device = x->device;
    return enqueue_deps(
        st, stream, "cudaGraphLaunch",
        [x, device]() {
            for (const auto &op : x->ops) {
                if (sticky_of(state(), device) != cudaSuccess) return;
                op.second();
            }
        },
        {}, nullptr);
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
    EMU_ENTER();
    for (const auto &e : st->execs)
        if (e.get() == exec && e->valid) {
            drain_device(st, e->device); /* a queued launch still uses it */
            e->valid = 0;
            return cudaSuccess;
        }
    return fail(cudaErrorInvalidValue, "cudaGraphExecDestroy: invalid graph");
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
    EMU_ENTER();
    for (const auto &g : st->graphs)
        if (g.get() == graph && g->valid) {
            g->valid = 0;
            return cudaSuccess;
        }
    return fail(cudaErrorInvalidValue, "cudaGraphDestroy: invalid graph");
}

} // namespace api
} // namespace kwemu

// ---------------------------------------------------------------------------------------------------------------
// C interface

using namespace kwemu;

extern "C" void kw_cuda_emu_config_from_env(kw_cuda_emu_config *cfg) {
    cfg->seed = parse_env("KW_CUDA_EMU_SEED", 0, 0, UINT64_MAX);
    cfg->devices = (int32_t)parse_env("KW_CUDA_EMU_DEVICES", 1, 0, 8);
    cfg->memory_bytes = parse_env("KW_CUDA_EMU_MEMORY_MB", 4096, 1, (uint64_t)1 << 24) << 20;
    cfg->use_ucontext = (int32_t)parse_env("KW_CUDA_EMU_UCONTEXT", 0, 0, 1);
    cfg->stack_kib = (uint32_t)parse_env("KW_CUDA_EMU_STACK_KB", DEFAULT_STACK_KIB, 16, 65536);
}

extern "C" int kw_cuda_emu_configure(const kw_cuda_emu_config *cfg) {
    KW_RETURN_IF(cfg == nullptr, KW_E_INVALID_ARG, "kw_cuda_emu_configure: NULL config");
    KW_RETURN_IF(cfg->devices < 0 || cfg->devices > 8 || cfg->memory_bytes == 0 || cfg->use_ucontext < 0 ||
                     cfg->use_ucontext > 1 || cfg->stack_kib < 16 || cfg->stack_kib > 65536,
                 KW_E_INVALID_ARG, "kw_cuda_emu_configure: devices %d, memory %llu, ucontext %d, stack %u KiB",
                 (int)cfg->devices, (unsigned long long)cfg->memory_bytes, (int)cfg->use_ucontext,
                 (unsigned)cfg->stack_kib);
    std::lock_guard<std::recursive_mutex> lock(emu_lock());
    emu_state *st = state();
    reset_devices(st, -1);
    apply_config(st, *cfg);
    tl_device = 0;
    tl_last = cudaSuccess;
    return 0;
}

extern "C" const char *kw_cuda_emu_last_fault(void) {
    std::lock_guard<std::recursive_mutex> lock(emu_lock());
    return state()->last_fault;
}

extern "C" const char *kw_cuda_emu_last_error_detail(void) {
    return tl_detail.c_str();
}

extern "C" void kw_cuda_emu_get_stats(kw_cuda_emu_stats *out) {
    std::lock_guard<std::recursive_mutex> lock(emu_lock());
    emu_state *st = state();
    out->kernels = st->counters.kernels;
    out->blocks = st->counters.blocks;
    out->threads = st->counters.threads;
    out->switches = st->counters.switches;
    out->faults = st->counters.faults;
    out->live_allocations = 0;
    out->live_bytes = 0;
    for (const auto &kv : st->allocs)
        if (kv.second.kind != ALLOC_REGISTERED) {
            ++out->live_allocations;
            out->live_bytes += kv.second.size;
        }
}
