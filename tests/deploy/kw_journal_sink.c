/* kw_journal_sink.c: a stand-in for journald's native socket, for test_deploy_journal. It is not a journal: it keeps
 * nothing but a text file of what arrived, and it only runs inside the test's private mount namespace (the socket path
 * of libsystemd is fixed, /run/systemd/journal/socket, and the test mounts its own /run over the host's).
 *
 *   kw_journal_sink SOCKET OUT   binds an AF_UNIX datagram socket at SOCKET and appends every datagram to OUT as one
 *                                entry until SIGTERM
 *   kw_journal_sink --parse FILE prints the entry FILE holds (one datagram) on stdout
 *
 * An entry is written as its fields, one "NAME=value" line each in arrival order, then an empty line. In values a
 * newline is written as \n and a backslash as \\, so one line is one field. A datagram that breaks journald's native
 * protocol is written as the single line "PARSE_ERROR=<why>" (exit status 1 with --parse). The protocol
 * (systemd's "Native Journal Protocol"): a datagram is a series of fields, each either "NAME=value\n" (a value
 * without newlines) or "NAME\n", a 64-bit little-endian length, the value's bytes and "\n" (any value).
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define DATAGRAM_MAX (256 * 1024)

static volatile sig_atomic_t stopping;

static void on_term(int signum) {
    (void)signum;
    stopping = 1;
}

/* Writes value (len bytes) with newlines and backslashes escaped. */
static void put_value(FILE *out, const char *value, size_t len) {
    for (size_t i = 0; i < len; ++i) {
        if (value[i] == '\n')
            fputs("\\n", out);
        else if (value[i] == '\\')
            fputs("\\\\", out);
        else
            fputc(value[i], out);
    }
}

/* Parses one datagram and writes it to out as an entry. @return 0, or -1 after writing PARSE_ERROR. */
static int put_entry(FILE *out, const char *data, size_t size) {
    const char *p = data, *end = data + size, *why = NULL;
    while (p < end && !why) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl) {
            why = "a field without its final newline";
            break;
        }
        const char *eq = memchr(p, '=', (size_t)(nl - p));
        const char *name = p, *value;
        size_t name_len, value_len;
        if (eq) { /* NAME=value\n */
            name_len = (size_t)(eq - p);
            value = eq + 1;
            value_len = (size_t)(nl - value);
            p = nl + 1;
        } else { /* NAME\n<u64 le length><value>\n */
            name_len = (size_t)(nl - p);
            p = nl + 1;
            if (end - p < 8) {
                why = "a binary field without its length";
                break;
            }
            uint64_t len = 0;
            for (int i = 7; i >= 0; --i)
                len = len << 8 | (uint8_t)p[i];
            p += 8;
            if (len >= (uint64_t)(end - p) || p[len] != '\n') {
                why = "a binary field whose length does not match the datagram";
                break;
            }
            value = p;
            value_len = (size_t)len;
            p += len + 1;
        }
        if (name_len == 0) {
            why = "a field without a name";
            break;
        }
        fprintf(out, "%.*s=", (int)name_len, name);
        put_value(out, value, value_len);
        fputc('\n', out);
    }
    if (why) fprintf(out, "PARSE_ERROR=%s\n", why);
    fputc('\n', out);
    fflush(out);
    return why ? -1 : 0;
}

static int parse_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "kw_journal_sink: %s: %s\n", path, strerror(errno));
        return 2;
    }
    static char data[DATAGRAM_MAX];
    const size_t size = fread(data, 1, sizeof data, f);
    fclose(f);
    return put_entry(stdout, data, size) < 0 ? 1 : 0;
}

static int serve(const char *socket_path, const char *out_path) {
    FILE *out = fopen(out_path, "a");
    if (!out) {
        fprintf(stderr, "kw_journal_sink: %s: %s\n", out_path, strerror(errno));
        return 2;
    }
    const int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", socket_path);
    if (fd < 0 || bind(fd, (const struct sockaddr *)&a, sizeof a) != 0) {
        fprintf(stderr, "kw_journal_sink: cannot bind %s: %s\n", socket_path, strerror(errno));
        fclose(out);
        return 2;
    }
    struct sigaction sa = {.sa_handler = on_term}; /* no SA_RESTART: recv returns EINTR on SIGTERM */
    sigaction(SIGTERM, &sa, NULL);
    static char data[DATAGRAM_MAX];
    int status = 0;
    while (!stopping) {
        const ssize_t got = recv(fd, data, sizeof data, 0);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            fprintf(stderr, "kw_journal_sink: recv: %s\n", strerror(errno));
            status = 2;
            break;
        }
        put_entry(out, data, (size_t)got);
    }
    close(fd);
    unlink(socket_path);
    fclose(out);
    return status;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--parse") == 0) return parse_file(argv[2]);
    if (argc == 3) return serve(argv[1], argv[2]);
    fprintf(stderr, "usage: kw_journal_sink SOCKET OUT | kw_journal_sink --parse FILE\n");
    return 2;
}
