// Parley web client: timeline items (edits, deletes, reactions, replies, group events), read
// markers and blocks. Loaded before app.js; both are classic scripts sharing one global scope,
// so these functions use app.js's state (session, chans, groups, current…) once it runs.
// User content is only ever put into the page with textContent, never innerHTML.
'use strict';

const QUICK_EMOJIS = ['👍', '❤️', '😂', '🎉', '😮'];
const READ_AFTER = 300;        // send `read` this long after the newest item became visible
const readTimers = new Map();  // channel -> timer
const blocks = new Set();      // users this user blocks
let composeMode = null;        // {kind: 'reply'|'edit', seq} while replying to or editing a message

const isQuiet = (m) => m.kind === 'edit' || m.kind === 'delete' || m.kind === 'reaction';
/** Items that are drawn in the timeline: plain messages and group events. */
const isShown = (m) => !m.kind || m.kind === 'system';

// ---------- folding items into their targets ----------
/** Fold an edit, delete or reaction into the message it is about, if that message is here.
 * A target from the server (history, sync) is as it was when read, items up to its `_foldSeq`
 * included; later items are applied in seq order, each once. Returns the target it changed. */
function foldItem(c, m) {
  const t = c.msgs.get(m.target_seq);
  if (!t || t.kind) return null;
  if (m.seq <= (t._foldSeq || 0) && m.kind !== 'delete') return null;
  t._foldSeq = Math.max(t._foldSeq || 0, m.seq);
  if (m.kind === 'edit' && !t.deleted) { t.text = m.text; t.edited_at = m.ts; }
  if (m.kind === 'delete') { t.deleted = true; t.text = ''; delete t.edited_at; t.reactions = {}; }
  if (m.kind === 'reaction' && !t.deleted) {
    const r = t.reactions || (t.reactions = {});
    const users = r[m.text] || [];
    if (m.remove) r[m.text] = users.filter((u) => u !== m.from);
    else if (!users.includes(m.from)) r[m.text] = [...users, m.from];
    if (!r[m.text].length) delete r[m.text];
  }
  return t;
}

/** A group event: what it means for this client's list of groups (a member added learns of
 * the group from it: it is their first item of the channel). */
function onSystemItem(m) {
  const g = groups.get(m.channel);
  if (m.event?.action === 'renamed' && g) { g.name = m.event.name; renderSidebar(); renderHeader(); }
  refreshGroups().catch(() => {});
}

// ---------- drawing a message ----------
/** The parts of a message bubble beyond its text: the quoted target of a reply, the
 * "edited" note, reactions, read ticks, and the actions (reply, react, edit, delete). */
function decorate(li, m, pending) {
  const c = chan(m.channel);
  if (m.reply_to) {
    const t = c.msgs.get(m.reply_to);
    const quoted = !t ? 'a message not loaded' : t.deleted ? 'a deleted message' : t.text;
    li.querySelector('.meta').after(el('blockquote', { class: 'quote', 'data-testid': 'reply-quote', 'data-reply-to': m.reply_to },
      el('span', { class: 'from', text: t ? nameOf(t.from) : '' }), el('span', { class: 'quote-text', text: quoted.slice(0, 200) })));
  }
  if (m.deleted) {
    const text = li.querySelector('[data-testid="message-text"]');
    text.textContent = 'This message was deleted';
    text.classList.add('deleted');
    li.dataset.deleted = 'true';
    li.querySelector('[data-testid="message-state"]')?.replaceChildren();
  }
  if (m.edited_at && !m.deleted) li.querySelector('.meta').append(el('span', { class: 'edited', 'data-testid': 'edited', text: 'edited' }));
  const reactions = Object.entries(m.reactions || {});
  if (reactions.length) {
    const box = el('div', { class: 'reactions', 'data-testid': 'reactions' });
    for (const [emoji, users] of reactions) {
      const mine = users.includes(session.user_id);
      box.append(el('button', { type: 'button', class: 'chip' + (mine ? ' mine' : ''), 'data-testid': 'reaction', 'data-emoji': emoji,
        'aria-pressed': String(mine), title: users.map(nameOf).join(', '), onclick: () => react(m, emoji, mine) }, `${emoji} ${users.length}`));
    }
    li.append(box);
  }
  if (pending || m.deleted) return;
  if (m.from === session.user_id) {
    const state = li.querySelector('[data-testid="message-state"]');
    if (state) { const tick = readTick(m); state.textContent = tick.text; state.dataset.read = tick.read; }
  }
  li.append(actions(m));
}

function actions(m) {
  const mine = m.from === session.user_id;
  const g = groups.get(m.channel);
  const box = el('div', { class: 'actions', 'data-testid': 'message-actions' },
    el('button', { type: 'button', class: 'link', 'data-testid': 'reply', onclick: () => setMode('reply', m) }, 'Reply'));
  const picker = el('details', { class: 'picker' }, el('summary', { 'data-testid': 'react', 'aria-label': 'React' }, 'React'));
  for (const emoji of QUICK_EMOJIS) {
    picker.append(el('button', { type: 'button', class: 'link emoji', 'data-testid': 'react-emoji', 'data-emoji': emoji,
      'aria-label': `React with ${emoji}`, onclick: () => { picker.open = false; react(m, emoji, (m.reactions?.[emoji] || []).includes(session.user_id)); } }, emoji));
  }
  box.append(picker);
  if (mine) box.append(el('button', { type: 'button', class: 'link', 'data-testid': 'edit', onclick: () => setMode('edit', m) }, 'Edit'));
  if (mine || g?.owner === session.user_id) {
    box.append(el('button', { type: 'button', class: 'link danger', 'data-testid': 'delete',
      onclick: () => { if (confirm('Delete this message for everyone?')) sendItem({ kind: 'delete', channel: m.channel, seq: m.seq }); } }, 'Delete'));
  }
  return box;
}

/** A group event, drawn across the timeline. */
function systemNode(m) {
  return el('li', { class: 'event', 'data-testid': 'event', 'data-action': m.event?.action || '', 'data-key': `s:${m.seq}`, 'data-seq': m.seq },
    el('span', { text: m.text }), el('time', { datetime: new Date(m.ts).toISOString(), text: ` · ${fmtTime(m.ts)}` }));
}

// ---------- items out ----------
function react(m, emoji, remove) { sendItem({ kind: 'reaction', channel: m.channel, seq: m.seq, text: emoji, remove }); }

/** Queue an edit, delete or reaction like a message: resent with its client_msg_id until acked. */
function sendItem(item) {
  const o = { client_msg_id: `${session.device_id}-${Date.now().toString(36)}-${randId(4)}`, ts: Date.now(), ...item };
  outbox.push(o); save(devKey('outbox'), outbox);
  transmit(o);
}

/** The frame for an outbox entry. */
function frameOf(o) {
  const base = { client_msg_id: o.client_msg_id, channel: o.channel };
  switch (o.kind) {
    case 'edit': return { type: 'edit', ...base, seq: o.seq, text: o.text };
    case 'delete': return { type: 'delete', ...base, seq: o.seq };
    case 'reaction': return { type: 'react', ...base, seq: o.seq, emoji: o.text, remove: !!o.remove };
    default: return o.reply_to ? { type: 'send', ...base, text: o.text, reply_to: o.reply_to } : { type: 'send', ...base, text: o.text };
  }
}

/** The ack of an item: it is stored; fold it here (this device gets no live copy). */
function itemAcked(o, a) {
  const m = { channel: a.channel, seq: a.seq, from: session.user_id, from_device: session.device_id, client_msg_id: a.client_msg_id,
    text: o.kind === 'delete' ? '' : o.text, ts: a.ts, kind: o.kind, target_seq: o.seq };
  if (o.remove) m.remove = true;
  addMessage(m, true);
}

// ---------- compose modes: reply and edit ----------
function setMode(kind, m) {
  composeMode = { kind, seq: m.seq, channel: m.channel };
  $('compose-mode').hidden = false;
  $('compose-mode-text').textContent = `${kind === 'reply' ? 'Replying to' : 'Editing'} ${nameOf(m.from)}: ${m.text.slice(0, 80)}`;
  $('compose-mode').dataset.mode = kind;
  const ta = $('compose-text');
  if (kind === 'edit') ta.value = m.text;
  ta.focus();
}
function clearMode() { composeMode = null; $('compose-mode').hidden = true; }
/** What the compose box sends: a message, a reply, or an edit. Returns true when it took the text. */
function composeSubmit(text) {
  const mode = composeMode && composeMode.channel === current ? composeMode : null;
  clearMode();
  if (mode?.kind === 'edit') { sendItem({ kind: 'edit', channel: current, seq: mode.seq, text }); return true; }
  sendText(text, mode?.kind === 'reply' ? mode.seq : undefined);
  return true;
}

// ---------- read markers ----------
function newestSeq(c) { let n = 0; for (const s of c.msgs.keys()) n = Math.max(n, s); return n; }
/** The open conversation shows its newest item: say so (debounced), if that moves the marker. */
function markRead(channel) {
  if (channel !== current || document.visibilityState === 'hidden') return;
  clearTimeout(readTimers.get(channel));
  readTimers.set(channel, setTimeout(() => {
    // Only what is still on screen is read: the user may have left the chat meanwhile, and
    // items that arrived since are not seen.
    if (channel !== current || document.visibilityState === 'hidden') return;
    const c = chan(channel), seq = newestSeq(c);
    if (seq > (c.reads.get(session.user_id) || 0) && sendFrame({ type: 'read', channel, seq })) c.reads.set(session.user_id, seq);
  }, READ_AFTER));
}
function onRead(f) {
  const c = chan(f.channel);
  if (f.seq > (c.reads.get(f.user) || 0)) c.reads.set(f.user, f.seq);
  if (f.user === session.user_id && c.unread) { c.unread = 0; renderSidebar(); }
  if (f.channel === current) rerenderMine();
}
async function loadReads(channel) {
  try {
    const r = await api('GET', `/v1/channels/${encodeURIComponent(channel)}/reads`);
    const c = chan(channel);
    for (const { user, seq } of r.reads) if (seq > (c.reads.get(user) || 0)) c.reads.set(user, seq);
    if (channel === current) rerenderMine();
  } catch (e) { /* not a member any more: nothing to show */ }
}
/** Ticks for one of this user's messages: read by the other (one-on-one), or by how many (group). */
function readTick(m) {
  const c = chan(m.channel);
  if (m.channel.startsWith('dm:')) {
    const peer = dmPeer(m.channel);
    if (peer === session.user_id) return { text: '✓ sent', read: 'none' };
    return (c.reads.get(peer) || 0) >= m.seq ? { text: '✓✓ read', read: 'all' } : { text: '✓ sent', read: 'none' };
  }
  const g = groups.get(m.channel);
  const others = g ? g.members.filter((u) => u !== session.user_id) : [];
  const n = others.filter((u) => (c.reads.get(u) || 0) >= m.seq).length;
  return { text: n ? `✓ read by ${n}` : '✓ sent', read: n === others.length && n ? 'all' : n ? 'some' : 'none' };
}
function rerenderMine() {
  const c = chan(current);
  for (const li of document.querySelectorAll('#msg-list .msg.mine[data-seq]')) {
    const m = c.msgs.get(Number(li.dataset.seq));
    if (m) renderMessage(m);
  }
}
/** Unread counts as the server keeps them (GET /v1/channels), at start and after reconnects. */
async function refreshChannels() {
  const r = await api('GET', '/v1/channels');
  for (const s of r.channels) {
    const c = chan(s.channel);
    c.unread = s.channel === current ? 0 : s.unread;
    c.lastTs = s.last_ts;
    if (s.read_seq > (c.reads.get(session.user_id) || 0)) c.reads.set(session.user_id, s.read_seq);
  }
  renderSidebar();
}

// ---------- groups: the frame on creation, renames ----------
function onGroupFrame(f) { groups.set(f.group.channel, f.group); renderSidebar(); }
async function onRename(ev) {
  ev.preventDefault();
  const g = groups.get(current); if (!g) return;
  const input = $('rename-input');
  try {
    const ng = await api('PATCH', `/v1/groups/${encodeURIComponent(g.group_id)}`, { name: input.value.trim() });
    groups.set(ng.channel, ng); input.value = '';
    renderSidebar(); renderHeader();
  } catch (e) { $('conv-sub').textContent = e.status === 403 ? 'Only the owner can rename the group.' : e.message; }
}

// ---------- blocks ----------
async function refreshBlocks() {
  const r = await api('GET', '/v1/blocks');
  blocks.clear();
  for (const id of r.blocks) blocks.add(id);
}
async function toggleBlock(peer) {
  const blocked = blocks.has(peer);
  try {
    await api(blocked ? 'DELETE' : 'PUT', '/v1/blocks/' + encodeURIComponent(peer));
    if (blocked) blocks.delete(peer); else blocks.add(peer);
    $('contact-menu').open = false;
    await refreshContacts();
  } catch (e) { $('conv-sub').textContent = e.message; }
}
/** The contact menu of a one-on-one conversation. */
function renderContactMenu(peer) {
  const menu = $('contact-menu');
  menu.hidden = !peer || peer === session.user_id;
  if (menu.hidden) return;
  const b = $('block-toggle');
  b.textContent = blocks.has(peer) ? 'Unblock' : 'Block';
  b.dataset.blocked = String(blocks.has(peer));
  b.onclick = () => toggleBlock(peer);
}
