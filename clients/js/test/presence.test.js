// Presence against a real node process on the in-memory broker: who is in a
// room, join and leave for the members that watch it (and only for them),
// watching again after a reconnect, and an operator's disconnect (4100).
// The node's unsolicited snapshot (sent after it lost and regained its
// broker's subscription to a room) against a fake server.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket, { WebSocketServer } from 'ws';
import { connect } from '../hubcluster.js';
import { startNode, waitFor, sleep, once, inbox, token, secret } from './support/hub.js';

function client(t, url, opts = {}) {
  const c = connect(url, { WebSocket, ...opts });
  t.after(() => c.close());
  return c;
}

// Recording is a WebSocket that keeps every object it sends and receives.
function recording() {
  const log = { sent: [], received: [] };
  class Recording extends WebSocket {
    constructor(url) {
      super(url);
      this.addEventListener('message', (ev) => {
        for (const line of String(ev.data).split('\n')) if (line) log.received.push(JSON.parse(line));
      });
    }
    send(data) {
      log.sent.push(JSON.parse(data));
      super.send(data);
    }
  }
  return { WebSocket: Recording, log };
}

// members sorts a presence reply's members by user, for comparing.
const byUser = (members) => [...members].sort((x, y) => x.user.localeCompare(y.user));

const withAuth = { HUB_JWT_SECRET: secret, HUB_NODE_ID: 'solo' };
const as = (user, claims = {}) => ({ token: token(600, { sub: user, ...claims }) });

test('presence lists the members of a room: any client allowed to subscribe may ask', async (t) => {
  const n = await startNode({ env: withAuth });
  const ann = client(t, n.url, as('ann'));
  const ben = client(t, n.url, as('ben'));
  const eve = client(t, n.url, as('eve'));
  // Asked before the client is connected: it waits for the connection.
  const empty = await eve.presence('p');
  assert.deepEqual(empty, { room: 'p', count: 0, members: [] });

  await ann.subscribe('p', () => {}, { presence: true });
  await ben.subscribe('p', () => {}); // not watching, but a member all the same
  await waitFor(async () => (await eve.presence('p')).count === 2, 'two members');
  const p = await eve.presence('p');
  assert.equal(p.room, 'p');
  assert.deepEqual(byUser(p.members).map(({ user, node }) => ({ user, node })), [
    { user: 'ann', node: 'solo' },
    { user: 'ben', node: 'solo' },
  ]);
  const ids = p.members.map((m) => m.client);
  assert.ok(ids.every((id) => typeof id === 'string' && id), `client ids: ${ids}`);
  assert.notEqual(ids[0], ids[1]);

  await ben.unsubscribe('p');
  await waitFor(async () => (await eve.presence('p')).count === 1, 'one member after the unsubscribe');
  ann.close();
  await waitFor(async () => (await eve.presence('p')).count === 0, 'no member after the close');

  await assert.rejects(eve.presence('bad room'), { code: 'bad_room', fromNode: true });
  const narrow = client(t, n.url, as('nat', { subscribe: ['other'] }));
  await assert.rejects(narrow.presence('p'), { code: 'forbidden', fromNode: true });
  assert.equal(narrow.state, 'connected', 'a refused presence request leaves the connection open');
});

test('join and leave reach the members that watch the room, and no other', async (t) => {
  const n = await startNode({ env: withAuth });
  const watcherWS = recording();
  const plainWS = recording();
  const watcher = client(t, n.url, { ...as('wat'), WebSocket: watcherWS.WebSocket });
  const plain = client(t, n.url, { ...as('pla'), WebSocket: plainWS.WebSocket });
  const joins = [];
  const leaves = [];
  const handled = []; // what onJoin and onLeave got, in order
  const clientEvents = [];
  watcher.on('join', (ev) => clientEvents.push(ev));
  watcher.on('leave', (ev) => clientEvents.push(ev));
  const plainEvents = [];
  plain.on('join', (ev) => plainEvents.push(ev));
  plain.on('leave', (ev) => plainEvents.push(ev));

  const wInbox = inbox();
  const pInbox = inbox();
  const sub = await watcher.subscribe('r', wInbox.handle, {
    presence: true,
    onJoin: (ev) => (joins.push(ev), handled.push(ev)),
    onLeave: (ev) => (leaves.push(ev), handled.push(ev)),
  });
  assert.equal(sub.presence, true);
  assert.equal(watcherWS.log.sent.find((f) => f.type === 'subscribe').presence, true);
  const plainSub = await plain.subscribe('r', pInbox.handle);
  assert.equal(plainSub.presence, false);
  assert.equal('presence' in plainWS.log.sent.find((f) => f.type === 'subscribe'), false);

  // The watcher hears its own join and the plain member's.
  await waitFor(() => joins.length >= 2, () => `two joins (got ${JSON.stringify(joins)})`);
  assert.deepEqual(
    joins.map(({ type, room, user, node }) => ({ type, room, user, node })).sort((x, y) => x.user.localeCompare(y.user)),
    [
      { type: 'join', room: 'r', user: 'pla', node: 'solo' },
      { type: 'join', room: 'r', user: 'wat', node: 'solo' },
    ],
  );
  const plainJoin = joins.find((j) => j.user === 'pla');

  // A third member comes and goes.
  const visitor = client(t, n.url, as('vis'));
  await visitor.subscribe('r', () => {});
  await waitFor(() => joins.some((j) => j.user === 'vis'), 'the visitor to join');
  const visit = joins.find((j) => j.user === 'vis');
  await visitor.unsubscribe('r');
  await waitFor(() => leaves.length >= 1, 'the visitor to leave');
  assert.deepEqual(leaves, [{ ...visit, type: 'leave' }], 'a leave names the client its join named');
  const p = await watcher.presence('r');
  assert.deepEqual(p.members.map((m) => m.client).sort(), [plainJoin.client, joins.find((j) => j.user === 'wat').client].sort());

  // The plain member closes: the watcher hears it leave.
  plain.close();
  await waitFor(() => leaves.length >= 2, 'the plain member to leave');
  assert.deepEqual(leaves[1], { ...plainJoin, type: 'leave' });
  assert.deepEqual(clientEvents, handled, 'every event is also a client event');

  // Messages and events on one connection: the plain member got the
  // messages of the room and not one join or leave.
  assert.deepEqual(plainEvents, []);
  const types = plainWS.log.received.map((o) => o.type);
  assert.ok(!types.includes('join') && !types.includes('leave'), `the plain member received ${types}`);
  assert.ok(watcherWS.log.received.some((o) => o.type === 'leave'));
});

test('a plain member hears nothing of others joining and leaving while it is in the room', async (t) => {
  const n = await startNode({ env: withAuth });
  const plainWS = recording();
  const plain = client(t, n.url, { ...as('pla'), WebSocket: plainWS.WebSocket });
  const pInbox = inbox();
  await plain.subscribe('q', pInbox.handle);
  const watcher = client(t, n.url, as('wat'));
  const events = [];
  const wInbox = inbox();
  await watcher.subscribe('q', wInbox.handle, { onJoin: (e) => events.push(e), onLeave: (e) => events.push(e) });
  for (const who of ['v1', 'v2', 'v3']) {
    const v = connect(n.url, { WebSocket, ...as(who) });
    await v.subscribe('q', () => {});
    v.close();
  }
  await waitFor(() => events.filter((e) => e.type === 'leave').length >= 3, 'three visitors to come and go');
  // A message published after the events: once both members have it, the
  // plain member would have received any event sent to it before.
  await watcher.publish('q', 'after');
  await Promise.all([wInbox.wait(1), pInbox.wait(1)]);
  const types = plainWS.log.received.map((o) => o.type);
  assert.ok(!types.includes('join') && !types.includes('leave'), `the plain member received ${types}`);
  for (const who of ['v1', 'v2', 'v3']) {
    assert.deepEqual(events.filter((e) => e.user === who).map((e) => e.type), ['join', 'leave'], who);
  }
});

test('after a reconnect a presence subscription watches again', async (t) => {
  const n = await startNode({ env: withAuth });
  const rec = recording();
  const watcher = client(t, n.url, { ...as('wat'), WebSocket: rec.WebSocket, minBackoff: 20, maxBackoff: 100 });
  const joins = [];
  await watcher.subscribe('r', () => {}, { presence: true, onJoin: (e) => joins.push(e) });
  await waitFor(() => joins.length >= 1, 'its own join');

  await n.stop('SIGKILL');
  await waitFor(() => watcher.state !== 'connected', 'the client to notice');
  const back = once(watcher, 'connected'); // after the rooms are subscribed again
  const n2 = await startNode({ port: n.port, env: withAuth });
  await back;
  const subscribes = rec.log.sent.filter((f) => f.type === 'subscribe');
  assert.equal(subscribes.length, 2);
  assert.equal(subscribes[1].presence, true, 'the resubscription asks for presence again');

  const visitor = client(t, n2.url, as('vis'));
  await visitor.subscribe('r', () => {});
  await waitFor(() => joins.some((j) => j.user === 'vis'), 'the visitor to join, heard on the new connection');
  const p = await watcher.presence('r');
  assert.deepEqual(p.members.map((m) => m.user).sort(), ['vis', 'wat']);
});

test('presence: a request with no answer times out; one whose connection breaks is asked again', async (t) => {
  const n = await startNode();
  let swallow = true;
  let cut = true;
  class Lossy extends WebSocket {
    send(data) {
      const f = JSON.parse(data);
      if (f.type !== 'presence') return super.send(data);
      if (swallow) return; // never reaches the node
      // Cut the connection once the request is out, before its answer.
      super.send(data, () => cut && ((cut = false), this.terminate()));
    }
  }
  const c = client(t, n.url, { WebSocket: Lossy, requestTimeout: 300, minBackoff: 20 });
  await c.ready();
  await assert.rejects(c.presence('r'), { code: 'timeout' });
  swallow = false;
  const states = [];
  c.on('state', ({ state }) => states.push(state));
  const p = await c.presence('r');
  assert.deepEqual(p, { room: 'r', count: 0, members: [] });
  assert.deepEqual(states, ['disconnected', 'connecting', 'connected']);
});

test('no reconnect after an operator disconnects the user with 4100', async (t) => {
  const n = await startNode({ env: { ...withAuth, HUB_API_KEY: 'op-key' } });
  const banned = client(t, n.url, { ...as('mallory'), minBackoff: 10 });
  const other = client(t, n.url, as('alice'));
  let attempts = 0;
  banned.on('connecting', () => attempts++);
  const inb = inbox();
  await banned.subscribe('r', inb.handle);
  await other.ready();

  const post = (body, key = 'op-key') =>
    fetch(`${n.http}/v1/disconnect`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${key}` },
      body: JSON.stringify(body),
    });
  assert.equal((await post({ user: 'mallory', code: 4100, reason: 'banned' }, 'wrong')).status, 401);
  const closing = once(banned, 'closed');
  const res = await post({ user: 'mallory', code: 4100, reason: 'banned' });
  assert.equal(res.status, 202);
  assert.deepEqual(await res.json(), { status: 'accepted' });

  const closed = await closing;
  assert.equal(closed.code, 4100);
  assert.equal(closed.reason, 'banned');
  assert.equal(closed.error.code, 'closed');
  assert.equal(closed.error.closeCode, 4100);
  assert.equal(closed.error.closeReason, 'banned');
  await sleep(100); // ten minimum backoffs: time enough for a retry that should not happen
  assert.equal(attempts, 1);
  assert.equal(banned.state, 'closed');
  await assert.rejects(banned.ready(), { closeCode: 4100 });
  await assert.rejects(banned.publish('r', 1), { code: 'closed', closeCode: 4100 });
  await assert.rejects(banned.presence('r'), { code: 'closed', closeCode: 4100 });
  // Another user's connection is not touched.
  assert.equal(other.state, 'connected');
  assert.equal((await other.publish('r', 'still here')).offset, 1);
});

// fakeNode is a WebSocket server on loopback that answers every object with
// what serve(obj, send) sends (send takes one or more objects: one frame,
// one a line).
async function fakeNode(t, serve) {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((resolve) => wss.on('listening', resolve));
  wss.on('connection', (ws) => {
    const send = (...objs) => ws.send(objs.map((o) => JSON.stringify(o)).join('\n'));
    ws.on('message', (data) => serve(JSON.parse(String(data)), send));
  });
  t.after(() => new Promise((resolve) => (wss.clients.forEach((ws) => ws.terminate()), wss.close(resolve))));
  return `ws://127.0.0.1:${wss.address().port}/ws`;
}

test('a presence snapshot with no id replaces the member set, and answers no request', async (t) => {
  const mem = (client, user = '') => ({ client, user, node: 'fake' });
  const [me, ann, ben, cat] = [mem('me.1'), mem('ann.1', 'ann'), mem('ben.1', 'ben'), mem('cat.1', 'cat')];
  const subscribes = [];
  const url = await fakeNode(t, (f, send) => {
    const ack = { type: 'ack', id: f.id, room: f.room, epoch: 'e1', offset: 0 };
    if (f.type === 'subscribe') {
      subscribes.push(f);
      if (f.room === 'r') {
        send(ack, { type: 'join', room: 'r', ...me });
        // As after a lost and regained broker subscription: the snapshot,
        // then the usual events, in one frame.
        send(
          { type: 'presence', room: 'r', count: 3, members: [me, ann, ben] },
          { type: 'leave', room: 'r', ...ben },
          { type: 'join', room: 'r', ...cat },
        );
      } else if (f.room === 's') {
        // An id no request waits for: a snapshot all the same.
        send(ack, { type: 'presence', id: 'c999', room: 's', count: 1500, members: [ann] });
      } else {
        // A room subscribed without presence: nothing to deliver.
        send(ack, { type: 'presence', room: f.room, count: 1, members: [me] });
      }
    } else if (f.type === 'presence') {
      // An unsolicited snapshot right before the reply: the reply is the
      // one with the request's id.
      send({ type: 'presence', room: f.room, count: 1, members: [me] });
      send({ type: 'presence', id: f.id, room: f.room, count: 2, members: [me, cat] });
    } else {
      send({ type: 'ack', id: f.id });
    }
  });
  const c = client(t, url);
  const handled = []; // what the handler options got, in order
  const snapshots = []; // the client's presence events
  c.on('presence', (p) => snapshots.push(p));
  const members = new Map(); // as the README keeps it
  const sub = await c.subscribe('r', () => {}, {
    onJoin: (e) => (handled.push(e), members.set(e.client, e)),
    onLeave: (e) => (handled.push(e), members.delete(e.client)),
    onPresence: (p) => (handled.push(p), members.clear(), p.members.forEach((m) => members.set(m.client, m))),
  });
  assert.equal(sub.presence, true);
  await waitFor(() => handled.length >= 4, () => `four events (got ${JSON.stringify(handled)})`);
  assert.deepEqual(handled, [
    { type: 'join', room: 'r', ...me },
    { room: 'r', count: 3, members: [me, ann, ben] },
    { type: 'leave', room: 'r', ...ben },
    { type: 'join', room: 'r', ...cat },
  ]);
  assert.deepEqual([...members.keys()], [me.client, ann.client, cat.client]);
  assert.deepEqual(snapshots, [{ room: 'r', count: 3, members: [me, ann, ben] }]);

  // onPresence alone turns presence on.
  const onlySnapshots = [];
  const s = await c.subscribe('s', () => {}, { onPresence: (p) => onlySnapshots.push(p) });
  assert.equal(s.presence, true);
  await waitFor(() => onlySnapshots.length === 1, 'the snapshot of s');
  assert.deepEqual(onlySnapshots, [{ room: 's', count: 1500, members: [ann] }]);
  assert.deepEqual(subscribes.map((f) => [f.room, f.presence]), [
    ['r', true],
    ['s', true],
  ]);

  // Without presence, a snapshot is not delivered.
  const plain = await c.subscribe('plain', () => {});
  assert.equal(plain.presence, false);
  assert.equal('presence' in subscribes[2], false);

  // The reply goes to presence(); the snapshot before it to the handlers.
  const p = await c.presence('r');
  assert.deepEqual(p, { room: 'r', count: 2, members: [me, cat] });
  await waitFor(() => handled.length >= 5, 'the snapshot sent before the reply');
  assert.deepEqual(handled[4], { room: 'r', count: 1, members: [me] });
  assert.deepEqual([...members.keys()], [me.client]);
  assert.deepEqual(
    snapshots.map((x) => [x.room, x.count]),
    [
      ['r', 3],
      ['s', 1500],
      ['r', 1],
    ],
    'every snapshot is a client event, and none of the room without presence',
  );
  assert.equal(c.state, 'connected');
});
