// Type declarations of hubcluster.js, the JavaScript client of hubcluster
// (protocol v1.1).

export declare const PROTOCOL_VERSION: '1.1';

/** A WebSocket constructor: the browser's, Node 22's, or the ws package's. */
export type WebSocketConstructor = new (url: string) => unknown;

export type TokenSource = string | (() => string | Promise<string>);

export interface Options {
  /** Other node URLs to try after the first one, round robin, when (re)connecting. */
  urls?: string[];
  /** A WebSocket constructor (default: the global WebSocket). Node 20 has none: pass the ws package. */
  WebSocket?: WebSocketConstructor;
  /**
   * The connection token (a JWT), sent as the first request (auth). A
   * function is called on every connect, and again before the token expires.
   */
  token?: TokenSource;
  /** Returns a fresh token, called refreshBefore ms before the current one expires (default: token, when it is a function). */
  tokenRefresh?: () => string | Promise<string>;
  /** How long before a token's exp it is refreshed, in ms (default 30000). */
  refreshBefore?: number;
  /** How long a sent request waits for the node's answer, and a connection attempt may take, in ms (default 10000). */
  requestTimeout?: number;
  /** How long a publish or subscribe made while disconnected waits for the connection, in ms (default 10000). */
  queueTimeout?: number;
  /** How many publishes may wait for the connection (default 1024; 0: none, they fail at once with queue_full). */
  queueSize?: number;
  /** Bounds of the jittered exponential wait between reconnects after a lost connection, in ms (default 100 and 10000). */
  minBackoff?: number;
  maxBackoff?: number;
}

export type State = 'connecting' | 'connected' | 'disconnected' | 'closed';

export interface StateEvent {
  state: State;
  /** connecting, connected: the URL. */
  url?: string;
  /** disconnected, closed: the close code (1006 when the connection was lost or never made) and reason. */
  code?: number;
  reason?: string;
  /** disconnected: the wait before the next attempt, in ms (the node's hint after 1012, else the backoff). */
  retryIn?: number;
  /** closed: why (code "closed", with closeCode and closeReason). */
  error?: HubError;
}

export interface Events {
  state: StateEvent;
  connecting: StateEvent & { url: string };
  connected: StateEvent & { url: string };
  disconnected: StateEvent & { code: number; reason: string; retryIn: number };
  closed: StateEvent & { code: number; reason: string; error: HubError };
  /** Messages of room may have been lost and will not be delivered. */
  gap: { room: string };
  /** A resubscription that asked to recover: count messages came from the room's history; recovered false: a gap. */
  recovered: { room: string; count: number; recovered: boolean };
  /** The node took the client out of room (a refreshed token no longer grants it, or an operator removed the user). */
  unsubscribed: { room: string; code: string; message: string };
  /** A member entered a room this client watches (subscribed with presence). */
  join: PresenceEvent;
  /** A member left a room this client watches (subscribed with presence). */
  leave: PresenceEvent;
  /**
   * The node's snapshot of who is in a room this client watches, sent when it
   * may have missed join and leave events (it lost and regained its broker's
   * subscription to the room): replace the room's member set with it, then
   * go on applying join and leave.
   */
  presence: Presence;
  /** An error that answers no request: the node's, a failed token refresh, a failed connection attempt. */
  error: HubError;
}

export interface Message<T = any> {
  room: string;
  /** The message's place in the room's history, from 1 (0 when the node keeps no history). */
  offset: number;
  data: T;
}

/** One connection in a room. */
export interface Member {
  /** The connection's id, made by its node, unique in the cluster; a reconnect gets a new one. */
  client: string;
  /** The token's sub ("" when the node runs without auth). */
  user: string;
  /** The id (HUB_NODE_ID) of the node the connection is on. */
  node: string;
}

/** Who is in a room, cluster-wide: the answer of presence(), and the snapshot of onPresence and the "presence" event. */
export interface Presence {
  room: string;
  /** How many members the room has. */
  count: number;
  /** The members, at most the node's HUB_PRESENCE_LIMIT (so possibly fewer than count). */
  members: Member[];
}

/** A member entering (join) or leaving (leave) a room. Keep a set keyed by client: join adds, leave deletes. */
export interface PresenceEvent extends Member {
  type: 'join' | 'leave';
  room: string;
}

export interface SubscribeOptions {
  /** Also receive the room's join and leave events (implied by onJoin, onLeave and onPresence); asked again on every reconnect. */
  presence?: boolean;
  /** Called when a member enters the room (this client's own entry too, normally just after the ack). */
  onJoin?: (event: PresenceEvent) => void;
  /** Called when a member leaves the room (it unsubscribed, closed, was cut, or its node drained or died). */
  onLeave?: (event: PresenceEvent) => void;
  /**
   * Called with the node's snapshot of the room's members when it may have
   * missed join and leave events (it lost and regained its broker's
   * subscription to the room): it replaces the member set; join and leave
   * events follow it as usual.
   */
  onPresence?: (snapshot: Presence) => void;
}

export interface Receipt {
  /** The message's offset (0 when the node keeps no history). */
  offset: number;
  /** The idempotency key it was published with. */
  key: string;
}

/**
 * The error of a request. code is the node's (bad_request, bad_room,
 * not_subscribed, forbidden, too_large, rate_limited, unavailable: not
 * delivered; timeout: it may be delivered, retry with the same key) or the
 * client's (not_connected and queue_full: not sent; already_subscribed;
 * closed: the client was closed, or the node refused for good).
 */
export declare class HubError extends Error {
  readonly code: string;
  /** The node sent this error. */
  readonly fromNode?: boolean;
  /** A publish's idempotency key: retry with it after timeout. */
  readonly key?: string;
  /** code closed: the close code (1000 for close(); 1007, 1008, 1009 from the node; 4100-4999: an operator's disconnect) and reason. */
  readonly closeCode?: number;
  readonly closeReason?: string;
  constructor(code: string, message: string, extra?: object);
}

export declare class Subscription<T = any> {
  readonly room: string;
  /** The subscription receives the room's join and leave events. */
  readonly presence: boolean;
  /** The room's epoch and the offset delivered last. */
  readonly position: { epoch: string; offset: number };
  unsubscribe(): Promise<void>;
}

export declare class Client {
  constructor(url: string, options?: Options);
  /** Where the connection stands. */
  readonly state: State;
  /** The URL of the current (or latest) connection attempt. */
  readonly url: string;
  /** Adds a listener; returns a function that removes it. */
  on<E extends keyof Events>(event: E, fn: (detail: Events[E]) => void): () => void;
  off<E extends keyof Events>(event: E, fn: (detail: Events[E]) => void): void;
  /** Resolves once connected; rejects if the client stops first. */
  ready(): Promise<void>;
  /**
   * Joins room; onMessage gets every message from now on, in order, once, across reconnects.
   * With presence, the room's join and leave events and the node's snapshots too (to the handlers and as client events).
   */
  subscribe<T = any>(room: string, onMessage: (message: Message<T>) => void, options?: SubscribeOptions): Promise<Subscription<T>>;
  /** Asks who is in room now, cluster-wide; the client need not be subscribed to it. */
  presence(room: string): Promise<Presence>;
  /** Leaves room; its handler is not called again. */
  unsubscribe(room: string): Promise<void>;
  /** Publishes data to room; resolves once the node has stored it. */
  publish(room: string, data: unknown, options?: { key?: string }): Promise<Receipt>;
  /** Closes the connection for good; what still waits fails with code closed. */
  close(): void;
}

/** Returns a Client that connects to url and stays connected until close(). */
export declare function connect(url: string, options?: Options): Client;
