// The reference Krmx server (@krmx/server from npm) as a benchmark target: the same behaviour as examples/bench.
// Listens on 127.0.0.1:PORT at path /, accepts new users, no auth. A linked user's bench/msg is broadcast to every
// linked user (the sender included); bench/echo is sent back to the sender; anything else is ignored.
// With EXIT_ON_EOF set it exits when stdin closes, so that it never outlives the runner that started it.
const http = require('http');
const { createServer } = require('@krmx/server');

const port = Number(process.env.PORT || 8085);
const httpServer = http.createServer();
const server = createServer({ logger: false, http: { server: httpServer } });
server.on('message', (username, message) => {
  if (message.type === 'bench/msg') {
    server.broadcast(message);
  } else if (message.type === 'bench/echo') {
    server.send(username, message);
  }
});
httpServer.listen(port, '127.0.0.1', () => {
  server.listen(port).then((listening) => console.log(`reference server on ws://127.0.0.1:${listening}/`));
});
if (process.env.EXIT_ON_EOF) {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.resume();
}
