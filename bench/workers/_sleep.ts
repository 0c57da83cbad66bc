/**
 * The benchmark jobs' wait: a timer corrected for its lateness, so job
 * lengths match what a trace asked for.
 *
 * @module
 */

/**
 * A timer-based wait that corrects for the timer's lateness: it learns the
 * mean overshoot of `setTimeout` and asks for that much less, so the mean
 * job length matches the request (each job is within about a millisecond).
 * A wait no longer than the overshoot is spun out on the clock instead, so
 * the shortest jobs of an exponential trace are not cut to nothing.
 */
export class Sleeper {
  #overshoot = 1;

  /** Waits about `ms` milliseconds (at least `ms` when it is that short). */
  async sleep(ms: number): Promise<void> {
    const t0 = performance.now();
    const ask = ms - this.#overshoot;
    if (ask <= 0) {
      // At most about a millisecond of CPU, and only for the shortest jobs.
      while (performance.now() - t0 < ms) { /* spin */ }
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, ask));
    const late = Math.min(performance.now() - t0 - ask, 5);
    this.#overshoot += 0.05 * (late - this.#overshoot);
  }
}
