/* kw_arena.h: a bump allocator for per-request scratch memory.
 *
 * Allocations are carved from chunks owned by the arena and are released all at once by kw_arena_reset or
 * kw_arena_free; nothing allocated from an arena is freed individually. Memory is 64-byte aligned (cache line and
 * AVX-512 friendly). Not thread-safe: one arena per thread or per request.
 */
#ifndef KW_ARENA_H
#define KW_ARENA_H

#include <stddef.h>

struct kw_arena_chunk;

typedef struct kw_arena {
    struct kw_arena_chunk *chunks; /* owned; newest first */
    size_t chunk_size;             /* default size of a new chunk */
    size_t bytes_in_use;           /* sum of allocation sizes since the last reset */
    size_t bytes_reserved;         /* sum of chunk capacities */
} kw_arena;

/* Initialises an empty arena whose chunks are at least chunk_size bytes (0 picks 1 MiB). Allocates nothing. */
void kw_arena_init(kw_arena *arena, size_t chunk_size);

/* Returns size bytes of 64-byte aligned, uninitialised memory owned by the arena, or NULL when out of memory or on
 * size overflow. size 0 returns a valid unique pointer. */
void *kw_arena_alloc(kw_arena *arena, size_t size);

/* Like kw_arena_alloc but zero-filled, for count elements of elem_size bytes (overflow-checked). */
void *kw_arena_calloc(kw_arena *arena, size_t count, size_t elem_size);

/* Forgets every allocation but keeps the largest chunk for reuse. */
void kw_arena_reset(kw_arena *arena);

/* Releases all memory. The arena may be initialised again. A NULL arena is a no-op. */
void kw_arena_free(kw_arena *arena);

#endif /* KW_ARENA_H */
