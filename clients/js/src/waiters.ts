/** Promises waiting for a state (connected, subscribed), settled together, each bounded in time. */
export class Waiters {
  private list: { resolve: () => void; reject: (e: Error) => void }[] = [];

  /** A promise settled by the next `resolveAll`/`rejectAll`, or rejected with `onTimeout()` after `timeout` ms. */
  wait(timeout: number, onTimeout: () => Error): Promise<void> {
    return new Promise((resolve, reject) => {
      const waiter = {
        resolve: () => { clearTimeout(timer); resolve(); },
        reject: (e: Error) => { clearTimeout(timer); reject(e); },
      };
      const timer = setTimeout(() => {
        this.list = this.list.filter((w) => w !== waiter);
        reject(onTimeout());
      }, timeout);
      this.list.push(waiter);
    });
  }

  /** Resolves every waiting promise. */
  resolveAll(): void {
    const list = this.list;
    this.list = [];
    for (const w of list) w.resolve();
  }

  /** Rejects every waiting promise with `error`. */
  rejectAll(error: Error): void {
    const list = this.list;
    this.list = [];
    for (const w of list) w.reject(error);
  }
}
