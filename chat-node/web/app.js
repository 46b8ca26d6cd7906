// Parley web client: vanilla JS against the public contract (PROTOCOL.md, docs/protocol.md).
// User content is only ever put into the page with textContent, never innerHTML.
// Timeline items (edits, deletes, reactions, replies, group events), read markers and blocks
// are in timeline.js, loaded first.
'use strict';

const $ = (id) => document.getElementById(id);
const COLLAPSE_CHARS = 2000;   // longer messages are collapsed behind "Show more"
const COLLAPSE_LINES = 30;
const PAGE = 50;               // history page size
const TYPING_EVERY = 3000;     // send `typing` at most this often
const TYPING_SHOWN = 5000;     // show "X is typing" this long after the last frame
const HEARTBEAT_EVERY = 10000;
const RESEND_AFTER = 15000;    // resend an unacked message after this long on a live socket

// ---------- state ----------
let session = load('parley.session');          // {token, user_id, username, device_id}
const people = new Map();     // user_id -> {user_id, username, display_name}
const contacts = new Map();   // user_id -> contact entry (with status, last_seen, mutual)
const groups = new Map();     // channel -> group
const chans = new Map();      // channel -> {msgs: Map seq->msg (items too), before, more, loaded, unread, reads: Map user->seq}
const typing = new Map();     // channel -> Map user -> expiry ts
let outbox = [];              // [{client_msg_id, channel, text, ts, sentAt}]
let current = null;           // open channel
let ws = null, wsOpen = false, nextWsUrl = null, attempt = 0, reconnectTimer = null, hbTimer = null;
let lastRedirect = 0; // when the last `reconnect` frame came: two within a second means the nodes disagree for now
let cursor = 0;               // cur_max_message_id: largest inbox_id with nothing missing below
const above = new Set();      // inbox ids seen above the cursor (a gap below them)
let syncing = false, gapTimer = null, ticks = 0, reqNo = 0, lastTyping = 0, cursorTimer = null, lastCursorSent = 0;

function load(key) { try { return JSON.parse(localStorage.getItem(key)); } catch { return null; } }
function save(key, v) { try { localStorage.setItem(key, JSON.stringify(v)); } catch (e) { console.warn('storage', e); } }
function devKey(kind) { return `parley.${kind}.${session.user_id}.${session.device_id}`; }
function randId(n = 16) {
  const a = new Uint8Array(n); crypto.getRandomValues(a);
  return Array.from(a, (b) => b.toString(36).padStart(2, '0')).join('').slice(0, n * 2);
}
function deviceName() {
  let d = localStorage.getItem('parley.device');
  if (!d) { d = 'web-' + randId(4); localStorage.setItem('parley.device', d); }
  return d;
}
function dmChannel(a, b) { return a < b ? `dm:${a}:${b}` : `dm:${b}:${a}`; } // ids are ASCII: code-unit order = byte order
function dmPeer(ch) { const [, a, b] = ch.split(':'); return a === session.user_id ? b : a; }
function el(tag, props = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? '' : v);
  }
  for (const k of kids) if (k) e.append(k);
  return e;
}
function fmtTime(ts) {
  if (!ts) return '';
  const d = new Date(ts), now = new Date();
  const t = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  return d.toDateString() === now.toDateString() ? t : `${d.toLocaleDateString()} ${t}`;
}
function nameOf(id) {
  if (session && id === session.user_id) return 'You';
  const p = people.get(id) || contacts.get(id);
  if (p) return p.display_name || p.username;
  ensurePerson(id);
  return '…';
}

// ---------- HTTP ----------
class ApiError extends Error { constructor(status, code, msg) { super(msg); this.status = status; this.code = code; } }
async function api(method, path, body) {
  const headers = { 'content-type': 'application/json' };
  if (session) headers.authorization = 'Bearer ' + session.token;
  let res;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) { throw new ApiError(0, 'network', 'cannot reach the server'); }
  if (res.status === 204) return null;
  const data = await res.json().catch(() => ({}));
  if (!res.ok) {
    const err = new ApiError(res.status, data.error?.code || 'error', data.error?.message || res.statusText);
    if (res.status === 401 && session && !path.startsWith('/v1/sessions')) logout('Your session expired; log in again.');
    throw err;
  }
  return data;
}
const fetching = new Map();
function ensurePerson(id) {
  if (people.has(id) || contacts.has(id) || fetching.has(id) || !session) return fetching.get(id);
  const p = api('GET', '/v1/users/' + encodeURIComponent(id)).then((u) => {
    people.set(id, u);
    for (const s of document.querySelectorAll(`[data-from="${CSS.escape(id)}"]`)) s.textContent = nameOf(id);
    renderSidebar(); renderHeader();
  }).catch(() => {});
  fetching.set(id, p);
  return p;
}

// ---------- login ----------
async function onLogin(ev) {
  ev.preventDefault();
  const f = ev.target, action = ev.submitter?.value || 'login';
  const username = f.username.value.trim().toLowerCase(), password = f.password.value, device = f.device.value.trim();
  $('login-error').textContent = '';
  localStorage.setItem('parley.device', device);
  try {
    if (action === 'signup') await api('POST', '/v1/users', { username, password });
    const s = await api('POST', '/v1/sessions', { username, password, device_id: device });
    session = { token: s.token, user_id: s.user_id, device_id: s.device_id, username };
    save('parley.session', session);
    f.password.value = '';
    start();
  } catch (e) {
    $('login-error').textContent = e.code === 'conflict' ? 'That username is taken.'
      : e.code === 'unauthorized' ? 'Wrong username or password.' : e.message;
  }
}
function logout(msg) {
  if (ws) { const w = ws; ws = null; w.onclose = null; w.close(); }
  clearTimeout(reconnectTimer); clearInterval(hbTimer);
  session = null; localStorage.removeItem('parley.session');
  history.replaceState(null, '', location.pathname);
  showLogin(msg);
}
function showLogin(msg) {
  $('app-view').hidden = true; $('logout').hidden = true; $('login-view').hidden = false;
  $('me').textContent = ''; setConn('offline');
  $('login-form').device.value = deviceName();
  $('login-error').textContent = msg || '';
}

// ---------- start ----------
async function start() {
  for (const m of [people, contacts, groups, chans, typing, fetching]) m.clear();
  above.clear(); current = null; lastCursorSent = 0; attempt = 0; syncing = false;
  $('msg-list').replaceChildren(); $('compose').hidden = true; $('empty').hidden = false;
  $('login-view').hidden = true; $('app-view').hidden = false; $('logout').hidden = false;
  $('me').textContent = `${session.username} · ${session.device_id}`;
  cursor = Number(localStorage.getItem(devKey('cursor'))) || 0;
  outbox = load(devKey('outbox')) || [];
  for (const o of outbox) chan(o.channel);
  renderSidebar();
  clearMode();
  await Promise.all([refreshContacts(), refreshGroups(), refreshChannels(), refreshBlocks()]).catch(() => {});
  connect();
}

async function refreshContacts() {
  const r = await api('GET', '/v1/contacts');
  contacts.clear();
  for (const c of r.contacts) { contacts.set(c.user_id, c); people.set(c.user_id, c); }
  renderSidebar(); renderHeader();
}
async function refreshGroups() {
  const r = await api('GET', '/v1/groups');
  groups.clear();
  for (const g of r.groups) { if (g.members.includes(session.user_id)) groups.set(g.channel, g); }
  renderSidebar(); renderHeader();
}

// ---------- WebSocket ----------
function setConn(state) { const c = $('conn'); c.dataset.state = state; c.textContent = state; }
async function connect() {
  if (!session) return;
  clearTimeout(reconnectTimer);
  setConn('connecting');
  let url = nextWsUrl; nextWsUrl = null;
  try {
    if (!url) url = (await api('GET', '/v1/assign')).ws_url;
  } catch (e) { if (session) scheduleReconnect(); return; }
  if (!session) return;
  const sock = new WebSocket(url + (url.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(session.token));
  ws = sock;
  sock.onopen = () => {
    if (ws !== sock) return;
    wsOpen = true; attempt = 0; setConn('online');
    clearInterval(hbTimer);
    hbTimer = setInterval(tick, HEARTBEAT_EVERY);
    syncing = false; sync();
  };
  sock.onmessage = (e) => { if (ws === sock) { try { onFrame(JSON.parse(e.data)); } catch (err) { console.error(err); } } };
  sock.onclose = () => {
    if (ws !== sock) return;
    ws = null; wsOpen = false; clearInterval(hbTimer);
    if (session) scheduleReconnect();
  };
}
function scheduleReconnect(now) {
  setConn('reconnecting');
  clearTimeout(reconnectTimer);
  const delay = now ? 0 : Math.min(30000, 500 * 2 ** attempt) * (0.5 + Math.random() / 2);
  attempt = Math.min(attempt + 1, 10);
  reconnectTimer = setTimeout(connect, delay);
}
function sendFrame(f) {
  if (!ws || !wsOpen || ws.readyState !== WebSocket.OPEN) return false;
  ws.send(JSON.stringify(f));
  return true;
}
function tick() {
  sendFrame({ type: 'heartbeat' });
  if (++ticks % 3 === 0) refreshGroups().catch(() => {}); // groups others added us to, without a message yet
  const now = Date.now();
  if (!syncing) for (const o of outbox) if (!o.failed && now - (o.sentAt || 0) > RESEND_AFTER) transmit(o);
}
function sync() {
  if (syncing) return;
  syncing = true;
  sendFrame({ type: 'sync', req: 'sync-' + ++reqNo, after: cursor, limit: 500 });
}

function onFrame(f) {
  switch (f.type) {
    case 'message': addMessage(f, true); break;
    case 'sync':
      asServerState(f.items);
      for (const m of f.items) addMessage(m, false);
      if (f.more && f.items.length) {
        sendFrame({ type: 'sync', req: 'sync-' + ++reqNo, after: f.items[f.items.length - 1].inbox_id, limit: 500 });
      } else {
        syncing = false;
        for (const o of outbox) if (!o.failed) transmit(o);
        sendCursor(true);
        refreshChannels().catch(() => {}); // the unread counts as the server keeps them
        if (above.size && f.items.length) sync(); // still a gap: ask again (once it stops helping, give up)
      }
      break;
    case 'ack': onAck(f); break;
    case 'presence': onPresence(f); break;
    case 'typing': onTyping(f); break;
    case 'read': onRead(f); break;
    case 'group': onGroupFrame(f); break;
    case 'reconnect': {
      // Go where the node says at once, unless we were just sent here: then ask /v1/assign
      // again, with backoff, until the nodes' views of the cluster agree (docs/protocol.md).
      const bounced = Date.now() - lastRedirect < 1000;
      lastRedirect = Date.now();
      nextWsUrl = bounced ? null : (f.ws_url || null);
      if (ws) { const w = ws; ws = null; wsOpen = false; w.onclose = null; w.close(); }
      clearInterval(hbTimer);
      scheduleReconnect(!bounced);
      break;
    }
    case 'error': onError(f); break;
  }
}

// ---------- cursor (cur_max_message_id) ----------
function seen(inboxId) {
  if (!inboxId || inboxId <= cursor) return;
  above.add(inboxId);
  while (above.has(cursor + 1)) { above.delete(cursor + 1); cursor++; }
  localStorage.setItem(devKey('cursor'), String(cursor));
  if (above.size && !syncing) { clearTimeout(gapTimer); gapTimer = setTimeout(() => { if (above.size) sync(); }, 700); }
  sendCursor(false);
}
function sendCursor(now) {
  if (cursor <= lastCursorSent) return;
  clearTimeout(cursorTimer);
  const go = () => { if (cursor > lastCursorSent && sendFrame({ type: 'cursor', inbox_id: cursor })) lastCursorSent = cursor; };
  if (now) go(); else cursorTimer = setTimeout(go, 1000);
}

// ---------- messages ----------
function chan(channel) {
  let c = chans.get(channel);
  if (!c) { c = { msgs: new Map(), before: null, more: null, loaded: false, unread: 0, reads: new Map() }; chans.set(channel, c); }
  return c;
}
function knownChannel(channel) {
  if (channel.startsWith('g:')) return groups.has(channel);
  const peer = dmPeer(channel);
  return contacts.has(peer) || people.has(peer);
}
function addMessage(m, live) {
  if (m.inbox_id) seen(m.inbox_id);
  const c = chan(m.channel);
  if (m.from === session.user_id && m.client_msg_id) dropOutbox(m.client_msg_id, m);
  if (c.msgs.has(m.seq)) return;
  if (!m.kind && m._foldSeq === undefined) m._foldSeq = m.seq;
  c.msgs.set(m.seq, m);
  if (!knownChannel(m.channel)) {
    if (m.channel.startsWith('g:')) refreshGroups().catch(() => {}); else ensurePerson(dmPeer(m.channel));
  }
  if (m.kind === 'system') onSystemItem(m);
  if (isQuiet(m)) {
    const target = foldItem(c, m);
    if (target && m.channel === current) { renderMessage(target); rerenderReplies(c, target.seq); }
  } else {
    const t = typing.get(m.channel); if (t) t.delete(m.from);
    if (m.channel === current) { renderMessage(m); if (live) scrollToEnd(false); renderTyping(); }
  }
  if (m.channel === current) markRead(m.channel);
  else if (live && m.from !== session.user_id && !isQuiet(m)) { c.unread++; renderSidebar(); }
}
/** Messages from the server (history, sync) are as they are now: items of their channel up to
 * the newest in the same answer are folded in already. */
function asServerState(items) {
  const newest = new Map();
  for (const m of items) newest.set(m.channel, Math.max(newest.get(m.channel) || 0, m.seq));
  for (const m of items) if (!m.kind) m._foldSeq = newest.get(m.channel);
}
/** Take the server's state of a message we hold, then apply what came since. */
function refold(c, m) {
  c.msgs.set(m.seq, m);
  for (const i of [...c.msgs.values()].filter((x) => x.target_seq === m.seq).sort((a, b) => a.seq - b.seq)) foldItem(c, i);
}
function rerenderReplies(c, seq) {
  for (const m of c.msgs.values()) if (m.reply_to === seq) renderMessage(m);
}
function dropOutbox(cmid, m) {
  const i = outbox.findIndex((o) => o.client_msg_id === cmid);
  if (i < 0) return;
  outbox.splice(i, 1); save(devKey('outbox'), outbox);
  document.querySelector(`[data-key="c:${CSS.escape(cmid)}"]`)?.remove();
  if (m && m.channel === current && chan(m.channel).msgs.has(m.seq)) renderMessage(chan(m.channel).msgs.get(m.seq));
}
function onAck(a) {
  const o = outbox.find((x) => x.client_msg_id === a.client_msg_id);
  seen(a.inbox_id);
  if (!o) return;
  dropOutbox(a.client_msg_id);
  if (o.kind) { itemAcked(o, a); return; }
  const m = { channel: a.channel, seq: a.seq, from: session.user_id, from_device: session.device_id,
    client_msg_id: a.client_msg_id, text: o.text, ts: a.ts };
  if (o.reply_to) m.reply_to = o.reply_to;
  addMessage(m, true);
}
function onError(f) {
  if (!f.client_msg_id) { console.warn('server error', f); if (f.req?.startsWith('sync-')) syncing = false; return; }
  const o = outbox.find((x) => x.client_msg_id === f.client_msg_id);
  if (!o) return;
  if (f.code === 'unavailable' || f.code === 'internal' || f.code === 'rate_limited') { o.sentAt = Date.now() - RESEND_AFTER + 2000; return; }
  if (o.kind) {
    dropOutbox(o.client_msg_id);
    if (o.channel === current) $('conv-sub').textContent = `Could not ${o.kind === 'reaction' ? 'react' : o.kind}: ${f.message || f.code}`;
    return;
  }
  o.failed = f.code === 'too_large' ? 'too long' : (f.message || f.code);
  save(devKey('outbox'), outbox);
  if (o.channel === current) renderPending(o);
}
function sendText(text, replyTo) {
  if (!current || !text.trim()) return;
  const o = { client_msg_id: `${session.device_id}-${Date.now().toString(36)}-${randId(4)}`, channel: current, text, ts: Date.now() };
  if (replyTo) o.reply_to = replyTo;
  outbox.push(o); save(devKey('outbox'), outbox);
  renderPending(o); scrollToEnd(true);
  transmit(o);
}
function transmit(o) {
  if (sendFrame(frameOf(o))) o.sentAt = Date.now();
}

// ---------- history ----------
async function loadHistory(channel, older) {
  const c = chan(channel);
  if (c.busy || (older && !c.more)) return;
  c.busy = true;
  let q = `limit=${PAGE}`;
  if (older && c.before) q += `&before_seq=${c.before}`;
  try {
    const r = await api('GET', `/v1/channels/${encodeURIComponent(channel)}/messages?${q}`);
    const box = $('messages'), fromBottom = box.scrollHeight - box.scrollTop;
    asServerState(r.messages);
    for (const m of r.messages) {
      if (!m.kind) refold(c, m); else if (!c.msgs.has(m.seq)) c.msgs.set(m.seq, m);
      if (m.kind === 'system' || !m.kind) if (channel === current) renderMessage(c.msgs.get(m.seq));
    }
    for (const m of r.messages) if (m.from === session.user_id) dropOutbox(m.client_msg_id, m);
    if (r.messages.length) c.before = r.messages[0].seq;
    c.more = r.more && r.messages.length > 0; c.loaded = true;
    if (channel === current) {
      $('load-older').hidden = !c.more;
      if (older) box.scrollTop = box.scrollHeight - fromBottom; else scrollToEnd(true);
      for (const m of r.messages) if (m.reply_to) renderMessage(c.msgs.get(m.seq));
      markRead(channel);
    }
  } catch (e) {
    if (channel === current) $('conv-sub').textContent = e.status === 403 ? 'You are not a member any more.' : 'Could not load history: ' + e.message;
  } finally { c.busy = false; }
}

// ---------- rendering: sidebar ----------
function renderSidebar() {
  if (!session) return;
  const ul = $('contacts'); ul.replaceChildren();
  const ids = new Set(contacts.keys());
  for (const ch of chans.keys()) if (ch.startsWith('dm:') && dmPeer(ch) !== session.user_id) ids.add(dmPeer(ch));
  const list = [...ids].map((id) => contacts.get(id) || { user_id: id, ...(people.get(id) || { username: '…' }), stranger: true });
  list.sort((a, b) => (a.username || '').localeCompare(b.username || ''));
  for (const c of list) {
    const ch = dmChannel(session.user_id, c.user_id);
    const status = c.stranger ? 'none' : !c.mutual ? 'pending' : c.status || 'offline';
    const sub = blocks.has(c.user_id) ? 'blocked' : status === 'online' ? 'online' : status === 'pending' ? 'waiting for them to add you'
      : status === 'none' ? 'not in your contacts' : c.last_seen ? `last seen ${fmtTime(c.last_seen)}` : 'offline';
    ul.append(item(ch, c.display_name || c.username, sub, { 'data-testid': `contact-${c.username}`, 'data-status': status },
      el('span', { class: `dot ${status}`, 'aria-hidden': 'true' })));
  }
  if (!list.length) ul.append(el('li', { class: 'hint', text: 'No contacts yet.' }));
  const gl = $('groups'); gl.replaceChildren();
  for (const g of [...groups.values()].sort((a, b) => a.name.localeCompare(b.name))) {
    gl.append(item(g.channel, g.name, `${g.members.length} members`, { 'data-testid': `group-${g.name}` },
      el('span', { class: 'dot group', 'aria-hidden': 'true' })));
  }
  if (!groups.size) gl.append(el('li', { class: 'hint', text: 'No groups yet.' }));
}
function item(channel, title, sub, attrs, icon) {
  const c = chans.get(channel), unread = c?.unread || 0;
  const b = el('button', { type: 'button', class: 'item' + (channel === current ? ' active' : ''), 'aria-current': channel === current ? 'true' : null,
    onclick: () => openChannel(channel), ...attrs },
  icon, el('span', { class: 'item-text' }, el('span', { class: 'item-title', text: title }), el('span', { class: 'item-sub', text: sub })),
  unread ? el('span', { class: 'badge', text: String(unread), 'aria-label': `${unread} unread`, 'data-testid': 'unread' }) : null);
  return el('li', {}, b);
}

// ---------- rendering: conversation ----------
function openChannel(channel) {
  if (composeMode && composeMode.channel !== channel) clearMode();
  current = channel;
  history.replaceState(null, '', '#' + encodeURIComponent(channel));
  const c = chan(channel); c.unread = 0;
  document.body.classList.add('show-conv');
  $('empty').hidden = true; $('compose').hidden = false;
  $('msg-list').replaceChildren();
  for (const seq of [...c.msgs.keys()].sort((a, b) => a - b)) renderMessage(c.msgs.get(seq));
  for (const o of outbox) if (o.channel === channel && !o.kind) renderPending(o);
  $('load-older').hidden = !c.more;
  renderSidebar(); renderHeader(); renderTyping();
  scrollToEnd(true);
  if (!c.loaded) loadHistory(channel, false); else markRead(channel);
  loadReads(channel);
  $('compose-text').focus();
}
function renderHeader() {
  if (!current || !session) return;
  const panel = $('group-panel');
  if (current.startsWith('g:')) {
    renderContactMenu(null);
    const g = groups.get(current);
    $('conv-title').textContent = g ? g.name : 'Group';
    $('conv-sub').textContent = g ? g.members.map(nameOf).join(', ') : '';
    panel.hidden = !g;
    if (!g) return;
    $('rename-group').hidden = g.owner !== session.user_id;
    const ul = $('group-members'); ul.replaceChildren();
    for (const id of g.members) {
      const canRemove = id !== session.user_id && g.owner === session.user_id;
      ul.append(el('li', { 'data-testid': 'group-member' },
        el('span', { 'data-from': id, text: nameOf(id) }), id === g.owner ? el('span', { class: 'sub', text: ' (owner)' }) : null,
        canRemove ? el('button', { type: 'button', class: 'link danger', 'data-testid': 'remove-member',
          'aria-label': `Remove ${nameOf(id)}`, onclick: () => removeMember(g, id) }, 'Remove') : null));
    }
  } else {
    panel.hidden = true;
    const peer = dmPeer(current), c = contacts.get(peer);
    $('conv-title').textContent = nameOf(peer);
    $('conv-sub').textContent = blocks.has(peer) ? 'blocked: they cannot write to you' : !c ? 'not in your contacts'
      : c.status === 'online' ? 'online' : c.last_seen ? `last seen ${fmtTime(c.last_seen)}` : '';
    renderContactMenu(peer);
  }
}
function msgNode(m, pending) {
  if (m.kind === 'system') return systemNode(m);
  const mine = m.from === session.user_id;
  const state = pending ? (pending.failed ? 'failed' : 'sending') : 'acked';
  const label = { sending: 'sending…', acked: 'sent', failed: `not sent: ${pending?.failed}` }[state];
  const li = el('li', { class: `msg ${mine ? 'mine' : 'theirs'} ${state}`, 'data-testid': 'message', 'data-state': state,
    'data-key': pending ? `c:${m.client_msg_id}` : `s:${m.seq}`, 'data-seq': pending ? null : m.seq });
  const meta = el('div', { class: 'meta' }, el('span', { class: 'from', 'data-from': m.from, text: nameOf(m.from) }),
    el('time', { datetime: new Date(m.ts).toISOString(), text: fmtTime(m.ts) }),
    mine ? el('span', { class: 'state', 'data-testid': 'message-state', text: label }) : null);
  const text = el('div', { class: 'text', 'data-testid': 'message-text' });
  li.append(meta, text);
  const lines = m.text.length > COLLAPSE_CHARS ? 0 : m.text.split('\n', COLLAPSE_LINES + 1).length;
  if (m.text.length > COLLAPSE_CHARS || lines > COLLAPSE_LINES) {
    let head = m.text.slice(0, COLLAPSE_CHARS);
    head = head.split('\n').slice(0, COLLAPSE_LINES).join('\n');
    text.textContent = head + '…';
    const btn = el('button', { type: 'button', class: 'link more', 'aria-expanded': 'false', 'data-testid': 'show-more',
      text: `Show more (${m.text.length.toLocaleString()} characters)` });
    btn.onclick = () => {
      const open = btn.getAttribute('aria-expanded') === 'true';
      text.textContent = open ? head + '…' : m.text;
      btn.setAttribute('aria-expanded', String(!open));
      btn.textContent = open ? `Show more (${m.text.length.toLocaleString()} characters)` : 'Show less';
    };
    li.append(btn);
  } else text.textContent = m.text;
  if (pending?.failed) {
    li.append(el('button', { type: 'button', class: 'link', onclick: () => { delete pending.failed; renderPending(pending); transmit(pending); } }, 'Retry'),
      el('button', { type: 'button', class: 'link', onclick: () => dropOutbox(pending.client_msg_id) }, 'Discard'));
  }
  decorate(li, m, pending);
  return li;
}
function renderMessage(m) {
  if (!m || !isShown(m)) return;
  const list = $('msg-list');
  const node = msgNode(m);
  const old = list.querySelector(`[data-key="s:${m.seq}"]`);
  if (old) { old.replaceWith(node); return; }
  // insert in seq order: before the first message with a larger seq, or before the pending ones
  let after = list.lastElementChild;
  while (after && (!after.dataset.seq || Number(after.dataset.seq) > m.seq)) after = after.previousElementSibling;
  if (after) after.after(node); else list.prepend(node);
}
function renderPending(o) {
  const node = msgNode({ ...o, from: session.user_id }, o);
  const old = $('msg-list').querySelector(`[data-key="c:${CSS.escape(o.client_msg_id)}"]`);
  if (old) old.replaceWith(node); else $('msg-list').append(node);
}
function scrollToEnd(force) {
  const box = $('messages');
  if (force || box.scrollHeight - box.scrollTop - box.clientHeight < 150) box.scrollTop = box.scrollHeight;
}

// ---------- presence and typing ----------
function onPresence(p) {
  const c = contacts.get(p.user);
  if (!c) { refreshContacts().catch(() => {}); return; }
  c.status = p.status; c.last_seen = p.last_seen; c.mutual = true;
  renderSidebar(); if (current && current.startsWith('dm:') && dmPeer(current) === p.user) renderHeader();
}
function onTyping(t) {
  if (t.user === session.user_id) return;
  if (!typing.has(t.channel)) typing.set(t.channel, new Map());
  typing.get(t.channel).set(t.user, Date.now() + TYPING_SHOWN);
  renderTyping();
}
function renderTyping() {
  const now = Date.now(), t = current && typing.get(current);
  const who = t ? [...t].filter(([, exp]) => exp > now).map(([u]) => nameOf(u)) : [];
  const s = who.length === 0 ? '' : who.length === 1 ? `${who[0]} is typing…` : `${who.join(', ')} are typing…`;
  if ($('typing').textContent !== s) $('typing').textContent = s;
}

// ---------- contacts and groups actions ----------
async function lookup(username) {
  try { return await api('GET', '/v1/users?username=' + encodeURIComponent(username.trim().toLowerCase())); }
  catch (e) { throw new Error(e.status === 404 ? `No user named "${username.trim()}".` : e.message); }
}
function sideError(msg) { $('side-error').textContent = msg || ''; }
async function onAddContact(ev) {
  ev.preventDefault(); sideError();
  const input = $('add-contact-name');
  try {
    const u = await lookup(input.value);
    if (u.user_id === session.user_id) throw new Error('That is you.');
    await api('PUT', '/v1/contacts/' + encodeURIComponent(u.user_id));
    input.value = '';
    await refreshContacts();
  } catch (e) { sideError(e.message); }
}
async function onNewGroup(ev) {
  ev.preventDefault(); sideError();
  const f = ev.target, names = f.members.value.split(/[\s,]+/).filter(Boolean);
  try {
    const ids = await Promise.all(names.map(async (n) => (await lookup(n)).user_id));
    const g = await api('POST', '/v1/groups', { name: f.name.value.trim(), members: ids });
    groups.set(g.channel, g); f.reset(); $('new-group').open = false;
    renderSidebar(); openChannel(g.channel);
  } catch (e) { sideError(e.code === 'group_full' ? 'That group would be too big.' : e.message); }
}
async function onAddMember(ev) {
  ev.preventDefault();
  const g = groups.get(current); if (!g) return;
  const input = $('add-member-name');
  try {
    const u = await lookup(input.value);
    const ng = await api('POST', `/v1/groups/${encodeURIComponent(g.group_id)}/members`, { user_id: u.user_id });
    groups.set(ng.channel, ng); input.value = '';
    renderSidebar(); renderHeader();
  } catch (e) { $('conv-sub').textContent = e.code === 'group_full' ? 'The group is full.' : e.message; }
}
async function removeMember(g, id) {
  try {
    await api('DELETE', `/v1/groups/${encodeURIComponent(g.group_id)}/members/${encodeURIComponent(id)}`);
    if (id === session.user_id) {
      groups.delete(g.channel); current = null;
      $('msg-list').replaceChildren(); $('compose').hidden = true; $('group-panel').hidden = true; $('empty').hidden = false;
      $('conv-title').textContent = 'No conversation'; $('conv-sub').textContent = '';
      document.body.classList.remove('show-conv');
      renderSidebar();
    } else await refreshGroups();
  } catch (e) { $('conv-sub').textContent = e.message; }
}

// ---------- wiring ----------
$('login-form').addEventListener('submit', onLogin);
$('logout').addEventListener('click', () => logout());
$('add-contact').addEventListener('submit', onAddContact);
$('new-group-form').addEventListener('submit', onNewGroup);
$('add-member').addEventListener('submit', onAddMember);
$('rename-group').addEventListener('submit', onRename);
$('compose-mode-cancel').addEventListener('click', () => { if (composeMode?.kind === 'edit') $('compose-text').value = ''; clearMode(); });
$('leave-group').addEventListener('click', () => { const g = groups.get(current); if (g && confirm(`Leave "${g.name}"?`)) removeMember(g, session.user_id); });
$('back').addEventListener('click', () => { document.body.classList.remove('show-conv'); });
$('load-older').addEventListener('click', () => current && loadHistory(current, true));
$('messages').addEventListener('scroll', () => {
  const c = current && chans.get(current);
  if (c && c.more && $('messages').scrollTop < 40) loadHistory(current, true);
});
$('compose').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const ta = $('compose-text');
  if (!ta.value.trim()) return;
  composeSubmit(ta.value); ta.value = ''; ta.focus();
});
$('compose-text').addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); $('compose').requestSubmit(); }
  if (ev.key === 'Escape' && composeMode) { if (composeMode.kind === 'edit') ev.target.value = ''; clearMode(); }
});
$('compose-text').addEventListener('input', () => {
  const now = Date.now();
  if (current && now - lastTyping > TYPING_EVERY && sendFrame({ type: 'typing', channel: current })) lastTyping = now;
});
setInterval(renderTyping, 1000);
window.addEventListener('online', () => { if (session && !wsOpen) { attempt = 0; scheduleReconnect(true); } });
document.addEventListener('visibilitychange', () => { if (current) markRead(current); });

if (session && session.token) {
  const ch = decodeURIComponent(location.hash.slice(1));
  start().then(() => { if (ch && (ch.startsWith('dm:') || ch.startsWith('g:'))) openChannel(ch); });
} else showLogin();
