/* kw_hugepage.c: 2 MiB-aligned allocations advised MADV_HUGEPAGE, and the weight slabs (see kw_hugepage.h).
 * Every advised block and slab is a mapping of its own, released with munmap: memory advised MADV_HUGEPAGE keeps the
 * advice after free(), and glibc hands a freed heap range to unrelated later mallocs (KW_HUGEPAGES=0 ones too). Under
 * ASan big blocks stay posix_memalign'ed (bounds and leaks checked) and are advised MADV_NOHUGEPAGE before free(). */
#define _DEFAULT_SOURCE
#include "kw_hugepage.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>

#include "common/kw_log.h"

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
    static int warned; /* a bad value is reported once, not at every allocation */
    const char *v = getenv("KW_HUGEPAGES");
    if (v == NULL || *v == '\0') return 1;
    static const char *const off[] = {"0", "off", "no", "false"}, *const on[] = {"1", "on", "yes", "true"};
    for (size_t i = 0; i < sizeof off / sizeof off[0]; i++) {
        if (strcasecmp(v, off[i]) == 0) return 0;
        if (strcasecmp(v, on[i]) == 0) return 1;
    }
    if (!__atomic_exchange_n(&warned, 1, __ATOMIC_RELAXED))
        KW_LOG_WARN("KW_HUGEPAGES=%s is not 0/off/no/false or 1/on/yes/true; huge pages stay on", v);
    return 1;
}

/* 64-byte aligned, never advised. */
static void *kw_small_alloc(size_t size) {
    const size_t rounded = (size + 63) & ~(size_t)63; /* aligned_alloc wants a multiple of the alignment */
    return rounded < size ? NULL : aligned_alloc(64, rounded);
}

/* The live advised regions: [0, g_n) of g_regions (owned, as is each region's memory), under g_lock. A region is a
 * weight slab (KW_HUGEPAGE_SLAB bytes, blocks cut from it in bump order) or one big block of kw_hugepage_alloc. */
typedef struct kw_region {
    char *base;
    size_t size; /* bytes from base */
    size_t used; /* a slab's bytes handed out, bump order */
    size_t live; /* blocks not yet freed (a big block: 1) */
    int slab;    /* 1: a weight slab; 0: one big block */
    int mapped;  /* 1: mmap'ed (munmap); 0: posix_memalign'ed (ASan builds: free) */
} kw_region;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static kw_region *g_regions;
static size_t g_n, g_cap;
static size_t g_any; /* g_n, read without the lock by kw_hugepage_free's fast path */

static size_t kw_page_round(size_t size) {
    return (size + 4095) & ~(size_t)4095;
}

/* size bytes 2 MiB-aligned, its whole 2 MiB blocks advised (no RSS for a partial last one); *mapped says how it is
 * released (kw_region_release). NULL when out of memory. */
static char *kw_huge_block(size_t size, int *mapped) {
#if KW_HUGEPAGE_SLABS
    const size_t len = kw_page_round(size);
    if (len < size || len > SIZE_MAX - KW_HUGEPAGE_SIZE) return NULL;
    char *m = mmap(NULL, len + KW_HUGEPAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return NULL;
    char *p = (char *)(((uintptr_t)m + KW_HUGEPAGE_SIZE - 1) & ~(uintptr_t)(KW_HUGEPAGE_SIZE - 1));
    if (p > m) (void)munmap(m, (size_t)(p - m));                                             /* the unaligned head */
    if (m + KW_HUGEPAGE_SIZE > p) (void)munmap(p + len, (size_t)(m + KW_HUGEPAGE_SIZE - p)); /* past len */
    *mapped = 1;
#else
    void *v = NULL;
    if (posix_memalign(&v, KW_HUGEPAGE_SIZE, size) != 0) return NULL;
    char *p = v;
    *mapped = 0;
#endif
#ifdef MADV_HUGEPAGE
    (void)madvise(p, size & ~(KW_HUGEPAGE_SIZE - 1), MADV_HUGEPAGE);
#endif
    return p;
}

/* Releases a region's memory (not under g_lock). */
static void kw_region_release(const kw_region *r) {
    if (r->mapped) {
        (void)munmap(r->base, kw_page_round(r->size));
        return;
    }
#ifdef MADV_NOHUGEPAGE
    (void)madvise(r->base, r->size & ~(KW_HUGEPAGE_SIZE - 1), MADV_NOHUGEPAGE);
#endif
    free(r->base);
}

/* Records a region (under g_lock): 0, or -1 when the table cannot grow. */
static int kw_region_add(const kw_region *r) {
    if (g_n == g_cap) {
        const size_t cap = g_cap ? g_cap * 2 : 16;
        kw_region *grown = realloc(g_regions, cap * sizeof *grown);
        if (!grown) return -1;
        g_regions = grown;
        g_cap = cap;
    }
    g_regions[g_n++] = *r;
    __atomic_store_n(&g_any, g_n, __ATOMIC_RELEASE);
    return 0;
}

void *kw_hugepage_alloc(size_t size) {
    if (size < KW_HUGEPAGE_MIN || !kw_hugepages_enabled()) return kw_small_alloc(size);
    kw_region r = {.size = size, .used = size, .live = 1};
    if (!(r.base = kw_huge_block(size, &r.mapped))) return NULL;
    pthread_mutex_lock(&g_lock);
    const int rc = kw_region_add(&r);
    pthread_mutex_unlock(&g_lock);
    if (rc < 0) {
        kw_region_release(&r);
        return NULL;
    }
    return r.base;
}

void *kw_hugepage_alloc_weight(size_t size) {
    if (!KW_HUGEPAGE_SLABS || size >= KW_HUGEPAGE_MIN || size % 64 != 0 || !kw_hugepages_enabled())
        return kw_hugepage_alloc(size);
    void *p = NULL;
    pthread_mutex_lock(&g_lock);
    for (size_t i = 0; i < g_n && !p; ++i) /* first fit: later small weights fill the tails of earlier slabs */
        if (g_regions[i].slab && KW_HUGEPAGE_SLAB - g_regions[i].used >= size) {
            p = g_regions[i].base + g_regions[i].used;
            g_regions[i].used += size;
            g_regions[i].live++;
        }
    if (!p) {
        kw_region r = {.size = KW_HUGEPAGE_SLAB, .used = size, .live = 1, .slab = 1};
        if ((r.base = kw_huge_block(KW_HUGEPAGE_SLAB, &r.mapped)) != NULL) {
            if (kw_region_add(&r) == 0)
                p = r.base;
            else
                kw_region_release(&r);
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
            if ((uintptr_t)p - (uintptr_t)g_regions[i].base >= g_regions[i].size) continue;
            kw_region gone = {0};
            if (--g_regions[i].live == 0) { /* its last block: the region goes */
                gone = g_regions[i];
                g_regions[i] = g_regions[--g_n];
                __atomic_store_n(&g_any, g_n, __ATOMIC_RELEASE);
            }
            pthread_mutex_unlock(&g_lock);
            if (gone.base) kw_region_release(&gone);
            return;
        }
        pthread_mutex_unlock(&g_lock);
    }
    free(p);
}

long kw_hugepage_smaps_kb(enum kw_smaps_field field, const void *p, size_t size) {
    FILE *f = fopen("/proc/self/smaps", "r");
    if (f == NULL) return -1;
    char line[512];
    long total = 0, kb, mapping_kb = 0;
    int in = 0;
    const uintptr_t lo = (uintptr_t)p, hi = lo + size;
    while (fgets(line, sizeof line, f)) {
        unsigned long a, b;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s", &a, &b, perms) == 3) { /* a mapping's first line; then its fields */
            in = size == 0 || (a < hi && b > lo);
            mapping_kb = (long)((b - a) / 1024);
        } else if (in && field == KW_SMAPS_ANON_HUGE && sscanf(line, "AnonHugePages: %ld kB", &kb) == 1) {
            total += kb;
        } else if (in && field == KW_SMAPS_ADVISED && strncmp(line, "VmFlags:", 8) == 0 && strstr(line, " hg")) {
            total += mapping_kb;
        }
    }
    fclose(f);
    return total;
}
