/* kw_cuda_emu_fiber.cpp: the fiber switch of the CUDA emulator (see kw_cuda_emu_fiber.h).
 *
 * x86-64 (System V): kwemu_ctx_switch(save, new_sp) pushes rbp, rbx, r12-r15 and an 8-byte slot holding MXCSR and the
 * x87 control word, stores rsp in *save, loads new_sp and pops the same frame from it. A new fiber's stack is laid out
 * as such a frame whose return address is kwemu_ctx_trampoline, which calls r12(r13) with a 16-byte aligned stack.
 * The ucontext path (every other machine, or on request) is glibc's makecontext/swapcontext: portable and about
 * twenty times slower (swapcontext saves the signal mask with a system call).
 */
#include "kernels/cuda/emu/kw_cuda_emu_fiber.h"

#include <stdint.h>
#include <stdlib.h>
#include <ucontext.h>

#ifdef KWEMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if defined(__x86_64__) && defined(__linux__)
#define KWEMU_FAST_SWITCH 1
extern "C" void kwemu_ctx_switch(void **save_sp, void *new_sp);
extern "C" void kwemu_ctx_trampoline(void);
asm(R"(
    .text
    .globl kwemu_ctx_switch
    .type kwemu_ctx_switch, @function
kwemu_ctx_switch:
    .cfi_startproc
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .cfi_endproc
    .size kwemu_ctx_switch, .-kwemu_ctx_switch

    .globl kwemu_ctx_trampoline
    .type kwemu_ctx_trampoline, @function
kwemu_ctx_trampoline:
    .cfi_startproc
    .cfi_undefined rip
    movq %r13, %rdi
    callq *%r12
    ud2
    .cfi_endproc
    .size kwemu_ctx_trampoline, .-kwemu_ctx_trampoline
    .section .note.GNU-stack, "", @progbits
    .text
)");
#endif

namespace kwemu {

int fiber_has_fast_switch(void) {
#ifdef KWEMU_FAST_SWITCH
    return 1;
#else
    return 0;
#endif
}

/* makecontext passes ints: the entry and its argument travel as two halves each. */
static void ucontext_entry(unsigned int fn_lo, unsigned int fn_hi, unsigned int arg_lo, unsigned int arg_hi) {
    void (*entry)(void *) = (void (*)(void *))(((uintptr_t)fn_hi << 32) | fn_lo);
    void *arg = (void *)(((uintptr_t)arg_hi << 32) | arg_lo);
    entry(arg);
    abort(); /* entry never returns */
}

void fiber_prepare(fiber_ctx *ctx, char *stack_lo, size_t size, void (*entry)(void *), void *arg, int use_ucontext) {
    ctx->stack_lo = stack_lo;
    ctx->stack_size = size;
    ctx->asan_fake = nullptr;
#ifndef KWEMU_FAST_SWITCH
    use_ucontext = 1;
#endif
    ctx->use_ucontext = use_ucontext;
    if (use_ucontext) {
        if (ctx->uc == nullptr) ctx->uc = malloc(sizeof(ucontext_t));
        if (ctx->uc == nullptr) abort();
        ucontext_t *uc = (ucontext_t *)ctx->uc;
        getcontext(uc);
        uc->uc_stack.ss_sp = stack_lo;
        uc->uc_stack.ss_size = size;
        uc->uc_link = nullptr;
        const uintptr_t fn = (uintptr_t)entry, a = (uintptr_t)arg;
        makecontext(uc, (void (*)(void))ucontext_entry, 4, (unsigned int)fn, (unsigned int)(fn >> 32), (unsigned int)a,
                    (unsigned int)(a >> 32));
        return;
    }
#ifdef KWEMU_FAST_SWITCH
    /* after the final `ret` of the switch, rsp is the 16-byte aligned top: the trampoline's call then leaves the
     * entry with rsp = 8 mod 16, as the ABI requires */
    uint64_t *sp = (uint64_t *)(((uintptr_t)(stack_lo + size)) & ~(uintptr_t)15);
    *--sp = (uint64_t)(uintptr_t)kwemu_ctx_trampoline; /* return address */
    *--sp = 0;                                         /* rbp */
    *--sp = 0;                                         /* rbx */
    *--sp = (uint64_t)(uintptr_t)entry;                /* r12 */
    *--sp = (uint64_t)(uintptr_t)arg;                  /* r13 */
    *--sp = 0;                                         /* r14 */
    *--sp = 0;                                         /* r15 */
    uint32_t mxcsr = 0;
    uint16_t fpucw = 0;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpucw));
    *--sp = (uint64_t)mxcsr | ((uint64_t)fpucw << 32);
    ctx->sp = sp;
#else
    (void)entry, (void)arg;
#endif
}

void fiber_switch(fiber_ctx *from, fiber_ctx *to, int from_exits) {
#ifdef KWEMU_ASAN
    __sanitizer_start_switch_fiber(from_exits ? nullptr : &from->asan_fake, to->stack_lo, to->stack_size);
#else
    (void)from_exits;
#endif
    if (to->use_ucontext) {
        if (from->uc == nullptr) from->uc = malloc(sizeof(ucontext_t));
        if (from->uc == nullptr) abort();
        swapcontext((ucontext_t *)from->uc, (ucontext_t *)to->uc);
    } else {
#ifdef KWEMU_FAST_SWITCH
        kwemu_ctx_switch(&from->sp, to->sp);
#else
        abort();
#endif
    }
#ifdef KWEMU_ASAN
    const void *bottom = nullptr;
    size_t size = 0;
    __sanitizer_finish_switch_fiber(from->asan_fake, &bottom, &size);
#endif
}

void fiber_entered(fiber_ctx *self, fiber_ctx *came_from) {
#ifdef KWEMU_ASAN
    const void *bottom = nullptr;
    size_t size = 0;
    __sanitizer_finish_switch_fiber(nullptr, &bottom, &size);
    if (came_from != nullptr && came_from->stack_lo == nullptr) {
        came_from->stack_lo = (char *)bottom;
        came_from->stack_size = size;
    }
#else
    (void)came_from;
#endif
    (void)self;
}

void fiber_stack_reset(char *stack_lo, size_t size) {
#ifdef KWEMU_ASAN
    __asan_unpoison_memory_region(stack_lo, size);
#else
    (void)stack_lo, (void)size;
#endif
}

void fiber_release(fiber_ctx *ctx) {
    free(ctx->uc);
    ctx->uc = nullptr;
}

} // namespace kwemu
