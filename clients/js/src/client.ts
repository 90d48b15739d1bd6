/** The connection: state machine, reconnects, token refresh, command batching, replies and pushes. */
import { Waiters } from './waiters.js';
import { backoffDelay } from './backoff.js';
import type { Codec } from './codec/codec.js';
import { jsonCodec } from './codec/json.js';
import { msgpackCodec } from './codec/msgpack-codec.js';
import {
  ClientErrors,
  DisconnectCodes,
  ServerErrors,
  StarlingError,
  UnauthorizedError,
  shouldReconnect,
} from './errors.js';
import { Emitter } from './events.js';
import { Subscription, type SubscriptionHost } from './subscription.js';
import type {
  ClientEvents,
  ClientInfo,
  ClientOptions,
  ClientState,
  HistoryOptions,
  HistoryResult,
  PresenceResult,
  PresenceStatsResult,
  Publication,
  PublishResult,
  SubscriptionOptions,
  WebSocketConstructor,
  WebSocketLike,
} from './types.js';

export const VERSION = '0.1.0';

type Pending = {
  resolve: (result: Record<string, unknown>) => void;
  reject: (error: StarlingError) => void;
  timer: ReturnType<typeof setTimeout>;
};

type QueuedPublish = {
  channel: string;
  data: unknown;
  resolve: (r: PublishResult) => void;
  reject: (e: Error) => void;
};

/** The `disconnect` push that precedes a server close. */
type DisconnectAdvice = { code: number; reason: string; reconnect: boolean; delay?: number };

type ListenerTarget = {
  addEventListener(name: string, fn: () => void): void;
  removeEventListener(name: string, fn: () => void): void;
};

export class Client extends Emitter<ClientEvents> {
  readonly url: string;
  readonly minReconnectDelay: number;
  readonly maxReconnectDelay: number;
  readonly timeout: number;
  private readonly opts: ClientOptions;
  private readonly codec: Codec;
  private _state: ClientState = 'disconnected';
  private ws: WebSocketLike | undefined;
  /** Bumped per transport: events and replies of an older socket are ignored. */
  private transportGen = 0;
  private nextId = 1;
  private pending = new Map<number, Pending>();
  private outbox: object[] = [];
  private flushScheduled = false;
  private subs = new Map<string, Subscription>();
  private offlineQueue: QueuedPublish[] = [];
  private attempts = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  private handshakeTimer: ReturnType<typeof setTimeout> | undefined;
  private advice: DisconnectAdvice | undefined;
  private token: string | undefined;
  private tokenStale = false;
  private offline = false;
  private _clientId: string | undefined;
  private waiters = new Waiters();
  private readonly onOffline = () => this.goOffline();
  private readonly onOnline = () => this.goOnline();

  constructor(url: string, options: ClientOptions = {}) {
    super();
    this.url = url;
    this.opts = options;
    this.minReconnectDelay = options.minReconnectDelay ?? 500;
    this.maxReconnectDelay = Math.max(this.minReconnectDelay, options.maxReconnectDelay ?? 20000);
    this.timeout = options.timeout ?? 10000;
    this.codec = options.protocol === 'msgpack' ? msgpackCodec(options.rawData === true) : jsonCodec;
    this.token = options.token;
  }

  get state(): ClientState {
    return this._state;
  }

  /** The connection id the server gave (while connected). */
  get clientId(): string | undefined {
    return this._clientId;
  }

  /** @internal */
  get connected(): boolean {
    return this._state === 'connected';
  }

  /** Starts connecting (and reconnecting after failures). Idempotent. */
  connect(): void {
    if (this._state !== 'disconnected') return;
    this.attempts = 0;
    this.listenNetwork(true);
    this.setState('connecting');
    this.emit('connecting', { code: 0, reason: 'connect called' });
    this.openTransport();
  }

  /** Closes the connection and stops reconnecting. Subscriptions are kept for a later `connect()`. */
  disconnect(): void {
    this.stop(DisconnectCodes.DISCONNECT_CALLED, 'disconnect called');
  }

  /** Sets the connection token used from the next connect on. */
  setToken(token: string): void {
    this.token = token;
    this.tokenStale = false;
  }

  /** Resolves once connected; rejects if the client stops first or after `timeout` ms. */
  ready(timeout = this.timeout): Promise<void> {
    if (this._state === 'connected') return Promise.resolve();
    if (this._state === 'disconnected') {
      return Promise.reject(new StarlingError(ClientErrors.NOT_CONNECTED, 'client is disconnected', false));
    }
    return this.waiters.wait(timeout, () => new StarlingError(ClientErrors.TIMEOUT, 'timeout waiting for the connection'));
  }

  // ---- subscriptions ----

  /** A new subscription; throws if one exists for the channel (see getOrCreateSubscription). */
  newSubscription(channel: string, options?: SubscriptionOptions): Subscription {
    if (this.subs.has(channel)) throw new Error(`a subscription to "${channel}" already exists`);
    const sub = new Subscription(this.asHost(), channel, options);
    this.subs.set(channel, sub);
    return sub;
  }

  /**
   * The channel's subscription, created on first use: safe to call on every render or
   * effect run (React strict mode mounts twice), unlike newSubscription. Options apply
   * only when it is created.
   */
  getOrCreateSubscription(channel: string, options?: SubscriptionOptions): Subscription {
    return this.subs.get(channel) ?? this.newSubscription(channel, options);
  }

  getSubscription(channel: string): Subscription | undefined {
    return this.subs.get(channel);
  }

  /** Every subscription by channel. */
  subscriptions(): Record<string, Subscription> {
    return Object.fromEntries(this.subs);
  }

  /** The internal face subscriptions drive (not `implements`: its members are internal). */
  private asHost(): SubscriptionHost {
    return this;
  }

  /** Unsubscribes and forgets the subscription. */
  removeSubscription(sub: Subscription | undefined): void {
    if (!sub || this.subs.get(sub.channel) !== sub) return;
    sub.unsubscribe();
    this.subs.delete(sub.channel);
  }

  // ---- commands ----

  /**
   * Publishes `data` (any JSON value, or a Uint8Array) into a channel. While not connected
   * it is queued (bounded) or refused, by the `offlinePublish` option.
   */
  publish(channel: string, data: unknown): Promise<PublishResult> {
    if (this._state === 'connected') return this.sendPublish(channel, data);
    if (this.opts.offlinePublish === 'refuse') {
      return Promise.reject(new StarlingError(ClientErrors.NOT_CONNECTED, 'not connected', true));
    }
    if (this.offlineQueue.length >= (this.opts.maxQueuedPublishes ?? 100)) {
      return Promise.reject(new StarlingError(ClientErrors.QUEUE_FULL, 'offline publish queue is full', true));
    }
    return new Promise((resolve, reject) => this.offlineQueue.push({ channel, data, resolve, reject }));
  }

  async presence(channel: string): Promise<PresenceResult> {
    const r = await this.rpc('presence', { channel });
    const clients: Record<string, ClientInfo> = {};
    for (const [id, info] of Object.entries((r['clients'] ?? {}) as Record<string, Record<string, unknown>>)) {
      clients[id] = this.readClientInfo(info);
    }
    return { clients };
  }

  async presenceStats(channel: string): Promise<PresenceStatsResult> {
    const r = await this.rpc('presence_stats', { channel });
    return { numClients: Number(r['num_clients'] ?? 0), numUsers: Number(r['num_users'] ?? 0) };
  }

  /** One page of history; page on with `since` set to the last publication received. */
  async history(channel: string, options: HistoryOptions = {}): Promise<HistoryResult> {
    const params: Record<string, unknown> = { channel };
    if (options.limit !== undefined) params['limit'] = options.limit;
    if (options.since) params['since'] = { offset: options.since.offset, epoch: options.since.epoch };
    if (options.reverse) params['reverse'] = true;
    const r = await this.rpc('history', params);
    const raw = (r['publications'] ?? []) as Record<string, unknown>[];
    return {
      publications: raw.map((p) => this.readPublication(p)),
      epoch: String(r['epoch'] ?? ''),
      offset: Number(r['offset'] ?? 0),
    };
  }

  /** Round trip to the server (the `ping` command). */
  async ping(): Promise<void> {
    await this.rpc('ping', {});
  }

  /** A command that needs the connection: waits for it while connecting (bounded by `timeout`). */
  private async rpc(method: string, params: Record<string, unknown>): Promise<Record<string, unknown>> {
    if (this._state !== 'connected') await this.ready();
    return this.call(method, params);
  }

  private sendPublish(channel: string, data: unknown): Promise<PublishResult> {
    const params: Record<string, unknown> = { channel };
    this.codec.putData(params, 'data', data);
    return this.call('publish', params).then((r) => ({
      offset: Number(r['offset'] ?? 0),
      epoch: String(r['epoch'] ?? ''),
    }));
  }

  /** @internal Sends a command (batched with the others of this tick) and awaits its reply. */
  call(method: string, params: Record<string, unknown>): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      if (!this.ws) {
        reject(new StarlingError(ClientErrors.DISCONNECTED, 'not connected'));
        return;
      }
      const id = this.nextId;
      // Ids are u32 and never 0.
      this.nextId = this.nextId >= 0xffffffff ? 1 : this.nextId + 1;
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new StarlingError(ClientErrors.TIMEOUT, `${method}: timeout`));
      }, this.timeout);
      this.pending.set(id, { resolve, reject, timer });
      this.enqueue({ id, [method]: params });
    });
  }

  /** Queues a message for this tick's frame: calls made together leave in one frame. */
  private enqueue(message: object): void {
    this.outbox.push(message);
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    queueMicrotask(() => this.flush());
  }

  private flush(): void {
    this.flushScheduled = false;
    const batch = this.outbox;
    this.outbox = [];
    if (!this.ws || batch.length === 0) return;
    try {
      this.ws.send(this.codec.encode(batch));
    } catch (e) {
      // Encoding failed (e.g. a BigInt in JSON data) or the socket is closing: fail those calls.
      for (const m of batch) this.failPending((m as { id?: number }).id, e as Error);
    }
  }

  private failPending(id: number | undefined, error: Error): void {
    const p = id === undefined ? undefined : this.pending.get(id);
    if (!p || id === undefined) return;
    this.pending.delete(id);
    clearTimeout(p.timer);
    p.reject(error instanceof StarlingError ? error : new StarlingError(ClientErrors.BAD_FRAME, error.message, false));
  }

  // ---- transport ----

  private openTransport(): void {
    clearTimeout(this.reconnectTimer);
    if (this.offline) return; // goOnline() resumes
    const Ctor =
      this.opts.websocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!Ctor) {
      this.stop(DisconnectCodes.BAD_REQUEST, 'no WebSocket implementation: pass the websocket option');
      return;
    }
    const gen = ++this.transportGen;
    this.advice = undefined;
    let ws: WebSocketLike;
    try {
      ws = new Ctor(this.url, this.codec.subprotocol);
    } catch (e) {
      this.emit('error', { type: 'transport', error: e as Error });
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.binaryType = 'arraybuffer';
    // The handshake and the connect reply must both come within `timeout`.
    this.handshakeTimer = setTimeout(() => {
      if (gen !== this.transportGen) return;
      this.emit('error', { type: 'connect', error: new StarlingError(ClientErrors.TIMEOUT, 'connect: timeout') });
      this.transportClosed(DisconnectCodes.ABNORMAL, 'connect timeout');
    }, this.timeout);
    ws.onopen = () => {
      if (gen === this.transportGen) this.sendConnect(gen, true);
    };
    ws.onmessage = (event) => {
      if (gen === this.transportGen) this.onFrame(event.data);
    };
    ws.onerror = () => {
      if (gen === this.transportGen) {
        this.emit('error', { type: 'transport', error: new Error('WebSocket error') });
      }
    };
    ws.onclose = (event) => {
      if (gen === this.transportGen) this.transportClosed(event.code, event.reason);
    };
  }

  /** Closes the current socket and forgets it (its late events are ignored). */
  private dropTransport(code = 1000, reason = ''): void {
    const ws = this.ws;
    this.ws = undefined;
    this.transportGen++;
    this.outbox = [];
    clearTimeout(this.handshakeTimer);
    clearTimeout(this.refreshTimer);
    this._clientId = undefined;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      // A no-op, not null: Node's `ws` throws an unhandled 'error' when a socket still
      // connecting is closed and nobody listens.
      ws.onerror = () => {};
      try {
        ws.close(code, reason);
      } catch {
        // already closed
      }
    }
  }

  private async sendConnect(gen: number, retryOnExpired: boolean): Promise<void> {
    try {
      await this.ensureToken();
    } catch (e) {
      if (gen !== this.transportGen) return;
      this.emit('error', { type: 'token', error: e as Error });
      if (e instanceof UnauthorizedError) this.stop(DisconnectCodes.UNAUTHORIZED, 'unauthorized');
      else this.transportClosed(DisconnectCodes.ABNORMAL, 'getToken failed');
      return;
    }
    if (gen !== this.transportGen) return;
    const params: Record<string, unknown> = { name: this.opts.name ?? 'js' };
    if (this.opts.version) params['version'] = this.opts.version;
    if (this.token) params['token'] = this.token;
    let result: Record<string, unknown>;
    try {
      result = await this.call('connect', params);
    } catch (e) {
      if (gen !== this.transportGen) return;
      const error = e as StarlingError;
      this.emit('error', { type: 'connect', error });
      if (error.code === ServerErrors.TOKEN_EXPIRED && this.opts.getToken) {
        this.tokenStale = true;
        // A failed connect leaves the socket open: try once more on it with a fresh token.
        if (retryOnExpired) this.sendConnect(gen, false);
        else this.transportClosed(DisconnectCodes.ABNORMAL, 'token expired');
      } else if (error.code === ServerErrors.TOKEN_EXPIRED || error.unauthorized) {
        this.stop(DisconnectCodes.UNAUTHORIZED, error.message);
      } else {
        this.transportClosed(DisconnectCodes.ABNORMAL, error.message);
      }
      return;
    }
    if (gen !== this.transportGen) return;
    this.onConnected(result);
  }

  /** Fetches a token through getToken when there is none or the last one expired. */
  private async ensureToken(): Promise<void> {
    const getToken = this.opts.getToken;
    if (!getToken || (this.token !== undefined && !this.tokenStale)) return;
    const token = await getToken();
    if (!token) throw new UnauthorizedError('getToken returned no token');
    this.token = token;
    this.tokenStale = false;
  }

  private onConnected(result: Record<string, unknown>): void {
    clearTimeout(this.handshakeTimer);
    this.attempts = 0;
    this._clientId = String(result['client'] ?? '');
    const expires = result['expires'] === true;
    const ttl = result['ttl'] === undefined ? undefined : Number(result['ttl']);
    if (expires && ttl !== undefined) this.scheduleRefresh(ttl);
    this.setState('connected');
    this.waiters.resolveAll();
    const event: ClientEvents['connected'] = {
      client: this._clientId,
      version: String(result['version'] ?? ''),
      protocol: this.codec.name,
      expires,
    };
    if (ttl !== undefined) event.ttl = ttl;
    this.emit('connected', event);
    if (this._state !== 'connected') return; // a listener disconnected
    // Subscribes first, then queued publishes: a private namespace needs the subscription.
    for (const sub of this.subs.values()) sub._onConnected();
    const queued = this.offlineQueue;
    this.offlineQueue = [];
    for (const q of queued) this.sendPublish(q.channel, q.data).then(q.resolve, q.reject);
  }

  private onFrame(data: unknown): void {
    let messages: Record<string, unknown>[];
    try {
      messages = this.codec.decode(data as string | ArrayBuffer);
    } catch (e) {
      this.emit('error', { type: 'decode', error: e as Error });
      this.transportClosed(DisconnectCodes.ABNORMAL, 'bad frame from server');
      return;
    }
    const gen = this.transportGen;
    for (const msg of messages) {
      if (gen !== this.transportGen) return; // a handler closed the transport
      const id = Number(msg['id'] ?? 0);
      if (id > 0) this.onReply(id, msg);
      else if (msg['push'] && typeof msg['push'] === 'object') this.onPush(msg['push'] as Record<string, unknown>);
    }
  }

  private onReply(id: number, msg: Record<string, unknown>): void {
    const p = this.pending.get(id);
    if (!p) return; // timed out already
    this.pending.delete(id);
    clearTimeout(p.timer);
    const error = msg['error'] as Record<string, unknown> | undefined;
    if (error) {
      p.reject(
        new StarlingError(Number(error['code'] ?? 0), String(error['message'] ?? ''), error['temporary'] === true),
      );
      return;
    }
    const key = Object.keys(msg).find((k) => k !== 'id');
    p.resolve((key ? msg[key] : {}) as Record<string, unknown>);
  }

  private onPush(push: Record<string, unknown>): void {
    const channel = String(push['channel'] ?? '');
    for (const kind of Object.keys(push)) {
      if (kind === 'channel') continue;
      const body = (push[kind] ?? {}) as Record<string, unknown>;
      if (kind === 'disconnect') {
        // The close frame follows with the same code; keep the advice (delay) it carries.
        const advice: DisconnectAdvice = {
          code: Number(body['code'] ?? 0),
          reason: String(body['reason'] ?? ''),
          reconnect: body['reconnect'] === true,
        };
        if (typeof body['delay'] === 'number') advice.delay = body['delay'];
        this.advice = advice;
      } else {
        this.subs.get(channel)?._onPush(kind, body);
      }
    }
  }

  /** The socket closed (or failed): reconnect or stop, by the code and the server's advice. */
  private transportClosed(closeCode: number, closeReason: string): void {
    const advice = this.advice;
    this.advice = undefined;
    const code = advice?.code ?? closeCode;
    const reason = advice?.reason ?? closeReason;
    this.dropTransport();
    this.rejectPending(new StarlingError(ClientErrors.DISCONNECTED, `connection closed (${code})`));
    if (this._state === 'disconnected') return;
    const reconnect = advice ? advice.reconnect : shouldReconnect(code);
    if (!reconnect) {
      this.stop(code, reason);
      return;
    }
    if (code === DisconnectCodes.EXPIRED) this.tokenStale = true;
    for (const sub of this.subs.values()) sub._onDisconnected(code, reason);
    if (this._state === 'connected') {
      this.setState('connecting');
      this.emit('connecting', { code, reason });
    }
    if (this._state === 'connecting') this.scheduleReconnect(advice?.delay);
  }

  private scheduleReconnect(advisedDelay?: number): void {
    clearTimeout(this.reconnectTimer);
    if (this.offline) return;
    // The server's advice is already jittered per client; our own backoff continues after it.
    const delay = advisedDelay ?? backoffDelay(this.attempts, this.minReconnectDelay, this.maxReconnectDelay);
    this.attempts++;
    this.reconnectTimer = setTimeout(() => this.openTransport(), delay);
  }

  /** Goes to `disconnected` for good (until connect()): no reconnect. */
  private stop(code: number, reason: string): void {
    if (this._state === 'disconnected') return;
    clearTimeout(this.reconnectTimer);
    this.dropTransport(1000, 'client disconnect');
    this.listenNetwork(false);
    this.offline = false;
    const closed = new StarlingError(ClientErrors.CLIENT_CLOSED, `client disconnected: ${reason}`, false);
    this.rejectPending(closed);
    const queued = this.offlineQueue;
    this.offlineQueue = [];
    for (const q of queued) q.reject(closed);
    this.waiters.rejectAll(closed);
    for (const sub of this.subs.values()) {
      sub._onDisconnected(code, reason);
      sub._onClientClosed(closed);
    }
    this.setState('disconnected');
    this.emit('disconnected', { code, reason });
  }

  private rejectPending(error: StarlingError): void {
    const pending = this.pending;
    this.pending = new Map();
    for (const p of pending.values()) {
      clearTimeout(p.timer);
      p.reject(error);
    }
  }

  private setState(next: ClientState): void {
    const old = this._state;
    if (old === next) return;
    this._state = next;
    this.emit('state', { oldState: old, newState: next });
  }

  // ---- token refresh ----

  /**
   * Refreshes shortly before expiry: half the time left, at most 10 s ahead of it. The
   * server's `ttl` is whole seconds counted from the start of the current second, so up to
   * one second less may be left: count from `ttl - 1`. Never sooner than 500 ms, so that a
   * getToken handing out nearly expired tokens cannot spin.
   */
  private scheduleRefresh(ttlSecs: number): void {
    clearTimeout(this.refreshTimer);
    if (!this.opts.getToken) return; // nothing to refresh with: the server will close with 4004
    const left = Math.max(0, ttlSecs - 1) * 1000;
    const delay = Math.max(500, left - Math.min(left / 2, 10000));
    this.refreshTimer = setTimeout(() => this.refresh(), delay);
  }

  private async refresh(): Promise<void> {
    const gen = this.transportGen;
    const getToken = this.opts.getToken;
    if (this._state !== 'connected' || !getToken) return;
    let token: string;
    try {
      token = await getToken();
      if (!token) throw new UnauthorizedError('getToken returned no token');
    } catch (e) {
      if (gen !== this.transportGen) return;
      this.emit('error', { type: 'refresh', error: e as Error });
      if (e instanceof UnauthorizedError) this.stop(DisconnectCodes.UNAUTHORIZED, 'unauthorized');
      else this.refreshTimer = setTimeout(() => this.refresh(), this.minReconnectDelay);
      return;
    }
    if (gen !== this.transportGen) return;
    this.token = token;
    this.tokenStale = false;
    try {
      const r = await this.call('refresh', { token });
      if (gen !== this.transportGen) return;
      if (r['expires'] === true && r['ttl'] !== undefined) this.scheduleRefresh(Number(r['ttl']));
    } catch (e) {
      if (gen !== this.transportGen) return;
      const error = e as StarlingError;
      this.emit('error', { type: 'refresh', error });
      // 104: a server without `refresh`. The new token is kept: when the old one expires
      // the server closes with 4004 and the reconnect presents the new one.
      if (error.code === ServerErrors.METHOD_NOT_FOUND) return;
      if (error.code === ServerErrors.TOKEN_EXPIRED) this.tokenStale = true;
      if (error.code !== ClientErrors.DISCONNECTED) {
        this.refreshTimer = setTimeout(() => this.refresh(), this.minReconnectDelay);
      }
    }
  }

  // ---- browser network events ----

  private listenNetwork(on: boolean): void {
    const target = globalThis as unknown as Partial<ListenerTarget>;
    if (typeof target.addEventListener !== 'function' || typeof target.removeEventListener !== 'function') return;
    if (on) {
      target.addEventListener('offline', this.onOffline);
      target.addEventListener('online', this.onOnline);
    } else {
      target.removeEventListener('offline', this.onOffline);
      target.removeEventListener('online', this.onOnline);
    }
  }

  /** The browser lost the network: drop the socket now rather than wait for TCP to notice. */
  private goOffline(): void {
    if (this._state === 'disconnected' || this.offline) return;
    this.offline = true;
    clearTimeout(this.reconnectTimer);
    if (this.ws || this._state === 'connected') this.transportClosed(DisconnectCodes.ABNORMAL, 'offline');
    if (this._state === 'connected') this.setState('connecting');
  }

  /** Back online: reconnect at once, without waiting for the backoff. */
  private goOnline(): void {
    if (!this.offline) return;
    this.offline = false;
    if (this._state !== 'connecting') return;
    this.attempts = 0;
    if (!this.ws) this.openTransport();
  }

  // ---- payloads ----

  /** @internal */
  readPublication(raw: Record<string, unknown>): Publication {
    const pub: Publication = {
      data: this.codec.getData(raw, 'data'),
      offset: Number(raw['offset'] ?? 0),
    };
    if (raw['info']) pub.info = this.readClientInfo(raw['info'] as Record<string, unknown>);
    if (raw['tags']) pub.tags = raw['tags'] as Record<string, string>;
    return pub;
  }

  /** @internal */
  readClientInfo(raw: Record<string, unknown>): ClientInfo {
    const info: ClientInfo = { user: String(raw['user'] ?? ''), client: String(raw['client'] ?? '') };
    const connInfo = this.codec.getData(raw, 'conn_info');
    if (connInfo !== undefined) info.connInfo = connInfo;
    const chanInfo = this.codec.getData(raw, 'chan_info');
    if (chanInfo !== undefined) info.chanInfo = chanInfo;
    return info;
  }
}
