// The client against real node processes on the in-memory broker.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { connect, HubError } from '../hubcluster.js';
import { startNode, freePort, waitFor, sleep, once, inbox, history, token, secret } from './support/hub.js';

// client connects with the ws package (Node 20 has no global WebSocket) and
// closes at the end of the test.
function client(t, url, opts = {}) {
  const c = connect(url, { WebSocket, ...opts });
  t.after(() => c.close());
  return c;
}

test('subscribe, publish, acks and errors', async (t) => {
  const n = await startNode();
  const c = client(t, n.url);
  const inb = inbox();
  const sub = await c.subscribe('room:1', inb.handle);
  assert.equal(sub.room, 'room:1');
  await assert.rejects(c.subscribe('room:1', inb.handle), { code: 'already_subscribed' });

  const rc = await c.publish('room:1', { text: 'hi' });
  assert.equal(rc.offset, 1);
  assert.match(rc.key, /^[0-9a-f]{24}$/);
  const [m] = await inb.wait(1);
  assert.deepEqual(m, { room: 'room:1', offset: 1, data: { text: 'hi' } });

  const bad = await c.publish('bad room', 1).catch((e) => e);
  assert.ok(bad instanceof HubError);
  assert.equal(bad.code, 'bad_room');
  assert.ok(bad.key, 'a failed publish says its key');
  await assert.rejects(c.subscribe('', inb.handle), { code: 'bad_room' });
  await assert.rejects(c.subscribe('x'.repeat(129), inb.handle), { code: 'bad_room' });

  // The same idempotency key twice: one offset, delivered once.
  const first = await c.publish('room:1', 'once', { key: 'k-1' });
  const again = await c.publish('room:1', 'once', { key: 'k-1' });
  assert.equal(again.offset, first.offset);
  await c.publish('room:1', 'last');
  // A second delivery of 'once' would come before 'last'.
  const msgs = await inb.wait(3);
  assert.deepEqual(msgs.map((m) => m.data), [{ text: 'hi' }, 'once', 'last']);
  assert.deepEqual(sub.position.offset, 3);
  assert.ok(sub.position.epoch);
  assert.deepEqual(msgs.map((m) => m.offset), [1, 2, 3]);

  // After unsubscribe the node sends nothing more of the room: a publish to
  // it gets its ack, and no message.
  let frames = 0;
  const spy = client(t, n.url, {
    WebSocket: class extends WebSocket {
      constructor(url) {
        super(url);
        this.addEventListener('message', () => frames++);
      }
    },
  });
  await spy.subscribe('room:2', () => {});
  await spy.unsubscribe('room:2');
  await spy.unsubscribe('room:2'); // not subscribed any more: not an error
  const before = frames;
  await spy.publish('room:2', 'not a member');
  await c.publish('room:1', 'sync'); // spy's frames for room:2, if any, are in by now
  await inb.wait(4);
  assert.equal(frames, before + 1, 'after unsubscribe the node sends only the ack of the publish');
});

test('frames holding many objects are split, in order', async (t) => {
  const n = await startNode({ env: { HUB_CLIENT_RATE: '0', HUB_WRITE_COALESCE: '20ms' } });
  let frames = 0;
  class Counting extends WebSocket {
    constructor(url) {
      super(url);
      this.addEventListener('message', () => frames++);
    }
  }
  const sub = client(t, n.url, { WebSocket: Counting });
  const pub = client(t, n.url);
  const inb = inbox();
  await sub.subscribe('r', inb.handle);
  const N = 300;
  await Promise.all(Array.from({ length: N }, (_, i) => pub.publish('r', i)));
  const got = await inb.wait(N);
  assert.equal(got.length, N);
  got.forEach((m, i) => {
    assert.equal(m.offset, i + 1);
    assert.equal(m.data, i);
  });
  assert.ok(frames < N / 2, `${frames} frames carried ${N} messages: the node did not batch, so nothing was split`);
});

test('alternate URLs are tried round robin', async (t) => {
  const dead = `ws://127.0.0.1:${await freePort()}/ws`;
  const n = await startNode();
  const c = client(t, dead, { urls: [n.url], minBackoff: 20 });
  const tried = [];
  c.on('connecting', ({ url }) => tried.push(url));
  await c.ready();
  assert.deepEqual(tried, [dead, n.url]);
  assert.equal(c.url, n.url);
});

test('backoff after a lost connection; a node that lost its history is told as a gap', async (t) => {
  const n = await startNode();
  const c = client(t, n.url, { minBackoff: 20, maxBackoff: 160 });
  const downs = [];
  const gaps = [];
  const recovered = [];
  c.on('disconnected', (d) => downs.push(d));
  c.on('gap', ({ room }) => gaps.push(room));
  c.on('recovered', (d) => recovered.push(d));
  const inb = inbox();
  await c.subscribe('r', inb.handle);
  await c.publish('r', 'before');
  await inb.wait(1);

  await n.stop('SIGKILL');
  await waitFor(() => downs.length >= 8, 'eight failed attempts');
  // Each wait is drawn from [b/2, b], b doubling from minBackoff (the lost
  // connection) to maxBackoff (attempts that failed).
  downs.slice(0, 8).forEach((d, i) => {
    const b = Math.min(20 * 2 ** i, 160);
    assert.equal(d.code, 1006);
    assert.ok(d.retryIn >= b / 2 && d.retryIn <= b, `wait ${i}: ${d.retryIn}ms, want within [${b / 2}, ${b}]`);
  });

  await startNode({ port: n.port }); // back, with a new (empty) history
  await waitFor(() => recovered.length > 0, 'the resubscription');
  assert.deepEqual(gaps, ['r']);
  assert.deepEqual(recovered, [{ room: 'r', count: 0, recovered: false }]);
  await c.publish('r', 'after');
  const got = await inb.wait(2);
  assert.deepEqual(got.map((m) => m.data), ['before', 'after']);
});

test('the token is refreshed before it expires: the connection outlives its first token', async (t) => {
  const n = await startNode({ env: { HUB_JWT_SECRET: secret } });
  const issued = [];
  const c = client(t, n.url, {
    refreshBefore: 1500,
    token: () => {
      issued.push(token(3));
      return issued.at(-1);
    },
  });
  const states = [];
  c.on('state', ({ state }) => states.push(state));
  const inb = inbox();
  await c.subscribe('r', inb.handle);
  const firstExp = JSON.parse(Buffer.from(issued[0].split('.')[1], 'base64url')).exp * 1000;
  await waitFor(() => Date.now() > firstExp + 500, 'the first token to expire', 10000);
  await c.publish('r', 'still here');
  await inb.wait(1);
  assert.ok(issued.length >= 2, `the token callback was called ${issued.length} times, want a refresh`);
  assert.deepEqual(states, ['connecting', 'connected']);
});

test('a string token with a refresh callback', async (t) => {
  const n = await startNode({ env: { HUB_JWT_SECRET: secret } });
  let refreshed = 0;
  const c = client(t, n.url, { token: token(60), tokenRefresh: async () => (refreshed++, token(60)) });
  await c.ready();
  assert.equal((await c.publish('r', 1)).offset, 1);
  assert.equal(refreshed, 0);
});

test('no reconnect after 1008: a bad first token', async (t) => {
  const n = await startNode({ env: { HUB_JWT_SECRET: secret } });
  const c = client(t, n.url, { token: 'not-a-token', minBackoff: 10 });
  let attempts = 0;
  c.on('connecting', () => attempts++);
  const closed = await once(c, 'closed');
  assert.equal(closed.code, 1008);
  assert.equal(closed.error.code, 'closed');
  assert.equal(closed.error.closeCode, 1008);
  await assert.rejects(c.ready(), { closeCode: 1008 });
  await sleep(100); // ten minimum backoffs: time enough for a retry that should not happen
  assert.equal(attempts, 1);
  assert.equal(c.state, 'closed');
  await assert.rejects(c.publish('r', 1), { code: 'closed', closeCode: 1008 });
  await assert.rejects(c.subscribe('r', () => {}), { code: 'closed' });
});

test('no reconnect after 1008: a refused refresh, then the token expires', async (t) => {
  const n = await startNode({ env: { HUB_JWT_SECRET: secret } });
  let calls = 0;
  const c = client(t, n.url, {
    refreshBefore: 1000, // a second before the first token expires
    minBackoff: 10,
    token: () => (++calls === 1 ? token(3) : 'not-a-token'),
  });
  const errors = [];
  c.on('error', (e) => errors.push(e));
  let attempts = 0;
  c.on('connecting', () => attempts++);
  const inb = inbox();
  await c.subscribe('r', inb.handle);
  const pending = c.publish('r', 'x'); // answered before the close
  const closed = await once(c, 'closed');
  assert.equal(closed.code, 1008);
  assert.equal((await pending).offset, 1);
  assert.deepEqual(errors.map((e) => e.code), ['forbidden'], 'the refused refresh is reported');
  assert.equal(attempts, 1);
  await assert.rejects(c.publish('r', 1), { code: 'closed' });
});

test('publishes made while disconnected wait for the connection, in a bounded queue, for a bounded time', async (t) => {
  const n = await startNode();
  const c = client(t, n.url, { queueTimeout: 15000, minBackoff: 20, maxBackoff: 100 });
  await c.ready();
  await n.stop('SIGKILL');
  await waitFor(() => c.state !== 'connected', 'the client to notice');
  const queued = [c.publish('r', 'q1'), c.publish('r', 'q2')];
  const n2 = await startNode({ port: n.port });
  const receipts = await Promise.all(queued);
  assert.deepEqual(receipts.map((r) => r.offset), [1, 2]);
  const h = await history(n2, 'r');
  assert.deepEqual(h.messages.map((m) => m.data), ['q1', 'q2']);

  const short = client(t, n2.url, { queueTimeout: 300, queueSize: 2, minBackoff: 20 });
  await short.ready();
  await n2.stop('SIGKILL');
  await waitFor(() => short.state !== 'connected', 'the client to notice');
  const a = short.publish('r', 1);
  const b = short.publish('r', 2);
  await assert.rejects(short.publish('r', 3), { code: 'queue_full' });
  await assert.rejects(a, { code: 'not_connected' });
  await assert.rejects(b, { code: 'not_connected' });
});

test('a publish in flight when the connection drops is sent again with its key, and delivered once', async (t) => {
  const n = await startNode();
  const keys = [];
  let cut = true;
  class Cutting extends WebSocket {
    send(data) {
      const f = JSON.parse(data);
      if (f.type !== 'publish') return super.send(data);
      keys.push(f.idempotency_key);
      // Cut the connection once the frame is out, before its ack is back.
      super.send(data, () => cut && ((cut = false), this.terminate()));
    }
  }
  const c = client(t, n.url, { WebSocket: Cutting, minBackoff: 20 });
  const inb = inbox();
  await c.subscribe('r', inb.handle);
  const rc = await c.publish('r', 'once');
  assert.equal(keys.length, 2);
  assert.equal(keys[1], keys[0]);
  assert.equal(rc.key, keys[0]);
  await c.publish('r', 'next');
  await inb.wait(2);
  const h = await history(n, 'r');
  assert.deepEqual(h.messages.map((m) => m.data), ['once', 'next']);
  assert.deepEqual(inb.msgs.map((m) => m.data), ['once', 'next']);
});
