/* kw_load_map.h: a small string -> index hash map (open addressing, FNV-1a), for item ids: duplicate detection in
 * datasets and the lookup of a reference run's record by item id. Keys are borrowed, not copied: they must outlive
 * the map. Not thread-safe. */
#ifndef KW_LOAD_MAP_H
#define KW_LOAD_MAP_H

#include <stddef.h>

typedef struct kw_load_map {
    const char **keys; /* owned array of borrowed keys; NULL marks a free slot */
    size_t *values;    /* owned */
    size_t cap, n;     /* cap is 0 or a power of two */
} kw_load_map;

/* Inserts key -> value. When key is already present, nothing changes and *existing (if not NULL) gets its value.
 * @return 1 inserted, 0 already present, KW_E_NOMEM. */
int kw_load_map_put(kw_load_map *m, const char *key, size_t value, size_t *existing);

/* The value of key. @return 1 found (*value set), 0 absent. */
int kw_load_map_get(const kw_load_map *m, const char *key, size_t *value);

/* Frees the arrays (not the keys); NULL is a no-op. The map is left empty and reusable. */
void kw_load_map_free(kw_load_map *m);

#endif /* KW_LOAD_MAP_H */
