/* zhello: a dynamically linked C HTTP app using zlib and OpenSSL (libcrypto), for fuse's
 * library-resolution example. Answers every GET with the uid it runs as, zlib's crc32 and
 * adler32 of "hello, fuse", and its SHA-256 computed by OpenSSL (libssl is initialised too). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zlib.h>

int main(void) {
    const char *port_s = getenv("PORT");
    int port = port_s ? atoi(port_s) : 8080;
    if (OPENSSL_init_ssl(0, NULL) != 1) {
        fprintf(stderr, "zhello: cannot initialise libssl\n");
        return 1;
    }
    const char *msg = "hello, fuse";
    unsigned long crc = crc32(0L, (const Bytef *)msg, (uInt)strlen(msg));
    unsigned long adler = adler32(1L, (const Bytef *)msg, (uInt)strlen(msg));
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_Digest(msg, strlen(msg), md, &mdlen, EVP_sha256(), NULL);
    char hex[2 * EVP_MAX_MD_SIZE + 1];
    for (unsigned int i = 0; i < mdlen; i++) sprintf(hex + 2 * i, "%02x", md[i]);

    int s = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port);
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 16) < 0) {
        perror("zhello: cannot listen");
        return 1;
    }
    printf("zhello: listening on %d as uid %d with zlib %s and %s\n", port, (int)getuid(), zlibVersion(),
           OpenSSL_version(OPENSSL_VERSION));
    fflush(stdout);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) continue;
        char req[2048];
        ssize_t n = read(c, req, sizeof req - 1);
        req[n > 0 ? n : 0] = 0;
        char body[512];
        int len = snprintf(body, sizeof body, "uid=%d crc32=%08lx adler32=%08lx sha256=%s zlib=%s\n", (int)getuid(),
                           crc, adler, hex, zlibVersion());
        char resp[1024];
        int rl = snprintf(resp, sizeof resp,
                          "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
                          len, body);
        if (write(c, resp, (size_t)rl) < 0) perror("zhello: write");
        close(c);
        if (strncmp(req, "GET /exit", 9) == 0) return 0;
    }
}
