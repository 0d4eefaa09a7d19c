/* kw_file.h: whole-file reads, read-only mmaps and small path helpers. Failures carry the path and errno text in
 * kw_error_detail(). */
#ifndef KW_FILE_H
#define KW_FILE_H

#include <stddef.h>

/* Reads the whole file at path into a new NUL-terminated buffer (*out, owned by the caller, free()).
 * *out_size excludes the terminator. Files larger than max_size are refused with KW_E_LIMIT. */
int kw_file_read_all(const char *path, size_t max_size, char **out, size_t *out_size);

/* Writes size bytes to path atomically (temporary file + rename). */
int kw_file_write_all(const char *path, const void *data, size_t size);

/* A read-only mapping of a whole file. */
typedef struct kw_file_map {
    const unsigned char *data; /* owned by the mapping; NULL for an empty file */
    size_t size;
} kw_file_map;

/* Maps path read-only. Release with kw_file_unmap. */
int kw_file_map_open(const char *path, kw_file_map *map);

/* Unmaps; a zeroed or NULL map is a no-op. */
void kw_file_unmap(kw_file_map *map);

/* Tells the kernel that the pages of map covering [offset, offset + size) are not needed for now (MADV_DONTNEED,
 * widened to whole pages): they leave the process's resident set and are read back from the file if touched again,
 * so the mapping's contents never change. For data that has been copied elsewhere (packed weights). Ranges outside
 * the map are clipped; errors are ignored (it is only advice). */
void kw_file_map_release(const kw_file_map *map, size_t offset, size_t size);

/* Joins dir and name with one '/' into a new string (caller frees), or NULL when out of memory. */
char *kw_path_join(const char *dir, const char *name);

/* 1 if path exists and is a regular file, else 0. */
int kw_path_is_file(const char *path);

/* 1 if path exists and is a directory, else 0. */
int kw_path_is_dir(const char *path);

/* Creates dir (one level) if it does not exist. */
int kw_path_mkdir(const char *path);

#endif /* KW_FILE_H */
