"""A web app whose dependency (fastmath) has a compiled extension: vendored with
`pip install --target vendor`, or installed in a virtualenv."""
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "vendor"))
import fastmath  # noqa: E402


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        lines = [
            f"sum={fastmath.parallel_sum(100000)}",
            fastmath.describe(),
            f"python={sys.version.split()[0]}",
            f"prefix={sys.prefix}",
            f"uid={os.getuid()}",
        ]
        try:
            with open("data/seed.txt") as f:
                lines.append("seed=" + f.read().strip())
            with open("data/visits.log", "a") as f:
                f.write("visit\n")
            lines.append("wrote data/visits.log")
        except OSError as e:
            lines.append(f"write failed: {e}")
        body = ("\n".join(lines) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


HTTPServer(("", int(os.environ.get("PORT", "8080"))), Handler).serve_forever()
