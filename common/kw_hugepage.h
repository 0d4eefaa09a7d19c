/* kw_hugepage.h: large, long-lived host allocations (packed weights, KV caches, scratch) on transparent huge pages
 * where the kernel offers them. Streaming a model's weights once per decoded token through 4 KiB pages costs a TLB miss
 * every 4 KiB; on Linux in THP "madvise" mode anonymous memory gets 2 MiB pages only when asked. */
#ifndef KW_HUGEPAGE_H
#define KW_HUGEPAGE_H

#include <stddef.h>

/* Allocations of at least this many bytes are 2 MiB-aligned and advised MADV_HUGEPAGE; smaller ones are 64-byte
 * aligned as before. */
#define KW_HUGEPAGE_MIN  ((size_t)4 << 20)
#define KW_HUGEPAGE_SIZE ((size_t)2 << 20)

/* 1 unless the environment variable KW_HUGEPAGES is "0" (read at every call, so two models loaded in one process can
 * differ). Huge pages change where memory lives, never its contents. */
int kw_hugepages_enabled(void);

/* size bytes (size > 0), 64-byte aligned; when size >= KW_HUGEPAGE_MIN and kw_hugepages_enabled(), 2 MiB-aligned with
 * its whole 2 MiB blocks advised MADV_HUGEPAGE (Linux; the advice is best effort: refusal is ignored). Returns memory
 * owned by the caller, released with free(), or NULL when out of memory. */
void *kw_hugepage_alloc(size_t size);

#endif
