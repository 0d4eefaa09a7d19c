/* kw_load_map.c: open addressing with linear probing; the table doubles when it is half full. */
#include "loadgen/kw_load_map.h"

#include "common/kw_status.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint64_t kw_load_map_hash(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (const unsigned char *p = (const unsigned char *)s; *p; ++p)
        h = (h ^ *p) * 0x100000001b3ull;
    return h;
}

static int kw_load_map_grow(kw_load_map *m) {
    const size_t cap = m->cap ? m->cap * 2 : 64;
    const char **keys = calloc(cap, sizeof(*keys));
    size_t *values = calloc(cap, sizeof(*values));
    if (!keys || !values) {
        free(keys);
        free(values);
        KW_FAIL(KW_E_NOMEM, "out of memory growing an id map to %zu slots", cap);
    }
    for (size_t i = 0; i < m->cap; ++i) {
        if (!m->keys[i]) continue;
        size_t j = (size_t)kw_load_map_hash(m->keys[i]) & (cap - 1);
        while (keys[j])
            j = (j + 1) & (cap - 1);
        keys[j] = m->keys[i];
        values[j] = m->values[i];
    }
    free(m->keys);
    free(m->values);
    m->keys = keys;
    m->values = values;
    m->cap = cap;
    return 0;
}

int kw_load_map_put(kw_load_map *m, const char *key, size_t value, size_t *existing) {
    if ((m->n + 1) * 2 > m->cap) KW_FORWARD(kw_load_map_grow(m));
    size_t j = (size_t)kw_load_map_hash(key) & (m->cap - 1);
    while (m->keys[j]) {
        if (strcmp(m->keys[j], key) == 0) {
            if (existing) *existing = m->values[j];
            return 0;
        }
        j = (j + 1) & (m->cap - 1);
    }
    m->keys[j] = key;
    m->values[j] = value;
    m->n++;
    return 1;
}

int kw_load_map_get(const kw_load_map *m, const char *key, size_t *value) {
    if (m->cap == 0) return 0;
    size_t j = (size_t)kw_load_map_hash(key) & (m->cap - 1);
    while (m->keys[j]) {
        if (strcmp(m->keys[j], key) == 0) {
            *value = m->values[j];
            return 1;
        }
        j = (j + 1) & (m->cap - 1);
    }
    return 0;
}

void kw_load_map_free(kw_load_map *m) {
    if (!m) return;
    free(m->keys);
    free(m->values);
    memset(m, 0, sizeof(*m));
}
