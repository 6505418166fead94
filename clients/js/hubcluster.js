// hubcluster.js: the JavaScript client of hubcluster, for browsers and Node.
// It speaks protocol v1.1 (docs/protocol.md) and has no dependencies.
//
// A Client reconnects by itself: after a drain (close 1012) at the delay the
// node hints, after a lost connection or an overloaded node (1006, 1013, ...)
// with jittered exponential backoff, and never after a policy, encoding or
// size close (1008, 1007, 1009) or an operator's disconnect (4100-4999,
// POST /v1/disconnect), which it reports as "closed". On every
// reconnect it subscribes to its rooms again with `since` set to the last
// offset it delivered, so a handler sees every message of a room exactly once,
// in order, across a deploy; when the node cannot recover a range the client
// emits "gap" and "recovered" with recovered: false.
//
// Every publish carries an idempotency key, so one sent again after a
// reconnect is delivered once. Publishes made while disconnected wait in a
// bounded queue for a bounded time, and fail with code "not_connected" (not
// sent, so not delivered) or "queue_full"; none is dropped silently.
//
// presence(room) asks who is in a room, cluster-wide. A subscription made
// with {presence: true} also receives the room's join and leave events, and
// asks for them again on every reconnect; the events of the time the client
// was disconnected are lost, so ask presence() again once "connected".
// When the node itself may have missed some (it lost and regained its
// broker's subscription to the room), it sends the subscription a snapshot
// of the room's members (onPresence, and the "presence" event), which
// replaces the application's member set; join and leave go on after it.

export const PROTOCOL_VERSION = '1.1';

// final says whether a close ends the client: the node would refuse again
// (1007, 1008, 1009), or an operator disconnected the user (4100-4999).
const final = (code) => [1007, 1008, 1009].includes(code) || (code >= 4100 && code <= 4999);

/** An error of a request: the node's error code, or the client's own. */
export class HubError extends Error {
  constructor(code, message, extra) {
    super(message);
    this.name = 'HubError';
    this.code = code;
    Object.assign(this, extra);
  }
}

/** connect(url, options) returns a Client that connects, and stays connected until close(). */
export function connect(url, options) {
  return new Client(url, options);
}

/** A subscription to one room; it lasts across reconnects until unsubscribe(). */
export class Subscription {
  constructor(client, room, handler, o) {
    this.room = room;
    // presence: the subscription receives the room's join and leave events.
    this.presence = !!(o.presence || o.onJoin || o.onLeave || o.onPresence);
    this._c = client;
    this._handler = handler;
    this._events = { join: o.onJoin, leave: o.onLeave, presence: o.onPresence };
    this._epoch = '';
    this._offset = 0; // the last offset delivered (or the ack's place)
    this._recovering = false;
    this._count = 0; // messages delivered since the subscribe that recovers
    this._wait = null; // {resolve, reject, timer} until the first ack
  }

  /** Where the room stands for this subscription: its epoch and the offset delivered last. */
  get position() {
    return { epoch: this._epoch, offset: this._offset };
  }

  unsubscribe() {
    return this._c.unsubscribe(this.room);
  }
}

export class Client {
  constructor(url, options = {}) {
    const o = options;
    this._WS = o.WebSocket || globalThis.WebSocket;
    if (typeof this._WS !== 'function') {
      throw new TypeError('hubcluster: no WebSocket here: pass options.WebSocket (for example the ws package)');
    }
    this._o = {
      requestTimeout: o.requestTimeout || 10000,
      queueTimeout: o.queueTimeout ?? 10000,
      queueSize: o.queueSize ?? 1024,
      minBackoff: o.minBackoff || 100,
      refreshBefore: o.refreshBefore || 30000,
    };
    this._o.maxBackoff = Math.max(o.maxBackoff || 10000, this._o.minBackoff);
    this._urls = [url].concat(o.urls || []);
    this._next = 0;
    this.url = url;
    this.state = 'connecting';
    this._token = typeof o.token === 'string' ? o.token : '';
    this._tokenFn = typeof o.token === 'function' ? o.token : null;
    this._refresh = o.tokenRefresh || this._tokenFn;
    this._conn = null;
    this._subs = new Map();
    this._queue = [];
    this._on = new Map();
    this._ids = 0;
    this._backoff = this._o.minBackoff;
    this._err = null; // why the client stopped for good
    // Connect on the next tick, so that listeners added right after
    // connect() see the first "connecting".
    this._timer = setTimeout(() => this._open(), 0);
  }

  /** on(event, fn) adds a listener and returns a function that removes it. */
  on(event, fn) {
    if (!this._on.has(event)) this._on.set(event, new Set());
    this._on.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    const set = this._on.get(event);
    if (set) set.delete(fn);
  }

  _emit(event, detail) {
    for (const fn of [...(this._on.get(event) || [])]) {
      try {
        fn(detail);
      } catch (e) {
        throwLater(e);
      }
    }
  }

  _setState(state, detail = {}) {
    this.state = state;
    detail = Object.assign({ state }, detail);
    this._emit('state', detail);
    this._emit(state, detail);
  }

  /** ready() resolves once the client is connected; it rejects if the client stops first. */
  ready() {
    return this._connected().then(() => {});
  }

  // _connected resolves with the ready connection, once there is one; it
  // rejects if the client stops first, or after ms when given.
  _connected(ms) {
    if (this.state === 'connected') return Promise.resolve(this._conn);
    if (this._err) return Promise.reject(this._err);
    return new Promise((resolve, reject) => {
      let timer;
      const done = (fn, v) => (clearTimeout(timer), offs.forEach((f) => f()), fn(v));
      const offs = [
        this.on('connected', () => done(resolve, this._conn)),
        this.on('closed', ({ error }) => done(reject, error)),
      ];
      if (ms !== undefined) {
        timer = setTimeout(() => done(reject, new HubError('not_connected', 'hubcluster: not connected in time')), ms);
      }
    });
  }

  // _open makes one connection attempt to the next URL, round robin.
  _open() {
    this._timer = null;
    this.url = this._urls[this._next++ % this._urls.length];
    this._setState('connecting', { url: this.url });
    let ws;
    try {
      ws = new this._WS(this.url);
    } catch (e) {
      this._emit('error', new HubError('not_connected', `hubcluster: ${this.url}: ${errText(e)}`));
      this._conn = { ws: null, pending: new Map() };
      this._drop(this._conn, 1006, errText(e));
      return;
    }
    // sent: the subscriptions subscribed on this connection.
    const conn = { ws, pending: new Map(), sent: new Set(), ready: false, refresh: null };
    this._conn = conn;
    conn.openTimer = setTimeout(() => this._drop(conn, 1006, 'connection attempt timed out'), this._o.requestTimeout);
    ws.onopen = () => this._conn === conn && this._handshake(conn);
    ws.onmessage = (ev) => this._conn === conn && this._frame(conn, ev.data);
    ws.onclose = (ev) => this._drop(conn, ev.code, ev.reason);
    ws.onerror = () => {}; // a close follows
  }

  // _handshake authenticates, subscribes to every room again (recovering),
  // then sends what waits in the queue.
  async _handshake(conn) {
    try {
      if (this._tokenFn || this._token) {
        const token = await this._currentToken();
        if (this._conn !== conn) return;
        await this._roundTrip(conn, { type: 'auth', token });
        this._scheduleRefresh(conn, token);
      }
      // Every room, and those subscribed to meanwhile, in pipelined rounds.
      for (;;) {
        const subs = [...this._subs.values()].filter((s) => !conn.sent.has(s));
        if (!subs.length) break;
        subs.forEach((s) => conn.sent.add(s));
        const results = await Promise.allSettled(
          subs.map((s) => this._roundTrip(conn, this._subscribeFrame(s), (ack) => this._acked(s, ack))),
        );
        if (this._conn !== conn) return;
        results.forEach((r, i) => {
          if (r.status === 'fulfilled') return;
          const e = r.reason;
          if (!e.fromNode || e.code === 'unavailable' || e.code === 'rate_limited') throw e;
          // The node will not have this room (forbidden now): drop it, and
          // say so if it was subscribed before.
          const wasLive = !subs[i]._wait;
          this._forget(subs[i], e);
          if (wasLive) this._emit('unsubscribed', { room: subs[i].room, code: e.code, message: e.message });
        });
      }
    } catch (e) {
      if (this._conn !== conn) return;
      this._emit('error', new HubError(e.code || 'not_connected', 'hubcluster: connecting: ' + errText(e)));
      this._drop(conn, 1006, errText(e));
      return;
    }
    clearTimeout(conn.openTimer);
    conn.ready = true;
    this._backoff = this._o.minBackoff;
    this._setState('connected', { url: this.url });
    const queue = this._queue;
    this._queue = [];
    for (const req of queue) this._sendPublish(conn, req);
  }

  async _currentToken() {
    if (this._tokenFn) {
      this._token = await this._tokenFn();
    } else if (this._refresh && tokenExpiry(this._token) - Date.now() < 1000) {
      this._token = await this._refresh();
    }
    return this._token;
  }

  _scheduleRefresh(conn, token) {
    const exp = tokenExpiry(token);
    if (!this._refresh || !exp) return;
    const left = exp - Date.now();
    const wait = Math.max(left - this._o.refreshBefore, left / 2, 1000);
    conn.refresh = setTimeout(async () => {
      try {
        const fresh = await this._refresh();
        if (this._conn !== conn) return;
        await this._roundTrip(conn, { type: 'auth', token: fresh });
        this._token = fresh;
        this._scheduleRefresh(conn, fresh);
      } catch (e) {
        if (this._conn === conn) this._emit('error', new HubError(e.code || 'forbidden', 'hubcluster: token refresh: ' + errText(e)));
      }
    }, wait);
  }

  // _drop ends conn: requests in flight are queued again (publishes) or
  // wait for the next connection (subscribes), then the client reconnects,
  // or stops after a final close code.
  _drop(conn, code, reason) {
    if (this._conn !== conn) return;
    this._conn = null;
    clearTimeout(conn.openTimer);
    clearTimeout(conn.refresh);
    if (conn.ws) {
      try {
        conn.ws.close();
      } catch {
        // closing a socket that is already closed
      }
    }
    const again = [];
    for (const req of conn.pending.values()) {
      if (req.publish) again.push(req);
      else if (req.onLost) req.onLost();
    }
    conn.pending.clear();
    for (const req of again) this._waitForConnection(req);
    this._queue = again.concat(this._queue);
    if (final(code)) {
      this._stop(new HubError('closed', `hubcluster: closed by the node: ${code} ${reason}`, { closeCode: code, closeReason: reason }), code, reason);
      return;
    }
    let wait = reconnectHint(code, reason);
    if (wait === undefined) {
      wait = jitter(this._backoff);
      this._backoff = Math.min(2 * this._backoff, this._o.maxBackoff);
    } else {
      this._backoff = this._o.minBackoff;
    }
    this._setState('disconnected', { code, reason, retryIn: wait });
    this._timer = setTimeout(() => this._open(), wait);
  }

  /** close() closes the connection and stops reconnecting; requests still waiting fail with code "closed". */
  close() {
    if (this._err) return;
    this._stop(new HubError('closed', 'hubcluster: client closed', { closeCode: 1000, closeReason: '' }), 1000, '');
  }

  _stop(err, code, reason) {
    this._err = err;
    clearTimeout(this._timer);
    const conn = this._conn;
    if (conn) {
      this._conn = null;
      clearTimeout(conn.openTimer);
      clearTimeout(conn.refresh);
      try {
        conn.ws.close(1000);
      } catch {
        // already closed
      }
      for (const req of conn.pending.values()) req.fail(err);
    }
    for (const req of this._queue) req.fail(err);
    this._queue = [];
    for (const s of this._subs.values()) this._forget(s, err);
    this._setState('closed', { code, reason, error: err });
  }

  // _roundTrip sends frame on conn and resolves with the ack (after onAck).
  _roundTrip(conn, frame, onAck) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        conn.pending.delete(frame.id);
        reject(new HubError('timeout', 'hubcluster: no answer in time'));
      }, this._o.requestTimeout);
      const done = (fn, v) => (clearTimeout(timer), fn(v));
      this._send(conn, frame, {
        ack: (obj) => (onAck && onAck(obj), done(resolve, obj)),
        fail: (e) => done(reject, e),
        onLost: () => done(reject, new HubError('not_connected', 'hubcluster: connection lost')),
      });
    });
  }

  // _send gives frame an id and writes it; req answers the ack or error.
  _send(conn, frame, req) {
    frame.id = 'c' + ++this._ids;
    conn.pending.set(frame.id, req);
    try {
      conn.ws.send(JSON.stringify(frame));
    } catch (e) {
      this._drop(conn, 1006, errText(e));
    }
  }

  // _frame takes one frame from the node: one or more objects, one a line.
  _frame(conn, data) {
    if (typeof data !== 'string') return; // the node sends text only
    for (const line of data.split('\n')) {
      if (!line.trim()) continue;
      let obj;
      try {
        obj = JSON.parse(line);
      } catch {
        continue;
      }
      this._handle(conn, obj);
      if (this._conn !== conn) return; // a handler closed the client
    }
  }

  _handle(conn, obj) {
    const sub = this._subs.get(obj.room);
    switch (obj.type) {
      case 'message':
        if (!sub) return;
        if (obj.offset) sub._offset = obj.offset;
        if (sub._recovering) sub._count++;
        try {
          sub._handler({ room: obj.room, offset: obj.offset || 0, data: obj.data });
        } catch (e) {
          throwLater(e);
        }
        return;
      case 'ack':
      case 'presence':
      case 'error': {
        // A reply is matched by its id only: a presence object with no id,
        // or one no request waits for, is the node's snapshot of a room.
        const req = obj.id !== undefined && conn.pending.get(obj.id);
        if (req) {
          conn.pending.delete(obj.id);
          if (obj.type !== 'error') req.ack(obj);
          else req.fail(new HubError(obj.code, obj.message, { fromNode: true }));
        } else if (obj.type === 'error') {
          this._emit('error', new HubError(obj.code, obj.message, { fromNode: true }));
        } else if (obj.type === 'presence' && sub && sub.presence) {
          const members = (obj.members || []).map((m) => ({ client: m.client, user: m.user || '', node: m.node }));
          this._event(sub, 'presence', { room: obj.room, count: obj.count ?? members.length, members });
        }
        return;
      }
      case 'join':
      case 'leave':
        if (!sub || !sub.presence) return;
        this._event(sub, obj.type, { type: obj.type, room: obj.room, client: obj.client, user: obj.user || '', node: obj.node });
        return;
      case 'gap':
        this._emit('gap', { room: obj.room });
        return;
      case 'unsubscribed':
        if (sub) this._forget(sub, new HubError(obj.code, obj.message, { fromNode: true }));
        this._emit('unsubscribed', { room: obj.room, code: obj.code, message: obj.message });
        return;
    }
  }

  // _event hands a presence event (join, leave) or snapshot (presence) of
  // sub's room to its handler option, then to the client's listeners.
  _event(sub, type, ev) {
    const fn = sub._events[type];
    if (fn) {
      try {
        fn(ev);
      } catch (e) {
        throwLater(e);
      }
    }
    this._emit(type, ev);
  }

  /**
   * subscribe(room, onMessage, {presence, onJoin, onLeave, onPresence}) joins room and
   * calls onMessage({room, offset, data}) with every message published to it
   * from now on, in order. It resolves with the Subscription once the node
   * has acknowledged it; while disconnected it waits for the connection
   * (queueTimeout at most). With presence (implied by onJoin, onLeave or
   * onPresence) the node also sends the room's join and leave events: onJoin
   * and onLeave get {type, room, client, user, node}, and the client emits
   * "join" and "leave". When the node may have missed some (it lost and
   * regained its broker's subscription to the room) it sends a snapshot:
   * onPresence gets {room, count, members} (as presence() resolves with),
   * the client emits "presence", and the application's member set for the
   * room is to be replaced by it; join and leave events follow as usual.
   */
  subscribe(room, onMessage, options = {}) {
    if (this._err) return Promise.reject(this._err);
    if (this._subs.has(room)) {
      return Promise.reject(new HubError('already_subscribed', `hubcluster: already subscribed to ${room}`));
    }
    const sub = new Subscription(this, room, onMessage, options);
    this._subs.set(room, sub);
    return new Promise((resolve, reject) => {
      const expire = (ms, code, msg) => setTimeout(() => this._forget(sub, new HubError(code, msg)), ms);
      sub._wait = { resolve, reject, timer: expire(this._o.queueTimeout, 'not_connected', 'hubcluster: not connected in time') };
      const conn = this._conn;
      if (!conn || !conn.ready) return; // the next connection subscribes it
      clearTimeout(sub._wait.timer);
      sub._wait.timer = expire(this._o.requestTimeout, 'timeout', 'hubcluster: no answer in time');
      conn.sent.add(sub);
      this._send(conn, this._subscribeFrame(sub), {
        ack: (ack) => this._acked(sub, ack),
        fail: (e) => this._forget(sub, e),
        onLost: () => {}, // the next connection subscribes it again
      });
    });
  }

  _subscribeFrame(sub) {
    const frame = { type: 'subscribe', room: sub.room };
    if (sub.presence) frame.presence = true;
    if (sub._epoch) {
      frame.since = { offset: sub._offset, epoch: sub._epoch };
      sub._recovering = true;
      sub._count = 0;
    }
    return frame;
  }

  // _acked takes the ack of a subscribe: where the room stands, and whether
  // a recovery worked.
  _acked(sub, ack) {
    if (this._subs.get(sub.room) !== sub) return;
    if (ack.epoch) {
      sub._epoch = ack.epoch;
      sub._offset = ack.offset;
    }
    const recovering = sub._recovering;
    const count = sub._count;
    sub._recovering = false;
    sub._count = 0;
    if (sub._wait) {
      clearTimeout(sub._wait.timer);
      sub._wait.resolve(sub);
      sub._wait = null;
    }
    if (recovering && typeof ack.recovered === 'boolean') {
      this._emit('recovered', { room: sub.room, count, recovered: ack.recovered });
    }
  }

  // _forget removes sub; a subscribe still waiting fails with err.
  _forget(sub, err) {
    if (this._subs.get(sub.room) === sub) this._subs.delete(sub.room);
    if (sub._wait) {
      clearTimeout(sub._wait.timer);
      sub._wait.reject(err);
      sub._wait = null;
    }
  }

  /** unsubscribe(room) leaves room: its handler is not called again. */
  unsubscribe(room) {
    const sub = this._subs.get(room);
    if (sub) this._forget(sub, new HubError('not_subscribed', 'hubcluster: unsubscribed'));
    const conn = this._conn;
    // A connection that has not subscribed it yet never will.
    if (!conn || !(conn.ready || conn.sent.has(sub))) return Promise.resolve();
    return this._roundTrip(conn, { type: 'unsubscribe', room }).then(
      () => {},
      (e) => {
        if (e.code !== 'not_subscribed' && e.code !== 'not_connected') throw e;
      },
    );
  }

  /**
   * presence(room) asks who is in room now, cluster-wide, and resolves with
   * {room, count, members: [{client, user, node}]} (members: at most the
   * node's HUB_PRESENCE_LIMIT, count: all). The client need not be
   * subscribed to room, only allowed to. While disconnected it waits for the
   * connection (queueTimeout at most); asked on a connection that breaks, it
   * is asked again on the next one. Errors: the node's (forbidden, bad_room,
   * unavailable: retry), timeout, not_connected, closed.
   */
  async presence(room) {
    const deadline = Date.now() + this._o.queueTimeout;
    for (;;) {
      const conn = await this._connected(Math.max(0, deadline - Date.now()));
      try {
        const r = await this._roundTrip(conn, { type: 'presence', room });
        return { room: r.room, count: r.count, members: r.members || [] };
      } catch (e) {
        if (e.code !== 'not_connected' || this._err) throw e;
      }
    }
  }

  /**
   * publish(room, data, {key}) publishes data (any JSON value) to room and
   * resolves with {offset, key} once the node has stored it. While
   * disconnected it waits for the connection, queueTimeout at most. Errors
   * carry the node's code ("unavailable": not delivered; "timeout": it may
   * be delivered, retry with err.key) or the client's ("not_connected",
   * "queue_full": not sent; "closed").
   */
  publish(room, data, options = {}) {
    const key = options.key || newKey();
    return new Promise((resolve, reject) => {
      const req = {
        publish: true,
        key,
        sent: false,
        frame: { type: 'publish', room, data, idempotency_key: key },
        ack: (ack) => (clearTimeout(req.timer), resolve({ offset: ack.offset || 0, key })),
        fail: (e) => (clearTimeout(req.timer), reject(Object.assign(new HubError(e.code, e.message), e, { key }))),
      };
      if (this._err) return req.fail(this._err);
      const conn = this._conn;
      if (conn && conn.ready) return this._sendPublish(conn, req);
      if (this._queue.length >= this._o.queueSize) {
        return req.fail(new HubError('queue_full', 'hubcluster: too many publishes wait for the connection'));
      }
      this._waitForConnection(req);
      this._queue.push(req);
    });
  }

  // _waitForConnection bounds how long req may wait in the queue.
  _waitForConnection(req) {
    clearTimeout(req.timer);
    req.timer = setTimeout(() => {
      this._queue = this._queue.filter((r) => r !== req);
      req.fail(
        req.sent
          ? new HubError('timeout', 'hubcluster: sent, then the connection was lost; it may be delivered: retry with the same key')
          : new HubError('not_connected', 'hubcluster: not connected in time; not sent'),
      );
    }, this._o.queueTimeout);
  }

  _sendPublish(conn, req) {
    clearTimeout(req.timer);
    req.sent = true;
    req.timer = setTimeout(() => {
      conn.pending.delete(req.frame.id);
      req.fail(new HubError('timeout', 'hubcluster: no answer in time; it may be delivered: retry with the same key'));
    }, this._o.requestTimeout);
    this._send(conn, req.frame, req);
  }
}

// reconnectHint is the wait a close asks for: the hint of a drain (1012),
// or undefined for backoff.
function reconnectHint(code, reason) {
  if (code !== 1012) return undefined;
  try {
    const ms = JSON.parse(reason).reconnect_after_ms;
    if (typeof ms === 'number' && ms >= 0) return ms;
  } catch {
    // no hint in the reason
  }
  return 1000;
}

function jitter(ms) {
  return ms / 2 + Math.random() * (ms / 2);
}

// tokenExpiry reads a JWT's exp, in ms, without verifying it (0 if none).
function tokenExpiry(token) {
  try {
    const b64 = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const exp = JSON.parse(atob(b64 + '==='.slice((b64.length + 3) % 4))).exp;
    return typeof exp === 'number' ? exp * 1000 : 0;
  } catch {
    return 0;
  }
}

function errText(e) {
  return String((e && e.message) || e);
}

function newKey() {
  const b = new Uint8Array(12);
  if (globalThis.crypto && globalThis.crypto.getRandomValues) globalThis.crypto.getRandomValues(b);
  else for (let i = 0; i < b.length; i++) b[i] = Math.floor(Math.random() * 256);
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

// throwLater reports an exception of the application's callback without
// breaking the client.
function throwLater(e) {
  setTimeout(() => {
    throw e;
  }, 0);
}
