// Browser tests of the web client's timeline items: edit and delete your own messages, react,
// reply with the quoted target, read ticks in one-on-one chats and "read by N" in groups,
// unread badges, group events in the timeline, renaming a group, and block/unblock from a
// contact's menu. Playwright (playwright-core) driving Debian's Chromium against a real
// chat-node at PARLEY_URL; run through ./run.sh. The screenshot artifacts/timeline.png shows a
// conversation with edits, a reply, reactions and read ticks.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { ARTIFACTS, Harness, addContact, launch, openContact, see, send, tid, waitFor } from './kit.mjs';

const run = Date.now().toString(36);
const users = { dora: `dora_${run}`, evan: `evan_${run}`, fay: `fay_${run}` };
let browser, h;

/** The message bubble whose text contains `text`. */
const bubble = (p, text) => tid(p, 'message').filter({ has: p.locator('[data-testid="message-text"]', { hasText: text }) });
/** In the page: the ticks of the own message whose text is `text` read `want` ("all": ✓✓ read). */
const readIs = ([text, want]) => [...document.querySelectorAll('[data-testid="message"]')]
  .find((li) => li.querySelector('[data-testid="message-text"]')?.textContent === text)
  ?.querySelector('[data-testid="message-state"]')?.dataset.read === want;
/** In the page: the state label of the own message whose text is `text`. */
const stateOf = ([text]) => [...document.querySelectorAll('[data-testid="message"]')]
  .find((li) => li.querySelector('[data-testid="message-text"]')?.textContent === text)
  ?.querySelector('[data-testid="message-state"]')?.textContent || '';

before(async () => {
  browser = await launch();
  h = new Harness(browser);
  await h.contexts(['dora', 'evan', 'fay']);
});
after(async () => { await browser?.close(); });

test('timeline items in the web client', async (t) => {
  const step = (t, name, fn) => h.step(t, name, fn);

  await t.test('dora and evan sign up, befriend and open their chat', (t) => step(t, 'setup', async () => {
    await Promise.all([h.signIn('dora', users.dora, 'signup'), h.signIn('evan', users.evan, 'signup'), h.signIn('fay', users.fay, 'signup')]);
    const { dora, evan } = h.page;
    await addContact(dora, users.evan);
    await addContact(evan, users.dora);
    await openContact(dora, users.evan);
    await openContact(evan, users.dora);
  }));

  await t.test('a message evan reads shows two ticks to dora', (t) => step(t, 'read ticks', async () => {
    const { dora, evan } = h.page;
    await send(dora, 'Lunch at noon?', 'dora');
    await see(bubble(evan, 'Lunch at noon?'), 'evan: dora\'s message');
    await waitFor(dora, readIs, ['Lunch at noon?', 'all'], 'dora: "read" ticks on her message');
    assert.match(await dora.evaluate(stateOf, ['Lunch at noon?']), /read/);
  }));

  await t.test('dora edits her message; both see the new text, marked edited', (t) => step(t, 'edit', async () => {
    const { dora, evan } = h.page;
    await bubble(dora, 'Lunch at noon?').locator('[data-testid="edit"]').click();
    await see(tid(dora, 'compose-mode').filter({ hasText: 'Editing' }), 'dora: editing mode');
    assert.equal(await tid(dora, 'compose-input').inputValue(), 'Lunch at noon?');
    await tid(dora, 'compose-input').fill('Lunch at 12:30?');
    await tid(dora, 'compose-input').press('Enter');
    for (const [who, p] of [['evan', evan], ['dora', dora]]) {
      await see(bubble(p, 'Lunch at 12:30?').locator('[data-testid="edited"]'), `${who}: the edited text, marked edited`);
      assert.equal(await bubble(p, 'Lunch at noon?').count(), 0, `${who}: the old text is gone`);
    }
    assert.equal(await evan.locator('[data-testid="message"]').count(), 1, 'evan: an edit is not a message of its own');
  }));

  await t.test('evan replies quoting dora\'s message', (t) => step(t, 'reply', async () => {
    const { dora, evan } = h.page;
    await bubble(evan, 'Lunch at 12:30?').locator('[data-testid="reply"]').click();
    await see(tid(evan, 'compose-mode').filter({ hasText: 'Replying to' }), 'evan: reply mode');
    await send(evan, 'Sounds good, see you there', 'evan');
    for (const [who, p] of [['dora', dora], ['evan', evan]]) {
      await see(bubble(p, 'Sounds good').locator('[data-testid="reply-quote"]').filter({ hasText: 'Lunch at 12:30?' }),
        `${who}: the reply quotes its target`);
    }
  }));

  await t.test('both react; the chips count and toggle', (t) => step(t, 'reactions', async () => {
    const { dora, evan } = h.page;
    const target = bubble(evan, 'Lunch at 12:30?');
    await target.locator('[data-testid="react"]').click();
    await target.locator('[data-testid="react-emoji"][data-emoji="👍"]').click();
    await see(bubble(dora, 'Lunch at 12:30?').locator('[data-testid="reaction"][data-emoji="👍"]').filter({ hasText: '1' }), 'dora: 👍 1');
    await bubble(dora, 'Lunch at 12:30?').locator('[data-testid="reaction"][data-emoji="👍"]').click();
    for (const [who, p] of [['dora', dora], ['evan', evan]]) {
      await see(bubble(p, 'Lunch at 12:30?').locator('[data-testid="reaction"][data-emoji="👍"]').filter({ hasText: '2' }), `${who}: 👍 2`);
    }
    const reply = bubble(dora, 'Sounds good');
    await reply.locator('[data-testid="react"]').click();
    await reply.locator('[data-testid="react-emoji"][data-emoji="🎉"]').click();
    await see(bubble(evan, 'Sounds good').locator('[data-testid="reaction"][data-emoji="🎉"]'), 'evan: 🎉 on his reply');
    // Take one back: the chip goes when nobody gives it.
    await send(evan, 'Bring the menu', 'evan');
    await bubble(evan, 'Bring the menu').locator('[data-testid="react"]').click();
    await bubble(evan, 'Bring the menu').locator('[data-testid="react-emoji"][data-emoji="😮"]').click();
    await see(bubble(dora, 'Bring the menu').locator('[data-testid="reaction"][data-emoji="😮"]'), 'dora: 😮');
    await bubble(evan, 'Bring the menu').locator('[data-testid="reaction"][data-emoji="😮"]').click();
    await see(bubble(dora, 'Bring the menu').locator('[data-testid="reaction"]'), 'dora: the 😮 taken back', 'detached');
  }));

  await t.test('dora deletes a message; evan sees it deleted', (t) => step(t, 'delete', async () => {
    const { dora, evan } = h.page;
    await send(dora, 'oops, wrong chat', 'dora');
    await see(bubble(evan, 'oops, wrong chat'), 'evan: the message before its deletion');
    dora.once('dialog', (d) => d.accept());
    await bubble(dora, 'oops, wrong chat').locator('[data-testid="delete"]').click();
    for (const [who, p] of [['evan', evan], ['dora', dora]]) {
      await see(p.locator('[data-testid="message"][data-deleted="true"]'), `${who}: "This message was deleted"`);
      assert.equal(await bubble(p, 'oops, wrong chat').count(), 0, `${who}: the text is gone`);
    }
    assert.equal(await bubble(evan, 'Lunch at 12:30?').locator('[data-testid="delete"]').count(), 0,
      'evan cannot delete dora\'s message in a one-on-one chat');
    await waitFor(dora, readIs, ['Lunch at 12:30?', 'all'], 'dora: her edited message still read');
    await dora.screenshot({ path: join(ARTIFACTS, 'timeline.png') });
  }));

  await t.test('unread badges count messages, not reactions, and clear when opened', (t) => step(t, 'unread', async () => {
    const { dora, evan } = h.page;
    // evan looks elsewhere: a chat with fay.
    await addContact(evan, users.fay);
    await openContact(evan, users.fay);
    await send(dora, 'Are you there?', 'dora');
    await send(dora, 'Hello?', 'dora');
    const badge = tid(evan, `contact-${users.dora}`).locator('[data-testid="unread"]');
    await see(badge.filter({ hasText: '2' }), 'evan: 2 unread from dora');
    await bubble(dora, 'Hello?').locator('[data-testid="react"]').click();
    await bubble(dora, 'Hello?').locator('[data-testid="react-emoji"][data-emoji="❤️"]').click();
    await see(bubble(dora, 'Hello?').locator('[data-testid="reaction"]'), 'dora: her own ❤️');
    // A message after the reaction: the badge counts it, not the reaction before it.
    await send(dora, 'Third try', 'dora');
    await see(badge.filter({ hasText: '3' }), 'evan: 3 unread (the reaction is not one)');
    await openContact(evan, users.dora);
    await see(badge, 'evan: the badge cleared', 'detached');
  }));

  await t.test('group events show in the timeline; a member added learns of the group; rename; read by N', (t) => step(t, 'group', async () => {
    const { dora, evan, fay } = h.page;
    const name = `Lunch ${run}`;
    await tid(dora, 'new-group-toggle').click();
    await tid(dora, 'new-group-name').fill(name);
    await tid(dora, 'new-group-members').fill(users.evan);
    await tid(dora, 'new-group-submit').click();
    await see(tid(dora, 'conv-title').filter({ hasText: name }), 'dora: the new group open');
    await see(tid(evan, `group-${name}`), 'evan: the group, from the group frame');
    await send(dora, 'Who is coming?', 'dora');
    // fay is added: she learns of the group from its first item.
    await dora.locator('[data-testid="group-panel"] summary').click();
    await tid(dora, 'add-member-input').fill(users.fay);
    await tid(dora, 'add-member-submit').click();
    await see(tid(fay, `group-${name}`), 'fay: the group appears');
    await see(tid(dora, 'event').filter({ hasText: 'added' }), 'dora: "added" in the timeline');
    await tid(fay, `group-${name}`).click();
    await see(tid(fay, 'event').filter({ hasText: 'added' }), 'fay: "added" in the timeline');
    // Rename (the owner's panel only).
    const renamed = `Lunch crew ${run}`;
    await tid(dora, 'rename-input').fill(renamed);
    await tid(dora, 'rename-submit').click();
    for (const [who, p] of [['dora', dora], ['evan', evan], ['fay', fay]]) await see(tid(p, `group-${renamed}`), `${who}: the new name`);
    await see(tid(fay, 'event').filter({ hasText: 'renamed' }), 'fay: "renamed" in the timeline');
    assert.equal(await tid(fay, 'rename-form').isVisible(), false, 'fay is not the owner: no rename form');
    // Read by N: fay has the group open; evan opens it too.
    await tid(evan, `group-${renamed}`).click();
    await waitFor(dora, (a) => [...document.querySelectorAll('[data-testid="message"]')]
      .find((li) => li.querySelector('[data-testid="message-text"]')?.textContent === a[0])
      ?.querySelector('[data-testid="message-state"]')?.textContent.includes('read by 2'), ['Who is coming?'], 'dora: "read by 2"');
    await dora.screenshot({ path: join(ARTIFACTS, 'timeline-group.png') });
  }));

  await t.test('evan blocks dora from the contact menu; her messages are refused until he unblocks', (t) => step(t, 'block', async () => {
    const { dora, evan } = h.page;
    await openContact(evan, users.dora);
    await openContact(dora, users.evan);
    await tid(evan, 'contact-menu-toggle').click();
    await see(tid(evan, 'block-toggle').filter({ hasText: 'Block' }), 'evan: "Block" in the menu');
    await tid(evan, 'block-toggle').click();
    await see(tid(evan, `contact-${users.dora}`).filter({ hasText: 'blocked' }), 'evan: dora marked blocked');
    await tid(dora, 'compose-input').fill('Why no answer?');
    await tid(dora, 'compose-input').press('Enter');
    await waitFor(dora, ([text]) => [...document.querySelectorAll('[data-testid="message"][data-state="failed"]')]
      .some((li) => li.querySelector('[data-testid="message-text"]')?.textContent === text), ['Why no answer?'], 'dora: her message refused');
    await tid(evan, 'contact-menu-toggle').click();
    await see(tid(evan, 'block-toggle').filter({ hasText: 'Unblock' }), 'evan: "Unblock" in the menu');
    await tid(evan, 'block-toggle').click();
    await see(tid(evan, `contact-${users.dora}`).filter({ hasText: 'blocked' }), 'evan: dora no longer blocked', 'detached');
    await bubble(dora, 'Why no answer?').getByRole('button', { name: 'Retry' }).click();
    await waitFor(dora, ([text]) => [...document.querySelectorAll('[data-testid="message"][data-state="acked"]')]
      .some((li) => li.querySelector('[data-testid="message-text"]')?.textContent === text), ['Why no answer?'], 'dora: sent after the unblock');
    await see(bubble(evan, 'Why no answer?'), 'evan: dora\'s message after the unblock');
  }));
});
