'use strict';
// The real @krmx/client from npm against emitter's conformance server (examples/conformance), over loopback.
// Every wait is bounded; nothing sleeps and hopes.

const { describe, it } = require('node:test');
const assert = require('node:assert/strict');
const { within, seen, seenAfter, conformanceWithClients, startProxy, rawSocket } = require('../lib/support');
const { createClient, VERSION } = require('@krmx/client');

const { pool, server } = conformanceWithClients();

/** A connected @krmx/client, closed after the tests. */
const connected = (url = server().main) => pool.connected(url);
const linked = (username, url = server().main) => pool.linked(username, url);

/** The next message of `type` the client receives, as `[message]`. */
const nextMessage = (client, type) => within(`message ${type}`, client.waitFor('message', (m) => m.type === type));

const rejection = (promise) => within('a rejection', promise.then(
  () => assert.fail('the link was accepted'),
  (error) => error.message,
));

describe('@krmx/client against emitter', () => {
  it('is a 0.5 client, and emitter accepts its version', async () => {
    assert.match(VERSION, /^0\.5\./);
    const client = await linked('versioned');
    assert.equal(client.getStatus(), 'linked');
    assert.equal(client.getUsername(), 'versioned');
    assert.deepEqual(client.getUsers().find((u) => u.username === 'versioned'), { username: 'versioned', isLinked: true });
  });

  it('accepts 0.5 and 0.6 link requests and rejects other versions with the reference wording', async () => {
    const cases = [
      ['0.5.99', null],
      ['0.6.10', null],
      ['0.6', null],
      ['0.4.0', 'krmx server version mismatch (server=0.5.* || 0.6.*,client=0.4.0)'],
      ['1.0.0', 'krmx server version mismatch (server=0.5.* || 0.6.*,client=1.0.0)'],
      ['0.60.1', 'krmx server version mismatch (server=0.5.* || 0.6.*,client=0.60.1)'],
    ];
    for (const [version, reason] of cases) {
      const raw = await rawSocket(server().main);
      const username = `v${version.replace(/\./g, 'x')}`;
      raw.send({ type: 'krmx/link', payload: { username, version } });
      const answer = await raw.next();
      if (reason === null) {
        assert.deepEqual(answer, { type: 'krmx/accepted' }, version);
        raw.send({ type: 'krmx/leave' });
      } else {
        assert.deepEqual(answer, { type: 'krmx/rejected', payload: { reason } }, version);
      }
      await raw.close();
    }
  });

  it('rejects link requests with the reasons the server gives', async () => {
    const client = await connected();
    const cases = [
      [['a'], 'invalid username'],
      [['inv#lid'], 'invalid username'],
      [['someone', 'reject-me'], 'rejected by app'],
      [['throwing'], 'thrown by app'],
      [['denyme'], 'denied by app'],
      [['failing'], 'failed by app'],
      [['latecomer'], 'authentication timeout'],
    ];
    for (const [args, reason] of cases) {
      assert.equal(await rejection(client.link(...args)), reason, args[0]);
      assert.equal(client.getStatus(), 'connected');
      assert.equal(client.getUsername(), undefined);
    }
    // Accepted after async authentication.
    await within('slow link', client.link('slowpoke'));
    assert.equal(client.getStatus(), 'linked');
    // A second connection cannot link a linked user.
    const second = await connected();
    assert.equal(await rejection(second.link('slowpoke')), 'user slowpoke is already linked to a connection');
    // The closed endpoint refuses new users but links its admin.
    const closed = await connected(server().closed);
    assert.equal(await rejection(closed.link('newbie')), 'server is not accepting new users');
    await within('admin link', closed.link('admin'));
    assert.deepEqual(closed.getUsers(), [{ username: 'admin', isLinked: true }]);
  });

  it('exchanges custom messages both ways', async () => {
    const anna = await linked('anna');
    const bert = await linked('bert');

    // Client to server and back, with and without a payload.
    const payload = { text: 'hello', list: [1, 2, null], nested: { yes: true } };
    let echoed = nextMessage(anna, 'test/echoed');
    anna.send({ type: 'test/echo', payload });
    assert.deepEqual((await echoed)[0], { type: 'test/echoed', payload });
    echoed = nextMessage(anna, 'test/echoed');
    anna.send({ type: 'test/echo' });
    assert.deepEqual((await echoed)[0], { type: 'test/echoed' });

    // Broadcast to everyone, and to everyone but the sender.
    const atAnna = nextMessage(anna, 'test/broadcasted');
    const atBert = nextMessage(bert, 'test/broadcasted');
    anna.send({ type: 'test/broadcast', payload: 42 });
    assert.deepEqual((await atAnna)[0].payload, { from: 'anna', payload: 42 });
    assert.deepEqual((await atBert)[0].payload, { from: 'anna', payload: 42 });

    const seenByAnna = [];
    const unsubscribe = anna.on('message', (m) => seenByAnna.push(m.type));
    const skipped = nextMessage(bert, 'test/broadcasted');
    anna.send({ type: 'test/broadcast-skip', payload: 'not for anna' });
    assert.deepEqual((await skipped)[0].payload, { from: 'anna', payload: 'not for anna' });
    // The server handles anna's messages in order: her echo comes back after the skipped broadcast would have.
    const marker = nextMessage(anna, 'test/echoed');
    anna.send({ type: 'test/echo', payload: 'marker' });
    await marker;
    unsubscribe();
    assert.deepEqual(seenByAnna, ['test/echoed']);

    assert.throws(() => anna.send({ type: 'krmx/leave' }), /internal 'krmx\/' prefix/);
  });

  it("sees others join, link, unlink and leave, in the server's order", async () => {
    const watcher = await linked('watcher');
    const events = [];
    const unsubscribe = watcher.all((name, username) => {
      if (['join', 'link', 'unlink', 'leave'].includes(name) && username.startsWith('other')) {
        events.push(`${name} ${username}`);
      }
    });

    const other = await connected();
    await seenAfter(watcher, 'link', 'other1', () => other.link('other1'));
    assert.deepEqual(watcher.getUsers().find((u) => u.username === 'other1'), { username: 'other1', isLinked: true });
    // The newcomer's snapshot lists the watcher, linked.
    assert.deepEqual(other.getUsers().find((u) => u.username === 'watcher'), { username: 'watcher', isLinked: true });

    await seenAfter(watcher, 'unlink', 'other1', () => other.unlink());
    assert.deepEqual(watcher.getUsers().find((u) => u.username === 'other1'), { username: 'other1', isLinked: false });

    const leftSeen = seen(watcher, 'leave', 'other2');
    await within('link', other.link('other2'));
    await within('leave', other.leave());
    await leftSeen;
    assert.equal(watcher.getUsers().some((u) => u.username === 'other2'), false);

    // Server-side actions: join a user, then kick it.
    const joinedOk = nextMessage(watcher, 'test/joined-ok');
    watcher.send({ type: 'test/join', payload: 'other3' });
    await joinedOk;
    const kickedOk = nextMessage(watcher, 'test/kicked-ok');
    watcher.send({ type: 'test/kick', payload: 'other3' });
    await kickedOk;
    unsubscribe();
    assert.deepEqual(events, [
      'join other1', 'link other1', 'unlink other1',
      'join other2', 'link other2', 'unlink other2', 'leave other2',
      'join other3', 'leave other3',
    ]);
    const errored = nextMessage(watcher, 'test/error');
    watcher.send({ type: 'test/kick', payload: 'nobody' });
    assert.equal((await errored)[0].payload, 'cannot kick a user that does not exist');
  });

  it('receives the events of its own link in the order the reference client expects', async () => {
    const client = pool.track(createClient({ logger: false }));
    const events = [];
    client.all((name, ...args) => events.push([name, client.getStatus(), ...args.map(String)]));
    await within('connect', client.connect(server().main));
    await within('link', client.link('ordered'));
    await within('unlink', client.unlink());
    await within('disconnect', client.disconnect());
    const own = events.filter(([name, , arg]) => arg === undefined || arg === 'ordered');
    assert.deepEqual(own, [
      ['connecting', 'connecting'],
      ['connect', 'connected'],
      ['linking', 'linking'],
      ['accept', 'linked'],
      ['join', 'linked', 'ordered'],
      ['link', 'linked', 'ordered'],
      ['unlinking', 'unlinking'],
      ['unlink', 'connected', 'ordered'],
      ['closing', 'closing'],
      ['close', 'closed'],
    ]);
  });

  it('leaves: the user is gone from the server, and linking again makes a new user', async () => {
    const watcher = await linked('watcher2');
    const client = await linked('leaver');
    await seenAfter(watcher, 'leave', 'leaver', () => client.leave());
    assert.equal(client.getStatus(), 'connected');
    assert.deepEqual(client.getUsers(), []);
    assert.equal(await rejection(client.link('leaver', 'report-is-new')), 'isNewUser=true');
  });

  it('relinks the same user after its connection dropped', async () => {
    const proxy = await startProxy(server().mainPort);
    try {
      const watcher = await linked('watcher3');
      const client = await linked('dropper', proxy.url);
      const closed = within('close', client.waitFor('close'));
      const unlinked = seen(watcher, 'unlink', 'dropper');
      proxy.cut();
      await closed;
      await unlinked;
      assert.equal(client.getStatus(), 'closed');
      assert.deepEqual(watcher.getUsers().find((u) => u.username === 'dropper'), { username: 'dropper', isLinked: false });

      // The reference client does not reconnect by itself: the application connects and links again.
      await within('connect', client.connect(proxy.url));
      assert.equal(await rejection(client.link('dropper', 'report-is-new')), 'isNewUser=false');
      await seenAfter(watcher, 'link', 'dropper', () => client.link('dropper'));
      assert.deepEqual(client.getUsers().find((u) => u.username === 'watcher3'), { username: 'watcher3', isLinked: true });

      // Linked for real: messages flow again.
      const echoed = nextMessage(client, 'test/echoed');
      client.send({ type: 'test/echo', payload: 'back' });
      assert.equal((await echoed)[0].payload, 'back');
    } finally {
      await proxy.stop();
    }
  });

  it('is unlinked, not closed, when the server unlinks or kicks it', async () => {
    const client = await linked('kickme');
    const actor = await linked('actor');
    const unlinked = seen(client, 'unlink', 'kickme');
    actor.send({ type: 'test/unlink', payload: 'kickme' });
    await unlinked;
    assert.equal(client.getStatus(), 'connected');
    await within('relink', client.link('kickme'));
    const left = seen(client, 'leave', 'kickme');
    actor.send({ type: 'test/kick', payload: 'kickme' });
    await left;
    assert.equal(client.getStatus(), 'connected');
    assert.deepEqual(client.getUsers(), []);
  });
});
