"""Answers GET / with a greeting, the Python version, the uid and the working directory."""
import http.server
import os
import platform


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = "uid={} python={} cwd={} hello from python\n".format(
            os.getuid(), platform.python_version(), os.getcwd()
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main():
    port = int(os.environ.get("PORT", "8080"))
    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler)
    print("listening on", port, flush=True)
    server.serve_forever()


main()
