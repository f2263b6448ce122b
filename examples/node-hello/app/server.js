// Answers GET / with a greeting, the Node.js version, the uid and the working directory.
const http = require("http");

const port = parseInt(process.env.PORT || "8080", 10);
http
  .createServer((req, res) => {
    const body = `uid=${process.getuid()} node=${process.version} cwd=${process.cwd()} hello from node\n`;
    res.writeHead(200, { "Content-Type": "text/plain", "Content-Length": Buffer.byteLength(body) });
    res.end(body);
  })
  .listen(port, "0.0.0.0", () => console.log(`listening on ${port}`));
