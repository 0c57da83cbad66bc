/**
 * Seeded request traces for the queueing benchmark: a small PRNG, service
 * time generators and open-loop Poisson arrivals.
 *
 * A trace is fixed by its options alone, so every system in a cell (and the
 * simulated ideal queue) sees exactly the same arrivals and service times.
 * Arrivals and service times come from two independent streams, and the
 * inter-arrival gaps are drawn once and scaled by the rate: the traces of
 * one cell at 50% and 95% load are the same sequence of requests, only
 * closer together.
 *
 * @module
 */

/** Service time distributions. */
export type Distribution = "const" | "exp";

/** Every distribution {@linkcode serviceSampler} knows. */
export const DISTRIBUTIONS: readonly Distribution[] = ["const", "exp"];

/**
 * A seeded generator of uniform numbers in [0, 1): xoshiro128** seeded by
 * splitmix32, both from their published descriptions. Equal seeds give equal
 * sequences on every platform (32-bit integer arithmetic only).
 *
 * @param seed any 32-bit integer.
 * @returns a function returning the next number in [0, 1).
 */
export function makeRandom(seed: number): () => number {
  let x = seed >>> 0;
  const split = (): number => {
    x = (x + 0x9e3779b9) >>> 0;
    let z = x;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return (z ^ (z >>> 16)) >>> 0;
  };
  let a = split(), b = split(), c = split(), d = split();
  if ((a | b | c | d) === 0) a = 1; // the all-zero state is a fixed point
  return () => {
    const result = Math.imul(rotl(Math.imul(b, 5), 7), 9) >>> 0;
    const t = b << 9;
    c ^= a;
    d ^= b;
    b ^= c;
    a ^= d;
    c ^= t;
    d = rotl(d, 11);
    return result / 4294967296;
  };
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

/** A draw from the exponential distribution with the given mean. */
export function exponential(random: () => number, mean: number): number {
  // 1 - u is in (0, 1], so the logarithm is finite.
  return -Math.log(1 - random()) * mean;
}

/**
 * Returns a generator of service times in milliseconds.
 *
 * @param dist `const` (every job takes `meanMs`) or `exp` (exponential).
 * @param meanMs mean service time.
 * @param random the uniform source.
 */
export function serviceSampler(
  dist: Distribution,
  meanMs: number,
  random: () => number,
): () => number {
  if (!(meanMs > 0)) {
    throw new RangeError(`Invalid mean service time: got ${meanMs}`);
  }
  switch (dist) {
    case "const":
      return () => meanMs;
    case "exp":
      return () => exponential(random, meanMs);
    default:
      throw new TypeError(`Unknown distribution: "${dist}"`);
  }
}

/** What fixes a trace. */
export interface TraceOptions {
  /** Servers (workers), each serving one request at a time. */
  workers: number;
  /** Utilisation: arrival rate × mean service time / workers, in (0, 1). */
  load: number;
  /** Mean service time in milliseconds. */
  meanMs: number;
  /** Service time distribution. */
  dist: Distribution;
  /** Arrivals are generated until this many milliseconds. */
  durationMs: number;
  /** Seed of both random streams. */
  seed: number;
}

/** A request trace: arrival offsets and service times, in milliseconds. */
export interface Trace {
  /** The options that made it. */
  options: TraceOptions;
  /** Arrival time of each request from the start, ascending. */
  arrivals: Float64Array;
  /** Service time of each request. */
  service: Float64Array;
  /** Arrivals per millisecond. */
  rate: number;
}

/**
 * Makes the open-loop Poisson trace for `options`: exponential gaps with
 * mean `meanMs / (workers × load)`.
 *
 * @param options what fixes the trace.
 * @returns the arrivals and service times.
 */
export function makeTrace(options: TraceOptions): Trace {
  const { workers, load, meanMs, dist, durationMs, seed } = options;
  if (!Number.isInteger(workers) || workers < 1) {
    throw new RangeError(`Invalid workers: got ${workers}`);
  }
  if (!(load > 0 && load < 1.5)) {
    throw new RangeError(`Invalid load: expected (0, 1.5), got ${load}`);
  }
  if (!(durationMs > 0) || durationMs > 3_600_000) {
    throw new RangeError(`Invalid duration: got ${durationMs}`);
  }
  const rate = (workers * load) / meanMs;
  const gaps = makeRandom(seed ^ 0x5eed0001);
  const sample = serviceSampler(dist, meanMs, makeRandom(seed ^ 0x5eed0002));
  const arrivals: number[] = [];
  const service: number[] = [];
  // Bounded: the expected count is rate × duration; a hard cap guards the loop.
  const cap = Math.ceil(rate * durationMs * 4) + 1000;
  let t = exponential(gaps, 1) / rate;
  while (t < durationMs && arrivals.length < cap) {
    arrivals.push(t);
    service.push(sample());
    t += exponential(gaps, 1) / rate;
  }
  return {
    options: { ...options },
    arrivals: Float64Array.from(arrivals),
    service: Float64Array.from(service),
    rate,
  };
}

/**
 * Marks each of `n` requests as in a class with probability `share`, from its
 * own seeded stream (independent of a trace's arrivals and service times, so
 * the same trace can be split at any share).
 *
 * @param n how many requests.
 * @param share probability of each being marked, in [0, 1].
 * @param seed seed of the stream.
 * @returns 1 for a marked request, 0 otherwise.
 */
export function drawClasses(
  n: number,
  share: number,
  seed: number,
): Uint8Array {
  if (!(share >= 0 && share <= 1)) {
    throw new RangeError(`Invalid share: expected [0, 1], got ${share}`);
  }
  const random = makeRandom(seed ^ 0x5eed0003);
  const marked = new Uint8Array(n);
  for (let i = 0; i < n; i++) marked[i] = random() < share ? 1 : 0;
  return marked;
}
