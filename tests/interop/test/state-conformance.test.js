'use strict';
// The conformance server's state app (examples/conformance, its README's State section) driven by the reference Krmx
// State client: @krmx/client with the models of @krmx/state 0.0.1 from npm, glued as the reference's React bindings
// glue them (lib/state-client.js). Several clients dispatch at once, unlink and link again (on another node when there
// are several), and a fresh client catches up; every client must end with the same history, total and players.
//
// The same tests run against a list of main endpoints:
// - one process (always);
// - three nodes of one cluster on a throwaway redis-server, with STATE_CLUSTER=1: each client talks to a node of its
//   own, and relinks on another; and one more test kills a node with SIGKILL while clients on every node dispatch.
//   The models are journaled on the cluster's Redis; node 0, started first, owns their domains (it claims them as it
//   attaches them, before the others start), so the killed node is the owner.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const net = require('node:net');
const readline = require('node:readline');
const { z } = require('zod');
const { createClient } = require('@krmx/client');
const { ProjectionModel, StreamModel, isAtomSetMessage, isStreamAppendMessage } = require('@krmx/state');
const { within, startConformance } = require('../lib/support');
const { registerProjection, registerStream } = require('../lib/state-client');

const CLUSTER = process.env.STATE_CLUSTER === '1';
const ROUNDS = Number(process.env.STATE_ROUNDS ?? 40);
const CONVERGE_MS = 30000;
/** The cluster's lease (KRMX_LEASE_MS): how long a killed node's users stay linked there, at most. */
const LEASE_MS = 2000;

/** The counter as a client knows it: the server's rule, in zod. */
function counterModel() {
  const model = new StreamModel({ count: 0 });
  model.when('increment', z.object({ by: z.number().int().min(1).max(100) }), (state, _dispatcher, { by }) => {
    state.count += by;
  });
  return model;
}

/** The tally as a client knows it: the server's rule and mapper, and an optimistic handler for `add`. */
function tallyModel() {
  const mine = (by, username) => (Object.hasOwn(by, username) ? by[username] : 0);
  const model = new ProjectionModel({ total: 0, by: {} }, (state, username) => ({
    total: state.total,
    mine: mine(state.by, username),
    players: Object.keys(state.by).length,
  }));
  model.when('add', z.object({ n: z.number().int().min(1).max(100) }), (state, dispatcher, { n }) => {
    state.total += n;
    state.by[dispatcher] = mine(state.by, dispatcher) + n;
  }, (view, _dispatcher, { n }) => {
    view.players += view.mine === 0 ? 1 : 0;
    view.total += n;
    view.mine += n;
  });
  return model;
}

/** Resolves after `ms`: the pace of a client that dispatches in a loop (nothing waits on it for a result). */
const pause = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

/** A free loopback port. */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** A throwaway redis-server (no persistence) on a free port: `{ url, stop }`. */
async function startRedis() {
  const port = await freePort();
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise((_, reject) => child.once('exit', (code) => reject(new Error(`redis-server exited (${code})`))));
  const lines = readline.createInterface({ input: child.stdout });
  const ready = new Promise((resolve) => lines.on('line', (line) => line.includes('Ready to accept connections') && resolve()));
  await within('redis-server to start', Promise.race([ready, exited]), 10000);
  return {
    url: `redis://127.0.0.1:${port}/`,
    stop: () => new Promise((resolve) => {
      child.once('exit', resolve);
      child.kill('SIGTERM');
    }),
  };
}

/**
 * The main endpoints under test: `{ urls, stop }`. One process, or with STATE_CLUSTER=1 three conformance processes,
 * nodes of one cluster on a throwaway Redis.
 */
async function startTarget(nodes) {
  if (nodes === 1) {
    const server = await startConformance();
    return { urls: [server.main], stop: server.stop, kill: () => server.kill() };
  }
  const redis = await startRedis();
  const cluster = `state-conformance-${process.pid}`;
  const servers = [];
  for (let i = 1; i <= nodes; i += 1) {
    const env = { REDIS_URL: redis.url, KRMX_CLUSTER: cluster, NODE_ID: `n${i}`, KRMX_LEASE_MS: String(LEASE_MS) };
    servers.push(await startConformance(env));
  }
  return {
    urls: servers.map((server) => server.main),
    /** Kills node `i` (0: the first started) with SIGKILL. */
    kill: (i) => servers[i].kill(),
    stop: async () => {
      await Promise.all(servers.map((server) => server.stop()));
      await redis.stop();
    },
  };
}

/**
 * A @krmx/client with the three models registered before it links, as the reference glue requires, and what it saw
 * since it last linked: the counter's history (`dispatcher event`, in order) and the atoms (a Map: `__proto__` is a key
 * like any other).
 */
function stateClient(username, pool) {
  const client = createClient({ logger: false });
  pool.push(client);
  const tally = registerProjection(client, 'tally', tallyModel());
  const counter = registerStream(client, 'counter', counterModel(), { optimisticSeconds: 60 });
  const seen = { history: [], atoms: new Map() };
  const waiters = new Set();
  client.on('link', (who) => {
    if (who === username) {
      // Its catch-up follows: the whole history and every atom again.
      seen.history = [];
      seen.atoms = new Map();
    }
  });
  client.on('message', (message) => {
    if (isStreamAppendMessage(message) && message.payload.domain === 'counter') {
      seen.history.push(`${message.payload.dispatcher} ${JSON.stringify(message.payload.event)}`);
    } else if (isAtomSetMessage(message)) {
      seen.atoms.set(message.payload.key, message.payload.atom);
    }
    // Checked after the models' own listeners (registered first) applied the message.
    waiters.forEach((check) => check());
  });
  const p = {
    username,
    client,
    tally,
    counter,
    seen,
    /** Connects to `url` and links, resolving once its catch-up (the tally's projection/set, last) arrived. */
    async link(url) {
      if (client.getStatus() === 'initializing' || client.getStatus() === 'closed') {
        await within(`${username} connects`, client.connect(url));
      }
      const caughtUp = client.waitFor('message', (m) => m.type === 'projection/set' && m.payload.domain === 'tally');
      await within(`${username} links`, client.link(username));
      await within(`${username}'s catch-up`, caughtUp);
      return p;
    },
    /** Resolves once `check()` holds (tried now and after every message), or fails after `ms` naming `what`. */
    until(what, check, ms = CONVERGE_MS) {
      let wake;
      const done = new Promise((resolve) => {
        wake = () => {
          if (check()) {
            resolve();
          }
        };
      });
      waiters.add(wake);
      wake();
      return within(`${username}: ${what}`, done, ms).finally(() => waiters.delete(wake));
    },
  };
  return p;
}

/** The contract on the main endpoints `target().urls` (one process, or the nodes of a cluster). */
function contract(target) {
  const pool = [];
  const urls = () => target().urls;
  const nodeFor = (i) => urls()[i % urls().length];
  after(async () => {
    for (const client of pool) {
      if (!['closed', 'initializing'].includes(client.getStatus())) {
        await within('disconnect', client.disconnect(true));
      }
    }
  });

  /** Waits until every client in `ps` holds `expected`'s state, confirmed, with nothing optimistic left. */
  const converged = async (ps, expected) => {
    for (const p of ps) {
      await p.until('converges', () => p.counter.state().count === expected.count
        && p.counter.pending() === 0
        && p.tally.pending().length === 0
        && p.tally.confirmed().total === expected.total
        && p.seen.history.length === expected.history).catch((error) => {
        const holds = { count: p.counter.state().count, pending: p.counter.pending(), tally: p.tally.confirmed(), optimistic: p.tally.pending().length, history: p.seen.history.length };
        const wanted = { count: expected.count, total: expected.total, history: expected.history };
        throw new Error(`${error.message}: it holds ${JSON.stringify(holds)}, expected ${JSON.stringify(wanted)}`);
      });
    }
    const reference = ps[0];
    for (const p of ps) {
      assert.deepEqual(p.seen.history, reference.seen.history, `${p.username}: the same history, in the same order`);
      assert.equal(p.tally.confirmed().players, reference.tally.confirmed().players, `${p.username}: players`);
      assert.deepEqual(p.tally.projection(), p.tally.confirmed(), `${p.username}: nothing optimistic left`);
      assert.deepEqual([...p.seen.atoms].sort(), [...reference.seen.atoms].sort(), `${p.username}: the same atoms`);
      assert.deepEqual(p.tally.counts.errors, [], `${p.username}: every delta applied`);
    }
  };

  // What the clients made so far (the server's state is never reset while it runs): updated by each test.
  const made = { count: 0, total: 0, history: 0, players: new Set(), mine: new Map() };

  it('clients on every node dispatch at once, relink on another node, and converge; a fresh client catches up', async () => {
    const names = ['alice', 'bob', 'constructor'];
    const ps = await Promise.all(names.map((name, i) => stateClient(name, pool).link(nodeFor(i))));
    let ids = 0;
    const invalidatesExpected = new Map(names.map((name) => [name, 0]));
    const play = (p, i, round) => {
      const by = 1 + ((round * 7 + i * 13) % 100);
      const n = 1 + ((round * 11 + i * 5) % 100);
      assert.equal(p.counter.dispatch({ type: 'increment', payload: { by } }), true);
      assert.equal(p.tally.dispatch({ type: 'add', payload: { n } }), true);
      made.count += by;
      made.total += n;
      made.history += 1;
      made.players.add(p.username);
      made.mine.set(p.username, (made.mine.get(p.username) ?? 0) + n);
      p.client.send({ type: 'atom/set', payload: { key: `${p.username}/round`, atom: round } });
      p.client.send({ type: 'atom/set', payload: { key: 'last', atom: `${p.username} ${round}` } });
      if (round % 10 === 3) {
        // What a client's zod would refuse, sent anyway: refused, an invalidate for the id, no event, no atom.
        ids += 1;
        p.client.send({ type: 'projection/action', payload: { domain: 'tally', action: { type: 'add', payload: { n: 0 } }, optimisticId: `bad-${ids}` } });
        p.client.send({ type: 'stream/append', payload: { domain: 'counter', dispatcher: p.username, event: { type: 'increment', payload: { by: 101 } } } });
        p.client.send({ type: 'atom/set', payload: { key: `${names[(i + 1) % names.length]}/round`, atom: -1 } });
        invalidatesExpected.set(p.username, invalidatesExpected.get(p.username) + 1);
      }
    };
    // Each client dispatches in a loop of its own, all at once; halfway, bob unlinks while the others go on, and links
    // again on the next node.
    await Promise.all(ps.map(async (_, i) => {
      for (let round = 0; round < ROUNDS; round += 1) {
        play(ps[i], i, round);
        if (i === 1 && round === Math.floor(ROUNDS / 2)) {
          await within('bob unlinks', ps[i].client.unlink());
          await within('bob disconnects', ps[i].client.disconnect());
          ps[i] = await stateClient('bob', pool).link(nodeFor(2));
        }
        await pause(1);
      }
    }));
    // Each client's last set: once a client holds every user's `done`, it holds every set made before it (one
    // connection's messages are handled in order, and the atoms go out in the order they are applied).
    for (const p of ps) p.client.send({ type: 'atom/set', payload: { key: `${p.username}/done`, atom: true } });
    for (const p of ps) {
      await p.until('every done', () => names.every((name) => p.seen.atoms.get(`${name}/done`) === true));
    }
    await converged(ps, made);
    for (const p of ps.filter((q) => q.username !== 'bob')) {
      assert.equal(p.tally.counts.invalidates, invalidatesExpected.get(p.username), `${p.username}: one invalidate per refused id`);
    }
    for (const p of ps) {
      assert.deepEqual(p.tally.confirmed(), { total: made.total, mine: made.mine.get(p.username), players: made.players.size });
      assert.equal(p.seen.atoms.get(`${p.username}/round`), ROUNDS - 1, `${p.username}: its own key, never another's`);
    }

    // A fresh client, on every node in turn, gets the same state in its catch-up.
    for (let i = 0; i < urls().length; i += 1) {
      const fresh = await stateClient(`fresh${i}`, pool).link(nodeFor(i));
      await converged([fresh, ps[0]], made);
      assert.deepEqual(fresh.tally.confirmed(), { total: made.total, mine: 0, players: made.players.size });
      await within('fresh leaves', fresh.client.leave());
    }
  });

  it('atoms: strict prefixes, any string key, and every client holds the same ones', async () => {
    const [carol, dave] = await Promise.all(['carol', 'dave'].map((name, i) => stateClient(name, pool).link(nodeFor(i))));
    const sets = [['__proto__', 'a key like any other'], ['carol/pi', 3.25], ['carol/done', false], ['answer', 42]];
    for (const [key, atom] of sets) {
      carol.client.send({ type: 'atom/set', payload: { key, atom } });
    }
    dave.client.send({ type: 'atom/set', payload: { key: 'carol/pi', atom: 3 } }); // carol's key: dropped
    const expectedFor = (p) => p.until('the atoms', () => sets.every(([key, atom]) => p.seen.atoms.get(key) === atom));
    await Promise.all([expectedFor(carol), expectedFor(dave)]);
    // dave's refused set changed nothing: a set he makes afterwards arrives, carol/pi unchanged.
    dave.client.send({ type: 'atom/set', payload: { key: 'dave/ok', atom: true } });
    await carol.until('dave/ok', () => carol.seen.atoms.get('dave/ok') === true);
    assert.equal(carol.seen.atoms.get('carol/pi'), 3.25);
    const fresh = await stateClient('erin', pool).link(nodeFor(2));
    assert.deepEqual([...fresh.seen.atoms].sort(), [...carol.seen.atoms].sort());
  });
}

/** Links `p` on `url`, again while the server says its user is still linked (on a killed node, until its lease ends). */
async function linkWithin(p, url, ms) {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      return await p.link(url);
    } catch (error) {
      if (Date.now() > deadline) {
        throw error;
      }
      await pause(100);
    }
  }
}

/** The `seq`s of `username`'s own events in a history (`dispatcher event` entries), in order. */
const seqsOf = (history, username) => history
  .filter((entry) => entry.startsWith(`${username} `))
  .map((entry) => JSON.parse(entry.slice(username.length + 1)).payload.seq);

/**
 * On a cluster: node 0 is killed with SIGKILL while two clients on every node dispatch (an increment with a `seq` of
 * its own and an add of 1, every few milliseconds). Its clients link again on node 1; everyone converges; no
 * confirmed change is lost or doubled; each connection's kept changes are in the order sent.
 */
function killedNode(target) {
  const pool = [];
  after(async () => {
    for (const client of pool) {
      if (!['closed', 'initializing'].includes(client.getStatus())) {
        await within('disconnect', client.disconnect(true)).catch(() => {});
      }
    }
  });

  it('a node killed with SIGKILL mid-run: survivors stay linked, its users relink, no confirmed change lost or doubled', async () => {
    const { urls, kill } = target();
    const names = urls.flatMap((_, node) => [`k${node}a`, `k${node}b`]);
    const nodeOf = (j) => Math.floor(j / 2);
    // Per user: its clients (a killed node's users get a second one), what it sent, and the first seq sent through
    // its second client.
    const users = new Map();
    await Promise.all(names.map(async (name, j) => {
      const p = await stateClient(name, pool).link(urls[nodeOf(j)]);
      users.set(name, { clients: [p], events: 0, adds: 0, relinkedAt: null, killed: nodeOf(j) === 0 });
    }));
    let running = true;
    const dispatching = names.map(async (name) => {
      const user = users.get(name);
      while (running) {
        const p = user.clients[user.clients.length - 1];
        if (p.client.getStatus() === 'linked') {
          if (p.counter.dispatch({ type: 'increment', payload: { by: 1, seq: user.events } })) {
            user.events += 1;
          }
          if (p.tally.dispatch({ type: 'add', payload: { n: 1 } })) {
            user.adds += 1;
          }
        }
        await pause(5);
      }
    });
    await pause(300);
    await kill(0);
    // The killed node's users link again on node 1, within 30 s; the survivors' clients stay linked.
    await Promise.all(names.filter((name) => users.get(name).killed).map(async (name) => {
      const user = users.get(name);
      const again = stateClient(name, pool);
      await linkWithin(again, urls[1], 30000);
      user.relinkedAt = user.events;
      user.clients.push(again);
    }));
    await pause(300);
    running = false;
    await Promise.all(dispatching);
    for (const [name, user] of users) {
      if (!user.killed) {
        assert.equal(user.clients[0].client.getStatus(), 'linked', `${name} stayed linked`);
      }
    }

    // Every client settles (each of its own changes answered), then holds what a fresh client gets.
    const current = [...users.values()].map((user) => user.clients[user.clients.length - 1]);
    for (const p of current) {
      await p.until('every change answered', () => p.counter.pending() === 0 && p.tally.pending().length === 0);
    }
    const fresh = await stateClient('kfresh', pool).link(urls[2]);
    for (const p of current) {
      await p.until('the fresh client\'s state', () => p.seen.history.length === fresh.seen.history.length
        && p.tally.confirmed().total === fresh.tally.confirmed().total);
      assert.deepEqual(p.seen.history, fresh.seen.history, `${p.username}: the same history`);
      assert.equal(p.tally.confirmed().players, fresh.tally.confirmed().players, `${p.username}: players`);
    }

    for (const [name, user] of users) {
      const kept = seqsOf(fresh.seen.history, name);
      const confirmed = new Set(user.clients.flatMap((p) => seqsOf(p.seen.history, name)));
      // In the order sent, none twice, every confirmed one kept.
      assert.ok(kept.every((seq, i) => i === 0 || seq > kept[i - 1]), `${name}'s events in order, none twice: ${kept}`);
      for (const seq of confirmed) {
        assert.ok(kept.includes(seq), `${name}'s confirmed event ${seq} was kept`);
      }
      const mine = current.find((p) => p.username === name).tally.confirmed().mine;
      const confirmations = user.clients.reduce((sum, p) => sum + p.tally.counts.confirmations, 0);
      if (user.killed) {
        // Through the killed node: a prefix of what it sent; through node 1, all of it.
        const before = kept.filter((seq) => seq < user.relinkedAt);
        assert.deepEqual(before, before.map((_, i) => i), `${name}: a prefix of what it sent through the killed node`);
        assert.deepEqual(kept.filter((seq) => seq >= user.relinkedAt), Array.from({ length: user.events - user.relinkedAt }, (_, i) => user.relinkedAt + i));
        assert.ok(mine >= confirmations && mine <= user.adds, `${name}: ${confirmations} confirmed ≤ ${mine} kept ≤ ${user.adds} sent`);
      } else {
        assert.deepEqual(kept, Array.from({ length: user.events }, (_, i) => i), `${name}: every event it sent, once`);
        const p = user.clients[0];
        assert.equal(p.tally.counts.confirmations + p.tally.counts.invalidates, user.adds, `${name}: one answer per add`);
        assert.equal(mine, confirmations, `${name}: every confirmed add, once`);
      }
    }
  });
}

describe('the state app on one process', () => {
  let target;
  before(async () => {
    target = await startTarget(1);
  });
  contract(() => target);
  // After the contract's own `after`, which disconnects its clients.
  after(async () => target?.stop());
});

describe('the state app on three nodes of a cluster', { skip: CLUSTER ? false : 'set STATE_CLUSTER=1 to run it (needs redis-server)' }, () => {
  let target;
  before(async () => {
    target = await startTarget(3);
  });
  contract(() => target);
  killedNode(() => target);
  // After the contract's own `after`, which disconnects its clients.
  after(async () => target?.stop());
});
