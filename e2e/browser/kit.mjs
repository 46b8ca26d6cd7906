// What the browser tests share: the browser (Debian's Chromium through playwright-core), pages
// per user, steps that skip once one failed, and waits that fail naming what did not appear.
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const URL = process.env.PARLEY_URL;
if (!URL) throw new Error('PARLEY_URL is not set: run e2e/browser/run.sh, or start a node and set it');
export const ARTIFACTS = join(dirname(fileURLToPath(import.meta.url)), 'artifacts');
export const WAIT = 10_000;
export const PASSWORD = 'correct horse battery';

export async function launch() {
  mkdirSync(ARTIFACTS, { recursive: true });
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--no-first-run', '--disable-quic'],
    timeout: 30_000,
  });
}

/** Wait for `locator`, failing with a message naming what did not appear. */
export async function see(locator, what, state = 'visible') {
  try { await locator.first().waitFor({ state, timeout: WAIT }); } catch {
    throw new Error(`${what}: did not appear within ${WAIT / 1000} s`);
  }
}
export async function waitFor(p, fn, arg, what) {
  try { await p.waitForFunction(fn, arg, { timeout: WAIT }); } catch {
    throw new Error(`${what}: not true within ${WAIT / 1000} s`);
  }
}
export const tid = (p, id) => p.locator(`[data-testid="${id}"]`);
/** Is a message with exactly `text` (and, if given, delivery `state`) shown in the open conversation? */
export const shown = ([text, state]) => [...document.querySelectorAll('[data-testid="message"]')].some((li) =>
  li.querySelector('[data-testid="message-text"]')?.textContent === text && (!state || li.dataset.state === state));
/** The texts of the open conversation, in display order. */
export const texts = (p) => p.$$eval('[data-testid="message-text"]', (els) => els.map((e) => e.textContent));

/** The users' browser contexts and pages, and the steps of one test run. */
export class Harness {
  constructor(browser) {
    this.browser = browser;
    this.ctx = {};    // name -> BrowserContext
    this.page = {};   // name -> Page
    this.broken = null; // the first failed step: later steps depend on it, so they are skipped
  }

  async contexts(names) {
    for (const name of names) this.ctx[name] = await this.browser.newContext({ viewport: { width: 1000, height: 700 } });
  }

  async step(t, name, fn) {
    if (this.broken) { t.skip(`skipped: "${this.broken}" failed`); return; }
    try { await fn(); } catch (e) {
      this.broken = name;
      await Promise.all(Object.entries(this.page).map(([who, p]) => p.isClosed() ? null
        : p.screenshot({ path: join(ARTIFACTS, `failure-${who}.png`) }).catch(() => {})));
      throw e;
    }
  }

  async openPage(name) {
    const p = await this.ctx[name].newPage();
    p.setDefaultTimeout(WAIT);
    p.on('pageerror', (e) => console.error(`[${name}] page error:`, e.message));
    await p.goto(URL);
    this.page[name] = p;
    return p;
  }

  async signIn(name, username, action) {
    const p = await this.openPage(name);
    await tid(p, 'login-username').fill(username);
    await tid(p, 'login-password').fill(PASSWORD);
    await tid(p, action === 'signup' ? 'signup-submit' : 'login-submit').click();
    await see(tid(p, 'conn-status').and(p.locator('[data-state="online"]')), `${name}: connection status "online"`);
    return p;
  }
}

export async function addContact(p, username) {
  await tid(p, 'add-contact-input').fill(username);
  await tid(p, 'add-contact-submit').click();
  await see(tid(p, `contact-${username}`), `contact ${username} in the list`);
}
export async function openContact(p, username) {
  await tid(p, `contact-${username}`).click();
  await see(tid(p, 'conv-title').filter({ hasText: username }), `conversation with ${username} open`);
}
export async function send(p, text, who) {
  await tid(p, 'compose-input').fill(text);
  await tid(p, 'compose-input').press('Enter');
  await waitFor(p, shown, [text, 'acked'], `${who}: "${text}" shown as acked`);
}
export async function expectTexts(p, expected, who) {
  await waitFor(p, shown, [expected.at(-1)], `${who}: message "${expected.at(-1)}" shown`);
  await waitFor(p, (n) => document.querySelectorAll('[data-testid="message-text"]').length >= n, expected.length,
    `${who}: ${expected.length} messages shown`);
  assert.deepEqual(await texts(p), expected, `${who}: the conversation, in order, each message once`);
}
