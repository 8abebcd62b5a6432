'use strict';
// A compacting emitter-state stream against the reference client, @krmx/state 0.0.1 from npm: the server folds the
// history into one `snapshot` event at its limit (crates/emitter-state/examples/compacting_stream.rs, 10 events), and
// a client model with a handler of `snapshot` that returns the payload takes it as it is. A client linked throughout
// is sent no snapshot and keeps folding the events; one that links late gets the snapshot and the events since, and
// holds the same state; a rotation reaches both as one snapshot.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn, spawnSync } = require('node:child_process');
const path = require('node:path');
const readline = require('node:readline');
const { z } = require('zod');
const { createClient } = require('@krmx/client');
const { StreamModel } = require('@krmx/state');
const { within, ROOT } = require('../lib/support');
const { registerStream } = require('../lib/state-client');

const MAX_EVENTS = 10;

/** The example's binary: EMITTER_COMPACTING_STREAM_BIN, or built with cargo into the workspace's target dir. */
function binary() {
  if (process.env.EMITTER_COMPACTING_STREAM_BIN) {
    return process.env.EMITTER_COMPACTING_STREAM_BIN;
  }
  const args = ['build', '--quiet', '-p', 'emitter-state', '--example', 'compacting_stream'];
  const built = spawnSync('cargo', args, { cwd: ROOT, stdio: 'inherit' });
  assert.equal(built.status, 0, `cargo ${args.join(' ')} failed`);
  const target = process.env.CARGO_TARGET_DIR ? path.resolve(ROOT, process.env.CARGO_TARGET_DIR) : path.join(ROOT, 'target');
  return path.join(target, 'debug', 'examples', 'compacting_stream');
}

/** The counter as a client knows it: the server's rule for `increment`, and the snapshot that replaces the state. */
function counterModel() {
  const model = new StreamModel({ count: 0, last: null });
  model.when('increment', z.number().int(), (state, dispatcher, by) => {
    state.count += by;
    state.last = dispatcher;
  });
  model.when('snapshot', z.object({ count: z.number(), last: z.string().nullable() }), (_state, _dispatcher, snapshot) => snapshot);
  return model;
}

let server;
const clients = [];
/** The players of the first test, linked still in the second. */
const players = [];

/** A linked client with the counter registered before it linked; `appends` counts what it got, by event type. */
async function player(username) {
  const client = createClient({ logger: false });
  clients.push(client);
  const counter = registerStream(client, 'counter', counterModel(), { optimisticSeconds: 60 });
  const appends = { increment: 0, snapshot: 0, snapshotDispatchers: new Set() };
  client.on('message', (message) => {
    if (message.type === 'stream/append' && message.payload.domain === 'counter') {
      appends[message.payload.event.type] += 1;
      if (message.payload.event.type === 'snapshot') {
        appends.snapshotDispatchers.add(message.payload.dispatcher);
      }
    }
  });
  await within('connect', client.connect(server.url));
  await within(`link ${username}`, client.link(username));
  return { username, client, counter, appends };
}

/** Resolves once `p` got the echo of an increment by `by` from `dispatcher`. */
function echoOf(p, dispatcher, by) {
  return within(`${p.username}: the echo of ${dispatcher}'s increment by ${by}`, p.client.waitFor('message', (m) => m.type === 'stream/append'
    && m.payload.domain === 'counter' && m.payload.dispatcher === dispatcher && m.payload.event.type === 'increment' && m.payload.event.payload === by));
}

before(async () => {
  const child = spawn(binary(), [], {
    env: { ...process.env, MAX_EVENTS: String(MAX_EVENTS), RUST_LOG: process.env.RUST_LOG ?? 'warn', RUST_BACKTRACE: '0' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise((_, reject) => child.once('exit', (code) => reject(new Error(`compacting_stream exited (${code})`))));
  const lines = readline.createInterface({ input: child.stdout });
  const port = new Promise((resolve) => {
    lines.on('line', (line) => {
      const found = /^counter on ws:\/\/127\.0\.0\.1:(\d+)\//.exec(line);
      if (found) {
        resolve(Number(found[1]));
      }
    });
  });
  const found = await within('the compacting stream to listen', Promise.race([port, exited]), 60000);
  server = {
    url: `ws://127.0.0.1:${found}/`,
    stop: () => new Promise((resolve) => {
      child.once('exit', resolve);
      child.kill('SIGTERM');
    }),
  };
});

after(async () => {
  for (const client of clients) {
    if (!['closed', 'initializing'].includes(client.getStatus())) {
      await within('disconnect', client.disconnect(true));
    }
  }
  await server.stop();
});

describe('@krmx/state takes a compacted stream', () => {
  it('a client that links after the compactions folds the snapshot and the events since to the same state', async () => {
    const alice = await player('alice');
    players.push(alice);
    // Five times the limit; the last one's echo is the point where alice has every echo.
    const EVENTS = 5 * MAX_EVENTS;
    let sum = 0;
    for (let i = 1; i <= EVENTS; i += 1) {
      assert.equal(alice.counter.dispatch({ type: 'increment', payload: i }), true);
      sum += i;
    }
    await echoOf(alice, 'alice', EVENTS);
    assert.deepEqual(alice.counter.state(), { count: sum, last: 'alice' });
    assert.equal(alice.counter.pending(), 0, 'every optimistic event was confirmed');
    assert.deepEqual([alice.appends.increment, alice.appends.snapshot], [EVENTS, 0], 'a linked client is sent no snapshot');

    // Bob links late: his catch-up is a snapshot and at most MAX_EVENTS - 1 events, and the increment by 1000 after it
    // marks where he has it all.
    const bob = await player('bob');
    players.push(bob);
    const marked = [echoOf(bob, 'alice', 1000), echoOf(alice, 'alice', 1000)];
    alice.counter.dispatch({ type: 'increment', payload: 1000 });
    await Promise.all(marked);
    assert.equal(bob.appends.snapshot, 1);
    assert.deepEqual([...bob.appends.snapshotDispatchers], ['@server']);
    assert.ok(bob.appends.increment < MAX_EVENTS, `${bob.appends.increment} events after the snapshot`);
    assert.deepEqual(bob.counter.state(), { count: sum + 1000, last: 'alice' });
    assert.deepEqual(bob.counter.state(), alice.counter.state());

    // Bob's events keep being accepted and reach alice.
    const echoed = [echoOf(alice, 'bob', 7), echoOf(bob, 'bob', 7)];
    bob.counter.dispatch({ type: 'increment', payload: 7 });
    await Promise.all(echoed);
    assert.deepEqual(alice.counter.state(), { count: sum + 1007, last: 'bob' });
    assert.deepEqual(bob.counter.state(), alice.counter.state());
    assert.equal(bob.counter.pending(), 0);
  });

  it('a rotation reaches every linked client as one snapshot of the new state', async () => {
    const carol = await player('carol');
    const everyone = [...players, carol];
    const snapshots = everyone.map((p) => within(`${p.username}: a snapshot`, p.client.waitFor('message', (m) => m.type === 'stream/append'
      && m.payload.domain === 'counter' && m.payload.event.type === 'snapshot')));
    carol.client.send({ type: 'test/rotate' });
    await Promise.all(snapshots);
    for (const p of everyone) {
      assert.deepEqual(p.counter.state(), { count: 0, last: null }, p.username);
    }
    const echoed = everyone.map((p) => echoOf(p, 'carol', 3));
    carol.counter.dispatch({ type: 'increment', payload: 3 });
    await Promise.all(echoed);
    for (const p of everyone) {
      assert.deepEqual(p.counter.state(), { count: 3, last: 'carol' }, p.username);
    }
  });
});
