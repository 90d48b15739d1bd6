// Waiting helpers: every wait is bounded, and a timeout is a failure, not a synchronisation.

export const WAIT_MS = 5000;

/** Rejects with `label` if `promise` does not settle within `ms`. */
export function withTimeout(promise, ms = WAIT_MS, label = 'operation') {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timeout after ${ms} ms waiting for ${label}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** The next `name` event of `emitter` (a client or subscription) that passes `filter`. */
export function nextEvent(emitter, name, { filter = () => true, timeout = WAIT_MS } = {}) {
  let listener;
  const p = new Promise((resolve) => {
    listener = (event) => {
      if (!filter(event)) return;
      emitter.off(name, listener);
      resolve(event);
    };
    emitter.on(name, listener);
  });
  return withTimeout(p, timeout, `event "${name}"`).finally(() => emitter.off(name, listener));
}

/** Collects every `name` event of `emitter` into an array, for later assertions. */
export function collect(emitter, name) {
  const events = [];
  emitter.on(name, (e) => events.push(e));
  return events;
}

/** Polls `check` (sync or async) until it returns a truthy value; bounded by `timeout`. */
export async function until(check, { timeout = WAIT_MS, every = 10, label = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timeout after ${timeout} ms waiting for ${label}`);
    await new Promise((r) => setTimeout(r, every));
  }
}
