// A web app with a native addon (node_modules/zaddon, N-API, linking zlib).
const http = require('http');
const zaddon = require('zaddon');
http.createServer((req, res) => {
  res.end(`crc32=${zaddon.crc32('hello')}\nzlib=${zaddon.zlibVersion()}\nnode=${process.version}\n`);
}).listen(Number(process.env.PORT || 8080));
