/* kw_arena.c: chunked bump allocation with 64-byte alignment. */
#include "kw_arena.h"
#include "kw_size.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define KW_ARENA_ALIGN 64u

struct kw_arena_chunk {
    struct kw_arena_chunk *next;
    size_t capacity; /* usable bytes after the header */
    size_t used;
    /* data follows, aligned to KW_ARENA_ALIGN */
};

static unsigned char *kw_arena_chunk_data(struct kw_arena_chunk *c) {
    return (unsigned char *)c + ((sizeof *c + KW_ARENA_ALIGN - 1) & ~(size_t)(KW_ARENA_ALIGN - 1));
}

void kw_arena_init(kw_arena *arena, size_t chunk_size) {
    memset(arena, 0, sizeof *arena);
    arena->chunk_size = chunk_size ? chunk_size : (size_t)1 << 20;
}

static struct kw_arena_chunk *kw_arena_new_chunk(size_t capacity) {
    const size_t header = (sizeof(struct kw_arena_chunk) + KW_ARENA_ALIGN - 1) & ~(size_t)(KW_ARENA_ALIGN - 1);
    size_t total;
    if (kw_size_add(header, capacity, &total) < 0 || kw_size_align_up(total, KW_ARENA_ALIGN, &total) < 0) return NULL;
    struct kw_arena_chunk *c = aligned_alloc(KW_ARENA_ALIGN, total);
    if (!c) return NULL;
    c->next = NULL;
    c->capacity = capacity;
    c->used = 0;
    return c;
}

void *kw_arena_alloc(kw_arena *arena, size_t size) {
    size_t need;
    if (kw_size_align_up(size ? size : 1, KW_ARENA_ALIGN, &need) < 0) return NULL;
    struct kw_arena_chunk *c = arena->chunks;
    if (!c || c->capacity - c->used < need) {
        const size_t capacity = need > arena->chunk_size ? need : arena->chunk_size;
        c = kw_arena_new_chunk(capacity);
        if (!c) return NULL;
        c->next = arena->chunks;
        arena->chunks = c;
        arena->bytes_reserved += capacity;
    }
    void *p = kw_arena_chunk_data(c) + c->used;
    c->used += need;
    arena->bytes_in_use += size;
    return p;
}

void *kw_arena_calloc(kw_arena *arena, size_t count, size_t elem_size) {
    size_t size;
    if (kw_size_mul(count, elem_size, &size) < 0) return NULL;
    void *p = kw_arena_alloc(arena, size);
    if (p) memset(p, 0, size);
    return p;
}

void kw_arena_reset(kw_arena *arena) {
    struct kw_arena_chunk *keep = NULL;
    for (struct kw_arena_chunk *c = arena->chunks; c; c = c->next)
        if (!keep || c->capacity > keep->capacity) keep = c;
    struct kw_arena_chunk *c = arena->chunks;
    while (c) {
        struct kw_arena_chunk *next = c->next;
        if (c != keep) free(c);
        c = next;
    }
    arena->chunks = keep;
    arena->bytes_reserved = keep ? keep->capacity : 0;
    arena->bytes_in_use = 0;
    if (keep) {
        keep->next = NULL;
        keep->used = 0;
    }
}

void kw_arena_free(kw_arena *arena) {
    if (!arena) return;
    struct kw_arena_chunk *c = arena->chunks;
    while (c) {
        struct kw_arena_chunk *next = c->next;
        free(c);
        c = next;
    }
    arena->chunks = NULL;
    arena->bytes_in_use = 0;
    arena->bytes_reserved = 0;
}
