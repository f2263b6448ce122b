/* lifecycle: a tiny static HTTP app for fuse's stop and writable-directory tests.
 * GET / appends a line to $WRITE_DIR/hits.log (default /app/logs), tries to create a file
 * in /app (not writable), and answers what happened, one fact per line.
 * SIGTERM: prints "lifecycle: got SIGTERM, draining" and exits 0 a second later, unless
 * IGNORE_TERM=1, when it prints "lifecycle: ignoring SIGTERM" and carries on. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static volatile sig_atomic_t term;

static void on_term(int sig) {
    (void)sig;
    term = 1;
}

/* Appends `line` to `path`; "ok" or the error's text. */
static const char *append(const char *path, const char *line) {
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0) return strerror(errno);
    ssize_t n = write(fd, line, strlen(line));
    int e = errno;
    close(fd);
    return n < 0 ? strerror(e) : "ok";
}

int main(void) {
    const char *port_s = getenv("PORT");
    const char *dir = getenv("WRITE_DIR");
    const char *ignore = getenv("IGNORE_TERM");
    int port = port_s ? atoi(port_s) : 8080;
    if (!dir) dir = "/app/logs";
    int ignoring = ignore && strcmp(ignore, "1") == 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term; /* no SA_RESTART: accept() returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int s = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port);
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 16) < 0) {
        perror("lifecycle: cannot listen");
        return 1;
    }
    fprintf(stderr, "lifecycle: listening on port %d as uid %d\n", port, (int)getuid());
    int hits = 0;
    for (;;) {
        if (term) {
            term = 0;
            if (ignoring) {
                fprintf(stderr, "lifecycle: ignoring SIGTERM\n");
            } else {
                fprintf(stderr, "lifecycle: got SIGTERM, draining\n");
                sleep(1);
                fprintf(stderr, "lifecycle: drained, exiting\n");
                return 0;
            }
        }
        int c = accept(s, NULL, NULL);
        if (c < 0) continue;
        char req[2048];
        ssize_t n = read(c, req, sizeof req - 1);
        req[n > 0 ? n : 0] = 0;
        hits++;
        char path[512], line[64], seed[128] = "";
        snprintf(path, sizeof path, "%s/hits.log", dir);
        snprintf(line, sizeof line, "hit %d\n", hits);
        const char *wrote = append(path, line);
        const char *app = append("/app/not-writable", line);
        snprintf(path, sizeof path, "%s/seed.txt", dir);
        int fd = open(path, O_RDONLY);
        if (fd >= 0) {
            ssize_t k = read(fd, seed, sizeof seed - 1);
            seed[k > 0 ? k : 0] = 0;
            seed[strcspn(seed, "\n")] = 0;
            close(fd);
        }
        const char *tmp = append("/tmp/hits.log", line);
        char body[1024];
        int len = snprintf(body, sizeof body,
                           "uid=%d\nwrite %s/hits.log: %s\nwrite /app/not-writable: %s\n"
                           "write /tmp/hits.log: %s\nseed: %s\n",
                           (int)getuid(), dir, wrote, app, tmp, seed);
        char resp[1600];
        int rl = snprintf(resp, sizeof resp,
                          "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                          "Connection: close\r\n\r\n%s", len, body);
        if (write(c, resp, (size_t)rl) < 0) perror("lifecycle: write");
        close(c);
    }
}
