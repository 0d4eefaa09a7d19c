/* kw_hugepage.c: 2 MiB-aligned allocations advised MADV_HUGEPAGE (see kw_hugepage.h). posix_memalign keeps free() the
 * one release for every size, under ASan too. */
#define _DEFAULT_SOURCE
#include "kw_hugepage.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

int kw_hugepages_enabled(void) {
    const char *v = getenv("KW_HUGEPAGES");
    return v == NULL || strcmp(v, "0") != 0;
}

void *kw_hugepage_alloc(size_t size) {
    if (size < KW_HUGEPAGE_MIN || !kw_hugepages_enabled()) {
        const size_t rounded = (size + 63) & ~(size_t)63; /* aligned_alloc wants a multiple of the alignment */
        return rounded < size ? NULL : aligned_alloc(64, rounded);
    }
    void *p = NULL;
    if (posix_memalign(&p, KW_HUGEPAGE_SIZE, size) != 0) return NULL;
#ifdef MADV_HUGEPAGE
    (void)madvise(p, size & ~(KW_HUGEPAGE_SIZE - 1),
                  MADV_HUGEPAGE); /* only the whole 2 MiB blocks: no RSS for a tail */
#endif
    return p;
}
