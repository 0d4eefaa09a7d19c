/* kw_cuda_emu_fiber.h: stackful fibers for the CUDA emulator's threads (internal to kernels/cuda/emu).
 *
 * A fiber is a saved stack pointer (the x86-64 switch in kw_cuda_emu_fiber.cpp saves the callee-saved registers, MXCSR
 * and the x87 control word on the stack it leaves) or, on other machines or when asked, a ucontext_t. Switching is
 * cooperative: fiber_switch saves the running context and resumes another; nothing preempts a fiber. Under
 * AddressSanitizer every switch is announced with __sanitizer_start/finish_switch_fiber, so ASan knows which stack is
 * live. Not here: scheduling (kw_cuda_emu_sched.cpp) and stack allocation (stacks come from the caller).
 */
#ifndef KW_CUDA_EMU_FIBER_H
#define KW_CUDA_EMU_FIBER_H

#include <stddef.h>

/* KWEMU_ASAN: built with AddressSanitizer (gcc defines __SANITIZE_ADDRESS__, clang has the feature test). */
#if defined(__SANITIZE_ADDRESS__)
#define KWEMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KWEMU_ASAN 1
#endif
#endif

namespace kwemu {

struct fiber_ctx {
    void *sp = nullptr;        /* saved stack pointer (hand-written switch) */
    void *uc = nullptr;        /* ucontext_t (ucontext switch), allocated by fiber_prepare, freed by fiber_release */
    char *stack_lo = nullptr;  /* the stack, lowest address; for a host thread's own context filled in by ASan */
    size_t stack_size = 0;     /* its size */
    void *asan_fake = nullptr; /* ASan's fake stack of this context while it is switched out */
    int use_ucontext = 0;      /* how this context is switched */
};

/* 1 when the hand-written switch exists for this machine (x86-64); elsewhere every fiber uses ucontext. */
int fiber_has_fast_switch(void);

/* Prepares ctx so that the next fiber_switch to it calls entry(arg) on the stack [stack_lo, stack_lo + size).
 * entry must never return: a finished fiber switches away for good (fiber_switch with from_exits = 1). */
void fiber_prepare(fiber_ctx *ctx, char *stack_lo, size_t size, void (*entry)(void *), void *arg, int use_ucontext);

/* Saves the running context into from and resumes to; returns when something switches back to from. from_exits = 1
 * says from will never run again (ASan releases its fake stack). A host thread's own context is a default fiber_ctx
 * with the same use_ucontext as the fibers it switches to. */
void fiber_switch(fiber_ctx *from, fiber_ctx *to, int from_exits);

/* The first call a new fiber's entry makes (ASan: completes the switch that started it and records the bounds of
 * the stack it came from into came_from, which is how a host thread's context learns its stack). */
void fiber_entered(fiber_ctx *self, fiber_ctx *came_from);

/* Clears ASan's shadow of a stack that a fiber left without returning (abandoned after a fault), before reuse. */
void fiber_stack_reset(char *stack_lo, size_t size);

/* Frees what fiber_prepare allocated (the ucontext_t). */
void fiber_release(fiber_ctx *ctx);

} // namespace kwemu

#endif /* KW_CUDA_EMU_FIBER_H */
