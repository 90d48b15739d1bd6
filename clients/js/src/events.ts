/** A minimal typed event emitter: no dependency, and listener errors never break the client. */

type Listener<T> = (event: T) => void;

export class Emitter<Events extends object> {
  private listeners: { [K in keyof Events]?: Listener<Events[K]>[] } = {};

  /** Adds a listener; returns `this` so calls chain as with centrifuge-js and Node's EventEmitter. */
  on<K extends keyof Events>(name: K, fn: Listener<Events[K]>): this {
    (this.listeners[name] ??= []).push(fn);
    return this;
  }

  /** Adds a listener called at most once. */
  once<K extends keyof Events>(name: K, fn: Listener<Events[K]>): this {
    const wrapper: Listener<Events[K]> = (event) => {
      this.off(name, wrapper);
      fn(event);
    };
    return this.on(name, wrapper);
  }

  /** Removes one listener, or every listener of `name` when `fn` is omitted. */
  off<K extends keyof Events>(name: K, fn?: Listener<Events[K]>): this {
    const list = this.listeners[name];
    if (!list) return this;
    if (!fn) delete this.listeners[name];
    else this.listeners[name] = list.filter((l) => l !== fn);
    return this;
  }

  /** Removes every listener of every event. */
  removeAllListeners(): this {
    this.listeners = {};
    return this;
  }

  protected emit<K extends keyof Events>(name: K, event: Events[K]): void {
    // Copy: a listener may add or remove listeners while we iterate.
    for (const fn of (this.listeners[name] ?? []).slice()) {
      try {
        fn(event);
      } catch (e) {
        // An application bug in a listener must not corrupt the client's state machine;
        // report it the way the platform reports uncaught errors instead of swallowing it.
        reportError(e);
      }
    }
  }
}

function reportError(e: unknown): void {
  const g = globalThis as { reportError?: (e: unknown) => void };
  if (typeof g.reportError === 'function') g.reportError(e);
  else setTimeout(() => { throw e; }, 0);
}
