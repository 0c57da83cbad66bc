/**
 * Bounds the log lines that one kind of event, repeated by whoever can
 * open connections, may write: per address and window, the first event is
 * logged in full and the rest are only counted, then summed up in one line
 * when the window ends (as the kernel's "N callbacks suppressed"). At most
 * `maxAddresses` addresses are tracked per window; events from any other
 * address are counted together, so a flood from many addresses (all of
 * 127.0.0.0/8, an IPv6 prefix) holds no more state and writes no more
 * lines per window than that.
 *
 * @module
 */

/** What a window did not log one by one, handed to `summary`. */
export interface Suppressed {
  /** The address, or null for the addresses past `maxAddresses`. */
  address: string | null;
  /** Events not logged in full. */
  count: number;
  /** The window, in milliseconds. */
  windowMs: number;
}

/** Per-address log suppression over fixed windows. */
export class AddressLogLimit {
  readonly #windowMs: number;
  readonly #maxAddresses: number;
  readonly #summary: (s: Suppressed) => void;
  // Address to events suppressed this window (0: only the first, logged).
  readonly #seen = new Map<string, number>();
  #others = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #closed = false;

  constructor(
    windowMs: number,
    maxAddresses: number,
    summary: (s: Suppressed) => void,
  ) {
    this.#windowMs = windowMs;
    this.#maxAddresses = maxAddresses;
    this.#summary = summary;
  }

  /** Whether an event from `address` is to be logged in full. */
  admit(address: string): boolean {
    // After close() nothing is held (and no timer left behind).
    if (this.#closed) return true;
    if (this.#timer === undefined) {
      this.#timer = setTimeout(() => this.flush(), this.#windowMs);
      // Never the only thing keeping a process alive.
      Deno.unrefTimer(this.#timer);
    }
    const count = this.#seen.get(address);
    if (count !== undefined) {
      this.#seen.set(address, count + 1);
      return false;
    }
    if (this.#seen.size >= this.#maxAddresses) {
      this.#others++;
      return false;
    }
    this.#seen.set(address, 0);
    return true;
  }

  /** Sums up the window now and starts afresh. */
  flush(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    const windowMs = this.#windowMs;
    for (const [address, count] of this.#seen) {
      if (count > 0) this.#summary({ address, count, windowMs });
    }
    if (this.#others > 0) {
      this.#summary({ address: null, count: this.#others, windowMs });
    }
    this.#seen.clear();
    this.#others = 0;
  }

  /** Sums up what is held; from now on every event is logged in full. */
  close(): void {
    this.flush();
    this.#closed = true;
  }
}
