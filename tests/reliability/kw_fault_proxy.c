/* kw_fault_proxy.c: a fault-injecting TCP proxy for the reliability tests, placed between receiverd and sharerd.
 *
 *   kw_fault_proxy LISTEN_PORT_FILE UPSTREAM_HOST UPSTREAM_PORT
 *
 * listens on an ephemeral loopback port (written as "port=N" to LISTEN_PORT_FILE once listening) and forwards every
 * connection to the upstream. Commands, one per line on stdin, change what it does from then on; each is answered
 * on stdout with "ok COMMAND" once in force:
 *   pass          forward everything (the start)
 *   stall         stop forwarding in both directions; connections stay open, new ones are accepted and held
 *   reset         close every connection with a TCP reset (SO_LINGER 0), then pass
 *   flip N        from now on flip one bit in every Nth byte from the upstream (sharer to receiver)
 *   flipup N      the same in the other direction (receiver to sharer: hello and requests)
 *   truncate N    every connection's upstream-to-client stream ends after N more bytes: both sides are closed
 *   refuse        close new connections at once and reset the open ones (a daemon that is gone)
 *   stats         prints "stats connections=C bytes_up=U bytes_down=D flipped=F"
 * It exits on end of input or SIGTERM. Single-threaded, poll(2), bounded buffers: a slow side holds the other. */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

enum { MAX_LINKS = 64, BUF_BYTES = 1 << 16 };

/* One direction of a link: bytes read from `from`, waiting to be written to `to`. */
typedef struct pipe_buf {
    uint8_t data[BUF_BYTES];
    size_t head, len;
} pipe_buf;

typedef struct proxy_link {
    int client, upstream; /* owned; -1 when unused */
    pipe_buf up;          /* client -> upstream */
    pipe_buf down;        /* upstream -> client */
    long long down_left;  /* bytes the down direction may still carry (truncate), -1 unlimited */
} proxy_link;

typedef enum { MODE_PASS, MODE_STALL, MODE_REFUSE } proxy_mode;

typedef struct proxy {
    int listen_fd;
    struct sockaddr_storage upstream_addr;
    socklen_t upstream_len;
    proxy_link links[MAX_LINKS];
    proxy_mode mode;
    long long flip_every;    /* 0: no flipping of the upstream's bytes */
    long long flip_up_every; /* 0: no flipping of the client's bytes */
    long long down_count;    /* upstream bytes seen since flipping began */
    long long up_count;      /* client bytes seen since flipping began */
    long long truncate_after;
    long long connections, bytes_up, bytes_down, flipped;
    char line[256];
    size_t line_len;
} proxy;

static volatile sig_atomic_t stop_requested;

static void on_term(int sig) {
    (void)sig;
    stop_requested = 1;
}

static void link_close(proxy_link *l, int with_reset) {
    int *fds[2] = {&l->client, &l->upstream};
    for (int i = 0; i < 2; i++) {
        if (*fds[i] < 0) continue;
        if (with_reset) {
            struct linger lg = {.l_onoff = 1, .l_linger = 0};
            setsockopt(*fds[i], SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        }
        close(*fds[i]);
        *fds[i] = -1;
    }
    l->up.len = l->down.len = 0;
}

static void proxy_accept(proxy *p) {
    const int fd = accept(p->listen_fd, NULL, NULL);
    if (fd < 0) return;
    if (p->mode == MODE_REFUSE) {
        close(fd);
        return;
    }
    proxy_link *l = NULL;
    for (int i = 0; i < MAX_LINKS && !l; i++)
        if (p->links[i].client < 0) l = &p->links[i];
    const int up = l ? socket(p->upstream_addr.ss_family, SOCK_STREAM, 0) : -1;
    if (up < 0 || connect(up, (struct sockaddr *)&p->upstream_addr, p->upstream_len) != 0) {
        if (up >= 0) close(up);
        close(fd);
        return;
    }
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(up, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    l->client = fd;
    l->upstream = up;
    l->up.head = l->up.len = l->down.head = l->down.len = 0;
    l->down_left = p->truncate_after > 0 ? p->truncate_after : -1;
    p->connections++;
}

/* Reads what fits from fd into an empty b: the bytes read, 0 at the end of the stream, -1 on an error, -2 when b
 * still holds bytes to write or nothing was there. */
static ssize_t pipe_fill(pipe_buf *b, int fd) {
    if (b->len) return -2;
    const ssize_t n = read(fd, b->data, sizeof b->data);
    if (n < 0) return errno == EINTR || errno == EAGAIN ? -2 : -1;
    b->head = 0;
    b->len = (size_t)n;
    return n;
}

static int pipe_drain(pipe_buf *b, int fd) {
    if (!b->len) return 1;
    const ssize_t n = send(fd, b->data + b->head, b->len, MSG_NOSIGNAL);
    if (n < 0) return errno == EINTR || errno == EAGAIN ? 1 : 0;
    b->head += (size_t)n;
    b->len -= (size_t)n;
    return 1;
}

/* Flips one bit in every `every`th byte of b's new bytes, counting in *count. */
static void flip_bits(proxy *p, pipe_buf *b, long long every, long long *count) {
    for (size_t i = 0; every > 0 && i < b->len; i++) {
        if (++*count % every == 0) {
            b->data[b->head + i] ^= 0x10;
            p->flipped++;
        }
    }
}

/* The fault applied to bytes that just came from the upstream. Returns 0 when the link must now close. */
static int apply_down_faults(proxy *p, proxy_link *l) {
    pipe_buf *b = &l->down;
    flip_bits(p, b, p->flip_every, &p->down_count);
    if (l->down_left >= 0) {
        if ((long long)b->len >= l->down_left) {
            b->len = (size_t)l->down_left;
            l->down_left = 0;
            return 0;
        }
        l->down_left -= (long long)b->len;
    }
    return 1;
}

static void proxy_command(proxy *p, const char *cmd) {
    long long n = 0;
    if (strcmp(cmd, "pass") == 0) {
        p->mode = MODE_PASS;
        p->flip_every = p->flip_up_every = 0;
        p->truncate_after = 0;
    } else if (strcmp(cmd, "stall") == 0) {
        p->mode = MODE_STALL;
    } else if (strcmp(cmd, "reset") == 0 || strcmp(cmd, "refuse") == 0) {
        for (int i = 0; i < MAX_LINKS; i++)
            link_close(&p->links[i], 1);
        p->mode = cmd[2] == 'f' ? MODE_REFUSE : MODE_PASS;
    } else if (sscanf(cmd, "flip %lld", &n) == 1 && n > 0) {
        p->flip_every = n;
        p->down_count = 0;
    } else if (sscanf(cmd, "flipup %lld", &n) == 1 && n > 0) {
        p->flip_up_every = n;
        p->up_count = 0;
    } else if (sscanf(cmd, "truncate %lld", &n) == 1 && n > 0) {
        p->truncate_after = n;
        for (int i = 0; i < MAX_LINKS; i++)
            if (p->links[i].client >= 0) p->links[i].down_left = n;
    } else if (strcmp(cmd, "stats") == 0) {
        printf("stats connections=%lld bytes_up=%lld bytes_down=%lld flipped=%lld\n", p->connections, p->bytes_up,
               p->bytes_down, p->flipped);
        fflush(stdout);
        return;
    } else {
        printf("error unknown command: %s\n", cmd);
        fflush(stdout);
        return;
    }
    printf("ok %s\n", cmd);
    fflush(stdout);
}

/* Reads stdin; returns 0 at end of input. */
static int proxy_read_commands(proxy *p) {
    char chunk[256];
    const ssize_t n = read(STDIN_FILENO, chunk, sizeof chunk);
    if (n <= 0) return n < 0 && errno == EINTR;
    for (ssize_t i = 0; i < n; i++) {
        if (chunk[i] == '\n') {
            p->line[p->line_len] = 0;
            proxy_command(p, p->line);
            p->line_len = 0;
        } else if (p->line_len + 1 < sizeof p->line) {
            p->line[p->line_len++] = chunk[i];
        }
    }
    return 1;
}

static int resolve_upstream(proxy *p, const char *host, const char *port) {
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    if (getaddrinfo(host, port, &hints, &res) != 0 || !res) return -1;
    memcpy(&p->upstream_addr, res->ai_addr, res->ai_addrlen);
    p->upstream_len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static int listen_ephemeral(proxy *p, const char *port_file) {
    p->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (p->listen_fd < 0 || bind(p->listen_fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(p->listen_fd, 64) != 0 ||
        getsockname(p->listen_fd, (struct sockaddr *)&a, &len) != 0)
        return -1;
    FILE *f = fopen(port_file, "w");
    if (!f) return -1;
    fprintf(f, "port=%u\n", (unsigned)ntohs(a.sin_port));
    return fclose(f) == 0 ? 0 : -1;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: kw_fault_proxy LISTEN_PORT_FILE UPSTREAM_HOST UPSTREAM_PORT\n");
        return 2;
    }
    static proxy p; /* large: the links' buffers */
    for (int i = 0; i < MAX_LINKS; i++)
        p.links[i].client = p.links[i].upstream = -1;
    if (resolve_upstream(&p, argv[2], argv[3]) != 0 || listen_ephemeral(&p, argv[1]) != 0) {
        perror("kw_fault_proxy");
        return 1;
    }
    signal(SIGTERM, on_term);
    signal(SIGPIPE, SIG_IGN);
    struct pollfd fds[2 + 2 * MAX_LINKS];
    int stdin_open = 1;
    while (!stop_requested && stdin_open) {
        int n = 0;
        fds[n++] = (struct pollfd){.fd = STDIN_FILENO, .events = POLLIN};
        fds[n++] = (struct pollfd){.fd = p.listen_fd, .events = POLLIN};
        for (int i = 0; i < MAX_LINKS; i++) {
            proxy_link *l = &p.links[i];
            const int active = l->client >= 0 && p.mode == MODE_PASS;
            short ce = 0, ue = 0;
            if (active) {
                ce = (short)((l->up.len ? 0 : POLLIN) | (l->down.len ? POLLOUT : 0));
                ue = (short)((l->down.len ? 0 : POLLIN) | (l->up.len ? POLLOUT : 0));
            }
            fds[n++] = (struct pollfd){.fd = active ? l->client : -1, .events = ce};
            fds[n++] = (struct pollfd){.fd = active ? l->upstream : -1, .events = ue};
        }
        if (poll(fds, (nfds_t)n, 200) < 0) continue;
        if (fds[0].revents) stdin_open = proxy_read_commands(&p);
        if (fds[1].revents & POLLIN) proxy_accept(&p);
        for (int i = 0; i < MAX_LINKS; i++) {
            proxy_link *l = &p.links[i];
            const struct pollfd *c = &fds[2 + 2 * i], *u = &fds[3 + 2 * i];
            if (l->client < 0 || p.mode != MODE_PASS) continue;
            int alive = 1;
            if (c->revents & (POLLIN | POLLHUP | POLLERR)) {
                const ssize_t r = pipe_fill(&l->up, l->client);
                if (r > 0) {
                    p.bytes_up += r;
                    flip_bits(&p, &l->up, p.flip_up_every, &p.up_count);
                }
                alive = r != 0 && r != -1;
            }
            if (alive && (u->revents & (POLLIN | POLLHUP | POLLERR))) {
                const ssize_t r = pipe_fill(&l->down, l->upstream);
                if (r > 0) {
                    p.bytes_down += r;
                    /* a truncated stream: what is left goes out, then both sides close */
                    if (!apply_down_faults(&p, l)) alive = (pipe_drain(&l->down, l->client), 0);
                }
                if (r == 0 || r == -1) alive = 0;
            }
            if (alive) alive = pipe_drain(&l->up, l->upstream) && pipe_drain(&l->down, l->client);
            if (!alive) link_close(l, 0);
        }
    }
    for (int i = 0; i < MAX_LINKS; i++)
        link_close(&p.links[i], 0);
    close(p.listen_fd);
    return 0;
}
