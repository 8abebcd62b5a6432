'use strict';
// Helpers for the interop tests: the conformance server, the card game (examples/cards, for emitter-state), a TCP proxy
// that can cut connections, bounded waits, and a raw WebSocket for requests the reference client cannot make.

const { spawn, spawnSync } = require('node:child_process');
const net = require('node:net');
const path = require('node:path');
const fs = require('node:fs');
const readline = require('node:readline');
const WebSocket = require('ws');

// @krmx/client uses the global WebSocket of browsers (and of Node 22+). On Node 20, `ws` stands in for it.
if (typeof globalThis.WebSocket === 'undefined') {
  globalThis.WebSocket = WebSocket;
}

const ROOT = path.resolve(__dirname, '..', '..', '..'); // the repository root, above tests/interop/lib
const TIMEOUT_MS = 5000;

/** Resolves with `promise`, or rejects naming `what` if it takes longer than TIMEOUT_MS. */
function within(what, promise, ms = TIMEOUT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * A binary of the workspace: the path in the environment variable `envVar` if it is set, or else built with
 * `cargo build <cargoArgs>` into the workspace's target dir, where it is `debug/<relativePath>`.
 */
function cargoBinary(envVar, cargoArgs, relativePath) {
  if (process.env[envVar]) {
    return process.env[envVar];
  }
  const built = spawnSync('cargo', ['build', '--quiet', ...cargoArgs], { cwd: ROOT, stdio: 'inherit' });
  if (built.status !== 0) {
    throw new Error(`cargo build ${cargoArgs.join(' ')} failed`);
  }
  const target = process.env.CARGO_TARGET_DIR ? path.resolve(ROOT, process.env.CARGO_TARGET_DIR) : path.join(ROOT, 'target');
  const binary = path.join(target, 'debug', relativePath + (process.platform === 'win32' ? '.exe' : ''));
  if (!fs.existsSync(binary)) {
    throw new Error(`no binary at ${binary}`);
  }
  return binary;
}

/** The conformance server's binary: EMITTER_CONFORMANCE_BIN, or built with cargo into the workspace's target dir. */
function conformanceBinary() {
  return cargoBinary('EMITTER_CONFORMANCE_BIN', ['-p', 'example-conformance'], 'example-conformance');
}

/**
 * The delta cases example of emitter-state (crates/emitter-state/examples/delta_cases.rs): EMITTER_DELTA_CASES_BIN,
 * or built with cargo into the workspace's target dir.
 */
function deltaCasesBinary() {
  return cargoBinary('EMITTER_DELTA_CASES_BIN', ['-p', 'emitter-state', '--example', 'delta_cases'], path.join('examples', 'delta_cases'));
}

/**
 * The card game example (examples/cards), which serves all three Krmx State models: EMITTER_CARDS_BIN, or built with
 * cargo into the workspace's target dir.
 */
function cardsBinary() {
  return cargoBinary('EMITTER_CARDS_BIN', ['-p', 'example-cards'], 'example-cards');
}

/**
 * Starts examples/cards on a free port, with `test/inspect` answered (CARDS_INSPECT=1) and the shuffles fixed by
 * `seed`. Resolves with `{ url, port, stop }`: the `ws://` URL of its Krmx endpoint, and a function that stops it.
 */
async function startCards(seed = 1) {
  const child = spawn(cardsBinary(), [], {
    env: { ...process.env, PORT: '0', CARDS_INSPECT: '1', CARDS_SEED: String(seed), RUST_LOG: process.env.RUST_LOG ?? 'warn', RUST_BACKTRACE: '0' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise((_, reject) => child.once('exit', (code) => reject(new Error(`cards server exited (${code})`))));
  const lines = readline.createInterface({ input: child.stdout });
  const port = new Promise((resolve) => {
    lines.on('line', (line) => {
      const found = /^cards on http:\/\/localhost:(\d+)\//.exec(line);
      if (found) {
        resolve(Number(found[1]));
      }
    });
  });
  const found = await within('the cards server to listen', Promise.race([port, exited]), 60000);
  return {
    url: `ws://127.0.0.1:${found}/ws`,
    port: found,
    stop: () => new Promise((resolve) => {
      child.once('exit', resolve);
      child.kill('SIGTERM');
    }),
  };
}

/**
 * Starts examples/conformance on free ports, with `env` added to its environment (`REDIS_URL`, `NODE_ID`… for a node of
 * a cluster). Resolves with `{ main, closed, policy, stop, kill }`: the `ws://` URLs of its main, closed and policy
 * endpoints, and functions that stop it (SIGTERM) and kill it (SIGKILL).
 */
async function startConformance(env = {}) {
  const child = spawn(conformanceBinary(), [], {
    env: { ...process.env, ...env, PORT: '0', CLOSED_PORT: '0', POLICY_PORT: '0', RUST_LOG: process.env.RUST_LOG ?? 'warn', RUST_BACKTRACE: '0' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise((_, reject) => child.once('exit', (code) => reject(new Error(`conformance server exited (${code})`))));
  const lines = readline.createInterface({ input: child.stdout });
  const ports = new Promise((resolve) => {
    lines.on('line', (line) => {
      const found = /main on ws:\/\/[^:]+:(\d+)\/, closed on ws:\/\/[^:]+:(\d+)\/, policy on ws:\/\/[^:]+:(\d+)\//.exec(line);
      if (found) {
        resolve([Number(found[1]), Number(found[2]), Number(found[3])]);
      }
    });
  });
  const [mainPort, closedPort, policyPort] = await within('the conformance server to listen', Promise.race([ports, exited]), 60000);
  return {
    main: `ws://127.0.0.1:${mainPort}/`,
    closed: `ws://127.0.0.1:${closedPort}/`,
    policy: `ws://127.0.0.1:${policyPort}/`,
    mainPort,
    stop: () => signal(child, 'SIGTERM'),
    /** Kills the process with SIGKILL, as a crash would: no goodbye to its clients or to Redis. */
    kill: () => signal(child, 'SIGKILL'),
  };
}

/** Sends `child` the signal `name`; resolves once it has exited (at once if it had already). */
function signal(child, name) {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) {
      resolve();
      return;
    }
    child.once('exit', resolve);
    child.kill(name);
  });
}

/** Starts the reference server (krmx-server.js, @krmx/server from npm) on a free port: `{ url, stop }`. */
async function startKrmxServer() {
  const child = spawn(process.execPath, [path.join(__dirname, '..', 'krmx-server.js')], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const exited = new Promise((_, reject) => child.once('exit', (code) => reject(new Error(`krmx server exited (${code})`))));
  const lines = readline.createInterface({ input: child.stdout });
  const port = new Promise((resolve) => {
    lines.on('line', (line) => {
      const found = /^port (\d+)$/.exec(line);
      if (found) {
        resolve(Number(found[1]));
      }
    });
  });
  const found = await within('the krmx server to listen', Promise.race([port, exited]), 30000);
  return {
    url: `ws://127.0.0.1:${found}/`,
    stop: () => new Promise((resolve) => {
      child.once('exit', resolve);
      child.stdin.end();
    }),
  };
}

/** A loopback TCP proxy to `targetPort`; `cut()` destroys every connection through it, as a network failure would. */
async function startProxy(targetPort) {
  const sockets = new Set();
  const server = net.createServer((inbound) => {
    const outbound = net.connect(targetPort, '127.0.0.1');
    const pair = [inbound, outbound];
    for (const socket of pair) {
      sockets.add(socket);
      socket.on('error', () => pair.forEach((s) => s.destroy()));
      socket.on('close', () => {
        sockets.delete(socket);
        pair.forEach((s) => s.destroy());
      });
    }
    inbound.pipe(outbound);
    outbound.pipe(inbound);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    url: `ws://127.0.0.1:${port}/`,
    cut: () => sockets.forEach((socket) => socket.destroy()),
    stop: () => new Promise((resolve) => {
      sockets.forEach((socket) => socket.destroy());
      server.close(resolve);
    }),
  };
}

/**
 * The types of the messages of the conformance server's state app (examples/conformance, its README's State section),
 * which serves on the main endpoint beside the Krmx contract: a link there is followed by the state app's catch-up.
 */
const STATE_TYPES = new Set(['atom/set', 'stream/append', 'projection/set', 'projection/delta', 'projection/invalidate']);

/** Whether `message` is one of the conformance server's state app's (see STATE_TYPES). */
const isStateMessage = (message) => STATE_TYPES.has(message?.type);

/**
 * A raw WebSocket that records every message, to send link requests the reference client cannot. With `ignore`, the
 * messages for which it returns true are neither recorded nor returned (a test of the Krmx contract on the main
 * endpoint passes `isStateMessage`, as a client of that contract ignores the state app).
 */
async function rawSocket(url, { ignore = () => false } = {}) {
  const socket = new WebSocket(url);
  const received = [];
  const log = [];
  const waiters = [];
  socket.on('message', (data) => {
    const message = JSON.parse(data.toString());
    if (ignore(message)) {
      return;
    }
    received.push(message);
    log.push(message);
    waiters.splice(0).forEach((wake) => wake());
  });
  await within('a raw socket to open', new Promise((resolve, reject) => {
    socket.once('open', resolve);
    socket.once('error', reject);
  }));
  return {
    send: (message) => socket.send(JSON.stringify(message)),
    /** Sends raw text (or a Buffer, as a binary frame). */
    sendRaw: (data) => socket.send(data),
    /** Every message received so far, read or not. */
    log,
    /** Resolves with the next message not read yet. */
    next: async () => {
      while (received.length === 0) {
        await within('a message on the raw socket', new Promise((resolve) => waiters.push(resolve)));
      }
      return received.shift();
    },
    close: () => new Promise((resolve) => {
      socket.once('close', resolve);
      socket.close();
    }),
  };
}

/**
 * The @krmx/client connections of one test file: `connected(url)` and `linked(username, url)` make them (`track`
 * adopts one made by hand), and `closeAll()` (in `after`) disconnects every one still open.
 */
function clientPool() {
  // Required here, not at the top: the delta tests use this file without @krmx/client's WebSocket needs.
  const { createClient } = require('@krmx/client');
  const clients = [];
  const track = (client) => {
    clients.push(client);
    return client;
  };
  const connected = async (url) => {
    const client = track(createClient({ logger: false }));
    await within('connect', client.connect(url));
    return client;
  };
  const linked = async (username, url) => {
    const client = await connected(url);
    await within(`link ${username}`, client.link(username));
    return client;
  };
  const closeAll = async () => {
    for (const client of clients) {
      if (!['closed', 'initializing'].includes(client.getStatus())) {
        await within('disconnect', client.disconnect(true));
      }
    }
  };
  return { connected, linked, track, closeAll };
}

/** Resolves when `client` (a @krmx/client) emits `event` (`join`, `link`, `unlink` or `leave`) for `username`. */
function seen(client, event, username) {
  return within(`${event} ${username}`, client.waitFor(event, (u) => u === username));
}

/** Awaits `request()` (a @krmx/client's `link`, `unlink`, `leave`…), and `watcher` seeing `event` for `username`. */
async function seenAfter(watcher, event, username, request) {
  const seenIt = seen(watcher, event, username);
  await within(`the request before ${event} ${username}`, request());
  await seenIt;
}

/**
 * A test file's conformance server and @krmx/client pool: the server starts `before` the file's tests, and `after` them
 * every client still open is disconnected and the server stopped. `server()` is the running server (`startConformance`).
 */
function conformanceWithClients() {
  const { before, after } = require('node:test');
  const pool = clientPool();
  let server;
  before(async () => {
    server = await startConformance();
  });
  after(async () => {
    await pool.closeAll();
    await server.stop();
  });
  return { pool, server: () => server };
}

module.exports = {
  within, seen, seenAfter, isStateMessage, startConformance, conformanceWithClients, startCards, startKrmxServer, startProxy, rawSocket, clientPool, deltaCasesBinary, ROOT,
};
