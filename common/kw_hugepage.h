/* kw_hugepage.h: large, long-lived host allocations (packed weights, KV caches, scratch) on transparent huge pages
 * where the kernel offers them. Streaming a model's weights once per decoded token through 4 KiB pages costs a TLB miss
 * every 4 KiB and stops the hardware prefetchers at every 4 KiB boundary; on Linux in THP "madvise" mode anonymous
 * memory gets 2 MiB pages only when asked (madvise MADV_HUGEPAGE). Huge pages change where memory lives, never its
 * contents. */
#ifndef KW_HUGEPAGE_H
#define KW_HUGEPAGE_H

#include <stddef.h>

/* kw_hugepage_alloc's blocks of at least this many bytes are 2 MiB-aligned and advised; smaller ones are 64-byte
 * aligned as before. */
#define KW_HUGEPAGE_MIN  ((size_t)4 << 20)
#define KW_HUGEPAGE_SIZE ((size_t)2 << 20)
/* kw_hugepage_alloc_weight's slabs: smaller weights are cut from these (advised as a whole). */
#define KW_HUGEPAGE_SLAB ((size_t)32 << 20)

/* 0 if the environment variable KW_HUGEPAGES is 0, off, no or false (any case), else 1 (unset, empty, 1/on/yes/true;
 * any other value is reported once as a warning and leaves huge pages on). Read at every call, so two models loaded in
 * one process can differ. */
int kw_hugepages_enabled(void);

/* size bytes (size > 0), 64-byte aligned; when size >= KW_HUGEPAGE_MIN and kw_hugepages_enabled(), 2 MiB-aligned with
 * its whole 2 MiB blocks advised MADV_HUGEPAGE (Linux; best effort: a refusal is ignored), a mapping of its own (so the
 * advice leaves with it). Returns memory owned by the caller, released only with kw_hugepage_free, or NULL when out of
 * memory. */
void *kw_hugepage_alloc(size_t size);

/* Like kw_hugepage_alloc, for memory that lives as long as a model (a packed weight), size a multiple of 64: blocks
 * below KW_HUGEPAGE_MIN are cut 64-byte aligned from shared slabs of KW_HUGEPAGE_SLAB bytes on huge pages (so small
 * quantized weights get them too, without rounding each up to 2 MiB); a slab is freed when its last block is, and a
 * freed block's bytes are not reused before that (hence weights only: they come and go with their model). Not in
 * ASan builds (each block is then its own allocation) or with KW_HUGEPAGES=0. Released only with kw_hugepage_free. */
void *kw_hugepage_alloc_weight(size_t size);

/* Releases memory from kw_hugepage_alloc or kw_hugepage_alloc_weight; NULL is a no-op. Thread-safe. */
void kw_hugepage_free(void *p);

/* What kw_hugepage_smaps_kb sums over the mappings it looks at. */
enum kw_smaps_field {
    KW_SMAPS_ANON_HUGE, /* AnonHugePages: what the kernel gave on huge pages */
    KW_SMAPS_ADVISED,   /* the size of the mappings that carry madvise(MADV_HUGEPAGE) ("hg" in VmFlags): what this
                           process asked for, whether or not the kernel could supply huge pages at that moment */
};

/* The kB of field summed over the mappings of this process (/proc/self/smaps) that overlap [p, p + size); size 0: over
 * all of them. -1 where that file cannot be read (no procfs). For benchmarks and tests: it reads the whole file. */
long kw_hugepage_smaps_kb(enum kw_smaps_field field, const void *p, size_t size);

#endif
