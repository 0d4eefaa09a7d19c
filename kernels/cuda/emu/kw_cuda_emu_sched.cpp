/* kw_cuda_emu_sched.cpp: how the CUDA emulator runs a kernel: the blocks of the grid one after another, each thread of
 * a block a fiber, and the two kinds of rendezvous (the block's barrier, the warp collectives) as the only places a
 * fiber gives way. See kw_cuda_emu.h for the model and the checks; this file is their implementation.
 *
 * Scheduling: a block keeps a run queue of thread indices. A fiber that blocks (or exits) takes the next runnable
 * thread from the queue and switches straight to it; the host thread's own context is resumed only when the block is
 * done, faulted or deadlocked (no runnable thread while some have not exited). In order (seed 0) the queue is FIFO:
 * threads start in thread order and a completed rendezvous requeues its threads in thread order, so warps advance
 * roughly together. In the even blocks of the grid (all of a one-block grid) a completed warp collective puts its
 * lanes at the front instead, so the warp runs on, as one warp does on a GPU: warp 0 reaches the next block barrier
 * before warp 1 starts, and a barrier missing before a write (warp 0 overwriting shared memory that higher warps have
 * yet to read) shows too. With a seed, blocks run in a
 * random (affine) permutation of the grid, atomics and fences yield with probability 1/2, and each block draws one of
 * three policies: a uniformly random queued thread at every pick; or fixed random priorities per warp, or per thread,
 * the highest-priority runnable thread always running first (as in probabilistic concurrency testing: the
 * lowest-priority warp lags as far behind as the barriers allow, which is what exposes a missing barrier between two
 * uses of the same shared memory).
 *
 * Warp collectives: a lane arriving with mask m waits until every lane of m is waiting with mask m; the last to
 * arrive computes every lane's result (PTX shfl.sync semantics for the shuffles: b[4:0], segment mask from the width,
 * clamping to the own lane) and requeues them. Lanes waiting with other masks, or at the block barrier, are not part
 * of that rendezvous; if nothing can run any more, the deadlock report lists where every thread waits.
 */
#include "kernels/cuda/emu/kw_cuda_emu_fiber.h"
#include "kernels/cuda/emu/kw_cuda_emu_internal.h"

#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <map>

namespace kwemu {

__thread thread_ctx *tl_thread = nullptr;

enum fiber_state { ST_NEW = 0, ST_READY, ST_RUNNING, ST_BARRIER, ST_WARP, ST_EXITED };

struct emu_fiber {
    fiber_ctx ctx;
    thread_ctx tc;
    fiber_state st;
    /* the warp collective this lane waits in */
    warp_op op;
    unsigned int mask;
    uint64_t payload;
    unsigned int size;
    int is_signed;
    int arg;
    int width;
    const char *file;
    int line;
    uint64_t result;
    /* the block barrier */
    int bar_result;
};

struct emu_block {
    const kernel_launch *k;
    unsigned int nthreads, nwarps;
    std::vector<emu_fiber> fibers;
    std::vector<int> runq;
    size_t head;
    unsigned int live, exited;
    int random;                 /* 1: the randomized schedule */
    int ahead;                  /* in order: a warp runs on after its collectives (even blocks of the grid) */
    int policy;                 /* with it, for this block: POLICY_* */
    std::vector<uint64_t> prio; /* POLICY_WARP_PRIORITY / POLICY_THREAD_PRIORITY: per thread, unique */
    /* the block barrier */
    unsigned int bar_count;
    barrier_kind bar_kind;
    int bar_acc;
    const char *bar_file;
    int bar_line;
    unsigned int bar_first;
    /* per warp: lanes waiting in a collective, lanes exited, lanes that exist */
    uint32_t waiting[32], exited_mask[32], present[32];
    fiber_ctx main;
    int faulted;
    std::string fault;
    std::vector<unsigned char> dyn_shared;
};

// ---------------------------------------------------------------------------------------------------------------
// Fiber stacks: one slot per thread of the largest block so far, each with a PROT_NONE guard page below it (a stack
// overflow faults instead of corrupting the neighbour). Reallocated only between blocks.

namespace {

/* A fiber never returns from its entry (it switches away for good), and one abandoned after a fault leaves several
 * frames behind: either way ASan's shadow still marks their redzones. stale[i] is where slot i's live frames began
 * (its last saved stack pointer, less the red zone below it), or NULL; the shadow from there to the top is cleared
 * before the slot runs a new fiber. */
struct stack_pool {
    char *base = nullptr;
    size_t slot = 0, stack = 0, count = 0, page = 0;
    std::vector<char *> stale;
};

stack_pool g_stacks;

void stacks_ensure(unsigned int n) {
    const size_t stack = config().stack_bytes;
    if (g_stacks.base != nullptr && g_stacks.count >= n && g_stacks.stack == stack) return;
    if (g_stacks.base != nullptr) {
        /* the fibers' frames left redzones in ASan's shadow; a later mmap may reuse these addresses (a model file),
         * and ASan does not clear the shadow of an unmapped range */
        fiber_stack_reset(g_stacks.base, g_stacks.slot * g_stacks.count);
        munmap(g_stacks.base, g_stacks.slot * g_stacks.count);
    }
    g_stacks.page = (size_t)sysconf(_SC_PAGESIZE);
    g_stacks.stack = stack;
    g_stacks.slot = stack + g_stacks.page;
    g_stacks.count = n < 256 ? 256 : n; /* room for the usual block sizes at once: few remaps */
    void *p = mmap(nullptr, g_stacks.slot * g_stacks.count, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        fprintf(stderr, "kvwire CUDA emulator: cannot map %zu fiber stacks of %zu bytes\n", g_stacks.count, stack);
        abort();
    }
    g_stacks.base = (char *)p;
    for (size_t i = 0; i < g_stacks.count; ++i)
        mprotect(g_stacks.base + i * g_stacks.slot, g_stacks.page, PROT_NONE);
    g_stacks.stale.assign(g_stacks.count, nullptr);
}

char *stack_lo(unsigned int i) {
    return g_stacks.base + i * g_stacks.slot + g_stacks.page;
}

const char *op_name(warp_op op) {
    static const char *const names[WARP_OP_COUNT] = {
        "__shfl_sync",       "__shfl_up_sync",    "__shfl_down_sync",  "__shfl_xor_sync",  "__ballot_sync",
        "__any_sync",        "__all_sync",        "__uni_sync",        "__syncwarp",       "__reduce_add_sync",
        "__reduce_min_sync", "__reduce_max_sync", "__reduce_and_sync", "__reduce_or_sync", "__reduce_xor_sync",
        "__match_any_sync",  "__match_all_sync"};
    return op >= 0 && op < WARP_OP_COUNT ? names[op] : "?";
}

/* Diagnostics are formatted into fixed buffers: a faulting fiber's frames are abandoned, never unwound, so nothing
 * they hold may own heap memory. */
struct text {
    char s[160];
};

text thread_str(const emu_block *b, unsigned int linear) {
    const dim3 bd = b->k->block;
    text t;
    snprintf(t.s, sizeof t.s, "(%u,%u,%u)", linear % bd.x, (linear / bd.x) % bd.y, linear / (bd.x * bd.y));
    return t;
}

text site_str(const char *file, int line) {
    const char *slash = file ? strrchr(file, '/') : nullptr;
    text t;
    snprintf(t.s, sizeof t.s, "%s:%d", slash ? slash + 1 : (file ? file : "?"), line);
    return t;
}

int same_site(const char *f1, int l1, const char *f2, int l2) {
    return l1 == l2 && (f1 == f2 || (f1 && f2 && strcmp(f1, f2) == 0));
}

// ---------------------------------------------------------------------------------------------------------------
// Run queue and switching

enum { POLICY_UNIFORM = 0, POLICY_WARP_PRIORITY = 1, POLICY_THREAD_PRIORITY = 2, POLICY_COUNT = 3 };

/* The run queue as a heap under the priority policies: the top is the highest priority. */
struct by_priority {
    const emu_block *b;
    bool operator()(int x, int y) const { return b->prio[(size_t)x] < b->prio[(size_t)y]; }
};

void insert(emu_block *b, int i) {
    b->runq.push_back(i);
    if (b->random && b->policy != POLICY_UNIFORM) std::push_heap(b->runq.begin(), b->runq.end(), by_priority{b});
}

/* Queues a thread that has run and may run again. */
void push(emu_block *b, int i) {
    b->fibers[(size_t)i].st = ST_READY;
    insert(b, i);
}

/* In order, in a block that runs warps ahead: queues a thread to run before every queued one; else push. */
void push_front(emu_block *b, int i) {
    if (!b->ahead) {
        push(b, i);
        return;
    }
    b->fibers[(size_t)i].st = ST_READY;
    if (b->head > 0)
        b->runq[--b->head] = i;
    else
        b->runq.insert(b->runq.begin(), i);
}

int pick(emu_block *b) {
    if (b->random && b->policy != POLICY_UNIFORM) {
        if (b->runq.empty()) return -1;
        std::pop_heap(b->runq.begin(), b->runq.end(), by_priority{b});
        const int i = b->runq.back();
        b->runq.pop_back();
        return i;
    }
    if (b->head == b->runq.size()) {
        b->runq.clear();
        b->head = 0;
        return -1;
    }
    if (b->random) {
        const size_t n = b->runq.size() - b->head;
        const size_t j = b->head + (size_t)(rng_next() % n);
        const int t = b->runq[j];
        b->runq[j] = b->runq[b->head];
        b->runq[b->head] = t;
    }
    const int i = b->runq[b->head++];
    if (b->head > 4096 && b->head * 2 > b->runq.size()) {
        b->runq.erase(b->runq.begin(), b->runq.begin() + (long)b->head);
        b->head = 0;
    }
    return i;
}

void fiber_main(void *arg);

/* Switches from the context `from` (a fiber, or the host thread's) to fiber n, starting it if new. */
void resume(emu_block *b, fiber_ctx *from, emu_fiber *n, int from_exits) {
    if (n->st == ST_NEW) {
        const unsigned int slot = n->tc.linear;
        if (g_stacks.stale[slot] != nullptr) {
            char *const top = stack_lo(slot) + g_stacks.stack;
            fiber_stack_reset(g_stacks.stale[slot], (size_t)(top - g_stacks.stale[slot]));
            g_stacks.stale[slot] = nullptr;
        }
        fiber_prepare(&n->ctx, stack_lo(slot), g_stacks.stack, fiber_main, n, config().use_ucontext);
    }
    n->st = ST_RUNNING;
    tl_thread = &n->tc;
    ++counters().switches;
    (void)b;
    fiber_switch(from, &n->ctx, from_exits);
}

/* Records the block's fault (in a frame that returns normally, so its strings are freed). */
void set_block_fault(emu_block *b, const emu_fiber *self, const char *what) {
    b->faulted = 1;
    b->fault = strf("kernel %s, block (%u,%u,%u), thread %s: %s", b->k->name.c_str(), self->tc.block_idx.x,
                    self->tc.block_idx.y, self->tc.block_idx.z, thread_str(b, self->tc.linear).s, what);
}

/* Leaves the faulted block for good: back to the host thread, which abandons the block's other fibers too. */
[[noreturn]] void abandon(emu_block *b, emu_fiber *self) {
    tl_thread = nullptr;
    fiber_switch(&self->ctx, &b->main, 1);
    abort(); /* never resumed */
}

[[noreturn]] __attribute__((format(printf, 3, 4))) void fault_at(emu_block *b, emu_fiber *self, const char *fmt, ...) {
    char what[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    set_block_fault(b, self, what);
    abandon(b, self);
}

/* No thread can run but some have not exited: say where each waits (grouped by place). */
void describe_deadlock(emu_block *b, emu_fiber *self) {
    std::map<std::string, std::pair<unsigned int, unsigned int>> groups; /* place -> (count, first thread) */
    for (unsigned int i = 0; i < b->nthreads; ++i) {
        const emu_fiber &f = b->fibers[i];
        std::string where;
        if (f.st == ST_BARRIER)
            where = strf("__syncthreads at %s", site_str(b->bar_file, b->bar_line).s);
        else if (f.st == ST_WARP)
            where =
                strf("%s (mask 0x%08x) at %s in warp %u", op_name(f.op), f.mask, site_str(f.file, f.line).s, f.tc.warp);
        else
            continue;
        auto it = groups.find(where);
        if (it == groups.end())
            groups[where] = std::make_pair(1u, i);
        else
            ++it->second.first;
    }
    std::string msg = "deadlock: no thread can continue;";
    for (const auto &g : groups)
        msg += strf(" %u thread(s) from %s wait in %s;", g.second.first, thread_str(b, g.second.second).s,
                    g.first.c_str());
    msg += strf(" %u exited", b->exited);
    set_block_fault(b, self, msg.c_str());
}

/* The running fiber self gives way: to the next queued thread, itself if it is next, or the host thread when every
 * thread has exited. */
void reschedule(emu_block *b, emu_fiber *self, int exiting) {
    const int next = pick(b);
    if (next < 0) {
        if (b->live == 0) {
            tl_thread = nullptr;
            fiber_switch(&self->ctx, &b->main, exiting);
            return;
        }
        describe_deadlock(b, self);
        abandon(b, self);
    }
    emu_fiber *n = &b->fibers[(size_t)next];
    if (n == self) {
        self->st = ST_RUNNING;
        return;
    }
    resume(b, &self->ctx, n, exiting);
}

emu_fiber *running(const char *what) {
    const thread_ctx &tc = cur_thread(what);
    return &tc.block->fibers[tc.linear];
}

void thread_exit(emu_block *b, emu_fiber *f) {
    const unsigned int w = f->tc.warp, lane = f->tc.lane;
    f->st = ST_EXITED;
    --b->live;
    ++b->exited;
    b->exited_mask[w] |= 1u << lane;
    if (b->bar_count > 0)
        fault_at(b, f, "exited while %u thread(s) wait at __syncthreads at %s (undefined in CUDA)", b->bar_count,
                 site_str(b->bar_file, b->bar_line).s);
    for (unsigned int l = 0; l < 32; ++l) {
        if (!(b->waiting[w] >> l & 1u)) continue;
        const emu_fiber &o = b->fibers[w * 32 + l];
        if (o.mask >> lane & 1u)
            fault_at(b, f, "exited while lane %u waits for it in %s (mask 0x%08x) at %s", l, op_name(o.op), o.mask,
                     site_str(o.file, o.line).s);
    }
    reschedule(b, f, 1);
    abort(); /* an exited fiber is never resumed */
}

void fiber_main(void *arg) {
    emu_fiber *f = (emu_fiber *)arg;
    emu_block *b = f->tc.block;
    fiber_entered(&f->ctx, &b->main);
    b->k->body();
    thread_exit(b, f);
}

// ---------------------------------------------------------------------------------------------------------------
// Warp collectives

/* The lane whose value lane reads in a shuffle (PTX shfl.sync with c = ((32 - width) << 8) | (up ? 0 : 31)). */
unsigned int shfl_source(warp_op op, unsigned int lane, int arg, int width) {
    const unsigned int bval = (unsigned int)arg & 31u;
    const unsigned int segmask = ~((unsigned int)width - 1u) & 31u;
    const unsigned int min_lane = lane & segmask, max_lane = min_lane | ((unsigned int)width - 1u);
    int j;
    switch (op) {
    case WARP_SHFL_IDX:
        return min_lane | (bval & ((unsigned int)width - 1u));
    case WARP_SHFL_UP:
        j = (int)lane - (int)bval;
        return j >= (int)min_lane ? (unsigned int)j : lane;
    case WARP_SHFL_DOWN:
        j = (int)(lane + bval);
        return j <= (int)max_lane ? (unsigned int)j : lane;
    default: /* WARP_SHFL_XOR */
        j = (int)(lane ^ bval);
        return j <= (int)max_lane ? (unsigned int)j : lane;
    }
}

uint64_t poison(unsigned int size) {
    return size >= 8 ? ~(uint64_t)0 : (((uint64_t)1 << (8 * size)) - 1);
}

int64_t as_signed32(uint64_t v) {
    return (int64_t)(int32_t)(uint32_t)v;
}

/* Every lane of mask in warp w waits with mask: check they agree, compute their results and requeue them. */
void complete(emu_block *b, emu_fiber *self, unsigned int w, unsigned int mask) {
    emu_fiber *lanes = &b->fibers[w * 32];
    for (unsigned int l = 0; l < 32; ++l) {
        if (!(mask >> l & 1u)) continue;
        if (lanes[l].op != self->op || lanes[l].size != self->size)
            fault_at(b, self,
                     "lanes of warp %u meet in one rendezvous (mask 0x%08x) with different intrinsics: lane %u "
                     "calls %s at %s, lane %u calls %s at %s",
                     w, mask, self->tc.lane, op_name(self->op), site_str(self->file, self->line).s, l,
                     op_name(lanes[l].op), site_str(lanes[l].file, lanes[l].line).s);
    }
    const warp_op op = self->op;
    uint64_t all = 0;
    int64_t acc = 0;
    int first = 1;
    for (unsigned int l = 0; l < 32; ++l) {
        if (!(mask >> l & 1u)) continue;
        const uint64_t v = lanes[l].payload;
        switch (op) {
        case WARP_BALLOT:
        case WARP_ANY:
        case WARP_ALL:
        case WARP_UNI:
            all |= (uint64_t)(v != 0) << l;
            break;
        case WARP_REDUCE_ADD:
            acc = (int64_t)((uint32_t)acc + (uint32_t)v);
            break;
        case WARP_REDUCE_MIN:
        case WARP_REDUCE_MAX: {
            const int64_t x = lanes[l].is_signed ? as_signed32(v) : (int64_t)(uint32_t)v;
            if (first || (op == WARP_REDUCE_MIN ? x < acc : x > acc)) acc = x;
            break;
        }
        case WARP_REDUCE_AND:
            acc = first ? (int64_t)(uint32_t)v : (acc & (int64_t)(uint32_t)v);
            break;
        case WARP_REDUCE_OR:
            acc |= (int64_t)(uint32_t)v;
            break;
        case WARP_REDUCE_XOR:
            acc ^= (int64_t)(uint32_t)v;
            break;
        default:
            break;
        }
        first = 0;
    }
    for (unsigned int l = 0; l < 32; ++l) {
        if (!(mask >> l & 1u)) continue;
        emu_fiber &f = lanes[l];
        switch (op) {
        case WARP_SHFL_IDX:
        case WARP_SHFL_UP:
        case WARP_SHFL_DOWN:
        case WARP_SHFL_XOR: {
            const unsigned int src = shfl_source(op, l, f.arg, f.width);
            f.result = (mask >> src & 1u) ? lanes[src].payload : poison(f.size);
            break;
        }
        case WARP_BALLOT:
            f.result = all;
            break;
        case WARP_ANY:
            f.result = all != 0;
            break;
        case WARP_ALL:
            f.result = all == mask;
            break;
        case WARP_UNI:
            f.result = all == 0 || all == mask;
            break;
        case WARP_SYNC:
            f.result = 0;
            break;
        case WARP_REDUCE_ADD:
        case WARP_REDUCE_MIN:
        case WARP_REDUCE_MAX:
        case WARP_REDUCE_AND:
        case WARP_REDUCE_OR:
        case WARP_REDUCE_XOR:
            f.result = (uint64_t)(uint32_t)acc;
            break;
        case WARP_MATCH_ANY: {
            uint64_t same = 0;
            for (unsigned int o = 0; o < 32; ++o)
                if ((mask >> o & 1u) && lanes[o].payload == f.payload) same |= (uint64_t)1 << o;
            f.result = same;
            break;
        }
        case WARP_MATCH_ALL: {
            int equal = 1;
            for (unsigned int o = 0; o < 32; ++o)
                if ((mask >> o & 1u) && lanes[o].payload != f.payload) equal = 0;
            f.result = equal ? ((uint64_t)mask | ((uint64_t)1 << 32)) : 0;
            break;
        }
        default:
            break;
        }
    }
    b->waiting[w] &= ~mask;
    for (unsigned int l = 32; l-- > 0;) /* lane order, ahead of the other warps */
        if (mask >> l & 1u) push_front(b, (int)(w * 32 + l));
}

} // namespace

uint64_t warp_collective(warp_op op, unsigned int mask, uint64_t payload, unsigned int size, int is_signed, int arg,
                         int width, const char *file, int line) {
    emu_fiber *f = running(op_name(op));
    emu_block *b = f->tc.block;
    const unsigned int w = f->tc.warp, lane = f->tc.lane, bit = 1u << lane;
    if (!(mask & bit))
        fault_at(b, f, "%s at %s with mask 0x%08x, which omits the calling lane %u", op_name(op),
                 site_str(file, line).s, mask, lane);
    if (mask & ~b->present[w])
        fault_at(b, f, "%s at %s: mask 0x%08x names lanes 0x%08x that do not exist (the block has %u threads)",
                 op_name(op), site_str(file, line).s, mask, mask & ~b->present[w], b->nthreads);
    if (mask & b->exited_mask[w])
        fault_at(b, f, "%s at %s: mask 0x%08x names lanes 0x%08x that have exited", op_name(op), site_str(file, line).s,
                 mask, mask & b->exited_mask[w]);
    if (op <= WARP_SHFL_XOR && (width < 1 || width > 32 || (width & (width - 1)) != 0))
        fault_at(b, f, "%s at %s: width %d is not a power of two in 1..32", op_name(op), site_str(file, line).s, width);
    f->op = op;
    f->mask = mask;
    f->payload = payload;
    f->size = size;
    f->is_signed = is_signed;
    f->arg = arg;
    f->width = width;
    f->file = file;
    f->line = line;
    f->st = ST_WARP;
    b->waiting[w] |= bit;
    if ((b->waiting[w] & mask) == mask) {
        int agree = 1;
        for (unsigned int l = 0; l < 32; ++l)
            if ((mask >> l & 1u) && b->fibers[w * 32 + l].mask != mask) agree = 0;
        if (agree) complete(b, f, w, mask);
    }
    reschedule(b, f, 0);
    return f->result;
}

int block_barrier(barrier_kind kind, int pred, const char *file, int line) {
    emu_fiber *f = running("__syncthreads");
    emu_block *b = f->tc.block;
    if (b->exited > 0)
        fault_at(b, f, "__syncthreads at %s after %u thread(s) of the block exited (undefined in CUDA)",
                 site_str(file, line).s, b->exited);
    if (b->bar_count == 0) {
        b->bar_kind = kind;
        b->bar_file = file;
        b->bar_line = line;
        b->bar_first = f->tc.linear;
        b->bar_acc = kind == BAR_AND ? 1 : 0;
    } else if (!same_site(file, line, b->bar_file, b->bar_line) || kind != b->bar_kind) {
        fault_at(b, f, "divergent barrier: this thread is at %s while thread %s waits at %s", site_str(file, line).s,
                 thread_str(b, b->bar_first).s, site_str(b->bar_file, b->bar_line).s);
    }
    switch (kind) {
    case BAR_COUNT:
        b->bar_acc += pred != 0;
        break;
    case BAR_AND:
        b->bar_acc = b->bar_acc && pred != 0;
        break;
    case BAR_OR:
        b->bar_acc = b->bar_acc || pred != 0;
        break;
    case BAR_SYNC:
        break;
    }
    f->st = ST_BARRIER;
    if (++b->bar_count == b->nthreads) {
        for (unsigned int i = 0; i < b->nthreads; ++i) {
            b->fibers[i].bar_result = b->bar_acc;
            push(b, (int)i);
        }
        b->bar_count = 0;
    }
    reschedule(b, f, 0);
    return f->bar_result;
}

void yield_point(void) {
    if (tl_thread == nullptr || config().seed == 0 || (rng_next() & 1u) == 0) return;
    emu_fiber *f = running("atomic");
    push(f->tc.block, (int)f->tc.linear);
    reschedule(f->tc.block, f, 0);
}

void device_trap(const char *file, int line) {
    emu_fiber *f = running("__trap");
    fault_at(f->tc.block, f, "__trap() at %s", site_str(file, line).s);
}

void *dynamic_shared(void) {
    emu_block *b = cur_thread("dynamic shared memory").block;
    return b->dyn_shared.empty() ? nullptr : b->dyn_shared.data();
}

long long device_clock(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

void outside_kernel(const char *what) {
    fprintf(stderr, "kvwire CUDA emulator: %s used outside a kernel\n", what);
    abort();
}

} // namespace kwemu

unsigned int __activemask(void) {
    const kwemu::thread_ctx &tc = kwemu::cur_thread("__activemask");
    return tc.block->present[tc.warp] & ~tc.block->exited_mask[tc.warp];
}

namespace kwemu {

// ---------------------------------------------------------------------------------------------------------------
// A grid

namespace {

/* Runs block (bx, by, bz) of b->k to the end, a fault or a deadlock. */
void run_block(emu_block *b, unsigned int bx, unsigned int by, unsigned int bz) {
    const dim3 bd = b->k->block;
    for (unsigned int i = 0; i < b->nthreads; ++i) {
        emu_fiber &f = b->fibers[i];
        f.st = ST_NEW;
        f.mask = 0;
        f.tc.thread_idx = uint3{i % bd.x, (i / bd.x) % bd.y, i / (bd.x * bd.y)};
        f.tc.linear = i;
        f.tc.lane = i % 32;
        f.tc.warp = i / 32;
        f.tc.block_idx = uint3{bx, by, bz};
        f.tc.block_dim = bd;
        f.tc.grid_dim = b->k->grid;
        f.tc.block = b;
    }
    if (b->random) {
        b->policy = (int)(rng_next() % POLICY_COUNT);
        uint64_t warp_prio[32];
        for (uint64_t &p : warp_prio)
            p = rng_next();
        /* unique keys: the random part above, the thread index (lower first) below */
        for (unsigned int i = 0; i < b->nthreads; ++i)
            b->prio[i] = ((b->policy == POLICY_WARP_PRIORITY ? warp_prio[i / 32] : rng_next()) << 11) | (2047u - i);
    }
    b->runq.clear();
    b->head = 0;
    for (unsigned int i = 0; i < b->nthreads; ++i)
        insert(b, (int)i); /* still ST_NEW: started at its first pick */
    b->live = b->nthreads;
    b->exited = 0;
    b->bar_count = 0;
    for (unsigned int w = 0; w < 32; ++w) {
        const unsigned int first = w * 32;
        const unsigned int n = first >= b->nthreads ? 0 : (b->nthreads - first < 32 ? b->nthreads - first : 32);
        b->present[w] = n == 32 ? 0xffffffffu : ((1u << n) - 1u);
        b->waiting[w] = 0;
        b->exited_mask[w] = 0;
    }
    if (!b->dyn_shared.empty()) memset(b->dyn_shared.data(), 0xff, b->dyn_shared.size());
    const int first = pick(b);
    resume(b, &b->main, &b->fibers[(size_t)first], 0);
    tl_thread = nullptr;
    for (unsigned int i = 0; i < b->nthreads; ++i) {
        const emu_fiber &f = b->fibers[i];
        if (f.st == ST_NEW) continue;
        char *const lo = stack_lo(i);
        const uintptr_t sp = (uintptr_t)f.ctx.sp; /* not kept by the ucontext switch: then the whole stack */
        g_stacks.stale[i] = f.ctx.use_ucontext || sp < (uintptr_t)lo + 512 ? lo : (char *)(sp - 512);
    }
}

uint64_t gcd64(uint64_t a, uint64_t b) {
    while (b != 0) {
        const uint64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

} // namespace

void run_grid(const kernel_launch &k) {
    emu_block b;
    b.k = &k;
    b.nthreads = k.block.x * k.block.y * k.block.z;
    b.nwarps = (b.nthreads + 31) / 32;
    b.random = config().seed != 0;
    b.ahead = 0;
    b.policy = POLICY_UNIFORM;
    b.prio.assign(b.nthreads, 0);
    b.bar_kind = BAR_SYNC;
    b.bar_acc = 0;
    b.bar_file = nullptr;
    b.bar_line = 0;
    b.bar_first = 0;
    b.faulted = 0;
    b.fibers.assign(b.nthreads, emu_fiber{});
    b.dyn_shared.assign(k.shmem, 0xff);
    b.main.use_ucontext = config().use_ucontext || !fiber_has_fast_switch();
    stacks_ensure(b.nthreads);
    ++counters().kernels;

    const uint64_t total = (uint64_t)k.grid.x * k.grid.y * k.grid.z;
    /* the block order: i -> (a i + c) mod total, a permutation when gcd(a, total) = 1 */
    uint64_t a = 1, c = 0;
    if (b.random && total > 1) {
        c = rng_next() % total;
        do {
            a = 1 + rng_next() % total;
        } while (gcd64(a, total) != 1);
    }
    for (uint64_t i = 0; i < total && !b.faulted; ++i) {
        const uint64_t lin = (uint64_t)(((unsigned __int128)a * i + c) % total);
        const unsigned int bx = (unsigned int)(lin % k.grid.x);
        const unsigned int by = (unsigned int)((lin / k.grid.x) % k.grid.y);
        const unsigned int bz = (unsigned int)(lin / ((uint64_t)k.grid.x * k.grid.y));
        b.ahead = !b.random && (i & 1) == 0;
        run_block(&b, bx, by, bz);
        ++counters().blocks;
        counters().threads += b.nthreads;
    }
    for (emu_fiber &f : b.fibers)
        fiber_release(&f.ctx);
    fiber_release(&b.main);
    if (b.faulted) set_fault(k.device, cudaErrorLaunchFailure, b.fault);
}

} // namespace kwemu
