'use strict';
// The reference server, @krmx/server from npm, for emitter-client's Rust interop test
// (crates/emitter-client/tests/interop_krmx_server.rs). It listens on a free loopback port, prints `port <n>` on
// stdout, and exits when its stdin closes (so it never outlives the test that started it).
//
// It follows a subset of examples/conformance's contract (see its README), so that the same checks read the same:
// - auth `reject-me`: rejected with `rejected by app`; auth `report-is-new`: rejected with `isNewUser=<bool>`;
// - `test/echo` P: replies `test/echoed` P to the sender;
// - `test/broadcast` P: broadcasts `test/broadcasted` {from, payload: P} to every linked user;
// - `test/kick` / `test/unlink` / `test/join` P: runs that action on user P and replies `test/kicked-ok` (etc.) P,
//   or `test/error` with the error text; no reply when the sender is no longer linked after its own action.

const http = require('node:http');
const { createServer } = require('@krmx/server');

const httpServer = http.createServer();
const server = createServer({ http: { server: httpServer }, logger: false });

server.on('authenticate', (username, info, reject) => {
  if (info.auth === 'reject-me') {
    reject('rejected by app');
  } else if (info.auth === 'report-is-new') {
    reject(`isNewUser=${info.isNewUser}`);
  }
});

const withPayload = (type, payload) => (payload === undefined ? { type } : { type, payload });

server.on('message', (sender, message) => {
  const payload = message.payload;
  const act = (ok, action) => {
    if (typeof payload !== 'string') {
      return withPayload('test/error', 'payload must be a username string');
    }
    try {
      action(payload);
      return withPayload(ok, payload);
    } catch (error) {
      return withPayload('test/error', error.message);
    }
  };
  let reply;
  switch (message.type) {
  case 'test/echo':
    reply = withPayload('test/echoed', payload);
    break;
  case 'test/broadcast': {
    const inner = payload === undefined ? { from: sender } : { from: sender, payload };
    server.broadcast({ type: 'test/broadcasted', payload: inner });
    break;
  }
  case 'test/kick':
    reply = act('test/kicked-ok', (username) => server.kick(username));
    break;
  case 'test/unlink':
    reply = act('test/unlinked-ok', (username) => server.unlink(username));
    break;
  case 'test/join':
    reply = act('test/joined-ok', (username) => server.join(username));
    break;
  default:
    break;
  }
  const stillLinked = server.getUsers().some((user) => user.username === sender && user.isLinked);
  if (reply !== undefined && stillLinked) {
    server.send(sender, reply);
  }
});

httpServer.listen(0, '127.0.0.1', () => {
  server.listen().then((port) => {
    process.stdout.write(`port ${port}\n`);
  });
});

const stop = () => {
  if (server.getStatus() === 'listening') {
    server.close().then(() => process.exit(0));
  } else {
    process.exit(0);
  }
};
process.stdin.on('end', stop);
process.stdin.on('error', stop);
process.stdin.resume();
process.on('SIGTERM', stop);
