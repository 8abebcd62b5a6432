// The card game example in a real browser: two players sit down and deal; each page shows its own hand and only the
// size of the other's; they play, talk and set their moods; a refused card comes back invalidated; a player reloads
// mid-game and gets their hand back. CARDS_URL is the running example; the test is skipped without it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { browserFor, screenshot, usernames, WAIT } from "./browser.mjs";

const CARDS_URL = process.env.CARDS_URL;
const [ALICE, BOB] = usernames("alice", "bob");

const { open, pageErrors } = browserFor(CARDS_URL);

/** The page's projection of the table (what window.cards.view holds). */
const view = (page) => page.evaluate(() => window.cards.view);
const hand = (page) => page.locator("#hand button").allTextContents();

async function says(page, text) {
  await page.locator("#message", { hasText: text }).waitFor(WAIT);
}

/** Waits until `page`'s projection satisfies `predicate` (run in the page, with the view as its argument). */
async function until(page, predicate) {
  await page.waitForFunction(predicate, undefined, WAIT);
}

test("two players, hidden hands, a refused card, table talk, moods and a reload", { skip: !CARDS_URL, timeout: 120_000 }, async () => {
  const alice = await open(ALICE);
  await alice.click("#sit");
  await alice.locator("#seats li", { hasText: ALICE }).waitFor(WAIT);
  const bob = await open(BOB);
  await bob.click("#sit");
  await alice.locator("#seats li", { hasText: BOB }).waitFor(WAIT);
  await alice.click("#start");
  await until(alice, () => window.cards.view?.hand.length === 5);
  await until(bob, () => window.cards.view?.hand.length === 5);
  await alice.locator("#seats li", { hasText: `${BOB} · 5 cards` }).waitFor(WAIT);

  // Hidden information: neither page was ever sent a card of the other's hand.
  const [aliceView, bobView] = [await view(alice), await view(bob)];
  assert.deepEqual(Object.keys(aliceView).sort(), ["deck", "hand", "last", "phase", "seats", "top", "turn", "winner"]);
  for (const card of bobView.hand) {
    assert.ok(!JSON.stringify(aliceView).includes(`"${card}"`), `alice's page holds bob's ${card}`);
  }
  assert.equal((await hand(alice)).length, 5);

  // A card nobody holds: the server refuses it, and the page is told (projection/invalidate).
  await alice.evaluate(() => window.cards.act("play", "XX"));
  await alice.locator("#game-error", { hasText: "did not allow" }).waitFor(WAIT);

  // Whoever's turn it is plays a card that fits, or draws; the other page sees the move.
  const turn = aliceView.turn === ALICE ? alice : bob;
  const other = turn === alice ? bob : alice;
  const before = await view(turn);
  const playable = turn.locator("#hand button.playable");
  if ((await playable.count()) > 0) {
    const card = await playable.first().getAttribute("data-card");
    await playable.first().click();
    await other.waitForFunction((card) => window.cards.view?.top === card, card, WAIT);
  } else {
    await turn.click("#draw");
    await other.waitForFunction((deck) => window.cards.view?.deck === deck - 1, before.deck, WAIT);
  }
  await says(turn, `to play`);
  await says(other, "Your turn");

  // Table talk (a stream) and moods (atoms).
  await alice.fill("#chat-text", "good luck");
  await alice.click("#chat-form button");
  await bob.locator("#chat-lines li", { hasText: `${ALICE}: good luck` }).waitFor(WAIT);
  await bob.selectOption("#mood", "😎");
  await alice.locator("#seats li", { hasText: `${BOB} · ${(await view(alice)).seats.find((s) => s.name === BOB).cards} cards 😎` }).waitFor(WAIT);

  // Bob reloads: he relinks on his own and gets his hand, the chat and the moods back.
  const bobHand = (await view(bob)).hand;
  await bob.reload();
  await bob.locator("#status", { hasText: `linked as ${BOB}` }).waitFor(WAIT);
  await until(bob, () => window.cards.view !== null);
  assert.deepEqual((await view(bob)).hand, bobHand);
  await bob.locator("#chat-lines li", { hasText: `${ALICE}: good luck` }).waitFor(WAIT);
  await bob.locator("#seats li", { hasText: "😎" }).waitFor(WAIT);

  await screenshot(alice, "cards.png");
  // Bob leaves: a two-player game ends, and alice is left waiting.
  await bob.click("#leave");
  await bob.locator("#join").waitFor({ state: "visible", ...WAIT });
  await says(alice, "Waiting for players");
  await alice.click("#leave");
  await alice.locator("#join").waitFor({ state: "visible", ...WAIT });
  assert.deepEqual(pageErrors, []);
});
