// The tic-tac-toe example in a real browser: two players and a spectator; a player reloads mid-game and gets the
// board back. TTT_URL is the running example; the test is skipped without it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { browserFor, screenshot, usernames, WAIT } from "./browser.mjs";

const TTT_URL = process.env.TTT_URL;
const [ALICE, BOB, CAROL] = usernames("alice", "bob", "carol");

const { open, pageErrors } = browserFor(TTT_URL);

const cell = (page, n) => page.locator(`#board button[data-cell="${n}"]`);

/** Waits until the board reads `marks`, row by row, with `.` for an empty cell. */
async function boardIs(page, marks) {
  await page.waitForFunction(
    (marks) => [...document.querySelectorAll("#board button")].map((b) => b.textContent || ".").join("") === marks,
    marks,
    WAIT,
  );
}

async function says(page, text) {
  await page.locator("#message", { hasText: text }).waitFor(WAIT);
}

test("two players and a spectator; a reloaded player gets the board back", { skip: !TTT_URL, timeout: 120_000 }, async () => {
  const alice = await open(ALICE);
  await says(alice, "Waiting for a second player");
  const bob = await open(BOB);
  const carol = await open(CAROL);
  await says(alice, "Your turn");
  await says(bob, `${ALICE} (✕) to move`);
  await says(carol, `${ALICE} (✕) to move`);

  await cell(alice, 4).click();
  await boardIs(bob, "....✕....");
  await cell(bob, 0).click();
  await boardIs(carol, "◯...✕....");

  // Alice reloads: she relinks on her own, keeps her seat and gets the board as it is.
  await alice.reload();
  await alice.locator("#status", { hasText: `linked as ${ALICE}` }).waitFor(WAIT);
  await boardIs(alice, "◯...✕....");
  await says(alice, "Your turn");

  // A spectator's board is not clickable; alice finishes the diagonal 2-4-6.
  assert.equal(await cell(carol, 2).isDisabled(), true);
  await cell(alice, 2).click();
  await boardIs(bob, "◯.✕.✕....");
  await cell(bob, 1).click();
  await boardIs(alice, "◯◯✕.✕....");
  await cell(alice, 6).click();
  await says(alice, "You win!");
  await says(carol, `${ALICE} (✕) wins.`);
  await alice.locator("#restart").waitFor({ state: "visible", ...WAIT });

  await screenshot(carol, "tic-tac-toe.png");
  // Everyone leaves, the spectator first (a player's free seat would go to her), so the table is empty again.
  for (const page of [carol, bob, alice]) {
    await page.click("#leave");
    await page.locator("#join").waitFor({ state: "visible", ...WAIT });
  }
  assert.deepEqual(pageErrors, []);
});
