/**
 * A one-shot event that short-lived waits can race against.
 *
 * `Promise.race([work, longLived])` leaves a reaction on `longLived` for
 * every call, and each reaction keeps the race's own promise, and so the
 * value `work` settled with, alive for as long as `longLived` stays
 * pending: racing every request body against a hub-lifetime "closed"
 * promise kept every body the hub ever read (seen 12-07: about 500 B per
 * small POST, and the body itself). A latch's {@linkcode Latch.race}
 * forgets its waiter as soon as the work settles.
 *
 * @module
 */

/** A one-shot event that waits can race against without leaving anything behind. */
export class Latch {
  #open = false;
  #waiters = new Set<() => void>();

  /** Whether {@linkcode Latch.open} has been called. */
  get isOpen(): boolean {
    return this.#open;
  }

  /** How many races are waiting on the latch now (for tests). */
  get waiting(): number {
    return this.#waiters.size;
  }

  /** Opens the latch: every pending race resolves with `undefined`. */
  open(): void {
    if (this.#open) return;
    this.#open = true;
    const waiters = [...this.#waiters];
    this.#waiters.clear();
    for (const wake of waiters) wake();
  }

  /**
   * Races `work` against the latch.
   *
   * @param work what to wait for.
   * @returns what `work` settles with, or `undefined` if the latch opens
   *   first (at once if it is open already).
   */
  race<T>(work: Promise<T>): Promise<T | undefined> {
    if (this.#open) return Promise.resolve(undefined);
    return new Promise<T | undefined>((resolve, reject) => {
      const wake = () => resolve(undefined);
      this.#waiters.add(wake);
      work.then(
        (value) => {
          this.#waiters.delete(wake);
          resolve(value);
        },
        (error) => {
          this.#waiters.delete(wake);
          reject(error);
        },
      );
    });
  }
}
