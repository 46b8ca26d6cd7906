// Browser tests of the Parley web client: Playwright (playwright-core) driving Debian's Chromium
// against a real chat-node at PARLEY_URL. Run through ./run.sh, which starts the node.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { ARTIFACTS, Harness, WAIT, addContact, expectTexts, launch, openContact, see, send, texts, tid, waitFor } from './kit.mjs';

const run = Date.now().toString(36);
const users = { alice: `alice_${run}`, bob: `bob_${run}`, carol: `carol_${run}` };

let browser, h;
const ctx = {};   // name -> BrowserContext (the harness's)
const page = {};  // name -> Page (the harness's)
const step = (t, name, fn) => h.step(t, name, fn);
const openPage = (name) => h.openPage(name);
const signIn = (name, username, action) => h.signIn(name, username, action);

before(async () => {
  browser = await launch();
  h = new Harness(browser);
  h.ctx = ctx; h.page = page;
  await h.contexts(['probe', 'alice', 'bob', 'alice2', 'carol']);
});
after(async () => { await browser?.close(); });

const dm = [];

test('the web client', async (t) => {
  await t.test('the page is served and shows the login form', (t) => step(t, 'login form', async () => {
    const p = await openPage('probe');
    await see(tid(p, 'login-form'), 'login form');
    assert.match(await tid(p, 'login-device').inputValue(), /^[A-Za-z0-9._-]{1,64}$/, 'a device name is proposed');
    await p.close(); delete page.probe;
  }));

  await t.test('three users sign up', (t) => step(t, 'sign up', async () => {
    await Promise.all([signIn('alice', users.alice, 'signup'), signIn('bob', users.bob, 'signup'), signIn('carol', users.carol, 'signup')]);
  }));

  await t.test('alice and bob add each other and see each other online', (t) => step(t, 'contacts', async () => {
    await addContact(page.alice, users.bob);
    await see(tid(page.alice, `contact-${users.bob}`).and(page.alice.locator('[data-status="pending"]')), 'bob pending (not mutual yet)');
    await addContact(page.bob, users.alice);
    await see(tid(page.alice, `contact-${users.bob}`).and(page.alice.locator('[data-status="online"]')), 'alice sees bob online');
    await see(tid(page.bob, `contact-${users.alice}`).and(page.bob.locator('[data-status="online"]')), 'bob sees alice online');
  }));

  await t.test('alice and bob exchange messages both ways, live', (t) => step(t, 'live messages', async () => {
    await openContact(page.alice, users.bob);
    await openContact(page.bob, users.alice);
    await page.alice.locator('[data-testid="compose-input"]').pressSequentially('Hi');
    await see(tid(page.bob, 'typing').filter({ hasText: 'is typing' }), 'bob sees "alice is typing"');
    await page.alice.locator('[data-testid="compose-input"]').fill('');
    dm.push('Hello Bob <b>not bold</b>');
    await send(page.alice, dm.at(-1), 'alice');
    await expectTexts(page.bob, dm, 'bob');
    dm.push('Hi Alice!\nSecond line');
    await send(page.bob, dm.at(-1), 'bob');
    await expectTexts(page.alice, dm, 'alice');
    assert.equal(await page.bob.locator('b').count(), 0, 'user text is never parsed as HTML');
    dm.push('How are you?');
    await send(page.alice, dm.at(-1), 'alice');
    await expectTexts(page.bob, dm, 'bob');
  }));

  await t.test("alice's second device shows the same history and gets new messages live", (t) => step(t, 'second device', async () => {
    const p = await signIn('alice2', users.alice, 'login');
    assert.notEqual(await tid(p, 'me').textContent(), await tid(page.alice, 'me').textContent(), 'two device names');
    await see(tid(p, `contact-${users.bob}`).and(p.locator('[data-status="online"]')), 'alice2 sees bob online');
    await openContact(p, users.bob);
    await expectTexts(p, dm, 'alice2');
    dm.push('Sent from the other device');
    await send(p, dm.at(-1), 'alice2');
    await expectTexts(page.alice, dm, 'alice (first device)');
    await expectTexts(page.bob, dm, 'bob');
    dm.push('Fine, thanks');
    await send(page.bob, dm.at(-1), 'bob');
    await expectTexts(p, dm, 'alice2');
    await expectTexts(page.alice, dm, 'alice');
  }));

  await t.test('bob goes offline, misses messages, comes back and shows each once, in order', (t) => step(t, 'offline', async () => {
    await page.bob.close();
    delete page.bob;
    await see(tid(page.alice, `contact-${users.bob}`).and(page.alice.locator('[data-status="offline"]')), 'alice sees bob offline');
    for (let i = 1; i <= 3; i++) {
      dm.push(`While you were away ${i}`);
      await send(i === 2 ? page.alice2 : page.alice, dm.at(-1), 'alice');
    }
    const p = await openPage('bob');  // same context: the token and the cursor are in localStorage
    await see(tid(p, 'conn-status').and(p.locator('[data-state="online"]')), 'bob reconnected without logging in');
    await see(tid(p, `contact-${users.alice}`).locator('[data-testid="unread"]'), 'bob sees unread messages from alice');
    await openContact(p, users.alice);
    await expectTexts(p, dm, 'bob after coming back');
    await see(tid(page.alice, `contact-${users.bob}`).and(page.alice.locator('[data-status="online"]')), 'alice sees bob online again');
    await p.waitForTimeout(500); // late frames (sync, live) must not add duplicates
    assert.deepEqual(await texts(p), dm, 'bob: still each message once');
    await p.screenshot({ path: join(ARTIFACTS, 'conversation.png') });
  }));

  await t.test('a group of three chats', (t) => step(t, 'group', async () => {
    const a = page.alice, b = page.bob, c = page.carol;
    const name = `Trio ${run}`;
    await tid(a, 'new-group-toggle').click();
    await tid(a, 'new-group-name').fill(name);
    await tid(a, 'new-group-members').fill(`${users.bob}, ${users.carol}`);
    await tid(a, 'new-group-submit').click();
    await see(tid(a, 'conv-title').filter({ hasText: name }), 'alice: the new group open');
    const lines = [];
    lines.push('Welcome to the group');
    await send(a, lines.at(-1), 'alice');
    for (const [who, p] of [['bob', b], ['carol', c]]) {
      await see(tid(p, `group-${name}`), `${who}: group "${name}" in the list`);
      await tid(p, `group-${name}`).click();
      await expectTexts(p, lines, who);
    }
    lines.push('Thanks, from Bob');
    await send(b, lines.at(-1), 'bob');
    lines.push('And from Carol');
    await send(c, lines.at(-1), 'carol');
    for (const [who, p] of [['alice', a], ['bob', b], ['carol', c]]) await expectTexts(p, lines, who);
    await a.screenshot({ path: join(ARTIFACTS, 'group.png') });

    // alice removes carol; carol leaves nothing behind to read, bob still chats
    await a.locator('[data-testid="group-panel"] summary').click();
    await see(tid(a, 'group-member').filter({ hasText: users.carol }), 'alice: carol listed as a member');
    await tid(a, 'group-member').filter({ hasText: users.carol }).getByRole('button', { name: /Remove/ }).click();
    await waitFor(a, () => document.querySelectorAll('[data-testid="group-member"]').length === 2, null, 'alice: group of 2');
    // bob leaves
    b.once('dialog', (d) => d.accept());
    await b.locator('[data-testid="group-panel"] summary').click();
    await tid(b, 'leave-group').click();
    await see(tid(b, `group-${name}`), `bob: group "${name}" gone from the list`, 'detached');
  }));

  await t.test('a 100,000-character message is sent and shown collapsed without freezing', (t) => step(t, 'long text', async () => {
    const a = page.alice, b = page.bob;
    await openContact(a, users.bob);
    await openContact(b, users.alice);
    const long = 'x'.repeat(99_990) + ' end.';
    const started = Date.now();
    await tid(a, 'compose-input').fill(long);
    await tid(a, 'send').click();
    await see(tid(b, 'show-more'), 'bob: "show more" on the long message');
    await tid(b, 'show-more').last().click();
    await waitFor(b, (n) => [...document.querySelectorAll('[data-testid="message-text"]')].some((e) => e.textContent.length === n),
      long.length, 'bob: the whole long message after "show more"');
    assert.ok(Date.now() - started < WAIT, 'the long message took too long');
    await see(tid(a, 'message').last().and(a.locator('[data-state="acked"]')), 'alice: long message acked');
  }));
});
