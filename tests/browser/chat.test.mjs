// The chat example in a real browser: two pages link as two users, talk, see each other come and go, and one page
// reloads and relinks as the same user.
//
// CHAT_URL is the running chat example (http://127.0.0.1:PORT/); .ci/steps/40-browser.sh starts it. Chromium is
// Debian's /usr/bin/chromium (CHROMIUM to use another), driven by playwright-core, which never downloads a browser.
import { test, before } from "node:test";
import assert from "node:assert/strict";
import { browserFor, screenshot, usernames, WAIT } from "./browser.mjs";

const CHAT_URL = process.env.CHAT_URL;
const [ALICE, BOB] = usernames("alice", "bob");

before(() => {
  assert.ok(CHAT_URL, "set CHAT_URL to the running chat example, such as http://127.0.0.1:8082/");
});

const { open: openLinked, pageErrors } = browserFor(CHAT_URL);

async function open(username) {
  const page = await openLinked(username);
  await linked(page, username);
  return page;
}

async function linked(page, username) {
  await page.locator("#status", { hasText: `linked as ${username}` }).waitFor(WAIT);
  await page.locator("#room").waitFor({ state: "visible", ...WAIT });
}

/** Waits until the page's log has `count` lines containing `text`. */
async function logShows(page, text, count = 1) {
  await page.waitForFunction(
    ([text, count]) =>
      [...document.querySelectorAll("#log li")].filter((li) => li.textContent.includes(text)).length >= count,
    [text, count],
    WAIT,
  );
}

async function say(page, text) {
  await page.fill("#message", text);
  await page.click("#send");
}

async function userState(page, username) {
  const item = page.locator(`#users li[data-username="${username}"]`);
  return (await item.count()) === 0 ? "absent" : await item.getAttribute("class");
}

test("two users chat, come and go, and a reloaded page relinks", { timeout: 120_000 }, async () => {
  const alice = await open(ALICE);
  const bob = await open(BOB);

  // Each sees the other.
  await logShows(alice, `${BOB} joined`);
  await bob.locator(`#users li[data-username="${ALICE}"].linked`).waitFor(WAIT);
  await alice.locator(`#users li[data-username="${BOB}"].linked`).waitFor(WAIT);

  // They talk; every message reaches both, the sender included.
  await say(alice, "hello bob");
  await logShows(bob, `${ALICE}hello bob`);
  await say(bob, "hi alice");
  await logShows(alice, `${BOB}hi alice`);
  await logShows(bob, `${BOB}hi alice`);

  // Bob reloads: his connection drops (bob goes offline for alice) and the new page relinks as bob on its own.
  await bob.reload();
  await linked(bob, BOB);
  await logShows(alice, `${BOB} went offline`);
  await logShows(alice, `${BOB} is online`);
  await alice.locator(`#users li[data-username="${BOB}"].linked`).waitFor(WAIT);
  await say(bob, "back after a reload");
  await logShows(alice, `${BOB}back after a reload`);

  await screenshot(alice, "chat.png");

  // Bob leaves: alice sees him go, and his page offers to link again.
  await bob.click("#leave");
  await logShows(alice, `${BOB} left`);
  await bob.locator("#join").waitFor({ state: "visible", ...WAIT });
  assert.equal(await userState(alice, BOB), "absent");

  // He comes back as a new user; then alice leaves and bob sees it.
  await bob.fill("#username", BOB);
  await bob.click("#link-button");
  await linked(bob, BOB);
  await logShows(alice, `${BOB} joined`, 2);
  await alice.click("#leave");
  await logShows(bob, `${ALICE} left`);
  assert.equal(await userState(bob, ALICE), "absent");
  await bob.click("#leave");
  await bob.locator("#join").waitFor({ state: "visible", ...WAIT });

  assert.deepEqual(pageErrors, []);
});
