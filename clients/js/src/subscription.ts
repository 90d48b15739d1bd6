/** One channel subscription: its own state machine, position (for recovery) and events. */
import { Waiters } from './waiters.js';
import { backoffDelay } from './backoff.js';
import { ClientErrors, ServerErrors, StarlingError, UnauthorizedError } from './errors.js';
import { Emitter } from './events.js';
import type {
  HistoryOptions,
  HistoryResult,
  Publication,
  PresenceResult,
  PresenceStatsResult,
  PublishResult,
  SubscriptionEvents,
  SubscriptionOptions,
  SubscriptionState,
  ClientInfo,
} from './types.js';

/** What a subscription needs from its client (kept narrow so the two stay decoupled). */
export interface SubscriptionHost {
  readonly connected: boolean;
  readonly minReconnectDelay: number;
  readonly maxReconnectDelay: number;
  readonly timeout: number;
  call(method: string, params: Record<string, unknown>): Promise<Record<string, unknown>>;
  readPublication(raw: Record<string, unknown>): Publication;
  readClientInfo(raw: Record<string, unknown>): ClientInfo;
  publish(channel: string, data: unknown): Promise<PublishResult>;
  presence(channel: string): Promise<PresenceResult>;
  presenceStats(channel: string): Promise<PresenceStatsResult>;
  history(channel: string, options?: HistoryOptions): Promise<HistoryResult>;
}

export class Subscription extends Emitter<SubscriptionEvents> {
  readonly channel: string;
  private _state: SubscriptionState = 'unsubscribed';
  private readonly host: SubscriptionHost;
  private readonly options: SubscriptionOptions;
  private token: string | undefined;
  private tokenStale = false;
  /** Bumped on every state change: a late reply or token for an older attempt is dropped. */
  private gen = 0;
  private attempts = 0;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private recoverable = false;
  private epoch: string | undefined;
  private offset = 0;
  private waiters = new Waiters();

  /** @internal Created through `client.newSubscription` / `getOrCreateSubscription`. */
  constructor(host: SubscriptionHost, channel: string, options: SubscriptionOptions = {}) {
    super();
    this.host = host;
    this.channel = channel;
    this.options = options;
    this.token = options.token;
    if (options.since) {
      this.recoverable = true;
      this.epoch = options.since.epoch;
      this.offset = options.since.offset;
    }
  }

  get state(): SubscriptionState {
    return this._state;
  }

  /** The last position seen (save it to recover from later with the `since` option). */
  get position(): { offset: number; epoch: string } | undefined {
    return this.epoch === undefined ? undefined : { offset: this.offset, epoch: this.epoch };
  }

  /** Starts subscribing (now if connected, else once connected). Idempotent. */
  subscribe(): void {
    if (this._state !== 'unsubscribed') return;
    this.setState('subscribing');
    this.emit('subscribing', { channel: this.channel, code: 0, reason: 'subscribe called' });
    this.attempts = 0;
    this.sendSubscribe();
  }

  /** Stops the subscription (tells the server when connected). Idempotent. */
  unsubscribe(): void {
    this.toUnsubscribed(0, 'unsubscribe called', true);
  }

  /** Resolves once subscribed; rejects when unsubscribed first or after `timeout` ms. */
  ready(timeout = this.host.timeout): Promise<void> {
    if (this._state === 'subscribed') return Promise.resolve();
    if (this._state === 'unsubscribed') {
      return Promise.reject(new StarlingError(ClientErrors.UNSUBSCRIBED, 'not subscribed', false));
    }
    return this.waiters.wait(timeout, () => new StarlingError(ClientErrors.TIMEOUT, 'timeout waiting for the subscription'));
  }

  /** Publishes into this channel (see `Client.publish`). */
  publish(data: unknown): Promise<PublishResult> {
    return this.host.publish(this.channel, data);
  }

  /** Who is subscribed (waits for the subscription: the server answers subscribers only). */
  async presence(): Promise<PresenceResult> {
    await this.ready();
    return this.host.presence(this.channel);
  }

  async presenceStats(): Promise<PresenceStatsResult> {
    await this.ready();
    return this.host.presenceStats(this.channel);
  }

  async history(options?: HistoryOptions): Promise<HistoryResult> {
    await this.ready();
    return this.host.history(this.channel, options);
  }

  // ---- driven by the client ----

  /** @internal The connection is up: (re)subscribe if wanted. */
  _onConnected(): void {
    if (this._state === 'subscribing') {
      this.attempts = 0;
      this.sendSubscribe();
    }
  }

  /** @internal The connection went away: a live subscription waits to resubscribe. */
  _onDisconnected(code: number, reason: string): void {
    clearTimeout(this.retryTimer);
    if (this._state === 'subscribed') {
      this.setState('subscribing');
      this.emit('subscribing', { channel: this.channel, code, reason });
    } else if (this._state === 'subscribing') {
      this.gen++; // an attempt in flight (e.g. waiting for a token) belongs to the old connection
    }
  }

  /** @internal The client stopped for good: waiters fail (the subscription stays wanted). */
  _onClientClosed(error: StarlingError): void {
    this.rejectWaiters(error);
  }

  /** @internal A push for this channel. */
  _onPush(kind: string, body: Record<string, unknown>): void {
    if (this._state !== 'subscribed') return;
    if (kind === 'pub') {
      const pub = this.host.readPublication(body);
      if (pub.offset > 0) this.offset = pub.offset;
      this.emit('publication', { channel: this.channel, ...pub });
    } else if (kind === 'join' || kind === 'leave') {
      const info = this.host.readClientInfo((body['info'] ?? {}) as Record<string, unknown>);
      this.emit(kind, { channel: this.channel, info });
    } else if (kind === 'unsubscribe') {
      this.toUnsubscribed(Number(body['code'] ?? 0), String(body['reason'] ?? ''), false);
    }
  }

  // ---- internals ----

  private setState(next: SubscriptionState): void {
    const old = this._state;
    if (old === next) return;
    this._state = next;
    this.gen++;
    this.emit('state', { oldState: old, newState: next });
  }

  private toUnsubscribed(code: number, reason: string, tellServer: boolean): void {
    if (this._state === 'unsubscribed') return;
    clearTimeout(this.retryTimer);
    this.setState('unsubscribed');
    // Commands run in order on the server, so this also cancels a subscribe still in flight.
    if (tellServer && this.host.connected) this.host.call('unsubscribe', { channel: this.channel }).catch(() => {});
    this.rejectWaiters(new StarlingError(ClientErrors.UNSUBSCRIBED, reason || 'unsubscribed', false));
    this.emit('unsubscribed', { channel: this.channel, code, reason });
  }

  private rejectWaiters(error: Error): void {
    this.waiters.rejectAll(error);
  }

  private async sendSubscribe(): Promise<void> {
    if (this._state !== 'subscribing' || !this.host.connected) return;
    const gen = this.gen;
    const params: Record<string, unknown> = { channel: this.channel };
    try {
      if (this.options.getToken && (this.token === undefined || this.tokenStale)) {
        const token = await this.options.getToken({ channel: this.channel });
        if (gen !== this.gen) return;
        if (!token) throw new UnauthorizedError();
        this.token = token;
        this.tokenStale = false;
      }
    } catch (e) {
      if (gen !== this.gen) return;
      if (e instanceof UnauthorizedError) {
        this.emit('error', { channel: this.channel, type: 'token', error: e });
        this.toUnsubscribed(ClientErrors.UNAUTHORIZED, 'unauthorized', false);
      } else {
        this.emit('error', { channel: this.channel, type: 'token', error: e as Error });
        this.scheduleRetry();
      }
      return;
    }
    if (this.token) params['token'] = this.token;
    const recovering = this.recoverable && this.epoch !== undefined && this.options.recover !== false;
    if (recovering) {
      params['recover'] = true;
      params['offset'] = this.offset;
      params['epoch'] = this.epoch;
    }
    let result: Record<string, unknown>;
    try {
      result = await this.host.call('subscribe', params);
    } catch (e) {
      if (gen === this.gen) this.onSubscribeError(e as StarlingError);
      return;
    }
    if (gen === this.gen) this.onSubscribed(result, recovering);
  }

  private onSubscribed(result: Record<string, unknown>, wasRecovering: boolean): void {
    this.attempts = 0;
    this.recoverable = result['recoverable'] === true;
    this.epoch = String(result['epoch'] ?? '');
    this.offset = Number(result['offset'] ?? 0);
    const raw = (result['publications'] ?? []) as Record<string, unknown>[];
    const publications = raw.map((p) => this.host.readPublication(p));
    this.setState('subscribed');
    this.waiters.resolveAll();
    this.emit('subscribed', {
      channel: this.channel,
      recoverable: this.recoverable,
      wasRecovering,
      recovered: result['recovered'] === true,
      recoveredCount: publications.length,
      epoch: this.epoch,
      offset: this.offset,
    });
    // Recovered publications follow the event, oldest first, as live ones would have.
    for (const pub of publications) {
      if (this._state !== 'subscribed') break;
      this.emit('publication', { channel: this.channel, ...pub });
    }
  }

  private onSubscribeError(error: StarlingError): void {
    if (error.code === ClientErrors.DISCONNECTED) return; // resubscribed after the reconnect
    this.emit('error', { channel: this.channel, type: 'subscribe', error });
    if (error.code === ServerErrors.TOKEN_EXPIRED && this.options.getToken) {
      this.tokenStale = true;
      // The first retry is immediate: only the token was wrong.
      if (this.attempts === 0) {
        this.attempts++;
        this.sendSubscribe();
      } else {
        this.scheduleRetry();
      }
    } else if (error.temporary) {
      this.scheduleRetry();
    } else {
      this.toUnsubscribed(error.code, error.message, false);
    }
  }

  private scheduleRetry(): void {
    clearTimeout(this.retryTimer);
    const delay = backoffDelay(this.attempts++, this.host.minReconnectDelay, this.host.maxReconnectDelay);
    this.retryTimer = setTimeout(() => this.sendSubscribe(), delay);
  }
}
