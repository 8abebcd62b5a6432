// The card game on a cluster, in a real browser: two nodes of one cluster on Redis, each player's page behind its own
// load balancer (a TCP proxy here that prefers one node and falls back to the other), so alice plays through node one
// and bob through node two. Mid-game the node that owns the table is killed with SIGKILL: bob's page stays linked,
// alice's page reconnects through her balancer to the survivor and relinks on its own, both get the table as it was
// committed (alice's hand included), and they play the game to its end.
//
// CARDS_CLUSTER_NODES is "http://127.0.0.1:P1/,http://127.0.0.1:P2/" (node one owns the table: it started first),
// CARDS_OWNER_PID node one's process id. The test is skipped without them.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { browserFor, usernames, WAIT } from "./browser.mjs";

const NODES = (process.env.CARDS_CLUSTER_NODES ?? "").split(",").filter(Boolean).map((url) => new URL(url));
const OWNER_PID = Number(process.env.CARDS_OWNER_PID ?? 0);
const ENABLED = NODES.length === 2 && OWNER_PID > 0;
const [ALICE, BOB] = usernames("alice", "bob");
/** The longest a whole game may take after the owner died: moves are quick, a move waits on the new owner. */
const MAX_MOVES = 200;

/** A TCP balancer on a free loopback port: each connection goes to the first of `ports` that accepts it. */
async function balancer(ports) {
  const sockets = new Set();
  const server = net.createServer((client) => {
    sockets.add(client);
    client.on("close", () => sockets.delete(client));
    client.pause();
    const attempt = (i) => {
      if (i >= ports.length) return client.destroy();
      const upstream = net.connect(ports[i], "127.0.0.1");
      upstream.once("error", () => attempt(i + 1));
      upstream.once("connect", () => {
        sockets.add(upstream);
        upstream.on("close", () => { sockets.delete(upstream); client.destroy(); });
        upstream.on("error", () => client.destroy());
        client.on("close", () => upstream.destroy());
        client.on("error", () => upstream.destroy());
        client.pipe(upstream);
        upstream.pipe(client);
        client.resume();
      });
    };
    attempt(0);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}/`,
    close() {
      for (const socket of sockets) socket.destroy();
      server.close();
    },
  };
}

const ports = NODES.map((url) => Number(url.port));
const balancers = ENABLED ? [await balancer(ports), await balancer([...ports].reverse())] : [];
after(() => balancers.forEach((b) => b.close()));

// One browser; alice's pages open through balancer one (node one first), bob's through balancer two (node two first).
const alicePages = browserFor(balancers[0]?.url);
const bobPages = browserFor(balancers[1]?.url);

const view = (page) => page.evaluate(() => window.cards.view);

/** Plays one move for whoever's turn it is (a card that fits, else a draw); returns once both pages saw it. */
async function move(alice, bob) {
  const [a, b] = [await view(alice), await view(bob)];
  if (a.phase !== "playing") return false;
  const [turn, other] = a.turn === ALICE ? [alice, bob] : [bob, alice];
  const mine = a.turn === ALICE ? a : b;
  const playable = turn.locator("#hand button.playable");
  const before = { deck: mine.deck, top: mine.top, hand: mine.hand.length };
  if ((await playable.count()) > 0) {
    await playable.first().click();
  } else {
    await turn.click("#draw");
  }
  // The move is confirmed when the mover's hand or the pile changed and the other page agrees on the top card.
  await turn.waitForFunction(
    (before) => {
      const v = window.cards.view;
      return v && (v.phase !== "playing" || v.top !== before.top || v.deck !== before.deck || v.hand.length !== before.hand);
    },
    before,
    WAIT,
  );
  const top = (await view(turn)).top;
  await other.waitForFunction((top) => window.cards.view?.top === top, top, WAIT);
  return true;
}

test("two players on two nodes; the table's owner is killed mid-game; the game is finished on the survivor", {
  skip: !ENABLED,
  timeout: 240_000,
}, async () => {
  const alice = await alicePages.open(ALICE);
  const bob = await bobPages.open(BOB);
  await alice.click("#sit");
  await bob.locator("#seats li", { hasText: ALICE }).waitFor(WAIT);
  await bob.click("#sit");
  await alice.locator("#seats li", { hasText: BOB }).waitFor(WAIT);
  await alice.click("#start");
  await alice.waitForFunction(() => window.cards.view?.hand.length === 5, undefined, WAIT);
  await bob.waitForFunction(() => window.cards.view?.hand.length === 5, undefined, WAIT);
  for (let i = 0; i < 3; i += 1) await move(alice, bob);

  // Kill the owner (alice's node): whatever it committed stays; bob's node takes the table within its lease.
  const [aliceBefore, bobBefore] = [await view(alice), await view(bob)];
  process.kill(OWNER_PID, "SIGKILL");
  // Alice's page sees its connection drop, reconnects through her balancer (now to node two) and relinks as alice
  // once the cluster let go of her old link.
  await alice.locator("#status", { hasText: "disconnected" }).waitFor(WAIT);
  await alice.locator("#status", { hasText: `linked as ${ALICE}` }).waitFor({ timeout: 45_000 });
  await alice.waitForFunction(() => window.cards.view !== null, undefined, WAIT);
  assert.deepEqual((await view(alice)).hand, aliceBefore.hand, "alice's hand survived the owner's death");
  assert.deepEqual((await view(bob)).hand, bobBefore.hand);
  assert.equal((await view(bob)).top, aliceBefore.top);

  // Play it out on the survivor.
  let moves = 0;
  while (moves < MAX_MOVES && (await move(alice, bob))) moves += 1;
  const [a, b] = [await view(alice), await view(bob)];
  assert.equal(a.phase, "over", `the game ended within ${MAX_MOVES} moves`);
  assert.ok(a.winner === ALICE || a.winner === BOB);
  assert.equal(b.winner, a.winner);
  assert.deepEqual([...alicePages.pageErrors, ...bobPages.pageErrors], []);
});
