// The client against a two-node cluster on a real redis-server: drains,
// reconnects to the other node, and recovery across them.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { connect } from '../hubcluster.js';
import { startNode, startRedis, once, inbox, waitFor } from './support/hub.js';

let redis;
let prefix = 0;
before(async () => {
  redis = await startRedis();
});

// cluster starts two nodes, a and b, on the test's Redis.
async function cluster() {
  const env = {
    HUB_REDIS_URL: redis.url,
    HUB_REDIS_PREFIX: `t${++prefix}:`,
    HUB_RECONNECT_WINDOW: '1500ms',
    HUB_REDIS_PROBE_INTERVAL: '200ms',
    HUB_REDIS_PROBE_TIMEOUT: '2s',
    HUB_CLIENT_RATE: '0',
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
