// Shared by the browser tests: Debian's Chromium (CHROMIUM to use another) in a fresh profile, driven by
// playwright-core, with the flags this machine's closed network needs; and what every test does with a page.
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { after, before } from "node:test";
import { chromium } from "playwright-core";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const ARTIFACTS = join(dirname(fileURLToPath(import.meta.url)), "artifacts");

/** How long any wait on a page may take. */
export const WAIT = { timeout: 15_000 };

/** `alice-xxxx`, `bob-xxxx`, …: this run's usernames, so that a rerun against the same server meets no users of an
 * earlier one. */
export function usernames(...names) {
  const run = Math.random().toString(36).slice(2, 6);
  return names.map((name) => `${name}-${run}`);
}

/**
 * Opens `url` in a new page of `context` and links as `username` with the page's own form (`#username`,
 * `#link-button`), until its `#status` says `linked as <username>`. The page's errors are pushed onto `errors`.
 */
export async function openAndLink(context, url, username, errors) {
  const page = await context.newPage();
  page.on("pageerror", (error) => errors.push(`${username}: ${error.message}`));
  await page.goto(url);
  await page.locator("#status", { hasText: "connected" }).waitFor(WAIT);
  await page.fill("#username", username);
  await page.click("#link-button");
  await page.locator("#status", { hasText: `linked as ${username}` }).waitFor(WAIT);
  return page;
}

/** Saves a screenshot of `page` as artifacts/`name`. */
export async function screenshot(page, name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: join(ARTIFACTS, name) });
}

/** Launches Chromium headless; returns its context and a `close()` that also removes the profile. */
export async function launch() {
  const userDataDir = mkdtempSync(join(tmpdir(), "emitter-browser-"));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    viewport: { width: 1000, height: 640 },
  });
  return {
    context,
    async close() {
      await context.close();
      rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

/**
 * A test file's browser for the example at `url`: Chromium launches `before` the file's tests (not without a `url`;
 * the tests then skip themselves) and closes `after` them. `open(username)` opens a page and links it (see
 * `openAndLink`); `pageErrors` collects every page's errors, for the last test to check that there were none.
 */
export function browserFor(url) {
  let browser;
  const pageErrors = [];
  before(async () => {
    if (!url) return;
    browser = await launch();
  });
  after(async () => {
    await browser?.close();
  });
  const open = (username) => openAndLink(browser.context, url, username, pageErrors);
  return { open, pageErrors };
}
