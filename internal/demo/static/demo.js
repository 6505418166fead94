// The chat demo: rooms, messages, who is in the room and on which node
// (presence), the connection's state, and what a reconnect recovered. It
// uses the client the node serves at /demo/hubcluster.js.
//
// Query parameters: name (your name), room (the first room, default lobby),
// urls (comma-separated other nodes, ws://host:port/ws or host:port, tried
// round robin when the connection is lost: for nodes without a load
// balancer in front), token (a JWT, for a node with HUB_JWT_SECRET: its sub
// is the user presence shows; without one a member shows as its client id).
import { connect } from '/demo/hubcluster.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const own = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
const urls = (params.get('urls') || '')
  .split(',')
  .map((s) => s.trim())
  .filter(Boolean)
  .map((u) => (u.includes('://') ? u : `ws://${u}/ws`));
$('name').value = params.get('name') || `guest-${Math.floor(1000 + Math.random() * 9000)}`;

const token = params.get('token');
const client = connect(own, { urls, maxBackoff: 3000, ...(token ? { token } : {}) });
// name -> {msgs: [], members: Map(client id -> {client, user, node}), live
// (subscribed), asked (the latest presence request), events (those heard
// since it was sent), unread, li}
const rooms = new Map();
let current = null;
let node = ''; // the node this page is connected to, once known
let asked = 0; // the latest question to /demo/node

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('data-')) e.dataset[k.slice(5)] = v;
    else e[k] = v;
  }
  e.append(...children);
  return e;
}

function notice(text, kind = '') {
  const list = $('notices');
  list.prepend(el('li', { class: kind }, `${new Date().toLocaleTimeString()} ${text}`));
  while (list.children.length > 8) list.lastChild.remove();
}

client.on('state', ({ state, code, reason, retryIn }) => {
  const s = $('state');
  s.dataset.state = state;
  s.textContent =
    state === 'disconnected' ? `disconnected (${code}), retrying in ${(retryIn / 1000).toFixed(1)} s` : state;
  if (state === 'connected') {
    $('url').textContent = client.url;
    whoami();
    // Events of the time the page was disconnected are lost, and this page
    // is in the rooms again under a new client id: ask again.
    for (const [room, r] of rooms) if (r.live) members(room);
  } else if (state === 'disconnected') {
    if (node) {
      $('node').textContent = `none (left ${node})`;
      if (code === 1012) notice(`node ${node} is draining: reconnecting in ${(retryIn / 1000).toFixed(1)} s`);
    }
    node = '';
    asked++; // an answer still on its way is about the old connection
  } else if (state === 'closed') {
    notice(`closed by the node: ${code} ${reason}`, 'warn');
  }
});
client.on('recovered', ({ room, count, recovered }) => {
  if (recovered) notice(`recovered ${count} message${count === 1 ? '' : 's'} in #${room}`, 'ok');
  else notice(`could not recover #${room}: some messages were lost`, 'warn');
});
client.on('gap', ({ room }) => notice(`gap in #${room}: messages may have been lost`, 'warn'));
client.on('unsubscribed', ({ room, code }) => {
  notice(`taken out of #${room} (${code})`, 'warn');
  drop(room);
});
client.on('error', (e) => notice(`${e.code}: ${e.message}`, 'warn'));
// The node's snapshot of a room's members, sent when it may have missed
// join and leave events (it lost and regained its broker's subscription to
// the room): it replaces the member list; the events after it apply to it.
client.on('presence', ({ room, members: list }) => {
  const r = rooms.get(room);
  if (!r) return;
  r.asked++; // an answer still on its way would be older than the snapshot
  r.events = null;
  r.members = new Map(list.map((m) => [m.client, m]));
  if (room === current) people();
});

// whoami asks the node the page is connected to for its id.
async function whoami() {
  const q = ++asked;
  const u = new URL(client.url);
  u.protocol = u.protocol === 'wss:' ? 'https:' : 'http:';
  let r = null;
  try {
    r = await (await fetch(`${u.origin}/demo/node`)).json();
  } catch {
    // shown as unknown
  }
  if (q !== asked) return; // a later connection asks again
  node = r ? String(r.node) : '';
  $('node').textContent = !r ? 'unknown' : r.proxied ? `${node} (via a proxy, which may have sent the WebSocket elsewhere)` : node;
}

function join(room) {
  if (rooms.has(room)) return show(room);
  const r = { msgs: [], members: new Map(), live: false, asked: 0, events: null, unread: 0 };
  r.li = el('li', { 'data-room': room }, el('span', { class: 'name' }, `#${room}`), el('span', { class: 'unread' }));
  const leave = el('button', { type: 'button', title: `leave #${room}` }, '×');
  leave.addEventListener('click', (e) => {
    e.stopPropagation();
    client.unsubscribe(room);
    drop(room);
  });
  r.li.append(leave);
  r.li.addEventListener('click', () => show(room));
  rooms.set(room, r);
  $('rooms').append(r.li);
  show(room);
  const onPresence = (e) => presence(room, e);
  client
    .subscribe(room, (m) => received(room, m), { presence: true, onJoin: onPresence, onLeave: onPresence })
    .then(
      () => {
        if (rooms.get(room) !== r) return;
        r.live = true;
        members(room);
      },
      (e) => {
        notice(`cannot join #${room}: ${e.code}`, 'warn');
        drop(room);
      },
    );
}

// members takes a snapshot of who is in room, then applies the join and
// leave events heard since it was asked: together they are the room's
// members now, whichever came first.
async function members(room) {
  const r = rooms.get(room);
  const ask = ++r.asked;
  r.events = [];
  let p;
  try {
    p = await client.presence(room);
  } catch (e) {
    if (ask === r.asked) r.events = null;
    if (e.code !== 'closed') notice(`cannot tell who is in #${room}: ${e.code}`, 'warn');
    return;
  }
  if (rooms.get(room) !== r || ask !== r.asked) return; // left, or asked again since
  r.members = new Map(p.members.map((m) => [m.client, m]));
  for (const e of r.events) apply(r, e);
  r.events = null;
  if (room === current) people();
}

function presence(room, e) {
  const r = rooms.get(room);
  if (!r) return;
  if (r.events) r.events.push(e);
  apply(r, e);
  if (room === current) people();
}

// apply keeps the members a set keyed by client id: join adds, leave deletes.
function apply(r, { type, client, user, node }) {
  if (type === 'join') r.members.set(client, { client, user, node });
  else r.members.delete(client);
}

function drop(room) {
  const r = rooms.get(room);
  if (!r) return;
  r.li.remove();
  rooms.delete(room);
  if (current === room) show(rooms.keys().next().value ?? null);
}

function show(room) {
  current = room;
  $('room-title').textContent = room ? `#${room}` : 'no room';
  for (const [name, r] of rooms) {
    r.li.classList.toggle('current', name === room);
    if (name === room) r.unread = 0;
    r.li.querySelector('.unread').textContent = r.unread || '';
  }
  const r = rooms.get(room);
  $('messages').replaceChildren(...(r ? r.msgs.map(line) : []));
  people();
  scroll();
}

function line(m) {
  return el(
    'li',
    { 'data-offset': String(m.offset) },
    el('span', { class: 'offset' }, String(m.offset)),
    el('span', { class: 'who' }, m.user),
    el('span', { class: 'node' }, `@${m.node}`),
    el('span', { class: 'text' }, m.text),
  );
}

function people() {
  const r = rooms.get(current);
  const list = [...(r ? r.members.values() : [])]
    .map((m) => ({ ...m, name: m.user || m.client }))
    .sort((x, y) => x.name.localeCompare(y.name) || x.node.localeCompare(y.node));
  $('people').replaceChildren(
    ...list.map((m) =>
      el(
        'li',
        { 'data-client': m.client },
        el('span', { class: 'user' }, m.name),
        ' ',
        el('span', { class: 'node' }, `on ${m.node}`),
      ),
    ),
  );
  $('people-count').textContent = r ? `(${r.members.size})` : '';
}

function scroll() {
  const m = $('messages');
  m.scrollTop = m.scrollHeight;
}

function received(room, { offset, data }) {
  const r = rooms.get(room);
  if (!r) return;
  const d = data && typeof data === 'object' ? data : { text: JSON.stringify(data) };
  const m = { offset, user: String(d.user ?? '?'), text: String(d.text ?? ''), node: String(d.node ?? '?') };
  r.msgs.push(m);
  if (room !== current) {
    r.unread++;
    r.li.querySelector('.unread').textContent = r.unread;
    return;
  }
  $('messages').append(line(m));
  scroll();
}

$('join').addEventListener('submit', (e) => {
  e.preventDefault();
  const room = $('room-input').value.trim();
  if (room) join(room);
  $('room-input').value = '';
});

$('send').addEventListener('submit', (e) => {
  e.preventDefault();
  const text = $('text').value.trim();
  if (!text || !current) return;
  $('text').value = '';
  // While disconnected the client keeps the message and sends it on
  // reconnect; it tells if it could not.
  client
    .publish(current, { user: $('name').value.trim() || 'anonymous', text, node: node || 'offline' })
    .catch((err) => notice(`not sent (${err.code}): ${text}`, 'warn'));
});

join(params.get('room') || 'lobby');
