/* kw_file.c: POSIX file reading, atomic writing and mmap. */
#define _POSIX_C_SOURCE 200809L
#include "kw_file.h"
#include "kw_status.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int kw_file_read_all(const char *path, size_t max_size, char **out, size_t *out_size) {
    int rc = 0;
    char *buf = NULL;
    const int fd = open(path, O_RDONLY | O_CLOEXEC);
    KW_RETURN_IF(fd < 0, errno == ENOENT ? KW_E_NOT_FOUND : KW_E_IO, "open %s: %s", path, strerror(errno));
    struct stat st;
    KW_CHECK_IF(fstat(fd, &st) != 0, KW_E_IO, "stat %s: %s", path, strerror(errno));
    KW_CHECK_IF(!S_ISREG(st.st_mode), KW_E_IO, "%s is not a regular file", path);
    KW_CHECK_IF((unsigned long long)st.st_size > max_size, KW_E_LIMIT, "%s is %lld bytes, over the limit of %zu", path,
                (long long)st.st_size, max_size);
    const size_t size = (size_t)st.st_size;
    buf = malloc(size + 1);
    KW_CHECK_IF(!buf, KW_E_NOMEM, "out of memory reading %s (%zu bytes)", path, size);
    size_t done = 0;
    while (done < size) {
        const ssize_t n = read(fd, buf + done, size - done);
        if (n < 0 && errno == EINTR) continue;
        KW_CHECK_IF(n < 0, KW_E_IO, "read %s: %s", path, strerror(errno));
        KW_CHECK_IF(n == 0, KW_E_TRUNCATED, "%s shrank while being read", path);
        done += (size_t)n;
    }
    buf[size] = '\0';
    *out = buf;
    *out_size = size;
    buf = NULL;
out:
    free(buf);
    close(fd);
    return rc;
}

int kw_file_write_all(const char *path, const void *data, size_t size) {
    int rc = 0;
    const size_t len = strlen(path);
    char *tmp = malloc(len + 16);
    KW_RETURN_IF(!tmp, KW_E_NOMEM, "out of memory");
    snprintf(tmp, len + 16, "%s.tmp%ld", path, (long)getpid());
    const int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    KW_CHECK_IF(fd < 0, KW_E_IO, "create %s: %s", tmp, strerror(errno));
    size_t done = 0;
    while (done < size) {
        const ssize_t n = write(fd, (const char *)data + done, size - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            rc = kw_error_set(KW_E_IO, "write %s: %s", tmp, strerror(errno));
            close(fd);
            unlink(tmp);
            goto out;
        }
        done += (size_t)n;
    }
    if (close(fd) != 0) {
        rc = kw_error_set(KW_E_IO, "close %s: %s", tmp, strerror(errno));
        unlink(tmp);
        goto out;
    }
    if (rename(tmp, path) != 0) {
        rc = kw_error_set(KW_E_IO, "rename %s -> %s: %s", tmp, path, strerror(errno));
        unlink(tmp);
    }
out:
    free(tmp);
    return rc;
}

int kw_file_map_open(const char *path, kw_file_map *map) {
    memset(map, 0, sizeof *map);
    const int fd = open(path, O_RDONLY | O_CLOEXEC);
    KW_RETURN_IF(fd < 0, errno == ENOENT ? KW_E_NOT_FOUND : KW_E_IO, "open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        const int e = errno;
        close(fd);
        KW_FAIL(KW_E_IO, "%s: not a readable regular file (%s)", path, strerror(e));
    }
    if (st.st_size == 0) {
        close(fd);
        return 0;
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    const int e = errno;
    close(fd);
    KW_RETURN_IF(p == MAP_FAILED, KW_E_IO, "mmap %s: %s", path, strerror(e));
    map->data = p;
    map->size = (size_t)st.st_size;
    return 0;
}

void kw_file_unmap(kw_file_map *map) {
    if (!map || !map->data) return;
    munmap((void *)map->data, map->size);
    map->data = NULL;
    map->size = 0;
}

void kw_file_map_release(const kw_file_map *map, size_t offset, size_t size) {
    if (!map || !map->data || offset >= map->size) return;
    if (size > map->size - offset) size = map->size - offset;
    const long page = sysconf(_SC_PAGESIZE);
    const uintptr_t mask = (uintptr_t)(page > 0 ? page : 4096) - 1;
    const uintptr_t base = (uintptr_t)map->data, lo = (base + offset) & ~mask;
    const uintptr_t hi = (base + offset + size + mask) & ~mask, end = (base + map->size + mask) & ~mask;
    if (hi > lo) (void)madvise((void *)lo, (hi < end ? hi : end) - lo, MADV_DONTNEED);
}

char *kw_path_join(const char *dir, const char *name) {
    const size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    size_t n = a;
    if (n > 0 && p[n - 1] != '/') p[n++] = '/';
    memcpy(p + n, name, b + 1);
    return p;
}

int kw_path_is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int kw_path_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int kw_path_mkdir(const char *path) {
    if (mkdir(path, 0755) == 0 || (errno == EEXIST && kw_path_is_dir(path))) return 0;
    KW_FAIL(KW_E_IO, "mkdir %s: %s", path, strerror(errno));
}
