/** Public types: options, events and results. */
import type { StarlingError } from './errors.js';

export type ClientState = 'disconnected' | 'connecting' | 'connected';
export type SubscriptionState = 'unsubscribed' | 'subscribing' | 'subscribed';

/** The part of the WebSocket API the client uses (the browser's, or `ws`'s in Node). */
export interface WebSocketLike {
  binaryType: string;
  readonly protocol: string;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface ClientOptions {
  /** `json` (default) or `msgpack` (binary frames, the `starling.msgpack` subprotocol). */
  protocol?: 'json' | 'msgpack';
  /** WebSocket constructor; defaults to `globalThis.WebSocket` (pass `ws`'s in Node 20). */
  websocket?: WebSocketConstructor;
  /** Connection token (JWT); may be omitted where anonymous access is allowed. */
  token?: string;
  /**
   * Returns a fresh connection token: called when there is none, when the server says it
   * expired (error 109, close 4004) and shortly before it expires (then sent with `refresh`,
   * without reconnecting). Throw {@link UnauthorizedError} to stop the client for good.
   */
  getToken?: () => Promise<string>;
  /** Client name sent in `connect` (default `js`). */
  name?: string;
  /** Client version sent in `connect`. */
  version?: string;
  /** Shortest reconnect delay, ms (default 500). */
  minReconnectDelay?: number;
  /** Longest reconnect delay, ms (default 20000). */
  maxReconnectDelay?: number;
  /** How long a command (and the WebSocket handshake with `connect`) may take, ms (default 10000). */
  timeout?: number;
  /** Publishes made while not connected: queued until connected (default) or refused. */
  offlinePublish?: 'queue' | 'refuse';
  /** Most publishes held while not connected (default 100); more are refused with QUEUE_FULL. */
  maxQueuedPublishes?: number;
  /** MessagePack only: hand data over as Uint8Array instead of decoding JSON text. */
  rawData?: boolean;
}

export interface SubscriptionOptions {
  /** Subscription token (private channels). */
  token?: string;
  /** Returns a subscription token; called when none is set and when the server says it expired (109). */
  getToken?: (ctx: { channel: string }) => Promise<string>;
  /** Recover missed publications on resubscribe where the channel keeps history (default true). */
  recover?: boolean;
  /** A position to recover from on the first subscribe (e.g. saved from an earlier page load). */
  since?: StreamPosition;
}

export interface StreamPosition {
  offset: number;
  epoch: string;
}

/** Who a connection is. `connInfo`/`chanInfo` come from the tokens' `info` claims. */
export interface ClientInfo {
  user: string;
  client: string;
  connInfo?: unknown;
  chanInfo?: unknown;
}

export interface Publication {
  /** Any JSON value; a Uint8Array for binary data (or every payload with `rawData`). */
  data: unknown;
  /** Offset in the channel's stream (0 where the namespace keeps no history). */
  offset: number;
  info?: ClientInfo;
  tags?: Record<string, string>;
}

export interface PublishResult {
  offset: number;
  epoch: string;
}

export interface HistoryOptions {
  /** Most publications to return; absent = the namespace's history size; 0 = only the position. */
  limit?: number;
  /** Only publications after this position (before it with `reverse`). */
  since?: StreamPosition;
  /** Newest first. */
  reverse?: boolean;
}

export interface HistoryResult {
  publications: Publication[];
  /** The stream's current epoch. */
  epoch: string;
  /** The stream's newest offset. */
  offset: number;
}

export interface PresenceResult {
  /** Client id → who. */
  clients: Record<string, ClientInfo>;
}

export interface PresenceStatsResult {
  numClients: number;
  numUsers: number;
}

export interface StateEvent<S> {
  oldState: S;
  newState: S;
}

export interface ConnectingEvent {
  /** Why: 0 for `connect()`, else the close code of the connection that went away. */
  code: number;
  reason: string;
}

export interface ConnectedEvent {
  client: string;
  version: string;
  protocol: 'json' | 'msgpack';
  /** The token expires (and will be refreshed through getToken). */
  expires: boolean;
  /** Seconds left, when `expires`. */
  ttl?: number;
}

export interface DisconnectedEvent {
  /** 0 for `disconnect()`, else the close / disconnect code (4500-4999: do not reconnect). */
  code: number;
  reason: string;
}

export interface ErrorEvent {
  /** Where: `transport`, `connect`, `refresh`, `token`, `subscribe`, `decode`. */
  type: string;
  error: Error;
}

export interface ClientEvents {
  state: StateEvent<ClientState>;
  connecting: ConnectingEvent;
  connected: ConnectedEvent;
  disconnected: DisconnectedEvent;
  error: ErrorEvent;
}

export interface SubscribingEvent {
  channel: string;
  code: number;
  reason: string;
}

export interface SubscribedEvent {
  channel: string;
  /** The channel keeps history, so the position can be recovered after a disconnect. */
  recoverable: boolean;
  /** This subscribe asked to recover from a position. */
  wasRecovering: boolean;
  /** Every missed publication came back (they follow as `publication` events). */
  recovered: boolean;
  /** How many publications were recovered. */
  recoveredCount: number;
  epoch: string;
  offset: number;
}

export interface PublicationEvent extends Publication {
  channel: string;
}

export interface JoinLeaveEvent {
  channel: string;
  info: ClientInfo;
}

export interface UnsubscribedEvent {
  channel: string;
  /** 0 for `unsubscribe()`, else the server's code (e.g. 103) or the subscribe error's. */
  code: number;
  reason: string;
}

export interface SubscriptionErrorEvent {
  channel: string;
  type: string;
  error: StarlingError | Error;
}

export interface SubscriptionEvents {
  state: StateEvent<SubscriptionState>;
  subscribing: SubscribingEvent;
  subscribed: SubscribedEvent;
  publication: PublicationEvent;
  join: JoinLeaveEvent;
  leave: JoinLeaveEvent;
  unsubscribed: UnsubscribedEvent;
  error: SubscriptionErrorEvent;
}
