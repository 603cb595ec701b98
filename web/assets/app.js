// Confab's web client: plain ES modules, no build step. It speaks only the
// public API (../shared/API.md): HTTP for state and commands, the
// WebSocket for live events, resumed from the last event's cursor after a
// dropped connection. Every text from the server goes into the page with
// textContent, never as HTML.

import { Api, ApiError, enc } from './api.js';
import { sha256Hex } from './sha256.js';

const api = new Api();
const $ = (id) => document.getElementById(id);

const state = {
  session: null, // {accessToken, userId, deviceId, username}
  conversations: new Map(), // id -> summary from GET /v1/conversations
  order: [], // conversation ids, newest activity first
  users: new Map(), // id -> {userId, username, displayName}
  dmPeer: new Map(), // dm id -> the other member's id
  presence: new Map(), // user id -> {status, lastSeen}
  open: null, // the open conversation's id
  messages: new Map(), // conversation id -> {list, hasMore}
  receipts: new Map(), // conversation id -> {members, delivered, read}
  typing: new Map(), // conversation id -> Map(user id -> timer)
};

// ---------- small DOM helpers ----------

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function uuid() {
  if (globalThis.crypto && crypto.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function timeText(ms) {
  const date = new Date(ms);
  const today = new Date();
  return date.toDateString() === today.toDateString()
    ? date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
    : date.toLocaleString([], { dateStyle: 'short', timeStyle: 'short' });
}

function showError(id, error) {
  $(id).textContent = error ? (error.message || String(error)) : '';
}

// ---------- session ----------

const SESSION_KEY = 'confab.session';
const cursorKey = () => `confab.cursor.${state.session.deviceId}`;

function saveSession(session) {
  state.session = session;
  api.token = session ? session.accessToken : null;
  if (session) localStorage.setItem(SESSION_KEY, JSON.stringify(session));
  else localStorage.removeItem(SESSION_KEY);
}

async function logIn(username, password) {
  const session = await api.post('/v1/sessions', { username, password, deviceName: browserName(), platform: 'web' });
  saveSession({ accessToken: session.accessToken, userId: session.userId, deviceId: session.deviceId, username });
  await enterChat();
}

function browserName() {
  const agent = navigator.userAgent;
  const name = /Firefox\//.test(agent) ? 'Firefox' : /Edg\//.test(agent) ? 'Edge' : /Chrom/.test(agent) ? 'Chrome' : /Safari\//.test(agent) ? 'Safari' : 'Browser';
  return `${name} on the web`;
}

function signedOut(message) {
  socket.stop();
  saveSession(null);
  state.conversations.clear();
  state.order = [];
  state.messages.clear();
  state.receipts.clear();
  state.open = null;
  $('chat').hidden = true;
  $('auth').hidden = false;
  showError('auth-error', message ? { message } : null);
  $('login-username').focus();
}

api.onUnauthenticated = () => signedOut('Your session ended; log in again.');

// ---------- users ----------

async function loadUsers(ids) {
  const missing = [...new Set(ids)].filter((id) => id && !state.users.has(id));
  for (let i = 0; i < missing.length; i += 100) {
    const found = await api.get(`/v1/users?ids=${enc(missing.slice(i, i + 100).join(','))}`);
    for (const user of found.users) state.users.set(user.userId, user);
  }
}

function nameOf(userId) {
  const user = state.users.get(userId);
  if (!user) return userId;
  return user.displayName ? `${user.displayName} (@${user.username})` : user.username;
}

function shortName(userId) {
  const user = state.users.get(userId);
  return user ? (user.displayName || user.username) : userId;
}

// ---------- conversations ----------

function titleOf(conversation) {
  if (conversation.title) return conversation.title;
  if (conversation.type === 'dm') {
    const peer = state.dmPeer.get(conversation.conversationId);
    return peer ? shortName(peer) : 'Direct message';
  }
  return conversation.type === 'channel' ? 'Channel' : 'Group';
}

async function loadConversations() {
  const list = await api.get('/v1/conversations');
  state.conversations.clear();
  for (const conversation of list.conversations) state.conversations.set(conversation.conversationId, conversation);
  const senders = list.conversations.map((c) => c.lastMessage && c.lastMessage.senderId).filter(Boolean);
  const dms = list.conversations.filter((c) => c.type === 'dm' && !state.dmPeer.has(c.conversationId));
  await Promise.all(dms.map(async (dm) => {
    const members = await api.get(`/v1/conversations/${enc(dm.conversationId)}/members`);
    const peer = members.members.map((m) => m.userId).find((id) => id !== state.session.userId);
    if (peer) state.dmPeer.set(dm.conversationId, peer);
  }));
  await loadUsers([...senders, ...state.dmPeer.values()]);
  sortConversations();
  renderConversations();
}

function sortConversations() {
  const activity = (c) => (c.lastMessage ? c.lastMessage.ts : 0);
  state.order = [...state.conversations.values()].sort((a, b) => activity(b) - activity(a)).map((c) => c.conversationId);
}

function renderConversations() {
  const list = $('conversations');
  list.replaceChildren();
  for (const id of state.order) {
    const c = state.conversations.get(id);
    const unread = c.unreadCount > 0 ? el('span', { class: 'badge', 'aria-label': `${c.unreadCount} unread`, text: String(c.unreadCount) }) : null;
    const mentions = c.unreadMentions > 0 ? el('span', { class: 'badge mention', 'aria-label': `${c.unreadMentions} mentions`, text: `@${c.unreadMentions}` }) : null;
    const muted = c.muted ? el('span', { class: 'muted-mark', 'aria-label': 'muted', text: '🔕' }) : null;
    const peer = c.type === 'dm' ? state.dmPeer.get(id) : null;
    const online = peer && state.presence.get(peer) && state.presence.get(peer).status === 'online';
    const last = c.lastMessage ? (c.lastMessage.deleted ? 'deleted' : c.lastMessage.body || '📎 attachment') : 'no messages yet';
    const button = el('button', {
      type: 'button',
      class: 'conversation' + (id === state.open ? ' current' : ''),
      'aria-current': id === state.open ? 'true' : null,
      dataset: { conversationId: id },
      onclick: () => openConversation(id),
    },
    el('span', { class: 'conversation-title' }, online ? el('span', { class: 'dot', 'aria-label': 'online' }) : null, titleOf(c)),
    el('span', { class: 'conversation-kind', text: c.type }),
    el('span', { class: 'conversation-last', text: last }),
    el('span', { class: 'badges' }, muted, mentions, unread));
    list.append(el('li', {}, button));
  }
}

async function startConversation(type, usernames, title) {
  const ids = [];
  for (const name of usernames) {
    const found = await api.get(`/v1/users?username=${enc(name)}`);
    if (!found.users.length) throw new ApiError(404, 'not_found', `There is no user @${name}.`);
    ids.push(found.users[0].userId);
    state.users.set(found.users[0].userId, found.users[0]);
  }
  const body = { type, memberIds: ids };
  if (title && type !== 'dm') body.title = title;
  const created = await api.post('/v1/conversations', body);
  await loadConversations();
  await openConversation(created.conversationId);
}

// ---------- messages ----------

function bucket(conversationId) {
  if (!state.messages.has(conversationId)) state.messages.set(conversationId, { list: [], hasMore: false, loaded: false });
  return state.messages.get(conversationId);
}

function upsert(conversationId, message) {
  const messages = bucket(conversationId);
  const list = messages.list;
  let index = list.findIndex((m) => m.messageId === message.messageId || (message.clientMsgId && m.pending && m.clientMsgId === message.clientMsgId && m.senderId === message.senderId));
  if (index >= 0) list[index] = message;
  else list.push(message);
  list.sort((a, b) => (a.pending ? Infinity : a.seq) - (b.pending ? Infinity : b.seq));
}

async function loadHistory(conversationId, before) {
  const query = before ? `?before=${before}&limit=50` : '?limit=50';
  const page = await api.get(`/v1/conversations/${enc(conversationId)}/messages${query}`);
  const messages = bucket(conversationId);
  for (const message of page.messages) upsert(conversationId, message);
  messages.hasMore = page.hasMore;
  messages.loaded = true;
  await loadUsers(page.messages.map((m) => m.senderId));
}

async function loadReceipts(conversationId) {
  const members = await api.get(`/v1/conversations/${enc(conversationId)}/members`);
  const receipts = { members: [], delivered: new Map(), read: new Map(), roles: new Map() };
  for (const member of members.members) {
    receipts.members.push(member.userId);
    receipts.delivered.set(member.userId, member.lastDeliveredSeq || 0);
    receipts.read.set(member.userId, member.lastReadSeq || 0);
    receipts.roles.set(member.userId, member.role);
  }
  state.receipts.set(conversationId, receipts);
  await loadUsers(receipts.members);
}

function statusOf(conversationId, message) {
  if (message.failed) return 'failed';
  if (message.pending) return 'sending';
  const receipts = state.receipts.get(conversationId);
  if (!receipts) return 'sent';
  const others = receipts.members.filter((id) => id !== state.session.userId);
  if (!others.length) return 'sent';
  if (others.every((id) => (receipts.read.get(id) || 0) >= message.seq)) return 'read';
  if (others.every((id) => Math.max(receipts.delivered.get(id) || 0, receipts.read.get(id) || 0) >= message.seq)) return 'delivered';
  return 'sent';
}

const TICKS = { sending: ['…', 'Sending'], sent: ['✓', 'Sent'], delivered: ['✓✓', 'Delivered'], read: ['✓✓', 'Read'], failed: ['!', 'Not sent'] };

// Messages carry their uploads without URLs (a stored URL would go
// stale); GET /v1/media/{id} signs fresh ones, kept until they expire.
const signed = new Map(); // media id -> media object with url, thumbnailUrl
const signing = new Set();

function withUrls(media) {
  const known = signed.get(media.mediaId);
  if (known && (!known.urlExpiresAt || known.urlExpiresAt > Date.now() + 10000)) return known;
  if (!signing.has(media.mediaId)) {
    signing.add(media.mediaId);
    api.get(`/v1/media/${enc(media.mediaId)}`).then((full) => {
      signed.set(full.mediaId, full);
      if (state.open === full.conversationId) renderMessages();
    }).catch(() => {}).finally(() => signing.delete(media.mediaId));
  }
  return null;
}

function attachmentElement(attachment) {
  const label = attachment.filename || 'file';
  const media = attachment.status === 'ready' ? (attachment.url ? attachment : withUrls(attachment)) : attachment;
  if (!media) return el('span', { class: 'attachment pending', text: `${label}…` });
  if (media.status === 'ready') {
    if (media.thumbnailUrl) {
      const image = el('img', { class: 'thumbnail', src: media.thumbnailUrl, alt: label, width: media.width ? Math.min(media.width, 240) : null });
      image.addEventListener('error', () => refreshMedia(media.mediaId), { once: true });
      return el('a', { class: 'attachment', href: media.url, target: '_blank', rel: 'noopener' }, image);
    }
    return el('a', { class: 'attachment file', href: media.url, target: '_blank', rel: 'noopener', download: label, text: `📎 ${label}` });
  }
  if (media.status === 'blocked') return el('span', { class: 'attachment blocked', text: `${label}: blocked${media.reason ? ` (${media.reason})` : ''}` });
  return el('span', { class: 'attachment pending', text: `${label}: checking…` });
}

const resigned = new Map(); // media id -> when it was last signed again
function refreshMedia(mediaId) {
  // A thumbnail that failed to load (its URL expired): sign again, at
  // most once a minute, so a broken image does not loop.
  if (Date.now() - (resigned.get(mediaId) || 0) < 60000) return;
  resigned.set(mediaId, Date.now());
  signed.delete(mediaId);
  if (state.open) renderMessages();
}

function updateMedia(conversationId, messageId, media) {
  const messages = state.messages.get(conversationId);
  if (!messages) return;
  for (const message of messages.list) {
    if (messageId && message.messageId !== messageId) continue;
    message.attachments = (message.attachments || []).map((a) => (a.mediaId === media.mediaId ? media : a));
  }
  if (conversationId === state.open) renderMessages();
}

function highlighted(body, ranges) {
  // `ranges` are [start, end) in Unicode code points.
  const points = Array.from(body);
  const parts = [];
  let at = 0;
  for (const [start, end] of [...ranges].sort((a, b) => a[0] - b[0])) {
    if (start < at) continue;
    parts.push(points.slice(at, start).join(''));
    parts.push(el('mark', { text: points.slice(start, end).join('') }));
    at = end;
  }
  parts.push(points.slice(at).join(''));
  return parts;
}

function messageElement(conversationId, message) {
  const mine = message.senderId === state.session.userId;
  const body = message.deleted
    ? el('p', { class: 'body deleted', text: 'This message was deleted.' })
    : el('p', { class: 'body', text: message.body });
  const attachments = !message.deleted && message.attachments && message.attachments.length
    ? el('div', { class: 'attachments' }, ...message.attachments.map(attachmentElement))
    : null;
  let ticks = null;
  let actions = null;
  if (mine) {
    const status = statusOf(conversationId, message);
    const [symbol, label] = TICKS[status];
    ticks = el('span', { class: `ticks ${status}`, dataset: { status }, 'aria-label': label, title: label, text: symbol });
    if (!message.deleted && !message.pending) {
      actions = el('span', { class: 'actions' },
        el('button', { type: 'button', class: 'link', onclick: () => editInline(conversationId, message), text: 'Edit' }),
        el('button', { type: 'button', class: 'link', onclick: () => deleteMessage(message), text: 'Delete' }));
    }
  } else if (!message.deleted) {
    const receipts = state.receipts.get(conversationId);
    if (receipts && receipts.roles.get(state.session.userId) === 'admin') {
      actions = el('span', { class: 'actions' }, el('button', { type: 'button', class: 'link', onclick: () => deleteMessage(message), text: 'Delete' }));
    }
  }
  return el('li', { class: 'message' + (mine ? ' mine' : ''), dataset: { messageId: message.messageId, seq: message.pending ? '' : String(message.seq) } },
    el('div', { class: 'meta' },
      el('span', { class: 'sender', text: mine ? 'You' : shortName(message.senderId) }),
      el('time', { datetime: new Date(message.ts).toISOString(), text: timeText(message.ts) }),
      message.edited && !message.deleted ? el('span', { class: 'edited', text: '(edited)' }) : null,
      ticks, actions),
    body, attachments);
}

function renderMessages() {
  const list = $('messages');
  const nearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  const messages = bucket(state.open);
  list.replaceChildren(...messages.list.map((message) => messageElement(state.open, message)));
  $('older-button').hidden = !messages.hasMore;
  if (nearBottom) list.scrollTop = list.scrollHeight;
}

function editInline(conversationId, message) {
  const item = [...$('messages').children].find((node) => node.dataset.messageId === message.messageId);
  if (!item) return;
  const box = el('textarea', { 'aria-label': 'Edit the message', rows: 2 });
  box.value = message.body;
  const form = el('form', { class: 'edit' }, box,
    el('button', { type: 'submit', text: 'Save' }),
    el('button', { type: 'button', onclick: () => renderMessages(), text: 'Cancel' }));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    try {
      const edited = await api.patch(`/v1/messages/${enc(message.messageId)}`, { body: box.value });
      upsert(conversationId, edited);
      renderMessages();
    } catch (error) { showError('composer-error', error); }
  });
  item.querySelector('.body').replaceWith(form);
  box.focus();
}

async function deleteMessage(message) {
  if (!confirm('Delete this message for everyone?')) return;
  try {
    await api.del(`/v1/messages/${enc(message.messageId)}`);
    message.deleted = true;
    message.body = '';
    renderMessages();
  } catch (error) { showError('composer-error', error); }
}

// ---------- opening a conversation ----------

async function openConversation(conversationId) {
  state.open = conversationId;
  const conversation = state.conversations.get(conversationId);
  document.body.classList.add('reading');
  $('empty').hidden = true;
  $('conversation').hidden = false;
  $('members').hidden = true;
  $('members-button').setAttribute('aria-expanded', 'false');
  $('conversation-title').textContent = conversation ? titleOf(conversation) : '';
  $('notify-select').value = conversation ? conversation.notify : 'all';
  $('mute-box').checked = !!(conversation && conversation.muted);
  $('typing').textContent = '';
  showError('composer-error', null);
  renderPresence();
  renderConversations();
  try {
    await Promise.all([loadHistory(conversationId), loadReceipts(conversationId)]);
  } catch (error) { showError('composer-error', error); }
  if (state.open !== conversationId) return;
  renderMessages();
  $('messages').scrollTop = $('messages').scrollHeight;
  markRead(conversationId);
  $('composer-body').focus();
}

function renderPresence() {
  const conversation = state.conversations.get(state.open);
  const peer = conversation && conversation.type === 'dm' ? state.dmPeer.get(state.open) : null;
  const presence = peer ? state.presence.get(peer) : null;
  $('conversation-presence').textContent = !presence ? '' : presence.status === 'online' ? 'online' : `last seen ${presence.lastSeen ? timeText(presence.lastSeen) : 'a while ago'}`;
}

function markRead(conversationId) {
  const messages = bucket(conversationId).list.filter((m) => !m.pending);
  const conversation = state.conversations.get(conversationId);
  if (!messages.length || !conversation || document.visibilityState !== 'visible') return;
  const last = messages[messages.length - 1];
  if (last.seq <= (conversation.lastReadSeq || 0) && conversation.unreadCount === 0) return;
  conversation.lastReadSeq = last.seq;
  conversation.unreadCount = 0;
  conversation.unreadMentions = 0;
  renderConversations();
  if (!socket.command({ type: 'receipt.read', conversationId, seq: last.seq }, false)) {
    api.post(`/v1/conversations/${enc(conversationId)}/read`, { lastReadMessageId: last.messageId }).catch(() => {});
  }
}

async function renderMembers() {
  const receipts = state.receipts.get(state.open);
  if (!receipts) return;
  $('member-list').replaceChildren(...receipts.members.map((id) => {
    const presence = state.presence.get(id);
    return el('li', {}, nameOf(id), receipts.roles.get(id) === 'admin' ? el('span', { class: 'hint', text: ' admin' }) : null,
      presence && presence.status === 'online' ? el('span', { class: 'hint', text: ' · online' }) : null);
  }));
}

// ---------- sending ----------

async function sendMessage(body, attachments) {
  const conversationId = state.open;
  const clientMsgId = uuid();
  const pending = { messageId: `pending-${clientMsgId}`, clientMsgId, conversationId, senderId: state.session.userId, ts: Date.now(), body, attachments: [], pending: true };
  upsert(conversationId, pending);
  renderMessages();
  $('messages').scrollTop = $('messages').scrollHeight;
  const request = { conversationId, clientMsgId, body };
  if (attachments.length) request.attachments = attachments.map((mediaId) => ({ mediaId }));
  let message;
  try {
    try {
      const ack = await socket.request({ type: 'message.send', ...request });
      message = ack.message;
    } catch (error) {
      // No socket, or it dropped mid-send: the same clientMsgId over HTTP
      // gives the original if the first attempt got through.
      if (!(error instanceof ApiError) || error.code !== 'disconnected') throw error;
      message = await api.post('/v1/messages', request);
    }
  } catch (error) {
    pending.failed = true;
    renderMessages();
    showError('composer-error', error);
    return;
  }
  const list = bucket(conversationId).list;
  const index = list.indexOf(pending);
  if (index >= 0) list.splice(index, 1);
  upsert(conversationId, message);
  const conversation = state.conversations.get(conversationId);
  if (conversation) {
    conversation.lastMessage = message;
    conversation.lastSeq = Math.max(conversation.lastSeq || 0, message.seq);
    conversation.lastReadSeq = Math.max(conversation.lastReadSeq || 0, message.seq);
  }
  sortConversations();
  renderConversations();
  if (conversationId === state.open) renderMessages();
}

async function uploadFile(conversationId, file) {
  const sha256 = await sha256Hex(file);
  const declared = await api.post('/v1/media', { conversationId, filename: file.name, contentType: file.type || 'application/octet-stream', size: file.size, sha256 });
  const upload = declared.upload;
  if (upload.parts) throw new ApiError(413, 'too_large', 'This file needs a multipart upload, which the web client does not do yet.');
  const headers = {};
  for (const [name, value] of Object.entries(upload.headers || {})) {
    if (!/^(content-length|host)$/i.test(name)) headers[name] = value;
  }
  const put = await fetch(upload.url, { method: upload.method, headers, body: file });
  if (!put.ok) throw new ApiError(put.status, 'upload_failed', `The upload was refused (${put.status}).`);
  await api.post(`/v1/media/${enc(declared.mediaId)}/complete`);
  return declared.mediaId;
}

let lastTypingSent = 0;
function typed() {
  const now = Date.now();
  if (!state.open || now - lastTypingSent < 3000) return;
  lastTypingSent = now;
  socket.command({ type: 'typing', conversationId: state.open }, false);
}

function showTyping(conversationId, userId) {
  if (userId === state.session.userId) return;
  if (!state.typing.has(conversationId)) state.typing.set(conversationId, new Map());
  const typers = state.typing.get(conversationId);
  clearTimeout(typers.get(userId));
  typers.set(userId, setTimeout(() => { typers.delete(userId); renderTyping(); }, 4000));
  loadUsers([userId]).then(renderTyping);
}

function renderTyping() {
  const typers = state.typing.get(state.open);
  const names = typers ? [...typers.keys()].map(shortName) : [];
  $('typing').textContent = names.length === 0 ? '' : names.length === 1 ? `${names[0]} is typing…` : `${names.join(', ')} are typing…`;
}

// ---------- the live socket ----------

const socket = {
  ws: null,
  stopped: true,
  backoff: 500,
  nextId: 1,
  pending: new Map(),
  heartbeat: null,
  lastFrameAt: 0,
  resumed: false,

  start() {
    this.stopped = false;
    this.connect();
  },

  stop(reason = 'signed out') {
    this.stopped = true;
    clearInterval(this.heartbeat);
    if (this.ws) this.ws.close(1000, reason);
    this.ws = null;
  },

  connect() {
    if (this.stopped || !state.session) return;
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const cursor = localStorage.getItem(cursorKey());
    let url = `${scheme}//${location.host}/v1/ws?accessToken=${enc(state.session.accessToken)}`;
    if (cursor) url += `&cursor=${enc(cursor)}`;
    this.resumed = !!cursor;
    setConnection('connecting');
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.onmessage = (event) => {
      this.lastFrameAt = Date.now();
      let frame;
      try { frame = JSON.parse(event.data); } catch (_) { return; }
      handleFrame(frame).catch((error) => console.error('frame', frame.type, error));
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      clearInterval(this.heartbeat);
      for (const [, waiter] of this.pending) waiter.reject(new ApiError(0, 'disconnected', 'The connection dropped.'));
      this.pending.clear();
      setConnection('offline');
      if (event.code === 4401) { signedOut('Your session ended; log in again.'); return; }
      if (this.stopped) return;
      setTimeout(() => this.connect(), this.backoff);
      this.backoff = Math.min(this.backoff * 2, 8000);
    };
  },

  hello(frame) {
    this.backoff = 500;
    setConnection('online');
    clearInterval(this.heartbeat);
    const every = frame.heartbeatMs || 25000;
    this.heartbeat = setInterval(() => {
      if (!this.ws) return;
      if (Date.now() - this.lastFrameAt > 2 * every + 5000) { this.ws.close(4000, 'no answer'); return; }
      this.command({ type: 'ping' }, false);
    }, every);
    // Without a cursor nothing was replayed: what happened while away
    // comes from the HTTP state instead.
    if (!this.resumed) refresh();
  },

  /// Sends a frame that gets no answer; false when there is no open socket.
  command(frame, _answer) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  },

  /// Sends a command and waits for its ack (or error).
  request(frame) {
    return new Promise((resolve, reject) => {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) { reject(new ApiError(0, 'disconnected', 'Not connected.')); return; }
      const id = `c${this.nextId++}`;
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new ApiError(0, 'disconnected', 'No answer from the server.'));
      }, 10000);
      this.pending.set(id, {
        resolve: (value) => { clearTimeout(timer); resolve(value); },
        reject: (error) => { clearTimeout(timer); reject(error); },
      });
      this.ws.send(JSON.stringify({ ...frame, id }));
    });
  },

  answer(frame) {
    const waiter = this.pending.get(frame.id);
    if (!waiter) return false;
    this.pending.delete(frame.id);
    if (frame.type === 'ack') waiter.resolve(frame);
    else waiter.reject(new ApiError(0, frame.code, frame.message));
    return true;
  },
};

function setConnection(status) {
  const node = $('connection');
  node.textContent = status;
  node.dataset.status = status;
}

async function handleFrame(frame) {
  switch (frame.type) {
    case 'hello': socket.hello(frame); break;
    case 'ack': socket.answer(frame); break;
    case 'error': if (!socket.answer(frame)) console.warn('server error', frame.code, frame.message); break;
    case 'pong': break;
    case 'message.new': await newMessage(frame.message); break;
    case 'message.edit': {
      const message = frame.message;
      if (state.messages.has(message.conversationId)) upsert(message.conversationId, message);
      const conversation = state.conversations.get(message.conversationId);
      if (conversation && conversation.lastMessage && conversation.lastMessage.messageId === message.messageId) conversation.lastMessage = message;
      if (message.conversationId === state.open) renderMessages();
      renderConversations();
      break;
    }
    case 'message.delete': {
      const messages = state.messages.get(frame.conversationId);
      const message = messages && messages.list.find((m) => m.messageId === frame.messageId);
      if (message) { message.deleted = true; message.body = ''; message.attachments = []; }
      if (frame.conversationId === state.open) renderMessages();
      break;
    }
    case 'receipt.delivered':
    case 'receipt.read': {
      const receipts = state.receipts.get(frame.conversationId);
      if (receipts) {
        const seqs = frame.type === 'receipt.read' ? receipts.read : receipts.delivered;
        seqs.set(frame.userId, Math.max(seqs.get(frame.userId) || 0, frame.seq));
      }
      const conversation = state.conversations.get(frame.conversationId);
      if (frame.type === 'receipt.read' && frame.userId === state.session.userId && conversation && frame.seq >= (conversation.lastSeq || 0)) {
        // Read on another of our devices.
        conversation.unreadCount = 0;
        conversation.unreadMentions = 0;
        renderConversations();
      }
      if (frame.conversationId === state.open) renderMessages();
      break;
    }
    case 'presence':
      state.presence.set(frame.userId, { status: frame.status, lastSeen: frame.lastSeen });
      renderConversations();
      renderPresence();
      if (!$('members').hidden) renderMembers();
      break;
    case 'typing': showTyping(frame.conversationId, frame.userId); break;
    case 'conversation.member':
      await loadConversations();
      if (frame.conversationId === state.open) { await loadReceipts(state.open); renderMembers(); }
      if (frame.change === 'left' && frame.userId === state.session.userId && frame.conversationId === state.open) closeConversation();
      break;
    case 'media.update': updateMedia(frame.conversationId, frame.messageId, frame.media); break;
    default: break;
  }
  if (frame.cursor && state.session) localStorage.setItem(cursorKey(), frame.cursor);
}

async function newMessage(message) {
  const id = message.conversationId;
  if (!state.conversations.has(id)) { await loadConversations(); }
  await loadUsers([message.senderId]);
  const conversation = state.conversations.get(id);
  if (state.messages.has(id) && state.messages.get(id).loaded) upsert(id, message);
  const mine = message.senderId === state.session.userId;
  if (conversation) {
    const fresh = message.seq > (conversation.lastSeq || 0);
    conversation.lastSeq = Math.max(conversation.lastSeq || 0, message.seq);
    if (fresh) conversation.lastMessage = message;
    if (!mine && fresh && message.seq > (conversation.lastReadSeq || 0)) {
      conversation.unreadCount = (conversation.unreadCount || 0) + 1;
      const mentions = message.mentions || {};
      if ((mentions.userIds || []).includes(state.session.userId) || mentions.channel || mentions.here) conversation.unreadMentions = (conversation.unreadMentions || 0) + 1;
    }
  }
  if (!mine) socket.command({ type: 'receipt.delivered', conversationId: id, seq: message.seq }, false);
  if (state.typing.has(id)) { clearTimeout(state.typing.get(id).get(message.senderId)); state.typing.get(id).delete(message.senderId); }
  sortConversations();
  if (id === state.open) {
    renderMessages();
    renderTyping();
    markRead(id);
  }
  renderConversations();
}

async function refresh() {
  try {
    await loadConversations();
    if (state.open) {
      await Promise.all([loadHistory(state.open), loadReceipts(state.open)]);
      renderMessages();
      markRead(state.open);
    }
  } catch (error) { console.warn('refresh', error); }
}

function closeConversation() {
  state.open = null;
  document.body.classList.remove('reading');
  $('conversation').hidden = true;
  $('empty').hidden = false;
  renderConversations();
}

// ---------- search ----------

async function search(q) {
  const found = await api.get(`/v1/search?q=${enc(q)}&limit=20`);
  await loadUsers(found.results.map((r) => r.message.senderId));
  const list = $('result-list');
  list.replaceChildren(...found.results.map((result) => {
    const message = result.message;
    const conversation = state.conversations.get(message.conversationId);
    return el('li', {},
      el('button', { type: 'button', class: 'result', dataset: { messageId: message.messageId }, onclick: () => { $('search-results').hidden = true; openConversation(message.conversationId); } },
        el('span', { class: 'meta', text: `${conversation ? titleOf(conversation) : 'conversation'} · ${shortName(message.senderId)} · ${timeText(message.ts)}` }),
        el('span', { class: 'body' }, ...highlighted(message.body, result.highlights || []))));
  }));
  if (!found.results.length) list.append(el('li', { class: 'hint', text: 'Nothing found.' }));
  $('search-results').hidden = false;
}

// ---------- devices ----------

async function showDevices() {
  const found = await api.get('/v1/devices');
  $('device-list').replaceChildren(...found.devices.map((device) => el('li', {},
    `${device.deviceName || 'unnamed device'} (${device.platform || 'unknown'})${device.current ? ' — this one' : ''}`,
    device.lastSeen ? el('span', { class: 'hint', text: ` last seen ${timeText(device.lastSeen)}` }) : null,
    device.current ? null : el('button', { type: 'button', class: 'link', onclick: async () => { await api.del(`/v1/devices/${enc(device.deviceId)}`); showDevices(); }, text: 'Log out' }))));
  if (!$('devices-dialog').open) $('devices-dialog').showModal();
}

// ---------- wiring ----------

async function enterChat() {
  $('auth').hidden = true;
  $('chat').hidden = false;
  state.users.set(state.session.userId, { userId: state.session.userId, username: state.session.username });
  $('me').textContent = `@${state.session.username}`;
  await loadConversations();
  socket.start();
}

function wire() {
  $('login-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    showError('auth-error', null);
    try { await logIn($('login-username').value.trim(), $('login-password').value); } catch (error) { showError('auth-error', error); }
  });
  $('signup-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    showError('auth-error', null);
    const username = $('signup-username').value.trim();
    const password = $('signup-password').value;
    const displayName = $('signup-display').value.trim();
    try {
      await api.post('/v1/users', displayName ? { username, password, displayName } : { username, password });
      await logIn(username, password);
    } catch (error) { showError('auth-error', error); }
  });
  $('logout-button').addEventListener('click', async () => {
    try { await api.del('/v1/sessions/current'); } catch (_) { /* signed out either way */ }
    signedOut(null);
  });
  $('devices-button').addEventListener('click', () => showDevices().catch((error) => alert(error.message)));
  $('new-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    showError('new-error', null);
    const names = $('new-members').value.split(',').map((name) => name.trim().replace(/^@/, '')).filter(Boolean);
    try {
      await startConversation($('new-type').value, names, $('new-title').value.trim());
      $('new-form').reset();
      $('new-conversation').open = false;
    } catch (error) { showError('new-error', error); }
  });
  $('composer').addEventListener('submit', async (event) => {
    event.preventDefault();
    showError('composer-error', null);
    const box = $('composer-body');
    const fileInput = $('composer-file');
    const body = box.value;
    const files = [...fileInput.files];
    if (!body.trim() && !files.length) return;
    box.value = '';
    fileInput.value = '';
    try {
      const attachments = [];
      for (const file of files) attachments.push(await uploadFile(state.open, file));
      await sendMessage(body, attachments);
    } catch (error) {
      box.value = body;
      showError('composer-error', error);
    }
  });
  $('composer-body').addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $('composer').requestSubmit();
    }
  });
  $('composer-body').addEventListener('input', typed);
  $('older-button').addEventListener('click', async () => {
    const first = bucket(state.open).list.find((m) => !m.pending);
    if (!first) return;
    const list = $('messages');
    const height = list.scrollHeight;
    await loadHistory(state.open, first.seq);
    renderMessages();
    list.scrollTop = list.scrollHeight - height;
  });
  $('back-button').addEventListener('click', closeConversation);
  $('members-button').addEventListener('click', async () => {
    const hidden = !$('members').hidden;
    $('members').hidden = hidden;
    $('members-button').setAttribute('aria-expanded', String(!hidden));
    if (!hidden) renderMembers();
  });
  $('add-member-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    try {
      const name = $('add-member').value.trim().replace(/^@/, '');
      const found = await api.get(`/v1/users?username=${enc(name)}`);
      if (!found.users.length) throw new ApiError(404, 'not_found', `There is no user @${name}.`);
      await api.post(`/v1/conversations/${enc(state.open)}/members`, { userIds: [found.users[0].userId] });
      $('add-member').value = '';
      await loadReceipts(state.open);
      renderMembers();
    } catch (error) { showError('composer-error', error); }
  });
  const saveSettings = async () => {
    const id = state.open;
    try {
      const settings = await api.put(`/v1/conversations/${enc(id)}/settings`, { muted: $('mute-box').checked, notify: $('notify-select').value });
      const conversation = state.conversations.get(id);
      if (conversation) Object.assign(conversation, { muted: settings.muted, notify: settings.notify });
      renderConversations();
    } catch (error) { showError('composer-error', error); }
  };
  $('mute-box').addEventListener('change', saveSettings);
  $('notify-select').addEventListener('change', saveSettings);
  $('search-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const q = $('search-q').value.trim();
    if (!q) return;
    try { await search(q); } catch (error) {
      $('result-list').replaceChildren(el('li', { class: 'error', text: error.message }));
      $('search-results').hidden = false;
    }
  });
  $('search-close').addEventListener('click', () => { $('search-results').hidden = true; });
  document.addEventListener('visibilitychange', () => { if (state.open) markRead(state.open); });
  // Leaving the page closes the socket at once, so the others see this
  // user go offline (a page kept in the back-forward cache would otherwise
  // hold it open); coming back to a cached page resumes from the cursor.
  window.addEventListener('pagehide', () => { if (state.session) socket.stop('left the page'); });
  window.addEventListener('pageshow', (event) => { if (event.persisted && state.session) socket.start(); });
}

async function main() {
  wire();
  const saved = localStorage.getItem(SESSION_KEY);
  if (saved) {
    try {
      saveSession(JSON.parse(saved));
      await enterChat();
      return;
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 401) console.warn('resume', error);
      saveSession(null);
    }
  }
  $('chat').hidden = true;
  $('auth').hidden = false;
}

main();
