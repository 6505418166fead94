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
  /** The node took the client out of room (a refreshed token no longer grants it). */
  unsubscribed: { room: string; code: string; message: string };
  /** An error that answers no request: the node's, a failed token refresh, a failed connection attempt. */
  error: HubError;
}

export interface Message<T = any> {
  room: string;
  /** The message's place in the room's history, from 1 (0 when the node keeps no history). */
  offset: number;
  data: T;
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
  /** code closed: the close code (1000 for close(), or 1007, 1008, 1009 from the node) and reason. */
  readonly closeCode?: number;
  readonly closeReason?: string;
  constructor(code: string, message: string, extra?: object);
}

export declare class Subscription<T = any> {
  readonly room: string;
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
  /** Joins room; onMessage gets every message from now on, in order, once, across reconnects. */
  subscribe<T = any>(room: string, onMessage: (message: Message<T>) => void): Promise<Subscription<T>>;
  /** Leaves room; its handler is not called again. */
  unsubscribe(room: string): Promise<void>;
  /** Publishes data to room; resolves once the node has stored it. */
  publish(room: string, data: unknown, options?: { key?: string }): Promise<Receipt>;
  /** Closes the connection for good; what still waits fails with code closed. */
  close(): void;
}

/** Returns a Client that connects to url and stays connected until close(). */
export declare function connect(url: string, options?: Options): Client;
