/* kw_hugepage.c: 2 MiB-aligned allocations advised MADV_HUGEPAGE, and the weight slabs (see kw_hugepage.h).
 * posix_memalign keeps free() the release of every block that is not cut from a slab, under ASan too. */
#define _DEFAULT_SOURCE
#include "kw_hugepage.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#if defined(__SANITIZE_ADDRESS__)
#define KW_HUGEPAGE_SLABS 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KW_HUGEPAGE_SLABS 0
#endif
#endif
#ifndef KW_HUGEPAGE_SLABS
#define KW_HUGEPAGE_SLABS 1 /* ASan sees every block on its own (bounds, leaks) when slabs are off */
#endif

int kw_hugepages_enabled(void) {
    const char *v = getenv("KW_HUGEPAGES");
    return v == NULL || strcmp(v, "0") != 0;
}

/* 64-byte aligned, never advised. */
static void *kw_small_alloc(size_t size) {
    const size_t rounded = (size + 63) & ~(size_t)63; /* aligned_alloc wants a multiple of the alignment */
    return rounded < size ? NULL : aligned_alloc(64, rounded);
}

/* size bytes 2 MiB-aligned, its whole 2 MiB blocks advised (no RSS for a partial last one). */
static void *kw_huge_block(size_t size) {
    void *p = NULL;
    if (posix_memalign(&p, KW_HUGEPAGE_SIZE, size) != 0) return NULL;
#ifdef MADV_HUGEPAGE
    (void)madvise(p, size & ~(KW_HUGEPAGE_SIZE - 1), MADV_HUGEPAGE);
#endif
    return p;
}

void *kw_hugepage_alloc(size_t size) {
    if (size < KW_HUGEPAGE_MIN || !kw_hugepages_enabled()) return kw_small_alloc(size);
    return kw_huge_block(size);
}

/* The live slabs: [0, g_n) of g_slabs (owned, as is each base), under g_lock. */
typedef struct kw_slab {
    char *base;
    size_t used; /* bytes handed out from base, bump order */
    size_t live; /* blocks not yet freed */
} kw_slab;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static kw_slab *g_slabs;
static size_t g_n, g_cap;
static size_t g_any; /* g_n, read without the lock by kw_hugepage_free's fast path */

void *kw_hugepage_alloc_weight(size_t size) {
    if (!KW_HUGEPAGE_SLABS || size >= KW_HUGEPAGE_MIN || size % 64 != 0 || !kw_hugepages_enabled())
        return kw_hugepage_alloc(size);
    void *p = NULL;
    pthread_mutex_lock(&g_lock);
    for (size_t i = 0; i < g_n && !p; ++i) /* first fit: later small weights fill the tails of earlier slabs */
        if (KW_HUGEPAGE_SLAB - g_slabs[i].used >= size) {
            p = g_slabs[i].base + g_slabs[i].used;
            g_slabs[i].used += size;
            g_slabs[i].live++;
        }
    if (!p && g_n == g_cap) {
        const size_t cap = g_cap ? g_cap * 2 : 16;
        kw_slab *grown = realloc(g_slabs, cap * sizeof *grown);
        if (grown) {
            g_slabs = grown;
            g_cap = cap;
        }
    }
    if (!p && g_n < g_cap) {
        char *base = kw_huge_block(KW_HUGEPAGE_SLAB);
        if (base) {
            g_slabs[g_n++] = (kw_slab){base, size, 1};
            __atomic_store_n(&g_any, g_n, __ATOMIC_RELEASE);
            p = base;
        }
    }
    pthread_mutex_unlock(&g_lock);
    return p ? p : kw_small_alloc(size); /* no new slab (out of memory for 32 MiB at once): a block of its own */
}

void kw_hugepage_free(void *p) {
    if (p == NULL) return;
    if (__atomic_load_n(&g_any, __ATOMIC_ACQUIRE) != 0) {
        pthread_mutex_lock(&g_lock);
        for (size_t i = 0; i < g_n; ++i) {
            if ((uintptr_t)p - (uintptr_t)g_slabs[i].base >= KW_HUGEPAGE_SLAB) continue;
            char *base = NULL;
            if (--g_slabs[i].live == 0) { /* its last block: the slab goes */
                base = g_slabs[i].base;
                g_slabs[i] = g_slabs[--g_n];
                __atomic_store_n(&g_any, g_n, __ATOMIC_RELEASE);
            }
            pthread_mutex_unlock(&g_lock);
            free(base);
            return;
        }
        pthread_mutex_unlock(&g_lock);
    }
    free(p);
}
