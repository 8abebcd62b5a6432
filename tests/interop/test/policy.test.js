'use strict';
// The real @krmx/client from npm against the conformance server's policy endpoint (a new link takes a linked user
// over, a 1 s grace period, messages kept for unlinked users), over loopback. Every wait is bounded.

const { describe, it } = require('node:test');
const assert = require('node:assert/strict');
const { within, seen, seenAfter, conformanceWithClients } = require('../lib/support');

const { pool, server } = conformanceWithClients();
const linked = (username) => pool.linked(username, server().policy);

describe('@krmx/client against the policy endpoint', () => {
  it('a second link takes the user over: the old client is closed, the others see an unlink and a link', async () => {
    const watcher = await linked('watcher1');
    const seenFirst = seen(watcher, 'link', 'taken');
    const old = await linked('taken');
    await seenFirst;
    const events = [];
    watcher.on('unlink', (u) => u === 'taken' && events.push('unlink'));
    watcher.on('link', (u) => u === 'taken' && events.push('link'));
    const oldClosed = within('the old client to close', old.waitFor('close'));
    const relinked = seen(watcher, 'link', 'taken');
    const taker = await linked('taken');
    await oldClosed;
    await relinked;
    assert.deepEqual(events, ['unlink', 'link']);
    assert.equal(taker.getStatus(), 'linked');
    assert.deepEqual(taker.getUsers().find((u) => u.username === 'taken'), { username: 'taken', isLinked: true });
  });

  it('an unlinked user leaves after the grace period', async () => {
    const watcher = await linked('watcher2');
    const leaving = await linked('graceful');
    const unlinked = seen(watcher, 'unlink', 'graceful');
    const left = seen(watcher, 'leave', 'graceful');
    const started = Date.now();
    await within('unlink', leaving.unlink());
    await unlinked;
    await left;
    assert.ok(Date.now() - started >= 900, `left after ${Date.now() - started} ms, before the 1 s grace period`);
    assert.equal(watcher.getUsers().some((u) => u.username === 'graceful'), false);
  });

  it('broadcasts an unlinked user would have got arrive after it links again, in order', async () => {
    const sender = await linked('sender3');
    const keeper = await linked('keeper');
    await seenAfter(sender, 'unlink', 'keeper', () => keeper.unlink());
    for (const n of [1, 2, 3]) {
      const echoed = within(`broadcast ${n}`, sender.waitFor('message', (m) => m.type === 'test/broadcasted' && m.payload.payload === n));
      sender.send({ type: 'test/broadcast', payload: n });
      await echoed;
    }
    const got = [];
    keeper.on('message', (m) => m.type === 'test/broadcasted' && got.push(m.payload.payload));
    const third = within('the kept broadcasts', keeper.waitFor('message', (m) => m.type === 'test/broadcasted' && m.payload.payload === 3));
    await within('relink', keeper.link('keeper'));
    await third;
    assert.deepEqual(got, [1, 2, 3]);
  });
});
