/**
 * Random operations on the queues against their invariants: no value
 * times out early or stays past its deadline, `head` is what `shift`
 * returns, `oldestSince` is the oldest value's, and no timer is left once
 * nothing waits.
 */

import assert from "node:assert/strict";
import { PriorityQueue, type QueueNode } from "../_queue.ts";
import { ShareLedger } from "../_share.ts";

interface Timer {
  id: number;
  at: number;
  fn: () => void;
}

function simulated(clock: { now: number }) {
  const realSet = globalThis.setTimeout;
  const realClear = globalThis.clearTimeout;
  const live = new Map<number, Timer>();
  let nextId = 1;
  globalThis.setTimeout = ((fn: () => void, delay = 0) => {
    const t = { id: nextId++, at: clock.now + delay, fn };
    live.set(t.id, t);
    return t.id;
  }) as unknown as typeof setTimeout;
  globalThis.clearTimeout = ((id?: number) => {
    if (id !== undefined) live.delete(id);
  }) as typeof clearTimeout;
  return {
    live,
    advance(to: number): void {
      for (;;) {
        let first: Timer | undefined;
        for (const t of live.values()) {
          if (t.at <= to && (first === undefined || t.at < first.at)) first = t;
        }
        if (first === undefined) break;
        live.delete(first.id);
        clock.now = Math.max(clock.now, first.at);
        first.fn();
      }
      clock.now = to;
    },
    [Symbol.dispose](): void {
      globalThis.setTimeout = realSet;
      globalThis.clearTimeout = realClear;
    },
  };
}

function rng(seed: number) {
  return () => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed / 0x80000000;
  };
}

interface V {
  id: number;
  key: string;
  since: number;
  priority: number;
}

function run(
  seed: number,
  opts: { fair: boolean; ledger: boolean; step: number },
): void {
  const clock = { now: 1000 };
  using timers = simulated(clock);
  const random = rng(seed);
  const timeout = 100;
  const timedOut: [V, number][] = [];
  const ledger = opts.ledger ? new ShareLedger() : undefined;
  const q = new PriorityQueue<V>({
    timeout,
    onTimeout: (v) => {
      timedOut.push([v, clock.now]);
      live.delete(v.id);
    },
    now: () => clock.now,
    step: opts.step,
    ...(opts.fair ? { keyOf: (v: V) => v.key, ledger } : {}),
  });
  const live = new Map<number, { v: V; node: QueueNode<V> }>();
  let id = 0;
  for (let i = 0; i < 2000; i++) {
    const r = random();
    if (r < 0.4) {
      const v: V = {
        id: ++id,
        key: "k" + Math.floor(random() * 4),
        since: clock.now - Math.floor(random() * 30),
        priority: Math.floor(random() * 3) - 1,
      };
      live.set(v.id, { v, node: q.push(v, v.since, v.priority) });
    } else if (r < 0.6) {
      const head = q.head;
      const node = q.shift();
      assert.equal(
        node,
        head,
        `seed ${seed} op ${i}: head is what shift returns`,
      );
      if (node !== null) {
        live.delete(node.value.id);
        if (ledger !== undefined) {
          // Run it: the key is charged, which reorders the keys.
          const key = node.value.key;
          ledger.hold(key);
          ledger.finish(key, ledger.start(key), Math.floor(random() * 50));
          ledger.release(key);
        }
        if (random() < 0.5) {
          // Put back (a retry), keeping when it first joined.
          const v = node.value;
          live.set(v.id, { v, node: q.unshift(v, v.since, v.priority) });
        }
      }
    } else if (r < 0.7) {
      const all = [...live.values()];
      if (all.length > 0) {
        const e = all[Math.floor(random() * all.length)];
        assert.ok(q.delete(e.node));
        live.delete(e.v.id);
      }
    } else {
      timers.advance(clock.now + Math.floor(random() * 20));
    }
    assert.equal(q.size, live.size, `seed ${seed} op ${i}: size`);
    let oldest: number | null = null;
    for (const { v } of live.values()) {
      assert.ok(
        v.since + timeout > clock.now,
        `seed ${seed} op ${i}: value ${v.id} still queued past its deadline`,
      );
      if (oldest === null || v.since < oldest) oldest = v.since;
    }
    assert.equal(q.oldestSince, oldest, `seed ${seed} op ${i}: oldestSince`);
    if (live.size === 0) {
      assert.equal(timers.live.size, 0, `seed ${seed} op ${i}: timer left`);
    }
  }
  for (const [v, at] of timedOut) {
    assert.ok(at >= v.since + timeout, `value ${v.id} timed out early`);
  }
  assert.ok(timedOut.length > 0, `seed ${seed}: some values timed out`);
  q.drain();
  assert.equal(timers.live.size, 0, "timer left after drain");
}

for (
  const opts of [
    { fair: false, ledger: false, step: Infinity },
    { fair: false, ledger: false, step: 10 },
    { fair: true, ledger: false, step: Infinity },
    { fair: true, ledger: false, step: 10 },
    { fair: true, ledger: true, step: Infinity },
    { fair: true, ledger: true, step: 10 },
  ]
) {
  Deno.test(`queue invariants under random operations (${JSON.stringify(opts)})`, async () => {
    for (let seed = 1; seed <= 30; seed++) run(seed, opts);
    // The ledger forgets released keys in a microtask.
    await Promise.resolve();
  });
}
