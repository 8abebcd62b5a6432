'use strict';
// emitter-state against the reference Krmx State client: @krmx/client with the models of @krmx/state 0.0.1 from npm
// (glued as the reference's React bindings do, lib/state-client.js), against examples/cards, which serves a
// Projection (the card game `cards`), a Stream (the table talk `chat`) and Atoms (moods).
//
// Each check compares a client with the server at one point of the client's stream of messages: examples/cards
// answers `test/inspect` with its side of a domain, queued with the domain held, so when the answer arrives the client
// has applied every message of that domain sent before it and none after (lib/state-client.js `inspect`).

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { z } = require('zod');
const { createClient } = require('@krmx/client');
const { ProjectionModel, StreamModel } = require('@krmx/state');
const { within, startCards } = require('../lib/support');
const { registerProjection, registerStream, registerAtoms, inspect } = require('../lib/state-client');

const STEPS = Number(process.env.EMITTER_STATE_STEPS ?? 200);
const SEED = Number(process.env.EMITTER_STATE_SEED ?? 1);

/** The card game's model, as a client knows it: the actions, their payloads, and optimistic handlers for some. */
function cardsModel() {
  const empty = { phase: 'waiting', seats: [], hand: [], top: null, deck: 0, turn: null, winner: null, last: null };
  const model = new ProjectionModel({}, () => empty);
  model.when('sit', z.undefined(), () => {}, (view, dispatcher) => {
    if (view.phase !== 'playing' && !view.seats.some((seat) => seat.name === dispatcher)) {
      view.seats.push({ name: dispatcher, cards: 0 });
    }
  });
  model.when('stand', z.undefined(), () => {}); // no optimistic handler: sent without an id
  model.when('start', z.undefined(), () => {});
  model.when('draw', z.undefined(), () => {});
  model.when('play', z.string(), () => {}, (view, dispatcher, card) => {
    const at = view.hand.indexOf(card);
    if (at === -1) {
      throw new Error('not in hand'); // the reference then sends the action without an id
    }
    view.hand.splice(at, 1);
    view.top = card;
  });
  return model;
}

/** The table talk's model, with the same rule as the server's (which refuses what this handler throws on). */
function chatModel() {
  const model = new StreamModel({ lines: [] });
  model.when('say', z.object({ text: z.string(), mood: z.string().optional() }), (state, who, { text }) => {
    if (text.trim() === '' || [...text].length > 200) {
      throw new Error('say something, in 200 characters at most');
    }
    state.lines.push({ who, text });
    if (state.lines.length > 50) {
      state.lines.shift();
    }
  });
  return model;
}

/** SplitMix32-ish: small and seedable, so that a failing sequence can be replayed with EMITTER_STATE_SEED. */
function random(seed) {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x9e3779b9) >>> 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return ((z ^ (z >>> 16)) >>> 0) / 4294967296;
  };
}

function fits(card, top) {
  return card.startsWith('8') || card.slice(0, -1) === top.slice(0, -1) || card.slice(-1) === top.slice(-1);
}

let server;
const clients = [];

/** A linked @krmx/client with the three models registered before it linked, as the reference glue requires. */
async function player(username) {
  const client = createClient({ logger: false });
  clients.push(client);
  const cards = registerProjection(client, 'cards', cardsModel());
  const chat = registerStream(client, 'chat', chatModel(), { optimisticSeconds: 60 });
  const atoms = registerAtoms(client);
  await within('connect', client.connect(server.url));
  // Waited for from before the link: the projection/set may come in the same read as the link's snapshot.
  const projectionSet = client.waitFor('message', (m) => m.type === 'projection/set');
  await within(`link ${username}`, client.link(username));
  await within(`${username}'s projection`, projectionSet);
  return { username, client, cards, chat, atoms };
}

/** Checks that `p`'s projection is the server's mapper for it, with nothing optimistic left over. */
async function checkCards(p) {
  const { server: expected, client: seen } = await within(`inspect cards (${p.username})`, inspect(p.client, 'cards', () => ({
    confirmed: p.cards.confirmed(),
    shown: p.cards.projection(),
    pending: p.cards.pending(),
  })));
  assert.deepEqual(seen.confirmed, expected, p.username);
  assert.deepEqual(seen.pending, [], `${p.username}: every optimistic action was confirmed or invalidated`);
  assert.deepEqual(seen.shown, expected, p.username);
  assert.deepEqual(p.cards.counts.errors, [], p.username);
}

before(async () => {
  server = await startCards(SEED);
});

after(async () => {
  for (const client of clients) {
    if (!['closed', 'initializing'].includes(client.getStatus())) {
      await within('disconnect', client.disconnect(true));
    }
  }
  await server.stop();
});

describe('@krmx/state against emitter-state', () => {
  it('projection: after random actions from three clients, each holds the server\'s projection for its user', async () => {
    const players = [await player('alice'), await player('bob'), await player('carol')];
    const next = random(SEED);
    const pick = (items) => items[Math.floor(next() * items.length)];
    for (let step = 0; step < STEPS; step += 1) {
      // Mostly the player whose turn it is (as a client sees it), so that games get played to the end.
      const turn = players.find((q) => q.username === players[0].cards.projection().turn);
      const p = turn !== undefined && next() < 0.6 ? turn : pick(players);
      const view = p.cards.projection();
      const seated = view.seats.some((seat) => seat.name === p.username);
      const roll = next();
      if (view.phase !== 'playing') {
        // Sit, stand (without an optimistic handler, so without an id) or deal, right or wrong.
        p.cards.dispatch({ type: roll < 0.5 ? 'sit' : roll < 0.6 ? 'stand' : 'start' });
      } else if (roll < 0.1) {
        // A card nobody holds: applied optimistically by no one (the handler throws), refused by the server.
        p.cards.dispatch({ type: 'play', payload: 'XX' });
      } else if (roll < 0.2 && view.hand.length > 0) {
        // A card of one's own hand, fitting or not, on one's turn or not: often an invalidate.
        p.cards.dispatch({ type: 'play', payload: pick(view.hand) });
      } else if (view.turn === p.username) {
        const card = view.hand.find((c) => fits(c, view.top));
        p.cards.dispatch(card === undefined ? { type: 'draw' } : { type: 'play', payload: card });
      } else if (seated && roll < 0.3) {
        p.cards.dispatch({ type: 'draw' });
      }
      if (next() < 0.7) {
        // Mostly let a client catch up before the next step (and check it), so that the clients act on projections
        // fresh enough to get games played; the other steps overlap with whatever is still on its way.
        await checkCards(pick(players));
      }
    }
    for (const p of players) {
      await checkCards(p);
    }
    const counts = players.map((p) => p.cards.counts);
    assert.ok(counts.some((c) => c.confirmations > 0), 'some optimistic action was confirmed by its delta');
    assert.ok(counts.some((c) => c.invalidates > 0), 'some optimistic action was invalidated');

    // A client that unlinks and links again gets a projection/set and carries on.
    const [alice] = players;
    const sets = alice.cards.counts.sets;
    await within('unlink', alice.client.unlink());
    const projectionSet = alice.client.waitFor('message', (m) => m.type === 'projection/set');
    await within('relink', alice.client.link('alice'));
    await within('a projection/set', projectionSet);
    assert.equal(alice.cards.counts.sets, sets + 1);
    await checkCards(alice);
    const view = alice.cards.projection();
    alice.cards.dispatch({ type: view.phase === 'playing' ? 'draw' : 'sit' });
    await checkCards(alice);
    for (const p of players) {
      await within('leave', p.client.leave());
    }
  });

  it('projection: a new connection of a user gets its projection and continues where it was', async () => {
    const dave = await player('dave');
    const erin = await player('erin');
    dave.cards.dispatch({ type: 'sit' });
    erin.cards.dispatch({ type: 'sit' });
    // Messages of different users are handled in parallel: both sit before anyone deals.
    await checkCards(dave);
    await checkCards(erin);
    dave.cards.dispatch({ type: 'start' });
    await checkCards(dave);
    const hand = dave.cards.projection().hand;
    assert.equal(hand.length, 5);

    // Dave's socket goes; a new client links as dave and finds his hand.
    await within('disconnect', dave.client.disconnect(true));
    let again;
    for (let attempt = 0; attempt < 20 && again === undefined; attempt += 1) {
      try {
        again = await player('dave');
      } catch (error) {
        if (!/already linked/.test(error.message)) {
          throw error;
        }
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
    assert.deepEqual(again.cards.projection().hand, hand);
    await checkCards(again);
    await checkCards(erin);
    await within('leave', again.client.leave());
    await within('leave', erin.client.leave());
  });

  it('stream: events from several clients apply in one order everywhere, and the echo confirms each optimistic event', async () => {
    const players = [await player('frank'), await player('grace'), await player('heidi')];
    const next = random(SEED + 1);
    let refused = 0;
    for (let step = 0; step < STEPS; step += 1) {
      const p = players[Math.floor(next() * players.length)];
      // `text` before `mood`, `type` before `payload`: the reference client finds its optimistic copy by hashing the
      // echo's JSON text, so the server must echo the members in the order sent.
      const blank = next() < 0.05;
      const payload = next() < 0.5 ? { text: blank ? ' ' : `line ${step}` } : { text: blank ? '' : `line ${step} 🙂`, mood: '🙂' };
      assert.equal(p.chat.dispatch({ type: 'say', payload }), true);
      if (blank) {
        refused += 1;
        p.refused = (p.refused ?? 0) + 1;
      }
    }
    for (const p of players) {
      const { server: expected, client: seen } = await within('inspect chat', inspect(p.client, 'chat', () => ({
        state: p.chat.state(),
        optimistic: p.chat.optimisticState(),
        pending: p.chat.pending(),
      })));
      assert.deepEqual(seen.state, expected, p.username);
      // Every accepted event's optimistic copy was confirmed by its echo; a refused one (no stream/invalidate exists)
      // waits until it expires, without changing the state.
      assert.equal(seen.pending, p.refused ?? 0, p.username);
      assert.deepEqual(seen.optimistic, expected, p.username);
    }
    assert.ok(refused > 0);
    assert.equal(players[0].chat.state().lines.length, 50);
    for (const p of players) {
      await within('leave', p.client.leave());
    }
  });

  it('stream: a linking client gets the history and folds the same state', async () => {
    const ivan = await player('ivan');
    const { server: expected, client: seen } = await within('inspect chat', inspect(ivan.client, 'chat', () => ivan.chat.state()));
    assert.deepEqual(seen, expected);
    assert.equal(seen.lines.length, 50);
    await within('leave', ivan.client.leave());
  });

  it('atoms: sets from several clients end the same everywhere; another user\'s key is ignored', async () => {
    const players = [await player('judy'), await player('mallory')];
    const next = random(SEED + 2);
    for (let step = 0; step < STEPS; step += 1) {
      const p = players[Math.floor(next() * players.length)];
      const roll = next();
      if (roll < 0.1 && p.username === 'mallory') {
        p.atoms.set('judy/mood', '😈'); // only judy's to set
      } else {
        p.atoms.set(`${p.username}/mood`, roll < 0.5 ? `mood ${step}` : roll < 0.8 ? step : roll < 0.9);
      }
    }
    for (const p of players) {
      const { server: expected, client: seen } = await within('inspect atoms', inspect(p.client, 'atoms', () => p.atoms.values()));
      assert.deepEqual(seen, expected, p.username);
      assert.notEqual(seen['judy/mood'], '😈');
    }
    // A newcomer gets every atom when it links.
    const niaj = await player('niaj');
    const { server: expected, client: seen } = await within('inspect atoms', inspect(niaj.client, 'atoms', () => niaj.atoms.values()));
    assert.deepEqual(seen, expected);
    assert.deepEqual(Object.keys(seen).sort(), ['judy/mood', 'mallory/mood']);
  });
});
