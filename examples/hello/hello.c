/* hello: a tiny static HTTP app for fuse's example image.
 * Answers every GET with "hello, $GREETING from uid N\n" on $PORT (default 8080).
 * GET /exit?code=N answers, then exits with code N (to show the image powering off). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void on_term(int sig) { (void)sig; _exit(0); }

int main(void) {
    const char *port_s = getenv("PORT");
    const char *greeting = getenv("GREETING");
    int port = port_s ? atoi(port_s) : 8080;
    if (!greeting) greeting = "world";
    signal(SIGTERM, on_term);
    signal(SIGPIPE, SIG_IGN);

    int s = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port);
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 16) < 0) {
        perror("hello: cannot listen");
        return 1;
    }
    printf("hello: listening on port %d as uid %d\n", port, (int)getuid());
    fflush(stdout);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) continue;
        char req[2048];
        ssize_t n = read(c, req, sizeof req - 1);
        req[n > 0 ? n : 0] = 0;
        int exit_code = -1;
        char *e = strstr(req, "GET /exit?code=");
        if (e == req) exit_code = atoi(e + strlen("GET /exit?code="));
        char body[512];
        int len = snprintf(body, sizeof body, "hello, %s from uid %d\n", greeting, (int)getuid());
        char resp[1024];
        int rl = snprintf(resp, sizeof resp,
                          "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                          "Connection: close\r\n\r\n%s", len, body);
        if (write(c, resp, (size_t)rl) < 0) perror("hello: write");
        close(c);
        if (exit_code >= 0) {
            printf("hello: exiting with code %d\n", exit_code);
            return exit_code;
        }
    }
}
