// The client against a two-node cluster on a real redis-server: drains,
// reconnects to the other node, recovery across them, and presence.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { connect } from '../hubcluster.js';
import { startNode, startRedis, once, inbox, waitFor, sleep, token, secret } from './support/hub.js';

let redis;
let prefix = 0;
before(async () => {
  redis = await startRedis();
});

// cluster starts two nodes, a and b, on the test's Redis (with more
// settings in extra).
async function cluster(extra = {}) {
  const env = {
    HUB_REDIS_URL: redis.url,
    HUB_REDIS_PREFIX: `t${++prefix}:`,
    HUB_RECONNECT_WINDOW: '1500ms',
    HUB_REDIS_PROBE_INTERVAL: '200ms',
    HUB_REDIS_PROBE_TIMEOUT: '2s',
    HUB_CLIENT_RATE: '0',
    ...extra,
  };
  const [a, b] = await Promise.all([
    startNode({ env: { ...env, HUB_NODE_ID: 'a' } }),
    startNode({ env: { ...env, HUB_NODE_ID: 'b' } }),
  ]);
  return { a, b };
}

function client(t, url, opts = {}) {
  const c = connect(url, { WebSocket, ...opts });
  t.after(() => c.close());
  return c;
}

test('after a drain the client reconnects at the hint, to the other node, and recovers: nothing missed, nothing twice', async (t) => {
  const { a, b } = await cluster();
  const c = client(t, a.url, { urls: [b.url] });
  const pub = client(t, b.url);
  const inb = inbox();
  const recovered = [];
  c.on('recovered', (d) => recovered.push({ ...d, delivered: inb.msgs.length }));
  await c.subscribe('moving', inb.handle);
  for (let i = 0; i < 20; i++) await pub.publish('moving', i);
  await inb.wait(20);

  const drained = a.stop('SIGTERM');
  const down = await once(c, 'disconnected');
  assert.equal(down.code, 1012);
  assert.equal(down.retryIn, JSON.parse(down.reason).reconnect_after_ms, 'the client waits what the node hints');
  const atDown = inb.msgs.length;
  for (let i = 20; i < 60; i++) await pub.publish('moving', i); // while it waits out the hint
  await waitFor(() => recovered.length > 0, 'the recovery');
  assert.equal(c.url, b.url);
  assert.equal(recovered.length, 1);
  assert.equal(recovered[0].room, 'moving');
  assert.equal(recovered[0].recovered, true);
  assert.equal(recovered[0].count, recovered[0].delivered - atDown, 'the count is what the recovery delivered');
  for (let i = 60; i < 80; i++) await pub.publish('moving', i);
  await pub.publish('moving', 'end');
  await inb.wait(81);
  assert.deepEqual(inb.msgs.map((m) => m.data), [...Array.from({ length: 80 }, (_, i) => i), 'end']);
  const offsets = inb.msgs.map((m) => m.offset);
  assert.deepEqual(offsets, offsets.map((_, i) => i + 1));
  assert.equal((await drained).code, 0);
});

test('publishes of a client whose node drains are delivered once each, in order', async (t) => {
  const { a, b } = await cluster();
  const sub = client(t, b.url);
  const inb = inbox();
  await sub.subscribe('r', inb.handle);
  const pub = client(t, a.url, { urls: [b.url] });
  await pub.ready();
  const N = 200;
  const done = [];
  let drained;
  for (let i = 0; i < N; i++) {
    done.push(pub.publish('r', i));
    if (i === N / 2) drained = a.stop('SIGTERM'); // publishes in flight and queued across the drain
    if (i % 10 === 0) await new Promise((r) => setImmediate(r));
  }
  const receipts = await Promise.all(done);
  await inb.wait(N);
  await pub.publish('r', 'end');
  await inb.wait(N + 1);
  assert.deepEqual(inb.msgs.map((m) => m.data), [...Array.from({ length: N }, (_, i) => i), 'end']);
  assert.deepEqual(receipts.map((r) => r.offset), receipts.map((_, i) => i + 1));
  assert.equal((await drained).code, 0);
});

test('presence across the cluster: both nodes list both members, and a watcher hears the other node', async (t) => {
  const { a, b } = await cluster({ HUB_JWT_SECRET: secret, HUB_NODE_TIMEOUT: '2s' });
  const as = (user) => ({ token: token(600, { sub: user }) });
  const alice = client(t, a.url, as('alice'));
  const events = [];
  await alice.subscribe('lobby', () => {}, { presence: true, onJoin: (e) => events.push(e), onLeave: (e) => events.push(e) });
  const bob = client(t, b.url, as('bob'));
  await bob.subscribe('lobby', () => {});
  const carol = client(t, b.url, as('carol'));
  await carol.subscribe('lobby', () => {}, { presence: true });

  const want = [
    { user: 'alice', node: 'a' },
    { user: 'bob', node: 'b' },
    { user: 'carol', node: 'b' },
  ];
  const listed = async (c) => {
    const p = await c.presence('lobby');
    return { count: p.count, members: p.members.map(({ user, node }) => ({ user, node })).sort((x, y) => x.user.localeCompare(y.user)) };
  };
  for (const c of [alice, bob]) {
    await waitFor(async () => (await listed(c)).count === 3, 'three members');
    assert.deepEqual(await listed(c), { count: 3, members: want }, 'the same list from either node');
  }
  // The watcher on a heard the members of b join, with the ids presence lists.
  await waitFor(() => events.filter((e) => e.type === 'join').length >= 3, 'three joins');
  const p = await alice.presence('lobby');
  assert.deepEqual(
    events.map((e) => e.client).sort(),
    p.members.map((m) => m.client).sort(),
  );
  assert.deepEqual(events.find((e) => e.user === 'bob'), { type: 'join', room: 'lobby', ...p.members.find((m) => m.user === 'bob') });

  // bob leaves; then b dies without draining: carol's entry goes once b's
  // heartbeat is older than HUB_NODE_TIMEOUT, with one leave.
  bob.close();
  await waitFor(() => events.some((e) => e.type === 'leave' && e.user === 'bob'), 'bob to leave');
  await b.stop('SIGKILL');
  await waitFor(() => events.some((e) => e.type === 'leave' && e.user === 'carol'), 'carol to leave after b died', 15000);
  assert.deepEqual(await listed(alice), { count: 1, members: [want[0]] });
  assert.deepEqual(
    events.filter((e) => e.type === 'leave').map((e) => e.user),
    ['bob', 'carol'],
  );
});

test('an operator disconnects a user on every node with a code of 4100-4999: no reconnect', async (t) => {
  const { a, b } = await cluster({ HUB_JWT_SECRET: secret });
  const as = (user) => ({ token: token(600, { sub: user }), minBackoff: 10, urls: [a.url, b.url] });
  const onA = client(t, a.url, as('mallory'));
  const onB = client(t, b.url, as('mallory'));
  const other = client(t, b.url, as('alice'));
  await Promise.all([onA.ready(), onB.ready(), other.ready()]);
  let attempts = 0;
  for (const c of [onA, onB]) c.on('connecting', () => attempts++);
  const closed = [once(onA, 'closed'), once(onB, 'closed')];
  const res = await fetch(`${a.http}/v1/disconnect`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ user: 'mallory', code: 4321, reason: 'bye' }),
  });
  assert.equal(res.status, 202);
  for (const c of await Promise.all(closed)) {
    assert.equal(c.code, 4321);
    assert.equal(c.reason, 'bye');
    assert.equal(c.error.closeCode, 4321);
  }
  await sleep(100); // ten minimum backoffs: time enough for a retry that should not happen
  assert.equal(attempts, 0);
  assert.equal(other.state, 'connected');
});
